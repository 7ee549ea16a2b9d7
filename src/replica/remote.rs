//! The orchestrator's side of replication: deploys the helper (this very binary) to a cache
//! folder of each host, asks the recovery side for its manifest and pipes the source helper
//! into the recovery helper over SSH. Blocking: callers keep it off async workers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::helper::Checked;
use super::store::{Applied, Point};
use crate::ssh::{SshError, Transport};
use crate::template::shell_quote;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("cannot read this program to deploy it as the helper ({path}): {reason}")]
    Exe { path: String, reason: String },
    #[error("deploying the helper to {host} failed: {reason}")]
    Deploy { host: String, reason: String },
    #[error("{host}: {reason}")]
    Helper { host: String, reason: String },
}

/// What one image's replication did.
#[derive(Debug, Clone)]
pub struct ImageTransfer {
    pub from: String,
    pub src: String,
    pub to: String,
    pub dst: String,
    /// Bytes of the block stream (source to recovery), and of the manifest (the other way).
    pub sent_bytes: u64,
    pub manifest_bytes: u64,
    pub duration: Duration,
    pub applied: Applied,
    /// What `applied.blocks` counts: `blocks` of an image or `files` of a backup set.
    pub unit: &'static str,
}

impl ImageTransfer {
    /// `hv-main:/a.qcow2 → hv-pra:/a.qcow2: point P, 12.0 MB sent in 1.2s (10.0 MB/s), …`
    pub fn line(&self) -> String {
        let secs = self.duration.as_secs_f64().max(0.001);
        let total = self.sent_bytes + self.manifest_bytes;
        format!(
            "{}:{} → {}:{}: point {}, {} bytes sent ({} of data, {} of manifest) in {:.1}s ({:.1} MB/s), {} {} changed, {} bytes in all, blake3 {}{}\n",
            self.from,
            self.src,
            self.to,
            self.dst,
            self.applied.point.id,
            total,
            self.sent_bytes,
            self.manifest_bytes,
            secs,
            total as f64 / secs / 1e6,
            self.applied.blocks,
            self.unit,
            self.applied.point.size,
            self.applied.point.blake3,
            self.applied
                .recovered
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
        )
    }
}

/// What a new point is called and how many to keep.
#[derive(Debug, Clone)]
pub struct Replication {
    pub point: String,
    pub taken_at: DateTime<Utc>,
    pub retention: u32,
    /// Hash the recovery copy again instead of trusting its manifest.
    pub reread: bool,
    pub deadline: Duration,
}

/// The helper deployed on hosts, for one orchestrator process.
pub struct Helpers<'a> {
    transport: &'a dyn Transport,
    deployed: Mutex<HashMap<String, ()>>,
}

/// This binary: its path, bytes and BLAKE3.
type Binary = (PathBuf, Vec<u8>, String);

