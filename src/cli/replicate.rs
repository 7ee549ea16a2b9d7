//! `reprise replicate`, `points`, `verify`, `status` and the hidden `helper`: the command
//! line of [`crate::replica`].

use std::io::Write as _;
use std::path::PathBuf;

use super::Outcome;
use super::copied::{Image, VmImages};
use super::freeze::{self, capture_action, capture_definition, snapshot_hook};
use crate::exit;
use crate::model::Model;
use crate::replica::cbt;
use crate::replica::helper::{self, Request};
use crate::replica::reads::{Ended, Reads};
use crate::replica::remote::{
    EarlySend, Helpers, HostUse, Replication, STREAMS, image_path, point_id, point_taken_now,
};
use crate::replica::store::ReadMode;
use crate::replica::window::Window;
use crate::replica::{Point, Verified};
use crate::run::SshOptions;
use crate::ssh::{HostKeyPolicy, SshClient};

/// How to reach hosts, for the replication commands.
#[derive(Debug, Clone, clap::Args)]
pub struct SshArgs {
    /// Trust and record host keys never seen before, each said with its fingerprint (a
    /// changed key is always refused; none is learned for a host a pattern or
    /// `@cert-authority` line of known_hosts may cover).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// known_hosts file for hosts that name none [default: ~/.ssh/known_hosts].
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Private key to log in with [default: the ssh-agent].
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Seconds to wait for a host to answer (1 to 3600).
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout: u64,
    /// This machine is HOST of the inventory (e.g. the recovery host running reprise): its side
    /// of a replication runs here, so the data crosses SSH once instead of being relayed.
    /// Checked against HOST's machine id.
    #[arg(long, env = "REPRISE_HERE", value_name = "HOST")]
    pub here: Option<String>,
    /// The SSH client that carries replication data: the system's `ssh` (faster; host keys
    /// are still checked by reprise first), or libssh2 inside reprise (no `ssh` needed).
    #[arg(
        long,
        env = "REPRISE_SSH_CLIENT",
        value_enum,
        default_value_t = SshClientArg::Openssh,
        value_name = "CLIENT"
    )]
    pub ssh_client: SshClientArg,
    /// The ssh client configuration to read for what a host of the inventory does not name
    /// (HostName, User, Port, IdentityFile, UserKnownHostsFile), or `none` [default:
    /// ~/.ssh/config, when it exists].
    #[arg(long, env = "REPRISE_SSH_CONFIG", value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
}

/// The ssh configuration `--ssh-config` names: `none` reads none; absent, `~/.ssh/config`
/// when it exists.
pub fn user_ssh_config(
    arg: Option<&std::path::Path>,
) -> Result<Option<std::sync::Arc<crate::ssh::config::UserSshConfig>>, Outcome> {
    use crate::ssh::config::{UserSshConfig, default_path};
    let path = match arg {
        Some(p) if p.as_os_str() == "none" => return Ok(None),
        Some(p) => p.to_path_buf(),
        None => match default_path() {
            Some(p) if p.exists() => p,
            _ => return Ok(None),
        },
    };
    UserSshConfig::read(&path)
        .map(|c| Some(std::sync::Arc::new(c)))
        .map_err(|e| Outcome {
            stderr: format!("error: {e}\n"),
            code: match e {
                crate::ssh::config::ConfigError::Read { .. } => crate::exit::IO,
                _ => crate::exit::INVALID_INPUT,
            },
            ..Outcome::default()
        })
}

/// `--ssh-client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SshClientArg {
    Openssh,
    Libssh2,
}

impl SshArgs {
    /// The options these flags give; an ssh configuration that cannot be read or parsed is an
    /// error (exit 3) before any host is reached.
    pub fn options(&self) -> Result<SshOptions, Outcome> {
        Ok(SshOptions {
            policy: if self.accept_new_host_keys {
                HostKeyPolicy::AcceptNew
            } else {
                HostKeyPolicy::Strict
            },
            known_hosts: self
                .known_hosts
                .clone()
                .unwrap_or_else(SshOptions::default_known_hosts),
            known_hosts_given: self.known_hosts.is_some(),
            identity: self.identity.clone(),
            connect_timeout: std::time::Duration::from_secs(self.connect_timeout.max(1)),
            here: self.here.clone(),
            client: match self.ssh_client {
                SshClientArg::Openssh => SshClient::OpenSsh,
                SshClientArg::Libssh2 => SshClient::Libssh2,
            },
            ssh_config: user_ssh_config(self.ssh_config.as_deref())?,
        })
    }
}

/// Runs a helper request of protocol `protocol` with this process's standard input and
/// output.
pub fn helper(request: &Request, protocol: Option<u32>) -> Outcome {
    widen_pipes();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match helper::serve(request.clone(), protocol, &mut stdin.lock(), &mut out) {
        Ok(()) => {
            let _ = out.flush();
            Outcome::default()
        }
        Err(e) => Outcome::err(exit::FAILED, format!("error: {e}\n")),
    }
}

/// Bulk data crosses the helper's standard input or output, usually pipes to sshd or to
/// reprise: 1 MiB pipes (the most a process may ask for by default) instead of 64 KiB mean
/// far fewer wake-ups and context switches on both ends.
fn widen_pipes() {
    use std::os::fd::AsFd as _;
    // It fails harmlessly when one is not a pipe or the size is not allowed.
    let _ = rustix::pipe::fcntl_setpipe_size(std::io::stdin().as_fd(), 1 << 20);
    let _ = rustix::pipe::fcntl_setpipe_size(std::io::stdout().as_fd(), 1 << 20);
}

fn backup_item(model: &Model, id: &str) -> Option<VmImages> {
    let set = model.inventory.backups.get(id)?;
    Some(VmImages {
        id: id.to_string(),
        retention: set.retention,
        images: vec![Image {
            from: set.source_host.value.clone(),
            src: set.source_path.clone(),
            to: set.dest_host.value.clone(),
            dst: set.dest_path.clone(),
        }],
        backup: true,
    })
}

/// Whether the driver of vm `id` reads its disk files while the guest runs frozen, written
/// meanwhile (`replicate_reads_live`).
pub(super) fn reads_live(model: &Model, id: &str) -> bool {
    let inv = &model.inventory;
    inv.vms
        .get(id)
        .and_then(|vm| inv.drivers.get(&vm.driver.value))
        .is_some_and(|d| d.reads_live)
}

/// A vm or a backup set, by id.
fn item(model: &Model, id: &str) -> Result<VmImages, Outcome> {
    if let Some(b) = backup_item(model, id) {
        return Ok(b);
    }
    if model.inventory.vms.contains_key(id) {
        return vm_images(model, id);
    }
    let known = model
        .inventory
        .vms
        .keys()
        .chain(model.inventory.backups.keys())
        .map(String::as_str);
    let hint = crate::diagnostic::did_you_mean(id, known)
        .map(|h| format!("\nhint: {h}"))
        .unwrap_or_default();
    Err(Outcome::err(
        exit::INVALID_INPUT,
        format!("error: unknown vm `{id}` (nor backup set){hint}\n"),
    ))
}

/// The services whose runbooks replicate backup set `set`.
fn services_of_backup<'m>(model: &'m Model, set: &str) -> Vec<&'m str> {
    crate::check::runbook_services(model, crate::check::Replicated::Backup(set))
        .into_iter()
        .map(|s| s.id.as_str())
        .collect()
}

/// The replicated images of a VM, or why it has none.
fn vm_images(model: &Model, id: &str) -> Result<VmImages, Outcome> {
    let Some(vm) = model.inventory.vms.get(id) else {
        let hint =
            crate::diagnostic::did_you_mean(id, model.inventory.vms.keys().map(String::as_str))
                .map(|h| format!("\nhint: {h}"))
                .unwrap_or_default();
        return Err(Outcome::err(
            exit::INVALID_INPUT,
            format!("error: unknown vm `{id}`{hint}\n"),
        ));
    };
    let (from, to) = (vm.primary.value.clone(), vm.recovery.value.clone());
    let (Some(a), Some(b)) = (
        crate::plan::images_dir_of(&model.inventory, &from),
        crate::plan::images_dir_of(&model.inventory, &to),
    ) else {
        return Err(Outcome::err(
            exit::INVALID_INPUT,
            format!(
                "error: vm `{id}` cannot be replicated: hosts `{from}` and `{to}` need the variable `images_dir`\n"
            ),
        ));
    };
    Ok(VmImages {
        id: id.to_string(),
        retention: vm.retention,
        backup: false,
        images: vm
            .disks
            .iter()
            .map(|d| Image {
                from: from.clone(),
                src: image_path(&a, d),
                to: to.clone(),
                dst: image_path(&b, d),
            })
            .collect(),
    })
}

