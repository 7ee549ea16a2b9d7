//! The lab: the example inventory brought to life on this machine, on loopback only.
//!
//! `lab up` gives every host of the inventory a real OpenSSH `sshd` on its own 127.0.0.x address
//! (a high port, its own host key, its own directory tree standing for its disk), writes a
//! `known_hosts` and a client key for the tool, creates the VMs' disk images with `qemu-img`, and
//! writes an overlay of the inventory (`overlay.toml`) that changes only addresses, ports,
//! directories and the hypervisor driver: the example's runbooks run unchanged.
//!
//! Commands that would change a real machine (`systemctl`, `iptables-restore`, `ip`, `mount`,
//! the `lab-vm` driver…) resolve, on lab hosts, to stand-ins first on that host's PATH: they
//! record each call in the host's `calls.log` and play its effect inside the host's directory.
//! The lab's "VMs" and services are real processes that read their disk image and serve their
//! ports, so health checks are real. Nothing here touches the real machine's firewall, services,
//! mounts or network configuration, and nothing listens outside 127.0.0.0/8.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde::{Deserialize, Serialize};

use crate::inventory::{SiteRole, VarValue};
use crate::model::Model;
use crate::plan::{self, Action, PlanOptions};
use crate::runbook::Mode;

mod qm;

/// The port every lab sshd listens on (each on its own address).
pub const SSH_PORT: u16 = 2222;

/// Size of each lab disk image.
const IMAGE_SIZE: &str = "64M";

/// The commands that lab hosts answer with stand-ins.
pub const STAND_INS: &[&str] = &[
    "lab-vm",
    "qm",
    "systemctl",
    "iptables-restore",
    "iptables",
    "iptables-save",
    "ip",
    "mount",
    "umount",
    "mountpoint",
    "upsc",
    "upsrw",
    "ping",
    "psql",
    "ad-repl-lag",
];

/// The lag the lab's stand-ins for lag probes (`psql`, `ad-repl-lag`) print: the text of this
/// file under the host's `var/lib/lab` when it exists (tests write a number, garbage, or
/// `hang`, which makes the stand-in wait until it is stopped), else a small lag.
pub const LAG_FILE: &str = "replication-lag";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} not found: run `bash scripts/test.sh` or install {1} (apt-get install {1})")]
    Missing(&'static str, &'static str),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("the lab in {0} is running: `reprise lab down` first")]
    Running(PathBuf),
    #[error("no lab in {0}: `reprise lab up` first")]
    NotUp(PathBuf),
    #[error("sshd of {host} did not start listening on {addr} within 10s; see {log}")]
    SshdStart {
        host: String,
        addr: String,
        log: PathBuf,
    },
    #[error("the inventory does not load with the lab's overlay {overlay}:\n{report}")]
    Model { overlay: PathBuf, report: String },
    #[error(
        "commands of the inventory name paths outside the lab, which the lab would touch on this machine:\n{}\nhint: the lab moves only the folders given as host variables into its own tree: make each path a variable of its host (e.g. `data_dir = \"/var/lib/pgsql\"` under [hosts.NAME.vars]) and write `{{{{ host.data_dir }}}}` in the runbook",
        .0.iter().map(|(what, path)| format!("  {what}: {path}")).collect::<Vec<_>>().join("\n")
    )]
    OutsidePaths(Vec<(String, String)>),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LabError + 'a {
    move |source| LabError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What `lab up` set up, saved as `lab.json` for the stand-ins, `status` and `down`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub dir: PathBuf,
    pub exe: PathBuf,
    pub hosts: BTreeMap<String, LabHost>,
    pub vms: BTreeMap<String, LabVm>,
    /// Per host, the programs the runbooks call that have no stand-in of their own: the
    /// generic stand-in records each call and answers success.
    #[serde(default)]
    pub generic: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabHost {
    pub address: String,
    pub port: u16,
    pub site_role: SiteRole,
    /// Ports its services answer on (from the runbooks' health checks).
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabVm {
    pub name: String,
    pub primary_host: String,
    pub recovery_host: String,
    pub primary_address: String,
    pub recovery_address: String,
    pub disks: Vec<String>,
    pub ports: Vec<u16>,
    /// A Proxmox vm (driver `proxmox`) keeps its driver in the lab: the `qm` stand-in plays it
    /// under this vmid.
    #[serde(default)]
    pub vmid: Option<u32>,
}

impl LabState {
    pub fn load(dir: &Path) -> Result<LabState, LabError> {
        let path = dir.join("lab.json");
        let text =
            std::fs::read_to_string(&path).map_err(|_| LabError::NotUp(dir.to_path_buf()))?;
        serde_json::from_str(&text).map_err(|e| LabError::Io {
            what: "parse",
            path,
            source: std::io::Error::other(e),
        })
    }

    pub fn host_dir(&self, host: &str) -> PathBuf {
        host_dir(&self.dir, host)
    }
}

pub fn host_dir(lab: &Path, host: &str) -> PathBuf {
    lab.join("hosts").join(host)
}

/// The root of a host's "disk": absolute paths of the inventory live under it.
pub fn host_root(lab: &Path, host: &str) -> PathBuf {
    host_dir(lab, host).join("root")
}

pub fn overlay_path(lab: &Path) -> PathBuf {
    lab.join("overlay.toml")
}

fn find(cmd: &'static str, package: &'static str) -> Result<PathBuf, LabError> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(cmd);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(LabError::Missing(cmd, package))
}

