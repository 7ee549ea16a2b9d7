//! What comes before a vm's disks are read (`reprise replicate`): a snapshot left by a cut
//! replication merged back (`replicate-check`, `replicate-end`), the vm's definition captured
//! (`definition`), its disks frozen (`replicate-begin`); and after, the snapshot merged back
//! (`replicate-end`) on every way out.
//!
//! Over a WAN a remote command costs about three round trips: the steps before the copy go
//! to the vm's host together, in one command ([`crate::replica::batch`]), each stopping the
//! ones after it. Whatever that command did not finish cleanly (a snapshot found left, a step
//! that failed, the connection cut) is done again one step at a time, as it always was, so
//! that what is said and done then is the same.

use super::Outcome;
use super::copied::VmImages;
use crate::exit;
use crate::model::Model;
use crate::replica::batch::{self, Step};
use crate::replica::remote::Helpers;
use crate::replica::window::Window;

/// A driver hook around the replication of a running vm (`replicate-begin`, `replicate-end`).
pub(super) fn snapshot_hook(
    model: &Model,
    vm: &str,
    action: &str,
) -> Option<(String, crate::template::Command)> {
    crate::plan::replicate_hook(model, model.inventory.vms.get(vm)?, action)
}

/// Why the replication hooks of `vm`'s driver cannot all be run for it: one it has that
/// cannot be written for it (a variable its primary lacks). A hook taken for absent would
/// leave a running vm unfrozen while its disks are read (a copy of no instant, recorded
/// good), or frozen for good. The files' check says so first (`validate`, which also refuses
/// a `replicate-begin` without a `replicate-end`); this holds it at the replication too.
pub(super) fn hooks_unwritable(model: &Model, vm: &VmImages) -> Option<String> {
    if vm.backup {
        return None;
    }
    let v = model.inventory.vms.get(&vm.id)?;
    crate::plan::REPLICATE_HOOKS.into_iter().find_map(|action| {
        crate::plan::replicate_hook_checked(model, v, action)
            .err()
            .map(|e| format!("its driver's `{action}` cannot be written for it ({e})"))
    })
}

/// The driver's `definition` action of a vm whose driver carries definitions: its host (the
/// primary) and command.
pub(super) fn capture_action(
    model: &Model,
    vm: &VmImages,
) -> Option<(String, crate::template::Command, crate::vmdef::Format)> {
    if vm.backup {
        return None;
    }
    let v = model.inventory.vms.get(&vm.id)?;
    let driver = model.inventory.drivers.get(&v.driver.value)?;
    let format = driver.definition_format.filter(|_| driver.defines())?;
    crate::plan::replicate_hook(model, v, "definition").map(|(h, c)| (h, c, format))
}

/// Captures the definition of `vm` from its primary, stored beside the copy of its first disk
/// (`None`: its driver carries none); `Err` when it cannot be, said in `out` (the vm is then not
/// replicated: its copies stay as they were).
pub(super) fn capture_definition(
    model: &Model,
    helpers: &Helpers,
    vm: &VmImages,
    out: &mut Outcome,
) -> Result<Option<String>, ()> {
    let (Some((host, cmd, format)), Some(first)) = (capture_action(model, vm), vm.images.first())
    else {
        return Ok(None);
    };
    let captured = cmd
        .expose(|n| std::env::var(n).ok())
        .map_err(|m| format!("secret {m} is not set in the environment"))
        .and_then(|text| {
            crate::replica::definitions::capture(
                helpers, format, &host, &text, &first.to, &first.dst,
            )
        });
    said_definition(vm, &host, captured, out)
}

/// Says how the capture of `vm`'s definition on `host` ended.
fn said_definition(
    vm: &VmImages,
    host: &str,
    captured: Result<String, String>,
    out: &mut Outcome,
) -> Result<Option<String>, ()> {
    match captured {
        Ok(h) => {
            out.stdout.push_str(&format!(
                "{}: definition captured on {host} (BLAKE3 {})\n",
                vm.id,
                &h[..16]
            ));
            Ok(Some(h))
        }
        Err(e) => {
            out.stderr.push_str(&format!(
                "error: {}: {e}; not replicated, its copy is as it was\n",
                vm.id
            ));
            out.code = exit::FAILED;
            Err(())
        }
    }
}

