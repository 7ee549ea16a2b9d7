//! `reprise check`: would a recovery work now?
//!
//! One short SSH conversation per host, all hosts at once: the host key must be known, the clock
//! is read, the tools the plans' commands call are looked up with `command -v`, and the replica
//! copies, their sources and the free space around them are measured. Then, without touching any
//! host, every mode is planned (the runbooks are valid) and the emergency failover's estimated
//! RTO is compared with each service's target.
//!
//! Gathering ([`probe_hosts`]) is apart from judging ([`evaluate`]), a pure function of what was
//! gathered, so the rules are unit-tested without hosts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Utc};

pub use crate::duration::human_secs;
use crate::model::Model;
use crate::plan::{self, Action, Plan, PlanOptions};
use crate::readiness::{ItemStatus, Readiness, ReadinessItem};
use crate::runbook::{Mode, ReplicaSource, StepKind};
use crate::ssh::Transport;
use crate::template::shell_quote;

/// How strict the check is.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Largest accepted difference between a host's clock and this machine's, in seconds.
    pub clock_tolerance_s: f64,
    /// The secrets (environment variables) set in reprise's environment; [`check`] reads them.
    pub secrets_set: BTreeSet<String>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            clock_tolerance_s: 5.0,
            secrets_set: BTreeSet::new(),
        }
    }
}

/// How much a drill copy is expected to write into its overlays: a tenth of each copy it is
/// backed by, and at least [`OVERLAY_FLOOR`] per disk (a booted guest writes its logs,
/// temporary files and journals there for the length of the drill).
pub fn overlay_estimate(copy_bytes: u64) -> u64 {
    (copy_bytes / 10).max(OVERLAY_FLOOR)
}

/// The least a drill overlay is counted for.
pub const OVERLAY_FLOOR: u64 = 64 << 20;

/// The secrets the plans' and hooks' commands read, each with the first step that needs it.
pub fn secrets_needed(plans: &Plans) -> BTreeMap<String, String> {
    let mut needed = BTreeMap::new();
    let mut add = |cmd: &crate::template::Command, what: &str| {
        for name in cmd.secrets() {
            needed
                .entry(name.to_string())
                .or_insert_with(|| what.to_string());
        }
    };
    for plan in plans.ok() {
        for step in &plan.steps {
            match &step.action_spec {
                Action::Exec { run, verify, undo } => {
                    for cmd in std::iter::once(run).chain(verify).chain(undo) {
                        add(cmd, &step.id);
                    }
                }
                Action::Probe { run, .. } | Action::Lag { run, .. } => add(run, &step.id),
                Action::Replicate {
                    snapshot: Some(hooks),
                    ..
                } => {
                    add(&hooks.check, &step.id);
                    add(&hooks.end, &step.id);
                }
                _ => {}
            }
            if let Some(before) = &step.state_before {
                add(before, &step.id);
            }
        }
    }
    for d in &plans.drills {
        if let Some((_, cmd)) = &d.network {
            add(cmd, &format!("drill-network-check of vm {}", d.vm));
        }
    }
    needed
}

/// A copy kept on the recovery side: a vm disk or a backup set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaTarget {
    /// `vm dc1` or `backup erp-dumps`.
    pub what: String,
    /// The service whose RPO applies, with the target in seconds.
    pub service: Option<String>,
    pub rpo_s: Option<u64>,
    pub from_host: String,
    pub source: String,
    pub to_host: String,
    pub copy: String,
    /// A directory (backup set) rather than a file (disk image).
    pub dir: bool,
}

/// Size and age of a file or directory on a host (for a directory: total size, newest file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStat {
    pub bytes: u64,
    /// Modification time, Unix seconds.
    pub mtime: i64,
}

/// Free space of the filesystem holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    pub avail: u64,
    /// Where the filesystem is mounted: copies on one filesystem share its free space.
    pub mount: String,
}

/// What one host told.
#[derive(Debug, Clone, Default)]
pub struct HostProbe {
    /// Why it could not be reached (connection, host key, login).
    pub error: Option<String>,
    pub endpoint: String,
    /// Its clock minus this machine's, in seconds, and the uncertainty (half the round trip).
    pub skew_s: Option<(f64, f64)>,
    pub missing_tools: Vec<String>,
    pub found_tools: Vec<String>,
    /// Paths asked for; `None` when absent.
    pub stats: HashMap<String, Option<PathStat>>,
    /// Free space by path asked for.
    pub space: HashMap<String, Space>,
    /// What the copies asked for and their metadata say (read by the replication helper).
    pub copies: HashMap<String, crate::replica::CopyState>,
    /// Why the copies could not be read.
    pub copies_error: Option<String>,
    /// Per vm whose driver can tell: the replication snapshot overlays left on this host, or
    /// why the driver's check failed.
    pub snapshots: HashMap<String, Result<Vec<String>, String>>,
    /// Per drill network: what the driver's `drill-network-check` said, and its exit status.
    pub drill_networks: HashMap<String, (Vec<String>, Option<i32>)>,
}

/// What each host must be asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostQuestions {
    pub tools: BTreeSet<String>,
    pub files: BTreeSet<String>,
    pub dirs: BTreeSet<String>,
    /// Paths whose filesystem's free space matters.
    pub space: BTreeSet<String>,
    /// Copies whose replica points and metadata are read (by the replication helper).
    pub copies: BTreeSet<String>,
    /// The drivers' `replicate-check` of the vms whose primary this host is, by vm.
    pub snapshots: BTreeMap<String, crate::template::Command>,
    /// The drivers' `drill-network-check` of the drill networks on this host, by network.
    pub drill_networks: BTreeMap<String, crate::template::Command>,
}

/// The plans a recovery may need, each built from the model: the check's view of the runbooks.
pub struct Plans {
    /// (label, plan or the errors rendered).
    pub by_mode: Vec<(String, Result<Plan, String>)>,
    /// Commands run outside plans: the drivers' snapshot hooks of `reprise replicate` and
    /// their drill network checks, as (host, what, command).
    pub hooks: Vec<(String, String, String)>,
    /// The drill copies a drill starts: each on its recovery host, with its driver's
    /// `drill-network-check` there (when it has one).
    pub drills: Vec<DrillStart>,
}

/// A drill copy a drill starts: where, on which copies, and how its network is checked.
#[derive(Debug, Clone)]
pub struct DrillStart {
    pub vm: String,
    pub host: String,
    /// The recovery copies its overlays are backed by.
    pub copies: Vec<String>,
    /// The folder of the recovery host its driver's `drill-start` puts the overlays in: its
    /// `overlays_dir`, or its `images_dir` for a driver that keeps them among the vm disks
    /// (Proxmox's storage), with the name of that variable.
    pub overlays_dir: Option<(String, &'static str)>,
    /// The drill network's name and the driver's check of it.
    pub network: Option<(String, crate::template::Command)>,
}

impl Plans {
    pub fn build(model: &Model) -> Plans {
        let modes = [
            ("drill", Mode::Drill, false),
            ("planned failover", Mode::Failover, false),
            ("emergency failover", Mode::Failover, true),
            ("restore", Mode::Restore, false),
            ("failback", Mode::Failback, false),
        ];
        let by_mode: Vec<(String, Result<Plan, String>)> = modes
            .iter()
            .map(|(label, mode, emergency)| {
                let mut opts = PlanOptions::new(*mode);
                opts.emergency = *emergency;
                opts.run_id = "check".to_string();
                let plan = plan::build(model, &opts).map_err(|e| model.report(e).render());
                (label.to_string(), plan)
            })
            .collect();
        let mut hooks = Vec::new();
        for vm in model.inventory.vms.values() {
            for action in ["replicate-check", "replicate-begin", "replicate-end"] {
                if let Some((host, cmd)) = plan::replicate_hook(model, vm, action) {
                    hooks.push((host, format!("{action} of vm {}", vm.id), cmd.to_string()));
                }
            }
        }
        let drills = drill_starts(model, &by_mode);
        for d in &drills {
            if let Some((_, cmd)) = &d.network {
                hooks.push((
                    d.host.clone(),
                    format!("drill-network-check of vm {}", d.vm),
                    cmd.to_string(),
                ));
            }
        }
        Plans {
            by_mode,
            hooks,
            drills,
        }
    }

    /// The plan of a planned failover, when it plans.
    pub fn planned_failover(&self) -> Option<&Plan> {
        self.by_mode
            .iter()
            .find(|(l, _)| l == "planned failover")
            .and_then(|(_, p)| p.as_ref().ok())
    }

    fn ok(&self) -> impl Iterator<Item = &Plan> {
        self.by_mode.iter().filter_map(|(_, p)| p.as_ref().ok())
    }

    fn emergency(&self) -> Option<&Plan> {
        self.by_mode
            .iter()
            .find(|(l, _)| l == "emergency failover")
            .and_then(|(_, p)| p.as_ref().ok())
    }
}

/// The drill copies the drill plan starts (its `drill-start` steps on recovery copies).
fn drill_starts(model: &Model, by_mode: &[(String, Result<Plan, String>)]) -> Vec<DrillStart> {
    let inv = &model.inventory;
    let Some(drill) = by_mode
        .iter()
        .find(|(l, _)| l == "drill")
        .and_then(|(_, p)| p.as_ref().ok())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for step in &drill.steps {
        let Some(used) = step
            .replica
            .as_ref()
            .filter(|r| r.role == plan::ReplicaRole::DrillStart)
        else {
            continue;
        };
        let (Some(vm), Some(service)) = (inv.vms.get(&used.vm), inv.services.get(&step.service))
        else {
            continue;
        };
        let host = inv.hosts.get(&used.host);
        let var = |name: &str| match host.and_then(|h| h.vars.get(name)) {
            Some(crate::inventory::VarValue::Text(t)) => Some(t.clone()),
            Some(crate::inventory::VarValue::Secret { .. }) => None,
            None => crate::inventory::var_default(name, Some(&vm.driver.value)).map(String::from),
        };
        let network = plan::vm_action_command(
            model,
            service,
            vm,
            crate::runbook::Side::Recovery,
            "drill-network-check",
            "check",
        )
        .and_then(|(_, cmd)| var("drill_network").map(|name| (name, cmd)));
        out.push(DrillStart {
            vm: vm.id.clone(),
            host: used.host.clone(),
            copies: used.paths.clone(),
            overlays_dir: overlays_var(inv, vm)
                .and_then(|name| Some((var(name)?.trim_end_matches('/').to_string(), name))),
            network,
        });
    }
    out
}

/// The host variable naming the folder `vm`'s driver puts drill overlays in: `overlays_dir`
/// when its `drill-start` names it, else `images_dir` when it names that one.
fn overlays_var(
    inv: &crate::inventory::Inventory,
    vm: &crate::inventory::Vm,
) -> Option<&'static str> {
    let start = inv
        .drivers
        .get(&vm.driver.value)?
        .actions
        .get("drill-start")?;
    let names = |var: &str| {
        start.value.split("{{").skip(1).any(|t| {
            t.split("}}")
                .next()
                .is_some_and(|e| e.trim() == format!("host.{var}"))
        })
    };
    ["overlays_dir", "images_dir"]
        .into_iter()
        .find(|v| names(v))
}

/// Shell words that are not programs to look for.
const NOT_TOOLS: &[&str] = &[
    "!", "{", "}", "(", ")", "[", "[[", "]]", ":", ".", "if", "then", "else", "elif", "fi", "for",
    "while", "until", "do", "done", "case", "esac", "in", "function", "time", "set", "cd", "echo",
    "exit", "true", "false", "export", "local", "read", "printf", "test", "return", "shift",
    "eval", "exec", "wait", "trap", "unset", "break", "continue", "source", "command", "type",
    "umask", "ulimit", "alias", "let", "declare", "readonly", "pwd", "kill",
];

/// Programs that run the command given after their own options (and, for `timeout`, a
/// duration; for `env`, assignments): with the options that take a value.
const WRAPPERS: &[(&str, &[&str])] = &[
    ("timeout", &["-s", "--signal", "-k", "--kill-after"]),
    ("env", &["-u", "--unset", "-C", "--chdir"]),
    ("nice", &["-n", "--adjustment"]),
    ("nohup", &[]),
    ("setsid", &[]),
    ("sudo", &["-u", "--user", "-g", "--group"]),
    ("exec", &["-a"]),
    ("ionice", &["-c", "--class", "-n", "--classdata"]),
    ("flock", &["-w", "--timeout", "-E", "--conflict-exit-code"]),
];

