//! The SSH transport: runs commands on hosts with the `ssh2` crate (libssh2), verifying host
//! keys against an OpenSSH `known_hosts` file, under deadlines that really stop the remote
//! command. The only module that knows `ssh2`, and the only one that knows how a host is
//! reached: bulk streams may instead go through the system's OpenSSH client ([`openssh`]),
//! started here once libssh2 has checked the host key.
//!
//! Blocking by design (callers keep it off async workers). It runs what it is given: it does not
//! decide what to run, and it never prints.

use std::collections::HashMap;
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::Digest as _;
use ssh2::{CheckResult, KnownHostFileKind, Session as RawSession};

pub mod config;
pub mod openssh;

/// Seconds between the TERM that ends a command at its deadline and the KILL that follows when
/// TERM was not enough.
const KILL_AFTER_SECS: u64 = 5;

/// How to reach one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub id: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub known_hosts: PathBuf,
    /// Private key file; the ssh-agent when `None`.
    pub identity: Option<PathBuf>,
    /// Why the host cannot be reached as configured (the user's ssh configuration asks for
    /// what reprise does not do): every connection fails with it, nothing is tried.
    pub refused: Option<String>,
}

impl HostSpec {
    fn endpoint(&self) -> String {
        crate::inventory::endpoint(&self.address, self.port)
    }

    /// The name OpenSSH writes in `known_hosts` for this host.
    fn known_name(&self) -> String {
        known_name(&self.address, self.port)
    }
}

/// The name of `address:port` in a `known_hosts` file, as OpenSSH writes and looks it up:
/// `address` for port 22, `[address]:port` for another, and only that name. (libssh2 asked
/// with a port tries the plain address too when `[address]:port` has no key matching: a key
/// known for port 22 would then be taken for the key of another port of the same address,
/// another machine behind a port forward.)
fn known_name(address: &str, port: u16) -> String {
    if port == 22 {
        address.to_string()
    } else {
        format!("[{address}]:{port}")
    }
}

/// Which SSH client carries bulk streams (replication data) to and from hosts. Commands,
/// helper calls and host-key checks always use libssh2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SshClient {
    /// The system's `ssh` (OpenSSH), started as a process per stream.
    #[default]
    OpenSsh,
    /// libssh2 channels, relayed by this process.
    Libssh2,
}

/// What to do with a host key never seen before. A changed key is always refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    Strict,
    AcceptNew,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    #[error("failed to connect to {host} ({endpoint}): {reason}")]
    Connect {
        host: String,
        endpoint: String,
        reason: String,
    },
    #[error(
        "host key of {host} ({endpoint}) has changed: known {known}, offered {offered}; refusing to connect \
         (if the host was really reinstalled, remove its old line from {known_hosts})"
    )]
    ChangedHostKey {
        host: String,
        endpoint: String,
        known: String,
        offered: String,
        known_hosts: String,
    },
    #[error(
        "unknown host key for {host} ({endpoint}): {offered}; check it, then run with --accept-new-host-keys to trust it"
    )]
    UnknownHostKey {
        host: String,
        endpoint: String,
        offered: String,
    },
    #[error("cannot use known_hosts file {path}: {reason}")]
    KnownHosts { path: String, reason: String },
    #[error(
        "host key of {host} ({endpoint}) is marked @revoked in {known_hosts}: {offered}; refusing to connect"
    )]
    RevokedHostKey {
        host: String,
        endpoint: String,
        offered: String,
        known_hosts: String,
    },
    #[error("authentication failed for {user}@{host} ({endpoint}): {reason}")]
    Auth {
        user: String,
        host: String,
        endpoint: String,
        reason: String,
    },
    #[error("ssh session with {host} failed: {reason}")]
    Session { host: String, reason: String },
    #[error("no answer from {host} within {secs}s")]
    Hung { host: String, secs: u64 },
    #[error("unknown host `{0}`")]
    UnknownHost(String),
    /// The user's ssh configuration asks for what reprise does not do for this host.
    #[error("not connecting to {host}: {reason}")]
    Refused { host: String, reason: String },
    /// A stream to or from {host} failed on this machine's side.
    #[error("streaming with {host}: {reason}")]
    Local { host: String, reason: String },
}

/// The most a host may send on a stream read for an answer or for its messages: past it, the
/// host is refused (what it sends is never held without bound in this process's memory).
pub const READ_LIMIT: u64 = 64 << 20;

/// Bytes of each output stream of a command kept (and journaled) per attempt; what follows is
/// read and dropped.
pub const OUTPUT_LIMIT: usize = 16 * 1024;

/// Bytes of a host's standard error kept for messages; what follows is read and dropped.
pub const ERRORS_KEPT: usize = OUTPUT_LIMIT;

/// What a host printed on its standard error, as kept for messages: its first
/// [`ERRORS_KEPT`] bytes, and how many came in all (the rest is read and dropped, so that the
/// host is never blocked on it and this process's memory does not grow with it).
#[derive(Debug)]
pub struct Said {
    kept: Vec<u8>,
    total: u64,
    keep: usize,
    /// The last [`TAIL`] bytes that came, kept or not: where a command's end mark is.
    tail: Vec<u8>,
}

/// Bytes of the end of a stream [`Said`] keeps, to find an end mark in.
const TAIL: usize = 4096;

impl Default for Said {
    fn default() -> Self {
        Said::keeping(ERRORS_KEPT)
    }
}

impl Said {
    /// Keeping the first `keep` bytes (an answer, rather than messages).
    pub fn keeping(keep: usize) -> Said {
        Said {
            kept: Vec::new(),
            total: 0,
            keep,
            tail: Vec::new(),
        }
    }

    /// The bytes kept.
    pub fn into_bytes(self) -> Vec<u8> {
        self.kept
    }

    /// Takes what came; `false` once more than [`READ_LIMIT`] bytes have come in all.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        let room = self.keep.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.total = self.total.saturating_add(bytes.len() as u64);
        let from = bytes.len().saturating_sub(TAIL);
        self.tail.extend_from_slice(&bytes[from..]);
        let cut = self.tail.len().saturating_sub(TAIL);
        self.tail.drain(..cut);
        self.total <= READ_LIMIT
    }

    /// The exit code the end mark `mark` of [`marked`] told at the end of what came, once it
    /// came; the mark is taken out of what is kept and counted.
    fn take_end(&mut self, mark: &str) -> Option<i32> {
        let (code, len) = find_end(&self.tail, mark)?;
        strip_end(&mut self.kept, mark);
        self.total = self.total.saturating_sub(len as u64);
        Some(code)
    }

    /// Reads `r` to its end, or until more than [`READ_LIMIT`] bytes have come (then `r` is
    /// read no further).
    pub fn read_from(&mut self, mut r: impl Read) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if !self.push(&buf[..n]) {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Whether more than [`READ_LIMIT`] bytes came.
    pub fn over(&self) -> bool {
        self.total > READ_LIMIT
    }

    /// The text kept, and how much more came when some was dropped.
    pub fn text(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.kept).into_owned();
        let dropped = self.total - self.kept.len() as u64;
        if dropped > 0 {
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("[{dropped} more bytes of errors not kept]\n"));
        }
        text
    }
}

/// Why a write to a remote command that no longer reads its input (its storage hung, the
/// command stopped) while its host still answers was given up.
const STOPPED_READING: &str = "the command on this host stopped reading its input and had not read it again by the deadline: given up (its storage or the command may hang there)";

/// Bytes relayed so far by every pipe of this process: what a progress display reads.
pub static PIPED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The result of a remote command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    /// Output beyond the limit was dropped.
    pub truncated: bool,
    /// The deadline stopped it (the remote side killed it).
    pub timed_out: bool,
    pub duration: Duration,
}

/// OpenSSH's `SHA256:...` form of a fingerprint.
/// A libssh2 session timeout of `d`: in milliseconds, 1 at least (0 would be none), and as
/// long as libssh2 can say at most.
fn timeout_ms(d: Duration) -> u32 {
    d.as_millis().clamp(1, u128::from(u32::MAX)) as u32
}

pub fn fingerprint(sha256: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha256)
    )
}

/// A connected, authenticated session with one host.
pub struct Session {
    raw: RawSession,
    spec: HostSpec,
}

impl Session {
    /// Connects, verifies the host key and logs in.
    pub fn connect(
        spec: &HostSpec,
        policy: HostKeyPolicy,
        timeout: Duration,
    ) -> Result<Session, SshError> {
        let endpoint = spec.endpoint();
        let connect_err = |reason: String| SshError::Connect {
            host: spec.id.clone(),
            endpoint: endpoint.clone(),
            reason,
        };
        if let Some(why) = &spec.refused {
            return Err(SshError::Refused {
                host: spec.id.clone(),
                reason: why.clone(),
            });
        }
        let addrs: Vec<SocketAddr> = endpoint
            .to_socket_addrs()
            .map_err(|e| connect_err(format!("cannot resolve: {e}")))?
            .collect();
        let addr = addrs
            .first()
            .ok_or_else(|| connect_err("no address".into()))?;
        let tcp =
            TcpStream::connect_timeout(addr, timeout).map_err(|e| connect_err(io_reason(&e)))?;
        // Small packets (channel open, exec, close) go out at once instead of waiting for the
        // peer's delayed ACK: this is most of the cost of a short command otherwise.
        let _ = tcp.set_nodelay(true);
        let mut raw = RawSession::new().map_err(|e| connect_err(e.to_string()))?;
        raw.set_tcp_stream(tcp);
        raw.set_timeout(timeout_ms(timeout));
        raw.handshake().map_err(|e| {
            if e.code() == ssh2::ErrorCode::Session(-9) || e.message().contains("Timed out") {
                SshError::Hung {
                    host: spec.id.clone(),
                    secs: timeout.as_secs(),
                }
            } else {
                connect_err(format!("handshake: {}", e.message()))
            }
        })?;
        verify_host_key(&raw, spec, policy)?;
        let auth = match &spec.identity {
            Some(key) => raw.userauth_pubkey_file(&spec.user, None, key, None),
            None => raw.userauth_agent(&spec.user),
        };
        if let Err(e) = auth {
            return Err(SshError::Auth {
                user: spec.user.clone(),
                host: spec.id.clone(),
                endpoint,
                reason: e.message().to_string(),
            });
        }
        if !raw.authenticated() {
            return Err(SshError::Auth {
                user: spec.user.clone(),
                host: spec.id.clone(),
                endpoint,
                reason: "not accepted".into(),
            });
        }
        raw.set_keepalive(true, 15);
        tracing::debug!(host = %spec.id, "ssh login");
        Ok(Session {
            raw,
            spec: spec.clone(),
        })
    }

