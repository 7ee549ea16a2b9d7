//! The metadata files kept beside a copy (`COPY.reprise/`), and what reading them tells.
//!
//! Every metadata file is written whole under a temporary name, fsynced, then renamed over the
//! old one, and the folder is fsynced ([`write_file`]): a crash leaves the old version or the
//! new one, never a mix. The files a copy's history depends on (`points.json`, and the
//! manifests that spare reading the copy again) also keep their previous generation
//! (`NAME.prev`), so that a newest version damaged later (a bad sector, a truncation, a manual
//! edit) can be recovered from it ([`read_points`]), and that recovery is said.
//!
//! A lease (`leases/NAME.json`) says who uses a copy: a drill's overlay reads it, or a vm runs
//! on it since a failover. A replication never writes into a copy under a lease.
//!
//! This module reads and writes only inside a copy's metadata folder and never prints.

use std::fs::File;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::point::{Point, StoreError, io_err};

/// The largest metadata file read: a points file of thousands of points is far below.
const MAX_META: u64 = 64 << 20;

/// Writes `dir/name` atomically: a temporary file, fsynced, renamed over it, then the folder
/// fsynced. With `keep_prev`, the version it replaces stays as `name.prev` (linked before the
/// rename, so `name` exists at every moment).
pub fn write_file(dir: &Path, name: &str, bytes: &[u8], keep_prev: bool) -> Result<(), StoreError> {
    write_file_with(dir, name, keep_prev, |w| {
        w.write_all(bytes).map_err(io_err(&dir.join(name)))
    })
}

/// Writes the points file `json` as both of its generations (the previous one is what a
/// damaged newest falls back on): that fallback then never brings back a history the copy
/// has left (a point since marked bad, points a roll-back dropped, whose deltas are gone).
/// At every moment one of the two files is whole.
pub fn write_points_file(dir: &Path, json: &[u8]) -> Result<(), StoreError> {
    write_file(dir, "points.json", json, true)?;
    write_file(dir, "points.json", json, true)
}

/// [`write_file`], the content written by `fill`.
pub fn write_file_with(
    dir: &Path,
    name: &str,
    keep_prev: bool,
    fill: impl FnOnce(&mut io::BufWriter<File>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut w = io::BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io_err(&tmp))?);
    fill(&mut w)?;
    let f = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    if keep_prev && path.exists() {
        let prev = dir.join(format!("{name}.prev"));
        let link = dir.join(format!("{name}.prev.tmp"));
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&path, &link).map_err(io_err(&link))?;
        std::fs::rename(&link, &prev).map_err(io_err(&prev))?;
    }
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
}

/// Makes the entries of folder `dir` durable. The empty path (the parent of a bare file
/// name, `Path::new("copy.raw").parent()`) is the working folder.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let dir = match dir.as_os_str().is_empty() {
        true => Path::new("."),
        false => dir,
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Reads a metadata file: `None` when absent; an error names what is wrong with it.
pub fn read_file(path: &Path) -> Result<Option<Vec<u8>>, String> {
    read_file_up_to(path, MAX_META)
}

/// [`read_file`] of a file that may be up to `limit` bytes (a backup set's tree of a million
/// files is hundreds of MiB).
pub fn read_file_up_to(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len > limit {
        return Err(format!("{len} bytes, more than a metadata file can be"));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    io::Read::read_to_end(&mut io::Read::take(f, limit), &mut bytes).map_err(|e| e.to_string())?;
    Ok(Some(bytes))
}

/// Parses a points file, and checks what a valid one holds (unique ids, hashes of 64 hex
/// digits, oldest first).
pub fn parse_points(bytes: &[u8]) -> Result<Vec<Point>, String> {
    if bytes.is_empty() {
        return Err("it is empty".into());
    }
    let points: Vec<Point> =
        serde_json::from_slice(bytes).map_err(|e| format!("it is not a list of points: {e}"))?;
    check_points(&points)?;
    Ok(points)
}

/// What a valid list of points holds (unique ids that can name a point, hashes of 64 hex
/// digits, oldest first): read from a file, or as a remote host's helper answers it.
pub fn check_points(points: &[Point]) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (i, p) in points.iter().enumerate() {
        if p.id.is_empty() || !seen.insert(p.id.as_str()) {
            return Err(format!("point #{} has an empty or repeated id", i + 1));
        }
        if !valid_point_id(&p.id) {
            return Err(format!(
                "point #{} has an id that cannot name a point ({:?})",
                i + 1,
                p.id
            ));
        }
        if p.blake3.len() != 64 || !p.blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("point {} has no valid BLAKE3", p.id));
        }
        if i > 0 && p.taken_at < points[i - 1].taken_at {
            return Err(format!("point {} is older than the point before it", p.id));
        }
    }
    Ok(())
}

