//! The typed events of a run. The runner emits them; the journal, the terminal view and the
//! report consume them. An event is a fact with its time; it never carries a secret.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::readiness::Readiness;
use crate::runbook::{Mode, Phase};

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Done (and verified, when the step has a `verify`).
    Done,
    /// Failed after its last attempt.
    Failed,
    /// Did not succeed before its deadline.
    TimedOut,
    /// Not run because a step it waits for did not succeed.
    Blocked,
    /// Not run because the run was stopped (Ctrl-C, or a failure in a planned run).
    Cancelled,
    /// Its `undo` ran after a failure of the run.
    RolledBack,
}

impl StepStatus {
    pub fn succeeded(self) -> bool {
        self == StepStatus::Done
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every step done.
    Succeeded,
    /// Some steps failed or were blocked; the others done (emergency failover, restore).
    Partial,
    /// The run failed (and was rolled back where it could be).
    Failed,
    /// Stopped by the operator; `reprise resume` carries on.
    Interrupted,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        at: DateTime<Utc>,
        run_id: String,
        mode: Mode,
        emergency: bool,
        services: Vec<String>,
        only: bool,
        /// Who started it.
        operator: String,
        /// The machine the orchestrator ran on.
        machine: String,
        version: String,
        /// Hash of the inventory and runbook files used.
        sources_digest: String,
        steps: Vec<String>,
        /// The sites the plan's steps run on, busiest first.
        #[serde(default)]
        sites: Vec<String>,
        /// When the outage began, as declared by the operator: RTO and data loss are measured
        /// from it (from the run's start when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        incident_at: Option<DateTime<Utc>>,
        /// What the run set out to do, so the report needs nothing but the journal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan: Option<Box<RunPlan>>,
        /// The latest `reprise check` before the run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        readiness: Option<Box<Readiness>>,
        /// The replica points the operator asked a failover to start from (`--point`,
        /// `--point-before`, `--accept-unverified`): a resume starts the vms left from the
        /// same.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        points: Option<Box<PointChoice>>,
    },
    StepStarted {
        at: DateTime<Utc>,
        step: String,
        attempt: u32,
        host: Option<String>,
    },
    StepOutput {
        at: DateTime<Utc>,
        step: String,
        attempt: u32,
        stdout: String,
        stderr: String,
        exit_code: Option<i32>,
    },
    StepFinished {
        at: DateTime<Utc>,
        step: String,
        attempt: u32,
        status: StepStatus,
        duration_ms: u64,
        message: Option<String>,
    },
    WaitingForOperator {
        at: DateTime<Utc>,
        step: String,
        instructions: String,
    },
    Confirmed {
        at: DateTime<Utc>,
        step: String,
        by: String,
        note: Option<String>,
    },
    UndoFinished {
        at: DateTime<Utc>,
        step: String,
        ok: bool,
        message: Option<String>,
    },
    /// A vm's state as its driver's `status` told it just before a step started the vm:
    /// a roll-back stops the vm again only if it was not running (`None`: it could not be told).
    VmStateBefore {
        at: DateTime<Utc>,
        step: String,
        running: Option<bool>,
        /// What `status` printed (or why it could not run).
        said: String,
    },
    /// A planned failover (or a failback) started although the readiness check found problems
    /// that block it on the side it starts vms on, or a restore although this machine's
    /// journals show a failover left a vm it starts on its recovery host, which cannot be
    /// asked: because the operator forced it.
    ReadinessForced {
        at: DateTime<Utc>,
        operator: String,
        /// The blocking problems, as `AREA SUBJECT: DETAIL`.
        problems: Vec<String>,
        /// The vms among them whose start this let pass on data that lacks what was written
        /// on the other side after it (its disks written since the final sync read them; the
        /// primary's disks a failback overwrote): the report does not measure their data
        /// loss. Absent in older journals.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        diverged: Vec<String>,
    },
    /// What the other site showed as a restore or an emergency failover started: a vm still
    /// running there (two copies of its data diverge), or what could not be asked there; or,
    /// with `step`, why a restore's step did not start its vm when it asked again (`refused`:
    /// the step failed, and the run exits with the split-brain code).
    OtherSite {
        at: DateTime<Utc>,
        said: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        refused: bool,
        /// The vms said to run still on the side left as an emergency failover started them
        /// from their copies: what they wrote after their point is not in them, and the
        /// report does not measure their data loss. Absent in older journals.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        diverged: Vec<String>,
        /// The vms an emergency failover started from their copies while the side left could
        /// not be asked whether they still ran there: when they last wrote there is not
        /// known, and the report measures their data loss only to an incident time the
        /// operator declared. Absent in older journals.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unasked: Vec<String>,
    },
    /// A replica point chosen for a VM or backup set (failover, failback, drill): the data-loss
    /// window of that item is the time between `taken_at` and the incident (or the run's start).
    ReplicaPointUsed {
        at: DateTime<Utc>,
        step: String,
        /// The VM or backup set id.
        item: String,
        /// The point's id.
        point: String,
        /// When the point's source state was captured.
        taken_at: DateTime<Utc>,
        /// The latest time what was started from may have been written (a backup set's newest
        /// file, a copy started as it is: its last write); none: `taken_at`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        written_until: Option<DateTime<Utc>>,
        /// True only when the point's BLAKE3 matched (when made or last read) and the copy
        /// still was that point when the vm started.
        verified: bool,
        /// Why this point (e.g. "newest point 20261128T0200Z failed verification").
        note: Option<String>,
        /// The newer points given up by a roll-back to this one.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dropped: Vec<String>,
    },
    /// A service's replication lag as its application's probe read it, just before the
    /// service was switched (a failover) or during a drill: the data a failover loses. `lag_s`
    /// is absent when the lag is unknown, and `unknown` says why.
    LagMeasured {
        at: DateTime<Utc>,
        step: String,
        service: String,
        /// Where the probe ran.
        host: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lag_s: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unknown: Option<String>,
        rpo_target_s: Option<u64>,
    },
    /// What a copy of a vm between its sites (a planned failover's final sync, a failback's
    /// copy back) read, before it read it: each disk on `host` with its stamp (size,
    /// modification time, inode). A resumed failover whose start of the vm on the other site
    /// may have taken effect checks the disks are still so: a vm run there since wrote what
    /// that copy lacks.
    SourceRead {
        at: DateTime<Utc>,
        step: String,
        vm: String,
        host: String,
        stamps: Vec<(String, String)>,
    },
    /// A vm's health check found the vm running on both sites (where the run brought it up
    /// and on the side it left): the answer may come from either, both may be writing; the
    /// check failed, and the run exits with the split-brain code.
    SplitBrain {
        at: DateTime<Utc>,
        step: String,
        vm: String,
        /// The hosts it runs on, the one the run brought it up on first.
        hosts: Vec<String>,
    },
    RunResumed {
        at: DateTime<Utc>,
        operator: String,
        machine: String,
        /// What the operator added to the run's point choice as it resumed it (`resume
        /// --point`, `--accept-unverified`): the vms left start from that too
        /// ([`PointChoice::add`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        points: Option<Box<PointChoice>>,
    },
    /// A stop was asked (a signal: `SIGINT` for Ctrl-C, `SIGTERM`, `SIGHUP`): no new step
    /// starts, running ones finish, a drill's cleanup runs, then the run ends `interrupted`.
    StopRequested { at: DateTime<Utc>, reason: String },
    /// The journal ended with a line a crash left half-written; it was cut off before the run
    /// was carried on, and kept in `kept_in` (the name of a file beside the journal).
    JournalRepaired {
        at: DateTime<Utc>,
        /// The number the torn line had.
        line: usize,
        bytes: u64,
        kept_in: String,
        /// The start of what was cut.
        excerpt: String,
    },
    RunFinished {
        at: DateTime<Utc>,
        status: RunStatus,
    },
}

