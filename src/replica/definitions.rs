//! Vm definitions carried with replica points: captured on the source host by the driver's
//! `definition` action, checked ([`crate::vmdef::Definition::parse`]), stored beside the
//! recovery copy of the vm's first disk through the helper protocol
//! ([`Helpers::put_definition`]: atomically, named by its BLAKE3, which the new point
//! records), read back for the point a vm starts from, and given to the driver's `define`
//! action on the host it starts on. Every definition is checked again where it is used.
//!
//! The mechanism knows nothing of a format: the driver names its format
//! (`definition_format`), and [`crate::vmdef`] reads and fits it.

use std::time::Duration;

use super::remote::Helpers;
use crate::vmdef::{self, Definition, Format};

/// Runs the driver's `definition` action on `from` and stores what it prints beside the
/// copy `to:first_copy`: the BLAKE3 the new point records.
pub fn capture(
    helpers: &Helpers,
    format: Format,
    from: &str,
    command: &str,
    to: &str,
    first_copy: &str,
) -> Result<String, String> {
    let out = helpers
        .run_command(
            from,
            command,
            &[],
            vmdef::MAX_BYTES as u64,
            Duration::from_secs(120),
        )
        .map_err(|e| format!("its definition could not be read on {from}: {e}"))?;
    if out.exit_code != 0 {
        return Err(format!(
            "its definition could not be read on {from} (`definition` exited with {}): {}",
            out.exit_code,
            out.stderr.trim()
        ));
    }
    keep(helpers, format, from, &out.stdout, to, first_copy)
}

/// Checks the definition `from` printed and stores it on `to` beside `first_copy`: its
/// BLAKE3.
pub fn keep(
    helpers: &Helpers,
    format: Format,
    from: &str,
    text: &[u8],
    to: &str,
    first_copy: &str,
) -> Result<String, String> {
    Definition::parse(format, text)
        .map_err(|e| format!("the definition {from} gave is refused: {e}"))?;
    helpers
        .put_definition(to, first_copy, text)
        .map_err(|e| format!("its definition could not be stored on {to}: {e}"))
}

/// The definition point `point` of the copy `host:copy` records, checked; its BLAKE3, and whether
/// the point's copies are raw images of the disks as the guest sees them (`changed_blocks`).
pub fn fetch(
    helpers: &Helpers,
    format: Format,
    host: &str,
    copy: &str,
    point: &str,
) -> Result<(Definition, String, bool), String> {
    let d = helpers
        .definition(host, copy, point)
        .map_err(|e| e.to_string())?;
    // The definition the point recorded, and no other: an answer about another point (a
    // helper that mixed them up) would define the vm from another configuration.
    let points = helpers
        .points(host, copy)
        .map_err(|e| format!("cannot read the points of {host}:{copy}: {e}"))?;
    let recorded = points.iter().find(|p| p.id == point).map(|p| &p.definition);
    if let Some(problem) = unlike_recorded(recorded, &d.blake3, &format!("{host}:{copy}"), point) {
        return Err(problem);
    }
    let def = Definition::parse(format, d.text.as_bytes()).map_err(|e| {
        format!("the definition of point {point} of {host}:{copy} cannot be used: {e}")
    })?;
    Ok((def, d.blake3, d.guest_view))
}

/// Why a definition of BLAKE3 `got`, answered for point `point` of `copy`, is not the one
/// that point records (`recorded`: `None`, no such point; `Some(None)`, it records none).
/// Pure.
fn unlike_recorded(
    recorded: Option<&Option<String>>,
    got: &str,
    copy: &str,
    point: &str,
) -> Option<String> {
    match recorded {
        Some(Some(h)) if h == got => None,
        Some(Some(h)) => Some(format!(
            "the definition answered for point {point} of {copy} has the BLAKE3 {got}, and the point records {h}: it is another point's, refused (the vm is not defined from it)"
        )),
        Some(None) => Some(format!(
            "point {point} of {copy} records no definition, yet one was answered: refused"
        )),
        None => Some(format!(
            "{copy} has no point {point} now: its definition is not used (replicate, or name a point it has)"
        )),
    }
}