/// Runs a snapshot hook: its duration and what it printed (each line for `vm`); the error
/// says what to do by hand.
fn run_hook(
    transport: &dyn crate::ssh::Transport,
    host: &str,
    cmd: &crate::template::Command,
) -> Result<(f64, String), String> {
    run_hook_torn(transport, host, cmd).map_err(|(e, _)| e)
}

/// [`run_hook`], saying, when the hook exited with [`crate::replica::snapshot::TORN`], why
/// the points the replication made are unusable.
fn run_hook_torn(
    transport: &dyn crate::ssh::Transport,
    host: &str,
    cmd: &crate::template::Command,
) -> Result<(f64, String), (String, Option<String>)> {
    let text = cmd
        .expose(|n| std::env::var(n).ok())
        .map_err(|e| (e.to_string(), None))?;
    let began = std::time::Instant::now();
    let out = transport
        .exec(host, &text, std::time::Duration::from_secs(600))
        .map_err(|e| (e.to_string(), None))?;
    if out.exit_code != 0 {
        return Err(hook_failed(host, out.exit_code, &out.stderr));
    }
    Ok((began.elapsed().as_secs_f64(), out.stdout))
}

/// Why a hook that exited with `code` on `host` failed, and, when that code is
/// [`crate::replica::snapshot::TORN`], why the points the replication made are unusable.
fn hook_failed(host: &str, code: i32, stderr: &str) -> (String, Option<String>) {
    (
        format!("exited with {code} on {host}: {}", stderr.trim()),
        (code == crate::replica::snapshot::TORN)
            .then(|| crate::replica::snapshot::torn_why(stderr)),
    )
}

/// What a hook printed, each line for `vm`.
fn hook_lines(vm: &str, stdout: &str) -> String {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{vm}: {}\n", l.trim_end()))
        .collect()
}

/// The snapshot of a running vm, made by `replicate-begin`: merged back by `replicate-end`
/// on every way out, a panic included.
pub(super) struct Snapshot<'a> {
    transport: &'a dyn crate::ssh::Transport,
    vm: String,
    end: Option<(String, crate::template::Command)>,
    /// The disks are read while the guest runs frozen (`replicate_reads_live`): only
    /// `replicate-end` says whether the freeze held through the copy.
    live: bool,
    /// The read window of the vm's disks, once its marks are left: checked before
    /// `replicate-end` (a snapshot merged back writes the disks).
    window: Option<(String, Window)>,
}

/// How [`Snapshot::end`] ended.
pub(super) struct Ending {
    /// What to print.
    pub(super) said: Option<String>,
    /// The failure, with, when the points made are unusable, why.
    pub(super) failed: Result<(), (String, Option<String>)>,
    /// Whether the points held until the end ([`Snapshot::confirms`]) may be confirmed: the
    /// read window found no disk written (a `replicate-end` that failed otherwise, but did
    /// not say the copy may be torn, says nothing of the disks' reads), or, read live, the
    /// end said the freeze held.
    pub(super) held: bool,
}

