//! What a replica point is ([`Point`]: its hash, whether it is verified, how its source was
//! read) and what can go wrong with a copy ([`StoreError`]): the words shared by the metadata
//! files ([`super::meta`]), the store ([`super::store`]) and the helper protocol. Types only;
//! no IO.

use std::io;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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
    /// When the source state was captured: once its freeze or backup job was in place, never
    /// before (the id, from when the replication began, may be earlier).
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
    /// What the copy was (size, mtime, inode; for a backup set, a digest of its file list)
    /// when this point became its newest: a copy that differs was changed behind its points
    /// (a vm started on it, an edit) and no longer is this point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
    /// BLAKE3 of the vm's definition captured with this point (`definitions/<it>.def`
    /// beside the copy of the vm's first disk), when its driver captures one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// How the source was read, for a copy of the disk as the guest sees it (read through
    /// QEMU); absent for a copy of the image file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<HowRead>,
    /// Why this point must not be started from though its hash matches: its source said,
    /// once it was made, that what it holds may be torn (a guest thawed before its copy
    /// ended). Such a point is bad, and stays bad whatever a verification finds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unusable: Option<String>,
    /// The disks were read live under their driver's freeze (`replicate_reads_live`), and
    /// only its `replicate-end` says whether the freeze held through the copy; or read one
    /// after the other in a read window ([`crate::replica::window`]), closed after the last:
    /// until the orchestrator says they are of one instant ([`Point::confirm`]), the point
    /// is bad, `unusable` saying why. One whose replication never got that far (the
    /// orchestrator killed, the link cut) stays so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// A backup set's: the newest modification or status change time of its files, by the
    /// source's clock brought to the orchestrator's (the latest it may be, given how well
    /// that clock was read). Its files are read one after the other, from `taken_at` on: a
    /// point holds what was written until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_file: Option<DateTime<Utc>>,
    /// A backup set's: what the copy of its files left out that the source folder held, a
    /// line each (a folder with no file in it, a link within the set): a backup set is
    /// copied as its files, and these are made again by hand where the copy is used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<String>,
}

/// Why a point held until its disks are confirmed to be of one instant is not usable
/// ([`Point::pending`]).
pub const PENDING_WHY: &str = "its disks were never confirmed to be of one instant (the replication did not get to the end: its driver's replicate-end, for disks read live under a freeze, or its look at the disks after their reads): the copy may be torn; replicate again";

/// Whether a time some clock gave (a point's, taken by the machine that replicated it) is
/// ahead of `now`, this machine's, by more than clocks kept by NTP drift apart: its age
/// cannot be told, and it is never taken as fresh.
pub fn dated_ahead(at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    at - now > chrono::Duration::seconds(60)
}

/// Takes the oldest of a copy's `points` away while more than `retention` are left, but
/// never its newest usable point (one not bad) nor those after it, whose reverse deltas
/// rebuild it: points made since that are bad (torn, never confirmed, damaged) do not push
/// the last good one out, however many there are. The ids taken away, oldest first.
pub fn prune(points: &mut Vec<Point>, retention: usize) -> Vec<String> {
    let newest_usable = points.iter().rposition(|p| p.verified != Verified::Bad);
    let mut dropped = Vec::new();
    while points.len() > retention && newest_usable.is_none_or(|k| dropped.len() < k) {
        dropped.push(points.remove(0).id);
    }
    dropped
}

impl Point {
    /// What this point records of a dirty bitmap found missing writes
    /// ([`HowRead::missed`]): that many blocks, and no check has found none since.
    pub fn missed(&self) -> Option<u64> {
        self.read.as_ref().and_then(|r| r.missed)
    }

    /// Until when what this point holds may have been written: when it was taken, or, for a
    /// backup set, its newest file's time if later.
    pub fn written_until(&self) -> DateTime<Utc> {
        self.newest_file
            .map_or(self.taken_at, |f| f.max(self.taken_at))
    }

    /// Whether all this point holds was written by `t`: taken by then, and, for a backup
    /// set, no file of it written after.
    pub fn holds_only_before(&self, t: DateTime<Utc>) -> bool {
        self.written_until() <= t
    }

    /// Whether `other`, a point of another disk of the same vm, is this point: a replication
    /// gives every disk of a vm one id and one time (to the nanosecond). Two points of one id
    /// taken at other times come from two replications, one cut on some disks and another run
    /// within the same second: the disks at those points are not of one moment.
    pub fn same_point(&self, other: &Point) -> bool {
        self.id == other.id && self.taken_at == other.taken_at
    }

    /// Marks this point bad for good, saying `why` (see [`Point::unusable`]).
    pub fn mark_unusable(&mut self, why: &str) {
        self.verified = Verified::Bad;
        self.unusable = Some(why.to_string());
        self.checked_at = Some(chrono::Utc::now());
        // Bad for good: no confirmation makes it good again.
        self.pending = false;
    }

    /// Holds a point read live until its freeze is confirmed ([`Point::pending`]).
    pub fn mark_pending(&mut self) {
        self.verified = Verified::Bad;
        self.unusable = Some(PENDING_WHY.to_string());
        self.pending = true;
    }

    /// The freeze held: a point held only for that is good again (its hash matched when it
    /// was made, and nothing else made it bad since). Whether it was held.
    pub fn confirm(&mut self) -> bool {
        if !self.pending {
            return false;
        }
        self.verified = Verified::Yes;
        self.unusable = None;
        self.pending = false;
        true
    }

    /// Why a bad point is bad, as messages put it after its name: it `FAILED verification`,
    /// or it is unusable and why.
    pub fn bad_words(&self) -> String {
        match &self.unusable {
            Some(why) => format!("is unusable ({why})"),
            None => "FAILED verification".to_string(),
        }
    }
}

