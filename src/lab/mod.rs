//! The lab: the example inventory brought to life on this machine, on loopback only.
//!
//! `lab up` gives every host of the inventory a real OpenSSH `sshd` on its own 127.0.0.x address
//! (a high port, its own host key, its own directory tree standing for its disk), writes a
//! `known_hosts` and a client key for the tool, creates the VMs' disk images with `qemu-img`, and
//! writes an overlay of the inventory (`overlay.toml`) that changes only addresses, ports,
//! directories and the hypervisor driver: the example's runbooks run unchanged.
//!
//! Commands that would change a real machine (`systemctl`, `iptables-restore`, `ip`, `mount`,
//! the `lab-vm` driver…) resolve, on lab hosts, to stand-ins first on that host's PATH: they
//! record each call in the host's `calls.log` and play its effect inside the host's directory.
//! The lab's "VMs" and services are real processes that read their disk image and serve their
//! ports, so health checks are real. Nothing here touches the real machine's firewall, services,
//! mounts or network configuration, and nothing listens outside 127.0.0.0/8.
//!
//! One file per job: `up` brings the lab up (with `overlay`, what it moves and stands in for,
//! and `seed`, last night's replication), `serve` starts and stops the processes it serves
//! while up, `down` knows what it started and stops only that, `status` tells. This file holds
//! the words they share ([`LabState`], [`LabError`], the lab's paths). The stand-ins live in
//! [`standins`], which the binary reaches only through `reprise lab stub` and `reprise lab
//! serve`, the lab's own (hidden) commands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::inventory::SiteRole;

mod down;
mod overlay;
mod seed;
mod serve;
pub mod standins;
mod status;
mod up;

pub use down::down;
pub use status::status;
pub use up::{describe_up, up};

/// The port every lab sshd listens on (each on its own address).
pub const SSH_PORT: u16 = 2222;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} not found: run `bash scripts/test.sh` or install {1} (apt-get install {1})")]
    Missing(&'static str, &'static str),
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("the lab in {0} is running: `reprise lab down` first")]
    Running(PathBuf),
    #[error("no lab in {0}: `reprise lab up` first")]
    NotUp(PathBuf),
    #[error("sshd of {host} did not start listening on {addr} within 10s; see {log}")]
    SshdStart {
        host: String,
        addr: String,
        log: PathBuf,
    },
    #[error("the inventory does not load with the lab's overlay {overlay}:\n{report}")]
    Model { overlay: PathBuf, report: String },
    #[error(
        "commands of the inventory name paths outside the lab, which the lab would touch on this machine:\n{}\nhint: the lab moves only the folders given as host variables into its own tree: make each path a variable of its host (e.g. `data_dir = \"/var/lib/pgsql\"` under [hosts.NAME.vars]) and write `{{{{ host.data_dir }}}}` in the runbook",
        .0.iter().map(|(what, path)| format!("  {what}: {path}")).collect::<Vec<_>>().join("\n")
    )]
    OutsidePaths(Vec<(String, String)>),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LabError + 'a {
    move |source| LabError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What `lab up` set up, saved as `lab.json` for the stand-ins, `status` and `down`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub dir: PathBuf,
    pub exe: PathBuf,
    pub hosts: BTreeMap<String, LabHost>,
    pub vms: BTreeMap<String, LabVm>,
    /// Per host, the programs the runbooks call that have no stand-in of their own: the
    /// generic stand-in records each call and answers success.
    #[serde(default)]
    pub generic: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabHost {
    pub address: String,
    pub port: u16,
    pub site_role: SiteRole,
    /// Ports its services answer on (from the runbooks' health checks).
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabVm {
    pub name: String,
    pub primary_host: String,
    pub recovery_host: String,
    pub primary_address: String,
    pub recovery_address: String,
    pub disks: Vec<String>,
    pub ports: Vec<u16>,
    /// A Proxmox vm (driver `proxmox`) keeps its driver in the lab: the `qm` stand-in plays it
    /// under this vmid.
    #[serde(default)]
    pub vmid: Option<u32>,
}

impl LabState {
    pub fn load(dir: &Path) -> Result<LabState, LabError> {
        let path = dir.join("lab.json");
        let text =
            std::fs::read_to_string(&path).map_err(|_| LabError::NotUp(dir.to_path_buf()))?;
        serde_json::from_str(&text).map_err(|e| LabError::Io {
            what: "parse",
            path,
            source: std::io::Error::other(e),
        })
    }

    pub fn host_dir(&self, host: &str) -> PathBuf {
        host_dir(&self.dir, host)
    }
}

pub fn host_dir(lab: &Path, host: &str) -> PathBuf {
    lab.join("hosts").join(host)
}

/// The root of a host's "disk": absolute paths of the inventory live under it.
pub fn host_root(lab: &Path, host: &str) -> PathBuf {
    host_dir(lab, host).join("root")
}

pub fn overlay_path(lab: &Path) -> PathBuf {
    lab.join("overlay.toml")
}
