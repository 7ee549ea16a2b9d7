//! Replicate steps: a vm's disks (or a backup set's folder) brought up to date on the other
//! host as a new verified point, through the replication helpers (see [`crate::replica`]): a
//! snapshot left on the source by a cut replication merged back first, the vm's definition
//! captured with the point, its disks frozen by the driver's hooks while they are read.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};

use super::context::{Outcome, RunContext, StepRun};
use super::hooks::Freeze;
use crate::event::{Event, StepStatus};
use crate::plan::{Action, PlannedStep, Replicated, SnapshotHooks};
use crate::replica::remote::{GuestRead, HostUse, Replication, STREAMS};
use crate::replica::window::Window;

/// Runs a replicate step.
pub(super) async fn run(ctx: &Arc<RunContext>, run: &StepRun) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    let Action::Replicate {
        what,
        from_host,
        to_host,
        items,
        retention,
        snapshot,
        capture,
        guest,
    } = &step.action_spec
    else {
        unreachable!("a replicate step's action is Replicate");
    };
    if *guest == Some(true) {
        let e = "its copies are raw images of the disks as the guest sees them (changed_blocks): copying them back over the primary's disks is not done by reprise yet; convert each copy by hand (qemu-img convert -O qcow2 COPY DISK) with the vm stopped".to_string();
        return run.outcome(StepStatus::Failed, 1, Some(e));
    }
    // One replication of it at a time on this machine: a round of `replicate --every`
    // beside this step would take its freeze or snapshot for one left by a killed run.
    let (name, first) = match what {
        Replicated::Vm(vm) => (vm.clone(), items.first().map(|(src, _)| src.clone())),
        Replicated::Backup(set) => (set.clone(), items.first().map(|(src, _)| src.clone())),
    };
    let _held = match first {
        Some(src) => {
            let (source, stop) = (format!("{from_host}:{src}"), run.shutdown.clone());
            let (tx, stepped) = (run.tx.clone(), step.id.clone());
            let held = tokio::task::spawn_blocking(move || {
                crate::replica::busy::hold(&name, &source, &|| *stop.borrow(), &mut |said| {
                    let _ = tx.send(super::context::Msg::Event(Event::StepOutput {
                        at: Utc::now(),
                        step: stepped.clone(),
                        attempt: 1,
                        stdout: format!("{said}\n"),
                        stderr: String::new(),
                        exit_code: None,
                    }));
                })
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            match held {
                Ok(f) => Some(f),
                Err(e) => return failed(run, step, String::new(), e),
            }
        }
        None => None,
    };
    // A snapshot left on the source by an interrupted replication: the disks are stale (the
    // vm wrote to the overlay), so it is merged back before they are read.
    let mut report = match snapshot {
        Some(hooks) => match settle_snapshot(ctx, hooks).await {
            Ok(note) => note,
            Err(e) => return failed(run, step, String::new(), e),
        },
        None => String::new(),
    };
    let deadline = step
        .timeout_s
        .map(StdDuration::from_secs)
        .unwrap_or(StdDuration::from_secs(7200));
    // Every disk of a vm gets the same point; a second replication of it in this run (a
    // copy while it ran, then the last one once it stopped) another.
    let item = match what {
        Replicated::Vm(vm) => format!("vm {vm}"),
        Replicated::Backup(set) => format!("backup set {set}"),
    };
    // The vm's definition goes with the point (beside the copy of its first disk).
    let mut captured_def = None;
    if let (Some((cmd, format)), Some((_, first))) = (capture, items.first()) {
        let target = DefinitionAt {
            from: from_host,
            to: to_host,
            first,
        };
        match capture_definition(ctx, cmd, *format, target).await {
            Ok(h) => {
                report.push_str(&format!(
                    "definition captured on {from_host} (BLAKE3 {h})\n"
                ));
                captured_def = Some(h);
            }
            Err(e) => return failed(run, step, report, e),
        }
    }
    let disks = Disks {
        folder: matches!(what, Replicated::Backup(_)),
        from: from_host,
        to: to_host,
        items,
        guest: *guest,
    };
    // A backup set or vm copied back by a failback, or a vm by a planned failover's final
    // sync: what its source is before it is read, so that what is written there after is
    // never written over, nor left behind by the vm's start on the other site, unnoticed.
    let between_sites = match ctx.plan.mode {
        crate::runbook::Mode::Failback => true,
        crate::runbook::Mode::Failover => matches!(what, Replicated::Vm(_)),
        _ => false,
    };
    let read_before = match between_sites {
        true => match stamps_before_copy(ctx, from_host, items).await {
            Ok(s) => s,
            Err(e) => return failed(run, step, report, e),
        },
        _ => Vec::new(),
    };
    // The point is taken last before the copy: the wait for its second (see
    // `point_taken_now`) overlaps the definition's capture and the stamps read above.
    if let Some(wait) = crate::replica::remote::wait_for_point(&item) {
        tokio::time::sleep(wait).await;
    }
    let taken_at = crate::replica::remote::point_taken_now(&item);
    let live = snapshot.as_ref().is_some_and(|h| h.live);
    // A vm's disks not read live are read in a window ([`Window`]).
    let window = match what {
        Replicated::Vm(vm) if !live => {
            let files: Vec<String> = items.iter().map(|(src, _)| src.clone()).collect();
            Window::of(vm, &files)
        }
        _ => None,
    };
    let replication = Replication {
        point: crate::replica::remote::point_id(taken_at),
        taken_at,
        retention: *retention,
        reread: false,
        compress: false,
        live,
        // Read live under a freeze (`Freeze::of`): held until its end says it held; read in
        // a window: until its check says no disk was written.
        pending: snapshot
            .as_ref()
            .is_some_and(|h| h.live && h.begin.is_some())
            || window.is_some(),
        deadline,
        definition: captured_def,
        reads: None,
        // A failback's copy back into the primary, judged by the failback before it ran.
        overwrite_changed: ctx.plan.mode == crate::runbook::Mode::Failback,
    };
    let freeze = Freeze::of(snapshot.as_ref());
    let item_name = match what {
        Replicated::Vm(v) | Replicated::Backup(v) => v.as_str(),
    };
    let (point, failure) = copy_frozen(
        ctx,
        &disks,
        replication,
        (freeze, window.map(|w| (item_name, w))),
        &mut report,
    )
    .await;
    if let Some(e) = failure {
        return failed(run, step, report, e);
    }
    run.send(Event::StepOutput {
        at: Utc::now(),
        step: step.id.clone(),
        attempt: 1,
        stdout: report,
        stderr: String::new(),
        exit_code: Some(0),
    });
    let item = match what {
        Replicated::Vm(v) | Replicated::Backup(v) => v,
    };
    let made = point.as_ref().map(|(p, _)| p.clone());
    if let Some((point, taken_at)) = point {
        point_made(run, step.id.clone(), item.clone(), point, taken_at);
    }
    if let Replicated::Vm(vm) = what
        && between_sites
    {
        run.send(Event::SourceRead {
            at: Utc::now(),
            step: step.id.clone(),
            vm: vm.clone(),
            host: from_host.clone(),
            stamps: read_before.clone(),
        });
        let read = super::context::CopyRead {
            step: step.id.clone(),
            host: from_host.clone(),
            stamps: read_before.clone(),
            here: true,
            point: made,
        };
        ctx.copied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm.clone(), read);
    }
    match what {
        Replicated::Backup(set) if ctx.plan.mode == crate::runbook::Mode::Failback => {
            // A copy written since the copy back read it holds what the primary now lacks:
            // the step fails (what depends on it waits), its copy kept leased.
            match failed_back(ctx, set, from_host, read_before).await {
                Ok(note) => run.outcome(StepStatus::Done, 1, Some(note)),
                Err(e) => failed(run, step, String::new(), e),
            }
        }
        _ => run.outcome(StepStatus::Done, 1, None),
    }
}

