//! The built-in `proxmox` driver, unchanged, on the lab with its `qm` stand-in (which follows
//! qm's semantics: vmids, configuration files under the lab's /etc/pve/qemu-server, volumes
//! of a directory storage, a running vm a real process reading its disks). The small fixture
//! as a Proxmox inventory: disks in Proxmox's layout (`101/vm-101-disk-0.qcow2`), two NICs per
//! vm, the guest agent on, and a planned failover that shuts down both vms on the primary.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{NetLock, Run, mini_copy};

/// The fixture as a Proxmox site, in a temporary folder.
fn proxmox_copy() -> tempfile::TempDir {
    let dir = mini_copy();
    let edit = |file: &str, f: &dyn Fn(String) -> String| {
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, f(text)).unwrap();
    };
    edit("inventory/vms.toml", &|s| {
        s.replace("driver = \"libvirt\"", "driver = \"proxmox\"")
            .replace(
                "disks = [\"db.qcow2\"]",
                "disks = [\"101/vm-101-disk-0.qcow2\"]\nvmid = 101",
            )
            .replace(
                "disks = [\"app-system.qcow2\", \"app-data.qcow2\"]",
                "disks = [\"102/vm-102-disk-0.qcow2\", \"102/vm-102-disk-1.qcow2\"]\nvmid = 102",
            )
    });
    edit("inventory/hosts.toml", &|s| {
        s.replace(
            "images_dir = \"/var/lib/libvirt/images\"",
            "images_dir = \"/var/lib/vz/images\"",
        )
        .replace(
            "images_dir = \"/srv/replicas\"",
            "images_dir = \"/var/lib/vz/images\"",
        )
    });
    // A failback shuts the recovery copies down first (then copies back and starts).
    edit("runbooks/db.toml", &|s| {
        s.replacen(
            "[[db.failback]]\nid = \"sync-back\"",
            "[[db.failback]]\nid = \"stop-recovery\"\nkind = \"vm\"\naction = \"stop\"\non = \"recovery\"\n\n[[db.failback]]\nid = \"sync-back\"",
            1,
        )
    });
    edit("runbooks/app.toml", &|s| {
        s.replacen(
            "[[app.failback]]\nid = \"start\"",
            "[[app.failback]]\nid = \"stop-recovery\"\nkind = \"vm\"\naction = \"stop\"\non = \"recovery\"\n\n[[app.failback]]\nid = \"start\"",
            1,
        )
    });
    edit("runbooks/app.toml", &|s| {
        s.replacen(
            "[[app.failover]]\nid = \"start\"",
            "[[app.failover]]\nid = \"stop-primary\"\nkind = \"vm\"\naction = \"stop\"\non = \"primary\"\nneeds_primary = true\n\n[[app.failover]]\nid = \"start\"",
            1,
        )
    });
    dir
}

struct Lab {
    dir: tempfile::TempDir,
    _net: NetLock,
}

impl Lab {
    fn up(net: u8) -> Lab {
        let lock = NetLock::take(net);
        let dir = proxmox_copy();
        let lab = Lab { dir, _net: lock };
        let valid = lab.reprise(&["validate"]);
        assert_eq!(valid.code, 0, "{valid:?}");
        let up = lab.reprise(&[
            "lab",
            "up",
            "--lab-dir",
            lab.lab().to_str().unwrap(),
            "--net",
            &net.to_string(),
        ]);
        assert_eq!(up.code, 0, "{up:?}");
        lab
    }

    fn lab(&self) -> PathBuf {
        self.dir.path().join("lab")
    }

