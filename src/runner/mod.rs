//! The runner: executes a [`Plan`] as fast as its dependencies allow, within a global and a
//! per-host concurrency limit, and emits an [`Event`] for everything that happens.
//!
//! It owns the tokio runtime ([`run`] is synchronous for its callers); blocking SSH calls go to
//! `spawn_blocking`. It never prints: the journal and the terminal view consume its events.
//! Cancellation (Ctrl-C, tests) is passed in as a watch channel.
//!
//! This file schedules (the DAG, the limits, a stop, the roll-back at the end); one step runs
//! in [`step`], by its kind: [`exec`], [`check`], [`operator`] (manual steps), [`replicate`],
//! and vm steps on the recovery copies ([`vm`], [`define`], through [`crate::replica::start`]);
//! [`hooks`] holds a replication's driver hooks, [`rollback`] undoes a failed switch, [`record`]
//! journals and reads back, [`context`] is what a run is given. None of them imports this file.

pub mod backup;
mod check;
mod context;
mod define;
mod exec;
mod hooks;
mod operator;
mod record;
mod replicate;
mod rollback;
mod step;
mod vm;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use crate::ssh::OUTPUT_LIMIT;
pub use context::{
    Confirmations, CopyRead, OtherSite, OtherSiteSays, PointChoice, Prior, RunContext, RunOptions,
    SecretResolver, Sink, Unrecorded, env_secrets,
};
pub use exec::{said_not_defined, said_running};
pub use record::{drill_cleaned_up, prior_from_journal};
pub use rollback::LEFT_RUNNING;

use crate::event::{Event, RunStatus, StepStatus};
use crate::plan::Plan;
use crate::runbook::{Mode, Phase};
use crate::shutdown::Shutdown;
use context::{Msg, Outcome};
use define::Defined;
use record::{Out, deliver, finished_event, stale_done_steps};

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

/// Where every step of a run stands, and what the scheduler knows of the run so far.
struct Board {
    plan: Arc<Plan>,
    /// Per step, the steps it waits for.
    after: Vec<Vec<usize>>,
    state: Vec<State>,
    /// Done before a resume, but after a step to be run again (see `stale_done_steps`).
    stale: HashSet<usize>,
    rerun: HashSet<usize>,
    per_host: HashMap<String, usize>,
    running: usize,
    /// No new main steps.
    halted: bool,
    interrupted: bool,
    planned_failure: bool,
    /// Whether a main step that fails stops the run (a planned switch) or not.
    keep_going: bool,
    done_order: Vec<usize>,
    /// What each vm step that succeeded defined before its command (undone with it).
    defined: HashMap<usize, Defined>,
}

/// The step tasks running, and which step each is.
struct Tasks {
    set: JoinSet<(Outcome, Option<Defined>)>,
    step: HashMap<tokio::task::Id, usize>,
}

/// What a step task needs from the loop.
struct Spawn {
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
    stop: watch::Receiver<bool>,
}

