//! The lab's stand-in for Proxmox VE's `qm` (a stand-in, not Proxmox: it plays the few verbs
//! the `proxmox` driver uses, with qm's semantics, on the lab host's own files).
//!
//! What it follows of Proxmox VE (qm(1), qm.conf(5), pvesm's directory storage):
//! - a vm is a vmid (100 to 999999999) with a configuration file `/etc/pve/qemu-server/<vmid>.conf`
//!   (colon separated `key: value` lines, under the lab host's root); every verb on a vmid
//!   without one fails with Proxmox's message ("Configuration file … does not exist");
//! - disks are volumes of a storage named in `/etc/pve/storage.cfg` (`dir: local` with its
//!   `path`): `local:100/vm-100-disk-0.qcow2` is `<path>/images/100/vm-100-disk-0.qcow2`;
//!   `create` refuses a volume that does not exist, `destroy` removes the volumes the vm owns;
//! - a vm is `stopped` or `running`; running, it is a real process (`lab serve`) that checked
//!   and read its disks and answers on its ports, as the lab's other vms; `start` refuses a vm
//!   that runs, a template, a bridge missing from `/etc/network/interfaces`;
//! - `shutdown` is the ACPI power button: a guest with `acpi: 0` and no guest agent ignores it,
//!   so `shutdown` waits `--timeout` (default the vm's `startup: down=`, else 60 s) and fails
//!   ("VM quit/powerdown failed - got timeout") unless `--forceStop 1`; `stop` pulls the plug;
//! - `guest cmd fsfreeze-freeze|fsfreeze-thaw|fsfreeze-status` needs `agent: 1` in the
//!   configuration ("No QEMU guest agent configured") and a running vm; the frozen state is
//!   kept in a file of the host (`/var/lib/lab/qm/<vmid>.frozen`).
//!
//! Not Proxmox's, the lab's own: `start` keeps the configuration each vmid last started with
//! in `/var/lib/lab/qm/started/<vmid>.conf` of the lab host, so that tests see what a drill's
//! copy ran with after its cleanup removed it.
//!
//! It must not pretend more: no clusters, no storages but directories, no live migration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lab::down::running;
use crate::lab::serve::{start_serve, stop_serve};
use crate::lab::{LabState, LabVm};

/// Proxmox's CLI exits with 255 on an error (`die` in its Perl handlers).
const FAILED: i32 = 255;

/// One configuration file: its `key: value` lines in order (snapshot sections left out).
#[derive(Debug, Default, Clone)]
struct Conf(Vec<(String, String)>);

