//! reprise: a disaster-recovery orchestrator for small IT teams.
//!
//! The pipeline, one module a stage: [`sources`] (files on disk) → [`inventory`] and
//! [`runbook`] (validated model, see [`model`]) → [`graph`] (service dependencies) → [`plan`]
//! (every concrete step, in order). [`cli`] is the command line on top. See ARCHITECTURE.md.

pub mod cli;
pub mod diagnostic;
pub mod duration;
pub mod exit;
pub mod fields;
pub mod graph;
pub mod inventory;
pub mod lab;
pub mod model;
pub mod plan;
pub mod runbook;
pub mod sources;
pub mod template;