    /// The type of the host key this session verified (`ssh-ed25519`, `ssh-rsa`, ...).
    pub fn host_key_type(&self) -> Result<String, SshError> {
        self.raw
            .host_key()
            .and_then(|(key, _)| key_type_name(key))
            .map(str::to_string)
            .ok_or_else(|| SshError::Session {
                host: self.spec.id.clone(),
                reason: "the host key offered is malformed".into(),
            })
    }

    /// The ciphers negotiated with the host: (client to server, server to client).
    pub fn ciphers(&self) -> (String, String) {
        let method = |kind| self.raw.methods(kind).unwrap_or("").to_string();
        (
            method(ssh2::MethodType::CryptCs),
            method(ssh2::MethodType::CryptSc),
        )
    }

    /// Runs `command` under `deadline`: the remote side ends it (coreutils `timeout`: TERM to
    /// its process group, KILL 5 s later), and the local side stops waiting when even the KILL
    /// has had a moment to be answered, so a hung host cannot block forever. A command that
    /// leaves a process of its own session behind, holding its output open (`setsid cmd &`),
    /// ends when the command does.
    pub fn exec(
        &self,
        command: &str,
        deadline: Duration,
        output_limit: usize,
    ) -> Result<ExecOutput, SshError> {
        self.run(command, Instant::now() + deadline, output_limit)
            .map(|(out, _)| out)
            .map_err(ExecFailure::into_error)
    }

    /// [`Session::exec`] until `until`, every wait of it included (opening the channel, reading,
    /// closing). With the output, whether the session can carry another command: not when the
    /// command left a process holding its channel open.
    fn run(
        &self,
        command: &str,
        until: Instant,
        output_limit: usize,
    ) -> Result<(ExecOutput, bool), ExecFailure> {
        let session_timeout = self.raw.timeout();
        let result = self.run_bounded(command, until, output_limit);
        self.raw.set_timeout(session_timeout);
        result
    }

    fn run_bounded(
        &self,
        command: &str,
        until: Instant,
        output_limit: usize,
    ) -> Result<(ExecOutput, bool), ExecFailure> {
        let left = until.saturating_duration_since(Instant::now());
        let secs = left.as_secs_f64().ceil().max(1.0) as u64;
        // The command's end is told on its standard error with a mark it cannot guess, so that
        // a process it left running with its output open does not keep the step waiting.
        let (wrapped, mark) = marked(command, secs);
        // Every blocking wait of libssh2 ends by the deadline.
        let session_timeout = u64::from(self.raw.timeout());
        let bounded = (left.as_millis() as u64).clamp(1, session_timeout.max(1));
        self.raw.set_timeout(bounded as u32);
        let grace_secs = session_timeout.div_ceil(1000).min(2);
        let wait_secs = secs + KILL_AFTER_SECS + grace_secs;
        let began = Instant::now();
        let local_deadline = began + Duration::from_secs(wait_secs);
        let fail = |reason: String| SshError::Session {
            host: self.spec.id.clone(),
            reason,
        };
        let started = |what: &str, e: ssh2::Error| {
            ExecFailure::Started(fail(format!("{what}: {}", e.message())))
        };
        self.raw.set_blocking(true);
        let mut channel = self.raw.channel_session().map_err(|e| {
            ExecFailure::NotStarted(if is_timeout(&e) {
                SshError::Hung {
                    host: self.spec.id.clone(),
                    secs: bounded.div_ceil(1000),
                }
            } else {
                fail(format!("open channel: {}", e.message()))
            })
        })?;
        channel.exec(&wrapped).map_err(|e| started("exec", e))?;
        self.raw.set_blocking(false);
        let streams =
            self.read_to_end(&mut channel, &mark, output_limit, local_deadline, wait_secs);
        let Streams {
            stdout,
            mut stderr,
            mut truncated,
            left_open,
            marked,
        } = match streams {
            Ok(streams) => streams,
            Err(e) => {
                self.raw.set_blocking(true);
                return Err(ExecFailure::Started(e));
            }
        };
        strip_end(&mut stderr, &mark);
        if stderr.len() > output_limit {
            stderr.truncate(output_limit);
            truncated = true;
        }
        let exit_code = match left_open {
            Some(code) => {
                // The channel stays open on the host's side: it is dropped with its session.
                drop(channel);
                self.raw.set_blocking(true);
                code
            }
            None => {
                self.raw.set_blocking(true);
                channel
                    .wait_close()
                    .map_err(|e| started("close channel", e))?;
                told_code(
                    exit_code(&channel).map_err(|e| started("exit status", e))?,
                    marked,
                )
                .map_err(|reason| ExecFailure::Started(fail(reason)))?
            }
        };
        let duration = began.elapsed();
        let out = ExecOutput {
            exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            truncated,
            // 124: timeout sent TERM; 137: it had to KILL. A command that exits so by itself
            // before the deadline did not time out.
            timed_out: (exit_code == 124 || exit_code == 137)
                && duration >= Duration::from_secs(secs),
            duration,
        };
        Ok((out, left_open.is_none()))
    }

    /// Reads the standard output and error of the command on `channel` (each kept up to
    /// `output_limit` bytes) until the channel ends, or `mark` on its standard error told the
    /// command's end and its output stayed open 300 ms more (`left_open`, with its exit code).
    fn read_to_end(
        &self,
        channel: &mut ssh2::Channel,
        mark: &str,
        output_limit: usize,
        local_deadline: Instant,
        wait_secs: u64,
    ) -> Result<Streams, SshError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        // The end of the standard error stream as it came, to find the mark in.
        let mut tail: Vec<u8> = Vec::new();
        let mut ended: Option<(i32, Instant)> = None;
        let mut truncated = false;
        let mut buf = vec![0u8; 32 * 1024];
        let left_open = loop {
            let mut progressed = false;
            for stream_id in [0, 1] {
                match channel.stream(stream_id).read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        progressed = true;
                        // Standard error keeps room for the mark, taken out below.
                        let (sink, limit) = if stream_id == 0 {
                            (&mut stdout, output_limit)
                        } else {
                            tail.extend_from_slice(&buf[..n]);
                            let cut = tail.len().saturating_sub(4096);
                            tail.drain(..cut);
                            (&mut stderr, output_limit + mark.len() + 16)
                        };
                        let room = limit.saturating_sub(sink.len());
                        if n > room {
                            truncated = true;
                        }
                        sink.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        return Err(SshError::Session {
                            host: self.spec.id.clone(),
                            reason: format!("read: {e}"),
                        });
                    }
                }
            }
            if ended.is_none()
                && let Some((code, _)) = find_end(&tail, mark)
            {
                ended = Some((code, Instant::now()));
            }
            if channel.eof() {
                break None;
            }
            // Ended, but something it started holds its output open: its output so far is
            // the step's, and the step is over.
            if let Some((code, at)) = ended
                && at.elapsed() > Duration::from_millis(300)
            {
                break Some(code);
            }
            if Instant::now() > local_deadline {
                return Err(SshError::Hung {
                    host: self.spec.id.clone(),
                    secs: wait_secs,
                });
            }
            // Sends one only when the keepalive interval has passed.
            let _ = self.raw.keepalive_send();
            if !progressed {
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        Ok(Streams {
            stdout,
            stderr,
            truncated,
            left_open,
            marked: ended.map(|(code, _)| code),
        })
    }
}

/// What a command wrote on its standard output and error, read until its end.
struct Streams {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// A stream was longer than the limit and was cut.
    truncated: bool,
    /// The exit code the mark told, when the command ended with its output still open.
    left_open: Option<i32>,
    /// The exit code the mark told, when it came.
    marked: Option<i32>,
}

