//! The command line: parses arguments, runs the library, prints, and maps every outcome to a
//! documented exit code ([`crate::exit`]). The only module that writes to the terminal.

use std::io::Write as _;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

use std::io::IsTerminal;

use crate::diagnostic::Report;
use crate::event::{Event, RunStatus};
use crate::exit;
use crate::journal::JournalError;
use crate::model::Model;
use crate::plan::{self, PlanOptions};
use crate::run::{ExecOptions, RunError, StartOptions};
use crate::runbook::Mode;
use crate::runner::RunOptions;
use crate::sources::{Sources, SourcesError};
use crate::view::TerminalView;

mod copied;
mod freeze;
mod ops;
mod replicate;
mod status;

const EXAMPLES: &str = "\
Examples:
  reprise validate                          check ./inventory and ./runbooks
  reprise plan drill                        what a drill would do, step by step
  reprise plan failover --emergency --json  the emergency failover plan, for tools
  reprise plan restore --service erp-app    restore the ERP and what it needs
  reprise impact storage-main               what goes down when the main storage fails
  reprise graph --format dot | dot -Tsvg > services.svg
  reprise lab up && reprise --overlay lab/overlay.toml drill --no-prompt
  reprise check                             would a recovery work now?
  reprise confirm latest power-paris/power-back --by \"Karim Benali\"

Exit codes: 0 ok, 1 run failed or partial, 2 usage, 3 invalid inventory or runbooks,
4 cannot read or write files, 5 another run holds the lock, 6 split brain (a failback refused:
service on both sites, or running on the primary; a restore refused: the vm running, or its
newest data possibly left, on its recovery host; or a health check found its vm on both sites), 7 not ready (reprise check), 8 RPO target missed (reprise status), 130 interrupted (resume it).";

/// reprise: disaster recovery for small IT teams. Drills, failovers, restores and failbacks
/// driven by a dependency graph of services.
#[derive(Debug, Parser)]
#[command(name = "reprise", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Folder of inventory files (*.toml, merged).
    #[arg(long, global = true, default_value = "inventory", value_name = "DIR")]
    pub inventory: PathBuf,
    /// Folder of runbook files (*.toml, merged).
    #[arg(long, global = true, default_value = "runbooks", value_name = "DIR")]
    pub runbooks: PathBuf,
    /// Overlay file with per-environment values (addresses, ports, directories, drivers) over the
    /// inventory, e.g. the lab's (repeatable).
    #[arg(long = "overlay", global = true, value_name = "FILE")]
    pub overlays: Vec<PathBuf>,
    /// Logs on stderr: `text`, or `json` for machines (level from REPRISE_LOG, e.g. `debug`;
    /// default `warn` for text, `info` for json).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Folder of run journals (`runs/<run-id>/journal.jsonl`) and the run lock.
    #[arg(long, global = true, default_value = ".", value_name = "DIR")]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every command that runs steps.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// Steps running at once, in all.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub parallel: usize,
    /// Steps running at once on one host.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub per_host: usize,
    #[command(flatten)]
    pub ssh: replicate::SshArgs,
    /// Who runs it, for the journal and the report [default: $SUDO_USER or $USER].
    #[arg(long, value_name = "NAME")]
    pub operator: Option<String>,
    /// Never ask on the terminal: manual steps wait for `reprise confirm`.
    #[arg(long)]
    pub no_prompt: bool,
    /// On failure of a planned failover or failback, do not undo completed steps.
    #[arg(long)]
    pub no_rollback: bool,
    /// Once the run is over, remove the folders of older runs but the newest N (runs a report
    /// or `reprise history` needs, and unfinished ones, are kept; see `reprise prune`).
    #[arg(long, value_name = "N", default_value_t = crate::run::KEEP_RUNS)]
    pub keep_runs: usize,
}

/// Options of drill, failover, restore and failback.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Show the plan instead of running it (the same as `reprise plan`).
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: the plan as JSON.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Limit the run to this service and what it depends on (repeatable).
    #[arg(long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
    /// With --service: do not pull in dependencies (they are assumed running).
    #[arg(long, requires = "services")]
    pub only: bool,
    /// Do not ask before a failover or failback.
    #[arg(long)]
    pub yes: bool,
    /// When the outage began (RFC 3339, or `YYYY-MM-DD HH:MM` in local time): the report
    /// measures RTO and data loss from it instead of from the start of the run (an emergency
    /// failover's vm whose primary could not be asked: its data loss only from it).
    #[arg(long, value_name = "TIME", value_parser = parse_incident_time)]
    pub incident_at: Option<DateTime<Utc>>,
    /// Start VM from its recovery copy as it is although no verified replica point proves it
    /// (never replicated, its metadata damaged, changed behind its points, a vm ran on it),
    /// or each of its disks from its own point when no good point is on every disk;
    /// journaled as unverified. Without it such a vm is not started. A copy started as it
    /// is rolls nothing back: with --point, or --point-before a time its disks are newer
    /// than, the vm is still not started, and the refusal says why. A backup set's name
    /// does the same for its copy, which a drill or a failover relies on only once proven
    /// (repeatable; `all`).
    #[arg(long = "accept-unverified", value_name = "VM")]
    pub accept_unverified: Vec<String>,
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// `VM=POINT`, or `POINT` for every vm (an empty vm).
fn parse_point(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((vm, point)) if !vm.is_empty() && !point.is_empty() => {
            Ok((vm.to_string(), point.to_string()))
        }
        None if !text.is_empty() => Ok((String::new(), text.to_string())),
        _ => Err(format!(
            "`{text}` is not POINT or VM=POINT: use e.g. --point erp-db=20261128T020000Z"
        )),
    }
}

/// A run id as `reprise runs` lists it, or `latest`; never a path.
fn parse_run_id(text: &str) -> Result<String, String> {
    if text == "latest" {
        return Ok(text.to_string());
    }
    crate::journal::check_run_id(text)
        .map(|()| text.to_string())
        .map_err(|e| e.to_string())
}

/// Someone's name: not blank.
fn parse_name(text: &str) -> Result<String, String> {
    let name = text.trim();
    if name.is_empty() {
        return Err("a confirmation needs the name of who gives it".to_string());
    }
    Ok(name.to_string())
}

