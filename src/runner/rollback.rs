//! The roll-back of a planned switch that failed: the steps done are undone in reverse order
//! (their `undo`), a vm start only for a vm that was not running before it, and what a start
//! defined goes with it.

use std::collections::HashMap;
use std::time::Duration as StdDuration;

use chrono::Utc;

use super::context::RunContext;
use super::define::{Defined, undo_define};
use super::exec::exec;
use super::record::Out;
use crate::event::Event;
use crate::plan::{Action, PlannedStep};

/// Undoes the steps done, last first, each journaled (`UndoFinished`): the steps undone.
/// `starts`: the vm starts of the run that ran (done, failed or timed out); the undo of a vm
/// stop of their service waits for each to say its vm is stopped (see [`still_running`]).
pub(super) async fn undo_done(
    ctx: &RunContext,
    done_order: &[usize],
    starts: &[usize],
    defined: &mut HashMap<usize, Defined>,
    out: &mut Out<'_>,
) -> Vec<usize> {
    let mut undone = Vec::new();
    for &i in done_order.iter().rev() {
        let step = &ctx.plan.steps[i];
        // What a run relies on of a backup set's copy, undone: a failover's backup step (the
        // recovery site no longer relies on the copy), a failback's copy back of the set (the
        // recovery site relies on its copy again, as a vm's copies are leased again as its
        // start is undone).
        let set = match &step.action_spec {
            Action::BackupCopy(copy) if copy.failover => Some(super::backup::undo(ctx, copy).await),
            Action::BackupCopy(_) => continue,
            Action::Replicate {
                what: crate::plan::Replicated::Backup(set),
                from_host,
                items,
                ..
            } if ctx.plan.mode == crate::runbook::Mode::Failback => {
                Some(super::replicate::undo_copied_back(ctx, step, set, from_host, items).await)
            }
            _ => None,
        };
        if let Some((ok, message)) = set {
            out.emit(&Event::UndoFinished {
                at: Utc::now(),
                step: step.id.clone(),
                ok,
                message: Some(message),
            });
            if ok {
                undone.push(i);
            }
            continue;
        }
        let Action::Exec {
            undo: Some(undo), ..
        } = &step.action_spec
        else {
            continue;
        };
        if step.kind == "vm"
            && step.action.as_deref() == Some("stop")
            && let Some(why) = still_running(ctx, step, starts).await
        {
            out.emit(&Event::UndoFinished {
                at: Utc::now(),
                step: step.id.clone(),
                ok: false,
                message: Some(format!(
                    "not undone: {why}; starting it again would run the vm of {} on both sites, writing diverging data. Stop the copy that must not run, then start this one by hand if needed",
                    step.service
                )),
            });
            continue;
        }
        // A start is undone by its driver's stop only for a vm that was not running before
        // it; a runbook's own undo runs as it did, whatever was found.
        let before = step
            .state_before
            .as_ref()
            .filter(|_| step.undo_stops)
            .map(|_| out.running_before.get(&step.id).copied().flatten());
        let (ok, mut message) = undo_step(ctx, step, undo, before).await;
        // A failover's start undone: the vm no longer runs on its recovery copies; a
        // failback's: its recovery copies hold its newest data again.
        if ok
            && before != Some(Some(true))
            && let Some(note) = super::vm::undone(ctx, step).await
        {
            message = Some(match message {
                Some(m) => format!("{m}; {note}"),
                None => note,
            });
        }
        // What the step defined goes with it, once the vm it started is stopped (for a vm
        // that was running before, only a definition it replaced is put back).
        let (ok, message) = match defined.remove(&i) {
            None => (ok, message),
            Some(d) => {
                let (put_back, note) = undo_definition(ctx, d, ok, before).await;
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
            undone.push(i);
        }
    }
    undone
}

/// Before the undo of a vm stop starts that vm again: why a start of the same service in
/// this run may still run it elsewhere (its driver's `status`, asked now, does not say it is
/// stopped, or does not fail as for a vm not defined there: its undo failed, it timed out,
/// the host stopped answering, the vm is paused), or `None`.
async fn still_running(ctx: &RunContext, stop: &PlannedStep, starts: &[usize]) -> Option<String> {
    for &k in starts {
        let start = &ctx.plan.steps[k];
        // The same vm, whichever service's step started it (a vm's steps name it; steps
        // that do not are matched by their service).
        let same_vm = match (&start.vm, &stop.vm) {
            (Some(a), Some(b)) => a == b,
            _ => start.service == stop.service,
        };
        if !same_vm || start.host == stop.host {
            continue;
        }
        let Some(status) = &start.state_before else {
            return Some(format!(
                "{} started the vm on {} and its driver cannot say whether it still runs",
                start.id,
                start.host.as_deref().unwrap_or("its host")
            ));
        };
        let said = exec(ctx, start, status, Some(StdDuration::from_secs(60))).await;
        // Stopped, or not defined there (as a failed start leaves it): a status that failed
        // otherwise (the hypervisor not answering, a timeout) says nothing, and the vm may
        // still run on the copies.
        let stopped = said.as_ref().is_ok_and(|o| {
            super::exec::said_running(o) == Some(false) || super::exec::said_not_defined(o)
        });
        if !stopped {
            let what = match &said {
                Ok(o) => o.stdout.trim().chars().take(200).collect::<String>(),
                Err(e) => e.message.clone(),
            };
            return Some(format!(
                "{} started the vm on {}, which its driver's status does not say is stopped now ({what})",
                start.id,
                start.host.as_deref().unwrap_or("its host")
            ));
        }
    }
    None
}

/// What the undo of a vm's start says when it leaves the vm running, as it was before the
/// step: the step's effect stays (the vm runs there), whatever the roll-back's success.
pub const LEFT_RUNNING: &str = "left running: it was already running before the step";

/// Runs a step's `undo`, unless its vm was running before it (or that is not known).
async fn undo_step(
    ctx: &RunContext,
    step: &PlannedStep,
    undo: &crate::template::Command,
    before: Option<Option<bool>>,
) -> (bool, Option<String>) {
    match before {
        Some(Some(true)) => (true, Some(LEFT_RUNNING.to_string())),
        Some(None) => (
            false,
            Some(
                "not undone: the vm's state before the step could not be told, so it may have been running already; stop it by hand if it was not"
                    .to_string(),
            ),
        ),
        _ => match exec(ctx, step, undo, step.timeout_s.map(StdDuration::from_secs)).await {
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
    }
}

/// Puts back what an undone start defined, once its vm is stopped: whether it did, and what.
async fn undo_definition(
    ctx: &RunContext,
    d: Defined,
    stopped_ok: bool,
    before: Option<Option<bool>>,
) -> (bool, String) {
    let stopped = stopped_ok && before == Some(Some(false));
    let was_running = before == Some(Some(true));
    if stopped || (was_running && d.previous.is_some()) {
        let transport = ctx.transport.clone();
        tokio::task::spawn_blocking(move || undo_define(transport.as_ref(), d))
            .await
            .unwrap_or_else(|e| (false, format!("what was defined could not be undone: {e}")))
    } else {
        (
            true,
            format!(
                "{} stays defined on {} from point {}, as this step defined it",
                d.name, d.host, d.point
            ),
        )
    }
}