impl Board {
    /// The board of a run starting: steps a resume finds done are done, a drill's main steps
    /// whose cleanup already ran are cancelled (journaled).
    fn new(ctx: &RunContext, out: &mut Out<'_>) -> Board {
        let plan = ctx.plan.clone();
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
        let (stale, rerun) = stale_done_steps(&plan, &after, &ctx.prior);
        let mut state = vec![State::Pending; plan.steps.len()];
        // What an earlier attempt did and no roll-back undid: a roll-back of this one undoes
        // it too, after what this attempt does (in the plan's order: the order they ran in
        // where one waits for another).
        let mut done_order = Vec::new();
        for (i, s) in plan.steps.iter().enumerate() {
            match ctx.prior.get(&s.id) {
                Some(Prior::Done) if stale.contains(&i) => {}
                Some(Prior::Done) => {
                    state[i] = State::Finished(StepStatus::Done);
                    done_order.push(i);
                }
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
        Board {
            plan,
            after,
            state,
            stale,
            rerun,
            per_host: HashMap::new(),
            running: 0,
            halted: false,
            interrupted: false,
            planned_failure: false,
            keep_going,
            done_order,
            defined: HashMap::new(),
        }
    }

    /// Settles the steps that can no longer run (what they wait for failed, or the run is
    /// halted), journaled.
    fn settle(&mut self, out: &mut Out<'_>) {
        let plan = self.plan.clone();
        let mut changed = true;
        while changed {
            changed = false;
            for (i, step) in plan.steps.iter().enumerate() {
                if self.state[i] != State::Pending {
                    continue;
                }
                // Cleanup steps run whatever happened before them, unless the journal failed.
                if step.phase == Phase::Cleanup && out.failed.is_none() {
                    continue;
                }
                let (status, msg) = if let Some(&bad) = self.after[i]
                    .iter()
                    .find(|&&j| matches!(self.state[j], State::Finished(s) if !s.succeeded()))
                    .filter(|_| step.phase == Phase::Main)
                {
                    if self.state[bad] == State::Finished(StepStatus::Cancelled) {
                        let msg = format!("the run stopped before {}", plan.steps[bad].id);
                        (StepStatus::Cancelled, msg)
                    } else {
                        let msg = format!("blocked: {} did not succeed", plan.steps[bad].id);
                        (StepStatus::Blocked, msg)
                    }
                } else if self.halted {
                    let why = if out.failed.is_some() {
                        "not started: the journal cannot record it"
                    } else {
                        "the run was stopped before this step"
                    };
                    (StepStatus::Cancelled, why.to_string())
                } else {
                    continue;
                };
                self.state[i] = State::Finished(status);
                out.emit(&finished_event(step, 0, status, 0, Some(msg)));
                changed = true;
            }
        }
    }

    /// Starts every step that is ready, within the limits; `true` when a step done before a
    /// resume was settled as done again (the loop then looks again).
    fn start_ready(&mut self, ctx: &Arc<RunContext>, tasks: &mut Tasks, spawn: &Spawn) -> bool {
        let plan = self.plan.clone();
        // The cleanup comes after the whole main phase: when a stop cancels the steps it
        // waits for, it still waits for the main steps that run (a copy being started).
        let main_running = (0..plan.steps.len())
            .any(|j| self.state[j] == State::Running && plan.steps[j].phase == Phase::Main);
        let mut settled_again = false;
        for (i, step) in plan.steps.iter().enumerate() {
            if self.state[i] != State::Pending || self.running >= ctx.options.parallel.max(1) {
                continue;
            }
            let ready = match step.phase {
                Phase::Main => self.after[i]
                    .iter()
                    .all(|&j| self.state[j] == State::Finished(StepStatus::Done)),
                Phase::Cleanup => {
                    !main_running
                        && self.after[i]
                            .iter()
                            .all(|&j| matches!(self.state[j], State::Finished(_)))
                }
            };
            if !ready {
                continue;
            }
            // Done before, and not to be run again: it counts as done once what it came
            // after is done again.
            if self.stale.contains(&i) && !self.rerun.contains(&i) {
                self.state[i] = State::Finished(StepStatus::Done);
                self.done_order.push(i);
                settled_again = true;
                continue;
            }
            if let Some(h) = &step.host
                && self.per_host.get(h).copied().unwrap_or(0) >= ctx.options.per_host.max(1)
            {
                continue;
            }
            self.state[i] = State::Running;
            self.running += 1;
            if let Some(h) = &step.host {
                *self.per_host.entry(h.clone()).or_default() += 1;
            }
            let (ctx2, tx2, sd) = (ctx.clone(), spawn.tx.clone(), spawn.stop.clone());
            let prior = ctx
                .prior
                .get(&step.id)
                .copied()
                .filter(|_| !self.rerun.contains(&i));
            let task = tasks
                .set
                .spawn(async move { step::run_step(ctx2, i, prior, tx2, sd).await });
            tasks.step.insert(task.id(), i);
        }
        settled_again
    }

    /// A step's task ended: its end journaled, the limits freed; a main step that failed
    /// halts a planned switch.
    fn finished(&mut self, result: Outcome, made: Option<Defined>, out: &mut Out<'_>) {
        if let Some(d) = made {
            self.defined.insert(result.index, d);
        }
        let plan = self.plan.clone();
        let step = &plan.steps[result.index];
        self.running -= 1;
        if let Some(h) = &step.host {
            *self.per_host.get_mut(h).expect("counted") -= 1;
        }
        self.state[result.index] = State::Finished(result.status);
        out.emit(&finished_event(
            step,
            result.attempt,
            result.status,
            result.elapsed.as_millis() as u64,
            result.message,
        ));
        if result.status.succeeded() {
            self.done_order.push(result.index);
        } else if step.phase == Phase::Main
            && !self.keep_going
            && result.status != StepStatus::Cancelled
        {
            self.halted = true;
            self.planned_failure = true;
        }
    }

    /// How the run ended.
    fn status(&self, out: &Out<'_>) -> RunStatus {
        if self.interrupted || out.failed.is_some() {
            RunStatus::Interrupted
        } else if self.planned_failure {
            RunStatus::Failed
        } else if self
            .state
            .iter()
            .all(|s| *s == State::Finished(StepStatus::Done))
        {
            RunStatus::Succeeded
        } else if self.state.contains(&State::Finished(StepStatus::Done)) {
            RunStatus::Partial
        } else {
            RunStatus::Failed
        }
    }
}

/// Runs the plan on the current runtime.
pub async fn execute(ctx: RunContext, sink: &mut dyn Sink, shutdown: Shutdown) -> RunStatus {
    let mut out = Out::new(sink);
    // What earlier attempts found before their vm starts (this attempt's own replace them).
    out.running_before = ctx.options.running_before.clone();
    let mut board = Board::new(&ctx, &mut out);
    let ctx = Arc::new(ctx);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
    // What the steps watch: a stop asked from outside, or a journal that stopped recording.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut asked = shutdown.receiver();
    let mut tasks = Tasks {
        set: JoinSet::new(),
        step: HashMap::new(),
    };
    let spawn = Spawn { tx, stop: stop_rx };
    loop {
        if out.failed.is_some() && !board.halted {
            // Nothing may run that the journal does not record: not even a cleanup step.
            board.halted = true;
            let _ = stop_tx.send(true);
        }
        // Settle steps that can no longer run, then start what is ready.
        board.settle(&mut out);
        let settled_again = board.start_ready(&ctx, &mut tasks, &spawn);
        if board.running == 0 && settled_again {
            continue;
        }
        if board.running == 0 {
            break;
        }
        tokio::select! {
            Some(msg) = rx.recv() => deliver(&mut out, msg),
            Some(joined) = tasks.set.join_next_with_id() => {
                // Events sent before the outcome come first.
                while let Ok(msg) = rx.try_recv() {
                    deliver(&mut out, msg);
                }
                let (result, made) = joined_outcome(joined, &mut tasks.step);
                board.finished(result, made, &mut out);
            },
            changed = asked.changed(), if !board.interrupted => {
                if changed.is_err() || *asked.borrow() {
                    board.interrupted = true;
                    board.halted = true;
                    let _ = stop_tx.send(true);
                    out.emit(&Event::StopRequested {
                        at: Utc::now(),
                        reason: shutdown.reason().unwrap_or("a stop was asked").to_string(),
                    });
                }
            },
        }
    }
    // A drill's backup sets, leased by its steps, are given back once its cleanup is over
    // (every cleanup step ended, whatever came of it): not when the journal stopped recording
    // (the cleanup did not run: a resume runs it, then gives them back).
    if ctx.plan.mode == Mode::Drill && out.failed.is_none() {
        let cleanup_over = ctx
            .plan
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.phase == Phase::Cleanup)
            .all(|(i, _)| matches!(board.state[i], State::Finished(_)));
        let leased: Vec<(String, crate::plan::BackupUse)> = ctx
            .plan
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &s.action_spec {
                crate::plan::Action::BackupCopy(c)
                    if !c.failover && board.state[i] != State::Pending =>
                {
                    Some((s.id.clone(), c.clone()))
                }
                _ => None,
            })
            .collect();
        if cleanup_over && !leased.is_empty() {
            for (step, why) in backup::give_back_drilled(&ctx, leased).await {
                tracing::warn!("{why}");
                out.emit(&Event::StepOutput {
                    at: Utc::now(),
                    step,
                    attempt: 1,
                    stdout: String::new(),
                    stderr: why,
                    exit_code: None,
                });
            }
        }
    }
    // Undoing is running commands too: not once the journal stopped recording.
    if board.planned_failure && ctx.options.rollback && out.failed.is_none() {
        // The vm starts that ran, whatever came of them: a roll-back starts no vm again next
        // to one of them still running.
        let starts: Vec<usize> = (0..ctx.plan.steps.len())
            .filter(|&i| {
                ctx.plan.steps[i].action.as_deref() == Some("start")
                    && matches!(
                        board.state[i],
                        State::Finished(
                            StepStatus::Done | StepStatus::Failed | StepStatus::TimedOut
                        )
                    )
            })
            .collect();
        let undone = rollback::undo_done(
            &ctx,
            &board.done_order,
            &starts,
            &mut board.defined,
            &mut out,
        )
        .await;
        for i in undone {
            board.state[i] = State::Finished(StepStatus::RolledBack);
        }
    }
    let status = board.status(&out);
    out.emit(&Event::RunFinished {
        at: Utc::now(),
        status,
    });
    status
}

/// The outcome of a step's task; a fault of reprise inside one step fails that step, not
/// the run.
fn joined_outcome(
    joined: Result<(tokio::task::Id, (Outcome, Option<Defined>)), tokio::task::JoinError>,
    task_step: &mut HashMap<tokio::task::Id, usize>,
) -> (Outcome, Option<Defined>) {
    match joined {
        Ok((id, result)) => {
            task_step.remove(&id);
            result
        }
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
