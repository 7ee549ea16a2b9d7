//! Runbooks: per service and per mode, the ordered steps that recover it, read from
//! `runbooks/*.toml`.
//!
//! A file's top-level keys are service ids; under each, one array of step tables per mode:
//! `[[erp-db.failover]]`. Loading is pure and checks each step on its own (keys, kinds,
//! references, template syntax); what depends on the mode (hosts, sites, rendered commands) is
//! checked when plans are made.

use std::collections::HashMap;

use indexmap::IndexMap;
use toml::de::DeValue;

use crate::diagnostic::{Diagnostic, Location, did_you_mean};
use crate::duration::Duration;
use crate::fields::{Sp, Table, parse_document, type_name};
use crate::inventory::{Inventory, VM_ACTIONS, unknown};
use crate::sources::Sources;
use crate::template::Template;

/// The four jobs reprise does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Drill,
    Failover,
    Restore,
    Failback,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Drill, Mode::Failover, Mode::Restore, Mode::Failback];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Drill => "drill",
            Mode::Failover => "failover",
            Mode::Restore => "restore",
            Mode::Failback => "failback",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The side a VM step targets when the step does not say.
    pub fn default_side(self) -> Side {
        match self {
            Mode::Drill | Mode::Failover => Side::Recovery,
            Mode::Restore | Mode::Failback => Side::Primary,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which copy of a VM a step acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Primary,
    Recovery,
}

/// Main steps run in dependency order; cleanup steps (drills only) run after all main steps,
/// in reverse dependency order, even when the drill failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Main,
    Cleanup,
}

#[derive(Debug, Clone)]
pub enum Probe {
    Tcp {
        address: Option<Template>,
        port: u16,
        /// Text the server must send first (its banner), within a few seconds of the
        /// connection: who answers.
        expect: Option<Template>,
    },
    Http {
        url: Template,
        status: u16,
        /// Text the body of the answer must contain: who answers.
        expect: Option<Template>,
        /// For https: a PEM file of the certificate authorities to trust instead of the
        /// system's store (an absolute path on the orchestrator).
        ca_file: Option<Sp<String>>,
        /// For https: the certificate is not verified (a self-signed certificate); said in
        /// the plan and the report.
        insecure: bool,
    },
    Command {
        run: Template,
    },
}

#[derive(Debug, Clone)]
pub enum ReplicaSource {
    Vm(Sp<String>),
    Backup(Sp<String>),
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Exec {
        host: Option<Sp<String>>,
        run: Template,
        verify: Option<Template>,
        undo: Option<Template>,
        retries: u32,
        idempotent: bool,
    },
    Check {
        /// Command probes run on it; tcp and http probes target it (from the orchestrator).
        host: Option<Sp<String>>,
        /// Tcp and http probes: target this vm (on the mode's side).
        vm: Option<Sp<String>>,
        probe: Probe,
        interval: Duration,
    },
    Manual {
        instructions: String,
    },
    Vm {
        action: String,
        vm: Option<Sp<String>>,
        side: Option<Sp<Side>>,
        /// What puts the vm back when a planned failover or failback rolls back, instead of
        /// the driver's opposite action.
        undo: Option<Template>,
    },
    Replicate {
        source: ReplicaSource,
    },
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Exec { .. } => "exec",
            StepKind::Check { .. } => "check",
            StepKind::Manual { .. } => "manual",
            StepKind::Vm { .. } => "vm",
            StepKind::Replicate { .. } => "replicate",
        }
    }
}

pub const STEP_KINDS: &[&str] = &["exec", "check", "manual", "vm", "replicate"];

#[derive(Debug, Clone)]
pub struct Step {
    pub id: Sp<String>,
    pub kind: StepKind,
    pub description: Option<String>,
    pub timeout: Option<Duration>,
    pub expected: Option<Duration>,
    pub needs_primary: bool,
    pub phase: Phase,
    pub loc: Location,
}

