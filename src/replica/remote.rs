//! The orchestrator's side of replication: deploys the helper (this very binary) to a cache
//! folder of each host, asks the recovery side for its manifest and pipes the source helper
//! into the recovery helper over SSH. Blocking: callers keep it off async workers.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout};

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::helper::Checked;
use super::protocol::{Hello, NOT_KEPT, PROTOCOL, Request, VERSION};
use super::store::{Applied, Point};
use crate::ssh::{PipeOutput, Said, SshError, Transport};
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
    #[error("--here {host}: {reason}")]
    NotHere { host: String, reason: String },
    #[error(
        "{host}: its reprise helper speaks {theirs}; this reprise speaks protocol {ours} (reprise {version}): refusing to use it ({fix})"
    )]
    Protocol {
        host: String,
        theirs: String,
        ours: u32,
        version: &'static str,
        fix: String,
    },
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
            "{}:{} → {}:{}: point {}, {} bytes sent ({} of data, {} of manifest) in {:.1}s ({:.1} MB/s), {} {} changed{}, {} bytes in all, blake3 {}{}{}{}\n",
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
            match &self.applied.point.read {
                None => String::new(),
                Some(h) => format!(
                    " (read: {}{}{})",
                    h.mode,
                    h.why.as_ref().map(|w| format!(": {w}")).unwrap_or_default(),
                    h.checkpoint
                        .as_ref()
                        .map(|c| format!("; checkpoint {c}"))
                        .unwrap_or_default(),
                ),
            },
            self.applied.point.size,
            self.applied.point.blake3,
            self.applied
                .recovered
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            if self.applied.point.pending {
                ", held until it is confirmed of one instant"
            } else {
                ""
            },
            left_out_said(&self.applied.point.left_out)
                .map(|l| format!("; {l}"))
                .unwrap_or_default(),
        )
    }
}

/// What a backup set's copy left out ([`Point::left_out`]), said with what to do; `None`
/// when nothing.
pub fn left_out_said(left_out: &[String]) -> Option<String> {
    (!left_out.is_empty()).then(|| {
        format!(
            "{LEFT_OUT}: {}; where a restore or a service needs them, make them again by hand (mkdir -p, ln -s: a link's target that is a full path, as it was on the source, pointed at the same file where the copy is)",
            left_out.join(", ")
        )
    })
}

/// How [`left_out_said`] begins.
pub const LEFT_OUT: &str = "not in the copy, which holds the set's files only";

/// How the source side reads an image as the guest sees it (through QEMU).
#[derive(Debug, Clone)]
pub struct GuestRead {
    /// libvirt's NBD export of the disk (socket, export name); none: a `qemu-nbd` of the
    /// image file (`format` qcow2), or the file itself (`format` raw).
    pub nbd: Option<(String, String)>,
    pub format: super::protocol::DiskFormat,
    /// The dirty bitmap whose blocks only are read.
    pub bitmap: Option<String>,
    /// Every block is read all the same, and checked against `bitmap` (`send --audit`).
    pub audit: bool,
    /// Bitmaps a qcow2 file read through `qemu-nbd` must hold (`send --mark`).
    pub marks: Vec<String>,
    /// What the point records.
    pub how: super::store::HowRead,
}

/// What a new point is called and how many to keep.
#[derive(Debug, Clone)]
pub struct Replication {
    pub point: String,
    pub taken_at: DateTime<Utc>,
    pub retention: u32,
    /// The BLAKE3 of the vm definition the new point records, stored beside the copy first
    /// ([`Helpers::put_definition`]).
    pub definition: Option<String>,
    /// Hash the recovery copy again instead of trusting its manifest.
    pub reread: bool,
    /// Compress the blocks of images with zstd on the source (backup sets are sent as they
    /// are).
    pub compress: bool,
    /// The vm's driver reads its disk files while the guest runs frozen
    /// (`replicate_reads_live`): a file written while it is read is not refused.
    pub live: bool,
    /// The points are held (`Point::pending`) until [`Helpers::confirm`] says the freeze
    /// they were read under held: disks read live under a freeze whose end says so.
    pub pending: bool,
    pub deadline: Duration,
    /// The reads of the vm's source disks while its snapshot freezes them: each source read
    /// to its end is said there, and none is read again ([`super::reads`]).
    pub reads: Option<std::sync::Arc<super::reads::Reads>>,
    /// A failback's copy back into the primary, judged by the failback first: written even
    /// where the target was written outside reprise since its newest point
    /// ([`super::store::NewPoint::overwrite_changed`]).
    pub overwrite_changed: bool,
}

/// A source's `send --after-go` started while its disk's freeze is made
/// ([`Helpers::start_send`]): its connection, its channel and its helper are ready when the
/// freeze holds, and it reads nothing until told to ([`super::protocol::GO`]). Dropped
/// unused, its input is closed and it is killed: the helper then ends without opening the
/// disk.
pub struct EarlySend {
    /// The recovery manifest's digest it reads against (asked before it started).
    digest: String,
    /// Its request, `base` and `after_go` set.
    send: Request,
    child: Option<Child>,
}

impl Drop for EarlySend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.stdin.take());
            kill_group(&child);
            let _ = child.wait();
        }
    }
}

/// The helper deployed on hosts, for one orchestrator process.
pub struct Helpers<'a> {
    transport: &'a dyn Transport,
    /// Per host: its helper found to be this one, or why not (a host is not tried twice by one
    /// command); none yet: its next command checks it first, in the same command.
    deployed: Mutex<HashMap<String, Result<(), ReplicaError>>>,
    /// Whether the transport's `--here` host was found to be this machine (asked once).
    here: Mutex<Option<Result<(), ReplicaError>>>,
    /// Per host, held while the helper is uploaded there: transfers running at once that
    /// all find it missing upload it once.
    uploading: Mutex<HashMap<String, std::sync::Arc<Mutex<()>>>>,
}

/// At most this many disks of one vm stream at once.
pub const STREAMS: usize = 4;

