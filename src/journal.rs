//! The durable journal of runs: `STATE/runs/<run-id>/journal.jsonl`, one JSON [`Event`] a line,
//! append-only, flushed to disk (fsync) at every step boundary; operator confirmations as files
//! beside it; and the lock that lets only one run change an inventory at a time.
//!
//! It stores and reads back; it does not decide anything about a run.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
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
    #[error("run `{0}` already exists")]
    RunExists(String),
    #[error("{path}:{line}: corrupt journal line: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "another run holds the lock {path}: run `{}` by {} on {} (pid {}), since {}",
        holder.run_id, holder.operator, holder.machine, holder.pid, holder.since
    )]
    Locked { path: PathBuf, holder: LockHolder },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        what,
        path: path.to_path_buf(),
        source,
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

impl RunDir {
    /// Creates the folder of a new run.
    pub fn create(state_dir: &Path, run_id: &str) -> Result<RunDir, JournalError> {
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
        Ok(RunDir {
            run_id: run_id.to_string(),
            path,
        })
    }

    /// Opens an existing run; `latest` names the newest.
    pub fn open(state_dir: &Path, run_id: &str) -> Result<RunDir, JournalError> {
        let run_id = if run_id == "latest" {
            list(state_dir)?
                .pop()
                .ok_or_else(|| JournalError::NoSuchRun {
                    run_id: run_id.to_string(),
                    dir: runs_dir(state_dir),
                })?
        } else {
            run_id.to_string()
        };
        let path = runs_dir(state_dir).join(&run_id);
        if !path.join("journal.jsonl").is_file() {
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

    fn confirmation_path(&self, step: &str) -> PathBuf {
        self.path
            .join("confirmations")
            .join(format!("{}.json", step.replace('/', "__")))
    }

    /// Records an operator's confirmation of a manual step (atomically: written then renamed).
    pub fn confirm(&self, step: &str, confirmation: &Confirmation) -> Result<(), JournalError> {
        let path = self.confirmation_path(step);
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string(confirmation).expect("a confirmation serializes");
        let mut f = File::create(&tmp).map_err(io("write", &tmp))?;
        f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("write", &path))?;
        Ok(())
    }

    /// The confirmation of a manual step, once given.
    pub fn confirmation(&self, step: &str) -> Option<Confirmation> {
        let text = std::fs::read_to_string(self.confirmation_path(step)).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn read(&self) -> Result<Vec<Event>, JournalError> {
        read(&self.journal_path())
    }
}

/// Who confirmed a manual step, when, and what they noted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confirmation {
    pub by: String,
    pub note: Option<String>,
    pub at: DateTime<Utc>,
}

/// Appends events to a journal.
pub struct JournalWriter {
    file: File,
    path: PathBuf,
}

impl JournalWriter {
    pub fn open(dir: &RunDir) -> Result<JournalWriter, JournalError> {
        let path = dir.journal_path();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("open", &path))?;
        Ok(JournalWriter { file, path })
    }

    /// Writes one event as one line; at step boundaries, flushes it to disk before returning.
    pub fn append(&mut self, event: &Event) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(event).expect("an event serializes");
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(io("write", &self.path))?;
        if event.is_boundary() {
            self.file.sync_data().map_err(io("sync", &self.path))?;
        }
        Ok(())
    }
}

/// Reads a journal. A last line without its newline (the process died while writing it) is
/// ignored; any other bad line is an error naming it.
pub fn read(path: &Path) -> Result<Vec<Event>, JournalError> {
    let file = File::open(path).map_err(io("read", path))?;
    let mut reader = BufReader::new(file);
    let mut events = Vec::new();
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        number += 1;
        if !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<Event>(line.trim_end()) {
            Ok(e) => events.push(e),
            Err(e) => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: number,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok(events)
}

/// Run ids in the state folder, oldest first (ids start with their UTC start time).
pub fn list(state_dir: &Path) -> Result<Vec<String>, JournalError> {
    let dir = runs_dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", &dir)(e)),
    };
    let mut ids: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().join("journal.jsonl").is_file())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    ids.sort();
    Ok(ids)
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

