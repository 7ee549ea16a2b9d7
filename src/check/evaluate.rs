//! Judging what was gathered ([`evaluate`]): a pure function of the probes, the plans and the
//! time passed in, one function per family of checks.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::{
    CheckOptions, HostProbe, Plans, ReplicaTarget, Space, bash_only, host_commands, human_secs,
    secrets_needed, tools_by_host,
};
use crate::model::Model;
use crate::readiness::{ItemStatus, ReadinessItem};

/// How much a drill copy is expected to write into its overlays: a tenth of each copy it is
/// backed by, and at least [`OVERLAY_FLOOR`] per disk (a booted guest writes its logs,
/// temporary files and journals there for the length of the drill).
pub fn overlay_estimate(copy_bytes: u64) -> u64 {
    (copy_bytes / 10).max(OVERLAY_FLOOR)
}

/// The least a drill overlay is counted for.
pub const OVERLAY_FLOOR: u64 = 64 << 20;

pub(super) fn item(area: &str, subject: &str, status: ItemStatus, detail: String) -> ReadinessItem {
    ReadinessItem {
        area: area.to_string(),
        subject: subject.to_string(),
        status,
        detail,
    }
}

pub(super) fn human_bytes(b: u64) -> String {
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

/// Judges what was gathered. Pure: `now` is passed in. The items come family by family:
/// hosts (reachability, clock, tools), replica copies, replication snapshots, drill networks,
/// room for drill overlays, secrets, shell syntax, room for replication, runbooks, RTO.
pub fn evaluate(
    model: &Model,
    plans: &Plans,
    replicas: &[ReplicaTarget],
    probes: &BTreeMap<String, HostProbe>,
    opts: &CheckOptions,
    now: DateTime<Utc>,
) -> Vec<ReadinessItem> {
    let mut items = host_items(model, plans, replicas, probes, opts);
    let (copies, needs) = copy_items(replicas, probes, now);
    items.extend(copies);
    items.extend(vm_point_items(model, replicas, probes, now));
    items.extend(refused_replication_items(replicas, probes));
    items.extend(snapshot_items(model, replicas, probes));
    items.extend(drill_network_items(plans, probes));
    items.extend(overlay_space_items(plans, probes));
    items.extend(secret_items(plans, opts));
    items.extend(shell_items(plans));
    items.extend(needs.iter().map(|((host, _), need)| need.item(host)));
    items.extend(runbook_items(plans));
    items.extend(rto_items(plans));
    items
}

/// Reachability, clocks and tools, host by host. A host no plan or replica uses that cannot
/// be reached is a warning, not a failure.
fn host_items(
    model: &Model,
    plans: &Plans,
    replicas: &[ReplicaTarget],
    probes: &BTreeMap<String, HostProbe>,
    opts: &CheckOptions,
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
        items.push(clock_item(host, probe, opts));
        if let Some(needed) = tools.get(host).filter(|n| !n.is_empty()) {
            items.push(tools_item(host, probe, needed));
        }
    }
    items
}

/// A host's clock against this machine's, within the tolerance (the uncertainty of the
/// reading counted in its favour).
fn clock_item(host: &str, probe: &HostProbe, opts: &CheckOptions) -> ReadinessItem {
    let Some((skew, uncertainty)) = probe.skew_s else {
        return item(
            "clock",
            host,
            ItemStatus::Warning,
            "its clock could not be read (`date +%s.%N`)".to_string(),
        );
    };
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
    item("clock", host, status, detail)
}

/// The programs a host's commands call: all found, or the missing ones with a step that
/// needs each.
fn tools_item(host: &str, probe: &HostProbe, needed: &BTreeMap<String, String>) -> ReadinessItem {
    if probe.missing_tools.is_empty() {
        let names: Vec<&str> = needed.keys().map(String::as_str).collect();
        return item(
            "tools",
            host,
            ItemStatus::Ok,
            format!("{} found: {}", names.len(), names.join(", ")),
        );
    }
    let missing: Vec<String> = probe
        .missing_tools
        .iter()
        .map(|t| match needed.get(t) {
            Some(step) => format!("{t} (needed by {step})"),
            None => t.clone(),
        })
        .collect();
    item(
        "tools",
        host,
        ItemStatus::Failed,
        format!("missing: {}", missing.join(", ")),
    )
}

