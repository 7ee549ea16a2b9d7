//! The shipped example (`inventory/`, `runbooks/`): it validates, and its plans, graph and impact
//! analyses are snapshotted so that every change to what reprise would do is reviewed.

use crate::common::{Run, reprise_with_env, root};

#[track_caller]
fn ok(args: &[&str]) -> Run {
    // No ssh configuration of this machine changes where the plans say hosts are reached.
    let run = reprise_with_env(&root(), args, &[("REPRISE_SSH_CONFIG", "none")]);
    assert_eq!(run.code, 0, "reprise {args:?}: {}", run.stderr);
    assert_eq!(run.stderr, "", "reprise {args:?} warned");
    run
}

#[test]
fn example_validates() {
    let run = ok(&["validate"]);
    assert!(run.stdout.starts_with("ok: "), "{}", run.stdout);
}

const MODES: &[(&str, &[&str])] = &[
    ("drill", &["plan", "drill"]),
    ("failover", &["plan", "failover"]),
    ("failover_emergency", &["plan", "failover", "--emergency"]),
    ("restore", &["plan", "restore"]),
    ("failback", &["plan", "failback"]),
];

#[test]
fn plans_of_every_mode() {
    for (name, args) in MODES {
        insta::assert_snapshot!(format!("plan_{name}"), ok(args).stdout);
        let mut json_args = args.to_vec();
        json_args.push("--json");
        let json: serde_json::Value = serde_json::from_str(&ok(&json_args).stdout).unwrap();
        insta::assert_json_snapshot!(format!("plan_{name}_json"), json);
    }
}

#[test]
fn json_plan_keeps_its_contract() {
    for (_, args) in MODES {
        let mut json_args = args.to_vec();
        json_args.push("--json");
        let plan: serde_json::Value = serde_json::from_str(&ok(&json_args).stdout).unwrap();
        assert!(plan["mode"].is_string());
        let steps = plan["steps"].as_array().unwrap();
        assert!(!steps.is_empty());
        let mut seen = std::collections::HashSet::new();
        for step in steps {
            for key in [
                "id",
                "service",
                "host",
                "kind",
                "command",
                "timeout_s",
                "after",
            ] {
                assert!(step.get(key).is_some(), "step lacks `{key}`: {step}");
            }
            // Every step waits only for steps listed before it.
            for a in step["after"].as_array().unwrap() {
                assert!(
                    seen.contains(a.as_str().unwrap()),
                    "{} waits for later {a}",
                    step["id"]
                );
            }
            seen.insert(step["id"].as_str().unwrap().to_string());
        }
    }
}

#[test]
fn emergency_failover_leaves_out_primary_steps_and_says_so() {
    let planned: serde_json::Value =
        serde_json::from_str(&ok(&["plan", "failover", "--json"]).stdout).unwrap();
    let emergency: serde_json::Value =
        serde_json::from_str(&ok(&["plan", "failover", "--emergency", "--json"]).stdout).unwrap();
    let needs_primary: Vec<&str> = planned["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["needs_primary"] == true)
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(!needs_primary.is_empty());
    let left_out: Vec<&str> = emergency["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(left_out, needs_primary);
    assert!(
        emergency["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["site"] != "paris")
    );
}

#[test]
fn drill_never_touches_the_primary_site_and_cleans_up_last() {
    let plan: serde_json::Value =
        serde_json::from_str(&ok(&["plan", "drill", "--json"]).stdout).unwrap();
    let steps = plan["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["site"] != "paris"));
    let first_cleanup = steps
        .iter()
        .position(|s| s["phase"] == "cleanup")
        .expect("a cleanup phase");
    assert!(
        steps[first_cleanup..]
            .iter()
            .all(|s| s["phase"] == "cleanup")
    );
    let main_end = steps[..first_cleanup]
        .iter()
        .map(|s| s["est_finish_s"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        steps[first_cleanup..]
            .iter()
            .all(|s| s["est_start_s"].as_u64().unwrap() >= main_end)
    );
}

#[test]
fn graph_in_every_format() {
    for format in ["text", "dot", "mermaid"] {
        insta::assert_snapshot!(
            format!("graph_{format}"),
            ok(&["graph", "--format", format]).stdout
        );
    }
}

#[test]
fn impact_of_core_services() {
    for service in ["power-paris", "storage-main", "directory", "erp-db"] {
        insta::assert_snapshot!(format!("impact_{service}"), ok(&["impact", service]).stdout);
    }
}
