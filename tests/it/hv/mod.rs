//! A real-hypervisor set-up: two libvirt daemons (hv-main and hv-pra) each with its own OpenSSH
//! `sshd`, running QEMU guests under TCG (no KVM needed), for tests that drive reprise's built-in
//! libvirt driver exactly as on real hosts: over SSH, with `virsh`, `qemu-img` and `virt-xml`.
//!
//! Each host lives in a network namespace of its own (`ip netns`) and a private mount
//! namespace (`unshare -m`, see `host.sh`) in which `/run`, `/var`, `/etc/libvirt`, `/root` and
//! `/srv` are folders of the test: libvirt's sockets, state, bridges and firewall rules never
//! touch the machine. The two namespaces are joined by two veth pairs: `mgmt` (10.126.1.2 for
//! hv-main, 10.126.1.3 for hv-pra; each sshd listens there) and `prod`, one layer-2 segment
//! stretched between both hosts' `br-prod` bridges, as production networks often are between
//! two sites (hv-main's side holds 10.126.0.1, the guests take 10.126.0.1x). reprise itself runs
//! in hv-main's namespace, as an orchestrator on the main site would.
//!
//! The guest is a stock Debian kernel (unpacked by `scripts/hv-prereqs.sh`) and a busybox
//! initramfs made here (`init.sh`): it keeps a counter in the first sector of its disk, answers
//! `boot B now N` on TCP port 7000 and powers off on an ACPI power button press.
//!
//! Everything is removed on drop (every process in both namespaces is killed, then the
//! namespaces are deleted); what a killed test run left is removed by the next one.
//!
//! Network rule: every address used here is inside the namespaces this module creates.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const KERNEL_DIR: &str = "/var/cache/reprise-it/guest-kernel";
const MODULES: [&str; 11] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
    "button",
    "evdev",
];
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const INSTALL_HINT: &str = "run scripts/test.sh, which installs the real-hypervisor tests' \
                            prerequisites (scripts/hv-prereqs.sh)";
const NS_PREFIX: &str = "reprise-hv-";
/// The guests' health port.
pub const HEALTH_PORT: u16 = 7000;

/// Where a guest boots from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Firmware {
    Bios,
    Uefi,
}

/// One test hypervisor: its namespaces, folders and sshd.
pub struct Host {
    pub id: &'static str,
    pub ns: String,
    /// The host's private folders (its `/var` is `dir/root/var`, and so on).
    pub dir: PathBuf,
    pub address: &'static str,
    sshd: Child,
}

/// The two hosts and what reprise needs to reach them; removed on drop.
pub struct Hv {
    dir: tempfile::TempDir,
    pub main: Host,
    pub pra: Host,
}

fn tool_present(path: &str) -> bool {
    if path.contains('/') {
        return Path::new(path).exists();
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .any(|d| d.join(path).is_file())
    })
}

/// Fails, naming each missing piece, when the machine cannot run the set-up.
fn check_prerequisites() {
    let mut missing = Vec::new();
    for tool in [
        "/usr/sbin/libvirtd",
        "virsh",
        "qemu-system-x86_64",
        "qemu-img",
        "qemu-io",
        "virt-xml",
        "/bin/busybox",
        "/usr/sbin/sshd",
        "ssh-keygen",
        "unshare",
        "nsenter",
        "ip",
        "gzip",
        OVMF_CODE,
        OVMF_VARS,
        // The guests' network interfaces are tap devices.
        "/dev/net/tun",
    ] {
        if !tool_present(tool) {
            missing.push(tool.to_string());
        }
    }
    let kernel = Path::new(KERNEL_DIR);
    for file in ["vmlinuz", "vmlinux"] {
        if !kernel.join(file).is_file() {
            missing.push(format!("{KERNEL_DIR}/{file} (the guests' kernel)"));
        }
    }
    for m in MODULES {
        if !kernel.join("modules").join(format!("{m}.ko")).is_file() {
            missing.push(format!("{KERNEL_DIR}/modules/{m}.ko"));
        }
    }
    assert!(
        missing.is_empty(),
        "the real-hypervisor tests cannot run: missing {}; {INSTALL_HINT}",
        missing.join(", ")
    );
    let static_busybox = Command::new("ldd")
        .arg("/bin/busybox")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true);
    assert!(
        static_busybox,
        "/bin/busybox is not the static build (busybox-static): the guest's initramfs cannot \
         carry it; {INSTALL_HINT}"
    );
}

