//! Bulk streams through the system's OpenSSH client, as borg and restic do: OpenSSH computes
//! its ciphers with OpenSSL's vectorised code on both ends, where libssh2 calls OpenSSL one
//! block at a time (AES-GCM) or computes ChaCha20-Poly1305 in portable C.
//!
//! One host-key policy for both clients. The caller checks the host over libssh2 first (its
//! policy: an unknown key refused, or recorded under accept-new; a changed or `@revoked` key
//! refused). `ssh` then checks the key again, in the same `known_hosts` file only, with
//! `StrictHostKeyChecking=yes`, accepting only a plain key of the type libssh2 checked (no host
//! certificate: reprise does not use `@cert-authority` lines), reading no configuration file
//! and writing nothing. So it refuses every key reprise refuses, whatever the user's or the
//! system's ssh configuration says.
//!
//! One connection per host and command ([`Masters`]): the first stream to a host starts an
//! OpenSSH master connection (`ssh -M -N`, a child of this process), whose socket lives in a
//! private folder this process creates (mode 0700, under `$XDG_RUNTIME_DIR` or the temporary
//! folder) and removes; every stream to that host then opens a channel on it instead of a new
//! connection. A master never outlives its command: it is ended when its [`Masters`] is
//! dropped (a command stopped by a signal drops it once its cleanup is done: `reprise
//! replicate` once its snapshots are merged back), and by the kernel when this process dies
//! any other way (`PR_SET_PDEATHSIG`); each command makes a folder of its own, so no command
//! can reach another's master, and each checks every host's key itself.
//!
//! It builds command lines and keeps those connections: it never decides what to run, and it
//! prints nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::{HostSpec, SshError};

/// Seconds between keepalives to the host, and how many may go unanswered: a host that stops
/// answering ends the stream within about a minute.
const ALIVE_INTERVAL_SECS: u64 = 15;
const ALIVE_COUNT: u32 = 4;