fn parse_incident_time(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    let at = if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        t.with_timezone(&Utc)
    } else {
        let naive = ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"]
            .iter()
            .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())
            .ok_or_else(|| {
                format!(
                    "`{text}` is not a time: use e.g. 2026-11-28T03:12:00Z or \"2026-11-28 03:12\""
                )
            })?;
        match naive.and_local_timezone(chrono::Local) {
            chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
            // The hour the clocks go back happens twice: which one is not guessed.
            chrono::LocalResult::Ambiguous(a, b) => {
                let (first, then) = if a <= b { (a, b) } else { (b, a) };
                return Err(format!(
                    "`{text}` happens twice in the local time zone (the clocks went back then): give it with its offset, {} (the first time) or {} (the second)",
                    first.to_rfc3339(),
                    then.to_rfc3339()
                ));
            }
            chrono::LocalResult::None => {
                return Err(format!("`{text}` does not exist in the local time zone"));
            }
        }
    };
    if at > Utc::now() {
        return Err(format!("the incident time {at} is in the future"));
    }
    Ok(at)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the inventory and runbooks: syntax, references, cycles, site rules, templates,
    /// addresses, durations, paths on hosts, disks shared by two vms, and that every mode plans.
    #[command(
        after_help = "Example:\n  reprise validate --inventory site/inventory --runbooks site/runbooks"
    )]
    Validate,
    /// Show the service dependency graph.
    #[command(
        after_help = "Examples:\n  reprise graph\n  reprise graph --format mermaid > services.mmd"
    )]
    Graph {
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// What goes down if SERVICE fails, transitively, most urgent first.
    #[command(after_help = "Example:\n  reprise impact directory")]
    Impact {
        service: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show exactly what a drill, failover, restore or failback would do (a dry run).
    #[command(
        after_help = "Examples:\n  reprise plan drill\n  reprise plan failover --emergency\n  reprise plan restore --service erp-app --only --json"
    )]
    Plan {
        #[arg(value_enum)]
        mode: ModeArg,
        /// Failover with the primary site declared lost: steps that need it are left out.
        #[arg(long)]
        emergency: bool,
        /// Limit the plan to this service and what it depends on (repeatable).
        #[arg(long = "service", value_name = "SERVICE")]
        services: Vec<String>,
        /// With --service: do not pull in dependencies (they are assumed running).
        #[arg(long, requires = "services")]
        only: bool,
        /// Machine-readable output (a stable JSON contract, see README).
        #[arg(long)]
        json: bool,
        /// The run id used in commands ({{ run.id }}).
        #[arg(long, default_value = "dry-run", value_name = "ID")]
        run_id: String,
        /// The ssh client configuration whose HostName, Port and User the plan shows for
        /// hosts the inventory does not name them for, or `none` [default: ~/.ssh/config,
        /// when it exists]. No host is reached.
        #[arg(long, env = "REPRISE_SSH_CONFIG", value_name = "FILE")]
        ssh_config: Option<PathBuf>,
    },
    /// A lab of the inventory on this machine: real sshd per host on 127.0.0.x, real images.
    #[command(
        after_help = "Example:\n  reprise lab up && reprise --overlay lab/overlay.toml drill --yes --no-prompt && reprise lab down"
    )]
    Lab {
        #[command(subcommand)]
        action: LabAction,
        /// The lab's folder.
        #[arg(long, default_value = "lab", value_name = "DIR", global = true)]
        lab_dir: PathBuf,
    },
    /// Rehearse a failover on the recovery site without touching production; cleanup always runs.
    #[command(
        after_help = "Examples:\n  reprise drill --dry-run\n  reprise drill --service erp-app --no-prompt"
    )]
    Drill(RunArgs),
    /// Fail over to the recovery site (planned, or --emergency when the primary site is lost).
    #[command(
        after_help = "Examples:\n  reprise failover --dry-run\n  reprise failover --emergency --yes\n  reprise failover --emergency --point-before \"2026-11-28 01:00\" --service erp-app --as-replicated directory --yes\n  reprise failover --point erp-db=20261128T020000Z --yes"
    )]
    Failover {
        /// The primary site is lost: steps that need it are left out, and the run keeps going
        /// on every branch that does not depend on a failure.
        #[arg(long)]
        emergency: bool,
        /// Start VM from this replica point (see `reprise points VM`), or every vm from POINT;
        /// the copies are rolled back to it first (repeatable). Default: the newest point that
        /// did not fail verification. A backup set's name (SET=POINT): the point its copy must
        /// be for the run to rely on it (a run never rolls a backup set's copy back).
        #[arg(long = "point", value_name = "[VM=]POINT", value_parser = parse_point)]
        points: Vec<(String, String)>,
        /// Start a planned failover although `reprise check` finds problems on the recovery
        /// side that would stop it half-way (it refuses otherwise, exit 7); journaled, and
        /// shown by the report. A replication lag unknown or over its RPO still stops it
        /// before the switch (only --emergency accepts that loss). Also passes a start whose
        /// host cannot say whether the vm already runs there (journaled; no data loss is
        /// claimed for that vm), or whose primary cannot say whether it still runs it.
        #[arg(long)]
        force: bool,
        /// Start every VM not named by --point from its newest good point taken before TIME
        /// (e.g. the last state before a ransomware attack); a VM named by --point (here or at
        /// a resume) starts only if its point holds nothing written after TIME, else its start
        /// is refused, saying so; a backup set's copy whose newest point is later is not relied
        /// on (a run never rolls it back).
        #[arg(long, value_name = "TIME", value_parser = parse_incident_time)]
        point_before: Option<DateTime<Utc>>,
        /// With --point-before or --point POINT: let SERVICE start from what its own
        /// replication holds now, which no time or point reaches (its application's standby,
        /// or a vm no replica point starts); without it such a failover is refused (exit 3),
        /// naming them. Journaled, and shown by the report (repeatable; `all`).
        #[arg(long = "as-replicated", value_name = "SERVICE")]
        as_replicated: Vec<String>,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Cold start of the primary site after a power cut, in dependency order.
    ///
    /// A vm that runs on its recovery host, or that a failover left running on its recovery
    /// copies, is refused (exit 6): its newest data is there; fail back instead. When the
    /// recovery host cannot be asked, the journals of this machine are: a vm a failover
    /// started there, and no failback or restore since, is refused too; so is a service its
    /// application replicates that a failover switched to its standby (a second primary).
    #[command(after_help = "Example:\n  reprise restore --parallel 4")]
    Restore {
        /// Start a vm although this machine's journals show a failover left it on its
        /// recovery host, which cannot be asked (that site and its data are lost): it starts
        /// from its primary disks of before, without what it wrote since; journaled, and shown
        /// by the report. A vm its recovery host shows running there or leased by a failover
        /// is still refused. Also starts a service its application replicates that these
        /// journals show a failover switched to its standby, with no failback since.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Return to the primary site after a failover (replication reversed first).
    #[command(after_help = "Example:\n  reprise failback --service erp-app")]
    Failback {
        /// Start although a vm it defines on the primary has no definition that fits there,
        /// a vm it copies back has recovery copies no failover started it on, or a disk it
        /// would overwrite on the primary was written after the failover (keep a copy of it
        /// first) or cannot tell (it refuses otherwise, exit 7); journaled, and shown by the
        /// report. A vm running on the primary is still refused (exit 6), and a vm it would
        /// start on the primary without copying back the recovery copies it ran on (exit 7); a
        /// replication lag unknown or over its RPO still stops it before the switch back.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Carry on a run that stopped (a crash, a signal, a full disk, a failure): finished steps
    /// are never repeated; a line of the journal cut short by a crash is cut off first, and said.
    #[command(after_help = "Example:\n  reprise resume latest")]
    Resume {
        /// Run id, or `latest`.
        #[arg(value_parser = parse_run_id)]
        run: String,
        /// Start VM, of the vms the run has still to start, from this replica point (or every
        /// one from POINT, those named before included), as `failover --point` does: added to
        /// what the run was asked (repeatable); journaled with the resume. A vm the run has
        /// started from another point is refused (exit 3).
        #[arg(long = "point", value_name = "[VM=]POINT", value_parser = parse_point)]
        points: Vec<(String, String)>,
        /// Start the vms the run has still to start from their newest good point taken before
        /// TIME, as `failover --point-before` does; journaled with the resume. A vm the run has
        /// started from a point taken after TIME is refused (exit 3).
        #[arg(long, value_name = "TIME", value_parser = parse_incident_time)]
        point_before: Option<DateTime<Utc>>,
        /// Start VM as `failover --accept-unverified` does, once a start refused it (a copy
        /// nothing proves, disks sharing no good point): added to what the run was asked
        /// (repeatable; `all`); journaled with the resume.
        #[arg(long = "accept-unverified", value_name = "VM")]
        accept_unverified: Vec<String>,
        /// Let SERVICE start from what its own replication holds now, as `failover
        /// --as-replicated` does: added to what the run was asked (repeatable; `all`);
        /// journaled with the resume.
        #[arg(long = "as-replicated", value_name = "SERVICE")]
        as_replicated: Vec<String>,
        /// A failback: carry on although a copy-back not started yet would overwrite a disk on
        /// the primary written since the failover, or cannot tell (refused otherwise, exit 7,
        /// as at its start; keep a copy of the disk first). A planned failover whose start on
        /// the recovery side began: carry on from its final sync although the primary's disks
        /// were written since it read them, or cannot tell (refused otherwise, exit 6; what was
        /// written there is left behind). A failover's start whose host cannot say whether
        /// the vm already runs there, or a guard that cannot tell the state of the side left:
        /// carry on. Journaled.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Confirm a step of a run that waits for a person (a manual step, or a step handed over
    /// after a crash), from any shell; once, with a name.
    #[command(
        after_help = "Example:\n  reprise confirm latest power/generators --by \"Karim Benali\" --note \"both containers on\""
    )]
    Confirm {
        /// Run id, or `latest`.
        #[arg(value_parser = parse_run_id)]
        run: String,
        /// Step id, `service/step`.
        step: String,
        /// Who confirms (a name, not blank).
        #[arg(long, value_parser = parse_name)]
        by: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Would a recovery work now? A table of checks and a verdict; exits with 7 when not.
    ///
    /// Every host reachable with a known key, the tools the runbooks call present, clocks in
    /// sync, replica points fresh against the RPO and not marked bad, room for the next
    /// replication, every mode planning, and the estimated RTO within each target. The result
    /// is kept for the next run's report.
    #[command(
        after_help = "Examples:\n  reprise check\n  reprise --overlay lab/overlay.toml check --json\n\nExit codes: 0 ready, 7 not ready (see the FAILED lines), 3 invalid inventory or runbooks."
    )]
    Check {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Largest accepted clock difference between a host and this machine.
        #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
        clock_tolerance: f64,
        /// known_hosts file for hosts that name none [default: ~/.ssh/known_hosts].
        #[arg(long, value_name = "FILE")]
        known_hosts: Option<PathBuf>,
        /// Private key to log in with [default: the ssh-agent].
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Seconds to wait for a host to answer (1 to 3600).
        #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
        connect_timeout: u64,
        /// The ssh client configuration to read for what a host of the inventory does not
        /// name, or `none` [default: ~/.ssh/config, when it exists].
        #[arg(long, env = "REPRISE_SSH_CONFIG", value_name = "FILE")]
        ssh_config: Option<PathBuf>,
    },
    /// List past runs.
    Runs {
        #[arg(long)]
        json: bool,
    },
    /// The recovery report of a run, for management: results against RTO/RPO targets, a
    /// timeline, manual approvals, problems, recommendations and evidence. Made only from the
    /// run's journal, so it can be made again later, identically.
    #[command(
        after_help = "Examples:\n  reprise report latest\n  reprise report latest --format html --output drill.html\n  reprise report 20261128-0310-failover --lang fr --pdf --output rapport.pdf"
    )]
    Report {
        /// Run id, or `latest`.
        #[arg(default_value = "latest", value_parser = parse_run_id)]
        run: String,
        /// Output format (default: from --output's extension, else Markdown).
        #[arg(long, value_enum)]
        format: Option<crate::report::Format>,
        /// Write to FILE instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Render the HTML report to PDF with headless Chromium (`--output` names the PDF).
        #[arg(long, conflicts_with = "format")]
        pdf: bool,
        /// Labels in English or French.
        #[arg(long, value_enum, default_value_t = crate::report::Lang::En)]
        lang: crate::report::Lang,
    },
    /// Per service: the last drill that recovered it, and whether it met its RTO then.
    #[command(after_help = "Example:\n  reprise history --json")]
    History {
        #[arg(long)]
        json: bool,
    },
    /// Remove the folders of old runs: all but the newest N, except the runs still needed (one
    /// that never finished, the newest drill that succeeded, the newest drill that recovered
    /// each service, and a journal that cannot be read). Run commands do this once they end.
    #[command(after_help = "Examples:\n  reprise prune --dry-run\n  reprise prune --keep-runs 10")]
    Prune {
        /// Runs kept besides those still needed.
        #[arg(long, value_name = "N", default_value_t = crate::run::KEEP_RUNS)]
        keep_runs: usize,
        /// Say what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print one run's journal, readably.
    #[command(after_help = "Example:\n  reprise show latest")]
    Show {
        /// Run id, or `latest`.
        #[arg(value_parser = parse_run_id)]
        run: String,
    },
    /// Bring the recovery copies of VM disks and backup sets up to date, sending only what
    /// changed, and make each a verified replica point.
    ///
    /// A running VM's disks are frozen by its driver's snapshot hooks (`replicate-begin`,
    /// `replicate-end`) while they are read (a VM that cannot be frozen is not copied); its
    /// definition (its driver's `definition`: libvirt's domain XML, Proxmox's `qm config`)
    /// goes with each new point; `--dry-run` shows them. The disks of a VM stream at once
    /// (four at most), the VMs one after the other.
    #[command(
        after_help = "Examples:\n  reprise replicate\n  reprise replicate --service erp-db --verify\n  reprise replicate --scan    (every block read, also for vms with changed_blocks)\n  REPRISE_HERE=hv-pra reprise replicate --compress    (on the recovery host, over a slow link)\n  reprise replicate --every 5m --here hv-pra    (runs on, its SSH connections kept between rounds)"
    )]
    Replicate {
        /// Only the vm of this service (or this vm) (repeatable).
        #[arg(long = "service", value_name = "SERVICE")]
        services: Vec<String>,
        /// Read the recovery copies again instead of trusting their manifests (and every
        /// block of the sources, as with `--scan`).
        #[arg(long)]
        verify: bool,
        /// Read and hash every block of the sources, even of a vm with `changed_blocks`
        /// (whose dirty bitmaps prove what was written, not what is on disk), checked against
        /// its bitmap: a changed block the bitmap missed exits 1 and marks bad the points
        /// read through it.
        #[arg(long)]
        scan: bool,
        /// Show what it would do (the driver's hooks, the copies) and do nothing.
        #[arg(long)]
        dry_run: bool,
        /// Compress the changed blocks of vm disks with zstd on the source, for a slow link
        /// between the sites (costs CPU on both hosts; blocks that do not compress are sent as
        /// they are).
        #[arg(long)]
        compress: bool,
        /// Keep running: replicate again every DURATION (`5m`, `7m30s`; 10 s at least) until
        /// SIGTERM or Ctrl-C, keeping the SSH connections to the hosts between rounds (no new
        /// login per round, which over a WAN is a good part of a small replication). Each
        /// round reads the inventory again and prints what it did, when and how long it took;
        /// a failed round is said and the next one runs as planned. SIGUSR1 starts a round at
        /// once (a fresh point before a planned failover). Exits 0 when stopped between
        /// rounds, 130 when a round was cut.
        #[arg(long, value_name = "DURATION", value_parser = parse_every, conflicts_with = "dry_run")]
        every: Option<std::time::Duration>,
        #[command(flatten)]
        ssh: replicate::SshArgs,
    },
    /// List the replica points of a vm, newest first.
    #[command(after_help = "Example:\n  reprise points erp-db")]
    Points {
        vm: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ssh: replicate::SshArgs,
    },
    /// Read replica points again and check their BLAKE3; a point that fails is marked bad.
    #[command(
        after_help = "Examples:\n  reprise verify\n  reprise verify erp-db --point 20261128T020000Z"
    )]
    Verify {
        /// Only this vm [default: all].
        vm: Option<String>,
        /// Only this point [default: all].
        #[arg(long, value_name = "POINT")]
        point: Option<String>,
        #[command(flatten)]
        ssh: replicate::SshArgs,
    },
    /// Per replicated vm: the newest good point, its age against the RPO target, the last
    /// transfer; per service its application replicates: the lag its probe reads now against
    /// the RPO. Exits with 8 when a target is missed or a lag is unknown.
    ///
    /// For monitoring: `--format prometheus` prints metrics for node-exporter's textfile
    /// collector (with the last drill of each service and the last check's verdict);
    /// `--format nagios` prints one line and exits like a Nagios/Icinga plugin.
    #[command(
        after_help = "Examples:\n  reprise status --json\n  reprise status --format prometheus --output /var/lib/prometheus/node-exporter/reprise.prom\n  reprise status --format nagios --warn-at 75\n\nExit codes: 0 every target held, 8 an RPO target missed, a lag unknown, or copies\nunreadable, 3 invalid inventory. With --format nagios: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."
    )]
    Status(status::StatusArgs),
    /// Run the nightly `check` and every replication at the cadence its RPO needs, from
    /// systemd timers (printed, or written with --install) or cron (--cron).
    #[command(
        after_help = "Examples:\n  reprise schedule                       # print the units\n  reprise schedule --install --here hv-pra\n  reprise schedule --cron --install      # /etc/cron.d/reprise\n\nEach replication runs every half of its RPO target (rounded down to 5, 10, 15, 20 or\n30 minutes, or 1, 2, 3, 4, 6, 8, 12 or 24 hours), so that one failed run is caught up in time."
    )]
    Schedule(ops::ScheduleArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Install:\n  reprise completions bash > /etc/bash_completion.d/reprise\n  reprise completions zsh > /usr/local/share/zsh/site-functions/_reprise\n  reprise completions fish > /etc/fish/completions/reprise.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: ops::Shell,
    },
    /// Print the man page, reprise(1).
    #[command(after_help = "Install:\n  reprise manpage > /usr/local/share/man/man1/reprise.1")]
    Manpage,
    /// Release the recovery copies of a vm or backup set that a drill or a failover still
    /// holds (a lease no replication writes through): only once no drill copy or vm uses them.
    /// For a backup set, also forget that a failback copied it back. Without --run, also let
    /// go what was written in the copies outside reprise since their newest point (a vm
    /// started on one by hand, a file written into a set's copy): the next replication
    /// overwrites it, where it would otherwise stop; and take what is at a copy's path that
    /// reprise did not make (a copy made by hand, seeded) as a copy, as it now is: the next
    /// replication updates it in place.
    #[command(
        after_help = "Examples:\n  reprise release erp-db --run 20261128T031000Z-drill\n  reprise release erp-db"
    )]
    Release {
        /// The vm or backup set.
        item: String,
        /// Only the leases of this run [default: every lease].
        #[arg(long, value_name = "RUN")]
        run: Option<String>,
        #[command(flatten)]
        ssh: replicate::SshArgs,
    },
    /// (internal) The replication helper run on hosts.
    #[command(hide = true)]
    Helper {
        /// The helper protocol the caller speaks; another one is refused.
        #[arg(long, global = true, value_name = "VERSION")]
        protocol: Option<u32>,
        #[command(subcommand)]
        request: crate::replica::protocol::Request,
    },
}

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Start the lab: one sshd per host, images, the overlay `DIR/overlay.toml`.
    Up {
        /// Second byte of the lab's loopback addresses (127.N.0.x), to run labs side by side.
        #[arg(long, default_value_t = 0, value_name = "N")]
        net: u8,
    },
    /// Stop every process the lab started, and nothing else.
    Down,
    /// Show hosts, VMs and processes of the lab.
    Status,
    /// (internal) A lab "VM" or service process.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long)]
        pidfile: PathBuf,
        #[arg(long)]
        listen: Vec<String>,
        #[arg(long)]
        image: Vec<PathBuf>,
    },
    /// (internal) A stand-in command on a lab host.
    #[command(hide = true)]
    Stub {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn init_logs(format: LogFormat) {
    let default = if format == LogFormat::Json {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REPRISE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: a log kept in a file or read by a program stays plain.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Drill,
    Failover,
    Restore,
    Failback,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Drill => Mode::Drill,
            ModeArg::Failover => Mode::Failover,
            ModeArg::Restore => Mode::Restore,
            ModeArg::Failback => Mode::Failback,
        }
    }
}

