//! Runs of the example on the lab: real sshd per host on loopback, real qcow2 images, process
//! VMs, and the example's own runbooks. Each test has its own lab on 127.N.x.x.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Run, reprise, root};

/// The secrets the example's runbooks read, as an operator exports them before a run (the
/// lab's stand-ins accept any value).
const LAB_SECRETS: &[(&str, &str)] = &[("UPS_NUT_PASSWORD", "lab-secret")];

/// A lab for one test; brought down on drop.
pub(crate) struct Lab {
    dir: tempfile::TempDir,
    _net: crate::common::NetLock,
}

impl Lab {
    pub(crate) fn up(net: u8) -> Lab {
        let net_lock = crate::common::NetLock::take(net);
        let dir = tempfile::tempdir().unwrap();
        let lab = dir.path().join("lab");
        let run = reprise(
            &root(),
            &[
                "lab",
                "up",
                "--lab-dir",
                lab.to_str().unwrap(),
                "--net",
                &net.to_string(),
            ],
        );
        assert_eq!(
            run.code, 0,
            "lab up failed (run scripts/test.sh, which installs sshd and qemu-img): {run:?}"
        );
        Lab {
            dir,
            _net: net_lock,
        }
    }

    pub(crate) fn lab(&self) -> PathBuf {
        self.dir.path().join("lab")
    }

