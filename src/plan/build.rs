//! Building a [`Plan`] from the model: selection, step resolution, ordering, estimates.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::diagnostic::{Diagnostic, Location};
use crate::duration::Duration;
use crate::inventory::Service;
use crate::model::Model;
use crate::plan::resolve::{resolve, site_violation};
use crate::plan::scope::{StepScope, render};
use crate::plan::{
    Action, Estimate, LeftOut, Plan, PlanOptions, PlannedService, PlannedStep, ReplicaRole,
    Replicated, Selection,
};
use crate::runbook::{Mode, Phase};
use crate::template::Template;

/// Makes the plan for `opts`, or every problem that prevents it.
pub fn build(model: &Model, opts: &PlanOptions) -> Result<Plan, Vec<Diagnostic>> {
    let mode = opts.mode;
    let mut diags = Vec::new();
    if opts.emergency && mode != Mode::Failover {
        diags.push(
            Diagnostic::error(format!("--emergency applies to failover, not to {mode}"))
                .hint("an emergency failover is `reprise plan failover --emergency`"),
        );
        return Err(diags);
    }
    let Selected {
        members,
        selection,
        order,
    } = select(model, opts)?;
    missing_runbooks(model, mode, &order, &members, &mut diags);

    // Steps, in dependency order.
    let mut planned = Planned::default();
    for &sid in &order {
        main_phase(model, opts, sid, &members, &mut planned, &mut diags);
    }
    cleanup_phase(model, opts, &order, &members, &mut planned, &mut diags);
    if matches!(mode, Mode::Failover | Mode::Failback) {
        let located = |s: &PlannedStep| {
            let book = model.runbooks.get(&s.service, mode)?;
            let step = book.steps.iter().find(|b| b.id.value == s.step)?;
            Some(step.id.loc.clone())
        };
        copy_order(&planned.steps, located, &mut diags);
        copies_apart(model, &planned.steps, located, &mut diags);
    }
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    let Planned {
        mut steps,
        left_out,
        main: main_steps,
        ..
    } = planned;
    keep_primary_definitions(&mut steps);
    let estimate = estimate(&mut steps, mode, &mut diags)?;
    let mut warnings = Vec::new();
    let services = planned_services(model, &order, &members, &main_steps, &steps, &mut warnings);
    let has_book = |s: &str| model.runbooks.get(s, mode).is_some();
    let not_covered = model
        .inventory
        .services
        .keys()
        .filter(|s| !members.contains(*s) && !has_book(s) && opts.services.is_empty())
        .cloned()
        .collect();
    Ok(Plan {
        mode,
        emergency: opts.emergency,
        run_id: opts.run_id.clone(),
        selection,
        services,
        steps,
        left_out,
        not_covered,
        estimate,
        warnings,
    })
}

/// In a failover or a failback, a vm's copy from one host to another (a planned failover's
/// final sync, a failback's copy back) moves what it wrote on the first host to the second:
/// the vm is started on the second only after it (else it runs on its disks of before, and
/// the copy then writes under it), by the steps' `after`, whatever the runbooks. And when the
/// plan stops the vm on the first host, the copy it is started from comes after that stop
/// (else what it wrote between the copy and the stop is lost, and nothing says so): a copy
/// taken while it still ran may come first (to shorten the last one), but one after the stop
/// must come between.
/// Each error is located at the start step's place in its runbook (`located`).
fn copy_order(
    steps: &[PlannedStep],
    located: impl Fn(&PlannedStep) -> Option<Location>,
    diags: &mut Vec<Diagnostic>,
) {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    // Whether step `late` comes after step `early`, through `after`.
    let comes_after = |late: usize, early: usize| {
        let mut seen = HashSet::new();
        let mut stack = vec![late];
        while let Some(i) = stack.pop() {
            for a in &steps[i].after {
                let Some(&j) = index.get(a.as_str()) else {
                    continue;
                };
                if j == early {
                    return true;
                }
                if seen.insert(j) {
                    stack.push(j);
                }
            }
        }
        false
    };
    for (r, step) in steps.iter().enumerate() {
        let Action::Replicate {
            what: Replicated::Vm(vm),
            to_host,
            ..
        } = &step.action_spec
        else {
            continue;
        };
        for (i, s) in steps.iter().enumerate() {
            if s.is_vm_action(vm, "start", to_host) && !comes_after(i, r) {
                diags.push(
                    Diagnostic::error(format!(
                        "step `{}` starts vm `{vm}` on `{to_host}` without waiting for step `{}`, which copies its disks there: it would run on its disks of before, and the copy then write under it",
                        s.id, step.id
                    ))
                    .at_opt(located(s))
                    .hint("put the copy before the start in the runbook"),
                );
            }
        }
    }
    // Each start on a host a copy goes to, from a copy taken after the vm stopped where it
    // came from.
    for (i, s) in steps.iter().enumerate() {
        let (Some(vm), Some(host)) = (s.vm.as_deref(), s.host.as_deref()) else {
            continue;
        };
        if !s.is_vm_action(vm, "start", host) {
            continue;
        }
        // The copies of vm to this host that the start waits for, by the host they leave.
        let mut copies: Vec<(usize, &str)> = Vec::new();
        for (r, c) in steps.iter().enumerate() {
            if let Action::Replicate {
                what: Replicated::Vm(v),
                from_host,
                to_host,
                ..
            } = &c.action_spec
                && v == vm
                && to_host == host
                && comes_after(i, r)
            {
                copies.push((r, from_host.as_str()));
            }
        }
        let froms: BTreeSet<&str> = copies.iter().map(|(_, f)| *f).collect();
        for from in froms {
            for (x, stop) in steps.iter().enumerate() {
                if !stop.is_vm_action(vm, "stop", from) {
                    continue;
                }
                if copies.iter().any(|&(r, f)| f == from && comes_after(r, x)) {
                    continue;
                }
                let copy_ids: Vec<String> = copies
                    .iter()
                    .filter(|(_, f)| *f == from)
                    .map(|&(r, _)| format!("`{}`", steps[r].id))
                    .collect();
                diags.push(
                    Diagnostic::error(format!(
                        "step `{}` starts vm `{vm}` on `{host}` from a copy taken before step `{}` stops it on `{from}` ({} does not wait for that stop): what the vm writes there in between would be lost, with nothing to say so",
                        s.id,
                        stop.id,
                        copy_ids.join(", ")
                    ))
                    .at_opt(located(s))
                    .hint("put the stop before the copy in the runbook (a copy taken while it runs may come first, to shorten the last one)"),
                );
            }
        }
    }
}