/// Shells whose `-c` script is read for the programs it calls.
const SHELLS: &[&str] = &["sh", "bash", "dash"];

/// Where a wrapper's command is, while its arguments are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrapped {
    /// Reading the options of the wrapper at this index of [`WRAPPERS`].
    Options(usize),
    /// The next word is the option's value.
    Value(usize),
    /// `flock FILE` or `timeout DURATION`: one operand before the command.
    Operand,
}

/// The programs a shell command calls: the first word of each simple command (after
/// separators, pipes, `do`, `then`, `!`…), and the command a wrapper runs (`timeout 300 cmd`,
/// `env X=1 cmd`, `nohup`, `setsid`, `sudo`, `exec`, `flock FILE cmd`), skipping assignments,
/// redirections, builtins, shell functions the command defines, arithmetic (`$((…))`,
/// `((…))`), `case` patterns, here-documents and anything computed. The script of `sh -c '…'`
/// or `bash -c '…'` is read the same way; other quoted strings are not looked into; command
/// substitutions (`$(…)`) are.
pub fn command_words(cmd: &str) -> Vec<String> {
    command_words_at(cmd, 0)
}

fn command_words_at(cmd: &str, depth: usize) -> Vec<String> {
    let chars: Vec<char> = cmd.chars().collect();
    let mut words = Vec::new();
    let mut functions: Vec<String> = Vec::new();
    let mut at_start = true;
    // After a wrapper (`timeout 300 cmd`): its options, then its command.
    let mut wrapped: Option<Wrapped> = None;
    // After `sh` or `bash` (in command position): whether `-c` was seen.
    let mut shell: Option<bool> = None;
    // After `for` or `case`, words are data until the next separator.
    let mut skipping = false;
    // Open `case` statements, and whether a pattern (`a|b)`) comes next.
    let mut cases = 0usize;
    let mut pattern_next = false;
    // Here-documents announced on this line: their bodies start at the next new line.
    let mut heredocs: Vec<(String, bool)> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if pattern_next && cases > 0 {
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            if starts_word(&chars, i, "esac") {
                cases -= 1;
                pattern_next = false;
                at_start = false;
                i += 4;
                continue;
            }
            // Up to and past the `)` that closes the pattern.
            i = skip_past(&chars, i, ')');
            pattern_next = false;
            at_start = true;
            continue;
        }
        match c {
            ' ' | '\t' => {
                i += 1;
            }
            '\n' => {
                i += 1;
                for (delim, strip_tabs) in std::mem::take(&mut heredocs) {
                    i = skip_heredoc(&chars, i, &delim, strip_tabs);
                }
                at_start = true;
                skipping = false;
            }
            '(' if at_start && wrapped.is_none() && chars.get(i + 1) == Some(&'(') => {
                // An arithmetic command: `(( n++ ))`.
                i = skip_arithmetic(&chars, i);
                at_start = false;
            }
            '&' if (i > 0 && matches!(chars[i - 1], '>' | '<'))
                || chars.get(i + 1) == Some(&'>') =>
            {
                // A redirection (`2>&1`, `<&3`, `&>/dev/null`), not a command separator: its
                // target is no program.
                let (_, _, next) = read_word(&chars, i + 1, &mut heredocs);
                i = next.max(i + 1);
            }
            ';' | '&' | '|' | '(' | ')' | '{' | '}' | '`' => {
                wrapped = None;
                shell = None;
                if c == ';' && chars.get(i + 1) == Some(&';') && cases > 0 {
                    // The end of a `case` branch: a pattern comes next.
                    pattern_next = true;
                    i += 1;
                }
                at_start = true;
                skipping = false;
                i += 1;
            }
            _ => {
                let start = i;
                let (word, opaque, next) = read_word(&chars, i, &mut heredocs);
                i = next;
                if let Some(seen_c) = shell {
                    // `sh -c 'script'`: the script's programs; the rest are its arguments.
                    if !seen_c {
                        if word == "-c" {
                            shell = Some(true);
                        } else if !word.starts_with('-') || opaque {
                            shell = None;
                        }
                        continue;
                    }
                    shell = None;
                    if depth < 4 {
                        let raw: String = chars[start..i].iter().collect();
                        if let Some(script) = unquote(&raw) {
                            words.extend(command_words_at(&script, depth + 1));
                        }
                    }
                    continue;
                }
                if let Some(state) = wrapped {
                    match state {
                        Wrapped::Value(w) => {
                            wrapped = Some(Wrapped::Options(w));
                            continue;
                        }
                        Wrapped::Options(w) if word.starts_with('-') && !opaque => {
                            let takes_value = WRAPPERS[w].1.contains(&word.as_str());
                            wrapped = Some(if takes_value {
                                Wrapped::Value(w)
                            } else {
                                Wrapped::Options(w)
                            });
                            continue;
                        }
                        Wrapped::Options(w) if matches!(WRAPPERS[w].0, "timeout" | "flock") => {
                            // The duration, or the lock file: the command comes next.
                            wrapped = Some(Wrapped::Operand);
                            continue;
                        }
                        Wrapped::Options(w) if WRAPPERS[w].0 == "env" && is_assignment(&word) => {
                            continue;
                        }
                        Wrapped::Options(_) | Wrapped::Operand => {
                            // The wrapped command: in command position.
                            wrapped = None;
                            at_start = true;
                        }
                    }
                }
                // `name()`: a function definition; its calls are not programs.
                let mut j = i;
                while j < chars.len() && (chars[j] == ' ' || chars[j] == '\t') {
                    j += 1;
                }
                if at_start
                    && !opaque
                    && chars.get(j) == Some(&'(')
                    && chars.get(j + 1) == Some(&')')
                {
                    functions.push(word);
                    i = j + 2;
                    at_start = true;
                    continue;
                }
                if !at_start || skipping {
                    if skipping && word == "in" && cases > 0 {
                        pattern_next = true;
                        skipping = false;
                    }
                    continue;
                }
                if is_assignment(&word) {
                    // An assignment before the command: the command comes next.
                    continue;
                }
                if word.starts_with(|c: char| c.is_ascii_digit()) && word.contains('>') {
                    continue;
                }
                if word == "for" || word == "case" {
                    skipping = true;
                    if word == "case" {
                        cases += 1;
                    }
                    continue;
                }
                if word == "esac" {
                    cases = cases.saturating_sub(1);
                    pattern_next = false;
                }
                if word == "function" {
                    // `function name { … }`: the next word is a name, not a program.
                    let (name, _, next) = read_word(&chars, skip_blanks(&chars, i), &mut heredocs);
                    functions.push(name);
                    i = next;
                    continue;
                }
                if word == "exec" || word == "command" {
                    // `exec cmd` runs cmd; `command cmd` too, but `command -v cmd` only looks.
                    let (peek, _, _) = read_word(&chars, skip_blanks(&chars, i), &mut Vec::new());
                    if word == "exec" || !peek.starts_with('-') {
                        wrapped = Some(Wrapped::Options(
                            WRAPPERS.iter().position(|(w, _)| *w == "exec").unwrap_or(0),
                        ));
                    }
                    at_start = false;
                    continue;
                }
                if NOT_TOOLS.contains(&word.as_str()) {
                    // Keywords keep the next word in command position.
                    at_start = matches!(
                        word.as_str(),
                        "!" | "if" | "then" | "else" | "elif" | "while" | "until" | "do" | "time"
                    );
                    continue;
                }
                at_start = false;
                if !opaque
                    && !word.is_empty()
                    && word
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._+-/".contains(c))
                    && !word.starts_with('-')
                {
                    let base = word.rsplit('/').next().unwrap_or(&word).to_string();
                    if let Some(w) = WRAPPERS.iter().position(|(name, _)| *name == base) {
                        wrapped = Some(Wrapped::Options(w));
                    } else if SHELLS.contains(&base.as_str()) {
                        shell = Some(false);
                    }
                    words.push(word);
                }
            }
        }
    }
    words.retain(|w| !functions.contains(w));
    words
}

/// The text of a word that is one quoted string (`'…'`, or `"…"` with nothing computed in it).
fn unquote(raw: &str) -> Option<String> {
    if raw.len() >= 2 && raw.starts_with('\'') && raw.ends_with('\'') {
        let inner = &raw[1..raw.len() - 1];
        return (!inner.contains('\'')).then(|| inner.to_string());
    }
    if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        let inner = &raw[1..raw.len() - 1];
        if inner.contains(['$', '`']) {
            return None;
        }
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(n @ ('"' | '\\')) => out.push(n),
                    Some(n) => {
                        out.push('\\');
                        out.push(n);
                    }
                    None => return None,
                }
            } else if c == '"' {
                return None;
            } else {
                out.push(c);
            }
        }
        return Some(out);
    }
    None
}

/// Reads one word from `i`: its text (quotes removed, computed parts kept as `$`), whether
/// anything in it was quoted or computed, and where it ends. A here-document operator in it
/// (`<<END`, `<<-'END'`) is noted for the next new line.
fn read_word(
    chars: &[char],
    mut i: usize,
    heredocs: &mut Vec<(String, bool)>,
) -> (String, bool, usize) {
    let mut word = String::new();
    let mut opaque = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || ";&|()`".contains(c) {
            break;
        }
        match c {
            '\'' | '"' => {
                opaque = true;
                let quote = c;
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    if quote == '"' && chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '\\' => {
                opaque = true;
                i += 2;
            }
            '$' if chars.get(i + 1) == Some(&'(') && chars.get(i + 2) == Some(&'(') => {
                // Arithmetic, `$(( … ))`: a value, never a program.
                opaque = true;
                word.push('$');
                i = skip_arithmetic(chars, i + 1);
            }
            '<' if chars.get(i + 1) == Some(&'<') && chars.get(i + 2) != Some(&'<') => {
                opaque = true;
                word.push_str("<<");
                i += 2;
                let strip_tabs = chars.get(i) == Some(&'-');
                if strip_tabs {
                    i += 1;
                }
                i = skip_blanks(chars, i);
                // The delimiter, quoted or not (`'END'`, `"END"`, `\END`).
                let mut delim = String::new();
                while i < chars.len() && !chars[i].is_whitespace() && !";&|()<>".contains(chars[i])
                {
                    if !"'\"\\".contains(chars[i]) {
                        delim.push(chars[i]);
                    }
                    i += 1;
                }
                if !delim.is_empty() {
                    heredocs.push((delim, strip_tabs));
                }
            }
            '$' | '<' | '>' | '*' | '?' => {
                opaque = true;
                word.push(c);
                i += 1;
            }
            _ => {
                word.push(c);
                i += 1;
            }
        }
    }
    (word, opaque, i.min(chars.len()))
}

/// `NAME=value`: a variable assignment (the value may be quoted or computed).
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn skip_blanks(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
        i += 1;
    }
    i
}

fn starts_word(chars: &[char], i: usize, word: &str) -> bool {
    let w: Vec<char> = word.chars().collect();
    chars.len() >= i + w.len()
        && chars[i..i + w.len()] == w[..]
        && chars
            .get(i + w.len())
            .is_none_or(|c| c.is_whitespace() || ";&|()".contains(*c))
}

