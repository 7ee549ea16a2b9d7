//! Last night's replication, seeded by `lab up`: a verified point of every vm disk and backup
//! set on the recovery side, replicated as `reprise replicate` does over the lab's sshd.

use std::time::Duration;

use crate::model::Model;
use crate::plan;

use super::LabError;

/// Last night's replication, as cron leaves it on a real site: every vm disk and backup set
/// of the lab has a verified replica point on the recovery side (replicated as `reprise
/// replicate` does, over the lab's sshd; no snapshot: the lab's vms write nothing).
pub(super) fn seed_points(model: &Model) -> Result<(), LabError> {
    use crate::replica::remote::{Helpers, Replication, image_path, point_id};
    let options = crate::run::SshOptions {
        policy: crate::ssh::HostKeyPolicy::Strict,
        known_hosts: crate::run::SshOptions::default_known_hosts(),
        known_hosts_given: false,
        identity: None,
        connect_timeout: Duration::from_secs(10),
        here: None,
        client: crate::ssh::SshClient::default(),
        // The lab's hosts are all named in full by its overlay.
        ssh_config: None,
    };
    let transport = crate::run::transport(model, &options);
    let helpers = Helpers::new(&transport);
    let now = chrono::Utc::now();
    let replication = |retention, definition| Replication {
        point: point_id(now),
        taken_at: now,
        retention,
        reread: false,
        compress: false,
        deadline: Duration::from_secs(600),
        definition,
    };
    let inv = &model.inventory;
    // (from, src, to, dst, retention, folder)
    let mut copies = Vec::new();
    for vm in inv.vms.values() {
        let (from, to) = (&vm.primary.value, &vm.recovery.value);
        let (Some(a), Some(b)) = (plan::images_dir_of(inv, from), plan::images_dir_of(inv, to))
        else {
            continue;
        };
        // Its definition goes with the point, beside its first disk's copy.
        let mut definition = None;
        if let (Some((host, cmd, format)), Some(first)) = (
            inv.drivers
                .get(&vm.driver.value)
                .filter(|d| d.defines())
                .and_then(|d| {
                    let format = d.definition_format?;
                    plan::replicate_hook(model, vm, "definition").map(|(h, c)| (h, c, format))
                }),
            vm.disks.first(),
        ) {
            let text = cmd
                .expose(|n| std::env::var(n).ok())
                .map_err(|m| LabError::Command {
                    command: "the lab's first replication".into(),
                    stderr: format!("{}: secret {m} is not set", vm.id),
                })?;
            definition = Some(
                crate::replica::definitions::capture(
                    &helpers,
                    format,
                    &host,
                    &text,
                    to,
                    &image_path(&b, first),
                )
                .map_err(|e| LabError::Command {
                    command: "the lab's first replication".into(),
                    stderr: format!("{}: {e}", vm.id),
                })?,
            );
        }
        for (i, d) in vm.disks.iter().enumerate() {
            copies.push((
                from.clone(),
                image_path(&a, d),
                to.clone(),
                image_path(&b, d),
                vm.retention,
                false,
                if i == 0 { definition.clone() } else { None },
            ));
        }
    }
    for set in inv.backups.values() {
        copies.push((
            set.source_host.value.clone(),
            set.source_path.clone(),
            set.dest_host.value.clone(),
            set.dest_path.clone(),
            set.retention,
            true,
            None,
        ));
    }
    let mut hosts: Vec<&str> = copies
        .iter()
        .flat_map(|c| [c.0.as_str(), c.2.as_str()])
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    helpers.prepare(&hosts);
    let failed: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = copies
            .iter()
            .map(|(from, src, to, dst, retention, folder, definition)| {
                let helpers = &helpers;
                scope.spawn(move || {
                    let r = replication(*retention, definition.clone());
                    let done = if *folder {
                        helpers.replicate_tree(from, src, to, dst, &r)
                    } else {
                        helpers.replicate(from, src, to, dst, &r, None)
                    };
                    done.err()
                        .map(|e| format!("{from}:{src} → {to}:{dst}: {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| {
                h.join()
                    .unwrap_or(Some("a replication thread stopped".into()))
            })
            .collect()
    });
    if failed.is_empty() {
        Ok(())
    } else {
        Err(LabError::Command {
            command: "the lab's first replication".into(),
            stderr: failed.join("; "),
        })
    }
}
