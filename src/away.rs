//! Which vms a failover left on their recovery host, as this machine's journals tell: a vm a
//! failover started there, and no failback or restore started on its primary since. A restore
//! asks the recovery host first (its copies' `live` leases); when that host cannot be asked, or
//! the vm has no copies of reprise's to hold a lease, these journals are what is left to keep a
//! restore from starting the vm on its disks of before the failover. Pure but for [`read`].

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};

use crate::event::{Event, StepStatus};
use crate::journal;
use crate::runbook::Mode;

/// A vm a failover started on its recovery host, with nothing since that started it on its
/// primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Away {
    pub vm: String,
    pub service: String,
    /// The failover run and its step that started the vm.
    pub run_id: String,
    pub step: String,
    pub host: Option<String>,
    /// When the step ended (or began, when it never ended).
    pub at: DateTime<Utc>,
    /// Whether the journal shows the start done, or only that it may have started the vm (it
    /// never ended, or failed after the start was asked).
    pub done: bool,
}

impl Away {
    /// One line for a refusal or a warning.
    pub fn said(&self) -> String {
        let how = if self.done {
            "started it"
        } else {
            "may have started it (its step did not end done)"
        };
        let host = self
            .host
            .as_deref()
            .map(|h| format!(" on {h}"))
            .unwrap_or_default();
        format!(
            "failover run {} {how}{host} at {} (step {}), and no failback or restore has started it on its primary since, as this machine's journals show",
            self.run_id,
            self.at.format("%Y-%m-%d %H:%M:%S UTC"),
            self.step
        )
    }
}

/// A vm step's start, as one run's journal shows it: on the recovery host (a failover) or on
/// the primary (a failback, a restore).
struct Start {
    at: DateTime<Utc>,
    run: String,
    vm: Option<String>,
    service: String,
    away: Option<Away>,
}

/// The vms left away, from every run's events (`(run id, events)`, in any order). A drill never
/// moves a vm (it starts a copy of it, apart). Pure.
pub fn away_of(runs: &[(String, Vec<Event>)]) -> BTreeMap<String, Away> {
    let starts = sorted_starts(runs);
    let mut out: BTreeMap<String, Away> = BTreeMap::new();
    for s in starts {
        match (s.away, s.vm) {
            (Some(away), _) => {
                out.insert(away.vm.clone(), away);
            }
            (None, Some(vm)) => {
                out.remove(&vm);
            }
            // An older journal's start of a service's vm on its primary, which does not name
            // the vm: it brought back the service's vms.
            (None, None) => out.retain(|_, a| a.service != s.service),
        }
    }
    out
}

/// Per vm a failover moved, the newest run that brought it back since (its failback, its
/// restore, its roll-back), if the vm is back: without that run's journal, the failover's
/// would say the vm is still away. Pure.
pub fn back_of(runs: &[(String, Vec<Event>)]) -> BTreeMap<String, String> {
    let starts = sorted_starts(runs);
    let mut moved = std::collections::BTreeSet::new();
    let mut back: BTreeMap<String, String> = BTreeMap::new();
    for s in starts {
        match (&s.away, &s.vm) {
            (Some(away), _) => {
                moved.insert(away.vm.clone());
                back.remove(&away.vm);
            }
            (None, Some(vm)) if moved.contains(vm) => {
                back.insert(vm.clone(), s.run.clone());
            }
            _ => {}
        }
    }
    back
}

/// A service its application replicates (a standby promoted, not a disk copy started) that
/// a failover switched to its other side: a main step of it done on a host other than its
/// own, and not undone, with no failback or restore of it done since, as these journals
/// show. Keyed by service: the failover run, its step and when it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    pub run_id: String,
    pub step: String,
    pub host: Option<String>,
    pub at: DateTime<Utc>,
    /// The step ended done; else it failed, timed out or never ended, and may have.
    pub done: bool,
}

/// What one step of a run did to a service: switched it (a failover's step on its other
/// side), or brought it back (a failback's or restore's step done on its own host).
struct Move {
    at: DateTime<Utc>,
    run_id: String,
    service: String,
    switched: Option<Switched>,
}