impl Snapshot<'_> {
    /// Whether the points wait for the end to say the disks are of one instant: read live
    /// under a freeze whose end says it held, or read in a window its check closes
    /// ([`crate::replica::Point::pending`]).
    pub(super) fn confirms(&self) -> bool {
        self.live && self.end.is_some() || self.window.is_some()
    }

    /// What the end said when the points it held are confirmed.
    pub(super) fn held(&self) -> &'static str {
        match self.window {
            Some(_) => "no disk was written while they were read",
            None => "the freeze held through the copy",
        }
    }

    /// Runs `replicate-end` now: what to print. A failure says why, and, when the hook said
    /// the copy may be torn ([`crate::replica::snapshot::TORN`]), why the points made are
    /// unusable.
    pub(super) fn end(mut self) -> Ending {
        let window = self.window.take();
        let end = self.end.take();
        let (checked, ended) = check_then_end(self.transport, window.as_ref(), end.as_ref());
        let said_torn = matches!(&ended, Some(Err((_, Some(_)))));
        let held = match &checked {
            Some(found) => matches!(found, Ok(c) if c.is_empty()) && !said_torn,
            None => matches!(&ended, Some(Ok(_))),
        };
        let torn = checked.and_then(|found| Window::torn_why(&self.vm, &found));
        let mut said = None;
        let mut failed: Option<(String, Option<String>)> = torn.map(|why| {
            (
                format!(
                    "error: {}: {why}; replicate it again once nothing else writes them\n",
                    self.vm
                ),
                Some(why),
            )
        });
        let mut fail = |e: String, why: Option<String>| {
            failed = Some(match failed.take() {
                None => (e, why),
                Some((first, first_why)) => (format!("{first}{e}"), first_why.or(why)),
            });
        };
        match (ended, end) {
            (None, _) | (_, None) => {}
            (Some(Ok((secs, out))), Some((host, _))) => {
                said = Some(format!(
                    "{}{}: snapshot merged back (replicate-end on {host}, {secs:.1}s)\n",
                    hook_lines(&self.vm, &out),
                    self.vm
                ))
            }
            (Some(Err((e, Some(why)))), _) => fail(
                format!("error: {}: replicate-end {e}\n", self.vm),
                Some(why),
            ),
            (Some(Err((e, None))), Some((host, cmd))) => fail(
                format!(
                    "error: {}: its snapshot was NOT merged back (replicate-end {e}): the vm still writes to overlays; run on {host}: {}\n",
                    self.vm, cmd
                ),
                self.live
                    .then(|| crate::replica::snapshot::unconfirmed_why(&e)),
            ),
        }
        Ending {
            said,
            failed: failed.map_or(Ok(()), Err),
            held,
        }
    }
}

/// Closes the read `window` (what its check found) and then runs `replicate-end` (its
/// duration and output, or why it failed): in one remote command when both go to one host,
/// the end alone again when that command did not say it ran.
#[allow(clippy::type_complexity)]
fn check_then_end(
    transport: &dyn crate::ssh::Transport,
    window: Option<&(String, Window)>,
    end: Option<&(String, crate::template::Command)>,
) -> (
    Option<Result<Vec<String>, String>>,
    Option<Result<(f64, String), (String, Option<String>)>>,
) {
    let deadline = std::time::Duration::from_secs(600);
    let check_alone = |host: &str, w: &Window| w.close(transport, host);
    let end_alone =
        |(host, cmd): &(String, crate::template::Command)| run_hook_torn(transport, host, cmd);
    let (Some((wh, w)), Some((eh, cmd))) = (window, end) else {
        return (window.map(|(h, w)| check_alone(h, w)), end.map(end_alone));
    };
    let Ok(text) = cmd.expose(|n| std::env::var(n).ok()) else {
        return (
            Some(check_alone(wh, w)),
            Some(end_alone(end.expect("some"))),
        );
    };
    if wh != eh {
        return (
            Some(check_alone(wh, w)),
            Some(end_alone(end.expect("some"))),
        );
    }
    let nonce = batch::nonce();
    let check = w.check_command();
    let steps = [
        Step {
            command: &check,
            stop_if_said: None,
        },
        Step {
            command: &text,
            stop_if_said: None,
        },
    ];
    tracing::debug!(
        host = eh,
        end = %text.chars().take(100).collect::<String>(),
        "the read window's check, then replicate-end, in one command"
    );
    let began = std::time::Instant::now();
    let ran = match transport.exec(eh, &batch::script(&nonce, &steps), deadline) {
        Ok(out) => batch::parse(&nonce, out.stdout.as_bytes(), &out.stderr),
        Err(e) => {
            tracing::debug!(host = eh, error = %e, "the window's check and replicate-end, at once: cut");
            Vec::new()
        }
    };
    let secs = began.elapsed().as_secs_f64();
    let checked = match ran.first() {
        Some(r) => w.changed(&String::from_utf8_lossy(&r.stdout), &r.stderr),
        None => Err(format!("its check on {wh} did not answer")),
    };
    let ended = match ran.get(1) {
        Some(r) if r.exit_code == 0 => Ok((secs, String::from_utf8_lossy(&r.stdout).into_owned())),
        Some(r) => Err(hook_failed(eh, r.exit_code, &r.stderr)),
        // Not said to have run: alone (it finds nothing left to do when it had).
        None => end_alone(end.expect("some")),
    };
    (Some(checked), Some(ended))
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        if let Some((host, cmd)) = self.end.take() {
            let _ = run_hook(self.transport, &host, &cmd);
        }
    }
}

