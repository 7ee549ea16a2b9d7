//! The runner: executes a [`Plan`] as fast as its dependencies allow, within a global and a
//! per-host concurrency limit, and emits an [`Event`] for everything that happens.
//!
//! It owns the tokio runtime ([`run`] is synchronous for its callers); blocking SSH calls go to
//! `spawn_blocking`. It never prints: the journal and the terminal view consume its events.
//! Cancellation (Ctrl-C, tests) is passed in as a watch channel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;
// Tokio's clock, so that paused time in tests drives deadlines and polling alike.
use tokio::time::Instant;

use crate::event::{Event, RunStatus, StepStatus};
use crate::journal::Confirmation;
use crate::plan::{Action, Plan, PlannedStep, Replicated};
use crate::runbook::{Mode, Phase};
use crate::shutdown::Shutdown;
use crate::ssh::{ExecOutput, Transport};
use crate::template::Command;

pub use crate::ssh::OUTPUT_LIMIT;

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Steps running at once, in all.
    pub parallel: usize,
    /// Steps running at once on one host.
    pub per_host: usize,
    /// Undo completed steps when a planned failover or failback fails.
    pub rollback: bool,
    /// How often manual steps look for a confirmation.
    pub confirmation_poll: StdDuration,
    /// The replica points a failover starts the vms from.
    pub points: PointChoice,
    /// Where the last definition used per host and vm name is kept (the state folder's
    /// `definitions/`), for the dry run's diff.
    pub definitions_dir: Option<std::path::PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            parallel: 8,
            per_host: 4,
            rollback: true,
            confirmation_poll: StdDuration::from_millis(250),
            points: PointChoice::default(),
            definitions_dir: None,
        }
    }
}

/// Where manual steps find their confirmations (the run folder, or a terminal prompt feeding it).
pub trait Confirmations: Send + Sync {
    fn confirmation(&self, step: &str) -> Option<Confirmation>;
}

impl Confirmations for crate::journal::RunDir {
    fn confirmation(&self, step: &str) -> Option<Confirmation> {
        crate::journal::RunDir::confirmation(self, step)
    }
}

/// Where events go. Called from the runner's task, in order.
pub trait Sink: Send {
    /// Takes an event. An error means it could not be recorded (the journal failed): the run
    /// then stops (no step starts any more; running ones finish).
    fn emit(&mut self, event: &Event) -> Result<(), Unrecorded>;
}

/// Why an event could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unrecorded(pub String);

/// What a resumed run knows of a step from the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prior {
    /// Finished successfully: never run again.
    Done,
    /// Was running when the orchestrator died: verify, re-run if idempotent, or ask.
    Interrupted,
    /// A main step of a drill whose cleanup already ran: never run (its copies are gone).
    DrillOver,
}

/// Resolves secrets at execution time.
pub type SecretResolver = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub fn env_secrets() -> SecretResolver {
    Arc::new(|name| std::env::var(name).ok())
}

/// Everything a run needs.
pub struct RunContext {
    pub plan: Arc<Plan>,
    pub transport: Arc<dyn Transport>,
    pub confirmations: Arc<dyn Confirmations>,
    pub secrets: SecretResolver,
    pub options: RunOptions,
    pub prior: HashMap<String, Prior>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Running,
    Finished(StepStatus),
}

/// Runs the plan on a fresh tokio runtime, until done or `shutdown` is asked.
pub fn run(ctx: RunContext, sink: &mut dyn Sink, shutdown: Shutdown) -> RunStatus {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let status = runtime.block_on(execute(ctx, sink, shutdown));
    // A transport call the runner stopped waiting for (a host that froze) is left to end
    // on its own timeouts: the run does not wait for it.
    runtime.shutdown_timeout(StdDuration::from_millis(100));
    status
}

/// How long after a command's deadline the runner stops waiting for the transport, in case
/// it does not keep that deadline itself: the remote side's KILL comes 5 s after its TERM.
const LATE: StdDuration = StdDuration::from_secs(10);

/// The result of one step's task.
struct Outcome {
    index: usize,
    status: StepStatus,
    attempt: u32,
    message: Option<String>,
    elapsed: StdDuration,
}

/// Messages from step tasks to the loop: events to emit.
enum Msg {
    Event(Event),
    /// An event that must be recorded before the step goes on (its start, before its
    /// command is sent); the answer says whether it was.
    Recorded(Event, tokio::sync::oneshot::Sender<bool>),
}

/// The sink of a run, and whether it still records.
struct Out<'a> {
    sink: &'a mut dyn Sink,
    /// Why the journal stopped recording, once it did.
    failed: Option<String>,
    /// Whether each vm a step started was running before (`VmStateBefore`), by step.
    running_before: HashMap<String, Option<bool>>,
}

impl Out<'_> {
    /// Emits an event; `false` when it could not be recorded.
    fn emit(&mut self, event: &Event) -> bool {
        if let Event::VmStateBefore { step, running, .. } = event {
            self.running_before.insert(step.clone(), *running);
        }
        match self.sink.emit(event) {
            Ok(()) => true,
            Err(Unrecorded(why)) => {
                self.failed.get_or_insert(why);
                false
            }
        }
    }
}

/// Runs the plan on the current runtime.
pub async fn execute(ctx: RunContext, sink: &mut dyn Sink, shutdown: Shutdown) -> RunStatus {
    let plan = ctx.plan.clone();
    let n = plan.steps.len();
    let index: HashMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let after: Vec<Vec<usize>> = plan
        .steps
        .iter()
        .map(|s| s.after.iter().map(|a| index[a.as_str()]).collect())
        .collect();
    let mut out = Out {
        sink,
        failed: None,
        running_before: HashMap::new(),
    };
    let (stale, rerun) = stale_done_steps(&plan, &after, &ctx.prior);
    let mut state = vec![State::Pending; n];
    for (i, s) in plan.steps.iter().enumerate() {
        match ctx.prior.get(&s.id) {
            Some(Prior::Done) if stale.contains(&i) => {}
            Some(Prior::Done) => state[i] = State::Finished(StepStatus::Done),
            Some(Prior::DrillOver) => {
                state[i] = State::Finished(StepStatus::Cancelled);
                out.emit(&finished_event(
                    s,
                    0,
                    StepStatus::Cancelled,
                    0,
                    Some(
                        "not run: the drill's cleanup already ran and removed its copies; start a new drill to rehearse it"
                            .into(),
                    ),
                ));
            }
            Some(Prior::Interrupted) | None => {}
        }
    }
    let keep_going = matches!(plan.mode, Mode::Restore | Mode::Drill)
        || (plan.mode == Mode::Failover && plan.emergency);
    let ctx = Arc::new(ctx);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
    // What the steps watch: a stop asked from outside, or a journal that stopped recording.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut asked = shutdown.receiver();
    let mut tasks: JoinSet<(Outcome, Option<Defined>)> = JoinSet::new();
    let mut task_step: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut per_host: HashMap<String, usize> = HashMap::new();
    let mut running = 0usize;
    let mut halted = false; // no new main steps
    let mut interrupted = false;
    let mut planned_failure = false;
    let mut done_order: Vec<usize> = Vec::new();
    // What each vm step that succeeded defined before its command (undone with it).
    let mut defined: HashMap<usize, Defined> = HashMap::new();

    loop {
        if out.failed.is_some() && !halted {
            // Nothing may run that the journal does not record: not even a cleanup step.
            halted = true;
            let _ = stop_tx.send(true);
        }
        // Settle steps that can no longer run, then start what is ready.
        let mut changed = true;
        while changed {
            changed = false;
            for i in 0..n {
                if state[i] != State::Pending {
                    continue;
                }
                let step = &plan.steps[i];
                // Cleanup steps run whatever happened before them, unless the journal failed.
                if step.phase == Phase::Cleanup && out.failed.is_none() {
                    continue;
                }
                if let Some(&bad) = after[i]
                    .iter()
                    .find(|&&j| matches!(state[j], State::Finished(s) if !s.succeeded()))
                    .filter(|_| step.phase == Phase::Main)
                {
                    let (status, msg) = if state[bad] == State::Finished(StepStatus::Cancelled) {
                        (
                            StepStatus::Cancelled,
                            format!("the run stopped before {}", plan.steps[bad].id),
                        )
                    } else {
                        (
                            StepStatus::Blocked,
                            format!("blocked: {} did not succeed", plan.steps[bad].id),
                        )
                    };
                    state[i] = State::Finished(status);
                    out.emit(&finished_event(step, 0, status, 0, Some(msg)));
                    changed = true;
                } else if halted {
                    let why = if out.failed.is_some() {
                        "not started: the journal cannot record it"
                    } else {
                        "the run was stopped before this step"
                    };
                    state[i] = State::Finished(StepStatus::Cancelled);
                    out.emit(&finished_event(
                        step,
                        0,
                        StepStatus::Cancelled,
                        0,
                        Some(why.into()),
                    ));
                    changed = true;
                }
            }
        }
        // The cleanup comes after the whole main phase: when a stop cancels the steps it waits
        // for, it still waits for the main steps that run (a copy that is being started).
        let main_running =
            (0..n).any(|j| state[j] == State::Running && plan.steps[j].phase == Phase::Main);
        let mut settled_again = false;
        for i in 0..n {
            if state[i] != State::Pending || running >= ctx.options.parallel.max(1) {
                continue;
            }
            let step = &plan.steps[i];
            let ready = match step.phase {
                Phase::Main => after[i]
                    .iter()
                    .all(|&j| state[j] == State::Finished(StepStatus::Done)),
                Phase::Cleanup => {
                    !main_running
                        && after[i]
                            .iter()
                            .all(|&j| matches!(state[j], State::Finished(_)))
                }
            };
            if !ready {
                continue;
            }
            // Done before, and not to be run again: it counts as done once what it came
            // after is done again.
            if stale.contains(&i) && !rerun.contains(&i) {
                state[i] = State::Finished(StepStatus::Done);
                settled_again = true;
                continue;
            }
            if let Some(h) = &step.host
                && per_host.get(h).copied().unwrap_or(0) >= ctx.options.per_host.max(1)
            {
                continue;
            }
            state[i] = State::Running;
            running += 1;
            if let Some(h) = &step.host {
                *per_host.entry(h.clone()).or_default() += 1;
            }
            let ctx2 = ctx.clone();
            let tx2 = tx.clone();
            let sd = stop_rx.clone();
            let prior = ctx
                .prior
                .get(&step.id)
                .copied()
                .filter(|_| !rerun.contains(&i));
            let task = tasks.spawn(async move { run_step(ctx2, i, prior, tx2, sd).await });
            task_step.insert(task.id(), i);
        }
        if running == 0 && settled_again {
            continue;
        }
        if running == 0 {
            break;
        }
        tokio::select! {
            Some(msg) = rx.recv() => deliver(&mut out, msg),
            Some(joined) = tasks.join_next_with_id() => {
                // Events sent before the outcome come first.
                while let Ok(msg) = rx.try_recv() {
                    deliver(&mut out, msg);
                }
                let (result, made) = match joined {
                    Ok((id, result)) => {
                        task_step.remove(&id);
                        result
                    }
                    // A fault of reprise inside one step fails that step, not the run.
                    Err(e) => {
                        let index = task_step.remove(&e.id()).expect("every task is a step's");
                        let failed = Outcome {
                            index,
                            status: StepStatus::Failed,
                            attempt: 1,
                            message: Some(format!("reprise failed inside this step: {}", fault(e))),
                            elapsed: StdDuration::ZERO,
                        };
                        (failed, None)
                    }
                };
                if let Some(d) = made {
                    defined.insert(result.index, d);
                }
                let step = &plan.steps[result.index];
                running -= 1;
                if let Some(h) = &step.host {
                    *per_host.get_mut(h).expect("counted") -= 1;
                }
                state[result.index] = State::Finished(result.status);
                out.emit(&finished_event(step, result.attempt, result.status, result.elapsed.as_millis() as u64, result.message));
                if result.status.succeeded() {
                    done_order.push(result.index);
                } else if step.phase == Phase::Main && !keep_going && result.status != StepStatus::Cancelled {
                    halted = true;
                    planned_failure = true;
                }
            },
            changed = asked.changed(), if !interrupted => {
                if changed.is_err() || *asked.borrow() {
                    interrupted = true;
                    halted = true;
                    let _ = stop_tx.send(true);
                    out.emit(&Event::StopRequested {
                        at: Utc::now(),
                        reason: shutdown.reason().unwrap_or("a stop was asked").to_string(),
                    });
                }
            },
        }
    }

    // Undoing is running commands too: not once the journal stopped recording.
    if planned_failure && ctx.options.rollback && out.failed.is_none() {
        for &i in done_order.iter().rev() {
            let step = &plan.steps[i];
            let Action::Exec {
                undo: Some(undo), ..
            } = &step.action_spec
            else {
                continue;
            };
            // A start is undone only for a vm that was not running before it.
            let before = step
                .state_before
                .as_ref()
                .map(|_| out.running_before.get(&step.id).copied().flatten());
            let (ok, message) = match before {
                Some(Some(true)) => (
                    true,
                    Some("left running: it was already running before the step".to_string()),
                ),
                Some(None) => (
                    false,
                    Some(
                        "not undone: the vm's state before the step could not be told, so it may have been running already; stop it by hand if it was not"
                            .to_string(),
                    ),
                ),
                _ => match exec(&ctx, step, undo, step.timeout_s.map(StdDuration::from_secs)).await {
                    Ok(out) if out.exit_code == 0 => (true, None),
                    Ok(out) => (
                        false,
                        Some(format!(
                            "undo exited with {}: {}",
                            out.exit_code,
                            out.stderr.trim()
                        )),
                    ),
                    Err(e) => (false, Some(e.message)),
                },
            };
            // What the step defined goes with it, once the vm it started is stopped (for a vm
            // that was running before, only a definition it replaced is put back).
            let (ok, message) = match defined.remove(&i) {
                None => (ok, message),
                Some(d) => {
                    let stopped = ok && before == Some(Some(false));
                    let was_running = before == Some(Some(true));
                    let (put_back, note) = if stopped || (was_running && d.previous.is_some()) {
                        let transport = ctx.transport.clone();
                        tokio::task::spawn_blocking(move || undo_define(transport.as_ref(), d))
                            .await
                            .unwrap_or_else(|e| {
                                (false, format!("what was defined could not be undone: {e}"))
                            })
                    } else {
                        (
                            true,
                            format!(
                                "{} stays defined on {} from point {}, as this step defined it",
                                d.name, d.host, d.point
                            ),
                        )
                    };
                    let message = match message {
                        Some(m) => format!("{m}; {note}"),
                        None => note,
                    };
                    (ok && put_back, Some(message))
                }
            };
            out.emit(&Event::UndoFinished {
                at: Utc::now(),
                step: step.id.clone(),
                ok,
                message,
            });
            if ok {
                state[i] = State::Finished(StepStatus::RolledBack);
            }
        }
    }

    let status = if interrupted || out.failed.is_some() {
        RunStatus::Interrupted
    } else if planned_failure {
        RunStatus::Failed
    } else if state
        .iter()
        .all(|s| *s == State::Finished(StepStatus::Done))
    {
        RunStatus::Succeeded
    } else if state.contains(&State::Finished(StepStatus::Done)) {
        RunStatus::Partial
    } else {
        RunStatus::Failed
    };
    out.emit(&Event::RunFinished {
        at: Utc::now(),
        status,
    });
    status
}