/// No two things one plan copies write one file or folder, or one inside the other's, on one
/// machine. Two backup sets may read one folder (a second copy kept elsewhere), or one inside
/// the other's, and a failback copies each back over the folder it reads: the second copy
/// back would find the folder written by the first (its files of another point, the first's
/// metadata folder in it) and be refused half way, or write over what the first brought
/// back. Forward, the inventory keeps copies apart. Each error is at the later step's place.
fn copies_apart(
    model: &Model,
    steps: &[PlannedStep],
    located: impl Fn(&PlannedStep) -> Option<Location>,
    diags: &mut Vec<Diagnostic>,
) {
    // Each path a copy writes: its step, what it copies, its host, its machine, the path.
    type Write<'s> = (
        &'s PlannedStep,
        &'s Replicated,
        &'s str,
        (String, u16),
        &'s str,
    );
    let mut writes: Vec<Write<'_>> = Vec::new();
    for s in steps {
        let Action::Replicate {
            what,
            to_host,
            items,
            ..
        } = &s.action_spec
        else {
            continue;
        };
        let Some(host) = model.inventory.hosts.get(to_host) else {
            continue;
        };
        for (_, dst) in items {
            writes.push((
                s,
                what,
                to_host,
                crate::inventory::machine_of(host),
                dst.trim_end_matches('/'),
            ));
        }
    }
    let holds = |outer: &str, inner: &str| {
        outer == inner
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    let name = |w: &Replicated| match w {
        Replicated::Vm(v) => format!("vm `{v}`"),
        Replicated::Backup(b) => format!("backup set `{b}`"),
    };
    let mut said = HashSet::new();
    for (i, a) in writes.iter().enumerate() {
        for b in &writes[i + 1..] {
            if a.1 == b.1 || a.3 != b.3 || !(holds(a.4, b.4) || holds(b.4, a.4)) {
                continue;
            }
            if !said.insert((a.0.id.as_str(), b.0.id.as_str())) {
                continue;
            }
            let how = if a.4 == b.4 { "" } else { ", inside it" };
            let host = if a.2 == b.2 {
                format!("`{}`", a.2)
            } else {
                format!("`{}` and `{}` (one machine)", a.2, b.2)
            };
            diags.push(
                Diagnostic::error(format!(
                    "steps `{}` and `{}` both copy into one folder on {host} ({} into {}, {} into {}{how}): the second would find what the first wrote there and fail half way, or write over it",
                    a.0.id,
                    b.0.id,
                    name(a.1),
                    a.4,
                    name(b.1),
                    b.4
                ))
                .at_opt(located(b.0))
                .hint("copy back only one of them in this runbook: the one the recovery site wrote to (the other's copy stays on the recovery host, with its points)"),
            );
        }
    }
}

/// Which services take part in a plan.
struct Selected<'m> {
    members: BTreeSet<String>,
    selection: Selection,
    /// The members in dependency order.
    order: Vec<&'m str>,
}

/// The services `opts` asks for (all with a runbook for the mode when it names none) and,
/// unless `only`, what they depend on.
fn select<'m>(model: &'m Model, opts: &PlanOptions) -> Result<Selected<'m>, Vec<Diagnostic>> {
    let inv = &model.inventory;
    let mut diags = Vec::new();
    let has_book = |s: &str| model.runbooks.get(s, opts.mode).is_some();
    let mut requested = Vec::new();
    for name in &opts.services {
        if inv.services.contains_key(name) {
            requested.push(name.as_str());
        } else {
            let hint =
                crate::diagnostic::did_you_mean(name, inv.services.keys().map(String::as_str));
            diags.push(Diagnostic::error(format!("unknown service `{name}`")).hint_opt(hint));
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let roots: Vec<&str> = if opts.services.is_empty() {
        inv.services
            .keys()
            .map(String::as_str)
            .filter(|s| has_book(s))
            .collect()
    } else {
        requested.clone()
    };
    let closure = model.graph.with_dependencies(&roots);
    let members: BTreeSet<String> = if opts.only {
        roots.iter().map(|s| s.to_string()).collect()
    } else {
        closure.clone()
    };
    let selection = Selection {
        requested: requested.iter().map(|s| s.to_string()).collect(),
        only: opts.only,
        pulled_in: if opts.services.is_empty() || opts.only {
            Vec::new()
        } else {
            ordered(model, &members, |s| !requested.contains(&s))
        },
        assumed_running: if opts.only {
            ordered(model, &closure, |s| !members.contains(s))
        } else {
            Vec::new()
        },
    };
    let order: Vec<&str> = model
        .graph
        .order()
        .into_iter()
        .filter(|s| members.contains(*s))
        .collect();
    Ok(Selected {
        members,
        selection,
        order,
    })
}

/// Every member without a runbook for the mode is an error (saying who needs it).
fn missing_runbooks(
    model: &Model,
    mode: Mode,
    order: &[&str],
    members: &BTreeSet<String>,
    diags: &mut Vec<Diagnostic>,
) {
    for &sid in order {
        if model.runbooks.get(sid, mode).is_some() {
            continue;
        }
        let service = &model.inventory.services[sid];
        let needed_by: Vec<&str> = model
            .graph
            .dependants(sid)
            .into_iter()
            .filter(|d| members.contains(*d))
            .collect();
        let mut d = if needed_by.is_empty() {
            Diagnostic::error(format!("service `{sid}` has no {mode} runbook"))
        } else {
            Diagnostic::error(format!(
                "service `{sid}` has no {mode} runbook, but {} depend{} on it",
                needed_by
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if needed_by.len() == 1 { "s" } else { "" }
            ))
        };
        d = d
            .at(service.loc.clone())
            .hint(format!(
                "add [[{sid}.{mode}]] steps to a runbook file, or `{sid}.{mode} = []` when nothing needs doing"
            ));
        diags.push(d);
    }
}

/// The steps planned so far, and which are each service's.
#[derive(Default)]
struct Planned<'m> {
    steps: Vec<PlannedStep>,
    left_out: Vec<LeftOut>,
    /// Each service's main steps (indexes in `steps`), in order.
    main: HashMap<&'m str, Vec<usize>>,
    /// Each service's cleanup steps (indexes in `steps`), in order.
    cleanup: HashMap<&'m str, Vec<usize>>,
}

