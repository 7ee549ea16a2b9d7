//! Replication of a running libvirt guest, end to end: `reprise replicate` reading what the
//! disk's dirty bitmap marks (libvirt's checkpoints and backup job), the same reading every
//! block (`--scan`), and `rsync --inplace --no-whole-file` of the image file, in the same run.
//!
//! On the real-hypervisor set-up of the tests (`tests/it/hv`: two libvirt daemons in network
//! and mount namespaces of their own, reached over SSH, a tiny guest under QEMU), for each
//! size in `SIZES_GIB` (default `4 16 64`): a sparse qcow2 disk of that size with `DATA_PCT`%
//! (10) of it random data in 1 MiB runs at random places, the guest started on it and copied
//! once; then for each `PCTS` (`0.1 1`): the guest writes that share of the disk's 64 KiB
//! blocks with random data (one every 1000 blocks for 0.1%, every 100 for 1%, over the whole
//! disk, synced), and each way is timed `REPS` (3) times, with a cold page cache before each
//! timed run (`sync; echo 3 > /proc/sys/vm/drop_caches`, the whole machine's cache; `COLD=0`
//! keeps it; `WAYS`, default `bitmap scan rsync`, the ways timed). Each time is a whole
//! replication as an operator runs it (the logins, the driver's checkpoint and backup job,
//! the source's read, the recovery side's apply and its point), from the orchestrator in the main site's namespace, relayed. The guest writes the
//! same blocks again before each reprise run, so that each reads the same changed blocks;
//! rsync's copy runs after the bitmap's, on the same writes.
//!
//! Prints Markdown tables: medians of the wall time, the ratios to the bitmap path, the
//! blocks each reprise run says changed and rsync's bytes sent, and how the bitmap path's time
//! grows with the size. With `REPRISE_LOG` set (`reprise=debug`), each reprise run's log is
//! printed after it, with its time. Asserts only that each way read as asked (the bitmap path
//! reports `changed-blocks`, the scan `scan`).
//!
//! Needs root, what `scripts/hv-prereqs.sh` installs, and about 3 × SIZE × DATA_PCT / 100
//! of free disk under the temporary folder per size (the disk, reprise's copy, rsync's copy);
//! a size that would leave less than `MIN_FREE_GIB` (8) free is refused before it starts.
//! `bash scripts/bench-cbt-libvirt.sh` installs the prerequisites and runs it.

#[allow(dead_code)]
#[path = "../tests/it/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../tests/it/hv/mod.rs"]
mod hv;
#[allow(dead_code)]
#[path = "../tests/it/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hv::{Firmware, Hv, blocks_changed};

/// The guest's address: 10.126.0.12, the vm `cbt` of the set-up's inventory.
const IP: u8 = 12;
const BLOCK: u64 = 64 * 1024;
const DISK: &str = "/var/lib/libvirt/images/cbt.qcow2";
const RSYNC_COPY: &str = "/srv/rsync/cbt.qcow2";

fn env_or<T: FromStr>(name: &str, default: &str) -> Vec<T> {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_string());
    text.split_whitespace()
        .map(|w| {
            w.parse()
                .unwrap_or_else(|_| panic!("{name}: `{w}` is not a number"))
        })
        .collect()
}

fn one<T: FromStr + Copy>(name: &str, default: &str) -> T {
    env_or::<T>(name, default)[0]
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn cold(on: bool) {
    if on {
        let ok = Command::new("sh")
            .args(["-c", "sync && echo 3 > /proc/sys/vm/drop_caches"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "cannot drop the page cache (needs root); COLD=0 keeps it"
        );
    }
}

/// Free bytes of the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string and a zeroed struct statvfs fills.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs {}", path.display());
    s.f_bavail * s.f_frsize
}

/// A small xorshift generator: random places for the disk's data, not for anything secret.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The line `reprise replicate` prints for the copy of `cbt.qcow2`.
fn disk_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.contains("/cbt.qcow2 →") && l.contains(" blocks changed"))
        .unwrap_or_else(|| panic!("no line for cbt.qcow2 in {stdout}"))
}

fn read_mode(line: &str) -> &str {
    let at = line.find("(read: ").map_or(0, |a| a + 7);
    let rest = &line[at..];
    let end = rest.find([';', ')', ':']).unwrap_or(rest.len());
    &rest[..end]
}

/// `reprise replicate --service cbt ARGS`, which must succeed and read as `mode`: its time
/// and the blocks it says changed.
fn replicate(hv: &Hv, args: &[&str], mode: &str) -> (f64, u64) {
    let mut all = vec!["replicate", "--service", "cbt"];
    all.extend_from_slice(args);
    let t = Instant::now();
    let run = hv.reprise(&all);
    let secs = t.elapsed().as_secs_f64();
    if std::env::var_os("REPRISE_LOG").is_some() {
        eprintln!("[bench] reprise {all:?}, {secs:.2} s:\n{}", run.stderr);
    }
    assert_eq!(run.code, 0, "reprise {all:?}: {}{}", run.stdout, run.stderr);
    let line = disk_line(&run.stdout);
    assert_eq!(
        read_mode(line),
        mode,
        "reprise {all:?} read otherwise: {line}"
    );
    (secs, blocks_changed(line))
}

