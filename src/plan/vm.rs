//! A vm's driver actions rendered for one side (its `status`, replication hooks, `define`), and
//! where its disk images are.

use crate::inventory::{Inventory, Service, Vm};
use crate::model::Model;
use crate::plan::scope::StepScope;
use crate::plan::{DefineUse, ReplicaRole};
use crate::runbook::{Mode, Side};
use crate::template::{Command, Template};

/// The driver's `status` command for one copy of a vm, with the host it runs on: used to check,
/// before a failback, that a service does not run on both sites.
pub fn vm_status_command(
    model: &Model,
    service: &Service,
    vm: &Vm,
    side: Side,
    run_id: &str,
) -> Option<(String, Command)> {
    vm_action_command(model, service, vm, side, "status", run_id)
}

/// The host and rendered command of a driver action of `vm` on `side` (`None` when the driver
/// has no such action or it does not render).
pub fn vm_action_command(
    model: &Model,
    service: &Service,
    vm: &Vm,
    side: Side,
    action: &str,
    run_id: &str,
) -> Option<(String, Command)> {
    vm_action_checked(model, service, vm, side, action, run_id)
        .ok()
        .flatten()
}

/// [`vm_action_command`], telling an action the driver has that does not render for `vm`
/// on `side` (`Err`, what its placeholders lack) from one it does not have (`Ok(None)`).
pub fn vm_action_checked(
    model: &Model,
    service: &Service,
    vm: &Vm,
    side: Side,
    action: &str,
    run_id: &str,
) -> Result<Option<(String, Command)>, String> {
    let inv = &model.inventory;
    let Some(tpl) = inv
        .drivers
        .get(&vm.driver.value)
        .and_then(|d| d.actions.get(action))
    else {
        return Ok(None);
    };
    let host_id = match side {
        Side::Primary => &vm.primary.value,
        Side::Recovery => &vm.recovery.value,
    };
    let host = inv
        .hosts
        .get(host_id)
        .ok_or_else(|| format!("host `{host_id}` is not in the inventory"))?;
    let scope = StepScope {
        inv,
        host: Some(host),
        service,
        vm: Some((vm, side)),
        run_id,
        mode: Mode::Failback,
    };
    let tpl = Template::parse(tpl, model.sources.map.text(tpl.loc.file))
        .map_err(|e| e.message.clone())?;
    let command = tpl.render(&scope).map_err(|errors| {
        errors
            .iter()
            .map(|e| e.message.clone())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    Ok(Some((host_id.clone(), command)))
}

/// Why an action of a vm's driver cannot be rendered for it, on either of its sides (a value
/// that cannot be written where the action puts it, a variable its host lacks): said when the
/// files are checked, never found at run time as an action that is not there (a
/// `replicate-end` that did not render would leave the freeze of `replicate-begin` on).
pub fn driver_action_errors(model: &Model) -> Vec<crate::diagnostic::Diagnostic> {
    let inv = &model.inventory;
    let mut out = Vec::new();
    for vm in inv.vms.values() {
        let Some(driver) = inv.drivers.get(&vm.driver.value) else {
            continue;
        };
        let service = &*hook_service(inv, vm);
        // Its replication hooks run only for a vm that can be replicated (one whose hosts
        // lack `images_dir` is said so by the plans that replicate it).
        let replicated = images_dir_of(inv, &vm.primary.value).is_some()
            && images_dir_of(inv, &vm.recovery.value).is_some();
        for (side, host_id) in [
            (Side::Primary, &vm.primary.value),
            (Side::Recovery, &vm.recovery.value),
        ] {
            let Some(host) = inv.hosts.get(host_id) else {
                continue;
            };
            let scope = StepScope {
                inv,
                host: Some(host),
                service,
                vm: Some((vm, side)),
                run_id: "validate",
                mode: Mode::Failback,
            };
            for (action, tpl) in &driver.actions {
                let Ok(tpl) = Template::parse(tpl, model.sources.map.text(tpl.loc.file)) else {
                    continue;
                };
                // Variables a side's host lacks are said by the plans that use the action
                // there (a drill's actions run on the recovery side only); the replication
                // hooks run on the primary outside any plan: every error is said here.
                let hook = side == Side::Primary
                    && replicated
                    && REPLICATE_HOOKS.contains(&action.as_str());
                if let Err(errors) = tpl.render(&scope) {
                    for mut e in errors {
                        // One error a placeholder, for the first vm and host it fails for.
                        let said = out
                            .iter()
                            .any(|o: &crate::diagnostic::Diagnostic| o.location == e.location);
                        if (hook || e.message.contains(crate::template::INSIDE_QUOTES)) && !said {
                            e.message =
                                format!("{} (vm `{}` on host `{host_id}`)", e.message, vm.id);
                            out.push(e);
                        }
                    }
                }
            }
        }
    }
    out
}

/// How a vm step of `role` defines `vm` on the host it starts it on, when its driver
/// carries definitions: where the point's definition is, and what it becomes there.
pub fn define_use(
    model: &Model,
    service: &Service,
    vm: &Vm,
    role: ReplicaRole,
    run_id: &str,
) -> Option<DefineUse> {
    let inv = &model.inventory;
    let driver = inv.drivers.get(&vm.driver.value)?;
    if !driver.defines() {
        return None;
    }
    let format = driver.definition_format?;
    let (primary, recovery) = (&vm.primary.value, &vm.recovery.value);
    let (pdir, rdir) = (images_dir_of(inv, primary)?, images_dir_of(inv, recovery)?);
    let side = match role {
        ReplicaRole::DrillStop => return None,
        ReplicaRole::FailedBack => Side::Primary,
        ReplicaRole::DrillStart | ReplicaRole::Start => Side::Recovery,
    };
    let (host, command) = vm_action_command(model, service, vm, side, "define", run_id)?;
    // The vm under its own name (a drill's copy is removed by the drill's cleanup).
    let own = |action: &str| {
        (role != ReplicaRole::DrillStart)
            .then(|| vm_action_command(model, service, vm, side, action, run_id))
            .flatten()
            .map(|(_, c)| c)
    };
    let (current, undefine) = (own("definition"), own("undefine"));
    let var = |name: &str| match inv.hosts.get(&host).and_then(|h| h.vars.get(name)) {
        Some(crate::inventory::VarValue::Text(t)) => Some(t.trim_end_matches('/').to_string()),
        _ => None,
    };
    let drill = role == ReplicaRole::DrillStart;
    let to = |d: &str| match role {
        ReplicaRole::DrillStart => {
            var("overlays_dir").map(|o| format!("{o}/{run_id}/{}/{d}", vm.id))
        }
        ReplicaRole::FailedBack => Some(format!("{pdir}/{d}")),
        _ => Some(format!("{rdir}/{d}")),
    };
    let mut disks = Vec::new();
    for d in &vm.disks {
        disks.push(match format {
            crate::vmdef::Format::LibvirtXml => {
                (vec![format!("{pdir}/{d}"), format!("{rdir}/{d}")], to(d)?)
            }
            // Volumes of a storage (`local:120/vm-120-disk-0.qcow2`), the same name on both
            // nodes; a drill's overlays are volumes of its own vmid, 900000 + vmid
            // (`900120/vm-900120-disk-0.qcow2`), which the driver's `drill-start` makes.
            crate::vmdef::Format::ProxmoxConf => {
                let to = if drill {
                    let id = vm.vmid?;
                    let copy = 900_000 + id;
                    let name = d.rsplit('/').next()?;
                    let rest = name.strip_prefix(&format!("vm-{id}-"))?;
                    let stem = rest.rsplit_once('.').map_or(rest, |(s, _)| s);
                    format!("{copy}/vm-{copy}-{stem}.qcow2")
                } else {
                    d.clone()
                };
                (vec![d.clone()], to)
            }
        });
    }
    let nics = if drill {
        // The host's drill network, which the driver's `drill-start` makes sure of.
        crate::vmdef::Nics::All(inv.drill_network_of(&host, &vm.driver.value))
    } else {
        crate::vmdef::Nics::Map(inv.networks_of(&host).cloned().unwrap_or_default())
    };
    vm.disks.first()?;
    let (from_host, dir) = match role {
        ReplicaRole::FailedBack => (primary.clone(), pdir),
        _ => (recovery.clone(), rdir),
    };
    let from_copies = vm.disks.iter().map(|d| format!("{dir}/{d}")).collect();
    let primary = drill
        .then(|| vm_action_command(model, service, vm, Side::Primary, "definition", run_id))
        .flatten();
    Some(DefineUse {
        command,
        current,
        undefine,
        from_host,
        from_copies,
        primary,
        fit: crate::vmdef::Fit {
            host: host.clone(),
            name: if drill {
                format!("drill-{}", vm.name)
            } else {
                vm.name.clone()
            },
            disks,
            disk_format: drill.then(|| "qcow2".to_string()),
            copies_raw: false,
            nics,
            // A drill's copy runs beside the vm it copies: new MACs and a new UUID.
            keep_macs: vm.keep_macs && !drill,
            keep_uuid: !drill,
            drill,
            seed: format!("{run_id}/{}", vm.id),
            boot_folders: inv
                .hosts
                .get(&host)
                .map(|h| h.boot_folders.clone())
                .unwrap_or_else(|| crate::inventory::BOOT_FOLDERS.map(String::from).to_vec()),
        },
        format,
        host,
    })
}

/// A driver's replication hook (`replicate-begin`, `replicate-end`) of `vm`, on its primary
/// host: the host and the command, secrets unresolved. `None` also when it does not render:
/// a replication asks [`replicate_hook_checked`] first.
pub fn replicate_hook(model: &Model, vm: &Vm, action: &str) -> Option<(String, Command)> {
    replicate_hook_checked(model, vm, action).ok().flatten()
}

/// The service a vm's hooks are rendered with: its own, else any, else one standing for the
/// vm alone (an inventory of vms and no services yet).
fn hook_service<'i>(inv: &'i Inventory, vm: &Vm) -> std::borrow::Cow<'i, Service> {
    match inv
        .services
        .values()
        .find(|s| s.vm() == Some(vm.id.as_str()))
        .or_else(|| inv.services.values().next())
    {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(stand_in_service(vm)),
    }
}