/// From a `((` at `i`, past its closing `))` (or to the end).
fn skip_arithmetic(chars: &[char], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < chars.len() {
        match chars[i] {
            '(' => depth += 1,
            ')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// From `i`, past the next `c` outside quotes (or to the end).
fn skip_past(chars: &[char], mut i: usize, c: char) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\'' | '"' => {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += 1;
                }
            }
            x if x == c => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// From the start of a here-document's body, past the line that ends it.
fn skip_heredoc(chars: &[char], mut i: usize, delim: &str, strip_tabs: bool) -> usize {
    while i < chars.len() {
        let end = chars[i..]
            .iter()
            .position(|&c| c == '\n')
            .map_or(chars.len(), |p| i + p);
        let line: String = chars[i..end].iter().collect();
        let line = if strip_tabs {
            line.trim_start_matches('\t')
        } else {
            line.as_str()
        };
        i = (end + 1).min(chars.len());
        if line.trim_end() == delim {
            break;
        }
    }
    i
}

/// Syntax of bash that `sh` lacks, with how it reads. Every command reprise runs on a host
/// (steps, checks, undos, driver actions) runs under `sh -c`, which is dash on Debian.
const BASH_ONLY: &[(&str, &str)] = &[
    ("/dev/tcp/", "/dev/tcp"),
    ("/dev/udp/", "/dev/udp"),
    ("[[", "`[[ … ]]`"),
    ("<(", "process substitution `<(…)`"),
    (">(", "process substitution `>(…)`"),
    ("<<<", "a here-string `<<<`"),
    (
        "&>",
        "`&>` (sh reads it as `&` then `>`: the command runs in the background)",
    ),
];

/// The bash syntax in a command that runs under `sh`, outside the scripts of `bash -c '…'`.
pub fn bash_only(cmd: &str) -> Option<&'static str> {
    let mut rest = cmd;
    let mut outside = String::new();
    while let Some(at) = rest.find("bash -c ") {
        outside.push_str(&rest[..at]);
        let after = rest[at + "bash -c ".len()..].trim_start();
        let Some(quote) = after.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            rest = after;
            continue;
        };
        match after[1..].find(quote) {
            Some(end) => rest = &after[end + 2..],
            None => {
                rest = "";
            }
        }
    }
    outside.push_str(rest);
    BASH_ONLY
        .iter()
        .find(|(marker, _)| outside.contains(marker))
        .map(|(_, what)| *what)
}

/// The texts of the commands the plans and hooks run on hosts: (host, step or hook, text).
fn host_commands(plans: &Plans) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for plan in plans.ok() {
        for step in &plan.steps {
            let Some(host) = &step.host else { continue };
            if let Action::Exec { .. } | Action::Probe { .. } | Action::Lag { .. } =
                &step.action_spec
            {
                for text in std::iter::once(&step.command)
                    .chain(step.verify.iter())
                    .chain(step.undo.iter())
                {
                    out.push((host.clone(), step.id.clone(), text.clone()));
                }
            }
        }
    }
    out.extend(plans.hooks.iter().cloned());
    out
}

/// Per host, the programs the plans' commands call there, with one step that needs each.
pub fn tools_by_host(plans: &Plans) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut tools: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (host, what, text) in host_commands(plans) {
        let needed = tools.entry(host).or_default();
        // Every command runs as `timeout … sh -c COMMAND` (see `ssh`).
        for wrapper in ["timeout", "sh"] {
            needed
                .entry(wrapper.to_string())
                .or_insert_with(|| "every command (run under `timeout … sh -c`)".to_string());
        }
        for word in command_words(&text) {
            needed.entry(word).or_insert_with(|| what.clone());
        }
    }
    tools
}

/// Every replica copy of the inventory, with the RPO that applies to it.
pub fn replica_targets(model: &Model) -> Vec<ReplicaTarget> {
    let inv = &model.inventory;
    let images_dir = |host: &str| plan::images_dir_of(inv, host);
    let mut targets = Vec::new();
    for vm in inv.vms.values() {
        let (service, rpo_s) = copy_rpo(model, Replicated::Vm(&vm.id));
        let (Some(src), Some(dst)) = (
            images_dir(&vm.primary.value),
            images_dir(&vm.recovery.value),
        ) else {
            continue;
        };
        for disk in &vm.disks {
            targets.push(ReplicaTarget {
                what: format!("vm {} ({disk})", vm.id),
                service: service.clone(),
                rpo_s,
                from_host: vm.primary.value.clone(),
                source: format!("{src}/{disk}"),
                to_host: vm.recovery.value.clone(),
                copy: format!("{dst}/{disk}"),
                dir: false,
            });
        }
    }
    for set in inv.backups.values() {
        let (service, rpo_s) = copy_rpo(model, Replicated::Backup(&set.id));
        targets.push(ReplicaTarget {
            what: format!("backup {}", set.id),
            service,
            rpo_s,
            from_host: set.source_host.value.clone(),
            source: set.source_path.clone(),
            to_host: set.dest_host.value.clone(),
            copy: set.dest_path.clone(),
            dir: true,
        });
    }
    targets
}

/// Something replicated: a vm or a backup set, by id.
#[derive(Debug, Clone, Copy)]
pub enum Replicated<'a> {
    Vm(&'a str),
    Backup(&'a str),
}

/// The services whose runbooks act on a vm (replicate or start it) or replicate a backup set.
pub fn runbook_services<'m>(
    model: &'m Model,
    what: Replicated<'_>,
) -> Vec<&'m crate::inventory::Service> {
    model
        .runbooks
        .by_service
        .iter()
        .filter(|(_, books)| {
            books
                .values()
                .flat_map(|b| &b.steps)
                .any(|step| match (&step.kind, what) {
                    (
                        StepKind::Replicate {
                            source: ReplicaSource::Backup(b),
                        },
                        Replicated::Backup(id),
                    ) => b.value == id,
                    (
                        StepKind::Replicate {
                            source: ReplicaSource::Vm(v),
                        }
                        | StepKind::Vm { vm: Some(v), .. },
                        Replicated::Vm(id),
                    ) => v.value == id,
                    _ => false,
                })
        })
        .filter_map(|(service, _)| model.inventory.services.get(service))
        .collect()
}

/// The service whose RPO target a replicated vm or backup set answers to: the strictest of
/// the services placed on the vm, or (for a vm that is no service's own, such as a second
/// domain controller, and for a backup set) of the services whose runbooks act on it or
/// replicate it. A service its application replicates never lends its RPO to a disk copy:
/// its failover does not start from one (its lag is judged instead). `reprise check` and
/// `reprise status` judge replica ages by it, unless the vm has an `rpo` of its own
/// ([`copy_rpo`]).
pub fn rpo_service<'m>(
    model: &'m Model,
    what: Replicated<'_>,
) -> Option<&'m crate::inventory::Service> {
    let inv = &model.inventory;
    let by_disk = |s: &&crate::inventory::Service| s.lag().is_none();
    let candidates: Vec<&crate::inventory::Service> = match what {
        Replicated::Vm(id) => {
            let placed: Vec<_> = inv
                .services
                .values()
                .filter(|s| s.vm() == Some(id))
                .filter(by_disk)
                .collect();
            if placed.is_empty() {
                runbook_services(model, what)
                    .into_iter()
                    .filter(by_disk)
                    .collect()
            } else {
                placed
            }
        }
        Replicated::Backup(_) => runbook_services(model, what)
            .into_iter()
            .filter(by_disk)
            .collect(),
    };
    // The strictest target; a service without one only when none has one.
    candidates
        .into_iter()
        .min_by_key(|s| s.rpo.map(|d| d.secs()).unwrap_or(u64::MAX))
}

/// The RPO a replicated vm's or backup set's copies are judged against, and whose it is
/// (`service S` or `vm V`): the vm's own `rpo` when it has one, else [`rpo_service`]'s.
pub fn copy_rpo(model: &Model, what: Replicated<'_>) -> (Option<String>, Option<u64>) {
    if let Replicated::Vm(id) = what
        && let Some(rpo) = model.inventory.vms.get(id).and_then(|v| v.rpo)
    {
        return (Some(format!("vm {id}")), Some(rpo.secs()));
    }
    match rpo_service(model, what) {
        Some(s) => (Some(s.id.clone()), s.rpo.map(|d| d.secs())),
        None => (None, None),
    }
}

/// The hosts to ask, and what: every host the plans use, and every end of a replica.
pub fn questions(
    model: &Model,
    plans: &Plans,
    replicas: &[ReplicaTarget],
) -> BTreeMap<String, HostQuestions> {
    let mut q: BTreeMap<String, HostQuestions> = BTreeMap::new();
    for plan in plans.ok() {
        for step in &plan.steps {
            if let Some(h) = &step.host {
                q.entry(h.clone()).or_default();
            }
        }
    }
    for (host, tools) in tools_by_host(plans) {
        q.entry(host).or_default().tools = tools.into_keys().collect();
    }
    for r in replicas {
        for (host, path) in [(&r.from_host, &r.source), (&r.to_host, &r.copy)] {
            let entry = q.entry(host.clone()).or_default();
            let paths = if r.dir {
                &mut entry.dirs
            } else {
                &mut entry.files
            };
            paths.insert(path.clone());
        }
        let entry = q.entry(r.to_host.clone()).or_default();
        entry.space.insert(r.copy.clone());
        entry.copies.insert(r.copy.clone());
    }
    for vm in model.inventory.vms.values() {
        if let Some((host, cmd)) = plan::replicate_hook(model, vm, "replicate-check") {
            q.entry(host)
                .or_default()
                .snapshots
                .insert(vm.id.clone(), cmd);
        }
    }
    for d in &plans.drills {
        let entry = q.entry(d.host.clone()).or_default();
        if let Some((name, cmd)) = &d.network {
            entry.drill_networks.insert(name.clone(), cmd.clone());
        }
        if let Some((dir, _)) = &d.overlays_dir {
            entry.space.insert(dir.clone());
        }
        entry.files.extend(d.copies.iter().cloned());
    }
    // Hosts of the inventory no plan uses are still worth knowing about.
    for host in model.inventory.hosts.keys() {
        q.entry(host.clone()).or_default();
    }
    q
}