/// Hands a step's message to the sink; a step waiting for its event to be recorded is told
/// whether it was.
fn deliver(out: &mut Out<'_>, msg: Msg) {
    match msg {
        Msg::Event(e) => {
            out.emit(&e);
        }
        Msg::Recorded(e, recorded) => {
            // Once the journal failed, nothing more starts.
            let ok = out.failed.is_none() && out.emit(&e);
            let _ = recorded.send(ok);
        }
    }
}

/// Whether a driver's `status` said the vm runs: a line `running` (libvirt, the lab) or
/// `status: running` (Proxmox); `None` when it failed without saying anything.
fn said_running(out: &ExecOutput) -> Option<bool> {
    let running = out
        .stdout
        .lines()
        .map(str::trim)
        .any(|l| l == "running" || l == "status: running");
    if running {
        Some(true)
    } else if out.exit_code == 0 || !out.stdout.trim().is_empty() {
        Some(false)
    } else {
        None
    }
}

/// What went wrong in a step's task that ended without an outcome.
fn fault(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

fn finished_event(
    step: &PlannedStep,
    attempt: u32,
    status: StepStatus,
    ms: u64,
    message: Option<String>,
) -> Event {
    Event::StepFinished {
        at: Utc::now(),
        step: step.id.clone(),
        attempt,
        status,
        duration_ms: ms,
        message,
    }
}

/// Records that a step starts, and waits until the journal has it on disk: nothing of the
/// step runs before (a crash then leaves a journal that says it may have run). `false` when
/// it could not be recorded: the step must not start.
async fn record_start(
    tx: &tokio::sync::mpsc::UnboundedSender<Msg>,
    step: &PlannedStep,
    attempt: u32,
) -> bool {
    let (recorded, answer) = tokio::sync::oneshot::channel();
    let event = Event::StepStarted {
        at: Utc::now(),
        step: step.id.clone(),
        attempt,
        host: step.host.clone(),
    };
    if tx.send(Msg::Recorded(event, recorded)).is_err() {
        return false;
    }
    answer.await.unwrap_or(false)
}

/// The message of a step that did not start because its start could not be recorded.
const NOT_RECORDED: &str = "not started: the journal cannot record it";

/// Runs a step: its outcome, and what it defined before its command when it succeeded (put
/// back if the run rolls it back). A step that fails puts back what it defined itself: it
/// leaves the host as it found it.
async fn run_step(
    ctx: Arc<RunContext>,
    index: usize,
    prior: Option<Prior>,
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
    shutdown: watch::Receiver<bool>,
) -> (Outcome, Option<Defined>) {
    let mut defined = None;
    let mut out = run_step_inner(ctx.clone(), index, prior, tx, shutdown, &mut defined).await;
    let mut made = None;
    if let Some(d) = defined {
        if out.status == StepStatus::Done {
            made = Some(d);
        } else {
            let note = if out.status == StepStatus::Failed {
                let transport = ctx.transport.clone();
                tokio::task::spawn_blocking(move || undo_define(transport.as_ref(), d).1)
                    .await
                    .unwrap_or_else(|e| format!("what was defined could not be undone: {e}"))
            } else {
                // Timed out or stopped: the start may still take effect; nothing is removed
                // under a vm that may be running.
                format!(
                    "{} stays defined on {} from point {} (the start may still take effect)",
                    d.name, d.host, d.point
                )
            };
            out.message = Some(match out.message.take() {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
        }
    }
    (after_replica(&ctx, &ctx.plan.steps[index], out).await, made)
}

/// What a vm step defined before its command, undone with the step.
struct Defined {
    host: String,
    name: String,
    point: String,
    /// What was defined there under that name before, as the driver printed it; `None`:
    /// nothing was.
    previous: Option<Vec<u8>>,
    /// The driver's `define` (puts `previous` back) and `undefine` (removes the new one).
    define: String,
    undefine: Option<String>,
}

/// Puts back what was defined before a start that failed or is undone: the previous
/// definition, or nothing. Whether it did, and exactly what it did or what it left.
fn undo_define(transport: &dyn crate::ssh::Transport, d: Defined) -> (bool, String) {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let (host, name, point) = (&d.host, &d.name, &d.point);
    match (&d.previous, &d.undefine) {
        (Some(previous), _) => {
            let text = String::from_utf8_lossy(previous);
            match crate::replica::definitions::define(&helpers, host, &d.define, &text) {
                Ok(_) => (
                    true,
                    format!("the definition {name} had on {host} before this step was put back"),
                ),
                Err(e) => (
                    false,
                    format!(
                        "{name} is left defined on {host} from point {point}, not as it was before this step: putting its previous definition back failed ({e})"
                    ),
                ),
            }
        }
        (None, Some(undefine)) => match helpers.run_command(
            host,
            undefine,
            &[],
            64 << 10,
            std::time::Duration::from_secs(120),
        ) {
            Ok(out) if out.exit_code == 0 => (
                true,
                format!("{name}, defined on {host} for this step, was undefined again"),
            ),
            Ok(out) => (
                false,
                format!(
                    "{name} is left defined on {host} from point {point} (it was not before): `undefine` exited with {}: {}",
                    out.exit_code,
                    out.stderr.trim()
                ),
            ),
            Err(e) => (
                false,
                format!(
                    "{name} is left defined on {host} from point {point} (it was not before): `undefine` could not run: {e}"
                ),
            ),
        },
        (None, None) => (
            false,
            format!(
                "{name} is left defined on {host} from point {point} (it was not before; its driver has no `undefine` action): remove it by hand"
            ),
        ),
    }
}

async fn run_step_inner(
    ctx: Arc<RunContext>,
    index: usize,
    prior: Option<Prior>,
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
    shutdown: watch::Receiver<bool>,
    defined: &mut Option<Defined>,
) -> Outcome {
    let step = &ctx.plan.steps[index];
    let begin = Instant::now();
    let outcome = |status, attempt, message| Outcome {
        index,
        status,
        attempt,
        message,
        elapsed: begin.elapsed(),
    };
    // A step that was running when the orchestrator died.
    if prior == Some(Prior::Interrupted) {
        if let Action::Exec {
            verify: Some(verify),
            ..
        } = &step.action_spec
        {
            if !record_start(&tx, step, 0).await {
                return outcome(StepStatus::Cancelled, 0, Some(NOT_RECORDED.into()));
            }
            if let Ok(out) = exec(&ctx, step, verify, Some(StdDuration::from_secs(60))).await
                && out.exit_code == 0
            {
                return outcome(
                    StepStatus::Done,
                    0,
                    Some("verified after the interruption: not run again".into()),
                );
            }
        }
        let idempotent = step.idempotent || !matches!(step.action_spec, Action::Exec { .. });
        if !idempotent {
            let instructions = format!(
                "Step {} was running on {} when reprise stopped, and cannot safely run twice. \
                 Check whether it took effect ({}), finish it by hand if needed, then confirm.",
                step.id,
                step.host.as_deref().unwrap_or("the orchestrator"),
                step.command
            );
            return wait_for_operator(&ctx, step, instructions, &tx, shutdown, begin, index).await;
        }
    }
    // The step's start is on disk before anything of it runs on a host.
    let mut recorded_first = false;
    if let Some(replica) = &step.replica {
        if !record_start(&tx, step, 1).await {
            return outcome(StepStatus::Cancelled, 1, Some(NOT_RECORDED.into()));
        }
        recorded_first = true;
        if let Err(e) = before_replica(&ctx, step, replica, &tx, defined).await {
            return outcome(StepStatus::Failed, 1, Some(e));
        }
    }
    if !recorded_first
        && !matches!(
            step.action_spec,
            Action::Manual { .. } | Action::Exec { .. }
        )
        && !record_start(&tx, step, 1).await
    {
        return outcome(StepStatus::Cancelled, 1, Some(NOT_RECORDED.into()));
    }
    match &step.action_spec {
        Action::Manual { instructions } => {
            wait_for_operator(
                &ctx,
                step,
                instructions.clone(),
                &tx,
                shutdown,
                begin,
                index,
            )
            .await
        }
        Action::Exec { run, verify, .. } => {
            // The deadline bounds the whole step: every attempt, the waits between them and
            // the verification.
            let deadline = step.timeout_s.map(|t| begin + StdDuration::from_secs(t));
            let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let past_deadline = || left().is_some_and(|l| l < StdDuration::from_secs(1));
            let timed_out = |why: String| {
                Some(format!(
                    "timed out after {}s: {why}",
                    step.timeout_s.unwrap_or(0)
                ))
            };
            let mut attempt = 0;
            if let Some(status) = &step.state_before
                && prior.is_none()
            {
                // Before the vm is started: whether it runs already (see `VmStateBefore`).
                let room = left().map_or(StdDuration::from_secs(60), |l| {
                    l.min(StdDuration::from_secs(60))
                });
                let (running, said) = match exec(&ctx, step, status, Some(room)).await {
                    Ok(out) => (said_running(&out), out.stdout.trim().to_string()),
                    Err(e) => (None, e.message),
                };
                let event = Event::VmStateBefore {
                    at: Utc::now(),
                    step: step.id.clone(),
                    running,
                    said: said.chars().take(500).collect(),
                };
                let (recorded, answer) = tokio::sync::oneshot::channel();
                if tx.send(Msg::Recorded(event, recorded)).is_err() || answer.await != Ok(true) {
                    return outcome(StepStatus::Cancelled, 1, Some(NOT_RECORDED.into()));
                }
            }
            loop {
                attempt += 1;
                let recorded =
                    (attempt == 1 && recorded_first) || record_start(&tx, step, attempt).await;
                if !recorded {
                    return outcome(StepStatus::Cancelled, attempt, Some(NOT_RECORDED.into()));
                }
                let result = exec(&ctx, step, run, left()).await;
                let refused = matches!(&result, Err(e) if e.refused);
                let (status, message) = match result {
                    Ok(out) => {
                        output_event(&tx, step, attempt, &out);
                        if out.timed_out {
                            (
                                StepStatus::TimedOut,
                                Some(format!("timed out after {}s", step.timeout_s.unwrap_or(0))),
                            )
                        } else if out.exit_code != 0 {
                            (
                                StepStatus::Failed,
                                Some(format!("exited with status {}", out.exit_code)),
                            )
                        } else if let Some(v) = verify {
                            let room = left().map_or(StdDuration::from_secs(120), |l| {
                                l.min(StdDuration::from_secs(120))
                            });
                            if past_deadline() {
                                (
                                    StepStatus::TimedOut,
                                    timed_out("no time was left to verify it".into()),
                                )
                            } else {
                                match exec(&ctx, step, v, Some(room)).await {
                                    Ok(vo) if vo.exit_code == 0 => (StepStatus::Done, None),
                                    Ok(vo) if vo.timed_out || past_deadline() => {
                                        output_event(&tx, step, attempt, &vo);
                                        (
                                            StepStatus::TimedOut,
                                            timed_out("its verify did not pass in time".into()),
                                        )
                                    }
                                    Ok(vo) => {
                                        output_event(&tx, step, attempt, &vo);
                                        (
                                            StepStatus::Failed,
                                            Some(format!(
                                                "verify failed (status {})",
                                                vo.exit_code
                                            )),
                                        )
                                    }
                                    Err(e) if past_deadline() => {
                                        (StepStatus::TimedOut, timed_out(e.message))
                                    }
                                    Err(e) => (
                                        StepStatus::Failed,
                                        Some(format!("verify could not run: {e}")),
                                    ),
                                }
                            }
                        } else {
                            (StepStatus::Done, None)
                        }
                    }
                    // The host did not answer before the step's deadline.
                    Err(e) if !e.refused && past_deadline() => {
                        (StepStatus::TimedOut, timed_out(e.message))
                    }
                    Err(e) => (StepStatus::Failed, Some(e.message)),
                };
                if status.succeeded()
                    || status == StepStatus::TimedOut
                    || refused
                    || attempt > step.retries
                    || *shutdown.borrow()
                {
                    return outcome(status, attempt, message);
                }
                let backoff = StdDuration::from_secs((1u64 << (attempt - 1).min(5)).min(30));
                let backoff = left().map_or(backoff, |l| backoff.min(l));
                tokio::time::sleep(backoff).await;
                if past_deadline() {
                    // No time for another attempt: the step ends as its last attempt did.
                    return outcome(status, attempt, message);
                }
            }
        }
        Action::Lag {
            run,
            timeout,
            rpo,
            hold,
        } => {
            // A measurement: what the probe says is journaled. A lag unknown or over the RPO
            // stops a planned switch here, before it (the side being left still holds what
            // the other lacks); elsewhere the recovery goes on and the report says it.
            let limit = StdDuration::from_secs(timeout.secs());
            let reading = match exec(&ctx, step, run, Some(limit)).await {
                Ok(out) => {
                    output_event(&tx, step, 1, &out);
                    crate::lag::read_output(&out, *timeout)
                }
                Err(e) => {
                    crate::lag::Reading::Unknown(format!("the probe could not run: {}", e.message))
                }
            };
            let (verdict, words) = crate::lag::judge(&reading, *rpo);
            let _ = tx.send(Msg::Event(Event::LagMeasured {
                at: Utc::now(),
                step: step.id.clone(),
                service: step.service.clone(),
                host: step.host.clone().unwrap_or_default(),
                lag_s: reading.seconds(),
                unknown: match reading {
                    crate::lag::Reading::Unknown(why) => Some(why),
                    crate::lag::Reading::Seconds(_) => None,
                },
                rpo_target_s: rpo.map(|r| r.secs()),
            }));
            if *hold && verdict != crate::lag::Verdict::Within {
                return outcome(
                    StepStatus::Failed,
                    1,
                    Some(format!(
                        "{words}: a planned switch stops here, before it, since the side it leaves still holds data the other may lack; bring the replication up to date (or, if that side is lost, run an emergency failover, which accepts the loss)"
                    )),
                );
            }
            outcome(StepStatus::Done, 1, Some(words))
        }
        Action::Probe { run, interval } => {
            let deadline = step
                .timeout_s
                .map(StdDuration::from_secs)
                .unwrap_or(StdDuration::from_secs(600));
            let per_try = StdDuration::from_secs(interval.secs().max(30));
            let (ctx2, tx2, run) = (ctx.clone(), tx.clone(), run.clone());
            poll(step, begin, *interval, shutdown, index, move || {
                let (ctx, tx, run) = (ctx2.clone(), tx2.clone(), run.clone());
                async move {
                    let step = &ctx.plan.steps[index];
                    // A try never runs past the step's deadline.
                    let left = deadline
                        .saturating_sub(begin.elapsed())
                        .max(StdDuration::from_secs(1));
                    match exec(&ctx, step, &run, Some(per_try.min(left))).await {
                        Ok(out) if out.exit_code == 0 => {
                            output_event(&tx, step, 1, &out);
                            Ok(())
                        }
                        Ok(out) => {
                            Err(format!("status {} {}", out.exit_code, out.stderr.trim()).into())
                        }
                        Err(e) => Err(e),
                    }
                }
            })
            .await
        }
        Action::Tcp {
            address,
            port,
            interval,
        } => {
            let target = crate::inventory::endpoint(address, *port);
            poll(step, begin, *interval, shutdown, index, move || {
                let target = target.clone();
                async move {
                    match tokio::time::timeout(
                        StdDuration::from_secs(5),
                        tokio::net::TcpStream::connect(&target),
                    )
                    .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(format!("{target}: {e}").into()),
                        Err(_) => Err(format!("{target}: no answer within 5s").into()),
                    }
                }
            })
            .await
        }
        Action::Http {
            url,
            status,
            interval,
            tls,
        } => {
            let (url, tls) = (url.clone(), tls.clone());
            let expected = *status;
            poll(step, begin, *interval, shutdown, index, move || {
                let (url, tls) = (url.clone(), tls.clone());
                async move {
                    let asked = url.clone();
                    let got = tokio::task::spawn_blocking(move || {
                        crate::http::status(&asked, &tls, StdDuration::from_secs(10))
                    })
                    .await;
                    match got {
                        Ok(Ok(code)) if code == expected => Ok(()),
                        Ok(Ok(code)) => {
                            Err(format!("{url}: status {code}, expected {expected}").into())
                        }
                        // A CA file that cannot be used will not mend by asking again.
                        Ok(Err(
                            e @ (crate::http::HttpError::CaFile { .. }
                            | crate::http::HttpError::NoCertificate(_)),
                        )) => Err(TryError::refused(e.to_string())),
                        Ok(Err(e)) => Err(format!("{url}: {e}").into()),
                        Err(e) => Err(format!("{url}: the check task failed: {e}").into()),
                    }
                }
            })
            .await
        }
        Action::Replicate {
            what,
            from_host,
            to_host,
            items,
            retention,
            snapshot,
            capture,
            guest,
        } => {
            if *guest == Some(true) {
                let e = "its copies are raw images of the disks as the guest sees them (changed_blocks): copying them back over the primary's disks is not done by reprise yet; convert each copy by hand (qemu-img convert -O qcow2 COPY DISK) with the vm stopped".to_string();
                return outcome(StepStatus::Failed, 1, Some(e));
            }
            // A snapshot left on the source by an interrupted replication: the disks are stale
            // (the vm wrote to the overlay), so it is merged back before they are read.
            let mut settled = String::new();
            if let Some(hooks) = snapshot {
                let expose = |c: &Command| c.expose(|n| (ctx.secrets)(n));
                let (check, end) = match (expose(&hooks.check), expose(&hooks.end)) {
                    (Ok(c), Ok(e)) => (c, e),
                    (Err(missing), _) | (_, Err(missing)) => {
                        return outcome(
                            StepStatus::Failed,
                            1,
                            Some(format!("secret {missing} is not set in the environment")),
                        );
                    }
                };
                let (transport, host, shown) = (
                    ctx.transport.clone(),
                    hooks.host.clone(),
                    hooks.end.to_string(),
                );
                let done = tokio::task::spawn_blocking(move || {
                    crate::replica::snapshot::settle(
                        transport.as_ref(),
                        &host,
                        &check,
                        &end,
                        &shown,
                    )
                })
                .await
                .unwrap_or_else(|e| Err(format!("the snapshot task failed: {e}")));
                match done {
                    Ok(note) => {
                        if let Some(n) = note {
                            settled = format!("{n}\n");
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Msg::Event(Event::StepOutput {
                            at: Utc::now(),
                            step: step.id.clone(),
                            attempt: 1,
                            stdout: String::new(),
                            stderr: e.clone(),
                            exit_code: None,
                        }));
                        return outcome(StepStatus::Failed, 1, Some(e));
                    }
                }
            }
            let deadline = step
                .timeout_s
                .map(StdDuration::from_secs)
                .unwrap_or(StdDuration::from_secs(7200));
            let mut report = settled;
            // Every disk of a vm gets the same point.
            let taken_at = Utc::now();
            // The vm's definition goes with the point (beside the copy of its first disk).
            let mut captured_def = None;
            if let (Some((cmd, format)), Some((_, first))) = (capture, items.first()) {
                let format = *format;
                let captured = match cmd.expose(|n| (ctx.secrets)(n)) {
                    Err(missing) => Err(format!("secret {missing} is not set in the environment")),
                    Ok(text) => {
                        let (transport, from, to, first) = (
                            ctx.transport.clone(),
                            from_host.clone(),
                            to_host.clone(),
                            first.clone(),
                        );
                        tokio::task::spawn_blocking(move || {
                            let helpers = crate::replica::remote::Helpers::new(transport.as_ref());
                            crate::replica::definitions::capture(
                                &helpers, format, &from, &text, &to, &first,
                            )
                        })
                        .await
                        .unwrap_or_else(|e| Err(format!("the definition task failed: {e}")))
                    }
                };
                match captured {
                    Ok(h) => {
                        report.push_str(&format!(
                            "definition captured on {from_host} (BLAKE3 {h})\n"
                        ));
                        captured_def = Some(h);
                    }
                    Err(e) => {
                        let _ = tx.send(Msg::Event(Event::StepOutput {
                            at: Utc::now(),
                            step: step.id.clone(),
                            attempt: 1,
                            stdout: report,
                            stderr: e.clone(),
                            exit_code: None,
                        }));
                        return outcome(StepStatus::Failed, 1, Some(e));
                    }
                }
            }
            let mut replication = crate::replica::remote::Replication {
                point: crate::replica::remote::point_id(taken_at),
                taken_at,
                retention: *retention,
                reread: false,
                compress: false,
                deadline,
                definition: captured_def,
            };
            // A running vm's disks are frozen by its driver while they are read
            // (`replicate-begin`), and `replicate-end` undoes it on every way out.
            let freeze = snapshot
                .as_ref()
                .and_then(|h| Some((h.host.clone(), h.begin.clone()?, h.end.clone())));
            let mut failed = None;
            if let Some((host, begin, _)) = &freeze {
                match run_hook(&ctx, host, begin).await {
                    Ok(out) => report.push_str(&out),
                    Err(e) => {
                        failed = Some(format!(
                            "the disks could not be frozen for the copy (replicate-begin on {host}: {e}); not replicated, the copy keeps its last point"
                        ))
                    }
                }
            }
            let mut point = None;
            // A vm with changed_blocks, read by a step (a final sync, its vm stopped or frozen
            // above): every block of its qcow2 disks through qemu-nbd, which refuses a disk a
            // running vm writes; the next `reprise replicate` starts a checkpoint again.
            let read = guest.map(|_| crate::replica::remote::GuestRead {
                nbd: None,
                format: crate::replica::protocol::DiskFormat::Qcow2,
                bitmap: None,
                how: crate::replica::store::HowRead {
                    mode: crate::replica::store::ReadMode::Scan,
                    why: Some("read by a runbook step, which starts no checkpoint".into()),
                    checkpoint: None,
                },
            });
            for (i, (src, dst)) in items.iter().enumerate().filter(|_| failed.is_none()) {
                // Only the first disk's point records the definition (it is kept beside it).
                if i == 1 {
                    replication.definition = None;
                }
                let copied = replicate_image(
                    &ctx,
                    matches!(what, Replicated::Backup(_)),
                    from_host,
                    src,
                    to_host,
                    dst,
                    &replication,
                    read.as_ref(),
                )
                .await
                .map(|t| {
                    point = Some(t.applied.point.id.clone());
                    t.line()
                });
                match copied {
                    Ok(line) => report.push_str(&line),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some((host, _, end)) = &freeze {
                match run_hook(&ctx, host, end).await {
                    Ok(out) => report.push_str(&out),
                    Err(e) => {
                        let e = format!(
                            "what froze the disks was NOT undone (replicate-end on {host}: {e}); run on {host}: {end}"
                        );
                        failed = Some(match failed {
                            Some(first) => format!("{first}; {e}"),
                            None => e,
                        });
                    }
                }
            }
            if let Some(e) = failed {
                let _ = tx.send(Msg::Event(Event::StepOutput {
                    at: Utc::now(),
                    step: step.id.clone(),
                    attempt: 1,
                    stdout: report,
                    stderr: e.clone(),
                    exit_code: None,
                }));
                return outcome(StepStatus::Failed, 1, Some(e));
            }
            let _ = tx.send(Msg::Event(Event::StepOutput {
                at: Utc::now(),
                step: step.id.clone(),
                attempt: 1,
                stdout: report,
                stderr: String::new(),
                exit_code: Some(0),
            }));
            let item = match what {
                Replicated::Vm(v) | Replicated::Backup(v) => v,
            };
            if let Some(point) = point {
                let _ = tx.send(Msg::Event(Event::ReplicaPointUsed {
                    at: Utc::now(),
                    step: step.id.clone(),
                    item: item.clone(),
                    point,
                    taken_at,
                    verified: true,
                    note: Some("made by this step; its BLAKE3 matched end to end".into()),
                    dropped: Vec::new(),
                }));
            }
            outcome(StepStatus::Done, 1, None)
        }
    }
}

/// Runs a driver hook of a replication on `host`: its output, or why it failed.
async fn run_hook(ctx: &Arc<RunContext>, host: &str, cmd: &Command) -> Result<String, String> {
    let text = cmd
        .expose(|n| (ctx.secrets)(n))
        .map_err(|missing| format!("secret {missing} is not set in the environment"))?;
    let (transport, host) = (ctx.transport.clone(), host.to_string());
    let out = tokio::task::spawn_blocking(move || {
        transport.exec(&host, &text, StdDuration::from_secs(600))
    })
    .await
    .map_err(|e| format!("the hook task failed: {e}"))?
    .map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        return Err(format!(
            "exited with {}: {}",
            out.exit_code,
            out.stderr.trim()
        ));
    }
    Ok(out.stdout)
}

/// Brings one vm disk's recovery copy (or a backup set's folder, file by file) up to date
/// through the replication helpers, as a new point (see [`crate::replica`]).
#[allow(clippy::too_many_arguments)]
async fn replicate_image(
    ctx: &RunContext,
    folder: bool,
    from: &str,
    src: &str,
    to: &str,
    dst: &str,
    replication: &crate::replica::remote::Replication,
    guest: Option<&crate::replica::remote::GuestRead>,
) -> Result<crate::replica::ImageTransfer, String> {
    let transport = ctx.transport.clone();
    let (from, src, to, dst, r, guest) = (
        from.to_string(),
        src.to_string(),
        to.to_string(),
        dst.to_string(),
        replication.clone(),
        guest.cloned(),
    );
    tokio::task::spawn_blocking(move || {
        let helpers = crate::replica::remote::Helpers::new(transport.as_ref());
        if folder {
            helpers.replicate_tree(&from, &src, &to, &dst, &r)
        } else {
            helpers.replicate(&from, &src, &to, &dst, &r, guest.as_ref())
        }
    })
    .await
    .map_err(|e| format!("the replication task failed: {e}"))?
    .map_err(|e| e.to_string())
}

/// Which replica point a failover starts the vms from (`failover --point VM=ID`,
/// `--point-before TIME`); by default the newest point that did not fail verification. A vm
/// named in `accept_unverified` (or every vm, with `*`) may start from its copy as it is
/// when nothing proves it (journaled as unverified).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PointChoice {
    pub by_vm: HashMap<String, String>,
    /// For every vm not in `by_vm`.
    pub all: Option<String>,
    pub before: Option<DateTime<Utc>>,
    pub accept_unverified: Vec<String>,
}

impl PointChoice {
    /// What the operator asked for `vm`, as [`crate::replica::choice`] takes it.
    fn ask(&self, vm: &str, run: &str, failover: bool) -> crate::replica::choice::Ask {
        use crate::replica::choice::Want;
        let want = match (self.by_vm.get(vm).or(self.all.as_ref()), self.before) {
            (Some(id), _) => Some(Want::Id(id.clone())),
            (None, Some(t)) => Some(Want::Before(t)),
            (None, None) => None,
        };
        crate::replica::choice::Ask {
            want: want.filter(|_| failover),
            accept_unverified: self.accept_unverified.iter().any(|v| v == vm || v == "*"),
            run: Some(run.to_string()),
        }
    }
}

/// How long a run waits for a replication that holds a copy it needs.
const COPY_WAIT: StdDuration = StdDuration::from_secs(60);

/// Before a vm step that starts from the recovery copies (a drill's overlay copy, or the vm
/// itself in a failover): the point is decided ([`crate::replica::choice::decide`], the
/// decision `check` and `status` make too), the copies are prepared (an interrupted update
/// settled, a copy changed behind its point read again, a failover's roll-back), leased (a
/// replication never writes into them while they are used, and the lease checks they still
/// are the point chosen), and the point is journaled with whether it is verified at that
/// moment. An error stops the step before its command runs.
async fn before_replica(
    ctx: &RunContext,
    step: &PlannedStep,
    replica: &crate::plan::ReplicaUse,
    tx: &tokio::sync::mpsc::UnboundedSender<Msg>,
    defined: &mut Option<Defined>,
) -> Result<(), String> {
    use crate::plan::ReplicaRole;
    use crate::replica::choice::Use;
    let how = match replica.role {
        ReplicaRole::DrillStart => Use::Drill,
        ReplicaRole::Start => Use::Failover,
        ReplicaRole::FailedBack => {
            // The vm starts on the primary from the point the reverse replication made.
            if let Some(d) = &replica.define {
                let (note, done) = define_vm(ctx, d, Source::Point(None)).await?;
                output_note(tx, step, note);
                *defined = Some(done);
            }
            return Ok(());
        }
        ReplicaRole::DrillStop => return Ok(()),
    };
    let failover = ctx.plan.mode == Mode::Failover;
    let mut leftover_note = None;
    let mut ask_again = false;
    match ask_snapshots(ctx, replica).await {
        Snapshots::None => {}
        Snapshots::Unknown(note) => leftover_note = Some(note),
        // A replication writing the copies now has its own snapshot there: the drill waits
        // for it (the lease below), then asks again. One that has just written them merges
        // its snapshot back right after: asked again for a while before it is called left.
        Snapshots::Left(_) => {
            let deadline = Instant::now() + SNAPSHOT_SETTLE;
            loop {
                if copies_busy(ctx, replica).await {
                    ask_again = true;
                    break;
                }
                match ask_snapshots(ctx, replica).await {
                    Snapshots::None => break,
                    Snapshots::Unknown(note) => {
                        leftover_note = Some(note);
                        break;
                    }
                    Snapshots::Left(left) if Instant::now() >= deadline => {
                        return Err(snapshot_left(replica, &left));
                    }
                    Snapshots::Left(_) => tokio::time::sleep(StdDuration::from_secs(2)).await,
                }
            }
        }
    }
    let ask = ctx
        .options
        .points
        .ask(&replica.vm, &ctx.plan.run_id, failover);
    let (transport, run, id, replica2) = (
        ctx.transport.clone(),
        ctx.plan.run_id.clone(),
        step.id.clone(),
        replica.clone(),
    );
    let chosen = tokio::task::spawn_blocking(move || {
        choose_copies(
            transport.as_ref(),
            &run,
            &id,
            &replica2,
            how,
            &ask,
            failover,
        )
    })
    .await
    .map_err(|e| format!("the replica task failed: {e}"))??;
    if ask_again {
        leftover_note = snapshots_settled(ctx, replica).await?;
    }
    let s = chosen.start;
    let mut notes = chosen.notes;
    notes.extend(s.notes);
    notes.extend(leftover_note);
    if let Some(d) = &replica.define {
        let point = s.points.first().cloned().flatten();
        let result = match (point, how) {
            (None, Use::Failover) => keep_defined(ctx, d, &replica.vm)
                .await
                .map(|note| (note, None)),
            (None, Use::Drill) => define_vm(ctx, d, Source::PrimaryNow(&replica.vm))
                .await
                .map(|(note, done)| (note, Some(done))),
            (Some(p), _) => define_vm(ctx, d, Source::Point(Some(p)))
                .await
                .map(|(note, done)| (note, Some(done))),
        };
        match result {
            Ok((note, done)) => {
                output_note(tx, step, note);
                // A drill's copy is removed by the drill's cleanup, whatever happened.
                if how == Use::Failover {
                    *defined = done;
                }
            }
            Err(e) => {
                // Not started: the copies it leased are given back.
                let (transport, host, paths, run) = (
                    ctx.transport.clone(),
                    replica.host.clone(),
                    replica.paths.clone(),
                    ctx.plan.run_id.clone(),
                );
                let kind = match how {
                    Use::Drill => crate::replica::LeaseKind::Drill,
                    Use::Failover => crate::replica::LeaseKind::Live,
                };
                let _ = tokio::task::spawn_blocking(move || {
                    crate::replica::remote::Helpers::new(transport.as_ref()).release(
                        &host,
                        &paths,
                        Some(&run),
                        Some(kind),
                    )
                })
                .await;
                return Err(e);
            }
        }
    }
    let _ = tx.send(Msg::Event(Event::ReplicaPointUsed {
        at: Utc::now(),
        step: step.id.clone(),
        item: replica.vm.clone(),
        point: s.point,
        taken_at: s.taken_at,
        verified: s.verified,
        note: Some(if notes.is_empty() {
            format!("the newest point on {}, verified", replica.host)
        } else {
            notes.join("; ")
        }),
        dropped: s.dropped,
    }));
    Ok(())
}

/// What the primary host says of replication snapshots left on a vm's disks.
enum Snapshots {
    None,
    /// It could not be asked (a drill does not depend on the primary site: said, not refused).
    Unknown(String),
    Left(Vec<String>),
}

/// A drill asks the primary host (read only) whether a cut replication left its snapshot
/// there: the vm then writes to an overlay no replication copies, and its copy goes stale.
async fn ask_snapshots(ctx: &RunContext, replica: &crate::plan::ReplicaUse) -> Snapshots {
    let Some((host, check)) = &replica.snapshot_check else {
        return Snapshots::None;
    };
    let unknown = || {
        Snapshots::Unknown(format!(
            "whether a replication snapshot was left on {host} could not be asked"
        ))
    };
    let Ok(text) = check.expose(|n| (ctx.secrets)(n)) else {
        return unknown();
    };
    let (transport, h) = (ctx.transport.clone(), host.clone());
    let out =
        tokio::task::spawn_blocking(move || transport.exec(&h, &text, StdDuration::from_secs(60)))
            .await
            .ok()
            .and_then(Result::ok);
    match out {
        Some(o) if o.exit_code == 0 => {
            let left = crate::replica::snapshot::overlays(&o.stdout);
            if left.is_empty() {
                Snapshots::None
            } else {
                Snapshots::Left(left)
            }
        }
        _ => unknown(),
    }
}

fn snapshot_left(replica: &crate::plan::ReplicaUse, left: &[String]) -> String {
    let host = replica
        .snapshot_check
        .as_ref()
        .map(|(h, _)| h.as_str())
        .unwrap_or("the primary host");
    format!(
        "a replication snapshot was left on {host} ({}): vm {}'s writes go to an overlay no replication copies, so its copy goes stale; merge it back with `reprise replicate --service {}`, then drill again",
        left.join("; "),
        replica.vm,
        replica.vm
    )
}

/// Whether a replication holds the recovery copies of a vm right now.
async fn copies_busy(ctx: &RunContext, replica: &crate::plan::ReplicaUse) -> bool {
    let (transport, r) = (ctx.transport.clone(), replica.clone());
    tokio::task::spawn_blocking(move || {
        crate::replica::remote::Helpers::new(transport.as_ref())
            .inspect(&r.host, &r.paths)
            .is_ok_and(|states| states.iter().any(|s| s.busy))
    })
    .await
    .unwrap_or(false)
}

/// After a replication that held the copies is over, its own snapshot on the primary is
/// merged back right after: asked again for up to [`SNAPSHOT_SETTLE`] before it is called
/// left behind.
async fn snapshots_settled(
    ctx: &RunContext,
    replica: &crate::plan::ReplicaUse,
) -> Result<Option<String>, String> {
    let deadline = Instant::now() + SNAPSHOT_SETTLE;
    loop {
        match ask_snapshots(ctx, replica).await {
            Snapshots::None => return Ok(None),
            Snapshots::Unknown(note) => return Ok(Some(note)),
            Snapshots::Left(left) if Instant::now() >= deadline => {
                return Err(snapshot_left(replica, &left));
            }
            Snapshots::Left(_) => tokio::time::sleep(StdDuration::from_secs(2)).await,
        }
    }
}

/// How long a drill waits for the snapshot of a replication that ended (or is ending) to be
/// merged back before it calls it left behind.
const SNAPSHOT_SETTLE: StdDuration = StdDuration::from_secs(60);

/// Journals what a step did before its command (as its output).
fn output_note(tx: &tokio::sync::mpsc::UnboundedSender<Msg>, step: &PlannedStep, note: String) {
    let _ = tx.send(Msg::Event(Event::StepOutput {
        at: Utc::now(),
        step: step.id.clone(),
        attempt: 1,
        stdout: note,
        stderr: String::new(),
        exit_code: None,
    }));
}

/// A failover that starts a copy as it is (no point, named with --accept-unverified): no
/// definition comes with it, so none is defined; the vm starts as the host defines it now,
/// which must be a definition of it whose disks are its copies and whose NICs are on
/// networks the inventory maps to on that host. What was found, or why it cannot start.
async fn keep_defined(
    ctx: &RunContext,
    d: &crate::plan::DefineUse,
    vm: &str,
) -> Result<String, String> {
    let (host, name) = (d.host.clone(), d.fit.name.clone());
    let cannot = {
        let (vm, host, name) = (vm.to_string(), host.clone(), name.clone());
        move |why: String| {
            format!(
                "vm {vm}: its copy is started as it is (no point), which brings no definition of the vm, and {why}: replicate it again (each replication captures the definition), or define {name} on {host} by hand"
            )
        }
    };
    let Some(current) = &d.current else {
        return Err(cannot(format!(
            "its driver cannot read what {host} defines (no `definition` action)"
        )));
    };
    let command = current
        .expose(|n| (ctx.secrets)(n))
        .map_err(|missing| format!("secret {missing} is not set in the environment"))?;
    let (transport, mut fit, format) = (ctx.transport.clone(), d.fit.clone(), d.format);
    // The host's definition is already fitted: its NICs are on this host's own networks.
    if let crate::vmdef::Nics::Map(map) = &fit.nics {
        fit.nics = crate::vmdef::Nics::Map(map.values().map(|v| (v.clone(), v.clone())).collect());
    }
    tokio::task::spawn_blocking(move || {
        let helpers = crate::replica::remote::Helpers::new(transport.as_ref());
        let out = helpers
            .run_command(
                &host,
                &command,
                &[],
                crate::vmdef::MAX_BYTES as u64,
                std::time::Duration::from_secs(120),
            )
            .map_err(|e| cannot(format!("what {host} defines could not be read: {e}")))?;
        if out.exit_code != 0 {
            return Err(cannot(format!("{host} defines no {name}")));
        }
        let def = crate::vmdef::Definition::parse(format, &out.stdout)
            .map_err(|e| cannot(format!("what {host} defines as {name} is refused: {e}")))?;
        // A libvirt domain is its name; a Proxmox vm is its vmid, which `definition` names.
        if format == crate::vmdef::Format::LibvirtXml && def.name().as_deref() != Some(name.as_str()) {
            return Err(cannot(format!(
                "what {host} gives for {name} is the definition of {:?}",
                def.name().unwrap_or_default()
            )));
        }
        crate::vmdef::rewrite(&def, &fit).map_err(|e| {
            cannot(format!("what {host} defines as {name} cannot be started there: {e}"))
        })?;
        Ok(format!(
            "{name} is started as {host} defines it now (not redefined): its copy is started as it is, with no point, so no definition comes with it\n"
        ))
    })
    .await
    .map_err(|e| format!("the definition task failed: {e}"))?
}

/// Where a vm step's definition comes from.
enum Source<'a> {
    /// The definition of this point (`None`, for a failback: the newest point of the
    /// primary's copy that has one).
    Point(Option<String>),
    /// A drill of copy started as it is (no point, no definition with it) of this vm: the
    /// definition its primary holds now.
    PrimaryNow(&'a str),
}

/// Defines the vm on the step's host from the definition `source` gives, fitted to that
/// host: what was done.
async fn define_vm(
    ctx: &RunContext,
    d: &crate::plan::DefineUse,
    source: Source<'_>,
) -> Result<(String, Defined), String> {
    let expose = |c: &crate::template::Command| {
        c.expose(|n| (ctx.secrets)(n))
            .map_err(|missing| format!("secret {missing} is not set in the environment"))
    };
    let command = expose(&d.command)?;
    let current = d.current.as_ref().map(expose).transpose()?;
    let undefine = d.undefine.as_ref().map(expose).transpose()?;
    let source = match source {
        Source::Point(p) => Ok(p),
        Source::PrimaryNow(vm) => match &d.primary {
            Some((host, cmd)) => Err((host.clone(), expose(cmd)?)),
            None => {
                return Err(format!(
                    "vm {vm}: its copy is started as it is (no point), which brings no definition of the vm, and its driver cannot read the one its primary holds: replicate it again (each replication captures the definition)"
                ));
            }
        },
    };
    let (transport, d2, record) = (
        ctx.transport.clone(),
        d.clone(),
        ctx.options.definitions_dir.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let helpers = crate::replica::remote::Helpers::new(transport.as_ref());
        let mut d = d2;
        let (def, point, from) = match source {
            Ok(point) => {
                let point = match point {
                    Some(p) => p,
                    // A failback: the newest point the reverse replication made, never an
                    // older definition for the disks as they are.
                    None => {
                        crate::replica::definitions::newest(&helpers, &d.from_host, &d.from_copy)?
                    }
                };
                let (def, hash, guest_view) = crate::replica::definitions::fetch(
                    &helpers,
                    d.format,
                    &d.from_host,
                    &d.from_copy,
                    &point,
                )?;
                // Copies read as the guest sees its disks are raw, whatever the primary's
                // disks are: the vm reads them as raw (a drill's overlays stay qcow2).
                if guest_view && d.fit.disk_format.is_none() {
                    d.fit.disk_format = Some("raw".into());
                }
                let from = format!("the definition of point {point} (BLAKE3 {})", &hash[..16]);
                (def, point, from)
            }
            // A drill of a copy started as it is: what the primary holds now.
            Err((primary, cmd)) => {
                let def =
                    crate::replica::definitions::read_current(&helpers, d.format, &primary, &cmd)?;
                let from = format!(
                    "the definition {primary} holds now (its copy is started as it is, with no point, so no definition comes with it)"
                );
                (def, "none (as it is)".to_string(), from)
            }
        };
        let fitted = crate::vmdef::rewrite(&def, &d.fit)
            .map_err(|e| format!("{from} cannot be defined on {}: {e}", d.host))?;
        // What is defined there now, put back if the start fails.
        let previous = match &current {
            None => None,
            Some(cur) => {
                let out = helpers
                    .run_command(
                        &d.host,
                        cur,
                        &[],
                        crate::vmdef::MAX_BYTES as u64,
                        std::time::Duration::from_secs(120),
                    )
                    .map_err(|e| {
                        format!(
                            "cannot read what is defined as {} on {}: {e}",
                            d.fit.name, d.host
                        )
                    })?;
                (out.exit_code == 0).then_some(out.stdout)
            }
        };
        let said = crate::replica::definitions::define(&helpers, &d.host, &command, &fitted.text)?;
        if let Some(dir) = record {
            // The last definition used on that host for that name: the next dry run
            // shows what changed since.
            let _ =
                crate::replica::definitions::record(&dir, &d.host, &d.fit.name, &def);
        }
        let mut note = format!("{} defined on {} from {from}", d.fit.name, d.host);
        for n in fitted.notes {
            note.push_str(&format!("; {n}"));
        }
        if !said.is_empty() {
            note.push_str(&format!(": {said}"));
        }
        let done = Defined {
            host: d.host.clone(),
            name: d.fit.name.clone(),
            point,
            previous,
            define: command,
            undefine,
        };
        Ok((note + "\n", done))
    })
    .await
    .map_err(|e| format!("the definition task failed: {e}"))?
}

/// What [`choose_copies`] decided and did.
struct Chosen {
    start: crate::replica::choice::Start,
    /// What was done to the copies on the way (settled, read again, rolled back, leased).
    notes: Vec<String>,
}

/// The blocking part of [`before_replica`]: inspect, prepare and decide until a decision
/// holds, then roll back and lease.
fn choose_copies(
    transport: &dyn Transport,
    run: &str,
    step: &str,
    replica: &crate::plan::ReplicaUse,
    how: crate::replica::choice::Use,
    ask: &crate::replica::choice::Ask,
    may_roll_back: bool,
) -> Result<Chosen, String> {
    use crate::replica::choice::{self, Decision, Prep, Use};
    use crate::replica::{Lease, LeaseKind, Verified};
    let helpers = crate::replica::remote::Helpers::new(transport);
    let (host, paths) = (&replica.host, &replica.paths);
    let name = |i: usize| choice::name(&paths[i]).to_string();
    let mut notes = Vec::new();
    // Points found impossible to rebuild on the way: no longer candidates.
    let mut unusable: Vec<(usize, String)> = Vec::new();
    let mut done: Vec<Prep> = Vec::new();
    for _ in 0..(4 + 4 * paths.len()) {
        let mut states = helpers
            .inspect(host, paths)
            .map_err(|e| format!("cannot read the copies of vm {} on {host}: {e}", replica.vm))?;
        for (i, id) in &unusable {
            if let Some(p) = states[*i].points.iter_mut().find(|p| &p.id == id) {
                p.verified = Verified::Bad;
            }
        }
        let start = match choice::decide(&states, how, ask) {
            Decision::Refuse(why) => return Err(why),
            Decision::Prepare(preps) => {
                for prep in preps {
                    if done.contains(&prep) {
                        return Err(format!(
                            "{}: still not settled after it was settled once; look at it before starting from it",
                            states[match &prep {
                                Prep::Settle(i) | Prep::Verify(i, _) => *i,
                            }]
                            .path
                        ));
                    }
                    match &prep {
                        Prep::Settle(i) => {
                            let note =
                                helpers.settle(host, &paths[*i], COPY_WAIT).map_err(|e| {
                                    format!(
                                        "cannot settle {} before starting from it: {e}",
                                        paths[*i]
                                    )
                                })?;
                            if let Some(n) = note {
                                notes.push(format!("{}: {n}", name(*i)));
                            }
                        }
                        Prep::Verify(i, id) => {
                            let why = states[*i].changed.clone().unwrap_or_default();
                            let checked =
                                helpers.verify(host, &paths[*i], Some(id)).map_err(|e| {
                                    format!(
                                        "cannot read {} again before starting from it: {e}",
                                        paths[*i]
                                    )
                                })?;
                            let good = checked.iter().all(|c| c.good);
                            notes.push(format!(
                                "{}: {why}; read again by hash: point {id} {}",
                                name(*i),
                                if good {
                                    "is whole, the copy still is that point"
                                } else {
                                    "is DAMAGED (marked bad)"
                                }
                            ));
                        }
                    }
                    done.push(prep);
                }
                continue;
            }
            Decision::Start(s) => s,
        };
        // A point whose definition is missing or damaged is no point to start the vm from.
        // A copy started as it is (named by the operator) brings none: a failover starts the
        // vm as the host defines it (`keep_defined`), a drill defines its copy from what the
        // primary holds now (`define_vm`).
        if replica.define.is_some() {
            let problem = start
                .points
                .first()
                .cloned()
                .flatten()
                .and_then(|id| states[0].definition_problem(&id).map(|p| (id, p)));
            if let Some((id, why)) = problem {
                if how == Use::Failover && ask.want.is_none() {
                    notes.push(format!("{why}: an older point is tried"));
                    unusable.push((0, id));
                    continue;
                }
                return Err(format!(
                    "vm {}: {why}; replicate it again (each replication captures the definition)",
                    replica.vm
                ));
            }
        }
        if !start.roll_back.is_empty() && !may_roll_back {
            return Err(format!(
                "vm {} would need its copies rolled back to an older point, which only a failover does",
                replica.vm
            ));
        }
        let mut again = false;
        for (i, id) in &start.roll_back {
            match helpers.roll_back(host, &paths[*i], id) {
                Ok(r) => notes.push(format!(
                    "{} rolled back to point {} (newer points dropped: {})",
                    name(*i),
                    r.point,
                    r.dropped.join(", ")
                )),
                Err(e) if ask.want.is_none() => {
                    notes.push(format!(
                        "{}: point {id} could not be rebuilt ({e}): an older one is tried",
                        name(*i)
                    ));
                    unusable.push((*i, id.clone()));
                    again = true;
                    break;
                }
                Err(e) => return Err(format!("cannot roll {} back to point {id}: {e}", name(*i))),
            }
        }
        if again {
            continue;
        }
        let kind = match how {
            Use::Drill => LeaseKind::Drill,
            Use::Failover => LeaseKind::Live,
        };
        // A resumed failover whose vm already runs on these copies holds them already.
        if how == Use::Failover
            && states.iter().all(|d| {
                d.leases
                    .iter()
                    .any(|l| l.kind == LeaseKind::Live && l.run == run)
            })
        {
            return Ok(Chosen { start, notes });
        }
        let mut leased = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let lease = Lease {
                kind,
                run: run.to_string(),
                vm: replica.vm.clone(),
                step: step.to_string(),
                machine: crate::replica::meta::machine(),
                pid: std::process::id(),
                at: Utc::now(),
                point: start.points[i].clone(),
                taken_at: Some(start.taken_at),
                verified: start.verified,
            };
            match helpers.take_lease(
                host,
                path,
                &lease,
                start.points[i].as_deref(),
                COPY_WAIT,
                false,
            ) {
                Ok(note) => {
                    notes.extend(note.map(|n| format!("{}: {n}", name(i))));
                    leased.push(path.clone());
                }
                Err(e) => {
                    let _ = helpers.release(host, &leased, Some(run), Some(kind));
                    return Err(format!("cannot take {} for this run: {e}", path));
                }
            }
        }
        return Ok(Chosen { start, notes });
    }
    Err(format!(
        "the copies of vm {} on {host} kept changing while the run chose its point; start the run again",
        replica.vm
    ))
}

