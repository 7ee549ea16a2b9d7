//! The lab runs a user's own inventory, not only the example: a Proxmox inventory whose hosts
//! name no overlay folders, runbooks calling programs the lab has no stand-in for, and a command
//! naming a real path of this machine, which the lab refuses to run.

use std::path::Path;

use crate::common::{NetLock, Run, mini_copy, reprise};

fn run_in(dir: &Path, args: &[&str]) -> Run {
    reprise(dir, args)
}

/// The small fixture turned into a user's inventory: Proxmox vms (vmids, disks in Proxmox's
/// layout on the default directory storage, no `overlays_dir` anywhere), no replication
/// steps, and a failback step that promotes a database with `pg_ctl` and reboots, with the
/// data folder as a host variable.
fn users_inventory(dir: &Path, promote: &str) {
    let edit = |file: &str, f: &dyn Fn(String) -> String| {
        let path = dir.join(file);
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
        s.lines()
            .filter(|l| !l.starts_with("overlays_dir"))
            .map(|l| {
                if l.starts_with("images_dir") {
                    "images_dir = \"/var/lib/vz/images\"\n".to_string()
                } else {
                    format!("{l}\n")
                }
            })
            .collect::<String>()
            .replacen(
                "[hosts.hv1.vars]\n",
                "[hosts.hv1.vars]\npg_data = \"/var/lib/postgresql/15/main\"\n",
                1,
            )
    });
    let promote = promote.to_string();
    edit("runbooks/db.toml", &move |s| {
        s.replace(
            "[[db.failover]]\nid = \"sync\"\nkind = \"replicate\"\nvm = \"db\"\nneeds_primary = true\nexpected = \"10m\"\n\n",
            "",
        )
        .replace(
            "[[db.failback]]\nid = \"sync-back\"\nkind = \"replicate\"\nvm = \"db\"\n",
            &format!(
                "[[db.failback]]\nid = \"promote\"\nkind = \"exec\"\nhost = \"hv1\"\nrun = \"{promote}\"\n"
            ),
        )
    });
}

#[test]
fn a_users_own_inventory_drills_on_the_lab_and_unknown_commands_are_recorded() {
    let _net = NetLock::take(133);
    let dir = mini_copy();
    let dir = dir.path();
    users_inventory(dir, "pg_ctl promote -D {{ host.pg_data }} && reboot");
    let valid = run_in(dir, &["validate"]);
    assert_eq!(valid.code, 0, "{valid:?}");
    let lab = dir.join("lab");
    let lab = lab.to_str().unwrap();
    let up = run_in(dir, &["lab", "up", "--lab-dir", lab, "--net", "133"]);
    assert_eq!(up.code, 0, "{up:?}");
    // The real addresses, and what has no stand-in.
    assert!(
        up.stdout
            .contains("host hv2            sshd 127.133.0.12:2222"),
        "{}",
        up.stdout
    );
    assert!(
        up.stdout
            .contains("vm   db             127.133.1.10 on hv1, 127.133.2.10 on hv2"),
        "{}",
        up.stdout
    );
    assert!(
        up.stdout
            .contains("no stand-in on hv1 for: pg_ctl, reboot (calls are recorded and succeed"),
        "{}",
        up.stdout
    );
    let overlay = format!("{lab}/overlay.toml");
    let state = dir.join("state");
    let state = state.to_str().unwrap();
    let with = |args: &[&str]| {
        let mut all = vec!["--overlay", overlay.as_str(), "--state-dir", state];
        all.extend_from_slice(args);
        run_in(dir, &all)
    };
    let drill = with(&["drill", "--no-prompt"]);
    assert_eq!(drill.code, 0, "{drill:?}");
    let failback = with(&["failback", "--yes", "--no-prompt"]);
    assert_eq!(failback.code, 0, "{failback:?}");
    // The generic stand-in recorded the calls on the host they ran on, with their arguments.
    let calls = std::fs::read_to_string(dir.join("lab/hosts/hv1/calls.log")).unwrap();
    let promoted = format!("pg_ctl promote -D {lab}/hosts/hv1/root/var/lib/postgresql/15/main");
    assert!(calls.contains(&promoted), "{calls}");
    assert!(calls.lines().any(|l| l.ends_with(" reboot ")), "{calls}");
    let status = run_in(dir, &["lab", "status", "--lab-dir", lab]);
    assert!(
        status
            .stdout
            .contains("hv1            pg_ctl (1 calls), reboot (1 calls)"),
        "{}",
        status.stdout
    );
    let down = run_in(dir, &["lab", "down", "--lab-dir", lab]);
    assert_eq!(down.code, 0, "{down:?}");
}

#[test]
fn the_lab_refuses_commands_that_name_real_paths_of_this_machine() {
    let dir = mini_copy();
    let dir = dir.path();
    users_inventory(
        dir,
        "pg_ctl promote -D /var/lib/postgresql/15/main && /usr/sbin/reboot",
    );
    let lab = dir.join("lab");
    let up = run_in(
        dir,
        &[
            "lab",
            "up",
            "--lab-dir",
            lab.to_str().unwrap(),
            "--net",
            "134",
        ],
    );
    assert_eq!(up.code, 1, "{up:?}");
    for expected in [
        "step db/promote: /var/lib/postgresql/15/main",
        "step db/promote: /usr/sbin/reboot",
        "make each path a variable of its host",
    ] {
        assert!(up.stderr.contains(expected), "{}", up.stderr);
    }
    // Nothing was started.
    assert!(!lab.join("lab.json").exists());
}

#[test]
fn the_example_needs_no_generic_stand_in() {
    let _net = NetLock::take(135);
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab");
    let lab = lab.to_str().unwrap();
    let up = reprise(
        &crate::common::root(),
        &["lab", "up", "--lab-dir", lab, "--net", "135"],
    );
    let _ = reprise(&crate::common::root(), &["lab", "down", "--lab-dir", lab]);
    assert_eq!(up.code, 0, "{up:?}");
    assert!(!up.stdout.contains("no stand-in"), "{}", up.stdout);
}

/// The processes whose command line names `dir`.
fn processes_naming(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&dir) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn a_lab_that_fails_to_come_up_leaves_nothing_running() {
    let _net = NetLock::take(137);
    let dir = mini_copy();
    let dir = dir.path();
    let lab = dir.join("lab");
    // Something else already listens where the database vm's service would: its stand-in
    // cannot start, after every host's sshd has.
    let taken = std::net::TcpListener::bind("127.137.1.10:5432").unwrap();
    let up = run_in(
        dir,
        &[
            "lab",
            "up",
            "--lab-dir",
            lab.to_str().unwrap(),
            "--net",
            "137",
        ],
    );
    assert_eq!(up.code, 1, "{up:?}");
    assert!(up.stderr.contains("lab serve"), "{}", up.stderr);
    assert!(
        lab.join("hosts").exists(),
        "the lab got as far as its hosts"
    );
    assert_eq!(processes_naming(&lab), Vec::<String>::new());
    // Once the address is free, the lab comes up in the same folder.
    drop(taken);
    let lab = lab.to_str().unwrap();
    let up = run_in(dir, &["lab", "up", "--lab-dir", lab, "--net", "137"]);
    assert_eq!(up.code, 0, "{up:?}");
    let down = run_in(dir, &["lab", "down", "--lab-dir", lab]);
    assert_eq!(down.code, 0, "{down:?}");
}