/// One filesystem of a recovery host and what the next replication of the copies on it
/// needs there. Sizes come from the hosts: their sums are checked.
struct SpaceNeed {
    total: u64,
    /// The least free space any answer about it said.
    avail: u64,
    /// The largest copy without points: its first point may rewrite it whole, beside the
    /// old one.
    largest: u64,
    /// What the copies grow by; `None` when the sum overflows.
    growth: Option<u64>,
    /// The copies on it.
    paths: Vec<String>,
}

impl SpaceNeed {
    fn new(space: &Space) -> Self {
        SpaceNeed {
            total: space.total,
            avail: space.avail,
            largest: 0,
            growth: Some(0),
            paths: Vec::new(),
        }
    }

    /// Counts one copy of `copy_bytes` whose source holds `src_bytes`.
    fn add(&mut self, copy: &str, avail: u64, src_bytes: u64, copy_bytes: u64, points: bool) {
        self.avail = self.avail.min(avail);
        let growth = src_bytes.saturating_sub(copy_bytes);
        if points {
            // Updated in place: the journal and the reverse delta hold what changed,
            // counted as a tenth of the image.
            self.growth = self
                .growth
                .and_then(|g| g.checked_add(growth))
                .and_then(|g| g.checked_add(src_bytes / 10));
        } else {
            // A copy without points: its first point may rewrite it whole.
            self.largest = self.largest.max(src_bytes);
            self.growth = self.growth.and_then(|g| g.checked_add(growth));
        }
        self.paths.push(copy.to_string());
    }

    /// Room for the next replication on `host`: failed when it does not fit, a warning when
    /// the disk would be over 90% full after it.
    fn item(&self, host: &str) -> ReadinessItem {
        let (total, avail, largest) = (self.total, self.avail, self.largest);
        let sums = self.growth.and_then(|growth| {
            let need = largest.checked_add(growth)?;
            let used_after = total.saturating_sub(avail).checked_add(need)?;
            Some((growth, need, used_after))
        });
        let Some((growth, need, used_after)) = sums else {
            return item(
                "space",
                host,
                ItemStatus::Failed,
                "the sizes this host reported add up to more than 16 EiB: its answers cannot be right"
                    .to_string(),
            );
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
        let detail = if self.paths.len() == 1 {
            format!("{detail} (for {})", self.paths[0])
        } else {
            format!("{detail} (for {} copies)", self.paths.len())
        };
        item("space", host, status, detail)
    }
}

/// Replica copies: present, fresh against the RPO, with the room their next update needs on
/// each filesystem of their recovery host, by (host, mount).
fn copy_items(
    replicas: &[ReplicaTarget],
    probes: &BTreeMap<String, HostProbe>,
    now: DateTime<Utc>,
) -> (Vec<ReadinessItem>, BTreeMap<(String, String), SpaceNeed>) {
    let mut items = Vec::new();
    let mut needs: BTreeMap<(String, String), SpaceNeed> = BTreeMap::new();
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
        let (points_item, has_points) = points_item(r, dest, now);
        items.push(points_item);
        if let Some(space) = dest.space.get(&r.copy) {
            let src_bytes = source.map(|s| s.bytes).unwrap_or(copy.bytes);
            needs
                .entry((r.to_host.clone(), space.mount.clone()))
                .or_insert_with(|| SpaceNeed::new(space))
                .add(&r.copy, space.avail, src_bytes, copy.bytes, has_points);
        }
    }
    (items, needs)
}

