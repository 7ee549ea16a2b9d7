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

/// The exit code of a driver's `replicate-end` that says the copy just made may be torn (the
/// guest's filesystems were thawed before the copy ended): the points that replication made
/// are marked unusable ([`crate::replica::Point::unusable`]), and no run starts from them.
pub const TORN: i32 = 65;

/// What marking a torn replication's points did, said for its step or its output.
pub fn torn_note(marked: Result<Vec<String>, String>) -> String {
    match marked {
        Ok(m) if m.is_empty() => "the copy may be torn, and it made no point".to_string(),
        Ok(m) => format!(
            "the copy may be torn: marked unusable, no run starts from it: {}",
            m.join(", ")
        ),
        Err(e) => format!(
            "the copy may be torn, and its points could NOT be marked unusable ({e}): do not start from them (`reprise points`), replicate again"
        ),
    }
}

/// What [`super::remote::Helpers::confirm`] did, in words: what `held` (the freeze, or the
/// read window: nothing wrote the disks while they were read), and the points held until
/// then are good; or they stay unusable, and what to do.
pub fn confirm_note(held: &str, confirmed: Result<Vec<String>, String>) -> Result<String, String> {
    match confirmed {
        Ok(c) => Ok(format!("{held}: points confirmed: {}", c.join(", "))),
        Err(e) => Err(format!(
            "{held}, but its points could NOT be confirmed ({e}): they stay unusable; replicate again"
        )),
    }
}

/// Why the points of a replication whose `replicate-end` exited with [`TORN`] are unusable.
pub fn torn_why(said: &str) -> String {
    let said = said.trim();
    let said: String = said.chars().take(300).collect();
    format!("its source's replicate-end said it may be torn: {said}")
}

/// Why the points of a replication are unusable when its vm's disks were read while the guest
/// ran frozen (`replicate_reads_live`) and `replicate-end`, which says whether the freeze held
/// through the copy, failed otherwise (`failed`): whether the copy is of one instant is not
/// known.
pub fn unconfirmed_why(failed: &str) -> String {
    let failed: String = failed.trim().chars().take(300).collect();
    format!(
        "its disks were read while the guest ran frozen, and its source's replicate-end, which says whether the freeze held through the copy, failed ({failed}): it may be torn"
    )
}

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
    // An answer cut at the output limit may have lost its `overlay` lines: never "none left".
    let cut = |out: &crate::ssh::ExecOutput| {
        out.truncated.then(|| {
            format!(
                "the driver's snapshot check on {host} printed more than reprise reads, so whether a replication snapshot is left cannot be told; make it print less (its `overlay` lines)"
            )
        })
    };
    let out = run(check)?;
    if out.exit_code != 0 {
        return Err(check_failed(host, out.exit_code, &out.stderr));
    }
    if let Some(e) = cut(&out) {
        return Err(e);
    }
    let left = overlays(&out.stdout);
    if left.is_empty() {
        return Ok(None);
    }
    let merged = run(end)?;
    let again = run(check)?;
    if let Some(e) = cut(&again) {
        return Err(e);
    }
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
pub(crate) mod tests {
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

    /// A host whose answer to `check` reprise cut at its output limit.
    pub(crate) struct Cut;

    impl crate::ssh::Transport for Cut {
        fn exec(
            &self,
            _host: &str,
            command: &str,
            _deadline: std::time::Duration,
        ) -> Result<crate::ssh::ExecOutput, crate::ssh::SshError> {
            // (Run as is, or under `LC_ALL=C` by the changed-blocks path.)
            assert!(command.ends_with("check"), "only the check runs: {command}");
            Ok(crate::ssh::ExecOutput {
                exit_code: 0,
                stdout: "noise\n".repeat(100),
                stderr: String::new(),
                truncated: true,
                timed_out: false,
                duration: std::time::Duration::ZERO,
            })
        }
    }

    /// An answer cut at the limit may have lost the lines that name a snapshot left: it never
    /// passes for "none left", and nothing is merged.
    #[test]
    fn a_check_answer_cut_at_the_limit_is_never_taken_for_no_snapshot_left() {
        let e = super::settle(&Cut, "hv-main", "check", "end", "end")
            .expect_err("an answer cut short tells nothing");
        assert!(e.contains("printed more than reprise reads"), "{e}");
    }
}
