//! The inventory: sites, hosts, services, VMs, backup sets and hypervisor drivers, read from
//! `inventory/*.toml` (all files merged) and checked for references between them.
//!
//! Loading is pure: it takes the files' text (see [`crate::sources`]) and returns the model and
//! every problem found. It must not reach the network or the clock.

use indexmap::IndexMap;
use toml::de::DeValue;

use crate::diagnostic::{Diagnostic, FileId, Location, did_you_mean};
use crate::duration::Duration;
use crate::fields::{
    ABS_PATH_HINT, REL_PATH_HINT, Sp, Table, Value, parse_document, path_problem, type_name,
};
use crate::sources::Sources;

pub const SITE_ROLES: &[&str] = &["primary", "recovery", "remote"];
pub const HOST_ROLES: &[&str] = &[
    "hypervisor",
    "storage",
    "firewall",
    "vpn",
    "domain-controller",
    "app-server",
    "database",
    "file-server",
    "print-server",
    "remote-access",
    "backup",
    "ups",
    "switch",
    "management",
];
pub const SERVICE_KINDS: &[&str] = &[
    "power",
    "network",
    "firewall",
    "vpn",
    "storage",
    "hypervisor",
    "vm",
    "directory",
    "database",
    "application",
    "file",
    "print",
    "remote-access",
    "backup",
];

/// What a site is for in a recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteRole {
    Primary,
    Recovery,
    Remote,
}

impl SiteRole {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "primary" => SiteRole::Primary,
            "recovery" => SiteRole::Recovery,
            "remote" => SiteRole::Remote,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SiteRole::Primary => "primary",
            SiteRole::Recovery => "recovery",
            SiteRole::Remote => "remote",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Site {
    pub id: String,
    pub description: Option<String>,
    /// `None` when the file gave an invalid role (already reported).
    pub role: Option<SiteRole>,
    /// How the networks of vm definitions from another site are named on this site's hosts
    /// (`br-prod = "br-pra"`), unless a host has its own.
    pub networks: Option<IndexMap<String, String>>,
    pub loc: Location,
}

/// A variable's value: plain text, or a secret read from the environment when a step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarValue {
    Text(String),
    Secret { env: String },
}

#[derive(Debug, Clone)]
pub struct Host {
    pub id: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Whether the inventory names the port and the user: when it does not, the user's ssh
    /// configuration may (see `ssh::config`), else 22 and root.
    pub port_set: bool,
    pub user_set: bool,
    pub site: Option<Sp<String>>,
    pub role: String,
    pub description: Option<String>,
    pub known_hosts: Option<String>,
    /// Private key to log in with; the ssh-agent or `--identity` when absent.
    pub identity: Option<String>,
    pub vars: IndexMap<String, VarValue>,
    /// How the networks of vm definitions are named on this host (over its site's).
    pub networks: Option<IndexMap<String, String>>,
    /// The folders a vm definition defined here may load a kernel, an initrd, a device tree
    /// or ACPI tables from (a direct kernel boot): [`BOOT_FOLDERS`] when the inventory does
    /// not say.
    pub boot_folders: Vec<String>,
    pub loc: Location,
}

/// Where a direct kernel boot's files may be when a host's `boot_folders` does not say: the
/// host's own kernels and libvirt's folder for boot files.
pub const BOOT_FOLDERS: [&str; 2] = ["/boot", "/var/lib/libvirt/boot"];

/// Where a service lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Nowhere,
    Host(Sp<String>),
    Vm(Sp<String>),
}

/// How a service's data reaches the recovery site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// Disk copies (replica points of its vm's disks, backup sets): the default.
    Disk,
    /// The application replicates it itself (a PostgreSQL standby, domain controllers): its
    /// RPO is judged by the lag its probe prints, never by a disk copy's age.
    Application {
        lag: LagProbe,
        /// The failover step a planned failover reads the lag just before (the switch), when
        /// it is not the first step that does without the primary.
        before: Option<Sp<String>>,
        /// The probe of the reverse direction (the primary side fed from the recovery side),
        /// read during a failback just before its step `before`.
        failback: Option<Box<FailbackLag>>,
    },
}

/// How a failback reads the lag of the reverse replication, and where in its runbook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailbackLag {
    pub probe: LagProbe,
    /// The failback step it is read just before (the switch back).
    pub before: Sp<String>,
}

/// How to read an application's replication lag: a command printing the lag in seconds,
/// run on a host (the standby, or a management host that asks it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LagProbe {
    pub host: Sp<String>,
    /// A command template, rendered on `host` like a runbook step's.
    pub command: Sp<String>,
    pub timeout: Duration,
}

/// The longest a lag probe may take: a probe is a query, not a job.
pub const LAG_TIMEOUT_MAX: Duration = Duration(600);
/// When a lag probe says nothing of its time.
pub const LAG_TIMEOUT_DEFAULT: Duration = Duration(30);

#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub description: Option<String>,
    pub kind: String,
    pub owner: Option<String>,
    pub rto: Duration,
    pub rpo: Option<Duration>,
    pub depends_on: Vec<Sp<String>>,
    pub placement: Placement,
    pub replication: Replication,
    pub loc: Location,
}

impl Service {
    pub fn vm(&self) -> Option<&str> {
        match &self.placement {
            Placement::Vm(v) => Some(v.as_str()),
            _ => None,
        }
    }

    pub fn host(&self) -> Option<&str> {
        match &self.placement {
            Placement::Host(h) => Some(h.as_str()),
            _ => None,
        }
    }

    /// The lag probe of a service its application replicates.
    pub fn lag(&self) -> Option<&LagProbe> {
        match &self.replication {
            Replication::Application { lag, .. } => Some(lag),
            Replication::Disk => None,
        }
    }

    /// The failover step a planned failover reads the lag just before, when the service
    /// names one.
    pub fn lag_before(&self) -> Option<&Sp<String>> {
        match &self.replication {
            Replication::Application { before, .. } => before.as_ref(),
            Replication::Disk => None,
        }
    }

