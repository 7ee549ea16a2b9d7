//! The durable journal of runs: `STATE/runs/<run-id>/journal.jsonl`, one JSON [`Event`] a line,
//! append-only, flushed to disk (fsync) at every step boundary; operator confirmations as files
//! beside it; and the lock (an OS file lock) that lets only one run change an inventory at a
//! time. Run ids are checked here before any path is made from them.
//!
//! It stores and reads back; it does not decide anything about a run.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no run `{run_id}` in {dir}")]
    NoSuchRun { run_id: String, dir: PathBuf },
    #[error(
        "`{0}` is not a run id: give a run id as `reprise runs` lists it (letters, digits, `-` and `_`), or `latest`"
    )]
    BadRunId(String),
    #[error("run `{0}` already exists")]
    RunExists(String),
    #[error("{path}:{line}: corrupt journal line: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("the journal {path} stopped recording after an earlier write failed")]
    Stopped { path: PathBuf },
    #[error(
        "another run holds the lock {path}: {}; wait for it to end, or stop it with `kill -TERM {}` on {} (it stops cleanly; `reprise resume` carries on)",
        holder.describe(), holder.pid, holder.machine
    )]
    Locked { path: PathBuf, holder: LockHolder },
    #[error(
        "another process holds the lock {path} and is writing who it is: try again in a moment"
    )]
    LockBusy { path: PathBuf },
    #[error(
        "the lock {path} was taken on another machine: {}; whether that run still goes on cannot be checked from here. \
         If no reprise runs on {} any more, remove {path} and try again",
        holder.describe(), holder.machine
    )]
    LockedElsewhere { path: PathBuf, holder: LockHolder },
    #[error(
        "the lock {path} is not a lock reprise can read ({reason}); it was left as it is: if no run is going on, \
         remove it and try again"
    )]
    LockUnreadable { path: PathBuf, reason: String },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The longest run id accepted.
const RUN_ID_MAX: usize = 128;

/// Checks that `id` can only name a run folder of the state folder: letters, digits, `-` and
/// `_` (what [`new_run_id`] makes), never a path. `latest` is resolved before this.
pub fn check_run_id(id: &str) -> Result<(), JournalError> {
    let ok = !id.is_empty()
        && id.len() <= RUN_ID_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        let shown: String = id.chars().take(RUN_ID_MAX).collect();
        Err(JournalError::BadRunId(shown))
    }
}

/// The folder of one run.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub run_id: String,
    pub path: PathBuf,
}

pub fn runs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("runs")
}

/// Whether `path` is a folder itself (a symbolic link to one does not count).
fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_dir())
}

/// Whether `path` is a regular file itself (a symbolic link to one does not count: a run's
/// journal that leads to another run's would be read, appended to and cut as this one's).
fn is_real_file(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file())
}

/// Opens a journal without following a link at its last component.
fn open_journal(options: &mut OpenOptions, path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    options.custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Makes the names in folder `dir` durable (a file or folder created, or renamed, in it):
/// without it a power cut may lose a run folder, a journal or a confirmation whose data was
/// synced.
fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync", dir))
}