/// What a command produced: text for stdout, text for stderr, and the exit code.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: u8,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Outcome {
            stdout,
            ..Default::default()
        }
    }

    fn err(code: u8, stderr: String) -> Self {
        Outcome {
            stderr,
            code,
            ..Default::default()
        }
    }
}

impl Command {
    /// The `--here` host of a command that reaches hosts.
    fn here(&self) -> Option<&str> {
        let ssh = match self {
            Command::Drill(a) => &a.exec.ssh,
            Command::Failover { args, .. }
            | Command::Failback { args, .. }
            | Command::Restore { args, .. } => &args.exec.ssh,
            Command::Resume { exec, .. } => &exec.ssh,
            Command::Replicate { ssh, .. }
            | Command::Points { ssh, .. }
            | Command::Verify { ssh, .. }
            | Command::Release { ssh, .. } => ssh,
            Command::Status(a) => &a.ssh,
            _ => return None,
        };
        ssh.here.as_deref()
    }
}

/// Parses the process arguments, runs, prints, and returns the exit code.
pub fn main() -> u8 {
    crate::replica::remote::process_began();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
        }
    };
    init_logs(cli.log_format);
    let outcome = run(&cli);
    print(&outcome);
    outcome.code
}

/// Writes an outcome's standard output and error.
fn print(outcome: &Outcome) {
    // What hosts and journals said is shown, never obeyed by the terminal.
    // (On a terminal only: written to a file or a pipe, what was said is kept as it is.)
    use std::io::IsTerminal as _;
    let text = |s: &str, terminal: bool| match terminal {
        true => crate::diagnostic::terminal_text(s).into_owned(),
        false => s.to_string(),
    };
    let (out, err) = (std::io::stdout(), std::io::stderr());
    let mut o = out.lock();
    let _ = o.write_all(text(&outcome.stdout, out.is_terminal()).as_bytes());
    let _ = o.flush();
    let mut e = err.lock();
    let _ = e.write_all(text(&outcome.stderr, err.is_terminal()).as_bytes());
    let _ = e.flush();
}