/// A mark no command can guess, that ends a command's standard error with its exit code.
fn end_mark() -> String {
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(
        &COUNT
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    format!("reprise-end-{}", &h.finalize().to_hex()[..24])
}

/// The exit code in `\nMARK CODE\n` at the end of `tail`, once it came, and that line's
/// length.
fn find_end(tail: &[u8], mark: &str) -> Option<(i32, usize)> {
    let text = String::from_utf8_lossy(tail);
    let at = text.rfind(&format!("\n{mark} "))?;
    let rest = &text[at + mark.len() + 2..];
    let (code, _) = rest.split_once('\n')?;
    let len = mark.len() + 2 + code.len() + 1;
    code.trim().parse().ok().map(|code| (code, len))
}

/// `command` as a host runs it: under `timeout` (TERM after `secs` seconds, KILL
/// [`KILL_AFTER_SECS`] later), and telling its end with a mark no command can guess on its
/// standard error (see [`told_code`]). With the mark.
///
/// The shell that waits for it has its own standard error closed, so that it does not add
/// its own words ("Terminated") to the command's.
fn marked(command: &str, secs: u64) -> (String, String) {
    let mark = end_mark();
    let wrapped = format!(
        "exec 3>&2 2>/dev/null; timeout --kill-after={KILL_AFTER_SECS} {secs} sh -c {}; r=$?; printf '\\n{mark} %d\\n' \"$r\" >&3; exit \"$r\"",
        crate::template::shell_quote(&format!("exec 2>&3 3>&-; {command}"))
    );
    (wrapped, mark)
}

/// The exit code of a command run as [`marked`] says, from the host's exit status (`status`,
/// a signal as a shell shows it) and the code its end mark told (`told`). libssh2 gives 0
/// when a host sent no exit status, and a host may answer 0 for a command it did not run as
/// asked (a forced command): a 0 counts only when the mark says so, and the mark's code
/// counts over a 0.
fn told_code(status: i32, told: Option<i32>) -> Result<i32, String> {
    match (status, told) {
        (0, Some(code)) => Ok(code),
        (0, None) => Err(
            "the command's end was not told: the host answered exit 0 without the end mark its wrapper prints when the command ends (the shell or sshd on the host died, or the host runs another command than the one asked?); taken as failed, its output is not trusted".to_string(),
        ),
        (code, _) => Ok(code),
    }
}

/// Takes the end mark (or, when the output was cut at the limit, the part of it that made it)
/// out of a standard error stream.
fn strip_end(stderr: &mut Vec<u8>, mark: &str) {
    let needle = format!("\n{mark} ");
    let needle = needle.as_bytes();
    if let Some(at) = stderr.windows(needle.len()).position(|w| w == needle) {
        let end = stderr[at + needle.len()..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(stderr.len(), |i| at + needle.len() + i + 1);
        stderr.drain(at..end);
        return;
    }
    for k in (1..needle.len()).rev() {
        if stderr.ends_with(&needle[..k]) {
            stderr.truncate(stderr.len() - k);
            return;
        }
    }
}

/// Waits (at most 100 ms) until the session's socket is ready in the direction libssh2 is
/// blocked on.
/// Reads what a channel has ready on its standard output and error, without waiting (its
/// session is in non-blocking mode), into `out` and `errors`; `false` once more than
/// [`READ_LIMIT`] bytes came on either (the channel is then read no further).
fn read_ready(channel: &mut ssh2::Channel, out: &mut Said, errors: &mut Said) -> bool {
    let mut buf = [0u8; 16 * 1024];
    for (stream, into) in [(0, out), (1, errors)] {
        loop {
            match channel.stream(stream).read(&mut buf) {
                Ok(n) if n > 0 => {
                    if !into.push(&buf[..n]) {
                        return false;
                    }
                }
                _ => break,
            }
        }
    }
    true
}

/// Why a host was refused once [`read_ready`] said it sent too much: its answer (`out`), or
/// else its errors.
fn too_much(out: &Said) -> String {
    if out.over() {
        format!("its answer is longer than {READ_LIMIT} bytes: refused")
    } else {
        format!("it printed more than {READ_LIMIT} bytes of errors: refused")
    }
}

fn wait_socket(raw: &RawSession) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let events = match raw.block_directions() {
        ssh2::BlockDirections::Inbound => PollFlags::IN,
        ssh2::BlockDirections::Outbound => PollFlags::OUT,
        ssh2::BlockDirections::Both => PollFlags::IN | PollFlags::OUT,
        ssh2::BlockDirections::None => PollFlags::IN,
    };
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    use std::os::fd::AsRawFd as _;
    // SAFETY: the session's socket, open while `raw` (borrowed for this call) lives; libssh2
    // gives only its raw descriptor.
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw.as_raw_fd()) };
    let _ = poll(
        &mut [PollFd::from_borrowed_fd(socket, events)],
        Some(&timeout),
    );
}

/// Why a command failed at the transport level, and whether it may have run.
enum ExecFailure {
    /// The command never reached the host: trying it on a fresh session is safe.
    NotStarted(SshError),
    /// It may have run: it must not be sent again.
    Started(SshError),
}

impl ExecFailure {
    fn into_error(self) -> SshError {
        match self {
            ExecFailure::NotStarted(e) | ExecFailure::Started(e) => e,
        }
    }
}

fn is_timeout(e: &ssh2::Error) -> bool {
    // LIBSSH2_ERROR_TIMEOUT
    e.code() == ssh2::ErrorCode::Session(-9)
}

/// The command's exit code. `timeout` re-raises a signal that killed the command, and dies of
/// the KILL it sends itself: sshd then reports a signal, not a status (which libssh2 would give
/// as 0), so a signal is turned into the code a shell shows: 128 + its number.
fn exit_code(channel: &ssh2::Channel) -> Result<i32, ssh2::Error> {
    match channel.exit_signal() {
        Ok(ssh2::ExitSignal {
            exit_signal: Some(name),
            ..
        }) => Ok(signal_exit_code(&name)),
        _ => channel.exit_status(),
    }
}

/// The exit code a shell shows for a process killed by signal `name` (`KILL` → 137); 255, as
/// `ssh` does, for a signal it does not know.
fn signal_exit_code(name: &str) -> i32 {
    const SIGNALS: [&str; 15] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM",
    ];
    let name = name.trim_start_matches("SIG");
    SIGNALS
        .iter()
        .position(|s| *s == name)
        .map_or(255, |i| 128 + 1 + i as i32)
}

/// A connection error as a short lowercase reason ("connection refused").
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused
        | K::ConnectionReset
        | K::TimedOut
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::AddrNotAvailable => e.kind().to_string(),
        _ => e.to_string(),
    }
}

/// The result of streaming one command's output into another command, host to host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeOutput {
    pub bytes: u64,
    pub read_exit: i32,
    pub write_exit: i32,
    /// The command on the destination stopped first (it failed while data still came): the
    /// source was cut, and `stderr` is the destination's.
    pub write_failed_first: bool,
    pub stderr: String,
    /// What `write_cmd` printed.
    pub output: String,
    pub duration: Duration,
}

/// What [`Session::relay`] carried.
struct Relayed {
    bytes: u64,
    /// What the destination printed.
    output: String,
    /// The errors of both sides.
    stderr: String,
    /// The destination stopped first.
    cut: bool,
    /// The exit codes the end marks of the source and the destination told.
    told: [Option<i32>; 2],
}

impl Session {
    /// Streams the standard output of `read_cmd` (here) into the standard input of
    /// `write_cmd` on `dest`, in large writes over exec channels.
    pub fn pipe(
        &self,
        read_cmd: &str,
        dest: &Session,
        write_cmd: &str,
        deadline: Duration,
    ) -> Result<PipeOutput, SshError> {
        self.pipe_with_input(read_cmd, &[], dest, write_cmd, deadline)
    }

    /// [`Session::pipe`], with `input` written first to the standard input of `read_cmd`
    /// (which must read it all before it writes much).
    pub fn pipe_with_input(
        &self,
        read_cmd: &str,
        input: &[u8],
        dest: &Session,
        write_cmd: &str,
        deadline: Duration,
    ) -> Result<PipeOutput, SshError> {
        let src = self.open_channel()?;
        let dst = dest.open_channel()?;
        self.pipe_on(src, read_cmd, input, dest, dst, write_cmd, deadline)
    }

    /// Opens a channel (blocking mode).
    fn open_channel(&self) -> Result<ssh2::Channel, SshError> {
        self.raw.set_blocking(true);
        self.raw.channel_session().map_err(|e| SshError::Session {
            host: self.spec.id.clone(),
            reason: format!("open channel: {}", e.message()),
        })
    }

    /// [`Session::pipe_with_input`] on channels already open on both sessions.
    #[allow(clippy::too_many_arguments)]
    fn pipe_on(
        &self,
        mut src: ssh2::Channel,
        read_cmd: &str,
        input: &[u8],
        dest: &Session,
        mut dst: ssh2::Channel,
        write_cmd: &str,
        deadline: Duration,
    ) -> Result<PipeOutput, SshError> {
        let secs = deadline.as_secs().max(1);
        let fail = |host: &str, what: &str, e: ssh2::Error| SshError::Session {
            host: host.to_string(),
            reason: format!("{what}: {}", e.message()),
        };
        let (write_cmd, write_mark) = marked(write_cmd, secs);
        let (read_cmd, read_mark) = marked(read_cmd, secs);
        let began = Instant::now();
        dst.exec(&write_cmd)
            .map_err(|e| fail(&dest.spec.id, "exec", e))?;
        src.exec(&read_cmd)
            .map_err(|e| fail(&self.spec.id, "exec", e))?;
        // A long quiet stretch (the source hashing an unchanged image) is not a dead peer:
        // the remote `timeout` bounds the commands.
        let (old_src, old_dst) = (self.raw.timeout(), dest.raw.timeout());
        let long = ((secs + KILL_AFTER_SECS + 30) * 1000).min(u64::from(u32::MAX)) as u32;
        self.raw.set_timeout(long);
        dest.raw.set_timeout(long);
        let result = self.relay(&mut src, input, dest, &mut dst, [&read_mark, &write_mark]);
        self.raw.set_timeout(old_src);
        dest.raw.set_timeout(old_dst);
        let Relayed {
            bytes,
            output,
            stderr,
            cut,
            told: [read_told, write_told],
        } = result?;
        let told = |host: &str, channel: &ssh2::Channel, told: Option<i32>| {
            let status = exit_code(channel).map_err(|e| fail(host, "exit status", e))?;
            told_code(status, told).map_err(|reason| SshError::Session {
                host: host.to_string(),
                reason,
            })
        };
        Ok(PipeOutput {
            bytes,
            read_exit: if cut {
                -1
            } else {
                told(&self.spec.id, &src, read_told)?
            },
            write_exit: told(&dest.spec.id, &dst, write_told)?,
            write_failed_first: cut,
            stderr,
            output,
            duration: began.elapsed(),
        })
    }

