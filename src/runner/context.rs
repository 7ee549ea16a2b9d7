//! What a run is given ([`RunContext`]: the plan, the transport, the options, what a resume
//! knows) and what its step tasks hand back to the scheduler ([`Outcome`], [`Msg`]).
//!
//! Plain data: no step runs here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use tokio::sync::watch;
// Tokio's clock, so that paused time in tests drives deadlines and polling alike.
use tokio::time::Instant;

use crate::event::{Event, StepStatus};
use crate::journal::Confirmation;
use crate::plan::{Plan, PlannedStep};
use crate::ssh::Transport;

/// How a run behaves.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Steps running at once, in all.
    pub parallel: usize,
    /// Steps running at once on one host.
    pub per_host: usize,
    /// Undo completed steps when a planned failover or failback fails.
    pub rollback: bool,
    /// How often manual steps look for a confirmation.
    pub confirmation_poll: StdDuration,
    /// The replica points a failover starts the vms from.
    pub points: PointChoice,
    /// Where the last definition used per host and vm name is kept (the state folder's
    /// `definitions/`), for the dry run's diff.
    pub definitions_dir: Option<std::path::PathBuf>,
    /// Who forced the run (`--force`): what a step cannot tell and would refuse for, it
    /// passes, journaled as forced by them.
    pub forced_by: Option<String>,
    /// For a resumed run: what each vm start of an earlier attempt found its vm to be before
    /// it (`vm_state_before`, by step), which a roll-back of this attempt goes by.
    pub running_before: std::collections::HashMap<String, Option<bool>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            parallel: 8,
            per_host: 4,
            rollback: true,
            confirmation_poll: StdDuration::from_millis(250),
            points: PointChoice::default(),
            definitions_dir: None,
            forced_by: None,
            running_before: Default::default(),
        }
    }
}

/// Where manual steps find their confirmations (the run folder, or a terminal prompt feeding it).
pub trait Confirmations: Send + Sync {
    /// Takes the confirmation given for the step's wait, if any: once taken, it is gone (a
    /// later wait of the same step needs its own).
    fn confirmation(&self, step: &str) -> Option<Confirmation>;
}

impl Confirmations for crate::journal::RunDir {
    fn confirmation(&self, step: &str) -> Option<Confirmation> {
        crate::journal::RunDir::take_confirmation(self, step)
    }
}

/// Where events go. Called from the runner's task, in order.
pub trait Sink: Send {
    /// Takes an event. An error means it could not be recorded (the journal failed): the run
    /// then stops (no step starts any more; running ones finish).
    fn emit(&mut self, event: &Event) -> Result<(), Unrecorded>;
}

/// Why an event could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unrecorded(pub String);

/// What a resumed run knows of a step from the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prior {
    /// Finished successfully: never run again.
    Done,
    /// Was running when the orchestrator died: verify, re-run if idempotent, or ask.
    Interrupted,
    /// A main step of a drill whose cleanup already ran: never run (its copies are gone).
    DrillOver,
}

/// Resolves secrets at execution time.
pub type SecretResolver = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub fn env_secrets() -> SecretResolver {
    Arc::new(|name| std::env::var(name).ok())
}

/// Asks the other site about the vm a step is about to start, as the run's start asked it
/// (a restore: whether its recovery host runs it, and whether its recovery copies hold a
/// failover's `live` lease), and judges the answer as the start did: the start may be hours
/// ago (a restore waits for people at each power step), and a recovery host that did not
/// answer then may have come back, or been failed over to, since.
pub trait OtherSite: Send + Sync {
    /// Blocking (it asks hosts): what the other site says of the vm `step` starts (or, for
    /// a failback, copies back).
    fn judge(&self, step: &PlannedStep) -> OtherSiteSays;
}

/// What [`OtherSite::judge`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OtherSiteSays {
    /// Why the vm must not start, each with the way out: the step fails.
    pub refused: Vec<String>,
    /// What is only said (the other site could not be asked): the step goes on.
    pub said: Vec<String>,
    /// What would stop it, passed because `operator` forced the run (`--force`): journaled
    /// as `readiness_forced` by that operator, once each, and the step goes on.
    pub forced: Vec<String>,
    pub operator: String,
}