/// Whether `id` can name a point: what reprise makes (`20261128T031000Z`, and `-2` after it
/// for a second point of a backup set within one second) is letters, digits, `-` and `_`, so
/// that the files named after a point (its delta) stay in their folder.
pub fn valid_point_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Why a new point `id`, taken at `taken_at`, cannot follow `points` (oldest first): an id
/// that cannot name a point, or a time before the newest point's. Points are kept in the
/// order they were taken, and a file of points out of that order is damaged: a point taken
/// before the newest (the clock of the machine running reprise behind the one that made it)
/// is refused before anything is written, so that it never ends the copy's history.
pub fn new_point_problem(points: &[Point], id: &str, taken_at: DateTime<Utc>) -> Option<String> {
    if !valid_point_id(id) {
        return Some(format!(
            "{id:?} cannot name a point (letters, digits, - and _ only); nothing was written"
        ));
    }
    let newest = points.last()?;
    (taken_at < newest.taken_at).then(|| {
        format!(
            "the new point {id} was taken at {}, before the copy's newest point {} (taken at {}): the clock of the machine running reprise is behind the one that made {}; nothing was written: set the clock right (`timedatectl`) and run the replication again",
            taken_at.format("%Y-%m-%d %H:%M:%S UTC"),
            newest.id,
            newest.taken_at.format("%Y-%m-%d %H:%M:%S UTC"),
            newest.id
        )
    })
}

/// Why a new point read from `source` cannot follow `points` (oldest first): they are of
/// another disk or folder (`host:path`). The inventory then gives the copy to another source
/// (a copy-paste, a vm's copy given to another), and a history of two would let a failover
/// choose one's point as the other's data. Nothing is written; the message says what to do.
pub fn other_source(points: &[Point], source: &str) -> Option<String> {
    let newest = points.last()?;
    (!same_source(&newest.source, source)).then(|| {
        format!(
            "its points are of {} (the newest, {}), and this replication reads {source}: the inventory gives the copy to another source, and its points would be of two, a failover able to start one's data as the other's; nothing was written. If that is a mistake, give the copy back to its source in the inventory; if its source moved (another host, another file), move the copy's `.reprise` folder aside (keep it until the new source has a verified point), take the copy as it is (`reprise release NAME`, NAME: the vm or backup set) and replicate again: only what differs is sent",
            newest.source, newest.id
        )
    })
}

/// Whether two sources (`host:path`) are the same, however their paths are written: empty
/// and `.` parts do not count (`/srv//dumps/./erp/` is `/srv/dumps/erp`), so that an edit of
/// how the inventory writes a path is not taken for another source. Nothing is resolved on a
/// host (`..`, links): those name other paths.
pub fn same_source(a: &str, b: &str) -> bool {
    fn key(s: &str) -> (&str, bool, Vec<&str>) {
        let (host, path) = s.split_once(':').unwrap_or(("", s));
        let parts = path.split('/').filter(|p| !p.is_empty() && *p != ".");
        (host, path.starts_with('/'), parts.collect())
    }
    key(a) == key(b)
}

/// Where a copy's points were read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum PointsSource {
    /// `points.json`, as written last.
    Current,
    /// `points.json` is damaged or missing: its previous generation was used.
    Previous { damage: String },
}

/// The points of a copy, as its files give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointsRead {
    /// No points file and no previous generation.
    None,
    Read {
        points: Vec<Point>,
        source: PointsSource,
    },
    /// Neither the points file nor its previous generation can be used.
    Damaged { reason: String },
}

/// Reads `points.json` of a metadata folder, falling back to `points.json.prev` when the
/// newest is damaged or missing.
pub fn read_points(dir: &Path) -> PointsRead {
    let current = dir.join("points.json");
    let prev = dir.join("points.json.prev");
    let parse = |p: &Path| -> Result<Option<Vec<Point>>, String> {
        match read_file(p)? {
            None => Ok(None),
            Some(bytes) => parse_points(&bytes).map(Some),
        }
    };
    let now = parse(&current);
    if let Ok(Some(points)) = now {
        return PointsRead::Read {
            points,
            source: PointsSource::Current,
        };
    }
    let damage = match &now {
        Err(e) => format!("points.json is damaged ({e})"),
        _ => "points.json is missing".to_string(),
    };
    match (now, parse(&prev)) {
        (Ok(None), Ok(None)) => PointsRead::None,
        (_, Ok(Some(points))) => PointsRead::Read {
            points,
            source: PointsSource::Previous { damage },
        },
        (_, Ok(None)) => PointsRead::Damaged {
            reason: format!("{damage} and there is no points.json.prev"),
        },
        (_, Err(e)) => PointsRead::Damaged {
            reason: format!("{damage} and points.json.prev is damaged too ({e})"),
        },
    }
}

