//! The command line: parses arguments, runs the library, prints, and maps every outcome to a
//! documented exit code ([`crate::exit`]). The only module that writes to the terminal.

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::diagnostic::Report;
use crate::exit;
use crate::model::Model;
use crate::plan::{self, PlanOptions};
use crate::runbook::Mode;
use crate::sources::{Sources, SourcesError};

const EXAMPLES: &str = "\
Examples:
  reprise validate                          check ./inventory and ./runbooks
  reprise plan drill                        what a drill would do, step by step
  reprise plan failover --emergency --json  the emergency failover plan, for tools
  reprise plan restore --service erp-app    restore the ERP and what it needs
  reprise impact storage                    what goes down when the storage fails
  reprise graph --format dot | dot -Tsvg > services.svg

Exit codes: 0 ok, 1 failed, 2 usage, 3 invalid inventory or runbooks, 4 cannot read files.";

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
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the inventory and runbooks: syntax, references, cycles, site rules, templates,
    /// and that every mode plans.
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
}

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Start the lab: one sshd per host, images, the overlay `DIR/overlay.toml`.
    Up,
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

/// Parses the process arguments, runs, prints, and returns the exit code.
pub fn main() -> u8 {
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
    let outcome = run(&cli);
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    outcome.code
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
            SourcesError::File { .. } => "\n",
        };
        Outcome::err(exit::IO, format!("error: {e}{hint}"))
    })?;
    match Model::load(sources) {
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

fn invalid(report: &Report) -> Outcome {
    Outcome::err(exit::INVALID_INPUT, report.render())
}

/// Runs a parsed command line.
pub fn run(cli: &Cli) -> Outcome {
    // Commands that read only the journal or the lab.
    match &cli.command {
        Command::Lab { action, lab_dir } => match action {
            LabAction::Serve {
                name,
                pidfile,
                listen,
                image,
            } => {
                return match crate::lab::serve(name, listen, image, pidfile) {
                    Ok(()) => Outcome::ok(String::new()),
                    Err(e) => Outcome::err(exit::FAILED, format!("{e}\n")),
                };
            }
            LabAction::Stub { name, args } => {
                let code = crate::lab::stub(name, args);
                return Outcome {
                    code: code.clamp(0, 255) as u8,
                    ..Outcome::default()
                };
            }
            LabAction::Down => {
                return match crate::lab::down(lab_dir) {
                    Ok(n) => Outcome::ok(format!("lab down: stopped {n} processes\n")),
                    Err(e) => Outcome::err(exit::FAILED, format!("error: {e}\n")),
                };
            }
            LabAction::Status => {
                return match crate::lab::status(lab_dir) {
                    Ok(text) => Outcome::ok(text),
                    Err(e) => Outcome::err(exit::FAILED, format!("error: {e}\n")),
                };
            }
            LabAction::Up => {}
        },
        _ => {}
    }
    let (model, warnings) = match load(cli) {
        Ok(m) => m,
        Err(o) => return o,
    };
    let mut outcome = match &cli.command {
        Command::Lab { lab_dir, .. } => {
            let reload = |overlay: &std::path::Path| {
                let mut sources =
                    Sources::read(&cli.inventory, &cli.runbooks).map_err(|e| e.to_string())?;
                sources.add_overlay(overlay).map_err(|e| e.to_string())?;
                Model::load(sources).map(|(m, _)| m).map_err(|r| r.render())
            };
            match crate::lab::up(&model, reload, lab_dir) {
                Ok(state) => Outcome::ok(format!(
                    "lab up in {}: {} hosts (sshd on 127.0.0.x:{}), {} vms\nrun with: reprise --overlay {} drill --yes --no-prompt\n",
                    state.dir.display(),
                    state.hosts.len(),
                    crate::lab::SSH_PORT,
                    state.vms.len(),
                    crate::lab::overlay_path(&state.dir).display()
                )),
                Err(e) => Outcome::err(exit::FAILED, format!("error: {e}\n")),
            }
        }
        Command::Validate => {
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
        Command::Graph { format } => Outcome::ok(match format {
            GraphFormat::Text => model.graph.to_text(&model.inventory),
            GraphFormat::Dot => model.graph.to_dot(&model.inventory),
            GraphFormat::Mermaid => model.graph.to_mermaid(&model.inventory),
        }),
        Command::Impact { service, json } => {
            if !model.inventory.services.contains_key(service) {
                let hint = crate::diagnostic::did_you_mean(
                    service,
                    model.inventory.services.keys().map(String::as_str),
                )
                .map(|h| format!("hint: {h}\n"))
                .unwrap_or_default();
                return Outcome::err(
                    exit::INVALID_INPUT,
                    format!("error: unknown service `{service}`\n{hint}"),
                );
            }
            let impact = model.graph.impact(&model.inventory, service);
            Outcome::ok(if *json {
                serde_json::to_string_pretty(&impact).expect("impact serializes") + "\n"
            } else {
                impact.to_text()
            })
        }
        Command::Plan {
            mode,
            emergency,
            services,
            only,
            json,
            run_id,
        } => {
            let opts = PlanOptions {
                mode: (*mode).into(),
                emergency: *emergency,
                services: services.clone(),
                only: *only,
                run_id: run_id.clone(),
            };
            match plan::build(&model, &opts) {
                Ok(p) if *json => Outcome::ok(p.to_json() + "\n"),
                Ok(p) => Outcome::ok(plan::text::render(&p)),
                Err(errors) => invalid(&model.report(errors)),
            }
        }
    };
    outcome.stderr = warnings + &outcome.stderr;
    outcome
}
