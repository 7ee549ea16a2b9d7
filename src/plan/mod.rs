//! The plan: every concrete step a drill, failover, restore or failback would run, in dependency
//! order, with its host, fully rendered command, timeout and the steps it waits for, plus an
//! estimated timeline.
//!
//! [`build`] is a pure function of the model and [`PlanOptions`]: no IO, no clock (the run id is
//! passed in). [`Plan`] serializes to the documented JSON contract; [`text`] renders it for a
//! person. The executable form of each step ([`Action`]) keeps secrets unresolved.

mod build;
mod resolve;
mod scope;
pub mod text;
pub mod validate;
mod vm;

pub use build::{BACKUP_STEP, LAG_STEP, backup_sets_of, build};
pub use resolve::url_host;
pub use vm::{
    REPLICATE_HOOKS, images_dir_of, replicate_hook, replicate_hook_checked, vm_action_command,
    vm_status_command,
};

use serde::Serialize;

use crate::duration::{Duration, ser_duration, ser_opt_duration};
use crate::runbook::{Mode, Phase};
use crate::template::Command;

/// What to plan.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    pub mode: Mode,
    /// Failover with the primary site declared lost: `needs_primary` steps are left out.
    pub emergency: bool,
    /// Limit the plan to these services (and, unless `only`, what they depend on).
    pub services: Vec<String>,
    pub only: bool,
    pub run_id: String,
}

impl PlanOptions {
    pub fn new(mode: Mode) -> Self {
        PlanOptions {
            mode,
            emergency: false,
            services: Vec::new(),
            only: false,
            run_id: "dry-run".to_string(),
        }
    }
}

/// A plan. The fields `mode` and `steps[].{id, service, host, kind, command, timeout_s, after}`
/// are a stable contract of `reprise plan --json`; other fields may be added.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub mode: Mode,
    pub emergency: bool,
    pub run_id: String,
    pub selection: Selection,
    pub services: Vec<PlannedService>,
    pub steps: Vec<PlannedStep>,
    /// Steps not in the plan, and why (emergency failover leaves out `needs_primary` steps).
    pub left_out: Vec<LeftOut>,
    /// Services with no runbook for this mode, that nothing in the plan needs.
    pub not_covered: Vec<String>,
    pub estimate: Estimate,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Selection {
    /// The services asked for with `--service`; empty means all.
    pub requested: Vec<String>,
    /// `--only`: dependencies were not pulled in.
    pub only: bool,
    /// Dependencies added because a requested service needs them.
    pub pulled_in: Vec<String>,
    /// With `--only`: dependencies left out, assumed to be running already.
    pub assumed_running: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedService {
    pub id: String,
    pub kind: String,
    pub owner: Option<String>,
    #[serde(serialize_with = "ser_duration")]
    #[serde(rename = "rto_target_s")]
    pub rto_target: Duration,
    #[serde(serialize_with = "ser_opt_duration")]
    #[serde(rename = "rpo_target_s")]
    pub rpo_target: Option<Duration>,
    /// Its data reaches the recovery site by the application's own replication (its data
    /// loss is a replication lag, not a disk copy's age).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub replicated_by_application: bool,
    /// Estimated time from the start of the run until its last main step is done.
    #[serde(serialize_with = "ser_duration")]
    #[serde(rename = "estimated_rto_s")]
    pub estimated_rto: Duration,
    pub rto_ok: bool,
    /// Dependencies that are part of the plan.
    pub depends_on: Vec<String>,
    pub steps: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    /// `service/step`.
    pub id: String,
    pub service: String,
    pub step: String,
    /// The host it runs on; `null` for the operator (manual) or the orchestrator itself.
    pub host: Option<String>,
    /// `user@address:port` of the host.
    pub target: Option<String>,
    pub site: Option<String>,
    pub kind: &'static str,
    /// VM action (`start`, `drill-start`, …) for vm steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The rendered command (secrets redacted), the probe, or the instructions.
    pub command: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
    pub description: Option<String>,
    pub timeout_s: Option<u64>,
    pub expected_s: u64,
    pub retries: u32,
    pub idempotent: bool,
    pub needs_primary: bool,
    pub phase: Phase,
    /// Ids of the steps it waits for.
    pub after: Vec<String>,
    /// Estimated start and finish, in seconds from the start of the run.
    pub est_start_s: u64,
    pub est_finish_s: u64,
    /// On the critical path of the plan.
    pub critical: bool,
    #[serde(skip)]
    pub action_spec: Action,
    /// A vm started from its copy on the recovery host: the copy's age is the data lost.
    #[serde(skip)]
    pub replica: Option<ReplicaUse>,
    /// A vm `start` of a failover or failback: the driver's `status`, asked before the start,
    /// so that a roll-back never undoes the start of a vm that was already running, and a
    /// failover never reports a vm that already ran there as started from its point.
    #[serde(skip)]
    pub state_before: Option<Command>,
    /// Its undo is its driver's `stop` (no runbook `undo`): a roll-back undoes it only for a
    /// vm `state_before` found not running. A runbook's own undo runs whatever it found.
    #[serde(skip)]
    pub undo_stops: bool,
    /// The vm a vm step acts on (its own `vm`, else its service's).
    #[serde(skip)]
    pub vm: Option<String>,
}

/// How an https health check trusts the server's certificate: the system's certificate
/// authorities by default, the authorities of `ca_file` instead, or not at all (`insecure`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub ca_file: Option<String>,
    pub insecure: bool,
}

