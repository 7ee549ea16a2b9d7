//! Running reprise on a schedule: a nightly `reprise check`, and `reprise replicate` of every
//! vm and backup set as often as its RPO target needs, as systemd timer and service units or as
//! a cron file.
//!
//! It is pure: the model and the paths go in, unit and cron texts come out. Writing them (and
//! asking systemd to load them) is the command line's job.

use std::collections::BTreeMap;

use crate::check::replica_targets;
use crate::model::Model;

/// How often a replication runs: these divide an hour or a day, so that cron can say them too.
const CADENCES_MIN: &[u64] = &[5, 10, 15, 20, 30, 60, 120, 180, 240, 360, 480, 720, 1440];

/// The paths and options the scheduled commands run with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The reprise binary, absolute.
    pub binary: String,
    /// The folder the commands run in (absolute).
    pub workdir: String,
    /// Global options to pass on (`--inventory DIR`, `--overlay FILE`, `--state-dir DIR`…),
    /// with absolute paths.
    pub global_args: Vec<String>,
    /// `--here HOST` for the replications (the orchestrator runs on that host).
    pub here: Option<String>,
    /// The user the units and cron lines run as.
    pub user: String,
    /// The time of the nightly check, `HH:MM`.
    pub check_at: String,
    /// Where `reprise status --format prometheus` writes its metrics every 5 minutes (a file
    /// in node-exporter's textfile folder), absolute; `None`: no metrics job.
    pub metrics: Option<String>,
    /// The replications run as long-running services (`replicate --every`), which keep
    /// their SSH connections between rounds, instead of from timers.
    pub keep_connected: bool,
}

/// One scheduled command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The unit name without its suffix: `reprise-check`, `reprise-replicate-15min`.
    pub name: String,
    pub description: String,
    /// Minutes between runs, or `None` for once a day at `Options::check_at`.
    pub every_min: Option<u64>,
    /// The arguments after the binary.
    pub args: Vec<String>,
    /// Longest a run may take before it is stopped (SIGTERM: it stops cleanly).
    pub timeout_min: u64,
    /// A service that runs on its own (`replicate --every`), not a timer's one shot.
    pub long_running: bool,
}

/// The jobs for a model: the nightly check, then one replication job per cadence.
pub fn jobs(model: &Model, opts: &Options) -> Vec<Job> {
    let mut jobs = vec![Job {
        name: "reprise-check".to_string(),
        description: "reprise: would a recovery work now? (nightly readiness check)".to_string(),
        every_min: None,
        args: with_globals(opts, &["check"]),
        timeout_min: 60,
        long_running: false,
    }];
    // Per cadence, the vms and backup sets whose RPO it holds.
    let mut by_cadence: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut unscheduled = Vec::new();
    for target in replica_targets(model) {
        // `vm erp-db (erp-db-data.qcow2)` or `backup erp-dumps`: the vm or set is the
        // second word.
        let id = target
            .what
            .split_whitespace()
            .nth(1)
            .unwrap_or(&target.what)
            .to_string();
        match target.rpo_s {
            Some(rpo) => {
                let items = by_cadence.entry(cadence_for(rpo)).or_default();
                if !items.contains(&id) {
                    items.push(id);
                }
            }
            None => unscheduled.push(id),
        }
    }
    // Copies no RPO covers are still kept fresh: once a day.
    if !unscheduled.is_empty() {
        let items = by_cadence.entry(1440).or_default();
        for id in unscheduled {
            if !items.contains(&id) {
                items.push(id);
            }
        }
    }
    for (every, items) in by_cadence {
        let cadence = label(every);
        let mut args: Vec<&str> = vec!["replicate"];
        if opts.keep_connected {
            args.push("--every");
            args.push(&cadence);
        }
        for id in &items {
            args.push("--service");
            args.push(id);
        }
        if let Some(here) = &opts.here {
            args.push("--here");
            args.push(here);
        }
        jobs.push(Job {
            name: format!("reprise-replicate-{}", label(every)),
            description: format!(
                "reprise: replicate {} every {} (RPO)",
                items.join(", "),
                label(every)
            ),
            every_min: Some(every),
            args: with_globals(opts, &args),
            // A replication stuck past two periods is stopped so the next one can run.
            timeout_min: (every * 2).clamp(60, 1440),
            long_running: opts.keep_connected,
        });
    }
    if let Some(file) = &opts.metrics {
        let mut args = vec![
            "status",
            "--format",
            "prometheus",
            "--output",
            file.as_str(),
        ];
        if let Some(here) = &opts.here {
            args.push("--here");
            args.push(here);
        }
        jobs.push(Job {
            name: "reprise-metrics".to_string(),
            description: format!("reprise: replica, drill and readiness metrics to {file}"),
            every_min: Some(5),
            args: with_globals(opts, &args),
            timeout_min: 5,
            long_running: false,
        });
    }
    jobs
}