    pub(crate) fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `reprise` with the lab's overlay and state folder.
    pub(crate) fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<String> {
        let mut args = vec![
            "--overlay".to_string(),
            self.lab()
                .join("overlay.toml")
                .to_string_lossy()
                .to_string(),
            "--state-dir".to_string(),
            self.state().to_string_lossy().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    pub(crate) fn run(&self, extra: &[&str]) -> Run {
        let args = self.args(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::common::reprise_with_env(&root(), &refs, LAB_SECRETS)
    }

    fn spawn(&self, extra: &[&str]) -> Child {
        self.spawn_in(&root(), extra)
    }

    /// [`Self::spawn`] with the inventory and runbooks of `dir`.
    fn spawn_in(&self, dir: &Path, extra: &[&str]) -> Child {
        Command::new(env!("CARGO_BIN_EXE_reprise"))
            .args(self.args(extra))
            .envs(LAB_SECRETS.iter().copied())
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// The primary copies of `vms` stop, as when their site is lost.
    pub(crate) fn primary_lost(&self, vms: &[&str]) {
        crate::common::primary_lost(&self.lab(), vms);
    }

    /// What `reprise lab status` says of this lab.
    pub(crate) fn lab_status(&self) -> String {
        reprise(
            &root(),
            &["lab", "status", "--lab-dir", self.lab().to_str().unwrap()],
        )
        .stdout
    }

    pub(crate) fn host_root(&self, host: &str) -> PathBuf {
        self.lab().join("hosts").join(host).join("root")
    }

    pub(crate) fn journal(&self) -> Vec<serde_json::Value> {
        let runs = self.state().join("runs");
        // The run may be starting (no journal yet) or writing a line: read whole lines only.
        let Some(last) = crate::common::run_ids(&self.state()).pop() else {
            return Vec::new();
        };
        let last = runs.join(last);
        let text = std::fs::read_to_string(last.join("journal.jsonl")).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map(|i| i + 1).unwrap_or(0)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// An emergency failover of erp-db alone, its primary lost, which must succeed; the copy
    /// its vm started from (the run's one `replica_point_used` event).
    fn emergency_failover_of_erp_db(&self) -> Vec<serde_json::Value> {
        self.primary_lost(&["erp-db"]);
        let status = self.run_confirming(
            &[
                "failover",
                "--emergency",
                "--service",
                "erp-db",
                "--only",
                "--yes",
                "--no-prompt",
            ],
            Duration::from_secs(90),
        );
        assert!(status.success(), "{status:?}");
        let used: Vec<serde_json::Value> = self
            .journal()
            .into_iter()
            .filter(|e| e["event"] == "replica_point_used")
            .collect();
        assert_eq!(used.len(), 1, "{used:?}");
        used
    }

    /// Runs reprise in the background, confirming its manual steps from this process, until it
    /// exits; panics after `within`.
    pub(crate) fn run_confirming(
        &self,
        extra: &[&str],
        within: Duration,
    ) -> std::process::ExitStatus {
        self.run_confirming_in(&root(), extra, within)
    }

    /// [`Self::run_confirming`] with the inventory and runbooks of `dir`.
    pub(crate) fn run_confirming_in(
        &self,
        dir: &Path,
        extra: &[&str],
        within: Duration,
    ) -> std::process::ExitStatus {
        let mut child = self.spawn_in(dir, extra);
        let mut exit = None;
        self.confirm_until(
            || {
                exit = child.try_wait().unwrap();
                exit.is_some()
            },
            within,
        );
        exit.unwrap_or_else(|| {
            let _ = child.kill();
            panic!("reprise {extra:?} did not finish within {within:?}");
        })
    }

    /// Confirms, from another process, every manual step the latest run waits for, until
    /// `done` returns true or the deadline.
    fn confirm_until(&self, mut done: impl FnMut() -> bool, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline && !done() {
            if self.state().join("runs").exists() {
                let all = self.journal();
                // What the run asks since it last started or was resumed: a step waiting
                // before a cut is asked again by the resumed run once it gets there (before,
                // `confirm` rightly says it is running and does not ask).
                let since = all
                    .iter()
                    .rposition(|e| e["event"] == "run_started" || e["event"] == "run_resumed")
                    .unwrap_or(0);
                let events = &all[since..];
                for e in events {
                    if e["event"] == "waiting_for_operator" {
                        let step = e["step"].as_str().unwrap();
                        let confirmed = events
                            .iter()
                            .any(|c| c["event"] == "confirmed" && c["step"] == step);
                        if !confirmed {
                            let run = self.run(&[
                                "confirm",
                                "latest",
                                step,
                                "--by",
                                "Sofia Haddad",
                                "--note",
                                "checked",
                            ]);
                            // Given already (the run had not yet seen it, or has since
                            // finished the step or itself): said, not redone.
                            let again = run.code == 3
                                && (run.stderr.contains("already confirmed")
                                    || run.stderr.contains("it finished (done)")
                                    || run.stderr.contains("is over (succeeded)"));
                            assert!(run.code == 0 || again, "{run:?}");
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = reprise(
            &root(),
            &["lab", "down", "--lab-dir", self.lab().to_str().unwrap()],
        );
    }
}

fn sha256_tree(dir: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_file() {
            let o = Command::new("sha256sum").arg(e.path()).output().unwrap();
            out.insert(
                e.file_name().to_string_lossy().to_string(),
                String::from_utf8_lossy(&o.stdout)[..64].to_string(),
            );
        }
    }
    out
}

fn statuses(events: &[serde_json::Value]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for e in events.iter().filter(|e| e["event"] == "step_finished") {
        out.insert(
            e["step"].as_str().unwrap().to_string(),
            e["status"].as_str().unwrap().to_string(),
        );
    }
    out
}

fn plan(lab: &Lab, mode: &[&str]) -> serde_json::Value {
    let mut args = vec!["plan"];
    args.extend(mode);
    args.push("--json");
    let run = lab.run(&args);
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(&run.stdout).unwrap()
}

#[test]
fn drill_of_the_example_recovers_in_dependency_order_and_leaves_replicas_untouched() {
    let lab = Lab::up(101);
    let replicas = lab.host_root("hv-pra").join("srv/replicas/images");
    let before = sha256_tree(&replicas);
    assert!(
        !before.is_empty(),
        "no replica images in {}",
        replicas.display()
    );
    let run = lab.run(&["drill", "--no-prompt"]);
    assert_eq!(run.code, 0, "{run:?}");
    let events = lab.journal();
    let status = statuses(&events);
    let plan = plan(&lab, &["drill"]);
    // Every step done, each started only after everything it waits for had finished.
    let at = |event: &str, step: &str| {
        events
            .iter()
            .find(|e| e["event"] == event && e["step"] == step)
            .and_then(|e| e["at"].as_str())
            .unwrap_or_else(|| panic!("no {event} for {step}"))
            .to_string()
    };
    for step in plan["steps"].as_array().unwrap() {
        let id = step["id"].as_str().unwrap();
        assert_eq!(status.get(id).map(String::as_str), Some("done"), "{id}");
        for a in step["after"].as_array().unwrap() {
            assert!(
                at("step_started", id) >= at("step_finished", a.as_str().unwrap()),
                "{id} started before {a} finished"
            );
        }
    }
    // Cleanup removed the drill copies, their overlays and the run's folder of them; the
    // replicas did not change.
    let overlays = lab.host_root("hv-pra").join("var/lib/libvirt/drill");
    let left: Vec<_> = std::fs::read_dir(&overlays)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "overlays left behind: {left:?}");
    assert_eq!(sha256_tree(&replicas), before);
    let status_text = reprise(
        &root(),
        &["lab", "status", "--lab-dir", lab.lab().to_str().unwrap()],
    )
    .stdout;
    assert!(!status_text.contains("drill copy"), "{status_text}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn planned_failover_then_failback_with_confirmations_from_another_process() {
    let lab = Lab::up(102);
    for mode in ["failover", "failback"] {
        let exit = lab.run_confirming(&[mode, "--yes", "--no-prompt"], Duration::from_secs(240));
        let failed: Vec<serde_json::Value> = lab
            .journal()
            .into_iter()
            .filter(|e| {
                e["status"] == "failed" || (e["event"] == "step_output" && e["exit_code"] != 0)
            })
            .collect();
        assert!(exit.success(), "{mode} failed: {failed:#?}");
        let events = lab.journal();
        let confirmations: Vec<_> = events
            .iter()
            .filter(|e| e["event"] == "confirmed")
            .collect();
        assert!(!confirmations.is_empty(), "{mode} had no manual step");
        assert!(confirmations.iter().all(|c| c["by"] == "Sofia Haddad"));
        let status = reprise(
            &root(),
            &["lab", "status", "--lab-dir", lab.lab().to_str().unwrap()],
        )
        .stdout;
        let side = if mode == "failover" {
            "recovery (hv-pra"
        } else {
            "primary (hv-main"
        };
        let erp = status
            .lines()
            .find(|l| l.trim_start().starts_with("erp-db"))
            .unwrap();
        assert!(erp.contains(side), "after {mode}: {erp}");
        assert!(
            !erp.contains(", "),
            "erp-db runs on both sites after {mode}: {erp}"
        );
    }
}

/// A planned failover stops each vm before its final sync: its journal says which steps were
/// stops, and the report counts nothing lost for a vm started from the point taken after its
/// stop, and nothing "not measured".
#[test]
fn a_planned_failover_from_a_final_sync_after_the_stop_reports_no_data_lost() {
    let lab = Lab::up(237);
    let exit = lab.run_confirming(
        &["failover", "--yes", "--no-prompt"],
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:#?}", lab.journal());
    let events = lab.journal();
    let steps = events[0]["plan"]["steps"].as_array().unwrap();
    let stop = steps
        .iter()
        .find(|s| s["id"] == "erp-db/stop-primary")
        .unwrap();
    assert_eq!(stop["action"], "stop", "{stop}");
    let report = lab.run(&["report", "latest", "--format", "json"]);
    assert_eq!(report.code, 0, "{report:?}");
    let r: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    let service = |id: &str| {
        r["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap()
            .clone()
    };
    for id in ["erp-db", "erp-app", "planning", "lms", "files", "print"] {
        let s = service(id);
        assert_eq!(s["data_loss_s"], 0.0, "{s}");
        assert_eq!(s["rpo_met"], true, "{s}");
    }
    // Two vms: dc2's point is taken before dc1 stops, and the journal says no more than that
    // the service's stops ended by then: its loss is counted to dc1's stop, never nothing.
    let directory = service("directory");
    assert!(directory["data_loss_s"].as_f64().is_some(), "{directory}");
    // A backup set's final copy: nothing stops what writes to its folder.
    let unknown: Vec<&str> = r["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "data_loss_unknown")
        .map(|p| p["service"].as_str().unwrap())
        .collect();
    assert!(unknown.iter().all(|s| *s == "backups"), "{unknown:?}");
}

#[test]
fn emergency_failover_keeps_going_around_a_failure() {
    let lab = Lab::up(103);
    // The primary site is gone, and so is the Casablanca firewall.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.lab().join("lab.json")).unwrap())
            .unwrap();
    for (host, h) in state["hosts"].as_object().unwrap() {
        if h["site_role"] == "primary" || host == "fw-casa" {
            let pid =
                std::fs::read_to_string(lab.lab().join("hosts").join(host).join("run/sshd.pid"))
                    .unwrap();
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
    let exit = lab.run_confirming(
        &[
            "failover",
            "--emergency",
            "--yes",
            "--no-prompt",
            "--connect-timeout",
            "2",
        ],
        Duration::from_secs(240),
    );
    assert_eq!(exit.code(), Some(1), "a partial recovery exits 1");
    let events = lab.journal();
    let status = statuses(&events);
    let plan = plan(&lab, &["failover", "--emergency"]);
    let failed: Vec<&String> = status
        .iter()
        .filter(|(_, s)| *s == "failed")
        .map(|(k, _)| k)
        .collect();
    assert!(!failed.is_empty(), "{status:?}");
    for step in plan["steps"].as_array().unwrap() {
        let id = step["id"].as_str().unwrap();
        let waits_on_bad = step["after"].as_array().unwrap().iter().any(|a| {
            matches!(
                status.get(a.as_str().unwrap()).map(String::as_str),
                Some("failed" | "blocked" | "timed_out")
            )
        });
        if waits_on_bad {
            assert_eq!(status.get(id).map(String::as_str), Some("blocked"), "{id}");
        }
    }
    // Branches that do not depend on the failure finished.
    for independent in ["storage-pra", "hv-pra", "firewall-pra"] {
        assert!(
            status
                .iter()
                .any(|(k, s)| k.starts_with(&format!("{independent}/")) && s == "done"),
            "{independent}: {status:?}"
        );
    }
    assert!(status.values().any(|s| s == "blocked"));
}

#[test]
fn a_killed_run_resumes_without_repeating_finished_steps() {
    let lab = Lab::up(104);
    let mut child = lab.spawn(&["drill", "--no-prompt"]);
    // Kill -9 once a few steps are done.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = if lab.state().join("runs").exists() {
            lab.journal()
                .iter()
                .filter(|e| e["event"] == "step_finished")
                .count()
        } else {
            0
        };
        if done >= 8 {
            break;
        }
        assert!(Instant::now() < deadline, "the drill did not progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let before = statuses(&lab.journal());
    let exit = lab.run_confirming(
        &["resume", "latest", "--no-prompt"],
        Duration::from_secs(120),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let events = lab.journal();
    assert!(events.iter().any(|e| e["event"] == "run_resumed"));
    // No step that had finished was started again after the resume.
    let resumed_at = events
        .iter()
        .position(|e| e["event"] == "run_resumed")
        .unwrap();
    for (step, s) in &before {
        if s == "done" {
            assert!(
                !events[resumed_at..]
                    .iter()
                    .any(|e| e["event"] == "step_started" && e["step"] == step.as_str()),
                "{step} ran twice"
            );
        }
    }
    // Each drill copy was started exactly once on hv-pra (the stand-ins record every call).
    let calls = std::fs::read_to_string(lab.lab().join("hosts/hv-pra/calls.log")).unwrap();
    let mut starts: HashMap<&str, usize> = HashMap::new();
    for line in calls.lines() {
        if let Some(rest) = line.split(" lab-vm start ").nth(1) {
            *starts
                .entry(rest.split_whitespace().next().unwrap())
                .or_default() += 1;
        }
    }
    assert!(!starts.is_empty());
    assert!(starts.values().all(|&n| n == 1), "{starts:?}");
    assert_eq!(
        statuses(&events).values().filter(|s| *s != "done").count(),
        0
    );
}

#[test]
fn failback_refuses_while_a_service_runs_on_both_sites() {
    let lab = Lab::up(105);
    // An emergency failover leaves the primary copies alone: here the primary site was not
    // really gone, its VMs running next to the recovery copies. The failover's health checks
    // find each such vm on both sites: a split brain, exit 6.
    let exit = lab.run_confirming(
        &["failover", "--emergency", "--yes", "--no-prompt"],
        Duration::from_secs(240),
    );
    assert_eq!(exit.code(), Some(6), "{:?}", lab.journal().last());
    assert!(
        lab.journal()
            .iter()
            .any(|e| e["event"] == "split_brain" && e["vm"] == "erp-db"),
        "{:#?}",
        lab.journal()
    );
    let runs_before = std::fs::read_dir(lab.state().join("runs")).unwrap().count();
    let run = lab.run(&["failback", "--yes", "--no-prompt"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains("refusing to failback"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("erp-db (vm erp-db runs on hv-main and on hv-pra)"),
        "{}",
        run.stderr
    );
    // Nothing was started: no new run.
    assert_eq!(
        std::fs::read_dir(lab.state().join("runs")).unwrap().count(),
        runs_before
    );
}

#[test]
fn a_failback_that_copies_nothing_back_never_starts_a_vm_on_its_disks_of_before() {
    let lab = Lab::up(245);
    let exit = lab.run_confirming(
        &[
            "failover",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    // A failback runbook that forgot to copy erp-db back before starting it on hv-main.
    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    let erp = edited.path().join("runbooks/erp.toml");
    let text = std::fs::read_to_string(&erp).unwrap();
    let sync_back = text.find("id = \"sync-back\"").unwrap();
    let from = text[..sync_back].rfind("[[erp-db.failback]]").unwrap();
    let to = sync_back + text[sync_back..].find("[[erp-db.failback]]").unwrap();
    std::fs::write(&erp, format!("{}{}", &text[..from], &text[to..])).unwrap();
    // Refused before it starts: nothing is stopped on the recovery side (no new run).
    let runs = || std::fs::read_dir(lab.state().join("runs")).unwrap().count();
    let (runs_before, calls_before) = (runs(), calls(&lab, "hv-pra"));
    let args = lab.args(&[
        "failback",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = crate::common::reprise_with_env(edited.path(), &refs, LAB_SECRETS);
    assert_eq!(refused.code, 7, "{refused:?}");
    assert!(
        refused.stderr.contains("ran on its recovery copies")
            && refused.stderr.contains("add a `replicate` step")
            && !refused.stderr.contains("--force"),
        "{}",
        refused.stderr
    );
    assert_eq!(runs(), runs_before, "a refused failback started a run");
    let since = calls(&lab, "hv-pra")[calls_before.len()..].to_string();
    assert!(!since.contains(" stop "), "hv-pra was stopped: {since}");
    // --force does not pass it: what the vm wrote would be lost.
    let args = lab.args(&[
        "failback",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
        "--force",
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let forced = crate::common::reprise_with_env(edited.path(), &refs, LAB_SECRETS);
    assert_eq!(forced.code, 7, "{forced:?}");
    assert_eq!(runs(), runs_before, "a forced failback started a run");
    // The recovery copies still hold what the vm wrote there: still leased to it.
    assert_erp_db_copies_leased_live(&lab);
}

#[test]
fn a_failed_planned_failover_undoes_completed_steps_in_reverse_order() {
    let lab = Lab::up(106);
    // The recovery hypervisor is down: its first step fails after the network steps are done.
    let pid = std::fs::read_to_string(lab.lab().join("hosts/hv-pra/run/sshd.pid")).unwrap();
    let _ = Command::new("kill").arg(pid.trim()).status();
    // The readiness check finds the recovery side unreachable: the failover does not start
    // (production is not stopped for a recovery side that cannot take over).
    let runs = || {
        std::fs::read_dir(lab.state().join("runs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let runs_before = runs();
    let refused = lab.run(&["failover", "--yes", "--no-prompt", "--connect-timeout", "2"]);
    assert_eq!(refused.code, 7, "{refused:?}");
    assert!(
        refused.stderr.contains("ssh hv-pra") && refused.stderr.contains("--force"),
        "{}",
        refused.stderr
    );
    assert_eq!(runs(), runs_before, "a refused failover started a run");
    // Forced, it starts, says so in its journal, and fails on hv-pra.
    let exit = lab.run_confirming(
        &[
            "failover",
            "--yes",
            "--no-prompt",
            "--connect-timeout",
            "2",
            "--force",
        ],
        Duration::from_secs(240),
    );
    assert_eq!(exit.code(), Some(1));
    let events = lab.journal();
    let forced: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "readiness_forced")
        .collect();
    assert_eq!(forced.len(), 1, "{events:#?}");
    assert!(
        forced[0]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("ssh hv-pra")),
        "{}",
        forced[0]
    );
    let report = lab.run(&["report", "latest", "--format", "md"]);
    assert!(report.stdout.contains("--force"), "{}", report.stdout);
    let status = statuses(&events);
    let failed: Vec<&String> = status
        .iter()
        .filter(|(_, s)| *s == "failed")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(failed.len(), 1, "{status:?}");
    let on_hv_pra = events.iter().any(|e| {
        e["event"] == "step_started" && e["step"] == failed[0].as_str() && e["host"] == "hv-pra"
    });
    assert!(on_hv_pra, "{} did not run on hv-pra", failed[0]);
    // Steps done before the failure that have an undo were undone, last done first.
    let done_order: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step_finished" && e["status"] == "done")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    let undone: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "undo_finished")
        .map(|e| {
            assert_eq!(e["ok"], true, "{e}");
            e["step"].as_str().unwrap()
        })
        .collect();
    assert!(!undone.is_empty(), "nothing was undone");
    let positions: Vec<usize> = undone
        .iter()
        .map(|u| done_order.iter().position(|d| d == u).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] > w[1]),
        "undo order {undone:?} vs done order {done_order:?}"
    );
    // A backup step done (a copy the failover relied on) is undone: its lease released.
    for step in done_order
        .iter()
        .filter(|s| s.starts_with("backups/backup-"))
    {
        assert!(undone.contains(step), "{step} not undone: {undone:?}");
    }
    for set in ["erp", "ad-systemstate", "shares"] {
        let leases = lab
            .host_root("nas-pra")
            .join(format!("srv/backups/{set}.reprise/leases"));
        let held = std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0);
        assert_eq!(held, 0, "{set} still leased: {done_order:?}");
    }
    assert!(matches!(
        events.last().unwrap()["status"].as_str(),
        Some("failed")
    ));
}

/// Runs `cmd` with `args`, failing clearly when it is not installed.
/// Writes 64 KiB of byte `pattern` at the start of the qcow2 image `disk`, as its vm would.
fn write_64k(disk: &Path, pattern: u8) {
    let wrote = tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -P {pattern:#x} 0 64k"),
            disk.to_str().unwrap(),
        ],
    );
    assert!(wrote.status.success(), "{wrote:?}");
}

fn tool(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("{cmd} is needed by this test (scripts/test.sh installs it): {e}")
    })
}

#[test]
fn a_lab_drill_report_prints_to_pdf_in_headless_chromium() {
    let lab = Lab::up(107);
    let run = lab.run(&["drill", "--no-prompt", "--operator", "Karim Benali"]);
    assert_eq!(run.code, 0, "{run:?}");
    // The artifacts stay in target/ci-artifacts for people to look at.
    let out = root().join("target/ci-artifacts");
    std::fs::create_dir_all(&out).unwrap();
    let html = out.join("report-drill.html");
    let run = lab.run(&["report", "latest", "--output", html.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run:?}");
    let page = std::fs::read_to_string(&html).unwrap();
    for forbidden in ["src=", "href=", "url(http", "@import", "<link", "<script"] {
        assert!(!page.contains(forbidden), "{forbidden}");
    }
    let pdf = out.join("report-drill.pdf");
    let run = lab.run(&[
        "report",
        "latest",
        "--pdf",
        "--output",
        pdf.to_str().unwrap(),
    ]);
    assert_eq!(
        run.code, 0,
        "printing needs Chromium (scripts/test.sh installs it): {run:?}"
    );
    let text = tool("pdftotext", &["-layout", pdf.to_str().unwrap(), "-"]);
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Recovery report"), "{text}");
    assert!(text.contains("Result: Recovered"), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&lab.run(&["report", "latest", "--format", "json"]).stdout).unwrap();
    for s in report["services"].as_array().unwrap() {
        assert!(
            text.contains(s["id"].as_str().unwrap()),
            "{} not in the PDF",
            s["id"]
        );
    }
    // A screenshot of the page, as a PNG.
    let png = out.join("report-drill.png");
    let _ = std::fs::remove_file(&png);
    let shot = tool(
        "chromium",
        &[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1000,2600",
            &format!("--screenshot={}", png.display()),
            &format!("file://{}", html.display()),
        ],
    );
    assert!(shot.status.success(), "{shot:?}");
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000);
}

fn sshd_pid(lab: &Lab, host: &str) -> String {
    std::fs::read_to_string(lab.lab().join("hosts").join(host).join("run/sshd.pid"))
        .unwrap()
        .trim()
        .to_string()
}

fn calls(lab: &Lab, host: &str) -> String {
    std::fs::read_to_string(lab.lab().join("hosts").join(host).join("calls.log"))
        .unwrap_or_default()
}

/// The fingerprint `ssh-keygen -lf` gives of a public key file.
fn fingerprint(pubkey: &Path) -> String {
    let out = tool("ssh-keygen", &["-lf", pubkey.to_str().unwrap()]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn a_host_with_a_changed_key_is_refused_and_nothing_runs_on_it() {
    let lab = Lab::up(108);
    // fw-casa is "reinstalled": a new host key, picked up by its sshd on SIGHUP.
    let dir = lab.lab().join("hosts/fw-casa");
    let old = fingerprint(&dir.join("ssh_host_ed25519_key.pub"));
    std::fs::remove_file(dir.join("ssh_host_ed25519_key")).unwrap();
    std::fs::remove_file(dir.join("ssh_host_ed25519_key.pub")).unwrap();
    let made = tool(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-f",
            dir.join("ssh_host_ed25519_key").to_str().unwrap(),
        ],
    );
    assert!(made.status.success(), "{made:?}");
    let new = fingerprint(&dir.join("ssh_host_ed25519_key.pub"));
    assert_ne!(old, new);
    let _ = Command::new("kill")
        .args(["-HUP", &sshd_pid(&lab, "fw-casa")])
        .status();
    std::thread::sleep(Duration::from_millis(500));
    let before = calls(&lab, "fw-casa");

    let run = lab.run(&["drill", "--no-prompt"]);
    assert_eq!(run.code, 1, "{run:?}");
    let events = lab.journal();
    let status = statuses(&events);
    assert_eq!(
        status
            .get("firewall-casa/policy-parses")
            .map(String::as_str),
        Some("failed"),
        "{status:?}"
    );
    let message = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "firewall-casa/policy-parses")
        .and_then(|e| e["message"].as_str())
        .unwrap()
        .to_string();
    assert!(message.contains("fw-casa"), "{message}");
    assert!(
        message.contains(&old) && message.contains(&new),
        "{message}"
    );
    // Nothing ran on it, and its dependants were blocked, not run.
    assert_eq!(calls(&lab, "fw-casa"), before);
    assert_eq!(
        status.get("directory-casa/ldap").map(String::as_str),
        Some("blocked")
    );
    // The recovery site's own branch went on.
    assert_eq!(
        status.get("hv-pra/libvirtd").map(String::as_str),
        Some("done")
    );
}

#[test]
fn a_hung_host_times_out_its_check_at_the_deadline_and_the_run_goes_on() {
    let lab = Lab::up(109);
    // fw-casa's sshd is frozen: connections are accepted by the kernel, never answered.
    let pid = sshd_pid(&lab, "fw-casa");
    let _thaw = crate::common::freeze(&pid);
    let before = calls(&lab, "fw-casa");
    let run = lab.run(&["drill", "--no-prompt", "--connect-timeout", "2"]);
    assert_eq!(run.code, 1, "{run:?}");
    let events = lab.journal();
    let finished = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "firewall-casa/policy-parses")
        .unwrap();
    // A check keeps trying a host that does not answer (it may come back) until its deadline,
    // and no try outlives it by more than the connect timeout and a small margin.
    assert_eq!(finished["status"], "timed_out", "{finished}");
    let plan = plan(&lab, &["drill"]);
    let timeout_s = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "firewall-casa/policy-parses")
        .unwrap()["timeout_s"]
        .as_u64()
        .unwrap();
    let ms = finished["duration_ms"].as_u64().unwrap();
    assert!(ms >= timeout_s * 1000, "{finished}");
    assert!(ms <= timeout_s * 1000 + 2000 + 3000, "{finished}");
    assert!(
        finished["message"]
            .as_str()
            .unwrap()
            .contains("no answer from fw-casa"),
        "{finished}"
    );
    // The rest of the drill did not wait for it.
    let status = statuses(&events);
    assert_eq!(
        status.get("hv-pra/libvirtd").map(String::as_str),
        Some("done")
    );
    // Nothing ran on the frozen host.
    assert_eq!(calls(&lab, "fw-casa"), before);
}

/// How full the filesystem holding `path` is, as `df` counts it (used of used + available).
fn disk_use_percent(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-Pk", "--"])
        .arg(path)
        .output()
        .expect("df runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .lines()
        .nth(1)
        .expect("a df line")
        .split_whitespace()
        .skip(2)
        .take(2)
        .map(|f| f.parse().expect("a number of KiB"))
        .collect();
    fields[0] * 100 / (fields[0] + fields[1]).max(1)
}

fn check_items(json: &serde_json::Value, status: &str) -> Vec<(String, String)> {
    json["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == status)
        .map(|i| {
            (
                i["area"].as_str().unwrap().to_string(),
                i["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn check_finds_a_stopped_sshd_a_stale_replica_a_bad_point_and_a_missing_tool() {
    let lab = Lab::up(41);
    // A copy made without replica points proves nothing: not ready.
    let bare = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/planning-system.qcow2.reprise");
    std::fs::remove_dir_all(&bare).unwrap();
    let run = lab.run(&["check", "--json"]);
    assert_eq!(run.code, 7, "{run:?}");
    let unproven: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    // Nor does it hold a definition to define the vm from.
    assert_eq!(
        check_items(&unproven, "failed"),
        [
            (
                "replicas".to_string(),
                "vm planning (planning-system.qcow2)".to_string()
            ),
            ("definitions".to_string(), "vm planning (drill)".to_string()),
            (
                "definitions".to_string(),
                "vm planning (emergency failover)".to_string()
            )
        ]
    );

    // No replication writes over a file reprise did not make until it is taken as a copy.
    assert!(
        run.stdout
            .contains("reprise did not make it and has no point of it"),
        "{run:?}"
    );
    let run = lab.run(&["replicate"]);
    assert_eq!(run.code, 1, "{run:?}");
    let run = lab.run(&["release", "planning"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = lab.run(&["replicate"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = lab.run(&["check", "--json"]);
    assert_eq!(run.code, 0, "a replicated lab is ready: {run:?}");
    let green: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(green["ready"], true);
    assert_eq!(check_items(&green, "failed"), []);
    // The lab's hosts are folders of this machine's disk: when that disk is itself nearly
    // full, "over 90% full after the next replication" is the truth. Any other warning, or
    // that one on a disk with room, fails.
    let nearly_full = disk_use_percent(&lab.lab()) >= 75;
    let warnings = check_items(&green, "warning");
    assert!(
        warnings.iter().all(|(a, _)| a == "space" && nearly_full),
        "{warnings:?} (this machine's disk is {}% used)",
        disk_use_percent(&lab.lab())
    );
    let mut ok = check_items(&green, "ok");
    ok.extend(warnings);
    for area in [
        "ssh",
        "clock",
        "tools",
        "secrets",
        "replicas",
        "definitions",
        "space",
        "runbooks",
        "rto",
    ] {
        assert!(ok.iter().any(|(a, _)| a == area), "no {area} item: {ok:?}");
    }
    let ssh_hosts = ok.iter().filter(|(a, _)| a == "ssh").count();
    assert_eq!(ssh_hosts, 18, "every host of the example is reached");
    let saved = std::fs::read_to_string(lab.state().join("check/latest.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&saved).unwrap(),
        green
    );

    // The main storage's sshd stops; the ERP data disk was last replicated 3 days ago; a byte
    // of the LMS system disk's copy rots and `reprise verify` marks its point bad; the
    // recovery hypervisor loses its VM tool.
    let killed = tool("kill", &[&sshd_pid(&lab, "san-main")]);
    assert!(killed.status.success());
    let copy = |disk: &str| {
        walk(&lab.host_root("hv-pra"))
            .into_iter()
            .find(|p| p.ends_with(disk))
            .unwrap_or_else(|| panic!("the lab has a copy of {disk} on hv-pra"))
    };
    let points_file = PathBuf::from(format!(
        "{}.reprise/points.json",
        copy("erp-db-data.qcow2").display()
    ));
    let mut points: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&points_file).unwrap()).unwrap();
    let three_days_ago = chrono::Utc::now() - chrono::Duration::days(3);
    for p in points.as_array_mut().unwrap() {
        p["taken_at"] = serde_json::json!(three_days_ago.to_rfc3339());
    }
    std::fs::write(&points_file, serde_json::to_string(&points).unwrap()).unwrap();
    let lms = copy("lms-system.qcow2");
    let mut bytes = std::fs::read(&lms).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&lms, &bytes).unwrap();
    let run = lab.run(&["verify", "lms"]);
    assert_ne!(run.code, 0, "verify finds the rotten byte: {run:?}");
    assert!(
        !tool("sh", &["-c", "command -v lab-vm"]).status.success(),
        "lab-vm must not be on this machine's PATH for this test"
    );
    std::fs::remove_file(lab.lab().join("hosts/hv-pra/bin/lab-vm")).unwrap();

    let run = lab.run(&["check", "--json"]);
    assert_eq!(run.code, 7, "not ready: {run:?}");
    let red: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(red["ready"], false);
    let mut failed = check_items(&red, "failed");
    failed.sort();
    // lms's only point failed verification: nor is there a definition to define it from.
    // erp-db's data disk now says its points were taken three days ago, its system disk not:
    // the two disks share no point of one moment, which a failover would not start from.
    assert_eq!(
        failed,
        [
            ("definitions".to_string(), "vm lms (drill)".to_string()),
            (
                "definitions".to_string(),
                "vm lms (emergency failover)".to_string()
            ),
            ("replicas".to_string(), "vm erp-db".to_string()),
            (
                "replicas".to_string(),
                "vm erp-db (erp-db-data.qcow2)".to_string()
            ),
            (
                "replicas".to_string(),
                "vm lms (lms-system.qcow2)".to_string()
            ),
            ("ssh".to_string(), "san-main".to_string()),
            ("tools".to_string(), "hv-pra".to_string()),
        ]
    );
    let detail = |subject: &str| {
        red["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["subject"] == subject && i["status"] == "failed")
            .unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        detail("vm erp-db").contains("come from two replications")
            && detail("vm erp-db").contains("no good point is on every disk"),
        "{}",
        detail("vm erp-db")
    );
    assert!(
        detail("san-main").contains("127.41.0."),
        "{}",
        detail("san-main")
    );
    assert!(detail("hv-pra").contains("lab-vm"), "{}", detail("hv-pra"));
    let stale = detail("vm erp-db (erp-db-data.qcow2)");
    assert!(stale.contains("3d") && stale.contains("RPO"), "{stale}");
    let bad = detail("vm lms (lms-system.qcow2)");
    assert!(bad.contains("FAILED verification"), "{bad}");

    // The same on a terminal: a table and the verdict naming each problem.
    let run = lab.run(&["check"]);
    assert_eq!(run.code, 7);
    let verdict = run.stdout.lines().last().unwrap();
    assert!(
        verdict.starts_with("verdict: NOT READY: 7 failed"),
        "{verdict}"
    );
    for what in [
        "ssh san-main",
        "tools hv-pra",
        "replicas vm erp-db",
        "replicas vm lms",
        "definitions vm lms (drill)",
    ] {
        assert!(verdict.contains(what), "{verdict}");
    }
}

#[test]
fn a_drill_after_a_check_carries_the_readiness_into_its_report() {
    let lab = Lab::up(42);
    let replicated = lab.run(&["replicate"]);
    assert_eq!(replicated.code, 0, "{replicated:?}");
    let check = lab.run(&["check", "--json"]);
    assert_eq!(check.code, 0, "{check:?}");
    let check: serde_json::Value = serde_json::from_str(&check.stdout).unwrap();
    let drill = lab.run(&["drill", "--service", "erp-app", "--no-prompt"]);
    assert_eq!(drill.code, 0, "{drill:?}");
    let report = lab.run(&["report", "latest", "--format", "json"]);
    assert_eq!(report.code, 0, "{report:?}");
    let report: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    assert_eq!(
        report["readiness"], check,
        "the report shows the check it started from"
    );
    // Each vm started from the newest point of its copy on hv-pra: its age is the data loss.
    let services = report["services"].as_array().unwrap();
    let erp_db = services.iter().find(|s| s["id"] == "erp-db").unwrap();
    let points = erp_db["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{erp_db}");
    assert_eq!(points[0]["item"], "erp-db");
    assert_eq!(
        points[0]["verified"], true,
        "the newest point, verified: {erp_db}"
    );
    let newest = lab.run(&["points", "erp-db"]);
    let id = points[0]["point"].as_str().unwrap();
    assert!(
        newest.stdout.contains(id),
        "{id} is a point of erp-db: {newest:?}"
    );
    let loss = erp_db["data_loss_s"].as_f64().unwrap();
    assert!(
        (0.0..900.0).contains(&loss),
        "the lab's copies are fresh: {loss}"
    );
    assert_eq!(erp_db["rpo_met"], true);
    let md = lab.run(&["report", "latest"]);
    assert!(
        md.stdout.contains("Readiness check before the run"),
        "{}",
        md.stdout
    );
    assert!(!md.stdout.contains("No readiness check was recorded"));
}

/// Where two files first differ.
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .expect("the files differ")
}

#[test]
fn a_failover_after_a_bad_point_starts_from_the_previous_good_one_and_says_so() {
    let lab = Lab::up(43);
    let source = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-system.qcow2");
    assert!(source.exists(), "{}", source.display());
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let copy = walk(&lab.host_root("hv-pra"))
        .into_iter()
        .find(|p| p.ends_with("erp-db-system.qcow2"))
        .unwrap();
    let first = std::fs::read(&copy).unwrap();
    // The database writes; the next replication makes a second point.
    let before = std::fs::read(&source).unwrap();
    write_64k(&source, 0x5a);
    let changed_at = first_difference(&before, &std::fs::read(&source).unwrap());
    std::thread::sleep(Duration::from_millis(1100)); // point ids are per second
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    // A byte of the copy rots where the second point wrote (its times kept: nothing wrote
    // it); verify marks that point bad.
    rot_keeping_time(&copy, changed_at);
    let run = lab.run(&["verify", "erp-db"]);
    assert_ne!(run.code, 0, "{run:?}");

    let used = lab.emergency_failover_of_erp_db();
    let note = used[0]["note"].as_str().unwrap();
    assert!(note.contains("rolled back"), "the run says so: {note}");
    assert_eq!(used[0]["verified"], true, "{:?}", used[0]);
    // The vm started from the first point's content, on both disks.
    assert_eq!(std::fs::read(&copy).unwrap(), first);
    assert!(
        !used[0]["point"].as_str().unwrap().contains('+'),
        "one point for the whole vm: {:?}",
        used[0]
    );
}

#[test]
fn replicate_freezes_a_running_vm_around_its_copy_and_copies_nothing_without_a_snapshot() {
    let lab = Lab::up(45);
    // The dry run shows the driver's hooks around the copies.
    let plan = lab.run(&["replicate", "--dry-run", "--service", "erp-db"]);
    assert_eq!(plan.code, 0, "{plan:?}");
    let lines: Vec<&str> = plan.stdout.lines().collect();
    assert!(
        lines[1].contains("on hv-main: lab-vm freeze erp-db"),
        "{}",
        plan.stdout
    );
    assert!(
        lines
            .last()
            .unwrap()
            .contains("on hv-main: lab-vm thaw erp-db"),
        "{}",
        plan.stdout
    );
    assert!(
        !calls(&lab, "hv-main").contains("freeze"),
        "a dry run does nothing"
    );

    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let log = calls(&lab, "hv-main");
    let freeze = log
        .find("lab-vm freeze erp-db")
        .expect("frozen before the copy");
    let thaw = log
        .find("lab-vm thaw erp-db")
        .expect("merged back after the copy");
    assert!(freeze < thaw, "{log}");
    assert!(run.stdout.contains("disks frozen"), "{}", run.stdout);
    let points = |lab: &Lab| lab.run(&["points", "erp-db", "--json"]).stdout;
    let before = points(&lab);
    assert!(before.contains("taken_at"), "{before}");

    // No snapshot, no copy: the copy and its points stay as they were.
    std::fs::remove_file(lab.lab().join("hosts/hv-main/bin/lab-vm")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("erp-db: cannot tell whether a replication snapshot is left on hv-main")
            && run.stderr.contains("not replicated"),
        "{}",
        run.stderr
    );
    assert_eq!(points(&lab), before);
}

#[test]
fn a_disk_written_while_it_is_read_makes_no_point_and_is_named() {
    let lab = Lab::up(46);
    let source = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-system.qcow2");
    // Data in the disk, so that its read lasts (tens of milliseconds).
    let wrote = tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x3c 0 64M",
            source.to_str().unwrap(),
        ],
    );
    assert!(wrote.status.success(), "{wrote:?}");
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let points = |lab: &Lab| lab.run(&["points", "erp-db", "--json"]).stdout;
    let before = points(&lab);
    assert!(before.contains("taken_at"), "{before}");

    // Something writes the disk file all through the next replication (a vm started on it
    // outside reprise, another program).
    let writer = crate::common::Rewriter::start(&source);
    std::thread::sleep(Duration::from_millis(1100)); // point ids are per second
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    let written = writer.stop();
    // Every read of the file waited for a write: its read cannot have missed them.
    assert!(written.in_reads > 0, "{written:?}");
    assert_eq!(run.code, 1, "{written:?}: {run:?}");
    assert!(
        run.stderr.contains(&format!(
            "{}: it was written while it was read",
            "/srv/datastore/images/erp-db-system.qcow2"
        )) && run.stderr.contains("makes no point"),
        "{}",
        run.stderr
    );
    // No point of a copy of no instant; the copy is its last point. The other disk's copy,
    // read meanwhile, made a point held until the read window said whether any disk was
    // written: marked unusable, the one point `verify` finds bad.
    assert_eq!(points(&lab), before);
    let verify = lab.run(&["verify", "erp-db"]);
    let bad: Vec<&str> = verify
        .stdout
        .lines()
        .filter(|l| l.contains("BAD"))
        .collect();
    assert!(
        bad.len() <= 1 && bad.iter().all(|l| l.contains("erp-db-data.qcow2")),
        "{verify:?}"
    );
    assert_eq!(
        verify.code,
        if bad.is_empty() { 0 } else { 1 },
        "{verify:?}"
    );

    // Once nothing writes it, the next replication makes its point.
    std::thread::sleep(Duration::from_millis(1100));
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_ne!(points(&lab), before);
}

#[test]
fn a_disk_that_keeps_data_in_another_file_makes_no_point_and_is_named() {
    let lab = Lab::up(47);
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    let source = images.join("erp-db-system.qcow2");
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let points = |lab: &Lab| lab.run(&["points", "erp-db", "--json"]).stdout;
    let before = points(&lab);

    // The disk becomes an overlay over a template beside it (a linked clone): its own file
    // holds only what was written since.
    std::fs::rename(&source, images.join("erp-db-template.qcow2")).unwrap();
    let src = source.to_str().unwrap();
    let made = tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            "erp-db-template.qcow2",
            src,
        ],
    );
    assert!(made.status.success(), "{made:?}");
    let wrote = tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x5a 1M 64k", src],
    );
    assert!(wrote.status.success(), "{wrote:?}");
    std::thread::sleep(Duration::from_millis(1100)); // point ids are per second
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "/srv/datastore/images/erp-db-system.qcow2: it is a qcow2 image over the backing file 'erp-db-template.qcow2'"
        ) && run.stderr.contains("makes no point")
            && run.stderr.contains("qemu-img rebase -b ''"),
        "{}",
        run.stderr
    );
    assert_eq!(points(&lab), before, "no point of a part of the disk");

    // Made whole, as the error says, it is copied whole: the copy names no other file and
    // holds what the guest sees.
    let rebased = tool("qemu-img", &["rebase", "-q", "-f", "qcow2", "-b", "", src]);
    assert!(rebased.status.success(), "{rebased:?}");
    std::thread::sleep(Duration::from_millis(1100));
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_ne!(points(&lab), before);
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-system.qcow2");
    let info = tool("qemu-img", &["info", "-U", copy.to_str().unwrap()]);
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    assert!(!info.contains("backing file"), "{info}");
    let same = tool("qemu-img", &["compare", "-U", src, copy.to_str().unwrap()]);
    assert!(same.status.success(), "{same:?}");
}

#[test]
fn the_steps_before_a_copy_go_to_the_vm_host_in_one_command_and_a_failed_one_stops_those_after_it()
{
    let lab = Lab::up(240);
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    let args = lab.args(&["replicate", "--service", "erp-db"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = LAB_SECRETS.to_vec();
    env.push(("REPRISE_LOG", "reprise=debug"));
    let run = || crate::common::reprise_with_env(&root(), &args, &env);
    // Every remote command to the vm's host, in order, as the debug log names them.
    let commands = |r: &Run| -> Vec<String> {
        // A log read by a program carries no colours.
        assert!(!r.stderr.contains('\u{1b}'), "{}", r.stderr);
        r.stderr
            .lines()
            .filter(|l| l.contains("host=\"hv-main\"") && l.contains("command="))
            .map(|l| l.split("command=").nth(1).unwrap_or("").to_string())
            .collect()
    };
    let points = |lab: &Lab| lab.run(&["points", "erp-db", "--json"]).stdout;

    // The check, the definition and the snapshot: one command, in that order on the host.
    let done = run();
    assert_eq!(done.code, 0, "{done:?}");
    let sent = commands(&done);
    assert!(
        sent[0].contains("reprise-step-"),
        "the first command to hv-main is the batch: {sent:#?}"
    );
    for alone in [
        "lab-vm snapshot-check",
        "lab-vm definition",
        "lab-vm freeze",
    ] {
        assert!(
            !sent.iter().any(|c| c.starts_with(&format!("\"{alone}"))),
            "{alone} was sent alone: {sent:#?}"
        );
    }
    let all = calls(&lab, "hv-main");
    // From the check on (the lab's set-up read the definitions before).
    let log = &all[all.find("snapshot-check erp-db").expect("checked")..];
    let at = |what: &str| {
        log.find(what)
            .unwrap_or_else(|| panic!("{what} not run: {log}"))
    };
    assert!(
        at("snapshot-check erp-db") < at("definition erp-db"),
        "{log}"
    );
    assert!(at("definition erp-db") < at("freeze erp-db"), "{log}");
    assert!(at("freeze erp-db") < at("thaw erp-db"), "{log}");
    assert!(
        done.stdout.contains("definition captured on hv-main"),
        "{done:?}"
    );
    assert!(
        done.stdout.contains("disks frozen for the copy"),
        "{done:?}"
    );
    let before = points(&lab);

    // A definition that cannot be read: no snapshot is made, nothing is copied.
    let defined = lab.lab().join("hosts/hv-main/definitions/erp-db.xml");
    let kept = std::fs::read(&defined).unwrap();
    std::fs::remove_file(&defined).unwrap();
    let freezes = calls(&lab, "hv-main").matches("freeze erp-db").count();
    let failed = run();
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(
        failed
            .stderr
            .contains("erp-db: its definition could not be read on hv-main")
            && failed.stderr.contains("not defined on hv-main"),
        "{failed:?}"
    );
    assert_eq!(
        calls(&lab, "hv-main").matches("freeze erp-db").count(),
        freezes,
        "a snapshot was made after a failed step"
    );
    assert_eq!(points(&lab), before);
    std::fs::write(&defined, kept).unwrap();

    // A snapshot that fails on the second disk after the first got its overlay: the one made
    // is merged back, nothing is copied.
    let second = images.join("erp-db-data.reprise-replicate");
    std::os::unix::fs::symlink("/nonexistent/reprise/overlay", &second).unwrap();
    let failed = run();
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(
        failed
            .stderr
            .contains("erp-db: its snapshot could not be made (replicate-begin exited with 1 on hv-main: lab-vm: cannot snapshot"),
        "{failed:?}"
    );
    let log = calls(&lab, "hv-main");
    assert!(
        log.rfind("thaw erp-db") > log.rfind("freeze erp-db"),
        "{log}"
    );
    assert!(
        !images.join("erp-db-system.reprise-replicate").exists(),
        "the overlay made was not merged back"
    );
    assert_eq!(points(&lab), before);
    std::fs::remove_file(&second).unwrap();
    let again = run();
    assert_eq!(again.code, 0, "{again:?}");
    assert_ne!(points(&lab), before);
}

#[test]
fn an_emergency_failover_after_a_killed_replication_starts_from_the_last_good_point() {
    let lab = Lab::up(44);
    let source = big_erp_db_data(&lab);
    let qemu_io = |command: &str| {
        let out = tool(
            "qemu-io",
            &["-f", "qcow2", "-c", command, source.to_str().unwrap()],
        );
        assert!(out.status.success(), "{out:?}");
    };
    qemu_io("write -P 0x21 0 8M");
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let first_point = run
        .stdout
        .lines()
        .find(|l| l.contains("erp-db-data.qcow2"))
        .and_then(|l| l.split_once(": point "))
        .and_then(|(_, rest)| rest.split(',').next())
        .unwrap_or_else(|| panic!("no point in {}", run.stdout))
        .to_string();
    let copy = walk(&lab.host_root("hv-pra"))
        .into_iter()
        .find(|p| p.ends_with("erp-db-data.qcow2"))
        .unwrap();
    let first = std::fs::read(&copy).unwrap();

    // The next replication is killed while the update is being received.
    qemu_io("write -P 0x31 0 600M");
    let mut child = lab.spawn(&["replicate", "--service", "erp-db"]);
    let journal = copy.with_extension("qcow2.reprise").join("journal");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0) < 32 << 20 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replication ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "the transfer never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The recovery helper dies first, as in a crash of the recovery host: a helper whose
    // stream merely ends throws its journal away itself, this one cannot.
    kill_helper_applying(&copy);
    let _ = child.kill();
    child.wait().unwrap();
    assert!(
        std::fs::read(&copy).unwrap() == first,
        "the copy was touched"
    );
    // The cut update stays until settled.
    let applying = format!("helper\0apply\0{}\0", copy.display());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&applying))
    }) {
        assert!(Instant::now() < deadline, "the recovery helper never ended");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        journal.exists(),
        "the cut update was settled too early for this test"
    );

    let used = lab.emergency_failover_of_erp_db();
    // The killed run had finished the system disk, whose point stays held (the run never
    // said its disks were of one instant): the vm's disks start from the point they share,
    // and the run says why.
    assert_eq!(used[0]["point"], first_point.as_str(), "{:?}", used[0]);
    assert_eq!(used[0]["verified"], true, "{:?}", used[0]);
    let note = used[0]["note"].as_str().unwrap();
    assert!(
        note.contains(&format!(
            "rolled back to point {first_point} (newer points dropped"
        )) && note.contains(&format!("every disk starts from point {first_point}")),
        "{note}"
    );
    // The failover settled the cut update before choosing: thrown away, copy untouched.
    assert!(note.contains("thrown away"), "{note}");
    assert!(!journal.exists());
    assert!(
        std::fs::read(&copy).unwrap() == first,
        "the vm did not start from the last good point"
    );
}

/// Two points of one id taken at two times (a replication cut after its first disk, and
/// another started within the same second from another machine) are two moments, not one
/// vm point: `points` does not list it, a drill does not start, a named point is refused,
/// and an emergency failover rolls both disks back to the point they share.
#[test]
fn one_point_id_taken_at_two_times_never_starts_a_vm_from_two_moments() {
    let lab = Lab::up(205);
    let first = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(first.code, 0, "{first:?}");
    let second = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(second.code, 0, "{second:?}");
    let point_of = |out: &str| {
        out.lines()
            .find(|l| l.contains("erp-db-data.qcow2"))
            .and_then(|l| l.split_once(": point "))
            .and_then(|(_, rest)| rest.split(',').next())
            .unwrap_or_else(|| panic!("no point in {out}"))
            .to_string()
    };
    let (p1, p2) = (point_of(&first.stdout), point_of(&second.stdout));
    assert_ne!(p1, p2);
    let listed = lab.run(&["points", "erp-db"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(listed.stdout.contains(&p2), "{}", listed.stdout);

    // The data disk's P2 becomes the one another replication took half a second later.
    let copy = walk(&lab.host_root("hv-pra"))
        .into_iter()
        .find(|p| p.ends_with("erp-db-data.qcow2"))
        .unwrap();
    let points_file = PathBuf::from(format!("{}.reprise/points.json", copy.display()));
    let mut points: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&points_file).unwrap()).unwrap();
    let newest = points.as_array_mut().unwrap().last_mut().unwrap();
    assert_eq!(newest["id"], p2.as_str());
    let at: chrono::DateTime<chrono::Utc> = newest["taken_at"].as_str().unwrap().parse().unwrap();
    newest["taken_at"] = serde_json::json!((at + chrono::Duration::milliseconds(500)).to_rfc3339());
    std::fs::write(&points_file, serde_json::to_string(&points).unwrap()).unwrap();

    let listed = lab.run(&["points", "erp-db"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(
        !listed.stdout.contains(&p2) && listed.stdout.contains(&p1),
        "{}",
        listed.stdout
    );
    let drill = lab.run(&[
        "drill",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
    ]);
    assert_ne!(drill.code, 0, "{drill:?}");
    let said = format!("{}{}", drill.stdout, drill.stderr);
    assert!(said.contains("come from two replications"), "{said}");
    let named = lab.run(&[
        "failover",
        "--emergency",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
        "--point",
        &format!("erp-db={p2}"),
    ]);
    assert_ne!(named.code, 0, "{named:?}");
    let said = format!("{}{}", named.stdout, named.stderr);
    assert!(said.contains("not one moment on every disk"), "{said}");

    let used = lab.emergency_failover_of_erp_db();
    assert_eq!(used[0]["point"], p1.as_str(), "{:?}", used[0]);
    let note = used[0]["note"].as_str().unwrap();
    assert!(note.contains("come from two replications"), "{note}");
}

/// The start time of a running process (field 22 of /proc/PID/stat), `None` when gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    if f.next()? == "Z" {
        return None;
    }
    f.nth(18)?.parse().ok()
}

#[test]
fn lab_down_spares_a_process_that_took_the_pid_of_a_lab_process() {
    let _net = crate::common::NetLock::take(130);
    let dir = crate::common::mini_copy();
    let lab = dir.path().join("lab");
    let lab_arg = lab.to_str().unwrap();
    let up = reprise(
        dir.path(),
        &["lab", "up", "--net", "130", "--lab-dir", lab_arg],
    );
    assert_eq!(up.code, 0, "lab up failed: {up:?}");
    struct Down<'a>(&'a Path, &'a str);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = reprise(self.0, &["lab", "down", "--lab-dir", self.1]);
        }
    }
    let _down = Down(dir.path(), lab_arg);

    // The sshd of `fw` dies behind the lab's back, and its pid goes to an unrelated process:
    // a `sleep` stands for it, with its pid where the lab recorded the sshd's.
    let run = lab.join("hosts/fw/run");
    let sshd: u32 = std::fs::read_to_string(run.join("sshd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        Command::new("kill")
            .args(["-KILL", &sshd.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while start_time(sshd).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stranger = Command::new("sleep").arg("600").spawn().unwrap();
    let record = std::fs::read_to_string(run.join("sshd.started")).unwrap();
    let fields: Vec<&str> = record.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "pid, start time, boot id: {record}");
    assert_eq!(fields[0], sshd.to_string());
    std::fs::write(
        run.join("sshd.started"),
        format!("{} {} {}\n", stranger.id(), fields[1], fields[2]),
    )
    .unwrap();
    std::fs::write(run.join("sshd.pid"), format!("{}\n", stranger.id())).unwrap();

    // Every other process the lab started, as recorded.
    let mut others = Vec::new();
    for host in std::fs::read_dir(lab.join("hosts")).unwrap().flatten() {
        for e in std::fs::read_dir(host.path().join("run"))
            .unwrap()
            .flatten()
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "started") && p != run.join("sshd.started") {
                let text = std::fs::read_to_string(&p).unwrap();
                let mut f = text.split_whitespace();
                let pid: u32 = f.next().unwrap().parse().unwrap();
                let start: u64 = f.next().unwrap().parse().unwrap();
                assert_eq!(start_time(pid), Some(start), "{} does not run", p.display());
                others.push((p, pid, start));
            }
        }
    }
    assert!(others.len() >= 5, "3 sshd, 2 vms: {others:?}");

    let down = reprise(dir.path(), &["lab", "down", "--lab-dir", lab_arg]);
    assert_eq!(down.code, 0, "{down:?}");
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "lab down killed a process it did not start"
    );
    for (p, pid, start) in &others {
        assert_ne!(start_time(*pid), Some(*start), "{} still runs", p.display());
    }
    assert!(
        down.stdout
            .contains(&format!("stopped {} processes", others.len())),
        "{down:?}"
    );
    stranger.kill().unwrap();
    stranger.wait().unwrap();
}

#[test]
fn lab_up_writes_nothing_outside_its_folder_for_a_path_that_climbs_out() {
    let _net = crate::common::NetLock::take(131);
    let dir = crate::common::mini_copy();
    let escaped = dir.path().join("escaped.v4");
    // A host variable naming a file: the lab seeds it under the host's root, unless `..`
    // would take it out.
    let hosts = dir.path().join("inventory/hosts.toml");
    let text = std::fs::read_to_string(&hosts).unwrap().replacen(
        "rules_file = \"/etc/fw/rules.v4\"",
        &format!(
            "rules_file = \"/etc/fw/{}{}\"",
            "../".repeat(40),
            escaped.to_str().unwrap().trim_start_matches('/')
        ),
        1,
    );
    std::fs::write(&hosts, text).unwrap();
    let lab = dir.path().join("lab");
    let lab_arg = lab.to_str().unwrap();
    let up = reprise(
        dir.path(),
        &["lab", "up", "--net", "131", "--lab-dir", lab_arg],
    );
    let down = reprise(dir.path(), &["lab", "down", "--lab-dir", lab_arg]);
    assert_eq!(up.code, 0, "lab up failed: {up:?}");
    assert_eq!(down.code, 0, "{down:?}");
    assert!(!escaped.exists(), "lab up wrote {}", escaped.display());
}

#[test]
fn a_failover_finds_a_point_s_definition_beside_the_disk_that_was_first_when_it_was_made() {
    let lab = Lab::up(155);
    // erp-db's points were made with its system disk first: their definitions are kept beside
    // that disk's copy. The inventory now lists its data disk first.
    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    let vms = edited.path().join("inventory/vms.toml");
    let text = std::fs::read_to_string(&vms).unwrap();
    let listed = r#"disks = ["erp-db-system.qcow2", "erp-db-data.qcow2"]"#;
    assert!(text.contains(listed), "the example lists erp-db's disks so");
    std::fs::write(
        &vms,
        text.replace(
            listed,
            r#"disks = ["erp-db-data.qcow2", "erp-db-system.qcow2"]"#,
        ),
    )
    .unwrap();
    lab.primary_lost(&["erp-db"]);
    let status = lab.run_confirming_in(
        edited.path(),
        &[
            "failover",
            "--emergency",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(120),
    );
    let events = lab.journal();
    assert!(status.success(), "{events:#?}");
    let used: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "replica_point_used")
        .collect();
    assert_eq!(used.len(), 1, "{used:?}");
    assert_eq!(used[0]["verified"], true, "{:?}", used[0]);
    let point = used[0]["point"].as_str().unwrap();
    let defined = events
        .iter()
        .filter(|e| e["event"] == "step_output")
        .map(|e| e.to_string())
        .find(|o| o.contains(&format!("the definition of point {point}")))
        .unwrap_or_else(|| panic!("no step defined erp-db from its point: {events:#?}"));
    assert!(defined.contains("BLAKE3"), "{defined}");
}

/// A failback with no failover before it would copy last night's replica over production's
/// newer disks. erp-db is defined on hv-pra (as an earlier failover and failback leave it), so
/// nothing else stops it: refused while the vm runs on the primary (exit 6, even forced),
/// then, once it is stopped, because no failover started the vm on its recovery copies (exit
/// 7, which only `--force` passes); the primary's disk is as production left it, and no run
/// started.
#[test]
fn a_failback_never_copies_a_replica_over_newer_production_data() {
    let lab = Lab::up(232);
    let lab_vm = |host: &str, args: &[&str], input: &[u8]| lab_vm_fed(&lab, host, args, input);
    define_erp_db_on_hv_pra(&lab);
    let disk = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-system.qcow2");
    // Production writes after last night's replication.
    write_64k(&disk, 0x6b);
    let production = std::fs::read(&disk).unwrap();
    let runs = || {
        std::fs::read_dir(lab.state().join("runs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let failback = |force: bool| {
        let mut args = vec![
            "failback",
            "--yes",
            "--no-prompt",
            "--service",
            "erp-db",
            "--only",
        ];
        if force {
            args.push("--force");
        }
        lab.run(&args)
    };
    // Forced or not, a vm running on the primary is never overwritten.
    for force in [false, true] {
        let run = failback(force);
        assert_eq!(run.code, 6, "{run:?}");
        assert!(
            run.stderr.contains("vm erp-db runs on hv-main"),
            "{}",
            run.stderr
        );
    }
    // The vm stopped on the primary: its disks still hold newer data than the replica.
    lab_vm("hv-main", &["stop", "erp-db"], b"");
    let run = failback(false);
    assert_eq!(run.code, 7, "{run:?}");
    assert!(
        run.stderr.contains("copy-back vm erp-db")
            && run.stderr.contains("was not started by a failover"),
        "{}",
        run.stderr
    );
    assert_eq!(runs(), 0, "a refused failback started a run");
    assert!(std::fs::read(&disk).unwrap() == production);
}

/// An emergency failover whose vm start is refused (erp-db's data copy proven by nothing: its
/// metadata is gone) fails there, saying to name the vm with --accept-unverified. The way out
/// needs no new run: `resume --accept-unverified erp-db` starts it from its copy as it is,
/// journaled with the resume, the start not verified, and the report names who asked.
#[test]
fn a_vm_start_refused_in_a_failover_goes_on_when_the_resume_names_it() {
    let lab = Lab::up(250);
    let meta = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-data.qcow2.reprise");
    std::fs::remove_dir_all(&meta).unwrap();
    lab.primary_lost(&["erp-db"]);
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover", "--emergency"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(!exit.success(), "{:?}", lab.journal().last());
    let events = lab.journal();
    let refused = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["status"] == "failed")
        .unwrap_or_else(|| panic!("{events:#?}"));
    let why = refused["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("erp-db-data.qcow2 has no replica point")
            && why.contains("--accept-unverified"),
        "{refused}"
    );
    assert!(!events.iter().any(|e| e["event"] == "replica_point_used"));
    // An unknown name is refused before anything is done.
    let typo = lab.run(&[
        "resume",
        "latest",
        "--no-prompt",
        "--accept-unverified",
        "erp-bd",
    ]);
    assert_eq!(typo.code, 3, "{typo:?}");
    assert!(typo.stderr.contains("did you mean `erp-db`"), "{typo:?}");
    let exit = lab.run_confirming(
        &[
            "resume",
            "latest",
            "--no-prompt",
            "--accept-unverified",
            "erp-db",
        ],
        Duration::from_secs(240),
    );
    let events = lab.journal();
    assert!(exit.success(), "{:?}", events.last());
    let resumed = events
        .iter()
        .filter(|e| e["event"] == "run_resumed")
        .collect::<Vec<_>>();
    assert_eq!(
        resumed.len(),
        1,
        "the refused resume was journaled: {resumed:?}"
    );
    assert_eq!(
        resumed[0]["points"]["accept_unverified"],
        serde_json::json!(["erp-db"]),
        "{:?}",
        resumed[0]
    );
    let used = events
        .iter()
        .find(|e| e["event"] == "replica_point_used" && e["item"] == "erp-db")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(used["verified"], false, "{used}");
    assert!(
        used["note"]
            .as_str()
            .unwrap()
            .contains("--accept-unverified"),
        "{used}"
    );
    let report = lab.run(&["report", "latest", "--format", "json"]);
    assert_eq!(report.code, 0, "{report:?}");
    let report: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    assert_eq!(
        report["resumes"][0]["asked"], "--accept-unverified erp-db",
        "{:#}",
        report["resumes"]
    );
}

/// An emergency failover while hv-main cannot be asked (its sshd is down, erp-db may still
/// run and write there): erp-db starts from its copy, the run says it could not ask, and the
/// report claims no data loss for it, nor the RPO met: when erp-db last wrote on hv-main is
/// not known, and no incident time was given.
#[test]
fn an_emergency_failover_that_cannot_ask_its_primary_claims_no_data_loss_for_it() {
    let lab = Lab::up(149);
    let replicated = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(replicated.code, 0, "{replicated:?}");
    let pid = std::fs::read_to_string(lab.lab().join("hosts/hv-main/run/sshd.pid")).unwrap();
    let _ = Command::new("kill").arg(pid.trim()).status();
    let exit = lab.run_confirming(
        &[
            "failover",
            "--emergency",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
            "--connect-timeout",
            "2",
        ],
        Duration::from_secs(240),
    );
    let events = lab.journal();
    assert!(exit.success(), "{events:#?}");
    let said = events
        .iter()
        .find(|e| e["event"] == "other_site")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(said["unasked"], serde_json::json!(["erp-db"]), "{said}");
    assert!(
        said["said"][0].as_str().is_some_and(
            |s| s.contains("whether vm erp-db still runs on hv-main could not be asked")
        ),
        "{said}"
    );
    let reported = reported_service(&lab, "erp-db");
    assert_eq!(reported["status"], "recovered", "{reported:#}");
    assert!(
        reported["data_loss_s"].is_null()
            && reported["rpo_met"].is_null()
            && reported["data_loss_unknown"]
                .as_str()
                .is_some_and(|w| w.contains("could not be asked whether it still ran there")),
        "{reported:#}"
    );
}

/// An emergency failover whose recovery host cannot say whether erp-db already runs there
/// (its status says `in shutdown` once): the start is refused before any point is chosen,
/// leased or defined, saying why; `resume --force` passes it, journaled as forced.
#[test]
fn a_failover_never_starts_a_vm_whose_recovery_host_cannot_say_whether_it_runs() {
    let lab = Lab::up(159);
    lab.primary_lost(&["erp-db"]);
    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    // A status that answers neither `running` nor `shut off` once, while a flag is there.
    let flag = lab.host_root("hv-pra").join("status-unknown");
    let vms = edited.path().join("inventory/vms.toml");
    let mut text = std::fs::read_to_string(&vms).unwrap();
    text.push_str(&format!(
        "\n[drivers.lab]\nstatus = \"if [ \\\"$LAB_HOST\\\" = hv-pra ] && [ -e {f} ]; then rm -f {f}; echo 'in shutdown'; exit 0; fi; lab-vm status {{{{ vm.name }}}}\"\n",
        f = flag.display()
    ));
    std::fs::write(&vms, text).unwrap();
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    std::fs::write(&flag, "").unwrap();
    let exit = lab.run_confirming_in(
        edited.path(),
        &[&["failover", "--emergency"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    let events = lab.journal();
    assert!(!exit.success(), "{events:#?}");
    assert!(!flag.exists(), "its status was never asked");
    let (status, why) = finished(&lab, "erp-db/start");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains("whether vm erp-db already runs on hv-pra cannot be told")
            && why.contains("nothing was chosen, leased or defined"),
        "{why}"
    );
    assert!(!events.iter().any(|e| e["event"] == "replica_point_used"));
    std::fs::write(&flag, "").unwrap();
    let exit = lab.run_confirming_in(
        edited.path(),
        &["resume", "latest", "--no-prompt", "--force"],
        Duration::from_secs(240),
    );
    let events = lab.journal();
    assert!(exit.success(), "{events:#?}");
    let forced = events
        .iter()
        .find(|e| e["event"] == "readiness_forced")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert!(
        forced["problems"][0]
            .as_str()
            .is_some_and(|p| p.contains("whether vm erp-db already runs on hv-pra cannot be told")),
        "{forced}"
    );
    assert_eq!(finished(&lab, "erp-db/start").0, "done");
}

/// An emergency failover asked to start from the last point before a time (the state before
/// an attack), stopped while it waits for the operator, before erp-db starts: the resume
/// starts erp-db from that point too, not from the newest one.
#[test]
fn a_resumed_failover_starts_from_the_point_the_operator_asked_for() {
    let lab = Lab::up(233);
    let disk = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-system.qcow2");
    // Last night's point is before `before`; a newer one, made after it, is not.
    std::thread::sleep(Duration::from_millis(1100));
    let before = chrono::Utc::now();
    std::thread::sleep(Duration::from_millis(1100));
    write_64k(&disk, 0x66);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let before_text = before.to_rfc3339();
    lab.primary_lost(&["erp-db"]);
    let mut child = lab.spawn(&[
        "failover",
        "--emergency",
        "--service",
        "erp-db",
        "--point-before",
        &before_text,
        // The directory its application replicates: taken as it is, knowingly.
        "--as-replicated",
        "directory",
        "--yes",
        "--no-prompt",
    ]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(lab.state().join("runs").exists()
        && lab
            .journal()
            .iter()
            .any(|e| e["event"] == "waiting_for_operator"))
    {
        assert!(Instant::now() < deadline, "no manual step waited");
        assert!(child.try_wait().unwrap().is_none(), "the failover ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    cut(&mut child);
    assert!(
        !lab.journal()
            .iter()
            .any(|e| e["event"] == "replica_point_used"),
        "erp-db started before the stop: {:#?}",
        lab.journal()
    );
    // Who let the directory start as replicated is journaled with the time asked.
    let started = lab
        .journal()
        .into_iter()
        .find(|e| e["event"] == "run_started")
        .unwrap();
    assert_eq!(
        started["points"]["as_replicated"],
        serde_json::json!(["directory"]),
        "{started}"
    );
    let mut resumed = lab.spawn(&["resume", "latest", "--no-prompt"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lab.journal().iter().any(|e| e["event"] == "run_resumed") {
        assert!(Instant::now() < deadline, "the run was not resumed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut exit = None;
    lab.confirm_until(
        || {
            exit = resumed.try_wait().unwrap();
            exit.is_some()
        },
        Duration::from_secs(240),
    );
    assert!(
        exit.is_some_and(|e| e.success()),
        "{exit:?} {:#?}",
        lab.journal()
    );
    let used: Vec<serde_json::Value> = lab
        .journal()
        .into_iter()
        .filter(|e| e["event"] == "replica_point_used" && e["item"] == "erp-db")
        .collect();
    assert_eq!(used.len(), 1, "{used:#?}");
    let taken_at: chrono::DateTime<chrono::Utc> =
        used[0]["taken_at"].as_str().unwrap().parse().unwrap();
    assert!(taken_at < before, "{before}: {:#?}", used[0]);
}

/// A planned failover rolled back after erp-db started on hv-pra: production runs again on
/// hv-main and writes, so the recovery copies hold nothing newer. The roll-back releases
/// them, and a failback then refuses to copy them back over production's newer disks.
#[test]
fn a_rolled_back_failover_leaves_no_copy_a_failback_would_take_for_newer_data() {
    let lab = Lab::up(234);
    // erp-app's definition gains a NIC on a bridge hv-pra has no mapping for: forced, the
    // failover starts erp-db on hv-pra, then stops at erp-app's definition and rolls back.
    let file = lab.lab().join("hosts/hv-main/definitions/erp-app.xml");
    let good = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        good.replacen("bridge='br-servers'", "bridge='br-backup'", 1),
    )
    .unwrap();
    let exit = lab.run_confirming(
        &[
            "failover",
            "--yes",
            "--no-prompt",
            "--service",
            "erp-db",
            "--service",
            "erp-app",
            "--only",
            "--force",
        ],
        Duration::from_secs(240),
    );
    assert_eq!(exit.code(), Some(1), "{:#?}", lab.journal());
    let journal = lab.journal();
    let undone = journal
        .iter()
        .find(|e| e["event"] == "undo_finished" && e["step"] == "erp-db/start")
        .unwrap_or_else(|| panic!("erp-db/start not undone: {journal:#?}"));
    assert_eq!(undone["ok"], true, "{undone}");
    assert!(
        undone["message"]
            .as_str()
            .is_some_and(|m| m.contains("the recovery copies of vm erp-db were released")),
        "{undone}"
    );
    // hv-pra did not define erp-db before the start (which defined it from its point): it
    // said so, which is "not running", so the roll-back stopped what the start started.
    let before = journal
        .iter()
        .find(|e| e["event"] == "vm_state_before" && e["step"] == "erp-db/start")
        .unwrap_or_else(|| panic!("{journal:#?}"));
    assert_eq!(before["running"], false, "{before}");
    assert_eq!(before["said"], "not defined", "{before}");
    let hv_pra = lab.lab().join("hosts/hv-pra");
    let state = Command::new(hv_pra.join("bin/lab-vm"))
        .args(["status", "erp-db"])
        .env("LAB_HOST", "hv-pra")
        .env("LAB_HOST_DIR", &hv_pra)
        .env("LAB_DIR", lab.lab())
        .output()
        .unwrap();
    assert!(
        !state.status.success() && String::from_utf8_lossy(&state.stdout).trim() != "running",
        "erp-db still runs on hv-pra after the roll-back: {state:?}"
    );
    // Production writes again, then is stopped for the failback.
    let disk = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-system.qcow2");
    write_64k(&disk, 0x77);
    let production = std::fs::read(&disk).unwrap();
    let host = lab.lab().join("hosts/hv-main");
    let stopped = Command::new(host.join("bin/lab-vm"))
        .args(["stop", "erp-db"])
        .env("LAB_HOST", "hv-main")
        .env("LAB_HOST_DIR", &host)
        .env("LAB_DIR", lab.lab())
        .output()
        .unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    let run = lab.run(&[
        "failback",
        "--yes",
        "--no-prompt",
        "--service",
        "erp-db",
        "--only",
    ]);
    assert_eq!(run.code, 7, "{run:?}");
    assert!(
        run.stderr.contains("was not started by a failover"),
        "{}",
        run.stderr
    );
    assert!(std::fs::read(&disk).unwrap() == production);
    // The roll-back let the copies go as they were; erp-db is then started on them by hand
    // and writes there: no replication overwrites that without a word.
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-system.qcow2");
    write_64k(&copy, 0x3d);
    let written = std::fs::read(&copy).unwrap();
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("the copy changed since it was let go")
            && run.stderr.contains("`reprise release NAME`"),
        "{run:?}"
    );
    assert!(
        std::fs::read(&copy).unwrap() == written,
        "the copy was overwritten"
    );
}

/// After a failover, the primary site came back and its hypervisor started erp-db, which wrote
/// into its system disk there before it was stopped. A failback would copy the recovery copies
/// over those writes: refused (exit 7), naming the vm, the disk and both times, and the disk
/// is as the primary left it; forced, it goes on and the journal says what was forced.
#[test]
fn a_failback_never_overwrites_what_the_primary_wrote_after_the_failover() {
    let lab = Lab::up(235);
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    let disk = images.join("erp-db-system.qcow2");
    write_64k(&disk, 0x5a);
    let primary = std::fs::read(&disk).unwrap();
    let runs = || {
        std::fs::read_dir(lab.state().join("runs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = runs();
    let refused = lab.run(&[&["failback"][..], &only[..]].concat());
    assert_eq!(refused.code, 7, "{refused:?}");
    let said = &refused.stderr;
    assert!(
        said.contains("copy-back vm erp-db: its disk ")
            && said.contains("erp-db-system.qcow2 on hv-main was written at ")
            && said.contains("after the failover started vm erp-db on ")
            && said.contains("keep a copy of it first")
            && said.contains("--force"),
        "{said}"
    );
    assert!(
        !said.contains("erp-db-data.qcow2 on hv-main was written"),
        "{said}"
    );
    assert_eq!(runs(), before, "a refused failback started a run");
    assert!(std::fs::read(&disk).unwrap() == primary, "the disk changed");
    let exit = lab.run_confirming(
        &[&["failback", "--force"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    let events = lab.journal();
    assert!(exit.success(), "{:?}", events.last());
    let forced = events
        .iter()
        .find(|e| e["event"] == "readiness_forced")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert!(
        forced["problems"].as_array().unwrap().iter().any(|p| p
            .as_str()
            .unwrap()
            .contains("erp-db-system.qcow2 on hv-main was written at ")),
        "{forced}"
    );
}

/// hv-main's clock runs 5 minutes behind this machine's: erp-db's system disk there, written
/// just after the failover, carries a time of before it by that clock. The failback reads
/// hv-main's clock (its `date`), brings the disk's time to this machine's and refuses
/// (exit 7) with the disk untouched, naming the offset.
#[test]
fn a_failback_never_overwrites_a_primary_write_hidden_by_a_clock_behind() {
    let lab = Lab::up(164);
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let behind = 300;
    let date = lab.lab().join("hosts/hv-main/bin/date");
    std::fs::write(
        &date,
        format!(
            "#!/bin/sh\nexec /usr/bin/date -d \"@$(( $(/usr/bin/date +%s) - {behind} ))\" \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&date, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    let disk = images.join("erp-db-system.qcow2");
    write_64k(&disk, 0x5a);
    // Stamped by hv-main's clock.
    let stamped =
        std::fs::metadata(&disk).unwrap().modified().unwrap() - Duration::from_secs(behind);
    std::fs::File::options()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_modified(stamped)
        .unwrap();
    let primary = std::fs::read(&disk).unwrap();
    let runs = || std::fs::read_dir(lab.state().join("runs")).unwrap().count();
    let before = runs();
    let refused = lab.run(&[&["failback"][..], &only[..]].concat());
    assert_eq!(refused.code, 7, "{refused:?}");
    let said = &refused.stderr;
    assert!(
        said.contains("erp-db-system.qcow2 on hv-main was written at ")
            && said.contains("s behind this machine's, after the failover started vm erp-db"),
        "{said}"
    );
    assert_eq!(runs(), before, "a refused failback started a run");
    assert!(std::fs::read(&disk).unwrap() == primary, "the disk changed");
}

/// erp-db wrote on hv-main after its last replication, then the primary site was lost: the
/// emergency failover started it on hv-pra from that older point. When the site comes back,
/// the failback would copy the recovery copies over the primary's last writes, which the
/// recovery site never got: refused (exit 7), naming the disk and the point's time, the disk
/// untouched.
#[test]
fn a_failback_after_an_emergency_failover_never_overwrites_the_primary_s_last_writes() {
    let lab = Lab::up(121);
    let disk = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-system.qcow2");
    write_64k(&disk, 0x6c);
    lab.primary_lost(&["erp-db"]);
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover", "--emergency"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:#?}", lab.journal());
    let primary = std::fs::read(&disk).unwrap();
    let refused = lab.run(&[&["failback"][..], &only[..]].concat());
    assert_eq!(refused.code, 7, "{refused:?}");
    let said = &refused.stderr;
    assert!(
        said.contains("erp-db-system.qcow2 on hv-main was written at ")
            && said.contains("from its data as of ")
            && said.contains("the recovery site never got that write")
            && said.contains("keep a copy of it first"),
        "{said}"
    );
    assert!(
        !said.contains("erp-db-data.qcow2 on hv-main was written"),
        "{said}"
    );
    assert!(std::fs::read(&disk).unwrap() == primary, "the disk changed");
}

/// A failback stopped before it copied erp-db back (a signal while a person was awaited),
/// then erp-db's system disk on hv-main written: `resume` judges the copy-back left as a
/// start does, refuses (exit 7) with the disk untouched, and carries on only with `--force`,
/// journaled.
#[test]
fn a_resumed_failback_never_overwrites_what_the_primary_wrote_since() {
    let lab = Lab::up(236);
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    // A failback runbook with a person awaited before the copy back.
    let edited = held_before("failback", "sync-back");
    let mut child = spawn_until_held(
        &lab,
        edited.path(),
        &[&["failback"][..], &only[..]].concat(),
    );
    cut(&mut child);
    assert!(
        !lab.journal()
            .iter()
            .any(|e| e["event"] == "step_started" && e["step"] == "erp-db/sync-back"),
        "{:#?}",
        lab.journal()
    );
    let disk = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-system.qcow2");
    write_64k(&disk, 0x5b);
    let primary = std::fs::read(&disk).unwrap();
    let args = lab.args(&["resume", "latest", "--no-prompt"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = crate::common::reprise_with_env(edited.path(), &refs, LAB_SECRETS);
    assert_eq!(refused.code, 7, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("erp-db-system.qcow2 on hv-main was written at ")
            && refused.stderr.contains("keep a copy of it first")
            // Said as the resume it is: a new failback is not what to run.
            && refused.stderr.contains("refusing to resume the failback: ")
            && refused
                .stderr
                .contains("or resume it anyway with --force (journaled)"),
        "{}",
        refused.stderr
    );
    assert!(std::fs::read(&disk).unwrap() == primary, "the disk changed");
    assert!(
        !lab.journal()
            .iter()
            .any(|e| e["event"] == "step_started" && e["step"] == "erp-db/sync-back"),
        "a refused resume copied back"
    );
    let mut resumed = lab.spawn_in(
        edited.path(),
        &["resume", "latest", "--force", "--no-prompt"],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !lab.journal().iter().any(|e| e["event"] == "run_resumed") {
        assert!(Instant::now() < deadline, "the run was not resumed");
        assert!(resumed.try_wait().unwrap().is_none(), "the resume ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut exit = None;
    lab.confirm_until(
        || {
            exit = resumed.try_wait().unwrap();
            exit.is_some()
        },
        Duration::from_secs(240),
    );
    let events = lab.journal();
    assert!(exit.is_some_and(|e| e.success()), "{exit:?} {:#?}", events);
    let forced = events
        .iter()
        .find(|e| e["event"] == "readiness_forced")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert!(
        forced["problems"].as_array().unwrap().iter().any(|p| p
            .as_str()
            .unwrap()
            .contains("erp-db-system.qcow2 on hv-main was written at ")),
        "{forced}"
    );
}

/// A failback cut once its start on hv-main had started erp-db there, before it could journal
/// that the start was done (a crash of this machine at that moment: its journal is cut back
/// to before the start's end). erp-db runs on hv-main on what was copied back and writes
/// there. The resume never copies back again over what it wrote (nor asks for `--force` to
/// do so): it finds the vm running, keeps the copy back it started from, and carries on.
#[test]
fn a_failback_cut_once_its_start_took_effect_resumes_without_copying_back_again() {
    failback_resumed_after_its_start_took_effect(135, None);
}

/// The same, the start having failed once its command was sent (it timed out while erp-db
/// came up on hv-main): the resume runs it again from its beginning, which asks that the
/// recovery copies are still what the copy back read, as the run's journal says, and carries
/// on without copying back again.
#[test]
fn a_failback_whose_start_failed_after_it_took_effect_resumes_without_copying_back_again() {
    failback_resumed_after_its_start_took_effect(120, Some("timed_out"));
}

/// The same cut, then erp-db run again on hv-pra and stopped there (what it wrote is not on
/// hv-main). The resume is refused (exit 6), naming the disk written; forced, it carries on
/// (erp-db runs on hv-main), but hv-pra's copies are not let go as they are: they stay leased,
/// said in the start's message, and a replication of erp-db is refused instead of writing
/// hv-main's data over what hv-pra wrote.
#[test]
fn a_failback_resumed_past_writes_on_the_recovery_side_keeps_them_from_replication() {
    let (lab, edited, _, _) = failback_cut_after_its_start(165, None);
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-system.qcow2");
    write_64k(&copy, 0x7a);
    let args = lab.args(&["resume", "latest", "--no-prompt"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = crate::common::reprise_with_env(edited.path(), &refs, LAB_SECRETS);
    assert_eq!(refused.code, 6, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("were written since the copy back (step erp-db/sync-back) read them")
            && refused.stderr.contains("erp-db-system.qcow2"),
        "{}",
        refused.stderr
    );
    let mut resumed = lab.spawn_in(
        edited.path(),
        &["resume", "latest", "--force", "--no-prompt"],
    );
    let exit = confirming(&lab, &mut resumed);
    let events = lab.journal();
    assert!(exit.is_some_and(|e| e.success()), "{exit:?} {events:#?}");
    let started = events
        .iter()
        .rev()
        .find(|e| e["event"] == "step_finished" && e["step"] == "erp-db/start-primary")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(started["status"], "done", "{started}");
    assert!(
        started["message"].as_str().is_some_and(|m| m
            .contains("the recovery copies of vm erp-db stay leased")
            && m.contains("were written on hv-pra since its copy back read them")),
        "{started}"
    );
    assert_eq!(erp_db_on(&lab, "hv-main"), "running");
    let replicated = lab.run(&["replicate", "--service", "erp-db"]);
    assert_ne!(replicated.code, 0, "{replicated:?}");
    let kept = tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "read -P 0x7a 0 64k",
            copy.to_str().unwrap(),
        ],
    );
    assert!(
        kept.status.success() && !String::from_utf8_lossy(&kept.stdout).contains("mismatch"),
        "hv-pra's write was overwritten: {kept:?}"
    );
}

/// A failback of erp-db held after its start on hv-main, cut, its journal then as a crash at
/// the start's end would leave it (`ended`: `None`, the start's end never written; else the
/// status it ended with), then erp-db writing on hv-main: the lab, the edited example, that
/// disk and what it holds.
fn failback_cut_after_its_start(
    net: u8,
    ended: Option<&str>,
) -> (Lab, tempfile::TempDir, PathBuf, Vec<u8>) {
    let lab = Lab::up(net);
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let edited = held_before("failback", "healthy");
    let mut child = spawn_until_held(
        &lab,
        edited.path(),
        &[&["failback"][..], &only[..]].concat(),
    );
    cut(&mut child);
    assert_eq!(erp_db_on(&lab, "hv-main"), "running");
    // The journal as the crash would have left it: the start began, its end never written.
    let runs = lab.state().join("runs");
    let id = crate::common::run_ids(&lab.state()).pop().unwrap();
    let path = runs.join(id).join("journal.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let end = lines
        .iter()
        .position(|l| {
            l.contains(r#""event":"step_finished""#) && l.contains("erp-db/start-primary")
        })
        .unwrap_or_else(|| panic!("{text}"));
    let mut kept: Vec<String> = lines[..end].iter().map(|l| l.to_string()).collect();
    if let Some(status) = ended {
        kept.push(lines[end].replace(r#""status":"done""#, &format!(r#""status":"{status}""#)));
    }
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    // What erp-db wrote on hv-main since it started there.
    let disk = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-system.qcow2");
    write_64k(&disk, 0x6e);
    let written = std::fs::read(&disk).unwrap();
    (lab, edited, disk, written)
}

/// [`failback_cut_after_its_start`] of `net`, resumed: the copy back is not made again over
/// what erp-db wrote on hv-main, and the run ends done.
fn failback_resumed_after_its_start_took_effect(net: u8, ended: Option<&str>) {
    let (lab, edited, disk, written) = failback_cut_after_its_start(net, ended);
    let mut resumed = lab.spawn_in(edited.path(), &["resume", "latest", "--no-prompt"]);
    let exit = confirming(&lab, &mut resumed);
    let events = lab.journal();
    assert!(exit.is_some_and(|e| e.success()), "{exit:?} {events:#?}");
    let resumed_at = events
        .iter()
        .position(|e| e["event"] == "run_resumed")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert!(
        !events[resumed_at..]
            .iter()
            .any(|e| e["event"] == "step_started" && e["step"] == "erp-db/sync-back"),
        "copied back again: {events:#?}"
    );
    assert!(
        !events.iter().any(|e| e["event"] == "readiness_forced"),
        "{events:#?}"
    );
    assert!(
        events[resumed_at..]
            .iter()
            .any(|e| e["event"] == "step_finished"
                && e["step"] == "erp-db/start-primary"
                && e["status"] == "done"),
        "{events:#?}"
    );
    assert!(std::fs::read(&disk).unwrap() == written, "the disk changed");
    assert_eq!(erp_db_on(&lab, "hv-main"), "running");
}

/// A failback cut (this machine and hv-main's helper killed at once, as in a crash) while its
/// copy back wrote erp-db's data disk on hv-main, after that update was committed: the disk
/// is half written, its update left to be settled. That write is the failback's own: `resume`
/// settles it (the update completed), judges the disk as what it now is (the point the copy
/// back made, nothing of hv-main's own) and carries on without `--force`, and erp-db starts on
/// hv-main from what its recovery copy holds.
#[test]
fn a_failback_cut_while_writing_its_copy_back_resumes_without_force() {
    let lab = Lab::up(134);
    let disk = big_erp_db_data(&lab);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    // What erp-db wrote on hv-pra, large enough that the copy back takes a while to write.
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-data.qcow2");
    let wrote = tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x3c 0 600M",
            copy.to_str().unwrap(),
        ],
    );
    assert!(wrote.status.success(), "{wrote:?}");
    killed_once_it_writes(&disk, lab.spawn(&[&["failback"][..], &only[..]].concat()));
    let journal = disk.with_extension("qcow2.reprise").join("journal");
    assert!(
        !lab.journal()
            .iter()
            .any(|e| e["event"] == "step_finished" && e["step"] == "erp-db/sync-back"),
        "{:#?}",
        lab.journal()
    );
    let resumed = lab.run(&["resume", "latest", "--no-prompt"]);
    let events = lab.journal();
    assert_eq!(resumed.code, 0, "{resumed:?} {events:#?}");
    assert!(
        !events.iter().any(|e| e["event"] == "readiness_forced"),
        "{events:#?}"
    );
    let said = events
        .iter()
        .filter(|e| e["event"] == "other_site")
        .map(|e| e["said"].to_string())
        .collect::<String>();
    assert!(
        said.contains("erp-db-data.qcow2 on hv-main")
            && said.contains("an interrupted update was completed"),
        "{said}"
    );
    assert!(!journal.exists());
    let same = tool(
        "qemu-img",
        &["compare", copy.to_str().unwrap(), disk.to_str().unwrap()],
    );
    assert!(same.status.success(), "{same:?}");
    assert_eq!(erp_db_on(&lab, "hv-main"), "running");
}

/// A replication of erp-db cut after its update was committed (hv-pra's helper and this
/// machine killed at once, as when both lose power while it writes the copy): the recovery
/// copy is half written. Then the primary site is lost and comes back. That copy changed
/// since its newest point, but only by reprise's own update: the restore completes it first
/// (said, journaled), does not take it for a vm that ran there, and starts erp-db on hv-main.
#[test]
fn a_restore_after_a_replication_cut_while_writing_its_copy_starts_without_force() {
    let lab = Lab::up(138);
    let source = big_erp_db_data(&lab);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let wrote = tool(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 0 600M",
            source.to_str().unwrap(),
        ],
    );
    assert!(wrote.status.success(), "{wrote:?}");
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-data.qcow2");
    killed_once_it_writes(&copy, lab.spawn(&["replicate", "--service", "erp-db"]));
    let journal = copy.with_extension("qcow2.reprise").join("journal");
    lab.primary_lost(&["erp-db"]);
    let run = lab.run(&[
        "restore",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let said = lab
        .journal()
        .iter()
        .filter(|e| e["event"] == "other_site")
        .map(|e| e["said"].to_string())
        .collect::<String>();
    assert!(
        said.contains("vm erp-db: its recovery copy")
            && said
                .contains("erp-db-data.qcow2 on hv-pra held an update of reprise's own left cut")
            && said.contains("an interrupted update was completed"),
        "{said}"
    );
    assert!(!journal.exists(), "the cut update was not settled");
    assert!(
        !lab.journal()
            .iter()
            .any(|e| e["event"] == "readiness_forced"),
        "{:#?}",
        lab.journal()
    );
    let same = tool(
        "qemu-img",
        &["compare", source.to_str().unwrap(), copy.to_str().unwrap()],
    );
    assert!(same.status.success(), "{same:?}");
    assert_eq!(erp_db_on(&lab, "hv-main"), "running");
}

/// Kills `child` (a run that copies into `copy` on a lab host) and the helper writing `copy`
/// at once, as in a crash, as soon as the copy is first written: its update is committed (a
/// copy is written only then), and left half written, to be settled.
fn killed_once_it_writes(copy: &Path, mut child: Child) {
    let before = std::fs::metadata(copy).unwrap().modified().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while std::fs::metadata(copy).unwrap().modified().unwrap() == before {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it wrote {}",
            copy.display()
        );
        assert!(
            Instant::now() < deadline,
            "{} was never written",
            copy.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    kill_helper_applying(copy);
    child.wait().unwrap();
    let journal = copy.with_extension("qcow2.reprise").join("journal");
    assert!(
        journal.exists(),
        "the cut update was settled before this test could cut it"
    );
}

/// erp-db's data disk on hv-main made anew, empty, of 1 GiB: big enough for a copy of it to
/// be caught in the middle; its path.
fn big_erp_db_data(lab: &Lab) -> PathBuf {
    let disk = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-data.qcow2");
    let made = tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "1G"],
    );
    assert!(made.status.success(), "{made:?}");
    disk
}

/// SIGKILL to the helper applying a stream to `copy` on a lab host (there must be one), as
/// when its host crashes: a helper whose stream merely ends settles its copy itself.
fn kill_helper_applying(copy: &Path) {
    let applying = format!("helper\0apply\0{}\0", copy.display());
    let helper = std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(&applying)
            .then(|| e.file_name().to_str()?.parse::<i32>().ok())
            .flatten()
    });
    let helper = helper.expect("the recovery helper is running");
    // SAFETY: a plain kill(2) of the helper found above.
    assert_eq!(unsafe { libc::kill(helper, libc::SIGKILL) }, 0);
}

/// Both of erp-db's recovery copies on hv-pra are held by a failover's `live` lease.
fn assert_erp_db_copies_leased_live(lab: &Lab) {
    let images = lab.host_root("hv-pra").join("srv/replicas/images");
    for disk in ["erp-db-system.qcow2", "erp-db-data.qcow2"] {
        let leases: Vec<String> = std::fs::read_dir(images.join(format!("{disk}.reprise/leases")))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            leases.iter().any(|l| l.starts_with("live-")),
            "{disk}: {leases:?}"
        );
    }
}

/// The example with a person awaited (`hold`) just before step `id` of erp-db's runbook of
/// `mode`, in a folder of its own.
fn held_before(mode: &str, id: &str) -> tempfile::TempDir {
    held_in("erp", "erp-db", mode, id)
}

/// The example with a person awaited (`SERVICE/hold`) just before step `id` of the runbook
/// of `mode` of `service` in `runbooks/FILE.toml`, in a folder of its own.
fn held_in(file: &str, service: &str, mode: &str, id: &str) -> tempfile::TempDir {
    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    let erp = edited.path().join(format!("runbooks/{file}.toml"));
    let text = std::fs::read_to_string(&erp).unwrap();
    let section = format!("[[{service}.{mode}]]");
    let start = text.find(&format!("{section}\nid = \"{id}\"\n")).unwrap();
    let hold = format!(
        "{section}\nid = \"hold\"\nkind = \"manual\"\ninstructions = \"Wait.\"\nexpected = \"1m\"\n\n"
    );
    std::fs::write(&erp, format!("{}{hold}{}", &text[..start], &text[start..])).unwrap();
    edited
}

/// Starts reprise with `args` on the example of `dir` and returns once it waits for the
/// person at a `hold` step.
fn spawn_until_held(lab: &Lab, dir: &Path, args: &[&str]) -> Child {
    let mut child = lab.spawn_in(dir, args);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(lab.journal().iter().any(|e| {
        e["event"] == "waiting_for_operator"
            && e["step"].as_str().is_some_and(|s| s.ends_with("/hold"))
    })) {
        assert!(Instant::now() < deadline, "no manual step waited");
        assert!(child.try_wait().unwrap().is_none(), "the run ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// Stops `child` with a signal, as a person does with Ctrl-C: it ends with exit 130.
fn cut(child: &mut Child) {
    let killed = tool("kill", &["-TERM", &child.id().to_string()]);
    assert!(killed.status.success(), "{killed:?}");
    assert_eq!(child.wait().unwrap().code(), Some(130));
}

/// Confirms what `child` waits for until it ends; its exit.
fn confirming(lab: &Lab, child: &mut Child) -> Option<std::process::ExitStatus> {
    let mut exit = None;
    lab.confirm_until(
        || {
            exit = child.try_wait().unwrap();
            exit.is_some()
        },
        Duration::from_secs(240),
    );
    exit
}

/// `resume latest` on the example of `dir`, confirming what it waits for once it waits (not
/// what the run it resumes waited for before); its exit.
fn resume_confirming(lab: &Lab, dir: &Path) -> Option<std::process::ExitStatus> {
    let resumes = || {
        lab.journal()
            .iter()
            .filter(|e| e["event"] == "run_resumed")
            .count()
    };
    let before = resumes();
    let mut resumed = lab.spawn_in(dir, &["resume", "latest", "--no-prompt"]);
    let waits = || {
        let events = lab.journal();
        let from = events.iter().rposition(|e| e["event"] == "run_resumed");
        from.is_some_and(|i| {
            events[i..]
                .iter()
                .any(|e| e["event"] == "waiting_for_operator")
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while resumes() == before || !waits() {
        assert!(Instant::now() < deadline, "the resume waited for no one");
        if let Some(exit) = resumed.try_wait().unwrap() {
            return Some(exit);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    confirming(lab, &mut resumed)
}

/// `lab-vm ARGS` on `host` with `input` on its standard input, which must succeed; its output.
fn lab_vm_fed(lab: &Lab, host: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let dir = lab.lab().join("hosts").join(host);
    let mut child = Command::new(dir.join("bin/lab-vm"))
        .args(args)
        .env("LAB_HOST", host)
        .env("LAB_HOST_DIR", &dir)
        .env("LAB_DIR", lab.lab())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "lab-vm {args:?} on {host}: {out:?}");
    out.stdout
}

/// erp-db defined on hv-pra as a failover defines it there (its NICs on hv-pra's bridges).
fn define_erp_db_on_hv_pra(lab: &Lab) {
    let definition = String::from_utf8(lab_vm_fed(lab, "hv-main", &["definition", "erp-db"], b""))
        .unwrap()
        .replace("br-servers", "br-pra-servers")
        .replace("br-dmz", "br-pra-dmz");
    lab_vm_fed(lab, "hv-pra", &["define", "erp-db"], definition.as_bytes());
}

/// `lab-vm start erp-db` on `host`, from its disks in `images`, as a person does by hand.
fn start_erp_db_by_hand(lab: &Lab, host: &str, images: &Path) {
    let dir = images.to_str().unwrap();
    let args = [
        "start",
        "erp-db",
        dir,
        "erp-db-system.qcow2",
        "erp-db-data.qcow2",
    ];
    let out = crate::common::lab_vm(&lab.lab(), host, &args);
    assert!(out.status.success(), "{out:?}");
}

/// What `lab-vm status erp-db` says on `host`.
fn erp_db_on(lab: &Lab, host: &str) -> String {
    let out = crate::common::lab_vm(&lab.lab(), host, &["status", "erp-db"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A failback judged erp-db's disks on hv-main at its start, then waited for a person before
/// its copy back; meanwhile erp-db was started on hv-main and wrote there. The copy back
/// would overwrite that write, which no one judged: the step fails (exit 6), naming the vm
/// running there, the disk and both stamps, and the disk is as hv-main left it. The resume
/// judges it again: refused (exit 7).
#[test]
fn a_failback_never_copies_back_over_a_primary_disk_written_since_it_judged_it() {
    let lab = Lab::up(129);
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let edited = held_before("failback", "sync-back");
    let mut child = spawn_until_held(
        &lab,
        edited.path(),
        &[&["failback"][..], &only[..]].concat(),
    );
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    start_erp_db_by_hand(&lab, "hv-main", &images);
    let disk = images.join("erp-db-system.qcow2");
    write_64k(&disk, 0x61);
    let primary = std::fs::read(&disk).unwrap();
    let exit = confirming(&lab, &mut child);
    assert_eq!(exit.and_then(|e| e.code()), Some(6), "{:#?}", lab.journal());
    let (status, why) = finished(&lab, "erp-db/sync-back");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains("vm erp-db runs on hv-main (its status says `running`)")
            && why.contains(
                "erp-db-system.qcow2 on hv-main was written since this failback judged it (it was `"
            )
            && !why.contains("erp-db-data.qcow2 on hv-main was written")
            && why.contains("keep a copy of it first"),
        "{why}"
    );
    assert!(std::fs::read(&disk).unwrap() == primary, "the disk changed");
    let out = crate::common::lab_vm(&lab.lab(), "hv-main", &["stop", "erp-db"]);
    assert!(out.status.success(), "{out:?}");
    let args = lab.args(&["resume", "latest", "--no-prompt"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = crate::common::reprise_with_env(edited.path(), &refs, LAB_SECRETS);
    assert_eq!(refused.code, 7, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("erp-db-system.qcow2 on hv-main was written at "),
        "{}",
        refused.stderr
    );
    assert!(std::fs::read(&disk).unwrap() == primary, "the disk changed");
}

/// A failback copied erp-db back, then waited for a person before its start on hv-main;
/// meanwhile erp-db was started there by hand on other disks. Its start would say "already
/// running" and the failback would report it recovered from the copy and let go of its
/// recovery copies: the start fails, saying why, and the copies keep their `live` leases.
#[test]
fn a_failback_never_reports_a_vm_started_on_the_primary_outside_it() {
    let lab = Lab::up(186);
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let edited = held_before("failback", "start-primary");
    let mut child = spawn_until_held(
        &lab,
        edited.path(),
        &[&["failback"][..], &only[..]].concat(),
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    for disk in ["erp-db-system.qcow2", "erp-db-data.qcow2"] {
        std::fs::copy(images.join(disk), elsewhere.path().join(disk)).unwrap();
    }
    start_erp_db_by_hand(&lab, "hv-main", elsewhere.path());
    let exit = confirming(&lab, &mut child);
    assert_ne!(exit.and_then(|e| e.code()), Some(0), "{:#?}", lab.journal());
    let (status, why) = finished(&lab, "erp-db/start-primary");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains("vm erp-db already runs on hv-main, started outside this run after its copy back found it stopped there")
            && why.contains("nothing was released"),
        "{why}"
    );
    assert_erp_db_copies_leased_live(&lab);
}

/// A failover relied on the backup sets' copies, and the recovery site wrote a dump there;
/// then a restore of the backups on the primary, after a power cut of both sites, would
/// restart the primary's jobs on the folders of before: refused (exit 6), naming the set, its
/// copy and the failover, and saying to fail back. Nothing runs. A copy still the point the
/// failover relied on holds nothing the primary lacks: no refusal for it.
#[test]
fn a_restore_never_brings_back_a_backup_set_a_failover_relies_on_elsewhere() {
    let lab = Lab::up(193);
    let only = ["--service", "backups", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    // Nothing written at the recovery site yet: the copies are the points relied on, and
    // a restore loses nothing of them.
    let restore = lab.run(&[&["restore"][..], &only[..]].concat());
    assert!(
        !restore
            .stderr
            .contains("has been relied on since failover run"),
        "{restore:?}"
    );
    // The recovery site's own nightly dump.
    let copy = lab.host_root("nas-pra").join("srv/backups/erp");
    std::fs::write(copy.join("written-at-pra.dump"), "the recovery site's").unwrap();
    let runs_before = crate::common::run_ids(&lab.state()).len();
    let restore = lab.run(&[&["restore"][..], &only[..]].concat());
    assert_eq!(restore.code, 6, "{restore:?}");
    assert!(
        restore
            .stderr
            .contains("refusing to restore: backup set erp-dumps: its copy ")
            && restore
                .stderr
                .contains("has been relied on since failover run ")
            && restore
                .stderr
                .contains("fail back instead (`reprise failback --service backups`)")
            && restore
                .stderr
                .contains("`reprise release erp-dumps` lets the copy go"),
        "{}",
        restore.stderr
    );
    assert_eq!(crate::common::run_ids(&lab.state()).len(), runs_before);
}

/// The same for a backup set: a failback of the backups judged the folder of erp-dumps on
/// san-main at its start, then waited for a person before copying it back; meanwhile the
/// folder got a dump (the primary's own backup job ran again). The copy back would remove it:
/// the step fails (exit 6), naming the folder, and the dump is kept.
#[test]
fn a_failback_never_copies_a_backup_set_back_over_a_folder_changed_since_it_judged_it() {
    let lab = Lab::up(132);
    let only = ["--service", "backups", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let edited = held_in("backups", "backups", "failback", "erp-dumps-back");
    let mut child = spawn_until_held(
        &lab,
        edited.path(),
        &[&["failback"][..], &only[..]].concat(),
    );
    let primary = lab.host_root("san-main").join("export/backups/erp");
    let dump = primary.join("taken-meanwhile.dump");
    std::fs::write(&dump, "the primary's own").unwrap();
    let exit = confirming(&lab, &mut child);
    assert_eq!(exit.and_then(|e| e.code()), Some(6), "{:#?}", lab.journal());
    let (status, why) = finished(&lab, "backups/erp-dumps-back");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains(&format!(
            "its folder {} on san-main was written since this failback judged it (it was `",
            primary.display()
        )) && why.contains("cp -a "),
        "{why}"
    );
    assert_eq!(
        std::fs::read_to_string(&dump).unwrap(),
        "the primary's own",
        "the dump is gone"
    );
}

/// A failback copied erp-db back, then waited for a person; meanwhile erp-db was started again
/// on its recovery copy on hv-pra and wrote there. Its start on hv-main would run it without
/// that write, and release the copy that holds it: the start is refused, naming the copy. The
/// run is resumed while erp-db still runs on hv-pra: refused (exit 6), saying to stop it
/// there. Once stopped, the resume copies erp-db back again and starts it on hv-main from
/// what the recovery copy holds now.
#[test]
fn a_failback_never_starts_the_primary_from_a_copy_back_the_recovery_site_wrote_after() {
    let lab = Lab::up(122);
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let edited = held_before("failback", "start-primary");
    let failback = [&["failback"][..], &only[..]].concat();
    let mut child = spawn_until_held(&lab, edited.path(), &failback);
    // erp-db runs on hv-pra again and writes there.
    let images = lab.host_root("hv-pra").join("srv/replicas/images");
    start_erp_db_by_hand(&lab, "hv-pra", &images);
    let copy = images.join("erp-db-system.qcow2");
    write_64k(&copy, 0x4e);
    let exit = confirming(&lab, &mut child);
    assert_eq!(exit.and_then(|e| e.code()), Some(1), "{:#?}", lab.journal());
    let (status, why) = finished(&lab, "erp-db/start-primary");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains(
            "the disks of vm erp-db on hv-pra were written after step erp-db/sync-back copied them: "
        ) && why.contains("erp-db-system.qcow2 (it was `")
            && !why.contains("erp-db-data.qcow2 (it was")
            && why.contains("`reprise resume`"),
        "{why}"
    );
    assert_ne!(erp_db_on(&lab, "hv-main"), "running", "started on hv-main");
    // Resumed (the roll-back started erp-db on hv-pra again): stopped there, copied back
    // again, started on hv-main from what the copy holds now.
    let primary = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-system.qcow2");
    let exit = resume_confirming(&lab, edited.path());
    assert!(
        exit.is_some_and(|e| e.success()),
        "{exit:?} {:#?}",
        lab.journal()
    );
    assert_eq!(erp_db_on(&lab, "hv-main"), "running");
    assert!(
        std::fs::read(&primary).unwrap() == std::fs::read(&copy).unwrap(),
        "hv-main's disk is not the recovery copy's"
    );
    // Failed over again; the failback is cut while it waits after its copy back, and erp-db
    // is started on hv-pra again. The resume refuses while it runs there (exit 6), then,
    // stopped, copies it back again.
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let mut child = spawn_until_held(&lab, edited.path(), &failback);
    cut(&mut child);
    start_erp_db_by_hand(&lab, "hv-pra", &images);
    write_64k(&copy, 0x4f);
    let args = lab.args(&["resume", "latest", "--no-prompt"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = crate::common::reprise_with_env(edited.path(), &refs, LAB_SECRETS);
    assert_eq!(refused.code, 6, "{refused:?}");
    assert!(
        refused.stderr.contains(
            "refusing to resume the failback: vm erp-db runs on hv-pra again (its status says `running`) since this failback stopped it there (step erp-db/stop-recovery)"
        ),
        "{}",
        refused.stderr
    );
    assert_ne!(erp_db_on(&lab, "hv-main"), "running", "started on hv-main");
    let out = crate::common::lab_vm(&lab.lab(), "hv-pra", &["stop", "erp-db"]);
    assert!(out.status.success(), "{out:?}");
    let exit = resume_confirming(&lab, edited.path());
    assert!(
        exit.is_some_and(|e| e.success()),
        "{exit:?} {:#?}",
        lab.journal()
    );
    let copied = lab
        .journal()
        .iter()
        .filter(|e| e["event"] == "step_started" && e["step"] == "erp-db/sync-back")
        .count();
    assert_eq!(copied, 2, "the copy back was not made again");
    assert_eq!(erp_db_on(&lab, "hv-main"), "running");
    assert!(
        std::fs::read(&primary).unwrap() == std::fs::read(&copy).unwrap(),
        "hv-main's disk is not the recovery copy's"
    );
}

/// A planned failover made its final sync of erp-db, then waited for a person; meanwhile
/// erp-db was started again on hv-main and wrote there. Its start on hv-pra would run it
/// without that write: the start is refused, naming the disk, and the roll-back brings
/// production back on hv-main. Resumed, the failover stops it, makes the final sync again and
/// starts it on hv-pra from what hv-main holds now.
#[test]
fn a_failover_never_starts_from_a_final_sync_the_primary_wrote_after() {
    let lab = Lab::up(126);
    let edited = held_before("failover", "start");
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let mut child = spawn_until_held(
        &lab,
        edited.path(),
        &[&["failover"][..], &only[..]].concat(),
    );
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    start_erp_db_by_hand(&lab, "hv-main", &images);
    let disk = images.join("erp-db-system.qcow2");
    write_64k(&disk, 0x2a);
    let exit = confirming(&lab, &mut child);
    assert_eq!(exit.and_then(|e| e.code()), Some(1), "{:#?}", lab.journal());
    let (status, why) = finished(&lab, "erp-db/start");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains(
            "the disks of vm erp-db on hv-main were written after step erp-db/final-sync copied them: "
        ) && why.contains("erp-db-system.qcow2 (it was `")
            && !why.contains("erp-db-data.qcow2 (it was"),
        "{why}"
    );
    assert_ne!(erp_db_on(&lab, "hv-pra"), "running", "started on hv-pra");
    assert_eq!(erp_db_on(&lab, "hv-main"), "running");
    let exit = resume_confirming(&lab, edited.path());
    assert!(
        exit.is_some_and(|e| e.success()),
        "{exit:?} {:#?}",
        lab.journal()
    );
    let synced = lab
        .journal()
        .iter()
        .filter(|e| e["event"] == "step_started" && e["step"] == "erp-db/final-sync")
        .count();
    assert_eq!(synced, 2, "the final sync was not made again");
    assert_eq!(erp_db_on(&lab, "hv-pra"), "running");
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-system.qcow2");
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(&disk).unwrap(),
        "hv-pra's copy is not hv-main's disk"
    );
    // Back, then failed over again, cut while it waits after its final sync, and erp-db
    // started on hv-main again: the resume refuses while it runs there (exit 6); stopped, it
    // makes the final sync again, and starts from what hv-main wrote.
    let exit = lab.run_confirming(
        &[&["failback"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let mut child = spawn_until_held(
        &lab,
        edited.path(),
        &[&["failover"][..], &only[..]].concat(),
    );
    cut(&mut child);
    start_erp_db_by_hand(&lab, "hv-main", &images);
    write_64k(&disk, 0x2b);
    let args = lab.args(&["resume", "latest", "--no-prompt"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = crate::common::reprise_with_env(edited.path(), &refs, LAB_SECRETS);
    assert_eq!(refused.code, 6, "{refused:?}");
    assert!(
        refused.stderr.contains(
            "refusing to resume the failover: vm erp-db runs on hv-main again (its status says `running`) since this failover stopped it there (step erp-db/stop-primary)"
        ),
        "{}",
        refused.stderr
    );
    let out = crate::common::lab_vm(&lab.lab(), "hv-main", &["stop", "erp-db"]);
    assert!(out.status.success(), "{out:?}");
    let exit = resume_confirming(&lab, edited.path());
    assert!(
        exit.is_some_and(|e| e.success()),
        "{exit:?} {:#?}",
        lab.journal()
    );
    let synced = lab
        .journal()
        .iter()
        .filter(|e| e["event"] == "step_started" && e["step"] == "erp-db/final-sync")
        .count();
    assert_eq!(synced, 2, "the final sync was not made again");
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(&disk).unwrap(),
        "hv-pra's copy is not hv-main's disk"
    );
}

/// A planned failover killed (SIGKILL) as erp-db's start on hv-pra began, after its final
/// sync; meanwhile erp-db was started again on hv-main by hand and wrote there. The resume
/// refuses (exit 6), naming where it runs; stopped there, the resume makes the final sync
/// again and starts erp-db on hv-pra from what hv-main wrote.
#[test]
fn a_resumed_failover_killed_in_its_start_never_starts_from_a_final_sync_the_primary_ran_past() {
    let lab = Lab::up(238);
    failover_killed_in_erp_db_start(&lab, false);
    assert_ne!(
        erp_db_on(&lab, "hv-pra"),
        "running",
        "erp-db started on hv-pra before the kill"
    );
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    start_erp_db_by_hand(&lab, "hv-main", &images);
    let disk = images.join("erp-db-system.qcow2");
    write_64k(&disk, 0x2c);
    let refused = lab.run(&["resume", "latest", "--no-prompt"]);
    assert_eq!(refused.code, 6, "{refused:?}");
    assert!(
        refused.stderr.contains(
            "refusing to resume the failover: vm erp-db runs on hv-main again (its status says `running`) since this failover stopped it there (step erp-db/stop-primary)"
        ),
        "{}",
        refused.stderr
    );
    assert_ne!(erp_db_on(&lab, "hv-pra"), "running", "started on hv-pra");
    let out = crate::common::lab_vm(&lab.lab(), "hv-main", &["stop", "erp-db"]);
    assert!(out.status.success(), "{out:?}");
    let mut resumed = lab.spawn(&["resume", "latest", "--no-prompt"]);
    let mut exit = None;
    lab.confirm_until(
        || {
            exit = resumed.try_wait().unwrap();
            exit.is_some()
        },
        Duration::from_secs(150),
    );
    let tail: Vec<_> = lab.journal().into_iter().rev().take(12).collect();
    assert!(exit.is_some_and(|e| e.success()), "{exit:?} {tail:#?}");
    let synced = lab
        .journal()
        .iter()
        .filter(|e| e["event"] == "step_started" && e["step"] == "erp-db/final-sync")
        .count();
    assert_eq!(synced, 2, "the final sync was not made again");
    assert_eq!(erp_db_on(&lab, "hv-pra"), "running");
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-system.qcow2");
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(&disk).unwrap(),
        "hv-pra's copy is not hv-main's disk"
    );
}

/// An emergency failover killed (SIGKILL) in erp-db's start once its point was chosen and
/// leased, before it was journaled (hv-pra's driver holds the definition): the start's
/// command was never sent. The resume runs the start again whole, its point chosen and
/// journaled, erp-db started; it is not handed to a person, who would start the vm on
/// copies the cut may have left half rolled back.
#[test]
fn an_emergency_failover_cut_before_its_start_journaled_its_point_starts_again_whole() {
    let lab = Lab::up(187);
    lab.primary_lost(&["erp-db"]);
    let held = lab.lab().join("define-held");
    let wrapped = wrap_lab_vm(
        &lab,
        "hv-pra",
        &format!(
            "if [ \"$1\" = define ] && [ \"$2\" = erp-db ]; then echo $$ > '{}'; exec sleep 600; fi",
            held.display()
        ),
    );
    let args = [
        "failover",
        "--emergency",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
    ];
    let mut child = lab.spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(240);
    let pid = loop {
        if let Ok(pid) = std::fs::read_to_string(&held)
            && pid.ends_with('\n')
        {
            break pid.trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "erp-db's definition did not begin"
        );
        assert!(child.try_wait().unwrap().is_none(), "the failover ended");
        std::thread::sleep(Duration::from_millis(5));
    };
    let journal = lab.journal();
    assert!(
        journal
            .iter()
            .any(|e| e["event"] == "step_started" && e["step"] == "erp-db/start")
            && !journal.iter().any(|e| e["event"] == "replica_point_used"),
        "{journal:#?}"
    );
    let killed = tool("kill", &["-KILL", &child.id().to_string()]);
    assert!(killed.status.success(), "{killed:?}");
    let _ = child.wait();
    let _ = tool("kill", &["-KILL", &pid]);
    wrapped.restore();

    let mut resumed = lab.spawn(&["resume", "latest", "--no-prompt"]);
    let mut exit = None;
    lab.confirm_until(
        || {
            exit = resumed.try_wait().unwrap();
            exit.is_some()
        },
        Duration::from_secs(150),
    );
    let journal = lab.journal();
    let tail: Vec<_> = journal.iter().rev().take(12).collect();
    assert!(exit.is_some_and(|e| e.success()), "{exit:?} {tail:#?}");
    assert!(
        !journal
            .iter()
            .any(|e| e["event"] == "waiting_for_operator" && e["step"] == "erp-db/start"),
        "handed to a person: {tail:#?}"
    );
    let used: Vec<_> = journal
        .iter()
        .filter(|e| e["event"] == "replica_point_used" && e["step"] == "erp-db/start")
        .collect();
    assert_eq!(used.len(), 1, "{used:#?}");
    assert_eq!(erp_db_on(&lab, "hv-pra"), "running");
}

/// `host`'s `lab-vm` with `script` (sh) run first, given its arguments, the real one as
/// `$REAL`, which it then runs (`exec "$REAL" "$@"`) unless the script exits: the real one is
/// put back when the guard goes ([`LabVmWrapped::restore`], or its drop).
fn wrap_lab_vm(lab: &Lab, host: &str, script: &str) -> LabVmWrapped {
    let bin = lab.lab().join(format!("hosts/{host}/bin/lab-vm"));
    let real = bin.with_extension("real");
    std::fs::rename(&bin, &real).unwrap();
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\nREAL='{}'\n{script}\nexec \"$REAL\" \"$@\"\n",
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    LabVmWrapped { bin, real }
}

/// A host's `lab-vm` wrapped by [`wrap_lab_vm`].
struct LabVmWrapped {
    bin: PathBuf,
    real: PathBuf,
}

impl LabVmWrapped {
    /// The real `lab-vm` back in its place.
    fn restore(self) {}
}

impl Drop for LabVmWrapped {
    fn drop(&mut self) {
        let _ = std::fs::rename(&self.real, &self.bin);
    }
}

/// A planned failover of erp-db alone, killed (SIGKILL) in erp-db's start on hv-pra, after its
/// final sync: hv-pra's driver holds the start (its pid said in `held`), after starting
/// erp-db there when `started`, until it is stopped, so that the kill comes there whatever
/// the machine's load.
fn failover_killed_in_erp_db_start(lab: &Lab, started: bool) {
    let bin = lab.lab().join("hosts/hv-pra/bin/lab-vm");
    let real = bin.with_extension("real");
    let held = lab.lab().join("start-held");
    std::fs::rename(&bin, &real).unwrap();
    let start = if started {
        format!("'{}' \"$@\" || exit 1; ", real.display())
    } else {
        String::new()
    };
    std::fs::write(
        &bin,
        format!(
            "#!/bin/sh\nif [ \"$1\" = start ] && [ \"$2\" = erp-db ]; then {start}echo $$ > '{}'; exec sleep 600; fi\nexec '{}' \"$@\"\n",
            held.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let mut child = lab.spawn(&[&["failover"][..], &only[..]].concat());
    let deadline = Instant::now() + Duration::from_secs(240);
    let pid = loop {
        if let Ok(pid) = std::fs::read_to_string(&held)
            && pid.ends_with('\n')
        {
            break pid.trim().to_string();
        }
        assert!(Instant::now() < deadline, "erp-db/start did not begin");
        assert!(child.try_wait().unwrap().is_none(), "the failover ended");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        lab.journal()
            .iter()
            .any(|e| e["event"] == "step_started" && e["step"] == "erp-db/start")
    );
    let killed = tool("kill", &["-KILL", &child.id().to_string()]);
    assert!(killed.status.success(), "{killed:?}");
    let _ = child.wait();
    let _ = tool("kill", &["-KILL", &pid]);
    std::fs::rename(&real, &bin).unwrap();
}

/// The same failover killed once its start on hv-pra had started erp-db there; meanwhile
/// erp-db was started again on hv-main by hand, wrote there, and was stopped again. Both
/// sites say it is stopped on hv-main, but its disks there are not what the final sync read
/// (the run's journal says what it read): the resume refuses (exit 6), naming the disk; to
/// keep what hv-pra has, `resume --force` carries on, journaled.
#[test]
fn a_resumed_failover_never_carries_on_from_a_final_sync_the_primary_ran_past_and_stopped() {
    let lab = Lab::up(254);
    failover_killed_in_erp_db_start(&lab, true);
    assert_eq!(erp_db_on(&lab, "hv-pra"), "running");
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    start_erp_db_by_hand(&lab, "hv-main", &images);
    write_64k(&images.join("erp-db-data.qcow2"), 0x2d);
    let out = crate::common::lab_vm(&lab.lab(), "hv-main", &["stop", "erp-db"]);
    assert!(out.status.success(), "{out:?}");
    let refused = lab.run(&["resume", "latest", "--no-prompt"]);
    assert_eq!(refused.code, 6, "{refused:?}");
    assert!(
        refused.stderr.contains(
            "its disks on hv-main were written since the final sync (step erp-db/final-sync) read them"
        ) && refused.stderr.contains("erp-db-data.qcow2 (it was `")
            && refused.stderr.contains("resume with --force"),
        "{}",
        refused.stderr
    );
    let mut resumed = lab.spawn(&["resume", "latest", "--no-prompt", "--force"]);
    let mut exit = None;
    lab.confirm_until(
        || {
            exit = resumed.try_wait().unwrap();
            exit.is_some()
        },
        Duration::from_secs(150),
    );
    let journal = lab.journal();
    let tail: Vec<_> = journal.iter().rev().take(12).collect();
    assert!(exit.is_some_and(|e| e.success()), "{exit:?} {tail:#?}");
    let forced = journal
        .iter()
        .find(|e| e["event"] == "readiness_forced")
        .unwrap_or_else(|| panic!("not journaled: {tail:#?}"));
    assert!(
        forced["problems"]
            .to_string()
            .contains("as forced (--force)"),
        "{forced}"
    );
    let synced = journal
        .iter()
        .filter(|e| e["event"] == "step_started" && e["step"] == "erp-db/final-sync")
        .count();
    assert_eq!(synced, 1, "the final sync was made again");
    assert_eq!(erp_db_on(&lab, "hv-pra"), "running");
}

/// Flips one byte of `path` at `at` in place, its modification time and size kept: what a
/// disk error does, or a write that covers its tracks. Its stamp says nothing.
fn rot_keeping_time(path: &Path, at: usize) {
    use std::os::unix::fs::FileExt as _;
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at as u64).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at as u64).unwrap();
    f.set_modified(mtime).unwrap();
    f.sync_all().unwrap();
}

/// Two points of `image` of a vm of `service`, the copy's newest rotted behind its point:
/// the copy, and what it held at the first point.
fn rotted_after_two_points(lab: &Lab, service: &str, image: &str) -> (PathBuf, Vec<u8>) {
    let source = lab
        .host_root("hv-main")
        .join("srv/datastore/images")
        .join(image);
    let run = lab.run(&["replicate", "--service", service]);
    assert_eq!(run.code, 0, "{run:?}");
    let copy = walk(&lab.host_root("hv-pra"))
        .into_iter()
        .find(|p| p.ends_with(image))
        .unwrap();
    let first = std::fs::read(&copy).unwrap();
    let before = std::fs::read(&source).unwrap();
    write_64k(&source, 0x6b);
    let changed_at = first_difference(&before, &std::fs::read(&source).unwrap());
    std::thread::sleep(Duration::from_millis(1100)); // point ids are per second
    let run = lab.run(&["replicate", "--service", service]);
    assert_eq!(run.code, 0, "{run:?}");
    // A byte of the copy rots where the newest point wrote; nothing but its hash shows it.
    rot_keeping_time(&copy, changed_at);
    let status = lab.run(&["status"]);
    assert!(
        status
            .stdout
            .lines()
            .any(|l| l.starts_with(service) && l.contains(" ok ")),
        "the copy's metadata still vouches for it: {status:?}"
    );
    (copy, first)
}

#[test]
fn a_copy_that_rotted_behind_its_point_is_never_started_as_that_point() {
    let lab = Lab::up(201);
    // A drill reads the point again before it starts the vm, and starts nothing from it.
    rotted_after_two_points(&lab, "planning", "planning-system.qcow2");
    let run = lab.run(&["drill", "--service", "planning", "--only", "--no-prompt"]);
    assert_ne!(run.code, 0, "{run:?}");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains("FAILED verification") && said.contains("a drill never rolls a copy back"),
        "{said}"
    );
    assert!(
        lab.journal()
            .iter()
            .all(|e| e["event"] != "replica_point_used"),
        "no point used by the drill"
    );

    // An emergency failover starts the vm from the older point, whole, and says why.
    let (copy, first) = rotted_after_two_points(&lab, "erp-db", "erp-db-system.qcow2");
    let used = lab.emergency_failover_of_erp_db();
    let note = used[0]["note"].as_str().unwrap();
    assert!(
        note.contains("read again by hash before the start, is DAMAGED"),
        "the run says why: {note}"
    );
    assert!(note.contains("rolled back"), "{note}");
    assert_eq!(used[0]["verified"], true, "{:?}", used[0]);
    assert_eq!(std::fs::read(&copy).unwrap(), first);
}

#[test]
fn a_restore_never_starts_a_vm_whose_newest_data_is_on_the_recovery_site() {
    let lab = Lab::up(202);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    lab.emergency_failover_of_erp_db();
    let starts = || {
        calls(&lab, "hv-main")
            .matches("lab-vm start erp-db")
            .count()
    };
    let before = starts();
    let restore = [
        "restore",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
    ];
    // The vm runs on its recovery copies: a restore of the primary site refuses it.
    let run = lab.run(&restore);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains("vm erp-db runs on hv-pra")
            && run.stderr.contains("reprise failback --service erp-db"),
        "{run:?}"
    );
    // Both sites lost their power: it runs nowhere, but its newest data is on its copies.
    let out = crate::common::lab_vm(&lab.lab(), "hv-pra", &["stop", "erp-db"]);
    assert!(out.status.success(), "{out:?}");
    let run = lab.run(&restore);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr
            .contains("vm erp-db ran on its recovery copies on hv-pra since failover run"),
        "{run:?}"
    );
    assert_eq!(starts(), before, "nothing started on hv-main");
    // The failover's lease can no longer be read (a damaged file after the power cut): it
    // may be a failover's, so the restore still refuses, naming the file.
    let leases = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-data.qcow2.reprise/leases");
    let lease = std::fs::read_dir(&leases)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("live-")
        })
        .unwrap_or_else(|| panic!("a live lease in {}", leases.display()));
    let kept = std::fs::read(&lease).unwrap();
    std::fs::write(&lease, b"{").unwrap();
    let system = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-system.qcow2.reprise/leases");
    let system_kept = std::fs::read_dir(&system)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("live-")
        })
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            std::fs::write(&p, b"{").unwrap();
            (p, bytes)
        })
        .collect::<Vec<_>>();
    assert!(
        !system_kept.is_empty(),
        "a live lease in {}",
        system.display()
    );
    let run = lab.run(&restore);
    assert_eq!(run.code, 6, "{run:?}");
    let name = lease.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        run.stderr
            .contains("the leases of its recovery copies on hv-pra cannot be read")
            && run.stderr.contains(&name)
            && run.stderr.contains("`reprise restore --force`"),
        "{run:?}"
    );
    assert_eq!(starts(), before, "nothing started on hv-main");
    std::fs::write(&lease, kept).unwrap();
    for (p, bytes) in system_kept {
        std::fs::write(p, bytes).unwrap();
    }
    // The copies' storage is not mounted after the power cut: hv-pra answers, the copies
    // and their leases are not there. That is no "no failover": this machine's journals
    // say one left it there.
    let images = lab.host_root("hv-pra").join("srv/replicas/images");
    let unmounted = images.with_extension("unmounted");
    std::fs::rename(&images, &unmounted).unwrap();
    std::fs::create_dir(&images).unwrap();
    let run = lab.run(&restore);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr
            .contains("is not there (its storage not mounted?)")
            && run.stderr.contains("`reprise restore --force`"),
        "{run:?}"
    );
    assert_eq!(starts(), before, "nothing started on hv-main");
    std::fs::remove_dir(&images).unwrap();
    std::fs::rename(&unmounted, &images).unwrap();
    // The recovery host no longer answers: its leases cannot say, this machine's journals
    // do (the failover run, and no failback since).
    let failover = lab.journal()[0]["run_id"].as_str().unwrap().to_string();
    assert!(failover.ends_with("failover"), "{failover}");
    let killed = tool("kill", &[&sshd_pid(&lab, "hv-pra")]);
    assert!(killed.status.success(), "{killed:?}");
    let run = lab.run(&restore);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "vm erp-db: failover run {failover} started it on hv-pra"
        )) && run.stderr.contains("its copies on hv-pra cannot be read")
            && run.stderr.contains("`reprise restore --force`"),
        "{run:?}"
    );
    assert_eq!(starts(), before, "nothing started on hv-main");
    // That site and its data are lost: forced, it starts from the primary's disks, and the
    // journal says who forced what.
    let forced: Vec<&str> = restore.iter().copied().chain(["--force"]).collect();
    let run = lab.run(&forced);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(starts(), before + 1, "started on hv-main");
    let said = lab
        .journal()
        .into_iter()
        .find(|e| e["event"] == "readiness_forced")
        .unwrap_or_else(|| panic!("the forced restore is journaled"));
    assert!(
        said["problems"][0]
            .as_str()
            .unwrap()
            .contains(&format!("failover run {failover}")),
        "{said}"
    );
    // The restore that started it on its primary brought it back: the next one is not
    // refused by that failover.
    let out = crate::common::lab_vm(&lab.lab(), "hv-main", &["stop", "erp-db"]);
    assert!(out.status.success(), "{out:?}");
    let run = lab.run(&restore);
    assert_eq!(run.code, 0, "{run:?}");
}

/// While the primary site was down, erp-db was started by hand on its recovery copy on hv-pra
/// (no failover, no lease) and wrote there. When the power comes back, a restore would start
/// it on hv-main from its disks of before: refused (exit 6), naming the copy and what to do,
/// nothing started; forced, it starts, and the journal says what was forced.
#[test]
fn a_restore_never_starts_a_vm_whose_recovery_copy_was_written_outside_reprise() {
    let lab = Lab::up(128);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    lab.primary_lost(&["erp-db"]);
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-system.qcow2");
    write_64k(&copy, 0x3d);
    let starts = || {
        calls(&lab, "hv-main")
            .matches("lab-vm start erp-db")
            .count()
    };
    let before = starts();
    let restore = [
        "restore",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
    ];
    let run = lab.run(&restore);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(
        run.stderr.contains(
            "vm erp-db: its recovery copies on hv-pra were written since their newest point, outside any failover"
        ) && run.stderr.contains("erp-db-system.qcow2 (the copy changed since its newest point")
            && !run.stderr.contains("erp-db-data.qcow2 (")
            && run.stderr.contains("reprise failback --service erp-db --force"),
        "{run:?}"
    );
    assert_eq!(starts(), before, "nothing started on hv-main");
    let forced: Vec<&str> = restore.iter().copied().chain(["--force"]).collect();
    let run = lab.run(&forced);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(starts(), before + 1, "started on hv-main");
    let said = lab
        .journal()
        .into_iter()
        .find(|e| e["event"] == "readiness_forced")
        .unwrap_or_else(|| panic!("the forced restore is journaled"));
    assert!(
        said["problems"][0]
            .as_str()
            .unwrap()
            .contains("were written since their newest point, outside any failover"),
        "{said}"
    );
}

/// A backup set whose newest point is bad (rot found by `verify`) has no point a run would
/// start from: a run rolls a vm's copy back to an older point, never a backup set's (its step
/// fails). `status` does not offer the older point as the set's newest good one, nor say the
/// set is ok: it names the set, says why and what to do, and exits 8.
#[test]
fn a_backup_set_whose_newest_point_is_bad_is_never_reported_ok_from_an_older_one() {
    let lab = Lab::up(48);
    let run = lab.run(&["replicate", "--service", "backups"]);
    assert_eq!(run.code, 0, "{run:?}");
    let points_file = lab
        .host_root("nas-pra")
        .join("srv/backups/ad-systemstate.reprise/points.json");
    let mut points: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&points_file).unwrap()).unwrap();
    let list = points.as_array_mut().unwrap();
    assert_eq!(list.len(), 2, "the lab's point and this test's: {list:#?}");
    let older = list[0]["id"].as_str().unwrap().to_string();
    // What `verify` records when the newest point's bytes rotted.
    list[1]["verified"] = serde_json::json!("bad");
    std::fs::write(&points_file, serde_json::to_string(&points).unwrap()).unwrap();

    let status = lab.run(&["status", "--format", "json"]);
    assert_eq!(status.code, 8, "{status:?}");
    let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["item"] == "ad-state")
        .unwrap_or_else(|| panic!("{rows:#}"));
    assert!(row["newest_good_point"].is_null(), "{row:#}");
    assert_eq!(row["breach"], true, "{row:#}");
    let why = row["why"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!(
            "a run never rolls a backup set's copy back to an older point ({older})"
        )) && why.contains("`reprise replicate ad-state`"),
        "{row:#}"
    );
    let text = lab.run(&["status"]);
    assert_eq!(text.code, 8, "{text:?}");
    let line = text
        .stdout
        .lines()
        .find(|l| l.starts_with("ad-state "))
        .unwrap_or_else(|| panic!("{}", text.stdout));
    assert!(line.contains(" none ") && !line.contains(" ok "), "{line}");
}

/// The copy of backup set erp-dumps on nas-pra gets a file behind its point: `check` fails on
/// it naming the set and its folder (exit 7), `status` says it, and a drill of the backups
/// refuses to rely on it (its backup step fails, naming the copy and what to do) while the
/// other sets are proven and journaled; an emergency failover relies on it only when named
/// with --accept-unverified (journaled unverified), and leases every copy. The primary's folder
/// then gets a file: the failback that replicates erp-dumps back refuses (exit 7, nothing
/// started, the file kept) and goes ahead only with --force, journaled.
#[test]
fn a_backup_set_copy_is_proven_before_a_run_relies_on_it_and_never_copied_back_over_newer_files() {
    let lab = Lab::up(156);
    let copy = lab.host_root("nas-pra").join("srv/backups/erp");
    let primary = lab.host_root("san-main").join("export/backups/erp");
    std::fs::write(copy.join("planted.dump"), "not from the primary").unwrap();

    // `check`'s verdict, and its item of erp-dumps' copy (failed, its detail).
    let check_erp_dumps = || {
        let run = lab.run(&["check", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let item = json["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["area"] == "replicas" && i["subject"] == "backup erp-dumps")
            .unwrap_or_else(|| panic!("{json:#}"))
            .clone();
        assert_eq!(item["status"], "failed", "{item}");
        (run.code, json, item["detail"].as_str().unwrap().to_string())
    };
    let (code, json, detail) = check_erp_dumps();
    assert_eq!(code, 7);
    assert!(
        detail.starts_with("UNVERIFIED: the copy changed since its newest point")
            && detail.contains("`reprise verify erp-dumps`")
            && detail.ends_with(&format!("(the folder nas-pra:{})", copy.display())),
        "{detail}"
    );
    let others = check_items(&json, "failed");
    assert_eq!(
        others,
        [("replicas".to_string(), "backup erp-dumps".to_string())],
        "only that copy fails"
    );
    let status = lab.run(&["status", "--format", "json"]);
    assert_ne!(status.code, 0, "{status:?}");
    assert!(
        status.stdout.contains("erp-dumps")
            && status.stdout.contains("changed since its newest point"),
        "{}",
        status.stdout
    );

    let only = ["--service", "backups", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["drill"][..], &only[..]].concat(),
        Duration::from_secs(120),
    );
    assert!(!exit.success(), "the drill relied on the copy");
    let events = lab.journal();
    let refused = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "backups/backup-erp-dumps")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(refused["status"], "failed", "{refused}");
    let why = refused["message"].as_str().unwrap();
    assert!(
        why.starts_with(&format!(
            "backup set erp-dumps: its copy nas-pra:{} is not proven, so a drill does not rely on it: ",
            copy.display()
        )) && why.contains("--accept-unverified erp-dumps"),
        "{why}"
    );
    let used: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "replica_point_used")
        .collect();
    assert!(used.iter().all(|e| e["item"] != "erp-dumps"), "{used:#?}");
    // A drill gives its leases back.
    let leases = |set: &str| {
        let dir = lab
            .host_root("nas-pra")
            .join(format!("srv/backups/{set}.reprise/leases"));
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_else(|_| Vec::<String>::new())
    };
    assert!(leases("erp").is_empty() && leases("ad-systemstate").is_empty());

    let emergency = ["failover", "--emergency"];
    let exit = lab.run_confirming(
        &[
            &emergency[..],
            &["--accept-unverified", "erp-dumps"],
            &only[..],
        ]
        .concat(),
        Duration::from_secs(120),
    );
    let events = lab.journal();
    assert!(exit.success(), "{:?}", events.last());
    let used: HashMap<String, &serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "replica_point_used")
        .map(|e| (e["item"].as_str().unwrap().to_string(), e))
        .collect();
    assert_eq!(
        used["erp-dumps"]["verified"], false,
        "{:?}",
        used["erp-dumps"]
    );
    assert!(
        used["erp-dumps"]["note"]
            .as_str()
            .unwrap()
            .contains("--accept-unverified"),
        "{:?}",
        used["erp-dumps"]
    );
    assert_eq!(used["ad-state"]["verified"], true, "{:?}", used["ad-state"]);
    for set in ["erp", "ad-systemstate", "shares"] {
        assert_eq!(leases(set).len(), 1, "{set}: {:?}", leases(set));
    }
    // The report says which points the failover relied on; the data loss of a copy started as
    // it is, dated only by its file, is not measured, and says so.
    let report = lab.run(&["report", "latest", "--format", "json"]);
    assert_eq!(report.code, 0, "{report:?}");
    let report: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    let backups = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "backups")
        .unwrap_or_else(|| panic!("{report:#}"));
    assert!(backups["data_loss_s"].is_null(), "{backups:#}");
    let unknown: Vec<String> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["kind"] == "data_loss_unknown" && p["service"] == "backups")
        .map(|p| p.to_string())
        .collect();
    assert!(
        unknown.len() == 1
            && unknown[0].contains("erp-dumps started from copy-")
            && unknown[0].contains("when its data was taken is not known"),
        "{report:#}"
    );
    let items: Vec<(&str, bool)> = backups["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["item"].as_str().unwrap(),
                p["verified"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        items,
        [("erp-dumps", false), ("ad-state", true), ("shares", true)],
        "{backups:#}"
    );

    // The primary's folder gets a file after the failover: the failback would remove it.
    let kept = primary.join("written-after.dump");
    std::fs::write(&kept, "the primary's own").unwrap();
    // The recovery site writes into its copy of shares, which the failback does not bring
    // back (a copy still the point the failover relied on would hold nothing of its own).
    std::fs::write(
        lab.host_root("nas-pra")
            .join("srv/backups/shares/written-at-pra.txt"),
        "the recovery site's own",
    )
    .unwrap();
    let runs = || std::fs::read_dir(lab.state().join("runs")).unwrap().count();
    let before = runs();
    let refused = lab.run(&[&["failback"][..], &only[..]].concat());
    assert_eq!(refused.code, 7, "{refused:?}");
    assert!(
        refused.stderr.contains(&format!(
            "copy-back backup set erp-dumps: its folder san-main:{} was last changed (a file written, added or removed) at ",
            primary.display()
        )) && refused
            .stderr
            .contains("after the failover relied on its copy")
            && refused.stderr.contains("cp -a ")
            && refused.stderr.contains("--force")
            && !refused.stderr.contains("copy-back backup set ad-state"),
        "{}",
        refused.stderr
    );
    // The failback does not replicate shares back: what the recovery site wrote in its copy
    // would be dropped the day it is released.
    let shares = lab.host_root("nas-pra").join("srv/backups/shares");
    assert!(
        refused.stderr.contains(&format!(
            "backup set shares: its recovery copy nas-pra:{} was relied on by a failover",
            shares.display()
        )) && refused
            .stderr
            .contains("add a replicate step of shares to the failback runbook of service backups")
            && refused.stderr.contains("`reprise release shares`"),
        "{}",
        refused.stderr
    );
    assert_eq!(runs(), before, "a refused failback started a run");
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), "the primary's own");

    let exit = lab.run_confirming(
        &[&["failback", "--force"][..], &only[..]].concat(),
        Duration::from_secs(120),
    );
    let events = lab.journal();
    assert!(exit.success(), "{:?}", events.last());
    let forced = events
        .iter()
        .find(|e| e["event"] == "readiness_forced")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert!(
        forced["problems"].as_array().unwrap().iter().any(|p| p
            .as_str()
            .unwrap()
            .starts_with("copy-back backup set erp-dumps: its folder san-main:")),
        "{forced}"
    );
    assert!(
        forced["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("backup set shares: ")),
        "{forced}"
    );
    // Back on the primary; the copies it replicated back are released.
    assert!(primary.join("planted.dump").exists());
    assert!(leases("erp").is_empty() && leases("ad-systemstate").is_empty());
    assert_eq!(
        leases("shares").len(),
        1,
        "not replicated back: still held (forced)"
    );
    // The recovery site wrote a dump into erp-dumps' copy after the failback copied it back:
    // the next replication, which would delete it, stops and names it; the copy of ad-state,
    // as it was copied back, is replicated into; `reprise release` lets erp-dumps go on.
    let late = copy.join("written-at-pra-after.dump");
    std::fs::write(&late, "the recovery site's, after the copy back").unwrap();
    let (_, _, detail) = check_erp_dumps();
    assert!(
        detail.starts_with("it was written after a failback read it to copy it back")
            && detail.contains("`reprise replicate erp-dumps` stops until then"),
        "{detail}"
    );
    let refused = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        said.contains("written after a failback read it to copy it back")
            && said.contains("written-at-pra-after.dump")
            && said.contains("`reprise release`"),
        "{said}"
    );
    assert!(
        late.exists(),
        "the dump written after the copy back was removed"
    );
    let run = lab.run(&["replicate", "--service", "ad-state"]);
    assert_eq!(run.code, 0, "{run:?}");
    let released = lab.run(&["release", "erp-dumps"]);
    assert_eq!(released.code, 0, "{released:?}");
    assert!(
        released
            .stdout
            .contains("the record of a failback's copy back"),
        "{released:?}"
    );
    let run = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !late.exists(),
        "released: the copy is the primary's folder again"
    );
}

/// The example with a service `dump-check` that needs the backups and fails in a `mode` run
/// (a step on `host` that exits 1), in a folder of its own.
fn with_failing_dump_check(mode: &str, host: &str) -> tempfile::TempDir {
    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    let services = edited.path().join("inventory/services.toml");
    let mut text = std::fs::read_to_string(&services).unwrap();
    text.push_str(&format!(
        "\n[services.dump-check]\ndescription = \"A dump restored from the backups\"\nkind = \"application\"\nowner = \"Sofia Haddad\"\nrto = \"1d\"\ndepends_on = [\"backups\"]\nhost = \"{host}\"\n"
    ));
    std::fs::write(&services, text).unwrap();
    std::fs::write(
        edited.path().join("runbooks/dump-check.toml"),
        format!(
            "[[dump-check.{mode}]]\nid = \"restore-dump\"\nkind = \"exec\"\nhost = \"{host}\"\nrun = \"false\"\ntimeout = \"1m\"\nexpected = \"10s\"\n"
        ),
    )
    .unwrap();
    edited
}

/// A planned failover relies on the backup sets' copies (each leased at its point), then a
/// service that needs them fails: the roll-back releases the copies, so that replication may
/// write into them again and no failback takes them for data the recovery site wrote.
#[test]
fn a_rolled_back_failover_releases_the_backup_set_copies_it_relied_on() {
    let lab = Lab::up(157);
    let edited = with_failing_dump_check("failover", "nas-pra");
    let exit = lab.run_confirming_in(
        edited.path(),
        &[
            "failover",
            "--service",
            "backups",
            "--service",
            "dump-check",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(180),
    );
    let events = lab.journal();
    assert_eq!(exit.code(), Some(1), "{:?}", events.last());
    let done: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step_finished" && e["status"] == "done")
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    let undone: HashMap<&str, &serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "undo_finished")
        .map(|e| (e["step"].as_str().unwrap(), e))
        .collect();
    for set in ["erp-dumps", "ad-state", "shares"] {
        let step = format!("backups/backup-{set}");
        assert!(done.contains(&step.as_str()), "{done:?}");
        let undo = undone
            .get(step.as_str())
            .unwrap_or_else(|| panic!("{step} not undone: {events:#?}"));
        assert_eq!(undo["ok"], true, "{undo}");
        assert!(
            undo["message"]
                .as_str()
                .unwrap()
                .ends_with(&format!("of backup set {set} was released")),
            "{undo}"
        );
    }
    for dir in ["erp", "ad-systemstate", "shares"] {
        let leases = lab
            .host_root("nas-pra")
            .join(format!("srv/backups/{dir}.reprise/leases"));
        let held = std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0);
        assert_eq!(held, 0, "{dir} still leased");
    }
}

/// A failback copies the backup sets back to the primary (which releases the leases the
/// failover held on their recovery copies), then a service that needs them fails: the
/// roll-back leases those copies again, since the recovery site runs the service again and
/// writes into them, so that no replication writes the primary's folders over them.
#[test]
fn a_rolled_back_failback_leases_the_backup_set_copies_it_copied_back_again() {
    let lab = Lab::up(166);
    let edited = with_failing_dump_check("failback", "san-main");
    let exit = lab.run_confirming_in(
        edited.path(),
        &[
            "failover",
            "--service",
            "backups",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(180),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let exit = lab.run_confirming_in(
        edited.path(),
        &[
            "failback",
            "--service",
            "backups",
            "--service",
            "dump-check",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(180),
    );
    let events = lab.journal();
    assert_eq!(exit.code(), Some(1), "{events:#?}");
    let undo = events
        .iter()
        .find(|e| e["event"] == "undo_finished" && e["step"] == "backups/erp-dumps-back")
        .unwrap_or_else(|| panic!("not undone: {events:#?}"));
    assert_eq!(undo["ok"], true, "{undo}");
    assert!(
        undo["message"]
            .as_str()
            .is_some_and(|m| m.contains("is leased to this run again")),
        "{undo}"
    );
    let leases = lab
        .host_root("nas-pra")
        .join("srv/backups/erp.reprise/leases");
    let held = std::fs::read_dir(&leases).map(|d| d.count()).unwrap_or(0);
    assert_eq!(held, 1, "the copy of erp-dumps is not leased");
    let refused = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_ne!(refused.code, 0, "{refused:?}");
}

/// erp-dumps' folder holds a folder with no file in it and a link within it: a copy of its
/// files leaves them out, which the replication's line, `points` and a drill relying on the
/// copy each say, with what to do.
#[test]
fn what_a_backup_set_copy_leaves_out_is_said_where_it_is_seen() {
    let lab = Lab::up(82);
    let src = lab.host_root("san-main").join("export/backups/erp");
    std::fs::create_dir_all(src.join("pg_tblspc")).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let first = files.first().expect("the lab's dumps").clone();
    std::os::unix::fs::symlink(&first, src.join("latest.dump")).unwrap();
    let run = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_eq!(run.code, 0, "{run:?}");
    let said = |text: &str| {
        text.contains("not in the copy, which holds the set's files only")
            && text.contains("the folder pg_tblspc/ (no file in it)")
            && text.contains(&format!("the link latest.dump -> {first}"))
            && text.contains("make them again by hand")
    };
    assert!(said(&run.stdout), "{run:?}");
    let points = lab.run(&["points", "erp-dumps"]);
    assert!(said(&points.stdout), "{points:?}");
    let exit = lab.run_confirming(
        &[
            "drill",
            "--service",
            "backups",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(120),
    );
    let events = lab.journal();
    assert!(exit.success(), "{events:#?}");
    let relied = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "backups/backup-erp-dumps")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert!(relied["message"].as_str().is_some_and(said), "{relied}");
    // Made again by hand in the copy, but not as the point records it: the drill refuses
    // the copy, naming both (a restore through it would read other data than the point).
    let copy = lab.host_root("nas-pra").join("srv/backups/erp");
    std::os::unix::fs::symlink("elsewhere.dump", copy.join("latest.dump")).unwrap();
    let exit = lab.run_confirming(
        &[
            "drill",
            "--service",
            "backups",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(120),
    );
    let events = lab.journal();
    assert!(!exit.success(), "{events:#?}");
    let refused = events
        .iter()
        .rev()
        .find(|e| e["event"] == "step_finished" && e["step"] == "backups/backup-erp-dumps")
        .unwrap_or_else(|| panic!("{events:#?}"));
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        refused["status"] == "failed"
            && message.contains("latest.dump -> elsewhere.dump")
            && message.contains(&format!("the point records latest.dump -> {first}")),
        "{refused}"
    );
}

/// The steps before the copy go to hv-main as one command; when a step's end is not seen
/// (its output cut at the limit reprise reads: here the definition writes 20 KiB of warnings),
/// whether the steps after it ran is not known: the freeze they may have made is undone, and
/// the steps are done again one at a time. Every freeze is thawed, and the vm is copied.
#[test]
fn a_step_before_the_copy_whose_end_is_not_seen_leaves_no_freeze_behind() {
    let lab = Lab::up(190);
    let calls = lab.lab().join("calls");
    let wrapped = wrap_lab_vm(
        &lab,
        "hv-main",
        &format!(
            "if [ \"$2\" = erp-db ]; then echo \"$1\" >> '{}'; fi\nif [ \"$1\" = definition ]; then head -c 20480 /dev/zero | tr '\\0' w >&2; fi",
            calls.display()
        ),
    );
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    wrapped.restore();
    assert_eq!(run.code, 0, "{run:?}");
    let log = std::fs::read_to_string(&calls).unwrap();
    let count = |what: &str| log.lines().filter(|l| *l == what).count();
    assert!(count("freeze") >= 1, "{log}");
    assert_eq!(count("freeze"), count("thaw"), "{log}");
}

/// Two replications of erp-db at once on one machine (a timer's round and one run by hand):
/// the second waits for the first to end, so that it never takes the first's freeze for one
/// left by a killed run and thaws it under the first's reads. hv-main's driver holds the
/// first's freeze; its calls, in order, are never interleaved.
#[test]
fn a_second_replication_of_a_vm_waits_for_the_first() {
    let lab = Lab::up(189);
    let (calls, go) = (lab.lab().join("calls"), lab.lab().join("freeze-wait"));
    std::fs::write(&go, b"").unwrap();
    let wrapped = wrap_lab_vm(
        &lab,
        "hv-main",
        &format!(
            "if [ \"$2\" = erp-db ]; then echo \"$1\" >> '{calls}'; fi\nif [ \"$1\" = freeze ] && [ \"$2\" = erp-db ]; then while [ -e '{go}' ]; do sleep 0.05; done; fi",
            calls = calls.display(),
            go = go.display()
        ),
    );
    let said = |what: &str| {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == what)
            .count()
    };
    let mut first = lab.spawn(&["replicate", "--service", "erp-db"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while said("freeze") == 0 {
        assert!(Instant::now() < deadline, "the first did not freeze");
        std::thread::sleep(Duration::from_millis(10));
    }
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(lab.args(&["replicate", "--service", "erp-db"]))
        .envs(LAB_SECRETS.iter().copied())
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        said("snapshot-check"),
        1,
        "the second asked while the first was frozen"
    );
    std::fs::remove_file(&go).unwrap();
    assert!(first.wait().unwrap().success());
    let out = second.wait_with_output().unwrap();
    wrapped.restore();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("another replication of erp-db runs on this machine"),
        "{stdout}{stderr}"
    );
    let order: Vec<String> = std::fs::read_to_string(&calls)
        .unwrap()
        .lines()
        .filter(|l| ["snapshot-check", "freeze", "thaw"].contains(l))
        .map(String::from)
        .collect();
    assert_eq!(
        order,
        [
            "snapshot-check",
            "freeze",
            "thaw",
            "snapshot-check",
            "freeze",
            "thaw"
        ],
        "{order:?}"
    );
}

/// A drill keeps the copies of the backup sets it proved leased until its cleanup is over:
/// a replication of erp-dumps while the drill runs (here, while its cleanup is held) is
/// refused, naming the drill, so its steps never read files of another point; once the
/// drill is over, the replication writes into it again.
#[test]
fn a_drill_holds_its_backup_set_copies_until_its_cleanup_is_over() {
    let lab = Lab::up(188);
    let (held, go) = (lab.lab().join("stop-held"), lab.lab().join("stop-wait"));
    std::fs::write(&go, b"").unwrap();
    let wrapped = wrap_lab_vm(
        &lab,
        "hv-pra",
        &format!(
            "if [ \"$1\" = stop ] && [ \"$2\" = drill-erp-db ]; then echo $$ > '{}'; while [ -e '{}' ]; do sleep 0.05; done; fi",
            held.display(),
            go.display()
        ),
    );
    let mut drill = lab.spawn(&[
        "drill",
        "--service",
        "backups",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
    ]);
    let deadline = Instant::now() + Duration::from_secs(240);
    while !std::fs::read_to_string(&held).is_ok_and(|p| p.ends_with('\n')) {
        assert!(
            Instant::now() < deadline,
            "the drill's cleanup did not begin"
        );
        assert!(drill.try_wait().unwrap().is_none(), "the drill ended");
        std::thread::sleep(Duration::from_millis(10));
    }
    let proved = lab.journal().into_iter().any(|e| {
        e["event"] == "step_finished"
            && e["step"] == "backups/backup-erp-dumps"
            && e["status"] == "done"
    });
    assert!(proved, "{:#?}", lab.journal());
    let during = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_ne!(during.code, 0, "{during:?}");
    assert!(
        during.stderr.contains("drill") && during.stderr.contains("erp"),
        "{during:?}"
    );
    // The drill's lease, as it is while the drill runs (put back below).
    let leases = lab
        .host_root("nas-pra")
        .join("srv/backups/erp.reprise/leases");
    let held_leases: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(&leases)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    assert_eq!(held_leases.len(), 1, "{held_leases:?}");
    std::fs::remove_file(&go).unwrap();
    let status = drill.wait().unwrap();
    wrapped.restore();
    assert!(status.success(), "{status:?} {:#?}", lab.journal());
    let after = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_eq!(after.code, 0, "{after:?}");
    // Cut right after its cleanup, before it gave the lease back (and so before its end was
    // journaled): the resume, which says the drill is over, gives it back.
    for (path, bytes) in &held_leases {
        std::fs::write(path, bytes).unwrap();
    }
    let run = crate::common::run_ids(&lab.state()).pop().unwrap();
    let journal = lab.state().join("runs").join(run).join("journal.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("\"event\":\"run_finished\""))
        .collect();
    assert_eq!(kept.len() + 1, text.lines().count(), "{text}");
    std::fs::write(&journal, kept.join("\n") + "\n").unwrap();
    let refused = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    let resumed = lab.run(&["resume", "latest", "--no-prompt"]);
    assert_ne!(resumed.code, 0, "{resumed:?}");
    assert!(resumed.stderr.contains("over"), "{resumed:?}");
    let again = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_eq!(again.code, 0, "{again:?}");
}

/// A file of the copy of backup set erp-dumps rots behind its point, its time and size kept
/// (its stamp says nothing): a drill of the backups reads the point again by hash before it
/// relies on it, finds it damaged, marks it bad and refuses, saying why.
#[test]
fn a_backup_set_copy_that_rotted_behind_its_point_is_never_relied_on() {
    let lab = Lab::up(158);
    let copy = lab.host_root("nas-pra").join("srv/backups/erp");
    let file = std::fs::read_dir(&copy)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_file() && std::fs::metadata(p).unwrap().len() > 0)
        .expect("a dump in the copy");
    rot_keeping_time(&file, 0);
    let exit = lab.run_confirming(
        &[
            "drill",
            "--service",
            "backups",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(120),
    );
    assert!(!exit.success(), "the drill relied on the copy");
    let events = lab.journal();
    let refused = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "backups/backup-erp-dumps")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(refused["status"], "failed", "{refused}");
    let why = refused["message"].as_str().unwrap();
    assert!(
        why.starts_with("backup set erp-dumps: its copy nas-pra:")
            && why.contains("FAILED verification"),
        "{why}"
    );
    assert!(
        events
            .iter()
            .filter(|e| e["event"] == "replica_point_used")
            .all(|e| e["item"] != "erp-dumps"),
        "{events:#?}"
    );
    let points = lab.run(&["points", "erp-dumps"]);
    assert!(
        points.stdout.contains("bad") || points.stdout.contains("FAILED"),
        "{points:?}"
    );
}

/// The report of the latest run: the entry of `service` in its services table.
fn reported_service(lab: &Lab, service: &str) -> serde_json::Value {
    let report = lab.run(&["report", "latest", "--format", "json"]);
    assert_eq!(report.code, 0, "{report:?}");
    let r: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    r["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == service)
        .unwrap_or_else(|| panic!("{service} is not in the report: {r:#}"))
        .clone()
}

/// The message a step finished with in the latest run.
fn finished(lab: &Lab, step: &str) -> (String, String) {
    let events = lab.journal();
    let e = events
        .iter()
        .rev()
        .find(|e| e["event"] == "step_finished" && e["step"] == step)
        .unwrap_or_else(|| panic!("{step} did not finish: {events:#?}"));
    (
        e["status"].as_str().unwrap().to_string(),
        e["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// An emergency failover declared while the primary is not really gone: erp-db still runs
/// on hv-main, and its recovery copy starts on hv-pra. Its health check answers, but the
/// same vm runs on both sites (both may be writing, users may reach either): the check stops
/// as a split brain, the run exits with the split-brain code, and the report does not count
/// erp-db as recovered, saying why. Once the primary is stopped, the resumed run passes the
/// same check and says what proved it.
#[test]
fn an_emergency_failover_with_the_primary_still_running_is_a_split_brain_not_a_recovery() {
    let lab = Lab::up(160);
    let failover = [
        "failover",
        "--emergency",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
    ];
    let exit = lab.run_confirming(&failover, Duration::from_secs(120));
    let (status, why) = finished(&lab, "erp-db/healthy");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.starts_with(
            "split brain: vm erp-db runs on hv-pra (running) and ALSO on hv-main (running)"
        ),
        "{why}"
    );
    assert_eq!(exit.code(), Some(6), "a split brain exits 6");
    // Said as the run started too, before anything ran, and kept in the journal.
    let said: Vec<String> = lab
        .journal()
        .iter()
        .filter(|e| e["event"] == "other_site")
        .map(|e| e["said"].to_string())
        .collect();
    assert!(
        said.len() == 1 && said[0].contains("vm erp-db still runs on hv-main"),
        "{said:?}"
    );
    let diverged: Vec<serde_json::Value> = lab
        .journal()
        .iter()
        .filter(|e| e["event"] == "other_site")
        .map(|e| e["diverged"].clone())
        .collect();
    assert_eq!(diverged, [serde_json::json!(["erp-db"])]);
    let reported = reported_service(&lab, "erp-db");
    assert_ne!(reported["status"], "recovered", "{reported:#}");
    let reason = reported["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("split brain"), "{reported:#}");
    // The primary is stopped, as the message asks, and the run resumed: the check passes
    // now, and says what proved it.
    lab.primary_lost(&["erp-db"]);
    let exit = lab.run_confirming(&["resume", "latest"], Duration::from_secs(120));
    let (status, how) = finished(&lab, "erp-db/healthy");
    assert!(exit.success(), "{how}");
    assert_eq!(status, "done", "{how}");
    assert!(
        how.contains("accepted a connection; proved by its driver's status: vm erp-db runs on hv-pra (running), and not on hv-main (shut off)"),
        "{how}"
    );
    let reported = reported_service(&lab, "erp-db");
    assert_eq!(reported["status"], "recovered", "{reported:#}");
    // It ran on hv-main after its point: what it wrote there is not in its copy, and no data
    // loss is claimed for it.
    assert!(
        reported["data_loss_s"].is_null()
            && reported["rpo_met"].is_null()
            && reported["data_loss_unknown"]
                .as_str()
                .is_some_and(|w| w.contains("writes the point lacks")),
        "{reported:#}"
    );
    let proved = reported["checks_proved"].to_string();
    assert!(
        proved.contains("erp-db/healthy: ") && proved.contains("proved by its driver's status"),
        "{reported:#}"
    );
    let md = lab.run(&["report", "latest", "--format", "md"]);
    assert!(
        md.stdout
            .contains("What proved each health check that passed")
            && md
                .stdout
                .contains("vm erp-db runs on hv-pra (running), and not on hv-main"),
        "{}",
        md.stdout
    );
}

/// The recovered vm does not run (its driver's start said it did: the vm died at boot, its
/// address being held), while another process answers at its address, as a leftover process
/// or another service would: the address answers, but the check fails at once, saying that
/// the vm does not run and that the service is not recovered; so does the report.
#[test]
fn a_check_answered_by_another_process_while_the_recovered_vm_is_down_is_not_a_recovery() {
    let lab = Lab::up(161);
    lab.primary_lost(&["erp-db"]);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.lab().join("lab.json")).unwrap())
            .unwrap();
    let vm = &state["vms"]["erp-db"];
    let address = vm["recovery_address"].as_str().unwrap();
    let port = vm["ports"][0].as_u64().unwrap();
    // Another process holds erp-db's recovery address and answers there.
    let other = std::net::TcpListener::bind((address, port as u16)).unwrap();
    // A driver whose start says it started whatever became of the vm.
    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    let vms = edited.path().join("inventory/vms.toml");
    let mut text = std::fs::read_to_string(&vms).unwrap();
    text.push_str(
        "\n[drivers.lab]\nstart = \"lab-vm start {{ vm.name }} {{ host.images_dir }} {{ vm.disks }}; exit 0\"\n",
    );
    std::fs::write(&vms, text).unwrap();
    let exit = lab.run_confirming_in(
        edited.path(),
        &[
            "failover",
            "--emergency",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(120),
    );
    assert!(!exit.success());
    assert_eq!(finished(&lab, "erp-db/start").0, "done");
    let (status, why) = finished(&lab, "erp-db/healthy");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains("something answers at its address, but not vm erp-db: its driver's status on hv-pra says it does not run (shut off)")
            && why.contains("the service is NOT recovered"),
        "{why}"
    );
    let reported = reported_service(&lab, "erp-db");
    assert_ne!(reported["status"], "recovered", "{reported:#}");
    let reason = reported["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("erp-db/healthy") && reason.contains("but not vm erp-db"),
        "{reported:#}"
    );
    drop(other);
}

/// A restore whose start of erp-db failed is resumed after a failover has brought erp-db up on
/// its recovery copies: the step that runs again is refused as at the start.
#[test]
fn a_resumed_restore_never_starts_a_vm_a_failover_brought_up_since() {
    let lab = Lab::up(203);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    lab.primary_lost(&["erp-db"]);
    let bin = lab.lab().join("hosts/hv-main/bin/lab-vm");
    let off = bin.with_extension("off");
    std::fs::rename(&bin, &off).unwrap();
    let run = lab.run(&[
        "restore",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
    ]);
    std::fs::rename(&off, &bin).unwrap();
    assert_ne!(run.code, 0, "its start fails without its driver: {run:?}");
    let restore = std::fs::read_dir(lab.state().join("runs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .find(|n| n.ends_with("-restore"))
        .expect("the restore's run");
    // The failover's run must sort after the restore's (run ids are per second).
    std::thread::sleep(Duration::from_millis(1100));
    lab.emergency_failover_of_erp_db();
    let run = lab.run(&["resume", &restore]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.stderr.contains("vm erp-db runs on hv-pra"), "{run:?}");
}

/// A restore asks the recovery site again as its step comes to start a vm: here hv-pra did
/// not answer when the restore began (its sshd frozen: the start can only say so), and came
/// back while the operator confirmed the power steps, running erp-db since an emergency
/// failover, run from another machine (this one's journals do not show it). The restore must
/// not start erp-db on hv-main from its disks of before.
#[test]
fn a_restore_never_starts_a_vm_a_recovery_host_that_came_back_runs() {
    let lab = Lab::up(204);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    lab.emergency_failover_of_erp_db();
    let failover = lab.journal()[0]["run_id"].as_str().unwrap().to_string();
    let runs = lab.state().join("runs");
    std::fs::rename(runs.join(&failover), lab.state().join(&failover)).unwrap();
    // The failover's run must sort before the restore's (run ids are per second).
    std::thread::sleep(Duration::from_millis(1100));
    let thaw = crate::common::freeze(&sshd_pid(&lab, "hv-pra"));
    let mut child = lab.spawn(&[
        "restore",
        "--service",
        "erp-db",
        "--yes",
        "--no-prompt",
        "--connect-timeout",
        "2",
    ]);
    // The restore has begun (its gate could not ask hv-pra) and waits for its first power step.
    let deadline = Instant::now() + Duration::from_secs(120);
    let waits = || {
        let events = lab.journal();
        events
            .iter()
            .any(|e| e["event"] == "run_started" && e["mode"] == "restore")
            && events.iter().any(|e| e["event"] == "waiting_for_operator")
    };
    while !waits() {
        assert!(
            Instant::now() < deadline,
            "the restore never waited for its operator"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended early"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(thaw);
    let mut exit = None;
    lab.confirm_until(
        || {
            exit = child.try_wait().unwrap();
            exit.is_some()
        },
        Duration::from_secs(240),
    );
    let exit = exit.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the restore did not end");
    });
    let events = lab.journal();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "run_started" && e["mode"] == "restore"),
        "{events:?}"
    );
    assert_eq!(exit.code(), Some(6), "{exit:?}");
    assert!(
        events.iter().any(|e| e["event"] == "other_site"
            && e["step"] == "erp-db/start"
            && e["refused"] == true),
        "{events:?}"
    );
    let start = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "erp-db/start")
        .expect("erp-db/start finished");
    assert_eq!(start["status"], "failed", "{start}");
    let message = start["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("vm erp-db runs on hv-pra") && message.contains("reprise failback"),
        "{message}"
    );
    // The directory's vms, which hv-pra does not run, were started.
    assert!(
        events.iter().any(|e| e["event"] == "step_finished"
            && e["step"] == "directory/start"
            && e["status"] == "done"),
        "{events:?}"
    );
    // erp-db was never started on hv-main: it still runs on hv-pra alone.
    let main = crate::common::lab_vm(&lab.lab(), "hv-main", &["status", "erp-db"]);
    assert!(
        !String::from_utf8_lossy(&main.stdout).contains("running"),
        "{main:?}"
    );
    let pra = crate::common::lab_vm(&lab.lab(), "hv-pra", &["status", "erp-db"]);
    assert!(
        String::from_utf8_lossy(&pra.stdout).contains("running"),
        "{pra:?}"
    );
}

/// A start that fails after the vm came up (here the driver's start starts it, then exits 1;
/// as when the connection drops once the command was sent) gives nothing back under a vm that
/// may be running: the vm's recovery copies stay leased to the run and its definition stays,
/// and the step says so and what to do. Before, the copies were released (a replication could
/// then write into the disks of a running vm) and the vm undefined.
#[test]
fn a_start_that_failed_after_its_vm_came_up_keeps_its_copies_leased() {
    let lab = Lab::up(243);
    lab.primary_lost(&["erp-db"]);
    let definition = lab.lab().join("hosts/hv-pra/definitions/erp-db.xml");
    assert!(
        !definition.exists(),
        "erp-db is defined on hv-pra before its failover"
    );
    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    let vms = edited.path().join("inventory/vms.toml");
    let mut text = std::fs::read_to_string(&vms).unwrap();
    // And a status that answers neither `running` nor `shut off` once, while a flag is there.
    let flag = lab.host_root("hv-pra").join("status-unknown");
    text.push_str(&format!(
        "\n[drivers.lab]\nstart = \"lab-vm start {{{{ vm.name }}}} {{{{ host.images_dir }}}} {{{{ vm.disks }}}}; exit 1\"\nstatus = \"if [ \\\"$LAB_HOST\\\" = hv-pra ] && [ -e {f} ]; then rm -f {f}; echo 'in shutdown'; exit 0; fi; lab-vm status {{{{ vm.name }}}}\"\n",
        f = flag.display()
    ));
    std::fs::write(&vms, text).unwrap();
    let exit = lab.run_confirming_in(
        edited.path(),
        &[
            "failover",
            "--emergency",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(120),
    );
    assert!(!exit.success());
    let (status, why) = finished(&lab, "erp-db/start");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains("erp-db may have started all the same")
            && why.contains("does not say it is stopped (running)")
            && why.contains("stay leased to this run")
            && why.contains("`reprise release erp-db`"),
        "{why}"
    );
    assert_erp_db_copies_leased_live(&lab);
    // Defined there by the start, and left so.
    assert!(definition.exists(), "{}", definition.display());
    // Resumed, the start runs again: the vm that runs there is this run's own (its copies
    // leased to the run), never taken for one started outside it.
    lab.run_confirming_in(
        edited.path(),
        &["resume", "latest", "--no-prompt"],
        Duration::from_secs(120),
    );
    let (status, why) = finished(&lab, "erp-db/start");
    assert_eq!(status, "failed", "{why}");
    assert!(
        !why.contains("already runs on hv-pra") && why.contains("may have started all the same"),
        "{why}"
    );
    // Resumed again while its recovery host cannot say whether it runs: refused before this
    // attempt leases anything, and the lease the earlier attempts took stays (the vm they
    // started runs on the copies).
    std::fs::write(&flag, "").unwrap();
    lab.run_confirming_in(
        edited.path(),
        &["resume", "latest", "--no-prompt"],
        Duration::from_secs(120),
    );
    assert!(!flag.exists(), "its status was never asked");
    let (status, why) = finished(&lab, "erp-db/start");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains("cannot be told")
            && why.contains("stay as an earlier attempt of this step left them"),
        "{why}"
    );
    assert_erp_db_copies_leased_live(&lab);
}

/// A driver's `replicate-end` that says the copy just made may be torn (exit 65: Proxmox's,
/// when the guest was thawed before the copy ended) makes the points of that replication
/// unusable on every disk: bad, whatever a later verification finds, and no failover starts
/// from them (the newest good point is the one before).
#[test]
fn a_copy_its_driver_says_may_be_torn_is_never_started_from() {
    let lab = Lab::up(244);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    // The point a failover would start erp-db from now, as `status` says.
    let good_point = |lab: &Lab| -> String {
        let status = lab.run(&["status", "--format", "json"]);
        let json: serde_json::Value =
            serde_json::from_str(&status.stdout).unwrap_or_else(|e| panic!("{e}: {status:?}"));
        let rows = json.as_array().cloned().unwrap_or_default();
        let row = rows
            .iter()
            .find(|r| r["item"] == "erp-db")
            .unwrap_or_else(|| panic!("{json}"))
            .clone();
        row["newest_good_point"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let points = |lab: &Lab| -> Vec<serde_json::Value> {
        let run = lab.run(&["points", "erp-db", "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let mut all = Vec::new();
        let mut stack = vec![json];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(ref m) if m.contains_key("blake3") => all.push(v),
                serde_json::Value::Object(m) => stack.extend(m.into_values()),
                serde_json::Value::Array(a) => stack.extend(a),
                _ => {}
            }
        }
        all
    };
    let before = points(&lab);
    let good_id = before
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .max()
        .unwrap();
    assert_eq!(good_point(&lab), good_id);

    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    let vms = edited.path().join("inventory/vms.toml");
    let mut text = std::fs::read_to_string(&vms).unwrap();
    text.push_str(
        "\n[drivers.lab]\nreplicate-end = \"lab-vm thaw {{ vm.name }} {{ host.images_dir }} {{ vm.disks }}; echo 'the guest was thawed before the copy ended' >&2; exit 65\"\n",
    );
    std::fs::write(&vms, text).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let args = lab.args(&["replicate", "--service", "erp-db"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = crate::common::reprise_with_env(edited.path(), &args, LAB_SECRETS);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("the guest was thawed before the copy ended")
            && run
                .stderr
                .contains("the copy may be torn: marked unusable, no run starts from it")
            && run.stderr.contains("erp-db-system.qcow2 point")
            && run.stderr.contains("erp-db-data.qcow2 point"),
        "{run:?}"
    );
    let torn = |all: &[serde_json::Value]| -> Vec<serde_json::Value> {
        all.iter()
            .filter(|p| !before.iter().any(|b| b["id"] == p["id"]))
            .cloned()
            .collect()
    };
    let made = torn(&points(&lab));
    assert_eq!(made.len(), 1, "one point of both disks: {made:#?}");
    for p in &made {
        assert_eq!(p["verified"], "bad", "{p:#}");
        assert!(
            p["unusable"]
                .as_str()
                .is_some_and(|w| w.contains("may be torn") && w.contains("thawed before")),
            "{p:#}"
        );
    }
    // Read again and found whole, it stays bad; the newest good point is the one before.
    let _ = lab.run(&["verify", "erp-db"]);
    for p in torn(&points(&lab)) {
        assert_eq!(p["verified"], "bad", "{p:#}");
    }
    assert_eq!(good_point(&lab), good_id, "{made:#?}");
}

/// The same through a runbook's `replicate` step (a planned failover's final sync): the point
/// its driver says may be torn is marked unusable, the step fails saying so, and the newest
/// good point stays the one before.
#[test]
fn a_final_sync_its_driver_says_may_be_torn_is_never_started_from() {
    let lab = Lab::up(247);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let good_point = || -> String {
        let status = lab.run(&["status", "--format", "json"]);
        let json: serde_json::Value =
            serde_json::from_str(&status.stdout).unwrap_or_else(|e| panic!("{e}: {status:?}"));
        let rows = json.as_array().cloned().unwrap_or_default();
        let row = rows
            .iter()
            .find(|r| r["item"] == "erp-db")
            .unwrap_or_else(|| panic!("{json}"))
            .clone();
        row["newest_good_point"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let before = good_point();
    assert!(!before.is_empty());
    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    let vms = edited.path().join("inventory/vms.toml");
    let mut text = std::fs::read_to_string(&vms).unwrap();
    text.push_str(
        "\n[drivers.lab]\nreplicate-end = \"lab-vm thaw {{ vm.name }} {{ host.images_dir }} {{ vm.disks }}; echo 'the guest was thawed before the copy ended' >&2; exit 65\"\n",
    );
    std::fs::write(&vms, text).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let exit = lab.run_confirming_in(
        edited.path(),
        &[
            "failover",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(180),
    );
    assert!(!exit.success());
    let (status, why) = finished(&lab, "erp-db/final-sync");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains("the copy may be torn: marked unusable, no run starts from it")
            && why.contains("erp-db-data.qcow2 point"),
        "{why}"
    );
    assert_eq!(good_point(), before);
}

/// The example's inventory and runbooks in a folder of their own, with a driver `bare`: the
/// lab's, without its replication hooks (`replicate-check`, `-begin`, `-end`), as a driver an
/// inventory defines for its own hypervisor may be; and an overlay that gives it to erp-db.
fn erp_db_on_a_driver_without_hooks() -> (tempfile::TempDir, PathBuf) {
    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    let builtin = std::fs::read_to_string(root().join("src/drivers.toml")).unwrap();
    let lab_driver = builtin
        .split("\n[drivers.")
        .find(|s| s.starts_with("lab]"))
        .unwrap();
    let bare: String = lab_driver
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("replicate-") && !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        bare.contains("start = ") && !bare.contains("freeze"),
        "{bare}"
    );
    let vms = edited.path().join("inventory/vms.toml");
    let mut text = std::fs::read_to_string(&vms).unwrap();
    text.push_str(&format!("\n[drivers.bare]\n{bare}"));
    std::fs::write(&vms, text).unwrap();
    let overlay = edited.path().join("bare.toml");
    std::fs::write(&overlay, "[vms.erp-db]\ndriver = \"bare\"\n").unwrap();
    (edited, overlay)
}

/// Holds the first opening of erp-db's data disk on hv-main until its system disk's copy has
/// recorded the point being made (its read over); then writes both disks, as a vm started
/// then would (the data disk's bytes are written back as they were: only its status
/// changes). The gate, and the copy's points file it watches.
fn write_erp_db_between_its_disks_reads(lab: &Lab) -> crate::common::OpenGate {
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    let (system, data) = (
        images.join("erp-db-system.qcow2"),
        images.join("erp-db-data.qcow2"),
    );
    let copy = walk(&lab.host_root("hv-pra"))
        .into_iter()
        .find(|p| p.ends_with("erp-db-system.qcow2"))
        .expect("a copy of erp-db's system disk on hv-pra");
    let recorded = PathBuf::from(format!("{}.reprise/points.json", copy.display()));
    let before = std::fs::read(&recorded).unwrap();
    // Opened now: an opening of it from the gate's own thread would wait for itself.
    let data_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .unwrap();
    crate::common::OpenGate::start(&data.clone(), move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::fs::read(&recorded).is_ok_and(|now| now == before) {
            assert!(Instant::now() < deadline, "the system disk made no point");
            std::thread::sleep(Duration::from_millis(20));
        }
        let wrote = tool(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -q -P 0x5a 0 64k",
                system.to_str().unwrap(),
            ],
        );
        assert!(wrote.status.success(), "{wrote:?}");
        use std::os::unix::fs::FileExt as _;
        let mut head = [0u8; 4096];
        data_file.read_exact_at(&mut head, 0).unwrap();
        data_file.write_all_at(&head, 0).unwrap();
    })
}

/// A stopped vm's disks are read each between two looks at its file. Started (or written)
/// after its first disk was read and before its second was, its copies would be of two
/// moments, each found unwritten while it was read. A driver of the inventory need not know
/// it: whatever the driver, reprise marks the start of the reads and looks at every disk
/// after the last one. Its points are unusable, and the next replication's are good.
#[test]
fn a_stopped_vm_of_a_driver_without_hooks_written_between_its_disks_reads_makes_no_usable_point() {
    let lab = Lab::up(252);
    let (edited, overlay) = erp_db_on_a_driver_without_hooks();
    let stopped = crate::common::lab_vm(&lab.lab(), "hv-main", &["stop", "erp-db"]);
    assert!(stopped.status.success(), "{stopped:?}");
    let args = lab.args(&[
        "--overlay",
        overlay.to_str().unwrap(),
        "replicate",
        "--service",
        "erp-db",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let replicate = || crate::common::reprise_with_env(edited.path(), &args, LAB_SECRETS);
    // The dry run shows the window around the copies.
    let mut dry: Vec<&str> = args.clone();
    dry.push("--dry-run");
    let plan = crate::common::reprise_with_env(edited.path(), &dry, LAB_SECRETS);
    assert_eq!(plan.code, 0, "{plan:?}");
    let marked = plan
        .stdout
        .find("the start of the reads marked (")
        .zip(plan.stdout.find("erp-db-data.qcow2 → "))
        .zip(plan.stdout.find("any disk written since the mark named"));
    assert!(
        marked.is_some_and(|((m, c), n)| m < c && c < n)
            && plan
                .stdout
                .contains("(.reprise-read-erp-db-… beside each disk, its links followed)"),
        "{plan:?}"
    );
    let first = replicate();
    assert_eq!(first.code, 0, "{first:?}");
    let points = |lab: &Lab| -> Vec<serde_json::Value> {
        let json = lab.run(&["points", "erp-db", "--json"]).stdout;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut all = Vec::new();
        let mut stack = vec![v];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(ref m) if m.contains_key("blake3") => all.push(v),
                serde_json::Value::Object(m) => stack.extend(m.into_values()),
                serde_json::Value::Array(a) => stack.extend(a),
                _ => {}
            }
        }
        all
    };
    let before = points(&lab);
    assert!(
        !before.is_empty() && before.iter().all(|p| p["verified"] != "bad"),
        "{before:#?}"
    );

    let gate = write_erp_db_between_its_disks_reads(&lab);
    std::thread::sleep(Duration::from_millis(1100)); // point ids are per second
    let second = replicate();
    assert!(gate.stop(), "the data disk was opened: {second:?}");
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains("/srv/datastore/images/erp-db-system.qcow2 /")
            && second.stderr.contains(
                "/srv/datastore/images/erp-db-data.qcow2 changed while the disks of erp-db were read"
            )
            && second
            .stderr
            .contains("the copy may be torn: marked unusable, no run starts from it"),
        "{second:?}"
    );
    let made: Vec<serde_json::Value> = points(&lab)
        .into_iter()
        .filter(|p| !before.iter().any(|b| b["id"] == p["id"]))
        .collect();
    assert!(!made.is_empty(), "{second:?}");
    for p in &made {
        assert_eq!(p["verified"], "bad", "{p:#}");
        assert!(
            p["unusable"]
                .as_str()
                .is_some_and(|w| w.contains("different moments")),
            "{p:#}"
        );
    }

    // Nothing writes it now: the next replication's points are good.
    std::thread::sleep(Duration::from_millis(1100));
    let third = replicate();
    assert_eq!(third.code, 0, "{third:?}");
    assert!(
        third
            .stdout
            .contains("no disk was written while they were read: points confirmed"),
        "{third:?}"
    );
    let good: Vec<serde_json::Value> = points(&lab)
        .into_iter()
        .filter(|p| !before.iter().chain(&made).any(|b| b["id"] == p["id"]))
        .collect();
    assert!(
        !good.is_empty() && good.iter().all(|p| p["verified"] != "bad"),
        "{good:#?}"
    );
}

/// The same through a runbook's `replicate` step: a planned failover's final sync, its vm
/// stopped on the primary, on a driver without hooks. The step fails saying why, its points
/// are unusable, and nothing starts from them.
#[test]
fn a_final_sync_written_between_its_disks_reads_is_never_started_from() {
    let lab = Lab::up(253);
    let (edited, overlay) = erp_db_on_a_driver_without_hooks();
    let args = lab.args(&[
        "--overlay",
        overlay.to_str().unwrap(),
        "replicate",
        "--service",
        "erp-db",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = crate::common::reprise_with_env(edited.path(), &args, LAB_SECRETS);
    assert_eq!(first.code, 0, "{first:?}");

    let gate = write_erp_db_between_its_disks_reads(&lab);
    std::thread::sleep(Duration::from_millis(1100));
    let exit = lab.run_confirming_in(
        edited.path(),
        &[
            "--overlay",
            overlay.to_str().unwrap(),
            "failover",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(180),
    );
    assert!(gate.stop(), "the data disk was opened");
    assert!(!exit.success());
    let (status, why) = finished(&lab, "erp-db/final-sync");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains("changed while the disks of erp-db were read")
            && why.contains("the copy may be torn: marked unusable, no run starts from it"),
        "{why}"
    );
    let started = lab
        .journal()
        .into_iter()
        .any(|e| e["step"] == "erp-db/start" && e["event"] == "step_started");
    assert!(!started, "erp-db was started from a torn copy");
}

/// A `replicate-end` that fails without saying the copy may be torn (exit 1: its snapshot
/// not merged back) says nothing of how the disks were read: the read window that found no
/// disk written confirms the points all the same, and the failure is said.
#[test]
fn a_failed_replicate_end_leaves_no_point_held_when_the_window_found_the_disks_unwritten() {
    let lab = Lab::up(255);
    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    let vms = edited.path().join("inventory/vms.toml");
    let mut text = std::fs::read_to_string(&vms).unwrap();
    text.push_str(
        "\n[drivers.lab]\nreplicate-end = \"lab-vm thaw {{ vm.name }} {{ host.images_dir }} {{ vm.disks }}; echo 'the merge could not be checked' >&2; exit 1\"\n",
    );
    std::fs::write(&vms, text).unwrap();
    let args = lab.args(&["replicate", "--service", "erp-db"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = crate::common::reprise_with_env(edited.path(), &args, LAB_SECRETS);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("the merge could not be checked")
            && run
                .stdout
                .contains("no disk was written while they were read: points confirmed"),
        "{run:?}"
    );
    let point = run
        .stdout
        .lines()
        .find_map(|l| {
            l.split_once(": point ")
                .map(|(_, r)| r.split(',').next().unwrap().to_string())
        })
        .unwrap_or_else(|| panic!("{run:?}"));
    let status = lab.run(&["status", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let row = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["item"] == "erp-db")
        .unwrap()
        .clone();
    assert_eq!(row["newest_good_point"], point.as_str(), "{row}");
}

/// Two host ids of the inventory that are one machine reached under two names (here hv-pra
/// and nas-pra, which the lab runs on this machine, as it runs hv-main and san-main) pass the
/// inventory's checks, which compare addresses. A copy set on the very file it copies, or a
/// backup set's copy folder set on the folder that holds its source, is refused when the
/// stream comes, before anything is written: the disk is not recorded as its own copy, and
/// the folders beside the backup set are not deleted to make the copy equal to it.
#[test]
fn a_copy_that_is_its_own_source_on_one_machine_under_two_names_is_refused_before_anything_is_written()
 {
    let lab = Lab::up(239);
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    let exports = lab.host_root("san-main").join("export/backups");
    let overlay = lab.dir.path().join("one-machine.toml");
    std::fs::write(
        &overlay,
        format!(
            "[hosts.hv-pra.vars]\nimages_dir = {:?}\n\n[backups.erp-dumps]\ndest_path = {:?}\n",
            images.display().to_string(),
            exports.display().to_string()
        ),
    )
    .unwrap();
    let b3 = |p: &Path| {
        blake3::hash(&std::fs::read(p).unwrap())
            .to_hex()
            .to_string()
    };
    let disks = ["erp-db-system.qcow2", "erp-db-data.qcow2"].map(|d| images.join(d));
    let before: Vec<String> = disks.iter().map(|d| b3(d)).collect();
    let listed = |dir: &Path| {
        let mut all: Vec<(String, String)> = walk(dir)
            .into_iter()
            .filter(|p| p.is_file())
            .map(|p| (p.display().to_string(), b3(&p)))
            .collect();
        all.sort();
        all
    };
    let exported = listed(&exports);
    assert!(
        exported.iter().any(|(p, _)| p.contains("/erp/"))
            && exported.iter().any(|(p, _)| p.contains("/shares/")),
        "{exported:?}"
    );
    let run = |service: &str| {
        let args = lab.args(&[
            "--overlay",
            overlay.to_str().unwrap(),
            "replicate",
            "--service",
            service,
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::common::reprise_with_env(&root(), &args, LAB_SECRETS)
    };
    // What is there is no copy reprise made: refused as such first. Taken as copies by
    // mistake (`reprise release`), they are still the very files and folder read.
    let release = |item: &str| {
        let args = lab.args(&["--overlay", overlay.to_str().unwrap(), "release", item]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::common::reprise_with_env(&root(), &args, LAB_SECRETS)
    };
    for item in ["erp-dumps", "erp-db"] {
        let refused = run(item);
        assert_eq!(refused.code, 1, "{refused:?}");
        assert!(
            refused
                .stderr
                .contains("is at the copy's path, and reprise did not make it")
                && refused.stderr.contains("nothing was written"),
            "{refused:?}"
        );
        let taken = release(item);
        assert_eq!(taken.code, 0, "{taken:?}");
    }
    let set = run("erp-dumps");
    assert_eq!(set.code, 1, "{set:?}");
    assert!(
        set.stderr
            .contains("it holds the folder the source read, on this machine")
            && set.stderr.contains("nothing was written"),
        "{set:?}"
    );
    let left: Vec<(String, String)> = listed(&exports)
        .into_iter()
        .filter(|(p, _)| !p.contains("/.reprise"))
        .collect();
    assert_eq!(
        left, exported,
        "nothing of the exports was deleted or written"
    );
    let disk = run("erp-db");
    assert_eq!(disk.code, 1, "{disk:?}");
    assert!(
        // Said by whichever side finds it first: the recovery side, from the stream's
        // header, or the source, from the copy's lock it finds held by this very update.
        (disk
            .stderr
            .contains("it is the very file the source read, on this machine")
            || disk
                .stderr
                .contains("it is the very file the copy is written to, on this machine"))
            && disk.stderr.contains("one machine reached under two names")
            && disk.stderr.contains("nothing was written"),
        "{disk:?}"
    );
    let after: Vec<String> = disks.iter().map(|d| b3(d)).collect();
    assert_eq!(after, before, "the disks are as they were");
    // The copy as the overlay places it (the lab's own copies keep their points).
    let args = lab.args(&[
        "--overlay",
        overlay.to_str().unwrap(),
        "points",
        "erp-db",
        "--json",
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let points = crate::common::reprise_with_env(&root(), &args, LAB_SECRETS);
    let listed: serde_json::Value =
        serde_json::from_str(&points.stdout).unwrap_or_else(|e| panic!("{e}: {points:?}"));
    assert_eq!(
        listed,
        serde_json::json!([]),
        "no point recorded: {points:?}"
    );
}

/// A replication of erp-db was cut on hv-main (its power went while it copied), leaving the
/// snapshot overlay its domain runs on when it starts there again; an emergency failover
/// followed. A failback would copy the recovery copies under that overlay, and erp-db would
/// start on it over other data: refused (exit 6) before anything runs, naming the overlay and
/// how to merge it; the disks are as they were.
#[test]
fn a_failback_never_copies_back_under_a_replication_overlay_left_on_the_primary() {
    let lab = Lab::up(229);
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(exit.success(), "{:?}", lab.journal().last());
    let images = lab.host_root("hv-main").join("srv/datastore/images");
    let disk = images.join("erp-db-system.qcow2");
    let overlay = images.join("erp-db-system.reprise-replicate");
    let made = tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            disk.to_str().unwrap(),
            overlay.to_str().unwrap(),
        ],
    );
    assert!(made.status.success(), "{made:?}");
    let before = std::fs::read(&disk).unwrap();
    let runs = || {
        std::fs::read_dir(lab.state().join("runs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let started = runs();
    let refused = lab.run(&[&["failback"][..], &only[..]].concat());
    assert_eq!(refused.code, 6, "{refused:?}");
    assert!(
        refused.stderr.contains(&format!(
            "a replication's snapshot overlay {} is left on hv-main",
            overlay.display()
        )) && refused.stderr.contains("qemu-img commit"),
        "{refused:?}"
    );
    assert_eq!(runs(), started, "a refused failback started a run");
    assert!(std::fs::read(&disk).unwrap() == before, "the disk changed");
    assert!(overlay.exists());
}

/// While the primary site was down, erp-db was started by hand on its recovery copy on hv-pra
/// and wrote there. When hv-main answers again (erp-db stopped there), the next replication
/// would make that copy its primary's disks of before, and what the vm wrote on the recovery
/// site would be gone: refused (exit 1) before the copy is written, naming it and what to do.
/// Once the operator lets it go (`reprise release`), the next replication overwrites it.
#[test]
fn a_replication_never_overwrites_a_recovery_copy_written_outside_reprise() {
    let lab = Lab::up(140);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    lab.primary_lost(&["erp-db"]);
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-system.qcow2");
    write_64k(&copy, 0x3d);
    let written = std::fs::read(&copy).unwrap();
    let replicate = ["replicate", "--service", "erp-db"];
    let run = lab.run(&replicate);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("erp-db-system.qcow2: the copy changed since its newest point")
            && run
                .stderr
                .contains("this replication would overwrite it: nothing was written")
            && run
                .stderr
                .contains("`reprise failback --service SERVICE --force`")
            && run.stderr.contains("`reprise release NAME`"),
        "{run:?}"
    );
    assert!(
        std::fs::read(&copy).unwrap() == written,
        "the copy was overwritten: {run:?}"
    );
    // Refused again while nobody lets it go.
    assert_eq!(lab.run(&replicate).code, 1);
    let run = lab.run(&["release", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.contains("the next replication overwrites it"),
        "{run:?}"
    );
    let run = lab.run(&replicate);
    assert_eq!(run.code, 0, "{run:?}");
    let primary = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-system.qcow2");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&primary).unwrap()
    );
}

/// While the primary site was down, erp-db was started by hand on its recovery copies and
/// wrote its data disk. The emergency failover then finds that copy's newest point damaged (it
/// was written) and would roll it back to the point before, replacing what the vm wrote with
/// the point's blocks: refused, the copy untouched, saying how to keep it or let it go.
/// `resume --accept-unverified erp-db` starts it from the copies as they are, nothing rolled
/// back (its system disk from its newest point, which brings the vm's definition).
#[test]
fn a_failover_never_rolls_back_over_what_was_written_in_a_copy_outside_reprise() {
    let lab = Lab::up(142);
    let replicate = ["replicate", "--service", "erp-db"];
    let run = lab.run(&replicate);
    assert_eq!(run.code, 0, "{run:?}");
    // The next point's reverse delta holds the first 64 KiB of the data disk.
    let primary = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-data.qcow2");
    write_64k(&primary, 0x2c);
    let run = lab.run(&replicate);
    assert_eq!(run.code, 0, "{run:?}");
    lab.primary_lost(&["erp-db"]);
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-data.qcow2");
    write_64k(&copy, 0x3d);
    let written = std::fs::read(&copy).unwrap();
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let exit = lab.run_confirming(
        &[&["failover", "--emergency"][..], &only[..]].concat(),
        Duration::from_secs(240),
    );
    assert!(!exit.success(), "{:?}", lab.journal().last());
    let events = lab.journal();
    let start = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "erp-db/start")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(start["status"], "failed", "{start}");
    let why = start["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("erp-db-data.qcow2: the copy changed since its newest point")
            && why.contains("would replace what was written there since")
            && why.contains("nothing was rolled back")
            && why.contains("--accept-unverified")
            && why.contains("`reprise release VM`"),
        "{start}"
    );
    assert!(!events.iter().any(|e| e["event"] == "replica_point_used"));
    assert!(
        std::fs::read(&copy).unwrap() == written,
        "the copy was rolled back over what was written in it"
    );
    let exit = lab.run_confirming(
        &[
            "resume",
            "latest",
            "--no-prompt",
            "--accept-unverified",
            "erp-db",
        ],
        Duration::from_secs(240),
    );
    let events = lab.journal();
    assert!(exit.success(), "{:?}", events.last());
    let used = events
        .iter()
        .find(|e| e["event"] == "replica_point_used" && e["item"] == "erp-db")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(used["verified"], false, "{used}");
    let note = used["note"].as_str().unwrap_or_default();
    assert!(!note.contains("rolled back to point"), "{used}");
    let mut now = std::fs::read(&copy).unwrap();
    now.truncate(written.len());
    assert!(
        now[..written.len().min(1 << 20)] == written[..written.len().min(1 << 20)],
        "what was written by hand is not what the vm started on"
    );
}

/// erp-db's data copy was written outside reprise (started by hand during an outage, then
/// stopped). A planned failover stops production, then its final sync would refuse to
/// overwrite that copy and the failover would roll back: the readiness gate refuses it
/// before production is touched (exit 7), naming the copy and the way out; `check` says it.
#[test]
fn a_planned_failover_whose_final_sync_would_be_refused_stops_before_production_is_touched() {
    let lab = Lab::up(143);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-data.qcow2");
    write_64k(&copy, 0x3d);
    let written = std::fs::read(&copy).unwrap();
    let check = lab.run(&["check", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&check.stdout)
        .unwrap_or_else(|e| panic!("check --json: {e}: {check:?}"));
    let item = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["subject"] == "vm erp-db (replication)")
        .unwrap_or_else(|| panic!("{json:#}"));
    assert_eq!(item["status"], "warning", "{item}");
    let detail = item["detail"].as_str().unwrap();
    assert!(
        detail.contains("erp-db-data.qcow2: the copy changed since its newest point")
            && detail.contains("`reprise release erp-db`"),
        "{item}"
    );
    let runs = || {
        std::fs::read_dir(lab.state().join("runs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = runs();
    let failover = lab.run(&[
        "failover",
        "--yes",
        "--no-prompt",
        "--service",
        "erp-db",
        "--only",
    ]);
    assert_eq!(failover.code, 7, "{failover:?}");
    assert!(
        failover.stderr.contains("replicas vm erp-db (replication)")
            && failover
                .stderr
                .contains("erp-db-data.qcow2: the copy changed")
            && failover.stderr.contains(
                "the failover's final sync would refuse it after the primary side is stopped"
            ),
        "{failover:?}"
    );
    assert_eq!(runs(), before, "a refused failover started a run");
    assert!(std::fs::read(&copy).unwrap() == written, "the copy changed");
    let status = lab.run(&["lab", "status", "--lab-dir", lab.lab().to_str().unwrap()]);
    let line = status
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("erp-db"))
        .unwrap_or_default();
    assert!(line.contains("primary (hv-main"), "{status:?}");
}

/// What is defined as erp-db on hv-pra cannot be read (its driver's `definition` fails, and
/// not by saying erp-db is not defined: the hypervisor does not answer). Taken for "nothing
/// defined", a start that failed after its define would undefine what was there. The start
/// step stops before anything is defined, saying why.
#[test]
fn a_start_never_defines_over_a_definition_it_cannot_read() {
    let lab = Lab::up(141);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let stub = lab.lab().join("hosts/hv-pra/bin/lab-vm");
    let script = std::fs::read_to_string(&stub).unwrap();
    let (shebang, rest) = script.split_once('\n').unwrap();
    std::fs::write(
        &stub,
        format!(
            "{shebang}\nif [ \"$1\" = definition ]; then echo 'error: failed to connect to the hypervisor' >&2; exit 1; fi\n{rest}"
        ),
    )
    .unwrap();
    lab.primary_lost(&["erp-db"]);
    let status = lab.run_confirming(
        &[
            "failover",
            "--emergency",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(90),
    );
    assert!(!status.success(), "{status:?}");
    let events = lab.journal();
    let start = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "erp-db/start")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(start["status"], "failed", "{start}");
    assert!(
        start["message"].as_str().unwrap().contains(
            "cannot tell what is defined as erp-db on hv-pra (exit 1: error: failed to connect to the hypervisor): nothing was defined"
        ),
        "{start}"
    );
    let called = calls(&lab, "hv-pra");
    assert!(
        !called.contains("lab-vm define erp-db") && !called.contains("lab-vm undefine erp-db"),
        "{called}"
    );
}

/// erp-db already runs on hv-pra, started there by hand on disks no run gave it, when an
/// emergency failover comes to start it from its copies: the start would say "already
/// running", and the run would report erp-db recovered from a point it never ran from. The
/// step fails before any point is chosen, leased or defined for it, saying why; the report
/// claims no recovery of erp-db.
#[test]
fn a_failover_never_reports_a_vm_started_from_its_point_that_already_ran_there() {
    let lab = Lab::up(146);
    let elsewhere = tempfile::tempdir().unwrap();
    for disk in ["erp-db-system.qcow2", "erp-db-data.qcow2"] {
        std::fs::copy(
            lab.host_root("hv-main")
                .join("srv/datastore/images")
                .join(disk),
            elsewhere.path().join(disk),
        )
        .unwrap();
    }
    define_erp_db_on_hv_pra(&lab);
    start_erp_db_by_hand(&lab, "hv-pra", elsewhere.path());
    assert_eq!(erp_db_on(&lab, "hv-pra"), "running");
    lab.primary_lost(&["erp-db"]);
    let exit = lab.run_confirming(
        &[
            "failover",
            "--emergency",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(240),
    );
    assert!(!exit.success());
    let events = lab.journal();
    let start = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "erp-db/start")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(start["status"], "failed", "{start}");
    let why = start["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("vm erp-db already runs on hv-pra, started outside this run")
            && why.contains("nothing was chosen, leased or defined"),
        "{start}"
    );
    assert!(
        !events.iter().any(|e| e["event"] == "replica_point_used"),
        "{events:#?}"
    );
    let report = lab.run(&["report", "latest", "--format", "json"]);
    assert_eq!(report.code, 0, "{report:?}");
    let report: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    let erp = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "erp-db")
        .unwrap();
    assert_ne!(erp["status"], "recovered", "{erp:#}");
    assert!(
        erp["points"].as_array().is_none_or(|p| p.is_empty()),
        "{erp:#}"
    );
    let _ = crate::common::lab_vm(&lab.lab(), "hv-pra", &["stop", "erp-db"]);
}

/// A planned failover whose runbook "stops" erp-db's primary with a command that does not
/// stop it (here `true`, as a guest shutdown that failed quietly would): its start on hv-pra
/// asks hv-main first, finds erp-db still running there, and is refused; erp-db never runs on
/// both sites.
#[test]
fn a_planned_failover_never_starts_a_vm_its_primary_still_runs() {
    let lab = Lab::up(147);
    let edited = tempfile::tempdir().unwrap();
    for d in ["inventory", "runbooks"] {
        crate::common::copy_tree(&root().join(d), &edited.path().join(d));
    }
    let erp = edited.path().join("runbooks/erp.toml");
    let text = std::fs::read_to_string(&erp).unwrap();
    let stop = "id = \"stop-primary\"\nkind = \"vm\"\naction = \"stop\"\non = \"primary\"\n";
    assert!(text.contains(stop), "the example stops erp-db's primary so");
    std::fs::write(
        &erp,
        text.replacen(
            stop,
            "id = \"stop-primary\"\nkind = \"exec\"\nhost = \"hv-main\"\nrun = \"true\"\n",
            1,
        ),
    )
    .unwrap();
    assert_eq!(erp_db_on(&lab, "hv-main"), "running");
    let exit = lab.run_confirming_in(
        edited.path(),
        &[
            "failover",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
        ],
        Duration::from_secs(240),
    );
    let events = lab.journal();
    assert!(!exit.success(), "{events:#?}");
    let start = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == "erp-db/start")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(start["status"], "failed", "{start}");
    let said: String = events
        .iter()
        .filter(|e| e["event"] == "step_output" && e["step"] == "erp-db/start")
        .map(|e| e["stderr"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        said.contains("vm erp-db runs on hv-main, the side this run leaves"),
        "{said}\n{events:#?}"
    );
    // Refused before its define: hv-pra never defined it.
    assert_eq!(erp_db_on(&lab, "hv-pra"), "not defined");
    assert_eq!(erp_db_on(&lab, "hv-main"), "running");
}

/// A `reprise replicate --every` running in the background, its output in files.
struct Service {
    child: crate::common::Background,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Service {
    /// What it printed so far.
    fn out(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn err(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until round `n` has ended (its line printed) and gives that line.
    fn round(&self, n: u32) -> String {
        let heads = [format!("round {n}, "), format!("round {n} (")];
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.out();
            if let Some(line) = out
                .lines()
                .find(|l| heads.iter().any(|h| l.starts_with(h.as_str())))
            {
                return line.to_string();
            }
            assert!(
                Instant::now() < until,
                "round {n} never ended: {}\n{}",
                self.out(),
                self.err()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks for round `n` with SIGUSR1 and waits for it (see [`Service::round`]).
    fn ask(&self, n: u32) -> String {
        self.child.signal(libc::SIGUSR1);
        self.round(n)
    }

    /// The logins it made so far (libssh2 sessions and OpenSSH masters).
    fn logins(&self) -> usize {
        self.err()
            .lines()
            .filter(|l| l.contains("ssh login") || l.contains("ssh master login"))
            .count()
    }
}

/// Sends `sig` (`-STOP`, `-CONT`, `-TERM`) to the per-connection processes of `host`'s sshd
/// (its children and theirs, whichever handles the connection): the connections reprise holds
/// to it, not its listener.
fn signal_connections(lab: &Lab, host: &str, sig: &str) {
    let mut parents = vec![sshd_pid(lab, host).trim().to_string()];
    let mut all = Vec::new();
    while let Some(parent) = parents.pop() {
        let children = Command::new("pgrep")
            .args(["-P", &parent])
            .output()
            .unwrap();
        for child in String::from_utf8_lossy(&children.stdout).split_whitespace() {
            parents.push(child.to_string());
            all.push(child.to_string());
        }
    }
    if !all.is_empty() {
        let _ = Command::new("kill").arg(sig).args(&all).status();
    }
}

/// Continues the connections of a host stopped by [`signal_connections`], on every way out.
struct Stopped<'a>(&'a Lab, &'a str);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        signal_connections(self.0, self.1, "-CONT");
    }
}

#[test]
fn a_replication_service_keeps_its_connections_between_rounds_and_replaces_those_that_end() {
    let lab = Lab::up(163);
    let dir = tempfile::tempdir().unwrap();
    crate::common::copy_tree(&root().join("inventory"), &dir.path().join("inventory"));
    crate::common::copy_tree(&root().join("runbooks"), &dir.path().join("runbooks"));
    let (stdout, stderr) = (dir.path().join("out.txt"), dir.path().join("err.txt"));
    let child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        // Every round but the first asked with SIGUSR1, which checks the connections
        // first: each comes after what the test does before it.
        .args(lab.args(&["replicate", "--every", "1h", "--service", "erp-db"]))
        .envs(LAB_SECRETS.iter().copied())
        .env("REPRISE_LOG", "reprise=debug")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut service = Service {
        child: crate::common::Background(child),
        stdout,
        stderr,
    };
    let source = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-data.qcow2");
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-data.qcow2");
    let first = service.round(1);
    assert!(first.contains(": ok in "), "{first}\n{}", service.err());
    assert!(service.logins() > 0, "{}", service.err());

    // Rounds 2 and 3 log in nowhere: the connections of round 1 carry them.
    let logins = service.logins();
    let line = service.ask(2);
    assert!(line.contains(": ok in "), "{line}\n{}", service.err());
    let line = service.ask(3);
    assert!(line.contains(": ok in "), "{line}\n{}", service.err());
    assert_eq!(service.logins(), logins, "{}", service.err());

    // What the guest writes between rounds is in the next round's copy, and connections its
    // hosts ended between rounds are made again: the round does not fail for them.
    write_64k(&source, 0x5a);
    signal_connections(&lab, "hv-main", "-TERM");
    signal_connections(&lab, "hv-pra", "-TERM");
    let line = service.ask(4);
    assert!(line.contains(": ok in "), "{line}\n{}", service.err());
    assert!(service.logins() > logins, "{}", service.err());
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(&source).unwrap(),
        "the copy is not the source after round 4"
    );

    // Connections that stall (the host or the link stops answering) are found before the
    // round and ended; the round makes new ones.
    {
        let _stopped = Stopped(&lab, "hv-pra");
        signal_connections(&lab, "hv-pra", "-STOP");
        let line = service.ask(5);
        assert!(line.contains(": ok in "), "{line}\n{}", service.err());
        let err = service.err();
        assert!(
            err.lines().any(|l| l.contains("did not answer: ended")
                && l.contains("host=\"hv-pra\"")
                && l.contains("idle ssh session")),
            "{err}"
        );
        assert!(
            err.lines()
                .any(|l| l.contains("ssh master did not answer: ended") && l.contains("hv-pra")),
            "{err}"
        );
    }

    // An inventory broken between rounds: the round says where and replicates nothing, the
    // next one (mended) runs as planned.
    let hosts = dir.path().join("inventory/hosts.toml");
    let good = std::fs::read_to_string(&hosts).unwrap();
    std::fs::write(&hosts, format!("{good}\n[hosts.broken\n")).unwrap();
    let line = service.ask(6);
    assert!(line.contains(": FAILED in "), "{line}");
    let err = service.err();
    assert!(err.contains("hosts.toml"), "{err}");
    assert!(
        err.contains("this round replicated nothing (the copies keep their points)"),
        "{err}"
    );
    std::fs::write(&hosts, &good).unwrap();
    let line = service.ask(7);
    assert!(line.contains(": ok in "), "{line}\n{}", service.err());

    // SIGUSR1: a round at once, not at the next time.
    service.child.signal(libc::SIGUSR1);
    let line = service.round(8);
    assert!(line.contains("round 8 (asked by SIGUSR1), "), "{line}");
    assert!(line.contains(": ok in "), "{line}\n{}", service.err());

    // A key taken out of known_hosts between rounds is no longer trusted: the kept
    // connections are not used, and the host is refused until it is back.
    let known_hosts = lab.lab().join("client/known_hosts");
    let trusted = std::fs::read_to_string(&known_hosts).unwrap();
    let lab_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.lab().join("lab.json")).unwrap())
            .unwrap();
    let address = lab_json["hosts"]["hv-main"]["address"]
        .as_str()
        .unwrap()
        .to_string();
    let without: String = trusted
        .lines()
        .filter(|l| !l.contains(&format!("[{address}]:")))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(without.len() < trusted.len(), "{trusted}");
    std::fs::write(&known_hosts, without).unwrap();
    let seen = service.err().len();
    let line = service.ask(9);
    assert!(line.contains(": FAILED in "), "{line}");
    let said = service.err()[seen..].to_string();
    assert!(said.contains("unknown host key for hv-main"), "{said}");
    std::fs::write(&known_hosts, &trusted).unwrap();
    let line = service.ask(10);
    assert!(line.contains(": ok in "), "{line}\n{}", service.err());

    // SIGTERM between rounds: it ends at once, with 0.
    service.child.signal(libc::SIGTERM);
    assert_eq!(service.child.wait(Duration::from_secs(30)), 0);
    assert!(
        service.out().contains("stopped by SIGTERM between rounds"),
        "{}",
        service.out()
    );

    // Its binary replaced (an upgrade) between rounds: it ends with 1 before the next round,
    // saying why, so that the service manager starts the new one.
    let binary = dir.path().join("reprise");
    std::fs::copy(env!("CARGO_BIN_EXE_reprise"), &binary).unwrap();
    let (stdout, stderr) = (dir.path().join("out2.txt"), dir.path().join("err2.txt"));
    // A file just written may still be open in a process another test forked meanwhile
    // (ETXTBSY): tried again.
    let child = (0..50)
        .find_map(|_| {
            let spawned = Command::new(&binary)
                .args(lab.args(&["replicate", "--every", "1h", "--service", "erp-db"]))
                .envs(LAB_SECRETS.iter().copied())
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&stdout).unwrap())
                .stderr(std::fs::File::create(&stderr).unwrap())
                .spawn();
            match spawned {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
                other => Some(other.unwrap()),
            }
        })
        .expect("the copied binary runs");
    let mut upgraded = Service {
        child: crate::common::Background(child),
        stdout,
        stderr,
    };
    let line = upgraded.round(1);
    assert!(line.contains(": ok in "), "{line}\n{}", upgraded.err());
    let new = dir.path().join("reprise.new");
    std::fs::copy(env!("CARGO_BIN_EXE_reprise"), &new).unwrap();
    std::fs::rename(&new, &binary).unwrap();
    upgraded.child.signal(libc::SIGUSR1);
    assert_eq!(upgraded.child.wait(Duration::from_secs(30)), 1);
    let err = upgraded.err();
    assert!(
        err.contains(&format!(
            "error: {} was replaced (an upgrade?): exiting",
            binary.display()
        )),
        "{err}"
    );
    assert!(!upgraded.out().contains("round 2"), "{}", upgraded.out());
}

/// A planned failover whose final sync's point is found damaged on the recovery host as the
/// vm starts (a disk error: a byte of the copy changed, its times kept) stops: it never rolls
/// back to an older point and starts from it while the stopped primary holds the newer data
/// intact. Rolled back, the primary runs again; the resume makes the final sync again and
/// starts from its point, the primary's data.
#[test]
fn a_planned_failover_never_starts_an_older_point_than_its_final_sync_made() {
    let lab = Lab::up(120);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    // Written on the primary since: the final sync's point differs from the older one there.
    let disk = lab
        .host_root("hv-main")
        .join("srv/datastore/images/erp-db-system.qcow2");
    write_64k(&disk, 0x2c);
    let edited = held_before("failover", "start");
    let only = ["--service", "erp-db", "--only", "--yes", "--no-prompt"];
    let mut child = spawn_until_held(
        &lab,
        edited.path(),
        &[&["failover"][..], &only[..]].concat(),
    );
    let copy = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-system.qcow2");
    // The rot in what the final sync wrote (the guest's first 64 KiB, where the copy's
    // qcow2 keeps them): the older point, rebuilt with what was there before, is good.
    let map = tool(
        "qemu-img",
        &[
            "map",
            "-U",
            "--output=json",
            "-f",
            "qcow2",
            copy.to_str().unwrap(),
        ],
    );
    assert!(map.status.success(), "{map:?}");
    let map: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
    let at = map
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["start"] == 0 && e["data"] == true)
        .and_then(|e| e["offset"].as_u64())
        .expect("the guest's first block is in the copy's file");
    rot_keeping_time(&copy, at as usize + 100);
    let exit = confirming(&lab, &mut child);
    assert_eq!(exit.and_then(|e| e.code()), Some(1), "{:#?}", lab.journal());
    let (status, why) = finished(&lab, "erp-db/start");
    assert_eq!(status, "failed", "{why}");
    assert!(
        why.contains("is the one this failover's final sync (erp-db/final-sync) made")
            && why.contains("nothing older is started in its place"),
        "{why}"
    );
    assert_ne!(erp_db_on(&lab, "hv-pra"), "running", "started on hv-pra");
    assert_eq!(erp_db_on(&lab, "hv-main"), "running");
    let exit = resume_confirming(&lab, edited.path());
    assert!(
        exit.is_some_and(|e| e.success()),
        "{exit:?} {:#?}",
        lab.journal()
    );
    assert_eq!(erp_db_on(&lab, "hv-pra"), "running");
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(&disk).unwrap(),
        "hv-pra's copy is not hv-main's disk"
    );
}
