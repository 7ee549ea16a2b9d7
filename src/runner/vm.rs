//! Vm steps that use the recovery copies: before the step's command, the runner asks the
//! replica side which point the vm starts from and to prepare its copies for it
//! ([`crate::replica::start::prepare`]), defines the vm from that point ([`super::define`])
//! and journals the point used; after it, the copies are handed back or kept as the step's
//! outcome says ([`crate::replica::start::after`]).

use chrono::Utc;

use super::context::{Msg, Outcome, RunContext};
use super::define::{self, Defined, Source};
use super::record::output_note;
use crate::event::{Event, StepStatus};
use crate::plan::{Action, PlannedStep, ReplicaRole, ReplicaUse, Replicated};
use crate::replica::choice::Use;
use crate::replica::start::{self, Remote, Request, SnapshotCheck, Used, Vm};
use crate::runbook::Mode;

/// The vm's copies, as the replica side names them.
fn copies(replica: &ReplicaUse) -> Vm<'_> {
    Vm {
        name: &replica.vm,
        host: &replica.host,
        paths: &replica.paths,
        sources: &replica.sources,
    }
}

/// Before a vm step that starts from the recovery copies (a drill's overlay copy, or the vm
/// itself in a failover): the point is decided and the copies prepared and leased by the
/// replica side (the decision `check` and `status` make too), the vm is defined from that
/// point, and the point is journaled with whether it is verified at that moment. A failback
/// defines the vm on the primary from the point the reverse replication made. An error stops
/// the step before its command runs. [`copied_still`] is asked before it.
pub(super) async fn before_replica(
    ctx: &RunContext,
    step: &PlannedStep,
    replica: &ReplicaUse,
    tx: &tokio::sync::mpsc::UnboundedSender<Msg>,
    defined: &mut Option<Defined>,
    leased: &mut bool,
) -> Result<(), String> {
    let how = match replica.role {
        ReplicaRole::DrillStart => Use::Drill,
        ReplicaRole::Start => Use::Failover,
        ReplicaRole::FailedBack => {
            // A vm that ran on its recovery copies comes back only by copying them back.
            let back = ctx.plan.copies_back(&replica.vm);
            let (transport, r) = (ctx.transport.clone(), replica.clone());
            tokio::task::spawn_blocking(move || {
                start::before_failback(&Remote::new(transport.as_ref()), copies(&r), back)
            })
            .await
            .map_err(|e| format!("the replica task failed: {e}"))??;
            // The vm starts on the primary from the point the reverse replication made.
            if let Some(d) = &replica.define {
                let (note, done) = define::define_vm(ctx, d, Source::Point(None)).await?;
                output_note(tx, step, note);
                *defined = Some(done);
            }
            return Ok(());
        }
        ReplicaRole::DrillStop => return Ok(()),
    };
    let prepared = prepare(ctx, step, replica, how).await?;
    // What this attempt leased, which its failure gives back (never a lease an earlier
    // attempt took: its vm may run on the copies).
    *leased = !prepared.held_before;
    let s = prepared.start;
    if let Some(d) = &replica.define {
        let point = s.points.first().cloned().flatten();
        let result = match (point, how) {
            (None, Use::Failover) => define::keep_defined(ctx, d, &replica.vm)
                .await
                .map(|note| (note, None)),
            (None, Use::Drill) => define::define_vm(ctx, d, Source::PrimaryNow(&replica.vm))
                .await
                .map(|(note, done)| (note, Some(done))),
            (Some(p), _) => define::define_vm(ctx, d, Source::Point(Some(p)))
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
                // Not started: the copies it leased are given back; not those a drill copy
                // of this run's earlier attempt may still read (its cleanup gives them back).
                let e = start::with_rolled_back(e, &prepared.notes);
                if prepared.held_before {
                    return Err(format!(
                        "{e}; the copies stay leased to this run (a drill copy of an earlier attempt may still read them): the drill's cleanup gives them back"
                    ));
                }
                give_back(ctx, replica, how).await;
                return Err(e);
            }
        }
    }
    let notes = prepared.notes;
    // On disk before the vm can start from it: a crash after the start leaves a journal that
    // says which point it started from (what a resume and the report go by).
    let (recorded, answer) = tokio::sync::oneshot::channel();
    let event = Event::ReplicaPointUsed {
        at: Utc::now(),
        step: step.id.clone(),
        item: replica.vm.clone(),
        point: s.point,
        taken_at: s.taken_at,
        written_until: (s.written_until != s.taken_at).then_some(s.written_until),
        verified: s.verified,
        note: Some(if notes.is_empty() {
            format!("the newest point on {}, verified", replica.host)
        } else {
            notes.join("; ")
        }),
        dropped: s.dropped,
    };
    if tx.send(Msg::Recorded(event, recorded)).is_err() || !answer.await.unwrap_or(false) {
        if !prepared.held_before {
            give_back(ctx, replica, how).await;
        }
        return Err(start::with_rolled_back(
            format!(
                "{} (the point it would start from)",
                super::record::NOT_RECORDED
            ),
            &notes,
        ));
    }
    Ok(())
}

