//! A replication's driver hooks on the source host (`replicate-begin` freezes a running vm's
//! disks while they are read, `replicate-end` thaws them), run with the run's secrets.

use std::time::Duration as StdDuration;

use super::context::RunContext;
use crate::plan::SnapshotHooks;
use crate::template::Command;

/// A vm's disks frozen for the copy: where, and the two hooks.
pub(super) struct Freeze {
    host: String,
    begin: Command,
    end: Command,
    /// The disks are read while the guest runs frozen (`replicate_reads_live`): only
    /// `replicate-end` says whether the freeze held through the copy.
    live: bool,
}

impl Freeze {
    /// The freeze a vm's driver offers (its `replicate-begin`), if any.
    pub(super) fn of(hooks: Option<&SnapshotHooks>) -> Option<Freeze> {
        let h = hooks?;
        Some(Freeze {
            host: h.host.clone(),
            begin: h.begin.clone()?,
            end: h.end.clone(),
            live: h.live,
        })
    }

    /// Freezes the disks; what the hook printed goes to `report`.
    pub(super) async fn begin(&self, ctx: &RunContext, report: &mut String) -> Result<(), String> {
        let host = &self.host;
        match run_hook(ctx, host, &self.begin).await {
            Ok(out) => {
                report.push_str(&out);
                Ok(())
            }
            Err(e) => Err(format!(
                "the disks could not be frozen for the copy (replicate-begin on {host}: {e}); not replicated, the copy keeps its last point"
            )),
        }
    }

    /// Thaws the disks (on every way out, after `begin` failed too). A failure says why, and,
    /// when the hook said the copy may be torn ([`crate::replica::snapshot::TORN`]), or failed
    /// otherwise after disks read live (it alone says whether the freeze held), why the points
    /// made are unusable.
    pub(super) async fn end(
        &self,
        ctx: &RunContext,
        report: &mut String,
    ) -> Result<(), (String, Option<String>)> {
        let (host, end) = (&self.host, &self.end);
        match run_hook(ctx, host, end).await {
            Ok(out) => {
                report.push_str(&out);
                Ok(())
            }
            Err(HookFailed {
                message,
                torn: Some(why),
            }) => Err((format!("replicate-end on {host} {message}"), Some(why))),
            Err(HookFailed { message, .. }) => Err((
                format!(
                    "what froze the disks was NOT undone (replicate-end on {host}: {message}); run on {host}: {end}"
                ),
                self.live
                    .then(|| crate::replica::snapshot::unconfirmed_why(&message)),
            )),
        }
    }
}

/// Why a hook failed, and, when it exited with [`crate::replica::snapshot::TORN`], why the
/// points the replication made are unusable.
pub(super) struct HookFailed {
    message: String,
    torn: Option<String>,
}

impl std::fmt::Display for HookFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for HookFailed {
    fn from(message: String) -> Self {
        HookFailed {
            message,
            torn: None,
        }
    }
}

/// Runs a driver hook of a replication on `host`: its output, or why it failed.
pub(super) async fn run_hook(
    ctx: &RunContext,
    host: &str,
    cmd: &Command,
) -> Result<String, HookFailed> {
    let text = cmd
        .expose(|n| (ctx.secrets)(n))
        .map_err(|missing| format!("secret {missing} is not set in the environment"))?;
    let (transport, host) = (ctx.transport.clone(), host.to_string());
    let out = tokio::task::spawn_blocking(move || {
        transport.exec(&host, &text, StdDuration::from_secs(600))
    })
    .await
    .map_err(|e| format!("the hook task failed: {e}"))?
    .map_err(|e| e.to_string())?;
    if out.exit_code != 0 {
        return Err(HookFailed {
            message: format!("exited with {}: {}", out.exit_code, out.stderr.trim()),
            torn: (out.exit_code == crate::replica::snapshot::TORN)
                .then(|| crate::replica::snapshot::torn_why(&out.stderr)),
        });
    }
    Ok(out.stdout)
}