impl Event {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Event::RunStarted { at, .. }
            | Event::StepStarted { at, .. }
            | Event::StepOutput { at, .. }
            | Event::StepFinished { at, .. }
            | Event::WaitingForOperator { at, .. }
            | Event::Confirmed { at, .. }
            | Event::UndoFinished { at, .. }
            | Event::VmStateBefore { at, .. }
            | Event::SplitBrain { at, .. }
            | Event::ReadinessForced { at, .. }
            | Event::OtherSite { at, .. }
            | Event::ReplicaPointUsed { at, .. }
            | Event::LagMeasured { at, .. }
            | Event::RunResumed { at, .. }
            | Event::SourceRead { at, .. }
            | Event::StopRequested { at, .. }
            | Event::JournalRepaired { at, .. }
            | Event::RunFinished { at, .. } => *at,
        }
    }

    /// Events after which the journal is flushed to disk.
    pub fn is_boundary(&self) -> bool {
        !matches!(self, Event::StepOutput { .. })
    }
}

/// The plan of a run as recorded in its journal: services with their targets, steps with what
/// they wait for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    pub services: Vec<ServiceRecord>,
    pub steps: Vec<StepRecord>,
    /// Estimated duration of the whole run, in seconds.
    pub estimated_s: u64,
    /// The steps that decide the estimate.
    pub critical_path: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: String,
    pub kind: String,
    pub owner: Option<String>,
    pub rto_target_s: u64,
    pub rpo_target_s: Option<u64>,
    /// Replicated by the application: its data loss is a lag its probe reads.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replicated_by_application: bool,
    pub estimated_rto_s: u64,
    pub depends_on: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub service: String,
    pub kind: String,
    pub host: Option<String>,
    pub phase: Phase,
    pub description: Option<String>,
    /// For manual steps: what the operator is asked to do.
    pub instructions: Option<String>,
    pub after: Vec<String>,
    pub expected_s: u64,
    /// An https health check that accepted the server's certificate without verifying it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_unverified: bool,
    /// A vm step's action (`stop`, `start`, …): the report counts no data lost after a
    /// point only when a `stop` shows the vm no longer wrote. Absent in older journals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// A vm step's vm: which vm a failover left on its recovery host, read back by a later
    /// restore ([`crate::away`]). Absent in older journals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
}