/// Before a vm starts on the host a copy of this run moved it to (a failback's copy back, a
/// planned failover's final sync): what the copy read is still so
/// ([`start::copied_still`]), as this process read it or, resumed, as the run's journal says
/// ([`crate::event::Event::SourceRead`]). A failback's copy back whose read is known neither
/// way (a run of an earlier version) is refused; a failover's start run again after it was
/// cut relies on the point it chose then.
pub(super) async fn copied_still(
    ctx: &RunContext,
    step: &PlannedStep,
    replica: &ReplicaUse,
) -> Result<(), String> {
    let Some(host) = step.host.as_deref() else {
        return Ok(());
    };
    let copied = ctx.plan.steps.iter().any(|s| {
        matches!(&s.action_spec, Action::Replicate { what: Replicated::Vm(v), to_host, .. }
            if *v == replica.vm && to_host == host)
    });
    let failback = replica.role == ReplicaRole::FailedBack;
    if !copied || !(failback || replica.role == ReplicaRole::Start) {
        return Ok(());
    }
    let read = ctx
        .copied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&replica.vm)
        .cloned();
    let Some(read) = read else {
        return match failback {
            true => Err(format!(
                "what vm {}'s copy back read is known neither to this process nor to the run's journal, so whether its recovery copies were written since cannot be told; stop it on {host} if it runs there, then resume the run (`reprise resume`), which copies it back again before this start",
                replica.vm
            )),
            false => Ok(()),
        };
    };
    let (service, host) = (&step.service, &read.host);
    let if_lost = match failback {
        true => format!(
            "if {host} and what it holds are lost for good, `reprise restore --service {service} --force` starts it on the primary from what was copied back"
        ),
        false => format!(
            "if {host} is lost, `reprise failover --emergency --service {service}` starts it from its newest point"
        ),
    };
    let (transport, vm) = (ctx.transport.clone(), replica.vm.clone());
    tokio::task::spawn_blocking(move || {
        start::copied_still(
            &Remote::new(transport.as_ref()),
            &vm,
            &read.host,
            &read.step,
            &read.stamps,
            &if_lost,
        )
    })
    .await
    .map_err(|e| format!("the replica task failed: {e}"))?
}

