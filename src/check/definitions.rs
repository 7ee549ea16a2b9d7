//! The `definitions` items: whether each vm a drill or a failover defines would be defined
//! from a usable definition that fits its host now.

use std::collections::BTreeMap;

use super::{Plans, item};
use crate::readiness::{ItemStatus, ReadinessItem};
use crate::ssh::Transport;

/// One way a vm would be defined: where, under which name, from which definition. Modes that
/// define a vm alike share its item.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Defining {
    vm: String,
    host: String,
    name: String,
    source: String,
}

/// Whether each vm a drill or a failover defines would be defined from a usable definition
/// now: one that its newest usable point holds (or, in a planned failover, that its primary
/// holds, which the last replication captures), whose NICs all have a mapping and whose
/// disks are its copies. A vm defined alike by several modes gets one item naming them all.
/// (A failback is judged when it starts, see
/// [`failback_blockers`](super::failback_blockers): before a failover there is nothing to
/// fail back.)
pub(super) fn definition_items(plans: &Plans, transport: &dyn Transport) -> Vec<ReadinessItem> {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let secrets = crate::runner::env_secrets();
    let mut seen: BTreeMap<Defining, usize> = BTreeMap::new();
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
            let key = Defining {
                vm: p.vm.clone(),
                host: p.host.clone(),
                name: p.name.clone(),
                source: p.source.clone(),
            };
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
pub(super) fn definition_item(
    p: &crate::replica::definitions::Prospect,
    label: &str,
) -> ReadinessItem {
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
