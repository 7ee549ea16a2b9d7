//! Property tests of the loading and planning pipeline, on generated inventories:
//!
//! - a random acyclic inventory plans, in every mode, with every step after every step of what
//!   its service (transitively) depends on, a consistent timeline and a critical path that is a
//!   chain of waits ending at the plan's total;
//! - a random inventory with a dependency cycle is rejected with the cycle written as a path;
//! - no text, however broken, makes loading (or rendering its report) panic.
//!
//! The generated inventories follow the site rules, so that every one of them must load.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::sample::Index;
use reprise::diagnostic::Report;
use reprise::model::Model;
use reprise::plan::{self, Plan, PlanOptions};
use reprise::runbook::{Mode, Phase};
use reprise::sources::Sources;

/// Cases per property; `PROPTEST_CASES=N` runs more.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64)
}

// ---------------------------------------------------------------------------------------------
// Generated inventories

/// One generated step; the mode it lands in decides its host (see [`step_host`]).
#[derive(Debug, Clone)]
struct GenStep {
    /// 0: exec, 1: tcp check, 2: command check, 3: http check.
    kind: u8,
    host: Index,
    /// Where the mode leaves a choice (failover, failback): the primary site.
    on_primary: bool,
    /// Leave `host` out when it is the service's own host.
    default_host: bool,
    expected: Option<u32>,
    timeout: Option<u32>,
    needs_primary: bool,
    /// Drills only.
    cleanup: bool,
}

#[derive(Debug, Clone)]
struct GenService {
    deps: Vec<usize>,
    /// `(on the primary site, which host)`.
    host: Option<(bool, Index)>,
    /// One entry per mode of [`Mode::ALL`]; `None`: no runbook for that mode.
    books: [Option<Vec<GenStep>>; 4],
}

#[derive(Debug, Clone)]
struct GenInventory {
    primary_hosts: usize,
    recovery_hosts: usize,
    services: Vec<GenService>,
    /// The order in which services are written (dependencies are not always above).
    file_order: Vec<usize>,
    /// Runbook files: services are spread over this many files.
    book_files: usize,
}

fn gen_step() -> impl Strategy<Value = GenStep> {
    (
        0u8..4,
        any::<Index>(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(1u32..7200),
        proptest::option::of(1u32..3600),
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.25),
    )
        .prop_map(
            |(kind, host, on_primary, default_host, expected, timeout, needs_primary, cleanup)| {
                GenStep {
                    kind,
                    host,
                    on_primary,
                    default_host,
                    expected,
                    timeout,
                    needs_primary,
                    cleanup,
                }
            },
        )
}

fn gen_book() -> impl Strategy<Value = Option<Vec<GenStep>>> {
    proptest::option::weighted(0.8, proptest::collection::vec(gen_step(), 0..4))
}

/// A service before its dependencies are resolved: `(dependencies, host, runbooks)`.
type RawService = (Vec<Index>, Option<(bool, Index)>, [Option<Vec<GenStep>>; 4]);

fn gen_service() -> impl Strategy<Value = RawService> {
    (
        proptest::collection::vec(any::<Index>(), 0..4),
        proptest::option::of((any::<bool>(), any::<Index>())),
        [gen_book(), gen_book(), gen_book(), gen_book()],
    )
}

/// An acyclic inventory of 1 to `max` services, each depending only on lower-numbered ones.
fn gen_inventory(max: usize) -> impl Strategy<Value = GenInventory> {
    (1..=max)
        .prop_flat_map(|n| {
            (
                1usize..4,
                1usize..4,
                proptest::collection::vec(gen_service(), n),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                1usize..4,
            )
        })
        .prop_map(
            |(primary_hosts, recovery_hosts, raw, file_order, book_files)| {
                let mut services: Vec<GenService> = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, (deps, host, books))| {
                        let deps: BTreeSet<usize> = if i == 0 {
                            BTreeSet::new()
                        } else {
                            deps.iter().map(|d| d.index(i)).collect()
                        };
                        GenService {
                            deps: deps.into_iter().collect(),
                            host,
                            books,
                        }
                    })
                    .collect();
                // A service with a runbook for a mode needs one for each of its dependencies.
                for i in (0..services.len()).rev() {
                    for m in 0..4 {
                        if services[i].books[m].is_some() {
                            for d in services[i].deps.clone() {
                                services[d].books[m].get_or_insert_with(Vec::new);
                            }
                        }
                    }
                }
                GenInventory {
                    primary_hosts,
                    recovery_hosts,
                    services,
                    file_order,
                    book_files,
                }
            },
        )
}

fn host_name(primary: bool, i: usize) -> String {
    format!("{}{i}", if primary { "p" } else { "r" })
}

fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

impl GenInventory {
    fn host(&self, primary: bool, index: &Index) -> String {
        let n = if primary {
            self.primary_hosts
        } else {
            self.recovery_hosts
        };
        host_name(primary, index.index(n))
    }

    fn service_host(&self, s: usize) -> Option<String> {
        let (primary, index) = self.services[s].host.as_ref()?;
        Some(self.host(*primary, index))
    }

    /// The host a step runs on in `mode`, and whether it needs the primary site: a drill stays
    /// on the recovery site, a restore on the primary site, a failover step on the primary site
    /// needs it.
    fn step_host(&self, mode: Mode, step: &GenStep) -> (String, bool) {
        let primary = match mode {
            Mode::Drill => false,
            Mode::Restore => true,
            Mode::Failover | Mode::Failback => step.on_primary,
        };
        let needs_primary = step.needs_primary || (mode == Mode::Failover && primary);
        (self.host(primary, &step.host), needs_primary)
    }

