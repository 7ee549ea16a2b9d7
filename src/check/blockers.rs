//! What stops a planned failover ([`failover_blockers`]) or a failback
//! ([`failback_blockers`]) before it starts, from a check's items.

use std::collections::BTreeSet;

use super::definitions::definition_item;
use super::{Plans, secrets_needed};
use crate::model::Model;
use crate::plan::{Action, Plan};
use crate::readiness::{ItemStatus, ReadinessItem};
use crate::ssh::Transport;

/// The failed items of a check that stop a planned failover on the recovery side (see
/// `plan`, the planned failover's plan): a recovery-site host it runs steps on that cannot be
/// reached, lacks a tool or room for the copies; a secret or bash syntax one of its steps
/// needs; the replication lag of a service it switches, unknown or over its RPO (its
/// `replication-lag` step would stop it there, after the primary side is stopped); a vm it
/// defines there whose definition would not fit; the copy of a backup set it relies on
/// without a final sync of its own that is not proven (no good point, unverified, changed
/// behind its point); a copy its final sync would refuse to write (a drill that still reads
/// it, what was written in it outside reprise: `vm X (replication)`). Problems of the primary
/// side (and of copies, which its final sync brings up to date) do not stop it.
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
    // The backup sets whose copies it relies on as they are (no final sync of its own makes
    // a new point of them first), as `replicas` items name them.
    let synced: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action_spec {
            Action::Replicate {
                what: crate::plan::Replicated::Backup(b),
                ..
            } => Some(b.as_str()),
            _ => None,
        })
        .collect();
    // The vms and backup sets its final sync copies, as `replicas` items name a replication
    // refused now: the sync would stop the failover there, after the primary is stopped.
    let refused_sync: BTreeSet<String> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action_spec {
            Action::Replicate { what, .. } => Some(match what {
                crate::plan::Replicated::Vm(v) => format!("vm {v} (replication)"),
                crate::plan::Replicated::Backup(b) => format!("backup {b} (replication)"),
            }),
            _ => None,
        })
        .collect();
    let relied_on: BTreeSet<String> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.action_spec {
            Action::BackupCopy(b) if !synced.contains(b.set.as_str()) => {
                Some(format!("backup {}", b.set))
            }
            _ => None,
        })
        .collect();
    let sync_refused = |i: &ReadinessItem| {
        i.area == "replicas" && i.status != ItemStatus::Ok && refused_sync.contains(&i.subject)
    };
    items
        .iter()
        .filter(|i| i.status == ItemStatus::Failed || sync_refused(i))
        .filter(|i| match i.area.as_str() {
            "replicas" if sync_refused(i) => true,
            "replicas" => relied_on.contains(&i.subject),
            "ssh" | "tools" | "space" => recovery_hosts.contains(i.subject.as_str()),
            "shell" => steps.contains(i.subject.as_str()),
            "secrets" => secrets.contains(&i.subject),
            "lag" => lags_held.contains(&i.subject),
            "definitions" => defined_by_planned_failover(&i.subject, &defined),
            _ => false,
        })
        .map(|i| match i.area.as_str() {
            "replicas" if sync_refused(i) => format!(
                "replicas {}: {}; the failover's final sync would refuse it after the primary side is stopped, and the failover would roll back there, --force or not",
                i.subject, i.detail
            ),
            "lag" => format!(
                "lag {}: {}; its replication-lag step reads it again before the switch and stops the failover there while it is unknown or over the RPO, --force or not",
                i.subject, i.detail
            ),
            _ => format!("{} {}: {}", i.area, i.subject, i.detail),
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::super::{example, item};
    use super::*;
    use crate::plan::{self, PlanOptions};
    use crate::runbook::Mode;

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
    /// A backup set's copy that is not proven blocks a planned failover that relies on it as
    /// it is, not one whose final sync makes a new point of it first.
    #[test]
    fn a_backup_set_copy_not_proven_blocks_a_planned_failover_that_relies_on_it_as_it_is() {
        let model = example();
        let mut plan = plan::build(&model, &PlanOptions::new(Mode::Failover)).unwrap();
        let items = [item(
            "replicas",
            "backup erp-dumps",
            ItemStatus::Failed,
            "UNVERIFIED: the copy changed since its newest point P1 was made".into(),
        )];
        assert!(failover_blockers(&model, &plan, &items).is_empty());
        plan.steps.retain(|s| s.id != "backups/final-erp-dumps");
        assert_eq!(
            failover_blockers(&model, &plan, &items),
            [
                "replicas backup erp-dumps: UNVERIFIED: the copy changed since its newest point P1 was made"
            ]
        );
    }

    /// A copy its final sync would refuse to write (a drill that still reads it, what was
    /// written in it outside reprise) blocks the planned failover that syncs it, warning or
    /// not: the sync would stop it after the primary side is stopped. Not another's, not a drill.
    #[test]
    fn a_copy_its_final_sync_would_refuse_blocks_a_planned_failover() {
        let model = example();
        let mut opts = PlanOptions::new(Mode::Failover);
        opts.services = vec!["erp-db".into()];
        opts.only = true;
        let plan = plan::build(&model, &opts).unwrap();
        let items = [
            item(
                "replicas",
                "vm erp-db (replication)",
                ItemStatus::Warning,
                "a replication refuses to write its copy now: erp-db-data.qcow2: read by a drill"
                    .into(),
            ),
            item(
                "replicas",
                "vm erp-app (replication)",
                ItemStatus::Warning,
                "a replication refuses to write its copy now: erp-app.qcow2: read by a drill"
                    .into(),
            ),
        ];
        let blockers = failover_blockers(&model, &plan, &items);
        assert_eq!(blockers.len(), 1, "{blockers:?}");
        assert!(
            blockers[0].starts_with("replicas vm erp-db (replication): a replication refuses")
                && blockers[0].contains("final sync would refuse it"),
            "{blockers:?}"
        );
        let drill = plan::build(&model, &PlanOptions::new(Mode::Drill)).unwrap();
        assert!(failover_blockers(&model, &drill, &items).is_empty());
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