/// Merges back a snapshot left by an interrupted replication of `vm`: `false` when it could
/// not be (said in `out`; the vm is then not replicated).
fn settle_snapshot(
    model: &Model,
    transport: &crate::ssh::SshTransport,
    vm: &VmImages,
    out: &mut Outcome,
) -> bool {
    let hook = |action| {
        (!vm.backup)
            .then(|| snapshot_hook(model, &vm.id, action))
            .flatten()
    };
    // A snapshot left by an interrupted replication: its disks are stale (the vm writes
    // to the overlay) and a new snapshot would fail; merged back before anything else.
    if let (Some((host, check)), Some((_, end))) = (hook("replicate-check"), hook("replicate-end"))
    {
        let settled = match (
            check.expose(|n| std::env::var(n).ok()),
            end.expose(|n| std::env::var(n).ok()),
        ) {
            (Ok(c), Ok(e)) => {
                crate::replica::snapshot::settle(transport, &host, &c, &e, &end.to_string())
            }
            (Err(m), _) | (_, Err(m)) => Err(format!("secret {m} is not set in the environment")),
        };
        match settled {
            Ok(Some(note)) => out.stdout.push_str(&format!("{}: {note}\n", vm.id)),
            Ok(None) => {}
            Err(e) => {
                out.stderr
                    .push_str(&format!("error: {}: {e}; not replicated\n", vm.id));
                out.code = exit::FAILED;
                return false;
            }
        }
    }
    true
}

/// Where preparing a vm's copy one step at a time starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Settle,
    Definition,
}

/// Gets `vm`'s disks ready to be read: the definition captured (`None` when its driver
/// carries none) and the snapshot to merge back after the copy; `None` when the vm must not
/// be copied (said in `out`). `frozen` is set once a snapshot may have been made.
pub(super) fn prepare<'t>(
    model: &Model,
    transport: &'t crate::ssh::SshTransport,
    helpers: &Helpers,
    vm: &VmImages,
    stopped: &dyn Fn() -> bool,
    out: &mut Outcome,
    frozen: &mut bool,
) -> Option<(Option<String>, Snapshot<'t>)> {
    let (definition, mut snapshot) =
        match at_once(model, transport, helpers, vm, stopped, out, frozen) {
            AtOnce::Ready(definition, snapshot) => (definition, snapshot),
            AtOnce::Refused => return None,
            AtOnce::From(stage) => one_by_one(model, transport, helpers, vm, stage, out, frozen)?,
        };
    // The read window, when the steps before did not open it.
    if snapshot.window.is_none()
        && let Some((host, w)) = window_of(model, vm)
    {
        if let Err(e) = w.open(transport, &host) {
            out.stderr.push_str(&format!(
                "error: {}: {e}: whether its disks are written between their reads could not be told, so they are not read; not replicated, its copy is as it was\n",
                vm.id
            ));
            out.code = exit::FAILED;
            if let Err((e, _)) = snapshot.end().failed {
                out.stderr.push_str(&e);
            }
            return None;
        }
        snapshot.window = Some((host, w));
    }
    Some((definition, snapshot))
}

/// The read window of `vm`'s disks on their host ([`Window`]): none for a backup set, a
/// single disk, or disks read live under a freeze (`replicate_reads_live`).
pub(super) fn window_of(model: &Model, vm: &VmImages) -> Option<(String, Window)> {
    if vm.backup || super::replicate::reads_live(model, &vm.id) {
        return None;
    }
    let host = &vm.images.first()?.from;
    let files: Vec<String> = vm
        .images
        .iter()
        .filter(|i| &i.from == host)
        .map(|i| i.src.clone())
        .collect();
    Window::of(&vm.id, &files).map(|w| (host.clone(), w))
}

