//! Writing a report as Markdown, self-contained HTML (inline CSS and SVG) or JSON.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::lang::{Labels, Lang};
use super::{Outcome, Problem, RecoveryReport, ServiceReport, ServiceStatus, TimelineStep};
use crate::event::StepStatus;
use crate::readiness::ItemStatus;
use crate::runbook::Phase;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Html,
    Md,
    Json,
}

/// The report as text in `format`.
pub fn render(report: &RecoveryReport, format: Format, lang: Lang) -> String {
    match format {
        Format::Json => {
            let mut value = serde_json::to_value(report).expect("a report always serializes");
            if let Some(map) = value.as_object_mut() {
                map.insert("lang".into(), lang.code().into());
            }
            serde_json::to_string_pretty(&value).expect("a report always serializes") + "\n"
        }
        Format::Md => markdown(report, lang.labels()),
        Format::Html => html(report, lang.labels()),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn opt_dur(s: Option<f64>, l: &Labels) -> String {
    s.map(|x| l.dur(x))
        .unwrap_or_else(|| l.not_measured.to_string())
}

fn met(m: Option<bool>, l: &Labels) -> &'static str {
    match m {
        Some(true) => l.met,
        Some(false) => l.missed,
        None => l.not_measured,
    }
}

fn points(s: &ServiceReport, l: &Labels) -> String {
    if let Some(lag) = &s.lag {
        let said = match (lag.lag_s, &lag.unknown) {
            (Some(secs), None) => l.lag_measured(
                &l.dur(secs),
                lag.host.as_deref().unwrap_or("?"),
                lag.at.map(time).as_deref().unwrap_or("?"),
            ),
            (_, why) => l.lag_unknown(why.as_deref().unwrap_or("")),
        };
        return said;
    }
    if s.points.is_empty() {
        return l.not_measured.to_string();
    }
    let unknown = s
        .data_loss_unknown
        .as_deref()
        .map(|why| l.loss_unknown(why));
    s.points
        .iter()
        .map(|p| {
            format!(
                "{} {} ({}{})",
                p.item,
                p.point,
                time(p.taken_at),
                if p.verified {
                    String::new()
                } else {
                    format!(", {}", l.unverified)
                }
            )
        })
        .chain(unknown)
        .collect::<Vec<_>>()
        .join("; ")
}

fn headline(r: &RecoveryReport, l: &Labels) -> String {
    let mut parts = vec![
        l.count_recovered(r.services_recovered, r.services_in_scope),
        l.count_rto(r.rto_met, r.rto_measured),
        l.count_rpo(
            r.rpo_met,
            r.rpo_measured,
            r.services
                .iter()
                .any(|s| !s.points.is_empty() || s.lag.is_some()),
        ),
    ];
    if !r.problems.is_empty() {
        parts.push(l.count_problems(r.problems.len()));
    }
    parts.join(" · ")
}

/// The facts of the summary as (label, value) pairs.
fn facts(r: &RecoveryReport, l: &Labels) -> Vec<(&'static str, String)> {
    let mut f = vec![
        (l.mode, l.mode(r.mode, r.emergency).to_string()),
        (l.sites, r.sites.join(", ")),
    ];
    if let Some(i) = r.incident_at {
        f.push((l.incident, time(i)));
    }
    f.push((l.started, time(r.started_at)));
    f.push((
        l.ended,
        r.ended_at
            .map(time)
            .unwrap_or_else(|| l.not_ended.to_string()),
    ));
    let mut duration = opt_dur(r.duration_s, l);
    if let Some(e) = r.estimated_s {
        duration.push_str(&format!(
            " ({} {})",
            l.estimated.to_lowercase(),
            l.dur(e as f64)
        ));
    }
    f.push((l.duration, duration));
    f.push((l.operator, r.operator.clone()));
    f.push((l.machine, r.machine.clone()));
    if let Some(asked) = &r.points_asked {
        f.push((l.points_asked, asked.clone()));
    }
    for res in &r.resumes {
        f.push((
            l.resumed_by,
            format!(
                "{} ({}, {}{})",
                res.operator,
                res.machine,
                time(res.at),
                res.asked
                    .as_ref()
                    .map(|a| format!("; {a}"))
                    .unwrap_or_default()
            ),
        ));
    }
    f
}

fn problem_line(p: &Problem, l: &Labels) -> (String, String, Option<String>) {
    match p {
        Problem::Failed {
            step,
            status,
            attempts,
            message,
            excerpt,
        } => (
            step.clone(),
            format!(
                "{}{}",
                l.failed_after(*status, *attempts),
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            (!excerpt.is_empty()).then(|| excerpt.clone()),
        ),
        Problem::Retried { step, attempts } => (step.clone(), l.retried(*attempts), None),
        Problem::RanAgain { step, outcome } => (
            step.clone(),
            format!(
                "{}{}",
                l.ran_again(),
                outcome
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            None,
        ),
        Problem::Blocked { service, reason } => (
            service.clone(),
            format!("{}: {reason}", l.service_status(ServiceStatus::Blocked)),
            None,
        ),
        Problem::RolledBack { step, ok, message } => (
            step.clone(),
            format!(
                "{}{}",
                l.undo(*ok),
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            None,
        ),
        Problem::Interrupted { at, reason } => (time(*at), l.interrupted(reason.as_deref()), None),
        Problem::EndedThenResumed { at, status } => {
            (time(*at), l.ended_then_resumed(*status), None)
        }
        Problem::JournalRepaired {
            at,
            line,
            bytes,
            kept_in,
        } => (time(*at), l.journal_repaired(*line, *bytes, kept_in), None),
        Problem::ReadinessForced {
            at,
            operator,
            problems,
        } => (
            time(*at),
            l.readiness_forced(operator),
            Some(problems.join("; ")),
        ),
        Problem::OtherSite { at, said } => (time(*at), l.other_site(), Some(said.join("; "))),
        Problem::PointRolledBack {
            step,
            item,
            point,
            dropped,
        } => (
            step.clone(),
            l.point_rolled_back(item, point, dropped),
            None,
        ),
        Problem::UnverifiedStart {
            step,
            item,
            point,
            note,
        } => (step.clone(), l.unverified_start(item, point), note.clone()),
        Problem::LagUnknown { service, why } => (service.clone(), l.lag_unknown(why), None),
        Problem::DataLossUnknown { service, why } => (service.clone(), l.loss_unknown(why), None),
        Problem::ClockWentBack { at, after } => (
            time(*at),
            l.clock_went_back(&time(*after), (*after - *at).num_seconds()),
            None,
        ),
        Problem::TwoClocks { at, before, after } => (time(*at), l.two_clocks(before, after), None),
    }
}

/// The services the run had something to do for.
fn involved(r: &RecoveryReport) -> impl Iterator<Item = &ServiceReport> {
    r.services
        .iter()
        .filter(|s| s.status != ServiceStatus::NothingToDo)
}

/// "Nothing to do in this run for: a, b." when some services had no steps.
fn not_involved(r: &RecoveryReport, l: &Labels) -> Option<String> {
    let idle: Vec<&str> = r
        .services
        .iter()
        .filter(|s| s.status == ServiceStatus::NothingToDo)
        .map(|s| s.id.as_str())
        .collect();
    (!idle.is_empty()).then(|| format!("{}{}{}.", l.not_involved, l.colon, idle.join(", ")))
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "<br>")
}

/// Text from hosts or people on one line of a list: its line breaks kept as `<br>`, so that
/// a line of it never starts a heading, a list or a table of the report.
fn md_inline(s: &str) -> String {
    s.trim_end_matches('\n')
        .replace('\r', "")
        .replace('\n', "<br>")
}

fn markdown(r: &RecoveryReport, l: &Labels) -> String {
    let mut o = String::new();
    md_summary(&mut o, r, l);
    md_services(&mut o, r, l);
    md_timeline(&mut o, r, l);
    md_manual(&mut o, r, l);
    md_problems(&mut o, r, l);
    md_recommendations(&mut o, r, l);
    md_readiness(&mut o, r, l);
    md_evidence(&mut o, r, l);
    o
}

/// The title, the verdict and the run's facts.
fn md_summary(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = writeln!(
        o,
        "# {}{}{} {}\n",
        l.title,
        l.colon,
        l.mode(r.mode, r.emergency),
        r.run_id
    );
    let _ = writeln!(o, "## {}\n", l.summary);
    let _ = writeln!(o, "**{}{}{}**\n", l.result, l.colon, l.outcome(r.result));
    let _ = writeln!(o, "{}\n", headline(r, l));
    let _ = writeln!(o, "| | |\n|---|---|");
    for (k, v) in facts(r, l) {
        let _ = writeln!(o, "| {k} | {} |", md_cell(&v));
    }
    let _ = writeln!(
        o,
        "\n{}\n",
        if r.incident_at.is_some() {
            l.measured_from_incident
        } else {
            l.measured_from_start
        }
    );
}

/// One row per service involved: its targets, what was achieved, the points used.
fn md_services(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = writeln!(o, "## {}\n", l.services);
    let _ = writeln!(
        o,
        "| {} | {} | {} | {} | RTO | {} | {} | RPO | {} | {} |",
        l.service,
        l.status,
        l.rto_target,
        l.rto_achieved,
        l.rpo_target,
        l.data_loss,
        l.point,
        l.steps
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    for s in involved(r) {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}/{} |",
            s.id,
            l.service_status(s.status),
            l.dur(s.rto_target_s as f64),
            opt_dur(s.achieved_rto_s, l),
            met(s.rto_met, l),
            s.rpo_target_s
                .map(|t| l.dur(t as f64))
                .unwrap_or_else(|| l.not_measured.to_string()),
            opt_dur(s.data_loss_s, l),
            met(s.rpo_met, l),
            md_cell(&points(s, l)),
            s.steps_done,
            s.steps_total
        );
    }

    if let Some(idle) = not_involved(r, l) {
        let _ = writeln!(o, "\n{idle}");
    }
    let proved: Vec<&String> = r.services.iter().flat_map(|s| &s.checks_proved).collect();
    if !proved.is_empty() {
        let _ = writeln!(o, "\n{}:\n", l.checks_proved);
        for p in proved {
            let _ = writeln!(o, "- {}", md_inline(p));
        }
    }
}

/// The steps as they ran, and the critical path.
fn md_timeline(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = writeln!(o, "\n## {}\n", l.timeline);
    let _ = writeln!(o, "{}\n", l.timeline_note);
    let _ = writeln!(
        o,
        "{}{}{}\n",
        l.critical_path,
        l.colon,
        r.critical_path.join(" → ")
    );
    let _ = writeln!(
        o,
        "| {} | {} | +start | +end | {} |\n|---|---|---|---|---|",
        l.step, l.service, l.status
    );
    for t in r
        .timeline
        .iter()
        .filter(|t| t.start_s.is_some() || t.status.is_some())
    {
        let _ = writeln!(
            o,
            "| {}{} | {} | {} | {} | {}{} |",
            t.id,
            if t.critical { " ★" } else { "" },
            t.service,
            t.start_s.map(|x| l.dur(x)).unwrap_or_default(),
            t.end_s.map(|x| l.dur(x)).unwrap_or_default(),
            t.status.map(|s| l.step_status(s)).unwrap_or("-"),
            t.wait_s
                .map(|w| format!(" ({} {})", l.waited.to_lowercase(), l.dur(w)))
                .unwrap_or_default()
        );
    }
}

/// The manual steps: who confirmed them, when, how long they waited.
fn md_manual(o: &mut String, r: &RecoveryReport, l: &Labels) {
    if !r.manual.is_empty() {
        let _ = writeln!(o, "\n## {}\n", l.manual);
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |\n|---|---|---|---|---|---|---|",
            l.step, l.instructions, l.asked, l.confirmed_by, l.confirmed_at, l.waited, l.note
        );
        for m in &r.manual {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} |",
                md_cell(&m.step),
                md_cell(&m.instructions),
                m.asked_at.map(time).unwrap_or_default(),
                md_cell(m.by.as_deref().unwrap_or(l.not_confirmed)),
                m.confirmed_at.map(time).unwrap_or_default(),
                opt_dur(m.waited_s, l),
                md_cell(m.note.as_deref().unwrap_or(""))
            );
        }
    }
}