/// The vm a tcp or http check checks, and how the check proves that this vm answers, not
/// another process at its address (a primary still up, a leftover process, production during
/// a drill): once the address answers, the driver's `status` of the vm (of its drill copy, in
/// a drill), asked on the host the mode brings it up on, must say it runs; in a failover or a
/// failback, the same vm must not run on the side being left (both running: a split brain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub vm: String,
    /// How messages name it: `vm erp-db`, or `the drill copy of vm erp-db`.
    pub shown: String,
    /// The host it must run on, and its driver's `status` (a drill: `drill-status`) there.
    pub host: String,
    pub status: Command,
    /// A failover or a failback: the host of the side being left, and the driver's `status`
    /// there.
    pub left: Option<(String, Command)>,
}

/// A production address a drill's check must not reach: production answers there, not the
/// drill's copy, and the check would pass for it. The plan refuses a check whose address is
/// one of them as written; the run refuses one that resolves to where one of them resolves
/// (a name for an address, two names for one machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Production {
    pub address: String,
    /// What answers there, for messages: `the production address of vm erp-app`, `the
    /// address of host hv-main (site paris, primary)`.
    pub what: String,
}

/// The recovery copies a vm step uses: the vm, the host holding them and their paths, and
/// what the step does with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaUse {
    pub vm: String,
    /// The recovery host (for a failback's start on the primary, not the step's host).
    pub host: String,
    pub paths: Vec<String>,
    /// The source (`host:path`) of each copy's points, as the inventory gives it: the vm's
    /// disks on its primary (for a drill's or a failover's start; empty otherwise).
    pub sources: Vec<String>,
    pub role: ReplicaRole,
    /// For a drill's start: the vm's primary host and its driver's `replicate-check`, asked
    /// (read only) whether a replication snapshot was left there.
    pub snapshot_check: Option<(String, Command)>,
    /// When the vm's driver carries definitions: the vm is defined on the step's host from
    /// the definition of the point it starts from, before the step's command.
    pub define: Option<DefineUse>,
}

/// How a vm step defines its vm from a point's definition (see [`crate::vmdef`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefineUse {
    /// The host it is defined on, and the driver's `define` action there (reads the
    /// definition on its standard input).
    pub host: String,
    pub command: Command,
    /// The driver's `definition` action on that host: what was defined there before (a
    /// start that fails puts it back), or nothing (it exits non-zero).
    pub current: Option<Command>,
    /// The driver's `undefine` action there: removes what a failed start defined.
    pub undefine: Option<Command>,
    /// Where the point's definition is kept: the host and the copies of the vm's disks, first
    /// first (the recovery copies; for a failback, the primary's disks the reverse
    /// replication made); the copy of the disk that was first when the point was made.
    pub from_host: String,
    pub from_copies: Vec<String>,
    /// For a drill: the vm's primary host and its driver's `definition` action there, what
    /// the drill's copy is defined from when the copy is started as it is (no point, so no
    /// definition with it).
    pub primary: Option<(String, Command)>,
    /// The driver's format of definitions.
    pub format: crate::vmdef::Format,
    /// What the definition becomes there.
    pub fit: crate::vmdef::Fit,
}

/// What a vm step does with the recovery copies of its vm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaRole {
    /// A drill starts a throw-away copy on overlays of them: the point is chosen (never
    /// rolled back) and the copies are leased until the drill's cleanup.
    DrillStart,
    /// A drill's cleanup removed its copy: the drill's lease is released.
    DrillStop,
    /// The vm starts on the copies themselves (a failover): the point is chosen, rolled back
    /// to in a failover, and, once the vm runs, the copies' point history ends.
    Start,
    /// A failback started the vm on the primary again: the recovery copies are released.
    FailedBack,
}

