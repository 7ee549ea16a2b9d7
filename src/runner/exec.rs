//! Exec steps: a command on the step's host, with secrets resolved there and redacted from
//! what it printed, tried again on failure (with backoff) within the step's deadline, checked
//! by its `verify`; a vm start first journals whether the vm ran before it.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Utc;
use tokio::time::Instant;

use super::context::{Msg, Outcome, RunContext, StepRun};
use super::record::{NOT_RECORDED, output_event, record_start};
use crate::event::{Event, StepStatus};
use crate::plan::PlannedStep;
use crate::ssh::ExecOutput;
use crate::template::Command;

/// How the first attempt of an exec step begins.
#[derive(Debug, Clone, Copy)]
pub(super) struct First {
    /// Its start is already recorded (a vm step records it before its copies are prepared).
    pub(super) recorded: bool,
    /// The step resumes an interrupted run: the vm's state before it was journaled then.
    pub(super) resumed: bool,
    /// The vm's state before it was asked and journaled already (before its copies were
    /// prepared).
    pub(super) state_asked: bool,
}

/// The deadline of a step: it bounds the whole step, every attempt, the waits between them
/// and the verification.
struct Deadline {
    at: Option<Instant>,
    timeout_s: Option<u64>,
}

impl Deadline {
    fn of(step: &PlannedStep, run: &StepRun) -> Deadline {
        Deadline {
            at: step
                .timeout_s
                .map(|t| run.begin + StdDuration::from_secs(t)),
            timeout_s: step.timeout_s,
        }
    }

    fn left(&self) -> Option<StdDuration> {
        self.at.map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn past(&self) -> bool {
        self.left().is_some_and(|l| l < StdDuration::from_secs(1))
    }

    /// At most `cap`, within what is left.
    fn room(&self, cap: StdDuration) -> StdDuration {
        self.left().map_or(cap, |l| l.min(cap))
    }

    fn timed_out(&self, why: String) -> Option<String> {
        Some(format!(
            "timed out after {}s: {why}",
            self.timeout_s.unwrap_or(0)
        ))
    }
}

/// Runs an exec step: attempts until one succeeds, the retries are spent, the deadline
/// passes or the run stops.
pub(super) async fn run(
    ctx: &Arc<RunContext>,
    run: &StepRun,
    command: &Command,
    verify: Option<&Command>,
    first: First,
) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    let deadline = Deadline::of(step, run);
    if let Some(status) = &step.state_before
        && !first.resumed
        && !first.state_asked
        && state_before(ctx, run, status, &deadline).await.is_none()
    {
        return run.outcome(StepStatus::Cancelled, 1, Some(NOT_RECORDED.into()));
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let recorded =
            (attempt == 1 && first.recorded) || record_start(&run.tx, step, attempt).await;
        if !recorded {
            return run.outcome(StepStatus::Cancelled, attempt, Some(NOT_RECORDED.into()));
        }
        let result = exec(ctx, step, command, deadline.left()).await;
        let refused = matches!(&result, Err(e) if e.refused);
        let (status, message) = match result {
            Ok(out) => {
                output_event(&run.tx, step, attempt, &out);
                judge(ctx, run, attempt, &out, verify, &deadline).await
            }
            // The host did not answer before the step's deadline.
            Err(e) if !e.refused && deadline.past() => {
                (StepStatus::TimedOut, deadline.timed_out(e.message))
            }
            Err(e) => (StepStatus::Failed, Some(e.message)),
        };
        if status.succeeded()
            || status == StepStatus::TimedOut
            || refused
            || attempt > step.retries
            || *run.shutdown.borrow()
        {
            return run.outcome(status, attempt, message);
        }
        let backoff = StdDuration::from_secs((1u64 << (attempt - 1).min(5)).min(30));
        let backoff = deadline.left().map_or(backoff, |l| backoff.min(l));
        tokio::time::sleep(backoff).await;
        if deadline.past() {
            // No time for another attempt: the step ends as its last attempt did.
            return run.outcome(status, attempt, message);
        }
    }
}

/// Before the vm is started, by its step's `state_before`: whether it runs already (see
/// `VmStateBefore`), journaled; `None` when the step has no way to ask, or the answer could
/// not be journaled.
pub(super) async fn ask_state_before(ctx: &RunContext, run: &StepRun) -> Option<Option<bool>> {
    let step = &ctx.plan.steps[run.index];
    let status = step.state_before.as_ref()?;
    state_before(ctx, run, status, &Deadline::of(step, run)).await
}