/// After a vm step that used the recovery copies: a vm now running on them ends their point
/// history (and keeps them from any replication until it fails back); a drill's cleanup
/// releases its lease; a failback releases the copies the vm ran on. A step that failed
/// keeps what it held, except a start that did not start (its lease is released, so that
/// the run can start again from the same point).
async fn after_replica(ctx: &RunContext, step: &PlannedStep, mut out: Outcome) -> Outcome {
    use crate::plan::ReplicaRole;
    use crate::replica::LeaseKind;
    let Some(replica) = step.replica.clone() else {
        return out;
    };
    let done = out.status == StepStatus::Done;
    let run = ctx.plan.run_id.clone();
    let transport = ctx.transport.clone();
    let vm = replica.vm.clone();
    let step_id = step.id.clone();
    let role = replica.role;
    let status = out.status;
    let result = tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
        let helpers = crate::replica::remote::Helpers::new(transport.as_ref());
        let (host, paths) = (&replica.host, &replica.paths);
        match (role, done) {
            (ReplicaRole::Start, true) => {
                let mut notes = Vec::new();
                for path in paths {
                    let lease = crate::replica::Lease {
                        kind: LeaseKind::Live,
                        run: run.clone(),
                        vm: vm.clone(),
                        step: step_id.clone(),
                        machine: crate::replica::meta::machine(),
                        pid: std::process::id(),
                        at: Utc::now(),
                        point: None,
                        taken_at: None,
                        verified: false,
                    };
                    // The lease of the start is kept as it was; only the history ends.
                    let held = helpers
                        .inspect(host, std::slice::from_ref(path))
                        .ok()
                        .and_then(|s| s.into_iter().next())
                        .and_then(|s| {
                            s.leases
                                .into_iter()
                                .find(|l| l.kind == LeaseKind::Live && l.run == run)
                        })
                        .unwrap_or(lease);
                    let note = helpers
                        .take_lease(host, path, &held, None, COPY_WAIT, true)
                        .map_err(|e| e.to_string())?;
                    notes.extend(note);
                }
                Ok((!notes.is_empty()).then(|| {
                    format!(
                        "vm {vm} runs on its recovery copies: their point history ended, and no replication writes into them until a failback releases them"
                    )
                }))
            }
            (ReplicaRole::Start, false) if status == StepStatus::Failed => helpers
                .release(host, paths, Some(&run), Some(LeaseKind::Live))
                .map(|_| None)
                .map_err(|e| e.to_string()),
            (ReplicaRole::DrillStop, true) => helpers
                .release(host, paths, Some(&run), Some(LeaseKind::Drill))
                .map(|_| None)
                .map_err(|e| e.to_string()),
            (ReplicaRole::FailedBack, true) => helpers
                .release(host, paths, None, Some(LeaseKind::Live))
                .map(|r| {
                    (!r.is_empty()).then(|| {
                        format!("the recovery copies of vm {vm} were released: replication may write into them again")
                    })
                })
                .map_err(|e| e.to_string()),
            _ => Ok(None),
        }
    })
    .await
    .unwrap_or_else(|e| Err(format!("the replica task failed: {e}")));
    let add = |m: &mut Option<String>, text: String| {
        *m = Some(match m.take() {
            Some(old) => format!("{old}; {text}"),
            None => text,
        });
    };
    match result {
        Ok(Some(note)) => add(&mut out.message, note),
        Ok(None) => {}
        Err(e) => add(
            &mut out.message,
            format!(
                "the leases of vm {}'s recovery copies could not be updated ({e}): see `reprise check`; `reprise release {}` frees them",
                step.replica.as_ref().map(|r| r.vm.as_str()).unwrap_or(""),
                step.replica.as_ref().map(|r| r.vm.as_str()).unwrap_or("")
            ),
        ),
    }
    out
}