/// Asks the replica side for the vm's point and to prepare its copies.
async fn prepare(
    ctx: &RunContext,
    step: &PlannedStep,
    replica: &ReplicaUse,
    how: Use,
) -> Result<start::Prepared, String> {
    let failover = ctx.plan.mode == Mode::Failover;
    let mut ask = ctx
        .options
        .points
        .ask(&replica.vm, &ctx.plan.run_id, failover);
    // A planned failover's final sync just made the point the vm is to start from, its
    // primary stopped: found bad now (a disk error on the recovery host), the start stops,
    // never falls back to an older point while the primary holds the newer data intact.
    let synced = (failover && !ctx.plan.emergency && ask.want.is_none() && !ask.accept_unverified)
        .then(|| {
            ctx.copied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&replica.vm)
                .and_then(|c| c.point.clone().map(|p| (c.step.clone(), p)))
        })
        .flatten();
    if let Some((_, point)) = &synced {
        ask.want = Some(crate::replica::choice::Want::Id(point.clone()));
    }
    let snapshot_check = replica
        .snapshot_check
        .as_ref()
        .map(|(host, check)| SnapshotCheck {
            host: host.clone(),
            command: check.expose(|n| (ctx.secrets)(n)).ok(),
        });
    let (transport, run, id) = (
        ctx.transport.clone(),
        ctx.plan.run_id.clone(),
        step.id.clone(),
    );
    let (replica, defines) = (replica.clone(), replica.define.is_some());
    tokio::task::spawn_blocking(move || {
        let req = Request {
            run: &run,
            step: &id,
            vm: copies(&replica),
            how,
            ask,
            defines,
            may_roll_back: failover,
            snapshot_check,
            backup: false,
        };
        start::prepare(&Remote::new(transport.as_ref()), &req)
    })
    .await
    .map_err(|e| format!("the replica task failed: {e}"))?
    .map_err(|e| match &synced {
        Some((sync, point)) => format!(
            "{e}; point {point} is the one this failover's final sync ({sync}) made, with the vm stopped on its primary, which still holds that data: nothing older is started in its place; `reprise resume` makes the final sync again and starts from its point"
        ),
        None => e,
    })
}

/// Gives back the copies a start leased, the vm not started.
async fn give_back(ctx: &RunContext, replica: &ReplicaUse, how: Use) {
    let (transport, replica, run) = (
        ctx.transport.clone(),
        replica.clone(),
        ctx.plan.run_id.clone(),
    );
    let _ = tokio::task::spawn_blocking(move || {
        start::give_back(
            &Remote::new(transport.as_ref()),
            copies(&replica),
            &run,
            how,
        )
    })
    .await;
}

/// After a vm start that failed once its command was sent, with something to give back (the
/// recovery copies it leased, or the definition it made): why the vm may have started all
/// the same, or `None`
/// when its driver's `status` on the step's host says it is stopped (or not defined there).
/// A start can fail after it took effect (the connection dropped once the command was sent,
/// or the command failed after the vm came up): nothing is then released or undefined under
/// a vm that may be running on the copies.
pub(super) async fn failed_start_may_run(
    ctx: &RunContext,
    step: &PlannedStep,
    out: &Outcome,
    defined: bool,
) -> Option<String> {
    let leased = step
        .replica
        .as_ref()
        .is_some_and(|r| r.role == ReplicaRole::Start);
    if out.status != StepStatus::Failed
        || step.kind != "vm"
        || step.action.as_deref() != Some("start")
        || !(leased || defined)
    {
        return None;
    }
    let host = step.host.as_deref().unwrap_or("its host");
    let Some(status) = &step.state_before else {
        return Some(format!(
            "its driver cannot say whether the vm runs on {host}"
        ));
    };
    match super::exec::exec(ctx, step, status, Some(std::time::Duration::from_secs(60))).await {
        Ok(o)
            if super::exec::said_running(&o) == Some(false)
                || super::exec::said_not_defined(&o) =>
        {
            None
        }
        Ok(o) => Some(format!(
            "its driver's status on {host} does not say it is stopped ({})",
            o.stdout.trim().chars().take(200).collect::<String>()
        )),
        Err(e) => Some(format!(
            "its driver's status on {host} could not be asked ({})",
            e.message
        )),
    }
}