impl RunDir {
    /// Creates the folder of a new run.
    pub fn create(state_dir: &Path, run_id: &str) -> Result<RunDir, JournalError> {
        check_run_id(run_id)?;
        let parent = runs_dir(state_dir);
        std::fs::create_dir_all(&parent).map_err(io("create", &parent))?;
        let path = parent.join(run_id);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(JournalError::RunExists(run_id.to_string()));
            }
            Err(e) => return Err(io("create", &path)(e)),
        }
        let confirmations = path.join("confirmations");
        std::fs::create_dir(&confirmations).map_err(io("create", &confirmations))?;
        sync_dir(&path)?;
        sync_dir(&parent)?;
        Ok(RunDir {
            run_id: run_id.to_string(),
            path,
        })
    }

    /// Opens an existing run; `latest` names the newest. Anything else must be a run id (see
    /// [`check_run_id`]): a path is refused before the file system is touched.
    pub fn open(state_dir: &Path, run_id: &str) -> Result<RunDir, JournalError> {
        let run_id = if run_id == "latest" {
            list(state_dir)?
                .pop()
                .ok_or_else(|| JournalError::NoSuchRun {
                    run_id: run_id.to_string(),
                    dir: runs_dir(state_dir),
                })?
        } else {
            check_run_id(run_id)?;
            run_id.to_string()
        };
        let path = runs_dir(state_dir).join(&run_id);
        if !is_real_dir(&path) || !is_real_file(&path.join("journal.jsonl")) {
            return Err(JournalError::NoSuchRun {
                run_id,
                dir: runs_dir(state_dir),
            });
        }
        Ok(RunDir { run_id, path })
    }

    pub fn journal_path(&self) -> PathBuf {
        self.path.join("journal.jsonl")
    }

    /// The file of a step's confirmation: the step id percent-encoded, so that two step ids
    /// never share a file (`a/b__c` and `a__b/c` are `a%2Fb__c` and `a__b%2Fc`).
    fn confirmation_path(&self, step: &str) -> PathBuf {
        self.path
            .join("confirmations")
            .join(format!("{}.json", percent_encode(step)))
    }

    /// Records an operator's confirmation of a manual step (atomically: written then renamed).
    /// The name is one line and the note lines of text: control characters (escape
    /// sequences, line breaks in a name) become spaces.
    pub fn confirm(&self, step: &str, confirmation: &Confirmation) -> Result<(), JournalError> {
        let path = self.confirmation_path(step);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let plain = |s: &str, keep: &[char]| -> String {
            s.chars()
                .map(|c| match c.is_control() && !keep.contains(&c) {
                    true => ' ',
                    false => c,
                })
                .collect::<String>()
                .trim()
                .to_string()
        };
        let confirmation = Confirmation {
            by: plain(&confirmation.by, &[]),
            note: confirmation.note.as_deref().map(|n| plain(n, &['\n'])),
            at: confirmation.at,
            asked: confirmation.asked,
        };
        let text = serde_json::to_string(&confirmation).expect("a confirmation serializes");
        let mut f = File::create(&tmp).map_err(io("write", &tmp))?;
        f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("write", &path))?;
        sync_dir(&self.path.join("confirmations"))
    }

    /// The confirmation of a manual step, once given and not yet taken by the run.
    pub fn confirmation(&self, step: &str) -> Option<Confirmation> {
        let text = std::fs::read_to_string(self.confirmation_path(step)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Takes the confirmation of a step's wait: it answers that wait only. It is moved to
    /// `confirmations/taken/` before the run journals it, so a step that waits again later
    /// (run again after a roll-back, or handed over again) waits for a new one, never passed
    /// by the old; a crash before the journal has it asks again. `None` when there is none,
    /// or it cannot be read or moved (asked again at the next look).
    pub fn take_confirmation(&self, step: &str) -> Option<Confirmation> {
        let path = self.confirmation_path(step);
        let text = std::fs::read_to_string(&path).ok()?;
        let confirmation: Confirmation = serde_json::from_str(&text).ok()?;
        let taken = self.path.join("confirmations/taken");
        std::fs::create_dir_all(&taken).ok()?;
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let name = format!("{}.{nanos}.json", percent_encode(step));
        std::fs::rename(&path, taken.join(name)).ok()?;
        let _ = sync_dir(&self.path.join("confirmations"));
        Some(confirmation)
    }

    pub fn read(&self) -> Result<Vec<Event>, JournalError> {
        read(&self.journal_path())
    }
}

/// `text` with every byte other than ASCII letters, digits, `-`, `_` and `.` written `%XX`:
/// a one-to-one file name.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Who confirmed a manual step, when, and what they noted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    pub by: String,
    pub note: Option<String>,
    pub at: DateTime<Utc>,
    /// When the wait it answers was asked (its `waiting_for_operator` event's time): it
    /// answers that wait only. `None`: written by an earlier version, taken by any wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<DateTime<Utc>>,
}

/// What was cut from the end of a journal: a line that a crash left half-written.
#[derive(Debug, Clone, PartialEq)]
pub struct TornTail {
    /// The number the torn line had.
    pub line: usize,
    /// Bytes cut.
    pub bytes: u64,
    /// Where the bytes cut were kept, beside the journal.
    pub kept_in: PathBuf,
    /// The start of what was cut, for people.
    pub excerpt: String,
}

/// Appends events to a journal. After a write fails it records nothing more: the journal
/// keeps ending with a complete event.
pub struct JournalWriter {
    file: File,
    path: PathBuf,
    /// Bytes of complete events in the file.
    len: u64,
    stopped: bool,
}

impl JournalWriter {
    /// Opens the journal of a new run.
    pub fn open(dir: &RunDir) -> Result<JournalWriter, JournalError> {
        Self::open_path(dir.journal_path())
    }

    fn open_path(path: PathBuf) -> Result<JournalWriter, JournalError> {
        let file = open_journal(OpenOptions::new().create(true).append(true), &path)
            .map_err(io("open", &path))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        let len = file.metadata().map_err(io("read", &path))?.len();
        Ok(JournalWriter {
            file,
            path,
            len,
            stopped: false,
        })
    }

