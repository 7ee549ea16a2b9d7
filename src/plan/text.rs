//! The plan for a person at 3 a.m.: grouped by service in dependency order, each step with its
//! estimated start, host and exact command, then the critical path and what was left out.
//! Where a host is really reached is given by the caller ([`Reach`]): this module reads nothing.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::duration::Duration;
use crate::plan::{Plan, PlannedService, PlannedStep};
use crate::runbook::{Mode, Phase};

/// What a mode does, in one line.
pub fn describe(mode: Mode, emergency: bool) -> &'static str {
    match (mode, emergency) {
        (Mode::Drill, _) => "failover drill on the recovery site; production is not touched",
        (Mode::Failover, false) => "planned failover to the recovery site",
        (Mode::Failover, true) => {
            "the primary site is declared lost; steps that need it are left out"
        }
        (Mode::Restore, _) => "cold start of the primary site, in dependency order",
        (Mode::Failback, _) => "failback to the primary site, replication reversed first",
    }
}

fn clock(secs: u64) -> String {
    format!("T+{}:{:02}", secs / 3600, (secs % 3600) / 60)
}

/// Where a host of the plan is reached when that is not its inventory address, port and user
/// as written: the user's ssh configuration sends it elsewhere, or refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// What is reached instead, as `10.1.0.5 → admin@192.0.2.7:2222 via ~/.ssh/config`.
    Elsewhere(String),
    /// Why no connection to it will be tried: its steps fail.
    Refused(String),
}

/// The plan, each host as the inventory names it.
pub fn render(plan: &Plan) -> String {
    render_reaching(plan, &BTreeMap::new())
}

/// The plan, each host of `reach` shown where it is really reached.
pub fn render_reaching(plan: &Plan, reach: &BTreeMap<String, Reach>) -> String {
    let mut out = String::new();
    render_header(&mut out, plan);
    let by_id: HashMap<&str, &PlannedStep> =
        plan.steps.iter().map(|s| (s.id.as_str(), s)).collect();
    for (n, service) in plan.services.iter().enumerate() {
        render_service(&mut out, n, service, &by_id, reach);
    }
    render_footer(&mut out, plan, reach);
    out
}

/// What the plan does, to what, and how long it is estimated to take.
fn render_header(out: &mut String, plan: &Plan) {
    let title = if plan.emergency {
        "EMERGENCY FAILOVER".to_string()
    } else {
        plan.mode.as_str().to_uppercase()
    };
    let _ = writeln!(out, "{title} plan: {}", describe(plan.mode, plan.emergency));
    let _ = writeln!(
        out,
        "{} service{}, {} step{}, estimated {} until the last step (run id {})",
        plan.services.len(),
        crate::diagnostic::plural(plan.services.len()),
        plan.steps.len(),
        crate::diagnostic::plural(plan.steps.len()),
        plan.estimate.total,
        plan.run_id
    );
    if !plan.selection.requested.is_empty() {
        let _ = writeln!(out, "Limited to: {}", plan.selection.requested.join(", "));
        if !plan.selection.pulled_in.is_empty() {
            let _ = writeln!(
                out,
                "Pulled in as dependencies: {}",
                plan.selection.pulled_in.join(", ")
            );
        }
    }
    if plan.selection.only && !plan.selection.assumed_running.is_empty() {
        let _ = writeln!(
            out,
            "--only: NOT included, assumed already running: {}",
            plan.selection.assumed_running.join(", ")
        );
    }
    if plan.mode == Mode::Drill {
        let _ = writeln!(
            out,
            "Cleanup steps run at the end, even when the drill fails."
        );
    }
}

