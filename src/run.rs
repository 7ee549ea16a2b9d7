//! A run of a plan, from start to journal: start, resume, confirm, list and read back.
//!
//! Glue between the pure stages (model, plan) and the edges (SSH transport, journal, runner):
//! it takes the state lock, writes every event to the journal before showing it, and turns what
//! the journal says back into the state a resumed run starts from. It never prints: events go to
//! the journal and to the [`Sink`] the caller gives (the terminal view).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};

use crate::away::Away;
use crate::diagnostic::{Report, did_you_mean};
use crate::event::{Event, RunPlan, RunStatus, StepStatus};
use crate::journal::{
    self, Confirmation, JournalError, JournalWriter, LockHolder, RunDir, StateLock,
};
use crate::model::Model;
use crate::plan::{self, Plan, PlanOptions, PlannedStep};
use crate::runbook::{Mode, Side};
use crate::runner::{self, Prior, RunContext, RunOptions, Sink, Unrecorded};
use crate::shutdown::Shutdown;
use crate::ssh::{HostKeyPolicy, HostSpec, SshTransport, Transport};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the plan cannot be made")]
    Plan(Report),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(
        "the inventory or runbooks changed since run `{run_id}` started (files hash {then}, now {now}); \
         resuming would run a different plan. Restore the files, or start a new run"
    )]
    SourcesChanged {
        run_id: String,
        then: String,
        now: String,
    },
    #[error("run `{0}` already finished successfully: nothing to resume")]
    AlreadyFinished(String),
    #[error(
        "the drill `{run_id}` is over: its cleanup ran at {at} and removed its copies, so nothing of it is left to carry on; start a new drill"
    )]
    DrillOver { run_id: String, at: DateTime<Utc> },
    #[error(
        "the journal of run `{run_id}` could not be written: {error}. The run stopped: no step started after that{}. \
         Free the space or mend the disk, then `reprise resume {run_id}` carries on (each step not recorded as done is checked again)",
        if unrecorded.is_empty() { String::new() } else { format!("; these steps went on running and are not recorded: {}", unrecorded.join(", ")) }
    )]
    JournalFailed {
        run_id: String,
        error: Box<JournalError>,
        unrecorded: Vec<String>,
    },
    #[error("a confirmation needs the name of who gives it: --by NAME")]
    NoName,
    #[error(
        "run `{run_id}` is a {mode}: --point and --point-before choose the points a failover starts from, and a {mode} takes none; nothing was resumed (run `reprise resume {run_id}` without them)"
    )]
    PointsNotForMode { run_id: String, mode: Mode },
    #[error("run `{run_id}` is over ({status}): nothing in it waits for a confirmation")]
    RunOver { run_id: String, status: String },
    #[error("step `{step}` of run `{run_id}` does not wait for a confirmation: {why}")]
    NotWaiting {
        run_id: String,
        step: String,
        why: String,
    },
    #[error("step `{step}` of run `{run_id}` was already confirmed by {by} at {at}")]
    AlreadyConfirmed {
        run_id: String,
        step: String,
        by: String,
        at: DateTime<Utc>,
    },
    #[error("the journal of run `{0}` does not say how it started")]
    NoStart(String),
    #[error(
        "refusing to {mode}: {} on both sites. Two copies write diverging data: stop the copy that must \
         not run (in doubt, keep the recovery copy, which has the newest data), then start again",
        .services.join(", ")
    )]
    SplitBrain { mode: Mode, services: Vec<String> },
    #[error("refusing to restore: {}", .vms.join("; "))]
    RunsElsewhere { vms: Vec<String> },
    #[error(
        "refusing to {}: {}. Settle it on the primary first (a vm that runs there: stop it; in doubt, the recovery copy has the newest data), then {}",
        if *.resuming { "resume the failback" } else { "failback" },
        .vms.join("; "),
        if *.resuming { "resume it" } else { "start again" }
    )]
    PrimaryRuns { vms: Vec<String>, resuming: bool },
    #[error(
        "refusing to {}: {}{}",
        if *.resuming { "resume the failback" } else { "start a failback" },
        .problems.join("; "),
        if *.resuming {
            " (a resume runs the runbooks its run started with: to add a step, start a new failback instead)"
        } else {
            ""
        }
    )]
    NothingCopiedBack {
        problems: Vec<String>,
        resuming: bool,
    },
    #[error("refusing to resume the {mode}: {}", .vms.join("; "))]
    RunsAgain { mode: Mode, vms: Vec<String> },
    #[error("refusing to resume the failover: {}", .vms.join("; "))]
    StartedOtherwise { vms: Vec<String> },
    #[error(
        "{}: what was asked ({asked}) cannot be given to all this failover starts:\n  - {}",
        if *resuming { "refusing to resume the failover" } else { "refusing to start the failover, nothing was done" },
        .problems.join("\n  - ")
    )]
    PointsOutOfReach {
        asked: String,
        problems: Vec<String>,
        resuming: bool,
    },
    #[error("{}", not_ready(*mode, problems, *resuming))]
    NotReady {
        mode: Mode,
        problems: Vec<String>,
        /// Said by a resume (`reprise resume`), not by a start.
        resuming: bool,
    },
    #[error("run `{run_id}` has no step `{step}`{}", hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default())]
    UnknownStep {
        run_id: String,
        step: String,
        hint: Option<String>,
    },
}

/// How to reach hosts.
#[derive(Debug, Clone)]
pub struct SshOptions {
    pub policy: HostKeyPolicy,
    /// Used for hosts that name no `known_hosts` of their own.
    pub known_hosts: PathBuf,
    /// Whether the command line named it (`--known-hosts`): it then wins over the user's ssh
    /// configuration, as a command-line option wins over it for `ssh`.
    pub known_hosts_given: bool,
    /// Private key; the ssh-agent when none.
    pub identity: Option<PathBuf>,
    pub connect_timeout: StdDuration,
    /// The inventory host that is this machine (`--here`).
    pub here: Option<String>,
    /// The client of replication streams.
    pub client: crate::ssh::SshClient,
    /// The user's ssh configuration, for what the inventory does not name.
    pub ssh_config: Option<std::sync::Arc<crate::ssh::config::UserSshConfig>>,
}

impl SshOptions {
    pub fn default_known_hosts() -> PathBuf {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"))
            .join(".ssh/known_hosts")
    }
}

/// Everything needed to start a run.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub plan: PlanOptions,
    pub exec: ExecOptions,
    pub state_dir: PathBuf,
    pub operator: String,
    /// When the outage began (declared by the operator).
    pub incident_at: Option<DateTime<Utc>>,
    /// A planned failover or a failback starts although what it is about to start vms on is
    /// known to stop it half-way (journaled as `readiness_forced`).
    pub force: bool,
}

/// Why a planned failover or a failback is refused before it starts.
fn not_ready(mode: Mode, problems: &[String], resuming: bool) -> String {
    let (what, side, first, table) = match mode {
        Mode::Failback => (
            "failback",
            "the primary side",
            "the recovery side is stopped, or copy older data over it",
            "",
        ),
        _ => (
            "planned failover",
            "the recovery side",
            "production is stopped",
            " (`reprise check` shows the whole table)",
        ),
    };
    let (refusing, anyway) = match resuming {
        true => (format!("resume the {what}"), "resume it"),
        false => (format!("start a {what}"), "start it"),
    };
    format!(
        "refusing to {refusing}: the readiness check finds {} problem{} on {side} that would stop it half-way, after {first}:\n  {}\nFix them{table}, or {anyway} anyway with --force (journaled)",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" },
        problems.join("\n  ")
    )
}

/// What a run came to.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_id: String,
    pub status: RunStatus,
    pub dir: PathBuf,
    /// A stale lock of a dead process that was taken over.
    pub replaced_stale_lock: Option<LockHolder>,
    /// What the retention removed after the run ([`prune`]), or why it could not.
    pub pruned: Result<Pruned, String>,
    /// Vms its health checks found running on both sites (`vm X runs on A and on B`).
    pub split_brain: Vec<String>,
    /// Why its steps did not start their vm, the other site asked again (a restore's).
    pub refused: Vec<String>,
}

/// Writes each event to the journal first, then shows it. Once the journal fails, nothing
/// more is shown; the steps that finish after that are kept to tell the operator.
struct Tee<'a> {
    journal: JournalWriter,
    view: &'a mut dyn Sink,
    error: Option<JournalError>,
    /// Steps that ran on, finished, and are not recorded.
    unrecorded: Vec<String>,
    /// Vms a health check found running on both sites (see [`Event::SplitBrain`]).
    split_brain: Vec<String>,
    /// Why steps did not start their vm, the other site asked again (see [`Event::OtherSite`]).
    refused: Vec<String>,
}

/// Structured logs of the run's events (`--log-format json` for machines).
fn log(event: &Event) {
    match event {
        Event::VmStateBefore {
            step,
            running,
            said,
            ..
        } => tracing::info!(step, ?running, said, "vm state before its start"),
        Event::ReadinessForced {
            operator, problems, ..
        } => tracing::warn!(
            operator,
            ?problems,
            "planned failover forced past its readiness"
        ),
        // Warned of before the run started (`refuse_elsewhere`).
        Event::OtherSite { .. } => {}
        Event::RunStarted {
            run_id,
            mode,
            emergency,
            operator,
            steps,
            ..
        } => {
            tracing::info!(run_id, %mode, emergency, operator, steps = steps.len(), "run started")
        }
        Event::RunResumed { operator, .. } => tracing::info!(operator, "run resumed"),
        Event::SplitBrain {
            step, vm, hosts, ..
        } => tracing::error!(step, vm, ?hosts, "split brain: the vm runs on both sites"),
        Event::SourceRead { step, vm, host, .. } => {
            tracing::info!(step, vm, host, "what a copy between sites read, before")
        }
        Event::StopRequested { reason, .. } => tracing::warn!(reason, "stop requested"),
        Event::JournalRepaired {
            line,
            bytes,
            kept_in,
            ..
        } => tracing::warn!(line, bytes, kept_in, "torn journal line cut"),
        Event::StepStarted {
            step,
            attempt,
            host,
            ..
        } => {
            tracing::debug!(
                step,
                attempt,
                host = host.as_deref().unwrap_or("-"),
                "step started"
            )
        }
        Event::StepOutput {
            step, exit_code, ..
        } => tracing::debug!(step, exit_code, "step output"),
        Event::StepFinished {
            step,
            attempt,
            status,
            duration_ms,
            message,
            ..
        } => {
            let message = message.as_deref().unwrap_or("");
            if status.succeeded() {
                tracing::info!(step, attempt, status = ?status, duration_ms, "step finished")
            } else {
                tracing::warn!(step, attempt, status = ?status, duration_ms, message, "step did not succeed")
            }
        }
        Event::WaitingForOperator { step, .. } => tracing::info!(step, "waiting for an operator"),
        Event::Confirmed { step, by, .. } => tracing::info!(step, by, "confirmed"),
        Event::UndoFinished { step, ok, .. } => tracing::warn!(step, ok, "undo finished"),
        Event::ReplicaPointUsed {
            step, item, point, ..
        } => tracing::info!(step, item, point, "replica point used"),
        Event::LagMeasured {
            step,
            lag_s,
            unknown,
            ..
        } => match lag_s {
            Some(lag_s) => tracing::info!(step, lag_s, "replication lag measured"),
            None => tracing::warn!(step, unknown, "replication lag unknown"),
        },
        Event::RunFinished { status, .. } => tracing::info!(status = ?status, "run finished"),
    }
}

impl Sink for Tee<'_> {
    fn emit(&mut self, event: &Event) -> Result<(), Unrecorded> {
        log(event);
        if let Event::SplitBrain { vm, hosts, .. } = event {
            self.split_brain
                .push(format!("vm {vm} runs on {}", hosts.join(" and on ")));
        }
        if let Event::OtherSite {
            said,
            refused: true,
            ..
        } = event
        {
            self.refused.extend(said.iter().cloned());
        }
        if let Some(e) = &self.error {
            if let Event::StepFinished { step, status, .. } = event
                && *status != StepStatus::Cancelled
            {
                self.unrecorded.push(step.clone());
            }
            return Err(Unrecorded(e.to_string()));
        }
        match self.journal.append(event) {
            Ok(()) => self.view.emit(event),
            Err(e) => {
                tracing::error!(
                    journal = %self.journal.path().display(),
                    error = %e,
                    "the journal cannot be written: no step starts any more, running ones finish"
                );
                let why = Unrecorded(e.to_string());
                self.error = Some(e);
                Err(why)
            }
        }
    }
}

/// SSH to the model's hosts with these options.
pub fn transport(model: &Model, ssh: &SshOptions) -> SshTransport {
    let hosts: HashMap<String, HostSpec> = model
        .inventory
        .hosts
        .values()
        .map(|h| (h.id.clone(), host_spec(h, ssh)))
        .collect();
    SshTransport::new(hosts, ssh.policy, ssh.connect_timeout)
        .with_here(ssh.here.clone())
        .with_client(ssh.client)
}

/// For a dry run, reading no host: each host of the model that these options reach elsewhere
/// than its inventory address, port and user (the user's ssh configuration gives them), or
/// refuse to reach.
pub fn reach(
    model: &Model,
    ssh: &SshOptions,
) -> std::collections::BTreeMap<String, crate::plan::text::Reach> {
    use crate::plan::text::Reach;
    let file = ssh
        .ssh_config
        .as_ref()
        .map(|c| home_relative(c.path()))
        .unwrap_or_default();
    let mut out = std::collections::BTreeMap::new();
    for h in model.inventory.hosts.values() {
        let spec = host_spec(h, ssh);
        if let Some(why) = spec.refused {
            out.insert(h.id.clone(), Reach::Refused(why));
        } else if (&spec.address, spec.port, &spec.user) != (&h.address, h.port, &h.user) {
            let to = crate::inventory::endpoint(&spec.address, spec.port);
            out.insert(
                h.id.clone(),
                Reach::Elsewhere(format!("{} → {}@{to} via {file}", h.address, spec.user)),
            );
        }
    }
    out
}

/// `path`, with the home folder written `~`.
fn home_relative(path: &std::path::Path) -> String {
    match std::env::var_os("HOME").map(PathBuf::from) {
        Some(home) if home.as_os_str().len() > 1 => match path.strip_prefix(&home) {
            Ok(rest) => format!("~/{}", rest.display()),
            Err(_) => path.display().to_string(),
        },
        _ => path.display().to_string(),
    }
}

/// How to reach one host: what the inventory names, then what the command line names (key,
/// known_hosts), then the user's ssh configuration for its address, then the defaults.
fn host_spec(h: &crate::inventory::Host, ssh: &SshOptions) -> HostSpec {
    let mut config = ssh
        .ssh_config
        .as_ref()
        .map(|c| c.resolve(&h.address, h.user_set.then_some(h.user.as_str())))
        .unwrap_or_default();
    let named_known_hosts = h.known_hosts.is_some() || ssh.known_hosts_given;
    if !named_known_hosts && config.refused.is_none() {
        config.refused = config.known_hosts_refused.take();
    }
    if ssh.known_hosts_given {
        config.known_hosts = None;
    }
    if ssh.identity.is_some() {
        config.identity = None;
    }
    HostSpec {
        id: h.id.clone(),
        address: config.host_name.unwrap_or_else(|| h.address.clone()),
        port: match (h.port_set, config.port) {
            (false, Some(port)) => port,
            _ => h.port,
        },
        user: match (h.user_set, config.user) {
            (false, Some(user)) => user,
            _ => h.user.clone(),
        },
        known_hosts: h
            .known_hosts
            .as_ref()
            .map(PathBuf::from)
            .or(config.known_hosts)
            .unwrap_or_else(|| ssh.known_hosts.clone()),
        identity: h
            .identity
            .as_ref()
            .map(PathBuf::from)
            .or(config.identity)
            .or_else(|| ssh.identity.clone()),
        refused: config.refused,
    }
}

/// How steps are run and hosts reached, for a new or a resumed run.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub run: RunOptions,
    pub ssh: SshOptions,
    /// Run folders kept once the run is over (see [`prune`]); `None` removes none.
    pub keep_runs: Option<usize>,
}

/// A run ready to go: its plan, folder, first journal events and what is already done.
struct Launch {
    plan: Plan,
    dir: RunDir,
    journal: JournalWriter,
    first: Vec<Event>,
    prior: HashMap<String, Prior>,
    /// For a restore: the vms this machine's journals show a failover left on their recovery
    /// host, and whether the run is forced past them.
    away: BTreeMap<String, Away>,
    force: bool,
    /// This start (or resume) was given `--force`, whatever the mode: what a step's guard
    /// cannot tell, it passes, journaled.
    forced_now: bool,
    /// Who starts (or resumes) it.
    operator: String,
    /// What its journal already says was forced (a resumed run's).
    forced_before: Vec<String>,
    /// For a failback: the primary disks each vm's copy back overwrites, as judged before it
    /// began ([`judged_disks`]).
    judged: JudgedDisks,
    /// For a resumed run: what its copies between sites that are done (and not made again)
    /// read, as its journal says ([`copied_before`]): a start of the vm on the other side asks
    /// that it is still so, as it does of a copy this process made.
    copied: HashMap<String, runner::CopyRead>,
    /// For a resumed run: what each vm start of an earlier attempt found its vm to be before
    /// it (`vm_state_before`), which a roll-back of this attempt goes by.
    running_before: HashMap<String, Option<bool>>,
}

/// What each step's last `vm_state_before` in `events` said: whether its vm was running
/// before it (`None`: not known).
fn running_before_of(events: &[Event]) -> HashMap<String, Option<bool>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::VmStateBefore { step, running, .. } => Some((step.clone(), *running)),
            _ => None,
        })
        .collect()
}

/// What the copies of a vm between its sites that `prior` holds done read, as the journal
/// `events` says ([`Event::SourceRead`], the last of each vm).
fn copied_before(
    events: &[Event],
    prior: &HashMap<String, Prior>,
) -> HashMap<String, runner::CopyRead> {
    let mut copied: HashMap<String, runner::CopyRead> = HashMap::new();
    let mut made: HashMap<(String, String), String> = HashMap::new();
    for e in events {
        // The point the copy made, journaled right before what it read.
        if let Event::ReplicaPointUsed {
            step, item, point, ..
        } = e
            && prior.get(step) == Some(&Prior::Done)
        {
            made.insert((step.clone(), item.clone()), point.clone());
        }
        if let Event::SourceRead {
            step,
            vm,
            host,
            stamps,
            ..
        } = e
            && prior.get(step) == Some(&Prior::Done)
        {
            copied.insert(
                vm.clone(),
                runner::CopyRead {
                    step: step.clone(),
                    host: host.clone(),
                    stamps: stamps.clone(),
                    here: false,
                    point: made.get(&(step.clone(), vm.clone())).cloned(),
                },
            );
        }
    }
    copied
}

/// `vm NAME` or `backup set NAME` → each primary disk or folder its copy back overwrites and
/// its stamp (`None`: not there), as a failback judged them at its start or resume.
type JudgedDisks = HashMap<String, Vec<(String, Option<String>)>>;

/// The key of what a copy back copies in [`JudgedDisks`].
fn judged_key(what: &plan::Replicated) -> String {
    match what {
        plan::Replicated::Vm(vm) => format!("vm {vm}"),
        plan::Replicated::Backup(set) => format!("backup set {set}"),
    }
}

/// What a failback read of the primary disks and folders its copy backs overwrite
/// ([`CopyBack::disks`], [`FolderBack::folder`]).
fn judged_disks(backs: &[CopyBack], folders: &[FolderBack]) -> JudgedDisks {
    let stamp = |d: &crate::replica::CopyState| {
        (d.path.clone(), d.exists.then(|| d.stamp.clone()).flatten())
    };
    let vms = backs.iter().filter_map(|b| {
        let disks = b.disks.as_ref().ok()?;
        let key = judged_key(&plan::Replicated::Vm(b.vm.clone()));
        Some((key, disks.iter().map(stamp).collect()))
    });
    let sets = folders.iter().filter_map(|f| {
        let folder = f.folder.as_ref().ok()?;
        let key = judged_key(&plan::Replicated::Backup(f.set.clone()));
        Some((key, vec![stamp(folder)]))
    });
    vms.chain(sets).collect()
}

fn execute(
    model: &Model,
    Launch {
        plan,
        dir,
        journal,
        first,
        prior,
        away,
        force,
        forced_now,
        operator,
        forced_before,
        judged,
        copied,
        running_before,
    }: Launch,
    exec: &ExecOptions,
    view: &mut dyn Sink,
    shutdown: Shutdown,
) -> Result<(RunStatus, Vec<String>, Vec<String>), RunError> {
    let (run, ssh) = (&exec.run, &exec.ssh);
    let mut tee = Tee {
        journal,
        view,
        error: None,
        unrecorded: Vec::new(),
        split_brain: Vec::new(),
        refused: Vec::new(),
    };
    for event in &first {
        if tee.emit(event).is_err() {
            return Err(tee.error.take().expect("the error is kept").into());
        }
    }
    let run_id = dir.run_id.clone();
    let mut options = run.clone();
    // `STATE/runs/ID` → `STATE/definitions`.
    if options.definitions_dir.is_none() {
        options.definitions_dir = dir
            .path
            .parent()
            .and_then(|p| p.parent())
            .map(|state| state.join("definitions"));
    }
    options.forced_by = (force || forced_now).then(|| operator.clone());
    options.running_before = running_before;
    let transport: Arc<dyn Transport> = Arc::new(transport(model, ssh));
    let other_site = match plan.mode {
        Mode::Restore => Some(Arc::new(RestoreGuard {
            model: model.clone(),
            run_id: plan.run_id.clone(),
            transport: transport.clone(),
            down: Default::default(),
            endpoints: ssh_endpoints(model, ssh),
            away,
            force,
            operator,
            journaled: std::sync::Mutex::new(forced_in(&first).chain(forced_before).collect()),
        }) as Arc<dyn runner::OtherSite>),
        Mode::Failback => Some(Arc::new(FailbackGuard {
            model: model.clone(),
            run_id: plan.run_id.clone(),
            transport: transport.clone(),
            judged,
            force: forced_now,
            operator,
            journaled: std::sync::Mutex::new(forced_in(&first).chain(forced_before).collect()),
        }) as Arc<dyn runner::OtherSite>),
        Mode::Failover if !plan.emergency => Some(Arc::new(FailoverGuard {
            model: model.clone(),
            run_id: plan.run_id.clone(),
            transport: transport.clone(),
            force: forced_now,
            operator,
            journaled: std::sync::Mutex::new(forced_in(&first).chain(forced_before).collect()),
        }) as Arc<dyn runner::OtherSite>),
        _ => None,
    };
    let ctx = RunContext {
        plan: Arc::new(plan),
        transport,
        confirmations: Arc::new(dir),
        secrets: runner::env_secrets(),
        options,
        prior,
        other_site,
        copied: Arc::new(std::sync::Mutex::new(copied)),
    };
    let status = runner::run(ctx, &mut tee, shutdown);
    match tee.error {
        Some(error) => Err(RunError::JournalFailed {
            run_id,
            error: Box::new(error),
            unrecorded: tee.unrecorded,
        }),
        None => Ok((status, tee.split_brain, tee.refused)),
    }
}

/// Services of the plan whose vm runs on both its primary and its recovery host (asked through
/// the driver's `status` action, read as a vm start reads it: a line `running` or
/// `status: running`).
pub fn running_on_both_sites(model: &Model, plan: &Plan, transport: &dyn Transport) -> Vec<String> {
    let mut both = Vec::new();
    for (service, vm) in plan_vms(model, plan) {
        let running = |side| vm_state(model, service, vm, side, &plan.run_id, transport).0;
        if running(Side::Primary) == Some(true) && running(Side::Recovery) == Some(true) {
            both.push(format!(
                "{} (vm {} runs on {} and on {})",
                service.id, vm.id, vm.primary.value, vm.recovery.value
            ));
        }
    }
    both
}

/// Every vm of a plan, once, with the first service that has it: each service's own vm and
/// the vm each vm step names (a service may start another vm than its own, as the directory
/// does with dc2).
fn plan_vms<'m>(
    model: &'m Model,
    plan: &Plan,
) -> Vec<(&'m crate::inventory::Service, &'m crate::inventory::Vm)> {
    let inv = &model.inventory;
    let mut vms: Vec<(&crate::inventory::Service, &crate::inventory::Vm)> = Vec::new();
    let own = plan
        .services
        .iter()
        .filter_map(|p| inv.services.get(&p.id))
        .filter_map(|s| Some((s, s.vm()?.to_string())));
    let named = plan
        .steps
        .iter()
        .filter_map(|st| Some((inv.services.get(&st.service)?, st.vm.clone()?)));
    for (service, id) in own.chain(named) {
        if let Some(vm) = inv.vms.get(&id)
            && !vms.iter().any(|(_, v)| v.id == vm.id)
        {
            vms.push((service, vm));
        }
    }
    vms
}

/// Whether `vm` runs on `side`, as its driver's `status` says (`None`: it could not say),
/// with what it said.
fn vm_state(
    model: &Model,
    service: &crate::inventory::Service,
    vm: &crate::inventory::Vm,
    side: Side,
    run_id: &str,
    transport: &dyn Transport,
) -> (Option<bool>, String) {
    vm_state_once(
        model,
        service,
        vm,
        side,
        run_id,
        transport,
        &mut HashMap::new(),
    )
}

/// The host `vm`'s driver `status` runs on for `side`, and its command with its secrets;
/// why there is none.
fn status_command(
    model: &Model,
    service: &crate::inventory::Service,
    vm: &crate::inventory::Vm,
    side: Side,
    run_id: &str,
) -> Result<(String, String), String> {
    let Some((host, cmd)) = plan::vm_status_command(model, service, vm, side, run_id) else {
        return Err("its driver has no `status` action".into());
    };
    let Ok(text) = cmd.expose(|n| std::env::var(n).ok()) else {
        return Err("a secret of its `status` action is not set".into());
    };
    Ok((host, text))
}

/// The side of `vm` that `host` is.
fn side_of(vm: &crate::inventory::Vm, host: &str) -> Side {
    match host == vm.primary.value {
        true => Side::Primary,
        false => Side::Recovery,
    }
}