    /// Streams `src`'s output into `dst` (see [`Relayed`]; `marks`: the end marks of the
    /// source's command and the destination's). A destination command that stops while data
    /// still comes (it failed: a full disk) is seen at once, its output and errors read, and
    /// the source cut (its helper then stops on a closed pipe) instead of being left blocked.
    /// Both channels' streams are read as they come, up to [`READ_LIMIT`] (see
    /// [`Session::drain`]).
    fn relay(
        &self,
        src: &mut ssh2::Channel,
        input: &[u8],
        dest: &Session,
        dst: &mut ssh2::Channel,
        marks: [&str; 2],
    ) -> Result<Relayed, SshError> {
        let fail = |host: &str, what: &str, e: ssh2::Error| SshError::Session {
            host: host.to_string(),
            reason: format!("{what}: {}", e.message()),
        };
        if !input.is_empty() {
            src.write_all(input).map_err(|e| SshError::Session {
                host: self.spec.id.clone(),
                reason: format!("write: {e}"),
            })?;
        }
        src.send_eof().map_err(|e| fail(&self.spec.id, "eof", e))?;
        let mut bytes = 0u64;
        // What the destination says while it runs: libssh2 reports its end only once all it
        // sent was read.
        let mut dst_out = Said::keeping(READ_LIMIT as usize);
        let mut dest_errors = Said::default();
        let until = Instant::now() + Duration::from_millis(u64::from(self.raw.timeout()));
        let mut errors = Said::default();
        let mut dst_stopped = false;
        let relayed = self.drain(
            src,
            &mut |data| {
                // Non-blocking, so that a destination command that died (the channel closed
                // while its window is full) is seen at once rather than at the session
                // timeout.
                dest.raw.set_blocking(false);
                let mut off = 0;
                let written = loop {
                    if off == data.len() {
                        break Ok(());
                    }
                    match dst.write(&data[off..]) {
                        Ok(k) => off += k,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if !read_ready(dst, &mut dst_out, &mut dest_errors) {
                                break Err(too_much(&dst_out));
                            }
                            if dst.eof() {
                                dst_stopped = true;
                                break Err("the command on this host stopped reading".to_string());
                            }
                            // A command that no longer reads (its storage hung) while its
                            // host still answers never holds the relay past its deadline.
                            if Instant::now() > until {
                                break Err(STOPPED_READING.to_string());
                            }
                            wait_socket(&dest.raw);
                        }
                        Err(e) => break Err(format!("write: {e}")),
                    }
                };
                dest.raw.set_blocking(true);
                written.map_err(|reason| SshError::Session {
                    host: dest.spec.id.clone(),
                    reason,
                })?;
                bytes += data.len() as u64;
                PIPED_BYTES.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            },
            &mut errors,
            until,
        );
        match relayed {
            // The destination stopped first: what it says follows.
            Err(_) if dst_stopped => {}
            r => r?,
        }
        if dst_stopped {
            // The source is cut: its side closes, and its helper ends on the closed pipe.
            let _ = src.close();
        } else {
            dst.send_eof().map_err(|e| fail(&dest.spec.id, "eof", e))?;
        }
        // Quiet stretches (the destination completing its update) are no dead peer, within
        // the one window of the whole relay: a destination that hangs once all is sent (its
        // storage stuck at its commit) never holds it twice as long. The closing calls below
        // wait no longer either.
        let left = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let left_ms = left.as_millis().min(u128::from(u32::MAX)) as u32;
        self.raw.set_timeout(left_ms);
        dest.raw.set_timeout(left_ms);
        let until = Instant::now() + left;
        dest.drain(
            dst,
            &mut |data| {
                if !dst_out.push(data) {
                    return Err(SshError::Session {
                        host: dest.spec.id.clone(),
                        reason: too_much(&dst_out),
                    });
                }
                Ok(())
            },
            &mut dest_errors,
            until,
        )?;
        if !dst_stopped {
            let _ = src.wait_close();
        }
        let _ = dst.wait_close();
        let told = [errors.take_end(marks[0]), dest_errors.take_end(marks[1])];
        Ok(Relayed {
            bytes,
            output: String::from_utf8_lossy(&dst_out.into_bytes()).into_owned(),
            stderr: format!("{}{}", errors.text(), dest_errors.text()),
            cut: dst_stopped,
            told,
        })
    }

    /// Reads `channel` until the host has sent all of both its streams, as they come (libssh2
    /// would otherwise queue a stream not read in memory without bound): its standard output
    /// into `output`, its standard error into `errors`. A host still sending at `until`, or
    /// sending more than [`READ_LIMIT`] bytes of errors, is given up on. The session is left
    /// blocking.
    fn drain(
        &self,
        channel: &mut ssh2::Channel,
        output: &mut dyn FnMut(&[u8]) -> Result<(), SshError>,
        errors: &mut Said,
        until: Instant,
    ) -> Result<(), SshError> {
        self.raw.set_blocking(false);
        let result = self.drain_nonblocking(channel, output, errors, until);
        self.raw.set_blocking(true);
        result
    }

    fn drain_nonblocking(
        &self,
        channel: &mut ssh2::Channel,
        output: &mut dyn FnMut(&[u8]) -> Result<(), SshError>,
        errors: &mut Said,
        until: Instant,
    ) -> Result<(), SshError> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let mut progressed = false;
            match channel.stream(0).read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    progressed = true;
                    output(&buf[..n])?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    return Err(SshError::Session {
                        host: self.spec.id.clone(),
                        reason: format!("read: {e}"),
                    });
                }
            }
            match channel.stream(1).read(&mut buf) {
                Ok(0) => {}
                Ok(n) => {
                    progressed = true;
                    if !errors.push(&buf[..n]) {
                        return Err(SshError::Session {
                            host: self.spec.id.clone(),
                            reason: format!(
                                "it printed more than {READ_LIMIT} bytes of errors: refused"
                            ),
                        });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    return Err(SshError::Session {
                        host: self.spec.id.clone(),
                        reason: format!("read: {e}"),
                    });
                }
            }
            if progressed {
                if Instant::now() > until {
                    break;
                }
                continue;
            }
            if channel.eof() {
                return Ok(());
            }
            if Instant::now() > until {
                break;
            }
            // A command quiet for long (a helper hashing a large image) is not a dead one;
            // keepalives (one when their interval has passed) find a dead connection.
            let _ = self.raw.keepalive_send();
            wait_socket(&self.raw);
        }
        Err(SshError::Session {
            host: self.spec.id.clone(),
            reason: "its output had not ended by the deadline: given up".to_string(),
        })
    }

    /// Runs `command` with `input` on its standard input, and returns its standard output as
    /// bytes, at most [`READ_LIMIT`] of them (a host answering more is refused).
    pub fn exec_bytes(
        &self,
        command: &str,
        input: &[u8],
        deadline: Duration,
    ) -> Result<BytesOutput, SshError> {
        let mut stdout = Capped::default();
        let out = self
            .exec_stream(command, &mut &input[..], &mut stdout, deadline, false)
            .map_err(|e| match e {
                SshError::Local { .. } if stdout.over => SshError::Session {
                    host: self.spec.id.clone(),
                    reason: format!("its answer is longer than {READ_LIMIT} bytes: refused"),
                },
                e => e,
            })?;
        Ok(BytesOutput {
            exit_code: out.exit_code,
            stdout: stdout.bytes,
            stderr: out.stderr,
            duration: out.duration,
        })
    }

    /// Runs `command` with all of `input` streamed to its standard input, then its standard
    /// output streamed into `output`, in large writes. With `counted`, the bytes streamed
    /// either way count in [`PIPED_BYTES`]. A failure to read `input` or to write `output`
    /// is [`SshError::Local`].
    pub fn exec_stream(
        &self,
        command: &str,
        input: &mut dyn Read,
        output: &mut dyn std::io::Write,
        deadline: Duration,
        counted: bool,
    ) -> Result<StreamOutput, SshError> {
        let channel = self.open_channel()?;
        self.exec_stream_on(channel, command, input, output, deadline, counted)
    }

    /// [`Session::exec_stream`] on a channel already open.
    fn exec_stream_on(
        &self,
        mut channel: ssh2::Channel,
        command: &str,
        input: &mut dyn Read,
        output: &mut dyn std::io::Write,
        deadline: Duration,
        counted: bool,
    ) -> Result<StreamOutput, SshError> {
        let secs = deadline.as_secs().max(1);
        let (wrapped, mark) = marked(command, secs);
        let fail = |what: &str, e: ssh2::Error| SshError::Session {
            host: self.spec.id.clone(),
            reason: format!("{what}: {}", e.message()),
        };
        let local = |what: &str, e: std::io::Error| SshError::Local {
            host: self.spec.id.clone(),
            reason: format!("{what}: {e}"),
        };
        let count = |n: usize| {
            if counted {
                PIPED_BYTES.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        };
        let began = Instant::now();
        let old = self.raw.timeout();
        channel.exec(&wrapped).map_err(|e| fail("exec", e))?;
        self.raw
            .set_timeout(((secs + KILL_AFTER_SECS + 30) * 1000).min(u64::from(u32::MAX)) as u32);
        let result = (|| {
            // What the command says while it is fed is read up to the same bounds as after
            // (see [`Session::drain`]).
            let mut early = Said::keeping(READ_LIMIT as usize);
            let mut errors = Said::default();
            let until = began + Duration::from_secs(secs + KILL_AFTER_SECS + 30);
            let fed = self.feed(
                &mut channel,
                input,
                (&mut early, &mut errors),
                counted,
                until,
            );
            self.raw.set_blocking(true);
            let stopped_reading = fed?;
            if !stopped_reading {
                channel.send_eof().map_err(|e| fail("eof", e))?;
            }
            let early = early.into_bytes();
            output
                .write_all(&early)
                .map_err(|e| local("writing the output locally", e))?;
            count(early.len());
            let until = began + Duration::from_secs(secs + KILL_AFTER_SECS + 30);
            self.drain(
                &mut channel,
                &mut |data| {
                    output
                        .write_all(data)
                        .map_err(|e| local("writing the output locally", e))?;
                    count(data.len());
                    Ok(())
                },
                &mut errors,
                until,
            )?;
            output
                .flush()
                .map_err(|e| local("writing the output locally", e))?;
            channel.wait_close().map_err(|e| fail("close channel", e))?;
            let told = errors.take_end(&mark);
            let status = exit_code(&channel).map_err(|e| fail("exit status", e))?;
            Ok(StreamOutput {
                exit_code: told_code(status, told).map_err(|reason| SshError::Session {
                    host: self.spec.id.clone(),
                    reason,
                })?,
                stderr: errors.text(),
                duration: began.elapsed(),
                stopped_reading,
            })
        })();
        self.raw.set_timeout(old);
        result
    }

    /// Writes all of `input` to the command on `channel`, without blocking, so that a command
    /// that stops reading (it failed: a full disk) is seen at once, with what it said, instead
    /// of at the session's timeout: libssh2 reports its end only once everything it sent was
    /// read. What it says meanwhile goes to `early` and `errors`. `Ok(true)`: the command
    /// stopped reading before the end of the input.
    fn feed(
        &self,
        channel: &mut ssh2::Channel,
        input: &mut dyn Read,
        (early, errors): (&mut Said, &mut Said),
        counted: bool,
        until: Instant,
    ) -> Result<bool, SshError> {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(SshError::Local {
                        host: self.spec.id.clone(),
                        reason: format!("reading the local input: {e}"),
                    });
                }
            };
            self.raw.set_blocking(false);
            let mut off = 0;
            while off < n {
                match channel.write(&buf[off..n]) {
                    Ok(k) => off += k,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if !read_ready(channel, early, errors) {
                            self.raw.set_blocking(true);
                            return Err(SshError::Session {
                                host: self.spec.id.clone(),
                                reason: too_much(early),
                            });
                        }
                        if channel.eof() {
                            self.raw.set_blocking(true);
                            return Ok(true);
                        }
                        // A command that no longer reads while its host still answers
                        // never holds the write past the deadline.
                        if Instant::now() > until {
                            self.raw.set_blocking(true);
                            return Err(SshError::Session {
                                host: self.spec.id.clone(),
                                reason: STOPPED_READING.to_string(),
                            });
                        }
                        wait_socket(&self.raw);
                    }
                    Err(e) => {
                        self.raw.set_blocking(true);
                        return Err(SshError::Session {
                            host: self.spec.id.clone(),
                            reason: format!("write: {e}"),
                        });
                    }
                }
            }
            self.raw.set_blocking(true);
            if counted {
                PIPED_BYTES.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(false)
    }
}

