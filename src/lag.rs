//! The replication lag of a service its application replicates (a PostgreSQL standby, domain
//! controllers): its lag probe runs on a host and prints the lag in seconds.
//!
//! What a probe prints is untrusted: [`parse`] takes one plain decimal number of seconds and
//! nothing else; anything else (no output, words, a negative or absurd value, a cut output, a
//! failed or timed-out command, a host that does not answer) is a lag **unknown**, with why,
//! and an unknown lag is never judged within a target. [`judge`] is pure; [`measure`] asks the
//! host through a [`Transport`]. Nothing here prints.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::ssh::{ExecOutput, Transport};

/// The largest lag taken as a measure: a year. More is a probe gone wrong (a timestamp of 1970
/// subtracted from now), not a lag.
pub const MAX_LAG_S: f64 = Duration::MAX.0 as f64;

/// The longest output read as a lag; a longer one is not a number of seconds.
pub const MAX_OUTPUT: usize = 64;

/// One reading of a lag probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    /// When the probe answered (or gave up).
    pub at: DateTime<Utc>,
    pub reading: Reading,
}

/// The lag in seconds, or why it is unknown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reading {
    Seconds(f64),
    Unknown(String),
}

impl Reading {
    pub fn seconds(&self) -> Option<f64> {
        match self {
            Reading::Seconds(s) => Some(*s),
            Reading::Unknown(_) => None,
        }
    }
}

/// Reads a probe's output: one line holding a plain decimal number of seconds (`12`, `0.48`),
/// blanks around it allowed. Signs, exponents, `inf`, `NaN`, units, several numbers or lines
/// are refused with why.
pub fn parse(stdout: &str) -> Result<f64, String> {
    let text = stdout.trim_matches(|c: char| c.is_ascii_whitespace());
    if text.is_empty() {
        return Err("the probe printed nothing (a standby that has replayed nothing yet prints an empty value)".into());
    }
    if text.len() > MAX_OUTPUT {
        return Err(format!(
            "the probe printed {} bytes where a number of seconds was expected ({}…)",
            text.len(),
            shown(text)
        ));
    }
    if let Some(rest) = text.strip_prefix('-')
        && is_decimal(rest)
    {
        return Err(format!(
            "the probe printed a negative lag ({text}): the standby's clock is ahead of the primary's, or the probe is wrong"
        ));
    }
    if !is_decimal(text) {
        return Err(format!(
            "the probe printed `{}`, not a number of seconds",
            shown(text)
        ));
    }
    let value: f64 = text.parse().map_err(|_| {
        format!(
            "the probe printed `{}`, not a number of seconds",
            shown(text)
        )
    })?;
    if !value.is_finite() || value > MAX_LAG_S {
        return Err(format!(
            "the probe printed a lag of {text} seconds, more than a year: it cannot be a lag"
        ));
    }
    Ok(value)
}

/// Digits, with at most one `.` between digits.
fn is_decimal(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(int) && frac.is_none_or(digits)
}

/// A short, printable excerpt of untrusted text.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(40).collect();
    let cut = cut.escape_debug().to_string();
    if s.chars().count() > 40 {
        format!("{cut}…")
    } else {
        cut
    }
}

/// What a command's result says of the lag.
pub fn read_output(out: &ExecOutput, timeout: Duration) -> Reading {
    if out.timed_out {
        return Reading::Unknown(format!(
            "the probe did not answer within {timeout} and was stopped"
        ));
    }
    if out.exit_code != 0 {
        let err = out.stderr.trim();
        return Reading::Unknown(if err.is_empty() {
            format!("the probe exited with status {}", out.exit_code)
        } else {
            format!(
                "the probe exited with status {}: {}",
                out.exit_code,
                shown(err.lines().last().unwrap_or(err))
            )
        });
    }
    if out.truncated || out.stdout.len() > 4096 {
        return Reading::Unknown(format!(
            "the probe printed {} bytes or more where a number of seconds was expected",
            out.stdout.len()
        ));
    }
    match parse(&out.stdout) {
        Ok(s) => Reading::Seconds(s),
        Err(why) => Reading::Unknown(why),
    }
}

/// Runs a lag probe on `host` within `timeout` (the rendered `command`, secrets resolved).
pub fn measure(transport: &dyn Transport, host: &str, command: &str, timeout: Duration) -> Lag {
    let reading = match transport.exec(host, command, StdDuration::from_secs(timeout.secs())) {
        Ok(out) => read_output(&out, timeout),
        Err(e) => Reading::Unknown(format!("the probe could not run: {e}")),
    };
    Lag {
        at: Utc::now(),
        reading,
    }
}