fn run(cmd: &mut Command) -> Result<String, LabError> {
    let out = cmd.output().map_err(|e| LabError::Command {
        command: format!("{cmd:?}"),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("{cmd:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The overlay text for the lab: new addresses, ports, directories and driver.
fn overlay_text(
    model: &Model,
    lab: &Path,
    addrs: &BTreeMap<String, String>,
    vms: &BTreeMap<String, LabVm>,
) -> String {
    let client = lab.join("client");
    let mut out = String::from(
        "# The lab overlay, written by `reprise lab up`: only addresses, ports, directories\n\
         # and the hypervisor driver differ from the inventory.\n",
    );
    for host in model.inventory.hosts.values() {
        out.push_str(&format!(
            "\n[hosts.{}]\naddress = {}\nport = {SSH_PORT}\nuser = \"root\"\nknown_hosts = {}\nidentity = {}\n",
            host.id,
            toml_str(&addrs[&host.id]),
            toml_str(&client.join("known_hosts").to_string_lossy()),
            toml_str(&client.join("id_ed25519").to_string_lossy()),
        ));
        let mut vars = String::new();
        for (k, v) in &host.vars {
            if let VarValue::Text(t) = v
                && t.starts_with('/')
            {
                let moved = format!("{}{t}", host_root(lab, &host.id).display());
                vars.push_str(&format!("{k} = {}\n", toml_str(&moved)));
            }
        }
        // The lab's driver keeps disks and drill overlays in folders a real driver (Proxmox's
        // storages, say) may not name: hypervisors of vms get the lab's own when they lack them.
        let primary = vms.values().any(|v| v.primary_host == host.id);
        let recovery = vms.values().any(|v| v.recovery_host == host.id);
        // A Proxmox node's /etc/pve is the lab host's own, where the `qm` stand-in reads it.
        let proxmox = vms
            .values()
            .any(|v| v.vmid.is_some() && (v.primary_host == host.id || v.recovery_host == host.id));
        for (var, needed, dir) in [
            (
                "images_dir",
                primary || recovery,
                "/var/lib/reprise-lab/images",
            ),
            ("overlays_dir", recovery, "/var/lib/reprise-lab/overlays"),
            ("pve_dir", proxmox, "/etc/pve"),
        ] {
            if needed && !host.vars.contains_key(var) {
                let moved = format!("{}{dir}", host_root(lab, &host.id).display());
                vars.push_str(&format!("{var} = {}\n", toml_str(&moved)));
            }
        }
        if !vars.is_empty() {
            out.push_str(&format!("[hosts.{}.vars]\n{vars}", host.id));
        }
    }
    for (id, vm) in vms {
        // A Proxmox vm keeps its driver: the `qm` stand-in plays it.
        let driver = if vm.vmid.is_some() {
            ""
        } else {
            "driver = \"lab\"\n"
        };
        out.push_str(&format!(
            "\n[vms.{id}]\n{driver}address = {}\nrecovery_address = {}\n",
            toml_str(&vm.primary_address),
            toml_str(&vm.recovery_address)
        ));
    }
    for set in model.inventory.backups.values() {
        out.push_str(&format!(
            "\n[backups.{}]\nsource_path = {}\ndest_path = {}\n",
            set.id,
            toml_str(&format!(
                "{}{}",
                host_root(lab, &set.source_host.value).display(),
                set.source_path
            )),
            toml_str(&format!(
                "{}{}",
                host_root(lab, &set.dest_host.value).display(),
                set.dest_path
            )),
        ));
    }
    out
}

/// The plan of every mode (and of the emergency failover) of a model; those that do not plan
/// are left out (loading the model already reported why).
fn every_plan(model: &Model) -> Vec<plan::Plan> {
    let mut variants: Vec<PlanOptions> = Mode::ALL.iter().map(|&m| PlanOptions::new(m)).collect();
    variants.push(PlanOptions {
        emergency: true,
        ..PlanOptions::new(Mode::Failover)
    });
    variants
        .iter()
        .filter_map(|opts| plan::build(model, opts).ok())
        .collect()
}

/// Programs that run for real on lab hosts: they only read, print, wait or change files, and
/// the overlay points every folder of the inventory into the lab. Anything else a runbook calls
/// gets a stand-in: the example's have their effect played (`STAND_INS`); others are generic
/// (the call is recorded and counts as a success, and `lab status` says so).
const RUN_FOR_REAL: &[&str] = &[
    "sh",
    "bash",
    "test",
    "[",
    "echo",
    "printf",
    "cat",
    "grep",
    "egrep",
    "awk",
    "sed",
    "cut",
    "tr",
    "head",
    "tail",
    "wc",
    "sort",
    "uniq",
    "tee",
    "xargs",
    "find",
    "stat",
    "ls",
    "du",
    "df",
    "date",
    "sleep",
    "timeout",
    "true",
    "false",
    "env",
    "id",
    "whoami",
    "hostname",
    "uname",
    "basename",
    "dirname",
    "readlink",
    "realpath",
    "seq",
    "expr",
    "mkdir",
    "rmdir",
    "rm",
    "cp",
    "mv",
    "ln",
    "touch",
    "chmod",
    "sync",
    "diff",
    "cmp",
    "sha256sum",
    "b3sum",
    "md5sum",
    "gzip",
    "gunzip",
    "zcat",
    "tar",
    "qemu-img",
    "qemu-io",
    "rsync",
    "command",
    "exit",
    "set",
    "cd",
    "export",
    "read",
    "wait",
    "trap",
    "local",
    "return",
    "shift",
    "eval",
    "exec",
    ":",
    "break",
    "continue",
    "if",
    "then",
    "else",
    "elif",
    "fi",
    "while",
    "until",
    "do",
    "done",
    "for",
    "case",
    "esac",
    "!",
    "unset",
];

/// What the lab must stand in for, from every plan (and snapshot hook) under the overlay.
#[derive(Debug, Default)]
struct Calls {
    /// Per host, the programs without a stand-in of their own: they get the generic one.
    generic: BTreeMap<String, Vec<String>>,
    /// Paths outside the lab that commands name literally (step or hook, path): the overlay
    /// moves only host variables into the lab, so such a command would touch this machine.
    outside: Vec<(String, String)>,
}

/// Files every machine has that a command may name without leaving the lab.
const PATHS_EVERYWHERE: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/urandom",
    "/dev/random",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
];

fn calls(model: &Model, lab: &Path) -> Calls {
    let plans = crate::check::Plans::build(model);
    let mut calls = Calls::default();
    for (host, tools) in crate::check::tools_by_host(&plans) {
        for tool in tools.keys() {
            // A program named by its path is judged with the other paths below.
            if tool.contains('/')
                || STAND_INS.contains(&tool.as_str())
                || RUN_FOR_REAL.contains(&tool.as_str())
            {
                continue;
            }
            calls
                .generic
                .entry(host.clone())
                .or_default()
                .push(tool.clone());
        }
    }
    let lab_prefix = format!("{}/", lab.display());
    let allowed = |path: &str| {
        path.starts_with(&lab_prefix)
            || PATHS_EVERYWHERE.contains(&path)
            || [
                "/bin/",
                "/usr/bin/",
                "/sbin/",
                "/usr/sbin/",
                "/usr/local/bin/",
            ]
            .iter()
            .any(|dir| {
                path.strip_prefix(dir)
                    .is_some_and(|name| RUN_FOR_REAL.contains(&name))
            })
    };
    let mut texts: Vec<(String, String)> = plans
        .hooks
        .iter()
        .map(|(_, what, text)| (what.clone(), text.clone()))
        .collect();
    for (_, plan) in &plans.by_mode {
        let Ok(plan) = plan else { continue };
        for step in plan.steps.iter().filter(|s| s.host.is_some()) {
            if matches!(
                step.action_spec,
                Action::Exec { .. } | Action::Probe { .. } | Action::Lag { .. }
            ) {
                for text in std::iter::once(&step.command)
                    .chain(step.verify.iter())
                    .chain(step.undo.iter())
                {
                    texts.push((format!("step {}", step.id), text.clone()));
                }
            }
        }
    }
    for (what, text) in texts {
        for path in absolute_paths(&text) {
            let entry = (what.clone(), path.to_string());
            if !allowed(path) && !calls.outside.contains(&entry) {
                calls.outside.push(entry);
            }
        }
    }
    calls
}

/// The absolute paths a command names literally: words (or parts after `=`, `<`, `>`, a
/// quote…) that start with `/`. A word with a pattern character (`^$*+?[]\\`) is a pattern
/// (an awk or sed regex such as `/^net[0-9]+$/`), not a path.
fn absolute_paths(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || "'\"=<>;|&(){}`,".contains(c))
        .filter(|w| w.starts_with('/') && w.len() > 1)
        .filter(|w| !w.contains(|c: char| "^$*+?[]\\".contains(c)))
        .collect()
}

/// Addresses and ports the runbooks' tcp and http checks expect, under the overlay.
fn checked_ports(plans: &[plan::Plan]) -> BTreeMap<String, Vec<u16>> {
    let mut ports: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for plan in plans {
        for step in &plan.steps {
            let (addr, port) = match &step.action_spec {
                Action::Tcp { address, port, .. } => (address.clone(), *port),
                Action::Http { url, .. } => {
                    let (rest, default_port) = match url.strip_prefix("https://") {
                        Some(rest) => (rest, 443),
                        None => (url.trim_start_matches("http://"), 80),
                    };
                    let authority = rest.split('/').next().unwrap_or(rest);
                    match authority.rsplit_once(':') {
                        Some((a, p)) => (a.to_string(), p.parse().unwrap_or(default_port)),
                        None => (authority.to_string(), default_port),
                    }
                }
                _ => continue,
            };
            let entry = ports.entry(addr).or_default();
            if !entry.contains(&port) {
                entry.push(port);
                entry.sort_unstable();
            }
        }
    }
    ports
}

/// Brings the lab up in `lab` from the inventory and runbooks of `base`, on the loopback
/// addresses 127.`net`.0.x (hosts), 127.`net`.1.x and 127.`net`.2.x (VMs, primary and recovery).
/// A lab that fails to come up is brought down again: nothing it started is left running.
pub fn up(
    base: &Model,
    load_with_overlay: impl Fn(&Path) -> Result<Model, String>,
    lab: &Path,
    net: u8,
) -> Result<LabState, LabError> {
    if lab.join("lab.json").exists()
        && let Ok(state) = LabState::load(lab)
        && !running_pids(&state).is_empty()
    {
        return Err(LabError::Running(lab.to_path_buf()));
    }
    let started = bring_up(base, load_with_overlay, lab, net);
    if started.is_err() && lab.join("lab.json").exists() {
        // Only this attempt's processes are recorded there: the lab was not running.
        let _ = down(lab);
    }
    started
}

fn bring_up(
    base: &Model,
    load_with_overlay: impl Fn(&Path) -> Result<Model, String>,
    lab: &Path,
    net: u8,
) -> Result<LabState, LabError> {
    let sshd = find("sshd", "openssh-server")?;
    let keygen = find("ssh-keygen", "openssh-client")?;
    let qemu_img = find("qemu-img", "qemu-utils")?;
    if lab.join("lab.json").exists() {
        std::fs::remove_dir_all(lab).map_err(io("remove", lab))?;
    }
    std::fs::create_dir_all(lab).map_err(io("create", lab))?;
    let lab = std::fs::canonicalize(lab).map_err(io("resolve", lab))?;
    let exe = std::env::current_exe().map_err(io("locate", Path::new("reprise")))?;
    let run_dir = Path::new("/run/sshd");
    std::fs::create_dir_all(run_dir).map_err(io("create", run_dir))?;

    // Addresses: hosts on 127.0.0.10+, VMs on 127.0.1.x (primary) and 127.0.2.x (recovery).
    let mut addrs = BTreeMap::new();
    for (i, id) in base.inventory.hosts.keys().enumerate() {
        addrs.insert(id.clone(), format!("127.{net}.0.{}", 10 + i));
    }
    let mut vms = BTreeMap::new();
    for (j, vm) in base.inventory.vms.values().enumerate() {
        vms.insert(
            vm.id.clone(),
            LabVm {
                name: vm.name.clone(),
                primary_host: vm.primary.value.clone(),
                recovery_host: vm.recovery.value.clone(),
                primary_address: format!("127.{net}.1.{}", 10 + j),
                recovery_address: format!("127.{net}.2.{}", 10 + j),
                disks: vm.disks.clone(),
                ports: Vec::new(),
                vmid: vm.vmid.filter(|_| vm.driver.value == "proxmox"),
            },
        );
    }
    let overlay = overlay_path(&lab);
    std::fs::write(&overlay, overlay_text(base, &lab, &addrs, &vms))
        .map_err(io("write", &overlay))?;
    let model = load_with_overlay(&overlay).map_err(|report| LabError::Model {
        overlay: overlay.clone(),
        report,
    })?;
    let calls = calls(&model, &lab);
    if !calls.outside.is_empty() {
        return Err(LabError::OutsidePaths(calls.outside));
    }
    let ports = checked_ports(&every_plan(&model));
    for vm in vms.values_mut() {
        let mut p: Vec<u16> = ports.get(&vm.primary_address).cloned().unwrap_or_default();
        p.extend(ports.get(&vm.recovery_address).cloned().unwrap_or_default());
        p.sort_unstable();
        p.dedup();
        vm.ports = p;
    }
    let mut hosts = BTreeMap::new();
    for host in model.inventory.hosts.values() {
        let role = model
            .inventory
            .site_of(&host.id)
            .and_then(|s| s.role)
            .unwrap_or(SiteRole::Remote);
        hosts.insert(
            host.id.clone(),
            LabHost {
                address: host.address.clone(),
                port: SSH_PORT,
                site_role: role,
                ports: ports.get(&host.address).cloned().unwrap_or_default(),
            },
        );
    }
    let state = LabState {
        dir: lab.clone(),
        exe: exe.clone(),
        hosts,
        vms,
        generic: calls.generic,
    };
    let json = lab.join("lab.json");
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&state).expect("lab state serializes"),
    )
    .map_err(io("write", &json))?;

    // The tool's key and known_hosts.
    let client = lab.join("client");
    std::fs::create_dir_all(&client).map_err(io("create", &client))?;
    run(Command::new(&keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "reprise-lab", "-f"])
        .arg(client.join("id_ed25519")))?;
    let client_pub =
        std::fs::read_to_string(client.join("id_ed25519.pub")).map_err(io("read", &client))?;
    let mut known_hosts = String::new();

    for host in model.inventory.hosts.values() {
        let hd = host_dir(&lab, &host.id);
        let root = host_root(&lab, &host.id);
        for sub in ["bin", "run", "units"] {
            std::fs::create_dir_all(hd.join(sub)).map_err(io("create", &hd))?;
        }
        std::fs::create_dir_all(&root).map_err(io("create", &root))?;
        for v in host.vars.values() {
            // Only paths inside the host's root: `..` could climb out of it.
            if let VarValue::Text(t) = v
                && t.starts_with(&root.to_string_lossy().to_string())
                && Path::new(t)
                    .components()
                    .all(|c| c != std::path::Component::ParentDir)
            {
                // Directories the runbooks use, and files they read (seeded).
                let p = PathBuf::from(t);
                if p.extension().is_some() {
                    let dir = p
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_else(|| root.clone());
                    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
                    std::fs::write(&p, seed_file(&p)).map_err(io("write", &p))?;
                } else {
                    std::fs::create_dir_all(&p).map_err(io("create", &p))?;
                }
            }
        }
        let key = hd.join("ssh_host_ed25519_key");
        run(Command::new(&keygen)
            .args(["-q", "-t", "ed25519", "-N", "", "-C", &host.id, "-f"])
            .arg(&key))?;
        let pubkey =
            std::fs::read_to_string(key.with_extension("pub")).map_err(io("read", &key))?;
        let mut parts = pubkey.split_whitespace();
        known_hosts.push_str(&format!(
            "[{}]:{SSH_PORT} {} {}\n",
            host.address,
            parts.next().unwrap_or(""),
            parts.next().unwrap_or("")
        ));
        let auth = hd.join("authorized_keys");
        std::fs::write(&auth, &client_pub).map_err(io("write", &auth))?;
        let generic = state.generic.get(&host.id).into_iter().flatten();
        for name in STAND_INS.iter().copied().chain(generic.map(String::as_str)) {
            let p = hd.join("bin").join(name);
            let script = format!(
                "#!/bin/sh\n# lab stand-in: records the call and plays its effect in this host's directory\nexec {} lab stub {name} \"$@\"\n",
                shell_word(&exe.to_string_lossy())
            );
            std::fs::write(&p, script).map_err(io("write", &p))?;
            set_mode(&p, 0o755)?;
        }
        let config = hd.join("sshd_config");
        // SHLVL=1 makes the remote bash a nested shell, which does not read this machine's
        // ~/.bashrc: a lab host's environment is its own, not the user's of the real machine.
        let path_env = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            hd.join("bin").display()
        );
        let text = format!(
            "ListenAddress {}:{SSH_PORT}\nHostKey {}\nPidFile {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPrintMotd no\n\
             AcceptEnv none\nSetEnv SHLVL=1 PATH={path_env} LAB_HOST={} LAB_HOST_DIR={} LAB_DIR={}\nMaxSessions 64\nMaxStartups 64:30:128\nLogLevel ERROR\n",
            host.address,
            key.display(),
            hd.join("run/sshd.pid").display(),
            auth.display(),
            host.id,
            hd.display(),
            lab.display()
        );
        std::fs::write(&config, text).map_err(io("write", &config))?;
    }
    let kh = client.join("known_hosts");
    std::fs::write(&kh, known_hosts).map_err(io("write", &kh))?;

    // Disk images: the primary copies, and the replicas on the recovery host.
    for (id, vm) in &state.vms {
        let base_vm = &model.inventory.vms[id];
        for (host, var) in [
            (&vm.primary_host, "images_dir"),
            (&vm.recovery_host, "images_dir"),
        ] {
            let Some(VarValue::Text(dir)) = model.inventory.hosts[host].vars.get(var) else {
                continue;
            };
            std::fs::create_dir_all(dir).map_err(io("create", Path::new(dir)))?;
            for disk in &base_vm.disks {
                let path = Path::new(dir).join(disk);
                // Proxmox names disks in a folder per vm: `100/vm-100-disk-0.qcow2`.
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
                }
                if !path.exists() {
                    run(Command::new(&qemu_img)
                        .args(["create", "-q", "-f", "qcow2"])
                        .arg(&path)
                        .arg(IMAGE_SIZE))?;
                }
            }
        }
    }

    // Backup sets: a few files at the source, as the nightly jobs leave them.
    for set in model.inventory.backups.values() {
        let src = Path::new(&set.source_path);
        std::fs::create_dir_all(src).map_err(io("create", src))?;
        for day in 1..=3 {
            let f = src.join(format!("{}-2026-11-{day:02}.dump", set.id));
            std::fs::write(&f, format!("{} backup, day {day}\n", set.id).repeat(1000))
                .map_err(io("write", &f))?;
        }
        // And last night's copy on the recovery storage.
        let dest = Path::new(&set.dest_path);
        std::fs::create_dir_all(dest).map_err(io("create", dest))?;
        for entry in std::fs::read_dir(src).map_err(io("read", src))? {
            let from = entry.map_err(io("read", src))?.path();
            if let Some(name) = from.file_name() {
                let to = dest.join(name);
                std::fs::copy(&from, &to).map_err(io("write", &to))?;
            }
        }
    }

    // Start every sshd, then wait until each listens.
    for (id, host) in &state.hosts {
        let hd = host_dir(&lab, id);
        let log = hd.join("sshd.log");
        let logf = std::fs::File::create(&log).map_err(io("create", &log))?;
        let child = Command::new(&sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(hd.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .process_group(0)
            .spawn()
            .map_err(io("start", &sshd))?;
        record_started(&hd.join("run"), "sshd", child.id())?;
        let _ = host;
    }
    for (id, host) in &state.hosts {
        let addr: SocketAddr = format!("{}:{}", host.address, host.port)
            .parse()
            .expect("a loopback address");
        if !wait_port(addr, Duration::from_secs(10)) {
            return Err(LabError::SshdStart {
                host: id.clone(),
                addr: addr.to_string(),
                log: host_dir(&lab, id).join("sshd.log"),
            });
        }
    }

    proxmox_nodes(&model, &state)?;

    // Production is running: every host's services, except the standby ones of the recovery
    // site (its VPN server and firewall wait for a failover); the VMs on their primary host.
    for (id, host) in &state.hosts {
        let role = model.inventory.hosts[id].role.as_str();
        let standby = host.site_role == SiteRole::Recovery && matches!(role, "vpn" | "firewall");
        if !standby && !host.ports.is_empty() {
            start_serve(&state, id, "services", &host.address, &host.ports, &[])?;
            std::fs::write(host_dir(&lab, id).join("units/production"), "")
                .map_err(io("write", &lab))?;
        }
    }
    for vm in state.vms.values() {
        let dir = match model.inventory.hosts[&vm.primary_host]
            .vars
            .get("images_dir")
        {
            Some(VarValue::Text(d)) => PathBuf::from(d),
            _ => continue,
        };
        let images: Vec<PathBuf> = vm.disks.iter().map(|d| dir.join(d)).collect();
        // Its definition on its primary host, as libvirt keeps one: its disks, and a NIC on
        // each network the recovery host's mapping names (else on `lab-net`).
        let networks: Vec<String> = model
            .inventory
            .networks_of(&vm.recovery_host)
            .map(|m| m.keys().cloned().collect())
            .filter(|k: &Vec<String>| !k.is_empty())
            .unwrap_or_else(|| vec!["lab-net".into()]);
        let defs = host_dir(&lab, &vm.primary_host).join("definitions");
        std::fs::create_dir_all(&defs).map_err(io("create", &defs))?;
        let xml = lab_definition(&vm.name, &images, &networks);
        let file = defs.join(format!("{}.xml", vm.name));
        std::fs::write(&file, xml).map_err(io("write", &file))?;
        start_serve(
            &state,
            &vm.primary_host,
            &format!("vm-{}", vm.name),
            &vm.primary_address,
            &vm.ports,
            &images,
        )?;
    }
    seed_points(&model)?;
    Ok(state)
}

/// The bridges of a lab Proxmox node with their ports (`bridge-ports`): production's, each on
/// a physical NIC, and the isolated drill bridge, with none.
pub const PROXMOX_BRIDGES: &[(&str, &str)] = &[
    ("vmbr0", "eno1"),
    ("vmbr1", "eno2"),
    (crate::inventory::PROXMOX_DRILL_BRIDGE, "none"),
];

/// What a Proxmox VE node holds for the `qm` stand-in, on each host of a Proxmox vm: its
/// directory storage `local` (`/etc/pve/storage.cfg`, whose `images` folder is the host's
/// `images_dir`), its bridges (`/etc/network/interfaces`), and on the primary each vm's
/// configuration (`/etc/pve/qemu-server/<vmid>.conf`: two NICs, its disks as volumes of
/// `local`, the guest agent on). The recovery node gets no vm configuration: each replica
/// point carries it (the driver's `definition`), and reprise defines the vm from it.
fn proxmox_nodes(model: &Model, state: &LabState) -> Result<(), LabError> {
    for vm in state.vms.values() {
        let Some(vmid) = vm.vmid else { continue };
        for host in [&vm.primary_host, &vm.recovery_host] {
            let root = host_root(&state.dir, host);
            let Some(VarValue::Text(images)) = model.inventory.hosts[host].vars.get("images_dir")
            else {
                continue;
            };
            let Some(storage) = images.strip_suffix("/images") else {
                return Err(LabError::Command {
                    command: format!("a Proxmox node for vm {}", vm.name),
                    stderr: format!(
                        "host {host}: images_dir {images} is not the `images` folder of a directory storage (e.g. /var/lib/vz/images)"
                    ),
                });
            };
            let pve = root.join("etc/pve");
            std::fs::create_dir_all(pve.join("qemu-server")).map_err(io("create", &pve))?;
            let cfg = pve.join("storage.cfg");
            std::fs::write(
                &cfg,
                format!("dir: local\n\tpath {storage}\n\tcontent images,iso,backup\n"),
            )
            .map_err(io("write", &cfg))?;
            let net = root.join("etc/network");
            std::fs::create_dir_all(&net).map_err(io("create", &net))?;
            let interfaces: String = PROXMOX_BRIDGES
                .iter()
                .map(|(b, ports)| {
                    format!(
                        "auto {b}\niface {b} inet manual\n\tbridge-ports {ports}\n\tbridge-stp off\n\n"
                    )
                })
                .collect();
            std::fs::write(net.join("interfaces"), interfaces).map_err(io("write", &net))?;
        }
        let conf = host_root(&state.dir, &vm.primary_host)
            .join("etc/pve/qemu-server")
            .join(format!("{vmid}.conf"));
        let mut text = format!(
            "agent: 1\nboot: order=scsi0\ncores: 1\nmemory: 512\nmeta: creation-qemu=9.0.2,ctime=1764547200\nname: {}\n\
             net0: virtio=BC:24:11:00:{:02X}:01,bridge=vmbr0\nnet1: virtio=BC:24:11:00:{:02X}:02,bridge=vmbr1,tag=20\n\
             onboot: 1\nostype: l26\nscsihw: virtio-scsi-single\n",
            vm.name,
            vmid % 256,
            vmid % 256
        );
        for (i, disk) in vm.disks.iter().enumerate() {
            text.push_str(&format!("scsi{i}: local:{disk},iothread=1,size=64M\n"));
        }
        text.push_str("vmgenid: 0f9d1d4e-6a51-4f7e-9a43-1d2b3c4d5e6f\n");
        std::fs::write(&conf, text).map_err(io("write", &conf))?;
    }
    Ok(())
}

/// Last night's replication, as cron leaves it on a real site: every vm disk and backup set
/// of the lab has a verified replica point on the recovery side (replicated as `reprise
/// replicate` does, over the lab's sshd; no snapshot: the lab's vms write nothing).
fn seed_points(model: &Model) -> Result<(), LabError> {
    use crate::replica::remote::{Helpers, Replication, image_path, point_id};
    let options = crate::run::SshOptions {
        policy: crate::ssh::HostKeyPolicy::Strict,
        known_hosts: crate::run::SshOptions::default_known_hosts(),
        known_hosts_given: false,
        identity: None,
        connect_timeout: Duration::from_secs(10),
        here: None,
        client: crate::ssh::SshClient::default(),
        // The lab's hosts are all named in full by its overlay.
        ssh_config: None,
    };
    let transport = crate::run::transport(model, &options);
    let helpers = Helpers::new(&transport);
    let now = chrono::Utc::now();
    let replication = |retention, definition| Replication {
        point: point_id(now),
        taken_at: now,
        retention,
        reread: false,
        compress: false,
        deadline: Duration::from_secs(600),
        definition,
    };
    let inv = &model.inventory;
    // (from, src, to, dst, retention, folder)
    let mut copies = Vec::new();
    for vm in inv.vms.values() {
        let (from, to) = (&vm.primary.value, &vm.recovery.value);
        let (Some(a), Some(b)) = (plan::images_dir_of(inv, from), plan::images_dir_of(inv, to))
        else {
            continue;
        };
        // Its definition goes with the point, beside its first disk's copy.
        let mut definition = None;
        if let (Some((host, cmd, format)), Some(first)) = (
            inv.drivers
                .get(&vm.driver.value)
                .filter(|d| d.defines())
                .and_then(|d| {
                    let format = d.definition_format?;
                    plan::replicate_hook(model, vm, "definition").map(|(h, c)| (h, c, format))
                }),
            vm.disks.first(),
        ) {
            let text = cmd
                .expose(|n| std::env::var(n).ok())
                .map_err(|m| LabError::Command {
                    command: "the lab's first replication".into(),
                    stderr: format!("{}: secret {m} is not set", vm.id),
                })?;
            definition = Some(
                crate::replica::definitions::capture(
                    &helpers,
                    format,
                    &host,
                    &text,
                    to,
                    &image_path(&b, first),
                )
                .map_err(|e| LabError::Command {
                    command: "the lab's first replication".into(),
                    stderr: format!("{}: {e}", vm.id),
                })?,
            );
        }
        for (i, d) in vm.disks.iter().enumerate() {
            copies.push((
                from.clone(),
                image_path(&a, d),
                to.clone(),
                image_path(&b, d),
                vm.retention,
                false,
                if i == 0 { definition.clone() } else { None },
            ));
        }
    }
    for set in inv.backups.values() {
        copies.push((
            set.source_host.value.clone(),
            set.source_path.clone(),
            set.dest_host.value.clone(),
            set.dest_path.clone(),
            set.retention,
            true,
            None,
        ));
    }
    let mut hosts: Vec<&str> = copies
        .iter()
        .flat_map(|c| [c.0.as_str(), c.2.as_str()])
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    helpers.prepare(&hosts);
    let failed: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = copies
            .iter()
            .map(|(from, src, to, dst, retention, folder, definition)| {
                let helpers = &helpers;
                scope.spawn(move || {
                    let r = replication(*retention, definition.clone());
                    let done = if *folder {
                        helpers.replicate_tree(from, src, to, dst, &r)
                    } else {
                        helpers.replicate(from, src, to, dst, &r, None)
                    };
                    done.err()
                        .map(|e| format!("{from}:{src} → {to}:{dst}: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| {
                h.join()
                    .unwrap_or(Some("a replication thread stopped".into()))
            })
            .collect()
    });
    if failed.is_empty() {
        Ok(())
    } else {
        Err(LabError::Command {
            command: "the lab's first replication".into(),
            stderr: failed.join("; "),
        })
    }
}

/// Content for a file the inventory names on a lab host.
fn seed_file(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if name.contains("rules") || name.contains("iptables") || name.ends_with(".fw") {
        "# Generated by Firewall Builder (lab copy)\n*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n\
         :OUTPUT ACCEPT [0:0]\n-A INPUT -i lo -j ACCEPT\n-A INPUT -m state --state ESTABLISHED,RELATED -j ACCEPT\n\
         -A FORWARD -m state --state ESTABLISHED,RELATED -j ACCEPT\n-A FORWARD -p tcp --dport 443 -j ACCEPT\nCOMMIT\n"
            .to_string()
    } else {
        format!("# {name}: lab copy\n")
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io("chmod", p))
}

fn shell_word(s: &str) -> String {
    crate::template::shell_quote(s)
}

/// Polls until `addr` accepts a connection, or the deadline.
pub fn wait_port(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// What identifies a process the lab started, recorded by its parent as soon as it started
/// (`run/NAME.started`): its pid, its start time (clock ticks after boot, field 22 of
/// `/proc/PID/stat`) and the boot. A pid alone may since belong to an unrelated process.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Started {
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

    fn read(path: &Path) -> Option<Started> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut f = text.split_whitespace();
        Some(Started {
            pid: f.next()?.parse().ok()?,
            start: f.next()?.parse().ok()?,
            boot: f.next()?.to_string(),
        })
    }

    /// Whether the process recorded still runs (not a zombie), and is the same process.
    fn runs(&self) -> bool {
        Started::of(self.pid).as_ref() == Some(self)
    }

    /// Sends `signal` to the recorded process if it is still that process. The pid is pinned
    /// with a pidfd before the identity is checked, so the signal cannot reach a process
    /// that took the pid in between.
    fn signal(&self, signal: Signal) -> bool {
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
fn record_started(run_dir: &Path, name: &str, pid: u32) -> Result<(), LabError> {
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
fn running(run_dir: &Path, name: &str) -> Option<u32> {
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

/// What `lab up` says: where each host and vm answers, and how to use the lab.
pub fn describe_up(state: &LabState) -> String {
    let mut out = format!(
        "lab up in {}: {} hosts, {} vms\n",
        state.dir.display(),
        state.hosts.len(),
        state.vms.len()
    );
    for (id, h) in &state.hosts {
        out.push_str(&format!("  host {id:<14} sshd {}:{}\n", h.address, h.port));
    }
    for (id, vm) in &state.vms {
        out.push_str(&format!(
            "  vm   {id:<14} {} on {}, {} on {}\n",
            vm.primary_address, vm.primary_host, vm.recovery_address, vm.recovery_host
        ));
    }
    for (host, names) in &state.generic {
        out.push_str(&format!(
            "  no stand-in on {host} for: {} (calls are recorded and succeed; see `lab status`)\n",
            names.join(", ")
        ));
    }
    out.push_str(&format!(
        "run with: reprise --overlay {} drill --yes --no-prompt\n",
        overlay_path(&state.dir).display()
    ));
    out
}

/// A readable status of the lab.
pub fn status(lab: &Path) -> Result<String, LabError> {
    let state = LabState::load(lab)?;
    let running = running_pids(&state);
    let alive = |host: &str, name: &str| {
        running.iter().any(|(p, _)| {
            p == &state
                .host_dir(host)
                .join("run")
                .join(format!("{name}.started"))
        })
    };
    let mut out = format!("lab in {}\n\nhosts:\n", state.dir.display());
    for (id, h) in &state.hosts {
        out.push_str(&format!(
            "  {id:<14} {}:{} sshd {}{}\n",
            h.address,
            h.port,
            if alive(id, "sshd") { "up" } else { "DOWN" },
            if alive(id, "services") {
                format!(", services on {:?}", h.ports)
            } else {
                String::new()
            }
        ));
    }
    out.push_str("\nvms:\n");
    for (id, vm) in &state.vms {
        let on = |host: &str, prefix: &str| alive(host, &format!("vm-{prefix}{}", vm.name));
        let mut where_ = Vec::new();
        if on(&vm.primary_host, "") {
            where_.push(format!(
                "primary ({} {})",
                vm.primary_host, vm.primary_address
            ));
        }
        if on(&vm.recovery_host, "") {
            where_.push(format!(
                "recovery ({} {})",
                vm.recovery_host, vm.recovery_address
            ));
        }
        if on(&vm.recovery_host, "drill-") {
            where_.push(format!("drill copy ({})", vm.recovery_host));
        }
        let text = if where_.is_empty() {
            "stopped".to_string()
        } else {
            where_.join(", ")
        };
        out.push_str(&format!("  {id:<14} {text}\n"));
    }
    if !state.generic.is_empty() {
        out.push_str("\ncommands without a stand-in (calls recorded, success assumed):\n");
        for (host, names) in &state.generic {
            let log =
                std::fs::read_to_string(state.host_dir(host).join("calls.log")).unwrap_or_default();
            let counted: Vec<String> = names
                .iter()
                .map(|n| {
                    let calls = log
                        .lines()
                        .filter(|l| l.split_whitespace().nth(1) == Some(n.as_str()))
                        .count();
                    format!("{n} ({calls} calls)")
                })
                .collect();
            out.push_str(&format!("  {host:<14} {}\n", counted.join(", ")));
        }
    }
    out.push_str(&format!("\n{} lab processes running\n", running.len()));
    Ok(out)
}

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

/// The body of a lab "VM" or service: checks and reads its disk images, then answers every
/// connection on its ports with a small HTTP 200, until killed.
pub fn serve(
    name: &str,
    listen: &[String],
    images: &[PathBuf],
    pidfile: &Path,
) -> Result<(), String> {
    for image in images {
        let mut f = std::fs::File::open(image).map_err(|e| {
            format!(
                "refusing to start {name}: cannot open {}: {e}",
                image.display()
            )
        })?;
        let mut head = [0u8; 4];
        f.read_exact(&mut head).map_err(|e| {
            format!(
                "refusing to start {name}: cannot read {}: {e}",
                image.display()
            )
        })?;
        if &head != b"QFI\xfb" {
            return Err(format!(
                "refusing to start {name}: {} is not a qcow2 image",
                image.display()
            ));
        }
        // Read it all, as a booting VM reads its disk: a damaged file fails here.
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "refusing to start {name}: reading {} failed: {e}",
                        image.display()
                    ));
                }
            }
        }
    }
    let mut listeners = Vec::new();
    for l in listen {
        let addr: SocketAddr = l.parse().map_err(|_| format!("bad listen address {l}"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "refusing to listen on {addr}: the lab listens on 127.0.0.0/8 only"
            ));
        }
        listeners
            .push(TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?);
    }
    let tmp = pidfile.with_extension("tmp");
    std::fs::write(&tmp, std::process::id().to_string()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, pidfile).map_err(|e| e.to_string())?;
    let body = format!("lab {name} is up\n");
    let mut handles = Vec::new();
    for listener in listeners {
        let body = body.clone();
        handles.push(std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// A stand-in for a command that would change a real machine: records the call in the host's
/// `calls.log` and plays its effect inside the host's directory. Returns the exit code.
pub fn stub(name: &str, args: &[String]) -> i32 {
    let (Ok(host), Ok(host_dir), Ok(lab)) = (
        std::env::var("LAB_HOST"),
        std::env::var("LAB_HOST_DIR"),
        std::env::var("LAB_DIR"),
    ) else {
        eprintln!("{name}: this is a lab stand-in and runs only on lab hosts");
        return 127;
    };
    let host_dir = PathBuf::from(host_dir);
    let lab = PathBuf::from(lab);
    if let Ok(mut log) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(host_dir.join("calls.log"))
    {
        let _ = writeln!(
            log,
            "{} {name} {}",
            chrono::Utc::now().to_rfc3339(),
            args.join(" ")
        );
    }
    let state = match LabState::load(&lab) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: {e}");
            return 1;
        }
    };
    let root = host_dir.join("root");
    let lib = root.join("var/lib/lab");
    let _ = std::fs::create_dir_all(&lib);
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match name {
        "lab-vm" => lab_vm(&state, &host, args),
        "qm" => qm::qm(&state, &host, &root, args),
        "systemctl" => {
            // `systemctl is-active --quiet UNIT`: the unit is the first word not an option.
            let verb = arg(0);
            let unit = args
                .iter()
                .skip(1)
                .map(String::as_str)
                .find(|a| !a.starts_with('-'))
                .unwrap_or("");
            let units = host_dir.join("units");
            let unit_file = units.join(unit.replace('/', "_"));
            // A unit stopped by name is inactive, also on a host whose production runs.
            let stopped = host_dir.join("units-stopped").join(unit.replace('/', "_"));
            let ports = state
                .hosts
                .get(&host)
                .map(|h| (h.address.clone(), h.ports.clone()));
            match verb {
                "start" | "restart" | "reload-or-restart" => {
                    let _ = std::fs::write(&unit_file, "");
                    let _ = std::fs::remove_file(&stopped);
                    if let Some((addr, ports)) = ports
                        && !ports.is_empty()
                        && let Err(e) = start_serve(&state, &host, "services", &addr, &ports, &[])
                    {
                        eprintln!("systemctl: {e}");
                        return 1;
                    }
                    0
                }
                "stop" => {
                    let _ = std::fs::remove_file(&unit_file);
                    if let Some(dir) = stopped.parent() {
                        let _ = std::fs::create_dir_all(dir);
                        let _ = std::fs::write(&stopped, "");
                    }
                    let left = std::fs::read_dir(&units).map(|d| d.count()).unwrap_or(0);
                    if left == 0 {
                        stop_serve(&state, &host, "services");
                    }
                    0
                }
                "is-active" | "status" => {
                    if !stopped.exists()
                        && (unit_file.exists() || units.join("production").exists())
                    {
                        println!("active");
                        0
                    } else {
                        println!("inactive");
                        3
                    }
                }
                "enable" | "disable" | "daemon-reload" | "is-enabled" => 0,
                other => {
                    eprintln!("systemctl (lab): unsupported verb `{other}`");
                    1
                }
            }
        }
        "iptables-restore" => {
            let mut rules = String::new();
            let file = args.iter().find(|a| !a.starts_with('-'));
            let read = match file {
                Some(f) => std::fs::read_to_string(f).map(|t| rules = t),
                None => std::io::stdin().read_to_string(&mut rules).map(|_| ()),
            };
            if let Err(e) = read {
                eprintln!("iptables-restore: {e}");
                return 1;
            }
            if !rules.lines().any(|l| l.trim() == "COMMIT") {
                eprintln!("iptables-restore: line 1 failed: no COMMIT in the rules");
                return 1;
            }
            if args.iter().any(|a| a == "--test" || a == "-t") {
                return 0;
            }
            match std::fs::write(lib.join("iptables.rules"), rules) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("iptables-restore: {e}");
                    1
                }
            }
        }
        "iptables" | "iptables-save" => {
            let rules = std::fs::read_to_string(lib.join("iptables.rules")).unwrap_or_default();
            let chain = args.iter().skip_while(|a| *a != "-S" && *a != "-L").nth(1);
            for line in rules
                .lines()
                .filter(|l| !l.starts_with('*') && *l != "COMMIT")
            {
                let line = line.replace(":", "-P ").replacen("-P -P", "-P", 1);
                if chain.is_none_or(|c| line.contains(c.as_str())) {
                    println!("{line}");
                }
            }
            0
        }
        // `ip -o link show dev BRIDGE` and `ip -o link show master BRIDGE` on a Proxmox node
        // answer from its bridges; anything else as before.
        "ip" if qm::is_bridge_query(args) => qm::ip(&state, &host, &root, args),
        "ip" => {
            println!("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 state UNKNOWN (lab)");
            0
        }
        "mount" | "umount" => 0,
        "mountpoint" => 0,
        "upsc" => {
            if args.iter().any(|a| a == "ups.status") {
                println!("OL");
            } else {
                println!("battery.charge: 100\nups.status: OL\ninput.voltage: 230.0");
            }
            0
        }
        "upsrw" => 0,
        // PostgreSQL on a lab host: a standby in recovery until `pg_promote()` is called.
        "psql" => {
            let sql = args.join(" ");
            let promoted = lib.join("pg-promoted");
            if sql.contains("pg_last_xact_replay_timestamp") {
                print_lag(&lib, "1.5")
            } else if sql.contains("pg_promote") {
                let _ = std::fs::write(&promoted, "");
                println!("t");
                0
            } else if sql.contains("pg_is_in_recovery") {
                println!("{}", if promoted.exists() { "f" } else { "t" });
                0
            } else {
                0
            }
        }
        // The replication lag of a domain controller, as contrib/ad-repl-lag prints it.
        "ad-repl-lag" => print_lag(&lib, "42"),
        "ping" => {
            let target = args
                .iter()
                .rfind(|a| !a.starts_with('-'))
                .cloned()
                .unwrap_or_default();
            let loopback = std::net::ToSocketAddrs::to_socket_addrs(&(target.as_str(), 0))
                .map(|mut a| a.all(|x| x.ip().is_loopback()))
                .unwrap_or(false);
            if loopback {
                println!("PING {target}: 1 packets transmitted, 1 received (lab)");
                0
            } else {
                eprintln!("ping: {target}: not a lab address");
                2
            }
        }
        other
            if state
                .generic
                .get(&host)
                .is_some_and(|g| g.iter().any(|n| n == other)) =>
        {
            eprintln!(
                "{other} (lab): no stand-in plays this command; the call was recorded in {} and counts as a success",
                host_dir.join("calls.log").display()
            );
            0
        }
        other => {
            eprintln!("{other}: no lab stand-in");
            127
        }
    }
}

