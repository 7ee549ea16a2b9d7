//! `lab status`: the lab's hosts, vms and processes, and the calls its generic stand-in took.

use std::path::Path;

use super::down::running_pids;
use super::{LabError, LabState};

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
