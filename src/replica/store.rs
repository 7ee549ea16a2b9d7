//! The recovery side of one image: the mirror (the image file itself, the newest point) and,
//! in the folder `<image>.reprise/` beside it, what makes it a set of verified points:
//!
//! - `manifest`: size and whole hash of the mirror, then the tree of its block hashes (the
//!   leaves, then the BLAKE3 subtrees above them: [`blocks::tree`], laid out as [`nodes`]
//!   says), so a replication need not read the mirror again. An update changes it in place:
//!   only the nodes above the blocks it changed are read and written (all of it when the
//!   number of blocks changes). A manifest cut by a crash in the middle of that write says so
//!   in its header (synced before any node is written) and is not trusted; the update's
//!   journal, still there, writes the same nodes again;
//! - `stamp`: the size, mtime and inode of the mirror when the manifest was last written, so
//!   that a mirror changed behind it (a vm started on the copy, an edit) is hashed again;
//! - `points.json`: the points, oldest first (replaced by an atomic rename);
//! - `deltas/<point>.rdelta`: for each point but the newest, the blocks that its successor
//!   overwrote, so that point is the mirror with its successors' deltas put back;
//! - `journal` and `delta.pending`: the write-ahead log of an update in progress: the new
//!   blocks, and (already in reverse-delta form) the blocks they replace, both written and
//!   fsynced before the mirror is touched. An update whose journal has no commit record never
//!   touched the mirror and is thrown away; one with a commit record is completed, and its
//!   pending delta is renamed into `deltas/`. The commit record is written only once the
//!   whole-image hash of the new state matches the source's. Rolled forward in this order:
//!   the pending delta renamed, the mirror written and synced, the manifest written and
//!   synced, the stamp, the points, then the journal removed;
//! - `lock`: held (flock) by whoever reads or writes any of it.
//!
//! The first point of an image is written into `staging` and renamed over the mirror.
//!
//! The manifest is only a cache: one that is missing, damaged, cut in the middle of an
//! update, of an unknown layout or whose stamp differs is not used, and the mirror is hashed
//! again. One of the flat layout of earlier versions (`RPRMAN1`: the leaves alone) is as good
//! as its stamp says, and is rewritten as a tree the first time an update needs it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::blocks::{self, BLOCK, Cv, Manifest, tree};
use super::meta::{self, CopyState, Lease, LeaseKind, PointsRead, PointsSource, TAKEN};
use super::nodes::{self, NodeFile};
use super::wire::{self, Record};

pub use super::point::{HowRead, Point, ReadMode, StoreError, Verified};
pub(super) use super::point::{damage_err, io_err};

/// Takes the lock of a store folder (`DIR/lock`, which `deltas/` is created beside), or says
/// who holds it: one writer or reader at a time for the copy `name`.
pub(super) fn lock_store(dir: &Path, name: &str) -> Result<File, StoreError> {
    std::fs::create_dir_all(dir.join("deltas")).map_err(io_err(dir))?;
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // A lock found held is asked again for half a second: a child that another thread of this
    // process forks shares the lock's open file until its exec closes it, and holds the lock
    // that long when this process has let it go in between.
    let until = std::time::Instant::now() + std::time::Duration::from_millis(500);
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    image: name.to_string(),
                    lock: path.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
    }
}

/// A new point to record, as the orchestrator names it.
#[derive(Debug, Clone)]
pub struct NewPoint {
    pub id: String,
    pub taken_at: DateTime<Utc>,
    pub source: String,
    pub retention: u32,
    /// The BLAKE3 of a definition stored beside the copy first ([`meta::write_definition`]).
    pub definition: Option<String>,
    /// How the source was read (`None`: its image file, whole).
    pub read: Option<HowRead>,
    /// Read live under a freeze that only its end confirms: the point is held
    /// ([`Point::pending`]) until [`Store::confirm`].
    pub pending: bool,
    /// The copy may have been written outside reprise since its newest point, and that is
    /// to be overwritten: a failback's copy back into the primary's disk or folder (judged by
    /// the failback first). Otherwise such a copy is refused ([`meta::written_outside`]).
    pub overwrite_changed: bool,
}

/// What an update did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub point: Point,
    /// Blocks written (data) and punched (zeros).
    pub blocks: u64,
    /// Points dropped by retention.
    pub dropped: Vec<String>,
    /// Note about an interrupted update found and settled first.
    pub recovered: Option<String>,
    /// Blocks the source read whole found changed that its dirty bitmap did not mark, and the
    /// points read through that bitmap it marked bad for it ([`wire::Record::Unmarked`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmarked: Option<String>,
}

/// The recovery side of one image.
#[derive(Debug, Clone)]
pub struct Store {
    image: PathBuf,
    dir: PathBuf,
}

const JOURNAL_MAGIC: &[u8; 8] = b"RPRJNL2\n";
/// The journal of an older layout, which also held the replaced blocks.
const JOURNAL_MAGIC_V1: &[u8; 8] = b"RPRJNL1\n";
const JOURNAL_END: &[u8; 8] = b"RPRJEND\n";
const DELTA_MAGIC: &[u8; 8] = b"RPRDLT1\n";
/// A complete manifest starts with this; the tree of block hashes follows ([`nodes`]).
const MANIFEST_MAGIC: &[u8; 8] = b"RPRMAN2\n";
/// What an update of the manifest in place writes and syncs first: a manifest cut from there
/// on is not trusted.
const MANIFEST_UPDATING: &[u8; 8] = b"RPRMAN2-";

// In unit tests: how many more writes of a manifest in place are done before it stops as a
// crash would (`None`: no stop).
#[cfg(test)]
thread_local! {
    static WRITES_LEFT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    /// In unit tests: run once, right after the mirror was read whole and found unwritten
    /// meanwhile ([`Store::read_mirror`]).
    static AFTER_READ: std::cell::Cell<Option<Box<dyn FnOnce()>>> = const { std::cell::Cell::new(None) };
}

/// Before each write of a manifest in place: in unit tests, where [`WRITES_LEFT`] says to
/// stop, an error as a crash there would leave things; nothing otherwise.
fn crash_point(path: &Path) -> Result<(), StoreError> {
    #[cfg(test)]
    {
        let stop = WRITES_LEFT.with(|w| match w.get() {
            Some(0) => true,
            Some(k) => {
                w.set(Some(k - 1));
                false
            }
            None => false,
        });
        if stop {
            return Err(StoreError::Io {
                path: path.display().to_string(),
                reason: "stopped here as a crash would (a unit test)".into(),
            });
        }
    }
    let _ = path;
    Ok(())
}

/// How [`update_tree`] updated a manifest's tree.
enum Updated {
    /// Its nodes above the changed blocks, held by the open file until written.
    InPlace,
    /// The whole tree, in memory: the number of blocks changed, and with it the tree's shape.
    Whole(Vec<Cv>),
}

/// The tree of the manifest `t` once the blocks `changed` (in increasing order) hold the
/// hashes given, for an image of `n` blocks, and the whole-image hash it gives (`None` under
/// two blocks): when `t` has `n` blocks, only the nodes above them are read (in runs,
/// [`NodeFile::load`]) and set, held by `t`; else every leaf is read and the tree made anew.
fn update_tree(
    t: &mut NodeFile,
    n: u64,
    changed: &[(u64, Cv)],
) -> io::Result<(Updated, Option<[u8; 32]>)> {
    update_tree_checked(t, n, changed).map(|(updated, root, _)| (updated, root))
}

/// [`update_tree`], and whether the nodes it computed again were, before, made of their
/// children as stored ([`tree::consistent_above`]; true when the tree was made anew).
fn update_tree_checked(
    t: &mut NodeFile,
    n: u64,
    changed: &[(u64, Cv)],
) -> io::Result<(Updated, Option<[u8; 32]>, bool)> {
    if t.blocks() == n {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for &(idx, _) in changed {
            match ranges.last_mut() {
                Some((_, end)) if *end == idx => *end += 1,
                _ => ranges.push((idx, idx + 1)),
            }
        }
        t.load(&ranges)?;
        let idx: Vec<u64> = changed.iter().map(|(i, _)| *i).collect();
        let consistent = tree::consistent_above(t, n, &idx)?;
        for &(idx, c) in changed {
            tree::Nodes::set_node(t, idx as usize, c)?;
        }
        tree::update(t, n, &idx)?;
        let root = tree::root(t, n)?;
        return Ok((Updated::InPlace, root, consistent));
    }
    let (nodes, root) = tree_anew(t, n, changed)?;
    Ok((Updated::Whole(nodes), root, true))
}

/// [`update_tree`] made anew from every leaf of `t` as its file holds them (none of its other
/// nodes read), in memory.
fn tree_anew(
    t: &NodeFile,
    n: u64,
    changed: &[(u64, Cv)],
) -> io::Result<(Vec<Cv>, Option<[u8; 32]>)> {
    let mut leaves = t.leaves(0, t.blocks().min(n) as usize)?;
    leaves.resize(n as usize, [0; 32]);
    for &(idx, c) in changed {
        leaves[idx as usize] = c;
    }
    let mut nodes = tree::of(leaves);
    let root = tree::root(&mut nodes[..], n)?;
    Ok((nodes, root))
}

/// The whole-image hash of the image of `size` bytes that the mirror becomes once the blocks
/// `changed` (in increasing order) hold the hashes given: every other block hashed as the
/// mirror holds it, no saved hash trusted (`None` under two blocks).
fn whole_of_mirror(
    mirror: &File,
    image: &Path,
    size: u64,
    changed: &[(u64, Cv)],
) -> Result<Option<[u8; 32]>, StoreError> {
    let n = blocks::count(size);
    let mut leaves = Vec::with_capacity(n as usize);
    let mut next = changed.iter().peekable();
    let mut buf = vec![0u8; BLOCK];
    for idx in 0..n {
        if let Some((_, c)) = next.next_if(|(i, _)| *i == idx) {
            leaves.push(*c);
            continue;
        }
        let len = blocks::block_len(size, idx);
        mirror
            .read_exact_at(&mut buf[..len], idx * BLOCK as u64)
            .map_err(io_err(image))?;
        leaves.push(blocks::cv(idx, &buf[..len]));
    }
    Ok(blocks::root(&leaves))
}

/// A source that read every block of a disk found `count` blocks changed (the first
/// `first`) that the dirty bitmap since the copy's newest point did not mark as written: the
/// bitmap missed writes (something wrote the disk outside QEMU's knowledge), or the copy was
/// changed behind its point. Point `new`, read whole, holds them. The points before it that
/// were read through a bitmap since the disk was last read whole may lack writes it missed,
/// and no one can tell which: each is marked bad for good, saying why. Point `new` records
/// the count ([`HowRead::missed`]), so that the next replications check the bitmap again.
/// What to tell.
fn unmarked(points: &mut [Point], new: &str, count: u64, first: u64) -> String {
    let at = points
        .iter()
        .position(|p| p.id == new)
        .unwrap_or(points.len());
    // The bitmap is not trusted again until a check finds it missed nothing.
    if let Some(r) = points.get_mut(at).and_then(|p| p.read.as_mut()) {
        r.missed = Some(count);
    }
    let mut marked = Vec::new();
    for p in points[..at].iter_mut().rev() {
        if p.read.as_ref().map(|r| r.mode) != Some(ReadMode::ChangedBlocks) {
            break;
        }
        if p.unusable.is_none() {
            p.mark_unusable(&format!(
                "read through a dirty bitmap that missed writes: the later read of every block (point {new}) found {count} blocks changed that the bitmap did not mark, the first block {first}; this point may lack them"
            ));
            marked.push(p.id.clone());
        }
    }
    marked.reverse();
    format!(
        "{count} blocks differ from the copy that the dirty bitmap did not mark as written (the first block {first}): the bitmap missed writes (something wrote the disk outside QEMU), or the copy was changed behind its point; point {new}, read whole, holds them; {}",
        match marked.len() {
            0 => "no earlier point was read through that bitmap".to_string(),
            _ => format!(
                "the earlier points read through the bitmap may lack them and are marked bad: {}",
                marked.join(", ")
            ),
        }
    )
}

/// How a new point of a disk was read, as recorded: a bitmap found missing writes stays
/// distrusted ([`HowRead::missed`] carried from what came `before`: the copy's newest point,
/// or the history ended before a first point) until a read is `checked` against it. A read
/// that made no check (the bitmap could not be read, no checkpoint to check, a runbook
/// step's read, a disk whose size changed) proves nothing of the bitmap the next
/// replications would read through.
fn still_distrusted(read: Option<&HowRead>, before: Option<u64>, checked: bool) -> Option<HowRead> {
    let mut read = read?.clone();
    if !checked && read.missed.is_none() {
        read.missed = before;
    }
    Some(read)
}

/// The commit record of a journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Commit {
    point: Point,
    prev: Option<String>,
    /// What the source said of blocks its dirty bitmap missed ([`wire::Record::Unmarked`]):
    /// (count, first block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unmarked: Option<(u64, u64)>,
    old_size: u64,
    new_whole: String,
    retention: u32,
    /// The update begins a new history (the source read another way: [`NewPoint::read`]):
    /// the copy's points before it are given up, for this reason, as it is recorded, never
    /// before (an update that fails leaves them as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ends: Option<String>,
    /// The copy's stamp when the update found it its newest point (or let go): written since,
    /// until the update writes it ([`ROLLING`]), outside reprise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<String>,
}

/// Written (synced) before a committed update writes the copy, removed with its journal:
/// from then on the copy's stamp moves by the update's own writes.
const ROLLING: &str = "rolling";

/// A block in a journal or delta file: where its bytes are (none for zeros).
#[derive(Debug, Clone, Copy)]
struct Slot {
    len: u32,
    /// Offset of the data in its file; `None` for a block of zeros.
    at: Option<u64>,
}

#[derive(Debug, Default)]
struct Journal {
    /// idx → (new hash, new block).
    new: Vec<(u64, Cv, Slot)>,
    commit: Option<Commit>,
}

/// The marks of a replication found as its point was recorded ([`Store::apply_marks`]): to
/// remove once the point is.
#[derive(Debug, Default)]
struct Marks {
    torn: bool,
    confirmed: bool,
}

/// What completing a committed update did.
struct RolledForward {
    /// The points retention dropped.
    dropped: Vec<String>,
    /// Why the new point is not what the copy holds (its update damaged on this disk after it
    /// was received): the point is recorded bad, with that reason.
    unusable: Option<String>,
    /// The point as it was recorded (held, confirmed, marked), unless retention dropped it.
    recorded: Option<Point>,
    /// What [`Commit::unmarked`] made of the points before it ([`unmarked`]).
    unmarked: Option<String>,
    /// What [`Commit::ends`] gave up, said.
    ended: Option<String>,
}

/// What an update follows: the copy's newest point (`None`: none, or a history that ends),
/// and, when it begins a new history, why, and what that history's end hands on of a bitmap
/// found missing writes.
struct Before<'a> {
    prev: Option<&'a Point>,
    ends: Option<(String, Option<u64>)>,
    /// The copy's stamp when the update found it fit ([`Commit::before`]).
    stamp: Option<String>,
}

/// Bytes written between two requests to the kernel to start writing back: the data goes to
/// disk while more arrives, so the final fsync has little left to wait for.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// Starts writing back the dirty pages of `files` without waiting for them (Linux), on a thread
/// of its own: `sync_file_range` itself blocks while the disk's queue is full (0.8 s of a
/// 64 GiB apply of 0.1% spent there), which would hold up the apply, and one request in
/// flight is enough (the next, or the fsync, takes what came since). A no-op where
/// unsupported: the fsync that follows is what makes the data durable, always.
fn start_writeback(files: &[&File]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static BUSY: AtomicBool = AtomicBool::new(false);
    if BUSY.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(files) = files
        .iter()
        .map(|f| f.try_clone())
        .collect::<io::Result<Vec<_>>>()
    else {
        BUSY.store(false, Ordering::Release);
        return;
    };
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd as _;
        for f in files {
            // SAFETY: a valid open descriptor (a duplicate this thread owns); offset 0 and
            // length 0 mean the whole file. Through libc: neither rustix nor std has
            // sync_file_range.
            unsafe {
                libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        BUSY.store(false, Ordering::Release);
    });
}

/// Records beside the copy's lock, once it is held by an update (`writing` in its metadata
/// folder), which machine writes it (its boot id) and from which source (`host:path`): a
/// source helper asked to read that very file, finding it held
/// ([`Store::written_by_its_own_copy`]), then knows why. Best effort: without it, the source
/// says only that the file is being written. The record goes with the returned guard, before
/// the lock is let go; one a crash left is read only while an update holds the lock again.
fn writing_from(dir: &Path, source: &str) -> WritingFrom {
    let path = dir.join("writing");
    if let Some(boot) = wire::boot_id() {
        let mut record = boot.to_vec();
        record.push(b'\n');
        record.extend_from_slice(source.as_bytes());
        record.push(b'\n');
        let _ = std::fs::write(&path, record);
    }
    WritingFrom(path)
}

/// Removes the record [`writing_from`] left when it goes.
struct WritingFrom(PathBuf);

impl Drop for WritingFrom {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Why `copy` may not be written by a stream whose source read `origin`: it is that very
/// file, on this machine (`None`: it is not, or it does not exist).
pub fn same_file_as_source(copy: &Path, origin: Option<&wire::Origin>) -> Option<String> {
    let origin = origin?;
    let here = wire::Origin::of(&std::fs::metadata(copy).ok()?)?;
    (here == *origin).then(|| {
        format!(
            "it is the very file the source read, on this machine (boot id {}, device {}, inode {}): the primary host and the recovery host are one machine reached under two names (or share the disk's folder), and the disk would be its own copy; nothing was written: give the copy a path of its own on a recovery host that is another machine",
            origin.boot_text(),
            origin.dev,
            origin.ino
        )
    })
}

impl Store {
    pub fn new(image: &Path) -> Store {
        let mut dir = image.as_os_str().to_owned();
        dir.push(".reprise");
        Store {
            image: image.to_path_buf(),
            dir: PathBuf::from(dir),
        }
    }

    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Its metadata folder (`IMAGE.reprise`).
    pub fn meta_dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn name(&self) -> String {
        self.image.display().to_string()
    }

    /// Settles an interrupted update or roll-back (see `recover`) so that the points file
    /// tells the truth, and repairs a damaged points file from its previous generation; what
    /// was done, if anything. A copy without points is left alone.
    pub fn settle(&self) -> Result<Option<String>, StoreError> {
        if !self.dir.is_dir() {
            return Ok(None);
        }
        let _lock = self.lock()?;
        let mut notes: Vec<String> = self.recover()?.into_iter().collect();
        if let Ok((_, repaired)) = self.checked_points() {
            notes.extend(repaired);
        }
        Ok((!notes.is_empty()).then(|| notes.join("; ")))
    }

    /// Takes the image's lock, or says who holds it.
    pub fn lock(&self) -> Result<File, StoreError> {
        lock_store(&self.dir, &self.name())
    }

    /// The points, oldest first, as its files give them: from the previous generation of the
    /// points file when the newest is damaged or missing. An error when neither can be read
    /// (or both are gone from a copy that has a history).
    pub fn points(&self) -> Result<Vec<Point>, StoreError> {
        points_of(&self.dir)
    }

    /// With the lock held: the points, the points file rewritten from its previous generation
    /// when that was used (and said).
    fn checked_points(&self) -> Result<(Vec<Point>, Option<String>), StoreError> {
        match meta::read_points(&self.dir) {
            PointsRead::Read {
                points,
                source: PointsSource::Previous { damage },
            } => {
                let json = serde_json::to_vec_pretty(&points).expect("points serialize");
                meta::write_file(&self.dir, "points.json", &json, false)?;
                Ok((
                    points.clone(),
                    Some(format!(
                        "{damage}: it was rewritten from points.json.prev (newest point {})",
                        points.last().map(|p| p.id.as_str()).unwrap_or("none")
                    )),
                ))
            }
            _ => Ok((self.points()?, None)),
        }
    }

