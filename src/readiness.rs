//! The result of `reprise check`: is a recovery possible now? Saved under the state folder
//! (`check/latest.json`) and carried into the next run's journal, so the drill report shows the
//! readiness the drill started from.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What was checked, when, and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub at: DateTime<Utc>,
    /// True when no item failed.
    pub ready: bool,
    pub items: Vec<ReadinessItem>,
}

/// One line of the readiness table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadinessItem {
    /// `ssh`, `tools`, `space`, `replicas`, `runbooks`, `clock` or `rto`.
    pub area: String,
    /// The host, VM, backup set or service it is about.
    pub subject: String,
    pub status: ItemStatus,
    /// What was found, in words (e.g. "missing: virsh, qemu-img").
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Ok,
    /// Worth attention, does not stop a recovery.
    Warning,
    /// A recovery would fail or miss its target.
    Failed,
}

/// Where the latest readiness check is kept.
pub fn latest_path(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("check").join("latest.json")
}

/// The latest readiness check, if one was saved and can be read.
pub fn load_latest(state_dir: &std::path::Path) -> Option<Readiness> {
    let text = std::fs::read_to_string(latest_path(state_dir)).ok()?;
    serde_json::from_str(&text).ok()
}
