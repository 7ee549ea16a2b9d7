//! A vm's start from its recovery copies, prepared: the one door the runner goes through to
//! ask "which point for this vm, and make its copies ready to start from it".
//!
//! [`prepare`] waits for a replication snapshot left on the primary to be merged back (a
//! drill), then reads the copies, asks [`super::choice::decide`] (the decision `check`,
//! `status` and `points` make too), does what it asks (settle an update that was cut, read
//! again a copy changed behind its point) and asks again until a decision holds; then it reads
//! the chosen point again by hash, rolls the copies back (a failover only) and leases them,
//! and answers a typed [`Prepared`].
//! [`after`] does what a step that used the copies leaves to them (a vm running on them ends
//! their history; a drill's or a failback's lease released).
//!
//! Blocking: the runner calls it from `spawn_blocking`. It reaches the hosts only through
//! [`Copies`] (the helpers, [`Remote`]); it never prints and journals nothing: the runner
//! journals what it answers.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::choice::{self, Ask, Decision, Prep, Start, Use};
use super::remote::Helpers;
use super::store::RolledBack;
use super::{CopyState, Lease, LeaseKind, Verified};
use crate::ssh::Transport;

/// How long a start waits for a replication that holds a copy it needs.
pub const COPY_WAIT: Duration = Duration::from_secs(60);

/// How long a drill waits for the snapshot of a replication that ended (or is ending) to be
/// merged back before it calls it left behind.
pub const SNAPSHOT_SETTLE: Duration = Duration::from_secs(60);

/// What a start asks of the recovery host's helper, and of the primary host (errors are the
/// helper's, as text).
pub trait Copies {
    fn inspect(&self, host: &str, paths: &[String]) -> Result<Vec<CopyState>, String>;
    fn settle(&self, host: &str, path: &str, wait: Duration) -> Result<Option<String>, String>;
    /// Reads `point` of the copy again by hash: whether it is whole.
    fn verify(&self, host: &str, path: &str, point: &str) -> Result<bool, String>;
    fn roll_back(&self, host: &str, path: &str, point: &str) -> Result<RolledBack, String>;
    fn take_lease(
        &self,
        host: &str,
        path: &str,
        lease: &Lease,
        take: Take<'_>,
    ) -> Result<Option<String>, String>;
    fn release(
        &self,
        host: &str,
        paths: &[String],
        run: Option<&str>,
        kind: Option<LeaseKind>,
    ) -> Result<Vec<String>, String>;
    /// A failback copied the copies `paths` back to the primary: their `live` leases are
    /// removed, and what was written in them outside reprise since their newest point is
    /// let go (`Helpers::release_copied_back`), each only while it is as the copy back read
    /// it (`read`: path and stamp; a path not in it as it is).
    fn release_copied_back(
        &self,
        host: &str,
        paths: &[String],
        _read: &[(String, String)],
    ) -> Result<Vec<String>, String> {
        self.release(host, paths, None, Some(LeaseKind::Live))
    }
    /// A failover's start of run `run` was undone by a roll-back: its `live` leases are
    /// removed, and the copies are let go as they are now (what the vm wrote there while it
    /// ran is given up for the primary's data): a vm started on them by hand afterwards is
    /// then seen by the next replication, which refuses to overwrite it.
    fn release_undone(
        &self,
        host: &str,
        paths: &[String],
        run: &str,
    ) -> Result<Vec<String>, String> {
        self.release(host, paths, Some(run), Some(LeaseKind::Live))
    }
    /// Runs a read-only command on a host: its standard output when it exited 0 and was read
    /// whole.
    fn ask(&self, host: &str, command: &str) -> Option<String>;
}

/// How a lease is taken: the point the copy must still be, how long to wait for a
/// replication that holds it, and whether the vm already runs on it.
#[derive(Debug, Clone, Copy)]
pub struct Take<'a> {
    pub expect: Option<&'a str>,
    pub wait: Duration,
    pub started: bool,
}

/// [`Copies`] through the deployed helpers, over a transport.
pub struct Remote<'a> {
    helpers: Helpers<'a>,
    transport: &'a dyn Transport,
}

impl<'a> Remote<'a> {
    pub fn new(transport: &'a dyn Transport) -> Remote<'a> {
        Remote {
            helpers: Helpers::new(transport),
            transport,
        }
    }
}

impl Copies for Remote<'_> {
    fn inspect(&self, host: &str, paths: &[String]) -> Result<Vec<CopyState>, String> {
        self.helpers.inspect(host, paths).map_err(|e| e.to_string())
    }

    fn settle(&self, host: &str, path: &str, wait: Duration) -> Result<Option<String>, String> {
        self.helpers
            .settle(host, path, wait)
            .map_err(|e| e.to_string())
    }

    fn verify(&self, host: &str, path: &str, point: &str) -> Result<bool, String> {
        let checked = self
            .helpers
            .verify(host, path, Some(point))
            .map_err(|e| e.to_string())?;
        Ok(checked.iter().all(|c| c.good))
    }

    fn roll_back(&self, host: &str, path: &str, point: &str) -> Result<RolledBack, String> {
        self.helpers
            .roll_back(host, path, point)
            .map_err(|e| e.to_string())
    }

    fn take_lease(
        &self,
        host: &str,
        path: &str,
        lease: &Lease,
        take: Take<'_>,
    ) -> Result<Option<String>, String> {
        self.helpers
            .take_lease(host, path, lease, take.expect, take.wait, take.started)
            .map_err(|e| e.to_string())
    }

    fn release(
        &self,
        host: &str,
        paths: &[String],
        run: Option<&str>,
        kind: Option<LeaseKind>,
    ) -> Result<Vec<String>, String> {
        self.helpers
            .release(host, paths, run, kind)
            .map_err(|e| e.to_string())
    }

    fn release_copied_back(
        &self,
        host: &str,
        paths: &[String],
        read: &[(String, String)],
    ) -> Result<Vec<String>, String> {
        self.helpers
            .release_copied_back(host, paths, read)
            .map_err(|e| e.to_string())
    }

    fn release_undone(
        &self,
        host: &str,
        paths: &[String],
        run: &str,
    ) -> Result<Vec<String>, String> {
        self.helpers
            .release_undone(host, paths, run)
            .map_err(|e| e.to_string())
    }

    fn ask(&self, host: &str, command: &str) -> Option<String> {
        self.transport
            .exec(host, command, Duration::from_secs(60))
            .ok()
            // An answer cut at the output limit tells nothing: not asked, said so.
            .filter(|o| o.exit_code == 0 && !o.truncated)
            .map(|o| o.stdout)
    }
}

/// A vm's recovery copies: the vm, the recovery host and the copy of each disk.
#[derive(Debug, Clone, Copy)]
pub struct Vm<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub paths: &'a [String],
    /// The source (`host:path`) the inventory gives each copy, in the order of `paths`: a
    /// copy whose points were read from another is not started as a point
    /// ([`choice::note_sources`]). Empty: not checked (a use that starts nothing from them).
    pub sources: &'a [String],
}

/// The primary host's driver command that lists the replication snapshots left on the vm's
/// disks (`replicate-check`); `command` is `None` when it cannot be run (a secret not set).
#[derive(Debug, Clone)]
pub struct SnapshotCheck {
    pub host: String,
    pub command: Option<String>,
}

/// A start to prepare.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub run: &'a str,
    pub step: &'a str,
    pub vm: Vm<'a>,
    pub how: Use,
    pub ask: Ask,
    /// The vm is defined from its point's definition: a point without one is no start.
    pub defines: bool,
    /// Copies may be rolled back to an older point (a failover run).
    pub may_roll_back: bool,
    /// A drill's question to the primary host, if its driver has one.
    pub snapshot_check: Option<SnapshotCheck>,
    /// The copy of a backup set (`vm.name` is the set), not a vm's disks: never rolled back
    /// by a run.
    pub backup: bool,
}

impl Request<'_> {
    /// `vm NAME` or `backup set NAME`.
    fn what(&self) -> String {
        if self.backup {
            format!("backup set {}", self.vm.name)
        } else {
            format!("vm {}", self.vm.name)
        }
    }
}

/// A start prepared: the decision, and what was done to the copies on the way (settled, read
/// again, rolled back, leased) followed by the decision's own notes.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The decision; its `notes` are moved into [`Prepared::notes`].
    pub start: Start,
    pub notes: Vec<String>,
    /// A drill's: some copy was leased to this run before this attempt (a resumed drill's
    /// earlier attempt, another drill step of the vm), whose drill copy may still read it:
    /// a start that fails does not give the leases back (the drill's cleanup does).
    pub held_before: bool,
}