/// How a present copy's replica points stand (`replica::choice::judge`), and whether it has
/// any.
fn points_item(r: &ReplicaTarget, dest: &HostProbe, now: DateTime<Utc>) -> (ReadinessItem, bool) {
    use crate::replica::choice::{Level, judge};
    let Some(state) = dest.copies.get(&r.copy) else {
        let detail = format!(
            "its replica points on {} could not be read: {}",
            r.to_host,
            dest.copies_error.as_deref().unwrap_or("no answer about it")
        );
        return (item("replicas", &r.what, ItemStatus::Failed, detail), false);
    };
    let id = r.what.split_whitespace().nth(1).unwrap_or(&r.what);
    let mut state = state.clone();
    crate::replica::choice::note_sources(
        std::slice::from_mut(&mut state),
        &[format!("{}:{}", r.from_host, r.source)],
    );
    let state = &state;
    let (level, detail) = judge(state, id, r.rpo_s, now);
    let status = match level {
        Level::Ok => ItemStatus::Ok,
        Level::Warning => ItemStatus::Warning,
        Level::Failed => ItemStatus::Failed,
    };
    let detail = match (&r.service, level) {
        (Some(s), Level::Failed) if detail.contains("RPO") => format!("{detail} (RPO of {s})"),
        _ if level == Level::Ok => {
            format!("{detail}, {} on {}", human_bytes(state.size), r.to_host)
        }
        _ => detail,
    };
    // What is wrong names the copy: its host and its file or folder.
    let detail = if level == Level::Ok {
        detail
    } else {
        format!(
            "{detail} (the {} {}:{})",
            if r.dir { "folder" } else { "copy" },
            r.to_host,
            r.copy
        )
    };
    (
        item("replicas", &r.what, status, detail),
        !state.points.is_empty(),
    )
}

/// The copies of vm `id`'s disks, in its order.
fn copies_of<'a>(
    replicas: &'a [ReplicaTarget],
    id: &str,
) -> impl Iterator<Item = &'a ReplicaTarget> {
    let of_vm = format!("vm {id} (");
    replicas.iter().filter(move |r| r.what.starts_with(&of_vm))
}

/// The vms whose disks' newest points differ (a replication stopped between two of them): a
/// drill does not start such a vm, and a failover rolls every disk back to the newest point
/// they all hold good, or, with none, does not start it unless the operator names it. Each
/// copy on its own may look fine: this is the vm's point as a whole, decided as a run does
/// ([`crate::replica::choice`]).
fn vm_point_items(
    model: &Model,
    replicas: &[ReplicaTarget],
    probes: &BTreeMap<String, HostProbe>,
    now: DateTime<Utc>,
) -> Vec<ReadinessItem> {
    use crate::replica::choice::{common_fallback, newest_differ, unverified};
    let mut items = Vec::new();
    for vm in model.inventory.vms.values().filter(|vm| vm.disks.len() > 1) {
        let states: Option<Vec<_>> = copies_of(replicas, &vm.id)
            .map(|r| {
                probes
                    .get(&r.to_host)
                    .and_then(|p| p.copies.get(&r.copy))
                    .cloned()
            })
            .collect();
        // A copy that cannot be read, or is unverified on its own, has its own item.
        let Some(states) = states.filter(|s| {
            s.len() > 1
                && s.iter()
                    .all(|d| d.exists && !d.busy && unverified(d, None).is_none())
        }) else {
            continue;
        };
        let Some(why) = newest_differ(&states) else {
            continue;
        };
        // The point a failover would start from is judged by the vm's target as each copy's
        // newest is: an older one in common may be past it.
        let rpo_s = copies_of(replicas, &vm.id).find_map(|r| r.rpo_s);
        let past_target = |id: &str| {
            let at = states[0].points.iter().find(|p| p.id == id)?.taken_at;
            let age = (now - at).num_seconds().max(0) as u64;
            rpo_s.filter(|r| age > *r).map(|r| (age, r))
        };
        let (status, detail) = match common_fallback(&states).and_then(|(id, _)| id) {
            Some(id) if let Some((age, rpo)) = past_target(&id) => (
                ItemStatus::Failed,
                format!(
                    "{why}: a failover would roll every disk back to point {id}, their newest good point in common, taken {} ago, over the RPO target of {}, and a drill would not start it; replicate it again (`reprise replicate --service {}`)",
                    crate::duration::Duration(age),
                    crate::duration::Duration(rpo),
                    vm.id
                ),
            ),
            Some(id) => (
                ItemStatus::Warning,
                format!(
                    "{why}: a failover would roll every disk back to point {id}, their newest good point in common, and a drill would not start it; replicate it again (`reprise replicate --service {}`)",
                    vm.id
                ),
            ),
            None => (
                ItemStatus::Failed,
                format!(
                    "{why}, and no good point is on every disk: a failover would not start it (unless named with --accept-unverified, from disks of different moments), nor would a drill; replicate it again (`reprise replicate --service {}`)",
                    vm.id
                ),
            ),
        };
        items.push(item("replicas", &format!("vm {}", vm.id), status, detail));
    }
    items
}

