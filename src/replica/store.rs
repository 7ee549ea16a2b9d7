//! The recovery side of one image: the mirror (the image file itself, the newest point) and,
//! in the folder `<image>.reprise/` beside it, what makes it a set of verified points:
//!
//! - `manifest`: size, block hashes and whole hash of the mirror, so a replication need not
//!   read the mirror again;
//! - `points.json`: the points, oldest first (replaced by an atomic rename);
//! - `deltas/<point>.rdelta`: for each point but the newest, the blocks that its successor
//!   overwrote, so that point is the mirror with its successors' deltas put back;
//! - `journal` and `delta.pending`: the write-ahead log of an update in progress: the new
//!   blocks, and (already in reverse-delta form) the blocks they replace, both written and
//!   fsynced before the mirror is touched. An update whose journal has no commit record never
//!   touched the mirror and is thrown away; one with a commit record is completed, and its
//!   pending delta is renamed into `deltas/`. The commit record is written only once the
//!   whole-image hash of the new state matches the source's;
//! - `lock`: held (flock) by whoever reads or writes any of it.
//!
//! The first point of an image is written into `staging` and renamed over the mirror.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::blocks::{self, BLOCK, Cv, Manifest, hex};
use super::wire::{self, Record};

/// Whether a point is known good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verified {
    /// Its hash matched when it was made or last checked.
    Yes,
    /// Never checked.
    No,
    /// It failed a check: never used unless asked for by name.
    Bad,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verified::Yes => "yes",
            Verified::No => "no",
            Verified::Bad => "bad",
        })
    }
}

/// One replica point of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub id: String,
    /// When the source state was read.
    pub taken_at: DateTime<Utc>,
    /// `host:path` of the source image.
    pub source: String,
    pub size: u64,
    /// BLAKE3 of the whole image, hex.
    pub blake3: String,
    pub verified: Verified,
    pub checked_at: Option<DateTime<Utc>>,
    /// Bytes of blocks received to make it, and how long the update took.
    pub received_bytes: u64,
    pub duration_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{image} is being replicated or checked by another process (lock {lock})")]
    Locked { image: String, lock: String },
    #[error(
        "{image}: whole-image BLAKE3 after the update is {got}, the source's is {expected}; nothing was changed"
    )]
    Mismatch {
        image: String,
        expected: String,
        got: String,
    },
    #[error("{image}: {reason}")]
    Stream { image: String, reason: String },
    #[error("{image} has no point `{point}` (see `reprise points`)")]
    UnknownPoint { image: String, point: String },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
}

