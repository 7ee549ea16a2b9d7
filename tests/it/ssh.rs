//! The SSH transport against a real OpenSSH `sshd` (see `sshd.rs`): commands, deadlines that
//! really stop the remote process, output limits, host-key policy and failing hosts.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reprise::ssh::{
    ExecOutput, HostKeyPolicy, HostSpec, Session, SshClient, SshError, SshTransport, Transport,
    openssh,
};

use crate::sshd::{Sshd, poll_until, unique};

const CONNECT: Duration = Duration::from_secs(2);
const LIMIT: usize = 64 * 1024;

fn connect(spec: &HostSpec) -> Session {
    Session::connect(spec, HostKeyPolicy::Strict, CONNECT)
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

fn exec(session: &Session, command: &str) -> ExecOutput {
    session
        .exec(command, Duration::from_secs(10), LIMIT)
        .unwrap_or_else(|e| panic!("exec {command:?}: {e}"))
}

fn transport(sshd: &Sshd, id: &str, policy: HostKeyPolicy) -> SshTransport {
    SshTransport::new([(id.to_string(), sshd.spec(id))].into(), policy, CONNECT)
}

/// Whether a process whose command line contains `marker` runs on this machine.
fn running(marker: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", marker])
        .output()
        .expect("pgrep runs")
        .status
        .success()
}

/// A `sleep` whose command line carries a unique marker, for `pgrep -f`: a symlink to sleep.
fn marked_sleep(dir: &Path) -> (String, String) {
    let marker = unique("sleep");
    let path = dir.join(&marker);
    std::os::unix::fs::symlink("/bin/sleep", &path).unwrap();
    (marker, path.display().to_string())
}

#[test]
fn exec_reports_output_and_exit_code() {
    let sshd = Sshd::start();
    let session = connect(&sshd.spec("hv1"));
    // (command, exit code, stdout, stderr): each runs under `sh -c`, quoted as one word.
    let cases: &[(&str, i32, &str, &str)] = &[
        ("echo hello", 0, "hello\n", ""),
        ("echo out; echo err >&2", 0, "out\n", "err\n"),
        ("exit 3", 3, "", ""),
        ("echo partial; false", 1, "partial\n", ""),
        ("printf '%s|' \"it's\" 'a b' $((1+2))", 0, "it's|a b|3|", ""),
        (
            "cat /nonexistent-reprise",
            1,
            "",
            "cat: /nonexistent-reprise: No such file or directory\n",
        ),
        ("kill -TERM $$", 143, "", ""),
        ("printf 'no newline' >&2; exit 4", 4, "", "no newline"),
    ];
    for &(command, code, stdout, stderr) in cases {
        let out = exec(&session, command);
        let got = (out.exit_code, out.stdout.as_str(), out.stderr.as_str());
        assert_eq!(got, (code, stdout, stderr), "{command}");
        assert!(!out.truncated && !out.timed_out, "{command}: {out:?}");
    }
}

#[test]
fn deadline_stops_the_remote_command() {
    let sshd = Sshd::start();
    let session = connect(&sshd.spec("hv1"));
    let (marker, sleep) = marked_sleep(sshd.dir());
    let began = Instant::now();
    let out = std::thread::scope(|s| {
        let run = s.spawn(|| {
            session.exec(
                &format!("{sleep} 30; echo not reached"),
                Duration::from_secs(1),
                LIMIT,
            )
        });
        // The marker does find the remote command while it runs.
        assert!(poll_until(Duration::from_secs(5), || running(&marker)));
        run.join().unwrap().unwrap()
    });
    let took = began.elapsed();
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.exit_code, 124);
    assert_eq!(out.stdout, "");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        poll_until(Duration::from_secs(3), || !running(&marker)),
        "the remote command survived its deadline"
    );
    // The session is still usable after a timeout.
    assert_eq!(exec(&session, "echo after").stdout, "after\n");
}

#[test]
fn deadline_kills_a_command_that_ignores_term() {
    let sshd = Sshd::start();
    let session = connect(&sshd.spec("hv1"));
    let (marker, sleep) = marked_sleep(sshd.dir());
    let began = Instant::now();
    let out = session
        .exec(
            &format!("trap '' TERM; {sleep} 30"),
            Duration::from_secs(1),
            LIMIT,
        )
        .unwrap();
    let took = began.elapsed();
    // TERM at 1 s is ignored; KILL follows 5 s later.
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.exit_code, 137);
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(9),
        "took {took:?}"
    );
    assert!(poll_until(Duration::from_secs(3), || !running(&marker)));
}

#[test]
fn output_beyond_the_limit_is_drained_and_marked_truncated() {
    let sshd = Sshd::start();
    let session = connect(&sshd.spec("hv1"));
    // 2 MB on each stream, interleaved: far beyond the SSH window, so both must be drained.
    let command = "i=0; while [ $i -lt 32 ]; do head -c 65536 /dev/zero | tr '\\0' o; \
                   head -c 65536 /dev/zero | tr '\\0' e >&2; i=$((i+1)); done; echo tail";
    let out = session
        .exec(command, Duration::from_secs(20), 1000)
        .unwrap();
    assert_eq!(out.exit_code, 0, "the command ran to its end");
    assert!(out.truncated);
    assert!(!out.timed_out);
    assert_eq!(out.stdout, "o".repeat(1000));
    assert_eq!(out.stderr, "e".repeat(1000));

    let out = session
        .exec("echo 12345", Duration::from_secs(5), 6)
        .unwrap();
    assert_eq!((out.stdout.as_str(), out.truncated), ("12345\n", false));
    let out = session
        .exec("echo 123456", Duration::from_secs(5), 6)
        .unwrap();
    assert_eq!((out.stdout.as_str(), out.truncated), ("123456", true));
}

#[test]
fn transport_reuses_and_reconnects() {
    let mut sshd = Sshd::start();
    let t = transport(&sshd, "hv1", HostKeyPolicy::Strict);
    // The client's port of the connection that carried a command (from `SSH_CLIENT`).
    let port = |t: &SshTransport| {
        let out = t
            .exec("hv1", "echo $SSH_CLIENT", Duration::from_secs(5))
            .unwrap();
        out.stdout.split_whitespace().nth(1).unwrap().to_string()
    };
    let first = port(&t);
    assert_eq!(port(&t), first, "the idle session is reused");
    // A restarted host (same key) drops the idle session: the next command reconnects.
    sshd.restart(false);
    assert_ne!(port(&t), first);
    let err = t.exec("hv9", "true", Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.to_string(), "unknown host `hv9`");
}

