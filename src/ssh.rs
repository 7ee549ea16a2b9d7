//! The SSH transport: runs commands on hosts with the `ssh2` crate (libssh2), verifying host
//! keys against an OpenSSH `known_hosts` file, under deadlines that really stop the remote
//! command. The only module that knows `ssh2`.
//!
//! Blocking by design (callers keep it off async workers). It runs what it is given: it does not
//! decide what to run, and it never prints.

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::Digest as _;
use ssh2::{CheckResult, HashType, KnownHostFileKind, KnownHostKeyFormat, Session as RawSession};

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
}

impl HostSpec {
    fn endpoint(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    /// The name OpenSSH writes in `known_hosts` for this host.
    fn known_name(&self) -> String {
        if self.port == 22 {
            self.address.clone()
        } else {
            format!("[{}]:{}", self.address, self.port)
        }
    }
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
}

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
        let addrs: Vec<SocketAddr> = endpoint
            .to_socket_addrs()
            .map_err(|e| connect_err(format!("cannot resolve: {e}")))?
            .collect();
        let addr = addrs
            .first()
            .ok_or_else(|| connect_err("no address".into()))?;
        let tcp =
            TcpStream::connect_timeout(addr, timeout).map_err(|e| connect_err(e.to_string()))?;
        let mut raw = RawSession::new().map_err(|e| connect_err(e.to_string()))?;
        raw.set_tcp_stream(tcp);
        raw.set_timeout(timeout.as_millis() as u32);
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
        Ok(Session {
            raw,
            spec: spec.clone(),
        })
    }

    /// Runs `command` under `deadline`: the remote side kills it (coreutils `timeout`, then
    /// KILL 5 s later) and the local side stops waiting shortly after.
    pub fn exec(
        &self,
        command: &str,
        deadline: Duration,
        output_limit: usize,
    ) -> Result<ExecOutput, SshError> {
        let secs = deadline.as_secs().max(1);
        let wrapped = format!(
            "timeout --kill-after=5 {secs} sh -c {}",
            crate::template::shell_quote(command)
        );
        let began = Instant::now();
        let local_deadline = began + Duration::from_secs(secs + 15);
        let fail = |reason: String| SshError::Session {
            host: self.spec.id.clone(),
            reason,
        };
        self.raw.set_blocking(true);
        let mut channel = self
            .raw
            .channel_session()
            .map_err(|e| fail(format!("open channel: {}", e.message())))?;
        channel
            .exec(&wrapped)
            .map_err(|e| fail(format!("exec: {}", e.message())))?;
        self.raw.set_blocking(false);
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut truncated = false;
        let mut buf = vec![0u8; 32 * 1024];
        let result = loop {
            let mut progressed = false;
            for (stream_id, sink) in [(0, &mut stdout), (1, &mut stderr)] {
                let mut stream = channel.stream(stream_id);
                match stream.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        progressed = true;
                        let room = output_limit.saturating_sub(sink.len());
                        if n > room {
                            truncated = true;
                        }
                        sink.extend_from_slice(&buf[..n.min(room)]);
                    }
                    // WouldBlock, or a stream that ended: EOF on the channel decides.
                    Err(_) => {}
                }
            }
            if channel.eof() {
                break Ok(());
            }
            if Instant::now() > local_deadline {
                break Err(SshError::Hung {
                    host: self.spec.id.clone(),
                    secs: secs + 15,
                });
            }
            if !progressed {
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        self.raw.set_blocking(true);
        result?;
        let _ = channel.wait_close();
        let exit_code = channel
            .exit_status()
            .map_err(|e| fail(format!("exit status: {}", e.message())))?;
        Ok(ExecOutput {
            exit_code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            truncated,
            // 124: timeout sent TERM; 137: it had to KILL.
            timed_out: exit_code == 124 || exit_code == 137,
            duration: began.elapsed(),
        })
    }
}

fn sha256_b64_key(key_b64: &str) -> Option<String> {
    let blob = base64::engine::general_purpose::STANDARD
        .decode(key_b64.trim())
        .ok()?;
    Some(fingerprint(&sha2::Sha256::digest(&blob)))
}

