//! The readiness table and its verdict, for a person.

use crate::readiness::{ItemStatus, Readiness};

/// The table and the verdict, for a person.
pub fn render(r: &Readiness) -> String {
    let mut out = format!(
        "readiness check at {}\n\n",
        r.at.format("%Y-%m-%d %H:%M:%S UTC")
    );
    let w_area = r
        .items
        .iter()
        .map(|i| i.area.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let w_subj = r
        .items
        .iter()
        .map(|i| i.subject.chars().count())
        .max()
        .unwrap_or(7)
        .max(7);
    out.push_str(&format!(
        "{:w_area$}  {:w_subj$}  {:7}  DETAIL\n",
        "AREA", "SUBJECT", "STATUS"
    ));
    for i in &r.items {
        let status = match i.status {
            ItemStatus::Ok => "ok",
            ItemStatus::Warning => "WARNING",
            ItemStatus::Failed => "FAILED",
        };
        let pad = w_subj.saturating_sub(i.subject.chars().count());
        out.push_str(&format!(
            "{:w_area$}  {}{}  {:7}  {}\n",
            i.area,
            i.subject,
            " ".repeat(pad),
            status,
            i.detail
        ));
    }
    let count = |s| r.items.iter().filter(|i| i.status == s).count();
    let (ok, warn, failed) = (
        count(ItemStatus::Ok),
        count(ItemStatus::Warning),
        count(ItemStatus::Failed),
    );
    out.push('\n');
    if r.ready {
        out.push_str(&format!(
            "verdict: READY: {ok} checks passed, {warn} warnings\n"
        ));
    } else {
        let what: Vec<String> = r
            .items
            .iter()
            .filter(|i| i.status == ItemStatus::Failed)
            .map(|i| format!("{} {}", i.area, i.subject))
            .collect();
        out.push_str(&format!(
            "verdict: NOT READY: {failed} failed ({}); {ok} passed, {warn} warnings\n",
            what.join("; ")
        ));
    }
    out
}
