//! Services their application replicates, on the lab with real sshd: the lag probe's answer
//! (within the RPO, over it, garbage, a probe that hangs, a host that is down) as `status` (in
//! every format) and `check` judge it, a planned failover's readiness gate and its switch, and
//! the journals and reports of a failover and a failback.

use std::path::PathBuf;

use crate::lab::Lab;

/// Where the lab's stand-ins for lag probes on `host` read the lag they print.
fn lag_file(lab: &Lab, host: &str) -> PathBuf {
    let dir = lab.host_root(host).join("var/lib/lab");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("replication-lag")
}

/// The `lag` items of `reprise check --json`, by subject: (status, detail).
fn check_lags(lab: &Lab) -> (i32, Vec<(String, String, String)>) {
    let run = lab.run(&["check", "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"));
    let items = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["area"] == "lag")
        .map(|i| {
            (
                i["subject"].as_str().unwrap().to_string(),
                i["status"].as_str().unwrap().to_string(),
                i["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (run.code, items)
}

/// The samples of `reprise status --format prometheus`, one line each.
fn metrics(lab: &Lab) -> Vec<String> {
    let run = lab.run(&["status", "--format", "prometheus"]);
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn lag_item(items: &[(String, String, String)], subject: &str) -> (String, String) {
    let (_, status, detail) = items
        .iter()
        .find(|(s, _, _)| s == subject)
        .unwrap_or_else(|| panic!("no lag item for {subject}: {items:?}"));
    (status.clone(), detail.clone())
}

#[test]
fn status_and_check_judge_the_lag_and_never_pass_one_they_cannot_read() {
    let lab = Lab::up(180);
    let file = lag_file(&lab, "pg-pra");

    // The lab's standby replays 1.5 s behind: within the RPO of 15 minutes.
    let status = lab.run(&["status"]);
    assert_eq!(status.code, 0, "{status:?}");
    let row = status
        .stdout
        .lines()
        .find(|l| l.starts_with("lms-db "))
        .unwrap_or_else(|| panic!("{}", status.stdout));
    assert!(row.contains("1.5s") && row.contains(" ok "), "{row}");
    let (code, items) = check_lags(&lab);
    assert_eq!(code, 0, "{items:?}");
    let (st, detail) = lag_item(&items, "service lms-db");
    assert_eq!(st, "ok", "{detail}");
    assert!(detail.contains("within the RPO 15m"), "{detail}");
    assert_eq!(lag_item(&items, "service directory").0, "ok");
    // dc1's copy serves only the drills (the directory fails over by AD replication): it is
    // held to the vm's own RPO of a day, not to the directory's hour.
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&lab.run(&["status", "--json"]).stdout).unwrap();
    let dc1 = rows.iter().find(|r| r["item"] == "dc1").unwrap();
    assert_eq!(dc1["rpo_s"], 86400, "{dc1}");
    // Monitoring reads the same lag: metrics per service, performance data in the plugin line.
    let m = metrics(&lab);
    for line in [
        "reprise_replication_lag_known{service=\"lms-db\"} 1",
        "reprise_replication_lag_seconds{service=\"lms-db\"} 1.5",
        "reprise_replication_lag_rpo_target_seconds{service=\"lms-db\"} 900",
        "reprise_replication_lag_rpo_breach{service=\"lms-db\"} 0",
        "reprise_replication_lag_rpo_breach{service=\"directory\"} 0",
    ] {
        assert!(m.contains(&line.to_string()), "{line}: {m:?}");
    }
    let nagios = lab.run(&["status", "--format", "nagios"]);
    assert!(
        nagios.stdout.contains("'lms-db lag'=1.5s;720;900;0")
            && !nagios.stdout.contains("CRITICAL"),
        "{nagios:?}"
    );

    // Twenty minutes behind: over the target.
    std::fs::write(&file, "1200.25\n").unwrap();
    let status = lab.run(&["status"]);
    assert_eq!(status.code, 8, "{status:?}");
    assert!(status.stdout.contains("BREACH"), "{}", status.stdout);
    let m = metrics(&lab);
    assert!(
        m.contains(&"reprise_replication_lag_rpo_breach{service=\"lms-db\"} 1".to_string()),
        "{m:?}"
    );
    let nagios = lab.run(&["status", "--format", "nagios"]);
    assert_eq!(nagios.code, 2, "{nagios:?}");
    assert!(
        nagios
            .stdout
            .starts_with("REPRISE CRITICAL - lms-db: replication lag 20m00s, RPO 15m"),
        "{}",
        nagios.stdout
    );
    let (code, items) = check_lags(&lab);
    assert_eq!(code, 7);
    let (st, detail) = lag_item(&items, "service lms-db");
    assert_eq!(st, "failed");
    assert!(detail.contains("over the RPO 15m"), "{detail}");

    // Garbage, a negative lag, an absurd one: unknown, never within the target.
    for (said, why) in [
        (
            "ERROR:  recovery is not in progress\n",
            "not a number of seconds",
        ),
        ("-4.2\n", "negative lag"),
        ("99999999999\n", "more than a year"),
        ("", "printed nothing"),
    ] {
        std::fs::write(&file, said).unwrap();
        let status = lab.run(&["status", "--json"]);
        assert_eq!(status.code, 8, "{said:?}: {status:?}");
        let rows: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
        let row = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["item"] == "service lms-db")
            .unwrap();
        assert_eq!(row["lag_s"], serde_json::Value::Null, "{said:?}");
        assert_eq!(row["breach"], true, "{said:?}");
        assert!(
            row["why"].as_str().unwrap().contains(why),
            "{said:?}: {row}"
        );
        let (code, items) = check_lags(&lab);
        assert_eq!(code, 7, "{said:?}");
        let (st, detail) = lag_item(&items, "service lms-db");
        assert_eq!(st, "failed", "{said:?}");
        assert!(
            detail.contains("lag unknown") && detail.contains(why),
            "{detail}"
        );
        // No lag figure for what is not a lag: unknown, and a breach.
        let m = metrics(&lab);
        assert!(
            m.contains(&"reprise_replication_lag_known{service=\"lms-db\"} 0".to_string())
                && m.contains(
                    &"reprise_replication_lag_rpo_breach{service=\"lms-db\"} 1".to_string()
                )
                && !m
                    .iter()
                    .any(|l| l.starts_with("reprise_replication_lag_seconds{service=\"lms-db\"}")),
            "{said:?}: {m:?}"
        );
        let nagios = lab.run(&["status", "--format", "nagios"]);
        assert_eq!(nagios.code, 2, "{said:?}: {nagios:?}");
        assert!(
            nagios.stdout.contains("lms-db: lag unknown: ") && nagios.stdout.contains(why),
            "{said:?}: {}",
            nagios.stdout
        );
        assert!(!nagios.stdout.contains("'lms-db lag'"), "{}", nagios.stdout);
    }

    // A probe that hangs is stopped at its timeout (30s for lms-db) and is a lag unknown.
    std::fs::write(&file, "hang").unwrap();
    let (code, items) = check_lags(&lab);
    assert_eq!(code, 7);
    let (st, detail) = lag_item(&items, "service lms-db");
    assert_eq!(st, "failed");
    assert!(detail.contains("did not answer within 30s"), "{detail}");

    // The standby's host is down: unknown, with the connection error.
    std::fs::write(&file, "3").unwrap();
    let pid = std::fs::read_to_string(lab.lab().join("hosts/pg-pra/run/sshd.pid")).unwrap();
    let killed = std::process::Command::new("kill")
        .arg(pid.trim())
        .status()
        .unwrap();
    assert!(killed.success());
    let (code, items) = check_lags(&lab);
    assert_eq!(code, 7);
    let (st, detail) = lag_item(&items, "service lms-db");
    assert_eq!(st, "failed");
    assert!(
        detail.contains("lag unknown: the probe could not run") && detail.contains("pg-pra"),
        "{detail}"
    );
    // The directory's probe, on another host, still reads its lag.
    assert_eq!(lag_item(&items, "service directory").0, "ok");
}

fn journal(lab: &Lab) -> Vec<serde_json::Value> {
    let runs = lab.state().join("runs");
    let last = crate::common::run_ids(&lab.state()).pop().expect("a run");
    let text = std::fs::read_to_string(runs.join(last).join("journal.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn failover_of_lms_db(lab: &Lab) -> serde_json::Value {
    let run = lab.run(&[
        "failover",
        "--emergency",
        "--service",
        "lms-db",
        "--only",
        "--yes",
        "--no-prompt",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let report = lab.run(&["report", "latest", "--format", "json"]);
    assert_eq!(report.code, 0, "{report:?}");
    let r: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    r["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "lms-db")
        .unwrap()
        .clone()
}

#[test]
fn a_failover_journals_the_lag_before_the_switch_and_reports_it_as_the_data_loss() {
    let lab = Lab::up(181);
    let file = lag_file(&lab, "pg-pra");
    std::fs::write(&file, "240.5\n").unwrap();
    let s = failover_of_lms_db(&lab);
    let events = journal(&lab);
    let at = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("{events:?}"))
    };
    let measured = at(&|e| e["event"] == "lag_measured");
    let promote = at(&|e| e["event"] == "step_started" && e["step"] == "lms-db/promote");
    assert!(
        measured < promote,
        "the lag is read before the standby is promoted"
    );
    let e = &events[measured];
    assert_eq!(e["service"], "lms-db");
    assert_eq!(e["host"], "pg-pra");
    assert_eq!(e["lag_s"], 240.5);
    assert_eq!(e["rpo_target_s"], 900);
    // The standby really was promoted (the stand-in recorded it).
    assert!(
        lab.host_root("pg-pra")
            .join("var/lib/lab/pg-promoted")
            .exists()
    );
    assert_eq!(s["status"], "recovered");
    assert_eq!(s["data_loss_s"], 240.5);
    assert_eq!(s["rpo_met"], true);
    assert_eq!(s["lag"]["host"], "pg-pra");
    let md = lab.run(&["report", "latest", "--format", "md"]).stdout;
    assert!(
        md.contains("replication lag 4m 01s, measured by the application's probe on pg-pra"),
        "{md}"
    );

    // A probe whose answer cannot be read: the data loss is not measured, and said so.
    std::fs::write(&file, "replay paused\n").unwrap();
    let s = failover_of_lms_db(&lab);
    assert_eq!(s["data_loss_s"], serde_json::Value::Null);
    assert_eq!(s["rpo_met"], serde_json::Value::Null);
    assert!(
        s["lag"]["unknown"]
            .as_str()
            .unwrap()
            .contains("`replay paused`, not a number"),
        "{s}"
    );
    let md = lab.run(&["report", "latest", "--format", "md"]).stdout;
    assert!(
        md.contains("data loss not measured: the application's replication lag is unknown"),
        "{md}"
    );
    assert!(!md.contains("within their RPO target"), "{md}");
}

#[test]
fn a_failback_reads_the_reverse_replication_just_before_the_switch_back() {
    let lab = Lab::up(182);
    let only = ["--service", "lms-db", "--only", "--yes", "--no-prompt"];
    let pg_pra = lag_file(&lab, "pg-pra");
    // The lab's systemctl marks a unit stopped by name.
    let active = |host: &str| {
        !lab.host_root(host)
            .join("../units-stopped/postgresql")
            .exists()
    };
    let runs = || {
        std::fs::read_dir(lab.state().join("runs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    // A planned failover whose standby lags past the RPO, or cannot say: its readiness check
    // refuses it before anything is stopped. Forced past it, the switch still stops before the
    // promotion and the primary is started again (the data it holds is kept).
    for said in ["1200\n", "garbage\n"] {
        std::fs::write(&pg_pra, said).unwrap();
        let before = runs();
        let refused = lab.run(&[&["failover"][..], &only[..]].concat());
        assert_eq!(refused.code, 7, "{said:?}: {refused:?}");
        assert!(
            refused.stderr.contains("lag service lms-db: ") && refused.stderr.contains("--force"),
            "{said:?}: {}",
            refused.stderr
        );
        assert_eq!(runs(), before, "{said:?}: a refused failover started a run");
        assert!(active("moodle-db"), "{said:?}");
        let run = lab.run(&[&["failover", "--force"][..], &only[..]].concat());
        assert_eq!(run.code, 1, "{said:?}: {run:?}");
        let events = journal(&lab);
        let forced = events
            .iter()
            .find(|e| e["event"] == "readiness_forced")
            .unwrap_or_else(|| panic!("{events:#?}"));
        assert!(
            forced["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p.as_str().unwrap().starts_with("lag service lms-db: ")),
            "{forced}"
        );
        let lag = events
            .iter()
            .find(|e| e["event"] == "step_finished" && e["step"] == "lms-db/replication-lag")
            .unwrap_or_else(|| panic!("{events:#?}"));
        assert_eq!(lag["status"], "failed", "{said:?}");
        assert!(
            lag["message"]
                .as_str()
                .unwrap()
                .contains("a planned switch stops here"),
            "{lag}"
        );
        assert!(
            !events
                .iter()
                .any(|e| e["event"] == "step_started" && e["step"] == "lms-db/promote"),
            "{said:?}: the standby was promoted"
        );
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "undo_finished" && e["step"] == "lms-db/stop-primary"),
            "{said:?}: the primary was not started again: {events:#?}"
        );
        assert!(active("moodle-db"), "{said:?}");
        assert!(
            !lab.host_root("pg-pra")
                .join("var/lib/lab/pg-promoted")
                .exists()
        );
    }
    std::fs::write(&pg_pra, "2\n").unwrap();
    let run = lab.run(&[&["failover"][..], &only[..]].concat());
    assert_eq!(run.code, 0, "{run:?}");
    // moodle-db now replays pg-pra's WAL, 7.25 s behind.
    std::fs::write(lag_file(&lab, "moodle-db"), "7.25\n").unwrap();
    let exit = lab.run_confirming(
        &[&["failback"][..], &only[..]].concat(),
        std::time::Duration::from_secs(240),
    );
    assert!(exit.success(), "{:#?}", lab.journal());
    let events = journal(&lab);
    let at = |pred: &dyn Fn(&serde_json::Value) -> bool| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("{events:#?}"))
    };
    let stopped = at(&|e| e["event"] == "step_finished" && e["step"] == "lms-db/stop-recovery");
    let measured = at(&|e| e["event"] == "lag_measured");
    let promote = at(&|e| e["event"] == "step_started" && e["step"] == "lms-db/promote");
    assert!(
        stopped < measured && measured < promote,
        "the reverse lag is read once pg-pra has stopped, before moodle-db is promoted"
    );
    let e = &events[measured];
    assert_eq!(e["host"], "moodle-db", "the probe of the reverse direction");
    assert_eq!(e["lag_s"], 7.25);
    // Only one reading, the reverse one: pg-pra's own probe means nothing once it was promoted.
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "lag_measured")
            .count(),
        1
    );
    assert!(
        lab.host_root("moodle-db")
            .join("var/lib/lab/pg-promoted")
            .exists()
    );
    let report = lab.run(&["report", "latest", "--format", "json"]);
    let r: serde_json::Value = serde_json::from_str(&report.stdout).unwrap();
    let s = r["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "lms-db")
        .unwrap();
    assert_eq!(s["data_loss_s"], 7.25, "{s}");
    assert_eq!(s["rpo_met"], true, "{s}");
    assert_eq!(s["lag"]["host"], "moodle-db", "{s}");
}

/// An emergency failover promoted pg-pra, lms-db's standby: its newest data is there. A
/// restore of lms-db (the main site's power back) would start PostgreSQL on moodle-db from
/// its data of before, a second primary: refused (exit 6) before anything runs, naming the
/// failover and the way back; `--force` (pg-pra and its data lost) passes it, journaled.
#[test]
fn a_restore_never_starts_a_service_whose_standby_a_failover_promoted() {
    let lab = Lab::up(162);
    let s = failover_of_lms_db(&lab);
    assert_eq!(s["status"], "recovered", "{s}");
    let runs = || {
        std::fs::read_dir(lab.state().join("runs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let before = runs();
    let only = ["--service", "lms-db", "--only", "--yes", "--no-prompt"];
    let refused = lab.run(&[&["restore"][..], &only[..]].concat());
    assert_eq!(refused.code, 6, "{refused:?}");
    assert!(
        refused.stderr.contains("service lms-db: failover run")
            && refused
                .stderr
                .contains("(step lms-db/promote done on pg-pra")
            && refused.stderr.contains("reprise failback --service lms-db"),
        "{}",
        refused.stderr
    );
    assert_eq!(runs(), before, "a refused restore started a run");
    let forced = lab.run(&[&["restore", "--force"][..], &only[..]].concat());
    assert_eq!(forced.code, 0, "{forced:?}");
    let events = journal(&lab);
    let said = events
        .iter()
        .find(|e| e["event"] == "readiness_forced")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert!(
        said["problems"][0]
            .as_str()
            .is_some_and(|p| p.starts_with("service lms-db: failover run")),
        "{said}"
    );
}