/// What executing a step means, with secrets still unresolved.
#[derive(Debug, Clone)]
pub enum Action {
    Exec {
        run: Command,
        verify: Option<Command>,
        undo: Option<Command>,
    },
    Tcp {
        address: String,
        port: u16,
        interval: Duration,
        /// The vm whose answer it checks (see [`Instance`]).
        instance: Option<Instance>,
        /// Text the server must send first (its banner).
        expect: Option<String>,
        /// A drill's: the production addresses it must not reach (see [`Production`]).
        production: Vec<Production>,
    },
    Http {
        url: String,
        status: u16,
        interval: Duration,
        /// How an https certificate is checked.
        tls: Tls,
        /// The vm whose answer it checks (see [`Instance`]).
        instance: Option<Instance>,
        /// Text the body of the answer must contain.
        expect: Option<String>,
        /// A drill's: the production addresses it must not reach (see [`Production`]).
        production: Vec<Production>,
    },
    Probe {
        run: Command,
        interval: Duration,
    },
    Manual {
        instructions: String,
    },
    /// Run a service's lag probe and journal what it says. In a drill or an emergency
    /// failover a lag unknown or over the RPO does not fail the step (the recovery goes on,
    /// the report says so); in a planned switch (`hold`: a planned failover, a failback), where
    /// the side being left still holds the data, it fails the step, before the switch.
    Lag {
        run: Command,
        timeout: Duration,
        rpo: Option<Duration>,
        hold: bool,
    },
    /// Copy files (a vm's disks) or a directory (a backup set) from one host to another.
    Replicate {
        what: Replicated,
        from_host: String,
        to_host: String,
        /// (source path, destination path) pairs.
        items: Vec<(String, String)>,
        /// Replica points kept (vm disks).
        retention: u32,
        /// A vm whose driver can tell a replication snapshot left on the source host: the
        /// host, the driver's `replicate-check` and `replicate-end` (which merges it back).
        snapshot: Option<SnapshotHooks>,
        /// A vm whose driver carries definitions: its `definition` action on `from_host`,
        /// captured with the new point, and the driver's format of definitions.
        capture: Option<(Command, crate::vmdef::Format)>,
        /// A vm whose copies are of the disk as the guest sees it (`changed_blocks`): `Some`
        /// with whether the step copies back to the primary (a failback).
        guest: Option<bool>,
    },
    /// Prove and lease a backup set's copy (see [`BackupUse`]).
    BackupCopy(BackupUse),
}

/// A backup set's copy on the recovery host, which a drill or a failover relies on, proven
/// before anything of the run uses it (as a vm's copies are before its start): its newest
/// good point, verified, the folder not changed behind it, leased at that point (a failover
/// keeps the lease: the recovery site now writes there; a drill gives it back) and journaled
/// as the point used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupUse {
    pub set: String,
    /// The recovery host and the copy's folder there.
    pub host: String,
    pub path: String,
    /// The source of its points (`host:path`), as the inventory gives it.
    pub source: String,
    /// A failover (the copy becomes the data the recovery site runs on), not a drill.
    pub failover: bool,
}

/// A driver's commands about the snapshot a replication of a running vm makes on its host.
#[derive(Debug, Clone)]
pub struct SnapshotHooks {
    pub host: String,
    /// Prints one line per snapshot overlay left (`overlay …`), nothing when there is none.
    pub check: Command,
    /// Merges every overlay back into its disk (also for a stopped vm).
    pub end: Command,
    /// Freezes a running vm's disks while they are read (nothing for a stopped vm); `end`
    /// follows it on every way out.
    pub begin: Option<Command>,
    /// `begin` leaves the disk files of a running vm written while they are read (the
    /// driver's `replicate_reads_live`): they are copied all the same.
    pub live: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replicated {
    Vm(String),
    Backup(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct LeftOut {
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Estimated duration of the whole run, cleanup included.
    #[serde(serialize_with = "ser_duration")]
    #[serde(rename = "total_s")]
    pub total: Duration,
    /// The chain of steps that decides it.
    pub critical_path: Vec<String>,
}

impl PlannedStep {
    /// Whether this is a vm step doing `action` to vm `vm` on `host`.
    pub fn is_vm_action(&self, vm: &str, action: &str, host: &str) -> bool {
        self.kind == "vm"
            && self.vm.as_deref() == Some(vm)
            && self.action.as_deref() == Some(action)
            && self.host.as_deref() == Some(host)
    }
}

impl Plan {
    pub fn step(&self, id: &str) -> Option<&PlannedStep> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Whether the plan copies vm `vm`'s recovery copies back (a `replicate` step of it: in a
    /// failback, the reverse replication).
    pub fn copies_back(&self, vm: &str) -> bool {
        self.steps.iter().any(
            |s| matches!(&s.action_spec, Action::Replicate { what: Replicated::Vm(v), .. } if v == vm),
        )
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a plan always serializes")
    }
}