    /// The probe of the reverse replication a failback reads, when the service has one.
    pub fn failback_lag(&self) -> Option<&FailbackLag> {
        match &self.replication {
            Replication::Application { failback, .. } => failback.as_deref(),
            Replication::Disk => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub id: String,
    pub name: String,
    pub driver: Sp<String>,
    pub primary: Sp<String>,
    pub recovery: Sp<String>,
    pub disks: Vec<String>,
    /// Where each of `disks` is written (same order).
    pub disks_at: Vec<Location>,
    pub address: Option<String>,
    pub recovery_address: Option<String>,
    pub retention: u32,
    pub vmid: Option<u32>,
    /// The RPO its own disk copies are judged against, whatever the services on it say.
    pub rpo: Option<Duration>,
    /// Its NICs keep their MAC addresses when it is defined on the other site (`macs =
    /// "keep"`, the default), or get new ones from the hypervisor (`"new"`).
    pub keep_macs: bool,
    /// Copies are of the disk as the guest sees it (raw images), read through QEMU: a running
    /// libvirt domain's only where its dirty bitmaps say it changed since the last point.
    pub changed_blocks: bool,
    pub loc: Location,
}

#[derive(Debug, Clone)]
pub struct BackupSet {
    pub id: String,
    pub description: Option<String>,
    pub source_host: Sp<String>,
    pub source_path: String,
    pub dest_host: Sp<String>,
    pub dest_path: String,
    /// Where `source_path` and `dest_path` are written (the overlay's, when it sets them).
    pub source_at: Location,
    pub dest_at: Location,
    pub retention: u32,
    pub loc: Location,
}

/// The actions a hypervisor driver implements as command templates.
pub const VM_ACTIONS: &[&str] = &[
    "start",
    "stop",
    "status",
    "drill-status",
    "autostart-off",
    "autostart-on",
    "drill-start",
    "drill-stop",
    "replicate-check",
    "replicate-begin",
    "replicate-end",
    "drill-network-check",
    "definition",
    "define",
    "undefine",
];

/// A hypervisor driver: one command template per VM action.
#[derive(Debug, Clone)]
pub struct Driver {
    pub id: String,
    pub actions: IndexMap<String, Sp<String>>,
    /// The format of what its `definition` action prints (and `define` reads).
    pub definition_format: Option<crate::vmdef::Format>,
    /// Its `replicate-begin` leaves a running vm's disk files written while they are read (a
    /// guest filesystem freeze, where swap still writes): such a file is copied all the same.
    /// Otherwise a disk file written during its read is refused (a copy of no instant).
    pub reads_live: bool,
    pub loc: Location,
}

impl Driver {
    /// Whether its vms are defined on the host they start on from their points'
    /// definitions: it captures (`definition`), defines (`define`) and names the format.
    pub fn defines(&self) -> bool {
        self.definition_format.is_some()
            && self.actions.contains_key("definition")
            && self.actions.contains_key("define")
    }
}

impl Inventory {
    /// The network mapping used when a vm is defined on `host`: the host's, else its site's.
    pub fn networks_of(&self, host: &str) -> Option<&IndexMap<String, String>> {
        let h = self.hosts.get(host)?;
        h.networks
            .as_ref()
            .or_else(|| self.site_of(host).and_then(|s| s.networks.as_ref()))
    }

    /// The drill network of `host` for a vm of `driver` (its `drill_network`, else the
    /// driver's default: a Proxmox node's is a bridge): where a drill puts every NIC of the
    /// copies it defines there.
    pub fn drill_network_of(&self, host: &str, driver: &str) -> String {
        match self
            .hosts
            .get(host)
            .and_then(|h| h.vars.get("drill_network"))
        {
            Some(VarValue::Text(t)) => t.clone(),
            // Refused when the inventory is loaded: the network is known when the plan is made.
            Some(VarValue::Secret { .. }) | None => var_default("drill_network", Some(driver))
                .unwrap_or(DEFAULT_DRILL_NETWORK)
                .to_string(),
        }
    }
}

/// Everything in `inventory/`.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub sites: IndexMap<String, Site>,
    pub hosts: IndexMap<String, Host>,
    pub services: IndexMap<String, Service>,
    pub vms: IndexMap<String, Vm>,
    pub backups: IndexMap<String, BackupSet>,
    pub drivers: IndexMap<String, Driver>,
}

impl Inventory {
    pub fn site_of(&self, host: &str) -> Option<&Site> {
        let site = self.hosts.get(host)?.site.as_ref()?;
        self.sites.get(site.as_str())
    }
}

/// `address:port` for connecting, an IPv6 address in brackets (`[2001:db8::1]:22`).
pub fn endpoint(address: &str, port: u16) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

pub use crate::sources::{BUILTIN_DRIVERS, BUILTIN_DRIVERS_PATH};

/// Reads every inventory file of `sources` (and the built-in drivers, which must be the first
/// file given) into an [`Inventory`], collecting every problem.
pub fn load(sources: &Sources, files: &[FileId], diags: &mut Vec<Diagnostic>) -> Inventory {
    let mut inv = Inventory::default();
    for &file in files {
        let text = sources.map.text(file);
        let doc = parse_document(file, text, diags);
        let mut root = Table::root(file, &doc, "the inventory");
        let builtin = sources.map.path(file).to_str() == Some(BUILTIN_DRIVERS_PATH);
        for_each_entry(&mut root, "sites", diags, |id, t, diags| {
            let site = read_site(id, t, diags);
            insert_unique(&mut inv.sites, "site", id, site, |s| &s.loc, diags);
        });
        for_each_entry(&mut root, "hosts", diags, |id, t, diags| {
            let host = read_host(id, t, diags);
            insert_unique(&mut inv.hosts, "host", id, host, |h| &h.loc, diags);
        });
        for_each_entry(&mut root, "services", diags, |id, t, diags| {
            let service = read_service(id, t, diags);
            insert_unique(&mut inv.services, "service", id, service, |s| &s.loc, diags);
        });
        for_each_entry(&mut root, "vms", diags, |id, t, diags| {
            let vm = read_vm(id, t, diags);
            insert_unique(&mut inv.vms, "vm", id, vm, |v| &v.loc, diags);
        });
        for_each_entry(&mut root, "backups", diags, |id, t, diags| {
            let set = read_backup_set(id, t, diags);
            insert_unique(&mut inv.backups, "backup set", id, set, |b| &b.loc, diags);
        });
        for_each_entry(&mut root, "drivers", diags, |id, t, diags| {
            let mut actions = IndexMap::new();
            for action in VM_ACTIONS {
                if let Some(cmd) = t.text(action, diags) {
                    actions.insert(action.to_string(), cmd);
                }
            }
            let definition_format = t
                .choice("definition_format", crate::vmdef::Format::NAMES, diags)
                .and_then(|f| crate::vmdef::Format::parse(&f.value));
            let reads_live = t.bool("replicate_reads_live", diags);
            match inv.drivers.get_mut(&id.value) {
                // An inventory driver of a built-in name overrides the actions it names.
                Some(existing) if !builtin && existing_is_builtin(sources, existing) => {
                    existing.actions.extend(actions);
                    if definition_format.is_some() {
                        existing.definition_format = definition_format;
                    }
                    if let Some(live) = reads_live {
                        existing.reads_live = live;
                    }
                    existing.loc = id.loc.clone();
                }
                _ => {
                    let driver = Driver {
                        id: id.value.clone(),
                        actions,
                        definition_format,
                        reads_live: reads_live.unwrap_or(false),
                        loc: id.loc.clone(),
                    };
                    insert_unique(&mut inv.drivers, "driver", id, driver, |d| &d.loc, diags);
                }
            }
        });
        root.finish(diags);
    }
    for &file in &sources.overlays {
        apply_overlay(&mut inv, file, sources.map.text(file), diags);
    }
    check_references(&inv, diags);
    check_proxmox(&inv, diags);
    check_live_reads(&inv, diags);
    inv
}

/// A site: its role and networks.
fn read_site(id: &Sp<String>, t: &mut Table<'_, '_>, diags: &mut Vec<Diagnostic>) -> Site {
    let role = t.req_choice("role", SITE_ROLES, diags);
    let networks = read_networks(t, diags);
    Site {
        id: id.value.clone(),
        description: t.str("description", diags).map(|s| s.value),
        role: role.and_then(|r| SiteRole::parse(&r.value)),
        networks,
        loc: id.loc.clone(),
    }
}

/// A host: how to reach it, where it is, its variables and networks.
fn read_host(id: &Sp<String>, t: &mut Table<'_, '_>, diags: &mut Vec<Diagnostic>) -> Host {
    let address = t
        .req_address("address", diags)
        .map(|s| s.value)
        .unwrap_or_default();
    let port = t.int("port", 1, 65535, diags).map(|p| p.value as u16);
    let user = t.name("user", diags).map(|s| s.value);
    let (port_set, user_set) = (port.is_some(), user.is_some());
    let port = port.unwrap_or(22);
    let user = user.unwrap_or_else(|| "root".into());
    let site = t.req_text("site", diags);
    let role = t
        .req_choice("role", HOST_ROLES, diags)
        .map(|s| s.value)
        .unwrap_or_default();
    let description = t.str("description", diags).map(|s| s.value);
    let known_hosts = t.text("known_hosts", diags).map(|s| s.value);
    let identity = t.text("identity", diags).map(|s| s.value);
    let vars = read_vars(t, diags);
    let networks = read_networks(t, diags);
    let boot_folders = read_boot_folders(t, diags);
    Host {
        networks,
        boot_folders,
        id: id.value.clone(),
        address,
        port,
        user,
        port_set,
        user_set,
        site,
        role,
        description,
        known_hosts,
        identity,
        vars,
        loc: id.loc.clone(),
    }
}

/// A service: its targets, dependencies, placement and replication.
fn read_service(id: &Sp<String>, t: &mut Table<'_, '_>, diags: &mut Vec<Diagnostic>) -> Service {
    let description = t.str("description", diags).map(|s| s.value);
    let kind = t
        .req_choice("kind", SERVICE_KINDS, diags)
        .map(|s| s.value)
        .unwrap_or_default();
    let owner = t.str("owner", diags).map(|s| s.value);
    let rto = t
        .req_positive_duration(
            "rto",
            "an RTO of zero can never be met: write the real target, e.g. \"4h\"",
            diags,
        )
        .map(|d| d.value);
    let rpo = t
        .positive_duration("rpo", "no copy is ever zero seconds old: write the data loss the service can bear, e.g. \"15m\"", diags)
        .map(|d| d.value);
    let depends_on = non_blank(t.str_list("depends_on", diags), "depends_on", id, diags);
    let replication = read_replication(t, id, rpo.is_some(), diags);
    let host = t.text("host", diags);
    let vm = t.text("vm", diags);
    let placement = match (host, vm) {
        (Some(h), None) => Placement::Host(h),
        (None, Some(v)) => Placement::Vm(v),
        (None, None) => Placement::Nowhere,
        (Some(_), Some(v)) => {
            diags.push(
                Diagnostic::error(format!("service `{}` has both `host` and `vm`", id.value))
                    .at(v.loc.clone())
                    .hint("a service lives on one host or one vm: keep one of the two"),
            );
            Placement::Vm(v)
        }
    };
    Service {
        id: id.value.clone(),
        description,
        kind,
        owner,
        rto: rto.unwrap_or_default(),
        rpo,
        depends_on,
        placement,
        replication,
        loc: id.loc.clone(),
    }
}

/// A vm: its driver, hosts, disks, addresses and how its copies are kept.
fn read_vm(id: &Sp<String>, t: &mut Table<'_, '_>, diags: &mut Vec<Diagnostic>) -> Vm {
    let name = t
        .name("name", diags)
        .map(|s| s.value)
        .unwrap_or_else(|| id.value.clone());
    let placeholder = || Sp::new(String::new(), id.loc.clone());
    let driver = t.req_text("driver", diags).unwrap_or_else(placeholder);
    let primary = t.req_text("primary", diags).unwrap_or_else(placeholder);
    let recovery = t.req_text("recovery", diags).unwrap_or_else(placeholder);
    let mut disks = Vec::new();
    let mut disks_at = Vec::new();
    let listed = t.str_list("disks", diags);
    // A vm of no disk would be "replicated" and "recovered" with nothing of its data.
    if listed.is_empty() {
        diags.push(
            Diagnostic::error(format!("vm `{}` has no disks", id.value))
                .at(id.loc.clone())
                .hint(format!(
                    "its replication would copy nothing and a drill or a failover would start it with no data: list its disk files in `disks`, relative to its hosts' `images_dir` (e.g. disks = [\"{}.qcow2\"])",
                    id.value
                )),
        );
    }
    for d in listed {
        match path_problem(&d.value, false) {
            None => {
                disks.push(d.value);
                disks_at.push(d.loc);
            }
            Some(problem) => diags.push(
                Diagnostic::error(format!("a disk of vm `{}` {problem}", id.value))
                    .at(d.loc)
                    .hint(REL_PATH_HINT),
            ),
        }
    }
    let address = t.address("address", diags).map(|s| s.value);
    let recovery_address = t.address("recovery_address", diags).map(|s| s.value);
    let retention = t
        .int("retention", 1, 1000, diags)
        .map(|r| r.value as u32)
        .unwrap_or(7);
    let vmid = t.int("vmid", 1, 999_999_999, diags).map(|r| r.value as u32);
    let rpo = t
        .positive_duration(
            "rpo",
            "no copy is ever zero seconds old: write the age its disk copies may reach, e.g. \"1d\"",
            diags,
        )
        .map(|d| d.value);
    let keep_macs = t
        .choice("macs", &["keep", "new"], diags)
        .is_none_or(|m| m.value == "keep");
    let changed_blocks = match t.located_bool("changed_blocks", diags) {
        // Read through libvirt's backup API and checkpoints: no other driver has them,
        // and a setting that did nothing would promise copies it does not make.
        Some(b) if b.value && driver.value != "libvirt" => {
            diags.push(
                Diagnostic::error(format!(
                    "vm `{}`: `changed_blocks` is for vms of the libvirt driver, and it uses `{}`",
                    id.value, driver.value
                ))
                .at(b.loc)
                .hint("remove `changed_blocks`: its disks are copied by reading every block"),
            );
            false
        }
        Some(b) => b.value,
        None => false,
    };
    Vm {
        keep_macs,
        id: id.value.clone(),
        name,
        driver,
        primary,
        recovery,
        disks,
        disks_at,
        address,
        recovery_address,
        retention,
        vmid,
        rpo,
        changed_blocks,
        loc: id.loc.clone(),
    }
}

/// A backup set: which folder is copied from which host to which.
fn read_backup_set(
    id: &Sp<String>,
    t: &mut Table<'_, '_>,
    diags: &mut Vec<Diagnostic>,
) -> BackupSet {
    let placeholder = || Sp::new(String::new(), id.loc.clone());
    let description = t.str("description", diags).map(|s| s.value);
    let source_host = t.req_text("source_host", diags).unwrap_or_else(placeholder);
    let source_path = t
        .req_abs_path("source_path", diags)
        .unwrap_or_else(placeholder);
    let dest_host = t.req_text("dest_host", diags).unwrap_or_else(placeholder);
    let dest_path = t
        .req_abs_path("dest_path", diags)
        .unwrap_or_else(placeholder);
    let retention = t
        .int("retention", 1, 1000, diags)
        .map(|r| r.value as u32)
        .unwrap_or(7);
    BackupSet {
        id: id.value.clone(),
        description,
        source_host,
        source_path: source_path.value,
        dest_host,
        dest_path: dest_path.value,
        source_at: source_path.loc,
        dest_at: dest_path.loc,
        retention,
        loc: id.loc.clone(),
    }
}

/// A driver that reads disks while the guest may write them (`replicate_reads_live`) holds the
/// guest still around the read and says afterwards whether it stayed so: without its
/// `replicate-begin` and `replicate-end`, every copy would be read while written and recorded
/// as one instant.
fn check_live_reads(inv: &Inventory, diags: &mut Vec<Diagnostic>) {
    // Whatever it reads: a freeze with no end is never undone (a guest frozen, or its
    // writes going to an overlay, for good).
    for driver in inv.drivers.values().filter(|d| {
        !d.reads_live
            && d.actions.contains_key("replicate-begin")
            && !d.actions.contains_key("replicate-end")
    }) {
        diags.push(
            Diagnostic::error(format!(
                "driver `{}` has a `replicate-begin` and no `replicate-end`",
                driver.id
            ))
            .at(driver.loc.clone())
            .hint("what `replicate-begin` does to a running vm (a snapshot, a freeze) must be undone once its disks are read: add a `replicate-end` that merges the snapshot back (or thaws the guest)"),
        );
    }
    for driver in inv.drivers.values().filter(|d| d.reads_live) {
        let missing: Vec<&str> = ["replicate-begin", "replicate-end"]
            .into_iter()
            .filter(|a| !driver.actions.contains_key(*a))
            .collect();
        if !missing.is_empty() {
            diags.push(
                Diagnostic::error(format!(
                    "driver `{}` reads its vms' disks live (`replicate_reads_live = true`) and has no `{}`",
                    driver.id,
                    missing.join("` or `")
                ))
                .at(driver.loc.clone())
                .hint("a disk read while its guest writes it is a copy of no instant: add a `replicate-begin` that freezes the guest and a `replicate-end` that says whether the freeze held (exit 65 when it did not), or remove `replicate_reads_live`"),
            );
        }
    }
}

/// A vm of the built-in `proxmox` driver names its disks as Proxmox's directory storage does
/// (`<vmid>/vm-<vmid>-<name>.<qcow2|raw|vmdk>` under the storage's `images` folder, the host's
/// `images_dir`) and has a vmid Proxmox accepts (100 and up; its drill copy takes
/// 900000 + vmid, at most 999999999); its recovery node's drill network is a bridge name
/// Linux accepts (at most 15 characters).
fn check_proxmox(inv: &Inventory, diags: &mut Vec<Diagnostic>) {
    let mut bridges_told = std::collections::BTreeSet::new();
    for vm in inv.vms.values().filter(|v| v.driver.value == "proxmox") {
        if let Some(host) = inv.hosts.get(&vm.recovery.value)
            && let Some(VarValue::Text(bridge)) = host.vars.get("drill_network")
            && bridge.len() > 15
            && bridges_told.insert(host.id.clone())
        {
            diags.push(
                Diagnostic::error(format!(
                    "host `{}`: drill_network `{bridge}` is not a bridge name (at most 15 characters), and the proxmox vm `{}` is drilled there",
                    host.id, vm.id
                ))
                .at(host.loc.clone())
                .hint(format!(
                    "a Proxmox node's drill network is a Linux bridge, such as `{PROXMOX_DRILL_BRIDGE}`"
                )),
            );
        }
        let Some(vmid) = vm.vmid else {
            diags.push(
                Diagnostic::error(format!(
                    "vm `{}` uses the proxmox driver but has no `vmid`",
                    vm.id
                ))
                .at(vm.loc.clone())
                .hint("add its Proxmox VE id: `vmid = 120`"),
            );
            continue;
        };
        if !(100..=999_099_999).contains(&vmid) {
            diags.push(
                Diagnostic::error(format!(
                    "vm `{}`: vmid {vmid} is not one the proxmox driver can use",
                    vm.id
                ))
                .at(vm.loc.clone())
                .hint("Proxmox VE reserves the ids below 100, and a drill copy takes the id 900000 + vmid (at most 999999999)"),
            );
        }
        let prefix = format!("{vmid}/vm-{vmid}-");
        for (disk, loc) in vm.disks.iter().zip(&vm.disks_at) {
            let name = disk.strip_prefix(&prefix);
            let format_ok = name.is_some_and(|n| {
                !n.contains('/')
                    && n.rsplit_once('.').is_some_and(|(stem, ext)| {
                        !stem.is_empty() && matches!(ext, "qcow2" | "raw" | "vmdk")
                    })
            });
            if !format_ok {
                diags.push(
                    Diagnostic::error(format!(
                        "disk `{disk}` of vm `{}` is not a volume of vmid {vmid} in Proxmox's layout",
                        vm.id
                    ))
                    .at(loc.clone())
                    .hint(format!(
                        "a directory storage keeps vmid {vmid}'s disks as `{vmid}/vm-{vmid}-disk-N.qcow2` (or .raw, .vmdk) in its `images` folder: `pvesm path local:{vmid}/vm-{vmid}-disk-0.qcow2` prints the file"
                    )),
                );
            }
        }
    }
}

/// Applies an overlay: for an environment such as the lab, new values for some keys of
/// existing hosts, vms and backup sets (addresses, ports, directories, drivers). It cannot add
/// or remove anything, so the runbooks stay the same.
fn apply_overlay(inv: &mut Inventory, file: FileId, text: &str, diags: &mut Vec<Diagnostic>) {
    let doc = parse_document(file, text, diags);
    let mut root = Table::root(file, &doc, "the overlay");
    for_each_entry(&mut root, "hosts", diags, |id, t, diags| {
        let Some(host) = inv.hosts.get_mut(&id.value) else {
            diags.push(
                unknown("host", id, inv.hosts.keys())
                    .label("an overlay changes existing hosts only"),
            );
            return;
        };
        if let Some(a) = t.address("address", diags) {
            host.address = a.value;
        }
        if let Some(p) = t.int("port", 1, 65535, diags) {
            host.port = p.value as u16;
            host.port_set = true;
        }
        if let Some(u) = t.name("user", diags) {
            host.user = u.value;
            host.user_set = true;
        }
        if let Some(k) = t.text("known_hosts", diags) {
            host.known_hosts = Some(k.value);
        }
        if let Some(k) = t.text("identity", diags) {
            host.identity = Some(k.value);
        }
        host.vars.extend(read_vars(t, diags));
    });
    for_each_entry(&mut root, "vms", diags, |id, t, diags| {
        let Some(vm) = inv.vms.get_mut(&id.value) else {
            diags.push(
                unknown("vm", id, inv.vms.keys()).label("an overlay changes existing vms only"),
            );
            return;
        };
        if let Some(d) = t.text("driver", diags) {
            vm.driver = d;
        }
        if let Some(a) = t.address("address", diags) {
            vm.address = Some(a.value);
        }
        if let Some(a) = t.address("recovery_address", diags) {
            vm.recovery_address = Some(a.value);
        }
    });
    for_each_entry(&mut root, "backups", diags, |id, t, diags| {
        let Some(set) = inv.backups.get_mut(&id.value) else {
            diags.push(
                unknown("backup set", id, inv.backups.keys())
                    .label("an overlay changes existing backup sets only"),
            );
            return;
        };
        if let Some(p) = t.abs_path("source_path", diags) {
            set.source_path = p.value;
            set.source_at = p.loc;
        }
        if let Some(p) = t.abs_path("dest_path", diags) {
            set.dest_path = p.value;
            set.dest_at = p.loc;
        }
    });
    root.finish(diags);
}

fn existing_is_builtin(sources: &Sources, d: &Driver) -> bool {
    sources.map.path(d.loc.file).to_str() == Some(BUILTIN_DRIVERS_PATH)
}

/// Calls `f` for every `[section.ID]` table of a file.
fn for_each_entry<'t, 'i>(
    root: &mut Table<'t, 'i>,
    section: &'static str,
    diags: &mut Vec<Diagnostic>,
    mut f: impl FnMut(&Sp<String>, &mut Table<'t, 'i>, &mut Vec<Diagnostic>),
) {
    let Some(value) = root.get(section) else {
        return;
    };
    let singular = section.trim_end_matches('s');
    let Some(mut table) = Table::of(root.file, value, format!("`[{section}]`"), diags) else {
        return;
    };
    for (id, v) in table.entries() {
        check_id(&id, diags);
        let what = format!(
            "{} `{}`",
            singular.replace("backup", "backup set"),
            id.value
        );
        if let Some(mut t) = Table::of(root.file, v, what, diags) {
            f(&id, &mut t, diags);
            t.finish(diags);
        }
    }
}

/// Ids are used in commands, file names and step ids: keep them plain.
fn check_id(id: &Sp<String>, diags: &mut Vec<Diagnostic>) {
    let ok = !id.value.is_empty()
        && id
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && id
            .value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if !ok {
        diags.push(
            Diagnostic::error(format!("invalid id `{}`", id.value))
                .at(id.loc.clone())
                .hint("ids use letters, digits, `-` and `_`, and start with a letter or digit"),
        );
    }
}

fn insert_unique<T>(
    map: &mut IndexMap<String, T>,
    what: &str,
    id: &Sp<String>,
    item: T,
    loc: impl Fn(&T) -> &Location,
    diags: &mut Vec<Diagnostic>,
) {
    if let Some(first) = map.get(&id.value) {
        diags.push(
            Diagnostic::error(format!("{what} `{}` is defined twice", id.value))
                .at(id.loc.clone())
                .note("first defined here", loc(first).clone())
                .hint("ids must be unique across all files of the folder"),
        );
        return;
    }
    map.insert(id.value.clone(), item);
}

pub const REPLICATION_KINDS: &[&str] = &["disk", "application"];

/// `replication`, `lag` and `failback_lag` of a service: disk copies by default; the
/// application's own replication needs a lag probe (and an RPO to judge the lag by), and only
/// it takes one, and a probe of the reverse direction for failbacks.
fn read_replication(
    t: &mut Table<'_, '_>,
    id: &Sp<String>,
    has_rpo: bool,
    diags: &mut Vec<Diagnostic>,
) -> Replication {
    let kind = t.choice("replication", REPLICATION_KINDS, diags);
    let lag_value = t.get("lag");
    let back_value = t.get("failback_lag");
    let by_app = kind.as_ref().is_some_and(|k| k.value == "application");
    let failback = back_value.and_then(|value| {
        let what = format!("`failback_lag` of service `{}`", id.value);
        let mut back = Table::of(t.file, value, what, diags);
        let lt = back.as_mut()?;
        let before = lt.req_text("before", diags);
        let probe = read_probe(lt, id, diags);
        if let Some(b) = back {
            b.finish(diags);
        }
        if !by_app {
            diags.push(
                Diagnostic::error(format!(
                    "service `{}` has a `failback_lag` probe but its data is replicated by disk copies",
                    id.value
                ))
                .at(Location::new(t.file, value.span()))
                .hint("only a service with `replication = \"application\"` reads a lag; remove `failback_lag`"),
            );
        }
        Some(Box::new(FailbackLag {
            probe: probe?,
            before: before?,
        }))
    });
    let Some(value) = lag_value else {
        if let Some(k) = kind.filter(|_| by_app) {
            diags.push(
                Diagnostic::error(format!(
                    "service `{}` is replicated by the application but has no `lag`",
                    id.value
                ))
                .at(k.loc)
                .hint("say how to read the lag in seconds, e.g. `lag = { host = \"db-standby\", command = \"psql -Atc 'select extract(epoch from now() - pg_last_xact_replay_timestamp())'\" }`"),
            );
        }
        return Replication::Disk;
    };
    let mut lag = Table::of(
        t.file,
        value,
        format!("`lag` of service `{}`", id.value),
        diags,
    );
    let Some(lt) = lag.as_mut() else {
        return Replication::Disk;
    };
    let before = lt.text("before", diags);
    let probe = read_probe(lt, id, diags);
    if let Some(l) = lag {
        l.finish(diags);
    }
    if !by_app {
        let d = Diagnostic::error(format!(
            "service `{}` has a `lag` probe but its data is replicated by disk copies",
            id.value
        ))
        .at(Location::new(t.file, value.span()))
        .hint("add `replication = \"application\"` when the application replicates it (its RPO is then judged by the lag), or remove `lag`");
        diags.push(d);
        return Replication::Disk;
    }
    if !has_rpo {
        diags.push(
            Diagnostic::error(format!(
                "service `{}` is replicated by the application but has no `rpo`",
                id.value
            ))
            .at(id.loc.clone())
            .hint("the lag is judged against the RPO target: add e.g. `rpo = \"15m\"`"),
        );
    }
    match probe {
        Some(lag) => Replication::Application {
            lag,
            before,
            failback,
        },
        None => Replication::Disk,
    }
}

/// The `host`, `command` and `timeout` of a lag probe.
fn read_probe(
    lt: &mut Table<'_, '_>,
    id: &Sp<String>,
    diags: &mut Vec<Diagnostic>,
) -> Option<LagProbe> {
    let host = lt.req_text("host", diags);
    let command = lt.req_text("command", diags);
    let timeout = lt.positive_duration(
        "timeout",
        "a probe needs time to answer: write how long it may take, e.g. \"30s\"",
        diags,
    );
    if let Some(tmo) = &timeout
        && tmo.value > LAG_TIMEOUT_MAX
    {
        diags.push(
            Diagnostic::error(format!(
                "`timeout` of the lag probe of service `{}` is {}, more than {}",
                id.value, tmo.value, LAG_TIMEOUT_MAX
            ))
            .at(tmo.loc.clone())
            .hint("a lag probe is a query that answers in seconds: a probe that needs longer is stuck"),
        );
    }
    Some(LagProbe {
        host: host?,
        command: command?,
        timeout: timeout
            .map(|t| t.value)
            .filter(|t| *t <= LAG_TIMEOUT_MAX)
            .unwrap_or(LAG_TIMEOUT_DEFAULT),
    })
}

/// Host variables that name a folder reprise (or its drivers) put files in: absolute paths.
pub const PATH_VARS: &[&str] = &["images_dir", "overlays_dir", "pve_dir"];

/// Host variables that have a value when the inventory gives none: the recovery host's
/// isolated drill network (`drill_network`) and the address the host takes on it when a
/// driver creates it (`drill_address`, `ADDRESS/PREFIX`; none by default).
pub const VAR_DEFAULTS: &[(&str, &str)] = &[
    ("drill_network", DEFAULT_DRILL_NETWORK),
    ("drill_address", ""),
];

/// The drill network of a recovery host that names none.
pub const DEFAULT_DRILL_NETWORK: &str = "reprise-drill";

/// The drill network of a Proxmox node that names none: a Linux bridge (Proxmox's `vmbrN`
/// naming), where libvirt's is a network object.
pub const PROXMOX_DRILL_BRIDGE: &str = "vmbr-drill";

/// The value a host variable of [`VAR_DEFAULTS`] takes when the host does not give it, for a
/// vm of `driver` (`None` for a step about no vm): a Proxmox node's drill network is the bridge
/// [`PROXMOX_DRILL_BRIDGE`].
pub fn var_default(name: &str, driver: Option<&str>) -> Option<&'static str> {
    match (name, driver) {
        ("drill_network", Some("proxmox")) => Some(PROXMOX_DRILL_BRIDGE),
        // The folder of Proxmox's cluster file system (its vm configurations under
        // `qemu-server/`).
        ("pve_dir", Some("proxmox")) => Some("/etc/pve"),
        _ => VAR_DEFAULTS
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| *v),
    }
}