/// A service standing for `vm` alone.
fn stand_in_service(vm: &Vm) -> Service {
    Service {
        id: vm.id.clone(),
        description: None,
        kind: "vm".into(),
        owner: None,
        rto: crate::duration::Duration(0),
        rpo: None,
        depends_on: Vec::new(),
        placement: crate::inventory::Placement::Vm(crate::fields::Sp::new(
            vm.id.clone(),
            vm.loc.clone(),
        )),
        replication: crate::inventory::Replication::Disk,
        loc: vm.loc.clone(),
    }
}

/// The replication hooks a driver may have, run on a vm's primary around its replication.
pub const REPLICATE_HOOKS: [&str; 4] = [
    "replicate-check",
    "definition",
    "replicate-begin",
    "replicate-end",
];

/// [`replicate_hook`], telling a hook the driver has that cannot be written for `vm` (a
/// variable its primary lacks, a value that cannot stand where it is put) from one the
/// driver does not have (`Ok(None)`): a hook taken for absent would leave a running vm
/// unfrozen while its disks are read (a copy of no instant recorded good), or frozen for
/// good.
pub fn replicate_hook_checked(
    model: &Model,
    vm: &Vm,
    action: &str,
) -> Result<Option<(String, Command)>, String> {
    // The templates' scope needs a service: the vm's own, else any, else one standing for
    // the vm alone (an inventory of vms and no services yet).
    let service = hook_service(&model.inventory, vm);
    vm_action_checked(model, &service, vm, Side::Primary, action, "replicate")
}

/// The vm action that undoes `action` (a vm stopped is started again, and so on); none for
/// drill copies, which their cleanup removes.
pub(super) fn undo_action(action: &str) -> Option<&'static str> {
    match action {
        "stop" => Some("start"),
        "start" => Some("stop"),
        "autostart-off" => Some("autostart-on"),
        "autostart-on" => Some("autostart-off"),
        _ => None,
    }
}

/// The folder of a host's vm disk images (its `images_dir` variable), without a trailing `/`.
pub fn images_dir_of(inv: &Inventory, host: &str) -> Option<String> {
    match inv.hosts.get(host).and_then(|h| h.vars.get("images_dir")) {
        Some(crate::inventory::VarValue::Text(d)) => Some(d.trim_end_matches('/').to_string()),
        _ => None,
    }
}