fn load(cli: &Cli) -> Result<(Model, String), Outcome> {
    let sources = Sources::read(&cli.inventory, &cli.runbooks).and_then(|mut s| {
        for o in &cli.overlays {
            s.add_overlay(o)?;
        }
        Ok(s)
    });
    let sources = sources.map_err(|e| {
        let hint = match &e {
            SourcesError::Folder { .. } | SourcesError::Empty { .. } => {
                "\nhint: run from the folder holding inventory/ and runbooks/, or pass --inventory DIR --runbooks DIR\n"
            }
            SourcesError::Files(_) => "\n",
        };
        Outcome::err(exit::IO, format!("error: {e}{hint}"))
    })?;
    match crate::plan::validate::load(sources) {
        Ok((model, warnings)) => {
            let warnings = if warnings.is_empty() {
                String::new()
            } else {
                model.report(warnings).render()
            };
            Ok((model, warnings))
        }
        Err(report) => Err(invalid(&report)),
    }
}

/// [`load`], and the command's `--here` host must be one of the inventory's.
fn load_here(cli: &Cli) -> Result<(Model, String), Outcome> {
    let (model, warnings) = load(cli)?;
    if let Some(here) = cli.command.here()
        && !model.inventory.hosts.contains_key(here)
    {
        let known: Vec<&str> = model.inventory.hosts.keys().map(String::as_str).collect();
        return Err(Outcome::err(
            exit::USAGE,
            format!(
                "error: --here {here}: no such host in the inventory (hosts: {})\n",
                known.join(", ")
            ),
        ));
    }
    Ok((model, warnings))
}

/// `--every`: a duration of 10 s at least.
fn parse_every(s: &str) -> Result<std::time::Duration, String> {
    let d: crate::duration::Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.secs() < 10 {
        return Err(format!("{d} is too short: 10s at least"));
    }
    Ok(std::time::Duration::from_secs(d.secs()))
}

fn invalid(report: &Report) -> Outcome {
    Outcome::err(exit::INVALID_INPUT, report.render())
}

/// Runs a parsed command line.
pub fn run(cli: &Cli) -> Outcome {
    if let Some(outcome) = run_without_model(cli) {
        return outcome;
    }
    if let Command::Replicate {
        services,
        verify,
        scan,
        compress,
        ssh,
        every: Some(every),
        ..
    } = &cli.command
    {
        let flags = replicate::Flags {
            verify: *verify,
            scan: *scan || *verify,
            compress: *compress,
        };
        return replicate::serve(|| load_here(cli), services, flags, ssh, *every);
    }
    let (model, warnings) = match load_here(cli) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let mut outcome = match run_with_model(cli, &model) {
        Ok(o) => o,
        Err(o) => return o,
    };
    outcome.stderr = warnings + &outcome.stderr;
    outcome
}

/// Commands that read only the journal or the lab; `None` for those that need the model.
fn run_without_model(cli: &Cli) -> Option<Outcome> {
    Some(match &cli.command {
        Command::Lab { action, lab_dir } => return lab_without_model(action, lab_dir),
        Command::Confirm {
            run,
            step,
            by,
            note,
        } => match crate::run::confirm(&cli.state_dir, run, step, by, note.clone()) {
            Ok(run_id) => Outcome::ok(format!("confirmed {step} of run {run_id} as {by}\n")),
            Err(e) => run_error(e),
        },
        Command::Runs { json } => runs(cli, *json),
        Command::Prune { keep_runs, dry_run } => prune(cli, *keep_runs, *dry_run),
        Command::Show { run } => show(cli, run),
        Command::Report {
            run,
            format,
            output,
            pdf,
            lang,
        } => report(cli, run, *format, output.as_deref(), *pdf, *lang),
        Command::History { json } => history(cli, *json),
        Command::Helper { request, protocol } => replicate::helper(request, *protocol),
        Command::Completions { shell } => ops::completions(*shell),
        Command::Manpage => ops::manpage(),
        _ => return None,
    })
}

/// The lab's actions but `up`, which needs the model.
fn lab_without_model(action: &LabAction, lab_dir: &std::path::Path) -> Option<Outcome> {
    Some(match action {
        LabAction::Serve {
            name,
            pidfile,
            listen,
            image,
        } => match crate::lab::standins::serve(name, listen, image, pidfile) {
            Ok(()) => Outcome::ok(String::new()),
            Err(e) => Outcome::err(exit::FAILED, format!("{e}\n")),
        },
        LabAction::Stub { name, args } => {
            let code = crate::lab::standins::stub(name, args);
            Outcome {
                code: code.clamp(0, 255) as u8,
                ..Outcome::default()
            }
        }
        LabAction::Down => match crate::lab::down(lab_dir) {
            Ok(n) => Outcome::ok(format!("lab down: stopped {n} processes\n")),
            Err(e) => Outcome::err(exit::FAILED, format!("error: {e}\n")),
        },
        LabAction::Status => match crate::lab::status(lab_dir) {
            Ok(text) => Outcome::ok(text),
            Err(e) => Outcome::err(exit::FAILED, format!("error: {e}\n")),
        },
        LabAction::Up { .. } => return None,
    })
}

