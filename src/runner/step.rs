//! One step, from its start to its outcome: a resumed step that was interrupted is verified,
//! run again or handed to the operator; a vm step's copies are prepared first ([`super::vm`]);
//! then the step runs by its kind (exec, checks, manual, lag, replicate) and what it did to
//! the copies and the definitions is settled.
//!
//! It does not schedule: the scheduler (`execute`, in the runner's `mod.rs`) starts it when
//! what it waits for is done.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Utc;
use tokio::sync::watch;
use tokio::time::Instant;

use super::check;
use super::context::{Msg, Outcome, Prior, RunContext, StepRun};
use super::define::{self, Defined};
use super::exec::exec;
use super::operator;
use super::record::{NOT_RECORDED, record_start};
use super::replicate;
use super::vm;
use crate::event::{Event, StepStatus};
use crate::plan::Action;

/// Runs a step: its outcome, and what it defined before its command when it succeeded (put
/// back if the run rolls it back). A step that fails puts back what it defined itself: it
/// leaves the host as it found it.
pub(super) async fn run_step(
    ctx: Arc<RunContext>,
    index: usize,
    prior: Option<Prior>,
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
    shutdown: watch::Receiver<bool>,
) -> (Outcome, Option<Defined>) {
    let run = StepRun {
        index,
        begin: Instant::now(),
        tx,
        shutdown,
    };
    let mut defined = None;
    let mut sent = false;
    let mut leased = false;
    let mut out = run_step_inner(&ctx, &run, prior, &mut defined, &mut sent, &mut leased).await;
    let step = &ctx.plan.steps[index];
    let may_run = if sent {
        vm::failed_start_may_run(&ctx, step, &out, defined.is_some()).await
    } else {
        None
    };
    if let Some(why) = &may_run {
        let vm = step.replica.as_ref().map_or("the vm", |r| r.vm.as_str());
        let note = format!(
            "the start failed, but {vm} may have started all the same: {why}; its recovery copies stay leased to this run and what was defined stays; see whether it runs (`reprise status`), stop it if it does, then `reprise release {vm}` gives the copies back"
        );
        out.message = Some(match out.message.take() {
            Some(m) => format!("{m}; {note}"),
            None => note,
        });
    }
    let made = define::settle(&ctx, &mut out, defined, may_run.is_some()).await;
    (
        vm::after_replica(&ctx, step, out, may_run.is_some(), leased).await,
        made,
    )
}

