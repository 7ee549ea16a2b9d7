//! What the operator sees during a run: one line per step that starts, finishes or waits, with
//! the elapsed time against the service's RTO target, and a live progress bar on a terminal
//! (none when output is not a terminal). A consumer of runner events; it decides nothing.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use crate::duration::Duration;
use crate::event::{Event, RunStatus, StepStatus};
use std::path::PathBuf;

use crate::inventory::Inventory;
use crate::journal::RunDir;
use crate::runner::{Sink, Unrecorded};

pub struct TerminalView {
    began: Instant,
    /// What a service's time to recover runs from (the incident, else the run's start), as
    /// the report measures it: a resumed run's recovery began before this process.
    measured_from: Option<chrono::DateTime<chrono::Utc>>,
    rto: HashMap<String, Duration>,
    total: usize,
    done: usize,
    bar: Option<ProgressBar>,
    out: Box<dyn Write + Send>,
    run_id: String,
    prompter: Option<std::sync::mpsc::Sender<(String, String)>>,
}

impl TerminalView {
    /// A view of runs over `inventory` (for each service's RTO target). `run_id` is known for
    /// a resumed run; a new run's comes with its first event.
    pub fn new(inventory: &Inventory, run_id: Option<&str>) -> Self {
        TerminalView {
            began: Instant::now(),
            measured_from: None,
            rto: inventory
                .services
                .values()
                .map(|s| (s.id.clone(), s.rto))
                .collect(),
            total: 0,
            done: 0,
            bar: None,
            out: Box::new(std::io::stdout()),
            run_id: run_id.unwrap_or_default().to_string(),
            prompter: None,
        }
    }

    /// Asks on the terminal for the confirmation of manual steps (who, and a note), one at a
    /// time; `reprise confirm` from another shell works all the same.
    pub fn prompt_on_terminal(&mut self, state_dir: PathBuf) {
        let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            for (run_id, step) in rx {
                let Ok(dir) = RunDir::open(&state_dir, &run_id) else {
                    continue;
                };
                if dir.confirmation(&step).is_some() {
                    continue;
                }
                eprint!("confirm {step}: your name (empty: wait for `reprise confirm`): ");
                let mut name = String::new();
                if stdin.read_line(&mut name).unwrap_or(0) == 0 {
                    return;
                }
                let name = name.trim();
                if name.is_empty() {
                    continue;
                }
                eprint!("note (optional): ");
                let mut note = String::new();
                let _ = stdin.read_line(&mut note);
                let note = Some(note.trim().to_string()).filter(|n| !n.is_empty());
                // As `reprise confirm` records it: only while the step still waits (someone
                // may have confirmed it from another shell meanwhile), for that wait.
                if let Err(e) = crate::run::confirm(&state_dir, &run_id, &step, name, note) {
                    eprintln!("the confirmation was not recorded: {e}");
                }
            }
        });
        self.prompter = Some(tx);
    }

    fn start_bar(&mut self, total: usize) {
        self.total = total;
        if std::io::stderr().is_terminal() && self.prompter.is_none() {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:30}] {pos}/{len} steps {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            self.bar = Some(bar);
        }
    }

    fn line(&mut self, text: String) {
        // What hosts and the operator said is shown, never obeyed by the terminal.
        let text = crate::diagnostic::terminal_text(&text).into_owned();
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(self.out, "{text}");
            }
        }
    }

    fn clock(&self) -> String {
        let s = self.began.elapsed().as_secs();
        format!("{:02}:{:02}:{:02}", s / 3600, (s % 3600) / 60, s % 60)
    }

    fn against_rto(&self, step: &str) -> String {
        let service = step.split('/').next().unwrap_or(step);
        let spent = match self.measured_from {
            Some(from) => (chrono::Utc::now() - from).num_seconds().max(0) as u64,
            None => self.began.elapsed().as_secs(),
        };
        match self.rto.get(service) {
            Some(rto) => format!(" [{} of RTO {rto}]", Duration(spent)),
            None => String::new(),
        }
    }

    /// Measures each service's time against its RTO from where the run's journal says its
    /// recovery began (a resumed run's: its incident, else its first start).
    pub fn measure_from_journal(&mut self, events: &[Event]) {
        self.measured_from = events.iter().find_map(|e| match e {
            Event::RunStarted {
                at, incident_at, ..
            } => Some(incident_at.unwrap_or(*at)),
            _ => None,
        });
    }
}