/// rsync of the guest's image file to hv-pra, over SSH with the set-up's key: its time and
/// the bytes it sent.
fn rsync(hv: &Hv) -> (f64, u64) {
    let keys = hv.main.dir.parent().unwrap().join("keys");
    let ssh = format!(
        "ssh -p 2222 -i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
        keys.join("client").display(),
        keys.join("known_hosts").display()
    );
    let t = Instant::now();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &hv.main.ns,
            "rsync",
            "--inplace",
            "--no-whole-file",
        ])
        .args(["--stats", "-e", &ssh])
        .arg(hv.main.path(DISK))
        .arg(format!("root@{}:{RSYNC_COPY}", hv.pra.address))
        .output()
        .expect("rsync runs");
    let secs = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rsync failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = text
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent: "))
        .map(|n| n.replace(',', "").trim().parse().unwrap_or(0))
        .unwrap_or(0);
    (secs, sent)
}

/// Makes the sparse qcow2 disk of `size_gib` GiB with `data_pct`% random data in 1 MiB runs.
fn make_disk(hv: &Hv, size_gib: u64, data_pct: f64, rng: &mut Rng) {
    hv.main
        .sh(&format!("qemu-img create -q -f qcow2 {DISK} {size_gib}G"));
    let mibs = size_gib * 1024;
    let runs = ((mibs as f64) * data_pct / 100.0) as u64;
    for i in 0..16 {
        hv.main
            .sh(&format!("head -c 1M /dev/urandom > /var/tmp/chunk-{i}"));
    }
    let mut taken = std::collections::HashSet::new();
    let mut cmds = String::new();
    while (taken.len() as u64) < runs.min(mibs - 1) {
        // Past the first MiB, which holds the guest's counter.
        let at = 1 + rng.next() % (mibs - 1);
        if taken.insert(at) {
            cmds.push_str(&format!(
                "write -q -s /var/tmp/chunk-{} {}M 1M\n",
                taken.len() % 16,
                at
            ));
        }
    }
    std::fs::write(hv.main.path("/var/tmp/fill.cmds"), cmds).unwrap();
    hv.main.sh(&format!(
        "qemu-io -f qcow2 {DISK} < /var/tmp/fill.cmds > /dev/null"
    ));
}

struct Row {
    size_gib: u64,
    pct: f64,
    changed: u64,
    bitmap: Vec<f64>,
    scan: Vec<f64>,
    rsync: Vec<f64>,
    blocks: Vec<u64>,
    rsync_sent: Vec<u64>,
    load: Vec<f64>,
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|w| w.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let sizes: Vec<u64> = env_or("SIZES_GIB", "4 16 64");
    let pcts: Vec<f64> = env_or("PCTS", "0.1 1");
    let data_pct: f64 = one("DATA_PCT", "10");
    let reps: usize = one("REPS", "3");
    let cold_cache = one::<u8>("COLD", "1") == 1;
    let min_free: u64 = one("MIN_FREE_GIB", "8");
    let ways = std::env::var("WAYS").unwrap_or_else(|_| "bitmap scan rsync".into());
    let way = |w: &str| ways.split_whitespace().any(|x| x == w);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let mut rows = Vec::new();
    let mut initial = Vec::new();
    for &size in &sizes {
        let need = (3.0 * size as f64 * data_pct / 100.0 * 1.1) as u64 * (1 << 30);
        let free = free_bytes(&std::env::temp_dir());
        assert!(
            free >= need + (min_free << 30),
            "{size} GiB with {data_pct}% data needs about {} GiB of free disk and leaves \
             {min_free} GiB (MIN_FREE_GIB): {} GiB is free",
            need >> 30,
            free >> 30
        );
        eprintln!("[bench] {size} GiB: setting up the hosts and the disk");
        let hv = Hv::up();
        make_disk(&hv, size, data_pct, &mut rng);
        let xml = hv.domain_xml("cbt", DISK, IP, Firmware::Bios);
        std::fs::write(hv.main.path("/var/tmp/cbt.xml"), xml).unwrap();
        hv.main.virsh("define /var/tmp/cbt.xml");
        hv.main.virsh("start cbt");
        hv.wait_healthy(IP, 2);
        eprintln!("[bench] {size} GiB: the first copy");
        cold(cold_cache);
        let (first, _) = replicate(&hv, &[], "scan");
        initial.push((size, first));
        hv.pra.sh("mkdir -p /srv/rsync");
        std::fs::copy(hv.main.path(DISK), hv.pra.path(RSYNC_COPY)).unwrap();
        let blocks = (size << 30) / BLOCK;
        for &pct in &pcts {
            let stride = (100.0 / pct).round() as u64;
            let count = (blocks - 1) / stride;
            // The guest writes about 64 KiB a block under emulation, forks included.
            let within = Duration::from_secs(120 + count / 5);
            let write = || {
                let t = Instant::now();
                hv.write_spread(IP, 1, count, stride, within);
                eprintln!(
                    "[bench] {size} GiB, {pct}%: the guest wrote {count} blocks in {:.1} s",
                    t.elapsed().as_secs_f64()
                );
            };
            // Once untimed: the blocks are written where the disk had none (new clusters
            // at the file's end), and rsync's copy catches up.
            write();
            replicate(&hv, &[], "changed-blocks");
            rsync(&hv);
            let mut row = Row {
                size_gib: size,
                pct,
                changed: count * BLOCK,
                bitmap: Vec::new(),
                scan: Vec::new(),
                rsync: Vec::new(),
                blocks: Vec::new(),
                rsync_sent: Vec::new(),
                load: Vec::new(),
            };
            for rep in 0..reps {
                let mut said = Vec::new();
                if way("bitmap") {
                    write();
                    cold(cold_cache);
                    let (t, b) = replicate(&hv, &[], "changed-blocks");
                    row.bitmap.push(t);
                    row.blocks.push(b);
                    said.push(format!("bitmap {t:.2} s"));
                }
                if way("rsync") {
                    cold(cold_cache);
                    let (t, sent) = rsync(&hv);
                    row.rsync.push(t);
                    row.rsync_sent.push(sent);
                    said.push(format!("rsync {t:.2} s"));
                }
                if way("scan") {
                    write();
                    cold(cold_cache);
                    let (t, _) = replicate(&hv, &["--scan"], "scan");
                    row.scan.push(t);
                    said.push(format!("scan {t:.2} s"));
                }
                row.load.push(load_average());
                eprintln!(
                    "[bench] {size} GiB, {pct}%, run {}: {}",
                    rep + 1,
                    said.join(", ")
                );
            }
            rows.push(row);
        }
        drop(hv);
    }
    print_tables(&rows, &initial, data_pct, reps);
}

