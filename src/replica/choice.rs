//! Which point a vm may start from, and whether it is verified: one decision, made from the
//! [`CopyState`] of each of its disks, for the runner (a drill's or a failover's vm start),
//! `reprise check`, `reprise status` and `reprise points`, so that they cannot disagree.
//!
//! A copy counts as verified only when its metadata can be read, it is still its newest
//! point (its stamp did not change behind it), and that point's BLAKE3 matched when it was
//! made or last checked. A copy that is not (no point ever made, points unreadable, changed
//! behind its points, a vm running on it) is **unverified**: no run starts it unless the
//! operator names it (`--accept-unverified VM`), and `check` fails on it.
//!
//! Pure: no IO and no clock (the time is passed in). The runner does what a decision asks
//! ([`Decision::Prepare`]: settle, verify) and asks again.

use chrono::{DateTime, Utc};

use super::meta::{CopyState, Lease, LeaseKind, PointsSource};
use super::store::{Point, Verified};

/// Who starts the vm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// A drill: the copy is read through an overlay and never rolled back.
    Drill,
    /// A failover: the copy may be rolled back to an older point, then the vm runs on it.
    Failover,
}

/// A point asked for at failover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    Id(String),
    Before(DateTime<Utc>),
}

/// What the operator asked for this vm.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    pub want: Option<Want>,
    /// Named with `--accept-unverified`: start the copy as it is when nothing proves it.
    pub accept_unverified: bool,
    /// The run asking: a lease of its own (a resumed run) is no obstacle.
    pub run: Option<String>,
    /// A time the run was asked to start from before (`--point-before`), which a point named
    /// for this vm must respect too: a point named before the time was known (at the run's
    /// start, the time given at its resume) never starts holding what was written after it.
    pub within: Option<DateTime<Utc>>,
}

/// Something to do before the decision can be made; then inspect again and decide again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prep {
    /// Complete or throw away the update or roll-back cut on this disk (waiting for a
    /// replication that holds it to end).
    Settle(usize),
    /// Read this disk's newest point again: its copy changed behind it.
    Verify(usize, String),
}

/// A vm start decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    /// Per disk, the point it starts from; `None`: the copy as it is (unverified, accepted).
    pub points: Vec<Option<String>>,
    /// Disks to roll back to an older point first (failover only), best first per disk: a
    /// point that cannot be rebuilt is marked bad and the decision made again.
    pub roll_back: Vec<(usize, String)>,
    /// What the journal records: the point(s), the oldest data, whether it is verified now.
    pub point: String,
    pub taken_at: DateTime<Utc>,
    /// The latest time anything the vm starts from may have been written: a point's
    /// [`Point::written_until`], a copy as it is its last write (the end of time when not
    /// known). What a time asked later (a resume's `--point-before`) is compared with.
    pub written_until: DateTime<Utc>,
    pub verified: bool,
    pub notes: Vec<String>,
    /// The points dropped by the roll-backs, per disk name.
    pub dropped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Prepare(Vec<Prep>),
    Start(Start),
    /// Not started: why, and what to do.
    Refuse(String),
}

/// The file name of a copy's path.
pub fn name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Notes on each copy of `states` whose newest point was read from another source than
/// `sources` gives it (`host:path`, the source the inventory gives each copy now, in the same
/// order; a copy without one is not checked) that its points may be another disk's or
/// folder's data ([`CopyState::other_source`]): the inventory gives the copy to another
/// source than its points were read from (a vm's disks or copies swapped, a copy path given
/// to another vm), or the source moved. Such a copy is unverified: nothing starts it as a
/// point unless the operator names it, and `check` fails on it.
pub fn note_sources(states: &mut [CopyState], sources: &[String]) {
    for (state, source) in states.iter_mut().zip(sources) {
        if let Some(newest) = state.points.last()
            && !super::meta::same_source(&newest.source, source)
        {
            state.other_source = Some(format!(
                "its points are of {} (the newest, {}), and the inventory gives it to {source}: they may be another disk's data. If the inventory is wrong, put it right; if the source really moved, its newest point is still this data: start it as it is only by naming it (--accept-unverified), or move the copy's `.reprise` folder aside, take the copy as it is (`reprise release NAME`) and replicate it again (only what differs is sent)",
                newest.source, newest.id
            ));
        }
    }
}

