//! The command line of operations around recovery: `schedule` (systemd timers or cron for the
//! nightly check and the replications), `completions` and `manpage`.

use std::path::{Path, PathBuf};

use clap::CommandFactory as _;

use super::{Cli, Outcome};
use crate::exit;
use crate::model::Model;
use crate::schedule::{self, Options};

/// Shells `reprise completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Arguments of `reprise schedule`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleArgs {
    /// A cron file (for /etc/cron.d) instead of systemd units.
    #[arg(long)]
    pub cron: bool,
    /// Write the files (units to --dir, default /etc/systemd/system; the cron file to
    /// /etc/cron.d/reprise) instead of printing them.
    #[arg(long)]
    pub install: bool,
    /// Where --install writes the systemd units.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub dir: PathBuf,
    /// The user the commands run as.
    #[arg(long, default_value = "root")]
    pub user: String,
    /// When the nightly `reprise check` runs (HH:MM, local time).
    #[arg(long, value_name = "HH:MM", default_value = "02:00", value_parser = parse_time)]
    pub check_at: String,
    /// The replications run on this host of the inventory (see `replicate --here`).
    #[arg(long, value_name = "HOST")]
    pub here: Option<String>,
    /// The reprise binary the commands call (default: this one).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Also write metrics to FILE every 5 minutes (`status --format prometheus`), e.g.
    /// /var/lib/prometheus/node-exporter/reprise.prom; its folder must exist.
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    /// Each replication runs as a long-running service (`replicate --every`) that keeps its
    /// SSH connections between rounds, instead of a timer starting a new command each time,
    /// which logs in to every host again (over a WAN, a good part of a small replication).
    #[arg(long, conflicts_with = "cron")]
    pub keep_connected: bool,
}

fn parse_time(text: &str) -> Result<String, String> {
    let (h, m) = text
        .split_once(':')
        .ok_or_else(|| format!("`{text}` is not HH:MM"))?;
    match (h.parse::<u32>(), m.parse::<u32>()) {
        (Ok(h), Ok(m)) if h < 24 && m < 60 && m.to_string().len() <= 2 => {
            Ok(format!("{h:02}:{m:02}"))
        }
        _ => Err(format!("`{text}` is not a time of day (HH:MM)")),
    }
}

fn absolute(path: &Path) -> Result<String, Outcome> {
    std::fs::canonicalize(path)
        .map(|p| p.display().to_string())
        .map_err(|e| {
            Outcome::err(
                exit::IO,
                format!("error: cannot resolve {}: {e}\n", path.display()),
            )
        })
}

/// The metrics file, absolute: its folder must exist (the collector's), the file need not.
fn metrics_file(file: &Path) -> Result<String, Outcome> {
    let name = file.file_name().ok_or_else(|| {
        Outcome::err(
            exit::INVALID_INPUT,
            format!("error: --metrics {}: not a file name\n", file.display()),
        )
    })?;
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok(Path::new(&absolute(dir)?).join(name).display().to_string())
}

fn options(cli: &Cli, model: &Model, args: &ScheduleArgs) -> Result<Options, Outcome> {
    if let Some(here) = &args.here
        && !model.inventory.hosts.contains_key(here)
    {
        return Err(Outcome::err(
            exit::INVALID_INPUT,
            format!("error: --here {here}: no such host in the inventory\n"),
        ));
    }
    let binary = match &args.binary {
        Some(b) => absolute(b)?,
        None => std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .map(|p| p.display().to_string())
            .map_err(|e| {
                Outcome::err(exit::IO, format!("error: cannot locate this binary: {e}\n"))
            })?,
    };
    let mut global_args = vec![
        "--inventory".to_string(),
        absolute(&cli.inventory)?,
        "--runbooks".to_string(),
        absolute(&cli.runbooks)?,
        "--state-dir".to_string(),
        absolute(&cli.state_dir)?,
    ];
    for overlay in &cli.overlays {
        global_args.push("--overlay".to_string());
        global_args.push(absolute(overlay)?);
    }
    Ok(Options {
        binary,
        workdir: absolute(Path::new("."))?,
        global_args,
        here: args.here.clone(),
        user: args.user.clone(),
        check_at: args.check_at.clone(),
        keep_connected: args.keep_connected,
        metrics: match &args.metrics {
            // Refused now, not by every run of the timer.
            Some(file) if let Some(why) = crate::cli::overwrites_an_input(cli, file) => {
                return Err(Outcome::err(
                    crate::exit::USAGE,
                    format!("error: --metrics: {why}\n"),
                ));
            }
            Some(file) => Some(metrics_file(file)?),
            None => None,
        },
    })
}