impl RunPlan {
    pub fn of(plan: &Plan) -> RunPlan {
        RunPlan {
            services: plan
                .services
                .iter()
                .map(|s| ServiceRecord {
                    id: s.id.clone(),
                    kind: s.kind.clone(),
                    owner: s.owner.clone(),
                    rto_target_s: s.rto_target.secs(),
                    rpo_target_s: s.rpo_target.map(|d| d.secs()),
                    replicated_by_application: s.replicated_by_application,
                    estimated_rto_s: s.estimated_rto.secs(),
                    depends_on: s.depends_on.clone(),
                })
                .collect(),
            steps: plan
                .steps
                .iter()
                .map(|s| StepRecord {
                    id: s.id.clone(),
                    service: s.service.clone(),
                    kind: s.kind.to_string(),
                    host: s.host.clone(),
                    phase: s.phase,
                    description: s.description.clone(),
                    instructions: (s.kind == "manual").then(|| s.command.clone()),
                    after: s.after.clone(),
                    expected_s: s.expected_s,
                    tls_unverified: matches!(
                        &s.action_spec,
                        crate::plan::Action::Http { tls, .. } if tls.insecure
                    ),
                    action: s.action.clone(),
                    vm: s.vm.clone(),
                })
                .collect(),
            estimated_s: plan.estimate.total.secs(),
            critical_path: plan.estimate.critical_path.clone(),
        }
    }
}