/// One service's part: targets, needs, and its main steps.
fn render_service(
    out: &mut String,
    n: usize,
    service: &PlannedService,
    by_id: &HashMap<&str, &PlannedStep>,
    reach: &BTreeMap<String, Reach>,
) {
    let verdict = if service.rto_ok { "ok" } else { "OVER TARGET" };
    let _ = writeln!(
        out,
        "\n[{}] {} ({}){}",
        n + 1,
        service.id,
        service.kind,
        service
            .owner
            .as_ref()
            .map(|o| format!(", owner {o}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "    RTO target {}, estimated {} ({verdict}){}",
        service.rto_target,
        service.estimated_rto,
        service
            .rpo_target
            .map(|r| format!("; RPO target {r}"))
            .unwrap_or_default()
    );
    if !service.depends_on.is_empty() {
        let _ = writeln!(out, "    needs: {}", service.depends_on.join(", "));
    }
    let mut previous: Option<&str> = None;
    for sid in &service.steps {
        let step = by_id[sid.as_str()];
        if step.phase == Phase::Main {
            render_step(out, step, previous, reach);
            previous = Some(&step.id);
        }
    }
    if service.steps.is_empty() {
        let _ = writeln!(out, "    (nothing to do in this mode)");
    }
}

/// The cleanup steps, the critical path, warnings, and what the plan leaves out.
fn render_footer(out: &mut String, plan: &Plan, reach: &BTreeMap<String, Reach>) {
    let cleanup: Vec<&PlannedStep> = plan
        .steps
        .iter()
        .filter(|s| s.phase == Phase::Cleanup)
        .collect();
    if !cleanup.is_empty() {
        let _ = writeln!(out, "\n[cleanup] reverse dependency order, always runs");
        let mut previous: Option<&str> = None;
        for step in cleanup {
            render_step(out, step, previous, reach);
            previous = Some(&step.id);
        }
    }
    let _ = writeln!(
        out,
        "\nCritical path ({}): {}",
        plan.estimate.total,
        plan.estimate.critical_path.join(" → ")
    );
    let refused: Vec<(&String, &String)> = reach
        .iter()
        .filter_map(|(host, r)| match r {
            Reach::Refused(why) => Some((host, why)),
            Reach::Elsewhere(_) => None,
        })
        .filter(|(host, _)| plan.steps.iter().any(|s| s.host.as_ref() == Some(*host)))
        .collect();
    if !refused.is_empty() {
        let _ = writeln!(out, "\nNot reached (every step on these hosts fails):");
        for (host, why) in refused {
            let _ = writeln!(out, "  ! {host}: {why}");
        }
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings:");
        for w in &plan.warnings {
            let _ = writeln!(out, "  ! {w}");
        }
    }
    if !plan.left_out.is_empty() {
        let _ = writeln!(
            out,
            "\nLeft out ({} step{}):",
            plan.left_out.len(),
            crate::diagnostic::plural(plan.left_out.len())
        );
        for l in &plan.left_out {
            let _ = writeln!(out, "  - {}: {}", l.id, l.reason);
        }
    }
    if !plan.not_covered.is_empty() {
        let _ = writeln!(
            out,
            "\nNot covered (no {} runbook): {}",
            plan.mode,
            plan.not_covered.join(", ")
        );
    }
}

fn render_step(
    out: &mut String,
    step: &PlannedStep,
    previous: Option<&str>,
    reach: &BTreeMap<String, Reach>,
) {
    let whom = match (&step.host, step.kind) {
        (Some(h), _) => match reach.get(h) {
            Some(Reach::Elsewhere(to)) => format!("on {h} ({to})"),
            Some(Reach::Refused(_)) => format!("on {h} (NOT REACHED, see below)"),
            None => format!("on {h}"),
        },
        (None, "manual") => "by the operator".to_string(),
        (None, _) => "from the orchestrator".to_string(),
    };
    let mut facts = vec![format!("expected {}", Duration(step.expected_s))];
    match step.timeout_s {
        Some(t) => facts.push(format!("timeout {}", Duration(t))),
        None if step.kind == "manual" => facts.push("waits for confirmation".to_string()),
        None => {}
    }
    if step.retries > 0 {
        facts.push(format!("retries {}", step.retries));
    }
    if step.idempotent {
        facts.push("idempotent".to_string());
    }
    if step.needs_primary {
        facts.push("needs primary".to_string());
    }
    let kind = match &step.action {
        Some(a) => format!("{} {a}", step.kind),
        None => step.kind.to_string(),
    };
    let _ = writeln!(
        out,
        "  {:>7}  {}  [{kind}] {whom}{}",
        clock(step.est_start_s),
        step.id,
        if step.critical { "  *critical" } else { "" }
    );
    if let Some(d) = &step.description {
        let _ = writeln!(out, "           {d}");
    }
    let label = if step.kind == "manual" { "do" } else { "$" };
    for (i, line) in step.command.lines().enumerate() {
        let lead = if i == 0 { label } else { " " };
        let _ = writeln!(out, "           {lead} {line}");
    }
    if let Some(v) = &step.verify {
        let _ = writeln!(out, "           verify: {v}");
    }
    let replica = step.replica.as_ref().and_then(|r| match r.role {
        crate::plan::ReplicaRole::Start => Some(
            "one point for all disks, the newest good one they share (rolled back to it when a newest point is bad or only some disks have it; --point chooses)",
        ),
        crate::plan::ReplicaRole::DrillStart => {
            Some("the newest point of each disk, left untouched")
        }
        crate::plan::ReplicaRole::DrillStop | crate::plan::ReplicaRole::FailedBack => None,
    });
    if let Some(r) = replica {
        let _ = writeln!(out, "           replica: {r}");
    }
    if let crate::plan::Action::Lag { rpo, hold, .. } = &step.action_spec {
        let _ = writeln!(
            out,
            "           lag: one number of seconds, judged against {}; any other answer, a failure or no answer in time is \"lag unknown\"{}",
            rpo.map(|r| format!("the RPO {r}"))
                .unwrap_or_else(|| "no RPO".into()),
            if *hold {
                "; unknown or over it, the switch stops here"
            } else {
                ""
            }
        );
    }
    if let Some(u) = &step.undo {
        let _ = writeln!(out, "           undo: {u}");
    }
    let _ = writeln!(out, "           {}", facts.join(", "));
    let waits: Vec<&str> = step
        .after
        .iter()
        .map(String::as_str)
        .filter(|a| Some(*a) != previous)
        .collect();
    if !waits.is_empty() {
        let _ = writeln!(out, "           waits for: {}", waits.join(", "));
    }
}