/// What a lab stand-in for a lag probe prints: [`LAG_FILE`]'s text, or `default`.
fn print_lag(lib: &Path, default: &str) -> i32 {
    let said = std::fs::read_to_string(lib.join(LAG_FILE)).unwrap_or_else(|_| default.into());
    if said.trim() == "hang" {
        std::thread::sleep(Duration::from_secs(3600));
        return 1;
    }
    print!("{said}");
    if !said.ends_with('\n') {
        println!();
    }
    0
}

/// The definition `lab up` gives a lab vm on its primary host (libvirt's domain XML).
fn lab_definition(name: &str, images: &[PathBuf], networks: &[String]) -> String {
    let mut xml = format!(
        "<domain type='lab'>\n  <name>{name}</name>\n  <memory unit='MiB'>1024</memory>\n  <vcpu>1</vcpu>\n  <devices>\n"
    );
    for (i, img) in images.iter().enumerate() {
        xml.push_str(&format!(
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'/>\n      <source file='{}'/>\n      <target dev='vd{}' bus='virtio'/>\n    </disk>\n",
            img.display(),
            (b'a' + (i as u8 % 26)) as char
        ));
    }
    for (i, n) in networks.iter().enumerate() {
        xml.push_str(&format!(
            "    <interface type='bridge'>\n      <mac address='52:54:00:1a:{:02x}:{:02x}'/>\n      <source bridge='{n}'/>\n    </interface>\n",
            name.len() % 256,
            i
        ));
    }
    xml.push_str("  </devices>\n</domain>\n");
    xml
}