/// `reprise schedule`.
pub fn schedule(cli: &Cli, model: &Model, args: &ScheduleArgs) -> Outcome {
    let opts = match options(cli, model, args) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let jobs = schedule::jobs(model, &opts);
    let files: Vec<(PathBuf, String)> = if args.cron {
        vec![(
            PathBuf::from("/etc/cron.d/reprise"),
            schedule::cron_file(&jobs, &opts),
        )]
    } else {
        schedule::systemd_units(&jobs, &opts)
            .into_iter()
            .map(|(name, text)| (args.dir.join(name), text))
            .collect()
    };
    if !args.install {
        let mut out = String::new();
        for (path, text) in &files {
            out.push_str(&format!("# ---- {}\n{text}\n", path.display()));
        }
        return Outcome::ok(out);
    }
    // Units of an earlier install that this one does not write would start a job a second
    // way (a timer starting the long-running service of its name, a long-running service left
    // enabled beside its new timer, a cadence no RPO needs any more): disabled first.
    let earlier = if args.cron {
        Vec::new()
    } else {
        earlier_units(&args.dir, &jobs)
    };
    for (path, text) in &files {
        let tmp = path.with_extension("reprise-tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Outcome::err(
                exit::IO,
                format!("error: cannot write {}: {e}\n", path.display()),
            );
        }
    }
    let mut out: String = files
        .iter()
        .map(|(p, _)| format!("wrote {}\n", p.display()))
        .collect();
    if !args.cron {
        let name = |long: bool, suffix: &str| -> Vec<String> {
            jobs.iter()
                .filter(|j| j.long_running == long)
                .map(|j| format!("{}.{suffix}", j.name))
                .collect()
        };
        let (timers, services) = (name(false, "timer"), name(true, "service"));
        // A long-running service already running is restarted, so that its new command
        // line runs (a round it cuts is merged back and taken again at once).
        let services = match services.is_empty() {
            true => String::new(),
            false => format!(
                " && systemctl enable {0} && systemctl restart {0}",
                services.join(" ")
            ),
        };
        out.push_str(&format!(
            "now run: {}systemctl daemon-reload && systemctl enable --now {}{services}\n",
            earlier.concat(),
            timers.join(" ")
        ));
    }
    Outcome::ok(out)
}

/// The commands that take away the units of `dir` written by an earlier `reprise schedule`
/// that `jobs` do not write as they are: each ends with ` && `.
fn earlier_units(dir: &Path, jobs: &[crate::schedule::Job]) -> Vec<String> {
    let written = |file: &str| {
        jobs.iter().any(|j| {
            file == format!("{}.service", j.name)
                || (!j.long_running && file == format!("{}.timer", j.name))
        })
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
        .filter(|(name, _)| name.starts_with("reprise-"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for (file, path) in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let long_running = text.starts_with("# Written by `reprise schedule --keep-connected`.");
        if !long_running && !text.starts_with("# Written by `reprise schedule`.") {
            continue;
        }
        let quoted = crate::template::shell_quote(&path.display().to_string());
        if file.ends_with(".timer") && !written(&file) {
            out.push(format!(
                "systemctl disable --now {file} && rm -f -- {quoted} && "
            ));
        } else if file.ends_with(".service") && long_running {
            // Its name may be written again as a one-shot of a timer, or not at all.
            let again_long = jobs
                .iter()
                .any(|j| j.long_running && file == format!("{}.service", j.name));
            if !again_long {
                out.push(format!("systemctl disable --now {file} && "));
                if !written(&file) {
                    out.push(format!("rm -f -- {quoted} && "));
                }
            }
        } else if file.ends_with(".service") && !written(&file) {
            out.push(format!("rm -f -- {quoted} && "));
        }
    }
    out
}

/// `reprise completions SHELL`: the completion script, generated from the command line's
/// definition.
pub fn completions(shell: Shell) -> Outcome {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    let generator = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(generator, &mut cmd, "reprise", &mut out);
    Outcome::ok(String::from_utf8_lossy(&out).to_string())
}

/// `reprise manpage`: reprise(1) in roff, generated from the command line's definition.
pub fn manpage() -> Outcome {
    let mut out = Vec::new();
    match clap_mangen::Man::new(Cli::command()).render(&mut out) {
        Ok(()) => Outcome::ok(String::from_utf8_lossy(&out).to_string()),
        Err(e) => Outcome::err(
            exit::IO,
            format!("error: cannot render the man page: {e}\n"),
        ),
    }
}