/// What a settle says of an interrupted update it completed, whose point is `unusable` when
/// the copy is not what the point says (see [`Point::unusable`]).
pub(super) fn completed_note(id: &str, unusable: Option<String>) -> String {
    match unusable {
        None => format!("an interrupted update was completed: point {id}"),
        Some(why) => {
            format!("an interrupted update was completed, and point {id} is UNUSABLE: {why}")
        }
    }
}

/// The error of an update whose point was recorded unusable (`why`) as it was completed.
pub(super) fn recorded_unusable(image: String, id: &str, why: &str) -> StoreError {
    StoreError::Damaged {
        path: image,
        reason: format!("point {id} is recorded as unusable: {why}"),
    }
}

/// How the source of a point was read: the disk as the guest sees it, through QEMU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HowRead {
    pub mode: ReadMode,
    /// Why every block was read (the first copy, a checkpoint gone, a bitmap QEMU refused,
    /// asked), when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// The source's checkpoint (a dirty bitmap in its disks) that this point is: the next
    /// replication reads only what changed since it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Read only what changed since this checkpoint: the copy's newest point, the base the
    /// changes are applied to, must be that checkpoint's (the recovery side refuses them
    /// otherwise, under the copy's lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// When libvirt made `checkpoint` (its `creationTime`, seconds since the epoch on the
    /// source's clock): a checkpoint of the same name made again later (deleted and created
    /// anew) has a bitmap that misses what was written in between, and is not read as this
    /// one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// Read whole and checked against the dirty bitmap, this many changed blocks were found
    /// that the bitmap did not mark: the bitmap missed writes. Until a check finds none, every
    /// replication of the disk reads it whole and checks it again ([`super::cbt::decide`]);
    /// a point whose read made no check keeps the count of the point before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
    /// The empty, disabled bitmap reprise added to the disk file for this point (never
    /// recording, never read), of this disk's copy alone: just before the read when its vm
    /// was stopped (the point is then of `checkpoint`, older than it), through QEMU once the
    /// backup began when it ran (QEMU writes it into the file when it stops cleanly). While
    /// the file holds it, the file is the one read, or grew from it by QEMU's writes, which
    /// the checkpoint's bitmap marks; gone, the file was put back to an older one or to
    /// another disk's (whose bitmap has the same name), or its vm was killed, and that bitmap
    /// misses what this point holds ([`super::cbt::decide`] then reads every block).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

/// Which blocks of the source were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ReadMode {
    /// Every block, hashed and compared with the copy's manifest.
    Scan,
    /// Only the blocks a dirty bitmap marks as written since the previous checkpoint.
    ChangedBlocks,
}

impl std::fmt::Display for ReadMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ReadMode::Scan => "scan",
            ReadMode::ChangedBlocks => "changed-blocks",
        })
    }
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
    #[error(
        "{image} is in use: {who}; it is not written while in use (the run that took it releases it; if that run is over, `reprise release` frees it)"
    )]
    InUse { image: String, who: String },
    #[error("{image}: {reason}")]
    Refused { image: String, reason: String },
}

pub(super) fn io_err(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |e| StoreError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// An error reading a part of a copy's history at `path` (a point's delta, what it keeps): one
/// missing or cut short is damage (the points that need it cannot be rebuilt, they are bad),
/// anything else the system's.
pub(super) fn damage_err(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |e| match e.kind() {
        io::ErrorKind::NotFound => StoreError::Damaged {
            path: path.display().to_string(),
            reason: "it is missing".into(),
        },
        io::ErrorKind::UnexpectedEof => StoreError::Damaged {
            path: path.display().to_string(),
            reason: "it is cut short".into(),
        },
        _ => io_err(path)(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(marks: &str) -> Vec<Point> {
        marks
            .chars()
            .enumerate()
            .map(|(i, m)| Point {
                id: format!("p{i}"),
                taken_at: Utc::now(),
                source: "hv-main:/a".into(),
                size: 1,
                blake3: String::new(),
                verified: if m == 'g' {
                    Verified::Yes
                } else {
                    Verified::Bad
                },
                checked_at: None,
                received_bytes: 0,
                duration_ms: 0,
                stamp: None,
                definition: None,
                read: None,
                unusable: None,
                pending: false,
                newest_file: None,
                left_out: Vec::new(),
            })
            .collect()
    }

    /// `g` a good point, `b` a bad one, oldest first: what retention leaves.
    fn left(marks: &str, retention: usize) -> (String, Vec<String>) {
        let mut points = of(marks);
        let dropped = prune(&mut points, retention);
        (points.into_iter().map(|p| p.id).collect(), dropped)
    }

    #[test]
    fn retention_keeps_the_newest_good_point_and_those_after_it() {
        assert_eq!(
            left("gggg", 2),
            ("p2p3".into(), vec!["p0".into(), "p1".into()])
        );
        assert_eq!(left("gbbb", 2), ("p0p1p2p3".into(), vec![]));
        assert_eq!(left("ggbb", 2), ("p1p2p3".into(), vec!["p0".into()]));
        // The newest point pending its confirmation, one kept.
        assert_eq!(left("gb", 1), ("p0p1".into(), vec![]));
        assert_eq!(left("ggb", 1), ("p1p2".into(), vec!["p0".into()]));
        // No good point at all: nothing to keep.
        assert_eq!(
            left("bbb", 1),
            ("p2".into(), vec!["p0".into(), "p1".into()])
        );
        assert_eq!(left("gg", 5), ("p0p1".into(), vec![]));
    }
}