#[test]
fn unknown_host_key_is_refused_under_strict() {
    let sshd = Sshd::start();
    std::fs::write(&sshd.known_hosts, "").unwrap();
    let marker = sshd.dir().join("executed");
    let t = transport(&sshd, "hv2", HostKeyPolicy::Strict);
    let err = t
        .exec(
            "hv2",
            &format!("touch {}", marker.display()),
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "unknown host key for hv2 ({}): {}; check it, then run with --accept-new-host-keys to trust it",
            sshd.endpoint(),
            sshd.host_fingerprint()
        )
    );
    assert!(!marker.exists(), "a command ran on an untrusted host");
    assert_eq!(std::fs::read_to_string(&sshd.known_hosts).unwrap(), "");

    // A missing known_hosts file is the same: unknown, and not created.
    std::fs::remove_file(&sshd.known_hosts).unwrap();
    let err = Session::connect(&sshd.spec("hv2"), HostKeyPolicy::Strict, CONNECT).err();
    assert!(
        matches!(err, Some(SshError::UnknownHostKey { .. })),
        "{err:?}"
    );
    assert!(!sshd.known_hosts.exists());
}

#[test]
fn unknown_host_key_is_recorded_under_accept_new() {
    let sshd = Sshd::start();
    // What the user had is kept as it was; the new key is appended.
    let before = "# my hosts\n\
                  [127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ\n";
    std::fs::write(&sshd.known_hosts, before).unwrap();
    let t = transport(&sshd, "hv2", HostKeyPolicy::AcceptNew);
    let out = t
        .exec("hv2", "echo trusted", Duration::from_secs(5))
        .unwrap();
    assert_eq!(out.stdout, "trusted\n");
    let after = std::fs::read_to_string(&sshd.known_hosts).unwrap();
    let added = after
        .strip_prefix(before)
        .unwrap_or_else(|| panic!("known_hosts was rewritten, not appended to:\n{after}"));
    let line = sshd.known_hosts_line();
    assert!(
        added.starts_with(line.trim_end()),
        "added {added:?}, expected {line:?}"
    );
    // OpenSSH itself finds the entry under its `[address]:port` name.
    let found = Command::new("ssh-keygen")
        .arg("-F")
        .arg(format!("[{}]:{}", sshd.address, sshd.port))
        .arg("-f")
        .arg(&sshd.known_hosts)
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "ssh-keygen -F does not find the entry:\n{after}"
    );

    // From now on the host is known: Strict connects.
    let session = connect(&sshd.spec("hv2"));
    assert_eq!(exec(&session, "echo again").stdout, "again\n");
    // And a second AcceptNew adds nothing.
    let t = transport(&sshd, "hv2", HostKeyPolicy::AcceptNew);
    t.exec("hv2", "true", Duration::from_secs(5)).unwrap();
    assert_eq!(std::fs::read_to_string(&sshd.known_hosts).unwrap(), after);
}

/// A changed key is refused under every policy, naming both fingerprints, running nothing and
/// leaving `known_hosts` as it was.
fn check_changed_key_refused(sshd: &mut Sshd, hash_known_hosts: bool) {
    if hash_known_hosts {
        // What Debian's `ssh` writes by default (HashKnownHosts yes).
        let status = Command::new("ssh-keygen")
            .arg("-H")
            .arg("-f")
            .arg(&sshd.known_hosts)
            .output()
            .unwrap()
            .status;
        assert!(status.success());
        let text = std::fs::read_to_string(&sshd.known_hosts).unwrap();
        assert!(text.starts_with("|1|"), "not hashed: {text}");
    }
    let old = sshd.host_fingerprint();
    connect(&sshd.spec("hv2"));
    sshd.restart(true);
    let new = sshd.host_fingerprint();
    assert_ne!(old, new);
    let known_hosts = std::fs::read_to_string(&sshd.known_hosts).unwrap();
    let marker = sshd.dir().join("executed");
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let t = transport(sshd, "hv2", policy);
        let err = t
            .exec(
                "hv2",
                &format!("touch {}", marker.display()),
                Duration::from_secs(5),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "host key of hv2 ({}) has changed: known {old}, offered {new}; refusing to connect \
                 (if the host was really reinstalled, remove its old line from {})",
                sshd.endpoint(),
                sshd.known_hosts.display()
            ),
            "{policy:?}"
        );
        assert!(
            !marker.exists(),
            "a command ran on a host whose key changed"
        );
        assert_eq!(
            std::fs::read_to_string(&sshd.known_hosts).unwrap(),
            known_hosts
        );
    }
}

#[test]
fn changed_host_key_is_always_refused() {
    check_changed_key_refused(&mut Sshd::start(), false);
}

#[test]
fn changed_host_key_is_refused_with_hashed_known_hosts() {
    check_changed_key_refused(&mut Sshd::start(), true);
}

#[test]
fn wrong_identity_fails_authentication() {
    let sshd = Sshd::start();
    let other = sshd.dir().join("other_ed25519");
    crate::sshd::keygen(&other);
    let spec = HostSpec {
        identity: Some(other),
        ..sshd.spec("hv2")
    };
    let err = Session::connect(&spec, HostKeyPolicy::Strict, CONNECT)
        .err()
        .unwrap();
    let msg = err.to_string();
    let prefix = format!(
        "authentication failed for {}@hv2 ({}): ",
        sshd.user,
        sshd.endpoint()
    );
    assert!(msg.starts_with(&prefix), "{msg}");
}

#[test]
fn connection_refused_is_quick_and_clear() {
    // A port that was free a moment ago on a loopback address: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let spec = HostSpec {
        id: "hv2".into(),
        address: "127.0.0.3".into(),
        port,
        user: "root".into(),
        known_hosts: "/nonexistent/known_hosts".into(),
        identity: None,
        refused: None,
    };
    let began = Instant::now();
    let err = Session::connect(&spec, HostKeyPolicy::Strict, CONNECT)
        .err()
        .unwrap();
    assert!(
        began.elapsed() < Duration::from_millis(500),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(
        err.to_string(),
        format!("failed to connect to hv2 (127.0.0.3:{port}): connection refused")
    );
}

