//! The built-in `proxmox` driver, unchanged, on the lab with its `qm` stand-in (which follows
//! qm's semantics: vmids, configuration files under the lab's /etc/pve/qemu-server, volumes
//! of a directory storage, a running vm a real process reading its disks). The small fixture
//! as a Proxmox inventory: disks in Proxmox's layout (`101/vm-101-disk-0.qcow2`), two NICs per
//! vm, the guest agent on, and a planned failover that shuts down both vms on the primary
//! (db copied while it runs, under its freeze, then again once stopped).

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
        // Both nodes have the same bridges: a vm defined on either keeps its NICs' bridges.
        .replace(
            "role = \"hypervisor\"\n",
            "role = \"hypervisor\"\nnetworks = { vmbr0 = \"vmbr0\", vmbr1 = \"vmbr1\" }\n",
        )
    });
    // A planned failover copies db while it runs (under its freeze, to shorten the last
    // copy), then stops it and copies what it wrote since.
    edit("runbooks/db.toml", &|s| {
        s.replacen(
            "[[db.failover]]\nid = \"stop-primary\"",
            "[[db.failover]]\nid = \"pre-sync\"\nkind = \"replicate\"\nvm = \"db\"\nneeds_primary = true\nexpected = \"10m\"\n\n[[db.failover]]\nid = \"stop-primary\"",
            1,
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
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "frozen"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The configuration vmid `id` last started with on `host` (the lab's record).
    fn started(&self, host: &str, id: u32) -> String {
        let path = self
            .root(host)
            .join("var/lib/lab/qm/started")
            .join(format!("{id}.conf"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The points of `vm` (as `reprise points --json` gives them) whose ids are not in `before`.
    fn points_since(&self, vm: &str, before: &[String]) -> Vec<serde_json::Value> {
        let out = self.with(&["points", vm, "--json"]);
        let points: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        let all = points.as_array().cloned().unwrap_or_default();
        all.into_iter()
            .filter(|p| !before.iter().any(|b| p["id"] == b.as_str()))
            .collect()
    }

    /// The ids of the points of `vm`, oldest first.
    fn point_ids(&self, vm: &str) -> Vec<String> {
        let out = self.with(&["points", vm, "--json"]);
        assert_eq!(out.code, 0, "{out:?}");
        let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
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
    // The first replication carried each vm's configuration with its point; nothing is
    // defined on the recovery node, and nothing is kept beside the copies.
    assert!(!lab.conf_path("hv2", 101).exists());
    assert!(!lab.images("hv2").join("101/reprise-vm.conf").exists());

    // A running vm is copied between a guest-agent freeze and a thaw.
    let replicated = lab.with(&["replicate"]);
    assert_eq!(replicated.code, 0, "{replicated:?}");
    for expected in [
        "db: vmid 101: guest filesystems frozen through the guest agent",
        "db: snapshot merged back",
        "app: vmid 102: guest filesystems frozen through the guest agent",
        "db: definition captured on hv1 (BLAKE3 ",
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
    // No vm is created by qm: reprise defined each copy from its point's configuration.
    assert!(
        !lab.qm_calls("hv2")
            .iter()
            .any(|c| c.starts_with("qm create")),
        "{:?}",
        lab.qm_calls("hv2")
    );
    let app = lab.started("hv2", 900102);
    for expected in [
        ",bridge=vmbr-drill\n",
        "scsi0: local:900102/vm-900102-disk-0.qcow2,iothread=1,size=64M\n",
        "scsi1: local:900102/vm-900102-disk-1.qcow2,iothread=1,size=64M\n",
        "name: drill-app\n",
        "tags: reprise-drill\n",
    ] {
        assert!(app.contains(expected), "{expected} in {app}");
    }
    for absent in ["vmbr0", "vmbr1", "tag=", "BC:24:11", "0f9d1d4e", "onboot"] {
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
        "db defined on hv2 from the definition of point ",
        "vmid 101 defined (",
        "app defined on hv2 from the definition of point ",
        "vmid 102 defined (",
        "definition captured on hv1 (BLAKE3 ",
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
    ] {
        assert!(defined.contains(expected), "{expected} in {defined}");
    }
    assert!(!defined.contains("acpi"), "{defined}");
    assert!(!defined.contains("onboot"), "{defined}");
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

    // app's failback copies nothing back: what it wrote on hv2 is given up on purpose, its
    // copies released first (else the failback refuses, before it stops anything, to start it
    // on its disks of before).
    let refused = lab.with(&["failback", "--yes", "--no-prompt"]);
    assert_eq!(refused.code, 7, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("vm app ran on its recovery copies on hv2 since a failover"),
        "{refused:?}"
    );
    let released = lab.with(&["release", "app"]);
    assert_eq!(released.code, 0, "{released:?}");
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
    assert!(shown.contains("vmid 101 updated ("), "{shown}");
    let updated = lab.conf("hv2", 101);
    assert!(updated.contains("memory: 1024\n"), "{updated}");
    assert!(!updated.contains("net1"), "{updated}");
}

#[test]
fn an_emergency_proxmox_failover_defines_the_vms_from_their_replicated_configuration() {
    let lab = Lab::up(171);
    primary_lost(&lab);
    let primary_calls = lab.qm_calls("hv1").len();
    let failover = lab.with(&["failover", "--emergency", "--yes", "--no-prompt"]);
    assert_eq!(failover.code, 0, "{failover:?}");
    let shown = lab.shown();
    assert!(shown.contains("vmid 101 defined ("), "{shown}");
    // The primary was left alone: only asked (by the health checks) whether its vms run.
    let asked = qm_calls_after(&lab, "hv1", primary_calls);
    assert!(
        asked.iter().all(|c| c.starts_with("qm status ")),
        "{asked:?}"
    );
    let defined = lab.conf("hv2", 101);
    assert!(
        defined.contains("scsi0: local:101/vm-101-disk-0.qcow2"),
        "{defined}"
    );
    let status = lab.status();
    assert!(vm_line(&status, "db").contains("recovery (hv2"), "{status}");

    // The primary came back with its vms running; their copies are in use on hv2, so a
    // replication is refused after the guests were frozen: they are thawed all the same.
    for vmid in ["101", "102"] {
        let run = qm(&lab, "hv1", &["start", vmid]);
        assert_eq!(run.code, 0, "qm start {vmid}: {run:?}");
    }
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
        let out =
            crate::common::reprise_with_env(dir.path(), args, &[("REPRISE_SSH_CONFIG", "none")]);
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

/// Makes the qcow2 `disk` `size` bytes (`256M`; the lab's are 64M) and fills it with data,
/// so that its read lasts.
fn fill(disk: &Path, size: &str) {
    let run = |cmd: &str, args: &[&str]| {
        let out = Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{cmd} (qemu-utils) is needed by this test: {e}"));
        assert!(out.status.success(), "{cmd}: {out:?}");
    };
    let path = disk.to_str().unwrap();
    run("qemu-img", &["resize", "-q", "-f", "qcow2", path, size]);
    let write = format!("write -P 0x3c 0 {size}");
    run("qemu-io", &["-f", "qcow2", "-c", &write, path]);
}

/// Proxmox freezes the guest's filesystems, not its disks: swap still writes them while
/// they are read, and the driver says so (`replicate_reads_live`): the copy is made all the
/// same. A vm of a driver that does not say so is refused (tests/it/lab.rs).
#[test]
fn a_running_proxmox_vm_whose_disk_is_written_under_its_freeze_is_copied() {
    let lab = Lab::up(175);
    let disk = lab.images("hv1").join("101/vm-101-disk-0.qcow2");
    fill(&disk, "64M");
    let before = lab.point_ids("db");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // point ids are per second
    let writer = crate::common::Rewriter::start(&disk);
    let replicated = lab.with(&["replicate", "--service", "db"]);
    assert!(writer.stop().in_reads > 0, "written while read");
    assert_eq!(replicated.code, 0, "{replicated:?}");
    assert!(
        replicated
            .stdout
            .contains("db: vmid 101: guest filesystems frozen through the guest agent"),
        "{replicated:?}"
    );
    // Held until `replicate-end` said the freeze held, then confirmed.
    assert!(
        replicated
            .stdout
            .contains("held until it is confirmed of one instant")
            && replicated
                .stdout
                .contains("db: the freeze held through the copy: points confirmed: hv2:"),
        "{replicated:?}"
    );
    let made = lab.points_since("db", &before);
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!(made[0]["verified"], "yes", "{made:#?}");
}

/// The orchestrator killed after the recovery side recorded the point of a copy read live,
/// before `replicate-end` said whether the freeze held (here `replicate-end` waits on the
/// source node): the point is left held, unusable, saying why, and no run starts from it.
#[test]
fn a_proxmox_point_whose_replication_never_reached_its_end_is_unusable() {
    let lab = Lab::up(179);
    let disk = lab.images("hv1").join("101/vm-101-disk-0.qcow2");
    fill(&disk, "64M");
    let before = lab.point_ids("db");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // point ids are per second
    // `qm status` on hv1 waits while the gate is there: `replicate-end` begins with it.
    let gate = lab.dir.path().join("gate");
    qm_first(
        &lab,
        "hv1",
        &format!(
            "if [ \"$1\" = status ]; then while [ -e '{}' ]; do sleep 0.05; done; fi",
            gate.display()
        ),
    );
    let copy = lab.images("hv2").join("101/vm-101-disk-0.qcow2.reprise");
    let recorded = || {
        std::fs::read_to_string(copy.join("points.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
            .map_or(0, |p| p.len())
    };
    let points_before = recorded();
    let overlay = lab.lab().join("overlay.toml");
    let state = lab.dir.path().join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(["--overlay", overlay.to_str().unwrap()])
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["replicate", "--service", "db"])
        .current_dir(lab.dir.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The copy under way (the freeze made): the gate closes; then the point is recorded.
    copy_began(|| {
        assert!(child.try_wait().unwrap().is_none(), "reprise ended early");
        copy.join("journal").exists() || recorded() != points_before
    });
    std::fs::write(&gate, "").unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while recorded() == points_before || copy.join("journal").exists() {
        assert!(
            std::time::Instant::now() < until,
            "the point was never recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // `replicate-end` waits: the orchestrator dies.
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_file(&gate).unwrap();
    let made = lab.points_since("db", &before);
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!(made[0]["verified"], "bad", "{made:#?}");
    assert!(
        made[0]["unusable"]
            .as_str()
            .is_some_and(|w| w.contains("its disks were never confirmed to be of one instant")),
        "{made:#?}"
    );
    // The next replication makes a good point; the held one stays unusable.
    let thawed = qm(&lab, "hv1", &["guest", "cmd", "101", "fsfreeze-thaw"]);
    assert_eq!(thawed.code, 0, "{thawed:?}");
    let frozen_marker = lab.images("hv1").join("101/reprise-frozen");
    let _ = std::fs::remove_file(frozen_marker);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = lab.with(&["replicate", "--service", "db"]);
    assert_eq!(again.code, 0, "{again:?}");
    let made = lab.points_since("db", &before);
    assert_eq!(
        made.iter()
            .map(|p| p["verified"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["bad", "yes"],
        "{made:#?}"
    );
}

/// A vm stopped when its copy begins is not frozen, and its files are read live: started
/// during the copy, it may have written them while they were read. `replicate-end` tells
/// (a marker from `replicate-begin`) and the point made is unusable.
#[test]
fn a_proxmox_vm_started_during_its_copy_makes_an_unusable_point() {
    let lab = Lab::up(176);
    let stopped = qm(&lab, "hv1", &["stop", "101"]);
    assert_eq!(stopped.code, 0, "{stopped:?}");
    let disk = lab.images("hv1").join("101/vm-101-disk-0.qcow2");
    // Data in the disk, so that its copy lasts (a second or so).
    fill(&disk, "256M");
    let before = lab.point_ids("db");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // point ids are per second
    // Someone starts the vm as soon as its copy has begun.
    let marker = lab.images("hv1").join("101/reprise-stopped");
    let starter = std::thread::scope(|scope| {
        let starter = scope.spawn(|| {
            copy_began(|| marker.exists());
            qm(&lab, "hv1", &["start", "101"])
        });
        let replicated = lab.with(&["replicate", "--service", "db"]);
        (replicated, starter.join().unwrap())
    });
    let (replicated, started) = starter;
    assert_eq!(started.code, 0, "{started:?}");
    assert_eq!(replicated.code, 1, "{replicated:?}");
    assert!(
        replicated
            .stdout
            .contains("vmid 101 is not running: its disks are read as they are")
            && replicated.stderr.contains("started during the copy")
            && replicated
                .stderr
                .contains("the copy may be torn: marked unusable, no run starts from it"),
        "{replicated:?}"
    );
    assert!(!marker.exists());
    let made = lab.points_since("db", &before);
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!(made[0]["verified"], "bad", "{made:#?}");
    assert!(
        made[0]["unusable"]
            .as_str()
            .is_some_and(|w| w.contains("started during the copy")),
        "{made:#?}"
    );
}

/// A vm stopped when its copy begins and stopped when it ends may still have been written in
/// between (started and stopped again, another program): its files are read live, so no look
/// at them while they are read tells. `replicate-end` finds them changed since its marker, and
/// the point made is unusable.
#[test]
fn a_stopped_proxmox_vm_whose_disk_is_written_during_its_copy_makes_an_unusable_point() {
    let lab = Lab::up(251);
    let stopped = qm(&lab, "hv1", &["stop", "101"]);
    assert_eq!(stopped.code, 0, "{stopped:?}");
    let disk = lab.images("hv1").join("101/vm-101-disk-0.qcow2");
    fill(&disk, "64M");
    let before = lab.point_ids("db");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // point ids are per second
    let writer = crate::common::Rewriter::start(&disk);
    let replicated = lab.with(&["replicate", "--service", "db"]);
    assert!(writer.stop().in_reads > 0, "written while read");
    assert_eq!(replicated.code, 1, "{replicated:?}");
    assert!(
        replicated.stderr.contains(
            "vmid 101 was stopped when its disks began to be read, and 101/vm-101-disk-0.qcow2 changed since"
        ) && replicated
            .stderr
            .contains("the copy may be torn: marked unusable, no run starts from it"),
        "{replicated:?}"
    );
    let made = lab.points_since("db", &before);
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!(made[0]["verified"], "bad", "{made:#?}");
    // Nothing writes it now: the next copy makes a good point.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = lab.with(&["replicate", "--service", "db"]);
    assert_eq!(again.code, 0, "{again:?}");
}

/// A running vm frozen for its copy is thawed during it (by hand, or by the guest), writes,
/// then stops before the copy ends: at the end no guest agent can say whether the freeze
/// held, but its disk changed since the freeze did. `replicate-end` tells, and the point
/// made is unusable.
#[test]
fn a_frozen_proxmox_vm_thawed_written_and_stopped_during_its_copy_makes_an_unusable_point() {
    let lab = Lab::up(184);
    let disk = lab.images("hv1").join("101/vm-101-disk-0.qcow2");
    fill(&disk, "256M");
    let before = lab.point_ids("db");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // point ids are per second
    let journal = lab
        .images("hv2")
        .join("101/vm-101-disk-0.qcow2.reprise/journal");
    let (replicated, stopped) = std::thread::scope(|scope| {
        let meddler = scope.spawn(|| {
            copy_began(|| journal.exists());
            let thawed = qm(&lab, "hv1", &["guest", "cmd", "101", "fsfreeze-thaw"]);
            assert_eq!(thawed.code, 0, "{thawed:?}");
            // A write by the thawed guest: one block rewritten with the bytes it held.
            use std::os::unix::fs::FileExt as _;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&disk)
                .unwrap();
            let mut block = vec![0u8; 65536];
            f.read_exact_at(&mut block, 1 << 20).unwrap();
            f.write_all_at(&block, 1 << 20).unwrap();
            drop(f);
            qm(&lab, "hv1", &["stop", "101"])
        });
        let replicated = lab.with(&["replicate", "--service", "db"]);
        (replicated, meddler.join().unwrap())
    });
    assert_eq!(stopped.code, 0, "{stopped:?}");
    assert_eq!(replicated.code, 1, "{replicated:?}");
    assert!(
        replicated.stderr.contains(
            "vmid 101 was frozen for its copy and is stopped now, and 101/vm-101-disk-0.qcow2 changed since it was frozen"
        ) && replicated
            .stderr
            .contains("the copy may be torn: marked unusable, no run starts from it"),
        "{replicated:?}"
    );
    let made = lab.points_since("db", &before);
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!(made[0]["verified"], "bad", "{made:#?}");
}

/// A running vm's files are read live under its freeze, which only `replicate-end` can say
/// held through the copy. When it cannot say (here its guest agent is gone by the end of the
/// copy), the point made is unusable: whether it is of one instant is not known.
#[test]
fn a_proxmox_point_whose_freeze_cannot_be_confirmed_is_unusable() {
    let lab = Lab::up(177);
    let disk = lab.images("hv1").join("101/vm-101-disk-0.qcow2");
    fill(&disk, "256M");
    let before = lab.point_ids("db");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // point ids are per second
    // The copy under way: its update's journal on the recovery node (the freeze made).
    let frozen = lab
        .images("hv2")
        .join("101/vm-101-disk-0.qcow2.reprise/journal");
    let conf = lab.conf_path("hv1", 101);
    let replicated = std::thread::scope(|scope| {
        scope.spawn(|| {
            copy_began(|| frozen.exists());
            // The guest agent taken away while the disks are read.
            let text = std::fs::read_to_string(&conf).unwrap();
            assert!(text.contains("agent: 1"), "{text}");
            std::fs::write(&conf, text.replace("agent: 1", "agent: 0")).unwrap();
        });
        lab.with(&["replicate", "--service", "db"])
    });
    assert_eq!(replicated.code, 1, "{replicated:?}");
    assert!(
        replicated
            .stderr
            .contains("its guest agent does not answer now")
            && replicated
                .stderr
                .contains("the copy may be torn: marked unusable, no run starts from it"),
        "{replicated:?}"
    );
    let made = lab.points_since("db", &before);
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!(made[0]["verified"], "bad", "{made:#?}");
    assert!(
        made[0]["unusable"]
            .as_str()
            .is_some_and(|w| w.contains("which says whether the freeze held through the copy")),
        "{made:#?}"
    );
}

/// The same through a runbook's `replicate` step (a planned failover's copy of the running
/// vm, under its freeze, before it is stopped): its point is unusable, the step fails and the failover does not go
/// on to start the vm from it.
#[test]
fn a_runbook_copy_whose_freeze_cannot_be_confirmed_makes_an_unusable_point() {
    let lab = Lab::up(178);
    let disk = lab.images("hv1").join("101/vm-101-disk-0.qcow2");
    fill(&disk, "256M");
    let before = lab.point_ids("db");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // point ids are per second
    let copying = lab
        .images("hv2")
        .join("101/vm-101-disk-0.qcow2.reprise/journal");
    let conf = lab.conf_path("hv1", 101);
    let failover = std::thread::scope(|scope| {
        scope.spawn(|| {
            copy_began(|| copying.exists());
            let text = std::fs::read_to_string(&conf).unwrap();
            std::fs::write(&conf, text.replace("agent: 1", "agent: 0")).unwrap();
        });
        lab.with(&["failover", "--service", "db", "--yes", "--no-prompt"])
    });
    assert_eq!(failover.code, 1, "{failover:?}");
    let shown = lab.shown();
    assert!(
        shown.contains("the copy may be torn: marked unusable, no run starts from it"),
        "{shown}"
    );
    let made = lab.points_since("db", &before);
    assert_eq!(made.len(), 1, "{made:#?}");
    assert_eq!(made[0]["verified"], "bad", "{made:#?}");
    assert!(
        made[0]["unusable"]
            .as_str()
            .is_some_and(|w| w.contains("which says whether the freeze held through the copy")),
        "{made:#?}"
    );
    // Never started on the recovery node from it (the lab's record of starts).
    assert!(
        !lab.root("hv2")
            .join("var/lib/lab/qm/started/101.conf")
            .exists()
    );
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
        "/etc/pve/qemu-server/900101.conf is the configuration of another vm (named 'accounting'), not of vmid 900101, the drill copy of vmid 101 ('drill-db'): not overwritten",
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
/// (`drill_network`, default vmbr-drill). That bridge must exist with no port but drill copies': a
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
            .contains("bridge vmbr-drill exists, with no port but drill copies'"),
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
            .contains("bridge vmbr0 has ports that are not drill copies' (eno1): a drill copy on it could reach production"),
        "{net}"
    );
    let check = lab.with(&["check"]);
    assert_eq!(check.code, 7, "{check:?}");
    let drill = lab.with(&["drill", "--no-prompt"]);
    assert_eq!(drill.code, 1, "{drill:?}");
    let shown = lab.shown();
    assert!(
        shown.contains("bridge vmbr0 has ports that are not drill copies' (eno1)"),
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
    // The copy defined before the bridge was refused is removed by the drill's cleanup.
    assert!(!lab.conf_path("hv2", 900101).exists());
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
    for id in [900101, 900102] {
        let c = lab.started("hv2", id);
        let nics: Vec<&str> = c.lines().filter(|l| l.starts_with("net")).collect();
        assert_eq!(nics.len(), 2, "{c}");
        for nic in nics {
            assert!(nic.ends_with(",bridge=vmbr9"), "{c}");
        }
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
    // Another vm's NIC on that bridge (vmid 150, a production vm of the node, not a drill
    // copy): a copy on it could reach production through that vm. Refused.
    let text = std::fs::read_to_string(&interfaces).unwrap().replace(
        "iface vmbr9 inet manual\n\tbridge-ports none",
        "iface vmbr9 inet manual\n\tbridge-ports tap150i0",
    );
    std::fs::write(&interfaces, text).unwrap();
    let net = lab.check_item("network", "hv2 (vmbr9)");
    assert_eq!(net["status"], "failed", "{net}");
    assert!(
        net["detail"]
            .as_str()
            .unwrap()
            .contains("bridge vmbr9 has ports that are not drill copies' (tap150i0)"),
        "{net}"
    );
}

/// A failover defines the vm on a recovery node that has none, from the configuration of the
/// point it starts from: a configuration changed on the primary between two points, a
/// failover from the older point boots with the older one.
#[test]
fn a_proxmox_failover_defines_the_vm_from_the_point_it_starts_from() {
    let lab = Lab::up(210);
    assert!(!lab.conf_path("hv2", 101).exists());
    let older = lab.point_ids("db");
    assert_eq!(older.len(), 1, "{older:?}");
    // More memory and a third NIC on the primary, then a new point.
    let text = lab
        .conf("hv1", 101)
        .replace("memory: 512\n", "memory: 2048\n")
        + "net2: virtio=BC:24:11:00:65:03,bridge=vmbr0\n";
    std::fs::write(lab.conf_path("hv1", 101), text).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let replicated = lab.with(&["replicate"]);
    assert_eq!(replicated.code, 0, "{replicated:?}");
    let points = lab.point_ids("db");
    assert_eq!(points.len(), 2, "{points:?}");
    assert_eq!(points[0], older[0]);

    primary_lost(&lab);
    let failover = lab.with(&[
        "failover",
        "--emergency",
        "--point",
        &format!("db={}", older[0]),
        "--yes",
        "--no-prompt",
    ]);
    assert_eq!(failover.code, 0, "{failover:?}");
    let shown = lab.shown();
    assert!(
        shown.contains(&format!(
            "db defined on hv2 from the definition of point {}",
            older[0]
        )),
        "{shown}"
    );
    // It booted (the qm stand-in starts only a defined vm) with the older configuration.
    let ran = lab.started("hv2", 101);
    assert_eq!(ran, lab.conf("hv2", 101));
    assert!(ran.contains("memory: 512\n"), "{ran}");
    assert!(!ran.contains("net2"), "{ran}");
    assert!(
        ran.contains("scsi0: local:101/vm-101-disk-0.qcow2,iothread=1,size=64M\n"),
        "{ran}"
    );
    let status = lab.status();
    assert!(vm_line(&status, "db").contains("recovery (hv2"), "{status}");
}

/// A drill's copy runs with every NIC on the drill bridge, new identifiers and its disks on
/// overlays of its own vmid; its cleanup leaves nothing: no configuration, no overlay, the
/// copies as they were, nothing defined under the vm's own vmid.
#[test]
fn a_proxmox_drill_copy_is_on_the_drill_bridge_and_leaves_nothing_behind() {
    let lab = Lab::up(211);
    let copies = [
        lab.images("hv2").join("102/vm-102-disk-0.qcow2"),
        lab.images("hv2").join("102/vm-102-disk-1.qcow2"),
    ];
    let before: Vec<Vec<u8>> = copies.iter().map(|c| digest(c)).collect();
    let drill = lab.with(&["drill", "--no-prompt"]);
    assert_eq!(drill.code, 0, "{drill:?}");
    let primary = lab.conf("hv1", 102);
    let ran = lab.started("hv2", 900102);
    let nics: Vec<&str> = ran.lines().filter(|l| l.starts_with("net")).collect();
    assert_eq!(nics.len(), 2, "{ran}");
    for nic in &nics {
        assert!(nic.ends_with(",bridge=vmbr-drill"), "{ran}");
        assert!(!nic.contains("tag="), "{ran}");
        let mac = nic.split([' ', ',']).nth(1).unwrap();
        assert!(!primary.contains(mac), "{mac} is the primary's: {ran}");
    }
    let uuid = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .map(str::to_string)
    };
    assert_ne!(uuid(&ran, "vmgenid"), uuid(&primary, "vmgenid"), "{ran}");
    assert!(uuid(&ran, "vmgenid").is_some(), "{ran}");
    for expected in ["name: drill-app\n", "tags: reprise-drill\n"] {
        assert!(ran.contains(expected), "{expected} in {ran}");
    }
    assert!(!ran.contains("onboot"), "{ran}");
    let shown = lab.shown();
    assert!(
        shown.contains("vmid 900102, the drill copy of vmid 102 defined ("),
        "{shown}"
    );
    for id in [900101, 900102] {
        assert!(!lab.conf_path("hv2", id).exists(), "{id} left");
        assert!(
            !lab.images("hv2").join(id.to_string()).exists(),
            "{id} left"
        );
    }
    for id in [101, 102] {
        assert!(!lab.conf_path("hv2", id).exists(), "{id} defined");
    }
    let after: Vec<Vec<u8>> = copies.iter().map(|c| digest(c)).collect();
    assert_eq!(after, before, "the drill wrote into the copies");

    // The dry run compares the configuration a drill would use with the one it last used.
    let same = lab.with(&["drill", "--dry-run", "--service", "app", "--only"]);
    assert_eq!(same.code, 0, "{same:?}");
    assert!(
        same.stdout
            .contains("vm app as drill-app on hv2: unchanged"),
        "{same:?}"
    );
    let text = lab
        .conf("hv1", 102)
        .replace("memory: 512\n", "memory: 768\n");
    std::fs::write(lab.conf_path("hv1", 102), text).unwrap();
    let replicated = lab.with(&["replicate", "--service", "app"]);
    assert_eq!(replicated.code, 0, "{replicated:?}");
    let changed = lab.with(&["drill", "--dry-run", "--service", "app", "--only"]);
    assert_eq!(changed.code, 0, "{changed:?}");
    assert!(
        changed
            .stdout
            .contains("vm app as drill-app on hv2: CHANGED since it was last defined there"),
        "{changed:?}"
    );
    let lines: Vec<&str> = changed.stdout.lines().map(str::trim_start).collect();
    assert!(lines.contains(&"- memory: 512"), "{changed:?}");
    assert!(lines.contains(&"+ memory: 768"), "{changed:?}");
}

/// A configuration reprise cannot read or fit is refused with what is wrong and what to
/// do, and nothing is defined: a section in what the driver prints (a driver reading the
/// file itself), a disk that is not among the vm's `disks`, one larger than a definition may
/// be.
#[test]
fn a_hostile_proxmox_configuration_is_refused_and_nothing_is_defined() {
    let lab = Lab::up(212);
    let conf = lab.conf_path("hv1", 101);
    let good = lab.conf("hv1", 101);
    let points = lab.point_ids("db");

    // Larger than a definition may be: not captured, so no point is made.
    std::fs::write(
        &conf,
        format!("{good}description: {}\n", "x".repeat(2 << 20)),
    )
    .unwrap();
    let replicated = lab.with(&["replicate", "--service", "db"]);
    assert_eq!(replicated.code, 1, "{replicated:?}");
    assert!(
        replicated
            .stderr
            .contains("its answer is longer than 1048576 bytes: refused"),
        "{replicated:?}"
    );
    assert_eq!(lab.point_ids("db"), points);

    // A driver that prints the file itself, with a snapshot section.
    std::fs::write(&conf, format!("{good}\n[before-upgrade]\nmemory: 256\n")).unwrap();
    let vms = lab.dir.path().join("inventory/vms.toml");
    let text = std::fs::read_to_string(&vms).unwrap();
    std::fs::write(
        &vms,
        format!(
            "{text}\n[drivers.proxmox]\ndefinition = \"cat {{{{ host.pve_dir }}}}/qemu-server/{{{{ vm.vmid }}}}.conf\"\n"
        ),
    )
    .unwrap();
    let replicated = lab.with(&["replicate", "--service", "db"]);
    assert_eq!(replicated.code, 1, "{replicated:?}");
    for expected in [
        "the definition hv1 gave is refused: line ",
        " of the definition (`[before-upgrade]`): a section (a snapshot, [PENDING] changes, cloud-init's): only a vm's current configuration is read",
    ] {
        assert!(replicated.stderr.contains(expected), "{replicated:?}");
    }
    assert_eq!(lab.point_ids("db"), points);
    std::fs::write(&vms, text).unwrap();

    // A disk that is not replicated: the point is made, and the failover that would start
    // from it stops before defining anything, saying which disk and what to do.
    std::fs::write(
        &conf,
        format!("{good}scsi5: local:101/vm-101-disk-5.qcow2,size=1G\n"),
    )
    .unwrap();
    let replicated = lab.with(&["replicate", "--service", "db"]);
    assert_eq!(replicated.code, 0, "{replicated:?}");
    let check = lab.with(&["check"]);
    assert_ne!(check.code, 0, "{check:?}");
    assert!(
        check
            .stdout
            .contains("scsi5 is the volume local:101/vm-101-disk-5.qcow2"),
        "{check:?}"
    );
    let failover = lab.with(&["failover", "--emergency", "--yes", "--no-prompt"]);
    assert_ne!(failover.code, 0, "{failover:?}");
    let shown = lab.shown();
    assert!(
        shown.contains(
            "cannot be defined on hv2: the definition's disk scsi5 is the volume local:101/vm-101-disk-5.qcow2, which is not one of the vm's disks (101/vm-101-disk-0.qcow2): refused (add it to the vm's `disks` in the inventory"
        ),
        "{shown}"
    );
    for id in [101, 102] {
        assert!(!lab.conf_path("hv2", id).exists(), "{id} was defined");
    }
    let status = lab.status();
    assert!(
        !vm_line(&status, "db").contains("recovery (hv2"),
        "{status}"
    );
}

/// A start that fails on the recovery node after reprise defined the vm there (a bridge the
/// node does not have) removes only the configuration it wrote: the copies, the vm's
/// volumes there, stay (never `qm destroy`).
#[test]
fn a_failed_proxmox_start_undefines_the_vm_and_keeps_its_copies() {
    let lab = Lab::up(213);
    let hosts = lab.dir.path().join("inventory/hosts.toml");
    let text = std::fs::read_to_string(&hosts).unwrap();
    let mapped = "networks = { vmbr0 = \"vmbr0\", vmbr1 = \"vmbr1\" }";
    assert!(text.contains(mapped), "{text}");
    // hv2 is the second hypervisor: its mapping sends vmbr1 to a bridge it lacks.
    let at = text.rfind(mapped).unwrap();
    let text = format!(
        "{}networks = {{ vmbr0 = \"vmbr0\", vmbr1 = \"vmbr9\" }}{}",
        &text[..at],
        &text[at + mapped.len()..]
    );
    std::fs::write(&hosts, text).unwrap();
    let copies: Vec<PathBuf> = ["101/vm-101-disk-0.qcow2"]
        .iter()
        .map(|d| lab.images("hv2").join(d))
        .collect();
    let before: Vec<Vec<u8>> = copies.iter().map(|c| digest(c)).collect();
    let failover = lab.with(&["failover", "--emergency", "--yes", "--no-prompt"]);
    assert_ne!(failover.code, 0, "{failover:?}");
    let shown = lab.shown();
    for expected in [
        "vmid 101 defined (",
        "bridge 'vmbr9' does not exist",
        "db, defined on hv2 for this step, was undefined again",
    ] {
        assert!(shown.contains(expected), "{expected} in {shown}");
    }
    assert!(!lab.conf_path("hv2", 101).exists());
    let after: Vec<Vec<u8>> = copies.iter().map(|c| digest(c)).collect();
    assert_eq!(after, before, "the copies changed");
    assert!(
        !lab.qm_calls("hv2")
            .iter()
            .any(|c| c.starts_with("qm destroy")),
        "{:?}",
        lab.qm_calls("hv2")
    );
}

/// hv2's storage `local` has its folder elsewhere than hv2's images_dir, where files of the
/// same volumes lie: a vm defined there would run on those files, not on the copies reprise
/// keeps and verifies. A drill's copy and a failover's start are both refused, naming the
/// volume and both files, and nothing runs on hv2.
#[test]
fn a_proxmox_vm_never_starts_from_a_storage_folder_that_is_not_its_copies() {
    let lab = Lab::up(148);
    let images = lab.images("hv2");
    let elsewhere = lab.root("hv2").join("srv/old-vz");
    let disk = "101/vm-101-disk-0.qcow2";
    let old = elsewhere.join("images").join(disk);
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::copy(images.join(disk), &old).unwrap();
    let cfg = lab.root("hv2").join("etc/pve/storage.cfg");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let path = format!("\tpath {}\n", images.parent().unwrap().display());
    assert!(text.contains(&path), "{text}");
    std::fs::write(
        &cfg,
        text.replace(&path, &format!("\tpath {}\n", elsewhere.display())),
    )
    .unwrap();
    let started = lab.root("hv2").join("var/lib/lab/qm/started");
    let drill = lab.with(&["drill", "--no-prompt", "--service", "db", "--only"]);
    assert_ne!(drill.code, 0, "{drill:?}");
    let shown = lab.shown();
    let overlay = images.join("900101/vm-900101-disk-0.qcow2");
    assert!(
        shown.contains(&format!(
            "vmid 900101's volume local:900101/vm-900101-disk-0.qcow2 is {} on this node, not the overlay {}",
            elsewhere.join("images/900101/vm-900101-disk-0.qcow2").display(),
            overlay.display()
        )),
        "{shown}"
    );
    assert!(!started.join("900101.conf").exists(), "the drill copy ran");
    primary_lost(&lab);
    let failover = lab.with(&["failover", "--emergency", "--yes", "--no-prompt"]);
    assert_ne!(failover.code, 0, "{failover:?}");
    let shown = lab.shown();
    assert!(
        shown.contains(&format!(
            "vmid 101's volume local:101/vm-101-disk-0.qcow2 is {} on this node, not {}, the disk reprise copies",
            elsewhere.join("images/101/vm-101-disk-0.qcow2").display(),
            images.join("101/vm-101-disk-0.qcow2").display()
        )),
        "{shown}"
    );
    assert!(!started.join("101.conf").exists(), "vmid 101 ran on hv2");
}

/// The recovery node already has a vm of another name under the vmid: the failover does not
/// write over its configuration, says whose it is and what to do, and starts nothing.
#[test]
fn a_proxmox_failover_never_overwrites_another_vms_configuration() {
    let lab = Lab::up(214);
    let theirs = "name: accounting\nmemory: 1024\nscsi0: local:101/vm-101-disk-0.qcow2\n";
    std::fs::write(lab.conf_path("hv2", 101), theirs).unwrap();
    let failover = lab.with(&["failover", "--emergency", "--yes", "--no-prompt"]);
    assert_ne!(failover.code, 0, "{failover:?}");
    let shown = lab.shown();
    assert!(
        shown.contains(
            "/etc/pve/qemu-server/101.conf is the configuration of another vm (named 'accounting'), not of vmid 101 ('db'): not overwritten; remove or renumber that vm, or give this one another vmid"
        ),
        "{shown}"
    );
    assert_eq!(lab.conf("hv2", 101), theirs);
    assert!(
        !lab.qm_calls("hv2")
            .iter()
            .any(|c| c.starts_with("qm start")),
        "{:?}",
        lab.qm_calls("hv2")
    );
}

/// The primary node's vms stop, as when its site is lost (an emergency failover's health
/// checks find a vm still running there a split brain).
fn primary_lost(lab: &Lab) {
    for vmid in ["101", "102"] {
        let run = qm(lab, "hv1", &["stop", vmid]);
        assert_eq!(run.code, 0, "qm stop {vmid}: {run:?}");
    }
}

/// Waits (2 minutes at most) until `began` says a copy has begun: polled every millisecond,
/// so that what the test does then falls within the copy.
fn copy_began(mut began: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !began() {
        assert!(std::time::Instant::now() < until, "the copy never began");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Makes `host`'s `qm` run the shell line `line` before it does anything else.
fn qm_first(lab: &Lab, host: &str, line: &str) {
    let qm_bin = lab.lab().join("hosts").join(host).join("bin/qm");
    let script = std::fs::read_to_string(&qm_bin).unwrap();
    let (shebang, rest) = script.split_once('\n').unwrap();
    std::fs::write(&qm_bin, format!("{shebang}\n{line}\n{rest}")).unwrap();
}

/// A point is of the moment its disks were frozen, never of before: the freeze here takes
/// 1.5 s to be in place, and the point made under it, by `reprise replicate` and by a planned
/// failover's sync step of the running vm, is taken once it is (a point chosen as taken before
/// a time must hold nothing written after it).
#[test]
fn a_proxmox_point_is_taken_once_its_freeze_is_in_place() {
    let lab = Lab::up(183);
    let frozen_at = lab.dir.path().join("frozen-at");
    qm_first(
        &lab,
        "hv1",
        &format!(
            "if [ \"$4\" = fsfreeze-freeze ]; then date -u +%s.%N > '{}'; sleep 1.5; fi",
            frozen_at.display()
        ),
    );
    let began = || -> f64 {
        std::fs::read_to_string(&frozen_at)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let taken = |p: &serde_json::Value| -> f64 {
        let at = chrono::DateTime::parse_from_rfc3339(p["taken_at"].as_str().unwrap()).unwrap();
        at.timestamp_micros() as f64 / 1e6
    };
    let mut before = lab.point_ids("db");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // point ids are per second
    let replicated = lab.with(&["replicate", "--service", "db"]);
    assert_eq!(replicated.code, 0, "{replicated:?}");
    let made = lab.points_since("db", &before);
    assert_eq!(made.len(), 1, "{made:#?}");
    assert!(
        taken(&made[0]) >= began() + 1.5,
        "taken at {} before the freeze was in place ({} + 1.5 s)",
        taken(&made[0]),
        began()
    );
    before.push(made[0]["id"].as_str().unwrap().to_string());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let failover = lab.with(&["failover", "--service", "db", "--yes", "--no-prompt"]);
    assert_eq!(failover.code, 0, "{failover:?}");
    // The point its live sync step made, under the freeze.
    let state = lab.dir.path().join("state");
    let last = crate::common::run_ids(&state).pop().expect("a run");
    let journal =
        std::fs::read_to_string(state.join("runs").join(last).join("journal.jsonl")).unwrap();
    let used: Vec<serde_json::Value> = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| {
            e["event"] == "replica_point_used" && e["item"] == "db" && e["step"] == "db/pre-sync"
        })
        .collect();
    assert_eq!(used.len(), 1, "{used:#?}");
    let u = &used[0];
    assert!(
        !before.iter().any(|b| u["point"] == b.as_str()),
        "the sync step's own point: {used:#?}"
    );
    assert!(
        taken(u) >= began() + 1.5,
        "the failover's point is taken at {} before its freeze was in place ({} + 1.5 s)",
        taken(u),
        began()
    );
}

/// `qm ARGS` on `host`, through the lab's stand-in, as someone at the node's console would.
fn qm(lab: &Lab, host: &str, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(["lab", "stub", "qm"])
        .args(args)
        .env("LAB_HOST", host)
        .env("LAB_HOST_DIR", lab.lab().join("hosts").join(host))
        .env("LAB_DIR", lab.lab())
        .output()
        .expect("the reprise binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// The `qm` calls `host` recorded after the first `from`.
fn qm_calls_after(lab: &Lab, host: &str, from: usize) -> Vec<String> {
    lab.qm_calls(host).split_off(from)
}

/// Whether any of `calls` changes a vm (starts, stops, writes or removes it).
fn changes_a_vm(calls: &[String]) -> bool {
    calls.iter().any(|c| {
        [
            "qm start",
            "qm stop",
            "qm shutdown",
            "qm set",
            "qm destroy",
            "qm create",
        ]
        .iter()
        .any(|verb| c.starts_with(verb))
    })
}

/// The vmid already runs on the recovery node (started there by hand): a failover does not
/// change its configuration under it, says so and what to do (found before any point is
/// chosen for it: its status, asked first, says it runs), and neither starts, stops nor
/// undefines anything.
#[test]
fn a_proxmox_failover_never_changes_the_configuration_of_a_running_vmid() {
    let lab = Lab::up(248);
    let theirs = lab
        .conf("hv1", 101)
        .replace("memory: 512\n", "memory: 4096\n");
    assert_ne!(theirs, lab.conf("hv1", 101));
    std::fs::write(lab.conf_path("hv2", 101), &theirs).unwrap();
    let started = qm(&lab, "hv2", &["start", "101"]);
    assert_eq!(started.code, 0, "{started:?}");
    let ran = lab.started("hv2", 101);
    let calls = lab.qm_calls("hv2").len();

    let failover = lab.with(&["failover", "--emergency", "--yes", "--no-prompt"]);
    assert_eq!(failover.code, 1, "{failover:?}");
    let shown = lab.shown();
    assert!(
        shown.contains(
            "finished db/start: Failed in "
        ) && shown.contains(
            "vm db already runs on hv2, started outside this run: what it runs on and what it wrote there are not the point this run would choose, and nothing was chosen, leased or defined for it"
        ),
        "{shown}"
    );
    assert!(shown.contains("finished app/start: Blocked in "), "{shown}");
    // Nothing changed: the configuration, the vm (still running, as it started), the calls.
    assert_eq!(lab.conf("hv2", 101), theirs);
    let status = qm(&lab, "hv2", &["status", "101"]);
    assert_eq!(status.stdout, "status: running\n", "{status:?}");
    assert_eq!(lab.started("hv2", 101), ran);
    let after = qm_calls_after(&lab, "hv2", calls);
    assert!(!changes_a_vm(&after), "{after:?}");
}

/// The vmid (a drill copy's, or the vm's own) is another node's of the cluster (its file under
/// /etc/pve/nodes/<node>/): neither a drill nor a failover defines it on the recovery node; each
/// says which node holds it and what to do, and nothing is written or started.
#[test]
fn a_proxmox_vmid_of_another_node_of_the_cluster_is_never_defined_here() {
    let lab = Lab::up(249);
    let other = lab.root("hv2").join("etc/pve/nodes/pve-b/qemu-server");
    std::fs::create_dir_all(&other).unwrap();
    let theirs = "name: accounting\nmemory: 1024\nscsi0: local:101/vm-101-disk-0.qcow2\n";
    let calls = lab.qm_calls("hv2").len();

    // A drill: its copy of db would be vmid 900101, which pve-b has.
    std::fs::write(other.join("900101.conf"), theirs).unwrap();
    let drill = lab.with(&["drill", "--no-prompt"]);
    assert_eq!(drill.code, 1, "{drill:?}");
    let shown = lab.shown();
    assert!(
        shown.contains(
            "vmid 900101, the drill copy of vmid 101 is defined on another node of the cluster ("
        ) && shown.contains(
            "/etc/pve/nodes/pve-b/qemu-server/900101.conf): a vmid is unique in a cluster; free it there, or give the vm another vmid"
        ),
        "{shown}"
    );
    assert_eq!(
        std::fs::read_to_string(other.join("900101.conf")).unwrap(),
        theirs
    );
    assert!(!lab.conf_path("hv2", 900101).exists());
    std::fs::remove_file(other.join("900101.conf")).unwrap();

    // A failover: db's own vmid 101 is pve-b's.
    std::fs::write(other.join("101.conf"), theirs).unwrap();
    let failover = lab.with(&["failover", "--emergency", "--yes", "--no-prompt"]);
    assert_eq!(failover.code, 1, "{failover:?}");
    let shown = lab.shown();
    assert!(
        shown.contains("(`define` exited with 1 on hv2: vmid 101 is defined on another node of the cluster (")
            && shown.contains(
                "/etc/pve/nodes/pve-b/qemu-server/101.conf): a vmid is unique in a cluster; free it there, or give the vm another vmid)"
            ),
        "{shown}"
    );
    assert_eq!(
        std::fs::read_to_string(other.join("101.conf")).unwrap(),
        theirs
    );
    for id in [101, 102] {
        assert!(!lab.conf_path("hv2", id).exists(), "{id} was defined");
    }
    let after = qm_calls_after(&lab, "hv2", calls);
    assert!(!changes_a_vm(&after), "{after:?}");
    let status = lab.status();
    assert!(
        !vm_line(&status, "db").contains("recovery (hv2"),
        "{status}"
    );
}

/// A copy that names another file (a qcow2 backed by a template, carried over by hand) does
/// not hold all its data: a drill that starts it as it is (named with --accept-unverified)
/// refuses it at its `drill-start`, before any overlay follows the reference, and says why.
#[test]
fn a_proxmox_drill_never_starts_a_copy_that_refers_to_another_file() {
    let lab = Lab::up(185);
    let images = lab.images("hv2");
    let copy = images.join("101/vm-101-disk-0.qcow2");
    let base = images.join("101/base-101-disk-0.qcow2");
    for args in [
        vec!["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "64M"],
        vec![
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "base-101-disk-0.qcow2",
            copy.to_str().unwrap(),
        ],
    ] {
        let out = Command::new("qemu-img").args(&args).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let drill = lab.with(&[
        "drill",
        "--no-prompt",
        "--service",
        "db",
        "--only",
        "--accept-unverified",
        "db",
    ]);
    assert_ne!(drill.code, 0, "{drill:?}");
    let shown = lab.shown();
    assert!(
        shown.contains(
            "refers to another file (a backing or data file): a copy must hold all its data"
        ),
        "{shown}"
    );
    assert!(
        !images.join("900101/vm-900101-disk-0.qcow2").exists(),
        "an overlay was made: {drill:?}"
    );
}

/// `qm move-disk` without `--delete` leaves the old volume (as `unused0`) where the inventory
/// names the disk, and the vm writes another: a replication that read the old file would
/// make good points every round of data the vm no longer writes. `replicate-check` refuses,
/// naming the file and what the vm uses, and no point is made; the configuration put back,
/// the vm is copied again.
#[test]
fn a_proxmox_disk_moved_to_another_volume_is_never_replicated_from_its_old_file() {
    let lab = Lab::up(191);
    let conf = lab.conf("hv1", 101);
    let old = "scsi0: local:101/vm-101-disk-0.qcow2";
    assert!(conf.contains(old), "{conf}");
    let images = lab.images("hv1");
    let file = images.join("101/vm-101-disk-0.qcow2");
    let before = lab.point_ids("db");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // point ids are per second
    // Moved within the storage (a new volume name), then to another storage (the same name
    // in another folder).
    let elsewhere = lab.root("hv1").join("srv/fast");
    let moved = elsewhere.join("images/101/vm-101-disk-0.qcow2");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::copy(&file, &moved).unwrap();
    std::fs::copy(&file, images.join("101/vm-101-disk-1.qcow2")).unwrap();
    let cfg = lab.root("hv1").join("etc/pve/storage.cfg");
    let storages = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{storages}\ndir: fast\n\tpath {}\n\tcontent images\n",
            elsewhere.display()
        ),
    )
    .unwrap();
    for (now, uses) in [
        (
            "scsi0: local:101/vm-101-disk-1.qcow2",
            "the vm writes another volume".to_string(),
        ),
        (
            "scsi0: fast:101/vm-101-disk-0.qcow2",
            format!(
                "its volume fast:101/vm-101-disk-0.qcow2 is {}",
                moved.display()
            ),
        ),
    ] {
        let edited = conf.replacen(old, now, 1) + "unused0: local:101/vm-101-disk-0.qcow2\n";
        std::fs::write(lab.conf_path("hv1", 101), &edited).unwrap();
        let replicated = lab.with(&["replicate", "--service", "db"]);
        assert_ne!(replicated.code, 0, "{replicated:?}");
        let said = format!("{replicated:?}");
        assert!(
            said.contains(&format!(
                "{} is not a disk of vmid 101 as it runs and as it is configured",
                file.display()
            )) && said.contains(&uses),
            "{said}"
        );
        assert!(lab.points_since("db", &before).is_empty(), "{said}");
    }
    std::fs::write(lab.conf_path("hv1", 101), &conf).unwrap();
    let replicated = lab.with(&["replicate", "--service", "db"]);
    assert_eq!(replicated.code, 0, "{replicated:?}");
    assert_eq!(lab.points_since("db", &before).len(), 1);
}