/// Which replica point a failover starts the vms from (`failover --point VM=ID`,
/// `--point-before TIME`); by default the newest point that did not fail verification. A vm
/// named in `accept_unverified` (or every vm, with `*`) may start from its copy as it is
/// when nothing proves it (journaled as unverified).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointChoice {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_vm: BTreeMap<String, String>,
    /// For every vm not in `by_vm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accept_unverified: Vec<String>,
    /// Services (or every one, with `*`) the operator lets start from what their own
    /// replication holds now although a point or a time is asked, which that replication
    /// cannot give (`--as-replicated`): their application's standby, or a vm no replica point
    /// starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub as_replicated: Vec<String>,
}

impl PointChoice {
    /// `more`, asked when the run was resumed, over this: a point named again for a vm, or for
    /// every vm, or a time, replaces the one before; the names accepted unverified add up.
    pub fn add(&mut self, more: &PointChoice) {
        self.by_vm
            .extend(more.by_vm.iter().map(|(k, v)| (k.clone(), v.clone())));
        if more.all.is_some() {
            self.all = more.all.clone();
        }
        if more.before.is_some() {
            self.before = more.before;
        }
        for vm in &more.accept_unverified {
            if !self.accept_unverified.contains(vm) {
                self.accept_unverified.push(vm.clone());
            }
        }
        for service in &more.as_replicated {
            if !self.as_replicated.contains(service) {
                self.as_replicated.push(service.clone());
            }
        }
    }

    /// Whether a point or a time is asked for every vm (`--point POINT`, `--point-before`).
    pub fn asks_every_vm(&self) -> bool {
        self.all.is_some() || self.before.is_some()
    }

    /// Whether `service` may start from what its own replication holds now.
    pub fn takes_as_replicated(&self, service: &str) -> bool {
        self.as_replicated.iter().any(|s| s == service || s == "*")
    }

    /// What a resume asks (this), made explicit against what its run was asked (`before`):
    /// a point named for every vm (`--point POINT`) is for every vm, those named one by one
    /// before included (for each of them, `--point VM=POINT`, unless the resume names it
    /// again). `is_vm` tells a vm from a backup set, whose own point a point for every vm
    /// never replaces. Journaled as it is returned, so that every later resume reads the same.
    pub fn for_resume(&self, before: &PointChoice, is_vm: impl Fn(&str) -> bool) -> PointChoice {
        let mut asked = self.clone();
        if let Some(all) = &self.all {
            for name in before.by_vm.keys().filter(|n| is_vm(n)) {
                asked
                    .by_vm
                    .entry(name.clone())
                    .or_insert_with(|| all.clone());
            }
        }
        asked
    }

    /// The options that ask for it, as a person reads them.
    pub fn words(&self) -> String {
        let mut w: Vec<String> = self
            .by_vm
            .iter()
            .map(|(vm, p)| format!("--point {vm}={p}"))
            .collect();
        w.extend(self.all.iter().map(|p| format!("--point {p}")));
        w.extend(
            self.before
                .iter()
                .map(|t| format!("--point-before {}", t.format("%Y-%m-%d %H:%M:%S UTC"))),
        );
        w.extend(self.accept_unverified.iter().map(|vm| {
            format!(
                "--accept-unverified {}",
                if vm == "*" { "all" } else { vm.as_str() }
            )
        }));
        w.extend(self.as_replicated.iter().map(|s| {
            format!(
                "--as-replicated {}",
                if s == "*" { "all" } else { s.as_str() }
            )
        }));
        w.join(" ")
    }
}

/// How a run started, read back from its events.
#[derive(Debug, Clone)]
pub struct Started {
    pub at: DateTime<Utc>,
    pub run_id: String,
    pub mode: Mode,
    pub emergency: bool,
    pub services: Vec<String>,
    pub only: bool,
    pub operator: String,
    pub sources_digest: String,
    pub steps: Vec<String>,
    /// The replica points its operator asked for (a failover).
    pub points: PointChoice,
}

