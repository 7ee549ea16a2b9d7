//! The recovery report, made from journals the real runner wrote on the lab
//! (`tests/fixtures/journals/`, made by `scripts/report-fixtures.sh`): a drill, an emergency
//! failover with a failed and a blocked service and missed RTOs, a planned failover with manual
//! steps, and a drill killed and resumed.

use std::path::Path;

use serde_json::Value;

use crate::common::{Run, reprise, root};

const FIXTURES: &[&str] = &[
    "drill",
    "emergency",
    "manual",
    "resumed",
    "lag",
    "lag-unknown",
];

/// A state folder holding one fixture journal as its only run.
fn state_with(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in names {
        let text = std::fs::read_to_string(fixture(name)).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        let run_id = first["run_id"].as_str().unwrap();
        let run = dir.path().join("runs").join(run_id);
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("journal.jsonl"), text).unwrap();
    }
    dir
}

fn fixture(name: &str) -> std::path::PathBuf {
    root().join(format!("tests/fixtures/journals/{name}.jsonl"))
}

fn report(state: &Path, extra: &[&str]) -> Run {
    let state = state.to_str().unwrap();
    let mut args = vec!["--state-dir", state, "report", "latest"];
    args.extend_from_slice(extra);
    let run = reprise(Path::new("/"), &args);
    assert_eq!(run.code, 0, "{run:?}");
    run
}

fn json_report(name: &str) -> Value {
    let state = state_with(&[name]);
    serde_json::from_str(&report(state.path(), &["--format", "json"]).stdout).unwrap()
}

fn service<'a>(r: &'a Value, id: &str) -> &'a Value {
    r["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no service {id}"))
}

#[test]
fn markdown_and_json_reports_of_the_lab_journals() {
    for name in FIXTURES {
        let state = state_with(&[name]);
        let md = report(state.path(), &["--format", "md"]).stdout;
        insta::assert_snapshot!(format!("report_{name}_md"), md);
        let json = report(state.path(), &["--format", "json"]).stdout;
        insta::assert_snapshot!(format!("report_{name}_json"), json);
    }
    let state = state_with(&["emergency"]);
    let fr = report(state.path(), &["--lang", "fr"]).stdout;
    insta::assert_snapshot!("report_emergency_md_fr", fr);
}

#[test]
fn the_data_loss_of_a_service_the_application_replicates_is_the_lag_its_probe_read() {
    let r = json_report("lag");
    let db = service(&r, "lms-db");
    assert_eq!(db["data_loss_s"], 3.2);
    assert_eq!(db["rpo_met"], true);
    assert_eq!(db["lag"]["host"], "pg-pra");
    let dir = service(&r, "directory");
    assert_eq!(dir["data_loss_s"], 120.0);
    assert_eq!(dir["lag"]["host"], "mgmt-pra");
    // Its disk copies (dc1, dc2) are not its data loss.
    assert!(dir["points"].as_array().unwrap().is_empty(), "{dir}");
    // This journal predates vm steps recording their action: nothing in it shows lms
    // stopped before its final sync, so its loss is said not measured rather than nothing.
    let lms = service(&r, "lms");
    assert_eq!(lms["data_loss_s"], Value::Null);
    assert!(
        lms["data_loss_unknown"]
            .as_str()
            .unwrap()
            .contains("shows lms stopped before its point"),
        "{lms}"
    );
    let problems = r["problems"].as_array().unwrap();
    assert!(
        problems.len() == 1 && problems[0]["kind"] == "data_loss_unknown",
        "{r}"
    );

    let r = json_report("lag-unknown");
    let db = service(&r, "lms-db");
    assert_eq!(db["status"], "recovered");
    assert_eq!(db["data_loss_s"], Value::Null);
    assert_eq!(db["rpo_met"], Value::Null);
    assert!(
        db["lag"]["unknown"]
            .as_str()
            .unwrap()
            .contains("not a number of seconds"),
        "{db}"
    );
    assert!(
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.to_string().contains("lms-db")),
        "{r}"
    );
    let dir = service(&r, "directory");
    assert_eq!(dir["data_loss_s"], 5400.0);
    assert_eq!(dir["rpo_met"], false);
    let state = state_with(&["lag-unknown"]);
    let md = report(state.path(), &["--format", "md"]).stdout;
    assert!(
        md.contains("data loss not measured: the application's replication lag is unknown"),
        "{md}"
    );
    let fr = report(state.path(), &["--lang", "fr"]).stdout;
    assert!(fr.contains("perte de données non mesurée"), "{fr}");
}

