//! A vm's definition (its hypervisor configuration: Proxmox's `qm config`) travels with its
//! disks: after a replication of a vm, its driver's `config-capture` prints the definition on
//! the primary host and `config-store` keeps it on the recovery host, where the driver's
//! recovery-side actions (`start`, `drill-start`) define the vm from it.
//!
//! The definition kept is the one of the last replication, not one per point. It must not
//! be kept when the capture failed (a cut or empty definition would define a wrong vm).
//! Blocking: it runs commands on both hosts through the transport.

use std::time::Duration;

use crate::plan::DefinitionHooks;
use crate::ssh::Transport;

/// Captures the definition on the primary and keeps it on the recovery host: what to print,
/// or why it was not kept (the one kept before stays).
pub fn carry(
    transport: &dyn Transport,
    hooks: &DefinitionHooks,
    secret: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let deadline = Duration::from_secs(120);
    let capture = hooks
        .capture
        .expose(secret)
        .map_err(|m| format!("secret {m} is not set in the environment"))?;
    let store = hooks
        .store
        .expose(secret)
        .map_err(|m| format!("secret {m} is not set in the environment"))?;
    let out = transport
        .exec(&hooks.from, &capture, deadline)
        .map_err(|e| format!("its definition was not captured: {e}"))?;
    if out.exit_code != 0 || out.stdout.trim().is_empty() {
        return Err(format!(
            "its definition was not captured on {} (config-capture exited with {}{}): the recovery host keeps the one it had",
            hooks.from,
            out.exit_code,
            if out.stderr.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", out.stderr.trim())
            }
        ));
    }
    let kept = transport
        .exec_bytes(&hooks.to, &store, out.stdout.as_bytes(), deadline)
        .map_err(|e| format!("its definition was not kept on {}: {e}", hooks.to))?;
    if kept.exit_code != 0 {
        return Err(format!(
            "its definition was not kept on {} (config-store exited with {}: {})",
            hooks.to,
            kept.exit_code,
            kept.stderr.trim()
        ));
    }
    Ok(format!(
        "definition captured on {} and kept on {} ({} lines)",
        hooks.from,
        hooks.to,
        out.stdout.lines().count()
    ))
}