/// Before the vm is started: whether it runs already (see `VmStateBefore`), journaled;
/// `None` when it could not be.
async fn state_before(
    ctx: &RunContext,
    run: &StepRun,
    status: &Command,
    deadline: &Deadline,
) -> Option<Option<bool>> {
    let step = &ctx.plan.steps[run.index];
    let room = deadline.room(StdDuration::from_secs(60));
    let (running, said) = match exec(ctx, step, status, Some(room)).await {
        // Not defined there (a vm the start defines first, from its point): not running.
        Ok(out) => (
            said_running(&out).or_else(|| said_not_defined(&out).then_some(false)),
            out.stdout.trim().to_string(),
        ),
        Err(e) => (None, e.message),
    };
    let event = Event::VmStateBefore {
        at: Utc::now(),
        step: step.id.clone(),
        running,
        said: said.chars().take(500).collect(),
    };
    let (recorded, answer) = tokio::sync::oneshot::channel();
    if run.tx.send(Msg::Recorded(event, recorded)).is_err() {
        return None;
    }
    (answer.await == Ok(true)).then_some(running)
}

/// What an attempt that ran says of the step: its exit status, then its `verify`.
async fn judge(
    ctx: &RunContext,
    run: &StepRun,
    attempt: u32,
    out: &ExecOutput,
    verify: Option<&Command>,
    deadline: &Deadline,
) -> (StepStatus, Option<String>) {
    let step = &ctx.plan.steps[run.index];
    if out.timed_out {
        return (
            StepStatus::TimedOut,
            Some(format!("timed out after {}s", step.timeout_s.unwrap_or(0))),
        );
    }
    if out.exit_code != 0 {
        return (
            StepStatus::Failed,
            Some(format!("exited with status {}", out.exit_code)),
        );
    }
    let Some(v) = verify else {
        return (StepStatus::Done, None);
    };
    let room = deadline.room(StdDuration::from_secs(120));
    if deadline.past() {
        return (
            StepStatus::TimedOut,
            deadline.timed_out("no time was left to verify it".into()),
        );
    }
    match exec(ctx, step, v, Some(room)).await {
        Ok(vo) if vo.exit_code == 0 => (StepStatus::Done, None),
        Ok(vo) if vo.timed_out || deadline.past() => {
            output_event(&run.tx, step, attempt, &vo);
            (
                StepStatus::TimedOut,
                deadline.timed_out("its verify did not pass in time".into()),
            )
        }
        Ok(vo) => {
            output_event(&run.tx, step, attempt, &vo);
            (
                StepStatus::Failed,
                Some(format!("verify failed (status {})", vo.exit_code)),
            )
        }
        Err(e) if deadline.past() => (StepStatus::TimedOut, deadline.timed_out(e.message)),
        Err(e) => (
            StepStatus::Failed,
            Some(format!("verify could not run: {e}")),
        ),
    }
}

/// How long after a command's deadline the runner stops waiting for the transport, in case
/// it does not keep that deadline itself: the remote side's KILL comes 5 s after its TERM.
pub(super) const LATE: StdDuration = StdDuration::from_secs(10);

/// Whether a driver's `status` said the vm runs: a line `running` (libvirt, the lab) or
/// `status: running` (Proxmox); that it is stopped: a line `shut off` (libvirt, the lab) or
/// `status: stopped` (Proxmox). Anything else (`paused`, `in shutdown`, `crashed`, an error,
/// nothing) is `None`: a vm is never taken as stopped from what does not say so.
pub fn said_running(out: &ExecOutput) -> Option<bool> {
    let lines = || out.stdout.lines().map(str::trim);
    if lines().any(|l| l == "running" || l == "status: running") {
        Some(true)
    } else if lines().any(|l| l == "shut off" || l == "status: stopped") {
        Some(false)
    } else {
        None
    }
}

/// The line a driver's `status` or `definition` prints (exiting non-zero) for a vm not
/// defined on its host, and only once the hypervisor answered a listing that lacks it.
pub const NOT_DEFINED: &str = "not defined";

