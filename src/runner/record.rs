//! What a run journals and reads back: the sink of its events ([`Out`]), a step's start
//! recorded before anything of it runs, its output and its end; and, for a resume, what the
//! journal says of each step ([`prior_from_journal`], [`drill_cleaned_up`],
//! `stale_done_steps`).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::context::{Msg, Prior, Sink, Unrecorded};
use crate::event::{Event, StepStatus};
use crate::plan::{Action, Plan, PlannedStep};
use crate::runbook::{Mode, Phase};
use crate::ssh::ExecOutput;

/// The sink of a run, and whether it still records.
pub(super) struct Out<'a> {
    sink: &'a mut dyn Sink,
    /// Why the journal stopped recording, once it did.
    pub(super) failed: Option<String>,
    /// Whether each vm a step started was running before (`VmStateBefore`), by step.
    pub(super) running_before: HashMap<String, Option<bool>>,
}

impl<'a> Out<'a> {
    pub(super) fn new(sink: &'a mut dyn Sink) -> Out<'a> {
        Out {
            sink,
            failed: None,
            running_before: HashMap::new(),
        }
    }

    /// Emits an event; `false` when it could not be recorded.
    pub(super) fn emit(&mut self, event: &Event) -> bool {
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

/// Hands a step's message to the sink; a step waiting for its event to be recorded is told
/// whether it was.
pub(super) fn deliver(out: &mut Out<'_>, msg: Msg) {
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

/// The event of a step's end.
pub(super) fn finished_event(
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
pub(super) async fn record_start(
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
pub(super) const NOT_RECORDED: &str = "not started: the journal cannot record it";

pub(super) fn output_event(
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

/// Journals what a step did before its command (as its output).
pub(super) fn output_note(
    tx: &tokio::sync::mpsc::UnboundedSender<Msg>,
    step: &PlannedStep,
    note: String,
) {
    let _ = tx.send(Msg::Event(Event::StepOutput {
        at: Utc::now(),
        step: step.id.clone(),
        attempt: 1,
        stdout: note,
        stderr: String::new(),
        exit_code: None,
    }));
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
pub(super) fn stale_done_steps(
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
                // Safe to run twice, as for a step interrupted (`step::interrupted`): a check
                // or a lag read again, a copy made again from its source as it is now (a
                // failback's copy back, undone by a roll-back that started the vm on the
                // recovery copies again, would else start it on the disks of before).
                if s.idempotent || !matches!(s.action_spec, Action::Exec { .. }) {
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
            // Its undo failed: what the step left is not known (neither done nor undone), so
            // a resume never takes it as done; it is looked at again as a step cut while it
            // ran (verified, or handed to a person).
            Event::UndoFinished {
                step, ok: false, ..
            } => {
                prior.insert(step.clone(), Prior::Interrupted);
            }
            _ => {}
        }
    }
    // Running when the journal ends, whatever an earlier attempt did: a step run again (after
    // a roll-back undid a step before it) and cut is not the earlier attempt's done.
    for step in running {
        prior.insert(step, Prior::Interrupted);
    }
    prior
}