/// The steps of one service for one mode.
#[derive(Debug, Clone)]
pub struct Runbook {
    pub service: String,
    pub mode: Mode,
    pub steps: Vec<Step>,
    pub loc: Location,
}

/// Every runbook, by service then mode.
#[derive(Debug, Clone, Default)]
pub struct Runbooks {
    pub by_service: IndexMap<String, IndexMap<Mode, Runbook>>,
}

impl Runbooks {
    pub fn get(&self, service: &str, mode: Mode) -> Option<&Runbook> {
        self.by_service.get(service)?.get(&mode)
    }
}

/// Reads every runbook file, checking each step against the inventory.
pub fn load(sources: &Sources, inv: &Inventory, diags: &mut Vec<Diagnostic>) -> Runbooks {
    let mut books = Runbooks::default();
    for &file in &sources.runbooks {
        let text = sources.map.text(file);
        let doc = parse_document(file, text, diags);
        let mut root = Table::root(file, &doc, "the runbooks");
        for (service, value) in root.entries() {
            if !inv.services.contains_key(&service.value) {
                diags.push(
                    unknown("service", &service, inv.services.keys())
                        .label("runbook for a service the inventory does not define"),
                );
                continue;
            }
            let Some(mut table) = Table::of(
                file,
                value,
                format!("runbooks of `{}`", service.value),
                diags,
            ) else {
                continue;
            };
            for (mode_name, steps) in table.entries() {
                let Some(mode) = Mode::parse(&mode_name.value) else {
                    let hint = did_you_mean(&mode_name.value, Mode::ALL.iter().map(|m| m.as_str()))
                        .unwrap_or_else(|| "modes are: drill, failover, restore, failback".into());
                    diags.push(
                        Diagnostic::error(format!(
                            "unknown mode `{}` in the runbooks of `{}`",
                            mode_name.value, service.value
                        ))
                        .at(mode_name.loc.clone())
                        .hint(hint),
                    );
                    continue;
                };
                let DeValue::Array(items) = steps.get_ref() else {
                    diags.push(
                        Diagnostic::error(format!(
                            "the {mode} runbook of `{}` must be a list of steps ([[{}.{mode}]]), not {}",
                            service.value,
                            service.value,
                            type_name(steps.get_ref())
                        ))
                        .at(Location::new(file, steps.span())),
                    );
                    continue;
                };
                let mut book = Runbook {
                    service: service.value.clone(),
                    mode,
                    steps: Vec::new(),
                    loc: mode_name.loc.clone(),
                };
                let mut ids: HashMap<String, usize> = HashMap::new();
                for item in items.iter() {
                    let what = format!("a {mode} step of `{}`", service.value);
                    if let Some(mut t) = Table::of(file, item, what, diags) {
                        if let Some(step) = read_step(text, &mut t, mode, inv, diags) {
                            if let Some(&first) = ids.get(&step.id.value) {
                                diags.push(
                                    Diagnostic::error(format!(
                                        "step `{}` is defined twice in the {mode} runbook of `{}`",
                                        step.id.value, service.value
                                    ))
                                    .at(step.id.loc.clone())
                                    .note("first defined here", book.steps[first].id.loc.clone()),
                                );
                            } else {
                                ids.insert(step.id.value.clone(), book.steps.len());
                                book.steps.push(step);
                            }
                        }
                        t.finish(diags);
                    }
                }
                if mode == Mode::Drill {
                    drill_copies_removed(&book, inv, diags);
                }
                let modes = books.by_service.entry(service.value.clone()).or_default();
                if let Some(first) = modes.get(&mode) {
                    diags.push(
                        Diagnostic::error(format!(
                            "the {mode} runbook of `{}` is defined twice",
                            service.value
                        ))
                        .at(book.loc.clone())
                        .note("first defined here", first.loc.clone())
                        .hint("keep the steps of one service and mode in one place"),
                    );
                } else {
                    modes.insert(mode, book);
                }
            }
        }
    }
    books
}