/// The VMs named by `--service` (a service placed on a VM, or a VM id), or every VM that can
/// be replicated.
pub(super) fn select(model: &Model, names: &[String]) -> Result<Vec<VmImages>, Outcome> {
    let inv = &model.inventory;
    if names.is_empty() {
        return Ok(inv
            .vms
            .keys()
            .filter_map(|id| vm_images(model, id).ok())
            .chain(inv.backups.keys().filter_map(|id| backup_item(model, id)))
            .collect());
    }
    let mut out: Vec<VmImages> = Vec::new();
    for name in names {
        let ids: Vec<String> = match inv.services.get(name) {
            Some(s) => {
                let mut ids: Vec<String> = s.vm().map(str::to_string).into_iter().collect();
                ids.extend(
                    inv.backups
                        .keys()
                        .filter(|b| services_of_backup(model, b).contains(&name.as_str()))
                        .cloned(),
                );
                if ids.is_empty() {
                    return Err(Outcome::err(
                        exit::INVALID_INPUT,
                        format!(
                            "error: service `{name}` has no vm and replicates no backup set: there is nothing to replicate\n"
                        ),
                    ));
                }
                ids
            }
            None if inv.vms.contains_key(name) || inv.backups.contains_key(name) => {
                vec![name.clone()]
            }
            None => {
                let known = inv
                    .services
                    .keys()
                    .chain(inv.vms.keys())
                    .chain(inv.backups.keys())
                    .map(String::as_str);
                let hint = crate::diagnostic::did_you_mean(name, known)
                    .map(|h| format!("\nhint: {h}"))
                    .unwrap_or_default();
                return Err(Outcome::err(
                    exit::INVALID_INPUT,
                    format!("error: unknown service, vm or backup set `{name}`{hint}\n"),
                ));
            }
        };
        for id in ids {
            if !out.iter().any(|v| v.id == id) {
                out.push(item(model, &id)?);
            }
        }
    }
    Ok(out)
}

pub(super) fn transport(model: &Model, ssh: &SshArgs) -> Result<crate::ssh::SshTransport, Outcome> {
    Ok(crate::run::transport(model, &ssh.options()?))
}

/// `reprise replicate --dry-run`: what it would do, vm by vm.
fn replicate_plan(model: &Model, vms: &[VmImages]) -> String {
    let mut s = String::new();
    for vm in vms {
        s.push_str(&format!(
            "{} {} (keeps {} points)\n",
            if vm.backup { "backup set" } else { "vm" },
            vm.id,
            vm.retention
        ));
        let guest = guest_copies(model, vm);
        let hook = |action| {
            (!vm.backup && guest.is_none())
                .then(|| snapshot_hook(model, &vm.id, action))
                .flatten()
        };
        if let Some(inv) = guest {
            s.push_str(&format!(
                "  on {}: changed-block tracking of domain {}: running, `virsh backup-begin` (pull mode, a new checkpoint) and only the blocks written since its copies' checkpoint; stopped, qemu-nbd through that checkpoint's bitmap; else every block (said why); copies are raw images of what the guest sees\n",
                inv.primary.value, inv.name
            ));
        }
        if let Some((host, cmd)) = hook("replicate-begin") {
            s.push_str(&format!("  on {host}: {}\n", cmd));
        }
        if let Some((host, cmd, _)) = capture_action(model, vm) {
            s.push_str(&format!("  definition from {host}: {cmd}\n"));
        }
        let window = freeze::window_of(model, vm);
        let when = if guest.is_some() { " (stopped)" } else { "" };
        if let Some((host, _)) = &window {
            s.push_str(&format!(
                "  on {host}{when}: the start of the reads marked ({}), a clock tick old before the first disk is read\n",
                Window::shown(&vm.id)
            ));
        }
        for img in &vm.images {
            s.push_str(&format!(
                "  {}:{} → {}:{}\n",
                img.from, img.src, img.to, img.dst
            ));
        }
        if let Some((host, _)) = &window {
            s.push_str(&format!(
                "  on {host}{when}: any disk written since the mark named, and the points (held until then) unusable\n"
            ));
        }
        if let Some((host, cmd)) = hook("replicate-end") {
            s.push_str(&format!("  on {host}: {}\n", cmd));
        }
    }
    s
}

/// One line of progress: what was sent, how fast, and, when the size of the source is known,
/// how long at most until the end (an update sends only what changed: often far less).
pub fn progress_line(label: &str, sent: u64, total: Option<u64>, elapsed: f64) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rate = if elapsed > 0.0 {
        sent as f64 / elapsed
    } else {
        0.0
    };
    let mut line = format!("{label}: {:.1} MiB sent, {:.1} MB/s", mib(sent), rate / 1e6);
    if let Some(total) = total.filter(|t| *t > 0) {
        let pct = (sent as f64 / total as f64 * 100.0).min(100.0);
        line.push_str(&format!(", {pct:.0}% of {:.1} MiB", mib(total)));
        if rate > 0.0 && total > sent {
            let eta = ((total - sent) as f64 / rate).round() as u64;
            line.push_str(&format!(
                ", at most {} left",
                crate::duration::human_secs(eta)
            ));
        }
    }
    line
}

/// Shows [`progress_line`] on a terminal (an indicatif line redrawn every half second) while
/// `work` runs.
fn with_progress<T>(label: &str, total: Option<u64>, work: impl FnOnce() -> T) -> T {
    use std::io::IsTerminal as _;
    use std::sync::atomic::Ordering;
    if !std::io::stderr().is_terminal() {
        return work();
    }
    let base = crate::ssh::PIPED_BYTES.load(Ordering::Relaxed);
    let label = label.to_string();
    let line = move |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let sent = crate::ssh::PIPED_BYTES.load(Ordering::Relaxed) - base;
        let elapsed = state.elapsed().as_secs_f64();
        let _ = w.write_str(&progress_line(&label, sent, total, elapsed));
    };
    let style = indicatif::ProgressStyle::with_template("{line}")
        .expect("a valid template")
        .with_key("line", line);
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
            .with_style(style);
    bar.enable_steady_tick(std::time::Duration::from_millis(500));
    let out = work();
    bar.finish_and_clear();
    out
}

/// The size of a file on a host, for the progress display.
fn remote_size(transport: &dyn crate::ssh::Transport, host: &str, path: &str) -> Option<u64> {
    let cmd = format!("stat -c %s -- {}", crate::template::shell_quote(path));
    let out = transport
        .exec(host, &cmd, std::time::Duration::from_secs(30))
        .ok()?;
    out.stdout.trim().parse().ok()
}

/// `reprise replicate`.
pub fn replicate(
    model: &Model,
    services: &[String],
    verify: bool,
    scan: bool,
    dry_run: bool,
    compress: bool,
    ssh: &SshArgs,
) -> Outcome {
    let vms = match select(model, services) {
        Ok(v) => v,
        Err(o) => return o,
    };
    if dry_run {
        return Outcome {
            stdout: replicate_plan(model, &vms),
            ..Outcome::default()
        };
    }
    // From here on SIGINT, SIGTERM and SIGHUP stop the replication cleanly.
    let shutdown = crate::shutdown::Shutdown::listen();
    let transport = match transport(model, ssh) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let flags = Flags {
        verify,
        scan,
        compress,
    };
    let out = round(model, &vms, flags, &transport, &shutdown, None);
    // The OpenSSH master connections end with the transport, on every way out (a signal
    // included), once every snapshot is merged back.
    drop(transport);
    out
}

/// How `reprise replicate` reads and sends.
#[derive(Debug, Clone, Copy)]
pub struct Flags {
    /// `--verify`.
    pub verify: bool,
    /// `--scan` (or `--verify`).
    pub scan: bool,
    /// `--compress`.
    pub compress: bool,
}

/// One replication of `vms` through `transport`; a signal cuts it cleanly, and so does
/// `limit` when it runs past it (then `shutdown` says [`ROUND_LIMIT`]).
fn round(
    model: &Model,
    vms: &[VmImages],
    flags: Flags,
    transport: &crate::ssh::SshTransport,
    shutdown: &crate::shutdown::Shutdown,
    limit: Option<std::time::Duration>,
) -> Outcome {
    let began = std::time::Instant::now();
    let Flags {
        verify,
        scan,
        compress,
    } = flags;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let finished = std::sync::atomic::AtomicBool::new(false);
    use std::sync::atomic::Ordering;
    std::thread::scope(|scope| {
        // A signal cuts the transfers under way (their helpers stop, the recovery copies
        // keep their last point); what follows still runs: the snapshot is merged back.
        let watch = scope.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                if limit.is_some_and(|l| began.elapsed() > l) {
                    shutdown.trigger(ROUND_LIMIT);
                }
                if shutdown.requested() {
                    stop.store(true, Ordering::Relaxed);
                    crate::ssh::Transport::interrupt(transport);
                    return;
                }
                // Woken when the round ends: it does not wait for this.
                std::thread::park_timeout(std::time::Duration::from_millis(50));
            }
        });
        let out = replicate_all(
            model, vms, verify, scan, compress, transport, &stop, shutdown,
        );
        finished.store(true, Ordering::Relaxed);
        watch.thread().unpark();
        out
    })
}

/// How often `reprise replicate --every` keeps its idle connections alive between rounds.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// How long before a round `reprise replicate --every` checks its kept connections, and how
/// long each may take to answer.
const PROBE_LEAD: std::time::Duration = std::time::Duration::from_secs(5);
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long `reprise replicate --every` keeps a connection at most: then it logs in again
/// (a name that now resolves to another address, a client key withdrawn, are then seen).
const KEPT_AT_MOST: std::time::Duration = std::time::Duration::from_secs(3600);

/// Why a round of `reprise replicate --every` was stopped when it ran past its limit.
const ROUND_LIMIT: &str = "the round's time limit";