/// Commands that need the model. `Err` is an outcome given before the command began, without
/// the model's warnings.
fn run_with_model(cli: &Cli, model: &Model) -> Result<Outcome, Outcome> {
    Ok(match &cli.command {
        Command::Lab { lab_dir, action } => lab_up(cli, model, lab_dir, action),
        Command::Validate => validate(model),
        Command::Graph { format } => Outcome::ok(match format {
            GraphFormat::Text => model.graph.to_text(&model.inventory),
            GraphFormat::Dot => model.graph.to_dot(&model.inventory),
            GraphFormat::Mermaid => model.graph.to_mermaid(&model.inventory),
        }),
        Command::Impact { service, json } => impact(model, service, *json)?,
        Command::Plan {
            mode,
            emergency,
            services,
            only,
            json,
            run_id,
            ssh_config,
        } => {
            let opts = PlanOptions {
                mode: (*mode).into(),
                emergency: *emergency,
                services: services.clone(),
                only: *only,
                run_id: run_id.clone(),
            };
            show_plan(cli, model, &opts, *json, ssh_config)
        }
        Command::Check {
            json,
            clock_tolerance,
            known_hosts,
            identity,
            connect_timeout,
            ssh_config,
        } => {
            // A check never trusts a new host key: an unknown key is a finding.
            let ssh = replicate::SshArgs {
                accept_new_host_keys: false,
                known_hosts: known_hosts.clone(),
                identity: identity.clone(),
                connect_timeout: *connect_timeout,
                here: None,
                ssh_client: replicate::SshClientArg::Libssh2,
                ssh_config: ssh_config.clone(),
            };
            check(cli, model, &ssh, *json, *clock_tolerance)?
        }
        Command::Drill(args) => start(cli, model, Mode::Drill, false, args),
        Command::Failover {
            emergency,
            points,
            point_before,
            as_replicated,
            force,
            args,
        } => {
            let mut choice = point_choice(model, points, *point_before, &[])?;
            choice.as_replicated = as_replicated_choice(model, as_replicated)?;
            failover(cli, model, *emergency, choice, *force, args)
        }
        Command::Restore { force, args } => start_with(
            cli,
            model,
            Mode::Restore,
            false,
            *force,
            args,
            Default::default(),
        ),
        Command::Failback { force, args } => start_with(
            cli,
            model,
            Mode::Failback,
            false,
            *force,
            args,
            Default::default(),
        ),
        Command::Resume {
            run,
            points,
            point_before,
            accept_unverified,
            as_replicated,
            force,
            exec,
        } => {
            let mut asked = point_choice(model, points, *point_before, accept_unverified)?;
            asked.as_replicated = as_replicated_choice(model, as_replicated)?;
            resume(cli, model, run, asked, *force, exec)?
        }
        Command::Replicate {
            services,
            verify,
            scan,
            dry_run,
            compress,
            ssh,
            every: _,
        } => replicate::replicate(
            model,
            services,
            *verify,
            *scan || *verify,
            *dry_run,
            *compress,
            ssh,
        ),
        Command::Points { vm, json, ssh } => replicate::points(model, vm, *json, ssh),
        Command::Verify { vm, point, ssh } => {
            replicate::verify(model, vm.as_deref(), point.as_deref(), ssh)
        }
        Command::Status(args) => match args
            .output
            .as_deref()
            .and_then(|o| overwrites_an_input(cli, o))
        {
            Some(why) => Outcome::err(exit::USAGE, format!("error: {why}\n")),
            None => status::status(model, &cli.state_dir, args, Utc::now()),
        },
        Command::Schedule(args) => ops::schedule(cli, model, args),
        Command::Release { item, run, ssh } => replicate::release(model, item, run.as_deref(), ssh),
        Command::Confirm { .. }
        | Command::Helper { .. }
        | Command::Completions { .. }
        | Command::Manpage
        | Command::Runs { .. }
        | Command::Prune { .. }
        | Command::Show { .. }
        | Command::Report { .. }
        | Command::History { .. } => {
            unreachable!("handled before loading the model")
        }
    })
}

/// `lab up`: the inventory brought to life on loopback.
fn lab_up(cli: &Cli, model: &Model, lab_dir: &std::path::Path, action: &LabAction) -> Outcome {
    let net = match action {
        LabAction::Up { net } => *net,
        _ => 0,
    };
    let reload = |overlay: &std::path::Path| {
        let mut sources =
            Sources::read(&cli.inventory, &cli.runbooks).map_err(|e| e.to_string())?;
        sources.add_overlay(overlay).map_err(|e| e.to_string())?;
        crate::plan::validate::load(sources)
            .map(|(m, _)| m)
            .map_err(|r| r.render())
    };
    match crate::lab::up(model, reload, lab_dir, net) {
        Ok(state) => Outcome::ok(crate::lab::describe_up(&state)),
        Err(e) => Outcome::err(exit::FAILED, format!("error: {e}\n")),
    }
}

/// `validate`: what the files hold, once every mode plans.
fn validate(model: &Model) -> Outcome {
    let inv = &model.inventory;
    let books: usize = model.runbooks.by_service.values().map(|m| m.len()).sum();
    let steps: usize = model
        .runbooks
        .by_service
        .values()
        .flat_map(|m| m.values())
        .map(|b| b.steps.len())
        .sum();
    Outcome::ok(format!(
        "ok: {} sites, {} hosts, {} services, {} vms, {} backup sets; {} runbooks with {} steps; \
         drill, failover (planned and emergency), restore and failback all plan\n",
        inv.sites.len(),
        inv.hosts.len(),
        inv.services.len(),
        inv.vms.len(),
        inv.backups.len(),
        books,
        steps
    ))
}

/// `impact`: what a service's loss takes down.
fn impact(model: &Model, service: &str, json: bool) -> Result<Outcome, Outcome> {
    if !model.inventory.services.contains_key(service) {
        let hint = crate::diagnostic::did_you_mean(
            service,
            model.inventory.services.keys().map(String::as_str),
        )
        .map(|h| format!("hint: {h}\n"))
        .unwrap_or_default();
        return Err(Outcome::err(
            exit::INVALID_INPUT,
            format!("error: unknown service `{service}`\n{hint}"),
        ));
    }
    let impact = model.graph.impact(&model.inventory, service);
    Ok(Outcome::ok(if json {
        serde_json::to_string_pretty(&impact).expect("impact serializes") + "\n"
    } else {
        impact.to_text()
    }))
}

/// `plan`: the plan of a mode, as text (with the definitions a run would change) or JSON.
fn show_plan(
    cli: &Cli,
    model: &Model,
    opts: &PlanOptions,
    json: bool,
    ssh_config: &Option<PathBuf>,
) -> Outcome {
    match plan::build(model, opts) {
        Ok(p) if json => Outcome::ok(p.to_json() + "\n"),
        Ok(p) => {
            // The default SSH settings, never trusting a new host key.
            let ssh = replicate::SshArgs {
                accept_new_host_keys: false,
                known_hosts: None,
                identity: None,
                connect_timeout: 10,
                here: None,
                ssh_client: replicate::SshClientArg::Libssh2,
                ssh_config: ssh_config.clone(),
            }
            .options();
            let changes = definition_changes(cli, model, &p, &ssh);
            Outcome::ok(render_plan(model, &p, &ssh) + &changes)
        }
        Err(errors) => invalid(&model.report(errors)),
    }
}

/// `check`: every host asked, the readiness judged, printed and saved for the next run.
fn check(
    cli: &Cli,
    model: &Model,
    ssh: &replicate::SshArgs,
    json: bool,
    clock_tolerance: f64,
) -> Result<Outcome, Outcome> {
    let ssh = ssh.options()?;
    let transport = crate::run::transport(model, &ssh);
    let opts = crate::check::CheckOptions {
        clock_tolerance_s: clock_tolerance.max(0.0),
        ..Default::default()
    };
    let readiness = crate::check::check(model, &transport, &opts);
    let path = crate::readiness::latest_path(&cli.state_dir);
    let saved = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            let json = serde_json::to_string_pretty(&readiness).expect("readiness serializes");
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, json + "\n")?;
            std::fs::rename(&tmp, &path)
        });
    let stdout = if json {
        serde_json::to_string_pretty(&readiness).expect("readiness serializes") + "\n"
    } else {
        crate::check::render(&readiness)
    };
    let mut outcome = Outcome {
        stdout,
        stderr: String::new(),
        code: if readiness.ready {
            exit::OK
        } else {
            exit::NOT_READY
        },
    };
    if let Err(e) = saved {
        outcome.stderr = format!(
            "error: cannot save the result to {}: {e}; the next run's report will not show it\n",
            path.display()
        );
        if readiness.ready {
            outcome.code = exit::IO;
        }
    }
    Ok(outcome)
}

/// `failover`: the points asked for checked against the inventory, then the run.
fn failover(
    cli: &Cli,
    model: &Model,
    emergency: bool,
    choice: crate::runner::PointChoice,
    force: bool,
    args: &RunArgs,
) -> Outcome {
    start_with(cli, model, Mode::Failover, emergency, force, args, choice)
}

/// The point choice of `--point`, `--point-before` and `--accept-unverified`, each vm or
/// backup set named checked against the inventory.
fn point_choice(
    model: &Model,
    points: &[(String, String)],
    point_before: Option<DateTime<Utc>>,
    accept_unverified: &[String],
) -> Result<crate::runner::PointChoice, Outcome> {
    // A name the inventory does not know, refused with the nearest one it does.
    let known = |flag: &str, vm: &str| -> Result<(), Outcome> {
        let inv = &model.inventory;
        if inv.vms.contains_key(vm) || inv.backups.contains_key(vm) {
            return Ok(());
        }
        let hint = crate::diagnostic::did_you_mean(
            vm,
            inv.vms.keys().chain(inv.backups.keys()).map(String::as_str),
        )
        .map(|h| format!("hint: {h}\n"))
        .unwrap_or_default();
        Err(Outcome::err(
            exit::INVALID_INPUT,
            format!("error: {flag} names an unknown vm `{vm}` (nor backup set)\n{hint}"),
        ))
    };
    for (vm, _) in points.iter().filter(|(vm, _)| !vm.is_empty()) {
        known("--point", vm)?;
    }
    // Two points asked for one vm (or two for every vm): which one is not guessed.
    for (i, (vm, p)) in points.iter().enumerate() {
        if let Some((_, q)) = points[..i].iter().find(|(v, q)| v == vm && q != p) {
            let what = if vm.is_empty() {
                "every vm".to_string()
            } else {
                format!("vm `{vm}`")
            };
            return Err(Outcome::err(
                exit::USAGE,
                format!("error: --point asks two points for {what} ({q} and {p}): ask one\n"),
            ));
        }
    }
    let mut choice = crate::runner::PointChoice {
        by_vm: points
            .iter()
            .filter(|(vm, _)| !vm.is_empty())
            .cloned()
            .collect(),
        all: points
            .iter()
            .rev()
            .find(|(vm, _)| vm.is_empty())
            .map(|(_, p)| p.clone()),
        before: point_before,
        accept_unverified: Vec::new(),
        as_replicated: Vec::new(),
    };
    for vm in accept_unverified {
        if vm == "all" {
            choice.accept_unverified.push("*".into());
        } else {
            known("--accept-unverified", vm)?;
            choice.accept_unverified.push(vm.clone());
        }
    }
    Ok(choice)
}