/// After a vm step that used the recovery copies, the replica side does what the step's
/// outcome leaves to them (see [`start::after`]); what changed, or why it could not, is added
/// to the step's message. A failed start that `may_run` (see [`failed_start_may_run`]) keeps
/// its copies leased, as one timed out does, and so does one stopped before it `leased`
/// them (in an attempt before a resume, whose vm may run on them).
pub(super) async fn after_replica(
    ctx: &RunContext,
    step: &PlannedStep,
    mut out: Outcome,
    may_run: bool,
    leased: bool,
) -> Outcome {
    let Some(replica) = step.replica.clone() else {
        return out;
    };
    let done = out.status == StepStatus::Done;
    // A failback's start lets go of the recovery copies only as its copy back read them.
    if replica.role == ReplicaRole::FailedBack && done {
        let note = match written_since_copied_back(ctx, step, &replica).await {
            Err(kept) => Some(kept),
            Ok(read) => {
                let (transport, r) = (ctx.transport.clone(), replica.clone());
                let vm = replica.vm.clone();
                let released = tokio::task::spawn_blocking(move || {
                    start::after_failback(&Remote::new(transport.as_ref()), copies(&r), &read)
                })
                .await
                .unwrap_or_else(|e| Err(format!("the replica task failed: {e}")));
                match released {
                    Ok(note) => note,
                    Err(e) => Some(format!(
                        "the recovery copies of vm {vm} stay leased, so that no replication writes into them: they could not be let go ({e}); keep what they hold that the primary lacks (copy it over by hand), then `reprise release {vm}` lets them go"
                    )),
                }
            }
        };
        if let Some(note) = note {
            out.message = Some(match out.message.take() {
                Some(old) => format!("{old}; {note}"),
                None => note,
            });
        }
        return out;
    }
    // A failed start gives back only what this attempt leased: a lease an earlier attempt
    // took (before a resume) stays, since the vm that attempt started may run on the copies.
    if replica.role == ReplicaRole::Start
        && !done
        && out.status == StepStatus::Failed
        && !may_run
        && !leased
    {
        if ctx.options.running_before.contains_key(&step.id) {
            let vm = &replica.vm;
            let note = format!(
                "its recovery copies stay as an earlier attempt of this step left them (leased to this run if it leased them: vm {vm} may run on them); see whether it runs (`reprise status`), stop it if it does, then `reprise release {vm}` gives the copies back"
            );
            out.message = Some(match out.message.take() {
                Some(old) => format!("{old}; {note}"),
                None => note,
            });
        }
        return out;
    }
    let used = match (replica.role, done) {
        (ReplicaRole::Start, true) => Used::Started,
        (ReplicaRole::Start, false) if out.status == StepStatus::Failed && !may_run => {
            Used::NotStarted
        }
        (ReplicaRole::DrillStop, true) => Used::DrillStopped,
        (ReplicaRole::FailedBack, true) => Used::FailedBack,
        _ => return out,
    };
    let vm = replica.vm.clone();
    let result = leases_after(ctx, step, replica, used).await;
    let note = match result {
        Ok(Some(note)) => note,
        Ok(None) => return out,
        // A vm running on its copies: its failover's lease is what a failback and a restore
        // go by, never to be released by hand.
        Err(e) if used == Used::Started => format!(
            "the leases of vm {vm}'s recovery copies could not be updated ({e}): see `reprise check`; they stay held by this run while vm {vm} runs on them"
        ),
        Err(e) => format!(
            "the leases of vm {vm}'s recovery copies could not be updated ({e}): see `reprise check`; `reprise release {vm}` frees them"
        ),
    };
    out.message = Some(match out.message.take() {
        Some(old) => format!("{old}; {note}"),
        None => note,
    });
    out
}