/// Whether a driver's `status` (or `definition`) said the vm is not defined on its host: a
/// line [`NOT_DEFINED`] and a non-zero exit, and only so. An error's text is never read as
/// that (`virsh` says "failed to get domain" for a call the daemon dropped or denied too;
/// Proxmox's `qm` says a vm "does not exist" while the cluster file system is down); a status
/// that timed out, could not run, was cut, or failed for any other reason says nothing about
/// the vm.
pub fn said_not_defined(out: &ExecOutput) -> bool {
    let failed_so = out.exit_code != 0
        && !out.timed_out
        && !out.truncated
        && !matches!(out.exit_code, 124..=127 | 137);
    failed_so && said_running(out).is_none() && out.stdout.lines().any(|l| l.trim() == NOT_DEFINED)
}

/// Runs a command of a step on its host, with secrets resolved and redacted from the output.
/// Why a try did not succeed. A `refused` error (a changed or unknown host key, failed
/// authentication, a missing secret) does not change by trying again: the step fails at once.
#[derive(Debug)]
pub(super) struct TryError {
    pub(super) message: String,
    pub(super) refused: bool,
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
    pub(super) fn refused(message: String) -> Self {
        TryError {
            message,
            refused: true,
        }
    }
}

pub(super) async fn exec(
    ctx: &RunContext,
    step: &PlannedStep,
    command: &Command,
    timeout: Option<StdDuration>,
) -> Result<ExecOutput, TryError> {
    let Some(host) = step.host.as_deref() else {
        return Err(TryError::refused(format!(
            "step {} has no host to run on",
            step.id
        )));
    };
    exec_on(ctx, host, command, timeout).await
}

/// [`exec`] on `host` rather than the step's own (a check asking a vm's driver where the vm
/// runs).
pub(super) async fn exec_on(
    ctx: &RunContext,
    host: &str,
    command: &Command,
    timeout: Option<StdDuration>,
) -> Result<ExecOutput, TryError> {
    let host = host.to_string();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A vm is taken as not defined only from its driver's own line for that, after a
    /// failure: an error's text (the same for a vm not defined and a hypervisor that dropped
    /// the call), a status that timed out, could not run or was cut says nothing.
    #[test]
    fn only_a_status_that_says_not_defined_says_it_is_not_defined() {
        let out = |stdout: &str, stderr: &str, exit_code: i32, timed_out: bool| ExecOutput {
            stdout: stdout.into(),
            stderr: stderr.into(),
            exit_code,
            truncated: false,
            timed_out,
            duration: StdDuration::ZERO,
        };
        assert!(said_not_defined(&out("not defined\n", "", 2, false)));
        assert!(said_not_defined(&out(
            "not defined\n",
            "error: failed to get domain 'erp-db'",
            2,
            false
        )));
        let libvirt = "error: failed to get domain 'erp-db'";
        let proxmox = "Configuration file 'nodes/pve2/qemu-server/104.conf' does not exist";
        for (stdout, stderr, code, timed_out) in [
            ("", libvirt, 1, false),
            ("", proxmox, 255, false),
            (libvirt, "", 1, false),
            ("", "error: failed to connect to the hypervisor", 1, false),
            ("", "", 1, false),
            ("not defined\n", "", 124, true),
            ("not defined\n", "", 137, false),
            ("not defined\n", "", 0, false),
            ("the vm is not defined\n", "", 2, false),
            ("", "sh: 1: virsh: not found", 127, false),
        ] {
            assert!(
                !said_not_defined(&out(stdout, stderr, code, timed_out)),
                "{stdout:?} {stderr:?} exit {code}"
            );
        }
    }

    fn said(stdout: &str, exit_code: i32) -> Option<bool> {
        said_running(&ExecOutput {
            stdout: stdout.into(),
            stderr: String::new(),
            exit_code,
            truncated: false,
            timed_out: false,
            duration: StdDuration::ZERO,
        })
    }

    /// A vm's state is read only from the words its driver uses for running and stopped: a
    /// paused vm, one shutting down, an error printed with exit 0 or nothing at all say
    /// neither.
    #[test]
    fn a_vm_is_stopped_only_when_its_driver_says_so() {
        assert_eq!(said("running\n", 0), Some(true));
        assert_eq!(said("status: running\n", 0), Some(true));
        assert_eq!(said("shut off\n", 0), Some(false));
        assert_eq!(said("shut off\n", 3), Some(false));
        assert_eq!(said("status: stopped\n", 0), Some(false));
        for other in [
            "paused\n",
            "in shutdown\n",
            "pmsuspended\n",
            "crashed\n",
            "not running\n",
            "error: failed to connect to the hypervisor\n",
            "",
        ] {
            assert_eq!(said(other, 0), None, "{other:?}");
            assert_eq!(said(other, 1), None, "{other:?}");
        }
    }
}