/// [`vm_state`], a host that could not be reached once (`down`: host → why) not asked again:
/// a lost site costs one connection timeout, not one per vm.
fn vm_state_once(
    model: &Model,
    service: &crate::inventory::Service,
    vm: &crate::inventory::Vm,
    side: Side,
    run_id: &str,
    transport: &dyn Transport,
    down: &mut HashMap<String, String>,
) -> (Option<bool>, String) {
    let (host, text) = match status_command(model, service, vm, side, run_id) {
        Ok(c) => c,
        Err(why) => return (None, why),
    };
    if let Some(why) = down.get(&host) {
        return (None, why.clone());
    }
    match transport.exec(&host, &text, StdDuration::from_secs(30)) {
        Ok(out) => {
            let text = [out.stdout.trim(), out.stderr.trim()]
                .into_iter()
                .find(|t| !t.is_empty())
                .map(|t| t.chars().take(200).collect())
                .unwrap_or_else(|| format!("exit status {} and nothing said", out.exit_code));
            // A vm its hypervisor does not define there does not run there.
            let running = runner::said_running(&out)
                .or_else(|| runner::said_not_defined(&out).then_some(false));
            (running, text)
        }
        Err(e) => {
            down.insert(host, e.to_string());
            (None, e.to_string())
        }
    }
}

/// Refuses a restore that would start a vm its other site runs or holds newer data of, and
/// warns of an emergency failover's primary that still runs its vm ([`judge_elsewhere`]):
/// the warnings (and what `force` let pass) go to the log (standard error) at once, and are
/// returned for the journal.
fn refuse_elsewhere(
    model: &Model,
    plan: &Plan,
    transport: &dyn Transport,
    away: &BTreeMap<String, Away>,
    force: bool,
) -> Result<Judged, RunError> {
    if plan.mode != Mode::Restore && !(plan.mode == Mode::Failover && plan.emergency) {
        return Ok(Judged::default());
    }
    let found = elsewhere_of(
        model,
        &plan.run_id,
        &plan.steps,
        transport,
        &mut HashMap::new(),
        away,
    );
    let mut judged = judge_elsewhere(plan.mode, &found, force);
    if plan.mode == Mode::Restore {
        let (refused, warned) = sets_relied_on(model, plan, transport);
        judged.refused.extend(refused);
        judged.warned.extend(warned);
    }
    for w in judged.warned.iter().chain(&judged.forced) {
        tracing::warn!("{w}");
    }
    if judged.refused.is_empty() {
        Ok(judged)
    } else {
        Err(RunError::RunsElsewhere {
            vms: judged.refused,
        })
    }
}

/// The backup sets of the services a restore brings back on their primary side (a step of the
/// service on the set's source host, none on its copy's) whose copy a failover relies on (its
/// `live` lease): the recovery site wrote there since (new dumps), and the primary's jobs
/// restarted on the folder of before would leave that behind, as a vm restored on its disks
/// of before would. Refused, forced or not (fail back instead, or release the set); a copy
/// that cannot be read is said.
fn sets_relied_on(
    model: &Model,
    plan: &Plan,
    transport: &dyn Transport,
) -> (Vec<String>, Vec<String>) {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let (mut refused, mut warned) = (Vec::new(), Vec::new());
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let services: BTreeSet<&str> = plan.steps.iter().map(|s| s.service.as_str()).collect();
    for sid in services {
        let hosts: BTreeSet<&str> = plan
            .steps
            .iter()
            .filter(|s| s.service == sid)
            .filter_map(|s| s.host.as_deref())
            .collect();
        for set in crate::plan::backup_sets_of(model, sid) {
            let (source, dest) = (set.source_host.value.as_str(), set.dest_host.value.as_str());
            if !hosts.contains(source) || hosts.contains(dest) || !seen.insert(&set.id) {
                continue;
            }
            let back = format!(
                "fail back instead (`reprise failback --service {sid}`) if its failback runbook copies the set back; else, once what the recovery site wrote there is kept or back on {source}, `reprise release {}` lets the copy go",
                set.id
            );
            match helpers.inspect(dest, std::slice::from_ref(&set.dest_path)) {
                Ok(copies) => {
                    for c in copies.iter().filter(|c| !c.bad_leases.is_empty()) {
                        warned.push(format!(
                            "backup set {}: the leases of its copy {dest}:{} cannot be read ({}): whether a failover relies on it cannot be told; if one does, fail back instead of restoring",
                            set.id,
                            c.path,
                            c.bad_leases.join(", ")
                        ));
                    }
                    // Still the very point a failover relied on: the recovery site wrote
                    // nothing there (a set a failback did not copy back keeps its lease).
                    let mut runs: Vec<&str> = copies
                        .iter()
                        .flat_map(|c| c.leases.iter().map(move |l| (c, l)))
                        .filter(|(c, l)| {
                            l.kind == crate::replica::LeaseKind::Live && !c.is_point_of(l)
                        })
                        .map(|(_, l)| l.run.as_str())
                        .collect();
                    runs.sort();
                    runs.dedup();
                    if !runs.is_empty() {
                        refused.push(format!(
                            "backup set {}: its copy {dest}:{} has been relied on since failover run {}: the recovery site may have written there what {source}:{} lacks, and a restore would bring service {sid} back on that folder as it was; {back}",
                            set.id,
                            set.dest_path,
                            runs.join(", "),
                            set.source_path
                        ));
                    }
                }
                Err(e) => warned.push(format!(
                    "whether a failover relies on backup set {}'s copy on {dest} could not be read ({e}): if one does, fail back instead of restoring",
                    set.id
                )),
            }
        }
    }
    (refused, warned)
}

/// A restore of a service its application replicates (a standby promoted by a failover, not
/// a disk copy) that this machine's journals show a failover switched to its other side,
/// with no failback or restore of it since: starting it on its own host would make a second
/// primary on its data of before. Refused ([`RunError::RunsElsewhere`]); with `force` (that
/// side and its data are lost), said and returned, to be journaled as forced. Pure but for
/// reading the journals.
fn refuse_switched(
    model: &Model,
    plan: &Plan,
    runs: &[(String, Vec<Event>)],
    force: bool,
) -> Result<Vec<String>, RunError> {
    if plan.mode != Mode::Restore {
        return Ok(Vec::new());
    }
    let services: BTreeMap<String, Option<String>> = plan
        .steps
        .iter()
        .filter_map(|s| model.inventory.services.get(&s.service))
        .filter(|s| s.lag().is_some())
        .map(|s| {
            let own = s.host().map(str::to_string).or_else(|| {
                s.vm()
                    .and_then(|v| model.inventory.vms.get(v))
                    .map(|v| v.primary.value.clone())
            });
            (s.id.clone(), own)
        })
        .collect();
    if services.is_empty() {
        return Ok(Vec::new());
    }
    let said = judge_switched(&crate::away::switched_of(runs, &services));
    if said.is_empty() || force {
        for s in &said {
            tracing::warn!("{s}");
        }
        return Ok(said);
    }
    Err(RunError::RunsElsewhere { vms: said })
}

/// What [`refuse_switched`] says of each service a failover switched. Pure.
fn judge_switched(switched: &BTreeMap<String, crate::away::Switched>) -> Vec<String> {
    switched
        .iter()
        .map(|(service, s)| {
            let host = s.host.as_deref().map(|h| format!(" on {h}")).unwrap_or_default();
            let (how, did) = match s.done {
                true => ("switched", "done"),
                false => ("may have switched", "not done: it failed, timed out or never ended"),
            };
            format!(
                "service {service}: failover run {} {how} it to its other side (step {} {did}{host}, at {}), and no failback or restore of it has brought it back since, as this machine's journals show: its application's newest data may be there, and a restore would start it on its own host from its data of before, making two primaries that diverge; fail back instead (`reprise failback --service {service}`), or, if that side and its data are lost, `reprise restore --force`",
                s.run_id,
                s.step,
                s.at.format("%Y-%m-%d %H:%M:%S UTC"),
            )
        })
        .collect()
}

/// A vm a run is about to start on one site, as the other site shows it: whether it runs
/// there (its driver's `status`; `None`: it could not say, with what was said), and, for a
/// restore, the failovers that left its newest data on its recovery copies (their `live`
/// leases), or why the copies cannot be read, and what this machine's journals say of it.
#[derive(Debug, Clone)]
pub struct Elsewhere {
    pub vm: String,
    pub service: String,
    /// The host the run starts it on, and the other one.
    pub here: String,
    pub there: String,
    pub running: (Option<bool>, String),
    pub live: Option<Result<Vec<String>, String>>,
    /// For a restore: its recovery copies written since their newest point (a vm may have
    /// run on them outside reprise), each with why it is taken so.
    pub changed: Vec<String>,
    /// For a restore: its recovery copies whose leases cannot be read (a lease file damaged,
    /// the leases folder unreadable), each with why: a failover's lease may be among them.
    pub unread_leases: Vec<String>,
    /// Whether reprise keeps recovery copies of it (copies that a failover's lease marks).
    pub copies: bool,
    /// For a restore: the failover this machine's journals show left it on its recovery host
    /// ([`crate::away`]), in words.
    pub away: Option<String>,
    /// For a restore: what was settled of its recovery copies before they were judged (an
    /// update of reprise's own cut in them, [`settle_cut`]).
    pub settled: Vec<String>,
}

/// The vms `steps` start (their vm steps' `start` on a host of theirs), each with what the
/// other site shows of it: for an emergency failover, the primary; for a restore, the
/// recovery host and its copies, and what `away` (this machine's journals) says of it. A host
/// found down (`down`: host → why) is not asked again.
fn elsewhere_of(
    model: &Model,
    run_id: &str,
    steps: &[PlannedStep],
    transport: &dyn Transport,
    down: &mut HashMap<String, String>,
    away: &BTreeMap<String, Away>,
) -> Vec<Elsewhere> {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let mut found: Vec<Elsewhere> = Vec::new();
    for step in steps {
        if step.kind != "vm" || step.action.as_deref() != Some("start") {
            continue;
        }
        let Some(service) = model.inventory.services.get(&step.service) else {
            continue;
        };
        let Some(vm) = step.vm.as_ref().and_then(|v| model.inventory.vms.get(v)) else {
            continue;
        };
        if found.iter().any(|e| e.vm == vm.id) {
            continue;
        }
        let here = step.host.clone().unwrap_or_default();
        let (there, other) = if here == vm.recovery.value {
            (vm.primary.value.clone(), Side::Primary)
        } else {
            (vm.recovery.value.clone(), Side::Recovery)
        };
        let running = vm_state_once(model, service, vm, other, run_id, transport, down);
        let (mut changed, mut settled, mut unread_leases) = (Vec::new(), Vec::new(), Vec::new());
        let live = (other == Side::Recovery).then(|| {
            if let Some(why) = down.get(&there) {
                return Err(why.clone());
            }
            let dir = plan::images_dir_of(&model.inventory, &there)
                .ok_or_else(|| format!("{there} names no images_dir"))?;
            let paths: Vec<String> = vm.disks.iter().map(|d| format!("{dir}/{d}")).collect();
            let mut copies = helpers.inspect(&there, &paths).map_err(|e| e.to_string());
            // A replication cut after its commit (the recovery host crashed while it wrote
            // the copy) changed the copy itself: completed first, so that it is not taken for
            // a vm that ran there. Only under a vm known stopped there: settling writes it.
            if running.0 == Some(false) {
                let what = format!("vm {}: its recovery copy", vm.id);
                settled = settle_cut(&helpers, &there, &what, &paths, &mut copies);
            }
            let copies = copies?;
            // A copy not there (its storage not mounted after a power cut, say) holds leases
            // nobody can read: whether a failover's vm wrote its newest data there cannot be
            // told.
            if let Some(c) = copies.iter().find(|c| !c.exists) {
                return Err(match &c.unreadable {
                    Some(e) => format!("its copy {} cannot be looked at ({e})", c.path),
                    None => format!(
                        "its copy {} is not there (its storage not mounted?)",
                        c.path
                    ),
                });
            }
            // Written since its newest point with no failover's lease: a vm ran on it outside
            // reprise (started by hand, or a failover's start refused or rolled back after
            // the vm came up), and it may hold the vm's newest data.
            changed.extend(
                copies
                    .iter()
                    .filter_map(|c| c.changed.as_ref().map(|why| format!("{} ({why})", c.path))),
            );
            unread_leases.extend(
                copies
                    .iter()
                    .filter_map(crate::replica::CopyState::unread_leases),
            );
            let mut runs: Vec<String> = copies
                .iter()
                .flat_map(|c| c.leases.iter())
                // Any failover's lease, whatever vm name it was taken under: the paths are
                // this vm's.
                .filter(|l| l.kind == crate::replica::LeaseKind::Live)
                .map(|l| l.run.clone())
                .collect();
            runs.sort();
            runs.dedup();
            Ok(runs)
        });
        let away = (other == Side::Recovery)
            .then(|| away.get(&vm.id).map(Away::said))
            .flatten();
        found.push(Elsewhere {
            vm: vm.id.clone(),
            service: service.id.clone(),
            here,
            running,
            there,
            live,
            changed,
            unread_leases,
            copies: !vm.disks.is_empty(),
            away,
            settled,
        });
    }
    found
}

/// What stops a run of `mode` from starting the vms `found` (refused), and what is only said
/// (warned): what could not be asked (the other site may be down, which is why the run is
/// made), and, in an emergency failover, a primary that still runs its vm (the operator
/// declared it lost: said loudly, not refused). A restore of a vm that runs on its recovery
/// host, or that a failover left running on its recovery copies, would start it from its
/// disks of before: refused. So is one whose recovery copies were written since their newest
/// point outside any failover (a vm ran on them by hand: `force` passes it, said). So is one
/// that this machine's journals show a failover left there, when the recovery host cannot tell (it does not answer, or reprise keeps no copies
/// of the vm to hold a lease): unless `force` (the recovery site and its data are lost), then
/// said. Pure.
pub fn judge_elsewhere(mode: Mode, found: &[Elsewhere], force: bool) -> Judged {
    let (mut refused, mut warned, mut forced) = (Vec::new(), Vec::new(), Vec::new());
    let (mut diverged, mut unasked) = (Vec::new(), Vec::new());
    for e in found {
        let (vm, here, there, service) = (&e.vm, &e.here, &e.there, &e.service);
        warned.extend(e.settled.iter().cloned());
        let back = format!(
            "fail back instead (`reprise failback --service {service}`), which copies its data back first"
        );
        match &e.running {
            (Some(true), said) if mode == Mode::Failover => {
                diverged.push(vm.clone());
                warned.push(format!(
                    "vm {vm} still runs on {there} (its status says `{said}`): its copy started on {here} makes two copies of its data that diverge; stop it on {there} or cut it off now (a planned failover, without --emergency, stops it first and copies its last writes)"
                ))
            }
            (Some(true), said) => refused.push(format!(
                "vm {vm} runs on {there} (its status says `{said}`): a restore would start it on {here} from its disks of before, and two copies would diverge; {back}"
            )),
            (Some(false), _) => {}
            // A primary that cannot be asked is what an emergency failover is made for (its
            // health checks ask again, and say so); when the vm last wrote there is then not
            // known, which the report says.
            (None, said) if mode == Mode::Failover => {
                unasked.push(vm.clone());
                warned.push(format!(
                    "whether vm {vm} still runs on {there} could not be asked ({said}): what it wrote there after its point is not in its copy, and its data loss is measured only to the incident time the run was started with (--incident-at), if any"
                ))
            }
            (None, said) => warned.push(format!(
                "whether vm {vm} runs on {there} could not be asked ({said}): if it does, two copies of its data diverge; stop one"
            )),
        }
        match &e.live {
            None => {}
            Some(Ok(runs)) if runs.is_empty() => {}
            Some(Ok(runs)) => refused.push(format!(
                "vm {vm} ran on its recovery copies on {there} since failover run {}: they hold its newest data, and a restore would start it on {here} from its disks of before; {back} (if its data came back by other means, `reprise release {vm}` first)",
                runs.join(", ")
            )),
            // The recovery host answers, but the copies (and the leases beside them) cannot
            // be read (its storage not mounted after the power cut, say): as a lease that
            // cannot be read, refused unless forced.
            Some(Err(why))
                if mode == Mode::Restore && e.away.is_none() && e.running.0 == Some(false) =>
            {
                if force {
                    forced.push(format!(
                        "vm {vm}: its recovery copies on {there} cannot be read ({why}); started on {here} from its disks of before, as forced (--force): if a failover left it running there, what it wrote there is not in them"
                    ));
                } else {
                    refused.push(format!(
                        "vm {vm}: its recovery copies on {there} cannot be read ({why}), nor the leases beside them: a failover's may be among them, and then its newest data is there and a restore would start it on {here} from its disks of before: make them readable on {there} (mount its storage) and run the restore again; if vm {vm} never ran there, or nothing it wrote there is to be kept, `reprise restore --force` starts it from its disks on {here}"
                    ));
                }
            }
            Some(Err(why)) if e.away.is_none() => warned.push(format!(
                "whether a failover left vm {vm}'s newest data on its recovery copies on {there} could not be read ({why}): if one did, fail back instead of restoring"
            )),
            Some(Err(_)) => {}
        }
        // A copy written since its newest point, with no failover's lease (said above when
        // there is one): a vm ran on it outside reprise, and may have written its newest
        // data there.
        if mode == Mode::Restore
            && !e.changed.is_empty()
            && !matches!(e.running, (Some(true), _))
            && matches!(&e.live, Some(Ok(runs)) if runs.is_empty())
        {
            let copies = e.changed.join("; ");
            if force {
                forced.push(format!(
                    "vm {vm}: its recovery copies on {there} were written since their newest point, outside any failover: {copies}; started on {here} from its disks of before, as forced (--force): what was written there is not in them"
                ));
            } else {
                refused.push(format!(
                    "vm {vm}: its recovery copies on {there} were written since their newest point, outside any failover: {copies}; if vm {vm} ran there, its newest data is there and a restore would start it on {here} from its disks of before: stop it there and copy them back (`reprise failback --service {service} --force`, which copies them back first); if nothing of it is to be kept, `reprise restore --force` starts it from its disks on {here} (the next replication then stops on those copies until `reprise release {vm}` lets what was written there go)"
                ));
            }
        }
        // A lease that cannot be read may be a failover's: the copies may hold the vm's newest
        // data, as a lease read would say (refused above when one is read).
        if mode == Mode::Restore
            && !e.unread_leases.is_empty()
            && !matches!(e.running, (Some(true), _))
            && matches!(&e.live, Some(Ok(runs)) if runs.is_empty())
        {
            let copies = e.unread_leases.join("; ");
            if force {
                forced.push(format!(
                    "vm {vm}: the leases of its recovery copies on {there} cannot be read: {copies}; started on {here} from its disks of before, as forced (--force): if a failover left it running there, what it wrote there is not in them"
                ));
            } else {
                refused.push(format!(
                    "vm {vm}: the leases of its recovery copies on {there} cannot be read: {copies}; a failover's lease may be among them, and then its newest data is there and a restore would start it on {here} from its disks of before: make them readable on {there} and run the restore again (a failover's lease then says to fail back: `reprise failback --service {service}`); if vm {vm} never ran there, or nothing it wrote there is to be kept, `reprise restore --force` starts it from its disks on {here}"
                ));
            }
        }
        // What this machine's journals say counts only where the recovery host cannot: a
        // lease it shows (refused above), or none (released there: `reprise release`).
        let unasked = match &e.live {
            Some(Err(why)) => Some(format!("its copies on {there} cannot be read ({why})")),
            Some(Ok(_)) if !e.copies => Some(format!(
                "reprise keeps no copies of it on {there} whose leases would say so"
            )),
            _ => None,
        };
        if mode != Mode::Restore || matches!(e.running, (Some(true), _)) {
            continue;
        }
        if let (Some(away), Some(unasked)) = (&e.away, unasked) {
            if force {
                forced.push(format!(
                    "vm {vm}: {away}; {unasked}; started on {here} from its disks of before, as forced (--force): what it wrote on {there} since is not in them"
                ));
            } else {
                refused.push(format!(
                    "vm {vm}: {away}; {unasked}, so its newest data is likely there, and a restore would start it on {here} from its disks of before; {back} once {there} answers; if {there} and its data are lost, `reprise restore --force` starts it from its disks on {here}, without what it wrote since"
                ));
            }
        }
    }
    Judged {
        refused,
        warned,
        forced,
        diverged,
        unasked,
    }
}

/// What [`judge_elsewhere`] found: what stops the run, what is only said, and what `--force`
/// let pass (journaled as forced).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Judged {
    pub refused: Vec<String>,
    pub warned: Vec<String>,
    pub forced: Vec<String>,
    /// The vms said to run still on the side left (an emergency failover starts them all the
    /// same): their data loss is not measured ([`Event::OtherSite`]).
    pub diverged: Vec<String>,
    /// The vms whose side left could not be asked whether they still run there (an
    /// emergency failover starts them all the same): their data loss is measured only to a
    /// declared incident time ([`Event::OtherSite`]).
    pub unasked: Vec<String>,
}

/// What a restore reads of this machine's journals: every run's events ([`crate::away`]).
type Runs = Vec<(String, Vec<Event>)>;

/// For a restore: the vms this machine's journals show a failover left on their recovery host
/// ([`crate::away`]), a warning for each journal that could not be read, and the runs read
/// (for [`refuse_switched`]).
fn away_for(plan: &Plan, state_dir: &Path) -> (BTreeMap<String, Away>, Vec<String>, Runs) {
    if plan.mode != Mode::Restore {
        return (BTreeMap::new(), Vec::new(), Vec::new());
    }
    let (runs, unread) = crate::away::read_runs(state_dir);
    let away = crate::away::away_of(&runs);
    let unread = unread
        .into_iter()
        .map(|why| {
            format!(
                "a journal of this machine could not be read ({why}): a failover it shows would not stop this restore"
            )
        })
        .collect();
    (away, unread, runs)
}

/// A restore's question to the recovery site before each step that starts a vm
/// ([`runner::OtherSite`]): the same question and judgement as its start ([`elsewhere`],
/// [`judge_elsewhere`]). A recovery host that did not answer is not asked again for
/// [`DOWN_FOR`]: a restore after a site-wide power cut does not wait one connection timeout
/// a vm (what could not be asked is said in each step's output).
struct RestoreGuard {
    model: Model,
    run_id: String,
    transport: Arc<dyn Transport>,
    down: std::sync::Mutex<HashMap<String, (std::time::Instant, String)>>,
    /// Where each host's SSH port is, knocked on to tell one back from one still down.
    endpoints: HashMap<String, (String, u16)>,
    /// What this machine's journals showed at the run's start, and whether it was forced.
    away: BTreeMap<String, Away>,
    force: bool,
    /// Who runs it (this start, or this resume).
    operator: String,
    /// What the journal already says was forced (at the start, or at an earlier step): not
    /// journaled again.
    journaled: std::sync::Mutex<BTreeSet<String>>,
}

/// The problems `events` say were forced (`readiness_forced`).
fn forced_in(events: &[Event]) -> impl Iterator<Item = String> + '_ {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ReadinessForced { problems, .. } => Some(problems),
            _ => None,
        })
        .flatten()
        .cloned()
}

/// Each host's SSH address and port as its connections reach it (the inventory's, or the
/// user's ssh configuration's `HostName` and `Port` for what the inventory does not name).
fn ssh_endpoints(model: &Model, ssh: &SshOptions) -> HashMap<String, (String, u16)> {
    model
        .inventory
        .hosts
        .iter()
        .map(|(id, h)| {
            let spec = host_spec(h, ssh);
            (id.clone(), (spec.address, spec.port))
        })
        .collect()
}

/// Whether `host`'s SSH port (as `endpoints` has it) takes a TCP connection within two
/// seconds (a host taken as down that may have come back).
fn answers_now(endpoints: &HashMap<String, (String, u16)>, host: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    let Some((address, port)) = endpoints.get(host) else {
        return false;
    };
    (address.as_str(), *port)
        .to_socket_addrs()
        .map(|mut addrs| {
            addrs.any(|a| {
                std::net::TcpStream::connect_timeout(&a, StdDuration::from_secs(2)).is_ok()
            })
        })
        .unwrap_or(false)
}

/// How long a recovery host that did not answer a restore's question is taken as down.
const DOWN_FOR: StdDuration = StdDuration::from_secs(120);

impl runner::OtherSite for RestoreGuard {
    fn judge(&self, step: &PlannedStep) -> runner::OtherSiteSays {
        let mut known = self.down.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|_, (since, _)| since.elapsed() < DOWN_FOR);
        // A host that came back since (a recovery host booting after the power cut, now
        // running a vm a failover left there) is asked again: its SSH port is knocked on,
        // which costs seconds at most, not a connection's timeout.
        known.retain(|host, _| !answers_now(&self.endpoints, host));
        let mut down: HashMap<String, String> = known
            .iter()
            .map(|(h, (_, why))| (h.clone(), why.clone()))
            .collect();
        let found = elsewhere_of(
            &self.model,
            &self.run_id,
            std::slice::from_ref(step),
            self.transport.as_ref(),
            &mut down,
            &self.away,
        );
        for (host, why) in down {
            known
                .entry(host)
                .or_insert_with(|| (std::time::Instant::now(), why));
        }
        let judged = judge_elsewhere(Mode::Restore, &found, self.force);
        let mut says = guard_says(
            &self.journaled,
            &self.operator,
            judged.refused,
            judged.forced,
        );
        says.said.extend(judged.warned);
        says
    }
}

/// What a guard says of a step: `refused`, and what `forced` let pass, journaled once (what
/// the journal already holds is only said again).
fn guard_says(
    journaled: &std::sync::Mutex<BTreeSet<String>>,
    operator: &str,
    refused: Vec<String>,
    forced: Vec<String>,
) -> runner::OtherSiteSays {
    let mut journaled = journaled.lock().unwrap_or_else(|e| e.into_inner());
    let (new, said): (Vec<String>, Vec<String>) =
        forced.into_iter().partition(|p| !journaled.contains(p));
    journaled.extend(new.iter().cloned());
    runner::OtherSiteSays {
        refused,
        said,
        forced: new,
        operator: operator.to_string(),
    }
}