/// The shell script that answers a host's questions, one tab-separated line per answer.
pub fn probe_script(q: &HostQuestions) -> String {
    let list = |set: &BTreeSet<String>| {
        set.iter()
            .map(|s| shell_quote(s))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = String::from("LC_ALL=C; export LC_ALL\n");
    if !q.tools.is_empty() {
        s.push_str(&format!(
            "for t in {}; do if command -v \"$t\" >/dev/null 2>&1; then printf 'tool\\t%s\\tok\\n' \"$t\"; else printf 'tool\\t%s\\tmissing\\n' \"$t\"; fi; done\n",
            list(&q.tools)
        ));
    }
    if !q.files.is_empty() {
        s.push_str(&format!(
            "for p in {}; do if [ -f \"$p\" ]; then printf 'file\\t%s\\t%s\\n' \"$p\" \"$(stat -c '%s %Y' -- \"$p\")\"; else printf 'file\\t%s\\tabsent\\n' \"$p\"; fi; done\n",
            list(&q.files)
        ));
    }
    if !q.dirs.is_empty() {
        s.push_str(&format!(
            "for p in {}; do if [ -d \"$p\" ]; then printf 'dir\\t%s\\t%s %s\\n' \"$p\" \"$(du -skL -- \"$p\" | cut -f1)\" \"$(find \"$p\" -type f -printf '%T@\\n' | sort -n | tail -n 1 | cut -d. -f1)\"; else printf 'dir\\t%s\\tabsent\\n' \"$p\"; fi; done\n",
            list(&q.dirs)
        ));
    }
    for (vm, cmd) in &q.snapshots {
        // Secrets are not read here: a check that needs one says so.
        let text = cmd
            .expose(|n| std::env::var(n).ok())
            .unwrap_or_else(|missing| format!("echo 'secret {missing} is not set' >&2; exit 2"));
        s.push_str(&format!(
            "o=$(sh -c {} 2>&1); r=$?; printf '%s\\n' \"$o\" | while IFS= read -r l; do printf 'snapshot\\t%s\\t%s\\n' {} \"$l\"; done; printf 'snapshotrc\\t%s\\t%s\\n' {} \"$r\"\n",
            shell_quote(&text),
            shell_quote(vm),
            shell_quote(vm)
        ));
    }
    for (net, cmd) in &q.drill_networks {
        let text = cmd
            .expose(|n| std::env::var(n).ok())
            .unwrap_or_else(|missing| format!("echo 'secret {missing} is not set' >&2; exit 2"));
        s.push_str(&format!(
            "o=$(sh -c {} 2>&1); r=$?; printf '%s\\n' \"$o\" | while IFS= read -r l; do printf 'drillnet\\t%s\\t%s\\n' {} \"$l\"; done; printf 'drillnetrc\\t%s\\t%s\\n' {} \"$r\"\n",
            shell_quote(&text),
            shell_quote(net),
            shell_quote(net)
        ));
    }
    if !q.space.is_empty() {
        s.push_str(&format!(
            "for p in {}; do d=$p; while [ ! -e \"$d\" ] && [ \"$d\" != / ]; do d=$(dirname -- \"$d\"); done; printf 'space\\t%s\\t%s\\n' \"$p\" \"$(df -Pk -- \"$d\" | awk 'NR==2 {{print $3, $4, $6}}')\"; done\n",
            list(&q.space)
        ));
    }
    s.push_str("echo end\n");
    s
}

/// Reads the answers of [`probe_script`] into `probe`. A number the host sends that cannot
/// be right (not a number, or a size that overflows) makes the probe fail with the line,
/// rather than be read as something else. Returns whether the answers were complete.
pub fn parse_answers(text: &str, probe: &mut HostProbe) -> bool {
    let mut complete = false;
    for line in text.lines() {
        if line == "end" {
            complete = true;
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let (Some(kind), Some(path), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mut parsed = Ok(());
        match kind {
            "tool" if value == "ok" => probe.found_tools.push(path.to_string()),
            "tool" => probe.missing_tools.push(path.to_string()),
            "file" | "dir" => match path_stat(kind == "dir", value) {
                Ok(stat) => {
                    probe.stats.insert(path.to_string(), stat);
                }
                Err(e) => parsed = Err(e),
            },
            "snapshot" => {
                if let Ok(found) = probe
                    .snapshots
                    .entry(path.to_string())
                    .or_insert_with(|| Ok(Vec::new()))
                {
                    found.extend(crate::replica::snapshot::overlays(value));
                    if !value.starts_with("overlay ") && !value.trim().is_empty() {
                        found.push(format!("!{value}"));
                    }
                }
            }
            "snapshotrc" => {
                let entry = probe
                    .snapshots
                    .entry(path.to_string())
                    .or_insert_with(|| Ok(Vec::new()));
                if value.trim() != "0" {
                    let said: Vec<String> = match entry {
                        Ok(lines) => lines
                            .iter()
                            .map(|l| l.trim_start_matches('!').to_string())
                            .collect(),
                        Err(_) => Vec::new(),
                    };
                    *entry = Err(format!(
                        "its driver's replicate-check exited with {}{}",
                        value.trim(),
                        if said.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", said.join("; "))
                        }
                    ));
                } else if let Ok(lines) = entry {
                    lines.retain(|l| !l.starts_with('!'));
                }
            }
            "drillnet" => {
                let entry = probe
                    .drill_networks
                    .entry(path.to_string())
                    .or_insert_with(|| (Vec::new(), None));
                if !value.trim().is_empty() && entry.0.len() < 20 {
                    entry.0.push(value.chars().take(300).collect());
                }
            }
            "drillnetrc" => {
                probe
                    .drill_networks
                    .entry(path.to_string())
                    .or_insert_with(|| (Vec::new(), None))
                    .1 = value.trim().parse().ok();
            }
            "space" => match space(value) {
                Ok(sp) => {
                    probe.space.insert(path.to_string(), sp);
                }
                Err(e) => parsed = Err(e),
            },
            _ => {}
        }
        if let Err(why) = parsed
            && probe.error.is_none()
        {
            let line: String = line.chars().take(200).collect();
            probe.error = Some(format!("it answered `{}`: {why}", line.escape_debug()));
        }
    }
    complete
}

/// `SIZE MTIME` of a file (bytes) or a folder (KiB, and the newest file's time, absent when
/// it holds none), or `absent`.
fn path_stat(dir: bool, value: &str) -> Result<Option<PathStat>, String> {
    if value == "absent" {
        return Ok(None);
    }
    let words: Vec<&str> = value.split_whitespace().collect();
    let (size, mtime) = match words.as_slice() {
        [size, mtime] => (*size, Some(*mtime)),
        [size] if dir => (*size, None),
        _ => return Err("expected a size and a time".into()),
    };
    let size = answer_number(size)?;
    let bytes = if dir {
        size.checked_mul(1024)
            .ok_or_else(|| format!("{size} KiB overflows"))?
    } else {
        size
    };
    let mtime = match mtime {
        Some(m) => i64::try_from(answer_number(m)?).map_err(|_| format!("time {m} overflows"))?,
        None => 0,
    };
    Ok(Some(PathStat { bytes, mtime }))
}

/// `USED AVAIL MOUNT` of `df -Pk`, in KiB. The filesystem's size is taken as used plus
/// available, as `df` computes its Use%: blocks reserved for root (5% of an ext4 by default)
/// are neither, and counting them as used made a disk look fuller than it is.
fn space(value: &str) -> Result<Space, String> {
    let mut f = value.splitn(3, ' ');
    let mut kib = |what: &str| -> Result<u64, String> {
        let n = answer_number(f.next().unwrap_or(""))?;
        n.checked_mul(1024)
            .ok_or_else(|| format!("{what} {n} KiB overflows"))
    };
    let used = kib("used")?;
    let avail = kib("free")?;
    let total = used
        .checked_add(avail)
        .ok_or_else(|| "used and free space overflow".to_string())?;
    Ok(Space {
        total,
        avail,
        mount: f.next().unwrap_or("").to_string(),
    })
}

fn answer_number(word: &str) -> Result<u64, String> {
    word.parse()
        .map_err(|_| format!("`{}` is not a whole number", word.escape_debug()))
}

fn now_secs() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_secs_f64()
}

/// Asks one host: reach it, read its clock, then its answers.
pub fn probe_host(transport: &dyn Transport, host: &str, q: &HostQuestions) -> HostProbe {
    let mut probe = HostProbe::default();
    let deadline = StdDuration::from_secs(60);
    // The answers first: this also opens the session, so the clock is read on a warm one
    // and the round trip is short.
    match transport.exec(host, &probe_script(q), deadline) {
        Ok(out) => {
            if !parse_answers(&out.stdout, &mut probe) {
                probe.error = Some(format!(
                    "the checks did not finish (exit {}): {}",
                    out.exit_code,
                    out.stderr.trim()
                ));
                return probe;
            }
            if probe.error.is_some() {
                return probe;
            }
        }
        Err(e) => {
            probe.error = Some(e.to_string());
            return probe;
        }
    }
    let before = now_secs();
    let started = Instant::now();
    if let Ok(out) = transport.exec(host, "date +%s.%N", deadline) {
        let rtt = started.elapsed().as_secs_f64();
        // A clock that is not a finite number is not read (a warning), never compared.
        if let Ok(remote) = out.stdout.trim().parse::<f64>()
            && remote.is_finite()
        {
            probe.skew_s = Some((remote - (before + rtt / 2.0), rtt / 2.0));
        }
    }
    probe
}

/// Asks every host at once; a host holding copies then has them read by the replication
/// helper (deployed there if needed), which reads their metadata as a run would.
pub fn probe_hosts(
    transport: &dyn Transport,
    questions: &BTreeMap<String, HostQuestions>,
) -> BTreeMap<String, HostProbe> {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let helpers = &helpers;
    std::thread::scope(|scope| {
        let handles: Vec<_> = questions
            .iter()
            .map(|(host, q)| {
                (
                    host.clone(),
                    scope.spawn(move || {
                        let mut probe = probe_host(transport, host, q);
                        if probe.error.is_none() && !q.copies.is_empty() {
                            let paths: Vec<String> = q.copies.iter().cloned().collect();
                            match helpers.inspect(host, &paths) {
                                Ok(states) => {
                                    probe.copies = paths.into_iter().zip(states).collect();
                                }
                                Err(e) => probe.copies_error = Some(e.to_string()),
                            }
                        }
                        probe
                    }),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(host, h)| {
                let probe = h.join().unwrap_or_else(|_| HostProbe {
                    error: Some("the check of this host stopped unexpectedly".to_string()),
                    ..HostProbe::default()
                });
                (host, probe)
            })
            .collect()
    })
}

fn item(area: &str, subject: &str, status: ItemStatus, detail: String) -> ReadinessItem {
    ReadinessItem {
        area: area.to_string(),
        subject: subject.to_string(),
        status,
        detail,
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Judges what was gathered. Pure: `now` is passed in.
pub fn evaluate(
    model: &Model,
    plans: &Plans,
    replicas: &[ReplicaTarget],
    probes: &BTreeMap<String, HostProbe>,
    opts: &CheckOptions,
    now: DateTime<Utc>,
) -> Vec<ReadinessItem> {
    let mut items = Vec::new();
    let used: BTreeSet<&str> = plans
        .ok()
        .flat_map(|p| p.steps.iter().filter_map(|s| s.host.as_deref()))
        .chain(
            replicas
                .iter()
                .flat_map(|r| [r.from_host.as_str(), r.to_host.as_str()]),
        )
        .collect();
    let tools = tools_by_host(plans);

    // Reachability, clocks and tools, host by host.
    for (host, probe) in probes {
        let addr = model
            .inventory
            .hosts
            .get(host)
            .map(|h| format!("{}@{}:{}", h.user, h.address, h.port))
            .unwrap_or_default();
        if let Some(e) = &probe.error {
            let status = if used.contains(host.as_str()) {
                ItemStatus::Failed
            } else {
                ItemStatus::Warning
            };
            items.push(item("ssh", host, status, e.clone()));
            continue;
        }
        items.push(item(
            "ssh",
            host,
            ItemStatus::Ok,
            format!("{addr}: reachable, host key known"),
        ));
        if let Some((skew, uncertainty)) = probe.skew_s {
            let status = if skew.abs() - uncertainty > opts.clock_tolerance_s {
                ItemStatus::Failed
            } else {
                ItemStatus::Ok
            };
            let side = if skew >= 0.0 { "ahead of" } else { "behind" };
            let detail = if status == ItemStatus::Ok {
                format!(
                    "{:.2}s {side} this machine (tolerance {}s)",
                    skew.abs(),
                    opts.clock_tolerance_s
                )
            } else {
                format!(
                    "{:.1}s {side} this machine, more than the {}s tolerated: timelines and data ages would be wrong; sync it (chrony, NTP)",
                    skew.abs(),
                    opts.clock_tolerance_s
                )
            };
            items.push(item("clock", host, status, detail));
        } else {
            items.push(item(
                "clock",
                host,
                ItemStatus::Warning,
                "its clock could not be read (`date +%s.%N`)".to_string(),
            ));
        }
        let needed = tools.get(host);
        if let Some(needed) = needed.filter(|n| !n.is_empty()) {
            if probe.missing_tools.is_empty() {
                let names: Vec<&str> = needed.keys().map(String::as_str).collect();
                items.push(item(
                    "tools",
                    host,
                    ItemStatus::Ok,
                    format!("{} found: {}", names.len(), names.join(", ")),
                ));
            } else {
                let missing: Vec<String> = probe
                    .missing_tools
                    .iter()
                    .map(|t| match needed.get(t) {
                        Some(step) => format!("{t} (needed by {step})"),
                        None => t.clone(),
                    })
                    .collect();
                items.push(item(
                    "tools",
                    host,
                    ItemStatus::Failed,
                    format!("missing: {}", missing.join(", ")),
                ));
            }
        }
    }

    // Replica copies: present, fresh against the RPO; room for the next update.
    // By host and filesystem: (total, free, largest copy, growth, copies). Sizes come from
    // the hosts: their sums are checked, `None` when they overflow.
    type Need = (u64, u64, u64, Option<u64>, Vec<String>);
    let mut needs_by_space: BTreeMap<(String, String), Need> = BTreeMap::new();
    for r in replicas {
        let subject = r.what.clone();
        let Some(dest) = probes.get(&r.to_host) else {
            continue;
        };
        if dest.error.is_some() {
            items.push(item(
                "replicas",
                &subject,
                ItemStatus::Failed,
                format!("{} is not reachable: the copy cannot be checked", r.to_host),
            ));
            continue;
        }
        let copy = dest.stats.get(&r.copy).copied().flatten();
        let source = probes
            .get(&r.from_host)
            .and_then(|p| p.stats.get(&r.source).copied().flatten());
        let Some(copy) = copy else {
            items.push(item(
                "replicas",
                &subject,
                ItemStatus::Failed,
                format!(
                    "no copy at {}:{}: replicate it before a drill",
                    r.to_host, r.copy
                ),
            ));
            continue;
        };
        let has_points = match (&dest.copies_error, dest.copies.get(&r.copy)) {
            (_, Some(state)) => {
                let id = r.what.split_whitespace().nth(1).unwrap_or(&r.what);
                let (level, detail) = crate::replica::choice::judge(state, id, r.rpo_s, now);
                let status = match level {
                    crate::replica::choice::Level::Ok => ItemStatus::Ok,
                    crate::replica::choice::Level::Warning => ItemStatus::Warning,
                    crate::replica::choice::Level::Failed => ItemStatus::Failed,
                };
                let detail = match (&r.service, level) {
                    (Some(s), crate::replica::choice::Level::Failed) if detail.contains("RPO") => {
                        format!("{detail} (RPO of {s})")
                    }
                    _ if level == crate::replica::choice::Level::Ok => {
                        format!("{detail}, {} on {}", human_bytes(state.size), r.to_host)
                    }
                    _ => detail,
                };
                items.push(item("replicas", &subject, status, detail));
                !state.points.is_empty()
            }
            (e, None) => {
                items.push(item(
                    "replicas",
                    &subject,
                    ItemStatus::Failed,
                    format!(
                        "its replica points on {} could not be read: {}",
                        r.to_host,
                        e.as_deref().unwrap_or("no answer about it")
                    ),
                ));
                false
            }
        };
        let points = has_points.then_some(());
        if let Some(space) = dest.space.get(&r.copy) {
            let src_bytes = source.map(|s| s.bytes).unwrap_or(copy.bytes);
            let entry = needs_by_space
                .entry((r.to_host.clone(), space.mount.clone()))
                .or_insert((space.total, space.avail, 0, Some(0), Vec::new()));
            entry.1 = entry.1.min(space.avail);
            let growth = src_bytes.saturating_sub(copy.bytes);
            if points.is_some() {
                // Updated in place: the journal and the reverse delta hold what changed,
                // counted as a tenth of the image.
                entry.3 = entry
                    .3
                    .and_then(|g| g.checked_add(growth))
                    .and_then(|g| g.checked_add(src_bytes / 10));
            } else {
                // A copy without points: its first point may rewrite it whole.
                entry.2 = entry.2.max(src_bytes);
                entry.3 = entry.3.and_then(|g| g.checked_add(growth));
            }
            entry.4.push(r.copy.clone());
        }
    }
    // Snapshots of running vms left on their primary host by an interrupted replication:
    // the vm writes to an overlay that no replication copies.
    for vm in model.inventory.vms.values() {
        let host = &vm.primary.value;
        let Some(found) = probes
            .get(host)
            .filter(|p| p.error.is_none())
            .and_then(|p| p.snapshots.get(&vm.id))
        else {
            continue;
        };
        let subject = format!("vm {} (snapshot)", vm.id);
        // A replication holding the vm's copies right now has its own snapshot on the
        // primary: it merges it back when it ends. Only one no replication holds is left.
        let of_vm = format!("vm {} (", vm.id);
        let replicating = replicas
            .iter()
            .filter(|r| r.what.starts_with(&of_vm))
            .any(|r| {
                probes
                    .get(&r.to_host)
                    .and_then(|p| p.copies.get(&r.copy))
                    .is_some_and(|s| s.busy)
            });
        match found {
            Ok(left) if left.is_empty() => {}
            Ok(left) if replicating => items.push(item(
                "replicas",
                &subject,
                ItemStatus::Warning,
                format!(
                    "a replication is running now ({} on {host} is its snapshot, merged back when it ends): run `reprise check` again once it is over",
                    left.join("; ")
                ),
            )),
            Ok(left) => items.push(item(
                "replicas",
                &subject,
                ItemStatus::Failed,
                format!(
                    "a replication snapshot was left on {host} ({}): the vm writes to an overlay no replication copies, and its disk goes stale; `reprise replicate --service {}` merges it back first",
                    left.join("; "),
                    vm.id
                ),
            )),
            // `reprise replicate` refuses such a vm too.
            Err(e) => items.push(item(
                "replicas",
                &subject,
                ItemStatus::Failed,
                format!(
                    "cannot tell whether a replication snapshot is left on {host}, and replication refuses it: {e}"
                ),
            )),
        }
    }

    // The drill networks: absent (a drill creates them) or isolated.
    let mut networks_seen = BTreeSet::new();
    for d in &plans.drills {
        let Some((name, _)) = &d.network else {
            continue;
        };
        if !networks_seen.insert((d.host.clone(), name.clone())) {
            continue;
        }
        let Some(probe) = probes.get(&d.host).filter(|p| p.error.is_none()) else {
            continue;
        };
        let subject = format!("{} ({name})", d.host);
        let (status, detail) = match probe.drill_networks.get(name) {
            Some((said, Some(0))) => (ItemStatus::Ok, said.join("; ")),
            Some((said, code)) => (
                ItemStatus::Failed,
                format!(
                    "the drill network cannot be used ({}): {}",
                    code.map_or("no exit status".to_string(), |c| format!("exit {c}")),
                    if said.is_empty() {
                        "nothing said".to_string()
                    } else {
                        said.join("; ")
                    }
                ),
            ),
            None => (
                ItemStatus::Failed,
                "its driver's drill-network-check gave no answer".to_string(),
            ),
        };
        items.push(item("network", &subject, status, detail));
    }

    // Room for the drill overlays on each recovery host (see [`overlay_estimate`]).
    let mut overlays: BTreeMap<(String, String), (u64, Vec<String>, &str)> = BTreeMap::new();
    for d in &plans.drills {
        let Some((dir, var)) = &d.overlays_dir else {
            continue;
        };
        let Some(probe) = probes.get(&d.host).filter(|p| p.error.is_none()) else {
            continue;
        };
        let entry = overlays
            .entry((d.host.clone(), dir.clone()))
            .or_insert((0, Vec::new(), var));
        for copy in &d.copies {
            let bytes = probe
                .stats
                .get(copy)
                .copied()
                .flatten()
                .map_or(0, |s| s.bytes);
            entry.0 = entry.0.saturating_add(overlay_estimate(bytes));
        }
        entry.1.push(d.vm.clone());
    }
    for ((host, dir), (need, vms, var)) in overlays {
        let Some(space) = probes.get(&host).and_then(|p| p.space.get(&dir)) else {
            continue;
        };
        let subject = format!("{host} (drill overlays)");
        let how = format!(
            "a tenth of each copy, at least {} a disk, for {}",
            human_bytes(OVERLAY_FLOOR),
            vms.join(", ")
        );
        let (status, detail) = if space.avail < need {
            (
                ItemStatus::Failed,
                format!(
                    "{} free under {dir}, a drill's overlays need about {} ({how}): free space there or move `{var}`",
                    human_bytes(space.avail),
                    human_bytes(need)
                ),
            )
        } else {
            (
                ItemStatus::Ok,
                format!(
                    "{} free under {dir}, a drill's overlays need about {} ({how})",
                    human_bytes(space.avail),
                    human_bytes(need)
                ),
            )
        };
        items.push(item("space", &subject, status, detail));
    }

    // Secrets the commands read from reprise's environment.
    for (name, step) in secrets_needed(plans) {
        if opts.secrets_set.contains(&name) {
            items.push(item(
                "secrets",
                &name,
                ItemStatus::Ok,
                format!("set (needed by {step})"),
            ));
        } else {
            items.push(item(
                "secrets",
                &name,
                ItemStatus::Failed,
                format!(
                    "not set in reprise's environment, and {step} reads it: export {name} before running reprise"
                ),
            ));
        }
    }

    // Commands run under `sh`: bash syntax there fails when it runs.
    let mut shell_seen = BTreeSet::new();
    for (host, what, text) in host_commands(plans) {
        if let Some(syntax) = bash_only(&text)
            && shell_seen.insert(what.clone())
        {
            items.push(item(
                "shell",
                &what,
                ItemStatus::Failed,
                format!(
                    "uses {syntax}, which is bash's: commands run on {host} under `sh -c` (dash on Debian); write it as `bash -c '…'`"
                ),
            ));
        }
    }
    for ((host, _), (total, avail, largest, growth, paths)) in needs_by_space {
        let sums = growth.and_then(|growth| {
            let need = largest.checked_add(growth)?;
            let used_after = total.saturating_sub(avail).checked_add(need)?;
            Some((growth, need, used_after))
        });
        let Some((growth, need, used_after)) = sums else {
            items.push(item(
                "space",
                &host,
                ItemStatus::Failed,
                "the sizes this host reported add up to more than 16 EiB: its answers cannot be right"
                    .to_string(),
            ));
            continue;
        };
        let (status, detail) = if avail < need {
            (
                ItemStatus::Failed,
                format!(
                    "{} free, the next replication needs {} (largest copy {} written beside the old one, growth {})",
                    human_bytes(avail),
                    human_bytes(need),
                    human_bytes(largest),
                    human_bytes(growth)
                ),
            )
        } else if total > 0 && u128::from(used_after) * 10 > u128::from(total) * 9 {
            (
                ItemStatus::Warning,
                format!(
                    "{} free of {}; after the next replication the disk would be over 90% full",
                    human_bytes(avail),
                    human_bytes(total)
                ),
            )
        } else {
            (
                ItemStatus::Ok,
                format!(
                    "{} free of {}, the next replication needs {}",
                    human_bytes(avail),
                    human_bytes(total),
                    human_bytes(need)
                ),
            )
        };
        let detail = if paths.len() == 1 {
            format!("{detail} (for {})", paths[0])
        } else {
            format!("{detail} (for {} copies)", paths.len())
        };
        items.push(item("space", &host, status, detail));
    }

    // Runbooks: every mode plans.
    for (label, plan) in &plans.by_mode {
        match plan {
            Ok(p) => {
                let status = if p.warnings.is_empty() {
                    ItemStatus::Ok
                } else {
                    ItemStatus::Warning
                };
                let mut detail = format!("{} steps plan", p.steps.len());
                if !p.warnings.is_empty() {
                    detail.push_str(&format!("; {}", p.warnings.join("; ")));
                }
                items.push(item("runbooks", label, status, detail));
            }
            Err(e) => {
                let first = e.lines().next().unwrap_or("").to_string();
                items.push(item(
                    "runbooks",
                    label,
                    ItemStatus::Failed,
                    format!("does not plan: {first} (run `reprise validate`)"),
                ));
            }
        }
    }

    // Estimated RTO of an emergency failover, the worst case, against each target.
    if let Some(plan) = plans.emergency() {
        for s in &plan.services {
            let (est, target) = (s.estimated_rto.secs(), s.rto_target.secs());
            let status = if s.rto_ok {
                ItemStatus::Ok
            } else {
                ItemStatus::Failed
            };
            let detail = if s.rto_ok {
                format!(
                    "estimated {} within the target {}",
                    human_secs(est),
                    human_secs(target)
                )
            } else {
                format!(
                    "estimated {} exceeds the target {}: shorten its chain of steps or raise the target",
                    human_secs(est),
                    human_secs(target)
                )
            };
            items.push(item("rto", &s.id, status, detail));
        }
    }
    items
}

/// A service its application replicates, and the lag probe its plans run.
#[derive(Debug, Clone)]
pub struct LagTarget {
    pub service: String,
    pub host: String,
    pub command: crate::template::Command,
    pub timeout: crate::duration::Duration,
    pub rpo: Option<crate::duration::Duration>,
}

/// The lag probes of the plans (the failover's first, then the drill's), one per service.
pub fn lag_targets(plans: &Plans) -> Vec<LagTarget> {
    let mut found: Vec<LagTarget> = Vec::new();
    let order = ["emergency failover", "planned failover", "drill"];
    for label in order {
        let Some(Ok(plan)) = plans
            .by_mode
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, p)| p)
        else {
            continue;
        };
        for step in &plan.steps {
            if let Action::Lag {
                run, timeout, rpo, ..
            } = &step.action_spec
                && !found.iter().any(|t| t.service == step.service)
            {
                found.push(LagTarget {
                    service: step.service.clone(),
                    host: step.host.clone().unwrap_or_default(),
                    command: run.clone(),
                    timeout: *timeout,
                    rpo: *rpo,
                });
            }
        }
    }
    found
}

/// Runs every lag probe at once (secrets from the environment).
pub fn measure_lags(
    transport: &dyn Transport,
    targets: &[LagTarget],
) -> Vec<(LagTarget, crate::lag::Lag)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                scope.spawn(
                    move || match t.command.expose(|name| std::env::var(name).ok()) {
                        Ok(text) => {
                            let mut lag = crate::lag::measure(transport, &t.host, &text, t.timeout);
                            // What the probe said is shown and saved: never a secret's value.
                            if let crate::lag::Reading::Unknown(why) = &mut lag.reading {
                                for name in t.command.secrets() {
                                    if let Ok(value) = std::env::var(name)
                                        && !value.is_empty()
                                    {
                                        *why = why.replace(&value, &format!("<secret:{name}>"));
                                    }
                                }
                            }
                            lag
                        }
                        Err(missing) => crate::lag::Lag {
                            at: Utc::now(),
                            reading: crate::lag::Reading::Unknown(format!(
                                "secret {missing} is not set in the environment"
                            )),
                        },
                    },
                )
            })
            .collect();
        targets
            .iter()
            .zip(handles)
            .map(|(t, h)| {
                let lag = h.join().unwrap_or_else(|_| crate::lag::Lag {
                    at: Utc::now(),
                    reading: crate::lag::Reading::Unknown("the probe stopped unexpectedly".into()),
                });
                (t.clone(), lag)
            })
            .collect()
    })
}

