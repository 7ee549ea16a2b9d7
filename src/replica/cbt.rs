//! Changed-block tracking of libvirt domains: which blocks of a vm's disks to read, decided
//! from what its copies record (the checkpoint each point is) and what the source host has
//! (its checkpoints, the bitmaps in its qcow2 files), and the libvirt commands around the read.
//!
//! A running domain is read through libvirt's backup API in pull mode: `virsh backup-begin`
//! creates a new checkpoint and exports every disk over NBD as of that instant, with, when
//! incremental, the dirty bitmap of what was written since the previous checkpoint; the source
//! helper reads only those blocks (`nbd`). A stopped domain is read by `qemu-nbd` from its qcow2
//! files, through the persistent bitmap of the copies' checkpoint when it is there and sound.
//! Anything else is a scan (every block read and hashed), and the point says why.
//!
//! The decision ([`decide`]) is a pure function; the commands run through `ssh::Transport`.

use std::time::Duration;

use super::protocol::DiskFormat;
use super::store::{HowRead, Point, ReadMode, Verified};
use crate::ssh::Transport;
use crate::template::shell_quote;

/// Checkpoints reprise makes are named `reprise-<point id>`; no other is touched.
pub const PREFIX: &str = "reprise-";

const DEADLINE: Duration = Duration::from_secs(300);

/// One disk of a domain, as its definition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomDisk {
    pub target: String,
    pub source: String,
    pub format: String,
    /// The file its image is an overlay over, when the definition names one (a running
    /// domain's does; a stopped one's may not: [`offline_bitmap_problem`] asks the file).
    pub backing: Option<String>,
    /// The file a qcow2 image keeps its data in (`<dataStore>`), when the definition names
    /// one (older libvirt does not: [`offline_bitmap_problem`] and [`marks_missing`] ask).
    pub data_file: Option<String>,
    /// What makes the guest see other bytes than the file holds, besides its format: an
    /// `<encryption>` (of the disk or of its source), or `<slices>` (a part of the file).
    pub unlike_file: Option<String>,
}

/// Why a stopped domain's disks cannot be read from their files by `qemu-nbd` as the guest
/// sees them, if so: only a qcow2 or a raw file is opened so, with nothing between the file
/// and the guest (no encryption, no slice). Read otherwise, its copy would be the file's
/// bytes, recorded as the guest's and started as a raw disk: another disk than the guest's.
pub fn stopped_read_problem(disks: &[DomDisk]) -> Option<String> {
    disks.iter().find_map(|d| {
        let why = match (d.format.as_str(), &d.unlike_file) {
            (_, Some(what)) => format!("disk {} ({}) is {what}", d.target, d.source),
            ("qcow2" | "raw", None) => return None,
            (other, None) => format!(
                "disk {} ({}) is of format `{other}`, and a stopped domain's disks are read from their files as qcow2 or raw only",
                d.target, d.source
            ),
        };
        Some(format!(
            "{why}: read from its file while the vm is stopped, its copy would not be what the guest sees; nothing was read. Replicate it while the vm runs (its disks are then read through QEMU, as the guest sees them), or convert the disk to a plain qcow2 or raw file"
        ))
    })
}

/// The file disks (`device='disk'`) of a domain's XML: the `<disk>` elements of its
/// `<devices>` only, read with an XML parser (a `<disk>` in `<metadata>`, in a description's
/// CDATA or below a backing store is none of the domain's disks, whatever it names).
pub fn parse_disks(xml: &str) -> Result<Vec<DomDisk>, String> {
    // A document type could declare entities: a domain never has one.
    if xml.contains("<!DOCTYPE") || xml.contains("<!ENTITY") {
        return Err("its definition declares a document type: not read".into());
    }
    let root = xmltree::Element::parse(xml.as_bytes())
        .map_err(|e| format!("its definition is not XML reprise reads: {e}"))?;
    if root.name != "domain" || root.namespace.is_some() {
        return Err(format!(
            "its definition is a <{}>, not a libvirt <domain>",
            root.name
        ));
    }
    use xmltree::Element;
    /// The children of `e` named `name`, of no namespace.
    fn children<'a>(e: &'a Element, name: &'a str) -> impl Iterator<Item = &'a Element> {
        e.children
            .iter()
            .filter_map(|n| n.as_element())
            .filter(move |c| c.namespace.is_none() && c.name == name)
    }
    fn child<'a>(e: &'a Element, name: &'a str) -> Option<&'a Element> {
        children(e, name).next()
    }
    let attr = |e: &Element, name: &str| e.attributes.get(name).cloned();
    let mut out = Vec::new();
    let Some(devices) = child(&root, "devices") else {
        return Ok(out);
    };
    for disk in children(devices, "disk") {
        if attr(disk, "device").as_deref() != Some("disk") {
            continue;
        }
        let (Some(target), Some(source)) = (
            child(disk, "target").and_then(|t| attr(t, "dev")),
            child(disk, "source").and_then(|s| attr(s, "file")),
        ) else {
            continue;
        };
        let format = child(disk, "driver")
            .and_then(|d| attr(d, "type"))
            .unwrap_or_else(|| "raw".into());
        // `<backingStore/>` empty: none; with a source: the first file of its chain.
        let backing = child(disk, "backingStore").and_then(|b| {
            let s = child(b, "source")?;
            attr(s, "file")
                .or_else(|| attr(s, "dev"))
                .or_else(|| attr(s, "name"))
                .or_else(|| Some("another image".into()))
        });
        let src = child(disk, "source");
        let data_file = src.and_then(|s| child(s, "dataStore")).map(|d| {
            child(d, "source")
                .and_then(|s| attr(s, "file").or_else(|| attr(s, "dev")))
                .unwrap_or_else(|| "another file".into())
        });
        let encrypted = child(disk, "encryption")
            .or_else(|| src.and_then(|s| child(s, "encryption")))
            .map(|e| {
                format!(
                    "encrypted (<encryption format='{}'>)",
                    attr(e, "format").unwrap_or_default()
                )
            });
        let sliced = src
            .and_then(|s| child(s, "slices"))
            .map(|_| "a slice of its file (<slices>)".to_string());
        out.push(DomDisk {
            target,
            source,
            format,
            backing,
            data_file,
            unlike_file: encrypted.or(sliced),
        });
    }
    Ok(out)
}