/// The steps of [`prepare`] from `from`, one command each.
fn one_by_one<'t>(
    model: &Model,
    transport: &'t crate::ssh::SshTransport,
    helpers: &Helpers,
    vm: &VmImages,
    from: Stage,
    out: &mut Outcome,
    frozen: &mut bool,
) -> Option<(Option<String>, Snapshot<'t>)> {
    if from == Stage::Settle && !settle_snapshot(model, transport, vm, out) {
        return None;
    }
    // The vm's definition goes with the point, beside the copy of its first disk: read
    // before the snapshot, which points the defined domain at its overlays.
    let definition = capture_definition(model, helpers, vm, out).ok()?;
    let hook = |action| {
        (!vm.backup)
            .then(|| snapshot_hook(model, &vm.id, action))
            .flatten()
    };
    // A running vm's disks are frozen by its driver's snapshot while they are read.
    let mut snapshot = Snapshot {
        transport,
        vm: vm.id.clone(),
        end: None,
        live: super::replicate::reads_live(model, &vm.id),
        window: None,
    };
    if let Some((host, cmd)) = hook("replicate-begin") {
        // Whatever its result, the end runs: a begin cut half-way may have made overlays.
        snapshot.end = hook("replicate-end");
        *frozen = true;
        match run_hook(transport, &host, &cmd) {
            Ok((secs, said)) => out.stdout.push_str(&format!(
                "{}{}: disks frozen for the copy (replicate-begin on {host}, {secs:.1}s)\n",
                hook_lines(&vm.id, &said),
                vm.id
            )),
            Err(e) => {
                not_frozen(vm, &e, snapshot, out);
                return None;
            }
        }
    }
    Some((definition, snapshot))
}

/// Says that `vm`'s snapshot could not be made, and merges back what it may have made.
fn not_frozen(vm: &VmImages, why: &str, snapshot: Snapshot, out: &mut Outcome) {
    out.stderr.push_str(&format!(
        "error: {}: its snapshot could not be made (replicate-begin {why}); not replicated, its copy is as it was\n",
        vm.id
    ));
    out.code = exit::FAILED;
    // Nothing was copied: a copy said torn made no point.
    if let Err((e, _)) = snapshot.end().failed {
        out.stderr.push_str(&e);
    }
}

/// What the one command of [`at_once`] did.
enum AtOnce<'t> {
    /// Every step done.
    Ready(Option<String>, Snapshot<'t>),
    /// The vm must not be copied (said).
    Refused,
    /// Go on one step at a time from this stage.
    From(Stage),
}