/// Plans the main steps of service `sid`, with the replication lag read where the service
/// says (or reports why it cannot be).
fn main_phase<'m>(
    model: &Model,
    opts: &PlanOptions,
    sid: &'m str,
    members: &BTreeSet<String>,
    planned: &mut Planned<'m>,
    diags: &mut Vec<Diagnostic>,
) {
    let mode = opts.mode;
    let Some(book) = model.runbooks.get(sid, mode) else {
        return;
    };
    // A service its application replicates: its lag is measured just before it is
    // switched (its first step on the recovery side) in a drill or a failover.
    let service = &model.inventory.services[sid];
    let mut lag_pending = match mode {
        Mode::Drill | Mode::Failover => service.lag(),
        _ => None,
    };
    // A failback reads the reverse replication's lag (the primary side fed from the
    // recovery side) just before the step its probe names: the switch back.
    let mut back_pending = match mode {
        Mode::Failback => service.failback_lag(),
        _ => None,
    };
    // In an emergency the step named may need the lost primary and be left out: the lag
    // is then read before the first step that does without it.
    let lag_before = match mode {
        Mode::Failover if !opts.emergency => service.lag_before(),
        _ => None,
    };
    let push = |planned: &mut Planned<'m>, step: Option<PlannedStep>| {
        if let Some(step) = step {
            planned
                .main
                .entry(sid)
                .or_default()
                .push(planned.steps.len());
            planned.steps.push(step);
        }
    };
    for step in book.steps.iter().filter(|s| s.phase == Phase::Main) {
        if opts.emergency && step.needs_primary {
            planned.left_out.push(LeftOut {
                id: format!("{sid}/{}", step.id.value),
                reason: "needs the primary site, declared lost".to_string(),
            });
            continue;
        }
        // A planned failover reads the lag just before the step the service names (the
        // switch), else before its first step that does without the primary.
        let lag_here = match lag_before {
            Some(b) => b.value == step.id.value,
            None => !step.needs_primary,
        };
        let probe = match (lag_pending, back_pending) {
            (Some(p), _) if lag_here => {
                lag_pending = None;
                Some(p)
            }
            (_, Some(b)) if b.before.value == step.id.value => {
                back_pending = None;
                Some(&b.probe)
            }
            _ => None,
        };
        if let Some(probe) = probe {
            let after = main_after(model, sid, members, &planned.main);
            let lag = lag_step(
                model,
                opts,
                service,
                probe,
                book,
                after,
                &planned.steps,
                diags,
            );
            push(planned, lag);
        }
        let after = main_after(model, sid, members, &planned.main);
        let resolved = resolve(model, opts, service, step, after, &planned.steps, diags);
        push(planned, resolved);
    }
    if let (Some(_), Some(before)) = (lag_pending, lag_before) {
        diags.push(no_switch_step(sid, book, before, Mode::Failover));
    } else if let Some(probe) = lag_pending {
        let after = main_after(model, sid, members, &planned.main);
        let lag = lag_step(
            model,
            opts,
            service,
            probe,
            book,
            after,
            &planned.steps,
            diags,
        );
        push(planned, lag);
    }
    if let Some(back) = back_pending {
        diags.push(no_switch_step(sid, book, &back.before, Mode::Failback));
    }
    // The backup sets the service's runbooks replicate: a drill or a failover relies on
    // their copies, proven after the service's own steps (a final sync included), before
    // anything that needs the service.
    if matches!(mode, Mode::Drill | Mode::Failover) {
        for set in backup_sets_of(model, sid) {
            let after = main_after(model, sid, members, &planned.main);
            let step = backup_step(
                model,
                opts,
                service,
                set,
                book,
                after,
                &planned.steps,
                diags,
            );
            push(planned, step);
        }
    }
}

/// The backup sets the runbooks of service `sid` replicate (in any mode), in the
/// inventory's order.
pub fn backup_sets_of<'m>(model: &'m Model, sid: &str) -> Vec<&'m crate::inventory::BackupSet> {
    let named: BTreeSet<&str> = model
        .runbooks
        .by_service
        .get(sid)
        .into_iter()
        .flat_map(|books| books.values())
        .flat_map(|b| &b.steps)
        .filter_map(|s| match &s.kind {
            crate::runbook::StepKind::Replicate {
                source: crate::runbook::ReplicaSource::Backup(b),
            } => Some(b.value.as_str()),
            _ => None,
        })
        .collect();
    model
        .inventory
        .backups
        .values()
        .filter(|b| named.contains(b.id.as_str()))
        .collect()
}

/// The prefix of the id of the step that proves a backup set's copy (`backup-SET`).
pub const BACKUP_STEP: &str = "backup-";

