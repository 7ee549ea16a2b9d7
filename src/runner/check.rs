//! Check steps: a command, a TCP port or an HTTP status polled until it passes, the step's
//! deadline, or the run stops; and the replication-lag probe, read once and judged against
//! the service's RPO.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::Utc;

use super::context::{Outcome, RunContext, StepRun};
use super::exec::{TryError, exec, exec_on};
use super::record::output_event;
use crate::duration::Duration;
use crate::event::{Event, StepStatus};
use crate::plan::{Instance, PlannedStep, Production};
use crate::template::Command;

/// A lag step's probe, as planned.
pub(super) struct LagProbe<'a> {
    pub(super) run: &'a Command,
    pub(super) timeout: Duration,
    pub(super) rpo: Option<Duration>,
    pub(super) hold: bool,
}

/// A measurement: what the probe says is journaled. A lag unknown or over the RPO stops a
/// planned switch here, before it (the side being left still holds what the other lacks);
/// elsewhere the recovery goes on and the report says it.
pub(super) async fn lag(ctx: &RunContext, run: &StepRun, probe: &LagProbe<'_>) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    let limit = StdDuration::from_secs(probe.timeout.secs());
    let reading = match exec(ctx, step, probe.run, Some(limit)).await {
        Ok(out) => {
            output_event(&run.tx, step, 1, &out);
            crate::lag::read_output(&out, probe.timeout)
        }
        Err(e) => crate::lag::Reading::Unknown(format!("the probe could not run: {}", e.message)),
    };
    let (verdict, words) = crate::lag::judge(&reading, probe.rpo);
    run.send(Event::LagMeasured {
        at: Utc::now(),
        step: step.id.clone(),
        service: step.service.clone(),
        host: step.host.clone().unwrap_or_default(),
        lag_s: reading.seconds(),
        unknown: match reading {
            crate::lag::Reading::Unknown(why) => Some(why),
            crate::lag::Reading::Seconds(_) => None,
        },
        rpo_target_s: probe.rpo.map(|r| r.secs()),
    });
    if probe.hold && verdict != crate::lag::Verdict::Within {
        return run.outcome(
            StepStatus::Failed,
            1,
            Some(format!(
                "{words}: a planned switch stops here, before it, since the side it leaves still holds data the other may lack; bring the replication up to date (or, if that side is lost, run an emergency failover, which accepts the loss)"
            )),
        );
    }
    run.outcome(StepStatus::Done, 1, Some(words))
}

/// A command polled until it exits 0.
pub(super) async fn probe(
    ctx: &Arc<RunContext>,
    run: &StepRun,
    command: &Command,
    interval: Duration,
) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    let deadline = step
        .timeout_s
        .map(StdDuration::from_secs)
        .unwrap_or(StdDuration::from_secs(600));
    let per_try = StdDuration::from_secs(interval.secs().max(30));
    let (ctx2, tx2, command) = (ctx.clone(), run.tx.clone(), command.clone());
    let (index, begin) = (run.index, run.begin);
    poll(step, run, interval, move || {
        let (ctx, tx, command) = (ctx2.clone(), tx2.clone(), command.clone());
        async move {
            let step = &ctx.plan.steps[index];
            // A try never runs past the step's deadline.
            let left = deadline
                .saturating_sub(begin.elapsed())
                .max(StdDuration::from_secs(1));
            match exec(&ctx, step, &command, Some(per_try.min(left))).await {
                Ok(out) if out.exit_code == 0 => {
                    output_event(&tx, step, 1, &out);
                    Ok(None)
                }
                Ok(out) => Err(format!("status {} {}", out.exit_code, out.stderr.trim()).into()),
                Err(e) => Err(e),
            }
        }
    })
    .await
}

/// A tcp check's address and port, and the banner it expects.
pub(super) struct TcpProbe<'a> {
    pub(super) address: &'a str,
    pub(super) port: u16,
    pub(super) expect: Option<&'a str>,
    /// A drill's: the production addresses it must not reach.
    pub(super) production: &'a [Production],
}

/// How long a tcp check waits for the server's banner.
const BANNER_WAIT: StdDuration = StdDuration::from_secs(3);

/// The most of a banner or a body a check reads.
const ANSWER_LIMIT: usize = 64 * 1024;