/// The commands of [`prepare`] on the vm's host, in one remote command, when there are two
/// or more of them on one host.
fn at_once<'t>(
    model: &Model,
    transport: &'t crate::ssh::SshTransport,
    helpers: &Helpers,
    vm: &VmImages,
    stopped: &dyn Fn() -> bool,
    out: &mut Outcome,
    frozen: &mut bool,
) -> AtOnce<'t> {
    let alone = AtOnce::From(Stage::Settle);
    if vm.backup {
        return alone;
    }
    let hook = |action| snapshot_hook(model, &vm.id, action);
    let check = hook("replicate-check").filter(|_| hook("replicate-end").is_some());
    let capture = capture_action(model, vm).filter(|_| !vm.images.is_empty());
    let begin = hook("replicate-begin");
    let window = window_of(model, vm);
    let hosts: Vec<&str> = [
        check.as_ref().map(|(h, _)| h.as_str()),
        capture.as_ref().map(|(h, _, _)| h.as_str()),
        begin.as_ref().map(|(h, _)| h.as_str()),
        window.as_ref().map(|(h, _)| h.as_str()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let Some(&host) = hosts.first() else {
        return alone;
    };
    if hosts.len() < 2 || hosts.iter().any(|h| *h != host) {
        return alone;
    }
    // A secret that is not set: said by the step that needs it, one at a time.
    let expose = |c: Option<&crate::template::Command>| match c {
        None => Ok(None),
        Some(c) => c.expose(|n| std::env::var(n).ok()).map(Some),
    };
    let (Ok(check_text), Ok(capture_text), Ok(begin_text)) = (
        expose(check.as_ref().map(|(_, c)| c)),
        expose(capture.as_ref().map(|(_, c, _)| c)),
        expose(begin.as_ref().map(|(_, c)| c)),
    ) else {
        return alone;
    };
    let mut owned: Vec<(String, Option<&str>)> = Vec::new();
    let mut add = |text: Option<String>, said| {
        text.map(|t| {
            owned.push((t, said));
            owned.len() - 1
        })
    };
    // Any `overlay` in the check's output stops the batch (a superset of what `overlays`
    // reads).
    let ic = add(check_text, Some("overlay"));
    let id = add(capture_text, None);
    let ib = add(begin_text, None);
    // The read window's marks, once the disks are frozen.
    let iw = add(window.as_ref().map(|(_, w)| w.open_command()), None);
    let steps: Vec<Step> = owned
        .iter()
        .map(|(command, said)| Step {
            command,
            stop_if_said: *said,
        })
        .collect();
    let nonce = batch::nonce();
    let began = std::time::Instant::now();
    let limit = crate::vmdef::MAX_BYTES as u64 + (1 << 20);
    let deadline = std::time::Duration::from_secs(600 + 120 + 600);
    let answer =
        match helpers.run_command(host, &batch::script(&nonce, &steps), &[], limit, deadline) {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(host, error = %e, "the steps before the copy, at once: cut");
                // How far it went is not known: a snapshot it made is found and merged back by
                // the check, one step at a time; after a stop, only that, and no copy starts.
                if stopped() {
                    if ib.is_some() {
                        *frozen = true;
                    }
                    settle_snapshot(model, transport, vm, out);
                    return AtOnce::Refused;
                }
                return alone;
            }
        };
    let secs = began.elapsed().as_secs_f64();
    let ran = batch::parse(&nonce, &answer.stdout, &answer.stderr);
    // The check: nothing left, said cleanly; else the one-step settling decides.
    if let Some(i) = ic {
        let Some(r) = ran.get(i) else {
            return alone;
        };
        let said = String::from_utf8_lossy(&r.stdout);
        if r.exit_code != 0
            || said.contains("overlay")
            || !crate::replica::snapshot::overlays(&said).is_empty()
        {
            return alone;
        }
    }
    // The definition: a failure is said by capturing it again, alone (the snapshot was not
    // begun: the batch stops at a failed step).
    let mut snapshot = Snapshot {
        transport,
        vm: vm.id.clone(),
        end: None,
        live: super::replicate::reads_live(model, &vm.id),
        window: None,
    };
    if ib.is_some() {
        // From here the begin may have run: whatever comes, the end runs.
        snapshot.end = hook("replicate-end");
    }
    let definition = match (id, &capture) {
        (Some(i), Some((_, _, format))) => match ran.get(i) {
            Some(r) if r.exit_code != 0 => {
                // Not begun: the batch stopped at the definition.
                snapshot.end = None;
                return AtOnce::From(Stage::Definition);
            }
            None => {
                // Its end was not seen (its output cut short, say): whether the steps after
                // it ran is not known. The snapshot's end runs as `snapshot` goes (merging
                // back whatever was begun), and the steps are done again from the check.
                if ib.is_some() {
                    *frozen = true;
                }
                return AtOnce::From(Stage::Settle);
            }
            Some(r) => {
                let first = &vm.images[0];
                let kept = crate::replica::definitions::keep(
                    helpers, *format, host, &r.stdout, &first.to, &first.dst,
                );
                if ib.is_some() {
                    *frozen = true;
                }
                match said_definition(vm, host, kept, out) {
                    Ok(h) => h,
                    // The snapshot begun after it is merged back when `snapshot` goes.
                    Err(()) => return AtOnce::Refused,
                }
            }
        },
        _ => None,
    };
    if let Some(i) = ib {
        *frozen = true;
        match ran.get(i) {
            Some(r) if r.exit_code == 0 => out.stdout.push_str(&format!(
                "{}{}: disks frozen for the copy (replicate-begin on {host}, with the steps before it in one command: {secs:.1}s)\n",
                hook_lines(&vm.id, &String::from_utf8_lossy(&r.stdout)),
                vm.id
            )),
            Some(r) => {
                let why = format!("exited with {} on {host}: {}", r.exit_code, r.stderr.trim());
                not_frozen(vm, &why, snapshot, out);
                return AtOnce::Refused;
            }
            None => {
                let why = format!(
                    "did not finish on {host}: {}",
                    answer.stderr.trim().lines().last().unwrap_or("no word of why")
                );
                not_frozen(vm, &why, snapshot, out);
                return AtOnce::Refused;
            }
        }
    }
    // Else opened alone by `prepare`.
    if let (Some(i), Some(w)) = (iw, window)
        && ran.get(i).is_some_and(|r| r.exit_code == 0)
    {
        snapshot.window = Some(w);
    }
    AtOnce::Ready(definition, snapshot)
}
