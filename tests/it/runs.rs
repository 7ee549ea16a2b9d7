//! Runs and their journals from the command line, without hosts: manual steps only, so that
//! runs wait for `reprise confirm` from this process. Confirmations, run ids at the door,
//! damaged and torn journals, the files hash, the state lock, signals and the retention.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Background, Run, root};

/// Two services whose step ids once shared a confirmation file (`a/b__c`, `a__b/c`), and a
/// third whose manual step waits for the first.
const INVENTORY: &str = r#"
[sites.main]
role = "primary"

[services.a]
kind = "power"
rto = "1h"

[services.a__b]
kind = "power"
rto = "1h"

[services.z]
kind = "network"
rto = "2h"
depends_on = ["a"]
"#;

const RUNBOOKS: &str = r#"
[[a.restore]]
id = "b__c"
kind = "manual"
instructions = "Check that the generators run."

[[a__b.restore]]
id = "c"
kind = "manual"
instructions = "Check the UPS."

[[z.restore]]
id = "later"
kind = "manual"
instructions = "Check the core switch."
"#;

/// A folder with the inventory and runbooks above, and a state folder.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        for (sub, text) in [("inventory", INVENTORY), ("runbooks", RUNBOOKS)] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            std::fs::write(dir.path().join(sub).join("site.toml"), text).unwrap();
        }
        Site { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    /// Runs reprise to its end (within a minute: a run that should have been refused would
    /// wait for confirmations forever).
    fn run(&self, args: &[&str]) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
            .arg("--state-dir")
            .arg("state")
            .args(args)
            .current_dir(self.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let read = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                pipe.read_to_string(&mut text).unwrap();
                text
            })
        };
        let stdout = read(Box::new(child.stdout.take().unwrap()));
        let stderr = read(Box::new(child.stderr.take().unwrap()));
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("reprise {args:?} did not end within a minute");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    }

    /// Starts a new run in the background and waits until its journal exists.
    fn start(&self, args: &[&str]) -> Running {
        let before = self.runs().len();
        let running = self.spawn(args);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.runs().len() == before || !self.journal_path().exists() {
            assert!(Instant::now() < deadline, "no new run for {args:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        running
    }

    /// Starts reprise in the background; it is killed if the test ends first.
    fn spawn(&self, args: &[&str]) -> Running {
        Background(
            Command::new(env!("CARGO_BIN_EXE_reprise"))
                .arg("--state-dir")
                .arg("state")
                .args(args)
                .current_dir(self.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn runs(&self) -> Vec<String> {
        crate::common::run_ids(&self.state())
    }

    fn journal_path(&self) -> PathBuf {
        let id = self.runs().pop().expect("a run");
        self.state().join("runs").join(id).join("journal.jsonl")
    }

    /// The complete lines of the latest journal.
    fn journal(&self) -> Vec<Value> {
        if self.runs().is_empty() {
            return Vec::new();
        }
        let text = std::fs::read_to_string(self.journal_path()).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until the latest journal has an event matching `what`.
    fn wait_for(&self, what: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.state().join("runs").exists() && self.journal().iter().any(&what)) {
            assert!(Instant::now() < deadline, "not seen: {:#?}", self.journal());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn waiting(&self, step: &str) {
        self.wait_for(|e| e["event"] == "waiting_for_operator" && e["step"] == step);
    }

    /// Confirms each step once the latest journal shows it waiting since the run last
    /// started or resumed.
    fn confirm_each(&self, steps: &[&str]) {
        for step in steps {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let events = self.journal();
                let since = events
                    .iter()
                    .rposition(|e| e["event"] == "run_resumed" || e["event"] == "run_started")
                    .unwrap_or(0);
                if events[since..]
                    .iter()
                    .any(|e| e["event"] == "waiting_for_operator" && e["step"] == *step)
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{step} never waited: {events:#?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            let r = confirm(self, step, "Nadia");
            assert!(
                r.code == 0 || r.stderr.contains("already confirmed"),
                "{r:?}"
            );
        }
    }

    /// Starts reprise in the background with its standard error in `log`.
    fn spawn_logged(&self, args: &[&str], log: &Path) -> Running {
        Background(
            Command::new(env!("CARGO_BIN_EXE_reprise"))
                .arg("--state-dir")
                .arg("state")
                .args(args)
                .current_dir(self.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap(),
        )
    }
}

const ALL: [&str; 3] = ["a/b__c", "a__b/c", "z/later"];

type Running = crate::common::Background;

fn confirm(site: &Site, step: &str, by: &str) -> Run {
    site.run(&["confirm", "latest", step, "--by", by])
}

#[test]
fn a_confirmation_is_for_one_exact_step_that_waits_and_the_report_credits_only_it() {
    let site = Site::new();
    let mut run = site.start(&["restore", "--no-prompt"]);
    site.waiting("a/b__c");
    site.waiting("a__b/c");
    // No name, a step that does not wait yet, a step of no run.
    for by in ["", "   ", "\u{1b}\u{7}\r"] {
        let r = confirm(&site, "a/b__c", by);
        assert_eq!(r.code, 2, "{r:?}");
    }
    let r = confirm(&site, "z/later", "Nadia");
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .contains("does not wait for a confirmation: it has not started"),
        "{}",
        r.stderr
    );
    let r = confirm(&site, "a/nothing", "Nadia");
    assert_eq!(r.code, 3, "{r:?}");

    let r = confirm(&site, "a/b__c", "Nadia Amrani");
    assert_eq!(r.code, 0, "{r:?}");
    let r = confirm(&site, "a/b__c", "Someone Else");
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("already confirmed by Nadia Amrani"),
        "{}",
        r.stderr
    );
    site.wait_for(|e| e["event"] == "confirmed" && e["step"] == "a/b__c");
    // Once the step has taken it and finished, a second person is still told who confirmed it.
    site.wait_for(|e| e["event"] == "step_finished" && e["step"] == "a/b__c");
    let r = confirm(&site, "a/b__c", "Someone Else");
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("already confirmed by Nadia Amrani"),
        "{}",
        r.stderr
    );
    // The other step, whose id once mapped to the same file, still waits.
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        !site.journal().iter().any(|e| e["step"] == "a__b/c"
            && e["event"] != "step_started"
            && e["event"] != "waiting_for_operator"),
        "{:#?}",
        site.journal()
    );
    site.waiting("z/later");
    assert_eq!(confirm(&site, "a__b/c", "Karim Benali").code, 0);
    // A name and a note with escape sequences (clear the screen, set the title) and a line
    // break: kept as one line of text, never sent to a terminal as they are.
    let r = site.run(&[
        "confirm",
        "latest",
        "z/later",
        "--by",
        "Sofia\u{1b}]0;owned\u{7} Haddad\nline2",
        "--note",
        "both on\u{1b}[2J\nsecond line",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(run.wait(Duration::from_secs(60)), 0);
    let shown = site.run(&["show", "latest"]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(
        shown.stdout.contains("Sofia ]0;owned  Haddad line2")
            && !shown.stdout.contains('\u{1b}')
            && !shown.stdout.contains('\u{7}'),
        "{}",
        shown.stdout
    );

    // Over: nothing waits any more.
    let r = confirm(&site, "a__b/c", "Nadia");
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("is over (succeeded)"), "{}", r.stderr);
    let report = site.run(&["report", "latest", "--format", "json"]);
    assert_eq!(report.code, 0, "{report:?}");
    let report: Value = serde_json::from_str(&report.stdout).unwrap();
    let mut credited: Vec<(String, String)> = report["manual"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["step"].as_str().unwrap().to_string(),
                m["by"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    credited.sort();
    assert_eq!(
        credited,
        [
            ("a/b__c".to_string(), "Nadia Amrani".to_string()),
            ("a__b/c".to_string(), "Karim Benali".to_string()),
            (
                "z/later".to_string(),
                "Sofia ]0;owned  Haddad line2".to_string()
            ),
        ]
    );
    let md = site.run(&["report", "latest"]);
    assert!(
        md.stdout.contains("Sofia ]0;owned  Haddad line2") && !md.stdout.contains('\u{1b}'),
        "{}",
        md.stdout
    );
}

/// A finished run of the site, confirmed by one person.
fn finished_run(site: &Site) -> String {
    let mut run = site.start(&["restore", "--no-prompt"]);
    site.confirm_each(&ALL);
    assert_eq!(run.wait(Duration::from_secs(60)), 0);
    site.runs().pop().unwrap()
}

#[test]
fn run_ids_are_taken_at_the_door_never_paths() {
    let site = Site::new();
    finished_run(&site);
    // A journal outside the state folder.
    let outside = site.path().join("outside/runs/evil");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(site.journal_path(), outside.join("journal.jsonl")).unwrap();
    for args in [
        vec!["report", "../../outside/runs/evil"],
        vec!["show", "../../outside/runs/evil"],
        vec!["resume", "../outside/runs/evil", "--no-prompt"],
        vec!["confirm", "/tmp", "a/b__c", "--by", "Nadia"],
        vec!["show", "runs/.."],
    ] {
        let r = site.run(&args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("is not a run id"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{args:?}: {}", r.stdout);
    }
}

#[test]
fn a_damaged_journal_is_listed_as_such_and_hides_no_other_run() {
    let site = Site::new();
    let good = finished_run(&site);
    let runs = site.state().join("runs");
    let text = std::fs::read_to_string(runs.join(&good).join("journal.jsonl")).unwrap();
    // A copy with a bad line in the middle (as an older version left after a torn write).
    let damaged = "20300101-000000-restore";
    std::fs::create_dir_all(runs.join(damaged)).unwrap();
    let head = text.lines().next().unwrap().replace(good.as_str(), damaged);
    let mut lines: Vec<&str> = text.lines().collect();
    lines[0] = &head;
    lines[3] = r#"{"event":"step_started","at":"{"event":"run_resumed"}"#;
    std::fs::write(
        runs.join(damaged).join("journal.jsonl"),
        lines.join("\n") + "\n",
    )
    .unwrap();

    let r = site.run(&["runs"]);
    assert_eq!(r.code, 0, "{r:?}");
    let line = |id: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id}: {}", r.stdout))
            .to_string()
    };
    assert!(line(&good).contains("recovered"), "{}", r.stdout);
    assert!(line(damaged).contains("DAMAGED"), "{}", r.stdout);
    assert!(
        r.stdout.contains("journal.jsonl:4: corrupt journal line"),
        "{}",
        r.stdout
    );
    let json: Value = serde_json::from_str(&site.run(&["runs", "--json"]).stdout).unwrap();
    let listed = json.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed[1]["damaged"].as_str().unwrap().contains(":4:"),
        "{json}"
    );
    assert_eq!(site.run(&["history"]).code, 0);
    assert_eq!(site.run(&["report", &good]).code, 0);
    // `show` shows what can be read, and where it stops.
    let shown = site.run(&["show", damaged]);
    assert_eq!(shown.code, 4, "{shown:?}");
    assert!(
        shown.stdout.contains("started: restore"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stderr.contains(":4: corrupt journal line"),
        "{}",
        shown.stderr
    );
}

#[test]
fn resume_after_a_torn_last_line_cuts_it_and_says_so() {
    let site = Site::new();
    let mut run = site.start(&["restore", "--no-prompt"]);
    site.waiting("a/b__c");
    run.signal(libc::SIGKILL);
    run.wait(Duration::from_secs(60));
    // The orchestrator died in the middle of writing a line.
    let torn = br#"{"event":"step_finished","at":"2026-1"#;
    let path = site.journal_path();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, torn).unwrap();
    drop(f);
    let shown = site.run(&["show", "latest"]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(
        shown.stdout.contains("cut short by a crash"),
        "{}",
        shown.stdout
    );

    let mut resumed = site.spawn(&["resume", "latest", "--no-prompt"]);
    site.wait_for(|e| e["event"] == "run_resumed");
    site.confirm_each(&ALL);
    assert_eq!(resumed.wait(Duration::from_secs(60)), 0);
    // Every line of the journal is whole; the repair is its own event, before the resume.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect(l))
        .collect();
    let repaired = events
        .iter()
        .position(|e| e["event"] == "journal_repaired")
        .expect("the repair is journaled");
    assert_eq!(events[repaired + 1]["event"], "run_resumed");
    assert_eq!(events[repaired]["bytes"], torn.len());
    let kept = events[repaired]["kept_in"].as_str().unwrap();
    assert_eq!(
        std::fs::read(path.parent().unwrap().join(kept)).unwrap(),
        torn
    );
    for args in [
        vec!["show", "latest"],
        vec!["report", "latest"],
        vec!["runs"],
    ] {
        let r = site.run(&args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        if args[0] != "runs" {
            assert!(
                r.stdout.contains("cut short by a crash"),
                "{args:?}: {}",
                r.stdout
            );
        }
    }
}

#[test]
fn resume_accepts_the_same_files_however_their_folders_are_spelled() {
    let site = Site::new();
    let mut run = site.start(&[
        "--inventory",
        "./inventory",
        "--runbooks",
        "runbooks",
        "restore",
        "--no-prompt",
    ]);
    site.waiting("a/b__c");
    run.signal(libc::SIGKILL);
    run.wait(Duration::from_secs(60));
    let name = site
        .path()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let inventory = format!("../{name}/inventory");
    let runbooks = site.path().join("runbooks");
    let mut resumed = site.spawn(&[
        "--inventory",
        &inventory,
        "--runbooks",
        runbooks.to_str().unwrap(),
        "resume",
        "latest",
        "--no-prompt",
    ]);
    site.wait_for(|e| e["event"] == "run_resumed");
    site.confirm_each(&ALL);
    assert_eq!(resumed.wait(Duration::from_secs(60)), 0);
    // Changed files are still refused.
    let site2 = Site::new();
    let mut run = site2.start(&["restore", "--no-prompt"]);
    site2.waiting("a/b__c");
    run.signal(libc::SIGKILL);
    run.wait(Duration::from_secs(60));
    std::fs::write(
        site2.path().join("runbooks/site.toml"),
        RUNBOOKS.replace("the UPS", "both UPS"),
    )
    .unwrap();
    let r = site2.run(&["resume", "latest", "--no-prompt"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("changed since run"), "{}", r.stderr);
}

#[test]
fn the_state_lock_refuses_what_it_cannot_vouch_for_and_is_released_on_a_signal() {
    let site = Site::new();
    let lock = site.state().join("runs/.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    // A lock that is not one: refused, left as it is.
    std::fs::write(&lock, "\u{0}\u{0}garbage").unwrap();
    let r = site.run(&["restore", "--no-prompt"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(
        r.stderr.contains("not a lock reprise can read") && r.stderr.contains("remove it"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(&lock).unwrap(), b"\0\0garbage");
    // A lock taken on another machine: refused, with how to clear it.
    std::fs::write(
        &lock,
        r#"{"pid":4242,"machine":"pra-orchestrator","run_id":"20261128-031000-failover","operator":"karim","since":"2026-11-28T03:10:00Z"}"#,
    )
    .unwrap();
    let r = site.run(&["restore", "--no-prompt"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(
        r.stderr.contains("pra-orchestrator")
            && r.stderr.contains(&format!(
                "remove {}",
                Path::new("state/runs/.lock").display()
            )),
        "{}",
        r.stderr
    );
    std::fs::write(&lock, "").unwrap();

    // A run holds it; a second is refused; a signal stops the first, which says why and
    // releases it; the run then resumes.
    for (sig, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
    ] {
        let mut run = site.start(&["restore", "--no-prompt"]);
        site.waiting("a/b__c");
        let second = site.run(&["restore", "--no-prompt"]);
        assert_eq!(second.code, 5, "{second:?}");
        assert!(
            second.stderr.contains("another run holds the lock"),
            "{}",
            second.stderr
        );
        run.signal(sig);
        assert_eq!(run.wait(Duration::from_secs(60)), 130, "{name}");
        let events = site.journal();
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "stop_requested" && e["reason"] == name),
            "{events:#?}"
        );
        assert_eq!(events.last().unwrap()["status"], "interrupted");
        assert_eq!(std::fs::read(&lock).unwrap(), b"", "released");
        let report = site.run(&["report", "latest"]);
        assert!(
            report.stdout.contains(&format!("run interrupted ({name})")),
            "{}",
            report.stdout
        );
    }
    let mut resumed = site.spawn(&["resume", "latest", "--no-prompt"]);
    site.wait_for(|e| e["event"] == "run_resumed");
    site.confirm_each(&ALL);
    assert_eq!(resumed.wait(Duration::from_secs(60)), 0);
    // A lock left by a process killed outright is taken over, and said so.
    let mut run = site.start(&["restore", "--no-prompt"]);
    site.waiting("a/b__c");
    run.signal(libc::SIGKILL);
    run.wait(Duration::from_secs(60));
    assert!(
        !std::fs::read(&lock).unwrap().is_empty(),
        "the dead run's name is left"
    );
    let log = site.path().join("resume.log");
    let mut resumed = site.spawn_logged(&["resume", "latest", "--no-prompt"], &log);
    site.wait_for(|e| e["event"] == "run_resumed");
    site.confirm_each(&ALL);
    assert_eq!(resumed.wait(Duration::from_secs(60)), 0);
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("note: took over the lock left by run"),
        "{said}"
    );
}

/// A copy of a fixture journal as run `id`, started at `at`, ending with `status` (none: it
/// never finished), without its steps when `steps` is false.
fn planted(state: &Path, fixture: &str, id: &str, at: &str, status: Option<&str>, steps: bool) {
    let text =
        std::fs::read_to_string(root().join(format!("tests/fixtures/journals/{fixture}.jsonl")))
            .unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut e: Value = serde_json::from_str(line).unwrap();
        match e["event"].as_str().unwrap() {
            "run_started" => {
                e["run_id"] = id.into();
                e["at"] = at.into();
            }
            "run_finished" => match status {
                Some(s) => e["status"] = s.into(),
                None => continue,
            },
            _ if !steps => continue,
            _ => {}
        }
        out.push_str(&serde_json::to_string(&e).unwrap());
        out.push('\n');
    }
    let dir = state.join("runs").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("journal.jsonl"), out).unwrap();
}

#[test]
fn prune_keeps_the_newest_runs_and_every_run_still_needed() {
    let site = Site::new();
    let state = site.state();
    planted(
        &state,
        "drill",
        "20260101-000000-drill",
        "2026-01-01T00:00:00Z",
        Some("succeeded"),
        true,
    );
    planted(
        &state,
        "drill",
        "20260201-000000-drill",
        "2026-02-01T00:00:00Z",
        Some("failed"),
        false,
    );
    for day in 1..=4 {
        planted(
            &state,
            "emergency",
            &format!("2026030{day}-000000-failover"),
            &format!("2026-03-0{day}T00:00:00Z"),
            Some("partial"),
            true,
        );
    }
    planted(
        &state,
        "manual",
        "20260305-000000-failover",
        "2026-03-05T00:00:00Z",
        None,
        true,
    );
    planted(
        &state,
        "emergency",
        "20260306-000000-failover",
        "2026-03-06T00:00:00Z",
        Some("partial"),
        true,
    );
    let damaged = state.join("runs/20260306-000000-failover/journal.jsonl");
    let text = std::fs::read_to_string(&damaged).unwrap().replacen(
        "\"event\":\"step_started\"",
        "\"event\":\"step_sta",
        1,
    );
    std::fs::write(&damaged, text).unwrap();
    planted(
        &state,
        "emergency",
        "20260401-000000-failover",
        "2026-04-01T00:00:00Z",
        Some("succeeded"),
        true,
    );
    planted(
        &state,
        "emergency",
        "20260402-000000-failover",
        "2026-04-02T00:00:00Z",
        Some("succeeded"),
        true,
    );
    let before = site.runs();
    let history = site.run(&["history"]).stdout;
    assert!(history.contains("20260101-000000-drill"), "{history}");

    let dry = site.run(&["prune", "--keep-runs", "2", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(site.runs(), before, "a dry run removes nothing");
    assert!(
        dry.stdout.contains("would remove 20260201-000000-drill"),
        "{}",
        dry.stdout
    );
    let r = site.run(&["prune", "--keep-runs", "2"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("removed 20260201-000000-drill"),
        "{}",
        r.stdout
    );
    assert_eq!(
        site.runs(),
        [
            "20260101-000000-drill", // the last drill, and the one that recovered each service
            "20260305-000000-failover", // never finished
            "20260306-000000-failover", // its journal is damaged
            "20260401-000000-failover",
            "20260402-000000-failover",
        ]
    );
    assert!(
        r.stdout
            .contains("kept 20260305-000000-failover: it never finished"),
        "{}",
        r.stdout
    );
    assert_eq!(
        site.run(&["history"]).stdout,
        history,
        "history is the same"
    );

    // A run prunes once it is over, under its own lock.
    let mut run = site.start(&["restore", "--no-prompt", "--keep-runs", "1"]);
    site.confirm_each(&ALL);
    assert_eq!(run.wait(Duration::from_secs(60)), 0);
    let left = site.runs();
    assert_eq!(left.len(), 5, "{left:?}");
    // The newest failover left its vms on their recovery host, and nothing brought them back:
    // a restore reads it when that host cannot be asked.
    assert_eq!(
        left[..4],
        [
            "20260101-000000-drill",
            "20260305-000000-failover",
            "20260306-000000-failover",
            "20260402-000000-failover",
        ]
    );
    let dry = site.run(&["prune", "--keep-runs", "1", "--dry-run"]);
    assert!(
        dry.stdout.contains(
            "kept 20260402-000000-failover: it left vms dc1, dc2, erp-app, erp-db, files, lms, planning, print on their recovery host, and nothing brought them back since"
        ),
        "{}",
        dry.stdout
    );
}
