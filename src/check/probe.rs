//! Gathering: what each host must be asked ([`questions`]), the one shell script that asks it
//! ([`probe_script`]), its answers read strictly ([`parse_answers`]: a number that cannot be
//! right fails the host), and every host asked at once ([`probe_hosts`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration as StdDuration, Instant};

use super::{Plans, ReplicaTarget, tools_by_host};
use crate::model::Model;
use crate::plan;
use crate::ssh::Transport;
use crate::template::shell_quote;

/// Size and age of a file or directory on a host (for a directory: total size, newest file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStat {
    pub bytes: u64,
    /// Modification time, Unix seconds.
    pub mtime: i64,
}

/// Free space of the filesystem holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    pub avail: u64,
    /// Where the filesystem is mounted: copies on one filesystem share its free space.
    pub mount: String,
}

/// What one host told.
#[derive(Debug, Clone, Default)]
pub struct HostProbe {
    /// Why it could not be reached (connection, host key, login).
    pub error: Option<String>,
    pub endpoint: String,
    /// Its clock minus this machine's, in seconds, and the uncertainty (half the round trip).
    pub skew_s: Option<(f64, f64)>,
    pub missing_tools: Vec<String>,
    pub found_tools: Vec<String>,
    /// Paths asked for; `None` when absent.
    pub stats: HashMap<String, Option<PathStat>>,
    /// Free space by path asked for.
    pub space: HashMap<String, Space>,
    /// What the copies asked for and their metadata say (read by the replication helper).
    pub copies: HashMap<String, crate::replica::CopyState>,
    /// Why the copies could not be read.
    pub copies_error: Option<String>,
    /// Per vm whose driver can tell: the replication snapshot overlays left on this host, or
    /// why the driver's check failed.
    pub snapshots: HashMap<String, Result<Vec<String>, String>>,
    /// Per drill network: what the driver's `drill-network-check` said, and its exit status.
    pub drill_networks: HashMap<String, (Vec<String>, Option<i32>)>,
}

/// What each host must be asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostQuestions {
    pub tools: BTreeSet<String>,
    pub files: BTreeSet<String>,
    pub dirs: BTreeSet<String>,
    /// Paths whose filesystem's free space matters.
    pub space: BTreeSet<String>,
    /// Copies whose replica points and metadata are read (by the replication helper).
    pub copies: BTreeSet<String>,
    /// The drivers' `replicate-check` of the vms whose primary this host is, by vm.
    pub snapshots: BTreeMap<String, crate::template::Command>,
    /// The drivers' `drill-network-check` of the drill networks on this host, by network.
    pub drill_networks: BTreeMap<String, crate::template::Command>,
}

/// The hosts to ask, and what: every host the plans use, and every end of a replica.
pub fn questions(
    model: &Model,
    plans: &Plans,
    replicas: &[ReplicaTarget],
) -> BTreeMap<String, HostQuestions> {
    let mut q: BTreeMap<String, HostQuestions> = BTreeMap::new();
    for plan in plans.ok() {
        for step in &plan.steps {
            if let Some(h) = &step.host {
                q.entry(h.clone()).or_default();
            }
        }
    }
    for (host, tools) in tools_by_host(plans) {
        q.entry(host).or_default().tools = tools.into_keys().collect();
    }
    for r in replicas {
        for (host, path) in [(&r.from_host, &r.source), (&r.to_host, &r.copy)] {
            let entry = q.entry(host.clone()).or_default();
            let paths = if r.dir {
                &mut entry.dirs
            } else {
                &mut entry.files
            };
            paths.insert(path.clone());
        }
        let entry = q.entry(r.to_host.clone()).or_default();
        entry.space.insert(r.copy.clone());
        entry.copies.insert(r.copy.clone());
    }
    for vm in model.inventory.vms.values() {
        if let Some((host, cmd)) = plan::replicate_hook(model, vm, "replicate-check") {
            q.entry(host)
                .or_default()
                .snapshots
                .insert(vm.id.clone(), cmd);
        }
    }
    for d in &plans.drills {
        let entry = q.entry(d.host.clone()).or_default();
        if let Some((name, cmd)) = &d.network {
            entry.drill_networks.insert(name.clone(), cmd.clone());
        }
        if let Some((dir, _)) = &d.overlays_dir {
            entry.space.insert(dir.clone());
        }
        entry.files.extend(d.copies.iter().cloned());
    }
    // Hosts of the inventory no plan uses are still worth knowing about.
    for host in model.inventory.hosts.keys() {
        q.entry(host.clone()).or_default();
    }
    q
}