/// Runs `cmd`, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills every process in network namespace `ns` (until none is left) and deletes it.
fn remove_namespace(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() || Instant::now() >= deadline {
            break;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// Removes the namespaces and folders that runs killed before their clean-up left behind (their
/// names carry the pid of the test process that made them).
fn remove_leftovers() {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !alive(pid) {
            remove_namespace(name);
        }
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        if let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok())
            && !alive(pid)
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Polls `done` every 200 ms until it holds; panics with `what` after `within`.
pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Host {
    /// Runs `script` with bash as root on this host, outside reprise (the test's own hands).
    pub fn sh_output(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.sshd.id().to_string(), "-m", "-n", "--"])
            .args(["bash", "-c", script])
            .output()
            .unwrap_or_else(|e| panic!("cannot run nsenter: {e}"))
    }

    /// [`Host::sh_output`], which must succeed; its standard output.
    pub fn sh(&self, script: &str) -> String {
        let out = self.sh_output(script);
        assert!(
            out.status.success(),
            "on {}: `{script}` failed ({}): {}{}",
            self.id,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `virsh ARGS` on this host, which must succeed.
    pub fn virsh(&self, args: &str) -> String {
        self.sh(&format!("virsh {args}"))
    }

    /// The state `virsh domstate` gives, or its error.
    pub fn domstate(&self, name: &str) -> String {
        let out = self.sh_output(&format!("virsh domstate {name} 2>&1"));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The domains this host's libvirt knows (`virsh list --all --name`).
    pub fn domains(&self) -> Vec<String> {
        self.virsh("list --all --name")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// A file of this host, as seen from outside its mount namespace: `/var/x` is under
    /// `dir/root/var/x`, `/srv/x` under `dir/root/srv/x`.
    pub fn path(&self, on_host: &str) -> PathBuf {
        let rel = on_host.trim_start_matches('/');
        self.dir.join("root").join(rel)
    }

    /// The counter in the first sector of the disk image `image` (0 for an empty sector).
    pub fn counter_on_disk(&self, image: &str) -> u64 {
        let out = self.sh(&format!("qemu-io -r -U -c 'read -v 0 32' {image}"));
        let mut text = String::new();
        for line in out.lines() {
            // `00000000:  63 6f 75 6e ...  counter 1..`: the hex bytes between the colon and
            // the ASCII column.
            let Some((_, rest)) = line.split_once(":  ") else {
                continue;
            };
            for byte in rest.split_whitespace().take(16) {
                match u8::from_str_radix(byte, 16) {
                    Ok(b) => text.push(b as char),
                    Err(_) => break,
                }
            }
        }
        text.strip_prefix("counter ")
            .and_then(|t| t.split('\n').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The number of blocks a `reprise replicate` output (or one line of it) says changed.
pub fn blocks_changed(stdout: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.contains(" blocks changed"))
        .unwrap_or_else(|| panic!("no `blocks changed` in {stdout}"));
    let before = &line[..line.find(" blocks changed").unwrap()];
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"))
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Hv {
    /// Builds the guest and starts both hosts with the network `prod` defined on each.
    pub fn up() -> Hv {
        check_prerequisites();
        remove_leftovers();
        let tag = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir()
            .unwrap();
        let main_ns = format!("{tag}-main");
        let pra_ns = format!("{tag}-pra");
        let added = Command::new("ip")
            .args(["netns", "add", &main_ns])
            .output()
            .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2): {e}"));
        assert!(
            added.status.success(),
            "the real-hypervisor tests cannot run: creating a network namespace \
             (`ip netns add {main_ns}`) failed: {}; they need root and the permission to \
             create network and mount namespaces",
            String::from_utf8_lossy(&added.stderr).trim()
        );
        // From here on, the namespaces are removed by `Hv`'s drop, or by the next run.
        let mut guard = NsGuard(vec![main_ns.clone()]);
        ip(&["netns", "add", &pra_ns]);
        guard.0.push(pra_ns.clone());
        for ns in [&main_ns, &pra_ns] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "add", "br-prod", "type", "bridge"]);
            ip(&["-n", ns, "link", "set", "br-prod", "up"]);
        }
        ip(&[
            "-n",
            &main_ns,
            "addr",
            "add",
            "10.126.0.1/24",
            "dev",
            "br-prod",
        ]);
        ip(&[
            "-n", &main_ns, "link", "add", "prod0", "type", "veth", "peer", "name", "prod0",
            "netns", &pra_ns,
        ]);
        ip(&[
            "-n", &main_ns, "link", "add", "mgmt0", "type", "veth", "peer", "name", "mgmt0",
            "netns", &pra_ns,
        ]);
        for ns in [&main_ns, &pra_ns] {
            ip(&["-n", ns, "link", "set", "prod0", "master", "br-prod", "up"]);
            ip(&["-n", ns, "link", "set", "mgmt0", "up"]);
        }
        ip(&[
            "-n",
            &main_ns,
            "addr",
            "add",
            "10.126.1.2/24",
            "dev",
            "mgmt0",
        ]);
        ip(&[
            "-n",
            &pra_ns,
            "addr",
            "add",
            "10.126.1.3/24",
            "dev",
            "mgmt0",
        ]);

        build_guest(&dir.path().join("guest"));
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        crate::sshd::keygen(&keys.join("client"));
        let main = Host::start("hv-main", &main_ns, "10.126.1.2", dir.path());
        let pra = Host::start("hv-pra", &pra_ns, "10.126.1.3", dir.path());
        let mut known = String::new();
        for h in [&main, &pra] {
            let public = std::fs::read_to_string(h.dir.join("sshd/host.pub")).unwrap();
            let mut f = public.split_whitespace();
            known.push_str(&format!(
                "[{}]:2222 {} {}\n",
                h.address,
                f.next().unwrap(),
                f.next().unwrap()
            ));
        }
        std::fs::write(keys.join("known_hosts"), known).unwrap();
        guard.0.clear();
        let hv = Hv { dir, main, pra };
        for h in [&hv.main, &hv.pra] {
            std::fs::write(
                h.path("/var/tmp/prod.xml"),
                "<network><name>prod</name><forward mode='bridge'/><bridge name='br-prod'/></network>",
            )
            .unwrap();
            h.virsh("net-define /var/tmp/prod.xml");
            h.virsh("net-start prod");
            h.virsh("net-autostart prod");
        }
        hv.write_inventory();
        hv
    }

    fn guest_dir(&self) -> PathBuf {
        self.dir.path().join("guest")
    }

    /// The domain XML of a tiny guest named `name` with the disk `disk` under `images_dir`,
    /// address 10.126.0.`ip` on the `prod` network.
    pub fn domain_xml(&self, name: &str, disk: &str, ip: u8, firmware: Firmware) -> String {
        let guest = self.guest_dir();
        let (loader, kernel) = match firmware {
            Firmware::Bios => (String::new(), "vmlinux"),
            Firmware::Uefi => (
                format!(
                    "<loader readonly='yes' type='pflash'>{OVMF_CODE}</loader>\
                 <nvram template='{OVMF_VARS}'/>"
                ),
                "vmlinuz",
            ),
        };
        format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>160</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    {loader}
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 reprise.ip=10.126.0.{ip}/24</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <source network='prod'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'><source path='/var/log/libvirt/qemu/{name}.console'/><target port='0'/></serial>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
",
            kernel = guest.join(kernel).display(),
            initrd = guest.join("initrd.gz").display(),
        )
    }

    /// Defines the guest `name` on hv-main with a new `size` qcow2 disk
    /// `/var/lib/libvirt/images/NAME.qcow2` (its first `data_mib` MiB after the counter filled
    /// with a pattern, so that a first copy has data to send), and starts it.
    pub fn start_guest_on_main(&self, name: &str, ip: u8, firmware: Firmware, data_mib: u32) {
        let disk = format!("/var/lib/libvirt/images/{name}.qcow2");
        self.main
            .sh(&format!("qemu-img create -q -f qcow2 {disk} 256M"));
        if data_mib > 0 {
            self.main.sh(&format!(
                "qemu-io -c 'write -q -P 0x5a 1M {data_mib}M' {disk} >/dev/null"
            ));
        }
        let xml = self.domain_xml(name, &disk, ip, firmware);
        std::fs::write(self.main.path(&format!("/var/tmp/{name}.xml")), xml).unwrap();
        self.main.virsh(&format!("define /var/tmp/{name}.xml"));
        self.main.virsh(&format!("start {name}"));
    }

    /// The guest's health answer (`boot B now N`) at 10.126.0.`ip`, or None when it does not
    /// answer.
    pub fn health(&self, ip: u8) -> Option<(u64, u64)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.main.ns, "timeout", "3", "bash", "-c"])
            .arg(format!(
                "exec 3<>/dev/tcp/10.126.0.{ip}/{HEALTH_PORT} && cat <&3"
            ))
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("boot"), Some(b), Some("now"), Some(n)) => {
                Some((b.parse().ok()?, n.parse().ok()?))
            }
            _ => None,
        }
    }

    /// Asks the guest at 10.126.0.`ip` to write `count` 64 KiB blocks of `char` from block
    /// `first` of its disk, and waits until it has (synced).
    pub fn write_blocks(&self, ip: u8, first: u64, count: u64, char: char) {
        self.ask_to_write(
            ip,
            &format!("{first} {count} {char}"),
            Duration::from_secs(60),
        );
    }

    /// Asks the guest at 10.126.0.`ip` to write `count` 64 KiB blocks of random data, one
    /// every `stride` blocks from block `first` of its disk, and waits until it has (synced),
    /// for at most `within`.
    pub fn write_spread(&self, ip: u8, first: u64, count: u64, stride: u64, within: Duration) {
        self.ask_to_write(ip, &format!("{first} {count} R {stride}"), within);
    }

    /// Sends the guest's write port the line `request` (`FIRST COUNT CHAR [STRIDE]`) and
    /// waits for its answer.
    fn ask_to_write(&self, ip: u8, request: &str, within: Duration) {
        let mut words = request.split_whitespace();
        let (first, count) = (words.next().unwrap(), words.next().unwrap());
        let out = Command::new("ip")
            .args(["netns", "exec", &self.main.ns, "timeout"])
            .arg(within.as_secs().max(1).to_string())
            .args(["bash", "-c"])
            .arg(format!(
                "exec 3<>/dev/tcp/10.126.0.{ip}/7001 && echo '{request}' >&3 && cat <&3"
            ))
            .output()
            .expect("ip netns exec runs");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains(&format!("wrote {count} at {first}")),
            "the guest at 10.126.0.{ip} did not write its blocks: {said:?} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until the guest at 10.126.0.`ip` answers, with a counter of at least `min_now`.
    pub fn wait_healthy(&self, ip: u8, min_now: u64) -> (u64, u64) {
        let mut last = None;
        wait_for(
            &format!("the guest at 10.126.0.{ip} answering with a counter >= {min_now}"),
            Duration::from_secs(180),
            || {
                last = self.health(ip);
                last.is_some_and(|(_, now)| now >= min_now)
            },
        );
        last.unwrap()
    }

    /// `reprise ARGS` in hv-main's network namespace with this set-up's inventory, runbooks
    /// and state folder.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.main.ns,
            env!("CARGO_BIN_EXE_reprise"),
        ])
        .arg("--inventory")
        .arg(self.dir.path().join("inventory"))
        .arg("--runbooks")
        .arg(self.dir.path().join("runbooks"))
        .arg("--state-dir")
        .arg(self.dir.path().join("state"))
        .args(args)
        .current_dir(self.dir.path())
        .env_remove("RUST_LOG");
        cmd
    }

    /// `reprise ARGS`, waited for.
    pub fn reprise(&self, args: &[&str]) -> crate::common::Run {
        let out = self
            .command(args)
            .output()
            .expect("the reprise binary runs");
        crate::common::Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The events of the newest run's journal.
    pub fn journal(&self) -> Vec<serde_json::Value> {
        let runs = self.dir.path().join("state/runs");
        let Some(last) = crate::common::run_ids(runs.parent().unwrap()).pop() else {
            return Vec::new();
        };
        let last = runs.join(last);
        let text = std::fs::read_to_string(last.join("journal.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Writes `inventory/` and `runbooks/`: hv-main and hv-pra, the vms `app` (BIOS) and
    /// `uefi` (OVMF), a service on each, and runbooks for every mode.
    fn write_inventory(&self) {
        let keys = self.dir.path().join("keys");
        let inv = self.dir.path().join("inventory");
        let books = self.dir.path().join("runbooks");
        std::fs::create_dir_all(&inv).unwrap();
        std::fs::create_dir_all(&books).unwrap();
        std::fs::write(
            inv.join("sites.toml"),
            "[sites.main]\nrole = \"primary\"\nnetworks = { prod = \"prod\" }\n\n\
             [sites.pra]\nrole = \"recovery\"\nnetworks = { prod = \"prod\" }\n",
        )
        .unwrap();
        let host = |id: &str, address: &str, site: &str, vars: &str| {
            format!(
                "[hosts.{id}]\naddress = \"{address}\"\nport = 2222\nuser = \"root\"\n\
                 site = \"{site}\"\nrole = \"hypervisor\"\nidentity = \"{identity}\"\n\
                 known_hosts = \"{known}\"\nboot_folders = [\"{boot}\"]\n\
                 [hosts.{id}.vars]\n{vars}\n",
                identity = keys.join("client").display(),
                known = keys.join("known_hosts").display(),
                // The guests boot their kernel directly, from the test's own folder.
                boot = self.guest_dir().display(),
            )
        };
        std::fs::write(
            inv.join("hosts.toml"),
            format!(
                "{}\n{}",
                host(
                    "hv-main",
                    self.main.address,
                    "main",
                    "images_dir = \"/var/lib/libvirt/images\""
                ),
                host(
                    "hv-pra",
                    self.pra.address,
                    "pra",
                    // A drill network of its own name, in which hv-pra takes an address so
                    // that the drill's checks run there reach the copies.
                    "images_dir = \"/srv/replicas\"\noverlays_dir = \"/srv/overlays\"\n\
                     drill_network = \"pra-drill\"\ndrill_address = \"10.126.0.1/24\""
                ),
            ),
        )
        .unwrap();
        self.write_vms(None);
    }

    /// Gives the vm `vm` of the inventory the disks `disks` (its single disk by default).
    pub fn set_disks(&self, vm: &str, disks: &[&str]) {
        let path = self.dir.path().join("inventory/vms.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let one = format!("disks = [\"{vm}.qcow2\"]");
        assert!(text.contains(&one), "{text}");
        let list: Vec<String> = disks.iter().map(|d| format!("\"{d}\"")).collect();
        let text = text.replace(&one, &format!("disks = [{}]", list.join(", ")));
        std::fs::write(&path, text).unwrap();
    }

    /// Writes the vms, their services and runbooks: all of them, or `only` those named (what
    /// an administrator who recovers only those would have).
    pub fn write_vms(&self, only: Option<&[&str]>) {
        let inv = self.dir.path().join("inventory");
        let books = self.dir.path().join("runbooks");
        let mut vms = String::new();
        let mut services = String::new();
        let mut runbooks = String::new();
        for (name, ip) in [("app", 10), ("uefi", 11), ("cbt", 12)]
            .into_iter()
            .filter(|(name, _)| only.is_none_or(|o| o.contains(name)))
        {
            vms.push_str(&format!(
                "[vms.{name}]\ndriver = \"libvirt\"\nprimary = \"hv-main\"\n\
                 recovery = \"hv-pra\"\ndisks = [\"{name}.qcow2\"]\naddress = \"10.126.0.{ip}\"\n\
                 retention = 5\n{}\n",
                if name == "cbt" {
                    "changed_blocks = true\n"
                } else {
                    ""
                }
            ));
            services.push_str(&format!(
                "[services.{name}]\nkind = \"application\"\nrto = \"1h\"\nrpo = \"1h\"\n\
                 vm = \"{name}\"\n\n"
            ));
            runbooks.push_str(&runbook(name));
        }
        std::fs::write(inv.join("vms.toml"), vms).unwrap();
        std::fs::write(inv.join("services.toml"), services).unwrap();
        std::fs::write(books.join("vms.toml"), runbooks).unwrap();
    }
}

/// The runbooks of one vm, as an administrator writes them for the built-in libvirt driver:
/// the drill checks its copy from hv-pra (the drill network is isolated), the other modes from
/// the orchestrator.
fn runbook(vm: &str) -> String {
    let step = |mode: &str, body: &str| format!("[[{vm}.{mode}]]\n{body}\n\n");
    let health =
        "kind = \"check\"\nprobe = \"tcp\"\nport = 7000\ntimeout = \"4m\"\ninterval = \"1s\"";
    let mut s = String::new();
    s += &step(
        "drill",
        "id = \"start-copy\"\nkind = \"vm\"\naction = \"drill-start\"\ntimeout = \"5m\"",
    );
    s += &step(
        "drill",
        "id = \"show-copy\"\nkind = \"exec\"\nhost = \"hv-pra\"\n\
         run = \"virsh dumpxml drill-{{ vm.name }}\"\ntimeout = \"1m\"",
    );
    s += &step(
        "drill",
        "id = \"healthy\"\nkind = \"check\"\nprobe = \"command\"\nhost = \"hv-pra\"\n\
         run = \"bash -c 'cat </dev/tcp/$0/7000' {{ vm.address }}\"\ntimeout = \"4m\"\ninterval = \"1s\"",
    );
    s += &step(
        "drill",
        "id = \"remove-copy\"\nkind = \"vm\"\naction = \"drill-stop\"\nphase = \"cleanup\"\ntimeout = \"2m\"",
    );
    s += &step(
        "failover",
        "id = \"stop-primary\"\nkind = \"vm\"\naction = \"stop\"\non = \"primary\"\nneeds_primary = true\ntimeout = \"4m\"",
    );
    s += &step(
        "failover",
        "id = \"no-autostart-primary\"\nkind = \"vm\"\naction = \"autostart-off\"\non = \"primary\"\nneeds_primary = true\ntimeout = \"1m\"",
    );
    s += &step(
        "failover",
        &format!(
            "id = \"final-sync\"\nkind = \"replicate\"\nvm = \"{vm}\"\nneeds_primary = true\ntimeout = \"10m\""
        ),
    );
    s += &step(
        "failover",
        "id = \"start\"\nkind = \"vm\"\naction = \"start\"\ntimeout = \"4m\"",
    );
    s += &step("failover", &format!("id = \"healthy\"\n{health}"));
    s += &step(
        "restore",
        "id = \"start\"\nkind = \"vm\"\naction = \"start\"\ntimeout = \"4m\"",
    );
    s += &step(
        "failback",
        "id = \"stop-recovery\"\nkind = \"vm\"\naction = \"stop\"\non = \"recovery\"\ntimeout = \"4m\"",
    );
    s += &step(
        "failback",
        "id = \"no-autostart-recovery\"\nkind = \"vm\"\naction = \"autostart-off\"\non = \"recovery\"\ntimeout = \"1m\"",
    );
    s += &step(
        "failback",
        &format!("id = \"sync-back\"\nkind = \"replicate\"\nvm = \"{vm}\"\ntimeout = \"10m\""),
    );
    s += &step(
        "failback",
        "id = \"start-primary\"\nkind = \"vm\"\naction = \"start\"\ntimeout = \"4m\"",
    );
    s += &step("failback", &format!("id = \"healthy\"\n{health}"));
    s
}

/// Removes the namespaces it names when dropped (a set-up that failed half-way).
struct NsGuard(Vec<String>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            remove_namespace(ns);
        }
    }
}

impl Host {
    /// Starts the host: its folders, sshd configuration, then `host.sh` (mounts, libvirtd)
    /// which execs sshd; waits until libvirtd answers and sshd accepts.
    fn start(id: &'static str, ns: &str, address: &'static str, top: &Path) -> Host {
        let dir = top.join(id);
        let sshd_dir = dir.join("sshd");
        std::fs::create_dir_all(&sshd_dir).unwrap();
        std::fs::create_dir_all(dir.join("root/etc-libvirt")).unwrap();
        std::fs::write(
            dir.join("root/etc-libvirt/libvirtd.conf"),
            "log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
        )
        .unwrap();
        // QEMU runs as root without cgroups, private /dev or virtlogd: nothing of the machine's
        // is used but the emulator itself.
        std::fs::write(
            dir.join("root/etc-libvirt/qemu.conf"),
            "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
             security_driver = \"none\"\ncgroup_controllers = [ ]\nnamespaces = [ ]\n\
             stdio_handler = \"file\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("host.sh"), include_str!("host.sh")).unwrap();
        let host_key = sshd_dir.join("host");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key));
        std::fs::copy(
            top.join("keys/client.pub"),
            sshd_dir.join("authorized_keys"),
        )
        .unwrap();
        std::fs::write(
            sshd_dir.join("sshd_config"),
            format!(
                "ListenAddress {address}:2222\nHostKey {d}/host\nPidFile none\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nStrictModes no\nUsePAM no\nLogLevel VERBOSE\n",
                d = sshd_dir.display()
            ),
        )
        .unwrap();
        // libvirtd probes QEMU's capabilities when it starts (seconds under TCG) and caches them:
        // every host of this test process reuses the first one's cache (libvirt checks it
        // against the emulator's and its own files, which are the same here).
        let caps = dir.join("root/var/cache/libvirt/qemu/capabilities");
        std::fs::create_dir_all(&caps).unwrap();
        copy_files(&caps_cache(), &caps);
        let log = std::fs::File::create(dir.join("host.log")).unwrap();
        let sshd = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "unshare",
                "-m",
                "--propagation",
                "private",
                "bash",
            ])
            .arg(dir.join("host.sh"))
            .arg(dir.join("root"))
            .args(["/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(sshd_dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {id}: {e}"));
        let mut host = Host {
            id,
            ns: ns.to_string(),
            dir,
            address,
            sshd,
        };
        let log_path = host.dir.join("host.log");
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(status)) = host.sshd.try_wait() {
                panic!(
                    "the real-hypervisor tests cannot run: {id} (unshare -m, libvirtd, sshd) \
                     exited ({status}): {}",
                    log()
                );
            }
            let ready = host
                .sh_output(&format!(
                    "virsh version >/dev/null 2>&1 && exec 3<>/dev/tcp/{address}/2222"
                ))
                .status
                .success();
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                let libvirt_log =
                    std::fs::read_to_string(host.path("/var/log/libvirt/libvirtd.log"))
                        .unwrap_or_default();
                let _ = host.sshd.kill();
                panic!(
                    "{id}: libvirtd or sshd not ready within 90s: {}\nlibvirtd.log: {libvirt_log}",
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if std::fs::read_dir(caps_cache()).map_or(true, |mut d| d.next().is_none()) {
            copy_files(&caps, &caps_cache());
        }
        host
    }
}