/// Every drill copy a drill runbook boots (`drill-start`) is removed by a step of its cleanup
/// phase (`drill-stop`), which runs whatever happened: a copy left running holds its vm's
/// copies (no replication writes into them) and runs beside production until someone notices.
fn drill_copies_removed(book: &Runbook, inv: &Inventory, diags: &mut Vec<Diagnostic>) {
    // A step that names no vm acts on its service's.
    let own = inv
        .services
        .get(&book.service)
        .and_then(|s| s.vm().map(str::to_string));
    let vm_of = |s: &Step, action: &str| match &s.kind {
        StepKind::Vm { action: a, vm, .. } if a == action => {
            Some(vm.as_ref().map(|v| v.value.clone()).or_else(|| own.clone()))
        }
        _ => None,
    };
    for start in &book.steps {
        let Some(vm) = vm_of(start, "drill-start") else {
            continue;
        };
        let stops: Vec<&Step> = book
            .steps
            .iter()
            .filter(|s| vm_of(s, "drill-stop").as_ref() == Some(&vm))
            .collect();
        if stops.iter().any(|s| s.phase == Phase::Cleanup) {
            continue;
        }
        let which = vm.map_or_else(|| "the service's vm".to_string(), |v| format!("vm `{v}`"));
        let mut d = Diagnostic::error(format!(
            "step `{}` boots a drill copy of {which}, and no step of the drill's cleanup removes it",
            start.id.value
        ))
        .at(start.id.loc.clone())
        .hint(
            "add a step with `action = \"drill-stop\"` and `phase = \"cleanup\"` (the cleanup runs whatever happened): a copy left running holds the vm's copies, which no replication writes into meanwhile",
        );
        if let Some(s) = stops.first() {
            d = d.note(
                "its drill-stop is in the main phase, which a failure stops",
                s.id.loc.clone(),
            );
        }
        diags.push(d);
    }
}

fn template(
    text: &str,
    t: &mut Table<'_, '_>,
    key: &'static str,
    required: bool,
    diags: &mut Vec<Diagnostic>,
) -> Option<Template> {
    let value = if required {
        t.req_text(key, diags)
    } else {
        t.text(key, diags)
    }?;
    match Template::parse(&value, text) {
        Ok(tpl) => Some(tpl),
        Err(d) => {
            diags.push(*d);
            None
        }
    }
}

fn read_step(
    text: &str,
    t: &mut Table<'_, '_>,
    mode: Mode,
    inv: &Inventory,
    diags: &mut Vec<Diagnostic>,
) -> Option<Step> {
    let id = t.req_str("id", diags);
    if let Some(id) = &id {
        t.what = format!("step `{}`", id.value);
    }
    // `power.failback = []` written after a [[...]] header lands in that step.
    for key in t.unread() {
        if inv.services.contains_key(&key.value) {
            t.mark_used(&key.value);
            diags.push(
                Diagnostic::error(format!("`{}.…` is read as a key of {}", key.value, t.what))
                    .at(key.loc.clone())
                    .hint(format!(
                        "in TOML, keys after a [[...]] header belong to that table: move `{}.MODE = ...` above the first [[...]] of the file",
                        key.value
                    )),
            );
        }
    }
    let kind = t.req_choice("kind", STEP_KINDS, diags);
    if kind.is_none() {
        t.lenient();
    }
    if let Some(id) = &id {
        let ok = !id.value.is_empty()
            && id
                .value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !ok {
            diags.push(
                Diagnostic::error(format!("invalid step id `{}`", id.value))
                    .at(id.loc.clone())
                    .hint("step ids use letters, digits, `-` and `_`"),
            );
        }
    }
    let description = t.str("description", diags).map(|s| s.value);
    let timeout = t
        .positive_duration(
            "timeout",
            "a step with no time at all always times out: give it the time it needs, e.g. \"5m\"",
            diags,
        )
        .map(|d| d.value);
    let expected = t.duration("expected", diags).map(|d| d.value);
    let needs_primary = t.bool("needs_primary", diags).unwrap_or(false);
    let phase = match t.choice("phase", &["main", "cleanup"], diags) {
        Some(p) if p.value == "cleanup" => {
            if mode != Mode::Drill {
                diags.push(
                    Diagnostic::error(format!("`phase = \"cleanup\"` in a {mode} runbook"))
                        .at(p.loc)
                        .hint("only drills have a cleanup phase"),
                );
            }
            Phase::Cleanup
        }
        _ => Phase::Main,
    };
    let step_kind = match kind.as_ref().map(|k| k.value.as_str()) {
        Some("exec") => read_exec(text, t, inv, diags)?,
        Some("check") => read_check(text, t, inv, diags)?,
        Some("manual") => StepKind::Manual {
            instructions: t.req_text("instructions", diags)?.value,
        },
        Some("vm") => read_vm_step(text, t, inv, diags)?,
        Some("replicate") => read_replicate(t, inv, diags)?,
        _ => return None,
    };
    Some(Step {
        id: id?,
        kind: step_kind,
        description,
        timeout,
        expected,
        needs_primary,
        phase,
        loc: t.loc.clone(),
    })
}