/// The step that proves the copy of backup set `set` on its recovery host before a drill or
/// a failover relies on it (see [`crate::plan::BackupUse`]).
#[allow(clippy::too_many_arguments)]
fn backup_step(
    model: &Model,
    opts: &PlanOptions,
    service: &Service,
    set: &crate::inventory::BackupSet,
    book: &crate::runbook::Runbook,
    after_idx: Vec<usize>,
    planned: &[PlannedStep],
    diags: &mut Vec<Diagnostic>,
) -> Option<PlannedStep> {
    let inv = &model.inventory;
    let name = format!("{BACKUP_STEP}{}", set.id);
    let id = format!("{}/{name}", service.id);
    if let Some(clash) = book.steps.iter().find(|s| s.id.value == name) {
        diags.push(
            Diagnostic::error(format!(
                "step id `{name}` of service `{}` is taken by the step that proves the copy of backup set `{}`",
                service.id, set.id
            ))
            .at(clash.id.loc.clone())
            .hint("give this step another id"),
        );
        return None;
    }
    let host_id = &set.dest_host.value;
    if let Some(d) = site_violation(inv, opts.mode, false, &id, host_id, &set.dest_host.loc) {
        diags.push(d.hint("a backup set's copy is kept on the recovery site"));
        return None;
    }
    let host = inv.hosts.get(host_id)?;
    let failover = opts.mode == Mode::Failover;
    let description = if failover {
        format!(
            "The copy of backup set {} ({host_id}:{}) proven before the recovery site relies on it: its newest good point, verified, the folder not changed behind it; leased to the run at that point",
            set.id, set.dest_path
        )
    } else {
        format!(
            "The copy of backup set {} ({host_id}:{}) proven as a failover would rely on it: its newest good point, verified, the folder not changed behind it; leased to the drill until its cleanup is over (no replication writes into it meanwhile)",
            set.id, set.dest_path
        )
    };
    Some(PlannedStep {
        id,
        service: service.id.clone(),
        step: name,
        host: Some(host.id.clone()),
        target: Some(format!("{}@{}:{}", host.user, host.address, host.port)),
        site: host.site.as_ref().map(|s| s.value.clone()),
        kind: "backup",
        action: None,
        replica: None,
        state_before: None,
        undo_stops: false,
        vm: None,
        command: format!(
            "prove the copy {} of backup set {} (its point, verified, unchanged){}",
            set.dest_path,
            set.id,
            if failover { " and lease it" } else { "" }
        ),
        verify: None,
        undo: None,
        description: Some(description),
        timeout_s: None,
        expected_s: 5,
        retries: 0,
        idempotent: true,
        needs_primary: false,
        phase: Phase::Main,
        after: after_idx
            .into_iter()
            .map(|i| planned[i].id.clone())
            .collect(),
        est_start_s: 0,
        est_finish_s: 0,
        critical: false,
        action_spec: Action::BackupCopy(crate::plan::BackupUse {
            set: set.id.clone(),
            host: host.id.clone(),
            path: set.dest_path.clone(),
            source: format!("{}:{}", set.source_host.value, set.source_path),
            failover,
        }),
    })
}

/// The step a service names to read its replication's lag before (`before`) is not in its
/// failover (or failback) runbook.
fn no_switch_step(
    sid: &str,
    book: &crate::runbook::Runbook,
    before: &crate::fields::Sp<String>,
    mode: Mode,
) -> Diagnostic {
    let (lag, switch) = match mode {
        Mode::Failback => (
            "the reverse replication's lag",
            "switches the service back to the primary site",
        ),
        _ => (
            "the replication's lag",
            "switches the service to the recovery site",
        ),
    };
    Diagnostic::error(format!(
        "the {mode} of service `{sid}` has no step `{}` to read {lag} before",
        before.value
    ))
    .at(before.loc.clone())
    .hint(
        did_you_mean_step(book, &before.value)
            .unwrap_or_else(|| format!("name the {mode} step that {switch}")),
    )
}

/// Plans the cleanup steps (a drill's): after everything, dependants before their
/// dependencies.
fn cleanup_phase<'m>(
    model: &Model,
    opts: &PlanOptions,
    order: &[&'m str],
    members: &BTreeSet<String>,
    planned: &mut Planned<'m>,
    diags: &mut Vec<Diagnostic>,
) {
    let sinks: BTreeSet<usize> = order
        .iter()
        .filter(|s| {
            model
                .graph
                .dependants(s)
                .iter()
                .all(|d| !members.contains(*d))
        })
        .flat_map(|s| last_main(model, s, members, &planned.main))
        .collect();
    for &sid in order.iter().rev() {
        let Some(book) = model.runbooks.get(sid, opts.mode) else {
            continue;
        };
        for step in book.steps.iter().filter(|s| s.phase == Phase::Cleanup) {
            let after = match planned.cleanup.get(sid).and_then(|v| v.last()) {
                Some(&prev) => vec![prev],
                None => {
                    // After the cleanup of what depends on it; that cleanup waited for the end
                    // of the main phase, or else this one does.
                    let mut deps = BTreeSet::new();
                    for dependant in model.graph.dependants(sid) {
                        deps.extend(last_cleanup(model, dependant, members, &planned.cleanup));
                    }
                    if deps.is_empty() {
                        deps = sinks.clone();
                    }
                    deps.into_iter().collect()
                }
            };
            let service = &model.inventory.services[sid];
            if let Some(step) = resolve(model, opts, service, step, after, &planned.steps, diags) {
                planned
                    .cleanup
                    .entry(sid)
                    .or_default()
                    .push(planned.steps.len());
                planned.steps.push(step);
            }
        }
    }
}