/// Judges the lags read: within the RPO is ok; over it, or unknown, fails (a failover now
/// would lose more than allowed, or nobody can say how much). Pure.
pub fn evaluate_lags(lags: &[(LagTarget, crate::lag::Lag)]) -> Vec<ReadinessItem> {
    lags.iter()
        .map(|(t, lag)| {
            let (verdict, words) = crate::lag::judge(&lag.reading, t.rpo);
            let (status, detail) = match verdict {
                crate::lag::Verdict::Within => (ItemStatus::Ok, format!("{words} (probe on {})", t.host)),
                crate::lag::Verdict::Over => (ItemStatus::Failed, format!("{words} (probe on {})", t.host)),
                crate::lag::Verdict::Unknown => (
                    ItemStatus::Failed,
                    format!(
                        "{words} (probe on {}): nobody can say how much data a failover now would lose",
                        t.host
                    ),
                ),
            };
            item("lag", &format!("service {}", t.service), status, detail)
        })
        .collect()
}

/// The order of the table.
const AREAS: [&str; 12] = [
    "ssh",
    "clock",
    "tools",
    "shell",
    "secrets",
    "network",
    "replicas",
    "lag",
    "definitions",
    "space",
    "runbooks",
    "rto",
];

/// Runs the whole check.
pub fn check(model: &Model, transport: &dyn Transport, opts: &CheckOptions) -> Readiness {
    let plans = Plans::build(model);
    let replicas = replica_targets(model);
    let q = questions(model, &plans, &replicas);
    let lag_targets = lag_targets(&plans);
    let (probes, lags) = std::thread::scope(|scope| {
        let lags = scope.spawn(|| measure_lags(transport, &lag_targets));
        let probes = probe_hosts(transport, &q);
        (probes, lags.join().unwrap_or_default())
    });
    let now = Utc::now();
    let mut opts = opts.clone();
    opts.secrets_set.extend(
        secrets_needed(&plans)
            .into_keys()
            .filter(|n| std::env::var_os(n).is_some_and(|v| !v.is_empty())),
    );
    let mut items = evaluate(model, &plans, &replicas, &probes, &opts, now);
    items.extend(evaluate_lags(&lags));
    items.extend(definition_items(&plans, transport));
    items.sort_by_key(|i| AREAS.iter().position(|a| *a == i.area));
    Readiness {
        at: now,
        ready: !items.iter().any(|i| i.status == ItemStatus::Failed),
        items,
    }
}