/// A step's `host`, which the inventory must have (else reported, and `None`).
fn known_host(
    t: &mut Table<'_, '_>,
    inv: &Inventory,
    diags: &mut Vec<Diagnostic>,
) -> Option<Sp<String>> {
    let h = t.text("host", diags)?;
    if inv.hosts.contains_key(&h.value) {
        Some(h)
    } else {
        diags.push(unknown("host", &h, inv.hosts.keys()));
        None
    }
}

/// A step's `vm`; one the inventory does not have is reported.
fn vm_named(
    t: &mut Table<'_, '_>,
    inv: &Inventory,
    diags: &mut Vec<Diagnostic>,
) -> Option<Sp<String>> {
    let vm = t.text("vm", diags);
    if let Some(v) = &vm
        && !inv.vms.contains_key(&v.value)
    {
        diags.push(unknown("vm", v, inv.vms.keys()));
    }
    vm
}

fn read_exec(
    text: &str,
    t: &mut Table<'_, '_>,
    inv: &Inventory,
    diags: &mut Vec<Diagnostic>,
) -> Option<StepKind> {
    let host = known_host(t, inv, diags);
    let run = template(text, t, "run", true, diags);
    let verify = template(text, t, "verify", false, diags);
    let undo = template(text, t, "undo", false, diags);
    let retries = t
        .int("retries", 0, 100, diags)
        .map(|r| r.value as u32)
        .unwrap_or(0);
    let idempotent = t.bool("idempotent", diags).unwrap_or(false);
    Some(StepKind::Exec {
        host,
        run: run?,
        verify,
        undo,
        retries,
        idempotent,
    })
}

fn read_check(
    text: &str,
    t: &mut Table<'_, '_>,
    inv: &Inventory,
    diags: &mut Vec<Diagnostic>,
) -> Option<StepKind> {
    let host = known_host(t, inv, diags);
    let vm = vm_named(t, inv, diags);
    let interval = t
        .positive_duration(
            "interval",
            "a check is tried again every `interval`: write e.g. \"5s\"",
            diags,
        )
        .map(|d| d.value)
        .unwrap_or(Duration(5));
    let Some(probe_kind) = t.req_choice("probe", &["tcp", "http", "command"], diags) else {
        t.lenient();
        return None;
    };
    let probe = match probe_kind.value.as_str() {
        "tcp" => {
            let address = template(text, t, "address", false, diags);
            let port = t.req_int("port", 1, 65535, diags);
            let expect = template(text, t, "expect", false, diags);
            Probe::Tcp {
                address,
                port: port?.value as u16,
                expect,
            }
        }
        "http" => read_http_probe(text, t, diags)?,
        _ => Probe::Command {
            run: template(text, t, "run", true, diags)?,
        },
    };
    if vm.is_some() && matches!(probe, Probe::Command { .. }) {
        diags.push(
            Diagnostic::error("a command check runs on a host, not a vm")
                .at(vm
                    .as_ref()
                    .map(|v| v.loc.clone())
                    .unwrap_or_else(|| t.loc.clone()))
                .hint("use `host = \"...\"` for a command check; `vm` is for tcp and http checks"),
        );
    }
    Some(StepKind::Check {
        host,
        vm,
        probe,
        interval,
    })
}

