//! Backup steps: the copy of a backup set a drill or a failover relies on, proven as a vm's
//! copies are before its start ([`crate::replica::start::prepare`]: the newest good point,
//! verified, the folder not changed behind it, else read again by hash; unverified data only
//! when the operator names the set with `--accept-unverified`), leased at that point (the
//! lease refuses a folder that is no longer it), and journaled as the point used. A failover
//! keeps its `live` lease: the recovery site now writes into the folder, no replication
//! writes over it, and a failback knows what the primary's folder got since. A drill keeps
//! its lease until its cleanup is over: its steps read the folder, which no replication
//! changes under them meanwhile.

use chrono::Utc;

use super::context::{Outcome, RunContext, StepRun};
use crate::event::{Event, StepStatus};
use crate::plan::BackupUse;
use crate::replica::choice::Use;
use crate::replica::start::{self, Copies as _, Remote, Request, Vm};

/// Runs a backup step.
pub(super) async fn run(ctx: &RunContext, run: &StepRun, copy: &BackupUse) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    let how = if copy.failover {
        Use::Failover
    } else {
        Use::Drill
    };
    let ask = ctx
        .options
        .points
        .ask_set(&copy.set, &ctx.plan.run_id, copy.failover);
    let (transport, run_id, id, c) = (
        ctx.transport.clone(),
        ctx.plan.run_id.clone(),
        step.id.clone(),
        copy.clone(),
    );
    let prepared = tokio::task::spawn_blocking(move || {
        let (paths, sources) = ([c.path.clone()], [c.source.clone()]);
        let req = Request {
            run: &run_id,
            step: &id,
            vm: Vm {
                name: &c.set,
                host: &c.host,
                paths: &paths,
                sources: &sources,
            },
            how,
            ask,
            defines: false,
            may_roll_back: false,
            snapshot_check: None,
            backup: true,
        };
        let remote = Remote::new(transport.as_ref());
        // A drill keeps its lease until its cleanup is over ([`give_back_drilled`]): its
        // steps read the folder, and a replication writing into it meanwhile would give them
        // files of another point than the one journaled, or of two.
        start::prepare(&remote, &req)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the replica task failed: {e}")));
    let prepared = match prepared {
        Ok(p) => p,
        Err(why) => {
            let e = refused(copy, &why);
            run.send(Event::StepOutput {
                at: Utc::now(),
                step: step.id.clone(),
                attempt: 1,
                stdout: String::new(),
                stderr: e.clone(),
                exit_code: None,
            });
            return run.outcome(StepStatus::Failed, 1, Some(e));
        }
    };
    let s = prepared.start;
    let notes = prepared.notes;
    run.send(Event::ReplicaPointUsed {
        at: Utc::now(),
        step: step.id.clone(),
        item: copy.set.clone(),
        point: s.point.clone(),
        taken_at: s.taken_at,
        written_until: (s.written_until != s.taken_at).then_some(s.written_until),
        verified: s.verified,
        note: Some(if notes.is_empty() {
            format!("the newest point on {}, verified", copy.host)
        } else {
            notes.join("; ")
        }),
        dropped: s.dropped,
    });
    let message = copy.failover.then(|| {
        format!(
            "the copy {}:{} of backup set {} is leased to this run at point {}: no replication writes into it until a failback releases it",
            copy.host, copy.path, copy.set, s.point
        )
    });
    // What its copy left out (empty folders, links within the set) is said with the step's
    // end, where the person running it reads, not only in the journal's point.
    let said: Vec<&str> = message
        .iter()
        .chain(
            notes
                .iter()
                .filter(|n| n.contains(crate::replica::remote::LEFT_OUT)),
        )
        .map(String::as_str)
        .collect();
    let message = (!said.is_empty()).then(|| said.join("; "));
    run.outcome(StepStatus::Done, 1, message)
}

/// Once a drill's cleanup is over, the copies of backup sets its steps leased (`copies`) are
/// given back: a replication may write into them again. What could not be, said (the
/// replication then refuses the folder, naming this run; `reprise release SET` frees it).
pub(super) async fn give_back_drilled(
    ctx: &RunContext,
    copies: Vec<(String, BackupUse)>,
) -> Vec<(String, String)> {
    let (transport, run_id) = (ctx.transport.clone(), ctx.plan.run_id.clone());
    tokio::task::spawn_blocking(move || give_back_sets(transport.as_ref(), &run_id, &copies))
        .await
        .unwrap_or_default()
}

/// Gives back the drill leases of run `run_id` on the backup sets' copies `copies` (each with
/// its step): for each that could not be, its step and what to say.
pub fn give_back_sets(
    transport: &dyn crate::ssh::Transport,
    run_id: &str,
    copies: &[(String, BackupUse)],
) -> Vec<(String, String)> {
    let remote = Remote::new(transport);
    copies
        .iter()
        .filter_map(|(step, c)| {
            let paths = [c.path.clone()];
            remote
                .release(&c.host, &paths, Some(run_id), Some(crate::replica::LeaseKind::Drill))
                .err()
                .map(|e| {
                    (step.clone(), format!(
                        "backup set {}: the drill's lease on its copy {}:{} could not be given back ({e}); `reprise release {}` frees it",
                        c.set, c.host, c.path, c.set
                    ))
                })
        })
        .collect()
}

/// Why the run does not rely on the copy: the set, its host and folder, and what to do.
pub(super) fn refused(copy: &BackupUse, why: &str) -> String {
    let what = if copy.failover {
        "a failover"
    } else {
        "a drill"
    };
    format!(
        "backup set {}: its copy {}:{} is not proven, so {what} does not rely on it: {why}; `reprise check` shows it, `reprise replicate {}` makes a new verified point, or name it with --accept-unverified {} to use it as it is (journaled)",
        copy.set, copy.host, copy.path, copy.set, copy.set
    )
}

/// The roll-back of a failover that relied on the copy: the run's `live` lease is released
/// (production runs on the primary again; replication may write into the copy), or why not.
pub(super) async fn undo(ctx: &RunContext, copy: &BackupUse) -> (bool, String) {
    let (transport, run_id, c) = (ctx.transport.clone(), ctx.plan.run_id.clone(), copy.clone());
    let released = tokio::task::spawn_blocking(move || {
        let paths = [c.path.clone()];
        let vm = Vm {
            name: &c.set,
            host: &c.host,
            paths: &paths,
            sources: &[],
        };
        start::after(
            &Remote::new(transport.as_ref()),
            vm,
            &run_id,
            "",
            start::Used::NotStarted,
        )
    })
    .await
    .unwrap_or_else(|e| Err(format!("the replica task failed: {e}")));
    match released {
        Ok(_) => (
            true,
            format!(
                "the copy {}:{} of backup set {} was released",
                copy.host, copy.path, copy.set
            ),
        ),
        Err(e) => (
            false,
            format!(
                "the copy {}:{} of backup set {} is still leased to this run ({e}): `reprise release {}` frees it",
                copy.host, copy.path, copy.set, copy.set
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::super::context::PointChoice;
    use crate::replica::choice::Want;

    /// A backup set answers to a point named for it and to `--point-before`, never to a
    /// point named for every vm; to `--accept-unverified` by its name or `all`.
    #[test]
    fn a_backup_set_answers_to_its_own_point_and_to_point_before_only() {
        let before = chrono::Utc::now();
        let mut choice = PointChoice {
            all: Some("P-vm".into()),
            ..PointChoice::default()
        };
        assert_eq!(choice.ask_set("erp-dumps", "r", true).want, None);
        choice.before = Some(before);
        assert_eq!(
            choice.ask_set("erp-dumps", "r", true).want,
            Some(Want::Before(before))
        );
        choice.by_vm.insert("erp-dumps".into(), "P1".into());
        assert_eq!(
            choice.ask_set("erp-dumps", "r", true).want,
            Some(Want::Id("P1".into()))
        );
        // A drill never asks for a point.
        assert_eq!(choice.ask_set("erp-dumps", "r", false).want, None);
        assert!(!choice.ask_set("erp-dumps", "r", true).accept_unverified);
        choice.accept_unverified = vec!["erp-dumps".into()];
        assert!(choice.ask_set("erp-dumps", "r", true).accept_unverified);
        choice.accept_unverified = vec!["*".into()];
        assert!(choice.ask_set("ad-state", "r", true).accept_unverified);
    }
}