/// Gives a fitted definition to the driver's `define` action on `host`.
pub fn define(helpers: &Helpers, host: &str, command: &str, text: &str) -> Result<String, String> {
    let out = helpers
        .run_command(
            host,
            command,
            text.as_bytes(),
            64 << 10,
            Duration::from_secs(120),
        )
        .map_err(|e| format!("cannot define the vm on {host}: {e}"))?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.exit_code != 0 {
        return Err(format!(
            "`define` exited with {} on {host}: {}{}",
            out.exit_code,
            out.stderr.trim(),
            if said.is_empty() {
                String::new()
            } else {
                format!(" ({said})")
            }
        ));
    }
    Ok(said)
}

/// Keeps `def`, the definition last used to define `name` on `host`, in the state
/// folder's `definitions/HOST/NAME.xml` (`.conf` for a Proxmox configuration; written whole,
/// then renamed).
pub fn record(
    dir: &std::path::Path,
    host: &str,
    name: &str,
    def: &Definition,
) -> std::io::Result<()> {
    let folder = dir.join(host);
    std::fs::create_dir_all(&folder)?;
    let ext = def.format().extension();
    let tmp = folder.join(format!(".{name}.{ext}.tmp"));
    std::fs::write(&tmp, def.canonical())?;
    std::fs::rename(&tmp, folder.join(format!("{name}.{ext}")))
}

/// The definition last used to define `name` on `host`, when one was kept.
pub fn recorded(dir: &std::path::Path, host: &str, name: &str, format: Format) -> Option<String> {
    let path = dir
        .join(host)
        .join(format!("{name}.{}", format.extension()));
    let bytes = std::fs::read(path).ok()?;
    Definition::parse(format, &bytes)
        .ok()
        .map(|d| d.canonical())
}

/// A vm that a plan defines, and the definition it would be defined from if the plan ran
/// now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prospect {
    /// The vm step that defines it.
    pub step: String,
    pub vm: String,
    /// Where it is defined, under which name.
    pub host: String,
    pub name: String,
    pub format: Format,
    /// Where its definition would come from.
    pub source: String,
    /// The definition (canonical, before it is fitted) when it fits the host; else why it
    /// cannot be used there.
    pub result: Result<String, String>,
}

/// For every vm `plan` defines: the definition it would use now, fitted to its host (read
/// only: nothing is defined). A plan whose replicate step captures the vm's definition
/// (a planned failover's last replication, a failback's reverse one) will use what the
/// source host holds then, so that is what is read; otherwise, for a drill or a failback, the
/// newest point of the copy (which the copy is; refused when bad), for a failover the newest
/// that is not bad (which the start rolls the copies back to); it must hold one.
pub fn prospects(
    helpers: &Helpers,
    plan: &crate::plan::Plan,
    secrets: &(dyn Fn(&str) -> Option<String> + Sync),
) -> Vec<Prospect> {
    use crate::plan::{Action, Replicated};
    let mut out = Vec::new();
    for step in &plan.steps {
        let Some(replica) = &step.replica else {
            continue;
        };
        let Some(d) = &replica.define else {
            continue;
        };
        let capture = plan.steps.iter().find_map(|s| match &s.action_spec {
            Action::Replicate {
                what: Replicated::Vm(vm),
                from_host,
                capture: Some((cmd, _)),
                ..
            } if *vm == replica.vm => Some((s.id.clone(), from_host.clone(), cmd.clone())),
            _ => None,
        });
        let (source, def) = match capture {
            Some((id, from, cmd)) => (
                format!("the definition {from} holds now (step {id} captures it)"),
                cmd.expose(secrets)
                    .map_err(|missing| format!("secret {missing} is not set in the environment"))
                    .and_then(|text| read_current(helpers, d.format, &from, &text)),
            ),
            // A failover rolls the copies back to the newest good point; a drill and a
            // failback start the vm on them as they are: its newest point's definition.
            None => match if replica.role == crate::plan::ReplicaRole::Start {
                newest_good(helpers, &d.from_host, &d.from_copies)
            } else {
                newest(helpers, &d.from_host, &d.from_copies)
            } {
                Ok((point, copy)) => (
                    format!("point {point} of {}:{copy}", d.from_host),
                    fetch(helpers, d.format, &d.from_host, &copy, &point).map(|(def, _, _)| def),
                ),
                Err(e) => (
                    format!(
                        "{}:{}",
                        d.from_host,
                        d.from_copies.first().map_or("", String::as_str)
                    ),
                    Err(e),
                ),
            },
        };
        let result = def.and_then(|def| {
            vmdef::rewrite(&def, &d.fit)
                .map(|_| def.canonical())
                .map_err(|e| format!("it cannot be defined on {}: {e}", d.host))
        });
        out.push(Prospect {
            step: step.id.clone(),
            vm: replica.vm.clone(),
            host: d.host.clone(),
            name: d.fit.name.clone(),
            format: d.format,
            source,
            result,
        });
    }
    out
}