/// The services of `--as-replicated` (`*` for `all`), each checked against the inventory.
fn as_replicated_choice(model: &Model, names: &[String]) -> Result<Vec<String>, Outcome> {
    let services = &model.inventory.services;
    names
        .iter()
        .map(|s| match s.as_str() {
            "all" => Ok("*".to_string()),
            s if services.contains_key(s) => Ok(s.to_string()),
            s => {
                let hint = crate::diagnostic::did_you_mean(s, services.keys().map(String::as_str))
                    .map(|h| format!("hint: {h}\n"))
                    .unwrap_or_default();
                Err(Outcome::err(
                    exit::INVALID_INPUT,
                    format!("error: --as-replicated names an unknown service `{s}`\n{hint}"),
                ))
            }
        })
        .collect()
}

/// `resume`: a stopped run taken up where it stopped.
fn resume(
    cli: &Cli,
    model: &Model,
    run: &str,
    asked: crate::runner::PointChoice,
    force: bool,
    exec: &ExecArgs,
) -> Result<Outcome, Outcome> {
    let shutdown = ctrl_c();
    let mut view = TerminalView::new(&model.inventory, Some(run));
    // Its time against the RTO runs from where the run began, not from this resume (what
    // the journal cannot give, the resume itself reports).
    if let Ok(events) = crate::journal::RunDir::open(&cli.state_dir, run).and_then(|d| d.read()) {
        view.measure_from_journal(&events);
    }
    let operator = operator(exec);
    let mut options = exec_options(exec)?;
    options.run.points = asked;
    let result = crate::run::resume(
        model,
        &cli.state_dir,
        run,
        &options,
        &operator,
        force,
        &mut view,
        shutdown,
    );
    Ok(finish(result))
}

fn operator(exec: &ExecArgs) -> String {
    exec.operator
        .clone()
        .or_else(|| std::env::var("SUDO_USER").ok())
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .or_else(|| {
            // No login variables (cron, CI): the name of the effective user.
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn run_options(exec: &ExecArgs) -> RunOptions {
    RunOptions {
        parallel: exec.parallel.max(1),
        per_host: exec.per_host.max(1),
        rollback: !exec.no_rollback,
        ..RunOptions::default()
    }
}

fn exec_options(exec: &ExecArgs) -> Result<ExecOptions, Outcome> {
    Ok(ExecOptions {
        run: run_options(exec),
        ssh: exec.ssh.options()?,
        keep_runs: Some(exec.keep_runs),
    })
}

/// Ctrl-C, SIGTERM or SIGHUP ask the run to stop: no new steps, running ones finish,
/// cleanup still runs, and the journal says which signal it was.
fn ctrl_c() -> crate::shutdown::Shutdown {
    crate::shutdown::Shutdown::listen()
}

fn start(cli: &Cli, model: &Model, mode: Mode, emergency: bool, args: &RunArgs) -> Outcome {
    start_with(cli, model, mode, emergency, false, args, Default::default())
}

fn start_with(
    cli: &Cli,
    model: &Model,
    mode: Mode,
    emergency: bool,
    force: bool,
    args: &RunArgs,
    mut points: crate::runner::PointChoice,
) -> Outcome {
    match point_choice(model, &[], None, &args.accept_unverified) {
        Ok(accepted) => points.add(&accepted),
        Err(o) => return o,
    }
    let plan_opts = PlanOptions {
        mode,
        emergency,
        services: args.services.clone(),
        only: args.only,
        run_id: "dry-run".to_string(),
    };
    if args.dry_run {
        return match plan::build(model, &plan_opts) {
            Ok(p) if args.json => Outcome::ok(p.to_json() + "\n"),
            Ok(p) => {
                let mut ssh = args.exec.ssh.clone();
                // A dry run only reads: it never trusts a new host key.
                ssh.accept_new_host_keys = false;
                let ssh = ssh.options();
                let changes = definition_changes(cli, model, &p, &ssh);
                let refused = match crate::run::points_out_of_reach(model, &p, &points) {
                    problems if problems.is_empty() || mode != Mode::Failover => String::new(),
                    problems => format!(
                        "\nPoints: this failover would be refused (exit 3), what was asked ({}) cannot be given to:\n  - {}\n",
                        points.words(),
                        problems.join("\n  - ")
                    ),
                };
                Outcome::ok(render_plan(model, &p, &ssh) + &changes + &refused)
            }
            Err(errors) => invalid(&model.report(errors)),
        };
    }
    if matches!(mode, Mode::Failover | Mode::Failback) && !args.yes {
        let what = if emergency {
            "EMERGENCY FAILOVER"
        } else {
            &mode.as_str().to_uppercase()
        };
        if !std::io::stdin().is_terminal() {
            return Outcome::err(
                exit::USAGE,
                format!(
                    "error: refusing to start a {what} without confirmation: pass --yes (or run it on a terminal)\n"
                ),
            );
        }
        eprint!(
            "This starts a real {what}: services will move. Type {} to go on: ",
            mode.as_str()
        );
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if answer.trim() != mode.as_str() {
            return Outcome::err(
                exit::FAILED,
                "not confirmed: nothing was done\n".to_string(),
            );
        }
    }
    let mut exec = match exec_options(&args.exec) {
        Ok(o) => o,
        Err(o) => return o,
    };
    exec.run.points = points;
    let opts = StartOptions {
        plan: plan_opts,
        exec,
        state_dir: cli.state_dir.clone(),
        operator: operator(&args.exec),
        incident_at: args.incident_at,
        force,
    };
    let shutdown = ctrl_c();
    let mut view = TerminalView::new(&model.inventory, None);
    if !args.exec.no_prompt && std::io::stdin().is_terminal() {
        view.prompt_on_terminal(cli.state_dir.clone());
    }
    finish(crate::run::start(model, &opts, &mut view, shutdown))
}

/// The plan for people, each host shown where these options really reach it (no host is
/// reached to know it).
fn render_plan(
    model: &Model,
    plan: &plan::Plan,
    ssh: &Result<crate::run::SshOptions, Outcome>,
) -> String {
    match ssh {
        Ok(ssh) => plan::text::render_reaching(plan, &crate::run::reach(model, ssh)),
        Err(e) => format!(
            "{}\nHosts: shown as the inventory names them; a run would stop before reaching any: {}\n",
            plan::text::render(plan),
            e.stderr.trim().trim_start_matches("error: ")
        ),
    }
}

/// For a dry run: each vm the plan defines on a host where this state folder kept the
/// definition last used (`STATE/definitions/`), whether the one it would use now differs, as
/// a short diff. Hosts are asked (read only) only when such a definition was kept.
fn definition_changes(
    cli: &Cli,
    model: &Model,
    plan: &plan::Plan,
    ssh: &Result<crate::run::SshOptions, Outcome>,
) -> String {
    use crate::replica::definitions;
    let dir = cli.state_dir.join("definitions");
    let kept = plan
        .steps
        .iter()
        .filter_map(|s| s.replica.as_ref()?.define.as_ref())
        .any(|d| definitions::recorded(&dir, &d.host, &d.fit.name, d.format).is_some());
    if !kept {
        return String::new();
    }
    let ssh = match ssh {
        Ok(ssh) => ssh,
        Err(e) => {
            return format!(
                "\nDefinitions: not compared with the last ones defined, the hosts cannot be asked: {}\n",
                e.stderr.trim().trim_start_matches("error: ")
            );
        }
    };
    let transport = crate::run::transport(model, ssh);
    let helpers = crate::replica::remote::Helpers::new(&transport);
    let secrets = crate::runner::env_secrets();
    let mut out = String::from("\nDefinitions, against the last one defined on each host:\n");
    for p in definitions::prospects(&helpers, plan, &|n| secrets(n)) {
        let head = format!("  vm {} as {} on {}", p.vm, p.name, p.host);
        let kept = definitions::recorded(&dir, &p.host, &p.name, p.format);
        match (&p.result, kept) {
            (Err(why), _) => out.push_str(&format!(
                "{head}: from {}, cannot be used: {why}\n",
                p.source
            )),
            (Ok(_), None) => out.push_str(&format!(
                "{head}: never defined there from this state folder (from {})\n",
                p.source
            )),
            (Ok(new), Some(old)) => match crate::vmdef::diff(&old, new, 40) {
                None => out.push_str(&format!("{head}: unchanged (from {})\n", p.source)),
                Some(d) => {
                    out.push_str(&format!(
                        "{head}: CHANGED since it was last defined there (now from {}):\n",
                        p.source
                    ));
                    for line in d.lines() {
                        out.push_str(&format!("    {line}\n"));
                    }
                }
            },
        }
    }
    out
}

fn finish(result: Result<crate::run::RunOutcome, RunError>) -> Outcome {
    match result {
        Ok(outcome) => {
            let mut stderr = String::new();
            if let Some(stale) = &outcome.replaced_stale_lock {
                stderr = format!(
                    "note: took over the lock left by run {} (pid {} on {}, which no longer holds it: it ended without releasing it)\n",
                    stale.run_id, stale.pid, stale.machine
                );
            }
            match &outcome.pruned {
                Ok(p) if !p.removed.is_empty() => stderr.push_str(&format!(
                    "note: removed {} old run folder{} (--keep-runs): {}\n",
                    p.removed.len(),
                    if p.removed.len() == 1 { "" } else { "s" },
                    p.removed.join(", ")
                )),
                Ok(_) => {}
                Err(e) => stderr.push_str(&format!("warning: old runs were not removed: {e}\n")),
            }
            let code = match outcome.status {
                RunStatus::Succeeded => exit::OK,
                RunStatus::Interrupted => exit::INTERRUPTED,
                // A vm found running on both sites comes before any other failure.
                RunStatus::Partial | RunStatus::Failed if !outcome.split_brain.is_empty() => {
                    stderr.push_str(&format!(
                        "error: split brain: {}; stop the copy that must not serve before anyone uses it\n",
                        outcome.split_brain.join("; ")
                    ));
                    exit::SPLIT_BRAIN
                }
                // A restore's step that found its vm running, or left, on the recovery site.
                RunStatus::Partial | RunStatus::Failed if !outcome.refused.is_empty() => {
                    stderr.push_str(&format!(
                        "error: not started: {}\n",
                        outcome.refused.join("; ")
                    ));
                    exit::SPLIT_BRAIN
                }
                RunStatus::Partial | RunStatus::Failed => exit::FAILED,
            };
            Outcome {
                stdout: format!("journal: {}\n", outcome.dir.join("journal.jsonl").display()),
                stderr,
                code,
            }
        }
        Err(e) => run_error(e),
    }
}

fn run_error(e: RunError) -> Outcome {
    match e {
        RunError::Plan(report) => invalid(&report),
        RunError::Journal(
            JournalError::Locked { .. }
            | JournalError::LockBusy { .. }
            | JournalError::LockedElsewhere { .. }
            | JournalError::LockUnreadable { .. },
        ) => Outcome::err(exit::LOCKED, format!("error: {e}\n")),
        RunError::Journal(JournalError::BadRunId(_)) => {
            Outcome::err(exit::USAGE, format!("error: {e}\n"))
        }
        RunError::Journal(JournalError::NoSuchRun { .. })
        | RunError::UnknownStep { .. }
        | RunError::SourcesChanged { .. }
        | RunError::RunOver { .. }
        | RunError::NotWaiting { .. }
        | RunError::AlreadyConfirmed { .. }
        | RunError::DrillOver { .. }
        | RunError::StartedOtherwise { .. }
        | RunError::PointsOutOfReach { .. } => {
            Outcome::err(exit::INVALID_INPUT, format!("error: {e}\n"))
        }
        RunError::NoName | RunError::PointsNotForMode { .. } => {
            Outcome::err(exit::USAGE, format!("error: {e}\n"))
        }
        RunError::SplitBrain { .. }
        | RunError::PrimaryRuns { .. }
        | RunError::RunsAgain { .. }
        | RunError::RunsElsewhere { .. } => {
            Outcome::err(exit::SPLIT_BRAIN, format!("error: {e}\n"))
        }
        RunError::NotReady { .. } | RunError::NothingCopiedBack { .. } => {
            Outcome::err(exit::NOT_READY, format!("error: {e}\n"))
        }
        RunError::AlreadyFinished(_) => Outcome::err(exit::INVALID_INPUT, format!("error: {e}\n")),
        RunError::JournalFailed { .. } => Outcome::err(exit::IO, format!("error: {e}\n")),
        RunError::Journal(_) | RunError::NoStart(_) => {
            Outcome::err(exit::IO, format!("error: {e}\n"))
        }
    }
}

fn report(
    cli: &Cli,
    run: &str,
    format: Option<crate::report::Format>,
    output: Option<&std::path::Path>,
    pdf: bool,
    lang: crate::report::Lang,
) -> Outcome {
    use crate::report::Format;
    if let Some(why) = output.and_then(|o| overwrites_an_input(cli, o)) {
        return Outcome::err(exit::USAGE, format!("error: {why}\n"));
    }
    let report = match crate::report::for_run(&cli.state_dir, run, lang) {
        Ok(r) => r,
        Err(e) => return run_error(e.into()),
    };
    if pdf {
        let target = output
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("{}.pdf", report.run_id)));
        let html = crate::report::render(&report, Format::Html, lang);
        return match crate::report::pdf::print(&html, &target) {
            Ok(()) => Outcome::ok(format!("{}\n", target.display())),
            Err(e @ crate::report::pdf::PdfError::NoChromium) => {
                Outcome::err(exit::FAILED, format!("error: {e}\n"))
            }
            Err(e) => Outcome::err(exit::IO, format!("error: {e}\n")),
        };
    }
    let format = format.unwrap_or_else(|| {
        match output
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("html" | "htm") => Format::Html,
            Some("json") => Format::Json,
            _ => Format::Md,
        }
    });
    let text = crate::report::render(&report, format, lang);
    match output {
        None => Outcome::ok(text),
        Some(path) => match std::fs::write(path, text) {
            Ok(()) => Outcome::ok(format!("{}\n", path.display())),
            Err(e) => Outcome::err(
                exit::IO,
                format!("error: cannot write {}: {e}\n", path.display()),
            ),
        },
    }
}