/// Why a copy cannot be trusted as a point at all; `None` when its points can be used.
pub fn unverified(copy: &CopyState, run: Option<&str>) -> Option<String> {
    let n = name(&copy.path);
    if let Some(l) = copy
        .leases
        .iter()
        .find(|l| l.kind == LeaseKind::Live && Some(l.run.as_str()) != run)
    {
        return Some(format!(
            "{n} is the {} of {}: its points no longer describe it",
            if l.of_backup_set() { "data" } else { "disk" },
            l.describe()
        ));
    }
    if let Some(d) = &copy.damaged {
        return Some(format!("{n}: its replica points cannot be read: {d}"));
    }
    if let Some(why) = &copy.other_source {
        return Some(format!("{n}: {why}"));
    }
    if !copy.managed {
        return Some(format!(
            "{n} has no replica point: nothing proves the copy whole or says how old it is (it was not made by `reprise replicate`, or its metadata folder is gone)"
        ));
    }
    if copy.points.is_empty() {
        return Some(match &copy.ended {
            Some(e) => format!(
                "{n} has no replica point since its history ended on {}: {}",
                e.at.format("%Y-%m-%d %H:%M:%S UTC"),
                e.why
            ),
            None => format!("{n} has no replica point"),
        });
    }
    if let Some(why) = &copy.links {
        return Some(format!("{n}: {why}"));
    }
    if copy.points.iter().all(|p| p.verified == Verified::Bad) {
        return Some(format!(
            "{n}: every point of it FAILED verification ({})",
            copy.points
                .iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    None
}

/// Decides which point a vm whose disks are `disks` starts from.
pub fn decide(disks: &[CopyState], how: Use, ask: &Ask) -> Decision {
    let run = ask.run.as_deref();
    let mut notes = Vec::new();
    // This run already started the vm on these copies (a resumed failover): the same again.
    if how == Use::Failover
        && let Some(r) = run
        && !disks.is_empty()
        && disks.iter().all(|d| {
            d.leases
                .iter()
                .any(|l| l.kind == LeaseKind::Live && l.run == r)
        })
    {
        // Each disk's own lease: its point, and when and whether it was verified.
        let leases: Vec<&Lease> = disks
            .iter()
            .map(|d| {
                d.leases
                    .iter()
                    .find(|l| l.kind == LeaseKind::Live && l.run == r)
                    .expect("checked")
            })
            .collect();
        let mut ids: Vec<String> = Vec::new();
        // A moment is a point and when it was taken (a lease that does not say when, of an
        // older version, is its point's).
        let mut moments: Vec<(Option<&str>, Option<DateTime<Utc>>)> = Vec::new();
        for l in &leases {
            let moment = (l.point.as_deref(), l.taken_at);
            if !moments.contains(&moment) {
                // A copy started as it is is named as the choice names it (`copy-TIME`, dated
                // by its file): what reads the run's journal knows it by that name.
                let id = match moment.0 {
                    Some(p) => p.to_string(),
                    None => format!(
                        "copy-{}",
                        moment
                            .1
                            .unwrap_or(DateTime::<Utc>::MIN_UTC)
                            .format("%Y%m%dT%H%M%SZ")
                    ),
                };
                ids.push(if moments.iter().any(|m| m.0 == moment.0) {
                    format!("{id}@{}", moment.1.unwrap_or(l.at).format("%H:%M:%S%.3f"))
                } else {
                    id.to_string()
                });
                moments.push(moment);
            }
        }
        let point = ids.join("+");
        let first = leases[0];
        // Asked another point now (a resume's `--point`, `--point-before`): the copies hold
        // what the vm wrote since it started from this one, and are no longer any point.
        let of = |l: &Lease| l.written_until.or(l.taken_at).unwrap_or(l.at);
        let asked = match &ask.want {
            Some(Want::Id(id)) if leases.iter().any(|l| l.point.as_deref() != Some(id)) => {
                Some(format!("point {id}"))
            }
            Some(Want::Before(t)) if leases.iter().any(|l| of(l) > *t) => Some(format!(
                "a point taken before {}",
                t.format("%Y-%m-%d %H:%M:%S UTC")
            )),
            _ => ask
                .within
                .filter(|t| leases.iter().any(|l| of(l) > *t))
                .map(|t| format!("a point taken before {}", t.format("%Y-%m-%d %H:%M:%S UTC"))),
        };
        if let Some(asked) = asked {
            return Decision::Refuse(format!(
                "this run already started the vm on these copies from {point} (at {}), and they hold what it wrote since: it cannot start from {asked}, as asked; resume without asking another point for it to carry on from {point}, or stop it, give its copies back (`reprise release VM --run RUN`) and fail it over again from the point you want",
                first.at.format("%Y-%m-%d %H:%M:%S UTC")
            ));
        }
        return Decision::Start(Start {
            points: leases.iter().map(|l| l.point.clone()).collect(),
            roll_back: Vec::new(),
            taken_at: leases
                .iter()
                .map(|l| l.taken_at.unwrap_or(l.at))
                .min()
                .expect("one disk at least"),
            written_until: leases
                .iter()
                .map(|l| of(l))
                .max()
                .expect("one disk at least"),
            verified: moments.len() == 1 && leases.iter().all(|l| l.verified),
            notes: vec![format!(
                "this run already started the vm on these copies from {point} (at {}): it starts again from what it wrote since",
                first.at.format("%Y-%m-%d %H:%M:%S UTC")
            )],
            point,
            dropped: Vec::new(),
        });
    }
    for d in disks {
        if !d.exists {
            return Decision::Refuse(format!(
                "there is no copy at {}: replicate it first (`reprise replicate`)",
                d.path
            ));
        }
    }
    let prep: Vec<Prep> = disks
        .iter()
        .enumerate()
        .filter(|(_, d)| d.unsettled.is_some() || d.busy)
        .map(|(i, _)| Prep::Settle(i))
        .collect();
    if !prep.is_empty() {
        return Decision::Prepare(prep);
    }
    let prep: Vec<Prep> = disks
        .iter()
        .enumerate()
        .filter(|(_, d)| d.damaged.is_none() && d.changed.is_some())
        .filter_map(|(i, d)| {
            let p = d.points.last()?;
            (p.verified != Verified::Bad).then(|| Prep::Verify(i, p.id.clone()))
        })
        .collect();
    if !prep.is_empty() {
        return Decision::Prepare(prep);
    }
    for d in disks {
        if let Some(PointsSource::Previous { damage }) = &d.points_from {
            notes.push(format!(
                "{}: {damage}: its previous generation points.json.prev was used",
                name(&d.path)
            ));
        }
        for bad in &d.bad_leases {
            notes.push(format!("{}: {bad}", name(&d.path)));
        }
        for l in d
            .leases
            .iter()
            .filter(|l| l.kind == LeaseKind::Drill && Some(l.run.as_str()) != run)
        {
            notes.push(format!(
                "{} is also read by {}",
                name(&d.path),
                l.describe()
            ));
        }
    }
    let reasons: Vec<String> = disks.iter().filter_map(|d| unverified(d, run)).collect();
    if !reasons.is_empty() {
        return as_is(disks, how, ask, reasons, notes, false);
    }
    match how {
        Use::Drill => drill(disks, ask, notes),
        Use::Failover => failover(disks, ask, notes),
    }
}

/// The vm's disks as they are, when some of them are unverified: only on request.
fn as_is(
    disks: &[CopyState],
    how: Use,
    ask: &Ask,
    reasons: Vec<String>,
    mut notes: Vec<String>,
    // A failover's roll-back refused over what was written in a copy outside reprise: the
    // reasons are that, and letting it go lets the roll-back through.
    over_written: bool,
) -> Decision {
    let what = match how {
        Use::Drill => "a drill",
        Use::Failover => "a failover",
    };
    if !ask.accept_unverified {
        if over_written {
            return Decision::Refuse(format!(
                "{}: nothing was rolled back. To keep what was written (a vm ran there), start the vm from its copies as they are: name it with --accept-unverified (journaled; `reprise resume RUN --accept-unverified VM` carries on a run this stopped); if it is not needed (damage, an attack), `reprise release VM` lets it go, and the failover then rolls the copies back (`reprise resume RUN`)",
                reasons.join("; ")
            ));
        }
        // A replication refuses a copy of another source: the way out is said in its reason.
        let mend = if disks.iter().any(|d| d.other_source.is_some()) {
            "set its source right as said"
        } else {
            "replicate it (`reprise replicate`)"
        };
        return Decision::Refuse(format!(
            "{}: {what} does not start from unverified data; {mend}, or, to start it from its copy as it is, name it with --accept-unverified (journaled; `reprise resume RUN --accept-unverified VM` carries on a run this stopped)",
            reasons.join("; ")
        ));
    }
    // The disks as they are roll nothing back: a point or a time asked for is honoured only
    // where they are already no newer, never dropped without a word.
    if let Some(why) = as_is_misses(disks, ask) {
        let mend = if over_written {
            "if what was written in them is not needed, `reprise release VM` lets it go and a failover then rolls them back (`reprise resume RUN`)"
        } else {
            "make the copies' points usable (`reprise verify`, or `reprise replicate` while the primary runs), then resume the run"
        };
        return Decision::Refuse(format!(
            "{}: --accept-unverified starts its disks as they are, which is not what was asked: {why}; {mend}",
            reasons.join("; ")
        ));
    }
    notes.push(format!(
        "started from its copy as it is, UNVERIFIED, on the operator's explicit request (--accept-unverified): {}",
        reasons.join("; ")
    ));
    // A copy written since its newest point is not that point.
    let run = ask.run.as_deref();
    let usable: Vec<usize> = (0..disks.len())
        .filter(|&i| {
            let d = &disks[i];
            !d.points.is_empty() && unverified(d, run).is_none() && d.written_outside().is_none()
        })
        .collect();
    // The disks that have usable points start from one point of theirs, as a failover's
    // disks do (rolled back to the newest good one they share): accepting one disk as it is
    // does not let the others start from their newest points, each of its own moment.
    // Per disk: the point it starts from, when taken, and until when what it holds was written.
    type Chosen = Option<(String, DateTime<Utc>, DateTime<Utc>)>;
    let mut chosen: Vec<Chosen> = vec![None; disks.len()];
    let mut roll_back = Vec::new();
    let mut dropped = Vec::new();
    let subset: Vec<CopyState> = usable.iter().map(|&i| disks[i].clone()).collect();
    if how == Use::Failover && !usable.is_empty() {
        match failover(&subset, ask, Vec::new()) {
            Decision::Start(s) => {
                for (j, p) in s.points.iter().enumerate() {
                    let d = &disks[usable[j]];
                    chosen[usable[j]] = p.as_ref().map(|id| {
                        let q = d.points.iter().find(|q| &q.id == id);
                        (
                            id.clone(),
                            q.map_or(DateTime::<Utc>::MIN_UTC, |q| q.taken_at),
                            q.map_or(DateTime::<Utc>::MAX_UTC, Point::written_until),
                        )
                    });
                }
                roll_back = s
                    .roll_back
                    .into_iter()
                    .map(|(j, id)| (usable[j], id))
                    .collect();
                notes.extend(s.notes);
                dropped = s.dropped;
            }
            Decision::Refuse(why) => {
                return Decision::Refuse(format!(
                    "{}: with that accepted, its other disks still start from a point of theirs, and {why}",
                    reasons.join("; ")
                ));
            }
            Decision::Prepare(preps) => {
                return Decision::Prepare(
                    preps
                        .into_iter()
                        .map(|p| match p {
                            Prep::Settle(j) => Prep::Settle(usable[j]),
                            Prep::Verify(j, id) => Prep::Verify(usable[j], id),
                        })
                        .collect(),
                );
            }
        }
    } else {
        // A drill never rolls a copy back: each from its newest, said when they differ. A
        // copy whose newest point is bad is not that point (read again, it would be found bad
        // again and again): it starts as it is, as accepted.
        for &i in &usable {
            let p = disks[i].points.last().expect("usable: points");
            if p.verified == Verified::Bad {
                notes.push(format!(
                    "{}: its newest point {} {}, so its copy starts as it is",
                    name(&disks[i].path),
                    p.id,
                    p.bad_words()
                ));
                continue;
            }
            chosen[i] = Some((p.id.clone(), p.taken_at, p.written_until()));
        }
        if let Some(why) = newest_differ(&subset) {
            notes.push(format!("of the disks that have points, {why}"));
        }
    }
    let mut points = Vec::new();
    let mut ids = Vec::new();
    let mut oldest: Option<DateTime<Utc>> = None;
    let mut until = DateTime::<Utc>::MIN_UTC;
    for (d, c) in disks.iter().zip(chosen) {
        let (id, at, to) = match c {
            Some((id, at, to)) => {
                points.push(Some(id.clone()));
                (id, at, to)
            }
            None => {
                points.push(None);
                let at = d.mtime.unwrap_or(DateTime::<Utc>::MIN_UTC);
                (
                    format!("copy-{}", at.format("%Y%m%dT%H%M%SZ")),
                    at,
                    d.mtime.unwrap_or(DateTime::<Utc>::MAX_UTC),
                )
            }
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
        oldest = Some(oldest.map_or(at, |o| o.min(at)));
        until = until.max(to);
    }
    Decision::Start(Start {
        points,
        roll_back,
        point: ids.join("+"),
        taken_at: oldest.unwrap_or(DateTime::<Utc>::MIN_UTC),
        written_until: until,
        verified: false,
        notes,
        dropped,
    })
}

/// Why the disks as they are ([`as_is`]) are not the point or time `ask` names, if so: a copy
/// started as it is was last written at its modification time, a usable one is its newest
/// point; neither is rolled back.
fn as_is_misses(disks: &[CopyState], ask: &Ask) -> Option<String> {
    let run = ask.run.as_deref();
    match ask.want.as_ref()? {
        Want::Id(id) => Some(format!(
            "point {id} was asked, and a copy started as it is is no point"
        )),
        Want::Before(t) => {
            let newer: Vec<String> = disks
                .iter()
                .filter_map(|d| {
                    let usable = unverified(d, run).is_none() && d.written_outside().is_none();
                    let at = match d.points.last().filter(|_| usable) {
                        Some(p) => p.written_until(),
                        None => d.mtime.unwrap_or(DateTime::<Utc>::MAX_UTC),
                    };
                    (at > *t).then(|| match at == DateTime::<Utc>::MAX_UTC {
                        true => format!(
                            "when {} was last written cannot be told (its host's clock could not be read)",
                            name(&d.path)
                        ),
                        false => format!(
                            "{} holds what was written until {}",
                            name(&d.path),
                            at.format("%Y-%m-%d %H:%M:%S UTC")
                        ),
                    })
                })
                .collect();
            (!newer.is_empty()).then(|| {
                format!(
                    "a point taken before {} was asked, and {}",
                    t.format("%Y-%m-%d %H:%M:%S UTC"),
                    newer.join(", ")
                )
            })
        }
    }
}

/// A drill starts each disk from its newest point, and never rolls a copy back: when that
/// point is bad or the disks' newest points differ, it does not start (unless accepted).
fn drill(disks: &[CopyState], ask: &Ask, notes: Vec<String>) -> Decision {
    let mut reasons = Vec::new();
    for d in disks {
        let p = d.points.last().expect("checked: points");
        if p.verified == Verified::Bad {
            reasons.push(format!(
                "the newest point {} of {} {} (a failover would roll it back to its newest good point; a drill never rolls a copy back)",
                p.id,
                name(&d.path),
                p.bad_words()
            ));
        }
    }
    if let Some(why) = newest_differ(disks) {
        reasons.push(format!(
            "{why} (a failover would roll them back to the point they share; a drill never rolls a copy back)"
        ));
    }
    if !reasons.is_empty() {
        return as_is(disks, Use::Drill, ask, reasons, notes, false);
    }
    let chosen: Vec<usize> = disks.iter().map(|d| d.points.len() - 1).collect();
    start(disks, &chosen, Vec::new(), notes)
}

/// `the disks' newest points differ (P2 on a.qcow2, P1 on b.qcow2)`, when they do: by id,
/// or by the time they were taken when their ids are one (see [`Point::same_point`]).
pub fn newest_differ(disks: &[CopyState]) -> Option<String> {
    let newest: Vec<Option<&Point>> = disks.iter().map(|d| d.points.last()).collect();
    let same = |a: &Option<&Point>, b: &Option<&Point>| match (a, b) {
        (Some(a), Some(b)) => a.same_point(b),
        (None, None) => true,
        _ => false,
    };
    if newest.windows(2).all(|w| same(&w[0], &w[1])) {
        return None;
    }
    let ids: Vec<&str> = newest
        .iter()
        .map(|p| p.map(|p| p.id.as_str()).unwrap_or(""))
        .collect();
    let one_id = ids.windows(2).all(|w| w[0] == w[1]);
    let each: Vec<String> = disks
        .iter()
        .zip(&newest)
        .map(|(d, p)| match p {
            Some(p) if one_id => format!(
                "taken at {} on {}",
                p.taken_at.format("%H:%M:%S%.3f"),
                name(&d.path)
            ),
            _ => format!(
                "{} on {}",
                p.map(|p| p.id.as_str()).unwrap_or(""),
                name(&d.path)
            ),
        })
        .collect();
    Some(if one_id {
        format!(
            "the disks' newest points are both named {} but come from two replications (a replication stopped between them and another ran within the same second: {})",
            ids[0],
            each.join(", ")
        )
    } else {
        format!(
            "the disks' newest points differ (a replication stopped between them: {})",
            each.join(", ")
        )
    })
}

/// Whether every disk holds, usable, the point `p` of the first disk (see
/// [`Point::same_point`]).
fn on_every_disk(disks: &[CopyState], p: &Point, usable: impl Fn(&Point) -> bool) -> bool {
    disks
        .iter()
        .all(|d| d.points.iter().any(|q| q.same_point(p) && usable(q)))
}

/// A failover starts from the point asked for, else from the newest point good on every
/// disk (rolling back the disks whose newest it is not).
fn failover(disks: &[CopyState], ask: &Ask, mut notes: Vec<String>) -> Decision {
    let mut want = ask.want.clone();
    // Why the disks would each start from their own point, when no one point will do.
    let mut apart = None;
    if want.is_none()
        && let Some((id, why)) = common_fallback(disks)
    {
        // A vm's disks start from one point: a disk rolled back takes the others with it.
        match id {
            Some(id) => {
                notes.push(format!("{why}: every disk starts from point {id}"));
                want = Some(Want::Id(id));
            }
            None => {
                apart = Some(format!(
                    "{why}, and no good point is on every disk: each disk would start from its own newest good point"
                ))
            }
        }
    }
    // Asked for by time: the newest point before it that every disk holds good, so that
    // the disks do not each go back to a different moment.
    if let Some(Want::Before(t)) = want
        && disks.len() > 1
    {
        let at = t.format("%Y-%m-%d %H:%M:%S UTC");
        let usable = |p: &Point| p.verified != Verified::Bad && p.holds_only_before(t);
        let common = disks[0]
            .points
            .iter()
            .rev()
            .filter(|p| usable(p))
            .find(|p| on_every_disk(disks, p, usable))
            .map(|p| p.id.clone());
        match common {
            Some(id) => {
                notes.push(format!(
                    "every disk starts from point {id}, the newest good point taken before {at} that every disk holds"
                ));
                want = Some(Want::Id(id));
            }
            None => {
                apart = Some(format!(
                    "no good point taken before {at} is on every disk: each disk would start from its own newest good point before it"
                ))
            }
        }
    }
    let mut chosen = Vec::new();
    let mut roll_back = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        let k = match candidates(d, want.as_ref()) {
            Ok(c) => c,
            Err(e) => return Decision::Refuse(e),
        };
        let newest = d.points.len() - 1;
        if k != newest {
            roll_back.push((i, d.points[k].id.clone()));
        }
        chosen.push(k);
    }
    // A roll-back replaces what was written in the copy outside reprise since its newest
    // point (a vm run on it by hand), which no point holds: the vm starts from the copies as
    // they are on the operator's word, or once that was let go (`reprise release`).
    let written: Vec<String> = roll_back
        .iter()
        .filter_map(|(i, id)| {
            let d = &disks[*i];
            let why = d.written_outside()?;
            Some(format!(
                "{}: {why}; rolling it back to point {id} would replace what was written there since, which is in no point",
                name(&d.path)
            ))
        })
        .collect();
    if !written.is_empty() {
        return as_is(disks, Use::Failover, ask, written, notes, true);
    }
    // A point named, and a time asked too: the point must hold nothing written after it.
    if let Some(t) = ask.within
        && let Some((d, k)) = disks
            .iter()
            .zip(&chosen)
            .find(|(d, k)| !d.points[**k].holds_only_before(t))
    {
        let p = &d.points[*k];
        return Decision::Refuse(format!(
            "point {} of {} was named for it, and it holds what was written until {}, after {}, the time this run was asked to start from before (--point-before): name a point taken before that time for it (`reprise points` lists them; on a resume, `--point` names it again)",
            p.id,
            name(&d.path),
            p.written_until().format("%Y-%m-%d %H:%M:%S UTC"),
            t.format("%Y-%m-%d %H:%M:%S UTC"),
        ));
    }
    // One point asked for (or fallen back to) is one moment on every disk.
    if let Some(Want::Id(id)) = &want
        && let Some((first, rest)) = disks.split_first()
    {
        let p = &first.points[chosen[0]];
        let other = rest
            .iter()
            .zip(&chosen[1..])
            .find(|(d, k)| !d.points[**k].same_point(p));
        if let Some((d, k)) = other {
            return Decision::Refuse(format!(
                "point {id} is not one moment on every disk: on {} it was taken at {}, on {} at {} (two replications within one second, the first one cut): starting from it would start the vm from disks of two moments; name an older point that every disk holds (`reprise points` lists them)",
                name(&first.path),
                p.taken_at.format("%H:%M:%S%.3f"),
                name(&d.path),
                d.points[*k].taken_at.format("%H:%M:%S%.3f"),
            ));
        }
    }
    // Disks of different moments are no state the vm was ever in (a database on one, its
    // log on another): started so only on the operator's word.
    let points: Vec<&Point> = disks
        .iter()
        .zip(&chosen)
        .map(|(d, &k)| &d.points[k])
        .collect();
    if points.iter().any(|p| !p.same_point(points[0])) {
        let each = disks
            .iter()
            .zip(&points)
            .map(|(d, p)| {
                format!(
                    "{} taken at {} on {}",
                    p.id,
                    p.taken_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
                    name(&d.path)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let why = apart.unwrap_or_else(|| "its disks hold no one point".to_string());
        if !ask.accept_unverified {
            return Decision::Refuse(format!(
                "{why} ({each}): that would start the vm from disks of different moments, a state it was never in, so a failover does not do it on its own. Name a point every disk holds good (`--point VM=POINT`; `reprise points VM` lists each disk's), replicate the vm again while its primary still runs (`reprise replicate VM`), or, to start each disk from its own point all the same, name the vm with --accept-unverified (journaled as not verified; `reprise resume RUN --accept-unverified VM` carries on a run this stopped)"
            ));
        }
        notes.push(format!(
            "{why} ({each}): started so on the operator's explicit request (--accept-unverified)"
        ));
    }
    start(disks, &chosen, roll_back, notes)
}

fn start(
    disks: &[CopyState],
    chosen: &[usize],
    roll_back: Vec<(usize, String)>,
    mut notes: Vec<String>,
) -> Decision {
    let mut ids: Vec<String> = Vec::new();
    let mut moments: Vec<&Point> = Vec::new();
    let mut oldest: Option<DateTime<Utc>> = None;
    let mut verified = true;
    let mut dropped = Vec::new();
    for (d, &k) in disks.iter().zip(chosen) {
        let p = &d.points[k];
        match p.verified {
            Verified::Yes => {}
            Verified::No => {
                verified = false;
                notes.push(format!(
                    "point {} of {} was never verified",
                    p.id,
                    name(&d.path)
                ));
            }
            Verified::Bad => {
                verified = false;
                notes.push(format!(
                    "point {} of {} {}: the vm starts from a damaged copy",
                    p.id,
                    name(&d.path),
                    p.bad_words()
                ));
            }
        }
        if k + 1 < d.points.len() {
            dropped.extend(d.points[k + 1..].iter().map(|q| q.id.clone()));
        }
        // One entry a moment: a point of the same id taken at another time is another.
        if !moments.iter().any(|q| q.same_point(p)) {
            ids.push(if moments.iter().any(|q| q.id == p.id) {
                format!("{}@{}", p.id, p.taken_at.format("%H:%M:%S%.3f"))
            } else {
                p.id.clone()
            });
            moments.push(p);
        }
        oldest = Some(oldest.map_or(p.taken_at, |o| o.min(p.taken_at)));
    }
    let written_until = disks
        .iter()
        .zip(chosen)
        .map(|(d, &k)| d.points[k].written_until())
        .max()
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    // Disks of several moments make no one verified point of the vm, whatever each is.
    if moments.len() > 1 {
        verified = false;
        notes.push(format!(
            "its disks start from {} different moments ({}): not one verified point of the vm",
            moments.len(),
            ids.join(", ")
        ));
    }
    dropped.sort();
    dropped.dedup();
    Decision::Start(Start {
        points: disks
            .iter()
            .zip(chosen)
            .map(|(d, &k)| Some(d.points[k].id.clone()))
            .collect(),
        roll_back,
        point: ids.join("+"),
        taken_at: oldest.unwrap_or(DateTime::<Utc>::MIN_UTC),
        written_until,
        verified,
        notes,
        dropped,
    })
}

/// When a disk's newest point failed verification, or the disks' newest points differ, the
/// newest point id that every disk holds and none failed (none when they share no good
/// point), and why.
pub fn common_fallback(disks: &[CopyState]) -> Option<(Option<String>, String)> {
    if disks.iter().any(|d| d.points.is_empty()) {
        return None;
    }
    // Each disk whose newest point is bad, and why (failed verification, never confirmed
    // as one instant, torn): the operator goes by it.
    let bad: Vec<String> = disks
        .iter()
        .filter_map(|d| {
            let p = d.points.last().filter(|p| p.verified == Verified::Bad)?;
            Some(format!(
                "{}'s newest point {} {}",
                name(&d.path),
                p.id,
                p.bad_words()
            ))
        })
        .collect();
    let why = if bad.is_empty() {
        newest_differ(disks)?
    } else {
        bad.join("; ")
    };
    let id = disks[0]
        .points
        .iter()
        .rev()
        .find(|p| on_every_disk(disks, p, |q| q.verified != Verified::Bad))
        .map(|p| p.id.clone());
    Some((id, why))
}

/// The point a disk starts from: the one asked for, or its newest that did not fail
/// verification (its newest, said loudly, when all did).
fn candidates(disk: &CopyState, want: Option<&Want>) -> Result<usize, String> {
    let n = name(&disk.path);
    let ids = || {
        disk.points
            .iter()
            .map(|p| format!("{} ({})", p.id, p.verified))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let good = |k: &usize| disk.points[*k].verified != Verified::Bad;
    match want {
        Some(Want::Id(id)) => match disk.points.iter().position(|p| &p.id == id) {
            Some(k) if good(&k) => Ok(k),
            Some(k) => Err(format!(
                "point {id} of {n} {} and is never used; its points: {}",
                disk.points[k].bad_words(),
                ids()
            )),
            None => Err(format!("{n} has no point {id}; its points: {}", ids())),
        },
        Some(Want::Before(t)) => (0..disk.points.len())
            .rev()
            .find(|k| good(k) && disk.points[*k].holds_only_before(*t))
            .ok_or_else(|| {
                format!(
                    "{n} has no good point taken before {}; its points: {}",
                    t.format("%Y-%m-%d %H:%M:%S UTC"),
                    ids()
                )
            }),
        None => Ok((0..disk.points.len())
            .rev()
            .find(good)
            .unwrap_or(disk.points.len() - 1)),
    }
}

/// How a copy stands, for `reprise check` and `reprise status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warning,
    Failed,
}

/// Why a replication into the copy would be refused now, before anything is written in it
/// (as `Store::apply` and a backup set's `apply-tree` refuse it): a lease (a drill that still
/// reads it, a vm or a failover that uses it, one that cannot be read); what was written in it
/// outside reprise and not let go; a backup set's folder written after a failback copied it
/// back; points read from another source ([`note_sources`] first). `None` when it would be
/// written. A backup set's folder (`folder`) whose seal moved is not counted as written: a
/// change of its files' status only (a remount, `chown`, a relabel) moves it too, and the
/// replication reads such a folder whole and goes on when its files are still its point's.
pub fn replication_refusal(copy: &CopyState, item: &str, folder: bool) -> Option<String> {
    let mut why: Vec<String> = Vec::new();
    why.extend(copy.bad_leases.iter().map(|b| {
        format!("{b}: it holds the copy (`reprise release {item}` frees it once nothing uses it)")
    }));
    for l in &copy.leases {
        why.push(match l.kind {
            LeaseKind::Drill => format!(
                "read by {} (`reprise resume {}` cleans that drill up; once its drill copy is gone, `reprise release {item} --run {}`)",
                l.describe(),
                l.run,
                l.run
            ),
            LeaseKind::Live => format!("used by {}", l.describe()),
        });
    }
    if let Some(w) = copy.written_outside().filter(|_| !folder) {
        why.push(format!(
            "{w}; it is in no point (`reprise release {item}` lets it go, or a failback copies it back)"
        ));
    } else if !folder
        && copy.points.is_empty()
        && copy.stamp.is_some()
        && copy.accepted.is_some()
        && copy.accepted != copy.stamp
    {
        why.push(format!(
            "the copy changed since it was let go (by a failback or `reprise release`); it is in no point (`reprise release {item}` lets it go again)"
        ));
    }
    if let Some(f) = &copy.foreign {
        why.push(f.clone());
    }
    if let Some(r) = &copy.returned {
        why.push(r.clone());
    }
    if let Some(o) = &copy.other_source {
        why.push(o.clone());
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// One copy judged against its RPO target: the worst of what is wrong with it, and why.
pub fn judge(
    copy: &CopyState,
    item: &str,
    rpo_s: Option<u64>,
    now: DateTime<Utc>,
) -> (Level, String) {
    let mut found: Vec<(Level, String)> = Vec::new();
    if !copy.exists {
        return (
            Level::Failed,
            format!("no copy at {}: replicate it before a drill", copy.path),
        );
    }
    for bad in &copy.bad_leases {
        found.push((
            Level::Failed,
            format!(
                "{bad}: it holds the copy, so nothing replicates into it; once no drill or vm uses the copy, `reprise release {item}` frees it"
            ),
        ));
    }
    for l in &copy.leases {
        match l.kind {
            LeaseKind::Live if l.of_backup_set() => found.push((
                Level::Failed,
                format!(
                    "it is the data of {}: the recovery site writes there, no replica any more; a failback that replicates it back releases it, or `reprise release {item}` once what it holds is kept elsewhere",
                    l.describe()
                ),
            )),
            LeaseKind::Live => found.push((
                Level::Failed,
                format!(
                    "it is the disk of {}: no replica any more; fail back, then replicate it (or `reprise release {item}` if that vm no longer runs there)",
                    l.describe()
                ),
            )),
            LeaseKind::Drill => found.push((
                Level::Warning,
                format!(
                    "read by {}: replications of it wait for that drill's cleanup (`reprise resume {}`; once its drill copy is gone, `reprise release {item} --run {}`)",
                    l.describe(),
                    l.run,
                    l.run
                ),
            )),
        }
    }
    if let Some(u) = &copy.unsettled {
        found.push((
            Level::Warning,
            format!("{u}: the next replication, verify or failover settles it"),
        ));
    }
    let live = copy.leases.iter().any(|l| l.kind == LeaseKind::Live);
    // What only its folder holds, which no replication writes over until it is kept.
    if let Some(why) = &copy.returned {
        found.push((
            Level::Failed,
            format!("{why} (`reprise replicate {item}` stops until then)"),
        ));
    }
    match unverified(copy, None) {
        Some(_) if live => {}
        // A replication refuses it too: the way out is in the inventory or the history.
        Some(why) if copy.other_source.is_some() => found.push((
            Level::Failed,
            format!("UNVERIFIED: {why}; `reprise replicate` refuses it until then"),
        )),
        // No replication writes over it until it is taken as a copy or moved.
        Some(why) if let Some(f) = &copy.foreign => {
            found.push((Level::Failed, format!("UNVERIFIED: {why}; {f}")))
        }
        Some(why) => found.push((
            Level::Failed,
            format!(
                "UNVERIFIED: {why}; a failover refuses it unless named (--accept-unverified); `reprise replicate` makes a new verified point"
            ),
        )),
        None => {
            if let Some(why) = &copy.changed {
                // Written outside reprise and not let go, a replication refuses it too.
                let mend = match copy.written_outside() {
                    Some(_) => format!(
                        "`reprise verify {item}` reads it again by hash (a copy only touched is its point again); written, what it holds is in no point, and a replication or a failover's roll-back refuses to replace it until `reprise release {item}` lets it go (or a failback copies it back)"
                    ),
                    None => format!(
                        "`reprise verify {item}` reads it again by hash, `reprise replicate` makes a new point"
                    ),
                };
                found.push((Level::Failed, format!("UNVERIFIED: {why}; {mend}")));
            }
            // The copy is right as of its newest point, but the disk is written where QEMU
            // does not see: every replication reads it whole until a check finds none.
            if let Some(n) = copy.points.last().and_then(Point::missed) {
                found.push((
                    Level::Warning,
                    format!(
                        "a check found {n} blocks its dirty bitmap missed (something writes the disk outside QEMU: a tool run on the image file while the vm was stopped, a restore from elsewhere), and none has found it whole since: every replication reads the whole disk and checks it again, taking the time of a first copy's read, until a check finds none; find what writes it, or set `changed_blocks = false` for vm {item}"
                    ),
                ));
            }
            if let Some(PointsSource::Previous { damage }) = &copy.points_from {
                found.push((
                    Level::Warning,
                    format!(
                        "{damage}: its previous generation points.json.prev is used; the next replication or `reprise verify {item}` rewrites it"
                    ),
                ));
            }
            found.push(judge_points(&copy.points, rpo_s, now));
        }
    }
    let worst = found.iter().map(|(l, _)| *l).max().unwrap_or(Level::Ok);
    let mut details: Vec<String> = found
        .iter()
        .filter(|(l, _)| *l == worst)
        .map(|(_, d)| d.clone())
        .collect();
    details.extend(
        found
            .iter()
            .filter(|(l, _)| *l != worst && *l != Level::Ok)
            .map(|(_, d)| d.clone()),
    );
    (worst, details.join("; "))
}

/// The newest point against the RPO.
fn judge_points(points: &[Point], rpo_s: Option<u64>, now: DateTime<Utc>) -> (Level, String) {
    let newest = points.last().expect("judged only with points");
    let age = (now - newest.taken_at).num_seconds().max(0) as u64;
    let rpo = match rpo_s {
        Some(rpo) => format!("RPO {}", crate::duration::human_secs(rpo)),
        None => "no RPO target".to_string(),
    };
    match newest.verified {
        Verified::Bad => (
            Level::Failed,
            format!(
                "newest point {} {}: a failover now would start from a damaged copy, or roll it back; replicate again (the damaged blocks are sent again)",
                newest.id,
                newest.bad_words()
            ),
        ),
        // Dated ahead of this clock (the machine that replicated it runs ahead, or this one
        // went back): how old it is cannot be told, so it is never taken as fresh.
        _ if crate::replica::point::dated_ahead(newest.taken_at, now) => (
            Level::Failed,
            format!(
                "newest point {} is dated {}, {} ahead of this machine's clock (the clock of the machine that replicated it runs ahead?): its age against the {rpo} cannot be told; set the clocks right (NTP), then replicate again",
                newest.id,
                newest.taken_at.format("%Y-%m-%d %H:%M:%S UTC"),
                crate::duration::human_secs((newest.taken_at - now).num_seconds().max(0) as u64)
            ),
        ),
        _ if rpo_s.is_some_and(|r| age > r) => (
            Level::Failed,
            format!(
                "newest point {} is {} old, older than the {rpo}: a failover now would lose more than allowed",
                newest.id,
                crate::duration::human_secs(age),
            ),
        ),
        Verified::No => (
            Level::Warning,
            format!(
                "newest point {} ({} old, {rpo}) was never verified: run `reprise verify`",
                newest.id,
                crate::duration::human_secs(age)
            ),
        ),
        Verified::Yes => (
            Level::Ok,
            format!(
                "newest point {} {} old ({rpo}), verified{}; {} points kept",
                newest.id,
                crate::duration::human_secs(age),
                newest
                    .checked_at
                    .map(|c| format!(
                        " {} ago",
                        crate::duration::human_secs((now - c).num_seconds().max(0) as u64)
                    ))
                    .unwrap_or_default(),
                points.len()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::meta::{Ended, Lease};

    fn point(id: &str, at: &str, verified: &str) -> Point {
        serde_json::from_str(&format!(
            r#"{{"id":"{id}","taken_at":"{at}","source":"s","size":1,"blake3":"{}","verified":"{verified}","checked_at":null,"received_bytes":0,"duration_ms":0}}"#,
            "00".repeat(32)
        ))
        .unwrap()
    }

    fn disk(name: &str, points: &[(&str, &str, &str)]) -> CopyState {
        CopyState {
            path: format!("/r/{name}"),
            exists: true,
            size: 1,
            mtime: Some("2026-11-28T00:00:00Z".parse().unwrap()),
            managed: !points.is_empty(),
            points: points.iter().map(|(id, at, v)| point(id, at, v)).collect(),
            points_from: (!points.is_empty()).then_some(PointsSource::Current),
            ..CopyState::default()
        }
    }

    /// One disk accepted as it is (no point) does not let a failover start the vm's other
    /// disks from their newest points, each of its own moment: those that share a good point
    /// start from it, rolled back to it as a failover's disks are; a bad newest point is
    /// never started from.
    #[test]
    fn a_disk_accepted_as_it_is_leaves_the_others_at_one_point_of_theirs() {
        let sys = disk(
            "sys",
            &[
                ("P1", "2026-11-28T01:00:00Z", "yes"),
                ("P2", "2026-11-28T02:00:00Z", "yes"),
            ],
        );
        let data = disk("data", &[("P1", "2026-11-28T01:00:00Z", "yes")]);
        let mut logs = disk("logs", &[]);
        logs.mtime = Some("2026-11-28T03:00:00Z".parse().unwrap());
        let accepted = Ask {
            accept_unverified: true,
            ..Ask::default()
        };
        // The disk taken as it is first: the others' choice maps back to their own places.
        let s = started(decide(
            &[logs.clone(), sys.clone(), data.clone()],
            Use::Failover,
            &accepted,
        ));
        assert_eq!(
            s.points,
            [None, Some("P1".into()), Some("P1".into())],
            "{s:?}"
        );
        assert_eq!(s.roll_back, [(1, "P1".to_string())], "{s:?}");
        assert!(!s.verified, "{s:?}");
        assert!(
            s.point.starts_with("copy-") && s.point.ends_with("+P1"),
            "{s:?}"
        );
        // Its data is of 01:00 on two disks and of up to 03:00 on the third: a time asked
        // later (a resume's) is judged by the latest.
        assert_eq!(s.taken_at.to_rfc3339(), "2026-11-28T01:00:00+00:00");
        assert_eq!(s.written_until.to_rfc3339(), "2026-11-28T03:00:00+00:00");
        // The newest point of a disk bad (a torn or never confirmed copy): its good one.
        let mut bad = sys.clone();
        bad.points[1].verified = Verified::Bad;
        let s = started(decide(
            &[bad.clone(), data.clone(), logs.clone()],
            Use::Failover,
            &accepted,
        ));
        assert_eq!(
            s.points,
            [Some("P1".into()), Some("P1".into()), None],
            "{s:?}"
        );
        // A drill, which rolls nothing back, starts that disk as it is, never from its bad
        // newest point (read again, found bad again, without end).
        let s = started(decide(
            &[bad, data.clone(), logs.clone()],
            Use::Drill,
            &accepted,
        ));
        assert_eq!(s.points, [None, Some("P1".into()), None], "{s:?}");
        assert!(
            s.notes.iter().any(|n| n
                .contains("its newest point P2 FAILED verification, so its copy starts as it is")),
            "{s:?}"
        );
        // A drill rolls nothing back: each its newest, and the difference is said.
        let s = started(decide(&[sys, data, logs], Use::Drill, &accepted));
        assert_eq!(
            s.points,
            [Some("P2".into()), Some("P1".into()), None],
            "{s:?}"
        );
        assert!(
            s.notes
                .iter()
                .any(|n| n
                    .contains("of the disks that have points, the disks' newest points differ")),
            "{s:?}"
        );
    }

    fn started(d: Decision) -> Start {
        match d {
            Decision::Start(s) => s,
            other => panic!("not started: {other:?}"),
        }
    }

    fn refused(d: Decision) -> String {
        match d {
            Decision::Refuse(why) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// A copy whose points were read from another source than the one the inventory gives
    /// it now (two vms' copies swapped, a copy path given to another vm) is not started as a
    /// point, by a failover or a drill: its points may be the other's data. Named, it starts
    /// as it is, unverified; `check` fails on it.
    #[test]
    fn a_copy_whose_points_are_of_another_source_is_not_started_as_a_point() {
        let at = "2026-11-28T01:00:00Z";
        let mut disks = vec![
            disk("sys", &[("P1", at, "yes")]),
            disk("data", &[("P1", at, "yes")]),
        ];
        note_sources(&mut disks, &["s".to_string(), "s".to_string()]);
        assert!(disks.iter().all(|d| d.other_source.is_none()));
        assert!(started(decide(&disks, Use::Failover, &Ask::default())).verified);
        // No source given: not checked.
        note_sources(&mut disks, &[]);
        assert!(disks.iter().all(|d| d.other_source.is_none()));
        // The same path written otherwise is the same source; another is not.
        for p in disks.iter_mut().flat_map(|d| d.points.iter_mut()) {
            p.source = "hv-main:/srv/img/a.qcow2".into();
        }
        for same in ["hv-main:/srv//img/./a.qcow2", "hv-main:/srv/img/a.qcow2/"] {
            note_sources(&mut disks, &[same.to_string(), same.to_string()]);
            assert!(disks.iter().all(|d| d.other_source.is_none()), "{same}");
        }
        for other in [
            "hv-pra:/srv/img/a.qcow2",
            "hv-main:/srv/img/b.qcow2",
            "hv-main:srv/img/a.qcow2",
            "hv-main:/srv/x/../img/a.qcow2",
        ] {
            let mut d = disks.clone();
            note_sources(&mut d, &[other.to_string(), other.to_string()]);
            assert!(d.iter().all(|d| d.other_source.is_some()), "{other}");
        }
        for p in disks.iter_mut().flat_map(|d| d.points.iter_mut()) {
            p.source = "s".into();
        }

        note_sources(
            &mut disks,
            &["s".to_string(), "hv-main:/img/other.qcow2".to_string()],
        );
        assert!(disks[0].other_source.is_none());
        for how in [Use::Failover, Use::Drill] {
            let why = refused(decide(&disks, how, &Ask::default()));
            assert!(
                why.contains("data: its points are of s (the newest, P1), and the inventory gives it to hv-main:/img/other.qcow2")
                    && why.contains("set its source right as said")
                    && !why.contains("replicate it (`reprise replicate`)"),
                "{why}"
            );
        }
        let named = Ask {
            accept_unverified: true,
            ..Ask::default()
        };
        let s = started(decide(&disks, Use::Failover, &named));
        assert!(!s.verified, "{s:?}");
        assert_eq!(s.points, vec![Some("P1".to_string()), None]);
        let (level, why) = judge(&disks[1], "vm", None, at.parse().unwrap());
        assert_eq!(level, Level::Failed, "{why}");
        assert!(
            why.contains("another disk's data") && why.contains("`reprise replicate` refuses it"),
            "{why}"
        );
        assert_eq!(
            judge(&disks[0], "vm", None, at.parse().unwrap()).0,
            Level::Ok
        );
    }

    #[test]
    fn a_failover_starts_from_the_newest_good_point_or_the_one_asked_for() {
        let sys = disk(
            "sys",
            &[
                ("P1", "2026-11-28T01:00:00Z", "yes"),
                ("P2", "2026-11-28T02:00:00Z", "yes"),
                ("P3", "2026-11-28T03:00:00Z", "bad"),
            ],
        );
        let data = disk(
            "data",
            &[
                ("P1", "2026-11-28T01:00:00Z", "yes"),
                ("P2", "2026-11-28T02:00:00Z", "bad"),
                ("P3", "2026-11-28T03:00:00Z", "yes"),
            ],
        );
        let ask = Ask::default();
        // The vm falls back as a whole to the newest point good on every disk.
        let s = started(decide(&[sys.clone(), data.clone()], Use::Failover, &ask));
        assert_eq!(s.point, "P1");
        assert_eq!(s.roll_back, [(0, "P1".to_string()), (1, "P1".to_string())]);
        assert_eq!(s.dropped, ["P2", "P3"]);
        assert!(s.verified);
        assert!(
            s.notes[0].contains("sys's newest point P3 FAILED verification")
                && !s.notes[0].contains("data's newest point"),
            "{s:?}"
        );
        // A newest point never confirmed as one instant is said as such, not as a failed
        // verification (which `reprise verify` would not mend).
        let mut held = sys.clone();
        held.points.last_mut().unwrap().mark_pending();
        let s = started(decide(std::slice::from_ref(&held), Use::Failover, &ask));
        assert_eq!(s.point, "P2");
        assert!(
            s.notes[0].contains("sys's newest point P3 is unusable (")
                && !s.notes[0].contains("FAILED verification"),
            "{s:?}"
        );
        // One disk: its newest good point.
        let s = started(decide(std::slice::from_ref(&sys), Use::Failover, &ask));
        assert_eq!((s.point.as_str(), s.roll_back.len()), ("P2", 1));
        // A replication stopped after the first disk: the point both share.
        let ahead = disk(
            "sys",
            &[
                ("P1", "2026-11-28T01:00:00Z", "yes"),
                ("P2", "2026-11-28T02:00:00Z", "yes"),
            ],
        );
        let behind = disk("data", &[("P1", "2026-11-28T01:00:00Z", "yes")]);
        let s = started(decide(
            &[ahead.clone(), behind.clone()],
            Use::Failover,
            &ask,
        ));
        assert_eq!(s.point, "P1");
        assert!(s.notes[0].contains("newest points differ"), "{s:?}");
        // Asked for by id, or by time; a bad or unknown point is refused with the list.
        let want = |w: Want| Ask {
            want: Some(w),
            ..Ask::default()
        };
        let s = started(decide(
            std::slice::from_ref(&sys),
            Use::Failover,
            &want(Want::Id("P1".into())),
        ));
        assert_eq!(s.point, "P1");
        let why = refused(decide(
            std::slice::from_ref(&sys),
            Use::Failover,
            &want(Want::Id("P3".into())),
        ));
        assert!(
            why.contains("P3 of sys FAILED verification and is never used"),
            "{why}"
        );
        // Marked unusable (its source said it may be torn): refused, saying why.
        let mut torn = sys.clone();
        torn.points[2].unusable = Some("its source said it may be torn".into());
        let why = refused(decide(
            std::slice::from_ref(&torn),
            Use::Failover,
            &want(Want::Id("P3".into())),
        ));
        assert!(
            why.contains("P3 of sys is unusable (its source said it may be torn)"),
            "{why}"
        );
        let why = refused(decide(
            std::slice::from_ref(&sys),
            Use::Failover,
            &want(Want::Id("P9".into())),
        ));
        assert!(
            why.contains("no point P9") && why.contains("P1 (yes)"),
            "{why}"
        );
        let s = started(decide(
            std::slice::from_ref(&data),
            Use::Failover,
            &want(Want::Before("2026-11-28T02:30:00Z".parse().unwrap())),
        ));
        assert_eq!(s.point, "P1", "the bad P2 is passed over");
        // A point named, and a time asked too (`--point db=P2`, then `--point-before` at a
        // resume): the named point starts only if it holds nothing written after the time.
        let named = |id: &str, within: &str| Ask {
            want: Some(Want::Id(id.into())),
            within: Some(within.parse().unwrap()),
            ..Ask::default()
        };
        let why = refused(decide(
            std::slice::from_ref(&sys),
            Use::Failover,
            &named("P2", "2026-11-28T01:30:00Z"),
        ));
        assert!(
            why.contains("point P2 of sys was named for it")
                && why.contains(
                    "written until 2026-11-28 02:00:00 UTC, after 2026-11-28 01:30:00 UTC"
                )
                && why.contains("--point-before"),
            "{why}"
        );
        let s = started(decide(
            std::slice::from_ref(&sys),
            Use::Failover,
            &named("P1", "2026-11-28T01:30:00Z"),
        ));
        assert_eq!(s.point, "P1", "a named point before the time starts");
        // A point whose newest file was written after the time (a backup set, read file by
        // file from its time on) is not taken as before it.
        let mut late = disk(
            "set",
            &[
                ("P1", "2026-11-28T01:00:00Z", "yes"),
                ("P2", "2026-11-28T02:29:00Z", "yes"),
            ],
        );
        late.points[1].newest_file = Some("2026-11-28T02:31:00Z".parse().unwrap());
        let s = started(decide(
            std::slice::from_ref(&late),
            Use::Failover,
            &want(Want::Before("2026-11-28T02:30:00Z".parse().unwrap())),
        ));
        assert_eq!(s.point, "P1", "P2 holds a file written after the time");
    }

    #[test]
    fn a_point_asked_for_by_time_is_one_point_for_every_disk() {
        let sys = disk(
            "sys",
            &[
                ("P1", "2026-11-28T01:00:00Z", "yes"),
                ("P2", "2026-11-28T02:00:00Z", "yes"),
            ],
        );
        let data = disk(
            "data",
            &[
                ("P1", "2026-11-28T01:00:00Z", "yes"),
                ("P2", "2026-11-28T02:00:00Z", "bad"),
            ],
        );
        // A replication stopped between the disks: the second never got P2.
        let behind = disk("data", &[("P1", "2026-11-28T01:00:00Z", "yes")]);
        let before = Ask {
            want: Some(Want::Before("2026-11-28T02:30:00Z".parse().unwrap())),
            ..Ask::default()
        };
        for other in [data, behind] {
            let s = started(decide(&[sys.clone(), other], Use::Failover, &before));
            assert_eq!(s.point, "P1", "{s:?}");
            assert_eq!(s.points, [Some("P1".into()), Some("P1".into())]);
            assert_eq!(s.roll_back[0], (0, "P1".to_string()));
            assert!(s.notes.iter().any(|n| n.contains("every disk")), "{s:?}");
        }
        // No good point before the time on every disk: each its own, said.
        let late = disk("data", &[("P2", "2026-11-28T02:00:00Z", "yes")]);
        let s = started(decide(&[sys.clone(), late], Use::Failover, &before));
        assert_eq!(s.point, "P2");
        let mut only = sys.clone();
        only.points.remove(1);
        let other = disk("data", &[("P0", "2026-11-28T00:30:00Z", "yes")]);
        // No good point before the time on every disk: not started, saying what to do.
        let why = refused(decide(
            &[only.clone(), other.clone()],
            Use::Failover,
            &before,
        ));
        assert!(
            why.contains("no good point taken before 2026-11-28 02:30:00 UTC is on every disk")
                && why.contains("P1 taken at 2026-11-28 01:00:00.000 UTC on sys")
                && why.contains("P0 taken at 2026-11-28 00:30:00.000 UTC on data")
                && why.contains("--accept-unverified"),
            "{why}"
        );
        // Named with --accept-unverified: each disk its own, said.
        let accepted = Ask {
            accept_unverified: true,
            ..before
        };
        let s = started(decide(&[only, other], Use::Failover, &accepted));
        assert_eq!(s.point, "P1+P0");
        assert!(
            s.notes
                .iter()
                .any(|n| n.contains("no good point") && n.contains("operator's explicit request")),
            "{s:?}"
        );
        // Two moments are not one verified point of the vm, each disk's point good as it is.
        assert!(!s.verified, "{s:?}");
        assert!(
            s.notes
                .iter()
                .any(|n| n.contains("2 different moments (P1, P0)")),
            "{s:?}"
        );
    }

    #[test]
    fn unverified_copies_start_only_when_named_and_never_as_verified() {
        let good = disk("sys", &[("P1", "2026-11-28T01:00:00Z", "yes")]);
        let bare = disk("data", &[]);
        let mut damaged = disk("data", &[]);
        damaged.managed = true;
        damaged.damaged =
            Some("points.json is damaged (it is empty) and there is no points.json.prev".into());
        let mut ended = disk("data", &[]);
        ended.managed = true;
        ended.ended = Some(Ended {
            missed: None,
            at: "2026-11-28T04:00:00Z".parse().unwrap(),
            why: "vm erp-db was started on it by run r1".into(),
            points: vec!["P1".into()],
        });
        for (copy, says) in [
            (&bare, "has no replica point: nothing proves"),
            (&damaged, "cannot be read: points.json is damaged"),
            (&ended, "since its history ended"),
        ] {
            for how in [Use::Failover, Use::Drill] {
                let disks = [good.clone(), copy.clone()];
                let why = refused(decide(&disks, how, &Ask::default()));
                assert!(
                    why.contains(says) && why.contains("--accept-unverified"),
                    "{why}"
                );
                let s = started(decide(
                    &disks,
                    how,
                    &Ask {
                        accept_unverified: true,
                        ..Ask::default()
                    },
                ));
                assert!(!s.verified);
                assert_eq!(s.points, [Some("P1".to_string()), None]);
                assert_eq!(s.point, "P1+copy-20261128T000000Z");
                assert!(s.notes.iter().any(|n| n.contains("UNVERIFIED")), "{s:?}");
                // A time or a point asked for is never dropped: the disks as they are start
                // only when none is newer than the time; a point they cannot be.
                let asking = |want: Want| Ask {
                    want: Some(want),
                    accept_unverified: true,
                    ..Ask::default()
                };
                let before = |t: &str| asking(Want::Before(t.parse().unwrap()));
                let why = refused(decide(&disks, how, &before("2026-11-28T00:30:00Z")));
                assert!(
                    why.contains("a point taken before 2026-11-28 00:30:00 UTC was asked")
                        && why.contains("sys holds what was written until 2026-11-28 01:00:00 UTC")
                        && !why.contains("data holds"),
                    "{why}"
                );
                let s = started(decide(&disks, how, &before("2026-11-28T02:00:00Z")));
                assert_eq!(s.point, "P1+copy-20261128T000000Z");
                let why = refused(decide(&disks, how, &asking(Want::Id("P1".into()))));
                assert!(why.contains("point P1 was asked"), "{why}");
            }
        }
    }

    #[test]
    fn a_copy_changed_behind_its_point_is_read_again_before_anything_starts() {
        let mut sys = disk("sys", &[("P1", "2026-11-28T01:00:00Z", "yes")]);
        sys.changed = Some("the copy changed since its newest point P1 was made".into());
        for how in [Use::Failover, Use::Drill] {
            assert_eq!(
                decide(std::slice::from_ref(&sys), how, &Ask::default()),
                Decision::Prepare(vec![Prep::Verify(0, "P1".into())])
            );
        }
        // Found damaged, with no older point: unless named, not started at all.
        sys.points[0].verified = Verified::Bad;
        let why = refused(decide(
            std::slice::from_ref(&sys),
            Use::Failover,
            &Ask::default(),
        ));
        assert!(
            why.contains("every point of it FAILED verification (P1)"),
            "{why}"
        );
        // With an older point, a failover rolls back to it (rebuilt and checked by hash).
        let mut two = disk(
            "sys",
            &[
                ("P0", "2026-11-28T00:00:00Z", "yes"),
                ("P1", "2026-11-28T01:00:00Z", "bad"),
            ],
        );
        two.changed = sys.changed.clone();
        let s = started(decide(
            std::slice::from_ref(&two),
            Use::Failover,
            &Ask::default(),
        ));
        assert_eq!(s.roll_back, [(0, "P0".to_string())]);
        // Written outside reprise (its stamp moved; a vm run on it by hand): what was written
        // is in no point, and the failover does not roll it back without a word.
        let mut written = two.clone();
        written.stamp = Some("4096 1764300000.000000000 7".into());
        let why = refused(decide(
            std::slice::from_ref(&written),
            Use::Failover,
            &Ask::default(),
        ));
        assert!(
            why.contains("rolling it back to point P0 would replace what was written")
                && why.contains("nothing was rolled back")
                && why.contains("--accept-unverified")
                && why.contains("reprise release VM"),
            "{why}"
        );
        // Named: started as it is, as no point (not its damaged newest one), nothing rolled back.
        let named = Ask {
            accept_unverified: true,
            ..Ask::default()
        };
        let s = started(decide(
            std::slice::from_ref(&written),
            Use::Failover,
            &named,
        ));
        assert!(s.roll_back.is_empty(), "{s:?}");
        assert_eq!(s.points, [None]);
        assert!(!s.verified && s.point.starts_with("copy-"), "{s:?}");
        // A point named: a copy as it is is not it; the way out is to let what was written go.
        let point = Ask {
            want: Some(Want::Id("P0".into())),
            accept_unverified: true,
            ..Ask::default()
        };
        let why = refused(decide(
            std::slice::from_ref(&written),
            Use::Failover,
            &point,
        ));
        assert!(why.contains("reprise release VM"), "{why}");
        // Let go as it is now (`reprise release`): rolled back.
        written.accepted = written.stamp.clone();
        let s = started(decide(
            std::slice::from_ref(&written),
            Use::Failover,
            &Ask::default(),
        ));
        assert_eq!(s.roll_back, [(0, "P0".to_string())]);
        // Cut updates are settled first.
        let mut cut = disk("sys", &[("P1", "2026-11-28T01:00:00Z", "yes")]);
        cut.unsettled = Some("an update was cut".into());
        assert_eq!(
            decide(&[cut], Use::Drill, &Ask::default()),
            Decision::Prepare(vec![Prep::Settle(0)])
        );
    }

    #[test]
    fn one_id_taken_at_two_times_is_two_points_never_one_vm_point() {
        // A replication cut after the first disk committed P2, and the next one, within the
        // same second, committed P2 on the second disk only (the first refused it).
        let sys = disk(
            "sys",
            &[
                ("P1", "2026-11-28T01:00:00Z", "yes"),
                ("P2", "2026-11-28T02:00:00.100Z", "yes"),
            ],
        );
        let data = disk(
            "data",
            &[
                ("P1", "2026-11-28T01:00:00Z", "yes"),
                ("P2", "2026-11-28T02:00:00.700Z", "yes"),
            ],
        );
        let disks = [sys.clone(), data.clone()];
        // A failover goes back to the point they share, and says why.
        let s = started(decide(&disks, Use::Failover, &Ask::default()));
        assert_eq!(s.points, [Some("P1".into()), Some("P1".into())]);
        assert_eq!(s.roll_back.len(), 2, "{s:?}");
        assert!(
            s.notes[0].contains("come from two replications")
                && s.notes[0].contains("02:00:00.100 on sys")
                && s.notes[0].contains("02:00:00.700 on data"),
            "{s:?}"
        );
        // Named, it is refused rather than started from two moments.
        let named = Ask {
            want: Some(Want::Id("P2".into())),
            ..Ask::default()
        };
        let why = refused(decide(&disks, Use::Failover, &named));
        assert!(why.contains("not one moment on every disk"), "{why}");
        // By time: the newest point taken before it that is one moment on every disk.
        let before = Ask {
            want: Some(Want::Before("2026-11-28T03:00:00Z".parse().unwrap())),
            ..Ask::default()
        };
        let s = started(decide(&disks, Use::Failover, &before));
        assert_eq!(s.point, "P1", "{s:?}");
        // A drill never rolls back: not started.
        let why = refused(decide(&disks, Use::Drill, &Ask::default()));
        assert!(why.contains("come from two replications"), "{why}");
        // The same point on both (one replication) still starts from P2.
        let mut one = data.clone();
        one.points[1].taken_at = sys.points[1].taken_at;
        let s = started(decide(&[sys.clone(), one], Use::Failover, &Ask::default()));
        assert_eq!(s.point, "P2", "{s:?}");
        assert!(s.roll_back.is_empty());
        assert!(s.verified, "{s:?}");
        // Left with no point they share, each disk would start from its own P2: two
        // moments, so not started unless the operator names the vm.
        let only_p2 = |mut d: CopyState| {
            d.points.remove(0);
            d
        };
        let apart = [only_p2(sys), only_p2(data)];
        let why = refused(decide(&apart, Use::Failover, &Ask::default()));
        assert!(
            why.contains("no good point is on every disk")
                && why.contains("different moments")
                && why.contains("--accept-unverified"),
            "{why}"
        );
        // Named: started, the two moments said in the point and the notes, not verified.
        let accepted = Ask {
            accept_unverified: true,
            ..Ask::default()
        };
        let s = started(decide(&apart, Use::Failover, &accepted));
        assert_eq!(s.point, "P2+P2@02:00:00.700", "{s:?}");
        assert!(!s.verified, "{s:?}");
        assert!(
            s.notes.iter().any(|n| n.contains("2 different moments")),
            "{s:?}"
        );
    }

    #[test]
    fn a_drill_never_rolls_back_and_does_not_start_a_bad_or_mixed_copy() {
        let bad = disk(
            "sys",
            &[
                ("P1", "2026-11-28T01:00:00Z", "yes"),
                ("P2", "2026-11-28T02:00:00Z", "bad"),
            ],
        );
        let why = refused(decide(
            std::slice::from_ref(&bad),
            Use::Drill,
            &Ask::default(),
        ));
        assert!(why.contains("P2 of sys FAILED verification"), "{why}");
        let ahead = disk(
            "sys",
            &[
                ("P1", "2026-11-28T01:00:00Z", "yes"),
                ("P2", "2026-11-28T02:00:00Z", "yes"),
            ],
        );
        let behind = disk("data", &[("P1", "2026-11-28T01:00:00Z", "yes")]);
        let why = refused(decide(
            &[ahead.clone(), behind],
            Use::Drill,
            &Ask::default(),
        ));
        assert!(why.contains("P2 on sys, P1 on data"), "{why}");
        let s = started(decide(&[ahead], Use::Drill, &Ask::default()));
        assert_eq!((s.point.as_str(), s.verified), ("P2", true));
    }

    /// What a replication refuses to write, said before it is tried: a drill's lease, what
    /// was written outside reprise (until let go), a copy written since it was let go.
    #[test]
    fn a_replication_s_refusal_is_told_from_the_copy_s_state() {
        let mut data = disk("data", &[("P1", "2026-11-28T01:00:00Z", "yes")]);
        data.stamp = Some("1 100.0 7".into());
        assert_eq!(replication_refusal(&data, "erp-db", false), None);
        let mut leased = data.clone();
        leased.leases.push(Lease {
            kind: LeaseKind::Drill,
            run: "r1".into(),
            vm: "erp-db".into(),
            step: "erp-db/start-copy".into(),
            machine: "m".into(),
            pid: 1,
            at: "2026-11-28T05:00:00Z".parse().unwrap(),
            point: Some("P1".into()),
            taken_at: Some("2026-11-28T01:00:00Z".parse().unwrap()),
            written_until: None,
            verified: true,
        });
        let why = replication_refusal(&leased, "erp-db", false).unwrap();
        assert!(
            why.contains("read by") && why.contains("`reprise resume r1`"),
            "{why}"
        );
        let mut written = data.clone();
        written.changed = Some("the copy changed since its newest point P1 was made".into());
        let why = replication_refusal(&written, "erp-db", false).unwrap();
        assert!(
            why.contains("changed since its newest point P1")
                && why.contains("`reprise release erp-db`"),
            "{why}"
        );
        written.accepted = written.stamp.clone();
        assert_eq!(replication_refusal(&written, "erp-db", false), None);
        // Gone: nothing to lose.
        written.accepted = None;
        written.stamp = None;
        assert_eq!(replication_refusal(&written, "erp-db", false), None);
        // No point to compare with, let go, and written since.
        let mut bare = disk("data", &[]);
        bare.managed = true;
        bare.stamp = Some("1 200.0 7".into());
        bare.accepted = Some("1 100.0 7".into());
        let why = replication_refusal(&bare, "erp-db", false).unwrap();
        assert!(why.contains("changed since it was let go"), "{why}");
        bare.accepted = bare.stamp.clone();
        assert_eq!(replication_refusal(&bare, "erp-db", false), None);
        // A backup set's folder whose seal moved may have changed in its files' status only,
        // which the replication accepts once it has read it whole: not counted.
        let mut folder = data.clone();
        folder.changed = Some("the copy changed since its newest point P1 was made".into());
        assert_eq!(replication_refusal(&folder, "erp-dumps", true), None);
        assert!(replication_refusal(&folder, "erp-dumps", false).is_some());
    }

    #[test]
    fn a_copy_a_vm_runs_on_is_no_point_but_its_own_run_carries_on() {
        let mut sys = disk("sys", &[]);
        sys.managed = true;
        sys.leases.push(Lease {
            kind: LeaseKind::Live,
            run: "r1".into(),
            vm: "erp-db".into(),
            step: "erp-db/start".into(),
            machine: "m".into(),
            pid: 1,
            at: "2026-11-28T05:00:00Z".parse().unwrap(),
            point: Some("P1".into()),
            taken_at: Some("2026-11-28T01:00:00Z".parse().unwrap()),
            written_until: None,
            verified: true,
        });
        let why = refused(decide(
            std::slice::from_ref(&sys),
            Use::Failover,
            &Ask::default(),
        ));
        assert!(
            why.contains("started on it by failover run r1 from point P1"),
            "{why}"
        );
        let mine = Ask {
            run: Some("r1".into()),
            ..Ask::default()
        };
        let s = started(decide(std::slice::from_ref(&sys), Use::Failover, &mine));
        assert_eq!((s.point.as_str(), s.verified), ("P1", true));
        // Asked at a resume for another point, or one taken before the point it started from:
        // refused, not carried on from P1 without a word. Asked for the point it started
        // from, or a time after it: carried on.
        for (want, within) in [
            (Some(Want::Id("P0".into())), None),
            (
                Some(Want::Before("2026-11-28T00:30:00Z".parse().unwrap())),
                None,
            ),
            (
                Some(Want::Id("P1".into())),
                Some("2026-11-28T00:30:00Z".parse().unwrap()),
            ),
        ] {
            let asked = Ask {
                want: want.clone(),
                within,
                ..mine.clone()
            };
            let why = refused(decide(std::slice::from_ref(&sys), Use::Failover, &asked));
            assert!(
                why.contains("this run already started the vm on these copies from P1")
                    && why.contains("it cannot start from")
                    && why.contains("reprise release"),
                "{want:?} {within:?}: {why}"
            );
        }
        for want in [
            Want::Id("P1".into()),
            Want::Before("2026-11-28T02:00:00Z".parse().unwrap()),
        ] {
            let asked = Ask {
                want: Some(want),
                ..mine.clone()
            };
            let s = started(decide(std::slice::from_ref(&sys), Use::Failover, &asked));
            assert_eq!(s.point, "P1");
        }
        // Resumed, each disk is said from its own lease: disks started from different
        // moments are not one verified point, whatever the first disk's lease says.
        let mut data = sys.clone();
        data.path = "/r/data".into();
        data.leases[0].point = Some("P0".into());
        data.leases[0].taken_at = Some("2026-11-28T00:00:00Z".parse().unwrap());
        let s = started(decide(&[sys.clone(), data.clone()], Use::Failover, &mine));
        assert_eq!(s.points, [Some("P1".into()), Some("P0".into())]);
        assert_eq!((s.point.as_str(), s.verified), ("P1+P0", false));
        assert_eq!(
            s.taken_at,
            "2026-11-28T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        // Leases of an older version, which do not say when their point was taken, written a
        // moment apart: one point, verified.
        let (mut a, mut b) = (sys.clone(), data.clone());
        a.leases[0].taken_at = None;
        b.leases[0].taken_at = None;
        b.leases[0].point = Some("P1".into());
        b.leases[0].at = a.leases[0].at + chrono::Duration::milliseconds(40);
        let s = started(decide(&[a, b], Use::Failover, &mine));
        assert_eq!((s.point.as_str(), s.verified), ("P1", true));
        data.leases[0].point = Some("P1".into());
        let s = started(decide(&[sys.clone(), data], Use::Failover, &mine));
        assert_eq!(
            (s.point.as_str(), s.verified),
            ("P1+P1@00:00:00.000", false)
        );
        // A copy it started as it is (its lease names no point, only its file's time) is
        // said as the choice named it, `copy-TIME`: the report measures no loss from it.
        let mut copy = sys.clone();
        copy.leases[0].point = None;
        copy.leases[0].verified = false;
        let s = started(decide(std::slice::from_ref(&copy), Use::Failover, &mine));
        assert_eq!(
            (s.point.as_str(), s.verified),
            ("copy-20261128T010000Z", false)
        );
        let (level, detail) = judge(&sys, "erp-db", Some(900), Utc::now());
        assert_eq!(level, Level::Failed);
        assert!(detail.contains("fail back"), "{detail}");
        // A backup set's copy a failover relied on is said to be that set's data.
        let mut set = disk("erp", &[("P1", "2026-11-28T01:00:00Z", "yes")]);
        let mut lease = sys.leases[0].clone();
        lease.vm = "erp-dumps".into();
        lease.step = "backups/backup-erp-dumps".into();
        set.leases.push(lease);
        let why = refused(decide(
            std::slice::from_ref(&set),
            Use::Drill,
            &Ask::default(),
        ));
        assert!(
            why.contains(
                "erp is the data of backup set erp-dumps, relied on by failover run r1 at point P1"
            ),
            "{why}"
        );
        let (level, detail) = judge(&set, "erp-dumps", None, Utc::now());
        assert_eq!(level, Level::Failed);
        assert!(
            detail.starts_with("it is the data of backup set erp-dumps")
                && detail.contains("`reprise release erp-dumps`"),
            "{detail}"
        );
    }

    #[test]
    fn check_fails_on_every_copy_nothing_proves() {
        let now: DateTime<Utc> = "2026-11-28T01:05:00Z".parse().unwrap();
        let good = disk("sys", &[("P1", "2026-11-28T01:00:00Z", "yes")]);
        assert_eq!(judge(&good, "erp-db", Some(900), now).0, Level::Ok);
        let (level, detail) = judge(&disk("sys", &[]), "erp-db", Some(900), now);
        assert_eq!(level, Level::Failed);
        assert!(
            detail.starts_with("UNVERIFIED: sys has no replica point"),
            "{detail}"
        );
        let mut prev = good.clone();
        prev.points_from = Some(PointsSource::Previous {
            damage: "points.json is damaged (it is empty)".into(),
        });
        let (level, detail) = judge(&prev, "erp-db", Some(900), now);
        assert_eq!(level, Level::Warning);
        assert!(detail.contains("points.json.prev is used"), "{detail}");
        let mut changed = good.clone();
        changed.changed = Some("the copy changed since its newest point P1 was made".into());
        assert_eq!(judge(&changed, "erp-db", Some(900), now).0, Level::Failed);
        let (level, detail) = judge(&good, "erp-db", Some(60), now);
        assert_eq!(level, Level::Failed);
        assert!(detail.contains("older than the RPO"), "{detail}");
        // Dated ahead of this clock: never 0 s old, so never within the RPO.
        let ahead = disk("sys", &[("P1", "2026-11-28T01:15:00Z", "yes")]);
        let (level, detail) = judge(&ahead, "erp-db", Some(900), now);
        assert_eq!(level, Level::Failed, "{detail}");
        assert!(
            detail.contains("10m00s ahead of this machine's clock")
                && detail.contains("cannot be told"),
            "{detail}"
        );
        let just = disk("sys", &[("P1", "2026-11-28T01:05:30Z", "yes")]);
        assert_eq!(judge(&just, "erp-db", Some(900), now).0, Level::Ok);
        // A bitmap found missing writes, and not found whole since: said, not failed (the
        // copy holds what the check read).
        let mut distrusted = good.clone();
        distrusted.points[0].read = Some(crate::replica::store::HowRead {
            mode: crate::replica::store::ReadMode::Scan,
            why: None,
            checkpoint: None,
            since: None,
            created: None,
            missed: Some(3),
            marker: None,
        });
        let (level, detail) = judge(&distrusted, "erp-db", Some(900), now);
        assert_eq!(level, Level::Warning);
        assert!(
            detail.contains("a check found 3 blocks its dirty bitmap missed")
                && detail.contains("`changed_blocks = false` for vm erp-db"),
            "{detail}"
        );
    }
}