/// Copies a replication would refuse to write now (`replica::choice::replication_refusal`),
/// one item a vm or backup set, `vm erp-db (replication)`: they are not brought up to date,
/// and a planned failover whose final sync copies them would stop there, after the primary
/// is stopped ([`super::failover_blockers`] stops it before).
fn refused_replication_items(
    replicas: &[ReplicaTarget],
    probes: &BTreeMap<String, HostProbe>,
) -> Vec<ReadinessItem> {
    use crate::replica::choice::{name, note_sources, replication_refusal};
    let mut by_item: Vec<(String, Vec<String>)> = Vec::new();
    for r in replicas {
        let Some(state) = probes.get(&r.to_host).and_then(|p| p.copies.get(&r.copy)) else {
            continue;
        };
        let mut state = state.clone();
        note_sources(
            std::slice::from_mut(&mut state),
            &[format!("{}:{}", r.from_host, r.source)],
        );
        let of = r.what.split(" (").next().unwrap_or(&r.what).to_string();
        let id = of.split_whitespace().nth(1).unwrap_or(&of);
        let Some(why) = replication_refusal(&state, id, r.dir) else {
            continue;
        };
        let why = format!("{}: {why}", name(&r.copy));
        match by_item.iter_mut().find(|(o, _)| *o == of) {
            Some((_, all)) => all.push(why),
            None => by_item.push((of, vec![why])),
        }
    }
    by_item
        .into_iter()
        .map(|(of, why)| {
            item(
                "replicas",
                &format!("{of} (replication)"),
                ItemStatus::Warning,
                format!(
                    "a replication refuses to write its copy now, so it is not kept up to date: {}",
                    why.join("; ")
                ),
            )
        })
        .collect()
}