#[test]
fn a_report_is_made_again_identically_and_names_the_journal_it_came_from() {
    let state = state_with(&["manual"]);
    let a = report(state.path(), &["--format", "html"]).stdout;
    let b = report(state.path(), &["--format", "html"]).stdout;
    assert_eq!(a, b);
    let r = json_report("manual");
    let bytes = std::fs::read(fixture("manual")).unwrap();
    assert_eq!(
        r["evidence"]["journal_blake3"],
        blake3::hash(&bytes).to_hex().to_string()
    );
    let first: Value =
        serde_json::from_str(std::str::from_utf8(&bytes).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(r["evidence"]["sources_digest"], first["sources_digest"]);
    assert_eq!(r["evidence"]["run_id"], first["run_id"]);
}

#[test]
fn a_clean_drill_is_recovered_within_every_target() {
    let r = json_report("drill");
    assert_eq!(r["result"], "recovered");
    assert_eq!(r["services_recovered"], r["services_in_scope"]);
    assert_eq!(r["rto_met"], r["rto_measured"]);
    assert!(r["problems"].as_array().unwrap().is_empty());
    // Every service with steps has an achieved RTO no later than the end of the run.
    let duration = r["duration_s"].as_f64().unwrap();
    for s in r["services"].as_array().unwrap() {
        if s["status"] == "recovered" {
            let rto = s["achieved_rto_s"].as_f64().unwrap();
            assert!(rto > 0.0 && rto <= duration, "{s}");
        }
    }
    // Timeline bars follow the journal: each main step ends after the steps it waits for.
    let bars: std::collections::HashMap<&str, &Value> = r["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t))
        .collect();
    let journal = std::fs::read_to_string(fixture("drill")).unwrap();
    let first: Value = serde_json::from_str(journal.lines().next().unwrap()).unwrap();
    for step in first["plan"]["steps"].as_array().unwrap() {
        let me = bars[step["id"].as_str().unwrap()];
        for before in step["after"].as_array().unwrap() {
            let b = bars[before.as_str().unwrap()];
            assert!(
                b["end_s"].as_f64().unwrap() <= me["start_s"].as_f64().unwrap() + 1e-3,
                "{} started before {} ended",
                step["id"],
                before
            );
        }
    }
    // The critical path is a chain through the plan's dependencies.
    let path: Vec<&str> = r["critical_path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(path.len() > 3, "{path:?}");
    for pair in path.windows(2) {
        let step = first["plan"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == pair[1])
            .unwrap();
        assert!(
            step["after"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == pair[0]),
            "{} does not wait for {}",
            pair[1],
            pair[0]
        );
    }
}

#[test]
fn an_emergency_failover_reports_the_failure_the_blocked_branch_and_missed_rtos() {
    let r = json_report("emergency");
    assert_eq!(r["result"], "partially_recovered");
    assert_eq!(r["emergency"], true);
    assert!(r["incident_at"].is_string());
    assert_eq!(r["measured_from"], r["incident_at"]);
    let planning = service(&r, "planning");
    assert_eq!(planning["status"], "failed");
    assert!(
        planning["reason"]
            .as_str()
            .unwrap()
            .starts_with("planning/start")
    );
    assert_eq!(service(&r, "citrix")["status"], "blocked");
    // Services unrelated to the failure were recovered.
    for id in ["directory", "erp-db", "erp-app", "lms", "files", "print"] {
        assert_eq!(service(&r, id)["status"], "recovered", "{id}");
    }
    // RTO counts from the incident, 5h30 before the run: a 4h target is missed, 8h met.
    let erp = service(&r, "erp-db");
    assert!(erp["achieved_rto_s"].as_f64().unwrap() >= 5.5 * 3600.0);
    assert_eq!(erp["rto_met"], false);
    assert_eq!(service(&r, "lms")["rto_met"], true);
    assert_eq!(planning["rto_met"], false);
    let problems = r["problems"].as_array().unwrap();
    let failed = problems
        .iter()
        .find(|p| p["kind"] == "failed" && p["step"] == "planning/start")
        .expect("the failed step is a problem");
    assert!(
        failed["excerpt"].as_str().unwrap().contains("damaged"),
        "{failed}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p["kind"] == "blocked" && p["service"] == "citrix")
    );
    let kinds: Vec<&str> = r["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"late_start"), "{kinds:?}");
    assert!(kinds.contains(&"not_recovered"), "{kinds:?}");
}

#[test]
fn manual_steps_show_who_confirmed_when_and_how_long_they_waited() {
    let r = json_report("manual");
    let manual = r["manual"].as_array().unwrap();
    assert!(manual.len() >= 3, "{manual:?}");
    for m in manual {
        assert_eq!(m["by"], "Sofia Haddad", "{m}");
        assert_eq!(m["note"], "checked on site");
        assert!(!m["instructions"].as_str().unwrap().is_empty());
        let waited = m["waited_s"].as_f64().unwrap();
        assert!(waited > 0.0, "{m}");
        let bar = r["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == m["step"])
            .unwrap();
        assert_eq!(bar["wait_s"], m["waited_s"]);
    }
    assert!(
        r["evidence"]["operators"]
            .as_array()
            .unwrap()
            .contains(&Value::from("Sofia Haddad"))
    );
}

#[test]
fn a_resumed_run_says_who_resumed_it_and_what_the_resume_took_up() {
    let r = json_report("resumed");
    let resumes = r["resumes"].as_array().unwrap();
    assert_eq!(resumes.len(), 1);
    assert_eq!(resumes[0]["operator"], "Nadia Amrani");
    assert_eq!(r["result"], "recovered_with_issues");
    assert!(
        r["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["kind"] == "ran_again"),
        "{}",
        r["problems"]
    );
    let ops = r["evidence"]["operators"].as_array().unwrap();
    assert!(
        ops.contains(&Value::from("Karim Benali")) && ops.contains(&Value::from("Nadia Amrani"))
    );
}

#[test]
fn the_html_report_is_self_contained_and_names_every_service() {
    for name in FIXTURES {
        let state = state_with(&[name]);
        let html = report(state.path(), &["--format", "html"]).stdout;
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<svg"), "{name}: no timeline");
        for forbidden in ["src=", "href=", "url(http", "@import", "<link", "<script"] {
            assert!(!html.contains(forbidden), "{name}: {forbidden}");
        }
        let r = json_report(name);
        for s in r["services"].as_array().unwrap() {
            assert!(
                html.contains(s["id"].as_str().unwrap()),
                "{name}: {}",
                s["id"]
            );
        }
    }
}

#[test]
fn french_labels() {
    let state = state_with(&["emergency"]);
    let html = report(state.path(), &["--format", "html", "--lang", "fr"]).stdout;
    assert!(html.contains("<html lang=\"fr\">"));
    assert!(html.contains("Bascule d&#39;urgence"));
    assert!(html.contains("Partiellement rétabli"));
    assert!(!html.contains("Recovery report"));
}

#[test]
fn the_output_file_extension_chooses_the_format() {
    let state = state_with(&["drill"]);
    for (file, starts) in [
        ("r.html", "<!DOCTYPE html>"),
        ("r.json", "{"),
        ("r.md", "# Recovery report"),
    ] {
        let out = state.path().join(file);
        let run = report(state.path(), &["--output", out.to_str().unwrap()]);
        assert_eq!(run.stdout.trim(), out.to_str().unwrap());
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.starts_with(starts), "{file}: {}", &text[..40]);
    }
}

#[test]
fn history_gives_the_last_drill_of_each_service_and_runs_the_results() {
    let state = state_with(&["drill", "emergency", "resumed"]);
    let s = state.path().to_str().unwrap();
    let run = reprise(Path::new("/"), &["--state-dir", s, "history", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let last: Value = serde_json::from_str(&run.stdout).unwrap();
    let resumed_id = {
        let text = std::fs::read_to_string(fixture("resumed")).unwrap();
        let v: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        v["run_id"].clone()
    };
    let citrix = last
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["service"] == "citrix")
        .unwrap();
    // The resumed drill is newer than the first one; the emergency failover is no drill.
    assert_eq!(citrix["run_id"], resumed_id);
    let run = reprise(Path::new("/"), &["--state-dir", s, "runs"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("partially recovered"), "{}", run.stdout);
    assert!(run.stdout.contains("3/13"), "{}", run.stdout);
}

#[test]
fn bad_report_requests_fail_clearly() {
    let state = state_with(&["drill"]);
    let s = state.path().to_str().unwrap();
    let run = reprise(Path::new("/"), &["--state-dir", s, "report", "nope"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("no run `nope`"), "{}", run.stderr);

    // A torn last line (a crash mid-write) is tolerated; a corrupt line in the middle names
    // the file and line.
    let journal = std::fs::read_dir(state.path().join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("journal.jsonl");
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(3, "{not json");
    std::fs::write(&journal, lines.join("\n") + "\n").unwrap();
    let run = reprise(Path::new("/"), &["--state-dir", s, "report", "latest"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("journal.jsonl:4"), "{}", run.stderr);

    // No Chromium: the PDF is refused with the way to install it.
    let state = state_with(&["drill"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args([
            "--state-dir",
            state.path().to_str().unwrap(),
            "report",
            "--pdf",
        ])
        .arg("--output")
        .arg(state.path().join("r.pdf"))
        .env("PATH", "/nonexistent")
        .env_remove("REPRISE_CHROMIUM")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install chromium"), "{stderr}");
    assert!(!state.path().join("r.pdf").exists());
}
