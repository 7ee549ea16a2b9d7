//! The validated model: inventory, runbooks and service graph loaded together, and `validate`,
//! which checks everything a plan of any mode would need.
//!
//! Pure: takes [`Sources`] already read; never prints.

use crate::diagnostic::{Diagnostic, Report};
use crate::graph::ServiceGraph;
use crate::inventory::{self, Inventory};
use crate::plan::{self, PlanOptions};
use crate::runbook::{self, Mode, Runbooks};
use crate::sources::Sources;

/// Everything reprise knows about the infrastructure and what to do with it.
#[derive(Debug, Clone)]
pub struct Model {
    pub sources: Sources,
    pub inventory: Inventory,
    pub runbooks: Runbooks,
    pub graph: ServiceGraph,
}

impl Model {
    /// Loads and checks the files; any error (or, with `strict`, none) returns the full report.
    pub fn load(sources: Sources) -> Result<(Model, Vec<Diagnostic>), Report> {
        let mut diags = sources.diagnostics.clone();
        let inventory = inventory::load(&sources, &sources.inventory, &mut diags);
        let graph = ServiceGraph::build(&inventory, &mut diags);
        let runbooks = runbook::load(&sources, &inventory, &mut diags);
        let model = Model {
            sources,
            inventory,
            runbooks,
            graph,
        };
        if diags.iter().any(Diagnostic::is_error) {
            return Err(model.report(diags));
        }
        // Every mode must plan: that checks hosts, sites, drivers and templates. (An emergency
        // failover plans a subset of the failover's steps: it cannot fail where that succeeds.)
        let mut seen = std::collections::HashSet::new();
        for opts in Mode::ALL.iter().map(|&m| PlanOptions::new(m)) {
            if let Err(errors) = plan::build(&model, &opts) {
                for e in errors {
                    if seen.insert(e.clone()) {
                        diags.push(e);
                    }
                }
            }
        }
        if diags.iter().any(Diagnostic::is_error) {
            return Err(model.report(diags));
        }
        Ok((model, diags))
    }

    /// A report of `diagnostics` against these sources, sorted by place.
    pub fn report(&self, mut diagnostics: Vec<Diagnostic>) -> Report {
        diagnostics.sort_by_key(|d| {
            d.location
                .as_ref()
                .map(|l| (0, l.file, l.span.start))
                .unwrap_or((1, crate::diagnostic::FileId(0), 0))
        });
        Report {
            sources: self.sources.map.clone(),
            diagnostics,
        }
    }
}
