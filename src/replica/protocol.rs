//! The helper protocol: the one definition of what the orchestrator asks a helper
//! ([`Request`], read by `reprise helper` with clap and written by [`Request::words`] from the
//! same enum), what a helper answers ([`Hello`], and the JSON types named on each request),
//! and the version that both must speak ([`PROTOCOL`]).
//!
//! The handshake: the first command to each host runs its helper's [`Request::Version`] on
//! the host and the request only when the answer is this binary's (no round trip of its own),
//! and the orchestrator refuses a helper of another protocol; every other
//! request carries `--protocol`, which the helper refuses when it is not its own; the streams
//! between two helpers start with the sender's protocol ([`super::wire`], [`super::tree`]),
//! which the receiver refuses when it is not its own. Nothing of another version is ever read
//! as if it were this one.
//!
//! No IO here.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use super::version::{PROTOCOL, VERSION};

/// One request to the helper: the subcommand of `reprise helper`. The JSON answer of each is
/// named on it; errors are lines on standard error and a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The helper's protocol and version: [`Hello`]. Understood by every version, so it is
    /// sent without `--protocol`.
    Version,
    /// BLAKE3 of this helper's own executable, hex, one line (an upload checks itself).
    HashSelf,
    /// Source side: reads the recovery manifest on stdin (or, with `base`, the one with that
    /// digest that it kept), writes the block stream (its data blocks zstd-compressed with
    /// `compress`, when that makes them smaller). With `nbd` (and `export`) it reads the disk
    /// as the guest sees it through that NBD socket (libvirt's backup export); with `format`
    /// `qcow2`, through a `qemu-nbd` of `image` it starts; with `bitmap`, only the blocks that
    /// dirty bitmap marks. A file read as it is (no NBD) that is written while it is read is
    /// refused (no end to the stream: no point), unless `live` says its driver reads it while
    /// the guest runs frozen (writes below its filesystems, such as swap, still land).
    Send {
        image: PathBuf,
        #[arg(long)]
        compress: bool,
        #[arg(long)]
        #[serde(default)]
        live: bool,
        #[arg(long)]
        nbd: Option<PathBuf>,
        #[arg(long)]
        export: Option<String>,
        #[arg(long)]
        format: Option<DiskFormat>,
        #[arg(long)]
        bitmap: Option<String>,
        /// Read every block all the same, and say which changed blocks `bitmap` does not
        /// mark (`wire::Record::Unmarked`).
        #[arg(long)]
        #[serde(default)]
        audit: bool,
        #[arg(long)]
        base: Option<String>,
        /// Bitmaps the qcow2 file read through `qemu-nbd` must hold once it holds the file
        /// (the marks of the point whose checkpoint is read since, and of the point made):
        /// one missing, the file is not the one the read was decided on (put back to another
        /// meanwhile), and nothing is sent.
        #[arg(long = "mark")]
        #[serde(default)]
        marks: Vec<String>,
        /// Started before the disk's freeze holds (its connection made meanwhile): the first
        /// byte of its input says to read ([`GO`]); anything else, or the input's end (the
        /// freeze failed, the replication was stopped), ends it before it opens the disk.
        #[arg(long)]
        #[serde(default)]
        after_go: bool,
    },
    /// Recovery side: the binary manifest to compare against (after settling an interrupted
    /// update); with `digest`, only its digest (hex, one line: the BLAKE3 of its header, which
    /// the whole-image hash makes unique; `Manifest::digest`).
    Manifest {
        image: PathBuf,
        #[arg(long)]
        reread: bool,
        #[arg(long)]
        #[serde(default)]
        digest: bool,
        /// The copy may have been written outside reprise since its newest point and is to
        /// be overwritten all the same: a failback's copy back into the primary (judged by
        /// the failback first). Otherwise such a copy is refused.
        #[arg(long)]
        #[serde(default)]
        overwrite_changed: bool,
    },
    /// Source side: whether it kept the manifest of `image` whose digest is `digest` (the
    /// one it computed when it last sent it): `true` or `false`. A replication no longer asks
    /// it (`send` with `base` answers it by sending or refusing); kept for people.
    Kept {
        image: PathBuf,
        #[arg(long)]
        digest: String,
    },
    /// Recovery side: applies a block stream as a new point; answers `store::Applied`. With
    /// `definition`, the point records that definition, stored beside the copy first
    /// ([`Request::PutDefinition`]); the update is refused when it is not there whole.
    Apply {
        image: PathBuf,
        #[arg(long)]
        point: String,
        #[arg(long)]
        taken_at: DateTime<Utc>,
        #[arg(long)]
        source: String,
        #[arg(long)]
        retention: u32,
        #[arg(long)]
        #[serde(default)]
        definition: Option<String>,
        /// How the source was read (absent: its image file, whole), why, and the checkpoint
        /// the point is.
        #[arg(long)]
        mode: Option<super::point::ReadMode>,
        #[arg(long)]
        why: Option<String>,
        #[arg(long)]
        checkpoint: Option<String>,
        /// Only what changed since this checkpoint was read: refused unless the copy's newest
        /// point is that checkpoint's.
        #[arg(long)]
        #[serde(default)]
        since: Option<String>,
        /// When libvirt made `checkpoint` (seconds since the epoch).
        #[arg(long)]
        #[serde(default)]
        created: Option<i64>,
        /// The bitmap marking the disk file read while its vm was stopped (`HowRead::marker`).
        #[arg(long)]
        #[serde(default)]
        marker: Option<String>,
        /// Read live under a freeze only its end confirms: the point is held
        /// (`Point::pending`) until [`Request::Confirm`].
        #[arg(long)]
        #[serde(default)]
        pending: bool,
        /// The copy may have been written outside reprise since its newest point and is to
        /// be overwritten all the same: a failback's copy back into the primary (judged by
        /// the failback first). Otherwise such a copy is refused.
        #[arg(long)]
        #[serde(default)]
        overwrite_changed: bool,
    },
    /// Recovery side: stores the vm definition on stdin (at most `vmdef::MAX_BYTES`) beside
    /// the copy `image`, atomically, named by its BLAKE3, which must be `blake3`; no answer.
    PutDefinition {
        image: PathBuf,
        #[arg(long)]
        blake3: String,
    },
    /// Recovery side: the definition point `point` of `image` records, checked against its
    /// BLAKE3: `helper::DefinitionText`.
    Definition {
        image: PathBuf,
        #[arg(long)]
        point: String,
    },
    /// Source side of a backup set: reads the recovery tree (JSON) on stdin, writes the tree
    /// stream.
    SendTree { dir: PathBuf },
    /// Recovery side of a backup set: the tree to compare against (`tree::Tree`).
    TreeBase {
        dir: PathBuf,
        #[arg(long)]
        reread: bool,
        /// The copy may have been written outside reprise since its newest point and is to
        /// be overwritten all the same: a failback's copy back into the primary (judged by
        /// the failback first). Otherwise such a copy is refused.
        #[arg(long)]
        #[serde(default)]
        overwrite_changed: bool,
    },
    /// Recovery side of a backup set: applies a tree stream as a new point; answers
    /// `store::Applied` (its `blocks` count files).
    ApplyTree {
        dir: PathBuf,
        #[arg(long)]
        point: String,
        #[arg(long)]
        taken_at: DateTime<Utc>,
        #[arg(long)]
        source: String,
        #[arg(long)]
        retention: u32,
        /// How far, at least, the source's clock is ahead of the orchestrator's, in
        /// microseconds (negative: behind): the point's newest file time is brought to the
        /// orchestrator's clock by it, the latest it may be.
        #[arg(long, allow_hyphen_values = true)]
        source_ahead_us: i64,
        /// The copy may have been written outside reprise since its newest point and is to
        /// be overwritten all the same: a failback's copy back into the primary (judged by
        /// the failback first). Otherwise such a copy is refused.
        #[arg(long)]
        #[serde(default)]
        overwrite_changed: bool,
    },
    /// The points, oldest first: `Vec<store::Point>`.
    Points { image: PathBuf },
    /// Verifies one point or all: `Vec<helper::Checked>`.
    Verify {
        image: PathBuf,
        #[arg(long)]
        point: Option<String>,
    },
    /// Writes a point to a file (an image) or a folder (a backup set); no answer.
    Restore {
        image: PathBuf,
        #[arg(long)]
        point: String,
        #[arg(long)]
        output: PathBuf,
    },
    /// Rolls an image's copy back to an older point: `store::RolledBack`.
    RollBack {
        image: PathBuf,
        #[arg(long)]
        point: String,
    },
    /// Marks a point of an image's copy bad for good, saying why (its source said, once it
    /// was made, that it may be torn): the point as it then is, `store::Point`.
    MarkUnusable {
        image: PathBuf,
        #[arg(long)]
        point: String,
        #[arg(long)]
        why: String,
    },
    /// Marks bad for good, saying why, the points of an image's copy taken at `taken_at` (one
    /// replication's, whose source said it may be torn), among them one an interrupted update
    /// has still to record: the mark is kept first, so that update records its point bad
    /// whenever it completes. The points so marked, `Vec<store::Point>`.
    MarkTorn {
        image: PathBuf,
        #[arg(long)]
        taken_at: DateTime<Utc>,
        #[arg(long)]
        why: String,
    },
    /// Confirms that the freeze under which the points of an image's copy taken at
    /// `taken_at` (one replication's) were read held: a point held only for that becomes
    /// good, one still to be recorded is recorded so. The points of that replication,
    /// `Vec<store::Point>`.
    Confirm {
        image: PathBuf,
        #[arg(long)]
        taken_at: DateTime<Utc>,
    },
    /// Completes or throws away an interrupted update or roll-back, and rewrites a damaged
    /// points file from its previous generation: its note (`Option<String>`, `null` when
    /// there was nothing to settle). Waits up to `wait` seconds for a replication holding it.
    Settle {
        image: PathBuf,
        #[arg(long, default_value_t = 0)]
        #[serde(default)]
        wait: u64,
    },
    /// What copies (images or backup sets) and their metadata say, changing nothing:
    /// `Vec<meta::CopyState>`, one per path.
    Inspect {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Records that a run uses a copy (`meta::Lease`), once no replication holds it (waiting
    /// up to `wait` seconds) and, with `expect`, only while the copy still is that point; with
    /// `started`, the vm now runs on it and its point history ends. Its note
    /// (`Option<String>`).
    Lease {
        path: PathBuf,
        #[arg(long)]
        kind: super::meta::LeaseKind,
        #[arg(long)]
        run: String,
        #[arg(long)]
        vm: String,
        #[arg(long)]
        step: String,
        #[arg(long)]
        machine: String,
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        point: Option<String>,
        #[arg(long)]
        taken_at: Option<DateTime<Utc>>,
        #[arg(long)]
        written_until: Option<DateTime<Utc>>,
        #[arg(long)]
        verified: bool,
        #[arg(long)]
        expect: Option<String>,
        #[arg(long, default_value_t = 0)]
        wait: u64,
        #[arg(long)]
        started: bool,
    },
    /// Removes the leases of copies (of run `run`, of kind `kind`; every one without them):
    /// what was released (`Vec<String>`). With `returned`, a backup set's folder a failback
    /// copied back to its primary as it was at that stamp first records it, and no
    /// replication writes into the folder once it is written after
    /// (`TreeStore::release_returned`); `forget_returned` forgets that record.
    Release {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        run: Option<String>,
        #[arg(long)]
        kind: Option<super::meta::LeaseKind>,
        #[arg(long)]
        #[serde(default)]
        returned: Option<String>,
        #[arg(long)]
        #[serde(default)]
        forget_returned: bool,
        /// What was written in the copies since their newest point is let go: a replication
        /// may overwrite it while they are as they are now (`Store::accept_changes`).
        #[arg(long)]
        #[serde(default)]
        accept: bool,
    },
}

/// The format of a source image read as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DiskFormat {
    /// Read through `qemu-nbd`.
    Qcow2,
    /// The file is the disk: read as it is.
    Raw,
}