/// The shell script that answers a host's questions, one tab-separated line per answer.
pub fn probe_script(q: &HostQuestions) -> String {
    let list = |set: &BTreeSet<String>| {
        set.iter()
            .map(|s| shell_quote(s))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = String::from("LC_ALL=C; export LC_ALL\n");
    if !q.tools.is_empty() {
        s.push_str(&format!(
            "for t in {}; do if command -v \"$t\" >/dev/null 2>&1; then printf 'tool\\t%s\\tok\\n' \"$t\"; else printf 'tool\\t%s\\tmissing\\n' \"$t\"; fi; done\n",
            list(&q.tools)
        ));
    }
    if !q.files.is_empty() {
        s.push_str(&format!(
            "for p in {}; do if [ -f \"$p\" ]; then printf 'file\\t%s\\t%s\\n' \"$p\" \"$(stat -c '%s %Y' -- \"$p\")\"; else printf 'file\\t%s\\tabsent\\n' \"$p\"; fi; done\n",
            list(&q.files)
        ));
    }
    if !q.dirs.is_empty() {
        s.push_str(&format!(
            "for p in {}; do if [ -d \"$p\" ]; then printf 'dir\\t%s\\t%s %s\\n' \"$p\" \"$(du -skL -- \"$p\" | cut -f1)\" \"$(find \"$p\" -type f -printf '%T@\\n' | sort -n | tail -n 1 | cut -d. -f1)\"; else printf 'dir\\t%s\\tabsent\\n' \"$p\"; fi; done\n",
            list(&q.dirs)
        ));
    }
    for (vm, cmd) in &q.snapshots {
        // Secrets are not read here: a check that needs one says so.
        let text = cmd
            .expose(|n| std::env::var(n).ok())
            .unwrap_or_else(|missing| format!("echo 'secret {missing} is not set' >&2; exit 2"));
        s.push_str(&format!(
            "o=$(sh -c {} 2>&1); r=$?; printf '%s\\n' \"$o\" | while IFS= read -r l; do printf 'snapshot\\t%s\\t%s\\n' {} \"$l\"; done; printf 'snapshotrc\\t%s\\t%s\\n' {} \"$r\"\n",
            shell_quote(&text),
            shell_quote(vm),
            shell_quote(vm)
        ));
    }
    for (net, cmd) in &q.drill_networks {
        let text = cmd
            .expose(|n| std::env::var(n).ok())
            .unwrap_or_else(|missing| format!("echo 'secret {missing} is not set' >&2; exit 2"));
        s.push_str(&format!(
            "o=$(sh -c {} 2>&1); r=$?; printf '%s\\n' \"$o\" | while IFS= read -r l; do printf 'drillnet\\t%s\\t%s\\n' {} \"$l\"; done; printf 'drillnetrc\\t%s\\t%s\\n' {} \"$r\"\n",
            shell_quote(&text),
            shell_quote(net),
            shell_quote(net)
        ));
    }
    if !q.space.is_empty() {
        s.push_str(&format!(
            "for p in {}; do d=$p; while [ ! -e \"$d\" ] && [ \"$d\" != / ]; do d=$(dirname -- \"$d\"); done; printf 'space\\t%s\\t%s\\n' \"$p\" \"$(df -Pk -- \"$d\" | awk 'NR==2 {{print $3, $4, $6}}')\"; done\n",
            list(&q.space)
        ));
    }
    s.push_str("echo end\n");
    s
}

/// Reads the answers of [`probe_script`] into `probe`. A number the host sends that cannot
/// be right (not a number, or a size that overflows) makes the probe fail with the line,
/// rather than be read as something else. Returns whether the answers were complete.
pub fn parse_answers(text: &str, probe: &mut HostProbe) -> bool {
    let mut complete = false;
    for line in text.lines() {
        if line == "end" {
            complete = true;
            continue;
        }
        let mut parts = line.splitn(3, '\t');
        let (Some(kind), Some(path), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mut parsed = Ok(());
        match kind {
            "tool" if value == "ok" => probe.found_tools.push(path.to_string()),
            "tool" => probe.missing_tools.push(path.to_string()),
            "file" | "dir" => match path_stat(kind == "dir", value) {
                Ok(stat) => {
                    probe.stats.insert(path.to_string(), stat);
                }
                Err(e) => parsed = Err(e),
            },
            "snapshot" => {
                if let Ok(found) = probe
                    .snapshots
                    .entry(path.to_string())
                    .or_insert_with(|| Ok(Vec::new()))
                {
                    found.extend(crate::replica::snapshot::overlays(value));
                    if !value.starts_with("overlay ") && !value.trim().is_empty() {
                        found.push(format!("!{value}"));
                    }
                }
            }
            "snapshotrc" => {
                let entry = probe
                    .snapshots
                    .entry(path.to_string())
                    .or_insert_with(|| Ok(Vec::new()));
                if value.trim() != "0" {
                    let said: Vec<String> = match entry {
                        Ok(lines) => lines
                            .iter()
                            .map(|l| l.trim_start_matches('!').to_string())
                            .collect(),
                        Err(_) => Vec::new(),
                    };
                    *entry = Err(format!(
                        "its driver's replicate-check exited with {}{}",
                        value.trim(),
                        if said.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", said.join("; "))
                        }
                    ));
                } else if let Ok(lines) = entry {
                    lines.retain(|l| !l.starts_with('!'));
                }
            }
            "drillnet" => {
                let entry = probe
                    .drill_networks
                    .entry(path.to_string())
                    .or_insert_with(|| (Vec::new(), None));
                if !value.trim().is_empty() && entry.0.len() < 20 {
                    entry.0.push(value.chars().take(300).collect());
                }
            }
            "drillnetrc" => {
                probe
                    .drill_networks
                    .entry(path.to_string())
                    .or_insert_with(|| (Vec::new(), None))
                    .1 = value.trim().parse().ok();
            }
            "space" => match space(value) {
                Ok(sp) => {
                    probe.space.insert(path.to_string(), sp);
                }
                Err(e) => parsed = Err(e),
            },
            _ => {}
        }
        if let Err(why) = parsed
            && probe.error.is_none()
        {
            let line: String = line.chars().take(200).collect();
            probe.error = Some(format!("it answered `{}`: {why}", line.escape_debug()));
        }
    }
    complete
}

/// `SIZE MTIME` of a file (bytes) or a folder (KiB, and the newest file's time, absent when
/// it holds none), or `absent`.
fn path_stat(dir: bool, value: &str) -> Result<Option<PathStat>, String> {
    if value == "absent" {
        return Ok(None);
    }
    let words: Vec<&str> = value.split_whitespace().collect();
    let (size, mtime) = match words.as_slice() {
        [size, mtime] => (*size, Some(*mtime)),
        [size] if dir => (*size, None),
        _ => return Err("expected a size and a time".into()),
    };
    let size = answer_number(size)?;
    let bytes = if dir {
        size.checked_mul(1024)
            .ok_or_else(|| format!("{size} KiB overflows"))?
    } else {
        size
    };
    let mtime = match mtime {
        Some(m) => i64::try_from(answer_number(m)?).map_err(|_| format!("time {m} overflows"))?,
        None => 0,
    };
    Ok(Some(PathStat { bytes, mtime }))
}

/// `USED AVAIL MOUNT` of `df -Pk`, in KiB. The filesystem's size is taken as used plus
/// available, as `df` computes its Use%: blocks reserved for root (5% of an ext4 by default)
/// are neither, and counting them as used made a disk look fuller than it is.
fn space(value: &str) -> Result<Space, String> {
    let mut f = value.splitn(3, ' ');
    let mut kib = |what: &str| -> Result<u64, String> {
        let n = answer_number(f.next().unwrap_or(""))?;
        n.checked_mul(1024)
            .ok_or_else(|| format!("{what} {n} KiB overflows"))
    };
    let used = kib("used")?;
    let avail = kib("free")?;
    let total = used
        .checked_add(avail)
        .ok_or_else(|| "used and free space overflow".to_string())?;
    Ok(Space {
        total,
        avail,
        mount: f.next().unwrap_or("").to_string(),
    })
}

fn answer_number(word: &str) -> Result<u64, String> {
    word.parse()
        .map_err(|_| format!("`{}` is not a whole number", word.escape_debug()))
}

fn now_secs() -> f64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_secs_f64()
}