/// How a lag stands against an RPO target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Within,
    Over,
    Unknown,
}

/// A lag against the target, with the words for it.
pub fn judge(reading: &Reading, rpo: Option<Duration>) -> (Verdict, String) {
    match (reading, rpo) {
        (Reading::Unknown(why), _) => (Verdict::Unknown, format!("lag unknown: {why}")),
        (Reading::Seconds(s), Some(rpo)) if *s > rpo.secs() as f64 => (
            Verdict::Over,
            format!(
                "replication lag {} is over the RPO {rpo}: a failover now would lose more than allowed",
                human(*s)
            ),
        ),
        (Reading::Seconds(s), Some(rpo)) => (
            Verdict::Within,
            format!("replication lag {} within the RPO {rpo}", human(*s)),
        ),
        (Reading::Seconds(s), None) => (
            Verdict::Within,
            format!("replication lag {} (no RPO target)", human(*s)),
        ),
    }
}

/// `0.4s`, `12s`, `3m05s`.
pub fn human(secs: f64) -> String {
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else {
        crate::duration::human_secs(secs.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(stdout: &str, code: i32) -> ExecOutput {
        ExecOutput {
            exit_code: code,
            stdout: stdout.into(),
            stderr: String::new(),
            truncated: false,
            timed_out: false,
            duration: StdDuration::from_millis(5),
        }
    }

    #[test]
    fn only_one_plain_number_of_seconds_is_a_lag() {
        for (text, secs) in [
            ("12\n", 12.0),
            ("  0.483921 \n", 0.483921),
            ("0", 0.0),
            ("31622400", MAX_LAG_S),
        ] {
            assert_eq!(parse(text), Ok(secs), "{text:?}");
        }
        for (text, why) in [
            ("", "printed nothing"),
            ("\n\n", "printed nothing"),
            ("-3.2", "negative lag"),
            ("-0", "negative lag"),
            ("+3", "not a number"),
            ("1e3", "not a number"),
            ("inf", "not a number"),
            ("NaN", "not a number"),
            ("12s", "not a number"),
            ("12 13", "not a number"),
            ("12\n13", "not a number"),
            ("1.", "not a number"),
            (".5", "not a number"),
            ("0x10", "not a number"),
            ("ERROR:  relation does not exist", "not a number"),
            ("31622401", "more than a year"),
            ("99999999999999999999999999999", "more than a year"),
            (&"9".repeat(65), "bytes where a number"),
            ("\u{1b}[31m12", "not a number"),
        ] {
            let got = parse(text).expect_err(text);
            assert!(got.contains(why), "{text:?}: {got}");
        }
    }

    #[test]
    fn a_failed_cut_or_stopped_probe_is_a_lag_unknown() {
        assert_eq!(
            read_output(&out("4\n", 0), Duration(30)),
            Reading::Seconds(4.0)
        );
        let unknown = |o: ExecOutput| match read_output(&o, Duration(30)) {
            Reading::Unknown(why) => why,
            r => panic!("{r:?}"),
        };
        let mut failed = out("4\n", 2);
        failed.stderr = "psql: error: connection refused\n".into();
        assert!(unknown(failed).contains("status 2: psql: error: connection refused"));
        let mut stopped = out("", 124);
        stopped.timed_out = true;
        assert!(unknown(stopped).contains("did not answer within 30s"));
        let mut cut = out("1", 0);
        cut.truncated = true;
        assert!(unknown(cut).contains("bytes or more"));
    }

    #[test]
    fn an_unknown_lag_is_never_within_the_target() {
        let rpo = Some(Duration(900));
        assert_eq!(judge(&Reading::Seconds(899.0), rpo).0, Verdict::Within);
        assert_eq!(judge(&Reading::Seconds(900.0), rpo).0, Verdict::Within);
        assert_eq!(judge(&Reading::Seconds(900.5), rpo).0, Verdict::Over);
        let (v, why) = judge(&Reading::Unknown("the probe printed nothing".into()), rpo);
        assert_eq!(v, Verdict::Unknown);
        assert_eq!(why, "lag unknown: the probe printed nothing");
        assert_eq!(
            judge(&Reading::Unknown("x".into()), None).0,
            Verdict::Unknown
        );
    }
}