/// The failed items of a check that stop a planned failover on the recovery side (see
/// `plan`, the planned failover's plan): a recovery-site host it runs steps on that cannot be
/// reached, lacks a tool or room for the copies; a secret or bash syntax one of its steps
/// needs; the replication lag of a service it switches, unknown or over its RPO (its
/// `replication-lag` step would stop it there, after the primary side is stopped); a vm it
/// defines there whose definition would not fit. Problems of the primary side (and of
/// copies, which its final sync brings up to date) do not stop it.
pub fn failover_blockers(model: &Model, plan: &Plan, items: &[ReadinessItem]) -> Vec<String> {
    let inv = &model.inventory;
    let recovery_hosts: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| s.host.as_deref())
        .filter(|h| {
            inv.site_of(h)
                .is_some_and(|s| s.role == Some(crate::inventory::SiteRole::Recovery))
        })
        .collect();
    let steps: BTreeSet<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
    let defined: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| s.replica.as_ref())
        .filter(|r| r.define.is_some())
        .map(|r| r.vm.as_str())
        .collect();
    let secrets: BTreeSet<String> = {
        let plans = Plans {
            by_mode: vec![("planned failover".to_string(), Ok(plan.clone()))],
            hooks: Vec::new(),
            drills: Vec::new(),
        };
        secrets_needed(&plans).into_keys().collect()
    };
    // The services whose lag the failover reads before it switches them, as `lag` items name
    // them.
    let lags_held: BTreeSet<String> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.action_spec, Action::Lag { hold: true, .. }))
        .map(|s| format!("service {}", s.service))
        .collect();
    items
        .iter()
        .filter(|i| i.status == ItemStatus::Failed)
        .filter(|i| match i.area.as_str() {
            "ssh" | "tools" | "space" => recovery_hosts.contains(i.subject.as_str()),
            "shell" => steps.contains(i.subject.as_str()),
            "secrets" => secrets.contains(&i.subject),
            "lag" => lags_held.contains(&i.subject),
            "definitions" => defined_by_planned_failover(&i.subject, &defined),
            _ => false,
        })
        .map(|i| match i.area.as_str() {
            "lag" => format!(
                "lag {}: {}; its replication-lag step reads it again before the switch and stops the failover there while it is unknown or over the RPO, --force or not",
                i.subject, i.detail
            ),
            _ => format!("{} {}: {}", i.area, i.subject, i.detail),
        })
        .collect()
}

/// Whether each vm a drill or a failover defines would be defined from a usable definition
/// now: one that its newest usable point holds (or, in a planned failover, that its primary
/// holds, which the last replication captures), whose NICs all have a mapping and whose
/// disks are its copies. A vm defined alike by several modes gets one item naming them all.
/// (A failback is judged when it starts, see [`failback_blockers`]: before a failover there
/// is nothing to fail back.)
fn definition_items(plans: &Plans, transport: &dyn Transport) -> Vec<ReadinessItem> {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let secrets = crate::runner::env_secrets();
    let mut seen: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
    let mut items: Vec<ReadinessItem> = Vec::new();
    for (label, plan) in &plans.by_mode {
        if !matches!(
            label.as_str(),
            "drill" | "planned failover" | "emergency failover"
        ) {
            continue;
        }
        let Ok(plan) = plan else { continue };
        for p in crate::replica::definitions::prospects(&helpers, plan, &|n| secrets(n)) {
            let key = (
                p.vm.clone(),
                p.host.clone(),
                p.name.clone(),
                p.source.clone(),
            );
            if let Some(&i) = seen.get(&key) {
                let subject = &mut items[i].subject;
                subject.insert_str(subject.len() - 1, &format!(", {label}"));
                continue;
            }
            seen.insert(key, items.len());
            items.push(definition_item(&p, label));
        }
    }
    items
}

/// The `definitions` item of a vm that a plan of mode `label` defines.
fn definition_item(p: &crate::replica::definitions::Prospect, label: &str) -> ReadinessItem {
    let subject = format!("vm {} ({label})", p.vm);
    match &p.result {
        Ok(_) => item(
            "definitions",
            &subject,
            ItemStatus::Ok,
            format!("defined as {} on {} from {}", p.name, p.host, p.source),
        ),
        Err(why) => item(
            "definitions",
            &subject,
            ItemStatus::Failed,
            format!(
                "would be defined as {} on {} from {}, and {why}",
                p.name, p.host, p.source
            ),
        ),
    }
}

/// Whether a `definitions` item is about vm `vm` as the planned failover defines it.
fn defined_by_planned_failover(subject: &str, vms: &BTreeSet<&str>) -> bool {
    subject
        .strip_prefix("vm ")
        .and_then(|rest| rest.split_once(" ("))
        .is_some_and(|(vm, modes)| {
            vms.contains(vm)
                && modes
                    .trim_end_matches(')')
                    .split(", ")
                    .any(|m| m == "planned failover")
        })
}

/// What stops a failback half-way on the primary side, after the recovery side is stopped,
/// that can be known before it starts (`check` judges the recovery side, not this): each vm
/// it defines on the primary without a usable definition that fits there, as
/// `definitions vm X (failback): ...`. Read only: nothing is defined.
pub fn failback_blockers(plan: &Plan, transport: &dyn Transport) -> Vec<String> {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let secrets = crate::runner::env_secrets();
    crate::replica::definitions::prospects(&helpers, plan, &|n| secrets(n))
        .iter()
        .map(|p| definition_item(p, "failback"))
        .filter(|i| i.status == ItemStatus::Failed)
        .map(|i| format!("{} {}: {}", i.area, i.subject, i.detail))
        .collect()
}

