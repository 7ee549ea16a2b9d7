//! Faults injected into replication on the lab (real sshd, real qcow2 images, real processes):
//! damaged or missing metadata files of each kind beside the recovery copies, signals during a
//! replication, a snapshot left by a killed one, a full disk under the recovery copies, a drill
//! and a replication on the same copy, a vm started on its copy. Each test prints a table of
//! what was injected and what was kept (also written to `target/ci-artifacts/`).
//!
//! The invariant checked everywhere: the newest good point survives, nothing starts from data
//! that no verified point proves (unless the operator names it, and then it is journaled as
//! unverified), and every refusal says why and what to do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Run, random_bytes, reprise, root};

/// A lab for one test, brought down on drop, with its own copy of the inventory.
struct Lab {
    dir: tempfile::TempDir,
    _net: crate::common::NetLock,
}

impl Lab {
    fn up(net: u8) -> Lab {
        for tool in ["qemu-img", "qemu-io", "unshare"] {
            crate::common::require_tool(tool, "--version", "qemu-utils and util-linux");
        }
        let (dir, net_lock) = crate::common::example_lab_up(net);
        Lab {
            dir,
            _net: net_lock,
        }
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--overlay".to_string(),
            self.path("lab/overlay.toml").display().to_string(),
            "--state-dir".to_string(),
            self.path("state").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, extra: &[&str]) -> Run {
        let args = self.args(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        reprise(self.dir.path(), &refs)
    }

    /// `reprise` in the background; its output is read as it comes (a run that prints more
    /// than a pipe holds must not block on it while the test waits).
    fn spawn(&self, extra: &[&str]) -> Spawned {
        let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
            .args(self.args(extra))
            .current_dir(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let drain = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let out = drain(Box::new(child.stdout.take().unwrap()));
        let err = drain(Box::new(child.stderr.take().unwrap()));
        Spawned { child, out, err }
    }

    /// The image `disk` of the primary host.
    fn src(&self, disk: &str) -> PathBuf {
        self.path("lab/hosts/hv-main/root/srv/datastore/images")
            .join(disk)
    }

    /// Its copy on the recovery host.
    fn dst(&self, disk: &str) -> PathBuf {
        self.path("lab/hosts/hv-pra/root/srv/replicas/images")
            .join(disk)
    }

    /// The metadata folder beside a copy.
    fn meta(&self, copy: &Path) -> PathBuf {
        PathBuf::from(format!("{}.reprise", copy.display()))
    }

    /// The events of the latest run.
    fn journal(&self) -> Vec<serde_json::Value> {
        let runs = self.path("state/runs");
        let Some(last) = crate::common::run_ids(runs.parent().unwrap()).pop() else {
            return Vec::new();
        };
        let last = runs.join(last);
        let text = std::fs::read_to_string(last.join("journal.jsonl")).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map(|i| i + 1).unwrap_or(0)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The `reprise check` item about `subject`: (status, detail).
    fn check(&self, subject: &str) -> (String, String) {
        let run = self.run(&["check", "--json"]);
        let json: serde_json::Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("check --json: {e}: {run:?}"));
        let found: Vec<&serde_json::Value> = json["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["subject"] == subject)
            .collect();
        assert_eq!(found.len(), 1, "one item about {subject}: {found:?}");
        (
            found[0]["status"].as_str().unwrap().to_string(),
            found[0]["detail"].as_str().unwrap().to_string(),
        )
    }

    /// A drill of erp-db alone: (exit code, its start step's status and message, the point
    /// journaled, if any).
    fn drill_erp_db(&self, extra: &[&str]) -> Started {
        let mut args = vec!["drill", "--service", "erp-db", "--only", "--no-prompt"];
        args.extend_from_slice(extra);
        let run = self.run(&args);
        started(run.code, &self.journal(), "erp-db/start-copy")
    }

    /// The points of erp-db, oldest first: (id, verified).
    fn points(&self, item: &str) -> Vec<(String, String)> {
        let run = self.run(&["points", item, "--json"]);
        assert_eq!(run.code, 0, "{run:?}");
        let list: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
        list.iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_string(),
                    p["verified"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        crate::common::example_lab_down(self.dir.path());
    }
}

/// How a vm start went in a run.
#[derive(Debug)]
struct Started {
    code: i32,
    status: String,
    message: String,
    point: Option<serde_json::Value>,
}

fn started(code: i32, events: &[serde_json::Value], step: &str) -> Started {
    let finished = events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == step);
    Started {
        code,
        status: finished
            .map(|e| e["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default(),
        message: finished
            .and_then(|e| e["message"].as_str())
            .unwrap_or("")
            .to_string(),
        point: events
            .iter()
            .find(|e| e["event"] == "replica_point_used" && e["step"] == step)
            .cloned(),
    }
}

fn b3(path: &Path) -> String {
    reprise::replica::helper::hash_file(path).unwrap()
}

fn tool(cmd: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is needed by this test: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn qemu_io(image: &Path, command: &str) {
    tool(
        "qemu-io",
        &["-f", "qcow2", "-c", command, image.to_str().unwrap()],
    );
}

/// Prints a table (and keeps it in `target/ci-artifacts/NAME.txt`).
fn table(name: &str, header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count().min(60))
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    println!("\n{name}\n{out}");
    let dir = root().join("target/ci-artifacts");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.txt")), out);
}

/// A fault of a file.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Truncated,
    Garbage,
    Deleted,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Truncated => "truncated",
            Fault::Garbage => "garbage",
            Fault::Deleted => "deleted",
        }
    }

    fn apply(self, file: &Path) {
        assert!(file.exists(), "{} is there to damage", file.display());
        match self {
            Fault::Truncated => {
                let len = std::fs::metadata(file).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(file)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }
            Fault::Garbage => std::fs::write(file, random_bytes(200)).unwrap(),
            Fault::Deleted => std::fs::remove_file(file).unwrap(),
        }
    }
}

/// Every metadata file kept beside a vm disk's copy and a backup set's copy, truncated,
/// filled with garbage and deleted, one at a time: a copy whose history can still be proven
/// (the previous generation of its points file, a cache rebuilt from the copy) keeps its
/// newest point and says so; one that cannot is unverified: `check` fails on it and no drill
/// or failover starts it unless named. A replication then mends every case.
#[test]
fn damaged_or_missing_metadata_never_starts_a_vm_from_unproven_data() {
    let lab = Lab::up(115);
    // Two points on each erp-db disk, so that a reverse delta exists.
    let data = lab.src("erp-db-data.qcow2");
    qemu_io(&data, "write -P 0x21 0 4M");
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    std::thread::sleep(Duration::from_millis(1100));
    qemu_io(&data, "write -P 0x22 1M 1M");
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let copy = lab.dst("erp-db-data.qcow2");
    let meta = lab.meta(&copy);
    let subject = "vm erp-db (erp-db-data.qcow2)";

    // (file, what is expected: "kept" = the newest point stays good and a drill starts from
    // it verified; "unverified" = check fails and nothing starts unless named). `OLDER` is the
    // point before the newest.
    let cases: Vec<(&str, &str)> = vec![
        ("points.json", "kept"),
        ("points.json.prev", "kept"),
        ("points.json+points.json.prev", "unverified"),
        ("manifest", "kept"),
        ("stamp", "kept"),
        ("deltas/OLDER.rdelta", "kept"),
        ("lock", "kept"),
    ];
    let mut rows = Vec::new();
    for (file, expect) in &cases {
        for fault in [Fault::Truncated, Fault::Garbage, Fault::Deleted] {
            // Each case starts from the state the last replication left.
            let points = lab.points("erp-db");
            assert!(points.len() >= 2, "{points:?}");
            let (older, newest) = (&points[points.len() - 2].0, &points[points.len() - 1].0);
            let file = file.replace("OLDER", older);
            let good = b3(&copy);
            for f in file.split('+') {
                fault.apply(&meta.join(f));
            }
            let (status, detail) = lab.check(subject);
            let drill = lab.drill_erp_db(&[]);
            let kept = if *expect == "kept" {
                assert_ne!(status, "failed", "{file} {fault:?}: {detail}");
                assert_eq!(drill.code, 0, "{file} {fault:?}: {drill:?}");
                let point = drill.point.as_ref().expect("a point was journaled");
                assert_eq!(point["point"], newest.as_str(), "{drill:?}");
                assert_eq!(point["verified"], true, "{drill:?}");
                if file == "points.json" {
                    assert_eq!(status, "warning", "{detail}");
                    assert!(detail.contains("points.json.prev is used"), "{detail}");
                    let note = point["note"].as_str().unwrap();
                    assert!(note.contains("points.json.prev was used"), "{note}");
                }
                format!("point {newest} kept, verified; check {status}")
            } else {
                assert_eq!(status, "failed", "{file} {fault:?}: {detail}");
                assert!(detail.starts_with("UNVERIFIED"), "{detail}");
                assert_eq!(drill.code, 1, "{drill:?}");
                assert_eq!(drill.status, "failed", "{drill:?}");
                assert!(drill.point.is_none(), "nothing was started: {drill:?}");
                assert!(
                    drill.message.contains("--accept-unverified"),
                    "{}",
                    drill.message
                );
                // Named by the operator: started, journaled as unverified.
                let named = lab.drill_erp_db(&["--accept-unverified", "erp-db"]);
                assert_eq!(named.code, 0, "{named:?}");
                let point = named.point.as_ref().unwrap();
                assert_eq!(point["verified"], false, "{named:?}");
                "nothing started unless named (then journaled unverified)".to_string()
            };
            assert_eq!(b3(&copy), good, "{file} {fault:?}: the copy was changed");
            // The next replication mends it (a new history when the old one cannot go on).
            let run = lab.run(&["replicate", "--service", "erp-db"]);
            assert_eq!(run.code, 0, "{file} {fault:?}: {run:?}");
            if *expect != "kept" {
                assert!(
                    run.stdout.contains("its point history was ended"),
                    "{run:?}"
                );
                // A new history needs two points for the next case.
                let run = lab.run(&["replicate", "--service", "erp-db"]);
                assert_eq!(run.code, 0, "{run:?}");
                let (after, after_detail) = lab.check(subject);
                assert_eq!(
                    after, "ok",
                    "{file} {fault:?} after a replication: {after_detail}"
                );
            }
            let said = if *expect == "kept" {
                detail.clone()
            } else {
                drill.message.clone()
            };
            rows.push(vec![
                format!("erp-db-data.qcow2.reprise/{file}"),
                fault.name().to_string(),
                kept,
                said.chars().take(110).collect(),
            ]);
        }
    }

    // A lease file that cannot be read still holds the copy: nothing replicates into it.
    let leases = meta.join("leases");
    std::fs::create_dir_all(&leases).unwrap();
    std::fs::write(leases.join("drill-lost.json"), random_bytes(64)).unwrap();
    let (status, detail) = lab.check("vm erp-db (erp-db-data.qcow2)");
    assert_eq!(status, "failed", "{detail}");
    assert!(
        detail.contains("lease drill-lost.json is damaged"),
        "{detail}"
    );
    let before = b3(&copy);
    qemu_io(&data, "write -P 0x23 2M 64k");
    let refused = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("is in use"), "{}", refused.stderr);
    assert_eq!(b3(&copy), before, "a leased copy was written");
    let released = lab.run(&["release", "erp-db"]);
    assert_eq!(released.code, 0, "{released:?}");
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    rows.push(vec![
        "erp-db-data.qcow2/leases/drill-lost.json".into(),
        Fault::Garbage.name().into(),
        "copy held: not replicated into until `reprise release`".into(),
        refused
            .stderr
            .split_once("is in use")
            .map(|(_, r)| format!("is in use{r}"))
            .unwrap_or_default()
            .chars()
            .take(110)
            .collect(),
    ]);

    // The backup set: its points file, its file list and the undo list of an older point.
    let set_src = lab.path("lab/hosts/san-main/root/export/backups/erp");
    let set = lab.path("lab/hosts/nas-pra/root/srv/backups/erp");
    let set_meta = lab.meta(&set);
    std::fs::write(
        set_src.join("erp-dumps-2026-11-04.dump"),
        "day 4\n".repeat(100),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let run = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_eq!(run.code, 0, "{run:?}");
    let subject = "backup erp-dumps";
    let cases = [
        ("points.json", "kept"),
        ("points.json+points.json.prev", "unverified"),
        ("tree.json", "kept"),
        ("deltas/OLDER/undo.json", "kept"),
    ];
    for (file, expect) in &cases {
        for fault in [Fault::Truncated, Fault::Garbage, Fault::Deleted] {
            let set_points = lab.points("erp-dumps");
            assert!(set_points.len() >= 2, "{set_points:?}");
            let file = file.replace("OLDER", &set_points[set_points.len() - 2].0);
            for f in file.split('+') {
                fault.apply(&set_meta.join(f));
            }
            let (status, detail) = lab.check(subject);
            match *expect {
                "kept" => assert_ne!(status, "failed", "{file} {fault:?}: {detail}"),
                _ => {
                    assert_eq!(status, "failed", "{file} {fault:?}: {detail}");
                    assert!(detail.starts_with("UNVERIFIED"), "{detail}");
                }
            }
            let run = lab.run(&["replicate", "--service", "erp-dumps"]);
            assert_eq!(run.code, 0, "{file} {fault:?}: {run:?}");
            if *expect != "kept" {
                let run = lab.run(&["replicate", "--service", "erp-dumps"]);
                assert_eq!(run.code, 0, "{run:?}");
                let (after, after_detail) = lab.check(subject);
                assert_eq!(after, "ok", "{file} {fault:?}: {after_detail}");
            }
            rows.push(vec![
                format!("erp/{file}"),
                fault.name().to_string(),
                if *expect == "kept" {
                    format!("newest point kept; check {status}")
                } else {
                    "unverified until replicated again".into()
                },
                detail.chars().take(110).collect(),
            ]);
        }
    }
    table(
        "replica-faults-metadata",
        &["FILE", "FAULT", "KEPT", "WHAT WAS SAID"],
        &rows,
    );
}

/// Waits until `copy`'s update has received `bytes` (its journal, or a backup set's staging
/// folder, that large) while `child` replicates.
fn wait_mid_transfer(child: &mut Child, grows: &Path, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let size = if grows.is_dir() {
            walk_size(grows)
        } else {
            std::fs::metadata(grows).map(|m| m.len()).unwrap_or(0)
        };
        if size >= bytes {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the replication ended before it could be cut"
        );
        assert!(Instant::now() < deadline, "the transfer never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk_size(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Waits for `child` (at most `within`: a replication that does not end is a hang).
/// A `reprise` started by [`Lab::spawn`], its output drained by two threads.
struct Spawned {
    child: Child,
    out: std::thread::JoinHandle<Vec<u8>>,
    err: std::thread::JoinHandle<Vec<u8>>,
}

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

fn wait_exit(mut spawned: Spawned, within: Duration) -> std::process::Output {
    let deadline = Instant::now() + within;
    while spawned.child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = spawned.child.kill();
            panic!("reprise did not end within {within:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::Output {
        status: spawned.child.wait().unwrap(),
        stdout: spawned.out.join().unwrap(),
        stderr: spawned.err.join().unwrap(),
    }
}

/// Whether a process whose command line holds `needle` (NUL-separated words) still runs.
fn running(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

/// Waits until no process holds `needle` in its command line (20 s at most).
fn wait_gone(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while running(needle) {
        assert!(Instant::now() < deadline, "`{needle}` still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The snapshot overlays left in a folder of images.
fn overlays(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".reprise-replicate"))
        .collect();
    out.sort();
    out
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: a plain kill(2) of a child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// SIGTERM, SIGHUP and SIGINT during a replication of a running vm: the copy under way stops
/// (the recovery copy keeps its last point), the snapshot is merged back, and reprise exits
/// 130 naming the signal; no overlay is left and the next replication works. The same for a
/// backup set.
#[test]
fn a_signal_during_a_replication_stops_it_and_merges_the_snapshot_back() {
    let lab = Lab::up(116);
    let data = lab.src("erp-db-data.qcow2");
    let images = data.parent().unwrap().to_path_buf();
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", data.to_str().unwrap(), "1G"],
    );
    qemu_io(&data, "write -P 0x21 0 8M");
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let copy = lab.dst("erp-db-data.qcow2");
    let journal = lab.meta(&copy).join("journal");
    let applying = format!("helper\0apply\0{}\0", copy.display());
    let mut rows = Vec::new();
    for (n, (sig, name)) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
    ]
    .into_iter()
    .enumerate()
    {
        qemu_io(&data, &format!("write -P 0x{:x} 0 400M", 0x30 + n));
        let before = b3(&copy);
        let points = lab.points("erp-db");
        let mut child = lab.spawn(&["replicate", "--service", "erp-db"]);
        wait_mid_transfer(&mut child, &journal, 16 << 20);
        signal(&child, sig);
        let out = wait_exit(child, Duration::from_secs(600));
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(130), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("interrupted by {name}")),
            "{stderr}"
        );
        assert!(
            stderr.contains("erp-db-data.qcow2 keeps its last point"),
            "{stderr}"
        );
        assert!(stdout.contains("snapshot merged back"), "{stdout}");
        assert_eq!(overlays(&images), Vec::<String>::new(), "{name}");
        // The recovery helper saw its stream end and let go of the copy, untouched.
        wait_gone(&applying);
        assert_eq!(b3(&copy), before, "{name}: the copy was touched");
        assert_eq!(lab.points("erp-db"), points, "{name}");
        rows.push(vec![
            format!("{name} during vm erp-db"),
            "130".into(),
            "snapshot merged back; copy at its last point".into(),
            stderr.lines().last().unwrap_or("").to_string(),
        ]);
    }
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(b3(&copy), b3(&data));

    // A backup set: a large new dump is being sent when the signal comes.
    let set_src = lab.path("lab/hosts/san-main/root/export/backups/erp");
    let set = lab.path("lab/hosts/nas-pra/root/srv/backups/erp");
    std::fs::write(set_src.join("erp-big.dump"), random_bytes(300 << 20)).unwrap();
    let points = lab.points("erp-dumps");
    let staging = lab.meta(&set).join("staging");
    let mut child = lab.spawn(&["replicate", "--service", "erp-dumps"]);
    wait_mid_transfer(&mut child, &staging, 16 << 20);
    // A copy being written is never read as the source of a replication.
    let sent = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(["helper", "send-tree", set.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        sent.status.code() == Some(1)
            && sent.stdout.is_empty()
            && String::from_utf8_lossy(&sent.stderr).contains(&format!(
                "{} is not read: reprise is writing it now",
                set.display()
            )),
        "{sent:?}"
    );
    signal(&child, libc::SIGTERM);
    let out = wait_exit(child, Duration::from_secs(600));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by SIGTERM"), "{stderr}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while staging.exists() {
        assert!(Instant::now() < deadline, "the cut update stays staged");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!set.join("erp-big.dump").exists());
    assert_eq!(lab.points("erp-dumps"), points);
    rows.push(vec![
        "SIGTERM during backup set erp-dumps".into(),
        "130".into(),
        "staged files thrown away; copy at its last point".into(),
        stderr.lines().last().unwrap_or("").to_string(),
    ]);
    let run = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(set.join("erp-big.dump").exists());
    table(
        "replica-faults-signals",
        &["INJECTED", "EXIT", "KEPT", "WHAT WAS SAID"],
        &rows,
    );
}

/// A signal while the steps before a copy run on the vm's host (the check, the definition and
/// the snapshot, in one remote command): the snapshot that command made is merged back, no
/// copy starts, reprise exits 130 naming the vm it did not replicate; the next one works.
#[test]
fn a_signal_while_the_snapshot_is_made_merges_it_back_and_starts_no_copy() {
    use std::os::unix::fs::PermissionsExt as _;
    let lab = Lab::up(241);
    let data = lab.src("erp-db-data.qcow2");
    let images = data.parent().unwrap().to_path_buf();
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let points = lab.points("erp-db");
    let copy = lab.dst("erp-db-data.qcow2");
    let before = b3(&copy);
    // hv-main's driver makes its snapshot, then hangs.
    let bin = lab.path("lab/hosts/hv-main/bin");
    std::fs::rename(bin.join("lab-vm"), bin.join("lab-vm.real")).unwrap();
    let frozen = lab.path("frozen");
    std::fs::write(
        bin.join("lab-vm"),
        format!(
            "#!/bin/sh\n\"$(dirname \"$0\")/lab-vm.real\" \"$@\"; rc=$?\nif [ \"$1\" = freeze ]; then touch {}; sleep 30; fi\nexit $rc\n",
            frozen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(bin.join("lab-vm"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let calls = lab.path("lab/hosts/hv-main/calls.log");
    let freezes = || {
        std::fs::read_to_string(&calls)
            .unwrap_or_default()
            .matches("lab-vm freeze erp-db")
            .count()
    };
    let made = freezes();
    let child = lab.spawn(&["replicate", "--service", "erp-db"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !frozen.exists() {
        assert!(Instant::now() < deadline, "the snapshot was never made");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!overlays(&images).is_empty(), "the snapshot made overlays");
    signal(&child, libc::SIGTERM);
    let out = wait_exit(child, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted by SIGTERM") && stderr.contains("not replicated: erp-db"),
        "{stderr}"
    );
    assert_eq!(overlays(&images), Vec::<String>::new(), "{stderr}");
    assert_eq!(
        freezes(),
        made + 1,
        "a snapshot was made again after the stop"
    );
    assert_eq!(b3(&copy), before, "the copy was touched");
    assert_eq!(lab.points("erp-db"), points);
    std::fs::rename(bin.join("lab-vm.real"), bin.join("lab-vm")).unwrap();
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(overlays(&images), Vec::<String>::new());
    assert_eq!(b3(&copy), b3(&data));
}

/// A replication killed with SIGKILL leaves its snapshot: the vm writes to the overlay and
/// its disk goes stale. `check` fails on it, the next replication merges it back first (and
/// copies the writes made since), and so does a planned failover's final sync of the stopped
/// vm: no copy is ever made from the stale disk.
#[test]
fn a_snapshot_left_by_a_killed_replication_is_merged_back_before_the_disks_are_read() {
    let lab = Lab::up(119);
    let data = lab.src("erp-db-data.qcow2");
    let images = data.parent().unwrap().to_path_buf();
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", data.to_str().unwrap(), "1G"],
    );
    qemu_io(&data, "write -P 0x21 0 8M");
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let copy = lab.dst("erp-db-data.qcow2");
    let journal = lab.meta(&copy).join("journal");
    let overlay = images.join("erp-db-data.reprise-replicate");
    let kill_mid_replication = |pattern: u8| {
        qemu_io(&data, &format!("write -P 0x{pattern:x} 0 400M"));
        let mut child = lab.spawn(&["replicate", "--service", "erp-db"]);
        wait_mid_transfer(&mut child, &journal, 16 << 20);
        signal(&child, libc::SIGKILL);
        let _ = child.wait();
        wait_gone(&format!("helper\0apply\0{}\0", copy.display()));
        assert!(overlay.exists(), "a SIGKILL leaves the snapshot");
    };
    let mut rows = Vec::new();

    kill_mid_replication(0x44);
    // The vm goes on writing: into the overlay, not its disk.
    qemu_io(&overlay, "write -P 0x55 900M 1M");
    // A drill would rehearse a copy that goes stale: it asks hv-main (read only) and stops.
    let drilled = lab.drill_erp_db(&[]);
    assert_eq!(drilled.code, 1, "{drilled:?}");
    assert!(drilled.point.is_none(), "{drilled:?}");
    assert!(
        drilled
            .message
            .contains("a replication snapshot was left on hv-main")
            && drilled
                .message
                .contains("reprise replicate --service erp-db"),
        "{drilled:?}"
    );
    assert!(overlay.exists(), "a drill touched the primary");
    let (status, detail) = lab.check("vm erp-db (snapshot)");
    assert_eq!(status, "failed", "{detail}");
    assert!(
        detail.contains("reprise replicate --service erp-db"),
        "{detail}"
    );
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("merged back first"), "{run:?}");
    assert_eq!(overlays(&images), Vec::<String>::new());
    // The copy has what the vm wrote into the overlay.
    assert_eq!(b3(&copy), b3(&data));
    qemu_io(&copy, "read -P 0x55 900M 1M");
    rows.push(vec![
        "SIGKILL during vm erp-db, then writes".into(),
        "drill refused, check FAILED; next replicate merged it back, copied the writes".into(),
        run.stdout
            .lines()
            .find(|l| l.contains("merged back first"))
            .unwrap_or("")
            .to_string(),
    ]);

    // Again, then a planned failover: the vm is stopped, and its final sync merges the
    // overlay back before copying the disks.
    kill_mid_replication(0x45);
    qemu_io(&overlay, "write -P 0x66 901M 1M");
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(lab.args(&[
            "failover",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
        ]))
        .current_dir(lab.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the failover did not finish");
        let _ = lab.run(&[
            "confirm",
            "latest",
            "erp-db/data-check",
            "--by",
            "Nadia Morel",
        ]);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{:?}", lab.journal().last());
    assert_eq!(overlays(&images), Vec::<String>::new());
    qemu_io(&copy, "read -P 0x66 901M 1M");
    let sync = lab
        .journal()
        .into_iter()
        .find(|e| e["event"] == "step_output" && e["step"] == "erp-db/final-sync")
        .unwrap();
    let said = sync["stdout"].as_str().unwrap();
    assert!(said.contains("merged back first"), "{said}");
    rows.push(vec![
        "SIGKILL during vm erp-db, writes, planned failover".into(),
        "final sync merged it back first; the vm started with the writes".into(),
        said.lines().next().unwrap_or("").to_string(),
    ]);
    table(
        "replica-faults-snapshot",
        &["INJECTED", "KEPT", "WHAT WAS SAID"],
        &rows,
    );
}

/// An sshd this test started in a mount namespace of its own: stopped (and its namespace with
/// it) when the test ends.
struct NamespacedSshd(Child);

impl Drop for NamespacedSshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Restarts `host`'s sshd in a private mount namespace where a tmpfs of `size` covers
/// `dir`: the host's disk there fills up, and nothing of this machine's mounts changes (the
/// namespace ends with that sshd).
fn full_disk_under(lab: &Lab, host: &str, dir: &Path, size: &str) -> NamespacedSshd {
    let hd = lab.path("lab/hosts").join(host);
    let pid: i32 = std::fs::read_to_string(hd.join("run/sshd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: a plain kill(2) of the sshd this lab started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "sshd of {host} did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let script = format!(
        "mount -t tmpfs -o size={size} tmpfs {} && exec /usr/sbin/sshd -D -e -f {}",
        dir.display(),
        hd.join("sshd_config").display()
    );
    use std::os::unix::process::CommandExt as _;
    let sshd = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let sshd = NamespacedSshd(sshd);
    let config = std::fs::read_to_string(hd.join("sshd_config")).unwrap();
    let listen = config
        .lines()
        .find_map(|l| l.strip_prefix("ListenAddress "))
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd of {host} in its own mount namespace did not start (unshare needs root)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sshd
}

/// The recovery host's disk fills up in the middle of an update: whichever side runs where
/// (relayed through reprise, or the source here with `--here`), the transfer ends at once with
/// the recovery side's error instead of hanging until the remote deadline, the source helper
/// does not stay blocked, and the copy keeps its last point.
#[test]
fn a_full_disk_under_the_recovery_copies_ends_the_transfer_with_its_error() {
    let lab = Lab::up(117);
    let images = lab.dst("x");
    let images = images.parent().unwrap();
    let _sshd = full_disk_under(&lab, "hv-pra", images, "150m");
    // In the namespace the copies are gone: a first point of a 100 MiB disk fits.
    let data = lab.src("erp-db-data.qcow2");
    std::fs::remove_file(&data).unwrap();
    std::fs::write(&data, random_bytes(100 << 20)).unwrap();
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let first = lab.points("erp-db");
    assert_eq!(first.len(), 1, "{first:?}");
    let sending = format!("helper\0send\0{}\0", data.display());
    let mut rows = Vec::new();
    for here in [None, Some("hv-main")] {
        // Every block changes: the update's journal does not fit beside the copy.
        std::fs::write(&data, random_bytes(100 << 20)).unwrap();
        let mut args = vec!["replicate", "--service", "erp-db"];
        if let Some(h) = here {
            args.extend(["--here", h]);
        }
        let child = lab.spawn(&args);
        let began = Instant::now();
        let out = wait_exit(child, Duration::from_secs(600));
        let took = began.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("No space left on device"), "{stderr}");
        assert!(stderr.contains("erp-db-data.qcow2"), "{stderr}");
        // The source helper was not left blocked on a full pipe.
        wait_gone(&sending);
        // The last point is whole (read again on hv-pra, in its namespace).
        let run = lab.run(&["verify", "erp-db", "--point", &first[0].0]);
        assert_eq!(run.code, 0, "{run:?}");
        rows.push(vec![
            format!(
                "disk full on hv-pra, {}",
                here.map(|h| format!("--here {h}"))
                    .unwrap_or_else(|| "relayed".into())
            ),
            format!("ended after {:.1}s, exit 1", took.as_secs_f64()),
            format!("point {} verified again", first[0].0),
            stderr
                .lines()
                .find(|l| l.contains("No space"))
                .and_then(|l| l.split_once(" failed ("))
                .map(|(_, l)| {
                    format!(
                        "failed ({}",
                        l.replace(&lab.path("lab").display().to_string(), "…")
                    )
                })
                .unwrap_or_default(),
        ]);
    }
    table(
        "replica-faults-disk-full",
        &["INJECTED", "OUTCOME", "KEPT", "WHAT WAS SAID"],
        &rows,
    );
}

/// A drill and a replication never share a copy, and a vm started on its copy ends the
/// copy's point history:
/// - a drill killed after its copy started keeps the copy leased (its overlay still reads
///   it): a replication refuses to write into it, `check` says why, and resuming the drill
///   (its cleanup) releases it;
/// - a drill that starts while a replication writes the copy waits for it and starts from
///   the point it made;
/// - a copy changed behind its newest point (a vm started on it by hand) is read again
///   before a drill would start it, and found damaged it is not started;
/// - after a failover the vm runs on the copy: its points are gone from `points`, `check`
///   fails on it, nothing replicates into it, and another failover does not start it as a
///   verified point.
#[test]
fn a_drill_a_replication_and_a_started_vm_never_share_a_copy_unseen() {
    let lab = Lab::up(118);
    let data = lab.src("erp-db-data.qcow2");
    let copy = lab.dst("erp-db-data.qcow2");
    let mut rows = Vec::new();

    // 1. A drill of erp-db killed after its copy started (the drill of erp-db alone: a copy of
    // another vm cut while starting would be handed to the operator, who would have to start it
    // by hand before its health check gives up).
    let mut drill = lab.spawn(&["drill", "--service", "erp-db", "--only", "--no-prompt"]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let run_id = loop {
        let events = lab.journal();
        if events
            .iter()
            .any(|e| e["event"] == "step_finished" && e["step"] == "erp-db/start-copy")
        {
            break events[0]["run_id"].as_str().unwrap().to_string();
        }
        assert!(
            drill.try_wait().unwrap().is_none(),
            "the drill ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "the drill did not start erp-db");
        std::thread::sleep(Duration::from_millis(10));
    };
    signal(&drill, libc::SIGKILL);
    let _ = drill.wait();
    assert!(
        !lab.journal()
            .iter()
            .any(|e| e["event"] == "step_finished" && e["step"] == "erp-db/remove-copy"),
        "the drill's cleanup ran before the kill"
    );
    qemu_io(&data, "write -P 0x71 0 1M");
    let before = b3(&copy);
    let refused = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains(&format!("a drill copy of vm erp-db (run {run_id})")),
        "{}",
        refused.stderr
    );
    assert_eq!(
        b3(&copy),
        before,
        "the copy under the drill's overlay was written"
    );
    let (status, detail) = lab.check("vm erp-db (erp-db-data.qcow2)");
    assert_eq!(status, "warning", "{detail}");
    assert!(
        detail.contains(&format!("reprise resume {run_id}")),
        "{detail}"
    );
    rows.push(vec![
        "drill killed (SIGKILL) with its erp-db copy running".into(),
        "copy leased: replicate refused, copy unchanged; check warns".into(),
        refused
            .stderr
            .lines()
            .find(|l| l.contains("is in use"))
            .and_then(|l| l.split_once("is in use"))
            .map(|(_, r)| format!("in use{}", r.chars().take(120).collect::<String>()))
            .unwrap_or_default(),
    ]);
    // A planned failover of erp-db would stop production, then its final sync would refuse
    // the copy the drill still holds: refused before anything is done, naming the drill.
    let (status, detail) = lab.check("vm erp-db (replication)");
    assert_eq!(status, "warning", "{detail}");
    assert!(
        detail.contains("erp-db-data.qcow2: read by") && detail.contains(&format!("run {run_id}")),
        "{detail}"
    );
    let state = lab.path("state");
    let runs_before = crate::common::run_ids(&state).len();
    let failover = lab.run(&[
        "failover",
        "--yes",
        "--no-prompt",
        "--service",
        "erp-db",
        "--only",
    ]);
    assert_eq!(failover.code, 7, "{failover:?}");
    assert!(
        failover.stderr.contains("replicas vm erp-db (replication)")
            && failover.stderr.contains(&format!("run {run_id}"))
            && failover.stderr.contains(
                "the failover's final sync would refuse it after the primary side is stopped"
            ),
        "{failover:?}"
    );
    assert_eq!(
        crate::common::run_ids(&state).len(),
        runs_before,
        "a refused failover started a run"
    );
    assert_eq!(b3(&copy), before, "the copy was written");
    // The resume hands the steps the kill cut to the operator (confirmed here), then cleans up.
    let mut resumed = lab.spawn(&["resume", "latest", "--no-prompt"]);
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = resumed.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the resume did not finish: {:?}",
            lab.journal().iter().rev().take(5).collect::<Vec<_>>()
        );
        let events = lab.journal();
        for e in events
            .iter()
            .filter(|e| e["event"] == "waiting_for_operator")
        {
            let step = e["step"].as_str().unwrap();
            if !events
                .iter()
                .any(|c| c["event"] == "confirmed" && c["step"] == step)
            {
                let _ = lab.run(&["confirm", "latest", step, "--by", "Nadia Morel"]);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{:?}", lab.journal().last());
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(
        run.code, 0,
        "the drill's cleanup released the copy: {run:?}"
    );
    assert_eq!(b3(&copy), b3(&data));

    // 2. A drill while a replication writes the copy: it waits, then starts from the new point.
    qemu_io(&data, "write -P 0x72 0 48M");
    let journal = lab.meta(&copy).join("journal");
    let mut replicating = lab.spawn(&["replicate", "--service", "erp-db"]);
    wait_mid_transfer(&mut replicating, &journal, 1 << 20);
    let drilled = lab.drill_erp_db(&[]);
    let out = wait_exit(replicating, Duration::from_secs(600));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(drilled.code, 0, "{drilled:?}");
    let newest = lab.points("erp-db").last().unwrap().0.clone();
    let point = drilled.point.as_ref().unwrap();
    assert_eq!(point["point"], newest.as_str(), "{drilled:?}");
    assert_eq!(point["verified"], true);
    rows.push(vec![
        "drill while a replication writes the copy".into(),
        format!("drill waited, started from the new point {newest}, verified"),
        point["note"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(120)
            .collect(),
    ]);

    // 3. A vm started by hand on the copy writes to it.
    qemu_io(&copy, "write -P 0x73 2M 64k");
    let (status, detail) = lab.check("vm erp-db (erp-db-data.qcow2)");
    assert_eq!(status, "failed", "{detail}");
    assert!(
        detail.contains("changed since its newest point"),
        "{detail}"
    );
    let drilled = lab.drill_erp_db(&[]);
    assert_eq!(drilled.code, 1, "{drilled:?}");
    assert!(drilled.point.is_none(), "{drilled:?}");
    assert!(
        drilled.message.contains("FAILED verification"),
        "{drilled:?}"
    );
    rows.push(vec![
        "the copy written behind its newest point".into(),
        "read again by hash, found damaged: the drill did not start it".into(),
        drilled.message.chars().take(120).collect(),
    ]);
    // What the vm wrote there is in no point: no replication writes over it until the
    // operator lets it go.
    let written = b3(&copy);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("this replication would overwrite it: nothing was written"),
        "{run:?}"
    );
    assert_eq!(b3(&copy), written);
    rows.push(vec![
        "a replication into the copy written behind its newest point".into(),
        "refused, the copy kept, until `reprise release`".into(),
        run.stderr.chars().take(120).collect(),
    ]);
    let run = lab.run(&["release", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");

    // 4. An emergency failover: the vm runs on its copy from then on.
    let failover = |extra: &[&str]| {
        let mut args = vec![
            "failover",
            "--emergency",
            "--service",
            "erp-db",
            "--only",
            "--yes",
            "--no-prompt",
        ];
        args.extend_from_slice(extra);
        let mut child = lab.spawn(&args);
        let deadline = Instant::now() + Duration::from_secs(600);
        let code = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "the failover did not finish");
            let _ = lab.run(&[
                "confirm",
                "latest",
                "erp-db/data-check",
                "--by",
                "Nadia Morel",
            ]);
            std::thread::sleep(Duration::from_millis(200));
        };
        started(code, &lab.journal(), "erp-db/start")
    };
    crate::common::primary_lost(&lab.path("lab"), &["erp-db"]);
    let first = failover(&[]);
    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(first.point.as_ref().unwrap()["verified"], true);
    assert!(
        lab.points("erp-db").is_empty(),
        "a live copy shows no good point"
    );
    let (status, detail) = lab.check("vm erp-db (erp-db-data.qcow2)");
    assert_eq!(status, "failed", "{detail}");
    assert!(detail.contains("it is the disk of vm erp-db"), "{detail}");
    let refused = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("started on it by failover run"),
        "{refused:?}"
    );
    // Still running there, started by the first failover: a second one never claims to
    // start it from a point.
    let twice = failover(&[]);
    assert_eq!(twice.code, 1, "{twice:?}");
    assert!(twice.point.is_none());
    assert!(
        twice
            .message
            .contains("vm erp-db already runs on hv-pra, started by another run"),
        "{twice:?}"
    );
    // Stopped there by a person, then failed over again.
    let stopped = crate::common::lab_vm(&lab.path("lab"), "hv-pra", &["stop", "erp-db"]);
    assert!(stopped.status.success(), "{stopped:?}");
    let again = failover(&[]);
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.point.is_none());
    assert!(again.message.contains("--accept-unverified"), "{again:?}");
    // Started as it is, the copy brings no definition: the vm is started as hv-pra defines
    // it (the first failover defined it), and that is said; when hv-pra defines none, it
    // is not started.
    let defined = lab.path("lab/hosts/hv-pra/definitions/erp-db.xml");
    let kept = std::fs::read(&defined).unwrap();
    std::fs::remove_file(&defined).unwrap();
    let undefined = failover(&["--accept-unverified", "erp-db"]);
    assert_eq!(undefined.code, 1, "{undefined:?}");
    assert!(undefined.point.is_none(), "{undefined:?}");
    assert!(
        undefined.message.contains("hv-pra defines no erp-db"),
        "{undefined:?}"
    );
    std::fs::write(&defined, kept).unwrap();
    let named = failover(&["--accept-unverified", "erp-db"]);
    assert_eq!(named.code, 0, "{named:?}");
    assert_eq!(named.point.as_ref().unwrap()["verified"], false);
    let said: String = lab
        .journal()
        .iter()
        .filter(|e| e["event"] == "step_output" && e["step"] == "erp-db/start")
        .filter_map(|e| e["stdout"].as_str().map(str::to_string))
        .collect();
    assert!(
        said.contains("erp-db is started as hv-pra defines it now (not redefined)"),
        "{said}"
    );
    rows.push(vec![
        "emergency failover, then replicate and a second failover".into(),
        "points gone, check FAILED, replicate refused; started again only when named, unverified"
            .into(),
        again.message.chars().take(120).collect(),
    ]);
    table(
        "replica-faults-shared-copies",
        &["INJECTED", "KEPT", "WHAT WAS SAID"],
        &rows,
    );
}

/// Every manifest updated in place is made durable in order: the mark that an update is under
/// way synced before any node is written, the nodes synced before the header that makes them
/// trusted, then that header synced; on the source (the manifest it kept of what it sent,
/// updated through a dirty bitmap) and on the recovery side. A kept manifest whose header
/// reached the disk before its nodes would make the source skip a block the copy lacks and
/// claim the copy's own hash. Seen in the real helpers' system calls (strace): a power cut
/// cannot be made here.
#[test]
fn every_manifest_updated_in_place_is_synced_before_its_header_trusts_it() {
    use std::io::Write as _;
    crate::common::require_tool("strace", "-V", "strace");
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let img = dir.path().join("disk.qcow2");
    let copy = dir.path().join("copy.raw");
    let sh = |cmd: &str| {
        let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
    };
    // `reprise ARGS` with `input`, under strace when `log` is given: its standard output.
    let helper = |args: &[&str], input: &[u8], log: Option<&Path>| -> Vec<u8> {
        let mut cmd = match log {
            Some(log) => {
                let mut c = Command::new("strace");
                c.args([
                    "-f",
                    "-qq",
                    "-y",
                    "-e",
                    "trace=pwrite64,fdatasync,fsync",
                    "-o",
                ])
                .arg(log)
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_reprise"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_reprise")),
        };
        let mut child = cmd
            .args(args)
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(input);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        out.stdout
    };
    let (i, c) = (img.to_str().unwrap(), copy.to_str().unwrap());
    let apply = |id: &str, stream: &[u8], log: Option<&Path>| {
        let at = chrono::Utc::now().to_rfc3339();
        helper(
            &[
                "helper",
                "apply",
                c,
                "--point",
                id,
                "--taken-at",
                &at,
                "--source",
                "hv-main:disk",
                "--retention",
                "5",
            ],
            stream,
            log,
        );
    };
    // 1040 blocks, the first copy made (the source keeps the manifest it sent).
    sh(&format!("qemu-img create -q -f qcow2 '{i}' 65M"));
    sh(&format!("qemu-io -c 'write -q -P 0x11 0 8M' '{i}'"));
    let empty = helper(&["helper", "manifest", c], b"", None);
    let first = helper(&["helper", "send", i, "--format=qcow2"], &empty, None);
    apply("p1", &first, None);
    // Writes recorded by a persistent bitmap, read through it against the kept manifest.
    sh(&format!("qemu-img bitmap --add '{i}' cp"));
    sh(&format!(
        "qemu-io -c 'write -q -P 0x33 1M 64k' -c 'write -q -P 0x44 50M 200k' '{i}'"
    ));
    let digest =
        String::from_utf8(helper(&["helper", "manifest", c, "--digest"], b"", None)).unwrap();
    let base = format!("--base={}", digest.trim());
    let (src_log, dst_log) = (dir.path().join("send.log"), dir.path().join("apply.log"));
    let second = helper(
        &["helper", "send", i, "--format=qcow2", "--bitmap=cp", &base],
        b"",
        Some(&src_log),
    );
    apply("p2", &second, Some(&dst_log));
    sh(&format!("qemu-img compare -q -f raw -F qcow2 '{c}' '{i}'"));

    // The writes (offset) and syncs of one file, in order.
    let events = |log: &Path, file: &str| -> Vec<Option<u64>> {
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .filter(|l| l.contains(file))
            .filter_map(|l| {
                if l.contains("fdatasync(") || l.contains("fsync(") {
                    return Some(None);
                }
                let args = &l[..l.rfind(") =")?];
                Some(Some(args.rsplit(", ").next()?.trim().parse().ok()?))
            })
            .collect()
    };
    for (side, log, file) in [
        ("source", &src_log, "/.cache/reprise/manifests/"),
        ("recovery", &dst_log, ".reprise/manifest>"),
    ] {
        let ev = events(log, file);
        let text = std::fs::read_to_string(log).unwrap();
        let writes: Vec<usize> = (0..ev.len()).filter(|&k| ev[k].is_some()).collect();
        let nodes: Vec<usize> = (0..ev.len())
            .filter(|&k| ev[k].is_some_and(|o| o > 0))
            .collect();
        let (Some(&first_node), Some(&last_node)) = (nodes.first(), nodes.last()) else {
            panic!("{side}: no node written in place: {text}");
        };
        let mark = writes[0];
        assert_eq!(ev[mark], Some(0), "{side}: the mark comes first: {ev:?}");
        assert!(
            ev[mark..first_node].contains(&None),
            "{side}: the mark is not synced before the nodes: {ev:?}"
        );
        let header = *writes.last().unwrap();
        assert!(
            header > last_node && ev[header] == Some(0),
            "{side}: the header is not written last: {ev:?}"
        );
        assert!(
            ev[last_node..header].contains(&None),
            "{side}: the nodes are not synced before the header: {ev:?}"
        );
        assert_eq!(
            ev.last(),
            Some(&None),
            "{side}: the header is not synced: {ev:?}"
        );
    }
}

/// The recovery helper (`reprise helper apply`, a real process) killed with SIGKILL at each
/// write of its manifest in place (strace delivers the signal as the write is entered, so
/// each cut falls at an exact place), and at its last write to the copy before them: the next
/// use of the copy completes the update; the copy, its manifest and every point are then
/// exactly what they should be, and the next update goes on from there.
#[test]
fn a_recovery_helper_killed_at_each_write_of_its_manifest_completes_on_the_next_run() {
    use reprise::replica::blocks::{self, BLOCK, Manifest, tree};
    use reprise::replica::store::{NewPoint, Store};
    use std::io::Write as _;
    use std::os::unix::process::ExitStatusExt as _;
    crate::common::require_tool("strace", "-V", "strace");
    let point = |id: &str| NewPoint {
        id: id.into(),
        taken_at: chrono::Utc::now(),
        source: "hv-main:src.raw".into(),
        retention: 5,
        definition: None,
        read: None,
        pending: false,
        overwrite_changed: false,
    };
    let v1 = random_bytes(49 * BLOCK - 100);
    let mut v2 = v1.clone();
    for b in [0, 5, 6, 30, 48] {
        // (Block 48, the last, holds BLOCK - 100 bytes.)
        v2[b * BLOCK..b * BLOCK + 4096].copy_from_slice(&random_bytes(4096));
    }
    let mut v3 = v2.clone();
    v3[20 * BLOCK + 3] ^= 0x5a;
    let send = |src: &Path, store: &Store| {
        let (base, _) = store.base_manifest(false, false).unwrap();
        let mut stream = Vec::new();
        reprise::replica::helper::send(src, &base, &mut stream, false).unwrap();
        stream
    };
    // A copy with its first point, the source at v2, the stream of that update.
    let setup = || {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src.raw"), dir.path().join("dst.raw"));
        std::fs::write(&src, &v1).unwrap();
        let store = Store::new(&dst);
        store
            .apply(&mut &send(&src, &store)[..], point("p1"))
            .unwrap();
        std::fs::write(&src, &v2).unwrap();
        let stream = send(&src, &store);
        (dir, src, dst, store, stream)
    };
    // The helper applying `stream` to `dst` under strace with `strace_args`.
    let apply = |dst: &Path, stream: &[u8], strace_args: &[&str]| {
        let mut child = Command::new("strace")
            .args(strace_args)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_reprise"))
            .args(["helper", "apply", dst.to_str().unwrap(), "--point", "p2"])
            .args(["--taken-at", &chrono::Utc::now().to_rfc3339()])
            .args(["--source", "hv-main:src.raw", "--retention", "5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A helper killed early may stop reading: a broken pipe here is expected.
        let _ = child.stdin.take().unwrap().write_all(stream);
        child.wait_with_output().unwrap()
    };
    // Which of the helper's positioned writes go to the manifest (numbered from 1).
    let (dir, _, dst, _, stream) = setup();
    let log = dir.path().join("strace.log");
    let out = apply(
        &dst,
        &stream,
        &[
            "-f",
            "-qq",
            "-y",
            "-e",
            "trace=pwrite64",
            "-o",
            log.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let writes: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("pwrite64("))
        .map(str::to_string)
        .collect();
    let manifest_writes: Vec<usize> = (1..=writes.len())
        .filter(|&i| writes[i - 1].contains(".reprise/manifest>"))
        .collect();
    // The header marked, at least one run of nodes, the complete header.
    assert!(manifest_writes.len() >= 3, "{writes:#?}");
    assert!(
        writes[manifest_writes[0] - 2].contains("dst.raw>"),
        "the copy is written before its manifest: {writes:#?}"
    );
    drop(dir);

    let mut cuts = vec![manifest_writes[0] - 1];
    cuts.extend(&manifest_writes);
    for when in cuts {
        let (_dir, src, dst, store, stream) = setup();
        let out = apply(
            &dst,
            &stream,
            &[
                "-f",
                "-qq",
                "-o",
                "/dev/null",
                "-e",
                "trace=pwrite64",
                "-e",
                &format!("inject=pwrite64:signal=KILL:when={when}"),
            ],
        );
        let killed = out.status.signal() == Some(libc::SIGKILL) || out.status.code() == Some(137);
        assert!(
            killed,
            "write {when}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let meta = PathBuf::from(format!("{}.reprise", dst.display()));
        assert!(
            meta.join("journal").exists(),
            "write {when}: the journal is gone"
        );
        // Half written, the copy is never read as the source of a replication (as a
        // failback's copy back reads a recovery copy).
        let sent = Command::new(env!("CARGO_BIN_EXE_reprise"))
            .args(["helper", "send", dst.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&sent.stderr);
        assert!(
            sent.status.code() == Some(1)
                && sent.stdout.is_empty()
                && said.contains(&format!(
                    "{} is not read: reprise left it half written: an update was cut in the middle",
                    dst.display()
                )),
            "write {when}: {sent:?}"
        );
        let note = store.settle().unwrap().unwrap_or_default();
        assert!(
            note.contains("an interrupted update was completed: point p2"),
            "{when}: {note}"
        );
        assert!(
            std::fs::read(&dst).unwrap() == v2,
            "write {when}: the copy is not p2"
        );
        // The manifest is the tree of the copy's block hashes, whole.
        let m = Manifest::of_file(&dst).unwrap();
        let file = std::fs::read(meta.join("manifest")).unwrap();
        assert_eq!(&file[..8], b"RPRMAN2\n", "write {when}");
        assert_eq!(
            file[8..56],
            blocks::header(m.size, &m.whole)[8..],
            "write {when}"
        );
        assert!(
            file[56..] == *tree::of(m.cvs.clone()).as_flattened(),
            "write {when}"
        );
        assert_eq!(
            store.base_digest(false, false).unwrap(),
            m.digest(),
            "write {when}"
        );
        for (id, want) in [("p1", &v1), ("p2", &v2)] {
            let out = dst.with_extension(id);
            store.restore(id, &out).unwrap();
            assert!(
                std::fs::read(&out).unwrap() == *want,
                "write {when}: point {id}"
            );
        }
        // The next update goes on from it.
        std::fs::write(&src, &v3).unwrap();
        let applied = store
            .apply(&mut &send(&src, &store)[..], point("p3"))
            .unwrap();
        assert_eq!(applied.blocks, 1, "write {when}");
        assert!(std::fs::read(&dst).unwrap() == v3, "write {when}");
        let checked = store.verify(None).unwrap();
        assert!(
            checked.iter().all(|(_, good)| *good),
            "write {when}: {checked:?}"
        );
    }
}
