//! The whole check ([`check`]): gather from every host at once, judge, and sort the items
//! into the table's order; with how strict it is ([`CheckOptions`]).

use std::collections::BTreeSet;

use chrono::Utc;

use super::definitions::definition_items;
use super::{
    Plans, evaluate, evaluate_lags, lag_targets, measure_lags, probe_hosts, questions,
    replica_targets, secrets_needed,
};
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
