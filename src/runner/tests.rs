use super::*;
use crate::duration::Duration;
use crate::journal::Confirmation;
use crate::plan::Action;
use crate::plan::{Estimate, PlannedStep, Selection};
use crate::ssh::{ExecOutput, Transport};
use crate::ssh::{PipeOutput, SshError};
use crate::template::Command;
use exec::LATE;
use std::sync::Mutex;
use tokio::time::Instant;

/// A transport that records calls and answers from a script: commands containing `fail`
/// exit 1, `flaky:N` fails until its Nth call.
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<(String, String)>>,
    running: Mutex<HashMap<String, usize>>,
    max_per_host: Mutex<usize>,
    hold: StdDuration,
}

impl Transport for Fake {
    fn pipe(
        &self,
        from: &str,
        _r: &str,
        to: &str,
        _w: &str,
        _d: StdDuration,
    ) -> Result<PipeOutput, SshError> {
        self.pipe_impl(from, to)
    }

    fn exec(
        &self,
        host: &str,
        command: &str,
        _deadline: StdDuration,
    ) -> Result<ExecOutput, SshError> {
        {
            let mut r = self.running.lock().unwrap();
            let n = r.entry(host.to_string()).or_default();
            *n += 1;
            let mut m = self.max_per_host.lock().unwrap();
            *m = (*m).max(*n);
        }
        std::thread::sleep(self.hold);
        let count = {
            let mut calls = self.calls.lock().unwrap();
            calls.push((host.to_string(), command.to_string()));
            calls.iter().filter(|(_, c)| c == command).count()
        };
        *self.running.lock().unwrap().get_mut(host).unwrap() -= 1;
        if command.contains("changed-key") {
            return Err(SshError::ChangedHostKey {
                host: host.to_string(),
                endpoint: "127.0.0.1:22".into(),
                known: "SHA256:old".into(),
                offered: "SHA256:new".into(),
                known_hosts: "known_hosts".into(),
            });
        }
        if command.contains("unreachable") {
            return Err(SshError::Hung {
                host: host.to_string(),
                secs: 2,
            });
        }
        if let Some(said) = command.split("says:").nth(1) {
            // `says:A then:B`: A the first time, B after.
            let said = match said.split_once(" then:") {
                Some((first, _)) if count == 1 => first,
                Some((_, then)) => then,
                None => said,
            };
            // Nothing to say, or an error: the command failed.
            return Ok(ExecOutput {
                exit_code: match said {
                    "not defined" => 2,
                    _ => i32::from(said.is_empty() || said.starts_with("error: ")),
                },
                stdout: format!("{said}\n"),
                stderr: String::new(),
                truncated: false,
                timed_out: false,
                duration: StdDuration::ZERO,
            });
        }
        let code = if command.contains("fail") {
            1
        } else if let Some(n) = command.split("flaky:").nth(1) {
            let n: usize = n.trim().parse().unwrap();
            if count < n { 1 } else { 0 }
        } else {
            0
        };
        Ok(ExecOutput {
            exit_code: code,
            stdout: format!("ran {command}"),
            stderr: String::new(),
            truncated: false,
            timed_out: false,
            duration: StdDuration::ZERO,
        })
    }
}

impl Fake {
    fn pipe_impl(&self, from: &str, to: &str) -> Result<PipeOutput, SshError> {
        self.calls
            .lock()
            .unwrap()
            .push((format!("{from}->{to}"), "pipe".into()));
        Ok(PipeOutput {
            bytes: 1,
            read_exit: 0,
            write_exit: 0,
            write_failed_first: false,
            stderr: String::new(),
            output: String::new(),
            duration: StdDuration::ZERO,
        })
    }

    fn commands(&self) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(_, c)| c.clone())
            .collect()
    }
}

struct Confirm(Mutex<u32>);
impl Confirmations for Confirm {
    fn confirmation(&self, _step: &str) -> Option<Confirmation> {
        let mut n = self.0.lock().unwrap();
        *n += 1;
        (*n >= 3).then(|| Confirmation {
            by: "sofia".into(),
            note: None,
            at: Utc::now(),
            asked: None,
        })
    }
}

#[derive(Default)]
struct Collect(Vec<Event>);
impl Sink for Collect {
    fn emit(&mut self, event: &Event) -> Result<(), Unrecorded> {
        self.0.push(event.clone());
        Ok(())
    }
}

impl Collect {
    fn status(&self, step: &str) -> Option<StepStatus> {
        self.0.iter().rev().find_map(|e| match e {
            Event::StepFinished {
                step: s, status, ..
            } if s == step => Some(*status),
            _ => None,
        })
    }
}

fn exec_step(id: &str, host: &str, after: &[&str], run: &str) -> PlannedStep {
    PlannedStep {
        id: id.into(),
        service: id.split('/').next().unwrap().into(),
        step: id.split('/').nth(1).unwrap().into(),
        host: Some(host.into()),
        target: None,
        site: None,
        kind: "exec",
        action: None,
        command: run.into(),
        verify: None,
        undo: None,
        description: None,
        timeout_s: Some(60),
        expected_s: 60,
        retries: 0,
        idempotent: false,
        needs_primary: false,
        phase: Phase::Main,
        after: after.iter().map(|s| s.to_string()).collect(),
        est_start_s: 0,
        est_finish_s: 0,
        critical: false,
        action_spec: Action::Exec {
            run: Command::text(run),
            verify: None,
            undo: Some(Command::text(format!("undo {run}"))),
        },
        replica: None,
        state_before: None,
        undo_stops: false,
        vm: None,
    }
}

fn plan(mode: Mode, emergency: bool, steps: Vec<PlannedStep>) -> Arc<Plan> {
    Arc::new(Plan {
        mode,
        emergency,
        run_id: "t".into(),
        selection: Selection {
            requested: vec![],
            only: false,
            pulled_in: vec![],
            assumed_running: vec![],
        },
        services: vec![],
        steps,
        left_out: vec![],
        not_covered: vec![],
        estimate: Estimate {
            total: Duration(0),
            critical_path: vec![],
        },
        warnings: vec![],
    })
}

fn go(
    plan: Arc<Plan>,
    fake: Arc<Fake>,
    prior: HashMap<String, Prior>,
    options: RunOptions,
) -> (RunStatus, Collect) {
    let ctx = RunContext {
        plan,
        transport: fake,
        confirmations: Arc::new(Confirm(Mutex::new(0))),
        secrets: Arc::new(|n| (n == "PW").then(|| "hunter2".to_string())),
        options,
        prior,
        other_site: None,
        copied: Default::default(),
    };
    let mut sink = Collect::default();
    let status = run(ctx, &mut sink, Shutdown::manual());
    (status, sink)
}

fn diamond() -> Vec<PlannedStep> {
    vec![
        exec_step("a/1", "h1", &[], "a1"),
        exec_step("b/1", "h2", &["a/1"], "b1"),
        exec_step("c/1", "h3", &["a/1"], "c1"),
        exec_step("d/1", "h1", &["b/1", "c/1"], "d1"),
    ]
}

#[test]
fn steps_run_after_what_they_wait_for() {
    let fake = Arc::new(Fake::default());
    let (status, events) = go(
        plan(Mode::Restore, false, diamond()),
        fake.clone(),
        HashMap::new(),
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Succeeded);
    let cmds = fake.commands();
    assert_eq!(cmds.first().unwrap(), "a1");
    assert_eq!(cmds.last().unwrap(), "d1");
    assert_eq!(cmds.len(), 4);
    assert!(matches!(
        events.0.last(),
        Some(Event::RunFinished {
            status: RunStatus::Succeeded,
            ..
        })
    ));
}

#[test]
fn per_host_limit_is_respected() {
    let steps: Vec<PlannedStep> = (0..6)
        .map(|i| exec_step(&format!("s{i}/x"), "h1", &[], &format!("c{i}")))
        .collect();
    let fake = Arc::new(Fake {
        hold: StdDuration::from_millis(30),
        ..Fake::default()
    });
    let options = RunOptions {
        per_host: 2,
        ..RunOptions::default()
    };
    let (status, _) = go(
        plan(Mode::Restore, false, steps),
        fake.clone(),
        HashMap::new(),
        options,
    );
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(*fake.max_per_host.lock().unwrap(), 2);
}