/// This binary, read once.
fn this_binary() -> Result<&'static Binary, ReplicaError> {
    static EXE: OnceLock<Result<Binary, ReplicaError>> = OnceLock::new();
    EXE.get_or_init(|| {
        let path = std::env::current_exe().map_err(|e| ReplicaError::Exe {
            path: "reprise".into(),
            reason: e.to_string(),
        })?;
        let bytes = std::fs::read(&path).map_err(|e| ReplicaError::Exe {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        Ok((path, bytes, hash))
    })
    .as_ref()
    .map_err(Clone::clone)
}

impl<'a> Helpers<'a> {
    pub fn new(transport: &'a dyn Transport) -> Helpers<'a> {
        Helpers {
            transport,
            deployed: Mutex::new(HashMap::new()),
        }
    }

    /// The shell words that run the helper on a host (once deployed).
    fn command(&self, hash: &str, args: &str) -> String {
        format!(
            "H=\"${{XDG_CACHE_HOME:-$HOME/.cache}}/reprise/helper-{hash}\"; exec \"$H\" helper {args}"
        )
    }

    /// Uploads the helper to `host` unless a verified copy is there.
    fn deploy(&self, host: &str) -> Result<String, ReplicaError> {
        let (_, bytes, hash) = this_binary()?;
        if self
            .deployed
            .lock()
            .expect("not poisoned")
            .contains_key(host)
        {
            return Ok(hash.clone());
        }
        let path = format!("H=\"${{XDG_CACHE_HOME:-$HOME/.cache}}/reprise/helper-{hash}\"");
        let probe = self.transport.exec_bytes(
            host,
            &format!(
                "{path}; if [ -x \"$H\" ]; then touch \"$H\"; echo present; else echo missing; fi"
            ),
            &[],
            Duration::from_secs(60),
        )?;
        if String::from_utf8_lossy(&probe.stdout).trim() != "present" {
            // Written under a temporary name, checked by hash on the host, then renamed: a
            // cut upload or two uploads at once never leave a wrong helper under its name.
            // Helpers of other versions unused for a week (a use touches it) are removed.
            let upload = self.transport.exec_bytes(
                host,
                &format!(
                    "{path}; mkdir -p \"$(dirname \"$H\")\" && t=\"$H.part.$$\" && cat > \"$t\" && chmod 755 \"$t\" \
                     && s=$(\"$t\" helper hash \"$t\") && [ \"$s\" = {hash} ] && mv -f \"$t\" \"$H\"; r=$?; rm -f \"$t\"; \
                     find \"$(dirname \"$H\")\" -maxdepth 1 -name 'helper-*' -mtime +7 -delete 2>/dev/null; \
                     [ $r = 0 ] || echo \"the uploaded copy hashes to '$s', expected {hash}\" >&2; exit $r"
                ),
                bytes,
                Duration::from_secs(600),
            )?;
            if upload.exit_code != 0 {
                return Err(ReplicaError::Deploy {
                    host: host.to_string(),
                    reason: format!("exit {}: {}", upload.exit_code, upload.stderr.trim()),
                });
            }
        }
        self.deployed
            .lock()
            .expect("not poisoned")
            .insert(host.to_string(), ());
        Ok(hash.clone())
    }

    /// Runs the helper on `host` with `args`; its standard output.
    fn call(
        &self,
        host: &str,
        args: &str,
        input: &[u8],
        deadline: Duration,
    ) -> Result<Vec<u8>, ReplicaError> {
        let hash = self.deploy(host)?;
        let out = self
            .transport
            .exec_bytes(host, &self.command(&hash, args), input, deadline)?;
        if out.exit_code != 0 {
            return Err(ReplicaError::Helper {
                host: host.to_string(),
                reason: helper_error(&out.stderr, out.exit_code),
            });
        }
        Ok(out.stdout)
    }

    /// Brings `to:dst` up to date with `from:src` and makes it a new point.
    pub fn replicate(
        &self,
        from: &str,
        src: &str,
        to: &str,
        dst: &str,
        r: &Replication,
    ) -> Result<ImageTransfer, ReplicaError> {
        self.transfer(
            ["manifest", "send", "apply", "blocks"],
            from,
            src,
            to,
            dst,
            r,
        )
    }

    /// Brings the folder `to:dst` up to date with `from:src` (a backup set), file by file,
    /// and makes it a new point.
    pub fn replicate_tree(
        &self,
        from: &str,
        src: &str,
        to: &str,
        dst: &str,
        r: &Replication,
    ) -> Result<ImageTransfer, ReplicaError> {
        self.transfer(
            ["tree-base", "send-tree", "apply-tree", "files"],
            from,
            src,
            to,
            dst,
            r,
        )
    }

    /// One transfer: the recovery side's base (`verbs[0]`), then the source's stream
    /// (`verbs[1]`) piped into the recovery side's apply (`verbs[2]`); `verbs[3]` is the unit
    /// of what changed.
    fn transfer(
        &self,
        [base_verb, send_verb, apply_verb, unit]: [&'static str; 4],
        from: &str,
        src: &str,
        to: &str,
        dst: &str,
        r: &Replication,
    ) -> Result<ImageTransfer, ReplicaError> {
        let began = std::time::Instant::now();
        let q = |s: &str| shell_quote(s);
        let from_hash = self.deploy(from)?;
        let base = self.call(
            to,
            &format!(
                "{base_verb} {}{}",
                q(dst),
                if r.reread { " --reread" } else { "" }
            ),
            &[],
            r.deadline,
        )?;
        let to_hash = self.deploy(to)?;
        let send = self.command(&from_hash, &format!("{send_verb} {}", q(src)));
        let apply = self.command(
            &to_hash,
            &format!(
                "{apply_verb} {} --point {} --taken-at {} --source {} --retention {}",
                q(dst),
                q(&r.point),
                q(&r.taken_at.to_rfc3339()),
                q(&format!("{from}:{src}")),
                r.retention
            ),
        );
        self.finish(from, src, to, dst, &send, &base, &apply, r, began)
            .map(|t| ImageTransfer { unit, ..t })
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        from: &str,
        src: &str,
        to: &str,
        dst: &str,
        send: &str,
        input: &[u8],
        apply: &str,
        r: &Replication,
        began: std::time::Instant,
    ) -> Result<ImageTransfer, ReplicaError> {
        let piped = self
            .transport
            .pipe_with_input(from, send, input, to, apply, r.deadline)
            .map_err(|e| ReplicaError::Helper {
                host: to.to_string(),
                reason: format!("replicating {from}:{src} to {to}:{dst} failed: {e}"),
            })?;
        if piped.read_exit != 0 || piped.write_exit != 0 {
            let host = if piped.read_exit != 0 { from } else { to };
            return Err(ReplicaError::Helper {
                host: host.to_string(),
                reason: format!(
                    "replicating {from}:{src} to {to}:{dst} failed (source exit {}, recovery exit {}): {}",
                    piped.read_exit,
                    piped.write_exit,
                    helper_error(&piped.stderr, piped.write_exit)
                ),
            });
        }
        let applied: Applied =
            serde_json::from_str(&piped.output).map_err(|e| ReplicaError::Helper {
                host: to.to_string(),
                reason: format!("the helper's answer is not understood ({e})"),
            })?;
        Ok(ImageTransfer {
            from: from.to_string(),
            src: src.to_string(),
            to: to.to_string(),
            dst: dst.to_string(),
            sent_bytes: piped.bytes,
            manifest_bytes: input.len() as u64,
            duration: began.elapsed(),
            applied,
            unit: "blocks",
        })
    }

    /// The points of `host:image`, oldest first.
    pub fn points(&self, host: &str, image: &str) -> Result<Vec<Point>, ReplicaError> {
        let out = self.call(
            host,
            &format!("points {}", shell_quote(image)),
            &[],
            Duration::from_secs(60),
        )?;
        serde_json::from_slice(&out).map_err(|e| ReplicaError::Helper {
            host: host.to_string(),
            reason: format!("the helper's answer is not understood ({e})"),
        })
    }

    /// Verifies one point of `host:image`, or all.
    pub fn verify(
        &self,
        host: &str,
        image: &str,
        point: Option<&str>,
    ) -> Result<Vec<Checked>, ReplicaError> {
        let args = match point {
            Some(p) => format!("verify {} --point {}", shell_quote(image), shell_quote(p)),
            None => format!("verify {}", shell_quote(image)),
        };
        let out = self.call(host, &args, &[], Duration::from_secs(7200))?;
        serde_json::from_slice(&out).map_err(|e| ReplicaError::Helper {
            host: host.to_string(),
            reason: format!("the helper's answer is not understood ({e})"),
        })
    }

    /// Writes point `point` of `host:image` to `host:output`.
    pub fn restore(
        &self,
        host: &str,
        image: &str,
        point: &str,
        output: &str,
    ) -> Result<(), ReplicaError> {
        self.call(
            host,
            &format!(
                "restore {} --point {} --output {}",
                shell_quote(image),
                shell_quote(point),
                shell_quote(output)
            ),
            &[],
            Duration::from_secs(7200),
        )
        .map(|_| ())
    }
}

impl Helpers<'_> {
    /// Rolls `host:image` back to its point `point` (newer points are dropped).
    pub fn roll_back(
        &self,
        host: &str,
        image: &str,
        point: &str,
    ) -> Result<crate::replica::store::RolledBack, ReplicaError> {
        let out = self.call(
            host,
            &format!(
                "roll-back {} --point {}",
                shell_quote(image),
                shell_quote(point)
            ),
            &[],
            Duration::from_secs(7200),
        )?;
        serde_json::from_slice(&out).map_err(|e| ReplicaError::Helper {
            host: host.to_string(),
            reason: format!("the helper's answer is not understood ({e})"),
        })
    }
}

/// The helper's error line, without its `error: ` prefix.
fn helper_error(stderr: &str, code: i32) -> String {
    let text = stderr
        .lines()
        .map(|l| l.trim_start_matches("error: "))
        .collect::<Vec<_>>()
        .join("; ");
    if text.is_empty() {
        format!("the helper exited with {code}")
    } else {
        text
    }
}

/// A point id from the time its source was read: `20261128T031000Z`.
pub fn point_id(at: DateTime<Utc>) -> String {
    at.format("%Y%m%dT%H%M%SZ").to_string()
}

/// The path of a disk image on a host: `images_dir/disk`.
pub fn image_path(dir: &str, disk: &str) -> String {
    Path::new(dir.trim_end_matches('/'))
        .join(disk)
        .display()
        .to_string()
}