    /// With the lock held, before the copy is written: its points, or none when its history
    /// cannot go on (its points cannot be read, or the copy changed behind its newest point),
    /// which is then ended (and said): the next point is a first one.
    /// A copy written outside reprise since its newest point (a vm run on it by hand, an
    /// edit) is refused, since what was written there is in no point and would be
    /// overwritten: unless `overwrite` (a failback's copy back, judged before), or the
    /// operator let it go as it now is ([`Self::accept_changes`]).
    fn history_for_update(&self, overwrite: bool) -> Result<(Vec<Point>, Vec<String>), StoreError> {
        if let Some(reason) = self.foreign().filter(|_| !overwrite) {
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        let mut notes = Vec::new();
        let points = match self.checked_points() {
            Ok((p, n)) => {
                notes.extend(n);
                p
            }
            Err(StoreError::Damaged { reason, .. }) => {
                notes.push(self.end_history(format!("its points cannot be read: {reason}"))?);
                return Ok((Vec::new(), notes));
            }
            Err(e) => return Err(e),
        };
        let stamp = self.stamp();
        let accepted = meta::read_accepted(&self.dir);
        let let_go = accepted.is_some() && accepted == stamp;
        if let Some(why) = self.changed_since(&points) {
            // A copy that is gone holds nothing to lose.
            if !overwrite && !let_go && stamp.is_some() {
                return Err(StoreError::Refused {
                    image: self.name(),
                    reason: meta::written_outside(&why),
                });
            }
            notes.push(self.end_history(why)?);
            return Ok((Vec::new(), notes));
        }
        // No point to compare with (its history ended, a failover started on it): once let
        // go (a failback's copy back, `reprise release`), it is refused when written again.
        if points.is_empty()
            && !overwrite
            && !let_go
            && stamp.is_some()
            && let Some(a) = accepted
        {
            return Err(StoreError::Refused {
                image: self.name(),
                reason: meta::written_since_let_go(&a),
            });
        }
        Ok((points, notes))
    }

    /// The operator (`reprise release`) or a failback that copied it back let what was
    /// written in the copy since its newest point go: a replication may overwrite it while
    /// the copy is still as it is now ([`Self::history_for_update`]). Whether the copy has a
    /// history to record it in. What was let go: the copy's change since its newest point,
    /// if it changed.
    /// A file at the copy's path that reprise neither made nor made a point of is taken as a
    /// copy made by hand as it now is: `Some` says so.
    pub fn accept_changes(&self) -> Result<Option<String>, StoreError> {
        let foreign = self.foreign().is_some();
        if !meta::has_history(&self.dir) && !foreign {
            return Ok(None);
        }
        let _lock = self.lock()?;
        let stamp = self.stamp().unwrap_or_default();
        meta::write_accepted(&self.dir, &stamp)?;
        if foreign {
            return Ok(Some(format!(
                "{TAKEN} as it is now (`{stamp}`): a file reprise did not make; the next replication updates it in place"
            )));
        }
        Ok(self.points().ok().and_then(|p| self.changed_since(&p)))
    }

    /// [`Store::accept_changes`] of the copy as a failback's copy back read it (`stamp`):
    /// refused, nothing recorded, when it is no longer so (written since: what was written is
    /// only here, and the next replication would overwrite it).
    pub fn accept_as(&self, stamp: &str) -> Result<Option<String>, StoreError> {
        let _lock = self.lock()?;
        let now = self.stamp().unwrap_or_default();
        if now != stamp {
            return Err(StoreError::Refused {
                image: self.name(),
                reason: format!(
                    "it was written since the failback's copy back read it (it was `{stamp}`, it is `{now}`): what was written there is only on this copy, which stays leased"
                ),
            });
        }
        let foreign = self.foreign().is_some();
        if !meta::has_history(&self.dir) && !foreign {
            return Ok(None);
        }
        meta::write_accepted(&self.dir, stamp)?;
        Ok(self.points().ok().and_then(|p| self.changed_since(&p)))
    }

    /// Why what is at the copy's path is not to be written over ([`meta::not_a_copy`]): reprise
    /// neither made it (its first copy, [`meta::MADE`]) nor made a point of it, and the operator
    /// did not take it as a copy as it now is. `None` when nothing is there.
    pub fn foreign(&self) -> Option<String> {
        std::fs::symlink_metadata(&self.image).ok()?;
        // (A copy made before the mark whose points files were both lost is refused too: it
        // proves nothing, and `reprise release` takes it.)
        if meta::has_history(&self.dir) || self.made_here() {
            return None;
        }
        let taken = meta::read_accepted(&self.dir);
        let stamp = self.stamp();
        if taken.is_some() && taken == stamp {
            return None;
        }
        Some(meta::not_a_copy("a file", taken.as_deref()))
    }

    /// Whether the file at the copy's path is the one a first copy made ([`meta::MADE`]: its
    /// device and inode; a mark of an earlier version, which names none, is taken as it is).
    fn made_here(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let Ok(Some(mark)) = meta::read_file(&self.path(meta::MADE)) else {
            return false;
        };
        let mark = String::from_utf8_lossy(&mark).into_owned();
        match mark.split_once(' ') {
            None => true,
            Some((_, file)) => std::fs::symlink_metadata(&self.image)
                .is_ok_and(|m| file == format!("{}:{}", m.dev(), m.ino())),
        }
    }

    /// Why the mirror is no longer its newest point: its stamp differs from the one recorded
    /// when that point was made (points made before stamps were recorded are not judged).
    pub fn changed_since(&self, points: &[Point]) -> Option<String> {
        changed_since(points, self.stamp())
    }

    /// What came before a new point recorded of a dirty bitmap found missing writes
    /// ([`HowRead::missed`]): the copy's newest point `prev`, or with none, the history ended
    /// before it.
    fn missed_before(&self, prev: Option<&Point>) -> Option<u64> {
        match prev {
            Some(p) => p.missed(),
            None => meta::read_ended(&self.dir).and_then(|e| e.missed),
        }
    }

    /// Ends the copy's point history: its points and deltas go, `ended.json` says why. The
    /// copy itself is left as it is.
    fn end_history(&self, why: String) -> Result<String, StoreError> {
        self.end_points(why, true)
    }

    /// What the end of a history of `points` hands on of a bitmap found missing writes
    /// ([`meta::Ended::missed`]). A history of points that read no bitmap (of the image file,
    /// or none) checked none: what the history before it said stands.
    fn missed_at_end(&self, points: &[Point]) -> Option<u64> {
        match points.iter().all(|p| p.read.is_none()) {
            true => meta::read_ended(&self.dir).and_then(|e| e.missed),
            false => points.last().and_then(Point::missed),
        }
    }

    /// [`Self::end_history`]; with `mirror` false, the manifest and stamp are left (they are
    /// of the copy as an update that begins a new history just left it).
    fn end_points(&self, why: String, mirror: bool) -> Result<String, StoreError> {
        let points = self.points().unwrap_or_default();
        let given_up: Vec<String> = points.iter().map(|p| p.id.clone()).collect();
        let ended = meta::Ended {
            at: Utc::now(),
            why: why.clone(),
            points: given_up.clone(),
            missed: self.missed_at_end(&points),
        };
        let json = serde_json::to_vec_pretty(&ended).expect("serializes");
        meta::write_file(&self.dir, "ended.json", &json, false)?;
        meta::write_file(&self.dir, "points.json", b"[]", false)?;
        let files: &[&str] = match mirror {
            true => &["points.json.prev", "manifest", "stamp", meta::ACCEPTED],
            false => &["points.json.prev", meta::ACCEPTED],
        };
        for name in files {
            remove_if_present(&self.path(name))?;
        }
        let deltas = self.path("deltas");
        if let Ok(entries) = std::fs::read_dir(&deltas) {
            for e in entries.flatten() {
                remove_if_present(&e.path())?;
            }
        }
        sync_dir(&self.dir)?;
        Ok(if given_up.is_empty() {
            format!("its point history was ended: {why}")
        } else {
            format!(
                "its point history was ended ({why}); points given up: {}",
                given_up.join(", ")
            )
        })
    }

    /// Refuses to write into a copy that a QEMU process has open: its image lock, which every
    /// QEMU (a vm's, `qemu-nbd`, `qemu-img` without `-U`) holds on the files it uses, says so
    /// whoever started it (a vm run on the copy outside reprise, or, in a failback, on the
    /// primary's disk this copy back writes).
    /// `writing`: only a QEMU that writes it (a roll-back puts another file in its place,
    /// which one that only reads it, a drill's overlay, does not see).
    fn refuse_held_by_qemu(&self, writing: bool) -> Result<(), StoreError> {
        let bytes = match writing {
            true => QEMU_WRITE_LOCK,
            false => QEMU_LOCKS,
        };
        match qemu_holds(&self.image, bytes) {
            Ok(false) => Ok(()),
            Ok(true) => Err(StoreError::InUse {
                image: self.name(),
                who: "a QEMU process has it open (its image lock is held: a vm runs on it, or qemu-nbd or qemu-img uses it)".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.image)(e)),
        }
    }

    /// Refuses to write into a copy that a lease holds.
    fn refuse_in_use(&self) -> Result<(), StoreError> {
        match meta::in_use(&self.dir) {
            Some(who) => Err(StoreError::InUse {
                image: self.name(),
                who,
            }),
            None => Ok(()),
        }
    }

    /// What the copy and its metadata say now, without changing anything.
    pub fn inspect(&self) -> CopyState {
        use std::os::unix::fs::MetadataExt as _;
        let mut state = CopyState {
            path: self.name(),
            ..CopyState::default()
        };
        match std::fs::metadata(&self.image) {
            Ok(m) => {
                state.exists = m.is_file();
                state.size = m.len();
                state.mtime = DateTime::<Utc>::from_timestamp(
                    m.mtime(),
                    u32::try_from(m.mtime_nsec()).unwrap_or(0),
                );
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => state.unreadable = Some(e.to_string()),
        }
        state.stamp = self.stamp();
        inspect_dir(&self.dir, &mut state);
        state.foreign = self.foreign();
        state.changed = changed_since(&state.points, state.stamp.clone());
        if !state.busy {
            state.unsettled = self.cut();
        }
        state
    }

    /// What an update or a roll-back cut in the middle left in the copy (its journal, its
    /// record of the roll-back), until it is settled.
    fn cut(&self) -> Option<String> {
        if self.path("journal").exists() {
            Some("an update was cut in the middle (its journal is still there)".into())
        } else if self.path("rollback.json").exists() {
            Some("a roll-back was cut in the middle".into())
        } else {
            None
        }
    }

    /// For a source helper about to read `self.image`: why it may not, when an update on this
    /// machine holds it as a copy while it receives from a source of this very path (the
    /// recovery host this machine under another name, the copy the disk itself).
    pub fn written_by_its_own_copy(&self) -> Option<String> {
        if !held(&self.dir) {
            return None;
        }
        let record = std::fs::read(self.path("writing")).ok()?;
        let text = String::from_utf8_lossy(&record);
        let mut lines = text.lines();
        let (boot, source) = (lines.next()?, lines.next()?);
        let here = wire::boot_id()?;
        let (_, path) = source.split_once(':')?;
        (boot.as_bytes() == here && Path::new(path) == self.image).then(|| {
            format!(
                "it is the very file the copy is written to, on this machine (boot id {boot}): the primary host and the recovery host are one machine reached under two names (or share the disk's folder), and the disk would be its own copy; nothing was written: give the copy a path of its own on a recovery host that is another machine"
            )
        })
    }

    /// Why the copy holds neither the point before an update of reprise's nor the one after:
    /// one writes it now, or was cut in the middle. `None` for a copy that is a point, or a
    /// file reprise does not manage. Changes nothing.
    pub fn half_written(&self) -> Option<String> {
        if held(&self.dir) {
            return Some("reprise is writing it now".into());
        }
        self.cut()
            .map(|why| format!("reprise left it half written: {why}"))
    }

    /// Records that `lease` uses the copy, once no replication holds it (waiting up to `wait`
    /// for one to end). With `expect`, only while the copy still is that point (not changed
    /// behind it). With `started` (a vm now runs on the copy itself), its point history ends:
    /// the vm's writes make every earlier point meaningless. What was done, said.
    pub fn take_lease(
        &self,
        lease: &Lease,
        expect: Option<&str>,
        wait: std::time::Duration,
        started: bool,
    ) -> Result<Option<String>, StoreError> {
        let _lock = lock_wait(&self.dir, &self.name(), wait)?;
        if started {
            meta::write_lease(&self.dir, lease)?;
            if !meta::has_history(&self.dir) {
                return Ok(None);
            }
            let why = format!(
                "vm {} was started on it by run {}{}",
                lease.vm,
                lease.run,
                lease
                    .point
                    .as_deref()
                    .map(|p| format!(" from point {p}"))
                    .unwrap_or_default()
            );
            return Ok(Some(self.end_history(why)?));
        }
        let mut notes: Vec<String> = self.recover()?.into_iter().collect();
        let points = match self.checked_points() {
            Ok((p, n)) => {
                notes.extend(n);
                p
            }
            Err(e) if expect.is_none() => {
                notes.push(e.to_string());
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        if let Some(id) = expect {
            let newest = points.last().map(|p| p.id.as_str());
            if newest != Some(id) {
                return Err(StoreError::Refused {
                    image: self.name(),
                    reason: format!(
                        "it is no longer point {id} (its newest point is {}): it changed while the run chose it; start the run again",
                        newest.unwrap_or("none")
                    ),
                });
            }
            if let Some(why) = self.changed_since(&points) {
                return Err(StoreError::Refused {
                    image: self.name(),
                    reason: why,
                });
            }
            // Chosen as verified, found damaged since (a `reprise verify` meanwhile).
            if lease.verified && points.last().is_some_and(|p| p.verified == Verified::Bad) {
                return Err(StoreError::Refused {
                    image: self.name(),
                    reason: format!(
                        "its point {id} failed verification while the run chose it; start the run again"
                    ),
                });
            }
        }
        meta::write_lease(&self.dir, lease)?;
        Ok((!notes.is_empty()).then(|| notes.join("; ")))
    }

    /// Removes the leases `which` selects; what was released.
    pub fn release(
        &self,
        which: impl Fn(Option<&Lease>, &str) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        meta::remove_leases(&self.dir, which)
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        meta::write_file(&self.dir, name, bytes, false)
    }

    fn write_points(&self, points: &[Point]) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(points).expect("points serialize");
        meta::write_points_file(&self.dir, &json)
    }

    /// Size, mtime and inode of the mirror as it is now ([`stamp_of`]).
    pub fn stamp(&self) -> Option<String> {
        Some(stamp_of(&std::fs::metadata(&self.image).ok()?))
    }

    /// What the saved manifest is trusted by, as the mirror is now ([`key_of`]).
    fn key(&self) -> Option<String> {
        Some(key_of(&std::fs::metadata(&self.image).ok()?))
    }

    /// Writes the manifest whole (replaced by an atomic rename): the header, then `nodes`,
    /// the tree of the block hashes of an image of `size` bytes whose BLAKE3 is `whole`.
    /// The stamp is the caller's to write.
    fn write_tree(&self, size: u64, whole: &[u8; 32], nodes: &[Cv]) -> Result<(), StoreError> {
        let path = self.path("manifest");
        meta::write_file_with(&self.dir, "manifest", false, |w| {
            w.write_all(&nodes::header(MANIFEST_MAGIC, size, whole))
                .and_then(|()| w.write_all(nodes.as_flattened()))
                .map_err(io_err(&path))
        })
    }

    /// Records that the manifest is of the mirror as `key` ([`key_of`]) says it was: taken
    /// when the mirror was read or last written by reprise, never later (a write in between
    /// would be vouched for by a manifest that does not hold it).
    fn write_stamp(&self, key: Option<&str>) -> Result<(), StoreError> {
        self.write_atomic("stamp", key.unwrap_or_default().as_bytes())
    }

    /// Writes the manifest `m` whole, then `key`, the mirror's when `m` was read of it.
    fn write_manifest(&self, m: &Manifest, key: Option<&str>) -> Result<(), StoreError> {
        self.write_tree(m.size, &m.whole, &tree::of(m.cvs.clone()))?;
        self.write_stamp(key)
    }

    /// Writes the nodes `t` holds in memory and its new header over the manifest, in place:
    /// first the header marked as being updated, synced (a manifest cut from here on says so
    /// and is not trusted), then the nodes, then the complete header, synced. Done again from
    /// the journal after a crash, it writes the same bytes: a node is a function of the leaves
    /// below it, the changed leaves are the journal's, and no other node is written.
    fn write_in_place(&self, t: &NodeFile, size: u64, whole: &[u8; 32]) -> Result<(), StoreError> {
        let path = t.path().to_path_buf();
        let err = io_err(&path);
        crash_point(&path)?;
        t.write_at(MANIFEST_UPDATING, 0).map_err(&err)?;
        t.file().sync_data().map_err(&err)?;
        for (at, run) in t.runs() {
            crash_point(&path)?;
            t.write_at(&run, at).map_err(&err)?;
        }
        // The nodes durable before the header that says they are complete: the header alone
        // then tells the truth, whatever a reader knows of the journal.
        t.file().sync_data().map_err(&err)?;
        crash_point(&path)?;
        t.write_at(&nodes::header(MANIFEST_MAGIC, size, whole), 0)
            .map_err(&err)?;
        t.file().sync_data().map_err(&err)
    }

    /// The manifest file open as a tree whose header starts with one of `magics`; `None`
    /// when it is missing or is not such a tree (damaged, cut, another layout).
    fn open_tree(&self, magics: &[&[u8; 8]]) -> Result<Option<NodeFile>, StoreError> {
        let path = self.path("manifest");
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        NodeFile::read(file, &path, magics).map_err(io_err(&path))
    }

    /// The saved manifest's tree, open to be read and updated node by node, if the mirror was
    /// not changed behind it since (a vm started on the copy, a manual edit): a mirror
    /// changed since must be hashed again, or the blocks that changed would never be sent.
    /// A manifest of the older flat layout is rewritten as a tree first (its hashes are as
    /// good as its stamp says). A damaged manifest, or one cut in the middle of an update, is
    /// only a cache lost: `None`, and the mirror is hashed again.
    fn saved_tree(&self) -> Result<Option<NodeFile>, StoreError> {
        let key = std::fs::read_to_string(self.path("stamp")).ok();
        if key.is_none() || key != self.key() {
            return Ok(None);
        }
        if let Some(t) = self.open_tree(&[MANIFEST_MAGIC])? {
            return Ok(Some(t));
        }
        let path = self.path("manifest");
        // Only a flat manifest is read whole, and only one of the length its header gives:
        // a damaged file is not a reason to take its size in memory.
        match flat_len(&path) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        }
        let flat = match std::fs::read(&path) {
            Ok(bytes) => match Manifest::decode(&bytes) {
                Ok(m) => m,
                Err(_) => return Ok(None),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let n = flat.cvs.len() as u64;
        let mut nodes = tree::of(flat.cvs);
        // Its leaves must give its whole hash, as a tree written here does.
        let root = tree::root(&mut nodes[..], n).map_err(io_err(&path))?;
        if root.is_some_and(|r| r != flat.whole) {
            return Ok(None);
        }
        self.write_tree(flat.size, &flat.whole, &nodes)?;
        self.open_tree(&[MANIFEST_MAGIC])
    }

    /// The saved manifest whole (its block hashes read in one go), if it can be trusted (see
    /// [`Self::saved_tree`]).
    fn saved_manifest(&self) -> Result<Option<Manifest>, StoreError> {
        let Some(t) = self.saved_tree()? else {
            return Ok(None);
        };
        let cvs = t.leaves(0, t.blocks() as usize).map_err(io_err(t.path()))?;
        // Its leaves must give the whole hash its header says: a damaged leaf given to the
        // source would be taken for the copy's block, and a read of the changed blocks only
        // would build the new whole hash on it.
        if blocks::root(&cvs).is_some_and(|r| r != t.whole) {
            return Ok(None);
        }
        Ok(Some(Manifest {
            size: t.size,
            whole: t.whole,
            cvs,
        }))
    }

    /// The manifest the source must compare against (the empty one when there is no point
    /// yet), after settling an interrupted update. `reread` hashes the mirror again instead
    /// of trusting the saved manifest; blocks that changed are then sent again.
    /// `overwrite`: as [`NewPoint::overwrite_changed`].
    pub fn base_manifest(
        &self,
        reread: bool,
        overwrite: bool,
    ) -> Result<(Manifest, Option<String>), StoreError> {
        let _lock = self.lock()?;
        self.refuse_in_use()?;
        self.refuse_held_by_qemu(false)?;
        let mut notes: Vec<String> = self.recover_for_update()?.into_iter().collect();
        let (points, settled) = self.history_for_update(overwrite)?;
        notes.extend(settled);
        let note = (!notes.is_empty()).then(|| notes.join("; "));
        // Said again by the update that follows, which reports to the operator.
        if let Some(n) = &note {
            meta::write_file(&self.dir, "notes", n.as_bytes(), false)?;
        }
        if !self.image.is_file() {
            return Ok((Manifest::empty(), note));
        }
        // A copy without points (never replicated, or its history ended) is updated in place
        // too: only what differs travels, and its first point is checked as any other.
        let saved = if points.is_empty() {
            None
        } else {
            self.saved_manifest()?
        };
        let mut note = note;
        let m = match saved {
            Some(m) if !reread => m,
            _ => {
                let (m, _, key) = self.read_mirror()?;
                if saved.as_ref() != Some(&m) {
                    self.write_manifest(&m, Some(&key))?;
                }
                // Read whole, the copy is not its newest point (rot on this disk, or a write
                // with its times put back: its stamp said nothing): that point is marked bad
                // (`reprise verify` reads it again), and said; this replication sends what
                // differs.
                // (One held until its freeze is confirmed included: no confirmation makes it
                // good again.)
                if let Some(p) = points.last().filter(|p| {
                    (p.verified != Verified::Bad || p.pending) && p.blake3 != hex(m.whole)
                }) {
                    let why = "the copy read whole is not this point, while its size and times say it did not change: damaged on the recovery host's disk, or written with its times put back";
                    let mut all = self.points()?;
                    if let Some(q) = all.iter_mut().rev().find(|q| q.id == p.id) {
                        q.mark_unusable(why);
                    }
                    self.write_points(&all)?;
                    let said = format!(
                        "point {} is marked unusable: {why}; this replication sends what differs",
                        p.id
                    );
                    let n = match note.take() {
                        Some(n) => format!("{n}; {said}"),
                        None => said,
                    };
                    meta::write_file(&self.dir, "notes", n.as_bytes(), false)?;
                    note = Some(n);
                }
                m
            }
        };
        Ok((m, note))
    }

    /// The digest of [`Self::base_manifest`] ([`Manifest::digest`]): from the saved
    /// manifest's header alone when it can be trusted, so that it costs the same for any size
    /// of copy.
    pub fn base_digest(&self, reread: bool, overwrite: bool) -> Result<String, StoreError> {
        if !reread && let Some((size, whole)) = self.trusted_header()? {
            return Ok(blocks::digest(size, &whole));
        }
        self.base_manifest(reread, overwrite)
            .map(|(m, _)| m.digest())
    }

    /// The size and whole hash of the saved manifest, when [`Self::base_manifest`] would
    /// answer it as it is: no update or roll-back to settle, points, a saved manifest of the
    /// right length whose mirror was not changed behind it. Else `None`: the long way then.
    fn trusted_header(&self) -> Result<Option<(u64, [u8; 32])>, StoreError> {
        let _lock = self.lock()?;
        let unsettled = [
            "rollback.json",
            "rollback.img",
            "journal",
            "delta.pending",
            "staging",
            "notes",
        ]
        .iter()
        .any(|name| self.path(name).exists());
        if unsettled || self.refuse_in_use().is_err() || !self.image.is_file() {
            return Ok(None);
        }
        // Read only: anything to settle or say is left to the long way.
        let PointsRead::Read {
            points,
            source: PointsSource::Current,
        } = meta::read_points(&self.dir)
        else {
            return Ok(None);
        };
        let key = std::fs::read_to_string(self.path("stamp")).ok();
        if points.is_empty()
            || self.changed_since(&points).is_some()
            || key.is_none()
            || key != self.key()
        {
            return Ok(None);
        }
        let path = self.path("manifest");
        let Ok(mut f) = File::open(&path) else {
            return Ok(None);
        };
        let mut h = [0u8; 56];
        if f.read_exact(&mut h).is_err() {
            return Ok(None);
        }
        let len = f.metadata().map_err(io_err(&path))?.len();
        // A complete tree (one cut in the middle of an update says so in its header).
        if let Some((_, size, whole)) = nodes::read_header(&h, &[MANIFEST_MAGIC]) {
            return Ok((len == nodes::file_len(size)).then_some((size, whole)));
        }
        // The flat manifest of an older version, as good until an update rewrites it.
        let Some((size, whole)) = blocks::read_header(&h) else {
            return Ok(None);
        };
        Ok((len == 56 + 32 * blocks::count(size)).then_some((size, whole)))
    }

    /// [`Self::recover`] before a replication writes: a record of an interrupted update or
    /// roll-back that cannot be read leaves the copy in an unknown state, so its history is
    /// ended and the replication makes a first point again (said).
    fn recover_for_update(&self) -> Result<Option<String>, StoreError> {
        match self.recover() {
            Err(StoreError::Damaged { path, reason }) => {
                for name in [
                    "rollback.json",
                    "rollback.img",
                    "journal",
                    "delta.pending",
                    "staging",
                    ROLLING,
                ] {
                    remove_if_present(&self.path(name))?;
                }
                Ok(Some(self.end_history(format!("{path}: {reason}"))?))
            }
            other => other,
        }
    }

    /// Settles an update that was interrupted: thrown away when it had not committed (the
    /// mirror was not touched), completed when it had. Call with the lock held.
    fn recover(&self) -> Result<Option<String>, StoreError> {
        let note = self.recover_update()?;
        self.settle_marks()?;
        Ok(note)
    }

    /// What was said of a replication whose point is already recorded (a mark its `mark_torn`
    /// or `confirm` kept, then could not apply: the copy held too long by another command) is
    /// applied to it now: said torn, bad for good; confirmed, a point held only for that is
    /// good. A mark of a replication older than the newest point and of no point (its update
    /// never completed, or retention dropped it) goes. One of a replication still to come
    /// stays for it.
    fn settle_marks(&self) -> Result<(), StoreError> {
        let marked = meta::marked_times(&self.dir);
        if marked.is_empty() {
            return Ok(());
        }
        // A points file that cannot be read is left to what reads it (and says so); one read
        // from its previous generation is rewritten from it.
        let Ok((mut points, _)) = self.checked_points() else {
            return Ok(());
        };
        let before = points.clone();
        let newest = points.last().map(|p| p.taken_at);
        let mut done = Vec::new();
        for t in marked {
            let mut found = false;
            for p in points.iter_mut().filter(|p| p.taken_at == t) {
                self.apply_marks(p);
                found = true;
            }
            if found || newest.is_some_and(|n| t < n) {
                done.push(t);
            }
        }
        if points != before {
            self.write_points(&points)?;
        }
        for t in done {
            let all = Marks {
                torn: true,
                confirmed: true,
            };
            self.remove_marks(all, t)?;
        }
        Ok(())
    }

    /// Why the copy was written after `commit` found it fit and before the update began
    /// writing it (a vm started on it by hand after a crash cut the update, or while it was
    /// received): completing it would write over what was written, which is in no point, and
    /// record a point that is not the copy. `None` once the update began writing it (its
    /// [`ROLLING`] marker names it), or what was written was let go.
    fn written_after_commit(&self, commit: &Commit) -> Option<String> {
        let before = commit.before.as_ref()?;
        let marker = meta::read_file(&self.path(ROLLING)).ok().flatten();
        if marker.as_deref() == Some(commit.point.id.as_bytes()) {
            return None;
        }
        // A copy that is not a file now (moved aside for a while) is not judged: the update
        // waits for it.
        if !self.image.is_file() {
            return None;
        }
        let now = self.stamp()?;
        let let_go = meta::read_accepted(&self.dir).as_ref() == Some(&now);
        (now != *before && !let_go).then(|| {
            format!(
                "the copy changed after a replication into it was committed and before it was written (it was `{before}`, it is `{now}`): a vm may have run on it, or it was edited; that update was thrown away, the copy left as it is (no point holds what was written there)"
            )
        })
    }

    /// An update found begun (cut while it wrote the copy): each block it writes must hold
    /// what it writes or what the copy held there before (its reverse delta); one that holds
    /// neither was written since the cut (a vm run on the copy by hand, an edit), and
    /// completing the update would write over it without a word. Then nothing more is
    /// written: the update is thrown away, the copy left as it is (it counts as written
    /// outside reprise: its stamp moved), and what the copy held before in the blocks the
    /// update began replacing is kept beside its deltas. What was done, said; `None` when
    /// every block is as the update or its point left it (or, without a previous point, no
    /// delta tells).
    fn written_since_cut(
        &self,
        journal: &Journal,
        commit: &Commit,
    ) -> Result<Option<String>, StoreError> {
        let Some(prev) = &commit.prev else {
            return Ok(None);
        };
        let (pending, renamed) = (
            self.path("delta.pending"),
            self.path(&format!("deltas/{prev}.rdelta")),
        );
        // Where what the copy held before is kept once the update is thrown away: one of its
        // own, never another cut update's.
        let kept = self.path(&format!("deltas/{prev}.rdelta.cut-{}", commit.point.id));
        let delta = match (pending.exists(), renamed.exists()) {
            (true, _) => pending,
            (false, true) => renamed,
            // Judged by an earlier try, which was cut before it let the update go: let go
            // now, never completed (the blocks written since would be written over).
            (false, false) if kept.exists() => {
                return self
                    .cut_update_thrown_away(commit, prev, &kept, None)
                    .map(Some);
            }
            (false, false) => return Ok(None),
        };
        let (_, slots) = read_delta(&delta)?;
        let df = File::open(&delta).map_err(io_err(&delta))?;
        let read_slot = |f: &File, slot: &Slot, path: &Path| -> Result<Vec<u8>, StoreError> {
            if slot.len as usize > BLOCK {
                return Err(StoreError::Damaged {
                    path: path.display().to_string(),
                    reason: format!(
                        "it holds a block of {} bytes, more than a block's {BLOCK}; the copy was not touched since the cut",
                        slot.len
                    ),
                });
            }
            let mut buf = vec![0u8; slot.len as usize];
            if let Some(at) = slot.at {
                f.read_exact_at(&mut buf, at).map_err(io_err(path))?;
            }
            Ok(buf)
        };
        // Where each block is in the delta, read as it is compared: the delta of a large
        // update is never held in memory.
        let before: HashMap<u64, Slot> = slots.into_iter().collect();
        let jpath = self.path("journal");
        let jf = File::open(&jpath).map_err(io_err(&jpath))?;
        let mirror = File::open(&self.image).map_err(io_err(&self.image))?;
        let len = mirror.metadata().map_err(io_err(&self.image))?.len();
        let mut foreign: Vec<u64> = Vec::new();
        for (idx, _, slot) in &journal.new {
            let off = idx * BLOCK as u64;
            let want = read_slot(&jf, slot, &jpath)?;
            let mut now = vec![0u8; (len.saturating_sub(off)).min(BLOCK as u64) as usize];
            mirror
                .read_exact_at(&mut now, off)
                .map_err(io_err(&self.image))?;
            // What the copy held there before (beyond its end before the update: nothing
            // there yet, or zeros).
            let old = match before.get(idx) {
                Some(old) => Some(read_slot(&df, old, &delta)?),
                None => None,
            };
            if !cut_mix(&now, &want, old.as_deref()) {
                foreign.push(*idx);
            }
        }
        let Some(&first) = foreign.first() else {
            return Ok(None);
        };
        // Kept first: a crash from here on leaves the update judged ([`Self::written_since_cut`]
        // finds its kept delta), never one to complete.
        std::fs::rename(&delta, &kept).map_err(io_err(&kept))?;
        sync_dir(&self.dir)?;
        self.cut_update_thrown_away(commit, prev, &kept, Some((foreign.len(), first)))
            .map(Some)
    }

    /// Lets go of an update found cut with blocks written since ([`Self::written_since_cut`]),
    /// what the copy held before kept in `kept`: what was done, with how many blocks were
    /// found written and the first, when this try looked.
    fn cut_update_thrown_away(
        &self,
        commit: &Commit,
        prev: &str,
        kept: &Path,
        found: Option<(usize, u64)>,
    ) -> Result<String, StoreError> {
        for name in ["journal", ROLLING] {
            remove_if_present(&self.path(name))?;
        }
        sync_dir(&self.dir)?;
        let blocks = match found {
            Some((n, first)) => format!("{n} of its blocks (the first, block {first}) hold"),
            None => "blocks of it were found (by a try cut before it was done) to hold".into(),
        };
        Ok(format!(
            "an update into it (point {}) was cut while it wrote the copy, and {blocks} neither what it wrote nor what they held before: written since the cut (a vm run on it by hand, an edit). Nothing more was written: the update was thrown away and the copy left as it is, a mix of point {prev}, of that update and of what was written there (it counts as written outside reprise); what it held before in the blocks the update began replacing is kept in {}",
            commit.point.id,
            kept.display()
        ))
    }

    /// Throws away a committed update that never wrote the copy ([`Self::written_after_commit`]):
    /// the copy's newest point is what it was before it.
    fn discard_update(&self, jpath: &Path) -> Result<(), StoreError> {
        for name in ["delta.pending", ROLLING] {
            remove_if_present(&self.path(name))?;
        }
        remove_if_present(jpath)?;
        sync_dir(&self.dir)
    }

    /// Completes or throws away an interrupted update, roll-back or first copy.
    fn recover_update(&self) -> Result<Option<String>, StoreError> {
        let staging = self.path("staging");
        let mut note = self.finish_roll_back()?;
        if staging.exists() {
            std::fs::remove_file(&staging).map_err(io_err(&staging))?;
            note = Some("an interrupted first copy was thrown away".to_string());
        }
        let path = self.path("journal");
        if !path.exists() {
            // A marker left by a crash after its journal went is of no update.
            for name in ["delta.pending", ROLLING] {
                remove_if_present(&self.path(name))?;
            }
            return Ok(note);
        }
        let journal = read_journal(&path)?;
        match journal.commit.clone() {
            Some(commit) if let Some(why) = self.written_after_commit(&commit) => {
                self.discard_update(&path)?;
                Ok(Some(why))
            }
            Some(commit) => {
                // Never written under a QEMU process that has the copy open (a vm run on it
                // by hand since the cut): its writes would be mixed with the update's.
                self.refuse_held_by_qemu(false)?;
                let id = commit.point.id.clone();
                // Found begun ([`ROLLING`]): its own writes moved the copy's stamp, so a write
                // made since the cut cannot be told by it; the copy is read whole after.
                let marker = meta::read_file(&self.path(ROLLING)).ok().flatten();
                let begun = (marker.as_deref() == Some(id.as_bytes()))
                    .then(|| self.stamp())
                    .flatten();
                if begun.is_some()
                    && let Some(why) = self.written_since_cut(&journal, &commit)?
                {
                    return Ok(Some(why));
                }
                let done = self.roll_forward(&path, &journal, commit, Some(begun))?;
                let note = super::point::completed_note(&id, done.unusable);
                // What its source found its bitmap missed, and the history it ended, are said
                // by whoever completes it.
                let said: Vec<String> = std::iter::once(note)
                    .chain(done.unmarked)
                    .chain(done.ended)
                    .collect();
                Ok(Some(said.join("; ")))
            }
            None => {
                // Its roll-forward had begun (its marker names a point not recorded yet):
                // the commit was there, and the copy is being written. A journal that no
                // longer says it is damaged, never an update that did not touch the copy.
                if let Some(id) = meta::read_file(&self.path(ROLLING)).ok().flatten()
                    && !self
                        .points()
                        .is_ok_and(|ps| ps.iter().any(|p| p.id.as_bytes() == id.as_slice()))
                {
                    return Err(StoreError::Damaged {
                        path: path.display().to_string(),
                        reason: format!(
                            "an update (point {}) was cut while it wrote the copy, and its journal no longer holds its commit: the copy is a mix of its last point and of that update, and no point of it can be rebuilt from it. Move {} and its metadata folder {} aside (keep them until the new copy is verified) and replicate again: a new first copy",
                            String::from_utf8_lossy(&id),
                            self.image.display(),
                            self.dir.display()
                        ),
                    });
                }
                let pending = self.path("delta.pending");
                if pending.exists() {
                    std::fs::remove_file(&pending).map_err(io_err(&pending))?;
                }
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                Ok(Some(
                    "an interrupted update was thrown away; the mirror was not touched".into(),
                ))
            }
        }
    }

    /// Receives a stream from the source helper and makes it a new point.
    pub fn apply(&self, input: &mut impl Read, new: NewPoint) -> Result<Applied, StoreError> {
        self.apply_until(input, new, false)
    }

    /// [`Store::apply`]; with `stop_at_commit`, stops as a crash would right after the commit
    /// record, before the mirror is touched (for tests of recovery).
    fn apply_until(
        &self,
        input: &mut impl Read,
        new: NewPoint,
        stop_at_commit: bool,
    ) -> Result<Applied, StoreError> {
        let began = std::time::Instant::now();
        let _lock = self.lock()?;
        let _writing = writing_from(&self.dir, &new.source);
        self.refuse_in_use()?;
        self.refuse_held_by_qemu(false)?;
        let mut notes: Vec<String> = meta::read_file(&self.path("notes"))
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .into_iter()
            .collect();
        let _ = std::fs::remove_file(self.path("notes"));
        notes.extend(self.recover_for_update()?);
        let stream_err = |reason: String| StoreError::Stream {
            image: self.name(),
            reason,
        };
        let (mut points, settled) = self.history_for_update(new.overwrite_changed)?;
        // The copy as found fit to update: written after this, it is not completed over.
        let checked_stamp = self.stamp();
        notes.extend(settled);
        if let Some(reason) = meta::other_source(&points, &new.source) {
            if !notes.is_empty() {
                let _ = meta::write_file(&self.dir, "notes", notes.join("; ").as_bytes(), false);
            }
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        if let Some(h) = &new.definition {
            meta::read_definition(&self.dir, h).map_err(|reason| StoreError::Refused {
                image: self.name(),
                reason: format!("the definition of the new point cannot be used: {reason}"),
            })?;
        }
        // Points of the image file and points of the disk as the guest sees it are not one
        // history: a delta of one is meaningless applied to the other.
        let mut ending: Option<(String, Option<u64>)> = None;
        if let Some(newest) = points.last()
            && newest.read.is_some() != new.read.is_some()
        {
            let why = match new.read {
                Some(_) => {
                    "its points are of the source's image file; from now on the copy is the disk as the guest sees it (read through QEMU)"
                }
                None => {
                    "its points are of the disk as the guest sees it; from now on the copy is the source's image file"
                }
            };
            // Ended once the update is recorded (an update that fails leaves the history as
            // it was); a copy that is not there has nothing to keep.
            match self.image.is_file() {
                true => {
                    ending = Some((why.to_string(), self.missed_at_end(&points)));
                }
                false => notes.push(self.end_history(why.into())?),
            }
            points.clear();
        }
        let recovered = (!notes.is_empty()).then(|| notes.join("; "));
        // Changes read since a checkpoint are those of its point only: applied to another
        // (the copy rolled back, or a point found bad since the changes were chosen), the copy
        // would be that point plus them, with a hash that matches, and not the source.
        let not_base = new.read.as_ref().and_then(|r| r.since.as_deref()).and_then(|since| {
            let newest = points.last();
            let at = newest.and_then(|p| p.read.as_ref()).and_then(|r| r.checkpoint.as_deref());
            match newest {
                Some(p) if at == Some(since) && p.verified != Verified::Bad => None,
                Some(p) => Some(format!(
                    "the changes sent are those since checkpoint {since}, and the copy's newest point is {} ({}{}): they are not applied to it; replicate again (it reads what to send from the copy as it is now)",
                    p.id,
                    at.map_or("of no checkpoint".to_string(), |c| format!("checkpoint {c}")),
                    if p.verified == Verified::Bad { ", found bad" } else { "" }
                )),
                None => Some(format!(
                    "the changes sent are those since checkpoint {since}, and the copy has no point: they are not applied; replicate again"
                )),
            }
        });
        let same_id = not_base.or_else(|| points.iter().any(|p| p.id == new.id).then(|| {
            format!(
                "point {} is already one of the copy's points: two replications within one second; nothing was written: run the replication again",
                new.id
            )
        }));
        if let Some(reason) =
            same_id.or_else(|| meta::new_point_problem(&points, &new.id, new.taken_at))
        {
            // What was settled is said by the next try.
            if let Some(n) = &recovered {
                let _ = meta::write_file(&self.dir, "notes", n.as_bytes(), false);
            }
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        let header = wire::read_header(input).map_err(|e| {
            // No stream at all (the source refused to send): what was to be said is said by
            // the next try.
            if let Some(n) = &recovered {
                let _ = meta::write_file(&self.dir, "notes", n.as_bytes(), false);
            }
            stream_err(e)
        })?;
        // The very file the source read (two host names for one machine, one folder for the
        // disk and its copy): written, the disk would be its own copy, or the copy of
        // another disk's blocks.
        if let Some(reason) = same_file_as_source(&self.image, header.origin.as_ref()) {
            if let Some(n) = &recovered {
                let _ = meta::write_file(&self.dir, "notes", n.as_bytes(), false);
            }
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        let fresh = !self.image.is_file();
        let base = if fresh {
            None
        } else {
            match self.saved_tree()? {
                Some(t) => Some(t),
                None => {
                    // Saved, so that the roll-forward updates this manifest and no other.
                    let (m, _, key) = self.read_mirror()?;
                    self.write_manifest(&m, Some(&key))?;
                    let path = self.path("manifest");
                    Some(
                        self.open_tree(&[MANIFEST_MAGIC])?
                            .ok_or_else(|| StoreError::Damaged {
                                path: path.display().to_string(),
                                reason: "it cannot be read back as it was just written".into(),
                            })?,
                    )
                }
            }
        };
        let (base_size, base_whole) = match &base {
            Some(t) => (t.size, t.whole),
            None => (0, Manifest::empty().whole),
        };
        if header.base_size != base_size || header.base_whole != base_whole {
            return Err(stream_err(
                "the copy changed since the source compared against it; run the replication again"
                    .into(),
            ));
        }
        let received = match base {
            None => self.receive_fresh(input, &header, &new),
            Some(base) => {
                let after = Before {
                    prev: points.last(),
                    ends: ending,
                    stamp: checked_stamp,
                };
                self.receive_update(input, &header, base, after, &new, stop_at_commit)
            }
        };
        let mut applied = received.inspect_err(|_| {
            // What a failed update left (a partial first copy, or a journal without its
            // commit) is thrown away now, a committed one completed, so that it does not hold
            // the recovery host's space until the next run (a full disk is a common cause).
            let _ = self.recover();
        })?;
        applied.recovered = match (recovered, applied.recovered.take()) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        applied.point.duration_ms = began.elapsed().as_millis() as u64;
        // The duration is known only now: record it (the point itself is already safe).
        let mut points = self.points()?;
        if let Some(p) = points.iter_mut().find(|p| p.id == applied.point.id) {
            p.duration_ms = applied.point.duration_ms;
            // One generation: the previous one, written with the point, differs only by this.
            let json = serde_json::to_vec_pretty(&points).expect("points serialize");
            meta::write_file(&self.dir, "points.json", &json, true)?;
        }
        Ok(applied)
    }

    fn unique_id(&self, wanted: &str) -> Result<String, StoreError> {
        let taken: Vec<String> = self.points()?.into_iter().map(|p| p.id).collect();
        let mut id = wanted.to_string();
        let mut n = 2;
        while taken.contains(&id) {
            id = format!("{wanted}-{n}");
            n += 1;
        }
        Ok(id)
    }

    fn receive_fresh(
        &self,
        input: &mut impl Read,
        header: &wire::Header,
        new: &NewPoint,
    ) -> Result<Applied, StoreError> {
        let stream_err = |reason: String| StoreError::Stream {
            image: self.name(),
            reason,
        };
        let staging = self.path("staging");
        let f = File::create(&staging).map_err(io_err(&staging))?;
        let n = blocks::count(header.size);
        // Every block comes, in order (checked by `Records`): the hashes grow with what
        // arrives, never with what the header announces.
        let mut records = wire::Records::new(header, 0);
        let mut cvs: Vec<Cv> = Vec::new();
        let mut single = None;
        let mut received = 0u64;
        let whole = loop {
            match records.next(input).map_err(stream_err)? {
                Record::Data { idx, data } => {
                    f.write_all_at(&data, idx * BLOCK as u64)
                        .map_err(io_err(&staging))?;
                    received += data.len() as u64;
                    if received % WRITEBACK_EVERY < data.len() as u64 {
                        start_writeback(&[&f]);
                    }
                    if n == 1 {
                        single = Some(*blake3::hash(&data).as_bytes());
                    }
                    cvs.push(blocks::cv(idx, &data));
                }
                Record::Zero { idx, len } => {
                    let zeros = vec![0u8; len as usize];
                    if n == 1 {
                        single = Some(*blake3::hash(&zeros).as_bytes());
                    }
                    cvs.push(blocks::cv(idx, &zeros));
                }
                // Of a copy that has no point before this one: nothing to mark.
                Record::Unmarked { .. } => {}
                Record::End { whole } => break whole,
            }
        };
        // Zero blocks at the end are a hole: the size makes them.
        f.set_len(header.size).map_err(io_err(&staging))?;
        let got = blocks::root(&cvs)
            .or(single)
            .unwrap_or(*blake3::hash(b"").as_bytes());
        if got != whole {
            drop(f);
            let _ = std::fs::remove_file(&staging);
            return Err(StoreError::Mismatch {
                image: self.name(),
                expected: hex(whole),
                got: hex(got),
            });
        }
        f.sync_all().map_err(io_err(&staging))?;
        // The copy as this replication made it (a rename keeps what the stamp holds): a write
        // after this is not vouched for.
        let made = f.metadata().map_err(io_err(&staging))?;
        let stamp = Some(stamp_of(&made));
        drop(f);
        // Known as reprise's own before it is in place: a crash before its point is recorded
        // leaves no file that looks put there by someone else. The very file (its device and
        // inode, which the rename keeps): one put at the path after a crash threw this one
        // away is not it.
        let mark = {
            use std::os::unix::fs::MetadataExt as _;
            format!("{} {}:{}", new.id, made.dev(), made.ino())
        };
        meta::write_file(&self.dir, meta::MADE, mark.as_bytes(), false)?;
        std::fs::rename(&staging, &self.image).map_err(io_err(&self.image))?;
        if let Some(parent) = self.image.parent() {
            sync_dir(parent)?;
        }
        let manifest = Manifest {
            size: header.size,
            whole,
            cvs,
        };
        let id = self.unique_id(&new.id)?;
        // Its key as it is in place (a rename changes the status change time), while it is
        // still as this replication made it; else none, and the next one hashes it again.
        let key = std::fs::metadata(&self.image)
            .ok()
            .filter(|m| Some(stamp_of(m)) == stamp)
            .map(|m| key_of(&m));
        self.write_manifest(&manifest, key.as_deref())?;
        let point = Point {
            stamp,
            id,
            taken_at: new.taken_at,
            source: new.source.clone(),
            size: header.size,
            blake3: hex(whole),
            verified: Verified::Yes,
            checked_at: Some(Utc::now()),
            received_bytes: received,
            duration_ms: 0,
            definition: new.definition.clone(),
            // Read whole with nothing to check against: the distrust of a history ended
            // before it is kept.
            read: still_distrusted(new.read.as_ref(), self.missed_before(None), false),
            unusable: None,
            pending: false,
            newest_file: None,
            left_out: Vec::new(),
        };
        let mut point = point;
        if new.pending {
            point.mark_pending();
        }
        let marks = self.apply_marks(&mut point);
        self.write_points(std::slice::from_ref(&point))?;
        self.remove_marks(marks, point.taken_at)?;
        meta::prune_definitions(&self.dir, std::slice::from_ref(&point));
        Ok(Applied {
            point,
            blocks: n,
            dropped: Vec::new(),
            recovered: None,
            unmarked: None,
        })
    }

    fn receive_update(
        &self,
        input: &mut impl Read,
        header: &wire::Header,
        mut base: NodeFile,
        before: Before,
        new: &NewPoint,
        stop_at_commit: bool,
    ) -> Result<Applied, StoreError> {
        let prev = before.prev;
        let mirror = File::open(&self.image).map_err(io_err(&self.image))?;
        let jpath = self.path("journal");
        let jfile = File::create(&jpath).map_err(io_err(&jpath))?;
        let mut j = BufWriter::with_capacity(1 << 20, jfile);
        j.write_all(JOURNAL_MAGIC).map_err(io_err(&jpath))?;
        // The blocks this update replaces, as the reverse delta of the previous point.
        let dpath = self.path("delta.pending");
        let dfile = File::create(&dpath).map_err(io_err(&dpath))?;
        let mut d = BufWriter::with_capacity(1 << 20, dfile);
        let derr = io_err(&dpath);
        d.write_all(DELTA_MAGIC).map_err(&derr)?;
        let base_size = base.size;
        d.write_all(&base_size.to_le_bytes()).map_err(&derr)?;
        let mut old = OldBlocks {
            mirror: &mirror,
            image: &self.image,
            dpath: &dpath,
            base_size,
            keep: prev.is_some(),
            buf: vec![0u8; BLOCK],
        };
        let s = self.receive_blocks(input, header, &mut base, &mut j, &mut d, &mut old)?;
        drop(base);
        // (A copy whose stamp moved meanwhile was written outside reprise while this update
        // was received: its commit says so, below.)
        if let (Some(&first), Some(p)) = (s.diverged.first(), prev)
            && before.stamp.is_some()
            && self.stamp() == before.stamp
        {
            // The copy is not its newest point where this update replaces it (the stamp,
            // size, mtime and inode, said nothing: rot, or a write with its times put
            // back), and may not be elsewhere: nothing is built on it. The point is marked
            // bad (`reprise verify` reads it again), and the next replication reads the copy
            // whole instead of trusting its manifest, and sends what differs.
            drop((j, d));
            let _ = std::fs::remove_file(&jpath);
            let _ = std::fs::remove_file(&dpath);
            for name in ["manifest", "stamp"] {
                remove_if_present(&self.path(name))?;
            }
            let n = s.diverged.len();
            let mut points = self.points()?;
            if let Some(q) = points.iter_mut().rev().find(|q| q.id == p.id) {
                match q.pending {
                    // Held until its freeze is confirmed: no confirmation makes it good again.
                    true => q.mark_unusable(&format!(
                        "block {first} of the copy was found not to be what it recorded"
                    )),
                    // Its manifest's leaf, not the copy, may be what changed: `reprise verify`
                    // reads it again, and finds it good if it is.
                    false => {
                        q.verified = Verified::Bad;
                        q.checked_at = Some(Utc::now());
                    }
                }
            }
            self.write_points(&points)?;
            return Err(StoreError::Damaged {
                path: self.name(),
                reason: format!(
                    "{n} of the blocks this update replaces (the first, block {first}) are not what its newest point {} recorded, while the copy's size and times say it did not change: damaged on this disk, or written with its times put back. Point {} is marked bad (`reprise verify` reads it again); nothing was written. The next replication reads the copy whole and sends what differs",
                    p.id, p.id
                ),
            });
        }
        if s.got != s.whole {
            drop((j, d));
            let _ = std::fs::remove_file(&jpath);
            let _ = std::fs::remove_file(&dpath);
            return Err(StoreError::Mismatch {
                image: self.name(),
                expected: hex(s.whole),
                got: hex(s.got),
            });
        }
        let mut commit = Commit {
            point: Point {
                id: self.unique_id(&new.id)?,
                taken_at: new.taken_at,
                source: new.source.clone(),
                size: header.size,
                blake3: hex(s.whole),
                verified: Verified::Yes,
                checked_at: Some(Utc::now()),
                received_bytes: s.received,
                duration_ms: 0,
                stamp: None,
                definition: new.definition.clone(),
                read: still_distrusted(
                    new.read.as_ref(),
                    match &before.ends {
                        Some((_, missed)) => *missed,
                        None => self.missed_before(prev),
                    },
                    s.checked,
                ),
                unusable: None,
                pending: false,
                newest_file: None,
                left_out: Vec::new(),
            },
            prev: prev.map(|p| p.id.clone()),
            unmarked: s.unmarked,
            old_size: base_size,
            new_whole: hex(s.whole),
            retention: new.retention.max(1),
            ends: before.ends.map(|(why, _)| why),
            before: before.stamp,
        };
        if new.pending {
            // Held in the commit record itself: whoever completes the update records it held.
            commit.point.mark_pending();
        }
        self.write_commit(j, &jpath, d, &dpath, &commit)?;
        // Committed: from here on the update is completed, now or by the next run.
        let point = commit.point.clone();
        if stop_at_commit {
            return Ok(Applied {
                point,
                blocks: s.changed,
                dropped: Vec::new(),
                recovered: None,
                unmarked: None,
            });
        }
        if let Some(why) = self.written_after_commit(&commit) {
            self.discard_update(&jpath)?;
            return Err(StoreError::Refused {
                image: self.name(),
                reason: meta::written_outside(&why),
            });
        }
        let journal = read_journal(&jpath)?;
        let done = self.roll_forward(&jpath, &journal, commit, None)?;
        if let Some(why) = done.unusable {
            return Err(super::point::recorded_unusable(
                self.image.display().to_string(),
                &point.id,
                &why,
            ));
        }
        Ok(Applied {
            point: done.recorded.unwrap_or(point),
            blocks: s.changed,
            dropped: done.dropped,
            recovered: done.ended,
            unmarked: done.unmarked,
        })
    }

    /// Takes in the blocks of an update up to its end record: each changed block into the
    /// journal `j`, the block it replaces into the reverse delta `d`. Blocks beyond the base
    /// come in order (checked by `Records`): the hashes grow with what arrives, never with
    /// what the header announces.
    fn receive_blocks(
        &self,
        input: &mut impl Read,
        header: &wire::Header,
        base: &mut NodeFile,
        j: &mut BufWriter<File>,
        d: &mut BufWriter<File>,
        old: &mut OldBlocks,
    ) -> Result<Streamed, StoreError> {
        let stream_err = |reason: String| StoreError::Stream {
            image: self.name(),
            reason,
        };
        let jpath = self.path("journal");
        let werr = io_err(&jpath);
        let old_n = base.blocks();
        let new_n = blocks::count(header.size);
        let mut records = wire::Records::new(header, old_n);
        // The hashes of the blocks received, in increasing order (checked by `Records`).
        let mut cvs: Vec<(u64, Cv)> = Vec::new();
        let mut single = None;
        let mut received = 0u64;
        let mut changed = 0u64;
        let mut written = 0u64;
        let mut unmarked = None;
        let mut checked = false;
        // The blocks received whose bytes differ from the copy's (those of a block the copy
        // did not hold included): what a word of the source on blocks its bitmap missed must
        // name, else its base manifest was wrong about the copy, not its bitmap about the disk.
        let mut differ: Vec<u64> = Vec::new();
        // The blocks replaced that are not what the newest point's manifest says.
        let mut diverged: Vec<u64> = Vec::new();
        // The blocks received whose replaced blocks are being read ahead (see `READ_AHEAD`).
        let mut ahead: std::collections::VecDeque<(u64, Vec<u8>)> =
            std::collections::VecDeque::with_capacity(READ_AHEAD + 1);
        let whole = loop {
            let (idx, data) = match records.next(input).map_err(stream_err)? {
                Record::Data { idx, data } => {
                    received += data.len() as u64;
                    (idx, data)
                }
                Record::Zero { idx, len } => (idx, vec![0u8; len as usize]),
                Record::Unmarked { count, first } => {
                    // What the copy held of every block received is known before the word
                    // of the blocks its bitmap missed is judged.
                    while let Some(held) = ahead.pop_front() {
                        keep_replaced(
                            old,
                            d,
                            j,
                            held,
                            &mut differ,
                            &mut written,
                            base,
                            &mut diverged,
                        )?;
                    }
                    checked = true;
                    if count == 0 {
                        continue;
                    }
                    if count > changed {
                        return Err(stream_err(format!(
                            "the stream says {count} blocks its bitmap missed, and sent {changed}"
                        )));
                    }
                    // Only the first block missed is named: when it is one the copy held
                    // already, the others may still be the bitmap's misses, so the word is
                    // set aside only when it names that one block alone.
                    if count > 1 || differ.binary_search(&first).is_ok() {
                        unmarked = Some((count, first));
                    } else {
                        // A leaf of the manifest the source compared against was not the
                        // copy's (damaged; the tree is made anew below): not the bitmap.
                        tracing::warn!(
                            image = %self.name(),
                            first,
                            "the source found block {first} changed and unmarked by its bitmap, but the copy already holds its bytes: its base manifest was wrong there, not the bitmap"
                        );
                    }
                    continue;
                }
                Record::End { whole } => {
                    while let Some(held) = ahead.pop_front() {
                        keep_replaced(
                            old,
                            d,
                            j,
                            held,
                            &mut differ,
                            &mut written,
                            base,
                            &mut diverged,
                        )?;
                    }
                    break whole;
                }
            };
            let c = blocks::cv(idx, &data);
            if new_n == 1 {
                single = Some(*blake3::hash(&data).as_bytes());
            }
            cvs.push((idx, c));
            changed += 1;
            j.write_all(&[1]).map_err(&werr)?;
            j.write_all(&idx.to_le_bytes()).map_err(&werr)?;
            j.write_all(&c).map_err(&werr)?;
            put_block(j, &data).map_err(&werr)?;
            old.ask(idx);
            ahead.push_back((idx, data));
            if ahead.len() > READ_AHEAD
                && let Some(held) = ahead.pop_front()
            {
                keep_replaced(
                    old,
                    d,
                    j,
                    held,
                    &mut differ,
                    &mut written,
                    base,
                    &mut diverged,
                )?;
            }
        };
        // Blocks cut off by a smaller image are kept for the previous point.
        for idx in new_n..old_n {
            old.write(d, idx)?;
        }
        if new_n == 1 && single.is_none() {
            let mut buf = vec![0u8; blocks::block_len(header.size, 0)];
            old.mirror
                .read_exact_at(&mut buf, 0)
                .map_err(io_err(&self.image))?;
            single = Some(*blake3::hash(&buf).as_bytes());
        }
        // The recovery side's own hash of the new state: its tree with the hashes of the blocks
        // received put in, whatever the source says.
        let bpath = base.path().to_path_buf();
        let berr = io_err(&bpath);
        let (updated, mut root, consistent) =
            update_tree_checked(base, new_n, &cvs).map_err(&berr)?;
        if root.is_some()
            && (root != Some(whole) || !consistent)
            && matches!(updated, Updated::InPlace)
        {
            // A damaged node of the saved tree would refuse every update, and one next to the
            // changed blocks (a rotten leaf) could give the hash a source computed on the
            // same leaves (the recovery manifest it was given), which is not the copy's: the
            // hash is computed again from the mirror's own blocks and those received, never
            // from the saved leaves (the roll-forward then writes the tree anew).
            root = whole_of_mirror(old.mirror, &self.image, header.size, &cvs)?;
        }
        let got = root.or(single).unwrap_or(*blake3::hash(b"").as_bytes());
        Ok(Streamed {
            whole,
            got,
            received,
            changed,
            unmarked,
            checked,
            diverged,
        })
    }

    /// Makes an update's commit record durable, after the reverse delta and the new blocks it
    /// relies on: the delta synced, the journal's blocks synced, then the record ends the
    /// journal, which is synced in turn.
    fn write_commit(
        &self,
        mut j: BufWriter<File>,
        jpath: &Path,
        d: BufWriter<File>,
        dpath: &Path,
        commit: &Commit,
    ) -> Result<(), StoreError> {
        let werr = io_err(jpath);
        let derr = io_err(dpath);
        // The replaced blocks are durable before the commit record can be.
        let dfile = d.into_inner().map_err(|e| derr(e.into_error()))?;
        dfile.sync_all().map_err(&derr)?;
        drop(dfile);
        sync_dir(&self.dir)?;
        // The new blocks are durable before the record that commits them is written: one
        // sync of both could leave, after a power cut, the record on disk and a block not.
        j.flush().map_err(&werr)?;
        j.get_ref().sync_data().map_err(&werr)?;
        let json = serde_json::to_vec(commit).expect("commit serializes");
        j.write_all(&[9]).map_err(&werr)?;
        j.write_all(&(json.len() as u32).to_le_bytes())
            .map_err(&werr)?;
        j.write_all(&json).map_err(&werr)?;
        j.write_all(JOURNAL_END).map_err(&werr)?;
        let jfile = j.into_inner().map_err(|e| werr(e.into_error()))?;
        jfile.sync_all().map_err(&werr)?;
        drop(jfile);
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Completes a committed update: the previous point's delta, the mirror, the manifest,
    /// the points, then the journal goes. Every stage can be done again.
    /// `reread`: its blocks are read back from the disk, not from what this process just
    /// wrote and synced (a roll-forward of an update found committed), and are hashed again.
    fn roll_forward(
        &self,
        jpath: &Path,
        journal: &Journal,
        commit: Commit,
        recovered: Option<Option<String>>,
    ) -> Result<RolledForward, StoreError> {
        // Completed by a later run (the blocks read back from the journal are hashed again);
        // `Some(Some(stamp))`: found begun, the copy then as `stamp`.
        let reread = recovered.is_some();
        let begun = recovered.flatten();
        // A journal damaged on disk is refused before anything is touched: an image size no
        // image has, a block beyond the image, or a block whose length is not its block's (a
        // longer one would overwrite its neighbours, a shorter one leave stale bytes, unseen
        // by the hashes the journal holds).
        let size = commit.point.size;
        let n = blocks::count(size);
        let damage = if size > blocks::MAX_IMAGE_SIZE {
            Some(format!(
                "the committed update says its image is {size} bytes, more than an image can be"
            ))
        } else {
            journal.new.iter().find_map(|(idx, _, slot)| {
                if *idx >= n {
                    Some(format!(
                        "the committed update names block {idx}, beyond the {n} blocks of its image"
                    ))
                } else {
                    let want = blocks::block_len(size, *idx);
                    (slot.len as usize != want).then(|| {
                        format!(
                            "the committed update holds {} bytes for block {idx}, which is {want} bytes long",
                            slot.len
                        )
                    })
                }
            })
        };
        if let Some(what) = damage {
            return Err(StoreError::Damaged {
                path: jpath.display().to_string(),
                reason: format!(
                    "{what}; the copy was not touched: check it (`reprise verify`) and remove the journal"
                ),
            });
        }
        // From here on the copy's stamp moves by the update's own writes
        // ([`Self::written_after_commit`]).
        let rolling = self.path(ROLLING);
        meta::write_file(&self.dir, ROLLING, commit.point.id.as_bytes(), false)?;
        let jf = File::open(jpath).map_err(io_err(jpath))?;
        let read_slot = |slot: &Slot| -> Result<Vec<u8>, StoreError> {
            let mut buf = vec![0u8; slot.len as usize];
            if let Some(at) = slot.at {
                jf.read_exact_at(&mut buf, at).map_err(io_err(jpath))?;
            }
            Ok(buf)
        };
        // 1. The reverse delta of the previous point: the pending one, renamed (gone already
        // when an earlier try got past this stage).
        let pending = self.path("delta.pending");
        let present = |path: &Path| match std::fs::symlink_metadata(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(path)(e)),
        };
        match &commit.prev {
            Some(prev) => {
                let to = self.path(&format!("deltas/{prev}.rdelta"));
                if present(&pending)? {
                    std::fs::rename(&pending, &to).map_err(io_err(&to))?;
                    sync_dir(&self.dir.join("deltas"))?;
                } else if !present(&to)? && self.points()?.iter().any(|p| &p.id == prev) {
                    // Without it, overwriting the mirror would lose the previous point (unless
                    // an earlier try got as far as dropping that point by retention).
                    return Err(StoreError::Damaged {
                        path: pending.display().to_string(),
                        reason: format!(
                            "the blocks this update replaces are neither here nor in {}; the copy was not touched",
                            to.display()
                        ),
                    });
                }
            }
            None if present(&pending)? => {
                std::fs::remove_file(&pending).map_err(io_err(&pending))?
            }
            None => {}
        }
        // 2. The mirror (read again whole after, when found begun).
        let mirror = OpenOptions::new()
            .read(begun.is_some())
            .write(true)
            .open(&self.image)
            .map_err(io_err(&self.image))?;
        let mut written = 0u64;
        // Each block as read back from the journal of an update found committed, hashed
        // again: one damaged on this disk since it was received is what the mirror now holds,
        // and what its manifest says. (Right after its commit, the journal read back is what
        // this process wrote, from the page cache: hashing it again would prove nothing.)
        let mut changed: Vec<(u64, Cv)> = Vec::with_capacity(journal.new.len());
        let mut damaged: Vec<u64> = Vec::new();
        for (idx, cv, slot) in &journal.new {
            let off = idx * BLOCK as u64;
            match slot.at {
                Some(_) => {
                    let data = read_slot(slot)?;
                    let real = if reread { blocks::cv(*idx, &data) } else { *cv };
                    if real != *cv {
                        damaged.push(*idx);
                    }
                    changed.push((*idx, real));
                    mirror
                        .write_all_at(&data, off)
                        .map_err(io_err(&self.image))?;
                    written += u64::from(slot.len);
                    if written % WRITEBACK_EVERY < u64::from(slot.len) {
                        start_writeback(&[&mirror]);
                    }
                }
                None => {
                    changed.push((*idx, *cv));
                    punch_hole(&mirror, off, u64::from(slot.len)).map_err(io_err(&self.image))?
                }
            }
        }
        mirror
            .set_len(commit.point.size)
            .map_err(io_err(&self.image))?;
        mirror.sync_all().map_err(io_err(&self.image))?;
        // The copy as this update left it (the file it wrote, not whatever is at its path):
        // a write after this is not vouched for.
        let seen = mirror.metadata().ok();
        let mut stamp = seen.as_ref().map(stamp_of);
        let key = seen.as_ref().map(key_of);
        // An update found begun, cut while it wrote the copy: a write made in the copy since
        // the cut (a vm run on it by hand, an edit), in a block the update does not write, is
        // still there, and its stamp cannot tell (the update's own writes moved it). The copy
        // is read whole: one that is not the point keeps the stamp it had when it was found,
        // so that it counts as written outside reprise (nothing replicates or rolls back over
        // it until `reprise release`), and its manifest is read again from it.
        // (Judged only when every block read back from the journal is what was received: a
        // damaged one makes the point unusable below, and the next replication mends it.)
        let mut foreign = None;
        if let Some(found) = begun.as_ref().filter(|_| damaged.is_empty()) {
            let real = whole_of_mirror(&mirror, &self.image, size, &changed)?;
            if real.is_some_and(|r| hex(r) != commit.new_whole) {
                foreign = Some(format!(
                    "an update into it was cut while it wrote the copy, and the copy read whole once it was completed is not this point: written outside reprise since the cut (a vm run on it by hand, an edit) or damaged on this disk. What was written there is in no point, and the update's blocks were written over it; the copy counts as changed since its newest point (it was `{found}` when found)"
                ));
                stamp = Some(found.clone());
            }
        }
        // 3. The manifest, then the stamp.
        let whole = match foreign {
            None => {
                let whole = self.roll_manifest_forward(&changed, &commit)?;
                self.write_stamp(key.as_deref())?;
                whole
            }
            Some(_) => {
                for name in ["manifest", "stamp"] {
                    remove_if_present(&self.path(name))?;
                }
                [0u8; 32]
            }
        };
        // The copy is the point only if its hash is the one the source sent.
        let unusable = foreign.or_else(|| (hex(whole) != commit.new_whole).then(|| {
            let blocks = match damaged.len() {
                0 => String::new(),
                n => format!(
                    " ({n} of its blocks read back from its journal differ from what was received, the first block {})",
                    damaged[0]
                ),
            };
            format!(
                "the update that made it was damaged on the recovery host's disk after it was received{blocks}: the copy is not this point; the next replication sends what differs again"
            )
        }));
        // 4. The points, within retention; the new newest records what the mirror now is. An
        // update that begins a new history ends the one before first (again, when a crash
        // came in between, with nothing left to give up).
        let mut ended = None;
        if let Some(why) = &commit.ends {
            let before = self.points()?;
            if !before.is_empty() && !before.iter().any(|p| p.id == commit.point.id) {
                ended = Some(self.end_points(why.clone(), false)?);
            }
        }
        let mut points = self.points()?;
        if !points.iter().any(|p| p.id == commit.point.id) {
            points.push(commit.point.clone());
        }
        let mut marks = Marks::default();
        let mut unusable = unusable;
        if let Some(p) = points.last_mut().filter(|p| p.id == commit.point.id) {
            p.stamp = stamp;
            if let Some(why) = &unusable {
                p.mark_unusable(why);
            }
            // What was said of its replication before it was completed (`mark_torn`,
            // `confirm`).
            marks = self.apply_marks(p);
            unusable = p.unusable.clone().filter(|_| !p.pending);
        }
        let unmarked = commit
            .unmarked
            .map(|(count, first)| self::unmarked(&mut points, &commit.point.id, count, first));
        let recorded = points.last().filter(|p| p.id == commit.point.id).cloned();
        let dropped = super::point::prune(&mut points, commit.retention as usize);
        self.write_points(&points)?;
        for id in &dropped {
            let p = self.path(&format!("deltas/{id}.rdelta"));
            let _ = std::fs::remove_file(p);
        }
        meta::prune_definitions(&self.dir, &points);
        std::fs::remove_file(jpath).map_err(io_err(jpath))?;
        remove_if_present(&rolling)?;
        sync_dir(&self.dir)?;
        // Its marks have done their work (the point is recorded, and no update is left).
        self.remove_marks(marks, commit.point.taken_at)?;
        Ok(RolledForward {
            dropped,
            unusable,
            recorded,
            unmarked,
            ended,
        })
    }

    /// Stage 3 of [`Self::roll_forward`]: the manifest made that of the mirror as the update
    /// left it (the mirror is written and synced already). In place, only the nodes above the
    /// blocks the journal changed, when the number of blocks stays (see
    /// [`Self::write_in_place`]); written whole otherwise. The tree must give the new
    /// whole-image hash; else it is made anew from its leaves (an inner node was damaged),
    /// which must give it in turn, or the manifest was not the base of this update (damaged,
    /// replaced, of an older layout): the mirror is then hashed again, and so is an image of
    /// one block. `changed` are the blocks as the mirror now holds them; returns the hash of the
    /// whole image the manifest now gives.
    fn roll_manifest_forward(
        &self,
        changed: &[(u64, Cv)],
        commit: &Commit,
    ) -> Result<[u8; 32], StoreError> {
        let size = commit.point.size;
        let n = blocks::count(size);
        if let (true, Some(whole)) = (n >= 2, parse_hex(&commit.new_whole))
            && let Some(mut t) = self.open_tree(&[MANIFEST_MAGIC, MANIFEST_UPDATING])?
        {
            let tpath = self.path("manifest");
            let terr = io_err(&tpath);
            let (updated, root) = update_tree(&mut t, n, changed).map_err(&terr)?;
            if root == Some(whole) {
                match updated {
                    Updated::InPlace => self.write_in_place(&t, size, &whole)?,
                    Updated::Whole(nodes) => {
                        drop(t);
                        self.write_tree(size, &whole, &nodes)?
                    }
                };
                return Ok(whole);
            }
            // An inner node may be damaged: the tree made anew from its leaves.
            let (nodes, root) = tree_anew(&t, n, changed).map_err(&terr)?;
            if root == Some(whole) {
                drop(t);
                self.write_tree(size, &whole, &nodes)?;
                return Ok(whole);
            }
        }
        // The mirror as it is, whatever the point says it should be (its stamp, the caller's,
        // is of before: a write since is not vouched for).
        let (m, _, _) = self.read_mirror()?;
        self.write_tree(m.size, &m.whole, &tree::of(m.cvs))?;
        Ok(m.whole)
    }

    fn find(&self, points: &[Point], id: &str) -> Result<usize, StoreError> {
        points
            .iter()
            .position(|p| p.id == id)
            .ok_or_else(|| StoreError::UnknownPoint {
                image: self.name(),
                point: id.to_string(),
            })
    }

    /// Reads point `k` block by block: the mirror, with the deltas of `k` and the points after
    /// it put back. `f(first block, bytes)` gets batches of whole blocks.
    fn read_point(
        &self,
        points: &[Point],
        k: usize,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut files = Vec::new();
        let mut overlay: HashMap<u64, (usize, Slot)> = HashMap::new();
        for j in (k..points.len() - 1).rev() {
            let path = self.path(&format!("deltas/{}.rdelta", points[j].id));
            let (size, slots) = read_delta(&path)?;
            if size != points[j].size {
                return Err(StoreError::Damaged {
                    path: path.display().to_string(),
                    reason: format!("it is for {size} bytes, the point has {}", points[j].size),
                });
            }
            let fi = files.len();
            files.push((File::open(&path).map_err(damage_err(&path))?, path));
            for (idx, slot) in slots {
                overlay.insert(idx, (fi, slot));
            }
        }
        let mirror = File::open(&self.image).map_err(io_err(&self.image))?;
        let size = points[k].size;
        let n = blocks::count(size);
        let mut buf = vec![0u8; BLOCK * 64];
        let mut idx = 0;
        while idx < n {
            let first = idx;
            let mut used = 0;
            while idx < n && used + BLOCK <= buf.len() {
                let len = blocks::block_len(size, idx);
                let dst = &mut buf[used..used + len];
                match overlay.get(&idx) {
                    Some((fi, slot)) => {
                        let (file, path) = &files[*fi];
                        if slot.len as usize != len {
                            return Err(StoreError::Damaged {
                                path: path.display().to_string(),
                                reason: format!("block {idx} has the wrong length"),
                            });
                        }
                        match slot.at {
                            Some(at) => file.read_exact_at(dst, at).map_err(damage_err(path))?,
                            None => dst.fill(0),
                        }
                    }
                    None => mirror.read_exact_at(dst, idx * BLOCK as u64).map_err(|e| {
                        StoreError::Damaged {
                            path: self.name(),
                            reason: format!("block {idx}: {e}"),
                        }
                    })?,
                }
                used += len;
                idx += 1;
            }
            f(first, &buf[..used])?;
        }
        Ok(())
    }

    /// The manifest of the mirror as it is, read whole, and the mirror's stamp as it was
    /// read (not as it is after: what was written since is not in the manifest): refused when
    /// the mirror was written while it was read (a vm running on it, another program), which
    /// would give hashes of no single instant, and with them a stamp that vouches for what was
    /// not read.
    fn read_mirror(&self) -> Result<(Manifest, String, String), StoreError> {
        let look = || std::fs::metadata(&self.image).map_err(io_err(&self.image));
        let before = super::blocks::settled_look(|| std::fs::metadata(&self.image))
            .map_err(io_err(&self.image))?;
        let m = Manifest::of_file(&self.image).map_err(io_err(&self.image))?;
        if !super::blocks::same_file_state(&before, &look()?) {
            return Err(StoreError::Refused {
                image: self.image.display().to_string(),
                reason: "it was written while it was read (a vm running on it, or another program): what was read is of no single instant, so nothing was recorded of it; run this again once nothing writes it".into(),
            });
        }
        #[cfg(test)]
        AFTER_READ.with(|f| f.take().map(|f| f()));
        Ok((m, stamp_of(&before), key_of(&before)))
    }

    /// The BLAKE3 of point `k` and, for the newest, the manifest of the mirror as it is, with
    /// its stamp as it was read.
    #[allow(clippy::type_complexity)]
    fn hash_point(
        &self,
        points: &[Point],
        k: usize,
    ) -> Result<([u8; 32], Option<(Manifest, String, String)>), StoreError> {
        if k + 1 == points.len() {
            let (m, stamp, key) = self.read_mirror()?;
            return Ok((m.whole, Some((m, stamp, key))));
        }
        let mut cvs = Vec::new();
        let mut single = None;
        let size = points[k].size;
        self.read_point(points, k, |first, buf| {
            if size <= BLOCK as u64 {
                single = Some(*blake3::hash(buf).as_bytes());
            }
            cvs.extend(blocks::cvs(first, buf));
            Ok(())
        })?;
        let whole = blocks::root(&cvs)
            .or(single)
            .unwrap_or(*blake3::hash(b"").as_bytes());
        Ok((whole, None))
    }

    /// Reads the points again (`only` one, or all) and compares their hashes; a point that
    /// does not match is marked bad. Returns (point, good) pairs.
    pub fn verify(&self, only: Option<&str>) -> Result<Vec<(String, bool)>, StoreError> {
        let _lock = self.lock()?;
        self.recover()?;
        let (mut points, _) = self.checked_points()?;
        let which: Vec<usize> = match only {
            Some(id) => vec![self.find(&points, id)?],
            None => (0..points.len()).collect(),
        };
        let mut out = Vec::new();
        for k in which {
            // The mirror's stamp as it was read, for the newest point.
            let mut read_as = None;
            // A point whose reverse delta is damaged cannot be rebuilt: it is bad.
            let good = match self.hash_point(&points, k) {
                Ok((whole, manifest)) => {
                    if let Some((m, stamp, key)) = manifest {
                        // The next replication must see the mirror as it really is, to mend it.
                        if self.saved_manifest()?.as_ref() != Some(&m) {
                            self.write_manifest(&m, Some(&key))?;
                        }
                        read_as = Some(stamp);
                    }
                    hex(whole) == points[k].blake3
                }
                Err(StoreError::Damaged { .. }) if k + 1 < points.len() => false,
                Err(e) => return Err(e),
            };
            if good && let Some(stamp) = read_as {
                // Read again and found whole: the copy, as it was read, is this point,
                // whatever its stamp was (a write since is not vouched for).
                points[k].stamp = Some(stamp);
            }
            if !good && points[k].pending {
                // Never confirmed to be of one instant, and not whole: bad for good, whatever
                // a confirmation of its freeze says, and whatever a later verification finds
                // (a delta that could not be read now may be read then: the point may still
                // be torn).
                points[k].mark_unusable(&format!(
                    "{} It was not whole either when it was verified.",
                    super::point::PENDING_WHY
                ));
            }
            // Whole, but what its source said makes it unusable: still bad.
            let good = good && points[k].unusable.is_none();
            points[k].verified = if good { Verified::Yes } else { Verified::Bad };
            points[k].checked_at = Some(Utc::now());
            out.push((points[k].id.clone(), good));
        }
        self.write_points(&points)?;
        Ok(out)
    }

    /// Marks point `id` bad for good, with `why` (see [`Point::unusable`]): no choice takes
    /// it, and no verification makes it good again. What the point then is.
    pub fn mark_unusable(&self, id: &str, why: &str) -> Result<Point, StoreError> {
        let _lock = self.lock()?;
        self.recover()?;
        let (mut points, _) = self.checked_points()?;
        let k = self.find(&points, id)?;
        points[k].mark_unusable(why);
        // Both generations (`write_points`): a damaged newest never brings it back as it was.
        self.write_points(&points)?;
        Ok(points[k].clone())
    }

    /// What was said of `point`'s replication before its update recorded it: said torn
    /// (`mark_torn`: bad for good; a mark that cannot be read may be of this one), or its
    /// freeze confirmed (`confirm`: a point held only for that is good). The marks found.
    fn apply_marks(&self, point: &mut Point) -> Marks {
        let mut marks = Marks::default();
        if let Some(why) = meta::read_torn(&self.dir, point.taken_at) {
            point.mark_unusable(&why);
            marks.torn = true;
        }
        if meta::read_confirmed(&self.dir, point.taken_at) {
            point.confirm();
            marks.confirmed = true;
        }
        marks
    }

    /// Removes the marks [`Self::apply_marks`] found, once the point is recorded.
    fn remove_marks(&self, marks: Marks, taken_at: DateTime<Utc>) -> Result<(), StoreError> {
        if marks.torn {
            meta::remove_torn(&self.dir, taken_at)?;
        }
        if marks.confirmed {
            meta::remove_confirmed(&self.dir, taken_at)?;
        }
        Ok(())
    }

    /// Confirms that the freeze under which the points taken at `taken_at` (one
    /// replication's) were read held through the copy: a point held only for that
    /// ([`Point::pending`]) becomes good. The confirmation is kept first (`confirmed/`),
    /// before the copy's lock is even waited for, and stays until a point of that replication
    /// is recorded: an update completed later, or not even begun (its stream still on the
    /// way), records its point confirmed. The points of that replication, as they then are.
    pub fn confirm(&self, taken_at: DateTime<Utc>) -> Result<Vec<Point>, StoreError> {
        self.mark_and_settle(
            taken_at,
            || meta::write_confirmed(&self.dir, taken_at),
            "the confirmation is kept (confirmed/): the point of that replication is recorded confirmed",
        )
    }

    /// Marks bad for good, saying `why`, the points taken at `taken_at` (one replication's),
    /// among them the one an interrupted update of that replication records when it completes:
    /// the mark is kept first (`torn/`), before the copy's lock is even waited for (an update
    /// still completing records its point bad), and stays until a point of that replication
    /// is recorded, so that whoever records it (now, or a later command on the copy) records
    /// it bad. The points of that replication, as they then are.
    pub fn mark_torn(&self, taken_at: DateTime<Utc>, why: &str) -> Result<Vec<Point>, StoreError> {
        self.mark_and_settle(
            taken_at,
            || meta::write_torn(&self.dir, taken_at, why),
            "the mark is kept (torn/): the point of that replication is recorded bad",
        )
    }

    /// Keeps a mark of the replication taken at `taken_at` (`write`), then, holding the copy,
    /// settles it: an interrupted update completed records its point with the mark
    /// ([`Self::apply_marks`]), a point already recorded gets it ([`Self::settle_marks`]).
    /// The points of that replication, as they then are; an error says that the mark is kept
    /// (`kept`) for the next command that takes the copy.
    fn mark_and_settle(
        &self,
        taken_at: DateTime<Utc>,
        write: impl FnOnce() -> Result<(), StoreError>,
        kept: &str,
    ) -> Result<Vec<Point>, StoreError> {
        // No copy made here yet: its first may still be on the way.
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        write()?;
        let kept = |e: StoreError| StoreError::Damaged {
            path: self.name(),
            reason: format!(
                "{e}; {kept} by the next command that takes the copy (or as its update is completed)"
            ),
        };
        let _lock = lock_wait(&self.dir, &self.name(), std::time::Duration::from_secs(500))
            .map_err(kept)?;
        self.recover().map_err(kept)?;
        let (points, _) = self.checked_points()?;
        Ok(points
            .into_iter()
            .filter(|p| p.taken_at == taken_at)
            .collect())
    }

    /// Writes point `id` to `out` (sparse), and checks its hash. Never over the copy itself,
    /// nor over a file of its metadata: the point is read from them. It is written beside
    /// `out` first (`OUT.reprise-partial`) and renamed to `out` once checked: a restore cut
    /// or found wrong leaves nothing at `out` that could be taken for the point.
    pub fn restore(&self, id: &str, out: &Path) -> Result<(), StoreError> {
        // A new file in the metadata folder is harmless; one there already is not.
        let exists = std::fs::symlink_metadata(out).is_ok();
        let refused = crate::replica::tree::writes_into(out, &[&self.image]).or_else(|| {
            exists
                .then(|| crate::replica::tree::writes_into(out, &[&self.dir]))
                .flatten()
        });
        // What is there would be written over before the point is checked.
        let holds = std::fs::symlink_metadata(out).is_ok_and(|m| !m.is_file() || m.len() > 0);
        let refused = refused.or_else(|| {
            holds.then(|| format!("{} is there already: a point is restored into a new or empty file only, never over what a file holds", out.display()))
        });
        if let Some(reason) = refused {
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        let mut partial = out.as_os_str().to_owned();
        partial.push(".reprise-partial");
        let partial = PathBuf::from(partial);
        // Where it is first made is never the copy, nor a file of its metadata either.
        let there = std::fs::symlink_metadata(&partial).is_ok();
        if let Some(reason) =
            crate::replica::tree::writes_into(&partial, &[&self.image]).or_else(|| {
                there
                    .then(|| crate::replica::tree::writes_into(&partial, &[&self.dir]))
                    .flatten()
            })
        {
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        let _lock = self.lock()?;
        self.recover()?;
        let points = self.points()?;
        let k = self.find(&points, id)?;
        // One left by a restore cut before: never the point.
        let _ = std::fs::remove_file(&partial);
        let restored = self
            .restore_unlocked(&points, k, &partial)
            .and_then(|()| std::fs::rename(&partial, out).map_err(io_err(out)))
            .and_then(|()| {
                let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
                sync_dir(parent.unwrap_or(Path::new(".")))
            });
        if restored.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        restored
    }

    /// [`Store::restore`] with the lock held.
    fn restore_unlocked(&self, points: &[Point], k: usize, out: &Path) -> Result<(), StoreError> {
        let id = points[k].id.as_str();
        let f = File::create(out).map_err(io_err(out))?;
        f.set_len(points[k].size).map_err(io_err(out))?;
        let mut cvs = Vec::new();
        let mut single = None;
        let size = points[k].size;
        self.read_point(points, k, |first, buf| {
            if size <= BLOCK as u64 {
                single = Some(*blake3::hash(buf).as_bytes());
            }
            for (i, b) in buf.chunks(BLOCK).enumerate() {
                if !blocks::is_zero(b) {
                    f.write_all_at(b, (first + i as u64) * BLOCK as u64)
                        .map_err(io_err(out))?;
                }
            }
            cvs.extend(blocks::cvs(first, buf));
            Ok(())
        })?;
        f.sync_all().map_err(io_err(out))?;
        let whole = blocks::root(&cvs)
            .or(single)
            .unwrap_or(*blake3::hash(b"").as_bytes());
        if hex(whole) != points[k].blake3 {
            return Err(StoreError::Mismatch {
                image: format!("{} (point {id} restored to {})", self.name(), out.display()),
                expected: points[k].blake3.clone(),
                got: hex(whole),
            });
        }
        Ok(())
    }
}

/// What [`Store::roll_back`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    /// The point the copy now holds: the newest.
    pub point: String,
    /// The newer points given up, oldest first.
    pub dropped: Vec<String>,
}

/// A roll-back under way (`rollback.json`): the restored copy `rollback.img` is complete and
/// checked; what remains is to put it in place and forget the newer points.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RollBackIntent {
    point: String,
    /// The stamp of the point written beside the copy, which the rename keeps: what the copy
    /// is once rolled back, whichever try renames it (none: written by an earlier version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stamp: Option<String>,
}

/// Rolling the copy back to an older point, for a failover from the last good state before a
/// corruption or an attack: the older point is written whole beside the copy and checked, an
/// intent record is written, then the copy is replaced (one rename) and the newer points are
/// dropped. The deltas of the points before it stay valid, since each rebuilds its point from
/// its successor. A roll-back cut at any moment is thrown away (no intent yet: the copy was not
/// touched) or completed by the next use of the store.
impl Store {
    pub fn roll_back(&self, id: &str) -> Result<RolledBack, StoreError> {
        let _lock = self.lock()?;
        self.recover()?;
        let (points, _) = self.checked_points()?;
        let k = self.find(&points, id)?;
        if points[k].verified == Verified::Bad {
            return Err(StoreError::Damaged {
                path: self.name(),
                reason: format!("point {id} failed verification: choose a good point"),
            });
        }
        if k + 1 == points.len() {
            return Ok(RolledBack {
                point: id.to_string(),
                dropped: Vec::new(),
            });
        }
        // A vm running on the copy (or a lease that cannot be read, which may be one) would
        // have its disk replaced under it, and what it wrote dropped. A drill's overlay keeps
        // the file it opened.
        let live: Vec<String> = meta::read_leases(&self.dir)
            .into_iter()
            .filter_map(|l| match l {
                Ok(l) if l.kind == LeaseKind::Live => Some(l.describe()),
                Ok(_) => None,
                Err(e) => Some(e),
            })
            .collect();
        if !live.is_empty() {
            return Err(StoreError::InUse {
                image: self.name(),
                who: live.join("; "),
            });
        }
        self.refuse_held_by_qemu(true)?;
        // What was written in the copy outside reprise since its newest point is in no
        // point: replaced only once let go (`reprise release`).
        let (stamp, accepted) = (self.stamp(), meta::read_accepted(&self.dir));
        if let Some(why) = self.changed_since(&points)
            && stamp.is_some()
            && accepted != stamp
        {
            return Err(StoreError::Refused {
                image: self.name(),
                reason: meta::rolled_back_over(&why, id),
            });
        }
        let tmp = self.path("rollback.img");
        self.restore_unlocked(&points, k, &tmp)?;
        let intent = RollBackIntent {
            point: id.to_string(),
            stamp: std::fs::metadata(&tmp).ok().map(|m| stamp_of(&m)),
        };
        let json = serde_json::to_vec(&intent).expect("intent serializes");
        self.write_atomic("rollback.json", &json)?;
        let dropped = points[k + 1..].iter().map(|p| p.id.clone()).collect();
        self.finish_roll_back()?;
        Ok(RolledBack {
            point: id.to_string(),
            dropped,
        })
    }

    /// Completes a roll-back whose intent was written; does nothing otherwise. Lock held.
    fn finish_roll_back(&self) -> Result<Option<String>, StoreError> {
        let intent_path = self.path("rollback.json");
        let tmp = self.path("rollback.img");
        let intent: RollBackIntent = match std::fs::read(&intent_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged {
                path: intent_path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A restored copy with no intent: the roll-back was cut before it began.
                if tmp.exists() {
                    std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
                }
                return Ok(None);
            }
            Err(e) => return Err(io_err(&intent_path)(e)),
        };
        // The copy as the roll-back made it, not as it is now: an earlier try may have renamed
        // it, and a vm run on it since (its writes are in no point). An intent of an earlier
        // version says nothing of it: the copy as it is when renamed here, else now.
        let mut stamp = intent.stamp.clone();
        if tmp.exists() {
            // Never put in place under a vm run on the copy by hand since the cut: what it
            // writes would go to a file no longer the copy.
            self.refuse_held_by_qemu(true)?;
            // Nor over what such a vm wrote there and stopped (the copy changed since its
            // newest point, not let go): the roll-back is thrown away, the copy left as it
            // is, written outside reprise (nothing replicates or rolls back over it until
            // `reprise release`).
            let now = self.stamp();
            if let Some(why) = self.changed_since(&self.points()?)
                && now.is_some()
                && meta::read_accepted(&self.dir) != now
            {
                for path in [&tmp, &intent_path] {
                    remove_if_present(path)?;
                }
                sync_dir(&self.dir)?;
                return Ok(Some(format!(
                    "a roll-back to point {} that was cut before it put the rebuilt copy in place was thrown away: {why}; the copy is left as it is (what was written there is in no point)",
                    intent.point
                )));
            }
            std::fs::rename(&tmp, &self.image).map_err(io_err(&self.image))?;
            stamp = stamp.or_else(|| self.stamp());
            sync_dir(self.image.parent().unwrap_or(Path::new("")))?;
        }
        let mut points = self.points()?;
        let k = self.find(&points, &intent.point)?;
        for p in &points[k..] {
            let delta = self.path(&format!("deltas/{}.rdelta", p.id));
            match std::fs::remove_file(&delta) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&delta)(e)),
            }
        }
        points.truncate(k + 1);
        points[k].stamp = stamp.or_else(|| self.stamp());
        self.write_points(&points)?;
        for name in ["manifest", "stamp"] {
            let p = self.path(name);
            if p.exists() {
                std::fs::remove_file(&p).map_err(io_err(&p))?;
            }
        }
        std::fs::remove_file(&intent_path).map_err(io_err(&intent_path))?;
        sync_dir(&self.dir)?;
        Ok(Some(format!(
            "the copy was rolled back to point {}",
            intent.point
        )))
    }
}

/// The smallest piece of a block a cut can leave written or not: a write cut by a crash
/// or a kill ends on a page, and a power cut loses whole sectors of what had not reached
/// the disk, in any order.
const SECTOR: usize = 512;

/// Whether a block of the copy, `now`, is what an update cut while it wrote it may leave:
/// each of its sectors holds what the update writes there (`want`) or what the copy held
/// there before (`old`; `None`: beyond the copy's end before the update, nothing or zeros).
/// Where the copy's size changes in the block, a sector may also be new bytes up to the new
/// end and old ones past it (shrunk, its size not set yet), or either state with zeros past
/// its end (grown, the size written before the bytes). A block read short (the copy's end is
/// in it) is judged on what it holds. Any other byte was written since the cut.
fn cut_mix(now: &[u8], want: &[u8], old: Option<&[u8]>) -> bool {
    if now == want {
        return true;
    }
    let old = old.unwrap_or(&[]);
    // Each state as the block would read, `first`'s bytes then `then`'s, zeros past both.
    let view = |first: &[u8], then: &[u8]| -> Vec<u8> {
        (0..now.len())
            .map(|i| first.get(i).or_else(|| then.get(i)).copied().unwrap_or(0))
            .collect()
    };
    let states = [view(want, old), view(want, &[]), view(old, &[])];
    now.chunks(SECTOR).enumerate().all(|(i, piece)| {
        let at = i * SECTOR..i * SECTOR + piece.len();
        states.iter().any(|s| s[at.clone()] == *piece)
    })
}

/// The points of a metadata folder (see [`Store::points`]).
pub(super) fn points_of(dir: &Path) -> Result<Vec<Point>, StoreError> {
    match meta::read_points(dir) {
        PointsRead::Read { points, .. } => Ok(points),
        PointsRead::None if !meta::has_history(dir) => Ok(Vec::new()),
        PointsRead::None => Err(StoreError::Damaged {
            path: dir.join("points.json").display().to_string(),
            reason: "it is missing, and so is points.json.prev, while the copy has a history"
                .into(),
        }),
        PointsRead::Damaged { reason } => Err(StoreError::Damaged {
            path: dir.join("points.json").display().to_string(),
            reason,
        }),
    }
}

/// What the saved manifest is trusted by ([`Store::saved_tree`]): the mirror's stamp
/// ([`stamp_of`]) and its status change time, which no one can set back. A write made with
/// its modification time put back (`touch -r`, `rsync -t`, `cp -p`) leaves the stamp as it
/// was, not this: the mirror is then hashed again instead of trusting the manifest, and
/// whatever differs from its newest point is found. A change of owner or label (libvirt's
/// relabelling of a drill's backing file) does the same, once.
fn key_of(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt as _;
    format!("{} {}.{:09}", stamp_of(m), m.ctime(), m.ctime_nsec())
}

/// Size, mtime and inode of a mirror whose metadata is `m`: what it was when its manifest
/// was written, or when a point became its newest.
fn stamp_of(m: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt as _;
    format!(
        "{} {}.{:09} {}",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    )
}

/// Why a copy whose stamp is `now` is no longer its newest point.
pub(super) fn changed_since(points: &[Point], now: Option<String>) -> Option<String> {
    let newest = points.last()?;
    let want = newest.stamp.as_ref()?;
    (now.as_ref() != Some(want)).then(|| {
        format!(
            "the copy changed since its newest point {} was made (it was `{want}`, it is `{}`): a vm may have run on it, or it was edited",
            newest.id,
            now.as_deref().unwrap_or("missing")
        )
    })
}

/// What a copy's metadata folder says, into `state` (points, damage, leases, lock).
pub(super) fn inspect_dir(dir: &Path, state: &mut CopyState) {
    state.managed = meta::has_history(dir);
    match meta::read_points(dir) {
        PointsRead::Read { points, source } => {
            state.points = points;
            state.points_from = Some(source);
        }
        PointsRead::None if state.managed => {
            state.damaged = Some(
                "points.json is missing, and so is points.json.prev, while the copy has a history"
                    .into(),
            )
        }
        PointsRead::None => {}
        PointsRead::Damaged { reason } => state.damaged = Some(reason),
    }
    if state.points.is_empty() && state.damaged.is_none() {
        state.ended = meta::read_ended(dir);
    }
    for p in &state.points {
        if let Some(h) = &p.definition
            && let Err(why) = meta::read_definition(dir, h)
        {
            state.bad_definitions.push((p.id.clone(), why));
        }
    }
    for lease in meta::read_leases(dir) {
        match lease {
            Ok(l) => state.leases.push(l),
            Err(e) => state.bad_leases.push(e),
        }
    }
    state.accepted = meta::read_accepted(dir);
    state.busy = held(dir);
}

/// Whether a replication holds the copy whose metadata folder is `dir` now (opened without
/// creating anything).
pub(crate) fn held(dir: &Path) -> bool {
    OpenOptions::new()
        .write(true)
        .open(dir.join("lock"))
        .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
}

/// The instant `wait` from now; for a wait beyond what the clock can say (`--wait` of
/// billions of seconds), a century from now: in effect, for ever, never a panic.
pub(crate) fn instant_after(wait: std::time::Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(wait)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// [`lock_store`], waiting up to `wait` for another holder to let go.
/// The bytes QEMU locks in an image file it uses (`raw_apply_lock_bytes` in its file-posix
/// driver): from 100, one a permission it uses; from 200, one a permission it does not share.
const QEMU_LOCKS: (i64, i64) = (100, 200);
/// The byte of the permission to write (`BLK_PERM_WRITE`, the second), taken by a QEMU that
/// writes the file.
const QEMU_WRITE_LOCK: (i64, i64) = (101, 1);

/// Whether a QEMU process holds its lock on any of the bytes `(start, len)` of the file at
/// `path`: it takes shared OFD locks there, so asking whether an exclusive lock of those bytes
/// would be granted tells.
fn qemu_holds(path: &Path, (start, len): (i64, i64)) -> io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    let f = File::open(path)?;
    // SAFETY: a plain C struct, all zeroes valid (l_pid must be 0 for an OFD lock).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: F_OFD_GETLK reads and writes the `flock` it is given, which lives across the
    // call, on a descriptor `f` owns; it takes no lock.
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

pub(super) fn lock_wait(
    dir: &Path,
    name: &str,
    wait: std::time::Duration,
) -> Result<File, StoreError> {
    let until = instant_after(wait);
    loop {
        match lock_store(dir, name) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Blocks received ahead of the read of the blocks they replace: each replaced block is asked
/// of the kernel as its new block arrives ([`OldBlocks::ask`]) and read this many blocks
/// later, so that the copy's disk serves many at once. Read one after the other as each
/// block arrived, the blocks an update replaces, scattered over the copy, cost 0.4 s of a
/// 64 GiB apply of 0.1% with a cold cache, on the path of every block. Holds this many blocks
/// in memory (2 MiB).
const READ_AHEAD: usize = 32;

/// Keeps the block that the received block `idx` (`data`) replaces in the reverse delta `d`,
/// notes in `differ` whether the copy held other bytes there, and counts what the update
/// wrote in `written` (journal `j` and delta alike), asking the kernel to write back as it
/// grows.
/// Notes in `diverged` whether the block replaced is not what the manifest `base` (the
/// newest point's) says the copy holds there: the copy changed behind its stamp (rot on this
/// disk, or a write with its times put back), or the manifest's leaf did.
#[allow(clippy::too_many_arguments)]
fn keep_replaced(
    old: &mut OldBlocks,
    d: &mut BufWriter<File>,
    j: &BufWriter<File>,
    (idx, data): (u64, Vec<u8>),
    differ: &mut Vec<u64>,
    written: &mut u64,
    base: &NodeFile,
    diverged: &mut Vec<u64>,
) -> Result<(), StoreError> {
    let before = *written;
    let kept = old.write(d, idx)?;
    if kept == 0 || old.buf[..kept as usize] != data[..] {
        differ.push(idx);
    }
    if kept > 0
        && idx < base.blocks()
        && base
            .leaves(idx, 1)
            .map_err(io_err(base.path()))?
            .first()
            .is_some_and(|leaf| *leaf != blocks::cv(idx, &old.buf[..kept as usize]))
    {
        diverged.push(idx);
    }
    *written += data.len() as u64 + kept;
    if *written / WRITEBACK_EVERY != before / WRITEBACK_EVERY {
        start_writeback(&[j.get_ref(), d.get_ref()]);
    }
    Ok(())
}

/// The reverse delta an update writes as it goes: each block it replaces, read from the
/// mirror before the mirror changes, kept for the previous point.
struct OldBlocks<'a> {
    mirror: &'a File,
    image: &'a Path,
    dpath: &'a Path,
    base_size: u64,
    /// Without a previous point, what the update replaces is kept for nothing.
    keep: bool,
    buf: Vec<u8>,
}

impl OldBlocks<'_> {
    /// Asks the kernel to read the base's block `idx` ahead of [`Self::write`] (a hint:
    /// nothing is read here, and a refusal changes nothing but the time).
    fn ask(&self, idx: u64) {
        let len = blocks::block_len(self.base_size, idx) as u64;
        if let (true, Some(len)) = (self.keep, std::num::NonZeroU64::new(len)) {
            let _ = rustix::fs::fadvise(
                self.mirror,
                idx * BLOCK as u64,
                Some(len),
                rustix::fs::Advice::WillNeed,
            );
        }
    }

    /// Writes the base's block `idx` to the delta `d`; returns its length (0 when nothing
    /// was written).
    fn write(&mut self, d: &mut BufWriter<File>, idx: u64) -> Result<u64, StoreError> {
        let len = blocks::block_len(self.base_size, idx);
        if len == 0 || !self.keep {
            return Ok(0);
        }
        let buf = &mut self.buf[..len];
        self.mirror
            .read_exact_at(buf, idx * BLOCK as u64)
            .map_err(io_err(self.image))?;
        d.write_all(&idx.to_le_bytes())
            .map_err(io_err(self.dpath))?;
        put_block(d, buf).map_err(io_err(self.dpath))?;
        Ok(len as u64)
    }
}

/// What the blocks of an update gave once its end record came.
struct Streamed {
    /// The whole-image hash the source announced.
    whole: [u8; 32],
    /// The whole-image hash of what the copy will hold.
    got: [u8; 32],
    received: u64,
    changed: u64,
    unmarked: Option<(u64, u64)>,
    /// The source checked the blocks it read against its dirty bitmap and said what it found
    /// ([`wire::Record::Unmarked`], none missed included).
    checked: bool,
    /// The blocks it replaces that were not what the newest point's manifest says.
    diverged: Vec<u64>,
}

/// A block in a journal or delta: length, a zero flag, and the bytes unless zero.
fn put_block(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    w.write_all(&(data.len() as u32).to_le_bytes())?;
    if blocks::is_zero(data) {
        w.write_all(&[1])
    } else {
        w.write_all(&[0])?;
        w.write_all(data)
    }
}

/// A reader that knows its offset, for the slots of journals and deltas.
struct Cursor<R> {
    inner: R,
    at: u64,
}

impl<R: Read> Cursor<R> {
    fn exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.at += buf.len() as u64;
        Ok(())
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn slot(&mut self) -> io::Result<Slot> {
        let mut l = [0u8; 4];
        self.exact(&mut l)?;
        let len = u32::from_le_bytes(l);
        let mut z = [0u8; 1];
        self.exact(&mut z)?;
        if z[0] == 1 {
            return Ok(Slot { len, at: None });
        }
        let at = self.at;
        let skipped = io::copy(&mut (&mut self.inner).take(u64::from(len)), &mut io::sink())?;
        if skipped != u64::from(len) {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.at += skipped;
        Ok(Slot { len, at: Some(at) })
    }
}

/// Reads a journal; one cut short has no commit.
fn read_journal(path: &Path) -> Result<Journal, StoreError> {
    let f = File::open(path).map_err(io_err(path))?;
    let total = f.metadata().map_err(io_err(path))?.len();
    let mut c = Cursor {
        inner: io::BufReader::with_capacity(1 << 20, f),
        at: 0,
    };
    let mut j = Journal::default();
    let mut magic = [0u8; 8];
    if c.exact(&mut magic).is_ok() && &magic == JOURNAL_MAGIC_V1 {
        return Err(StoreError::Damaged {
            path: path.display().to_string(),
            reason: "an update journal left by an older reprise: finish it with that version, \
                     or check the copy and remove the journal"
                .into(),
        });
    }
    if &magic != JOURNAL_MAGIC {
        return Ok(j);
    }
    let result: io::Result<()> = (|| {
        loop {
            let mut tag = [0u8; 1];
            c.exact(&mut tag)?;
            match tag[0] {
                1 => {
                    let idx = c.u64()?;
                    let mut cv = [0u8; 32];
                    c.exact(&mut cv)?;
                    let new = c.slot()?;
                    j.new.push((idx, cv, new));
                }
                9 => {
                    let mut l = [0u8; 4];
                    c.exact(&mut l)?;
                    let len = u32::from_le_bytes(l);
                    if u64::from(len) > total.saturating_sub(c.at) {
                        // Longer than what is left: cut, so not committed.
                        return Ok(());
                    }
                    let mut json = vec![0u8; len as usize];
                    c.exact(&mut json)?;
                    let mut end = [0u8; 8];
                    c.exact(&mut end)?;
                    if &end == JOURNAL_END && c.at == total {
                        // Ids name files (the previous point's delta), and a retention of no
                        // point would drop them all: a record that says either is damaged,
                        // so not committed.
                        j.commit = serde_json::from_slice(&json).ok().filter(|c: &Commit| {
                            meta::valid_point_id(&c.point.id)
                                && c.prev.as_deref().is_none_or(meta::valid_point_id)
                                && c.retention >= 1
                        });
                    }
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
    })();
    // A journal cut anywhere before its end record is simply not committed.
    let _ = result;
    Ok(j)
}

fn read_delta(path: &Path) -> Result<(u64, Vec<(u64, Slot)>), StoreError> {
    let damaged = |reason: String| StoreError::Damaged {
        path: path.display().to_string(),
        reason,
    };
    let f = File::open(path).map_err(damage_err(path))?;
    let total = f.metadata().map_err(io_err(path))?.len();
    let mut c = Cursor {
        inner: io::BufReader::new(f),
        at: 0,
    };
    let mut magic = [0u8; 8];
    c.exact(&mut magic).map_err(|e| damaged(e.to_string()))?;
    if &magic != DELTA_MAGIC {
        return Err(damaged("not a reprise delta".into()));
    }
    let size = c.u64().map_err(|e| damaged(e.to_string()))?;
    let mut slots = Vec::new();
    while c.at < total {
        let idx = c.u64().map_err(|e| damaged(e.to_string()))?;
        let slot = c.slot().map_err(|e| damaged(e.to_string()))?;
        // A block, never more: a damaged length would have a block of zeros, or a read,
        // take gigabytes.
        if slot.len as usize > BLOCK {
            return Err(damaged(format!(
                "block {idx} holds {} bytes, more than a block's {BLOCK}",
                slot.len
            )));
        }
        slots.push((idx, slot));
    }
    Ok((size, slots))
}

/// Lowercase hex of a whole-image hash.
/// The length of the manifest at `path` when it is of the older flat layout and as long as its
/// header says; `None` for any other file.
fn flat_len(path: &Path) -> io::Result<Option<u64>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut h = [0u8; 56];
    if f.read_exact(&mut h).is_err() {
        return Ok(None);
    }
    let Some((size, _)) = blocks::read_header(&h) else {
        return Ok(None);
    };
    let len = f.metadata()?.len();
    Ok((len == 56 + blocks::count(size) * 32).then_some(len))
}

fn hex(hash: [u8; 32]) -> String {
    blake3::Hash::from_bytes(hash).to_hex().to_string()
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    blake3::Hash::from_hex(s).ok().map(|h| *h.as_bytes())
}

/// Makes a range of the file a hole (it reads as zeros and takes no space).
fn punch_hole(f: &File, off: u64, len: u64) -> io::Result<()> {
    use rustix::fs::{FallocateFlags, fallocate};
    match fallocate(
        f,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        off,
        len,
    ) {
        Ok(()) => Ok(()),
        // A file system without holes: write the zeros.
        Err(rustix::io::Errno::OPNOTSUPP) => f.write_all_at(&vec![0u8; len as usize], off),
        Err(e) => Err(e.into()),
    }
}

use super::meta::sync_dir;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_beyond_the_clock_is_for_ever_not_a_panic() {
        let now = std::time::Instant::now();
        let far = instant_after(std::time::Duration::from_secs(u64::MAX));
        assert!(far > now + std::time::Duration::from_secs(50 * 365 * 86_400));
        let soon = instant_after(std::time::Duration::from_secs(5));
        assert!(soon >= now + std::time::Duration::from_secs(5) && soon < far);
    }

    /// A copy that is the very file a stream's source read, on this machine, is named so;
    /// another file, a copy not made yet, or a source that could not say, is not.
    #[test]
    fn a_copy_that_is_the_file_its_source_read_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (disk, other) = (d.path().join("disk.qcow2"), d.path().join("copy.qcow2"));
        std::fs::write(&disk, b"disk").unwrap();
        std::fs::write(&other, b"disk").unwrap();
        let origin = wire::Origin::of(&std::fs::metadata(&disk).unwrap()).unwrap();
        let said = same_file_as_source(&disk, Some(&origin)).unwrap_or_default();
        assert!(
            said.contains("it is the very file the source read")
                && said.contains(&origin.boot_text()),
            "{said}"
        );
        std::os::unix::fs::symlink(&disk, d.path().join("link")).unwrap();
        assert!(same_file_as_source(&d.path().join("link"), Some(&origin)).is_some());
        assert_eq!(same_file_as_source(&other, Some(&origin)), None);
        assert_eq!(
            same_file_as_source(&d.path().join("new"), Some(&origin)),
            None
        );
        assert_eq!(same_file_as_source(&disk, None), None);
        // The source finds the copy's lock held by an update receiving from its own path.
        let store = Store::new(&disk);
        let lock = store.lock().unwrap();
        let writing = writing_from(store.meta_dir(), &format!("hv-main:{}", disk.display()));
        let held = std::thread::scope(|s| {
            s.spawn(|| Store::new(&disk).written_by_its_own_copy())
                .join()
                .unwrap()
        });
        assert!(
            held.as_deref()
                .is_some_and(|w| w.contains("it is the very file the copy is written to")),
            "{held:?}"
        );
        drop(writing);
        // Gone when the update ends: another holder of the lock is not taken for it.
        assert!(!store.path("writing").exists());
        assert_eq!(Store::new(&disk).written_by_its_own_copy(), None);
        let other = writing_from(store.meta_dir(), "hv-main:/srv/another.qcow2");
        assert_eq!(Store::new(&disk).written_by_its_own_copy(), None);
        drop(other);
        drop(lock);
        assert_eq!(Store::new(&disk).written_by_its_own_copy(), None);
    }

    /// A stream whose source read the very file the copy is (its header names it) is refused
    /// by the recovery side before anything is written: no point, the file as it was.
    #[test]
    fn a_stream_of_the_copy_itself_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("erp-db-system.qcow2");
        let bytes: Vec<u8> = (0..3 * BLOCK + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&disk, &bytes).unwrap();
        let store = Store::new(&disk);
        // A file reprise did not make is refused as such first; taken as a copy by mistake,
        // it is still the very file the source reads.
        assert!(store.base_manifest(false, false).is_err());
        store.accept_changes().unwrap();
        let stream = stream_of(&disk, &store);
        let err = store.apply(&mut &stream[..], point("p1")).unwrap_err();
        assert!(
            matches!(&err, StoreError::Refused { reason, .. }
                if reason.contains("it is the very file the source read")),
            "{err}"
        );
        assert_eq!(std::fs::read(&disk).unwrap(), bytes);
        assert!(store.points().unwrap().is_empty());
        // The same stream into another file is taken.
        let other = Store::new(&dir.path().join("copy.qcow2"));
        let stream = stream_of(&disk, &other);
        other.apply(&mut &stream[..], point("p1")).unwrap();
        assert_eq!(std::fs::read(dir.path().join("copy.qcow2")).unwrap(), bytes);
    }

    /// A delta or journal whose block length is damaged is refused as damaged, never read
    /// into gigabytes of memory (a block of zeros of 4 GiB).
    #[test]
    fn a_damaged_block_length_is_refused_not_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p1.rdelta");
        let mut bytes = DELTA_MAGIC.to_vec();
        bytes.extend_from_slice(&(4 * BLOCK as u64).to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.push(1);
        std::fs::write(&path, &bytes).unwrap();
        let err = read_delta(&path).unwrap_err().to_string();
        assert!(err.contains("more than a block's"), "{err}");
        // One block's length is a block.
        let n = bytes.len();
        bytes[n - 5..n - 1].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_delta(&path).unwrap().1.len(), 1);
    }

    /// A restore that finds its point not whole leaves nothing where the point was asked:
    /// no file of its size that could be taken for it.
    #[test]
    fn a_restore_found_wrong_leaves_nothing_where_the_point_was_asked() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let store = Store::new(&dir.path().join("copy.img"));
        std::fs::write(&src, vec![1u8; 3 * BLOCK]).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        std::fs::write(&src, vec![2u8; 3 * BLOCK]).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p2"))
            .unwrap();
        let delta = std::fs::read_dir(store.path("deltas"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().contains("p1"))
            .unwrap();
        let mut bytes = std::fs::read(&delta).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&delta, bytes).unwrap();
        let out = dir.path().join("restored.img");
        store.restore("p1", &out).unwrap_err();
        assert!(!out.exists());
        assert!(!dir.path().join("restored.img.reprise-partial").exists());
        // A whole one is restored, and only it is there.
        store.restore("p2", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), vec![2u8; 3 * BLOCK]);
        assert!(!dir.path().join("restored.img.reprise-partial").exists());
    }

    /// A point is never restored over the copy it is read from, nor over its metadata: the
    /// copy would be cut before it was read.
    #[test]
    fn a_point_is_never_restored_over_its_own_copy() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let bytes: Vec<u8> = (0..2 * BLOCK + 5).map(|i| (i % 253) as u8).collect();
        std::fs::write(&src, &bytes).unwrap();
        let copy = dir.path().join("copy.img");
        let store = Store::new(&copy);
        let stream = stream_of(&src, &store);
        store.apply(&mut &stream[..], point("p1")).unwrap();
        std::os::unix::fs::symlink(&copy, dir.path().join("link.img")).unwrap();
        for out in [
            copy.clone(),
            dir.path().join("link.img"),
            store.path("points.json"),
        ] {
            let err = store.restore("p1", &out).unwrap_err().to_string();
            assert!(err.contains("which the point is read from"), "{err}");
        }
        assert_eq!(std::fs::read(&copy).unwrap(), bytes);
        assert_eq!(store.points().unwrap().len(), 1);
        // Nor over another file that holds data (the primary's disk): it would be written
        // over before the point is checked.
        let disk = dir.path().join("disk.img");
        std::fs::write(&disk, b"newer data").unwrap();
        let err = store.restore("p1", &disk).unwrap_err().to_string();
        assert!(err.contains("is there already"), "{err}");
        assert_eq!(std::fs::read(&disk).unwrap(), b"newer data");
        let out = dir.path().join("restored.img");
        store.restore("p1", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), bytes);
    }