/// Whether a metadata folder shows that its copy was made as replica points (a copy without
/// any of these files was made some other way, or never finished its first point).
pub fn has_history(dir: &Path) -> bool {
    ["points.json", "points.json.prev", "ended.json"]
        .iter()
        .any(|n| dir.join(n).exists())
        || std::fs::read_dir(dir.join("deltas")).is_ok_and(|mut d| d.next().is_some())
}

/// What a lease is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LeaseKind {
    /// A drill copy runs on an overlay backed by the copy: released by the drill's cleanup.
    Drill,
    /// A vm runs on the copy itself since a failover: released when it fails back.
    Live,
}

impl std::fmt::Display for LeaseKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeaseKind::Drill => "drill",
            LeaseKind::Live => "live",
        })
    }
}

/// Who uses a copy (`leases/<kind>-<run>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub kind: LeaseKind,
    /// The run that took it.
    pub run: String,
    pub vm: String,
    pub step: String,
    /// The machine and process of the orchestrator that took it.
    pub machine: String,
    pub pid: u32,
    pub at: DateTime<Utc>,
    /// The point the vm started from, when it did, when that point was taken, and whether
    /// it was verified at that moment (a resumed run records the same again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<DateTime<Utc>>,
    /// The latest time what the vm started from may have been written
    /// ([`crate::replica::choice::Start::written_until`]); none: as `taken_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub verified: bool,
}

impl Lease {
    pub fn name(&self) -> String {
        lease_name(self.kind, &self.run)
    }

    /// `drill run R (erp-db/start-copy, since 2026-11-28 03:10 UTC, pid 42 on pra1)`
    /// Taken by a run's backup step (`SERVICE/backup-SET`) on a backup set's copy, under
    /// the set's name, rather than by a vm's start.
    pub fn of_backup_set(&self) -> bool {
        self.step.ends_with(&format!("/backup-{}", self.vm))
    }

    pub fn describe(&self) -> String {
        let set = self.of_backup_set();
        let what = match self.kind {
            LeaseKind::Drill if set => {
                format!(
                    "a drill relying on backup set {} (run {}",
                    self.vm, self.run
                )
            }
            LeaseKind::Live if set => format!(
                "backup set {}, relied on by failover run {}{}",
                self.vm,
                self.run,
                self.point
                    .as_deref()
                    .map(|p| format!(" at point {p}"))
                    .unwrap_or_default()
            ),
            LeaseKind::Drill => format!("a drill copy of vm {} (run {}", self.vm, self.run),
            LeaseKind::Live => format!(
                "vm {}, started on it by failover run {}{}",
                self.vm,
                self.run,
                self.point
                    .as_deref()
                    .map(|p| format!(" from point {p}"))
                    .unwrap_or_default()
            ),
        };
        let close = if self.kind == LeaseKind::Drill {
            ")"
        } else {
            ""
        };
        format!(
            "{what}{close}, step {}, since {} on {} (pid {})",
            self.step,
            self.at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.machine,
            self.pid
        )
    }
}

pub fn lease_name(kind: LeaseKind, run: &str) -> String {
    let safe: String = run
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{kind}-{safe}")
}

/// The leases of a metadata folder; a lease file that cannot be read still counts (as held
/// by an unknown user), so that a damaged lease never lets a replication through; so does a
/// leases folder that cannot be read (only one that is not there holds none).
pub fn read_leases(dir: &Path) -> Vec<Result<Lease, String>> {
    let folder = dir.join("leases");
    let unreadable = |e: std::io::Error| {
        vec![Err(format!(
            "the leases folder {} cannot be read ({e}): it may hold leases",
            folder.display()
        ))]
    };
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => return unreadable(e),
    };
    let mut names: Vec<PathBuf> = Vec::new();
    for e in entries {
        match e {
            Ok(e) => names.push(e.path()),
            Err(e) => return unreadable(e),
        }
    }
    names.retain(|p| p.extension().is_some_and(|e| e == "json"));
    names.sort();
    names
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            match read_file(&p) {
                Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                    .map_err(|e| format!("lease {name} is damaged ({e})")),
                Ok(None) => Err(format!("lease {name} vanished")),
                Err(e) => Err(format!("lease {name} cannot be read ({e})")),
            }
        })
        .collect()
}

