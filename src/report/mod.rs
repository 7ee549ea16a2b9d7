//! The recovery report: what a run recovered, how long it took against the targets, how much
//! data was lost, what went wrong and who did what, for the people who did not watch it.
//!
//! [`build`] is a pure function of a run's journal (plus the earlier runs' briefs for the
//! "last drill" recommendation): the same journal always gives the same report. [`render`]
//! writes it as Markdown, HTML (one self-contained file with an SVG timeline) or JSON, with
//! English or French labels.

mod lang;
pub mod pdf;
mod render;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event::{Event, RunPlan, RunStatus, ServiceRecord, StepRecord, StepStatus};
use crate::readiness::{ItemStatus, Readiness};
use crate::runbook::{Mode, Phase};

use lang::Labels;
pub use lang::Lang;
pub use render::{Format, render};

/// How long a manual step may wait before the report suggests preparing it better.
const LONG_MANUAL_WAIT_S: f64 = 600.0;
/// A readiness check older than this when the run starts no longer tells its starting state.
const STALE_READINESS_S: i64 = 24 * 3600;
/// Drills should happen at least this often.
pub const DRILL_EVERY_DAYS: i64 = 90;
/// Lines of a failed step's output quoted in the report.
const EXCERPT_LINES: usize = 12;

/// A report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    pub run_id: String,
    pub mode: Mode,
    pub emergency: bool,
    pub sites: Vec<String>,
    pub operator: String,
    pub machine: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub incident_at: Option<DateTime<Utc>>,
    /// RTO and data loss are measured from here: the incident, or the start of the run.
    pub measured_from: DateTime<Utc>,
    pub duration_s: Option<f64>,
    pub run_status: Option<RunStatus>,
    pub result: Outcome,
    pub services_recovered: usize,
    pub services_in_scope: usize,
    pub rto_met: usize,
    pub rto_measured: usize,
    pub rpo_met: usize,
    pub rpo_measured: usize,
    pub estimated_s: Option<u64>,
    pub services: Vec<ServiceReport>,
    pub timeline: Vec<TimelineStep>,
    /// The chain of steps that decided when the run ended, as it happened.
    pub critical_path: Vec<String>,
    pub manual: Vec<ManualStep>,
    pub problems: Vec<Problem>,
    pub recommendations: Vec<Recommendation>,
    pub resumes: Vec<Resume>,
    /// The points the run was asked to start from, as options (`--point-before …
    /// --as-replicated …`), when it was asked any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points_asked: Option<String>,
    pub readiness: Option<Readiness>,
    pub evidence: Evidence,
}

/// The overall result, in a manager's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every service recovered within its targets.
    Recovered,
    /// Every service recovered, but some targets were missed or some steps were retried.
    RecoveredWithIssues,
    /// Some services recovered, others failed or were blocked (emergency failover, restore).
    PartiallyRecovered,
    /// The run failed (and was rolled back where it could be).
    Failed,
    /// The run stopped before its end (interrupted, or the journal ends mid-run).
    Incomplete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    Recovered,
    Failed,
    Blocked,
    RolledBack,
    Cancelled,
    /// Some steps never ran (the run stopped first).
    NotFinished,
    /// The plan had nothing to do for it in this mode.
    NothingToDo,
    /// Its health checks passed where it runs, and the run did nothing else for it (a
    /// drill, failover or failback that does not move it): it was never down, so nothing
    /// was recovered and no RTO is measured.
    AnsweredInPlace,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub id: String,
    pub kind: String,
    pub owner: Option<String>,
    pub status: ServiceStatus,
    pub rto_target_s: u64,
    /// From `measured_from` to its last health check passing (or its last main step).
    pub achieved_rto_s: Option<f64>,
    /// `None` when there was nothing to measure (nothing to do).
    pub rto_met: Option<bool>,
    pub estimated_rto_s: u64,
    pub rpo_target_s: Option<u64>,
    /// What it lost: from the point it finally runs from to when its vm stopped writing (the
    /// run stopped it, or the incident); see `data_loss_unknown` when not measured.
    pub data_loss_s: Option<f64>,
    /// Why the data loss of a service that recovered from replica points is not measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_loss_unknown: Option<String>,
    pub rpo_met: Option<bool>,
    pub points: Vec<PointUsed>,
    /// For a service its application replicates: the lag its probe read just before the
    /// service was switched, which is its data-loss figure (the disk points above are not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagUsed>,
    pub steps_done: usize,
    pub steps_total: usize,
    /// For a blocked or failed service: the step that stopped it and why.
    pub reason: Option<String>,
    /// Its health checks that passed, each with what proved it (`step: what it said`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks_proved: Vec<String>,
}

/// A replication lag read by an application's probe during the run.
#[derive(Debug, Clone, Serialize)]
pub struct LagUsed {
    /// When the probe answered; `None` when it never ran.
    pub at: Option<DateTime<Utc>>,
    pub host: Option<String>,
    /// The lag in seconds; `None` when it could not be measured.
    pub lag_s: Option<f64>,
    /// Why it could not be measured.
    pub unknown: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PointUsed {
    pub item: String,
    pub point: String,
    pub taken_at: DateTime<Utc>,
    pub verified: bool,
    pub note: Option<String>,
    /// Newer points given up by a roll-back to this one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
    /// When the run journaled its use (this machine's clock).
    #[serde(skip)]
    pub used_at: Option<DateTime<Utc>>,
}

/// One bar of the timeline, in seconds from the start of the run.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineStep {
    pub id: String,
    pub service: String,
    pub kind: String,
    pub phase: Phase,
    pub host: Option<String>,
    pub start_s: Option<f64>,
    pub end_s: Option<f64>,
    pub status: Option<StepStatus>,
    pub attempts: u32,
    /// For manual steps: when the request reached the operator, and how long it waited.
    pub wait_start_s: Option<f64>,
    pub wait_s: Option<f64>,
    pub critical: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ManualStep {
    pub step: String,
    pub instructions: String,
    pub asked_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub by: Option<String>,
    pub note: Option<String>,
    pub waited_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    Failed {
        step: String,
        status: StepStatus,
        attempts: u32,
        message: Option<String>,
        excerpt: String,
    },
    Retried {
        step: String,
        attempts: u32,
    },
    Blocked {
        service: String,
        reason: String,
    },
    /// Was running when the run stopped (crash, Ctrl-C) and ran again after the resume.
    RanAgain {
        step: String,
        /// What the resume did with it (verified, run again, handed to the operator).
        outcome: Option<String>,
    },
    RolledBack {
        step: String,
        ok: bool,
        message: Option<String>,
    },
    /// A vm's copies were rolled back to an older replica point: the newer points were given
    /// up (and the data they held).
    PointRolledBack {
        step: String,
        item: String,
        point: String,
        dropped: Vec<String>,
    },
    /// A vm started from a copy that no verified point proves (named by the operator, or a
    /// point never verified): what it holds is not known to be what was replicated.
    UnverifiedStart {
        step: String,
        item: String,
        point: String,
        note: Option<String>,
    },
    /// A service's application replication lag could not be read: its data loss is unknown.
    LagUnknown {
        service: String,
        why: String,
    },
    /// A service recovered from replica points whose data loss cannot be measured (its vm
    /// may have written after its point was taken).
    DataLossUnknown {
        service: String,
        why: String,
    },
    Interrupted {
        at: DateTime<Utc>,
        /// What stopped it (`SIGTERM`, …), when the journal says.
        reason: Option<String>,
    },
    /// The run ended (failed, rolled back, partly done) and was then resumed: what it
    /// became after is the rest of the report, never a reason to forget this.
    EndedThenResumed {
        at: DateTime<Utc>,
        status: RunStatus,
    },
    /// A run the operator forced past what stops it otherwise (`Event::ReadinessForced`).
    ReadinessForced {
        at: DateTime<Utc>,
        operator: String,
        problems: Vec<String>,
    },
    /// What the other site showed as the run started: a vm still running there, or what
    /// could not be asked.
    OtherSite {
        at: DateTime<Utc>,
        said: Vec<String>,
    },
    /// The journal ended with a line cut short by a crash, cut off before the run went on.
    JournalRepaired {
        at: DateTime<Utc>,
        line: usize,
        bytes: u64,
        kept_in: String,
    },
    /// An event of the run is dated well before one journaled ahead of it: the clock of the
    /// orchestrator went back (set back, or a resume on a machine whose clock is behind). The
    /// times on either side are not comparable, so no RTO is measured.
    ClockWentBack {
        at: DateTime<Utc>,
        /// The latest time journaled before it.
        after: DateTime<Utc>,
    },
    /// The run was resumed at `at` on another machine than the one that ran it until then:
    /// the times on either side come from two clocks that nothing compared (one behind by
    /// less than the pause is not seen going back), so no RTO is measured.
    TwoClocks {
        at: DateTime<Utc>,
        before: String,
        after: String,
    },
}

/// A recommendation, derived from the data; `text` is in the report's language.
#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub kind: &'static str,
    pub subject: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resume {
    pub at: DateTime<Utc>,
    pub operator: String,
    pub machine: String,
    /// What the operator added to the point choice as they resumed the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asked: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evidence {
    pub run_id: String,
    pub tool_version: String,
    /// BLAKE3 of the inventory and runbook files the run used.
    pub sources_digest: String,
    /// BLAKE3 of the journal file the report was made from.
    pub journal_blake3: String,
    pub events: usize,
    pub operators: Vec<String>,
}

/// An earlier run, for the "last drill" recommendation.
#[derive(Debug, Clone)]
pub struct RunBrief {
    pub run_id: String,
    pub mode: Mode,
    pub started_at: DateTime<Utc>,
    pub status: Option<RunStatus>,
}

/// What a report is made from.
pub struct Input<'a> {
    pub events: &'a [Event],
    /// The journal file's bytes, for the evidence hash.
    pub journal_bytes: &'a [u8],
    /// Other runs of the same state folder (only those that started before this one count).
    pub history: &'a [RunBrief],
    pub lang: Lang,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("the journal has no `run_started` event: it is not a run's journal")]
    NoStart,
}

#[derive(Default)]
struct StepFacts {
    first_start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    status: Option<StepStatus>,
    attempts: u32,
    message: Option<String>,
    stdout: String,
    stderr: String,
    /// Each time it waited for a person, in order: a step run again waits again, and is
    /// confirmed again.
    waits: Vec<Wait>,
    undo: Option<(bool, Option<String>)>,
    /// Was running when the run stopped, and ran again after the resume.
    restarted: bool,
}

/// One wait of a step for a person: when it was asked, what it said, and who confirmed it.
struct Wait {
    asked: Option<DateTime<Utc>>,
    instructions: Option<String>,
    confirmed: Option<(DateTime<Utc>, String, Option<String>)>,
}

impl StepFacts {
    /// When its last wait was asked.
    fn asked(&self) -> Option<DateTime<Utc>> {
        self.waits.last().and_then(|w| w.asked)
    }

    /// Who confirmed its last wait, when, with what note: none when that wait was not
    /// answered (an earlier wait's confirmation never answers a later one).
    fn confirmed(&self) -> Option<&(DateTime<Utc>, String, Option<String>)> {
        self.waits.last().and_then(|w| w.confirmed.as_ref())
    }
}

/// How a run started, as its `run_started` event says.
struct Head {
    started_at: DateTime<Utc>,
    run_id: String,
    mode: Mode,
    emergency: bool,
    operator: String,
    machine: String,
    version: String,
    sources_digest: String,
    step_ids: Vec<String>,
    sites: Vec<String>,
    incident_at: Option<DateTime<Utc>>,
    plan: RunPlan,
    readiness: Option<Readiness>,
    points_asked: Option<String>,
}

impl Head {
    /// The first `run_started` event of a journal.
    fn of(events: &[Event]) -> Option<Head> {
        events.iter().find_map(|e| {
            let Event::RunStarted {
                at,
                run_id,
                mode,
                emergency,
                operator,
                machine,
                version,
                sources_digest,
                steps,
                sites,
                incident_at,
                plan,
                readiness,
                points,
                ..
            } = e
            else {
                return None;
            };
            Some(Head {
                started_at: *at,
                run_id: run_id.clone(),
                mode: *mode,
                emergency: *emergency,
                operator: operator.clone(),
                machine: machine.clone(),
                version: version.clone(),
                sources_digest: sources_digest.clone(),
                step_ids: steps.clone(),
                sites: sites.clone(),
                incident_at: *incident_at,
                // Journals written before plans were recorded still give a report, with the
                // steps only.
                plan: plan.clone().map(|p| *p).unwrap_or_else(|| RunPlan {
                    services: Vec::new(),
                    steps: Vec::new(),
                    estimated_s: 0,
                    critical_path: Vec::new(),
                }),
                readiness: readiness.clone().map(|r| *r),
                points_asked: points.as_ref().map(|p| p.words()).filter(|w| !w.is_empty()),
            })
        })
    }
}

/// What the journal says of each step and of the run as a whole, read in one pass.
#[derive(Default)]
struct RunFacts<'a> {
    steps: HashMap<&'a str, StepFacts>,
    /// The replica points used, each with the step that used it.
    points: Vec<(String, PointUsed)>,
    /// By step, how many of `points` were journaled before its last attempt that did not
    /// succeed: what it started from is in none of them (its copies were given back).
    void_before: HashMap<String, usize>,
    lags: HashMap<String, LagUsed>,
    resumes: Vec<Resume>,
    ended_at: Option<DateTime<Utc>>,
    run_status: Option<RunStatus>,
    interrupted_at: Vec<(DateTime<Utc>, Option<String>)>,
    /// Each end other than an interruption that a resume followed.
    ended_before: Vec<(DateTime<Utc>, RunStatus)>,
    /// Why the run was asked to stop, until it stopped.
    stop_reason: Option<String>,
    /// The problems the journal states as such (a forced readiness, a repaired journal).
    repairs: Vec<Problem>,
    /// The vms started on data that lacks what was written elsewhere after it (forced past
    /// writes a copy lacks; still running on the side left): no data loss is measured.
    diverged: std::collections::BTreeSet<String>,
    /// The vms started while the side left could not be asked whether they ran there: their
    /// data loss is measured only to a declared incident time.
    unasked: std::collections::BTreeSet<String>,
    /// The latest time journaled so far, and the first time the clock went back from it.
    latest: Option<DateTime<Utc>>,
    clock_back: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The machine whose clock dates the events so far, and the first resume on another.
    machine: Option<String>,
    two_clocks: Option<(DateTime<Utc>, String, String)>,
    operators: Vec<String>,
}