    /// A new point named `id`, keeping 5.
    fn point(id: &str) -> NewPoint {
        NewPoint {
            id: id.into(),
            taken_at: Utc::now(),
            source: "src".into(),
            retention: 5,
            definition: None,
            read: None,
            pending: false,
            overwrite_changed: false,
        }
    }

    /// A new point named `id` of a disk read through QEMU as `mode`, keeping 5.
    fn read_as(id: &str, mode: ReadMode) -> NewPoint {
        NewPoint {
            read: Some(HowRead {
                mode,
                why: None,
                checkpoint: None,
                since: None,
                created: None,
                missed: None,
                marker: None,
            }),
            ..point(id)
        }
    }

    /// An update of `store`'s copy sending `blocks` (index, bytes) and the source's word that
    /// `count` blocks from `first` on were missed by its bitmap, ending with the whole hash of
    /// `source` (the image it makes).
    fn missed_update(
        store: &Store,
        blocks: &[(u64, &[u8])],
        count: u64,
        first: u64,
        source: std::io::Result<Manifest>,
    ) -> Vec<u8> {
        let (m, _) = store.base_manifest(false, false).unwrap();
        let mut stream = Vec::new();
        let header = wire::Header {
            base_size: m.size,
            base_whole: m.whole,
            size: m.size,
            origin: None,
        };
        wire::write_header(&mut stream, &header).unwrap();
        for (idx, data) in blocks {
            wire::write_data(&mut stream, *idx, data).unwrap();
        }
        wire::write_unmarked(&mut stream, count, first).unwrap();
        wire::write_end(&mut stream, &source.unwrap().whole).unwrap();
        stream
    }