/// An http probe: its url, the status it expects, and how it trusts the server.
fn read_http_probe(
    text: &str,
    t: &mut Table<'_, '_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Probe> {
    let url = template(text, t, "url", true, diags);
    let status = t
        .int("status", 100, 599, diags)
        .map(|s| s.value as u16)
        .unwrap_or(200);
    let ca_file = t.text("ca_file", diags);
    let insecure = t.bool("insecure", diags).unwrap_or(false);
    let expect = template(text, t, "expect", false, diags);
    if let Some(ca) = &ca_file {
        if !ca.value.starts_with('/') {
            diags.push(
                Diagnostic::error(format!(
                    "`ca_file` must be an absolute path on the orchestrator, not `{}`",
                    ca.value
                ))
                .at(ca.loc.clone())
                .hint("e.g. ca_file = \"/etc/reprise/erp-ca.pem\""),
            );
        } else if insecure {
            diags.push(
                Diagnostic::error(
                    "`insecure = true` verifies no certificate, so `ca_file` would be ignored",
                )
                .at(ca.loc.clone())
                .hint("keep `ca_file` to verify against that authority, or `insecure` for a self-signed certificate, not both"),
            );
        }
    }
    Some(Probe::Http {
        url: url?,
        status,
        expect,
        ca_file,
        insecure,
    })
}

fn read_vm_step(
    text: &str,
    t: &mut Table<'_, '_>,
    inv: &Inventory,
    diags: &mut Vec<Diagnostic>,
) -> Option<StepKind> {
    let action = t.req_choice("action", VM_ACTIONS, diags);
    let vm = vm_named(t, inv, diags);
    let side = t.choice("on", &["primary", "recovery"], diags).map(|s| {
        let side = if s.value == "primary" {
            Side::Primary
        } else {
            Side::Recovery
        };
        Sp::new(side, s.loc)
    });
    let undo = template(text, t, "undo", false, diags);
    Some(StepKind::Vm {
        action: action?.value,
        vm,
        side,
        undo,
    })
}

/// A replicate step names one vm or one backup set.
fn read_replicate(
    t: &mut Table<'_, '_>,
    inv: &Inventory,
    diags: &mut Vec<Diagnostic>,
) -> Option<StepKind> {
    let vm = t.text("vm", diags);
    let backup = t.text("backup", diags);
    let source = match (vm, backup) {
        (Some(v), None) => {
            if !inv.vms.contains_key(&v.value) {
                diags.push(unknown("vm", &v, inv.vms.keys()));
            }
            ReplicaSource::Vm(v)
        }
        (None, Some(b)) => {
            if !inv.backups.contains_key(&b.value) {
                diags.push(unknown("backup set", &b, inv.backups.keys()));
            }
            ReplicaSource::Backup(b)
        }
        (v, _) => {
            let (message, hint) = if v.is_some() {
                (
                    "a replicate step names both `vm` and `backup`",
                    "keep one of the two",
                )
            } else {
                (
                    "a replicate step names neither `vm` nor `backup`",
                    "add `vm = \"...\"` or `backup = \"...\"`",
                )
            };
            diags.push(Diagnostic::error(message).at(t.loc.clone()).hint(hint));
            return None;
        }
    };
    Some(StepKind::Replicate { source })
}