/// What went wrong, with the output of the steps that failed.
fn md_problems(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = writeln!(o, "\n## {}\n", l.problems);
    if r.problems.is_empty() {
        let _ = writeln!(o, "{}", l.no_problems);
    }
    for p in &r.problems {
        let (what, text, excerpt) = problem_line(p, l);
        let _ = writeln!(o, "- **{what}**{}{}", l.colon, md_inline(&text));
        if let Some(x) = excerpt {
            let _ = writeln!(o, "\n  ```text");
            for line in x.lines() {
                let _ = writeln!(o, "  {}", line.replace("```", "'''"));
            }
            let _ = writeln!(o, "  ```\n");
        }
    }
}

/// What to do better next time.
fn md_recommendations(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = writeln!(o, "\n## {}\n", l.recommendations);
    if r.recommendations.is_empty() {
        let _ = writeln!(o, "{}", l.no_recommendations);
    }
    for (i, rec) in r.recommendations.iter().enumerate() {
        let _ = writeln!(o, "{}. {}", i + 1, md_inline(&rec.text));
    }
}

/// The readiness check the run started with.
fn md_readiness(o: &mut String, r: &RecoveryReport, l: &Labels) {
    if let Some(rd) = &r.readiness {
        let _ = writeln!(
            o,
            "\n## {}\n\n{}: **{}** ({})\n",
            l.readiness,
            time(rd.at),
            if rd.ready { l.ready } else { l.not_ready },
            readiness_counts(rd, l)
        );
        let problems: Vec<_> = rd
            .items
            .iter()
            .filter(|i| i.status != ItemStatus::Ok)
            .collect();
        for i in problems {
            let _ = writeln!(
                o,
                "- {} {} {}: {}",
                l.check_status(i.status),
                i.area,
                i.subject,
                md_inline(&i.detail)
            );
        }
    }
}