    /// Opens the journal of a run to carry it on. A last line without its end (the process
    /// died while writing it) is cut off first, so that nothing is appended onto it; the bytes
    /// cut are kept beside the journal (`journal.torn-N`) and described.
    pub fn resume(dir: &RunDir) -> Result<(JournalWriter, Option<TornTail>), JournalError> {
        let path = dir.journal_path();
        let file = open_journal(OpenOptions::new().read(true).append(true), &path)
            .map_err(io("open", &path))?;
        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes).map_err(io("read", &path))?;
        let good = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut torn = None;
        if good < bytes.len() {
            let tail = &bytes[good..];
            let kept_in = (1..)
                .map(|n| dir.path.join(format!("journal.torn-{n}")))
                .find(|p| !p.exists())
                .expect("a free name");
            let mut keep = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&kept_in)
                .map_err(io("write", &kept_in))?;
            keep.write_all(tail).map_err(io("write", &kept_in))?;
            keep.sync_all().map_err(io("write", &kept_in))?;
            sync_dir(&dir.path)?;
            file.set_len(good as u64).map_err(io("repair", &path))?;
            file.sync_all().map_err(io("repair", &path))?;
            let excerpt: String = String::from_utf8_lossy(&tail[..tail.len().min(120)])
                .chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect();
            torn = Some(TornTail {
                line: bytes[..good].iter().filter(|&&b| b == b'\n').count() + 1,
                bytes: tail.len() as u64,
                kept_in,
                excerpt,
            });
        }
        Ok((
            JournalWriter {
                file,
                path,
                len: good as u64,
                stopped: false,
            },
            torn,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event as one line; at step boundaries, flushes it to disk before returning.
    /// When the write or the flush fails, the partial line is cut off (as far as the disk
    /// lets it) and nothing more is written.
    pub fn append(&mut self, event: &Event) -> Result<(), JournalError> {
        if self.stopped {
            return Err(JournalError::Stopped {
                path: self.path.clone(),
            });
        }
        let mut line = serde_json::to_string(event).expect("an event serializes");
        line.push('\n');
        let written = self
            .file
            .write_all(line.as_bytes())
            .map_err(io("write", &self.path))
            .and_then(|()| {
                if event.is_boundary() {
                    self.file.sync_data().map_err(io("sync", &self.path))
                } else {
                    Ok(())
                }
            });
        match written {
            Ok(()) => {
                self.len += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.stopped = true;
                let _ = self.file.set_len(self.len);
                let _ = self.file.sync_all();
                Err(e)
            }
        }
    }
}

/// Reads a journal. A last line without its newline (the process died while writing it) is
/// ignored; any other bad line is an error naming it.
pub fn read(path: &Path) -> Result<Vec<Event>, JournalError> {
    let (events, damage) = read_lenient(path)?;
    match damage {
        Some(e) => Err(e),
        None => Ok(events),
    }
}

/// Reads a journal as far as it can: the events before the first bad line, and the error
/// naming that line. A last line without its newline is ignored.
pub fn read_lenient(path: &Path) -> Result<(Vec<Event>, Option<JournalError>), JournalError> {
    read_events(path, true)
}

/// [`read_lenient`] without asking whether the journal is its folder's run's alone: what a
/// restore's safeguards count, of a journal moved or joined (said apart).
pub fn read_unchecked(path: &Path) -> Result<(Vec<Event>, Option<JournalError>), JournalError> {
    read_events(path, false)
}

fn read_events(
    path: &Path,
    checked: bool,
) -> Result<(Vec<Event>, Option<JournalError>), JournalError> {
    let file = File::open(path).map_err(io("read", path))?;
    let mut reader = BufReader::new(file);
    let mut events = Vec::new();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            break;
        }
        match serde_json::from_slice::<Event>(&line) {
            Ok(e) => {
                if let Some(message) = not_of_this_run(path, &events, &e).filter(|_| checked) {
                    let damage = JournalError::Corrupt {
                        path: path.to_path_buf(),
                        line: number,
                        message,
                    };
                    return Ok((events, Some(damage)));
                }
                events.push(e)
            }
            Err(e) => {
                let damage = JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: number,
                    message: e.to_string(),
                };
                return Ok((events, Some(damage)));
            }
        }
    }
    Ok((events, None))
}

/// Why event `e`, read after `before` from the journal at `path`, is not of one run's
/// journal: a journal begins with its `run_started`, has one, and one in a run's folder
/// (`runs/ID/journal.jsonl`) is that run's. A journal copied under another run's folder, or
/// two joined, is refused at that line, never carried on as another run. Pure.
fn not_of_this_run(path: &Path, before: &[Event], e: &Event) -> Option<String> {
    match (before.is_empty(), e) {
        (true, Event::RunStarted { run_id, .. }) => {
            let folder = path.parent()?;
            let in_runs = folder
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "runs");
            let named = folder.file_name()?.to_str()?;
            (in_runs && named != run_id).then(|| {
                format!(
                    "the journal of run `{run_id}` is in the folder of run `{named}` (copied or moved there?): it is not carried on or reported as another run; put it back in runs/{run_id}/, or keep a copy outside the state folder"
                )
            })
        }
        (true, _) => Some(
            "a journal begins with its run's `run_started`: this one does not (its first lines lost, or not a journal)"
                .to_string(),
        ),
        (false, Event::RunStarted { run_id, .. }) => Some(format!(
            "a second `run_started` (of run `{run_id}`): two journals joined into one are not one run"
        )),
        _ => None,
    }
}

