//! Last night's replication, seeded by `lab up`: a verified point of every vm disk and backup
//! set on the recovery side, replicated as `reprise replicate` does over the lab's sshd.

use std::time::Duration;

use crate::model::Model;
use crate::plan;

use crate::replica::remote::{
    Helpers, HostUse, Replication, image_path, point_id, point_taken_now,
};

use super::LabError;

/// One copy of last night's replication: a vm disk (the first carrying the vm's definition)
/// or a backup set's folder.
struct Seed {
    from: String,
    src: String,
    to: String,
    dst: String,
    retention: u32,
    /// A backup set's folder, replicated as a tree; else a disk image.
    folder: bool,
    definition: Option<String>,
}

/// Last night's replication, as cron leaves it on a real site: every vm disk and backup set
/// of the lab has a verified replica point on the recovery side (replicated as `reprise
/// replicate` does, over the lab's sshd; no snapshot: the lab's vms write nothing).
pub(super) fn seed_points(model: &Model) -> Result<(), LabError> {
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
    // Taken as any point is: in a second after the one this process began in.
    let now = point_taken_now("lab seed");
    let replication = |retention, definition| Replication {
        point: point_id(now),
        taken_at: now,
        retention,
        reread: false,
        compress: false,
        live: false,
        pending: false,
        deadline: Duration::from_secs(600),
        definition,
        reads: None,
        overwrite_changed: false,
    };
    let copies = seeds(model, &helpers)?;
    let mut hosts: Vec<&str> = copies
        .iter()
        .flat_map(|c| [c.from.as_str(), c.to.as_str()])
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    let hosts: Vec<HostUse> = hosts
        .into_iter()
        .map(|host| HostUse {
            host,
            reads: 1,
            writes: 1,
        })
        .collect();
    helpers.prepare(&hosts);
    let failed: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = copies
            .iter()
            .map(|c| {
                let helpers = &helpers;
                scope.spawn(move || {
                    let r = replication(c.retention, c.definition.clone());
                    let done = if c.folder {
                        helpers.replicate_tree(&c.from, &c.src, &c.to, &c.dst, &r)
                    } else {
                        helpers.replicate(&c.from, &c.src, &c.to, &c.dst, &r, None)
                    };
                    done.err()
                        .map(|e| format!("{}:{} → {}:{}: {e}", c.from, c.src, c.to, c.dst))
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
        Err(failure(failed.join("; ")))
    }
}

fn failure(stderr: String) -> LabError {
    LabError::Command {
        command: "the lab's first replication".into(),
        stderr,
    }
}

/// Every copy to seed: each vm's disks (its definition, captured on its primary, going with
/// its first disk), then each backup set.
fn seeds(model: &Model, helpers: &Helpers) -> Result<Vec<Seed>, LabError> {
    let inv = &model.inventory;
    let mut copies = Vec::new();
    for vm in inv.vms.values() {
        let (from, to) = (&vm.primary.value, &vm.recovery.value);
        let (Some(a), Some(b)) = (plan::images_dir_of(inv, from), plan::images_dir_of(inv, to))
        else {
            continue;
        };
        let definition = definition(model, helpers, vm, &b)?;
        for (i, d) in vm.disks.iter().enumerate() {
            copies.push(Seed {
                from: from.clone(),
                src: image_path(&a, d),
                to: to.clone(),
                dst: image_path(&b, d),
                retention: vm.retention,
                folder: false,
                definition: if i == 0 { definition.clone() } else { None },
            });
        }
    }
    for set in inv.backups.values() {
        copies.push(Seed {
            from: set.source_host.value.clone(),
            src: set.source_path.clone(),
            to: set.dest_host.value.clone(),
            dst: set.dest_path.clone(),
            retention: set.retention,
            folder: true,
            definition: None,
        });
    }
    Ok(copies)
}

/// A vm's definition, as its driver prints it on its primary, when the driver defines vms:
/// it goes with the point, beside its first disk's copy (in `images`, the recovery side's
/// images folder).
fn definition(
    model: &Model,
    helpers: &Helpers,
    vm: &crate::inventory::Vm,
    images: &str,
) -> Result<Option<String>, LabError> {
    let hook = model
        .inventory
        .drivers
        .get(&vm.driver.value)
        .filter(|d| d.defines())
        .and_then(|d| {
            let format = d.definition_format?;
            plan::replicate_hook(model, vm, "definition").map(|(h, c)| (h, c, format))
        });
    let (Some((host, cmd, format)), Some(first)) = (hook, vm.disks.first()) else {
        return Ok(None);
    };
    let text = cmd
        .expose(|n| std::env::var(n).ok())
        .map_err(|m| failure(format!("{}: secret {m} is not set", vm.id)))?;
    crate::replica::definitions::capture(
        helpers,
        format,
        &host,
        &text,
        &vm.recovery.value,
        &image_path(images, first),
    )
    .map(Some)
    .map_err(|e| failure(format!("{}: {e}", vm.id)))
}
