//! Human durations as written in inventories and runbooks: `"30s"`, `"15m"`, `"4h"`, `"1d"`,
//! `"1h30m"`. Parsing, display and serialization (as seconds) only; no clock.

use std::fmt;

use serde::Serializer;

/// A whole number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub u64);

impl Duration {
    pub const ZERO: Duration = Duration(0);

    /// The longest duration a file may write: a year (366 days). A longer timeout, target or
    /// estimate is a mistake, and sums of many bounded durations cannot overflow.
    pub const MAX: Duration = Duration(366 * 86_400);

    pub fn secs(self) -> u64 {
        self.0
    }

    pub fn from_secs(s: u64) -> Self {
        Duration(s)
    }
}

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("missing unit after `{0}`")]
    MissingUnit(String),
    #[error("unknown unit `{0}`")]
    UnknownUnit(String),
    #[error("expected a number before `{0}`")]
    MissingNumber(String),
    #[error("longer than the limit of 366d")]
    TooLong,
}

impl std::str::FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(DurationError::Empty);
        }
        let mut total: u64 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            if digits == 0 {
                return Err(DurationError::MissingNumber(rest.to_string()));
            }
            let number: u64 = rest[..digits].parse().map_err(|_| DurationError::TooLong)?;
            rest = rest[digits..].trim_start();
            let unit_len = rest
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .map(char::len_utf8)
                .sum::<usize>();
            let unit = &rest[..unit_len];
            let factor = match unit {
                "s" => 1,
                "m" | "min" => 60,
                "h" => 3600,
                "d" => 86_400,
                "" => return Err(DurationError::MissingUnit(number.to_string())),
                other => return Err(DurationError::UnknownUnit(other.to_string())),
            };
            total = number
                .checked_mul(factor)
                .and_then(|v| total.checked_add(v))
                .filter(|&t| t <= Duration::MAX.0)
                .ok_or(DurationError::TooLong)?;
            rest = rest[unit_len..].trim_start();
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    /// Compact form: `1h30m`, `45s`, `2d`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.0;
        if s == 0 {
            return f.write_str("0s");
        }
        let mut out = String::new();
        for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if s >= len {
                out.push_str(&format!("{}{}", s / len, unit));
                s %= len;
            }
        }
        f.write_str(&out)
    }
}

/// `1h05m`, `3d 4h`, `42s`.
pub fn human_secs(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86400,
        secs % 86400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

pub(crate) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.secs())
}

pub(crate) fn ser_opt_duration<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(d.secs()),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: Result<u64, DurationError>) {
        assert_eq!(input.parse::<Duration>().map(|d| d.0), expected, "{input}");
    }

    #[test]
    fn parses_units_and_combinations() {
        check("30s", Ok(30));
        check("15m", Ok(900));
        check("4h", Ok(14_400));
        check("1d", Ok(86_400));
        check("1h30m", Ok(5400));
        check("1h 30m", Ok(5400));
        check("", Err(DurationError::Empty));
        check("15", Err(DurationError::MissingUnit("15".into())));
        check("4 hours", Err(DurationError::UnknownUnit("hours".into())));
        check("h", Err(DurationError::MissingNumber("h".into())));
        check("99999999999999999999d", Err(DurationError::TooLong));
        check("366d", Ok(366 * 86_400));
        check("366d1s", Err(DurationError::TooLong));
        check("153722867280912930m", Err(DurationError::TooLong));
    }

    #[test]
    fn displays_compactly_and_round_trips() {
        for s in [0, 1, 59, 60, 61, 3600, 5400, 86_400, 90_061] {
            let text = Duration(s).to_string();
            assert_eq!(text.parse::<Duration>(), Ok(Duration(s)), "{text}");
        }
        assert_eq!(Duration(5400).to_string(), "1h30m");
    }
}
