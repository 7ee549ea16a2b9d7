//! Validation by planning: the model is valid when its files read cleanly and every mode plans.
//!
//! Sits above [`Model`] (the data) and [`build`](super::build) (the planner), so that the data
//! never depends on the planner. Pure: takes [`Sources`] already read; never prints.

use std::collections::HashSet;

use crate::diagnostic::{Diagnostic, Report};
use crate::model::Model;
use crate::plan::{PlanOptions, build};
use crate::runbook::Mode;
use crate::sources::Sources;

/// Loads and checks the files, then plans every mode; any error returns the full report, else
/// the model and its warnings.
pub fn load(sources: Sources) -> Result<(Model, Vec<Diagnostic>), Report> {
    let (model, mut diags) = Model::read(sources)?;
    // Every mode must plan: that checks hosts, sites, drivers and templates. (An emergency
    // failover plans a subset of the failover's steps: it cannot fail where that succeeds.)
    let mut seen = HashSet::new();
    for opts in Mode::ALL.iter().map(|&m| PlanOptions::new(m)) {
        if let Err(errors) = build(&model, &opts) {
            for e in errors {
                if seen.insert(e.clone()) {
                    diags.push(e);
                }
            }
        }
    }
    for e in super::vm::driver_action_errors(&model) {
        if seen.insert(e.clone()) {
            diags.push(e);
        }
    }
    if diags.iter().any(Diagnostic::is_error) {
        return Err(model.report(diags));
    }
    Ok((model, diags))
}