    fn is_cleanup(mode: Mode, step: &GenStep) -> bool {
        mode == Mode::Drill && step.cleanup
    }

    /// `(path, text)` of the inventory files.
    fn inventory_files(&self, back_edges: &[(usize, usize)]) -> Vec<(String, String)> {
        let mut sites =
            String::from("[sites.main]\nrole = \"primary\"\n\n[sites.pra]\nrole = \"recovery\"\n");
        for (primary, n) in [(true, self.primary_hosts), (false, self.recovery_hosts)] {
            for i in 0..n {
                let name = host_name(primary, i);
                let _ = write!(
                    sites,
                    "\n[hosts.{name}]\naddress = \"{name}.test.example\"\nsite = \"{}\"\nrole = \"app-server\"\n",
                    if primary { "main" } else { "pra" }
                );
            }
        }
        let mut services = String::new();
        for &s in &self.file_order {
            let mut deps: Vec<usize> = self.services[s].deps.clone();
            deps.extend(back_edges.iter().filter(|e| e.0 == s).map(|e| e.1));
            let deps: Vec<String> = deps
                .iter()
                .map(|&d| format!("\"{}\"", service_name(d)))
                .collect();
            let _ = write!(
                services,
                "\n[services.{}]\nkind = \"application\"\nrto = \"1d\"\ndepends_on = [{}]\n",
                service_name(s),
                deps.join(", ")
            );
            if let Some(h) = self.service_host(s) {
                let _ = writeln!(services, "host = \"{h}\"");
            }
        }
        vec![
            ("inventory/sites.toml".to_string(), sites),
            ("inventory/services.toml".to_string(), services),
        ]
    }

    /// `(path, text)` of the runbook files.
    fn runbook_files(&self) -> Vec<(String, String)> {
        // `svc.mode = []` keys must come before the first [[table]] of a file.
        let mut files = vec![(String::new(), String::new()); self.book_files];
        for (n, &s) in self.file_order.iter().enumerate() {
            let (plain, tables) = &mut files[n % self.book_files];
            let sid = service_name(s);
            let own_host = self.service_host(s);
            for (m, mode) in Mode::ALL.into_iter().enumerate() {
                let Some(steps) = &self.services[s].books[m] else {
                    continue;
                };
                if steps.is_empty() {
                    let _ = writeln!(plain, "{sid}.{mode} = []");
                }
                for (k, step) in steps.iter().enumerate() {
                    let _ = write!(tables, "\n[[{sid}.{mode}]]\nid = \"st{k}\"\n");
                    let (host, needs_primary) = self.step_host(mode, step);
                    let host_line = if step.default_host && own_host.as_deref() == Some(&host) {
                        String::new()
                    } else {
                        format!("host = \"{host}\"\n")
                    };
                    match step.kind {
                        0 => {
                            let _ = write!(
                                tables,
                                "kind = \"exec\"\n{host_line}run = \"echo {{{{ service.id }}}} {{{{ host.address }}}} {{{{ run.mode }}}}\"\n"
                            );
                        }
                        1 => {
                            // Without an address, the service's host is the target (a
                            // drill's never is: it may be production's).
                            let _ =
                                write!(tables, "kind = \"check\"\nprobe = \"tcp\"\nport = 443\n");
                            if own_host.is_none() || !step.default_host || mode == Mode::Drill {
                                let _ = writeln!(tables, "address = \"10.0.{s}.{k}\"");
                            }
                        }
                        2 => {
                            let _ = write!(
                                tables,
                                "kind = \"check\"\nprobe = \"command\"\n{host_line}run = \"test -e /run/{{{{ run.id }}}}\"\n"
                            );
                        }
                        _ => {
                            let _ = write!(
                                tables,
                                "kind = \"check\"\nprobe = \"http\"\nurl = \"http://10.0.{s}.{k}:8080/{{{{ service.id }}}}\"\n"
                            );
                        }
                    }
                    if let Some(e) = step.expected {
                        let _ = writeln!(tables, "expected = \"{e}s\"");
                    }
                    if let Some(t) = step.timeout {
                        let _ = writeln!(tables, "timeout = \"{t}s\"");
                    }
                    if needs_primary {
                        let _ = writeln!(tables, "needs_primary = true");
                    }
                    if Self::is_cleanup(mode, step) {
                        let _ = writeln!(tables, "phase = \"cleanup\"");
                    }
                }
            }
        }
        files
            .into_iter()
            .enumerate()
            .map(|(i, (plain, tables))| (format!("runbooks/book-{i}.toml"), plain + &tables))
            .collect()
    }

    fn sources(&self, back_edges: &[(usize, usize)]) -> Sources {
        Sources::from_texts(self.inventory_files(back_edges), self.runbook_files())
    }

    /// Every service's transitive dependencies (the generated graph is acyclic).
    fn needs(&self) -> Vec<BTreeSet<usize>> {
        let mut all: Vec<BTreeSet<usize>> = Vec::new();
        for s in &self.services {
            let mut set = BTreeSet::new();
            for &d in &s.deps {
                set.insert(d);
                set.extend(all[d].iter().copied());
            }
            all.push(set);
        }
        all
    }

