//! Monitoring on the lab: `reprise status --format prometheus` parsed by Prometheus's own text
//! parser (Debian's python3-prometheus-client), and `--format nagios` judged by its exit code
//! and line, before a drill, after one, and with a copy whose metadata is damaged and a
//! recovery host that does not answer; the replication lags of the services their application
//! replicates among them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::lab::Lab;

const PYTHON: &str = "/usr/bin/python3";

/// One sample: metric name and its labels.
type Key = (String, BTreeMap<String, String>);

/// Parses the text format with `prometheus_client.parser`: every sample, or a panic naming
/// what the parser refused.
fn parse(text: &str) -> BTreeMap<Key, f64> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new(PYTHON)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{PYTHON} is missing ({e}): run scripts/test.sh, which installs it")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics (is python3-prometheus-client installed? \
         scripts/test.sh installs it): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    samples.into_iter().map(|(n, l, v)| ((n, l), v)).collect()
}

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    (
        name.to_string(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn vm(name: &str, item: &str) -> Key {
    key(name, &[("item", item), ("kind", "vm")])
}

/// The samples of metric `name`, by their `label`.
fn by(samples: &BTreeMap<Key, f64>, name: &str, label: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|((n, _), _)| n == name)
        .map(|((_, l), v)| (l[label].clone(), *v))
        .collect()
}

fn metrics(lab: &Lab) -> BTreeMap<Key, f64> {
    let run = lab.run(&["status", "--format", "prometheus"]);
    assert_eq!(run.code, 0, "{run:?}");
    parse(&run.stdout)
}

#[test]
fn metrics_and_the_plugin_line_follow_replicas_checks_and_drills() {
    let lab = Lab::up(136);
    // The lab's planning copy has no points yet: every copy gets one.
    let run = lab.run(&["replicate"]);
    assert_eq!(run.code, 0, "{run:?}");
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&lab.run(&["status", "--json"]).stdout).unwrap();
    assert!(rows.len() >= 2, "{rows:?}");

    // No check saved and no drill yet.
    let m = metrics(&lab);
    let (lags, rows): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r["kind"] == "service");
    // The services their application replicates: judged by the lag their probe reads.
    assert_eq!(lags.len(), 2, "{lags:?}");
    for row in &lags {
        let service = row["item"]
            .as_str()
            .unwrap()
            .strip_prefix("service ")
            .unwrap();
        let k = |name: &str| key(name, &[("service", service)]);
        assert_eq!(m[&k("reprise_replication_lag_known")], 1.0, "{service}");
        assert!(m[&k("reprise_replication_lag_seconds")] >= 0.0, "{service}");
        assert_eq!(
            Some(m[&k("reprise_replication_lag_rpo_target_seconds")]),
            row["rpo_s"].as_f64(),
            "{service}"
        );
        assert_eq!(
            m[&k("reprise_replication_lag_rpo_breach")],
            0.0,
            "{service}"
        );
        assert!(m[&k("reprise_replication_lag_timestamp_seconds")] > 0.0);
    }
    for row in &rows {
        let item = row["item"].as_str().unwrap();
        let kind = row["kind"].as_str().unwrap();
        let k = |name: &str| key(name, &[("item", item), ("kind", kind)]);
        assert_eq!(m[&k("reprise_replica_readable")], 1.0, "{item}");
        assert_eq!(m[&k("reprise_replica_verified")], 1.0, "{item}");
        // The point `status --json` names, its age as of when the metrics were gathered.
        let taken = chrono::DateTime::parse_from_rfc3339(row["taken_at"].as_str().unwrap())
            .unwrap()
            .timestamp_millis() as f64
            / 1000.0;
        assert_eq!(
            m[&k("reprise_replica_newest_good_point_timestamp_seconds")],
            taken,
            "{item}"
        );
        let gathered = m[&key("reprise_status_timestamp_seconds", &[])];
        let age = m[&k("reprise_replica_newest_good_point_age_seconds")];
        assert!((gathered - taken - age).abs() <= 1.0, "{item}: {age}");
        if let Some(rpo) = row["rpo_s"].as_f64() {
            assert_eq!(m[&k("reprise_replica_rpo_target_seconds")], rpo, "{item}");
            assert_eq!(m[&k("reprise_replica_rpo_breach")], 0.0, "{item}");
        }
        assert!(
            m[&k("reprise_replica_last_transfer_bytes")] >= 0.0,
            "{item}"
        );
        assert!(
            m[&k("reprise_replica_last_transfer_timestamp_seconds")]
                >= m[&k("reprise_replica_newest_good_point_timestamp_seconds")],
            "{item}"
        );
    }
    assert_eq!(m[&key("reprise_readiness_checked", &[])], 0.0);
    assert!(!m.contains_key(&key("reprise_readiness_ready", &[])));
    let drilled = by(&m, "reprise_service_drilled", "service");
    assert!(drilled.contains_key("erp-db"), "{drilled:?}");
    assert!(drilled.values().all(|v| *v == 0.0), "{drilled:?}");

    let run = lab.run(&["status", "--format", "nagios"]);
    assert_eq!(run.code, 1, "WARNING: {run:?}");
    let line = run.stdout.trim_end();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(line.starts_with("REPRISE WARNING - "), "{line}");
    assert!(line.contains("no `reprise check` result saved"), "{line}");
    assert!(line.contains("never drilled: "), "{line}");
    assert!(line.contains("'erp-db age'="), "performance data: {line}");
    assert!(line.contains("'lms-db lag'="), "performance data: {line}");

    // A check, then a drill of the whole example: every service drilled, all well.
    let run = lab.run(&["check"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = lab.run(&["drill", "--no-prompt"]);
    assert_eq!(run.code, 0, "{run:?}");
    let m = metrics(&lab);
    assert_eq!(m[&key("reprise_readiness_ready", &[])], 1.0);
    assert_eq!(
        m[&key("reprise_readiness_items", &[("status", "failed")])],
        0.0
    );
    let drilled = by(&m, "reprise_service_drilled", "service");
    assert!(drilled.values().all(|v| *v == 1.0), "{drilled:?}");
    let success = by(&m, "reprise_service_last_drill_success", "service");
    assert_eq!(
        success.keys().collect::<Vec<_>>(),
        drilled.keys().collect::<Vec<_>>()
    );
    assert!(success.values().all(|v| *v == 1.0), "{success:?}");
    let tried = by(
        &m,
        "reprise_service_last_drill_timestamp_seconds",
        "service",
    );
    let ok_at = by(
        &m,
        "reprise_service_last_successful_drill_timestamp_seconds",
        "service",
    );
    assert_eq!(tried, ok_at, "the last drill is the last successful one");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(tried.values().all(|t| now - t < 3600.0), "{tried:?}");

    let run = lab.run(&["status", "--format", "nagios"]);
    assert_eq!(run.code, 0, "OK: {run:?}");
    assert!(
        run.stdout.starts_with("REPRISE OK - ")
            && run
                .stdout
                .contains("and 2 replication lags within RPO, ready, every service drilled"),
        "{}",
        run.stdout
    );

    // The ERP data copy's points file and its previous generation are cut short: the copy is
    // unverified, a failover would not start from it: CRITICAL, and the metrics say which item.
    let meta = lab
        .host_root("hv-pra")
        .join("srv/replicas/images/erp-db-data.qcow2.reprise");
    for name in ["points.json", "points.json.prev"] {
        let path = meta.join(name);
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    }
    let m = metrics(&lab);
    assert_eq!(m[&vm("reprise_replica_readable", "erp-db")], 1.0);
    assert_eq!(m[&vm("reprise_replica_verified", "erp-db")], 0.0);
    assert_eq!(m[&vm("reprise_replica_rpo_breach", "erp-db")], 1.0);
    assert!(!m.contains_key(&vm(
        "reprise_replica_newest_good_point_age_seconds",
        "erp-db"
    )));
    assert_eq!(m[&vm("reprise_replica_verified", "lms")], 1.0);
    let run = lab.run(&["status", "--format", "nagios"]);
    assert_eq!(run.code, 2, "CRITICAL: {run:?}");
    assert!(
        run.stdout
            .starts_with("REPRISE CRITICAL - erp-db: no verified point"),
        "{}",
        run.stdout
    );

    // The recovery host stops answering: its copies cannot be read. The textfile is written
    // whole, atomically, and nothing goes to the standard output.
    let pid = std::fs::read_to_string(lab.lab().join("hosts/hv-pra/run/sshd.pid")).unwrap();
    let killed = Command::new("kill").arg(pid.trim()).status().unwrap();
    assert!(killed.success());
    let file = lab.state().join("reprise.prom");
    let run = lab.run(&[
        "status",
        "--format",
        "prometheus",
        "--connect-timeout",
        "2",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "");
    let m = parse(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(m[&vm("reprise_replica_readable", "erp-db")], 0.0);
    assert!(!m.contains_key(&vm("reprise_replica_verified", "erp-db")));
    let leftovers: Vec<_> = std::fs::read_dir(lab.state())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let run = lab.run(&["status", "--format", "nagios", "--connect-timeout", "2"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stdout.contains("copies unreadable"), "{}", run.stdout);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    // The table and the JSON list every item all the same, those unread as such (an item
    // left out would look like one not replicated at all), and exit 8.
    let run = lab.run(&["status", "--json", "--connect-timeout", "2"]);
    assert_eq!(run.code, 8, "{run:?}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    let item = |id: &str| list.iter().find(|i| i["item"] == id).cloned();
    let erp = item("erp-db").unwrap_or_else(|| panic!("{list:#?}"));
    assert_eq!(erp["breach"], true, "{erp}");
    assert!(
        erp["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot be read")),
        "{erp}"
    );
    assert!(item("erp-dumps").is_some(), "{list:#?}");
    let run = lab.run(&["status", "--connect-timeout", "2"]);
    assert_eq!(run.code, 8, "{run:?}");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("erp-db") && l.contains("UNREADABLE")),
        "{}",
        run.stdout
    );
}