/// The longest a round of `replicate --every DURATION` may run: two periods, one hour at
/// least and a day at most (as a timer's run of `reprise schedule`).
fn round_limit(every: std::time::Duration) -> std::time::Duration {
    (every * 2).clamp(
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_secs(86_400),
    )
}

/// This binary's file as it began, to tell when it was replaced (an upgrade).
fn own_file() -> Option<(PathBuf, (u64, u64))> {
    let path = std::env::current_exe().ok()?;
    let id = file_id(&path)?;
    Some((path, id))
}

fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Whether another file now lies at the path this binary began from: an upgrade replaced
/// it. A path that cannot be read now (an upgrade under way) is not yet a replacement.
fn replaced(binary: Option<&(PathBuf, (u64, u64))>) -> Option<&std::path::Path> {
    let (path, id) = binary?;
    file_id(path).is_some_and(|now| now != *id).then_some(path)
}

/// How `reprise replicate --every` ends when its binary was replaced.
fn upgraded(path: &std::path::Path) -> Outcome {
    Outcome::err(
        exit::FAILED,
        format!(
            "error: {} was replaced (an upgrade?): exiting so that the new one is started (`reprise schedule --keep-connected` units start it again)\n",
            path.display()
        ),
    )
}

/// A connection kept from one round to the next: the transport, what its hosts' known_hosts
/// files held when it was made (and still held after each round since), and when it was made.
type Kept = (
    crate::ssh::SshTransport,
    Vec<(PathBuf, Option<[u8; 32]>)>,
    std::time::Instant,
);