/// A TCP port polled until it accepts a connection (and sends the expected banner), and, for
/// a vm, until its answer is proved to be the vm's ([`prove`]).
pub(super) async fn tcp(
    ctx: &RunContext,
    run: &StepRun,
    probe: &TcpProbe<'_>,
    interval: Duration,
    instance: Option<&Instance>,
) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    let target = crate::inventory::endpoint(probe.address, probe.port);
    let target = &target;
    poll(step, run, interval, move || async move {
        let production = &production_ips(probe.production).await;
        // Connects to the addresses it compared, not to the name resolved again.
        let addrs = resolve(probe.address, probe.port)
            .await
            .map_err(|e| TryError::from(format!("{target}: {e}")))?;
        if let Some(refused) = reaches_production(target, &addrs, production) {
            return Err(refused);
        }
        let stream = match tokio::time::timeout(
            StdDuration::from_secs(5),
            tokio::net::TcpStream::connect(&addrs[..]),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("{target}: {e}").into()),
            Err(_) => return Err(format!("{target}: no answer within 5s").into()),
        };
        let answered = match probe.expect {
            None => format!("{target} accepted a connection"),
            Some(expect) => {
                let banner = read_banner(stream, expect).await;
                if !banner.contains(expect) {
                    return Err(format!(
                        "{target} accepted a connection, but what it sent within {}s does not contain {expect:?}: {}",
                        BANNER_WAIT.as_secs(),
                        shown(&banner)
                    )
                    .into());
                }
                format!("{target} answered with {expect:?}")
            }
        };
        let answered = production.said(answered);
        proved(ctx, run, instance, answered).await.map(Some)
    })
    .await
}

/// How long a drill's check waits for its production addresses to resolve, all at once.
const PRODUCTION_LOOKUP: StdDuration = StdDuration::from_secs(5);

/// Where a drill's production addresses resolve now, asked again at each try (a name may
/// move); and those that did not resolve (within [`PRODUCTION_LOOKUP`]), which the check
/// names when it passes: they could not be compared.
struct ProductionIps {
    ips: Vec<(std::net::IpAddr, Production)>,
    unresolved: Vec<String>,
}

impl ProductionIps {
    /// What a passing check adds to its message: the production names not compared.
    fn said(&self, answered: String) -> String {
        match self.unresolved.is_empty() {
            true => answered,
            false => format!(
                "{answered} (production addresses that did not resolve, so not compared with it: {})",
                self.unresolved.join(", ")
            ),
        }
    }
}

async fn production_ips(production: &[Production]) -> ProductionIps {
    let mut lookups = tokio::task::JoinSet::new();
    for p in production {
        let p = p.clone();
        lookups.spawn(async move {
            let ips = resolve(&p.address, 0).await.unwrap_or_default();
            (p, ips)
        });
    }
    let mut ips = Vec::new();
    let mut resolved = std::collections::BTreeSet::new();
    let until = tokio::time::Instant::now() + PRODUCTION_LOOKUP;
    while let Ok(Some(done)) = tokio::time::timeout_at(until, lookups.join_next()).await {
        if let Ok((p, found)) = done
            && !found.is_empty()
        {
            resolved.insert(p.address.clone());
            ips.extend(found.into_iter().map(|a| (a.ip(), p.clone())));
        }
    }
    let unresolved = production
        .iter()
        .map(|p| p.address.clone())
        .filter(|a| !resolved.contains(a))
        .collect();
    ProductionIps { ips, unresolved }
}

/// The socket addresses `address` (a name, an IPv4 or IPv6 address, bracketed or not)
/// resolves to now.
async fn resolve(address: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, String> {
    let host = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            if addrs.is_empty() {
                Err(format!("{host} resolves to no address"))
            } else {
                Ok(addrs)
            }
        }
        Err(e) => Err(format!("{host} does not resolve: {e}")),
    }
}

/// A drill's check that would reach a production address: refused at once (asking again
/// would reach it again).
fn reaches_production(
    target: &str,
    addrs: &[std::net::SocketAddr],
    production: &ProductionIps,
) -> Option<TryError> {
    addrs.iter().find_map(|a| {
        let (ip, p) = production.ips.iter().find(|(ip, _)| *ip == a.ip())?;
        Some(TryError::refused(format!(
            "{target} resolves to {ip}, where {} ({}) resolves too: production answers there, not the drill's copy, so the check would pass for it; probe the drill's copy at an address of the recovery site (the vm's `recovery_address`)",
            p.what, p.address
        )))
    })
}