#[test]
fn hung_host_fails_connect_within_its_timeout() {
    let sshd = Sshd::start();
    sshd.freeze();
    let began = Instant::now();
    let err = Session::connect(
        &sshd.spec("hv2"),
        HostKeyPolicy::Strict,
        Duration::from_secs(1),
    )
    .err()
    .unwrap();
    let took = began.elapsed();
    sshd.thaw();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(err.to_string(), "no answer from hv2 within 1s");
    // Thawed, it answers again.
    connect(&sshd.spec("hv2"));
}

#[test]
fn hung_host_fails_exec_within_its_timeout() {
    let sshd = Sshd::start();
    let session = Session::connect(
        &sshd.spec("hv2"),
        HostKeyPolicy::Strict,
        Duration::from_secs(1),
    )
    .unwrap();
    // Frozen before the command: opening the channel times out.
    sshd.freeze();
    let began = Instant::now();
    let err = session
        .exec("echo hi", Duration::from_secs(1), LIMIT)
        .unwrap_err();
    let took = began.elapsed();
    sshd.thaw();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(
        matches!(err, SshError::Hung { .. } | SshError::Session { .. }),
        "{err:?}"
    );

    // Frozen while the command runs: the local deadline (command deadline + the 5 s grace
    // before KILL + the session timeout) stops the wait.
    let session = Session::connect(
        &sshd.spec("hv2"),
        HostKeyPolicy::Strict,
        Duration::from_secs(1),
    )
    .unwrap();
    let (marker, sleep) = marked_sleep(sshd.dir());
    let began = Instant::now();
    let result = std::thread::scope(|s| {
        let run = s.spawn(|| session.exec(&format!("{sleep} 30"), Duration::from_secs(1), LIMIT));
        assert!(poll_until(Duration::from_secs(5), || running(&marker)));
        sshd.freeze();
        run.join().unwrap()
    });
    let took = began.elapsed();
    sshd.thaw();
    let err = result.unwrap_err();
    assert!(took < Duration::from_secs(9), "took {took:?}");
    assert_eq!(err.to_string(), "no answer from hv2 within 7s");
}

#[test]
fn a_frozen_host_is_given_up_at_the_commands_deadline_connection_included() {
    let sshd = Sshd::start();
    // A connect timeout longer than the command's deadline: the deadline wins.
    let t = SshTransport::new(
        [("hv2".to_string(), sshd.spec("hv2"))].into(),
        HostKeyPolicy::Strict,
        Duration::from_secs(20),
    );
    // A session kept from an earlier command, then the host freezes.
    assert_eq!(
        t.exec("hv2", "echo up", Duration::from_secs(10))
            .unwrap()
            .stdout,
        "up\n"
    );
    sshd.freeze();
    for _ in 0..2 {
        // Once through the kept session, once through a new connection.
        let began = Instant::now();
        let err = t
            .exec("hv2", "echo hi", Duration::from_secs(3))
            .unwrap_err();
        let took = began.elapsed();
        assert_eq!(err.to_string(), "no answer from hv2 within 3s");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }
    sshd.thaw();
    assert_eq!(
        t.exec("hv2", "echo back", Duration::from_secs(10))
            .unwrap()
            .stdout,
        "back\n"
    );
}