/// `reprise replicate --every`: a round every `every` until a signal, each with the inventory
/// as `load` reads it then, through SSH connections kept from round to round while the hosts'
/// addresses, users and keys stay as they were (a connection that ended is made again).
pub fn serve(
    load: impl Fn() -> Result<(Model, String), Outcome>,
    services: &[String],
    flags: Flags,
    ssh: &SshArgs,
    every: std::time::Duration,
) -> Outcome {
    let shutdown = crate::shutdown::Shutdown::listen();
    let asked = crate::shutdown::Asked::listen();
    let binary = own_file();
    let stopped = |shutdown: &crate::shutdown::Shutdown| {
        Outcome::ok(format!(
            "stopped by {} between rounds\n",
            shutdown.reason().unwrap_or("a signal")
        ))
    };
    let mut kept: Option<Kept> = None;
    let mut number: u64 = 0;
    let mut now = false;
    loop {
        if shutdown.requested() {
            return stopped(&shutdown);
        }
        // An upgrade replaced this binary: the helper it runs here is gone with it, and the
        // new one should run. The service manager starts it again (`Restart=always`).
        if let Some(path) = replaced(binary.as_ref()) {
            return upgraded(path);
        }
        number += 1;
        // A SIGUSR1 that came during the last round is answered by this one.
        if asked.as_ref().is_some_and(crate::shutdown::Asked::take) {
            now = true;
        }
        let began = std::time::Instant::now();
        let at = chrono::Utc::now();
        let mut reached = false;
        let mut out = match load() {
            Err(o) => o,
            Ok((model, warnings)) => {
                let mut o = match select(&model, services).and_then(|vms| {
                    if let Some(secs) = crate::replica::remote::clock_behind_points() {
                        reached = true;
                        return Err(Outcome::err(
                            exit::FAILED,
                            format!(
                                "error: this machine's clock went back {secs} s since this command's last points: no round until it passes them again (point ids are to the second, and a copy takes no point older than its newest); check the clock and its time source\n"
                            ),
                        ));
                    }
                    let fresh = transport(&model, ssh)?;
                    let trusted = fresh.trust_stamp();
                    // A host reached otherwise now (address, port, user, key, options), a
                    // known_hosts file changed (a key taken out is no longer trusted), or
                    // connections an hour old: new connections. The kept ones end with the
                    // transport they belong to.
                    let (t, made, was_kept) = match kept.take() {
                        Some((t, stamp, made))
                            if t.same_hosts(&fresh)
                                && stamp == trusted
                                && made.elapsed() < KEPT_AT_MOST =>
                        {
                            (t, made, true)
                        }
                        Some((t, stamp, made)) => {
                            let why = if !t.same_hosts(&fresh) {
                                "a host is reached otherwise now"
                            } else if stamp != trusted {
                                "a known_hosts file changed"
                            } else {
                                "they are an hour old"
                            };
                            tracing::debug!(
                                age_s = made.elapsed().as_secs(),
                                "new connections for this round: {why}"
                            );
                            (fresh, std::time::Instant::now(), false)
                        }
                        None => (fresh, std::time::Instant::now(), false),
                    };
                    reached = true;
                    tracing::debug!(
                        ms = began.elapsed().as_millis() as u64,
                        "round {number}: inventory read, connections chosen"
                    );
                    let limit = Some(round_limit(every));
                    let o = match was_kept && now {
                        // Asked (SIGUSR1): its kept connections checked first, the masters'
                        // while it begins (its first bulk stream to a host waits for the
                        // answer): a stalled one would hold it up for the connect timeout.
                        true => t.probe_while(PROBE_LIMIT, || {
                            round(&model, &vms, flags, &t, &shutdown, limit)
                        }),
                        false => round(&model, &vms, flags, &t, &shutdown, limit),
                    };
                    // Kept only if the files did not change during the round either (a key
                    // it learned under accept-new included: the next round logs in again).
                    if t.trust_stamp() == trusted {
                        kept = Some((t, trusted, made));
                    }
                    Ok(o)
                }) {
                    Ok(o) | Err(o) => o,
                };
                o.stderr = warnings + &o.stderr;
                o
            }
        };
        if !reached && number == 1 {
            // A mistake in the command or the files, said to whoever starts it: no loop.
            return out;
        }
        if !reached {
            out.stderr.push_str(
                "error: this round replicated nothing (the copies keep their points); the next one reads the inventory again\n",
            );
        }
        let took = began.elapsed();
        let next = at + chrono::Duration::from_std(every).unwrap_or_default();
        out.stdout = format!(
            "round {number}{}, {}: {} in {:.2} s{}\n{}",
            if now { " (asked by SIGUSR1)" } else { "" },
            at.format("%Y-%m-%dT%H:%M:%SZ"),
            if out.code == exit::OK { "ok" } else { "FAILED" },
            took.as_secs_f64(),
            if shutdown.requested() {
                String::new()
            } else if took >= every {
                format!(
                    "; it took longer than --every {}: the next round starts now",
                    crate::duration::Duration::from_secs(every.as_secs())
                )
            } else if next.date_naive() == at.date_naive() {
                format!("; next round at {}", next.format("%H:%M:%SZ"))
            } else {
                format!("; next round at {}", next.format("%Y-%m-%dT%H:%M:%SZ"))
            },
            out.stdout
        );
        let code = out.code;
        super::print(&out);
        if shutdown.reason() == Some(ROUND_LIMIT) {
            return Outcome::err(
                exit::FAILED,
                format!(
                    "error: round {number} ran past its limit of {} and was stopped (its snapshots merged back): exiting so that the service starts afresh\n",
                    crate::duration::Duration::from_secs(round_limit(every).as_secs())
                ),
            );
        }
        if shutdown.requested() {
            return match code {
                exit::INTERRUPTED => Outcome {
                    code,
                    ..Outcome::default()
                },
                _ => stopped(&shutdown),
            };
        }
        // Until the next round: the idle connections kept alive (one that ended is
        // dropped), a signal heard within 0.1 s.
        let mut alive = std::time::Instant::now();
        let mut probed = false;
        now = false;
        while began.elapsed() < every {
            if shutdown.requested() {
                return stopped(&shutdown);
            }
            if asked.as_ref().is_some_and(crate::shutdown::Asked::take) {
                // A round now (`systemctl reload …`: a fresh point before a planned
                // failover), its connections checked first.
                // (Its kept connections are checked as it begins: `probe_while` above.)
                now = true;
                break;
            }
            if !probed && began.elapsed() + PROBE_LEAD >= every {
                // Shortly before the round, not in it: a connection that stalled would hold
                // the round up for the connect timeout at each of its commands.
                if let Some((t, _, _)) = &kept {
                    t.probe(PROBE_LIMIT);
                }
                probed = true;
            } else if alive.elapsed() >= KEEP_ALIVE {
                if let Some((t, _, _)) = &kept {
                    t.keep_alive();
                }
                if let Some(path) = replaced(binary.as_ref()) {
                    return upgraded(path);
                }
                alive = std::time::Instant::now();
            }
            // Woken at once by SIGUSR1 (`Asked`).
            std::thread::park_timeout(std::time::Duration::from_millis(20));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn replicate_all(
    model: &Model,
    vms: &[VmImages],
    verify: bool,
    scan: bool,
    compress: bool,
    transport: &crate::ssh::SshTransport,
    stop: &std::sync::atomic::AtomicBool,
    shutdown: &crate::shutdown::Shutdown,
) -> Outcome {
    use std::sync::atomic::Ordering;
    let helpers = Helpers::new(transport);
    // Every host at once: the connections, the helper uploads; the --here check goes on
    // while the first vm's steps begin.
    let hosts = hosts_of(vms);
    std::thread::scope(|scope| {
        helpers.prepare_in(scope, &hosts);
        let mut out = Outcome::default();
        let stopped = || stop.load(Ordering::Relaxed);
        let mut left: Vec<&str> = Vec::new();
        let mut frozen = false;
        for vm in vms {
            if stopped() {
                left.push(&vm.id);
                continue;
            }
            // One replication of it at a time on this machine (a round and one run by hand).
            let _held = match hold_item(vm, &stopped, &mut out) {
                Ok(held) => held,
                Err(e) => {
                    out.stderr
                        .push_str(&format!("error: {}: {e}; not replicated now\n", vm.id));
                    out.code = exit::FAILED;
                    continue;
                }
            };
            if let Some(why) = freeze::hooks_unwritable(model, vm) {
                out.stderr.push_str(&format!(
                    "error: {}: {why}; not replicated, its copies are as they were\n",
                    vm.id
                ));
                out.code = exit::FAILED;
                continue;
            }
            if let Some(inv) = guest_copies(model, vm) {
                let Ok(definition) = capture_definition(model, &helpers, vm, &mut out) else {
                    continue;
                };
                // The point is taken once the read is decided, which needs no point: the wait
                // for its second (see `point_taken_now`) overlaps the decision's commands.
                let take = || {
                    let taken_at = point_taken_now(&format!("vm {}", vm.id));
                    Replication {
                        point: point_id(taken_at),
                        taken_at,
                        retention: vm.retention,
                        definition,
                        reread: verify,
                        compress,
                        live: reads_live(model, &vm.id),
                        // Read through QEMU from a point in time, not frozen live.
                        pending: false,
                        deadline: std::time::Duration::from_secs(7200),
                        reads: None,
                        overwrite_changed: false,
                    }
                };
                replicate_guest(vm, inv, transport, &helpers, take, scan, &stopped, &mut out);
                continue;
            }
            let deadline = std::time::Duration::from_secs(7200);
            // The streams of its first disks start while the steps below run: their connections,
            // channels and helpers are ready once the freeze holds, and they open nothing before
            // they are told to read (dropped unused, they end so).
            let early_r = Replication {
                point: String::new(),
                taken_at: chrono::Utc::now(),
                retention: vm.retention,
                reread: verify,
                compress,
                live: reads_live(model, &vm.id),
                pending: false,
                deadline,
                definition: None,
                reads: None,
                overwrite_changed: false,
            };
            // The snapshot left by a cut replication merged back, the vm's definition captured,
            // its disks frozen by its driver's snapshot while they are read.
            let (prepared, early) = std::thread::scope(|scope| {
                let early: Vec<_> = vm
                    .images
                    .iter()
                    .take(if vm.backup { 0 } else { STREAMS })
                    .map(|img| {
                        let (helpers, r) = (&helpers, &early_r);
                        scope.spawn(move || {
                            helpers.start_send(&img.from, &img.src, &img.to, &img.dst, r)
                        })
                    })
                    .collect();
                let prepared = freeze::prepare(
                    model,
                    transport,
                    &helpers,
                    vm,
                    &stopped,
                    &mut out,
                    &mut frozen,
                );
                let early: Vec<Option<EarlySend>> =
                    early.into_iter().map(|h| h.join().ok().flatten()).collect();
                (prepared, early)
            });
            let Some((definition, snapshot)) = prepared else {
                drop(early);
                if stopped() {
                    left.push(&vm.id);
                }
                continue;
            };
            let taken_at = point_taken_now(&format!("vm {}", vm.id));
            let held = snapshot.held();
            let reads = std::sync::Arc::new(Reads::new(vm.images.len()));
            let r = Replication {
                point: point_id(taken_at),
                taken_at,
                retention: vm.retention,
                reread: verify,
                compress,
                live: reads_live(model, &vm.id),
                pending: snapshot.confirms(),
                deadline,
                definition,
                reads: Some(reads.clone()),
                overwrite_changed: false,
            };
            // The snapshot is merged back as soon as every disk was read to its end (none is read
            // again), while the recovery side commits; else once every stream has ended.
            let ended = std::thread::scope(|scope| {
                let end = scope.spawn(|| {
                    if reads.release() {
                        tracing::debug!(
                            vm = vm.id,
                            "every disk read to its end: snapshot merged back while the copies commit"
                        );
                    }
                    snapshot.end()
                });
                let made = {
                    let _ended = Ended(&reads);
                    copy_images(
                        vm, transport, &helpers, &r, early, &stopped, &mut left, &mut out,
                    )
                };
                (end.join(), made)
            });
            let (ended, made) = ended;
            let super::freeze::Ending {
                said,
                failed: ended,
                held: confirmed,
            } = match ended {
                Ok(ended) => ended,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            // Said torn: every copy is marked, a copy whose answer was lost included. Confirmed:
            // only those that said they made a point (another's stays held).
            let copies = || -> Vec<(&str, &str)> {
                vm.images
                    .iter()
                    .map(|img| (img.to.as_str(), img.dst.as_str()))
                    .collect()
            };
            if confirmed && r.pending && !made.is_empty() {
                // The freeze held: the points read under it, held until now, are good.
                match crate::replica::snapshot::confirm_note(
                    held,
                    helpers.confirm(&made, r.taken_at),
                ) {
                    Ok(line) => out.stdout.push_str(&format!("{}: {line}\n", vm.id)),
                    Err(e) => {
                        out.stderr.push_str(&format!("error: {}: {e}\n", vm.id));
                        out.code = exit::FAILED;
                    }
                }
            }
            if let Some(line) = said {
                out.stdout.push_str(&line);
            }
            match ended {
                Ok(()) => {}
                Err((e, torn)) => {
                    out.stderr.push_str(&e);
                    if let Some(why) = torn {
                        let note = crate::replica::snapshot::torn_note(helpers.mark_torn(
                            &copies(),
                            r.taken_at,
                            &why,
                        ));
                        out.stderr.push_str(&format!("error: {}: {note}\n", vm.id));
                    }
                    out.code = exit::FAILED;
                }
            }
        }
        if stopped() {
            interrupted(&mut out, shutdown, &left, frozen);
        }
        out
    })
}

/// Every host the copies of `vms` are read from or written to, once each, with how many
/// disks of one vm at most read from it and write to it at once (the disks of a vm stream
/// together, the vms one after the other).
/// Holds the replication of `vm` on this machine ([`crate::replica::busy`]), keyed by its
/// first disk or folder on its primary host, waiting (said) while another process
/// replicates it.
fn hold_item(
    vm: &VmImages,
    stopped: &dyn Fn() -> bool,
    out: &mut Outcome,
) -> Result<Option<std::fs::File>, String> {
    let Some(first) = vm.images.first() else {
        return Ok(None);
    };
    let source = format!("{}:{}", first.from, first.src);
    crate::replica::busy::hold(&vm.id, &source, stopped, &mut |said| {
        eprintln!("{}: {said}", vm.id);
        out.stdout.push_str(&format!("{}: {said}\n", vm.id));
    })
    .map(Some)
}

fn hosts_of(vms: &[VmImages]) -> Vec<HostUse<'_>> {
    let mut hosts: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for vm in vms {
        let mut this: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
        for img in &vm.images {
            this.entry(&img.from).or_default().0 += 1;
            this.entry(&img.to).or_default().1 += 1;
        }
        for (host, (reads, writes)) in this {
            let most = hosts.entry(host).or_default();
            *most = (
                most.0.max(reads.min(STREAMS)),
                most.1.max(writes.min(STREAMS)),
            );
        }
    }
    hosts
        .into_iter()
        .map(|(host, (reads, writes))| HostUse {
            host,
            reads,
            writes,
        })
        .collect()
}

/// Runs `copy` on each of `n` disks, [`STREAMS`] at most at once, each started only while
/// nothing `stopped` the replication: per disk in order, its result and whether a stop had
/// come when it ended (`None`: not started).
fn each_disk<T: Send>(
    n: usize,
    stopped: &(dyn Fn() -> bool + Sync),
    copy: impl Fn(usize) -> T + Sync,
) -> Vec<Option<(T, bool)>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let done: Vec<std::sync::Mutex<Option<(T, bool)>>> =
        (0..n).map(|_| std::sync::Mutex::new(None)).collect();
    // Every stream has ended when the scope does: nothing still reads the disks after.
    std::thread::scope(|scope| {
        for _ in 0..n.min(STREAMS) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    if stopped() {
                        continue;
                    }
                    let result = copy(i);
                    *done[i].lock().expect("not poisoned") = Some((result, stopped()));
                }
            });
        }
    });
    done.into_iter()
        .map(|d| d.into_inner().expect("not poisoned"))
        .collect()
}

/// The name of an image's file, for messages.
fn disk_name(img: &Image) -> &str {
    img.src.rsplit('/').next().unwrap_or(&img.src)
}

/// The label of a vm's progress line: the vm, and its disk when it has one.
fn progress_label(vm: &VmImages) -> String {
    match &vm.images[..] {
        [one] => format!("{} {}", vm.id, disk_name(one)),
        _ => vm.id.clone(),
    }
}