    /// The text of all files, to show with a failure.
    fn dump(&self, back_edges: &[(usize, usize)]) -> String {
        let mut out = String::new();
        for (path, text) in self
            .inventory_files(back_edges)
            .into_iter()
            .chain(self.runbook_files())
        {
            let _ = write!(out, "----- {path}\n{text}\n");
        }
        out
    }
}

fn service_index(id: &str) -> usize {
    id.strip_prefix("svc-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected service id {id}"))
}

// ---------------------------------------------------------------------------------------------
// Checks of one plan

/// Every step's transitive predecessors through `after`, checking on the way that `after` only
/// names earlier steps and that the timeline respects it.
fn predecessors(plan: &Plan) -> Result<Vec<Vec<bool>>, TestCaseError> {
    let index: HashMap<&str, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    prop_assert_eq!(index.len(), plan.steps.len(), "step ids are unique");
    let n = plan.steps.len();
    let mut before: Vec<Vec<bool>> = Vec::with_capacity(n);
    for (i, step) in plan.steps.iter().enumerate() {
        prop_assert_eq!(
            step.est_finish_s,
            step.est_start_s + step.expected_s,
            "{} finishes its expected duration after its start",
            &step.id
        );
        let mut set = vec![false; n];
        for a in &step.after {
            let Some(&j) = index.get(a.as_str()) else {
                return Err(TestCaseError::fail(format!(
                    "{} waits for {a}, which is not in the plan",
                    step.id
                )));
            };
            prop_assert!(j < i, "{} waits for {}, a later step", &step.id, a);
            prop_assert!(
                step.est_start_s >= plan.steps[j].est_finish_s,
                "{} starts at {} before {} finishes at {}",
                &step.id,
                step.est_start_s,
                a,
                plan.steps[j].est_finish_s
            );
            set[j] = true;
            for (k, &b) in before[j].iter().enumerate() {
                set[k] |= b;
            }
        }
        before.push(set);
    }
    Ok(before)
}

fn check_plan(
    g: &GenInventory,
    plan: &Plan,
    opts: &PlanOptions,
    needs: &[BTreeSet<usize>],
) -> Result<(), TestCaseError> {
    let m = Mode::ALL.iter().position(|&x| x == opts.mode).unwrap();
    let before = predecessors(plan)?;

    // Which services take part: the requested ones (or all with a runbook), and what they
    // depend on unless `only`.
    let roots: BTreeSet<usize> = if opts.services.is_empty() {
        (0..g.services.len())
            .filter(|&s| g.services[s].books[m].is_some())
            .collect()
    } else {
        opts.services.iter().map(|s| service_index(s)).collect()
    };
    let members: BTreeSet<usize> = if opts.only {
        roots.clone()
    } else {
        roots
            .iter()
            .flat_map(|&r| needs[r].iter().copied().chain([r]))
            .collect()
    };
    let planned: BTreeSet<usize> = plan.services.iter().map(|s| service_index(&s.id)).collect();
    prop_assert_eq!(&planned, &members, "the services of the plan");
    // What each service needs among the members. With `only`, a dependency left out is assumed
    // running, but cannot run while what it needs is recovered: the plan orders through it.
    let needs: Vec<BTreeSet<usize>> = needs
        .iter()
        .map(|n| n.iter().copied().filter(|d| members.contains(d)).collect())
        .collect();

    // Exactly the generated steps are planned, each service's in the order written.
    let mut expected_ids = BTreeSet::new();
    let mut left_out = BTreeSet::new();
    for &s in &members {
        let steps = g.services[s].books[m].as_ref().unwrap();
        let mut previous: Option<String> = None;
        for (k, step) in steps.iter().enumerate() {
            let id = format!("{}/st{k}", service_name(s));
            let (_, needs_primary) = g.step_host(opts.mode, step);
            if opts.emergency && needs_primary {
                left_out.insert(id);
                continue;
            }
            expected_ids.insert(id.clone());
            // Steps of a service, phase by phase, in the order written.
            if !GenInventory::is_cleanup(opts.mode, step) {
                if let Some(p) = &previous {
                    let (i, j) = (position(plan, &id), position(plan, p));
                    prop_assert!(before[i][j], "{} does not wait for {}", id, p);
                }
                previous = Some(id);
            }
        }
    }
    let got: BTreeSet<String> = plan.steps.iter().map(|s| s.id.clone()).collect();
    prop_assert_eq!(&got, &expected_ids, "the steps of the plan");
    let got_left_out: BTreeSet<String> = plan.left_out.iter().map(|l| l.id.clone()).collect();
    prop_assert_eq!(&got_left_out, &left_out, "the steps left out");

    // Every main step waits, transitively, for every main step of every service its service
    // depends on (transitively) in the plan; every cleanup step waits for every main step, and
    // for every cleanup step of the services that depend on its service.
    for (i, step) in plan.steps.iter().enumerate() {
        let s = service_index(&step.service);
        for (j, other) in plan.steps.iter().enumerate() {
            let o = service_index(&other.service);
            let must_wait = match (step.phase, other.phase) {
                (Phase::Main, Phase::Main) => needs[s].contains(&o),
                (Phase::Cleanup, Phase::Main) => true,
                (Phase::Cleanup, Phase::Cleanup) => needs[o].contains(&s),
                (Phase::Main, Phase::Cleanup) => false,
            };
            if must_wait {
                prop_assert!(
                    before[i][j],
                    "{} ({:?}) does not wait for {} ({:?})",
                    &step.id,
                    step.phase,
                    &other.id,
                    other.phase
                );
            }
            if (step.phase, other.phase) == (Phase::Main, Phase::Cleanup) {
                prop_assert!(
                    !before[i][j],
                    "main step {} waits for cleanup {}",
                    &step.id,
                    &other.id
                );
            }
        }
    }

    // The timeline: the total is the last finish; the critical path is a chain of waits from
    // a step that waits for nothing to one that finishes last.
    let total = plan.steps.iter().map(|s| s.est_finish_s).max().unwrap_or(0);
    prop_assert_eq!(plan.estimate.total.secs(), total);
    let path = &plan.estimate.critical_path;
    prop_assert_eq!(path.is_empty(), plan.steps.is_empty());
    if let (Some(first), Some(last)) = (path.first(), path.last()) {
        prop_assert!(plan.steps[position(plan, first)].after.is_empty());
        prop_assert_eq!(plan.steps[position(plan, last)].est_finish_s, total);
        for pair in path.windows(2) {
            let next = &plan.steps[position(plan, &pair[1])];
            prop_assert!(
                next.after.contains(&pair[0]),
                "critical path: {} does not wait for {}",
                &pair[1],
                &pair[0]
            );
            prop_assert_eq!(
                next.est_start_s,
                plan.steps[position(plan, &pair[0])].est_finish_s,
                "critical path: {} starts when {} ends",
                &pair[1],
                &pair[0]
            );
        }
    }
    for step in &plan.steps {
        prop_assert_eq!(
            step.critical,
            path.contains(&step.id),
            "{} critical flag",
            &step.id
        );
    }
    // A service is recovered when its last main step is done (or what it depends on is).
    for ps in &plan.services {
        let s = service_index(&ps.id);
        let done = plan
            .steps
            .iter()
            .filter(|st| {
                st.phase == Phase::Main && {
                    let o = service_index(&st.service);
                    o == s || (needs[s].contains(&o) && members.contains(&o))
                }
            })
            .map(|st| st.est_finish_s)
            .max()
            .unwrap_or(0);
        prop_assert_eq!(
            ps.estimated_rto.secs(),
            done,
            "{} is recovered when its last step, or that of what it needs, is done",
            &ps.id
        );
    }
    Ok(())
}