/// Why writing `out` would overwrite what reprise reads (the inventory, the runbooks, an
/// overlay, the state folder: a journal), if it would.
pub(crate) fn overwrites_an_input(cli: &Cli, out: &std::path::Path) -> Option<String> {
    let target = match std::fs::canonicalize(out) {
        Ok(t) => t,
        Err(_) => {
            let dir = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            std::fs::canonicalize(dir).ok()?.join(out.file_name()?)
        }
    };
    // Of the state folder, what reprise keeps there: the runs (their journals) and checks.
    let (runs, checks) = (cli.state_dir.join("runs"), cli.state_dir.join("check"));
    let inputs = [&cli.inventory, &cli.runbooks, &runs, &checks]
        .into_iter()
        .chain(cli.overlays.iter());
    for input in inputs {
        if let Ok(i) = std::fs::canonicalize(input)
            && target.starts_with(&i)
        {
            let place = match target == i {
                true => format!("is {}", input.display()),
                false => format!("is inside {}", input.display()),
            };
            return Some(format!(
                "{} {place}, which reprise reads: nothing is written there; name a file elsewhere",
                out.display()
            ));
        }
    }
    None
}

fn history(cli: &Cli, json: bool) -> Outcome {
    let last = match crate::report::last_drills(&cli.state_dir) {
        Ok(l) => l,
        Err(e) => return run_error(e.into()),
    };
    if json {
        return Outcome::ok(
            serde_json::to_string_pretty(&last).expect("history serializes") + "\n",
        );
    }
    if last.is_empty() {
        return Outcome::ok(format!(
            "no runs in {}\n",
            crate::journal::runs_dir(&cli.state_dir).display()
        ));
    }
    let now = chrono::Utc::now();
    let mut out = format!(
        "{:<20} {:<20} {:>9} {:>12}  {}\n",
        "SERVICE", "LAST DRILL (UTC)", "DAYS AGO", "RTO", "RUN"
    );
    for l in last {
        let (when, ago) = match l.at {
            Some(t) => (
                t.format("%Y-%m-%d %H:%M").to_string(),
                (now - t).num_days().to_string(),
            ),
            None => ("never".to_string(), "-".to_string()),
        };
        let rto = match (l.achieved_rto_s, l.rto_met) {
            (Some(a), Some(true)) => format!("{} ok", crate::report::human_duration(a)),
            (Some(a), Some(false)) => format!("{} MISSED", crate::report::human_duration(a)),
            _ => "-".to_string(),
        };
        out.push_str(&format!(
            "{:<20} {:<20} {:>9} {:>12}  {}\n",
            l.service,
            when,
            ago,
            rto,
            l.run_id.as_deref().unwrap_or("-")
        ));
    }
    Outcome::ok(out)
}