    fn reprise(&self, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_reprise"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env("FW_TOKEN", "lab-token")
            .output()
            .expect("the reprise binary runs");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    /// A command under the lab's overlay.
    fn with(&self, args: &[&str]) -> Run {
        let overlay = self.lab().join("overlay.toml");
        let state = self.dir.path().join("state");
        let mut all = vec![
            "--overlay",
            overlay.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        self.reprise(&all)
    }

    fn root(&self, host: &str) -> PathBuf {
        self.lab().join("hosts").join(host).join("root")
    }

    fn conf_path(&self, host: &str, vmid: u32) -> PathBuf {
        self.root(host)
            .join("etc/pve/qemu-server")
            .join(format!("{vmid}.conf"))
    }

    fn conf(&self, host: &str, vmid: u32) -> String {
        let path = self.conf_path(host, vmid);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn images(&self, host: &str) -> PathBuf {
        self.root(host).join("var/lib/vz/images")
    }

    /// The `qm` calls a host recorded, one per line (without their time).
    fn qm_calls(&self, host: &str) -> Vec<String> {
        let log = std::fs::read_to_string(self.lab().join("hosts").join(host).join("calls.log"))
            .unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                l.split_once(' ')
                    .map(|(_, call)| call.trim_end().to_string())
            })
            .filter(|c| c.starts_with("qm "))
            .collect()
    }

    fn status(&self) -> String {
        let status = self.reprise(&["lab", "status", "--lab-dir", self.lab().to_str().unwrap()]);
        assert_eq!(status.code, 0, "{status:?}");
        status.stdout
    }

    /// The journal of the last run, readably.
    fn shown(&self) -> String {
        let shown = self.with(&["show", "latest"]);
        assert_eq!(shown.code, 0, "{shown:?}");
        shown.stdout
    }

    fn frozen(&self, host: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.root(host).join("var/lib/lab/qm"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.reprise(&["lab", "down", "--lab-dir", self.lab().to_str().unwrap()]);
    }
}

fn vm_line<'a>(status: &'a str, vm: &str) -> &'a str {
    status
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{vm} ")))
        .unwrap_or_else(|| panic!("no line for {vm} in {status}"))
}