/// Polls `check` every `interval` until it passes, the step's deadline, or shutdown.
async fn poll<F, Fut>(
    step: &PlannedStep,
    begin: Instant,
    interval: crate::duration::Duration,
    shutdown: watch::Receiver<bool>,
    index: usize,
    check: F,
) -> Outcome
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), TryError>>,
{
    let deadline = step
        .timeout_s
        .map(StdDuration::from_secs)
        .unwrap_or(StdDuration::from_secs(600));
    let interval = StdDuration::from_secs(interval.secs().max(1));
    loop {
        let last = match check().await {
            Ok(()) => {
                return Outcome {
                    index,
                    status: StepStatus::Done,
                    attempt: 1,
                    message: None,
                    elapsed: begin.elapsed(),
                };
            }
            Err(e) if e.refused => {
                return Outcome {
                    index,
                    status: StepStatus::Failed,
                    attempt: 1,
                    message: Some(e.message),
                    elapsed: begin.elapsed(),
                };
            }
            Err(e) => Some(format!("not healthy yet: {e}")),
        };
        let left = deadline.saturating_sub(begin.elapsed());
        if left.is_zero() {
            return Outcome {
                index,
                status: StepStatus::TimedOut,
                attempt: 1,
                message: last,
                elapsed: begin.elapsed(),
            };
        }
        if *shutdown.borrow() {
            return Outcome {
                index,
                status: StepStatus::Cancelled,
                attempt: 1,
                message: last,
                elapsed: begin.elapsed(),
            };
        }
        tokio::time::sleep(interval.min(left)).await;
    }
}

