//! `reprise check`: would a recovery work now?
//!
//! One short SSH conversation per host, all hosts at once: the host key must be known, the clock
//! is read, the tools the plans' commands call are looked up with `command -v`, and the replica
//! copies, their sources and the free space around them are measured. Then, without touching any
//! host, every mode is planned (the runbooks are valid) and the emergency failover's estimated
//! RTO is compared with each service's target.
//!
//! Gathering ([`probe_hosts`]) is apart from judging ([`evaluate`]), a pure function of what was
//! gathered, so the rules are unit-tested without hosts.

mod blockers;
mod definitions;
mod evaluate;
mod lag;
mod plans;
mod probe;
mod render;
mod replicas;
mod shell;

use std::collections::BTreeSet;

use chrono::Utc;

pub use self::blockers::{failback_blockers, failover_blockers};
use self::definitions::definition_items;
use self::evaluate::item;
pub use self::evaluate::{OVERLAY_FLOOR, evaluate, overlay_estimate};
pub use self::lag::{LagTarget, evaluate_lags, lag_targets, measure_lags};
use self::plans::host_commands;
pub use self::plans::{DrillStart, Plans, secrets_needed, tools_by_host};
pub use self::probe::{
    HostProbe, HostQuestions, PathStat, Space, parse_answers, probe_host, probe_hosts,
    probe_script, questions,
};
pub use self::render::render;
pub use self::replicas::{
    ReplicaTarget, Replicated, copy_rpo, replica_targets, rpo_service, runbook_services,
};
pub use self::shell::{bash_only, command_words};
pub use crate::duration::human_secs;
use crate::model::Model;
use crate::readiness::{ItemStatus, Readiness};
use crate::ssh::Transport;

/// How strict the check is.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Largest accepted difference between a host's clock and this machine's, in seconds.
    pub clock_tolerance_s: f64,
    /// The secrets (environment variables) set in reprise's environment; [`check`] reads them.
    pub secrets_set: BTreeSet<String>,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            clock_tolerance_s: 5.0,
            secrets_set: BTreeSet::new(),
        }
    }
}

/// The order of the table.
const AREAS: [&str; 12] = [
    "ssh",
    "clock",
    "tools",
    "shell",
    "secrets",
    "network",
    "replicas",
    "lag",
    "definitions",
    "space",
    "runbooks",
    "rto",
];

/// Runs the whole check.
pub fn check(model: &Model, transport: &dyn Transport, opts: &CheckOptions) -> Readiness {
    let plans = Plans::build(model);
    let replicas = replica_targets(model);
    let q = questions(model, &plans, &replicas);
    let lag_targets = lag_targets(&plans);
    let (probes, lags) = std::thread::scope(|scope| {
        let lags = scope.spawn(|| measure_lags(transport, &lag_targets));
        let probes = probe_hosts(transport, &q);
        (probes, lags.join().unwrap_or_default())
    });
    let now = Utc::now();
    let mut opts = opts.clone();
    opts.secrets_set.extend(
        secrets_needed(&plans)
            .into_keys()
            .filter(|n| std::env::var_os(n).is_some_and(|v| !v.is_empty())),
    );
    let mut items = evaluate(model, &plans, &replicas, &probes, &opts, now);
    items.extend(evaluate_lags(&lags));
    items.extend(definition_items(&plans, transport));
    items.sort_by_key(|i| AREAS.iter().position(|a| *a == i.area));
    Readiness {
        at: now,
        ready: !items.iter().any(|i| i.status == ItemStatus::Failed),
        items,
    }
}

/// The example inventory and runbooks of the repository, loaded.
#[cfg(test)]
fn example() -> crate::model::Model {
    let sources = crate::sources::Sources::read(
        std::path::Path::new("inventory"),
        std::path::Path::new("runbooks"),
    )
    .unwrap();
    crate::plan::validate::load(sources)
        .map(|(m, _)| m)
        .unwrap()
}
