//! The replica copies of the inventory ([`ReplicaTarget`]) and the RPO each answers to
//! ([`rpo_service`], [`copy_rpo`]).

use crate::model::Model;
use crate::plan;
use crate::runbook::{ReplicaSource, StepKind};

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

#[cfg(test)]
mod tests {
    use super::super::example;
    use super::*;

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
}