impl<'a> RunFacts<'a> {
    fn read(events: &'a [Event], operator: &str) -> RunFacts<'a> {
        let mut facts = RunFacts {
            operators: vec![operator.to_string()],
            ..RunFacts::default()
        };
        for e in events {
            facts.record(e);
        }
        facts
    }

    fn record(&mut self, e: &'a Event) {
        self.watch_clock(e);
        // The points of an attempt that did not end done, or that a roll-back undid (its
        // copies given back), are none the vm runs on.
        match e {
            Event::StepFinished { step, status, .. } if !status.succeeded() => {
                self.void_before.insert(step.clone(), self.points.len());
            }
            Event::UndoFinished { step, ok: true, .. } => {
                self.void_before.insert(step.clone(), self.points.len());
            }
            _ => {}
        }
        match e {
            Event::StepStarted { .. }
            | Event::StepOutput { .. }
            | Event::StepFinished { .. }
            | Event::WaitingForOperator { .. }
            | Event::Confirmed { .. }
            | Event::UndoFinished { .. } => self.record_step(e),
            Event::ReplicaPointUsed {
                at,
                step,
                item,
                point,
                taken_at,
                verified,
                note,
                dropped,
                ..
            } => self.points.push((
                step.clone(),
                PointUsed {
                    item: item.clone(),
                    point: point.clone(),
                    taken_at: *taken_at,
                    verified: *verified,
                    note: note.clone(),
                    dropped: dropped.clone(),
                    used_at: Some(*at),
                },
            )),
            Event::LagMeasured {
                at,
                service,
                host,
                lag_s,
                unknown,
                ..
            } => {
                self.lags.insert(
                    service.clone(),
                    LagUsed {
                        at: Some(*at),
                        host: Some(host.clone()),
                        lag_s: lag_s.filter(|_| unknown.is_none()),
                        unknown: match (lag_s, unknown) {
                            (_, Some(why)) => Some(why.clone()),
                            (None, None) => Some("not recorded".into()),
                            (Some(_), None) => None,
                        },
                    },
                );
            }
            Event::RunResumed {
                at,
                operator,
                machine,
                points,
            } => {
                // A run resumed is not over, whatever its earlier part ended as.
                if let (Some(status), Some(ended)) = (self.run_status.take(), self.ended_at.take())
                    && status != RunStatus::Interrupted
                {
                    self.ended_before.push((ended, status));
                }
                if let Some(before) = self.machine.replace(machine.clone())
                    && before != *machine
                {
                    self.two_clocks
                        .get_or_insert((*at, before, machine.clone()));
                }
                self.resumes.push(Resume {
                    at: *at,
                    operator: operator.clone(),
                    machine: machine.clone(),
                    asked: points.as_ref().map(|p| p.words()),
                });
                if !self.operators.contains(operator) {
                    self.operators.push(operator.clone());
                }
            }
            Event::RunFinished { at, status } => {
                self.ended_at = Some(*at);
                self.run_status = Some(*status);
                if *status == RunStatus::Interrupted {
                    self.interrupted_at.push((*at, self.stop_reason.take()));
                }
            }
            Event::StopRequested { reason, .. } => self.stop_reason = Some(reason.clone()),
            Event::ReadinessForced {
                at,
                operator,
                problems,
                diverged,
            } => {
                self.diverged.extend(diverged.iter().cloned());
                self.repairs.push(Problem::ReadinessForced {
                    at: *at,
                    operator: operator.clone(),
                    problems: problems.clone(),
                })
            }
            Event::OtherSite {
                at,
                said,
                step,
                diverged,
                unasked,
                ..
            } => {
                self.diverged.extend(diverged.iter().cloned());
                self.unasked.extend(unasked.iter().cloned());
                self.repairs.push(Problem::OtherSite {
                    at: *at,
                    said: match step {
                        Some(step) => said.iter().map(|s| format!("{step}: {s}")).collect(),
                        None => said.clone(),
                    },
                })
            }
            // The check that found it failed, and says so.
            Event::VmStateBefore { .. } | Event::SplitBrain { .. } | Event::SourceRead { .. } => {}
            Event::JournalRepaired {
                at,
                line,
                bytes,
                kept_in,
                ..
            } => self.repairs.push(Problem::JournalRepaired {
                at: *at,
                line: *line,
                bytes: *bytes,
                kept_in: kept_in.clone(),
            }),
            Event::RunStarted { machine, .. } => {
                self.machine.get_or_insert(machine.clone());
            }
        }
    }

    /// Whether the clock went back: an event dated more than [`CLOCK_SLACK_S`] before the
    /// latest journaled ahead of it. A confirmation is dated by the process (or the machine)
    /// that gave it, and may be taken long after: it is not compared.
    fn watch_clock(&mut self, e: &Event) {
        if matches!(e, Event::Confirmed { .. }) {
            return;
        }
        let at = e.at();
        if let Some(latest) = self.latest
            && (latest - at).num_milliseconds() > CLOCK_SLACK_S * 1000
        {
            self.clock_back.get_or_insert((at, latest));
        }
        self.latest = Some(self.latest.map_or(at, |l| l.max(at)));
    }

    /// An event of one step (the others are `record`'s).
    fn record_step(&mut self, e: &'a Event) {
        match e {
            Event::StepStarted {
                at, step, attempt, ..
            } => {
                let f = self.steps.entry(step).or_default();
                f.first_start.get_or_insert(*at);
                // Run again (a retry, or a resume after a roll-back undid it or a step before
                // it): what an earlier attempt ended with, or its undo, is not this one's.
                f.end = None;
                f.status = None;
                f.message = None;
                f.undo = None;
                if *attempt <= f.attempts {
                    // Started again from its first attempt: the run stopped while it ran.
                    f.restarted = true;
                }
                f.attempts = *attempt;
            }
            Event::StepOutput {
                step,
                stdout,
                stderr,
                ..
            } => {
                let f = self.steps.entry(step).or_default();
                f.stdout = stdout.clone();
                f.stderr = stderr.clone();
            }
            Event::StepFinished {
                at,
                step,
                status,
                message,
                ..
            } => {
                let f = self.steps.entry(step).or_default();
                f.end = Some(*at);
                f.status = Some(*status);
                f.message = message.clone();
            }
            Event::WaitingForOperator {
                at,
                step,
                instructions,
            } => {
                self.steps.entry(step).or_default().waits.push(Wait {
                    asked: Some(*at),
                    instructions: Some(instructions.clone()),
                    confirmed: None,
                });
            }
            Event::Confirmed { at, step, by, note } => {
                let waits = &mut self.steps.entry(step).or_default().waits;
                let answered = (*at, by.clone(), note.clone());
                match waits.last_mut().filter(|w| w.confirmed.is_none()) {
                    Some(w) => w.confirmed = Some(answered),
                    // A confirmation of no wait the journal holds (its line lost).
                    None => waits.push(Wait {
                        asked: None,
                        instructions: None,
                        confirmed: Some(answered),
                    }),
                }
                if !self.operators.contains(by) {
                    self.operators.push(by.clone());
                }
            }
            Event::UndoFinished {
                step, ok, message, ..
            } => {
                self.steps.entry(step).or_default().undo = Some((*ok, message.clone()));
            }
            _ => {}
        }
    }
}

/// How far back an event may be dated from one journaled ahead of it before the clock is
/// said to have gone back: steps running at once date their events before they hand them
/// over, so a few out of order by a moment are normal.
const CLOCK_SLACK_S: i64 = 5;

/// Seconds from `from` to `t`.
fn secs_since(from: DateTime<Utc>, t: DateTime<Utc>) -> f64 {
    (t - from).num_milliseconds() as f64 / 1000.0
}

/// The run's steps, with what the journal says of each.
struct Steps<'a> {
    records: &'a [StepRecord],
    index: HashMap<&'a str, usize>,
    facts: &'a HashMap<&'a str, StepFacts>,
}

impl<'a> Steps<'a> {
    fn new(records: &'a [StepRecord], facts: &'a HashMap<&'a str, StepFacts>) -> Steps<'a> {
        let index: HashMap<&str, usize> = records
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        Steps {
            records,
            index,
            facts,
        }
    }

    fn status_of(&self, id: &str) -> Option<StepStatus> {
        let f = self.facts.get(id)?;
        match f.undo {
            Some((true, _)) => Some(StepStatus::RolledBack),
            _ => f.status,
        }
    }

    /// The chain of finished steps that led to step `last`, each the latest to end of those
    /// its successor waited for.
    fn chain_to(&self, last: usize) -> Vec<String> {
        let (records, index, facts) = (self.records, &self.index, self.facts);
        let mut chain = vec![last];
        let mut cur = last;
        loop {
            let prev = records[cur]
                .after
                .iter()
                .filter_map(|a| index.get(a.as_str()).copied())
                .filter(|&i| {
                    facts
                        .get(records[i].id.as_str())
                        .and_then(|f| f.end)
                        .is_some()
                })
                .max_by_key(|&i| facts[records[i].id.as_str()].end);
            match prev {
                Some(p) if !chain.contains(&p) => {
                    chain.push(p);
                    cur = p;
                }
                _ => break,
            }
        }
        chain.reverse();
        chain.into_iter().map(|i| records[i].id.clone()).collect()
    }

    /// The chain of steps that led to the last step to end.
    fn critical_path(&self) -> Vec<String> {
        let last_step = self
            .records
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                self.facts
                    .get(s.id.as_str())
                    .and_then(|f| f.end)
                    .map(|e| (e, i))
            })
            .max()
            .map(|(_, i)| i);
        last_step.map(|i| self.chain_to(i)).unwrap_or_default()
    }
}

/// The steps: from the recorded plan, or from the list of ids for older journals.
fn step_records(plan: &RunPlan, step_ids: &[String]) -> Vec<StepRecord> {
    if plan.steps.is_empty() {
        step_ids
            .iter()
            .map(|id| StepRecord {
                id: id.clone(),
                service: id.split('/').next().unwrap_or(id).to_string(),
                kind: "exec".to_string(),
                host: None,
                phase: Phase::Main,
                description: None,
                instructions: None,
                after: Vec::new(),
                expected_s: 0,
                tls_unverified: false,
                action: None,
                vm: None,
            })
            .collect()
    } else {
        plan.steps.clone()
    }
}

/// What every section of a report is made from.
struct Run<'a> {
    head: &'a Head,
    facts: &'a RunFacts<'a>,
    steps: Steps<'a>,
    /// Other runs of the same state folder.
    history: &'a [RunBrief],
    /// RTO and data loss are measured from here: the incident, or the start of the run.
    measured_from: DateTime<Utc>,
    l: &'static Labels,
}

/// Builds the report of a run from its journal.
pub fn build(input: &Input) -> Result<RecoveryReport, ReportError> {
    let l = input.lang.labels();
    let Some(head) = Head::of(input.events) else {
        return Err(ReportError::NoStart);
    };
    let started_at = head.started_at;
    let measured_from = head.incident_at.unwrap_or(started_at).min(started_at);
    let facts = RunFacts::read(input.events, &head.operator);
    let last_event = input.events.iter().map(Event::at).max();
    let records = step_records(&head.plan, &head.step_ids);
    let run = Run {
        head: &head,
        facts: &facts,
        steps: Steps::new(&records, &facts.steps),
        history: input.history,
        measured_from,
        l,
    };
    let critical_path = run.steps.critical_path();
    let timeline = timeline(&run, &critical_path);
    let services: Vec<ServiceReport> = service_ids(&run)
        .iter()
        .map(|id| service_report(&run, id))
        .collect();
    let manual = manual_steps(&run);
    let problems = problems(&run, &services);
    let counts = Counts::of(&services);
    let result = outcome(facts.run_status, &counts, &problems);
    let recommendations = recommendations(&run, &services, &timeline, &manual, &problems);
    let evidence = Evidence {
        run_id: head.run_id.clone(),
        tool_version: head.version,
        sources_digest: head.sources_digest,
        journal_blake3: blake3::hash(input.journal_bytes).to_hex().to_string(),
        events: input.events.len(),
        operators: facts.operators,
    };
    let ended = facts.ended_at.or(last_event);
    Ok(RecoveryReport {
        run_id: head.run_id,
        mode: head.mode,
        emergency: head.emergency,
        sites: head.sites,
        operator: head.operator,
        machine: head.machine,
        started_at,
        ended_at: facts.ended_at,
        incident_at: head.incident_at,
        measured_from,
        duration_s: ended.map(|t| secs_since(started_at, t)),
        run_status: facts.run_status,
        result,
        services_recovered: counts.recovered,
        services_in_scope: counts.in_scope,
        rto_met: counts.rto_met,
        rto_measured: counts.rto_measured,
        rpo_met: counts.rpo_met,
        rpo_measured: counts.rpo_measured,
        estimated_s: (head.plan.estimated_s > 0).then_some(head.plan.estimated_s),
        services,
        timeline,
        critical_path,
        manual,
        problems,
        recommendations,
        resumes: facts.resumes,
        points_asked: head.points_asked,
        readiness: head.readiness,
        evidence,
    })
}

/// One bar per step, in seconds from the start of the run.
fn timeline(run: &Run, critical_path: &[String]) -> Vec<TimelineStep> {
    let secs = |t: DateTime<Utc>| secs_since(run.head.started_at, t);
    run.steps
        .records
        .iter()
        .map(|s| {
            let f = run.steps.facts.get(s.id.as_str());
            let wait_start = f.and_then(StepFacts::asked);
            let wait_s = match (wait_start, f.and_then(StepFacts::confirmed)) {
                (Some(a), Some((c, _, _))) => {
                    Some(((*c - a).num_milliseconds() as f64 / 1000.0).max(0.0))
                }
                _ => None,
            };
            TimelineStep {
                id: s.id.clone(),
                service: s.service.clone(),
                kind: s.kind.clone(),
                phase: s.phase,
                host: s.host.clone(),
                start_s: f.and_then(|f| f.first_start).map(secs),
                end_s: f.and_then(|f| f.end).map(secs),
                status: run.steps.status_of(&s.id),
                attempts: f.map(|f| f.attempts).unwrap_or(0),
                wait_start_s: wait_start.map(secs),
                wait_s,
                critical: critical_path.contains(&s.id),
            }
        })
        .collect()
}

