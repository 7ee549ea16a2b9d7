//! What the lab started, and stopping it: each process the lab starts is recorded by its parent
//! (pid, start time, boot id), and `lab down` signals a process only while it is still the one
//! recorded, through a pidfd. Nothing else on the machine is ever signalled.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::{LabError, LabState, io};

/// What identifies a process the lab started, recorded by its parent as soon as it started
/// (`run/NAME.started`): its pid, its start time (clock ticks after boot, field 22 of
/// `/proc/PID/stat`) and the boot. A pid alone may since belong to an unrelated process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Started {
    pid: u32,
    start: u64,
    boot: String,
}

impl Started {
    fn of(pid: u32) -> Option<Started> {
        Some(Started {
            pid,
            start: proc_start(pid)?,
            boot: boot_id()?,
        })
    }

    pub(super) fn read(path: &Path) -> Option<Started> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut f = text.split_whitespace();
        Some(Started {
            pid: f.next()?.parse().ok()?,
            start: f.next()?.parse().ok()?,
            boot: f.next()?.to_string(),
        })
    }

    /// Whether the process recorded still runs (not a zombie), and is the same process.
    pub(super) fn runs(&self) -> bool {
        Started::of(self.pid).as_ref() == Some(self)
    }

    /// Sends `signal` to the recorded process if it is still that process. The pid is pinned
    /// with a pidfd before the identity is checked, so the signal cannot reach a process
    /// that took the pid in between.
    pub(super) fn signal(&self, signal: Signal) -> bool {
        use rustix::process::{Pid, PidfdFlags, kill_process, pidfd_open, pidfd_send_signal};
        let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) else {
            return false;
        };
        let fd = match pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            // A kernel without pidfds (before 5.3): checked, then signalled.
            Err(rustix::io::Errno::NOSYS) => {
                return self.runs() && kill_process(pid, signal).is_ok();
            }
            Err(_) => return false, // gone
        };
        if !self.runs() {
            return false;
        }
        pidfd_send_signal(&fd, signal).is_ok()
    }
}

/// The start time of a running process (field 22 of `/proc/PID/stat`); `None` when it is
/// gone or a zombie.
fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    if matches!(fields.next()?, "Z" | "X") {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_string())
}

/// Records that the lab started `pid` as `name` (`run_dir/NAME.started`). A process that
/// already ended gets no record (its caller finds out why, from its log).
pub(super) fn record_started(run_dir: &Path, name: &str, pid: u32) -> Result<(), LabError> {
    let path = run_dir.join(format!("{name}.started"));
    let Some(started) = Started::of(pid) else {
        return Ok(());
    };
    let text = format!("{} {} {}\n", started.pid, started.start, started.boot);
    let tmp = path.with_extension("started.tmp");
    std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("write", &path))
}

/// The pid of the lab process `name` of a host (its `run` folder) when it still runs.
pub(crate) fn running(run_dir: &Path, name: &str) -> Option<u32> {
    let started = Started::read(&run_dir.join(format!("{name}.started")))?;
    started.runs().then_some(started.pid)
}

/// Every process the lab started that still runs (checked against what was recorded when
/// it started), with its record.
pub fn running_pids(state: &LabState) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    for id in state.hosts.keys() {
        let run = state.host_dir(id).join("run");
        let Ok(entries) = std::fs::read_dir(&run) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "started")
                && let Some(started) = Started::read(&p)
                && started.runs()
            {
                out.push((p, started.pid));
            }
        }
    }
    out.sort();
    out
}

/// Every record of a lab process (running or not) and its pid file.
fn records(state: &LabState) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for id in state.hosts.keys() {
        if let Ok(entries) = std::fs::read_dir(state.host_dir(id).join("run")) {
            out.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "started")),
            );
        }
    }
    out
}

/// Stops every process the lab started, and nothing else: a process is signalled only if it
/// is still the one recorded when the lab started it (a pid of a process that ended may have
/// been given to another one since).
pub fn down(lab: &Path) -> Result<usize, LabError> {
    let state = LabState::load(lab)?;
    let ours: Vec<Started> = records(&state)
        .iter()
        .filter_map(|p| Started::read(p))
        .filter(Started::runs)
        .collect();
    let stopped = ours.iter().filter(|p| p.signal(Signal::TERM)).count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ours.iter().any(Started::runs) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in &ours {
        p.signal(Signal::KILL);
    }
    for record in records(&state) {
        let _ = std::fs::remove_file(record.with_extension("pid"));
        let _ = std::fs::remove_file(&record);
    }
    Ok(stopped)
}