/// The domain's disk of each file of `sources`, in their order: a file that is no disk of the
/// domain, or more than one, is refused (which export to read would not be known).
pub fn disks_of(disks: &[DomDisk], sources: &[&str]) -> Result<Vec<DomDisk>, String> {
    sources
        .iter()
        .map(|src| {
            let of: Vec<&DomDisk> = disks.iter().filter(|d| d.source == *src).collect();
            match of[..] {
                [d] => Ok(d.clone()),
                [] => Err(format!("{src} is not one of its disks")),
                _ => Err(format!(
                    "{src} is more than one of its disks ({}): which one to read is not known",
                    of.iter()
                        .map(|d| d.target.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        })
        .collect()
}

/// What a scan asked for says when the bitmap it replaces cannot be read to check it.
pub const UNCHECKED: &str = "asked (--scan); its bitmap cannot be checked: ";

/// What a scan made to check a bitmap again, after a check found writes it missed, says when
/// that bitmap cannot be read to check it.
pub const UNCHECKED_AGAIN: &str =
    "read whole, as a check found writes its bitmap missed; its bitmap cannot be checked: ";

/// How such a scan ends what it says: no check was made, so nothing is trusted again.
pub const STILL_DISTRUSTED: &str =
    "; it stays distrusted, and the next replications check it until a check finds none";

/// What a scan that was to check a bitmap says when that bitmap cannot be read (`problem`):
/// one `asked` for (`--scan`), or one made because a check found the bitmap missing writes.
fn unchecked(asked: bool, problem: &str) -> String {
    match asked {
        true => format!("{UNCHECKED}{problem}"),
        false => format!("{UNCHECKED_AGAIN}{problem}{STILL_DISTRUSTED}"),
    }
}

/// How the disks of one vm are read this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub mode: ReadMode,
    /// Why a scan.
    pub why: Option<String>,
    /// The checkpoint whose changes are read (changed blocks), or that a scan of a stopped
    /// vm still is (its bitmap goes on recording).
    pub since: Option<String>,
    /// A scan asked for (`--scan`) of disks whose bitmap since `since` could have been read
    /// instead: every block is read and checked against that bitmap, so that one that missed
    /// writes is found and said, not silently mended.
    pub audit: bool,
    /// The scan was asked for (`--scan`), not made because a check found the bitmap missing
    /// writes.
    pub asked: bool,
}

impl Decision {
    /// What this audited scan says when its bitmap cannot be read after all (`problem`): a
    /// bitmap found missing writes stays distrusted (the recovery side carries it, see
    /// [`HowRead::missed`]).
    pub fn unchecked(&self, problem: &str) -> String {
        unchecked(self.asked, problem)
    }

    /// Every block read, for `why`; no bitmap checked.
    pub fn scan(why: impl Into<String>, since: Option<String>) -> Decision {
        Decision {
            mode: ReadMode::Scan,
            why: Some(why.into()),
            since,
            audit: false,
            asked: false,
        }
    }
}

/// What is known before a vm's disks are read.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub host: &'a str,
    /// Every block is to be read (`--scan`, `--verify`).
    pub asked_scan: bool,
    /// The newest point of each disk's copy (`None`: no point).
    pub newest: Vec<Option<&'a Point>>,
    /// The domain's disks, in the vm's order.
    pub disks: Vec<DomDisk>,
    /// The checkpoints the source domain has.
    pub checkpoints: Vec<String>,
    /// When libvirt made each of reprise's checkpoints, where it says.
    pub created: std::collections::BTreeMap<String, i64>,
    /// For a stopped domain: per disk, why its bitmap of `since` cannot be used, if so.
    pub bitmap_problem: Option<String>,
    /// Why a disk's copy is not its newest point (changed behind it), if so.
    pub copy_problem: Option<String>,
    /// Why a disk file is not the one its copy's newest point read while its vm was stopped
    /// (the bitmap marking it gone: [`marker_problem`]), if so.
    pub marker_problem: Option<String>,
}

/// Which blocks to read: only what changed since the copies' checkpoint when every disk's
/// copy records the same one, it is still on the source, and every disk is qcow2; else all.
pub fn decide(f: &Facts) -> Decision {
    if let Some(d) = f.disks.iter().find(|d| d.format != "qcow2") {
        return Decision::scan(
            format!(
                "disk {} is {}: QEMU keeps dirty bitmaps in qcow2 files only",
                d.target, d.format
            ),
            None,
        );
    }
    // The guest sees its backing file's blocks where the overlay has none: written there (a
    // template refreshed, or rebased), they change the disk and no bitmap of the overlay
    // marks them.
    if let Some(d) = f.disks.iter().find(|d| d.backing.is_some()) {
        return Decision::scan(
            format!(
                "disk {} is an overlay over {}: what is written to that file is in no bitmap of the disk",
                d.target,
                d.backing.as_deref().unwrap_or_default()
            ),
            None,
        );
    }
    // What is written to a data file (put back from elsewhere while the vm was stopped, say)
    // is in no bitmap of the qcow2 file that keeps the bitmaps.
    if let Some(d) = f.disks.iter().find(|d| d.data_file.is_some()) {
        return Decision::scan(
            format!(
                "disk {} keeps its data in {}: what is written to that file without QEMU is in no bitmap of the disk",
                d.target,
                d.data_file.as_deref().unwrap_or_default()
            ),
            None,
        );
    }
    let recorded: Vec<Option<&str>> = f
        .newest
        .iter()
        .map(|p| {
            p.and_then(|p| p.read.as_ref())
                .and_then(|r| r.checkpoint.as_deref())
        })
        .collect();
    if f.newest.iter().any(Option::is_none) {
        return Decision::scan("the first copy", None);
    }
    if f.newest.iter().any(|p| p.is_some_and(|p| p.read.is_none())) {
        return Decision::scan(
            "the copy was of the image file: this one is of the disk as the guest sees it",
            None,
        );
    }
    // A bitmap says what the guest wrote since the checkpoint, not what else differs in the
    // copy: blocks found damaged, or written into it behind its point, must be read again.
    if let Some(p) = f
        .newest
        .iter()
        .flatten()
        .find(|p| p.verified == Verified::Bad)
    {
        return Decision::scan(
            format!(
                "the copy's newest point {} failed verification: its damaged blocks are in no bitmap",
                p.id
            ),
            None,
        );
    }
    if let Some(why) = &f.copy_problem {
        return Decision::scan(format!("{why}: what changed there is in no bitmap"), None);
    }
    let Some(Some(first)) = recorded.first() else {
        return Decision::scan("no checkpoint recorded with the copy", None);
    };
    if recorded.iter().any(|c| *c != Some(*first)) {
        return Decision::scan(
            "the disks' copies record different checkpoints (a replication cut between disks)",
            None,
        );
    }
    let since = first.to_string();
    if !f.checkpoints.contains(&since) {
        return Decision::scan(
            format!(
                "checkpoint {since} is no longer on {} (deleted outside reprise, or the domain was defined again)",
                f.host
            ),
            None,
        );
    }
    // A point read while its vm was stopped is of a checkpoint older than it: the changes
    // since that checkpoint hold everything that point holds only while the file is the one
    // read, or grew from it. Its marker says so; a point that left none cannot tell.
    if let Some(p) = f.newest.iter().flatten().find(|p| stopped_unmarked(p)) {
        return Decision::scan(
            format!(
                "point {} was read while its vm was stopped, through the older checkpoint {since}, and marked nothing in its disk file (an older reprise): whether that file was put back since cannot be told",
                p.id
            ),
            Some(since),
        );
    }
    if let Some(why) = &f.marker_problem {
        return Decision::scan(why.clone(), Some(since));
    }
    // The checkpoint is known by when libvirt made it, not only by its name: one deleted and
    // made again under the same name has a bitmap that misses what was written in between.
    // Every block is read; the point made is then at the checkpoint as it now is (a stopped
    // domain's, whose bitmap marks everything written since it was made, read or not).
    let made = f
        .newest
        .iter()
        .flatten()
        .map(|p| p.read.as_ref().and_then(|r| r.created))
        .collect::<Vec<_>>();
    let now = f.created.get(&since).copied();
    match (made.first().copied().flatten(), now) {
        (Some(then), Some(now)) if made.iter().all(|m| *m == Some(then)) && then == now => {}
        (Some(then), Some(now)) if made.iter().all(|m| *m == Some(then)) => {
            return Decision::scan(
                format!(
                    "checkpoint {since} on {} was made at {} and the copies' point at {}: made again under the same name, its bitmap misses what was written in between",
                    f.host,
                    epoch(now),
                    epoch(then)
                ),
                Some(since),
            );
        }
        (Some(_), None) => {
            return Decision::scan(
                format!(
                    "when checkpoint {since} was made cannot be read on {}: it cannot be told from one made again under the same name",
                    f.host
                ),
                Some(since),
            );
        }
        _ => {
            return Decision::scan(
                format!(
                    "the copies' points do not record when checkpoint {since} was made (made by an older reprise, or not the same on every disk): it cannot be told from one made again under the same name"
                ),
                Some(since),
            );
        }
    }
    // The last check found writes this bitmap missed: it is checked again, every block read,
    // until a check finds none.
    // (Carried from point to point until then: the newest may not be the one checked.)
    let distrusted = f.newest.iter().flatten().find_map(|p| {
        p.missed().map(|n| {
            format!(
                "a check found {n} blocks its dirty bitmap missed, and none since found it whole (point {})",
                p.id
            )
        })
    });
    if let Some(problem) = &f.bitmap_problem {
        return Decision::scan(
            match (f.asked_scan, &distrusted) {
                (false, None) => problem.clone(),
                _ => unchecked(f.asked_scan, problem),
            },
            None,
        );
    }
    if f.asked_scan || distrusted.is_some() {
        let why = match &distrusted {
            Some(d) if !f.asked_scan => format!(
                "{d}: read whole and checked against checkpoint {since}'s dirty bitmap again, until a check finds none"
            ),
            _ => format!("asked (--scan); checked against checkpoint {since}'s dirty bitmap"),
        };
        return Decision {
            audit: true,
            asked: f.asked_scan,
            ..Decision::scan(why, Some(since))
        };
    }
    Decision {
        mode: ReadMode::ChangedBlocks,
        why: None,
        since: Some(since),
        audit: false,
        asked: false,
    }
}

/// Whether point `p` is of a checkpoint older than it (read while its vm was stopped) and left
/// no marker in its disk file. A point read from a running vm is of the checkpoint its read
/// began, named after it (`reprise-<id>`; the point's id may carry a `-N` the copy added).
fn stopped_unmarked(p: &Point) -> bool {
    let Some(read) = &p.read else {
        return false;
    };
    let Some(of) = read.checkpoint.as_deref().and_then(checkpoint_point) else {
        return read.checkpoint.is_some() && read.marker.is_none();
    };
    let own = p.id == of
        || p.id.strip_prefix(of).is_some_and(|rest| {
            rest.strip_prefix('-')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    !own && read.marker.is_none()
}

/// A new checkpoint for the point `point`: `reprise-<id>.<what makes this one unique>` (the
/// process and the time). Point ids may repeat (two replications of one vm in one second, a
/// clock put back): a checkpoint made again under a name a copy's point records would be
/// taken for the one that point is at, and its bitmap, which misses what was written in
/// between, read as the changes since that point. Never made twice, a name a point records
/// is that checkpoint or none.
pub fn checkpoint_name(point: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{PREFIX}{point}.{:x}-{nanos:x}", std::process::id())
}

/// The point id a checkpoint of reprise was made for ([`checkpoint_name`]; an earlier
/// version's, `reprise-<id>`, included).
fn checkpoint_point(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(PREFIX)?;
    Some(rest.split_once('.').map_or(rest, |(id, _)| id))
}

/// The bitmaps reprise adds to the files of a stopped vm it reads are named
/// `reprise-mark-<point id>` ([`HowRead::marker`]); no other is touched.
pub const MARK_PREFIX: &str = "reprise-mark-";

/// A new marker for the point `point`: its id, then what makes this one unique (the process
/// and the time). Point ids may repeat (two runs in one second, a clock put back): a run
/// whose point is refused after it marked the files must never make again, on a file put
/// back, the mark a recorded point holds as the proof that the file is the one it read.
pub fn marker_name(point: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{MARK_PREFIX}{point}-{:x}-{nanos:x}", std::process::id())
}

/// The mark ([`marker_name`] `base`) of the disk whose copy is `dst` on `to`: each disk's
/// file gets its own, so that a file put at another disk's path (two swapped, the wrong one
/// restored) is not taken for the one its copy's point read.
pub fn disk_mark(base: &str, to: &str, dst: &str) -> String {
    let copy = blake3::hash(format!("{to}\0{dst}").as_bytes()).to_hex();
    format!("{base}-{}", &copy[..8])
}

/// `qemu-img info` of the qcow2 file `f` (read shared: a running vm may hold it).
fn image_info(t: &dyn Transport, host: &str, f: &str) -> Result<serde_json::Value, String> {
    let json = sh(
        t,
        host,
        &format!("qemu-img info -U --output=json -f qcow2 {}", shell_quote(f)),
    )?;
    serde_json::from_str(&json).map_err(|e| format!("qemu-img info of {f} is not understood: {e}"))
}

/// The bitmaps in a `qemu-img info` of a qcow2 file.
pub fn bitmaps_in(info: &serde_json::Value) -> Vec<serde_json::Value> {
    info["format-specific"]["data"]["bitmaps"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Why a disk file is not the one its copy's newest point read, if so: the bitmap that point
/// marked it with is gone from it (the file put back to an older one or to another disk's, the
/// bitmap removed, or its vm stopped without saving its bitmaps). `files` and `newest` in the
/// vm's disk order; a file whose bitmaps cannot be read is not taken as the one read either.
/// `live`: the domain, when it runs, whose QEMU is asked (a mark added while it ran is in the
/// file only once QEMU saves its bitmaps); else the files are read.
pub fn marker_problem(
    t: &dyn Transport,
    host: &str,
    live: Option<&str>,
    files: &[String],
    newest: &[Option<&Point>],
) -> Option<String> {
    let relied: Vec<(&str, String, &str)> = files
        .iter()
        .zip(newest)
        .filter_map(|(f, p)| {
            let p = (*p)?;
            let m = p.read.as_ref()?.marker.as_deref()?;
            Some((f.as_str(), format!("point {}", p.id), m))
        })
        .collect();
    marks_missing(t, host, live, &relied)
}

/// The external data file a qcow2 image's `format-specific` information names (from
/// `qemu-img info` or QEMU's block node), if any: one named by a `json:` description is
/// named by that.
fn data_file_of(specific: &serde_json::Value) -> Option<String> {
    match &specific["data"]["data-file"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(f) => Some(f.clone()),
        other => Some(other.to_string()),
    }
}

/// Why a file of `relied` (`(file, the point that marked it, its mark)`) does not hold its
/// mark, if one does not ([`marker_problem`]).
pub fn marks_missing(
    t: &dyn Transport,
    host: &str,
    live: Option<&str>,
    relied: &[(&str, String, &str)],
) -> Option<String> {
    if relied.is_empty() {
        return None;
    }
    let nodes = match live.map(|dom| live_nodes(t, host, dom)) {
        Some(Ok(n)) => Some(n),
        Some(Err(e)) => {
            return Some(format!(
                "the bitmaps of {}'s disks cannot be read from its QEMU to find the marks of its copies' points: {e}",
                live.unwrap_or_default()
            ));
        }
        None => None,
    };
    for (f, point, m) in relied {
        let gone = format!(
            "the bitmap {m} that marked {f} as {point} read it is gone from it: the file was put back to an older one or to another disk's since, the bitmap removed, its vm stopped without saving its bitmaps (killed, its host crashed), or the replication that made that point could not add it (it said so then), and what changed since the checkpoint may miss what the copy holds"
        );
        // Whether it holds the mark, and the data file it keeps its data in, if any.
        let held = match &nodes {
            Some(nodes) => {
                live_node(nodes, f).map(|n| (n.bitmaps.iter().any(|b| b == m), n.data_file.clone()))
            }
            None => image_info(t, host, f).map(|info| {
                (
                    bitmaps_in(&info).iter().any(|b| b["name"] == *m),
                    data_file_of(&info["format-specific"]),
                )
            }),
        };
        match held {
            // The mark is in the qcow2 file; the data may have been put back apart from it.
            Ok((_, Some(d))) => {
                return Some(format!(
                    "{f} keeps its data in {d}: what is written to that file without QEMU is in no bitmap of the disk, nor is that file marked"
                ));
            }
            Ok((true, None)) => {}
            Ok((false, None)) => return Some(gone),
            Err(e) => {
                return Some(format!(
                    "the bitmaps of {f} cannot be read to find {m}, which marked it as {point} read it: {e}"
                ));
            }
        }
    }
    None
}

/// One node of a running domain's block graph, as its QEMU says
/// (`query-named-block-nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveNode {
    pub node: String,
    pub drv: String,
    pub file: String,
    pub bitmaps: Vec<String>,
    /// The external data file of its qcow2 image, if it has one.
    pub data_file: Option<String>,
}

/// The nodes in QEMU's answer to `query-named-block-nodes`, as `virsh qemu-monitor-command`
/// prints it. An error answer, or one not understood, is an error. Pure.
pub fn parse_live_nodes(answer: &str) -> Result<Vec<LiveNode>, String> {
    let v: serde_json::Value = serde_json::from_str(answer.trim())
        .map_err(|e| format!("QEMU's answer is not understood: {e}"))?;
    if let Some(e) = v.get("error") {
        return Err(format!(
            "QEMU refused: {}",
            e["desc"].as_str().unwrap_or("(no reason given)")
        ));
    }
    let Some(nodes) = v["return"].as_array() else {
        return Err("QEMU's answer holds no list of block nodes".into());
    };
    nodes
        .iter()
        .map(|n| {
            let text = |k: &str| {
                n[k].as_str()
                    .map(String::from)
                    .ok_or_else(|| format!("a block node of QEMU's answer has no {k}"))
            };
            Ok(LiveNode {
                node: text("node-name")?,
                drv: text("drv")?,
                file: text("file")?,
                bitmaps: n["dirty-bitmaps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b["name"].as_str().map(String::from))
                    .collect(),
                data_file: data_file_of(&n["image"]["format-specific"]),
            })
        })
        .collect()
}

/// The qcow2 node of a running domain that is the file `file`: exactly one, or an error
/// (none, or several, is a graph reprise does not judge).
pub fn live_node<'a>(nodes: &'a [LiveNode], file: &str) -> Result<&'a LiveNode, String> {
    // QEMU names a node with options a plain file name cannot carry (a key secret, say) by
    // a `json:{…}` description, whose file is then named inside it.
    let named = |n: &LiveNode| {
        n.file == file
            || n.file.strip_prefix("json:").is_some_and(|j| {
                serde_json::from_str::<serde_json::Value>(j).is_ok_and(|v| {
                    v["file"]["filename"] == file || (v["file"].is_null() && v["filename"] == file)
                })
            })
    };
    let mut of = nodes.iter().filter(|n| n.drv == "qcow2" && named(n));
    match (of.next(), of.next()) {
        (Some(n), None) => Ok(n),
        (None, _) => Err(format!("its QEMU has no qcow2 node of {file}")),
        (Some(_), Some(_)) => Err(format!("its QEMU has several qcow2 nodes of {file}")),
    }
}

/// Runs the QMP command `cmd` in the running domain `dom`'s QEMU: its answer as printed.
fn qmp(
    t: &dyn Transport,
    host: &str,
    dom: &str,
    cmd: &serde_json::Value,
) -> Result<String, String> {
    sh(
        t,
        host,
        &format!(
            "virsh qemu-monitor-command {} {}",
            shell_quote(dom),
            shell_quote(&cmd.to_string())
        ),
    )
}

/// The block nodes of the running domain `dom`.
pub fn live_nodes(t: &dyn Transport, host: &str, dom: &str) -> Result<Vec<LiveNode>, String> {
    let cmd = serde_json::json!({
        "execute": "query-named-block-nodes",
        "arguments": { "flat": true }
    });
    parse_live_nodes(&qmp(t, host, dom, &cmd)?)
}

/// Runs `actions` (one QMP transaction: all or none) in `dom`'s QEMU.
fn transaction(
    t: &dyn Transport,
    host: &str,
    dom: &str,
    actions: Vec<serde_json::Value>,
) -> Result<(), String> {
    if actions.is_empty() {
        return Ok(());
    }
    let cmd = serde_json::json!({
        "execute": "transaction",
        "arguments": { "actions": actions }
    });
    let answer: serde_json::Value = serde_json::from_str(qmp(t, host, dom, &cmd)?.trim())
        .map_err(|e| format!("QEMU's answer is not understood: {e}"))?;
    match answer.get("error") {
        Some(e) => Err(format!(
            "QEMU refused: {}",
            e["desc"].as_str().unwrap_or("(no reason given)")
        )),
        None => Ok(()),
    }
}

/// Marks the disk files of the running domain `dom` as read, each `(file, mark)` with an
/// empty, disabled, persistent bitmap added to its qcow2 node: the mark a stopped vm's file
/// gets from [`add_marker`], which QEMU writes into the file when it stops cleanly. One
/// transaction: every disk marked, or none.
pub fn add_live_marks(
    t: &dyn Transport,
    host: &str,
    dom: &str,
    marks: &[(String, String)],
) -> Result<(), String> {
    let nodes = live_nodes(t, host, dom)?;
    let mut actions = Vec::new();
    for (f, m) in marks {
        let n = live_node(&nodes, f)?;
        actions.push(serde_json::json!({
            "type": "block-dirty-bitmap-add",
            "data": {
                "node": n.node,
                "name": m,
                "persistent": true,
                "disabled": true,
                "granularity": 2_147_483_648u64
            }
        }));
    }
    transaction(t, host, dom, actions)
        .map_err(|e| format!("its disks cannot be marked as read: {e}"))
}

/// Removes from the disks of the running domain `dom` reprise's marks other than each
/// file's `keep`: how many were removed.
pub fn remove_old_live_marks(
    t: &dyn Transport,
    host: &str,
    dom: &str,
    keep: &[(String, String)],
) -> Result<usize, String> {
    let nodes = live_nodes(t, host, dom)?;
    let mut actions = Vec::new();
    for (f, k) in keep {
        let n = live_node(&nodes, f)?;
        for b in n
            .bitmaps
            .iter()
            .filter(|b| b.starts_with(MARK_PREFIX) && *b != k)
        {
            actions.push(serde_json::json!({
                "type": "block-dirty-bitmap-remove",
                "data": { "node": n.node, "name": b }
            }));
        }
    }
    let removed = actions.len();
    transaction(t, host, dom, actions).map(|_| removed)
}

/// Marks the files of a stopped vm, before they are read as point `name`'s, with the empty,
/// disabled bitmap `name` ([`HowRead::marker`]): of the largest granularity, it takes a few
/// bytes, records nothing and is never read. A bitmap of that name already there is an error
/// ([`marker_name`] makes new names): a mark is never made again.
pub fn add_marker(
    t: &dyn Transport,
    host: &str,
    files: &[String],
    name: &str,
) -> Result<(), String> {
    let n = shell_quote(name);
    for f in files {
        let q = shell_quote(f);
        sh(
            t,
            host,
            &format!("qemu-img bitmap --add -g 2147483648 --disable {q} {n}"),
        )
        .map_err(|e| {
            format!("{f} cannot be marked with the bitmap {name} (qemu-img bitmap): {e}")
        })?;
    }
    Ok(())
}

/// Removes from the files of a stopped vm reprise's markers other than `keep` (the newest
/// points' of every disk): how many were removed.
pub fn remove_old_markers(
    t: &dyn Transport,
    host: &str,
    files: &[String],
    keep: &str,
) -> Result<usize, String> {
    let mut removed = 0;
    for f in files {
        let old: Vec<String> = bitmaps_in(&image_info(t, host, f)?)
            .iter()
            .filter_map(|b| b["name"].as_str())
            .filter(|n| n.starts_with(MARK_PREFIX) && *n != keep)
            .map(String::from)
            .collect();
        for m in old {
            sh(
                t,
                host,
                &format!(
                    "qemu-img bitmap --remove {} {}",
                    shell_quote(f),
                    shell_quote(&m)
                ),
            )
            .map_err(|e| format!("{f}: the bitmap {m} cannot be removed: {e}"))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A time in seconds since the epoch, as a person reads it.
fn epoch(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| secs.to_string())
}

/// The NBD socket of a domain's pull-mode backup.
pub fn socket(dom: &str) -> String {
    format!("/var/tmp/reprise-backup-{dom}.sock")
}

/// Where QEMU keeps the old content of what the guest overwrites during a backup (created by
/// libvirt; removed when the backup ends).
pub fn scratch(dom: &str, target: &str) -> String {
    format!("/var/tmp/reprise-backup-{dom}-{target}.scratch")
}

/// The dirty bitmap libvirt exports for disk `target`.
pub fn export_bitmap(target: &str) -> String {
    format!("{PREFIX}{target}")
}

/// The backup XML: a pull-mode export of `ours` (the others not backed up), incremental since
/// `since`.
pub fn backup_xml(dom: &str, all: &[String], ours: &[String], since: Option<&str>) -> String {
    let mut x = String::from("<domainbackup mode='pull'>");
    if let Some(s) = since {
        x.push_str(&format!("<incremental>{s}</incremental>"));
    }
    x.push_str(&format!(
        "<server transport='unix' socket='{}'/><disks>",
        socket(dom)
    ));
    for t in all {
        if ours.contains(t) {
            x.push_str(&format!(
                "<disk name='{t}' backup='yes' type='file' exportname='{t}' exportbitmap='{}'><scratch file='{}'/></disk>",
                export_bitmap(t),
                scratch(dom, t)
            ));
        } else {
            x.push_str(&format!("<disk name='{t}' backup='no'/>"));
        }
    }
    x.push_str("</disks></domainbackup>");
    x
}

/// The checkpoint XML: a bitmap on `ours`.
pub fn checkpoint_xml(name: &str, all: &[String], ours: &[String]) -> String {
    let mut x = format!("<domaincheckpoint><name>{name}</name><disks>");
    for t in all {
        let c = if ours.contains(t) { "bitmap" } else { "no" };
        x.push_str(&format!("<disk name='{t}' checkpoint='{c}'/>"));
    }
    x.push_str("</disks></domaincheckpoint>");
    x
}

/// Runs `script` on `host`: its standard output, or its error.
fn sh(t: &dyn Transport, host: &str, script: &str) -> Result<String, String> {
    // `virsh` says a domain's state in the host's language otherwise.
    let script = format!("export LC_ALL=C; {script}");
    let out = t.exec(host, &script, DEADLINE).map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        let err = out.stderr.trim();
        return Err(if err.is_empty() {
            format!("exit {}", out.exit_code)
        } else {
            err.lines()
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("; ")
        });
    }
    if out.truncated {
        // A list or a document cut short would be read as a shorter one.
        return Err("its answer was longer than reprise reads: cut, not used".into());
    }
    Ok(out.stdout)
}

/// Whether the domain runs, and its disks (live definition when it runs).
pub fn domain(t: &dyn Transport, host: &str, dom: &str) -> Result<(bool, Vec<DomDisk>), String> {
    let q = shell_quote(dom);
    let state = sh(t, host, &format!("virsh domstate {q}"))?;
    let running = state.trim() == "running";
    let xml = sh(
        t,
        host,
        &format!(
            "virsh dumpxml {}{q}",
            if running { "" } else { "--inactive " }
        ),
    )?;
    let disks = parse_disks(&xml).map_err(|e| format!("domain {dom}: {e}"))?;
    Ok((running, disks))
}

/// The domain's checkpoints.
/// The checkpoints of domain `dom`, and when libvirt made each of reprise's (its
/// `creationTime`; `None` where it does not say), in one command.
pub fn checkpoints_made(
    t: &dyn Transport,
    host: &str,
    dom: &str,
) -> Result<(Vec<String>, std::collections::BTreeMap<String, i64>), String> {
    let d = shell_quote(dom);
    let script = r#"cps=$(virsh checkpoint-list @DOM@ --name) || exit 1; printf '%s\n' "$cps" | while IFS= read -r c; do case "$c" in @PREFIX@*) t=$(virsh checkpoint-dumpxml @DOM@ "$c" | sed -n 's:.*<creationTime>\([0-9]*\)</creationTime>.*:\1:p' | head -n 1); printf '%s %s\n' "${t:--}" "$c" ;; ?*) printf -- '- %s\n' "$c" ;; esac; done"#
        // The domain last: nothing in its name is read as a placeholder.
        .replace("@PREFIX@", PREFIX)
        .replace("@DOM@", &d);
    let out = sh(t, host, &script)?;
    Ok(parse_checkpoints_made(&out))
}

/// [`checkpoints_made`]'s answer: `SECONDS NAME` lines (`-` for a time not said). Pure.
pub fn parse_checkpoints_made(out: &str) -> (Vec<String>, std::collections::BTreeMap<String, i64>) {
    let mut names = Vec::new();
    let mut made = std::collections::BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let Some((time, name)) = line.split_once(' ') else {
            continue;
        };
        if let Ok(secs) = time.parse::<i64>() {
            made.insert(name.to_string(), secs);
        }
        names.push(name.to_string());
    }
    (names, made)
}

pub fn checkpoints(t: &dyn Transport, host: &str, dom: &str) -> Result<Vec<String>, String> {
    let out = sh(
        t,
        host,
        &format!("virsh checkpoint-list {} --name", shell_quote(dom)),
    )?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// Why the persistent bitmap `name` of the stopped vm's qcow2 files cannot be used, if so.
pub fn offline_bitmap_problem(
    t: &dyn Transport,
    host: &str,
    files: &[String],
    name: &str,
) -> Result<Option<String>, String> {
    for f in files {
        let info = image_info(t, host, f)?;
        // A stopped domain's definition may not name its disks' backing files: the file does.
        if let Some(b) = info["backing-filename"].as_str() {
            return Ok(Some(format!(
                "{f} is an overlay over {b}: what is written to that file is in no bitmap of the disk"
            )));
        }
        if let Some(d) = data_file_of(&info["format-specific"]) {
            return Ok(Some(format!(
                "{f} keeps its data in {d}: what is written to that file without QEMU is in no bitmap of the disk"
            )));
        }
        let bitmaps = bitmaps_in(&info);
        let Some(b) = bitmaps.iter().find(|b| b["name"] == name) else {
            return Ok(Some(format!(
                "the bitmap {name} is missing from {f} (lost or removed)"
            )));
        };
        let flags: Vec<&str> = b["flags"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        if flags.contains(&"in-use") {
            return Ok(Some(format!(
                "the bitmap {name} of {f} is inconsistent (its vm stopped uncleanly)"
            )));
        }
        // A bitmap not `auto` is disabled: writes since went unrecorded.
        if !flags.contains(&"auto") {
            return Ok(Some(format!(
                "the bitmap {name} of {f} is disabled (it records no writes, flags: {})",
                if flags.is_empty() {
                    "none".to_string()
                } else {
                    flags.join(", ")
                }
            )));
        }
    }
    Ok(None)
}

/// Ends a backup job of this domain that reprise left (a killed replication): one whose
/// export is reprise's socket. What was done, if anything.
pub fn end_stale(t: &dyn Transport, host: &str, dom: &str) -> Result<Option<String>, String> {
    let q = shell_quote(dom);
    let xml = match sh(t, host, &format!("virsh backup-dumpxml {q}")) {
        Ok(x) => x,
        // No backup job.
        Err(_) => return Ok(None),
    };
    if !xml.contains(&socket(dom)) {
        return Err(format!(
            "a backup job that is not reprise's runs on domain {dom}: not replicated (it is left alone)"
        ));
    }
    end(t, host, dom)?;
    Ok(Some(
        "a backup job left by an interrupted replication was ended".into(),
    ))
}

/// Begins the pull-mode backup with a new checkpoint `name`: when libvirt made that
/// checkpoint (its `creationTime`), where it says.
pub fn begin(
    t: &dyn Transport,
    host: &str,
    dom: &str,
    all: &[String],
    ours: &[String],
    since: Option<&str>,
    name: Option<&str>,
) -> Result<Option<i64>, String> {
    let (checkpoint, made) = match name {
        Some(n) => (
            format!(
                "printf '%s' {} > \"$d/c.xml\"; ",
                shell_quote(&checkpoint_xml(n, all, ours))
            ),
            format!(
                "; virsh checkpoint-dumpxml {} {} | sed -n 's:.*<creationTime>\\([0-9]*\\)</creationTime>.*:\\1:p' | head -n 1",
                shell_quote(dom),
                shell_quote(n)
            ),
        ),
        None => (String::new(), String::new()),
    };
    let script = format!(
        "set -e; d=$(mktemp -d); trap 'rm -rf \"$d\"' EXIT; rm -f {sock} {scratch}; printf '%s' {b} > \"$d/b.xml\"; {checkpoint}virsh backup-begin {q} \"$d/b.xml\" {c}>/dev/null{made}",
        sock = shell_quote(&socket(dom)),
        scratch = ours
            .iter()
            .map(|t| shell_quote(&scratch(dom, t)))
            .collect::<Vec<_>>()
            .join(" "),
        b = shell_quote(&backup_xml(dom, all, ours, since)),
        c = if name.is_some() { "\"$d/c.xml\" " } else { "" },
        q = shell_quote(dom),
    );
    let out = sh(t, host, &script)?;
    Ok(out.trim().parse::<i64>().ok())
}

/// Ends the backup job (the export goes away) and removes its scratch files.
pub fn end(t: &dyn Transport, host: &str, dom: &str) -> Result<(), String> {
    sh(t, host, &end_script(dom)).map(|_| ())
}

/// [`end`]'s command. A job that cannot be aborted, of a domain that runs (one shut off has
/// no job), fails it, and its export and scratch files are left to it; libvirt's words are
/// read in English (`LC_ALL=C`). Only this domain's scratch files are removed:
/// `DOM-TARGET.scratch`, a disk target never holding a `-`, where another domain's (`DOM-2`'s
/// `DOM-2-vda.scratch`) would also match `DOM-*.scratch`.
fn end_script(dom: &str) -> String {
    let prefix = format!("/var/tmp/reprise-backup-{dom}-");
    format!(
        "if ! e=$(LC_ALL=C virsh domjobabort {q} 2>&1); then s=$(LC_ALL=C virsh domstate {q} 2>/dev/null); case $e in *'no job is active'*) ;; *) if [ \"$s\" = running ] || [ \"$s\" = paused ]; then printf '%s\\n' \"$e\" >&2; exit 1; fi;; esac; fi; rm -f {sock}; p={p}; for f in \"$p\"*.scratch; do r=${{f#\"$p\"}}; case $r in *-*) ;; *) rm -f \"$f\";; esac; done",
        q = shell_quote(dom),
        sock = shell_quote(&socket(dom)),
        p = shell_quote(&prefix),
    )
}

/// Deletes reprise's checkpoints other than `keep` (their bitmaps merge into the others):
/// what was deleted.
pub fn prune(t: &dyn Transport, host: &str, dom: &str, keep: &str) -> Result<Vec<String>, String> {
    let mut gone = Vec::new();
    for c in checkpoints(t, host, dom)? {
        if c.starts_with(PREFIX) && c != keep {
            delete(t, host, dom, &c)?;
            gone.push(c);
        }
    }
    Ok(gone)
}

/// Deletes the checkpoint `name` (its bitmap merges into its parent's, which goes on
/// tracking every write since it). A checkpoint whose bitmap is broken (its vm killed) cannot
/// be merged: only libvirt's record of it goes.
fn delete(t: &dyn Transport, host: &str, dom: &str, name: &str) -> Result<(), String> {
    let (d, n) = (shell_quote(dom), shell_quote(name));
    sh(
        t,
        host,
        &format!(
            "virsh checkpoint-delete {d} {n} >/dev/null 2>&1 || virsh checkpoint-delete --metadata {d} {n} >/dev/null"
        ),
    )
    .map(|_| ())
}

/// The read of one disk: libvirt's export of it, or `qemu-nbd` of its file. `relied`: the
/// mark of the copy's newest point, which the decision found in the file (`marker_problem`).
/// A stopped vm's file read through a bitmap must still hold it, and the new `marker`, once
/// `qemu-nbd` holds it (`send --mark`): put back to another file in between, it is refused.
pub fn guest_read(
    running: bool,
    dom: &str,
    disk: &DomDisk,
    d: &Decision,
    checkpoint: Option<(String, Option<i64>)>,
    marker: Option<String>,
    relied: Option<String>,
) -> super::remote::GuestRead {
    let changed = d.mode == ReadMode::ChangedBlocks;
    let marks = if changed && !running {
        relied.into_iter().chain(marker.clone()).collect()
    } else {
        Vec::new()
    };
    super::remote::GuestRead {
        marks,
        nbd: running.then(|| (socket(dom), disk.target.clone())),
        format: if disk.format == "qcow2" {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        },
        bitmap: match (changed || d.audit, running) {
            (true, true) => Some(export_bitmap(&disk.target)),
            (true, false) => d.since.clone(),
            (false, _) => None,
        },
        audit: d.audit,
        how: HowRead {
            mode: d.mode,
            why: d.why.clone(),
            created: checkpoint.as_ref().and_then(|(_, c)| *c),
            missed: None,
            checkpoint: checkpoint.map(|(c, _)| c),
            since: if changed { d.since.clone() } else { None },
            marker,
        },
    }
}

#[cfg(test)]
mod tests {
    /// A running domain's disk is found by its qcow2 node (not the file node under it, nor
    /// the backup's scratch node), with its bitmaps; a graph with no node of the file, or two,
    /// and an answer of QEMU that is an error, are errors, never a node without marks.
    #[test]
    fn a_running_disk_s_marks_are_read_from_its_own_qcow2_node_only() {
        let answer = r#"{"return":[
            {"node-name":"libvirt-3-format","drv":"qcow2","file":"/var/tmp/reprise-backup-web-vda.scratch"},
            {"node-name":"libvirt-2-format","drv":"qcow2","file":"/images/web-data.qcow2",
             "dirty-bitmaps":[{"name":"reprise-mark-P2-1-2-aa","granularity":2147483648}],
             "image":{"format-specific":{"type":"qcow2","data":{"compat":"1.1","data-file":"/images/web-data.raw"}}}},
            {"node-name":"libvirt-2-storage","drv":"file","file":"/images/web-data.qcow2"},
            {"node-name":"libvirt-1-format","drv":"qcow2","file":"/images/web.qcow2",
             "dirty-bitmaps":[{"name":"reprise-P2.1"},{"name":"reprise-mark-P2-1-2-bb"}]},
            {"node-name":"libvirt-1-storage","drv":"file","file":"/images/web.qcow2"}
        ],"id":"libvirt-21"}"#;
        let nodes = super::parse_live_nodes(answer).unwrap();
        let web = super::live_node(&nodes, "/images/web.qcow2").unwrap();
        assert_eq!(web.node, "libvirt-1-format");
        assert_eq!(web.bitmaps, ["reprise-P2.1", "reprise-mark-P2-1-2-bb"]);
        let data = super::live_node(&nodes, "/images/web-data.qcow2").unwrap();
        assert_eq!(data.bitmaps, ["reprise-mark-P2-1-2-aa"]);
        // Its data kept in another file, which no bitmap of it covers.
        assert_eq!(data.data_file.as_deref(), Some("/images/web-data.raw"));
        assert_eq!(web.data_file, None);
        // Named by a description that carries options (an encrypted disk's key secret).
        let mut described = nodes.clone();
        described[1].file = r#"json:{"encrypt.key-secret": "sec0", "driver": "qcow2", "file": {"driver": "file", "filename": "/images/web-data.qcow2"}}"#.into();
        described.retain(|n| n.drv != "file");
        let data = super::live_node(&described, "/images/web-data.qcow2").unwrap();
        assert_eq!(data.node, "libvirt-2-format");
        let err = super::live_node(&nodes, "/images/other.qcow2").unwrap_err();
        assert!(
            err.contains("no qcow2 node of /images/other.qcow2"),
            "{err}"
        );
        let mut twice = nodes.clone();
        twice.push(web.clone());
        let err = super::live_node(&twice, "/images/web.qcow2").unwrap_err();
        assert!(err.contains("several"), "{err}");
        let err = super::parse_live_nodes(
            r#"{"id":"libvirt-9","error":{"class":"GenericError","desc":"no such thing"}}"#,
        )
        .unwrap_err();
        assert!(err.contains("no such thing"), "{err}");
        for bad in ["", "{\"return\":{}}", "{\"return\":[{\"drv\":\"qcow2\"}]}"] {
            assert!(super::parse_live_nodes(bad).is_err(), "{bad}");
        }
    }

    /// The end of a backup job removes its domain's scratch files only, never another
    /// domain's whose name begins with this one's (`web-2`'s, ending `web`), and leaves
    /// everything to a job it cannot abort. Run against a stand-in of `virsh`.
    #[test]
    fn a_backup_job_s_end_removes_its_own_scratch_files_only() {
        for (abort, ends) in [
            ("exit 0", true),
            (
                "echo 'error: Requested operation is not valid: no job is active on the domain' >&2; exit 1",
                true,
            ),
            (
                "case $1 in domstate) echo running;; *) echo 'error: failed to connect to the hypervisor' >&2; exit 1;; esac",
                false,
            ),
            // A guest shut down once its reads were done: no job is left to abort.
            (
                "case $1 in domstate) echo 'shut off';; *) echo 'error: Requested operation is not valid: domain is not running' >&2; exit 1;; esac",
                true,
            ),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let (bin, dir) = (tmp.path().join("bin"), tmp.path().join("tmp"));
            std::fs::create_dir_all(&bin).unwrap();
            std::fs::create_dir_all(&dir).unwrap();
            let virsh = bin.join("virsh");
            std::fs::write(&virsh, format!("#!/bin/sh\n{abort}\n")).unwrap();
            let mut perms = std::fs::metadata(&virsh).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&virsh, perms).unwrap();
            let files = [
                "reprise-backup-web-vda.scratch",
                "reprise-backup-web-vdb.scratch",
                "reprise-backup-web.sock",
                "reprise-backup-web-2-vda.scratch",
                "reprise-backup-web-2.sock",
            ];
            for f in files {
                std::fs::write(dir.join(f), b"").unwrap();
            }
            let script =
                super::end_script("web").replace("/var/tmp/", &format!("{}/", dir.display()));
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .env(
                    "PATH",
                    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
                )
                .output()
                .unwrap();
            assert_eq!(out.status.success(), ends, "{abort}: {out:?}");
            let left: Vec<&str> = files.into_iter().filter(|f| dir.join(f).exists()).collect();
            match ends {
                true => assert_eq!(
                    left,
                    [
                        "reprise-backup-web-2-vda.scratch",
                        "reprise-backup-web-2.sock"
                    ],
                    "{abort}"
                ),
                false => assert_eq!(left, files, "{abort}"),
            }
        }
    }

    /// A `virsh` or `qemu-img` answer cut at the output limit (a list of checkpoints, a
    /// document) is refused, never read as a shorter one.
    #[test]
    fn an_answer_cut_at_the_limit_is_refused() {
        let e =
            super::sh(&crate::replica::snapshot::tests::Cut, "hv-main", "check").expect_err("cut");
        assert!(e.contains("longer than reprise reads"), "{e}");
    }

    use super::*;

    const XML: &str = "<domain type='qemu'>\n  <devices>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='/var/lib/libvirt/images/app.qcow2' index='1'/>\n      <backingStore type='file'><format type='raw'/><source file='/b&amp;c.raw'/></backingStore>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n    <disk type='file' device='cdrom'>\n      <source file='/iso.iso'/>\n      <target dev='sda' bus='sata'/>\n    </disk>\n    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='/data&apos;s.img'/>\n      <target dev='vdb' bus='virtio'/>\n    </disk>\n  </devices>\n</domain>\n";

    #[test]
    fn disks_are_read_from_libvirts_xml_without_cdroms_or_backing_stores() {
        assert_eq!(
            parse_disks(XML).unwrap(),
            vec![
                DomDisk {
                    target: "vda".into(),
                    source: "/var/lib/libvirt/images/app.qcow2".into(),
                    format: "qcow2".into(),
                    backing: Some("/b&c.raw".into()),
                    data_file: None,
                    unlike_file: None,
                },
                DomDisk {
                    target: "vdb".into(),
                    source: "/data's.img".into(),
                    format: "raw".into(),
                    backing: None,
                    data_file: None,
                    unlike_file: None,
                },
            ]
        );
    }

    /// Only the domain's own disks: a `<disk>` in its metadata or in its description's CDATA
    /// (which anyone who may edit the domain writes) naming a real disk file under another
    /// target would have that target's export read as the file's copy.
    #[test]
    fn a_disk_outside_the_devices_of_the_domain_is_none_of_its_disks() {
        let decoy = "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/var/lib/libvirt/images/app.qcow2'/><target dev='vdb'/></disk>";
        let xml = XML.replace(
            "<domain type='qemu'>\n",
            &format!(
                "<domain type='qemu'>\n  <description><![CDATA[{decoy}]]></description>\n  <metadata><app xmlns=\"http://example.org/app\">{decoy}</app><a:x xmlns:a=\"http://example.org/a\"><devices>{decoy}</devices></a:x></metadata>\n"
            ),
        );
        assert_eq!(parse_disks(&xml).unwrap(), parse_disks(XML).unwrap());
        // Written with double quotes, as XML allows: the same disks.
        assert_eq!(
            parse_disks(&XML.replace('\'', "\"").replace("data\"s", "data's")).unwrap(),
            parse_disks(XML).unwrap()
        );
        // An attribute whose name ends like the one read is not it.
        let xml = XML.replace(
            "<source file='/var/lib/libvirt/images/app.qcow2' index='1'/>",
            "<source xfile='/decoy.qcow2' file='/var/lib/libvirt/images/app.qcow2' index='1'/>",
        );
        assert_eq!(parse_disks(&xml).unwrap(), parse_disks(XML).unwrap());
        for (bad, says) in [
            ("<domain><devices><disk>", "not XML"),
            ("<network><devices/></network>", "not a libvirt <domain>"),
            (
                "<!DOCTYPE domain [<!ENTITY f SYSTEM \"/etc/passwd\">]><domain/>",
                "document type",
            ),
        ] {
            let e = parse_disks(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn each_file_is_exactly_one_disk_of_the_domain() {
        let disks = parse_disks(XML).unwrap();
        let got = disks_of(
            &disks,
            &["/data's.img", "/var/lib/libvirt/images/app.qcow2"],
        )
        .unwrap();
        let targets: Vec<&str> = got.iter().map(|d| d.target.as_str()).collect();
        assert_eq!(targets, ["vdb", "vda"]);
        let e = disks_of(&disks, &["/iso.iso"]).unwrap_err();
        assert!(e.contains("/iso.iso is not one of its disks"), "{e}");
        let mut twice = disks.clone();
        twice.push(DomDisk {
            target: "vdc".into(),
            ..disks[0].clone()
        });
        let e = disks_of(&twice, &["/var/lib/libvirt/images/app.qcow2"]).unwrap_err();
        assert!(e.contains("more than one of its disks (vda, vdc)"), "{e}");
    }

    /// A point read as `read` says: of a running vm, named as the checkpoint its read began.
    fn point(read: Option<HowRead>) -> Point {
        let id = read
            .as_ref()
            .and_then(|r| r.checkpoint.as_deref())
            .and_then(|c| c.strip_prefix(PREFIX))
            .unwrap_or("p")
            .to_string();
        Point {
            id,
            taken_at: chrono::Utc::now(),
            source: "s".into(),
            size: 1,
            blake3: "00".into(),
            verified: Verified::Yes,
            checked_at: None,
            received_bytes: 0,
            duration_ms: 0,
            stamp: None,
            definition: None,
            read,
            unusable: None,
            pending: false,
            newest_file: None,
            left_out: Vec::new(),
        }
    }

    /// When the tests' checkpoints were made, as their points record it.
    const MADE: i64 = 1_796_370_000;

    fn how(cp: Option<&str>) -> Option<HowRead> {
        Some(HowRead {
            mode: ReadMode::ChangedBlocks,
            why: None,
            checkpoint: cp.map(String::from),
            since: None,
            created: Some(MADE),
            missed: None,
            marker: None,
        })
    }

    /// Checkpoints `cps` on the source, each made at [`MADE`].
    fn made(cps: &[&str]) -> std::collections::BTreeMap<String, i64> {
        cps.iter().map(|c| (c.to_string(), MADE)).collect()
    }

    fn qcow2(t: &str) -> DomDisk {
        DomDisk {
            target: t.into(),
            source: format!("/{t}"),
            format: "qcow2".into(),
            backing: None,
            data_file: None,
            unlike_file: None,
        }
    }

    /// Two qcow2 disks on hv-main, whose copies' newest points are `newest`, the source at
    /// checkpoint `reprise-1` made at [`MADE`].
    fn two_disks_at_reprise_1(newest: Vec<Option<&Point>>) -> Facts<'_> {
        Facts {
            host: "hv-main",
            asked_scan: false,
            newest,
            disks: vec![qcow2("vda"), qcow2("vdb")],
            checkpoints: vec!["reprise-1".into()],
            created: made(&["reprise-1"]),
            bitmap_problem: None,
            copy_problem: None,
            marker_problem: None,
        }
    }

    /// A point read while its vm was stopped is of an older checkpoint than it (named after
    /// another point): the changes since that checkpoint are read only while its marker is in
    /// the disk files; a point that left none, or whose marker is gone, makes a scan that says
    /// why, and the scan's point is still of that checkpoint. A running vm's point whose id
    /// the copy gave a `-N` is its own checkpoint's.
    #[test]
    fn a_point_read_stopped_is_read_through_its_older_checkpoint_only_while_its_marker_is_there() {
        let stopped = |id: &str, marker: Option<&str>| Point {
            id: id.into(),
            read: Some(HowRead {
                marker: marker.map(String::from),
                ..how(Some("reprise-1")).unwrap()
            }),
            ..point(None)
        };
        let unmarked = stopped("2", None);
        let d = decide(&two_disks_at_reprise_1(vec![Some(&unmarked); 2]));
        assert_eq!(
            (d.mode, d.since.as_deref()),
            (ReadMode::Scan, Some("reprise-1"))
        );
        let why = d.why.unwrap();
        assert!(
            why.contains("point 2 was read while its vm was stopped")
                && why.contains("marked nothing in its disk file"),
            "{why}"
        );
        let marked = stopped("2", Some("reprise-mark-2"));
        let d = decide(&two_disks_at_reprise_1(vec![Some(&marked); 2]));
        assert_eq!(d.mode, ReadMode::ChangedBlocks, "{d:?}");
        let gone = Facts {
            marker_problem: Some("the bitmap reprise-mark-2 … is gone from it".into()),
            ..two_disks_at_reprise_1(vec![Some(&marked); 2])
        };
        let d = decide(&gone);
        assert_eq!(
            (d.mode, d.since.as_deref()),
            (ReadMode::Scan, Some("reprise-1"))
        );
        assert!(d.why.unwrap().contains("is gone from it"));
        // Of a running vm: its own checkpoint, `-N` or not; not a point of another's `-N`.
        for (id, mode) in [
            ("1", ReadMode::ChangedBlocks),
            ("1-2", ReadMode::ChangedBlocks),
            ("1-", ReadMode::Scan),
            ("12", ReadMode::Scan),
            ("1-x", ReadMode::Scan),
        ] {
            let p = stopped(id, None);
            let d = decide(&two_disks_at_reprise_1(vec![Some(&p); 2]));
            assert_eq!(d.mode, mode, "{id}: {d:?}");
        }
    }

    /// The decision for copies whose newest points are `newest`, on a host with checkpoints.
    fn check(newest: &[Option<Point>], cps: &[&str], asked: bool, expected: (ReadMode, &str)) {
        let f = Facts {
            host: "hv-main",
            asked_scan: asked,
            newest: newest.iter().map(Option::as_ref).collect(),
            disks: vec![qcow2("vda"), qcow2("vdb")],
            checkpoints: cps.iter().map(|c| c.to_string()).collect(),
            created: made(cps),
            bitmap_problem: None,
            copy_problem: None,
            marker_problem: None,
        };
        let d = decide(&f);
        assert_eq!(d.mode, expected.0, "{d:?}");
        assert!(
            d.why.as_deref().unwrap_or("").contains(expected.1),
            "{d:?} does not say {:?}",
            expected.1
        );
    }

    #[test]
    fn only_what_changed_is_read_when_every_copy_is_at_a_checkpoint_the_source_has() {
        let at = |c| Some(point(how(Some(c))));
        check(
            &[at("reprise-1"), at("reprise-1")],
            &["reprise-1"],
            false,
            (ReadMode::ChangedBlocks, ""),
        );
        check(
            &[None, at("reprise-1")],
            &["reprise-1"],
            false,
            (ReadMode::Scan, "the first copy"),
        );
        check(
            &[Some(point(None)), at("reprise-1")],
            &["reprise-1"],
            false,
            (ReadMode::Scan, "image file"),
        );
        check(
            &[at("reprise-1"), at("reprise-2")],
            &["reprise-1", "reprise-2"],
            false,
            (ReadMode::Scan, "different checkpoints"),
        );
        check(
            &[at("reprise-1"), at("reprise-1")],
            &["reprise-2"],
            false,
            (
                ReadMode::Scan,
                "checkpoint reprise-1 is no longer on hv-main",
            ),
        );
        check(
            &[at("reprise-1"), at("reprise-1")],
            &["reprise-1"],
            true,
            (ReadMode::Scan, "asked"),
        );
        check(
            &[Some(point(how(None))), Some(point(how(None)))],
            &["reprise-1"],
            false,
            (ReadMode::Scan, "no checkpoint recorded"),
        );
    }

    /// A scan asked for where the bitmap could have been read is checked against it; one
    /// made for another reason (a checkpoint gone, a bitmap that cannot be used) cannot be,
    /// and says so when it was asked for.
    #[test]
    fn an_asked_scan_is_checked_against_the_bitmap_it_replaces() {
        let p = point(how(Some("reprise-1")));
        let mut f = two_disks_at_reprise_1(vec![Some(&p), Some(&p)]);
        assert!(!decide(&f).audit);
        f.asked_scan = true;
        let d = decide(&f);
        assert_eq!(
            (d.mode, d.since.as_deref(), d.audit),
            (ReadMode::Scan, Some("reprise-1"), true),
            "{d:?}"
        );
        f.bitmap_problem = Some("the bitmap of vda is inconsistent".into());
        let d = decide(&f);
        assert_eq!(
            (d.mode, d.since.as_deref(), d.audit),
            (ReadMode::Scan, None, false)
        );
        assert!(
            d.why.as_deref().unwrap().contains(
                "asked (--scan); its bitmap cannot be checked: the bitmap of vda is inconsistent"
            ),
            "{d:?}"
        );
        f.bitmap_problem = None;
        f.checkpoints = vec!["reprise-2".into()];
        let d = decide(&f);
        assert_eq!((d.mode, d.audit), (ReadMode::Scan, false), "{d:?}");
    }

    /// A check that found writes the bitmap missed leaves the bitmap distrusted: the next
    /// replications read every block and check it again (not through it), until a check
    /// finds none; one that cannot be checked still reads every block, and says why.
    #[test]
    fn a_bitmap_found_missing_writes_is_checked_again_until_a_check_finds_none() {
        let mut found = point(how(Some("reprise-1")));
        found.read.as_mut().unwrap().missed = Some(3);
        let clean = point(how(Some("reprise-1")));
        let mut f = two_disks_at_reprise_1(vec![Some(&clean), Some(&found)]);
        let d = decide(&f);
        assert_eq!(
            (d.mode, d.since.as_deref(), d.audit),
            (ReadMode::Scan, Some("reprise-1"), true),
            "{d:?}"
        );
        assert!(
            d.why
                .as_deref()
                .unwrap()
                .contains("found 3 blocks its dirty bitmap missed")
                && d.why
                    .as_deref()
                    .unwrap()
                    .contains("until a check finds none"),
            "{d:?}"
        );
        assert_eq!(
            d.unchecked("gone"),
            format!("{UNCHECKED_AGAIN}gone{STILL_DISTRUSTED}")
        );
        f.bitmap_problem = Some("the bitmap of vda is inconsistent".into());
        let d = decide(&f);
        assert_eq!((d.mode, d.audit), (ReadMode::Scan, false), "{d:?}");
        let why = d.why.as_deref().unwrap();
        assert!(
            why.starts_with(UNCHECKED_AGAIN) && why.ends_with(STILL_DISTRUSTED),
            "{d:?}"
        );
        // Asked for as well: said as asked.
        f.bitmap_problem = None;
        f.asked_scan = true;
        let d = decide(&f);
        assert!(
            d.audit && d.why.as_deref().unwrap().starts_with("asked"),
            "{d:?}"
        );
        assert_eq!(d.unchecked("gone"), format!("{UNCHECKED}gone"));
        // The check found none: the bitmap is read again.
        f.asked_scan = false;
        f.newest = vec![Some(&clean), Some(&clean)];
        assert_eq!(decide(&f).mode, ReadMode::ChangedBlocks);
    }

    #[test]
    fn a_copy_found_damaged_or_changed_behind_its_point_is_read_whole() {
        // A bitmap says what the guest wrote, not what differs in the copy: the blocks a
        // `verify` found damaged, or written into the copy by hand, are in no bitmap.
        let mut bad = point(how(Some("reprise-1")));
        bad.verified = Verified::Bad;
        let good = point(how(Some("reprise-1")));
        let mut f = two_disks_at_reprise_1(vec![Some(&good), Some(&bad)]);
        let d = decide(&f);
        assert_eq!(d.mode, ReadMode::Scan, "{d:?}");
        assert!(d.why.unwrap().contains("failed verification"));
        f.newest = vec![Some(&good), Some(&good)];
        f.copy_problem = Some("b.raw changed since its newest point p was made".into());
        let d = decide(&f);
        assert_eq!(d.mode, ReadMode::Scan, "{d:?}");
        assert!(d.why.unwrap().contains("changed since its newest point"));
        f.copy_problem = None;
        assert_eq!(decide(&f).mode, ReadMode::ChangedBlocks);
        // An overlay over a backing file: what is written there is in no bitmap of the disk.
        f.disks[1].backing = Some("/templates/debian.qcow2".into());
        let d = decide(&f);
        assert_eq!(d.mode, ReadMode::Scan, "{d:?}");
        assert!(
            d.why
                .unwrap()
                .contains("disk vdb is an overlay over /templates/debian.qcow2"),
        );
    }

    /// A checkpoint is known by when libvirt made it, not by its name alone: one deleted and
    /// made again under the same name (its bitmap misses what was written in between), one
    /// whose time cannot be read, or copies whose points do not record it (an older reprise,
    /// or disks that disagree) are read whole, saying why.
    #[test]
    fn a_checkpoint_made_again_under_the_same_name_is_never_read_as_the_old_one() {
        let at = point(how(Some("reprise-1")));
        let mut f = two_disks_at_reprise_1(vec![Some(&at), Some(&at)]);
        assert_eq!(decide(&f).mode, ReadMode::ChangedBlocks);
        f.created.insert("reprise-1".into(), MADE + 60);
        let d = decide(&f);
        assert_eq!(d.mode, ReadMode::Scan, "{d:?}");
        let why = d.why.unwrap();
        assert!(
            why.contains("checkpoint reprise-1 on hv-main was made at 2026-12-04 07:41:00 UTC and the copies' point at 2026-12-04 07:40:00 UTC")
                && why.contains("made again under the same name"),
            "{why}"
        );
        f.created.clear();
        let d = decide(&f);
        assert!(
            d.mode == ReadMode::Scan
                && d.why
                    .as_deref()
                    .unwrap()
                    .contains("cannot be read on hv-main"),
            "{d:?}"
        );
        f.created = made(&["reprise-1"]);
        let older = point(Some(HowRead {
            created: None,
            ..how(Some("reprise-1")).unwrap()
        }));
        f.newest = vec![Some(&at), Some(&older)];
        let d = decide(&f);
        assert!(
            d.mode == ReadMode::Scan
                && d.why
                    .as_deref()
                    .unwrap()
                    .contains("do not record when checkpoint reprise-1 was made"),
            "{d:?}"
        );
    }

    /// The listing of checkpoints with their times: a time not said is none, a name with a
    /// space is kept whole.
    #[test]
    fn checkpoints_are_read_with_when_they_were_made() {
        let (names, made) = parse_checkpoints_made(
            "1796370000 reprise-20261204T094000Z\n- a manual one\n- reprise-x\n\n",
        );
        assert_eq!(
            names,
            ["reprise-20261204T094000Z", "a manual one", "reprise-x"]
        );
        assert_eq!(
            made.into_iter().collect::<Vec<_>>(),
            [("reprise-20261204T094000Z".to_string(), 1_796_370_000)]
        );
    }

    #[test]
    fn a_raw_disk_is_always_scanned_and_a_bad_bitmap_says_why() {
        let at = Some(point(how(Some("reprise-1"))));
        let mut f = Facts {
            host: "h",
            asked_scan: false,
            newest: vec![at.as_ref()],
            disks: vec![DomDisk {
                format: "raw".into(),
                ..qcow2("vda")
            }],
            checkpoints: vec!["reprise-1".into()],
            created: made(&["reprise-1"]),
            bitmap_problem: None,
            copy_problem: None,
            marker_problem: None,
        };
        assert!(decide(&f).why.unwrap().contains("disk vda is raw"));
        f.disks = vec![qcow2("vda")];
        f.bitmap_problem = Some("the bitmap reprise-1 of /vda is inconsistent".into());
        let d = decide(&f);
        assert_eq!(d.mode, ReadMode::Scan);
        assert!(d.why.unwrap().contains("inconsistent"));
        assert_eq!(
            d.since, None,
            "a bad bitmap is not a checkpoint to go on from"
        );
    }

    #[test]
    fn the_backup_exports_only_the_replicated_disks() {
        let all = ["vda".to_string(), "vdb".to_string()];
        let x = backup_xml("app", &all, &all[..1], Some("reprise-1"));
        assert!(x.contains("<incremental>reprise-1</incremental>"), "{x}");
        assert!(x.contains("<disk name='vda' backup='yes'"), "{x}");
        assert!(x.contains("<disk name='vdb' backup='no'/>"), "{x}");
        assert!(
            x.contains("socket='/var/tmp/reprise-backup-app.sock'"),
            "{x}"
        );
        let c = checkpoint_xml("reprise-2", &all, &all[..1]);
        assert!(c.contains("<disk name='vda' checkpoint='bitmap'/>"), "{c}");
        assert!(c.contains("<disk name='vdb' checkpoint='no'/>"), "{c}");
    }

    /// A checkpoint's name is never made twice, even for one point id in one process, and
    /// says which point it was made for; an earlier version's (`reprise-<id>`) too. A point
    /// read from a running vm is of its own checkpoint either way; one read while it was
    /// stopped, of an older one.
    #[test]
    fn a_checkpoint_name_is_never_made_twice_and_says_its_point() {
        let (a, b) = (
            checkpoint_name("20261207T071500Z"),
            checkpoint_name("20261207T071500Z"),
        );
        assert_ne!(a, b);
        assert!(a.starts_with("reprise-20261207T071500Z."), "{a}");
        assert_eq!(checkpoint_point(&a), Some("20261207T071500Z"));
        assert_eq!(
            checkpoint_point("reprise-20261207T071500Z"),
            Some("20261207T071500Z")
        );
        assert_eq!(checkpoint_point("nightly"), None);
        let read = |cp: &str| HowRead {
            mode: ReadMode::ChangedBlocks,
            why: None,
            checkpoint: Some(cp.to_string()),
            since: None,
            created: None,
            missed: None,
            marker: None,
        };
        let mut p = point(Some(read(&a)));
        p.id = "20261207T071500Z".into();
        assert!(!stopped_unmarked(&p));
        p.id = "20261207T071500Z-2".into();
        assert!(!stopped_unmarked(&p), "a -N the copy added");
        p.id = "20261207T080000Z".into();
        assert!(stopped_unmarked(&p), "of an older checkpoint, unmarked");
    }

    /// This machine as the host: each command run by `sh -c`.
    struct Local;

    impl Transport for Local {
        fn exec(
            &self,
            _host: &str,
            command: &str,
            _deadline: std::time::Duration,
        ) -> Result<crate::ssh::ExecOutput, crate::ssh::SshError> {
            let out = std::process::Command::new("sh")
                .args(["-c", command])
                .output()
                .expect("sh");
            Ok(crate::ssh::ExecOutput {
                exit_code: out.status.code().unwrap_or(1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                truncated: false,
                timed_out: false,
                duration: std::time::Duration::ZERO,
            })
        }
    }

    /// Each mark has a name of its own, even for one point id (two runs in one second), and a
    /// mark is never made again over one of its name: a run whose point was refused cannot
    /// make, on a file put back, the mark a recorded point takes as proof of the file it read.
    #[test]
    fn a_mark_is_never_made_again() {
        let (a, b) = (
            marker_name("20261205T110000Z"),
            marker_name("20261205T110000Z"),
        );
        assert_ne!(a, b);
        assert!(a.starts_with("reprise-mark-20261205T110000Z-"), "{a}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d.qcow2").to_string_lossy().into_owned();
        crate::replica::image::tests::qemu_img(&["create", "-q", "-f", "qcow2", &f, "1M"]);
        let files = [f.clone()];
        add_marker(&Local, "h", &files, &a).unwrap();
        let e = add_marker(&Local, "h", &files, &a).unwrap_err();
        assert!(e.contains("cannot be marked with the bitmap"), "{e}");
        add_marker(&Local, "h", &files, &b).unwrap();
        let names: Vec<String> = bitmaps_in(&image_info(&Local, "h", &f).unwrap())
            .iter()
            .filter_map(|m| m["name"].as_str().map(String::from))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    /// A stopped domain's definition may not name its disks' backing files: the bitmap of an
    /// overlay is refused from the file itself (what is written to its backing file is in
    /// no bitmap of the disk), against images `qemu-img` makes.
    #[test]
    fn the_bitmap_of_a_stopped_overlay_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let run = crate::replica::image::tests::qemu_img;
        run(&["create", "-q", "-f", "qcow2", &p("base.qcow2"), "1M"]);
        run(&["create", "-q", "-f", "qcow2", &p("whole.qcow2"), "1M"]);
        run(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &p("base.qcow2"),
            &p("over.qcow2"),
        ]);
        for f in ["whole.qcow2", "over.qcow2"] {
            run(&["bitmap", "--add", &p(f), "reprise-1"]);
        }
        let whole = [p("whole.qcow2")];
        assert_eq!(
            offline_bitmap_problem(&Local, "h", &whole, "reprise-1"),
            Ok(None)
        );
        let over = [p("over.qcow2")];
        let why = offline_bitmap_problem(&Local, "h", &over, "reprise-1")
            .unwrap()
            .unwrap();
        assert!(
            why.contains("over.qcow2 is an overlay over") && why.contains("base.qcow2"),
            "{why}"
        );
    }

    /// A disk whose file is not the guest's bytes besides its format (encrypted, a slice of
    /// the file) or of another format than qcow2 or raw is never read from its file while its
    /// vm is stopped: its copy would be the file's bytes, recorded and started as the guest's.
    /// One that keeps its data in another file is read whole, as an overlay is: what is
    /// written to that file is in no bitmap of the disk.
    #[test]
    fn a_disk_whose_file_is_not_what_the_guest_sees_is_never_read_from_it_stopped() {
        let disk = |inner: &str, driver: &str| {
            format!(
                "<domain><devices><disk type='file' device='disk'><driver name='qemu' type='{driver}'/>{inner}<target dev='vdb'/></disk></devices></domain>"
            )
        };
        let of = |xml: &str| parse_disks(xml).unwrap().remove(0);
        let plain = of(&disk("<source file='/d.img'/>", "raw"));
        assert_eq!(
            (plain.data_file.as_ref(), plain.unlike_file.as_ref()),
            (None, None)
        );
        assert_eq!(stopped_read_problem(std::slice::from_ref(&plain)), None);
        assert_eq!(stopped_read_problem(&[qcow2("vda"), plain.clone()]), None);
        for (inner, driver, says) in [
            (
                "<source file='/d.img'><encryption format='luks'><secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/></encryption></source>",
                "raw",
                "disk vdb (/d.img) is encrypted (<encryption format='luks'>)",
            ),
            (
                "<encryption format='luks'/><source file='/d.img'/>",
                "qcow2",
                "disk vdb (/d.img) is encrypted",
            ),
            (
                "<source file='/d.img'><slices><slice type='storage' offset='1048576' size='8388608'/></slices></source>",
                "raw",
                "disk vdb (/d.img) is a slice of its file (<slices>)",
            ),
            (
                "<source file='/d.img'/>",
                "vmdk",
                "disk vdb (/d.img) is of format `vmdk`",
            ),
        ] {
            let d = of(&disk(inner, driver));
            let why = stopped_read_problem(&[qcow2("vda"), d]).expect(inner);
            assert!(
                why.contains(says) && why.contains("Replicate it while the vm runs"),
                "{why}"
            );
        }
        let stored = of(&disk(
            "<source file='/d.qcow2'><dataStore type='file'><format type='raw'/><source file='/d.raw'/></dataStore></source>",
            "qcow2",
        ));
        assert_eq!(stored.data_file.as_deref(), Some("/d.raw"));
        assert_eq!(stopped_read_problem(std::slice::from_ref(&stored)), None);
        let at = Some(point(how(Some("reprise-1"))));
        let f = Facts {
            host: "h",
            asked_scan: false,
            newest: vec![at.as_ref()],
            disks: vec![stored],
            checkpoints: vec!["reprise-1".into()],
            created: made(&["reprise-1"]),
            bitmap_problem: None,
            copy_problem: None,
            marker_problem: None,
        };
        let d = decide(&f);
        assert_eq!(d.mode, ReadMode::Scan);
        assert!(
            d.why.unwrap().contains("disk vdb keeps its data in /d.raw"),
            "{f:?}"
        );
    }

    /// A qcow2 file whose data is in another file (`data_file`), which an older libvirt's
    /// definition does not name: its bitmap and its mark are never trusted, against images
    /// `qemu-img` makes (the data file could have been put back on its own).
    #[test]
    fn the_bitmap_of_a_file_whose_data_is_elsewhere_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        let run = crate::replica::image::tests::qemu_img;
        run(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", p("d.raw")),
            &p("d.qcow2"),
            "1M",
        ]);
        run(&["bitmap", "--add", &p("d.qcow2"), "reprise-1"]);
        run(&["bitmap", "--add", &p("d.qcow2"), "reprise-mark-1"]);
        let files = [p("d.qcow2")];
        let why = offline_bitmap_problem(&Local, "h", &files, "reprise-1")
            .unwrap()
            .unwrap();
        assert!(
            why.contains("keeps its data in") && why.contains("d.raw"),
            "{why}"
        );
        let relied = [(files[0].as_str(), "point 1".to_string(), "reprise-mark-1")];
        let why = marks_missing(&Local, "h", None, &relied).unwrap();
        assert!(
            why.contains("keeps its data in") && why.contains("nor is that file marked"),
            "{why}"
        );
    }
}