/// The services: from the recorded plan, or from the step ids.
fn service_ids(run: &Run) -> Vec<String> {
    let mut service_ids: Vec<String> = run
        .head
        .plan
        .services
        .iter()
        .map(|s| s.id.clone())
        .collect();
    for s in run.steps.records {
        if !service_ids.contains(&s.service) {
            service_ids.push(s.service.clone());
        }
    }
    service_ids
}

/// A step status that stops a service.
fn is_bad(st: &Option<StepStatus>) -> bool {
    matches!(
        st,
        Some(StepStatus::Failed | StepStatus::TimedOut | StepStatus::RolledBack)
    )
}

/// A service's status from the statuses of its main steps.
fn service_status(statuses: &[Option<StepStatus>], done: usize) -> ServiceStatus {
    if statuses.is_empty() {
        ServiceStatus::NothingToDo
    } else if done == statuses.len() {
        ServiceStatus::Recovered
    } else if statuses.contains(&Some(StepStatus::RolledBack)) {
        ServiceStatus::RolledBack
    } else if statuses.iter().any(is_bad) {
        ServiceStatus::Failed
    } else if statuses.contains(&Some(StepStatus::Blocked)) {
        ServiceStatus::Blocked
    } else if statuses.contains(&Some(StepStatus::Cancelled)) {
        ServiceStatus::Cancelled
    } else {
        ServiceStatus::NotFinished
    }
}

/// For a service that did not recover: the step that stopped it and why.
fn service_reason(
    run: &Run,
    status: ServiceStatus,
    main: &[&StepRecord],
    statuses: &[Option<StepStatus>],
) -> Option<String> {
    let first_bad = main.iter().zip(statuses).find(|(_, st)| is_bad(st));
    match status {
        ServiceStatus::Failed | ServiceStatus::RolledBack => first_bad.map(|(s, st)| {
            let f = run.steps.facts.get(s.id.as_str());
            let why = f
                .and_then(|f| f.message.clone())
                .unwrap_or_else(|| format!("{:?}", st.unwrap_or(StepStatus::Failed)));
            format!("{}: {why}", s.id)
        }),
        ServiceStatus::Blocked | ServiceStatus::Cancelled => main
            .iter()
            .zip(statuses)
            .find(|(_, st)| matches!(st, Some(StepStatus::Blocked | StepStatus::Cancelled)))
            .map(|(s, _)| {
                let why = run
                    .steps
                    .facts
                    .get(s.id.as_str())
                    .and_then(|f| f.message.clone())
                    .unwrap_or_else(|| run.l.blocked_default.to_string());
                format!("{}: {why}", s.id)
            }),
        _ => None,
    }
}

/// Up when its last health check passed (or its last main step, without checks).
fn achieved_rto(run: &Run, main: &[&StepRecord]) -> Option<f64> {
    let checks: Vec<_> = main.iter().filter(|s| s.kind == "check").collect();
    let pool: Vec<&&StepRecord> = if checks.is_empty() {
        main.iter().collect()
    } else {
        checks
    };
    pool.iter()
        .filter_map(|s| run.steps.facts.get(s.id.as_str()).and_then(|f| f.end))
        .max()
        .map(|t| (t - run.measured_from).num_milliseconds() as f64 / 1000.0)
}

/// The replica points a service's steps used. A point made by a replicate step and then
/// started from is listed once.
fn points_used(run: &Run, id: &str) -> Vec<PointUsed> {
    let mut used: Vec<PointUsed> = Vec::new();
    for (_, p) in run
        .facts
        .points
        .iter()
        .filter(|(step, _)| step.split('/').next() == Some(id))
    {
        if !used.iter().any(|u| u.item == p.item && u.point == p.point) {
            used.push(p.clone());
        }
    }
    used
}

/// The replication lag of a service its application replicates (its plan measures the lag):
/// unknown when it was not read. A failback of such a service without a probe of the reverse
/// replication: its data loss cannot be measured, and the report says so rather than show
/// nothing.
fn lag_used(run: &Run, id: &str, rec: Option<&ServiceRecord>) -> Option<LagUsed> {
    let l = run.l;
    let lag_planned = run
        .steps
        .records
        .iter()
        .any(|s| s.service == *id && s.kind == "lag");
    let unprobed_failback = run.head.mode == Mode::Failback
        && !lag_planned
        && rec.is_some_and(|r| r.replicated_by_application);
    (lag_planned || unprobed_failback).then(|| {
        run.facts.lags.get(id).cloned().unwrap_or(LagUsed {
            at: None,
            host: None,
            lag_s: None,
            unknown: Some(
                if unprobed_failback {
                    l.lag_no_failback_probe
                } else {
                    l.lag_not_run
                }
                .to_string(),
            ),
        })
    })
}

/// The point each item of a service finally runs from: of the steps that finished done, the
/// last point a vm step started it from (a retry after a roll-back or a resume may start from
/// a newer one than the first attempt); for an item no vm step started (a backup set), the
/// last point a replicate step made of it.
fn final_points<'r>(run: &'r Run, id: &str) -> Vec<&'r PointUsed> {
    let mut items: Vec<&str> = Vec::new();
    let mut started: HashMap<&str, &PointUsed> = HashMap::new();
    let mut made: HashMap<&str, &PointUsed> = HashMap::new();
    for (i, (step, p)) in run.facts.points.iter().enumerate() {
        // Journaled by an attempt that failed: not what the step that ended done ran from.
        if run.facts.void_before.get(step).is_some_and(|&n| i < n) {
            continue;
        }
        let Some(rec) = run
            .steps
            .index
            .get(step.as_str())
            .map(|&i| &run.steps.records[i])
        else {
            continue;
        };
        if rec.service != id || run.steps.status_of(step) != Some(StepStatus::Done) {
            continue;
        }
        if !items.contains(&p.item.as_str()) {
            items.push(&p.item);
        }
        let last = if rec.kind == "replicate" {
            &mut made
        } else {
            &mut started
        };
        last.insert(&p.item, p);
    }
    items
        .into_iter()
        .filter_map(|item| started.get(item).or_else(|| made.get(item)).copied())
        .collect()
}

/// The data a copy from point `p` of a vm of service `id` lost: what the vm wrote from the
/// moment the point was taken until it stopped writing. That is nothing only when the run had
/// stopped it (a `stop` of the service's vms finished) before the point was taken; stopped
/// after it, the loss runs to the end of that stop (with several vms in the service, the
/// latest stop: never less than the loss); not stopped by the run, a point older than the
/// incident (or the run's start) lost up to then, and a point taken during the run is not
/// measured, with the reason.
fn copy_loss(run: &Run, id: &str, p: &PointUsed) -> Result<f64, String> {
    // A copy started as it is (`copy-TIME`, named by the choice) is dated by its file: the
    // host's clock and its last write, not when its data was taken. Nothing measures what it
    // lacks.
    // (`as-is`: the name a resumed start gave it in older journals.)
    if !p.verified
        && p.point
            .split('+')
            .any(|x| x.starts_with("copy-") || x == "as-is" || x.starts_with("as-is@"))
    {
        return Err(run.l.loss_unverified(&p.item, &p.point));
    }
    // Dated after the run used it (the clock of the machine that replicated it runs ahead
    // of this one): its age, and so the loss, cannot be told.
    if p.used_at
        .is_some_and(|used| crate::replica::point::dated_ahead(p.taken_at, used))
    {
        return Err(run.l.loss_point_ahead(&p.item, &p.point));
    }
    // Written elsewhere after its point, and started all the same: what that was is not
    // known here.
    if run.facts.diverged.contains(&p.item) {
        return Err(run.l.loss_diverged(&p.item, &p.point));
    }
    // A vm's own stop: another vm of the service stopped says nothing of what it wrote (a
    // journal of before steps named their vm counts the service's). A backup set's: any of
    // its service's.
    let is_vm = run
        .steps
        .records
        .iter()
        .any(|s| s.vm.as_deref() == Some(p.item.as_str()));
    let stops: Vec<DateTime<Utc>> = run
        .steps
        .records
        .iter()
        .filter(|s| s.service == id && s.kind == "vm" && s.action.as_deref() == Some("stop"))
        .filter(|s| !is_vm || s.vm.as_deref().is_none_or(|v| v == p.item))
        .filter(|s| run.steps.status_of(&s.id) == Some(StepStatus::Done))
        .filter_map(|s| run.steps.facts.get(s.id.as_str()).and_then(|f| f.end))
        .collect();
    // A stop timed by a clock that went back, or by another machine's, is not compared with
    // the point's time: the loss would be wrong either way, and "within the RPO" with it.
    if !stops.is_empty() && (run.facts.clock_back.is_some() || run.facts.two_clocks.is_some()) {
        return Err(run.l.loss_two_clocks(&p.item, &p.point));
    }
    let before_incident = secs_since(p.taken_at, run.measured_from).max(0.0);
    // Not stopped by the run, on a side that could not say whether it still ran: it may
    // have written there until now, or died long before the run; only an incident time
    // the operator declared says when its writes stopped.
    if stops.is_empty() && run.facts.unasked.contains(&p.item) && run.head.incident_at.is_none() {
        return Err(run.l.loss_unasked(&p.item, &p.point, before_incident));
    }
    if let Some(stopped) = stops.iter().filter(|&&e| e > p.taken_at).max() {
        return Ok(secs_since(p.taken_at, *stopped).max(before_incident));
    }
    if !stops.is_empty() || p.taken_at <= run.measured_from {
        return Ok(before_incident);
    }
    Err(run.l.loss_still_running(&p.item, &p.point))
}

/// Data was recovered only by a service that recovered: its data loss is the largest loss of
/// the points it finally runs from (see [`copy_loss`]), or why it is not measured. A service
/// its application replicates: its data loss is the lag its probe read, never a disk point's
/// age. One with an RPO target that a drill or a failover recovered without starting from a
/// point or reading a lag: not measured, and said.
fn data_loss(
    run: &Run,
    id: &str,
    status: ServiceStatus,
    lag: Option<&LagUsed>,
    rpo_target: Option<u64>,
) -> (Option<f64>, Option<String>) {
    if status != ServiceStatus::Recovered {
        return (None, None);
    }
    let points = final_points(run, id);
    // A drill or a failover starts its data from somewhere (a restore starts a site's own
    // disks again, a failback what it copied back).
    let moved = matches!(run.head.mode, Mode::Drill | Mode::Failover);
    if moved && points.is_empty() && lag.is_none() && rpo_target.is_some() {
        return (None, Some(run.l.loss_no_evidence()));
    }
    // A vm of it started with no point of its own: the others' points say nothing of its data.
    if moved && lag.is_none() && rpo_target.is_some() {
        let unproven = run
            .steps
            .records
            .iter()
            .filter(|s| s.service == id && s.kind == "vm" && s.action.as_deref() == Some("start"))
            .filter(|s| run.steps.status_of(&s.id) == Some(StepStatus::Done))
            .filter_map(|s| s.vm.as_deref())
            .find(|vm| !points.iter().any(|p| p.item == *vm));
        if let Some(vm) = unproven {
            return (None, Some(run.l.loss_no_point(vm)));
        }
    }
    // The older of what was started: a copy's point, and the application's lag (a copy
    // started for a service its application replicates loses what that copy lacks).
    let mut copies_loss: Option<f64> = None;
    for p in points {
        match copy_loss(run, id, p) {
            Ok(x) => copies_loss = Some(copies_loss.map_or(x, |a| a.max(x))),
            Err(why) => return (None, Some(why)),
        }
    }
    let loss = match lag {
        // A lag the journal holds that no probe could have said is not a measure.
        Some(lag) => lag
            .lag_s
            .filter(|l| l.is_finite() && *l >= 0.0)
            .map(|l| copies_loss.map_or(l, |c| c.max(l))),
        None => copies_loss,
    };
    (loss, None)
}

/// One service: what became of it, against its targets.
fn service_report(run: &Run, id: &str) -> ServiceReport {
    let rec = run.head.plan.services.iter().find(|s| s.id == id);
    let main: Vec<&StepRecord> = run
        .steps
        .records
        .iter()
        .filter(|s| s.service == id && s.phase == Phase::Main)
        .collect();
    let statuses: Vec<Option<StepStatus>> =
        main.iter().map(|s| run.steps.status_of(&s.id)).collect();
    let done = statuses
        .iter()
        .filter(|s| **s == Some(StepStatus::Done))
        .count();
    let status = service_status(&statuses, done);
    let reason = service_reason(run, status, &main, &statuses);
    // A roll-back that could not undo one of its steps left it in a state nothing proved:
    // neither recovered nor rolled back.
    let undo_failed = main.iter().find_map(|s| {
        match run
            .steps
            .facts
            .get(s.id.as_str())
            .and_then(|f| f.undo.as_ref())
        {
            Some((false, why)) => Some(run.l.undo_failed(&s.id, why.as_deref())),
            _ => None,
        }
    });
    let (status, reason) = match undo_failed {
        Some(why) => (ServiceStatus::Failed, Some(why)),
        None => (status, reason),
    };
    // Only checks, where a run that moves services does not move it: it answered in place.
    // Reading a standby's replication lag (`lag`) moves nothing either: a drill of a service
    // that only checks its standby and reads its lag recovered nothing of it.
    let in_place = status == ServiceStatus::Recovered
        && run.head.mode != Mode::Restore
        && main.iter().all(|s| s.kind == "check" || s.kind == "lag");
    let status = match in_place {
        true => ServiceStatus::AnsweredInPlace,
        false => status,
    };
    // A clock that went back makes any span of the run's times unknown.
    let clock_sure = run.facts.clock_back.is_none() && run.facts.two_clocks.is_none();
    let achieved = if status == ServiceStatus::Recovered && clock_sure {
        achieved_rto(run, &main)
    } else {
        None
    };
    let rto_target_s = rec.map(|r| r.rto_target_s).unwrap_or(0);
    let rto_met = match status {
        ServiceStatus::NothingToDo | ServiceStatus::AnsweredInPlace => None,
        _ if rec.is_none() || !clock_sure => None,
        _ => Some(achieved.is_some_and(|a| a <= rto_target_s as f64)),
    };
    let used = points_used(run, id);
    let lag = lag_used(run, id, rec);
    let rpo_target_s = rec.and_then(|r| r.rpo_target_s);
    let (data_loss_s, data_loss_unknown) = data_loss(run, id, status, lag.as_ref(), rpo_target_s);
    // Within the target only when every point it used was verified; a loss beyond the
    // target is said either way.
    let all_verified = used.iter().all(|p| p.verified);
    let rpo_met = match (data_loss_s, rpo_target_s) {
        (Some(loss), Some(target)) if loss > target as f64 => Some(false),
        (Some(_), Some(_)) if all_verified => Some(true),
        _ => None,
    };
    ServiceReport {
        id: id.to_string(),
        kind: rec.map(|r| r.kind.clone()).unwrap_or_default(),
        owner: rec.and_then(|r| r.owner.clone()),
        status,
        rto_target_s,
        achieved_rto_s: achieved,
        rto_met,
        estimated_rto_s: rec.map(|r| r.estimated_rto_s).unwrap_or(0),
        rpo_target_s,
        data_loss_s,
        data_loss_unknown,
        rpo_met,
        points: used,
        lag,
        steps_done: done,
        steps_total: main.len(),
        reason,
        checks_proved: main
            .iter()
            .zip(&statuses)
            .filter(|(s, st)| s.kind == "check" && **st == Some(StepStatus::Done))
            .filter_map(|(s, _)| {
                let said = run.steps.facts.get(s.id.as_str())?.message.clone()?;
                Some(format!("{}: {said}", s.id))
            })
            .collect(),
    }
}