/// Says what a stop left out, and whether every snapshot made was merged back.
fn interrupted(
    out: &mut Outcome,
    shutdown: &crate::shutdown::Shutdown,
    left: &[&str],
    frozen: bool,
) {
    out.stderr.push_str(&format!(
        "interrupted by {}: no new copy was started{}{}\n",
        shutdown.reason().unwrap_or("a signal"),
        if left.is_empty() {
            String::new()
        } else {
            format!(" (not replicated: {})", left.join(", "))
        },
        if frozen && out.code != exit::FAILED {
            "; every snapshot made was merged back"
        } else {
            ""
        }
    ));
    out.code = exit::INTERRUPTED;
}

/// Copies the disks (or backup folder) of `vm` to their recovery copies, all at once
/// ([`each_disk`]), said in disk order; those a stop left out are added to `left`.
#[allow(clippy::too_many_arguments)]
fn copy_images<'v>(
    vm: &'v VmImages,
    transport: &crate::ssh::SshTransport,
    helpers: &Helpers,
    r: &Replication,
    early: Vec<Option<EarlySend>>,
    stopped: &(dyn Fn() -> bool + Sync),
    left: &mut Vec<&'v str>,
    out: &mut Outcome,
) -> Vec<(&'v str, &'v str)> {
    let mut made = Vec::new();
    // Only the first disk's point records the definition (it is kept beside it).
    let rest = Replication {
        definition: None,
        ..r.clone()
    };
    let total = if !vm.backup && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        disks_size(transport, vm)
    } else {
        None
    };
    // A disk's stream started early ([`Helpers::start_send`]) is taken by its copy; those a
    // stop leaves unused end with this function.
    let early: Vec<std::sync::Mutex<Option<EarlySend>>> =
        early.into_iter().map(std::sync::Mutex::new).collect();
    let results = with_progress(&progress_label(vm), total, || {
        each_disk(vm.images.len(), stopped, |i| {
            let img = &vm.images[i];
            let r = if i == 0 { r } else { &rest };
            tracing::debug!(vm = vm.id, disk = disk_name(img), "disk stream begins");
            let early = early
                .get(i)
                .and_then(|e| e.lock().ok().and_then(|mut e| e.take()));
            let done = if vm.backup {
                helpers.replicate_tree(&img.from, &img.src, &img.to, &img.dst, r)
            } else {
                helpers.replicate_started(&img.from, &img.src, &img.to, &img.dst, r, early)
            };
            tracing::debug!(
                vm = vm.id,
                disk = disk_name(img),
                ok = done.is_ok(),
                "disk stream ends"
            );
            done
        })
    });
    for (img, done) in vm.images.iter().zip(results) {
        let name = disk_name(img);
        match done {
            None => left.push(name),
            Some((Ok(t), _)) => {
                out.stdout.push_str(&format!("{}: {}", vm.id, t.line()));
                made.push((img.to.as_str(), img.dst.as_str()));
            }
            Some((Err(_), true)) => {
                out.stderr.push_str(&format!(
                    "{}: the copy of {name} was stopped; {}:{} keeps its last point\n",
                    vm.id, img.to, img.dst
                ));
                left.push(name);
            }
            Some((Err(e), false)) => {
                out.stderr.push_str(&format!("error: {}: {e}\n", vm.id));
                out.code = exit::FAILED;
            }
        }
    }
    made
}

/// The sum of the sizes of the disks of `vm` on their hosts (asked at once), for the progress
/// display; `None` when one is unknown.
fn disks_size(transport: &crate::ssh::SshTransport, vm: &VmImages) -> Option<u64> {
    std::thread::scope(|scope| {
        let sizes: Vec<_> = vm
            .images
            .iter()
            .map(|img| scope.spawn(|| remote_size(transport, &img.from, &img.src)))
            .collect();
        sizes
            .into_iter()
            .map(|s| s.join().ok().flatten())
            .sum::<Option<u64>>()
    })
}

/// The vm of `vm` when its copies are of the disk as the guest sees it (`changed_blocks`, on
/// the libvirt driver).
fn guest_copies<'m>(model: &'m Model, vm: &VmImages) -> Option<&'m crate::inventory::Vm> {
    let inv = model.inventory.vms.get(&vm.id)?;
    (!vm.backup && inv.changed_blocks && inv.driver.value == "libvirt").then_some(inv)
}

/// Replicates a vm whose copies are of the disk as the guest sees it: a running domain
/// through libvirt's backup API (only what changed since its copies' checkpoint, as of one
/// instant for all its disks), a stopped one through `qemu-nbd` (only what its qcow2 files'
/// bitmap marks). Every disk's line says how it was read, and why every block when it was.
#[allow(clippy::too_many_arguments)]
fn replicate_guest(
    vm: &VmImages,
    inv: &crate::inventory::Vm,
    transport: &crate::ssh::SshTransport,
    helpers: &Helpers,
    take: impl FnOnce() -> Replication,
    scan: bool,
    stopped: &(dyn Fn() -> bool + Sync),
    out: &mut Outcome,
) {
    let (dom, host) = (inv.name.as_str(), inv.primary.value.as_str());
    let fail = |out: &mut Outcome, e: String| {
        out.stderr.push_str(&format!(
            "error: {}: {e}; not replicated, its copies are as they were\n",
            vm.id
        ));
        out.code = exit::FAILED;
    };
    let Some(to) = vm.images.first().map(|i| i.to.as_str()) else {
        return;
    };
    let (running, disks) = match cbt::domain(transport, host, dom) {
        Ok(x) => x,
        Err(e) => return fail(out, format!("domain {dom} on {host}: {e}")),
    };
    let sources: Vec<&str> = vm.images.iter().map(|i| i.src.as_str()).collect();
    let mine = match cbt::disks_of(&disks, &sources) {
        Ok(m) => m,
        Err(e) => return fail(out, format!("domain {dom} on {host}: {e}")),
    };
    if !running && let Some(why) = cbt::stopped_read_problem(&mine) {
        return fail(out, format!("domain {dom} on {host}: {why}"));
    }
    let g = Guest {
        vm,
        transport,
        helpers,
        dom,
        host,
        running,
    };
    let (mut decision, made, relied) = match guest_decision(&g, to, &mine, scan) {
        Ok(d) => d,
        Err(e) => return fail(out, e),
    };
    let all: Vec<String> = disks.iter().map(|d| d.target.clone()).collect();
    let ours: Vec<String> = mine.iter().map(|d| d.target.clone()).collect();
    let qcow2 = mine.iter().all(|d| d.format == "qcow2");
    // The point: its id names the new checkpoint and the mark.
    let mut r = take();
    let new_cp = cbt::checkpoint_name(&r.point);
    let mut job = Job {
        transport,
        host,
        dom,
        on: false,
    };
    // The checkpoint the point is, and when libvirt made it.
    let checkpoint = if running {
        let new = qcow2.then_some(new_cp.as_str());
        let created = match begin_job(&g, &all, &ours, new, &mut decision, out) {
            Ok(c) => c,
            Err(e) => return fail(out, e),
        };
        job.on = true;
        // The backup's export is the disks as of its start: the point is of that moment,
        // never of before (a point chosen as taken before a time holds nothing written
        // after it). Its id still names the replication (and its checkpoint).
        r.taken_at = r.taken_at.max(chrono::Utc::now());
        qcow2.then(|| (new_cp.clone(), created))
    } else {
        // Stopped when asked, maybe not when the point's time was taken: its files are read
        // as they are now, and the point is of now (never of before what it holds).
        r.taken_at = r.taken_at.max(chrono::Utc::now());
        decision
            .since
            .clone()
            .map(|c| (c.clone(), made.get(&c).copied()))
    };
    let files: Vec<String> = mine.iter().map(|d| d.source.clone()).collect();
    // Each disk's file gets a mark of its own, of its copy, for the point: the next
    // replication reads it through a bitmap only while the file still holds it. A file put
    // at another disk's path (two swapped, the wrong one restored there) holds that disk's
    // mark, not this one's, though it holds the checkpoint's bitmap, whose name every disk
    // of the domain shares. A stopped vm's point is of a checkpoint older than it: its files
    // are marked before they are read. A running vm's are marked through its QEMU once the
    // backup has begun (the export is the disks as they were then, and nothing can put
    // another file under a running QEMU); QEMU writes the mark into the file when it stops
    // cleanly, so a vm killed since leaves none, and is read whole.
    let marker = checkpoint.as_ref().map(|_| {
        let m = cbt::marker_name(&r.point);
        vm.images
            .iter()
            .map(|i| cbt::disk_mark(&m, &i.to, &i.dst))
            .collect::<Vec<String>>()
    });
    let marked: Vec<(String, String)> = match &marker {
        Some(marks) => files.iter().cloned().zip(marks.iter().cloned()).collect(),
        None => Vec::new(),
    };
    if running && !marked.is_empty() {
        // Still the files decided on, once the export holds them: the marks the read
        // through the bitmap relies on are looked for again.
        if decision.mode == ReadMode::ChangedBlocks
            && let Some(why) = cbt::marks_missing(
                transport,
                host,
                Some(dom),
                &files
                    .iter()
                    .zip(&relied)
                    .filter_map(|(f, m)| {
                        Some((
                            f.as_str(),
                            "its copy's newest point".to_string(),
                            m.as_deref()?,
                        ))
                    })
                    .collect::<Vec<_>>(),
            )
        {
            return fail(
                out,
                format!(
                    "{why} (found once its backup had begun): nothing was read; replicate it again, which reads every block"
                ),
            );
        }
        if let Err(e) = cbt::add_live_marks(transport, host, dom, &marked) {
            out.stderr.push_str(&format!(
                "warning: {}: {e}: the next replication of it reads every block\n",
                vm.id
            ));
        }
    } else {
        for (f, mark) in &marked {
            if let Err(e) = cbt::add_marker(transport, host, std::slice::from_ref(f), mark) {
                return fail(out, e);
            }
        }
    }
    let read = GuestCopy {
        decision: &decision,
        checkpoint,
        marker: marker.clone(),
        relied,
    };
    // A stopped vm's disks are read in a window: started (or written) between the reads of
    // two of them, its copies would be of two moments, each found unwritten while it was read.
    let window = match running {
        true => None,
        false => Window::of(&vm.id, &files),
    };
    if let Some(w) = &window {
        if let Err(e) = w.open(transport, host) {
            return fail(
                out,
                format!(
                    "{e}: whether its disks are written between their reads could not be told, so they are not read"
                ),
            );
        }
        // Held until the window's check says no disk was written; of the moment the reads
        // may begin, never of before.
        r.pending = true;
        r.taken_at = r.taken_at.max(chrono::Utc::now());
    }
    let all_done = copy_guest_disks(&g, &r, &mine, &read, stopped, out);
    if let Some(w) = &window {
        let copies: Vec<(&str, &str)> = vm
            .images
            .iter()
            .map(|img| (img.to.as_str(), img.dst.as_str()))
            .collect();
        let found = w.close(transport, host);
        if let Some(why) = Window::torn_why(&vm.id, &found) {
            let note =
                crate::replica::snapshot::torn_note(helpers.mark_torn(&copies, r.taken_at, &why));
            out.stderr.push_str(&format!(
                "error: {}: {why}: {note}; replicate it again\n",
                vm.id
            ));
            out.code = exit::FAILED;
        } else if all_done {
            match crate::replica::snapshot::confirm_note(
                "no disk was written while they were read",
                helpers.confirm(&copies, r.taken_at),
            ) {
                Ok(line) => out.stdout.push_str(&format!("{}: {line}\n", vm.id)),
                Err(e) => {
                    out.stderr.push_str(&format!("error: {}: {e}\n", vm.id));
                    out.code = exit::FAILED;
                }
            }
        }
    }
    if job.on {
        job.on = false;
        if let Err(e) = cbt::end(transport, host, dom) {
            out.stderr.push_str(&format!(
                "error: {}: the backup job of domain {dom} on {host} did not end ({e}); run there: virsh domjobabort {dom}\n",
                vm.id
            ));
            out.code = exit::FAILED;
        }
    }
    // Older checkpoints of reprise go once every copy is at the new one (until then the next
    // replication still reads the changes since the older one); so do older markers.
    if running && qcow2 && all_done {
        prune_checkpoints(&g, &new_cp, out);
    }
    if all_done && !marked.is_empty() {
        let removed = match running {
            true => cbt::remove_old_live_marks(transport, host, dom, &marked).map(|_| ()),
            false => marked.iter().try_for_each(|(f, m)| {
                cbt::remove_old_markers(transport, host, std::slice::from_ref(f), m).map(|_| ())
            }),
        };
        if let Err(e) = removed {
            out.stdout.push_str(&format!(
                "{}: older marks of its disks are left ({e}); the next replication of it removes them\n",
                vm.id
            ));
        }
    }
}