/// A writer that keeps at most [`READ_LIMIT`] bytes and fails past them.
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.bytes.len() + buf.len()) as u64 > READ_LIMIT {
            self.over = true;
            return Err(std::io::Error::other(format!(
                "an answer longer than {READ_LIMIT} bytes"
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The result of [`Session::exec_stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOutput {
    pub exit_code: i32,
    pub stderr: String,
    pub duration: Duration,
    /// The command stopped reading before all of the input was sent (it failed).
    pub stopped_reading: bool,
}

/// The result of [`Session::exec_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BytesOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub duration: Duration,
}

fn sha256_b64_key(key_b64: &str) -> Option<String> {
    let blob = base64::engine::general_purpose::STANDARD
        .decode(key_b64.trim())
        .ok()?;
    Some(fingerprint(&sha2::Sha256::digest(&blob)))
}

/// Held while a login reads or adds to a `known_hosts` file (see [`verify_host_key`]).
static KNOWN_HOSTS_LOCK: Mutex<()> = Mutex::new(());

fn verify_host_key(
    raw: &RawSession,
    spec: &HostSpec,
    policy: HostKeyPolicy,
) -> Result<(), SshError> {
    let (key, _) = raw.host_key().ok_or_else(|| SshError::Session {
        host: spec.id.clone(),
        reason: "the server sent no host key".into(),
    })?;
    check_host_key(spec, policy, key)
}

/// What a login does with the host key `key` (the key blob a host offers in its handshake):
/// `Ok` when `spec`'s `known_hosts` holds it, or under accept-new once it is added there;
/// a changed, `@revoked` or (strict) unknown key refused. Public for the tests of many
/// logins at once.
pub fn check_host_key(spec: &HostSpec, policy: HostKeyPolicy, key: &[u8]) -> Result<(), SshError> {
    let endpoint = spec.endpoint();
    let offered = fingerprint(&sha2::Sha256::digest(key));
    let known_hosts_err = |reason: String| SshError::KnownHosts {
        path: spec.known_hosts.display().to_string(),
        reason,
    };
    let raw = RawSession::new().map_err(|e| known_hosts_err(e.message().to_string()))?;
    let mut kh = raw
        .known_hosts()
        .map_err(|e| known_hosts_err(e.message().to_string()))?;
    // From reading the file to adding the key: two logins at once (to one host or to two
    // hosts of one file) never both add a key nor lose one. Only this part of a login holds
    // it, so logins to several hosts go on at once.
    let _known_hosts = KNOWN_HOSTS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut text = String::new();
    if spec.known_hosts.exists() {
        text = std::fs::read_to_string(&spec.known_hosts)
            .map_err(|e| known_hosts_err(e.to_string()))?;
        if read_known_hosts(&mut kh, &text, key).is_err() {
            return Err(SshError::RevokedHostKey {
                host: spec.id.clone(),
                endpoint,
                offered,
                known_hosts: spec.known_hosts.display().to_string(),
            });
        }
    }
    match kh.check(&spec.known_name(), key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => {
            let known = known_fingerprint(&raw, spec, key).unwrap_or_else(|| "another key".into());
            Err(SshError::ChangedHostKey {
                host: spec.id.clone(),
                endpoint,
                known,
                offered,
                known_hosts: spec.known_hosts.display().to_string(),
            })
        }
        // libssh2 could not judge the file against the key: never taken for "unknown".
        CheckResult::Failure => Err(known_hosts_err(format!(
            "the key {offered} offered by {endpoint} could not be checked against it: refused"
        ))),
        CheckResult::NotFound if policy == HostKeyPolicy::AcceptNew => {
            if let Some(why) = not_to_learn(spec, &text) {
                return Err(known_hosts_err(why));
            }
            append_known_host(spec, key)?;
            // Said every time: the operator trusted this key on first sight.
            tracing::warn!(
                host = %spec.id,
                "learned the host key {offered} of {} ({endpoint}) and added it to {} (--accept-new-host-keys): compare it with the host's own (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` there)",
                spec.id,
                spec.known_hosts.display()
            );
            Ok(())
        }
        CheckResult::NotFound => Err(SshError::UnknownHostKey {
            host: spec.id.clone(),
            endpoint,
            offered,
        }),
    }
}

/// Why a key unknown to `spec`'s `known_hosts` (its text `text`) is not learned under
/// accept-new: a file that keeps nothing (`/dev/null`, not a regular file: every key would
/// be new at every login), or a line libssh2 does not read that may give this host another
/// key (a wildcard or negated pattern, an `@cert-authority` line) — learned, a key an
/// impostor offers would be taken where `ssh` itself refuses it.
fn not_to_learn(spec: &HostSpec, text: &str) -> Option<String> {
    let path = &spec.known_hosts;
    if let Ok(m) = std::fs::metadata(path)
        && !m.is_file()
    {
        return Some(
            "it is not a regular file: a host key added there would not be kept (every key would be new at every login); name a known_hosts file to learn keys into"
                .to_string(),
        );
    }
    let names = [
        spec.address.clone(),
        format!("[{}]:{}", spec.address, spec.port),
    ];
    for (n, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') || t.starts_with("@revoked") {
            continue;
        }
        let (ca, fields) = match t.strip_prefix("@cert-authority") {
            Some(rest) => (true, rest.trim_start()),
            None => (false, t),
        };
        let Some(hosts) = fields.split_whitespace().next() else {
            continue;
        };
        let patterned = hosts.contains(['*', '?', '!']);
        if !(ca || patterned) {
            continue;
        }
        let pats: Vec<&str> = hosts.split(',').collect();
        let covers = names.iter().any(|name| {
            let any = pats
                .iter()
                .any(|p| !p.starts_with('!') && glob(&p.to_lowercase(), &name.to_lowercase()));
            let denied = pats.iter().any(|p| {
                p.strip_prefix('!')
                    .is_some_and(|p| glob(&p.to_lowercase(), &name.to_lowercase()))
            });
            any && !denied
        });
        if covers {
            let what = match ca {
                true => "an @cert-authority line",
                false => "a pattern line",
            };
            return Some(format!(
                "its line {} ({what}: `{hosts}`) may give {} another key, and reprise does not read such lines: no key is learned for it; add its key to the file by hand, checked against the host's own (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` there)",
                n + 1,
                spec.address
            ));
        }
    }
    None
}

/// Whether `name` matches the `known_hosts` pattern `pat` (`*`: any run, `?`: one character).
fn glob(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    // Iterative wildcard match, backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// Reads a `known_hosts` text into `kh` line by line, as `ssh` reads it: a line libssh2
/// cannot parse (a key type it does not know) is skipped rather than making the whole file
/// unusable; `@cert-authority` lines are skipped (host certificates are not used). `Err` when
/// a line marks `key` `@revoked`.
fn read_known_hosts(kh: &mut ssh2::KnownHosts, text: &str, key: &[u8]) -> Result<(), ()> {
    for line in text.lines() {
        let t = line.trim_start();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(rest) = t.strip_prefix("@revoked") {
            let blob = rest
                .split_whitespace()
                .nth(2)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
            if blob.as_deref() == Some(key) {
                return Err(());
            }
            continue;
        }
        if t.starts_with('@') {
            continue;
        }
        let _ = kh.read_str(line, KnownHostFileKind::OpenSSH);
    }
    Ok(())
}

/// What a `known_hosts` text says of `key` at `address:port`, read as a connection reads it
/// (without one): `Some(true)` a match, `Some(false)` another key or `@revoked`, `None` no
/// entry. For tests and fuzzing of the reader.
pub fn known_hosts_say(text: &str, address: &str, port: u16, key: &[u8]) -> Option<bool> {
    let raw = RawSession::new().ok()?;
    let mut kh = raw.known_hosts().ok()?;
    if read_known_hosts(&mut kh, text, key).is_err() {
        return Some(false);
    }
    match kh.check(&known_name(address, port), key) {
        CheckResult::Match => Some(true),
        CheckResult::Mismatch => Some(false),
        CheckResult::NotFound | CheckResult::Failure => None,
    }
}

/// The fingerprint of the `known_hosts` entry that holds another key for this host. Each line
/// is matched on its own by libssh2, so hashed names (`|1|...`, Debian's default) count too.
fn known_fingerprint(raw: &RawSession, spec: &HostSpec, key: &[u8]) -> Option<String> {
    let text = std::fs::read_to_string(&spec.known_hosts).ok()?;
    text.lines()
        .filter(|l| !l.trim_start().starts_with('@'))
        .find_map(|line| {
            let mut one = raw.known_hosts().ok()?;
            one.read_str(line, KnownHostFileKind::OpenSSH).ok()?;
            if !matches!(one.check(&spec.known_name(), key), CheckResult::Mismatch) {
                return None;
            }
            sha256_b64_key(one.hosts().ok()?.first()?.key())
        })
}

/// Appends the host's key to its `known_hosts` as `ssh` does (`[address]:port` for a port
/// other than 22), leaving every line already there as it was.
fn append_known_host(spec: &HostSpec, key: &[u8]) -> Result<(), SshError> {
    let path = &spec.known_hosts;
    let err = |reason: String| SshError::KnownHosts {
        path: path.display().to_string(),
        reason,
    };
    let kind = key_type_name(key).ok_or_else(|| err("the host key offered is malformed".into()))?;
    let mut line = format!(
        "{} {kind} {} added by reprise for {}\n",
        spec.known_name(),
        base64::engine::general_purpose::STANDARD.encode(key),
        spec.id
    );
    match std::fs::read(path) {
        // A last line without its newline would swallow the new one.
        Ok(old) if old.last().is_some_and(|&c| c != b'\n') => line.insert(0, '\n'),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
            }
        }
        Err(e) => return Err(err(e.to_string())),
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| err(e.to_string()))
}

/// The type name a host key blob starts with: a u32 length, then the name.
fn key_type_name(key: &[u8]) -> Option<&str> {
    key.get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| key.get(4..4usize.checked_add(n)?))
        .and_then(|name| std::str::from_utf8(name).ok())
}

/// Runs commands on hosts by id; the runner's view of the network.
pub trait Transport: Send + Sync {
    /// Runs `command` on `host`, stopped at `deadline`.
    fn exec(&self, host: &str, command: &str, deadline: Duration) -> Result<ExecOutput, SshError>;

    /// Streams the output of `read_cmd` on `from` into `write_cmd` on `to` (a transport that
    /// only runs commands, such as a test's, cannot).
    fn pipe(
        &self,
        from: &str,
        read_cmd: &str,
        to: &str,
        write_cmd: &str,
        deadline: Duration,
    ) -> Result<PipeOutput, SshError> {
        let _ = (read_cmd, to, write_cmd, deadline);
        Err(SshError::Session {
            host: from.to_string(),
            reason: "this transport cannot stream between hosts".into(),
        })
    }

    /// Runs `command` on `host` with `input` on its standard input; its output as bytes.
    fn exec_bytes(
        &self,
        host: &str,
        command: &str,
        input: &[u8],
        deadline: Duration,
    ) -> Result<BytesOutput, SshError> {
        let _ = (command, input, deadline);
        Err(SshError::Session {
            host: host.to_string(),
            reason: "this transport cannot send data to a command".into(),
        })
    }

    /// Runs `command` on `host` with all of `input` on its standard input, then streams its
    /// standard output into `output` (the bytes count in [`PIPED_BYTES`]).
    fn exec_stream(
        &self,
        host: &str,
        command: &str,
        input: &mut dyn Read,
        output: &mut dyn std::io::Write,
        deadline: Duration,
    ) -> Result<StreamOutput, SshError> {
        let _ = (command, input, output, deadline);
        Err(SshError::Session {
            host: host.to_string(),
            reason: "this transport cannot stream to a command".into(),
        })
    }

    /// Starts `command` on `host` (stopped at `deadline`) as a local process carrying it, its
    /// standard streams piped and leading its own process group, when this transport sends
    /// bulk data through a client program (the OpenSSH client): the host key has then been
    /// checked by this transport first, under its policy, once per host for the transport's
    /// life (one command). `None` when it streams itself
    /// ([`Transport::exec_stream`], [`Transport::pipe_with_input`]).
    fn bulk_process(
        &self,
        host: &str,
        command: &str,
        deadline: Duration,
    ) -> Option<Result<std::process::Child, SshError>> {
        let _ = (host, command, deadline);
        None
    }

    /// Gets bulk streams to `host` ready ahead of them (the OpenSSH master connection), so that
    /// several hosts get ready at once. Errors are left for the streams, which meet them
    /// again.
    fn prepare_bulk(&self, host: &str) {
        let _ = host;
    }

    /// Logs in to `host` now until `sessions` sessions to it are ready (opened at once), so
    /// that several hosts log in at once and as many transfers find one idle. Errors are left
    /// for the commands, which meet them again.
    fn connect(&self, host: &str, sessions: usize) {
        let _ = (host, sessions);
    }

    /// Whether each bulk stream takes an SSH session of its own (libssh2), rather than a
    /// channel of one connection per host ([`Transport::bulk_process`]).
    fn streams_take_sessions(&self) -> bool {
        true
    }

    /// The host of the inventory that is this very machine (`--here`), if any: replication
    /// runs its side locally instead of over SSH to itself.
    fn here(&self) -> Option<&str> {
        None
    }

    /// Cuts every stream and command under way (a signal stops a replication): their calls
    /// return an error at once, and the bulk processes of [`Transport::bulk_process`] are
    /// told to stop ([`Transport::interrupted`]). Later calls open new connections.
    fn interrupt(&self) {}

    /// Whether [`Transport::interrupt`] was called: the streams of bulk processes stop.
    fn interrupted(&self) -> bool {
        false
    }

    /// [`Transport::pipe`], with `input` written first to `read_cmd`'s standard input.
    fn pipe_with_input(
        &self,
        from: &str,
        read_cmd: &str,
        input: &[u8],
        to: &str,
        write_cmd: &str,
        deadline: Duration,
    ) -> Result<PipeOutput, SshError> {
        if input.is_empty() {
            return self.pipe(from, read_cmd, to, write_cmd, deadline);
        }
        Err(SshError::Session {
            host: from.to_string(),
            reason: "this transport cannot send data to a command".into(),
        })
    }
}

/// SSH to the inventory's hosts, keeping idle sessions for reuse (one session carries one
/// command at a time: libssh2 serializes channels).
pub struct SshTransport {
    hosts: HashMap<String, HostSpec>,
    policy: HostKeyPolicy,
    connect_timeout: Duration,
    output_limit: usize,
    idle: Mutex<HashMap<String, Vec<Session>>>,
    here: Option<String>,
    client: SshClient,
    /// Sockets of the sessions carrying a stream now, for [`Transport::interrupt`]; the ids
    /// it cut, whose sessions are not reused.
    busy: Mutex<(u64, HashMap<u64, i32>, std::collections::HashSet<u64>)>,
    /// [`Transport::interrupt`] was called.
    cut: std::sync::atomic::AtomicBool,
    /// The OpenSSH master connections of this command, one per host.
    masters: openssh::Masters,
}

/// Marks a session busy with a stream for as long as it lives.
struct Busy<'a> {
    transport: &'a SshTransport,
    id: u64,
}