fn digest(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_proxmox_drill_then_a_planned_failover_and_failback_on_the_lab() {
    let lab = Lab::up(170);
    // The first replication carried each vm's configuration beside its copies.
    let kept = std::fs::read_to_string(lab.images("hv2").join("101/reprise-vm.conf")).unwrap();
    assert_eq!(kept, lab.conf("hv1", 101));
    assert!(!lab.conf_path("hv2", 101).exists());

    // A running vm is copied between a guest-agent freeze and a thaw.
    let replicated = lab.with(&["replicate"]);
    assert_eq!(replicated.code, 0, "{replicated:?}");
    for expected in [
        "db: vmid 101: guest filesystems frozen through the guest agent",
        "db: snapshot merged back",
        "app: vmid 102: guest filesystems frozen through the guest agent",
        "db: definition captured on hv1 and kept on hv2",
    ] {
        assert!(replicated.stdout.contains(expected), "{replicated:?}");
    }
    let calls = lab.qm_calls("hv1");
    let freeze = calls
        .iter()
        .position(|c| c == "qm guest cmd 101 fsfreeze-freeze")
        .expect("a freeze");
    let thaw = calls
        .iter()
        .position(|c| c == "qm guest cmd 101 fsfreeze-thaw")
        .expect("a thaw");
    assert!(freeze < thaw, "{calls:?}");
    assert!(lab.frozen("hv1").is_empty(), "{:?}", lab.frozen("hv1"));

    // A drill: overlays on the copies (left as they were), every NIC on vmbr-drill.
    let copy = lab.images("hv2").join("102/vm-102-disk-1.qcow2");
    let before = digest(&copy);
    let drill = lab.with(&["drill", "--no-prompt"]);
    assert_eq!(drill.code, 0, "{drill:?}");
    let created: Vec<String> = lab
        .qm_calls("hv2")
        .into_iter()
        .filter(|c| c.starts_with("qm create 9001"))
        .collect();
    assert_eq!(created.len(), 2, "{created:?}");
    let app = created
        .iter()
        .find(|c| c.starts_with("qm create 900102 "))
        .unwrap();
    for expected in [
        "--net0 virtio=BC:24:11:00:66:01,bridge=vmbr-drill ",
        "--net1 virtio=BC:24:11:00:66:02,bridge=vmbr-drill ",
        "--scsi0 local:900102/vm-900102-disk-0.qcow2,iothread=1,size=64M ",
        "--scsi1 local:900102/vm-900102-disk-1.qcow2,iothread=1,size=64M ",
        "--name drill-app ",
        "--tags reprise-drill ",
        "--onboot 0",
    ] {
        assert!(app.contains(expected), "{expected} in {app}");
    }
    for absent in ["vmbr0", "vmbr1", "tag=", "--vmgenid", "onboot 1"] {
        assert!(!app.contains(absent), "{absent} in {app}");
    }
    assert_eq!(digest(&copy), before, "the drill wrote into the copy");
    for id in [900101, 900102] {
        assert!(!lab.conf_path("hv2", id).exists());
        assert!(!lab.images("hv2").join(id.to_string()).exists());
    }

    // A planned failover: app ignores the power button (no ACPI, no agent) and is forced off
    // after its own shutdown timeout; each vm is defined on hv2 from its replicated configuration.
    let app_conf = lab.conf_path("hv1", 102);
    let text = lab
        .conf("hv1", 102)
        .replace("agent: 1\n", "agent: 0\nacpi: 0\nstartup: order=2,down=2\n");
    std::fs::write(&app_conf, text).unwrap();
    let failover = lab.with(&["failover", "--yes", "--no-prompt"]);
    assert_eq!(failover.code, 0, "{failover:?}");
    let shown = lab.shown();
    for expected in [
        "vmid 102 did not shut down within its shutdown timeout",
        "vmid 102 was FORCED off",
        "vmid 101: defined on this node from the configuration replicated with its disks",
        "vmid 102: defined on this node from the configuration replicated with its disks",
        "definition captured on hv1 and kept on hv2",
    ] {
        assert!(shown.contains(expected), "{expected} in {shown}");
    }
    // app has no final sync: it is defined as replicated last (before its change above).
    let defined = lab.conf("hv2", 102);
    for expected in [
        "name: app\n",
        "agent: 1\n",
        "scsi1: local:102/vm-102-disk-1.qcow2,iothread=1,size=64M\n",
        "net1: virtio=BC:24:11:00:66:02,bridge=vmbr1,tag=20\n",
        "onboot: 0\n",
    ] {
        assert!(defined.contains(expected), "{expected} in {defined}");
    }
    assert!(!defined.contains("acpi"), "{defined}");
    assert!(
        lab.conf("hv2", 101)
            .contains("scsi0: local:101/vm-101-disk-0.qcow2"),
        "{}",
        lab.conf("hv2", 101)
    );
    let status = lab.status();
    for vm in ["db", "app"] {
        assert!(
            vm_line(&status, vm).ends_with(&format!(
                "recovery (hv2 127.170.2.{})",
                if vm == "db" { 10 } else { 11 }
            )),
            "{status}"
        );
    }

    let failback = lab.with(&["failback", "--yes", "--no-prompt"]);
    assert_eq!(failback.code, 0, "{failback:?}");
    let status = lab.status();
    for (vm, n) in [("db", 10), ("app", 11)] {
        assert!(
            vm_line(&status, vm).ends_with(&format!("primary (hv1 127.170.1.{n})")),
            "{status}"
        );
    }

    // db changes on the primary (more memory, one NIC less); the next failover's final sync
    // carries that, and the vm defined on hv2 is updated to match.
    let text = lab
        .conf("hv1", 101)
        .replace("memory: 512\n", "memory: 1024\n")
        .lines()
        .filter(|l| !l.starts_with("net1:"))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    std::fs::write(lab.conf_path("hv1", 101), text).unwrap();
    // app's agent is back; the night's replication gives both vms points again (a failback
    // ended their history).
    let text = lab
        .conf("hv1", 102)
        .replace("agent: 0\nacpi: 0\n", "agent: 1\n");
    std::fs::write(lab.conf_path("hv1", 102), text).unwrap();
    let replicated = lab.with(&["replicate"]);
    assert_eq!(replicated.code, 0, "{replicated:?}");
    let again = lab.with(&["failover", "--yes", "--no-prompt"]);
    assert_eq!(again.code, 0, "{again:?}");
    let shown = lab.shown();
    assert!(
        shown.contains(
            "vmid 101: configuration updated from the one replicated with its disks (removed: net1)"
        ),
        "{shown}"
    );
    let updated = lab.conf("hv2", 101);
    assert!(updated.contains("memory: 1024\n"), "{updated}");
    assert!(!updated.contains("net1"), "{updated}");
}

#[test]
fn an_emergency_proxmox_failover_defines_the_vms_from_their_replicated_configuration() {
    let lab = Lab::up(171);
    let primary_calls = lab.qm_calls("hv1").len();
    let failover = lab.with(&["failover", "--emergency", "--yes", "--no-prompt"]);
    assert_eq!(failover.code, 0, "{failover:?}");
    let shown = lab.shown();
    assert!(
        shown.contains(
            "vmid 101: defined on this node from the configuration replicated with its disks"
        ),
        "{shown}"
    );
    // The primary was left alone.
    assert_eq!(lab.qm_calls("hv1").len(), primary_calls);
    let defined = lab.conf("hv2", 101);
    assert!(
        defined.contains("scsi0: local:101/vm-101-disk-0.qcow2"),
        "{defined}"
    );
    let status = lab.status();
    assert!(vm_line(&status, "db").contains("recovery (hv2"), "{status}");

    // The primary came back with its vms running; their copies are in use on hv2, so a
    // replication is refused after the guests were frozen: they are thawed all the same.
    let replicated = lab.with(&["replicate"]);
    assert_eq!(replicated.code, 1, "{replicated:?}");
    for vm in ["db: vmid 101", "app: vmid 102"] {
        assert!(
            replicated.stdout.contains(&format!(
                "{vm}: guest filesystems frozen through the guest agent"
            )),
            "{replicated:?}"
        );
        assert!(
            replicated
                .stdout
                .contains(&format!("{vm}: guest filesystems thawed")),
            "{replicated:?}"
        );
    }
    assert!(lab.frozen("hv1").is_empty(), "{:?}", lab.frozen("hv1"));
}

/// The plans of a Proxmox site, and what `replicate` would run, as the operator sees them.
#[test]
fn the_plans_of_a_proxmox_site() {
    let dir = proxmox_copy();
    let run = |args: &[&str]| {
        let out = crate::common::reprise(dir.path(), args);
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout
    };
    insta::assert_snapshot!("proxmox_plan_drill", run(&["plan", "drill"]));
    insta::assert_snapshot!("proxmox_plan_failover", run(&["plan", "failover"]));
    insta::assert_snapshot!(
        "proxmox_replicate_dry_run",
        run(&["replicate", "--dry-run", "--service", "db"])
    );
}

#[test]
fn a_proxmox_vm_whose_guest_cannot_be_frozen_is_not_copied_and_says_why() {
    let lab = Lab::up(172);
    let points = |vm: &str| {
        let out = lab.with(&["points", vm, "--json"]);
        assert_eq!(out.code, 0, "{out:?}");
        serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap()
    };
    let before = points("db");
    let conf = lab.conf_path("hv1", 101);
    let text = lab.conf("hv1", 101).replace("agent: 1\n", "");
    std::fs::write(&conf, text).unwrap();
    let replicated = lab.with(&["replicate"]);
    assert_eq!(replicated.code, 1, "{replicated:?}");
    for expected in [
        "vmid 101 runs and its guest filesystems could not be frozen",
        "No QEMU guest agent configured",
        "not replicated, its copy is as it was",
    ] {
        assert!(replicated.stderr.contains(expected), "{replicated:?}");
    }
    assert!(
        replicated
            .stdout
            .contains("app: vmid 102: guest filesystems thawed"),
        "{replicated:?}"
    );
    assert_eq!(
        points("db"),
        before,
        "a point was made of a vm read unfrozen"
    );

    // A replication killed while the guest was frozen: `check` says so, the next replication
    // thaws it before reading the disks.
    std::fs::write(&conf, format!("agent: 1\n{}", lab.conf("hv1", 101))).unwrap();
    let flag = lab.root("hv1").join("var/lib/lab/qm/101.frozen");
    std::fs::create_dir_all(flag.parent().unwrap()).unwrap();
    std::fs::write(&flag, "").unwrap();
    let check = lab.with(&["check"]);
    assert_eq!(check.code, 7, "{check:?}");
    assert!(
        check
            .stdout
            .contains("guest filesystems of vmid 101 frozen"),
        "{check:?}"
    );
    let replicated = lab.with(&["replicate"]);
    assert_eq!(replicated.code, 0, "{replicated:?}");
    assert!(
        replicated
            .stdout
            .contains("merged back first (guest filesystems of vmid 101 frozen"),
        "{replicated:?}"
    );
    assert!(!flag.exists());
    assert_ne!(points("db"), before);
}

#[test]
fn a_proxmox_drill_cleanup_reports_what_it_could_not_remove() {
    let lab = Lab::up(173);
    // Another vm already holds the drill copy's id on the recovery node.
    let foreign = lab.conf_path("hv2", 900101);
    std::fs::write(
        &foreign,
        "name: accounting\nmemory: 1024\nscsi0: local:900101/vm-900101-disk-0.qcow2\n",
    )
    .unwrap();
    let its_disk = lab.images("hv2").join("900101/vm-900101-disk-0.qcow2");
    std::fs::create_dir_all(its_disk.parent().unwrap()).unwrap();
    std::fs::write(&its_disk, "the accounting vm's disk").unwrap();
    let drill = lab.with(&["drill", "--no-prompt"]);
    assert_eq!(drill.code, 1, "{drill:?}");
    let shown = lab.shown();
    for expected in [
        "vmid 900101, the drill copy of vmid 101, exists already on this node",
        "vmid 900101 is not the drill copy of vmid 101 (its name or tags differ): left alone, with its files",
    ] {
        assert!(shown.contains(expected), "{expected} in {shown}");
    }
    // It is still there, untouched. app waited for db, so it has no copy: its cleanup says so.
    assert!(
        std::fs::read_to_string(&foreign)
            .unwrap()
            .starts_with("name: accounting\n")
    );
    assert_eq!(
        std::fs::read_to_string(&its_disk).unwrap(),
        "the accounting vm's disk"
    );
    assert!(
        shown.contains("vmid 900102 is not defined: no drill copy to remove"),
        "{shown}"
    );
    assert!(
        !lab.qm_calls("hv2")
            .iter()
            .any(|c| c.starts_with("qm destroy 900101"))
    );
}

impl Lab {
    /// The item of `reprise check --json` in `area` about `subject`.
    fn check_item(&self, area: &str, subject: &str) -> serde_json::Value {
        let run = self.with(&["check", "--json"]);
        let r: serde_json::Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("check --json: {e}: {run:?}"));
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["area"] == area && i["subject"] == subject)
            .cloned()
            .unwrap_or_else(|| panic!("no {area} {subject} in {}", run.stdout))
    }

    /// Sets `drill_network` of host hv2 in the inventory.
    fn drill_network(&self, bridge: &str) {
        let path = self.dir.path().join("inventory/hosts.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text
            .lines()
            .filter(|l| !l.starts_with("drill_network = "))
            .map(|l| {
                if l == "[hosts.hv2.vars]" {
                    format!("{l}\ndrill_network = \"{bridge}\"\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect::<String>();
        std::fs::write(&path, text).unwrap();
    }
}

/// A drill puts every NIC of its copies on the recovery node's own drill bridge
/// (`drill_network`, default vmbr-drill). That bridge must exist with no port but vms': a
/// production bridge (a physical NIC on it) or a missing one is refused by check and by the
/// drill, before anything is made.
#[test]
fn a_proxmox_drill_uses_the_recovery_nodes_drill_bridge_and_refuses_one_that_reaches_production() {
    let lab = Lab::up(174);
    let net = lab.check_item("network", "hv2 (vmbr-drill)");
    assert_eq!(net["status"], "ok", "{net}");
    assert!(
        net["detail"]
            .as_str()
            .unwrap()
            .contains("bridge vmbr-drill exists, with no port but vms'"),
        "{net}"
    );

    // vmbr0 carries production (eno1 is its port).
    lab.drill_network("vmbr0");
    let net = lab.check_item("network", "hv2 (vmbr0)");
    assert_eq!(net["status"], "failed", "{net}");
    assert!(
        net["detail"]
            .as_str()
            .unwrap()
            .contains("bridge vmbr0 has ports that are not vms' (eno1): a drill copy on it could reach production"),
        "{net}"
    );
    let check = lab.with(&["check"]);
    assert_eq!(check.code, 7, "{check:?}");
    let drill = lab.with(&["drill", "--no-prompt"]);
    assert_eq!(drill.code, 1, "{drill:?}");
    let shown = lab.shown();
    assert!(
        shown.contains("bridge vmbr0 has ports that are not vms' (eno1)"),
        "{shown}"
    );
    // A bridge the node does not have.
    lab.drill_network("vmbr9");
    let net = lab.check_item("network", "hv2 (vmbr9)");
    assert_eq!(net["status"], "failed", "{net}");
    assert!(
        net["detail"]
            .as_str()
            .unwrap()
            .contains("bridge vmbr9 does not exist on this node"),
        "{net}"
    );
    assert!(
        !lab.qm_calls("hv2")
            .iter()
            .any(|c| c.starts_with("qm create 9001")),
        "{:?}",
        lab.qm_calls("hv2")
    );
    assert!(!lab.images("hv2").join("900101").exists());

    // An isolated bridge of the node's own: every NIC of the copies goes there.
    let interfaces = lab.root("hv2").join("etc/network/interfaces");
    let mut text = std::fs::read_to_string(&interfaces).unwrap();
    text.push_str("auto vmbr9\niface vmbr9 inet manual\n\tbridge-ports none\n\tbridge-stp off\n");
    std::fs::write(&interfaces, text).unwrap();
    let net = lab.check_item("network", "hv2 (vmbr9)");
    assert_eq!(net["status"], "ok", "{net}");
    let drill = lab.with(&["drill", "--no-prompt"]);
    assert_eq!(drill.code, 0, "{drill:?}");
    let created: Vec<String> = lab
        .qm_calls("hv2")
        .into_iter()
        .filter(|c| c.starts_with("qm create 9001"))
        .collect();
    assert_eq!(created.len(), 2, "{created:?}");
    for c in &created {
        assert!(c.contains(",bridge=vmbr9 --net1 "), "{c}");
        assert!(c.contains(",bridge=vmbr9 "), "{c}");
        for absent in ["vmbr0", "vmbr1", "vmbr-drill"] {
            assert!(!c.contains(absent), "{absent} in {c}");
        }
    }
    assert!(
        lab.shown().contains(
            "vmid 900101 (drill-db): overlays on the copies of vmid 101, every NIC on vmbr9"
        ),
        "{}",
        lab.shown()
    );
}