impl TerminalView {
    /// A run begins: the progress bar over its steps, and who started what.
    fn run_started(
        &mut self,
        clock: &str,
        run_id: &str,
        mode: String,
        operator: &str,
        steps: usize,
    ) {
        self.run_id = run_id.to_string();
        self.start_bar(steps);
        self.line(format!(
            "{clock} run {run_id}: {mode} started by {operator}, {steps} steps"
        ));
    }

    /// A step ends: its mark, status, duration and why; a step done is measured against its
    /// service's RTO.
    fn step_finished(
        &mut self,
        clock: &str,
        step: &str,
        status: StepStatus,
        duration_ms: u64,
        message: Option<&str>,
    ) {
        let mark = match status {
            StepStatus::Done => "✔",
            StepStatus::Blocked | StepStatus::Cancelled => "·",
            StepStatus::RolledBack => "↶",
            _ => "✘",
        };
        let why = message.map(|m| format!(": {m}")).unwrap_or_default();
        let rto = if status == StepStatus::Done {
            self.against_rto(step)
        } else {
            String::new()
        };
        self.line(format!(
            "{clock} {mark} {step} {status:?} in {:.1}s{why}{rto}",
            duration_ms as f64 / 1000.0
        ));
        self.done += 1;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done as u64);
        }
    }

    /// A manual step waits: its instructions, how to confirm it, and the prompt when there
    /// is one.
    fn waiting(&mut self, clock: &str, step: &str, instructions: &str) {
        self.line(format!(
            "{clock} ⏸ {step} waits for a person:\n    {}\n    confirm with: reprise confirm {} {step} --by NAME [--note TEXT]",
            instructions.replace('\n', "\n    "),
            self.run_id
        ));
        if let Some(p) = &self.prompter {
            let _ = p.send((self.run_id.clone(), step.to_string()));
        }
    }

    /// The run ends: the bar cleared, the outcome and the time it took.
    fn run_finished(&mut self, clock: &str, status: RunStatus) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let word = match status {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Partial => "finished with failures (see above)",
            RunStatus::Failed => "FAILED",
            RunStatus::Interrupted => "was interrupted; `reprise resume` carries on",
        };
        let s = self.began.elapsed().as_secs();
        self.line(format!(
            "{clock} run {} {word} after {}",
            self.run_id,
            Duration(s)
        ));
    }

    /// The line (after the clock) of an event that changes nothing in the view; `None` for
    /// an event not shown.
    fn said(&self, event: &Event) -> Option<String> {
        let text = match event {
            Event::RunResumed { operator, .. } => {
                format!("run {} resumed by {operator}", self.run_id)
            }
            Event::SplitBrain { vm, hosts, .. } => {
                format!("⚠ SPLIT BRAIN: vm {vm} runs on {}", hosts.join(" and on "))
            }
            Event::ReadinessForced { problems, .. } => format!(
                "forced (--force) past {} blocking problem{} of the readiness check: {}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems.join("; ")
            ),
            Event::OtherSite {
                said, step: None, ..
            } => format!("the other site: {}", said.join("; ")),
            Event::OtherSite {
                said,
                step: Some(step),
                ..
            } => format!("{step}: the other site: {}", said.join("; ")),
            Event::StopRequested { reason, .. } => format!(
                "{reason}: stopping (no new steps; running ones finish; a drill's cleanup runs)"
            ),
            Event::JournalRepaired {
                line,
                bytes,
                kept_in,
                ..
            } => format!(
                "the journal's last line ({line}, {bytes} bytes) was cut short by a crash: cut off, kept in {kept_in}"
            ),
            Event::ReplicaPointUsed {
                item, point, note, ..
            } => {
                let why = note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default();
                format!("⎘ {item} from point {point}{why}")
            }
            Event::LagMeasured {
                service,
                lag_s,
                unknown,
                rpo_target_s,
                ..
            } => lag_line(service, *lag_s, unknown.as_deref(), *rpo_target_s),
            Event::StepStarted {
                step,
                attempt,
                host,
                ..
            } => {
                let on = host
                    .as_deref()
                    .map(|h| format!(" on {h}"))
                    .unwrap_or_default();
                let again = if *attempt > 1 {
                    format!(" (attempt {attempt})")
                } else {
                    String::new()
                };
                format!("▶ {step}{on}{again}")
            }
            Event::Confirmed { step, by, note, .. } => {
                let note = note
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                format!("✔ {step} confirmed by {by}{note}")
            }
            Event::UndoFinished {
                step, ok, message, ..
            } => {
                let why = message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                let word = if *ok { "undone" } else { "undo FAILED" };
                format!("↶ {step} {word}{why}")
            }
            Event::RunStarted { .. }
            | Event::StepFinished { .. }
            | Event::WaitingForOperator { .. }
            | Event::RunFinished { .. }
            | Event::VmStateBefore { .. }
            | Event::SourceRead { .. }
            | Event::StepOutput { .. } => return None,
        };
        Some(text)
    }
}