#[test]
fn planned_failover_stops_and_undoes_in_reverse_order() {
    let mut steps = diamond();
    steps[2] = exec_step("c/1", "h3", &["b/1"], "c1 fail");
    let fake = Arc::new(Fake::default());
    let (status, events) = go(
        plan(Mode::Failover, false, steps),
        fake.clone(),
        HashMap::new(),
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(
        fake.commands(),
        ["a1", "b1", "c1 fail", "undo b1", "undo a1"]
    );
    assert_eq!(events.status("c/1"), Some(StepStatus::Failed));
    assert_eq!(events.status("d/1"), Some(StepStatus::Blocked));
    let undone: Vec<&str> = events
        .0
        .iter()
        .filter_map(|e| match e {
            Event::UndoFinished { step, ok: true, .. } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(undone, ["b/1", "a/1"]);
}

/// The same failover resumed after its first step was done (a cut, then `reprise resume`):
/// the roll-back of the resumed run undoes what the first attempt did too, after what it
/// did itself, never only the steps of its last attempt.
#[test]
fn a_resumed_failover_rolls_back_what_its_earlier_attempt_did_too() {
    let mut steps = diamond();
    steps[2] = exec_step("c/1", "h3", &["b/1"], "c1 fail");
    let fake = Arc::new(Fake::default());
    let prior: HashMap<String, Prior> = [("a/1".to_string(), Prior::Done)].into();
    let (status, events) = go(
        plan(Mode::Failover, false, steps),
        fake.clone(),
        prior,
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(fake.commands(), ["b1", "c1 fail", "undo b1", "undo a1"]);
    let undone: Vec<&str> = events
        .0
        .iter()
        .filter_map(|e| match e {
            Event::UndoFinished { step, ok: true, .. } => Some(step.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(undone, ["b/1", "a/1"]);
}

/// The same with a vm start done by the earlier attempt: its roll-back goes by what that
/// attempt found before it (journaled, handed over by the resume): stopped before, it is
/// stopped again; running before, it is left running.
#[test]
fn a_resumed_roll_back_undoes_an_earlier_attempt_s_start_by_what_it_found_before() {
    let start = || {
        let mut s = exec_step("a/1", "h1", &[], "start a/1");
        s.action_spec = Action::Exec {
            run: Command::text("start a/1"),
            verify: None,
            undo: Some(Command::text("stop a/1")),
        };
        s.undo = Some("stop a/1".into());
        s.state_before = Some(Command::text("status a says:shut off"));
        s.undo_stops = true;
        s
    };
    for (before, stopped) in [(Some(false), true), (Some(true), false)] {
        let steps = vec![start(), exec_step("d/1", "h1", &["a/1"], "d1 fail")];
        let fake = Arc::new(Fake::default());
        let prior: HashMap<String, Prior> = [("a/1".to_string(), Prior::Done)].into();
        let options = RunOptions {
            running_before: [("a/1".to_string(), before)].into(),
            ..RunOptions::default()
        };
        let (status, _) = go(
            plan(Mode::Failover, false, steps),
            fake.clone(),
            prior,
            options,
        );
        assert_eq!(status, RunStatus::Failed);
        assert_eq!(
            fake.commands().iter().any(|c| c == "stop a/1"),
            stopped,
            "{before:?}: {:?}",
            fake.commands()
        );
    }
}

/// A start whose undo is the runbook's own (not its driver's stop) is undone by it whatever
/// its driver's `status` told before it: the state asked for the start's own checks does
/// not change what the runbook says to do.
#[test]
fn a_runbook_s_own_undo_of_a_start_runs_whatever_was_running_before() {
    let mut s = exec_step("a/1", "h1", &[], "start a/1");
    s.action_spec = Action::Exec {
        run: Command::text("start a/1"),
        verify: None,
        undo: Some(Command::text("own-undo a/1")),
    };
    s.undo = Some("own-undo a/1".into());
    s.state_before = Some(Command::text("status a says:running"));
    let steps = vec![s, exec_step("d/1", "h1", &["a/1"], "d1 fail")];
    let fake = Arc::new(Fake::default());
    let (status, _) = go(
        plan(Mode::Failover, false, steps),
        fake.clone(),
        HashMap::new(),
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Failed);
    assert!(
        fake.commands().iter().any(|c| c == "own-undo a/1"),
        "{:?}",
        fake.commands()
    );
}

/// A start undone stops the vm only if it was not running before the step: the state its
/// driver's `status` told just before, journaled.
#[test]
fn a_start_is_undone_only_for_a_vm_that_was_not_running_before() {
    let start = |id: &str, after: &[&str], status: &str| {
        let mut s = exec_step(id, "h1", after, &format!("start {id}"));
        s.action_spec = Action::Exec {
            run: Command::text(format!("start {id}")),
            verify: None,
            undo: Some(Command::text(format!("stop {id}"))),
        };
        s.undo = Some(format!("stop {id}"));
        s.state_before = Some(Command::text(status));
        s.undo_stops = true;
        s
    };
    let steps = vec![
        start("a/1", &[], "status a says:running"),
        start("b/1", &["a/1"], "status b says:shut off"),
        start("c/1", &["b/1"], "status c unreachable"),
        exec_step("d/1", "h1", &["c/1"], "d1 fail"),
    ];
    let fake = Arc::new(Fake::default());
    let (status, events) = go(
        plan(Mode::Failover, false, steps),
        fake.clone(),
        HashMap::new(),
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Failed);
    let stops: Vec<String> = fake
        .commands()
        .into_iter()
        .filter(|c| c.starts_with("stop"))
        .collect();
    assert_eq!(stops, ["stop b/1"]);
    let before: Vec<(&str, Option<bool>)> = events
        .0
        .iter()
        .filter_map(|e| match e {
            Event::VmStateBefore { step, running, .. } => Some((step.as_str(), *running)),
            _ => None,
        })
        .collect();
    assert_eq!(
        before,
        [("a/1", Some(true)), ("b/1", Some(false)), ("c/1", None)]
    );
    let undone: Vec<(&str, bool, String)> = events
        .0
        .iter()
        .filter_map(|e| match e {
            Event::UndoFinished {
                step, ok, message, ..
            } => Some((step.as_str(), *ok, message.clone().unwrap_or_default())),
            _ => None,
        })
        .collect();
    assert_eq!(undone.len(), 3, "{undone:?}");
    assert_eq!(undone[0].0, "c/1");
    assert!(
        !undone[0].1 && undone[0].2.contains("could not be told"),
        "{undone:?}"
    );
    assert_eq!((undone[1].0, undone[1].1), ("b/1", true));
    assert_eq!(undone[2].0, "a/1");
    assert!(
        undone[2].1 && undone[2].2.contains("already running"),
        "{undone:?}"
    );
}

#[test]
fn no_rollback_leaves_completed_steps() {
    let mut steps = diamond();
    steps[1] = exec_step("b/1", "h2", &["a/1"], "b1 fail");
    let fake = Arc::new(Fake::default());
    let options = RunOptions {
        rollback: false,
        ..RunOptions::default()
    };
    let (status, _) = go(
        plan(Mode::Failback, false, steps),
        fake.clone(),
        HashMap::new(),
        options,
    );
    assert_eq!(status, RunStatus::Failed);
    assert!(!fake.commands().iter().any(|c| c.starts_with("undo")));
}

#[test]
fn emergency_keeps_going_on_independent_branches() {
    let mut steps = diamond();
    steps[1] = exec_step("b/1", "h2", &["a/1"], "b1 fail");
    steps.push(exec_step("e/1", "h4", &["c/1"], "e1"));
    let fake = Arc::new(Fake::default());
    let (status, events) = go(
        plan(Mode::Failover, true, steps),
        fake.clone(),
        HashMap::new(),
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Partial);
    assert!(fake.commands().contains(&"e1".to_string()));
    assert_eq!(events.status("d/1"), Some(StepStatus::Blocked));
    assert_eq!(events.status("e/1"), Some(StepStatus::Done));
    assert!(!fake.commands().iter().any(|c| c.starts_with("undo")));
}

#[tokio::test(start_paused = true)]
async fn retries_with_backoff_until_success() {
    let mut step = exec_step("a/1", "h1", &[], "flaky:3");
    step.retries = 2;
    let fake = Arc::new(Fake::default());
    let ctx = RunContext {
        plan: plan(Mode::Restore, false, vec![step]),
        transport: fake.clone(),
        confirmations: Arc::new(Confirm(Mutex::new(0))),
        secrets: env_secrets(),
        options: RunOptions::default(),
        prior: HashMap::new(),
        other_site: None,
        copied: Default::default(),
    };
    let mut sink = Collect::default();
    let status = execute(ctx, &mut sink, Shutdown::manual()).await;
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(fake.commands().len(), 3);
    assert!(matches!(
        sink.0
            .iter()
            .rev()
            .find(|e| matches!(e, Event::StepFinished { .. })),
        Some(Event::StepFinished { attempt: 3, .. })
    ));
}

#[test]
fn verify_decides_whether_a_step_is_done() {
    let mut step = exec_step("a/1", "h1", &[], "start");
    step.action_spec = Action::Exec {
        run: Command::text("start"),
        verify: Some(Command::text("check fail")),
        undo: None,
    };
    let (status, events) = go(
        plan(Mode::Restore, false, vec![step]),
        Arc::new(Fake::default()),
        HashMap::new(),
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(events.status("a/1"), Some(StepStatus::Failed));
}

#[test]
fn manual_steps_wait_for_a_confirmation_and_record_it() {
    let mut step = exec_step("power/generators", "h1", &[], "");
    step.host = None;
    step.action_spec = Action::Manual {
        instructions: "Connect the generators".into(),
    };
    let options = RunOptions {
        confirmation_poll: StdDuration::from_millis(5),
        ..RunOptions::default()
    };
    let (status, events) = go(
        plan(Mode::Restore, false, vec![step]),
        Arc::new(Fake::default()),
        HashMap::new(),
        options,
    );
    assert_eq!(status, RunStatus::Succeeded);
    assert!(
        events
            .0
            .iter()
            .any(|e| matches!(e, Event::WaitingForOperator { .. }))
    );
    assert!(
        events
            .0
            .iter()
            .any(|e| matches!(e, Event::Confirmed { by, .. } if by == "sofia"))
    );
}

/// A confirmation answers one wait: the same step waiting again (run again after a
/// roll-back made it stale, or handed to a person again) waits for a new one, never passed by
/// the confirmation it already took.
#[test]
fn a_confirmation_answers_one_wait_only() {
    let state = tempfile::tempdir().unwrap();
    let dir = Arc::new(crate::journal::RunDir::create(state.path(), "r1").unwrap());
    let mut step = exec_step("directory/roles", "h1", &[], "");
    step.host = None;
    step.timeout_s = Some(1);
    step.action_spec = Action::Manual {
        instructions: "Seize the FSMO roles on dc-pra".into(),
    };
    let once = |dir: &Arc<crate::journal::RunDir>| {
        let ctx = RunContext {
            plan: plan(Mode::Failover, false, vec![step.clone()]),
            transport: Arc::new(Fake::default()),
            confirmations: dir.clone(),
            secrets: env_secrets(),
            options: RunOptions {
                confirmation_poll: StdDuration::from_millis(5),
                ..RunOptions::default()
            },
            prior: HashMap::new(),
            other_site: None,
            copied: Default::default(),
        };
        let mut sink = Collect::default();
        let status = run(ctx, &mut sink, Shutdown::manual());
        (status, sink)
    };
    let confirm = |by: &str| {
        let c = Confirmation {
            by: by.into(),
            note: None,
            at: Utc::now(),
            asked: None,
        };
        dir.confirm("directory/roles", &c).unwrap();
    };
    confirm("alice");
    let (status, events) = once(&dir);
    assert_eq!(status, RunStatus::Succeeded);
    assert!(
        events
            .0
            .iter()
            .any(|e| matches!(e, Event::Confirmed { by, .. } if by == "alice"))
    );
    // The step waits again: alice's confirmation was for the wait before.
    let (status, events) = once(&dir);
    assert_eq!(events.status("directory/roles"), Some(StepStatus::TimedOut));
    assert_ne!(status, RunStatus::Succeeded);
    assert!(
        !events
            .0
            .iter()
            .any(|e| matches!(e, Event::Confirmed { .. }))
    );
    // One written for an earlier wait (in the moment the run took that wait's answer) is
    // taken and dropped: it answers no one.
    let stale = Confirmation {
        by: "mallory".into(),
        note: None,
        at: Utc::now(),
        asked: Some(Utc::now() - chrono::Duration::hours(1)),
    };
    dir.confirm("directory/roles", &stale).unwrap();
    let (_, events) = once(&dir);
    assert_eq!(events.status("directory/roles"), Some(StepStatus::TimedOut));
    assert!(
        !events
            .0
            .iter()
            .any(|e| matches!(e, Event::Confirmed { .. }))
    );
    // A new confirmation answers the new wait.
    assert_eq!(dir.confirmation("directory/roles"), None);
    confirm("bob");
    let (status, events) = once(&dir);
    assert_eq!(status, RunStatus::Succeeded);
    assert!(
        events
            .0
            .iter()
            .any(|e| matches!(e, Event::Confirmed { by, .. } if by == "bob"))
    );
}

/// A transport that writes each command it runs into a shared record, runs it after
/// `hold`, and answers as `Fake` would (or stays silent past its deadline for `frozen`).
struct Recorder {
    record: Arc<Mutex<Vec<String>>>,
    hold: StdDuration,
}

impl Transport for Recorder {
    fn exec(
        &self,
        _host: &str,
        command: &str,
        deadline: StdDuration,
    ) -> Result<ExecOutput, SshError> {
        self.record.lock().unwrap().push(format!("ran {command}"));
        if command.contains("frozen") {
            // A transport that does not keep its deadline (a call stuck in a library).
            std::thread::sleep(deadline + StdDuration::from_secs(60));
        } else if command.contains("hung") {
            // A host that never answers: the transport gives up at the deadline.
            std::thread::sleep(deadline);
            return Err(SshError::Hung {
                host: "h1".into(),
                secs: deadline.as_secs(),
            });
        }
        std::thread::sleep(self.hold);
        self.record.lock().unwrap().push(format!("ended {command}"));
        Ok(ExecOutput {
            exit_code: 0,
            stdout: String::new(),
            stderr: String::new(),
            truncated: false,
            timed_out: false,
            duration: StdDuration::ZERO,
        })
    }

    fn pipe(
        &self,
        from: &str,
        _r: &str,
        _to: &str,
        _w: &str,
        _d: StdDuration,
    ) -> Result<PipeOutput, SshError> {
        Err(SshError::UnknownHost(from.into()))
    }
}

/// A journal that takes its time to flush a step's start, and may stop recording.
struct SlowJournal {
    record: Arc<Mutex<Vec<String>>>,
    events: Vec<Event>,
    /// Fails from the first `step_finished` on, as a full disk would.
    fail_at_first_finish: bool,
    failed: bool,
}

impl Sink for SlowJournal {
    fn emit(&mut self, event: &Event) -> Result<(), Unrecorded> {
        if self.fail_at_first_finish && matches!(event, Event::StepFinished { .. }) {
            self.failed = true;
        }
        if self.failed {
            self.record.lock().unwrap().push(match event {
                Event::StepFinished { step, .. } => format!("unrecorded end of {step}"),
                _ => "unrecorded".into(),
            });
            return Err(Unrecorded("no space left on device".into()));
        }
        if let Event::StepStarted { step, .. } = event {
            std::thread::sleep(StdDuration::from_millis(50));
            self.record.lock().unwrap().push(format!("recorded {step}"));
        }
        self.events.push(event.clone());
        Ok(())
    }
}

fn recorded_run(
    steps: Vec<PlannedStep>,
    mode: Mode,
    fail_at_first_finish: bool,
) -> (RunStatus, Vec<String>, Vec<Event>) {
    let record = Arc::new(Mutex::new(Vec::new()));
    let ctx = RunContext {
        plan: plan(mode, false, steps),
        transport: Arc::new(Recorder {
            record: record.clone(),
            hold: StdDuration::from_millis(100),
        }),
        confirmations: Arc::new(Confirm(Mutex::new(0))),
        secrets: env_secrets(),
        options: RunOptions::default(),
        prior: HashMap::new(),
        other_site: None,
        copied: Default::default(),
    };
    let mut journal = SlowJournal {
        record: record.clone(),
        events: Vec::new(),
        fail_at_first_finish,
        failed: false,
    };
    let status = run(ctx, &mut journal, Shutdown::manual());
    let record = record.lock().unwrap().clone();
    (status, record, journal.events)
}

#[test]
fn a_step_runs_only_once_its_start_is_recorded() {
    let (status, record, _) = recorded_run(diamond(), Mode::Restore, false);
    assert_eq!(status, RunStatus::Succeeded);
    for (step, command) in [("a/1", "a1"), ("b/1", "b1"), ("c/1", "c1"), ("d/1", "d1")] {
        let recorded = record.iter().position(|r| *r == format!("recorded {step}"));
        let ran = record.iter().position(|r| *r == format!("ran {command}"));
        assert!(
            recorded.is_some() && recorded < ran,
            "{step} ran before its start was recorded: {record:?}"
        );
    }
}

#[test]
fn a_journal_that_fails_stops_the_run_and_lets_running_steps_finish() {
    // Two steps run at once; the first end cannot be recorded. Nothing starts after that,
    // not even the drill's cleanup; the other running step finishes.
    let a = exec_step("a/1", "h1", &[], "a1");
    let b = exec_step("b/1", "h2", &[], "b1");
    let c = exec_step("c/1", "h1", &["a/1", "b/1"], "c1");
    let mut cleanup = exec_step("c/cleanup", "h2", &["c/1"], "remove overlay");
    cleanup.phase = Phase::Cleanup;
    let (status, record, events) = recorded_run(vec![a, b, c, cleanup], Mode::Drill, true);
    assert_eq!(status, RunStatus::Interrupted);
    let ran: Vec<&String> = record.iter().filter(|r| r.starts_with("ran ")).collect();
    assert_eq!(ran.len(), 2, "{record:?}");
    assert!(ran.contains(&&"ran a1".to_string()) && ran.contains(&&"ran b1".to_string()));
    for step in ["a/1", "b/1"] {
        assert!(
            record.contains(&format!("unrecorded end of {step}")),
            "{step} did not finish: {record:?}"
        );
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::StepFinished { .. })),
        "{events:?}"
    );
}

#[test]
fn a_stopped_drill_cleans_up_only_once_its_running_steps_ended() {
    // The copy of `a` is being started when the stop comes; the check the cleanup waits
    // for is cancelled at once. The copy must not be removed before it has started.
    let start = exec_step("a/start", "h1", &[], "start a");
    let mut check = exec_step("b/check", "h2", &[], "");
    check.host = None;
    check.action_spec = Action::Manual {
        instructions: "never confirmed".into(),
    };
    let mut remove = exec_step("a/remove", "h1", &["b/check"], "remove a");
    remove.phase = Phase::Cleanup;
    let record = Arc::new(Mutex::new(Vec::new()));
    struct Never;
    impl Confirmations for Never {
        fn confirmation(&self, _step: &str) -> Option<Confirmation> {
            None
        }
    }
    let ctx = RunContext {
        plan: plan(Mode::Drill, false, vec![start, check, remove]),
        transport: Arc::new(Recorder {
            record: record.clone(),
            hold: StdDuration::from_millis(400),
        }),
        confirmations: Arc::new(Never),
        secrets: env_secrets(),
        options: RunOptions::default(),
        prior: HashMap::new(),
        other_site: None,
        copied: Default::default(),
    };
    let shutdown = Shutdown::manual();
    let signal = shutdown.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(StdDuration::from_millis(100));
        signal.trigger("SIGTERM");
    });
    let mut sink = Collect::default();
    assert_eq!(run(ctx, &mut sink, shutdown), RunStatus::Interrupted);
    stopper.join().unwrap();
    let record = record.lock().unwrap().clone();
    let at = |what: &str| record.iter().position(|r| r == what);
    assert!(
        at("ended start a").is_some() && at("ended start a") < at("ran remove a"),
        "{record:?}"
    );
    assert_eq!(sink.status("a/remove"), Some(StepStatus::Done));
}

#[test]
fn a_fault_inside_one_step_fails_that_step_not_the_run() {
    struct Faulty;
    impl Confirmations for Faulty {
        fn confirmation(&self, step: &str) -> Option<Confirmation> {
            if step == "m/1" {
                panic!("confirmation store unreadable");
            }
            None
        }
    }
    let mut manual = exec_step("m/1", "h1", &[], "");
    manual.host = None;
    manual.action_spec = Action::Manual {
        instructions: "check".into(),
    };
    let after = exec_step("m/2", "h1", &["m/1"], "m2");
    let other = exec_step("o/1", "h2", &[], "o1");
    let fake = Arc::new(Fake::default());
    let ctx = RunContext {
        plan: plan(Mode::Restore, false, vec![manual, after, other]),
        transport: fake.clone(),
        confirmations: Arc::new(Faulty),
        secrets: env_secrets(),
        options: RunOptions::default(),
        prior: HashMap::new(),
        other_site: None,
        copied: Default::default(),
    };
    let mut sink = Collect::default();
    let status = run(ctx, &mut sink, Shutdown::manual());
    assert_eq!(status, RunStatus::Partial);
    assert_eq!(sink.status("m/1"), Some(StepStatus::Failed));
    assert_eq!(sink.status("m/2"), Some(StepStatus::Blocked));
    assert_eq!(sink.status("o/1"), Some(StepStatus::Done));
    let message = sink
        .0
        .iter()
        .find_map(|e| match e {
            Event::StepFinished { step, message, .. } if step == "m/1" => message.clone(),
            _ => None,
        })
        .unwrap();
    assert!(
        message.contains("reprise failed inside this step")
            && message.contains("confirmation store unreadable"),
        "{message}"
    );
}

fn timed(id: &str, command: &str, timeout_s: u64, retries: u32) -> PlannedStep {
    let mut step = exec_step(id, "h1", &[], command);
    step.timeout_s = Some(timeout_s);
    step.retries = retries;
    step
}

#[test]
fn a_host_that_does_not_answer_times_the_step_out_at_its_deadline() {
    // The transport gives up at the deadline it is given: the whole step's, not a fresh
    // one per attempt, and the step is timed out, not retried.
    let (status, record, events) =
        recorded_run(vec![timed("a/1", "hung", 2, 3)], Mode::Restore, false);
    assert_eq!(status, RunStatus::Failed);
    assert_eq!(record.iter().filter(|r| *r == "ran hung").count(), 1);
    let (status, message, ms) = events
        .iter()
        .find_map(|e| match e {
            Event::StepFinished {
                status,
                message,
                duration_ms,
                ..
            } => Some((*status, message.clone().unwrap_or_default(), *duration_ms)),
            _ => None,
        })
        .unwrap();
    assert_eq!(status, StepStatus::TimedOut, "{message}");
    assert!(message.contains("timed out after 2s"), "{message}");
    assert!(ms < 4000, "{ms} ms");
}

#[test]
fn a_transport_stuck_past_the_deadline_does_not_hold_the_step() {
    let (_, _, events) = recorded_run(vec![timed("a/1", "frozen", 2, 0)], Mode::Restore, false);
    let (status, message, ms) = events
        .iter()
        .find_map(|e| match e {
            Event::StepFinished {
                status,
                message,
                duration_ms,
                ..
            } => Some((*status, message.clone().unwrap_or_default(), *duration_ms)),
            _ => None,
        })
        .unwrap();
    assert_eq!(status, StepStatus::TimedOut, "{message}");
    assert!(message.contains("no answer from h1"), "{message}");
    // The deadline, then the grace for the remote KILL: not the minute the call hangs.
    assert!(ms < 2000 + LATE.as_millis() as u64 + 2000, "{ms} ms");
}

#[test]
fn a_drill_whose_cleanup_ran_only_finishes_that_cleanup() {
    let start = |vm: &str| exec_step(&format!("{vm}/start"), "h1", &[], &format!("start {vm}"));
    let mut check_a = exec_step("a/healthy", "h1", &["a/start"], "check a");
    check_a.timeout_s = Some(600);
    let remove = |vm: &str, after: &[&str]| {
        let mut s = exec_step(
            &format!("{vm}/remove"),
            "h2",
            after,
            &format!("remove {vm}"),
        );
        s.phase = Phase::Cleanup;
        s.idempotent = true;
        s
    };
    let steps = vec![
        start("a"),
        check_a,
        start("b"),
        remove("a", &["a/healthy", "b/start"]),
        remove("b", &["a/healthy", "b/start"]),
    ];
    let plan = plan(Mode::Drill, false, steps);
    let at = Utc::now();
    let started = |step: &str| Event::StepStarted {
        at,
        step: step.into(),
        attempt: 1,
        host: None,
    };
    let finished = |step: &str, status| Event::StepFinished {
        at,
        step: step.into(),
        attempt: 1,
        status,
        duration_ms: 1,
        message: None,
    };
    // Stopped after a's copy started: the rest was cancelled, a's copy removed, and the
    // orchestrator died while removing b's.
    let mut events = vec![
        started("a/start"),
        finished("a/start", StepStatus::Done),
        Event::StopRequested {
            at,
            reason: "SIGTERM".into(),
        },
        finished("a/healthy", StepStatus::Cancelled),
        finished("b/start", StepStatus::Cancelled),
        started("a/remove"),
        finished("a/remove", StepStatus::Done),
        started("b/remove"),
    ];
    let mut prior = prior_from_journal(&events);
    assert_eq!(drill_cleaned_up(&plan, &events, &mut prior), None);
    assert_eq!(prior.get("a/healthy"), Some(&Prior::DrillOver));
    assert_eq!(prior.get("b/start"), Some(&Prior::DrillOver));
    let fake = Arc::new(Fake::default());
    let (status, sink) = go(plan.clone(), fake.clone(), prior, RunOptions::default());
    // Only what the cleanup left: no copy re-checked, none started again.
    assert_eq!(fake.commands(), ["remove b"]);
    assert_eq!(sink.status("b/remove"), Some(StepStatus::Done));
    assert_eq!(sink.status("a/healthy"), Some(StepStatus::Cancelled));
    assert_eq!(status, RunStatus::Partial);
    // Once every cleanup step is done, the drill is over.
    events.push(finished("b/remove", StepStatus::Done));
    let mut prior = prior_from_journal(&events);
    assert_eq!(drill_cleaned_up(&plan, &events, &mut prior), Some(at));
    // A drill stopped before its cleanup began carries on as any run.
    let early = &events[..2];
    let mut prior = prior_from_journal(early);
    assert_eq!(drill_cleaned_up(&plan, early, &mut prior), None);
    assert_eq!(prior.get("b/start"), None);
}

#[test]
fn resume_never_repeats_finished_steps_and_verifies_interrupted_ones() {
    let mut steps = diamond();
    steps[1].action_spec = Action::Exec {
        run: Command::text("b1"),
        verify: Some(Command::text("b1 verify")),
        undo: None,
    };
    let prior = HashMap::from([
        ("a/1".to_string(), Prior::Done),
        ("b/1".to_string(), Prior::Interrupted),
    ]);
    let fake = Arc::new(Fake::default());
    let (status, _) = go(
        plan(Mode::Restore, false, steps),
        fake.clone(),
        prior,
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Succeeded);
    let cmds = fake.commands();
    assert!(!cmds.contains(&"a1".to_string()));
    assert!(cmds.contains(&"b1 verify".to_string()));
    assert!(!cmds.contains(&"b1".to_string()), "{cmds:?}");
}

#[test]
fn a_resumed_step_done_after_one_run_again_waits_for_it_and_a_check_is_run_again() {
    // A planned switch: stop the primary, check the standby, promote it, note it. The
    // first attempt stopped, checked and noted, then failed to promote: the roll-back
    // started the primary again. Resumed, the stop runs again first; the check, safe to
    // run twice, is run again after it; the note is not run twice but still counts only
    // once the stop is done again; then the promotion.
    let mut steps = vec![
        exec_step("a/stop", "h1", &[], "stop"),
        exec_step("a/check", "h2", &["a/stop"], "check"),
        exec_step("a/note", "h4", &["a/check"], "note"),
        exec_step("a/promote", "h3", &["a/note"], "promote"),
    ];
    steps[1].idempotent = true;
    let prior = HashMap::from([
        ("a/check".to_string(), Prior::Done),
        ("a/note".to_string(), Prior::Done),
    ]);
    let fake = Arc::new(Fake {
        hold: StdDuration::from_millis(30),
        ..Fake::default()
    });
    let (status, _) = go(
        plan(Mode::Failover, false, steps),
        fake.clone(),
        prior,
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(fake.commands(), ["stop", "check", "promote"]);

    // The same with a check that is not a command (a probe): safe to run twice, it is run
    // again, as a copy back would be (a replication is never taken as done after a
    // roll-back undid what it came after).
    let mut steps = vec![
        exec_step("a/stop", "h1", &[], "stop"),
        exec_step("a/check", "h2", &["a/stop"], "check"),
        exec_step("a/promote", "h3", &["a/check"], "promote"),
    ];
    steps[1].action_spec = Action::Probe {
        run: Command::text("probe"),
        interval: crate::duration::Duration::from_secs(1),
    };
    let prior = HashMap::from([("a/check".to_string(), Prior::Done)]);
    let fake = Arc::new(Fake::default());
    let (status, _) = go(
        plan(Mode::Failover, false, steps),
        fake.clone(),
        prior,
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(fake.commands(), ["stop", "probe", "promote"]);

    // Stopped right after the check, resumed hours later: every step before it is done,
    // and still a lag read is taken again before the switch.
    let mut steps = vec![
        exec_step("a/stop", "h1", &[], "stop"),
        exec_step("a/lag", "h2", &["a/stop"], "lag"),
        exec_step("a/promote", "h3", &["a/lag"], "promote"),
    ];
    steps[1].action_spec = Action::Lag {
        run: Command::text("echo 3"),
        timeout: crate::duration::Duration::from_secs(5),
        rpo: None,
        hold: true,
    };
    let prior = HashMap::from([
        ("a/stop".to_string(), Prior::Done),
        ("a/lag".to_string(), Prior::Done),
    ]);
    let fake = Arc::new(Fake::default());
    let (_, events) = go(
        plan(Mode::Failover, false, steps),
        fake.clone(),
        prior,
        RunOptions::default(),
    );
    let cmds = fake.commands();
    assert!(!cmds.contains(&"stop".to_string()), "{cmds:?}");
    assert!(
        events
            .0
            .iter()
            .any(|e| matches!(e, Event::StepStarted { step, .. } if step == "a/lag")),
        "the lag was not read again"
    );
    // Once the switch is done, nothing reads it again.
    let prior = HashMap::from([
        ("a/stop".to_string(), Prior::Done),
        ("a/lag".to_string(), Prior::Done),
        ("a/promote".to_string(), Prior::Done),
    ]);
    let steps = plan(Mode::Failover, false, {
        let mut steps = vec![
            exec_step("a/stop", "h1", &[], "stop"),
            exec_step("a/lag", "h2", &["a/stop"], "lag"),
            exec_step("a/promote", "h3", &["a/lag"], "promote"),
        ];
        steps[1].action_spec = Action::Lag {
            run: Command::text("echo 3"),
            timeout: crate::duration::Duration::from_secs(5),
            rpo: None,
            hold: true,
        };
        steps
    });
    let (_, events) = go(
        steps,
        Arc::new(Fake::default()),
        prior,
        RunOptions::default(),
    );
    assert!(
        !events
            .0
            .iter()
            .any(|e| matches!(e, Event::StepStarted { .. })),
        "a step of a finished switch ran again"
    );
}

#[test]
fn secrets_are_resolved_for_the_host_and_redacted_from_output() {
    let mut step = exec_step("a/1", "h1", &[], "");
    step.action_spec = Action::Exec {
        run: Command {
            parts: vec![
                crate::template::CommandPart::Text("login ".into()),
                crate::template::CommandPart::Secret {
                    env: "PW".into(),
                    quote: true,
                },
            ],
        },
        verify: None,
        undo: None,
    };
    let fake = Arc::new(Fake::default());
    let (status, events) = go(
        plan(Mode::Restore, false, vec![step]),
        fake.clone(),
        HashMap::new(),
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(fake.commands(), ["login hunter2"]);
    let out = events
        .0
        .iter()
        .find_map(|e| match e {
            Event::StepOutput { stdout, .. } => Some(stdout.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(out, "ran login <secret:PW>");
}

#[test]
fn prior_state_is_read_from_a_journal() {
    let at = Utc::now();
    let events = vec![
        Event::StepStarted {
            at,
            step: "a/1".into(),
            attempt: 1,
            host: None,
        },
        Event::StepFinished {
            at,
            step: "a/1".into(),
            attempt: 1,
            status: StepStatus::Done,
            duration_ms: 1,
            message: None,
        },
        Event::StepStarted {
            at,
            step: "b/1".into(),
            attempt: 1,
            host: None,
        },
        Event::StepStarted {
            at,
            step: "c/1".into(),
            attempt: 1,
            host: None,
        },
        Event::StepFinished {
            at,
            step: "c/1".into(),
            attempt: 1,
            status: StepStatus::Failed,
            duration_ms: 1,
            message: None,
        },
    ];
    let prior = prior_from_journal(&events);
    assert_eq!(prior.get("a/1"), Some(&Prior::Done));
    assert_eq!(prior.get("b/1"), Some(&Prior::Interrupted));
    assert_eq!(prior.get("c/1"), None);

    // A step done, then run again (a resume after a roll-back undid a step before it) and
    // cut while it ran: interrupted, never the earlier attempt's done.
    let mut again = events.clone();
    again.push(Event::StepStarted {
        at,
        step: "a/1".into(),
        attempt: 1,
        host: None,
    });
    let prior = prior_from_journal(&again);
    assert_eq!(prior.get("a/1"), Some(&Prior::Interrupted));

    // A step done whose undo then failed: never taken as done by a resume.
    let mut undone = events.clone();
    undone.push(Event::UndoFinished {
        at,
        step: "a/1".into(),
        ok: false,
        message: Some("its state before the step was not recorded".into()),
    });
    let prior = prior_from_journal(&undone);
    assert_eq!(prior.get("a/1"), Some(&Prior::Interrupted));
    // One whose undo succeeded is to run again.
    let mut undone = events.clone();
    undone.push(Event::UndoFinished {
        at,
        step: "a/1".into(),
        ok: true,
        message: None,
    });
    assert_eq!(prior_from_journal(&undone).get("a/1"), None);
}

#[tokio::test(start_paused = true)]
async fn ctrl_c_stops_new_steps_but_a_drill_still_cleans_up() {
    // a/1 waits for a person; b/1 waits for a/1; the cleanup step waits for both.
    let mut manual = exec_step("a/1", "h1", &[], "");
    manual.host = None;
    manual.action_spec = Action::Manual {
        instructions: "never confirmed".into(),
    };
    let later = exec_step("b/1", "h1", &["a/1"], "b1");
    let mut cleanup = exec_step("a/cleanup", "h2", &["a/1", "b/1"], "remove overlay");
    cleanup.phase = Phase::Cleanup;
    struct Never;
    impl Confirmations for Never {
        fn confirmation(&self, _step: &str) -> Option<Confirmation> {
            None
        }
    }
    let fake = Arc::new(Fake::default());
    let ctx = RunContext {
        plan: plan(Mode::Drill, false, vec![manual, later, cleanup]),
        transport: fake.clone(),
        confirmations: Arc::new(Never),
        secrets: env_secrets(),
        options: RunOptions::default(),
        prior: HashMap::new(),
        other_site: None,
        copied: Default::default(),
    };
    let shutdown = Shutdown::manual();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(StdDuration::from_secs(30)).await;
        signal.trigger("SIGTERM");
    });
    let mut sink = Collect::default();
    let status = execute(ctx, &mut sink, shutdown).await;
    assert_eq!(status, RunStatus::Interrupted);
    // The journal says why the run stopped.
    assert!(
        sink.0
            .iter()
            .any(|e| matches!(e, Event::StopRequested { reason, .. } if reason == "SIGTERM")),
        "{:?}",
        sink.0
    );
    assert_eq!(sink.status("a/1"), Some(StepStatus::Cancelled));
    assert_eq!(sink.status("b/1"), Some(StepStatus::Cancelled));
    assert_eq!(sink.status("a/cleanup"), Some(StepStatus::Done));
    assert_eq!(fake.commands(), ["remove overlay"]);
}

#[tokio::test(start_paused = true)]
async fn a_refused_host_fails_at_once_while_a_silent_one_is_tried_again() {
    // A changed host key will not change by trying again: no retries, no polling.
    let mut exec_refused = exec_step("a/run", "h1", &[], "changed-key run");
    exec_refused.retries = 3;
    let mut check_refused = exec_step("b/ready", "h2", &[], "");
    check_refused.timeout_s = Some(600);
    check_refused.action_spec = Action::Probe {
        run: Command::text("changed-key probe"),
        interval: Duration(5),
    };
    // A host that does not answer may come back: retried with backoff.
    let mut silent = exec_step("c/run", "h3", &[], "unreachable run");
    silent.retries = 2;
    let fake = Arc::new(Fake::default());
    let ctx = RunContext {
        plan: plan(
            Mode::Restore,
            false,
            vec![exec_refused, check_refused, silent],
        ),
        transport: fake.clone(),
        confirmations: Arc::new(Confirm(Mutex::new(0))),
        secrets: env_secrets(),
        options: RunOptions::default(),
        prior: HashMap::new(),
        other_site: None,
        copied: Default::default(),
    };
    let mut sink = Collect::default();
    let begin = Instant::now();
    execute(ctx, &mut sink, Shutdown::manual()).await;
    assert_eq!(sink.status("a/run"), Some(StepStatus::Failed));
    assert_eq!(sink.status("b/ready"), Some(StepStatus::Failed));
    assert_eq!(sink.status("c/run"), Some(StepStatus::Failed));
    let tries = |c: &str| fake.commands().iter().filter(|x| *x == c).count();
    assert_eq!(tries("changed-key run"), 1);
    assert_eq!(tries("changed-key probe"), 1);
    assert_eq!(tries("unreachable run"), 3);
    // The refused check did not wait for its 600 s deadline.
    assert!(
        begin.elapsed() < StdDuration::from_secs(60),
        "{:?}",
        begin.elapsed()
    );
    let message = sink
        .0
        .iter()
        .find_map(|e| match e {
            Event::StepFinished { step, message, .. } if step == "b/ready" => message.clone(),
            _ => None,
        })
        .unwrap();
    assert!(
        message.contains("SHA256:old") && message.contains("SHA256:new"),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn command_checks_poll_until_healthy_or_their_deadline() {
    let mut healthy_later = exec_step("a/ready", "h1", &[], "");
    healthy_later.action_spec = Action::Probe {
        run: Command::text("flaky:3"),
        interval: Duration(5),
    };
    let mut never = exec_step("b/ready", "h2", &[], "");
    never.timeout_s = Some(20);
    never.action_spec = Action::Probe {
        run: Command::text("fail"),
        interval: Duration(5),
    };
    let fake = Arc::new(Fake::default());
    let ctx = RunContext {
        plan: plan(Mode::Restore, false, vec![healthy_later, never]),
        transport: fake.clone(),
        confirmations: Arc::new(Confirm(Mutex::new(0))),
        secrets: env_secrets(),
        options: RunOptions::default(),
        prior: HashMap::new(),
        other_site: None,
        copied: Default::default(),
    };
    let mut sink = Collect::default();
    execute(ctx, &mut sink, Shutdown::manual()).await;
    assert_eq!(sink.status("a/ready"), Some(StepStatus::Done));
    assert_eq!(sink.status("b/ready"), Some(StepStatus::TimedOut));
    let cmds = fake.commands();
    assert_eq!(cmds.iter().filter(|c| *c == "flaky:3").count(), 3);
    // Every 5 s for 20 s: a handful of tries, not a busy loop.
    let tries = cmds.iter().filter(|c| *c == "fail").count();
    assert!((4..=6).contains(&tries), "{tries} tries");
}

/// A roll-back never starts a vm's primary again while this run may have left the same vm
/// running on its recovery copy (the undo of its start failed; its start failed without an
/// answer yet took effect; its driver cannot say): that would run one vm on both sites,
/// writing diverging data. Once the copy says it is stopped (or its status fails as it does
/// for a vm no longer defined there, and only so), the primary is started again, and the
/// other services are undone as before.
#[test]
fn a_roll_back_starts_no_vm_next_to_a_copy_this_run_may_have_left_running() {
    let vm_step = |id: &str, host: &str, after: &[&str], action: &str, run: &str, undo: &str| {
        let mut s = exec_step(id, host, after, run);
        s.kind = "vm";
        s.action = Some(action.into());
        s.action_spec = Action::Exec {
            run: Command::text(run),
            verify: None,
            undo: Some(Command::text(undo)),
        };
        s.undo = Some(undo.into());
        s
    };
    // (start, its undo, what the copy's status says before the start then after, whether
    // db's primary is started again)
    let cases = [
        (
            "start db copy",
            "stop db copy fail",
            "shut off then:running",
            false,
        ),
        (
            "start db copy unreachable",
            "stop db copy",
            "shut off then:running",
            false,
        ),
        (
            "start db copy",
            "stop db copy",
            "shut off then:paused",
            false,
        ),
        (
            "start db copy fail",
            "stop db copy",
            "shut off then:shut off",
            true,
        ),
        (
            "start db copy",
            "stop db copy",
            "shut off then:shut off",
            true,
        ),
        // Its status says it is not defined there: no vm of that name runs there.
        (
            "start db copy",
            "stop db copy",
            "shut off then:not defined",
            true,
        ),
        // Its status fails otherwise (the hypervisor does not answer, or drops the lookup:
        // libvirt's "failed to get domain" is said then too), or without a word: the copy
        // may still run.
        (
            "start db copy",
            "stop db copy",
            "shut off then:error: failed to get domain 'db'",
            false,
        ),
        (
            "start db copy",
            "stop db copy",
            "shut off then:error: failed to connect to the hypervisor",
            false,
        ),
        ("start db copy", "stop db copy", "shut off then:", false),
    ];
    for (start, undo, said, again) in cases {
        let mut copy = vm_step("db/start", "h2", &["db/stop-primary"], "start", start, undo);
        copy.state_before = Some(Command::text(format!("status db copy says:{said}")));
        let steps = vec![
            vm_step(
                "app/stop-primary",
                "h1",
                &[],
                "stop",
                "stop app",
                "start app",
            ),
            vm_step("db/stop-primary", "h1", &[], "stop", "stop db", "start db"),
            copy,
            exec_step(
                "db/healthy",
                "h2",
                &["db/start", "app/stop-primary"],
                "healthy fail",
            ),
        ];
        let fake = Arc::new(Fake::default());
        let (status, events) = go(
            plan(Mode::Failover, false, steps),
            fake.clone(),
            HashMap::new(),
            RunOptions::default(),
        );
        let case = format!("{start} / {undo} / {said}");
        assert_eq!(status, RunStatus::Failed, "{case}");
        let commands = fake.commands();
        assert!(
            commands.iter().any(|c| c == "start app"),
            "{case}: {commands:?}"
        );
        assert_eq!(
            commands.iter().any(|c| c == "start db"),
            again,
            "{case}: {commands:?}"
        );
        let undo = events.0.iter().find_map(|e| match e {
            Event::UndoFinished {
                step, ok, message, ..
            } if step == "db/stop-primary" => Some((*ok, message.clone().unwrap_or_default())),
            _ => None,
        });
        let (ok, message) = undo.unwrap_or_else(|| panic!("{case}: {:#?}", events.0));
        assert_eq!(ok, again, "{case}: {message}");
        if !again {
            assert!(message.contains("both sites"), "{case}: {message}");
        }
    }
}

/// The same, with the vm's start a step of another service than its stop (a plan may split
/// them): the start is matched by the vm it starts, not by its service.
#[test]
fn a_roll_back_matches_a_vm_s_start_by_its_vm_whatever_its_service() {
    let vm_step =
        |id: &str, host: &str, vm: &str, after: &[&str], action: &str, run: &str, undo: &str| {
            let mut s = exec_step(id, host, after, run);
            s.kind = "vm";
            s.vm = Some(vm.into());
            s.action = Some(action.into());
            s.action_spec = Action::Exec {
                run: Command::text(run),
                verify: None,
                undo: Some(Command::text(undo)),
            };
            s.undo = Some(undo.into());
            s
        };
    let stop = vm_step(
        "db/stop-primary",
        "h1",
        "db",
        &[],
        "stop",
        "stop db",
        "start db",
    );
    let mut copy = vm_step(
        "ops/start-db",
        "h2",
        "db",
        &["db/stop-primary"],
        "start",
        "start db copy",
        "stop db copy fail",
    );
    copy.state_before = Some(Command::text("status db copy says:shut off then:running"));
    let check = exec_step("ops/healthy", "h2", &["ops/start-db"], "healthy fail");
    let fake = Arc::new(Fake::default());
    let (status, events) = go(
        plan(Mode::Failover, false, vec![stop, copy, check]),
        fake.clone(),
        HashMap::new(),
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Failed);
    let commands = fake.commands();
    assert!(!commands.iter().any(|c| c == "start db"), "{commands:?}");
    let undo = events.0.iter().find_map(|e| match e {
        Event::UndoFinished {
            step, ok, message, ..
        } if step == "db/stop-primary" => Some((*ok, message.clone().unwrap_or_default())),
        _ => None,
    });
    let (ok, message) = undo.unwrap_or_else(|| panic!("{:#?}", events.0));
    assert!(!ok && message.contains("both sites"), "{message}");
}

/// A vm not defined where it starts before its start (a failover defines it from its point)
/// did not run there: the roll-back stops it, as one that was shut off.
#[test]
fn a_roll_back_stops_a_vm_it_started_where_it_was_not_defined() {
    let mut copy = exec_step("db/start", "h2", &[], "start db copy");
    copy.kind = "vm";
    copy.vm = Some("db".into());
    copy.action = Some("start".into());
    copy.action_spec = Action::Exec {
        run: Command::text("start db copy"),
        verify: None,
        undo: Some(Command::text("stop db copy")),
    };
    copy.undo = Some("stop db copy".into());
    copy.state_before = Some(Command::text(
        "status db copy says:not defined then:running",
    ));
    let check = exec_step("db/healthy", "h2", &["db/start"], "healthy fail");
    let fake = Arc::new(Fake::default());
    let (status, events) = go(
        plan(Mode::Failover, false, vec![copy, check]),
        fake.clone(),
        HashMap::new(),
        RunOptions::default(),
    );
    assert_eq!(status, RunStatus::Failed);
    let before = events.0.iter().find_map(|e| match e {
        Event::VmStateBefore { running, .. } => Some(*running),
        _ => None,
    });
    assert_eq!(before, Some(Some(false)), "{:#?}", events.0);
    let commands = fake.commands();
    assert!(commands.iter().any(|c| c == "stop db copy"), "{commands:?}");
}

/// A tcp check of a vm passes only once the vm's driver says it runs where the run brought it
/// up, and not on the side it left: an address that answers while the vm does not run (a
/// primary still up, a leftover process) fails the step at once and says so, as does a vm
/// running on both sides (split brain); a state that cannot be read is asked again.
#[tokio::test]
async fn a_vm_s_check_passes_only_while_that_vm_runs_where_the_run_started_it() {
    // Something answers at the address, whatever runs or not.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let check = |id: &str, here: &str, left: &str| {
        let mut s = exec_step(id, "unused", &[], "");
        s.host = None;
        s.kind = "check";
        s.action_spec = Action::Tcp {
            address: "127.0.0.1".into(),
            port,
            interval: Duration(1),
            instance: Some(crate::plan::Instance {
                vm: "db".into(),
                shown: "vm db".into(),
                host: "hv-pra".into(),
                status: Command::text(format!("status {id} says:{here}")),
                left: Some((
                    "hv-main".into(),
                    Command::text(format!("left {id} says:{left}")),
                )),
            }),
            expect: None,
            production: Vec::new(),
        };
        s
    };
    let steps = vec![
        check("a/healthy", "running", "shut off"),
        check("b/healthy", "shut off", "running"),
        check("c/healthy", "running", "running"),
        check("d/healthy", "paused then:running", "unreachable"),
    ];
    let fake = Arc::new(Fake::default());
    let ctx = RunContext {
        plan: plan(Mode::Failover, true, steps),
        transport: fake.clone(),
        confirmations: Arc::new(Confirm(Mutex::new(0))),
        secrets: env_secrets(),
        options: RunOptions::default(),
        prior: HashMap::new(),
        other_site: None,
        copied: Default::default(),
    };
    let mut sink = Collect::default();
    execute(ctx, &mut sink, Shutdown::manual()).await;
    let message = |step: &str| {
        sink.0
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::StepFinished {
                    step: s, message, ..
                } if s == step => message.clone(),
                _ => None,
            })
            .unwrap_or_default()
    };
    assert_eq!(sink.status("a/healthy"), Some(StepStatus::Done));
    let a = message("a/healthy");
    assert!(
        a.contains("vm db runs on hv-pra (running), and not on hv-main (shut off)"),
        "{a}"
    );
    assert_eq!(sink.status("b/healthy"), Some(StepStatus::Failed));
    let b = message("b/healthy");
    assert!(
        b.contains("but not vm db") && b.contains("NOT recovered"),
        "{b}"
    );
    assert_eq!(sink.status("c/healthy"), Some(StepStatus::Failed));
    let c = message("c/healthy");
    assert!(c.starts_with("split brain: vm db runs on hv-pra"), "{c}");
    let split: Vec<(&str, &[String])> = sink
        .0
        .iter()
        .filter_map(|e| match e {
            Event::SplitBrain { step, hosts, .. } => Some((step.as_str(), hosts.as_slice())),
            _ => None,
        })
        .collect();
    let both = ["hv-pra".to_string(), "hv-main".to_string()];
    assert_eq!(split, vec![("c/healthy", &both[..])]);
    // Paused the first time: asked again; the side left cannot be reached: said.
    assert_eq!(sink.status("d/healthy"), Some(StepStatus::Done));
    let d = message("d/healthy");
    assert!(d.contains("its state could not be read"), "{d}");
    let cmds = fake.commands();
    assert_eq!(
        cmds.iter().filter(|c| c.starts_with("status d/")).count(),
        2
    );
    // A vm that does not run is not asked about on the other side.
    assert!(!cmds.iter().any(|c| c.starts_with("left b/")), "{cmds:?}");
    drop(listener);
}

/// A server on 127.0.0.1 that answers every connection with `answer` (after reading what
/// the client sends, briefly, as the lab's vms do); its port.
fn answering(answer: &'static str) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.set_read_timeout(Some(StdDuration::from_millis(200)));
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    port
}

/// A check with `expect` passes only on an answer that contains it: a tcp banner, an http
/// body. Another server at the address (another answer) is not taken for the right one: the
/// check fails at its deadline, saying what it got.
#[tokio::test]
async fn a_check_with_expect_passes_only_on_the_answer_it_names() {
    let page = |name: &str| -> &'static str {
        let body = format!("lab vm-{name} is up\n");
        Box::leak(
            format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        )
    };
    let (erp, other) = (answering(page("erp-db")), answering(page("print")));
    let tcp = |id: &str, port: u16| {
        let mut s = exec_step(id, "unused", &[], "");
        s.host = None;
        s.timeout_s = Some(3);
        s.action_spec = Action::Tcp {
            address: "127.0.0.1".into(),
            port,
            interval: Duration(1),
            instance: None,
            expect: Some("erp-db".into()),
            production: Vec::new(),
        };
        s
    };
    let http = |id: &str, port: u16| {
        let mut s = exec_step(id, "unused", &[], "");
        s.host = None;
        s.timeout_s = Some(3);
        s.action_spec = Action::Http {
            url: format!("http://127.0.0.1:{port}/health"),
            status: 200,
            interval: Duration(1),
            tls: Default::default(),
            instance: None,
            expect: Some("erp-db".into()),
            production: Vec::new(),
        };
        s
    };
    let steps = vec![
        tcp("a/banner", erp),
        tcp("b/banner", other),
        http("c/page", erp),
        http("d/page", other),
    ];
    let ctx = RunContext {
        plan: plan(Mode::Restore, false, steps),
        transport: Arc::new(Fake::default()),
        confirmations: Arc::new(Confirm(Mutex::new(0))),
        secrets: env_secrets(),
        options: RunOptions::default(),
        prior: HashMap::new(),
        other_site: None,
        copied: Default::default(),
    };
    let mut sink = Collect::default();
    execute(ctx, &mut sink, Shutdown::manual()).await;
    let message = |step: &str| {
        sink.0
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::StepFinished {
                    step: s, message, ..
                } if s == step => message.clone(),
                _ => None,
            })
            .unwrap_or_default()
    };
    assert_eq!(sink.status("a/banner"), Some(StepStatus::Done));
    assert!(message("a/banner").contains("answered with \"erp-db\""));
    assert_eq!(sink.status("b/banner"), Some(StepStatus::TimedOut));
    let b = message("b/banner");
    assert!(
        b.contains("does not contain \"erp-db\"") && b.contains("lab vm-print is up"),
        "{b}"
    );
    assert_eq!(sink.status("c/page"), Some(StepStatus::Done));
    assert!(message("c/page").contains("answered 200 with \"erp-db\""));
    assert_eq!(sink.status("d/page"), Some(StepStatus::TimedOut));
    let d = message("d/page");
    assert!(
        d.contains("its body does not contain \"erp-db\": it sent \"lab vm-print is up\""),
        "{d}"
    );
}

/// A drill's tcp or http check that reaches a production address under another name (a name
/// for the address, two names for one machine) fails at once, saying which production address
/// it reaches: production would answer, not the drill's copy. One at an address of its own
/// passes.
#[tokio::test]
async fn a_drill_s_check_that_resolves_to_a_production_address_fails_at_once() {
    let answering = |addr: &str| {
        let listener = std::net::TcpListener::bind(format!("{addr}:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let _ = std::io::Write::write_all(
                    &mut stream,
                    b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nup\n",
                );
            }
        });
        port
    };
    let (production_port, copy_port) = (answering("127.0.0.1"), answering("127.0.0.2"));
    let production = vec![
        crate::plan::Production {
            address: "127.0.0.1".into(),
            what: "the production address of vm erp-db".into(),
        },
        crate::plan::Production {
            address: "erp-db.paris.invalid".into(),
            what: "the production address of vm erp-app".into(),
        },
    ];
    let tcp = |id: &str, address: &str, port: u16| {
        let mut s = exec_step(id, "unused", &[], "");
        s.host = None;
        s.timeout_s = Some(20);
        s.action_spec = Action::Tcp {
            address: address.into(),
            port,
            interval: Duration(1),
            instance: None,
            expect: None,
            production: production.clone(),
        };
        s
    };
    let http = |id: &str, url: String| {
        let mut s = exec_step(id, "unused", &[], "");
        s.host = None;
        s.timeout_s = Some(20);
        s.action_spec = Action::Http {
            url,
            status: 200,
            interval: Duration(1),
            tls: Default::default(),
            instance: None,
            expect: None,
            production: production.clone(),
        };
        s
    };
    let steps = vec![
        tcp("a/tcp", "localhost", production_port),
        http("b/http", format!("http://localhost:{production_port}/")),
        tcp("c/tcp", "127.0.0.2", copy_port),
        http("d/http", format!("http://127.0.0.2:{copy_port}/")),
    ];
    let ctx = RunContext {
        plan: plan(Mode::Drill, false, steps),
        transport: Arc::new(Fake::default()),
        confirmations: Arc::new(Confirm(Mutex::new(0))),
        secrets: env_secrets(),
        options: RunOptions::default(),
        prior: HashMap::new(),
        other_site: None,
        copied: Default::default(),
    };
    let mut sink = Collect::default();
    execute(ctx, &mut sink, Shutdown::manual()).await;
    let message = |step: &str| {
        sink.0
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::StepFinished {
                    step: s, message, ..
                } if s == step => message.clone(),
                _ => None,
            })
            .unwrap_or_default()
    };
    for step in ["a/tcp", "b/http"] {
        assert_eq!(sink.status(step), Some(StepStatus::Failed), "{step}");
        let m = message(step);
        assert!(
            m.contains("resolves to 127.0.0.1")
                && m.contains("the production address of vm erp-db")
                && m.contains("not the drill's copy"),
            "{step}: {m}"
        );
    }
    for step in ["c/tcp", "d/http"] {
        assert_eq!(
            sink.status(step),
            Some(StepStatus::Done),
            "{step}: {}",
            message(step)
        );
        // What could not be compared is said.
        assert!(
            message(step).contains(
                "production addresses that did not resolve, so not compared with it: erp-db.paris.invalid"
            ),
            "{step}: {}",
            message(step)
        );
    }
}