/// Decides the point `req.vm` starts from and prepares its copies for it (see the module's
/// documentation). An error says why the vm must not start, and what to do.
pub fn prepare(copies: &dyn Copies, req: &Request<'_>) -> Result<Prepared, String> {
    let mut leftover = None;
    let mut ask_again = false;
    match ask_snapshots(copies, req) {
        Snapshots::None => {}
        Snapshots::Unknown(note) => leftover = Some(note),
        // A replication writing the copies now has its own snapshot there: the drill waits
        // for it (the lease), then asks again. One that has just written them merges its
        // snapshot back right after: asked again for a while before it is called left.
        Snapshots::Left(_) => match wait_snapshots(copies, req, true)? {
            Waited::Busy => ask_again = true,
            Waited::Gone(note) => leftover = note,
        },
    }
    // A replication that has just made its points holds them until it says its disks are
    // of one instant: a drill, which never rolls a copy back to an older point, waits for
    // that as it waits for one holding the copies (a failover starts from the newest good
    // point at once, and says which).
    let held = (!req.may_roll_back)
        .then(|| wait_held(copies, req))
        .flatten();
    let mut prepared = choose(copies, req)?;
    prepared.notes.extend(held);
    if ask_again && let Waited::Gone(note) = wait_snapshots(copies, req, false)? {
        leftover = note;
    }
    let own = std::mem::take(&mut prepared.start.notes);
    prepared.notes.extend(own);
    prepared.notes.extend(leftover);
    Ok(prepared)
}

/// What the primary host says of replication snapshots left on a vm's disks.
enum Snapshots {
    None,
    /// It could not be asked (a drill does not depend on the primary site: said, not refused).
    Unknown(String),
    Left(Vec<String>),
}

/// A drill asks the primary host (read only) whether a cut replication left its snapshot
/// there: the vm then writes to an overlay no replication copies, and its copy goes stale.
fn ask_snapshots(copies: &dyn Copies, req: &Request<'_>) -> Snapshots {
    let Some(check) = &req.snapshot_check else {
        return Snapshots::None;
    };
    let said = check
        .command
        .as_deref()
        .and_then(|command| copies.ask(&check.host, command));
    match said {
        Some(stdout) => {
            let left = super::snapshot::overlays(&stdout);
            if left.is_empty() {
                Snapshots::None
            } else {
                Snapshots::Left(left)
            }
        }
        None => Snapshots::Unknown(format!(
            "whether a replication snapshot was left on {} could not be asked",
            check.host
        )),
    }
}

/// How recent a held point must be for a start to wait for its replication to confirm it
/// (one older was left by a replication that did not end).
const HELD_RECENT: Duration = Duration::from_secs(600);

