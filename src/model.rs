//! The model: inventory, runbooks and service graph loaded together and checked file by file.
//! Whether every mode plans is checked above it, by `plan::validate::load`.
//!
//! Pure: takes [`Sources`] already read; never prints.

use crate::diagnostic::{Diagnostic, Report};
use crate::graph::ServiceGraph;
use crate::inventory::{self, Inventory};
use crate::runbook::{self, Runbooks};
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
    /// Reads and checks the files and the links between them, without planning; any error returns
    /// the full report. A model every mode can plan comes from `plan::validate::load`.
    pub fn read(sources: Sources) -> Result<(Model, Vec<Diagnostic>), Report> {
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