/// Before a planned failover or a failback starts a vm on one site: what its state on the
/// other site, the one the run leaves, says. Running, the vm would run on both sites, both
/// writing: refused, forced or not (the runbook's stop did not stop it, or it was started
/// again since). Not known (the host does not answer, a state such as `paused`): refused
/// unless the run was forced (then said as forced). Pure.
pub fn judge_other_side_before_start(
    vm: &str,
    other_host: &str,
    state: (Option<bool>, String),
    force: bool,
) -> (Vec<String>, Vec<String>) {
    let (running, said) = state;
    match running {
        Some(true) => (
            vec![format!(
                "vm {vm} runs on {other_host}, the side this run leaves (its status says `{said}`): started here too, it would run on both sites, both writing; stop it there (the runbook's stop did not, or it was started again), then resume"
            )],
            Vec::new(),
        ),
        Some(false) => (Vec::new(), Vec::new()),
        None if force => (
            Vec::new(),
            vec![format!(
                "vm {vm}: its state on {other_host}, the side this run leaves, cannot be told ({said}); started here all the same, as forced (--force)"
            )],
        ),
        None => (
            vec![format!(
                "vm {vm}: its state on {other_host}, the side this run leaves, cannot be told ({said}): if it runs there, starting it here runs it on both sites; resume once its state can be read (it must be stopped; a driver's `status` says a vm is not defined there by printing a line `not defined` and exiting non-zero), or with --force once it is known stopped there"
            )],
            Vec::new(),
        ),
    }
}

/// What the other site says of the vm a start step starts ([`judge_other_side_before_start`]);
/// nothing for any other step.
fn other_side_of_start(
    model: &Model,
    run_id: &str,
    transport: &dyn Transport,
    step: &PlannedStep,
    force: bool,
) -> (Vec<String>, Vec<String>) {
    let starts = step.kind == "vm" && step.action.as_deref() == Some("start");
    let (Some(vm_id), Some(host)) = (step.vm.as_deref(), step.host.as_deref()) else {
        return (Vec::new(), Vec::new());
    };
    let (Some(service), Some(vm)) = (
        model.inventory.services.get(&step.service),
        model.inventory.vms.get(vm_id),
    ) else {
        return (Vec::new(), Vec::new());
    };
    if !starts || vm.primary.value == vm.recovery.value {
        return (Vec::new(), Vec::new());
    }
    let other = match side_of(vm, host) {
        Side::Primary => Side::Recovery,
        Side::Recovery => Side::Primary,
    };
    let other_host = match other {
        Side::Primary => &vm.primary.value,
        Side::Recovery => &vm.recovery.value,
    };
    let state = vm_state(model, service, vm, other, run_id, transport);
    judge_other_side_before_start(vm_id, other_host, state, force)
}

/// A planned failover's question before each vm start on the recovery site
/// ([`runner::OtherSite`]): the vm must be stopped on its primary ([`other_side_of_start`]).
struct FailoverGuard {
    model: Model,
    run_id: String,
    transport: Arc<dyn Transport>,
    force: bool,
    operator: String,
    journaled: std::sync::Mutex<BTreeSet<String>>,
}

impl runner::OtherSite for FailoverGuard {
    fn judge(&self, step: &PlannedStep) -> runner::OtherSiteSays {
        let (refused, forced) = other_side_of_start(
            &self.model,
            &self.run_id,
            self.transport.as_ref(),
            step,
            self.force,
        );
        guard_says(&self.journaled, &self.operator, refused, forced)
    }
}

/// A failback's question before each copy back ([`runner::OtherSite`]): a vm must not run on
/// the primary, and the disks or folder the copy back overwrites there must still be as the
/// failback judged them at its start (or resume, [`judge_copy_back`], [`judge_folder_back`]):
/// one written since was never seen by the operator, whatever `--force` passed then.
/// Refused, the step fails; a resume judges them again.
struct FailbackGuard {
    model: Model,
    run_id: String,
    transport: Arc<dyn Transport>,
    judged: JudgedDisks,
    /// The run was forced (`--force`), by `operator`.
    force: bool,
    operator: String,
    /// What the journal already says was forced: not journaled again.
    journaled: std::sync::Mutex<BTreeSet<String>>,
}

/// Before a vm's copy back: what its state on the primary (`to_host`) says. Running, the copy
/// back would overwrite the disks it writes: refused, forced or not. Not known (the host does
/// not answer the question, a state such as `paused`): refused unless the run was forced
/// (then said as forced). Pure.
pub fn judge_primary_before_copy_back(
    vm: &str,
    to_host: &str,
    state: (Option<bool>, String),
    force: bool,
) -> (Vec<String>, Vec<String>) {
    let (running, said) = state;
    match running {
        Some(true) => (
            vec![format!(
                "vm {vm} runs on {to_host} (its status says `{said}`): the copy back would overwrite the disks it is writing; stop it there, keep a copy of what it wrote, then resume (the failback judges its disks again)"
            )],
            Vec::new(),
        ),
        Some(false) => (Vec::new(), Vec::new()),
        None if force => (
            Vec::new(),
            vec![format!(
                "vm {vm}: its state on {to_host} cannot be told ({said}); its disks there are overwritten by the copy back, as forced (--force)"
            )],
        ),
        None => (
            vec![format!(
                "vm {vm}: its state on {to_host} cannot be told ({said}): if it runs, the copy back would overwrite the disks it is writing; resume once its state can be read (it must be stopped), or with --force once it is known stopped or not defined there"
            )],
            Vec::new(),
        ),
    }
}

impl runner::OtherSite for FailbackGuard {
    fn judge(&self, step: &PlannedStep) -> runner::OtherSiteSays {
        let (model, t) = (&self.model, self.transport.as_ref());
        let (mut refused, mut forced) =
            other_side_of_start(model, &self.run_id, t, step, self.force);
        let says = |refused, forced| guard_says(&self.journaled, &self.operator, refused, forced);
        let plan::Action::Replicate { what, to_host, .. } = &step.action_spec else {
            return says(refused, forced);
        };
        // Whatever was judged at the start (a vm whose disks could not be read then, forced
        // past, was not): a vm running on the primary is never copied over.
        if let plan::Replicated::Vm(vm_id) = what
            && let (Some(service), Some(vm)) = (
                model.inventory.services.get(&step.service),
                model.inventory.vms.get(vm_id),
            )
        {
            let state = vm_state(model, service, vm, Side::Primary, &self.run_id, t);
            let (r, f) = judge_primary_before_copy_back(vm_id, to_host, state, self.force);
            refused.extend(r);
            forced.extend(f);
        }
        let Some(then) = self.judged.get(&judged_key(what)) else {
            // A copy back over the primary that this run's start or resume did not judge
            // (forced past, it is said as forced): whether the primary was written since the
            // failover cannot be told, and it is never overwritten unsaid.
            let primary = match what {
                plan::Replicated::Vm(v) => {
                    model.inventory.vms.get(v).map(|v| v.primary.value.as_str())
                }
                plan::Replicated::Backup(b) => model
                    .inventory
                    .backups
                    .get(b)
                    .map(|b| b.source_host.value.as_str()),
            };
            if primary == Some(to_host.as_str()) {
                let line = format!(
                    "{}: what the copy back overwrites on {to_host} was not judged when this failback started or resumed: whether it was written since the failover cannot be told; keep a copy of it first, then resume with --force",
                    judged_key(what)
                );
                match self.force {
                    true => forced.push(line),
                    false => refused.push(line),
                }
            }
            return says(refused, forced);
        };
        let paths: Vec<String> = then.iter().map(|(p, _)| p.clone()).collect();
        match crate::replica::remote::Helpers::new(t).inspect(to_host, &paths) {
            Err(e) => refused.push(format!(
                "what the copy back of {} overwrites on {to_host} cannot be read ({e}): whether it was written since this failback judged it cannot be told; resume once {to_host} answers",
                judged_key(what)
            )),
            Ok(now) => {
                for ((path, before), d) in then.iter().zip(&now) {
                    let after = d.exists.then(|| d.stamp.clone()).flatten();
                    // Exactly the newest point a replication made of it (an earlier copy back
                    // of this run, while the vm still ran): nothing of its own.
                    if after != *before && !d.is_newest_point() {
                        let (what, keep) = match what {
                            plan::Replicated::Vm(_) => (
                                "its disk",
                                format!("qemu-img convert -O qcow2 {path} {path}.kept"),
                            ),
                            plan::Replicated::Backup(_) => {
                                ("its folder", format!("cp -a {path} {path}.kept"))
                            }
                        };
                        refused.push(format!(
                            "{what} {path} on {to_host} was written since this failback judged it (it was `{}`, it is `{}`): the copy back would overwrite or remove what was written there; keep a copy of it first (e.g. `{keep}` on {to_host}), then resume (the failback judges it again; --force passes it)",
                            before.as_deref().unwrap_or("not there"),
                            after.as_deref().unwrap_or("not there")
                        ));
                    }
                }
            }
        }
        says(refused, forced)
    }
}

/// A vm a failback copies back over its primary's disks, as read before it starts.
#[derive(Debug, Clone)]
pub struct CopyBack {
    pub vm: String,
    pub primary: String,
    pub recovery: String,
    /// Whether the vm runs on the primary now (`None`: its `status` could not say), and what
    /// it said.
    pub running: (Option<bool>, String),
    /// Its recovery copies as the helper reads them, or why they cannot be read.
    pub copies: Result<Vec<crate::replica::CopyState>, String>,
    /// The primary's disks the copies would overwrite (in the same order), as the helper
    /// reads them there, or why they cannot be read.
    pub disks: Result<Vec<crate::replica::CopyState>, String>,
    /// The primary's clock minus this machine's, in seconds, and the uncertainty of that
    /// reading, or why it cannot be read: the disks' times are the primary's clock, a lease's
    /// the clock of the orchestrator that took it.
    pub clock: Result<(f64, f64), String>,
    /// What was settled of its disks before they were read (see [`settle_cut`]).
    pub settled: Vec<String>,
    /// The replication overlays beside its primary's disks (see
    /// [`crate::inventory::replication_overlay`]), as the helper reads them there, or why
    /// they cannot be read: one left by a replication cut (the primary lost its power while
    /// it copied) is what the vm's domain writes into when it starts there again.
    pub overlays: Result<Vec<crate::replica::CopyState>, String>,
}

/// What stops a failback from copying a vm back over its primary's disks: vms that run on
/// the primary (their disks would be overwritten under them, and what they wrote since the
/// failover lost), and problems `--force` may pass: a primary whose state cannot be read, or
/// recovery copies no failover started a vm on (no `live` lease of the vm: a replica older
/// than the primary's disks, not the newer data of a vm that ran on them), or a primary disk
/// written after the data the failover started the vm from on its recovery copies (a vm
/// started there when the site came back, or writes of the primary after the last point an
/// emergency failover started from: the recovery site never got them, and they would be
/// lost), or whose time cannot be read. Pure.
pub fn judge_copy_back(backs: &[CopyBack]) -> (Vec<String>, Vec<String>) {
    use crate::replica::LeaseKind;
    let (mut runs, mut problems) = (Vec::new(), Vec::new());
    for b in backs {
        let (vm, primary, recovery) = (&b.vm, &b.primary, &b.recovery);
        match &b.running {
            (Some(true), _) => runs.push(format!(
                "vm {vm} runs on {primary}: the failback would copy its recovery copies from {recovery} over the disks it is writing, and what it wrote there would be lost"
            )),
            (Some(false), _) => {}
            (None, said) => problems.push(format!(
                "copy-back vm {vm}: its state on {primary} cannot be read ({said}); its disks there are about to be overwritten, so it must be known stopped (--force once it is known stopped or not defined there)"
            )),
        }
        // A replication's overlay left on the primary: the vm's domain names it as its disk
        // and writes into it when started there again. Copied back under it, the vm would
        // start on that overlay over other data; what it wrote there would be lost beside.
        match &b.overlays {
            Ok(overlays) => {
                for o in overlays {
                    if let Some(e) = &o.unreadable {
                        problems.push(format!(
                            "copy-back vm {vm}: whether a replication's snapshot overlay {} is left on {primary} cannot be told ({e}); one would hold what it wrote there (--force once none is there)",
                            o.path
                        ));
                    }
                }
                for o in overlays.iter().filter(|o| o.exists) {
                    runs.push(format!(
                        "vm {vm}: a replication's snapshot overlay {} is left on {primary} (a replication cut there, by a power cut say): its domain writes into it when it starts there, and it may hold what vm {vm} wrote on {primary} after the failover; copied back under it, vm {vm} would start on that overlay over other data. Merge it into its disk first, with the vm stopped (`qemu-img commit {}`, then point the domain's disk back at its file: `virsh edit {vm}`), and fail back again: what it wrote there is then judged as any write to the disk",
                        o.path, o.path
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "copy-back vm {vm}: whether a replication's snapshot overlay is left beside its disks on {primary} cannot be read ({e}); one would hold what it wrote there (--force once none is there)"
            )),
        }
        match &b.copies {
            Err(e) => problems.push(format!(
                "copy-back vm {vm}: its recovery copies on {recovery} cannot be read ({e}): nothing shows that it failed over"
            )),
            Ok(copies) => {
                for c in copies {
                    let live = c
                        .leases
                        .iter()
                        .any(|l| l.kind == LeaseKind::Live && l.vm == *vm);
                    if !c.bad_leases.is_empty() {
                        problems.push(format!(
                            "copy-back vm {vm}: the leases of its recovery copy {} on {recovery} cannot be read ({})",
                            c.path,
                            c.bad_leases.join(", ")
                        ));
                    } else if !live {
                        problems.push(format!(
                            "copy-back vm {vm}: its recovery copy {} on {recovery} was not started by a failover (no live lease): it holds a replica of the primary, older than the disks it would overwrite on {primary}; fail over first, or use --force only if vm {vm} did run on that copy",
                            c.path
                        ));
                    }
                }
                problems.extend(written_since(b, copies));
            }
        }
    }
    (runs, problems)
}

/// The vms of `backs` whose primary disks a copy back would overwrite though they were
/// written after the data the failover started the vm from, or cannot be read
/// ([`written_since`]), or whose recovery copies no failover shows it relied on (no `live`
/// lease of the vm, leases that cannot be read, copies that cannot be looked at: nothing
/// dates what the primary holds against them); and the backup sets of `folders` that
/// [`judge_folder_back`] finds a problem with: forced past, what they held on the primary
/// is lost, unmeasured.
fn overwritten_by_copy_back(backs: &[CopyBack], folders: &[FolderBack]) -> Vec<String> {
    use crate::replica::LeaseKind;
    let vms = backs.iter().filter(|b| match &b.copies {
        Err(_) => true,
        Ok(copies) => {
            copies.iter().any(|c| {
                !c.bad_leases.is_empty()
                    || !c
                        .leases
                        .iter()
                        .any(|l| l.kind == LeaseKind::Live && l.vm == b.vm)
            }) || !written_since(b, copies).is_empty()
        }
    });
    let sets = folders
        .iter()
        .filter(|f| !judge_folder_back(std::slice::from_ref(f)).is_empty());
    vms.map(|b| b.vm.clone())
        .chain(sets.map(|f| f.set.clone()))
        .collect()
}

/// The primary disks of `b` written after the data the failover started the vm from on the
/// recovery copy that would overwrite them (its `live` lease: the point's time, or the
/// failover's, whichever is earlier), or whose time cannot be read. A disk that
/// is exactly the newest point a replication made of it (a reverse replication, which wrote
/// it from the recovery copy) holds nothing of its own. A disk not there is one too: its
/// storage may not be mounted (the copy back would be written under the mount point, and the
/// disk of before the failover found again once it is mounted), unless the primary's disks
/// are really gone (`--force`).
fn written_since(b: &CopyBack, copies: &[crate::replica::CopyState]) -> Vec<String> {
    use crate::replica::LeaseKind;
    let (vm, primary, recovery) = (&b.vm, &b.primary, &b.recovery);
    let keep = |disk: &str| {
        format!(
            "keep a copy of it first (e.g. `qemu-img convert -O qcow2 {disk} {disk}.kept`, or `cp --sparse=always {disk} {disk}.kept` on {primary}), then use --force to overwrite it"
        )
    };
    let disks = match &b.disks {
        Ok(d) if d.len() == copies.len() => d,
        Ok(d) => {
            return vec![format!(
                "copy-back vm {vm}: its disks on {primary} cannot be read (asked about {}, told about {}): whether it wrote there since the failover cannot be told; {}",
                copies.len(),
                d.len(),
                keep("DISK")
            )];
        }
        Err(e) => {
            return vec![format!(
                "copy-back vm {vm}: its disks on {primary} cannot be read ({e}): whether it wrote there since the failover cannot be told; {}",
                keep("DISK")
            )];
        }
    };
    let mut problems = Vec::new();
    for (c, d) in copies.iter().zip(disks) {
        // What the recovery site holds of the primary is its data as of the point the
        // failover started the vm from (or of the failover, whichever is earlier): an
        // emergency failover's last point may be older than the primary's last writes.
        let Some(at) = c
            .leases
            .iter()
            .filter(|l| l.kind == LeaseKind::Live && l.vm == *vm)
            .map(|l| l.taken_at.map_or(l.at, |t| t.min(l.at)))
            .min()
        else {
            continue; // no failover started it: said above
        };
        if let Some(e) = &d.unreadable {
            problems.push(format!(
                "copy-back vm {vm}: its disk {} on {primary} cannot be looked at ({e}): whether it was written after the failover started vm {vm} on {} on {recovery} from its data as of {} cannot be told; {}",
                d.path,
                c.path,
                at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
                keep(&d.path)
            ));
            continue;
        }
        if !d.exists {
            problems.push(format!(
                "copy-back vm {vm}: its disk {} is not on {primary}: its storage may not be mounted (the copy back would be written under its mount point, and the vm's disk of before the failover found again once it is mounted, to be replicated over the recovery copies); mount it and run again, or, if the primary's disks are really gone (a storage rebuilt), use --force to copy them back",
                d.path
            ));
            continue;
        }
        let replica = d.is_newest_point();
        let at_text = at.format("%Y-%m-%d %H:%M:%S%.3f UTC");
        let (m, (skew, uncertainty)) = match (d.mtime, &b.clock) {
            (None, _) => {
                problems.push(format!(
                    "copy-back vm {vm}: the time its disk {} on {primary} was last written cannot be read: whether it was written after the failover started vm {vm} on {} on {recovery} from its data as of {at_text} cannot be told; {}",
                    d.path,
                    c.path,
                    keep(&d.path)
                ));
                continue;
            }
            (Some(_), _) if replica => continue,
            (Some(_), Err(e)) => {
                problems.push(format!(
                    "copy-back vm {vm}: the clock of {primary} cannot be read ({e}): the time its disk {} was last written (its clock) cannot be compared with the time of the data the failover started from ({at_text}), so whether it was written since cannot be told; {}",
                    d.path,
                    keep(&d.path)
                ));
                continue;
            }
            (Some(m), Ok(clock)) => (m, *clock),
        };
        if written_after(m, skew, uncertainty, at) {
            let offset = if skew.abs() >= 0.001 {
                format!(
                    " by its clock, {:.3}s {} this machine's",
                    skew.abs(),
                    if skew >= 0.0 { "ahead of" } else { "behind" }
                )
            } else {
                String::new()
            };
            problems.push(format!(
                "copy-back vm {vm}: its disk {} on {primary} was written at {}{offset}, after the failover started vm {vm} on {} on {recovery} from its data as of {at_text}: the recovery site never got that write, and the failback would overwrite it; {}",
                d.path,
                m.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
                c.path,
                keep(&d.path)
            ));
        }
    }
    problems
}

/// The vms a failback plan starts on the primary without copying anything of them back while
/// they ran on their recovery copies since a failover (or whose copies cannot be read to
/// tell): started there, they would run on their disks of before the failover, and the
/// failback would then release the copies that hold what they wrote since. The check each
/// start step makes again ([`crate::replica::start::before_failback`]), made before anything
/// is stopped; steps in `started` are left to their run. Read only.
pub fn uncopied(plan: &Plan, started: &[&str], transport: &dyn Transport) -> Vec<String> {
    let remote = crate::replica::start::Remote::new(transport);
    plan.steps
        .iter()
        .filter(|s| !started.contains(&s.id.as_str()))
        .filter_map(|s| s.replica.as_ref())
        .filter(|r| r.role == plan::ReplicaRole::FailedBack)
        .filter_map(|r| {
            let vm = crate::replica::start::Vm {
                name: &r.vm,
                host: &r.host,
                paths: &r.paths,
                sources: &r.sources,
            };
            crate::replica::start::before_failback(&remote, vm, plan.copies_back(&r.vm)).err()
        })
        .collect()
}

/// Whether a disk whose modification time is `mtime` by its host's clock, a clock `skew`
/// seconds ahead of this machine's now (known within `uncertainty`), may have been written at
/// or after `at` (this machine's clock): in doubt it was. Its time is brought to this
/// machine's clock by the offset measured now. A clock found more than [`TRUSTED_AHEAD_S`]
/// ahead may have jumped since the disk was written (a host back from a power cut with its
/// clock an hour ahead, set right by NTP before the cut): its time as it reads counts too,
/// and the later of the two; a correction that large never makes a write older. Pure.
pub fn written_after(mtime: DateTime<Utc>, skew: f64, uncertainty: f64, at: DateTime<Utc>) -> bool {
    let ahead = skew - uncertainty.abs();
    let correction = chrono::Duration::microseconds((ahead * 1e6).round() as i64);
    // A clock so far off that the time cannot be brought over: in doubt.
    let corrected = mtime
        .checked_sub_signed(correction)
        .is_none_or(|local| local >= at);
    corrected || (ahead > TRUSTED_AHEAD_S && mtime >= at)
}

/// How far ahead a host's clock may be found and its offset trusted as it was when its files
/// were written: a clock kept by NTP drifts by milliseconds, one back from a power cut with
/// its hardware clock in local time is hours off.
pub const TRUSTED_AHEAD_S: f64 = 60.0;

/// A backup set a failback replicates back over its primary's folder, as read before it
/// starts.
#[derive(Debug, Clone)]
pub struct FolderBack {
    pub set: String,
    pub primary: String,
    pub recovery: String,
    /// Its recovery copy (the source of the copy-back) as the helper reads it, or why not.
    pub copy: Result<crate::replica::CopyState, String>,
    /// The primary's folder it would overwrite, as the helper reads it there, or why not.
    pub folder: Result<crate::replica::CopyState, String>,
    /// The primary's clock minus this machine's, and the uncertainty of that reading, or why
    /// it cannot be read (as [`CopyBack::clock`]): the folder's file times are the primary's.
    pub clock: Result<(f64, f64), String>,
    /// What was settled of its folder before it was read (see [`settle_cut`]).
    pub settled: Vec<String>,
}

/// What stops a failback from replicating a backup set back over its primary's folder, each
/// a problem only `--force` passes (as for a vm's disks, [`judge_copy_back`]): a recovery
/// copy no failover relied on (no `live` lease: a replica of the primary's folder, older than
/// it, whose copy-back would remove or overwrite what the folder got since), leases that
/// cannot be read, and a primary folder that got a file (added or rewritten) at or after the
/// point the failover relied on was taken (or after the failover, whichever is earlier),
/// or whose times cannot be read: the copy-back would overwrite or remove it. A folder that
/// is exactly the newest point a reverse replication made of it holds nothing of its own;
/// one not there, or empty while the copy holds files, is a problem too (its file system not
/// mounted?). Pure.
pub fn judge_folder_back(backs: &[FolderBack]) -> Vec<String> {
    use crate::replica::LeaseKind;
    let mut problems = Vec::new();
    for b in backs {
        let (set, primary, recovery) = (&b.set, &b.primary, &b.recovery);
        let copy = match &b.copy {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!(
                    "copy-back backup set {set}: its recovery copy on {recovery} cannot be read ({e}): nothing shows that a failover relied on it"
                ));
                continue;
            }
        };
        let keep = |path: &str| {
            format!(
                "keep a copy of it first (e.g. `cp -a {path} {path}.kept` on {primary}), then use --force to overwrite it"
            )
        };
        if !copy.bad_leases.is_empty() {
            problems.push(format!(
                "copy-back backup set {set}: the leases of its recovery copy {recovery}:{} cannot be read ({})",
                copy.path,
                copy.bad_leases.join(", ")
            ));
            continue;
        }
        // When the data the failover relied on was taken: the primary's folder got nothing
        // of the recovery site's before that.
        let since = copy
            .leases
            .iter()
            .filter(|l| l.kind == LeaseKind::Live)
            .map(|l| l.taken_at.map_or(l.at, |t| t.min(l.at)))
            .min();
        // Copied back already, by this failback cut before its step's end was journaled (its
        // lease released with it): the primary's folder is what it copied, and the copy is
        // still as it read it.
        let copied_back = copy.copied_back
            && b.folder
                .as_ref()
                .is_ok_and(crate::replica::CopyState::is_newest_point);
        let Some(since) = since else {
            if copied_back {
                continue;
            }
            problems.push(format!(
                "copy-back backup set {set}: its recovery copy {recovery}:{} was not relied on by a failover (no live lease): it holds a replica of the primary's folder, older than it, and copying it back would remove or overwrite what the folder got since; fail over first, or use --force only if the recovery site did write the data to keep there",
                copy.path
            ));
            continue;
        };
        let folder = match &b.folder {
            Ok(f) => f,
            Err(e) => {
                problems.push(format!(
                    "copy-back backup set {set}: its folder on {primary} cannot be read ({e}): whether it got files since the failover cannot be told; {}",
                    keep("FOLDER")
                ));
                continue;
            }
        };
        // Not there, or empty while the copy holds files: its file system may not be mounted
        // (the copy back would be written under the mount point, and the folder of before
        // found again once it is mounted), as a vm's disk not there.
        if !folder.exists || (folder.size == 0 && copy.size > 0) {
            problems.push(format!(
                "copy-back backup set {set}: its folder {primary}:{} is {}: its file system may not be mounted (the copy back would be written under its mount point, and the folder of before found again once it is mounted, to be replicated over the recovery copy); mount it and run again, or, if the primary's folder is really gone (a storage rebuilt), use --force to copy it back",
                folder.path,
                if folder.exists { "empty" } else { "not there" }
            ));
            continue;
        }
        let replica = folder.is_newest_point();
        let since_text = since.format("%Y-%m-%d %H:%M:%S%.3f UTC");
        match (folder.mtime, &b.clock) {
            (None, _) => problems.push(format!(
                "copy-back backup set {set}: the time its folder {primary}:{} was last changed cannot be read: whether it got files after the failover relied on its copy {recovery}:{} (its data as of {since_text}) cannot be told; {}",
                folder.path,
                copy.path,
                keep(&folder.path)
            )),
            (Some(_), _) if replica => {}
            (Some(_), Err(e)) => problems.push(format!(
                "copy-back backup set {set}: the clock of {primary} cannot be read ({e}): the times of its folder {}'s files (its clock) cannot be compared with the point the failover relied on ({since_text}), so whether it got files since cannot be told; {}",
                folder.path,
                keep(&folder.path)
            )),
            (Some(m), Ok((skew, uncertainty))) if written_after(m, *skew, *uncertainty, since) => {
                let offset = if skew.abs() >= 0.001 {
                    format!(
                        " by its clock, {:.3}s {} this machine's",
                        skew.abs(),
                        if *skew >= 0.0 { "ahead of" } else { "behind" }
                    )
                } else {
                    String::new()
                };
                problems.push(format!(
                    "copy-back backup set {set}: its folder {primary}:{} was last changed (a file written, added or removed) at {}{offset}, after the failover relied on its copy {recovery}:{} (its data as of {since_text}): the failback would overwrite or remove what the primary's folder got since; {}",
                    folder.path,
                    m.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
                    copy.path,
                    keep(&folder.path)
                ))
            }
            (Some(_), Ok(_)) => {}
        }
    }
    problems
}