#[test]
fn a_command_that_leaves_a_process_holding_its_output_ends_with_it() {
    let sshd = Sshd::start();
    let t = transport(&sshd, "hv1", HostKeyPolicy::Strict);
    let pidfile = sshd.dir().join("escaped.pid");
    // The background process has its own session (out of reach of the deadline's kill) and
    // keeps the command's standard output and error open.
    let command = format!(
        "setsid sh -c 'echo $$ > {}; exec sleep 60' & echo started; echo note >&2",
        pidfile.display()
    );
    let began = Instant::now();
    let out = t.exec("hv1", &command, Duration::from_secs(20)).unwrap();
    let took = began.elapsed();
    assert!(poll_until(Duration::from_secs(5), || pidfile.exists()));
    let escaped = std::fs::read_to_string(&pidfile).unwrap();
    let _ = Command::new("kill").arg(escaped.trim()).status();
    assert_eq!(
        (
            out.exit_code,
            out.stdout.as_str(),
            out.stderr.as_str(),
            out.timed_out
        ),
        (0, "started\n", "note\n", false),
        "{out:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The next command runs (on a session of its own).
    assert_eq!(
        t.exec("hv1", "echo next", Duration::from_secs(10))
            .unwrap()
            .stdout,
        "next\n"
    );
}

/// Two sshd, `hv1` and `hv2`, and a transport to both.
fn two_hosts(connect_timeout: Duration) -> (Sshd, Sshd, SshTransport) {
    two_hosts_with(connect_timeout, "")
}

/// [`two_hosts`] whose sshd have `extra` configuration lines.
fn two_hosts_with(connect_timeout: Duration, extra: &str) -> (Sshd, Sshd, SshTransport) {
    let (a, b) = (Sshd::start_with(extra), Sshd::start_with(extra));
    let t = SshTransport::new(
        [
            ("hv1".to_string(), a.spec("hv1")),
            ("hv2".to_string(), b.spec("hv2")),
        ]
        .into(),
        HostKeyPolicy::Strict,
        connect_timeout,
    );
    (a, b, t)
}

#[test]
fn pipe_streams_between_hosts_and_reports_exits() {
    let (_a, b, t) = two_hosts(CONNECT);
    let copy = b.dir().join("copy");
    let write = format!("cat > {}", copy.display());
    // 3 MB: many SSH windows' worth.
    let before = reprise::ssh::PIPED_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    let out = t
        .pipe(
            "hv1",
            "head -c 3000000 /dev/zero",
            "hv2",
            &write,
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(
        (out.bytes, out.read_exit, out.write_exit),
        (3_000_000, 0, 0)
    );
    assert_eq!(std::fs::metadata(&copy).unwrap().len(), 3_000_000);
    // The progress counter saw them go (other tests may pipe at the same time: at least).
    let counted = reprise::ssh::PIPED_BYTES.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(counted >= 3_000_000, "{counted}");

    // A reading side killed by a signal is a failure, not exit 0.
    let out = t
        .pipe(
            "hv1",
            "printf abc; kill -KILL $$",
            "hv2",
            &write,
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!((out.read_exit, out.write_exit), (137, 0));
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), "abc");

    // A writing side that fails while data still comes (a full disk) ends the pipe with its
    // own errors, and the source, which would never end, is cut.
    let out = t
        .pipe(
            "hv1",
            "cat /dev/zero",
            "hv2",
            "head -c 1000 > /dev/null; echo no space left >&2; exit 7",
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(out.write_exit, 7, "{out:?}");
    assert!(out.write_failed_first, "{out:?}");
    assert!(out.stderr.contains("no space left"), "{out:?}");
}

/// A forced command (sshd's `ForceCommand`, or `command=` in `authorized_keys`) at `path`:
/// `body` after `#!/bin/sh`.
fn forced_command(path: &Path, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("ForceCommand {}", path.display())
}

/// libssh2 gives 0 when a host sends no exit status, and a host may answer 0 whatever ran (a
/// forced command that runs the command asked, or none, and exits 0): through every way a
/// command is run over libssh2 (a step's command, a command fed its input, a pipe between two
/// hosts), the code is the one the command's own end told, and a 0 without it is refused.
#[test]
fn a_host_answering_0_for_what_it_did_not_run_as_asked_is_not_believed() {
    let scripts = tempfile::tempdir().unwrap();
    // Runs what was asked, but always answers 0.
    let lying = forced_command(
        &scripts.path().join("lying"),
        "sh -c \"$SSH_ORIGINAL_COMMAND\"\nexit 0",
    );
    let (_a, b, t) = two_hosts_with(CONNECT, &lying);
    let copy = b.dir().join("copy");
    let out = t
        .exec("hv1", "echo out; exit 3", Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        (out.exit_code, out.stdout.as_str()),
        (3, "out\n"),
        "{out:?}"
    );
    let out = t
        .exec_bytes(
            "hv1",
            "cat; echo failed >&2; exit 4",
            b"in",
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(
        (out.exit_code, &out.stdout[..], out.stderr.as_str()),
        (4, &b"in"[..], "failed\n"),
        "{out:?}"
    );
    let out = t
        .exec_bytes("hv1", "cat", b"in", Duration::from_secs(10))
        .unwrap();
    assert_eq!(
        (out.exit_code, &out.stdout[..], out.stderr.as_str()),
        (0, &b"in"[..], "")
    );
    let out = t
        .pipe(
            "hv1",
            "printf abc; exit 5",
            "hv2",
            &format!("cat > {}; printf done; exit 6", copy.display()),
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!(
        (
            out.read_exit,
            out.write_exit,
            out.output.as_str(),
            out.stderr.as_str()
        ),
        (5, 6, "done", ""),
        "{out:?}"
    );
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), "abc");
    let out = t
        .pipe(
            "hv1",
            "printf abc",
            "hv2",
            &format!("cat > {}", copy.display()),
            Duration::from_secs(20),
        )
        .unwrap();
    assert_eq!((out.read_exit, out.write_exit), (0, 0), "{out:?}");

    // Runs nothing, and answers 0: no way of running a command takes that for a success.
    let none = forced_command(&scripts.path().join("none"), "exit 0");
    let (_c, _d, t) = two_hosts_with(CONNECT, &none);
    let told = |e: SshError| {
        let e = e.to_string();
        assert!(e.contains("the command's end was not told"), "{e}");
    };
    told(t.exec("hv1", "true", Duration::from_secs(10)).unwrap_err());
    told(
        t.exec_bytes("hv1", "cat", b"in", Duration::from_secs(10))
            .unwrap_err(),
    );
    told(
        t.pipe(
            "hv1",
            "printf abc",
            "hv2",
            "cat > /dev/null",
            Duration::from_secs(20),
        )
        .unwrap_err(),
    );
}

/// Bulk data over each cipher libssh2 may negotiate with an OpenSSH host: AES-GCM,
/// ChaCha20-Poly1305 (libssh2's first choice), AES-CTR with a MAC after or before encryption,
/// and AES-CBC, for older hosts. Each sshd is limited to one cipher (and MAC). A pipe decrypts
/// what the first host sends and encrypts it for the second, whose sshd checks every packet's
/// tag: a wrong key stream or tag would end the connection or change the bytes. Keys are
/// renewed on the way (each renewal sets the cipher up afresh).
#[test]
fn random_data_crosses_every_cipher_both_ways_intact() {
    // 20 MiB and 1 byte of random data (a ragged last packet), from the kernel's generator.
    let len = 20 * 1024 * 1024 + 1;
    let data = crate::common::random_bytes(len);
    let cases = [
        ("aes128-gcm@openssh.com", None),
        ("aes256-gcm@openssh.com", None),
        ("chacha20-poly1305@openssh.com", None),
        ("aes128-ctr", Some("hmac-sha2-256-etm@openssh.com")),
        ("aes256-ctr", Some("hmac-sha2-256")),
        ("aes128-cbc", Some("hmac-sha2-512")),
    ];
    for (cipher, mac) in cases {
        // DEBUG1: the sshd log says when keys are renewed (it also reaches commands' stderr).
        let mut config = format!("LogLevel DEBUG1\nCiphers {cipher}");
        if let Some(mac) = mac {
            config.push_str(&format!("\nMACs {mac}"));
        }
        let (a, b, t) = two_hosts_with(CONNECT, &config);
        let session = connect(&a.spec("hv1"));
        assert_eq!(session.ciphers(), (cipher.to_string(), cipher.to_string()));
        drop(session);

        let source = a.dir().join("random");
        std::fs::write(&source, &data).unwrap();
        let copy = b.dir().join("copy");
        let out = t
            .pipe(
                "hv1",
                &format!("cat {}", source.display()),
                "hv2",
                &format!("cat > {}", copy.display()),
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("{cipher}: {e}"));
        assert_eq!(
            (out.bytes, out.read_exit, out.write_exit),
            (len as u64, 0, 0),
            "{cipher}"
        );
        assert!(
            std::fs::read(&copy).unwrap() == data,
            "{cipher}: the copy differs"
        );
        // The test sshd renews its keys every 4 MiB (`RekeyLimit`), as OpenSSH does every GiB
        // or so of a long transfer: both directions went through several key changes.
        let rekeys = |sshd: &Sshd, way: &str| {
            let log = std::fs::read_to_string(sshd.dir().join("sshd.log")).unwrap();
            log.matches(&format!("ssh_set_newkeys: rekeying {way}"))
                .count()
        };
        assert!(
            rekeys(&a, "out") >= 3,
            "{cipher}: the sending sshd never rekeyed"
        );
        assert!(
            rekeys(&b, "in") >= 3,
            "{cipher}: the receiving sshd never rekeyed"
        );
    }
}

#[test]
fn known_hosts_markers_and_unreadable_lines_are_handled_as_ssh_does() {
    let sshd = Sshd::start();
    let line = sshd.known_hosts_line();
    // A CA line and a line libssh2 cannot read do not make the file unusable.
    std::fs::write(
        &sshd.known_hosts,
        format!(
            "# managed by hand\n@cert-authority *.school.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJXE+kkfbEI4vKaqZ/3MJo3OaWszDdt4qOSk9NxxbOjR\nnot a known_hosts line\n{line}"
        ),
    )
    .unwrap();
    let session = connect(&sshd.spec("hv2"));
    assert_eq!(exec(&session, "echo ok").stdout, "ok\n");
    drop(session);

    // The host's own key marked @revoked is refused, even under accept-new, and nothing runs.
    let mut fields = line.split_whitespace().skip(1);
    let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
    std::fs::write(
        &sshd.known_hosts,
        format!("{line}@revoked * {kind} {key}\n"),
    )
    .unwrap();
    let marker = sshd.dir().join("executed");
    let t = transport(&sshd, "hv2", HostKeyPolicy::AcceptNew);
    let err = t
        .exec(
            "hv2",
            &format!("touch {}", marker.display()),
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(matches!(err, SshError::RevokedHostKey { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("hv2") && text.contains(&sshd.host_fingerprint()),
        "{text}"
    );
    assert!(
        !marker.exists(),
        "a command ran on a host whose key is revoked"
    );
}

#[test]
fn a_command_quiet_for_longer_than_the_keepalive_interval_is_waited_for() {
    // A replication's source reads and hashes a large unchanged image before it sends
    // anything, and a verification answers only at the end: a silence longer than the
    // keepalive interval (15 s) and the connect timeout is not a dead host, the deadline
    // bounds it.
    let (_a, b, t) = two_hosts(Duration::from_secs(2));
    let copy = b.dir().join("copy");
    std::thread::scope(|scope| {
        let piped = scope.spawn(|| {
            t.pipe_with_input(
                "hv1",
                "cat > /dev/null; head -c 3000000 /dev/zero; sleep 17; printf later",
                b"manifest",
                "hv2",
                &format!("cat > {}", copy.display()),
                Duration::from_secs(60),
            )
        });
        let answered = scope.spawn(|| {
            t.exec_bytes(
                "hv2",
                "cat > /dev/null; sleep 17; printf done",
                b"request",
                Duration::from_secs(60),
            )
        });
        let out = piped.join().unwrap().unwrap();
        assert_eq!((out.read_exit, out.write_exit), (0, 0));
        let got = std::fs::read(&copy).unwrap();
        assert_eq!(got.len(), 3_000_005);
        assert!(got.ends_with(b"later"));
        let out = answered.join().unwrap().unwrap();
        assert_eq!((out.exit_code, out.stdout.as_slice()), (0, &b"done"[..]));
    });
}

/// Runs `command` on `host` through the transport's bulk client (the OpenSSH client), with
/// `input` on its standard input: (exit code, standard output), or why it was not started.
fn bulk(
    t: &SshTransport,
    host: &str,
    command: &str,
    input: &[u8],
) -> Result<(i32, Vec<u8>), SshError> {
    let mut child = t
        .bulk_process(host, command, Duration::from_secs(60))
        .expect("the OpenSSH client carries bulk streams")?;
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::scope(|s| {
        s.spawn(move || {
            let _ = stdin.write_all(input);
        });
        s.spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).unwrap();
        out
    });
    Ok((child.wait().unwrap().code().unwrap_or(-1), out))
}

/// ssh(1) started as the OpenSSH path starts it, for a host key of `key_type`, but without
/// reprise's own check first: what OpenSSH alone accepts. (exit code, standard error).
fn ssh_alone(spec: &HostSpec, key_type: &str, command: &str) -> (i32, String) {
    let out = openssh::command(spec, key_type, CONNECT, command)
        .unwrap()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// 20 MiB and 1 byte of random data through the OpenSSH client, both ways, across key
/// renewals, with the command's exit code; AES-GCM negotiated on a processor with AES
/// instructions (OpenSSH's default order otherwise); `known_hosts` left as it was.
#[test]
fn bulk_data_through_the_openssh_client_arrives_intact_both_ways() {
    let sshd = Sshd::start_with("LogLevel DEBUG1");
    let known_hosts = std::fs::read_to_string(&sshd.known_hosts).unwrap();
    let t = transport(&sshd, "hv1", HostKeyPolicy::Strict).with_client(SshClient::OpenSsh);
    let data = crate::common::random_bytes(20 * 1024 * 1024 + 1);
    let copy = sshd.dir().join("copy");
    let (code, out) = bulk(
        &t,
        "hv1",
        &format!("cat > {} && printf done", copy.display()),
        &data,
    )
    .unwrap();
    assert_eq!((code, out.as_slice()), (0, &b"done"[..]));
    assert!(std::fs::read(&copy).unwrap() == data, "the copy differs");
    let (code, out) = bulk(&t, "hv1", &format!("cat {}; exit 3", copy.display()), &[]).unwrap();
    assert_eq!(code, 3);
    assert!(out == data, "the data read back differs");

    let log = std::fs::read_to_string(sshd.dir().join("sshd.log")).unwrap();
    let expected = openssh::preferred_ciphers()
        .first()
        .copied()
        .unwrap_or("chacha20-poly1305@openssh.com");
    assert!(
        log.contains(&format!("kex: client->server cipher: {expected}")),
        "{expected} was not negotiated:\n{log}"
    );
    assert!(
        log.matches("ssh_set_newkeys: rekeying in").count() >= 3,
        "keys were never renewed"
    );
    assert_eq!(
        std::fs::read_to_string(&sshd.known_hosts).unwrap(),
        known_hosts
    );
}

/// The OpenSSH path refuses every host key reprise refuses, with reprise's own error (its
/// check comes first), and ssh(1) alone, started as that path starts it, refuses it too: an
/// unknown key, a key marked @revoked, a host certificate signed by a CA of an
/// `@cert-authority` line (which reprise does not use), a changed key. A key reprise knows, or
/// records under accept-new, is accepted by both. Nothing runs on a refused host and
/// `known_hosts` is never written by ssh(1).
#[test]
fn the_openssh_path_refuses_every_host_key_reprise_refuses() {
    let mut sshd = Sshd::start();
    let spec = sshd.spec("hv2");
    let line = sshd.known_hosts_line();
    let marker = sshd.dir().join("executed");
    let touch = format!("touch {}", marker.display());
    let both = |sshd: &Sshd, policy: HostKeyPolicy| {
        let t = transport(sshd, "hv2", policy).with_client(SshClient::OpenSsh);
        let libssh2 = t.exec("hv2", &touch, Duration::from_secs(5)).map(|_| ());
        let _ = std::fs::remove_file(&marker);
        let openssh = bulk(&t, "hv2", &touch, &[]).map(|(code, _)| code);
        (libssh2, openssh)
    };
    let refused = |sshd: &Sshd, policy, what: &str, ssh_says: &str| {
        let known_hosts = std::fs::read_to_string(&sshd.known_hosts).unwrap();
        let (libssh2, openssh) = both(sshd, policy);
        let libssh2 = libssh2.expect_err(what);
        let openssh = openssh.expect_err(what);
        assert_eq!(openssh.to_string(), libssh2.to_string(), "{what}");
        let (code, stderr) = ssh_alone(&spec, "ssh-ed25519", &touch);
        assert_eq!(code, 255, "{what}: ssh(1) accepted it: {stderr}");
        assert!(stderr.contains(ssh_says), "{what}: {stderr}");
        assert!(!marker.exists(), "{what}: a command ran on a refused host");
        assert_eq!(
            std::fs::read_to_string(&sshd.known_hosts).unwrap(),
            known_hosts,
            "{what}"
        );
        libssh2
    };

    // Known: accepted by both.
    let (libssh2, openssh) = both(&sshd, HostKeyPolicy::Strict);
    assert!(libssh2.is_ok() && openssh.as_ref().is_ok_and(|c| *c == 0));
    assert_eq!(ssh_alone(&spec, "ssh-ed25519", &touch).0, 0);
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();

    // Unknown under strict.
    std::fs::write(&sshd.known_hosts, "").unwrap();
    let e = refused(
        &sshd,
        HostKeyPolicy::Strict,
        "unknown",
        "Host key verification failed",
    );
    assert!(matches!(e, SshError::UnknownHostKey { .. }), "{e:?}");

    // Unknown under accept-new: recorded by reprise, then found by ssh(1) in the same file.
    let t = transport(&sshd, "hv2", HostKeyPolicy::AcceptNew).with_client(SshClient::OpenSsh);
    assert_eq!(bulk(&t, "hv2", &touch, &[]).unwrap().0, 0);
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(ssh_alone(&spec, "ssh-ed25519", "true").0, 0);

    // Revoked, even under accept-new.
    let mut fields = line.split_whitespace().skip(1);
    let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
    std::fs::write(
        &sshd.known_hosts,
        format!("{line}@revoked * {kind} {key}\n"),
    )
    .unwrap();
    let e = refused(&sshd, HostKeyPolicy::AcceptNew, "revoked", "REVOKED");
    assert!(matches!(e, SshError::RevokedHostKey { .. }), "{e:?}");

    // A host certificate signed by a CA the file trusts for every host: ssh(1) would accept
    // it, reprise does not, so neither path does.
    let ca = sshd.dir().join("ca_ed25519");
    crate::sshd::keygen(&ca);
    sshd.certify_host_key(&ca);
    let ca_pub = std::fs::read_to_string(ca.with_extension("pub")).unwrap();
    let ca_key: Vec<&str> = ca_pub.split_whitespace().take(2).collect();
    std::fs::write(
        &sshd.known_hosts,
        format!("@cert-authority * {} {}\n", ca_key[0], ca_key[1]),
    )
    .unwrap();
    let e = refused(
        &sshd,
        HostKeyPolicy::Strict,
        "certificate",
        "Host key verification failed",
    );
    assert!(matches!(e, SshError::UnknownHostKey { .. }), "{e:?}");
    // The same ssh(1) offered certificates accepts it: what limiting it to the key type
    // reprise checked prevents.
    let (code, stderr) = ssh_alone(&spec, "ssh-ed25519-cert-v01@openssh.com", "true");
    assert_eq!(
        code, 0,
        "the certificate case is not what it claims: {stderr}"
    );

    // Changed, under both policies.
    sshd.trust_current_host_key();
    sshd.restart(true);
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let e = refused(&sshd, policy, "changed", "HOST IDENTIFICATION HAS CHANGED");
        assert!(matches!(e, SshError::ChangedHostKey { .. }), "{e:?}");
    }
}

/// The OpenSSH master connections this process runs to `sshd`: (pid, control socket path).
fn masters_to(sshd: &Sshd) -> Vec<(u32, String)> {
    let port = sshd.port.to_string();
    let address = sshd.address.to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
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
        let is_master = words.first().is_some_and(|w| w == "ssh")
            && words.iter().any(|w| w == "ControlMaster=yes")
            && words.windows(2).any(|w| w[0] == "-p" && w[1] == port)
            && words.contains(&address);
        if !is_master {
            continue;
        }
        let control = words
            .iter()
            .find_map(|w| w.strip_prefix("ControlPath="))
            .map(|p| p.trim_matches('"').to_string())
            .unwrap_or_default();
        // Our own child only: its parent is this test process.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(std::process::id()) {
            found.push((pid, control));
        }
    }
    found
}

/// The connections `sshd` has accepted so far (its VERBOSE log names each login).
fn logins(sshd: &Sshd) -> usize {
    std::fs::read_to_string(sshd.dir().join("sshd.log"))
        .unwrap()
        .matches("Accepted publickey for")
        .count()
}

/// Through the OpenSSH client, a command (one transport) checks a host's key once and carries
/// every stream to it over one OpenSSH master connection: five streams cost two logins (the
/// libssh2 check, the master), not ten. The master is a child of this process, listening in a
/// folder of mode 0700 it made; both go when the transport does.
#[test]
fn through_openssh_a_command_checks_a_host_once_and_multiplexes_its_streams() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let sshd = Sshd::start();
    let t = transport(&sshd, "hv1", HostKeyPolicy::Strict).with_client(SshClient::OpenSsh);
    let before = logins(&sshd);
    for n in 0..5u8 {
        let data = crate::common::random_bytes(1 << 20);
        let (code, out) = bulk(&t, "hv1", &format!("cat; exit {n}"), &data).unwrap();
        assert_eq!(code, i32::from(n));
        assert!(out == data, "stream {n}: the data read back differs");
    }
    assert_eq!(
        logins(&sshd) - before,
        2,
        "one libssh2 check and one master"
    );
    let masters = masters_to(&sshd);
    assert_eq!(masters.len(), 1, "{masters:?}");
    let folder = Path::new(&masters[0].1).parent().unwrap().to_path_buf();
    let meta = std::fs::metadata(&folder).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700, "{folder:?}");
    // SAFETY: geteuid has no preconditions.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    drop(t);
    assert!(
        masters_to(&sshd).is_empty(),
        "the master outlived its transport"
    );
    assert!(!folder.exists(), "{folder:?} is left behind");
}

