//! `reprise status`: per replicated vm or backup set, the point a failover would start from
//! now against its RPO target (the decision [`crate::replica::choice`] makes for runs and
//! `check`); per service its application replicates, the replication lag its probe reads now
//! against the service's RPO (the probe runs and `check` use, judged by [`crate::lag::judge`]);
//! as a table, JSON, node-exporter textfile metrics or one monitoring-plugin line.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::Outcome;
use super::replicate::{SshArgs, copies, select, transport};
use crate::exit::{self, NAGIOS_CRITICAL, NAGIOS_OK, NAGIOS_UNKNOWN, NAGIOS_WARNING};
use crate::model::Model;
use crate::replica::Point;
use crate::replica::remote::Helpers;

/// `reprise status --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table (exit 8 when a target is missed).
    Text,
    /// The table's rows as JSON.
    Json,
    /// Prometheus text format, for node-exporter's textfile collector.
    Prometheus,
    /// One line and a Nagios/Icinga plugin exit code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
    Nagios,
}

/// `reprise status`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Same as --format json.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Write the output to FILE (atomically: a textfile collector never reads half of it)
    /// instead of the standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// nagios: WARNING when a newest good point is older than this share of its RPO target.
    #[arg(long, default_value_t = 80, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub warn_at: u8,
    /// nagios: WARNING when the last `reprise check` is older than this (or was never saved).
    #[arg(long, default_value = "36h", value_name = "DURATION")]
    pub check_max_age: crate::duration::Duration,
    /// nagios: WARNING when a service's last successful drill is older than this (or when
    /// its last drill did not recover it).
    #[arg(long, default_value = "90d", value_name = "DURATION")]
    pub drill_max_age: crate::duration::Duration,
    #[command(flatten)]
    pub ssh: SshArgs,
}

/// One replicated vm or backup set, as `status` sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaRow {
    pub item: String,
    pub backup: bool,
    /// The verified point a failover would start from now, and when it was taken.
    pub good: Option<(String, DateTime<Utc>)>,
    pub age_s: Option<u64>,
    pub rpo_s: Option<u64>,
    /// No verified point within the RPO target.
    pub breach: bool,
    /// The newest point of any disk: the last transfer.
    pub last: Option<Point>,
    /// Why there is no verified point, or what is not settled yet.
    pub why: Option<String>,
    /// The copies or their metadata could not be read.
    pub error: Option<String>,
}

/// A service its application replicates, as `status` sees it: what its lag probe read now.
#[derive(Debug, Clone, PartialEq)]
pub struct LagRow {
    pub service: String,
    /// Where the probe ran.
    pub host: String,
    /// When the probe answered (or gave up).
    pub at: DateTime<Utc>,
    pub reading: crate::lag::Reading,
    pub rpo_s: Option<u64>,
}

impl LagRow {
    /// The lag against the service's RPO target, with the words for it.
    pub fn judged(&self) -> (crate::lag::Verdict, String) {
        crate::lag::judge(&self.reading, self.rpo_s.map(crate::duration::Duration))
    }

    /// Over the RPO target, or unknown: nobody can say a failover now keeps within it.
    pub fn breach(&self) -> bool {
        self.judged().0 != crate::lag::Verdict::Within
    }
}

/// What `status` reports beyond the replicas: the last drills and the last readiness check.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub drills: Vec<crate::report::LastDrill>,
    /// Why the drills could not be read from the state folder.
    pub drills_error: Option<String>,
    pub readiness: Option<crate::readiness::Readiness>,
    /// The services a drill recovers (those with steps in a drill's plan): one with no drill
    /// yet counts as never drilled.
    pub services: Vec<String>,
}

/// `reprise status`.
pub fn status(model: &Model, state_dir: &Path, args: &StatusArgs, now: DateTime<Utc>) -> Outcome {
    let format = if args.json { Format::Json } else { args.format };
    let (rows, lags) = match collect(model, &args.ssh, now) {
        Ok(r) => r,
        Err(o) => return o,
    };
    let mut out = match format {
        Format::Text => text(&rows, &lags),
        Format::Json => json(&rows, &lags),
        Format::Prometheus => {
            Outcome::ok(prometheus(&rows, &lags, &context(model, state_dir), now))
        }
        Format::Nagios => {
            let limits = Limits {
                warn_at: args.warn_at,
                check_max_age_s: args.check_max_age.0,
                drill_max_age_s: args.drill_max_age.0,
            };
            let (code, line) = nagios(&rows, &lags, &context(model, state_dir), &limits, now);
            Outcome {
                code,
                stdout: line + "\n",
                stderr: String::new(),
            }
        }
    };
    if let Some(path) = &args.output {
        if let Err(e) = write_atomically(path, &out.stdout) {
            return Outcome {
                code: if format == Format::Nagios {
                    NAGIOS_UNKNOWN
                } else {
                    exit::IO
                },
                stdout: String::new(),
                stderr: format!("error: cannot write {}: {e}\n", path.display()),
            };
        }
        out.stdout.clear();
    }
    out
}