/// The moves of the services of `services` (each with its own host, `None`: any step
/// counts) that every run's events show, oldest first. Pure.
fn moves_of(
    runs: &[(String, Vec<Event>)],
    services: &BTreeMap<String, Option<String>>,
) -> Vec<Move> {
    let mut moves = Vec::new();
    for (run_id, events) in runs {
        let Some((mode, Some(plan))) = events.iter().find_map(|e| match e {
            Event::RunStarted { mode, plan, .. } => Some((*mode, plan.as_ref())),
            _ => None,
        }) else {
            continue;
        };
        if !matches!(mode, Mode::Failover | Mode::Failback | Mode::Restore) {
            continue;
        }
        for step in &plan.steps {
            let Some(own) = services.get(&step.service) else {
                continue;
            };
            // What changes a side: not a check, nor a lag reading.
            if step.phase != crate::runbook::Phase::Main
                || matches!(step.kind.as_str(), "check" | "lag")
            {
                continue;
            }
            // Its last attempt: when it began, and how it ended (done, or not: failed, timed
            // out, never ended); undone, nothing.
            let mut began: Option<DateTime<Utc>> = None;
            let mut ended: Option<(DateTime<Utc>, StepStatus)> = None;
            for e in events {
                match e {
                    Event::StepStarted { at, step: s, .. } if *s == step.id => {
                        began = Some(*at);
                        ended = None;
                    }
                    Event::StepFinished {
                        at,
                        step: s,
                        status,
                        ..
                    } if *s == step.id => ended = Some((*at, *status)),
                    Event::UndoFinished {
                        step: s, ok: true, ..
                    } if *s == step.id => began = None,
                    _ => {}
                }
            }
            let Some(began) = began else { continue };
            // On its own host (or, when it has none, anywhere).
            let on_own = own.is_none() || (step.host.is_some() && step.host == *own);
            let moved = |at, switched| Move {
                at,
                run_id: run_id.clone(),
                service: step.service.clone(),
                switched,
            };
            if mode == Mode::Failover {
                // On its other side: a step on a host, not its own. One that failed, timed
                // out or never ended may have switched it too (a promotion that timed out).
                if own.is_some() && on_own {
                    continue;
                }
                let (at, done) = match ended {
                    Some((at, StepStatus::Done)) => (at, true),
                    Some((at, StepStatus::Failed | StepStatus::TimedOut)) => (at, false),
                    None => (began, false),
                    Some(_) => continue,
                };
                moves.push(moved(
                    at,
                    Some(Switched {
                        run_id: run_id.clone(),
                        step: step.id.clone(),
                        host: step.host.clone(),
                        at,
                        done,
                    }),
                ));
            } else if let Some((at, StepStatus::Done)) = ended
                && on_own
            {
                // Brought back: a step of a failback or restore done on its own host.
                moves.push(moved(at, None));
            }
        }
    }
    moves.sort_by_key(|m| m.at);
    moves
}

/// The services of `services` (each with its own host, `None`: any step counts) that a
/// failover switched, from every run's events (in any order). Pure.
pub fn switched_of(
    runs: &[(String, Vec<Event>)],
    services: &BTreeMap<String, Option<String>>,
) -> BTreeMap<String, Switched> {
    let mut out = BTreeMap::new();
    for m in moves_of(runs, services) {
        match m.switched {
            // The first step of a run that switched it names the switch.
            Some(s) => {
                if out
                    .get(&m.service)
                    .is_none_or(|o: &Switched| o.run_id != s.run_id)
                {
                    out.insert(m.service, s);
                }
            }
            None => {
                out.remove(&m.service);
            }
        }
    }
    out
}

/// For `prune`, which knows no inventory: the runs [`switched_of`] reads to judge a service,
/// for every service these journals name (any host its own): each service's newest failover
/// that switched it, and the failback or restore that brought it back since. Kept, a
/// restore's judgement of a service its application replicates does not change.
pub fn switch_runs(runs: &[(String, Vec<Event>)]) -> BTreeMap<String, String> {
    let services: BTreeMap<String, Option<String>> = runs
        .iter()
        .flat_map(|(_, events)| events.iter())
        .filter_map(|e| match e {
            Event::RunStarted { plan: Some(p), .. } => Some(p.steps.iter()),
            _ => None,
        })
        .flatten()
        .map(|s| (s.service.clone(), None))
        .collect();
    // Per service: its newest failover, and what brought it back since.
    let mut last: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for m in moves_of(runs, &services) {
        match m.switched {
            Some(_) => {
                last.insert(m.service, (m.run_id, None));
            }
            None => {
                if let Some((_, back)) = last.get_mut(&m.service) {
                    *back = Some(m.run_id);
                }
            }
        }
    }
    let mut keep = BTreeMap::new();
    for (service, (failover, back)) in last {
        keep.entry(failover).or_insert_with(|| {
            format!("it may have switched service {service} to its other side: a restore reads it")
        });
        if let Some(back) = back {
            keep.entry(back).or_insert_with(|| {
                format!("it may have brought service {service} back after a failover: a restore reads it")
            });
        }
    }
    keep
}

