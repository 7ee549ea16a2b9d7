//! A vm step's definition: the vm defined on the step's host from the definition of the point
//! it starts from (or, for a copy started as it is, what the host or the primary holds now),
//! fitted to that host, and what was defined undone with the step (see [`crate::vmdef`]).

use std::sync::Arc;

use super::context::{Outcome, RunContext};
use crate::event::StepStatus;
use crate::ssh::ExecOutput;

/// After a step that defined its vm: what it defined, when it succeeded (put back if the run
/// rolls it back). A step that failed puts back what it defined itself, and says so in its
/// message; one timed out or stopped, or failed while its vm `may_run`, leaves it (the start
/// may have taken effect).
pub(super) async fn settle(
    ctx: &Arc<RunContext>,
    out: &mut Outcome,
    defined: Option<Defined>,
    may_run: bool,
) -> Option<Defined> {
    let d = defined?;
    if out.status == StepStatus::Done {
        return Some(d);
    }
    let note = if out.status == StepStatus::Failed && !may_run {
        let transport = ctx.transport.clone();
        tokio::task::spawn_blocking(move || undo_define(transport.as_ref(), d).1)
            .await
            .unwrap_or_else(|e| format!("what was defined could not be undone: {e}"))
    } else {
        // Timed out or stopped: the start may still take effect; nothing is removed under a
        // vm that may be running.
        format!(
            "{} stays defined on {} from point {} (the start may still take effect)",
            d.name, d.host, d.point
        )
    };
    out.message = Some(match out.message.take() {
        Some(m) => format!("{m}; {note}"),
        None => note,
    });
    None
}

/// What a vm step defined before its command, undone with the step.
pub(super) struct Defined {
    pub(super) host: String,
    pub(super) name: String,
    pub(super) point: String,
    /// What was defined there under that name before, as the driver printed it; `None`:
    /// nothing was.
    pub(super) previous: Option<Vec<u8>>,
    /// The driver's `define` (puts `previous` back) and `undefine` (removes the new one).
    define: String,
    undefine: Option<String>,
}

/// Puts back what was defined before a start that failed or is undone: the previous
/// definition, or nothing. Whether it did, and exactly what it did or what it left.
pub(super) fn undo_define(transport: &dyn crate::ssh::Transport, d: Defined) -> (bool, String) {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let (host, name, point) = (&d.host, &d.name, &d.point);
    match (&d.previous, &d.undefine) {
        (Some(previous), _) => {
            let text = String::from_utf8_lossy(previous);
            match crate::replica::definitions::define(&helpers, host, &d.define, &text) {
                Ok(_) => (
                    true,
                    format!("the definition {name} had on {host} before this step was put back"),
                ),
                Err(e) => (
                    false,
                    format!(
                        "{name} is left defined on {host} from point {point}, not as it was before this step: putting its previous definition back failed ({e})"
                    ),
                ),
            }
        }
        (None, Some(undefine)) => match helpers.run_command(
            host,
            undefine,
            &[],
            64 << 10,
            std::time::Duration::from_secs(120),
        ) {
            Ok(out) if out.exit_code == 0 => (
                true,
                format!("{name}, defined on {host} for this step, was undefined again"),
            ),
            Ok(out) => (
                false,
                format!(
                    "{name} is left defined on {host} from point {point} (it was not before): `undefine` exited with {}: {}",
                    out.exit_code,
                    out.stderr.trim()
                ),
            ),
            Err(e) => (
                false,
                format!(
                    "{name} is left defined on {host} from point {point} (it was not before): `undefine` could not run: {e}"
                ),
            ),
        },
        (None, None) => (
            false,
            format!(
                "{name} is left defined on {host} from point {point} (it was not before; its driver has no `undefine` action): remove it by hand"
            ),
        ),
    }
}