impl Busy<'_> {
    /// Whether [`Transport::interrupt`] cut this session (then it must not be reused).
    fn done(self) -> bool {
        let mut busy = self.transport.busy.lock().expect("not poisoned");
        busy.1.remove(&self.id);
        busy.2.remove(&self.id)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.transport.busy.lock() {
            busy.1.remove(&self.id);
        }
    }
}

impl SshTransport {
    pub fn new(
        hosts: HashMap<String, HostSpec>,
        policy: HostKeyPolicy,
        connect_timeout: Duration,
    ) -> Self {
        SshTransport {
            hosts,
            policy,
            connect_timeout,
            output_limit: OUTPUT_LIMIT,
            idle: Mutex::new(HashMap::new()),
            here: None,
            client: SshClient::default(),
            busy: Mutex::new((0, HashMap::new(), std::collections::HashSet::new())),
            cut: std::sync::atomic::AtomicBool::new(false),
            masters: openssh::Masters::new(),
        }
    }

    /// Registers `session` as carrying a stream (see [`Transport::interrupt`]).
    fn busy(&self, session: &Session) -> Busy<'_> {
        use std::os::fd::AsRawFd as _;
        let mut busy = self.busy.lock().expect("not poisoned");
        busy.0 += 1;
        let id = busy.0;
        busy.1.insert(id, session.raw.as_raw_fd());
        Busy {
            transport: self,
            id,
        }
    }

    /// Chooses the client of bulk streams (see [`Transport::bulk_process`]).
    pub fn with_client(mut self, client: SshClient) -> Self {
        self.client = client;
        self
    }

    /// Declares `host` to be this machine (see [`Transport::here`]).
    pub fn with_here(mut self, host: Option<String>) -> Self {
        self.here = host;
        self
    }

    /// Whether `other` reaches every host as this transport does (the same hosts, addresses,
    /// ports, users, keys and options): then this one's connections may serve it.
    pub fn same_hosts(&self, other: &SshTransport) -> bool {
        self.hosts == other.hosts
            && self.policy == other.policy
            && self.connect_timeout == other.connect_timeout
            && self.here == other.here
            && self.client == other.client
    }

    /// What the known_hosts files of this transport's hosts hold now (a digest of each, `None`
    /// when it cannot be read): connections kept while it changes would go on trusting a key
    /// that may no longer be trusted.
    pub fn trust_stamp(&self) -> Vec<(PathBuf, Option<[u8; 32]>)> {
        let mut files: Vec<&PathBuf> = self.hosts.values().map(|h| &h.known_hosts).collect();
        files.sort();
        files.dedup();
        files
            .into_iter()
            .map(|f| {
                let digest = std::fs::read(f).ok().map(|b| *blake3::hash(&b).as_bytes());
                (f.clone(), digest)
            })
            .collect()
    }

    /// Sends a keepalive on every idle session that has been quiet for its interval (so that
    /// a firewall or NAT between the sites keeps the connection); a session whose connection
    /// ended is dropped (the next command to its host makes a new one).
    pub fn keep_alive(&self) {
        let mut idle = self.idle.lock().expect("not poisoned");
        for (host, sessions) in idle.iter_mut() {
            sessions.retain(|s| match s.raw.keepalive_send() {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(host, error = %e.message(), "idle ssh session ended");
                    false
                }
            });
        }
    }

    /// Checks every kept connection, all at once: an idle session that cannot open a channel
    /// within `limit`, or a master connection that cannot run `true` within it, is ended (a
    /// link that went down, a host frozen), so that the next command to its host makes a new
    /// one at once instead of waiting on it for the connect timeout.
    pub fn probe(&self, limit: Duration) {
        self.probe_while(limit, || ())
    }

    /// [`SshTransport::probe`], with `then` run once the idle sessions were checked, while
    /// the masters still are (each runs `true`, a few round trips): a bulk stream `then`
    /// opens to a host waits for its master's answer, or for a new master, so nothing goes
    /// through a stalled connection either way.
    pub fn probe_while<R>(&self, limit: Duration, then: impl FnOnce() -> R) -> R {
        self.masters
            .probe_while(&self.hosts, self.connect_timeout, limit, || {
                self.probe_sessions(limit);
                then()
            })
    }

    /// The idle sessions' part of [`SshTransport::probe`].
    fn probe_sessions(&self, limit: Duration) {
        let idle = std::mem::take(&mut *self.idle.lock().expect("not poisoned"));
        std::thread::scope(|scope| {
            for (host, sessions) in idle {
                for session in sessions {
                    let host = host.clone();
                    scope.spawn(move || {
                        session.raw.set_timeout(timeout_ms(limit));
                        match session.open_channel() {
                            Ok(mut channel) => {
                                let _ = channel.close();
                                drop(channel);
                                session.raw.set_timeout(timeout_ms(self.connect_timeout));
                                self.give_back(&host, session);
                            }
                            Err(e) => {
                                tracing::debug!(host, error = %e, "idle ssh session did not answer: ended");
                                session.discard();
                            }
                        }
                    });
                }
            }
        });
    }

    fn idle_session(&self, host: &str) -> Option<Session> {
        self.idle
            .lock()
            .expect("not poisoned")
            .get_mut(host)
            .and_then(Vec::pop)
    }

    fn new_session(&self, host: &str) -> Result<Session, SshError> {
        self.new_session_within(host, self.connect_timeout)
    }

    /// A new session, connected within `limit` at most (a command's deadline may leave less
    /// than the connect timeout); it then waits as long as any session for what it sends.
    fn new_session_within(&self, host: &str, limit: Duration) -> Result<Session, SshError> {
        let spec = self
            .hosts
            .get(host)
            .ok_or_else(|| SshError::UnknownHost(host.to_string()))?;
        let within = self
            .connect_timeout
            .min(limit)
            .max(Duration::from_millis(100));
        let session = Session::connect(spec, self.policy, within)?;
        session.raw.set_timeout(timeout_ms(self.connect_timeout));
        Ok(session)
    }
}