fn with_globals(opts: &Options, args: &[&str]) -> Vec<String> {
    opts.global_args
        .iter()
        .cloned()
        .chain(args.iter().map(|a| a.to_string()))
        .collect()
}

/// The cadence that holds an RPO: half the target (a failed run is retried once in time),
/// rounded down to a cadence cron can say, and never under 5 minutes.
pub fn cadence_for(rpo_s: u64) -> u64 {
    let half_min = rpo_s / 120;
    CADENCES_MIN
        .iter()
        .copied()
        .rev()
        .find(|&c| c <= half_min)
        .unwrap_or(CADENCES_MIN[0])
}

fn label(minutes: u64) -> String {
    if minutes.is_multiple_of(60) {
        format!("{}h", minutes / 60)
    } else {
        format!("{minutes}min")
    }
}

/// A command line for a unit or a cron line: each word quoted when it needs it.
fn command_line(opts: &Options, args: &[String]) -> String {
    std::iter::once(&opts.binary)
        .chain(args.iter())
        .map(|w| crate::template::shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A command line as systemd reads `ExecStart=`: `%` and `$` would be expanded there.
fn systemd_line(opts: &Options, args: &[String]) -> String {
    command_line(opts, args)
        .replace('%', "%%")
        .replace('$', "$$")
}

/// systemd's calendar expression for a job.
fn on_calendar(job: &Job, opts: &Options) -> String {
    match job.every_min {
        None => format!("*-*-* {}:00", opts.check_at),
        Some(m) if m < 60 => format!("*-*-* *:00/{m}:00"),
        Some(1440) => "*-*-* 00:00:00".to_string(),
        Some(m) => format!("*-*-* 00/{}:00:00", m / 60),
    }
}

/// The systemd units: for each job a `.service` (one shot) and a `.timer`, as (file name, text).
pub fn systemd_units(jobs: &[Job], opts: &Options) -> Vec<(String, String)> {
    let mut units = Vec::new();
    for job in jobs {
        if job.long_running {
            units.push((format!("{}.service", job.name), long_running(job, opts)));
            continue;
        }
        let service = format!(
            "{}TimeoutStartSec={}min\n\
             # SIGTERM stops reprise cleanly (snapshots merged back, journal closed).\n\
             KillMode=mixed\n\
             {GENTLE}",
            service_head(job, opts, "reprise schedule", "oneshot"),
            job.timeout_min,
        );
        let timer = format!(
            "# Written by `reprise schedule`.\n\
             [Unit]\n\
             Description={} (timer)\n\
             \n\
             [Timer]\n\
             OnCalendar={}\n\
             # A run missed while the machine was off happens at the next boot.\n\
             Persistent=true\n\
             AccuracySec=1min\n\
             \n\
             [Install]\n\
             WantedBy=timers.target\n",
            job.description,
            on_calendar(job, opts),
        );
        units.push((format!("{}.service", job.name), service));
        units.push((format!("{}.timer", job.name), timer));
    }
    units
}

/// What every reprise service does to leave production the machine first.
const GENTLE: &str = "Nice=10\nIOSchedulingClass=best-effort\nIOSchedulingPriority=7\n";

/// A service unit up to its `ExecStart=`, of systemd type `kind`, written by `by`.
fn service_head(job: &Job, opts: &Options, by: &str, kind: &str) -> String {
    format!(
        "# Written by `{by}`.\n\
         [Unit]\n\
         Description={}\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type={kind}\n\
         User={}\n\
         WorkingDirectory={}\n\
         ExecStart={}\n",
        job.description,
        opts.user,
        opts.workdir,
        systemd_line(opts, &job.args),
    )
}

/// The unit of a job that runs on its own: started at boot once the clock is set (its point
/// ids are to the second), started again 30 s after it ends unless stopped (a stray signal, a
/// round past its limit, an upgrade of the binary); `systemctl reload` asks it for a round now
/// (SIGUSR1 to it alone: its ssh connections and helpers are not told); SIGTERM stops it
/// cleanly (a round under way merges its snapshots back: exit 130).
fn long_running(job: &Job, opts: &Options) -> String {
    let head = service_head(job, opts, "reprise schedule --keep-connected", "exec").replace(
        "After=network-online.target\nWants=network-online.target\n",
        "After=network-online.target time-sync.target\nWants=network-online.target\n",
    );
    format!(
        "{head}# `systemctl reload` asks for a round now.\n\
         ExecReload=/bin/kill -USR1 $MAINPID\n\
         Restart=always\n\
         RestartSec=30s\n\
         # A wrong command line (exit 2) is not tried again.\n\
         RestartPreventExitStatus=2\n\
         # SIGTERM stops reprise cleanly (a round under way merges its snapshots back).\n\
         KillMode=mixed\n\
         TimeoutStopSec=5min\n\
         SuccessExitStatus=130\n\
         {GENTLE}\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

/// The cron alternative: one `/etc/cron.d` file; `flock -n` keeps a run from starting while
/// the previous one of the same job still runs.
pub fn cron_file(jobs: &[Job], opts: &Options) -> String {
    let mut out = String::from(
        "# Written by `reprise schedule --cron`: install as /etc/cron.d/reprise.\n\
         SHELL=/bin/sh\n\
         PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
    );
    for job in jobs {
        let when = match job.every_min {
            None => {
                let (h, m) = opts.check_at.split_once(':').unwrap_or(("2", "00"));
                format!(
                    "{} {} * * *",
                    m.trim_start_matches('0').parse::<u32>().unwrap_or(0),
                    h.trim_start_matches('0').parse::<u32>().unwrap_or(0)
                )
            }
            Some(m) if m < 60 => format!("*/{m} * * * *"),
            Some(1440) => "0 0 * * *".to_string(),
            Some(m) => format!("0 */{} * * *", m / 60),
        };
        out.push_str(&format!(
            "\n# {}\n{when} {} cd {} && timeout -s TERM {}m flock -n /run/lock/{}.lock {}\n",
            job.description,
            opts.user,
            crate::template::shell_quote(&opts.workdir),
            job.timeout_min,
            job.name,
            // cron reads `%` as a new line.
            command_line(opts, &job.args).replace('%', "\\%"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cadence_holds_the_rpo_with_one_retry_and_cron_can_say_it() {
        let check = |rpo_min: u64, every: u64| assert_eq!(cadence_for(rpo_min * 60), every);
        check(15, 5);
        check(30, 15);
        check(60, 30);
        check(240, 120);
        check(24 * 60, 720);
        check(7 * 24 * 60, 1440);
        // Below 10 minutes nothing is fast enough; the fastest cadence is used.
        check(4, 5);
        for c in CADENCES_MIN {
            assert!(
                *c < 60 && 60 % c == 0 || c % 60 == 0 && 1440 % c == 0,
                "{c}"
            );
        }
    }
}