/// The manual steps, and the steps handed to a person (one interrupted that cannot safely
/// run twice): who confirmed them, when, and how long they waited; one row per wait (a step
/// run again waits again).
fn manual_steps(run: &Run) -> Vec<ManualStep> {
    let mut rows = Vec::new();
    for s in run.steps.records {
        let waits = run
            .steps
            .facts
            .get(s.id.as_str())
            .map(|f| &f.waits[..])
            .unwrap_or_default();
        if s.kind != "manual" && waits.is_empty() {
            continue;
        }
        let instructions = |w: Option<&Wait>| {
            s.instructions
                .clone()
                .or_else(|| w.and_then(|w| w.instructions.clone()))
                .unwrap_or_default()
        };
        if waits.is_empty() {
            rows.push(ManualStep {
                step: s.id.clone(),
                instructions: instructions(None),
                asked_at: None,
                confirmed_at: None,
                by: None,
                note: None,
                waited_s: None,
            });
        }
        for w in waits {
            let confirmed = w.confirmed.as_ref();
            rows.push(ManualStep {
                step: s.id.clone(),
                instructions: instructions(Some(w)),
                asked_at: w.asked,
                confirmed_at: confirmed.map(|c| c.0),
                by: confirmed.map(|c| c.1.clone()),
                note: confirmed.and_then(|c| c.2.clone()),
                waited_s: match (w.asked, confirmed) {
                    (Some(a), Some(c)) => {
                        Some(((c.0 - a).num_milliseconds() as f64 / 1000.0).max(0.0))
                    }
                    _ => None,
                },
            });
        }
    }
    rows
}

/// What went wrong, step by step, then per point, per service and for the run.
fn problems(run: &Run, services: &[ServiceReport]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for s in run.steps.records {
        let Some(f) = run.steps.facts.get(s.id.as_str()) else {
            continue;
        };
        match f.status {
            Some(st @ (StepStatus::Failed | StepStatus::TimedOut)) => {
                problems.push(Problem::Failed {
                    step: s.id.clone(),
                    status: st,
                    attempts: f.attempts,
                    message: f.message.clone(),
                    excerpt: excerpt(&f.stdout, &f.stderr),
                })
            }
            Some(StepStatus::Done) if f.attempts > 1 => problems.push(Problem::Retried {
                step: s.id.clone(),
                attempts: f.attempts,
            }),
            _ => {}
        }
        if f.restarted {
            problems.push(Problem::RanAgain {
                step: s.id.clone(),
                outcome: f.message.clone(),
            });
        }
        if let Some((ok, message)) = &f.undo {
            problems.push(Problem::RolledBack {
                step: s.id.clone(),
                ok: *ok,
                message: message.clone(),
            });
        }
    }
    for (step, p) in &run.facts.points {
        if !p.dropped.is_empty() {
            problems.push(Problem::PointRolledBack {
                step: step.clone(),
                item: p.item.clone(),
                point: p.point.clone(),
                dropped: p.dropped.clone(),
            });
        }
        if !p.verified {
            problems.push(Problem::UnverifiedStart {
                step: step.clone(),
                item: p.item.clone(),
                point: p.point.clone(),
                note: p.note.clone(),
            });
        }
    }
    for s in services {
        if let Some(why) = s.lag.as_ref().and_then(|g| g.unknown.as_ref()) {
            problems.push(Problem::LagUnknown {
                service: s.id.clone(),
                why: why.clone(),
            });
        }
        if let Some(why) = &s.data_loss_unknown {
            problems.push(Problem::DataLossUnknown {
                service: s.id.clone(),
                why: why.clone(),
            });
        }
        if matches!(s.status, ServiceStatus::Blocked) {
            problems.push(Problem::Blocked {
                service: s.id.clone(),
                reason: s.reason.clone().unwrap_or_default(),
            });
        }
    }
    for (at, reason) in &run.facts.interrupted_at {
        problems.push(Problem::Interrupted {
            at: *at,
            reason: reason.clone(),
        });
    }
    for (at, status) in &run.facts.ended_before {
        problems.push(Problem::EndedThenResumed {
            at: *at,
            status: *status,
        });
    }
    problems.extend(run.facts.repairs.iter().cloned());
    if let Some((at, after)) = run.facts.clock_back {
        problems.push(Problem::ClockWentBack { at, after });
    }
    if let Some((at, before, after)) = run.facts.two_clocks.clone() {
        problems.push(Problem::TwoClocks { at, before, after });
    }
    problems
}

/// How many services recovered and met their targets, of those in scope and measured.
struct Counts {
    recovered: usize,
    in_scope: usize,
    rto_met: usize,
    rto_measured: usize,
    rpo_met: usize,
    rpo_measured: usize,
}

impl Counts {
    fn of(services: &[ServiceReport]) -> Counts {
        let in_scope: Vec<&ServiceReport> = services
            .iter()
            .filter(|s| {
                !matches!(
                    s.status,
                    ServiceStatus::NothingToDo | ServiceStatus::AnsweredInPlace
                )
            })
            .collect();
        Counts {
            recovered: in_scope
                .iter()
                .filter(|s| s.status == ServiceStatus::Recovered)
                .count(),
            in_scope: in_scope.len(),
            rto_measured: services.iter().filter(|s| s.rto_met.is_some()).count(),
            rto_met: services.iter().filter(|s| s.rto_met == Some(true)).count(),
            rpo_measured: services.iter().filter(|s| s.rpo_met.is_some()).count(),
            rpo_met: services.iter().filter(|s| s.rpo_met == Some(true)).count(),
        }
    }
}

/// The overall result.
fn outcome(run_status: Option<RunStatus>, counts: &Counts, problems: &[Problem]) -> Outcome {
    match run_status {
        None | Some(RunStatus::Interrupted) => Outcome::Incomplete,
        Some(RunStatus::Failed) => Outcome::Failed,
        Some(RunStatus::Partial) => Outcome::PartiallyRecovered,
        // Every step done, yet a service not recovered (an undo that failed left it in a
        // state nothing proved): never the headline of a recovery.
        Some(RunStatus::Succeeded) if counts.recovered < counts.in_scope => {
            Outcome::PartiallyRecovered
        }
        Some(RunStatus::Succeeded) => {
            if counts.rto_met == counts.rto_measured
                && counts.rpo_met == counts.rpo_measured
                && problems.is_empty()
            {
                Outcome::Recovered
            } else {
                Outcome::RecoveredWithIssues
            }
        }
    }
}

/// What to do better next time, from the data.
fn recommendations(
    run: &Run,
    services: &[ServiceReport],
    timeline: &[TimelineStep],
    manual: &[ManualStep],
    problems: &[Problem],
) -> Vec<Recommendation> {
    let l = run.l;
    let mut recommendations = service_recommendations(run, services, timeline);
    for m in manual {
        if let Some(w) = m.waited_s.filter(|w| *w > LONG_MANUAL_WAIT_S) {
            recommendations.push(Recommendation {
                kind: "long_manual_wait",
                subject: m.step.clone(),
                text: l.rec_long_wait(&m.step, w),
            });
        }
    }
    for p in problems {
        if let Problem::Retried { step, attempts } = p {
            recommendations.push(Recommendation {
                kind: "retried",
                subject: step.clone(),
                text: l.rec_retried(step, *attempts),
            });
        }
    }
    readiness_recommendations(run, &mut recommendations);
    let unverified_tls: Vec<String> = run
        .steps
        .records
        .iter()
        .filter(|r| r.tls_unverified)
        .map(|r| r.id.clone())
        .collect();
    if !unverified_tls.is_empty() {
        recommendations.push(Recommendation {
            kind: "tls_unverified",
            subject: "checks".to_string(),
            text: l.rec_tls_unverified(&unverified_tls),
        });
    }
    recommendations.extend(drill_recommendation(run));
    recommendations
}

/// The targets missed, service by service, and the points started from unverified.
fn service_recommendations(
    run: &Run,
    services: &[ServiceReport],
    timeline: &[TimelineStep],
) -> Vec<Recommendation> {
    let l = run.l;
    let mut recommendations = Vec::new();
    let mut unverified: Vec<String> = Vec::new();
    // Time lost before the run started (incident to start) counts against every target.
    let delay = (run.head.started_at - run.measured_from).num_milliseconds() as f64 / 1000.0;
    let late_start: Vec<String> = services
        .iter()
        .filter(|s| s.rto_met == Some(false) && delay > s.rto_target_s as f64)
        .map(|s| s.id.clone())
        .collect();
    if !late_start.is_empty() {
        recommendations.push(Recommendation {
            kind: "late_start",
            subject: "incident".to_string(),
            text: l.rec_late_start(delay, &late_start),
        });
    }
    for s in services {
        if s.rto_met == Some(false) && !late_start.contains(&s.id) {
            if let Some(achieved) = s.achieved_rto_s {
                // The chain of steps that made this service late.
                let last = run
                    .steps
                    .records
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.service == s.id && r.phase == Phase::Main)
                    .filter_map(|(i, r)| {
                        run.steps
                            .facts
                            .get(r.id.as_str())
                            .and_then(|f| f.end)
                            .map(|e| (e, i))
                    })
                    .max()
                    .map(|(_, i)| i);
                let chain = last.map(|i| run.steps.chain_to(i)).unwrap_or_default();
                let longest = chain
                    .iter()
                    .filter_map(|id| {
                        let t = timeline.iter().find(|t| &t.id == id)?;
                        Some((t.end_s? - t.start_s?, id.clone()))
                    })
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                recommendations.push(Recommendation {
                    kind: "rto_missed",
                    subject: s.id.clone(),
                    text: l.rec_rto_missed(
                        &s.id,
                        achieved,
                        s.rto_target_s as f64,
                        &chain,
                        longest.as_ref().map(|(d, id)| (id.as_str(), *d)),
                    ),
                });
            } else {
                recommendations.push(Recommendation {
                    kind: "not_recovered",
                    subject: s.id.clone(),
                    text: l.rec_not_recovered(&s.id, s.reason.as_deref()),
                });
            }
        } else if s.rto_met == Some(false) && s.achieved_rto_s.is_none() {
            recommendations.push(Recommendation {
                kind: "not_recovered",
                subject: s.id.clone(),
                text: l.rec_not_recovered(&s.id, s.reason.as_deref()),
            });
        }
        if s.rpo_met == Some(false) {
            recommendations.push(Recommendation {
                kind: "rpo_missed",
                subject: s.id.clone(),
                text: l.rec_rpo_missed(
                    &s.id,
                    s.data_loss_s.unwrap_or(0.0),
                    s.rpo_target_s.unwrap_or(0) as f64,
                ),
            });
        }
        for p in s.points.iter().filter(|p| !p.verified) {
            if !unverified.contains(&p.item) {
                unverified.push(p.item.clone());
            }
        }
    }
    if !unverified.is_empty() {
        recommendations.push(Recommendation {
            kind: "point_unverified",
            subject: unverified.join(", "),
            text: l.rec_point_unverified(&unverified),
        });
    }
    recommendations
}

/// The readiness check the run started with: what it found, how old it was, or its absence.
fn readiness_recommendations(run: &Run, recommendations: &mut Vec<Recommendation>) {
    let l = run.l;
    match &run.head.readiness {
        Some(r) => {
            let failed: Vec<String> = r
                .items
                .iter()
                .filter(|i| i.status == ItemStatus::Failed)
                .map(|i| format!("{} {}", i.area, i.subject))
                .collect();
            if !failed.is_empty() {
                recommendations.push(Recommendation {
                    kind: "not_ready",
                    subject: "readiness".to_string(),
                    text: l.rec_not_ready(&failed),
                });
            }
            let age = (run.head.started_at - r.at).num_seconds();
            if age > STALE_READINESS_S {
                recommendations.push(Recommendation {
                    kind: "stale_readiness",
                    subject: "readiness".to_string(),
                    text: l.rec_stale_readiness(&l.dur(age as f64)),
                });
            }
        }
        None => recommendations.push(Recommendation {
            kind: "no_readiness",
            subject: "readiness".to_string(),
            text: l.rec_no_readiness.to_string(),
        }),
    }
}

/// A drill overdue, or none ever made before a run that is not one.
fn drill_recommendation(run: &Run) -> Option<Recommendation> {
    let (l, head) = (run.l, run.head);
    let previous_drill = run
        .history
        .iter()
        .filter(|r| {
            r.run_id != head.run_id
                && r.mode == Mode::Drill
                && r.started_at < head.started_at
                && matches!(r.status, Some(RunStatus::Succeeded | RunStatus::Partial))
        })
        .map(|r| r.started_at)
        .max();
    match previous_drill {
        Some(t) if (head.started_at - t).num_days() > DRILL_EVERY_DAYS => Some(Recommendation {
            kind: "drill_overdue",
            subject: "drill".to_string(),
            text: l.rec_drill_overdue((head.started_at - t).num_days(), DRILL_EVERY_DAYS),
        }),
        None if head.mode != Mode::Drill => Some(Recommendation {
            kind: "no_drill",
            subject: "drill".to_string(),
            text: l.rec_no_drill.to_string(),
        }),
        _ => None,
    }
}