/// The length of a journal's torn last line (no newline at its end), if it has one.
pub fn torn_tail(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let good = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    (good < bytes.len()).then(|| (bytes.len() - good) as u64)
}

/// Run ids in the state folder, oldest first (ids start with their UTC start time). Only
/// folders named as run ids, holding a journal, count.
pub fn list(state_dir: &Path) -> Result<Vec<String>, JournalError> {
    let dir = runs_dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", &dir)(e)),
    };
    let ids: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_string();
            (check_run_id(&id).is_ok()
                && is_real_dir(&e.path())
                && is_real_file(&e.path().join("journal.jsonl")))
            .then_some(id)
        })
        .collect();
    // In the order the runs started: two runs of one second (a failover, then a failback a
    // moment later) have ids that sort by their mode, and `-10` sorts before `-2`.
    let mut keyed: Vec<(Option<DateTime<Utc>>, String)> = ids
        .into_iter()
        .map(|id| (started_at(&dir.join(&id).join("journal.jsonl")), id))
        .collect();
    // By the second the id names, then the start (a journal that does not say it, being
    // written or damaged, last in its second), then the id.
    keyed.sort_by(|(a, x), (b, y)| {
        (x.get(..15), a.is_none(), a, x).cmp(&(y.get(..15), b.is_none(), b, y))
    });
    Ok(keyed.into_iter().map(|(_, id)| id).collect())
}

/// When a run started, as the first event of its journal says (`{"event":"run_started",
/// "at":"…"`, the order in which reprise writes it); `None` when it does not say.
fn started_at(journal: &Path) -> Option<DateTime<Utc>> {
    let mut head = Vec::with_capacity(256);
    File::open(journal)
        .ok()?
        .take(256)
        .read_to_end(&mut head)
        .ok()?;
    let head = String::from_utf8_lossy(&head);
    let rest = head.strip_prefix("{\"event\":\"run_started\",\"at\":\"")?;
    let at = &rest[..rest.find('"')?];
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A new run id: UTC start time and mode, unique in the state folder.
pub fn new_run_id(state_dir: &Path, now: DateTime<Utc>, mode: &str) -> String {
    let base = format!("{}-{mode}", now.format("%Y%m%d-%H%M%S"));
    let mut id = base.clone();
    let mut n = 1;
    while runs_dir(state_dir).join(&id).exists() {
        n += 1;
        id = format!("{base}-{n}");
    }
    id
}

/// The second a run began, as its id says ([`new_run_id`]); `None` for an id not made so.
pub fn run_began(run_id: &str) -> Option<DateTime<Utc>> {
    let head = run_id.get(..15)?;
    chrono::NaiveDateTime::parse_from_str(head, "%Y%m%d-%H%M%S")
        .ok()
        .map(|t| t.and_utc())
}

/// Who holds the state lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub machine: String,
    pub run_id: String,
    pub operator: String,
    pub since: DateTime<Utc>,
}

impl LockHolder {
    fn describe(&self) -> String {
        format!(
            "run `{}` by {} on {} (pid {}), since {}",
            self.run_id, self.operator, self.machine, self.pid, self.since
        )
    }
}

/// The lock on a state folder: one run at a time changes an inventory.
///
/// `STATE/runs/.lock` is locked with the OS (`flock`), so two processes can never both hold
/// it, and it says who holds it (JSON). It is never removed: released, it is emptied and
/// unlocked. A holder the OS no longer knows (its process died) left its name in it: on this
/// machine that lock is taken over and said so; a holder on another machine cannot be checked
/// from here and is refused; content that is not a lock is refused and left as it is.
#[derive(Debug)]
pub struct StateLock {
    file: File,
    /// A lock left by a process that is gone, that was taken over, to tell the operator about.
    pub replaced_stale: Option<LockHolder>,
}

