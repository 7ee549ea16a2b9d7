//! Load, validate and plan a generated inventory of 10,000 services and 50,000 steps.
//!
//! `cargo bench --bench plan` writes the inventory and runbooks as TOML files to a temporary
//! folder (so that reading files is measured too), then 5 times: `Sources::read`, `plan::validate::load`
//! (which plans every mode to validate it) and `plan::build` for the failover. It prints the
//! median and minimum of each stage and of the whole, and the peak resident memory.
//!
//! `cargo bench --bench plan -- N` runs N times instead of 5; `REPRISE_BENCH_SERVICES` changes
//! the number of services.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reprise::plan::{self, PlanOptions};
use reprise::runbook::Mode;
use reprise::sources::Sources;

const SERVICES: usize = 10_000;
const STEPS_PER_SERVICE: usize = 5;
const SERVICES_PER_FILE: usize = 500;
const TARGET_SECS: f64 = 1.0;
const TARGET_MIB: f64 = 200.0;

/// The system allocator, counting live heap bytes and their high-water mark, to tell which
/// stage holds the memory (RSS alone does not drop when memory is freed).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Live heap now, and the high-water mark since the last call.
fn heap() -> (f64, f64) {
    let live = LIVE.load(Ordering::Relaxed);
    (mib(live), mib(PEAK.swap(live, Ordering::Relaxed)))
}

/// A small deterministic generator (xorshift), so that every run plans the same inventory.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const KINDS: &[&str] = &[
    "application",
    "database",
    "directory",
    "file",
    "print",
    "network",
    "storage",
];

/// `(file name, text)` of generated files.
type Files = Vec<(String, String)>;

/// `(inventory files, runbook files)`.
fn generate(services: usize) -> (Files, Files) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut inventory = vec![(
        "sites.toml".to_string(),
        r#"[sites.paris]
description = "Main server room"
role = "primary"

[sites.pra]
description = "Recovery site"
role = "recovery"

[hosts.hv-main]
address = "hv-main.paris.example"
user = "reprise"
site = "paris"
role = "hypervisor"
[hosts.hv-main.vars]
images_dir = "/var/lib/libvirt/images"

[hosts.hv-pra]
address = "hv-pra.pra.example"
user = "reprise"
site = "pra"
role = "hypervisor"
[hosts.hv-pra.vars]
images_dir = "/srv/replicas"
overlays_dir = "/srv/overlays"

[hosts.fw-pra]
address = "fw-pra.pra.example"
site = "pra"
role = "firewall"
[hosts.fw-pra.vars]
rules_file = "/etc/fw/rules.v4"
token = { env = "FW_TOKEN" }

[hosts.app-pra]
address = "app-pra.pra.example"
site = "pra"
role = "app-server"

[hosts.app-main]
address = "app-main.paris.example"
site = "paris"
role = "app-server"
"#
        .to_string(),
    )];
    let mut runbooks = Vec::new();
    for file in 0..services.div_ceil(SERVICES_PER_FILE) {
        let mut inv = String::new();
        let mut books = String::new();
        for i in file * SERVICES_PER_FILE..((file + 1) * SERVICES_PER_FILE).min(services) {
            let id = format!("svc-{i:05}");
            // Dependencies on 0..4 earlier services, mostly close by, sometimes far.
            let mut deps = Vec::new();
            if i > 0 {
                for _ in 0..rng.below(4) {
                    let back = if rng.below(4) == 0 {
                        1 + rng.below(i)
                    } else {
                        1 + rng.below(i.min(20))
                    };
                    let d = format!("\"svc-{:05}\"", i - back);
                    if !deps.contains(&d) {
                        deps.push(d);
                    }
                }
            }
            // Two services in three live on a vm, the others on a host.
            let on_vm = i % 3 != 2;
            let _ = write!(
                inv,
                "[services.{id}]\ndescription = \"Generated service {i}\"\nkind = \"{}\"\nowner = \"Team {}\"\nrto = \"{}h\"\nrpo = \"15m\"\ndepends_on = [{}]\n",
                KINDS[i % KINDS.len()],
                i % 17,
                4 + i % 20,
                deps.join(", "),
            );
            if on_vm {
                let _ = write!(
                    inv,
                    "vm = \"{id}\"\n\n[vms.{id}]\ndriver = \"libvirt\"\nprimary = \"hv-main\"\nrecovery = \"hv-pra\"\ndisks = [\"{id}-system.qcow2\", \"{id}-data.qcow2\"]\naddress = \"{id}.paris.example\"\nrecovery_address = \"{id}.pra.example\"\n\n"
                );
            } else {
                inv.push_str("host = \"app-pra\"\n\n");
            }
            // Five failover steps: vm services stop the primary copy, start the recovery one
            // and check it; host services run commands and check them.
            let steps: [String; STEPS_PER_SERVICE] = if on_vm {
                [
                    "kind = \"vm\"\naction = \"stop\"\non = \"primary\"\nneeds_primary = true\nexpected = \"2m\"".to_string(),
                    "kind = \"vm\"\naction = \"start\"\nexpected = \"1m\"".to_string(),
                    format!("kind = \"check\"\nprobe = \"tcp\"\nport = {}\ntimeout = \"5m\"\nexpected = \"30s\"", 1000 + i % 9000),
                    "kind = \"exec\"\nhost = \"fw-pra\"\nrun = \"curl -fsS -H 'X-Token: {{ host.token | raw }}' https://127.0.0.1/allow/{{ service.id }}\"\nverify = \"iptables -S FORWARD | grep -q {{ service.id }}\"\nundo = \"iptables-restore < {{ host.rules_file }}\"\ntimeout = \"2m\"\nretries = 2\nidempotent = true\nexpected = \"20s\"".to_string(),
                    "kind = \"check\"\nprobe = \"http\"\nurl = \"http://{{ vm.address }}:8080/health\"\nstatus = 200\nexpected = \"1m\"".to_string(),
                ]
            } else {
                [
                    "kind = \"exec\"\nrun = \"systemctl start {{ service.id }}\"\nverify = \"systemctl is-active {{ service.id }}\"\ntimeout = \"3m\"\nexpected = \"1m\"".to_string(),
                    "kind = \"check\"\nprobe = \"command\"\nrun = \"systemctl is-active {{ service.id }}\"\nexpected = \"10s\"".to_string(),
                    "kind = \"exec\"\nhost = \"app-main\"\nrun = \"systemctl stop {{ service.id }}\"\nneeds_primary = true\nexpected = \"30s\"".to_string(),
                    "kind = \"check\"\nprobe = \"tcp\"\nport = 443\nexpected = \"10s\"".to_string(),
                    "kind = \"exec\"\nrun = \"logger reprise {{ run.id }} {{ run.mode }} {{ host.address }}\"\nexpected = \"5s\"".to_string(),
                ]
            };
            for (k, body) in steps.iter().enumerate() {
                let _ = write!(
                    books,
                    "[[{id}.failover]]\nid = \"step-{k}\"\ndescription = \"Step {k} of {id}\"\n{body}\n\n"
                );
            }
        }
        inventory.push((format!("services-{file:03}.toml"), inv));
        runbooks.push((format!("failover-{file:03}.toml"), books));
    }
    (inventory, runbooks)
}