/// The ciphers offered first, when this machine's processor has AES and carry-less multiply
/// instructions: AES-GCM then costs OpenSSL, here and in the host's sshd, a fraction of
/// ChaCha20-Poly1305 (OpenSSH's default, whose Poly1305 is portable C). Empty: OpenSSH's own
/// order.
pub fn preferred_ciphers() -> &'static [&'static str] {
    #[cfg(target_arch = "x86_64")]
    let fast_gcm = std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq");
    #[cfg(target_arch = "aarch64")]
    let fast_gcm = std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let fast_gcm = false;
    if fast_gcm {
        &["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    } else {
        &[]
    }
}

/// `preferred` first, then the rest of `supported` in its order, comma-separated.
fn cipher_list(preferred: &[&str], supported: &[&str]) -> String {
    let rest = supported.iter().filter(|c| !preferred.contains(c));
    preferred
        .iter()
        .chain(rest)
        .copied()
        .collect::<Vec<_>>()
        .join(",")
}

/// The ciphers OpenSSH offers by default (7.x to 9.x), in its order: what follows the
/// preferred ones.
const OPENSSH_CIPHERS: [&str; 6] = [
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
];

/// The `ssh` command that runs `remote` (one shell command line) on the host of `spec` over a
/// connection of its own, its standard streams piped, leading its own process group.
/// `key_type` is the type of the host key the caller has just verified over libssh2: only a
/// key of that type is accepted.
pub fn command(
    spec: &HostSpec,
    key_type: &str,
    connect_timeout: Duration,
    remote: &str,
) -> Result<Command, SshError> {
    stream_command(spec, key_type, connect_timeout, None, remote)
}

/// [`command`], as a channel of the master connection listening on `control` when there is
/// one. Should that socket be gone (its master ended), `ssh` connects on its own, with the
/// same checks; so it does when the host refuses one more session on the connection
/// (`MaxSessions`).
pub fn stream_command(
    spec: &HostSpec,
    key_type: &str,
    connect_timeout: Duration,
    control: Option<&Path>,
    remote: &str,
) -> Result<Command, SshError> {
    let mut options = options(spec, key_type, connect_timeout)?;
    options.push("ControlMaster=no".to_string());
    options.push(match control {
        Some(path) => format!("ControlPath={}", config_path(spec, path)?),
        None => "ControlPath=none".to_string(),
    });
    let mut cmd = ssh(spec, &options, &[]);
    cmd.arg(remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Ok(cmd)
}

/// The master connection to the host of `spec`: `ssh -M -N` listening on `control`, ending
/// when it is told to (no `ControlPersist`), its standard error piped.
fn master_command(
    spec: &HostSpec,
    key_type: &str,
    connect_timeout: Duration,
    control: &Path,
) -> Result<Command, SshError> {
    let mut options = options(spec, key_type, connect_timeout)?;
    options.push("ControlMaster=yes".to_string());
    options.push(format!("ControlPath={}", config_path(spec, control)?));
    options.push("ControlPersist=no".to_string());
    let mut cmd = ssh(spec, &options, &["-N"]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    Ok(cmd)
}

/// The options of every `ssh` reprise starts for `spec`, but the control ones.
fn options(
    spec: &HostSpec,
    key_type: &str,
    connect_timeout: Duration,
) -> Result<Vec<String>, SshError> {
    // A host reprise refuses to reach (see `HostSpec::refused`) gets no `ssh` either: not
    // even a master that would log in while libssh2 checks the host.
    if let Some(why) = &spec.refused {
        return Err(SshError::Refused {
            host: spec.id.clone(),
            reason: why.clone(),
        });
    }
    let option = |name: &str, path: &Path| -> Result<String, SshError> {
        Ok(format!("{name}={}", config_path(spec, path)?))
    };
    let mut options = vec![
        "BatchMode=yes".to_string(),
        "StrictHostKeyChecking=yes".to_string(),
        option("UserKnownHostsFile", &spec.known_hosts)?,
        "GlobalKnownHostsFile=/dev/null".to_string(),
        format!("HostKeyAlgorithms={}", host_key_algorithms(key_type)),
        "UpdateHostKeys=no".to_string(),
        "CheckHostIP=no".to_string(),
        "VerifyHostKeyDNS=no".to_string(),
        "HashKnownHosts=no".to_string(),
        format!("ConnectTimeout={}", connect_timeout.as_secs().max(1)),
        format!("ServerAliveInterval={ALIVE_INTERVAL_SECS}"),
        format!("ServerAliveCountMax={ALIVE_COUNT}"),
        "Compression=no".to_string(),
        "ForwardAgent=no".to_string(),
        "ForwardX11=no".to_string(),
        "ClearAllForwardings=yes".to_string(),
        "PermitLocalCommand=no".to_string(),
        "LogLevel=ERROR".to_string(),
    ];
    match &spec.identity {
        Some(key) => {
            options.push(option("IdentityFile", key)?);
            options.push("IdentitiesOnly=yes".to_string());
        }
        // The ssh-agent, as libssh2 uses it: SSH_AUTH_SOCK.
        None => options.push("IdentityFile=none".to_string()),
    }
    let preferred = preferred_ciphers();
    if !preferred.is_empty() {
        options.push(format!(
            "Ciphers={}",
            cipher_list(preferred, &OPENSSH_CIPHERS)
        ));
    }
    Ok(options)
}

/// `ssh` with `flags` and `options` for the host of `spec`, up to its address, leading its own
/// process group (a Ctrl-C on the terminal reaches reprise, which decides what stops).
fn ssh(spec: &HostSpec, options: &[String], flags: &[&str]) -> Command {
    let mut cmd = Command::new("ssh");
    // No configuration file: the host is reached exactly as libssh2 reaches it (address,
    // port, user, key), and nothing there can loosen the host-key check.
    cmd.args(["-F", "/dev/null", "-T", "-x", "-a"]).args(flags);
    for o in options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg("-p")
        .arg(spec.port.to_string())
        .arg("-l")
        .arg(&spec.user)
        .arg("--")
        .arg(&spec.address);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// The signature algorithms of a host key type: an RSA key signs with SHA-2 (OpenSSH and
/// libssh2 no longer accept SHA-1). [`ANY_PLAIN_KEY`]: every plain key type libssh2 checks
/// (no certificate).
fn host_key_algorithms(key_type: &str) -> String {
    match key_type {
        "ssh-rsa" => "rsa-sha2-512,rsa-sha2-256".to_string(),
        ANY_PLAIN_KEY => "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,\
                          ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256"
            .to_string(),
        other => other.to_string(),
    }
}

/// Stands for "a plain key of any type libssh2 checks" where a key type is asked: what a
/// master started while the host is being checked accepts (a key `known_hosts` holds for the
/// host, as the check does; never a certificate).
const ANY_PLAIN_KEY: &str = "any plain key";

/// A path as an ssh option's value: absolute (no `~` expansion), `%` doubled (no token
/// expansion), double-quoted with `\` and `"` escaped.
fn config_path(spec: &HostSpec, path: &Path) -> Result<String, SshError> {
    let absolute = std::path::absolute(path).map_err(|e| SshError::Local {
        host: spec.id.clone(),
        reason: format!("{}: {e}", path.display()),
    })?;
    let text = absolute.to_str().filter(|t| !t.contains(['\n', '\r']));
    let Some(text) = text else {
        return Err(SshError::Local {
            host: spec.id.clone(),
            reason: format!(
                "the OpenSSH client cannot be given the path {:?}; rename it or choose \
                 --ssh-client libssh2",
                absolute
            ),
        });
    };
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    Ok(format!("\"{escaped}\""))
}

/// The longest control socket path: `sun_path` holds 108 bytes with its NUL, and ssh binds
/// a temporary name 17 bytes longer before renaming it into place.
const MAX_CONTROL_PATH: usize = 107 - 17;

/// The master connections of one command (of one [`super::SshTransport`]): one per host,
/// started on the first stream to it, all ended and their folder removed when this is
/// dropped.
pub struct Masters {
    /// The private folder of the control sockets, made on first use; `None` when no folder
    /// could be made (each stream then connects on its own).
    folder: OnceLock<Option<PathBuf>>,
    hosts: Mutex<HashMap<String, Arc<Mutex<Slot>>>>,
    next: std::sync::atomic::AtomicU32,
}

/// What a command knows of one host.
#[derive(Default)]
struct Slot {
    /// The type of the host key the caller checked, in this command.
    key_type: Option<String>,
    master: Option<Master>,
}

/// How a stream reaches its host: the type of the host key checked in this command, and the
/// socket of the master connection that carries it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub key_type: String,
    pub control: Option<PathBuf>,
}

impl Default for Masters {
    fn default() -> Self {
        Masters::new()
    }
}

impl Masters {
    pub fn new() -> Masters {
        Masters {
            folder: OnceLock::new(),
            hosts: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Starts this command's master connection to the host of `spec` unless it has one
    /// (starting or serving), without waiting for it to log in. Before a master is started,
    /// `check` checks the host key the caller's way and gives its type (`fresh`: on a new
    /// connection, as a master that ended is replaced; the host may offer another key by
    /// then). Without a folder for the sockets, `check` runs once and nothing is started.
    /// While another thread holds the host's master (starting it, or checking it), nothing
    /// is done: [`Masters::route`] waits for that thread.
    pub fn start(
        &self,
        spec: &HostSpec,
        connect_timeout: Duration,
        check: impl Fn(bool) -> Result<String, SshError>,
    ) -> Result<(), SshError> {
        let slot = self.slot(&spec.id);
        // Held: being started, or checked (`probe_while`), by another thread; the stream
        // that needs it waits for it there.
        let mut slot = match slot.try_lock() {
            Ok(slot) => slot,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        };
        self.start_in(&mut slot, spec, connect_timeout, &check)
    }

    /// How to reach the host of `spec`: through this command's master connection to it,
    /// started as [`Masters::start`] says if need be, once it has logged in. A master that
    /// fails to log in is followed by a new check of the host (on a new connection): a host
    /// whose key changed since it was checked, which ssh refuses, is then refused with the
    /// check's own error, as over libssh2.
    pub fn route(
        &self,
        spec: &HostSpec,
        connect_timeout: Duration,
        check: impl Fn(bool) -> Result<String, SshError>,
    ) -> Result<Route, SshError> {
        let slot = self.slot(&spec.id);
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        self.start_in(&mut slot, spec, connect_timeout, &check)?;
        let key_type = slot.key_type.clone().unwrap_or_default();
        let Some(master) = slot.master.as_mut() else {
            return Ok(Route {
                key_type,
                control: None,
            });
        };
        if let Err(e) = master.wait_ready(spec) {
            let speculative = master.key_type == ANY_PLAIN_KEY;
            if let Some(master) = slot.master.take() {
                master.close();
            }
            // Said as the check says it when the host is refused now (a key changed since).
            let key_type = check(true)?;
            if !speculative {
                return Err(e);
            }
            // The check passed: the key may be one it has just recorded (accept-new).
            slot.key_type = Some(key_type.clone());
            let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(folder) = self.folder() else {
                return Err(e);
            };
            let mut master =
                Master::start(spec, &key_type, connect_timeout, folder.join(n.to_string()))?;
            if let Err(e) = master.wait_ready(spec) {
                master.close();
                check(true)?;
                return Err(e);
            }
            let control = master.control.clone();
            slot.master = Some(master);
            return Ok(Route {
                key_type,
                control: Some(control),
            });
        }
        Ok(Route {
            key_type,
            control: Some(master.control.clone()),
        })
    }

    /// Runs `true` through every master that serves, all at once, while `then` runs: one
    /// that does not answer within `limit` (its connection stalled: a link down, a host
    /// frozen) or fails is ended, so that the next stream to its host starts a new one
    /// instead of waiting on it. Every master is held before `then` begins: a stream `then`
    /// opens to its host waits for its answer (or for a new master).
    pub fn probe_while<R>(
        &self,
        specs: &HashMap<String, HostSpec>,
        connect_timeout: Duration,
        limit: Duration,
        then: impl FnOnce() -> R,
    ) -> R {
        let slots: Vec<(String, Arc<Mutex<Slot>>)> = self
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(h, s)| (h.clone(), s.clone()))
            .collect();
        std::thread::scope(|scope| {
            let (held, holding) = std::sync::mpsc::channel::<()>();
            let mut probes = 0;
            for (host, slot) in &slots {
                let Some(spec) = specs.get(host) else {
                    continue;
                };
                probes += 1;
                let held = held.clone();
                scope.spawn(move || {
                    let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = held.send(());
                    let key_type = slot.key_type.clone().unwrap_or_default();
                    let Some(master) = slot.master.as_mut() else {
                        return;
                    };
                    if !master.ready || !master.running() {
                        return;
                    }
                    let answered = stream_command(
                        spec,
                        &key_type,
                        connect_timeout,
                        Some(&master.control),
                        "true",
                    )
                    .ok()
                    .and_then(|mut cmd| {
                        cmd.stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null());
                        spawn_tied(cmd).ok()
                    })
                    .is_some_and(|mut child| {
                        let until = Instant::now() + limit;
                        loop {
                            match child.try_wait() {
                                Ok(Some(status)) => return status.success(),
                                Ok(None) if Instant::now() < until => {
                                    std::thread::sleep(Duration::from_millis(5));
                                }
                                _ => {
                                    let _ = child.kill();
                                    let _ = child.wait();
                                    return false;
                                }
                            }
                        }
                    });
                    if !answered {
                        tracing::debug!(host, "ssh master did not answer: ended");
                        if let Some(master) = slot.master.take() {
                            master.close();
                        }
                    }
                });
            }
            drop(held);
            for _ in 0..probes {
                // A probe that ended before it held its master (a panic) holds nothing.
                if holding.recv().is_err() {
                    break;
                }
            }
            then()
        })
    }

    fn slot(&self, host: &str) -> Arc<Mutex<Slot>> {
        self.hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_default()
            .clone()
    }

    fn start_in(
        &self,
        slot: &mut Slot,
        spec: &HostSpec,
        connect_timeout: Duration,
        check: &dyn Fn(bool) -> Result<String, SshError>,
    ) -> Result<(), SshError> {
        let replaced = match slot.master.as_mut().map(Master::running) {
            // Serving, or still logging in: `route` waits for it.
            Some(true) => return Ok(()),
            Some(false) => {
                if let Some(master) = slot.master.take() {
                    master.close();
                }
                true
            }
            None => false,
        };
        let Some(folder) = self.folder() else {
            if slot.key_type.is_none() {
                slot.key_type = Some(check(false)?);
            }
            return Ok(());
        };
        // The master logs in while the host is checked (two logins one after the other were
        // most of a small update's time): ssh accepts only a plain key that known_hosts holds
        // for the host, and no stream uses the master before the check has passed. A host
        // the check refuses has its master closed; one the check had to learn (accept-new)
        // gets a master of the checked key type when the first one fails (see `route`).
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let master = Master::start(
            spec,
            ANY_PLAIN_KEY,
            connect_timeout,
            folder.join(n.to_string()),
        )?;
        match check(replaced) {
            Ok(key_type) => {
                slot.key_type = Some(key_type);
                slot.master = Some(master);
                Ok(())
            }
            Err(e) => {
                master.close();
                Err(e)
            }
        }
    }

    fn folder(&self) -> Option<&Path> {
        self.folder.get_or_init(private_folder).as_deref()
    }
}

impl Drop for Masters {
    fn drop(&mut self) {
        let hosts = std::mem::take(self.hosts.get_mut().unwrap_or_else(|e| e.into_inner()));
        for slot in hosts.into_values() {
            let master = slot.lock().unwrap_or_else(|e| e.into_inner()).master.take();
            if let Some(master) = master {
                master.close();
            }
        }
        if let Some(Some(folder)) = self.folder.get() {
            let _ = std::fs::remove_dir_all(folder);
        }
    }
}

/// A folder of this process's own for control sockets, mode 0700 (`mkdtemp`), under
/// `$XDG_RUNTIME_DIR`, else the temporary folder, else `/tmp`: the first where the socket
/// paths fit.
fn private_folder() -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let bases = runtime
        .into_iter()
        .chain([std::env::temp_dir(), PathBuf::from("/tmp")]);
    for base in bases {
        // The folder ("reprise-ssh-" and 6 random characters), a slash and a socket's number.
        if base.join("reprise-ssh-XXXXXX").as_os_str().len() + 11 > MAX_CONTROL_PATH {
            continue;
        }
        // Made with mode 0700 under a name no other folder had (as mkdtemp(3) does); kept.
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("reprise-ssh-")
            .rand_bytes(6)
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&base)
        {
            return Some(dir.keep());
        }
    }
    None
}

/// One master connection, a child of this process.
struct Master {
    child: Child,
    /// The host key type it accepts ([`ANY_PLAIN_KEY`]: started while the host was checked).
    key_type: String,
    control: PathBuf,
    /// Reads the master's standard error until it ends.
    errors: Option<std::thread::JoinHandle<super::Said>>,
    /// It has listened on `control` (it had then checked the host key and logged in).
    ready: bool,
    /// When it must have logged in: the connect timeout for each of connecting, the key
    /// exchange and the login.
    ready_by: Instant,
    ready_secs: u64,
}

impl Master {
    /// Starts the master connection to the host of `spec` on `control`.
    fn start(
        spec: &HostSpec,
        key_type: &str,
        connect_timeout: Duration,
        control: PathBuf,
    ) -> Result<Master, SshError> {
        let cmd = master_command(spec, key_type, connect_timeout, &control)?;
        tracing::debug!(host = %spec.id, "ssh master login (OpenSSH client)");
        let key_type = key_type.to_string();
        let mut child = spawn_tied(cmd).map_err(|e| SshError::Local {
            host: spec.id.clone(),
            reason: format!(
                "cannot start the OpenSSH client `ssh`: {e}; install it (Debian: \
                 openssh-client) or choose --ssh-client libssh2"
            ),
        })?;
        live().masters.push(child.id());
        let stderr = child.stderr.take();
        let errors = std::thread::Builder::new()
            .name("reprise-ssh-master".into())
            .spawn(move || {
                // Kept up to a bound; the rest is read and dropped as long as it runs.
                let mut said = super::Said::default();
                if let Some(mut stderr) = stderr {
                    said.read_from(&mut stderr);
                    let _ = std::io::copy(&mut stderr, &mut std::io::sink());
                }
                said
            })
            .ok();
        let ready_secs = connect_timeout.as_secs().max(1) * 3;
        Ok(Master {
            child,
            key_type,
            control,
            errors,
            ready: false,
            ready_by: Instant::now() + Duration::from_secs(ready_secs),
            ready_secs,
        })
    }

    /// Waits until it listens, or fails with what ssh said.
    fn wait_ready(&mut self, spec: &HostSpec) -> Result<(), SshError> {
        let waited = Instant::now();
        while !self.ready {
            if self.control.exists() {
                self.ready = true;
                tracing::debug!(
                    host = %spec.id,
                    waited_ms = waited.elapsed().as_millis() as u64,
                    "ssh master ready (OpenSSH client)"
                );
            } else if reap(&mut self.child) {
                let said = self
                    .errors
                    .take()
                    .and_then(|t| t.join().ok())
                    .map(|said| said.text().trim().replace('\n', "; "))
                    .unwrap_or_default();
                return Err(SshError::Connect {
                    host: spec.id.clone(),
                    endpoint: spec.endpoint(),
                    reason: if said.is_empty() {
                        "the OpenSSH client ended before it logged in".to_string()
                    } else {
                        format!("the OpenSSH client: {said}")
                    },
                });
            } else if Instant::now() > self.ready_by {
                return Err(SshError::Hung {
                    host: spec.id.clone(),
                    secs: self.ready_secs,
                });
            } else {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }

    /// Whether it still runs, and listens once it has.
    fn running(&mut self) -> bool {
        !reap(&mut self.child) && (!self.ready || self.control.exists())
    }

    /// Ends it (TERM, then KILL 5 s later), which removes its socket.
    fn close(mut self) {
        signal(&self.child, Signal::TERM);
        let until = Instant::now() + Duration::from_secs(5);
        while !reap(&mut self.child) {
            if Instant::now() > until {
                signal(&self.child, Signal::KILL);
                let mut live = live();
                let _ = self.child.wait();
                live.masters.retain(|p| *p != self.child.id());
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = std::fs::remove_file(&self.control);
    }
}

/// The master connections of this process not yet reaped, for [`signal`]. A pid is here
/// only while its child is not reaped (both change under this lock), so it is never another
/// process's.
struct Live {
    masters: Vec<u32>,
}

fn live() -> std::sync::MutexGuard<'static, Live> {
    static LIVE: Mutex<Live> = Mutex::new(Live {
        masters: Vec::new(),
    });
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `child` (a master) has ended; it is then reaped and forgotten.
fn reap(child: &mut Child) -> bool {
    let mut live = live();
    match child.try_wait() {
        Ok(None) => false,
        Ok(Some(_)) | Err(_) => {
            live.masters.retain(|p| *p != child.id());
            true
        }
    }
}

/// Sends `sig` to a master not yet reaped.
fn signal(child: &Child, sig: Signal) {
    let live = live();
    if live.masters.contains(&child.id()) {
        // Our own child, not reaped (see `Live`): the pid is still its own.
        let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), sig);
    }
}

/// Starts `cmd` from a thread that lives as long as this process, asking the kernel to end it
/// (TERM) when this process ends, however it ends (`PR_SET_PDEATHSIG`, which follows the
/// thread that started the child: hence the thread).
fn spawn_tied(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, std::sync::mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Option<Mutex<std::sync::mpsc::Sender<Job>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("reprise-ssh-spawn".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    tie_to_this_process(&mut cmd);
                    let _ = reply.send(cmd.spawn());
                    // The child goes back to the caller; this thread stays: the kernel ties
                    // the child to it.
                }
            })
            .ok()
            .map(|_| Mutex::new(tx))
    });
    let gone = || std::io::Error::other("the thread that starts ssh has ended");
    let Some(spawner) = spawner else {
        return Err(gone());
    };
    let (reply, answer) = std::sync::mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply))
        .map_err(|_| gone())?;
    answer.recv().map_err(|_| gone())?
}

