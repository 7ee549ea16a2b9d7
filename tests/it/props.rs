//! Property tests: plans of random acyclic inventories respect every dependency; random
//! inventories with a cycle are rejected with the cycle named; no input makes loading panic.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;
use reprise::model::Model;
use reprise::plan::{self, PlanOptions};
use reprise::runbook::Mode;
use reprise::sources::Sources;

/// A generated inventory: for each service, the (lower-numbered) services it depends on and
/// how many steps it has in each mode.
#[derive(Debug, Clone)]
struct Shape {
    deps: Vec<Vec<usize>>,
    steps: Vec<usize>,
}

fn shape(max: usize) -> impl Strategy<Value = Shape> {
    (1..=max).prop_flat_map(|n| {
        let deps = (0..n)
            .map(|i| {
                proptest::collection::vec(0..i.max(1), 0..=i.min(3))
                    .prop_map(move |d| if i == 0 { vec![] } else { d })
            })
            .collect::<Vec<_>>();
        (deps, proptest::collection::vec(0usize..4, n))
            .prop_map(|(deps, steps)| Shape { deps, steps })
    })
}

const SITES: &str = r#"
[sites.main]
role = "primary"
[sites.pra]
role = "recovery"
[hosts.h1]
address = "h1.test.example"
site = "main"
role = "app-server"
[hosts.h2]
address = "h2.test.example"
site = "pra"
role = "app-server"
"#;

fn texts(shape: &Shape, cycle: Option<(usize, usize)>) -> (String, String) {
    let mut inv = String::from(SITES);
    // Plain `sN.mode = []` keys must precede every [[table]] of the file.
    let mut plain = String::new();
    let mut books = String::new();
    for (i, deps) in shape.deps.iter().enumerate() {
        let mut deps: Vec<String> = deps.iter().map(|d| format!("\"s{d}\"")).collect();
        if let Some((from, to)) = cycle
            && from == i
        {
            deps.push(format!("\"s{to}\""));
        }
        deps.sort();
        deps.dedup();
        inv.push_str(&format!(
            "\n[services.s{i}]\nkind = \"application\"\nrto = \"4h\"\ndepends_on = [{}]\n",
            deps.join(", ")
        ));
        for mode in ["drill", "failover", "restore", "failback"] {
            let host = if matches!(mode, "drill" | "failover") {
                "h2"
            } else {
                "h1"
            };
            if shape.steps[i] == 0 {
                plain.push_str(&format!("s{i}.{mode} = []\n"));
            }
            for k in 0..shape.steps[i] {
                let (kind, body) = if k % 2 == 0 {
                    (
                        "exec",
                        format!(
                            "run = \"echo s{i}-{k}\"\nexpected = \"{}s\"",
                            10 + (i * 7 + k * 13) % 50
                        ),
                    )
                } else {
                    (
                        "check",
                        format!(
                            "probe = \"command\"\nrun = \"true\"\ntimeout = \"{}s\"",
                            5 + (i + k) % 20
                        ),
                    )
                };
                books.push_str(&format!(
                    "\n[[s{i}.{mode}]]\nid = \"k{k}\"\nkind = \"{kind}\"\nhost = \"{host}\"\n{body}\n"
                ));
            }
        }
    }
    (inv, format!("{plain}\n{books}"))
}

fn load(inv: String, books: String) -> Result<Model, String> {
    let sources = Sources::from_texts(
        [("inventory/gen.toml".to_string(), inv)],
        [("runbooks/gen.toml".to_string(), books)],
    );
    Model::load(sources).map(|(m, _)| m).map_err(|r| r.render())
}