/// Records `lease` (replacing one of the same name).
pub fn write_lease(dir: &Path, lease: &Lease) -> Result<(), StoreError> {
    let leases = dir.join("leases");
    std::fs::create_dir_all(&leases).map_err(io_err(&leases))?;
    let json = serde_json::to_vec_pretty(lease).expect("a lease serializes");
    write_file(&leases, &format!("{}.json", lease.name()), &json, false)
}

/// Removes the leases that `which` selects; their descriptions.
pub fn remove_leases(
    dir: &Path,
    which: impl Fn(Option<&Lease>, &str) -> bool,
) -> Result<Vec<String>, StoreError> {
    let leases = dir.join("leases");
    let Ok(entries) = std::fs::read_dir(&leases) else {
        return Ok(Vec::new());
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let name = p
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let lease: Option<Lease> = read_file(&p)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice(&b).ok());
        if which(lease.as_ref(), &name) {
            std::fs::remove_file(&p).map_err(io_err(&p))?;
            removed.push(lease.map(|l| l.describe()).unwrap_or(name));
        }
    }
    if !removed.is_empty() {
        sync_dir(&leases)?;
    }
    Ok(removed)
}

/// Why replicating into a copy is refused while it has leases; `None` without any.
pub fn in_use(dir: &Path) -> Option<String> {
    let leases = read_leases(dir);
    if leases.is_empty() {
        return None;
    }
    let who: Vec<String> = leases
        .iter()
        .map(|l| match l {
            Ok(l) => l.describe(),
            Err(e) => e.clone(),
        })
        .collect();
    Some(who.join("; "))
}

/// A replication whose points are torn: one file a replication, `torn/<taken_at>.json`, kept
/// before its points are marked, so that a point its interrupted update records later is
/// recorded bad too. One file each: a mark is written without reading (or rewriting) another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Torn {
    pub taken_at: DateTime<Utc>,
    pub why: String,
}

fn torn_name(taken_at: DateTime<Utc>) -> String {
    format!("{}.json", taken_at.format("%Y%m%dT%H%M%S%.9fZ"))
}

/// Keeps the mark of the replication taken at `taken_at` (durable when this returns).
pub fn write_torn(dir: &Path, taken_at: DateTime<Utc>, why: &str) -> Result<(), StoreError> {
    let folder = dir.join("torn");
    std::fs::create_dir_all(&folder).map_err(io_err(&folder))?;
    let mark = Torn {
        taken_at,
        why: why.to_string(),
    };
    let json = serde_json::to_vec_pretty(&mark).expect("a mark serializes");
    write_file(&folder, &torn_name(taken_at), &json, false)?;
    sync_dir(dir)
}

/// Why the replication taken at `taken_at` is torn, if it was said so: its mark's reason, or,
/// when its mark cannot be read, that.
pub fn read_torn(dir: &Path, taken_at: DateTime<Utc>) -> Option<String> {
    let path = dir.join("torn").join(torn_name(taken_at));
    let mark = read_file(&path).and_then(|bytes| {
        bytes
            .map(|b| serde_json::from_slice::<Torn>(&b).map_err(|e| e.to_string()))
            .transpose()
    });
    match mark {
        Ok(mark) => mark.map(|t| t.why),
        Err(e) => Some(format!(
            "its replication was said torn ({} cannot be read: {e})",
            path.display()
        )),
    }
}