impl StateLock {
    pub fn acquire(state_dir: &Path, holder: &LockHolder) -> Result<StateLock, JournalError> {
        let dir = runs_dir(state_dir);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = dir.join(".lock");
        // Never through a link: the lock is written and emptied, and a link would have that
        // done to a file elsewhere (refused as not a lock, left as it is).
        let file = {
            use std::os::unix::fs::OpenOptionsExt as _;
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
        };
        let file = match file {
            Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
            Ok(_) => {
                return Err(JournalError::LockUnreadable {
                    path,
                    reason: "it is not a regular file".into(),
                });
            }
            Err(_) if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_symlink()) => {
                return Err(JournalError::LockUnreadable {
                    path,
                    reason: "it is a symbolic link (a lock is written: never through a link)"
                        .into(),
                });
            }
            Err(e) => return Err(io("open", &path)(e)),
        };
        let read_holder = |file: &File| -> Result<Option<LockHolder>, String> {
            let bytes = read_from_start(file).map_err(|e| e.to_string())?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            serde_json::from_slice::<LockHolder>(&bytes)
                .map(Some)
                .map_err(|e| {
                    let start: String = String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
                        .chars()
                        .map(|c| if c.is_control() { '?' } else { c })
                        .collect();
                    format!("{} bytes starting {start:?}: {e}", bytes.len())
                })
        };
        // Asked again for half a second: a child forked by another thread of this process
        // shares the lock's open file until its exec closes it.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(500);
        let mut tried = file.try_lock();
        while matches!(tried, Err(std::fs::TryLockError::WouldBlock))
            && std::time::Instant::now() < until
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tried = file.try_lock();
        }
        match tried {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(match read_holder(&file) {
                    Ok(Some(other)) if other.machine != holder.machine => {
                        JournalError::LockedElsewhere {
                            path,
                            holder: other,
                        }
                    }
                    Ok(Some(other)) => JournalError::Locked {
                        path,
                        holder: other,
                    },
                    _ => JournalError::LockBusy { path },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", &path)(e)),
        }
        // Held: no process of this machine holds it. What it says is who held it last.
        let replaced_stale = match read_holder(&file) {
            Ok(None) => None,
            Ok(Some(other)) if other.machine != holder.machine => {
                return Err(JournalError::LockedElsewhere {
                    path,
                    holder: other,
                });
            }
            Ok(Some(other)) => Some(other),
            Err(reason) => return Err(JournalError::LockUnreadable { path, reason }),
        };
        let text = serde_json::to_string(holder).expect("a lock serializes");
        file.set_len(0).map_err(io("write", &path))?;
        file.write_all_at(text.as_bytes(), 0)
            .map_err(io("write", &path))?;
        file.sync_all().map_err(io("write", &path))?;
        Ok(StateLock {
            file,
            replaced_stale,
        })
    }
}

impl Drop for StateLock {
    /// Empties the lock (free), then the OS lock goes with the file.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.sync_all();
    }
}

