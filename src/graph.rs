//! The service dependency graph (petgraph): cycles, a stable dependency order, levels, impact
//! analysis, and export as text, Graphviz DOT and Mermaid. Pure functions of the inventory.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt::Write as _;

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::diagnostic::Diagnostic;
use crate::duration::Duration;
use crate::inventory::Inventory;

/// Services as nodes (in inventory order), an edge from each dependency to its dependant.
#[derive(Debug, Clone)]
pub struct ServiceGraph {
    pub graph: DiGraph<String, ()>,
    index: HashMap<String, NodeIndex>,
}

impl ServiceGraph {
    /// Builds the graph; unknown dependencies (reported by the loader) are left out. Each
    /// dependency cycle is reported once, as a path.
    pub fn build(inv: &Inventory, diags: &mut Vec<Diagnostic>) -> ServiceGraph {
        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        for id in inv.services.keys() {
            index.insert(id.clone(), graph.add_node(id.clone()));
        }
        for service in inv.services.values() {
            let to = index[&service.id];
            for dep in &service.depends_on {
                if let Some(&from) = index.get(&dep.value)
                    && from != to
                    && graph.find_edge(from, to).is_none()
                {
                    graph.add_edge(from, to, ());
                }
            }
        }
        let g = ServiceGraph { graph, index };
        g.report_cycles(inv, diags);
        g
    }

    fn report_cycles(&self, inv: &Inventory, diags: &mut Vec<Diagnostic>) {
        let mut sccs: Vec<Vec<NodeIndex>> = tarjan_scc(&self.graph)
            .into_iter()
            .filter(|c| c.len() > 1)
            .collect();
        for c in &mut sccs {
            c.sort();
        }
        sccs.sort();
        for scc in sccs {
            let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
            // Walk dependencies from the first member (in file order) until it comes back.
            let start = scc[0];
            let path = self.cycle_path(start, &members);
            let names: Vec<&str> = path.iter().map(|&n| self.graph[n].as_str()).collect();
            let shown = names
                .iter()
                .chain(std::iter::once(&names[0]))
                .copied()
                .collect::<Vec<_>>()
                .join(" → ");
            // Point at the `depends_on` entry of the first service that names the next one.
            let first = &inv.services[names[0]];
            let next = names.get(1).copied().unwrap_or(names[0]);
            let loc = first
                .depends_on
                .iter()
                .find(|d| d.value == next)
                .map(|d| d.loc.clone())
                .unwrap_or_else(|| first.loc.clone());
            diags.push(
                Diagnostic::error(format!("dependency cycle: {shown}"))
                    .at(loc)
                    .label(format!("`{}` depends on `{next}`", names[0]))
                    .hint("a service cannot (even indirectly) depend on itself: remove one of these dependencies"),
            );
        }
    }