/// A host for [`Helpers::prepare`], and how many transfers at most read from it and write to
/// it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostUse<'h> {
    pub host: &'h str,
    pub reads: usize,
    pub writes: usize,
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
            here: Mutex::new(None),
            uploading: Mutex::new(HashMap::new()),
        }
    }

    /// Gets `hosts` ready at once (logged in, `--here` checked, the connection of bulk
    /// streams made, this program's hash known), so that the transfers do not wait for them
    /// one after the other. The helper is not asked anything yet: the first command to each
    /// host checks it (see [`Helpers::remote_command`]). Errors are left for the calls that
    /// need the host, which meet them again and report them.
    ///
    /// Transfers running at once each need a session of their own where they ask the
    /// recovery side for its manifest, and, when bulk streams are not channels of one
    /// connection ([`Transport::streams_take_sessions`]), on both sides of their stream: so
    /// many are opened at once, with the first (a login takes several round trips; waiting
    /// for a busy session would cost a whole transfer).
    pub fn prepare(&self, hosts: &[HostUse]) {
        std::thread::scope(|scope| self.prepare_in(scope, hosts));
    }

    /// [`Helpers::prepare`], the check of the `--here` host (a command over SSH to this
    /// very machine, and the helper's version) left running in `scope`: whatever needs it
    /// waits for it ([`Helpers::is_here`]), and the steps on the other hosts go on meanwhile.
    pub fn prepare_in<'s, 'e: 's>(
        &'e self,
        scope: &'s std::thread::Scope<'s, 'e>,
        hosts: &[HostUse],
    ) {
        if let Some(here) = self.transport.here()
            && hosts.iter().any(|u| u.host == here)
        {
            let here = here.to_string();
            scope.spawn(move || self.is_here(&here).is_ok());
        }
        let sessions = |u: &HostUse| {
            let n = if self.transport.streams_take_sessions() {
                u.reads.max(u.writes)
            } else {
                u.writes
            };
            n.clamp(1, STREAMS)
        };
        std::thread::scope(|scope| {
            scope.spawn(|| this_binary().is_ok());
            // The `--here` host (checked above) is not logged in to.
            for u in hosts
                .iter()
                .filter(|u| self.transport.here() != Some(u.host))
            {
                scope.spawn(move || {
                    // The bulk connection first: it logs in while the other one does.
                    self.transport.prepare_bulk(u.host);
                    self.transport.connect(u.host, sessions(u));
                });
            }
        });
    }

    /// Whether `host` is this machine: the transport's `--here` host, once its machine id
    /// and login user are found to be this machine's and this process's.
    fn is_here(&self, host: &str) -> Result<bool, ReplicaError> {
        if self.transport.here() != Some(host) {
            return Ok(false);
        }
        let mut checked = self.here.lock().expect("not poisoned");
        checked
            .get_or_insert_with(|| self.confirm_here(host))
            .clone()
            .map(|()| true)
    }

    fn confirm_here(&self, host: &str) -> Result<(), ReplicaError> {
        let not_here = |reason: String| ReplicaError::NotHere {
            host: host.to_string(),
            reason,
        };
        let mine = std::process::Command::new("sh")
            .arg("-c")
            .arg(IDENTITY)
            .output()
            .map_err(|e| not_here(format!("cannot read this machine's id: {e}")))?;
        let theirs = self.ask(host, IDENTITY, &[], 4096, Duration::from_secs(60))?;
        if !mine.status.success() || theirs.exit_code != 0 {
            return Err(not_here(format!(
                "cannot read the machine id: {}{}",
                String::from_utf8_lossy(&mine.stderr).trim(),
                theirs.stderr.trim()
            )));
        }
        same_machine(
            host,
            &String::from_utf8_lossy(&mine.stdout),
            &String::from_utf8_lossy(&theirs.stdout),
        )
        .map_err(not_here)?;
        // The helper here is this program's file, which an upgrade may have replaced since
        // this process started.
        let (code, out, err) =
            self.run_here(host, &Request::Version, &[], Duration::from_secs(60))?;
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "reprise".into());
        handshake(
            host,
            code,
            &out,
            &err,
            &format!("{exe} was replaced while this command ran: run it again"),
        )
    }

    /// Starts the helper on this machine with `req`, its standard streams piped, ended at
    /// `deadline` as a remote one is.
    fn spawn_here(
        &self,
        host: &str,
        req: &Request,
        deadline: Duration,
    ) -> Result<std::process::Child, ReplicaError> {
        let fail = |reason: String| ReplicaError::Helper {
            host: host.to_string(),
            reason,
        };
        let exe = std::env::current_exe()
            .map_err(|e| fail(format!("cannot find this program to run the helper: {e}")))?;
        tracing::debug!(host, request = shell_words(req), "helper here");
        std::process::Command::new("timeout")
            .arg("--kill-after=5")
            .arg(deadline.as_secs().max(1).to_string())
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "exec {} helper {}",
                shell_quote(&exe.display().to_string()),
                shell_words(req)
            ))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot start the helper here: {e}")))
    }

    /// Runs the helper on this machine with `input`; its exit code, output and errors.
    fn run_here(
        &self,
        host: &str,
        req: &Request,
        input: &[u8],
        deadline: Duration,
    ) -> Result<(i32, Vec<u8>, String), ReplicaError> {
        let mut child = self.spawn_here(host, req, deadline)?;
        let mut stdin = child.stdin.take().expect("piped");
        let out = std::thread::scope(|scope| {
            scope.spawn(move || stdin.write_all(input));
            child.wait_with_output()
        })
        .map_err(|e| ReplicaError::Helper {
            host: host.to_string(),
            reason: format!("the helper here: {e}"),
        })?;
        Ok((
            exit_status(out.status),
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Streams the source helper on `from` (over SSH, fed `base`) into the recovery helper
    /// on this machine (`to`): the data crosses SSH once. `read` is called as soon as the
    /// source has ended having sent all of its stream (exit 0, all of it handed to the
    /// recovery helper), while the recovery helper may still commit it.
    #[allow(clippy::too_many_arguments)]
    fn pipe_into_here(
        &self,
        from: &str,
        send: &str,
        base: &[u8],
        to: &str,
        apply: &Request,
        deadline: Duration,
        read: &dyn Fn(),
    ) -> Result<PipeOutput, ReplicaError> {
        let began = std::time::Instant::now();
        let mut child = self.spawn_here(to, apply, deadline)?;
        let mut stdin = Counted::new(child.stdin.take().expect("piped"));
        let (stdout, stderr) = (
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let (streamed, output, errors) = std::thread::scope(|scope| {
            let output = scope.spawn(|| read_all(stdout));
            let errors = scope.spawn(|| read_errors(stderr));
            let streamed =
                self.transport
                    .exec_stream(from, send, &mut &base[..], &mut stdin, deadline);
            // The end of the stream, or the source failed: the recovery helper sees it end.
            drop(stdin.inner.take());
            match &streamed {
                Err(_) => kill_group(&child),
                // The source ended having sent all of its stream, all of it handed to the
                // recovery helper, which may still commit it.
                Ok(s) if s.exit_code == 0 && !s.stopped_reading => read(),
                Ok(_) => {}
            }
            (
                streamed,
                output.join().unwrap_or_default(),
                errors.join().unwrap_or_default(),
            )
        });
        let write_exit = child.wait().map(exit_status).unwrap_or(-1);
        let read = match streamed {
            Ok(s) => s,
            // The recovery helper here stopped reading: its own error says why.
            Err(SshError::Local { .. }) if write_exit != 0 => crate::ssh::StreamOutput {
                exit_code: 0,
                stderr: String::new(),
                duration: began.elapsed(),
                stopped_reading: false,
            },
            Err(e) => return Err(e.into()),
        };
        Ok(PipeOutput {
            bytes: stdin.count,
            read_exit: read.exit_code,
            write_exit,
            write_failed_first: write_exit != 0 && read.exit_code == 0,
            stderr: format!("{}{errors}", read.stderr),
            output: String::from_utf8_lossy(&output).into_owned(),
            duration: began.elapsed(),
        })
    }

    /// Streams the source helper on this machine (`from`, fed `base`) into the recovery
    /// helper on `to` over SSH: the data crosses SSH once.
    fn pipe_from_here(
        &self,
        from: &str,
        send: &Request,
        base: &[u8],
        to: &str,
        apply: &str,
        deadline: Duration,
    ) -> Result<PipeOutput, ReplicaError> {
        let began = std::time::Instant::now();
        let mut child = self.spawn_here(from, send, deadline)?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut stdout = Counted::new(child.stdout.take().expect("piped"));
        let stderr = child.stderr.take().expect("piped");
        let mut answer = Capped::new(OUTPUT_LIMIT);
        let (streamed, errors) = std::thread::scope(|scope| {
            // The source reads all of the recovery manifest before it writes.
            scope.spawn(move || stdin.write_all(base));
            let errors = scope.spawn(|| read_errors(stderr));
            let streamed =
                self.transport
                    .exec_stream(to, apply, &mut stdout, &mut answer, deadline);
            if streamed.is_err() {
                kill_group(&child);
            }
            // Nobody reads the source any more: a helper still writing would never end.
            drop(stdout.inner.take());
            (streamed, errors.join().unwrap_or_default())
        });
        let read_exit = child.wait().map(exit_status).unwrap_or(-1);
        let written = match streamed {
            Ok(s) => s,
            // Reading the source helper here failed: its own error says why.
            Err(SshError::Local { .. }) if read_exit != 0 => crate::ssh::StreamOutput {
                exit_code: -1,
                stderr: String::new(),
                duration: began.elapsed(),
                stopped_reading: false,
            },
            Err(e) => return Err(e.into()),
        };
        // The recovery side stopped reading and failed: the source here only saw a closed
        // pipe; the recovery side's error is the one to tell.
        let write_failed_first = written.stopped_reading && written.exit_code != 0;
        Ok(PipeOutput {
            bytes: stdout.count,
            read_exit,
            write_exit: written.exit_code,
            write_failed_first,
            stderr: if write_failed_first {
                written.stderr
            } else {
                format!("{errors}{}", written.stderr)
            },
            output: String::from_utf8_lossy(&answer.bytes).into_owned(),
            duration: began.elapsed(),
        })
    }

    /// Both sides of a transfer as processes of this machine, when the transport carries bulk
    /// data through a client program (the OpenSSH client): `send` on `from` and `apply` on
    /// `to`, each run here (`--here`) or under that client. `None` when the transport streams
    /// itself.
    fn bulk_sides(
        &self,
        from: &str,
        send: &Request,
        to: &str,
        apply: &Request,
        deadline: Duration,
    ) -> Result<Option<(Child, Child)>, ReplicaError> {
        let side = |host: &str, req: &Request| self.bulk_side(host, req, deadline);
        // The side on another host first: whether it goes through a client program decides.
        let (first, second) = if self.is_here(to)? {
            ((from, send), (to, apply))
        } else {
            ((to, apply), (from, send))
        };
        let Some(mut one) = side(first.0, first.1)? else {
            return Ok(None);
        };
        let other = match side(second.0, second.1) {
            Ok(Some(other)) => other,
            result => {
                kill_group(&one);
                let _ = one.wait();
                return result.map(|_| None);
            }
        };
        Ok(Some(if first.0 == from {
            (one, other)
        } else {
            (other, one)
        }))
    }

    /// One side of a stream through client programs: a helper here, or `ssh` carrying it to
    /// `host`; `None` when the transport streams itself.
    fn bulk_side(
        &self,
        host: &str,
        req: &Request,
        deadline: Duration,
    ) -> Result<Option<Child>, ReplicaError> {
        if self.is_here(host)? {
            return self.spawn_here(host, req, deadline).map(Some);
        }
        let command = self.remote_command(host, req)?;
        Ok(self
            .transport
            .bulk_process(host, &command, deadline)
            .transpose()?)
    }

    /// The shell command that runs the helper on a host (once deployed) with `req`.
    fn command(&self, hash: &str, req: &Request) -> String {
        format!(
            "{}; exec \"$H\" helper {}",
            helper_path(hash),
            shell_words(req)
        )
    }

    /// The shell command that runs the helper on `host` with `req`. Until the helper there is
    /// known to be this one, the command checks it first, on the host: it runs the helper's
    /// [`Request::Version`] and runs `req` only when the answer is this program's; else it
    /// says what it found (no helper, or its answer) after [`GUARD_MARK`] and exits with
    /// [`GUARD_EXIT`], asking nothing else (see [`Helpers::guarded`]). The check costs no
    /// round trip of its own.
    fn remote_command(&self, host: &str, req: &Request) -> Result<String, ReplicaError> {
        let (_, _, hash) = this_binary()?;
        match self.deployed.lock().expect("not poisoned").get(host) {
            Some(Ok(())) => Ok(self.command(hash, req)),
            Some(Err(e)) => Err(e.clone()),
            None => {
                let hello = serde_json::to_string(&Hello::this()).expect("serializes");
                Ok(format!(
                    "{}; if [ -x \"$H\" ]; then touch -c \"$H\"; v=$(\"$H\" helper {} </dev/null 2>&1); c=$?; \
                     if [ $c = 0 ] && [ \"$v\" = {} ]; then exec \"$H\" helper {}; fi; \
                     printf '\\n{GUARD_MARK} %s %s\\n{GUARD_MARK} end\\n' \"$c\" \"$v\" >&2; \
                     else printf '\\n{GUARD_MARK} missing\\n{GUARD_MARK} end\\n' >&2; fi; exit {GUARD_EXIT}",
                    helper_path(hash),
                    shell_words(&Request::Version),
                    shell_quote(&hello),
                    shell_words(req)
                ))
            }
        }
    }

    /// What the check of [`Helpers::remote_command`] found on `host`, from the exit code
    /// and errors of a command sent to it (`last`: its words are the last of `stderr`, as a
    /// recovery side's follow a source's): `Ok(true)` when the command did not run because
    /// the helper was not there and has now been uploaded (run it again), `Ok(false)` when
    /// the command ran, an error when the helper there is refused (another protocol, or no
    /// answer: said naming both versions) or could not be uploaded.
    fn guarded(
        &self,
        host: &str,
        exit: i32,
        stderr: &str,
        last: bool,
    ) -> Result<bool, ReplicaError> {
        let mark = format!("\n{GUARD_MARK} ");
        let found = if last {
            stderr.rfind(&mark)
        } else {
            stderr.find(&mark)
        };
        let said = match found {
            Some(at) if exit == GUARD_EXIT => {
                let rest = &stderr[at + mark.len()..];
                // Up to its end line: what the other side of a stream said follows it.
                let end = format!("\n{GUARD_MARK} end");
                rest.split(&end).next().unwrap_or(rest).trim_end()
            }
            // It ran (or it was stopped before it could say): a command that ran proves the
            // helper; one stopped (by a signal, or by its deadline's `timeout`, 124, which may
            // have stopped the guard itself), or a helper the shell could not start (126,
            // 127), says nothing, and the next command checks again.
            _ => {
                if (0..=125).contains(&exit) && exit != GUARD_EXIT && exit != 124 {
                    self.deployed
                        .lock()
                        .expect("not poisoned")
                        .entry(host.to_string())
                        .or_insert(Ok(()));
                }
                return Ok(false);
            }
        };
        let done = if said == "missing" {
            let lock = self
                .uploading
                .lock()
                .expect("not poisoned")
                .entry(host.to_string())
                .or_default()
                .clone();
            let _one = lock.lock().expect("not poisoned");
            // Another transfer found it missing too and uploaded it meanwhile (or failed to).
            if let Some(known) = self.deployed.lock().expect("not poisoned").get(host) {
                return known.clone().map(|()| true);
            }
            self.upload(host)
        } else {
            let (code, text) = said.split_once(' ').unwrap_or((said, ""));
            let code = code.parse().unwrap_or(-1);
            handshake(host, code, text.as_bytes(), text, &fix(host))
        };
        self.deployed
            .lock()
            .expect("not poisoned")
            .insert(host.to_string(), done.clone());
        done.map(|()| true)
    }

    /// Finds the helper on `host` or uploads it, then asks its protocol (in the same
    /// command: no round trip of its own).
    fn upload(&self, host: &str) -> Result<(), ReplicaError> {
        let (_, bytes, hash) = this_binary()?;
        let path = helper_path(hash);
        let version = shell_words(&Request::Version);
        let fix = fix(host);
        let probe = self.ask(
            host,
            &format!(
                // `touch -c`: without it GNU touch opens the file for writing, and a helper
                // started from it at that moment (another command) fails: "Text file busy".
                "{path}; if [ -x \"$H\" ]; then touch -c \"$H\"; echo present; exec \"$H\" helper {version}; else echo missing; fi"
            ),
            &[],
            ANSWER_LIMIT,
            Duration::from_secs(60),
        )?;
        let text = String::from_utf8_lossy(&probe.stdout);
        let (first, rest) = text.split_once('\n').unwrap_or((&text, ""));
        if first.trim() == "present" {
            return handshake(host, probe.exit_code, rest.as_bytes(), &probe.stderr, &fix);
        }
        // Written under a temporary name, checked by hash on the host, then renamed: a
        // cut upload or two uploads at once never leave a wrong helper under its name.
        // Helpers of other versions unused for a week (a use touches it) are removed.
        let upload = self.ask(
            host,
            &format!(
                "{path}; mkdir -p \"$(dirname \"$H\")\" && t=\"$H.part.$$\" && cat > \"$t\" && chmod 755 \"$t\" \
                 && s=$(\"$t\" helper {}) && [ \"$s\" = {hash} ] && mv -f \"$t\" \"$H\"; r=$?; rm -f \"$t\"; \
                 find \"$(dirname \"$H\")\" -maxdepth 1 -name 'helper-*' -mtime +7 -delete 2>/dev/null; \
                 if [ $r != 0 ]; then echo \"the uploaded copy hashes to '$s', expected {hash}\" >&2; exit $r; fi; \
                 echo uploaded; exec \"$H\" helper {version}",
                shell_words(&Request::HashSelf)
            ),
            bytes,
            ANSWER_LIMIT,
            Duration::from_secs(600),
        )?;
        let Some(hello) = upload.stdout.strip_prefix(b"uploaded\n") else {
            return Err(ReplicaError::Deploy {
                host: host.to_string(),
                reason: format!("exit {}: {}", upload.exit_code, upload.stderr.trim()),
            });
        };
        handshake(host, upload.exit_code, hello, &upload.stderr, &fix)
    }

    /// Runs the helper on `host` with `req` and no input; its JSON answer.
    fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        host: &str,
        req: &Request,
        deadline: Duration,
    ) -> Result<T, ReplicaError> {
        answer(host, &self.call(host, req, &[], deadline)?)
    }

    /// Runs the helper on `host` with `req`; its standard output.
    fn call(
        &self,
        host: &str,
        req: &Request,
        input: &[u8],
        deadline: Duration,
    ) -> Result<Vec<u8>, ReplicaError> {
        if self.is_here(host)? {
            let (code, stdout, stderr) = self.run_here(host, req, input, deadline)?;
            if code != 0 {
                return Err(ReplicaError::Helper {
                    host: host.to_string(),
                    reason: helper_error(&stderr, code),
                });
            }
            return Ok(stdout);
        }
        let mut out = self.ask(
            host,
            &self.remote_command(host, req)?,
            input,
            req.answer_limit(),
            deadline,
        )?;
        if self.guarded(host, out.exit_code, &out.stderr, false)? {
            out = self.ask(
                host,
                &self.remote_command(host, req)?,
                input,
                req.answer_limit(),
                deadline,
            )?;
        }
        if out.exit_code != 0 {
            return Err(ReplicaError::Helper {
                host: host.to_string(),
                reason: helper_error(&out.stderr, out.exit_code),
            });
        }
        Ok(out.stdout)
    }

    /// Runs `command` on `host` with `input`; its answer, of which no more than `limit` bytes
    /// are read (a host answering without end is refused, not held in memory).
    fn ask(
        &self,
        host: &str,
        command: &str,
        input: &[u8],
        limit: u64,
        deadline: Duration,
    ) -> Result<crate::ssh::BytesOutput, ReplicaError> {
        let mut answer = Capped::new(limit);
        let out = self
            .transport
            .exec_stream(host, command, &mut &input[..], &mut answer, deadline)
            .map_err(|e| match e {
                SshError::Local { .. } if answer.over => ReplicaError::Helper {
                    host: host.to_string(),
                    reason: format!("its answer is longer than {limit} bytes: refused"),
                },
                e => e.into(),
            })?;
        Ok(crate::ssh::BytesOutput {
            exit_code: out.exit_code,
            stdout: answer.bytes,
            stderr: out.stderr,
            duration: out.duration,
        })
    }

    /// Runs a command (a driver's) on `host` with `input` on its standard input; its output,
    /// refused beyond `limit` bytes.
    pub fn run_command(
        &self,
        host: &str,
        command: &str,
        input: &[u8],
        limit: u64,
        deadline: Duration,
    ) -> Result<crate::ssh::BytesOutput, ReplicaError> {
        self.ask(host, command, input, limit, deadline)
    }

    /// Brings `to:dst` up to date with `from:src` and makes it a new point; with `guest`,
    /// the source is read as the guest sees it (through QEMU).
    pub fn replicate(
        &self,
        from: &str,
        src: &str,
        to: &str,
        dst: &str,
        r: &Replication,
        guest: Option<&GuestRead>,
    ) -> Result<ImageTransfer, ReplicaError> {
        self.transfer(None, from, src, to, dst, r, guest, None)
    }

    /// [`Helpers::replicate`] of a disk read as a file, through `early` when
    /// [`Helpers::start_send`] started its source's stream for this very request: it is told
    /// to read now. Call it only once the disk's freeze holds.
    #[allow(clippy::too_many_arguments)]
    pub fn replicate_started(
        &self,
        from: &str,
        src: &str,
        to: &str,
        dst: &str,
        r: &Replication,
        early: Option<EarlySend>,
    ) -> Result<ImageTransfer, ReplicaError> {
        self.transfer(None, from, src, to, dst, r, None, early)
    }

    /// The digest of the recovery manifest of the copy `to:image` (an interrupted update there
    /// settled first), which a stream's request names.
    fn recovery_digest(
        &self,
        to: &str,
        image: &Path,
        r: &Replication,
    ) -> Result<String, ReplicaError> {
        let d = self.call(
            to,
            &Request::Manifest {
                image: image.to_path_buf(),
                reread: false,
                digest: true,
                overwrite_changed: r.overwrite_changed,
            },
            &[],
            r.deadline,
        )?;
        Ok(String::from_utf8_lossy(&d).trim().to_string())
    }

    /// Starts the source's stream of the disk `from:src` (read as a file) while its freeze is
    /// made elsewhere: the recovery manifest's digest asked, the stream's command started
    /// with `send --after-go`, which opens nothing before it is told to read. `None` when
    /// there is nothing to gain or it cannot be so started (the source here, streams not
    /// carried by the OpenSSH client, a first copy, a copy read again, an error: the
    /// replication then meets it again and says it). `r` is as the replication will be but
    /// for its point, which is taken once the freeze holds.
    pub fn start_send(
        &self,
        from: &str,
        src: &str,
        to: &str,
        dst: &str,
        r: &Replication,
    ) -> Option<EarlySend> {
        if r.reread || self.is_here(from).ok()? {
            return None;
        }
        for host in [to, from] {
            if !self.is_here(host).ok()? {
                self.transport.prepare_bulk(host);
            }
        }
        let Requests { mut send, .. } = requests(None, from, src, dst, r, None);
        let digest = self.recovery_digest(to, Path::new(dst), r).ok()?;
        if digest == super::blocks::Manifest::empty().digest() {
            return None;
        }
        if let Request::Send { base, after_go, .. } = &mut send {
            *base = Some(digest.clone());
            *after_go = true;
        }
        let command = self.remote_command(from, &send).ok()?;
        let child = self
            .transport
            .bulk_process(from, &command, r.deadline)?
            .ok()?;
        Some(EarlySend {
            digest,
            send,
            child: Some(child),
        })
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
        // The point says until when its files were written, by the source's clock brought to
        // this machine's, for `--point-before`: that clock is read first.
        let ahead = if self.is_here(from)? {
            0
        } else {
            let (skew, uncertainty) = crate::check::read_clock(self.transport, from).map_err(|e| {
                ReplicaError::Helper {
                    host: from.to_string(),
                    reason: format!(
                        "its clock cannot be read ({e}): a backup set's point records until when its files were written, by that clock brought to this machine's, and without it no point of {from}:{src} could be told apart from one written after a given time; make `date +%s.%N` work on {from}"
                    ),
                }
            })?;
            // The least it may be ahead: its files' times brought over are the latest they
            // may be.
            ((skew - uncertainty) * 1e6).round() as i64
        };
        self.transfer(Some(ahead), from, src, to, dst, r, None, None)
    }

    /// One transfer: the recovery side's base, then the source's stream piped into the
    /// recovery side's apply. `tree`: a backup set's, its source's clock at least that many
    /// microseconds ahead of this machine's.
    #[allow(clippy::too_many_arguments)]
    fn transfer(
        &self,
        tree: Option<i64>,
        from: &str,
        src: &str,
        to: &str,
        dst: &str,
        r: &Replication,
        guest: Option<&GuestRead>,
        early: Option<EarlySend>,
    ) -> Result<ImageTransfer, ReplicaError> {
        let began = std::time::Instant::now();
        // Both hosts' bulk connections log in while the recovery side reads its base.
        for host in [to, from] {
            if !self.is_here(host)? {
                self.transport.prepare_bulk(host);
            }
        }
        let Requests {
            base: base_req,
            mut send,
            apply,
            unit,
        } = requests(tree, from, src, dst, r, guest);
        // A stream started early serves only the very request this one makes of its digest.
        let early = early.filter(|e| {
            let mut asked = send.clone();
            if let Request::Send { base, after_go, .. } = &mut asked {
                *base = Some(e.digest.clone());
                *after_go = true;
            }
            asked == e.send
        });
        // The sides compare the digest of the recovery manifest first: the stream's request
        // names it, and the source reads against the manifest it kept when it is that very one
        // (it made it when it last sent this image); only when it is not is the manifest
        // itself sent, in a second try.
        let digest = match (&send, &base_req) {
            _ if early.is_some() => early.as_ref().map(|e| e.digest.clone()),
            (
                Request::Send { .. },
                Request::Manifest {
                    image: dst_image,
                    reread: false,
                    ..
                },
            ) => Some(self.recovery_digest(to, dst_image, r)?),
            _ => None,
        };
        let empty = super::blocks::Manifest::empty();
        let mut tried = None;
        if let (Request::Send { base, .. }, Some(d)) = (&mut send, &digest) {
            if *d == empty.digest() {
                // No copy yet: its manifest is the empty one, sent as it is.
                tried = Some(self.stream(
                    from,
                    src,
                    to,
                    dst,
                    &send,
                    &empty.encode(),
                    &apply,
                    r,
                    None,
                )?);
            } else {
                *base = Some(d.clone());
                let piped = self.stream(from, src, to, dst, &send, &[], &apply, r, early)?;
                let not_kept = piped.read_exit != 0
                    && !piped.write_failed_first
                    && piped.stderr.contains(NOT_KEPT);
                if !not_kept {
                    tried = Some(piped);
                }
            }
        }
        let (piped, manifest_len) = match tried {
            Some(piped) => (piped, 64),
            None => {
                if let Request::Send { base, .. } = &mut send {
                    *base = None;
                }
                let manifest = self.call(to, &base_req, &[], r.deadline)?;
                let piped = self.stream(from, src, to, dst, &send, &manifest, &apply, r, None)?;
                (piped, manifest.len())
            }
        };
        self.finish(from, src, to, dst, &apply, piped, manifest_len, began)
            .map(|t| ImageTransfer { unit, ..t })
    }

    /// The source's stream of `send` (fed `base`) piped into the recovery side's `apply`; sent
    /// again when a side's helper was not there and has been uploaded since (a side that did
    /// not start leaves the other nothing to apply: the copy is as it was). A source read to
    /// its end, or let go, under `r.reads` is not read again: refused, saying so. The first
    /// try goes through `early` when there is one (told to read then); a second try starts
    /// its own.
    #[allow(clippy::too_many_arguments)]
    fn stream(
        &self,
        from: &str,
        src: &str,
        to: &str,
        dst: &str,
        send: &Request,
        base: &[u8],
        apply: &Request,
        r: &Replication,
        early: Option<EarlySend>,
    ) -> Result<PipeOutput, ReplicaError> {
        let reads = r.reads.as_deref();
        let disk = format!("{from}:{src}");
        let early = std::cell::RefCell::new(early);
        let once = || {
            let early = early.borrow_mut().take();
            if reads.is_some_and(|x| !x.may_read(&disk)) {
                return Err(ReplicaError::Helper {
                    host: from.to_string(),
                    reason: format!(
                        "{disk} was read to its end, or its snapshot merged back, before its copy on {to} was done: it is not read again; run the replication again"
                    ),
                });
            }
            let read = || {
                if let Some(x) = reads {
                    tracing::debug!(disk, "source read to its end");
                    x.read_to_end(&disk);
                }
            };
            self.stream_once(
                from, src, to, dst, send, base, apply, r.deadline, &read, early,
            )
        };
        // At most one upload a side.
        for _ in 0..2 {
            let piped = once()?;
            let again = if piped.read_exit == GUARD_EXIT && !piped.write_failed_first {
                self.guarded(from, piped.read_exit, &piped.stderr, false)?
            } else if piped.write_exit == GUARD_EXIT {
                self.guarded(to, piped.write_exit, &piped.stderr, true)?
            } else {
                // A source stopped because the recovery side failed first proves nothing.
                let read_exit = if piped.write_failed_first {
                    -1
                } else {
                    piped.read_exit
                };
                for (host, exit) in [(from, read_exit), (to, piped.write_exit)] {
                    if !self.is_here(host)? {
                        self.guarded(host, exit, &piped.stderr, false)?;
                    }
                }
                false
            };
            if !again {
                return Ok(piped);
            }
        }
        once()
    }

    #[allow(clippy::too_many_arguments)]
    fn stream_once(
        &self,
        from: &str,
        src: &str,
        to: &str,
        dst: &str,
        send: &Request,
        base: &[u8],
        apply: &Request,
        deadline: Duration,
        read: &dyn Fn(),
        early: Option<EarlySend>,
    ) -> Result<PipeOutput, ReplicaError> {
        let failed = |e: String| ReplicaError::Helper {
            host: to.to_string(),
            reason: format!("replicating {from}:{src} to {to}:{dst} failed: {e}"),
        };
        // A source started early is told to read, first thing in its input (the recovery
        // side not started, it is dropped unread: its helper ends without opening the disk).
        if let Some(mut early) = early.filter(|e| e.child.is_some()) {
            let recovery = match self.bulk_side(to, apply, deadline) {
                Ok(Some(recovery)) => recovery,
                Ok(None) => {
                    return Err(failed(
                        "this transport carries no stream through a client program".into(),
                    ));
                }
                Err(ReplicaError::Ssh(e)) => return Err(failed(e.to_string())),
                Err(e) => return Err(e),
            };
            let Some(source) = early.child.take() else {
                kill_group(&recovery);
                return Err(failed("its source's stream was not there".into()));
            };
            let mut input = vec![super::protocol::GO];
            input.extend_from_slice(base);
            return Ok(pipe_processes(
                source,
                &input,
                recovery,
                deadline,
                &|| self.transport.interrupted(),
                read,
            ));
        }
        // Through the OpenSSH client, each side is a process (a helper here, or `ssh` carrying
        // it); else, when this machine is one of the two hosts, its side runs here: no relay.
        if let Some((source, recovery)) = self.bulk_sides(from, send, to, apply, deadline)? {
            Ok(pipe_processes(
                source,
                base,
                recovery,
                deadline,
                &|| self.transport.interrupted(),
                read,
            ))
        } else if self.is_here(to)? {
            let send = self.remote_command(from, send)?;
            self.pipe_into_here(from, &send, base, to, apply, deadline, read)
        } else if self.is_here(from)? {
            let apply = self.remote_command(to, apply)?;
            self.pipe_from_here(from, send, base, to, &apply, deadline)
        } else {
            let send = self.remote_command(from, send)?;
            let apply = self.remote_command(to, apply)?;
            self.transport
                .pipe_with_input(from, &send, base, to, &apply, deadline)
                .map_err(ReplicaError::from)
        }
        .map_err(|e| match e {
            ReplicaError::Ssh(e) => failed(e.to_string()),
            e => e,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        from: &str,
        src: &str,
        to: &str,
        dst: &str,
        apply: &Request,
        piped: PipeOutput,
        manifest_bytes: usize,
        began: std::time::Instant,
    ) -> Result<ImageTransfer, ReplicaError> {
        if piped.read_exit != 0 || piped.write_exit != 0 {
            let host = if piped.read_exit != 0 && !piped.write_failed_first {
                from
            } else {
                to
            };
            return Err(ReplicaError::Helper {
                host: host.to_string(),
                reason: format!(
                    "replicating {from}:{src} to {to}:{dst} failed ({}): {}",
                    if piped.write_failed_first {
                        format!(
                            "recovery exit {}; the source was stopped after it",
                            piped.write_exit
                        )
                    } else {
                        format!(
                            "source exit {}, recovery exit {}",
                            piped.read_exit, piped.write_exit
                        )
                    },
                    helper_error(&piped.stderr, piped.write_exit)
                ),
            });
        }
        let applied: Applied = answer(to, piped.output.as_bytes())?;
        applied_as_asked(apply, &applied.point).map_err(|e| ReplicaError::Helper {
            host: to.to_string(),
            reason: format!("replicating {from}:{src} to {to}:{dst}: {e}"),
        })?;
        Ok(ImageTransfer {
            from: from.to_string(),
            src: src.to_string(),
            to: to.to_string(),
            dst: dst.to_string(),
            sent_bytes: piped.bytes,
            manifest_bytes: manifest_bytes as u64,
            duration: began.elapsed(),
            applied,
            unit: "blocks",
        })
    }

    /// Stores the vm definition `bytes` beside the copy `host:image` (atomically, named by
    /// its BLAKE3): its BLAKE3, for the point that records it.
    pub fn put_definition(
        &self,
        host: &str,
        image: &str,
        bytes: &[u8],
    ) -> Result<String, ReplicaError> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        self.call(
            host,
            &Request::PutDefinition {
                image: image.into(),
                blake3: hash.clone(),
            },
            bytes,
            Duration::from_secs(120),
        )?;
        Ok(hash)
    }

    /// The definition point `point` of `host:image` records, checked by its BLAKE3 on the
    /// host and again here.
    pub fn definition(
        &self,
        host: &str,
        image: &str,
        point: &str,
    ) -> Result<crate::replica::helper::DefinitionText, ReplicaError> {
        let d: crate::replica::helper::DefinitionText = self.call_json(
            host,
            &Request::Definition {
                image: image.into(),
                point: point.into(),
            },
            Duration::from_secs(120),
        )?;
        let got = blake3::hash(d.text.as_bytes()).to_hex().to_string();
        if got != d.blake3 {
            return Err(ReplicaError::Helper {
                host: host.to_string(),
                reason: format!(
                    "the definition of point {point} of {image} arrived with the BLAKE3 {got}, not {}",
                    d.blake3
                ),
            });
        }
        Ok(d)
    }

    /// The points of `host:image`, oldest first.
    pub fn points(&self, host: &str, image: &str) -> Result<Vec<Point>, ReplicaError> {
        let points: Vec<Point> = self.call_json(
            host,
            &Request::Points {
                image: image.into(),
            },
            Duration::from_secs(60),
        )?;
        // Choices rely on the order (the newest is the last) and on ids naming one point.
        super::meta::check_points(&points).map_err(|e| ReplicaError::Helper {
            host: host.to_string(),
            reason: format!("the points of {image} it answered are not valid: {e}"),
        })?;
        Ok(points)
    }

    /// Verifies one point of `host:image`, or all.
    pub fn verify(
        &self,
        host: &str,
        image: &str,
        point: Option<&str>,
    ) -> Result<Vec<Checked>, ReplicaError> {
        let req = Request::Verify {
            image: image.into(),
            point: point.map(str::to_string),
        };
        let checked: Vec<Checked> = self.call_json(host, &req, Duration::from_secs(7200))?;
        // An answer about no point, or about another, never passes for a point read again.
        if let Some(asked) = point
            && (checked.len() != 1 || checked[0].point != asked)
        {
            return Err(ReplicaError::Helper {
                host: host.to_string(),
                reason: format!(
                    "asked to verify point {asked} of {image}, the helper answered about {}",
                    if checked.is_empty() {
                        "no point".to_string()
                    } else {
                        checked
                            .iter()
                            .map(|c| c.point.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            });
        }
        Ok(checked)
    }

    /// Completes or throws away an interrupted update of `host:image` (waiting up to `wait`
    /// for a replication that holds it to end); what was done.
    pub fn settle(
        &self,
        host: &str,
        image: &str,
        wait: Duration,
    ) -> Result<Option<String>, ReplicaError> {
        self.call_json(
            host,
            &Request::Settle {
                image: image.into(),
                wait: wait.as_secs(),
            },
            Duration::from_secs(7200),
        )
    }

    /// What the copies `paths` of `host` and their metadata say, changing nothing.
    pub fn inspect(
        &self,
        host: &str,
        paths: &[String],
    ) -> Result<Vec<crate::replica::CopyState>, ReplicaError> {
        let states: Vec<crate::replica::CopyState> = self.call_json(
            host,
            &Request::Inspect {
                paths: paths.iter().map(Into::into).collect(),
            },
            Duration::from_secs(600),
        )?;
        if states.len() != paths.len() {
            return Err(ReplicaError::Helper {
                host: host.to_string(),
                reason: format!(
                    "asked about {} copies, the helper answered about {}",
                    paths.len(),
                    states.len()
                ),
            });
        }
        // Each state is read as the copy asked at its place: one about another copy, or
        // points out of order, would make a choice of the wrong disk or point.
        for (state, path) in states.iter().zip(paths) {
            let bad = if state.path != *path {
                Some(format!(
                    "asked about {path}, the helper answered about {}",
                    state.path
                ))
            } else {
                super::meta::check_points(&state.points)
                    .err()
                    .map(|e| format!("the points of {path} it answered are not valid: {e}"))
            };
            if let Some(reason) = bad {
                return Err(ReplicaError::Helper {
                    host: host.to_string(),
                    reason,
                });
            }
        }
        Ok(states)
    }

    /// Records `lease` on the copy `host:path`, once no replication holds it (waiting up to
    /// `wait`) and, with `expect`, only while it still is that point; with `started`, the vm
    /// now runs on it and its point history ends. What was done.
    pub fn take_lease(
        &self,
        host: &str,
        path: &str,
        lease: &crate::replica::Lease,
        expect: Option<&str>,
        wait: Duration,
        started: bool,
    ) -> Result<Option<String>, ReplicaError> {
        let req = Request::Lease {
            path: path.into(),
            kind: lease.kind,
            run: lease.run.clone(),
            vm: lease.vm.clone(),
            step: lease.step.clone(),
            machine: lease.machine.clone(),
            pid: lease.pid,
            point: lease.point.clone(),
            taken_at: lease.taken_at,
            written_until: lease.written_until,
            verified: lease.verified,
            expect: expect.map(str::to_string),
            wait: wait.as_secs(),
            started,
        };
        self.call_json(host, &req, wait + Duration::from_secs(600))
    }

    /// Removes the leases of the copies `paths` of `host` (of run `run`, of kind `kind`);
    /// what was released.
    pub fn release(
        &self,
        host: &str,
        paths: &[String],
        run: Option<&str>,
        kind: Option<crate::replica::LeaseKind>,
    ) -> Result<Vec<String>, ReplicaError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        self.release_with(host, &paths, run, kind, None, (false, false))
    }

    /// A failback copied the vm's recovery copies `paths` of `host` back to its primary:
    /// their `live` leases are removed, and what was written in them outside reprise since
    /// their newest point (a vm run there by hand, now on the primary) is let go
    /// ([`super::store::Store::accept_changes`]); what was released.
    pub fn release_copied_back(
        &self,
        host: &str,
        paths: &[String],
        read: &[(String, String)],
    ) -> Result<Vec<String>, ReplicaError> {
        let live = Some(crate::replica::LeaseKind::Live);
        let mut released = Vec::new();
        let mut as_is = Vec::new();
        for path in paths {
            match read.iter().find(|(p, _)| p == path) {
                // As the copy back read it: the helper lets it go at that stamp, under the
                // copy's lock, or refuses one written since (it stays leased).
                Some((_, stamp)) => released.extend(self.release_with(
                    host,
                    &[path],
                    None,
                    live,
                    Some(stamp),
                    (false, true),
                )?),
                None => as_is.push(path.as_str()),
            }
        }
        if !as_is.is_empty() {
            released.extend(self.release_with(host, &as_is, None, live, None, (false, true))?);
        }
        Ok(released)
    }

    /// A failover's start of run `run` on the recovery copies `paths` of `host` was undone by a
    /// roll-back: that run's `live` leases are removed, and the copies are let go
    /// as they now are ([`super::store::Store::accept_changes`]): written again afterwards (a
    /// vm started there by hand), a replication refuses to overwrite them. What was released.
    pub fn release_undone(
        &self,
        host: &str,
        paths: &[String],
        run: &str,
    ) -> Result<Vec<String>, ReplicaError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let live = Some(crate::replica::LeaseKind::Live);
        self.release_with(host, &paths, Some(run), live, None, (false, true))
    }

    /// A failback copied the backup set's folder `path` of `host` back to its primary as it
    /// was at `stamp`: recorded there, then its `live` leases removed (see
    /// [`super::tree::TreeStore::release_returned`]); what was released.
    pub fn release_returned(
        &self,
        host: &str,
        path: &str,
        stamp: &str,
    ) -> Result<Vec<String>, ReplicaError> {
        let live = Some(crate::replica::LeaseKind::Live);
        self.release_with(host, &[path], None, live, Some(stamp), (false, false))
    }

    /// `reprise release` of a copy: its leases (of run `run`), for a backup set's folder the
    /// record of a failback's copy back, and, without `run`, what was written in it outside
    /// reprise since its newest point (let go: the next replication overwrites it); what was
    /// released.
    pub fn release_all(
        &self,
        host: &str,
        path: &str,
        run: Option<&str>,
    ) -> Result<Vec<String>, ReplicaError> {
        self.release_with(host, &[path], run, None, None, (true, run.is_none()))
    }

    /// [`Request::Release`]: also forgets a backup set's record of a failback's copy back, and
    /// lets go what was written in the copies outside reprise since their newest point, as
    /// `(forget_returned, accept)` say.
    fn release_with(
        &self,
        host: &str,
        paths: &[&str],
        run: Option<&str>,
        kind: Option<crate::replica::LeaseKind>,
        returned: Option<&str>,
        (forget_returned, accept): (bool, bool),
    ) -> Result<Vec<String>, ReplicaError> {
        let req = Request::Release {
            paths: paths.iter().map(Into::into).collect(),
            run: run.map(str::to_string),
            kind,
            returned: returned.map(str::to_string),
            forget_returned,
            accept,
        };
        self.call_json(host, &req, Duration::from_secs(120))
    }

    /// Marks unusable, saying `why`, the points taken at `taken_at` (one replication's, on
    /// every disk that got one) of the copies `(host, image)`: what was marked, as lines, or
    /// what could not be (a copy that got no point from it has nothing to mark). The copy's
    /// helper keeps the mark before it settles the copy: an update of this replication
    /// completed now or later records its point bad.
    pub fn mark_torn(
        &self,
        copies: &[(&str, &str)],
        taken_at: DateTime<Utc>,
        why: &str,
    ) -> Result<Vec<String>, String> {
        self.on_each_copy(
            copies,
            taken_at,
            ("marked", "marked unusable"),
            |image| Request::MarkTorn {
                image: image.into(),
                taken_at,
                why: why.into(),
            },
            |_, _| None,
            |p| {
                (p.verified == super::Verified::Bad && p.unusable.as_deref() == Some(why))
                    .then(String::new)
                    .ok_or_else(|| p.unusable.as_deref().unwrap_or("not unusable").to_string())
            },
        )
    }

    /// Confirms on the copies `(host, image)` that the freeze the points taken at `taken_at`
    /// (one replication's) were read under held ([`Request::Confirm`]): the points made good,
    /// as lines, or what could not be confirmed (those points stay unusable). A copy whose
    /// update is still on the way keeps the confirmation for it.
    pub fn confirm(
        &self,
        copies: &[(&str, &str)],
        taken_at: DateTime<Utc>,
    ) -> Result<Vec<String>, String> {
        self.on_each_copy(
            copies,
            taken_at,
            ("confirmed", "confirmed"),
            |image| Request::Confirm {
                image: image.into(),
                taken_at,
            },
            |host, image| {
                Some(format!(
                    "{host}:{image} (no point of this replication there: the confirmation is kept for one still to come, and goes with the next point)"
                ))
            },
            |p| match (p.pending, p.verified) {
                (true, _) => Err("still held".to_string()),
                // Bad for a reason of its own, said where it was found.
                (false, super::Verified::Bad) => Ok(format!(" ({})", p.bad_words())),
                (false, _) => Ok(String::new()),
            },
        )
    }

    /// Asks every copy `(host, image)` `request` about the points taken at `taken_at`,
    /// whatever another answered (each keeps its own mark), and judges each point answered
    /// (`judged`: a note after its name, or what it is instead); `none` says a copy that
    /// answered no point. What was done (`done.0`: "marked"), as lines, or what could not be
    /// (`done.1`: "marked unusable"), with what was done.
    fn on_each_copy(
        &self,
        copies: &[(&str, &str)],
        taken_at: DateTime<Utc>,
        done: (&str, &str),
        request: impl Fn(&str) -> Request,
        none: impl Fn(&str, &str) -> Option<String>,
        judged: impl Fn(&Point) -> Result<String, String>,
    ) -> Result<Vec<String>, String> {
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        // The copies' helpers asked [`STREAMS`] at a time (each holds its own copy's lock;
        // as many sessions a host as a replication opens beforehand), read in order.
        let mut answers: Vec<Result<Vec<Point>, ReplicaError>> = Vec::new();
        for some in copies.chunks(STREAMS) {
            std::thread::scope(|scope| {
                let asked: Vec<_> = some
                    .iter()
                    .map(|(host, image)| {
                        let req = request(image);
                        scope.spawn(move || self.call_json(host, &req, Duration::from_secs(600)))
                    })
                    .collect();
                answers.extend(
                    asked
                        .into_iter()
                        .map(|a| a.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
                );
            });
        }
        for ((host, image), answer) in copies.iter().zip(answers) {
            let points: Vec<Point> = match answer {
                Ok(p) => p,
                Err(e) => {
                    failed.push(format!(
                        "the points of {host}:{image} taken then could not be {} ({e})",
                        done.0
                    ));
                    continue;
                }
            };
            if points.is_empty() {
                ok.extend(none(host, image));
            }
            for p in &points {
                let judged = if p.taken_at == taken_at {
                    judged(p)
                } else {
                    Err(format!("taken at {}", p.taken_at))
                };
                match judged {
                    Ok(note) => ok.push(format!("{host}:{image} point {}{note}", p.id)),
                    Err(is) => failed.push(format!(
                        "asked to have the points of {host}:{image} taken at {taken_at} {}, its helper answered about point {} ({}, {is})",
                        done.1, p.id, p.verified
                    )),
                }
            }
        }
        if !failed.is_empty() {
            let so_far = match ok.is_empty() {
                true => String::new(),
                false => format!("; {}: {}", done.0, ok.join(", ")),
            };
            return Err(format!("{}{so_far}", failed.join("; ")));
        }
        Ok(ok)
    }

    /// Rolls `host:image` back to its point `point` (newer points are dropped).
    pub fn roll_back(
        &self,
        host: &str,
        image: &str,
        point: &str,
    ) -> Result<crate::replica::store::RolledBack, ReplicaError> {
        let r: crate::replica::store::RolledBack = self.call_json(
            host,
            &Request::RollBack {
                image: image.into(),
                point: point.into(),
            },
            Duration::from_secs(7200),
        )?;
        // An answer about another point would be noted as this roll-back, and the vm started
        // on disks of another moment than the one chosen.
        if r.point != point {
            return Err(ReplicaError::Helper {
                host: host.to_string(),
                reason: format!(
                    "{image}: asked to roll back to point {point}, it answered that it rolled back to point {}: refused",
                    r.point
                ),
            });
        }
        Ok(r)
    }
}

/// Whether `point`, which a recovery helper answered it made for `apply`, is that point: its
/// id (or the id with `-N`, as a copy names a point whose id it already has), the time it was
/// taken, its source and the definition it records as asked, verified end to end. An answer
/// about another point (an older one of the copy) would be journaled as this replication's.
fn applied_as_asked(apply: &Request, point: &Point) -> Result<(), String> {
    let (id, taken_at, source, definition, pending) = match apply {
        Request::Apply {
            point,
            taken_at,
            source,
            definition,
            pending,
            ..
        } => (point, taken_at, source, definition.as_deref(), *pending),
        Request::ApplyTree {
            point,
            taken_at,
            source,
            ..
        } => (point, taken_at, source, None, false),
        _ => return Err("not an update".to_string()),
    };
    let named = point.id == *id
        || point.id.strip_prefix(id.as_str()).is_some_and(|rest| {
            rest.strip_prefix('-')
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    let wrong = if !named {
        Some(format!("point {} (asked: {id})", point.id))
    } else if point.taken_at != *taken_at {
        Some(format!(
            "a point taken at {} (asked: {taken_at})",
            point.taken_at
        ))
    } else if point.source != *source {
        Some(format!(
            "a point of the source {} (asked: {source})",
            point.source
        ))
    } else if point.definition.as_deref() != definition {
        Some(format!(
            "a point recording the definition {} (asked: {})",
            point.definition.as_deref().unwrap_or("none"),
            definition.unwrap_or("none")
        ))
    } else if point.verified != super::Verified::Yes && !(pending && point.pending) {
        // Held until its freeze is confirmed, as asked; or confirmed already.
        Some(format!("a point verified `{}`", point.verified))
    } else {
        None
    };
    match wrong {
        Some(what) => Err(format!(
            "the recovery helper answered that it made {what}: not believed, the replication is taken as failed"
        )),
        None => Ok(()),
    }
}

/// The requests of one transfer.
struct Requests {
    /// The recovery side's base: its manifest, or its tree's.
    base: Request,
    /// The source's send.
    send: Request,
    /// The recovery side's apply.
    apply: Request,
    /// The unit the transfer's counts are in.
    unit: &'static str,
}

/// The requests of one transfer (see [`Requests`]); `tree` as [`Helpers::transfer`]'s.
fn requests(
    tree: Option<i64>,
    from: &str,
    src: &str,
    dst: &str,
    r: &Replication,
    guest: Option<&GuestRead>,
) -> Requests {
    let (src_path, dst_path) = (PathBuf::from(src), PathBuf::from(dst));
    let (point, taken_at, source, retention) = (
        r.point.clone(),
        r.taken_at,
        format!("{from}:{src}"),
        r.retention,
    );
    if let Some(source_ahead_us) = tree {
        Requests {
            base: Request::TreeBase {
                dir: dst_path.clone(),
                reread: r.reread,
                overwrite_changed: r.overwrite_changed,
            },
            send: Request::SendTree { dir: src_path },
            apply: Request::ApplyTree {
                dir: dst_path,
                point,
                taken_at,
                source,
                retention,
                source_ahead_us,
                overwrite_changed: r.overwrite_changed,
            },
            unit: "files",
        }
    } else {
        Requests {
            base: Request::Manifest {
                image: dst_path.clone(),
                reread: r.reread,
                digest: false,
                overwrite_changed: r.overwrite_changed,
            },
            send: Request::Send {
                image: src_path,
                compress: r.compress,
                live: r.live,
                nbd: guest.and_then(|g| g.nbd.as_ref().map(|(s, _)| s.into())),
                export: guest.and_then(|g| g.nbd.as_ref().map(|(_, e)| e.clone())),
                format: guest.filter(|g| g.nbd.is_none()).map(|g| g.format),
                bitmap: guest.and_then(|g| g.bitmap.clone()),
                audit: guest.is_some_and(|g| g.audit),
                base: None,
                marks: guest.map(|g| g.marks.clone()).unwrap_or_default(),
                after_go: false,
            },
            apply: Request::Apply {
                image: dst_path,
                point,
                taken_at,
                source,
                retention,
                definition: r.definition.clone(),
                mode: guest.map(|g| g.how.mode),
                why: guest.and_then(|g| g.how.why.clone()),
                checkpoint: guest.and_then(|g| g.how.checkpoint.clone()),
                since: guest.and_then(|g| g.how.since.clone()),
                created: guest.and_then(|g| g.how.created),
                marker: guest.and_then(|g| g.how.marker.clone()),
                pending: r.pending,
                overwrite_changed: r.overwrite_changed,
            },
            unit: "blocks",
        }
    }
}

/// The longest answer read from a probe or an upload (a line and a [`Hello`]).
const ANSWER_LIMIT: u64 = 64 << 10;

/// The exit code of a command whose helper check stopped it (see
/// [`Helpers::remote_command`]), with what it found after [`GUARD_MARK`] on its standard
/// error.
const GUARD_EXIT: i32 = 86;

/// Starts the line in which a command's helper check says what it found.
const GUARD_MARK: &str = "reprise-helper-check:";

/// What to do about a helper refused on `host`.
fn fix(host: &str) -> String {
    let hash = this_binary().map(|b| b.2.as_str()).unwrap_or("HASH");
    format!(
        "the helper is found by the hash of this program: remove ~/.cache/reprise/helper-{hash} on {host} so that it is uploaded again"
    )
}

/// `H="…/helper-HASH"`: where a host keeps the helper of this hash.
fn helper_path(hash: &str) -> String {
    format!("H=\"${{XDG_CACHE_HOME:-$HOME/.cache}}/reprise/helper-{hash}\"")
}

/// The words of `req` after `helper`, quoted for a shell.
fn shell_words(req: &Request) -> String {
    req.words()
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a helper's answer to [`Request::Version`] (its exit code, output and errors):
/// another protocol, or no answer, is refused naming both versions and what to do (`fix`).
fn handshake(host: &str, code: i32, out: &[u8], err: &str, fix: &str) -> Result<(), ReplicaError> {
    let hello = (code == 0)
        .then(|| serde_json::from_slice::<Hello>(out).ok())
        .flatten();
    let theirs = match hello {
        Some(h) if h.protocol == PROTOCOL => return Ok(()),
        Some(h) => h.describe(),
        None => {
            let said = err.lines().next().unwrap_or("").trim();
            format!(
                "no protocol this reprise knows (`helper version` exited with {code}{}{}; a reprise older than protocol 2 does not answer it)",
                if said.is_empty() { "" } else { ": " },
                said.chars().take(200).collect::<String>()
            )
        }
    };
    Err(ReplicaError::Protocol {
        host: host.to_string(),
        theirs,
        ours: PROTOCOL,
        version: VERSION,
        fix: fix.to_string(),
    })
}

/// Prints this machine's id, the login user's uid, and the id of this boot, one per line (two
/// hosts cloned from one template may share a machine id, never a boot id).
const IDENTITY: &str = "cat /etc/machine-id && id -u && cat /proc/sys/kernel/random/boot_id";

/// Whether two answers to [`IDENTITY`] are the same machine and user; why not.
fn same_machine(host: &str, mine: &str, theirs: &str) -> Result<(), String> {
    let three = |s: &str| {
        let mut lines = s.lines().map(str::trim);
        let mut next = || lines.next().unwrap_or("").to_string();
        (next(), next(), next())
    };
    let ((my_id, my_uid, my_boot), (their_id, their_uid, their_boot)) =
        (three(mine), three(theirs));
    if my_id.is_empty() || my_id != their_id || my_boot.is_empty() || my_boot != their_boot {
        return Err(format!(
            "{host} is another machine (machine id '{their_id}', boot '{their_boot}'; this one: \
             '{my_id}', boot '{my_boot}'); name the host reprise runs on, or leave --here out"
        ));
    }
    if my_uid != their_uid {
        return Err(format!(
            "reprise runs here as uid {my_uid} but logs in to {host} as uid {their_uid}; \
             run it as that user, or leave --here out"
        ));
    }
    Ok(())
}

/// Kills a helper started by [`Helpers::spawn_here`] (or the OpenSSH client carrying one) and
/// everything under it: `timeout` leads its own process group, so killing `timeout` alone
/// would leave the helper running.
fn kill_group(child: &std::process::Child) {
    use rustix::process::{Pid, Signal, kill_process, kill_process_group};
    // The process group our child leads, and the child itself (not yet waited for, so its pid
    // is still its own).
    let pid = Pid::from_child(child);
    let _ = kill_process_group(pid, Signal::KILL);
    let _ = kill_process(pid, Signal::KILL);
}

/// Seconds a side may run past its deadline before it is killed here: the remote `timeout`'s
/// grace before KILL, and time for the news to arrive.
const PAST_DEADLINE: Duration = Duration::from_secs(35);

/// Streams the standard output of `source` into the standard input of `recovery`, after
/// `input` is written to `source` (which reads all of it before it writes much), in large
/// writes counted in [`crate::ssh::PIPED_BYTES`]. A side that ends or fails ends the transfer
/// at once, even while the other is silent (the source hashing an unchanged stretch): the
/// recovery side closing its input kills the source (which is then not blamed: its exit is 0),
/// and the end of the source's output is the end of the recovery side's input. Both are
/// killed, with their process groups, `PAST_DEADLINE` after `deadline`, or when `stop` says
/// so (a signal): then the recovery side's input is cut and it throws the update away.
/// `read` is called as soon as the source has ended having sent all of its stream (exit 0,
/// nothing cut), while the recovery side may still commit it; or, when the recovery side
/// ended first having taken a whole stream (exit 0), once it has.
fn pipe_processes(
    mut source: Child,
    input: &[u8],
    mut recovery: Child,
    deadline: Duration,
    stop: &dyn Fn() -> bool,
    read: &dyn Fn(),
) -> PipeOutput {
    let began = std::time::Instant::now();
    let until = began + deadline + PAST_DEADLINE;
    let mut source_in = source.stdin.take();
    let mut source_out = source.stdout.take().expect("piped");
    let source_err = source.stderr.take().expect("piped");
    let mut recovery_in = recovery.stdin.take();
    let recovery_out = recovery.stdout.take().expect("piped");
    let recovery_err = recovery.stderr.take().expect("piped");
    {
        // Wider pipes between the two sides' `ssh` and this relay: fewer wake-ups a megabyte
        // (a refusal changes nothing but the time).
        use std::os::fd::AsFd as _;
        let _ = rustix::pipe::fcntl_setpipe_size(source_out.as_fd(), 1 << 20);
        if let Some(sink) = &recovery_in {
            let _ = rustix::pipe::fcntl_setpipe_size(sink.as_fd(), 1 << 20);
        }
    }
    // Threads of their own, not waited for past a grace: a side's standard streams are also
    // held by its OpenSSH master connection, until the command on the host ends, which a
    // source cut off while silent (hashing, or stopped) may not do soon.
    if let Some(mut w) = source_in.take() {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&input);
        });
    }
    let errors = Errors {
        source: Drain::start(source_err, Said::default()),
        recovery: Drain::start(recovery_err, Said::default()),
    };
    let output = Drain::start(recovery_out, Said::keeping(OUTPUT_LIMIT as usize));
    let mut copied = match recovery_in.as_mut() {
        Some(sink) => copy_stream(&mut source_out, sink, until, stop, &errors),
        None => Copied::default(),
    };
    tracing::debug!(
        bytes = copied.bytes,
        ms = began.elapsed().as_millis() as u64,
        "transfer: the source's stream ended"
    );
    // The recovery side sees its input end: a whole stream, or a cut one it refuses.
    drop(recovery_in.take());
    if copied.flooded == Some(Side::Recovery) {
        kill_group(&recovery);
        copied.cut = true;
    }
    if copied.cut || copied.late || copied.stopped || copied.flooded == Some(Side::Source) {
        kill_group(&source);
    }
    if copied.stopped {
        // An `ssh` carrying the recovery side would wait for its helper: cut it too, the
        // helper then sees its stream end and throws the update away.
        kill_group(&recovery);
    }
    drop(source_out);
    let source_exit = wait_until(&mut source, until, &|| errors.source.over());
    if errors.source.over() {
        copied.flooded = copied.flooded.or(Some(Side::Source));
    }
    let sent_all = source_exit == 0
        && !(copied.cut || copied.late || copied.stopped)
        && copied.flooded.is_none();
    if sent_all {
        read();
    }
    tracing::debug!(
        exit = source_exit,
        ms = began.elapsed().as_millis() as u64,
        "transfer: the source ended"
    );
    let recovery_exit = wait_until(&mut recovery, until, &|| errors.recovery.over());
    tracing::debug!(
        exit = recovery_exit,
        ms = began.elapsed().as_millis() as u64,
        "transfer: the recovery side ended"
    );
    if errors.recovery.over() {
        copied.flooded = copied.flooded.or(Some(Side::Recovery));
    }
    // The recovery side took a whole stream (its exit 0) and ended before the source's own end
    // came (`ssh` waits for the helper's exit over the link): the source had sent all of it.
    if !sent_all
        && recovery_exit == 0
        && copied.cut
        && !(copied.late || copied.stopped)
        && copied.flooded.is_none()
    {
        read();
    }
    // Both processes have ended: what they wrote is in the pipes.
    let grace = std::time::Instant::now() + DRAIN_GRACE;
    let errors = format!(
        "{}{}",
        errors.source.finish(grace).text(),
        errors.recovery.finish(grace).text()
    );
    let output = output.finish(grace).into_bytes();
    let Copied {
        bytes,
        cut,
        late,
        stopped,
        flooded,
    } = copied;
    PipeOutput {
        bytes,
        // Killed because the recovery side had stopped: not the source's failure.
        read_exit: if cut && !late { 0 } else { source_exit },
        write_exit: recovery_exit,
        write_failed_first: cut && !late,
        stderr: if stopped {
            format!("{errors}the transfer was stopped by a signal")
        } else if let Some(side) = flooded {
            format!(
                "{errors}the {} side printed more than {OUTPUT_LIMIT} bytes of errors: refused",
                match side {
                    Side::Source => "source",
                    Side::Recovery => "recovery",
                }
            )
        } else if late {
            format!(
                "{errors}the transfer did not end within its deadline ({}s)",
                deadline.as_secs()
            )
        } else {
            errors
        },
        output: String::from_utf8_lossy(&output).into_owned(),
        duration: began.elapsed(),
    }
}

/// The error streams of a transfer's two sides, each drained by a thread of its own.
struct Errors {
    source: Drain,
    recovery: Drain,
}

/// How the copy from the source side to the recovery side ended, and what it carried.
#[derive(Debug, Default)]
struct Copied {
    bytes: u64,
    /// The recovery side stopped reading.
    cut: bool,
    /// Past the deadline.
    late: bool,
    /// Stopped by `stop`.
    stopped: bool,
    /// The side that printed errors without end.
    flooded: Option<Side>,
}

/// Copies the source's output into the recovery side's input until the source ends, the
/// recovery side stops reading, `until` passes, `stop` says so or a side floods its errors.
fn copy_stream(
    source_out: &mut ChildStdout,
    sink: &mut ChildStdin,
    until: std::time::Instant,
    stop: &dyn Fn() -> bool,
    errors: &Errors,
) -> Copied {
    use std::io::Read as _;
    let mut copied = Copied::default();
    let mut buf = vec![0u8; 1 << 20];
    // Written without blocking: a recovery side that stops reading (its storage hung, the
    // helper stopped) fills the pipe and the link, and a blocking write would wait forever,
    // past the deadline and past a stop.
    let _ = rustix::fs::fcntl_getfl(&*sink)
        .and_then(|f| rustix::fs::fcntl_setfl(&*sink, f | rustix::fs::OFlags::NONBLOCK));
    loop {
        if std::time::Instant::now() > until {
            copied.late = true;
            break;
        }
        if stop() {
            copied.stopped = true;
            break;
        }
        let ready = poll_pipes(source_out, sink);
        // A side printing errors without end is refused (its errors are read no
        // further, so it would block, not end).
        if errors.source.over() {
            copied.flooded = Some(Side::Source);
            break;
        }
        if errors.recovery.over() {
            copied.flooded = Some(Side::Recovery);
            break;
        }
        if ready.readable {
            match source_out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if copied.bytes == 0 {
                        tracing::debug!("transfer: the source's first bytes");
                    }
                    let give_up = || {
                        if stop() {
                            Some(Written::Stopped)
                        } else if errors.source.over() {
                            Some(Written::Flooded(Side::Source))
                        } else if errors.recovery.over() {
                            Some(Written::Flooded(Side::Recovery))
                        } else {
                            None
                        }
                    };
                    match write_until(sink, &buf[..n], until, &give_up) {
                        Written::All => {}
                        Written::Gone => copied.cut = true,
                        Written::Late => copied.late = true,
                        Written::Stopped => copied.stopped = true,
                        Written::Flooded(side) => copied.flooded = Some(side),
                    }
                    if copied.cut || copied.late || copied.stopped || copied.flooded.is_some() {
                        break;
                    }
                    copied.bytes += n as u64;
                    crate::ssh::PIPED_BYTES
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Cannot happen on a pipe; the source's own exit tells the rest.
                Err(_) => break,
            }
        } else if ready.reader_gone {
            copied.cut = true;
            break;
        }
    }
    copied
}

/// How [`write_until`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    All,
    /// The recovery side no longer reads.
    Gone,
    Late,
    Stopped,
    Flooded(Side),
}

/// Writes all of `data` into `sink` (non-blocking), waiting up to 200 ms at a time for room,
/// until `until` passes or `give_up` says why not (a stop, a side flooding its errors): a
/// reader that stopped reading never holds the transfer past them.
fn write_until(
    sink: &mut ChildStdin,
    mut data: &[u8],
    until: std::time::Instant,
    give_up: &dyn Fn() -> Option<Written>,
) -> Written {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use std::io::Write as _;
    while !data.is_empty() {
        match sink.write(data) {
            Ok(0) => return Written::Gone,
            Ok(k) => data = &data[k..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() > until {
                    return Written::Late;
                }
                if let Some(why) = give_up() {
                    return why;
                }
                let mut fds = [PollFd::new(&*sink, PollFlags::OUT)];
                let timeout = Timespec {
                    tv_sec: 0,
                    tv_nsec: 200_000_000,
                };
                let _ = poll(&mut fds, Some(&timeout));
            }
            Err(_) => return Written::Gone,
        }
    }
    Written::All
}

/// What one poll of a transfer's pipes found.
struct Ready {
    /// The source has written something (or ended).
    readable: bool,
    /// The recovery side no longer reads its input.
    reader_gone: bool,
}

/// Waits up to 200 ms for the source's output to be readable or the recovery side's input to
/// lose its reader.
fn poll_pipes(source_out: &ChildStdout, sink: &ChildStdin) -> Ready {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut fds = [
        PollFd::new(source_out, PollFlags::IN),
        // No event asked: a pipe whose reader is gone reports POLLERR.
        PollFd::new(sink, PollFlags::empty()),
    ];
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    let _ = poll(&mut fds, Some(&timeout));
    Ready {
        readable: !fds[0].revents().is_empty(),
        reader_gone: !fds[1].revents().is_empty(),
    }
}

/// A side of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Recovery,
}

/// Waits for `child` until `until`, or until `give_up` says so, then kills it with its
/// process group; its exit status.
fn wait_until(child: &mut Child, until: std::time::Instant, give_up: &dyn Fn() -> bool) -> i32 {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return exit_status(status),
            Ok(None) if std::time::Instant::now() < until && !give_up() => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                kill_group(child);
                return child.wait().map(exit_status).unwrap_or(-1);
            }
            Err(_) => return -1,
        }
    }
}