async fn wait_for_operator(
    ctx: &RunContext,
    step: &PlannedStep,
    instructions: String,
    tx: &tokio::sync::mpsc::UnboundedSender<Msg>,
    mut shutdown: watch::Receiver<bool>,
    begin: Instant,
    index: usize,
) -> Outcome {
    if !record_start(tx, step, 1).await {
        return Outcome {
            index,
            status: StepStatus::Cancelled,
            attempt: 1,
            message: Some(NOT_RECORDED.into()),
            elapsed: begin.elapsed(),
        };
    }
    let _ = tx.send(Msg::Event(Event::WaitingForOperator {
        at: Utc::now(),
        step: step.id.clone(),
        instructions,
    }));
    let deadline = step.timeout_s.map(StdDuration::from_secs);
    loop {
        if let Some(c) = ctx.confirmations.confirmation(&step.id) {
            let _ = tx.send(Msg::Event(Event::Confirmed {
                at: c.at,
                step: step.id.clone(),
                by: c.by,
                note: c.note,
            }));
            return Outcome {
                index,
                status: StepStatus::Done,
                attempt: 1,
                message: None,
                elapsed: begin.elapsed(),
            };
        }
        if deadline.is_some_and(|d| begin.elapsed() >= d) {
            return Outcome {
                index,
                status: StepStatus::TimedOut,
                attempt: 1,
                message: Some("no confirmation before the timeout".into()),
                elapsed: begin.elapsed(),
            };
        }
        if *shutdown.borrow() {
            return Outcome {
                index,
                status: StepStatus::Cancelled,
                attempt: 1,
                message: Some("the run was stopped while waiting".into()),
                elapsed: begin.elapsed(),
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.options.confirmation_poll) => {}
            _ = shutdown.changed() => {}
        }
    }
}

fn output_event(
    tx: &tokio::sync::mpsc::UnboundedSender<Msg>,
    step: &PlannedStep,
    attempt: u32,
    out: &ExecOutput,
) {
    let _ = tx.send(Msg::Event(Event::StepOutput {
        at: Utc::now(),
        step: step.id.clone(),
        attempt,
        stdout: out.stdout.clone(),
        stderr: out.stderr.clone(),
        exit_code: Some(out.exit_code),
    }));
}

/// Runs a command of a step on its host, with secrets resolved and redacted from the output.
/// Why a try did not succeed. A `refused` error (a changed or unknown host key, failed
/// authentication, a missing secret) does not change by trying again: the step fails at once.
#[derive(Debug)]
struct TryError {
    message: String,
    refused: bool,
}

impl From<String> for TryError {
    fn from(message: String) -> Self {
        TryError {
            message,
            refused: false,
        }
    }
}

impl std::fmt::Display for TryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl TryError {
    fn refused(message: String) -> Self {
        TryError {
            message,
            refused: true,
        }
    }
}

async fn exec(
    ctx: &RunContext,
    step: &PlannedStep,
    command: &Command,
    timeout: Option<StdDuration>,
) -> Result<ExecOutput, TryError> {
    let Some(host) = step.host.clone() else {
        return Err(TryError::refused(format!(
            "step {} has no host to run on",
            step.id
        )));
    };
    let secrets: Vec<(String, String)> = command
        .secrets()
        .filter_map(|name| (ctx.secrets)(name).map(|v| (name.to_string(), v)))
        .collect();
    let text = command
        .expose(|name| (ctx.secrets)(name))
        .map_err(|missing| {
            TryError::refused(format!("secret {missing} is not set in the environment"))
        })?;
    let transport = ctx.transport.clone();
    let deadline = timeout.unwrap_or(StdDuration::from_secs(3600));
    let on = host.clone();
    let call = tokio::task::spawn_blocking(move || transport.exec(&on, &text, deadline));
    // The transport keeps the deadline itself; should it not (a host frozen in the middle of
    // a call), the step stops waiting for it a little later all the same.
    let Ok(joined) = tokio::time::timeout(deadline + LATE, call).await else {
        return Err(format!(
            "no answer from {host} within {}s",
            (deadline + LATE).as_secs()
        )
        .into());
    };
    let mut out = match joined {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            let refused = matches!(
                e,
                crate::ssh::SshError::ChangedHostKey { .. }
                    | crate::ssh::SshError::UnknownHostKey { .. }
                    | crate::ssh::SshError::RevokedHostKey { .. }
                    | crate::ssh::SshError::KnownHosts { .. }
                    | crate::ssh::SshError::Auth { .. }
                    | crate::ssh::SshError::UnknownHost(_)
                    | crate::ssh::SshError::Refused { .. }
            );
            return Err(TryError {
                message: e.to_string(),
                refused,
            });
        }
        Err(e) => return Err(format!("the ssh task failed: {e}").into()),
    };
    for (name, value) in &secrets {
        if !value.is_empty() {
            out.stdout = out.stdout.replace(value, &format!("<secret:{name}>"));
            out.stderr = out.stderr.replace(value, &format!("<secret:{name}>"));
        }
    }
    Ok(out)
}