/// How the disks of a guest are read this time, and what their points record.
struct GuestCopy<'a> {
    decision: &'a cbt::Decision,
    /// The checkpoint the point is, and when libvirt made it.
    checkpoint: Option<(String, Option<i64>)>,
    /// The bitmaps marking the disks' files as read, one a disk ([`cbt::add_marker`],
    /// [`cbt::add_live_marks`], [`cbt::disk_mark`]).
    marker: Option<Vec<String>>,
    /// Per disk, the mark of its copy's newest point found in its file by the decision.
    relied: Vec<Option<String>>,
}

/// A domain whose disks are read as the guest sees them, on its primary.
struct Guest<'a> {
    vm: &'a VmImages,
    transport: &'a crate::ssh::SshTransport,
    helpers: &'a Helpers<'a>,
    dom: &'a str,
    host: &'a str,
    running: bool,
}

/// The backup job of a running domain, ended on every way out.
struct Job<'a> {
    transport: &'a crate::ssh::SshTransport,
    host: &'a str,
    dom: &'a str,
    on: bool,
}

impl Drop for Job<'_> {
    fn drop(&mut self) {
        if self.on {
            let _ = cbt::end(self.transport, self.host, self.dom);
        }
    }
}

/// A guest's read decided: how, the checkpoints libvirt made (by name, when), and per disk
/// the mark of its copy's newest point found in its file.
type GuestDecision = (
    cbt::Decision,
    std::collections::BTreeMap<String, i64>,
    Vec<Option<String>>,
);

/// How the disks of a guest are read this time (only the changes since a checkpoint, or
/// every block, and why), from its copies' newest points and the domain's checkpoints.
fn guest_decision(
    g: &Guest,
    to: &str,
    mine: &[cbt::DomDisk],
    scan: bool,
) -> Result<GuestDecision, String> {
    let Guest {
        vm,
        transport,
        helpers,
        dom,
        host,
        running,
    } = *g;
    let dsts: Vec<String> = vm.images.iter().map(|i| i.dst.clone()).collect();
    let states = match helpers.inspect(to, &dsts) {
        Ok(s) => s,
        Err(e) => return Err(e.to_string()),
    };
    let (checkpoints, created) = match cbt::checkpoints_made(transport, host, dom) {
        Ok(c) => c,
        Err(e) => {
            return Err(format!(
                "the checkpoints of domain {dom} on {host} cannot be listed (libvirt 6 or later keeps them): {e}"
            ));
        }
    };
    let mut facts = cbt::Facts {
        host,
        asked_scan: scan,
        newest: states.iter().map(|s| s.points.last()).collect(),
        disks: mine.to_vec(),
        checkpoints,
        created: created.clone(),
        bitmap_problem: None,
        copy_problem: copy_problem(&states),
        marker_problem: None,
    };
    let files: Vec<String> = mine.iter().map(|d| d.source.clone()).collect();
    facts.marker_problem = cbt::marker_problem(
        transport,
        host,
        running.then_some(dom),
        &files,
        &facts.newest,
    );
    let mut decision = cbt::decide(&facts);
    if !running && (decision.mode == ReadMode::ChangedBlocks || decision.audit) {
        let since = decision.since.clone().unwrap_or_default();
        facts.bitmap_problem = match cbt::offline_bitmap_problem(transport, host, &files, &since) {
            Ok(p) => p,
            Err(e) => Some(format!("the bitmaps of {dom}'s disks cannot be read: {e}")),
        };
        decision = cbt::decide(&facts);
    }
    // The marks the decision found in the files, which a read through a bitmap relies on.
    let relied = facts
        .newest
        .iter()
        .map(|p| p.and_then(|p| p.read.as_ref()?.marker.clone()))
        .collect();
    Ok((decision, created, relied))
}

/// Why the copies' newest points (`states`) are not a base the changes since their
/// checkpoint can be applied to, if so: a copy changed behind its newest point, or one with a
/// cut update still to be completed, which may make another point its newest than the one
/// read here (whose mark the decision checks in the disk's file). Pure.
fn copy_problem(states: &[crate::replica::CopyState]) -> Option<String> {
    states.iter().find_map(|s| {
        s.changed
            .as_ref()
            .map(|why| format!("{}: {why}", s.path))
            .or_else(|| {
                s.unsettled.as_ref().map(|why| {
                    format!(
                        "{}: an interrupted update of it is still to be completed ({why}), so the point it will be at cannot be told here",
                        s.path
                    )
                })
            })
    })
}

/// Begins the backup job of a running domain (a stale one ended first): every block read
/// instead when libvirt refuses the changes since the checkpoint, said in `decision`.
fn begin_job(
    g: &Guest,
    all: &[String],
    ours: &[String],
    new: Option<&str>,
    decision: &mut cbt::Decision,
    out: &mut Outcome,
) -> Result<Option<i64>, String> {
    let Guest {
        vm,
        transport,
        dom,
        host,
        ..
    } = *g;
    match cbt::end_stale(transport, host, dom) {
        Ok(Some(n)) => out.stdout.push_str(&format!("{}: {n}\n", vm.id)),
        Ok(None) => {}
        Err(e) => return Err(e),
    }
    // The checkpoint it makes has a name no other had (`cbt::checkpoint_name`): one an
    // interrupted replication left stays in the chain, its bitmap merged by the prune once
    // every copy is at the new one (a broken one makes libvirt refuse the incremental read,
    // and every block is read).
    // An audited scan exports the bitmap since the checkpoint too (the export is the whole
    // disk either way).
    let since = decision
        .since
        .clone()
        .filter(|_| decision.mode == ReadMode::ChangedBlocks || decision.audit);
    let began = std::time::Instant::now();
    let created = match cbt::begin(transport, host, dom, all, ours, since.as_deref(), new) {
        Ok(c) => c,
        Err(e) if since.is_some() => {
            // A lost or inconsistent bitmap (the vm killed, a checkpoint damaged): libvirt
            // refuses the incremental backup; every block is read instead, and said.
            let refused = format!(
                "libvirt refused to read the changes since checkpoint {}: {e}",
                since.unwrap_or_default()
            );
            *decision = cbt::Decision::scan(
                match decision.audit {
                    true => decision.unchecked(&refused),
                    false => refused,
                },
                None,
            );
            match cbt::begin(transport, host, dom, all, ours, None, new) {
                Ok(c) => c,
                Err(e) => return Err(format!("the backup of domain {dom} could not begin: {e}")),
            }
        }
        Err(e) => {
            return Err(format!(
                "the backup of domain {dom} could not begin (libvirt 7.2 or later exports disks for changed-block tracking): {e}"
            ));
        }
    };
    out.stdout.push_str(&format!(
        "{}: disks exported as of now (backup-begin on {host}, {:.1}s{})\n",
        vm.id,
        began.elapsed().as_secs_f64(),
        new.map(|c| format!(", checkpoint {c}")).unwrap_or_default()
    ));
    Ok(created)
}