/// The table and the verdict, for a person.
pub fn render(r: &Readiness) -> String {
    let mut out = format!(
        "readiness check at {}\n\n",
        r.at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let w_area = r
        .items
        .iter()
        .map(|i| i.area.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let w_subj = r
        .items
        .iter()
        .map(|i| i.subject.chars().count())
        .max()
        .unwrap_or(7)
        .max(7);
    out.push_str(&format!(
        "{:w_area$}  {:w_subj$}  {:7}  DETAIL\n",
        "AREA", "SUBJECT", "STATUS"
    ));
    for i in &r.items {
        let status = match i.status {
            ItemStatus::Ok => "ok",
            ItemStatus::Warning => "WARNING",
            ItemStatus::Failed => "FAILED",
        };
        let pad = w_subj.saturating_sub(i.subject.chars().count());
        out.push_str(&format!(
            "{:w_area$}  {}{}  {:7}  {}\n",
            i.area,
            i.subject,
            " ".repeat(pad),
            status,
            i.detail
        ));
    }
    let count = |s| r.items.iter().filter(|i| i.status == s).count();
    let (ok, warn, failed) = (
        count(ItemStatus::Ok),
        count(ItemStatus::Warning),
        count(ItemStatus::Failed),
    );
    out.push('\n');
    if r.ready {
        out.push_str(&format!(
            "verdict: READY: {ok} checks passed, {warn} warnings\n"
        ));
    } else {
        let what: Vec<String> = r
            .items
            .iter()
            .filter(|i| i.status == ItemStatus::Failed)
            .map(|i| format!("{} {}", i.area, i.subject))
            .collect();
        out.push_str(&format!(
            "verdict: NOT READY: {failed} failed ({}); {ok} passed, {warn} warnings\n",
            what.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_words_finds_the_programs_and_skips_shell_syntax() {
        let w = command_words(
            "virsh domstate dc1 | grep -qx 'shut off' || { virsh shutdown dc1 && timeout 300 sh -c 'until virsh domstate \"$0\"; do sleep 2; done' dc1; }",
        );
        assert_eq!(
            w,
            ["virsh", "grep", "virsh", "timeout", "sh", "virsh", "sleep"]
        );
        let w = command_words(
            "set -e; dir=/var/x; mkdir -p \"$dir\"; files=; for d in a.qcow2 b.qcow2; do qemu-img create -q -f qcow2 \"$dir/$d\"; done",
        );
        assert_eq!(w, ["mkdir", "qemu-img"]);
        let w = command_words("LC_ALL=C iptables-restore < /etc/iptables/rules.v4 2>/dev/null");
        assert_eq!(w, ["iptables-restore"]);
        let w = command_words("if ! mountpoint -q /srv; then mount /srv; fi; \"$HOME/x\" run");
        assert_eq!(w, ["mountpoint", "mount"]);
        let w = command_words("/usr/sbin/upsrw -s x=1\nsystemctl start a");
        assert_eq!(w, ["/usr/sbin/upsrw", "systemctl"]);
        let w = command_words(
            "virsh net-info x >/dev/null 2>&1 || virsh net-start x &>/dev/null; cat <&3",
        );
        assert_eq!(w, ["virsh", "virsh", "cat"]);
    }

    proptest::proptest! {
        #[test]
        fn any_command_text_gives_words_without_panicking(
            text in "[a-z $()=<>'\"\\;|&{}\n\t!#*?`-]{0,80}",
        ) {
            for w in command_words(&text) {
                proptest::prop_assert!(!w.is_empty() && !w.starts_with('-'));
            }
        }
    }

    #[test]
    fn arithmetic_patterns_functions_and_here_documents_are_not_programs() {
        let check =
            |cmd: &str, expected: &[&str]| assert_eq!(command_words(cmd), expected, "{cmd}");
        check(
            "id=$((900000 + 101)); qm clone 101 $id --name drill-x && qm set $id --net0 virtio",
            &["qm", "qm"],
        );
        check(
            "x=$(( 1 + 2 )) ; echo $((x * 3)) ; (( n++ )) ; qm stop $id",
            &["qm"],
        );
        check(
            "case $x in a|b) virsh start a;; (c) qm start 1;; *) ;; esac; ip a",
            &["virsh", "qm", "ip"],
        );
        check(
            "f() { virsh list; }; f; function g { qm list; }; g",
            &["virsh", "qm"],
        );
        check(
            "a=$(qm status 101 | awk '{print $2}') b=1 virsh list",
            &["qm", "awk", "virsh"],
        );
        check(
            "cat <<EOF > /x\nhello world\nEOF\nvirsh list",
            &["cat", "virsh"],
        );
        check(
            "cat <<-'END'\n\tnot a program\n\tEND\nqm list",
            &["cat", "qm"],
        );
        check("x=1 y=2 qm list", &["qm"]);
        check("[[ -e /x ]] && virsh list", &["virsh"]);
    }

    #[test]
    fn wrapped_commands_and_shell_scripts_are_programs_too() {
        let check =
            |cmd: &str, expected: &[&str]| assert_eq!(command_words(cmd), expected, "{cmd}");
        check("timeout -k 5 300 qm stop 101", &["timeout", "qm"]);
        check(
            "timeout --kill-after=5 30 virsh list",
            &["timeout", "virsh"],
        );
        check("env -u X A=1 B=2 virsh list", &["env", "virsh"]);
        check(
            "nice -n 10 ionice -c 3 rsync -a x y",
            &["nice", "ionice", "rsync"],
        );
        check(
            "nohup setsid sudo -u qemu qemu-img info x",
            &["nohup", "setsid", "sudo", "qemu-img"],
        );
        check(
            "flock /run/x.lock virsh list; exec virsh start a",
            &["flock", "virsh", "virsh"],
        );
        check("command -v virsh && command virsh list", &["virsh"]);
        check("bash -c 'cat </dev/tcp/$0/7000' 10.0.0.1", &["bash", "cat"]);
        check(
            "sh -c \"pvesm status | grep -q local\"",
            &["sh", "pvesm", "grep"],
        );
        check("sh -e -c 'x=$(( 1 + 2 ))' arg", &["sh"]);
        check("sh ./script.sh; bash", &["sh", "bash"]);
        check("exec 2>&1; mount -a", &["mount"]);
    }

    /// A driver command as a plan renders it: every value a quoted word.
    fn rendered(template: &str) -> String {
        let mut out = String::new();
        let mut rest = template;
        while let Some(at) = rest.find("{{") {
            out.push_str(&rest[..at]);
            let end = rest[at..].find("}}").map_or(rest.len(), |e| at + e + 2);
            out.push_str("'v'");
            rest = &rest[end..];
        }
        out + rest
    }

    /// Every action of every built-in driver, and the programs `check` looks for: exactly
    /// the tools it calls, nothing of its shell syntax.
    #[test]
    fn the_builtin_drivers_need_exactly_their_tools() {
        let doc: toml::Table = crate::inventory::BUILTIN_DRIVERS.parse().unwrap();
        let mut seen = Vec::new();
        for (driver, actions) in doc["drivers"].as_table().unwrap() {
            for (action, cmd) in actions.as_table().unwrap() {
                // `definition_format` names a format, not a command.
                if !crate::inventory::VM_ACTIONS.contains(&action.as_str()) {
                    continue;
                }
                let mut words = command_words(&rendered(cmd.as_str().unwrap()));
                words.sort();
                words.dedup();
                seen.push(format!("{driver} {action}: {}", words.join(" ")));
            }
        }
        let expected = [
            "libvirt start: virsh",
            "libvirt stop: grep sh sleep timeout virsh",
            "libvirt status: virsh",
            "libvirt autostart-off: virsh",
            "libvirt autostart-on: virsh",
            "libvirt definition: virsh",
            "libvirt define: virsh",
            "libvirt undefine: virsh",
            "libvirt drill-start: grep mkdir qemu-img sed virsh",
            "libvirt drill-network-check: grep virsh",
            "libvirt drill-stop: grep rm rmdir virsh",
            "libvirt replicate-check: awk sort virsh",
            "libvirt replicate-begin: virsh",
            "libvirt replicate-end: awk grep head qemu-img rm sed virsh virt-xml",
            "proxmox definition: qm",
            "proxmox define: awk cat grep mv qm readlink rm",
            "proxmox undefine: qm rm",
            "proxmox start: qm",
            "proxmox stop: qm",
            "proxmox status: qm",
            "proxmox autostart-off: qm",
            "proxmox autostart-on: qm",
            "proxmox drill-start: awk grep ip mkdir qemu-img qm",
            "proxmox drill-network-check: awk ip",
            "proxmox drill-stop: grep qemu-img qm rm rmdir",
            "proxmox replicate-check: qm",
            "proxmox replicate-begin: qm rm",
            "proxmox replicate-end: qm rm",
            "lab start: lab-vm",
            "lab stop: lab-vm",
            "lab status: lab-vm",
            "lab autostart-off: lab-vm",
            "lab autostart-on: lab-vm",
            "lab drill-start: grep lab-vm mkdir qemu-img sed",
            "lab definition: lab-vm",
            "lab define: lab-vm",
            "lab undefine: lab-vm",
            "lab drill-stop: lab-vm rm rmdir",
            "lab replicate-check: lab-vm",
            "lab replicate-begin: lab-vm",
            "lab replicate-end: lab-vm",
        ];
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        seen.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn bash_syntax_outside_bash_is_found() {
        assert_eq!(bash_only("cat </dev/tcp/10.0.0.1/7000"), Some("/dev/tcp"));
        assert_eq!(bash_only("bash -c 'cat </dev/tcp/$0/7000' x"), None);
        assert_eq!(
            bash_only("bash -c 'exec 3<>/dev/tcp/a/1' && [[ -e /x ]]"),
            Some("`[[ … ]]`")
        );
        assert_eq!(
            bash_only("diff <(ls a) <(ls b)"),
            Some("process substitution `<(…)`")
        );
        assert!(bash_only("virsh start x &>/dev/null").is_some());
        assert_eq!(bash_only("virsh start x >/dev/null 2>&1"), None);
        assert_eq!(
            bash_only("grep -q x <<<\"$y\""),
            Some("a here-string `<<<`")
        );
        let doc: toml::Table = crate::inventory::BUILTIN_DRIVERS.parse().unwrap();
        for (driver, actions) in doc["drivers"].as_table().unwrap() {
            for (action, cmd) in actions.as_table().unwrap() {
                assert_eq!(bash_only(cmd.as_str().unwrap()), None, "{driver} {action}");
            }
        }
    }

    #[test]
    fn answers_are_read_back_line_by_line() {
        let mut p = HostProbe::default();
        let complete = parse_answers(
            "tool\tvirsh\tok\ntool\tqemu-img\tmissing\nfile\t/a b\t1048576 1700000000\nfile\t/c\tabsent\ndir\t/d\t8 1700000100\nspace\t/a b\t1000 400 /srv\n",
            &mut p,
        );
        assert!(!complete, "no end line: the answers are cut");
        assert_eq!(p.found_tools, ["virsh"]);
        assert_eq!(p.missing_tools, ["qemu-img"]);
        assert_eq!(
            p.stats["/a b"],
            Some(PathStat {
                bytes: 1048576,
                mtime: 1700000000
            })
        );
        assert_eq!(p.stats["/c"], None);
        assert_eq!(p.stats["/d"].unwrap().bytes, 8192);
        assert_eq!(p.space["/a b"].avail, 400 * 1024);
        // Used plus available, as `df` counts its Use%: root's reserved blocks are not "used".
        assert_eq!(p.space["/a b"].total, 1400 * 1024);
        assert_eq!(p.space["/a b"].mount, "/srv");
        assert!(parse_answers("end\n", &mut HostProbe::default()));
    }

    fn example() -> Model {
        let sources = crate::sources::Sources::read(
            std::path::Path::new("inventory"),
            std::path::Path::new("runbooks"),
        )
        .unwrap();
        crate::plan::validate::load(sources)
            .map(|(m, _)| m)
            .unwrap()
    }

    /// Drill overlays are counted where the driver's `drill-start` makes them: libvirt's
    /// under `overlays_dir`, Proxmox's among the vm disks of its storage (`images_dir`).
    #[test]
    fn drill_overlays_are_counted_in_the_folder_the_driver_puts_them_in() {
        let mut model = example();
        let vm = model.inventory.vms.values().next().unwrap().clone();
        assert_eq!(vm.driver.value, "libvirt");
        assert_eq!(overlays_var(&model.inventory, &vm), Some("overlays_dir"));
        let mut pve = vm.clone();
        pve.driver.value = "proxmox".into();
        assert_eq!(overlays_var(&model.inventory, &pve), Some("images_dir"));
        model
            .inventory
            .drivers
            .get_mut("libvirt")
            .unwrap()
            .actions
            .insert(
                "drill-start".into(),
                crate::fields::Sp::new("start-a-copy {{ vm.name }}".into(), vm.driver.loc.clone()),
            );
        assert_eq!(overlays_var(&model.inventory, &vm), None);
    }

    /// A lag unknown or over its RPO stops a planned failover that switches that service
    /// (its `replication-lag` step would stop it after the primary side is stopped); the lag
    /// of a service the failover leaves alone does not, nor a lag a drill only reads.
    #[test]
    fn a_planned_failover_is_blocked_by_the_lag_of_a_service_it_switches() {
        let model = example();
        let items = vec![
            item(
                "lag",
                "service lms-db",
                ItemStatus::Failed,
                "replication lag 20m00s is over the RPO 15m".into(),
            ),
            item(
                "lag",
                "service directory",
                ItemStatus::Failed,
                "lag unknown: the probe printed nothing".into(),
            ),
            item("lag", "service erp-db", ItemStatus::Ok, String::new()),
        ];
        let planned = |services: &[&str]| {
            let mut opts = PlanOptions::new(Mode::Failover);
            opts.services = services.iter().map(|s| s.to_string()).collect();
            opts.only = true;
            plan::build(&model, &opts).unwrap()
        };
        let blockers = failover_blockers(&model, &planned(&["lms-db"]), &items);
        assert_eq!(blockers.len(), 1, "{blockers:?}");
        assert!(
            blockers[0].starts_with("lag service lms-db: replication lag 20m00s is over")
                && blockers[0].contains("--force or not"),
            "{blockers:?}"
        );
        let both = failover_blockers(&model, &planned(&["lms-db", "directory"]), &items);
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(failover_blockers(&model, &planned(&["erp-db"]), &items).is_empty());
        // A drill reads the lags without holding on them: they do not block it.
        let drill = plan::build(&model, &PlanOptions::new(Mode::Drill)).unwrap();
        assert!(failover_blockers(&model, &drill, &items).is_empty());
    }

    #[test]
    fn a_replica_answers_to_the_strictest_rpo_of_the_services_it_serves() {
        let mut model = example();
        let rpo = |model: &Model, what| {
            rpo_service(model, what).map(|s| (s.id.clone(), s.rpo.map(|d| d.secs())))
        };
        let of = |id: &str, secs: u64| Some((id.to_string(), Some(secs)));
        // The service on the vm.
        assert_eq!(rpo(&model, Replicated::Vm("erp-db")), of("erp-db", 900));
        // dc2 carries no service, and the directory, whose runbooks start it, fails over by
        // AD replication, not from this copy: it lends it no RPO; the vm's own `rpo` judges it.
        assert_eq!(rpo(&model, Replicated::Vm("dc2")), None);
        assert_eq!(
            copy_rpo(&model, Replicated::Vm("dc2")),
            (Some("vm dc2".to_string()), Some(86400))
        );
        // dc1 carries the directory itself, which lends it no RPO either.
        assert_eq!(rpo(&model, Replicated::Vm("dc1")), None);
        // A vm without an `rpo` of its own answers to its disk-replicated service.
        assert_eq!(
            copy_rpo(&model, Replicated::Vm("erp-db")),
            (Some("erp-db".to_string()), Some(900))
        );
        // A backup set: the service whose runbooks replicate it.
        assert_eq!(
            rpo(&model, Replicated::Backup("erp-dumps")),
            of("backups", 86400)
        );
        // Two services on one vm: the strictest target wins, whichever comes first.
        model.inventory.services["directory"].placement =
            model.inventory.services["erp-db"].placement.clone();
        assert_eq!(rpo(&model, Replicated::Vm("erp-db")), of("erp-db", 900));
        // A vm that nothing serves answers to nothing.
        assert_eq!(rpo(&model, Replicated::Vm("no-such-vm")), None);
    }

    #[test]
    fn clocks_space_and_replica_ages_are_judged_against_their_limits() {
        let model = example();
        let plans = Plans::build(&model);
        let replicas = replica_targets(&model);
        let now = Utc::now();
        let t = now.timestamp();
        let mut pra = HostProbe {
            skew_s: Some((12.0, 0.01)),
            ..HostProbe::default()
        };
        let mut main = HostProbe {
            skew_s: Some((-0.5, 0.01)),
            ..HostProbe::default()
        };
        for r in replicas.iter().filter(|r| r.to_host == "hv-pra") {
            // One disk of the ERP database is 20 minutes old: beyond its 15-minute RPO.
            let age = if r.copy.ends_with("erp-db-data.qcow2") {
                1200
            } else {
                60
            };
            let copy = PathStat {
                bytes: 1 << 30,
                mtime: t - age,
            };
            pra.stats.insert(r.copy.clone(), Some(copy));
            // Every other copy is kept as points; dc1's newest failed verification; the ERP
            // data disk has none (nothing proves it whole).
            let mut state = crate::replica::CopyState {
                path: r.copy.clone(),
                exists: true,
                size: 1 << 30,
                ..Default::default()
            };
            // A replication of dc2 is running: it holds dc2's copy.
            state.busy = r.copy.ends_with("dc2-system.qcow2");
            if !r.copy.ends_with("erp-db-data.qcow2") {
                let verified = if r.copy.ends_with("dc1-system.qcow2") {
                    crate::replica::Verified::Bad
                } else {
                    crate::replica::Verified::Yes
                };
                state.managed = true;
                state.points = vec![crate::replica::Point {
                    id: "P1".to_string(),
                    taken_at: now - chrono::Duration::seconds(age),
                    source: format!("{}:{}", r.from_host, r.source),
                    size: 1 << 30,
                    blake3: "00".to_string(),
                    verified,
                    checked_at: None,
                    received_bytes: 0,
                    duration_ms: 0,
                    stamp: None,
                    definition: None,
                    read: None,
                }];
            }
            pra.copies.insert(r.copy.clone(), state);
            pra.space.insert(
                r.copy.clone(),
                Space {
                    total: 1 << 40,
                    avail: 3 << 30,
                    mount: "/srv/replicas".to_string(),
                },
            );
            let source = PathStat {
                bytes: 2 << 30,
                mtime: t,
            };
            main.stats.insert(r.source.clone(), Some(source));
        }
        // A replication of the ERP database was killed: its snapshot overlay is still there.
        main.snapshots.insert(
            "erp-db".to_string(),
            Ok(vec!["file /srv/erp-db-data.reprise-replicate".to_string()]),
        );
        main.snapshots.insert("dc1".to_string(), Ok(Vec::new()));
        main.snapshots.insert(
            "dc2".to_string(),
            Ok(vec!["file /srv/dc2-system.reprise-replicate".to_string()]),
        );
        let unused = HostProbe {
            error: Some("failed to connect".to_string()),
            ..HostProbe::default()
        };
        let probes: BTreeMap<String, HostProbe> = [
            ("hv-pra".to_string(), pra),
            ("hv-main".to_string(), main),
            ("not-in-any-plan".to_string(), unused),
        ]
        .into_iter()
        .collect();
        let items = evaluate(
            &model,
            &plans,
            &replicas,
            &probes,
            &CheckOptions::default(),
            now,
        );
        let status = |area: &str, subject: &str| {
            items
                .iter()
                .find(|i| i.area == area && i.subject == subject)
                .map(|i| i.status)
        };
        assert_eq!(status("clock", "hv-pra"), Some(ItemStatus::Failed));
        assert_eq!(status("clock", "hv-main"), Some(ItemStatus::Ok));
        assert_eq!(
            status("replicas", "vm erp-db (erp-db-data.qcow2)"),
            Some(ItemStatus::Failed)
        );
        assert_eq!(
            status("replicas", "vm erp-db (erp-db-system.qcow2)"),
            Some(ItemStatus::Ok)
        );
        assert_eq!(
            status("replicas", "vm dc1 (dc1-system.qcow2)"),
            Some(ItemStatus::Failed),
            "a failover would start from a damaged copy"
        );
        let detail = |subject: &str| {
            items
                .iter()
                .find(|i| i.subject == subject)
                .map(|i| i.detail.clone())
                .unwrap_or_default()
        };
        assert!(
            detail("vm erp-db (erp-db-data.qcow2)").starts_with("UNVERIFIED"),
            "{}",
            detail("vm erp-db (erp-db-data.qcow2)")
        );
        assert_eq!(
            status("replicas", "vm erp-db (snapshot)"),
            Some(ItemStatus::Failed)
        );
        assert!(detail("vm erp-db (snapshot)").contains("reprise replicate --service erp-db"));
        assert_eq!(status("replicas", "vm dc1 (snapshot)"), None);
        // The snapshot of a replication that holds the copies right now is not a leftover.
        assert_eq!(
            status("replicas", "vm dc2 (snapshot)"),
            Some(ItemStatus::Warning)
        );
        assert!(detail("vm dc2 (snapshot)").contains("a replication is running now"));
        // Every copy grows by 1 GiB, more than the 3 GiB free.
        assert_eq!(status("space", "hv-pra"), Some(ItemStatus::Failed));
        assert_eq!(
            status("ssh", "not-in-any-plan"),
            Some(ItemStatus::Warning),
            "a host no plan uses does not stop a recovery"
        );
        // Every mode plans and the emergency failover's estimates meet the example's targets.
        assert!(
            items
                .iter()
                .filter(|i| i.area == "runbooks" || i.area == "rto")
                .all(|i| i.status == ItemStatus::Ok)
        );
        assert_eq!(items.iter().filter(|i| i.area == "runbooks").count(), 5);
    }

    #[test]
    fn answers_that_cannot_be_right_fail_the_host_instead_of_wrapping() {
        let answer = |line: &str| {
            let mut p = HostProbe::default();
            assert!(parse_answers(&format!("{line}\nend\n"), &mut p));
            p
        };
        for (line, why) in [
            ("space\t/srv\t18446744073709551615 1 /srv", "overflows"),
            ("space\t/srv\t1000 -4 /srv", "not a whole number"),
            (
                "space\t/srv\t18014398509481983 18014398509481983 /srv",
                "overflow",
            ),
            ("space\t/srv\t", "not a whole number"),
            ("dir\t/d\t18014398509481984 1700000000", "overflows"),
            ("file\t/f\t12 18446744073709551615", "overflows"),
            ("file\t/f\t12 99999999999999999999", "not a whole number"),
            ("file\t/f\t12 1e9", "not a whole number"),
            ("file\t/f\t12", "expected a size and a time"),
            ("file\t/f\tgone", "expected a size and a time"),
        ] {
            let p = answer(line);
            let error = p.error.unwrap_or_else(|| panic!("`{line}` was accepted"));
            assert!(error.contains(why), "`{line}`: {error}");
            assert!(
                p.stats.is_empty() && p.space.is_empty(),
                "`{line}` was kept"
            );
        }
        // What the script sends normally is read as before.
        let p = answer("file\t/f\tabsent\ndir\t/d\t8 \nspace\t/s\t10 4 /");
        assert_eq!(p.error, None);
        assert_eq!(p.stats["/f"], None);
        assert_eq!(
            p.stats["/d"],
            Some(PathStat {
                bytes: 8192,
                mtime: 0
            })
        );
        assert_eq!(p.space["/s"].avail, 4096);
    }

    #[test]
    fn sizes_that_add_up_beyond_64_bits_are_a_failure_not_a_wrap() {
        let model = example();
        let plans = Plans::build(&model);
        let replicas = replica_targets(&model);
        let now = Utc::now();
        let mut pra = HostProbe::default();
        let mut main = HostProbe::default();
        for r in replicas.iter().filter(|r| r.to_host == "hv-pra") {
            let copy = PathStat {
                bytes: 1,
                mtime: now.timestamp(),
            };
            pra.stats.insert(r.copy.clone(), Some(copy));
            pra.space.insert(
                r.copy.clone(),
                Space {
                    total: u64::MAX,
                    avail: u64::MAX,
                    mount: "/srv".to_string(),
                },
            );
            // Each source alone fits; what they grow by together does not.
            let source = PathStat {
                bytes: u64::MAX / 2,
                mtime: now.timestamp(),
            };
            main.stats.insert(r.source.clone(), Some(source));
        }
        let probes: BTreeMap<String, HostProbe> =
            [("hv-pra".to_string(), pra), ("hv-main".to_string(), main)]
                .into_iter()
                .collect();
        let items = evaluate(
            &model,
            &plans,
            &replicas,
            &probes,
            &CheckOptions::default(),
            now,
        );
        let space = items
            .iter()
            .find(|i| i.area == "space" && i.subject == "hv-pra")
            .expect("a space item");
        assert_eq!(space.status, ItemStatus::Failed, "{}", space.detail);
        assert!(space.detail.contains("cannot be right"), "{}", space.detail);
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(human_secs(42), "42s");
        assert_eq!(human_secs(3 * 60 + 5), "3m05s");
        assert_eq!(human_secs(3600 + 5 * 60), "1h05m");
        assert_eq!(human_secs(3 * 86400 + 4 * 3600), "3d 4h");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }

    #[test]
    fn a_definition_that_would_not_fit_blocks_the_planned_failover_of_its_vm_only() {
        let model = example();
        let plan = crate::plan::build(
            &model,
            &crate::plan::PlanOptions {
                services: vec!["erp-db".into()],
                only: true,
                ..crate::plan::PlanOptions::new(crate::runbook::Mode::Failover)
            },
        )
        .unwrap();
        let failed = |subject: &str| {
            item(
                "definitions",
                subject,
                ItemStatus::Failed,
                "would be defined as erp-db on hv-pra from …, and it does not fit".into(),
            )
        };
        let items = [
            failed("vm erp-db (planned failover, emergency failover)"),
            failed("vm erp-db (drill)"),
            failed("vm erp-app (planned failover)"),
            item(
                "definitions",
                "vm erp-db (planned failover)",
                ItemStatus::Ok,
                String::new(),
            ),
        ];
        assert_eq!(
            failover_blockers(&model, &plan, &items),
            [
                "definitions vm erp-db (planned failover, emergency failover): would be defined as erp-db on hv-pra from …, and it does not fit"
            ]
        );
    }
}
