//! A real OpenSSH `sshd` owned by one test: its own 127.0.0.x address and free port, its own
//! host key, an authorized client key and a client `known_hosts` that trusts it. Killed on drop.
//!
//! Network rule: it listens on, and the tests connect to, 127.0.0.0/8 only.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use reprise::ssh::HostSpec;

const SSHD: &str = "/usr/sbin/sshd";
const INSTALL_HINT: &str = "run scripts/test.sh, which installs openssh-server and openssh-client";

/// A string no other test (or run) uses: for temp names and `pgrep -f` markers.
pub fn unique(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "reprise-it-{what}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `done` every 20 ms until it holds or `within` has passed; returns whether it held.
pub fn poll_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tool(path: &str) -> PathBuf {
    let found = if path.contains('/') {
        Path::new(path).is_file().then(|| PathBuf::from(path))
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
                .map(|dir| dir.join(path))
                .find(|p| p.is_file())
        })
    };
    found.unwrap_or_else(|| panic!("`{path}` is missing: the ssh tests need it; {INSTALL_HINT}"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Makes an ed25519 key pair at `path` (and `path.pub`), replacing any.
pub fn keygen(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    run(Command::new(tool("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "reprise-test", "-f"])
        .arg(path));
}

/// OpenSSH's fingerprint of a public key file: `SHA256:...`.
pub fn fingerprint(pub_key: &Path) -> String {
    let out = run(Command::new(tool("ssh-keygen"))
        .args(["-l", "-E", "sha256", "-f"])
        .arg(pub_key));
    out.split_whitespace()
        .nth(1)
        .expect("ssh-keygen -l prints `bits fingerprint comment (type)`")
        .to_string()
}

/// The pids of `root` and all its descendants.
fn process_tree(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // /proc/PID/stat: `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = after_comm
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
        {
            parent_of.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parent_of
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    tree
}

fn signal(pids: &[u32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    // A process may exit meanwhile: the status does not matter, only that `kill` ran.
    let _ = Command::new(tool("kill"))
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status()
        .expect("kill runs");
}

/// One running sshd.
pub struct Sshd {
    dir: tempfile::TempDir,
    pub address: Ipv4Addr,
    pub port: u16,
    child: Child,
    /// The client's private key (authorized by this sshd).
    pub identity: PathBuf,
    /// A `known_hosts` holding this sshd's current host key as `[address]:port`.
    pub known_hosts: PathBuf,
    pub user: String,
    /// Configuration lines given to `start_with`, kept for restarts.
    extra: String,
}

impl Sshd {
    /// Starts an sshd on a fresh loopback address and port, and waits until it accepts.
    pub fn start() -> Sshd {
        Sshd::start_with("")
    }

    /// [`Sshd::start`] with `extra` lines of configuration, which take precedence (sshd keeps
    /// the first value of each keyword).
    pub fn start_with(extra: &str) -> Sshd {
        assert!(
            Path::new(SSHD).is_file(),
            "{SSHD} is missing: the ssh tests run a real OpenSSH server; {INSTALL_HINT}"
        );
        let dir = tempfile::Builder::new()
            .prefix("reprise-sshd-")
            .tempdir()
            .unwrap();
        // sshd refuses to start without its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (the tests run as root)");
        keygen(&dir.path().join("host_ed25519"));
        let identity = dir.path().join("client_ed25519");
        keygen(&identity);
        std::fs::copy(
            identity.with_extension("pub"),
            dir.path().join("authorized_keys"),
        )
        .unwrap();
        let user = run(Command::new(tool("id")).arg("-un")).trim().to_string();
        let known_hosts = dir.path().join("known_hosts");
        let mut last_error = String::new();
        // The free port is found by binding and releasing it; another process may take it in
        // between, so a failed start is retried on a new address and port.
        for _ in 0..5 {
            let (address, port) = free_loopback_port();
            let mut child = spawn_sshd(dir.path(), address, port, extra);
            match wait_listening(&mut child, dir.path(), address, port) {
                Ok(()) => {
                    let sshd = Sshd {
                        dir,
                        address,
                        port,
                        child,
                        identity,
                        known_hosts,
                        user,
                        extra: extra.to_string(),
                    };
                    sshd.trust_current_host_key();
                    return sshd;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = e;
                }
            }
        }
        panic!("sshd did not start: {last_error}");
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.address, self.port))
    }

    pub fn host_key_pub(&self) -> PathBuf {
        self.dir.path().join("host_ed25519.pub")
    }

    /// The fingerprint of the key this sshd now offers.
    pub fn host_fingerprint(&self) -> String {
        fingerprint(&self.host_key_pub())
    }

    /// How to reach this sshd as host `id`, trusting `known_hosts`.
    pub fn spec(&self, id: &str) -> HostSpec {
        HostSpec {
            id: id.to_string(),
            address: self.address.to_string(),
            port: self.port,
            user: self.user.clone(),
            known_hosts: self.known_hosts.clone(),
            identity: Some(self.identity.clone()),
            refused: None,
        }
    }

    /// The OpenSSH `known_hosts` line for the current host key, as `ssh` writes it for a
    /// non-22 port.
    pub fn known_hosts_line(&self) -> String {
        let public = std::fs::read_to_string(self.host_key_pub()).unwrap();
        let mut fields = public.split_whitespace();
        let (kind, key) = (fields.next().unwrap(), fields.next().unwrap());
        format!("[{}]:{} {kind} {key}\n", self.address, self.port)
    }

    /// Writes a `known_hosts` that trusts the current host key.
    pub fn trust_current_host_key(&self) {
        std::fs::write(&self.known_hosts, self.known_hosts_line()).unwrap();
    }

    /// Stops sshd (ending its sessions), gives it a new host key if asked, and starts it again
    /// on the same address and port. The client's `known_hosts` is left as it was.
    pub fn restart(&mut self, new_host_key: bool) {
        self.stop();
        if new_host_key {
            keygen(&self.dir.path().join("host_ed25519"));
        }
        self.child = spawn_sshd(self.dir.path(), self.address, self.port, &self.extra);
        if let Err(e) = wait_listening(&mut self.child, self.dir.path(), self.address, self.port) {
            panic!("sshd did not restart: {e}");
        }
    }

    /// Gives this sshd a new host key for the connections it accepts from now on, keeping the
    /// ones it has (they keep the key they were opened with): sshd reads its keys again on
    /// SIGHUP, and its sessions outlive that. Returns once the new key is offered.
    pub fn new_host_key_for_new_connections(&mut self) {
        keygen(&self.dir.path().join("host_ed25519"));
        signal(&[self.child.id()], "HUP");
        let public = std::fs::read_to_string(self.host_key_pub()).unwrap();
        let key = public.split_whitespace().nth(1).unwrap().to_string();
        let offered = poll_until(Duration::from_secs(10), || {
            Command::new(tool("ssh-keyscan"))
                .args(["-t", "ed25519", "-p", &self.port.to_string()])
                .arg(self.address.to_string())
                .stderr(Stdio::null())
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&key))
        });
        assert!(offered, "sshd does not offer its new host key after SIGHUP");
    }

    /// Gives this sshd a host certificate of its current key, signed by the CA key `ca`, and
    /// restarts it (same address, port and key).
    pub fn certify_host_key(&mut self, ca: &Path) {
        run(Command::new(tool("ssh-keygen"))
            .args(["-q", "-s"])
            .arg(ca)
            .args(["-I", "reprise-test-host", "-h", "-n"])
            .arg(self.address.to_string())
            .arg(self.host_key_pub()));
        let cert = self.dir.path().join("host_ed25519-cert.pub");
        assert!(cert.is_file(), "ssh-keygen -s wrote no {}", cert.display());
        self.extra
            .push_str(&format!("\nHostCertificate {}", cert.display()));
        self.restart(false);
    }

    /// Freezes sshd and every process it started (`kill -STOP`): a host that hangs.
    pub fn freeze(&self) {
        signal(&process_tree(self.child.id()), "STOP");
    }

    /// Undoes [`Sshd::freeze`].
    pub fn thaw(&self) {
        signal(&process_tree(self.child.id()), "CONT");
    }

    /// Ends sshd and everything it started: its session processes outlive it otherwise.
    fn stop(&mut self) {
        let tree = process_tree(self.child.id());
        signal(&tree, "KILL");
        signal(&tree, "CONT");
        let _ = self.child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls until `address:port` accepts, or sshd exits, or 10 s pass.
fn wait_listening(
    child: &mut Child,
    dir: &Path,
    address: Ipv4Addr,
    port: u16,
) -> Result<(), String> {
    let addr = SocketAddr::V4(SocketAddrV4::new(address, port));
    let log = || std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("sshd exited ({status}): {}", log()));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "sshd did not listen on {addr} within 10s: {}",
                log()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback address 127.0.0.x (x in 2..=250) and a port that was free on it.
fn free_loopback_port() -> (Ipv4Addr, u16) {
    let seed = std::process::id() as u64 * 31
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    let address = Ipv4Addr::new(127, 0, 0, 2 + (seed % 249) as u8);
    let listener = TcpListener::bind((address, 0)).expect("bind a loopback port");
    let port = listener.local_addr().unwrap().port();
    (address, port)
}

fn spawn_sshd(dir: &Path, address: Ipv4Addr, port: u16, extra: &str) -> Child {
    // Keys are renewed every 4 MiB (OpenSSH's default is about every GiB), so that the tests'
    // transfers go through key changes too.
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "{extra}\n\
             ListenAddress {address}:{port}\n\
             HostKey {dir}/host_ed25519\n\
             PidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             StrictModes no\n\
             UsePAM no\n\
             RekeyLimit 4M\n\
             LogLevel VERBOSE\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
    Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}; {INSTALL_HINT}"))
}
