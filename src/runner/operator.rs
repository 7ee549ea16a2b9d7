//! Manual steps, and any step handed to the operator (one interrupted that cannot safely
//! run twice): the instructions are journaled, then the step waits for a confirmation.

use std::time::Duration as StdDuration;

use chrono::Utc;

use super::context::{Msg, Outcome, RunContext, StepRun};
use super::record::{NOT_RECORDED, record_start};
use crate::event::{Event, StepStatus};
use crate::plan::PlannedStep;

/// Waits for the operator to confirm the step (`reprise confirm`, or the terminal's prompt):
/// done when confirmed, timed out at the step's deadline, cancelled when the run stops.
pub(super) async fn wait_for_operator(
    ctx: &RunContext,
    step: &PlannedStep,
    instructions: String,
    run: &StepRun,
) -> Outcome {
    let (tx, begin) = (&run.tx, run.begin);
    let mut shutdown = run.shutdown.clone();
    if !record_start(tx, step, 1).await {
        return run.outcome(StepStatus::Cancelled, 1, Some(NOT_RECORDED.into()));
    }
    let asked = Utc::now();
    let _ = tx.send(Msg::Event(Event::WaitingForOperator {
        at: asked,
        step: step.id.clone(),
        instructions,
    }));
    let deadline = step.timeout_s.map(StdDuration::from_secs);
    loop {
        // One given for another wait of the step (an earlier one, answered in the moment the
        // run took its answer) is taken and dropped: it answers no one here.
        if let Some(c) = ctx
            .confirmations
            .confirmation(&step.id)
            .filter(|c| c.asked.is_none_or(|a| a == asked))
        {
            let _ = tx.send(Msg::Event(Event::Confirmed {
                at: c.at,
                step: step.id.clone(),
                by: c.by,
                note: c.note,
            }));
            return run.outcome(StepStatus::Done, 1, None);
        }
        if deadline.is_some_and(|d| begin.elapsed() >= d) {
            return run.outcome(
                StepStatus::TimedOut,
                1,
                Some("no confirmation before the timeout".into()),
            );
        }
        if *shutdown.borrow() {
            return run.outcome(
                StepStatus::Cancelled,
                1,
                Some("the run was stopped while waiting".into()),
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.options.confirmation_poll) => {}
            _ = shutdown.changed() => {}
        }
    }
}