/// Every service's transitive dependencies.
fn closure(deps: &[Vec<usize>]) -> Vec<HashSet<usize>> {
    let mut all: Vec<HashSet<usize>> = Vec::new();
    for d in deps {
        let mut set = HashSet::new();
        for &x in d {
            set.insert(x);
            set.extend(all[x].iter().copied());
        }
        all.push(set);
    }
    all
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn steps_come_after_every_step_of_what_they_depend_on(shape in shape(30)) {
        let (inv, books) = texts(&shape, None);
        let model = load(inv, books).map_err(TestCaseError::fail)?;
        let needs = closure(&shape.deps);
        for mode in Mode::ALL {
            let plan = plan::build(&model, &PlanOptions::new(mode)).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let index: HashMap<&str, usize> = plan.steps.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
            // Transitive predecessors of every step, through `after`.
            let mut before: Vec<HashSet<usize>> = Vec::new();
            for (i, step) in plan.steps.iter().enumerate() {
                let mut set = HashSet::new();
                for a in &step.after {
                    let j = index[a.as_str()];
                    prop_assert!(j < i, "{} waits for a later step {}", step.id, a);
                    prop_assert!(step.est_start_s >= plan.steps[j].est_finish_s);
                    set.insert(j);
                    set.extend(before[j].iter().copied());
                }
                before.push(set);
            }
            for (i, step) in plan.steps.iter().enumerate() {
                let s: usize = step.service[1..].parse().unwrap();
                for (j, other) in plan.steps.iter().enumerate() {
                    let o: usize = other.service[1..].parse().unwrap();
                    if needs[s].contains(&o) {
                        prop_assert!(before[i].contains(&j), "{} does not wait for {}", step.id, other.id);
                    }
                }
            }
            // The critical path is a chain of `after` links ending at the plan's last finish.
            let path = &plan.estimate.critical_path;
            if let Some(last) = path.last() {
                prop_assert_eq!(plan.steps[index[last.as_str()]].est_finish_s, plan.estimate.total.secs());
                for pair in path.windows(2) {
                    prop_assert!(plan.steps[index[pair[1].as_str()]].after.contains(&pair[0]));
                }
            }
        }
    }

    #[test]
    fn a_cycle_is_reported_as_a_path(shape in shape(20), pick in any::<(usize, usize)>()) {
        // Close a cycle: a service reached from `to` depends back on... `to` depends on `from`.
        let n = shape.deps.len();
        prop_assume!(n >= 2);
        let from = pick.0 % (n - 1);
        let to = from + 1 + pick.1 % (n - 1 - from);
        // s{to} > s{from}; make s{from} depend on s{to}, and s{to} on s{from}.
        let mut shape = shape;
        if !shape.deps[to].contains(&from) {
            shape.deps[to].push(from);
        }
        let (inv, books) = texts(&shape, Some((from, to)));
        let err = load(inv, books).expect_err("a cycle must be rejected");
        let line = err.lines().find(|l| l.starts_with("error: dependency cycle: ")).expect("a cycle diagnostic");
        let path: Vec<&str> = line.trim_start_matches("error: dependency cycle: ").split(" → ").collect();
        prop_assert!(path.len() >= 3);
        prop_assert_eq!(path.first(), path.last());
    }

    #[test]
    fn any_text_loads_or_fails_without_panicking(inv in ".{0,400}", books in "(\\[\\[?[a-z.]{1,12}\\]\\]?\n|[a-z_]{1,8} = (\"[a-z{} .]{0,12}\"|[0-9]{1,3}|true|\\[\\])\n){0,12}") {
        let _ = load(inv, books);
    }

    #[test]
    fn any_toml_shaped_inventory_loads_or_fails_without_panicking(
        lines in proptest::collection::vec(prop_oneof![
            Just("[services.a]".to_string()),
            Just("[services.b]".to_string()),
            Just("[hosts.h9]".to_string()),
            Just("[vms.v]".to_string()),
            Just("[sites.x]".to_string()),
            Just("kind = \"power\"".to_string()),
            Just("rto = \"1h\"".to_string()),
            Just("depends_on = [\"a\", \"b\"]".to_string()),
            Just("role = \"primary\"".to_string()),
            Just("site = \"x\"".to_string()),
            Just("vm = \"v\"".to_string()),
            Just("driver = \"lab\"".to_string()),
            "[a-z_]{1,8} = \"[a-z0-9{}. ]{0,10}\"",
        ], 0..30)
    ) {
        let _ = load(format!("{SITES}\n{}", lines.join("\n")), String::new());
    }
}