fn position(plan: &Plan, id: &str) -> usize {
    plan.steps
        .iter()
        .position(|s| s.id == id)
        .unwrap_or_else(|| panic!("{id} is not in the plan"))
}

/// The plans a test makes: every mode, the emergency failover, and a selection.
fn variants(g: &GenInventory, pick: &[Index], only: bool) -> Vec<PlanOptions> {
    let mut out: Vec<PlanOptions> = Mode::ALL.iter().map(|&m| PlanOptions::new(m)).collect();
    out.push(PlanOptions {
        emergency: true,
        ..PlanOptions::new(Mode::Failover)
    });
    for (m, mode) in Mode::ALL.into_iter().enumerate() {
        let with_book: Vec<usize> = (0..g.services.len())
            .filter(|&s| g.services[s].books[m].is_some())
            .collect();
        if with_book.is_empty() {
            continue;
        }
        let services: BTreeSet<String> = pick
            .iter()
            .map(|i| service_name(with_book[i.index(with_book.len())]))
            .collect();
        out.push(PlanOptions {
            services: services.into_iter().collect(),
            only,
            ..PlanOptions::new(mode)
        });
    }
    out
}

fn load(sources: Sources) -> Result<Model, Report> {
    reprise::plan::validate::load(sources).map(|(model, _)| model)
}

// ---------------------------------------------------------------------------------------------
// Cycles

