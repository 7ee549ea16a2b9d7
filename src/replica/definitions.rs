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
use crate::vmdef::{self, Definition};

/// Runs the driver's `definition` action on `from` and stores what it prints beside the
/// copy `to:first_copy`: the BLAKE3 the new point records.
pub fn capture(
    helpers: &Helpers,
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
    Definition::parse(&out.stdout)
        .map_err(|e| format!("the definition {from} gave is refused: {e}"))?;
    helpers
        .put_definition(to, first_copy, &out.stdout)
        .map_err(|e| format!("its definition could not be stored on {to}: {e}"))
}

/// The definition point `point` of the copy `host:copy` records, checked.
pub fn fetch(
    helpers: &Helpers,
    host: &str,
    copy: &str,
    point: &str,
) -> Result<(Definition, String), String> {
    let d = helpers
        .definition(host, copy, point)
        .map_err(|e| e.to_string())?;
    let def = Definition::parse(d.text.as_bytes()).map_err(|e| {
        format!("the definition of point {point} of {host}:{copy} cannot be used: {e}")
    })?;
    Ok((def, d.blake3))
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

/// Keeps `canonical`, the definition last used to define `name` on `host`, in the state
/// folder's `definitions/HOST/NAME.xml` (written whole, then renamed).
pub fn record(
    dir: &std::path::Path,
    host: &str,
    name: &str,
    canonical: &str,
) -> std::io::Result<()> {
    let folder = dir.join(host);
    std::fs::create_dir_all(&folder)?;
    let tmp = folder.join(format!(".{name}.xml.tmp"));
    std::fs::write(&tmp, canonical)?;
    std::fs::rename(&tmp, folder.join(format!("{name}.xml")))
}

/// The definition last used to define `name` on `host`, when one was kept.
pub fn recorded(dir: &std::path::Path, host: &str, name: &str) -> Option<String> {
    let path = dir.join(host).join(format!("{name}.xml"));
    let bytes = std::fs::read(path).ok()?;
    Definition::parse(&bytes).ok().map(|d| d.canonical())
}