/// A failover that starts a copy as it is (no point, named with --accept-unverified): no
/// definition comes with it, so none is defined; the vm starts as the host defines it now,
/// which must be a definition of it whose disks are its copies and whose NICs are on
/// networks the inventory maps to on that host. What was found, or why it cannot start.
pub(super) async fn keep_defined(
    ctx: &RunContext,
    d: &crate::plan::DefineUse,
    vm: &str,
) -> Result<String, String> {
    let (host, name) = (d.host.clone(), d.fit.name.clone());
    let cannot = {
        let (vm, host, name) = (vm.to_string(), host.clone(), name.clone());
        move |why: String| {
            format!(
                "vm {vm}: its copy is started as it is (no point), which brings no definition of the vm, and {why}: replicate it again (each replication captures the definition), or define {name} on {host} by hand"
            )
        }
    };
    let Some(current) = &d.current else {
        return Err(cannot(format!(
            "its driver cannot read what {host} defines (no `definition` action)"
        )));
    };
    let command = current
        .expose(|n| (ctx.secrets)(n))
        .map_err(|missing| format!("secret {missing} is not set in the environment"))?;
    // The host's definition is already fitted: its disks are the copies, its NICs on this
    // host's own networks.
    let (transport, fit, format) = (ctx.transport.clone(), d.fit.as_held(), d.format);
    tokio::task::spawn_blocking(move || {
        let helpers = crate::replica::remote::Helpers::new(transport.as_ref());
        let out = helpers
            .run_command(
                &host,
                &command,
                &[],
                crate::vmdef::MAX_BYTES as u64,
                std::time::Duration::from_secs(120),
            )
            .map_err(|e| cannot(format!("what {host} defines could not be read: {e}")))?;
        if out.exit_code != 0 {
            return Err(cannot(format!("{host} defines no {name}")));
        }
        let def = crate::vmdef::Definition::parse(format, &out.stdout)
            .map_err(|e| cannot(format!("what {host} defines as {name} is refused: {e}")))?;
        // A libvirt domain is its name; a Proxmox vm is its vmid, which `definition` names.
        if format == crate::vmdef::Format::LibvirtXml && def.name().as_deref() != Some(name.as_str()) {
            return Err(cannot(format!(
                "what {host} gives for {name} is the definition of {:?}",
                def.name().unwrap_or_default()
            )));
        }
        crate::vmdef::rewrite(&def, &fit).map_err(|e| {
            cannot(format!("what {host} defines as {name} cannot be started there: {e}"))
        })?;
        Ok(format!(
            "{name} is started as {host} defines it now (not redefined): its copy is started as it is, with no point, so no definition comes with it\n"
        ))
    })
    .await
    .map_err(|e| format!("the definition task failed: {e}"))?
}

/// Where a vm step's definition comes from.
pub(super) enum Source<'a> {
    /// The definition of this point (`None`, for a failback: the newest point of the
    /// primary's copy that has one).
    Point(Option<String>),
    /// A drill of copy started as it is (no point, no definition with it) of this vm: the
    /// definition its primary holds now.
    PrimaryNow(&'a str),
}