/// Reads, for each backup set a failback plan replicates back to the primary, its recovery
/// copy and the primary's folder (see [`judge_folder_back`]).
pub fn folder_backs(plan: &Plan, transport: &dyn Transport) -> Vec<FolderBack> {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let mut backs: Vec<FolderBack> = Vec::new();
    for step in &plan.steps {
        let plan::Action::Replicate {
            what: plan::Replicated::Backup(set),
            from_host,
            to_host,
            items,
            ..
        } = &step.action_spec
        else {
            continue;
        };
        let Some((src, dst)) = items.first() else {
            continue;
        };
        if backs.iter().any(|b| b.set == *set) {
            continue;
        }
        let one = |host: &str, path: &str| {
            helpers
                .inspect(host, &[path.to_string()])
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    s.into_iter()
                        .next()
                        .ok_or_else(|| "the helper said nothing of it".to_string())
                })
        };
        let mut folder = one(to_host, dst).map(|f| vec![f]);
        let what = format!("copy-back backup set {set}: its folder");
        let settled = settle_cut(
            &helpers,
            to_host,
            &what,
            std::slice::from_ref(dst),
            &mut folder,
        );
        backs.push(FolderBack {
            set: set.clone(),
            primary: to_host.clone(),
            recovery: from_host.clone(),
            copy: one(from_host, src),
            folder: folder.and_then(|mut f| {
                f.pop()
                    .ok_or_else(|| "the helper said nothing of it".to_string())
            }),
            clock: crate::check::read_clock(transport, to_host),
            settled,
        });
    }
    backs
}

/// Settles what an update of reprise's own left cut in the copies `paths` of `host` (`states`,
/// as read there): a copy back or a replication killed after its update was committed leaves
/// the copy half written, which is then completed; one killed before, untouched, is thrown
/// away. They are then read again into `states`, so that a copy reprise alone wrote is judged
/// as the point it now is, not as written by a vm (since the failover, or outside any). What
/// was done (or why it could not be: the copy is then judged as it is), one line each, `what`
/// naming each copy's owner.
fn settle_cut(
    helpers: &crate::replica::remote::Helpers,
    host: &str,
    what: &str,
    paths: &[String],
    states: &mut Result<Vec<crate::replica::CopyState>, String>,
) -> Vec<String> {
    let Ok(read) = states else {
        return Vec::new();
    };
    let cut: Vec<(String, String)> = read
        .iter()
        .filter_map(|c| Some((c.path.clone(), c.unsettled.clone()?)))
        .collect();
    if cut.is_empty() {
        return Vec::new();
    }
    let mut said = Vec::new();
    for (path, why) in cut {
        let done = match helpers.settle(host, &path, StdDuration::ZERO) {
            Ok(note) => note.unwrap_or_else(|| "nothing was left to settle".into()),
            Err(e) => format!("it could not be settled ({e})"),
        };
        said.push(format!(
            "{what} {path} on {host} held an update of reprise's own left cut ({why}): {done}"
        ));
    }
    *states = helpers.inspect(host, paths).map_err(|e| e.to_string());
    said
}

/// What was settled before a failback's copy-backs were judged ([`settle_cut`]).
fn settled_notes(backs: &[CopyBack], folders: &[FolderBack]) -> Vec<String> {
    let vms = backs.iter().flat_map(|b| b.settled.iter().cloned());
    vms.chain(folders.iter().flat_map(|f| f.settled.iter().cloned()))
        .collect()
}

/// A backup set of a failback's services that its plan does not replicate back: its
/// recovery copy (see [`judge_left_held`]).
#[derive(Debug, Clone)]
pub struct LeftHeld {
    pub set: String,
    pub service: String,
    pub recovery: String,
    pub path: String,
    pub copy: Result<crate::replica::CopyState, String>,
}

/// The problems of backup sets a failback leaves behind: a recovery copy a failover relied
/// on (a `live` lease) holds what the recovery site wrote since, which nothing brings back
/// to the primary and which the next replication overwrites once the copy is released; a
/// copy that cannot be read leaves that open.
pub fn judge_left_held(left: &[LeftHeld]) -> Vec<String> {
    use crate::replica::LeaseKind;
    let mut problems = Vec::new();
    for l in left {
        let (set, at) = (&l.set, format!("{}:{}", l.recovery, l.path));
        let what_to_do = format!(
            "add a replicate step of {set} to the failback runbook of service {}, or `reprise release {set}` once its data is safe, or use --force",
            l.service
        );
        match &l.copy {
            Err(e) => problems.push(format!(
                "backup set {set}: this failback does not replicate it back, and its recovery copy {at} cannot be read ({e}): whether a failover relied on it (and the recovery site wrote there) cannot be told; {what_to_do}"
            )),
            Ok(c) if !c.bad_leases.is_empty() => problems.push(format!(
                "backup set {set}: this failback does not replicate it back, and the leases of its recovery copy {at} cannot be read ({}): whether a failover relied on it cannot be told; {what_to_do}",
                c.bad_leases.join(", ")
            )),
            // Still the very point the failover relied on: the recovery site wrote nothing
            // there, and nothing is dropped when it is released.
            Ok(c) if c
                .leases
                .iter()
                .filter(|l| l.kind == LeaseKind::Live)
                .all(|l| c.is_point_of(l)) => {}
            Ok(c) if c.leases.iter().any(|l| l.kind == LeaseKind::Live) => {
                problems.push(format!(
                    "backup set {set}: its recovery copy {at} was relied on by a failover (a live lease) and this failback does not replicate it back: what the recovery site may have written there would be dropped the day it is released (the next replication overwrites it with the primary's folder); {what_to_do}"
                ))
            }
            Ok(_) => {}
        }
    }
    problems
}

/// Reads, for each backup set of a failback plan's services that the plan does not
/// replicate back, its recovery copy (see [`judge_left_held`]).
pub fn left_held(model: &Model, plan: &Plan, transport: &dyn Transport) -> Vec<LeftHeld> {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let back: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action_spec {
            plan::Action::Replicate {
                what: plan::Replicated::Backup(set),
                ..
            } => Some(set.as_str()),
            _ => None,
        })
        .collect();
    let mut left: Vec<LeftHeld> = Vec::new();
    for service in &plan.services {
        for set in plan::backup_sets_of(model, &service.id) {
            if back.contains(&set.id.as_str()) || left.iter().any(|l| l.set == set.id) {
                continue;
            }
            let (host, path) = (&set.dest_host.value, &set.dest_path);
            left.push(LeftHeld {
                set: set.id.clone(),
                service: service.id.clone(),
                recovery: host.clone(),
                path: path.clone(),
                copy: helpers
                    .inspect(host, std::slice::from_ref(path))
                    .map_err(|e| e.to_string())
                    .and_then(|s| {
                        s.into_iter()
                            .next()
                            .ok_or_else(|| "the helper said nothing of it".to_string())
                    }),
            });
        }
    }
    left
}

/// The copies of a vm between its sites that a resumed run makes again: a failback's copy
/// back (a `replicate` of the vm to the host a step starts it on) or a planned failover's
/// final sync, done while no start of the vm there is done or may have started it (`took`:
/// the starts that began and whose vm's driver does not say it is stopped there,
/// [`may_have_started`]; one that did relies on the copy it started from, and the vm may run
/// on it and write: a copy made again would go over what it wrote). Pure.
pub fn copies_again(
    plan: &Plan,
    prior: &HashMap<String, Prior>,
    took: &HashSet<&str>,
) -> Vec<String> {
    match plan.mode {
        Mode::Failback => {}
        Mode::Failover if !plan.emergency => {}
        _ => return Vec::new(),
    }
    let again = |vm: &str, host: &str| {
        let starts: Vec<_> = plan
            .steps
            .iter()
            .filter(|t| t.is_vm_action(vm, "start", host))
            .collect();
        // A start done (a planned failover's on the recovery side too: its vm runs there on
        // the copy, and writes) or that may have taken effect: the copy is not made again.
        let none_took = starts.iter().all(|t| !took.contains(t.id.as_str()));
        let none_done = starts
            .iter()
            .all(|t| prior.get(&t.id) != Some(&Prior::Done));
        none_took && none_done
    };
    plan.steps
        .iter()
        .filter(|s| prior.get(&s.id) == Some(&Prior::Done))
        .filter(|s| match &s.action_spec {
            plan::Action::Replicate {
                what: plan::Replicated::Vm(vm),
                to_host,
                ..
            } => again(vm, to_host),
            _ => false,
        })
        .map(|s| s.id.clone())
        .collect()
}

/// The starts of a planned failover's vms on the recovery side, or of a failback's on the
/// primary, that began (`begun`, as the journal says) and are not done, while the vm's driver
/// does not say it is stopped (or not defined) on the step's host: they may have started it on
/// the copy they chose, or on what the failback copied back.
/// The role of the starts a resumed run asks whether they took effect before it makes a copy
/// between sites again: a planned failover's on the recovery side, a failback's on the
/// primary; `None` for other runs (an emergency failover does not ask the primary).
fn start_role(plan: &Plan) -> Option<plan::ReplicaRole> {
    match plan.mode {
        Mode::Failover if !plan.emergency => Some(plan::ReplicaRole::Start),
        Mode::Failback => Some(plan::ReplicaRole::FailedBack),
        _ => None,
    }
}

fn may_have_started(
    model: &Model,
    plan: &Plan,
    prior: &HashMap<String, Prior>,
    begun: &HashSet<&str>,
    transport: &dyn Transport,
) -> HashSet<String> {
    let Some(role) = start_role(plan) else {
        return HashSet::new();
    };
    plan.steps
        .iter()
        .filter(|s| begun.contains(s.id.as_str()) && prior.get(&s.id) != Some(&Prior::Done))
        .filter(|s| s.replica.as_ref().is_some_and(|r| r.role == role))
        .filter(|s| {
            let (Some(service), Some(vm), Some(host)) = (
                model.inventory.services.get(&s.service),
                s.vm.as_ref().and_then(|v| model.inventory.vms.get(v)),
                s.host.as_deref(),
            ) else {
                return true;
            };
            let side = side_of(vm, host);
            !known_stopped(model, service, vm, side, &plan.run_id, transport)
        })
        .map(|s| s.id.clone())
        .collect()
}

/// Whether `vm`'s driver says it does not run on `side`: its `status` says it is stopped, or
/// fails as it does for a vm not defined there.
fn known_stopped(
    model: &Model,
    service: &crate::inventory::Service,
    vm: &crate::inventory::Vm,
    side: Side,
    run_id: &str,
    transport: &dyn Transport,
) -> bool {
    let Ok((host, text)) = status_command(model, service, vm, side, run_id) else {
        return false;
    };
    transport
        .exec(&host, &text, StdDuration::from_secs(30))
        .is_ok_and(|out| {
            runner::said_running(&out) == Some(false) || runner::said_not_defined(&out)
        })
}

/// The vms whose copy between sites is still to come in `plan` (not done, as `prior` says)
/// while a step of it that stopped the vm on the host the copy reads is done and the vm runs
/// there again (its driver's `status`): copied while it runs, what it writes after would be
/// left behind, and started on the other site too, two copies would diverge. And, in a
/// planned failover, the vms whose final sync is done and whose start on the recovery side is
/// not, while the primary runs them again or cannot say it does not
/// ([`started_past_copy`]).
fn running_again(
    model: &Model,
    plan: &Plan,
    prior: &HashMap<String, Prior>,
    transport: &dyn Transport,
    past: &PastCopy,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let done = |id: &str| prior.get(id) == Some(&Prior::Done);
    let mut again = Vec::new();
    let mut asked = HashSet::new();
    for step in plan.steps.iter().filter(|s| !done(&s.id)) {
        let plan::Action::Replicate {
            what: plan::Replicated::Vm(vm_id),
            from_host,
            ..
        } = &step.action_spec
        else {
            continue;
        };
        let (Some(service), Some(vm)) = (
            model.inventory.services.get(&step.service),
            model.inventory.vms.get(vm_id),
        ) else {
            continue;
        };
        if !asked.insert(vm_id) {
            continue;
        }
        let Some(stopped) = plan
            .steps
            .iter()
            .find(|s| s.is_vm_action(vm_id, "stop", from_host) && done(&s.id))
        else {
            continue;
        };
        let side = side_of(vm, from_host);
        let (running, said) = vm_state(model, service, vm, side, &plan.run_id, transport);
        if running == Some(true) {
            again.push(format!(
                "vm {vm_id} runs on {from_host} again (its status says `{said}`) since this {} stopped it there (step {}): copied now, what it writes there after would be left behind, and started on the other site too, two copies would diverge; stop it on {from_host} (what it wrote is then copied), then resume",
                plan.mode, stopped.id
            ));
        }
    }
    let (mut forced, mut diverged) = (Vec::new(), Vec::new());
    if start_role(plan).is_some() {
        let (refused, passed, past_copy) = started_past_copy(model, plan, prior, transport, past);
        again.extend(refused);
        forced = passed;
        diverged = past_copy;
    }
    (again, forced, diverged)
}

/// What a resumed planned failover knows of its final syncs beyond the hosts' answers: the
/// run's journal (what each final sync read, [`Event::SourceRead`]), whether the operator
/// forced the resume, and how to read the disks' stamps now.
pub(crate) struct PastCopy<'a> {
    pub(crate) events: &'a [Event],
    pub(crate) force: bool,
    pub(crate) copies: &'a dyn crate::replica::start::Copies,
}

/// The vms of a planned failover whose start on the recovery side (of a failback: on the
/// primary) is not done while the copy it starts from (the final sync or the copy back, done:
/// the start began and may have started the vm, see [`copies_again`]) was made after a step
/// of the run stopped the vm on the side left, and that side's driver says the vm runs there
/// again, or cannot say, or says it is stopped while its disks are no longer what the copy
/// read (it ran there since, and stopped again): what it wrote since is not in that copy, and
/// the vm may run on both sites. The last is passed when the operator forces the resume (said
/// in the second list, journaled).
fn started_past_copy(
    model: &Model,
    plan: &Plan,
    prior: &HashMap<String, Prior>,
    transport: &dyn Transport,
    past: &PastCopy,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let done = |id: &str| prior.get(id) == Some(&Prior::Done);
    let mut refused = Vec::new();
    let mut forced = Vec::new();
    let mut diverged = Vec::new();
    let mut asked = HashSet::new();
    let Some(role) = start_role(plan) else {
        return (refused, forced, diverged);
    };
    let copy = match plan.mode {
        Mode::Failback => "copy back",
        _ => "final sync",
    };
    let mode = plan.mode;
    for start in plan.steps.iter().filter(|s| !done(&s.id)) {
        let (Some(vm_id), Some(host)) = (start.vm.as_deref(), start.host.as_deref()) else {
            continue;
        };
        if start.replica.as_ref().map(|r| r.role) != Some(role) {
            continue;
        }
        let Some((sync, from_host)) = plan.steps.iter().find_map(|s| match &s.action_spec {
            plan::Action::Replicate {
                what: plan::Replicated::Vm(v),
                from_host,
                to_host,
                ..
            } if v == vm_id && to_host == host && done(&s.id) => Some((s, from_host)),
            _ => None,
        }) else {
            continue;
        };
        let Some(stopped) = plan
            .steps
            .iter()
            .find(|s| s.is_vm_action(vm_id, "stop", from_host) && done(&s.id))
        else {
            continue;
        };
        let (Some(service), Some(vm)) = (
            model.inventory.services.get(&start.service),
            model.inventory.vms.get(vm_id),
        ) else {
            continue;
        };
        if !asked.insert(vm_id) {
            continue;
        }
        let side = side_of(vm, from_host);
        let state = vm_state(model, service, vm, side, &plan.run_id, transport);
        let (sync, stopped, start, service) = (&sync.id, &stopped.id, &start.id, &service.id);
        let if_lost = match mode {
            Mode::Failback => format!(
                "if {from_host} and what it holds are lost for good, `reprise restore --service {service} --force` starts it on {host} from what was copied back"
            ),
            _ => format!(
                "if {from_host} is lost, `reprise failover --emergency --service {service}` starts it from its newest point"
            ),
        };
        match state {
            (Some(false), _) => {
                // Stopped now; maybe run and stopped again since the final sync read it.
                let read = past.events.iter().rev().find_map(|e| match e {
                    Event::SourceRead {
                        step, host, stamps, ..
                    } if step == sync && host == from_host => Some(stamps),
                    _ => None,
                });
                // Not journaled (a run of an earlier version): it cannot be told either.
                let since = match read {
                    Some(read) => crate::replica::start::written_since(past.copies, from_host, read),
                    None => Err(format!(
                        "this run's journal does not say what the {copy} read there"
                    )),
                };
                let found = match since {
                    Ok(None) => continue,
                    Ok(Some(changed)) => format!(
                        "its disks on {from_host} were written since the {copy} (step {sync}) read them: {changed}; it ran there again after this {mode} stopped it (step {stopped}) and was stopped again"
                    ),
                    Err(e) => format!(
                        "whether its disks on {from_host} were written since the {copy} (step {sync}) read them cannot be told ({e})"
                    ),
                };
                if past.force {
                    diverged.push(vm_id.to_string());
                    forced.push(format!(
                        "vm {vm_id}: {found}; its start on {host} (step {start}) carries on from the copy step {sync} made, as forced (--force): what was written on {from_host} since is not in it"
                    ));
                } else {
                    refused.push(format!(
                        "vm {vm_id}: {found}; its start on {host} (step {start}) began, so it may run on {host} on the copy step {sync} made, which lacks what was written on {from_host}: two copies diverge; to keep what {from_host} wrote, stop it on {host} if it runs there and resume (this run then copies it again before starting it on {host}); to keep what {host} has, resume with --force (journaled; what {from_host} wrote since is left there)"
                    ));
                }
            }
            (Some(true), said) => refused.push(format!(
                "vm {vm_id} runs on {from_host} again (its status says `{said}`) since this {mode} stopped it there (step {stopped}), and its start on {host} (step {start}) began, so it may run on {host} too, on the copy step {sync} made, which lacks what was written on {from_host} since: two copies diverge; to keep what {from_host} wrote, stop it on {host} if it runs there, then stop it on {from_host} and resume (this run then copies it again before starting it on {host}); to keep what {host} wrote, stop it on {from_host} and resume with --force (journaled)"
            )),
            (None, said) => refused.push(format!(
                "whether vm {vm_id} runs on {from_host} again since this {mode} stopped it there (step {stopped}) cannot be told ({said}): if it ran, the copy step {sync} made on {host}, which its start there (step {start}) carries on from, lacks what was written since; resume once {from_host} answers, or, {if_lost}"
            )),
        }
    }
    (refused, forced, diverged)
}

/// What a failover's point choice cannot give in `plan`, each said: with a time or a point
/// asked for every vm (`--point-before`, `--point POINT`), a service its application
/// replicates (its standby holds what was replicated up to now), or one whose vm the plan
/// starts from no replica point, unless let start as replicated (`--as-replicated`); and a
/// vm named by `--point VM=ID` that the plan starts from no replica point. Without this, the
/// run would start them from data other than asked, saying nothing.
pub fn points_out_of_reach(
    model: &Model,
    plan: &Plan,
    choice: &runner::PointChoice,
) -> Vec<String> {
    let from_points: HashSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| s.replica.as_ref())
        .filter(|r| r.role == plan::ReplicaRole::Start)
        .map(|r| r.vm.as_str())
        .collect();
    let asked = match (&choice.all, choice.before) {
        (Some(p), _) => format!("point {p}"),
        (None, Some(t)) => format!("a point taken before {}", t.format("%Y-%m-%d %H:%M:%S UTC")),
        (None, None) => String::new(),
    };
    let mut out = Vec::new();
    if choice.asks_every_vm() {
        for ps in plan.services.iter().filter(|s| !s.steps.is_empty()) {
            let Some(svc) = model.inventory.services.get(&ps.id) else {
                continue;
            };
            if choice.takes_as_replicated(&ps.id) {
                continue;
            }
            if let Some(lag) = svc.lag() {
                out.push(format!(
                    "service {}: its application replicates it (its lag is read on {}): it would start from what was replicated up to now, not from {asked}; {}",
                    ps.id,
                    lag.host.as_str(),
                    as_replicated_fix(&ps.id)
                ));
            } else if let Some(vm) = svc.vm().filter(|v| !from_points.contains(v)) {
                out.push(format!(
                    "service {}: its vm {vm} is started from no replica point by this failover (its recovery host keeps no copy of its disks): it would start from what is there now, not from {asked}; {}",
                    ps.id,
                    as_replicated_fix(&ps.id)
                ));
            } else {
                // Another vm a step of the service starts on its recovery host (a vm step
                // naming its own `vm`, a service placed on a host that starts one).
                let mut told = HashSet::new();
                for step in plan.steps.iter().filter(|s| {
                    s.service == ps.id && s.kind == "vm" && s.action.as_deref() == Some("start")
                }) {
                    let Some(vm) = step.vm.as_deref().filter(|v| !from_points.contains(v)) else {
                        continue;
                    };
                    let on_recovery =
                        model.inventory.vms.get(vm).is_some_and(|v| {
                            step.host.as_deref() == Some(v.recovery.value.as_str())
                        });
                    if on_recovery && told.insert(vm) {
                        out.push(format!(
                            "service {}: its step {} starts vm {vm} from no replica point (its recovery host keeps no copy of its disks): it would start from what is there now, not from {asked}; {}",
                            ps.id,
                            step.id,
                            as_replicated_fix(&ps.id)
                        ));
                    }
                }
            }
        }
    }
    // A point named for every vm is none of a backup set's (its points are its own): a set
    // a service relies on would be taken at its newest point, which may hold what was
    // written after the point asked (the very dumps a going back in time flees).
    if let (Some(p), None) = (&choice.all, choice.before) {
        let mut told = HashSet::new();
        for step in &plan.steps {
            let plan::Action::BackupCopy(b) = &step.action_spec else {
                continue;
            };
            if !b.failover
                || choice.by_vm.contains_key(&b.set)
                || choice.takes_as_replicated(&step.service)
                || !told.insert(b.set.as_str())
            {
                continue;
            }
            out.push(format!(
                "service {}: it relies on backup set {}, whose points are its own: --point {p} names the vms' point, and the set would be taken at its newest point, which may hold what was written after it; name one for the set (--point {}=POINT, see `reprise points {}`), or bound every point by time instead (--point-before TIME), or take the set's newest point knowing it: --as-replicated {}",
                step.service, b.set, b.set, b.set, step.service
            ));
        }
    }
    for vm in choice.by_vm.keys() {
        if model.inventory.vms.contains_key(vm) && !from_points.contains(vm.as_str()) {
            out.push(format!(
                "vm {vm}: --point names it, and this failover starts it from no replica point (it is in none of its services, or its recovery host keeps no copy of its disks): the point would not be used; ask no point for it"
            ));
        }
    }
    out
}

/// What to do about a service that no point or time asked reaches.
fn as_replicated_fix(service: &str) -> String {
    format!(
        "leave it out (--service naming the others; --only not to pull it in as a dependency), or start it from what its replication holds now, knowing it: --as-replicated {service} (journaled)"
    )
}

/// Gives back the leases a drill (`plan`) took on the copies of the backup sets it proved;
/// one that cannot be is left (a replication of the set says so, and `reprise release SET`
/// frees it).
fn give_back_drill_sets(plan: &Plan, transport: &dyn Transport) {
    let copies: Vec<(String, plan::BackupUse)> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action_spec {
            plan::Action::BackupCopy(c) if !c.failover => Some((s.id.clone(), c.clone())),
            _ => None,
        })
        .collect();
    for (_, why) in runner::backup::give_back_sets(transport, &plan.run_id, &copies) {
        tracing::warn!("{why}");
    }
}

/// The vm starts (a failover's on the recovery copies, a drill's copy) cut before they
/// journaled the point they start from: the point is on disk before a start's command is
/// sent, so theirs never was. They run again whole (a roll-back the cut left half done is
/// settled, the point chosen, leased and journaled again), instead of being handed to a
/// person, who would start the vm on copies the cut may have left half rolled back, of two
/// points. A start that journaled a point since it was last undone is not among them: its
/// vm may run. Pure.
fn cut_before_point(plan: &Plan, prior: &HashMap<String, Prior>, events: &[Event]) -> Vec<String> {
    let mut pointed: HashSet<&str> = HashSet::new();
    for e in events {
        match e {
            Event::ReplicaPointUsed { step, .. } => {
                pointed.insert(step.as_str());
            }
            Event::UndoFinished { step, ok: true, .. } => {
                pointed.remove(step.as_str());
            }
            // An attempt that failed gave its copies back: what a later one did is its own.
            Event::StepFinished { step, status, .. } if !status.succeeded() => {
                pointed.remove(step.as_str());
            }
            _ => {}
        }
    }
    plan.steps
        .iter()
        .filter(|s| prior.get(&s.id) == Some(&Prior::Interrupted))
        .filter(|s| !pointed.contains(s.id.as_str()))
        .filter(|s| {
            s.replica.as_ref().is_some_and(|r| {
                matches!(
                    r.role,
                    plan::ReplicaRole::Start | plan::ReplicaRole::DrillStart
                )
            })
        })
        .map(|s| s.id.clone())
        .collect()
}