/// After a roll-back stopped a vm a start step of the run had started. A failover's start:
/// the lease of the run on its recovery copies is released, so that no failback takes them
/// for the newer data of a vm that runs there (production runs again on the primary) and
/// replication may write into them again. A failback's start on the primary: its recovery
/// copies, which the start released, are leased to it again, since they hold what it wrote
/// there since the failover (the roll-back starts it there again) and no replication may
/// write into them. A note for the undo's message.
pub(super) async fn undone(ctx: &RunContext, step: &PlannedStep) -> Option<String> {
    let replica = step
        .replica
        .clone()
        .filter(|r| matches!(r.role, ReplicaRole::Start | ReplicaRole::FailedBack))?;
    let failed_back = replica.role == ReplicaRole::FailedBack;
    let used = if failed_back {
        // The copies hold its data as of no later than the failback's beginning (run ids
        // say the second it began; else now, as before).
        Used::StartedAgain {
            since: crate::journal::run_began(&ctx.plan.run_id).unwrap_or_else(chrono::Utc::now),
        }
    } else {
        Used::Undone
    };
    let vm = replica.vm.clone();
    let result = leases_after(ctx, step, replica, used).await;
    Some(match (result, failed_back) {
        (Ok(_), false) => format!("the recovery copies of vm {vm} were released"),
        (Ok(_), true) => format!(
            "the recovery copies of vm {vm} are leased to it again: they hold what it wrote there since the failover, and no replication writes into them; what it wrote on its primary since this failback began is not in them, and the next failback says so before it would overwrite it"
        ),
        (Err(e), false) => format!(
            "the recovery copies of vm {vm} are still leased to this run ({e}): `reprise release {vm}` frees them"
        ),
        (Err(e), true) => format!(
            "the recovery copies of vm {vm} could not be leased to it again ({e}): they hold what it wrote there since the failover; no replication may write into them (see `reprise check`)"
        ),
    })
}

/// Why vm `replica`'s recovery copies are not let go once a failback started it on the
/// primary: they were written since its copy back read them (the vm ran there again: what it
/// wrote is not on the primary), or whether they were cannot be told. Let go, the next
/// replication would write the primary's data over them without a word; kept leased, it is
/// refused, and this says what to do (`Err`). Else what the copy back read, each copy and its
/// stamp, to let them go at (none for a vm this run does not copy back).
async fn written_since_copied_back(
    ctx: &RunContext,
    step: &PlannedStep,
    replica: &ReplicaUse,
) -> Result<Vec<(String, String)>, String> {
    // Only a vm this run copies back to the step's host (one it does not copy back had its
    // copies let go by hand before: nothing was read to compare with).
    let copied = ctx.plan.steps.iter().any(|s| {
        matches!(&s.action_spec, Action::Replicate { what: Replicated::Vm(v), to_host, .. }
            if *v == replica.vm && Some(to_host.as_str()) == step.host.as_deref())
    });
    if !copied {
        return Ok(Vec::new());
    }
    let vm = replica.vm.clone();
    let read = ctx
        .copied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&vm)
        .cloned();
    let keep = |why: String| {
        format!(
            "the recovery copies of vm {vm} stay leased, so that no replication writes into them: {why}; keep what they hold that the primary lacks (copy it over by hand), then `reprise release {vm}` lets them go"
        )
    };
    let Some(read) = read else {
        return Err(keep(
            "what its copy back read is known neither to this process nor to the run's journal, so whether they were written since cannot be told".into(),
        ));
    };
    let transport = ctx.transport.clone();
    let host = read.host.clone();
    let stamps = read.stamps.clone();
    let since = tokio::task::spawn_blocking(move || {
        start::written_since(&Remote::new(transport.as_ref()), &read.host, &read.stamps)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the replica task failed: {e}")));
    match since {
        Ok(None) => Ok(stamps),
        Ok(Some(changed)) => Err(keep(format!(
            "they were written on {host} since its copy back read them ({changed}): vm {vm} ran there again, and what it wrote is not on the primary"
        ))),
        Err(e) => Err(keep(format!(
            "whether they were written on {host} since its copy back read them cannot be told ({e})"
        ))),
    }
}

/// What the run's outcome `used` leaves to the recovery copies of `replica` ([`start::after`],
/// off the runtime's threads).
async fn leases_after(
    ctx: &RunContext,
    step: &PlannedStep,
    replica: ReplicaUse,
    used: Used,
) -> Result<Option<String>, String> {
    let (transport, run, step_id) = (
        ctx.transport.clone(),
        ctx.plan.run_id.clone(),
        step.id.clone(),
    );
    tokio::task::spawn_blocking(move || {
        start::after(
            &Remote::new(transport.as_ref()),
            copies(&replica),
            &run,
            &step_id,
            used,
        )
    })
    .await
    .unwrap_or_else(|e| Err(format!("the replica task failed: {e}")))
}
