//! Load + validate + plan a generated inventory of 10,000 services and 50,000 steps.
//!
//! `cargo bench --bench plan` prints the median and best of 5 runs per stage and the peak
//! resident memory (targets: under 1 s and under 200 MiB on the CI machine).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use reprise::model::Model;
use reprise::plan::{self, PlanOptions};
use reprise::runbook::Mode;
use reprise::sources::Sources;

const SERVICES: usize = 10_000;
const STEPS_PER_SERVICE: usize = 5;
const FILES: usize = 20;

fn generate(dir: &Path) {
    let inv = dir.join("inventory");
    let books = dir.join("runbooks");
    std::fs::create_dir_all(&inv).unwrap();
    std::fs::create_dir_all(&books).unwrap();
    std::fs::write(
        inv.join("sites.toml"),
        r#"
[sites.main]
role = "primary"
[sites.pra]
role = "recovery"
[hosts.hv1]
address = "hv1.bench.example"
site = "main"
role = "hypervisor"
[hosts.hv1.vars]
images_dir = "/var/lib/libvirt/images"
[hosts.hv2]
address = "hv2.bench.example"
site = "pra"
role = "hypervisor"
[hosts.hv2.vars]
images_dir = "/var/lib/libvirt/images"
overlays_dir = "/var/lib/libvirt/drill"
token = { env = "BENCH_TOKEN" }
"#,
    )
    .unwrap();
    let per_file = SERVICES / FILES;
    for f in 0..FILES {
        let mut services = String::new();
        let mut runbooks = String::new();
        for i in f * per_file..(f + 1) * per_file {
            // A few dependencies on earlier services, near and far.
            let mut deps = Vec::new();
            for back in [1, 7, 131] {
                if i >= back && (i + back) % 3 != 0 {
                    deps.push(format!("\"s{}\"", i - back));
                }
            }
            let _ = write!(
                services,
                "\n[services.s{i}]\nkind = \"application\"\nowner = \"bench\"\nrto = \"4h\"\nrpo = \"15m\"\n\
                 depends_on = [{}]\nvm = \"v{i}\"\n\n[vms.v{i}]\ndriver = \"libvirt\"\nprimary = \"hv1\"\n\
                 recovery = \"hv2\"\ndisks = [\"v{i}-system.qcow2\"]\naddress = \"v{i}.bench.example\"\n",
                deps.join(", ")
            );
            let steps = [
                "kind = \"replicate\"\nvm = \"v{i}\"\nneeds_primary = true\nexpected = \"5m\"".to_string(),
                "kind = \"vm\"\naction = \"stop\"\non = \"primary\"\nneeds_primary = true".to_string(),
                "kind = \"vm\"\naction = \"start\"".to_string(),
                "kind = \"exec\"\nhost = \"hv2\"\nrun = \"curl -H 'X: {{ host.token }}' http://{{ vm.address }}/warm && echo {{ service.id }} {{ run.id }}\"\nverify = \"test -e {{ host.images_dir }}/{{ vm.name }}.ok\"\ntimeout = \"2m\"\nretries = 1".to_string(),
                "kind = \"check\"\nprobe = \"tcp\"\nport = 443\ntimeout = \"5m\"".to_string(),
            ];
            for (k, body) in steps.iter().take(STEPS_PER_SERVICE).enumerate() {
                let _ = write!(
                    runbooks,
                    "\n[[s{i}.failover]]\nid = \"k{k}\"\n{}\n",
                    body.replace("{i}", &i.to_string())
                );
            }
        }
        std::fs::write(inv.join(format!("services-{f:02}.toml")), services).unwrap();
        std::fs::write(books.join(format!("runbooks-{f:02}.toml")), runbooks).unwrap();
    }
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let dir = std::env::temp_dir().join(format!("reprise-bench-{}", std::process::id()));
    generate(&dir);
    let (mut read, mut load, mut planned, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut steps = 0;
    for _ in 0..5 {
        let t0 = Instant::now();
        let sources = Sources::read(&dir.join("inventory"), &dir.join("runbooks"))
            .expect("generated files read");
        let t1 = Instant::now();
        let (model, _) = Model::load(sources).expect("the generated inventory is valid");
        let t2 = Instant::now();
        let plan = plan::build(&model, &PlanOptions::new(Mode::Failover)).expect("it plans");
        let t3 = Instant::now();
        steps = plan.steps.len();
        read.push(t1 - t0);
        load.push(t2 - t1);
        planned.push(t3 - t2);
        total.push(t3 - t0);
        drop(plan);
        drop(model);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("reprise plan benchmark: {SERVICES} services, {steps} planned steps, 5 runs");
    for (name, v) in [
        ("read files", &read),
        ("load + validate (all modes)", &load),
        ("plan failover", &planned),
    ] {
        println!(
            "  {name:<28} median {:>8.1} ms   best {:>8.1} ms",
            ms(median(v.clone())),
            ms(*v.iter().min().unwrap())
        );
    }
    println!(
        "load+validate+plan {SERVICES} services / {steps} steps: median {:.2} s (best {:.2} s), peak RSS {:.0} MiB (targets: < 1 s, < 200 MiB)",
        median(total.clone()).as_secs_f64(),
        total.iter().min().unwrap().as_secs_f64(),
        peak_rss_mib()
    );
}
