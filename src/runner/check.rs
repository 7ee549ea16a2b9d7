//! Check steps: a command, a TCP port or an HTTP status polled until it passes, the step's
//! deadline, or the run stops; and the replication-lag probe, read once and judged against
//! the service's RPO.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Utc;

use super::context::{Outcome, RunContext, StepRun};
use super::exec::{TryError, exec};
use super::record::output_event;
use crate::duration::Duration;
use crate::event::{Event, StepStatus};
use crate::plan::PlannedStep;
use crate::template::Command;

/// A lag step's probe, as planned.
pub(super) struct LagProbe<'a> {
    pub(super) run: &'a Command,
    pub(super) timeout: Duration,
    pub(super) rpo: Option<Duration>,
    pub(super) hold: bool,
}

/// A measurement: what the probe says is journaled. A lag unknown or over the RPO stops a
/// planned switch here, before it (the side being left still holds what the other lacks);
/// elsewhere the recovery goes on and the report says it.
pub(super) async fn lag(ctx: &RunContext, run: &StepRun, probe: &LagProbe<'_>) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    let limit = StdDuration::from_secs(probe.timeout.secs());
    let reading = match exec(ctx, step, probe.run, Some(limit)).await {
        Ok(out) => {
            output_event(&run.tx, step, 1, &out);
            crate::lag::read_output(&out, probe.timeout)
        }
        Err(e) => crate::lag::Reading::Unknown(format!("the probe could not run: {}", e.message)),
    };
    let (verdict, words) = crate::lag::judge(&reading, probe.rpo);
    run.send(Event::LagMeasured {
        at: Utc::now(),
        step: step.id.clone(),
        service: step.service.clone(),
        host: step.host.clone().unwrap_or_default(),
        lag_s: reading.seconds(),
        unknown: match reading {
            crate::lag::Reading::Unknown(why) => Some(why),
            crate::lag::Reading::Seconds(_) => None,
        },
        rpo_target_s: probe.rpo.map(|r| r.secs()),
    });
    if probe.hold && verdict != crate::lag::Verdict::Within {
        return run.outcome(
            StepStatus::Failed,
            1,
            Some(format!(
                "{words}: a planned switch stops here, before it, since the side it leaves still holds data the other may lack; bring the replication up to date (or, if that side is lost, run an emergency failover, which accepts the loss)"
            )),
        );
    }
    run.outcome(StepStatus::Done, 1, Some(words))
}

/// A command polled until it exits 0.
pub(super) async fn probe(
    ctx: &Arc<RunContext>,
    run: &StepRun,
    command: &Command,
    interval: Duration,
) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    let deadline = step
        .timeout_s
        .map(StdDuration::from_secs)
        .unwrap_or(StdDuration::from_secs(600));
    let per_try = StdDuration::from_secs(interval.secs().max(30));
    let (ctx2, tx2, command) = (ctx.clone(), run.tx.clone(), command.clone());
    let (index, begin) = (run.index, run.begin);
    poll(step, run, interval, move || {
        let (ctx, tx, command) = (ctx2.clone(), tx2.clone(), command.clone());
        async move {
            let step = &ctx.plan.steps[index];
            // A try never runs past the step's deadline.
            let left = deadline
                .saturating_sub(begin.elapsed())
                .max(StdDuration::from_secs(1));
            match exec(&ctx, step, &command, Some(per_try.min(left))).await {
                Ok(out) if out.exit_code == 0 => {
                    output_event(&tx, step, 1, &out);
                    Ok(())
                }
                Ok(out) => Err(format!("status {} {}", out.exit_code, out.stderr.trim()).into()),
                Err(e) => Err(e),
            }
        }
    })
    .await
}

/// A TCP port polled until it accepts a connection.
pub(super) async fn tcp(
    ctx: &RunContext,
    run: &StepRun,
    address: &str,
    port: u16,
    interval: Duration,
) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    let target = crate::inventory::endpoint(address, port);
    poll(step, run, interval, move || {
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

/// An HTTP(S) URL polled until it answers the expected status.
pub(super) async fn http(
    ctx: &RunContext,
    run: &StepRun,
    url: &str,
    expected: u16,
    interval: Duration,
    tls: &crate::plan::Tls,
) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    let (url, tls) = (url.to_string(), tls.clone());
    poll(step, run, interval, move || {
        let (url, tls) = (url.clone(), tls.clone());
        async move {
            let asked = url.clone();
            let got = tokio::task::spawn_blocking(move || {
                crate::http::status(&asked, &tls, StdDuration::from_secs(10))
            })
            .await;
            match got {
                Ok(Ok(code)) if code == expected => Ok(()),
                Ok(Ok(code)) => Err(format!("{url}: status {code}, expected {expected}").into()),
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

/// Polls `check` every `interval` until it passes, the step's deadline, or shutdown.
async fn poll<F, Fut>(step: &PlannedStep, run: &StepRun, interval: Duration, check: F) -> Outcome
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
                return run.outcome(StepStatus::Done, 1, None);
            }
            Err(e) if e.refused => {
                return run.outcome(StepStatus::Failed, 1, Some(e.message));
            }
            Err(e) => Some(format!("not healthy yet: {e}")),
        };
        let left = deadline.saturating_sub(run.begin.elapsed());
        if left.is_zero() {
            return run.outcome(StepStatus::TimedOut, 1, last);
        }
        if *run.shutdown.borrow() {
            return run.outcome(StepStatus::Cancelled, 1, last);
        }
        tokio::time::sleep(interval.min(left)).await;
    }
}
