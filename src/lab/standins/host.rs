//! Stand-ins for a host's own commands: `systemctl`, `iptables*`, `upsc`, `psql`, lag probes,
//! `ping`; each plays its effect inside the lab host's directory.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use super::{Host, LAG_FILE};
use crate::lab::serve::{start_serve, stop_serve};

/// What a lab stand-in for a lag probe prints: [`LAG_FILE`]'s text, or `default`.
pub(super) fn print_lag(lib: &Path, default: &str) -> i32 {
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

/// `systemctl VERB UNIT`: units are files under the host's `units` (a unit stopped by name under
/// `units-stopped`); starting one starts the host's services, stopping the last stops them.
pub(super) fn systemctl(host: &Host, args: &[String]) -> i32 {
    // `systemctl is-active --quiet UNIT`: the unit is the first word not an option.
    let verb = args.first().map(String::as_str).unwrap_or("");
    let unit = args
        .iter()
        .skip(1)
        .map(String::as_str)
        .find(|a| !a.starts_with('-'))
        .unwrap_or("");
    let units = host.dir.join("units");
    let unit_file = units.join(unit.replace('/', "_"));
    // A unit stopped by name is inactive, also on a host whose production runs.
    let stopped = host.dir.join("units-stopped").join(unit.replace('/', "_"));
    let ports = host
        .state
        .hosts
        .get(&host.name)
        .map(|h| (h.address.clone(), h.ports.clone()));
    match verb {
        "start" | "restart" | "reload-or-restart" => {
            let _ = std::fs::write(&unit_file, "");
            let _ = std::fs::remove_file(&stopped);
            if let Some((addr, ports)) = ports
                && !ports.is_empty()
                && let Err(e) = start_serve(&host.state, &host.name, "services", &addr, &ports, &[])
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
                stop_serve(&host.state, &host.name, "services");
            }
            0
        }
        "is-active" | "status" => {
            if !stopped.exists() && (unit_file.exists() || units.join("production").exists()) {
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

/// `iptables-restore [--test] [FILE]`: rules with a `COMMIT` are kept in the host's
/// `iptables.rules`.
pub(super) fn iptables_restore(host: &Host, args: &[String]) -> i32 {
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
    match std::fs::write(host.lib().join("iptables.rules"), rules) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("iptables-restore: {e}");
            1
        }
    }
}

/// `iptables -S [CHAIN]`, `iptables-save`: the rules last restored.
pub(super) fn iptables_show(host: &Host, args: &[String]) -> i32 {
    let rules = std::fs::read_to_string(host.lib().join("iptables.rules")).unwrap_or_default();
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

/// `upsc UPS [VAR]`: a UPS on line power.
pub(super) fn upsc(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "ups.status") {
        println!("OL");
    } else {
        println!("battery.charge: 100\nups.status: OL\ninput.voltage: 230.0");
    }
    0
}

/// PostgreSQL on a lab host: a standby in recovery until `pg_promote()` is called.
pub(super) fn psql(host: &Host, args: &[String]) -> i32 {
    let sql = args.join(" ");
    let lib = host.lib();
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

/// `ping … TARGET`: answers for loopback targets only.
pub(super) fn ping(args: &[String]) -> i32 {
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