/// Snapshots of running vms left on their primary host by an interrupted replication: the vm
/// writes to an overlay that no replication copies.
fn snapshot_items(
    model: &Model,
    replicas: &[ReplicaTarget],
    probes: &BTreeMap<String, HostProbe>,
) -> Vec<ReadinessItem> {
    let mut items = Vec::new();
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
        let replicating = copies_of(replicas, &vm.id).any(|r| {
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
    items
}

/// The drill networks: absent (a drill creates them) or isolated, once per host and network.
fn drill_network_items(plans: &Plans, probes: &BTreeMap<String, HostProbe>) -> Vec<ReadinessItem> {
    let mut items = Vec::new();
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
    items
}

/// Room for the drill overlays on each recovery host (see [`overlay_estimate`]), by host and
/// folder.
fn overlay_space_items(plans: &Plans, probes: &BTreeMap<String, HostProbe>) -> Vec<ReadinessItem> {
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
    let mut items = Vec::new();
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
    items
}

/// Secrets the commands read from reprise's environment.
fn secret_items(plans: &Plans, opts: &CheckOptions) -> Vec<ReadinessItem> {
    secrets_needed(plans)
        .into_iter()
        .map(|(name, step)| {
            if opts.secrets_set.contains(&name) {
                item(
                    "secrets",
                    &name,
                    ItemStatus::Ok,
                    format!("set (needed by {step})"),
                )
            } else {
                item(
                    "secrets",
                    &name,
                    ItemStatus::Failed,
                    format!(
                        "not set in reprise's environment, and {step} reads it: export {name} before running reprise"
                    ),
                )
            }
        })
        .collect()
}

/// Commands run under `sh`: bash syntax there fails when it runs (one item per step or hook).
fn shell_items(plans: &Plans) -> Vec<ReadinessItem> {
    let mut items = Vec::new();
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
    items
}

/// Runbooks: every mode plans.
fn runbook_items(plans: &Plans) -> Vec<ReadinessItem> {
    let mut items = Vec::new();
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
    items
}

/// Estimated RTO of an emergency failover, the worst case, against each target.
fn rto_items(plans: &Plans) -> Vec<ReadinessItem> {
    let Some(plan) = plans.emergency() else {
        return Vec::new();
    };
    let mut items = Vec::new();
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
    items
}

#[cfg(test)]
mod tests {
    use super::super::example;
    use super::super::{PathStat, Space, replica_targets};
    use super::*;

    /// Items judged from hosts that answered: hv-pra's clock 12s ahead, hv-main's in time;
    /// the copies on hv-pra 1 GiB each with 3 GiB free where they grow to 2 GiB; the ERP data
    /// disk 20 minutes old and without points, dc1's newest point damaged, dc2's copy held by
    /// a running replication; snapshots left on hv-main by replications of erp-db and dc2;
    /// a host no plan uses unreachable.
    fn judged() -> Judged {
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
                    unusable: None,
                    pending: false,
                    newest_file: None,
                    left_out: Vec::new(),
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
        Judged(evaluate(
            &model,
            &plans,
            &replicas,
            &probes,
            &CheckOptions::default(),
            now,
        ))
    }

    struct Judged(Vec<ReadinessItem>);

    impl Judged {
        fn status(&self, area: &str, subject: &str) -> Option<ItemStatus> {
            self.0
                .iter()
                .find(|i| i.area == area && i.subject == subject)
                .map(|i| i.status)
        }

        fn detail(&self, subject: &str) -> String {
            self.0
                .iter()
                .find(|i| i.subject == subject)
                .map(|i| i.detail.clone())
                .unwrap_or_default()
        }
    }

    #[test]
    fn a_clock_is_judged_against_the_tolerance() {
        let j = judged();
        assert_eq!(j.status("clock", "hv-pra"), Some(ItemStatus::Failed));
        assert_eq!(j.status("clock", "hv-main"), Some(ItemStatus::Ok));
    }

    #[test]
    fn a_copy_older_than_its_rpo_or_without_points_fails() {
        let j = judged();
        assert_eq!(
            j.status("replicas", "vm erp-db (erp-db-data.qcow2)"),
            Some(ItemStatus::Failed)
        );
        assert_eq!(
            j.status("replicas", "vm erp-db (erp-db-system.qcow2)"),
            Some(ItemStatus::Ok)
        );
        assert!(
            j.detail("vm erp-db (erp-db-data.qcow2)")
                .starts_with("UNVERIFIED"),
            "{}",
            j.detail("vm erp-db (erp-db-data.qcow2)")
        );
    }

    /// A backup set's copy changed behind its newest point (a file added, removed or
    /// rewritten) fails, naming the set, its host and folder and what to do; the same copy
    /// still its point passes with that point.
    #[test]
    fn a_backup_set_copy_changed_behind_its_point_fails_naming_its_folder() {
        let model = example();
        let r = replica_targets(&model)
            .into_iter()
            .find(|r| r.what == "backup erp-dumps")
            .unwrap();
        let now = Utc::now();
        let point: crate::replica::Point = serde_json::from_str(&format!(
            r#"{{"id":"P1","taken_at":"{}","source":"{}:{}","size":1,"blake3":"{}","verified":"yes","checked_at":null,"received_bytes":0,"duration_ms":0,"stamp":"tree a"}}"#,
            (now - chrono::Duration::hours(1)).to_rfc3339(),
            r.from_host,
            r.source,
            "00".repeat(32)
        ))
        .unwrap();
        let mut state = crate::replica::CopyState {
            path: r.copy.clone(),
            exists: true,
            size: 1,
            managed: true,
            points: vec![point],
            stamp: Some("tree a".into()),
            ..Default::default()
        };
        let mut dest = HostProbe::default();
        dest.copies.insert(r.copy.clone(), state.clone());
        let (ok, _) = points_item(&r, &dest, now);
        assert_eq!(ok.status, ItemStatus::Ok, "{}", ok.detail);
        assert!(ok.detail.contains("P1"), "{}", ok.detail);
        state.changed = Some("the copy changed since its newest point P1 was made".into());
        dest.copies.insert(r.copy.clone(), state);
        let (failed, _) = points_item(&r, &dest, now);
        assert_eq!(failed.status, ItemStatus::Failed);
        assert_eq!(failed.subject, "backup erp-dumps");
        assert!(
            failed
                .detail
                .starts_with("UNVERIFIED: the copy changed since its newest point P1")
                && failed.detail.contains("`reprise verify erp-dumps`")
                && failed
                    .detail
                    .ends_with("(the folder nas-pra:/srv/backups/erp)"),
            "{}",
            failed.detail
        );
    }

    /// A vm whose disks' newest points differ (a replication stopped between them) is judged
    /// as a run would start it: a warning while a failover can roll every disk back to a
    /// point they share, a failure when they share none (a failover would not start it).
    #[test]
    fn a_vm_whose_disks_share_no_good_point_fails_though_each_copy_passes() {
        let model = example();
        let replicas = replica_targets(&model);
        let now = Utc::now();
        let of_lms: Vec<&ReplicaTarget> = replicas
            .iter()
            .filter(|r| r.what.starts_with("vm lms ("))
            .collect();
        assert_eq!(of_lms.len(), 2);
        let point = |id: &str, mins: i64| -> crate::replica::Point {
            serde_json::from_str(&format!(
                r#"{{"id":"{id}","taken_at":"{}","source":"s","size":1,"blake3":"{}","verified":"yes","checked_at":null,"received_bytes":0,"duration_ms":0}}"#,
                (now - chrono::Duration::minutes(mins)).to_rfc3339(),
                "00".repeat(32)
            ))
            .unwrap()
        };
        let judge = |system: Vec<crate::replica::Point>, data: Vec<crate::replica::Point>| {
            let mut dest = HostProbe::default();
            for (r, points) in of_lms.iter().zip([system, data]) {
                let state = crate::replica::CopyState {
                    path: r.copy.clone(),
                    exists: true,
                    size: 1,
                    managed: true,
                    points,
                    ..Default::default()
                };
                dest.copies.insert(r.copy.clone(), state);
            }
            let probes: BTreeMap<String, HostProbe> =
                [(of_lms[0].to_host.clone(), dest)].into_iter().collect();
            vm_point_items(&model, &replicas, &probes, Utc::now())
        };
        let (p1, p2) = (point("P1", 40), point("P2", 5));
        assert!(judge(vec![p1.clone(), p2.clone()], vec![p1.clone(), p2.clone()]).is_empty());
        let stopped = judge(vec![p1.clone(), p2.clone()], vec![p1.clone()]);
        assert_eq!(stopped.len(), 1, "{stopped:?}");
        assert_eq!(
            (stopped[0].subject.as_str(), stopped[0].status),
            ("vm lms", ItemStatus::Warning)
        );
        assert!(
            stopped[0].detail.contains("newest points differ")
                && stopped[0]
                    .detail
                    .contains("roll every disk back to point P1"),
            "{}",
            stopped[0].detail
        );
        // The point in common past the vm's target: a failover would start from data older
        // than it allows, which each copy's newest point does not show.
        let rpo_mins = (of_lms[0].rpo_s.expect("lms has a target") / 60) as i64;
        let old = point("P0", rpo_mins + 10);
        let past = judge(
            vec![old.clone(), p1.clone(), p2.clone()],
            vec![old.clone(), p1.clone()],
        );
        assert_eq!(past.len(), 1, "{past:?}");
        assert_eq!(
            past[0].status,
            ItemStatus::Warning,
            "P1 is within: {past:?}"
        );
        let past = judge(vec![old.clone(), p2.clone()], vec![old, point("P3", 2)]);
        assert_eq!(past.len(), 1, "{past:?}");
        assert_eq!(past[0].status, ItemStatus::Failed, "{past:?}");
        assert!(
            past[0].detail.contains(
                "roll every disk back to point P0, their newest good point in common, taken "
            ) && past[0].detail.contains(" ago, over the RPO target of "),
            "{}",
            past[0].detail
        );
        let apart = judge(vec![p2], vec![p1]);
        assert_eq!(apart.len(), 1, "{apart:?}");
        assert_eq!(apart[0].status, ItemStatus::Failed);
        assert!(
            apart[0].detail.contains("no good point is on every disk")
                && apart[0].detail.contains("reprise replicate --service lms"),
            "{}",
            apart[0].detail
        );
    }

    #[test]
    fn a_copy_whose_newest_point_is_damaged_fails() {
        assert_eq!(
            judged().status("replicas", "vm dc1 (dc1-system.qcow2)"),
            Some(ItemStatus::Failed),
            "a failover would start from a damaged copy"
        );
    }

    #[test]
    fn a_replication_snapshot_left_behind_fails() {
        let j = judged();
        assert_eq!(
            j.status("replicas", "vm erp-db (snapshot)"),
            Some(ItemStatus::Failed)
        );
        assert!(
            j.detail("vm erp-db (snapshot)")
                .contains("reprise replicate --service erp-db")
        );
        assert_eq!(j.status("replicas", "vm dc1 (snapshot)"), None);
    }

    #[test]
    fn the_snapshot_of_a_replication_running_now_is_only_a_warning() {
        // The snapshot of a replication that holds the copies right now is not a leftover.
        let j = judged();
        assert_eq!(
            j.status("replicas", "vm dc2 (snapshot)"),
            Some(ItemStatus::Warning)
        );
        assert!(
            j.detail("vm dc2 (snapshot)")
                .contains("a replication is running now")
        );
    }

    #[test]
    fn room_for_the_next_replication_is_judged_per_filesystem() {
        // Every copy grows by 1 GiB, more than the 3 GiB free.
        assert_eq!(judged().status("space", "hv-pra"), Some(ItemStatus::Failed));
    }

    #[test]
    fn a_host_no_plan_uses_is_only_a_warning_when_unreachable() {
        assert_eq!(
            judged().status("ssh", "not-in-any-plan"),
            Some(ItemStatus::Warning),
            "a host no plan uses does not stop a recovery"
        );
    }

    #[test]
    fn every_mode_plans_and_the_estimates_meet_the_targets() {
        // Every mode plans and the emergency failover's estimates meet the example's targets.
        let j = judged();
        assert!(
            j.0.iter()
                .filter(|i| i.area == "runbooks" || i.area == "rto")
                .all(|i| i.status == ItemStatus::Ok)
        );
        assert_eq!(j.0.iter().filter(|i| i.area == "runbooks").count(), 5);
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
}