impl Conf {
    fn parse(text: &str) -> Conf {
        let mut out = Vec::new();
        for line in text.lines() {
            let line = line.trim_end();
            if line.starts_with('[') {
                break; // a snapshot section: not the current configuration
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                out.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        Conf(out)
    }

    fn text(&self) -> String {
        self.0.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.0.push((key.to_string(), value.to_string())),
        }
    }

    fn delete(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    /// The volumes of its disks (`scsi0: local:100/vm-100-disk-0.qcow2,size=…`), CD-ROMs and
    /// empty drives left out.
    fn volumes(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter(|(k, _)| is_disk_key(k))
            .filter(|(_, v)| !v.split(',').any(|o| o == "media=cdrom"))
            .filter_map(|(k, v)| {
                let vol = v.split(',').next()?.trim_start_matches("file=");
                (vol != "none" && !vol.is_empty()).then(|| (k.clone(), vol.to_string()))
            })
            .collect()
    }

    fn bridges(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| is_net_key(k))
            .filter_map(|(_, v)| {
                v.split(',')
                    .find_map(|o| o.strip_prefix("bridge="))
                    .map(str::to_string)
            })
            .collect()
    }

    fn flag(&self, key: &str, default: bool) -> bool {
        match self.get(key) {
            None => default,
            Some(v) => {
                let first = v.split(',').next().unwrap_or("");
                first == "1" || first == "enabled=1" || v.split(',').any(|o| o == "enabled=1")
            }
        }
    }
}

fn numbered(key: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| {
        key.strip_prefix(p)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn is_disk_key(key: &str) -> bool {
    numbered(
        key,
        &["ide", "sata", "scsi", "virtio", "efidisk", "tpmstate"],
    )
}

fn is_net_key(key: &str) -> bool {
    numbered(key, &["net"])
}

/// The stand-in's view of one lab host's Proxmox files.
struct Node<'a> {
    state: &'a LabState,
    host: &'a str,
    root: &'a Path,
}

impl Node<'_> {
    fn conf_path(&self, vmid: u32) -> PathBuf {
        self.root
            .join("etc/pve/qemu-server")
            .join(format!("{vmid}.conf"))
    }

    fn load(&self, vmid: u32) -> Result<Conf, String> {
        std::fs::read_to_string(self.conf_path(vmid))
            .map(|t| Conf::parse(&t))
            .map_err(|_| {
                format!(
                    "Configuration file 'nodes/{}/qemu-server/{vmid}.conf' does not exist",
                    self.host
                )
            })
    }

    fn write(&self, vmid: u32, conf: &Conf) -> Result<(), String> {
        let path = self.conf_path(vmid);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let tmp = path.with_extension("conf.tmp");
        std::fs::write(&tmp, conf.text()).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The file of a volume `STORAGE:REL` of a directory storage.
    fn volume_path(&self, volume: &str) -> Result<PathBuf, String> {
        let (storage, rel) = volume
            .split_once(':')
            .ok_or_else(|| format!("unable to parse volume ID '{volume}'"))?;
        let cfg =
            std::fs::read_to_string(self.root.join("etc/pve/storage.cfg")).unwrap_or_default();
        let mut current: Option<&str> = None;
        for line in cfg.lines() {
            if let Some(id) = line.strip_prefix("dir:") {
                current = Some(id.trim());
            } else if let Some(path) = line.trim().strip_prefix("path ")
                && current == Some(storage)
            {
                return Ok(Path::new(path.trim()).join("images").join(rel));
            }
        }
        Err(format!("storage '{storage}' does not exist"))
    }

    fn bridge_exists(&self, bridge: &str) -> bool {
        self.bridges().iter().any(|(b, _)| b == bridge)
    }

    /// The bridges of `/etc/network/interfaces` (an `iface` with `bridge-ports`), each with
    /// its ports there (`none`: no port).
    fn bridges(&self) -> Vec<(String, Vec<String>)> {
        let text =
            std::fs::read_to_string(self.root.join("etc/network/interfaces")).unwrap_or_default();
        let mut out = Vec::new();
        let mut iface: Option<String> = None;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["iface", name, ..] => iface = Some(name.to_string()),
                ["bridge-ports", ports @ ..] | ["bridge_ports", ports @ ..] => {
                    if let Some(name) = iface.take() {
                        let ports = ports.iter().filter(|p| **p != "none");
                        out.push((name, ports.map(|p| p.to_string()).collect()));
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// The tap interfaces of the running vms on `bridge` (`tap<vmid>i<n>` for `net<n>`).
    fn taps(&self, bridge: &str) -> Vec<String> {
        let mut out = Vec::new();
        let dir = self.root.join("etc/pve/qemu-server");
        let mut confs: Vec<(u32, Conf)> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        let id = name.strip_suffix(".conf")?.parse().ok()?;
                        Some((id, self.load(id).ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        confs.sort_by_key(|(id, _)| *id);
        for (id, conf) in confs {
            if !self.runs(id, &conf) {
                continue;
            }
            for (key, value) in &conf.0 {
                let on = value.split(',').any(|o| o == format!("bridge={bridge}"));
                if let Some(n) = key.strip_prefix("net").filter(|_| is_net_key(key) && on) {
                    out.push(format!("tap{id}i{n}"));
                }
            }
        }
        out
    }

    fn started_record(&self, vmid: u32) -> PathBuf {
        self.root
            .join("var/lib/lab/qm/started")
            .join(format!("{vmid}.conf"))
    }

    fn frozen_flag(&self, vmid: u32) -> PathBuf {
        self.root
            .join("var/lib/lab/qm")
            .join(format!("{vmid}.frozen"))
    }

    /// The lab process of a vm: `vm-<name>`, with the lab vm it stands for (a drill copy
    /// `drill-<name>` stands for `<name>`).
    fn process(&self, vmid: u32, conf: &Conf) -> Result<(String, &LabVm), String> {
        let name = conf.get("name").unwrap_or("").to_string();
        let base = name.strip_prefix("drill-").unwrap_or(&name);
        let vm = self
            .state
            .vms
            .values()
            .find(|v| v.name == base)
            .ok_or_else(|| format!("vmid {vmid}: the lab has no vm named `{base}` to play it"))?;
        Ok((format!("vm-{name}"), vm))
    }

    fn runs(&self, vmid: u32, conf: &Conf) -> bool {
        self.process(vmid, conf)
            .is_ok_and(|(p, _)| running(&self.state.host_dir(self.host).join("run"), &p).is_some())
    }
}

/// `--key value` options (a flag with no value is `1`, as qm reads booleans).
fn options(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let Some(key) = args[i].strip_prefix("--") else {
            return Err(format!("400 too many arguments: unexpected `{}`", args[i]));
        };
        if let Some((k, v)) = key.split_once('=') {
            out.push((k.to_string(), v.to_string()));
            i += 1;
        } else if args.get(i + 1).is_some_and(|v| !v.starts_with("--")) {
            out.push((key.to_string(), args[i + 1].clone()));
            i += 2;
        } else {
            out.push((key.to_string(), "1".to_string()));
            i += 1;
        }
    }
    Ok(out)
}

fn vmid(arg: Option<&String>) -> Result<u32, String> {
    let text = arg.ok_or("400 not enough arguments: vmid")?;
    match text.parse::<u32>() {
        Ok(n) if (100..=999_999_999).contains(&n) => Ok(n),
        _ => Err(format!(
            "400 Parameter verification failed.\nvmid: invalid format - value '{text}' does not look like a valid VM ID"
        )),
    }
}

/// `qm VERB ARGS…` on the lab host `host`: the exit code (0, or 255 with the error on stderr).
pub(super) fn qm(state: &LabState, host: &str, root: &Path, args: &[String]) -> i32 {
    let node = Node { state, host, root };
    match run(&node, args) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            FAILED
        }
    }
}

/// `pvesm path VOLUME` on the lab host `host`: the file of a volume of a directory storage,
/// as Proxmox's storage manager prints it (the only verb the lab plays).
pub(super) fn pvesm(state: &LabState, host: &str, root: &Path, args: &[String]) -> i32 {
    let node = Node { state, host, root };
    match (args.first().map(String::as_str), args.get(1), args.len()) {
        (Some("path"), Some(volume), 2) => match node.volume_path(volume) {
            Ok(path) => {
                println!("{}", path.display());
                0
            }
            Err(e) => {
                eprintln!("{e}");
                FAILED
            }
        },
        _ => {
            eprintln!("400 unable to run: the lab's pvesm plays only `pvesm path VOLUME`");
            FAILED
        }
    }
}

fn run(node: &Node, args: &[String]) -> Result<String, String> {
    let verb = args.first().map(String::as_str).unwrap_or("");
    if verb == "guest" {
        return guest(node, &args[1.min(args.len())..]);
    }
    let id = vmid(args.get(1))?;
    let opts = options(&args[2.min(args.len())..])?;
    let opt = |k: &str| {
        opts.iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    match verb {
        "status" => {
            let conf = node.load(id)?;
            Ok(format!(
                "status: {}\n",
                if node.runs(id, &conf) {
                    "running"
                } else {
                    "stopped"
                }
            ))
        }
        "config" => Ok(node.load(id)?.text()),
        "start" => start(node, id),
        "stop" => {
            let conf = node.load(id)?;
            if node.runs(id, &conf) {
                let (process, _) = node.process(id, &conf)?;
                stop_serve(node.state, node.host, &process);
                let _ = std::fs::remove_file(node.frozen_flag(id));
            }
            Ok(String::new())
        }
        "shutdown" => shutdown(node, id, opt("timeout"), opt("forceStop") == Some("1")),
        "set" => {
            let mut conf = node.load(id)?;
            for (k, v) in &opts {
                match k.as_str() {
                    "delete" => v.split(',').for_each(|d| conf.delete(d.trim())),
                    "skiplock" => {}
                    _ => conf.set(k, v),
                }
            }
            check_volumes(node, &conf)?;
            node.write(id, &conf)?;
            Ok(String::new())
        }
        "create" => {
            if node.conf_path(id).exists() {
                return Err(format!(
                    "unable to create VM {id} - VM {id} already exists on node '{}'",
                    node.host
                ));
            }
            let mut conf = Conf::default();
            for (k, v) in &opts {
                conf.set(k, v);
            }
            check_volumes(node, &conf)?;
            node.write(id, &conf)?;
            Ok(String::new())
        }
        "destroy" => destroy(node, id),
        other => Err(format!(
            "unknown command 'qm {other}' (the lab's qm stand-in plays status, config, start, stop, shutdown, set, create, destroy and guest cmd)"
        )),
    }
}

/// `qm shutdown VMID [--timeout S] [--forceStop 1]`: the guest agent's shutdown when it is
/// configured, else the ACPI button, which a guest with `acpi: 0` ignores: then it waits the
/// timeout and fails, unless forced.
fn shutdown(
    node: &Node,
    id: u32,
    timeout: Option<&str>,
    force_stop: bool,
) -> Result<String, String> {
    let conf = node.load(id)?;
    if !node.runs(id, &conf) {
        return Ok(String::new());
    }
    let (process, _) = node.process(id, &conf)?;
    // The agent's guest-shutdown when it is configured, else the ACPI button.
    let heard = conf.flag("agent", false) || conf.flag("acpi", true);
    if !heard {
        let down = conf.get("startup").and_then(|s| {
            s.split(',')
                .find_map(|o| o.strip_prefix("down="))
                .and_then(|d| d.parse::<u64>().ok())
        });
        let timeout = match timeout {
            Some(t) => t
                .parse::<u64>()
                .map_err(|_| format!("timeout: type check ('integer') failed - got '{t}'"))?,
            None => down.unwrap_or(60),
        };
        std::thread::sleep(Duration::from_secs(timeout));
        if !force_stop {
            return Err("VM quit/powerdown failed - got timeout".into());
        }
        eprintln!("VM still running - terminating now with SIGTERM");
    }
    stop_serve(node.state, node.host, &process);
    let _ = std::fs::remove_file(node.frozen_flag(id));
    Ok(String::new())
}

/// `qm destroy VMID`: a stopped vm's configuration, and the volumes it owns.
fn destroy(node: &Node, id: u32) -> Result<String, String> {
    let conf = node.load(id)?;
    if node.runs(id, &conf) {
        return Err(format!("VM {id} is running - destroy failed"));
    }
    // The volumes it owns (`<vmid>/vm-<vmid>-…`) go with it; others are left.
    for (_, vol) in conf.volumes() {
        let owned = vol
            .split_once(':')
            .is_some_and(|(_, rel)| rel.starts_with(&format!("{id}/vm-{id}-")));
        if owned && let Ok(path) = node.volume_path(&vol) {
            std::fs::remove_file(&path)
                .or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| format!("unable to free volume '{vol}' - {e}"))?;
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
    std::fs::remove_file(node.conf_path(id))
        .map_err(|e| format!("unable to remove config of VM {id} - {e}"))?;
    Ok(String::new())
}

/// Every disk volume of a configuration exists (qm refuses to attach one that does not).
fn check_volumes(node: &Node, conf: &Conf) -> Result<(), String> {
    for (key, vol) in conf.volumes() {
        let path = node.volume_path(&vol).map_err(|e| format!("{key}: {e}"))?;
        if !path.is_file() {
            return Err(format!("{key}: volume '{vol}' does not exist"));
        }
    }
    Ok(())
}

fn start(node: &Node, id: u32) -> Result<String, String> {
    let conf = node.load(id)?;
    if conf.flag("template", false) {
        return Err("you can't start a vm if it's a template".into());
    }
    if node.runs(id, &conf) {
        return Err(format!("VM {id} already running"));
    }
    for bridge in conf.bridges() {
        if !node.bridge_exists(&bridge) {
            return Err(format!("bridge '{bridge}' does not exist"));
        }
    }
    let (process, vm) = node.process(id, &conf)?;
    let mut images = Vec::new();
    for (key, vol) in conf.volumes() {
        let path = node.volume_path(&vol).map_err(|e| format!("{key}: {e}"))?;
        let check = std::process::Command::new("qemu-img")
            .args(["check", "-q"])
            .arg(&path)
            .output()
            .map_err(|e| format!("qemu-img: {e}"))?;
        if !check.status.success() {
            return Err(format!(
                "start failed: {key} ({vol}): {}",
                String::from_utf8_lossy(&check.stderr).trim()
            ));
        }
        images.push(path);
    }
    let address = if node.host == vm.recovery_host {
        vm.recovery_address.clone()
    } else {
        vm.primary_address.clone()
    };
    start_serve(
        node.state, node.host, &process, &address, &vm.ports, &images,
    )
    .map_err(|e| format!("start failed: {e}"))?;
    // The lab's own record (not Proxmox's) of the configuration each vmid last started with,
    // kept after the vm and its file are gone, so that what ran can be looked at.
    let record = node.started_record(id);
    if let Some(dir) = record.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&record, conf.text());
    Ok(String::new())
}

/// Whether `ip ARGS…` asks about one link (`link show dev NAME`) or the ports of a bridge
/// (`link show master NAME`), which a Proxmox node answers from its bridges.
pub(super) fn is_bridge_query(args: &[String]) -> bool {
    let words: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    matches!(words.as_slice(), ["link", "show", "dev" | "master", _])
}

/// `ip [-d] [-o] link show dev NAME` and `ip -o link show master NAME` on a lab Proxmox node,
/// as iproute2 prints them: its bridges (`bridge` in the details with `-d`), their ports from
/// `/etc/network/interfaces` (a physical NIC such as `eno1`) and the taps of the vms running on
/// them. A name that is none of these does not exist.
pub(super) fn ip(state: &LabState, host: &str, root: &Path, args: &[String]) -> i32 {
    let node = Node { state, host, root };
    let details = args.iter().any(|a| a == "-d" || a == "-details");
    let words: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (how, name) = (words[2], words[3]);
    let bridges = node.bridges();
    let line = |index: usize, link: &str, master: Option<&str>, bridge: bool| {
        let master = master.map(|m| format!(" master {m}")).unwrap_or_default();
        let kind = if bridge && details {
            "\\    bridge forward_delay 0 hello_time 200 max_age 2000 stp_state 0 vlan_filtering 0"
        } else {
            ""
        };
        format!(
            "{index}: {link}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue{master} state UP mode DEFAULT group default qlen 1000\\    link/ether 02:00:00:00:00:{index:02x} brd ff:ff:ff:ff:ff:ff{kind} (lab)"
        )
    };
    // Every link of the node, numbered as `ip` does: bridges, then their ports.
    let mut links: Vec<(String, Option<String>, bool)> = Vec::new();
    for (bridge, ports) in &bridges {
        links.push((bridge.clone(), None, true));
        for port in ports.iter().cloned().chain(node.taps(bridge)) {
            links.push((port, Some(bridge.clone()), false));
        }
    }
    let shown: Vec<String> = links
        .iter()
        .enumerate()
        .filter(|(_, (link, master, _))| match how {
            "dev" => link == name,
            _ => master.as_deref() == Some(name),
        })
        .map(|(i, (link, master, bridge))| line(i + 2, link, master.as_deref(), *bridge))
        .collect();
    let known = links.iter().any(|(link, _, _)| link == name);
    if !known {
        eprintln!("Device \"{name}\" does not exist.");
        return 1;
    }
    for l in shown {
        println!("{l}");
    }
    0
}

/// `qm guest cmd VMID COMMAND`: the guest agent's filesystem freeze.
fn guest(node: &Node, args: &[String]) -> Result<String, String> {
    if args.first().map(String::as_str) != Some("cmd") {
        return Err("the lab's qm stand-in plays only `qm guest cmd`".into());
    }
    let id = vmid(args.get(1))?;
    let command = args.get(2).map(String::as_str).unwrap_or("");
    let conf = node.load(id)?;
    if !conf.flag("agent", false) {
        return Err("No QEMU guest agent configured".into());
    }
    if !node.runs(id, &conf) {
        return Err(format!("VM {id} is not running"));
    }
    let flag = node.frozen_flag(id);
    match command {
        "fsfreeze-status" => Ok(if flag.exists() {
            "frozen\n".into()
        } else {
            "thawed\n".into()
        }),
        "fsfreeze-freeze" => {
            if flag.exists() {
                return Err(
                    "Agent error: Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state"
                        .into(),
                );
            }
            if let Some(dir) = flag.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            std::fs::write(&flag, format!("{}\n", chrono::Utc::now().to_rfc3339()))
                .map_err(|e| e.to_string())?;
            Ok(format!("{}\n", conf.volumes().len().max(1)))
        }
        "fsfreeze-thaw" => {
            let was = flag.exists();
            let _ = std::fs::remove_file(&flag);
            Ok(format!(
                "{}\n",
                if was { conf.volumes().len().max(1) } else { 0 }
            ))
        }
        "ping" => Ok(String::new()),
        other => Err(format!(
            "the lab's qm stand-in plays fsfreeze-freeze, fsfreeze-thaw, fsfreeze-status and ping, not `{other}`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_read_as_qm_writes_them() {
        let conf = Conf::parse(
            "# a comment\nname: erp-db\nagent: 1\nscsi0: local:120/vm-120-disk-0.qcow2,size=32G\nide2: local:iso/d.iso,media=cdrom\nnet0: virtio=AA:BB:CC:DD:EE:01,bridge=vmbr0\nnet1: e1000=AA:BB:CC:DD:EE:02,bridge=vmbr1,tag=5\n\n[before-upgrade]\nscsi0: local:120/vm-120-disk-0.qcow2,size=16G\n",
        );
        assert_eq!(conf.get("name"), Some("erp-db"));
        assert_eq!(
            conf.volumes(),
            [(
                "scsi0".to_string(),
                "local:120/vm-120-disk-0.qcow2".to_string()
            )]
        );
        assert_eq!(conf.bridges(), ["vmbr0", "vmbr1"]);
        assert!(conf.flag("agent", false));
        assert!(conf.flag("acpi", true));
        assert!(!Conf::parse("agent: enabled=0\n").flag("agent", false));
        assert!(Conf::parse("agent: enabled=1,fstrim_cloned_disks=1\n").flag("agent", false));
    }

    #[test]
    fn options_and_vmids_are_read_as_qm_reads_them() {
        let args: Vec<String> = ["--timeout", "5", "--forceStop", "--net0=virtio,bridge=x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            options(&args).unwrap(),
            [
                ("timeout".to_string(), "5".to_string()),
                ("forceStop".to_string(), "1".to_string()),
                ("net0".to_string(), "virtio,bridge=x".to_string())
            ]
        );
        assert!(vmid(Some(&"99".to_string())).is_err());
        assert!(vmid(Some(&"$((900000 + 101))".to_string())).is_err());
        assert_eq!(vmid(Some(&"900101".to_string())), Ok(900101));
    }
}