/// The bytes of a file from its start (at most 1 MiB: a lock is a line), whatever its position.
fn read_from_start(file: &File) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = file.read_at(&mut buf, bytes.len() as u64)?;
        if n == 0 || bytes.len() > 1 << 20 {
            return Ok(bytes);
        }
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// This machine's name, for the journal and the lock.
pub fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_id_says_the_second_its_run_began() {
        let dir = tempfile::tempdir().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-12-06T03:10:26.750Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = new_run_id(dir.path(), now, "failback");
        assert_eq!(
            run_began(&id),
            Some(chrono::Timelike::with_nanosecond(&now, 0).unwrap()),
            "{id}"
        );
        assert_eq!(
            run_began("20261206-031026-failback-2").map(|t| t.timestamp()),
            Some(now.timestamp())
        );
        for bad in ["", "R1", "2026120-031026-x", "20261306-031026-failback"] {
            assert_eq!(run_began(bad), None, "{bad}");
        }
    }
    use crate::event::{RunStatus, StepStatus};

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-08-15T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// The `run_started` of run `id`.
    fn started(id: &str) -> Event {
        serde_json::from_value(serde_json::json!({
            "event": "run_started", "at": "2026-08-15T03:00:00Z", "run_id": id,
            "mode": "drill", "emergency": false, "services": [], "only": false,
            "operator": "o", "machine": "m", "version": "v", "sources_digest": "d",
            "steps": [],
        }))
        .unwrap()
    }

    /// A journal copied into another run's folder, one whose first line is not its
    /// `run_started`, and two joined into one are refused at the line that says so: never
    /// carried on, or reported, as another run.
    #[test]
    fn a_journal_is_its_own_runs_alone() {
        let state = tempfile::tempdir().unwrap();
        let write = |id: &str, events: &[Event]| {
            let dir = RunDir::create(state.path(), id).unwrap();
            let mut w = JournalWriter::open(&dir).unwrap();
            for e in events {
                w.append(e).unwrap();
            }
            dir
        };
        let finished = Event::RunFinished {
            at: at(),
            status: RunStatus::Failed,
        };
        let copied = write("r1-keep", &[started("r1"), finished.clone()]);
        let err = copied.read().unwrap_err().to_string();
        assert!(
            err.contains("journal.jsonl:1: corrupt journal line: the journal of run `r1` is in the folder of run `r1-keep`"),
            "{err}"
        );
        let joined = write("r2", &[started("r2"), finished.clone(), started("r3")]);
        let err = joined.read().unwrap_err().to_string();
        assert!(
            err.contains(
                "journal.jsonl:3: corrupt journal line: a second `run_started` (of run `r3`)"
            ),
            "{err}"
        );
        let headless = write("r4", std::slice::from_ref(&finished));
        let err = headless.read().unwrap_err().to_string();
        assert!(
            err.contains("journal.jsonl:1: corrupt journal line: a journal begins with its run's `run_started`"),
            "{err}"
        );
        let good = write("r5", &[started("r5"), finished]);
        assert_eq!(good.read().unwrap().len(), 2);
    }

    #[test]
    fn events_round_trip_and_a_torn_last_line_is_ignored() {
        let state = tempfile::tempdir().unwrap();
        let dir = RunDir::create(state.path(), "r1").unwrap();
        let mut w = JournalWriter::open(&dir).unwrap();
        let events = vec![
            started("r1"),
            Event::StepFinished {
                at: at(),
                step: "erp-db/start".into(),
                attempt: 1,
                status: StepStatus::Done,
                duration_ms: 1200,
                message: None,
            },
            Event::RunFinished {
                at: at(),
                status: RunStatus::Succeeded,
            },
        ];
        for e in &events {
            w.append(e).unwrap();
        }
        drop(w);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.journal_path())
            .unwrap();
        f.write_all(b"{\"event\":\"step_sta").unwrap();
        assert_eq!(dir.read().unwrap(), events);
        assert_eq!(RunDir::open(state.path(), "latest").unwrap().run_id, "r1");
    }

    /// Runs listed in the order they started, whatever their ids: two runs of one second
    /// (a failover, then a failback a moment later) and a tenth run of a second; `latest` is
    /// the run that started last.
    #[test]
    fn runs_are_listed_in_the_order_they_started() {
        let state = tempfile::tempdir().unwrap();
        let start = |id: &str, mode: &str, at: &str| {
            let dir = RunDir::create(state.path(), id).unwrap();
            let event: Event = serde_json::from_value(serde_json::json!({
                "event": "run_started", "at": at, "run_id": id, "mode": mode,
                "emergency": false, "services": [], "only": false, "operator": "o",
                "machine": "m", "version": "v", "sources_digest": "d", "steps": [],
            }))
            .unwrap();
            let mut w = JournalWriter::open(&dir).unwrap();
            w.append(&event).unwrap();
        };
        start(
            "20261204-122046-failover",
            "failover",
            "2026-12-04T12:20:46.100Z",
        );
        start(
            "20261204-122046-failback",
            "failback",
            "2026-12-04T12:20:46.900Z",
        );
        assert_eq!(
            RunDir::open(state.path(), "latest").unwrap().run_id,
            "20261204-122046-failback"
        );
        start(
            "20261204-122047-drill-2",
            "drill",
            "2026-12-04T12:20:47.100Z",
        );
        start(
            "20261204-122047-drill-10",
            "drill",
            "2026-12-04T12:20:47.500Z",
        );
        // A journal that does not start as reprise writes one (being written, or damaged)
        // sorts last in its second.
        let odd = RunDir::create(state.path(), "20261204-122047-drill").unwrap();
        std::fs::write(
            odd.journal_path(),
            "{\"at\":\"2026-12-04T12:20:47.900Z\"}\n",
        )
        .unwrap();
        assert_eq!(
            list(state.path()).unwrap(),
            [
                "20261204-122046-failover",
                "20261204-122046-failback",
                "20261204-122047-drill-2",
                "20261204-122047-drill-10",
                "20261204-122047-drill",
            ]
        );
    }

    #[test]
    fn a_corrupt_line_is_named() {
        let state = tempfile::tempdir().unwrap();
        let dir = RunDir::create(state.path(), "r1").unwrap();
        let head = serde_json::to_string(&started("r1")).unwrap();
        std::fs::write(dir.journal_path(), format!("{head}\n{{\"event\":\"run_finished\",\"at\":\"2026-08-15T03:00:00Z\",\"status\":\"failed\"}}\nnot json\n")).unwrap();
        let err = dir.read().unwrap_err().to_string();
        assert!(
            err.contains("journal.jsonl:3: corrupt journal line"),
            "{err}"
        );
    }

    fn holder(run_id: &str) -> LockHolder {
        LockHolder {
            pid: std::process::id(),
            machine: machine_name(),
            run_id: run_id.into(),
            operator: "nadia".into(),
            since: at(),
        }
    }

    #[test]
    fn lock_is_exclusive_and_stale_locks_are_taken_over() {
        let state = tempfile::tempdir().unwrap();
        let me = holder("r1");
        let lock = StateLock::acquire(state.path(), &me).unwrap();
        assert_eq!(lock.replaced_stale, None);
        let err = StateLock::acquire(state.path(), &holder("r2")).unwrap_err();
        assert!(
            matches!(err, JournalError::Locked { .. })
                && err.to_string().contains("run `r1` by nadia"),
            "{err}"
        );
        assert!(err.to_string().contains("kill -TERM"), "{err}");
        drop(lock);
        // Released: free for the next run, and the file stays.
        let path = state.path().join("runs/.lock");
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        let lock = StateLock::acquire(state.path(), &holder("r2")).unwrap();
        assert_eq!(lock.replaced_stale, None);
        drop(lock);
        // A lock left by a process that is gone (its name still in the file, no OS lock).
        let dead = LockHolder {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        std::fs::write(&path, serde_json::to_string(&dead).unwrap()).unwrap();
        let lock = StateLock::acquire(state.path(), &me).unwrap();
        assert_eq!(lock.replaced_stale, Some(dead));
    }

    #[test]
    fn two_takers_never_both_hold_the_lock() {
        let state = tempfile::tempdir().unwrap();
        let holders = std::sync::atomic::AtomicUsize::new(0);
        let most = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (state, holders, most) = (state.path(), &holders, &most);
                s.spawn(move || {
                    for i in 0..200 {
                        if let Ok(lock) = StateLock::acquire(state, &holder(&format!("r{t}-{i}"))) {
                            use std::sync::atomic::Ordering::SeqCst;
                            let now = holders.fetch_add(1, SeqCst) + 1;
                            most.fetch_max(now, SeqCst);
                            std::thread::yield_now();
                            holders.fetch_sub(1, SeqCst);
                            drop(lock);
                        }
                    }
                });
            }
        });
        assert_eq!(most.into_inner(), 1);
    }

    #[test]
    fn a_lock_that_is_not_one_is_left_as_it_is_and_refused() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(state.path().join("runs")).unwrap();
        let path = state.path().join("runs/.lock");
        std::fs::write(&path, "garbage\x01").unwrap();
        let err = StateLock::acquire(state.path(), &holder("r1")).unwrap_err();
        assert!(matches!(err, JournalError::LockUnreadable { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("not a lock reprise can read") && text.contains("remove it"),
            "{text}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"garbage\x01");
        // A link, to a file that looks free (whitespace) or to none: never written through.
        std::fs::remove_file(&path).unwrap();
        let elsewhere = state.path().join("elsewhere.txt");
        for there in [true, false] {
            let _ = std::fs::remove_file(&elsewhere);
            if there {
                std::fs::write(&elsewhere, "   \n\t\n").unwrap();
            }
            std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
            let err = StateLock::acquire(state.path(), &holder("r1")).unwrap_err();
            assert!(err.to_string().contains("symbolic link"), "{err}");
            match there {
                true => assert_eq!(std::fs::read(&elsewhere).unwrap(), b"   \n\t\n"),
                false => assert!(!elsewhere.exists()),
            }
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn a_lock_taken_on_another_machine_is_refused_with_how_to_clear_it() {
        let state = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(state.path().join("runs")).unwrap();
        let path = state.path().join("runs/.lock");
        let other = LockHolder {
            machine: "pra-orchestrator".into(),
            pid: 4242,
            ..holder("r0")
        };
        let text = serde_json::to_string(&other).unwrap();
        std::fs::write(&path, &text).unwrap();
        let err = StateLock::acquire(state.path(), &holder("r1")).unwrap_err();
        assert!(matches!(err, JournalError::LockedElsewhere { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("pra-orchestrator")
                && message.contains(&format!("remove {}", path.display())),
            "{message}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    /// A run whose journal is a link (to another run's journal) is no run: it is never read,
    /// appended to or cut as this one's.
    #[test]
    fn a_journal_that_is_a_link_is_never_taken_for_a_run_s() {
        let state = tempfile::tempdir().unwrap();
        let first = RunDir::create(state.path(), "20261128-031000-drill").unwrap();
        let mut w = JournalWriter::open(&first).unwrap();
        w.append(&Event::RunFinished {
            at: at(),
            status: RunStatus::Failed,
        })
        .unwrap();
        drop(w);
        let before = std::fs::read(first.journal_path()).unwrap();
        let other = RunDir::create(state.path(), "20261128-041000-failover").unwrap();
        std::os::unix::fs::symlink(first.journal_path(), other.journal_path()).unwrap();
        assert!(matches!(
            RunDir::open(state.path(), "20261128-041000-failover"),
            Err(JournalError::NoSuchRun { .. })
        ));
        assert_eq!(list(state.path()).unwrap(), ["20261128-031000-drill"]);
        // Even opened by its path, it is not written through.
        assert!(JournalWriter::open(&other).is_err());
        assert!(JournalWriter::resume(&other).is_err());
        assert_eq!(std::fs::read(first.journal_path()).unwrap(), before);
    }

    #[test]
    fn confirmations_are_files_any_process_can_write() {
        let state = tempfile::tempdir().unwrap();
        let dir = RunDir::create(state.path(), "r1").unwrap();
        assert_eq!(dir.confirmation("power/generators"), None);
        let c = Confirmation {
            by: "karim".into(),
            note: Some("both containers".into()),
            at: at(),
            asked: None,
        };
        dir.confirm("power/generators", &c).unwrap();
        assert_eq!(dir.confirmation("power/generators"), Some(c.clone()));
        // Each step id has its own file: these two once shared one.
        dir.confirm("a/b__c", &c).unwrap();
        assert_eq!(dir.confirmation("a/b__c"), Some(c));
        assert_eq!(dir.confirmation("a__b/c"), None);
        let names: Vec<String> = std::fs::read_dir(dir.path.join("confirmations"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(names.contains(&"a%2Fb__c.json".to_string()), "{names:?}");
    }

    #[test]
    fn run_ids_are_checked_before_any_path_is_made() {
        let state = tempfile::tempdir().unwrap();
        RunDir::create(state.path(), "20261128-031000-drill").unwrap();
        std::fs::write(
            state
                .path()
                .join("runs/20261128-031000-drill/journal.jsonl"),
            "",
        )
        .unwrap();
        // A journal outside the state folder, and a run folder that is a link to it.
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(outside.path().join("runs/evil")).unwrap();
        std::fs::write(outside.path().join("runs/evil/journal.jsonl"), "").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("runs/evil"),
            state.path().join("runs/linked"),
        )
        .unwrap();
        for bad in [
            "../../outside/runs/evil",
            "/tmp",
            "a/b",
            "..",
            ".lock",
            "",
            "run id",
            "é",
        ] {
            let err = RunDir::open(state.path(), bad).unwrap_err();
            assert!(matches!(err, JournalError::BadRunId(_)), "{bad:?}: {err}");
        }
        assert!(matches!(
            RunDir::open(state.path(), "linked").unwrap_err(),
            JournalError::NoSuchRun { .. }
        ));
        assert_eq!(list(state.path()).unwrap(), ["20261128-031000-drill"]);
        assert_eq!(
            RunDir::open(state.path(), "latest").unwrap().run_id,
            "20261128-031000-drill"
        );
        assert!(RunDir::create(state.path(), "../x").is_err());
    }

    #[test]
    fn resuming_cuts_a_torn_last_line_and_keeps_it_beside_the_journal() {
        let state = tempfile::tempdir().unwrap();
        let dir = RunDir::create(state.path(), "r1").unwrap();
        let first = started("r1");
        let mut w = JournalWriter::open(&dir).unwrap();
        w.append(&first).unwrap();
        drop(w);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.journal_path())
            .unwrap();
        f.write_all(b"{\"event\":\"step_started\",\"at\":\"")
            .unwrap();
        drop(f);
        assert_eq!(torn_tail(&dir.journal_path()), Some(30));
        let (mut w, torn) = JournalWriter::resume(&dir).unwrap();
        let torn = torn.expect("the torn line is found");
        assert_eq!((torn.line, torn.bytes), (2, 30));
        assert_eq!(
            std::fs::read(&torn.kept_in).unwrap(),
            b"{\"event\":\"step_started\",\"at\":\""
        );
        assert!(torn.excerpt.starts_with("{\"event\":\"step_started"));
        let next = Event::RunFinished {
            at: at(),
            status: RunStatus::Succeeded,
        };
        w.append(&next).unwrap();
        assert_eq!(dir.read().unwrap(), vec![first, next]);
        // A journal that ends well needs no repair.
        let (_, torn) = JournalWriter::resume(&dir).unwrap();
        assert_eq!(torn, None);
    }

    #[test]
    fn a_failed_write_stops_the_journal_at_its_last_complete_event() {
        let mut w = JournalWriter::open_path(PathBuf::from("/dev/full")).unwrap();
        let event = Event::RunFinished {
            at: at(),
            status: RunStatus::Failed,
        };
        let err = w.append(&event).unwrap_err();
        assert!(err.to_string().contains("/dev/full"), "{err}");
        let err = w.append(&event).unwrap_err();
        assert!(matches!(err, JournalError::Stopped { .. }), "{err}");
    }
}
