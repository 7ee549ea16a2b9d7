//! reprise: a disaster-recovery orchestrator for small IT teams.
//!
//! The pipeline, one module a stage: [`sources`] (files on disk) → [`inventory`] and
//! [`runbook`] (read and cross-checked into a [`model`], then validated by planning every mode:
//! `plan::validate::load`) → [`graph`] (service dependencies) → [`plan`] (every concrete step,
//! in order) → [`runner`] (execution over [`ssh`], emitting [`event`]s) →
//! [`journal`] and [`view`]. [`run`] ties a run together; [`check`] says whether a recovery
//! would work now, [`report`] tells management how one went; [`lab`] brings the example to life on
//! loopback; [`cli`] is the command line on top. See ARCHITECTURE.md.

pub mod away;
pub mod check;
pub mod cli;
pub mod diagnostic;
pub mod duration;
pub mod event;
pub mod exit;
pub mod fields;
pub mod graph;
pub mod http;
pub mod inventory;
pub mod journal;
pub mod lab;
pub mod lag;
pub mod model;
pub mod plan;
pub mod readiness;
pub mod replica;
pub mod report;
pub mod run;
pub mod runbook;
pub mod runner;
pub mod schedule;
pub mod shutdown;
pub mod sources;
pub mod ssh;
pub mod template;
pub mod view;
pub mod vmdef;