/// This test process's copy of libvirt's QEMU capabilities cache (removed with the leftovers
/// of dead test processes).
fn caps_cache() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{NS_PREFIX}{}-qemu-caps", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies the files of `from` into `to` (best effort: a cache).
fn copy_files(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).into_iter().flatten().flatten() {
        let _ = std::fs::copy(e.path(), to.join(e.file_name()));
    }
}

impl Drop for Hv {
    fn drop(&mut self) {
        for h in [&self.main, &self.pra] {
            remove_namespace(&h.ns);
        }
        let _ = self.main.sshd.wait();
        let _ = self.pra.sshd.wait();
    }
}

/// The guest's kernel and initramfs in `dir` (the kernel copied out of the machine's cache,
/// which the hosts' private `/var` hides).
fn build_guest(dir: &Path) {
    let tree = dir.join("initramfs");
    for d in ["bin", "lib/modules", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    for m in MODULES {
        std::fs::copy(
            Path::new(KERNEL_DIR)
                .join("modules")
                .join(format!("{m}.ko")),
            tree.join("lib/modules").join(format!("{m}.ko")),
        )
        .unwrap();
    }
    std::fs::write(tree.join("init"), include_str!("init.sh")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(tree.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    // vmlinux (uncompressed, booted through its PVH entry) for BIOS guests: decompressing the
    // bzImage under TCG takes most of their boot; OVMF loads only the bzImage (vmlinuz).
    for file in ["vmlinuz", "vmlinux"] {
        let from = Path::new(KERNEL_DIR).join(file);
        if std::fs::hard_link(&from, dir.join(file)).is_err() {
            std::fs::copy(&from, dir.join(file)).unwrap();
        }
    }
    run(Command::new("bash")
        .arg("-c")
        .arg("cd \"$1\" && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1 > \"$2\"")
        .arg("-")
        .arg(&tree)
        .arg(dir.join("initrd.gz")));
}