/// A drill whose cleanup already began (a stop or a failure ran it) has nothing left to
/// rehearse: its copies are being removed or are gone. Its main steps not done are marked
/// never to run, so that a resume only finishes what the cleanup left. Returns when the
/// cleanup ended when nothing of it is left: the drill is over.
pub fn drill_cleaned_up(
    plan: &Plan,
    events: &[Event],
    prior: &mut HashMap<String, Prior>,
) -> Option<DateTime<Utc>> {
    if plan.mode != Mode::Drill {
        return None;
    }
    let cleanup: HashSet<&str> = plan
        .steps
        .iter()
        .filter(|s| s.phase == Phase::Cleanup)
        .map(|s| s.id.as_str())
        .collect();
    let began = events
        .iter()
        .any(|e| matches!(e, Event::StepStarted { step, .. } if cleanup.contains(step.as_str())));
    if !began {
        return None;
    }
    for s in plan.steps.iter().filter(|s| s.phase == Phase::Main) {
        if prior.get(&s.id) != Some(&Prior::Done) {
            prior.insert(s.id.clone(), Prior::DrillOver);
        }
    }
    if cleanup
        .iter()
        .any(|id| prior.get(*id) != Some(&Prior::Done))
    {
        return None;
    }
    events.iter().rev().find_map(|e| match e {
        Event::StepFinished { at, step, .. } if cleanup.contains(step.as_str()) => Some(*at),
        _ => None,
    })
}

/// Of the steps a resumed run finds done, those it does not take as done at once: a step
/// that comes after one to be run again (undone by a roll-back, failed, interrupted) waits for
/// it, or what it did may come before what it depends on (a promotion while the primary,
/// started again by the roll-back, is being stopped again). The second set: those of them run
/// again, a step safe to run twice and a lag read that holds a switch still to come (the
/// data a switch loses is measured when it switches, never taken from an earlier attempt);
/// the others count as done once what they come after is.
fn stale_done_steps(
    plan: &Plan,
    after: &[Vec<usize>],
    prior: &HashMap<String, Prior>,
) -> (HashSet<usize>, HashSet<usize>) {
    let mut done: Vec<bool> = plan
        .steps
        .iter()
        .map(|s| prior.get(&s.id) == Some(&Prior::Done))
        .collect();
    let mut stale = HashSet::new();
    let mut rerun = HashSet::new();
    let mut changed = true;
    while changed {
        changed = false;
        for (i, s) in plan.steps.iter().enumerate() {
            if done[i] && s.phase == Phase::Main && after[i].iter().any(|&j| !done[j]) {
                done[i] = false;
                stale.insert(i);
                if s.idempotent {
                    rerun.insert(i);
                }
                changed = true;
            }
        }
    }
    // A lag that holds a planned switch is read again while the switch is still to come (a
    // step that comes after it is neither done nor over): the data it loses is measured when
    // it switches. What is done after it stays done.
    for (i, s) in plan.steps.iter().enumerate() {
        let holds = matches!(s.action_spec, Action::Lag { hold: true, .. });
        let to_come = plan.steps.iter().enumerate().any(|(k, t)| {
            after[k].contains(&i)
                && t.phase == Phase::Main
                && matches!(prior.get(&t.id), None | Some(Prior::Interrupted))
        });
        if holds && done[i] && to_come {
            stale.insert(i);
            rerun.insert(i);
        }
    }
    (stale, rerun)
}