/// The vms and backup sets a failover's start has done from a point that what the resume asks
/// now (`now`: its `--point`, `--point-before`) does not allow: that start is not made again,
/// and carrying on would leave them on data other than asked without a word.
fn started_otherwise(
    model: &Model,
    events: &[Event],
    prior: &HashMap<String, Prior>,
    now: &runner::PointChoice,
    run: &str,
) -> Vec<String> {
    use crate::replica::choice::Want;
    let when = |t: &DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    events
        .iter()
        .filter_map(|e| match e {
            Event::ReplicaPointUsed {
                step,
                item,
                point,
                taken_at,
                written_until,
                ..
            } => match prior.get(step) {
                Some(Prior::Done) => Some((step, item, point, taken_at, written_until, "done")),
                // Cut after it chose that point: it may have started the vm from it, and the
                // resume hands it to a person, who confirms what it did; no point is chosen
                // again.
                Some(Prior::Interrupted) => Some((
                    step,
                    item,
                    point,
                    taken_at,
                    written_until,
                    "cut after it chose that point: it may have started it",
                )),
                _ => None,
            },
            _ => None,
        })
        .filter_map(|(step, item, point, taken_at, written_until, how)| {
            // What it started from may hold writes after its point's time (a backup set's
            // files, a copy started as it is): judged by the latest. Journaled by an earlier
            // version without it, only a vm's disks all at one point are of that time.
            let unknown = DateTime::<Utc>::MAX_UTC;
            let until = written_until.as_ref().unwrap_or(
                if model.inventory.vms.contains_key(item.as_str())
                    && !point.contains('+')
                    && !point.starts_with("copy-")
                {
                    taken_at
                } else {
                    &unknown
                },
            );
            let ask = match model.inventory.vms.contains_key(item) {
                true => now.ask(item, run, true),
                false => now.ask_set(item, run, true),
            };
            let asked = match &ask.want {
                Some(Want::Id(id)) if id != point => Some(format!("point {id}")),
                Some(Want::Before(t)) if until > t => {
                    Some(format!("a point taken before {}", when(t)))
                }
                _ => ask
                    .within
                    .filter(|t| until > t)
                    .map(|t| format!("a point taken before {}", when(&t))),
            };
            asked.map(|asked| {
                format!(
                    "{item} was started by this run from point {point} (taken {}{}, step {step}, {how}): it is not started again, so it cannot start from {asked}, as asked now; resume without asking it, or, once this run is over, fail {item} over again from the point you want",
                    when(taken_at),
                    match written_until {
                        Some(u) if u > taken_at => format!(", holding what was written until {}", when(u)),
                        None if until > taken_at => ", its journal not saying until when what it holds was written".to_string(),
                        _ => String::new(),
                    }
                )
            })
        })
        .collect()
}

/// What [`again_between_sites`] found: the copy steps to make again, what `--force` let pass,
/// and the vms it let start on a copy that lacks writes made since on the side left.
type Between = (Vec<String>, Vec<String>, Vec<String>);

/// What a resumed failover or failback makes again of its copies between sites (the steps,
/// taken out of `prior`: see [`copies_again`]), or why it must not carry on (a vm it stopped
/// runs again: see [`running_again`]).
fn again_between_sites(
    model: &Model,
    plan: &Plan,
    prior: &mut HashMap<String, Prior>,
    begun: &HashSet<&str>,
    transport: &dyn Transport,
    past: &PastCopy,
) -> Result<Between, RunError> {
    let took = may_have_started(model, plan, prior, begun, transport);
    let took: HashSet<&str> = took.iter().map(String::as_str).collect();
    let again = copies_again(plan, prior, &took);
    for id in &again {
        prior.remove(id);
    }
    // A start cut before it started the vm runs again whole from the copy made again (its
    // point chosen and leased anew), not as a step that may have taken effect.
    let restarted: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| prior.get(&s.id) == Some(&Prior::Interrupted) && !took.contains(s.id.as_str()))
        .filter(|s| {
            s.replica.as_ref().is_some_and(|r| {
                matches!(
                    r.role,
                    plan::ReplicaRole::Start | plan::ReplicaRole::FailedBack
                )
            })
        })
        .filter(|s| {
            again.iter().filter_map(|id| plan.step(id)).any(|c| {
                matches!(&c.action_spec, plan::Action::Replicate {
                    what: plan::Replicated::Vm(v),
                    to_host,
                    ..
                } if s.vm.as_ref() == Some(v) && s.host.as_ref() == Some(to_host))
            })
        })
        .map(|s| s.id.clone())
        .collect();
    for id in &restarted {
        prior.remove(id);
    }
    let (mut forced, mut diverged) = (Vec::new(), Vec::new());
    if plan.mode == Mode::Failback || plan.mode == Mode::Failover {
        let (runs, passed, past_copy) = running_again(model, plan, prior, transport, past);
        if !runs.is_empty() {
            return Err(RunError::RunsAgain {
                mode: plan.mode,
                vms: runs,
            });
        }
        forced = passed;
        diverged = past_copy;
    }
    Ok((again, forced, diverged))
}

/// Gives back the recovery copies a planned failover's start leased when it began (`begun`)
/// and did not start the vm, before the copy it starts from is made again (`again`): a
/// replication never writes into a leased copy. The start takes them again once the copy is
/// made. A copy not given back (its host does not answer) stops the copy, which says so.
fn give_back_begun(
    plan: &Plan,
    begun: &HashSet<&str>,
    again: &[String],
    transport: &dyn Transport,
) {
    let copies = crate::replica::start::Remote::new(transport);
    for step in plan.steps.iter().filter(|s| begun.contains(s.id.as_str())) {
        let Some(r) = step
            .replica
            .as_ref()
            .filter(|r| r.role == plan::ReplicaRole::Start)
        else {
            continue;
        };
        let copied_again = again.iter().filter_map(|id| plan.step(id)).any(|s| {
            matches!(&s.action_spec, plan::Action::Replicate {
                what: plan::Replicated::Vm(v),
                to_host,
                ..
            } if *v == r.vm && Some(to_host.as_str()) == step.host.as_deref())
        });
        if copied_again {
            let vm = crate::replica::start::Vm {
                name: &r.vm,
                host: &r.host,
                paths: &r.paths,
                sources: &r.sources,
            };
            crate::replica::start::give_back(
                &copies,
                vm,
                &plan.run_id,
                crate::replica::choice::Use::Failover,
            );
        }
    }
}

/// Reads, for each vm a failback plan copies back to the primary, its state there and its
/// recovery copies (see [`judge_copy_back`]).
pub fn copy_backs(model: &Model, plan: &Plan, transport: &dyn Transport) -> Vec<CopyBack> {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let mut backs: Vec<CopyBack> = Vec::new();
    for step in &plan.steps {
        let plan::Action::Replicate {
            what: plan::Replicated::Vm(vm_id),
            from_host,
            to_host,
            items,
            ..
        } = &step.action_spec
        else {
            continue;
        };
        if backs.iter().any(|b| b.vm == *vm_id) {
            continue;
        }
        let (Some(service), Some(vm)) = (
            model.inventory.services.get(&step.service),
            model.inventory.vms.get(vm_id),
        ) else {
            continue;
        };
        let paths: Vec<String> = items.iter().map(|(src, _)| src.clone()).collect();
        let disks: Vec<String> = items.iter().map(|(_, dst)| dst.clone()).collect();
        let running = vm_state(model, service, vm, Side::Primary, &plan.run_id, transport);
        let mut states = helpers.inspect(to_host, &disks).map_err(|e| e.to_string());
        // Only under a vm known stopped: settling writes its disks.
        let settled = if running.0 == Some(false) {
            let what = format!("copy-back vm {vm_id}: its disk");
            settle_cut(&helpers, to_host, &what, &disks, &mut states)
        } else {
            Vec::new()
        };
        backs.push(CopyBack {
            vm: vm_id.clone(),
            primary: vm.primary.value.clone(),
            recovery: from_host.clone(),
            running,
            copies: helpers
                .inspect(from_host, &paths)
                .map_err(|e| e.to_string()),
            disks: states,
            clock: crate::check::read_clock(transport, &vm.primary.value),
            settled,
            overlays: helpers
                .inspect(
                    to_host,
                    &disks
                        .iter()
                        .map(|d| crate::inventory::replication_overlay(d))
                        .collect::<Vec<_>>(),
                )
                .map_err(|e| e.to_string()),
        });
    }
    backs
}

/// Starts a new run of `opts.plan` (its `run_id` is replaced by a new one).
pub fn start(
    model: &Model,
    opts: &StartOptions,
    view: &mut dyn Sink,
    shutdown: Shutdown,
) -> Result<RunOutcome, RunError> {
    let now = Utc::now();
    let run_id = journal::new_run_id(&opts.state_dir, now, opts.plan.mode.as_str());
    let plan_opts = PlanOptions {
        run_id: run_id.clone(),
        ..opts.plan.clone()
    };
    let plan = plan::build(model, &plan_opts).map_err(|d| RunError::Plan(model.report(d)))?;
    if plan.mode == Mode::Failover {
        let problems = points_out_of_reach(model, &plan, &opts.exec.run.points);
        if !problems.is_empty() {
            return Err(RunError::PointsOutOfReach {
                asked: opts.exec.run.points.words(),
                problems,
                resuming: false,
            });
        }
    }
    if plan.mode == Mode::Failback {
        // After an emergency failover the primary may have come back by itself.
        let both = running_on_both_sites(model, &plan, &transport(model, &opts.exec.ssh));
        if !both.is_empty() {
            return Err(RunError::SplitBrain {
                mode: plan.mode,
                services: both,
            });
        }
    }
    // A vm never starts on one site while it runs on the other, or while the other holds
    // newer data of it (or, for a restore, this machine's journals say it does).
    let (away, unread, runs) = away_for(&plan, &opts.state_dir);
    let force_restore = plan.mode == Mode::Restore && opts.force;
    let mut other_site = refuse_elsewhere(
        model,
        &plan,
        &transport(model, &opts.exec.ssh),
        &away,
        force_restore,
    )?;
    other_site.warned.extend(unread);
    other_site
        .forced
        .extend(refuse_switched(model, &plan, &runs, force_restore)?);
    // What a failback copies back over the primary's disks must be newer than them: a vm
    // running there is never overwritten; copies no failover started are refused unless
    // forced.
    let mut copy_back = Vec::new();
    let mut overwritten = Vec::new();
    let mut judged = JudgedDisks::new();
    if plan.mode == Mode::Failback {
        let t = transport(model, &opts.exec.ssh);
        let backs = copy_backs(model, &plan, &t);
        let folders = folder_backs(&plan, &t);
        other_site.warned.extend(settled_notes(&backs, &folders));
        judged = judged_disks(&backs, &folders);
        let (runs, problems) = judge_copy_back(&backs);
        if !runs.is_empty() {
            return Err(RunError::PrimaryRuns {
                vms: runs,
                resuming: false,
            });
        }
        overwritten = overwritten_by_copy_back(&backs, &folders);
        // A vm that ran on its recovery copies comes back only by copying them back: refused
        // before the recovery side is stopped, whatever --force says.
        let uncopied = uncopied(&plan, &[], &t);
        if !uncopied.is_empty() {
            return Err(RunError::NothingCopiedBack {
                problems: uncopied,
                resuming: false,
            });
        }
        copy_back = problems;
        copy_back.extend(judge_folder_back(&folders));
        copy_back.extend(judge_left_held(&left_held(model, &plan, &t)));
    }
    // A planned failover stops production first, a failback the recovery side: each starts
    // only once the side it starts vms on is known to be able to take over (for a failback,
    // every vm it defines there has a definition that fits), unless forced.
    let mut readiness = crate::readiness::load_latest(&opts.state_dir);
    let mut forced = Vec::new();
    let problems = match plan.mode {
        Mode::Failover if !plan.emergency => {
            let transport = transport(model, &opts.exec.ssh);
            let fresh = crate::check::check(model, &transport, &Default::default());
            let problems = crate::check::failover_blockers(model, &plan, &fresh.items);
            readiness = Some(fresh);
            problems
        }
        Mode::Failback => {
            let mut problems = copy_back;
            problems.extend(crate::check::failback_blockers(
                &plan,
                &transport(model, &opts.exec.ssh),
            ));
            problems
        }
        _ => Vec::new(),
    };
    if !problems.is_empty() {
        if !opts.force {
            return Err(RunError::NotReady {
                mode: plan.mode,
                problems,
                resuming: false,
            });
        }
        forced = problems;
    }
    // What --force let a failback overwrite on the primary is lost; its loss is not measured.
    let forced_diverged = match forced.is_empty() {
        true => Vec::new(),
        false => overwritten,
    };
    forced.append(&mut other_site.forced);
    let machine = journal::machine_name();
    let lock = StateLock::acquire(
        &opts.state_dir,
        &LockHolder {
            pid: std::process::id(),
            machine: machine.clone(),
            run_id: run_id.clone(),
            operator: opts.operator.clone(),
            since: now,
        },
    )?;
    let dir = RunDir::create(&opts.state_dir, &run_id)?;
    let journal = JournalWriter::open(&dir)?;
    let first = Event::RunStarted {
        at: now,
        run_id: run_id.clone(),
        mode: plan.mode,
        emergency: plan.emergency,
        services: plan.selection.requested.clone(),
        only: plan.selection.only,
        operator: opts.operator.clone(),
        machine,
        version: env!("CARGO_PKG_VERSION").to_string(),
        sources_digest: model.sources.digest(),
        steps: plan.steps.iter().map(|s| s.id.clone()).collect(),
        sites: sites_of(&plan),
        incident_at: opts.incident_at,
        plan: Some(Box::new(RunPlan::of(&plan))),
        readiness: readiness.map(Box::new),
        points: (opts.exec.run.points != runner::PointChoice::default())
            .then(|| Box::new(opts.exec.run.points.clone())),
    };
    let mut first = vec![first];
    if !forced.is_empty() {
        first.push(Event::ReadinessForced {
            at: Utc::now(),
            operator: opts.operator.clone(),
            problems: forced,
            diverged: forced_diverged,
        });
    }
    if !other_site.warned.is_empty() {
        first.push(Event::OtherSite {
            at: Utc::now(),
            said: other_site.warned,
            step: None,
            refused: false,
            diverged: other_site.diverged,
            unasked: other_site.unasked,
        });
    }
    let path = dir.path.clone();
    let (status, split_brain, refused) = execute(
        model,
        Launch {
            plan,
            dir,
            journal,
            first,
            prior: HashMap::new(),
            away,
            force: force_restore,
            forced_now: opts.force,
            operator: opts.operator.clone(),
            forced_before: Vec::new(),
            judged,
            copied: HashMap::new(),
            running_before: HashMap::new(),
        },
        &opts.exec,
        view,
        shutdown,
    )?;
    let pruned = after_run(&opts.state_dir, opts.exec.keep_runs, &run_id);
    Ok(RunOutcome {
        run_id,
        status,
        dir: path,
        replaced_stale_lock: lock.replaced_stale.clone(),
        pruned,
        split_brain,
        refused,
    })
}

/// The retention once a run is over, under its lock.
fn after_run(state_dir: &Path, keep: Option<usize>, run_id: &str) -> Result<Pruned, String> {
    match keep {
        Some(keep) => prune_locked(state_dir, keep, Some(run_id), false).map_err(|e| e.to_string()),
        None => Ok(Pruned::default()),
    }
}

/// The sites a plan's steps run on, busiest first.
fn sites_of(plan: &Plan) -> Vec<String> {
    let mut count: Vec<(String, usize)> = Vec::new();
    for site in plan.steps.iter().filter_map(|s| s.site.as_ref()) {
        match count.iter_mut().find(|(s, _)| s == site) {
            Some((_, n)) => *n += 1,
            None => count.push((site.clone(), 1)),
        }
    }
    count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    count.into_iter().map(|(s, _)| s).collect()
}

impl From<crate::report::RunReportError> for RunError {
    fn from(e: crate::report::RunReportError) -> RunError {
        match e {
            crate::report::RunReportError::Journal(e) => RunError::Journal(e),
            crate::report::RunReportError::NoStart(run_id) => RunError::NoStart(run_id),
        }
    }
}

pub use crate::event::{Started, finished};

/// How run `run_id` started, from its journal's events.
pub fn started(run_id: &str, events: &[Event]) -> Result<Started, RunError> {
    Started::of(events).ok_or_else(|| RunError::NoStart(run_id.to_string()))
}

/// Carries on a run where it stopped: finished steps are never repeated. The state lock is
/// taken before the journal is read, so what it says cannot change meanwhile; a torn last line
/// is cut off (and that is journaled) before anything is appended.
#[allow(clippy::too_many_arguments)]
pub fn resume(
    model: &Model,
    state_dir: &Path,
    run_id: &str,
    exec: &ExecOptions,
    operator: &str,
    force: bool,
    view: &mut dyn Sink,
    shutdown: Shutdown,
) -> Result<RunOutcome, RunError> {
    let dir = RunDir::open(state_dir, run_id)?;
    let machine = journal::machine_name();
    let lock = StateLock::acquire(
        state_dir,
        &LockHolder {
            pid: std::process::id(),
            machine: machine.clone(),
            run_id: dir.run_id.clone(),
            operator: operator.to_string(),
            since: Utc::now(),
        },
    )?;
    let events = dir.read()?;
    let start = started(&dir.run_id, &events)?;
    // Points asked of a run that takes none would be journaled, and then ignored unsaid.
    let asked = &exec.run.points;
    if start.mode != Mode::Failover
        && (!asked.by_vm.is_empty() || asked.all.is_some() || asked.before.is_some())
    {
        return Err(RunError::PointsNotForMode {
            run_id: dir.run_id.clone(),
            mode: start.mode,
        });
    }
    // What the operator adds to the point choice now (`exec.run.points`), journaled with the
    // resume and added to what the run was asked before: a point for every vm replaces those
    // named one by one before.
    let added = exec
        .run
        .points
        .for_resume(&start.points, |n| model.inventory.vms.contains_key(n));
    if finished(&events) == Some(RunStatus::Succeeded) {
        return Err(RunError::AlreadyFinished(dir.run_id.clone()));
    }
    let now_digest = model.sources.digest();
    if now_digest != start.sources_digest {
        return Err(RunError::SourcesChanged {
            run_id: dir.run_id.clone(),
            then: start.sources_digest.chars().take(12).collect(),
            now: now_digest[..12].to_string(),
        });
    }
    let plan_opts = PlanOptions {
        mode: start.mode,
        emergency: start.emergency,
        services: start.services.clone(),
        only: start.only,
        run_id: dir.run_id.clone(),
    };
    let plan = plan::build(model, &plan_opts).map_err(|d| RunError::Plan(model.report(d)))?;
    let mut prior = runner::prior_from_journal(&events);
    if let Some(at) = runner::drill_cleaned_up(&plan, &events, &mut prior) {
        // Its backup sets' leases are given back once its cleanup is over: again here, for a
        // drill cut right after its cleanup, before it gave them back.
        give_back_drill_sets(&plan, &transport(model, &exec.ssh));
        return Err(RunError::DrillOver {
            run_id: dir.run_id.clone(),
            at,
        });
    }
    for id in cut_before_point(&plan, &prior, &events) {
        prior.remove(&id);
    }
    // A copy of a vm between its sites done while the vm's start on the other site is not is
    // made again: the vm may have run where it came from since, and what it starts from is
    // what is there now (its start checks it is still what the copy read). Refused while a
    // vm the run stopped there runs there again, or, its start on the other site begun, may
    // have.
    let begun: HashSet<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step, .. } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    if plan.mode == Mode::Failover {
        // What the resume asks, with what the run was asked (a run started by an earlier
        // version was not checked at its start).
        let mut asked = start.points.clone();
        asked.add(&added);
        let problems = points_out_of_reach(model, &plan, &asked);
        if !problems.is_empty() {
            return Err(RunError::PointsOutOfReach {
                asked: asked.words(),
                problems,
                resuming: true,
            });
        }
    }
    if plan.mode == Mode::Failover {
        let refused = started_otherwise(model, &events, &prior, &added, &dir.run_id);
        if !refused.is_empty() {
            return Err(RunError::StartedOtherwise { vms: refused });
        }
    }
    let t = transport(model, &exec.ssh);
    let past = PastCopy {
        events: &events,
        force,
        copies: &crate::replica::start::Remote::new(&t),
    };
    let (again, mut forced, mut diverged) =
        again_between_sites(model, &plan, &mut prior, &begun, &t, &past)?;
    give_back_begun(&plan, &begun, &again, &t);
    // A failback's copy-backs not started yet (or made again) are judged again, as at its
    // start: the primary may have been written since (a copy-back started already wrote it
    // itself).
    let mut judged = JudgedDisks::new();
    let mut settled = Vec::new();
    if plan.mode == Mode::Failback {
        let started: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                Event::StepStarted { step, .. } => Some(step.as_str()),
                _ => None,
            })
            .filter(|s| !again.iter().any(|a| a == s))
            .collect();
        let mut left = plan.clone();
        left.steps.retain(|s| !started.contains(&s.id.as_str()));
        let t = transport(model, &exec.ssh);
        // A vm's copy back that started and did not end done runs again: judged as one not
        // started (it wrote nothing of its own on the primary: its copy is written only once
        // its update is committed, and then is its newest point, or is settled to it).
        let mut to_copy = plan.clone();
        to_copy
            .steps
            .retain(|s| prior.get(&s.id) != Some(&Prior::Done));
        let backs = copy_backs(model, &to_copy, &t);
        let folders = folder_backs(&to_copy, &t);
        settled = settled_notes(&backs, &folders);
        judged = judged_disks(&backs, &folders);
        let (runs, mut problems) = judge_copy_back(&backs);
        if !runs.is_empty() {
            return Err(RunError::PrimaryRuns {
                vms: runs,
                resuming: true,
            });
        }
        let uncopied = uncopied(&plan, &started, &t);
        if !uncopied.is_empty() {
            return Err(RunError::NothingCopiedBack {
                problems: uncopied,
                resuming: true,
            });
        }
        problems.extend(judge_folder_back(&folders));
        problems.extend(judge_left_held(&left_held(model, &plan, &t)));
        if !problems.is_empty() && !force {
            return Err(RunError::NotReady {
                mode: plan.mode,
                problems,
                resuming: true,
            });
        }
        if !problems.is_empty() {
            diverged.extend(overwritten_by_copy_back(&backs, &folders));
        }
        forced.extend(problems);
    }
    // The vms it may still start, as at its start; a restore started with --force carries on
    // forced.
    let mut other_site = Judged::default();
    let (away, unread, runs) = away_for(&plan, state_dir);
    let force_restore = plan.mode == Mode::Restore
        && (force
            || events
                .iter()
                .any(|e| matches!(e, Event::ReadinessForced { .. })));
    if plan.mode == Mode::Restore || (plan.mode == Mode::Failover && plan.emergency) {
        let mut left = plan.clone();
        // A step that failed or was cut runs again: only those done are left out.
        left.steps.retain(|s| {
            !matches!(
                prior.get(&s.id),
                Some(runner::Prior::Done | runner::Prior::DrillOver)
            )
        });
        other_site = refuse_elsewhere(
            model,
            &left,
            &transport(model, &exec.ssh),
            &away,
            force_restore,
        )?;
        other_site.warned.extend(unread);
        other_site
            .forced
            .extend(refuse_switched(model, &left, &runs, force_restore)?);
        forced.append(&mut other_site.forced);
    }
    other_site.warned.extend(settled);
    diverged.sort();
    diverged.dedup();
    let (journal, torn) = JournalWriter::resume(&dir)?;
    let now = Utc::now();
    let mut first = Vec::new();
    if let Some(torn) = torn {
        first.push(Event::JournalRepaired {
            at: now,
            line: torn.line,
            bytes: torn.bytes,
            kept_in: torn
                .kept_in
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            excerpt: torn.excerpt,
        });
    }
    first.push(Event::RunResumed {
        at: now,
        operator: operator.to_string(),
        machine,
        points: (added != runner::PointChoice::default()).then(|| Box::new(added.clone())),
    });
    if !forced.is_empty() {
        first.push(Event::ReadinessForced {
            at: now,
            operator: operator.to_string(),
            problems: forced,
            diverged,
        });
    }
    if !other_site.warned.is_empty() {
        first.push(Event::OtherSite {
            at: now,
            said: other_site.warned,
            step: None,
            refused: false,
            diverged: other_site.diverged,
            unasked: other_site.unasked,
        });
    }
    let path = dir.path.clone();
    let run_id = dir.run_id.clone();
    let copied = copied_before(&events, &prior);
    let running_before = running_before_of(&events);
    let launch = Launch {
        plan,
        dir,
        journal,
        first,
        prior,
        away,
        force: force_restore,
        forced_now: force,
        operator: operator.to_string(),
        forced_before: forced_in(&events).collect(),
        judged,
        copied,
        running_before,
    };
    // The vms left start from the points the operator asked for when the run started, and
    // as they resumed it.
    let mut exec = exec.clone();
    exec.run.points = start.points.clone();
    exec.run.points.add(&added);
    let (status, split_brain, refused) = execute(model, launch, &exec, view, shutdown)?;
    let pruned = after_run(state_dir, exec.keep_runs, &run_id);
    Ok(RunOutcome {
        run_id,
        status,
        dir: path,
        replaced_stale_lock: lock.replaced_stale.clone(),
        pruned,
        split_brain,
        refused,
    })
}

/// Records that `by` confirmed a manual step of a run (from any shell). Only a step that
/// waits for a confirmation in that run can be confirmed (a manual step, or a step handed to
/// the operator after an interruption), once, and only by someone named.
pub fn confirm(
    state_dir: &Path,
    run_id: &str,
    step: &str,
    by: &str,
    note: Option<String>,
) -> Result<String, RunError> {
    let by = by.trim();
    // A name of control characters only (escape sequences) names no one.
    if by.chars().all(|c| c.is_whitespace() || c.is_control()) {
        return Err(RunError::NoName);
    }
    let dir = RunDir::open(state_dir, run_id)?;
    let events = dir.read()?;
    let start = started(&dir.run_id, &events)?;
    if !start.steps.iter().any(|s| s == step) {
        return Err(RunError::UnknownStep {
            run_id: dir.run_id.clone(),
            step: step.to_string(),
            hint: did_you_mean(step, start.steps.iter().map(String::as_str)),
        });
    }
    if let Some(status) = over(&events) {
        return Err(RunError::RunOver {
            run_id: dir.run_id.clone(),
            status: format!("{status:?}").to_lowercase(),
        });
    }
    // Who confirmed it first, whether or not the run has taken the confirmation yet: the
    // second person is told who, not that the step has moved on.
    if let Some(given) = dir.confirmation(step) {
        return Err(RunError::AlreadyConfirmed {
            run_id: dir.run_id.clone(),
            step: step.to_string(),
            by: given.by,
            at: given.at,
        });
    }
    let waits = waiting(&events, step);
    // Taken by the run already (it is no longer in the folder): the second person is told
    // who answered the step's last wait, as before the run took it.
    if waits.is_err()
        && let Some((by, at)) = answered(&events, step)
    {
        return Err(RunError::AlreadyConfirmed {
            run_id: dir.run_id.clone(),
            step: step.to_string(),
            by,
            at,
        });
    }
    if let Err(why) = waits {
        return Err(RunError::NotWaiting {
            run_id: dir.run_id.clone(),
            step: step.to_string(),
            why,
        });
    }
    // The wait it answers: a later wait of the same step never takes it.
    let asked = events.iter().rev().find_map(|e| match e {
        Event::WaitingForOperator { at, step: s, .. } if s == step => Some(*at),
        _ => None,
    });
    dir.confirm(
        step,
        &Confirmation {
            by: by.to_string(),
            note,
            at: Utc::now(),
            asked,
        },
    )?;
    Ok(dir.run_id)
}