fn runs(cli: &Cli, json: bool) -> Outcome {
    let list = match crate::run::summaries(&cli.state_dir) {
        Ok(l) => l,
        Err(e) => return run_error(e),
    };
    if json {
        return Outcome::ok(serde_json::to_string_pretty(&list).expect("runs serialize") + "\n");
    }
    if list.is_empty() {
        return Outcome::ok(format!(
            "no runs in {}\n",
            crate::journal::runs_dir(&cli.state_dir).display()
        ));
    }
    let mut out = format!(
        "{:<32} {:<20} {:<22} {:<17} {:>9} {:>7}  {}\n",
        "RUN", "MODE", "RESULT", "STARTED (UTC)", "DURATION", "RTO MET", "STEPS DONE"
    );
    for r in list {
        let mode = match r.mode {
            _ if r.emergency => "failover (emergency)".to_string(),
            Some(mode) => mode.to_string(),
            None => "?".to_string(),
        };
        let result = match (r.status, r.result) {
            _ if r.damaged.is_some() => "DAMAGED".to_string(),
            (None, _) => "unfinished".to_string(),
            (_, Some(o)) => serde_json::to_value(o)
                .ok()
                .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
                .unwrap_or_default(),
            (Some(s), None) => format!("{s:?}").to_lowercase(),
        };
        let rto = if r.rto_measured > 0 {
            format!("{}/{}", r.rto_met, r.rto_measured)
        } else {
            "-".to_string()
        };
        let duration = r
            .ended
            .zip(r.started)
            .map(|(e, s)| {
                crate::duration::Duration((e - s).num_seconds().max(0) as u64).to_string()
            })
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "{:<32} {:<20} {:<22} {:<17} {:>9} {:>7}  {}/{}\n",
            r.run_id,
            mode,
            result,
            r.started
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|| "-".into()),
            duration,
            rto,
            r.steps_done,
            r.steps
        ));
        if let Some(why) = &r.damaged {
            out.push_str(&format!("    damaged journal: {why}\n"));
        }
    }
    Outcome::ok(out)
}

fn prune(cli: &Cli, keep: usize, dry_run: bool) -> Outcome {
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".to_string());
    let pruned = match crate::run::prune(&cli.state_dir, keep, dry_run, &who) {
        Ok(p) => p,
        Err(e) => return run_error(e),
    };
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut out = String::new();
    for id in &pruned.removed {
        out.push_str(&format!("{verb} {id}\n"));
    }
    for k in &pruned.kept {
        out.push_str(&format!("kept {}: {}\n", k.run_id, k.why));
    }
    out.push_str(&format!(
        "{} {} run folder{}; the newest {keep} and {} older one{} still needed are kept\n",
        verb,
        pruned.removed.len(),
        if pruned.removed.len() == 1 { "" } else { "s" },
        pruned.kept.len(),
        if pruned.kept.len() == 1 { "" } else { "s" },
    ));
    Outcome::ok(out)
}

/// A journaled lag as the reading it was.
fn lag_reading(lag_s: Option<f64>, unknown: &Option<String>) -> crate::lag::Reading {
    match (lag_s, unknown) {
        (Some(s), None) => crate::lag::Reading::Seconds(s),
        (_, why) => {
            crate::lag::Reading::Unknown(why.clone().unwrap_or_else(|| "not recorded".into()))
        }
    }
}

fn show(cli: &Cli, run: &str) -> Outcome {
    let dir = match crate::journal::RunDir::open(&cli.state_dir, run) {
        Ok(d) => d,
        Err(e) => return run_error(e.into()),
    };
    let (events, damage) = match crate::journal::read_lenient(&dir.journal_path()) {
        Ok(read) => read,
        Err(e) => return run_error(e.into()),
    };
    let mut out = String::new();
    for e in &events {
        let at = e.at().format("%Y-%m-%d %H:%M:%S");
        let line = event_line(&dir.run_id, e);
        out.push_str(&format!("{at}  {line}\n"));
    }
    if let Some(bytes) = crate::journal::torn_tail(&dir.journal_path()) {
        out.push_str(&format!(
            "(the journal ends with a line of {bytes} bytes cut short by a crash: `reprise resume {}` cuts it off)\n",
            dir.run_id
        ));
    }
    match damage {
        // What could be read is shown, and where it stops.
        Some(e) => Outcome {
            stdout: out,
            stderr: format!("error: {e}\n"),
            code: exit::IO,
        },
        None => Outcome::ok(out),
    }
}

/// One event of a run's journal, as `show` prints it.
fn event_line(run_id: &str, e: &Event) -> String {
    match e {
        Event::RunStarted {
            mode,
            emergency,
            operator,
            machine,
            version,
            sources_digest,
            steps,
            ..
        } => format!(
            "run {} started: {mode}{} by {operator} on {machine}, reprise {version}, files {}, {} steps",
            run_id,
            if *emergency { " (emergency)" } else { "" },
            &sources_digest[..12.min(sources_digest.len())],
            steps.len()
        ),
        Event::RunResumed {
            operator, machine, ..
        } => format!("resumed by {operator} on {machine}"),
        Event::SplitBrain {
            step, vm, hosts, ..
        } => format!(
            "{step}: SPLIT BRAIN: vm {vm} runs on {}",
            hosts.join(" and on ")
        ),
        Event::SourceRead {
            step,
            vm,
            host,
            stamps,
            ..
        } => format!(
            "{step}: vm {vm}'s disks on {host} before they were read: {}",
            stamps
                .iter()
                .map(|(path, stamp)| format!("{path} `{stamp}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Event::VmStateBefore {
            step,
            running,
            said,
            ..
        } => format!(
            "{step}: before the start, the vm {} ({said:?})",
            match running {
                Some(true) => "was running already",
                Some(false) => "was not running",
                None => "was in a state that could not be told",
            }
        ),
        Event::ReadinessForced {
            operator, problems, ..
        } => format!(
            "forced by {operator} (--force) past: {}",
            problems.join("; ")
        ),
        Event::OtherSite {
            said, step: None, ..
        } => {
            format!("as it started, the other site showed: {}", said.join("; "))
        }
        Event::OtherSite {
            said,
            step: Some(step),
            ..
        } => format!(
            "as {step} came to start its vm, the other site showed: {}",
            said.join("; ")
        ),
        Event::StopRequested { reason, .. } => format!(
            "stop requested ({reason}): no new steps, running ones finish, a drill's cleanup runs"
        ),
        Event::JournalRepaired {
            line,
            bytes,
            kept_in,
            excerpt,
            ..
        } => format!(
            "journal repaired: line {line} was cut short by a crash; its {bytes} bytes were cut off and kept in {kept_in} ({excerpt:?})"
        ),
        Event::ReplicaPointUsed {
            step,
            item,
            point,
            taken_at,
            verified,
            note,
            ..
        } => format!(
            "{step} uses point {point} of {item} (taken {}{}){}",
            taken_at.format("%Y-%m-%d %H:%M:%S"),
            if *verified {
                ", verified"
            } else {
                ", not verified"
            },
            note.as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        ),
        Event::LagMeasured {
            step,
            host,
            lag_s,
            unknown,
            rpo_target_s,
            ..
        } => format!(
            "{step} on {host}: {}",
            crate::lag::judge(
                &lag_reading(*lag_s, unknown),
                rpo_target_s.map(crate::duration::Duration)
            )
            .1
        ),
        Event::StepStarted { .. }
        | Event::StepOutput { .. }
        | Event::StepFinished { .. }
        | Event::WaitingForOperator { .. }
        | Event::Confirmed { .. }
        | Event::UndoFinished { .. } => step_event_line(e),
        Event::RunFinished { status, .. } => format!("run finished: {status:?}"),
    }
}

/// One event of a step, as `show` prints it (the run's own events: `event_line`).
fn step_event_line(e: &Event) -> String {
    match e {
        Event::StepStarted {
            step,
            attempt,
            host,
            ..
        } => format!(
            "started {step} (attempt {attempt}){}",
            host.as_deref()
                .map(|h| format!(" on {h}"))
                .unwrap_or_default()
        ),
        Event::StepOutput {
            step,
            stdout,
            stderr,
            exit_code,
            ..
        } => {
            let mut text = format!(
                "output of {step} (exit {}):",
                exit_code.map(|c| c.to_string()).unwrap_or("-".into())
            );
            for l in stdout.lines().chain(stderr.lines()) {
                text.push_str(&format!("\n    | {l}"));
            }
            text
        }
        Event::StepFinished {
            step,
            status,
            duration_ms,
            message,
            ..
        } => format!(
            "finished {step}: {status:?} in {:.1}s{}",
            *duration_ms as f64 / 1000.0,
            message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ),
        Event::WaitingForOperator { step, .. } => format!("waiting for a person: {step}"),
        Event::Confirmed { step, by, note, .. } => format!(
            "confirmed {step} by {by}{}",
            note.as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        ),
        Event::UndoFinished {
            step, ok, message, ..
        } => format!(
            "undo of {step}: {}{}",
            if *ok { "ok" } else { "FAILED" },
            message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ),
        _ => String::new(),
    }
}