/// What a server sends first, until it contains `expect`, it closes, [`BANNER_WAIT`] passes
/// or [`ANSWER_LIMIT`] is read.
async fn read_banner(mut stream: tokio::net::TcpStream, expect: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + BANNER_WAIT;
    let mut buf = [0u8; 4096];
    while got.len() < ANSWER_LIMIT && !String::from_utf8_lossy(&got).contains(expect) {
        match tokio::time::timeout_at(until, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// The start of an answer, on one line, for a message.
fn shown(answer: &str) -> String {
    let one: String = answer.split_whitespace().collect::<Vec<_>>().join(" ");
    match one.chars().count() {
        0 => "it sent nothing".to_string(),
        n if n > 120 => format!("it sent {:?}…", one.chars().take(120).collect::<String>()),
        _ => format!("it sent {one:?}"),
    }
}

/// An http check's request, the status it expects, and the text its body must contain.
pub(super) struct HttpProbe<'a> {
    pub(super) url: &'a str,
    pub(super) status: u16,
    pub(super) tls: &'a crate::plan::Tls,
    pub(super) expect: Option<&'a str>,
    /// A drill's: the production addresses it must not reach.
    pub(super) production: &'a [Production],
}

/// An HTTP(S) URL polled until it answers the expected status (and body), and, for a vm,
/// until its answer is proved to be the vm's ([`prove`]).
pub(super) async fn http(
    ctx: &RunContext,
    run: &StepRun,
    probe: &HttpProbe<'_>,
    interval: Duration,
    instance: Option<&Instance>,
) -> Outcome {
    let step = &ctx.plan.steps[run.index];
    let expected = probe.status;
    poll(step, run, interval, move || async move {
        let (asked, tls) = (probe.url.to_string(), probe.tls.clone());
        let url = probe.url;
        let production = &production_ips(probe.production).await;
        if !probe.production.is_empty() {
            let host = crate::plan::url_host(url);
            let addrs = resolve(host, 0)
                .await
                .map_err(|e| TryError::from(format!("{url}: {e}")))?;
            if let Some(refused) = reaches_production(url, &addrs, production) {
                return Err(refused);
            }
        }
        let got = tokio::task::spawn_blocking(move || {
            crate::http::get(&asked, &tls, StdDuration::from_secs(10), ANSWER_LIMIT)
        })
        .await;
        let body = match got {
            Ok(Ok((code, body))) if code == expected => body,
            Ok(Ok((code, _))) => {
                return Err(format!("{url}: status {code}, expected {expected}").into());
            }
            // A CA file that cannot be used will not mend by asking again.
            Ok(Err(
                e @ (crate::http::HttpError::CaFile { .. }
                | crate::http::HttpError::NoCertificate(_)),
            )) => return Err(TryError::refused(e.to_string())),
            Ok(Err(e)) => return Err(format!("{url}: {e}").into()),
            Err(e) => return Err(format!("{url}: the check task failed: {e}").into()),
        };
        let answered = match probe.expect {
            None => format!("{url} answered {expected}"),
            Some(expect) if body.contains(expect) => {
                format!("{url} answered {expected} with {expect:?}")
            }
            Some(expect) => {
                return Err(format!(
                    "{url} answered {expected}, but its body does not contain {expect:?}: {}",
                    shown(&body)
                )
                .into());
            }
        };
        let answered = production.said(answered);
        proved(ctx, run, instance, answered).await.map(Some)
    })
    .await
}

/// What a check that got its answer says: `answered`, and, when it checks a vm, what proves
/// that the vm answered.
async fn proved(
    ctx: &RunContext,
    run: &StepRun,
    instance: Option<&Instance>,
    answered: String,
) -> Result<String, TryError> {
    match instance {
        None => Ok(answered),
        Some(i) => {
            let how = prove(ctx, run, i).await?;
            Ok(format!("{answered}; {how}"))
        }
    }
}

/// Whether the answer at a vm's address can be its own: its driver's `status`, asked where
/// the run brings it up, must say that it runs; in a failover or a failback, the side being
/// left must not say so. What proves it, or why not: a vm its driver says is not running, or
/// one running on both sides, fails the step at once (something else answered); a state that
/// cannot be read is asked again until the step's deadline.
async fn prove(ctx: &RunContext, run: &StepRun, i: &Instance) -> Result<String, TryError> {
    let step = &ctx.plan.steps[run.index];
    let ask = |host: &str, status: &Command| {
        let limit = ask_limit(step, run);
        let (host, status) = (host.to_string(), status.clone());
        async move {
            match exec_on(ctx, &host, &status, Some(limit)).await {
                Ok(out) => (super::exec::said_running(&out), said(&out)),
                Err(e) => (None, e.message),
            }
        }
    };
    let (here, said_here) = ask(&i.host, &i.status).await;
    let left = match &i.left {
        Some((host, status)) if here == Some(true) => {
            let (state, said) = ask(host, status).await;
            if state == Some(true) {
                run.send(Event::SplitBrain {
                    at: Utc::now(),
                    step: step.id.clone(),
                    vm: i.vm.clone(),
                    hosts: vec![i.host.clone(), host.clone()],
                });
            }
            Some((host.as_str(), state, said))
        }
        _ => None,
    };
    let verdict = judge_instance(i, (here, &said_here), left);
    verdict.map_err(|(message, now)| TryError {
        message,
        refused: now,
    })
}

/// What a check concludes from the states of its vm (see [`prove`]): `Ok` with what proved
/// it, or `Err` with why not and whether that fails the step now (`false`: ask again). Pure.
pub(super) fn judge_instance(
    i: &Instance,
    here: (Option<bool>, &str),
    left: Option<(&str, Option<bool>, String)>,
) -> Result<String, (String, bool)> {
    let (shown, host) = (&i.shown, &i.host);
    match here {
        (Some(true), said) => match left {
            Some((other, Some(true), said_there)) => Err((
                format!(
                    "split brain: {shown} runs on {host} ({said}) and ALSO on {other} ({said_there}): the answer may come from either, and both may be writing; stop the one that must not serve (on {other}, or on {host}) before anyone uses the service, then `reprise resume` checks again"
                ),
                true,
            )),
            Some((other, Some(false), said_there)) => Ok(format!(
                "proved by its driver's status: {shown} runs on {host} ({said}), and not on {other} ({said_there})"
            )),
            Some((other, None, said_there)) => Ok(format!(
                "proved by its driver's status: {shown} runs on {host} ({said}); on {other}, the side left, its state could not be read ({said_there})"
            )),
            None => Ok(format!(
                "proved by its driver's status: {shown} runs on {host} ({said})"
            )),
        },
        (Some(false), said) => Err((
            format!(
                "something answers at its address, but not {shown}: its driver's status on {host} says it does not run ({said}); that answer is another process (a primary still up, a leftover process, production), so the service is NOT recovered; start {shown} on {host} (see its log there) and find what answers in its place"
            ),
            true,
        )),
        (None, said) => Err((
            format!(
                "something answers at its address, but whether it is {shown} is not proved: its state on {host} cannot be read ({said})"
            ),
            false,
        )),
    }
}

/// What a driver's `status` said, in one short line.
fn said(out: &crate::ssh::ExecOutput) -> String {
    let text = [out.stdout.trim(), out.stderr.trim()]
        .into_iter()
        .find(|t| !t.is_empty())
        .map(|t| t.lines().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| format!("exit status {} and nothing said", out.exit_code));
    text.chars().take(200).collect()
}

/// How long one `status` may take: 30 s, within the step's deadline.
fn ask_limit(step: &PlannedStep, run: &StepRun) -> StdDuration {
    let deadline = step
        .timeout_s
        .map(StdDuration::from_secs)
        .unwrap_or(StdDuration::from_secs(600));
    deadline
        .saturating_sub(run.begin.elapsed())
        .clamp(StdDuration::from_secs(1), StdDuration::from_secs(30))
}

/// Polls `check` every `interval` until it passes, the step's deadline, or shutdown.
async fn poll<F, Fut>(step: &PlannedStep, run: &StepRun, interval: Duration, check: F) -> Outcome
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>, TryError>>,
{
    let deadline = step
        .timeout_s
        .map(StdDuration::from_secs)
        .unwrap_or(StdDuration::from_secs(600));
    let interval = StdDuration::from_secs(interval.secs().max(1));
    loop {
        let last = match check().await {
            Ok(how) => {
                return run.outcome(StepStatus::Done, 1, how);
            }
            Err(e) if e.refused => {
                return run.outcome(StepStatus::Failed, 1, Some(e.message));
            }
            Err(e) => Some(format!("not healthy yet: {e}")),
        };
        let left = deadline.saturating_sub(run.begin.elapsed());
        if left.is_zero() {
            return run.outcome(StepStatus::TimedOut, 1, last);
        }
        if *run.shutdown.borrow() {
            return run.outcome(StepStatus::Cancelled, 1, last);
        }
        tokio::time::sleep(interval.min(left)).await;
    }
}