/// How the run ended, when its journal ends with its end (not resumed since).
fn over(events: &[Event]) -> Option<RunStatus> {
    events.iter().rev().find_map(|e| match e {
        Event::RunFinished { status, .. } => Some(Some(*status)),
        Event::RunStarted { .. } | Event::RunResumed { .. } => Some(None),
        _ => None,
    })?
}

/// Who confirmed `step`'s last wait for a person, and when, if it was answered.
fn answered(events: &[Event], step: &str) -> Option<(String, DateTime<Utc>)> {
    let mut last = None;
    for e in events {
        match e {
            Event::WaitingForOperator { step: s, .. } if s == step => last = None,
            Event::Confirmed {
                step: s, by, at, ..
            } if s == step => last = Some((by.clone(), *at)),
            _ => {}
        }
    }
    last
}

/// Whether the journal says `step` waits for a person now; if not, why.
fn waiting(events: &[Event], step: &str) -> Result<(), String> {
    let mut state = Err("it has not started".to_string());
    for e in events {
        match e {
            Event::WaitingForOperator { step: s, .. } if s == step => state = Ok(()),
            Event::StepStarted { step: s, .. } if s == step => {
                state = Err("it is running and does not ask for one".to_string())
            }
            Event::StepFinished {
                step: s, status, ..
            } if s == step => state = Err(format!("it finished ({status:?})").to_lowercase()),
            _ => {}
        }
    }
    state
}

/// One line of `reprise runs`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub run_id: String,
    /// Why its journal cannot be read to its end: the run is listed from what comes before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    /// `None` when even the start of the journal is damaged.
    pub mode: Option<Mode>,
    pub emergency: bool,
    pub operator: Option<String>,
    pub started: Option<DateTime<Utc>>,
    pub ended: Option<DateTime<Utc>>,
    pub status: Option<RunStatus>,
    pub steps_done: usize,
    pub steps: usize,
    /// The overall result, as in the report.
    pub result: Option<crate::report::Outcome>,
    /// Services within their RTO target, of those measured.
    pub rto_met: usize,
    pub rto_measured: usize,
}

/// Every run of a state folder, oldest first. A journal that cannot be read to its end is
/// listed as damaged, with why; it never hides the others.
pub fn summaries(state_dir: &Path) -> Result<Vec<RunSummary>, RunError> {
    let mut out = Vec::new();
    for id in journal::list(state_dir)? {
        let path = runs_dir_of(state_dir, &id);
        let (events, damage) = match journal::read_lenient(&path) {
            Ok((events, damage)) => (events, damage.map(|e| e.to_string())),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let start = started(&id, &events).ok();
        let damaged = damage.or_else(|| {
            start
                .is_none()
                .then(|| format!("{}: no `run_started` event", path.display()))
        });
        let mut done = std::collections::HashSet::new();
        for e in &events {
            if let Event::StepFinished {
                step,
                status: StepStatus::Done,
                ..
            } = e
            {
                done.insert(step.clone());
            }
        }
        // Not over once resumed after its last end.
        let ended = events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::RunFinished { at, .. } => Some(Some(*at)),
                Event::RunResumed { .. } => Some(None),
                _ => None,
            })
            .flatten();
        let report = crate::report::build(&crate::report::Input {
            events: &events,
            journal_bytes: &[],
            history: &[],
            lang: crate::report::Lang::En,
        })
        .ok()
        .filter(|_| damaged.is_none());
        out.push(RunSummary {
            run_id: id,
            damaged,
            mode: start.as_ref().map(|s| s.mode),
            emergency: start.as_ref().is_some_and(|s| s.emergency),
            operator: start.as_ref().map(|s| s.operator.clone()),
            started: start.as_ref().map(|s| s.at),
            ended,
            status: finished(&events),
            steps_done: done.len(),
            steps: start.as_ref().map_or(0, |s| s.steps.len()),
            result: report.as_ref().map(|r| r.result),
            rto_met: report.as_ref().map_or(0, |r| r.rto_met),
            rto_measured: report.as_ref().map_or(0, |r| r.rto_measured),
        });
    }
    Ok(out)
}

fn runs_dir_of(state_dir: &Path, id: &str) -> PathBuf {
    journal::runs_dir(state_dir).join(id).join("journal.jsonl")
}

/// How many runs are kept by default, besides those still needed (see [`prune`]).
pub const KEEP_RUNS: usize = 30;

/// What [`prune`] removed (or, with `dry_run`, would remove), and the older runs it kept.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Pruned {
    pub removed: Vec<String>,
    /// Runs older than the newest `keep` that are kept, each with why.
    pub kept: Vec<KeptRun>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KeptRun {
    pub run_id: String,
    pub why: String,
}

/// Removes the folders of old runs: all but the newest `keep`, except the runs still needed:
/// the run in progress, a run that never finished (it may still be going, or be resumed), the
/// newest drill that succeeded (a report's "last drill"), the newest drill that recovered each
/// service (`reprise history`), a failover that left a vm on its recovery host with nothing
/// since that brought it back (a restore reads it: [`crate::away`]), and a run whose journal
/// cannot be read (someone should look at it). Takes the state lock: no run goes on meanwhile.
pub fn prune(
    state_dir: &Path,
    keep: usize,
    dry_run: bool,
    operator: &str,
) -> Result<Pruned, RunError> {
    let _lock = StateLock::acquire(
        state_dir,
        &LockHolder {
            pid: std::process::id(),
            machine: journal::machine_name(),
            run_id: "prune".to_string(),
            operator: operator.to_string(),
            since: Utc::now(),
        },
    )?;
    prune_locked(state_dir, keep, None, dry_run)
}

fn prune_locked(
    state_dir: &Path,
    keep: usize,
    current: Option<&str>,
    dry_run: bool,
) -> Result<Pruned, RunError> {
    let ids = journal::list(state_dir)?;
    let old = ids.len().saturating_sub(keep);
    let mut pruned = Pruned::default();
    if old == 0 {
        return Ok(pruned);
    }
    let needed = needed_runs(state_dir)?;
    for id in &ids[..old] {
        let why = if Some(id.as_str()) == current {
            Some("the run in progress".to_string())
        } else {
            needed.get(id).cloned()
        };
        match why {
            Some(why) => pruned.kept.push(KeptRun {
                run_id: id.clone(),
                why,
            }),
            None => {
                if !dry_run {
                    let dir = journal::runs_dir(state_dir).join(id);
                    std::fs::remove_dir_all(&dir).map_err(|source| JournalError::Io {
                        what: "remove",
                        path: dir.clone(),
                        source,
                    })?;
                }
                pruned.removed.push(id.clone());
            }
        }
    }
    Ok(pruned)
}