/// Waits, for up to [`COPY_WAIT`], while the newest point of a copy of the vm is held
/// ([`super::Point::pending`]) and was taken in the last [`HELD_RECENT`]: its replication
/// confirms it (or marks it unusable) once it has looked at every disk. A note when one is
/// still held at the end (the point chosen is then an older one).
fn wait_held(copies: &dyn Copies, req: &Request<'_>) -> Option<String> {
    let deadline = Instant::now() + COPY_WAIT;
    let recent = chrono::Duration::from_std(HELD_RECENT).unwrap_or_default();
    loop {
        let held: Vec<String> = copies
            .inspect(req.vm.host, req.vm.paths)
            .map(|states| {
                states
                    .iter()
                    .filter(|s| {
                        s.points
                            .last()
                            .is_some_and(|p| p.pending && chrono::Utc::now() - p.taken_at < recent)
                    })
                    .map(|s| s.path.clone())
                    .collect()
            })
            .unwrap_or_default();
        if held.is_empty() {
            return None;
        }
        if Instant::now() >= deadline {
            return Some(format!(
                "the newest point of {} is still held after {} s, its replication never saying its disks are of one instant: not used",
                held.join(", "),
                COPY_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Whether a replication holds the recovery copies of the vm right now.
fn busy(copies: &dyn Copies, req: &Request<'_>) -> bool {
    copies
        .inspect(req.vm.host, req.vm.paths)
        .is_ok_and(|states| states.iter().any(|s| s.busy))
}

/// How a wait for a snapshot to be merged back ended.
enum Waited {
    /// None is left (or a note: whether one is could not be asked).
    Gone(Option<String>),
    /// A replication holds the copies: it will merge its snapshot back when it ends.
    Busy,
}

/// Asks the primary again, every 2 s for up to [`SNAPSHOT_SETTLE`], until no snapshot is
/// left; while `watch_busy`, a replication found holding the copies ends the wait.
fn wait_snapshots(
    copies: &dyn Copies,
    req: &Request<'_>,
    watch_busy: bool,
) -> Result<Waited, String> {
    let deadline = Instant::now() + SNAPSHOT_SETTLE;
    loop {
        if watch_busy && busy(copies, req) {
            return Ok(Waited::Busy);
        }
        match ask_snapshots(copies, req) {
            Snapshots::None => return Ok(Waited::Gone(None)),
            Snapshots::Unknown(note) => return Ok(Waited::Gone(Some(note))),
            Snapshots::Left(left) if Instant::now() >= deadline => {
                return Err(snapshot_left(req, &left));
            }
            Snapshots::Left(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

fn snapshot_left(req: &Request<'_>, left: &[String]) -> String {
    let host = req
        .snapshot_check
        .as_ref()
        .map(|c| c.host.as_str())
        .unwrap_or("the primary host");
    format!(
        "a replication snapshot was left on {host} ({}): vm {}'s writes go to an overlay no replication copies, so its copy goes stale; merge it back with `reprise replicate --service {}`, then drill again",
        left.join("; "),
        req.vm.name,
        req.vm.name
    )
}

/// How far `host`'s clock is ahead of this machine's, as its `date` says, less what the
/// round trip cannot tell (a time it gave, brought over, is the latest it may be); `None`
/// when it cannot be read.
fn clock_of(copies: &dyn Copies, host: &str) -> Option<chrono::Duration> {
    let before = Utc::now();
    let said = copies.ask(host, "date +%s.%N")?;
    let after = Utc::now();
    let (secs, nanos) = said.trim().split_once('.')?;
    let theirs = chrono::DateTime::from_timestamp(secs.parse().ok()?, nanos.parse().ok()?)?;
    Some(theirs - after - (after - before))
}

/// Inspects, prepares and decides until a decision holds, then rolls back and leases. A
/// refusal after a copy was rolled back says so (the points it dropped are gone from the
/// copy: a later try starts from its newest point, which no longer says it was rolled back
/// to, and the run's report takes what it lost from what was said).
fn choose(copies: &dyn Copies, req: &Request<'_>) -> Result<Prepared, String> {
    let mut notes = Vec::new();
    choose_noting(copies, req, &mut notes).map_err(|e| with_rolled_back(e, &notes))
}

/// How a copy rolled back to an older point is said.
const ROLLED_BACK: &str = " rolled back to point ";

/// The error `e` of a start that stopped after it rolled copies back (said in `notes`), with
/// what was rolled back.
pub fn with_rolled_back(e: String, notes: &[String]) -> String {
    let rolled: Vec<&str> = notes
        .iter()
        .filter(|n| n.contains(ROLLED_BACK))
        .map(String::as_str)
        .collect();
    match rolled.is_empty() {
        true => e,
        false => format!("{e}; done before that: {}", rolled.join("; ")),
    }
}

/// [`choose`], what it did noted in `notes` as it goes.
fn choose_noting(
    copies: &dyn Copies,
    req: &Request<'_>,
    notes: &mut Vec<String>,
) -> Result<Prepared, String> {
    let (host, paths) = (req.vm.host, req.vm.paths);
    // Points found impossible to rebuild (or without their definition) on the way: no
    // longer candidates.
    let mut unusable: Vec<(usize, String)> = Vec::new();
    let mut done: Vec<Prep> = Vec::new();
    // Points read again by hash in this choice, found whole.
    let mut whole: Vec<(usize, String)> = Vec::new();
    // A copy started as it is (nothing proves it) is judged against a time asked, now or by a
    // resume later (its start journals until when it was written), by its file's time, which
    // the recovery host's clock gave: brought to this machine's clock, and later by what
    // reading it cannot tell, or none when it cannot be read.
    let clock = req.ask.accept_unverified.then(|| clock_of(copies, host));
    let times_asked =
        matches!(req.ask.want, Some(choice::Want::Before(_))) || req.ask.within.is_some();
    for _ in 0..(4 + 4 * paths.len()) {
        let mut states = copies
            .inspect(host, paths)
            .map_err(|e| format!("cannot read the copies of {} on {host}: {e}", req.what()))?;
        choice::note_sources(&mut states, req.vm.sources);
        if let Some(clock) = &clock {
            for s in &mut states {
                s.mtime = match clock {
                    Some(ahead) => s.mtime.map(|t| t - *ahead),
                    // Unknown: judged as the latest there is against a time asked now; else
                    // its name and time stay the host's, and until when it was written is
                    // unknown (below).
                    None if times_asked => s.mtime.map(|_| chrono::DateTime::<Utc>::MAX_UTC),
                    None => s.mtime,
                };
            }
        }
        for (i, id) in &unusable {
            if let Some(p) = states[*i].points.iter_mut().find(|p| &p.id == id) {
                p.verified = Verified::Bad;
            }
        }
        let mut start = match choice::decide(&states, req.how, &req.ask) {
            Decision::Refuse(why) => return Err(why),
            Decision::Prepare(preps) => {
                for prep in preps {
                    if done.contains(&prep) {
                        return Err(match &prep {
                            Prep::Settle(i) => format!(
                                "{}: still not settled after it was settled once; look at it before starting from it",
                                states[*i].path
                            ),
                            Prep::Verify(i, id) => format!(
                                "{}: changed again behind point {id} after it was read again by hash; something writes into the copy (a replication, or a process on {}): stop it, then start the run again",
                                states[*i].path, req.vm.host
                            ),
                        });
                    }
                    let (note, good) = prepare_one(copies, req, &states, &prep)?;
                    notes.extend(note);
                    if let (Prep::Verify(i, id), true) = (&prep, good) {
                        whole.push((*i, id.clone()));
                    }
                    done.push(prep);
                }
                continue;
            }
            Decision::Start(s) => s,
        };
        // A copy started as it is whose host's clock could not be read: until when it was
        // written is not known on this machine's clock.
        if matches!(clock, Some(None)) && start.points.iter().any(Option::is_none) {
            start.written_until = chrono::DateTime::<Utc>::MAX_UTC;
        }
        if let Some(unusable_point) = without_definition(req, &states, &start, notes)? {
            unusable.push(unusable_point);
            continue;
        }
        if !start.roll_back.is_empty() && req.backup {
            let to: Vec<&str> = start.roll_back.iter().map(|(_, p)| p.as_str()).collect();
            return Err(format!(
                "{} would need its copy rolled back to point {}, which a run never does to a backup set: replicate it for a new verified point (`reprise replicate {}`), or restore that point by hand",
                req.what(),
                to.join(", "),
                req.vm.name
            ));
        }
        if !resumed(req, &states)
            && let Some(unusable_point) = reread(copies, req, &start, &mut whole, notes)?
        {
            unusable.push(unusable_point);
            continue;
        }
        if !start.roll_back.is_empty() && !req.may_roll_back {
            return Err(format!(
                "vm {} would need its copies rolled back to an older point, which only a failover does",
                req.vm.name
            ));
        }
        if let Some(unusable_point) = roll_back(copies, req, &start, notes)? {
            unusable.push(unusable_point);
            continue;
        }
        lease(copies, req, &states, &start, notes)?;
        // A backup set's copy holds its files only: what it left out is said where it is
        // used, with what to do.
        for (state, point) in states.iter().zip(&start.points) {
            // A copy used as it is: what its newest point left out.
            let left = match point {
                Some(id) => state.points.iter().find(|p| &p.id == id),
                None => state.points.last(),
            }
            .and_then(|p| super::remote::left_out_said(&p.left_out));
            if let Some(left) = left {
                notes.push(format!("{}: {left}", state.path));
            }
        }
        let held_before =
            req.how == Use::Drill && (0..paths.len()).any(|i| held_by_run(req, &states, i));
        return Ok(Prepared {
            start,
            notes: std::mem::take(notes),
            held_before,
        });
    }
    Err(format!(
        "the copies of {} on {host} kept changing while the run chose its point; start the run again",
        req.what()
    ))
}

/// Does one thing a decision asks before it can be made: what to note, and whether a point
/// read again was found whole.
fn prepare_one(
    copies: &dyn Copies,
    req: &Request<'_>,
    states: &[CopyState],
    prep: &Prep,
) -> Result<(Option<String>, bool), String> {
    let (host, paths) = (req.vm.host, req.vm.paths);
    let name = |i: usize| choice::name(&paths[i]).to_string();
    match prep {
        Prep::Settle(i) => {
            let note = copies
                .settle(host, &paths[*i], COPY_WAIT)
                .map_err(|e| format!("cannot settle {} before starting from it: {e}", paths[*i]))?;
            Ok((note.map(|n| format!("{}: {n}", name(*i))), false))
        }
        Prep::Verify(i, id) => {
            let why = states[*i].changed.clone().unwrap_or_default();
            let good = copies.verify(host, &paths[*i], id).map_err(|e| {
                format!(
                    "cannot read {} again before starting from it: {e}",
                    paths[*i]
                )
            })?;
            let note = format!(
                "{}: {why}; read again by hash: point {id} {}",
                name(*i),
                if good {
                    "is whole, the copy still is that point"
                } else {
                    "is DAMAGED (marked bad)"
                }
            );
            Ok((Some(note), good))
        }
    }
}

/// Whether this run already started the vm on these copies (a resumed failover): they hold
/// what it wrote since, no point.
fn resumed(req: &Request<'_>, states: &[CopyState]) -> bool {
    req.how == Use::Failover
        && !states.is_empty()
        && states.iter().all(|d| {
            d.leases
                .iter()
                .any(|l| l.kind == LeaseKind::Live && l.run == req.run)
        })
}

/// Reads again by hash, on the recovery host, the point each disk starts from, unless this
/// choice read it already or a roll-back rebuilds it (a roll-back checks the hash of what it
/// writes): a copy whose bytes no longer are its point's (a disk error, a write that kept the
/// file's time and size) is never started as that point. The first point found damaged is
/// returned (it is marked bad: the decision is made again without it).
fn reread(
    copies: &dyn Copies,
    req: &Request<'_>,
    start: &Start,
    whole: &mut Vec<(usize, String)>,
    notes: &mut Vec<String>,
) -> Result<Option<(usize, String)>, String> {
    let (host, paths) = (req.vm.host, req.vm.paths);
    for (i, point) in start.points.iter().enumerate() {
        let Some(id) = point else { continue };
        let rebuilt = start.roll_back.iter().any(|(j, p)| *j == i && p == id);
        if rebuilt || whole.iter().any(|(j, p)| *j == i && p == id) {
            continue;
        }
        let good = copies.verify(host, &paths[i], id).map_err(|e| {
            format!(
                "cannot read {} again by hash before starting from it: {e}; check the recovery host {host} and its disk, then `reprise verify {}` (or `reprise replicate` for a new point)",
                paths[i], req.vm.name
            )
        })?;
        let name = choice::name(&paths[i]);
        if !good {
            notes.push(format!(
                "{name}: point {id}, read again by hash before the start, is DAMAGED: the copy no longer holds what was replicated (marked bad)"
            ));
            return Ok(Some((i, id.clone())));
        }
        notes.push(format!(
            "{name}: point {id} read again by hash before the start: whole"
        ));
        whole.push((i, id.clone()));
    }
    Ok(None)
}

/// A point whose definition is missing or damaged is no point to start the vm from: a
/// failover that named no point tries an older one (the point returned, now unusable), any
/// other start stops. A copy started as it is (named by the operator) brings none: the
/// runner starts the vm as the host defines it (a failover) or defines its copy from what
/// the primary holds now (a drill).
fn without_definition(
    req: &Request<'_>,
    states: &[CopyState],
    start: &Start,
    notes: &mut Vec<String>,
) -> Result<Option<(usize, String)>, String> {
    if !req.defines {
        return Ok(None);
    }
    // The definition is kept beside the copy of the disk that was the vm's first when the
    // point was made: any disk's copy may hold it (the inventory may list them in another
    // order since).
    let problem = start
        .points
        .first()
        .cloned()
        .flatten()
        .and_then(|id| definition_problem(states, &id).map(|p| (id, p)));
    let Some((id, why)) = problem else {
        return Ok(None);
    };
    if req.how == Use::Failover && req.ask.want.is_none() {
        notes.push(format!("{why}: an older point is tried"));
        return Ok(Some((0, id)));
    }
    Err(format!(
        "vm {}: {why}; replicate it again (each replication captures the definition)",
        req.vm.name
    ))
}

/// Why no disk's copy holds a definition of point `id` a vm can be defined from (`None`
/// when one does): the problem of a copy that records one for it (damaged, missing) before
/// that of a copy that records none.
pub fn definition_problem(states: &[CopyState], id: &str) -> Option<String> {
    let mut problems = Vec::new();
    for s in states {
        let recorded = s
            .points
            .iter()
            .any(|p| p.id == id && p.definition.is_some());
        match s.definition_problem(id) {
            None if s.points.iter().any(|p| p.id == id) => return None,
            None => {}
            Some(why) => problems.push((recorded, why)),
        }
    }
    problems.sort_by_key(|(recorded, _)| !recorded);
    problems.into_iter().next().map(|(_, why)| why)
}

/// Rolls each disk back to its point (a failover): a point that cannot be rebuilt, when the
/// operator named none, is returned (an older one is then tried).
fn roll_back(
    copies: &dyn Copies,
    req: &Request<'_>,
    start: &Start,
    notes: &mut Vec<String>,
) -> Result<Option<(usize, String)>, String> {
    let (host, paths) = (req.vm.host, req.vm.paths);
    let name = |i: usize| choice::name(&paths[i]).to_string();
    for (i, id) in &start.roll_back {
        match copies.roll_back(host, &paths[*i], id) {
            Ok(r) => notes.push(format!(
                "{}{ROLLED_BACK}{} (newer points dropped: {})",
                name(*i),
                r.point,
                r.dropped.join(", ")
            )),
            Err(e) if req.ask.want.is_none() => {
                notes.push(format!(
                    "{}: point {id} could not be rebuilt ({e}): an older one is tried",
                    name(*i)
                ));
                return Ok(Some((*i, id.clone())));
            }
            Err(e) => return Err(format!("cannot roll {} back to point {id}: {e}", name(*i))),
        }
    }
    Ok(None)
}

/// The lease kind a start takes.
fn kind(how: Use) -> LeaseKind {
    match how {
        Use::Drill => LeaseKind::Drill,
        Use::Failover => LeaseKind::Live,
    }
}

/// Leases every copy for the run at the point chosen (a replication never writes into them
/// while they are used, and the lease checks they still are that point); on a refusal the
/// copies leased are given back.
fn lease(
    copies: &dyn Copies,
    req: &Request<'_>,
    states: &[CopyState],
    start: &Start,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let (host, paths, run) = (req.vm.host, req.vm.paths, req.run);
    let kind = kind(req.how);
    // A resumed failover whose vm already runs on these copies holds them already.
    if resumed(req, states) {
        return Ok(());
    }
    let mut leased = Vec::new();
    // Gives back what this attempt leased: a drill copy of this run's earlier attempt may
    // still read a copy leased before.
    let give_back = |leased: &[String]| {
        let mine: Vec<String> = leased
            .iter()
            .enumerate()
            .filter(|(j, _)| !(req.how == Use::Drill && held_by_run(req, states, *j)))
            .map(|(_, p)| p.clone())
            .collect();
        if !mine.is_empty() {
            let _ = copies.release(host, &mine, Some(run), Some(kind));
        }
    };
    for (i, path) in paths.iter().enumerate() {
        let lease = Lease {
            kind,
            run: run.to_string(),
            vm: req.vm.name.to_string(),
            step: req.step.to_string(),
            machine: super::meta::machine(),
            pid: std::process::id(),
            at: Utc::now(),
            point: start.points[i].clone(),
            taken_at: Some(start.taken_at),
            written_until: Some(start.written_until),
            verified: start.verified,
        };
        let take = Take {
            expect: start.points[i].as_deref(),
            wait: COPY_WAIT,
            started: false,
        };
        match copies.take_lease(host, path, &lease, take) {
            Ok(note) => {
                notes.extend(note.map(|n| format!("{}: {n}", choice::name(path))));
                leased.push(path.clone());
            }
            Err(e) => {
                give_back(&leased);
                return Err(format!("cannot take {} for this run: {e}", path));
            }
        }
    }
    // A copy taken as it is (no point vouches for it) must still be what the choice judged
    // (its time against a time asked): leased, no replication writes into it any more, so
    // it is looked at once more now.
    let as_is: Vec<usize> = (0..paths.len())
        .filter(|i| start.points[*i].is_none() && states.get(*i).is_some_and(|s| s.stamp.is_some()))
        .collect();
    if !as_is.is_empty() {
        let looked: Vec<String> = as_is.iter().map(|i| paths[*i].clone()).collect();
        let changed = match copies.inspect(host, &looked) {
            Ok(now) => as_is.iter().zip(&now).find_map(|(i, n)| {
                (n.stamp != states[*i].stamp).then(|| {
                    format!(
                        "{} changed while the run chose it as it is (it was `{}`, it is `{}`): a replication, or a write on {host}, since; start the run again",
                        paths[*i],
                        states[*i].stamp.as_deref().unwrap_or(""),
                        n.stamp.as_deref().unwrap_or("unreadable")
                    )
                })
            }),
            Err(e) => Some(format!(
                "the copies taken as they are cannot be looked at again on {host} ({e}): start the run again"
            )),
        };
        if let Some(why) = changed {
            give_back(&leased);
            return Err(why);
        }
    }
    Ok(())
}

/// Whether copy `i` was leased to this run, of the kind its start takes, before this attempt.
fn held_by_run(req: &Request<'_>, states: &[CopyState], i: usize) -> bool {
    states.get(i).is_some_and(|s| {
        s.leases
            .iter()
            .any(|l| l.run == req.run && l.kind == kind(req.how))
    })
}

/// Gives back the copies a start leased when the vm was not started after all.
pub fn give_back(copies: &dyn Copies, vm: Vm<'_>, run: &str, how: Use) {
    let _ = copies.release(vm.host, vm.paths, Some(run), Some(kind(how)));
}

/// Before a failback starts a vm on the primary: when the run copies nothing of it back
/// (`replicated_back` false) while the vm ran on its recovery copies since a failover (a live
/// lease holds them), starting it would bring back its disks as they were before the
/// failover, and the failback would then release the copies that hold what it wrote since.
pub fn before_failback(
    copies: &dyn Copies,
    vm: Vm<'_>,
    replicated_back: bool,
) -> Result<(), String> {
    if replicated_back {
        return Ok(());
    }
    let states = copies.inspect(vm.host, vm.paths).map_err(|e| {
        format!(
            "cannot read the recovery copies of vm {} on {}, to know whether it ran on them since a failover: {e}",
            vm.name, vm.host
        )
    })?;
    // A copy not there (its storage not mounted, say) cannot say that no failover's vm ran
    // on it.
    if let Some(s) = states.iter().find(|s| !s.exists) {
        let why = match &s.unreadable {
            Some(e) => format!("cannot be looked at ({e})"),
            None => "is not there (its storage not mounted?)".to_string(),
        };
        return Err(format!(
            "vm {}'s recovery copy {} on {} {why}: whether it ran on its copies since a failover cannot be told, and this failback copies none of them back; make the copies' storage available on {} and run again; if they are lost for good, nothing of it runs there to fail back: a restore starts it from its disks on the primary",
            vm.name, s.path, vm.host, vm.host
        ));
    }
    let ran = states.iter().find_map(|s| {
        s.leases
            .iter()
            .find(|l| l.kind == LeaseKind::Live)
            .map(|l| (choice::name(&s.path).to_string(), l.describe()))
    });
    let unread: Vec<String> = states.iter().filter_map(CopyState::unread_leases).collect();
    // Written since its newest point outside any failover (a vm started on it by hand): what
    // was written there is in no point, and the failback would let it go.
    let written = states
        .iter()
        .find_map(|s| Some((s.path.clone(), s.written_outside()?.to_string())));
    match ran {
        None if unread.is_empty() => match written {
            None => Ok(()),
            Some((path, why)) => Err(format!(
                "vm {}'s recovery copy {path} on {} was written since its newest point, outside any failover ({why}), and this failback copies none of it back: started on the primary, it would run on its disks as they were, and the failback would let go of what was written there; find out what wrote it (a vm started on it by hand?); add a `replicate` step of vm {} before its start in the failback runbook to bring it back, or, if it is not to be kept, `reprise release {}` first",
                vm.name, vm.host, vm.name, vm.name
            )),
        },
        // A lease that cannot be read may be a failover's.
        None => Err(format!(
            "the leases of vm {}'s recovery copies on {} cannot be read: {}; a failover's lease may be among them, and this failback copies none of them back: started on the primary, it would run on its disks as they were before the failover and lose what it wrote since; make them readable on {} and run again, or add a `replicate` step of vm {} before its start in the failback runbook",
            vm.name,
            vm.host,
            unread.join("; "),
            vm.host,
            vm.name
        )),
        Some((disk, who)) => Err(format!(
            "vm {} ran on its recovery copies on {} since a failover ({disk} is the disk of {who}), and this failback copies none of them back: started on the primary, it would run on its disks as they were before the failover and lose what it wrote since; add a `replicate` step of vm {} before its start in the failback runbook, or, if what it wrote there is not to be kept, release its copies first (`reprise release {}`)",
            vm.name, vm.host, vm.name, vm.name
        )),
    }
}

/// Before a vm starts on the site a copy of this run moved it to (a failback's copy back, a
/// planned failover's final sync): what the copy read on `host` (`recorded`: each disk and
/// its stamp before, step `step`) must still be so. A disk written since (the vm started
/// there again while the run waited) holds what the copy does not: started, the vm would run
/// without it, and that write would be left behind (a failback then releases the copies that
/// hold it).
/// `if_lost` says what to do when `host` cannot be asked.
pub fn copied_still(
    copies: &dyn Copies,
    vm: &str,
    host: &str,
    step: &str,
    recorded: &[(String, String)],
    if_lost: &str,
) -> Result<(), String> {
    let changed = written_since(copies, host, recorded).map_err(|e| {
        format!(
            "cannot read the disks of vm {vm} on {host}, to know whether they were written since step {step} copied them: {e}; resume once {host} answers, or, {if_lost}"
        )
    })?;
    let Some(changed) = changed else {
        return Ok(());
    };
    Err(format!(
        "the disks of vm {vm} on {host} were written after step {step} copied them: {changed}; vm {vm} ran there again, and what it wrote is not in the copy it would start from: started, it would run without it; the copy must be made again: resume this run (`reprise resume`), which makes it again once vm {vm} is stopped on {host}"
    ))
}

/// Which of the disks on `host` whose stamps a copy `recorded` before it read them are no
/// longer so (`None`: every one is): each with its stamp then and now. `Err`: they cannot
/// be read.
pub fn written_since(
    copies: &dyn Copies,
    host: &str,
    recorded: &[(String, String)],
) -> Result<Option<String>, String> {
    let paths: Vec<String> = recorded.iter().map(|(p, _)| p.clone()).collect();
    let states = copies.inspect(host, &paths)?;
    let changed: Vec<String> = recorded
        .iter()
        .zip(&states)
        .filter(|((_, then), now)| now.stamp.as_deref() != Some(then.as_str()))
        .map(|((path, then), now)| {
            format!(
                "{path} (it was `{then}`, it is `{}`)",
                now.stamp.as_deref().unwrap_or("missing")
            )
        })
        .collect();
    if changed.is_empty() && states.len() == recorded.len() {
        return Ok(None);
    }
    Ok(Some(if changed.is_empty() {
        format!(
            "asked about {}, told about {}",
            recorded.len(),
            states.len()
        )
    } else {
        changed.join(", ")
    }))
}

/// What a step that used a vm's recovery copies did with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    /// The vm started on its copies (a failover).
    Started,
    /// A failback's start on the primary undone: the vm runs on its copies again, and they
    /// hold its data as of `since` (when the failback began, before it stopped the vm
    /// there): what it wrote on the primary after that is not in them, and a later failback
    /// must see it written after its lease.
    StartedAgain { since: DateTime<Utc> },
    /// A failover's start that failed: the vm did not start on them.
    NotStarted,
    /// A failover's start undone by a roll-back: the vm ran on them and was stopped,
    /// production runs on the primary again.
    Undone,
    /// A drill's cleanup stopped the vm on its overlay.
    DrillStopped,
    /// A failback started the vm on the primary again.
    FailedBack,
}

/// After a vm step that used the recovery copies: a vm now running on them ends their point
/// history (and keeps them from any replication until it fails back); a drill's cleanup
/// releases its lease; a failback releases the copies the vm ran on; a start that did not
/// start gives its lease back, so that the run can start again from the same point. A note
/// for the step's message, when something changed.
pub fn after(
    copies: &dyn Copies,
    vm: Vm<'_>,
    run: &str,
    step: &str,
    used: Used,
) -> Result<Option<String>, String> {
    let (host, paths, name) = (vm.host, vm.paths, vm.name);
    match used {
        Used::Started | Used::StartedAgain { .. } => {
            let since = match used {
                Used::StartedAgain { since } => Some(since),
                _ => None,
            };
            let (mut notes, mut unread) = (Vec::new(), Vec::new());
            for path in paths {
                let lease = Lease {
                    kind: LeaseKind::Live,
                    run: run.to_string(),
                    vm: name.to_string(),
                    step: step.to_string(),
                    machine: super::meta::machine(),
                    pid: std::process::id(),
                    at: Utc::now(),
                    point: None,
                    taken_at: None,
                    written_until: None,
                    verified: false,
                };
                // The lease of the start is kept as it was (its point's time is what a
                // failback judges the primary's disks by); only the history ends. One that
                // cannot be read now is left as it is, never replaced by one of now.
                // The other disks are done all the same.
                let state = match copies.inspect(host, std::slice::from_ref(path)) {
                    Ok(state) => state,
                    Err(e) => {
                        unread.push(format!(
                            "{}: its lease cannot be read to end its point history ({e}); the lease the start took is left as it is",
                            choice::name(path)
                        ));
                        continue;
                    }
                };
                let held = state
                    .into_iter()
                    .next()
                    .and_then(|s| {
                        s.leases
                            .into_iter()
                            .find(|l| l.kind == LeaseKind::Live && l.run == run)
                    })
                    .unwrap_or(lease);
                // Its data is of no later than the failback's beginning.
                let held = Lease {
                    taken_at: match (held.taken_at, since) {
                        (Some(t), Some(s)) => Some(t.min(s)),
                        (t, s) => t.or(s),
                    },
                    ..held
                };
                let take = Take {
                    expect: None,
                    wait: COPY_WAIT,
                    started: true,
                };
                notes.extend(copies.take_lease(host, path, &held, take)?);
            }
            if !unread.is_empty() {
                return Err(unread.join("; "));
            }
            Ok((!notes.is_empty()).then(|| {
                format!(
                    "vm {name} runs on its recovery copies: their point history ended, and no replication writes into them until a failback releases them"
                )
            }))
        }
        // Nothing ran on them: released as they are, what was there before kept as it was
        // (a copy written by hand, refused by the start, stays refused).
        Used::NotStarted => copies
            .release(host, paths, Some(run), Some(LeaseKind::Live))
            .map(|_| None),
        // What the vm wrote there while it ran is given up for the primary's data: let go.
        Used::Undone => copies.release_undone(host, paths, run).map(|_| None),
        Used::DrillStopped => copies
            .release(host, paths, Some(run), Some(LeaseKind::Drill))
            .map(|_| None),
        Used::FailedBack => after_failback(copies, vm, &[]),
    }
}

/// A failback started the vm on the primary: its recovery copies are let go, each only while
/// it is as the copy back read it (`read`: path and stamp), else refused and left leased.
pub fn after_failback(
    copies: &dyn Copies,
    vm: Vm<'_>,
    read: &[(String, String)],
) -> Result<Option<String>, String> {
    let (host, paths, name) = (vm.host, vm.paths, vm.name);
    copies.release_copied_back(host, paths, read).map(|r| {
        (!r.is_empty()).then(|| {
            format!("the recovery copies of vm {name} were released: replication may write into them again")
        })
    })
}

#[cfg(test)]
mod tests {
    /// A drill's question whose answer was cut at the output limit (it may have lost the
    /// lines naming a snapshot left) is not asked, and said so, never "none left".
    #[test]
    fn an_answer_cut_at_the_limit_is_no_answer() {
        let t = crate::replica::snapshot::tests::Cut;
        assert_eq!(
            super::Copies::ask(&super::Remote::new(&t), "hv-main", "check"),
            None
        );
    }

    use super::*;
    use crate::replica::meta::PointsSource;
    use crate::replica::store::Point;
    use std::sync::Mutex;

    fn point(id: &str, hour: u32, verified: &str) -> Point {
        serde_json::from_str(&format!(
            r#"{{"id":"{id}","taken_at":"2026-11-28T0{hour}:00:00Z","source":"s","size":1,"blake3":"{}","verified":"{verified}","checked_at":null,"received_bytes":0,"duration_ms":0}}"#,
            "00".repeat(32)
        ))
        .unwrap()
    }

    fn disk(name: &str, points: &[Point]) -> CopyState {
        CopyState {
            path: format!("/r/{name}"),
            exists: true,
            size: 1,
            managed: true,
            points: points.to_vec(),
            points_from: Some(PointsSource::Current),
            ..CopyState::default()
        }
    }

    /// Copies held in memory: what each call did is recorded, some calls fail as told.
    #[derive(Default)]
    struct Fake {
        states: Mutex<Vec<CopyState>>,
        calls: Mutex<Vec<String>>,
        /// Points that cannot be rebuilt.
        broken: Vec<String>,
        /// Copies whose lease is refused.
        held: Vec<String>,
        /// (copy, point) whose bytes no longer give its hash.
        damaged: Vec<(String, String)>,
        /// How far the host's clock is ahead (`date`); `None`: it cannot be read.
        clock_ahead: Option<chrono::Duration>,
        /// The leases taken, as given.
        leased: Mutex<Vec<Lease>>,
        /// A copy whose `inspect` fails, and why (a host that does not answer).
        unreadable: Option<(String, String)>,
        /// Copies a replication wrote just before their lease was taken (it waited for it).
        written_before_lease: Vec<String>,
    }

    impl Fake {
        fn with(states: Vec<CopyState>) -> Fake {
            Fake {
                states: Mutex::new(states),
                ..Fake::default()
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        fn call(&self, what: String) {
            self.calls.lock().unwrap().push(what);
        }
    }

    impl Copies for Fake {
        fn inspect(&self, _host: &str, paths: &[String]) -> Result<Vec<CopyState>, String> {
            if let Some((path, why)) = &self.unreadable
                && paths.contains(path)
            {
                return Err(why.clone());
            }
            let states = self.states.lock().unwrap();
            Ok(paths
                .iter()
                .map(|p| states.iter().find(|s| &s.path == p).unwrap().clone())
                .collect())
        }

        fn settle(
            &self,
            _host: &str,
            path: &str,
            _wait: Duration,
        ) -> Result<Option<String>, String> {
            self.call(format!("settle {path}"));
            let mut states = self.states.lock().unwrap();
            let s = states.iter_mut().find(|s| s.path == path).unwrap();
            Ok(s.unsettled
                .take()
                .map(|_| "the cut update was completed".to_string()))
        }

        fn verify(&self, _host: &str, path: &str, point: &str) -> Result<bool, String> {
            self.call(format!("verify {path} {point}"));
            if !self.damaged.iter().any(|(c, p)| c == path && p == point) {
                return Ok(true);
            }
            // As the store does: the point is marked bad.
            let mut states = self.states.lock().unwrap();
            let s = states.iter_mut().find(|s| s.path == path).unwrap();
            for p in s.points.iter_mut().filter(|p| p.id == point) {
                p.verified = Verified::Bad;
            }
            Ok(false)
        }

        fn roll_back(&self, _host: &str, path: &str, point: &str) -> Result<RolledBack, String> {
            self.call(format!("roll back {path} {point}"));
            if self.broken.iter().any(|b| b == point) {
                return Err("a delta is missing".into());
            }
            Ok(RolledBack {
                point: point.to_string(),
                dropped: vec!["newer".into()],
            })
        }

        fn take_lease(
            &self,
            _host: &str,
            path: &str,
            lease: &Lease,
            take: Take<'_>,
        ) -> Result<Option<String>, String> {
            self.call(format!("lease {path} {:?} {:?}", lease.kind, take.expect));
            self.leased.lock().unwrap().push(lease.clone());
            if self.written_before_lease.iter().any(|w| w == path) {
                let mut states = self.states.lock().unwrap();
                let s = states.iter_mut().find(|s| s.path == path).unwrap();
                s.stamp = Some("written since".into());
            }
            if self.held.iter().any(|h| h == path) {
                return Err("a replication holds it".into());
            }
            Ok(None)
        }

        fn release(
            &self,
            _host: &str,
            paths: &[String],
            _run: Option<&str>,
            kind: Option<LeaseKind>,
        ) -> Result<Vec<String>, String> {
            self.call(format!("release {paths:?} {kind:?}"));
            Ok(paths.to_vec())
        }

        fn ask(&self, host: &str, command: &str) -> Option<String> {
            self.call(format!("ask {host} {command}"));
            if command == "date +%s.%N" {
                let now = Utc::now() + self.clock_ahead?;
                return Some(format!(
                    "{}.{:09}\n",
                    now.timestamp(),
                    now.timestamp_subsec_nanos()
                ));
            }
            Some(String::new())
        }
    }

    fn request<'a>(paths: &'a [String], how: Use) -> Request<'a> {
        Request {
            run: "R1",
            step: "db/start",
            vm: Vm {
                name: "db",
                host: "pra",
                paths,
                sources: &[],
            },
            how,
            ask: Ask::default(),
            defines: false,
            may_roll_back: how == Use::Failover,
            backup: false,
            snapshot_check: None,
        }
    }

    #[test]
    fn a_point_that_cannot_be_rebuilt_gives_way_to_an_older_one_then_every_disk_is_leased() {
        let points = [
            point("P1", 1, "yes"),
            point("P2", 2, "yes"),
            point("P3", 3, "bad"),
        ];
        let fake = Fake {
            broken: vec!["P2".into()],
            ..Fake::with(vec![disk("sys", &points), disk("data", &points)])
        };
        let paths = ["/r/sys".to_string(), "/r/data".to_string()];
        let prepared = prepare(&fake, &request(&paths, Use::Failover)).unwrap();
        assert_eq!(prepared.start.point, "P1");
        assert!(prepared.start.verified);
        assert!(
            prepared.notes.iter().any(|n| n.contains(
                "point P2 could not be rebuilt (a delta is missing): an older one is tried"
            )),
            "{:?}",
            prepared.notes
        );
        assert_eq!(
            fake.calls(),
            [
                "roll back /r/sys P2",
                "roll back /r/sys P1",
                "roll back /r/data P1",
                "lease /r/sys Live Some(\"P1\")",
                "lease /r/data Live Some(\"P1\")",
            ]
        );
    }

    /// A backup set's copy that left out empty folders or links (its point says which):
    /// the start that relies on it says so, with what to do; one that left out nothing says
    /// nothing of it.
    #[test]
    fn a_backup_set_copy_that_left_out_folders_says_so_where_it_is_used() {
        let mut p = point("P1", 1, "yes");
        p.left_out = vec!["the folder pg/pg_tblspc/ (no file in it)".into()];
        let fake = Fake::with(vec![disk("dumps", &[p])]);
        let paths = ["/r/dumps".to_string()];
        let mut req = request(&paths, Use::Drill);
        req.backup = true;
        let prepared = prepare(&fake, &req).unwrap();
        assert!(
            prepared.notes.iter().any(|n| n.contains("/r/dumps: ")
                && n.contains(crate::replica::remote::LEFT_OUT)
                && n.contains("pg/pg_tblspc/")),
            "{:?}",
            prepared.notes
        );
        let fake = Fake::with(vec![disk("dumps", &[point("P1", 1, "yes")])]);
        let prepared = prepare(&fake, &req).unwrap();
        assert!(
            prepared
                .notes
                .iter()
                .all(|n| !n.contains(crate::replica::remote::LEFT_OUT)),
            "{:?}",
            prepared.notes
        );
    }

    /// `p` with the definition `def` recorded.
    fn with_definition(mut p: Point, def: &str) -> Point {
        p.definition = Some(def.repeat(64));
        p
    }

    #[test]
    fn a_point_s_definition_is_found_beside_whichever_disk_was_first_when_it_was_made() {
        // The point was made when `data` was the vm's first disk: its definition is kept
        // beside the copy of `data`; the inventory now lists `sys` first.
        let sys = [point("P1", 1, "yes")];
        let data = [with_definition(point("P1", 1, "yes"), "a")];
        let fake = Fake::with(vec![disk("sys", &sys), disk("data", &data)]);
        let paths = ["/r/sys".to_string(), "/r/data".to_string()];
        let mut req = request(&paths, Use::Failover);
        req.defines = true;
        let prepared = prepare(&fake, &req).unwrap();
        assert_eq!(prepared.start.point, "P1");
        assert!(
            prepared.notes.iter().all(|n| !n.contains("definition")),
            "{:?}",
            prepared.notes
        );
        // A definition found damaged beside the disk that holds it is what is said, not that
        // the other disk holds none.
        let mut damaged = disk("data", &data);
        damaged.bad_definitions = vec![("P1".into(), "is damaged (BLAKE3 differs)".into())];
        let fake = Fake::with(vec![disk("sys", &sys), damaged]);
        let mut req = request(&paths, Use::Drill);
        req.defines = true;
        let err = prepare(&fake, &req).unwrap_err();
        assert!(
            err.contains("the definition of point P1 is damaged"),
            "{err}"
        );
        // No disk holds one: said as before.
        let fake = Fake::with(vec![disk("sys", &sys), disk("data", &sys)]);
        let err = prepare(&fake, &req).unwrap_err();
        assert!(
            err.contains("point P1 holds no definition of the vm"),
            "{err}"
        );
    }

    /// A failover's start that rolled copies back and then stopped (a lease refused, a disk
    /// that could not be rolled back to the point asked) says what it rolled back, with the
    /// points dropped: gone from the copies, a later try no longer sees them.
    #[test]
    fn a_start_that_stops_after_it_rolled_copies_back_says_so() {
        let points = [point("P1", 1, "yes"), point("P2", 2, "bad")];
        let fake = Fake {
            held: vec!["/r/data".into()],
            ..Fake::with(vec![disk("sys", &points), disk("data", &points)])
        };
        let paths = ["/r/sys".to_string(), "/r/data".to_string()];
        let why = prepare(&fake, &request(&paths, Use::Failover)).unwrap_err();
        assert!(
            why.starts_with("cannot take /r/data for this run: a replication holds it")
                && why.contains(
                    "done before that: sys rolled back to point P1 (newer points dropped: newer)"
                )
                && why.contains("data rolled back to point P1"),
            "{why}"
        );
        // The point asked for, its second disk not rebuilt: the first one's roll-back is said.
        let newer = [
            point("P1", 1, "yes"),
            point("P2", 2, "yes"),
            point("P3", 3, "yes"),
        ];
        let fake = Fake {
            broken: vec!["P1".into()],
            ..Fake::with(vec![disk("sys", &newer), disk("data", &newer)])
        };
        let mut req = request(&paths, Use::Failover);
        req.ask.want = Some(choice::Want::Id("P1".into()));
        let calls_before = fake.calls().len();
        let why = prepare(&fake, &req).unwrap_err();
        assert!(fake.calls().len() > calls_before);
        assert!(why.contains("cannot roll sys back to point P1"), "{why}");
        // Nothing was rolled back before it: nothing more said.
        assert!(!why.contains("done before that"), "{why}");
    }

    #[test]
    fn a_drill_refuses_a_roll_back_and_a_lease_refused_gives_back_what_was_leased() {
        let newest_bad = [point("P1", 1, "yes"), point("P2", 2, "bad")];
        let fake = Fake::with(vec![disk("sys", &newest_bad)]);
        let paths = ["/r/sys".to_string()];
        let mut req = request(&paths, Use::Failover);
        req.may_roll_back = false;
        let why = prepare(&fake, &req).unwrap_err();
        assert!(why.contains("which only a failover does"), "{why}");
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());

        let good = [point("P1", 1, "yes")];
        let fake = Fake {
            held: vec!["/r/data".into()],
            ..Fake::with(vec![disk("sys", &good), disk("data", &good)])
        };
        let paths = ["/r/sys".to_string(), "/r/data".to_string()];
        let why = prepare(&fake, &request(&paths, Use::Drill)).unwrap_err();
        assert_eq!(
            why,
            "cannot take /r/data for this run: a replication holds it"
        );
        assert_eq!(
            fake.calls().last().unwrap(),
            "release [\"/r/sys\"] Some(Drill)"
        );
        // A resumed drill whose earlier attempt leased sys (its drill copy may still read
        // it): what this attempt did not lease is not given back.
        let mut sys = disk("sys", &good);
        sys.leases.push(Lease {
            kind: LeaseKind::Drill,
            run: "R1".into(),
            vm: "db".into(),
            step: "db/start-copy".into(),
            machine: "m".into(),
            pid: 1,
            at: Utc::now(),
            point: Some("P1".into()),
            taken_at: None,
            written_until: None,
            verified: true,
        });
        let fake = Fake {
            held: vec!["/r/data".into()],
            ..Fake::with(vec![sys, disk("data", &good)])
        };
        let why = prepare(&fake, &request(&paths, Use::Drill)).unwrap_err();
        assert!(why.contains("a replication holds it"), "{why}");
        assert!(
            !fake.calls().iter().any(|c| c.starts_with("release")),
            "{:?}",
            fake.calls()
        );
    }

    #[test]
    fn a_cut_update_is_settled_before_the_point_is_chosen() {
        let mut sys = disk("sys", &[point("P1", 1, "yes")]);
        sys.unsettled = Some("an update was cut".into());
        let fake = Fake::with(vec![sys]);
        let paths = ["/r/sys".to_string()];
        let prepared = prepare(&fake, &request(&paths, Use::Drill)).unwrap();
        assert_eq!(prepared.start.point, "P1");
        assert_eq!(prepared.notes[0], "sys: the cut update was completed");
        assert_eq!(
            fake.calls(),
            [
                "settle /r/sys",
                "verify /r/sys P1",
                "lease /r/sys Drill Some(\"P1\")"
            ]
        );
    }

    /// A copy still changed behind its point after that point was read again and found whole
    /// is refused as such, not as an update left unsettled.
    #[test]
    fn a_copy_that_keeps_changing_behind_its_point_is_refused_for_that() {
        let points = [point("P1", 1, "yes")];
        let mut sys = disk("sys", &points);
        sys.changed = Some("the copy changed since its newest point P1 was made".into());
        let fake = Fake::with(vec![sys]);
        let paths = ["/r/sys".to_string()];
        let why = prepare(&fake, &request(&paths, Use::Drill)).unwrap_err();
        assert!(
            why.contains("/r/sys: changed again behind point P1 after it was read again by hash")
                && !why.contains("settled"),
            "{why}"
        );
        assert!(
            fake.calls().iter().all(|c| !c.starts_with("lease")),
            "{:?}",
            fake.calls()
        );
    }

    #[test]
    fn the_point_a_vm_starts_from_is_read_again_by_hash_and_never_started_damaged() {
        // P2's bytes changed on the recovery host without its time or size changing: its
        // stamp says nothing, only its hash does.
        let points = [point("P1", 1, "yes"), point("P2", 2, "yes")];
        let fake = Fake {
            damaged: vec![("/r/data".into(), "P2".into())],
            ..Fake::with(vec![disk("sys", &points), disk("data", &points)])
        };
        let paths = ["/r/sys".to_string(), "/r/data".to_string()];
        // A failover goes on from the newest point whose every disk is whole: P1, rebuilt
        // (which checks its hash), not read a second time.
        let prepared = prepare(&fake, &request(&paths, Use::Failover)).unwrap();
        assert_eq!(prepared.start.point, "P1");
        assert!(
            prepared.notes.iter().any(|n| n
                == "data: point P2, read again by hash before the start, is DAMAGED: the copy no longer holds what was replicated (marked bad)"),
            "{:?}",
            prepared.notes
        );
        assert_eq!(
            fake.calls(),
            [
                "verify /r/sys P2",
                "verify /r/data P2",
                "roll back /r/sys P1",
                "roll back /r/data P1",
                "lease /r/sys Live Some(\"P1\")",
                "lease /r/data Live Some(\"P1\")",
            ]
        );
        // A drill, which never rolls back, starts nothing.
        let fake = Fake {
            damaged: vec![("/r/sys".into(), "P2".into())],
            ..Fake::with(vec![disk("sys", &points)])
        };
        let why = prepare(&fake, &request(&paths[..1], Use::Drill)).unwrap_err();
        assert!(
            why.contains("the newest point P2 of sys FAILED verification")
                && why.contains("a drill never rolls a copy back"),
            "{why}"
        );
        assert!(
            fake.calls().iter().all(|c| !c.starts_with("lease")),
            "{:?}",
            fake.calls()
        );
        // A resumed failover whose vm already runs on its copies reads nothing again: they
        // hold what the vm wrote since.
        let mut sys = disk("sys", &points);
        sys.leases.push(Lease {
            kind: LeaseKind::Live,
            run: "R1".into(),
            vm: "db".into(),
            step: "db/start".into(),
            machine: "m".into(),
            pid: 1,
            at: Utc::now(),
            point: Some("P2".into()),
            taken_at: None,
            written_until: None,
            verified: true,
        });
        let fake = Fake {
            damaged: vec![("/r/sys".into(), "P2".into())],
            ..Fake::with(vec![sys])
        };
        let mut req = request(&paths[..1], Use::Failover);
        req.ask.run = Some("R1".into());
        let prepared = prepare(&fake, &req).unwrap();
        assert_eq!(prepared.start.point, "P2");
        assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    }

    #[test]
    fn a_failback_that_copies_nothing_back_refuses_a_vm_that_ran_on_its_copies() {
        let mut sys = disk("sys", &[]);
        sys.leases.push(Lease {
            kind: LeaseKind::Live,
            run: "R0".into(),
            vm: "db".into(),
            step: "db/start".into(),
            machine: "m".into(),
            pid: 1,
            at: Utc::now(),
            point: Some("P1".into()),
            taken_at: None,
            written_until: None,
            verified: true,
        });
        let fake = Fake::with(vec![sys, disk("data", &[point("P1", 1, "yes")])]);
        let paths = ["/r/sys".to_string(), "/r/data".to_string()];
        let vm = request(&paths, Use::Failover).vm;
        // Its disks come back by the run's own replication: nothing to say.
        assert_eq!(before_failback(&fake, vm, true), Ok(()));
        let why = before_failback(&fake, vm, false).unwrap_err();
        assert!(
            why.contains("ran on its recovery copies")
                && why.contains("run R0")
                && why.contains("add a `replicate` step")
                && why.contains("`reprise release db`"),
            "{why}"
        );
        // A vm that never left (its directory comes back by its own replication).
        let fake = Fake::with(vec![
            disk("sys", &[point("P1", 1, "yes")]),
            disk("data", &[point("P1", 1, "yes")]),
        ]);
        assert_eq!(before_failback(&fake, vm, false), Ok(()));
        // Written since its newest point with no failover's lease (started on it by hand):
        // what it wrote is in no point, and would be let go.
        let mut data = disk("data", &[point("P1", 1, "yes")]);
        data.changed = Some("its size or time is not its newest point's".into());
        data.stamp = Some("s2".into());
        let fake = Fake::with(vec![disk("sys", &[point("P1", 1, "yes")]), data.clone()]);
        let why = before_failback(&fake, vm, false).unwrap_err();
        assert!(
            why.contains("/r/data on")
                && why.contains("was written since its newest point, outside any failover")
                && why.contains("`reprise release db`"),
            "{why}"
        );
        assert_eq!(before_failback(&fake, vm, true), Ok(()));
        // Let go as it now is (`reprise release db`, the way out it names): started.
        data.accepted = Some("s2".into());
        let fake = Fake::with(vec![disk("sys", &[point("P1", 1, "yes")]), data]);
        assert_eq!(before_failback(&fake, vm, false), Ok(()));
        // A lease that cannot be read may be a failover's: refused, naming it.
        let mut data = disk("data", &[point("P1", 1, "yes")]);
        data.bad_leases = vec!["live-R0.json: damaged".into()];
        let fake = Fake::with(vec![disk("sys", &[point("P1", 1, "yes")]), data]);
        let why = before_failback(&fake, vm, false).unwrap_err();
        assert!(
            why.contains("cannot be read")
                && why.contains("live-R0.json: damaged")
                && why.contains("add a `replicate` step"),
            "{why}"
        );
        assert_eq!(before_failback(&fake, vm, true), Ok(()));
        // A copy not there (its storage not mounted) cannot say that no failover ran it.
        let mut gone = disk("data", &[]);
        gone.exists = false;
        let fake = Fake::with(vec![disk("sys", &[point("P1", 1, "yes")]), gone]);
        let why = before_failback(&fake, vm, false).unwrap_err();
        assert!(
            why.contains("/r/data on") && why.contains("is not there (its storage not mounted?)"),
            "{why}"
        );
        assert_eq!(before_failback(&fake, vm, true), Ok(()));
    }

    /// A vm starts where a copy of the run moved it only while what the copy read is still
    /// so: a disk written since is named with both stamps, the others not.
    #[test]
    fn a_vm_starts_only_from_a_copy_whose_source_is_unchanged_since() {
        let stamped = |name: &str, stamp: &str| CopyState {
            stamp: Some(stamp.into()),
            ..disk(name, &[])
        };
        let fake = Fake::with(vec![
            stamped("sys", "1 10.0 7"),
            stamped("data", "2 10.0 8"),
        ]);
        let read = |sys: &str| {
            vec![
                ("/r/sys".to_string(), sys.to_string()),
                ("/r/data".to_string(), "2 10.0 8".to_string()),
            ]
        };
        let still =
            |sys: &str| copied_still(&fake, "db", "hv-pra", "db/sync-back", &read(sys), "if lost");
        assert_eq!(still("1 10.0 7"), Ok(()));
        let why = still("1 9.0 7").unwrap_err();
        assert!(
            why.contains("the disks of vm db on hv-pra were written after step db/sync-back copied them: /r/sys (it was `1 9.0 7`, it is `1 10.0 7`)")
                && !why.contains("/r/data (")
                && why.contains("`reprise resume`"),
            "{why}"
        );
    }

    /// A copy started as it is, judged against a time asked, by its file's time: the recovery
    /// host's clock's, brought to this machine's. Behind by 15 minutes, a copy written at 02:40
    /// says 02:25: it is not taken for one of before 02:30. Its clock unread, when it was last
    /// written cannot be told: refused too.
    #[test]
    fn a_copy_started_as_it_is_is_judged_by_its_time_on_this_machine_s_clock() {
        let written: chrono::DateTime<Utc> = "2026-11-28T02:40:00Z".parse().unwrap();
        let behind = chrono::Duration::minutes(15);
        let copy = CopyState {
            mtime: Some(written - behind),
            ..disk("sys", &[])
        };
        let paths = ["/r/sys".to_string()];
        let mut req = request(&paths, Use::Failover);
        req.ask = Ask {
            want: Some(choice::Want::Before(
                "2026-11-28T02:30:00Z".parse().unwrap(),
            )),
            accept_unverified: true,
            ..req.ask.clone()
        };
        for (clock, said) in [
            (
                Some(-behind),
                "holds what was written until 2026-11-28 02:40",
            ),
            (None, "cannot be told (its host's clock could not be read)"),
        ] {
            let fake = Fake {
                clock_ahead: clock,
                ..Fake::with(vec![copy.clone()])
            };
            let Err(why) = prepare(&fake, &req) else {
                panic!("{clock:?}: started as it is");
            };
            assert!(why.contains(said), "{clock:?}: {why}");
            assert!(!fake.calls().iter().any(|c| c.starts_with("lease")));
        }
        // Its clock right, the copy is of 02:25: started as it is.
        let fake = Fake {
            clock_ahead: Some(chrono::Duration::zero()),
            ..Fake::with(vec![copy.clone()])
        };
        assert!(prepare(&fake, &req).is_ok());
        // No time asked: the start still records until when the copy was written by this
        // machine's clock, which a time a resume asks later is judged by; its clock unread,
        // the end of time.
        req.ask.want = None;
        for (clock, until) in [
            (Some(-behind), written),
            (None, chrono::DateTime::<Utc>::MAX_UTC),
        ] {
            let fake = Fake {
                clock_ahead: clock,
                ..Fake::with(vec![copy.clone()])
            };
            let p = prepare(&fake, &req).unwrap();
            // Named by its own time, whatever is known of the clock.
            assert!(
                p.start.point.starts_with("copy-20261128T"),
                "{clock:?}: {}",
                p.start.point
            );
            // Later by what reading the clock cannot tell, never earlier.
            let late = p.start.written_until.signed_duration_since(until);
            assert!(
                late >= chrono::Duration::zero() && late < chrono::Duration::seconds(1),
                "{clock:?}: {}",
                p.start.written_until
            );
        }
    }

    /// A copy started as it is, written by a replication after the choice judged it and
    /// before its lease (which waited for that replication): refused, its lease given back;
    /// never started on data the choice did not judge.
    #[test]
    fn a_copy_taken_as_it_is_and_written_before_its_lease_is_refused() {
        let copy = CopyState {
            mtime: Some("2026-11-28T02:20:00Z".parse().unwrap()),
            stamp: Some("1 9.0 7".into()),
            ..disk("sys", &[])
        };
        let paths = ["/r/sys".to_string()];
        let mut req = request(&paths, Use::Failover);
        req.ask = Ask {
            want: Some(choice::Want::Before(
                "2026-11-28T02:30:00Z".parse().unwrap(),
            )),
            accept_unverified: true,
            ..req.ask.clone()
        };
        let fake = Fake {
            clock_ahead: Some(chrono::Duration::zero()),
            written_before_lease: vec!["/r/sys".into()],
            ..Fake::with(vec![copy.clone()])
        };
        let Err(why) = prepare(&fake, &req) else {
            panic!("started as it is on what the choice did not judge");
        };
        assert!(
            why.contains("/r/sys changed while the run chose it as it is")
                && why.contains("`written since`"),
            "{why}"
        );
        assert!(
            fake.calls()
                .iter()
                .any(|c| c.starts_with("release [\"/r/sys\"]")),
            "{:?}",
            fake.calls()
        );
        // Left as it was: started as it is.
        let fake = Fake {
            clock_ahead: Some(chrono::Duration::zero()),
            ..Fake::with(vec![copy])
        };
        assert!(prepare(&fake, &req).is_ok());
    }

    #[test]
    fn after_a_start_the_history_ends_and_after_a_failback_the_copies_are_released() {
        let fake = Fake::with(vec![disk("sys", &[point("P1", 1, "yes")])]);
        let paths = ["/r/sys".to_string()];
        let vm = request(&paths, Use::Failover).vm;
        let note = after(&fake, vm, "R1", "db/start", Used::Started).unwrap();
        assert_eq!(note, None, "the fake's lease says nothing");
        assert_eq!(fake.calls(), ["lease /r/sys Live None"]);
        let note = after(&fake, vm, "R1", "db/back", Used::FailedBack).unwrap();
        assert!(note.unwrap().contains("were released"));
        assert_eq!(fake.calls()[1], "release [\"/r/sys\"] Some(Live)");
        assert_eq!(fake.leased.lock().unwrap()[0].taken_at, None);
        // The start's lease cannot be read now: left as it is (its point's time is what a
        // failback judges by), never replaced by a lease of now; the step says so.
        // One disk's: the others are done all the same.
        let fake = Fake {
            unreadable: Some(("/r/sys".into(), "connection reset".into())),
            ..Fake::with(vec![
                disk("sys", &[point("P1", 1, "yes")]),
                disk("data", &[point("P1", 1, "yes")]),
            ])
        };
        let both = ["/r/sys".to_string(), "/r/data".to_string()];
        let vm = request(&both, Use::Failover).vm;
        let why = after(&fake, vm, "R1", "db/start", Used::Started).unwrap_err();
        assert!(
            why.contains("sys: its lease cannot be read")
                && why.contains("connection reset")
                && why.contains("left as it is"),
            "{why}"
        );
        assert_eq!(fake.calls(), ["lease /r/data Live None"]);
    }

    /// A failback's start on the primary undone: the copies are leased to the vm again, and
    /// their data is of no later than the failback's beginning, so that what the vm wrote on
    /// the primary since is seen by the next failback as written after the lease.
    #[test]
    fn a_failback_undone_leases_the_copies_again_as_of_its_beginning() {
        let fake = Fake::with(vec![disk("sys", &[point("P1", 1, "yes")])]);
        let paths = ["/r/sys".to_string()];
        let vm = request(&paths, Use::Failover).vm;
        let since = Utc::now() - chrono::Duration::minutes(40);
        after(&fake, vm, "FB", "db/back", Used::StartedAgain { since }).unwrap();
        assert_eq!(fake.calls(), ["lease /r/sys Live None"]);
        let lease = fake.leased.lock().unwrap()[0].clone();
        assert_eq!(lease.taken_at, Some(since), "{lease:?}");
        assert!(lease.at > since);
    }
}