fn context(model: &Model, state_dir: &Path) -> Context {
    let (drills, drills_error) = match crate::report::last_drills(state_dir) {
        Ok(d) => (d, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    Context {
        drills,
        drills_error,
        readiness: crate::readiness::load_latest(state_dir),
        services: drilled_services(model),
    }
}

/// The services a drill of the whole inventory recovers: those it has main steps for other
/// than health checks and replication lag reads (one it only checks, or a standby it checks
/// and reads the lag of without promoting it, answers in place, and no drill recovers it); every
/// service when the drill cannot be planned (a drill would then fail for all of them).
fn drilled_services(model: &Model) -> Vec<String> {
    use crate::plan::PlanOptions;
    use crate::runbook::{Mode, Phase};
    match crate::plan::build(model, &PlanOptions::new(Mode::Drill)) {
        Ok(plan) => plan
            .services
            .iter()
            .filter(|s| {
                plan.steps.iter().any(|st| {
                    st.service == s.id
                        && st.phase == Phase::Main
                        && st.kind != "check"
                        && st.kind != "lag"
                })
            })
            .map(|s| s.id.clone())
            .collect(),
        Err(_) => model.inventory.services.keys().cloned().collect(),
    }
}

/// Reads every replicated item's copies on its recovery host and, meanwhile, the lag of every
/// service its application replicates.
fn collect(
    model: &Model,
    ssh: &SshArgs,
    now: DateTime<Utc>,
) -> Result<(Vec<ReplicaRow>, Vec<LagRow>), Outcome> {
    let vms = select(model, &[])?;
    let transport = transport(model, ssh)?;
    let targets = crate::check::lag_targets(&crate::check::Plans::build(model));
    Ok(std::thread::scope(|scope| {
        let lags = scope.spawn(|| crate::check::measure_lags(&transport, &targets));
        let rows = replica_rows(model, &transport, &vms, now);
        let lags = lags.join().unwrap_or_else(|_| {
            let at = Utc::now();
            targets
                .iter()
                .map(|t| {
                    let why = "the probe stopped unexpectedly".to_string();
                    let reading = crate::lag::Reading::Unknown(why);
                    (t.clone(), crate::lag::Lag { at, reading })
                })
                .collect()
        });
        let mut lags: Vec<LagRow> = lags
            .into_iter()
            .map(|(t, lag)| LagRow {
                service: t.service,
                host: t.host,
                at: lag.at,
                reading: lag.reading,
                rpo_s: t.rpo.map(|r| r.secs()),
            })
            .collect();
        let unplanned = unplanned_lags(model, &lags, Utc::now());
        lags.extend(unplanned);
        (rows, lags)
    }))
}

/// A service whose lag probe no plan could give (its runbooks do not plan) still has a lag
/// nobody read: it is shown unknown, never left out.
fn unplanned_lags(model: &Model, read: &[LagRow], now: DateTime<Utc>) -> Vec<LagRow> {
    model
        .inventory
        .services
        .values()
        .filter(|s| !read.iter().any(|l| l.service == s.id))
        .filter_map(|s| {
            let probe = s.lag()?;
            Some(LagRow {
                service: s.id.clone(),
                host: probe.host.value.clone(),
                at: now,
                reading: crate::lag::Reading::Unknown(
                    "its lag probe could not be planned: the service's runbooks do not plan (see `reprise validate`)"
                        .to_string(),
                ),
                rpo_s: s.rpo.map(|r| r.secs()),
            })
        })
        .collect()
}

/// What the recovery copies of each item say.
fn replica_rows(
    model: &Model,
    transport: &crate::ssh::SshTransport,
    vms: &[super::copied::VmImages],
    now: DateTime<Utc>,
) -> Vec<ReplicaRow> {
    use crate::replica::choice::{self, Decision, Use};
    let helpers = Helpers::new(transport);
    let mut rows = Vec::new();
    for vm in vms {
        // The same target as `reprise check` judges the copy by: a service that fails over
        // from disk copies, or the vm's own `rpo` (a copy no failover uses is not held to the
        // RPO of a service its application replicates).
        let rpo_s = crate::check::copy_rpo(
            model,
            if vm.backup {
                crate::check::Replicated::Backup(&vm.id)
            } else {
                crate::check::Replicated::Vm(&vm.id)
            },
        )
        .1;
        let mut row = ReplicaRow {
            item: vm.id.clone(),
            backup: vm.backup,
            good: None,
            age_s: None,
            rpo_s,
            breach: false,
            last: None,
            why: None,
            error: None,
        };
        let mut disks = match copies(&helpers, vm) {
            Ok(d) => d,
            Err(e) => {
                row.error = Some(e.to_string());
                rows.push(row);
                continue;
            }
        };
        row.last = disks
            .iter()
            .filter_map(|d| d.points.last())
            .max_by_key(|p| p.taken_at)
            .cloned();
        // An update cut in the middle is settled by the next replication or run; the points
        // stand until then.
        let mut notes = Vec::new();
        for d in disks.iter_mut() {
            if let Some(u) = d.unsettled.take() {
                notes.push(format!("{}: {u}", choice::name(&d.path)));
            }
            d.busy = false;
        }
        let why = match choice::decide(&disks, Use::Failover, &Default::default()) {
            Decision::Start(s) if vm.backup && !s.roll_back.is_empty() => {
                Some(never_rolled_back(&vm.id, &s))
            }
            Decision::Start(s) if s.verified => {
                row.good = Some((s.point, s.taken_at));
                None
            }
            Decision::Start(s) => Some(s.notes.join("; ")),
            Decision::Prepare(_) => Some(
                disks
                    .iter()
                    .filter_map(|d| d.changed.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            Decision::Refuse(why) => Some(why),
        };
        let (age_s, ahead) = age_of(row.good.as_ref(), now);
        row.age_s = age_s;
        let why = why.or(ahead);
        row.breach = match (row.rpo_s, row.age_s) {
            (Some(r), Some(a)) => a > r,
            (Some(_), None) => true,
            (None, _) => false,
        };
        row.why = why.or_else(|| (!notes.is_empty()).then(|| notes.join("; ")));
        rows.push(row);
    }
    rows
}

/// Why a backup set whose newest point is not good has no point a run would start from: a
/// failover rolls a vm's copy back to an older point, never a backup set's (its step fails,
/// [`crate::replica::start`]), so the older point `start` falls back to is not its point.
fn never_rolled_back(set: &str, start: &crate::replica::choice::Start) -> String {
    let to: Vec<&str> = start.roll_back.iter().map(|(_, p)| p.as_str()).collect();
    format!(
        "its newest point is not good, and a run never rolls a backup set's copy back to an older point ({}): replicate it for a new verified point (`reprise replicate {set}`), or restore that point by hand",
        to.join(", ")
    )
}

/// The age of a newest good point (its id and when it was taken) at `now`; or, for one dated
/// ahead of this machine's clock beyond a minute (the machine that replicated it has a clock
/// ahead), no age and why: such a point is never "fresh".
fn age_of(
    good: Option<&(String, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> (Option<u64>, Option<String>) {
    let Some((point, at)) = good else {
        return (None, None);
    };
    if crate::replica::point::dated_ahead(*at, now) {
        return (
            None,
            Some(format!(
                "its newest good point {point} is dated {}, {} ahead of this machine's clock (the clock of the machine that replicated it runs ahead?): its age cannot be told",
                at.format("%Y-%m-%d %H:%M:%S UTC"),
                crate::duration::Duration((*at - now).num_seconds().max(0) as u64)
            )),
        );
    }
    (Some((now - *at).num_seconds().max(0) as u64), None)
}

fn text(rows: &[ReplicaRow], lags: &[LagRow]) -> Outcome {
    let mut out = Outcome::default();
    out.stdout.push_str(&format!(
        "{:<12} {:<20} {:>10} {:>8}  {:<10} LAST TRANSFER\n",
        "VM OR SET", "NEWEST GOOD POINT", "AGE", "RPO", "STATE"
    ));
    for r in rows {
        // Listed all the same: an item left out would look like one not replicated at all.
        if let Some(e) = &r.error {
            out.stdout.push_str(&format!(
                "{:<12} {:<20} {:>10} {:>8}  {:<10} -\n  {}: its copies cannot be read: {e}\n",
                r.item,
                "unknown",
                "-",
                r.rpo_s
                    .map(|s| crate::duration::Duration(s).to_string())
                    .unwrap_or_else(|| "-".into()),
                "UNREADABLE",
                r.item
            ));
            continue;
        }
        let last = r
            .last
            .as_ref()
            .map(|p| {
                let secs = p.duration_ms as f64 / 1000.0;
                format!(
                    "{} bytes in {:.1}s ({:.1} MB/s)",
                    p.received_bytes,
                    secs,
                    p.received_bytes as f64 / secs.max(0.001) / 1e6
                )
            })
            .unwrap_or_else(|| "-".into());
        out.stdout.push_str(&format!(
            "{:<12} {:<20} {:>10} {:>8}  {:<10} {}\n",
            r.item,
            r.good.as_ref().map(|(p, _)| p.as_str()).unwrap_or("none"),
            r.age_s
                .map(|a| crate::duration::Duration(a).to_string())
                .unwrap_or_else(|| "-".into()),
            r.rpo_s
                .map(|s| crate::duration::Duration(s).to_string())
                .unwrap_or_else(|| "-".into()),
            match (r.breach, r.good.is_some()) {
                (true, true) => "BREACH",
                (true, false) | (false, false) => "UNVERIFIED",
                (false, true) => "ok",
            },
            last
        ));
        if let Some(w) = r.why.as_ref().filter(|w| !w.is_empty()) {
            out.stdout.push_str(&format!("  {}: {w}\n", r.item));
        }
    }
    if !lags.is_empty() {
        out.stdout.push_str(&format!(
            "\n{:<12} {:>10} {:>8}  {:<10} PROBE\n",
            "SERVICE", "LAG", "RPO", "STATE"
        ));
        for l in lags {
            let (verdict, words) = l.judged();
            out.stdout.push_str(&format!(
                "{:<12} {:>10} {:>8}  {:<10} on {}, replicated by the application\n",
                l.service,
                l.reading
                    .seconds()
                    .map(crate::lag::human)
                    .unwrap_or_else(|| "unknown".into()),
                l.rpo_s
                    .map(|s| crate::duration::Duration(s).to_string())
                    .unwrap_or_else(|| "-".into()),
                match verdict {
                    crate::lag::Verdict::Within => "ok",
                    crate::lag::Verdict::Over => "BREACH",
                    crate::lag::Verdict::Unknown => "UNKNOWN",
                },
                l.host
            ));
            if verdict != crate::lag::Verdict::Within {
                out.stdout.push_str(&format!("  {}: {words}\n", l.service));
            }
        }
    }
    breach_exit(rows, lags, &mut out);
    out
}

fn json(rows: &[ReplicaRow], lags: &[LagRow]) -> Outcome {
    let mut out = Outcome::default();
    let list: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            // Listed all the same, its error said: no good point can be vouched for.
            if let Some(e) = &r.error {
                return serde_json::json!({
                    "item": r.item,
                    "kind": if r.backup { "backup_set" } else { "vm" },
                    "newest_good_point": null,
                    "rpo_s": r.rpo_s,
                    // No point within its target can be vouched for (none without one).
                    "breach": r.rpo_s.is_some(),
                    "error": format!("its copies cannot be read: {e}"),
                });
            }
            serde_json::json!({
                "item": r.item,
                "kind": if r.backup { "backup_set" } else { "vm" },
                "newest_good_point": r.good.as_ref().map(|(p, _)| p),
                "taken_at": r.good.as_ref().map(|(_, t)| t),
                "age_s": r.age_s,
                "rpo_s": r.rpo_s,
                "breach": r.breach,
                "why": r.why,
                "last_transfer": r.last.as_ref().map(|p| serde_json::json!({
                    "point": p.id, "bytes": p.received_bytes, "duration_ms": p.duration_ms,
                })),
            })
        })
        .chain(lags.iter().map(|l| {
            let (_, words) = l.judged();
            serde_json::json!({
                "item": format!("service {}", l.service),
                "kind": "service",
                "replication": "application",
                "probe_host": l.host,
                "measured_at": l.at,
                "lag_s": l.reading.seconds(),
                "rpo_s": l.rpo_s,
                "breach": l.breach(),
                "why": words,
            })
        }))
        .collect();
    out.stdout = serde_json::to_string_pretty(&list).expect("json") + "\n";
    breach_exit(rows, lags, &mut out);
    out
}

/// Exit 8 (and a line saying how many) when a target is missed or a lag is unknown; a copy
/// that cannot be read proves no point within its target either, nor any good point at all
/// for a vm without a target (its recovery host down, its copies gone): never an exit 0.
fn breach_exit(rows: &[ReplicaRow], lags: &[LagRow], out: &mut Outcome) {
    if out.code != exit::OK {
        return;
    }
    let unreadable: Vec<&str> = rows
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| r.item.as_str())
        .collect();
    if !unreadable.is_empty() {
        out.stderr.push_str(&format!(
            "the copies of {} cannot be read: no point of {} can be vouched for\n",
            unreadable.join(", "),
            if unreadable.len() == 1 { "it" } else { "them" }
        ));
        out.code = exit::RPO_BREACH;
    }
    // Without a target: no point a failover would start from at all.
    let none: Vec<&str> = rows
        .iter()
        .filter(|r| r.error.is_none() && r.rpo_s.is_none() && r.good.is_none())
        .map(|r| r.item.as_str())
        .collect();
    if !none.is_empty() {
        out.stderr.push_str(&format!(
            "{} {} no verified point a failover would start from\n",
            none.join(", "),
            if none.len() == 1 { "has" } else { "have" }
        ));
        out.code = exit::RPO_BREACH;
    }
    let breaches = rows
        .iter()
        .filter(|r| r.error.is_none() && r.breach)
        .count();
    if breaches > 0 {
        out.stderr.push_str(&format!(
            "{breaches} replica{} no verified point within the RPO target\n",
            if breaches == 1 { " has" } else { "s have" }
        ));
        out.code = exit::RPO_BREACH;
    }
    let lag_breaches = lags.iter().filter(|l| l.breach()).count();
    if lag_breaches > 0 {
        out.stderr.push_str(&format!(
            "{lag_breaches} service{} replicated by the application {} no replication lag known within the RPO target\n",
            if lag_breaches == 1 { "" } else { "s" },
            if lag_breaches == 1 { "has" } else { "have" }
        ));
        out.code = exit::RPO_BREACH;
    }
}

/// The metrics in Prometheus's text format (what node-exporter's textfile collector reads).
pub fn prometheus(
    rows: &[ReplicaRow],
    lags: &[LagRow],
    ctx: &Context,
    now: DateTime<Utc>,
) -> String {
    use prometheus::{Encoder as _, TextEncoder};
    let m = Metrics {
        registry: prometheus::Registry::new(),
    };
    replica_metrics(&m, rows);
    lag_metrics(&m, lags);
    drill_metrics(&m, ctx);
    readiness_metrics(&m, ctx);
    m.one(
        "reprise_status_timestamp_seconds",
        "When these figures were gathered.",
    )
    .set(unix_secs(now));
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&m.registry.gather(), &mut buf)
        .expect("metrics encode to memory");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// The gauges of `--format prometheus`, each registered once.
struct Metrics {
    registry: prometheus::Registry,
}

impl Metrics {
    fn vec(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
        let g = prometheus::GaugeVec::new(prometheus::Opts::new(name, help), labels)
            .expect("a valid metric name");
        self.registry
            .register(Box::new(g.clone()))
            .expect("each metric is registered once");
        g
    }

    fn one(&self, name: &str, help: &str) -> prometheus::Gauge {
        let g = prometheus::Gauge::with_opts(prometheus::Opts::new(name, help))
            .expect("a valid metric name");
        self.registry
            .register(Box::new(g.clone()))
            .expect("each metric is registered once");
        g
    }
}

/// A time as Prometheus counts it: seconds since the epoch.
fn unix_secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Per vm or backup set: its copies, its newest good point against its RPO, its last transfer.
fn replica_metrics(m: &Metrics, rows: &[ReplicaRow]) {
    let item = ["item", "kind"];
    let readable = m.vec(
        "reprise_replica_readable",
        "1 when the recovery copies of the item and their metadata could be read.",
        &item,
    );
    let verified = m.vec(
        "reprise_replica_verified",
        "1 when a verified replica point is there for a failover to start from.",
        &item,
    );
    let good_at = m.vec(
        "reprise_replica_newest_good_point_timestamp_seconds",
        "When the newest verified replica point was taken.",
        &item,
    );
    let age = m.vec(
        "reprise_replica_newest_good_point_age_seconds",
        "Age of the newest verified replica point (the data a failover now would lose).",
        &item,
    );
    let rpo = m.vec(
        "reprise_replica_rpo_target_seconds",
        "The RPO target the item is held to.",
        &item,
    );
    let breach = m.vec(
        "reprise_replica_rpo_breach",
        "1 when no verified replica point is within the RPO target.",
        &item,
    );
    let last_bytes = m.vec(
        "reprise_replica_last_transfer_bytes",
        "Bytes received by the last replication of the item.",
        &item,
    );
    let last_duration = m.vec(
        "reprise_replica_last_transfer_duration_seconds",
        "How long the last replication of the item took.",
        &item,
    );
    let last_at = m.vec(
        "reprise_replica_last_transfer_timestamp_seconds",
        "When the point of the last replication of the item was taken.",
        &item,
    );
    for r in rows {
        let l = [r.item.as_str(), if r.backup { "backup_set" } else { "vm" }];
        readable.with_label_values(&l).set(flag(r.error.is_none()));
        if r.error.is_some() {
            continue;
        }
        verified.with_label_values(&l).set(flag(r.good.is_some()));
        if let Some((_, at)) = &r.good {
            good_at.with_label_values(&l).set(unix_secs(*at));
        }
        if let Some(a) = r.age_s {
            age.with_label_values(&l).set(a as f64);
        }
        if let Some(s) = r.rpo_s {
            rpo.with_label_values(&l).set(s as f64);
            breach.with_label_values(&l).set(flag(r.breach));
        }
        if let Some(p) = &r.last {
            last_bytes
                .with_label_values(&l)
                .set(p.received_bytes as f64);
            last_duration
                .with_label_values(&l)
                .set(p.duration_ms as f64 / 1000.0);
            last_at.with_label_values(&l).set(unix_secs(p.taken_at));
        }
    }
}

/// Services their application replicates: judged by the lag their probe reads, not by a
/// copy's age.
fn lag_metrics(m: &Metrics, lags: &[LagRow]) {
    let svc = ["service"];
    let lag_known = m.vec(
        "reprise_replication_lag_known",
        "1 when the lag probe of a service its application replicates printed a lag (0: unknown).",
        &svc,
    );
    let lag_seconds = m.vec(
        "reprise_replication_lag_seconds",
        "The replication lag the service's probe read (the data a failover now would lose).",
        &svc,
    );
    let lag_rpo = m.vec(
        "reprise_replication_lag_rpo_target_seconds",
        "The RPO target the service's replication lag is held to.",
        &svc,
    );
    let lag_breach = m.vec(
        "reprise_replication_lag_rpo_breach",
        "1 when the service's replication lag is over its RPO target or unknown.",
        &svc,
    );
    let lag_at = m.vec(
        "reprise_replication_lag_timestamp_seconds",
        "When the service's lag probe answered (or gave up).",
        &svc,
    );
    for l in lags {
        let lbl = [l.service.as_str()];
        let known = l.reading.seconds();
        lag_known.with_label_values(&lbl).set(flag(known.is_some()));
        if let Some(s) = known {
            lag_seconds.with_label_values(&lbl).set(s);
        }
        if let Some(r) = l.rpo_s {
            lag_rpo.with_label_values(&lbl).set(r as f64);
        }
        lag_breach.with_label_values(&lbl).set(flag(l.breach()));
        lag_at.with_label_values(&lbl).set(unix_secs(l.at));
    }
}

/// Per service: the newest drill that recovered it, and the newest that was to.
fn drill_metrics(m: &Metrics, ctx: &Context) {
    let svc = ["service"];
    let drilled = m.vec(
        "reprise_service_drilled",
        "1 when a drill that recovered the service is recorded.",
        &svc,
    );
    let ok_at = m.vec(
        "reprise_service_last_successful_drill_timestamp_seconds",
        "When the newest drill that recovered the service started.",
        &svc,
    );
    let rto_met = m.vec(
        "reprise_service_last_successful_drill_rto_met",
        "1 when the newest drill that recovered the service met its RTO target.",
        &svc,
    );
    let tried_at = m.vec(
        "reprise_service_last_drill_timestamp_seconds",
        "When the newest drill that was to recover the service started.",
        &svc,
    );
    let tried_ok = m.vec(
        "reprise_service_last_drill_success",
        "1 when the newest drill that was to recover the service recovered it.",
        &svc,
    );
    let mut services = ctx.services.clone();
    for d in &ctx.drills {
        if !services.contains(&d.service) {
            services.push(d.service.clone());
        }
    }
    if ctx.drills_error.is_none() {
        for s in &services {
            let d = ctx.drills.iter().find(|d| &d.service == s);
            let l = [s.as_str()];
            drilled
                .with_label_values(&l)
                .set(flag(d.is_some_and(|d| d.at.is_some())));
            let Some(d) = d else { continue };
            if let Some(at) = d.at {
                ok_at.with_label_values(&l).set(unix_secs(at));
            }
            if let Some(m) = d.rto_met {
                rto_met.with_label_values(&l).set(flag(m));
            }
            if let Some(at) = d.last_attempt_at {
                tried_at.with_label_values(&l).set(unix_secs(at));
            }
            if let Some(ok) = d.last_attempt_recovered {
                tried_ok.with_label_values(&l).set(flag(ok));
            }
        }
    }
}

/// Whether the runs could be read, and what the last `reprise check` found.
fn readiness_metrics(m: &Metrics, ctx: &Context) {
    let history = m.one(
        "reprise_history_readable",
        "1 when the runs in the state folder could be read for the drill metrics.",
    );
    history.set(flag(ctx.drills_error.is_none()));
    let checked = m.one(
        "reprise_readiness_checked",
        "1 when a `reprise check` result is saved.",
    );
    checked.set(flag(ctx.readiness.is_some()));
    if let Some(r) = &ctx.readiness {
        m.one(
            "reprise_readiness_ready",
            "1 when the last `reprise check` found nothing that stops a recovery.",
        )
        .set(flag(r.ready));
        m.one(
            "reprise_readiness_timestamp_seconds",
            "When the last `reprise check` ran.",
        )
        .set(unix_secs(r.at));
        let items = m.vec(
            "reprise_readiness_items",
            "Lines of the last `reprise check` by status.",
            &["status"],
        );
        for (name, status) in [
            ("ok", crate::readiness::ItemStatus::Ok),
            ("warning", crate::readiness::ItemStatus::Warning),
            ("failed", crate::readiness::ItemStatus::Failed),
        ] {
            let n = r.items.iter().filter(|i| i.status == status).count();
            items.with_label_values(&[name]).set(n as f64);
        }
    }
}

/// The thresholds of `--format nagios`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub warn_at: u8,
    pub check_max_age_s: u64,
    pub drill_max_age_s: u64,
}

/// The plugin's exit code and its one line: the state, the problems (critical first) and
/// performance data (each item's point age, each replication lag, against its RPO).
pub fn nagios(
    rows: &[ReplicaRow],
    lags: &[LagRow],
    ctx: &Context,
    limits: &Limits,
    now: DateTime<Utc>,
) -> (u8, String) {
    let mut critical = Vec::new();
    let mut warning = Vec::new();
    replica_findings(rows, limits, &mut critical, &mut warning);
    lag_findings(lags, limits, &mut critical, &mut warning);
    readiness_findings(ctx, limits, now, &mut critical, &mut warning);
    drill_findings(ctx, limits, now, &mut warning);
    let (code, state) = if !critical.is_empty() {
        (NAGIOS_CRITICAL, "CRITICAL")
    } else if !warning.is_empty() {
        (NAGIOS_WARNING, "WARNING")
    } else {
        (NAGIOS_OK, "OK")
    };
    let summary = if critical.is_empty() && warning.is_empty() {
        let n = rows.len();
        let lagged = match lags.len() {
            0 => String::new(),
            1 => " and 1 replication lag".to_string(),
            m => format!(" and {m} replication lags"),
        };
        format!(
            "{n} replica{}{lagged} within RPO, ready, every service drilled",
            if n == 1 { "" } else { "s" }
        )
    } else {
        critical
            .iter()
            .chain(warning.iter())
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    };
    let perf = perf_data(rows, lags, limits);
    let mut line = format!("REPRISE {state} - {summary}");
    if !perf.is_empty() {
        line.push_str(" | ");
        line.push_str(&perf.join(" "));
    }
    (code, line)
}

/// How long ago `t` was, as of `now`.
fn ago(now: DateTime<Utc>, t: DateTime<Utc>) -> crate::duration::Duration {
    crate::duration::Duration((now - t).num_seconds().max(0) as u64)
}

/// Each vm or backup set: its copies readable, its newest good point against its RPO.
fn replica_findings(
    rows: &[ReplicaRow],
    limits: &Limits,
    critical: &mut Vec<String>,
    warning: &mut Vec<String>,
) {
    for r in rows {
        if let Some(e) = &r.error {
            critical.push(format!("{}: copies unreadable ({})", r.item, one_line(e)));
            continue;
        }
        match (r.breach, r.age_s, r.rpo_s) {
            (true, Some(a), Some(rpo)) => critical.push(format!(
                "{}: newest good point {} old, RPO {}",
                r.item,
                crate::duration::Duration(a),
                crate::duration::Duration(rpo)
            )),
            (true, None, _) => critical.push(format!("{}: no verified point", r.item)),
            (false, Some(a), Some(rpo)) if a * 100 > rpo * u64::from(limits.warn_at) => warning
                .push(format!(
                    "{}: newest good point {} old, RPO {}",
                    r.item,
                    crate::duration::Duration(a),
                    crate::duration::Duration(rpo)
                )),
            (false, None, None) => warning.push(format!("{}: no verified point", r.item)),
            _ => {}
        }
    }
}

/// A service its application replicates: its lag, never a copy's age, against its RPO.
fn lag_findings(
    lags: &[LagRow],
    limits: &Limits,
    critical: &mut Vec<String>,
    warning: &mut Vec<String>,
) {
    for l in lags {
        let rpo = l.rpo_s.map(crate::duration::Duration);
        match (l.reading.seconds(), rpo) {
            (None, _) => {
                let (_, words) = l.judged();
                critical.push(format!("{}: {}", l.service, one_line(&words)));
            }
            (Some(s), Some(rpo)) if l.breach() => critical.push(format!(
                "{}: replication lag {}, RPO {rpo}",
                l.service,
                crate::lag::human(s)
            )),
            (Some(s), Some(rpo)) if s * 100.0 > rpo.0 as f64 * f64::from(limits.warn_at) => warning
                .push(format!(
                    "{}: replication lag {}, RPO {rpo}",
                    l.service,
                    crate::lag::human(s)
                )),
            _ => {}
        }
    }
}

/// The last `reprise check`: not ready, too old, or none.
fn readiness_findings(
    ctx: &Context,
    limits: &Limits,
    now: DateTime<Utc>,
    critical: &mut Vec<String>,
    warning: &mut Vec<String>,
) {
    match &ctx.readiness {
        Some(r) if !r.ready => {
            let failed = r
                .items
                .iter()
                .filter(|i| i.status == crate::readiness::ItemStatus::Failed)
                .count();
            critical.push(format!(
                "not ready ({failed} failed check{} {} ago)",
                if failed == 1 { "" } else { "s" },
                ago(now, r.at)
            ));
        }
        Some(r) if (now - r.at).num_seconds() > limits.check_max_age_s as i64 => {
            warning.push(format!("last check {} ago", ago(now, r.at)));
        }
        Some(_) => {}
        None => warning.push("no `reprise check` result saved".to_string()),
    }
}

/// Each service's last drill: failed, too old, or none.
fn drill_findings(ctx: &Context, limits: &Limits, now: DateTime<Utc>, warning: &mut Vec<String>) {
    if let Some(e) = &ctx.drills_error {
        warning.push(format!("runs unreadable ({})", one_line(e)));
    } else {
        let mut never = Vec::new();
        for s in &ctx.services {
            let d = ctx.drills.iter().find(|d| &d.service == s);
            match d {
                Some(d) if d.last_attempt_recovered == Some(false) => {
                    warning.push(format!("{s}: last drill did not recover it"))
                }
                Some(crate::report::LastDrill { at: Some(at), .. })
                    if (now - *at).num_seconds() > limits.drill_max_age_s as i64 =>
                {
                    warning.push(format!("{s}: last successful drill {} ago", ago(now, *at)))
                }
                Some(crate::report::LastDrill { at: Some(_), .. }) => {}
                _ => never.push(s.as_str()),
            }
        }
        if !never.is_empty() {
            warning.push(format!("never drilled: {}", never.join(", ")));
        }
    }
}

/// The performance data: each item's point age and each replication lag, against its RPO.
fn perf_data(rows: &[ReplicaRow], lags: &[LagRow], limits: &Limits) -> Vec<String> {
    rows.iter()
        .filter_map(|r| {
            let a = r.age_s?;
            let label = perf_label(&format!("{} age", r.item));
            Some(match r.rpo_s {
                Some(rpo) => format!(
                    "{label}={a}s;{};{rpo};0",
                    rpo * u64::from(limits.warn_at) / 100
                ),
                None => format!("{label}={a}s;;;0"),
            })
        })
        .chain(lags.iter().filter_map(|l| {
            let s = l.reading.seconds()?;
            let label = perf_label(&format!("{} lag", l.service));
            Some(match l.rpo_s {
                Some(rpo) => format!(
                    "{label}={s}s;{};{rpo};0",
                    rpo * u64::from(limits.warn_at) / 100
                ),
                None => format!("{label}={s}s;;;0"),
            })
        }))
        .collect()
}

/// A performance-data label: quoted, a quote doubled (the plugin guidelines' rule), and no
/// `=` or `|` that would cut the line.
fn perf_label(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| match c {
            '=' | '|' => '_',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    format!("'{}'", clean.replace('\'', "''"))
}

/// The first line of a message, shortened: a plugin prints one line.
fn one_line(s: &str) -> String {
    let first = s.lines().next().unwrap_or("").trim();
    let mut short: String = first.chars().take(120).collect();
    if first.chars().count() > 120 {
        short.push('…');
    }
    short.replace('|', "/")
}

/// Writes `text` to `path` through a new file beside it, synced, then renamed over it, so a
/// reader (a textfile collector) sees the old file or the new one, never half of one.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        // Readable by a collector running as another user, like a report.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::{ItemStatus, Readiness, ReadinessItem};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap()
    }

    /// A point dated ahead of this machine's clock is never taken as fresh: its age is
    /// unknown (a breach of any RPO), and said why; a few seconds ahead is a clock's noise.
    #[test]
    fn a_point_dated_ahead_of_this_clock_has_no_age() {
        let now = Utc::now();
        let good = |secs: i64| ("P1".to_string(), now + chrono::Duration::seconds(secs));
        assert_eq!(age_of(None, now), (None, None));
        assert_eq!(age_of(Some(&good(-600)), now), (Some(600), None));
        assert_eq!(age_of(Some(&good(5)), now), (Some(0), None));
        let (age, why) = age_of(Some(&good(3600)), now);
        assert_eq!(age, None);
        assert!(
            why.as_deref()
                .is_some_and(|w| w.contains("P1") && w.contains("1h ahead of this machine's clock")),
            "{why:?}"
        );
    }

    #[test]
    fn a_lag_no_plan_could_read_is_shown_unknown_never_left_out() {
        let sources = crate::sources::Sources::read(
            std::path::Path::new("inventory"),
            std::path::Path::new("runbooks"),
        )
        .unwrap();
        let model = crate::plan::validate::load(sources)
            .map(|(m, _)| m)
            .unwrap();
        let app: Vec<&str> = model
            .inventory
            .services
            .values()
            .filter(|s| s.lag().is_some())
            .map(|s| s.id.as_str())
            .collect();
        assert!(app.len() >= 2, "{app:?}");
        // No plan gave any probe: every one of them is a row, unknown.
        let rows = unplanned_lags(&model, &[], now());
        assert_eq!(
            rows.iter().map(|r| r.service.as_str()).collect::<Vec<_>>(),
            app
        );
        assert!(
            rows.iter()
                .all(|r| r.reading.seconds().is_none() && r.rpo_s.is_some())
        );
        // One that was read is not repeated.
        let rows = unplanned_lags(&model, &rows[..1], now());
        assert_eq!(rows.len(), app.len() - 1);
    }

    fn row(item: &str, age_s: Option<u64>, rpo_s: Option<u64>) -> ReplicaRow {
        ReplicaRow {
            item: item.to_string(),
            backup: false,
            good: age_s.map(|a| ("p".to_string(), now() - chrono::Duration::seconds(a as i64))),
            age_s,
            rpo_s,
            breach: match (rpo_s, age_s) {
                (Some(r), Some(a)) => a > r,
                (Some(_), None) => true,
                (None, _) => false,
            },
            last: None,
            why: None,
            error: None,
        }
    }

    fn drilled(service: &str, days_ago: i64, recovered: bool) -> crate::report::LastDrill {
        let at = now() - chrono::Duration::days(days_ago);
        crate::report::LastDrill {
            service: service.to_string(),
            run_id: recovered.then(|| "r".to_string()),
            at: recovered.then_some(at),
            achieved_rto_s: None,
            rto_met: None,
            last_attempt_run_id: Some("r".to_string()),
            last_attempt_at: Some(at),
            last_attempt_recovered: Some(recovered),
        }
    }

    fn ready(hours_ago: i64, ok: bool) -> Readiness {
        Readiness {
            at: now() - chrono::Duration::hours(hours_ago),
            ready: ok,
            items: vec![ReadinessItem {
                area: "ssh".into(),
                subject: "hv-pra".into(),
                status: if ok {
                    ItemStatus::Ok
                } else {
                    ItemStatus::Failed
                },
                detail: String::new(),
            }],
        }
    }

    fn ctx(readiness: Option<Readiness>, drills: Vec<crate::report::LastDrill>) -> Context {
        Context {
            services: drills.iter().map(|d| d.service.clone()).collect(),
            drills,
            drills_error: None,
            readiness,
        }
    }

    const LIMITS: Limits = Limits {
        warn_at: 80,
        check_max_age_s: 36 * 3600,
        drill_max_age_s: 90 * 86400,
    };

    #[test]
    fn copies_that_cannot_be_read_never_exit_0_with_a_target_or_without() {
        for rpo in [Some(900), None] {
            let mut dead = row("web", None, rpo);
            dead.error = Some("hv-pra: connection refused".into());
            let rows = [row("erp-db", Some(600), Some(900)), dead];
            for out in [json(&rows, &[]), {
                let mut o = Outcome::default();
                breach_exit(&rows, &[], &mut o);
                o
            }] {
                assert_eq!(out.code, exit::RPO_BREACH, "rpo {rpo:?}: {}", out.stderr);
                assert!(
                    out.stderr.contains("the copies of web cannot be read"),
                    "{}",
                    out.stderr
                );
            }
        }
        // Read, and no target: nothing to breach.
        let mut o = Outcome::default();
        breach_exit(&[row("web", Some(600), None)], &[], &mut o);
        assert_eq!(o.code, exit::OK);
        // Read, no target, and no good point at all: nothing a failover would start from.
        let mut o = Outcome::default();
        breach_exit(&[row("web", None, None)], &[], &mut o);
        assert_eq!(o.code, exit::RPO_BREACH, "{}", o.stderr);
        assert!(
            o.stderr
                .contains("web has no verified point a failover would start from"),
            "{}",
            o.stderr
        );
    }

    #[test]
    fn all_well_is_ok_with_each_age_as_performance_data() {
        let (code, line) = nagios(
            &[row("erp-db", Some(600), Some(900))],
            &[],
            &ctx(Some(ready(2, true)), vec![drilled("erp-db", 10, true)]),
            &LIMITS,
            now(),
        );
        assert_eq!(code, NAGIOS_OK);
        assert_eq!(
            line,
            "REPRISE OK - 1 replica within RPO, ready, every service drilled | 'erp-db age'=600s;720;900;0"
        );
    }

    #[test]
    fn a_point_near_its_target_a_stale_check_or_an_old_drill_warn() {
        let c = ctx(Some(ready(2, true)), vec![drilled("erp-db", 10, true)]);
        // 800 s of a 900 s target is past 80%.
        let (code, line) = nagios(
            &[row("erp-db", Some(800), Some(900))],
            &[],
            &c,
            &LIMITS,
            now(),
        );
        assert_eq!(code, NAGIOS_WARNING, "{line}");
        assert!(
            line.contains("erp-db: newest good point 13m20s old, RPO 15m"),
            "{line}"
        );

        let c = ctx(Some(ready(48, true)), vec![drilled("erp-db", 10, true)]);
        let (code, line) = nagios(
            &[row("erp-db", Some(60), Some(900))],
            &[],
            &c,
            &LIMITS,
            now(),
        );
        assert_eq!(code, NAGIOS_WARNING, "{line}");
        assert!(
            line.contains("last check 2d old") || line.contains("last check 2d ago"),
            "{line}"
        );

        let c = ctx(Some(ready(2, true)), vec![drilled("erp-db", 120, true)]);
        let (code, line) = nagios(&[], &[], &c, &LIMITS, now());
        assert_eq!(code, NAGIOS_WARNING, "{line}");
        assert!(
            line.contains("erp-db: last successful drill 120d ago"),
            "{line}"
        );

        let c = ctx(Some(ready(2, true)), vec![drilled("erp-db", 1, false)]);
        let (code, line) = nagios(&[], &[], &c, &LIMITS, now());
        assert_eq!(code, NAGIOS_WARNING, "{line}");
        assert!(
            line.contains("erp-db: last drill did not recover it"),
            "{line}"
        );

        let mut c = ctx(None, vec![]);
        c.services = vec!["lms".into(), "print".into()];
        let (code, line) = nagios(&[], &[], &c, &LIMITS, now());
        assert_eq!(code, NAGIOS_WARNING, "{line}");
        assert!(line.contains("no `reprise check` result saved"), "{line}");
        assert!(line.contains("never drilled: lms, print"), "{line}");
    }

    #[test]
    fn a_missed_target_an_unreadable_copy_or_not_ready_is_critical_and_comes_first() {
        let mut unreadable = row("lms", None, Some(3600));
        unreadable.error = Some("hv-pra: connection refused\nmore".into());
        let (code, line) = nagios(
            &[
                row("erp-db", Some(1000), Some(900)),
                row("files", None, Some(3600)),
                unreadable,
            ],
            &[],
            &ctx(Some(ready(2, false)), vec![drilled("erp-db", 1, false)]),
            &LIMITS,
            now(),
        );
        assert_eq!(code, NAGIOS_CRITICAL, "{line}");
        assert!(
            line.starts_with(
                "REPRISE CRITICAL - erp-db: newest good point 16m40s old, RPO 15m; files: no verified point; lms: copies unreadable (hv-pra: connection refused); not ready (1 failed check 2h ago); erp-db: last drill did not recover it |"
            ),
            "{line}"
        );
        assert_eq!(line.lines().count(), 1);
    }

    fn lag(service: &str, reading: crate::lag::Reading, rpo_s: u64) -> LagRow {
        LagRow {
            service: service.to_string(),
            host: "pg-pra".to_string(),
            at: now(),
            reading,
            rpo_s: Some(rpo_s),
        }
    }

    fn secs(s: f64) -> crate::lag::Reading {
        crate::lag::Reading::Seconds(s)
    }

    /// A service its application replicates is judged by its lag: over its RPO or unknown is
    /// critical, near it a warning, and the lag is performance data; the copies of its vm,
    /// which no failover starts from, are held to no RPO of its.
    #[test]
    fn the_plugin_judges_a_service_its_application_replicates_by_its_lag() {
        let c = ctx(Some(ready(2, true)), vec![drilled("lms-db", 10, true)]);
        // Its vm's copy has no RPO target (none of its services fails over from it): its age
        // is no problem.
        let copy = row("moodle-db", Some(86400 * 3), None);
        let (code, line) = nagios(
            std::slice::from_ref(&copy),
            &[lag("lms-db", secs(1.5), 900)],
            &c,
            &LIMITS,
            now(),
        );
        assert_eq!(code, NAGIOS_OK, "{line}");
        assert_eq!(
            line,
            "REPRISE OK - 1 replica and 1 replication lag within RPO, ready, every service drilled | 'moodle-db age'=259200s;;;0 'lms-db lag'=1.5s;720;900;0"
        );

        let (code, line) = nagios(&[], &[lag("lms-db", secs(800.0), 900)], &c, &LIMITS, now());
        assert_eq!(code, NAGIOS_WARNING, "{line}");
        assert!(
            line.contains("lms-db: replication lag 13m20s, RPO 15m"),
            "{line}"
        );

        let (code, line) = nagios(
            &[copy],
            &[
                lag("lms-db", secs(1200.25), 900),
                lag(
                    "directory",
                    crate::lag::Reading::Unknown(
                        "the probe printed `access denied|x`, not a number of seconds".into(),
                    ),
                    3600,
                ),
            ],
            &c,
            &LIMITS,
            now(),
        );
        assert_eq!(code, NAGIOS_CRITICAL, "{line}");
        assert!(
            line.starts_with(
                "REPRISE CRITICAL - lms-db: replication lag 20m00s, RPO 15m; directory: lag unknown: the probe printed `access denied/x`, not a number of seconds |"
            ),
            "{line}"
        );
        // No figure for a lag nobody knows.
        assert!(!line.contains("'directory lag'"), "{line}");
        assert!(line.contains("'lms-db lag'=1200.25s;720;900;0"), "{line}");
    }

    #[test]
    fn the_metrics_carry_each_lag_its_target_and_a_breach_when_unknown() {
        let text = prometheus(
            &[row("moodle-db", Some(86400 * 3), None)],
            &[
                lag("lms-db", secs(1.5), 900),
                lag(
                    "directory",
                    crate::lag::Reading::Unknown("the probe printed nothing".into()),
                    3600,
                ),
            ],
            &ctx(None, vec![]),
            now(),
        );
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let has = |l: &str| lines.contains(&l);
        for line in [
            "reprise_replication_lag_known{service=\"lms-db\"} 1",
            "reprise_replication_lag_seconds{service=\"lms-db\"} 1.5",
            "reprise_replication_lag_rpo_target_seconds{service=\"lms-db\"} 900",
            "reprise_replication_lag_rpo_breach{service=\"lms-db\"} 0",
            "reprise_replication_lag_known{service=\"directory\"} 0",
            "reprise_replication_lag_rpo_target_seconds{service=\"directory\"} 3600",
            "reprise_replication_lag_rpo_breach{service=\"directory\"} 1",
        ] {
            assert!(has(line), "{line} missing:\n{text}");
        }
        let when = format!(
            "reprise_replication_lag_timestamp_seconds{{service=\"lms-db\"}} {}",
            now().timestamp()
        );
        assert!(has(&when), "{when} missing:\n{text}");
        assert!(
            !text.contains("reprise_replication_lag_seconds{service=\"directory\"}"),
            "{text}"
        );
        // The vm's copy is held to no RPO: no target, no breach.
        assert!(
            !text.contains("reprise_replica_rpo_breach{item=\"moodle-db\""),
            "{text}"
        );
    }

    #[test]
    fn performance_labels_cannot_break_the_line() {
        assert_eq!(perf_label("a'b=c|d\ne"), "'a''b_c_d e'");
    }
}