/// A master never outlives its command, and no command reaches another's: a host whose key
/// changed is refused by the next command, with reprise's own error, even while a connection
/// opened under the old key is still up; ssh(1) alone refuses it too, and nothing runs.
#[test]
fn through_openssh_a_key_changed_between_two_commands_is_refused() {
    let mut sshd = Sshd::start();
    let marker = sshd.dir().join("executed");
    let touch = format!("touch {}", marker.display());
    let first = transport(&sshd, "hv1", HostKeyPolicy::Strict).with_client(SshClient::OpenSsh);
    assert_eq!(bulk(&first, "hv1", "true", &[]).unwrap().0, 0);
    let masters = masters_to(&sshd);
    assert_eq!(masters.len(), 1, "{masters:?}");

    sshd.new_host_key_for_new_connections();
    assert_eq!(
        masters_to(&sshd),
        masters,
        "the first command's master is still up"
    );
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let next = transport(&sshd, "hv1", policy).with_client(SshClient::OpenSsh);
        let e = bulk(&next, "hv1", &touch, &[]).unwrap_err();
        assert!(matches!(e, SshError::ChangedHostKey { .. }), "{e:?}");
        assert_eq!(
            masters_to(&sshd),
            masters,
            "a master was started for {policy:?}"
        );
    }
    let (code, stderr) = ssh_alone(&sshd.spec("hv1"), "ssh-ed25519", &touch);
    assert_eq!(code, 255, "{stderr}");
    assert!(
        !marker.exists(),
        "a command ran on a host whose key changed"
    );
    drop(first);
    assert!(masters_to(&sshd).is_empty());
}