/// Removes the mark of the replication taken at `taken_at` (done: its point is recorded bad,
/// and no update of it is left).
pub fn remove_torn(dir: &Path, taken_at: DateTime<Utc>) -> Result<(), StoreError> {
    let path = dir.join("torn").join(torn_name(taken_at));
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(&dir.join("torn")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// A replication whose freeze held (its `replicate-end` succeeded, [`super::Point::pending`]):
/// one file a replication, `confirmed/<taken_at>.json`, kept before its points are confirmed,
/// so that a point its update records later (the confirmation can come before the update is
/// completed, even before it began) is recorded confirmed.
pub fn write_confirmed(dir: &Path, taken_at: DateTime<Utc>) -> Result<(), StoreError> {
    let folder = dir.join("confirmed");
    std::fs::create_dir_all(&folder).map_err(io_err(&folder))?;
    let json = serde_json::to_vec(&taken_at).expect("a time serializes");
    write_file(&folder, &torn_name(taken_at), &json, false)?;
    sync_dir(dir)
}

/// Whether the freeze of the replication taken at `taken_at` was confirmed. A mark that is
/// there but cannot be read, or names another time, confirms nothing.
pub fn read_confirmed(dir: &Path, taken_at: DateTime<Utc>) -> bool {
    let path = dir.join("confirmed").join(torn_name(taken_at));
    matches!(
        read_file(&path),
        Ok(Some(bytes)) if serde_json::from_slice::<DateTime<Utc>>(&bytes).ok() == Some(taken_at)
    )
}

/// The times of the replications a mark (`torn/`, `confirmed/`) is kept for.
pub fn marked_times(dir: &Path) -> std::collections::BTreeSet<DateTime<Utc>> {
    ["torn", "confirmed"]
        .iter()
        .filter_map(|kind| std::fs::read_dir(dir.join(kind)).ok())
        .flat_map(|d| d.flatten())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let stem = name.strip_suffix(".json")?;
            chrono::NaiveDateTime::parse_from_str(stem, "%Y%m%dT%H%M%S%.9fZ")
                .ok()
                .map(|t| t.and_utc())
        })
        .collect()
}