/// Who holds the state lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub machine: String,
    pub run_id: String,
    pub operator: String,
    pub since: DateTime<Utc>,
}

/// The lock on a state folder: one run at a time changes an inventory. Released on drop.
#[derive(Debug)]
pub struct StateLock {
    path: PathBuf,
    /// A stale lock (its process is gone) that was taken over, to tell the operator about.
    pub replaced_stale: Option<LockHolder>,
}

impl StateLock {
    pub fn acquire(state_dir: &Path, holder: &LockHolder) -> Result<StateLock, JournalError> {
        let dir = runs_dir(state_dir);
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = dir.join(".lock");
        let text = serde_json::to_string(holder).expect("a lock serializes");
        let mut replaced_stale = None;
        for _ in 0..2 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(text.as_bytes()).map_err(io("write", &path))?;
                    f.sync_all().map_err(io("write", &path))?;
                    return Ok(StateLock {
                        path,
                        replaced_stale,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let existing = std::fs::read_to_string(&path).unwrap_or_default();
                    match serde_json::from_str::<LockHolder>(&existing) {
                        Ok(other) if !is_stale(&other, &holder.machine) => {
                            return Err(JournalError::Locked {
                                path,
                                holder: other,
                            });
                        }
                        // A dead process's lock, or an unreadable one from a crash mid-write.
                        other => {
                            replaced_stale = other.ok();
                            std::fs::remove_file(&path).map_err(io("remove", &path))?;
                        }
                    }
                }
                Err(e) => return Err(io("create", &path)(e)),
            }
        }
        Err(io("create", &path)(std::io::Error::other(
            "the lock keeps reappearing",
        )))
    }
}

impl Drop for StateLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A lock is stale when it was taken on this machine by a process that no longer runs.
fn is_stale(holder: &LockHolder, this_machine: &str) -> bool {
    holder.machine == this_machine && !Path::new(&format!("/proc/{}", holder.pid)).exists()
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
    use crate::event::{RunStatus, StepStatus};

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-08-15T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn events_round_trip_and_a_torn_last_line_is_ignored() {
        let state = tempfile::tempdir().unwrap();
        let dir = RunDir::create(state.path(), "r1").unwrap();
        let mut w = JournalWriter::open(&dir).unwrap();
        let events = vec![
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

    #[test]
    fn a_corrupt_line_is_named() {
        let state = tempfile::tempdir().unwrap();
        let dir = RunDir::create(state.path(), "r1").unwrap();
        std::fs::write(dir.journal_path(), "{\"event\":\"run_finished\",\"at\":\"2026-08-15T03:00:00Z\",\"status\":\"failed\"}\nnot json\n").unwrap();
        let err = dir.read().unwrap_err().to_string();
        assert!(
            err.contains("journal.jsonl:2: corrupt journal line"),
            "{err}"
        );
    }

    #[test]
    fn lock_is_exclusive_and_stale_locks_are_taken_over() {
        let state = tempfile::tempdir().unwrap();
        let me = LockHolder {
            pid: std::process::id(),
            machine: machine_name(),
            run_id: "r1".into(),
            operator: "nadia".into(),
            since: at(),
        };
        let lock = StateLock::acquire(state.path(), &me).unwrap();
        let err = StateLock::acquire(
            state.path(),
            &LockHolder {
                run_id: "r2".into(),
                ..me.clone()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("run `r1` by nadia"), "{err}");
        drop(lock);
        // A lock left by a process that is gone.
        let dead = LockHolder {
            pid: u32::MAX - 1,
            ..me.clone()
        };
        std::fs::write(
            state.path().join("runs/.lock"),
            serde_json::to_string(&dead).unwrap(),
        )
        .unwrap();
        let lock = StateLock::acquire(state.path(), &me).unwrap();
        assert_eq!(lock.replaced_stale, Some(dead));
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
        };
        dir.confirm("power/generators", &c).unwrap();
        assert_eq!(dir.confirmation("power/generators"), Some(c));
    }
}