/// Every run's events of a state folder, and a note for each journal that could not be read:
/// one that cannot be read to its end counts for what comes before the damage, and one that
/// is not its folder's run's alone (moved, joined) counts whole: what it shows was done.
pub fn read_runs(state_dir: &Path) -> (Vec<(String, Vec<Event>)>, Vec<String>) {
    let mut runs = Vec::new();
    let mut unread = Vec::new();
    let ids = match journal::list(state_dir) {
        Ok(ids) => ids,
        Err(e) => return (Vec::new(), vec![e.to_string()]),
    };
    for id in ids {
        let path = journal::runs_dir(state_dir).join(&id).join("journal.jsonl");
        match journal::read_lenient(&path) {
            Ok((events, damage)) => {
                let events = match &damage {
                    Some(_) => journal::read_unchecked(&path)
                        .map(|(all, _)| all)
                        .unwrap_or(events),
                    None => events,
                };
                if let Some(d) = damage {
                    unread.push(format!("{id}: {d}"));
                }
                runs.push((id, events));
            }
            Err(e) => unread.push(format!("{id}: {e}")),
        }
    }
    (runs, unread)
}

/// The vm starts of every run that moved a vm, oldest first.
fn sorted_starts(runs: &[(String, Vec<Event>)]) -> Vec<Start> {
    let mut starts: Vec<Start> = runs
        .iter()
        .flat_map(|(id, events)| starts_of(id, events))
        .collect();
    starts.sort_by_key(|s| s.at);
    starts
}