pub(super) fn io_err(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

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
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            image: name.to_string(),
            lock: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

/// A new point to record, as the orchestrator names it.
#[derive(Debug, Clone)]
pub struct NewPoint {
    pub id: String,
    pub taken_at: DateTime<Utc>,
    pub source: String,
    pub retention: u32,
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

/// The commit record of a journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Commit {
    point: Point,
    prev: Option<String>,
    old_size: u64,
    new_whole: String,
    retention: u32,
}

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

/// Bytes written between two requests to the kernel to start writing back: the data goes to
/// disk while more arrives, so the final fsync has little left to wait for.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// Starts writing back the dirty pages of `f` without waiting for them (Linux); a no-op
/// where unsupported: the fsync that follows is what makes the data durable.
fn start_writeback(f: &File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid open descriptor; offset 0 and length 0 mean the whole file.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
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

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn name(&self) -> String {
        self.image.display().to_string()
    }

    /// Settles an interrupted update or roll-back (see `recover`) so that the points file
    /// tells the truth; what was done, if anything. A copy without points is left alone.
    pub fn settle(&self) -> Result<Option<String>, StoreError> {
        if !self.dir.is_dir() {
            return Ok(None);
        }
        let _lock = self.lock()?;
        self.recover()
    }

    /// Takes the image's lock, or says who holds it.
    pub fn lock(&self) -> Result<File, StoreError> {
        lock_store(&self.dir, &self.name())
    }

    /// The points, oldest first.
    pub fn points(&self) -> Result<Vec<Point>, StoreError> {
        let path = self.path("points.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Damaged {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp = self.path(&format!("{name}.tmp"));
        self.write_atomic_with(name, |w| w.write_all(bytes).map_err(io_err(&tmp)))
    }

    /// Writes `name` through a temporary file, fsynced and renamed.
    fn write_atomic_with(
        &self,
        name: &str,
        fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let path = self.path(name);
        let tmp = self.path(&format!("{name}.tmp"));
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io_err(&tmp))?);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)
    }

    fn write_points(&self, points: &[Point]) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(points).expect("points serialize");
        self.write_atomic("points.json", &json)
    }

    /// Size, mtime and inode of the mirror: what it was when the manifest was written.
    fn stamp(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(&self.image).ok()?;
        Some(format!(
            "{} {}.{:09} {}",
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        ))
    }

    fn write_manifest(&self, m: &Manifest) -> Result<(), StoreError> {
        self.write_atomic("manifest", &m.encode())?;
        let stamp = self.stamp().unwrap_or_default();
        self.write_atomic("stamp", stamp.as_bytes())
    }

    /// The saved manifest, if the mirror was not changed behind it since (a vm started on the
    /// copy, a manual edit): a mirror changed since must be hashed again, or the blocks that
    /// changed would never be sent.
    fn saved_manifest(&self) -> Result<Option<Manifest>, StoreError> {
        let stamp = std::fs::read_to_string(self.path("stamp")).ok();
        if stamp.is_none() || stamp != self.stamp() {
            return Ok(None);
        }
        self.raw_manifest()
    }

    fn raw_manifest(&self) -> Result<Option<Manifest>, StoreError> {
        let path = self.path("manifest");
        match std::fs::read(&path) {
            Ok(bytes) => Manifest::decode(&bytes)
                .map(Some)
                .map_err(|reason| StoreError::Damaged {
                    path: path.display().to_string(),
                    reason,
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// The manifest the source must compare against (the empty one when there is no point
    /// yet), after settling an interrupted update. `reread` hashes the mirror again instead
    /// of trusting the saved manifest; blocks that changed are then sent again.
    pub fn base_manifest(&self, reread: bool) -> Result<(Manifest, Option<String>), StoreError> {
        let _lock = self.lock()?;
        let note = self.recover()?;
        if self.points()?.is_empty() {
            return Ok((Manifest::empty(), note));
        }
        let saved = self.saved_manifest()?;
        let m = match saved {
            Some(m) if !reread => m,
            _ => {
                let m = Manifest::of_file(&self.image).map_err(io_err(&self.image))?;
                if saved.as_ref() != Some(&m) {
                    self.write_manifest(&m)?;
                }
                m
            }
        };
        Ok((m, note))
    }

    /// Settles an update that was interrupted: thrown away when it had not committed (the
    /// mirror was not touched), completed when it had. Call with the lock held.
    fn recover(&self) -> Result<Option<String>, StoreError> {
        let staging = self.path("staging");
        let mut note = self.finish_roll_back()?;
        if staging.exists() {
            std::fs::remove_file(&staging).map_err(io_err(&staging))?;
            note = Some("an interrupted first copy was thrown away".to_string());
        }
        let path = self.path("journal");
        if !path.exists() {
            let pending = self.path("delta.pending");
            if pending.exists() {
                std::fs::remove_file(&pending).map_err(io_err(&pending))?;
            }
            return Ok(note);
        }
        let journal = read_journal(&path)?;
        match journal.commit.clone() {
            Some(commit) => {
                let id = commit.point.id.clone();
                self.roll_forward(&path, &journal, commit)?;
                Ok(Some(format!(
                    "an interrupted update was completed: point {id}"
                )))
            }
            None => {
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
        let recovered = self.recover()?;
        let stream_err = |reason: String| StoreError::Stream {
            image: self.name(),
            reason,
        };
        let header = wire::read_header(input).map_err(stream_err)?;
        let points = self.points()?;
        let fresh = points.is_empty();
        let base = if fresh {
            Manifest::empty()
        } else {
            match self.saved_manifest()? {
                Some(m) => m,
                None => Manifest::of_file(&self.image).map_err(io_err(&self.image))?,
            }
        };
        if header.base_size != base.size || header.base_whole != base.whole {
            return Err(stream_err(
                "the copy changed since the source compared against it; run the replication again"
                    .into(),
            ));
        }
        let received = if fresh {
            self.receive_fresh(input, &header, &new)
        } else {
            self.receive_update(input, &header, &base, points.last(), &new, stop_at_commit)
        };
        let mut applied = received.inspect_err(|_| {
            // What a failed update left (a partial first copy, or a journal without its
            // commit) is thrown away now, a committed one completed, so that it does not hold
            // the recovery host's space until the next run (a full disk is a common cause).
            let _ = self.recover();
        })?;
        applied.recovered = recovered;
        applied.point.duration_ms = began.elapsed().as_millis() as u64;
        // The duration is known only now: record it (the point itself is already safe).
        let mut points = self.points()?;
        if let Some(p) = points.iter_mut().find(|p| p.id == applied.point.id) {
            p.duration_ms = applied.point.duration_ms;
            self.write_points(&points)?;
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
                        start_writeback(&f);
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
                expected: hex(&whole),
                got: hex(&got),
            });
        }
        f.sync_all().map_err(io_err(&staging))?;
        drop(f);
        std::fs::rename(&staging, &self.image).map_err(io_err(&self.image))?;
        if let Some(parent) = self.image.parent() {
            sync_dir(parent)?;
        }
        let manifest = Manifest {
            size: header.size,
            whole,
            cvs,
        };
        self.write_manifest(&manifest)?;
        let point = Point {
            id: self.unique_id(&new.id)?,
            taken_at: new.taken_at,
            source: new.source.clone(),
            size: header.size,
            blake3: hex(&whole),
            verified: Verified::Yes,
            checked_at: Some(Utc::now()),
            received_bytes: received,
            duration_ms: 0,
        };
        self.write_points(std::slice::from_ref(&point))?;
        Ok(Applied {
            point,
            blocks: n,
            dropped: Vec::new(),
            recovered: None,
        })
    }

    fn receive_update(
        &self,
        input: &mut impl Read,
        header: &wire::Header,
        base: &Manifest,
        prev: Option<&Point>,
        new: &NewPoint,
        stop_at_commit: bool,
    ) -> Result<Applied, StoreError> {
        let stream_err = |reason: String| StoreError::Stream {
            image: self.name(),
            reason,
        };
        let mirror = File::open(&self.image).map_err(io_err(&self.image))?;
        let jpath = self.path("journal");
        let jfile = File::create(&jpath).map_err(io_err(&jpath))?;
        let mut j = BufWriter::with_capacity(1 << 20, jfile);
        let werr = io_err(&jpath);
        j.write_all(JOURNAL_MAGIC).map_err(&werr)?;
        // The blocks this update replaces, as the reverse delta of the previous point.
        let dpath = self.path("delta.pending");
        let dfile = File::create(&dpath).map_err(io_err(&dpath))?;
        let mut d = BufWriter::with_capacity(1 << 20, dfile);
        let derr = io_err(&dpath);
        d.write_all(DELTA_MAGIC).map_err(&derr)?;
        d.write_all(&base.size.to_le_bytes()).map_err(&derr)?;
        let old_n = blocks::count(base.size);
        let new_n = blocks::count(header.size);
        // Blocks beyond the base come in order (checked by `Records`): the hashes grow with
        // what arrives, never with what the header announces.
        let mut records = wire::Records::new(header, old_n);
        let mut cvs = base.cvs.clone();
        cvs.truncate(new_n as usize);
        let mut single = None;
        let mut received = 0u64;
        let mut changed = 0u64;
        let mut written = 0u64;
        let mut old_block = vec![0u8; BLOCK];
        let mut write_old = |d: &mut BufWriter<File>, idx: u64| -> Result<u64, StoreError> {
            let len = blocks::block_len(base.size, idx);
            if len == 0 {
                return Ok(0);
            }
            let buf = &mut old_block[..len];
            mirror
                .read_exact_at(buf, idx * BLOCK as u64)
                .map_err(io_err(&self.image))?;
            d.write_all(&idx.to_le_bytes()).map_err(io_err(&dpath))?;
            put_block(d, buf).map_err(io_err(&dpath))?;
            Ok(len as u64)
        };
        let whole = loop {
            let (idx, data) = match records.next(input).map_err(stream_err)? {
                Record::Data { idx, data } => {
                    received += data.len() as u64;
                    (idx, data)
                }
                Record::Zero { idx, len } => (idx, vec![0u8; len as usize]),
                Record::End { whole } => break whole,
            };
            let c = blocks::cv(idx, &data);
            if new_n == 1 {
                single = Some(*blake3::hash(&data).as_bytes());
            }
            match cvs.get_mut(idx as usize) {
                Some(slot) => *slot = c,
                None => cvs.push(c),
            }
            changed += 1;
            j.write_all(&[1]).map_err(&werr)?;
            j.write_all(&idx.to_le_bytes()).map_err(&werr)?;
            j.write_all(&c).map_err(&werr)?;
            put_block(&mut j, &data).map_err(&werr)?;
            let before = written;
            written += data.len() as u64 + write_old(&mut d, idx)?;
            if written / WRITEBACK_EVERY != before / WRITEBACK_EVERY {
                start_writeback(j.get_ref());
                start_writeback(d.get_ref());
            }
        };
        // Blocks cut off by a smaller image are kept for the previous point.
        for idx in new_n..old_n {
            write_old(&mut d, idx)?;
        }
        if new_n == 1 && single.is_none() {
            let mut buf = vec![0u8; blocks::block_len(header.size, 0)];
            mirror
                .read_exact_at(&mut buf, 0)
                .map_err(io_err(&self.image))?;
            single = Some(*blake3::hash(&buf).as_bytes());
        }
        let got = blocks::root(&cvs)
            .or(single)
            .unwrap_or(*blake3::hash(b"").as_bytes());
        if got != whole {
            drop((j, d));
            let _ = std::fs::remove_file(&jpath);
            let _ = std::fs::remove_file(&dpath);
            return Err(StoreError::Mismatch {
                image: self.name(),
                expected: hex(&whole),
                got: hex(&got),
            });
        }
        let commit = Commit {
            point: Point {
                id: self.unique_id(&new.id)?,
                taken_at: new.taken_at,
                source: new.source.clone(),
                size: header.size,
                blake3: hex(&whole),
                verified: Verified::Yes,
                checked_at: Some(Utc::now()),
                received_bytes: received,
                duration_ms: 0,
            },
            prev: prev.map(|p| p.id.clone()),
            old_size: base.size,
            new_whole: hex(&whole),
            retention: new.retention.max(1),
        };
        // The replaced blocks are durable before the commit record can be.
        let dfile = d.into_inner().map_err(|e| derr(e.into_error()))?;
        dfile.sync_all().map_err(&derr)?;
        drop(dfile);
        sync_dir(&self.dir)?;
        let json = serde_json::to_vec(&commit).expect("commit serializes");
        j.write_all(&[9]).map_err(&werr)?;
        j.write_all(&(json.len() as u32).to_le_bytes())
            .map_err(&werr)?;
        j.write_all(&json).map_err(&werr)?;
        j.write_all(JOURNAL_END).map_err(&werr)?;
        let jfile = j.into_inner().map_err(|e| werr(e.into_error()))?;
        jfile.sync_all().map_err(&werr)?;
        drop(jfile);
        sync_dir(&self.dir)?;
        // Committed: from here on the update is completed, now or by the next run.
        let point = commit.point.clone();
        if stop_at_commit {
            return Ok(Applied {
                point,
                blocks: changed,
                dropped: Vec::new(),
                recovered: None,
            });
        }
        let journal = read_journal(&jpath)?;
        let dropped = self.roll_forward(&jpath, &journal, commit)?;
        Ok(Applied {
            point,
            blocks: changed,
            dropped,
            recovered: None,
        })
    }

    /// Completes a committed update: the previous point's delta, the mirror, the manifest,
    /// the points, then the journal goes. Every stage can be done again.
    fn roll_forward(
        &self,
        jpath: &Path,
        journal: &Journal,
        commit: Commit,
    ) -> Result<Vec<String>, StoreError> {
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
        // 2. The mirror.
        let mirror = OpenOptions::new()
            .write(true)
            .open(&self.image)
            .map_err(io_err(&self.image))?;
        let mut written = 0u64;
        for (idx, _, slot) in &journal.new {
            let off = idx * BLOCK as u64;
            match slot.at {
                Some(_) => {
                    mirror
                        .write_all_at(&read_slot(slot)?, off)
                        .map_err(io_err(&self.image))?;
                    written += u64::from(slot.len);
                    if written % WRITEBACK_EVERY < u64::from(slot.len) {
                        start_writeback(&mirror);
                    }
                }
                None => {
                    punch_hole(&mirror, off, u64::from(slot.len)).map_err(io_err(&self.image))?
                }
            }
        }
        mirror
            .set_len(commit.point.size)
            .map_err(io_err(&self.image))?;
        mirror.sync_all().map_err(io_err(&self.image))?;
        // 3. The manifest.
        let mut m = self.raw_manifest()?.unwrap_or_else(|| Manifest {
            size: commit.old_size,
            whole: [0; 32],
            cvs: Vec::new(),
        });
        m.cvs
            .resize(blocks::count(commit.point.size) as usize, [0; 32]);
        for (idx, c, _) in &journal.new {
            m.cvs[*idx as usize] = *c;
        }
        m.size = commit.point.size;
        m.whole = parse_hex(&commit.new_whole).unwrap_or([0; 32]);
        self.write_manifest(&m)?;
        // 4. The points, within retention.
        let mut points = self.points()?;
        if !points.iter().any(|p| p.id == commit.point.id) {
            points.push(commit.point.clone());
        }
        let mut dropped = Vec::new();
        while points.len() > commit.retention as usize {
            let old = points.remove(0);
            dropped.push(old.id);
        }
        self.write_points(&points)?;
        for id in &dropped {
            let p = self.path(&format!("deltas/{id}.rdelta"));
            let _ = std::fs::remove_file(p);
        }
        std::fs::remove_file(jpath).map_err(io_err(jpath))?;
        sync_dir(&self.dir)?;
        Ok(dropped)
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
            files.push((File::open(&path).map_err(io_err(&path))?, path));
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
                            Some(at) => file.read_exact_at(dst, at).map_err(io_err(path))?,
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

    /// The BLAKE3 of point `k` and, for the newest, the manifest of the mirror as it is.
    fn hash_point(
        &self,
        points: &[Point],
        k: usize,
    ) -> Result<([u8; 32], Option<Manifest>), StoreError> {
        if k + 1 == points.len() {
            let m = Manifest::of_file(&self.image).map_err(io_err(&self.image))?;
            return Ok((m.whole, Some(m)));
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
        let mut points = self.points()?;
        let which: Vec<usize> = match only {
            Some(id) => vec![self.find(&points, id)?],
            None => (0..points.len()).collect(),
        };
        let mut out = Vec::new();
        for k in which {
            let (whole, manifest) = self.hash_point(&points, k)?;
            let good = hex(&whole) == points[k].blake3;
            if let Some(m) = manifest {
                // The next replication must see the mirror as it really is, to mend it.
                if self.saved_manifest()?.as_ref() != Some(&m) {
                    self.write_manifest(&m)?;
                }
            }
            points[k].verified = if good { Verified::Yes } else { Verified::Bad };
            points[k].checked_at = Some(Utc::now());
            out.push((points[k].id.clone(), good));
        }
        self.write_points(&points)?;
        Ok(out)
    }

    /// Writes point `id` to `out` (sparse), and checks its hash.
    pub fn restore(&self, id: &str, out: &Path) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        self.recover()?;
        let points = self.points()?;
        let k = self.find(&points, id)?;
        self.restore_unlocked(&points, k, out)
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
        if hex(&whole) != points[k].blake3 {
            return Err(StoreError::Mismatch {
                image: format!("{} (point {id} restored to {})", self.name(), out.display()),
                expected: points[k].blake3.clone(),
                got: hex(&whole),
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
        let points = self.points()?;
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
        let tmp = self.path("rollback.img");
        self.restore_unlocked(&points, k, &tmp)?;
        let intent = RollBackIntent {
            point: id.to_string(),
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
        if tmp.exists() {
            std::fs::rename(&tmp, &self.image).map_err(io_err(&self.image))?;
            sync_dir(self.image.parent().unwrap_or(Path::new(".")))?;
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
                    let mut json = vec![0u8; u32::from_le_bytes(l) as usize];
                    c.exact(&mut json)?;
                    let mut end = [0u8; 8];
                    c.exact(&mut end)?;
                    if &end == JOURNAL_END && c.at == total {
                        j.commit = serde_json::from_slice(&json).ok();
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
    let f = File::open(path).map_err(io_err(path))?;
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
        slots.push((idx, slot));
    }
    Ok((size, slots))
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Makes a range of the file a hole (it reads as zeros and takes no space).
fn punch_hole(f: &File, off: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: plain syscall on an open descriptor.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // A file system without holes: write the zeros.
        return f.write_all_at(&vec![0u8; len as usize], off);
    }
    Err(e)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new point named `id`, keeping 5.
    fn point(id: &str) -> NewPoint {
        NewPoint {
            id: id.into(),
            taken_at: Utc::now(),
            source: "src".into(),
            retention: 5,
        }
    }

    /// The stream the source helper sends for `src` against `store`'s manifest.
    fn stream_of(src: &Path, store: &Store) -> Vec<u8> {
        let (m, _) = store.base_manifest(false).unwrap();
        let mut out = Vec::new();
        crate::replica::helper::send(src, &m, &mut out, false).unwrap();
        out
    }

    #[test]
    fn a_damaged_copy_is_rolled_back_to_an_older_good_point_and_replication_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let store = Store::new(&dst);
        let replicate = |id: &str, content: &[u8]| {
            std::fs::write(&src, content).unwrap();
            let (m, _) = store.base_manifest(false).unwrap();
            let mut out = Vec::new();
            crate::replica::helper::send(&src, &m, &mut out, false).unwrap();
            let new = NewPoint {
                id: id.into(),
                taken_at: Utc::now(),
                source: "src".into(),
                retention: 5,
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

        // The copy rots; verification marks the newest point bad, the older ones stay good.
        let mut rotten = std::fs::read(&dst).unwrap();
        rotten[5 * BLOCK + 7] ^= 0xff;
        std::fs::write(&dst, &rotten).unwrap();
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
        store.base_manifest(false).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), v2);
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p1", "p2"]);
        // One cut before its intent is thrown away: the copy was not touched.
        std::fs::write(store.path("rollback.img"), b"partial").unwrap();
        store.base_manifest(false).unwrap();
        assert!(!store.path("rollback.img").exists());
        assert_eq!(std::fs::read(&dst).unwrap(), v2);
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
        let (m, note) = store.base_manifest(false).unwrap();
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
        let (_, note) = store.base_manifest(false).unwrap();
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

    #[test]
    fn a_committed_update_whose_replaced_blocks_are_gone_leaves_the_mirror_alone() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![7u8; 3 * BLOCK]).unwrap();
        let store = Store::new(&dst);
        store
            .apply(&mut &stream_of(&src, &store)[..], point("p1"))
            .unwrap();
        let v1 = std::fs::read(&dst).unwrap();
        std::fs::write(&src, vec![8u8; 3 * BLOCK]).unwrap();
        store
            .apply_until(&mut &stream_of(&src, &store)[..], point("p2"), true)
            .unwrap();
        std::fs::remove_file(store.path("delta.pending")).unwrap();
        let err = store.base_manifest(false).unwrap_err().to_string();
        assert!(err.contains("neither here nor"), "{err}");
        assert_eq!(std::fs::read(&dst).unwrap(), v1, "the mirror was touched");
    }

    #[test]
    fn a_mirror_changed_behind_its_manifest_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![4u8; 5 * BLOCK]).unwrap();
        let store = Store::new(&dst);
        let replicate = |id: &str| {
            let (m, _) = store.base_manifest(false).unwrap();
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
        assert_eq!(replicate("p2"), 1);
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    }

    #[test]
    fn a_second_writer_is_refused_while_the_image_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(&dir.path().join("img"));
        let _held = store.lock().unwrap();
        let err = store.base_manifest(false).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }
}
