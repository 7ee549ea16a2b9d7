//! `lab up`: the hosts' trees, keys and sshd configurations, the vms' images and definitions,
//! the backup sets' files, then every sshd, the production's services and vms started, and the
//! first replication seeded. A lab that fails to come up is brought down again.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::inventory::{SiteRole, VarValue};
use crate::model::Model;

use super::down::{down, record_started, running_pids};
use super::overlay::{calls, checked_ports, every_plan, overlay_text};
use super::seed::seed_points;
use super::serve::start_serve;
use super::standins::STAND_INS;
use super::{LabError, LabHost, LabState, LabVm, SSH_PORT, host_dir, host_root, io, overlay_path};

/// Size of each lab disk image.
const IMAGE_SIZE: &str = "64M";

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

/// The programs `lab up` runs, all found before anything is written.
struct Tools {
    sshd: PathBuf,
    keygen: PathBuf,
    qemu_img: PathBuf,
}

/// Everything `lab up` does, in order; the caller brings a failed attempt down.
fn bring_up(
    base: &Model,
    load_with_overlay: impl Fn(&Path) -> Result<Model, String>,
    lab: &Path,
    net: u8,
) -> Result<LabState, LabError> {
    let tools = Tools {
        sshd: find("sshd", "openssh-server")?,
        keygen: find("ssh-keygen", "openssh-client")?,
        qemu_img: find("qemu-img", "qemu-utils")?,
    };
    if lab.join("lab.json").exists() {
        std::fs::remove_dir_all(lab).map_err(io("remove", lab))?;
    }
    std::fs::create_dir_all(lab).map_err(io("create", lab))?;
    let lab = std::fs::canonicalize(lab).map_err(io("resolve", lab))?;
    let exe = std::env::current_exe().map_err(io("locate", Path::new("reprise")))?;
    let run_dir = Path::new("/run/sshd");
    std::fs::create_dir_all(run_dir).map_err(io("create", run_dir))?;

    let (model, state) = lab_state(base, load_with_overlay, &lab, exe, net)?;
    host_trees(&model, &state, &tools.keygen)?;
    disk_images(&model, &state, &tools.qemu_img)?;
    backup_files(&model)?;
    start_sshds(&state, &tools.sshd)?;
    proxmox_nodes(&model, &state)?;
    start_production(&model, &state)?;
    seed_points(&model)?;
    Ok(state)
}

/// Addresses: hosts on 127.`net`.0.10+, VMs on 127.`net`.1.x (primary) and 127.`net`.2.x
/// (recovery); the vms' ports are filled in once the plans are read.
fn addresses(base: &Model, net: u8) -> (BTreeMap<String, String>, BTreeMap<String, LabVm>) {
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
    (addrs, vms)
}

/// Writes the overlay, loads the inventory under it (refusing commands that would touch paths
/// outside the lab), and saves the lab's state (`lab.json`): the model under the overlay, and
/// the state.
fn lab_state(
    base: &Model,
    load_with_overlay: impl Fn(&Path) -> Result<Model, String>,
    lab: &Path,
    exe: PathBuf,
    net: u8,
) -> Result<(Model, LabState), LabError> {
    let (addrs, mut vms) = addresses(base, net);
    let overlay = overlay_path(lab);
    std::fs::write(&overlay, overlay_text(base, lab, &addrs, &vms))
        .map_err(io("write", &overlay))?;
    let model = load_with_overlay(&overlay).map_err(|report| LabError::Model {
        overlay: overlay.clone(),
        report,
    })?;
    let calls = calls(&model, lab);
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
        dir: lab.to_path_buf(),
        exe,
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
    Ok((model, state))
}

/// The tool's key and `known_hosts`, and every host's tree (see [`host_tree`]).
fn host_trees(model: &Model, state: &LabState, keygen: &Path) -> Result<(), LabError> {
    let client = state.dir.join("client");
    std::fs::create_dir_all(&client).map_err(io("create", &client))?;
    run(Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "reprise-lab", "-f"])
        .arg(client.join("id_ed25519")))?;
    let client_pub =
        std::fs::read_to_string(client.join("id_ed25519.pub")).map_err(io("read", &client))?;
    let mut known_hosts = String::new();
    for host in model.inventory.hosts.values() {
        known_hosts.push_str(&host_tree(state, host, keygen, &client_pub)?);
    }
    let kh = client.join("known_hosts");
    std::fs::write(&kh, known_hosts).map_err(io("write", &kh))
}

/// One host's tree: its folders (and the files its variables name, seeded), its host key, the
/// tool's key as its only authorized key, the stand-ins first on its PATH, and its sshd's
/// configuration. Returns its `known_hosts` line.
fn host_tree(
    state: &LabState,
    host: &crate::inventory::Host,
    keygen: &Path,
    client_pub: &str,
) -> Result<String, LabError> {
    let lab = &state.dir;
    let hd = host_dir(lab, &host.id);
    for sub in ["bin", "run", "units"] {
        std::fs::create_dir_all(hd.join(sub)).map_err(io("create", &hd))?;
    }
    host_folders(lab, host)?;
    let key = hd.join("ssh_host_ed25519_key");
    run(Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", &host.id, "-f"])
        .arg(&key))?;
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).map_err(io("read", &key))?;
    let mut parts = pubkey.split_whitespace();
    let known_host = format!(
        "[{}]:{SSH_PORT} {} {}\n",
        host.address,
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("")
    );
    let auth = hd.join("authorized_keys");
    std::fs::write(&auth, client_pub).map_err(io("write", &auth))?;
    let generic = state.generic.get(&host.id).into_iter().flatten();
    for name in STAND_INS.iter().copied().chain(generic.map(String::as_str)) {
        let p = hd.join("bin").join(name);
        let script = format!(
            "#!/bin/sh\n# lab stand-in: records the call and plays its effect in this host's directory\nexec {} lab stub {name} \"$@\"\n",
            shell_word(&state.exe.to_string_lossy())
        );
        std::fs::write(&p, script).map_err(io("write", &p))?;
        set_mode(&p, 0o755)?;
    }
    let config = hd.join("sshd_config");
    std::fs::write(&config, sshd_config(lab, host, &key, &auth)).map_err(io("write", &config))?;
    Ok(known_host)
}

