//! Building a [`Plan`] from the model: selection, step resolution, ordering, estimates.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::diagnostic::{Diagnostic, Location};
use crate::duration::Duration;
use crate::fields::{ADDRESS_HINT, address_problem, url_problem};
use crate::inventory::{Host, Inventory, Service, SiteRole, Vm};
use crate::model::Model;
use crate::plan::{
    Action, DefineUse, Estimate, LeftOut, Plan, PlanOptions, PlannedService, PlannedStep,
    ReplicaRole, ReplicaUse, Replicated, Selection, SnapshotHooks,
};
use crate::runbook::{Mode, Phase, Probe, ReplicaSource, Side, Step, StepKind};
use crate::template::{Command, Lookup, Scope, Template, TemplateValue};

const DEFAULT_EXEC_TIMEOUT: Duration = Duration(300);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration(600);
const DEFAULT_VM_TIMEOUT: Duration = Duration(600);
const DEFAULT_REPLICATE_TIMEOUT: Duration = Duration(7200);
const DEFAULT_MANUAL_EXPECTED: Duration = Duration(900);

/// Makes the plan for `opts`, or every problem that prevents it.
pub fn build(model: &Model, opts: &PlanOptions) -> Result<Plan, Vec<Diagnostic>> {
    let inv = &model.inventory;
    let mode = opts.mode;
    let mut diags = Vec::new();
    if opts.emergency && mode != Mode::Failover {
        diags.push(
            Diagnostic::error(format!("--emergency applies to failover, not to {mode}"))
                .hint("an emergency failover is `reprise plan failover --emergency`"),
        );
        return Err(diags);
    }

    // Which services take part.
    let has_book = |s: &str| model.runbooks.get(s, mode).is_some();
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

    for &sid in &order {
        if has_book(sid) {
            continue;
        }
        let service = &inv.services[sid];
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

    // Steps, in dependency order.
    let mut steps: Vec<PlannedStep> = Vec::new();
    let mut left_out = Vec::new();
    let mut main_steps: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut cleanup_steps: HashMap<&str, Vec<usize>> = HashMap::new();
    for &sid in &order {
        let Some(book) = model.runbooks.get(sid, mode) else {
            continue;
        };
        // A service its application replicates: its lag is measured just before it is
        // switched (its first step on the recovery side) in a drill or a failover.
        let service = &inv.services[sid];
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
        for step in book.steps.iter().filter(|s| s.phase == Phase::Main) {
            if opts.emergency && step.needs_primary {
                left_out.push(LeftOut {
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
                let after = main_after(model, sid, &members, &main_steps);
                if let Some(planned) =
                    lag_step(model, opts, service, probe, book, after, &steps, &mut diags)
                {
                    main_steps.entry(sid).or_default().push(steps.len());
                    steps.push(planned);
                }
            }
            let after = main_after(model, sid, &members, &main_steps);
            if let Some(planned) = resolve(
                model,
                opts,
                &inv.services[sid],
                step,
                after,
                &steps,
                &mut diags,
            ) {
                main_steps.entry(sid).or_default().push(steps.len());
                steps.push(planned);
            }
        }
        if let (Some(_), Some(before)) = (lag_pending, lag_before) {
            diags.push(
                Diagnostic::error(format!(
                    "the failover of service `{sid}` has no step `{}` to read the replication's lag before",
                    before.value
                ))
                .at(before.loc.clone())
                .hint(did_you_mean_step(book, &before.value).unwrap_or_else(|| {
                    "name the failover step that switches the service to the recovery site".to_string()
                })),
            );
        } else if let Some(probe) = lag_pending {
            let after = main_after(model, sid, &members, &main_steps);
            if let Some(planned) =
                lag_step(model, opts, service, probe, book, after, &steps, &mut diags)
            {
                main_steps.entry(sid).or_default().push(steps.len());
                steps.push(planned);
            }
        }
        if let Some(back) = back_pending {
            diags.push(
                Diagnostic::error(format!(
                    "the failback of service `{sid}` has no step `{}` to read the reverse replication's lag before",
                    back.before.value
                ))
                .at(back.before.loc.clone())
                .hint(did_you_mean_step(book, &back.before.value).unwrap_or_else(|| {
                    "name the failback step that switches the service back to the primary site".to_string()
                })),
            );
        }
    }
    // Drill cleanup: after everything, dependants before their dependencies.
    let sinks: BTreeSet<usize> = order
        .iter()
        .filter(|s| {
            model
                .graph
                .dependants(s)
                .iter()
                .all(|d| !members.contains(*d))
        })
        .flat_map(|s| last_main(model, s, &members, &main_steps))
        .collect();
    for &sid in order.iter().rev() {
        let Some(book) = model.runbooks.get(sid, mode) else {
            continue;
        };
        for step in book.steps.iter().filter(|s| s.phase == Phase::Cleanup) {
            let after = match cleanup_steps.get(sid).and_then(|v| v.last()) {
                Some(&prev) => vec![prev],
                None => {
                    // After the cleanup of what depends on it; that cleanup waited for the end
                    // of the main phase, or else this one does.
                    let mut deps = BTreeSet::new();
                    for dependant in model.graph.dependants(sid) {
                        deps.extend(last_cleanup(model, dependant, &members, &cleanup_steps));
                    }
                    if deps.is_empty() {
                        deps = sinks.clone();
                    }
                    deps.into_iter().collect()
                }
            };
            if let Some(planned) = resolve(
                model,
                opts,
                &inv.services[sid],
                step,
                after,
                &steps,
                &mut diags,
            ) {
                cleanup_steps.entry(sid).or_default().push(steps.len());
                steps.push(planned);
            }
        }
    }
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    // A failback defines a vm on the primary from the point its reverse replication made;
    // a vm this plan does not replicate back (its service's data comes back another way, or
    // its disks there were never left) keeps the definition the primary holds.
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
    for s in &mut steps {
        if let Some(r) = &mut s.replica
            && r.role == ReplicaRole::FailedBack
            && !replicated.contains(&r.vm)
        {
            r.define = None;
        }
    }

    // Estimated timeline: every step starts as soon as what it waits for is done. Each
    // duration is bounded, so the sums cannot overflow; they are checked all the same.
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
            return Err(diags);
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

    let mut warnings = Vec::new();
    let mut by_service: HashMap<&str, Vec<String>> = HashMap::new();
    for st in &steps {
        by_service
            .entry(st.service.as_str())
            .or_default()
            .push(st.id.clone());
    }
    let services: Vec<PlannedService> = order
        .iter()
        .map(|&sid| {
            let s = &inv.services[sid];
            let done = last_main(model, sid, &members, &main_steps)
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
        .collect();
    let not_covered = inv
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
        estimate: Estimate {
            total,
            critical_path,
        },
        warnings,
    })
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
    let inv = &model.inventory;
    let host_id = match side {
        Side::Primary => &vm.primary.value,
        Side::Recovery => &vm.recovery.value,
    };
    let scope = StepScope {
        inv,
        host: Some(inv.hosts.get(host_id)?),
        service,
        vm: Some((vm, side)),
        run_id,
        mode: Mode::Failback,
    };
    let tpl = inv.drivers.get(&vm.driver.value)?.actions.get(action)?;
    let tpl = Template::parse(tpl, model.sources.map.text(tpl.loc.file)).ok()?;
    Some((host_id.clone(), tpl.render(&scope).ok()?))
}

/// Template values for one step.
struct StepScope<'a> {
    inv: &'a Inventory,
    host: Option<&'a Host>,
    service: &'a Service,
    vm: Option<(&'a Vm, Side)>,
    run_id: &'a str,
    mode: Mode,
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

fn render(tpl: &Template, scope: &StepScope<'_>, diags: &mut Vec<Diagnostic>) -> Option<Command> {
    collect(tpl.render(scope), diags)
}

fn render_plain(
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

/// Resolves one runbook step into a planned step: host, rendered commands, site rules.
fn resolve(
    model: &Model,
    opts: &PlanOptions,
    service: &Service,
    step: &Step,
    after_idx: Vec<usize>,
    planned: &[PlannedStep],
    diags: &mut Vec<Diagnostic>,
) -> Option<PlannedStep> {
    let inv = &model.inventory;
    let mode = opts.mode;
    let id = format!("{}/{}", service.id, step.id.value);
    let errors_before = diags.len();
    let service_host = || {
        service
            .host()
            .map(|h| crate::fields::Sp::new(h.to_string(), service.loc.clone()))
    };
    let no_host = |what: &str| {
        Diagnostic::error(format!("step `{id}` ({what}) has no host"))
            .at(step.id.loc.clone())
            .hint(format!(
                "add `host = \"...\"` to the step, or `host = \"...\"` to service `{}`",
                service.id
            ))
    };
    let service_vm = service.vm().and_then(|v| inv.vms.get(v));
    let mut scope = StepScope {
        inv,
        host: None,
        service,
        vm: service_vm.map(|v| (v, mode.default_side())),
        run_id: &opts.run_id,
        mode,
    };
    let mut touched: Vec<(String, Location)> = Vec::new();
    let mut action_name = None;
    let mut replica = None;
    let mut state_before = None;
    let timeout;
    let mut retries = 0;
    let mut idempotent = false;
    let host_id: Option<String>;
    let (command, verify, undo, action) = match &step.kind {
        StepKind::Exec {
            host,
            run,
            verify,
            undo,
            retries: r,
            idempotent: i,
        } => {
            retries = *r;
            idempotent = *i;
            timeout = Some(step.timeout.unwrap_or(DEFAULT_EXEC_TIMEOUT));
            let Some(h) = host.clone().or_else(service_host) else {
                diags.push(no_host("exec"));
                return None;
            };
            scope.host = inv.hosts.get(&h.value);
            touched.push((h.value.clone(), h.loc.clone()));
            // A forbidden host is reported before any template of the step is rendered.
            if let Some(d) = site_violation(inv, mode, step.needs_primary, &id, &h.value, &h.loc) {
                diags.push(d);
                return None;
            }
            host_id = Some(h.value);
            let run = render(run, &scope, diags);
            let verify = verify.as_ref().and_then(|t| render(t, &scope, diags));
            let undo = undo.as_ref().and_then(|t| render(t, &scope, diags));
            let run = run?;
            (
                run.to_string(),
                verify.as_ref().map(ToString::to_string),
                undo.as_ref().map(ToString::to_string),
                Action::Exec { run, verify, undo },
            )
        }
        StepKind::Check {
            host,
            vm,
            probe,
            interval,
        } => {
            timeout = Some(step.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT));
            let interval = *interval;
            match probe {
                Probe::Command { run } => {
                    let Some(h) = host.clone().or_else(service_host) else {
                        diags.push(no_host("command check"));
                        return None;
                    };
                    scope.host = inv.hosts.get(&h.value);
                    touched.push((h.value.clone(), h.loc.clone()));
                    // A forbidden host is reported before any template of the step is rendered.
                    if let Some(d) =
                        site_violation(inv, mode, step.needs_primary, &id, &h.value, &h.loc)
                    {
                        diags.push(d);
                        return None;
                    }
                    // A forbidden host is reported before any template of the step is rendered.
                    if let Some(d) =
                        site_violation(inv, mode, step.needs_primary, &id, &h.value, &h.loc)
                    {
                        diags.push(d);
                        return None;
                    }
                    host_id = Some(h.value);
                    let run = render(run, &scope, diags)?;
                    (run.to_string(), None, None, Action::Probe { run, interval })
                }
                Probe::Tcp { address, port } => {
                    host_id = None;
                    let target = probe_target(
                        inv,
                        service,
                        host,
                        vm.as_ref(),
                        mode,
                        &mut scope,
                        &id,
                        diags,
                    )?;
                    let address = match address {
                        Some(t) => {
                            let a = render_plain(t, &scope, diags)?;
                            if let Some(problem) = address_problem(&a) {
                                diags.push(
                                    Diagnostic::error(format!(
                                        "the address of tcp check `{id}` {problem}"
                                    ))
                                    .at(t.source.loc.clone())
                                    .hint(ADDRESS_HINT),
                                );
                                return None;
                            }
                            a
                        }
                        None => match target {
                            Some(a) => a,
                            None => {
                                diags.push(
                                    Diagnostic::error(format!("tcp check `{id}` has no address"))
                                        .at(step.id.loc.clone())
                                        .hint("add `address = \"...\"`, `host = \"...\"` or `vm = \"...\"`, or give the service a vm or host with an address"),
                                );
                                return None;
                            }
                        },
                    };
                    (
                        format!("tcp {address}:{port} (every {interval})"),
                        None,
                        None,
                        Action::Tcp {
                            address,
                            port: *port,
                            interval,
                        },
                    )
                }
                Probe::Http {
                    url: url_template,
                    status,
                    ca_file,
                    insecure,
                } => {
                    host_id = None;
                    probe_target(
                        inv,
                        service,
                        host,
                        vm.as_ref(),
                        mode,
                        &mut scope,
                        &id,
                        diags,
                    )?;
                    let url = render_plain(url_template, &scope, diags)?;
                    let https = url.starts_with("https://");
                    if !https && !url.starts_with("http://") {
                        diags.push(
                            Diagnostic::error(format!(
                                "http check `{id}`: `{url}` is not an http:// or https:// address"
                            ))
                            .at(url_template.source.loc.clone())
                            .hint(
                                "use a command check (`probe = \"command\"`) for other protocols",
                            ),
                        );
                        return None;
                    }
                    if let Some(problem) = url_problem(&url) {
                        diags.push(
                            Diagnostic::error(format!("the url of http check `{id}` {problem}"))
                                .at(url_template.source.loc.clone())
                                .hint("write `http://HOST[:PORT]/PATH` or `https://...`, HOST an IP address or a host name"),
                        );
                        return None;
                    }
                    let tls = if https {
                        crate::plan::Tls {
                            ca_file: ca_file.as_ref().map(|c| c.value.clone()),
                            insecure: *insecure,
                        }
                    } else {
                        if let Some(loc) = ca_file
                            .as_ref()
                            .map(|c| c.loc.clone())
                            .or_else(|| insecure.then(|| step.id.loc.clone()))
                        {
                            diags.push(
                                Diagnostic::error(format!(
                                    "http check `{id}`: `ca_file` and `insecure` are for https, and `{url}` is plain http"
                                ))
                                .at(loc)
                                .hint("use an https:// address, or remove them"),
                            );
                            return None;
                        }
                        crate::plan::Tls::default()
                    };
                    let scheme = if https { "https" } else { "http" };
                    let trust = match (&tls.ca_file, tls.insecure) {
                        _ if !https => String::new(),
                        (_, true) => ", certificate NOT verified".to_string(),
                        (Some(ca), false) => format!(", certificate checked against {ca}"),
                        (None, false) => {
                            ", certificate checked against the system's authorities".to_string()
                        }
                    };
                    (
                        format!("{scheme} GET {url} expect {status} (every {interval}{trust})"),
                        None,
                        None,
                        Action::Http {
                            url,
                            status: *status,
                            interval,
                            tls,
                        },
                    )
                }
            }
        }
        StepKind::Manual { instructions } => {
            timeout = step.timeout;
            host_id = None;
            (
                instructions.clone(),
                None,
                None,
                Action::Manual {
                    instructions: instructions.clone(),
                },
            )
        }
        StepKind::Vm {
            action,
            vm,
            side,
            undo: custom_undo,
        } => {
            timeout = Some(step.timeout.unwrap_or(DEFAULT_VM_TIMEOUT));
            action_name = Some(action.clone());
            let vm_id = match vm {
                Some(v) => v.clone(),
                None => match service.vm() {
                    Some(v) => crate::fields::Sp::new(v.to_string(), step.id.loc.clone()),
                    None => {
                        diags.push(
                            Diagnostic::error(format!("vm step `{id}` names no vm"))
                                .at(step.id.loc.clone())
                                .hint(format!(
                                    "add `vm = \"...\"`: service `{}` lives on no vm",
                                    service.id
                                )),
                        );
                        return None;
                    }
                },
            };
            let vm = inv.vms.get(&vm_id.value)?;
            let side_v = side
                .as_ref()
                .map(|s| s.value)
                .unwrap_or(mode.default_side());
            let h = match side_v {
                Side::Primary => &vm.primary,
                Side::Recovery => &vm.recovery,
            };
            let host_loc = side
                .as_ref()
                .map(|s| s.loc.clone())
                .unwrap_or_else(|| step.id.loc.clone());
            touched.push((h.value.clone(), host_loc.clone()));
            // A forbidden host is reported before any template of the step is rendered.
            if let Some(d) = site_violation(inv, mode, step.needs_primary, &id, &h.value, &host_loc)
            {
                diags.push(d);
                return None;
            }
            host_id = Some(h.value.clone());
            scope.host = inv.hosts.get(&h.value);
            scope.vm = Some((vm, side_v));
            let role = match (side_v, action.as_str()) {
                (Side::Recovery, "drill-start") => Some(ReplicaRole::DrillStart),
                (Side::Recovery, "drill-stop") => Some(ReplicaRole::DrillStop),
                (Side::Recovery, "start") => Some(ReplicaRole::Start),
                (Side::Primary, "start") if mode == Mode::Failback => Some(ReplicaRole::FailedBack),
                _ => None,
            };
            let recovery = &vm.recovery.value;
            let snapshot_check = (role == Some(ReplicaRole::DrillStart))
                .then(|| {
                    vm_action_command(
                        model,
                        service,
                        vm,
                        Side::Primary,
                        "replicate-check",
                        &opts.run_id,
                    )
                })
                .flatten();
            let define = role.and_then(|role| define_use(model, service, vm, role, &opts.run_id));
            replica = role.and_then(|role| {
                images_dir_of(inv, recovery).map(|dir| ReplicaUse {
                    vm: vm.id.clone(),
                    host: recovery.clone(),
                    paths: vm.disks.iter().map(|d| format!("{dir}/{d}")).collect(),
                    role,
                    snapshot_check,
                    define,
                })
            });
            let driver = inv.drivers.get(&vm.driver.value)?;
            let Some(tpl) = driver.actions.get(action) else {
                diags.push(
                    Diagnostic::error(format!("driver `{}` has no `{action}` action", driver.id))
                        .at(step.id.loc.clone())
                        .note(
                            format!("driver `{}` is defined here", driver.id),
                            driver.loc.clone(),
                        )
                        .hint(format!(
                            "add `{action} = \"...\"` under [drivers.{}]",
                            driver.id
                        )),
                );
                return None;
            };
            let parse = |tpl: &crate::fields::Sp<String>, diags: &mut Vec<Diagnostic>| {
                match Template::parse(tpl, model.sources.map.text(tpl.loc.file)) {
                    Ok(t) => Some(t),
                    Err(d) => {
                        diags.push(*d);
                        None
                    }
                }
            };
            let tpl = parse(tpl, diags)?;
            let run = render(&tpl, &scope, diags)?;
            // What puts the vm back as it was when a planned failover or failback rolls back:
            // the opposite action of the same driver, on the same host (the other modes never
            // roll back).
            // A runbook's own `undo` replaces it.
            let rolls_back = matches!(mode, Mode::Failover | Mode::Failback);
            let undo = match custom_undo {
                Some(t) => render(t, &scope, diags),
                None => rolls_back
                    .then(|| undo_action(action))
                    .flatten()
                    .and_then(|a| driver.actions.get(a))
                    .and_then(|t| parse(t, diags))
                    .and_then(|t| render(&t, &scope, diags)),
            };
            // Undoing a start stops the vm: only if it was not running before the step.
            if rolls_back && custom_undo.is_none() && action == "start" && undo.is_some() {
                state_before = driver
                    .actions
                    .get("status")
                    .and_then(|t| parse(t, diags))
                    .and_then(|t| render(&t, &scope, diags));
            }
            (
                run.to_string(),
                None,
                undo.as_ref().map(ToString::to_string),
                Action::Exec {
                    run,
                    verify: None,
                    undo,
                },
            )
        }
        StepKind::Replicate { source } => {
            timeout = Some(step.timeout.unwrap_or(DEFAULT_REPLICATE_TIMEOUT));
            let mut snapshot = None;
            let mut capture = None;
            let reverse = mode == Mode::Failback;
            let swap = |a: String, b: String| if reverse { (b, a) } else { (a, b) };
            let images_dir = |host: &str| images_dir_of(inv, host);
            let no_images_dir = |host: &str| {
                Diagnostic::error(format!(
                    "replicate step `{id}` needs the variable `images_dir` of host `{host}`"
                ))
                .at(step.id.loc.clone())
                .hint(format!(
                    "add `images_dir = \"/var/lib/libvirt/images\"` under [hosts.{host}.vars]"
                ))
            };
            let mut guest = None;
            let (what, from, to, items, retention) = match source {
                ReplicaSource::Vm(v) => {
                    let vm = inv.vms.get(&v.value)?;
                    let (from, to) = swap(vm.primary.value.clone(), vm.recovery.value.clone());
                    let (src, dst) = match (images_dir(&from), images_dir(&to)) {
                        (Some(a), Some(b)) => (a, b),
                        (a, b) => {
                            if a.is_none() {
                                diags.push(no_images_dir(&from));
                            }
                            if b.is_none() {
                                diags.push(no_images_dir(&to));
                            }
                            return None;
                        }
                    };
                    let items = vm
                        .disks
                        .iter()
                        .map(|d| (format!("{src}/{d}"), format!("{dst}/{d}")))
                        .collect();
                    let side = if reverse {
                        Side::Recovery
                    } else {
                        Side::Primary
                    };
                    capture = inv
                        .drivers
                        .get(&vm.driver.value)
                        .filter(|d| d.defines())
                        .and_then(|d| {
                            let format = d.definition_format?;
                            vm_action_command(model, service, vm, side, "definition", &opts.run_id)
                                .map(|(_, c)| (c, format))
                        });
                    snapshot = match (
                        vm_action_command(
                            model,
                            service,
                            vm,
                            side,
                            "replicate-check",
                            &opts.run_id,
                        ),
                        vm_action_command(model, service, vm, side, "replicate-end", &opts.run_id),
                    ) {
                        (Some((host, check)), Some((_, end))) => Some(SnapshotHooks {
                            host,
                            check,
                            end,
                            begin: vm_action_command(
                                model,
                                service,
                                vm,
                                side,
                                "replicate-begin",
                                &opts.run_id,
                            )
                            .map(|(_, c)| c),
                        }),
                        _ => None,
                    };
                    if vm.changed_blocks && vm.driver.value == "libvirt" {
                        guest = Some(reverse);
                    }
                    (Replicated::Vm(vm.id.clone()), from, to, items, vm.retention)
                }
                ReplicaSource::Backup(b) => {
                    let set = inv.backups.get(&b.value)?;
                    let (from, to) =
                        swap(set.source_host.value.clone(), set.dest_host.value.clone());
                    let (src, dst) = swap(set.source_path.clone(), set.dest_path.clone());
                    (
                        Replicated::Backup(set.id.clone()),
                        from,
                        to,
                        vec![(src, dst)],
                        set.retention,
                    )
                }
            };
            touched.push((from.clone(), step.id.loc.clone()));
            touched.push((to.clone(), step.id.loc.clone()));
            host_id = Some(to.clone());
            let (noun, name) = match &what {
                Replicated::Vm(v) => ("vm", v),
                Replicated::Backup(b) => ("backup", b),
            };
            let paths: Vec<String> = items
                .iter()
                .map(|(a, b)| format!("{from}:{a} → {to}:{b}"))
                .collect();
            (
                format!(
                    "replicate {noun} {name}{}: {}",
                    if reverse { " (reverse direction)" } else { "" },
                    paths.join(", ")
                ),
                None,
                None,
                Action::Replicate {
                    what,
                    from_host: from,
                    to_host: to,
                    items,
                    retention,
                    snapshot,
                    capture,
                    guest,
                },
            )
        }
    };
    // Site rules (checked before rendering, see `site_violation`).
    for (host, loc) in &touched {
        if let Some(d) = site_violation(inv, mode, step.needs_primary, &id, host, loc) {
            diags.push(d);
        }
    }
    if diags.len() > errors_before {
        return None;
    }
    let host = host_id.as_deref().and_then(|h| inv.hosts.get(h));
    let expected = step.expected.or(timeout).unwrap_or(DEFAULT_MANUAL_EXPECTED);
    Some(PlannedStep {
        id,
        service: service.id.clone(),
        step: step.id.value.clone(),
        host: host_id.clone(),
        target: host.map(|h| format!("{}@{}:{}", h.user, h.address, h.port)),
        site: host.and_then(|h| h.site.as_ref().map(|s| s.value.clone())),
        kind: step.kind.name(),
        action: action_name,
        replica,
        state_before,
        command,
        verify,
        undo,
        description: step.description.clone(),
        timeout_s: timeout.map(Duration::secs),
        expected_s: expected.secs(),
        retries,
        idempotent,
        needs_primary: step.needs_primary,
        phase: step.phase,
        after: after_idx
            .into_iter()
            .map(|i| planned[i].id.clone())
            .collect(),
        est_start_s: 0,
        est_finish_s: 0,
        critical: false,
        action_spec: action,
    })
}

/// A step on `host` that the mode forbids: a drill never touches the primary site, a failover
/// step on it must need the primary, a restore never runs on the recovery site.
fn site_violation(
    inv: &Inventory,
    mode: Mode,
    needs_primary: bool,
    id: &str,
    host: &str,
    loc: &Location,
) -> Option<Diagnostic> {
    let site = inv.site_of(host)?;
    let role = site.role?;
    let (why, hint) = match (mode, role) {
        (Mode::Drill, SiteRole::Primary) => (
            "a drill must not touch production",
            "run it on a recovery-site host (for vm steps: `on = \"recovery\"`)",
        ),
        (Mode::Failover, SiteRole::Primary) if !needs_primary => (
            "it would fail when the primary site is lost",
            "mark it `needs_primary = true`, or run it on a host of another site",
        ),
        (Mode::Restore, SiteRole::Recovery) => (
            "a restore brings back the primary site by itself",
            "run it on a host of the primary site",
        ),
        _ => return None,
    };
    Some(
        Diagnostic::error(format!(
            "{mode} step `{id}` uses `{host}` on site `{}` ({}): {why}",
            site.id,
            role.as_str()
        ))
        .at(loc.clone())
        .hint(hint),
    )
}

/// The target of a tcp or http probe (run from the orchestrator): the `host` or `vm` the step
/// names, else the service's own; sets the template scope accordingly. `None` on a reported
/// error; `Some(None)` when there is no default address.
#[allow(clippy::too_many_arguments)]
fn probe_target<'a>(
    inv: &'a Inventory,
    service: &Service,
    host: &Option<crate::fields::Sp<String>>,
    vm: Option<&crate::fields::Sp<String>>,
    mode: Mode,
    scope: &mut StepScope<'a>,
    id: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Option<String>> {
    match (host, vm) {
        (Some(h), Some(_)) => {
            diags.push(
                Diagnostic::error(format!("check `{id}` names both a host and a vm"))
                    .at(h.loc.clone())
                    .hint("a tcp or http check targets one host or one vm"),
            );
            None
        }
        (Some(h), None) => {
            let host = inv.hosts.get(&h.value)?;
            scope.host = Some(host);
            Some(Some(host.address.clone()))
        }
        (None, Some(v)) => {
            let vm = inv.vms.get(&v.value)?;
            let side = mode.default_side();
            scope.vm = Some((vm, side));
            Some(match side {
                Side::Recovery => vm.recovery_address.clone().or(vm.address.clone()),
                Side::Primary => vm.address.clone(),
            })
        }
        (None, None) => Some(default_address(inv, service, mode)),
    }
}

/// Where a service answers for the side the mode brings up.
fn default_address(inv: &Inventory, service: &Service, mode: Mode) -> Option<String> {
    if let Some(vm) = service.vm().and_then(|v| inv.vms.get(v)) {
        return match mode.default_side() {
            Side::Recovery => vm.recovery_address.clone().or(vm.address.clone()),
            Side::Primary => vm.address.clone(),
        };
    }
    service
        .host()
        .and_then(|h| inv.hosts.get(h))
        .map(|h| h.address.clone())
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
    let (from_host, from_copy) = match role {
        ReplicaRole::FailedBack => (primary.clone(), format!("{pdir}/{}", vm.disks.first()?)),
        _ => (recovery.clone(), format!("{rdir}/{}", vm.disks.first()?)),
    };
    let primary = drill
        .then(|| vm_action_command(model, service, vm, Side::Primary, "definition", run_id))
        .flatten();
    Some(DefineUse {
        command,
        current,
        undefine,
        from_host,
        from_copy,
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
            nics,
            // A drill's copy runs beside the vm it copies: new MACs and a new UUID.
            keep_macs: vm.keep_macs && !drill,
            keep_uuid: !drill,
            drill,
            seed: format!("{run_id}/{}", vm.id),
        },
        format,
        host,
    })
}

/// A driver's replication hook (`replicate-begin`, `replicate-end`) of `vm`, on its primary
/// host: the host and the command, secrets unresolved.
pub fn replicate_hook(model: &Model, vm: &Vm, action: &str) -> Option<(String, Command)> {
    let inv = &model.inventory;
    // The templates' scope needs a service: the vm's own, else any.
    let service = inv
        .services
        .values()
        .find(|s| s.vm() == Some(vm.id.as_str()))
        .or_else(|| inv.services.values().next())?;
    vm_action_command(model, service, vm, Side::Primary, action, "replicate")
}

/// The vm action that undoes `action` (a vm stopped is started again, and so on); none for
/// drill copies, which their cleanup removes.
fn undo_action(action: &str) -> Option<&'static str> {
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
}