/// Copies the disks of a guest as its decision says, all at once ([`each_disk`]), said in disk
/// order: whether every one was copied.
///
/// A running domain's backup job exports every disk at once, each its own NBD export of one
/// server (a fleecing node per disk, its own scratch file); each source helper opens its own
/// connection to its disk's export, and QEMU serves several clients and exports at once. A
/// stopped domain's disks are each served by a `qemu-nbd` of their own. No read of one disk
/// goes through another's.
fn copy_guest_disks(
    g: &Guest,
    r: &Replication,
    mine: &[cbt::DomDisk],
    read: &GuestCopy,
    stopped: &(dyn Fn() -> bool + Sync),
    out: &mut Outcome,
) -> bool {
    let Guest {
        vm,
        helpers,
        dom,
        running,
        ..
    } = *g;
    // Only the first disk's point records the definition (it is kept beside it).
    let rest = Replication {
        definition: None,
        ..r.clone()
    };
    let disks: Vec<(&Image, &cbt::DomDisk)> = vm.images.iter().zip(mine).collect();
    let results = with_progress(&progress_label(vm), None, || {
        each_disk(disks.len(), stopped, |i| {
            let (img, disk) = disks[i];
            let g = cbt::guest_read(
                running,
                dom,
                disk,
                read.decision,
                read.checkpoint.clone(),
                read.marker.as_ref().and_then(|m| m.get(i).cloned()),
                read.relied.get(i).cloned().flatten(),
            );
            let r = if i == 0 { r } else { &rest };
            tracing::debug!(vm = vm.id, disk = disk_name(img), "disk stream begins");
            let done = helpers.replicate(&img.from, &img.src, &img.to, &img.dst, r, Some(&g));
            tracing::debug!(
                vm = vm.id,
                disk = disk_name(img),
                ok = done.is_ok(),
                "disk stream ends"
            );
            done
        })
    });
    let mut all_done = true;
    for ((img, _), done) in disks.iter().zip(results) {
        let name = disk_name(img);
        match done {
            None => all_done = false,
            Some((Ok(t), _)) => {
                out.stdout.push_str(&format!("{}: {}", vm.id, t.line()));
                // Found by an audited scan: the copy is right now, but what the bitmap
                // missed may be missing from earlier points, and may be missed again.
                if let Some(said) = &t.applied.unmarked {
                    let good = match &t.applied.point.unusable {
                        None => format!("The copy is good as of point {}", t.applied.point.id),
                        Some(why) => format!(
                            "Point {} is unusable all the same: {why}",
                            t.applied.point.id
                        ),
                    };
                    out.stderr.push_str(&format!(
                        "error: {}: {name}: {said}. {good}. Find what writes the disk without QEMU knowing (a tool run on the image file while the vm was stopped, a restore from elsewhere) before trusting changed-block tracking again, or set `changed_blocks = false` for vm {}\n",
                        vm.id, vm.id
                    ));
                    out.code = exit::FAILED;
                }
            }
            Some((Err(_), true)) => {
                out.stderr.push_str(&format!(
                    "{}: the copy of {name} was stopped; {}:{} keeps its last point\n",
                    vm.id, img.to, img.dst
                ));
                all_done = false;
            }
            Some((Err(e), false)) => {
                out.stderr.push_str(&format!("error: {}: {e}\n", vm.id));
                out.code = exit::FAILED;
                all_done = false;
            }
        }
    }
    all_done
}

/// Deletes the older checkpoints of reprise once every copy is at `new_cp`.
fn prune_checkpoints(g: &Guest, new_cp: &str, out: &mut Outcome) {
    let Guest {
        vm,
        transport,
        dom,
        host,
        ..
    } = *g;
    match cbt::prune(transport, host, dom, new_cp) {
        Ok(gone) if !gone.is_empty() => out.stdout.push_str(&format!(
            "{}: older checkpoints deleted: {}\n",
            vm.id,
            gone.join(", ")
        )),
        Ok(_) => {}
        Err(e) => out.stderr.push_str(&format!(
            "warning: {}: older checkpoints of domain {dom} could not be deleted: {e}\n",
            vm.id
        )),
    }
}

/// What the recovery copies of a vm (or a backup set) and their metadata say, disk by disk.
pub(super) fn copies(
    helpers: &Helpers,
    vm: &VmImages,
) -> Result<Vec<crate::replica::CopyState>, crate::replica::remote::ReplicaError> {
    let mut out = Vec::new();
    for img in &vm.images {
        let mut states = helpers.inspect(&img.to, std::slice::from_ref(&img.dst))?;
        crate::replica::choice::note_sources(&mut states, &[format!("{}:{}", img.from, img.src)]);
        out.extend(states);
    }
    Ok(out)
}

/// The points of a VM: those present on every disk, with each disk's verdict.
fn vm_points(disks: &[crate::replica::CopyState]) -> Vec<(Point, Verified)> {
    let Some(first) = disks.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in &first.points {
        let mut p = p.clone();
        let mut verdict = p.verified;
        let mut everywhere = true;
        for other in &disks[1..] {
            match other.points.iter().find(|o| o.same_point(&p)) {
                Some(o) if o.verified == Verified::Bad => {
                    verdict = Verified::Bad;
                    if p.unusable.is_none() {
                        p.unusable.clone_from(&o.unusable);
                    }
                }
                Some(o) if o.verified == Verified::No && verdict == Verified::Yes => {
                    verdict = Verified::No
                }
                Some(_) => {}
                None => everywhere = false,
            }
        }
        if everywhere {
            out.push((p, verdict));
        }
    }
    out
}

/// What is wrong with the copies of `vm` beyond their points' own verdicts (unverified,
/// changed, damaged metadata, in use), one line each.
fn copy_notes(vm: &VmImages, disks: &[crate::replica::CopyState]) -> Vec<String> {
    use crate::replica::choice;
    let mut notes = Vec::new();
    for d in disks {
        if let Some(why) = choice::unverified(d, None) {
            notes.push(format!("UNVERIFIED: {why}"));
        } else if let Some(why) = &d.changed {
            notes.push(format!(
                "UNVERIFIED: {}: {why} (`reprise verify {}` reads it again)",
                choice::name(&d.path),
                vm.id
            ));
        }
        if let Some(crate::replica::meta::PointsSource::Previous { damage }) = &d.points_from {
            notes.push(format!(
                "{}: {damage}: its previous generation points.json.prev is used",
                choice::name(&d.path)
            ));
        }
        for l in &d.leases {
            notes.push(format!(
                "{} is used by {}",
                choice::name(&d.path),
                l.describe()
            ));
        }
        for bad in &d.bad_leases {
            notes.push(format!("{}: {bad}", choice::name(&d.path)));
        }
        if let Some(u) = &d.unsettled {
            notes.push(format!("{}: {u}", choice::name(&d.path)));
        }
    }
    notes
}