/// The lab hypervisor driver: "VMs" are `lab serve` processes reading their images.
fn lab_vm(state: &LabState, host: &str, args: &[String]) -> i32 {
    let verb = args.first().map(String::as_str).unwrap_or("");
    let Some(name) = args.get(1) else {
        eprintln!("usage: lab-vm start|stop|status|autostart NAME ...");
        return 2;
    };
    let base = name.strip_prefix("drill-").unwrap_or(name);
    let Some(vm) = state.vms.values().find(|v| v.name == *base) else {
        eprintln!("lab-vm: no vm named {base}");
        return 1;
    };
    let process = format!("vm-{name}");
    let defs = state.host_dir(host).join("definitions");
    let defined = defs.join(format!("{name}.xml"));
    match verb {
        "definition" => match std::fs::read(&defined) {
            Ok(bytes) => {
                let _ = std::io::Write::write_all(&mut std::io::stdout(), &bytes);
                0
            }
            Err(_) => {
                eprintln!("lab-vm: failed to get domain '{name}': not defined on {host}");
                1
            }
        },
        "define" => {
            // The definition on standard input, as `virsh define` takes it.
            let mut bytes = Vec::new();
            if let Err(e) = std::io::Read::read_to_end(
                &mut std::io::Read::take(std::io::stdin(), crate::vmdef::MAX_BYTES as u64 + 1),
                &mut bytes,
            ) {
                eprintln!("lab-vm: reading the definition: {e}");
                return 1;
            }
            let defined_name =
                match crate::vmdef::Definition::parse(crate::vmdef::Format::LibvirtXml, &bytes) {
                    Ok(d) => d.name().unwrap_or_default(),
                    Err(e) => {
                        eprintln!("lab-vm: {e}");
                        return 1;
                    }
                };
            if defined_name != *name && defined_name != format!("drill-{name}") {
                eprintln!("lab-vm: the definition is of `{defined_name}`, not of {name}");
                return 1;
            }
            let file = defs.join(format!("{defined_name}.xml"));
            match std::fs::create_dir_all(&defs).and_then(|()| std::fs::write(&file, &bytes)) {
                Ok(()) => {
                    println!("Domain '{defined_name}' defined");
                    0
                }
                Err(e) => {
                    eprintln!("lab-vm: {}: {e}", file.display());
                    1
                }
            }
        }
        "undefine" => {
            if std::fs::remove_file(&defined).is_err() {
                println!("{name} is not defined: nothing to remove");
            }
            0
        }
        "start" if !defined.exists() => {
            eprintln!("lab-vm: failed to get domain '{name}': not defined on {host}");
            1
        }
        "start" => {
            let (Some(dir), disks) = (args.get(2), &args[3.min(args.len())..]) else {
                eprintln!("usage: lab-vm start NAME DIR DISK...");
                return 2;
            };
            let images: Vec<PathBuf> = disks.iter().map(|d| Path::new(dir).join(d)).collect();
            for i in &images {
                let check = Command::new("qemu-img")
                    .args(["check", "-q"])
                    .arg(i)
                    .output();
                match check {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => {
                        eprintln!(
                            "lab-vm: refusing to start {name}: {} is damaged: {}",
                            i.display(),
                            String::from_utf8_lossy(&o.stderr).trim()
                        );
                        return 1;
                    }
                    Err(e) => {
                        eprintln!("lab-vm: cannot check {}: {e}", i.display());
                        return 1;
                    }
                }
            }
            let address = if host == vm.recovery_host {
                &vm.recovery_address
            } else {
                &vm.primary_address
            };
            match start_serve(state, host, &process, address, &vm.ports, &images) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("lab-vm: {e}");
                    1
                }
            }
        }
        "stop" => {
            stop_serve(state, host, &process);
            0
        }
        "status" => {
            if running(&state.host_dir(host).join("run"), &process).is_some() {
                println!("running");
                0
            } else {
                println!("shut off");
                3
            }
        }
        "autostart" => {
            let flag = state
                .host_dir(host)
                .join("units")
                .join(format!("autostart-{name}"));
            match args.get(2).map(String::as_str) {
                Some("on") => {
                    let _ = std::fs::write(flag, "");
                }
                _ => {
                    let _ = std::fs::remove_file(flag);
                }
            }
            0
        }
        // The snapshot around a replication, modelled on libvirt's: an overlay per disk takes
        // the vm's writes while the disk is read (`freeze`), then is committed back (`thaw`).
        "freeze" | "thaw" | "snapshot-check" => {
            let (Some(dir), disks) = (args.get(2), &args[3.min(args.len())..]) else {
                eprintln!("usage: lab-vm {verb} NAME DIR DISK...");
                return 2;
            };
            let running = running(&state.host_dir(host).join("run"), &process).is_some();
            snapshot(verb, Path::new(dir), disks, running)
        }
        other => {
            eprintln!("lab-vm: unknown action `{other}`");
            2
        }
    }
}