/// The runs a retention must keep, with why.
fn needed_runs(state_dir: &Path) -> Result<HashMap<String, String>, RunError> {
    let mut needed = HashMap::new();
    let mut last_drill: Option<(DateTime<Utc>, String)> = None;
    let mut runs = Vec::new();
    for id in journal::list(state_dir)? {
        let (events, damage) = match journal::read_lenient(&runs_dir_of(state_dir, &id)) {
            Ok(read) => read,
            Err(e) => (Vec::new(), Some(e)),
        };
        runs.push((id.clone(), events.clone()));
        let Some(start) = started(&id, &events).ok().filter(|_| damage.is_none()) else {
            needed.insert(id, "its journal cannot be read to its end".to_string());
            continue;
        };
        match over(&events) {
            None => {
                needed.insert(
                    id,
                    "it never finished: it may still be going, or be resumed".to_string(),
                );
            }
            Some(RunStatus::Succeeded | RunStatus::Partial) if start.mode == Mode::Drill => {
                if last_drill.as_ref().is_none_or(|(at, _)| *at < start.at) {
                    last_drill = Some((start.at, id));
                }
            }
            Some(_) => {}
        }
    }
    if let Some((_, id)) = last_drill {
        needed
            .entry(id)
            .or_insert_with(|| "the last drill, which reports refer to".to_string());
    }
    // A restore reads them when the recovery host cannot be asked.
    let mut left: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for away in crate::away::away_of(&runs).into_values() {
        left.entry(away.run_id).or_default().push(away.vm);
    }
    for (id, vms) in left {
        let (s, them) = if vms.len() == 1 {
            ("", "it")
        } else {
            ("s", "them")
        };
        needed.entry(id).or_insert_with(|| {
            format!(
                "it left vm{s} {} on their recovery host, and nothing brought {them} back since: a restore reads it",
                vms.join(", ")
            )
        });
    }
    // And what brought a vm back: without it, a failover's journal kept for another reason
    // would say the vm is still away.
    let mut back: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (vm, id) in crate::away::back_of(&runs) {
        back.entry(id).or_default().push(vm);
    }
    for (id, vms) in back {
        needed.entry(id).or_insert_with(|| {
            format!(
                "it brought back {} after a failover: a restore reads it",
                vms.join(", ")
            )
        });
    }
    // And what a restore of a service its application replicates reads: the failover that
    // may have switched it, and what brought it back.
    for (id, why) in crate::away::switch_runs(&runs) {
        needed.entry(id).or_insert(why);
    }
    for drill in crate::report::last_drills(state_dir)? {
        if let Some(id) = drill.run_id {
            needed
                .entry(id)
                .or_insert_with(|| format!("the last drill that recovered {}", drill.service));
        }
    }
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::{CopyState, Lease, LeaseKind};

    fn lease(kind: LeaseKind, vm: &str) -> Lease {
        Lease {
            kind,
            run: "R1".into(),
            vm: vm.into(),
            step: "db/start".into(),
            machine: "m".into(),
            pid: 1,
            at: Utc::now(),
            point: None,
            taken_at: None,
            written_until: None,
            verified: true,
        }
    }

    /// A refusal met by a resume says what a resume can do: it runs the runbooks its run
    /// started with, and a new start is not what to run.
    #[test]
    fn a_refused_resume_is_said_as_a_resume() {
        let problems = vec!["vm db ran on its recovery copies".to_string()];
        for resuming in [false, true] {
            let said = [
                RunError::NothingCopiedBack {
                    problems: problems.clone(),
                    resuming,
                }
                .to_string(),
                RunError::PrimaryRuns {
                    vms: problems.clone(),
                    resuming,
                }
                .to_string(),
                RunError::NotReady {
                    mode: Mode::Failback,
                    problems: problems.clone(),
                    resuming,
                }
                .to_string(),
            ];
            for s in &said {
                assert_eq!(
                    s.starts_with("refusing to resume the failback: "),
                    resuming,
                    "{s}"
                );
                assert!(s.contains("vm db ran on its recovery copies"), "{s}");
            }
            assert_eq!(said[0].contains("start a new failback instead"), resuming);
            assert_eq!(said[1].ends_with("then resume it"), resuming);
            assert_eq!(said[2].contains("resume it anyway with --force"), resuming);
        }
    }

    fn back(running: Option<bool>, leases: Vec<Lease>) -> CopyBack {
        CopyBack {
            vm: "db".into(),
            primary: "hv-main".into(),
            recovery: "hv-pra".into(),
            running: (running, "shut off".into()),
            copies: Ok(vec![CopyState {
                path: "/img/db.qcow2".into(),
                exists: true,
                leases,
                ..CopyState::default()
            }]),
            disks: Ok(vec![CopyState {
                path: "/srv/db.qcow2".into(),
                exists: true,
                mtime: Some(Utc::now() - chrono::Duration::hours(1)),
                ..CopyState::default()
            }]),
            clock: Ok((0.0, 0.0)),
            settled: Vec::new(),
            overlays: Ok(vec![CopyState {
                path: "/srv/db.reprise-replicate".into(),
                ..CopyState::default()
            }]),
        }
    }

    /// A replication's overlay left beside a primary disk (a replication cut by the
    /// primary's power cut) is what the vm's domain runs on there: a failback refuses it
    /// outright, naming it and how to merge it; one that cannot be looked for is a problem.
    #[test]
    fn a_failback_never_copies_back_under_a_replication_overlay_left_on_the_primary() {
        let live = || vec![lease(LeaseKind::Live, "db")];
        let mut left = back(Some(false), live());
        if let Ok(o) = &mut left.overlays {
            o[0].exists = true;
        }
        let (runs, problems) = judge_copy_back(&[left]);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(
            runs.len() == 1
                && runs[0].contains("/srv/db.reprise-replicate is left on hv-main")
                && runs[0].contains("qemu-img commit /srv/db.reprise-replicate"),
            "{runs:?}"
        );
        let mut denied = back(Some(false), live());
        if let Ok(o) = &mut denied.overlays {
            o[0].unreadable = Some("Permission denied (os error 13)".into());
        }
        if let Ok(d) = &mut denied.disks {
            d[0].unreadable = Some("Input/output error (os error 5)".into());
            d[0].exists = false;
        }
        let (runs, problems) = judge_copy_back(&[denied]);
        assert!(runs.is_empty(), "{runs:?}");
        assert!(
            problems.len() == 2
                && problems[0].contains("cannot be told (Permission denied")
                && problems[1].contains("cannot be looked at (Input/output error"),
            "{problems:?}"
        );
        let mut unread = back(Some(false), live());
        unread.overlays = Err("no helper".into());
        let (runs, problems) = judge_copy_back(&[unread]);
        assert!(runs.is_empty(), "{runs:?}");
        assert!(
            problems.len() == 1 && problems[0].contains("cannot be read (no helper)"),
            "{problems:?}"
        );
    }

    /// A host whose `date +%s.%N` prints what its function makes of this machine's clock now.
    struct Clock(fn(f64) -> String);

    impl Transport for Clock {
        fn exec(
            &self,
            _host: &str,
            command: &str,
            _deadline: StdDuration,
        ) -> Result<crate::ssh::ExecOutput, crate::ssh::SshError> {
            assert_eq!(command, "date +%s.%N");
            let now = Utc::now().timestamp_micros() as f64 / 1e6;
            Ok(crate::ssh::ExecOutput {
                exit_code: 0,
                stdout: format!("{}\n", (self.0)(now)),
                stderr: String::new(),
                truncated: false,
                timed_out: false,
                duration: StdDuration::ZERO,
            })
        }
    }

    /// The primary's disk times are its clock's, the failover's lease time this machine's: a
    /// primary whose clock is behind never hides a write made just after the failover, one
    /// ahead by seconds makes a write of before it look later no more, one far ahead (perhaps
    /// not when the disk was written) never makes its time older than it reads, and a clock
    /// that cannot be read is a problem (whether the disk was written since cannot be told).
    #[test]
    fn a_primary_clock_behind_never_hides_a_write_made_after_the_failover() {
        let failover = Utc::now() - chrono::Duration::minutes(10);
        let judge = |clock: &Clock, offset: f64, written: chrono::Duration| {
            let mut lease = lease(LeaseKind::Live, "db");
            lease.at = failover;
            let mut b = back(Some(false), vec![lease]);
            b.clock = crate::check::read_clock(clock, "hv-main");
            // The disk was written at `failover + written` (this machine's clock), stamped by
            // the primary's, `offset` seconds off.
            let by_primary =
                failover + written + chrono::Duration::microseconds((offset * 1e6).round() as i64);
            if let Ok(d) = &mut b.disks {
                d[0].mtime = Some(by_primary);
            }
            judge_copy_back(&[b]).1
        };
        let (behind, ahead) = (
            Clock(|now| format!("{:.6}", now - 30.0)),
            Clock(|now| format!("{:.6}", now + 30.0)),
        );
        let s = chrono::Duration::seconds;
        let problems = judge(&behind, -30.0, s(2));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("by its clock, 30.0")
                && problems[0].contains("behind this machine's, after the failover"),
            "{problems:?}"
        );
        assert!(judge(&behind, -30.0, s(-2)).is_empty());
        assert!(judge(&ahead, 30.0, s(-2)).is_empty());
        assert_eq!(judge(&ahead, 30.0, s(2)).len(), 1);
        for said in [|_| "Wed Dec  2".to_string(), |_| "inf".to_string()] {
            let problems = judge(&Clock(said), 0.0, s(-60));
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains(
                    "the clock of hv-main cannot be read (`date +%s.%N` exited 0 and printed"
                ),
                "{problems:?}"
            );
        }
        // A clock absurdly far off is in doubt, never a panic.
        let far = Clock(|now| format!("{:.1}", now + 1e30));
        assert_eq!(judge(&far, 0.0, s(-60)).len(), 1);
    }

    /// The comparison brings the disk's time to this machine's clock, in doubt towards later:
    /// a clock found far ahead now (more than a minute) may have been right when the disk was
    /// written, so its offset never makes a write older than the disk's time says.
    #[test]
    fn a_disk_time_is_compared_on_this_machines_clock() {
        let at = Utc::now();
        let s = chrono::Duration::seconds;
        assert!(written_after(at + s(1) - s(30), -30.0, 0.0, at));
        assert!(!written_after(at - s(1) - s(30), -30.0, 0.0, at));
        assert!(!written_after(at - s(1) + s(30), 30.0, 0.0, at));
        assert!(written_after(at + s(1) + s(30), 30.0, 0.0, at));
        // Written 20 minutes after `at` by a clock then right, found an hour ahead now.
        assert!(written_after(at + s(1200), 3600.0, 0.05, at));
        // Within the uncertainty of the reading: written after.
        let ms = chrono::Duration::milliseconds;
        assert!(written_after(at - ms(100), 0.0, 0.2, at));
        assert!(written_after(at, f64::MAX, 0.0, at));
    }

    /// The example's plan of `mode` for erp-db alone.
    fn erp_db_plan(model: &Model, mode: Mode, emergency: bool) -> Plan {
        plan::build(
            model,
            &PlanOptions {
                services: vec!["erp-db".into()],
                only: true,
                emergency,
                ..PlanOptions::new(mode)
            },
        )
        .unwrap()
    }

    /// A resumed failback makes a vm's copy back again while its start on the primary is not
    /// done and cannot have started it (the vm may have run on its recovery copies since),
    /// never once it is done or may have (the vm may run on the primary on what was copied
    /// back, and write); a resumed planned failover makes its final sync again while its start
    /// is not done and cannot have started it.
    #[test]
    fn a_resumed_run_copies_again_what_it_has_not_started_from() {
        let model = crate::check::example();
        let plan = |mode, emergency| erp_db_plan(&model, mode, emergency);
        let done = |ids: &[&str]| -> HashMap<String, Prior> {
            ids.iter().map(|id| (id.to_string(), Prior::Done)).collect()
        };
        let back = plan(Mode::Failback, false);
        let copied = [
            "erp-db/stop-recovery",
            "erp-db/no-autostart-recovery",
            "erp-db/sync-back",
        ];
        let none = HashSet::new();
        assert_eq!(
            copies_again(&back, &done(&copied), &none),
            ["erp-db/sync-back"]
        );
        let mut prior = done(&copied);
        prior.insert("erp-db/start-primary".into(), Prior::Interrupted);
        assert_eq!(copies_again(&back, &prior, &none), ["erp-db/sync-back"]);
        let begun: HashSet<&str> = ["erp-db/start-primary", "erp-db/start"].into();
        assert!(copies_again(&back, &prior, &begun).is_empty());
        let started = [&copied[..], &["erp-db/start-primary"]].concat();
        assert!(copies_again(&back, &done(&started), &begun).is_empty());
        assert!(copies_again(&back, &done(&copied[..2]), &none).is_empty());
        let over = plan(Mode::Failover, false);
        let synced = [
            "erp-db/stop-primary",
            "erp-db/no-autostart-primary",
            "erp-db/final-sync",
        ];
        assert_eq!(
            copies_again(&over, &done(&synced), &none),
            ["erp-db/final-sync"]
        );
        // Its start began and may have started it (cut, or failed after the vm came up: not
        // in `prior`).
        assert!(copies_again(&over, &done(&synced), &begun).is_empty());
        // Its start done (the run cut at a later step): the vm runs on the copy and writes.
        let started = [&synced[..], &["erp-db/start"]].concat();
        assert!(copies_again(&over, &done(&started), &none).is_empty());
        let emergency = plan(Mode::Failover, true);
        assert!(copies_again(&emergency, &done(&synced), &none).is_empty());
    }

    /// A vm start cut before it journaled its point never sent its command: a resume runs it
    /// again whole (its point chosen again, a roll-back the cut left half done settled), not
    /// handed to a person. One that journaled its point may have started the vm, unless a
    /// roll-back undid it since; a failback's start on the primary journals none, and is
    /// never run again blind.
    #[test]
    fn a_start_cut_before_it_journaled_its_point_runs_again_whole() {
        let model = crate::check::example();
        let cut =
            |id: &str| -> HashMap<String, Prior> { [(id.to_string(), Prior::Interrupted)].into() };
        let at: DateTime<Utc> = "2026-11-28T02:00:00Z".parse().unwrap();
        let used = Event::ReplicaPointUsed {
            at,
            step: "erp-db/start".into(),
            item: "erp-db".into(),
            point: "P2".into(),
            taken_at: at,
            written_until: None,
            verified: true,
            note: None,
            dropped: Vec::new(),
        };
        let undone = Event::UndoFinished {
            at,
            step: "erp-db/start".into(),
            ok: true,
            message: None,
        };
        for emergency in [true, false] {
            let over = erp_db_plan(&model, Mode::Failover, emergency);
            let prior = cut("erp-db/start");
            assert_eq!(cut_before_point(&over, &prior, &[]), ["erp-db/start"]);
            assert!(cut_before_point(&over, &prior, std::slice::from_ref(&used)).is_empty());
            assert_eq!(
                cut_before_point(&over, &prior, &[used.clone(), undone.clone()]),
                ["erp-db/start"]
            );
            // An earlier attempt journaled its point, then failed (its copies given back); a
            // later one was cut before it journaled its own: it runs again whole.
            let failed = Event::StepFinished {
                at,
                step: "erp-db/start".into(),
                attempt: 1,
                status: crate::event::StepStatus::Failed,
                duration_ms: 0,
                message: None,
            };
            assert_eq!(
                cut_before_point(&over, &prior, &[used.clone(), failed.clone()]),
                ["erp-db/start"]
            );
            assert!(cut_before_point(&over, &prior, &[failed, used.clone()]).is_empty());
            let done: HashMap<String, Prior> = [("erp-db/start".to_string(), Prior::Done)].into();
            assert!(cut_before_point(&over, &done, &[]).is_empty());
        }
        let back = erp_db_plan(&model, Mode::Failback, false);
        assert!(cut_before_point(&back, &cut("erp-db/start-primary"), &[]).is_empty());
        // A step of no vm copy (a stop) is left as it was: verified, or handed to a person.
        let over = erp_db_plan(&model, Mode::Failover, true);
        let other = over
            .steps
            .iter()
            .find(|s| s.replica.is_none() && s.vm.is_some())
            .unwrap();
        assert!(cut_before_point(&over, &cut(&other.id), &[]).is_empty());
    }

    /// A resumed failover asked for a point (or a time) that a start it has done did not use
    /// is refused, naming the vm and the point it started from: that start is not made again,
    /// and carrying on would leave the vm on data other than asked without a word. Asked for
    /// the point it used, a time after it, or nothing: no refusal.
    #[test]
    fn a_resume_asking_another_point_for_a_vm_it_started_is_refused() {
        let model = crate::check::example();
        let taken_at: DateTime<Utc> = "2026-11-28T02:00:00Z".parse().unwrap();
        let events = vec![Event::ReplicaPointUsed {
            at: taken_at + chrono::Duration::hours(3),
            step: "erp-db/start".into(),
            item: "erp-db".into(),
            point: "P2".into(),
            taken_at,
            written_until: None,
            verified: true,
            note: None,
            dropped: Vec::new(),
        }];
        let done: HashMap<String, Prior> = [("erp-db/start".to_string(), Prior::Done)].into();
        let choice =
            |by_vm: &[(&str, &str)], all: Option<&str>, before: Option<&str>| runner::PointChoice {
                by_vm: by_vm
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                all: all.map(str::to_string),
                before: before.map(|t| t.parse().unwrap()),
                ..Default::default()
            };
        for now in [
            choice(&[("erp-db", "P1")], None, None),
            choice(&[], Some("P1"), None),
            choice(&[], None, Some("2026-11-28T01:00:00Z")),
            choice(&[("erp-db", "P2")], None, Some("2026-11-28T01:00:00Z")),
        ] {
            let refused = started_otherwise(&model, &events, &done, &now, "r1");
            assert_eq!(refused.len(), 1, "{now:?}");
            assert!(
                refused[0].starts_with("erp-db was started by this run from point P2")
                    && refused[0].contains("it cannot start from"),
                "{}",
                refused[0]
            );
        }
        for now in [
            choice(&[], None, None),
            choice(&[("erp-db", "P2")], None, None),
            choice(&[], None, Some("2026-11-28T03:00:00Z")),
            choice(&[("erp-app", "P1")], None, None),
        ] {
            assert!(
                started_otherwise(&model, &events, &done, &now, "r1").is_empty(),
                "{now:?}"
            );
        }
        // A start cut after it chose its point may have started the vm from it, and is
        // handed to a person, not chosen again: refused the same way.
        let begun: HashMap<String, Prior> =
            [("erp-db/start".to_string(), Prior::Interrupted)].into();
        let now = choice(&[("erp-db", "P1")], None, None);
        let refused = started_otherwise(&model, &events, &begun, &now, "r1");
        assert!(
            refused.len() == 1 && refused[0].contains("cut after it chose that point"),
            "{refused:?}"
        );
        // One that failed runs again, and `choice::decide` refuses there.
        let failed: HashMap<String, Prior> = HashMap::new();
        assert!(started_otherwise(&model, &events, &failed, &now, "r1").is_empty());
        // What it started from holds writes after its point's time (a disk started as it
        // is, a backup set's newest file): a time before those is refused too, saying until
        // when its data holds.
        let mut later = events.clone();
        if let Event::ReplicaPointUsed { written_until, .. } = &mut later[0] {
            *written_until = Some("2026-11-28T04:00:00Z".parse().unwrap());
        }
        let now = choice(&[], None, Some("2026-11-28T03:00:00Z"));
        let refused = started_otherwise(&model, &later, &done, &now, "r1");
        assert!(
            refused.len() == 1
                && refused[0].contains("holding what was written until 2026-11-28 04:00:00 UTC"),
            "{refused:?}"
        );
        let now = choice(&[], None, Some("2026-11-28T05:00:00Z"));
        assert!(started_otherwise(&model, &later, &done, &now, "r1").is_empty());
        // Journaled by an earlier version, without it: disks of several moments (or a copy
        // as it is, or a backup set) may hold writes after their point's time, unknown.
        let mut apart = events.clone();
        if let Event::ReplicaPointUsed { point, .. } = &mut apart[0] {
            *point = "P2+P1".into();
        }
        let refused = started_otherwise(&model, &apart, &done, &now, "r1");
        assert!(
            refused.len() == 1 && refused[0].contains("its journal not saying until when"),
            "{refused:?}"
        );
    }

    /// Hosts whose driver `status` (`virsh domstate`) says what `said` gives for them (a host
    /// not there cannot be reached).
    /// [`crate::replica::start::Copies`] that tells only stamps: each path's, or, with
    /// none, that the host cannot be read.
    struct Stamps(Option<Vec<(String, String)>>);

    impl crate::replica::start::Copies for Stamps {
        fn inspect(
            &self,
            _host: &str,
            paths: &[String],
        ) -> Result<Vec<crate::replica::CopyState>, String> {
            let Some(known) = &self.0 else {
                return Err("the host does not answer".into());
            };
            Ok(paths
                .iter()
                .map(|p| crate::replica::CopyState {
                    path: p.clone(),
                    exists: true,
                    stamp: known.iter().find(|(k, _)| k == p).map(|(_, s)| s.clone()),
                    ..Default::default()
                })
                .collect())
        }
        fn settle(&self, _: &str, _: &str, _: StdDuration) -> Result<Option<String>, String> {
            Err("not asked".into())
        }
        fn verify(&self, _: &str, _: &str, _: &str) -> Result<bool, String> {
            Err("not asked".into())
        }
        fn roll_back(
            &self,
            _: &str,
            _: &str,
            _: &str,
        ) -> Result<crate::replica::store::RolledBack, String> {
            Err("not asked".into())
        }
        fn take_lease(
            &self,
            _: &str,
            _: &str,
            _: &crate::replica::Lease,
            _: crate::replica::start::Take<'_>,
        ) -> Result<Option<String>, String> {
            Err("not asked".into())
        }
        fn release(
            &self,
            _: &str,
            _: &[String],
            _: Option<&str>,
            _: Option<crate::replica::LeaseKind>,
        ) -> Result<Vec<String>, String> {
            Err("not asked".into())
        }
        fn ask(&self, _: &str, _: &str) -> Option<String> {
            None
        }
    }

    struct Status(HashMap<&'static str, &'static str>);

    impl Transport for Status {
        fn exec(
            &self,
            host: &str,
            command: &str,
            _deadline: StdDuration,
        ) -> Result<crate::ssh::ExecOutput, crate::ssh::SshError> {
            assert!(
                command.starts_with("export LC_ALL=C; n=") && command.contains("virsh domstate"),
                "{command}"
            );
            let Some(said) = self.0.get(host) else {
                return Err(crate::ssh::SshError::Session {
                    host: host.to_string(),
                    reason: "no route to host".into(),
                });
            };
            Ok(crate::ssh::ExecOutput {
                exit_code: 0,
                stdout: format!("{said}\n"),
                stderr: String::new(),
                truncated: false,
                timed_out: false,
                duration: StdDuration::ZERO,
            })
        }
    }

    /// A failback's copy back over the primary that its start or resume did not judge (a
    /// resume that took it for done, then ran it again) is refused: whether the primary was
    /// written since the failover cannot be told. Forced, it is said as forced.
    #[test]
    fn a_copy_back_never_overwrites_a_primary_it_did_not_judge() {
        let model = crate::check::example();
        let plan = erp_db_plan(&model, Mode::Failback, false);
        let step = plan
            .step("erp-db/sync-back")
            .expect("the copy back")
            .clone();
        let guard = |force: bool| FailbackGuard {
            model: model.clone(),
            run_id: "r1".into(),
            transport: Arc::new(Status([("hv-main", "shut off")].into())),
            judged: JudgedDisks::new(),
            force,
            operator: "alice".into(),
            journaled: std::sync::Mutex::new(BTreeSet::new()),
        };
        let says = runner::OtherSite::judge(&guard(false), &step);
        assert_eq!(says.refused.len(), 1, "{:?}", says.refused);
        assert!(
            says.refused[0].contains(
                "vm erp-db: what the copy back overwrites on hv-main was not judged when this failback started or resumed"
            ) && says.refused[0].contains("then resume with --force"),
            "{:?}",
            says.refused
        );
        let says = runner::OtherSite::judge(&guard(true), &step);
        assert!(says.refused.is_empty(), "{:?}", says.refused);
        assert_eq!(says.forced.len(), 1, "{:?}", says.forced);
    }

    /// A planned failover cut once its final sync was done and its start had begun, resumed:
    /// the vm started again on the primary by hand since wrote what the recovery copy lacks, so
    /// the start never carries on from that copy. A start that did not start the vm makes the
    /// final sync again (refused while the primary runs); one that may have started it carries
    /// on only while the primary says it is stopped. An emergency failover does not ask the
    /// primary, nor does a drill, which runs beside it.
    #[test]
    fn a_resumed_failover_never_starts_from_a_copy_the_primary_ran_past() {
        let model = crate::check::example();
        let plan = |mode, emergency| erp_db_plan(&model, mode, emergency);
        let synced = [
            "erp-db/stop-primary",
            "erp-db/no-autostart-primary",
            "erp-db/final-sync",
        ];
        let prior = || -> HashMap<String, Prior> {
            let mut p: HashMap<String, Prior> = synced
                .iter()
                .map(|id| (id.to_string(), Prior::Done))
                .collect();
            p.insert("erp-db/start".into(), Prior::Interrupted);
            p
        };
        let begun: HashSet<&str> = [&synced[..], &["erp-db/start"]]
            .concat()
            .into_iter()
            .collect();
        let over = plan(Mode::Failover, false);
        let no_journal = PastCopy {
            events: &[],
            force: false,
            copies: &Stamps(None),
        };
        let resume_with = |plan: &Plan, hosts: &[(&'static str, &'static str)], past: &PastCopy| {
            let mut p = prior();
            let said = Status(hosts.iter().copied().collect());
            again_between_sites(&model, plan, &mut p, &begun, &said, past)
                .map(|(again, forced, _)| {
                    let kept = |id: &str| p.contains_key(id);
                    (
                        again,
                        kept("erp-db/final-sync"),
                        kept("erp-db/start"),
                        forced,
                    )
                })
                .map_err(|e| e.to_string())
        };
        let resume = |plan: &Plan, hosts: &[(&'static str, &'static str)]| {
            resume_with(plan, hosts, &no_journal).map(|(a, s, t, forced)| {
                assert!(forced.is_empty(), "{forced:?}");
                (a, s, t)
            })
        };
        let (main, pra) = ("hv-main", "hv-pra");
        // Stopped on both sites: the start did not start it, the final sync is made again,
        // and the start runs again whole.
        assert_eq!(
            resume(&over, &[(main, "shut off"), (pra, "shut off")]),
            Ok((vec!["erp-db/final-sync".to_string()], false, false))
        );
        // The primary runs again: refused, whatever the start did.
        for pra_said in ["shut off", "running"] {
            let e = resume(&over, &[(main, "running"), (pra, pra_said)]).unwrap_err();
            assert!(e.starts_with("refusing to resume the failover: "), "{e}");
            assert!(e.contains("vm erp-db runs on hv-main again"), "{e}");
            assert!(e.contains("stop it on hv-main"), "{e}");
        }
        let e = resume(&over, &[(main, "running"), (pra, "running")]).unwrap_err();
        assert!(e.contains("erp-db/final-sync"), "{e}");
        assert!(e.contains("may run on hv-pra too"), "{e}");
        // The primary cannot say: refused, as it may have run.
        let e = resume(&over, &[(pra, "running")]).unwrap_err();
        assert!(e.contains("whether vm erp-db runs on hv-main again"), "{e}");
        assert!(
            e.contains("reprise failover --emergency --service erp-db"),
            "{e}"
        );
        // Stopped on the primary, running on the recovery host: the start took effect; with
        // a journal that does not say what the final sync read (a run of an earlier version),
        // whether the primary ran since cannot be told: refused, unless forced.
        let e = resume(&over, &[(main, "shut off"), (pra, "running")]).unwrap_err();
        assert!(
            e.contains("this run's journal does not say what the final sync read there")
                && e.contains("resume with --force"),
            "{e}"
        );
        // The same, the primary's disks still what the final sync read (its journal says):
        // carried on. Written since (the vm ran there and was stopped again), or unreadable:
        // refused, unless forced (then said, for the journal).
        let disks = [
            "/srv/datastore/images/erp-db-system.qcow2",
            "/srv/datastore/images/erp-db-data.qcow2",
        ];
        let read = [Event::SourceRead {
            at: Utc::now(),
            step: "erp-db/final-sync".into(),
            vm: "erp-db".into(),
            host: main.into(),
            stamps: disks
                .iter()
                .map(|d| (d.to_string(), "1 2 3".to_string()))
                .collect(),
        }];
        let now = |second: &str| {
            Stamps(Some(vec![
                (disks[0].to_string(), "1 2 3".to_string()),
                (disks[1].to_string(), second.to_string()),
            ]))
        };
        let (same, written, unreadable) = (now("1 2 3"), now("1 9 3"), Stamps(None));
        let past = |copies, force| PastCopy {
            events: &read,
            force,
            copies,
        };
        let after = [(main, "shut off"), (pra, "running")];
        assert_eq!(
            resume_with(&over, &after, &past(&same, false)),
            Ok((Vec::new(), true, true, Vec::new()))
        );
        let e = resume_with(&over, &after, &past(&written, false)).unwrap_err();
        assert!(
            e.contains("its disks on hv-main were written since the final sync (step erp-db/final-sync) read them")
                && e.contains("erp-db-data.qcow2 (it was `1 2 3`, it is `1 9 3`)")
                && e.contains("resume with --force"),
            "{e}"
        );
        let e = resume_with(&over, &after, &past(&unreadable, false)).unwrap_err();
        assert!(e.contains("cannot be told"), "{e}");
        let (again, _, _, forced) = resume_with(&over, &after, &past(&written, true)).unwrap();
        assert!(again.is_empty());
        assert!(
            forced.len() == 1 && forced[0].contains("as forced (--force)"),
            "{forced:?}"
        );
        // The primary site lost: an emergency failover carries on without it.
        let emergency = plan(Mode::Failover, true);
        assert!(resume(&emergency, &[(pra, "shut off")]).is_ok());
        // A drill runs beside the primary.
        let drill = plan(Mode::Drill, false);
        assert!(resume(&drill, &[(main, "running"), (pra, "running")]).is_ok());
    }

    /// A failback cut once its copy back was done and its start on the primary had begun,
    /// resumed. Its start may have started the vm on the primary (its driver does not say it is
    /// stopped there): what it runs on is what was copied back, and what it wrote since is the
    /// primary's newest data, so the copy back is not made again over it; the resume carries on
    /// only while the recovery side has not run the vm since the copy back read its disks. One
    /// that did not start it makes the copy back again, and starts again whole.
    #[test]
    fn a_resumed_failback_never_copies_back_over_a_vm_its_start_may_have_started() {
        let model = crate::check::example();
        let back = erp_db_plan(&model, Mode::Failback, false);
        let copied = [
            "erp-db/stop-recovery",
            "erp-db/no-autostart-recovery",
            "erp-db/sync-back",
        ];
        let begun: HashSet<&str> = [&copied[..], &["erp-db/start-primary"]]
            .concat()
            .into_iter()
            .collect();
        let (main, pra) = ("hv-main", "hv-pra");
        let disks = [
            "/srv/replicas/erp-db-system.qcow2",
            "/srv/replicas/erp-db-data.qcow2",
        ];
        let read = [Event::SourceRead {
            at: Utc::now(),
            step: "erp-db/sync-back".into(),
            vm: "erp-db".into(),
            host: pra.into(),
            stamps: disks
                .iter()
                .map(|d| (d.to_string(), "1 2 3".to_string()))
                .collect(),
        }];
        let now = |second: &str| {
            Stamps(Some(vec![
                (disks[0].to_string(), "1 2 3".to_string()),
                (disks[1].to_string(), second.to_string()),
            ]))
        };
        let resume = |hosts: &[(&'static str, &'static str)], copies: &Stamps, force: bool| {
            let mut p: HashMap<String, Prior> = copied
                .iter()
                .map(|id| (id.to_string(), Prior::Done))
                .collect();
            p.insert("erp-db/start-primary".into(), Prior::Interrupted);
            let said = Status(hosts.iter().copied().collect());
            let past = PastCopy {
                events: &read,
                force,
                copies,
            };
            again_between_sites(&model, &back, &mut p, &begun, &said, &past)
                .map(|(again, forced, _)| {
                    let kept = |id: &str| p.contains_key(id);
                    (
                        again,
                        kept("erp-db/sync-back"),
                        kept("erp-db/start-primary"),
                        forced.len(),
                    )
                })
                .map_err(|e| e.to_string())
        };
        let same = now("1 2 3");
        // Stopped on the primary: the start did not start it; copied back again, started
        // again whole.
        assert_eq!(
            resume(&[(main, "shut off"), (pra, "shut off")], &same, false),
            Ok((vec!["erp-db/sync-back".to_string()], false, false, 0))
        );
        // Running on the primary (or it cannot say), the recovery side as the copy back
        // read it: carried on, the copy back kept.
        for main_said in ["running", "paused"] {
            assert_eq!(
                resume(&[(main, main_said), (pra, "shut off")], &same, false),
                Ok((Vec::new(), true, true, 0)),
                "{main_said}"
            );
        }
        // The recovery side ran it since: refused, naming what to do, unless forced.
        let e = resume(
            &[(main, "running"), (pra, "shut off")],
            &now("1 9 3"),
            false,
        )
        .unwrap_err();
        assert!(
            e.contains("its disks on hv-pra were written since the copy back (step erp-db/sync-back) read them")
                && e.contains("erp-db-data.qcow2 (it was `1 2 3`, it is `1 9 3`)")
                && e.contains("after this failback stopped it (step erp-db/stop-recovery)")
                && e.contains("resume with --force"),
            "{e}"
        );
        assert_eq!(
            resume(&[(main, "running"), (pra, "shut off")], &now("1 9 3"), true).map(|r| r.3),
            Ok(1)
        );
        let e = resume(&[(main, "running"), (pra, "running")], &same, false).unwrap_err();
        assert!(e.contains("vm erp-db runs on hv-pra again"), "{e}");
        // A journal that does not say what the copy back read (a run of an earlier version):
        // whether the recovery side ran it since cannot be told.
        let mut p: HashMap<String, Prior> = copied
            .iter()
            .map(|id| (id.to_string(), Prior::Done))
            .collect();
        p.insert("erp-db/start-primary".into(), Prior::Interrupted);
        let said = Status([(main, "running"), (pra, "shut off")].into());
        let unjournaled = PastCopy {
            events: &[],
            force: false,
            copies: &same,
        };
        let e = again_between_sites(&model, &back, &mut p, &begun, &said, &unjournaled)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("this run's journal does not say what the copy back read there"),
            "{e}"
        );
        let e = resume(&[(main, "running")], &same, false).unwrap_err();
        assert!(
            e.contains("whether vm erp-db runs on hv-pra again since this failback stopped it")
                && e.contains("reprise restore --service erp-db --force"),
            "{e}"
        );
    }

    /// An emergency failover starts the vm from its last point, older than the primary's last
    /// writes: a primary disk written between that point and the failover holds what the
    /// recovery site never got, and is a problem; one last written before the point is not.
    #[test]
    fn a_failback_never_overwrites_primary_writes_made_after_the_point_the_failover_used() {
        let failover = Utc::now() - chrono::Duration::minutes(10);
        let point = failover - chrono::Duration::hours(1);
        let judge = |written: DateTime<Utc>| {
            let mut lease = lease(LeaseKind::Live, "db");
            (lease.at, lease.taken_at) = (failover, Some(point));
            let mut b = back(Some(false), vec![lease]);
            if let Ok(d) = &mut b.disks {
                d[0].mtime = Some(written);
            }
            judge_copy_back(&[b]).1
        };
        let problems = judge(point + chrono::Duration::minutes(30));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("after the failover started vm db on /img/db.qcow2")
                && problems[0].contains(&format!(
                    "from its data as of {}",
                    point.format("%Y-%m-%d %H:%M:%S%.3f UTC")
                ))
                && problems[0].contains("the recovery site never got that write"),
            "{problems:?}"
        );
        assert!(judge(point - chrono::Duration::minutes(1)).is_empty());
    }

    /// A failback copies a vm back only over a primary known stopped, from copies a failover
    /// started it on: a running primary is refused outright, a replica no failover started
    /// (a drill's lease, another vm's, none) or a state or lease that cannot be read is a
    /// problem only `--force` passes.
    #[test]
    fn a_failback_copies_back_only_what_a_failover_ran_over_a_stopped_primary() {
        let live = || vec![lease(LeaseKind::Live, "db")];
        assert_eq!(
            judge_copy_back(&[back(Some(false), live())]),
            (vec![], vec![])
        );
        let (runs, problems) = judge_copy_back(&[back(Some(true), live())]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(runs.len(), 1);
        assert!(runs[0].starts_with("vm db runs on hv-main"), "{runs:?}");
        for leases in [
            vec![],
            vec![lease(LeaseKind::Drill, "db")],
            vec![lease(LeaseKind::Live, "other")],
        ] {
            let (runs, problems) = judge_copy_back(&[back(Some(false), leases)]);
            assert!(runs.is_empty());
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains("was not started by a failover"),
                "{problems:?}"
            );
        }
        let (_, problems) = judge_copy_back(&[back(None, live())]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("cannot be read (shut off)"));
        let mut unread = back(Some(false), live());
        unread.copies = Err("no helper".into());
        let (_, problems) = judge_copy_back(&[unread]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        let mut bad = back(Some(false), live());
        if let Ok(c) = &mut bad.copies {
            c[0].bad_leases = vec!["live-R2.json".into()];
        }
        assert_eq!(judge_copy_back(&[bad]).1.len(), 1);
    }

    /// A primary disk written after the failover started the vm on the recovery copy (its
    /// live lease), whose time cannot be read, or not there, is a problem; one written before
    /// or exactly the newest point a replication made of it is not.
    #[test]
    fn a_failback_never_overwrites_a_primary_disk_written_after_the_failover() {
        let live = || vec![lease(LeaseKind::Live, "db")];
        let with = |f: &dyn Fn(&mut CopyState)| {
            let mut b = back(Some(false), live());
            if let Ok(d) = &mut b.disks {
                f(&mut d[0]);
            }
            judge_copy_back(&[b]).1
        };
        assert!(with(&|_| {}).is_empty());
        let later = Utc::now() + chrono::Duration::seconds(5);
        let problems = with(&|d| d.mtime = Some(later));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("its disk /srv/db.qcow2 on hv-main was written at ")
                && problems[0].contains("after the failover started vm db on /img/db.qcow2")
                && problems[0].contains("qemu-img convert -O qcow2 /srv/db.qcow2")
                && problems[0].contains("--force"),
            "{problems:?}"
        );
        let problems = with(&|d| d.mtime = None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("cannot be read"), "{problems:?}");
        // Not there: its storage not mounted, or its disks really gone (--force).
        let problems = with(&|d| {
            d.mtime = Some(later);
            d.exists = false;
        });
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains(
                "its disk /srv/db.qcow2 is not on hv-main: its storage may not be mounted"
            ) && problems[0].contains("use --force"),
            "{problems:?}"
        );
        let point = crate::replica::Point {
            id: "p".into(),
            taken_at: later,
            source: "hv-pra:/img/db.qcow2".into(),
            size: 1,
            blake3: "00".into(),
            verified: crate::replica::Verified::Yes,
            checked_at: None,
            received_bytes: 0,
            duration_ms: 0,
            stamp: None,
            definition: None,
            read: None,
            unusable: None,
            pending: false,
            newest_file: None,
            left_out: Vec::new(),
        };
        let replica = |d: &mut CopyState| {
            d.mtime = Some(later);
            d.managed = true;
            d.points = vec![point.clone()];
        };
        assert!(with(&replica).is_empty());
        assert_eq!(
            with(&|d| {
                replica(d);
                d.changed = Some("written since".into());
            })
            .len(),
            1
        );
        let mut unread = back(Some(false), live());
        unread.disks = Err("no helper".into());
        let problems = judge_copy_back(&[unread]).1;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("cannot be read (no helper)"),
            "{problems:?}"
        );
    }

    /// A backup set a failback does not replicate back: refused (--force passes it) while a
    /// failover's `live` lease holds its recovery copy, or while that cannot be told; a copy
    /// only a drill held, or none, passes.
    #[test]
    fn a_failback_never_leaves_behind_a_backup_set_copy_a_failover_relied_on() {
        let held = |copy: Result<CopyState, String>| LeftHeld {
            set: "shares".into(),
            service: "backups".into(),
            recovery: "nas-pra".into(),
            path: "/srv/backups/shares".into(),
            copy,
        };
        let copy = |leases: Vec<Lease>| {
            Ok(CopyState {
                path: "/srv/backups/shares".into(),
                exists: true,
                managed: true,
                leases,
                ..CopyState::default()
            })
        };
        let problems = judge_left_held(&[held(copy(vec![lease(LeaseKind::Live, "shares")]))]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("backup set shares: its recovery copy nas-pra:/srv/backups/shares was relied on by a failover")
                && problems[0].contains("would be dropped the day it is released")
                && problems[0].contains("add a replicate step of shares to the failback runbook of service backups")
                && problems[0].contains("`reprise release shares` once its data is safe")
                && problems[0].contains("--force"),
            "{problems:?}"
        );
        assert!(judge_left_held(&[held(copy(vec![lease(LeaseKind::Drill, "shares")]))]).is_empty());
        assert!(judge_left_held(&[held(copy(Vec::new()))]).is_empty());
        let unread = judge_left_held(&[held(Err("connection refused".into()))]);
        assert_eq!(unread.len(), 1, "{unread:?}");
        assert!(
            unread[0].contains("cannot be read (connection refused)"),
            "{unread:?}"
        );
        let mut bad = copy(Vec::new()).unwrap();
        bad.bad_leases = vec!["x.json".into()];
        assert_eq!(judge_left_held(&[held(Ok(bad))]).len(), 1);
        // Still the point the failover relied on: the recovery site wrote nothing there.
        let mut relied = lease(LeaseKind::Live, "shares");
        relied.point = Some("P1".into());
        let mut same = copy(vec![relied]).unwrap();
        same.points = vec![
            serde_json::from_str(&format!(
                r#"{{"id":"P1","taken_at":"2026-11-28T01:00:00Z","source":"s","size":1,"blake3":"{}","verified":"yes","checked_at":null,"received_bytes":0,"duration_ms":0}}"#,
                "00".repeat(32)
            ))
            .unwrap(),
        ];
        assert!(judge_left_held(&[held(Ok(same.clone()))]).is_empty());
        // Written there since: held, and said.
        same.changed = Some("the copy changed since its newest point".into());
        assert_eq!(judge_left_held(&[held(Ok(same))]).len(), 1);
    }

    fn folder_back(leases: Vec<Lease>) -> FolderBack {
        FolderBack {
            set: "erp-dumps".into(),
            primary: "san-main".into(),
            recovery: "nas-pra".into(),
            copy: Ok(CopyState {
                path: "/srv/backups/erp".into(),
                exists: true,
                managed: true,
                leases,
                ..CopyState::default()
            }),
            folder: Ok(CopyState {
                path: "/export/backups/erp".into(),
                exists: true,
                mtime: Some(Utc::now() - chrono::Duration::hours(1)),
                ..CopyState::default()
            }),
            clock: Ok((0.0, 0.0)),
            settled: Vec::new(),
        }
    }

    /// A set's folder on the primary that is not there, or empty while its recovery copy
    /// holds files (its file system not mounted), is a problem, as a vm's disk not there:
    /// the copy back would be written under the mount point.
    #[test]
    fn a_set_copy_back_never_goes_under_an_unmounted_primary_folder() {
        let judged = |exists: bool, size: u64| {
            let mut b = folder_back(vec![lease(LeaseKind::Live, "erp-dumps")]);
            if let Ok(c) = &mut b.copy {
                c.size = 4096;
            }
            if let Ok(f) = &mut b.folder {
                f.exists = exists;
                f.size = size;
            }
            judge_folder_back(&[b])
        };
        assert!(judged(true, 1024).is_empty());
        for (exists, said) in [(false, "is not there"), (true, "is empty")] {
            let problems = judged(exists, 0);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains(&format!(
                    "its folder san-main:/export/backups/erp {said}: its file system may not be mounted"
                )) && problems[0].contains("use --force"),
                "{problems:?}"
            );
        }
    }

    /// A failback cut after it copied a backup set back (its live lease released with it)
    /// and before its step's end was journaled: at the resume, the copy still as the failback
    /// read it and the primary's folder exactly what it copied are no problem (not "relied on
    /// by no failover"); either otherwise is.
    #[test]
    fn a_set_copied_back_before_a_cut_is_not_refused_at_the_resume() {
        let resumed = |copied_back: bool, primary_is_point: bool| {
            let mut b = folder_back(Vec::new());
            if let Ok(c) = &mut b.copy {
                c.copied_back = copied_back;
            }
            if let Ok(f) = &mut b.folder
                && primary_is_point
            {
                f.managed = true;
                f.points = vec![crate::replica::Point {
                    id: "p".into(),
                    taken_at: Utc::now(),
                    source: "nas-pra:/srv/backups/erp".into(),
                    size: 0,
                    blake3: String::new(),
                    verified: crate::replica::Verified::Yes,
                    checked_at: None,
                    received_bytes: 0,
                    duration_ms: 0,
                    stamp: None,
                    definition: None,
                    read: None,
                    unusable: None,
                    pending: false,
                    newest_file: None,
                    left_out: Vec::new(),
                }];
            }
            judge_folder_back(&[b])
        };
        assert!(resumed(true, true).is_empty());
        for (copied_back, primary_is_point) in [(false, true), (true, false)] {
            let problems = resumed(copied_back, primary_is_point);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains("no live lease"), "{problems:?}");
        }
    }

    /// What a forced failback overwrites on the primary without a failover dating it (no
    /// live lease: a copy a vm was started on by hand, or a replica of the primary) is lost,
    /// unmeasured: the vm or set is counted with those whose data loss the report does not
    /// claim. One a failover's lease dates, and whose primary disk is older, is not.
    #[test]
    fn a_forced_copy_back_no_failover_dates_claims_no_data_loss() {
        let mut live = lease(LeaseKind::Live, "db");
        live.at = Utc::now() - chrono::Duration::minutes(10);
        assert!(
            overwritten_by_copy_back(&[back(Some(false), vec![live])], &[]).is_empty(),
            "a failover's copy over an older primary disk"
        );
        assert_eq!(
            overwritten_by_copy_back(&[back(Some(false), Vec::new())], &[]),
            ["db"]
        );
        let mut bad = back(Some(false), Vec::new());
        if let Ok(c) = &mut bad.copies {
            c[0].bad_leases = vec!["live-x: damaged".into()];
        }
        assert_eq!(overwritten_by_copy_back(&[bad], &[]), ["db"]);
        let mut set_lease = lease(LeaseKind::Live, "erp-dumps");
        set_lease.at = Utc::now() - chrono::Duration::minutes(10);
        assert!(overwritten_by_copy_back(&[], &[folder_back(vec![set_lease])]).is_empty());
        assert_eq!(
            overwritten_by_copy_back(&[], &[folder_back(Vec::new())]),
            ["erp-dumps"]
        );
    }

    /// The folder's file times are the primary's clock, the point's this machine's: a
    /// primary clock behind never hides a file written after the point, and one that cannot
    /// be read leaves the question open.
    #[test]
    fn a_primary_clock_behind_never_hides_a_file_its_folder_got_after_the_point() {
        let taken = Utc::now() - chrono::Duration::minutes(30);
        let judge = |skew: f64, written: chrono::Duration| {
            let mut l = lease(LeaseKind::Live, "erp-dumps");
            l.taken_at = Some(taken);
            let mut b = folder_back(vec![l]);
            b.clock = Ok((skew, 0.01));
            // Written at `taken + written` (this machine's clock), stamped by the primary's.
            let stamped = taken + written + chrono::Duration::milliseconds((skew * 1e3) as i64);
            if let Ok(f) = &mut b.folder {
                f.mtime = Some(stamped);
            }
            judge_folder_back(&[b])
        };
        let after = chrono::Duration::seconds(10);
        let problems = judge(-30.0, after);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("by its clock, 30.000s behind this machine's"),
            "{problems:?}"
        );
        // A clock ahead now may have been right when the file was written: its time as it
        // reads counts too, when it is far ahead.
        assert!(
            judge(30.0, -after).is_empty(),
            "a file of before, clock ahead"
        );
        assert_eq!(
            judge(3600.0, -after).len(),
            1,
            "a file of before, clock far ahead"
        );
        let mut l = lease(LeaseKind::Live, "erp-dumps");
        l.taken_at = Some(taken);
        let mut b = folder_back(vec![l]);
        b.clock = Err("`date` not found".into());
        let problems = judge_folder_back(&[b]);
        assert!(
            problems.len() == 1 && problems[0].contains("the clock of san-main cannot be read"),
            "{problems:?}"
        );
    }

    /// A failback replicates a backup set back only from a copy a failover relied on (its
    /// live lease), and never over a primary folder that got a file at or after the point
    /// that failover relied on was taken, or whose times cannot be read: each a problem only
    /// `--force` passes. A folder exactly the newest point a reverse replication made of it
    /// holds nothing of its own; one not there is a problem too (not mounted?).
    #[test]
    fn a_failback_never_overwrites_files_the_primary_folder_got_after_the_failover() {
        let taken = Utc::now() - chrono::Duration::minutes(30);
        let live = || {
            let mut l = lease(LeaseKind::Live, "erp-dumps");
            l.taken_at = Some(taken);
            vec![l]
        };
        assert!(judge_folder_back(&[folder_back(live())]).is_empty());
        let with = |f: &dyn Fn(&mut CopyState)| {
            let mut b = folder_back(live());
            if let Ok(d) = &mut b.folder {
                f(d);
            }
            judge_folder_back(&[b])
        };
        // A file written after the point the failover relied on was taken, even before the
        // failover itself (the copy does not hold it either).
        let problems = with(&|d| d.mtime = Some(taken + chrono::Duration::seconds(1)));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("copy-back backup set erp-dumps: its folder san-main:/export/backups/erp was last changed (a file written, added or removed) at ")
                && problems[0].contains("after the failover relied on its copy nas-pra:/srv/backups/erp")
                && problems[0].contains("cp -a /export/backups/erp /export/backups/erp.kept")
                && problems[0].contains("--force"),
            "{problems:?}"
        );
        let problems = with(&|d| d.mtime = None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("cannot be read"), "{problems:?}");
        // Not there: its file system may not be mounted (--force when it is really gone).
        let later = Some(Utc::now());
        let problems = with(&|d| {
            d.mtime = later;
            d.exists = false;
        });
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("is not there"), "{problems:?}");
        let point: crate::replica::Point = serde_json::from_str(&format!(
            r#"{{"id":"p","taken_at":"2026-11-28T01:00:00Z","source":"s","size":1,"blake3":"{}","verified":"yes","checked_at":null,"received_bytes":0,"duration_ms":0}}"#,
            "00".repeat(32)
        ))
        .unwrap();
        let replica = |d: &mut CopyState| {
            d.mtime = later;
            d.managed = true;
            d.points = vec![point.clone()];
        };
        assert!(with(&replica).is_empty());
        let written = with(&|d| {
            replica(d);
            d.changed = Some("a file was added".into());
        });
        assert_eq!(written.len(), 1, "{written:?}");
        // No failover relied on the copy: a replica older than the folder.
        for leases in [vec![], vec![lease(LeaseKind::Drill, "erp-dumps")]] {
            let problems = judge_folder_back(&[folder_back(leases)]);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains("was not relied on by a failover (no live lease)"),
                "{problems:?}"
            );
        }
        let mut unread = folder_back(live());
        unread.folder = Err("no helper".into());
        let problems = judge_folder_back(&[unread]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("cannot be read (no helper)"),
            "{problems:?}"
        );
        let mut unread = folder_back(live());
        unread.copy = Err("no helper".into());
        assert_eq!(judge_folder_back(&[unread]).len(), 1);
        let mut bad = folder_back(live());
        if let Ok(c) = &mut bad.copy {
            c.bad_leases = vec!["live-R2.json".into()];
        }
        assert_eq!(judge_folder_back(&[bad]).len(), 1);
    }
}

