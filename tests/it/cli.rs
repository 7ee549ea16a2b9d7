//! End-to-end command-line behaviour: exit codes and messages for the situations a user meets.

use crate::common::{mini_copy, reprise, reprise_bounded, root};

#[test]
fn missing_folder_is_an_io_error_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let run = reprise(dir.path(), &["validate"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr
            .contains("cannot read inventory folder inventory"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--inventory DIR"), "{}", run.stderr);
}

#[test]
fn valid_fixture_validates() {
    let dir = mini_copy();
    let run = reprise(dir.path(), &["validate"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .starts_with("ok: 3 sites, 4 hosts, 4 services, 2 vms, 2 backup sets"),
        "{}",
        run.stdout
    );
}

#[test]
fn unknown_service_in_a_plan_is_invalid_input_with_a_suggestion() {
    let dir = mini_copy();
    let run = reprise(dir.path(), &["plan", "drill", "--service", "ap"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("unknown service `ap`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("did you mean `app`?"), "{}", run.stderr);
    let run = reprise(dir.path(), &["impact", "netwrok"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("did you mean `network`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn emergency_applies_to_failover_only() {
    let dir = mini_copy();
    let run = reprise(dir.path(), &["plan", "restore", "--emergency"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("--emergency applies to failover"),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_usage_exits_2_and_help_shows_an_example() {
    let dir = mini_copy();
    assert_eq!(reprise(dir.path(), &["plan", "sideways"]).code, 2);
    // A connect timeout no clock can add (or none at all, which libssh2 takes for "wait
    // forever") is a wrong command line, for every command that connects.
    for args in [
        &["points", "erp-db", "--connect-timeout", "99999999999999"][..],
        &["drill", "--connect-timeout", "0"][..],
    ] {
        let run = reprise(dir.path(), args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(run.stderr.contains("is not in 1..=3600"), "{run:?}");
    }
    let help = reprise(dir.path(), &["--help"]);
    assert_eq!(help.code, 0);
    assert!(
        help.stdout.contains("reprise plan failover --emergency"),
        "{}",
        help.stdout
    );
    let help = reprise(dir.path(), &["plan", "--help"]);
    assert!(help.stdout.contains("Examples:"), "{}", help.stdout);
}

#[test]
fn secrets_are_never_shown() {
    let dir = mini_copy();
    for args in [&["plan", "failover"][..], &["plan", "failover", "--json"]] {
        let run = reprise(dir.path(), args);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(run.stdout.contains("<secret:FW_TOKEN>"), "{}", run.stdout);
    }
}

#[test]
fn only_flags_what_it_leaves_out() {
    let dir = mini_copy();
    let run = reprise(
        dir.path(),
        &["plan", "failover", "--service", "app", "--only", "--json"],
    );
    assert_eq!(run.code, 0, "{run:?}");
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["selection"]["only"], true);
    assert_eq!(
        plan["selection"]["assumed_running"],
        serde_json::json!(["power", "network", "db"])
    );
    let services: Vec<&str> = plan["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["app"]);
    // The first step of app waits for nothing left in the plan.
    assert_eq!(plan["steps"][0]["after"], serde_json::json!([]));
    let text = reprise(
        dir.path(),
        &["plan", "failover", "--service", "app", "--only"],
    );
    assert!(
        text.stdout
            .contains("NOT included, assumed already running: power, network, db"),
        "{}",
        text.stdout
    );
    let _ = root();
}

#[test]
fn a_bad_incident_time_is_refused_before_anything_runs() {
    let dir = mini_copy();
    let run = reprise(
        dir.path(),
        &[
            "failover",
            "--emergency",
            "--incident-at",
            "last night",
            "--yes",
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("is not a time"), "{}", run.stderr);
    let run = reprise(
        dir.path(),
        &[
            "failover",
            "--emergency",
            "--incident-at",
            "2999-01-01T00:00:00Z",
            "--yes",
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("in the future"), "{}", run.stderr);
    // A local time of the hour the clocks go back happens twice: which one is not guessed.
    // (A POSIX rule for Paris: no time zone database needed.)
    let paris = [("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")];
    for option in ["--incident-at", "--point-before"] {
        let run = crate::common::reprise_with_env(
            dir.path(),
            &[
                "failover",
                "--emergency",
                option,
                "2025-10-26 02:30",
                "--yes",
            ],
            &paris,
        );
        assert_eq!(run.code, 2, "{option}: {run:?}");
        assert!(
            run.stderr.contains("happens twice in the local time zone")
                && run
                    .stderr
                    .contains("2025-10-26T02:30:00+02:00 (the first time)")
                && run
                    .stderr
                    .contains("2025-10-26T02:30:00+01:00 (the second)"),
            "{}",
            run.stderr
        );
    }
    // An hour before, it happens once.
    let run = crate::common::reprise_with_env(
        dir.path(),
        &[
            "failover",
            "--emergency",
            "--incident-at",
            "2025-10-26 01:30",
            "--dry-run",
        ],
        &paris,
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!dir.path().join("runs").exists());
}

#[test]
fn a_bad_point_request_is_refused_before_anything_runs() {
    let dir = mini_copy();
    let run = reprise(dir.path(), &["failover", "--point", "erp-db=", "--yes"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("is not POINT or VM=POINT"),
        "{}",
        run.stderr
    );
    let run = reprise(
        dir.path(),
        &[
            "failover",
            "--point",
            "no-such-vm=20261128T020000Z",
            "--yes",
        ],
    );
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("unknown vm `no-such-vm`"),
        "{}",
        run.stderr
    );
    // Two points for one vm, or for every vm: which one is not guessed (exit 2).
    for points in [
        ["db=20261128T020000Z", "db=20261128T030000Z"],
        ["20261128T020000Z", "20261128T030000Z"],
    ] {
        let run = reprise(
            dir.path(),
            &[
                "failover", "--point", points[0], "--point", points[1], "--yes",
            ],
        );
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr.contains("--point asks two points for")
                && run
                    .stderr
                    .contains("(20261128T020000Z and 20261128T030000Z): ask one"),
            "{}",
            run.stderr
        );
    }
    assert!(!dir.path().join("runs").exists());
}

#[test]
fn estimates_at_the_longest_durations_add_up_exactly_and_miss_the_target() {
    // Two steps at the 366-day bound, one after the other: the plan says 732 days and more,
    // over the 4h target, instead of wrapping around to a small "ok".
    let dir = mini_copy();
    let db = dir.path().join("runbooks/db.toml");
    let text = std::fs::read_to_string(&db)
        .unwrap()
        .replacen("expected = \"10m\"", "expected = \"366d\"", 1)
        .replacen(
            "id = \"stop-primary\"",
            "id = \"stop-primary\"\nexpected = \"366d\"",
            1,
        );
    std::fs::write(&db, text).unwrap();
    let run = reprise(dir.path(), &["plan", "failover"]);
    assert_eq!(run.code, 0, "{run:?}");
    let out = &run.stdout;
    assert!(out.contains("T+8784:02  db/sync"), "{out}");
    assert!(out.contains("T+17568:02  db/start"), "{out}");
    assert!(
        out.contains("RTO target 4h, estimated 732d22m (OVER TARGET)"),
        "{out}"
    );
}

/// A report, or status's metrics, is never written over what reprise reads: an inventory or
/// runbook file, the runs of the state folder (a run's journal), given as `--output` by
/// mistake (exit 2, untouched).
#[test]
fn a_report_is_never_written_over_what_reprise_reads() {
    let dir = mini_copy();
    std::fs::create_dir_all(dir.path().join("state/runs/r1")).unwrap();
    std::fs::write(dir.path().join("state/runs/r1/journal.jsonl"), "{}\n").unwrap();
    for out in [
        "inventory/hosts.toml",
        "runbooks",
        "state/runs/r1/journal.jsonl",
        "./inventory/../runbooks/new.md",
    ] {
        let before = std::fs::read(dir.path().join(out)).ok();
        let run = reprise(
            dir.path(),
            &["--state-dir", "state", "report", "latest", "--output", out],
        );
        assert_eq!(run.code, 2, "{out}: {run:?}");
        assert!(
            run.stderr.contains("which reprise reads") && run.stderr.contains(out),
            "{out}: {}",
            run.stderr
        );
        assert_eq!(std::fs::read(dir.path().join(out)).ok(), before, "{out}");
    }
    // Nor the metrics of `status`.
    let run = reprise(
        dir.path(),
        &[
            "--state-dir",
            "state",
            "status",
            "--format",
            "prometheus",
            "--output",
            "inventory/vms.toml",
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("which reprise reads"), "{}", run.stderr);
    // Nor the metrics a schedule would write every 5 minutes: refused when it is made.
    let run = reprise(
        dir.path(),
        &[
            "--state-dir",
            "state",
            "schedule",
            "--cron",
            "--metrics",
            "state/runs/reprise.prom",
        ],
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("which reprise reads"), "{}", run.stderr);
}

/// `--point` and `--point-before` choose the points a failover starts from: asked of a
/// drill's resume, they would be journaled and then ignored without a word. Refused (exit 2),
/// the journal untouched.
#[test]
fn a_resume_that_takes_no_points_refuses_to_be_given_some() {
    let state = tempfile::tempdir().unwrap();
    let id = "20261129-055100-drill";
    let run_dir = state.path().join("runs").join(id);
    std::fs::create_dir_all(&run_dir).unwrap();
    // The drill, cut before its end (a crash).
    let text =
        std::fs::read_to_string(root().join("tests/fixtures/journals/resumed.jsonl")).unwrap();
    let journal: String = text
        .lines()
        .filter(|l| !l.contains("\"event\":\"run_finished\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let journal = journal.into_bytes();
    std::fs::write(run_dir.join("journal.jsonl"), &journal).unwrap();
    let state_arg = state.path().to_str().unwrap();
    for asked in [
        &["--point", "erp-db=20261128T020000Z"][..],
        &["--point", "20261128T020000Z"],
        &["--point-before", "2026-11-28 01:00"],
    ] {
        let mut args = vec!["--state-dir", state_arg, "resume", id];
        args.extend(asked);
        let run = reprise(&root(), &args);
        assert_eq!(run.code, 2, "{asked:?}: {run:?}");
        assert!(
            run.stderr.contains(
                "is a drill: --point and --point-before choose the points a failover starts from"
            ),
            "{run:?}"
        );
        assert_eq!(
            std::fs::read(run_dir.join("journal.jsonl")).unwrap(),
            journal
        );
    }
}

/// A time (or a point for every vm) asked of a failover cannot be given to a service its
/// application replicates (its standby holds what was replicated up to now): the failover is
/// refused before anything is reached (exit 3), naming each and what to do, unless the
/// operator lets them start as replicated; a `--point` for a vm the plan starts from no point
/// is refused too. A dry run says the same.
#[test]
fn a_time_asked_that_a_service_s_replication_cannot_give_is_refused_naming_it() {
    let state = tempfile::tempdir().unwrap();
    let state_arg = state.path().to_str().unwrap();
    let failover = |more: &[&str]| {
        let mut args = vec!["--state-dir", state_arg, "failover", "--emergency"];
        args.extend(more);
        reprise_bounded(&root(), &args)
    };
    let run = failover(&["--point-before", "2026-11-28 01:00", "--yes"]);
    assert_eq!(run.code, 3, "{run:?}");
    for said in [
        "refusing to start the failover, nothing was done",
        "service lms-db: its application replicates it (its lag is read on pg-pra): it would start from what was replicated up to now, not from a point taken before 2026-11-28 01:00:00 UTC",
        "--as-replicated lms-db",
        "service directory: its application replicates it",
    ] {
        assert!(run.stderr.contains(said), "{said}: {}", run.stderr);
    }
    // Nothing was journaled, nor any host reached.
    assert!(!state.path().join("runs").exists(), "{run:?}");
    let run = failover(&["--point", "20261128T020000Z", "--yes"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("not from point 20261128T020000Z"),
        "{}",
        run.stderr
    );
    let run = failover(&[
        "--point",
        "dc1=20261128T020000Z",
        "--service",
        "erp-app",
        "--yes",
    ]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains(
            "vm dc1: --point names it, and this failover starts it from no replica point"
        ),
        "{}",
        run.stderr
    );
    assert!(!state.path().join("runs").exists(), "{run:?}");
    // A dry run says it would be refused, and what letting them start as replicated leaves.
    let run = failover(&[
        "--point-before",
        "2026-11-28 01:00",
        "--as-replicated",
        "lms-db",
        "--dry-run",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("Points: this failover would be refused (exit 3)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("service directory: its application"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("service lms-db: its application"),
        "{}",
        run.stdout
    );
    let run = failover(&[
        "--point-before",
        "2026-11-28 01:00",
        "--as-replicated",
        "all",
        "--dry-run",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !run.stdout
            .contains("Points: this failover would be refused"),
        "{}",
        run.stdout
    );
    // Without a time, nothing to refuse.
    let run = failover(&["--dry-run"]);
    assert!(
        !run.stdout
            .contains("Points: this failover would be refused"),
        "{}",
        run.stdout
    );
    // A service the inventory does not know.
    let run = failover(&["--as-replicated", "moodle", "--dry-run"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr
            .contains("--as-replicated names an unknown service `moodle`"),
        "{}",
        run.stderr
    );
}

/// A drill step that names its service's vm and one that names none act on the same vm: a
/// drill-start and a cleanup drill-stop written so pair up.
#[test]
fn a_drill_copy_removed_by_a_step_that_names_no_vm_is_removed() {
    let dir = mini_copy();
    let book = dir.path().join("runbooks/db.toml");
    let text = std::fs::read_to_string(&book).unwrap();
    let named = text.replacen(
        "id = \"start\"\nkind = \"vm\"\naction = \"drill-start\"",
        "id = \"start\"\nkind = \"vm\"\nvm = \"db\"\naction = \"drill-start\"",
        1,
    );
    assert_ne!(
        named, text,
        "the fixture's drill-start is where this test expects it"
    );
    std::fs::write(&book, &named).unwrap();
    let run = reprise(dir.path(), &["validate"]);
    assert_eq!(run.code, 0, "{run:?}");
    // Its cleanup drill-stop taken away: refused, naming the vm.
    let none = named.replace(
        "action = \"drill-stop\"\nphase = \"cleanup\"",
        "action = \"drill-stop\"",
    );
    std::fs::write(&book, &none).unwrap();
    let run = reprise(dir.path(), &["validate"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains(
            "boots a drill copy of vm `db`, and no step of the drill's cleanup removes it"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_replication_service_started_wrong_says_so_at_once_and_does_not_loop() {
    let dir = mini_copy();
    // Too short, or a dry run: a usage error.
    let run = reprise(dir.path(), &["replicate", "--every", "5s"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("10s at least"), "{}", run.stderr);
    let run = reprise(dir.path(), &["replicate", "--every", "10m", "--dry-run"]);
    assert_eq!(run.code, 2, "{run:?}");
    // Under `timeout`: a command that went on would fail this test, not hang it.
    let bounded = |args: &[&str]| reprise_bounded(dir.path(), args);
    // A name the inventory lacks, in the first round: said and ended there (exit 3), before
    // any host is reached; a later round would say it and go on.
    let run = bounded(&["replicate", "--every", "10m", "--service", "nope"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr
            .contains("unknown service, vm or backup set `nope`"),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("round 1"), "{}", run.stdout);
    // A broken inventory likewise.
    std::fs::write(dir.path().join("inventory/hosts.toml"), "[hosts.x\n").unwrap();
    let run = bounded(&["replicate", "--every", "10m"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("hosts.toml"), "{}", run.stderr);
}