impl SshTransport {
    /// A session to `host` with a channel open on it: an idle session when it still answers
    /// (the connection costs more than most short transfers), else a new one.
    fn session_with_channel(&self, host: &str) -> Result<(Session, ssh2::Channel), SshError> {
        if let Some(session) = self.idle_session(host)
            && let Ok(channel) = session.open_channel()
        {
            return Ok((session, channel));
        }
        let session = self.new_session(host)?;
        let channel = session.open_channel()?;
        Ok((session, channel))
    }

    /// How a bulk stream reaches `host`: this command's OpenSSH master connection to it, made
    /// the first time (and again if it ended) once this transport has checked the host key,
    /// under its policy (a new key is recorded under accept-new). ssh(1) then checks the same
    /// key in the same file, and only a key of the type checked here; later streams are
    /// channels of that connection, so the key is checked once per host and command.
    fn bulk_route(&self, host: &str, spec: &HostSpec) -> Result<openssh::Route, SshError> {
        self.masters.route(spec, self.connect_timeout, |fresh| {
            self.checked_key_type(host, fresh)
        })
    }

    /// The type of the host key of `host`, checked by a session of this transport (`fresh`: a
    /// new one), under its policy.
    fn checked_key_type(&self, host: &str, fresh: bool) -> Result<String, SshError> {
        // A session of this command has checked the key already; a master that ended is
        // replaced after a check on a new connection.
        let idle = if fresh { None } else { self.idle_session(host) };
        let session = match idle {
            Some(s) => s,
            None => self.new_session(host)?,
        };
        let key_type = session.host_key_type()?;
        self.give_back(host, session);
        Ok(key_type)
    }

    fn give_back(&self, host: &str, session: Session) {
        self.idle
            .lock()
            .expect("not poisoned")
            .entry(host.to_string())
            .or_default()
            .push(session);
    }
}

impl Transport for SshTransport {
    fn here(&self) -> Option<&str> {
        self.here.as_deref()
    }

    fn prepare_bulk(&self, host: &str) {
        if self.client == SshClient::OpenSsh
            && let Some(spec) = self.hosts.get(host)
        {
            let _ = self.masters.start(spec, self.connect_timeout, |fresh| {
                self.checked_key_type(host, fresh)
            });
        }
    }

    fn connect(&self, host: &str, sessions: usize) {
        let idle = self
            .idle
            .lock()
            .expect("not poisoned")
            .get(host)
            .map_or(0, Vec::len);
        // Each new session is its own connection, made and then handed over whole: no
        // session is used by two threads.
        std::thread::scope(|scope| {
            for _ in idle..sessions.max(1) {
                scope.spawn(|| {
                    if let Ok(session) = self.new_session(host) {
                        self.give_back(host, session);
                    }
                });
            }
        });
    }

    fn streams_take_sessions(&self) -> bool {
        self.client != SshClient::OpenSsh
    }

    fn bulk_process(
        &self,
        host: &str,
        command: &str,
        deadline: Duration,
    ) -> Option<Result<std::process::Child, SshError>> {
        if self.client != SshClient::OpenSsh {
            return None;
        }
        tracing::debug!(
            host,
            command = head(command),
            "ssh bulk stream (OpenSSH client)"
        );
        Some((|| {
            let spec = self
                .hosts
                .get(host)
                .ok_or_else(|| SshError::UnknownHost(host.to_string()))?;
            let route = self.bulk_route(host, spec)?;
            // `exit $?`: a command killed by a signal ends with 128 + its number, as over
            // libssh2 (ssh(1) itself would exit with 255, as it does for its own failures).
            let secs = deadline.as_secs().max(1);
            let wrapped = format!(
                "timeout --kill-after={KILL_AFTER_SECS} {secs} sh -c {}; exit $?",
                crate::template::shell_quote(command)
            );
            openssh::stream_command(
                spec,
                &route.key_type,
                self.connect_timeout,
                route.control.as_deref(),
                &wrapped,
            )?
            .spawn()
            .map_err(|e| SshError::Local {
                host: host.to_string(),
                reason: format!(
                    "cannot start the OpenSSH client `ssh`: {e}; install it (Debian: \
                         openssh-client) or choose --ssh-client libssh2"
                ),
            })
        })())
    }