/// The vm starts of one run that moved a vm: a failover's that may have started it on its
/// recovery host; a failback's or a restore's done on its primary.
fn starts_of(run_id: &str, events: &[Event]) -> Vec<Start> {
    let Some((mode, steps)) = events.iter().find_map(|e| match e {
        Event::RunStarted { mode, plan, .. } => Some((*mode, plan.as_ref())),
        _ => None,
    }) else {
        return Vec::new();
    };
    let Some(plan) = steps else {
        return Vec::new();
    };
    if !matches!(mode, Mode::Failover | Mode::Failback | Mode::Restore) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for step in &plan.steps {
        let id = step.id.as_str();
        // A failover rolled back starts its vm again on its primary (the undo of its stop
        // there): it is back.
        if mode == Mode::Failover && step.kind == "vm" && step.action.as_deref() == Some("stop") {
            let back = events.iter().rev().find_map(|e| match e {
                Event::UndoFinished {
                    at, step, ok: true, ..
                } if step == id => Some(*at),
                _ => None,
            });
            if let Some(at) = back {
                out.push(Start {
                    at,
                    run: run_id.to_string(),
                    vm: step.vm.clone(),
                    service: step.service.clone(),
                    away: None,
                });
            }
            continue;
        }
        // An older journal does not say a step's action: a step that chose a replica point
        // to start from is a start.
        let start = match step.action.as_deref() {
            Some(action) => action == "start",
            None => events
                .iter()
                .any(|e| matches!(e, Event::ReplicaPointUsed { step, .. } if step == id)),
        };
        if step.kind != "vm" || !start {
            continue;
        }
        let mut began = None;
        let mut ended: Option<(DateTime<Utc>, StepStatus)> = None;
        let mut undone = false;
        let mut item = None;
        for e in events {
            match e {
                Event::StepStarted { at, step, .. } if step == id => {
                    began.get_or_insert(*at);
                    // A run carried on runs the step again: what it did last counts.
                    ended = None;
                    undone = false;
                }
                Event::StepFinished {
                    at, step, status, ..
                } if step == id => ended = Some((*at, *status)),
                Event::ReplicaPointUsed { step, item: i, .. } if step == id => {
                    item = Some(i.clone());
                }
                // A start left running by the roll-back (the vm ran there before it) is not
                // undone: the vm runs there still.
                Event::UndoFinished {
                    step,
                    ok: true,
                    message,
                    ..
                } if step == id => {
                    undone = !message
                        .as_deref()
                        .is_some_and(|m| m.starts_with(crate::runner::LEFT_RUNNING));
                }
                _ => {}
            }
        }
        let Some(began) = began else { continue };
        if undone {
            continue;
        }
        let vm = step.vm.clone().or(item);
        if mode == Mode::Failover {
            // A start that failed or timed out may have taken effect (the connection lost
            // once its command was sent, the vm up and its check failing): the journal cannot
            // tell, so it counts.
            let (at, done) = match ended {
                Some((at, StepStatus::Done)) => (at, true),
                None => (began, false),
                Some((at, StepStatus::Failed | StepStatus::TimedOut)) => (at, false),
                Some(_) => continue,
            };
            // A step of an older journal that names no vm: nothing to say which.
            let Some(vm) = vm else { continue };
            out.push(Start {
                at,
                run: run_id.to_string(),
                vm: Some(vm.clone()),
                service: step.service.clone(),
                away: Some(Away {
                    vm,
                    service: step.service.clone(),
                    run_id: run_id.to_string(),
                    step: id.to_string(),
                    host: step.host.clone(),
                    at,
                    done,
                }),
            });
        } else if let Some((at, StepStatus::Done)) = ended {
            out.push(Start {
                at,
                run: run_id.to_string(),
                vm,
                service: step.service.clone(),
                away: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{RunPlan, StepRecord};
    use crate::runbook::Phase;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 3, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    /// A failover's journal moved to another folder (`mv runs/ID runs/ID-incident`) is not
    /// that folder's run, and is said so; what it shows was done still counts for a
    /// restore's safeguards, never dropped unsaid.
    #[test]
    fn a_journal_moved_to_another_folder_still_counts_and_is_said() {
        let state = tempfile::tempdir().unwrap();
        let dir = journal::RunDir::create(state.path(), "r1-incident").unwrap();
        let started: Event = serde_json::from_value(serde_json::json!({
            "event": "run_started", "at": "2026-12-04T03:00:00Z", "run_id": "r1",
            "mode": "failover", "emergency": true, "services": [], "only": false,
            "operator": "o", "machine": "m", "version": "v", "sources_digest": "d",
            "steps": [],
        }))
        .unwrap();
        let finished = Event::RunFinished {
            at: t(60),
            status: crate::event::RunStatus::Succeeded,
        };
        let mut w = journal::JournalWriter::open(&dir).unwrap();
        w.append(&started).unwrap();
        w.append(&finished).unwrap();
        let (runs, unread) = read_runs(state.path());
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].1.len(), 2, "{runs:?}");
        assert_eq!(unread.len(), 1, "{unread:?}");
        assert!(
            unread[0].contains("the journal of run `r1` is in the folder of run `r1-incident`"),
            "{unread:?}"
        );
    }

    fn start_step(id: &str, vm: Option<&str>, host: &str) -> StepRecord {
        StepRecord {
            id: id.into(),
            service: id.split('/').next().unwrap().into(),
            kind: "vm".into(),
            host: Some(host.into()),
            phase: Phase::Main,
            description: None,
            instructions: None,
            after: Vec::new(),
            expected_s: 10,
            tls_unverified: false,
            action: Some("start".into()),
            vm: vm.map(Into::into),
        }
    }

    fn run(mode: Mode, at: i64, steps: Vec<StepRecord>, then: Vec<Event>) -> Vec<Event> {
        let mut events = vec![Event::RunStarted {
            at: t(at),
            run_id: format!("R{at}"),
            mode,
            emergency: false,
            services: Vec::new(),
            only: false,
            operator: "op".into(),
            machine: "m".into(),
            version: "0".into(),
            sources_digest: "d".into(),
            steps: steps.iter().map(|s| s.id.clone()).collect(),
            sites: Vec::new(),
            incident_at: None,
            plan: Some(Box::new(RunPlan {
                services: Vec::new(),
                steps,
                estimated_s: 0,
                critical_path: Vec::new(),
            })),
            readiness: None,
            points: None,
        }];
        events.extend(then);
        events
    }

    fn began(step: &str, at: i64) -> Event {
        Event::StepStarted {
            at: t(at),
            step: step.into(),
            attempt: 1,
            host: None,
        }
    }

    fn ended(step: &str, at: i64, status: StepStatus) -> Event {
        Event::StepFinished {
            at: t(at),
            step: step.into(),
            attempt: 1,
            status,
            duration_ms: 0,
            message: None,
        }
    }

    fn asked(step: &str, at: i64) -> Event {
        Event::VmStateBefore {
            at: t(at),
            step: step.into(),
            running: Some(false),
            said: "shut off".into(),
        }
    }

    fn failover(at: i64, status: Option<StepStatus>) -> (String, Vec<Event>) {
        let mut then = vec![began("erp/start", at + 1), asked("erp/start", at + 2)];
        then.extend(status.map(|s| ended("erp/start", at + 3, s)));
        (
            format!("R{at}"),
            run(
                Mode::Failover,
                at,
                vec![start_step("erp/start", Some("erp-db"), "hv-pra")],
                then,
            ),
        )
    }

    fn back(mode: Mode, at: i64, vm: Option<&str>, status: StepStatus) -> (String, Vec<Event>) {
        (
            format!("R{at}"),
            run(
                mode,
                at,
                vec![start_step("erp/start", vm, "hv-main")],
                vec![
                    began("erp/start", at + 1),
                    ended("erp/start", at + 3, status),
                ],
            ),
        )
    }

    fn left(runs: &[(String, Vec<Event>)]) -> Vec<(String, String, bool)> {
        away_of(runs)
            .into_values()
            .map(|a| (a.vm, a.run_id, a.done))
            .collect()
    }

    #[test]
    fn a_failover_leaves_its_vm_away_until_a_failback_or_restore_starts_it_on_its_primary() {
        let away = vec![("erp-db".to_string(), "R0".to_string(), true)];
        assert_eq!(left(&[failover(0, Some(StepStatus::Done))]), away);
        // A failback that started it on its primary brings it back; one whose start failed
        // does not; a later failover sends it away again.
        for (mode, status, then_away) in [
            (Mode::Failback, StepStatus::Done, false),
            (Mode::Restore, StepStatus::Done, false),
            (Mode::Failback, StepStatus::Failed, true),
            (Mode::Drill, StepStatus::Done, true),
        ] {
            let runs = [
                failover(0, Some(StepStatus::Done)),
                back(mode, 100, Some("erp-db"), status),
            ];
            assert_eq!(left(&runs).is_empty(), !then_away, "{mode:?} {status:?}");
            let mut runs = runs.to_vec();
            runs.push(failover(200, Some(StepStatus::Done)));
            assert_eq!(
                left(&runs),
                [("erp-db".to_string(), "R200".to_string(), true)]
            );
        }
        // The journals come in any order: their times count.
        let runs = [
            back(Mode::Failback, 100, Some("erp-db"), StepStatus::Done),
            failover(0, Some(StepStatus::Done)),
        ];
        assert!(left(&runs).is_empty());
        // An older journal's failback names no vm: its service's start brings it back.
        let runs = [
            failover(0, Some(StepStatus::Done)),
            back(Mode::Failback, 100, None, StepStatus::Done),
        ];
        assert!(left(&runs).is_empty());
    }

    #[test]
    fn a_start_that_may_have_run_counts_and_one_undone_blocked_or_cancelled_does_not() {
        // Never ended (a crash), or failed after the start was asked: it may run there.
        assert_eq!(
            left(&[failover(0, None)]),
            [("erp-db".to_string(), "R0".to_string(), false)]
        );
        assert_eq!(left(&[failover(0, Some(StepStatus::Failed))]).len(), 1);
        assert_eq!(left(&[failover(0, Some(StepStatus::TimedOut))]).len(), 1);
        for s in [StepStatus::Blocked, StepStatus::Cancelled] {
            assert!(left(&[failover(0, Some(s))]).is_empty(), "{s:?}");
        }
        // Failed with nothing journaled of its command (a driver without `status`, a vm
        // without copies): it may have started all the same.
        let (id, mut events) = failover(0, Some(StepStatus::TimedOut));
        events.retain(|e| !matches!(e, Event::VmStateBefore { .. }));
        assert_eq!(left(&[(id, events)]).len(), 1);
        // Undone by the failover's roll-back.
        let (id, mut events) = failover(0, Some(StepStatus::Done));
        events.push(Event::UndoFinished {
            at: t(10),
            step: "erp/start".into(),
            ok: true,
            message: None,
        });
        assert!(left(&[(id, events)]).is_empty());
        // Left running by the roll-back, as it ran there before the step: it runs there still.
        let (id, mut events) = failover(0, Some(StepStatus::Done));
        events.push(Event::UndoFinished {
            at: t(10),
            step: "erp/start".into(),
            ok: true,
            message: Some(crate::runner::LEFT_RUNNING.into()),
        });
        assert_eq!(left(&[(id, events)]).len(), 1);
        // A drill's start of the same step starts a copy apart: nothing moves.
        let (id, mut events) = failover(0, Some(StepStatus::Done));
        if let Event::RunStarted { mode, .. } = &mut events[0] {
            *mode = Mode::Drill;
        }
        assert!(left(&[(id, events)]).is_empty());
    }

    /// The newest run that brought a vm back is named for each vm a failover moved; a vm
    /// away again is named by none.
    #[test]
    fn the_run_that_brought_a_vm_back_is_named() {
        let runs = [
            failover(0, Some(StepStatus::Done)),
            back(Mode::Failback, 100, Some("erp-db"), StepStatus::Done),
            back(Mode::Restore, 200, Some("erp-db"), StepStatus::Done),
        ];
        assert_eq!(
            back_of(&runs).into_iter().collect::<Vec<_>>(),
            [("erp-db".to_string(), "R200".to_string())]
        );
        let mut again = runs.to_vec();
        again.push(failover(300, Some(StepStatus::Done)));
        assert!(back_of(&again).is_empty());
        // A restore of a vm no failover moved brings nothing back.
        assert!(back_of(&runs[1..]).is_empty());
    }

    /// A failover rolled back (its start undone, the primary's stop undone: the vm started
    /// again there) leaves nothing away.
    #[test]
    fn a_failover_rolled_back_brings_its_vm_back() {
        let stop = StepRecord {
            action: Some("stop".into()),
            ..start_step("erp/stop-primary", Some("erp-db"), "hv-main")
        };
        let undone = |step: &str, at: i64| Event::UndoFinished {
            at: t(at),
            step: step.into(),
            ok: true,
            message: None,
        };
        let events = run(
            Mode::Failover,
            0,
            vec![stop, start_step("erp/start", Some("erp-db"), "hv-pra")],
            vec![
                began("erp/stop-primary", 1),
                ended("erp/stop-primary", 2, StepStatus::Done),
                began("erp/start", 3),
                asked("erp/start", 4),
                ended("erp/start", 5, StepStatus::Failed),
                undone("erp/stop-primary", 9),
            ],
        );
        assert!(left(&[("R0".into(), events.clone())]).is_empty());
        // Its primary not started again (the undo failed): the start may have run.
        let mut kept = events;
        kept.pop();
        assert_eq!(left(&[("R0".into(), kept)]).len(), 1);
    }

    #[test]
    fn an_older_journal_names_the_vm_by_the_point_it_started_from() {
        let (id, mut events) = failover(0, Some(StepStatus::Done));
        if let Event::RunStarted { plan: Some(p), .. } = &mut events[0] {
            p.steps[0].vm = None;
            p.steps[0].action = None;
        }
        assert!(left(&[(id.clone(), events.clone())]).is_empty());
        events.insert(
            2,
            Event::ReplicaPointUsed {
                at: t(2),
                step: "erp/start".into(),
                item: "erp-db".into(),
                point: "P1".into(),
                taken_at: t(-60),
                written_until: None,
                verified: true,
                note: None,
                dropped: Vec::new(),
            },
        );
        assert_eq!(
            left(&[(id, events)]),
            [("erp-db".to_string(), "R0".to_string(), true)]
        );
    }

    fn exec_step(id: &str, host: &str) -> StepRecord {
        StepRecord {
            kind: "exec".into(),
            action: None,
            ..start_step(id, None, host)
        }
    }

    /// lms-db, which PostgreSQL replicates to pg-pra: a failover's step done on pg-pra (the
    /// promote) switches it; one done on its own host (the primary's stop) does not; one
    /// rolled back does not; a failback or restore of it done since brings it back; another
    /// service's steps say nothing of it.
    #[test]
    fn a_service_its_application_replicates_is_switched_by_a_failover_step_on_its_other_side() {
        let services: BTreeMap<String, Option<String>> =
            [("lms-db".to_string(), Some("moodle-db".to_string()))].into();
        let steps = || {
            vec![
                exec_step("lms-db/stop-primary", "moodle-db"),
                exec_step("lms-db/promote", "pg-pra"),
            ]
        };
        let failover = |at: i64, promoted: StepStatus, then: Vec<Event>| {
            let mut events = vec![
                began("lms-db/stop-primary", at + 1),
                ended("lms-db/stop-primary", at + 2, StepStatus::Done),
                began("lms-db/promote", at + 3),
                ended("lms-db/promote", at + 4, promoted),
            ];
            events.extend(then);
            (format!("R{at}"), run(Mode::Failover, at, steps(), events))
        };
        let promoted = failover(0, StepStatus::Done, Vec::new());
        let got = switched_of(std::slice::from_ref(&promoted), &services);
        let s = &got["lms-db"];
        assert_eq!(
            (s.run_id.as_str(), s.step.as_str(), s.at),
            ("R0", "lms-db/promote", t(4))
        );
        assert_eq!(got.len(), 1);
        // Only the primary stopped (and the standby's lag read, a check run there): not
        // switched.
        let mut lag = exec_step("lms-db/replication-lag", "pg-pra");
        lag.kind = "lag".into();
        let mut stopped = failover(
            0,
            StepStatus::Failed,
            vec![
                began("lms-db/replication-lag", 5),
                ended("lms-db/replication-lag", 6, StepStatus::Done),
            ],
        );
        if let Some(Event::RunStarted { plan: Some(p), .. }) = stopped.1.first_mut() {
            p.steps.push(lag);
        }
        // The promotion failed (or timed out, or never ended): it may have switched it.
        let got = switched_of(std::slice::from_ref(&stopped), &services);
        assert!(
            got.len() == 1 && !got["lms-db"].done && got["lms-db"].step == "lms-db/promote",
            "{got:?}"
        );
        // Never begun: only the primary stopped, and the lag read.
        stopped.1.retain(|e| {
            !matches!(e, Event::StepStarted { step, .. } | Event::StepFinished { step, .. } if step == "lms-db/promote")
        });
        assert!(switched_of(&[stopped], &services).is_empty());
        // Rolled back: not switched.
        let undone = failover(
            0,
            StepStatus::Done,
            vec![Event::UndoFinished {
                at: t(9),
                step: "lms-db/promote".into(),
                ok: true,
                message: None,
            }],
        );
        assert!(switched_of(&[undone], &services).is_empty());
        // A failback of it since: back.
        let failback = (
            "R100".to_string(),
            run(
                Mode::Failback,
                100,
                vec![exec_step("lms-db/start", "moodle-db")],
                vec![
                    began("lms-db/start", 101),
                    ended("lms-db/start", 102, StepStatus::Done),
                ],
            ),
        );
        assert!(switched_of(&[promoted.clone(), failback.clone()], &services).is_empty());
        // A failback whose only step done is on the other side (its reverse replication set
        // up there), rolled back before moodle-db is primary again: not back.
        let half = (
            "R100".to_string(),
            run(
                Mode::Failback,
                100,
                vec![exec_step("lms-db/reverse", "pg-pra")],
                vec![
                    began("lms-db/reverse", 101),
                    ended("lms-db/reverse", 102, StepStatus::Done),
                ],
            ),
        );
        assert_eq!(switched_of(&[promoted.clone(), half], &services).len(), 1);
        // A failback that failed brings nothing back.
        let mut failed = failback.clone();
        if let Some(Event::StepFinished { status, .. }) = failed.1.last_mut() {
            *status = StepStatus::Failed;
        }
        assert_eq!(switched_of(&[promoted.clone(), failed], &services).len(), 1);
        // A service with no host of its own: any step of the failover switches it.
        let anywhere: BTreeMap<String, Option<String>> = [("lms-db".to_string(), None)].into();
        assert_eq!(
            switched_of(std::slice::from_ref(&promoted), &anywhere).len(),
            1
        );
        // `prune` keeps the failover that switched it and the failback that brought it back.
        let keep = switch_runs(&[promoted.clone(), failback.clone()]);
        assert_eq!(keep.keys().collect::<Vec<_>>(), ["R0", "R100"]);
        // A service its disks replicate is not asked about.
        assert!(switched_of(&[promoted], &BTreeMap::new()).is_empty());
    }
}