fn print_tables(rows: &[Row], initial: &[(u64, f64)], data_pct: f64, reps: usize) {
    println!(
        "\nA running libvirt guest's disk, replicated end to end (relayed), {data_pct}% of it \
         data, cold page cache, medians of {reps}:\n"
    );
    println!(
        "| disk, changed | changed bytes | dirty bitmap | scan (`--scan`) | rsync `--inplace --no-whole-file` | blocks sent (bitmap) | rsync bytes sent | load |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let (b, s, y) = (median(&r.bitmap), median(&r.scan), median(&r.rsync));
        let blocks: Vec<f64> = r.blocks.iter().map(|&n| n as f64).collect();
        let sent: Vec<f64> = r.rsync_sent.iter().map(|&n| n as f64).collect();
        // A way not timed (`WAYS`) is said so, not given as a figure.
        let or_not = |t: f64, text: String| match t.is_nan() {
            true => "not timed".to_string(),
            false => text,
        };
        println!(
            "| {} GiB, {}% | {:.1} MB | {} | {} | {} | {} | {} | {:.1} |",
            r.size_gib,
            r.pct,
            r.changed as f64 / 1e6,
            or_not(b, format!("{b:.2} s")),
            or_not(s, format!("{s:.2} s ({:.1} × the bitmap)", s / b)),
            or_not(y, format!("{y:.2} s ({:.1} ×)", y / b)),
            or_not(
                b,
                format!(
                    "{} ({:.3} × the blocks written)",
                    median(&blocks),
                    median(&blocks) * BLOCK as f64 / r.changed as f64
                )
            ),
            or_not(
                y,
                format!(
                    "{:.1} MB ({:.2} ×)",
                    median(&sent) / 1e6,
                    median(&sent) / r.changed as f64
                )
            ),
            median(&r.load)
        );
    }
    println!("\nFirst copies (every block read, cold cache):\n");
    for (size, t) in initial {
        println!("- {size} GiB: {t:.1} s");
    }
    println!("\nHow the bitmap path's time grows with the size (against the smallest):\n");
    let smallest = rows.iter().map(|r| r.size_gib).min().unwrap_or(0);
    for r in rows.iter().filter(|r| r.size_gib != smallest) {
        if let Some(base) = rows
            .iter()
            .find(|b| b.size_gib == smallest && b.pct == r.pct)
        {
            println!(
                "- {}%: {} GiB takes {:.2} × the time of {} GiB ({:.1} × the changed bytes)",
                r.pct,
                r.size_gib,
                median(&r.bitmap) / median(&base.bitmap),
                smallest,
                r.changed as f64 / base.changed as f64
            );
        }
    }
}