    /// A cycle through `start` using only dependency edges inside `members`, as the list of
    /// services where each depends on the next.
    fn cycle_path(&self, start: NodeIndex, members: &BTreeSet<NodeIndex>) -> Vec<NodeIndex> {
        // BFS over "depends on" (incoming edges) to find the shortest way back to start.
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(n) = queue.pop_front() {
            let mut deps: Vec<NodeIndex> = self
                .graph
                .neighbors_directed(n, Direction::Incoming)
                .filter(|d| members.contains(d))
                .collect();
            deps.sort();
            for d in deps {
                if d == start {
                    let mut path = vec![n];
                    let mut cur = n;
                    while cur != start {
                        cur = prev[&cur];
                        path.push(cur);
                    }
                    path.reverse();
                    return path;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(d) {
                    e.insert(n);
                    queue.push_back(d);
                }
            }
        }
        vec![start]
    }

    pub fn node(&self, id: &str) -> Option<NodeIndex> {
        self.index.get(id).copied()
    }

    pub fn name(&self, n: NodeIndex) -> &str {
        &self.graph[n]
    }

    /// Direct dependencies of a service, in inventory order.
    pub fn dependencies(&self, id: &str) -> Vec<&str> {
        let Some(n) = self.node(id) else {
            return Vec::new();
        };
        let mut deps: Vec<NodeIndex> = self
            .graph
            .neighbors_directed(n, Direction::Incoming)
            .collect();
        deps.sort();
        deps.into_iter().map(|d| self.name(d)).collect()
    }

    /// Direct dependants of a service, in inventory order.
    pub fn dependants(&self, id: &str) -> Vec<&str> {
        let Some(n) = self.node(id) else {
            return Vec::new();
        };
        let mut deps: Vec<NodeIndex> = self
            .graph
            .neighbors_directed(n, Direction::Outgoing)
            .collect();
        deps.sort();
        deps.into_iter().map(|d| self.name(d)).collect()
    }

    /// Every service after all its dependencies; ties keep inventory order. Services on a
    /// cycle are left out.
    pub fn order(&self) -> Vec<&str> {
        let mut indegree: Vec<usize> = self
            .graph
            .node_indices()
            .map(|n| self.graph.edges_directed(n, Direction::Incoming).count())
            .collect();
        let mut ready: BinaryHeap<Reverse<NodeIndex>> = self
            .graph
            .node_indices()
            .filter(|n| indegree[n.index()] == 0)
            .map(Reverse)
            .collect();
        let mut out = Vec::new();
        while let Some(Reverse(n)) = ready.pop() {
            out.push(self.name(n));
            for e in self.graph.edges_directed(n, Direction::Outgoing) {
                let t = e.target();
                indegree[t.index()] -= 1;
                if indegree[t.index()] == 0 {
                    ready.push(Reverse(t));
                }
            }
        }
        out
    }

    /// The longest chain of dependencies under each service (0 for services that depend on
    /// nothing).
    pub fn levels(&self) -> HashMap<&str, usize> {
        let mut level: HashMap<&str, usize> = HashMap::new();
        for id in self.order() {
            let l = self
                .dependencies(id)
                .iter()
                .filter_map(|d| level.get(d))
                .map(|l| l + 1)
                .max()
                .unwrap_or(0);
            level.insert(id, l);
        }
        level
    }

    /// `roots` and everything they depend on, transitively.
    pub fn with_dependencies(&self, roots: &[&str]) -> BTreeSet<String> {
        self.closure(roots, Direction::Incoming)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    }

    fn closure(&self, roots: &[&str], dir: Direction) -> Vec<(String, usize)> {
        let mut seen: HashMap<NodeIndex, usize> = HashMap::new();
        let mut queue: VecDeque<NodeIndex> = VecDeque::new();
        for r in roots {
            if let Some(n) = self.node(r) {
                seen.insert(n, 0);
                queue.push_back(n);
            }
        }
        while let Some(n) = queue.pop_front() {
            let d = seen[&n];
            for m in self.graph.neighbors_directed(n, dir) {
                if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(m) {
                    e.insert(d + 1);
                    queue.push_back(m);
                }
            }
        }
        let mut out: Vec<(NodeIndex, usize)> = seen.into_iter().collect();
        out.sort();
        out.into_iter()
            .map(|(n, d)| (self.name(n).to_string(), d))
            .collect()
    }

    /// What goes down when `id` fails: every service depending on it, transitively.
    pub fn impact(&self, inv: &Inventory, id: &str) -> Impact {
        let mut affected: Vec<Affected> = self
            .closure(&[id], Direction::Outgoing)
            .into_iter()
            .filter(|(n, _)| n != id)
            .map(|(n, distance)| {
                let s = &inv.services[&n];
                Affected {
                    via: self.path_from(id, &n),
                    service: n,
                    kind: s.kind.clone(),
                    rto: s.rto,
                    owner: s.owner.clone(),
                    distance,
                }
            })
            .collect();
        affected
            .sort_by(|a, b| (a.rto, a.distance, &a.service).cmp(&(b.rto, b.distance, &b.service)));
        Impact {
            service: id.to_string(),
            affected,
        }
    }

    /// A shortest chain of dependants from `from` to `to`.
    fn path_from(&self, from: &str, to: &str) -> Vec<String> {
        let (Some(a), Some(b)) = (self.node(from), self.node(to)) else {
            return Vec::new();
        };
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([a]);
        while let Some(n) = queue.pop_front() {
            if n == b {
                break;
            }
            let mut next: Vec<NodeIndex> = self
                .graph
                .neighbors_directed(n, Direction::Outgoing)
                .collect();
            next.sort();
            for m in next {
                if m != a && !prev.contains_key(&m) {
                    prev.insert(m, n);
                    queue.push_back(m);
                }
            }
        }
        let mut path = vec![self.name(b).to_string()];
        let mut cur = b;
        while cur != a {
            let Some(&p) = prev.get(&cur) else { break };
            cur = p;
            path.push(self.name(cur).to_string());
        }
        path.reverse();
        path
    }

    /// A readable listing by level: each service with what it needs.
    pub fn to_text(&self, inv: &Inventory) -> String {
        let levels = self.levels();
        let max = levels.values().copied().max().unwrap_or(0);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} services, {} dependencies, {} levels (a service needs those of the levels above it)",
            self.graph.node_count(),
            self.graph.edge_count(),
            max + 1
        );
        for level in 0..=max {
            let _ = writeln!(out, "\nlevel {level}");
            for id in self.order().into_iter().filter(|id| levels[id] == level) {
                let s = &inv.services[id];
                let deps = self.dependencies(id);
                let needs = if deps.is_empty() {
                    String::new()
                } else {
                    format!("  needs {}", deps.join(", "))
                };
                let _ = writeln!(
                    out,
                    "  {id} ({}, RTO {}{}){needs}",
                    s.kind,
                    s.rto,
                    s.rpo.map(|r| format!(", RPO {r}")).unwrap_or_default()
                );
            }
        }
        out
    }

    /// Graphviz DOT, an edge from each dependency to its dependant.
    pub fn to_dot(&self, inv: &Inventory) -> String {
        let mut out =
            String::from("digraph services {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
        for id in self.order() {
            let s = &inv.services[id];
            let _ = writeln!(
                out,
                "  \"{id}\" [label=\"{id}\\n{} · RTO {}\"];",
                s.kind, s.rto
            );
        }
        for e in self.sorted_edges() {
            let _ = writeln!(out, "  \"{}\" -> \"{}\";", e.0, e.1);
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid flowchart, an edge from each dependency to its dependant.
    pub fn to_mermaid(&self, inv: &Inventory) -> String {
        let mut out = String::from("flowchart LR\n");
        let key = |id: &str| id.replace('-', "_");
        for id in self.order() {
            let s = &inv.services[id];
            let _ = writeln!(
                out,
                "  {}[\"{id}<br/>{} · RTO {}\"]",
                key(id),
                s.kind,
                s.rto
            );
        }
        for (a, b) in self.sorted_edges() {
            let _ = writeln!(out, "  {} --> {}", key(a), key(b));
        }
        out
    }

    fn sorted_edges(&self) -> Vec<(&str, &str)> {
        let mut edges: Vec<(NodeIndex, NodeIndex)> = self
            .graph
            .edge_references()
            .map(|e| (e.source(), e.target()))
            .collect();
        edges.sort();
        edges
            .into_iter()
            .map(|(a, b)| (self.name(a), self.name(b)))
            .collect()
    }
}

/// The result of an impact analysis.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Impact {
    pub service: String,
    /// Most urgent first (shortest RTO target).
    pub affected: Vec<Affected>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Affected {
    pub service: String,
    pub kind: String,
    #[serde(serialize_with = "crate::duration::ser_duration", rename = "rto_s")]
    pub rto: Duration,
    pub owner: Option<String>,
    /// Number of dependency hops from the failed service.
    pub distance: usize,
    /// The chain of dependants from the failed service to this one.
    pub via: Vec<String>,
}

impl Impact {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if self.affected.is_empty() {
            let _ = writeln!(
                out,
                "If {} fails, no other service goes down.",
                self.service
            );
            return out;
        }
        let _ = writeln!(
            out,
            "If {} fails, {} service{} go{} down (most urgent first):\n",
            self.service,
            self.affected.len(),
            crate::diagnostic::plural(self.affected.len()),
            if self.affected.len() == 1 { "es" } else { "" }
        );
        let width = self
            .affected
            .iter()
            .map(|a| a.service.len())
            .max()
            .unwrap_or(0);
        for a in &self.affected {
            let _ = writeln!(
                out,
                "  {:<width$}  RTO {:<6} {:<14} via {}",
                a.service,
                a.rto.to_string(),
                a.kind,
                a.via.join(" → ")
            );
        }
        out
    }
}