impl Started {
    /// The first `run_started` event of `events`, its point choice with what each resume
    /// added to it.
    pub fn of(events: &[Event]) -> Option<Started> {
        let mut started = Self::first(events)?;
        for e in events {
            if let Event::RunResumed {
                points: Some(more), ..
            } = e
            {
                started.points.add(more);
            }
        }
        Some(started)
    }

    fn first(events: &[Event]) -> Option<Started> {
        events.iter().find_map(|e| match e {
            Event::RunStarted {
                at,
                run_id,
                mode,
                emergency,
                services,
                only,
                operator,
                sources_digest,
                steps,
                points,
                ..
            } => Some(Started {
                at: *at,
                run_id: run_id.clone(),
                mode: *mode,
                emergency: *emergency,
                services: services.clone(),
                only: *only,
                operator: operator.clone(),
                sources_digest: sources_digest.clone(),
                steps: steps.clone(),
                points: points.as_deref().cloned().unwrap_or_default(),
            }),
            _ => None,
        })
    }
}

/// The status a run finished with, if it finished: `None` once resumed after its last end
/// (running again, or cut by a crash), never the status of the part before.
pub fn finished(events: &[Event]) -> Option<RunStatus> {
    events.iter().rev().find_map(|e| match e {
        Event::RunFinished { status, .. } => Some(Some(*status)),
        Event::RunResumed { .. } => Some(None),
        _ => None,
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A point named for every vm at a resume replaces the points named one by one before
    /// (db started from P2 when the operator asked every vm from P2), not a backup set's own
    /// point, nor one the resume names again.
    #[test]
    fn a_point_for_every_vm_at_a_resume_replaces_the_points_named_before() {
        let run = PointChoice {
            by_vm: [
                ("db".to_string(), "P1".to_string()),
                ("web".to_string(), "P1".to_string()),
                ("erp-dumps".to_string(), "S1".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        let resume = PointChoice {
            by_vm: [("web".to_string(), "P3".to_string())].into(),
            all: Some("P2".into()),
            ..Default::default()
        };
        let asked = resume.for_resume(&run, |n| n != "erp-dumps");
        let mut p = run.clone();
        p.add(&asked);
        assert_eq!(p.by_vm["db"], "P2");
        assert_eq!(p.by_vm["web"], "P3");
        assert_eq!(p.by_vm["erp-dumps"], "S1");
        assert_eq!(p.all.as_deref(), Some("P2"));
        assert_eq!(asked.words(), "--point db=P2 --point web=P3 --point P2");
        // Without a point for every vm, a resume asks what it names, nothing more.
        let only = PointChoice {
            by_vm: [("db".to_string(), "P4".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(only.for_resume(&run, |_| true), only);
    }

    /// What a resume asks is added to what the run was asked: a point named again replaces
    /// the one before, the names accepted unverified add up, once each.
    #[test]
    fn a_resume_adds_to_the_point_choice_of_its_run() {
        let t = |s: i64| DateTime::<Utc>::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let mut p = PointChoice {
            by_vm: [("db".to_string(), "P1".to_string())].into(),
            accept_unverified: vec!["web".into()],
            ..Default::default()
        };
        p.add(&PointChoice {
            by_vm: [("db".to_string(), "P2".to_string())].into(),
            accept_unverified: vec!["web".into(), "app".into()],
            ..Default::default()
        });
        p.add(&PointChoice {
            before: Some(t(-60)),
            ..Default::default()
        });
        assert_eq!(p.by_vm["db"], "P2");
        assert_eq!(p.accept_unverified, ["web", "app"]);
        assert_eq!(p.before, Some(t(-60)));
        assert_eq!(
            p.words(),
            "--point db=P2 --point-before 2027-01-15 07:59:00 UTC --accept-unverified web --accept-unverified app"
        );
    }
}
