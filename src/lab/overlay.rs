//! What `lab up` writes over the inventory (`overlay.toml`: addresses, ports, folders moved into
//! the lab, the lab's driver) and what it reads of the plans under it: the programs that get
//! the generic stand-in, the paths outside the lab a command would touch, the ports checked.

use std::collections::BTreeMap;
use std::path::Path;

use crate::inventory::VarValue;
use crate::model::Model;
use crate::plan::{self, Action, PlanOptions};
use crate::runbook::Mode;

use super::standins::STAND_INS;
use super::{LabVm, SSH_PORT, host_root};

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The overlay text for the lab: new addresses, ports, directories and driver.
pub(super) fn overlay_text(
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
pub(super) fn every_plan(model: &Model) -> Vec<plan::Plan> {
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
pub(super) struct Calls {
    /// Per host, the programs without a stand-in of their own: they get the generic one.
    pub(super) generic: BTreeMap<String, Vec<String>>,
    /// Paths outside the lab that commands name literally (step or hook, path): the overlay
    /// moves only host variables into the lab, so such a command would touch this machine.
    pub(super) outside: Vec<(String, String)>,
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

pub(super) fn calls(model: &Model, lab: &Path) -> Calls {
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
pub(super) fn checked_ports(plans: &[plan::Plan]) -> BTreeMap<String, Vec<u16>> {
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