/// The overlay of a lab disk during a replication: `DIR/STEM.reprise-replicate`, as libvirt
/// names an external snapshot's file.
fn overlay_of(dir: &Path, disk: &str) -> PathBuf {
    let stem = Path::new(disk)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| disk.to_string());
    dir.join(format!("{stem}.reprise-replicate"))
}

/// `lab-vm freeze|thaw|snapshot-check`: libvirt's external snapshot, on files. A running vm's
/// disks each get a qcow2 overlay backed by them (refused when one is already there, as
/// libvirt refuses); `thaw` commits each overlay into its disk and removes it (a stopped vm
/// too, as the libvirt driver's `replicate-end` does); `snapshot-check` names the overlays.
fn snapshot(verb: &str, dir: &Path, disks: &[String], running: bool) -> i32 {
    let qemu_img = |args: &[&std::ffi::OsStr]| -> Result<(), String> {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .map_err(|e| format!("qemu-img: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    for disk in disks {
        let (base, overlay) = (dir.join(disk), overlay_of(dir, disk));
        match verb {
            "snapshot-check" => {
                if overlay.exists() {
                    println!("overlay file {}", overlay.display());
                }
            }
            "freeze" => {
                if !running {
                    // libvirt's driver snapshots only a running domain.
                    return 0;
                }
                if overlay.exists() {
                    eprintln!(
                        "error: unsupported configuration: external snapshot file for disk {disk} already exists and is not a block device: {}",
                        overlay.display()
                    );
                    return 1;
                }
                let mut head = [0u8; 4];
                let format =
                    match std::fs::File::open(&base).and_then(|mut f| f.read_exact(&mut head)) {
                        Ok(()) if &head == b"QFI\xfb" => "qcow2",
                        _ => "raw",
                    };
                if let Err(e) = qemu_img(&[
                    "create".as_ref(),
                    "-q".as_ref(),
                    "-f".as_ref(),
                    "qcow2".as_ref(),
                    "-F".as_ref(),
                    format.as_ref(),
                    "-b".as_ref(),
                    base.as_os_str(),
                    overlay.as_os_str(),
                ]) {
                    eprintln!("lab-vm: cannot snapshot {disk}: {e}");
                    return 1;
                }
            }
            _ => {
                if !overlay.exists() {
                    continue;
                }
                if let Err(e) = qemu_img(&["commit".as_ref(), "-q".as_ref(), overlay.as_os_str()]) {
                    eprintln!("lab-vm: cannot merge {} back: {e}", overlay.display());
                    return 1;
                }
                if let Err(e) = std::fs::remove_file(&overlay) {
                    eprintln!("lab-vm: cannot remove {}: {e}", overlay.display());
                    return 1;
                }
            }
        }
    }
    0
}