    fn exec_stream(
        &self,
        host: &str,
        command: &str,
        input: &mut dyn Read,
        output: &mut dyn std::io::Write,
        deadline: Duration,
    ) -> Result<StreamOutput, SshError> {
        tracing::debug!(host, command = head(command), "ssh stream");
        let (session, channel) = self.session_with_channel(host)?;
        let busy = self.busy(&session);
        let out = session.exec_stream_on(channel, command, input, output, deadline, true);
        if !busy.done() && out.is_ok() {
            self.give_back(host, session);
        }
        out
    }

    fn exec_bytes(
        &self,
        host: &str,
        command: &str,
        input: &[u8],
        deadline: Duration,
    ) -> Result<BytesOutput, SshError> {
        tracing::debug!(host, command = head(command), "ssh exec (bytes)");
        let session = match self.idle_session(host) {
            Some(s) => s,
            None => self.new_session(host)?,
        };
        let busy = self.busy(&session);
        let out = session.exec_bytes(command, input, deadline);
        if !busy.done() && out.is_ok() {
            self.give_back(host, session);
        }
        out
    }

    fn pipe_with_input(
        &self,
        from: &str,
        read_cmd: &str,
        input: &[u8],
        to: &str,
        write_cmd: &str,
        deadline: Duration,
    ) -> Result<PipeOutput, SshError> {
        tracing::debug!(from, to, command = head(read_cmd), "ssh pipe");
        let (src, src_channel) = self.session_with_channel(from)?;
        let (dst, dst_channel) = self.session_with_channel(to)?;
        let (busy_src, busy_dst) = (self.busy(&src), self.busy(&dst));
        let out = src.pipe_on(
            src_channel,
            read_cmd,
            input,
            &dst,
            dst_channel,
            write_cmd,
            deadline,
        );
        let (cut_src, cut_dst) = (busy_src.done(), busy_dst.done());
        if out.is_ok() && !cut_src && !cut_dst {
            self.give_back(from, src);
            self.give_back(to, dst);
        }
        out
    }

    fn interrupted(&self) -> bool {
        self.cut.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn interrupt(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut busy = self.busy.lock().expect("not poisoned");
        let (_, live, cut) = &mut *busy;
        for (id, fd) in live.iter() {
            // SAFETY: the descriptor belongs to a session that is alive while registered (its
            // `Busy` is dropped before it), so it is open for this borrow; shutdown only ends
            // its connection.
            let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
            let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Both);
            cut.insert(*id);
        }
    }

    fn pipe(
        &self,
        from: &str,
        read_cmd: &str,
        to: &str,
        write_cmd: &str,
        deadline: Duration,
    ) -> Result<PipeOutput, SshError> {
        self.pipe_with_input(from, read_cmd, &[], to, write_cmd, deadline)
    }

    fn exec(&self, host: &str, command: &str, deadline: Duration) -> Result<ExecOutput, SshError> {
        // An idle session may have died with its host or its connection: a command it could
        // not even send is tried once on a new session. One that may have run is never sent
        // twice.
        // The deadline holds for all of it: a new connection, the command and its output.
        tracing::debug!(host, command = head(command), "ssh exec");
        let began = Instant::now();
        let until = began + deadline;
        // A host that did not answer is said so with the time it was given in all.
        let waited = |e: SshError| match e {
            SshError::Hung { host, .. } => SshError::Hung {
                host,
                secs: began.elapsed().as_secs_f64().round() as u64,
            },
            e => e,
        };
        type Attempt = Result<(ExecOutput, bool), ExecFailure>;
        let fresh = || -> Result<(Session, Attempt), SshError> {
            let left = until.saturating_duration_since(Instant::now());
            let s = self.new_session_within(host, left)?;
            let r = s.run(command, until, self.output_limit);
            Ok((s, r))
        };
        let (session, result) = match self.idle_session(host) {
            Some(s) => match s.run(command, until, self.output_limit) {
                Err(ExecFailure::NotStarted(_)) => {
                    s.discard();
                    fresh().map_err(waited)?
                }
                r => (s, r),
            },
            None => fresh().map_err(waited)?,
        };
        match result {
            Ok((out, true)) => {
                self.give_back(host, session);
                Ok(out)
            }
            // A session whose channel a left-behind process holds open is closed.
            Ok((out, false)) => {
                session.discard();
                Ok(out)
            }
            // A broken session is dropped, not reused.
            Err(e) => {
                session.discard();
                Err(waited(e.into_error()))
            }
        }
    }
}
/// The start of `command`, for a debug line.
fn head(command: &str) -> String {
    command.chars().take(100).collect()
}

impl Session {
    /// Drops a session given up on without waiting long for a host that may not answer:
    /// libssh2 would otherwise wait a whole session timeout to close it.
    fn discard(self) {
        self.raw.set_timeout(100);
        drop(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_known_for_one_port_of_an_address_is_never_taken_for_another_port_s() {
        use base64::Engine as _;
        let b64 = |k: &str| base64::engine::general_purpose::STANDARD.decode(k).unwrap();
        let a = "AAAAC3NzaC1lZDI1NTE5AAAAIBbJq1C1Q4wzhr8+6qKp7S0pqfGOjJ0tJxJHEdjKvXkP";
        let b = "AAAAC3NzaC1lZDI1NTE5AAAAIAAJq1C1Q4wzhr8+6qKp7S0pqfGOjJ0tJxJHEdjKvXkP";
        let (key_a, key_b) = (b64(a), b64(b));
        // hv-pra1 on port 22 and hv-pra2 on port 2222 of one address (a port forward each).
        let both = format!("gw ssh-ed25519 {a}\n[gw]:2222 ssh-ed25519 {b}\n");
        assert_eq!(known_hosts_say(&both, "gw", 22, &key_a), Some(true));
        assert_eq!(known_hosts_say(&both, "gw", 2222, &key_b), Some(true));
        // The forward of 2222 now reaches hv-pra1: its key is another machine's.
        assert_eq!(known_hosts_say(&both, "gw", 2222, &key_a), Some(false));
        let reversed = format!("[gw]:2222 ssh-ed25519 {b}\ngw ssh-ed25519 {a}\n");
        assert_eq!(known_hosts_say(&reversed, "gw", 2222, &key_a), Some(false));
        // Known for port 22 alone: port 2222 is not known (as OpenSSH looks it up).
        let only_22 = format!("gw ssh-ed25519 {a}\n");
        assert_eq!(known_hosts_say(&only_22, "gw", 2222, &key_a), None);
        assert_eq!(known_hosts_say(&only_22, "gw", 2222, &key_b), None);
        // And the other way round.
        let only_2222 = format!("[gw]:2222 ssh-ed25519 {b}\n");
        assert_eq!(known_hosts_say(&only_2222, "gw", 22, &key_b), None);
    }

    #[test]
    fn a_zero_counts_only_when_the_end_mark_tells_it_and_the_mark_counts_over_a_zero() {
        // The host's status and the mark agree.
        assert_eq!(told_code(0, Some(0)), Ok(0));
        assert_eq!(told_code(3, Some(3)), Ok(3));
        // No status (libssh2's 0), or a host that answers 0 whatever ran: the mark tells.
        assert_eq!(told_code(0, Some(3)), Ok(3));
        // A failure the host reports is never made a success.
        assert_eq!(told_code(137, Some(0)), Ok(137));
        assert_eq!(told_code(255, None), Ok(255));
        // A 0 without the mark is no proof that the command ran to its end.
        let e = told_code(0, None).unwrap_err();
        assert!(e.contains("the command's end was not told"), "{e}");
    }

    #[test]
    fn the_end_mark_is_found_and_taken_out_wherever_it_falls_against_what_is_kept() {
        let mark = end_mark();
        let line = format!("\n{mark} 7\n");
        // Within what is kept: taken out, the command's own words left as they were.
        let mut said = Said::default();
        assert!(said.push(b"no space left"));
        assert!(said.push(line.as_bytes()));
        assert_eq!(said.take_end(&mark), Some(7));
        assert_eq!(said.text(), "no space left");
        // Beyond what is kept: found all the same, and not counted as errors dropped.
        let mut said = Said::keeping(4);
        assert!(said.push(b"0123456789"));
        assert!(said.push(line.as_bytes()));
        assert_eq!(said.take_end(&mark), Some(7));
        assert_eq!(said.text(), "0123\n[6 more bytes of errors not kept]\n");
        // Cut by the limit in its middle: the part kept is taken out too.
        let mut said = Said::keeping(6);
        assert!(said.push(b"abc"));
        assert!(said.push(line.as_bytes()));
        assert_eq!(said.take_end(&mark), Some(7));
        assert_eq!(said.text(), "abc");
        // Split over pushes, after much more than the tail: found.
        let mut said = Said::default();
        assert!(said.push(&vec![b'x'; 3 * TAIL]));
        let (a, b) = line.as_bytes().split_at(10);
        assert!(said.push(a) && said.push(b));
        assert_eq!(said.take_end(&mark), Some(7));
        // Another mark, a mark without its code's end, or none: no code.
        for text in [
            format!("\n{} 0\n", end_mark()),
            format!("\n{mark} 0"),
            "done\n".to_string(),
        ] {
            let mut said = Said::default();
            assert!(said.push(text.as_bytes()));
            assert_eq!(said.take_end(&mark), None, "{text:?}");
        }
    }
}
