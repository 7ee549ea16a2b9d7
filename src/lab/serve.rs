//! The processes the lab serves while up (a host's services, a vm): started as `reprise lab
//! serve` (the body is [`super::standins::serve`]), recorded as the lab's own, and stopped.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::down::{Started, record_started, running};
use super::{LabError, LabState, io};

/// Starts a lab process serving `ports` on `address` (after reading `images`): it writes
/// `run/<name>.pid` of `host` once it listens, and this function records it as
/// `run/<name>.started`. Does nothing when it already runs.
pub fn start_serve(
    state: &LabState,
    host: &str,
    name: &str,
    address: &str,
    ports: &[u16],
    images: &[PathBuf],
) -> Result<(), LabError> {
    let run_dir = state.host_dir(host).join("run");
    let pidfile = run_dir.join(format!("{name}.pid"));
    if running(&run_dir, name).is_some() {
        return Ok(());
    }
    let listen: Vec<String> = ports.iter().map(|p| format!("{address}:{p}")).collect();
    let mut cmd = Command::new(&state.exe);
    cmd.args(["lab", "serve", "--pidfile"])
        .arg(&pidfile)
        .arg("--name")
        .arg(name);
    for l in &listen {
        cmd.arg("--listen").arg(l);
    }
    for i in images {
        cmd.arg("--image").arg(i);
    }
    let log = state.host_dir(host).join(format!("{name}.log"));
    let logf = std::fs::File::create(&log).map_err(io("create", &log))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .process_group(0)
        .spawn()
        .map_err(io("start", &state.exe))?;
    record_started(&run_dir, name, child.id())?;
    // Wait until it listens (or exits with its reason in the log).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let reason = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(LabError::Command {
                command: format!("lab serve {name}"),
                stderr: format!("exited with {status}: {}", reason.trim()),
            });
        }
        let listening = listen.iter().all(|l| {
            l.parse().ok().is_some_and(|a: SocketAddr| {
                TcpStream::connect_timeout(&a, Duration::from_millis(100)).is_ok()
            })
        });
        if listening && pidfile.exists() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(LabError::Command {
                command: format!("lab serve {name}"),
                stderr: "did not listen within 10s".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops the lab process `name` of `host`, if it runs (and is still the process started).
pub fn stop_serve(state: &LabState, host: &str, name: &str) -> bool {
    let run_dir = state.host_dir(host).join("run");
    let record = run_dir.join(format!("{name}.started"));
    let Some(started) = Started::read(&record) else {
        return false;
    };
    if started.signal(Signal::TERM) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while started.runs() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(run_dir.join(format!("{name}.pid")));
    let _ = std::fs::remove_file(&record);
    true
}