/// A failback defines a vm on the primary from the point its reverse replication made;
/// a vm this plan does not replicate back (its service's data comes back another way, or
/// its disks there were never left) keeps the definition the primary holds.
fn keep_primary_definitions(steps: &mut [PlannedStep]) {
    let replicated: HashSet<String> = steps
        .iter()
        .filter_map(|s| match &s.action_spec {
            Action::Replicate {
                what: Replicated::Vm(vm),
                ..
            } => Some(vm.clone()),
            _ => None,
        })
        .collect();
    for s in steps {
        if let Some(r) = &mut s.replica
            && r.role == ReplicaRole::FailedBack
            && !replicated.contains(&r.vm)
        {
            r.define = None;
        }
    }
}

/// Estimated timeline: every step starts as soon as what it waits for is done; the critical
/// path leads to the last step to finish. Each duration is bounded, so the sums cannot
/// overflow; they are checked all the same.
fn estimate(
    steps: &mut [PlannedStep],
    mode: Mode,
    diags: &mut Vec<Diagnostic>,
) -> Result<Estimate, Vec<Diagnostic>> {
    let index: HashMap<String, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), i))
        .collect();
    for i in 0..steps.len() {
        let start = steps[i]
            .after
            .iter()
            .map(|a| steps[index[a]].est_finish_s)
            .max()
            .unwrap_or(0);
        steps[i].est_start_s = start;
        let Some(finish) = start.checked_add(steps[i].expected_s) else {
            diags.push(
                Diagnostic::error(format!(
                    "the estimated timeline of the {mode} plan overflows at step `{}`",
                    steps[i].id
                ))
                .hint("lower the `expected` and `timeout` durations of its steps"),
            );
            return Err(std::mem::take(diags));
        };
        steps[i].est_finish_s = finish;
    }
    let mut critical_path = Vec::new();
    if let Some(mut cur) =
        (0..steps.len()).max_by_key(|&i| (steps[i].est_finish_s, std::cmp::Reverse(i)))
    {
        loop {
            steps[cur].critical = true;
            critical_path.push(steps[cur].id.clone());
            let Some(prev) = steps[cur]
                .after
                .iter()
                .map(|a| index[a])
                .max_by_key(|&p| (steps[p].est_finish_s, std::cmp::Reverse(p)))
            else {
                break;
            };
            cur = prev;
        }
    }
    critical_path.reverse();
    let total = Duration(steps.iter().map(|s| s.est_finish_s).max().unwrap_or(0));
    Ok(Estimate {
        total,
        critical_path,
    })
}

/// Each member's part of the plan: its steps, and its estimated recovery time against its
/// RTO target (a warning when over).
fn planned_services(
    model: &Model,
    order: &[&str],
    members: &BTreeSet<String>,
    main_steps: &HashMap<&str, Vec<usize>>,
    steps: &[PlannedStep],
    warnings: &mut Vec<String>,
) -> Vec<PlannedService> {
    let mut by_service: HashMap<&str, Vec<String>> = HashMap::new();
    for st in steps {
        by_service
            .entry(st.service.as_str())
            .or_default()
            .push(st.id.clone());
    }
    order
        .iter()
        .map(|&sid| {
            let s = &model.inventory.services[sid];
            let done = last_main(model, sid, members, main_steps)
                .into_iter()
                .map(|i| steps[i].est_finish_s)
                .max()
                .unwrap_or(0);
            let estimated_rto = Duration(done);
            let rto_ok = estimated_rto <= s.rto;
            if !rto_ok {
                warnings.push(format!(
                    "estimated recovery time of {sid} ({estimated_rto}) exceeds its RTO target ({})",
                    s.rto
                ));
            }
            PlannedService {
                id: sid.to_string(),
                kind: s.kind.clone(),
                owner: s.owner.clone(),
                rto_target: s.rto,
                rpo_target: s.rpo,
                replicated_by_application: s.lag().is_some(),
                estimated_rto,
                rto_ok,
                depends_on: model
                    .graph
                    .dependencies(sid)
                    .into_iter()
                    .filter(|d| members.contains(*d))
                    .map(str::to_string)
                    .collect(),
                steps: by_service.remove(sid).unwrap_or_default(),
            }
        })
        .collect()
}

/// What the next main step of `sid` waits for: its previous step, or the last steps of the
/// services it needs.
fn main_after(
    model: &Model,
    sid: &str,
    members: &BTreeSet<String>,
    main_steps: &HashMap<&str, Vec<usize>>,
) -> Vec<usize> {
    match main_steps.get(sid).and_then(|v| v.last()) {
        Some(&prev) => vec![prev],
        None => {
            let mut deps = BTreeSet::new();
            for dep in model.graph.dependencies(sid) {
                deps.extend(last_main(model, dep, members, main_steps));
            }
            deps.into_iter().collect()
        }
    }
}

/// A hint naming the closest step id of a runbook.
fn did_you_mean_step(book: &crate::runbook::Runbook, name: &str) -> Option<String> {
    let ids: Vec<&str> = book.steps.iter().map(|s| s.id.value.as_str()).collect();
    crate::diagnostic::did_you_mean(name, ids.iter().copied())
}

/// The id of the step that measures a service's replication lag.
pub const LAG_STEP: &str = "replication-lag";