/// An exit status as a shell gives it: the code, or 128 + the signal.
fn exit_status(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// The most of a helper's answer kept from a transfer.
const OUTPUT_LIMIT: u64 = crate::ssh::READ_LIMIT;

/// All of `r` up to [`OUTPUT_LIMIT`] bytes; beyond, `r` is closed (its writer then fails on
/// its next write), so that a host writing without end never fills this machine's memory.
fn read_all(r: impl std::io::Read) -> Vec<u8> {
    let mut said = Said::keeping(OUTPUT_LIMIT as usize);
    said.read_from(r);
    said.into_bytes()
}

/// What a side printed on its standard error: the first [`crate::ssh::ERRORS_KEPT`] bytes
/// (the rest dropped and counted), read up to [`OUTPUT_LIMIT`] bytes, then `r` is closed.
fn read_errors(r: impl std::io::Read) -> String {
    let mut said = Said::default();
    said.read_from(r);
    said.text()
}

/// A writer that keeps at most `limit` bytes: what a host answers is read no further.
struct Capped {
    bytes: Vec<u8>,
    limit: u64,
    over: bool,
}

impl Capped {
    fn new(limit: u64) -> Capped {
        Capped {
            bytes: Vec::new(),
            limit,
            over: false,
        }
    }
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.bytes.len() + buf.len()) as u64 > self.limit {
            self.over = true;
            return Err(std::io::Error::other(format!(
                "an answer longer than {} bytes",
                self.limit
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How long the standard streams of a transfer's sides may stay open once both processes
/// have ended: what they said is in the pipes by then.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Reads a pipe to its end (up to [`OUTPUT_LIMIT`], keeping what [`Said`] keeps) on a thread
/// of its own, which may outlive the reader's interest.
struct Drain {
    read: std::sync::Arc<Mutex<Said>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Drain {
    fn start(pipe: impl std::io::Read + Send + 'static, said: Said) -> Drain {
        let read = std::sync::Arc::new(Mutex::new(said));
        let (tx, done) = std::sync::mpsc::channel();
        let into = read.clone();
        std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let more = into
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(&buf[..n]);
                        if !more {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            // Beyond the limit, the writer fails on its next write.
            drop(pipe);
            let _ = tx.send(());
        });
        Drain { read, done }
    }

    /// Whether more than [`OUTPUT_LIMIT`] bytes came (the pipe is then read no further).
    fn over(&self) -> bool {
        self.read.lock().unwrap_or_else(|e| e.into_inner()).over()
    }

    /// What was read: all of it, or what had come by `until` if the pipe is still open.
    fn finish(self, until: std::time::Instant) -> Said {
        let _ = self
            .done
            .recv_timeout(until.saturating_duration_since(std::time::Instant::now()));
        std::mem::take(&mut *self.read.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A reader or writer that counts the bytes through it; `None` once closed.
struct Counted<T> {
    inner: Option<T>,
    count: u64,
}

impl<T> Counted<T> {
    fn new(inner: T) -> Self {
        Counted {
            inner: Some(inner),
            count: 0,
        }
    }
}

impl<T: std::io::Read> std::io::Read for Counted<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = match &mut self.inner {
            Some(r) => r.read(buf)?,
            None => 0,
        };
        self.count += n as u64;
        Ok(n)
    }
}

impl<T: Write> Write for Counted<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match &mut self.inner {
            Some(w) => w.write(buf)?,
            None => return Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.inner {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// A helper's JSON answer from `host`.
fn answer<T: serde::de::DeserializeOwned>(host: &str, out: &[u8]) -> Result<T, ReplicaError> {
    serde_json::from_slice(out).map_err(|e| ReplicaError::Helper {
        host: host.to_string(),
        reason: format!("the helper's answer is not understood ({e})"),
    })
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

/// The second this process began (see [`process_began`]).
static BEGAN: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

/// Remembers the second this process began: `main` calls it first thing (else the first
/// point taken does).
///
/// Point ids and libvirt checkpoint names are to the second, and a copy refuses a point of
/// an id it has. A process takes its points in a second after the one it began in: every
/// point of a process before it (one that ended, or was killed outright before it could do
/// anything more: SIGKILL, a crash) was taken before this one began, so in an earlier
/// second. A replication run again at once, from a script or by hand after a kill, never
/// meets a point of its own id.
pub fn process_began() {
    BEGAN.get_or_init(|| Utc::now().timestamp());
}

/// The second of the last point this process took of each item (a vm, a backup set).
static TAKEN: std::sync::Mutex<BTreeMap<String, i64>> = std::sync::Mutex::new(BTreeMap::new());

fn taken() -> std::sync::MutexGuard<'static, BTreeMap<String, i64>> {
    TAKEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The second a new point of `item` may not be in, nor any before it: the one this process
/// began in (see [`process_began`]), or that of the last point of `item` this process took.
fn last_second(taken: &BTreeMap<String, i64>, item: &str) -> i64 {
    let began = *BEGAN.get_or_init(|| Utc::now().timestamp());
    taken.get(item).copied().unwrap_or(began).max(began)
}

/// How far this clock is now behind the newest second this process took a point in (or
/// began in), when it is more than 2 s behind: the clock went back since (NTP stepped it).
/// A replication would then wait, its disks frozen, until the clock passes that second
/// again: a long-running command refuses its round instead.
pub fn clock_behind_points() -> Option<i64> {
    let began = *BEGAN.get_or_init(|| Utc::now().timestamp());
    let newest = taken().values().copied().max().unwrap_or(began).max(began);
    behind(newest, Utc::now().timestamp())
}

/// How far `now` is behind `newest` (seconds since the epoch), when more than 2 s.
fn behind(newest: i64, now: i64) -> Option<i64> {
    newest.checked_sub(now).filter(|b| *b > 2)
}

/// How long to wait, now, before a point of `item` may be taken (see [`point_taken_now`]).
pub fn wait_for_point(item: &str) -> Option<std::time::Duration> {
    wait_after_point(last_second(&taken(), item), Utc::now())
}

/// The time a new point of `item` (a vm, a backup set) is taken at: now, once in a second
/// after the one this process began in (see [`process_began`]) and after that of the last
/// point of `item` it took. Point ids are to the second: two replications of one vm in one
/// run (a copy while it runs, then the last one once it is stopped) never make one id twice.
/// Async code waits for [`wait_for_point`] first.
pub fn point_taken_now(item: &str) -> DateTime<Utc> {
    loop {
        if let Some(wait) = wait_for_point(item) {
            tracing::debug!(
                item,
                wait_ms = wait.as_millis() as u64,
                "a point is taken in a second of its own: waiting for the next"
            );
            std::thread::sleep(wait);
        }
        let now = Utc::now();
        let mut taken = taken();
        if now.timestamp() > last_second(&taken, item) {
            taken.insert(item.to_string(), now.timestamp());
            return now;
        }
    }
}

/// How long, at `now`, until the second after `last` (a second since the epoch).
fn wait_after_point(last: i64, now: DateTime<Utc>) -> Option<std::time::Duration> {
    let wait = last.checked_add(1)?.checked_mul(1000)? - now.timestamp_millis();
    u64::try_from(wait)
        .ok()
        .filter(|w| *w > 0)
        .map(std::time::Duration::from_millis)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A recovery side that stops reading (its storage hung, its helper stopped: here a
    /// process that never reads its input) never holds the transfer's write: past the
    /// deadline it ends as late, on a stop as stopped, each within a poll's wait; a reader
    /// that ends is gone.
    #[test]
    fn a_reader_that_stops_reading_never_holds_the_transfer_past_its_deadline_or_a_stop() {
        let data = vec![7u8; 8 << 20];
        let reader = || {
            std::process::Command::new("sleep")
                .arg("30")
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let mut child = reader();
        let mut sink = child.stdin.take().unwrap();
        let _ = rustix::fs::fcntl_getfl(&sink)
            .and_then(|f| rustix::fs::fcntl_setfl(&sink, f | rustix::fs::OFlags::NONBLOCK));
        let began = std::time::Instant::now();
        let until = began + Duration::from_millis(300);
        assert_eq!(
            write_until(&mut sink, &data, until, &|| None),
            Written::Late
        );
        // A guard against a hang, not a measure: the write returned at all.
        assert!(began.elapsed() < Duration::from_secs(20));
        let far = std::time::Instant::now() + Duration::from_secs(3600);
        let asked = std::sync::atomic::AtomicBool::new(false);
        let stop = || {
            asked.store(true, std::sync::atomic::Ordering::Relaxed);
            Some(Written::Stopped)
        };
        assert_eq!(write_until(&mut sink, &data, far, &stop), Written::Stopped);
        assert!(asked.load(std::sync::atomic::Ordering::Relaxed));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(write_until(&mut sink, &data, far, &|| None), Written::Gone);
    }

    /// An update's answer is believed only about the point asked: its id (or the id with
    /// `-N`), its time, its source, its definition, verified.
    #[test]
    fn an_update_s_answer_about_another_point_is_refused() {
        let taken_at = chrono::Utc::now();
        let apply = Request::Apply {
            image: "/copy/a.img".into(),
            point: "20261203T100000Z".into(),
            taken_at,
            source: "hv1:/a.img".into(),
            retention: 5,
            definition: Some("d1".into()),
            mode: None,
            why: None,
            checkpoint: None,
            since: None,
            created: None,
            marker: None,
            pending: false,
            overwrite_changed: false,
        };
        let made = Point {
            id: "20261203T100000Z".into(),
            taken_at,
            source: "hv1:/a.img".into(),
            size: 1,
            blake3: "0".repeat(64),
            verified: super::super::Verified::Yes,
            checked_at: None,
            received_bytes: 0,
            duration_ms: 0,
            stamp: None,
            definition: Some("d1".into()),
            read: None,
            unusable: None,
            pending: false,
            newest_file: None,
            left_out: Vec::new(),
        };
        assert_eq!(applied_as_asked(&apply, &made), Ok(()));
        let suffixed = Point {
            id: "20261203T100000Z-2".into(),
            ..made.clone()
        };
        assert_eq!(applied_as_asked(&apply, &suffixed), Ok(()));
        let wrong = [
            Point {
                id: "20261203T090000Z".into(),
                ..made.clone()
            },
            Point {
                id: "20261203T100000Z-x".into(),
                ..made.clone()
            },
            Point {
                id: "20261203T100000Z2".into(),
                ..made.clone()
            },
            Point {
                taken_at: taken_at - chrono::Duration::nanoseconds(1),
                ..made.clone()
            },
            Point {
                source: "hv1:/b.img".into(),
                ..made.clone()
            },
            Point {
                definition: None,
                ..made.clone()
            },
            Point {
                verified: super::super::Verified::No,
                ..made.clone()
            },
        ];
        for p in wrong {
            let e = applied_as_asked(&apply, &p).unwrap_err();
            assert!(e.contains("not believed"), "{p:?}: {e}");
        }
    }

    /// A command that ran proves the helper it started; one the shell could not start the
    /// helper of (126: not executable, 127: not found), or one stopped by a signal or by its
    /// deadline (124), does not.
    #[test]
    fn only_a_command_that_ran_its_helper_marks_it_deployed() {
        let transport = crate::replica::snapshot::tests::Cut;
        let helpers = Helpers::new(&transport);
        for (host, exit, proves) in [
            ("ran", 0, true),
            ("failed", 3, true),
            ("not-executable", 126, false),
            ("not-found", 127, false),
            ("killed", 137, false),
            ("timed-out", 124, false),
            ("none", -1, false),
        ] {
            assert_eq!(helpers.guarded(host, exit, "", false).ok(), Some(false));
            let deployed = helpers.deployed.lock().unwrap().contains_key(host);
            assert_eq!(deployed, proves, "{host}: exit {exit}");
        }
    }

    fn side(script: &str) -> Child {
        std::process::Command::new("sh")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_source_is_said_read_to_its_end_while_the_recovery_side_still_commits() {
        let dir = tempfile::tempdir().unwrap();
        let said = dir.path().join("said");
        let f = said.display();
        // The recovery side takes the whole stream, then ends only once the source was said
        // read to its end (or gives up after a while, saying so).
        let recovery = side(&format!(
            "cat >/dev/null; i=0; while [ ! -e '{f}' ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done; \
             if [ -e '{f}' ]; then echo said; else echo 'not said'; fi"
        ));
        let read = || std::fs::write(&said, b"").unwrap();
        let out = pipe_processes(
            side("printf stream"),
            b"",
            recovery,
            Duration::from_secs(300),
            &|| false,
            &read,
        );
        assert_eq!((out.read_exit, out.write_exit), (0, 0), "{}", out.stderr);
        assert_eq!(out.bytes, 6);
        assert_eq!(out.output.trim(), "said");
    }

    #[test]
    fn a_source_is_said_read_to_its_end_when_the_recovery_side_took_it_whole_first() {
        let said = std::sync::atomic::AtomicBool::new(false);
        let read = || said.store(true, std::sync::atomic::Ordering::Relaxed);
        // The source has written all of its stream but has not ended yet (as `ssh` waiting
        // for the helper's exit over the link); the recovery side took all of it and ended.
        let out = pipe_processes(
            side("printf stream; exec sleep 60"),
            b"",
            side("head -c 6 >/dev/null"),
            Duration::from_secs(300),
            &|| false,
            &read,
        );
        assert_eq!((out.read_exit, out.write_exit), (0, 0), "{}", out.stderr);
        assert!(out.write_failed_first, "{out:?}");
        assert!(said.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[test]
    fn a_source_that_failed_or_was_cut_is_never_said_read_to_its_end() {
        let said = std::sync::atomic::AtomicBool::new(false);
        let read = || said.store(true, std::sync::atomic::Ordering::Relaxed);
        let failed = pipe_processes(
            side("printf stream; exit 3"),
            b"",
            side("cat >/dev/null"),
            Duration::from_secs(300),
            &|| false,
            &read,
        );
        assert_eq!(failed.read_exit, 3);
        // The recovery side stopped reading: the source is cut.
        let cut = pipe_processes(
            side("head -c 10000000 /dev/zero"),
            b"",
            side("exit 1"),
            Duration::from_secs(300),
            &|| false,
            &read,
        );
        assert!(cut.write_failed_first, "{cut:?}");
        assert!(!said.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[test]
    fn a_clock_gone_back_past_the_newest_point_is_told_beyond_two_seconds() {
        assert_eq!(behind(1_000, 1_000), None);
        assert_eq!(behind(1_000, 1_005), None);
        // Within the wait for the next second (or two): a round simply waits.
        assert_eq!(behind(1_002, 1_000), None);
        assert_eq!(behind(1_003, 1_000), Some(3));
        assert_eq!(behind(4_600, 1_000), Some(3_600));
        assert_eq!(behind(i64::MIN, i64::MAX), None);
        assert_eq!(behind(i64::MAX, i64::MIN), None);
    }

    #[test]
    fn a_point_is_taken_in_a_second_after_the_one_its_process_began_in() {
        let at = |ms: i64| DateTime::<Utc>::from_timestamp_millis(ms).unwrap();
        assert_eq!(
            wait_after_point(5, at(5_000)),
            Some(std::time::Duration::from_secs(1))
        );
        assert_eq!(
            wait_after_point(5, at(5_250)),
            Some(std::time::Duration::from_millis(750))
        );
        assert_eq!(wait_after_point(5, at(6_000)), None);
        assert_eq!(wait_after_point(5, at(7_300)), None);
        assert_eq!(wait_after_point(i64::MAX, at(7_300)), None);
    }

    /// Two points of one vm taken by one process (a run's copy while the vm ran, then its
    /// last copy once it stopped, a moment later) are in two seconds: two ids. Another vm's
    /// point is not held back by them.
    #[test]
    fn two_points_of_one_item_taken_by_one_process_have_two_ids() {
        let first = point_taken_now("vm two-points-a");
        assert_eq!(wait_for_point("vm two-points-b"), None);
        let second = point_taken_now("vm two-points-a");
        assert!(second.timestamp() > first.timestamp(), "{first} {second}");
        assert_ne!(point_id(first), point_id(second));
    }

    #[test]
    fn a_helper_of_another_protocol_or_none_is_refused_naming_both() {
        let this = serde_json::to_vec(&Hello::this()).unwrap();
        assert!(handshake("hv-pra", 0, &this, "", "fix").is_ok());
        let old = br#"{"protocol":1,"reprise":"0.0.9"}"#;
        let e = handshake("hv-pra", 0, old, "", "remove it").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "hv-pra: its reprise helper speaks protocol 1 (reprise 0.0.9); this reprise speaks protocol {PROTOCOL} (reprise {VERSION}): refusing to use it (remove it)"
            )
        );
        let e = handshake(
            "hv-pra",
            2,
            b"",
            "error: unrecognized subcommand 'version'\n",
            "x",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("hv-pra: its reprise helper speaks no protocol this reprise knows")
                && e.contains("exited with 2: error: unrecognized subcommand 'version'"),
            "{e}"
        );
        // An answer that is not a hello, even with exit 0, is never taken for one.
        let e = handshake("hv-pra", 0, b"present", "", "x").unwrap_err();
        assert!(e.to_string().contains("no protocol"), "{e}");
    }

    #[test]
    fn here_is_this_machine_only_with_the_same_id_and_the_same_user() {
        assert_eq!(
            same_machine("hv-pra", "abc\n0\nb1\n", "abc\n0\nb1\n"),
            Ok(())
        );
        let other = same_machine("hv-pra", "abc\n0\nb1\n", "def\n0\nb1\n").unwrap_err();
        assert!(
            other.contains("hv-pra is another machine") && other.contains("'def'"),
            "{other}"
        );
        let user = same_machine("hv-pra", "abc\n1000\nb1\n", "abc\n0\nb1\n").unwrap_err();
        assert!(
            user.contains("uid 1000") && user.contains("uid 0"),
            "{user}"
        );
        // A clone of the same template: same machine id, another boot.
        assert!(same_machine("hv-pra", "abc\n0\nb1\n", "abc\n0\nb2\n").is_err());
        // No id at all is never a match.
        assert!(same_machine("hv-pra", "", "").is_err());
    }
}