/// The root of a host's "disk", with the folders its variables name inside it (and the files
/// they name, seeded).
fn host_folders(lab: &Path, host: &crate::inventory::Host) -> Result<(), LabError> {
    let root = host_root(lab, &host.id);
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
    Ok(())
}

/// The configuration of a host's sshd: its address, its key, the tool's key only, and the
/// host's own environment.
fn sshd_config(lab: &Path, host: &crate::inventory::Host, key: &Path, auth: &Path) -> String {
    let hd = host_dir(lab, &host.id);
    // SHLVL=1 makes the remote bash a nested shell, which does not read this machine's
    // ~/.bashrc: a lab host's environment is its own, not the user's of the real machine.
    let path_env = format!(
        "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        hd.join("bin").display()
    );
    format!(
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
    )
}

/// Disk images: the primary copies, and the recovery host's folder for the replicas (made
/// by the lab's first replication: a file reprise did not make is no copy it writes over).
fn disk_images(model: &Model, state: &LabState, qemu_img: &Path) -> Result<(), LabError> {
    for (id, vm) in &state.vms {
        let base_vm = &model.inventory.vms[id];
        for (host, make) in [(&vm.primary_host, true), (&vm.recovery_host, false)] {
            let Some(VarValue::Text(dir)) = model.inventory.hosts[host].vars.get("images_dir")
            else {
                continue;
            };
            std::fs::create_dir_all(dir).map_err(io("create", Path::new(dir)))?;
            for disk in base_vm.disks.iter().filter(|_| make) {
                let path = Path::new(dir).join(disk);
                // Proxmox names disks in a folder per vm: `100/vm-100-disk-0.qcow2`.
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
                }
                if !path.exists() {
                    run(Command::new(qemu_img)
                        .args(["create", "-q", "-f", "qcow2"])
                        .arg(&path)
                        .arg(IMAGE_SIZE))?;
                }
            }
        }
    }
    Ok(())
}

/// Backup sets: a few files at the source, as the nightly jobs leave them, and the folder of
/// their copy on the recovery storage (filled by the lab's first replication).
fn backup_files(model: &Model) -> Result<(), LabError> {
    for set in model.inventory.backups.values() {
        let src = Path::new(&set.source_path);
        std::fs::create_dir_all(src).map_err(io("create", src))?;
        for day in 1..=3 {
            let f = src.join(format!("{}-2026-11-{day:02}.dump", set.id));
            std::fs::write(&f, format!("{} backup, day {day}\n", set.id).repeat(1000))
                .map_err(io("write", &f))?;
        }
        let dest = Path::new(&set.dest_path);
        std::fs::create_dir_all(dest).map_err(io("create", dest))?;
    }
    Ok(())
}

/// Starts every sshd (each recorded as the lab's own), then waits until each listens.
fn start_sshds(state: &LabState, sshd: &Path) -> Result<(), LabError> {
    for id in state.hosts.keys() {
        let hd = host_dir(&state.dir, id);
        let log = hd.join("sshd.log");
        let logf = std::fs::File::create(&log).map_err(io("create", &log))?;
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(hd.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .process_group(0)
            .spawn()
            .map_err(io("start", sshd))?;
        record_started(&hd.join("run"), "sshd", child.id())?;
    }
    for (id, host) in &state.hosts {
        let addr: SocketAddr = format!("{}:{}", host.address, host.port)
            .parse()
            .expect("a loopback address");
        if !wait_port(addr, Duration::from_secs(10)) {
            return Err(LabError::SshdStart {
                host: id.clone(),
                addr: addr.to_string(),
                log: host_dir(&state.dir, id).join("sshd.log"),
            });
        }
    }
    Ok(())
}

/// Production is running: every host's services, except the standby ones of the recovery
/// site (its VPN server and firewall wait for a failover); the VMs on their primary host,
/// each defined there as libvirt keeps a definition.
fn start_production(model: &Model, state: &LabState) -> Result<(), LabError> {
    let lab = &state.dir;
    for (id, host) in &state.hosts {
        let role = model.inventory.hosts[id].role.as_str();
        let standby = host.site_role == SiteRole::Recovery && matches!(role, "vpn" | "firewall");
        if !standby && !host.ports.is_empty() {
            start_serve(state, id, "services", &host.address, &host.ports, &[])?;
            std::fs::write(host_dir(lab, id).join("units/production"), "")
                .map_err(io("write", lab))?;
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
        let defs = host_dir(lab, &vm.primary_host).join("definitions");
        std::fs::create_dir_all(&defs).map_err(io("create", &defs))?;
        let xml = lab_definition(&vm.name, &images, &networks);
        let file = defs.join(format!("{}.xml", vm.name));
        std::fs::write(&file, xml).map_err(io("write", &file))?;
        start_serve(
            state,
            &vm.primary_host,
            &format!("vm-{}", vm.name),
            &vm.primary_address,
            &vm.ports,
            &images,
        )?;
    }
    Ok(())
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