/// The step that runs a service's lag probe: on the probe's host, never on the primary site
/// in a drill or a failover (a drill must not touch it, a failover may have lost it).
#[allow(clippy::too_many_arguments)]
fn lag_step(
    model: &Model,
    opts: &PlanOptions,
    service: &Service,
    probe: &crate::inventory::LagProbe,
    book: &crate::runbook::Runbook,
    after_idx: Vec<usize>,
    planned: &[PlannedStep],
    diags: &mut Vec<Diagnostic>,
) -> Option<PlannedStep> {
    let inv = &model.inventory;
    let id = format!("{}/{LAG_STEP}", service.id);
    if let Some(clash) = book.steps.iter().find(|s| s.id.value == LAG_STEP) {
        diags.push(
            Diagnostic::error(format!(
                "step id `{LAG_STEP}` of service `{}` is taken by the step that measures its replication lag",
                service.id
            ))
            .at(clash.id.loc.clone())
            .hint("give this step another id"),
        );
        return None;
    }
    if let Some(d) = site_violation(
        inv,
        opts.mode,
        false,
        &id,
        &probe.host.value,
        &probe.host.loc,
    ) {
        diags.push(
            d.hint("run the lag probe on the standby or on a management host of the recovery site"),
        );
        return None;
    }
    let host = inv.hosts.get(&probe.host.value)?;
    let scope = StepScope {
        inv,
        host: Some(host),
        service,
        vm: None,
        run_id: &opts.run_id,
        mode: opts.mode,
    };
    let tpl = match Template::parse(
        &probe.command,
        model.sources.map.text(probe.command.loc.file),
    ) {
        Ok(t) => t,
        Err(d) => {
            diags.push(*d);
            return None;
        }
    };
    let run = render(&tpl, &scope, diags)?;
    let description = match opts.mode {
        Mode::Drill => "The application's replication lag: the data a failover now would lose",
        Mode::Failback => {
            "The lag of the reverse replication (the primary side fed from the recovery side), just before the service is switched back: the data it loses"
        }
        _ => {
            "The application's replication lag, just before the service is switched: the data it loses"
        }
    };
    Some(PlannedStep {
        id,
        service: service.id.clone(),
        step: LAG_STEP.to_string(),
        host: Some(host.id.clone()),
        target: Some(format!("{}@{}:{}", host.user, host.address, host.port)),
        site: host.site.as_ref().map(|s| s.value.clone()),
        kind: "lag",
        action: None,
        replica: None,
        state_before: None,
        undo_stops: false,
        vm: None,
        command: run.to_string(),
        verify: None,
        undo: None,
        description: Some(description.to_string()),
        timeout_s: Some(probe.timeout.secs()),
        expected_s: probe.timeout.secs().min(5),
        retries: 0,
        idempotent: true,
        needs_primary: false,
        phase: Phase::Main,
        after: after_idx
            .into_iter()
            .map(|i| planned[i].id.clone())
            .collect(),
        est_start_s: 0,
        est_finish_s: 0,
        critical: false,
        action_spec: Action::Lag {
            run,
            timeout: probe.timeout,
            rpo: service.rpo,
            hold: match opts.mode {
                Mode::Failover => !opts.emergency,
                Mode::Failback => true,
                _ => false,
            },
        },
    })
}

fn ordered(model: &Model, set: &BTreeSet<String>, keep: impl Fn(&str) -> bool) -> Vec<String> {
    model
        .graph
        .order()
        .into_iter()
        .filter(|s| set.contains(*s) && keep(s))
        .map(str::to_string)
        .collect()
}

/// The steps that mark `sid` as recovered: its last main step; or, for a service with no step
/// in the plan (an empty runbook, or left out by `--only`), those of what it depends on.
fn last_main(
    model: &Model,
    sid: &str,
    members: &BTreeSet<String>,
    main_steps: &HashMap<&str, Vec<usize>>,
) -> BTreeSet<usize> {
    frontier(model, sid, members, main_steps, Direction::Dependencies)
}

/// The steps after which the cleanup of what `sid` depends on may start: its own last cleanup
/// step, or those of what depends on it.
fn last_cleanup(
    model: &Model,
    sid: &str,
    members: &BTreeSet<String>,
    cleanup_steps: &HashMap<&str, Vec<usize>>,
) -> BTreeSet<usize> {
    frontier(model, sid, members, cleanup_steps, Direction::Dependants)
}

#[derive(Clone, Copy)]
enum Direction {
    Dependencies,
    Dependants,
}