/// Asks one host: reach it, read its clock, then its answers.
pub fn probe_host(transport: &dyn Transport, host: &str, q: &HostQuestions) -> HostProbe {
    let mut probe = HostProbe::default();
    let deadline = StdDuration::from_secs(60);
    // The answers first: this also opens the session, so the clock is read on a warm one
    // and the round trip is short. Read whole (a recovery host of many copies answers more
    // than a command's usual 16 KiB), up to the transport's bound for answers.
    match transport.exec_bytes(host, &probe_script(q), &[], deadline) {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !parse_answers(&stdout, &mut probe) {
                probe.error = Some(format!(
                    "the checks did not finish (exit {}): {}",
                    out.exit_code,
                    out.stderr.trim()
                ));
                return probe;
            }
            if probe.error.is_some() {
                return probe;
            }
        }
        Err(e) => {
            probe.error = Some(e.to_string());
            return probe;
        }
    }
    // A clock that cannot be read is a warning, never compared.
    probe.skew_s = read_clock(transport, host).ok();
    probe
}

/// Reads `host`'s clock against this machine's: its clock minus this machine's, in seconds,
/// and the uncertainty (half the round trip), or why it cannot be read. A clock that is not a
/// finite number is not read.
pub fn read_clock(transport: &dyn Transport, host: &str) -> Result<(f64, f64), String> {
    let before = now_secs();
    let started = Instant::now();
    let out = transport
        .exec(host, "date +%s.%N", StdDuration::from_secs(60))
        .map_err(|e| e.to_string())?;
    let rtt = started.elapsed().as_secs_f64();
    let said = out.stdout.trim();
    match said.parse::<f64>() {
        Ok(remote) if out.exit_code == 0 && remote.is_finite() => {
            Ok((remote - (before + rtt / 2.0), rtt / 2.0))
        }
        _ => Err(format!(
            "`date +%s.%N` exited {} and printed `{}`",
            out.exit_code,
            said.chars().take(80).collect::<String>().escape_debug()
        )),
    }
}

