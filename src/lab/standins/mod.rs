//! The lab's stand-ins: the commands a lab host answers in place of those that would change a
//! real machine, and the body of its "VMs". They are programs, not library code: they print,
//! and they return an exit code.
//!
//! The one door: the binary reaches this module only through the lab's own hidden commands,
//! `reprise lab stub NAME ARGS…` (the scripts `lab up` puts first on each lab host's PATH
//! call it: [`stub`]) and `reprise lab serve` (a lab vm or service process, started by the
//! lab's `serve::start_serve`: [`serve`]). A stub refuses to run outside a lab host (without the
//! `LAB_HOST`, `LAB_HOST_DIR` and `LAB_DIR` its host's sshd sets).

use std::io::Write;
use std::path::PathBuf;

use super::LabState;

mod host;
mod qm;
mod virsh;
mod vm;

pub use vm::serve;

/// The commands that lab hosts answer with stand-ins.
pub const STAND_INS: &[&str] = &[
    "lab-vm",
    "qm",
    "pvesm",
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

/// Where a stand-in runs: its lab host, that host's folder, and the lab.
pub(super) struct Host {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) state: LabState,
}

impl Host {
    /// The host's "disk" (absolute paths of the inventory live under it).
    pub(super) fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Where the stand-ins keep a host's state (`var/lib/lab` under its root).
    pub(super) fn lib(&self) -> PathBuf {
        self.root().join("var/lib/lab")
    }
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
    let state = match LabState::load(&PathBuf::from(lab)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{name}: {e}");
            return 1;
        }
    };
    let host = Host {
        name: host,
        dir: host_dir,
        state,
    };
    let _ = std::fs::create_dir_all(host.lib());
    play(&host, name, args)
}

/// The stand-in `name` on `host`: its exit code.
fn play(host: &Host, name: &str, args: &[String]) -> i32 {
    match name {
        "lab-vm" => virsh::lab_vm(&host.state, &host.name, args),
        "qm" => qm::qm(&host.state, &host.name, &host.root(), args),
        "pvesm" => qm::pvesm(&host.state, &host.name, &host.root(), args),
        "systemctl" => host::systemctl(host, args),
        "iptables-restore" => host::iptables_restore(host, args),
        "iptables" | "iptables-save" => host::iptables_show(host, args),
        // `ip -o link show dev BRIDGE` and `ip -o link show master BRIDGE` on a Proxmox node
        // answer from its bridges; anything else as before.
        "ip" if qm::is_bridge_query(args) => qm::ip(&host.state, &host.name, &host.root(), args),
        "ip" => {
            println!("1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 state UNKNOWN (lab)");
            0
        }
        "mount" | "umount" => 0,
        "mountpoint" => 0,
        "upsc" => host::upsc(args),
        "upsrw" => 0,
        "psql" => host::psql(host, args),
        // The replication lag of a domain controller, as contrib/ad-repl-lag prints it.
        "ad-repl-lag" => host::print_lag(&host.lib(), "42"),
        "ping" => host::ping(args),
        other
            if host
                .state
                .generic
                .get(&host.name)
                .is_some_and(|g| g.iter().any(|n| n == other)) =>
        {
            eprintln!(
                "{other} (lab): no stand-in plays this command; the call was recorded in {} and counts as a success",
                host.dir.join("calls.log").display()
            );
            0
        }
        other => {
            eprintln!("{other}: no lab stand-in");
            127
        }
    }
}
