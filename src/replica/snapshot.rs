//! The snapshot that freezes a running vm's disks while they are replicated (its driver's
//! `replicate-begin`: new writes go to overlays) must always be merged back
//! (`replicate-end`). One left behind (the replication was killed, the host rebooted) means
//! the vm writes to an overlay that no replication copies while its disk goes stale; every
//! later snapshot fails. The driver's `replicate-check` prints one `overlay …` line per overlay
//! left; [`settle`] merges them back before anything reads the disks, or stops with the
//! command to run by hand.
//!
//! Blocking: it runs commands on the vm's host through the transport.

use std::time::Duration;

use crate::ssh::Transport;

/// The overlays a `replicate-check` output names (`overlay DESCRIPTION` lines).
pub fn overlays(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("overlay "))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Why the driver's check could not tell.
fn check_failed(host: &str, code: i32, stderr: &str) -> String {
    format!(
        "cannot tell whether a replication snapshot is left on {host}: `replicate-check` exited with {code}{}",
        if stderr.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", stderr.trim())
        }
    )
}

/// Finds a snapshot left on `host` by `check` and merges it back with `end`: what was done
/// (`None`: nothing was left), or why the disks must not be read, with the command to run
/// (`shown_end`, secrets redacted).
pub fn settle(
    transport: &dyn Transport,
    host: &str,
    check: &str,
    end: &str,
    shown_end: &str,
) -> Result<Option<String>, String> {
    let deadline = Duration::from_secs(600);
    let run = |cmd: &str| {
        transport
            .exec(host, cmd, deadline)
            .map_err(|e| e.to_string())
    };
    let out = run(check)?;
    if out.exit_code != 0 {
        return Err(check_failed(host, out.exit_code, &out.stderr));
    }
    let left = overlays(&out.stdout);
    if left.is_empty() {
        return Ok(None);
    }
    let merged = run(end)?;
    let again = run(check)?;
    let still = overlays(&again.stdout);
    if merged.exit_code != 0 || again.exit_code != 0 || !still.is_empty() {
        return Err(format!(
            "a replication snapshot was left on {host} ({}): its disks are stale and the vm writes to the overlay; merging it back failed ({}). Merge it by hand on {host}: {shown_end}",
            left.join("; "),
            if merged.exit_code != 0 {
                format!("exit {}: {}", merged.exit_code, merged.stderr.trim())
            } else if again.exit_code != 0 {
                check_failed(host, again.exit_code, &again.stderr)
            } else {
                format!("still there: {}", still.join("; "))
            }
        ));
    }
    Ok(Some(format!(
        "a replication snapshot left on {host} by an interrupted replication was merged back first ({})",
        left.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    #[test]
    fn overlays_are_read_from_their_lines_only() {
        assert_eq!(
            super::overlays(
                "overlay disk vda uses /i/a.reprise-replicate\nnoise\noverlay file /i/b.reprise-replicate\noverlay \n"
            ),
            [
                "disk vda uses /i/a.reprise-replicate",
                "file /i/b.reprise-replicate"
            ]
        );
        assert!(super::overlays("").is_empty());
    }
}