/// Removes the confirmation of the replication taken at `taken_at` (its points are recorded).
pub fn remove_confirmed(dir: &Path, taken_at: DateTime<Utc>) -> Result<(), StoreError> {
    let path = dir.join("confirmed").join(torn_name(taken_at));
    match std::fs::remove_file(&path) {
        Ok(()) => sync_dir(&dir.join("confirmed")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// The end of a copy's point history (`ended.json`): a vm was started on it, its metadata could
/// not be read, or it changed behind its newest point. Its earlier points no longer describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub at: DateTime<Utc>,
    pub why: String,
    /// The points given up, oldest first.
    pub points: Vec<String>,
    /// What the newest of them recorded of a dirty bitmap found missing writes
    /// (`HowRead::missed`): the first point after keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
}

/// The record that the operator (`reprise release`), or a failback that copied the copy
/// back, let go what was written in it since its newest point: the copy's stamp then.
pub const ACCEPTED: &str = "accepted";

/// Records that what was written in the copy since its newest point may be overwritten while
/// its stamp is still `stamp` ([`ACCEPTED`]).
pub fn write_accepted(dir: &Path, stamp: &str) -> Result<(), StoreError> {
    write_file(dir, ACCEPTED, stamp.as_bytes(), false)
}

/// The stamp [`write_accepted`] recorded, if any (one that cannot be read is none: the
/// copy is then refused, as if never let go).
pub fn read_accepted(dir: &Path) -> Option<String> {
    read_file(&dir.join(ACCEPTED))
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

/// Why a replication does not write into a copy written outside reprise since its newest
/// point (`why`, from `changed_since`), and what to do.
pub fn written_outside(why: &str) -> String {
    format!(
        "{why}; what was written there since is in no point and not on the primary, and this replication would overwrite it: nothing was written. To keep it (a vm ran there), fail back from it first (`reprise failback --service SERVICE --force` copies it back over the primary's disks or folder: stop the vm on the primary first, and make sure nothing newer is there); if it is not needed, `reprise release NAME` (NAME: the vm or backup set this copy is of) lets the next replication overwrite it"
    )
}

/// The record, in a vm copy's metadata folder, that reprise's first copy made the file:
/// written before the file is put in place, so that a file put there whose first point a
/// crash kept from being recorded is still known as reprise's own.
pub const MADE: &str = "made";

/// How `accept_changes` says it took what reprise did not make as a copy made by hand.
pub const TAKEN: &str = "taken as a copy made by hand";

/// Why a replication does not write over `what` (a file, a folder and its files) found at a
/// copy's path that reprise neither made nor made a point of: another vm's disk, or data put
/// there by hand, would be lost. `taken`: the stamp at which the operator took it as a copy
/// made by hand (`reprise release`), when it changed since.
pub fn not_a_copy(what: &str, taken: Option<&str>) -> String {
    let found = match taken {
        Some(stamp) => format!(
            "{what} at the copy's path was taken as a copy made by hand (`reprise release`) when it was `{stamp}`, and it changed since"
        ),
        None => format!(
            "{what} is at the copy's path, and reprise did not make it and has no point of it: it may be another vm's disk, or data put there by hand"
        ),
    };
    format!(
        "{found}; this replication would write over it: nothing was written. If it is a copy of this very disk or folder made by hand (seeded), `reprise release NAME` (NAME: the vm or backup set) takes it as one as it now is, and the next replication updates it in place; if it is anything else, give the copy a path of its own (the host's `images_dir` or the disk's name, the backup set's `dest_path`) or move it away"
    )
}

/// Why a copy written outside reprise since its newest point (`why`, from `changed_since`)
/// is not rolled back to its older `point`, and what to do.
pub fn rolled_back_over(why: &str, point: &str) -> String {
    format!(
        "{why}; rolling it back to point {point} would replace what was written there since, which is in no point: nothing was rolled back. To keep it (a vm ran there), start the vm from its copy as it is (`--accept-unverified VM`); if it is not needed (damage, an attack), `reprise release VM` lets it go, and a failover then rolls the copy back"
    )
}

/// Why a replication does not write into a copy with no point that was let go at `stamp`
/// ([`write_accepted`]) and written since.
pub fn written_since_let_go(stamp: &str) -> String {
    written_outside(&format!(
        "the copy changed since it was let go (by a failback or `reprise release`: it was `{stamp}`)"
    ))
}

pub fn read_ended(dir: &Path) -> Option<Ended> {
    read_file(&dir.join("ended.json"))
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// What a copy and its metadata say at one moment (`reprise helper inspect`): what every
/// decision to start from it, judge it or replicate into it is made from
/// ([`crate::replica::choice`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyState {
    pub path: String,
    /// The copy (a file, or a backup set's folder) is there.
    pub exists: bool,
    pub size: u64,
    /// Its modification time (for a backup set: the newest modification or status change
    /// time of its files and folders, which a copy that keeps old times cannot set back).
    pub mtime: Option<DateTime<Utc>>,
    /// Replica points were made of it (its metadata folder holds their files).
    pub managed: bool,
    /// Its points, oldest first, as read.
    pub points: Vec<Point>,
    /// Which file they were read from.
    pub points_from: Option<PointsSource>,
    /// Why its points cannot be read.
    pub damaged: Option<String>,
    /// Why the copy is no longer its newest point.
    pub changed: Option<String>,
    /// An update or roll-back cut in the middle, not settled yet.
    pub unsettled: Option<String>,
    /// A replication (or another user of its lock) holds it right now.
    pub busy: bool,
    pub leases: Vec<Lease>,
    /// Lease files that cannot be read: they hold the copy all the same.
    pub bad_leases: Vec<String>,
    /// The end of its last point history, when no point was made since.
    pub ended: Option<Ended>,
    /// Its stamp now (size, mtime, inode; a backup set's seal, `tree::tree_seal`).
    pub stamp: Option<String>,
    /// Why the file itself cannot be looked at (denied, an I/O error: not "not there"):
    /// whether it exists cannot be told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    /// Points whose recorded definition is missing or damaged, and why.
    #[serde(default)]
    pub bad_definitions: Vec<(String, String)>,
    /// A backup set's folder written after a failback copied it back to its primary: why no
    /// replication writes into it, and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned: Option<String>,
    /// A backup set's folder that a failback copied back to its primary, still as that
    /// failback read it (its record of it, and its stamp the same).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copied_back: bool,
    /// Its newest point was read from another source than the one the inventory now gives
    /// the copy: why its points may be another disk's data ([`crate::replica::choice::note_sources`];
    /// never said by the recovery host, which does not know the inventory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_source: Option<String>,
    /// The stamp at which what was written in the copy outside reprise was let go
    /// ([`write_accepted`]): while the copy is still so, it may be overwritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<String>,
    /// What is at the copy's path although reprise neither made it nor made a point of it
    /// (another vm's disk, data put there by hand), and the operator did not take it as a
    /// copy as it now is: why no replication writes over it ([`not_a_copy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign: Option<String>,
    /// A backup set's copy whose links are not those its newest point records (one made by
    /// hand that its source has moved since): why a run would not rely on it, and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<String>,
}

impl CopyState {
    /// Why the copy holds what was written outside reprise since its newest point (a vm run on
    /// it by hand, an edit), which no point holds and nothing may replace without a word:
    /// unless it was let go as it now is, or it is gone.
    pub fn written_outside(&self) -> Option<&str> {
        let let_go = self.accepted.is_some() && self.accepted == self.stamp;
        self.changed
            .as_deref()
            .filter(|_| self.stamp.is_some() && !let_go)
    }

    /// Its leases that cannot be read, in words (`PATH (why; why)`), when there are any: a
    /// failover's may be among them.
    pub fn unread_leases(&self) -> Option<String> {
        (!self.bad_leases.is_empty())
            .then(|| format!("{} ({})", self.path, self.bad_leases.join("; ")))
    }

    /// Whether the copy is still exactly the point `lease` relied on (its newest, unchanged
    /// since): whoever holds it wrote nothing there.
    pub fn is_point_of(&self, lease: &Lease) -> bool {
        lease.point.is_some()
            && lease.point.as_deref() == self.points.last().map(|p| p.id.as_str())
            && self.changed.is_none()
            && self.damaged.is_none()
            && self.unsettled.is_none()
    }

    /// Whether the copy is exactly the newest point a replication made of it: nothing of its
    /// own was written there since.
    pub fn is_newest_point(&self) -> bool {
        self.managed
            && !self.points.is_empty()
            && self.changed.is_none()
            && self.damaged.is_none()
            && self.unsettled.is_none()
    }

    /// Why point `id` has no definition a vm can be defined from; `None` when it has one.
    pub fn definition_problem(&self, id: &str) -> Option<String> {
        let p = self.points.iter().find(|p| p.id == id)?;
        if p.definition.is_none() {
            return Some(format!(
                "point {id} holds no definition of the vm (it was made before definitions were captured, or by a driver without a `definition` action)"
            ));
        }
        self.bad_definitions
            .iter()
            .find(|(q, _)| q == id)
            .map(|(_, why)| format!("the definition of point {id} {why}"))
    }
}

/// The folder of definitions in a copy's metadata folder.
const DEFINITIONS: &str = "definitions";

/// Stores a vm definition beside a copy, named by its BLAKE3 (atomically; the same
/// definition is kept once for all the points that have it). Its BLAKE3.
pub fn write_definition(dir: &Path, bytes: &[u8]) -> Result<String, StoreError> {
    let hash = blake3::hash(bytes).to_hex().to_string();
    let defs = dir.join(DEFINITIONS);
    std::fs::create_dir_all(&defs).map_err(io_err(&defs))?;
    if read_definition(dir, &hash).is_err() {
        write_file(&defs, &format!("{hash}.def"), bytes, false)?;
        sync_dir(dir)?;
    }
    Ok(hash)
}

/// The definition of BLAKE3 `hash` kept beside a copy; why it cannot be used.
pub fn read_definition(dir: &Path, hash: &str) -> Result<Vec<u8>, String> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("is named by `{hash}`, which is no BLAKE3"));
    }
    let path = dir.join(DEFINITIONS).join(format!("{hash}.def"));
    match read_file(&path) {
        Ok(None) => Err(format!("is missing ({})", path.display())),
        Err(e) => Err(format!("cannot be read ({}: {e})", path.display())),
        Ok(Some(bytes)) if bytes.len() > crate::vmdef::MAX_BYTES => Err(format!(
            "is damaged ({}: {} bytes, more than a definition may be)",
            path.display(),
            bytes.len()
        )),
        Ok(Some(bytes)) => {
            let got = blake3::hash(&bytes).to_hex().to_string();
            if got != hash {
                return Err(format!(
                    "is damaged ({}: its BLAKE3 is {got}, the point records {hash})",
                    path.display()
                ));
            }
            Ok(bytes)
        }
    }
}