/// A host whose key changes after reprise checked it over libssh2 and before the OpenSSH
/// master connection logs in is refused by ssh(1), and said as reprise says it (the changed
/// key, both fingerprints), under both policies: one host-key policy, one error. Nothing runs
/// on it, no master is left and `known_hosts` is not written.
#[test]
fn through_openssh_a_key_changed_after_the_check_is_refused_as_reprise_refuses_it() {
    let mut sshd = Sshd::start();
    let marker = sshd.dir().join("executed");
    let touch = format!("touch {}", marker.display());
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        sshd.trust_current_host_key();
        let known_hosts = std::fs::read_to_string(&sshd.known_hosts).unwrap();
        let t = transport(&sshd, "hv1", policy).with_client(SshClient::OpenSsh);
        // Checked over libssh2; that session stays open, idle, and answers the next check.
        assert_eq!(
            t.exec("hv1", "true", Duration::from_secs(10))
                .unwrap()
                .exit_code,
            0
        );
        sshd.new_host_key_for_new_connections();
        let e = bulk(&t, "hv1", &touch, &[]).unwrap_err();
        assert!(
            matches!(e, SshError::ChangedHostKey { .. }),
            "{policy:?}: {e:?}"
        );
        assert!(!marker.exists(), "{policy:?}: a command ran");
        assert!(masters_to(&sshd).is_empty(), "{policy:?}: a master is left");
        assert_eq!(
            std::fs::read_to_string(&sshd.known_hosts).unwrap(),
            known_hosts,
            "{policy:?}"
        );
    }
}