/// What the report was made from.
fn md_evidence(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = writeln!(o, "\n## {}\n", l.evidence);
    let _ = writeln!(o, "| | |\n|---|---|");
    for (k, v) in evidence(r, l) {
        let _ = writeln!(o, "| {k} | `{}` |", md_cell(&v).replace('`', "'"));
    }
    let _ = writeln!(o, "\n{}", l.evidence_note);
}

fn evidence(r: &RecoveryReport, l: &Labels) -> Vec<(&'static str, String)> {
    let e = &r.evidence;
    vec![
        (l.run_id, e.run_id.clone()),
        (l.tool_version, e.tool_version.clone()),
        (l.sources_digest, e.sources_digest.clone()),
        (l.journal_digest, e.journal_blake3.clone()),
        (l.events, e.events.to_string()),
        (l.people, e.operators.join(", ")),
    ]
}

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const CSS: &str = r#"
@page { size: A4; margin: 14mm 12mm; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 10pt; color: #1b1f24; margin: 0 auto; max-width: 190mm; line-height: 1.35; }
h1 { font-size: 17pt; margin: 0 0 2mm; }
h1 small { display: block; font-size: 10pt; color: #57606a; font-weight: normal; }
h2 { font-size: 12.5pt; border-bottom: 1.5px solid #d0d7de; padding-bottom: 1mm; margin: 7mm 0 3mm; break-after: avoid; }
table { border-collapse: collapse; width: 100%; margin: 2mm 0; }
th, td { border: 1px solid #d0d7de; padding: 1.2mm 1.8mm; text-align: left; vertical-align: top; }
th { background: #f3f5f7; font-weight: 600; }
tr { break-inside: avoid; }
.facts th { width: 32%; }
.verdict { font-size: 14pt; font-weight: 700; padding: 3mm 4mm; border-radius: 2mm; margin: 2mm 0; }
.recovered { background: #e6f4ea; color: #1e6b34; border: 1.5px solid #1e6b34; }
.recovered_with_issues { background: #fff4e0; color: #8a5300; border: 1.5px solid #b36b00; }
.failed, .incomplete { background: #fde8e8; color: #a0141e; border: 1.5px solid #a0141e; }
.met { color: #1e6b34; font-weight: 600; }
.missed { color: #a0141e; font-weight: 700; }
.na { color: #6e7781; }
.num { text-align: right; white-space: nowrap; }
td.id { white-space: nowrap; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; padding: 2mm; font-size: 8pt; white-space: pre-wrap; word-break: break-all; margin: 1mm 0 3mm; }
code { font-size: 8.5pt; word-break: break-all; }
svg { width: 100%; height: auto; }
svg text { font-family: "DejaVu Sans", Arial, sans-serif; }
.legend span { display: inline-block; margin-right: 5mm; }
.swatch { display: inline-block; width: 4mm; height: 3mm; vertical-align: middle; margin-right: 1mm; border: 1px solid #555; }
.note { color: #57606a; font-size: 9pt; }
li { margin-bottom: 1.5mm; }
"#;

fn html(r: &RecoveryReport, l: &Labels) -> String {
    let mut o = String::new();
    html_summary(&mut o, r, l);
    html_services(&mut o, r, l);
    html_timeline(&mut o, r, l);
    html_manual(&mut o, r, l);
    html_problems(&mut o, r, l);
    html_recommendations(&mut o, r, l);
    html_readiness(&mut o, r, l);
    html_evidence(&mut o, r, l);
    o
}

/// The head of the page, the verdict and the run's facts.
fn html_summary(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"{}\">\n<head>\n<meta charset=\"utf-8\">\n<title>{} {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        l.lang.code(),
        esc(l.title),
        esc(&r.run_id)
    );
    let _ = writeln!(
        o,
        "<h1>{}{}{}<small>{} {}</small></h1>",
        esc(l.title),
        l.colon,
        esc(l.mode(r.mode, r.emergency)),
        esc(l.run),
        esc(&r.run_id)
    );
    let _ = writeln!(o, "<h2>{}</h2>", esc(l.summary));
    let class = match r.result {
        Outcome::Recovered => "recovered",
        Outcome::RecoveredWithIssues | Outcome::PartiallyRecovered => "recovered_with_issues",
        Outcome::Failed => "failed",
        Outcome::Incomplete => "incomplete",
    };
    let _ = writeln!(
        o,
        "<div class=\"verdict {class}\" id=\"result\">{}{}{}</div>\n<p>{}</p>",
        esc(l.result),
        l.colon,
        esc(l.outcome(r.result)),
        esc(&headline(r, l))
    );
    let _ = writeln!(o, "<table class=\"facts\">");
    for (k, v) in facts(r, l) {
        let _ = writeln!(o, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    let _ = writeln!(
        o,
        "</table>\n<p class=\"note\">{}</p>",
        esc(if r.incident_at.is_some() {
            l.measured_from_incident
        } else {
            l.measured_from_start
        })
    );
}

/// One row per service involved: its targets, what was achieved, the points used.
fn html_services(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = writeln!(o, "<h2>{}</h2>\n<table>", esc(l.services));
    let _ = writeln!(
        o,
        "<tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>RTO</th><th>{}</th><th>{}</th><th>RPO</th><th>{}</th></tr>",
        esc(l.service),
        esc(l.status),
        esc(l.rto_target),
        esc(l.rto_achieved),
        esc(l.rpo_target),
        esc(l.data_loss),
        esc(l.point)
    );
    let met_cell = |m: Option<bool>| {
        let class = match m {
            Some(true) => "met",
            Some(false) => "missed",
            None => "na",
        };
        format!("<td class=\"{class}\">{}</td>", esc(met(m, l)))
    };
    for s in involved(r) {
        let status = match &s.reason {
            Some(why) => format!(
                "{}<br><span class=\"note\">{}</span>",
                esc(l.service_status(s.status)),
                esc(why)
            ),
            None => esc(l.service_status(s.status)),
        };
        let _ = writeln!(
            o,
            "<tr><td class=\"id\">{}</td><td>{status}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>{}<td class=\"num\">{}</td><td class=\"num\">{}</td>{}<td>{}</td></tr>",
            esc(&s.id),
            esc(&l.dur(s.rto_target_s as f64)),
            esc(&opt_dur(s.achieved_rto_s, l)),
            met_cell(s.rto_met),
            esc(&s
                .rpo_target_s
                .map(|t| l.dur(t as f64))
                .unwrap_or_else(|| l.not_measured.to_string())),
            esc(&opt_dur(s.data_loss_s, l)),
            met_cell(s.rpo_met),
            esc(&points(s, l))
        );
    }
    let _ = writeln!(o, "</table>");
    let proved: Vec<&String> = r.services.iter().flat_map(|s| &s.checks_proved).collect();
    if !proved.is_empty() {
        let _ = writeln!(o, "<p>{}:</p><ul>", esc(l.checks_proved));
        for p in proved {
            let _ = writeln!(o, "<li class=\"note\">{}</li>", esc(p));
        }
        let _ = writeln!(o, "</ul>");
    }
    if let Some(idle) = not_involved(r, l) {
        let _ = writeln!(o, "<p class=\"note\">{}</p>", esc(&idle));
    }
}

/// The Gantt chart of the steps, its legend and the critical path.
fn html_timeline(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = writeln!(o, "<h2>{}</h2>", esc(l.timeline));
    let _ = writeln!(o, "<p class=\"note\">{}</p>", esc(l.timeline_note));
    o.push_str(&gantt(r, l));
    let _ = writeln!(
        o,
        "<p class=\"legend\"><span><i class=\"swatch\" style=\"background:{DONE}\"></i>{}</span><span><i class=\"swatch\" style=\"background:{FAILED}\"></i>{}</span><span><i class=\"swatch\" style=\"background:{WAIT}\"></i>{}</span><span><i class=\"swatch\" style=\"background:{CLEANUP}\"></i>{}</span><span><i class=\"swatch\" style=\"background:#fff;border:2px solid #111\"></i>{}</span></p>",
        esc(l.legend_done),
        esc(l.legend_failed),
        esc(l.legend_wait),
        esc(l.legend_cleanup),
        esc(l.legend_critical)
    );
    let _ = writeln!(
        o,
        "<p><strong>{}</strong>: {}</p>",
        esc(l.critical_path),
        esc(&r.critical_path.join(" → "))
    );
}

/// The manual steps: who confirmed them, when, how long they waited.
fn html_manual(o: &mut String, r: &RecoveryReport, l: &Labels) {
    if !r.manual.is_empty() {
        let _ = writeln!(o, "<h2>{}</h2>\n<table>", esc(l.manual));
        let _ = writeln!(
            o,
            "<tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            esc(l.step),
            esc(l.instructions),
            esc(l.confirmed_by),
            esc(l.waited),
            esc(l.note)
        );
        for m in &r.manual {
            let by = match (&m.by, m.confirmed_at) {
                (Some(by), Some(at)) => format!(
                    "{}<br><span class=\"note\">{}</span>",
                    esc(by),
                    esc(&time(at))
                ),
                _ => esc(l.not_confirmed),
            };
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{by}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                esc(&m.step),
                esc(&m.instructions),
                esc(&opt_dur(m.waited_s, l)),
                esc(m.note.as_deref().unwrap_or(""))
            );
        }
        let _ = writeln!(o, "</table>");
    }
}

/// What went wrong, with the output of the steps that failed.
fn html_problems(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = writeln!(o, "<h2>{}</h2>", esc(l.problems));
    if r.problems.is_empty() {
        let _ = writeln!(o, "<p>{}</p>", esc(l.no_problems));
    } else {
        let _ = writeln!(o, "<ul>");
        for p in &r.problems {
            let (what, text, excerpt) = problem_line(p, l);
            let _ = write!(o, "<li><strong>{}</strong>: {}", esc(&what), esc(&text));
            if let Some(x) = excerpt {
                let _ = write!(o, "<pre>{}</pre>", esc(&x));
            }
            let _ = writeln!(o, "</li>");
        }
        let _ = writeln!(o, "</ul>");
    }
}

/// What to do better next time.
fn html_recommendations(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = writeln!(o, "<h2>{}</h2>", esc(l.recommendations));
    if r.recommendations.is_empty() {
        let _ = writeln!(o, "<p>{}</p>", esc(l.no_recommendations));
    } else {
        let _ = writeln!(o, "<ol>");
        for rec in &r.recommendations {
            let _ = writeln!(o, "<li>{}</li>", esc(&rec.text));
        }
        let _ = writeln!(o, "</ol>");
    }
}

/// The readiness check the run started with.
fn html_readiness(o: &mut String, r: &RecoveryReport, l: &Labels) {
    if let Some(rd) = &r.readiness {
        let _ = writeln!(
            o,
            "<h2>{}</h2>\n<p>{}: <strong>{}</strong> ({})</p>",
            esc(l.readiness),
            esc(&time(rd.at)),
            esc(if rd.ready { l.ready } else { l.not_ready }),
            esc(&readiness_counts(rd, l))
        );
        let bad: Vec<_> = rd
            .items
            .iter()
            .filter(|i| i.status != ItemStatus::Ok)
            .collect();
        if !bad.is_empty() {
            let _ = writeln!(o, "<ul>");
            for i in bad {
                let _ = writeln!(
                    o,
                    "<li>{} {} {}: {}</li>",
                    esc(l.check_status(i.status)),
                    esc(&i.area),
                    esc(&i.subject),
                    esc(&i.detail)
                );
            }
            let _ = writeln!(o, "</ul>");
        }
    }
}

/// What the report was made from, and the end of the page.
fn html_evidence(o: &mut String, r: &RecoveryReport, l: &Labels) {
    let _ = writeln!(o, "<h2>{}</h2>\n<table class=\"facts\">", esc(l.evidence));
    for (k, v) in evidence(r, l) {
        let _ = writeln!(
            o,
            "<tr><th>{}</th><td><code>{}</code></td></tr>",
            esc(k),
            esc(&v)
        );
    }
    let _ = writeln!(
        o,
        "</table>\n<p class=\"note\">{}</p>\n</body>\n</html>",
        esc(l.evidence_note)
    );
}

const DONE: &str = "#3f8f5a";
const FAILED: &str = "#c62828";
const WAIT: &str = "#f0b429";
const CLEANUP: &str = "#9aa4ae";
const OTHER: &str = "#8c7ae6";

fn bar_color(t: &TimelineStep) -> &'static str {
    match t.status {
        Some(StepStatus::Failed | StepStatus::TimedOut) => FAILED,
        Some(StepStatus::RolledBack) => "#e67e22",
        _ if t.phase == Phase::Cleanup => CLEANUP,
        Some(StepStatus::Done) => DONE,
        _ => OTHER,
    }
}

/// A tick step giving at most about 8 ticks over `total` seconds.
fn tick_step(total: f64) -> f64 {
    const STEPS: &[f64] = &[
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        14400.0, 21600.0, 43200.0, 86400.0,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| total / s <= 8.0)
        .unwrap_or(86400.0 * (total / 86400.0 / 8.0).ceil())
}

/// The timeline as an inline SVG Gantt chart: one row per service, one bar per step.
fn gantt(r: &RecoveryReport, l: &Labels) -> String {
    const LABEL_W: f64 = 190.0;
    const CHART_W: f64 = 760.0;
    const ROW_H: f64 = 21.0;
    const TOP: f64 = 28.0;
    let mut rows: Vec<(String, f64)> = Vec::new();
    for t in &r.timeline {
        let start = t.start_s.or(t.wait_start_s).unwrap_or(f64::MAX);
        match rows.iter_mut().find(|(s, _)| *s == t.service) {
            Some(row) => row.1 = row.1.min(start),
            None => rows.push((t.service.clone(), start)),
        }
    }
    rows.sort_by(|a, b| a.1.total_cmp(&b.1));
    let total = r
        .timeline
        .iter()
        .filter_map(|t| t.end_s)
        .chain(r.duration_s)
        .fold(1.0_f64, f64::max);
    let k = CHART_W / total;
    let height = TOP + ROW_H * rows.len() as f64 + 8.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg viewBox=\"0 0 {} {height}\" role=\"img\" aria-label=\"{}\">",
        LABEL_W + CHART_W + 10.0,
        esc(l.timeline)
    );
    let _ = writeln!(
        o,
        "<defs><pattern id=\"wait\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\"><rect width=\"6\" height=\"6\" fill=\"{WAIT}\"/><rect width=\"3\" height=\"6\" fill=\"#fff3c4\"/></pattern></defs>"
    );
    let step = tick_step(total);
    let mut tick = 0.0;
    while tick <= total + 1e-9 {
        let x = LABEL_W + tick * k;
        let _ = writeln!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{height}\" stroke=\"#e1e4e8\"/><text x=\"{x:.1}\" y=\"15\" font-size=\"12\" text-anchor=\"middle\" fill=\"#57606a\">{}</text>",
            TOP - 6.0,
            esc(&l.dur(tick))
        );
        tick += step;
    }
    for res in &r.resumes {
        let x = LABEL_W + ((res.at - r.started_at).num_milliseconds() as f64 / 1000.0) * k;
        let _ = writeln!(
            o,
            "<line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{height}\" stroke=\"#6f42c1\" stroke-dasharray=\"4 3\"><title>{} {}</title></line>",
            TOP - 6.0,
            esc(l.resumed_by),
            esc(&res.operator)
        );
    }
    for (i, (service, _)) in rows.iter().enumerate() {
        let y = TOP + ROW_H * i as f64;
        if i % 2 == 0 {
            let _ = writeln!(
                o,
                "<rect x=\"0\" y=\"{y}\" width=\"{}\" height=\"{ROW_H}\" fill=\"#f6f8fa\"/>",
                LABEL_W + CHART_W + 10.0
            );
        }
        let _ = writeln!(
            o,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"13\" fill=\"#1b1f24\">{}</text>",
            y + 15.0,
            esc(service)
        );
        for t in r.timeline.iter().filter(|t| &t.service == service) {
            if let (Some(ws), Some(w)) = (t.wait_start_s, t.wait_s) {
                let _ = writeln!(
                    o,
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"14\" fill=\"url(#wait)\" stroke=\"#b7791f\" stroke-width=\"0.6\"><title>{} ({}: {})</title></rect>",
                    LABEL_W + ws * k,
                    y + 3.0,
                    (w * k).max(2.0),
                    esc(&t.id),
                    esc(l.legend_wait),
                    esc(&l.dur(w))
                );
            }
            let (Some(s), Some(e)) = (t.start_s, t.end_s) else {
                continue;
            };
            // The wait is drawn on its own; the bar covers the rest of the step.
            let s = match (t.wait_start_s, t.wait_s) {
                (Some(ws), Some(w)) => s.max(ws + w),
                _ => s,
            };
            let (stroke, width) = if t.critical {
                ("#111", 1.6)
            } else {
                ("none", 0.0)
            };
            let _ = writeln!(
                o,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"14\" fill=\"{}\" stroke=\"{stroke}\" stroke-width=\"{width}\"><title>{} ({}, {})</title></rect>",
                LABEL_W + s * k,
                y + 3.0,
                ((e - s) * k).max(2.0),
                bar_color(t),
                esc(&t.id),
                esc(t.status.map(|s| l.step_status(s)).unwrap_or("-")),
                esc(&l.dur(e - t.start_s.unwrap_or(s)))
            );
        }
    }
    let _ = writeln!(o, "</svg>");
    o
}

fn readiness_counts(rd: &crate::readiness::Readiness, l: &Labels) -> String {
    let count = |s| rd.items.iter().filter(|i| i.status == s).count();
    l.checks_summary(
        count(ItemStatus::Ok),
        count(ItemStatus::Warning),
        count(ItemStatus::Failed),
    )
}
