//! The plans a recovery may need ([`Plans`]): every mode planned from the model, the
//! drivers' hooks run outside plans, the drill copies a drill starts; and what their commands
//! need (secrets, tools by host).

use std::collections::BTreeMap;

use super::command_words;
use crate::model::Model;
use crate::plan::{self, Action, Plan, PlanOptions};
use crate::runbook::Mode;

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

    pub(super) fn ok(&self) -> impl Iterator<Item = &Plan> {
        self.by_mode.iter().filter_map(|(_, p)| p.as_ref().ok())
    }

    pub(super) fn emergency(&self) -> Option<&Plan> {
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

/// The texts of the commands the plans and hooks run on hosts: (host, step or hook, text).
pub(super) fn host_commands(plans: &Plans) -> Vec<(String, String, String)> {
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

#[cfg(test)]
mod tests {
    use super::super::example;
    use super::*;

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
}