/// Removes the definitions no point of `points` refers to (best effort: one left over only
/// takes space).
pub fn prune_definitions(dir: &Path, points: &[Point]) {
    let Ok(entries) = std::fs::read_dir(dir.join(DEFINITIONS)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let used = points
            .iter()
            .filter_map(|p| p.definition.as_deref())
            .any(|h| name == format!("{h}.def"));
        if !used {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// This machine's host name, for leases.
pub fn machine() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_of_a_bare_file_name_is_the_working_folder() {
        // `Path::new("copy.raw").parent()` is the empty path, which no open takes.
        let parent = Path::new("copy.raw").parent().expect("a parent");
        assert!(parent.as_os_str().is_empty());
        sync_dir(parent).expect("the working folder is synced");
        assert!(sync_dir(Path::new("/nonexistent-reprise-folder")).is_err());
    }

    #[test]
    fn only_ids_that_stay_in_their_folder_and_points_in_time_order_are_taken() {
        for id in ["20261128T031000Z", "20261128T031000Z-2", "p1"] {
            assert!(valid_point_id(id), "{id}");
        }
        for id in ["", "..", "../x", "a/b", "x.rdelta", "a b", &"9".repeat(65)] {
            assert!(!valid_point_id(id), "{id}");
        }
        let t = Utc::now();
        let one = format!(
            r#"[{{"id":"p1","taken_at":"{}","source":"s","size":1,"blake3":"{}","verified":"yes","checked_at":null,"received_bytes":1,"duration_ms":1}}]"#,
            t.to_rfc3339(),
            "a".repeat(64)
        );
        let points = parse_points(one.as_bytes()).unwrap();
        assert_eq!(new_point_problem(&points, "p2", t), None);
        let behind = new_point_problem(&points, "p2", t - chrono::Duration::seconds(1)).unwrap();
        assert!(
            behind.contains("before the copy's newest point p1"),
            "{behind}"
        );
        assert!(new_point_problem(&points, "../p2", t).is_some());
        assert!(new_point_problem(&[], "p1", t).is_none());
        let err = parse_points(one.replace("\"p1\"", "\"../../p1\"").as_bytes()).unwrap_err();
        assert!(err.contains("cannot name a point"), "{err}");
    }

    fn point(id: &str, at: &str) -> String {
        format!(
            r#"{{"id":"{id}","taken_at":"{at}","source":"s","size":1,"blake3":"{}","verified":"yes","checked_at":null,"received_bytes":0,"duration_ms":0}}"#,
            "ab".repeat(32)
        )
    }

    #[test]
    fn a_damaged_points_file_falls_back_to_its_previous_generation_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(read_points(d), PointsRead::None);
        let one = format!("[{}]", point("p1", "2026-11-28T01:00:00Z"));
        let two = format!(
            "[{},{}]",
            point("p1", "2026-11-28T01:00:00Z"),
            point("p2", "2026-11-28T02:00:00Z")
        );
        write_file(d, "points.json", one.as_bytes(), true).unwrap();
        assert!(!d.join("points.json.prev").exists());
        write_file(d, "points.json", two.as_bytes(), true).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("points.json.prev")).unwrap(),
            one
        );
        let ids = |r: PointsRead| match r {
            PointsRead::Read { points, source } => {
                (points.into_iter().map(|p| p.id).collect::<Vec<_>>(), source)
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(ids(read_points(d)).1, PointsSource::Current);
        // Truncated, garbage, deleted: the previous generation is used, and said.
        for damage in [&two.as_bytes()[..40], b"\x00\xffgarbage", b""] {
            std::fs::write(d.join("points.json"), damage).unwrap();
            let (got, source) = ids(read_points(d));
            assert_eq!(got, ["p1"]);
            assert!(
                matches!(&source, PointsSource::Previous { damage } if damage.contains("points.json is damaged")),
                "{source:?}"
            );
        }
        std::fs::remove_file(d.join("points.json")).unwrap();
        assert!(matches!(
            ids(read_points(d)).1,
            PointsSource::Previous { damage } if damage == "points.json is missing"
        ));
        // Both gone or damaged: nothing is guessed.
        std::fs::write(d.join("points.json.prev"), "[{").unwrap();
        let PointsRead::Damaged { reason } = read_points(d) else {
            panic!()
        };
        assert!(
            reason.contains("points.json.prev is damaged too"),
            "{reason}"
        );
        // A repeated id or a bad hash is damage too, not a point.
        let bad = format!(
            "[{},{}]",
            point("p1", "2026-11-28T01:00:00Z"),
            point("p1", "2026-11-28T02:00:00Z")
        );
        assert!(
            parse_points(bad.as_bytes())
                .unwrap_err()
                .contains("repeated")
        );
    }

    #[test]
    fn a_damaged_lease_still_holds_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(in_use(d), None);
        let lease = Lease {
            kind: LeaseKind::Drill,
            run: "r1".into(),
            vm: "erp-db".into(),
            step: "erp-db/start-copy".into(),
            machine: "pra1".into(),
            pid: 42,
            at: "2026-11-28T03:10:00Z".parse().unwrap(),
            point: None,
            taken_at: None,
            written_until: None,
            verified: false,
        };
        write_lease(d, &lease).unwrap();
        let why = in_use(d).unwrap();
        assert!(why.contains("a drill copy of vm erp-db (run r1)"), "{why}");
        std::fs::write(d.join("leases/drill-r1.json"), "{").unwrap();
        assert!(
            in_use(d)
                .unwrap()
                .contains("lease drill-r1.json is damaged")
        );
        let removed = remove_leases(d, |_, name| name == "drill-r1").unwrap();
        assert_eq!(removed, ["drill-r1"]);
        assert_eq!(in_use(d), None);
        // A leases folder that cannot be listed (here a file where it should be) may hold
        // leases: it holds the copy too.
        std::fs::remove_dir(d.join("leases")).unwrap();
        std::fs::write(d.join("leases"), b"").unwrap();
        let why = in_use(d).unwrap();
        assert!(
            why.contains("the leases folder") && why.contains("cannot be read"),
            "{why}"
        );
    }
}
