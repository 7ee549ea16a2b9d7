//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The output of one `reprise` run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `reprise` binary in `dir` with `args`.
pub fn reprise(dir: &Path, args: &[&str]) -> Run {
    reprise_with_env(dir, args, &[])
}

/// [`reprise`] with these environment variables set.
pub fn reprise_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("the reprise binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// [`reprise`] under `timeout 60`: a run that would go on (reach hosts, wait) fails its test
/// instead of hanging it (exit 124).
pub fn reprise_bounded(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_reprise"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("timeout (coreutils) runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Copies a folder tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The runs of the state folder `state`, in the order they started (as `reprise` orders
/// them: `latest` is the last), a run whose journal is not written yet (starting) last.
pub fn run_ids(state: &Path) -> Vec<String> {
    // The folders without a journal first, then the journals: a run whose journal appears in
    // between is then in one list or the other, never in neither.
    let folders: Vec<String> = std::fs::read_dir(state.join("runs"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir() && !e.path().join("journal.jsonl").is_file())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mut ids = reprise::journal::list(state).unwrap_or_default();
    let starting: Vec<String> = folders.into_iter().filter(|id| !ids.contains(id)).collect();
    ids.extend(starting);
    ids
}

/// A temporary copy of the small valid fixture (`inventory/` and `runbooks/`).
pub fn mini_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&root().join("tests/fixtures/mini"), dir.path());
    dir
}

/// `n` random bytes from the kernel's generator.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut data = vec![0u8; n];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut data)
        .unwrap();
    data
}

/// Holds the machine-wide lock of one lab network (127.`net`.x.x) for as long as it lives, so
/// that two test runs on one machine (two checkouts) wait for each other instead of fighting
/// over the same addresses and ports.
pub struct NetLock(#[allow(dead_code)] std::fs::File);

impl NetLock {
    pub fn take(net: u8) -> NetLock {
        use std::os::fd::AsRawFd as _;
        let path = std::env::temp_dir().join(format!("reprise-it-net-{net}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        // SAFETY: flock on a descriptor this function owns; blocks until the lock is free.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(rc, 0, "cannot lock {}", path.display());
        remove_orphan_labs();
        NetLock(file)
    }
}

/// Stops the processes of labs whose folder is gone: a test run killed before its labs were
/// brought down leaves their sshd and vm processes holding the lab's addresses, and nothing can
/// bring them down any more (their folder, with its records, was removed). A lab whose folder
/// is still there is never touched.
fn remove_orphan_labs() {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let words: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let is_lab = words
            .iter()
            .any(|w| w.ends_with("/sshd_config") || w.contains("sshd_config "))
            || words.windows(2).any(|w| w[0] == "lab" && w[1] == "serve");
        if !is_lab {
            continue;
        }
        // The lab folder its arguments name: `<tmp>/<dir>/lab/...`.
        let temp = std::env::temp_dir();
        let orphan = words.iter().flat_map(|w| w.split(' ')).any(|w| {
            let path = std::path::Path::new(w);
            let Ok(rest) = path.strip_prefix(&temp) else {
                return false;
            };
            let mut parts = rest.components();
            match (parts.next(), parts.next()) {
                (Some(top), Some(lab)) if lab.as_os_str() == "lab" => !temp.join(top).exists(),
                _ => false,
            }
        });
        if orphan {
            // SAFETY: kill(2) of a process whose lab folder is gone (see above).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// A process a test started in the background: killed (by its pid) if the test ends first.
pub struct Background(pub std::process::Child);

impl Background {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends `sig` to it.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) of the child this test started.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    /// Its exit code once it ends (-1 for a signal), within `within`.
    pub fn wait(&mut self, within: std::time::Duration) -> i32 {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "reprise did not end within {within:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The output of one `reprise` run, with its peak memory.
pub struct Measured {
    pub code: i32,
    pub stderr: String,
    pub max_rss_kib: i64,
}

/// Runs `reprise ARGS` in `dir` and reads its own peak RSS from `wait4`.
// The child is reaped by `wait4`, not by `Child::wait`.
#[allow(clippy::zombie_processes)]
pub fn measured(dir: &std::path::Path, args: &[&str]) -> Measured {
    let out = tempfile::NamedTempFile::new().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(out.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child this function spawned, which nothing else waits for.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    assert!(
        libc::WIFEXITED(status),
        "reprise did not exit: status {status}"
    );
    Measured {
        code: libc::WEXITSTATUS(status),
        stderr: std::fs::read_to_string(out.path()).unwrap(),
        max_rss_kib: usage.ru_maxrss,
    }
}

/// Fails the test, saying what to install, unless `tool FLAG` runs and succeeds (`FLAG` being
/// the tool's version option).
#[track_caller]
pub fn require_tool(tool: &str, flag: &str, install: &str) {
    let ok = Command::new(tool)
        .arg(flag)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is missing: install {install} (scripts/test.sh does)"
    );
}

/// A lab of the shipped example (`inventory/`, `runbooks/`) on network 127.`net`.x.x, in a
/// temporary folder of its own (the lab in its `lab/`), with the network's lock held; bring it
/// down with [`example_lab_down`].
pub fn example_lab_up(net: u8) -> (tempfile::TempDir, NetLock) {
    let net_lock = NetLock::take(net);
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&root().join("inventory"), &dir.path().join("inventory"));
    copy_tree(&root().join("runbooks"), &dir.path().join("runbooks"));
    let lab = dir.path().join("lab");
    let run = reprise(
        dir.path(),
        &[
            "lab",
            "up",
            "--lab-dir",
            lab.to_str().unwrap(),
            "--net",
            &net.to_string(),
        ],
    );
    assert_eq!(
        run.code, 0,
        "lab up failed (run scripts/test.sh, which installs sshd and qemu-img): {run:?}"
    );
    (dir, net_lock)
}

/// Brings down the lab of [`example_lab_up`] in `dir`.
pub fn example_lab_down(dir: &Path) {
    let lab = dir.join("lab");
    let _ = reprise(dir, &["lab", "down", "--lab-dir", lab.to_str().unwrap()]);
}

/// The primary copies of `vms` (on the example's hv-main) stop, as when their site is lost: a
/// vm still running there makes an emergency failover's health check of it a split brain.
pub fn primary_lost(lab: &Path, vms: &[&str]) {
    for vm in vms {
        let out = lab_vm(lab, "hv-main", &["stop", vm]);
        assert!(out.status.success(), "lab-vm stop {vm}: {out:?}");
    }
}

/// Runs the `lab-vm` stand-in of the lab in `lab` on `host`, as the host's sshd would.
pub fn lab_vm(lab: &Path, host: &str, args: &[&str]) -> std::process::Output {
    let dir = lab.join("hosts").join(host);
    Command::new(dir.join("bin/lab-vm"))
        .args(args)
        .env("LAB_HOST", host)
        .env("LAB_HOST_DIR", &dir)
        .env("LAB_DIR", lab)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// A process stopped with SIGSTOP (a host that no longer answers: the kernel still accepts
/// its connections), continued when this is dropped, the test's end or a panic included.
pub struct Frozen(String);

/// Stops the process `pid` until the returned guard is dropped.
pub fn freeze(pid: &str) -> Frozen {
    let pid = pid.trim().to_string();
    let stopped = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    assert!(stopped.success(), "kill -STOP {pid}");
    Frozen(pid)
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

#[path = "../../src/replica/rewriter.rs"]
pub(crate) mod rewriter;
#[allow(unused_imports)] // Not every target that includes this file uses it.
pub(crate) use rewriter::Rewriter;

/// Holds the first opening of a file by any process, from [`OpenGate::start`], until
/// `between` has run (a thing made to happen at that moment of another process's work, as
/// between the reads of two disks); every other opening goes on at once. `between` must not
/// open the file itself: that opening would wait for it.
pub(crate) struct OpenGate {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<bool>>,
}

impl OpenGate {
    pub(crate) fn start(path: &Path, between: impl FnOnce() + Send + 'static) -> OpenGate {
        let group = rewriter::watch(path, libc::FAN_OPEN_PERM);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let until = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut between = Some(between);
            while !until.load(std::sync::atomic::Ordering::Relaxed) {
                if !rewriter::wait_readable(&group, std::time::Duration::from_millis(20)) {
                    continue;
                }
                let opens = rewriter::waiting(&group);
                if !opens.is_empty()
                    && let Some(f) = between.take()
                {
                    // A panic drops `group`, which lets every opening go on.
                    f();
                }
                rewriter::let_go(&group, opens);
            }
            between.is_none()
        });
        OpenGate {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops holding: whether an opening was held (and `between` ran).
    pub(crate) fn stop(mut self) -> bool {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.thread.take().expect("stopped once").join() {
            Ok(held) => held,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for OpenGate {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