/// The last lines of a step's output (stderr first: that is where the reason usually is).
fn excerpt(stdout: &str, stderr: &str) -> String {
    let mut lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() < EXCERPT_LINES {
        let out: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        let room = EXCERPT_LINES - lines.len();
        let mut tail = out[out.len().saturating_sub(room)..].to_vec();
        tail.append(&mut lines);
        lines = tail;
    }
    let lines = &lines[lines.len().saturating_sub(EXCERPT_LINES)..];
    let mut text = lines.join("\n");
    if text.len() > 2000 {
        let mut cut = text.len() - 2000;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = format!("…{}", &text[cut..]);
    }
    text
}

/// A duration for people: `42s`, `4m 05s`, `1h 02m`.
pub fn human_duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 10.0 {
        return format!("{secs:.1}s");
    }
    let s = secs.round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else if s < 86400 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d {:02}h", s / 86400, (s % 86400) / 3600)
    }
}

/// Why the report of a run of a state folder could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RunReportError {
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("the journal of run `{0}` does not say how it started")]
    NoStart(String),
}

/// The report of run `run` (an id or `latest`) of a state folder, with the earlier runs as
/// history.
pub fn for_run(
    state_dir: &std::path::Path,
    run: &str,
    lang: Lang,
) -> Result<RecoveryReport, RunReportError> {
    let dir = crate::journal::RunDir::open(state_dir, run)?;
    let bytes =
        std::fs::read(dir.journal_path()).map_err(|source| crate::journal::JournalError::Io {
            what: "read",
            path: dir.journal_path(),
            source,
        })?;
    let events = dir.read()?;
    let history = briefs(state_dir)?;
    build(&Input {
        events: &events,
        journal_bytes: &bytes,
        history: &history,
        lang,
    })
    .map_err(|_| RunReportError::NoStart(dir.run_id.clone()))
}

/// Mode, start and result of every run of a state folder, oldest first.
pub fn briefs(state_dir: &std::path::Path) -> Result<Vec<RunBrief>, crate::journal::JournalError> {
    let mut out = Vec::new();
    for id in crate::journal::list(state_dir)? {
        // A damaged journal counts for what can be read of it; it never hides the others.
        let dir = crate::journal::RunDir::open(state_dir, &id)?;
        let (events, _) = crate::journal::read_lenient(&dir.journal_path())?;
        if let Some(start) = crate::event::Started::of(&events) {
            out.push(RunBrief {
                run_id: id,
                mode: start.mode,
                started_at: start.at,
                status: crate::event::finished(&events),
            });
        }
    }
    Ok(out)
}

/// The last successful drill of a service.
#[derive(Debug, Clone, Serialize)]
pub struct LastDrill {
    pub service: String,
    pub run_id: Option<String>,
    pub at: Option<DateTime<Utc>>,
    pub achieved_rto_s: Option<f64>,
    pub rto_met: Option<bool>,
    /// The newest drill that was to recover the service, whatever came of it.
    pub last_attempt_run_id: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Whether that drill recovered it.
    pub last_attempt_recovered: Option<bool>,
}