fn write_files(dir: &Path, files: &[(String, String)]) -> usize {
    std::fs::create_dir_all(dir).expect("create the folder");
    let mut bytes = 0;
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write a generated file");
        bytes += text.len();
    }
    bytes
}

/// Peak resident memory so far (`VmHWM`), in MiB.
fn peak_rss_mib() -> Option<f64> {
    status_mib("VmHWM:")
}

fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; a plain number is the number of runs.
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5)
        .max(1);
    let services: usize = std::env::var("REPRISE_BENCH_SERVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SERVICES);

    let tmp = tempfile::tempdir().expect("a temporary folder");
    let (inv_dir, books_dir) = (tmp.path().join("inventory"), tmp.path().join("runbooks"));
    let (inventory, runbooks) = generate(services);
    let bytes = write_files(&inv_dir, &inventory) + write_files(&books_dir, &runbooks);
    drop((inventory, runbooks));
    let rss_before = peak_rss_mib().unwrap_or(f64::NAN);
    println!(
        "generated {services} services / {} steps in {} files ({:.1} MiB of TOML); peak RSS so far {rss_before:.0} MiB",
        services * STEPS_PER_SERVICE,
        std::fs::read_dir(&inv_dir).unwrap().count()
            + std::fs::read_dir(&books_dir).unwrap().count(),
        bytes as f64 / (1024.0 * 1024.0),
    );

    let stages = [
        "Sources::read",
        "plan::validate::load",
        "plan::build failover",
        "total",
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); stages.len()];
    let mut planned = 0;
    for run in 0..runs {
        let mut heaps = Vec::new();
        heap();
        let t0 = Instant::now();
        let sources = Sources::read(&inv_dir, &books_dir).expect("the generated files read");
        let t1 = Instant::now();
        heaps.push(heap());
        let (model, _warnings) = match plan::validate::load(sources) {
            Ok(m) => m,
            Err(report) => panic!("the generated inventory is invalid:\n{report}"),
        };
        let t2 = Instant::now();
        heaps.push(heap());
        let plan = plan::build(&model, &PlanOptions::new(Mode::Failover))
            .unwrap_or_else(|e| panic!("the failover does not plan: {e:?}"));
        let t3 = Instant::now();
        heaps.push(heap());
        planned = plan.steps.len();
        for (v, d) in times.iter_mut().zip([t1 - t0, t2 - t1, t3 - t2, t3 - t0]) {
            v.push(d);
        }
        println!(
            "  run {}: read {:.3} s, load {:.3} s, plan {:.3} s, total {:.3} s",
            run + 1,
            secs(t1 - t0),
            secs(t2 - t1),
            secs(t3 - t2),
            secs(t3 - t0)
        );
        if run == 0 {
            println!(
                "         heap (live / peak during the stage): after read {:.0} / {:.0} MiB, after load {:.0} / {:.0} MiB, after plan {:.0} / {:.0} MiB",
                heaps[0].0, heaps[0].1, heaps[1].0, heaps[1].1, heaps[2].0, heaps[2].1
            );
        }
        drop(plan);
        drop(model);
    }
    let peak = peak_rss_mib().unwrap_or(f64::NAN);

    println!();
    for (name, v) in stages.iter().zip(&times) {
        println!(
            "  {name:<24} median {:>7.3} s   min {:>7.3} s",
            secs(median(v)),
            secs(*v.iter().min().unwrap())
        );
    }
    let total = &times[3];
    let (med, min) = (secs(median(total)), secs(*total.iter().min().unwrap()));
    println!(
        "load+validate+plan {services} services / {} steps: median {med:.2} s (min {min:.2} s), peak RSS {peak:.0} MiB (targets: < {TARGET_SECS:.0} s, < {TARGET_MIB:.0} MiB)",
        services * STEPS_PER_SERVICE,
    );
    println!(
        "  failover plan: {planned} steps; {}",
        match (med < TARGET_SECS, peak < TARGET_MIB) {
            (true, true) => "within both targets",
            (false, true) => "OVER the time target",
            (true, false) => "OVER the memory target",
            (false, false) => "OVER both targets",
        }
    );
}