/// Back edges that close at least one cycle: a service reached by walking down the
/// dependencies of `from` depends on `from`.
fn back_edges(g: &GenInventory, picks: &[(Index, Vec<Index>)]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let with_deps: Vec<usize> = (0..g.services.len())
        .filter(|&s| !g.services[s].deps.is_empty())
        .collect();
    if with_deps.is_empty() {
        return out;
    }
    for (from, walk) in picks {
        let from = with_deps[from.index(with_deps.len())];
        let mut cur = from;
        for (k, step) in walk.iter().enumerate() {
            let deps = &g.services[cur].deps;
            if deps.is_empty() || (k > 0 && step.index(3) == 0) {
                break;
            }
            cur = deps[step.index(deps.len())];
        }
        if cur != from && !out.contains(&(cur, from)) {
            out.push((cur, from));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The properties

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// (a) Plans of acyclic inventories respect every dependency and have a consistent timeline.
    #[test]
    fn plans_respect_dependencies_and_timeline(
        g in gen_inventory(40),
        pick in proptest::collection::vec(any::<Index>(), 1..4),
        only in any::<bool>(),
    ) {
        let model = match load(g.sources(&[])) {
            Ok(m) => m,
            Err(report) => {
                return Err(TestCaseError::fail(format!(
                    "a valid generated inventory is rejected:\n{}\n{}",
                    report.render(),
                    g.dump(&[])
                )))
            }
        };
        let needs = g.needs();
        for opts in variants(&g, &pick, only) {
            let plan = plan::build(&model, &opts).map_err(|e| {
                TestCaseError::fail(format!("{:?} does not plan: {e:?}\n{}", opts, g.dump(&[])))
            })?;
            check_plan(&g, &plan, &opts, &needs).map_err(|e| {
                TestCaseError::fail(format!(
                    "{e}\noptions: {:?}\nsteps:\n{}\nfiles:\n{}",
                    opts,
                    plan.steps
                        .iter()
                        .map(|s| format!("  {} after {:?} [{}..{}]", s.id, s.after, s.est_start_s, s.est_finish_s))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    g.dump(&[])
                ))
            })?;
        }
    }

    /// (b) A dependency cycle is an error naming the cycle as a path back to where it starts.
    #[test]
    fn cycles_are_reported_as_paths(
        g in gen_inventory(40),
        picks in proptest::collection::vec(
            (any::<Index>(), proptest::collection::vec(any::<Index>(), 1..6)),
            1..4,
        ),
    ) {
        let edges = back_edges(&g, &picks);
        prop_assume!(!edges.is_empty());
        let report = match load(g.sources(&edges)) {
            Ok(_) => {
                return Err(TestCaseError::fail(format!(
                    "an inventory with a cycle loads\n{}",
                    g.dump(&edges)
                )))
            }
            Err(report) => report,
        };
        let mut deps: Vec<BTreeSet<usize>> =
            g.services.iter().map(|s| s.deps.iter().copied().collect()).collect();
        for &(a, b) in &edges {
            deps[a].insert(b);
        }
        let cycles: Vec<&str> = report
            .diagnostics
            .iter()
            .filter_map(|d| d.message.strip_prefix("dependency cycle: "))
            .collect();
        prop_assert!(
            !cycles.is_empty(),
            "no cycle reported:\n{}\n{}",
            report.render(),
            g.dump(&edges)
        );
        for cycle in cycles {
            let names: Vec<&str> = cycle.split(" → ").collect();
            prop_assert!(names.len() >= 3, "cycle `{}` is too short", cycle);
            prop_assert_eq!(names.first(), names.last(), "cycle `{}` does not close", cycle);
            let inner: BTreeSet<&str> = names[1..].iter().copied().collect();
            prop_assert_eq!(inner.len(), names.len() - 1, "cycle `{}` repeats a service", cycle);
            for pair in names.windows(2) {
                prop_assert!(
                    deps[service_index(pair[0])].contains(&service_index(pair[1])),
                    "cycle `{}`: {} does not depend on {}",
                    cycle,
                    pair[0],
                    pair[1]
                );
            }
        }
        // The report renders (it quotes the `depends_on` entries).
        let _ = report.render();
    }

    /// (c) Arbitrary text as an inventory file never makes loading panic.
    #[test]
    fn any_inventory_text_loads_or_fails(text in any_text()) {
        check_no_panic(vec![("inventory/any.toml".to_string(), text)], Vec::new());
    }

    /// (c) Arbitrary text as a runbook file, beside a valid inventory, never panics either.
    #[test]
    fn any_runbook_text_loads_or_fails(text in any_text()) {
        check_no_panic(Doc::render_all(&base_inventory()), vec![("runbooks/any.toml".to_string(), text)]);
    }

    /// (c) Valid files with a few characters changed never make loading panic.
    #[test]
    fn files_with_changed_characters_load_or_fail(
        edits in proptest::collection::vec(
            (any::<bool>(), any::<Index>(), any::<Index>(), "[ -~é→\n\"\\[\\]{}=]{0,3}"),
            1..6,
        ),
    ) {
        let (mut inv, mut books) = (Doc::render_all(&base_inventory()), Doc::render_all(&base_runbooks()));
        for (in_books, file, at, with) in edits {
            let files = if in_books { &mut books } else { &mut inv };
            let n = files.len();
            let text = &mut files[file.index(n)].1;
            // Replace one character (or none, at the end) with the new text.
            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).chain([text.len()]).collect();
            let start = bounds[at.index(bounds.len())];
            let end = bounds.iter().copied().find(|&b| b > start).unwrap_or(start);
            text.replace_range(start..end, &with);
        }
        check_no_panic(inv, books);
    }

    /// (c) Valid files with keys, values and tables changed (still well-formed TOML, mostly),
    /// so that loading and planning meet odd but parseable input: never a panic.
    #[test]
    fn files_with_changed_keys_load_or_fail(edits in proptest::collection::vec(edit(), 1..6)) {
        let (mut inv, mut books) = (base_inventory(), base_runbooks());
        for e in &edits {
            match e {
                Edit::Inventory(e) => e.apply(&mut inv),
                Edit::Runbooks(e) => e.apply(&mut books),
            }
        }
        check_no_panic(Doc::render_all(&inv), Doc::render_all(&books));
    }
}

/// Text that looks like TOML (or not at all).
fn any_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        // Headers, valid and broken.
        "\\[{1,2}(sites|hosts|services|vms|backups|drivers|svc-1|x)(\\.[a-z0-9_é -]{0,8}){0,3}\\]{0,2}",
        // Key = value, with the keys the loader knows.
        (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        "[a-z_.]{1,8} ?= ?(\"[^\"\\n]{0,12}\"|'[^'\\n]{0,12}'|-?[0-9]{1,20}|[0-9.e+-]{1,8}|\"\"\"[^\"]{0,10}\"\"\"|[0-9]{4}-[0-9]{2}-[0-9]{2})",
        "[ -~\\t\\r]{0,30}",
        ".{0,20}",
        Just("#".to_string()),
        Just(String::new()),
    ];
    prop_oneof![
        3 => proptest::collection::vec(line, 0..30).prop_map(|l| l.join("\n")),
        1 => any::<String>(),
        1 => proptest::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

/// Loads, and renders the report: neither may panic.
fn check_no_panic(inventory: Vec<(String, String)>, runbooks: Vec<(String, String)>) {
    match reprise::plan::validate::load(Sources::from_texts(inventory, runbooks)) {
        Ok((model, warnings)) => {
            let _ = model.report(warnings).render();
        }
        Err(report) => {
            let _ = report.render();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Valid files as tables, changed key by key

/// A file as a list of tables: `(header, [(key, value as TOML)])`; the header "" is the top.
#[derive(Debug, Clone)]
struct Doc {
    path: &'static str,
    tables: Vec<(String, Vec<(String, String)>)>,
}

impl Doc {
    fn new(path: &'static str, tables: &[(&str, &[(&str, &str)])]) -> Doc {
        Doc {
            path,
            tables: tables
                .iter()
                .map(|(h, kv)| {
                    (
                        h.to_string(),
                        kv.iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    )
                })
                .collect(),
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (header, entries) in &self.tables {
            if !header.is_empty() {
                let _ = writeln!(out, "\n{header}");
            }
            for (k, v) in entries {
                let _ = writeln!(out, "{k} = {v}");
            }
        }
        out
    }

    fn render_all(docs: &[Doc]) -> Vec<(String, String)> {
        docs.iter()
            .map(|d| (d.path.to_string(), d.render()))
            .collect()
    }
}

fn base_inventory() -> Vec<Doc> {
    vec![
        Doc::new(
            "inventory/hosts.toml",
            &[
                ("[sites.main]", &[("role", "\"primary\"")]),
                ("[sites.pra]", &[("role", "\"recovery\"")]),
                ("[sites.far]", &[("role", "\"remote\"")]),
                (
                    "[hosts.hv1]",
                    &[
                        ("address", "\"hv1.test.example\""),
                        ("site", "\"main\""),
                        ("role", "\"hypervisor\""),
                    ],
                ),
                (
                    "[hosts.hv1.vars]",
                    &[("images_dir", "\"/var/lib/libvirt/images\"")],
                ),
                (
                    "[hosts.hv2]",
                    &[
                        ("address", "\"hv2.test.example\""),
                        ("site", "\"pra\""),
                        ("role", "\"hypervisor\""),
                        ("port", "2222"),
                    ],
                ),
                (
                    "[hosts.hv2.vars]",
                    &[
                        ("images_dir", "\"/srv/replicas\""),
                        ("overlays_dir", "\"/srv/overlays\""),
                        ("token", "{ env = \"TOKEN\" }"),
                    ],
                ),
            ],
        ),
        Doc::new(
            "inventory/services.toml",
            &[
                (
                    "[services.db]",
                    &[
                        ("kind", "\"database\""),
                        ("rto", "\"4h\""),
                        ("rpo", "\"15m\""),
                        ("vm", "\"db\""),
                    ],
                ),
                (
                    "[services.app]",
                    &[
                        ("kind", "\"application\""),
                        ("owner", "\"Karim\""),
                        ("rto", "\"1h30m\""),
                        ("depends_on", "[\"db\"]"),
                        ("host", "\"hv2\""),
                    ],
                ),
                (
                    "[services.web]",
                    &[
                        ("kind", "\"application\""),
                        ("rto", "\"1d\""),
                        ("depends_on", "[\"app\", \"db\"]"),
                    ],
                ),
                (
                    "[vms.db]",
                    &[
                        ("driver", "\"libvirt\""),
                        ("primary", "\"hv1\""),
                        ("recovery", "\"hv2\""),
                        ("disks", "[\"db.qcow2\", \"db-data.qcow2\"]"),
                        ("address", "\"db.test.example\""),
                        ("vmid", "120"),
                    ],
                ),
                (
                    "[backups.dumps]",
                    &[
                        ("source_host", "\"hv1\""),
                        ("source_path", "\"/var/backups\""),
                        ("dest_host", "\"hv2\""),
                        ("dest_path", "\"/srv/backups\""),
                    ],
                ),
                (
                    "[drivers.custom]",
                    &[
                        ("start", "\"start {{ vm.name }} {{ vm.disks }}\""),
                        ("drill-start", "\"run {{ host.overlays_dir }}\""),
                    ],
                ),
            ],
        ),
    ]
}

fn base_runbooks() -> Vec<Doc> {
    vec![Doc::new(
        "runbooks/all.toml",
        &[
            (
                "",
                &[
                    ("app.restore", "[]"),
                    ("web.restore", "[]"),
                    ("db.restore", "[]"),
                ],
            ),
            (
                "[[db.drill]]",
                &[
                    ("id", "\"start\""),
                    ("kind", "\"vm\""),
                    ("action", "\"drill-start\""),
                ],
            ),
            (
                "[[db.drill]]",
                &[
                    ("id", "\"stop\""),
                    ("kind", "\"vm\""),
                    ("action", "\"drill-stop\""),
                    ("phase", "\"cleanup\""),
                ],
            ),
            (
                "[[app.drill]]",
                &[
                    ("id", "\"look\""),
                    ("kind", "\"check\""),
                    ("probe", "\"command\""),
                    ("run", "\"true\""),
                ],
            ),
            (
                "[[db.failover]]",
                &[
                    ("id", "\"sync\""),
                    ("kind", "\"replicate\""),
                    ("vm", "\"db\""),
                    ("needs_primary", "true"),
                ],
            ),
            (
                "[[db.failover]]",
                &[
                    ("id", "\"dumps\""),
                    ("kind", "\"replicate\""),
                    ("backup", "\"dumps\""),
                    ("needs_primary", "true"),
                ],
            ),
            (
                "[[db.failover]]",
                &[
                    ("id", "\"start\""),
                    ("kind", "\"vm\""),
                    ("action", "\"start\""),
                ],
            ),
            (
                "[[db.failover]]",
                &[
                    ("id", "\"port\""),
                    ("kind", "\"check\""),
                    ("probe", "\"tcp\""),
                    ("port", "5432"),
                    ("timeout", "\"5m\""),
                ],
            ),
            (
                "[[app.failover]]",
                &[
                    ("id", "\"run\""),
                    ("kind", "\"exec\""),
                    (
                        "run",
                        "\"curl -H 'X: {{ host.token | raw }}' http://{{ host.address }}/ && echo {{ service.owner }}\"",
                    ),
                    ("verify", "\"true\""),
                    ("undo", "\"false\""),
                    ("retries", "2"),
                    ("expected", "\"20s\""),
                ],
            ),
            (
                "[[web.failover]]",
                &[
                    ("id", "\"ok\""),
                    ("kind", "\"check\""),
                    ("probe", "\"http\""),
                    ("url", "\"http://{{ service.id }}.test.example/\""),
                    ("vm", "\"db\""),
                ],
            ),
            (
                "[[web.failover]]",
                &[
                    ("id", "\"call\""),
                    ("kind", "\"manual\""),
                    ("instructions", "\"Call the users.\""),
                ],
            ),
            (
                "[[db.failback]]",
                &[
                    ("id", "\"back\""),
                    ("kind", "\"replicate\""),
                    ("vm", "\"db\""),
                ],
            ),
        ],
    )]
}

/// One change to a list of files.
#[derive(Debug, Clone)]
enum DocEdit {
    /// Set a key of a table to a value (replacing it if present).
    Set(Index, Index, String, String),
    /// Change the value of an entry of a table.
    Change(Index, Index, Index, String),
    /// Remove an entry of a table.
    Remove(Index, Index, Index),
    /// Remove a whole table.
    Drop(Index, Index),
    /// Copy a table (a second step, a duplicate id), with its header's last part changed.
    Copy(Index, Index, Option<String>),
}

impl DocEdit {
    fn apply(&self, docs: &mut [Doc]) {
        let n = docs.len();
        match self {
            DocEdit::Set(d, t, k, v) => {
                let tables = &mut docs[d.index(n)].tables;
                if tables.is_empty() {
                    return;
                }
                let m = tables.len();
                let entries = &mut tables[t.index(m)].1;
                match entries.iter_mut().find(|e| &e.0 == k) {
                    Some(e) => e.1 = v.clone(),
                    None => entries.push((k.clone(), v.clone())),
                }
            }
            DocEdit::Change(d, t, e, v) => {
                let tables = &mut docs[d.index(n)].tables;
                if tables.is_empty() {
                    return;
                }
                let m = tables.len();
                let entries = &mut tables[t.index(m)].1;
                if !entries.is_empty() {
                    let k = e.index(entries.len());
                    entries[k].1 = v.clone();
                }
            }
            DocEdit::Remove(d, t, e) => {
                let tables = &mut docs[d.index(n)].tables;
                if tables.is_empty() {
                    return;
                }
                let m = tables.len();
                let entries = &mut tables[t.index(m)].1;
                if !entries.is_empty() {
                    let k = e.index(entries.len());
                    entries.remove(k);
                }
            }
            DocEdit::Drop(d, t) => {
                let tables = &mut docs[d.index(n)].tables;
                if !tables.is_empty() {
                    let k = t.index(tables.len());
                    tables.remove(k);
                }
            }
            DocEdit::Copy(d, t, name) => {
                let tables = &mut docs[d.index(n)].tables;
                if tables.is_empty() {
                    return;
                }
                let mut table = tables[t.index(tables.len())].clone();
                if let Some(name) = name {
                    // `[hosts.hv1]` → `[hosts.NAME]`; `[[db.drill]]` → `[[NAME.drill]]`.
                    let h = &table.0;
                    table.0 = if let Some(inner) = h.strip_prefix("[[") {
                        let rest = inner.split_once('.').map(|x| x.1).unwrap_or("");
                        format!("[[{name}.{rest}")
                    } else {
                        match h.rsplit_once('.') {
                            Some((head, _)) if !h.ends_with(".vars]") => format!("{head}.{name}]"),
                            _ => h.clone(),
                        }
                    };
                }
                tables.push(table);
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Inventory(DocEdit),
    Runbooks(DocEdit),
}

fn doc_edit() -> impl Strategy<Value = DocEdit> {
    prop_oneof![
        3 => (any::<Index>(), any::<Index>(), key(), value())
            .prop_map(|(d, t, k, v)| DocEdit::Set(d, t, k, v)),
        6 => (any::<Index>(), any::<Index>(), any::<Index>(), value())
            .prop_map(|(d, t, e, v)| DocEdit::Change(d, t, e, v)),
        2 => (any::<Index>(), any::<Index>(), any::<Index>()).prop_map(|(d, t, e)| DocEdit::Remove(d, t, e)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(d, t)| DocEdit::Drop(d, t)),
        2 => (any::<Index>(), any::<Index>(), proptest::option::of(word()))
            .prop_map(|(d, t, n)| DocEdit::Copy(d, t, n)),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        doc_edit().prop_map(Edit::Inventory),
        doc_edit().prop_map(Edit::Runbooks),
    ]
}

/// Words the files use: ids, roles, kinds, actions, modes.
const WORDS: &[&str] = &[
    "db",
    "app",
    "web",
    "hv1",
    "hv2",
    "main",
    "pra",
    "far",
    "dumps",
    "custom",
    "libvirt",
    "lab",
    "proxmox",
    "primary",
    "recovery",
    "remote",
    "hypervisor",
    "database",
    "application",
    "power",
    "tcp",
    "http",
    "command",
    "exec",
    "check",
    "vm",
    "manual",
    "replicate",
    "start",
    "stop",
    "status",
    "drill-start",
    "drill-stop",
    "autostart-on",
    "cleanup",
    "drill",
    "failover",
    "restore",
    "failback",
    "TOKEN",
    "x",
    "",
];

fn word() -> impl Strategy<Value = String> {
    proptest::sample::select(WORDS).prop_map(str::to_string)
}

/// The keys the loaders know, and a few they do not.
const KEYS: &[&str] = &[
    "id",
    "kind",
    "description",
    "timeout",
    "expected",
    "needs_primary",
    "phase",
    "host",
    "run",
    "verify",
    "undo",
    "retries",
    "idempotent",
    "vm",
    "interval",
    "probe",
    "address",
    "port",
    "url",
    "status",
    "instructions",
    "action",
    "on",
    "backup",
    "role",
    "user",
    "site",
    "known_hosts",
    "identity",
    "vars",
    "owner",
    "rto",
    "rpo",
    "depends_on",
    "name",
    "driver",
    "primary",
    "recovery",
    "disks",
    "recovery_address",
    "retention",
    "vmid",
    "source_host",
    "source_path",
    "dest_host",
    "dest_path",
    "start",
    "drill-start",
    "images_dir",
    "overlays_dir",
    "token",
    "db.drill",
    "app.failback",
    "web.restore",
    "env",
    "adress",
];

fn key() -> impl Strategy<Value = String> {
    proptest::sample::select(KEYS).prop_map(str::to_string)
}

/// A TOML value: mostly well-formed, of any type, often meaningful to the loaders.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => word().prop_map(|w| format!("\"{w}\"")),
        2 => "\"[a-z ]{0,4}\\{\\{ ?(host|vm|service|run|primary|recovery|x)\\.(id|address|name|disks|vmid|owner|description|images_dir|overlays_dir|mode|token|port|site|role|x) ?(\\| ?raw ?)?\\}\\}[a-z/ ]{0,4}\"",
        1 => "\"[a-z ]{0,4}\\{\\{?[a-z. |]{0,8}\\}?\\}?\"",
        2 => "\"(0|1|30|90|18446744073709551615|99999999999999999999)(s|m|h|d|x|h30m|)\"",
        2 => prop_oneof![Just(0i64), -5i64..70_000, any::<i64>()].prop_map(|i| i.to_string()),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        2 => proptest::collection::vec(word(), 0..4).prop_map(|w| {
            format!("[{}]", w.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(", "))
        }),
        1 => "\\{ ?env ?= ?\"[A-Z_$]{0,5}\" ?\\}",
        1 => prop_oneof![Just("1.5"), Just("[1, 2]"), Just("{}"), Just("{ x = 1 }"), Just("[[]]"), Just("1979-05-27"), Just("\"\\u00e9\\n\\t\"")].prop_map(str::to_string),
        1 => "\"[^\"\\\\\\n]{0,12}\"",
    ]
}

#[test]
fn the_files_changed_by_the_properties_are_valid() {
    let sources = Sources::from_texts(
        Doc::render_all(&base_inventory()),
        Doc::render_all(&base_runbooks()),
    );
    if let Err(report) = reprise::plan::validate::load(sources) {
        panic!("{}", report.render());
    }
}

/// With `--service a --service c --only`, where `c` needs `b` needs `a` and `b` is left out
/// (assumed running), `c` still waits for `a`: `b` cannot be running while `a` is recovered.
#[test]
fn only_orders_through_a_dependency_left_out() {
    let inventory = r#"
[sites.pra]
role = "recovery"
[hosts.r0]
address = "r0.test.example"
site = "pra"
role = "app-server"
[services.a]
kind = "application"
rto = "1d"
host = "r0"
[services.b]
kind = "application"
rto = "1d"
depends_on = ["a"]
host = "r0"
[services.c]
kind = "application"
rto = "1d"
depends_on = ["b"]
host = "r0"
"#;
    let runbooks = r#"
[[a.failover]]
id = "x"
kind = "exec"
run = "true"
[[b.failover]]
id = "x"
kind = "exec"
run = "true"
[[c.failover]]
id = "x"
kind = "exec"
run = "true"
"#;
    let (model, _) = reprise::plan::validate::load(Sources::from_texts(
        [("inventory/i.toml".to_string(), inventory.to_string())],
        [("runbooks/r.toml".to_string(), runbooks.to_string())],
    ))
    .expect("valid");
    let plan = plan::build(
        &model,
        &PlanOptions {
            services: vec!["a".into(), "c".into()],
            only: true,
            ..PlanOptions::new(Mode::Failover)
        },
    )
    .expect("plans");
    assert_eq!(plan.selection.assumed_running, ["b"]);
    let c = plan.step("c/x").unwrap();
    assert_eq!(
        c.after,
        ["a/x"],
        "c/x starts at {} beside a/x",
        c.est_start_s
    );
}