/// Per service seen in any run: the newest drill in which it was recovered, and the newest
/// drill that was to recover it.
pub fn last_drills(
    state_dir: &std::path::Path,
) -> Result<Vec<LastDrill>, crate::journal::JournalError> {
    let mut last: Vec<LastDrill> = Vec::new();
    for id in crate::journal::list(state_dir)? {
        // A damaged journal counts for what can be read of it; it never hides the others.
        let dir = crate::journal::RunDir::open(state_dir, &id)?;
        let (events, _) = crate::journal::read_lenient(&dir.journal_path())?;
        let Ok(report) = build(&Input {
            events: &events,
            journal_bytes: &[],
            history: &[],
            lang: Lang::En,
        }) else {
            continue;
        };
        for s in &report.services {
            // A service the drill does not move is not drilled by it.
            if matches!(
                s.status,
                ServiceStatus::NothingToDo | ServiceStatus::AnsweredInPlace
            ) {
                continue;
            }
            let entry = match last.iter_mut().find(|l| l.service == s.id) {
                Some(e) => e,
                None => {
                    last.push(LastDrill {
                        service: s.id.clone(),
                        run_id: None,
                        at: None,
                        achieved_rto_s: None,
                        rto_met: None,
                        last_attempt_run_id: None,
                        last_attempt_at: None,
                        last_attempt_recovered: None,
                    });
                    last.last_mut().expect("just pushed")
                }
            };
            let newer_attempt = entry.last_attempt_at.is_none_or(|t| t < report.started_at);
            if report.mode == Mode::Drill && newer_attempt {
                entry.last_attempt_run_id = Some(report.run_id.clone());
                entry.last_attempt_at = Some(report.started_at);
                entry.last_attempt_recovered = Some(s.status == ServiceStatus::Recovered);
            }
            let newer = entry.at.is_none_or(|t| t < report.started_at);
            if report.mode == Mode::Drill && s.status == ServiceStatus::Recovered && newer {
                entry.run_id = Some(report.run_id.clone());
                entry.at = Some(report.started_at);
                entry.achieved_rto_s = s.achieved_rto_s;
                entry.rto_met = s.rto_met;
            }
        }
    }
    last.sort_by(|a, b| a.service.cmp(&b.service));
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ServiceRecord, StepRecord};
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 3, 0, 0).unwrap() + chrono::Duration::seconds(secs)
    }

    fn step(id: &str, kind: &str, after: &[&str]) -> StepRecord {
        StepRecord {
            id: id.into(),
            service: id.split('/').next().unwrap().into(),
            kind: kind.into(),
            host: Some("hv".into()),
            phase: Phase::Main,
            description: None,
            instructions: (kind == "manual").then(|| "do it".to_string()),
            after: after.iter().map(|s| s.to_string()).collect(),
            expected_s: 10,
            tls_unverified: false,
            action: None,
            vm: None,
        }
    }

    fn service(id: &str, rto: u64, rpo: Option<u64>) -> ServiceRecord {
        ServiceRecord {
            id: id.into(),
            kind: "application".into(),
            owner: None,
            rto_target_s: rto,
            rpo_target_s: rpo,
            replicated_by_application: false,
            estimated_rto_s: 0,
            depends_on: Vec::new(),
        }
    }

    fn started(incident: Option<DateTime<Utc>>) -> Event {
        Event::RunStarted {
            at: t(0),
            run_id: "r1".into(),
            mode: Mode::Failover,
            emergency: true,
            services: Vec::new(),
            only: false,
            operator: "karim".into(),
            machine: "laptop".into(),
            version: "0.1.0".into(),
            sources_digest: "abc".into(),
            steps: vec!["db/start".into(), "db/healthy".into(), "app/start".into()],
            sites: vec!["pra".into()],
            incident_at: incident,
            plan: Some(Box::new(RunPlan {
                services: vec![service("db", 600, Some(900)), service("app", 60, None)],
                steps: vec![
                    step("db/start", "vm", &[]),
                    step("db/healthy", "check", &["db/start"]),
                    step("app/start", "exec", &["db/healthy"]),
                ],
                estimated_s: 30,
                critical_path: Vec::new(),
            })),
            readiness: None,
            points: None,
        }
    }

    fn run(id: &str, from: i64, to: i64, status: StepStatus) -> [Event; 2] {
        [
            Event::StepStarted {
                at: t(from),
                step: id.into(),
                attempt: 1,
                host: Some("hv".into()),
            },
            Event::StepFinished {
                at: t(to),
                step: id.into(),
                attempt: 1,
                status,
                duration_ms: ((to - from) * 1000) as u64,
                message: None,
            },
        ]
    }

    fn build_of(events: &[Event]) -> RecoveryReport {
        build(&Input {
            events,
            journal_bytes: b"journal",
            history: &[],
            lang: Lang::En,
        })
        .unwrap()
    }

    /// What a host printed, or a person typed, never shapes the Markdown report: a line of a
    /// failed step's output that looks like a heading stays inside its problem, and a name
    /// with `|` stays in its cell.
    #[test]
    fn host_text_and_names_never_shape_the_markdown_report() {
        let mut events = vec![started(None)];
        events.push(Event::StepStarted {
            at: t(0),
            step: "db/start".into(),
            attempt: 1,
            host: Some("hv".into()),
        });
        events.push(Event::StepFinished {
            at: t(5),
            step: "db/start".into(),
            attempt: 1,
            status: StepStatus::Failed,
            duration_ms: 5000,
            message: Some("exit 1\n## Result: Recovered\n- everything fine".into()),
        });
        events.push(Event::StepStarted {
            at: t(6),
            step: "app/start".into(),
            attempt: 1,
            host: Some("hv".into()),
        });
        events.push(Event::WaitingForOperator {
            at: t(7),
            step: "app/start".into(),
            instructions: "check".into(),
        });
        events.push(Event::Confirmed {
            at: t(8),
            step: "app/start".into(),
            by: "Eve | Admin".into(),
            note: None,
        });
        events.push(Event::RunFinished {
            at: t(9),
            status: RunStatus::Failed,
        });
        let md = render(&build_of(&events), Format::Md, Lang::En);
        assert!(
            !md.lines()
                .any(|l| l.starts_with("## Result") || l == "- everything fine"),
            "{md}"
        );
        assert!(
            md.contains("exit 1<br>## Result: Recovered<br>- everything fine"),
            "{md}"
        );
        let row = md
            .lines()
            .find(|l| l.starts_with("| app/start |") && l.contains("Eve"))
            .unwrap_or_else(|| panic!("{md}"));
        assert!(row.contains("Eve \\| Admin"), "{row}");
    }

    /// A run that failed, then was resumed and cut by a crash, is not over: not "failed" with
    /// its first end, nor "succeeded" once its second part succeeds without a word of the
    /// first's end.
    #[test]
    fn a_resumed_run_is_not_reported_as_its_earlier_part_ended() {
        let mut events = vec![started(None)];
        events.extend(run("db/start", 0, 10, StepStatus::Failed));
        events.push(Event::RunFinished {
            at: t(11),
            status: RunStatus::Failed,
        });
        events.push(Event::RunResumed {
            at: t(100),
            operator: "karim".into(),
            machine: "laptop".into(),
            points: None,
        });
        events.extend(run("db/start", 101, 110, StepStatus::Done));
        let report = build_of(&events);
        assert_eq!((report.run_status, report.ended_at), (None, None));
        assert_eq!(crate::event::finished(&events), None);
        let ended: Vec<_> = report
            .problems
            .iter()
            .filter_map(|p| match p {
                Problem::EndedThenResumed { at, status } => Some((*at, *status)),
                _ => None,
            })
            .collect();
        assert_eq!(ended, [(t(11), RunStatus::Failed)]);
        events.extend(run("db/healthy", 110, 120, StepStatus::Done));
        events.extend(run("app/start", 120, 130, StepStatus::Done));
        events.push(Event::RunFinished {
            at: t(131),
            status: RunStatus::Succeeded,
        });
        let report = build_of(&events);
        assert_eq!(report.run_status, Some(RunStatus::Succeeded));
        assert_eq!(crate::event::finished(&events), Some(RunStatus::Succeeded));
        let md = render(&report, Format::Md, Lang::En);
        assert!(
            md.contains(
                "the run ended here (failed, rolled back where it could be), then was resumed"
            ),
            "{md}"
        );
    }

    /// A service with an RPO target that recovered while nothing the run journaled says what
    /// its data came from (no point used, no lag read: a vm started by an exec step, or with
    /// no copies) is never counted within its RPO: its loss is said not measured, a problem,
    /// and the run is not "recovered within its targets". One without a target is not asked.
    #[test]
    fn a_service_recovered_with_nothing_to_measure_its_loss_by_is_said_so() {
        let mut events = vec![started(None)];
        events.extend(run("db/start", 0, 10, StepStatus::Done));
        events.extend(run("db/healthy", 10, 20, StepStatus::Done));
        events.extend(run("app/start", 20, 30, StepStatus::Done));
        events.push(Event::RunFinished {
            at: t(31),
            status: RunStatus::Succeeded,
        });
        let report = build_of(&events);
        let db = report.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!(db.status, ServiceStatus::Recovered);
        assert_eq!((db.data_loss_s, db.rpo_met), (None, None));
        assert!(
            db.data_loss_unknown
                .as_deref()
                .is_some_and(|w| w.contains("no replica point used, no replication lag read")),
            "{:?}",
            db.data_loss_unknown
        );
        assert!(
            report
                .problems
                .iter()
                .any(|p| matches!(p, Problem::DataLossUnknown { service, .. } if service == "db")),
            "{:?}",
            report.problems
        );
        assert_ne!(report.result, Outcome::Recovered);
        let app = report.services.iter().find(|s| s.id == "app").unwrap();
        assert_eq!(app.data_loss_unknown, None);
    }

    /// A service whose failover started two vms, only one of them from a journaled point:
    /// that one's age says nothing of the other's data, so the loss is not measured (and
    /// never within the RPO), naming the vm; with both points, it is measured.
    #[test]
    fn a_service_with_a_vm_started_without_a_point_claims_no_rpo() {
        let report = |both: bool| {
            let with_vm = |id: &str, vm: &str| StepRecord {
                vm: Some(vm.into()),
                ..vm_step(id, "start", &[])
            };
            let mut events = vec![db_run(
                Some(t(-60)),
                vec![
                    with_vm("db/start", "db"),
                    with_vm("db/start-logs", "db-logs"),
                ],
            )];
            events.push(point_at("db/start", "p1", t(-300), 1));
            if both {
                let mut logs = point_at("db/start-logs", "p1", t(-300), 2);
                if let Event::ReplicaPointUsed { item, .. } = &mut logs {
                    *item = "db-logs".into();
                }
                events.push(logs);
            }
            events.extend(run("db/start", 1, 10, StepStatus::Done));
            events.extend(run("db/start-logs", 2, 12, StepStatus::Done));
            events.sort_by_key(Event::at);
            events.push(Event::RunFinished {
                at: t(20),
                status: RunStatus::Succeeded,
            });
            let r = build_of(&events);
            r.services.into_iter().find(|s| s.id == "db").unwrap()
        };
        let db = report(false);
        assert_eq!((db.data_loss_s, db.rpo_met), (None, None), "{db:?}");
        assert!(
            db.data_loss_unknown
                .as_deref()
                .is_some_and(|w| w.contains("vm db-logs was started with no replica point")),
            "{db:?}"
        );
        let db = report(true);
        assert!(db.data_loss_s.is_some() && db.rpo_met.is_some(), "{db:?}");
    }

    /// A start that journaled its point and then failed gave its copies back: the attempt
    /// that ended done (here by a person's hand, journaling none) did not start from it, so
    /// its age is no measure of the data lost; a point the last attempt journaled is.
    #[test]
    fn a_point_of_a_failed_attempt_is_not_what_the_done_one_started_from() {
        let base = |last_point: bool| {
            let mut events = vec![started(None)];
            events.push(point_at("db/start", "P1", t(-60), 1));
            events.extend(run("db/start", 0, 5, StepStatus::Failed));
            let [again, done] = run("db/start", 10, 20, StepStatus::Done);
            events.push(again);
            if last_point {
                events.push(point_at("db/start", "P0", t(-600), 11));
            }
            events.push(done);
            events.extend(run("db/healthy", 20, 30, StepStatus::Done));
            events.extend(run("app/start", 30, 40, StepStatus::Done));
            events.push(Event::RunFinished {
                at: t(41),
                status: RunStatus::Succeeded,
            });
            build_of(&events)
        };
        let report = base(false);
        let db = report.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!((db.data_loss_s, db.rpo_met), (None, None), "{db:?}");
        assert!(db.data_loss_unknown.is_some(), "{db:?}");
        let report = base(true);
        let db = report.services.iter().find(|s| s.id == "db").unwrap();
        assert!(db.data_loss_s.is_some_and(|l| l >= 600.0), "{db:?}");
    }

    /// Each wait of a step for a person is its own row: a step handed to a person, confirmed,
    /// then run again after a resume and left waiting is never shown as confirmed by the
    /// first answer; a step handed over (not a manual one) is listed too.
    #[test]
    fn each_wait_for_a_person_is_reported_with_its_own_answer() {
        let mut events = vec![started(None)];
        events.extend(run("db/start", 0, 10, StepStatus::Done));
        events.extend(run("db/healthy", 10, 20, StepStatus::Done));
        let [start, done] = run("app/start", 20, 40, StepStatus::Done);
        events.push(start);
        events.push(Event::WaitingForOperator {
            at: t(21),
            step: "app/start".into(),
            instructions: "check whether it took effect".into(),
        });
        events.push(Event::Confirmed {
            at: t(30),
            step: "app/start".into(),
            by: "alice".into(),
            note: None,
        });
        events.push(done);
        events.push(Event::RunFinished {
            at: t(41),
            status: RunStatus::Failed,
        });
        events.push(Event::RunResumed {
            at: t(100),
            operator: "karim".into(),
            machine: "laptop".into(),
            points: None,
        });
        events.push(Event::StepStarted {
            at: t(101),
            step: "app/start".into(),
            attempt: 1,
            host: Some("hv".into()),
        });
        events.push(Event::WaitingForOperator {
            at: t(102),
            step: "app/start".into(),
            instructions: "check whether it took effect".into(),
        });
        events.push(Event::RunFinished {
            at: t(200),
            status: RunStatus::Interrupted,
        });
        let report = build_of(&events);
        let rows: Vec<_> = report
            .manual
            .iter()
            .map(|m| (m.step.as_str(), m.asked_at, m.by.as_deref()))
            .collect();
        assert_eq!(
            rows,
            [
                ("app/start", Some(t(21)), Some("alice")),
                ("app/start", Some(t(102)), None)
            ]
        );
        assert_eq!(report.manual[0].waited_s, Some(9.0));
        assert_eq!(
            report.manual[1].instructions,
            "check whether it took effect"
        );
    }

    /// A run resumed on a machine whose clock is ten minutes behind: its health check "ends"
    /// before the run started, which is no RTO at all. None is claimed, and the report says
    /// why; a confirmation dated by the process that gave it, or events a moment out of
    /// order, are no clock gone back.
    #[test]
    fn no_rto_is_claimed_across_two_machines_clocks() {
        let report = |machine: &str| {
            let mut events = vec![started(None)];
            events.extend(run("db/start", 0, 100, StepStatus::Done));
            events.push(Event::RunFinished {
                at: t(101),
                status: RunStatus::Interrupted,
            });
            events.push(Event::RunResumed {
                at: t(400),
                operator: "sofia".into(),
                machine: machine.into(),
                points: None,
            });
            events.extend(run("db/healthy", 401, 410, StepStatus::Done));
            events.extend(run("app/start", 410, 420, StepStatus::Done));
            events.push(Event::RunFinished {
                at: t(421),
                status: RunStatus::Succeeded,
            });
            build_of(&events)
        };
        // Resumed on the machine that ran it: one clock.
        let same = report("laptop");
        assert!(same.services.iter().any(|s| s.achieved_rto_s.is_some()));
        // Resumed on another (its clock perhaps minutes behind, less than the pause): the
        // times cannot be compared, and nothing claims an RTO.
        let other = report("pra-laptop");
        for s in &other.services {
            assert_eq!((s.achieved_rto_s, s.rto_met), (None, None), "{}", s.id);
        }
        assert!(
            other.problems.iter().any(|p| matches!(
                p,
                Problem::TwoClocks { at, before, after }
                    if *at == t(400) && before == "laptop" && after == "pra-laptop"
            )),
            "{:?}",
            other.problems
        );
        let md = render::render(&other, render::Format::Md, Lang::En);
        assert!(md.contains("two machines' clocks"), "{md}");
    }

    /// The points a failover was asked at its start, and the services let start as
    /// replicated, are in the report's head, as the options that asked them.
    #[test]
    fn the_points_a_run_was_asked_are_in_its_report() {
        let mut first = started(None);
        if let Event::RunStarted { points, .. } = &mut first {
            *points = Some(Box::new(crate::event::PointChoice {
                before: Some(t(-3600)),
                as_replicated: vec!["directory".into()],
                ..Default::default()
            }));
        }
        let mut events = vec![first];
        events.extend(run("db/start", 0, 100, StepStatus::Done));
        let r = build_of(&events);
        let asked = r.points_asked.clone().unwrap_or_default();
        assert!(
            asked.starts_with("--point-before ") && asked.ends_with(" --as-replicated directory"),
            "{asked}"
        );
        let md = render::render(&r, render::Format::Md, Lang::En);
        assert!(
            md.contains("Points asked") && md.contains("--as-replicated directory"),
            "{md}"
        );
        // None asked: no such line.
        let r = build_of(&[started(None)]);
        assert_eq!(r.points_asked, None);
    }

    #[test]
    fn no_rto_is_claimed_across_a_clock_that_went_back() {
        let mut events = vec![started(None)];
        events.extend(run("db/start", 0, 100, StepStatus::Done));
        events.push(Event::RunFinished {
            at: t(101),
            status: RunStatus::Interrupted,
        });
        let asked = crate::event::PointChoice {
            by_vm: [("db".to_string(), "P1".to_string())].into(),
            accept_unverified: vec!["app".into()],
            ..Default::default()
        };
        events.push(Event::RunResumed {
            at: t(-500),
            operator: "sofia".into(),
            machine: "pra-laptop".into(),
            points: Some(Box::new(asked)),
        });
        events.extend(run("db/healthy", -490, -480, StepStatus::Done));
        events.extend(run("app/start", -480, -470, StepStatus::Done));
        events.push(Event::RunFinished {
            at: t(-470),
            status: RunStatus::Succeeded,
        });
        // A resume's additions are the run's from then on.
        let points = crate::event::Started::of(&events).unwrap().points;
        assert_eq!(
            (
                points.by_vm["db"].as_str(),
                points.accept_unverified.as_slice()
            ),
            ("P1", &["app".to_string()][..])
        );
        let r = build_of(&events);
        for s in &r.services {
            assert_eq!((s.achieved_rto_s, s.rto_met), (None, None), "{}", s.id);
        }
        assert_eq!(r.rto_measured, 0);
        assert!(
            r.problems.iter().any(|p| matches!(
                p,
                Problem::ClockWentBack { at, after } if *at == t(-500) && *after == t(101)
            )),
            "{:?}",
            r.problems
        );
        assert_eq!(r.result, Outcome::RecoveredWithIssues);
        let md = render::render(&r, render::Format::Md, Lang::En);
        assert!(md.contains("clock went back"), "{md}");
        // Who resumed it, and what they asked for the vms left.
        assert!(
            md.contains("sofia (pra-laptop, ")
                && md.contains("; --point db=P1 --accept-unverified app)"),
            "{md}"
        );

        let mut events = vec![started(None)];
        events.extend(run("db/start", 0, 20, StepStatus::Done));
        events.push(Event::Confirmed {
            at: t(-1000),
            step: "db/start".into(),
            by: "karim".into(),
            note: None,
        });
        events.extend(run("db/healthy", 17, 30, StepStatus::Done));
        events.extend(run("app/start", 30, 40, StepStatus::Done));
        events.push(Event::RunFinished {
            at: t(40),
            status: RunStatus::Succeeded,
        });
        let r = build_of(&events);
        assert!(
            !r.problems
                .iter()
                .any(|p| matches!(p, Problem::ClockWentBack { .. })),
            "{:?}",
            r.problems
        );
        assert_eq!(r.services[0].achieved_rto_s, Some(30.0));
    }

    #[test]
    fn rto_runs_to_the_last_health_check_and_data_loss_to_the_point_used() {
        let mut events = vec![started(Some(t(-120)))];
        events.extend(run("db/start", 0, 20, StepStatus::Done));
        events.push(Event::ReplicaPointUsed {
            at: t(20),
            step: "db/start".into(),
            item: "erp-db".into(),
            point: "p7".into(),
            taken_at: t(-120 - 1800),
            written_until: None,
            verified: false,
            note: None,
            dropped: Vec::new(),
        });
        events.extend(run("db/healthy", 20, 50, StepStatus::Done));
        events.extend(run("app/start", 50, 200, StepStatus::Done));
        events.push(Event::RunFinished {
            at: t(200),
            status: RunStatus::Succeeded,
        });
        let r = build_of(&events);
        let db = r.services.iter().find(|s| s.id == "db").unwrap();
        // From the incident (2 min before the start) to db/healthy passing.
        assert_eq!(db.achieved_rto_s, Some(170.0));
        assert_eq!(db.rto_met, Some(true));
        // The point was taken 30 min before the incident; the target is 15 min.
        assert_eq!(db.data_loss_s, Some(1800.0));
        assert_eq!(db.rpo_met, Some(false));
        let app = r.services.iter().find(|s| s.id == "app").unwrap();
        assert_eq!(app.achieved_rto_s, Some(320.0));
        assert_eq!(app.rto_met, Some(false));
        assert_eq!(r.result, Outcome::RecoveredWithIssues);
        let kinds: Vec<&str> = r.recommendations.iter().map(|x| x.kind).collect();
        assert!(kinds.contains(&"rpo_missed"), "{kinds:?}");
        assert!(kinds.contains(&"point_unverified"), "{kinds:?}");
        // app started 2 min after the incident, within its 1 min target? No: the delay alone
        // (120 s) exceeds it, so the recommendation is about the time to start.
        assert!(kinds.contains(&"late_start"), "{kinds:?}");
        assert_eq!(r.critical_path, vec!["db/start", "db/healthy", "app/start"]);
        assert_eq!(
            r.evidence.journal_blake3,
            blake3::hash(b"journal").to_hex().to_string()
        );
    }

    /// A run of one service `db` its application replicates, with or without a lag step.
    fn lag_run(mode: Mode, lag_step: bool, lag: Option<Event>) -> RecoveryReport {
        lag_run_with(mode, lag_step, lag, Vec::new())
    }

    fn lag_run_with(
        mode: Mode,
        lag_step: bool,
        lag: Option<Event>,
        more: Vec<Event>,
    ) -> RecoveryReport {
        let mut first = started(None);
        if let Event::RunStarted {
            mode: m,
            emergency,
            plan: Some(plan),
            ..
        } = &mut first
        {
            *m = mode;
            *emergency = false;
            plan.services = vec![ServiceRecord {
                replicated_by_application: true,
                ..service("db", 600, Some(900))
            }];
            plan.steps = vec![step("db/start", "exec", &[])];
            if lag_step {
                plan.steps.insert(0, step("db/replication-lag", "lag", &[]));
                plan.steps[1].after = vec!["db/replication-lag".into()];
            }
        }
        let mut events = vec![first];
        if lag_step {
            events.extend(run("db/replication-lag", 0, 1, StepStatus::Done));
        }
        events.extend(lag);
        events.extend(more);
        events.extend(run("db/start", 1, 20, StepStatus::Done));
        events.push(Event::RunFinished {
            at: t(20),
            status: RunStatus::Succeeded,
        });
        build_of(&events)
    }

    fn lag_event(lag_s: Option<f64>, unknown: Option<&str>) -> Event {
        Event::LagMeasured {
            at: t(1),
            step: "db/replication-lag".into(),
            service: "db".into(),
            host: "standby".into(),
            lag_s,
            unknown: unknown.map(str::to_string),
            rpo_target_s: Some(900),
        }
    }

    #[test]
    fn the_data_loss_of_an_application_replica_is_its_lag_or_said_unknown() {
        for mode in [Mode::Failover, Mode::Failback] {
            let r = lag_run(mode, true, Some(lag_event(Some(12.5), None)));
            let db = &r.services[0];
            assert_eq!(db.data_loss_s, Some(12.5), "{mode}");
            assert_eq!(db.rpo_met, Some(true), "{mode}");
            assert!(r.problems.is_empty(), "{mode}: {:?}", r.problems);

            let r = lag_run(mode, true, Some(lag_event(Some(1000.0), None)));
            assert_eq!(r.services[0].rpo_met, Some(false), "{mode}");

            // A reading that could not be made, or a probe that never ran: not measured, a
            // problem, and never within the target.
            for lag in [
                Some(lag_event(None, Some("the probe printed nothing"))),
                None,
            ] {
                let r = lag_run(mode, true, lag);
                let db = &r.services[0];
                assert_eq!(db.data_loss_s, None, "{mode}");
                assert_eq!(db.rpo_met, None, "{mode}");
                assert!(
                    matches!(&r.problems[..], [Problem::LagUnknown { service, .. }] if service == "db"),
                    "{mode}: {:?}",
                    r.problems
                );
            }
        }
        // A lag no probe could have said (the journal holds -5): not a measure.
        let r = lag_run(Mode::Failover, true, Some(lag_event(Some(-5.0), None)));
        assert_eq!(
            (r.services[0].data_loss_s, r.services[0].rpo_met),
            (None, None)
        );
        // A disk copy an hour old started for it as well: the loss is the copy's, not the
        // lag's, and over the target.
        let copy = Event::ReplicaPointUsed {
            at: t(1),
            step: "db/start".into(),
            item: "db".into(),
            point: "p1".into(),
            taken_at: t(-3600),
            written_until: None,
            verified: true,
            note: None,
            dropped: Vec::new(),
        };
        let r = lag_run_with(
            Mode::Failover,
            true,
            Some(lag_event(Some(12.5), None)),
            vec![copy],
        );
        let db = &r.services[0];
        assert!(db.data_loss_s.is_some_and(|l| l >= 3600.0), "{db:?}");
        assert_eq!(db.rpo_met, Some(false));
        // A failback of it with no probe of the reverse replication: said, not left blank.
        let r = lag_run(Mode::Failback, false, None);
        let db = &r.services[0];
        assert_eq!(db.data_loss_s, None);
        assert!(
            db.lag
                .as_ref()
                .and_then(|l| l.unknown.as_deref())
                .is_some_and(|w| w.contains("failback_lag")),
            "{:?}",
            db.lag
        );
        assert!(matches!(&r.problems[..], [Problem::LagUnknown { .. }]));
        // A restore starts the same copy again: no replication lag to speak of.
        let r = lag_run(Mode::Restore, false, None);
        assert!(r.services[0].lag.is_none());
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn a_failed_failover_claims_no_rpo_and_a_roll_back_or_an_unverified_start_is_a_problem() {
        let point = |step: &str, verified: bool, dropped: &[&str]| Event::ReplicaPointUsed {
            at: t(1),
            step: step.into(),
            item: "erp-db".into(),
            point: "p6".into(),
            taken_at: t(-60),
            written_until: None,
            verified,
            note: Some("rolled back".into()),
            dropped: dropped.iter().map(|d| d.to_string()).collect(),
        };
        // A start done from its point, then undone by a roll-back (its copies given back),
        // then done again recording no point (handed to a person, confirmed): the undone
        // attempt's point is none the vm runs on, and no loss is measured from it.
        let mut events = vec![started(None)];
        events.push(point("db/start", true, &[]));
        events.extend(run("db/start", 0, 5, StepStatus::Done));
        events.push(Event::UndoFinished {
            at: t(6),
            step: "db/start".into(),
            ok: true,
            message: None,
        });
        events.extend(run("db/start", 7, 9, StepStatus::Done));
        events.extend(run("db/healthy", 9, 10, StepStatus::Done));
        events.extend(run("app/start", 10, 11, StepStatus::Done));
        events.push(Event::RunFinished {
            at: t(11),
            status: RunStatus::Succeeded,
        });
        let r = build_of(&events);
        let db = r.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!((db.data_loss_s, db.rpo_met), (None, None), "{db:?}");
        assert!(db.data_loss_unknown.is_some(), "{db:?}");

        // The vm's start failed after its point was chosen: no data was recovered.
        let mut events = vec![started(None)];
        events.push(point("db/start", true, &[]));
        events.extend(run("db/start", 0, 5, StepStatus::Failed));
        events.extend(run("db/healthy", 5, 5, StepStatus::Blocked));
        events.extend(run("app/start", 5, 5, StepStatus::Blocked));
        events.push(Event::RunFinished {
            at: t(5),
            status: RunStatus::Failed,
        });
        let r = build_of(&events);
        let db = r.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!((db.data_loss_s, db.rpo_met), (None, None));
        assert_eq!(r.rpo_measured, 0);
        let md = render(&r, Format::Md, Lang::En);
        assert!(md.contains("data loss (RPO): not measured"), "{md}");
        assert!(!md.contains("within their RPO target"), "{md}");

        // Recovered, but from an older point than the newest, named by the operator though
        // unverified: its age would be within the target, but nothing proves it.
        let mut events = vec![started(None)];
        events.push(point("db/start", false, &["p7", "p8"]));
        events.extend(run("db/start", 0, 20, StepStatus::Done));
        events.extend(run("db/healthy", 20, 50, StepStatus::Done));
        events.extend(run("app/start", 50, 60, StepStatus::Done));
        events.push(Event::RunFinished {
            at: t(60),
            status: RunStatus::Succeeded,
        });
        let r = build_of(&events);
        assert_eq!(r.result, Outcome::RecoveredWithIssues);
        assert!(r.problems.iter().any(|p| matches!(
            p,
            Problem::PointRolledBack { dropped, .. } if dropped == &["p7", "p8"]
        )));
        assert!(r.problems.iter().any(|p| matches!(
            p,
            Problem::UnverifiedStart { step, .. } if step == "db/start"
        )));
        let db = r.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!(db.data_loss_s, Some(60.0));
        assert_eq!(db.rpo_met, None, "an unverified copy proves no RPO");

        // A copy started as it is, dated by its file: no loss is measured, whatever name a
        // resumed start of an older version gave it.
        for name in ["as-is", "p6+as-is", "as-is@02:59:00.000+p6"] {
            let mut old = events.clone();
            for e in &mut old {
                if let Event::ReplicaPointUsed { point, .. } = e {
                    *point = name.into();
                }
            }
            let r3 = build_of(&old);
            let db3 = r3.services.iter().find(|s| s.id == "db").unwrap();
            assert_eq!((db3.data_loss_s, db3.rpo_met), (None, None), "{name}");
            assert!(
                r3.problems.iter().any(
                    |p| matches!(p, Problem::DataLossUnknown { service, .. } if service == "db")
                ),
                "{name}"
            );
        }
        let mut as_is = events.clone();
        for e in &mut as_is {
            if let Event::ReplicaPointUsed { point, .. } = e {
                *point = "p6+copy-20261128T025900Z".into();
            }
        }
        let r2 = build_of(&as_is);
        let db2 = r2.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!((db2.data_loss_s, db2.rpo_met), (None, None));
        let md2 = render(&r2, Format::Md, Lang::En);
        assert!(
            md2.contains(
                "which no verified replica point proves: when its data was taken is not known"
            ),
            "{md2}"
        );
        let md = render(&r, Format::Md, Lang::En);
        assert!(md.contains("the newer points p7, p8"), "{md}");
        assert!(!md.contains("No step failed"), "{md}");
    }

    /// A run of service db alone with these steps (planned unless `incident` is given).
    fn db_run(incident: Option<DateTime<Utc>>, steps: Vec<StepRecord>) -> Event {
        let mut e = started(incident);
        if let Event::RunStarted {
            emergency,
            steps: ids,
            plan: Some(plan),
            ..
        } = &mut e
        {
            *emergency = incident.is_some();
            *ids = steps.iter().map(|s| s.id.clone()).collect();
            plan.services.truncate(1);
            plan.steps = steps;
        }
        e
    }

    fn vm_step(id: &str, action: &str, after: &[&str]) -> StepRecord {
        StepRecord {
            action: Some(action.into()),
            ..step(id, "vm", after)
        }
    }

    fn point_at(step: &str, point: &str, taken_at: DateTime<Utc>, at: i64) -> Event {
        Event::ReplicaPointUsed {
            at: t(at),
            step: step.into(),
            item: "db".into(),
            point: point.into(),
            taken_at,
            written_until: None,
            verified: true,
            note: None,
            dropped: Vec::new(),
        }
    }

    /// A planned failover whose final sync of db is taken at 10 s: db's loss is nothing only
    /// when a stop of db had finished by then; stopped after it, the loss runs to the stop;
    /// never stopped by the run, it is not measured and the report says why.
    #[test]
    fn a_point_made_during_the_run_is_no_loss_only_after_the_vm_stopped() {
        let report = |stop: Option<(i64, i64)>| {
            let mut steps = vec![
                step("db/final-sync", "replicate", &[]),
                vm_step("db/start", "start", &["db/final-sync"]),
            ];
            let mut events = Vec::new();
            if let Some((from, to)) = stop {
                steps.insert(0, vm_step("db/stop-primary", "stop", &[]));
                events.extend(run("db/stop-primary", from, to, StepStatus::Done));
            }
            events.insert(0, db_run(None, steps));
            events.extend(run("db/final-sync", 5, 12, StepStatus::Done));
            events.push(point_at("db/final-sync", "p9", t(10), 12));
            events.push(point_at("db/start", "p9", t(10), 13));
            events.extend(run("db/start", 12, 20, StepStatus::Done));
            events.sort_by_key(Event::at);
            events.push(Event::RunFinished {
                at: t(60),
                status: RunStatus::Succeeded,
            });
            let r = build_of(&events);
            r.services.into_iter().find(|s| s.id == "db").unwrap()
        };
        // Stopped (1 s to 4 s) before the point was taken: nothing lost.
        let db = report(Some((1, 4)));
        assert_eq!((db.data_loss_s, db.rpo_met), (Some(0.0), Some(true)));
        assert_eq!(db.data_loss_unknown, None);
        // Stopped only after it (30 s to 40 s): it wrote for up to 30 s after its point.
        let db = report(Some((30, 40)));
        assert_eq!(db.data_loss_s, Some(30.0));
        // Never stopped by the run: it may still be writing on the primary.
        let db = report(None);
        let md = render(
            &RecoveryReport {
                services: vec![db.clone()],
                ..build_of(&[db_run(None, vec![])])
            },
            Format::Md,
            Lang::En,
        );
        assert!(
            md.contains("data loss not measured: nothing in the journal shows db stopped before its point p9"),
            "{md}"
        );
        assert_eq!((db.data_loss_s, db.rpo_met), (None, None));
        assert!(
            db.data_loss_unknown.as_deref().is_some_and(
                |w| w.contains("nothing in the journal shows db stopped before its point p9")
            ),
            "{db:?}"
        );
    }

    /// A run resumed on another machine times its steps by that machine's clock: when db
    /// stopped is not compared with when its point was taken (that machine's clock ten
    /// minutes behind puts the stop before the point), and no RPO is claimed met.
    #[test]
    fn no_data_loss_is_claimed_across_two_machines_clocks() {
        let report = |machine: &str| {
            let steps = vec![
                vm_step("db/stop-primary", "stop", &[]),
                step("db/final-sync", "replicate", &["db/stop-primary"]),
                vm_step("db/start", "start", &["db/final-sync"]),
            ];
            let mut events = vec![db_run(None, steps)];
            events.extend(run("db/final-sync", 1, 8, StepStatus::Done));
            events.push(point_at("db/final-sync", "p9", t(5), 8));
            events.push(Event::RunFinished {
                at: t(9),
                status: RunStatus::Interrupted,
            });
            events.push(Event::RunResumed {
                at: t(10),
                operator: "sofia".into(),
                machine: machine.into(),
                points: None,
            });
            events.extend(run("db/stop-primary", 11, 12, StepStatus::Done));
            events.push(point_at("db/start", "p9", t(5), 13));
            events.extend(run("db/start", 13, 20, StepStatus::Done));
            events.push(Event::RunFinished {
                at: t(60),
                status: RunStatus::Succeeded,
            });
            let r = build_of(&events);
            r.services.into_iter().find(|s| s.id == "db").unwrap()
        };
        // One machine: stopped at 12 s, its point taken at 5 s: 7 s lost.
        let db = report("laptop");
        assert_eq!(db.data_loss_s, Some(7.0), "{db:?}");
        let db = report("other-laptop");
        assert_eq!((db.data_loss_s, db.rpo_met), (None, None), "{db:?}");
        assert!(
            db.data_loss_unknown
                .as_deref()
                .is_some_and(|w| w.contains("two clocks")),
            "{db:?}"
        );
    }

    /// A service of two vms whose final sync of db is taken at 10 s, after the run stopped
    /// its other vm only: db may have written after its point; not measured. Its own stop
    /// counts.
    #[test]
    fn the_stop_of_another_vm_of_the_service_is_no_stop_of_the_vm() {
        let report = |stopped: &str| {
            let steps = vec![
                StepRecord {
                    vm: Some(stopped.into()),
                    ..vm_step("db/stop-primary", "stop", &[])
                },
                step("db/final-sync", "replicate", &[]),
                StepRecord {
                    vm: Some("db".into()),
                    ..vm_step("db/start", "start", &["db/final-sync"])
                },
            ];
            let mut events = vec![db_run(None, steps)];
            events.extend(run("db/stop-primary", 1, 4, StepStatus::Done));
            events.extend(run("db/final-sync", 5, 12, StepStatus::Done));
            events.push(point_at("db/final-sync", "p9", t(10), 12));
            events.push(point_at("db/start", "p9", t(10), 13));
            events.extend(run("db/start", 12, 20, StepStatus::Done));
            events.sort_by_key(Event::at);
            events.push(Event::RunFinished {
                at: t(60),
                status: RunStatus::Succeeded,
            });
            let r = build_of(&events);
            r.services.into_iter().find(|s| s.id == "db").unwrap()
        };
        let db = report("db-replica");
        assert_eq!((db.data_loss_s, db.rpo_met), (None, None), "{db:?}");
        assert!(
            db.data_loss_unknown
                .as_deref()
                .is_some_and(|w| w.contains("nothing in the journal shows db stopped")),
            "{db:?}"
        );
        let db = report("db");
        assert_eq!((db.data_loss_s, db.rpo_met), (Some(0.0), Some(true)));
    }

    /// An emergency failover of db while db still ran on the primary (journaled as the run
    /// began), or a run forced past writes its copy lacks: what db wrote after its point is
    /// not in it, and no data loss is claimed, nor the RPO met.
    #[test]
    fn a_vm_started_on_data_that_lacks_writes_made_elsewhere_claims_no_data_loss() {
        let report = |said: Option<Event>| {
            let mut events = vec![db_run(
                Some(t(-120)),
                vec![vm_step("db/start", "start", &[])],
            )];
            events.extend(said);
            events.push(point_at("db/start", "p1", t(-300), 2));
            events.extend(run("db/start", 1, 20, StepStatus::Done));
            events.sort_by_key(Event::at);
            events.push(Event::RunFinished {
                at: t(21),
                status: RunStatus::Succeeded,
            });
            let r = build_of(&events);
            r.services.into_iter().find(|s| s.id == "db").unwrap()
        };
        let db = report(None);
        assert_eq!((db.data_loss_s, db.rpo_met), (Some(180.0), Some(true)));
        for said in [
            Event::OtherSite {
                at: t(0),
                said: vec!["vm db still runs on hv-main".into()],
                step: None,
                refused: false,
                diverged: vec!["db".into()],
                unasked: Vec::new(),
            },
            Event::ReadinessForced {
                at: t(0),
                operator: "nadia".into(),
                problems: vec!["vm db: its disks on hv-main were written since".into()],
                diverged: vec!["db".into()],
            },
        ] {
            let db = report(Some(said));
            assert_eq!((db.data_loss_s, db.rpo_met), (None, None), "{db:?}");
            assert!(
                db.data_loss_unknown
                    .as_deref()
                    .is_some_and(|w| w.contains("writes the point lacks")),
                "{db:?}"
            );
        }
        // Another vm's: db's loss stands.
        let other = report(Some(Event::OtherSite {
            at: t(0),
            said: vec!["vm web still runs on hv-main".into()],
            step: None,
            refused: false,
            diverged: vec!["web".into()],
            unasked: Vec::new(),
        }));
        assert_eq!(other.data_loss_s, Some(180.0));
    }

    /// A planned failover whose final sync's point is dated ten minutes after the run used
    /// it (the replicating machine's clock ahead): after the stop of db by that date, it
    /// would read as "nothing lost" and "RPO met"; its age cannot be told, so no loss is
    /// claimed. Dated a few seconds after its use (clocks a little apart), it counts.
    #[test]
    fn a_point_dated_after_its_use_claims_no_data_loss() {
        let report = |taken: DateTime<Utc>| {
            let steps = vec![
                vm_step("db/stop-primary", "stop", &[]),
                step("db/final-sync", "replicate", &["db/stop-primary"]),
                vm_step("db/start", "start", &["db/final-sync"]),
            ];
            let mut events = vec![db_run(None, steps)];
            events.extend(run("db/stop-primary", 1, 4, StepStatus::Done));
            events.extend(run("db/final-sync", 5, 8, StepStatus::Done));
            events.push(point_at("db/final-sync", "p9", taken, 8));
            events.push(point_at("db/start", "p9", taken, 9));
            events.extend(run("db/start", 9, 20, StepStatus::Done));
            events.push(Event::RunFinished {
                at: t(21),
                status: RunStatus::Succeeded,
            });
            let r = build_of(&events);
            r.services.into_iter().find(|s| s.id == "db").unwrap()
        };
        let db = report(t(600));
        assert_eq!((db.data_loss_s, db.rpo_met), (None, None), "{db:?}");
        assert!(
            db.data_loss_unknown
                .as_deref()
                .is_some_and(|w| w.contains("is dated after the run used it")),
            "{db:?}"
        );
        let db = report(t(10));
        assert_eq!(
            (db.data_loss_s, db.rpo_met),
            (Some(0.0), Some(true)),
            "{db:?}"
        );
    }

    /// An emergency failover that could not ask the primary whether db still ran there:
    /// db may have written there after the run's start, or died long before it. Without an
    /// incident time, no data loss is claimed, nor the RPO met; with one (the operator says
    /// when its writes stopped), the loss runs to it.
    #[test]
    fn a_vm_whose_side_left_could_not_be_asked_claims_no_data_loss_without_an_incident_time() {
        let report = |incident: Option<DateTime<Utc>>, unasked: &str| {
            let mut events = vec![db_run(incident, vec![vm_step("db/start", "start", &[])])];
            events.push(Event::OtherSite {
                at: t(0),
                said: vec!["whether vm db still runs on hv-main could not be asked".into()],
                step: None,
                refused: false,
                diverged: Vec::new(),
                unasked: vec![unasked.into()],
            });
            events.push(point_at("db/start", "p1", t(-300), 2));
            events.extend(run("db/start", 1, 20, StepStatus::Done));
            events.sort_by_key(Event::at);
            events.push(Event::RunFinished {
                at: t(21),
                status: RunStatus::Succeeded,
            });
            let r = build_of(&events);
            r.services.into_iter().find(|s| s.id == "db").unwrap()
        };
        let db = report(None, "db");
        assert_eq!((db.data_loss_s, db.rpo_met), (None, None), "{db:?}");
        assert!(
            db.data_loss_unknown.as_deref().is_some_and(|w| w
                .contains("could not be asked whether it still ran there")
                && w.contains("5m 00s from its point to the run's start")),
            "{db:?}"
        );
        let db = report(Some(t(-120)), "db");
        assert_eq!((db.data_loss_s, db.rpo_met), (Some(180.0), Some(true)));
        // Another vm's: db's loss stands.
        let db = report(None, "web");
        assert_eq!((db.data_loss_s, db.rpo_met), (Some(300.0), Some(true)));
    }

    /// An emergency failover (incident 2 min before the run) whose start of db was cut by a
    /// stop, then resumed from a newer point: the loss is the age of the point db runs from.
    #[test]
    fn the_data_loss_is_that_of_the_point_the_vm_finally_runs_from() {
        let mut events = vec![db_run(
            Some(t(-120)),
            vec![vm_step("db/start", "start", &[])],
        )];
        events.push(Event::StepStarted {
            at: t(1),
            step: "db/start".into(),
            attempt: 1,
            host: Some("hv".into()),
        });
        events.push(point_at("db/start", "p1", t(-3600), 2));
        events.push(Event::RunFinished {
            at: t(3),
            status: RunStatus::Interrupted,
        });
        events.push(Event::RunResumed {
            at: t(10),
            operator: "nadia".into(),
            machine: "laptop".into(),
            points: None,
        });
        let [again, done] = run("db/start", 10, 20, StepStatus::Done);
        events.push(again);
        events.push(point_at("db/start", "p2", t(-600), 11));
        events.push(done);
        events.push(Event::RunFinished {
            at: t(21),
            status: RunStatus::Succeeded,
        });
        let r = build_of(&events);
        let db = &r.services[0];
        assert_eq!(db.status, ServiceStatus::Recovered);
        // From p2 (10 min before the run) to the incident (2 min before it).
        assert_eq!(db.data_loss_s, Some(480.0));
        assert_eq!(db.rpo_met, Some(true));
    }

    #[test]
    fn a_failed_step_blocks_its_dependants_and_the_run_is_partial() {
        let mut events = vec![started(None)];
        events.extend(run("db/start", 0, 5, StepStatus::Failed));
        events.extend(run("db/healthy", 5, 5, StepStatus::Blocked));
        events.extend(run("app/start", 5, 5, StepStatus::Blocked));
        events.push(Event::RunFinished {
            at: t(5),
            status: RunStatus::Partial,
        });
        let r = build_of(&events);
        assert_eq!(r.result, Outcome::PartiallyRecovered);
        let db = r.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!(db.status, ServiceStatus::Failed);
        assert_eq!(db.rto_met, Some(false));
        let app = r.services.iter().find(|s| s.id == "app").unwrap();
        assert_eq!(app.status, ServiceStatus::Blocked);
        assert!(
            r.problems
                .iter()
                .any(|p| matches!(p, Problem::Blocked { service, .. } if service == "app"))
        );
    }

    /// A failover that only checks db (its runbook moves nothing: a service of another site
    /// it depends on) recovered nothing of it: db answered in place, and neither counts as
    /// recovered nor claims an RTO. A restore's checks are its recovery.
    #[test]
    fn a_service_only_checked_answered_in_place_and_is_not_counted_recovered() {
        let report = |mode: Mode| {
            let mut start = db_run(None, vec![step("db/ldap", "check", &[])]);
            if let Event::RunStarted { mode: m, .. } = &mut start {
                *m = mode;
            }
            let mut events = vec![start];
            events.extend(run("db/ldap", 1, 2, StepStatus::Done));
            events.push(Event::RunFinished {
                at: t(3),
                status: RunStatus::Succeeded,
            });
            build_of(&events)
        };
        let r = report(Mode::Failover);
        let db = r.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!(db.status, ServiceStatus::AnsweredInPlace, "{db:?}");
        assert_eq!((db.achieved_rto_s, db.rto_met), (None, None));
        assert_eq!((r.services_recovered, r.services_in_scope), (0, 0));
        let md = render(&r, Format::Md, Lang::En);
        assert!(md.contains("answered in place (not moved)"), "{md}");
        let r = report(Mode::Restore);
        let db = r.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!(db.status, ServiceStatus::Recovered, "{db:?}");
        // A drill that checks a standby and reads its replication lag moved nothing either:
        // never counted recovered, nor counted as the service's last drill.
        let mut start = db_run(
            None,
            vec![
                step("db/lag", "lag", &[]),
                step("db/ldap", "check", &["db/lag"]),
            ],
        );
        if let Event::RunStarted { mode: m, .. } = &mut start {
            *m = Mode::Drill;
        }
        let mut events = vec![start];
        events.extend(run("db/lag", 1, 2, StepStatus::Done));
        events.extend(run("db/ldap", 2, 3, StepStatus::Done));
        events.push(Event::RunFinished {
            at: t(4),
            status: RunStatus::Succeeded,
        });
        let r = build_of(&events);
        let db = r.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!(db.status, ServiceStatus::AnsweredInPlace, "{db:?}");
        assert_eq!((db.achieved_rto_s, db.rto_met), (None, None));
        assert_eq!((r.services_recovered, r.services_in_scope), (0, 0));
    }

    /// A roll-back that could not undo a step of db (its start: the vm's state before could
    /// not be read) leaves db in a state nothing proved: not recovered, nor rolled back.
    #[test]
    fn a_service_whose_undo_failed_is_not_reported_recovered() {
        let mut events = vec![started(None)];
        events.extend(run("db/start", 0, 5, StepStatus::Done));
        events.extend(run("db/healthy", 5, 6, StepStatus::Done));
        let recovered = build_of(&events);
        let db = recovered.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!(db.status, ServiceStatus::Recovered);
        events.push(Event::UndoFinished {
            at: t(9),
            step: "db/start".into(),
            ok: false,
            message: Some("its state before the step was not recorded".into()),
        });
        let r = build_of(&events);
        let db = r.services.iter().find(|s| s.id == "db").unwrap();
        assert_eq!(db.status, ServiceStatus::Failed, "{db:?}");
        assert!(
            db.reason.as_deref().is_some_and(|w| w.contains(
                "db/start: the roll-back could not undo it (its state before the step was not recorded)"
            )),
            "{db:?}"
        );
        assert_ne!(db.rto_met, Some(true));
        assert_eq!(db.rpo_met, None);
        // A run that still ended with every step done never heads its report "recovered".
        events.push(Event::RunFinished {
            at: t(10),
            status: RunStatus::Succeeded,
        });
        let r = build_of(&events);
        assert_eq!(r.result, Outcome::PartiallyRecovered);
    }

    /// A step run again (a resume after a roll-back) is reported as its last attempt ended:
    /// done again after its undo is done, not rolled back; cut while it ran again is not the
    /// earlier attempt's done.
    #[test]
    fn a_step_run_again_is_reported_as_its_last_attempt_ended() {
        let status = |events: &[Event]| {
            build_of(events)
                .timeline
                .iter()
                .find(|s| s.id == "db/start")
                .and_then(|s| s.status)
        };
        let mut events = vec![started(None)];
        events.extend(run("db/start", 0, 5, StepStatus::Done));
        events.push(Event::UndoFinished {
            at: t(6),
            step: "db/start".into(),
            ok: true,
            message: None,
        });
        assert_eq!(status(&events), Some(StepStatus::RolledBack));
        events.extend(run("db/start", 10, 15, StepStatus::Done));
        assert_eq!(status(&events), Some(StepStatus::Done));
        events.push(Event::StepStarted {
            at: t(20),
            step: "db/start".into(),
            attempt: 1,
            host: Some("hv".into()),
        });
        assert_eq!(status(&events), None);
    }

    #[test]
    fn a_journal_cut_short_is_incomplete_and_one_without_a_start_is_refused() {
        let mut events = vec![started(None)];
        events.extend(run("db/start", 0, 5, StepStatus::Done));
        let r = build_of(&events);
        assert_eq!(r.result, Outcome::Incomplete);
        assert_eq!(r.ended_at, None);
        assert_eq!(r.duration_s, Some(5.0));
        let no_start = build(&Input {
            events: &events[1..],
            journal_bytes: b"",
            history: &[],
            lang: Lang::En,
        });
        assert!(matches!(no_start, Err(ReportError::NoStart)));
    }

    #[test]
    fn a_readiness_check_from_the_day_before_or_earlier_is_flagged() {
        let kinds = |age_s: i64| {
            let mut start = started(None);
            if let Event::RunStarted { readiness, .. } = &mut start {
                *readiness = Some(Box::new(Readiness {
                    at: t(-age_s),
                    ready: true,
                    items: Vec::new(),
                }));
            }
            let mut events = vec![start];
            events.extend(run("db/start", 0, 20, StepStatus::Done));
            build_of(&events)
                .recommendations
                .iter()
                .map(|x| x.kind)
                .collect::<Vec<_>>()
        };
        assert!(!kinds(600).contains(&"stale_readiness"));
        assert!(!kinds(600).contains(&"no_readiness"));
        assert!(kinds(3 * 86400).contains(&"stale_readiness"));
    }

    #[test]
    fn drills_older_than_ninety_days_are_flagged() {
        let mut events = vec![started(None)];
        events.extend(run("db/start", 0, 5, StepStatus::Done));
        let old = RunBrief {
            run_id: "old".into(),
            mode: Mode::Drill,
            started_at: t(-100 * 86400),
            status: Some(RunStatus::Succeeded),
        };
        let later = RunBrief {
            run_id: "later".into(),
            mode: Mode::Drill,
            started_at: t(86400),
            status: Some(RunStatus::Succeeded),
        };
        let r = build(&Input {
            events: &events,
            journal_bytes: b"",
            history: &[old.clone(), later],
            lang: Lang::Fr,
        })
        .unwrap();
        let overdue = r
            .recommendations
            .iter()
            .find(|x| x.kind == "drill_overdue")
            .expect("a drill 100 days before is overdue; one after the run does not count");
        assert!(overdue.text.contains("100 jours"), "{}", overdue.text);
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_duration(3.25), "3.2s");
        assert_eq!(human_duration(42.0), "42s");
        assert_eq!(human_duration(245.0), "4m 05s");
        assert_eq!(human_duration(3720.0), "1h 02m");
        assert_eq!(human_duration(90000.0), "1d 01h");
        assert_eq!(human_duration(-1.0), "0.0s");
    }
}