fn verify_host_key(
    raw: &RawSession,
    spec: &HostSpec,
    policy: HostKeyPolicy,
) -> Result<(), SshError> {
    let endpoint = spec.endpoint();
    let (key, key_type) = raw.host_key().ok_or_else(|| SshError::Session {
        host: spec.id.clone(),
        reason: "the server sent no host key".into(),
    })?;
    let offered = raw
        .host_key_hash(HashType::Sha256)
        .map(fingerprint)
        .unwrap_or_else(|| "SHA256:?".into());
    let mut kh = raw.known_hosts().map_err(|e| SshError::KnownHosts {
        path: spec.known_hosts.display().to_string(),
        reason: e.message().to_string(),
    })?;
    if spec.known_hosts.exists() {
        kh.read_file(&spec.known_hosts, KnownHostFileKind::OpenSSH)
            .map_err(|e| SshError::KnownHosts {
                path: spec.known_hosts.display().to_string(),
                reason: e.message().to_string(),
            })?;
    }
    match kh.check_port(&spec.address, spec.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::Mismatch => {
            let name = spec.known_name();
            let known = kh
                .iter()
                .ok()
                .and_then(|hosts| {
                    hosts
                        .iter()
                        .filter(|h| {
                            h.name() == Some(name.as_str())
                                || h.name() == Some(spec.address.as_str())
                        })
                        .find_map(|h| sha256_b64_key(h.key()))
                })
                .unwrap_or_else(|| "another key (hashed entry)".into());
            Err(SshError::ChangedHostKey {
                host: spec.id.clone(),
                endpoint,
                known,
                offered,
                known_hosts: spec.known_hosts.display().to_string(),
            })
        }
        CheckResult::NotFound | CheckResult::Failure if policy == HostKeyPolicy::AcceptNew => {
            let format = match key_type {
                ssh2::HostKeyType::Rsa => KnownHostKeyFormat::SshRsa,
                ssh2::HostKeyType::Dss => KnownHostKeyFormat::SshDss,
                ssh2::HostKeyType::Ecdsa256 => KnownHostKeyFormat::Ecdsa256,
                ssh2::HostKeyType::Ecdsa384 => KnownHostKeyFormat::Ecdsa384,
                ssh2::HostKeyType::Ecdsa521 => KnownHostKeyFormat::Ecdsa521,
                ssh2::HostKeyType::Ed25519 => KnownHostKeyFormat::Ed25519,
                ssh2::HostKeyType::Unknown => KnownHostKeyFormat::Unknown,
            };
            let write_err = |reason: String| SshError::KnownHosts {
                path: spec.known_hosts.display().to_string(),
                reason,
            };
            kh.add(
                &spec.known_name(),
                key,
                &format!("added by reprise for {}", spec.id),
                format,
            )
            .map_err(|e| write_err(e.message().to_string()))?;
            if let Some(dir) = spec.known_hosts.parent() {
                std::fs::create_dir_all(dir).map_err(|e| write_err(e.to_string()))?;
            }
            kh.write_file(&spec.known_hosts, KnownHostFileKind::OpenSSH)
                .map_err(|e| write_err(e.message().to_string()))?;
            Ok(())
        }
        CheckResult::NotFound | CheckResult::Failure => Err(SshError::UnknownHostKey {
            host: spec.id.clone(),
            endpoint,
            offered,
        }),
    }
}

/// Runs commands on hosts by id; the runner's view of the network.
pub trait Transport: Send + Sync {
    /// Runs `command` on `host`, stopped at `deadline`.
    fn exec(&self, host: &str, command: &str, deadline: Duration) -> Result<ExecOutput, SshError>;
}

/// SSH to the inventory's hosts, keeping idle sessions for reuse (one session carries one
/// command at a time: libssh2 serializes channels).
pub struct SshTransport {
    hosts: HashMap<String, HostSpec>,
    policy: HostKeyPolicy,
    connect_timeout: Duration,
    output_limit: usize,
    idle: Mutex<HashMap<String, Vec<Session>>>,
    /// Serializes known_hosts updates under AcceptNew.
    known_hosts_lock: Mutex<()>,
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
            output_limit: crate::runner::OUTPUT_LIMIT,
            idle: Mutex::new(HashMap::new()),
            known_hosts_lock: Mutex::new(()),
        }
    }

    fn idle_session(&self, host: &str) -> Option<Session> {
        self.idle
            .lock()
            .expect("not poisoned")
            .get_mut(host)
            .and_then(Vec::pop)
    }

    fn new_session(&self, host: &str) -> Result<Session, SshError> {
        let spec = self
            .hosts
            .get(host)
            .ok_or_else(|| SshError::UnknownHost(host.to_string()))?;
        let _guard = (self.policy == HostKeyPolicy::AcceptNew)
            .then(|| self.known_hosts_lock.lock().expect("not poisoned"));
        Session::connect(spec, self.policy, self.connect_timeout)
    }
}

impl Transport for SshTransport {
    fn exec(&self, host: &str, command: &str, deadline: Duration) -> Result<ExecOutput, SshError> {
        // An idle session may have died with its host: then a new one is tried once.
        let (session, result) = match self.idle_session(host) {
            Some(s) => match s.exec(command, deadline, self.output_limit) {
                Err(SshError::Session { .. }) => {
                    let s = self.new_session(host)?;
                    let r = s.exec(command, deadline, self.output_limit);
                    (s, r)
                }
                r => (s, r),
            },
            None => {
                let s = self.new_session(host)?;
                let r = s.exec(command, deadline, self.output_limit);
                (s, r)
            }
        };
        match result {
            Ok(out) => {
                self.idle
                    .lock()
                    .expect("not poisoned")
                    .entry(host.to_string())
                    .or_default()
                    .push(session);
                Ok(out)
            }
            // A broken session is dropped, not reused.
            Err(e) => Err(e),
        }
    }
}