/// What is wrong with a value of `drill_network` or `drill_address`, if anything.
fn drill_var_problem(key: &str, value: &str) -> Option<String> {
    match key {
        "drill_network" => {
            let plain = !value.is_empty()
                && value.len() <= 64
                && !value.starts_with(['-', '.'])
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            (!plain).then(|| {
                format!(
                    "`{}` is not a plain network name (letters, digits, `-`, `_`, `.`, at most 64)",
                    value.escape_debug()
                )
            })
        }
        "drill_address" if value.is_empty() => None,
        "drill_address" => {
            let ok = value.split_once('/').is_some_and(|(ip, prefix)| {
                let max = match ip.parse::<std::net::IpAddr>() {
                    Ok(std::net::IpAddr::V4(_)) => 32,
                    Ok(std::net::IpAddr::V6(_)) => 128,
                    Err(_) => return false,
                };
                !prefix.starts_with('+')
                    && prefix.parse::<u8>().is_ok_and(|p| (1..=max).contains(&p))
            });
            (!ok).then(|| {
                format!(
                    "`{}` is not an address with its prefix length (e.g. \"10.126.0.1/24\")",
                    value.escape_debug()
                )
            })
        }
        _ => None,
    }
}

/// The items of a list of names, without the blank ones (reported).
fn non_blank(
    items: Vec<Sp<String>>,
    key: &str,
    owner: &Sp<String>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Sp<String>> {
    items
        .into_iter()
        .filter(|item| {
            let blank = item.value.trim().is_empty();
            if blank {
                diags.push(
                    Diagnostic::error(format!("an item of `{key}` of `{}` is empty", owner.value))
                        .at(item.loc.clone())
                        .hint("write an id, or remove the item"),
                );
            }
            !blank
        })
        .collect()
}

/// A host's `boot_folders`: absolute folders, none of them `/` nor climbing with `..`
/// ([`BOOT_FOLDERS`] when absent).
fn read_boot_folders(t: &mut Table<'_, '_>, diags: &mut Vec<Diagnostic>) -> Vec<String> {
    if t.get("boot_folders").is_none() {
        return BOOT_FOLDERS.iter().map(|f| f.to_string()).collect();
    }
    let mut out = Vec::new();
    for f in t.str_list("boot_folders", diags) {
        let p = std::path::Path::new(&f.value);
        let problem = if !p.is_absolute() {
            Some("is not an absolute path")
        } else if p.components().any(|c| c == std::path::Component::ParentDir) {
            Some("climbs with `..`")
        } else if p.parent().is_none() {
            Some("is the whole file system")
        } else {
            None
        };
        match problem {
            None => out.push(f.value.trim_end_matches('/').to_string()),
            Some(problem) => diags.push(
                Diagnostic::error(format!("boot folder `{}` {problem}", f.value))
                    .at(f.loc.clone())
                    .hint("name a folder that holds only kernels and initrds, e.g. `boot_folders = [\"/var/lib/libvirt/boot\"]`"),
            ),
        }
    }
    out
}

/// A `networks` table: network or bridge names of vm definitions, each to the name it has
/// here; both plain names.
fn read_networks(
    t: &mut Table<'_, '_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<IndexMap<String, String>> {
    let v = t.get("networks")?;
    let what = format!("`networks` of {}", t.what);
    let mut table = Table::of(t.file, v, what, diags)?;
    let mut map = IndexMap::new();
    for (key, value) in table.entries() {
        let loc = Location::new(t.file, value.span());
        match value.get_ref() {
            DeValue::String(to) => match crate::fields::name_problem(to).or_else(|| crate::fields::name_problem(&key.value)) {
                None => {
                    map.insert(key.value.clone(), to.to_string());
                }
                Some(problem) => diags.push(
                    Diagnostic::error(format!("network mapping `{}` {problem}", key.value))
                        .at(loc)
                        .hint("write the name of a libvirt network or bridge, e.g. `br-prod = \"br-pra\"`"),
                ),
            },
            other => diags.push(
                Diagnostic::error(format!(
                    "network `{}` is mapped to a {}, not a name",
                    key.value,
                    crate::fields::type_name(other)
                ))
                .at(loc)
                .hint("write the name it has on this host, e.g. `br-prod = \"br-pra\"`"),
            ),
        }
    }
    Some(map)
}

fn read_vars(t: &mut Table<'_, '_>, diags: &mut Vec<Diagnostic>) -> IndexMap<String, VarValue> {
    let mut vars = IndexMap::new();
    let Some(v) = t.get("vars") else {
        return vars;
    };
    let what = format!("`vars` of {}", t.what);
    let Some(mut table) = Table::of(t.file, v, what, diags) else {
        return vars;
    };
    for (key, value) in table.entries() {
        if let Some(var) = read_var(t.file, &key, value, diags) {
            vars.insert(key.value.clone(), var);
        }
    }
    vars
}

fn read_var(
    file: FileId,
    key: &Sp<String>,
    value: &Value<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<VarValue> {
    let loc = Location::new(file, value.span());
    match value.get_ref() {
        DeValue::String(s) if PATH_VARS.contains(&key.value.as_str()) => {
            if let Some(problem) = path_problem(s, true) {
                diags.push(
                    Diagnostic::error(format!("variable `{}` {problem}", key.value))
                        .at(loc)
                        .hint(format!(
                            "reprise puts files under `{}` on the host: {ABS_PATH_HINT}",
                            key.value
                        )),
                );
                return None;
            }
            Some(VarValue::Text(s.to_string()))
        }
        DeValue::String(s) if VAR_DEFAULTS.iter().any(|(k, _)| *k == key.value) => {
            if let Some(problem) = drill_var_problem(&key.value, s) {
                diags.push(
                    Diagnostic::error(format!("variable `{}`: {problem}", key.value))
                        .at(loc)
                        .hint("the drill network is created and checked on the recovery host under this name and address"),
                );
                return None;
            }
            Some(VarValue::Text(s.to_string()))
        }
        DeValue::String(s) => Some(VarValue::Text(s.to_string())),
        // A drill copy is defined on the drill network when the plan is made: its name and
        // address are text, never read from the environment at run time.
        other if VAR_DEFAULTS.iter().any(|(k, _)| *k == key.value) => {
            diags.push(
                Diagnostic::error(format!(
                    "variable `{}` must be a string, not {}",
                    key.value,
                    type_name(other)
                ))
                .at(loc)
                .hint("the drill network is created and checked on the recovery host under this name and address"),
            );
            None
        }
        // A path reprise puts files under is a full path, written out: never a number, a
        // flag, or a value read from the environment at run time (which no check sees).
        other if PATH_VARS.contains(&key.value.as_str()) => {
            diags.push(
                Diagnostic::error(format!(
                    "variable `{}` must be a string, not {}",
                    key.value,
                    type_name(other)
                ))
                .at(loc)
                .hint(format!(
                    "reprise puts files under `{}` on the host: {ABS_PATH_HINT}",
                    key.value
                )),
            );
            None
        }
        DeValue::Integer(i) => Some(VarValue::Text(i.as_str().replace('_', ""))),
        DeValue::Boolean(b) => Some(VarValue::Text(b.to_string())),
        DeValue::Table(_) => {
            let mut t = Table::of(file, value, format!("variable `{}`", key.value), diags)?;
            let env = t.req_str("env", diags);
            t.finish(diags);
            let env = env?;
            let valid = !env.value.is_empty()
                && env
                    .value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                diags.push(
                    Diagnostic::error(format!("invalid environment variable name `{}`", env.value))
                        .at(env.loc)
                        .hint("environment variable names use letters, digits and `_`"),
                );
                return None;
            }
            Some(VarValue::Secret { env: env.value })
        }
        other => {
            diags.push(
                Diagnostic::error(format!(
                    "variable `{}` must be a string, a number, a boolean or {{ env = \"NAME\" }}, not {}",
                    key.value,
                    type_name(other)
                ))
                .at(loc),
            );
            None
        }
    }
}

/// An "unknown X" diagnostic with a suggestion from the known ids.
pub fn unknown<'a>(
    what: &str,
    name: &Sp<String>,
    known: impl IntoIterator<Item = &'a String>,
) -> Diagnostic {
    let known: Vec<&str> = known.into_iter().map(String::as_str).collect();
    let hint = did_you_mean(&name.value, known.iter().copied()).or_else(|| {
        (!known.is_empty() && known.len() <= 12)
            .then(|| format!("known {what}s: {}", known.join(", ")))
    });
    Diagnostic::error(format!("unknown {what} `{}`", name.value))
        .at(name.loc.clone())
        .hint_opt(hint)
}

fn check_ref<T>(
    what: &str,
    name: &Sp<String>,
    map: &IndexMap<String, T>,
    diags: &mut Vec<Diagnostic>,
) -> bool {
    if name.value.is_empty() {
        // A missing required field, already reported.
        return false;
    }
    if map.contains_key(&name.value) {
        return true;
    }
    diags.push(unknown(what, name, map.keys()));
    false
}

fn check_references(inv: &Inventory, diags: &mut Vec<Diagnostic>) {
    for host in inv.hosts.values() {
        if let Some(site) = &host.site {
            check_ref("site", site, &inv.sites, diags);
        }
    }
    for service in inv.services.values() {
        for dep in &service.depends_on {
            if dep.value == service.id {
                diags.push(
                    Diagnostic::error(format!("service `{}` depends on itself", service.id))
                        .at(dep.loc.clone())
                        .hint("remove it from its own `depends_on`"),
                );
            } else {
                check_ref("service", dep, &inv.services, diags);
            }
        }
        match &service.placement {
            Placement::Host(h) => {
                check_ref("host", h, &inv.hosts, diags);
            }
            Placement::Vm(v) => {
                check_ref("vm", v, &inv.vms, diags);
            }
            Placement::Nowhere => {}
        }
        if let Some(lag) = service.lag() {
            check_ref("host", &lag.host, &inv.hosts, diags);
        }
        if let Some(back) = service.failback_lag() {
            check_ref("host", &back.probe.host, &inv.hosts, diags);
        }
    }
    // `--accept-unverified all` means every vm: a vm or backup set named `all` could not be
    // named alone there, and asking for it would accept every vm's start unverified.
    for (what, id, loc) in inv
        .vms
        .values()
        .map(|v| ("vm", &v.id, &v.loc))
        .chain(inv.backups.values().map(|b| ("backup set", &b.id, &b.loc)))
        .filter(|(_, id, _)| id.as_str() == "all")
    {
        diags.push(
            Diagnostic::error(format!("{what} id `{id}` is reserved"))
                .at(loc.clone())
                .hint("`--accept-unverified all` means every vm: give it another id"),
        );
    }
    for vm in inv.vms.values() {
        check_ref("driver", &vm.driver, &inv.drivers, diags);
        if let (Some(p), Some(r)) = (
            inv.hosts.get(&vm.primary.value),
            inv.hosts.get(&vm.recovery.value),
        ) && p.id != r.id
            && machine_of(p) == machine_of(r)
        {
            diags.push(
                Diagnostic::error(format!(
                    "the primary host `{}` and the recovery host `{}` of vm `{}` are one machine (address `{}`, port {})",
                    p.id, r.id, vm.id, r.address, r.port
                ))
                .at(vm.recovery.loc.clone())
                .note("the primary host is defined here", p.loc.clone())
                .hint("its disks would be their own copies: the recovery host is another machine, so fix the address or port of one of them"),
            );
        }
        for (side, host, expected) in [
            ("primary", &vm.primary, SiteRole::Primary),
            ("recovery", &vm.recovery, SiteRole::Recovery),
        ] {
            if !check_ref("host", host, &inv.hosts, diags) {
                continue;
            }
            if let Some(site) = inv.site_of(&host.value)
                && let Some(role) = site.role
                && role != expected
            {
                diags.push(
                    Diagnostic::error(format!(
                        "the {side} host of vm `{}` is `{}`, on site `{}` which is a {} site",
                        vm.id,
                        host.value,
                        site.id,
                        role.as_str()
                    ))
                    .at(host.loc.clone())
                    .hint(format!(
                        "the {side} host must be on a {} site",
                        expected.as_str()
                    )),
                );
            }
        }
    }
    for set in inv.backups.values() {
        check_ref("host", &set.source_host, &inv.hosts, diags);
        check_ref("host", &set.dest_host, &inv.hosts, diags);
        // A vm and a backup set are named in the same places: one name for both would make
        // each of them act on whichever is looked up first, and `--point NAME=POINT` ask
        // both for one point.
        if let Some(vm) = inv.vms.get(&set.id) {
            diags.push(
                Diagnostic::error(format!(
                    "backup set `{}` has the id of vm `{}`",
                    set.id, vm.id
                ))
                .at(set.loc.clone())
                .note("the vm is defined here", vm.loc.clone())
                .hint("a vm and a backup set are named in the same places (`--point NAME=POINT`, `reprise points NAME`, `verify`, `release`): give one of them another id"),
            );
        }
    }
    check_sites_apart(inv, diags);
    check_vm_handles(inv, diags);
    check_virsh_names(inv, diags);
    check_shared_paths(inv, diags);
}

/// A vm whose driver runs `virsh` goes by a name `virsh` cannot take for another domain's
/// handle: it reads a name made only of digits as a running domain's id, and one of 32
/// hexadecimal digits (dashes anywhere) as a domain's UUID, before it reads it as a name:
/// `domstate`, `shutdown`, `dumpxml` or `undefine` would act on another vm.
fn check_virsh_names(inv: &Inventory, diags: &mut Vec<Diagnostic>) {
    for vm in inv.vms.values() {
        let virsh = inv
            .drivers
            .get(&vm.driver.value)
            .is_some_and(|d| d.actions.values().any(|a| a.value.contains("virsh")));
        if !virsh {
            continue;
        }
        let n = &vm.name;
        let id = n.chars().all(|c| c.is_ascii_digit());
        let uuid = n.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            && n.chars().filter(char::is_ascii_hexdigit).count() == 32;
        if !id && !uuid {
            continue;
        }
        diags.push(
            Diagnostic::error(format!(
                "vm `{}` goes by the name `{n}`, which `virsh` reads as a domain's {} before it reads it as a name: its driver's commands could act on another vm",
                vm.id,
                if id { "id" } else { "UUID" }
            ))
            .at(vm.loc.clone())
            .hint("give the domain a name with a letter other than a to f in it (`virsh domrename`), and set it here as `name`"),
        );
    }
}

/// No host of a recovery site is a host of a primary site under another id (one address and
/// port): a drill's steps on it, said not to touch production, would run on production.
fn check_sites_apart(inv: &Inventory, diags: &mut Vec<Diagnostic>) {
    let role = |h: &Host| inv.site_of(&h.id).and_then(|s| s.role);
    let primary: Vec<&Host> = inv
        .hosts
        .values()
        .filter(|h| role(h) == Some(SiteRole::Primary))
        .collect();
    for r in inv
        .hosts
        .values()
        .filter(|h| role(h) == Some(SiteRole::Recovery))
    {
        // A vm of these two hosts says it already, of its disks.
        let of_a_vm = |p: &Host| {
            inv.vms
                .values()
                .any(|v| v.primary.value == p.id && v.recovery.value == r.id)
        };
        if let Some(p) = primary
            .iter()
            .find(|p| machine_of(p) == machine_of(r) && !of_a_vm(p))
        {
            diags.push(
                Diagnostic::error(format!(
                    "host `{}` of a recovery site and host `{}` of a primary site are one machine (address `{}`, port {})",
                    r.id, p.id, r.address, r.port
                ))
                .at(r.loc.clone())
                .note("the primary site's host is defined here", p.loc.clone())
                .hint("what runs on the recovery site (a drill, said not to touch production) would run on production: fix the address or port of one of them"),
            );
        }
    }
}

/// The machine a host's address and port reach, as far as the inventory can tell: two host
/// ids with one address (its letters' case, a final dot and an IP address's spelling aside)
/// and one port are one machine.
pub(crate) fn machine_of(host: &Host) -> (String, u16) {
    let address = host.address.trim_end_matches('.').to_ascii_lowercase();
    let address = match address.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => address,
    };
    (address, host.port)
}