#[cfg(test)]
mod elsewhere_tests {
    use super::*;

    fn found(running: Option<bool>, live: Option<Result<Vec<String>, String>>) -> Elsewhere {
        Elsewhere {
            vm: "erp-db".into(),
            service: "erp-db".into(),
            here: "hv-main".into(),
            there: "hv-pra".into(),
            running: (running, "said".into()),
            live,
            changed: Vec::new(),
            unread_leases: Vec::new(),
            copies: true,
            away: None,
            settled: Vec::new(),
        }
    }

    fn judge(mode: Mode, found: &[Elsewhere]) -> (Vec<String>, Vec<String>) {
        let judged = judge_elsewhere(mode, found, false);
        assert!(judged.forced.is_empty());
        (judged.refused, judged.warned)
    }

    #[test]
    fn a_restore_never_starts_a_vm_that_runs_on_its_recovery_host_or_left_its_data_there() {
        let (refused, warned) = judge(Mode::Restore, &[found(Some(true), None)]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].contains("vm erp-db runs on hv-pra")
                && refused[0].contains("reprise failback --service erp-db"),
            "{refused:?}"
        );
        assert!(warned.is_empty());
        // Not running there (a power cut of both sites), but a failover left its newest data
        // on its recovery copies.
        let (refused, _) = judge(
            Mode::Restore,
            &[found(Some(false), Some(Ok(vec!["R7".into()])))],
        );
        assert!(
            refused.len() == 1
                && refused[0].contains("since failover run R7")
                && refused[0].contains("`reprise release erp-db`"),
            "{refused:?}"
        );
        // Nothing there: nothing to say.
        let (refused, warned) = judge(Mode::Restore, &[found(Some(false), Some(Ok(Vec::new())))]);
        assert!(refused.is_empty() && warned.is_empty());
        // The recovery site cannot be asked (it may be down too), and this machine's journals
        // show no failover of it: said, not refused.
        let (refused, warned) = judge(
            Mode::Restore,
            &[found(None, Some(Err("no route to host".into())))],
        );
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(warned[1].contains("no route to host"), "{warned:?}");
        // It answers, but its copies cannot be read (its storage not mounted after the power
        // cut): the leases beside them neither, so refused as a lease that cannot be read;
        // forced, said as forced.
        let unmounted = found(
            Some(false),
            Some(Err("its copy /srv/replicas/images/erp-db-data.qcow2 is not there (its storage not mounted?)".into())),
        );
        let (refused, _) = judge(Mode::Restore, std::slice::from_ref(&unmounted));
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].contains("its recovery copies on hv-pra cannot be read")
                && refused[0].contains("`reprise restore --force`"),
            "{refused:?}"
        );
        let forced = judge_elsewhere(Mode::Restore, &[unmounted], true);
        assert!(
            forced.refused.is_empty() && forced.forced.len() == 1,
            "{forced:?}"
        );
    }

    /// A host taken as down is asked again once its SSH port takes a connection (a recovery
    /// host back from the power cut); a port nobody listens on does not.
    #[test]
    fn a_host_taken_as_down_is_asked_again_once_its_port_answers() {
        let mut model = crate::check::example();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let host = model.inventory.hosts.get_mut("hv-pra").unwrap();
        host.address = "127.0.0.1".into();
        host.port = port;
        let plain = SshOptions {
            policy: HostKeyPolicy::Strict,
            known_hosts: PathBuf::from("/nonexistent/known_hosts"),
            known_hosts_given: false,
            identity: None,
            connect_timeout: StdDuration::from_secs(5),
            here: None,
            client: crate::ssh::SshClient::default(),
            ssh_config: None,
        };
        let endpoints = ssh_endpoints(&model, &plain);
        assert!(answers_now(&endpoints, "hv-pra"));
        drop(listener);
        assert!(!answers_now(&endpoints, "hv-pra"));
        assert!(!answers_now(&endpoints, "no-such-host"));
        // Reached through the user's ssh configuration (`HostName`, `Port`), as its
        // connections are: knocked on there, not at the inventory's address.
        let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let host = model.inventory.hosts.get_mut("hv-pra").unwrap();
        host.address = "hv-pra.example".into();
        host.port_set = false;
        let config = crate::ssh::config::UserSshConfig::parse(
            Path::new("/home/k/.ssh/config"),
            &format!("Host hv-pra.example\n  HostName 127.0.0.2\n  Port {port}\n"),
            None,
        )
        .unwrap();
        let configured = SshOptions {
            ssh_config: Some(std::sync::Arc::new(config)),
            ..plain
        };
        assert!(answers_now(&ssh_endpoints(&model, &configured), "hv-pra"));
    }

    /// A recovery copy whose leases cannot be read (a damaged lease file, a leases folder
    /// that cannot be listed) may hold a failover's lease: a restore refuses to start the vm
    /// from its disks of before, naming the copy and why, unless forced (then said as forced).
    #[test]
    fn a_restore_refuses_a_vm_whose_recovery_copies_leases_cannot_be_read() {
        let mut damaged = found(Some(false), Some(Ok(Vec::new())));
        damaged.unread_leases =
            vec!["/srv/replicas/images/erp-db-data.qcow2 (live-R7.json: damaged)".into()];
        let judged = judge_elsewhere(Mode::Restore, std::slice::from_ref(&damaged), false);
        assert_eq!(judged.refused.len(), 1, "{judged:?}");
        let r = &judged.refused[0];
        assert!(
            r.contains("erp-db-data.qcow2 (live-R7.json: damaged)")
                && r.contains("cannot be read")
                && r.contains("reprise failback --service erp-db")
                && r.contains("`reprise restore --force`"),
            "{r}"
        );
        let judged = judge_elsewhere(Mode::Restore, std::slice::from_ref(&damaged), true);
        assert!(judged.refused.is_empty(), "{judged:?}");
        assert!(
            judged.forced.len() == 1 && judged.forced[0].contains("live-R7.json: damaged"),
            "{judged:?}"
        );
        // A lease read says it all (refused once, for it); a failover is not judged so.
        let mut leased = damaged.clone();
        leased.live = Some(Ok(vec!["R7".into()]));
        let judged = judge_elsewhere(Mode::Restore, &[leased], false);
        assert_eq!(judged.refused.len(), 1, "{judged:?}");
        assert!(
            judged.refused[0].contains("since failover run R7"),
            "{judged:?}"
        );
        assert_eq!(
            judge_elsewhere(Mode::Failover, &[damaged], false),
            Judged::default()
        );
    }

    /// The recovery host cannot be asked, but this machine's journals show a failover started
    /// the vm there and nothing brought it back: refused, unless forced (then journaled as
    /// forced). The recovery host's own answer wins where it can give one: a lease (refused
    /// anyway), or none (released there). A vm reprise keeps no copies of has no lease to
    /// ask: the journals are all there is.
    #[test]
    fn a_restore_refuses_a_vm_this_machine_s_journals_show_failed_over_when_its_recovery_host_cannot_say()
     {
        let away = "failover run R7 started it on hv-pra at 2026-12-04 03:00:03 UTC (step erp/start), and no failback or restore has started it on its primary since, as this machine's journals show";
        let mut down = found(None, Some(Err("no route to host".into())));
        down.away = Some(away.into());
        let judged = judge_elsewhere(Mode::Restore, std::slice::from_ref(&down), false);
        assert_eq!(judged.refused.len(), 1, "{judged:?}");
        let r = &judged.refused[0];
        assert!(
            r.contains("failover run R7")
                && r.contains("no route to host")
                && r.contains("reprise failback --service erp-db")
                && r.contains("`reprise restore --force`"),
            "{r}"
        );
        // Said once: not also as a question that could not be asked.
        assert!(
            judged
                .warned
                .iter()
                .all(|w| !w.contains("could not be read")),
            "{judged:?}"
        );
        let judged = judge_elsewhere(Mode::Restore, std::slice::from_ref(&down), true);
        assert!(judged.refused.is_empty(), "{judged:?}");
        assert!(
            judged.forced.len() == 1 && judged.forced[0].contains("as forced (--force)"),
            "{judged:?}"
        );
        // The recovery host answers: no lease, not running: released there.
        let mut answered = found(Some(false), Some(Ok(Vec::new())));
        answered.away = Some(away.into());
        assert_eq!(
            judge_elsewhere(Mode::Restore, std::slice::from_ref(&answered), false),
            Judged::default()
        );
        // No copies of reprise's: nothing there to hold a lease.
        answered.copies = false;
        let judged = judge_elsewhere(Mode::Restore, &[answered], false);
        assert!(
            judged.refused.len() == 1
                && judged.refused[0].contains("reprise keeps no copies of it on hv-pra"),
            "{judged:?}"
        );
        // A failover does not ask the journals.
        let mut f = down.clone();
        (f.here, f.there) = ("hv-pra".into(), "hv-main".into());
        assert!(
            judge_elsewhere(Mode::Failover, &[f], false)
                .refused
                .is_empty()
        );
    }

    /// A recovery copy written since its newest point with no failover's lease (a vm started
    /// on it by hand while the primary site was down): its newest data may be there, and a
    /// restore is refused, saying which copy and what to do; `--force` passes it, journaled.
    #[test]
    fn a_restore_never_starts_a_vm_whose_recovery_copy_was_written_outside_reprise() {
        let mut f = found(Some(false), Some(Ok(Vec::new())));
        f.changed = vec!["/img/erp-db.qcow2 (the copy changed since its newest point P1)".into()];
        let judged = judge_elsewhere(Mode::Restore, std::slice::from_ref(&f), false);
        assert_eq!(judged.refused.len(), 1, "{judged:?}");
        let r = &judged.refused[0];
        assert!(
            r.contains("/img/erp-db.qcow2 (the copy changed since its newest point P1)")
                && r.contains("reprise failback --service erp-db --force")
                && r.contains("`reprise restore --force`"),
            "{r}"
        );
        let judged = judge_elsewhere(Mode::Restore, std::slice::from_ref(&f), true);
        assert!(judged.refused.is_empty(), "{judged:?}");
        assert!(
            judged.forced.len() == 1 && judged.forced[0].contains("as forced (--force)"),
            "{judged:?}"
        );
        // With a failover's lease, said once, as the failover's.
        f.live = Some(Ok(vec!["R7".into()]));
        let judged = judge_elsewhere(Mode::Restore, std::slice::from_ref(&f), false);
        assert!(
            judged.refused.len() == 1 && judged.refused[0].contains("since failover run R7"),
            "{judged:?}"
        );
        // A failover does not read the recovery copies.
        f.live = None;
        assert_eq!(
            judge_elsewhere(Mode::Failover, &[f], false),
            Judged::default()
        );
    }

    /// Before each copy back: a vm running on the primary is never copied over, forced or
    /// not; one whose state cannot be told is not either, unless the run was forced.
    #[test]
    fn a_copy_back_never_overwrites_a_primary_vm_that_runs_or_may_run() {
        let judge = |running: Option<bool>, force: bool| {
            judge_primary_before_copy_back(
                "erp-db",
                "hv-main",
                (running, "paused".to_string()),
                force,
            )
        };
        for force in [false, true] {
            let (refused, forced) = judge(Some(true), force);
            assert!(
                refused.len() == 1 && refused[0].contains("vm erp-db runs on hv-main"),
                "{refused:?}"
            );
            assert!(forced.is_empty());
            assert_eq!(judge(Some(false), force), (Vec::new(), Vec::new()));
        }
        let (refused, forced) = judge(None, false);
        assert!(
            refused.len() == 1
                && refused[0].contains("cannot be told (paused)")
                && refused[0].contains("--force"),
            "{refused:?}"
        );
        assert!(forced.is_empty());
        let (refused, forced) = judge(None, true);
        assert!(refused.is_empty());
        assert!(
            forced.len() == 1 && forced[0].contains("as forced"),
            "{forced:?}"
        );
    }

    /// A planned failover or a failback never starts a vm on one site while its other site
    /// runs it, forced or not; one whose state there cannot be told starts only when forced,
    /// said as forced.
    #[test]
    fn a_start_never_runs_a_vm_the_side_it_leaves_still_runs() {
        let judge = |running: Option<bool>, force: bool| {
            judge_other_side_before_start(
                "erp-db",
                "hv-main",
                (running, "paused".to_string()),
                force,
            )
        };
        for force in [false, true] {
            let (refused, forced) = judge(Some(true), force);
            assert!(
                refused.len() == 1
                    && refused[0].contains("vm erp-db runs on hv-main, the side this run leaves"),
                "{refused:?}"
            );
            assert!(forced.is_empty());
            assert_eq!(judge(Some(false), force), (Vec::new(), Vec::new()));
        }
        let (refused, forced) = judge(None, false);
        assert!(
            refused.len() == 1
                && refused[0].contains("cannot be told (paused)")
                && refused[0].contains("--force"),
            "{refused:?}"
        );
        assert!(forced.is_empty());
        let (refused, forced) = judge(None, true);
        assert!(refused.is_empty());
        assert!(
            forced.len() == 1 && forced[0].contains("as forced"),
            "{forced:?}"
        );
    }

    #[test]
    fn an_emergency_failover_says_loudly_that_its_primary_still_runs_the_vm() {
        let mut f = found(Some(true), None);
        (f.here, f.there) = ("hv-pra".into(), "hv-main".into());
        let (refused, warned) = judge(Mode::Failover, &[f.clone()]);
        // The report measures no data loss for it (journaled with the warning).
        assert_eq!(
            judge_elsewhere(Mode::Failover, &[f.clone()], false).diverged,
            ["erp-db"]
        );
        // A primary that cannot be asked is the emergency itself: not refused, but said, and
        // journaled for the report, which measures its data loss only to an incident time.
        f.running = (None, "connection refused".into());
        let unasked = judge_elsewhere(Mode::Failover, &[f.clone()], false);
        assert_eq!(unasked.unasked, ["erp-db"]);
        assert!(unasked.diverged.is_empty() && unasked.refused.is_empty());
        assert!(
            unasked.warned.len() == 1
                && unasked.warned[0].contains("whether vm erp-db still runs on hv-main could not be asked (connection refused)")
                && unasked.warned[0].contains("--incident-at"),
            "{:?}",
            unasked.warned
        );
        assert!(refused.is_empty(), "{refused:?}");
        assert!(
            warned.len() == 1
                && warned[0].contains("vm erp-db still runs on hv-main")
                && warned[0].contains("two copies of its data that diverge"),
            "{warned:?}"
        );
    }
}

#[cfg(test)]
mod plan_vms_tests {
    use super::*;

    /// The directory's restore starts dc2 by its own step (`vm = "dc2"`), not as the
    /// service's vm: it is asked about too, on the site it runs on.
    #[test]
    fn every_vm_a_plan_starts_is_asked_about_not_only_each_service_s_own() {
        let sources = crate::sources::Sources::read(
            std::path::Path::new("inventory"),
            std::path::Path::new("runbooks"),
        )
        .unwrap();
        let model = crate::plan::validate::load(sources)
            .map(|(m, _)| m)
            .unwrap();
        let plan = plan::build(&model, &plan::PlanOptions::new(Mode::Restore)).unwrap();
        let vms: Vec<&str> = plan_vms(&model, &plan)
            .iter()
            .map(|(_, v)| v.id.as_str())
            .collect();
        assert!(vms.contains(&"dc1") && vms.contains(&"dc2"), "{vms:?}");
        let started: Vec<&str> = plan
            .steps
            .iter()
            .filter(|s| s.kind == "vm" && s.action.as_deref() == Some("start"))
            .filter_map(|s| s.vm.as_deref())
            .collect();
        assert!(started.contains(&"dc2"), "{started:?}");
    }
}

#[cfg(test)]
mod out_of_reach_tests {
    use super::*;

    /// A time asked of a failover reaches no vm a step starts on its recovery host from no
    /// replica point, whether it is its service's vm or another the step names: each is
    /// said, and the failover refused.
    #[test]
    fn a_vm_a_step_starts_from_no_point_is_said_whoever_s_vm_it_is() {
        let model = crate::check::example();
        let mut plan = plan::build(&model, &plan::PlanOptions::new(Mode::Failover)).unwrap();
        let choice = runner::PointChoice {
            before: Some(Utc::now()),
            as_replicated: vec!["*".into()],
            ..Default::default()
        };
        let start = plan
            .steps
            .iter()
            .find(|s| {
                s.replica
                    .as_ref()
                    .is_some_and(|r| r.role == plan::ReplicaRole::Start && r.vm == "erp-db")
            })
            .cloned()
            .unwrap();
        let service = start.service.clone();
        let asked = runner::PointChoice {
            as_replicated: Vec::new(),
            ..choice.clone()
        };
        let before = points_out_of_reach(&model, &plan, &asked);
        assert!(
            !before
                .iter()
                .any(|p| p.starts_with(&format!("service {service}:"))),
            "{before:?}"
        );
        // A step of the same service that starts dc1 (on erp-db's recovery host, as dc1's)
        // with no point.
        let mut other = start;
        other.id = format!("{service}/start-dc1");
        other.vm = Some("dc1".into());
        other.replica = None;
        assert_eq!(
            other.host.as_deref(),
            Some(model.inventory.vms["dc1"].recovery.value.as_str())
        );
        plan.steps.push(other);
        let said = points_out_of_reach(&model, &plan, &asked);
        assert!(
            said.iter().any(|p| p.contains(&format!(
                "service {service}: its step {service}/start-dc1 starts vm dc1 from no replica point"
            ))),
            "{said:?}"
        );
        // Let start as replicated, it is not.
        assert!(
            !points_out_of_reach(&model, &plan, &choice)
                .iter()
                .any(|p| p.contains("start-dc1")),
        );
    }

    /// A point named for every vm (`--point POINT`, going back in time after ransomware) is
    /// none of a backup set's: a set a service of the failover relies on is said, unless it
    /// has a point of its own, a time bounds every point, or its newest is taken knowingly.
    #[test]
    fn a_point_named_for_every_vm_never_leaves_a_backup_set_at_its_newest_unsaid() {
        let model = crate::check::example();
        let plan = plan::build(&model, &plan::PlanOptions::new(Mode::Failover)).unwrap();
        let (service, set) = plan
            .steps
            .iter()
            .find_map(|s| match &s.action_spec {
                plan::Action::BackupCopy(b) if b.failover => {
                    Some((s.service.clone(), b.set.clone()))
                }
                _ => None,
            })
            .expect("the example's failover relies on a backup set");
        let all = runner::PointChoice {
            all: Some("20261201T090000Z".into()),
            ..Default::default()
        };
        let said = |choice: &runner::PointChoice| {
            points_out_of_reach(&model, &plan, choice)
                .into_iter()
                .any(|p| {
                    p.starts_with(&format!(
                        "service {service}: it relies on backup set {set},"
                    )) && p.contains(&format!("--point {set}=POINT"))
                })
        };
        assert!(said(&all));
        let mut own = all.clone();
        own.by_vm.insert(set.clone(), "20261201T080000Z".into());
        assert!(!said(&own));
        let bounded = runner::PointChoice {
            before: Some(Utc::now()),
            ..all.clone()
        };
        assert!(!said(&bounded));
        let knowingly = runner::PointChoice {
            as_replicated: vec![service.clone()],
            ..all.clone()
        };
        assert!(!said(&knowingly));
    }
}
