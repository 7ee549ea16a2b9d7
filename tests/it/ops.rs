//! Operations around recovery: the schedule (systemd units checked by `systemd-analyze verify`,
//! the cron file), shell completions loaded in a real bash, and the man page.

use std::path::Path;
use std::process::Command;

use crate::common::{reprise, root};

fn tool(name: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`{name}` is missing: run scripts/test.sh, which installs it"
    );
}

#[test]
fn schedule_units_pass_systemd_verification_and_follow_each_rpo() {
    tool("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let run = reprise(
        &root(),
        &[
            "schedule",
            "--install",
            "--dir",
            units.to_str().unwrap(),
            "--here",
            "hv-pra",
            "--metrics",
            dir.path().join("reprise.prom").to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("systemctl daemon-reload && systemctl enable --now reprise-check.timer"),
        "{}",
        run.stdout
    );
    let mut files: Vec<String> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args(&files)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(units.join(name)).unwrap();
    // The nightly check.
    assert!(read("reprise-check.timer").contains("OnCalendar=*-*-* 02:00:00"));
    let check = read("reprise-check.service");
    assert!(check.contains(" check\n"), "{check}");
    assert!(
        check.contains(&format!(
            "--inventory {}",
            root().join("inventory").display()
        )),
        "{check}"
    );
    // erp-db's RPO is 15 minutes: it replicates every 5, on the recovery host.
    let fast = read("reprise-replicate-5min.service");
    assert!(fast.contains("replicate --service erp-db"), "{fast}");
    assert!(fast.contains("--here hv-pra"), "{fast}");
    assert!(read("reprise-replicate-5min.timer").contains("OnCalendar=*-*-* *:00/5:00"));
    // The metrics, every 5 minutes, written whole for the textfile collector.
    let metrics = read("reprise-metrics.service");
    assert!(
        metrics.contains(&format!(
            "status --format prometheus --output {} --here hv-pra",
            dir.path()
                .canonicalize()
                .unwrap()
                .join("reprise.prom")
                .display()
        )),
        "{metrics}"
    );
    assert!(read("reprise-metrics.timer").contains("OnCalendar=*-*-* *:00/5:00"));
    // Every vm and backup set is in exactly one job.
    let all: String = files
        .iter()
        .filter(|f| f.ends_with(".service"))
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for item in ["erp-db", "dc2", "erp-dumps", "citrix"] {
        let n = all.matches(&format!("--service {item} ")).count()
            + all.matches(&format!("--service {item}\n")).count();
        assert_eq!(n, 1, "{item} in {all}");
    }
}

#[test]
fn kept_connected_replications_are_services_that_run_on_their_own() {
    tool("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    let units = dir.path().join("units");
    std::fs::create_dir(&units).unwrap();
    // Timers of an earlier install, without --keep-connected.
    let earlier = reprise(
        &root(),
        &["schedule", "--install", "--dir", units.to_str().unwrap()],
    );
    assert_eq!(earlier.code, 0, "{earlier:?}");
    let run = reprise(
        &root(),
        &[
            "schedule",
            "--keep-connected",
            "--install",
            "--dir",
            units.to_str().unwrap(),
            "--here",
            "hv-pra",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    // Every replication is a service: no timer of one is written.
    assert!(
        !run.stdout
            .lines()
            .any(|l| l.starts_with("wrote ") && l.contains("replicate") && l.ends_with(".timer")),
        "{}",
        run.stdout
    );
    // The earlier timer would start the new service of its name: it goes first; the
    // service, running or not, runs its new command line.
    let timer = units.join("reprise-replicate-5min.timer");
    assert!(timer.exists());
    assert!(
        run.stdout.starts_with("wrote ")
            && run.stdout.contains("\nnow run: systemctl disable --now ")
            && run.stdout.contains(&format!(
                "systemctl disable --now reprise-replicate-5min.timer && rm -f -- {} && ",
                timer.display()
            ))
            && run
                .stdout
                .contains("&& systemctl enable reprise-replicate-5min.service reprise-replicate-")
            && run
                .stdout
                .contains("&& systemctl restart reprise-replicate-5min.service "),
        "{}",
        run.stdout
    );
    for f in std::fs::read_dir(&units).unwrap() {
        let f = f.unwrap().path();
        if f.display().to_string().contains("replicate") && f.extension().unwrap() == "timer" {
            std::fs::remove_file(f).unwrap();
        }
    }
    let mut files: Vec<String> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .args(&files)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let read = |name: &str| std::fs::read_to_string(units.join(name)).unwrap();
    // erp-db's RPO is 15 minutes: a service replicating it every 5, kept running.
    let fast = read("reprise-replicate-5min.service");
    assert!(
        fast.contains("replicate --every 5min --service erp-db"),
        "{fast}"
    );
    // Started again whatever ended it, unless stopped; after the clock is set; a round now
    // on `systemctl reload`, told to reprise alone.
    assert!(fast.contains("\nRestart=always\n"), "{fast}");
    assert!(
        fast.contains("After=network-online.target time-sync.target\n"),
        "{fast}"
    );
    assert!(
        fast.contains("\nExecReload=/bin/kill -USR1 $MAINPID\n"),
        "{fast}"
    );
    assert!(fast.contains("SuccessExitStatus=130"), "{fast}");
    assert!(fast.contains("WantedBy=multi-user.target"), "{fast}");
    // The nightly check keeps its timer; what to enable says both kinds.
    assert!(read("reprise-check.timer").contains("OnCalendar=*-*-* 02:00:00"));
    assert!(
        run.stdout.contains("reprise-check.timer")
            && run.stdout.contains("reprise-replicate-5min.service"),
        "{}",
        run.stdout
    );
    // Cron cannot keep a connection.
    let cron = reprise(&root(), &["schedule", "--keep-connected", "--cron"]);
    assert_eq!(cron.code, 2, "{cron:?}");
    // Back to timers: the long-running service, enabled, is disabled first.
    let back = reprise(
        &root(),
        &["schedule", "--install", "--dir", units.to_str().unwrap()],
    );
    assert_eq!(back.code, 0, "{back:?}");
    assert!(
        back.stdout
            .contains("systemctl disable --now reprise-replicate-5min.service && ")
            && back.stdout.contains("\nnow run: systemctl disable --now "),
        "{}",
        back.stdout
    );
    // A unit of a cadence no job has any more is taken away.
    let orphan = units.join("reprise-replicate-7min.service");
    std::fs::write(
        &orphan,
        "# Written by `reprise schedule --keep-connected`.\n[Unit]\n",
    )
    .unwrap();
    let again = reprise(
        &root(),
        &["schedule", "--install", "--dir", units.to_str().unwrap()],
    );
    assert!(
        again.stdout.contains(&format!(
            "systemctl disable --now reprise-replicate-7min.service && rm -f -- {} && ",
            orphan.display()
        )),
        "{}",
        again.stdout
    );
    assert!(
        !again
            .stdout
            .contains("systemctl disable --now reprise-replicate-5min.service"),
        "{}",
        again.stdout
    );
    assert!(!read("reprise-replicate-5min.service").contains("--every"));
}

#[test]
fn the_cron_alternative_runs_each_job_once_at_a_time() {
    let run = reprise(&root(), &["schedule", "--cron"]);
    assert_eq!(run.code, 0, "{run:?}");
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains("reprise-replicate-5min"))
        .unwrap_or_else(|| panic!("{}", run.stdout));
    assert!(line.starts_with("*/5 * * * * root cd "), "{line}");
    assert!(
        line.contains("flock -n /run/lock/reprise-replicate-5min.lock"),
        "{line}"
    );
    assert!(line.contains("replicate --service erp-db"), "{line}");
    assert!(
        run.stdout.contains("\n0 2 * * * root cd "),
        "{}",
        run.stdout
    );
    // A bad time of day is a usage error.
    let bad = reprise(&root(), &["schedule", "--check-at", "25:00"]);
    assert_eq!(bad.code, 2, "{bad:?}");
}

fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; \
         _reprise reprise '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        words.len() - 1,
        line.len(),
        words[words.len() - 1],
        words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["-c", &program])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn completions_load_in_bash_and_complete_commands_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let run = reprise(dir.path(), &["completions", "bash"]);
    assert_eq!(run.code, 0, "{run:?}");
    let script = dir.path().join("reprise.bash");
    std::fs::write(&script, &run.stdout).unwrap();
    assert_eq!(bash_complete(&script, &["reprise", "sch"]), ["schedule"]);
    let modes = bash_complete(&script, &["reprise", "plan", ""]);
    for mode in ["drill", "failover", "restore", "failback"] {
        assert!(modes.iter().any(|m| m == mode), "{modes:?}");
    }
    for shell in ["zsh", "fish"] {
        let run = reprise(dir.path(), &["completions", shell]);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(
            run.stdout.contains("failover") && run.stdout.contains("replicate"),
            "{shell}: {}",
            run.stdout
        );
    }
}

#[test]
fn the_man_page_documents_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let run = reprise(dir.path(), &["manpage"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout.starts_with(".ie"),
        "{}",
        &run.stdout[..200.min(run.stdout.len())]
    );
    assert!(run.stdout.contains(".TH reprise 1"), "{}", run.stdout);
    for command in ["drill", "failover", "replicate", "schedule", "report"] {
        assert!(run.stdout.contains(command), "{command}");
    }
}
