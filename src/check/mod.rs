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
mod run;
mod shell;

pub use self::blockers::{failback_blockers, failover_blockers};
use self::evaluate::item;
pub use self::evaluate::{OVERLAY_FLOOR, evaluate, overlay_estimate};
pub use self::lag::{LagTarget, evaluate_lags, lag_targets, measure_lags};
use self::plans::host_commands;
pub use self::plans::{DrillStart, Plans, secrets_needed, tools_by_host};
pub use self::probe::read_clock;
pub use self::probe::{
    HostProbe, HostQuestions, PathStat, Space, parse_answers, probe_host, probe_hosts,
    probe_script, questions,
};
pub use self::render::render;
pub use self::replicas::{
    ReplicaTarget, Replicated, copy_rpo, replica_targets, rpo_service, runbook_services,
};
pub use self::run::{CheckOptions, check};
pub use self::shell::{bash_only, command_words};
pub use crate::duration::human_secs;

/// The example inventory and runbooks of the repository, loaded.
#[cfg(test)]
pub(crate) fn example() -> crate::model::Model {
    let sources = crate::sources::Sources::read(
        std::path::Path::new("inventory"),
        std::path::Path::new("runbooks"),
    )
    .unwrap();
    crate::plan::validate::load(sources)
        .map(|(m, _)| m)
        .unwrap()
}