/// Asks every host at once; a host holding copies then has them read by the replication
/// helper (deployed there if needed), which reads their metadata as a run would.
pub fn probe_hosts(
    transport: &dyn Transport,
    questions: &BTreeMap<String, HostQuestions>,
) -> BTreeMap<String, HostProbe> {
    let helpers = crate::replica::remote::Helpers::new(transport);
    let helpers = &helpers;
    std::thread::scope(|scope| {
        let handles: Vec<_> = questions
            .iter()
            .map(|(host, q)| {
                (
                    host.clone(),
                    scope.spawn(move || {
                        let mut probe = probe_host(transport, host, q);
                        if probe.error.is_none() && !q.copies.is_empty() {
                            let paths: Vec<String> = q.copies.iter().cloned().collect();
                            match helpers.inspect(host, &paths) {
                                Ok(states) => {
                                    probe.copies = paths.into_iter().zip(states).collect();
                                }
                                Err(e) => probe.copies_error = Some(e.to_string()),
                            }
                        }
                        probe
                    }),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(host, h)| {
                let probe = h.join().unwrap_or_else(|_| HostProbe {
                    error: Some("the check of this host stopped unexpectedly".to_string()),
                    ..HostProbe::default()
                });
                (host, probe)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recovery host of many copies answers more than a command's usual 16 KiB: its
    /// answers are read whole, never taken for a host that did not finish.
    #[test]
    fn a_host_of_many_copies_is_read_whole() {
        struct Many(String);
        impl Transport for Many {
            // As the transport cuts a command's output.
            fn exec(
                &self,
                _host: &str,
                _command: &str,
                _deadline: StdDuration,
            ) -> Result<crate::ssh::ExecOutput, crate::ssh::SshError> {
                let cut = self.0.len().min(crate::ssh::OUTPUT_LIMIT);
                Ok(crate::ssh::ExecOutput {
                    exit_code: 0,
                    stdout: self.0[..cut].to_string(),
                    stderr: String::new(),
                    truncated: cut < self.0.len(),
                    timed_out: false,
                    duration: StdDuration::ZERO,
                })
            }
            fn exec_bytes(
                &self,
                _host: &str,
                _command: &str,
                _input: &[u8],
                _deadline: StdDuration,
            ) -> Result<crate::ssh::BytesOutput, crate::ssh::SshError> {
                Ok(crate::ssh::BytesOutput {
                    exit_code: 0,
                    stdout: self.0.clone().into_bytes(),
                    stderr: String::new(),
                    duration: StdDuration::ZERO,
                })
            }
        }
        let mut answer = String::new();
        for i in 0..400 {
            answer.push_str(&format!(
                "file\t/srv/replicas/images/vm-{i:03}-data.qcow2\t1048576 1700000000\n"
            ));
        }
        answer.push_str("end\n");
        assert!(answer.len() > crate::ssh::OUTPUT_LIMIT);
        let probe = probe_host(&Many(answer), "hv-pra", &HostQuestions::default());
        assert_eq!(probe.error, None);
        assert_eq!(probe.stats.len(), 400);
    }

    #[test]
    fn answers_are_read_back_line_by_line() {
        let mut p = HostProbe::default();
        let complete = parse_answers(
            "tool\tvirsh\tok\ntool\tqemu-img\tmissing\nfile\t/a b\t1048576 1700000000\nfile\t/c\tabsent\ndir\t/d\t8 1700000100\nspace\t/a b\t1000 400 /srv\n",
            &mut p,
        );
        assert!(!complete, "no end line: the answers are cut");
        assert_eq!(p.found_tools, ["virsh"]);
        assert_eq!(p.missing_tools, ["qemu-img"]);
        assert_eq!(
            p.stats["/a b"],
            Some(PathStat {
                bytes: 1048576,
                mtime: 1700000000
            })
        );
        assert_eq!(p.stats["/c"], None);
        assert_eq!(p.stats["/d"].unwrap().bytes, 8192);
        assert_eq!(p.space["/a b"].avail, 400 * 1024);
        // Used plus available, as `df` counts its Use%: root's reserved blocks are not "used".
        assert_eq!(p.space["/a b"].total, 1400 * 1024);
        assert_eq!(p.space["/a b"].mount, "/srv");
        assert!(parse_answers("end\n", &mut HostProbe::default()));
    }
    #[test]
    fn answers_that_cannot_be_right_fail_the_host_instead_of_wrapping() {
        let answer = |line: &str| {
            let mut p = HostProbe::default();
            assert!(parse_answers(&format!("{line}\nend\n"), &mut p));
            p
        };
        for (line, why) in [
            ("space\t/srv\t18446744073709551615 1 /srv", "overflows"),
            ("space\t/srv\t1000 -4 /srv", "not a whole number"),
            (
                "space\t/srv\t18014398509481983 18014398509481983 /srv",
                "overflow",
            ),
            ("space\t/srv\t", "not a whole number"),
            ("dir\t/d\t18014398509481984 1700000000", "overflows"),
            ("file\t/f\t12 18446744073709551615", "overflows"),
            ("file\t/f\t12 99999999999999999999", "not a whole number"),
            ("file\t/f\t12 1e9", "not a whole number"),
            ("file\t/f\t12", "expected a size and a time"),
            ("file\t/f\tgone", "expected a size and a time"),
        ] {
            let p = answer(line);
            let error = p.error.unwrap_or_else(|| panic!("`{line}` was accepted"));
            assert!(error.contains(why), "`{line}`: {error}");
            assert!(
                p.stats.is_empty() && p.space.is_empty(),
                "`{line}` was kept"
            );
        }
        // What the script sends normally is read as before.
        let p = answer("file\t/f\tabsent\ndir\t/d\t8 \nspace\t/s\t10 4 /");
        assert_eq!(p.error, None);
        assert_eq!(p.stats["/f"], None);
        assert_eq!(
            p.stats["/d"],
            Some(PathStat {
                bytes: 8192,
                mtime: 0
            })
        );
        assert_eq!(p.space["/s"].avail, 4096);
    }
}