/// From `sid`, the last planned step of each nearest service (in `direction`) that has steps,
/// walking through services without any (each visited once).
fn frontier(
    model: &Model,
    sid: &str,
    members: &BTreeSet<String>,
    steps: &HashMap<&str, Vec<usize>>,
    direction: Direction,
) -> BTreeSet<usize> {
    let mut found = BTreeSet::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![sid];
    while let Some(s) = stack.pop() {
        if !seen.insert(s) {
            continue;
        }
        if members.contains(s)
            && let Some(&last) = steps.get(s).and_then(|v| v.last())
        {
            found.insert(last);
            continue;
        }
        match direction {
            Direction::Dependencies => stack.extend(model.graph.dependencies(s)),
            Direction::Dependants => stack.extend(model.graph.dependants(s)),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmdef::Nics;

    fn example() -> Model {
        let sources = crate::sources::Sources::read(
            std::path::Path::new("inventory"),
            std::path::Path::new("runbooks"),
        )
        .unwrap();
        crate::plan::validate::load(sources)
            .map(|(m, _)| m)
            .unwrap()
    }

    /// Where each vm a drill defines puts its NICs.
    fn drill_nics(model: &Model) -> Vec<(String, Nics)> {
        let plan = build(model, &PlanOptions::new(Mode::Drill)).unwrap();
        plan.steps
            .iter()
            .filter_map(|s| s.replica.as_ref()?.define.as_ref())
            .map(|d| (d.fit.name.clone(), d.fit.nics.clone()))
            .collect()
    }

    #[test]
    fn a_drill_defines_its_copies_on_the_recovery_hosts_drill_network() {
        let mut model = example();
        let defined = drill_nics(&model);
        assert!(!defined.is_empty());
        for (name, nics) in &defined {
            assert!(name.starts_with("drill-"), "{name}");
            assert_eq!(*nics, Nics::All("reprise-drill".into()), "{name}");
        }
        model.inventory.hosts["hv-pra"].vars.insert(
            "drill_network".into(),
            crate::inventory::VarValue::Text("pra-drill".into()),
        );
        for (name, nics) in drill_nics(&model) {
            assert_eq!(nics, Nics::All("pra-drill".into()), "{name}");
        }
    }

    #[test]
    fn a_replicate_step_lets_a_disk_be_written_while_read_only_when_its_driver_says_so() {
        let mut model = example();
        let live = |model: &Model| -> Vec<(String, bool)> {
            let plan = build(model, &PlanOptions::new(Mode::Failover)).unwrap();
            plan.steps
                .iter()
                .filter_map(|s| match &s.action_spec {
                    Action::Replicate {
                        what: Replicated::Vm(vm),
                        snapshot: Some(hooks),
                        ..
                    } => Some((vm.clone(), hooks.live)),
                    _ => None,
                })
                .collect()
        };
        let seen = live(&model);
        assert!(!seen.is_empty() && seen.iter().all(|(_, l)| !l), "{seen:?}");
        let driver = model.inventory.vms["erp-db"].driver.value.clone();
        model.inventory.drivers[&driver].reads_live = true;
        for (vm, l) in live(&model) {
            assert_eq!(l, model.inventory.vms[&vm].driver.value == driver, "{vm}");
        }
    }

    /// The start of a vm on the host a failover or a failback copies it to waits for the
    /// copy: the example's runbooks keep that order, and breaking it is an error naming both
    /// steps.
    #[test]
    fn a_copy_between_hosts_comes_before_the_vm_s_start_there() {
        let model = example();
        for mode in [Mode::Failover, Mode::Failback] {
            let plan = build(&model, &PlanOptions::new(mode)).unwrap();
            let mut diags = Vec::new();
            copy_order(&plan.steps, |_| None, &mut diags);
            assert!(diags.is_empty(), "{mode}: {diags:?}");
        }
        let plan = build(&model, &PlanOptions::new(Mode::Failback)).unwrap();
        let at = |steps: &[PlannedStep], id: &str| steps.iter().position(|s| s.id == id).unwrap();
        let said = |steps: &[PlannedStep]| {
            let mut diags = Vec::new();
            copy_order(steps, |_| None, &mut diags);
            diags.iter().map(|d| d.message.clone()).collect::<Vec<_>>()
        };
        // The start no longer waits for the copy back.
        let mut steps = plan.steps.clone();
        let (start, sync) = (
            at(&steps, "erp-db/start-primary"),
            at(&steps, "erp-db/sync-back"),
        );
        steps[start].after = steps[sync].after.clone();
        let errors = said(&steps);
        assert!(
            errors.len() == 1
                && errors[0].contains("step `erp-db/start-primary` starts vm `erp-db`")
                && errors[0].contains("without waiting for step `erp-db/sync-back`"),
            "{errors:?}"
        );
    }

    /// The copy a vm is started from on the host it goes to is taken after the plan stops it
    /// where it comes from: a runbook that copies first, then stops, is an error naming the
    /// three steps, in a failover and in a failback; a copy while it runs followed by one
    /// after the stop is not.
    #[test]
    fn a_vm_is_started_from_a_copy_taken_after_it_stopped_where_it_came_from() {
        let model = example();
        let at = |steps: &[PlannedStep], id: &str| steps.iter().position(|s| s.id == id).unwrap();
        let said = |steps: &[PlannedStep]| {
            let mut diags = Vec::new();
            copy_order(steps, |_| None, &mut diags);
            diags.iter().map(|d| d.message.clone()).collect::<Vec<_>>()
        };
        for (mode, stop, sync, start) in [
            (
                Mode::Failover,
                "erp-db/stop-primary",
                "erp-db/final-sync",
                "erp-db/start",
            ),
            (
                Mode::Failback,
                "erp-db/stop-recovery",
                "erp-db/sync-back",
                "erp-db/start-primary",
            ),
        ] {
            let plan = build(&model, &PlanOptions::new(mode)).unwrap();
            assert!(said(&plan.steps).is_empty(), "{mode}");
            // The copy taken first, then the stop, then what waited for the copy.
            let mut steps = plan.steps.clone();
            let (x, r) = (at(&steps, stop), at(&steps, sync));
            let (stop_id, sync_id) = (steps[x].id.clone(), steps[r].id.clone());
            steps[r].after = steps[x].after.clone();
            steps[x].after = vec![sync_id.clone()];
            for (i, step) in steps.iter_mut().enumerate() {
                if i != x {
                    for a in &mut step.after {
                        if *a == sync_id {
                            a.clone_from(&stop_id);
                        }
                    }
                }
            }
            let errors = said(&steps);
            assert!(
                errors.len() == 1
                    && errors[0].contains(&format!("step `{start}` starts vm `erp-db`"))
                    && errors[0].contains(&format!("before step `{stop}` stops it"))
                    && errors[0].contains(&format!("(`{sync}` does not wait for that stop)")),
                "{mode}: {errors:?}"
            );
            // A copy while it runs, then the stop, then the last copy: as it should be.
            let mut steps = plan.steps.clone();
            let (x, r) = (at(&steps, stop), at(&steps, sync));
            let mut early = steps[r].clone();
            early.id = format!("{sync}-early");
            early.after = steps[x].after.clone();
            steps[x].after.push(early.id.clone());
            steps.push(early);
            assert!(said(&steps).is_empty(), "{mode}: {:?}", said(&steps));
        }
    }

    #[test]
    fn a_failback_defines_only_the_vms_it_replicates_back() {
        let model = example();
        let plan = build(&model, &PlanOptions::new(Mode::Failback)).unwrap();
        let started: Vec<(&str, bool)> = plan
            .steps
            .iter()
            .filter_map(|s| s.replica.as_ref())
            .filter(|r| r.role == ReplicaRole::FailedBack)
            .map(|r| (r.vm.as_str(), r.define.is_some()))
            .collect();
        // erp-db comes back by its reverse replication, from the point it makes; dc1 and dc2
        // never left (the directory comes back through its own replication): their
        // definitions on hv-main stay as they are.
        assert!(started.contains(&("erp-db", true)), "{started:?}");
        assert!(started.contains(&("dc1", false)), "{started:?}");
        assert!(started.contains(&("dc2", false)), "{started:?}");
    }

    /// A drill and a failover (planned or emergency) prove the copy of every backup set the
    /// service's runbooks replicate, after its own steps (a planned failover's final sync
    /// first), before anything that needs it; a restore and a failback rely on none.
    #[test]
    fn a_drill_or_a_failover_proves_each_backup_set_it_relies_on() {
        let model = example();
        let backups = |mode: Mode, emergency: bool| -> Vec<(String, bool, Vec<String>)> {
            let opts = PlanOptions {
                emergency,
                ..PlanOptions::new(mode)
            };
            let plan = build(&model, &opts).unwrap();
            plan.steps
                .iter()
                .filter_map(|s| match &s.action_spec {
                    Action::BackupCopy(b) => {
                        assert_eq!((b.host.as_str(), s.kind), ("nas-pra", "backup"));
                        Some((s.id.clone(), b.failover, s.after.clone()))
                    }
                    _ => None,
                })
                .collect()
        };
        let ids = |v: &[(String, bool, Vec<String>)]| -> Vec<String> {
            v.iter().map(|(id, _, _)| id.clone()).collect()
        };
        let all = [
            "backups/backup-erp-dumps",
            "backups/backup-ad-state",
            "backups/backup-shares",
        ];
        let drill = backups(Mode::Drill, false);
        assert_eq!(ids(&drill), all);
        assert!(drill.iter().all(|(_, failover, _)| !failover));
        assert_eq!(drill[0].2, ["backups/copies-present"]);
        let planned = backups(Mode::Failover, false);
        assert_eq!(ids(&planned), all);
        assert!(planned.iter().all(|(_, failover, _)| *failover));
        // After the final syncs.
        assert_eq!(planned[0].2, ["backups/final-shares"]);
        let emergency = backups(Mode::Failover, true);
        assert_eq!(ids(&emergency), all);
        assert!(backups(Mode::Restore, false).is_empty());
        assert!(backups(Mode::Failback, false).is_empty());
    }

    /// Where a vm's health check asks its driver whether the vm runs: on the side the mode
    /// brings up (a drill: its copy), and, in a failover, a failback or a restore, on the
    /// other side; a check of a host (dc-pra) proves no vm.
    #[test]
    fn a_vm_s_health_check_asks_where_the_run_brings_it_up_and_where_it_leaves_it() {
        let model = example();
        let instance = |mode: Mode, id: &str| {
            let plan = build(&model, &PlanOptions::new(mode)).unwrap();
            let step = plan.step(id).unwrap().clone();
            match step.action_spec {
                Action::Tcp { instance, .. } | Action::Http { instance, .. } => instance.map(|i| {
                    let left = i.left.map(|(h, c)| format!("{h}: {c}"));
                    (i.shown, format!("{}: {}", i.host, i.status), left)
                }),
                other => panic!("{id}: {other:?}"),
            }
        };
        let status = |h: &str, what: &str| match what.strip_prefix("drill-") {
            Some(_) => format!("{h}: export LC_ALL=C; virsh domstate {what}"),
            None => format!(
                "{h}: export LC_ALL=C; n={what}; if st=$(virsh domstate \"$n\"); then if [ \"$st\" = 'shut off' ]; then i=$(virsh dominfo \"$n\") || exit 1; if printf '%s\\n' \"$i\" | grep -Eq '^Managed save: +yes$'; then echo 'shut off, with a saved memory image (virsh managedsave): a start resumes that memory'; exit 0; fi; fi; printf '%s\\n' \"$st\"; exit 0; fi; l=$(virsh list --all --name) || exit 1; if printf '%s\\n' \"$l\" | grep -qxF -- \"$n\"; then exit 1; fi; echo 'not defined'; exit 2"
            ),
        };
        assert_eq!(
            instance(Mode::Failover, "erp-db/healthy"),
            Some((
                "vm erp-db".into(),
                status("hv-pra", "erp-db"),
                Some(status("hv-main", "erp-db"))
            ))
        );
        assert_eq!(
            instance(Mode::Failback, "erp-app/healthy"),
            Some((
                "vm erp-app".into(),
                status("hv-main", "erp-app"),
                Some(status("hv-pra", "erp-app"))
            ))
        );
        // A restore asks the recovery side too: a vm a failover left running there (or
        // autostarted there since) beside the one restored is a split brain.
        assert_eq!(
            instance(Mode::Restore, "erp-db/healthy"),
            Some((
                "vm erp-db".into(),
                status("hv-main", "erp-db"),
                Some(status("hv-pra", "erp-db"))
            ))
        );
        assert_eq!(
            instance(Mode::Drill, "directory/healthy-dc2"),
            Some((
                "the drill copy of vm dc2".into(),
                status("hv-pra", "drill-dc2"),
                None
            ))
        );
        assert_eq!(instance(Mode::Failover, "directory/healthy"), None);
    }

    /// A drill's check of a vm whose address is its production address would be answered by
    /// production, not by the copy: refused when planned; a failover may take the primary's
    /// address (its check then asks the primary whether the vm still runs there).
    #[test]
    fn a_drill_never_checks_a_copy_at_its_production_address() {
        let mut model = example();
        model.inventory.vms["erp-app"].recovery_address = None;
        let errors = build(&model, &PlanOptions::new(Mode::Drill)).unwrap_err();
        let messages: Vec<&str> = errors.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            messages,
            vec![
                "drill check `erp-app/healthy` probes erp.paris.school.example, the production address of vm erp-app: production answers there, not the drill's copy, so the check would pass for it"
            ]
        );
        assert!(build(&model, &PlanOptions::new(Mode::Failover)).is_ok());
        assert!(build(&model, &PlanOptions::new(Mode::Restore)).is_ok());
    }
}