/// Everything a run needs.
pub struct RunContext {
    pub plan: Arc<Plan>,
    pub transport: Arc<dyn Transport>,
    pub confirmations: Arc<dyn Confirmations>,
    pub secrets: SecretResolver,
    pub options: RunOptions,
    pub prior: HashMap<String, Prior>,
    /// Asked before each step that starts or copies a vm; `None`: nothing is asked (only a
    /// restore and a failback ask).
    pub other_site: Option<Arc<dyn OtherSite>>,
    /// What each copy of a vm between its sites in this run read before it read it
    /// ([`Copied`]).
    pub copied: Copied,
}

/// Vm → what the last copy of it from one site to the other (a planned failover's final
/// sync, a failback's copy back) read in this process ([`CopyRead`]): the vm's start on the
/// other site checks its source is still so (a vm started there again since wrote what the
/// copy does not hold). A resumed run makes again a copy whose vm it has not started yet, so
/// a start never relies on an earlier process's copy.
pub type Copied = Arc<std::sync::Mutex<HashMap<String, CopyRead>>>;

/// What a copy of a vm between its sites read: its step, the host it read, and each disk it
/// read there with its stamp (size, modification time, inode) before.
#[derive(Debug, Clone)]
pub struct CopyRead {
    pub step: String,
    pub host: String,
    pub stamps: Vec<(String, String)>,
    /// Made by this process (not read from the journal of an earlier one).
    pub here: bool,
    /// The point it made in the copies, when it made one: a planned failover's start
    /// starts from that very point ([`super::vm`]), never from an older one if it is found
    /// bad.
    pub point: Option<String>,
}

pub use crate::event::PointChoice;

impl PointChoice {
    /// What the operator asked for `vm`, as [`crate::replica::choice`] takes it.
    pub(crate) fn ask(&self, vm: &str, run: &str, failover: bool) -> crate::replica::choice::Ask {
        use crate::replica::choice::Want;
        let named = self.by_vm.get(vm).or(self.all.as_ref());
        let want = match (named, self.before) {
            (Some(id), _) => Some(Want::Id(id.clone())),
            (None, Some(t)) => Some(Want::Before(t)),
            (None, None) => None,
        };
        crate::replica::choice::Ask {
            want: want.filter(|_| failover),
            accept_unverified: self.accept_unverified.iter().any(|v| v == vm || v == "*"),
            run: Some(run.to_string()),
            // A point named for it respects the time asked too.
            within: self.before.filter(|_| failover && named.is_some()),
        }
    }

    /// What the operator asked for backup set `set`: its own `--point SET=POINT` or
    /// `--point-before`, never a point named for every vm (`--point POINT` is a vm's).
    pub(crate) fn ask_set(
        &self,
        set: &str,
        run: &str,
        failover: bool,
    ) -> crate::replica::choice::Ask {
        PointChoice {
            all: None,
            ..self.clone()
        }
        .ask(set, run, failover)
    }
}

/// The result of one step's task.
pub(super) struct Outcome {
    pub(super) index: usize,
    pub(super) status: StepStatus,
    pub(super) attempt: u32,
    pub(super) message: Option<String>,
    pub(super) elapsed: StdDuration,
}

/// Messages from step tasks to the loop: events to emit.
pub(super) enum Msg {
    Event(Event),
    /// An event that must be recorded before the step goes on (its start, before its
    /// command is sent); the answer says whether it was.
    Recorded(Event, tokio::sync::oneshot::Sender<bool>),
}

/// One step's task: which step, when it began, where its events go and whether the run asks
/// it to stop.
pub(super) struct StepRun {
    pub(super) index: usize,
    pub(super) begin: Instant,
    pub(super) tx: tokio::sync::mpsc::UnboundedSender<Msg>,
    pub(super) shutdown: watch::Receiver<bool>,
}

impl StepRun {
    /// The step's outcome, timed from its beginning.
    pub(super) fn outcome(
        &self,
        status: StepStatus,
        attempt: u32,
        message: Option<String>,
    ) -> Outcome {
        Outcome {
            index: self.index,
            status,
            attempt,
            message,
            elapsed: self.begin.elapsed(),
        }
    }

    /// Sends an event to the journal (not waiting for it to be recorded).
    pub(super) fn send(&self, event: Event) {
        let _ = self.tx.send(Msg::Event(event));
    }
}