/// `reprise points VM`.
pub fn points(model: &Model, vm: &str, json: bool, ssh: &SshArgs) -> Outcome {
    let vm = match item(model, vm) {
        Ok(v) => v,
        Err(o) => return o,
    };
    let transport = match transport(model, ssh) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let helpers = Helpers::new(&transport);
    let disks = match copies(&helpers, &vm) {
        Ok(d) => d,
        Err(e) => return Outcome::err(exit::FAILED, format!("error: {}: {e}\n", vm.id)),
    };
    let points = vm_points(&disks);
    let notes = copy_notes(&vm, &disks);
    // A point of a copy that is no longer it (changed, in use, unreadable history) is no
    // good point, whatever it was when made.
    // A lease that cannot be read may be a failover's (the copy then is no point of it).
    let usable = notes.iter().all(|n| !n.starts_with("UNVERIFIED"))
        && !disks.iter().any(|d| {
            !d.bad_leases.is_empty()
                || d.leases
                    .iter()
                    .any(|l| l.kind == crate::replica::LeaseKind::Live)
        });
    let state = |v: Verified| match (v, usable) {
        (Verified::Bad, _) => "bad",
        (_, false) => "unusable",
        (Verified::Yes, true) => "good",
        (Verified::No, true) => "unverified",
    };
    if json {
        let list: Vec<serde_json::Value> = points
            .iter()
            .map(|(p, v)| {
                serde_json::json!({
                    "id": p.id, "taken_at": p.taken_at, "verified": v, "state": state(*v),
                    "size": p.size, "blake3": p.blake3, "source": p.source,
                    "unusable": p.unusable, "newest_file": p.newest_file,
                    "left_out": p.left_out,
                })
            })
            .collect();
        return Outcome {
            stdout: serde_json::to_string_pretty(&list).expect("json") + "\n",
            stderr: notes.iter().map(|n| format!("{n}\n")).collect(),
            ..Outcome::default()
        };
    }
    let mut s = format!(
        "{:<20} {:<23} {:<8} {:<10} {:>14}  BLAKE3 (first disk)\n",
        "POINT", "TAKEN AT", "VERIFIED", "STATE", "SIZE"
    );
    for (p, v) in points.iter().rev() {
        s.push_str(&format!(
            "{:<20} {:<23} {:<8} {:<10} {:>14}  {}\n",
            p.id,
            p.taken_at.format("%Y-%m-%d %H:%M:%S UTC"),
            v.to_string(),
            state(*v),
            p.size,
            &p.blake3[..16.min(p.blake3.len())]
        ));
    }
    if points.is_empty() {
        s.push_str(&format!(
            "(no point: run `reprise replicate --service {}`)\n",
            vm.id
        ));
    }
    for (p, _) in points.iter().rev() {
        if let Some(why) = &p.unusable {
            s.push_str(&format!("point {} is unusable: {why}\n", p.id));
        }
        // What `--point-before` goes by for a backup set, read file by file after its time.
        if let Some(f) = p.newest_file.filter(|f| *f > p.taken_at) {
            s.push_str(&format!(
                "point {} holds files written until {} (by this machine's clock)\n",
                p.id,
                f.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        // A backup set's copy holds its files only.
        if let Some(left) = crate::replica::remote::left_out_said(&p.left_out) {
            s.push_str(&format!("point {}: {left}\n", p.id));
        }
    }
    for n in &notes {
        s.push_str(&format!("{n}\n"));
    }
    Outcome::ok(s)
}

/// `reprise verify [VM] [--point P]`.
pub fn verify(model: &Model, vm: Option<&str>, point: Option<&str>, ssh: &SshArgs) -> Outcome {
    let vms = match vm {
        Some(v) => match item(model, v) {
            Ok(v) => vec![v],
            Err(o) => return o,
        },
        None => match select(model, &[]) {
            Ok(v) => v,
            Err(o) => return o,
        },
    };
    let transport = match transport(model, ssh) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let helpers = Helpers::new(&transport);
    let mut out = Outcome::default();
    for vm in &vms {
        for img in &vm.images {
            match helpers.verify(&img.to, &img.dst, point) {
                // Nothing read, nothing proven: never a silent success.
                Ok(checked) if checked.is_empty() => {
                    out.stdout.push_str(&format!(
                        "{}: {}:{}: no replica point to verify: nothing proves this copy (never replicated by reprise, its metadata lost, its history ended, or a vm runs on it); replicate it (`reprise replicate`)\n",
                        vm.id, img.to, img.dst
                    ));
                    out.code = exit::FAILED;
                }
                Ok(checked) => {
                    for c in checked {
                        if c.good {
                            out.stdout.push_str(&format!(
                                "{}: {}:{} point {}: good\n",
                                vm.id, img.to, img.dst, c.point
                            ));
                        } else {
                            out.stdout.push_str(&format!(
                                "{}: {}:{} point {}: BAD (its BLAKE3 does not match, or it was marked unusable: `reprise points` says why; marked bad, never used unless named)\n",
                                vm.id, img.to, img.dst, c.point
                            ));
                            out.code = exit::FAILED;
                        }
                    }
                }
                Err(e) => {
                    out.stderr
                        .push_str(&format!("error: {}: {}:{}: {e}\n", vm.id, img.to, img.dst));
                    out.code = exit::FAILED;
                }
            }
        }
    }
    out
}

/// `reprise release ITEM [--run RUN]`: removes the leases of a vm's (or backup set's)
/// recovery copies, for when the run that took them can no longer release them.
pub fn release(model: &Model, id: &str, run: Option<&str>, ssh: &SshArgs) -> Outcome {
    let vm = match item(model, id) {
        Ok(v) => v,
        Err(o) => return o,
    };
    let transport = match transport(model, ssh) {
        Ok(t) => t,
        Err(o) => return o,
    };
    let helpers = Helpers::new(&transport);
    let mut out = Outcome::default();
    for img in &vm.images {
        match helpers.release_all(&img.to, &img.dst, run) {
            Ok(done) if done.is_empty() => out
                .stdout
                .push_str(&format!("{}:{}: no lease to release\n", img.to, img.dst)),
            Ok(done) => {
                for d in done {
                    out.stdout
                        .push_str(&format!("{}: released {}:{d}\n", vm.id, img.to));
                }
            }
            Err(e) => {
                out.stderr.push_str(&format!("error: {}: {e}\n", vm.id));
                out.code = exit::FAILED;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{STREAMS, each_disk, progress_line};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    /// Six disks: four stream at once (each waits until four do: one after the other, none
    /// would ever get there), results come back in disk order.
    /// A copy with a cut update still to be completed is no base for changes since a
    /// checkpoint (the point it will be at is not the one read), nor is one changed behind
    /// its point: both are said, and every block is read.
    #[test]
    fn a_copy_with_a_cut_update_is_no_base_for_changes_since_a_checkpoint() {
        let fine = crate::replica::CopyState {
            path: "/r/a".into(),
            ..Default::default()
        };
        assert_eq!(super::copy_problem(std::slice::from_ref(&fine)), None);
        let cut = crate::replica::CopyState {
            path: "/r/b".into(),
            unsettled: Some("an update was cut after its commit".into()),
            ..Default::default()
        };
        let why = super::copy_problem(&[fine.clone(), cut]).unwrap();
        assert!(
            why.starts_with("/r/b: an interrupted update of it is still to be completed"),
            "{why}"
        );
        let changed = crate::replica::CopyState {
            path: "/r/c".into(),
            changed: Some("the copy changed since its newest point".into()),
            ..Default::default()
        };
        assert!(
            super::copy_problem(&[changed])
                .unwrap()
                .starts_with("/r/c: the copy changed")
        );
    }

    #[test]
    fn the_disks_stream_four_at_once_and_are_said_in_order() {
        let (busy, most) = (Mutex::new(0usize), AtomicUsize::new(0));
        let woken = Condvar::new();
        let results = each_disk(6, &|| false, |i| {
            let mut n = busy.lock().unwrap();
            *n += 1;
            most.fetch_max(*n, Ordering::Relaxed);
            woken.notify_all();
            // A guard against a hang, not a measure: four arrive at once or the test fails.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while most.load(Ordering::Relaxed) < STREAMS && std::time::Instant::now() < deadline {
                n = woken
                    .wait_timeout(n, std::time::Duration::from_millis(100))
                    .unwrap()
                    .0;
            }
            *n -= 1;
            i * 10
        });
        assert_eq!(most.load(Ordering::Relaxed), STREAMS);
        let got: Vec<_> = results.into_iter().map(|r| r.map(|(v, _)| v)).collect();
        assert_eq!(got, [0, 10, 20, 30, 40, 50].map(Some));
    }

    /// A stop: the disks under way end (their result says the stop had come), the others are
    /// not started.
    #[test]
    fn after_a_stop_no_disk_starts_and_those_under_way_say_so() {
        let stop = AtomicBool::new(false);
        let results = each_disk(6, &|| stop.load(Ordering::Relaxed), |i| {
            if i == 1 {
                stop.store(true, Ordering::Relaxed);
            }
            // The others are under way when the stop comes (a guard against a hang).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            i
        });
        // Disk 1 ran; every disk that ran was under way at the stop; none started after it
        // (a disk beyond the first four could only start once one of them had ended).
        assert_eq!(results[1], Some((1, true)));
        for (i, r) in results.iter().enumerate() {
            assert!(r.is_none() || *r == Some((i, true)), "{results:?}");
        }
        assert!(
            results[STREAMS..].iter().all(Option::is_none),
            "{results:?}"
        );
    }

    #[test]
    fn progress_says_what_was_sent_how_fast_and_how_long_at_most() {
        let mib = 1024 * 1024;
        assert_eq!(
            progress_line("erp-db data.qcow2", 100 * mib, Some(400 * mib), 2.0),
            "erp-db data.qcow2: 100.0 MiB sent, 52.4 MB/s, 25% of 400.0 MiB, at most 6s left"
        );
        assert_eq!(
            progress_line("backups erp", 3 * mib, None, 1.0),
            "backups erp: 3.0 MiB sent, 3.1 MB/s"
        );
        // Nothing sent yet (the source is being hashed): no time can be promised.
        assert_eq!(
            progress_line("dc1 system.qcow2", 0, Some(mib), 0.5),
            "dc1 system.qcow2: 0.0 MiB sent, 0.0 MB/s, 0% of 1.0 MiB"
        );
    }
}