/// The answer to [`Request::Version`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// The reprise version of the helper (for people: only `protocol` is compared).
    pub reprise: String,
}

impl Hello {
    /// This binary's.
    pub fn this() -> Hello {
        Hello {
            protocol: PROTOCOL,
            reprise: VERSION.to_string(),
        }
    }

    /// `protocol 2 (reprise 0.1.0)`.
    pub fn describe(&self) -> String {
        format!("protocol {} (reprise {})", self.protocol, self.reprise)
    }
}

/// The words after `reprise helper` that clap reads back as this very request, derived from
/// the clap definition of [`Request`] and its serde form (so there is no second list of
/// arguments to keep in step), followed by `--protocol` for every request but
/// [`Request::Version`].
impl Request {
    pub fn words(&self) -> Vec<String> {
        use clap::Subcommand as _;
        use serde_json::Value;
        // A request is made of strings, numbers, flags, times and UTF-8 paths (paths come
        // from the inventory, which is text): its JSON form always exists.
        let value = serde_json::to_value(self).expect("a request has a JSON form");
        let (name, fields) = match value {
            Value::String(name) => (name, serde_json::Map::new()),
            Value::Object(map) => {
                let (name, fields) = map.into_iter().next().expect("one variant");
                match fields {
                    Value::Object(fields) => (name, fields),
                    _ => (name, serde_json::Map::new()),
                }
            }
            _ => unreachable!("an enum serializes as a string or a one-key object"),
        };
        let cli = Request::augment_subcommands(clap::Command::new("helper"));
        let sub = cli
            .find_subcommand(&name)
            .expect("every variant is a subcommand");
        let (mut positional, mut options) = (Vec::new(), Vec::new());
        for arg in sub.get_arguments() {
            let text = match fields.get(arg.get_id().as_str()) {
                None | Some(Value::Null) | Some(Value::Bool(false)) => continue,
                // A list of positional values (paths): one word each.
                Some(Value::Array(items)) if arg.get_long().is_none() => {
                    positional.extend(items.iter().map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    }));
                    continue;
                }
                // A repeated option: `--long=value` each.
                Some(Value::Array(items)) => {
                    let long = arg.get_long().expect("positional lists are above");
                    options.extend(items.iter().map(|v| match v {
                        Value::String(s) => format!("--{long}={s}"),
                        other => format!("--{long}={other}"),
                    }));
                    continue;
                }
                Some(Value::Bool(true)) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            };
            match (arg.get_long(), text) {
                (Some(long), None) => options.push(format!("--{long}")),
                // `--name=value`: a value that starts with `-` stays a value.
                (Some(long), Some(text)) => options.push(format!("--{long}={text}")),
                (None, Some(text)) => positional.push(text),
                (None, None) => {}
            }
        }
        if *self != Request::Version {
            options.push(format!("--protocol={PROTOCOL}"));
        }
        let mut words = vec![name];
        if positional.iter().any(|p| p.starts_with('-')) {
            words.extend(options);
            words.push("--".into());
            words.extend(positional);
        } else {
            words.extend(positional);
            words.extend(options);
        }
        words
    }
}