/// The definition the driver's `definition` action prints on `host` now, checked.
pub fn read_current(
    helpers: &Helpers,
    format: Format,
    host: &str,
    command: &str,
) -> Result<Definition, String> {
    let out = helpers
        .run_command(
            host,
            command,
            &[],
            vmdef::MAX_BYTES as u64,
            Duration::from_secs(120),
        )
        .map_err(|e| format!("its definition could not be read on {host}: {e}"))?;
    if out.exit_code != 0 {
        return Err(format!(
            "its definition could not be read on {host} (`definition` exited with {}): {}",
            out.exit_code,
            out.stderr.trim()
        ));
    }
    Definition::parse(format, &out.stdout)
        .map_err(|e| format!("the definition {host} gave is refused: {e}"))
}

/// The newest point of the vm's copies on `host` (`copies`: its disks, first first), which
/// its disks are and which must hold a definition; and the copy that holds it. A bad newest
/// point is refused: an older point's definition would not describe the disks as they are.
pub fn newest(
    helpers: &Helpers,
    host: &str,
    copies: &[String],
) -> Result<(String, String), String> {
    let first = copies.first().ok_or("the vm has no disk")?;
    let points = helpers
        .points(host, first)
        .map_err(|e| format!("cannot read the points of {host}:{first}: {e}"))?;
    let id = newest_of(&points, &format!("{host}:{first}"))?;
    match holder(helpers, host, copies, &id)? {
        Some(copy) => Ok((id, copy)),
        None => Err(format!(
            "the newest point {id} of {host}:{first} holds no definition of the vm: replicate it again (each replication captures the definition)"
        )),
    }
}

/// The newest point of the vm's copies on `host` that is not bad (a failover rolls the copies
/// back to it), which must hold a definition; and the copy that holds it.
pub fn newest_good(
    helpers: &Helpers,
    host: &str,
    copies: &[String],
) -> Result<(String, String), String> {
    let first = copies.first().ok_or("the vm has no disk")?;
    let points = helpers
        .points(host, first)
        .map_err(|e| format!("cannot read the points of {host}:{first}: {e}"))?;
    let Some(p) = points
        .into_iter()
        .rev()
        .find(|p| p.verified != crate::replica::Verified::Bad)
    else {
        return Err(format!(
            "{host}:{first} has no usable point, so no definition of the vm: replicate it (each replication captures the definition)"
        ));
    };
    match holder(helpers, host, copies, &p.id)? {
        Some(copy) => Ok((p.id, copy)),
        None => Err(format!(
            "the newest usable point {} of {host}:{first} holds no definition of the vm: replicate it again (each replication captures the definition)",
            p.id
        )),
    }
}