/// Before a step starts a vm or copies one (a restore's start, a failback's copy back:
/// [`super::OtherSite`]): the other site is asked again, as the run's start asked it. A vm that runs there, or whose newest data a failover
/// left there, is not started: the step fails (its start and why are on disk first), saying
/// why and the way out. What could not be asked is said in the step's output, and the step
/// goes on, as at the start.
async fn other_site_refuses(
    ctx: &Arc<RunContext>,
    run: &StepRun,
    recorded: &mut bool,
) -> Option<Outcome> {
    let step = &ctx.plan.steps[run.index];
    let other = ctx.other_site.clone()?;
    let starts = step.kind == "vm" && step.action.as_deref() == Some("start");
    if !starts && !matches!(step.action_spec, crate::plan::Action::Replicate { .. }) {
        return None;
    }
    let asked = step.clone();
    let says = tokio::task::spawn_blocking(move || other.judge(&asked))
        .await
        // The question itself failed (not the host): nothing says the vm may start.
        .unwrap_or_else(|e| super::OtherSiteSays {
            refused: vec![format!(
                "whether vm {} runs on the other site could not be judged ({e}); `reprise status` and the recovery host's hypervisor tell, then resume",
                step.vm.as_deref().unwrap_or(&step.service)
            )],
            ..Default::default()
        });
    let super::OtherSiteSays {
        refused,
        mut said,
        forced,
        operator,
    } = says;
    if refused.is_empty() && said.is_empty() && forced.is_empty() {
        return None;
    }
    // What is only said (a recovery host that could not be asked, say) goes to the report's
    // problems too, not only to the step's output.
    let warned = said.clone();
    if !forced.is_empty() {
        // Who passed it, in the journal the report reads, before the vm starts.
        run.send(Event::ReadinessForced {
            at: Utc::now(),
            operator,
            problems: forced.clone(),
            diverged: Vec::new(),
        });
    }
    said.extend(forced);
    if !*recorded {
        if !record_start(&run.tx, step, 1).await {
            return Some(run.outcome(StepStatus::Cancelled, 1, Some(NOT_RECORDED.into())));
        }
        *recorded = true;
    }
    let text = if refused.is_empty() {
        said.join("\n")
    } else {
        format!("not started: {}", refused.join("; "))
    };
    run.send(Event::StepOutput {
        at: Utc::now(),
        step: step.id.clone(),
        attempt: 1,
        stdout: String::new(),
        stderr: text.clone(),
        exit_code: None,
    });
    if refused.is_empty() {
        if !warned.is_empty() {
            run.send(Event::OtherSite {
                at: Utc::now(),
                said: warned,
                step: Some(step.id.clone()),
                refused: false,
                diverged: Vec::new(),
                unasked: Vec::new(),
            });
        }
        return None;
    }
    run.send(Event::OtherSite {
        at: Utc::now(),
        said: refused,
        step: Some(step.id.clone()),
        refused: true,
        diverged: Vec::new(),
        unasked: Vec::new(),
    });
    Some(run.outcome(StepStatus::Failed, 1, Some(text)))
}