impl Request {
    /// The longest answer the orchestrator reads to this request: the manifest of the
    /// largest image, the tree of the largest backup set, or 64 MiB of JSON.
    pub fn answer_limit(&self) -> u64 {
        match self {
            Request::Manifest { .. } => super::blocks::MAX_MANIFEST_BYTES,
            Request::TreeBase { .. } => super::tree::MAX_TREE_BYTES,
            _ => 64 << 20,
        }
    }
}

/// What the source helper says when the manifest a send names by its digest is not the one
/// it kept (the orchestrator then sends the recovery manifest itself).
pub const NOT_KEPT: &str = "is no longer kept here";

/// The byte that tells a `send --after-go` to read: its disk's freeze holds.
pub const GO: u8 = b'g';

/// What a `send --after-go` says when its input ends, or brings another byte, before [`GO`]:
/// it opened nothing.
pub const NO_GO: &str = "was not told to read (its freeze did not hold, or the replication was stopped): nothing was read";

/// Why a request of protocol `theirs` is refused by this helper.
pub fn refuse_request(theirs: u32) -> String {
    format!(
        "this helper speaks protocol {PROTOCOL} (reprise {VERSION}); the request is of protocol {theirs}: the orchestrator and the helpers must be the same reprise"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    /// `reprise helper WORDS…` as the command line reads it: the request and its protocol.
    fn parse(words: &[String]) -> (Request, Option<u32>) {
        let args = ["reprise", "helper"]
            .into_iter()
            .map(String::from)
            .chain(words.iter().cloned());
        match Cli::try_parse_from(args) {
            Ok(Cli {
                command: Command::Helper { request, protocol },
                ..
            }) => (request, protocol),
            Ok(other) => panic!("{words:?} read as {:?}", other.command),
            Err(e) => panic!("{words:?}: {e}"),
        }
    }

    /// One request of each kind (the match keeps this list complete).
    fn samples() -> Vec<Request> {
        let at = DateTime::parse_from_rfc3339("2026-11-28T03:10:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut all = vec![Request::Version, Request::HashSelf];
        all.extend(disk_samples(at));
        all.extend(tree_samples(at));
        all.extend(copy_samples(at));
        all.extend(lease_samples(at));
        for r in &all {
            match r {
                Request::Version
                | Request::HashSelf
                | Request::Send { .. }
                | Request::Manifest { .. }
                | Request::Kept { .. }
                | Request::Apply { .. }
                | Request::PutDefinition { .. }
                | Request::Definition { .. }
                | Request::SendTree { .. }
                | Request::TreeBase { .. }
                | Request::ApplyTree { .. }
                | Request::Points { .. }
                | Request::Verify { .. }
                | Request::Restore { .. }
                | Request::RollBack { .. }
                | Request::MarkUnusable { .. }
                | Request::MarkTorn { .. }
                | Request::Confirm { .. }
                | Request::Settle { .. }
                | Request::Inspect { .. }
                | Request::Lease { .. }
                | Request::Release { .. } => {}
            }
        }
        all
    }

    /// The requests that send, keep and apply a disk's blocks and its definition.
    fn disk_samples(at: DateTime<Utc>) -> Vec<Request> {
        vec![
            Request::Send {
                image: "/srv/a b.qcow2".into(),
                compress: true,
                live: true,
                nbd: None,
                export: None,
                format: None,
                bitmap: None,
                audit: false,
                base: None,
                marks: Vec::new(),
                after_go: false,
            },
            Request::Send {
                image: "-starts-with-a-dash".into(),
                compress: false,
                live: false,
                nbd: Some("/var/tmp/reprise backup.sock".into()),
                export: Some("vda".into()),
                format: Some(DiskFormat::Qcow2),
                bitmap: Some("-backup-vda".into()),
                audit: true,
                base: Some("ab12".into()),
                marks: vec!["reprise-mark-a".into(), "-reprise mark b".into()],
                after_go: true,
            },
            Request::Manifest {
                image: "/srv/a.qcow2".into(),
                reread: true,
                digest: true,
                overwrite_changed: true,
            },
            Request::Kept {
                image: "/srv/a.qcow2".into(),
                digest: "ab12".into(),
            },
            Request::Apply {
                image: "/srv/a.qcow2".into(),
                point: "-p1 'quoted' $x".into(),
                taken_at: at,
                source: "hv-main:/srv/a.qcow2".into(),
                retention: 7,
                definition: Some("ab".repeat(32)),
                mode: Some(crate::replica::store::ReadMode::ChangedBlocks),
                why: Some("--the first copy".into()),
                checkpoint: Some("reprise-20261128T031000Z".into()),
                since: Some("--reprise-20261127T031000Z".into()),
                created: Some(1_796_370_000),
                marker: Some("--reprise-mark-20261128T031000Z".into()),
                pending: true,
                overwrite_changed: false,
            },
            Request::PutDefinition {
                image: "/srv/a.qcow2".into(),
                blake3: "ab".repeat(32),
            },
            Request::Definition {
                image: "/srv/a.qcow2".into(),
                point: "p1".into(),
            },
        ]
    }

    /// The requests that send and apply a backup set's files.
    fn tree_samples(at: DateTime<Utc>) -> Vec<Request> {
        vec![
            Request::SendTree {
                dir: "/export/backups".into(),
            },
            Request::TreeBase {
                dir: "/srv/backups".into(),
                reread: false,
                overwrite_changed: true,
            },
            Request::ApplyTree {
                dir: "/srv/backups".into(),
                point: "p".into(),
                taken_at: at,
                source: "san:/export".into(),
                retention: 1,
                source_ahead_us: -300_000_000,
                overwrite_changed: true,
            },
        ]
    }

    /// The requests that list, check, restore and settle a copy's points.
    fn copy_samples(at: DateTime<Utc>) -> Vec<Request> {
        vec![
            Request::Points {
                image: "/srv/a.qcow2".into(),
            },
            Request::Verify {
                image: "/srv/a.qcow2".into(),
                point: None,
            },
            Request::Verify {
                image: "/srv/a.qcow2".into(),
                point: Some("--p".into()),
            },
            Request::Restore {
                image: "/srv/a.qcow2".into(),
                point: "p".into(),
                output: "/tmp/out=1".into(),
            },
            Request::RollBack {
                image: "/srv/a.qcow2".into(),
                point: "p".into(),
            },
            Request::MarkUnusable {
                image: "/srv/a.qcow2".into(),
                point: "p".into(),
                why: "--torn: thawed before the copy ended".into(),
            },
            Request::MarkTorn {
                image: "/srv/a.qcow2".into(),
                taken_at: at,
                why: "--torn: thawed before the copy ended".into(),
            },
            Request::Confirm {
                image: "/srv/a.qcow2".into(),
                taken_at: at,
            },
            Request::Settle {
                image: "/srv/a.qcow2".into(),
                wait: 60,
            },
            Request::Inspect {
                paths: vec!["/srv/a.qcow2".into(), "-b c".into()],
            },
        ]
    }

    /// The requests that take and release a copy's leases.
    fn lease_samples(at: DateTime<Utc>) -> Vec<Request> {
        vec![
            Request::Lease {
                path: "/srv/a.qcow2".into(),
                kind: crate::replica::LeaseKind::Live,
                run: "20261128-031000-failover".into(),
                vm: "erp-db".into(),
                step: "erp-db/start".into(),
                machine: "pra1".into(),
                pid: 42,
                point: Some("p1".into()),
                taken_at: Some(at),
                written_until: Some(at),
                verified: true,
                expect: Some("p1".into()),
                wait: 60,
                started: false,
            },
            Request::Release {
                paths: vec!["/srv/a.qcow2".into()],
                run: None,
                kind: Some(crate::replica::LeaseKind::Drill),
                returned: None,
                forget_returned: false,
                accept: false,
            },
            Request::Release {
                paths: vec!["/srv/backups/erp".into()],
                run: Some("r".into()),
                kind: Some(crate::replica::LeaseKind::Live),
                returned: Some("tree 0a1b".into()),
                forget_returned: true,
                accept: true,
            },
        ]
    }

    #[test]
    fn every_request_reads_back_as_itself_with_its_protocol() {
        for req in samples() {
            let words = req.words();
            let (request, protocol) = parse(&words);
            assert_eq!(request, req, "{words:?}");
            let expected = (req != Request::Version).then_some(PROTOCOL);
            assert_eq!(protocol, expected, "{words:?}");
        }
    }

    #[test]
    fn the_first_words_name_the_request_and_its_object() {
        let req = Request::Apply {
            image: "/srv/a.qcow2".into(),
            point: "p1".into(),
            taken_at: Utc::now(),
            source: "s".into(),
            retention: 2,
            definition: None,
            mode: None,
            why: None,
            checkpoint: None,
            since: None,
            created: None,
            marker: None,
            pending: false,
            overwrite_changed: false,
        };
        assert_eq!(req.words()[..2], ["apply", "/srv/a.qcow2"]);
        assert_eq!(Request::Version.words(), ["version"]);
    }
}