    /// `stream` with the source's word on its check against a bitmap before its end record
    /// (its last 33 bytes).
    fn said_unmarked(mut stream: Vec<u8>, count: u64, first: u64) -> Vec<u8> {
        let end = stream.split_off(stream.len() - 33);
        wire::write_unmarked(&mut stream, count, first).unwrap();
        stream.extend(end);
        stream
    }

    /// A scan that found blocks its dirty bitmap missed, its update cut right after its commit
    /// record: whoever completes it marks the points read through the bitmap since the last
    /// whole read, and the next update says what was found.
    #[test]
    fn blocks_a_bitmap_missed_are_said_by_whoever_completes_the_update() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let store = Store::new(&dir.path().join("dst.img"));
        let read = read_as;
        for (id, byte, mode) in [
            ("p1", b'a', ReadMode::Scan),
            ("p2", b'b', ReadMode::ChangedBlocks),
        ] {
            std::fs::write(&src, vec![byte; 3 * BLOCK]).unwrap();
            store
                .apply(&mut &stream_of(&src, &store)[..], read(id, mode))
                .unwrap();
        }
        std::fs::write(&src, vec![b'c'; 3 * BLOCK]).unwrap();
        let stream = said_unmarked(stream_of(&src, &store), 1, 2);
        store
            .apply_until(&mut &stream[..], read("p3", ReadMode::Scan), true)
            .unwrap();
        let (_, note) = store.base_manifest(false, false).unwrap();
        let note = note.expect("the completed update is said");
        assert!(
            note.contains("an interrupted update was completed: point p3")
                && note
                    .contains("1 blocks differ from the copy that the dirty bitmap did not mark")
                && note.contains("marked bad: p2"),
            "{note}"
        );
        let bad: Vec<(String, bool, Option<u64>)> = store
            .points()
            .unwrap()
            .into_iter()
            .map(|p| (p.id, p.unusable.is_some(), p.read.and_then(|r| r.missed)))
            .collect();
        // p3 records what its check found: the next replications check the bitmap again.
        assert_eq!(
            bad,
            [
                ("p1".to_string(), false, None),
                ("p2".to_string(), true, None),
                ("p3".to_string(), false, Some(1))
            ]
        );
        // A source whose base manifest was wrong about the copy sends a block the copy
        // already holds as one its bitmap missed: not taken as the bitmap's miss.
        std::fs::write(&src, vec![b'd'; 3 * BLOCK]).unwrap();
        store
            .apply(
                &mut &stream_of(&src, &store)[..],
                read("p4", ReadMode::ChangedBlocks),
            )
            .unwrap();
        // Block 2 as the copy holds it, said missed by the bitmap, `count` blocks in all.
        let d = vec![b'd'; BLOCK];
        let said_missed =
            |count: u64| missed_update(&store, &[(2, &d)], count, 2, Manifest::of_file(&src));
        let applied = store
            .apply(&mut &said_missed(1)[..], read("p5", ReadMode::Scan))
            .unwrap();
        assert_eq!(applied.unmarked, None);
        let p4 = store
            .points()
            .unwrap()
            .into_iter()
            .find(|p| p.id == "p4")
            .unwrap();
        assert!(p4.unusable.is_none(), "{p4:?}");
        // Two blocks said missed, the first one the copy held already: the other may be the
        // bitmap's miss, so the word is taken (the bitmap distrusted until checked again).
        let mut v = vec![b'd'; 3 * BLOCK];
        v[..BLOCK].fill(b'e');
        std::fs::write(&src, &v).unwrap();
        let stream = missed_update(
            &store,
            &[(0, &v[..BLOCK]), (2, &v[2 * BLOCK..])],
            2,
            2,
            Manifest::of_file(&src),
        );
        let applied = store
            .apply(&mut &stream[..], read("p5b", ReadMode::Scan))
            .unwrap();
        let said = applied.unmarked.unwrap_or_default();
        assert!(
            said.contains("2 blocks differ from the copy that the dirty bitmap did not mark"),
            "{said}"
        );
        let newest = store.points().unwrap().pop().unwrap();
        assert_eq!(
            newest.read.and_then(|r| r.missed),
            Some(2),
            "the bitmap stays distrusted"
        );
        // Nor is a count beyond the blocks sent.
        std::fs::write(&src, vec![b'd'; 3 * BLOCK]).unwrap();
        let e = store
            .apply(&mut &said_missed(2)[..], read("p6", ReadMode::Scan))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("says 2 blocks its bitmap missed, and sent 1"),
            "{e}"
        );
    }

    /// A copy whose source is read another way from now on (its image file, then the disk as
    /// the guest sees it, and back) begins a new history: its points are given up only once
    /// the update is recorded. One that fails keeps them and the copy as they were; one cut
    /// right after its commit record gives them up as whoever completes it records it.
    #[test]
    fn a_history_ends_for_a_new_way_of_reading_only_once_its_update_is_recorded() {
        let (_dir, src, store) = copy_of(&[("p1", b'a'), ("p2", b'b')], 3);
        let ids = |store: &Store| -> Vec<String> {
            store.points().unwrap().into_iter().map(|p| p.id).collect()
        };
        let before = std::fs::read(store.image()).unwrap();
        std::fs::write(&src, vec![b'c'; 3 * BLOCK]).unwrap();
        let stream = stream_of(&src, &store);
        let cut = &stream[..stream.len() - 40];
        let e = store
            .apply(&mut &cut[..], read_as("p3", ReadMode::Scan))
            .unwrap_err();
        assert!(e.to_string().contains("ended early"), "{e}");
        assert_eq!(ids(&store), ["p1", "p2"]);
        assert_eq!(std::fs::read(store.image()).unwrap(), before);
        assert!(store.verify(None).unwrap().iter().all(|(_, good)| *good));

        let applied = store
            .apply(
                &mut &stream_of(&src, &store)[..],
                read_as("p3", ReadMode::Scan),
            )
            .unwrap();
        let said = applied.recovered.unwrap_or_default();
        assert!(
            said.contains("its point history was ended")
                && said.contains("points given up: p1, p2"),
            "{said}"
        );
        assert_eq!(ids(&store), ["p3"]);
        assert_eq!(
            std::fs::read(store.image()).unwrap(),
            std::fs::read(&src).unwrap()
        );
        assert_eq!(store.verify(None).unwrap(), [("p3".to_string(), true)]);

        std::fs::write(&src, vec![b'd'; 3 * BLOCK]).unwrap();
        store
            .apply_until(&mut &stream_of(&src, &store)[..], point("p4"), true)
            .unwrap();
        assert_eq!(ids(&store), ["p3"], "not given up before it is recorded");
        let (_, note) = store.base_manifest(false, false).unwrap();
        // Whoever completes it says what it gave up.
        let note = note.unwrap_or_default();
        assert!(
            note.contains("an interrupted update was completed: point p4")
                && note.contains("its point history was ended")
                && note.contains("points given up: p3"),
            "{note}"
        );
        assert_eq!(ids(&store), ["p4"]);
        let ended = meta::read_ended(&store.dir).unwrap();
        assert_eq!(ended.points, ["p3"]);
        assert_eq!(
            std::fs::read(store.image()).unwrap(),
            std::fs::read(&src).unwrap()
        );
        assert_eq!(store.verify(None).unwrap(), [("p4".to_string(), true)]);
    }

    /// A copy whose points are of another source (the inventory gives it to another disk) is
    /// refused untouched before anything is read, saying both and what to do, whatever the
    /// new point's read (a history is never ended for it); its own source goes on.
    #[test]
    fn a_copy_of_another_source_is_refused_untouched() {
        let (dir, src, store) = copy_of(&[("p1", b'a')], 3);
        let before = std::fs::read(store.image()).unwrap();
        let other = dir.path().join("other.img");
        std::fs::write(&other, vec![b'z'; 3 * BLOCK]).unwrap();
        for new in [point("p2"), read_as("p2", ReadMode::Scan)] {
            let new = NewPoint {
                source: "hv-main:/other.img".into(),
                ..new
            };
            let e = store
                .apply(&mut &stream_of(&other, &store)[..], new)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("its points are of src (the newest, p1)")
                    && e.contains("this replication reads hv-main:/other.img")
                    && e.contains("nothing was written"),
                "{e}"
            );
            assert_eq!(std::fs::read(store.image()).unwrap(), before);
            let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
            assert_eq!(ids, ["p1"]);
        }
        std::fs::write(&src, vec![b'b'; 3 * BLOCK]).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p2"))
            .unwrap();
        assert_eq!(store.points().unwrap().len(), 2);
        // As it says: its history moved aside and the copy taken as it is, the copy follows
        // the new source, which sends only the blocks that differ from the copy as it is.
        std::fs::rename(
            dir.path().join("dst.img.reprise"),
            dir.path().join("dst.img.reprise.old"),
        )
        .unwrap();
        let mut data = vec![b'z'; 3 * BLOCK];
        data[..BLOCK].fill(b'b');
        std::fs::write(&other, data).unwrap();
        assert!(store.accept_changes().unwrap().is_some());
        let stream = stream_of(&other, &store);
        let applied = store
            .apply(
                &mut &stream[..],
                NewPoint {
                    source: "hv-main:/other.img".into(),
                    ..point("p3")
                },
            )
            .unwrap();
        assert_eq!(applied.blocks, 2);
        assert_eq!(
            std::fs::read(store.image()).unwrap(),
            std::fs::read(&other).unwrap()
        );
    }

    /// A file at a copy's path that reprise neither made nor made a point of (another vm's
    /// stopped disk on the recovery host, a file put there by hand) is never written over:
    /// refused untouched by the manifest and by the update, and said by `inspect`, until
    /// the operator takes it as a copy as it now is (`reprise release`); changed since, it is
    /// refused again. A copy reprise made whose first point a crash kept from being recorded
    /// is reprise's own.
    #[test]
    fn a_file_reprise_did_not_make_at_a_copy_s_path_is_never_written_over_unless_taken() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        std::fs::write(&src, vec![b'a'; 3 * BLOCK]).unwrap();
        let store = Store::new(&dir.path().join("dst.img"));
        let theirs = vec![b'z'; 3 * BLOCK];
        std::fs::write(store.image(), &theirs).unwrap();
        // A whole stream, as a source sends for a new copy.
        let whole = stream_of(&src, &Store::new(&dir.path().join("none.img")));
        let manifest_err = store.base_manifest(false, false).unwrap_err().to_string();
        let apply_err = store
            .apply(&mut &whole[..], point("p1"))
            .unwrap_err()
            .to_string();
        for e in [&manifest_err, &apply_err] {
            assert!(
                e.contains("a file is at the copy's path")
                    && e.contains("another vm's disk")
                    && e.contains("nothing was written")
                    && e.contains("`reprise release NAME`"),
                "{e}"
            );
        }
        assert_eq!(std::fs::read(store.image()).unwrap(), theirs);
        assert!(store.points().unwrap().is_empty());
        let state = store.inspect();
        assert!(state.foreign.is_some());
        let refusal = crate::replica::choice::replication_refusal(&state, "erp-db", false);
        assert!(refusal.is_some_and(|r| r.contains("a file is at the copy's path")));
        // A failback's copy back writes over its primary's own disk, judged before.
        store.base_manifest(false, true).unwrap();
        // Taken as it is, then written: refused again, saying so.
        let said = store.accept_changes().unwrap().unwrap();
        assert!(said.contains("taken as a copy made by hand"), "{said}");
        assert_eq!(store.inspect().foreign, None);
        scribble(store.image(), 0, 16, b'y');
        let e = store.base_manifest(false, false).unwrap_err().to_string();
        assert!(
            e.contains("taken as a copy made by hand") && e.contains("changed since"),
            "{e}"
        );
        // Taken again as it now is: updated in place, only what differs is sent.
        store.accept_changes().unwrap();
        let applied = store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        assert_eq!(applied.blocks, 3);
        assert_eq!(
            std::fs::read(store.image()).unwrap(),
            std::fs::read(&src).unwrap()
        );
        assert_eq!(store.inspect().foreign, None);
        // A first copy whose point a crash kept from being recorded (its file put in place,
        // nothing else written yet): reprise's own, by its mark.
        let (_d, _src, made) = copy_of(&[("p1", b'a')], 2);
        for name in ["points.json", "points.json.prev", "manifest", "stamp"] {
            let _ = std::fs::remove_file(made.path(name));
        }
        assert!(!meta::has_history(made.meta_dir()));
        assert_eq!(made.inspect().foreign, None);
        made.base_manifest(false, false).unwrap();
        // Its mark names that very file: one put at the path after the first copy was thrown
        // away (a crash before its rename) is not reprise's, whatever the mark.
        let put_by_hand = vec![b'h'; 2 * BLOCK];
        // Made while the first is still there, so that it cannot get its inode back.
        let by_hand = made.image().with_extension("by-hand");
        std::fs::write(&by_hand, &put_by_hand).unwrap();
        std::fs::rename(&by_hand, made.image()).unwrap();
        assert!(made.inspect().foreign.is_some());
        let e = made.base_manifest(false, false).unwrap_err().to_string();
        assert!(e.contains("a file is at the copy's path"), "{e}");
        assert_eq!(std::fs::read(made.image()).unwrap(), put_by_hand);
        // A mark of an earlier version names no file: taken as it is.
        meta::write_file(made.meta_dir(), meta::MADE, b"p1", false).unwrap();
        assert_eq!(made.inspect().foreign, None);
    }

    /// A bitmap a check found missing writes stays distrusted through every point whose read
    /// made no check (its bitmap unreadable, a checkpoint made anew, a runbook step's read),
    /// and is trusted again only by a check that found none.
    #[test]
    fn a_bitmap_found_missing_writes_stays_distrusted_until_a_check_finds_none() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let store = Store::new(&dir.path().join("dst.img"));
        // Each update rewrites block 2; `said` is the source's word on its check, if any.
        let update = |id: &str, byte: u8, said: Option<(u64, u64)>| {
            let mut data = vec![b'a'; 3 * BLOCK];
            data[2 * BLOCK..].fill(byte);
            std::fs::write(&src, data).unwrap();
            let mut stream = stream_of(&src, &store);
            if let Some((count, first)) = said {
                stream = said_unmarked(stream, count, first);
            }
            store
                .apply(&mut &stream[..], read_as(id, ReadMode::Scan))
                .unwrap();
            let p = store.points().unwrap().pop().unwrap();
            assert_eq!(p.id, id);
            p.read.and_then(|r| r.missed)
        };
        assert_eq!(update("p1", b'a', None), None);
        assert_eq!(update("p2", b'b', Some((1, 2))), Some(1));
        // No check made: still distrusted, twice over.
        assert_eq!(update("p3", b'c', None), Some(1));
        assert_eq!(update("p4", b'd', None), Some(1));
        // A check that found none trusts the bitmap again; then nothing is carried.
        assert_eq!(update("p5", b'e', Some((0, 0))), None);
        assert_eq!(update("p6", b'f', None), None);
        // Nor does the end of the copy's history end it: its first point after keeps it.
        assert_eq!(update("p7", b'g', Some((1, 2))), Some(1));
        let mut copy = std::fs::read(dir.path().join("dst.img")).unwrap();
        copy[0] = b'z';
        std::fs::write(dir.path().join("dst.img"), copy).unwrap();
        store.accept_changes().unwrap();
        assert_eq!(update("p8", b'h', None), Some(1));
        let points: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(points, ["p8"], "its history ended");
        // Nor do points of the image file between (`changed_blocks` off, then on again): read
        // whole with no bitmap, they check none, and their history's end keeps what the one
        // before it said.
        for id in ["p9", "p10"] {
            std::fs::write(&src, vec![id.len() as u8; 3 * BLOCK]).unwrap();
            store
                .apply(&mut &stream_of(&src, &store)[..], point(id))
                .unwrap();
        }
        assert_eq!(update("p11", b'i', None), Some(1));
        assert_eq!(update("p12", b'j', Some((0, 0))), None);
    }

    /// A copy at point `p1` (blocks of byte `a`) whose update to `p2` (byte `b`) stopped, as a
    /// crash would, right after its commit record; and the bytes of `p1`.
    fn stopped_at_commit(a: u8, b: u8) -> (tempfile::TempDir, Store, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![a; 3 * BLOCK]).unwrap();
        let store = Store::new(&dst);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let v1 = std::fs::read(&dst).unwrap();
        std::fs::write(&src, vec![b; 3 * BLOCK]).unwrap();
        store
            .apply_until(&mut &stream_of(&src, &store)[..], point("p2"), true)
            .unwrap();
        (dir, store, v1)
    }

    /// The stream the source helper sends for `src` against `store`'s manifest.
    fn stream_of(src: &Path, store: &Store) -> Vec<u8> {
        let (m, _) = store.base_manifest(false, false).unwrap();
        let mut out = Vec::new();
        crate::replica::helper::send(src, &m, &mut out, false).unwrap();
        out
    }

    /// A lease of vm erp-db's copy by `run`, at point `point`.
    fn lease_of(kind: LeaseKind, run: &str, point: &str) -> Lease {
        Lease {
            kind,
            run: run.into(),
            vm: "erp-db".into(),
            step: "erp-db/start".into(),
            machine: "m".into(),
            pid: 1,
            at: Utc::now(),
            point: Some(point.into()),
            taken_at: None,
            written_until: None,
            verified: true,
        }
    }

    /// When the point of the update committed and not completed in `store` was taken.
    fn committed_at(store: &Store) -> DateTime<Utc> {
        let journal = read_journal(&store.path("journal")).unwrap();
        journal.commit.unwrap().point.taken_at
    }

    /// A copy whose points `points` (id, byte) are of a source of `blocks` blocks, each all
    /// that byte: the folder, the source's path and the copy's store.
    fn copy_of(points: &[(&str, u8)], blocks: usize) -> (tempfile::TempDir, PathBuf, Store) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let store = Store::new(&dir.path().join("dst.img"));
        for &(id, byte) in points {
            std::fs::write(&src, vec![byte; blocks * BLOCK]).unwrap();
            store
                .apply(&mut &stream_of(&src, &store)[..], point(id))
                .unwrap();
        }
        (dir, src, store)
    }

    /// The manifest file as it should be for the mirror as it is: the header, then the tree
    /// of its block hashes.
    fn expected_manifest(dst: &Path) -> Vec<u8> {
        let m = Manifest::of_file(dst).unwrap();
        assert_eq!(
            m.whole,
            *blake3::hash(&std::fs::read(dst).unwrap()).as_bytes()
        );
        let mut out = nodes::header(MANIFEST_MAGIC, m.size, &m.whole).to_vec();
        out.extend_from_slice(tree::of(m.cvs).as_flattened());
        out
    }

    /// Writes `byte` over `len` bytes of `path` at `at`.
    fn scribble(path: &Path, at: u64, len: usize, byte: u8) {
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .write_all_at(&vec![byte; len], at)
            .unwrap();
    }

    /// The writes an apply makes to a manifest in place (the header twice and each run of
    /// nodes), and what it returned.
    fn counting_writes<T>(f: impl FnOnce() -> T) -> (usize, T) {
        const MANY: usize = 1 << 20;
        WRITES_LEFT.with(|w| w.set(Some(MANY)));
        let out = f();
        let left = WRITES_LEFT.with(|w| w.replace(None)).unwrap();
        (MANY - left, out)
    }

    /// Runs of consecutive 32-byte nodes that differ between two manifests of one length.
    fn runs_differing(a: &[u8], b: &[u8]) -> usize {
        assert_eq!(a.len(), b.len());
        let differ: Vec<bool> = a[56..]
            .chunks(32)
            .zip(b[56..].chunks(32))
            .map(|(x, y)| x != y)
            .collect();
        differ
            .iter()
            .enumerate()
            .filter(|(i, d)| **d && (*i == 0 || !differ[i - 1]))
            .count()
    }

    #[test]
    fn an_update_writes_only_the_nodes_above_its_blocks_in_place() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        let mut data: Vec<u8> = (0..37 * BLOCK + 100)
            .map(|i| (i * 7 + i / 999) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let manifest = store.path("manifest");
        let before = std::fs::read(&manifest).unwrap();
        assert!(
            before == expected_manifest(&dst),
            "the first point's manifest"
        );
        let inode = std::fs::metadata(&manifest).unwrap().ino();
        // Three blocks change: only the nodes above them are written, in place.
        for b in [3, 4, 20] {
            data[b * BLOCK + 11] ^= 0x5a;
        }
        std::fs::write(&src, &data).unwrap();
        let stream = stream_of(&src, &store);
        let (writes, applied) = counting_writes(|| store.apply(&mut &stream[..], point("p2")));
        assert_eq!(applied.unwrap().blocks, 3);
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        let after = std::fs::read(&manifest).unwrap();
        assert!(
            after == expected_manifest(&dst),
            "the manifest is not the mirror's"
        );
        assert_eq!(
            std::fs::metadata(&manifest).unwrap().ino(),
            inode,
            "not in place"
        );
        // The two headers, and each run of the nodes that changed: no other node.
        let runs = runs_differing(&before, &after);
        assert!(runs >= 3, "{runs}");
        assert_eq!(writes, 2 + runs);
        // Its digest is read from its header.
        assert_eq!(
            store.base_digest(false, false).unwrap(),
            Manifest::of_file(&dst).unwrap().digest()
        );
        // The image grows: the tree changes shape, the manifest is written whole.
        data.extend((0..5 * BLOCK).map(|i| (i % 13) as u8));
        std::fs::write(&src, &data).unwrap();
        let stream = stream_of(&src, &store);
        let (writes, applied) = counting_writes(|| store.apply(&mut &stream[..], point("p3")));
        applied.unwrap();
        assert_eq!(writes, 0);
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        assert!(std::fs::read(&manifest).unwrap() == expected_manifest(&dst));
        // And shrinks.
        data.truncate(30 * BLOCK - 7);
        data[2 * BLOCK] ^= 1;
        std::fs::write(&src, &data).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p4"))
            .unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        assert!(std::fs::read(&manifest).unwrap() == expected_manifest(&dst));
        assert!(store.verify(None).unwrap().iter().all(|(_, good)| *good));
    }

    #[test]
    fn a_manifest_write_cut_anywhere_is_done_again_by_the_next_run() {
        let v1: Vec<u8> = (0..61 * BLOCK + 5)
            .map(|i| (i * 3 + i / 777) as u8)
            .collect();
        let mut v2 = v1.clone();
        for b in [0, 1, 2, 17, 33, 60] {
            v2[b * BLOCK + 9] ^= 0xa5;
        }
        let mut v3 = v2.clone();
        v3[40 * BLOCK] ^= 0x11;
        // One store with its first point, and the stream of the update to v2.
        let setup = || {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src.img");
            let dst = dir.path().join("dst.img");
            let store = Store::new(&dst);
            std::fs::write(&src, &v1).unwrap();
            store
                .apply(&mut &stream_of(&src, &store)[..], point("p1"))
                .unwrap();
            std::fs::write(&src, &v2).unwrap();
            let stream = stream_of(&src, &store);
            (dir, src, dst, store, stream)
        };
        let (_dir, _, dst, store, stream) = setup();
        let before = std::fs::read(store.path("manifest")).unwrap();
        let (writes, applied) = counting_writes(|| store.apply(&mut &stream[..], point("p2")));
        applied.unwrap();
        let after = std::fs::read(store.path("manifest")).unwrap();
        assert!(after == expected_manifest(&dst));
        let touched: Vec<usize> = (0..(after.len() - 56) / 32)
            .filter(|i| before[56 + 32 * i..88 + 32 * i] != after[56 + 32 * i..88 + 32 * i])
            .collect();
        assert!(writes > 3, "{writes}");
        // Cut after each write; every other time the nodes the update writes are also left
        // torn (garbage): the next run writes them all again.
        for (k, torn) in (0..writes).flat_map(|k| [(k, false), (k, true)]) {
            let (_dir, src, dst, store, stream) = setup();
            WRITES_LEFT.with(|w| w.set(Some(k)));
            let cut = store.apply(&mut &stream[..], point("p2"));
            WRITES_LEFT.with(|w| w.set(None));
            let err = cut.unwrap_err().to_string();
            assert!(err.contains("as a crash would"), "{err}");
            assert!(store.path("journal").exists(), "cut after {k} writes");
            let manifest = store.path("manifest");
            if torn {
                for &i in &touched {
                    scribble(&manifest, 56 + 32 * i as u64, 32, 0xee);
                }
            }
            // Cut after its header was marked, it is not trusted without the journal settled.
            if k > 0 {
                assert!(store.open_tree(&[MANIFEST_MAGIC]).unwrap().is_none(), "{k}");
            }
            assert_eq!(store.trusted_header().unwrap(), None, "{k}");
            let (m, note) = store.base_manifest(false, false).unwrap();
            assert!(note.unwrap().contains("completed"), "{k}");
            assert_eq!(std::fs::read(&dst).unwrap(), v2, "{k}");
            assert!(
                std::fs::read(&manifest).unwrap() == expected_manifest(&dst),
                "{k} {torn}"
            );
            assert_eq!(m, Manifest::of_file(&dst).unwrap(), "{k}");
            for (id, want) in [("p1", &v1), ("p2", &v2)] {
                let out = dst.with_extension(id);
                store.restore(id, &out).unwrap();
                assert!(&std::fs::read(&out).unwrap() == want, "{k}: point {id}");
            }
            // The next update goes on from it.
            std::fs::write(&src, &v3).unwrap();
            store
                .apply(&mut &stream_of(&src, &store)[..], point("p3"))
                .unwrap();
            assert_eq!(std::fs::read(&dst).unwrap(), v3, "{k}");
            assert!(std::fs::read(&manifest).unwrap() == expected_manifest(&dst));
        }
        // A committed update whose manifest is damaged or gone before its roll-forward: the
        // mirror, once written, is hashed again.
        for damage in ["garbage", "deleted", "node"] {
            let (_dir, _, dst, store, stream) = setup();
            store
                .apply_until(&mut &stream[..], point("p2"), true)
                .unwrap();
            let manifest = store.path("manifest");
            match damage {
                "garbage" => std::fs::write(&manifest, b"garbage").unwrap(),
                "deleted" => std::fs::remove_file(&manifest).unwrap(),
                // Node 9 above the leaves (blocks 18 and 19, of 62), which the update
                // reads but does not write.
                _ => scribble(&manifest, 56 + 32 * (62 + 9), 32, 0),
            }
            let (_, note) = store.base_manifest(false, false).unwrap();
            assert!(note.unwrap().contains("completed"), "{damage}");
            assert_eq!(std::fs::read(&dst).unwrap(), v2, "{damage}");
            assert!(
                std::fs::read(&manifest).unwrap() == expected_manifest(&dst),
                "{damage}"
            );
        }
    }

    #[test]
    fn a_manifest_of_the_older_flat_layout_is_used_then_rewritten_as_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        let mut data: Vec<u8> = (0..20 * BLOCK).map(|i| (i * 5 + i / 333) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let v1 = data.clone();
        let manifest = store.path("manifest");
        for (round, damaged) in [(2, false), (3, true)] {
            // As an earlier version left it: the flat manifest, its stamp unchanged.
            let mut flat = Manifest::of_file(&dst).unwrap();
            let digest = flat.digest();
            if damaged {
                flat.cvs[7] = [0; 32];
            }
            std::fs::write(&manifest, flat.encode()).unwrap();
            if !damaged {
                // Its digest is read from its header, as before.
                assert_eq!(
                    store.trusted_header().unwrap(),
                    Some((flat.size, flat.whole))
                );
                assert_eq!(store.base_digest(false, false).unwrap(), digest);
            }
            data[(round * 3) * BLOCK + 1] ^= 0x77;
            std::fs::write(&src, &data).unwrap();
            let stream = stream_of(&src, &store);
            let applied = store
                .apply(&mut &stream[..], point(&format!("p{round}")))
                .unwrap();
            // A flat manifest whose leaves do not give its whole hash is not used: the
            // mirror is hashed again (trusted, its wrong leaf would have made the source send
            // that block too).
            assert_eq!(applied.blocks, 1, "{round}");
            assert_eq!(std::fs::read(&dst).unwrap(), data, "{round}");
            assert!(
                std::fs::read(&manifest).unwrap() == expected_manifest(&dst),
                "{round}"
            );
        }
        let out = dir.path().join("p1.out");
        store.restore("p1", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), v1);
        assert!(store.verify(None).unwrap().iter().all(|(_, good)| *good));
    }

    #[test]
    fn a_damaged_inner_node_of_the_manifest_is_made_anew_from_its_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        let mut data: Vec<u8> = (0..38 * BLOCK).map(|i| (i * 11 + i / 555) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        // Node 9 of the level above the leaves (blocks 18 and 19) rots; block 16 changes, and
        // the node above it is made of node 8 (computed again) and node 9 (read).
        scribble(&store.path("manifest"), 56 + 32 * (38 + 9), 32, 0x42);
        data[16 * BLOCK] ^= 1;
        std::fs::write(&src, &data).unwrap();
        let applied = store
            .apply(&mut &stream_of(&src, &store)[..], point("p2"))
            .unwrap();
        assert_eq!(applied.blocks, 1);
        assert_eq!(std::fs::read(&dst).unwrap(), data);
        assert!(std::fs::read(store.path("manifest")).unwrap() == expected_manifest(&dst));
    }

    /// A point marked unusable is bad, says why, and stays bad when its data reads whole;
    /// the others keep their verdicts.
    #[test]
    fn a_point_marked_unusable_stays_bad_whatever_a_verification_finds() {
        let (_dir, src, store) = copy_of(&[("p1", 1), ("p2", 2)], 3);
        let marked = store.mark_unusable("p2", "torn").unwrap();
        assert_eq!(
            (
                marked.id.as_str(),
                marked.verified,
                marked.unusable.as_deref()
            ),
            ("p2", Verified::Bad, Some("torn"))
        );
        let checked = store.verify(None).unwrap();
        assert_eq!(
            checked,
            [("p1".to_string(), true), ("p2".to_string(), false)]
        );
        let points = store.points().unwrap();
        assert_eq!(points[0].verified, Verified::Yes);
        assert_eq!(
            (points[1].verified, points[1].unusable.as_deref()),
            (Verified::Bad, Some("torn"))
        );
        assert!(store.mark_unusable("p9", "torn").is_err(), "no such point");
        // Marked, then the points file damaged at once: its previous generation, which is
        // read instead, has the mark too.
        std::fs::write(&src, vec![3u8; 3 * BLOCK]).unwrap();
        let (m, _) = store.base_manifest(false, false).unwrap();
        let mut out = Vec::new();
        crate::replica::helper::send(&src, &m, &mut out, false).unwrap();
        store.apply(&mut &out[..], point("p3")).unwrap();
        store.mark_unusable("p3", "torn again").unwrap();
        std::fs::write(store.path("points.json"), b"{ torn").unwrap();
        let points = store.points().unwrap();
        assert_eq!(
            (
                points[2].id.as_str(),
                points[2].verified,
                points[2].unusable.as_deref()
            ),
            ("p3", Verified::Bad, Some("torn again"))
        );
        assert_eq!(
            store.verify(Some("p3")).unwrap(),
            [("p3".to_string(), false)]
        );
    }

    /// Whatever changes a history (a verification that finds a point bad, a roll-back that
    /// drops the newer points and their deltas), a points file damaged right after falls back
    /// on a previous generation that has the change too: never a bad point as good, nor a
    /// dropped one back.
    #[test]
    fn a_damaged_points_file_never_brings_back_a_history_the_copy_has_left() {
        let (_dir, _src, store) = copy_of(&[("p1", 1), ("p2", 2), ("p3", 3)], 3);
        let damage = || std::fs::write(store.path("points.json"), b"{ torn").unwrap();
        let said = |store: &Store| -> Vec<(String, Verified)> {
            let points = store.points().unwrap();
            points.into_iter().map(|p| (p.id, p.verified)).collect()
        };
        // p1's delta lost: a verification finds it bad.
        std::fs::remove_file(store.path("deltas/p1.rdelta")).unwrap();
        let checked = store.verify(None).unwrap();
        assert_eq!(checked[0], ("p1".to_string(), false));
        damage();
        assert_eq!(
            said(&store),
            [
                ("p1".into(), Verified::Bad),
                ("p2".into(), Verified::Yes),
                ("p3".into(), Verified::Yes)
            ]
        );
        // Rolled back to p2: p3 is gone, with its delta.
        store.roll_back("p2").unwrap();
        damage();
        assert_eq!(
            said(&store),
            [("p1".into(), Verified::Bad), ("p2".into(), Verified::Yes)]
        );
    }

    /// A copy written while it is read again (a vm running on it, another program) is not
    /// vouched for: neither its point nor its manifest records what was read, even when the
    /// bytes written are the ones that were there (its hash then matches).
    #[test]
    fn a_copy_written_while_it_is_read_again_is_not_vouched_for() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        // Long enough to read (tens of milliseconds) for writes to land during it.
        std::fs::write(&src, vec![7u8; 96 << 20]).unwrap();
        let store = Store::new(&dst);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let before = std::fs::read(store.path("points.json")).unwrap();
        // Something writes the copy all through its read.
        let e = blocks::written_all_through(&dst, || store.verify(None)).unwrap_err();
        assert!(e.to_string().contains("written while it was read"), "{e}");
        assert_eq!(std::fs::read(store.path("points.json")).unwrap(), before);
        // Once nothing writes it, it is read again and found whole.
        assert_eq!(store.verify(None).unwrap(), [("p1".to_string(), true)]);
        // Nor is a manifest made of it for an update (which then ends its history: the copy
        // was written behind its point). Written before the update looks at it, it is found
        // changed since its point; written while it is read, it is found so.
        let e = blocks::written_all_through(&dst, || store.base_manifest(true, false)).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("written while it was read") || e.contains("changed since its newest point"),
            "{e}"
        );
    }

    /// A roll-back that renamed the older point over the copy and was cut there, the copy
    /// then written (a vm started on it by hand): whoever completes the roll-back records the
    /// copy as the roll-back made it, so the write shows as a change behind the point.
    #[test]
    fn a_roll_back_completed_later_does_not_vouch_for_writes_made_since() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        for (id, byte) in [("p1", 1u8), ("p2", 2u8)] {
            std::fs::write(&src, vec![byte; 4 * BLOCK]).unwrap();
            store
                .apply(&mut &stream_of(&src, &store)[..], point(id))
                .unwrap();
        }
        // The first try: p1 written beside the copy, the intent, the rename; then cut.
        let tmp = store.path("rollback.img");
        store.restore("p1", &tmp).unwrap();
        let intent = RollBackIntent {
            point: "p1".into(),
            stamp: Some(stamp_of(&std::fs::metadata(&tmp).unwrap())),
        };
        std::fs::write(
            store.path("rollback.json"),
            serde_json::to_vec(&intent).unwrap(),
        )
        .unwrap();
        std::fs::rename(&tmp, &dst).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let f = OpenOptions::new().write(true).open(&dst).unwrap();
        f.write_all_at(b"by hand", 0).unwrap();
        drop(f);
        // Completed by the next use of the copy.
        store.settle().unwrap();
        let points = store.points().unwrap();
        assert_eq!(
            points.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["p1"]
        );
        let why = store.changed_since(&points).unwrap_or_default();
        assert!(why.contains("changed since its newest point p1"), "{why:?}");

        // Cut before the rename, then a vm run on the copy by hand (and stopped): the
        // roll-back is thrown away, never put in place over what it wrote, which stays.
        store.accept_changes().unwrap();
        for (id, byte) in [("p3", 3u8), ("p4", 4u8)] {
            std::fs::write(&src, vec![byte; 4 * BLOCK]).unwrap();
            store
                .apply(&mut &stream_of(&src, &store)[..], point(id))
                .unwrap();
        }
        store.restore("p3", &tmp).unwrap();
        let intent = RollBackIntent {
            point: "p3".into(),
            stamp: Some(stamp_of(&std::fs::metadata(&tmp).unwrap())),
        };
        std::fs::write(
            store.path("rollback.json"),
            serde_json::to_vec(&intent).unwrap(),
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let f = OpenOptions::new().write(true).open(&dst).unwrap();
        f.write_all_at(b"ran by hand", BLOCK as u64).unwrap();
        drop(f);
        let written = std::fs::read(&dst).unwrap();
        let note = store.settle().unwrap().unwrap_or_default();
        assert!(
            note.contains("a roll-back to point p3 that was cut before it put the rebuilt copy in place was thrown away"),
            "{note}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), written);
        assert!(!tmp.exists() && !store.path("rollback.json").exists());
        let points = store.points().unwrap();
        assert_eq!(points.last().unwrap().id, "p4");
        assert!(store.inspect().written_outside().is_some());
    }

    /// A write that lands right after the copy was read whole again is not vouched for by
    /// the stamp recorded of that read: the copy is then found changed since its newest point,
    /// and its next replication does not trust a manifest that lacks the write.
    #[test]
    fn a_write_right_after_the_copy_was_read_again_is_not_vouched_for() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let bytes: Vec<u8> = (0..8 * BLOCK).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &bytes).unwrap();
        let store = Store::new(&dst);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        // Past the file system's clock tick of the copy's last write.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let copy = dst.clone();
        AFTER_READ.with(|f| {
            f.set(Some(Box::new(move || {
                let f = OpenOptions::new().write(true).open(&copy).unwrap();
                f.write_all_at(&[9u8; 512], 3 * BLOCK as u64).unwrap();
            })))
        });
        // What was read is p1.
        assert_eq!(store.verify(None).unwrap(), [("p1".to_string(), true)]);
        let points = store.points().unwrap();
        let why = store.changed_since(&points).unwrap_or_default();
        assert!(why.contains("changed since its newest point p1"), "{why:?}");
        // A failover would not take the copy for p1, and the next replication refuses to
        // write over what was written in it.
        let e = store.base_manifest(false, false).unwrap_err();
        assert!(e.to_string().contains("changed since"), "{e}");
    }

    /// Points that are bad (here never confirmed) do not push the copy's last good point out
    /// by retention: it stays, and can be restored, until a good point is made after it.
    #[test]
    fn retention_never_takes_the_last_good_point_away() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let v1: Vec<u8> = (0..4 * BLOCK).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &v1).unwrap();
        let store = Store::new(&dst);
        let keep_2 = |id: &str, pending| NewPoint {
            retention: 2,
            pending,
            ..point(id)
        };
        store
            .apply(&mut &stream_of(&src, &store)[..], keep_2("p1", false))
            .unwrap();
        for (k, id) in ["p2", "p3", "p4"].into_iter().enumerate() {
            let mut v = v1.clone();
            v[k * BLOCK] ^= 0xff;
            std::fs::write(&src, &v).unwrap();
            store
                .apply(&mut &stream_of(&src, &store)[..], keep_2(id, true))
                .unwrap();
        }
        let ids = |s: &Store| {
            s.points()
                .unwrap()
                .into_iter()
                .map(|p| p.id)
                .collect::<Vec<_>>()
        };
        // p1, and the points after it whose deltas rebuild it.
        assert_eq!(ids(&store), ["p1", "p2", "p3", "p4"]);
        let out = dir.path().join("p1.img");
        store.restore("p1", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), v1);
        // A good point made after it: retention takes the rest as before.
        store
            .apply(&mut &stream_of(&src, &store)[..], keep_2("p5", false))
            .unwrap();
        assert_eq!(ids(&store), ["p4", "p5"]);
    }

    #[test]
    fn a_damaged_copy_is_rolled_back_to_an_older_good_point_and_replication_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        let replicate = |id: &str, content: &[u8]| {
            std::fs::write(&src, content).unwrap();
            let (m, _) = store.base_manifest(false, false).unwrap();
            let mut out = Vec::new();
            crate::replica::helper::send(&src, &m, &mut out, false).unwrap();
            let new = NewPoint {
                id: id.into(),
                taken_at: Utc::now(),
                source: "src".into(),
                retention: 5,
                definition: None,
                read: None,
                pending: false,
                overwrite_changed: false,
            };
            store.apply(&mut &out[..], new).unwrap();
        };
        let v1 = vec![1u8; 6 * BLOCK];
        let mut v2 = v1.clone();
        v2[..3 * BLOCK].fill(2);
        let v3 = vec![3u8; 6 * BLOCK];
        replicate("p1", &v1);
        replicate("p2", &v2);
        replicate("p3", &v3);

        // Written outside reprise (its times move: a vm run on it by hand): what was written
        // is in no point, and no roll-back replaces it until it is let go.
        let written = {
            use std::os::unix::fs::FileExt as _;
            let f = OpenOptions::new().write(true).open(&dst).unwrap();
            f.write_all_at(b"by hand", (5 * BLOCK) as u64).unwrap();
            f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
                .unwrap();
            std::fs::read(&dst).unwrap()
        };
        let e = store.roll_back("p2").unwrap_err().to_string();
        assert!(
            e.contains("rolling it back to point p2 would replace what was written")
                && e.contains("nothing was rolled back"),
            "{e}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), written);
        assert_eq!(store.points().unwrap().len(), 3);
        // Let go (`reprise release`), then put back as it was, the times kept: only rot.
        store.accept_changes().unwrap();
        {
            use std::os::unix::fs::FileExt as _;
            let mtime = std::fs::metadata(&dst).unwrap().modified().unwrap();
            let f = OpenOptions::new().write(true).open(&dst).unwrap();
            f.write_all_at(&v3[5 * BLOCK..5 * BLOCK + 7], (5 * BLOCK) as u64)
                .unwrap();
            f.set_modified(mtime).unwrap();
        }

        // The copy rots (its times kept); verification marks the newest point bad, the older
        // ones stay good.
        let mut rotten = std::fs::read(&dst).unwrap();
        rotten[5 * BLOCK + 7] ^= 0xff;
        {
            use std::os::unix::fs::FileExt as _;
            let mtime = std::fs::metadata(&dst).unwrap().modified().unwrap();
            let f = OpenOptions::new().write(true).open(&dst).unwrap();
            f.write_all_at(
                &rotten[5 * BLOCK + 7..5 * BLOCK + 8],
                (5 * BLOCK + 7) as u64,
            )
            .unwrap();
            f.set_modified(mtime).unwrap();
        }
        let checked = store.verify(None).unwrap();
        assert_eq!(
            checked,
            [
                ("p1".to_string(), true),
                ("p2".to_string(), true),
                ("p3".to_string(), false)
            ]
        );
        assert!(store.roll_back("p3").is_err(), "a bad point is never used");

        let done = store.roll_back("p2").unwrap();
        assert_eq!(done.dropped, ["p3"]);
        assert_eq!(std::fs::read(&dst).unwrap(), v2);
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p1", "p2"]);
        assert!(store.verify(None).unwrap().iter().all(|(_, good)| *good));
        let out = dir.path().join("p1.img");
        store.restore("p1", &out).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            v1,
            "older points still rebuild"
        );

        // Replication carries on from the rolled-back copy.
        replicate("p4", &v3);
        assert_eq!(std::fs::read(&dst).unwrap(), v3);

        // A roll-back cut after its intent was written is completed by the next use.
        store.restore("p2", &store.path("rollback.img")).unwrap();
        std::fs::write(store.path("rollback.json"), br#"{"point":"p2"}"#).unwrap();
        store.base_manifest(false, false).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), v2);
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p1", "p2"]);
        // One cut before its intent is thrown away: the copy was not touched.
        std::fs::write(store.path("rollback.img"), b"partial").unwrap();
        store.base_manifest(false, false).unwrap();
        assert!(!store.path("rollback.img").exists());
        assert_eq!(std::fs::read(&dst).unwrap(), v2);
    }

    /// A delta missing or cut short makes bad the points that need it (that point and the
    /// older ones), and verification goes on with the others.
    #[test]
    fn a_missing_delta_marks_bad_the_points_that_need_it_and_verification_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        for (id, byte) in [("p1", 1u8), ("p2", 2), ("p3", 3), ("p4", 4)] {
            std::fs::write(&src, vec![byte; 3 * BLOCK]).unwrap();
            store
                .apply(&mut &stream_of(&src, &store)[..], point(id))
                .unwrap();
        }
        let verdicts = |store: &Store| -> Vec<(String, Verified)> {
            store
                .points()
                .unwrap()
                .into_iter()
                .map(|p| (p.id, p.verified))
                .collect()
        };
        let v = |id: &str, good: bool| (id.to_string(), good);
        // Cut short: only the point that needs it is bad.
        let p1 = store.path("deltas/p1.rdelta");
        let len = std::fs::metadata(&p1).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&p1)
            .unwrap()
            .set_len(len - 100)
            .unwrap();
        assert_eq!(
            store.verify(None).unwrap(),
            [v("p1", false), v("p2", true), v("p3", true), v("p4", true)]
        );
        // Missing: p2 and p1, which is rebuilt through it, are bad.
        std::fs::remove_file(store.path("deltas/p2.rdelta")).unwrap();
        assert_eq!(
            store.verify(None).unwrap(),
            [v("p1", false), v("p2", false), v("p3", true), v("p4", true)]
        );
        assert_eq!(
            verdicts(&store),
            [
                ("p1".to_string(), Verified::Bad),
                ("p2".to_string(), Verified::Bad),
                ("p3".to_string(), Verified::Yes),
                ("p4".to_string(), Verified::Yes)
            ]
        );
        assert_eq!(store.verify(Some("p2")).unwrap(), [v("p2", false)]);
        let out = dir.path().join("p2.img");
        assert!(matches!(
            store.restore("p2", &out),
            Err(StoreError::Damaged { .. })
        ));
    }

    #[test]
    fn a_committed_update_cut_before_the_mirror_is_completed_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![1u8; 6 * BLOCK + 9]).unwrap();
        let store = Store::new(&dst);
        let stream = |store: &Store| stream_of(&src, store);
        store.apply(&mut &stream(&store)[..], point("p1")).unwrap();
        let v1 = std::fs::read(&dst).unwrap();
        std::fs::write(&src, vec![2u8; 4 * BLOCK]).unwrap();
        store
            .apply_until(&mut &stream(&store)[..], point("p2"), true)
            .unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), v1, "the mirror was touched");
        assert!(store.path("journal").exists());
        // The next run completes it before anything else.
        let (m, note) = store.base_manifest(false, false).unwrap();
        assert!(note.unwrap().contains("completed"));
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        assert_eq!(m, Manifest::of_file(&dst).unwrap());
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p1", "p2"]);
        let out = dir.path().join("p1.out");
        store.restore("p1", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), v1);
        assert!(store.verify(None).unwrap().iter().all(|(_, good)| *good));
    }

    /// An update committed and cut before it wrote the copy; then the copy is written outside
    /// reprise (a vm started on it by hand): completing the update would write over that and
    /// record a point that is not the copy. The update is thrown away, the copy left as it
    /// is (written outside reprise); written while received, refused at its commit.
    /// A roll-forward that had begun writing the copy is completed whatever its stamp says.
    #[test]
    fn a_committed_update_is_never_completed_over_what_was_written_after_it() {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![1u8; 6 * BLOCK]).unwrap();
        let store = Store::new(&dst);
        let stream = |store: &Store| stream_of(&src, store);
        store.apply(&mut &stream(&store)[..], point("p1")).unwrap();
        std::fs::write(&src, vec![2u8; 6 * BLOCK]).unwrap();
        store
            .apply_until(&mut &stream(&store)[..], point("p2"), true)
            .unwrap();
        let f = OpenOptions::new().write(true).open(&dst).unwrap();
        f.write_all_at(b"by hand", 5 * BLOCK as u64).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        let written = std::fs::read(&dst).unwrap();
        // Thrown away, the copy left as it is: it is written outside reprise since p1.
        let note = store.settle().unwrap().unwrap();
        assert!(
            note.contains("changed after a replication into it was committed")
                && note.contains("that update was thrown away"),
            "{note}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), written);
        assert!(!store.path("journal").exists() && !store.path("delta.pending").exists());
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p1"]);
        assert!(store.inspect().written_outside().is_some());
        let e = store.base_manifest(false, false).unwrap_err().to_string();
        assert!(e.contains("this replication would overwrite it"), "{e}");
        // Let go: replicated over.
        store.accept_changes().unwrap();
        store.apply(&mut &stream(&store)[..], point("p2")).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());

        // Written while the update was received (after its start found the copy fit):
        // refused at its commit, nothing written, the copy left as it is.
        std::fs::write(&src, vec![4u8; 6 * BLOCK]).unwrap();
        struct WrittenDuring<'a> {
            body: &'a [u8],
            dst: &'a Path,
            done: bool,
        }
        impl Read for WrittenDuring<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                // Once its header and some blocks were read: the update found the copy fit.
                if !self.done && self.body.len() < 2 * BLOCK {
                    self.done = true;
                    let f = OpenOptions::new().write(true).open(self.dst)?;
                    f.write_all_at(b"by hand", 0)?;
                    f.set_modified(
                        std::time::SystemTime::now() + std::time::Duration::from_secs(7),
                    )?;
                }
                self.body.read(buf)
            }
        }
        let body = stream(&store);
        let mut during = WrittenDuring {
            body: &body,
            dst: &dst,
            done: false,
        };
        let e = store
            .apply(&mut during, point("p4"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("that update was thrown away")
                && e.contains("this replication would overwrite it"),
            "{e}"
        );
        let mut hand = std::fs::read(&src).unwrap();
        hand.fill(2);
        hand[..7].copy_from_slice(b"by hand");
        assert_eq!(std::fs::read(&dst).unwrap(), hand);
        assert!(!store.path("journal").exists());

        // Cut while it wrote the copy: its own writes moved the stamp; completed.
        store.accept_changes().unwrap();
        std::fs::write(&src, vec![3u8; 6 * BLOCK]).unwrap();
        store
            .apply_until(&mut &stream(&store)[..], point("p3"), true)
            .unwrap();
        meta::write_file(&store.dir, ROLLING, b"p3", false).unwrap();
        let f = OpenOptions::new().write(true).open(&dst).unwrap();
        f.write_all_at(&[3u8; BLOCK], 0).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(9))
            .unwrap();
        assert!(store.settle().unwrap().unwrap().contains("completed"));
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        assert!(!store.path(ROLLING).exists());
        assert!(store.verify(None).unwrap().iter().all(|(_, good)| *good));
        // A marker of another update (left by a crash after its journal went) is none.
        meta::write_file(&store.dir, ROLLING, b"p0", false).unwrap();
        assert_eq!(store.settle().unwrap(), None);
        assert!(!store.path(ROLLING).exists());
    }

    /// An update cut while it wrote the copy, whose journal then lost its commit (damaged
    /// on disk), is said damaged: never thrown away as an update that did not touch the copy.
    #[test]
    fn a_journal_that_lost_its_commit_after_the_copy_was_written_is_said_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        let stream = |store: &Store| stream_of(&src, store);
        std::fs::write(&src, vec![1u8; 4 * BLOCK]).unwrap();
        store.apply(&mut &stream(&store)[..], point("p1")).unwrap();
        std::fs::write(&src, vec![2u8; 4 * BLOCK]).unwrap();
        store
            .apply_until(&mut &stream(&store)[..], point("p2"), true)
            .unwrap();
        let journal = store.path("journal");
        let whole = std::fs::read(&journal).unwrap();
        // Cut before its commit, the copy untouched: thrown away, as before.
        std::fs::write(&journal, &whole[..whole.len() - 1]).unwrap();
        assert!(
            store
                .settle()
                .unwrap()
                .unwrap()
                .contains("the mirror was not touched")
        );
        assert_eq!(std::fs::read(&dst).unwrap(), vec![1u8; 4 * BLOCK]);
        // Begun writing the copy (its marker), then the commit lost.
        store
            .apply_until(&mut &stream(&store)[..], point("p2"), true)
            .unwrap();
        let whole = std::fs::read(&journal).unwrap();
        meta::write_file(&store.dir, ROLLING, b"p2", false).unwrap();
        std::fs::write(&journal, &whole[..whole.len() - 1]).unwrap();
        let err = store.settle().unwrap_err().to_string();
        assert!(err.contains("was cut while it wrote the copy"), "{err}");
        assert!(journal.exists(), "the journal is kept");
        // A marker of an update recorded since (left by a crash after its journal went) is
        // none: the torn journal is of an update that never began writing.
        meta::write_file(&store.dir, ROLLING, b"p1", false).unwrap();
        assert!(
            store
                .settle()
                .unwrap()
                .unwrap()
                .contains("the mirror was not touched")
        );
    }

    #[test]
    fn a_roll_forward_cut_after_its_delta_was_moved_is_completed_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![3u8; 5 * BLOCK]).unwrap();
        let store = Store::new(&dst);
        let stream = |store: &Store| stream_of(&src, store);
        store.apply(&mut &stream(&store)[..], point("p1")).unwrap();
        let v1 = std::fs::read(&dst).unwrap();
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new().write(true).open(&src).unwrap(),
            &[4u8; 100],
            2 * BLOCK as u64 + 7,
        )
        .unwrap();
        store
            .apply_until(&mut &stream(&store)[..], point("p2"), true)
            .unwrap();
        // As a crash right after the first stage of the roll-forward leaves it.
        std::fs::rename(store.path("delta.pending"), store.path("deltas/p1.rdelta")).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), v1);
        let (_, note) = store.base_manifest(false, false).unwrap();
        assert!(note.unwrap().contains("completed"));
        assert!(!store.path("journal").exists());
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        let out = dir.path().join("p1.out");
        store.restore("p1", &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), v1);
        // The replaced block is all the delta holds.
        let delta = std::fs::metadata(store.path("deltas/p1.rdelta"))
            .unwrap()
            .len();
        assert!(delta < 2 * BLOCK as u64, "{delta}");
    }

    /// A committed update whose journal was damaged on the recovery host's disk before it was
    /// rolled forward (bit rot, a power cut that lost a page): the block read back is what the
    /// mirror gets and what its manifest says, the point is recorded unusable with why, and the
    /// next replication sends that block again and makes a good point. Never a point said
    /// verified that the copy is not.
    #[test]
    fn a_journal_damaged_after_its_commit_makes_an_unusable_point_and_the_next_one_mends_it() {
        let (dir, store, _v1) = stopped_at_commit(3, 4);
        let src = dir.path().join("src.img");
        let jpath = store.path("journal");
        let mut j = std::fs::read(&jpath).unwrap();
        // The first block's data: after the magic, its record's kind, index, hash and length.
        let at = JOURNAL_MAGIC.len() + 1 + 8 + 32 + 4 + 1;
        assert_eq!(j[at - 1], 0);
        j[at..at + 4096].fill(0);
        std::fs::write(&jpath, &j).unwrap();
        // Found begun (cut while it wrote the copy): the damage is said as such, not as a
        // write outside reprise.
        meta::write_file(&store.dir, ROLLING, b"p2", false).unwrap();
        let note = store.settle().unwrap().unwrap();
        assert!(
            note.contains("point p2 is UNUSABLE") && note.contains("the first block 0"),
            "{note}"
        );
        assert!(!note.contains("written outside reprise"), "{note}");
        assert!(store.inspect().written_outside().is_none());
        let p2 = store.points().unwrap().pop().unwrap();
        assert_eq!(p2.verified, Verified::Bad);
        assert!(
            p2.unusable
                .unwrap()
                .contains("damaged on the recovery host's disk")
        );
        // The manifest tells what the mirror holds, so the next update sends the block again.
        let real = Manifest::of_file(&store.image).unwrap();
        let (m, _) = store.base_manifest(false, false).unwrap();
        assert_eq!(m.whole, real.whole);
        let applied = store
            .apply(&mut &stream_of(&src, &store)[..], point("p3"))
            .unwrap();
        assert_eq!(applied.point.verified, Verified::Yes);
        assert!(applied.blocks >= 1, "the damaged block travels again");
        assert_eq!(
            std::fs::read(&store.image).unwrap(),
            std::fs::read(&src).unwrap()
        );
        assert_eq!(
            store.verify(Some("p3")).unwrap(),
            [("p3".to_string(), true)]
        );
        // Found committed and damaged by the next apply, which completes it first: that point
        // is recorded bad the same way.
        std::fs::write(&src, vec![5u8; 3 * BLOCK]).unwrap();
        store
            .apply_until(&mut &stream_of(&src, &store)[..], point("p4"), true)
            .unwrap();
        let mut j = std::fs::read(&jpath).unwrap();
        j[at..at + 4096].fill(0);
        std::fs::write(&jpath, &j).unwrap();
        // (The journal is rolled forward by the next command on the copy: an apply.)
        std::fs::write(&src, vec![6u8; 3 * BLOCK]).unwrap();
        let stream = {
            let mut out = Vec::new();
            let m = Manifest::of_file(&store.image).unwrap();
            crate::replica::helper::send(&src, &m, &mut out, false).unwrap();
            out
        };
        let _ = store.apply(&mut &stream[..], point("p5"));
        let points = store.points().unwrap();
        let p4 = points.iter().find(|p| p.id == "p4").unwrap();
        assert_eq!(p4.verified, Verified::Bad, "{points:?}");
    }

    #[test]
    fn a_committed_journal_that_names_a_block_beyond_its_image_is_refused_untouched() {
        let (_dir, store, v1) = stopped_at_commit(3, 4);
        let dst = store.image.clone();
        // The first record's block number, damaged on disk.
        let jpath = store.path("journal");
        let mut j = std::fs::read(&jpath).unwrap();
        assert_eq!(j[JOURNAL_MAGIC.len()], 1, "a block record comes first");
        let at = JOURNAL_MAGIC.len() + 1;
        j[at..at + 8].copy_from_slice(&1_000_000u64.to_le_bytes());
        std::fs::write(&jpath, &j).unwrap();
        let err = store.settle().unwrap_err().to_string();
        assert!(err.contains("beyond the 3 blocks"), "{err}");
        assert_eq!(std::fs::read(&dst).unwrap(), v1, "the mirror was touched");
        assert!(jpath.exists(), "the journal is kept to be looked at");
    }

    /// A committed journal whose block is damaged on disk into a hole of 4 GiB: it would wipe
    /// the blocks after it (their hashes, in the journal, would still agree); refused
    /// before anything is touched.
    #[test]
    fn a_committed_journal_that_holds_a_block_of_the_wrong_length_is_refused_untouched() {
        let (_dir, store, v1) = stopped_at_commit(3, 4);
        let dst = store.image.clone();
        let jpath = store.path("journal");
        let j = std::fs::read(&jpath).unwrap();
        let at = JOURNAL_MAGIC.len();
        assert_eq!(j[at], 1, "a block record comes first");
        let slot = at + 1 + 8 + 32;
        let len = u32::from_le_bytes(j[slot..slot + 4].try_into().unwrap()) as usize;
        let after = if j[slot + 4] == 1 {
            slot + 5
        } else {
            slot + 5 + len
        };
        let mut damaged = j[..slot].to_vec();
        damaged.extend_from_slice(&u32::MAX.to_le_bytes());
        damaged.push(1);
        damaged.extend_from_slice(&j[after..]);
        std::fs::write(&jpath, &damaged).unwrap();
        let err = store.settle().unwrap_err().to_string();
        assert!(
            err.contains("holds 4294967295 bytes for block") && err.contains("not touched"),
            "{err}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), v1, "the mirror was touched");
        assert!(jpath.exists(), "the journal is kept to be looked at");
    }

    /// What a refused update must leave as it was: the mirror, the points, the manifest.
    fn state_of(store: &Store) -> (Vec<u8>, Vec<String>, Vec<u8>) {
        (
            std::fs::read(&store.image).unwrap(),
            store.points().unwrap().into_iter().map(|p| p.id).collect(),
            std::fs::read(store.path("manifest")).unwrap(),
        )
    }

    #[test]
    fn a_new_point_that_is_not_after_the_newest_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![3u8; 3 * BLOCK]).unwrap();
        let store = Store::new(&dst);
        // Kept to the nanosecond: two points of one id are one vm point only when taken at
        // one time (`Point::same_point`).
        let first = NewPoint {
            taken_at: "2026-12-01T10:00:00.123456789Z".parse().unwrap(),
            ..point("20261201T100000Z")
        };
        store
            .apply(&mut &stream_of(&src, &store)[..], first.clone())
            .unwrap();
        assert_eq!(store.points().unwrap()[0].taken_at, first.taken_at);
        let before = state_of(&store);
        std::fs::write(&src, vec![4u8; 3 * BLOCK]).unwrap();
        // The same id again (two replications within one second): made the newest point
        // name the new data while it kept the old one's hash.
        let err = store
            .apply(&mut &stream_of(&src, &store)[..], point("20261201T100000Z"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already one of the copy's points"), "{err}");
        assert_eq!(state_of(&store), before);
        // Taken before the newest (the clock behind): a points file out of order is
        // damaged, and reading it ended the copy's history.
        let mut early = point("20261201T090000Z");
        early.taken_at = store.points().unwrap()[0].taken_at - chrono::Duration::hours(1);
        let err = store
            .apply(&mut &stream_of(&src, &store)[..], early)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the clock of the machine running reprise is behind"),
            "{err}"
        );
        assert_eq!(state_of(&store), before);
        // A name that would leave the folder of deltas.
        let err = store
            .apply(&mut &stream_of(&src, &store)[..], point("../../x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot name a point"), "{err}");
        assert_eq!(state_of(&store), before);
        // A later point goes through, and the first is still there to go back to.
        store
            .apply(&mut &stream_of(&src, &store)[..], point("20261201T100001Z"))
            .unwrap();
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["20261201T100000Z", "20261201T100001Z"]);
        let back = dir.path().join("back.img");
        store.restore("20261201T100000Z", &back).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), before.0);
    }

    #[test]
    fn a_committed_journal_whose_point_ids_cannot_name_a_file_is_not_rolled_forward() {
        let (dir, store, v1) = stopped_at_commit(3, 4);
        let dst = store.image.clone();
        // The commit record names the previous point `p1`: damaged into a path outside.
        let jpath = store.path("journal");
        let j = std::fs::read(&jpath).unwrap();
        let from = br#""prev":"p1""#;
        let at = j
            .windows(from.len())
            .position(|w| w == from)
            .expect("the commit record names the previous point");
        let mut j2 = j.clone();
        j2[at..at + from.len()].copy_from_slice(br#""prev":"/x""#);
        std::fs::write(&jpath, &j2).unwrap();
        store.settle().unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), v1, "the mirror was touched");
        assert!(!dir.path().join("x.rdelta").exists());
        assert!(!std::path::Path::new("/x.rdelta").exists());
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p1"]);
    }

    #[test]
    fn a_stream_that_keeps_a_last_block_whose_length_changed_is_refused() {
        // The copy's last block is short; the image grows, so that block is longer now. A
        // stream that does not send it again would make a point whose BLAKE3 counts the old
        // short block while the copy holds it padded with zeros.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let old: Vec<u8> = (0..BLOCK + 1000).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &old).unwrap();
        let store = Store::new(&dst);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let (base, _) = store.base_manifest(false, false).unwrap();
        let size = 3 * BLOCK as u64;
        let third = vec![7u8; BLOCK];
        // The whole hash the recovery side computes when block 1 is not sent: its own hash
        // of the short block, and the new third block.
        let whole = blocks::root(&[base.cvs[0], base.cvs[1], blocks::cv(2, &third)]).unwrap();
        let mut stream = Vec::new();
        wire::write_header(
            &mut stream,
            &wire::Header {
                base_size: base.size,
                base_whole: base.whole,
                size,
                origin: None,
            },
        )
        .unwrap();
        wire::write_data(&mut stream, 2, &third).unwrap();
        wire::write_end(&mut stream, &whole).unwrap();
        let result = store.apply(&mut &stream[..], point("p2"));
        let copy = std::fs::read(&dst).unwrap();
        assert!(copy == old, "the copy was changed: {result:?}");
        let err = result.unwrap_err().to_string();
        assert!(err.contains("block 1 is missing"), "{err}");
        let points = store.points().unwrap();
        assert_eq!(points.len(), 1, "{points:?}");
    }

    #[test]
    fn a_committed_update_whose_replaced_blocks_are_gone_leaves_the_mirror_alone() {
        let (dir, store, v1) = stopped_at_commit(7, 8);
        let (src, dst) = (dir.path().join("src.img"), store.image.clone());
        std::fs::remove_file(store.path("delta.pending")).unwrap();
        // A failover does not guess: settling it fails and says what is missing.
        let err = store.settle().unwrap_err().to_string();
        assert!(err.contains("neither here nor"), "{err}");
        assert_eq!(std::fs::read(&dst).unwrap(), v1, "the mirror was touched");
        // A replication ends the history instead (and says so), then makes a first point.
        let (_, note) = store.base_manifest(false, false).unwrap();
        let note = note.unwrap();
        assert!(
            note.contains("its point history was ended") && note.contains("neither here nor"),
            "{note}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), v1, "the mirror was touched");
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p3"))
            .unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p3"]);
    }

    #[test]
    fn a_mirror_changed_behind_its_manifest_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![4u8; 5 * BLOCK]).unwrap();
        let store = Store::new(&dst);
        let replicate = |id: &str| {
            let (m, _) = store.base_manifest(false, false).unwrap();
            let mut out = Vec::new();
            let sent = crate::replica::helper::send(&src, &m, &mut out, false).unwrap();
            store
                .apply(
                    &mut &out[..],
                    NewPoint {
                        id: id.into(),
                        taken_at: Utc::now(),
                        source: "src".into(),
                        retention: 5,
                        definition: None,
                        read: None,
                        pending: false,
                        overwrite_changed: false,
                    },
                )
                .unwrap();
            sent.blocks
        };
        replicate("p1");
        // A vm started on the copy writes to it.
        use std::os::unix::fs::FileExt as _;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&dst)
            .unwrap()
            .write_all_at(b"written by the vm", 3 * BLOCK as u64)
            .unwrap();
        // What it wrote is let go (`reprise release`): the next replication may overwrite it.
        store.accept_changes().unwrap();
        assert_eq!(replicate("p2"), 1);
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    }

    #[test]
    fn a_damaged_points_file_is_recovered_from_its_previous_generation_and_said() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        std::fs::write(&src, vec![1u8; 3 * BLOCK]).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        std::fs::write(&src, vec![2u8; 3 * BLOCK]).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p2"))
            .unwrap();
        // The newest point records what the copy is.
        let points = store.points().unwrap();
        assert_eq!(points[1].stamp, store.stamp());
        assert!(store.inspect().changed.is_none());
        // points.json is cut short: its previous generation (written by the same update,
        // before the duration was recorded) still has p2.
        let full = std::fs::read(store.path("points.json")).unwrap();
        std::fs::write(store.path("points.json"), &full[..full.len() / 2]).unwrap();
        let state = store.inspect();
        assert!(
            matches!(&state.points_from, Some(PointsSource::Previous { damage }) if damage.contains("damaged")),
            "{state:?}"
        );
        assert_eq!(state.points.last().unwrap().id, "p2");
        assert!(state.changed.is_none(), "the copy still is p2");
        // Any locked use rewrites it, and says so.
        let note = store.settle().unwrap().unwrap();
        assert!(note.contains("rewritten from points.json.prev"), "{note}");
        assert_eq!(store.inspect().points_from, Some(PointsSource::Current));
        // Both generations gone: nothing is guessed; a replication starts a new history.
        std::fs::write(store.path("points.json"), b"garbage").unwrap();
        std::fs::write(store.path("points.json.prev"), b"").unwrap();
        let state = store.inspect();
        assert!(
            state.points.is_empty() && state.damaged.is_some(),
            "{state:?}"
        );
        assert!(store.verify(None).is_err());
        std::fs::write(&src, vec![3u8; 3 * BLOCK]).unwrap();
        let applied = store
            .apply(&mut &stream_of(&src, &store)[..], point("p3"))
            .unwrap();
        assert!(
            applied
                .recovered
                .unwrap()
                .contains("its points cannot be read"),
            "said"
        );
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p3"]);
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    }

    #[test]
    fn a_copy_changed_behind_its_point_is_no_longer_that_point() {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        std::fs::write(&src, vec![1u8; 4 * BLOCK]).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        std::fs::write(&src, vec![2u8; 4 * BLOCK]).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p2"))
            .unwrap();
        // Touched but not changed: reading it again re-establishes the point.
        let f = OpenOptions::new().write(true).open(&dst).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
            .unwrap();
        assert!(store.inspect().changed.is_some());
        assert_eq!(
            store.verify(Some("p2")).unwrap(),
            [("p2".to_string(), true)]
        );
        assert!(store.inspect().changed.is_none());
        // Written to (a vm ran on it): the newest point is found bad, and the next
        // replication ends the history, sending only what differs.
        f.write_all_at(b"written by a vm", BLOCK as u64).unwrap();
        drop(f);
        assert!(
            store
                .inspect()
                .changed
                .unwrap()
                .contains("changed since its newest point p2")
        );
        assert_eq!(
            store.verify(Some("p2")).unwrap(),
            [("p2".to_string(), false)]
        );
        // What the vm wrote is in no point: a replication does not overwrite it unnoticed.
        let written = std::fs::read(&dst).unwrap();
        let refused = store.base_manifest(false, false).unwrap_err().to_string();
        assert!(
            refused.contains("changed since its newest point p2")
                && refused.contains("this replication would overwrite it: nothing was written")
                && refused.contains("`reprise release NAME`"),
            "{refused}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), written);
        // Let go by the operator (`reprise release`), as it is now: then it is overwritten.
        let let_go = store.accept_changes().unwrap();
        assert!(
            let_go
                .unwrap()
                .contains("changed since its newest point p2")
        );
        let (m, note) = store.base_manifest(false, false).unwrap();
        assert!(note.unwrap().contains("points given up: p1, p2"));
        let mut stream = Vec::new();
        let sent = crate::replica::helper::send(&src, &m, &mut stream, false).unwrap();
        assert_eq!(sent.blocks, 1);
        store.apply(&mut &stream[..], point("p3")).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p3"]);
        assert!(!store.path("deltas/p2.rdelta").exists());
    }

    /// A replication said torn after its update was committed but before it was completed
    /// (the roll-forward failed, or the orchestrator died): its point, not yet in the points
    /// file, is marked all the same, now if the update can be completed, else whenever it is.
    #[test]
    fn a_torn_replication_s_point_is_marked_even_before_its_update_is_completed() {
        let why = "its source's replicate-end said it may be torn: thawed";
        // Completed by the mark itself.
        let (_dir, store, _) = stopped_at_commit(3, 4);
        let taken_at = committed_at(&store);
        let ids = |store: &Store| -> Vec<String> {
            store.points().unwrap().into_iter().map(|p| p.id).collect()
        };
        assert_eq!(ids(&store), ["p1"], "not in the points file yet");
        let marked = store.mark_torn(taken_at, why).unwrap();
        assert_eq!(marked.len(), 1);
        let p2 = store.points().unwrap().pop().unwrap();
        assert_eq!(
            (p2.id.as_str(), p2.verified, p2.unusable.as_deref()),
            ("p2", Verified::Bad, Some(why))
        );
        assert_eq!(std::fs::read_dir(store.path("torn")).unwrap().count(), 0);
        // The update cannot be completed now (its copy is not a file for a while): the mark
        // is kept, and the update completed later records its point bad.
        let (dir, store, _) = stopped_at_commit(5, 6);
        let taken_at = committed_at(&store);
        let aside = dir.path().join("aside.img");
        std::fs::rename(&store.image, &aside).unwrap();
        std::fs::create_dir(&store.image).unwrap();
        let err = store.mark_torn(taken_at, why).unwrap_err().to_string();
        assert!(err.contains("the mark is kept"), "{err}");
        assert_eq!(std::fs::read_dir(store.path("torn")).unwrap().count(), 1);
        std::fs::remove_dir(&store.image).unwrap();
        std::fs::rename(&aside, &store.image).unwrap();
        let note = store.settle().unwrap().unwrap();
        assert!(
            note.contains("point p2 is UNUSABLE") && note.contains("thawed"),
            "{note}"
        );
        let p2 = store.points().unwrap().pop().unwrap();
        assert_eq!(
            (p2.verified, p2.unusable.as_deref()),
            (Verified::Bad, Some(why))
        );
        assert_eq!(std::fs::read_dir(store.path("torn")).unwrap().count(), 0);
        // A verification that finds it whole keeps it bad.
        assert_eq!(
            store.verify(Some("p2")).unwrap(),
            [("p2".to_string(), false)]
        );
        // The copy held by another process (its update still completing): the mark is kept
        // at once, and the point marked once the copy is free.
        let (_dir, store, _) = stopped_at_commit(7, 8);
        let taken_at = committed_at(&store);
        let held = store.lock().unwrap();
        std::thread::scope(|scope| {
            let marking = scope.spawn(|| store.mark_torn(taken_at, why));
            let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::fs::read_dir(store.path("torn")).map_or(0, |d| d.count()) == 0 {
                assert!(std::time::Instant::now() < until, "no mark kept");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(held);
            let marked = marking.join().unwrap().unwrap();
            assert_eq!(marked.len(), 1);
        });
        assert_eq!(
            store.points().unwrap().pop().unwrap().verified,
            Verified::Bad
        );
    }

    /// A point read live under a freeze is held (bad, saying why) until the freeze is
    /// confirmed: its first copy and its updates alike, a confirmation that comes before the
    /// update is completed or even begun included. One never confirmed (its replication cut
    /// before `replicate-end`) stays unusable, and so does one said torn, or found damaged,
    /// whatever a confirmation says.
    #[test]
    fn a_point_read_live_is_held_until_its_freeze_is_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let store = Store::new(&dir.path().join("dst.img"));
        let live = |id: &str| NewPoint {
            pending: true,
            ..point(id)
        };
        let state = |store: &Store| -> Vec<(String, Verified, bool)> {
            store
                .points()
                .unwrap()
                .into_iter()
                .map(|p| (p.id, p.verified, p.pending))
                .collect()
        };
        let write = |byte: u8| std::fs::write(&src, vec![byte; 3 * BLOCK]).unwrap();
        // The first copy: held, then confirmed.
        write(1);
        let p1 = live("p1");
        let applied = store.apply(&mut &stream_of(&src, &store)[..], p1.clone());
        let applied = applied.unwrap();
        assert!(applied.point.pending, "{:?}", applied.point);
        assert_eq!(state(&store), [("p1".into(), Verified::Bad, true)]);
        let held = &store.points().unwrap()[0];
        assert_eq!(
            held.unusable.as_deref(),
            Some(super::super::point::PENDING_WHY)
        );
        // A verification that finds it whole keeps it held.
        assert_eq!(store.verify(Some("p1")).unwrap(), [("p1".into(), false)]);
        assert_eq!(state(&store), [("p1".into(), Verified::Bad, true)]);
        let confirmed = store.confirm(p1.taken_at).unwrap();
        assert_eq!(confirmed.len(), 1);
        assert_eq!(state(&store), [("p1".into(), Verified::Yes, false)]);
        assert!(store.points().unwrap()[0].unusable.is_none());
        // An update never confirmed (cut before `replicate-end`) stays unusable, the next
        // replication goes on from it.
        write(2);
        store
            .apply(&mut &stream_of(&src, &store)[..], live("p2"))
            .unwrap();
        write(3);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p3"))
            .unwrap();
        assert_eq!(
            state(&store),
            [
                ("p1".into(), Verified::Yes, false),
                ("p2".into(), Verified::Bad, true),
                ("p3".into(), Verified::Yes, false),
            ]
        );
        // Confirmed before its update began (its stream still on the way): kept, and the
        // update records its point confirmed.
        write(4);
        let p4 = live("p4");
        assert!(store.confirm(p4.taken_at).unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(store.path("confirmed")).unwrap().count(),
            1
        );
        let applied = store
            .apply(&mut &stream_of(&src, &store)[..], p4.clone())
            .unwrap();
        assert!(!applied.point.pending && applied.point.verified == Verified::Yes);
        assert_eq!(state(&store)[3], ("p4".into(), Verified::Yes, false));
        assert_eq!(
            std::fs::read_dir(store.path("confirmed")).unwrap().count(),
            0
        );
        // Said torn before its update began, then confirmed (two answers of its source must
        // not both come, but the torn one wins): bad for good.
        write(5);
        let p5 = live("p5");
        let why = "its source's replicate-end said it may be torn: thawed";
        assert!(store.mark_torn(p5.taken_at, why).unwrap().is_empty());
        store
            .apply(&mut &stream_of(&src, &store)[..], p5.clone())
            .unwrap_err();
        store.confirm(p5.taken_at).unwrap();
        let p5 = store.points().unwrap().pop().unwrap();
        assert_eq!(
            (
                p5.id.as_str(),
                p5.verified,
                p5.unusable.as_deref(),
                p5.pending
            ),
            ("p5", Verified::Bad, Some(why), false)
        );
        assert_eq!(std::fs::read_dir(store.path("torn")).unwrap().count(), 0);
    }

    /// A held point (never confirmed to be of one instant) that a verification finds not
    /// whole stays unusable for good: a later verification that finds it whole (its delta
    /// readable again) never makes it good.
    #[test]
    fn a_held_point_found_not_whole_is_never_made_good_by_a_later_verification() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let store = Store::new(&dir.path().join("dst.img"));
        let write = |byte: u8| std::fs::write(&src, vec![byte; 3 * BLOCK]).unwrap();
        write(1);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        write(2);
        let p2 = NewPoint {
            pending: true,
            ..point("p2")
        };
        store.apply(&mut &stream_of(&src, &store)[..], p2).unwrap();
        write(3);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p3"))
            .unwrap();
        let deltas: Vec<_> = std::fs::read_dir(store.path("deltas"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("p2"))
            .collect();
        assert_eq!(deltas.len(), 1, "{deltas:?}");
        let aside = dir.path().join("aside");
        std::fs::rename(&deltas[0], &aside).unwrap();
        assert_eq!(store.verify(Some("p2")).unwrap(), [("p2".into(), false)]);
        std::fs::rename(&aside, &deltas[0]).unwrap();
        assert_eq!(store.verify(Some("p2")).unwrap(), [("p2".into(), false)]);
        let p2 = store.points().unwrap().remove(1);
        assert_eq!(
            (p2.id.as_str(), p2.verified, p2.pending),
            ("p2", Verified::Bad, false)
        );
        let why = p2.unusable.unwrap_or_default();
        assert!(why.starts_with(super::super::point::PENDING_WHY), "{why}");
        // And no confirmation of its freeze mends it.
        store.confirm(store.points().unwrap()[1].taken_at).unwrap();
        assert_eq!(store.points().unwrap()[1].verified, Verified::Bad);
    }

    /// A mark kept by a `mark_torn` or a `confirm` that could not apply it (the copy held too
    /// long by another command) is applied to the point already recorded by the next command
    /// that takes the copy; a mark of an older replication without a point goes, one of a
    /// replication still to come stays.
    #[test]
    fn a_mark_kept_for_a_point_already_recorded_is_applied_by_the_next_command() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let store = Store::new(&dir.path().join("dst.img"));
        std::fs::write(&src, vec![1u8; 3 * BLOCK]).unwrap();
        let p1 = point("p1");
        store
            .apply(&mut &stream_of(&src, &store)[..], p1.clone())
            .unwrap();
        std::fs::write(&src, vec![2u8; 3 * BLOCK]).unwrap();
        let p2 = NewPoint {
            pending: true,
            ..point("p2")
        };
        store
            .apply(&mut &stream_of(&src, &store)[..], p2.clone())
            .unwrap();
        let why = "its source's replicate-end said it may be torn: thawed";
        meta::write_torn(&store.dir, p1.taken_at, why).unwrap();
        meta::write_confirmed(&store.dir, p2.taken_at).unwrap();
        let stale = p1.taken_at - chrono::Duration::seconds(60);
        let to_come = Utc::now() + chrono::Duration::seconds(60);
        meta::write_confirmed(&store.dir, stale).unwrap();
        meta::write_torn(&store.dir, to_come, why).unwrap();
        store.settle().unwrap();
        let points = store.points().unwrap();
        assert_eq!(
            points
                .iter()
                .map(|p| (p.id.as_str(), p.verified, p.unusable.as_deref(), p.pending))
                .collect::<Vec<_>>(),
            [
                ("p1", Verified::Bad, Some(why), false),
                ("p2", Verified::Yes, None, false),
            ]
        );
        assert_eq!(
            std::fs::read_dir(store.path("confirmed")).unwrap().count(),
            0
        );
        let left: Vec<_> = std::fs::read_dir(store.path("torn"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left.len(),
            1,
            "the mark of the replication to come: {left:?}"
        );
        assert_eq!(meta::read_torn(&store.dir, to_come).as_deref(), Some(why));
    }

    /// The confirmation of an update committed but not completed completes it, confirmed;
    /// one found damaged as it is completed stays bad whatever the confirmation says.
    #[test]
    fn a_confirmation_completes_a_committed_update_and_never_mends_a_damaged_one() {
        let held = |a: u8, b: u8| {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src.img");
            let store = Store::new(&dir.path().join("dst.img"));
            std::fs::write(&src, vec![a; 3 * BLOCK]).unwrap();
            store
                .apply(&mut &stream_of(&src, &store)[..], point("p1"))
                .unwrap();
            std::fs::write(&src, vec![b; 3 * BLOCK]).unwrap();
            let new = NewPoint {
                pending: true,
                ..point("p2")
            };
            store
                .apply_until(&mut &stream_of(&src, &store)[..], new, true)
                .unwrap();
            (dir, store)
        };
        let (_dir, store) = held(1, 2);
        let taken_at = committed_at(&store);
        let confirmed = store.confirm(taken_at).unwrap();
        assert_eq!(
            confirmed
                .iter()
                .map(|p| (p.id.as_str(), p.verified, p.pending))
                .collect::<Vec<_>>(),
            [("p2", Verified::Yes, false)]
        );
        // The journal damaged after its commit record: the copy is not the point.
        let (_dir, store) = held(3, 4);
        let taken_at = committed_at(&store);
        let j = store.path("journal");
        let mut bytes = std::fs::read(&j).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&j, bytes).unwrap();
        let found = store.confirm(taken_at).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].verified, found[0].pending),
            (Verified::Bad, false),
            "{:?}",
            found[0]
        );
        assert!(
            found[0]
                .unusable
                .as_deref()
                .is_some_and(|w| w.contains("damaged on the recovery host's disk")),
            "{:?}",
            found[0]
        );
    }

    /// Changes read since a checkpoint are applied only to that checkpoint's point: a copy
    /// rolled back meanwhile (or whose newest point was found bad) refuses them, untouched,
    /// where it would otherwise be an older point plus newer changes, its hash matching.
    #[test]
    fn changes_since_a_checkpoint_are_applied_only_to_its_point() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let store = Store::new(&dir.path().join("dst.img"));
        let read = |id: &str, cp: &str, since: Option<&str>| NewPoint {
            read: Some(HowRead {
                mode: ReadMode::ChangedBlocks,
                why: None,
                checkpoint: Some(cp.into()),
                since: since.map(String::from),
                created: None,
                missed: None,
                marker: None,
            }),
            ..point(id)
        };
        std::fs::write(&src, vec![1u8; 3 * BLOCK]).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], read("p1", "cp1", None))
            .unwrap();
        std::fs::write(&src, vec![2u8; 3 * BLOCK]).unwrap();
        store
            .apply(
                &mut &stream_of(&src, &store)[..],
                read("p2", "cp2", Some("cp1")),
            )
            .unwrap();
        // Rolled back to p1 after the changes since cp2 were chosen, before the base was asked
        // for: the stream is against p1's manifest, so only the checkpoint tells.
        std::fs::write(&src, vec![3u8; 3 * BLOCK]).unwrap();
        store.roll_back("p1").unwrap();
        let stream = stream_of(&src, &store);
        let before = std::fs::read(&store.image).unwrap();
        let err = store
            .apply(&mut &stream[..], read("p3", "cp3", Some("cp2")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("those since checkpoint cp2")
                && err.contains("newest point is p1 (checkpoint cp1)"),
            "{err}"
        );
        assert_eq!(std::fs::read(&store.image).unwrap(), before);
        assert_eq!(store.points().unwrap().len(), 1);
        // Its own checkpoint's changes apply; once that point is found bad, no more.
        store
            .apply(
                &mut &stream_of(&src, &store)[..],
                read("p3", "cp3", Some("cp1")),
            )
            .unwrap();
        store.mark_unusable("p3", "torn").unwrap();
        let err = store
            .apply(
                &mut &stream_of(&src, &store)[..],
                read("p4", "cp4", Some("cp3")),
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("(checkpoint cp3, found bad)"), "{err}");
    }

    /// A copy a QEMU process has open (a vm run on it outside reprise; in a failback, the
    /// primary's disk with its vm started there) is never written: its image lock says so,
    /// whoever started it. A roll-back, which puts another file in its place, is refused only
    /// by one that writes it (a drill's overlay reads it, and keeps the file it opened).
    #[test]
    fn a_copy_a_qemu_process_has_open_is_never_written_under_it() {
        let (dir, src, store) = copy_of(&[("p1", 1), ("p2", 2)], 2);
        std::fs::write(&src, vec![3u8; 2 * BLOCK]).unwrap();
        // qemu-nbd serving the copy, as QEMU holds it: read-only (a reader), or not.
        let serve = |read_only: bool| {
            let sock = dir.path().join(format!("nbd-{read_only}.sock"));
            let mut cmd = std::process::Command::new("qemu-nbd");
            cmd.args(["-f", "raw", "-k"]).arg(&sock);
            if read_only {
                cmd.arg("--read-only");
            }
            let child = Served(
                cmd.arg(&store.image)
                    .spawn()
                    .expect("qemu-nbd (apt-get install qemu-utils)"),
            );
            let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !qemu_holds(&store.image, QEMU_LOCKS).unwrap() {
                assert!(std::time::Instant::now() < until, "qemu-nbd took no lock");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            child
        };
        // Stopped when dropped, a failed assertion included: no qemu-nbd outlives the test.
        struct Served(std::process::Child);
        impl Drop for Served {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let stop = |child: Served| drop(child);
        let before = std::fs::read(&store.image).unwrap();
        let writer = serve(false);
        let err = store.base_manifest(false, false).unwrap_err().to_string();
        assert!(err.contains("a QEMU process has it open"), "{err}");
        let stream = {
            let m = Manifest::of_file(&store.image).unwrap();
            let mut out = Vec::new();
            crate::replica::helper::send(&src, &m, &mut out, false).unwrap();
            out
        };
        let err = store
            .apply(&mut &stream[..], point("p3"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a QEMU process has it open"), "{err}");
        let err = store.roll_back("p1").unwrap_err().to_string();
        assert!(err.contains("a QEMU process has it open"), "{err}");
        assert_eq!(std::fs::read(&store.image).unwrap(), before);
        assert_eq!(store.points().unwrap().len(), 2);
        stop(writer);
        // A reader: no update in place under it, but a roll-back puts another file there.
        let reader = serve(true);
        assert!(store.base_manifest(false, false).is_err());
        assert_eq!(store.roll_back("p1").unwrap().dropped, ["p2"]);
        stop(reader);
        // Nobody: written.
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p3"))
            .unwrap();
        assert_eq!(
            std::fs::read(&store.image).unwrap(),
            std::fs::read(&src).unwrap()
        );
    }

    /// An update cut while it wrote the copy, then a write by hand in a block the update
    /// writes: completing it would write over that without a word (the whole copy would then
    /// be the point). Each of its blocks must hold what it writes or what the copy held
    /// before; one that holds neither stops it: thrown away, the copy left as it is, counted
    /// as written outside reprise, what it held before kept.
    #[test]
    fn an_update_cut_while_it_wrote_is_never_completed_over_a_write_in_its_own_blocks() {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![1u8; 6 * BLOCK]).unwrap();
        let store = Store::new(&dst);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let f = OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&[2u8; 2 * BLOCK], 0).unwrap();
        drop(f);
        store
            .apply_until(&mut &stream_of(&src, &store)[..], point("p2"), true)
            .unwrap();
        // Cut once it wrote block 0; then a write by hand in block 1, which it writes too.
        meta::write_file(&store.dir, ROLLING, b"p2", false).unwrap();
        let f = OpenOptions::new().write(true).open(&dst).unwrap();
        f.write_all_at(&[2u8; BLOCK], 0).unwrap();
        f.write_all_at(b"by hand", BLOCK as u64 + 10).unwrap();
        drop(f);
        let written = std::fs::read(&dst).unwrap();
        let note = store.settle().unwrap().unwrap_or_default();
        assert!(
            note.contains("1 of its blocks (the first, block 1) hold neither what it wrote nor what they held before")
                && note.contains("the update was thrown away"),
            "{note}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), written);
        assert!(!store.path("journal").exists() && !store.path(ROLLING).exists());
        assert!(store.path("deltas/p1.rdelta.cut-p2").exists());
        assert_eq!(store.points().unwrap().last().unwrap().id, "p1");
        assert!(store.inspect().written_outside().is_some());
        // A block left as it was, and one the update wrote: completed as before.
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        let store = Store::new(&other.join("dst.img"));
        std::fs::write(&src, vec![1u8; 6 * BLOCK]).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let f = OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&[2u8; 2 * BLOCK], 0).unwrap();
        drop(f);
        store
            .apply_until(&mut &stream_of(&src, &store)[..], point("p2"), true)
            .unwrap();
        meta::write_file(&store.dir, ROLLING, b"p2", false).unwrap();
        let f = OpenOptions::new().write(true).open(&store.image).unwrap();
        f.write_all_at(&[2u8; BLOCK], 0).unwrap();
        drop(f);
        assert!(store.settle().unwrap().unwrap().contains("completed"));
        assert_eq!(
            std::fs::read(&store.image).unwrap(),
            std::fs::read(&src).unwrap()
        );
        assert!(store.verify(None).unwrap().iter().all(|(_, good)| *good));
    }

    /// A try that found blocks written since the cut and was itself cut once it had kept what
    /// the copy held before, before it let the update go: the next one lets it go, never
    /// completes it over what was written (nor takes the copy for damaged and starts it
    /// again).
    #[test]
    fn an_update_found_written_over_stays_let_go_when_its_settle_is_cut() {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![1u8; 6 * BLOCK]).unwrap();
        let store = Store::new(&dst);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let f = OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&[2u8; 2 * BLOCK], 0).unwrap();
        drop(f);
        store
            .apply_until(&mut &stream_of(&src, &store)[..], point("p2"), true)
            .unwrap();
        meta::write_file(&store.dir, ROLLING, b"p2", false).unwrap();
        let f = OpenOptions::new().write(true).open(&dst).unwrap();
        f.write_all_at(b"by hand", 10).unwrap();
        drop(f);
        let written = std::fs::read(&dst).unwrap();
        // The first try kept the delta, and was cut there.
        let pending = store.path("delta.pending");
        assert!(pending.exists());
        std::fs::rename(&pending, store.path("deltas/p1.rdelta.cut-p2")).unwrap();
        let note = store.settle().unwrap().unwrap_or_default();
        assert!(
            note.contains("found (by a try cut before it was done) to hold neither what it wrote")
                && note.contains("the update was thrown away"),
            "{note}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), written);
        assert!(!store.path("journal").exists() && !store.path(ROLLING).exists());
        assert!(store.path("deltas/p1.rdelta.cut-p2").exists());
        assert_eq!(store.points().unwrap().last().unwrap().id, "p1");
        assert!(store.inspect().written_outside().is_some());
        // Nothing replicates over it until it is let go.
        let e = store.base_manifest(false, false).unwrap_err().to_string();
        assert!(
            e.contains("the copy changed since its newest point p1"),
            "{e}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), written);
    }

    /// An update cut in the middle of a block's write (a kill ends a write on a page, a power
    /// cut loses whole sectors in any order) leaves that block part written, the rest as it
    /// was: the cut's own doing, completed (never taken for a write since the cut, which would
    /// make a restore after a power cut need `--force`). A byte of any other content in it is
    /// still a write since the cut.
    #[test]
    fn an_update_cut_in_the_middle_of_a_block_is_completed() {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let old: Vec<u8> = (0..6 * BLOCK).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &old).unwrap();
        let store = Store::new(&dst);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let new: Vec<u8> = (0..3 * BLOCK).map(|i| (i % 241) as u8 ^ 0x5a).collect();
        let f = OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&new, 0).unwrap();
        drop(f);
        store
            .apply_until(&mut &stream_of(&src, &store)[..], point("p2"), true)
            .unwrap();
        // Block 0 written; block 1 cut after three pages; of block 2, every other sector.
        meta::write_file(&store.dir, ROLLING, b"p2", false).unwrap();
        let f = OpenOptions::new().write(true).open(&dst).unwrap();
        f.write_all_at(&new[..BLOCK + 3 * 4096], 0).unwrap();
        for at in (2 * BLOCK..3 * BLOCK).step_by(2 * SECTOR) {
            f.write_all_at(&new[at..at + SECTOR], at as u64).unwrap();
        }
        drop(f);
        let note = store.settle().unwrap().unwrap_or_default();
        assert!(note.contains("completed"), "{note}");
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        assert!(store.verify(None).unwrap().iter().all(|(_, good)| *good));
        // The sectors of a torn block judged one by one: what the update writes or what was
        // there; one byte of anything else in any of them, and it is not the cut's.
        let (want, was) = (&new[BLOCK..2 * BLOCK], &old[BLOCK..2 * BLOCK]);
        let mut torn = was.to_vec();
        torn[..5 * SECTOR].copy_from_slice(&want[..5 * SECTOR]);
        assert!(cut_mix(&torn, want, Some(was)));
        assert!(cut_mix(want, want, Some(was)) && cut_mix(was, want, Some(was)));
        for at in [0, 5 * SECTOR - 1, 5 * SECTOR, BLOCK - 1] {
            let mut foreign = torn.clone();
            foreign[at] = (0..=255u8)
                .find(|b| *b != want[at] && *b != was[at])
                .unwrap();
            assert!(!cut_mix(&foreign, want, Some(was)), "byte {at}");
        }
        // Beyond the copy's end before the update: zeros or what it writes, nothing else.
        let mut grown = vec![0u8; BLOCK];
        grown[..SECTOR].copy_from_slice(&want[..SECTOR]);
        assert!(cut_mix(&grown, want, None));
        grown[SECTOR] = 1;
        assert!(!cut_mix(&grown, want, None));
        // The copy's end in the block, not on a sector: grown, what it held then zeros in
        // the sector it ended in; shrunk, the new bytes then the old ones past the new end.
        let short = &was[..3 * SECTOR + 100];
        let mut grew = vec![0u8; BLOCK];
        grew[..2 * SECTOR].copy_from_slice(&want[..2 * SECTOR]);
        grew[2 * SECTOR..3 * SECTOR + 100].copy_from_slice(&was[2 * SECTOR..3 * SECTOR + 100]);
        assert!(cut_mix(&grew, want, Some(short)));
        grew[3 * SECTOR + 100] = (1..=255u8).find(|b| *b != want[3 * SECTOR + 100]).unwrap();
        assert!(!cut_mix(&grew, want, Some(short)));
        let cut_short = &want[..2 * SECTOR + 10];
        let mut shrank = was.to_vec();
        shrank[..2 * SECTOR + 10].copy_from_slice(cut_short);
        assert!(cut_mix(&shrank, cut_short, Some(was)));
        shrank[2 * SECTOR + 20] = !was[2 * SECTOR + 20];
        assert!(!cut_mix(&shrank, cut_short, Some(was)));
    }

    /// A copy written with its modification time put back (`touch -r`, `rsync -t`), which its
    /// stamp does not see, is hashed again by the next replication (its status change time
    /// moved): what differs is sent, and its newest point, which it no longer is, is marked
    /// bad and said. One that changed without even that (rot on the disk, shown here by
    /// setting the saved manifest's key to the copy as it is) is found where an update
    /// replaces a block: nothing is written, the point is marked bad, and the next
    /// replication reads the copy whole and mends it.
    #[test]
    fn a_copy_changed_behind_its_stamp_is_never_built_on() {
        let (_dir, src, store) = copy_of(&[("p1", 1)], 6);
        let dst = store.image.clone();
        let put_back = |at: u64| {
            let mtime = std::fs::metadata(&dst).unwrap().modified().unwrap();
            scribble(&dst, at, 7, 9);
            let f = OpenOptions::new().write(true).open(&dst).unwrap();
            f.set_modified(mtime).unwrap();
        };
        let stamp = store.stamp();
        put_back(5 * BLOCK as u64);
        assert_eq!(store.stamp(), stamp, "the stamp saw the write");
        scribble(&src, 0, BLOCK, 2);
        let (_, note) = store.base_manifest(false, false).unwrap();
        let note = note.unwrap_or_default();
        assert!(
            note.contains("point p1 is marked unusable: the copy read whole is not this point"),
            "{note}"
        );
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p2"))
            .unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        let points = store.points().unwrap();
        assert_eq!(points[0].verified, Verified::Bad);
        assert_eq!(points[1].verified, Verified::Yes);
        assert!(store.verify(Some("p2")).unwrap()[0].1);

        // Rot: not even the status change time moved.
        let stamp = store.stamp();
        put_back(3 * BLOCK as u64);
        assert_eq!(store.stamp(), stamp);
        store.write_stamp(store.key().as_deref()).unwrap();
        scribble(&src, 3 * BLOCK as u64, BLOCK, 4);
        let stream = stream_of(&src, &store);
        let before = std::fs::read(&dst).unwrap();
        let e = store
            .apply(&mut &stream[..], point("p3"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("(the first, block 3) are not what its newest point p2 recorded")
                && e.contains("nothing was written"),
            "{e}"
        );
        assert_eq!(std::fs::read(&dst).unwrap(), before);
        assert_eq!(store.points().unwrap()[1].verified, Verified::Bad);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p3"))
            .unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        assert!(store.verify(Some("p3")).unwrap()[0].1);
    }

    /// An update cut while it wrote the copy is completed by the next command, but never under
    /// a QEMU process that has the copy open (a vm run on it by hand since the cut), and
    /// never as its point over a write made since the cut in a block it does not write (its
    /// own writes moved the copy's stamp, which cannot tell): the copy is read whole, said
    /// not to be the point, and counts as written outside reprise until let go.
    #[test]
    fn an_update_cut_while_it_wrote_the_copy_is_never_completed_unseen_over_writes_since() {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![1u8; 6 * BLOCK]).unwrap();
        let store = Store::new(&dst);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let f = OpenOptions::new().write(true).open(&src).unwrap();
        f.write_all_at(&[2u8; BLOCK], 0).unwrap();
        drop(f);
        store
            .apply_until(&mut &stream_of(&src, &store)[..], point("p2"), true)
            .unwrap();
        // Cut once it began writing the copy.
        meta::write_file(&store.dir, ROLLING, b"p2", false).unwrap();
        let before = std::fs::read(&dst).unwrap();
        {
            let sock = dir.path().join("nbd.sock");
            struct Served(std::process::Child);
            impl Drop for Served {
                fn drop(&mut self) {
                    let _ = self.0.kill();
                    let _ = self.0.wait();
                }
            }
            let _vm = Served(
                std::process::Command::new("qemu-nbd")
                    .args(["-f", "raw", "-k"])
                    .arg(&sock)
                    .arg(&dst)
                    .spawn()
                    .expect("qemu-nbd (apt-get install qemu-utils)"),
            );
            let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while !qemu_holds(&dst, QEMU_LOCKS).unwrap() {
                assert!(std::time::Instant::now() < until, "qemu-nbd took no lock");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let err = store.settle().unwrap_err().to_string();
            assert!(err.contains("a QEMU process has it open"), "{err}");
            assert_eq!(std::fs::read(&dst).unwrap(), before, "written under QEMU");
            assert!(store.path("journal").exists());
        }
        // Written by hand since the cut, in a block the update does not write.
        let f = OpenOptions::new().write(true).open(&dst).unwrap();
        f.write_all_at(b"by hand", 5 * BLOCK as u64).unwrap();
        drop(f);
        let note = store.settle().unwrap().unwrap();
        assert!(
            note.contains("is not this point") && note.contains("written outside reprise"),
            "{note}"
        );
        let copy = std::fs::read(&dst).unwrap();
        assert_eq!(&copy[5 * BLOCK..5 * BLOCK + 7], b"by hand");
        assert_eq!(copy[0], 2, "the update is completed");
        let points = store.points().unwrap();
        assert_eq!(points.last().unwrap().id, "p2");
        assert_eq!(points.last().unwrap().verified, Verified::Bad);
        assert!(store.inspect().written_outside().is_some());
        let e = store.base_manifest(false, false).unwrap_err().to_string();
        assert!(e.contains("this replication would overwrite it"), "{e}");
        // Let go: the next replication reads the copy again and sends what differs.
        store.accept_changes().unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p3"))
            .unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
        assert!(
            store
                .verify(Some("p3"))
                .unwrap()
                .iter()
                .all(|(_, good)| *good)
        );
    }

    /// A copy that is gone holds nothing to lose: its history ends and it is made anew. A copy
    /// with no point to compare with (a failover started on it, then a failback let it go)
    /// is refused once written again after it was let go.
    /// A failback lets a copy go only as its copy back read it: written since (a vm run there
    /// again between the read and the release), it is refused and nothing is recorded, so
    /// the next replication still refuses to write over it; as it was read, it is let go at
    /// that stamp.
    #[test]
    fn a_failback_lets_a_copy_go_only_as_its_copy_back_read_it() {
        use std::os::unix::fs::FileExt as _;
        let (_dir, _src, store) = copy_of(&[("p1", 1)], 2);
        let wait = std::time::Duration::from_millis(10);
        store
            .take_lease(&lease_of(LeaseKind::Live, "r1", "p1"), None, wait, true)
            .unwrap();
        let read = store.stamp().unwrap();
        let f = OpenOptions::new().write(true).open(&store.image).unwrap();
        f.write_all_at(b"ran again", 0).unwrap();
        drop(f);
        let refused = store.accept_as(&read).unwrap_err().to_string();
        assert!(
            refused.contains("it was written since the failback's copy back read it"),
            "{refused}"
        );
        // The helper then keeps its lease: no replication writes over it.
        assert!(
            store.base_manifest(false, false).is_err(),
            "what was written there is overwritten"
        );
        // As it was read: let go at that stamp, then released.
        let now = store.stamp().unwrap();
        store.accept_as(&now).unwrap();
        store.release(|_, _| true).unwrap();
        assert!(store.base_manifest(false, false).is_ok(), "as let go");
        // Written after it was let go: refused again.
        let f = OpenOptions::new().write(true).open(&store.image).unwrap();
        f.write_all_at(b"and again", 0).unwrap();
        drop(f);
        assert!(store.base_manifest(false, false).is_err());
    }

    #[test]
    fn a_copy_gone_is_made_anew_and_one_let_go_is_refused_when_written_again() {
        use std::os::unix::fs::FileExt as _;
        let (_dir, src, store) = copy_of(&[("p1", 1), ("p2", 2)], 2);
        std::fs::remove_file(&store.image).unwrap();
        let (_, note) = store.base_manifest(false, false).unwrap();
        assert!(note.unwrap().contains("points given up: p1, p2"));
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p3"))
            .unwrap();
        assert_eq!(
            std::fs::read(&store.image).unwrap(),
            std::fs::read(&src).unwrap()
        );
        // A failover starts the vm on it: its history ends; a failback lets it go.
        let wait = std::time::Duration::from_millis(10);
        store
            .take_lease(&lease_of(LeaseKind::Live, "r1", "p3"), None, wait, true)
            .unwrap();
        assert!(store.points().unwrap().is_empty());
        assert_eq!(store.release(|_, _| true).unwrap().len(), 1);
        assert_eq!(store.accept_changes().unwrap(), None);
        assert!(store.base_manifest(false, false).is_ok(), "as let go");
        // Started there by hand afterwards, it writes.
        let f = OpenOptions::new().write(true).open(&store.image).unwrap();
        f.write_all_at(b"by hand", 0).unwrap();
        drop(f);
        let refused = store.base_manifest(false, false).unwrap_err().to_string();
        assert!(
            refused.contains("the copy changed since it was let go")
                && refused.contains("this replication would overwrite it"),
            "{refused}"
        );
        store.accept_changes().unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p4"))
            .unwrap();
        assert_eq!(
            std::fs::read(&store.image).unwrap(),
            std::fs::read(&src).unwrap()
        );
    }

    /// A copy a vm runs on (a live lease of a failover) is never rolled back under it, even
    /// by a run that decided before that lease was taken; a drill's overlay, which keeps the
    /// file it opened, does not stop a failover's roll-back.
    #[test]
    fn a_copy_a_vm_runs_on_is_never_rolled_back_under_it() {
        let (_dir, _src, store) = copy_of(&[("p1", 1), ("p2", 2), ("p3", 3)], 2);
        let lease = |kind, run: &str| lease_of(kind, run, "p3");
        let wait = std::time::Duration::from_millis(10);
        store
            .take_lease(&lease(LeaseKind::Live, "r1"), Some("p3"), wait, false)
            .unwrap();
        let before = std::fs::read(&store.image).unwrap();
        let err = store.roll_back("p2").unwrap_err().to_string();
        assert!(err.contains("in use") && err.contains("run r1"), "{err}");
        assert_eq!(std::fs::read(&store.image).unwrap(), before);
        assert_eq!(store.points().unwrap().len(), 3);
        // The newest point asked: nothing to roll back, nothing refused.
        assert_eq!(store.roll_back("p3").unwrap().dropped, Vec::<String>::new());
        store.release(|_, n| n == "live-r1").unwrap();
        store
            .take_lease(&lease(LeaseKind::Drill, "r2"), Some("p3"), wait, false)
            .unwrap();
        assert_eq!(store.roll_back("p2").unwrap().dropped, ["p3"]);
    }

    #[test]
    fn a_leased_copy_is_never_replicated_into_and_a_vm_started_on_it_ends_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        std::fs::write(&src, vec![1u8; 2 * BLOCK]).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let lease = |kind, run: &str| lease_of(kind, run, "p1");
        let wait = std::time::Duration::from_millis(10);
        store
            .take_lease(&lease(LeaseKind::Drill, "r1"), Some("p1"), wait, false)
            .unwrap();
        let err = store.base_manifest(false, false).unwrap_err().to_string();
        assert!(
            err.contains("is in use: a drill copy of vm erp-db (run r1)"),
            "{err}"
        );
        assert_eq!(store.release(|_, n| n == "drill-r1").unwrap().len(), 1);
        // The copy is no longer the point expected: the lease is refused.
        let err = store
            .take_lease(&lease(LeaseKind::Live, "r2"), Some("p0"), wait, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no longer point p0"), "{err}");
        assert_eq!(
            store
                .take_lease(&lease(LeaseKind::Live, "r2"), Some("p1"), wait, false)
                .unwrap(),
            None
        );
        assert!(
            store.base_manifest(false, false).is_err(),
            "a leased copy is not replicated into"
        );
        assert_eq!(
            store.points().unwrap().len(),
            1,
            "not started yet: still its point"
        );
        let note = store
            .take_lease(&lease(LeaseKind::Live, "r2"), None, wait, true)
            .unwrap()
            .unwrap();
        assert!(
            note.contains("vm erp-db was started on it by run r2 from point p1"),
            "{note}"
        );
        let state = store.inspect();
        assert!(
            state.points.is_empty() && state.ended.is_some(),
            "{state:?}"
        );
        assert!(
            store.base_manifest(false, false).is_err(),
            "a live copy is not replicated into"
        );
    }

    #[test]
    fn a_point_found_bad_after_the_run_chose_it_is_not_leased_as_verified() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        std::fs::write(&src, vec![1u8; 2 * BLOCK]).unwrap();
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        // A `reprise verify` of another process marks it bad after the run chose it.
        let mut points = store.points().unwrap();
        points[0].verified = Verified::Bad;
        store.write_points(&points).unwrap();
        let lease = |verified| Lease {
            kind: LeaseKind::Live,
            run: "r1".into(),
            vm: "erp-db".into(),
            step: "erp-db/start".into(),
            machine: "m".into(),
            pid: 1,
            at: Utc::now(),
            point: Some("p1".into()),
            taken_at: None,
            written_until: None,
            verified,
        };
        let wait = std::time::Duration::from_millis(10);
        let err = store
            .take_lease(&lease(true), Some("p1"), wait, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed verification"), "{err}");
        assert!(
            meta::read_leases(&store.dir).is_empty(),
            "a lease was taken"
        );
        // Started unverified on the operator's request: that is what it is.
        store
            .take_lease(&lease(false), Some("p1"), wait, false)
            .unwrap();
    }

    #[test]
    fn a_second_writer_is_refused_while_the_image_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("img"));
        let _held = store.lock().unwrap();
        let err = store.base_manifest(false, false).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }
}