/// Steps a journal says were finished, and those it says were running when it ends.
pub fn prior_from_journal(events: &[Event]) -> HashMap<String, Prior> {
    let mut prior = HashMap::new();
    let mut running: HashSet<String> = HashSet::new();
    for e in events {
        match e {
            Event::StepStarted { step, .. } => {
                running.insert(step.clone());
            }
            Event::StepFinished { step, status, .. } => {
                running.remove(step);
                if status.succeeded() {
                    prior.insert(step.clone(), Prior::Done);
                } else {
                    prior.remove(step);
                }
            }
            Event::UndoFinished { step, ok: true, .. } => {
                prior.remove(step);
            }
            _ => {}
        }
    }
    for step in running {
        prior.entry(step).or_insert(Prior::Interrupted);
    }
    prior
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::Duration;
    use crate::plan::{Estimate, PlannedStep, Selection};
    use crate::ssh::{PipeOutput, SshError};
    use std::sync::Mutex;

    /// A transport that records calls and answers from a script: commands containing `fail`
    /// exit 1, `flaky:N` fails until its Nth call.
    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<(String, String)>>,
        running: Mutex<HashMap<String, usize>>,
        max_per_host: Mutex<usize>,
        hold: StdDuration,
    }

    impl Transport for Fake {
        fn pipe(
            &self,
            from: &str,
            _r: &str,
            to: &str,
            _w: &str,
            _d: StdDuration,
        ) -> Result<PipeOutput, SshError> {
            self.pipe_impl(from, to)
        }

        fn exec(
            &self,
            host: &str,
            command: &str,
            _deadline: StdDuration,
        ) -> Result<ExecOutput, SshError> {
            {
                let mut r = self.running.lock().unwrap();
                let n = r.entry(host.to_string()).or_default();
                *n += 1;
                let mut m = self.max_per_host.lock().unwrap();
                *m = (*m).max(*n);
            }
            std::thread::sleep(self.hold);
            let count = {
                let mut calls = self.calls.lock().unwrap();
                calls.push((host.to_string(), command.to_string()));
                calls.iter().filter(|(_, c)| c == command).count()
            };
            *self.running.lock().unwrap().get_mut(host).unwrap() -= 1;
            if command.contains("changed-key") {
                return Err(SshError::ChangedHostKey {
                    host: host.to_string(),
                    endpoint: "127.0.0.1:22".into(),
                    known: "SHA256:old".into(),
                    offered: "SHA256:new".into(),
                    known_hosts: "known_hosts".into(),
                });
            }
            if command.contains("unreachable") {
                return Err(SshError::Hung {
                    host: host.to_string(),
                    secs: 2,
                });
            }
            if let Some(said) = command.split("says:").nth(1) {
                return Ok(ExecOutput {
                    exit_code: 0,
                    stdout: format!("{said}\n"),
                    stderr: String::new(),
                    truncated: false,
                    timed_out: false,
                    duration: StdDuration::ZERO,
                });
            }
            let code = if command.contains("fail") {
                1
            } else if let Some(n) = command.split("flaky:").nth(1) {
                let n: usize = n.trim().parse().unwrap();
                if count < n { 1 } else { 0 }
            } else {
                0
            };
            Ok(ExecOutput {
                exit_code: code,
                stdout: format!("ran {command}"),
                stderr: String::new(),
                truncated: false,
                timed_out: false,
                duration: StdDuration::ZERO,
            })
        }
    }

    impl Fake {
        fn pipe_impl(&self, from: &str, to: &str) -> Result<PipeOutput, SshError> {
            self.calls
                .lock()
                .unwrap()
                .push((format!("{from}->{to}"), "pipe".into()));
            Ok(PipeOutput {
                bytes: 1,
                read_exit: 0,
                write_exit: 0,
                write_failed_first: false,
                stderr: String::new(),
                output: String::new(),
                duration: StdDuration::ZERO,
            })
        }

        fn commands(&self) -> Vec<String> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .map(|(_, c)| c.clone())
                .collect()
        }
    }

    struct Confirm(Mutex<u32>);
    impl Confirmations for Confirm {
        fn confirmation(&self, _step: &str) -> Option<Confirmation> {
            let mut n = self.0.lock().unwrap();
            *n += 1;
            (*n >= 3).then(|| Confirmation {
                by: "sofia".into(),
                note: None,
                at: Utc::now(),
            })
        }
    }

    #[derive(Default)]
    struct Collect(Vec<Event>);
    impl Sink for Collect {
        fn emit(&mut self, event: &Event) -> Result<(), Unrecorded> {
            self.0.push(event.clone());
            Ok(())
        }
    }

    impl Collect {
        fn status(&self, step: &str) -> Option<StepStatus> {
            self.0.iter().rev().find_map(|e| match e {
                Event::StepFinished {
                    step: s, status, ..
                } if s == step => Some(*status),
                _ => None,
            })
        }
    }

    fn exec_step(id: &str, host: &str, after: &[&str], run: &str) -> PlannedStep {
        PlannedStep {
            id: id.into(),
            service: id.split('/').next().unwrap().into(),
            step: id.split('/').nth(1).unwrap().into(),
            host: Some(host.into()),
            target: None,
            site: None,
            kind: "exec",
            action: None,
            command: run.into(),
            verify: None,
            undo: None,
            description: None,
            timeout_s: Some(60),
            expected_s: 60,
            retries: 0,
            idempotent: false,
            needs_primary: false,
            phase: Phase::Main,
            after: after.iter().map(|s| s.to_string()).collect(),
            est_start_s: 0,
            est_finish_s: 0,
            critical: false,
            action_spec: Action::Exec {
                run: Command::text(run),
                verify: None,
                undo: Some(Command::text(format!("undo {run}"))),
            },
            replica: None,
            state_before: None,
        }
    }

    fn plan(mode: Mode, emergency: bool, steps: Vec<PlannedStep>) -> Arc<Plan> {
        Arc::new(Plan {
            mode,
            emergency,
            run_id: "t".into(),
            selection: Selection {
                requested: vec![],
                only: false,
                pulled_in: vec![],
                assumed_running: vec![],
            },
            services: vec![],
            steps,
            left_out: vec![],
            not_covered: vec![],
            estimate: Estimate {
                total: Duration(0),
                critical_path: vec![],
            },
            warnings: vec![],
        })
    }

    fn go(
        plan: Arc<Plan>,
        fake: Arc<Fake>,
        prior: HashMap<String, Prior>,
        options: RunOptions,
    ) -> (RunStatus, Collect) {
        let ctx = RunContext {
            plan,
            transport: fake,
            confirmations: Arc::new(Confirm(Mutex::new(0))),
            secrets: Arc::new(|n| (n == "PW").then(|| "hunter2".to_string())),
            options,
            prior,
        };
        let mut sink = Collect::default();
        let status = run(ctx, &mut sink, Shutdown::manual());
        (status, sink)
    }

    fn diamond() -> Vec<PlannedStep> {
        vec![
            exec_step("a/1", "h1", &[], "a1"),
            exec_step("b/1", "h2", &["a/1"], "b1"),
            exec_step("c/1", "h3", &["a/1"], "c1"),
            exec_step("d/1", "h1", &["b/1", "c/1"], "d1"),
        ]
    }

    #[test]
    fn steps_run_after_what_they_wait_for() {
        let fake = Arc::new(Fake::default());
        let (status, events) = go(
            plan(Mode::Restore, false, diamond()),
            fake.clone(),
            HashMap::new(),
            RunOptions::default(),
        );
        assert_eq!(status, RunStatus::Succeeded);
        let cmds = fake.commands();
        assert_eq!(cmds.first().unwrap(), "a1");
        assert_eq!(cmds.last().unwrap(), "d1");
        assert_eq!(cmds.len(), 4);
        assert!(matches!(
            events.0.last(),
            Some(Event::RunFinished {
                status: RunStatus::Succeeded,
                ..
            })
        ));
    }

    #[test]
    fn per_host_limit_is_respected() {
        let steps: Vec<PlannedStep> = (0..6)
            .map(|i| exec_step(&format!("s{i}/x"), "h1", &[], &format!("c{i}")))
            .collect();
        let fake = Arc::new(Fake {
            hold: StdDuration::from_millis(30),
            ..Fake::default()
        });
        let options = RunOptions {
            per_host: 2,
            ..RunOptions::default()
        };
        let (status, _) = go(
            plan(Mode::Restore, false, steps),
            fake.clone(),
            HashMap::new(),
            options,
        );
        assert_eq!(status, RunStatus::Succeeded);
        assert_eq!(*fake.max_per_host.lock().unwrap(), 2);
    }

    #[test]
    fn planned_failover_stops_and_undoes_in_reverse_order() {
        let mut steps = diamond();
        steps[2] = exec_step("c/1", "h3", &["b/1"], "c1 fail");
        let fake = Arc::new(Fake::default());
        let (status, events) = go(
            plan(Mode::Failover, false, steps),
            fake.clone(),
            HashMap::new(),
            RunOptions::default(),
        );
        assert_eq!(status, RunStatus::Failed);
        assert_eq!(
            fake.commands(),
            ["a1", "b1", "c1 fail", "undo b1", "undo a1"]
        );
        assert_eq!(events.status("c/1"), Some(StepStatus::Failed));
        assert_eq!(events.status("d/1"), Some(StepStatus::Blocked));
        let undone: Vec<&str> = events
            .0
            .iter()
            .filter_map(|e| match e {
                Event::UndoFinished { step, ok: true, .. } => Some(step.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(undone, ["b/1", "a/1"]);
    }

    /// A start undone stops the vm only if it was not running before the step: the state its
    /// driver's `status` told just before, journaled.
    #[test]
    fn a_start_is_undone_only_for_a_vm_that_was_not_running_before() {
        let start = |id: &str, after: &[&str], status: &str| {
            let mut s = exec_step(id, "h1", after, &format!("start {id}"));
            s.action_spec = Action::Exec {
                run: Command::text(format!("start {id}")),
                verify: None,
                undo: Some(Command::text(format!("stop {id}"))),
            };
            s.undo = Some(format!("stop {id}"));
            s.state_before = Some(Command::text(status));
            s
        };
        let steps = vec![
            start("a/1", &[], "status a says:running"),
            start("b/1", &["a/1"], "status b says:shut off"),
            start("c/1", &["b/1"], "status c unreachable"),
            exec_step("d/1", "h1", &["c/1"], "d1 fail"),
        ];
        let fake = Arc::new(Fake::default());
        let (status, events) = go(
            plan(Mode::Failover, false, steps),
            fake.clone(),
            HashMap::new(),
            RunOptions::default(),
        );
        assert_eq!(status, RunStatus::Failed);
        let stops: Vec<String> = fake
            .commands()
            .into_iter()
            .filter(|c| c.starts_with("stop"))
            .collect();
        assert_eq!(stops, ["stop b/1"]);
        let before: Vec<(&str, Option<bool>)> = events
            .0
            .iter()
            .filter_map(|e| match e {
                Event::VmStateBefore { step, running, .. } => Some((step.as_str(), *running)),
                _ => None,
            })
            .collect();
        assert_eq!(
            before,
            [("a/1", Some(true)), ("b/1", Some(false)), ("c/1", None)]
        );
        let undone: Vec<(&str, bool, String)> = events
            .0
            .iter()
            .filter_map(|e| match e {
                Event::UndoFinished {
                    step, ok, message, ..
                } => Some((step.as_str(), *ok, message.clone().unwrap_or_default())),
                _ => None,
            })
            .collect();
        assert_eq!(undone.len(), 3, "{undone:?}");
        assert_eq!(undone[0].0, "c/1");
        assert!(
            !undone[0].1 && undone[0].2.contains("could not be told"),
            "{undone:?}"
        );
        assert_eq!((undone[1].0, undone[1].1), ("b/1", true));
        assert_eq!(undone[2].0, "a/1");
        assert!(
            undone[2].1 && undone[2].2.contains("already running"),
            "{undone:?}"
        );
    }

    #[test]
    fn no_rollback_leaves_completed_steps() {
        let mut steps = diamond();
        steps[1] = exec_step("b/1", "h2", &["a/1"], "b1 fail");
        let fake = Arc::new(Fake::default());
        let options = RunOptions {
            rollback: false,
            ..RunOptions::default()
        };
        let (status, _) = go(
            plan(Mode::Failback, false, steps),
            fake.clone(),
            HashMap::new(),
            options,
        );
        assert_eq!(status, RunStatus::Failed);
        assert!(!fake.commands().iter().any(|c| c.starts_with("undo")));
    }

    #[test]
    fn emergency_keeps_going_on_independent_branches() {
        let mut steps = diamond();
        steps[1] = exec_step("b/1", "h2", &["a/1"], "b1 fail");
        steps.push(exec_step("e/1", "h4", &["c/1"], "e1"));
        let fake = Arc::new(Fake::default());
        let (status, events) = go(
            plan(Mode::Failover, true, steps),
            fake.clone(),
            HashMap::new(),
            RunOptions::default(),
        );
        assert_eq!(status, RunStatus::Partial);
        assert!(fake.commands().contains(&"e1".to_string()));
        assert_eq!(events.status("d/1"), Some(StepStatus::Blocked));
        assert_eq!(events.status("e/1"), Some(StepStatus::Done));
        assert!(!fake.commands().iter().any(|c| c.starts_with("undo")));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_until_success() {
        let mut step = exec_step("a/1", "h1", &[], "flaky:3");
        step.retries = 2;
        let fake = Arc::new(Fake::default());
        let ctx = RunContext {
            plan: plan(Mode::Restore, false, vec![step]),
            transport: fake.clone(),
            confirmations: Arc::new(Confirm(Mutex::new(0))),
            secrets: env_secrets(),
            options: RunOptions::default(),
            prior: HashMap::new(),
        };
        let mut sink = Collect::default();
        let status = execute(ctx, &mut sink, Shutdown::manual()).await;
        assert_eq!(status, RunStatus::Succeeded);
        assert_eq!(fake.commands().len(), 3);
        assert!(matches!(
            sink.0
                .iter()
                .rev()
                .find(|e| matches!(e, Event::StepFinished { .. })),
            Some(Event::StepFinished { attempt: 3, .. })
        ));
    }

    #[test]
    fn verify_decides_whether_a_step_is_done() {
        let mut step = exec_step("a/1", "h1", &[], "start");
        step.action_spec = Action::Exec {
            run: Command::text("start"),
            verify: Some(Command::text("check fail")),
            undo: None,
        };
        let (status, events) = go(
            plan(Mode::Restore, false, vec![step]),
            Arc::new(Fake::default()),
            HashMap::new(),
            RunOptions::default(),
        );
        assert_eq!(status, RunStatus::Failed);
        assert_eq!(events.status("a/1"), Some(StepStatus::Failed));
    }

    #[test]
    fn manual_steps_wait_for_a_confirmation_and_record_it() {
        let mut step = exec_step("power/generators", "h1", &[], "");
        step.host = None;
        step.action_spec = Action::Manual {
            instructions: "Connect the generators".into(),
        };
        let options = RunOptions {
            confirmation_poll: StdDuration::from_millis(5),
            ..RunOptions::default()
        };
        let (status, events) = go(
            plan(Mode::Restore, false, vec![step]),
            Arc::new(Fake::default()),
            HashMap::new(),
            options,
        );
        assert_eq!(status, RunStatus::Succeeded);
        assert!(
            events
                .0
                .iter()
                .any(|e| matches!(e, Event::WaitingForOperator { .. }))
        );
        assert!(
            events
                .0
                .iter()
                .any(|e| matches!(e, Event::Confirmed { by, .. } if by == "sofia"))
        );
    }

    /// A transport that writes each command it runs into a shared record, runs it after
    /// `hold`, and answers as `Fake` would (or stays silent past its deadline for `frozen`).
    struct Recorder {
        record: Arc<Mutex<Vec<String>>>,
        hold: StdDuration,
    }

    impl Transport for Recorder {
        fn exec(
            &self,
            _host: &str,
            command: &str,
            deadline: StdDuration,
        ) -> Result<ExecOutput, SshError> {
            self.record.lock().unwrap().push(format!("ran {command}"));
            if command.contains("frozen") {
                // A transport that does not keep its deadline (a call stuck in a library).
                std::thread::sleep(deadline + StdDuration::from_secs(60));
            } else if command.contains("hung") {
                // A host that never answers: the transport gives up at the deadline.
                std::thread::sleep(deadline);
                return Err(SshError::Hung {
                    host: "h1".into(),
                    secs: deadline.as_secs(),
                });
            }
            std::thread::sleep(self.hold);
            self.record.lock().unwrap().push(format!("ended {command}"));
            Ok(ExecOutput {
                exit_code: 0,
                stdout: String::new(),
                stderr: String::new(),
                truncated: false,
                timed_out: false,
                duration: StdDuration::ZERO,
            })
        }

        fn pipe(
            &self,
            from: &str,
            _r: &str,
            _to: &str,
            _w: &str,
            _d: StdDuration,
        ) -> Result<PipeOutput, SshError> {
            Err(SshError::UnknownHost(from.into()))
        }
    }

    /// A journal that takes its time to flush a step's start, and may stop recording.
    struct SlowJournal {
        record: Arc<Mutex<Vec<String>>>,
        events: Vec<Event>,
        /// Fails from the first `step_finished` on, as a full disk would.
        fail_at_first_finish: bool,
        failed: bool,
    }

    impl Sink for SlowJournal {
        fn emit(&mut self, event: &Event) -> Result<(), Unrecorded> {
            if self.fail_at_first_finish && matches!(event, Event::StepFinished { .. }) {
                self.failed = true;
            }
            if self.failed {
                self.record.lock().unwrap().push(match event {
                    Event::StepFinished { step, .. } => format!("unrecorded end of {step}"),
                    _ => "unrecorded".into(),
                });
                return Err(Unrecorded("no space left on device".into()));
            }
            if let Event::StepStarted { step, .. } = event {
                std::thread::sleep(StdDuration::from_millis(50));
                self.record.lock().unwrap().push(format!("recorded {step}"));
            }
            self.events.push(event.clone());
            Ok(())
        }
    }

    fn recorded_run(
        steps: Vec<PlannedStep>,
        mode: Mode,
        fail_at_first_finish: bool,
    ) -> (RunStatus, Vec<String>, Vec<Event>) {
        let record = Arc::new(Mutex::new(Vec::new()));
        let ctx = RunContext {
            plan: plan(mode, false, steps),
            transport: Arc::new(Recorder {
                record: record.clone(),
                hold: StdDuration::from_millis(100),
            }),
            confirmations: Arc::new(Confirm(Mutex::new(0))),
            secrets: env_secrets(),
            options: RunOptions::default(),
            prior: HashMap::new(),
        };
        let mut journal = SlowJournal {
            record: record.clone(),
            events: Vec::new(),
            fail_at_first_finish,
            failed: false,
        };
        let status = run(ctx, &mut journal, Shutdown::manual());
        let record = record.lock().unwrap().clone();
        (status, record, journal.events)
    }

    #[test]
    fn a_step_runs_only_once_its_start_is_recorded() {
        let (status, record, _) = recorded_run(diamond(), Mode::Restore, false);
        assert_eq!(status, RunStatus::Succeeded);
        for (step, command) in [("a/1", "a1"), ("b/1", "b1"), ("c/1", "c1"), ("d/1", "d1")] {
            let recorded = record.iter().position(|r| *r == format!("recorded {step}"));
            let ran = record.iter().position(|r| *r == format!("ran {command}"));
            assert!(
                recorded.is_some() && recorded < ran,
                "{step} ran before its start was recorded: {record:?}"
            );
        }
    }

    #[test]
    fn a_journal_that_fails_stops_the_run_and_lets_running_steps_finish() {
        // Two steps run at once; the first end cannot be recorded. Nothing starts after that,
        // not even the drill's cleanup; the other running step finishes.
        let a = exec_step("a/1", "h1", &[], "a1");
        let b = exec_step("b/1", "h2", &[], "b1");
        let c = exec_step("c/1", "h1", &["a/1", "b/1"], "c1");
        let mut cleanup = exec_step("c/cleanup", "h2", &["c/1"], "remove overlay");
        cleanup.phase = Phase::Cleanup;
        let (status, record, events) = recorded_run(vec![a, b, c, cleanup], Mode::Drill, true);
        assert_eq!(status, RunStatus::Interrupted);
        let ran: Vec<&String> = record.iter().filter(|r| r.starts_with("ran ")).collect();
        assert_eq!(ran.len(), 2, "{record:?}");
        assert!(ran.contains(&&"ran a1".to_string()) && ran.contains(&&"ran b1".to_string()));
        for step in ["a/1", "b/1"] {
            assert!(
                record.contains(&format!("unrecorded end of {step}")),
                "{step} did not finish: {record:?}"
            );
        }
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::StepFinished { .. })),
            "{events:?}"
        );
    }

    #[test]
    fn a_stopped_drill_cleans_up_only_once_its_running_steps_ended() {
        // The copy of `a` is being started when the stop comes; the check the cleanup waits
        // for is cancelled at once. The copy must not be removed before it has started.
        let start = exec_step("a/start", "h1", &[], "start a");
        let mut check = exec_step("b/check", "h2", &[], "");
        check.host = None;
        check.action_spec = Action::Manual {
            instructions: "never confirmed".into(),
        };
        let mut remove = exec_step("a/remove", "h1", &["b/check"], "remove a");
        remove.phase = Phase::Cleanup;
        let record = Arc::new(Mutex::new(Vec::new()));
        struct Never;
        impl Confirmations for Never {
            fn confirmation(&self, _step: &str) -> Option<Confirmation> {
                None
            }
        }
        let ctx = RunContext {
            plan: plan(Mode::Drill, false, vec![start, check, remove]),
            transport: Arc::new(Recorder {
                record: record.clone(),
                hold: StdDuration::from_millis(400),
            }),
            confirmations: Arc::new(Never),
            secrets: env_secrets(),
            options: RunOptions::default(),
            prior: HashMap::new(),
        };
        let shutdown = Shutdown::manual();
        let signal = shutdown.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(StdDuration::from_millis(100));
            signal.trigger("SIGTERM");
        });
        let mut sink = Collect::default();
        assert_eq!(run(ctx, &mut sink, shutdown), RunStatus::Interrupted);
        stopper.join().unwrap();
        let record = record.lock().unwrap().clone();
        let at = |what: &str| record.iter().position(|r| r == what);
        assert!(
            at("ended start a").is_some() && at("ended start a") < at("ran remove a"),
            "{record:?}"
        );
        assert_eq!(sink.status("a/remove"), Some(StepStatus::Done));
    }

    #[test]
    fn a_fault_inside_one_step_fails_that_step_not_the_run() {
        struct Faulty;
        impl Confirmations for Faulty {
            fn confirmation(&self, step: &str) -> Option<Confirmation> {
                if step == "m/1" {
                    panic!("confirmation store unreadable");
                }
                None
            }
        }
        let mut manual = exec_step("m/1", "h1", &[], "");
        manual.host = None;
        manual.action_spec = Action::Manual {
            instructions: "check".into(),
        };
        let after = exec_step("m/2", "h1", &["m/1"], "m2");
        let other = exec_step("o/1", "h2", &[], "o1");
        let fake = Arc::new(Fake::default());
        let ctx = RunContext {
            plan: plan(Mode::Restore, false, vec![manual, after, other]),
            transport: fake.clone(),
            confirmations: Arc::new(Faulty),
            secrets: env_secrets(),
            options: RunOptions::default(),
            prior: HashMap::new(),
        };
        let mut sink = Collect::default();
        let status = run(ctx, &mut sink, Shutdown::manual());
        assert_eq!(status, RunStatus::Partial);
        assert_eq!(sink.status("m/1"), Some(StepStatus::Failed));
        assert_eq!(sink.status("m/2"), Some(StepStatus::Blocked));
        assert_eq!(sink.status("o/1"), Some(StepStatus::Done));
        let message = sink
            .0
            .iter()
            .find_map(|e| match e {
                Event::StepFinished { step, message, .. } if step == "m/1" => message.clone(),
                _ => None,
            })
            .unwrap();
        assert!(
            message.contains("reprise failed inside this step")
                && message.contains("confirmation store unreadable"),
            "{message}"
        );
    }

    fn timed(id: &str, command: &str, timeout_s: u64, retries: u32) -> PlannedStep {
        let mut step = exec_step(id, "h1", &[], command);
        step.timeout_s = Some(timeout_s);
        step.retries = retries;
        step
    }

    #[test]
    fn a_host_that_does_not_answer_times_the_step_out_at_its_deadline() {
        // The transport gives up at the deadline it is given: the whole step's, not a fresh
        // one per attempt, and the step is timed out, not retried.
        let (status, record, events) =
            recorded_run(vec![timed("a/1", "hung", 2, 3)], Mode::Restore, false);
        assert_eq!(status, RunStatus::Failed);
        assert_eq!(record.iter().filter(|r| *r == "ran hung").count(), 1);
        let (status, message, ms) = events
            .iter()
            .find_map(|e| match e {
                Event::StepFinished {
                    status,
                    message,
                    duration_ms,
                    ..
                } => Some((*status, message.clone().unwrap_or_default(), *duration_ms)),
                _ => None,
            })
            .unwrap();
        assert_eq!(status, StepStatus::TimedOut, "{message}");
        assert!(message.contains("timed out after 2s"), "{message}");
        assert!(ms < 4000, "{ms} ms");
    }

    #[test]
    fn a_transport_stuck_past_the_deadline_does_not_hold_the_step() {
        let (_, _, events) = recorded_run(vec![timed("a/1", "frozen", 2, 0)], Mode::Restore, false);
        let (status, message, ms) = events
            .iter()
            .find_map(|e| match e {
                Event::StepFinished {
                    status,
                    message,
                    duration_ms,
                    ..
                } => Some((*status, message.clone().unwrap_or_default(), *duration_ms)),
                _ => None,
            })
            .unwrap();
        assert_eq!(status, StepStatus::TimedOut, "{message}");
        assert!(message.contains("no answer from h1"), "{message}");
        // The deadline, then the grace for the remote KILL: not the minute the call hangs.
        assert!(ms < 2000 + LATE.as_millis() as u64 + 2000, "{ms} ms");
    }

    #[test]
    fn a_drill_whose_cleanup_ran_only_finishes_that_cleanup() {
        let start = |vm: &str| exec_step(&format!("{vm}/start"), "h1", &[], &format!("start {vm}"));
        let mut check_a = exec_step("a/healthy", "h1", &["a/start"], "check a");
        check_a.timeout_s = Some(600);
        let remove = |vm: &str, after: &[&str]| {
            let mut s = exec_step(
                &format!("{vm}/remove"),
                "h2",
                after,
                &format!("remove {vm}"),
            );
            s.phase = Phase::Cleanup;
            s.idempotent = true;
            s
        };
        let steps = vec![
            start("a"),
            check_a,
            start("b"),
            remove("a", &["a/healthy", "b/start"]),
            remove("b", &["a/healthy", "b/start"]),
        ];
        let plan = plan(Mode::Drill, false, steps);
        let at = Utc::now();
        let started = |step: &str| Event::StepStarted {
            at,
            step: step.into(),
            attempt: 1,
            host: None,
        };
        let finished = |step: &str, status| Event::StepFinished {
            at,
            step: step.into(),
            attempt: 1,
            status,
            duration_ms: 1,
            message: None,
        };
        // Stopped after a's copy started: the rest was cancelled, a's copy removed, and the
        // orchestrator died while removing b's.
        let mut events = vec![
            started("a/start"),
            finished("a/start", StepStatus::Done),
            Event::StopRequested {
                at,
                reason: "SIGTERM".into(),
            },
            finished("a/healthy", StepStatus::Cancelled),
            finished("b/start", StepStatus::Cancelled),
            started("a/remove"),
            finished("a/remove", StepStatus::Done),
            started("b/remove"),
        ];
        let mut prior = prior_from_journal(&events);
        assert_eq!(drill_cleaned_up(&plan, &events, &mut prior), None);
        assert_eq!(prior.get("a/healthy"), Some(&Prior::DrillOver));
        assert_eq!(prior.get("b/start"), Some(&Prior::DrillOver));
        let fake = Arc::new(Fake::default());
        let (status, sink) = go(plan.clone(), fake.clone(), prior, RunOptions::default());
        // Only what the cleanup left: no copy re-checked, none started again.
        assert_eq!(fake.commands(), ["remove b"]);
        assert_eq!(sink.status("b/remove"), Some(StepStatus::Done));
        assert_eq!(sink.status("a/healthy"), Some(StepStatus::Cancelled));
        assert_eq!(status, RunStatus::Partial);
        // Once every cleanup step is done, the drill is over.
        events.push(finished("b/remove", StepStatus::Done));
        let mut prior = prior_from_journal(&events);
        assert_eq!(drill_cleaned_up(&plan, &events, &mut prior), Some(at));
        // A drill stopped before its cleanup began carries on as any run.
        let early = &events[..2];
        let mut prior = prior_from_journal(early);
        assert_eq!(drill_cleaned_up(&plan, early, &mut prior), None);
        assert_eq!(prior.get("b/start"), None);
    }

    #[test]
    fn resume_never_repeats_finished_steps_and_verifies_interrupted_ones() {
        let mut steps = diamond();
        steps[1].action_spec = Action::Exec {
            run: Command::text("b1"),
            verify: Some(Command::text("b1 verify")),
            undo: None,
        };
        let prior = HashMap::from([
            ("a/1".to_string(), Prior::Done),
            ("b/1".to_string(), Prior::Interrupted),
        ]);
        let fake = Arc::new(Fake::default());
        let (status, _) = go(
            plan(Mode::Restore, false, steps),
            fake.clone(),
            prior,
            RunOptions::default(),
        );
        assert_eq!(status, RunStatus::Succeeded);
        let cmds = fake.commands();
        assert!(!cmds.contains(&"a1".to_string()));
        assert!(cmds.contains(&"b1 verify".to_string()));
        assert!(!cmds.contains(&"b1".to_string()), "{cmds:?}");
    }

    #[test]
    fn a_resumed_step_done_after_one_run_again_waits_for_it_and_a_check_is_run_again() {
        // A planned switch: stop the primary, check the standby, promote it, note it. The
        // first attempt stopped, checked and noted, then failed to promote: the roll-back
        // started the primary again. Resumed, the stop runs again first; the check, safe to
        // run twice, is run again after it; the note is not run twice but still counts only
        // once the stop is done again; then the promotion.
        let mut steps = vec![
            exec_step("a/stop", "h1", &[], "stop"),
            exec_step("a/check", "h2", &["a/stop"], "check"),
            exec_step("a/note", "h4", &["a/check"], "note"),
            exec_step("a/promote", "h3", &["a/note"], "promote"),
        ];
        steps[1].idempotent = true;
        let prior = HashMap::from([
            ("a/check".to_string(), Prior::Done),
            ("a/note".to_string(), Prior::Done),
        ]);
        let fake = Arc::new(Fake {
            hold: StdDuration::from_millis(30),
            ..Fake::default()
        });
        let (status, _) = go(
            plan(Mode::Failover, false, steps),
            fake.clone(),
            prior,
            RunOptions::default(),
        );
        assert_eq!(status, RunStatus::Succeeded);
        assert_eq!(fake.commands(), ["stop", "check", "promote"]);

        // Stopped right after the check, resumed hours later: every step before it is done,
        // and still a lag read is taken again before the switch.
        let mut steps = vec![
            exec_step("a/stop", "h1", &[], "stop"),
            exec_step("a/lag", "h2", &["a/stop"], "lag"),
            exec_step("a/promote", "h3", &["a/lag"], "promote"),
        ];
        steps[1].action_spec = Action::Lag {
            run: Command::text("echo 3"),
            timeout: crate::duration::Duration::from_secs(5),
            rpo: None,
            hold: true,
        };
        let prior = HashMap::from([
            ("a/stop".to_string(), Prior::Done),
            ("a/lag".to_string(), Prior::Done),
        ]);
        let fake = Arc::new(Fake::default());
        let (_, events) = go(
            plan(Mode::Failover, false, steps),
            fake.clone(),
            prior,
            RunOptions::default(),
        );
        let cmds = fake.commands();
        assert!(!cmds.contains(&"stop".to_string()), "{cmds:?}");
        assert!(
            events
                .0
                .iter()
                .any(|e| matches!(e, Event::StepStarted { step, .. } if step == "a/lag")),
            "the lag was not read again"
        );
        // Once the switch is done, nothing reads it again.
        let prior = HashMap::from([
            ("a/stop".to_string(), Prior::Done),
            ("a/lag".to_string(), Prior::Done),
            ("a/promote".to_string(), Prior::Done),
        ]);
        let steps = plan(Mode::Failover, false, {
            let mut steps = vec![
                exec_step("a/stop", "h1", &[], "stop"),
                exec_step("a/lag", "h2", &["a/stop"], "lag"),
                exec_step("a/promote", "h3", &["a/lag"], "promote"),
            ];
            steps[1].action_spec = Action::Lag {
                run: Command::text("echo 3"),
                timeout: crate::duration::Duration::from_secs(5),
                rpo: None,
                hold: true,
            };
            steps
        });
        let (_, events) = go(
            steps,
            Arc::new(Fake::default()),
            prior,
            RunOptions::default(),
        );
        assert!(
            !events
                .0
                .iter()
                .any(|e| matches!(e, Event::StepStarted { .. })),
            "a step of a finished switch ran again"
        );
    }

    #[test]
    fn secrets_are_resolved_for_the_host_and_redacted_from_output() {
        let mut step = exec_step("a/1", "h1", &[], "");
        step.action_spec = Action::Exec {
            run: Command {
                parts: vec![
                    crate::template::CommandPart::Text("login ".into()),
                    crate::template::CommandPart::Secret {
                        env: "PW".into(),
                        quote: true,
                    },
                ],
            },
            verify: None,
            undo: None,
        };
        let fake = Arc::new(Fake::default());
        let (status, events) = go(
            plan(Mode::Restore, false, vec![step]),
            fake.clone(),
            HashMap::new(),
            RunOptions::default(),
        );
        assert_eq!(status, RunStatus::Succeeded);
        assert_eq!(fake.commands(), ["login hunter2"]);
        let out = events
            .0
            .iter()
            .find_map(|e| match e {
                Event::StepOutput { stdout, .. } => Some(stdout.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(out, "ran login <secret:PW>");
    }

    #[test]
    fn prior_state_is_read_from_a_journal() {
        let at = Utc::now();
        let events = vec![
            Event::StepStarted {
                at,
                step: "a/1".into(),
                attempt: 1,
                host: None,
            },
            Event::StepFinished {
                at,
                step: "a/1".into(),
                attempt: 1,
                status: StepStatus::Done,
                duration_ms: 1,
                message: None,
            },
            Event::StepStarted {
                at,
                step: "b/1".into(),
                attempt: 1,
                host: None,
            },
            Event::StepStarted {
                at,
                step: "c/1".into(),
                attempt: 1,
                host: None,
            },
            Event::StepFinished {
                at,
                step: "c/1".into(),
                attempt: 1,
                status: StepStatus::Failed,
                duration_ms: 1,
                message: None,
            },
        ];
        let prior = prior_from_journal(&events);
        assert_eq!(prior.get("a/1"), Some(&Prior::Done));
        assert_eq!(prior.get("b/1"), Some(&Prior::Interrupted));
        assert_eq!(prior.get("c/1"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn ctrl_c_stops_new_steps_but_a_drill_still_cleans_up() {
        // a/1 waits for a person; b/1 waits for a/1; the cleanup step waits for both.
        let mut manual = exec_step("a/1", "h1", &[], "");
        manual.host = None;
        manual.action_spec = Action::Manual {
            instructions: "never confirmed".into(),
        };
        let later = exec_step("b/1", "h1", &["a/1"], "b1");
        let mut cleanup = exec_step("a/cleanup", "h2", &["a/1", "b/1"], "remove overlay");
        cleanup.phase = Phase::Cleanup;
        struct Never;
        impl Confirmations for Never {
            fn confirmation(&self, _step: &str) -> Option<Confirmation> {
                None
            }
        }
        let fake = Arc::new(Fake::default());
        let ctx = RunContext {
            plan: plan(Mode::Drill, false, vec![manual, later, cleanup]),
            transport: fake.clone(),
            confirmations: Arc::new(Never),
            secrets: env_secrets(),
            options: RunOptions::default(),
            prior: HashMap::new(),
        };
        let shutdown = Shutdown::manual();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(StdDuration::from_secs(30)).await;
            signal.trigger("SIGTERM");
        });
        let mut sink = Collect::default();
        let status = execute(ctx, &mut sink, shutdown).await;
        assert_eq!(status, RunStatus::Interrupted);
        // The journal says why the run stopped.
        assert!(
            sink.0
                .iter()
                .any(|e| matches!(e, Event::StopRequested { reason, .. } if reason == "SIGTERM")),
            "{:?}",
            sink.0
        );
        assert_eq!(sink.status("a/1"), Some(StepStatus::Cancelled));
        assert_eq!(sink.status("b/1"), Some(StepStatus::Cancelled));
        assert_eq!(sink.status("a/cleanup"), Some(StepStatus::Done));
        assert_eq!(fake.commands(), ["remove overlay"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_host_fails_at_once_while_a_silent_one_is_tried_again() {
        // A changed host key will not change by trying again: no retries, no polling.
        let mut exec_refused = exec_step("a/run", "h1", &[], "changed-key run");
        exec_refused.retries = 3;
        let mut check_refused = exec_step("b/ready", "h2", &[], "");
        check_refused.timeout_s = Some(600);
        check_refused.action_spec = Action::Probe {
            run: Command::text("changed-key probe"),
            interval: Duration(5),
        };
        // A host that does not answer may come back: retried with backoff.
        let mut silent = exec_step("c/run", "h3", &[], "unreachable run");
        silent.retries = 2;
        let fake = Arc::new(Fake::default());
        let ctx = RunContext {
            plan: plan(
                Mode::Restore,
                false,
                vec![exec_refused, check_refused, silent],
            ),
            transport: fake.clone(),
            confirmations: Arc::new(Confirm(Mutex::new(0))),
            secrets: env_secrets(),
            options: RunOptions::default(),
            prior: HashMap::new(),
        };
        let mut sink = Collect::default();
        let begin = Instant::now();
        execute(ctx, &mut sink, Shutdown::manual()).await;
        assert_eq!(sink.status("a/run"), Some(StepStatus::Failed));
        assert_eq!(sink.status("b/ready"), Some(StepStatus::Failed));
        assert_eq!(sink.status("c/run"), Some(StepStatus::Failed));
        let tries = |c: &str| fake.commands().iter().filter(|x| *x == c).count();
        assert_eq!(tries("changed-key run"), 1);
        assert_eq!(tries("changed-key probe"), 1);
        assert_eq!(tries("unreachable run"), 3);
        // The refused check did not wait for its 600 s deadline.
        assert!(
            begin.elapsed() < StdDuration::from_secs(60),
            "{:?}",
            begin.elapsed()
        );
        let message = sink
            .0
            .iter()
            .find_map(|e| match e {
                Event::StepFinished { step, message, .. } if step == "b/ready" => message.clone(),
                _ => None,
            })
            .unwrap();
        assert!(
            message.contains("SHA256:old") && message.contains("SHA256:new"),
            "{message}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn command_checks_poll_until_healthy_or_their_deadline() {
        let mut healthy_later = exec_step("a/ready", "h1", &[], "");
        healthy_later.action_spec = Action::Probe {
            run: Command::text("flaky:3"),
            interval: Duration(5),
        };
        let mut never = exec_step("b/ready", "h2", &[], "");
        never.timeout_s = Some(20);
        never.action_spec = Action::Probe {
            run: Command::text("fail"),
            interval: Duration(5),
        };
        let fake = Arc::new(Fake::default());
        let ctx = RunContext {
            plan: plan(Mode::Restore, false, vec![healthy_later, never]),
            transport: fake.clone(),
            confirmations: Arc::new(Confirm(Mutex::new(0))),
            secrets: env_secrets(),
            options: RunOptions::default(),
            prior: HashMap::new(),
        };
        let mut sink = Collect::default();
        execute(ctx, &mut sink, Shutdown::manual()).await;
        assert_eq!(sink.status("a/ready"), Some(StepStatus::Done));
        assert_eq!(sink.status("b/ready"), Some(StepStatus::TimedOut));
        let cmds = fake.commands();
        assert_eq!(cmds.iter().filter(|c| *c == "flaky:3").count(), 3);
        // Every 5 s for 20 s: a handful of tries, not a busy loop.
        let tries = cmds.iter().filter(|c| *c == "fail").count();
        assert!((4..=6).contains(&tries), "{tries} tries");
    }
}