fn tie_to_this_process(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpid, getppid, set_parent_process_death_signal};
        use std::os::unix::process::CommandExt as _;
        let parent = getpid();
        // SAFETY: in the child, between fork and exec, only `prctl` and `getppid`: two system
        // calls (async-signal-safe), no allocation, no lock.
        unsafe {
            cmd.pre_exec(move || {
                set_parent_process_death_signal(Some(Signal::TERM))?;
                // This process ended before the request took effect.
                if getppid() != Some(parent) {
                    return Err(rustix::io::Errno::SRCH.into());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(known_hosts: &str) -> HostSpec {
        HostSpec {
            id: "hv1".into(),
            address: "127.0.0.2".into(),
            port: 2222,
            user: "root".into(),
            known_hosts: known_hosts.into(),
            identity: None,
            refused: None,
        }
    }

    #[test]
    fn preferred_ciphers_come_first_and_the_others_keep_their_order() {
        assert_eq!(
            cipher_list(
                &["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
                &OPENSSH_CIPHERS
            ),
            "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,\
             aes128-ctr,aes192-ctr,aes256-ctr"
        );
        assert_eq!(
            cipher_list(&[], &OPENSSH_CIPHERS),
            OPENSSH_CIPHERS.join(",")
        );
    }

    #[test]
    fn paths_are_quoted_and_never_expanded() {
        let s = spec("/etc/reprise/known_hosts");
        let quoted = |p: &str| config_path(&s, Path::new(p)).unwrap();
        assert_eq!(quoted("/a/known_hosts"), "\"/a/known_hosts\"");
        assert_eq!(quoted("/a b/%d \"x\"\\"), "\"/a b/%%d \\\"x\\\"\\\\\"");
        let relative = quoted("~/kh");
        assert!(relative.starts_with("\"/"), "{relative}");
        assert!(config_path(&s, Path::new("/a\nb")).is_err());
    }

    #[test]
    fn a_refused_host_gets_no_ssh_command() {
        let refused = HostSpec {
            refused: Some("~/.ssh/config sets `ProxyJump b` for hv1".to_string()),
            ..spec("/kh")
        };
        let err = command(&refused, "ssh-ed25519", Duration::from_secs(3), "true")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("ProxyJump b"), "{err}");
    }

    #[test]
    fn only_the_verified_key_type_is_accepted() {
        assert_eq!(host_key_algorithms("ssh-ed25519"), "ssh-ed25519");
        assert_eq!(host_key_algorithms("ssh-rsa"), "rsa-sha2-512,rsa-sha2-256");
        let cmd = command(
            &spec("/kh"),
            "ecdsa-sha2-nistp256",
            Duration::from_secs(3),
            "true",
        )
        .unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for expected in [
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=\"/kh\"",
            "GlobalKnownHostsFile=/dev/null",
            "HostKeyAlgorithms=ecdsa-sha2-nistp256",
            "BatchMode=yes",
            "ConnectTimeout=3",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected}: {args:?}");
        }
        assert_eq!(&args[..2], ["-F", "/dev/null"]);
        assert_eq!(&args[args.len() - 3..], ["--", "127.0.0.2", "true"]);
    }
}