/// Defines the vm on the step's host from the definition `source` gives, fitted to that
/// host: what was done.
pub(super) async fn define_vm(
    ctx: &RunContext,
    d: &crate::plan::DefineUse,
    source: Source<'_>,
) -> Result<(String, Defined), String> {
    let expose = |c: &crate::template::Command| {
        c.expose(|n| (ctx.secrets)(n))
            .map_err(|missing| format!("secret {missing} is not set in the environment"))
    };
    let command = expose(&d.command)?;
    let current = d.current.as_ref().map(expose).transpose()?;
    let undefine = d.undefine.as_ref().map(expose).transpose()?;
    let source = match source {
        Source::Point(p) => Ok(p),
        Source::PrimaryNow(vm) => match &d.primary {
            Some((host, cmd)) => Err((host.clone(), expose(cmd)?)),
            None => {
                return Err(format!(
                    "vm {vm}: its copy is started as it is (no point), which brings no definition of the vm, and its driver cannot read the one its primary holds: replicate it again (each replication captures the definition)"
                ));
            }
        },
    };
    let (transport, d2, record) = (
        ctx.transport.clone(),
        d.clone(),
        ctx.options.definitions_dir.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let helpers = crate::replica::remote::Helpers::new(transport.as_ref());
        let mut d = d2;
        let (def, point, from) = match source {
            Ok(point) => {
                let point = match point {
                    Some(p) => p,
                    // A failback: the newest point the reverse replication made, never an
                    // older definition for the disks as they are.
                    None => {
                        crate::replica::definitions::newest(&helpers, &d.from_host, &d.from_copies)?
                            .0
                    }
                };
                let (def, hash, guest_view) = crate::replica::definitions::fetch_of(
                    &helpers,
                    d.format,
                    &d.from_host,
                    &d.from_copies,
                    &point,
                )?;
                // Copies read as the guest sees its disks are raw, whatever the primary's
                // disks are: the vm reads them as raw (a drill's overlays stay qcow2).
                if guest_view && d.fit.disk_format.is_none() {
                    d.fit.disk_format = Some("raw".into());
                }
                d.fit.copies_raw = guest_view;
                let from = format!("the definition of point {point} (BLAKE3 {})", &hash[..16]);
                (def, point, from)
            }
            // A drill of a copy started as it is: what the primary holds now.
            Err((primary, cmd)) => {
                let def =
                    crate::replica::definitions::read_current(&helpers, d.format, &primary, &cmd)?;
                let from = format!(
                    "the definition {primary} holds now (its copy is started as it is, with no point, so no definition comes with it)"
                );
                (def, "none (as it is)".to_string(), from)
            }
        };
        let fitted = crate::vmdef::rewrite(&def, &d.fit)
            .map_err(|e| format!("{from} cannot be defined on {}: {e}", d.host))?;
        // What is defined there now, put back if the start fails.
        let previous = match &current {
            None => None,
            Some(cur) => {
                let out = helpers
                    .run_command(
                        &d.host,
                        cur,
                        &[],
                        crate::vmdef::MAX_BYTES as u64,
                        std::time::Duration::from_secs(120),
                    )
                    .map_err(|e| {
                        format!(
                            "cannot read what is defined as {} on {}: {e}",
                            d.fit.name, d.host
                        )
                    })?;
                let said = ExecOutput {
                    exit_code: out.exit_code,
                    stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                    stderr: out.stderr.clone(),
                    truncated: false,
                    timed_out: false,
                    duration: out.duration,
                };
                if out.exit_code == 0 {
                    Some(out.stdout)
                } else if super::exec::said_not_defined(&said) {
                    None
                } else {
                    // Taken for "nothing defined", a start that fails would remove what is.
                    return Err(format!(
                        "cannot tell what is defined as {} on {} (exit {}: {}): nothing was defined (a driver's `definition` says a vm is not defined there by printing a line `not defined` and exiting non-zero)",
                        d.fit.name,
                        d.host,
                        out.exit_code,
                        out.stderr.trim()
                    ));
                }
            }
        };
        let said = crate::replica::definitions::define(&helpers, &d.host, &command, &fitted.text)?;
        if let Some(dir) = record {
            // The last definition used on that host for that name: the next dry run
            // shows what changed since.
            let _ =
                crate::replica::definitions::record(&dir, &d.host, &d.fit.name, &def);
        }
        let mut note = format!("{} defined on {} from {from}", d.fit.name, d.host);
        for n in fitted.notes {
            note.push_str(&format!("; {n}"));
        }
        if !said.is_empty() {
            note.push_str(&format!(": {said}"));
        }
        let done = Defined {
            host: d.host.clone(),
            name: d.fit.name.clone(),
            point,
            previous,
            define: command,
            undefine,
        };
        Ok((note + "\n", done))
    })
    .await
    .map_err(|e| format!("the definition task failed: {e}"))?
}