/// The runs whose `live` lease holds the copies a step starts a vm from (a failover's start
/// leases them so), as their helper reads them.
async fn leased_live(
    ctx: &Arc<RunContext>,
    replica: &crate::plan::ReplicaUse,
) -> Result<Vec<String>, String> {
    let (transport, host, paths) = (
        ctx.transport.clone(),
        replica.host.clone(),
        replica.paths.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let states = crate::replica::remote::Helpers::new(transport.as_ref())
            .inspect(&host, &paths)
            .map_err(|e| e.to_string())?;
        let mut runs: Vec<String> = states
            .iter()
            .flat_map(|s| &s.leases)
            .filter(|l| l.kind == crate::replica::LeaseKind::Live)
            .map(|l| l.run.clone())
            .collect();
        runs.sort();
        runs.dedup();
        Ok(runs)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// `sent`: set once the step's command may have been sent to its host (a step refused
/// before it never was).
async fn run_step_inner(
    ctx: &Arc<RunContext>,
    run: &StepRun,
    prior: Option<Prior>,
    defined: &mut Option<Defined>,
    sent: &mut bool,
    leased: &mut bool,
) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    // A step that was running when the orchestrator died.
    if prior == Some(Prior::Interrupted)
        && let Some(out) = resume_interrupted(ctx, run).await
    {
        return out;
    }
    // The step's start is on disk before anything of it runs on a host.
    let mut recorded_first = false;
    let mut state_asked = false;
    if let Some(replica) = &step.replica {
        if !record_start(&run.tx, step, 1).await {
            return run.outcome(StepStatus::Cancelled, 1, Some(NOT_RECORDED.into()));
        }
        recorded_first = true;
        // What a copy of this run moved it from is still so (a vm started there again since
        // wrote what the copy lacks), then the side the run leaves: both asked before a point
        // is chosen, leased or defined.
        if let Err(e) = vm::copied_still(ctx, step, replica).await {
            return run.outcome(StepStatus::Failed, 1, Some(e));
        }
        if let Some(refused) = other_site_refuses(ctx, run, &mut recorded_first).await {
            return refused;
        }
        // A vm a failover starts from its copies that already runs there, started outside
        // this run, runs on disks the run did not give it: its start would say "already
        // running" and the run would report it recovered from a point it never ran from.
        // Asked before a point is chosen, leased or defined for it. This run's own start
        // (one that failed or was cut after the vm came up, its copies still leased to the
        // run) carries on. A failback's start on the primary the same, once its copy back ran
        // in this process: that copy found the vm stopped there, so one running now was
        // started since, outside this run, on what the copy back was writing or on other
        // disks (without it, a resume, it may be this run's own start that failed after the
        // vm came up: it carries on, as before).
        let failback = replica.role == crate::plan::ReplicaRole::FailedBack;
        let copied_here = failback
            && ctx
                .copied
                .lock()
                .map(|c| c.get(&replica.vm).is_some_and(|r| r.here))
                .unwrap_or(true);
        if (replica.role == crate::plan::ReplicaRole::Start || failback)
            && step.action.as_deref() == Some("start")
            && prior.is_none()
            && step.state_before.is_some()
        {
            match super::exec::ask_state_before(ctx, run).await {
                None => return run.outcome(StepStatus::Cancelled, 1, Some(NOT_RECORDED.into())),
                Some(_) if failback && !copied_here => state_asked = true,
                Some(Some(true)) if failback => {
                    let vm = replica.vm.as_str();
                    let host = step.host.as_deref().unwrap_or("its primary host");
                    return run.outcome(
                        StepStatus::Failed,
                        1,
                        Some(format!(
                            "vm {vm} already runs on {host}, started outside this run after its copy back found it stopped there: it may run on disks the copy back was writing, or on other disks, and the failback would report it recovered from the copy and let go of its recovery copies; nothing was released. Stop it there, make sure of its disks (the copy back can be made again), then `reprise resume` this run"
                        )),
                    );
                }
                Some(Some(true)) => match leased_live(ctx, replica).await {
                    Ok(runs) if runs.iter().any(|r| *r == ctx.plan.run_id) => state_asked = true,
                    found => {
                        let vm = replica.vm.as_str();
                        let host = step.host.as_deref().unwrap_or("its recovery host");
                        let by = match found {
                            Ok(runs) if !runs.is_empty() => format!(
                                "started by another run ({}, whose lease holds its copies)",
                                runs.join(", ")
                            ),
                            Ok(_) => "started outside this run".to_string(),
                            Err(e) => format!(
                                "and whether this run started it cannot be told (its copies' leases cannot be read: {e})"
                            ),
                        };
                        return run.outcome(
                            StepStatus::Failed,
                            1,
                            Some(format!(
                                "vm {vm} already runs on {host}, {by}: what it runs on and what it wrote there are not the point this run would choose, and nothing was chosen, leased or defined for it; find out what it runs on, stop it there (keep what it wrote if it matters), then `reprise resume` this run"
                            )),
                        );
                    }
                },
                Some(Some(false)) => state_asked = true,
                // A failback's start as before: its own check runs after it.
                Some(None) if failback => state_asked = true,
                // Cannot be told: it may run there on other disks, and its start would say
                // "already running". Only a forced run passes, journaled.
                Some(None) => {
                    let vm = replica.vm.as_str();
                    let host = step.host.as_deref().unwrap_or("its recovery host");
                    let why = format!(
                        "whether vm {vm} already runs on {host} cannot be told (its driver's status said neither `running` nor `shut off` nor `not defined`: see its answer in the journal)"
                    );
                    match &ctx.options.forced_by {
                        Some(operator) => {
                            run.send(Event::ReadinessForced {
                                at: Utc::now(),
                                operator: operator.clone(),
                                problems: vec![format!("vm {vm}: {why}")],
                                // If it did run there, it runs on disks no point dates:
                                // no data loss is claimed for it.
                                diverged: vec![vm.to_string()],
                            });
                            state_asked = true;
                        }
                        None => {
                            return run.outcome(
                                StepStatus::Failed,
                                1,
                                Some(format!(
                                    "{why}: if it runs there, it runs on disks this run did not give it, and it would be reported recovered from a point it never ran from; nothing was chosen, leased or defined for it; find out, then `reprise resume` this run (with --force if it does not run there: that passes the resume's other forceable checks too, each journaled)"
                                )),
                            );
                        }
                    }
                }
            }
        }
        if let Err(e) = vm::before_replica(ctx, step, replica, &run.tx, defined, leased).await {
            return run.outcome(StepStatus::Failed, 1, Some(e));
        }
    } else if let Some(refused) = other_site_refuses(ctx, run, &mut recorded_first).await {
        return refused;
    }
    if !recorded_first
        && !matches!(
            step.action_spec,
            Action::Manual { .. } | Action::Exec { .. }
        )
        && !record_start(&run.tx, step, 1).await
    {
        return run.outcome(StepStatus::Cancelled, 1, Some(NOT_RECORDED.into()));
    }
    match &step.action_spec {
        Action::Manual { instructions } => {
            operator::wait_for_operator(ctx, step, instructions.clone(), run).await
        }
        Action::Exec {
            run: command,
            verify,
            ..
        } => {
            let first = super::exec::First {
                recorded: recorded_first,
                resumed: prior.is_some(),
                state_asked,
            };
            *sent = true;
            super::exec::run(ctx, run, command, verify.as_ref(), first).await
        }
        Action::Lag {
            run: probe,
            timeout,
            rpo,
            hold,
        } => {
            let lag = check::LagProbe {
                run: probe,
                timeout: *timeout,
                rpo: *rpo,
                hold: *hold,
            };
            check::lag(ctx, run, &lag).await
        }
        Action::Probe {
            run: probe,
            interval,
        } => check::probe(ctx, run, probe, *interval).await,
        Action::Tcp {
            address,
            port,
            interval,
            instance,
            expect,
            production,
        } => {
            let tcp = check::TcpProbe {
                address,
                port: *port,
                expect: expect.as_deref(),
                production,
            };
            check::tcp(ctx, run, &tcp, *interval, instance.as_ref()).await
        }
        Action::Http {
            url,
            status,
            interval,
            tls,
            instance,
            expect,
            production,
        } => {
            let http = check::HttpProbe {
                url,
                status: *status,
                tls,
                expect: expect.as_deref(),
                production,
            };
            check::http(ctx, run, &http, *interval, instance.as_ref()).await
        }
        Action::Replicate { .. } => replicate::run(ctx, run).await,
        Action::BackupCopy(copy) => super::backup::run(ctx, run, copy).await,
    }
}

/// A step that was running when the orchestrator died: verified (done when its `verify`
/// passes), run again when it is safe to run twice, else handed to the operator. `None`: run
/// it again.
async fn resume_interrupted(ctx: &Arc<RunContext>, run: &StepRun) -> Option<Outcome> {
    let step = &ctx.plan.steps[run.index];
    if let Action::Exec {
        verify: Some(verify),
        ..
    } = &step.action_spec
    {
        if !record_start(&run.tx, step, 0).await {
            return Some(run.outcome(StepStatus::Cancelled, 0, Some(NOT_RECORDED.into())));
        }
        if let Ok(out) = exec(ctx, step, verify, Some(StdDuration::from_secs(60))).await
            && out.exit_code == 0
        {
            return Some(run.outcome(
                StepStatus::Done,
                0,
                Some("verified after the interruption: not run again".into()),
            ));
        }
    }
    let idempotent = step.idempotent || !matches!(step.action_spec, Action::Exec { .. });
    if idempotent {
        return None;
    }
    let instructions = format!(
        "Step {} was running on {} when reprise stopped, and cannot safely run twice. \
         Check whether it took effect ({}), finish it by hand if needed, then confirm.",
        step.id,
        step.host.as_deref().unwrap_or("the orchestrator"),
        step.command
    );
    Some(operator::wait_for_operator(ctx, step, instructions, run).await)
}