/// A lag measured, judged against the service's RPO.
fn lag_line(
    service: &str,
    lag_s: Option<f64>,
    unknown: Option<&str>,
    rpo_s: Option<u64>,
) -> String {
    let reading = match (lag_s, unknown) {
        (Some(s), None) => crate::lag::Reading::Seconds(s),
        (_, why) => crate::lag::Reading::Unknown(why.unwrap_or("not recorded").to_string()),
    };
    let (_, words) = crate::lag::judge(&reading, rpo_s.map(crate::duration::Duration));
    format!("⧖ {service}: {words}")
}

impl Sink for TerminalView {
    fn emit(&mut self, event: &Event) -> Result<(), Unrecorded> {
        let clock = self.clock();
        match event {
            Event::RunStarted {
                at,
                run_id,
                mode,
                emergency,
                operator,
                steps,
                incident_at,
                ..
            } => {
                self.measured_from.get_or_insert(incident_at.unwrap_or(*at));
                let mode = if *emergency {
                    "emergency failover".to_string()
                } else {
                    mode.to_string()
                };
                self.run_started(&clock, run_id, mode, operator, steps.len());
            }
            Event::StepFinished {
                step,
                status,
                duration_ms,
                message,
                ..
            } => self.step_finished(&clock, step, *status, *duration_ms, message.as_deref()),
            Event::WaitingForOperator {
                step, instructions, ..
            } => self.waiting(&clock, step, instructions),
            Event::RunFinished { status, .. } => self.run_finished(&clock, *status),
            // Kept in the journal, not shown.
            Event::VmStateBefore { .. } | Event::SourceRead { .. } | Event::StepOutput { .. } => {}
            other => {
                if let Some(text) = self.said(other) {
                    self.line(format!("{clock} {text}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A run resumed three hours into an outage shows each service's time against its RTO
    /// from the incident its journal names, as the report measures it, not from the resume.
    #[test]
    fn a_resumed_run_s_time_against_its_rto_runs_from_its_incident() {
        let sources = crate::sources::Sources::read(
            std::path::Path::new("inventory"),
            std::path::Path::new("runbooks"),
        )
        .unwrap();
        let (model, _) = crate::plan::validate::load(sources).unwrap();
        let shown = |journal: &[Event]| {
            let out = Arc::new(Mutex::new(Vec::new()));
            let mut view = TerminalView::new(&model.inventory, Some("r1"));
            view.out = Box::new(Shared(out.clone()));
            view.measure_from_journal(journal);
            view.emit(&Event::StepFinished {
                at: chrono::Utc::now(),
                step: "erp-db/start".into(),
                attempt: 1,
                status: crate::event::StepStatus::Done,
                duration_ms: 1000,
                message: None,
            })
            .unwrap();
            String::from_utf8(out.lock().unwrap().clone()).unwrap()
        };
        let three_hours_ago = chrono::Utc::now() - chrono::Duration::hours(3);
        let started = Event::RunStarted {
            at: three_hours_ago + chrono::Duration::minutes(10),
            run_id: "r1".into(),
            mode: crate::runbook::Mode::Failover,
            emergency: true,
            services: Vec::new(),
            only: false,
            operator: "karim".into(),
            machine: "laptop".into(),
            version: "0".into(),
            sources_digest: "x".into(),
            steps: Vec::new(),
            sites: Vec::new(),
            incident_at: Some(three_hours_ago),
            plan: None,
            readiness: None,
            points: None,
        };
        let line = shown(std::slice::from_ref(&started));
        assert!(line.contains("[3h of RTO 4h]"), "{line}");
        // With no journal to read, from this process's start.
        let line = shown(&[]);
        assert!(line.contains("[0s of RTO 4h]"), "{line}");
    }
}