/// A restore asks the other site again as each step comes to start a vm (the run's start may
/// be hours before): a vm found running there, or left there by a failover, since the start is
/// not started, the step fails saying why, and what depends on it does not run; what could
/// not be asked is said in the step's output and the vm starts; what the operator forced past
/// is journaled as forced, by that operator, and the vm starts; other steps ask nothing.
#[test]
fn a_restore_step_asks_the_other_site_again_before_it_starts_a_vm() {
    struct Judge(Mutex<Vec<String>>);
    impl OtherSite for Judge {
        fn judge(&self, step: &PlannedStep) -> OtherSiteSays {
            self.0.lock().unwrap().push(step.id.clone());
            match step.id.as_str() {
                "db/start" => OtherSiteSays {
                    refused: vec!["vm db runs on hv-pra: fail back instead".into()],
                    ..Default::default()
                },
                "web/start" => OtherSiteSays {
                    said: vec!["whether vm web runs on hv-pra could not be asked".into()],
                    ..Default::default()
                },
                "erp/start" => OtherSiteSays {
                    forced: vec!["vm erp was left on hv-pra by failover run f1".into()],
                    operator: "Nadia".into(),
                    ..Default::default()
                },
                _ => OtherSiteSays::default(),
            }
        }
    }
    let vm_step = |id: &str, after: &[&str], run: &str| {
        let mut s = exec_step(id, "h1", after, run);
        s.kind = "vm";
        s.action = Some("start".into());
        s
    };
    let steps = vec![
        exec_step("power/on", "h1", &[], "power on"),
        vm_step("db/start", &["power/on"], "start db"),
        exec_step("db/ready", "h1", &["db/start"], "db ready"),
        vm_step("web/start", &["power/on"], "start web"),
        vm_step("erp/start", &["power/on"], "start erp"),
    ];
    for guarded in [true, false] {
        let fake = Arc::new(Fake::default());
        let judge = Arc::new(Judge(Mutex::new(Vec::new())));
        let ctx = RunContext {
            plan: plan(Mode::Restore, false, steps.clone()),
            transport: fake.clone(),
            confirmations: Arc::new(Confirm(Mutex::new(0))),
            secrets: env_secrets(),
            options: RunOptions::default(),
            prior: HashMap::new(),
            other_site: guarded.then(|| judge.clone() as Arc<dyn OtherSite>),
            copied: Default::default(),
        };
        let mut sink = Collect::default();
        let status = run(ctx, &mut sink, Shutdown::manual());
        let cmds = fake.commands();
        if !guarded {
            assert_eq!(status, RunStatus::Succeeded);
            assert!(cmds.iter().any(|c| c == "start db"), "{cmds:?}");
            continue;
        }
        assert_ne!(status, RunStatus::Succeeded);
        assert_eq!(sink.status("db/start"), Some(StepStatus::Failed));
        assert!(
            !cmds.iter().any(|c| c == "start db" || c == "db ready"),
            "{cmds:?}"
        );
        assert_ne!(sink.status("db/ready"), Some(StepStatus::Done));
        let said = |id: &str| {
            sink.0
                .iter()
                .filter_map(|e| match e {
                    Event::StepOutput { step, stderr, .. } if step == id => Some(stderr.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            said("db/start").contains("not started: vm db runs on hv-pra"),
            "{}",
            said("db/start")
        );
        let message = sink
            .0
            .iter()
            .find_map(|e| match e {
                Event::StepFinished { step, message, .. } if step == "db/start" => message.clone(),
                _ => None,
            })
            .unwrap_or_default();
        assert!(message.contains("fail back instead"), "{message}");
        let refusals: Vec<_> = sink
            .0
            .iter()
            .filter_map(|e| match e {
                Event::OtherSite {
                    step: Some(step),
                    refused: true,
                    said,
                    ..
                } => Some((step.clone(), said.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            refusals,
            [(
                "db/start".to_string(),
                vec!["vm db runs on hv-pra: fail back instead".to_string()]
            )]
        );
        // Started only after it was said.
        assert_eq!(sink.status("web/start"), Some(StepStatus::Done));
        assert!(cmds.iter().any(|c| c == "start web"), "{cmds:?}");
        assert!(
            said("web/start").contains("could not be asked"),
            "{}",
            said("web/start")
        );
        // ... and journaled for the report's problems, not as a refusal.
        let warned: Vec<_> = sink
            .0
            .iter()
            .filter_map(|e| match e {
                Event::OtherSite {
                    step: Some(step),
                    refused: false,
                    said,
                    ..
                } => Some((step.clone(), said.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            warned,
            [(
                "web/start".to_string(),
                vec!["whether vm web runs on hv-pra could not be asked".to_string()]
            )]
        );
        // Forced: journaled as such, by whom, before its start; said; started.
        assert_eq!(sink.status("erp/start"), Some(StepStatus::Done));
        let forced: Vec<(String, Vec<String>)> = sink
            .0
            .iter()
            .filter_map(|e| match e {
                Event::ReadinessForced {
                    operator, problems, ..
                } => Some((operator.clone(), problems.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(
            forced,
            [(
                "Nadia".to_string(),
                vec!["vm erp was left on hv-pra by failover run f1".to_string()]
            )]
        );
        assert!(
            said("erp/start").contains("left on hv-pra"),
            "{}",
            said("erp/start")
        );
        // Only the steps that start a vm were asked about.
        let mut asked = judge.0.lock().unwrap().clone();
        asked.sort();
        assert_eq!(asked, ["db/start", "erp/start", "web/start"]);
    }
}

/// A point named for a vm and a time asked in the same run (at its start or its resume):
/// the vm's choice carries both, the named point and the time it must respect; a vm not
/// named takes the time alone; a drill asks for neither.
#[test]
fn a_point_named_for_a_vm_is_asked_within_the_time_asked_too() {
    use crate::replica::choice::Want;
    let t: chrono::DateTime<chrono::Utc> = "2026-11-28T01:30:00Z".parse().unwrap();
    let choice = PointChoice {
        by_vm: [("db".to_string(), "P2".to_string())].into(),
        before: Some(t),
        ..PointChoice::default()
    };
    let db = choice.ask("db", "R1", true);
    assert_eq!(db.want, Some(Want::Id("P2".into())));
    assert_eq!(db.within, Some(t));
    let web = choice.ask("web", "R1", true);
    assert_eq!(web.want, Some(Want::Before(t)));
    assert_eq!(web.within, None);
    let drill = choice.ask("db", "R1", false);
    assert_eq!((drill.want, drill.within), (None, None));
}