/// No two vms on one machine go by one name or one vmid, nor by the name or vmid a drill gives
/// the other's copy there (`drill-NAME`, 900000 + vmid): the hypervisor's commands for one
/// (start, stop, status, its definition) would act on the other.
fn check_vm_handles(inv: &Inventory, diags: &mut Vec<Diagnostic>) {
    use std::collections::hash_map::Entry;
    #[derive(PartialEq, Eq, Hash)]
    enum Handle {
        Name(String),
        Vmid(u32),
    }
    struct Holder<'a> {
        vm: &'a Vm,
        host: &'a str,
        drill: bool,
    }
    let mut seen: std::collections::HashMap<((String, u16), Handle), Holder<'_>> =
        Default::default();
    let mut told_pairs = std::collections::HashSet::new();
    for vm in inv.vms.values() {
        let sides = [(&vm.primary, false), (&vm.recovery, true)];
        for (host, recovery) in sides {
            let Some(h) = inv.hosts.get(&host.value) else {
                continue;
            };
            let mut handles = vec![(Handle::Name(vm.name.clone()), false)];
            handles.extend(vm.vmid.map(|id| (Handle::Vmid(id), false)));
            if recovery {
                handles.push((Handle::Name(format!("drill-{}", vm.name)), true));
                handles.extend(vm.vmid.map(|id| (Handle::Vmid(900_000 + id), true)));
            }
            for (handle, drill) in handles {
                let who = |vm: &Vm, drill: bool| match drill {
                    true => format!("the drill copy of vm `{}`", vm.id),
                    false => format!("vm `{}`", vm.id),
                };
                match seen.entry((machine_of(h), handle)) {
                    Entry::Vacant(e) => {
                        e.insert(Holder {
                            vm,
                            host: &h.id,
                            drill,
                        });
                    }
                    Entry::Occupied(e) if e.get().vm.id == vm.id => {}
                    Entry::Occupied(e) => {
                        let other = e.get();
                        // One error a pair of vms (one name on both of their hosts).
                        if !told_pairs.insert((vm.id.as_str(), other.vm.id.as_str())) {
                            continue;
                        }
                        let (key, handle) = e.key();
                        let field = match handle {
                            Handle::Name(_) => "name",
                            Handle::Vmid(_) => "vmid",
                        };
                        let at = match other.host == h.id {
                            true => format!("`{}`", h.id),
                            false => format!("`{}` (the machine of `{}` too)", h.id, other.host),
                        };
                        diags.push(
                            Diagnostic::error(format!(
                                "{} goes by the {field} `{}` on {at}, as {} does",
                                who(vm, drill),
                                match handle {
                                    Handle::Name(n) => n.clone(),
                                    Handle::Vmid(id) => id.to_string(),
                                },
                                who(other.vm, other.drill),
                            ))
                            .at(vm.loc.clone())
                            .note("that vm is defined here", other.vm.loc.clone())
                            .hint(format!(
                                "the hypervisor's commands for one vm (start, stop, status, its definition) would act on the other: give each vm on {} its own `{field}`",
                                key.0
                            )),
                        );
                    }
                }
            }
        }
    }
}

