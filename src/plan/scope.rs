//! The values a step's templates can name (`host.*`, `primary.*`, `recovery.*`, `service.*`,
//! `vm.*`, `run.*`), and rendering a template against them.

use crate::diagnostic::Diagnostic;
use crate::inventory::{Host, Inventory, Service, Vm};
use crate::runbook::{Mode, Side};
use crate::template::{Command, Lookup, Scope, Template, TemplateValue};

/// Template values for one step.
#[derive(Clone)]
pub(super) struct StepScope<'a> {
    pub(super) inv: &'a Inventory,
    pub(super) host: Option<&'a Host>,
    pub(super) service: &'a Service,
    pub(super) vm: Option<(&'a Vm, Side)>,
    pub(super) run_id: &'a str,
    pub(super) mode: Mode,
}

/// A host's value `name` for a step about a vm of `driver` (a variable the host does not
/// give may have a default for that driver, see [`crate::inventory::var_default`]).
fn host_lookup(host: &Host, name: &str, driver: Option<&str>) -> Lookup {
    let text = |s: &str| Lookup::Found(TemplateValue::Text(s.to_string()));
    match name {
        "id" => text(&host.id),
        "address" => text(&host.address),
        "port" => text(&host.port.to_string()),
        "user" => text(&host.user),
        "site" => text(host.site.as_ref().map(|s| s.as_str()).unwrap_or("")),
        "role" => text(&host.role),
        _ => match host.vars.get(name) {
            Some(crate::inventory::VarValue::Text(t)) => text(t),
            Some(crate::inventory::VarValue::Secret { env }) => {
                Lookup::Found(TemplateValue::Secret { env: env.clone() })
            }
            None => match crate::inventory::var_default(name, driver) {
                Some(default) => text(default),
                None => Lookup::Missing {
                    what: format!("host `{}` has no variable `{name}`", host.id),
                    known: ["id", "address", "port", "user", "site", "role"]
                        .iter()
                        .map(|s| s.to_string())
                        .chain(host.vars.keys().cloned())
                        .collect(),
                },
            },
        },
    }
}

impl Scope for StepScope<'_> {
    fn lookup(&self, namespace: &str, name: &str) -> Lookup {
        let text = |s: &str| Lookup::Found(TemplateValue::Text(s.to_string()));
        let missing = |what: String, known: &[&str]| Lookup::Missing {
            what,
            known: known.iter().map(|s| s.to_string()).collect(),
        };
        match namespace {
            "host" => match self.host {
                Some(h) => host_lookup(h, name, self.vm.map(|(vm, _)| vm.driver.value.as_str())),
                None => missing("this step runs on no host".into(), &[]),
            },
            "primary" | "recovery" => match self.vm {
                Some((vm, _)) => {
                    let id = if namespace == "primary" {
                        &vm.primary
                    } else {
                        &vm.recovery
                    };
                    match self.inv.hosts.get(&id.value) {
                        Some(h) => {
                            host_lookup(h, name, self.vm.map(|(vm, _)| vm.driver.value.as_str()))
                        }
                        None => missing(format!("unknown host `{}`", id.value), &[]),
                    }
                }
                None => missing("this step concerns no vm".into(), &[]),
            },
            "service" => {
                let s = self.service;
                let known = ["id", "kind", "owner", "description"];
                match name {
                    "id" => text(&s.id),
                    "kind" => text(&s.kind),
                    "owner" => match &s.owner {
                        Some(o) => text(o),
                        None => missing(format!("service `{}` has no owner", s.id), &known),
                    },
                    "description" => match &s.description {
                        Some(d) => text(d),
                        None => missing(format!("service `{}` has no description", s.id), &known),
                    },
                    _ => missing(format!("services have no `{name}`"), &known),
                }
            }
            "vm" => {
                let Some((vm, side)) = self.vm else {
                    return missing(
                        format!(
                            "this step concerns no vm (service `{}` lives on none)",
                            self.service.id
                        ),
                        &[],
                    );
                };
                let known = ["id", "name", "driver", "address", "disks", "vmid"];
                match name {
                    "id" => text(&vm.id),
                    "name" => text(&vm.name),
                    "driver" => text(&vm.driver.value),
                    "disks" => Lookup::Found(TemplateValue::List(vm.disks.clone())),
                    "address" => {
                        let addr = match side {
                            Side::Recovery => vm.recovery_address.as_ref().or(vm.address.as_ref()),
                            Side::Primary => vm.address.as_ref(),
                        };
                        match addr {
                            Some(a) => text(a),
                            None => missing(format!("vm `{}` has no address", vm.id), &known),
                        }
                    }
                    "vmid" => match vm.vmid {
                        Some(v) => text(&v.to_string()),
                        None => missing(format!("vm `{}` has no vmid", vm.id), &known),
                    },
                    _ => missing(format!("vms have no `{name}`"), &known),
                }
            }
            "run" => match name {
                "id" => text(self.run_id),
                "mode" => text(self.mode.as_str()),
                _ => missing(format!("runs have no `{name}`"), &["id", "mode"]),
            },
            _ => missing(format!("unknown namespace `{namespace}`"), &[]),
        }
    }
}

pub(super) fn render(
    tpl: &Template,
    scope: &StepScope<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Command> {
    collect(tpl.render(scope), diags)
}

pub(super) fn render_plain(
    tpl: &Template,
    scope: &StepScope<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<String> {
    collect(tpl.render_plain(scope), diags).map(|c| c.to_string())
}

fn collect(r: Result<Command, Vec<Diagnostic>>, diags: &mut Vec<Diagnostic>) -> Option<Command> {
    match r {
        Ok(c) => Some(c),
        Err(errors) => {
            diags.extend(errors);
            None
        }
    }
}