/// The stamp of each source a copy between sites reads (`items`' sources on `host`): a
/// backup set folder's seal, a disk's size, modification time and inode, read before the
/// copy reads it, paired with its path.
async fn stamps_before_copy(
    ctx: &RunContext,
    host: &str,
    items: &[(String, String)],
) -> Result<Vec<(String, String)>, String> {
    let transport = ctx.transport.clone();
    let (h, paths): (String, Vec<String>) = (
        host.to_string(),
        items.iter().map(|(src, _)| src.clone()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let states = crate::replica::remote::Helpers::new(transport.as_ref())
            .inspect(&h, &paths)
            .map_err(|e| format!("cannot read what to copy on {h}: {e}"))?;
        paths
            .into_iter()
            .zip(states)
            .map(|(path, s)| match s.stamp {
                Some(stamp) => Ok((path, stamp)),
                None => Err(format!("{h}:{path}, to copy, is not there")),
            })
            .collect()
    })
    .await
    .map_err(|e| format!("the replica task failed: {e}"))?
}

/// A backup set replicated back to the primary by a failback: the lease the failover left on
/// its recovery copy is released (what the recovery site wrote there is on the primary now),
/// so that replication may write into the copy again, but only while it is still what the
/// copy back read (`returned`: each folder and its stamp before). A note for the step's
/// message; an error when the copy was written since (what was written there is not on the
/// primary).
async fn failed_back(
    ctx: &RunContext,
    set: &str,
    host: &str,
    returned: Vec<(String, String)>,
) -> Result<String, String> {
    let transport = ctx.transport.clone();
    let h = host.to_string();
    let released = tokio::task::spawn_blocking(move || {
        let helpers = crate::replica::remote::Helpers::new(transport.as_ref());
        let mut all = Vec::new();
        for (path, stamp) in &returned {
            all.extend(helpers.release_returned(&h, path, stamp)?);
        }
        Ok::<_, crate::replica::ReplicaError>(all)
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    match released {
        Ok(r) if r.is_empty() => Ok(format!("backup set {set} is back on the primary")),
        Ok(_) => Ok(format!(
            "backup set {set} is back on the primary: its recovery copy on {host} was released, replication may write into it again while it is as it was copied back (a file written there since stops the next replication, which says what to do)"
        )),
        // Written on the recovery site after the copy back read it: the primary lacks that.
        Err(e) if e.contains("what was written there is only on this copy") => Err(format!(
            "backup set {set} was copied back to the primary as it was read, but its recovery copy on {host} was written since and stays leased, so that no replication writes over it ({e}); stop what writes it on the recovery site, then resume the failback (`reprise resume`): this step copies it back again, with what was written"
        )),
        // Not released, and not known to be as it was read (its lock held by another user
        // of the copy, say): said so, never with advice that would let it go unchecked.
        Err(e) => Ok(format!(
            "backup set {set} is back on the primary, but the lease of its recovery copy on {host} could not be released ({e}): it stays leased; see whether anything was written there since the copy back (`reprise status`), copy that to the primary's folder, then `reprise release {set}` frees it"
        )),
    }
}

/// The roll-back of a failback that copied backup set `set` back to the primary: the copy
/// on `host` (each source folder of `items`) is leased again, `live`, to this run, its data
/// of no later than the failback's beginning, as a vm's recovery copies are
/// ([`super::vm::undone`]): the recovery site runs the service again and writes into it, and
/// no replication may write the primary's folder over it. Whether it was, and what to say.
pub(super) async fn undo_copied_back(
    ctx: &RunContext,
    step: &crate::plan::PlannedStep,
    set: &str,
    host: &str,
    items: &[(String, String)],
) -> (bool, String) {
    // Named as a backup step's lease (`SERVICE/backup-SET`), as the failover's was: a set's
    // lease, not a vm's.
    let (transport, run_id, step_id) = (
        ctx.transport.clone(),
        ctx.plan.run_id.clone(),
        format!("{}/{}{set}", step.service, crate::plan::BACKUP_STEP),
    );
    let since = crate::journal::run_began(&run_id).unwrap_or_else(Utc::now);
    let (name, h) = (set.to_string(), host.to_string());
    let paths: Vec<String> = items.iter().map(|(src, _)| src.clone()).collect();
    let leased = tokio::task::spawn_blocking(move || {
        crate::replica::start::after(
            &crate::replica::start::Remote::new(transport.as_ref()),
            crate::replica::start::Vm {
                name: &name,
                host: &h,
                paths: &paths,
                sources: &[],
            },
            &run_id,
            &step_id,
            crate::replica::start::Used::StartedAgain { since },
        )
    })
    .await
    .unwrap_or_else(|e| Err(format!("the replica task failed: {e}")));
    match leased {
        Ok(_) => (
            true,
            format!(
                "the copy of backup set {set} on {host} is leased to this run again: the recovery site writes into it again, and no replication writes into it; what the primary's folder got since this failback began is not in it, and the next failback says so before it would overwrite it"
            ),
        ),
        Err(e) => (
            false,
            format!(
                "the copy of backup set {set} on {host} could not be leased again ({e}): the recovery site writes into it again, and a replication of {set} could write the primary's folder over what it writes there; stop scheduled replications of {set} until a failback brings it back"
            ),
        ),
    }
}

/// Journals the point a replicate step made.
fn point_made(run: &StepRun, step: String, item: String, point: String, taken_at: DateTime<Utc>) {
    run.send(Event::ReplicaPointUsed {
        at: Utc::now(),
        step,
        item,
        point,
        taken_at,
        written_until: None,
        verified: true,
        note: Some("made by this step; its BLAKE3 matched end to end".into()),
        dropped: Vec::new(),
    });
}

/// The step failed: what it did so far and why it stopped are its output.
fn failed(run: &StepRun, step: &PlannedStep, report: String, e: String) -> Outcome {
    run.send(Event::StepOutput {
        at: Utc::now(),
        step: step.id.clone(),
        attempt: 1,
        stdout: report,
        stderr: e.clone(),
        exit_code: None,
    });
    run.outcome(StepStatus::Failed, 1, Some(e))
}

/// Merges back a replication snapshot left on the source: a note of what was done.
async fn settle_snapshot(ctx: &RunContext, hooks: &SnapshotHooks) -> Result<String, String> {
    let expose = |c: &crate::template::Command| c.expose(|n| (ctx.secrets)(n));
    let (check, end) = match (expose(&hooks.check), expose(&hooks.end)) {
        (Ok(c), Ok(e)) => (c, e),
        (Err(missing), _) | (_, Err(missing)) => {
            return Err(format!("secret {missing} is not set in the environment"));
        }
    };
    let transport = ctx.transport.clone();
    let (host, shown) = (hooks.host.clone(), hooks.end.to_string());
    let done = tokio::task::spawn_blocking(move || {
        crate::replica::snapshot::settle(transport.as_ref(), &host, &check, &end, &shown)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the snapshot task failed: {e}")))?;
    Ok(done.map(|n| format!("{n}\n")).unwrap_or_default())
}

/// Where a vm's definition is captured (on the primary) and kept (beside the copy of its
/// first disk).
struct DefinitionAt<'a> {
    from: &'a str,
    to: &'a str,
    first: &'a str,
}

/// Captures the vm's definition with the point: its BLAKE3.
async fn capture_definition(
    ctx: &RunContext,
    cmd: &crate::template::Command,
    format: crate::vmdef::Format,
    at: DefinitionAt<'_>,
) -> Result<String, String> {
    let text = cmd
        .expose(|n| (ctx.secrets)(n))
        .map_err(|missing| format!("secret {missing} is not set in the environment"))?;
    let transport = ctx.transport.clone();
    let (from, to, first) = (at.from.to_string(), at.to.to_string(), at.first.to_string());
    tokio::task::spawn_blocking(move || {
        let helpers = crate::replica::remote::Helpers::new(transport.as_ref());
        crate::replica::definitions::capture(&helpers, format, &from, &text, &to, &first)
    })
    .await
    .unwrap_or_else(|e| Err(format!("the definition task failed: {e}")))
}

/// The disks (or folder) a replicate step copies.
struct Disks<'a> {
    /// A backup set's folder, file by file.
    folder: bool,
    from: &'a str,
    to: &'a str,
    /// (source path, destination path) pairs.
    items: &'a [(String, String)],
    /// A vm with changed_blocks (see [`Action::Replicate`]).
    guest: Option<bool>,
}

/// Copies every disk, frozen by the driver's `replicate-begin` while they are read and
/// thawed by `replicate-end` on every way out: the point made (its id and when it was taken),
/// and why it failed.
async fn copy_frozen(
    ctx: &RunContext,
    disks: &Disks<'_>,
    mut replication: Replication,
    (freeze, window): (Option<Freeze>, Option<(&str, Window)>),
    report: &mut String,
) -> (Option<(String, DateTime<Utc>)>, Option<String>) {
    let mut failed = match &freeze {
        Some(f) => f.begin(ctx, report).await.err(),
        None => None,
    };
    // The read window's marks, once the disks are frozen.
    if let (None, Some((vm, w))) = (&failed, &window) {
        failed = on_host(ctx, disks.from, w, Window::open)
            .await
            .err()
            .map(|e| {
                format!(
                    "{e}: whether the disks of {vm} are written between their reads could not be told, so they are not read; not replicated, the copy keeps its last point"
                )
            });
        // Of the moment the reads may begin, never of before.
        replication.taken_at = replication.taken_at.max(chrono::Utc::now());
    }
    if freeze.is_some() && failed.is_none() {
        // What the copy holds is the disks as the freeze left them: its point is of the
        // moment the freeze was in place, never of before (a point chosen as taken before a
        // time holds nothing written after it). Its id still names the replication.
        replication.taken_at = replication.taken_at.max(chrono::Utc::now());
    }
    let mut point = None;
    // Whether anything was copied under the freeze (else no point can be torn).
    let copied = failed.is_none();
    // A vm with changed_blocks, read by a step (a final sync, its vm stopped or frozen
    // above): every block of its qcow2 disks through qemu-nbd, which refuses a disk a running
    // vm writes; the next `reprise replicate` starts a checkpoint again.
    let read = disks.guest.map(|_| GuestRead {
        nbd: None,
        format: crate::replica::protocol::DiskFormat::Qcow2,
        bitmap: None,
        audit: false,
        marks: Vec::new(),
        how: crate::replica::store::HowRead {
            mode: crate::replica::store::ReadMode::Scan,
            why: Some("read by a runbook step, which starts no checkpoint".into()),
            checkpoint: None,
            since: None,
            created: None,
            missed: None,
            marker: None,
        },
    });
    if failed.is_none() {
        match copy_disks(ctx, disks, &replication, read.as_ref()).await {
            Ok((lines, made)) => {
                report.push_str(&lines);
                point = made.map(|id| (id, replication.taken_at));
            }
            Err((lines, e)) => {
                report.push_str(&lines);
                failed = Some(e);
            }
        }
    }
    // Closed before the end (a snapshot merged back writes the disks): a disk written since
    // the window opened makes the points unusable.
    let torn = match &window {
        Some((vm, w)) if copied => {
            let found = on_host(ctx, disks.from, w, Window::close).await;
            Window::torn_why(vm, &found)
        }
        _ => None,
    };
    let taken_at = replication.taken_at;
    let mut join = |e: Option<String>| {
        if let Some(e) = e {
            failed = Some(match failed.take() {
                Some(first) => format!("{first}; {e}"),
                None => e,
            });
        }
    };
    if let Some(why) = torn.clone() {
        let said = why.clone();
        join(Some(format!(
            "{said}; {}; replicate it again once nothing else writes them",
            crate::replica::snapshot::torn_note(
                on_copies(ctx, disks, move |h, c| h.mark_torn(c, taken_at, &why)).await
            )
        )));
    }
    // Whether the freeze's end said the copy may be torn, or did not end cleanly.
    let (mut end_torn, mut end_ok) = (false, true);
    if let Some(f) = &freeze {
        let e = match f.end(ctx, report).await {
            Err((mut e, torn)) => {
                end_ok = false;
                end_torn = torn.is_some();
                if let Some(why) = torn.filter(|_| copied) {
                    e = format!(
                        "{e}; {}",
                        crate::replica::snapshot::torn_note(
                            on_copies(ctx, disks, move |h, c| h.mark_torn(c, taken_at, &why)).await
                        )
                    );
                }
                Some(e)
            }
            Ok(()) => None,
        };
        join(e);
    }
    // The points held until now are good (a copy that failed leaves its disks' points held):
    // read in a window, when it found no disk written (and the end did not say torn); read
    // live, when the freeze's end said it held.
    let held = match &window {
        Some(_) => (copied && torn.is_none() && !end_torn)
            .then_some("no disk was written while they were read"),
        None => end_ok.then_some("the freeze held through the copy"),
    };
    if let (Some(held), Some(_), true) = (held, &point, replication.pending) {
        join(confirm(ctx, disks, taken_at, held, report).await);
    }
    (point, failed)
}

/// Confirms the points of the copies of every disk, held until what `held` was known: a line
/// in `report`, or why they stay unusable.
async fn confirm(
    ctx: &RunContext,
    disks: &Disks<'_>,
    taken_at: DateTime<Utc>,
    held: &str,
    report: &mut String,
) -> Option<String> {
    let confirmed = on_copies(ctx, disks, move |h, c| h.confirm(c, taken_at)).await;
    match crate::replica::snapshot::confirm_note(held, confirmed) {
        Ok(line) => {
            report.push_str(&line);
            report.push('\n');
            None
        }
        Err(e) => Some(e),
    }
}

/// Runs `what` (opens or closes the read window `w`) on `host`, off the runtime's threads.
async fn on_host<T: Send + 'static>(
    ctx: &RunContext,
    host: &str,
    w: &Window,
    what: fn(&Window, &dyn crate::ssh::Transport, &str) -> Result<T, String>,
) -> Result<T, String> {
    let (transport, host, w) = (ctx.transport.clone(), host.to_string(), w.clone());
    tokio::task::spawn_blocking(move || what(&w, transport.as_ref(), &host))
        .await
        .unwrap_or_else(|e| Err(format!("the task failed: {e}")))
}

/// After a `replicate-end`, `ask` (a [`crate::replica::remote::Helpers`] call: `mark_torn`,
/// `confirm`) of the copies of every disk, off the runtime's threads.
async fn on_copies(
    ctx: &RunContext,
    disks: &Disks<'_>,
    ask: impl FnOnce(&crate::replica::remote::Helpers, &[(&str, &str)]) -> Result<Vec<String>, String>
    + Send
    + 'static,
) -> Result<Vec<String>, String> {
    let transport = ctx.transport.clone();
    let to = disks.to.to_string();
    let images: Vec<String> = disks.items.iter().map(|(_, d)| d.clone()).collect();
    tokio::task::spawn_blocking(move || {
        let copies: Vec<(&str, &str)> = images.iter().map(|d| (to.as_str(), d.as_str())).collect();
        ask(
            &crate::replica::remote::Helpers::new(transport.as_ref()),
            &copies,
        )
    })
    .await
    .unwrap_or_else(|e| Err(format!("the task failed: {e}")))
}

/// Copies the disks at once ([`STREAMS`] at most), after getting a session ready for each
/// transfer that needs one: their lines in disk order and the point made, or, when one failed,
/// the lines of those copied and the first failure in disk order (the others are still copied:
/// each copy keeps its own outcome).
async fn copy_disks(
    ctx: &RunContext,
    disks: &Disks<'_>,
    replication: &Replication,
    read: Option<&GuestRead>,
) -> Result<(String, Option<String>), (String, String)> {
    let n = disks.items.len().min(STREAMS);
    let transport = ctx.transport.clone();
    let (from, to) = (disks.from.to_string(), disks.to.to_string());
    let _ = tokio::task::spawn_blocking(move || {
        crate::replica::remote::Helpers::new(transport.as_ref()).prepare(&[
            HostUse {
                host: &from,
                reads: n,
                writes: 0,
            },
            HostUse {
                host: &to,
                reads: 0,
                writes: n,
            },
        ])
    })
    .await;
    // Only the first disk's point records the definition (it is kept beside it).
    let rest = Replication {
        definition: None,
        ..replication.clone()
    };
    let streams = Arc::new(tokio::sync::Semaphore::new(STREAMS));
    let copies = disks.items.iter().enumerate().map(|(i, (src, dst))| {
        let r = if i == 0 { replication } else { &rest };
        let streams = streams.clone();
        async move {
            let _stream = streams.acquire_owned().await;
            replicate_image(ctx, disks, (src, dst), r, read).await
        }
    });
    let done = join_in_order(copies.collect()).await;
    let (mut lines, mut point, mut first_failure) = (String::new(), None, None);
    for copied in done {
        match copied {
            Ok(t) => {
                point = Some(t.applied.point.id.clone());
                lines.push_str(&t.line());
            }
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    match first_failure {
        Some(e) => Err((lines, e)),
        None => Ok((lines, point)),
    }
}

/// Awaits `futures` together (each polled as soon as it can make progress): their outputs in
/// order.
async fn join_in_order<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every one ended"))
        .collect()
}

/// Brings one vm disk's recovery copy (or a backup set's folder, file by file) up to date
/// through the replication helpers, as a new point (see [`crate::replica`]).
async fn replicate_image(
    ctx: &RunContext,
    disks: &Disks<'_>,
    (src, dst): (&str, &str),
    replication: &Replication,
    guest: Option<&GuestRead>,
) -> Result<crate::replica::ImageTransfer, String> {
    let transport = ctx.transport.clone();
    let folder = disks.folder;
    let (from, src) = (disks.from.to_string(), src.to_string());
    let (to, dst) = (disks.to.to_string(), dst.to_string());
    let (r, guest) = (replication.clone(), guest.cloned());
    tokio::task::spawn_blocking(move || {
        let helpers = crate::replica::remote::Helpers::new(transport.as_ref());
        if folder {
            helpers.replicate_tree(&from, &src, &to, &dst, &r)
        } else {
            helpers.replicate(&from, &src, &to, &dst, &r, guest.as_ref())
        }
    })
    .await
    .map_err(|e| format!("the replication task failed: {e}"))?
    .map_err(|e| e.to_string())
}