/// The end of the name of the overlay a driver's `replicate-begin` makes beside a running
/// vm's disk (the disk's name without its extension, then this).
const OVERLAY_SUFFIX: &str = "reprise-replicate";

/// The overlay a driver's `replicate-begin` makes beside the disk file `disk` (a path, or a
/// name) of a running vm: `DIR/STEM.reprise-replicate`.
pub fn replication_overlay(disk: &str) -> String {
    let (dir, name) = disk.rsplit_once('/').map_or(("", disk), |(d, n)| (d, n));
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    match disk.contains('/') {
        true => format!("{dir}/{stem}.{OVERLAY_SUFFIX}"),
        false => format!("{stem}.{OVERLAY_SUFFIX}"),
    }
}

/// What a path on a host is used for, to find two uses of one file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PathUse {
    /// A vm disk, on its primary host or as the copy on its recovery host.
    Disk,
    /// The overlay a running vm writes to while its disk is copied (`OVERLAY_SUFFIX`).
    Overlay,
    BackupSource,
    BackupCopy,
}

/// No two vm disks or replica copies may be the same file on a host, or lie inside a backup
/// set's copy (which replication makes equal to its source, deleting what the source lacks).
/// Backup sets may read the same folders. Sorted by path parts, each path follows the paths it
/// lies in, so one pass with a stack finds every overlap.
fn check_shared_paths(inv: &Inventory, diags: &mut Vec<Diagnostic>) {
    struct Use<'a> {
        host: &'a str,
        /// The machine of `host` ([`machine_of`]): two host ids of one address share files.
        machine: (String, u16),
        path: String,
        kind: PathUse,
        what: String,
        loc: &'a Location,
    }
    let machine = |host: &str| {
        inv.hosts
            .get(host)
            .map_or_else(|| (host.to_string(), 0), machine_of)
    };
    let mut uses: Vec<Use<'_>> = Vec::new();
    for vm in inv.vms.values() {
        // One host on both sides is already an error of sites: its disk would be its own copy.
        let sides = if vm.primary.value == vm.recovery.value {
            &[("disk", &vm.primary)][..]
        } else {
            &[("disk", &vm.primary), ("recovery copy", &vm.recovery)][..]
        };
        for &(side, host) in sides {
            let dir = match inv
                .hosts
                .get(&host.value)
                .and_then(|h| h.vars.get("images_dir"))
            {
                Some(VarValue::Text(d)) => d.trim_end_matches('/'),
                _ => continue,
            };
            let machine = machine(&host.value);
            for (disk, loc) in vm.disks.iter().zip(&vm.disks_at) {
                uses.push(Use {
                    host: &host.value,
                    machine: machine.clone(),
                    path: format!("{dir}/{disk}"),
                    kind: PathUse::Disk,
                    what: format!("the {side} `{disk}` of vm `{}`", vm.id),
                    loc,
                });
                // Where a running vm's writes go while it is copied (the drivers'
                // `replicate-begin`: `${d%.*}.reprise-replicate` beside the disk).
                let overlay = replication_overlay(disk);
                uses.push(Use {
                    host: &host.value,
                    machine: machine.clone(),
                    path: format!("{dir}/{overlay}"),
                    kind: PathUse::Overlay,
                    what: format!(
                        "the replication overlay `{overlay}` of the {side} `{disk}` of vm `{}`",
                        vm.id
                    ),
                    loc,
                });
            }
        }
    }
    for set in inv.backups.values() {
        let ends = [
            Use {
                host: &set.source_host.value,
                machine: machine(&set.source_host.value),
                path: set.source_path.clone(),
                kind: PathUse::BackupSource,
                what: format!("the source of backup set `{}`", set.id),
                loc: &set.source_at,
            },
            Use {
                host: &set.dest_host.value,
                machine: machine(&set.dest_host.value),
                path: set.dest_path.clone(),
                kind: PathUse::BackupCopy,
                what: format!("the copy of backup set `{}`", set.id),
                loc: &set.dest_at,
            },
        ];
        uses.extend(
            ends.into_iter()
                .filter(|u| !u.host.is_empty() && !u.path.is_empty()),
        );
    }
    let key = |u: &Use<'_>| (u.loc.file, u.loc.span.start);
    uses.sort_by(|a, b| {
        a.machine
            .cmp(&b.machine)
            .then_with(|| a.path.split('/').cmp(b.path.split('/')))
            .then_with(|| key(a).cmp(&key(b)))
    });
    let within = |inner: &Use<'_>, outer: &Use<'_>| {
        inner.machine == outer.machine
            && (inner.path == outer.path
                || inner
                    .path
                    .strip_prefix(outer.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    };
    // The uses that hold the current one (the same path, or a folder above it).
    let mut open: Vec<&Use<'_>> = Vec::new();
    let mut reported = std::collections::HashSet::new();
    for u in &uses {
        while open.last().is_some_and(|o| !within(u, o)) {
            open.pop();
        }
        // Backup sets may read one folder (a second copy kept elsewhere); a copy inside a
        // folder that is copied is copied again into itself at every replication.
        let clash = open.iter().rev().find(|o| {
            let both_read = o.kind == PathUse::BackupSource && u.kind == PathUse::BackupSource;
            !both_read
                && (o.path == u.path
                    || o.kind != PathUse::BackupSource
                    || u.kind == PathUse::BackupCopy)
        });
        if let Some(o) = clash {
            let same_machine = |host: &str| match o.host == u.host {
                true => String::new(),
                false => format!(" on `{host}` (the same machine)"),
            };
            // The mistake is the later of two equal paths, or the folder that holds the other.
            let d = if o.path == u.path {
                let overlay = [o.kind, u.kind].contains(&PathUse::Overlay);
                Diagnostic::error(format!(
                    "{} on `{}` ({}) is the same file as {}{}",
                    u.what,
                    u.host,
                    u.path,
                    o.what,
                    same_machine(o.host)
                ))
                .at(u.loc.clone())
                .note("that one is set here", o.loc.clone())
                .hint(match overlay {
                    true => "a running vm's writes go to this overlay while its disk is copied: give the disks names that differ before their extension",
                    false => "each vm disk and each copy needs its own file: rename one, or fix `images_dir` or the path",
                })
            } else {
                Diagnostic::error(format!(
                    "{} on `{}` ({}) holds {}{} ({})",
                    o.what,
                    o.host,
                    o.path,
                    u.what,
                    same_machine(u.host),
                    u.path
                ))
                .at(o.loc.clone())
                .note("that one is set here", u.loc.clone())
                .hint(match o.kind {
                    PathUse::BackupSource => "what is in a backup set's source is copied: a copy there is copied again into itself at every replication, and grows until the disk is full; give the copy a folder outside every source",
                    _ => "a copy is made equal to its source (what the source lacks is deleted): give it a folder of its own",
                })
            };
            // One mistake, one error (a disk name is used on both hosts of its vm).
            if reported.insert(d.location.clone()) {
                diags.push(d);
            }
        }
        open.push(u);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_disk_s_replication_overlay_is_beside_it_without_its_extension() {
        use super::replication_overlay;
        assert_eq!(
            replication_overlay("/srv/images/erp-db-system.qcow2"),
            "/srv/images/erp-db-system.reprise-replicate"
        );
        assert_eq!(replication_overlay("disk.img"), "disk.reprise-replicate");
        assert_eq!(
            replication_overlay("/srv/raw"),
            "/srv/raw.reprise-replicate"
        );
        // A dot in a folder's name is not an extension (libvirt drops the file name's only).
        assert_eq!(
            replication_overlay("/srv/v1.d/data"),
            "/srv/v1.d/data.reprise-replicate"
        );
        assert_eq!(
            replication_overlay("100/vm-100-disk-0.qcow2"),
            "100/vm-100-disk-0.reprise-replicate"
        );
    }

    #[test]
    fn an_ipv6_endpoint_is_bracketed() {
        assert_eq!(super::endpoint("192.0.2.1", 22), "192.0.2.1:22");
        assert_eq!(super::endpoint("hv1.example", 2222), "hv1.example:2222");
        assert_eq!(super::endpoint("2001:db8::1", 22), "[2001:db8::1]:22");
        let addr: std::net::SocketAddr = super::endpoint("::1", 22).parse().unwrap();
        assert_eq!(addr.port(), 22);
    }
}
