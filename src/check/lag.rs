//! The replication lag of services their application replicates, as `check` reads it: the
//! lag probes of the plans ([`lag_targets`]), run at once ([`measure_lags`]) and judged
//! against each RPO ([`evaluate_lags`]).

use chrono::Utc;

use super::{Plans, item};
use crate::plan::Action;
use crate::readiness::{ItemStatus, ReadinessItem};
use crate::ssh::Transport;

/// A service its application replicates, and the lag probe its plans run.
#[derive(Debug, Clone)]
pub struct LagTarget {
    pub service: String,
    pub host: String,
    pub command: crate::template::Command,
    pub timeout: crate::duration::Duration,
    pub rpo: Option<crate::duration::Duration>,
}

/// The lag probes of the plans (the failover's first, then the drill's), one per service.
pub fn lag_targets(plans: &Plans) -> Vec<LagTarget> {
    let mut found: Vec<LagTarget> = Vec::new();
    let order = ["emergency failover", "planned failover", "drill"];
    for label in order {
        let Some(Ok(plan)) = plans
            .by_mode
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, p)| p)
        else {
            continue;
        };
        for step in &plan.steps {
            if let Action::Lag {
                run, timeout, rpo, ..
            } = &step.action_spec
                && !found.iter().any(|t| t.service == step.service)
            {
                found.push(LagTarget {
                    service: step.service.clone(),
                    host: step.host.clone().unwrap_or_default(),
                    command: run.clone(),
                    timeout: *timeout,
                    rpo: *rpo,
                });
            }
        }
    }
    found
}

/// Runs every lag probe at once (secrets from the environment).
pub fn measure_lags(
    transport: &dyn Transport,
    targets: &[LagTarget],
) -> Vec<(LagTarget, crate::lag::Lag)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                scope.spawn(
                    move || match t.command.expose(|name| std::env::var(name).ok()) {
                        Ok(text) => {
                            let mut lag = crate::lag::measure(transport, &t.host, &text, t.timeout);
                            // What the probe said is shown and saved: never a secret's value.
                            if let crate::lag::Reading::Unknown(why) = &mut lag.reading {
                                for name in t.command.secrets() {
                                    if let Ok(value) = std::env::var(name)
                                        && !value.is_empty()
                                    {
                                        *why = why.replace(&value, &format!("<secret:{name}>"));
                                    }
                                }
                            }
                            lag
                        }
                        Err(missing) => crate::lag::Lag {
                            at: Utc::now(),
                            reading: crate::lag::Reading::Unknown(format!(
                                "secret {missing} is not set in the environment"
                            )),
                        },
                    },
                )
            })
            .collect();
        targets
            .iter()
            .zip(handles)
            .map(|(t, h)| {
                let lag = h.join().unwrap_or_else(|_| crate::lag::Lag {
                    at: Utc::now(),
                    reading: crate::lag::Reading::Unknown("the probe stopped unexpectedly".into()),
                });
                (t.clone(), lag)
            })
            .collect()
    })
}

/// Judges the lags read: within the RPO is ok; over it, or unknown, fails (a failover now
/// would lose more than allowed, or nobody can say how much). Pure.
pub fn evaluate_lags(lags: &[(LagTarget, crate::lag::Lag)]) -> Vec<ReadinessItem> {
    lags.iter()
        .map(|(t, lag)| {
            let (verdict, words) = crate::lag::judge(&lag.reading, t.rpo);
            let (status, detail) = match verdict {
                crate::lag::Verdict::Within => (ItemStatus::Ok, format!("{words} (probe on {})", t.host)),
                crate::lag::Verdict::Over => (ItemStatus::Failed, format!("{words} (probe on {})", t.host)),
                crate::lag::Verdict::Unknown => (
                    ItemStatus::Failed,
                    format!(
                        "{words} (probe on {}): nobody can say how much data a failover now would lose",
                        t.host
                    ),
                ),
            };
            item("lag", &format!("service {}", t.service), status, detail)
        })
        .collect()
}
