//! Replication of VM disks over a real sshd on loopback (the lab), with real qcow2 and raw
//! images written by qemu-io: round trip, incremental sends, sparse copies, corruption,
//! interruption, points in time and retention. Each test has its own lab on 127.7x.x.x.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Run, random_bytes, reprise};
use crate::sshd::poll_until;

/// A lab for one test, brought down on drop, with its own copy of the inventory.
struct Lab {
    dir: tempfile::TempDir,
    _net: crate::common::NetLock,
}

impl Lab {
    fn up(net: u8) -> Lab {
        for tool in ["qemu-img", "qemu-io"] {
            crate::common::require_tool(tool, "--version", "qemu-utils");
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
            self.dir
                .path()
                .join("lab/overlay.toml")
                .display()
                .to_string(),
            "--state-dir".to_string(),
            self.dir.path().join("state").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn run(&self, extra: &[&str]) -> Run {
        let args = self.args(extra);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        reprise(self.dir.path(), &refs)
    }

    /// The erp-db data disk on the primary host.
    fn src(&self) -> PathBuf {
        self.dir
            .path()
            .join("lab/hosts/hv-main/root/srv/datastore/images/erp-db-data.qcow2")
    }

    /// Its copy on the recovery host.
    fn dst(&self) -> PathBuf {
        self.dir
            .path()
            .join("lab/hosts/hv-pra/root/srv/replicas/images/erp-db-data.qcow2")
    }

    /// `reprise replicate --service erp-db`, which must succeed; bytes sent for the data disk.
    fn replicate(&self) -> u64 {
        let run = self.run(&["replicate", "--service", "erp-db"]);
        assert_eq!(run.code, 0, "{run:?}");
        sent_bytes(&run.stdout)
    }

    /// `reprise replicate --service erp-db` and `extra`, in the background, its output piped.
    fn spawn_replicate(&self, extra: &[&str]) -> std::process::Child {
        let mut args = vec!["replicate", "--service", "erp-db"];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_reprise"))
            .args(self.args(&args))
            .current_dir(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Waits, while `child` replicates, until the update of the data disk's copy has
    /// received 32 MiB; the pid of the recovery helper applying it.
    fn wait_mid_update(&self, child: &mut std::process::Child) -> i32 {
        let mut journal = self.dst().into_os_string();
        journal.push(".reprise/journal");
        let journal = PathBuf::from(journal);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let len = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
            if len > 32 << 20
                && let Some(pid) = apply_helper(&self.dst())
            {
                return pid;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the replication ended before it could be cut"
            );
            assert!(Instant::now() < deadline, "the transfer never started");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `reprise verify erp-db --point POINT` and `extra`, once the recovery helper of a cut
    /// transfer has noticed and let go of the copy (20 s at most).
    fn verify_when_free(&self, point: &str, extra: &[&str]) -> Run {
        let mut args = vec!["verify", "erp-db", "--point", point];
        args.extend_from_slice(extra);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let run = self.run(&args);
            if !run.stderr.contains("another process") || Instant::now() > deadline {
                return run;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The points of erp-db, oldest first: (id, verified).
    fn points(&self) -> Vec<(String, String)> {
        let run = self.run(&["points", "erp-db", "--json"]);
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

/// Bytes on the wire for the data disk, from `replicate`'s line about it.
fn sent_bytes(stdout: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.contains("erp-db-data"))
        .unwrap_or_else(|| panic!("no line about the data disk in {stdout}"));
    let (_, rest) = line.split_once(": point ").unwrap();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "bytes").unwrap();
    words[i - 1].parse().unwrap()
}

fn tool(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_io(format: &str, image: &Path, command: &str) {
    tool(
        "qemu-io",
        &["-f", format, "-c", command, image.to_str().unwrap()],
    );
}

fn new_image(format: &str, image: &Path, size: &str) {
    let _ = std::fs::remove_file(image);
    tool(
        "qemu-img",
        &["create", "-q", "-f", format, image.to_str().unwrap(), size],
    );
}

fn b3(path: &Path) -> String {
    reprise::replica::helper::hash_file(path).unwrap()
}

#[test]
fn a_replicated_qcow2_is_identical_and_only_changes_travel() {
    let lab = Lab::up(70);
    let src = lab.src();
    new_image("qcow2", &src, "256M");
    qemu_io("qcow2", &src, "write -P 0x11 0 96M");
    lab.replicate();
    assert_eq!(b3(&lab.dst()), b3(&src));
    tool("qemu-img", &["check", "-q", lab.dst().to_str().unwrap()]);

    let size = std::fs::metadata(&src).unwrap().len();
    let again = lab.replicate();
    assert!(again * 100 < size, "{again} bytes sent for no change");

    // 1% of the image's 64 KiB blocks: whole clusters rewritten in place.
    let blocks = size / 65536;
    let changed = blocks / 100;
    for i in 0..changed {
        qemu_io(
            "qcow2",
            &src,
            &format!("write -P 0x22 {} 64k", i * 97 * 65536 % (96 << 20)),
        );
    }
    let sent = lab.replicate();
    let data = changed * 65536;
    let manifest = blocks * 32 + 64;
    assert!(sent >= data, "{sent} bytes sent, {data} changed");
    assert!(
        sent as f64 <= data as f64 * 1.1 + manifest as f64 + 4096.0,
        "{sent} bytes sent for {data} bytes changed"
    );
    assert_eq!(b3(&lab.dst()), b3(&src));
    tool("qemu-img", &["check", "-q", lab.dst().to_str().unwrap()]);

    // Compressed on the way: 16 MiB of one repeated byte travel as a few KiB per block.
    qemu_io("qcow2", &src, "write -P 0x33 128M 16M");
    let run = lab.run(&["replicate", "--service", "erp-db", "--compress"]);
    assert_eq!(run.code, 0, "{run:?}");
    let sent = sent_bytes(&run.stdout);
    assert!(sent < 2 << 20, "{sent} bytes sent for 16 MiB changed");
    assert_eq!(b3(&lab.dst()), b3(&src));
    tool("qemu-img", &["check", "-q", lab.dst().to_str().unwrap()]);
}

/// The inventory gives erp-db's copies to other files (its host's images folder changed to
/// one whose disks of the same names are another vm's): the replication is refused, exit 1,
/// naming both sources, the copy and its points as they were. Its history moved aside, as the
/// refusal says, the copy follows the new source, which sends only what differs.
#[test]
fn a_copy_the_inventory_gives_to_another_disk_is_refused_untouched() {
    let lab = Lab::up(139);
    let src = lab.src();
    new_image("qcow2", &src, "64M");
    qemu_io("qcow2", &src, "write -P 0x11 0 32M");
    lab.replicate();
    let before = b3(&lab.dst());
    let points = lab.points();

    let images = src.parent().unwrap();
    let other = images.with_file_name("other");
    std::fs::create_dir_all(&other).unwrap();
    for disk in ["erp-db-system.qcow2", "erp-db-data.qcow2"] {
        std::fs::copy(images.join(disk), other.join(disk)).unwrap();
    }
    let new_src = other.join("erp-db-data.qcow2");
    qemu_io("qcow2", &new_src, "write -P 0x22 4M 1M");
    let overlay = lab.dir.path().join("lab/overlay.toml");
    let text = std::fs::read_to_string(&overlay).unwrap();
    let (was, now) = (images.display().to_string(), other.display().to_string());
    assert!(text.contains(&format!("\"{was}\"")), "{text}");
    std::fs::write(
        &overlay,
        text.replace(&format!("\"{was}\""), &format!("\"{now}\"")),
    )
    .unwrap();

    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("its points are of hv-main:{}", src.display()))
            && run.stderr.contains(&format!(
                "this replication reads hv-main:{}",
                new_src.display()
            ))
            && run.stderr.contains("nothing was written"),
        "{run:?}"
    );
    assert_eq!(b3(&lab.dst()), before);
    assert_eq!(lab.points(), points);

    // Nothing else takes those points for the new source's data: `check` fails on the
    // copies naming both sources, `points` says so, and a drill does not start the vm.
    let want = format!(
        "its points are of hv-main:{} (the newest, {}), and the inventory gives it to hv-main:{}",
        src.display(),
        points.last().unwrap().0,
        new_src.display()
    );
    let check = lab.run(&["check", "--json"]);
    assert_ne!(check.code, 0, "{check:?}");
    assert!(check.stdout.contains(&want), "{check:?}");
    let shown = lab.run(&["points", "erp-db"]);
    assert!(shown.stdout.contains(&want), "{shown:?}");
    // (Its dependencies' vms come first, and their copies moved with the same folder.)
    let drill = lab.run(&["drill", "--service", "erp-db", "--no-prompt"]);
    assert_ne!(drill.code, 0, "{drill:?}");
    assert!(
        drill.stdout.contains(&format!(
            "and the inventory gives it to hv-main:{}/",
            other.display()
        )) && drill
            .stdout
            .contains("a drill does not start from unverified data"),
        "{drill:?}"
    );
    assert_eq!(b3(&lab.dst()), before);
    assert_eq!(lab.points(), points);

    // Both disks' copies: each refused the same way. As the refusal says: their histories
    // moved aside and the copies taken as they are, only what differs travels.
    for disk in ["erp-db-system.qcow2", "erp-db-data.qcow2"] {
        let history = lab.dst().with_file_name(format!("{disk}.reprise"));
        std::fs::rename(&history, history.with_extension("reprise.old")).unwrap();
    }
    let taken = lab.run(&["release", "erp-db"]);
    assert_eq!(taken.code, 0, "{taken:?}");
    let sent = lab.replicate();
    assert!(sent < 4 << 20, "{sent} bytes sent for 1 MiB that differs");
    assert_eq!(b3(&lab.dst()), b3(&new_src));
}

/// A file at a disk's copy path on the recovery host that reprise neither made nor made a
/// point of (another vm's stopped disk there, a disk put there by hand) is never written over:
/// the replication is refused (exit 1) untouched, naming the file and the ways out, and
/// `check` says so before; `reprise release VM` takes it as a copy made by hand, and the
/// next replication updates it in place.
#[test]
fn a_file_reprise_did_not_make_at_a_copy_s_path_is_never_written_over_unless_taken() {
    let lab = Lab::up(144);
    let dst = lab.dst();
    // The lab's copy goes; another disk (random data, qemu-img's qcow2) takes its path.
    std::fs::remove_file(&dst).unwrap();
    let mut history = dst.clone().into_os_string();
    history.push(".reprise");
    std::fs::remove_dir_all(&history).unwrap();
    new_image("qcow2", &dst, "64M");
    qemu_io("qcow2", &dst, "write -P 0x5a 0 8M");
    let theirs = b3(&dst);
    let why = "a file is at the copy's path, and reprise did not make it and has no point of it";

    let check = lab.run(&["check", "--json"]);
    assert_eq!(check.code, 7, "{check:?}");
    assert!(check.stdout.contains(why), "{check:?}");
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(why)
            && run.stderr.contains(&dst.display().to_string())
            && run.stderr.contains("nothing was written")
            && run.stderr.contains("`reprise release NAME`"),
        "{run:?}"
    );
    assert_eq!(b3(&dst), theirs, "the file was written over");

    // Taken by the operator as a copy of erp-db's data disk made by hand.
    let taken = lab.run(&["release", "erp-db"]);
    assert_eq!(taken.code, 0, "{taken:?}");
    assert!(
        taken.stdout.contains("taken as a copy made by hand"),
        "{taken:?}"
    );
    lab.replicate();
    assert_eq!(b3(&dst), b3(&lab.src()));
    let newest = lab.points().last().unwrap().clone();
    assert_eq!(newest.1, "yes", "{newest:?}");
}

#[test]
fn a_sparse_raw_image_stays_sparse() {
    let lab = Lab::up(71);
    let src = lab.src();
    // 4 GiB holding 200 MiB of data.
    new_image("raw", &src, "4G");
    qemu_io("raw", &src, "write -P 0x33 0 120M");
    qemu_io("raw", &src, "write -P 0x44 3G 80M");
    let sent = lab.replicate();
    assert!(sent < 210 << 20, "{sent} bytes sent for 200 MiB of data");
    let (s, d) = (
        std::fs::metadata(&src).unwrap(),
        std::fs::metadata(lab.dst()).unwrap(),
    );
    assert_eq!(d.len(), 4 << 30);
    assert!(
        d.blocks() * 512 <= s.blocks() * 512 + (1 << 20),
        "the copy takes {} bytes, the source {}",
        d.blocks() * 512,
        s.blocks() * 512
    );
    assert_eq!(b3(&lab.dst()), b3(&src));
    // Data turned back into zeros becomes a hole again.
    qemu_io("raw", &src, "write -z 3G 80M");
    lab.replicate();
    assert!(std::fs::metadata(lab.dst()).unwrap().blocks() * 512 <= (122 << 20));
    assert_eq!(b3(&lab.dst()), b3(&src));
}

#[test]
fn a_flipped_byte_is_found_marked_bad_and_mended_by_the_next_run() {
    let lab = Lab::up(72);
    let src = lab.src();
    new_image("qcow2", &src, "64M");
    qemu_io("qcow2", &src, "write -P 0x55 0 16M");
    lab.replicate();
    let run = lab.run(&["verify", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");

    {
        // Rot: a byte flips, the file's times do not change (a write would be one outside
        // reprise, which no replication writes over unnoticed).
        use std::os::unix::fs::FileExt as _;
        let modified = std::fs::metadata(lab.dst()).unwrap().modified().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(lab.dst())
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, 5 << 20).unwrap();
        f.write_all_at(&[b[0] ^ 0xff], 5 << 20).unwrap();
        f.set_modified(modified).unwrap();
    }
    let run = lab.run(&["verify", "erp-db"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("BAD"), "{run:?}");
    assert!(run.stdout.contains("erp-db-data.qcow2"), "{run:?}");
    // The lab's own first point, then this test's, found bad.
    let points = lab.points();
    assert_eq!(points.len(), 2);
    assert_eq!(points[1].1, "bad");
    // A bad point is no good point: the newest good one is the lab's first.
    let status = lab.run(&["status", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&status.stdout).unwrap();
    let erp = rows.iter().find(|r| r["item"] == "erp-db").unwrap();
    assert_eq!(erp["newest_good_point"], points[0].0.as_str(), "{status:?}");

    // The next replication sends the damaged block again.
    let sent = lab.replicate();
    assert!(sent < 1 << 20, "{sent}");
    assert_eq!(b3(&lab.dst()), b3(&src));
    let newest = lab.points().last().unwrap().clone();
    assert_eq!(newest.1, "yes");
    let run = lab.run(&["verify", "erp-db", "--point", &newest.0]);
    assert_eq!(run.code, 0, "{run:?}");
}

#[test]
fn verify_of_a_copy_without_points_proves_nothing_and_says_so() {
    let lab = Lab::up(246);
    new_image("qcow2", &lab.src(), "16M");
    lab.replicate();
    assert_eq!(lab.run(&["verify", "erp-db"]).code, 0);
    // The copy's metadata is lost: nothing proves the copy any more.
    let mut meta = lab.dst().into_os_string();
    meta.push(".reprise");
    std::fs::remove_dir_all(meta).unwrap();
    let run = lab.run(&["verify", "erp-db"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout
            .contains("erp-db-data.qcow2: no replica point to verify"),
        "{run:?}"
    );
}

#[test]
fn a_killed_replication_leaves_the_last_point_good_and_the_next_one_completes() {
    let lab = Lab::up(73);
    let src = lab.src();
    new_image("raw", &src, "1G");
    qemu_io("raw", &src, "write -P 0x66 0 8M");
    lab.replicate();
    let first = lab.points().last().unwrap().0.clone();
    let before = b3(&lab.dst());

    qemu_io("raw", &src, "write -P 0x77 0 900M");
    let mut child = lab.spawn_replicate(&[]);
    lab.wait_mid_update(&mut child);
    let mut journal = lab.dst().into_os_string();
    journal.push(".reprise/journal");
    let journal = PathBuf::from(journal);
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(b3(&lab.dst()), before, "the mirror was touched");
    // The recovery helper notices the lost connection and lets go of the image.
    let run = lab.verify_when_free(&first, &[]);
    assert_eq!(run.code, 0, "{run:?}");

    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(!journal.exists(), "the cut update was not thrown away");
    assert_eq!(b3(&lab.dst()), b3(&src));
}

#[test]
fn every_point_kept_restores_exactly_and_retention_drops_the_oldest() {
    let lab = Lab::up(74);
    // erp-db keeps 3 points in this copy of the inventory.
    let vms = lab.dir.path().join("inventory/vms.toml");
    let text = std::fs::read_to_string(&vms).unwrap();
    let (head, tail) = text.split_once("[vms.erp-db]").unwrap();
    let tail = tail.replacen("retention = 14", "retention = 3", 1);
    std::fs::write(&vms, format!("{head}[vms.erp-db]{tail}")).unwrap();

    let src = lab.src();
    new_image("qcow2", &src, "64M");
    let mut expected = Vec::new();
    for (i, pattern) in ["0x01", "0x02", "0x03", "0x04"].iter().enumerate() {
        qemu_io("qcow2", &src, &format!("write -P {pattern} {}M 4M", i * 2));
        lab.replicate();
        expected.push(b3(&src));
        // Distinct point ids (they name the second they were taken).
        std::thread::sleep(Duration::from_millis(1100));
    }
    let points = lab.points();
    assert_eq!(points.len(), 3, "{points:?}");
    for (k, (id, verified)) in points.iter().enumerate() {
        assert_eq!(verified, "yes");
        let out = lab.dir.path().join(format!("restored-{k}.qcow2"));
        let run = reprise(
            lab.dir.path(),
            &[
                "helper",
                "restore",
                lab.dst().to_str().unwrap(),
                "--point",
                id,
                "--output",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(run.code, 0, "{run:?}");
        assert_eq!(b3(&out), expected[k + 1], "point {id}");
        tool("qemu-img", &["check", "-q", out.to_str().unwrap()]);
    }
    // The mirror and two reverse deltas: far below three copies.
    let mut store = lab.dst().into_os_string();
    store.push(".reprise/deltas");
    let deltas: u64 = std::fs::read_dir(PathBuf::from(store))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let size = std::fs::metadata(lab.dst()).unwrap().len();
    assert!(deltas < size / 2, "deltas {deltas} bytes, image {size}");
}

#[test]
fn unknown_vms_and_dead_hosts_are_named() {
    let lab = Lab::up(75);
    let run = lab.run(&["points", "erp-dbb"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("unknown vm `erp-dbb`"), "{run:?}");
    assert!(run.stderr.contains("erp-db"), "{run:?}");
    let run = lab.run(&["replicate", "--service", "nope"]);
    assert_eq!(run.code, 3, "{run:?}");
    // The recovery host's sshd goes away.
    let pid =
        std::fs::read_to_string(lab.dir.path().join("lab/hosts/hv-pra/run/sshd.pid")).unwrap();
    tool("kill", &[pid.trim()]);
    let run = lab.run(&["replicate", "--service", "erp-db", "--connect-timeout", "2"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("hv-pra"), "{run:?}");
}

#[test]
fn a_planned_failover_syncs_the_disks_as_a_point_and_journals_it() {
    let lab = Lab::up(76);
    let src = lab.src();
    new_image("qcow2", &src, "64M");
    qemu_io("qcow2", &src, "write -P 0x5a 0 8M");
    // Its last step is the operator's check of the data, confirmed from here.
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the failover did not finish within 30s");
        }
        let _ = lab.run(&[
            "confirm",
            "latest",
            "erp-db/data-check",
            "--by",
            "Nadia Morel",
        ]);
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(b3(&lab.dst()), b3(&src));
    // The vm now runs on its recovery copy: the copy's point history ended there, and its
    // points say so instead of being shown good.
    assert!(
        lab.points().is_empty(),
        "a copy a vm runs on keeps no point"
    );
    let listed = lab.run(&["points", "erp-db"]);
    assert!(
        listed.stdout.contains("started on it by failover run")
            && listed.stdout.contains("UNVERIFIED"),
        "{listed:?}"
    );
    let runs = lab.dir.path().join("state/runs");
    let dir = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let journal = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap();
    let used: Vec<serde_json::Value> = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "replica_point_used")
        .collect();
    assert_eq!(used.len(), 2, "{journal}");
    assert_eq!(used[0]["item"], "erp-db");
    assert_eq!(used[0]["step"], "erp-db/final-sync");
    assert_eq!(used[0]["verified"], true);
    // The vm then starts from that very point.
    assert_eq!(used[1]["step"], "erp-db/start");
    assert_eq!(used[1]["point"], used[0]["point"]);
    assert_eq!(used[1]["verified"], true);
}

fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.insert(
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            );
        }
    }
    out
}

#[test]
fn a_backup_set_travels_file_by_file_with_deletions_and_points() {
    let lab = Lab::up(77);
    let src = lab
        .dir
        .path()
        .join("lab/hosts/san-main/root/export/backups/erp");
    let dst = lab
        .dir
        .path()
        .join("lab/hosts/nas-pra/root/srv/backups/erp");
    let run = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_eq!(run.code, 0, "{run:?}");
    let v1 = tree(&src);
    assert_eq!(tree(&dst), v1);

    std::fs::write(
        src.join("erp-dumps-2026-11-04.dump"),
        "day 4\n".repeat(5000),
    )
    .unwrap();
    std::fs::remove_file(src.join("erp-dumps-2026-11-01.dump")).unwrap();
    std::fs::write(src.join("erp-dumps-2026-11-02.dump"), "rewritten").unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let run = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("2 files changed"), "{run:?}");
    let sent = run
        .stdout
        .split_once(": point ")
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap();
    assert!(sent < 32_000 + 2_000, "{sent} bytes sent for 30 kB changed");
    assert_eq!(tree(&dst), tree(&src));

    let points = lab.run(&["points", "erp-dumps", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&points.stdout).unwrap();
    assert_eq!(list.len(), 3, "the lab's first point and two: {points:?}");
    let out = lab.dir.path().join("first");
    let run = reprise(
        lab.dir.path(),
        &[
            "helper",
            "restore",
            dst.to_str().unwrap(),
            "--point",
            list[1]["id"].as_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(tree(&out), v1);
    let run = lab.run(&["verify", "erp-dumps"]);
    assert_eq!(run.code, 0, "{run:?}");
    std::fs::write(dst.join("erp-dumps-2026-11-03.dump"), "tampered").unwrap();
    let run = lab.run(&["verify", "erp-dumps"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("BAD"), "{run:?}");
}

/// san-main's clock runs 10 minutes behind this machine's (its `date`): a dump written there
/// now carries a time 10 minutes old by that clock. The point of its backup set records the
/// time brought to this machine's clock, so `--point-before` never takes it as written
/// before a time it was written after. A source whose clock cannot be read makes no point,
/// and says why.
#[test]
fn a_backup_set_point_is_timed_by_its_source_clock_brought_to_this_machines() {
    let lab = Lab::up(81);
    let host = lab.dir.path().join("lab/hosts/san-main");
    let src = host.join("root/export/backups/erp");
    let dst = lab
        .dir
        .path()
        .join("lab/hosts/nas-pra/root/srv/backups/erp");
    let behind = 600;
    let date = host.join("bin/date");
    let shim = |script: String| {
        std::fs::write(&date, script).unwrap();
        std::fs::set_permissions(&date, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    };
    shim(format!(
        "#!/bin/sh\nexec /usr/bin/date -d \"@$(( $(/usr/bin/date +%s) - {behind} ))\" \"$@\"\n"
    ));
    // Written now by this machine's clock (its status change time), 10 minutes ago by
    // san-main's.
    let dump = src.join("erp-dumps-2026-11-05.dump");
    std::fs::write(&dump, "day 5\n".repeat(1000)).unwrap();
    let written = std::fs::metadata(&dump).unwrap().ctime();
    std::thread::sleep(Duration::from_millis(1100));
    let run = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_eq!(run.code, 0, "{run:?}");
    let points = lab.run(&["points", "erp-dumps", "--json"]);
    let list: Vec<serde_json::Value> = serde_json::from_str(&points.stdout).unwrap();
    let newest: chrono::DateTime<chrono::Utc> = list.last().unwrap()["newest_file"]
        .as_str()
        .unwrap_or_else(|| panic!("{points:?}"))
        .parse()
        .unwrap();
    // Brought forward by the 10 minutes the clock is behind (less half the round trip the
    // reading took, at most).
    let late = newest.timestamp() - written;
    assert!(
        (behind - 5..=behind + 1).contains(&late),
        "the newest file time {newest} is {late}s after the dump's status change time"
    );
    // A clock that cannot be read: no point, the copy as it was.
    shim("#!/bin/sh\necho 'not a time'\n".to_string());
    std::fs::write(&dump, "day 5, again\n".repeat(1000)).unwrap();
    let copy = tree(&dst);
    let run = lab.run(&["replicate", "--service", "erp-dumps"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("san-main")
            && run.stderr.contains("its clock cannot be read")
            && run.stderr.contains("not a time"),
        "{run:?}"
    );
    let after = lab.run(&["points", "erp-dumps", "--json"]);
    let again: Vec<serde_json::Value> = serde_json::from_str(&after.stdout).unwrap();
    assert_eq!(again, list, "a point was made");
    assert_eq!(tree(&dst), copy, "the copy changed");
}

/// The pid of the recovery helper applying a stream to `image`, if running.
fn apply_helper(image: &Path) -> Option<i32> {
    apply_helpers(&[image.to_path_buf()]).pop().flatten()
}

/// [`apply_helper`] of each of `images`, in one pass over the processes (a pass takes a
/// while on a loaded machine, and a helper may live less than a second).
fn apply_helpers(images: &[PathBuf]) -> Vec<Option<i32>> {
    let wants: Vec<String> = images
        .iter()
        .map(|i| format!("helper\0apply\0{}\0", i.display()))
        .collect();
    let mut found = vec![None; images.len()];
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        for (want, slot) in wants.iter().zip(found.iter_mut()) {
            if slot.is_none() && cmd.contains(want.as_str()) {
                *slot = Some(pid);
            }
        }
    }
    found
}

/// The recovery helper stops reading mid-update (its storage hung: here SIGSTOP), the
/// pipes and the link fill: a SIGINT still ends the replication (exit 130) within seconds,
/// instead of a write that waits forever past its deadline and the stop; the last good point
/// stays whole.
#[test]
fn a_recovery_side_that_stops_reading_never_holds_a_replication_past_a_stop() {
    let lab = Lab::up(145);
    let src = lab.src();
    new_image("raw", &src, "1G");
    qemu_io("raw", &src, "write -P 0x21 0 8M");
    lab.replicate();
    let first = lab.points().last().unwrap().0.clone();
    let before = b3(&lab.dst());
    qemu_io("raw", &src, "write -P 0x31 0 900M");
    let mut child = lab.spawn_replicate(&[]);
    let pid = lab.wait_mid_update(&mut child).to_string();
    tool("kill", &["-STOP", &pid]);
    // The helper's input, its sshd's channel and this side's pipe fill.
    std::thread::sleep(Duration::from_secs(3));
    tool("kill", &["-INT", &child.id().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    tool("kill", &["-CONT", &pid]);
    let Some(status) = ended else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the replication still ran 60 s after SIGINT, its recovery side not reading");
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = lab.verify_when_free(&first, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(lab.points().last().unwrap().0, first);
    assert_eq!(b3(&lab.dst()), before);
}

#[test]
fn a_killed_recovery_helper_fails_the_run_and_leaves_the_last_point_good() {
    let lab = Lab::up(78);
    let src = lab.src();
    new_image("raw", &src, "512M");
    qemu_io("raw", &src, "write -P 0x21 0 8M");
    lab.replicate();
    let first = lab.points().last().unwrap().0.clone();
    let before = b3(&lab.dst());
    qemu_io("raw", &src, "write -P 0x31 0 400M");
    let mut child = lab.spawn_replicate(&[]);
    let pid = lab.wait_mid_update(&mut child);
    tool("kill", &["-KILL", &pid.to_string()]);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("erp-db-data.qcow2"), "{stderr}");
    assert_eq!(b3(&lab.dst()), before, "the mirror was touched");
    let run = lab.run(&["verify", "erp-db", "--point", &first]);
    assert_eq!(run.code, 0, "{run:?}");
    lab.replicate();
    assert_eq!(b3(&lab.dst()), b3(&src));
    assert_eq!(lab.points().len(), 3, "the lab's, the first and the last");
}

/// A copy written behind its manifest with its mtime kept is hashed again by the next
/// replication (its status change time moved), which mends it; damage that moves no time is
/// mended by `replicate --verify`, which hashes the copy again whatever its times say.
#[test]
fn verify_rereads_a_copy_damaged_behind_its_manifest() {
    let lab = Lab::up(79);
    let src = lab.src();
    new_image("qcow2", &src, "64M");
    qemu_io("qcow2", &src, "write -P 0x61 0 8M");
    lab.replicate();
    let dst = lab.dst();
    let write_keeping_mtime = |at: u64| {
        use std::os::unix::fs::FileExt as _;
        let mtime = std::fs::metadata(&dst).unwrap().modified().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&dst).unwrap();
        f.write_all_at(b"rot", at).unwrap();
        f.set_modified(mtime).unwrap();
    };
    // Written with its size and mtime kept (`touch -r`): its status change time moved, so
    // the next replication hashes the copy again, sends what differs, and says that its
    // newest point is not what it recorded.
    write_keeping_mtime(1 << 20);
    let run = lab.run(&["replicate", "--service", "erp-db"]);
    assert_eq!(run.code, 0, "{run:?}");
    let sent = sent_bytes(&run.stdout);
    assert!((64 << 10..1 << 20).contains(&sent), "{sent}");
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains("is marked unusable"),
        "{run:?}"
    );
    assert_eq!(b3(&dst), b3(&src));
    // Damage that moves no time at all (bit rot), shown by giving the saved manifest's key
    // the copy's times as they are now: the manifest cannot see it.
    write_keeping_mtime(2 << 20);
    {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(&dst).unwrap();
        let key = format!(
            "{} {}.{:09} {} {}.{:09}",
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino(),
            m.ctime(),
            m.ctime_nsec()
        );
        let meta = dst.with_file_name("erp-db-data.qcow2.reprise");
        std::fs::write(meta.join("stamp"), key).unwrap();
    }
    let sent = lab.replicate();
    assert!(sent < 64 << 10, "{sent}");
    assert_ne!(b3(&dst), b3(&src), "the damage was found without --verify");
    let run = lab.run(&["replicate", "--service", "erp-db", "--verify"]);
    assert_eq!(run.code, 0, "{run:?}");
    let sent = sent_bytes(&run.stdout);
    assert!((64 << 10..1 << 20).contains(&sent), "{sent}");
    assert_eq!(b3(&dst), b3(&src));
}

/// The parent pid of `pid`.
fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid …: comm may hold spaces, so split after its closing parenthesis.
    stat.rsplit_once(") ")?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The program names of `pid`'s ancestors, nearest first, up to `upto` (excluded).
fn ancestors(mut pid: i32, upto: i32) -> Vec<String> {
    let mut names = Vec::new();
    while let Some(p) = parent(pid) {
        if p == upto || p <= 1 {
            break;
        }
        names.push(
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .unwrap_or_default()
                .trim()
                .to_string(),
        );
        pid = p;
    }
    names
}

#[test]
fn with_here_the_local_side_runs_without_ssh_and_a_kill_loses_nothing() {
    let lab = Lab::up(80);
    let src = lab.src();
    new_image("raw", &src, "1G");
    qemu_io("raw", &src, "write -P 0x13 0 8M");
    let run = lab.run(&["replicate", "--service", "erp-db", "--here", "hv-pra"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(b3(&lab.dst()), b3(&src));
    assert!(sent_bytes(&run.stdout) >= 8 << 20, "{run:?}");
    let first = lab.points().last().unwrap().0.clone();
    let before = b3(&lab.dst());

    // The recovery helper is a child of this reprise, not of the recovery host's sshd; killing
    // reprise mid-transfer leaves the last point whole.
    qemu_io("raw", &src, "write -P 0x14 0 900M");
    let mut child = lab.spawn_replicate(&["--here", "hv-pra"]);
    let helper = lab.wait_mid_update(&mut child);
    let chain = ancestors(helper, child.id() as i32);
    assert!(
        parent(helper).is_some() && !chain.iter().any(|n| n.starts_with("sshd")),
        "the recovery helper runs under {chain:?}"
    );
    let mut up = helper;
    while let Some(p) = parent(up).filter(|p| *p > 1) {
        if p == child.id() as i32 {
            break;
        }
        up = p;
    }
    assert_eq!(
        parent(up),
        Some(child.id() as i32),
        "the recovery helper is not a child of reprise: {chain:?}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(b3(&lab.dst()), before, "the mirror was touched");
    let run = lab.verify_when_free(&first, &["--here", "hv-pra"]);
    assert_eq!(run.code, 0, "{run:?}");

    // The next run completes; then, from the primary's side (the source helper runs here).
    let run = lab.run(&["replicate", "--service", "erp-db", "--here", "hv-pra"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(b3(&lab.dst()), b3(&src));
    qemu_io("raw", &src, "write -P 0x15 64M 1M");
    let run = lab.run(&["replicate", "--service", "erp-db", "--here", "hv-main"]);
    assert_eq!(run.code, 0, "{run:?}");
    let sent = sent_bytes(&run.stdout);
    assert!(
        (1 << 20..2 << 20).contains(&sent),
        "{sent} bytes sent for 1 MiB changed"
    );
    assert_eq!(b3(&lab.dst()), b3(&src));
    assert_eq!(lab.points().len(), 4, "the lab's first point and three");

    // A host the inventory does not know is refused before anything runs.
    let run = lab.run(&["replicate", "--here", "hv-nowhere"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--here hv-nowhere"), "{run:?}");
}

/// A source image cut short while the helper sends it (the pages under its mapped reads gone)
/// ends the helper with exit 1 and an error naming the image, not a bare signal death.
#[test]
fn a_source_image_cut_short_while_it_is_sent_fails_naming_it() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("vm.raw");
    // 64 MiB of data without a zero block: every block travels, and the pipe fills at once.
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    std::fs::write(&image, &data).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .args(["helper", "send", image.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let manifest = reprise::replica::blocks::Manifest::empty().encode();
    child.stdin.take().unwrap().write_all(&manifest).unwrap();
    // The helper has begun: a full pipe now holds it inside its first mapped batch.
    let mut stdout = child.stdout.take().unwrap();
    stdout.read_exact(&mut [0u8; 4096]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} was cut short", image.display())),
        "{stderr}"
    );
    assert!((rest.len() as u64) < 64 << 20, "the whole image was sent");
}

/// A recovery helper whose writes fail in the middle of an update (here the file size limit,
/// as a full disk would) fails with the file and the reason, leaves the copy and its point as
/// they were, and throws its partial journal away at once instead of holding the space.
#[test]
fn an_update_whose_writes_fail_keeps_the_point_and_frees_its_journal() {
    use reprise::replica::store::{NewPoint, Store};
    use std::io::Write as _;
    use std::os::unix::process::CommandExt as _;
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("src.raw"), dir.path().join("dst.raw"));
    std::fs::write(&src, random_bytes(4 << 20)).unwrap();
    let store = Store::new(&dst);
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
    let mut stream = Vec::new();
    let (base, _) = store.base_manifest(false, false).unwrap();
    reprise::replica::helper::send(&src, &base, &mut stream, false).unwrap();
    store.apply(&mut &stream[..], point("p1")).unwrap();
    let before = std::fs::read(&dst).unwrap();

    // Every block changes: the update's journal would grow to 4 MiB; files may not pass 1 MiB.
    std::fs::write(&src, random_bytes(4 << 20)).unwrap();
    let (base, _) = store.base_manifest(false, false).unwrap();
    let mut stream = Vec::new();
    reprise::replica::helper::send(&src, &base, &mut stream, false).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reprise"));
    cmd.args([
        "helper",
        "apply",
        dst.to_str().unwrap(),
        "--point",
        "p2",
        "--taken-at",
        &chrono::Utc::now().to_rfc3339(),
        "--source",
        "hv-main:src.raw",
        "--retention",
        "5",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1 << 20,
                rlim_max: 1 << 20,
            };
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // The helper may stop reading when it fails: a broken pipe here is expected.
    let _ = child.stdin.take().unwrap().write_all(&stream);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("dst.raw.reprise/journal") && stderr.contains("File too large"),
        "{stderr}"
    );
    let store_dir = dir.path().join("dst.raw.reprise");
    for left in ["journal", "delta.pending"] {
        assert!(!store_dir.join(left).exists(), "{left} is left behind");
    }
    assert!(
        std::fs::read(&dst).unwrap() == before,
        "the copy was touched"
    );
    assert_eq!(store.verify(None).unwrap(), [("p1".to_string(), true)]);
}

/// The pid of the source helper sending `image`, if running.
fn send_helper(image: &Path) -> Option<i32> {
    let want = format!("helper\0send\0{}", image.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmd).contains(&want).then_some(pid)
    })
}

/// Through the OpenSSH client, a side that fails ends the transfer at once with its own error:
/// the recovery helper killed while the source is silent (stopped), relayed and with the
/// recovery side here; the source helper killed, with the source here. The copy keeps its
/// last point, and the next run completes.
#[test]
fn through_openssh_a_failing_side_ends_the_transfer_at_once_with_its_error() {
    let lab = Lab::up(123);
    let src = lab.src();
    new_image("raw", &src, "512M");
    qemu_io("raw", &src, "write -P 0x21 0 8M");
    lab.replicate();
    let before = b3(&lab.dst());
    // (--here, the side killed, what the error says)
    let cases = [
        (None, "recovery", "recovery exit 137"),
        (Some("hv-pra"), "recovery", "recovery exit 137"),
        (Some("hv-main"), "source", "source exit 137"),
    ];
    for (n, (here, victim, says)) in cases.into_iter().enumerate() {
        let what = format!("--here {here:?}, {victim} killed");
        qemu_io("raw", &src, &format!("write -P {} 0 400M", 0x31 + n));
        let mut args = vec!["--ssh-client", "openssh"];
        if let Some(host) = here {
            args.extend(["--here", host]);
        }
        let mut child = lab.spawn_replicate(&args);
        let apply = lab.wait_mid_update(&mut child);
        let send = send_helper(&src).expect("the source helper runs");
        let stopped = if victim == "recovery" {
            // The source goes silent: only the recovery side's end can end the transfer.
            tool("kill", &["-STOP", &send.to_string()]);
            tool("kill", &["-KILL", &apply.to_string()]);
            Some(send)
        } else {
            tool("kill", &["-KILL", &send.to_string()]);
            None
        };
        let ended = poll_until(Duration::from_secs(30), || {
            child.try_wait().unwrap().is_some()
        });
        if let Some(pid) = stopped {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        if !ended {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(ended, "{what}: the run did not end within 30s");
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        let host = if victim == "recovery" {
            "hv-pra"
        } else {
            "hv-main"
        };
        assert!(
            stderr.contains(&format!("erp-db: {host}: replicating")) && stderr.contains(says),
            "{what}: {stderr}"
        );
        assert_eq!(b3(&lab.dst()), before, "{what}: the copy was touched");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = lab.run(&["replicate", "--service", "erp-db"]);
        if run.code == 0 {
            break;
        }
        // A helper cut above may still hold the copy's lock for a moment.
        assert!(
            run.stderr.contains("another process") && Instant::now() < deadline,
            "{run:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(b3(&lab.dst()), b3(&src));
}

/// Random data replicated byte for byte by both SSH clients, relayed and with either side
/// here; and through the OpenSSH client with the key in an ssh-agent (no identity file), which
/// both reprise's host check and ssh(1) use.
#[test]
fn both_ssh_clients_replicate_byte_identical_relayed_and_here_and_with_the_agent() {
    use std::os::unix::fs::FileExt as _;
    let lab = Lab::up(124);
    let src = lab.src();
    new_image("raw", &src, "64M");
    let file = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    let mut offset = 0u64;
    let mut change = || {
        file.write_all_at(&random_bytes(8 << 20), offset).unwrap();
        offset = (offset + (9 << 20)) % (56 << 20);
    };
    for client in ["openssh", "libssh2"] {
        for here in [None, Some("hv-pra"), Some("hv-main")] {
            change();
            let mut args = vec!["replicate", "--service", "erp-db", "--ssh-client", client];
            if let Some(host) = here {
                args.extend(["--here", host]);
            }
            let run = lab.run(&args);
            assert_eq!(run.code, 0, "{client} {here:?}: {run:?}");
            assert!(
                sent_bytes(&run.stdout) >= 8 << 20,
                "{client} {here:?}: {run:?}"
            );
            assert_eq!(b3(&lab.dst()), b3(&src), "{client} {here:?}");
        }
    }

    // The same hosts with no identity file: the key is in an ssh-agent.
    let overlay = lab.dir.path().join("lab/overlay.toml");
    let text = std::fs::read_to_string(&overlay).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("identity = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("the lab names its client key");
    let agent_overlay = lab.dir.path().join("lab/overlay-agent.toml");
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("identity = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&agent_overlay, without).unwrap();
    let socket = lab.dir.path().join("agent.sock");
    let agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(Stdio::null())
        .spawn()
        .expect("ssh-agent runs (openssh-client)");
    struct Agent(std::process::Child);
    impl Drop for Agent {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _agent = Agent(agent);
    assert!(poll_until(Duration::from_secs(10), || socket.exists()));
    let added = Command::new("ssh-add")
        .arg(&key)
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let replicate = |agent: Option<&Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reprise"));
        cmd.args([
            "--overlay",
            agent_overlay.to_str().unwrap(),
            "--state-dir",
            lab.dir.path().join("state").to_str().unwrap(),
            "replicate",
            "--service",
            "erp-db",
            "--ssh-client",
            "openssh",
        ])
        .current_dir(lab.dir.path())
        .env_remove("SSH_AUTH_SOCK");
        if let Some(socket) = agent {
            cmd.env("SSH_AUTH_SOCK", socket);
        }
        cmd.output().unwrap()
    };
    change();
    let out = replicate(Some(&socket));
    assert!(out.status.success(), "{out:?}");
    assert!(sent_bytes(&String::from_utf8_lossy(&out.stdout)) >= 8 << 20);
    assert_eq!(b3(&lab.dst()), b3(&src));
    // Without the agent the key is missing: the hosts refuse it.
    let out = replicate(None);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("authentication failed"),
        "{out:?}"
    );
}

/// The processes whose command line names `dir`: the OpenSSH master connections and streams
/// of a reprise whose folder of control sockets is under it.
fn processes_naming(dir: &Path) -> Vec<String> {
    let want = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            cmd.contains(&want).then_some(cmd)
        })
        .collect()
}

/// The files under `dir` (sockets included), folders left out.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Through the OpenSSH client, a command's master connections end with it and its private
/// folder of control sockets goes: after a replication, when SIGTERM, SIGINT or SIGHUP stops
/// one in the middle (it stops cleanly and exits 130), and after a run's replicate step (a
/// planned failover's final sync); when reprise is killed outright (SIGKILL) the kernel ends
/// them, and no socket is left. The copy keeps its last good point, and the next replication
/// completes.
#[test]
fn through_openssh_the_master_connections_end_with_their_command_signals_included() {
    use std::os::unix::process::ExitStatusExt as _;
    let lab = Lab::up(125);
    let src = lab.src();
    new_image("raw", &src, "512M");
    qemu_io("raw", &src, "write -P 0x21 0 8M");
    let runtime = lab.dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let reprise_here = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_reprise"));
        cmd.args(lab.args(args))
            .current_dir(lab.dir.path())
            .env("XDG_RUNTIME_DIR", &runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let replicate = [
        "replicate",
        "--service",
        "erp-db",
        "--ssh-client",
        "openssh",
    ];
    let gone = |what: &str| {
        assert!(
            poll_until(Duration::from_secs(20), || processes_naming(&runtime)
                .is_empty()),
            "{what}: still running: {:?}",
            processes_naming(&runtime)
        );
    };

    let out = reprise_here(&replicate).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    gone("after a replication");
    assert_eq!(std::fs::read_dir(&runtime).unwrap().count(), 0);
    let before = b3(&lab.dst());

    for (n, signal) in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGKILL]
        .into_iter()
        .enumerate()
    {
        let what = format!("signal {signal}");
        qemu_io("raw", &src, &format!("write -P {} 0 400M", 0x31 + n));
        let mut child = reprise_here(&replicate).spawn().unwrap();
        lab.wait_mid_update(&mut child);
        let masters = processes_naming(&runtime)
            .into_iter()
            .filter(|c| c.contains("ControlMaster=yes"))
            .count();
        assert_eq!(masters, 2, "{what}: one master per host");
        // SAFETY: a signal to our own child, not yet waited for.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let ended = poll_until(Duration::from_secs(30), || {
            child.try_wait().unwrap().is_some()
        });
        if !ended {
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        assert!(ended, "{what}: reprise did not end");
        if signal == libc::SIGKILL {
            assert_eq!(status.signal(), Some(signal), "{what}: {status:?}");
        } else {
            assert_eq!(status.code(), Some(130), "{what}: {status:?}");
        }
        gone(&what);
        assert_eq!(files_under(&runtime), Vec::<PathBuf>::new(), "{what}");
        if signal == libc::SIGKILL {
            // Nothing of reprise ran to remove its (now empty) folder.
            for e in std::fs::read_dir(&runtime).unwrap().flatten() {
                std::fs::remove_dir(e.path()).unwrap();
            }
        }
        assert_eq!(std::fs::read_dir(&runtime).unwrap().count(), 0, "{what}");
        assert_eq!(b3(&lab.dst()), before, "{what}: the copy was touched");
        // The helpers cut above let go of the copy.
        assert!(
            poll_until(Duration::from_secs(20), || apply_helper(&lab.dst())
                .is_none()
                && send_helper(&src).is_none()),
            "{what}: a helper still runs"
        );
    }

    let out = reprise_here(&replicate).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(b3(&lab.dst()), b3(&src));

    // A run's replicate step (the final sync of a planned failover).
    let mut child = reprise_here(&[
        "failover",
        "--service",
        "erp-db",
        "--only",
        "--yes",
        "--no-prompt",
        "--ssh-client",
        "openssh",
    ])
    .stdout(std::fs::File::create(lab.dir.path().join("failover.out")).unwrap())
    .stderr(std::fs::File::create(lab.dir.path().join("failover.err")).unwrap())
    .spawn()
    .unwrap();
    let mut seen = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        seen |= !processes_naming(&runtime).is_empty();
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the failover did not finish within 60s");
        }
        let _ = lab.run(&[
            "confirm",
            "latest",
            "erp-db/data-check",
            "--by",
            "Nadia Morel",
        ]);
        std::thread::sleep(Duration::from_millis(50));
    };
    // Its vm does not start on this raw image (the lab's vms read qcow2): only the final
    // sync matters here.
    let said = |f: &str| std::fs::read_to_string(lab.dir.path().join(f)).unwrap();
    assert!(
        said("failover.out").contains("✔ erp-db/final-sync Done"),
        "{status:?}: {}{}",
        said("failover.out"),
        said("failover.err")
    );
    assert!(seen, "the failover's final sync used no master connection");
    gone("after a run");
    assert_eq!(std::fs::read_dir(&runtime).unwrap().count(), 0);
}

/// A copy of erp-db's disk `disk` on the recovery host.
fn copy_of(lab: &Lab, disk: &str) -> PathBuf {
    lab.dir
        .path()
        .join("lab/hosts/hv-pra/root/srv/replicas/images")
        .join(disk)
}

/// `reprise replicate --service erp-db` with `extra`, its debug log on, its output read as it
/// comes (joined by [`Spawned::wait`]).
struct Spawned {
    child: std::process::Child,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
}

impl Spawned {
    fn start(lab: &Lab, extra: &[&str]) -> Spawned {
        let mut args = vec!["replicate", "--service", "erp-db"];
        args.extend_from_slice(extra);
        let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
            .args(lab.args(&args))
            .current_dir(lab.dir.path())
            .env_remove("RUST_LOG")
            .env("REPRISE_LOG", "reprise=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let read = |mut r: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = r.read_to_string(&mut s);
                s
            })
        };
        let out = read(Box::new(child.stdout.take().unwrap()));
        let err = read(Box::new(child.stderr.take().unwrap()));
        Spawned { child, out, err }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its exit code, output and errors, once it ends (10 minutes at most: else it hangs).
    fn wait(mut self) -> (Option<i32>, String, String) {
        let ended = poll_until(Duration::from_secs(600), || !self.running());
        if !ended {
            let _ = self.child.kill();
        }
        let code = self.child.wait().unwrap().code();
        let (out, err) = (self.out.join().unwrap(), self.err.join().unwrap());
        assert!(ended, "reprise did not end: it hangs\n{err}");
        (code, out, err)
    }
}

/// The size of the update journal of `copy` (0 when none).
fn journal_len(copy: &Path) -> u64 {
    std::fs::metadata(format!("{}.reprise/journal", copy.display()))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Where the debug log of a replication says the stream of `disk` begins or ends.
fn logged(stderr: &str, disk: &str, what: &str) -> Option<usize> {
    stderr
        .lines()
        .position(|l| l.contains(what) && l.contains(disk))
}

/// The disks of a vm stream at once, each with its own outcome. One disk's source helper is
/// frozen (SIGSTOP) as soon as it runs: the other disk's stream still begins and its update
/// arrives (a replication that waited for the first disk would never get there); a stop then
/// cuts both, and both copies keep their last point, through either SSH client. One disk's
/// recovery helper killed mid-update fails that disk, named, while the other gets its point.
#[test]
fn the_disks_of_a_vm_stream_at_once_and_each_keeps_its_own_outcome() {
    let lab = Lab::up(230);
    let disks = ["erp-db-system.qcow2", "erp-db-data.qcow2"];
    let src = |d: &str| lab.src().with_file_name(d);
    for d in disks {
        new_image("qcow2", &src(d), "1G");
        qemu_io("qcow2", &src(d), "write -P 0x11 0 8M");
    }
    lab.replicate();
    for (n, client) in ["openssh", "libssh2"].into_iter().enumerate() {
        for (i, d) in disks.iter().enumerate() {
            qemu_io(
                "qcow2",
                &src(d),
                &format!("write -P 0x{:x} 0 300M", 0x20 + 2 * n + i),
            );
        }
        let before: Vec<String> = disks.iter().map(|d| b3(&copy_of(&lab, d))).collect();
        let points = lab.points();
        let mut run = Spawned::start(&lab, &["--ssh-client", client]);
        // The first disk whose source helper runs is frozen.
        let mut frozen = None;
        let started = poll_until(Duration::from_secs(120), || {
            frozen = disks.iter().enumerate().find_map(|(i, d)| {
                let pid = send_helper(&src(d))?;
                Command::new("kill")
                    .args(["-STOP", &pid.to_string()])
                    .status()
                    .is_ok_and(|s| s.success())
                    .then_some((i, pid))
            });
            frozen.is_some() || !run.running()
        });
        let Some((first, pid)) = frozen else {
            let (code, _, err) = run.wait();
            panic!(
                "{client}: no source helper was seen running (started: {started}, exit {code:?}): {err}"
            );
        };
        let other = disks[1 - first];
        let together = poll_until(Duration::from_secs(120), || {
            journal_len(&copy_of(&lab, other)) > 16 << 20 || !run.running()
        }) && run.running();
        // SAFETY: a plain kill(2) of the reprise this test started.
        unsafe { libc::kill(run.child.id() as i32, libc::SIGTERM) };
        let _ = Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status();
        let (code, _, stderr) = run.wait();
        assert!(
            together,
            "{client}: {other} was not streamed while {} was: {stderr}",
            disks[first]
        );
        let (began, ended) = (
            logged(&stderr, other, "disk stream begins"),
            logged(&stderr, disks[first], "disk stream ends"),
        );
        assert!(
            began.is_some() && began < ended,
            "{client}: the log does not say {other} began before {} ended: {stderr}",
            disks[first]
        );
        // The streams found the sessions they needed ready: no login while they ran (the
        // stop cuts them: the snapshot's merge then logs in again).
        let lines: Vec<&str> = stderr.lines().collect();
        let first = lines.iter().position(|l| l.contains("disk stream begins"));
        let last = lines.iter().rposition(|l| l.contains("disk stream ends"));
        if let (Some(first), Some(last)) = (first, last) {
            assert!(
                !lines[first..last].iter().any(|l| l.contains("ssh login")),
                "{client}: a stream waited for a login: {stderr}"
            );
        }
        assert_eq!(code, Some(130), "{client}: {stderr}");
        for (i, d) in disks.iter().enumerate() {
            assert!(
                stderr.contains(&format!("{d} keeps its last point")),
                "{client}: {stderr}"
            );
            assert!(
                poll_until(Duration::from_secs(20), || apply_helper(&copy_of(&lab, d))
                    .is_none()),
                "{client}: the recovery helper of {d} still runs"
            );
            assert_eq!(
                b3(&copy_of(&lab, d)),
                before[i],
                "{client}: {d} was touched"
            );
        }
        assert_eq!(lab.points(), points, "{client}");
    }

    // The system disk's recovery helper killed mid-update: its error, and the data disk's point.
    let system = copy_of(&lab, disks[0]);
    let before = b3(&system);
    let mut run = Spawned::start(&lab, &[]);
    let apply = {
        let mut pid = None;
        let found = poll_until(Duration::from_secs(120), || {
            pid = (journal_len(&system) > 16 << 20)
                .then(|| apply_helper(&system))
                .flatten();
            pid.is_some() || !run.running()
        });
        pid.filter(|_| found)
    };
    let Some(apply) = apply else {
        let (code, _, err) = run.wait();
        panic!("the system disk's update was never seen under way (exit {code:?}): {err}");
    };
    tool("kill", &["-KILL", &apply.to_string()]);
    let (code, stdout, stderr) = run.wait();
    assert_eq!(code, Some(1), "{stderr}");
    let failed: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(failed.len(), 1, "{stderr}");
    assert!(
        failed[0].contains(&format!("{}: replicating", "hv-pra"))
            && failed[0].contains(disks[0])
            && failed[0].contains("recovery exit 137"),
        "{stderr}"
    );
    let line = stdout
        .lines()
        .find(|l| l.contains(disks[1]) && l.contains(": point "))
        .unwrap_or_else(|| panic!("the data disk got no point: {stdout}\n{stderr}"));
    let point = line.split(": point ").nth(1).unwrap();
    let point = point.split(',').next().unwrap();
    assert!(
        !stdout
            .lines()
            .any(|l| l.contains(disks[0]) && l.contains(": point ")),
        "{stdout}"
    );
    let verified = lab.verify_when_free(point, &[]);
    assert!(
        verified.stdout.contains(&format!(
            "{}:{} point {point}: good",
            "hv-pra",
            copy_of(&lab, disks[1]).display()
        )),
        "{verified:?}"
    );
    assert_eq!(b3(&system), before, "the system copy was touched");

    // The next replication brings both copies to their sources.
    lab.replicate();
    for d in disks {
        assert_eq!(b3(&copy_of(&lab, d)), b3(&src(d)), "{d}");
    }
}

/// A planned failover's final sync streams the vm's disks at once too: one disk's source
/// helper frozen as soon as it runs, the other's still starts (a step that waited for the
/// first disk would never get there); thawed, the failover completes with both copies equal
/// to their disks.
#[test]
fn a_final_sync_streams_the_disks_of_a_vm_at_once() {
    let lab = Lab::up(231);
    let disks = ["erp-db-system.qcow2", "erp-db-data.qcow2"];
    let src = |d: &str| lab.src().with_file_name(d);
    for (i, d) in disks.iter().enumerate() {
        new_image("qcow2", &src(d), "1G");
        qemu_io(
            "qcow2",
            &src(d),
            &format!("write -P 0x{:x} 0 256M", 0x61 + i),
        );
    }
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
    let mut frozen = None;
    poll_until(Duration::from_secs(120), || {
        frozen = disks.iter().enumerate().find_map(|(i, d)| {
            let pid = send_helper(&src(d))?;
            Command::new("kill")
                .args(["-STOP", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
                .then_some((i, pid))
        });
        frozen.is_some() || child.try_wait().unwrap().is_some()
    });
    let Some((first, pid)) = frozen else {
        let _ = child.kill();
        panic!("no source helper of the final sync was seen running");
    };
    let other = src(disks[1 - first]);
    let together = poll_until(Duration::from_secs(120), || send_helper(&other).is_some());
    let _ = Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status();
    if !together {
        let _ = child.kill();
        panic!(
            "{} was not streamed while {} was",
            disks[1 - first],
            disks[first]
        );
    }
    let ended = poll_until(Duration::from_secs(300), || {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        let _ = lab.run(&[
            "confirm",
            "latest",
            "erp-db/data-check",
            "--by",
            "Nadia Morel",
        ]);
        false
    });
    if !ended {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(ended, "the failover did not finish");
    assert!(status.success(), "{status:?}");
    for d in disks {
        assert_eq!(b3(&copy_of(&lab, d)), b3(&src(d)), "{d}");
    }
}

/// Sends SIGCONT to the processes it holds when dropped (a failed test leaves none stopped).
struct Stopped(Vec<i32>);

impl Drop for Stopped {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
    }
}

/// The recovery helpers of `disks`, each held stopped as soon as it runs, while `run` goes on;
/// asserts that the snapshot is merged back (`thaw`) while both are held, after both sources
/// were read to their end (the debug log). The run's output once it ended.
fn merged_while_the_copies_are_held(lab: &Lab, disks: &[&str], mut run: Spawned) -> String {
    let thaws = || {
        std::fs::read_to_string(lab.dir.path().join("lab/hosts/hv-main/calls.log"))
            .unwrap_or_default()
            .matches("thaw erp-db")
            .count()
    };
    let before = (thaws(), lab.points());
    let mut held = Stopped(Vec::new());
    let copies: Vec<PathBuf> = disks.iter().map(|d| copy_of(lab, d)).collect();
    poll_until(Duration::from_secs(120), || {
        for pid in apply_helpers(&copies).into_iter().flatten() {
            // SAFETY: a signal to a recovery helper this test's run started.
            if !held.0.contains(&pid) && unsafe { libc::kill(pid, libc::SIGSTOP) } == 0 {
                held.0.push(pid);
            }
        }
        held.0.len() == disks.len() || !run.running()
    });
    if held.0.len() != disks.len() {
        drop(held);
        let (code, stdout, stderr) = run.wait();
        panic!("the recovery helpers were not both seen running (exit {code:?}): {stdout}{stderr}");
    }
    let merged = poll_until(Duration::from_secs(120), || {
        thaws() > before.0 || !run.running()
    });
    let waiting = held.0.iter().all(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('T'))
        })
    });
    drop(held);
    let (code, stdout, stderr) = run.wait();
    assert!(
        merged && waiting,
        "the snapshot was not merged back while the recovery helpers were held: {stderr}"
    );
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("snapshot merged back"), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    let at = |what: &str| lines.iter().position(|l| l.contains(what));
    let thaw = at("lab-vm thaw erp-db").expect("the merge is logged");
    for d in disks {
        let read = lines
            .iter()
            .position(|l| l.contains("source read to its end") && l.contains(d));
        assert!(
            read.is_some_and(|r| r < thaw),
            "{d} was not read to its end before the merge: {stderr}"
        );
    }
    let points = lab.points();
    assert_ne!(points.last(), before.1.last(), "no new point: {points:?}");
    stderr
}

/// The snapshot is merged back (`replicate-end`) as soon as every disk's source has sent all
/// of its stream, while the recovery side still commits: here both recovery helpers are held
/// stopped, and the merge happens all the same, never before both sources have ended (the
/// debug log). Through libssh2 between two hosts of which neither is this machine (which
/// does not tell when a source ended), after the copies.
#[test]
fn the_snapshot_is_merged_back_once_every_source_has_sent_while_the_copies_commit() {
    let lab = Lab::up(242);
    let disks = ["erp-db-system.qcow2", "erp-db-data.qcow2"];
    let src = |d: &str| lab.src().with_file_name(d);
    for d in disks {
        new_image("qcow2", &src(d), "1G");
        // Enough for the sources' scans to keep the recovery helpers waiting long enough to
        // be seen (with 8 MiB they could end first on a loaded machine, and once with 256 MiB
        // read from a warm cache in 0.4 s).
        qemu_io("qcow2", &src(d), "write -P 0x11 0 768M");
    }
    lab.replicate();
    // Nothing changed: each source's stream is a few bytes, which the pipes hold whole.
    let run = Spawned::start(&lab, &["--ssh-client", "openssh"]);
    merged_while_the_copies_are_held(&lab, &disks, run);

    // libssh2: the merge follows the end of every stream.
    let run = Spawned::start(&lab, &["--ssh-client", "libssh2"]);
    let (code, stdout, stderr) = run.wait();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let thaw = lines.iter().position(|l| l.contains("lab-vm thaw erp-db"));
    let last_end = lines.iter().rposition(|l| l.contains("disk stream ends"));
    assert!(
        thaw.is_some() && last_end < thaw,
        "libssh2: merged before the streams ended: {stderr}"
    );
    assert!(!stderr.contains("source read to its end"), "{stderr}");
}

/// Through libssh2 with the recovery side on this machine (`--here`), the end of a source's
/// channel with its exit 0 tells that it sent all of its stream: the snapshot is merged back
/// then, while the recovery helpers here (held stopped) still commit.
#[test]
fn through_libssh2_into_here_the_snapshot_is_merged_back_while_the_copies_commit() {
    let lab = Lab::up(127);
    let disks = ["erp-db-system.qcow2", "erp-db-data.qcow2"];
    let src = |d: &str| lab.src().with_file_name(d);
    for d in disks {
        new_image("qcow2", &src(d), "1G");
        // Enough for the sources' scans to keep the recovery helpers here waiting a while
        // (256 MiB was once read from a warm cache in 0.4 s, before the helper was seen).
        qemu_io("qcow2", &src(d), "write -P 0x11 0 768M");
    }
    lab.replicate();
    // Nothing changed: each source's stream is a few bytes, which the pipes hold whole.
    let run = Spawned::start(&lab, &["--ssh-client", "libssh2", "--here", "hv-pra"]);
    merged_while_the_copies_are_held(&lab, &disks, run);
    for d in disks {
        assert_eq!(b3(&copy_of(&lab, d)), b3(&src(d)), "{d}");
    }
}