/// The point of `points` (of the copy `copy`) whose definition describes the copy as it is:
/// its newest, unless it is bad. Pure.
fn newest_of(points: &[crate::replica::Point], copy: &str) -> Result<String, String> {
    match points.last() {
        None => Err(format!(
            "{copy} has no point, so no definition of the vm: replicate it (each replication captures the definition)"
        )),
        Some(p) if p.verified == crate::replica::Verified::Bad => Err(format!(
            "the newest point {} of {copy}, which its disks are, is bad: the definition of an older point would not describe them; replicate it again (each replication captures the definition)",
            p.id
        )),
        Some(p) => Ok(p.id.clone()),
    }
}

/// Which of the vm's copies on `host` records a definition with its point `point`: the one
/// of the disk that was the vm's first when the point was made (the inventory may list the
/// disks in another order since). `None` when none does.
pub fn holder(
    helpers: &Helpers,
    host: &str,
    copies: &[String],
    point: &str,
) -> Result<Option<String>, String> {
    for copy in copies {
        let points = helpers
            .points(host, copy)
            .map_err(|e| format!("cannot read the points of {host}:{copy}: {e}"))?;
        if points
            .iter()
            .any(|p| p.id == point && p.definition.is_some())
        {
            return Ok(Some(copy.clone()));
        }
    }
    Ok(None)
}

/// [`fetch`] from the copy of `copies` that holds point `point`'s definition (the first
/// copy, which then says why, when none does).
pub fn fetch_of(
    helpers: &Helpers,
    format: Format,
    host: &str,
    copies: &[String],
    point: &str,
) -> Result<(Definition, String, bool), String> {
    let copy = match holder(helpers, host, copies, point)? {
        Some(c) => c,
        None => copies.first().ok_or("the vm has no disk")?.clone(),
    };
    fetch(helpers, format, host, &copy, point)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_definition_is_used_only_when_its_point_records_it() {
        let h = "a".repeat(64);
        assert_eq!(
            unlike_recorded(Some(&Some(h.clone())), &h, "hv-pra:/c", "P2"),
            None
        );
        let other =
            unlike_recorded(Some(&Some("b".repeat(64))), &h, "hv-pra:/c", "P2").unwrap_or_default();
        assert!(
            other.contains("another point's") && other.contains("point P2 of hv-pra:/c"),
            "{other}"
        );
        assert!(
            unlike_recorded(Some(&None), &h, "hv-pra:/c", "P2")
                .is_some_and(|w| w.contains("records no definition"))
        );
        assert!(
            unlike_recorded(None, &h, "hv-pra:/c", "P2").is_some_and(|w| w.contains("no point P2"))
        );
    }
    use crate::replica::{Point, Verified};

    fn point(id: &str, verified: Verified) -> Point {
        Point {
            id: id.into(),
            taken_at: chrono::Utc::now(),
            source: "hv-main:/srv/db.qcow2".into(),
            size: 1,
            blake3: "00".into(),
            verified,
            checked_at: None,
            received_bytes: 0,
            duration_ms: 0,
            stamp: None,
            definition: Some("ab".into()),
            read: None,
            unusable: None,
            pending: false,
            newest_file: None,
            left_out: Vec::new(),
        }
    }

    /// A vm is defined from the definition of the point its disks are, its newest: never
    /// from an older one when the newest is bad.
    #[test]
    fn a_vm_is_never_defined_from_an_older_point_than_its_disks() {
        let copy = "hv-main:/srv/db.qcow2";
        let good = point("p1", Verified::Yes);
        assert_eq!(newest_of(std::slice::from_ref(&good), copy).unwrap(), "p1");
        assert_eq!(
            newest_of(&[good.clone(), point("p2", Verified::No)], copy).unwrap(),
            "p2"
        );
        let bad = newest_of(&[good, point("p2", Verified::Bad)], copy).unwrap_err();
        assert!(
            bad.contains(
                "the newest point p2 of hv-main:/srv/db.qcow2, which its disks are, is bad"
            ),
            "{bad}"
        );
        assert!(newest_of(&[], copy).unwrap_err().contains("has no point"));
    }
}