/// Under accept-new, logins to several hosts go on at once: one still waiting for its host
/// (here a host that accepts the connection and then says nothing) holds none of the others
/// back. Every new key ends up in the shared `known_hosts` exactly once, however many logins
/// to one host race, and a changed key is still refused as before.
#[test]
fn logins_under_accept_new_go_on_at_once_and_record_each_key_once() {
    let mut sshds: Vec<Sshd> = (0..3).map(|_| Sshd::start()).collect();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    let tarpit = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut specs: std::collections::HashMap<String, HostSpec> = sshds
        .iter()
        .enumerate()
        .map(|(i, sshd)| {
            let id = format!("hv{i}");
            let spec = HostSpec {
                known_hosts: known_hosts.clone(),
                ..sshd.spec(&id)
            };
            (id, spec)
        })
        .collect();
    specs.insert(
        "stuck".into(),
        HostSpec {
            id: "stuck".into(),
            address: "127.0.0.1".into(),
            port: tarpit.local_addr().unwrap().port(),
            known_hosts: known_hosts.clone(),
            ..sshds[0].spec("stuck")
        },
    );
    // Long enough that the stuck login outlasts everything below.
    let wait = Duration::from_secs(120);
    let t = SshTransport::new(specs, HostKeyPolicy::AcceptNew, wait);
    std::thread::scope(|scope| {
        let stuck = scope.spawn(|| t.exec("stuck", "true", wait));
        // The stuck login has begun: its connection is accepted and left unanswered.
        let (held, _) = tarpit.accept().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..3 {
            let (t, tx) = (&t, tx.clone());
            scope.spawn(move || {
                let _ = tx.send((i, t.exec(&format!("hv{i}"), "echo in", wait)));
            });
        }
        for _ in 0..3 {
            // A failure detector, not a measure: each login takes well under a second.
            let got = rx.recv_timeout(Duration::from_secs(60));
            let Ok((i, out)) = got else {
                drop(held);
                panic!("the logins to hv0..hv2 waited for the one still waiting for its host");
            };
            assert_eq!(out.unwrap_or_else(|e| panic!("hv{i}: {e}")).stdout, "in\n");
        }
        assert!(!stuck.is_finished(), "the stuck login ended early");
        drop(held);
        assert!(stuck.join().unwrap().is_err());
    });
    let entries = |text: &str, sshd: &Sshd| {
        let name = format!("[{}]:{} ", sshd.address, sshd.port);
        text.lines().filter(|l| l.starts_with(&name)).count()
    };
    let text = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    for sshd in &sshds {
        assert_eq!(entries(&text, sshd), 1, "{text}");
        assert!(text.contains(sshd.known_hosts_line().trim_end()), "{text}");
    }

    // Many logins to one new host at once, beside logins to the known ones: one entry each.
    std::fs::remove_file(&known_hosts).unwrap();
    std::fs::write(&known_hosts, sshds[1].known_hosts_line()).unwrap();
    std::thread::scope(|scope| {
        for i in 0..3 {
            let t = &t;
            scope.spawn(move || t.connect(&format!("hv{i}"), 4));
        }
    });
    let text = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    for sshd in &sshds {
        assert_eq!(entries(&text, sshd), 1, "{text}");
    }

    // A changed key is refused, with the same message, under accept-new too.
    let old = sshds[2].host_fingerprint();
    sshds[2].restart(true);
    let new = sshds[2].host_fingerprint();
    let fresh = SshTransport::new(
        [(
            "hv2".to_string(),
            HostSpec {
                known_hosts: known_hosts.clone(),
                ..sshds[2].spec("hv2")
            },
        )]
        .into(),
        HostKeyPolicy::AcceptNew,
        CONNECT,
    );
    let err = fresh
        .exec("hv2", "true", Duration::from_secs(5))
        .unwrap_err();
    assert!(matches!(err, SshError::ChangedHostKey { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "host key of hv2 ({}) has changed: known {old}, offered {new}; refusing to connect \
             (if the host was really reinstalled, remove its old line from {})",
            sshds[2].endpoint(),
            known_hosts.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), text);
}

/// The key check of many logins at the same instant, to three new hosts of one `known_hosts`
/// (the keys of three real sshds): each key is added once, none is lost, and a login that
/// finds its key added by another passes.
#[test]
fn racing_key_checks_under_accept_new_add_each_key_once() {
    use base64::Engine as _;
    let sshds: Vec<Sshd> = (0..3).map(|_| Sshd::start()).collect();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    let hosts: Vec<(HostSpec, Vec<u8>)> = sshds
        .iter()
        .enumerate()
        .map(|(i, sshd)| {
            let public = std::fs::read_to_string(sshd.host_key_pub()).unwrap();
            let blob = public.split_whitespace().nth(1).unwrap();
            let key = base64::engine::general_purpose::STANDARD
                .decode(blob)
                .unwrap();
            let spec = HostSpec {
                known_hosts: known_hosts.clone(),
                ..sshd.spec(&format!("hv{i}"))
            };
            (spec, key)
        })
        .collect();
    const LOGINS: usize = 24;
    for round in 0..20 {
        let _ = std::fs::remove_file(&known_hosts);
        let start = std::sync::Barrier::new(LOGINS);
        std::thread::scope(|scope| {
            for n in 0..LOGINS {
                let (start, (spec, key)) = (&start, &hosts[n % hosts.len()]);
                scope.spawn(move || {
                    start.wait();
                    reprise::ssh::check_host_key(spec, HostKeyPolicy::AcceptNew, key)
                        .unwrap_or_else(|e| panic!("round {round}, {}: {e}", spec.id));
                });
            }
        });
        let text = std::fs::read_to_string(&known_hosts).unwrap();
        for sshd in &sshds {
            let line = sshd.known_hosts_line();
            let found = text
                .lines()
                .filter(|l| l.starts_with(line.trim_end()))
                .count();
            assert_eq!(found, 1, "round {round}:\n{text}");
        }
        assert_eq!(text.lines().count(), 3, "round {round}:\n{text}");
        for (spec, key) in &hosts {
            reprise::ssh::check_host_key(spec, HostKeyPolicy::Strict, key).unwrap();
        }
    }
}

/// Under accept-new, a key is learned only where nothing else may claim the host: a file
/// that keeps nothing (`/dev/null`: every key new at every login), a wildcard pattern or an
/// `@cert-authority` line that may give this host another key (libssh2 does not read them),
/// each refuse it, the file untouched, naming the line; a pattern that excludes the host
/// (`!`) does not. A key learned is kept and then known.
#[test]
fn a_first_seen_key_is_learned_only_where_nothing_else_may_claim_the_host() {
    use base64::Engine as _;
    let sshd = Sshd::start();
    let public = std::fs::read_to_string(sshd.host_key_pub()).unwrap();
    let key = base64::engine::general_purpose::STANDARD
        .decode(public.split_whitespace().nth(1).unwrap())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    let spec = HostSpec {
        known_hosts: known_hosts.clone(),
        ..sshd.spec("hv-pra")
    };
    let other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let octets: Vec<&str> = spec.address.split('.').collect();
    let wide = format!("{}.{}.{}.*", octets[0], octets[1], octets[2]);
    let learn =
        |spec: &HostSpec| reprise::ssh::check_host_key(spec, HostKeyPolicy::AcceptNew, &key);
    let null = HostSpec {
        known_hosts: "/dev/null".into(),
        ..spec.clone()
    };
    let e = learn(&null).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
    for (text, said) in [
        (
            format!("# the school's hosts\n{wide} {other}\n"),
            "line 2 (a pattern line",
        ),
        (
            format!("@cert-authority * {other}\n"),
            "line 1 (an @cert-authority line",
        ),
    ] {
        std::fs::write(&known_hosts, &text).unwrap();
        let e = learn(&spec).unwrap_err().to_string();
        assert!(e.contains(said) && e.contains("no key is learned"), "{e}");
        assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), text);
    }
    // A pattern that leaves the host out claims nothing of it.
    let text = format!("{wide},!{} {other}\n", spec.address);
    std::fs::write(&known_hosts, &text).unwrap();
    learn(&spec).unwrap();
    let now = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(now.starts_with(&text) && now.lines().count() == 2, "{now}");
    reprise::ssh::check_host_key(&spec, HostKeyPolicy::Strict, &key).unwrap();
}
