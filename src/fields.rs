//! Reading parsed TOML tables key by key, keeping the location of every value, so that each
//! problem is reported at its own line and every problem of a file is reported, not only the
//! first. Used by the inventory and runbook loaders instead of serde derive, whose errors stop at
//! the first problem. Pure: the text was read by the caller.

use std::collections::HashSet;

use toml::de::{DeTable, DeValue};

use crate::diagnostic::{Diagnostic, FileId, Location, did_you_mean};
use crate::duration::Duration;

/// A value with the place it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sp<T> {
    pub value: T,
    pub loc: Location,
}

impl<T> Sp<T> {
    pub fn new(value: T, loc: Location) -> Self {
        Sp { value, loc }
    }
}

impl Sp<String> {
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

pub type Value<'i> = toml::Spanned<DeValue<'i>>;

/// Parses a whole file; syntax errors become diagnostics and the recovered document is returned.
pub fn parse_document<'i>(
    file: FileId,
    text: &'i str,
    diags: &mut Vec<Diagnostic>,
) -> toml::Spanned<DeTable<'i>> {
    let (doc, errors) = DeTable::parse_recoverable(text);
    for (i, e) in errors.into_iter().enumerate() {
        let span = e.span().unwrap_or(0..0);
        let mut d = Diagnostic::error(format!("invalid TOML: {}", first_line(e.message())))
            .at(Location::new(file, span.clone()));
        // Only the errors that will be shown are explained (each search reads the file).
        if i < crate::diagnostic::MAX_PER_FILE && e.message() == "duplicate key" {
            d = match first_definition(text, doc.get_ref(), span) {
                Some((first, true)) => d
                    .note("first defined here", Location::new(file, first))
                    .hint("a table is written once: put all its keys under one header"),
                Some((first, false)) => d
                    .note("first defined here", Location::new(file, first))
                    .hint("a key is set once per table: keep one of the two"),
                None => d.hint("a key is set once per table, and a table is written once"),
            };
        }
        diags.push(d);
    }
    doc
}

/// Where the key reported as a duplicate at `at` was first defined, and whether it is a
/// table header.
fn first_definition(
    text: &str,
    doc: &DeTable<'_>,
    at: std::ops::Range<usize>,
) -> Option<(std::ops::Range<usize>, bool)> {
    let line_start = text.get(..at.start)?.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[at.start..]
        .find('\n')
        .map_or(text.len(), |i| at.start + i);
    let line = &text[line_start..line_end];
    if line.trim_start().starts_with('[') {
        // A table header written twice: the same header on an earlier line.
        let header = normal_header(line);
        let mut offset = 0;
        for earlier in text[..line_start].split_inclusive('\n') {
            if normal_header(earlier) == header {
                let lead = earlier.len() - earlier.trim_start().len();
                let len = earlier.trim_end().len() - lead;
                return Some((offset + lead..offset + lead + len, true));
            }
            offset += earlier.len();
        }
    }
    // A key set twice: the last key of that name before it, in the same section.
    let raw = text.get(at.clone())?;
    let name = raw.trim_matches(|c| c == '"' || c == '\'');
    let mut headers = Vec::new();
    let mut keys = Vec::new();
    walk_keys(text, doc, name, &mut headers, &mut keys);
    headers.sort_unstable();
    let section = |pos: usize| headers.iter().rev().find(|&&h| h <= pos).copied();
    let here = section(at.start);
    keys.into_iter()
        .filter(|k| k.start < at.start && section(k.start) == here)
        .max_by_key(|k| k.start)
        .map(|k| (k, false))
}

/// `[a . b]  # x` → `[a.b]`.
fn normal_header(line: &str) -> String {
    let line = line.trim();
    let end = line.rfind(']').map_or(line.len(), |i| i + 1);
    line[..end].chars().filter(|c| !c.is_whitespace()).collect()
}

/// The starts of every table header, and the spans of every key named `name`.
fn walk_keys(
    text: &str,
    table: &DeTable<'_>,
    name: &str,
    headers: &mut Vec<usize>,
    keys: &mut Vec<std::ops::Range<usize>>,
) {
    for (k, v) in table.iter() {
        if k.get_ref().as_ref() == name {
            keys.push(k.span());
        }
        let mut visit = |v: &Value<'_>| {
            if let DeValue::Table(t) = v.get_ref() {
                if text.as_bytes().get(v.span().start) == Some(&b'[') {
                    headers.push(v.span().start);
                }
                walk_keys(text, t, name, headers, keys);
            }
        };
        match v.get_ref() {
            DeValue::Array(items) => items.iter().for_each(&mut visit),
            _ => visit(v),
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

pub fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A table being read: every key read is remembered, and [`Table::finish`] reports the rest as
/// unknown keys with a suggestion.
pub struct Table<'t, 'i> {
    pub file: FileId,
    pub loc: Location,
    /// What the table is, for messages: "host `hv-main`".
    pub what: String,
    entries: &'t DeTable<'i>,
    used: HashSet<String>,
    known: Vec<&'static str>,
    /// Required keys found missing; reported by `finish`, unless a misspelt key stands for one.
    missing: Vec<&'static str>,
    /// Unknown keys are not reported (the table's kind was unknown: its keys mean nothing).
    lenient: bool,
}

impl<'t, 'i> Table<'t, 'i> {
    /// Reads `value` as a table, or reports that it is not one.
    pub fn of(
        file: FileId,
        value: &'t Value<'i>,
        what: impl Into<String>,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Self> {
        let what = what.into();
        match value.get_ref() {
            DeValue::Table(entries) => Some(Table {
                file,
                loc: Location::new(file, value.span()),
                what,
                entries,
                used: HashSet::new(),
                known: Vec::new(),
                missing: Vec::new(),
                lenient: false,
            }),
            other => {
                diags.push(
                    Diagnostic::error(format!("{what} must be a table, not {}", type_name(other)))
                        .at(Location::new(file, value.span())),
                );
                None
            }
        }
    }

    pub fn root(file: FileId, doc: &'t toml::Spanned<DeTable<'i>>, what: &str) -> Self {
        Table {
            file,
            loc: Location::new(file, 0..0),
            what: what.to_string(),
            entries: doc.get_ref(),
            used: HashSet::new(),
            known: Vec::new(),
            missing: Vec::new(),
            lenient: false,
        }
    }

    /// Stops reporting unknown keys: called when the table's kind is itself wrong, so that one
    /// mistake gives one error.
    pub fn lenient(&mut self) {
        self.lenient = true;
    }

    /// Whether the table has `key` (without reading it).
    pub fn has(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// The keys of the table not read so far.
    pub fn unread(&self) -> Vec<Sp<String>> {
        self.entries
            .iter()
            .filter(|(k, _)| !self.used.contains(k.get_ref().as_ref()))
            .map(|(k, _)| Sp::new(k.get_ref().to_string(), self.loc(k.span())))
            .collect()
    }

    /// Marks `key` as read.
    pub fn mark_used(&mut self, key: &str) {
        self.used.insert(key.to_string());
    }

    fn loc(&self, span: std::ops::Range<usize>) -> Location {
        Location::new(self.file, span)
    }

    /// The raw value of a key, marking it known and used.
    pub fn get(&mut self, key: &'static str) -> Option<&'t Value<'i>> {
        self.known.push(key);
        let v = self.entries.get(key)?;
        self.used.insert(key.to_string());
        Some(v)
    }

    /// Every entry, in file order, with the key's location (for maps of ids).
    pub fn entries(&mut self) -> Vec<(Sp<String>, &'t Value<'i>)> {
        self.used
            .extend(self.entries.iter().map(|(k, _)| k.get_ref().to_string()));
        self.entries
            .iter()
            .map(|(k, v)| (Sp::new(k.get_ref().to_string(), self.loc(k.span())), v))
            .collect()
    }

    fn missing(&mut self, key: &'static str, _diags: &mut Vec<Diagnostic>) {
        if !self.missing.contains(&key) {
            self.missing.push(key);
        }
    }

    fn wrong_type(&self, key: &str, expected: &str, v: &Value<'_>, diags: &mut Vec<Diagnostic>) {
        diags.push(
            Diagnostic::error(format!(
                "`{key}` of {} must be {expected}, not {}",
                self.what,
                type_name(v.get_ref())
            ))
            .at(self.loc(v.span())),
        );
    }

    pub fn str(&mut self, key: &'static str, diags: &mut Vec<Diagnostic>) -> Option<Sp<String>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Sp::new(s.to_string(), self.loc(v.span()))),
            _ => {
                self.wrong_type(key, "a string", v, diags);
                None
            }
        }
    }

    pub fn req_str(
        &mut self,
        key: &'static str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<String>> {
        let present = self.entries.contains_key(key);
        let r = self.str(key, diags);
        if !present {
            self.missing(key, diags);
        }
        r
    }

    pub fn bool(&mut self, key: &'static str, diags: &mut Vec<Diagnostic>) -> Option<bool> {
        self.located_bool(key, diags).map(|b| b.value)
    }

    /// [`Table::bool`] with where it is written.
    pub fn located_bool(
        &mut self,
        key: &'static str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<bool>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(Sp::new(*b, self.loc(v.span()))),
            _ => {
                self.wrong_type(key, "true or false", v, diags);
                None
            }
        }
    }

    /// An integer within `min..=max`.
    pub fn int(
        &mut self,
        key: &'static str,
        min: i64,
        max: i64,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<i64>> {
        let v = self.get(key)?;
        let loc = self.loc(v.span());
        match v.get_ref() {
            DeValue::Integer(i) => {
                let parsed = i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok();
                match parsed {
                    Some(n) if (min..=max).contains(&n) => Some(Sp::new(n, loc)),
                    _ => {
                        diags.push(
                            Diagnostic::error(format!(
                                "`{key}` of {} must be between {min} and {max}",
                                self.what
                            ))
                            .at(loc),
                        );
                        None
                    }
                }
            }
            _ => {
                self.wrong_type(key, "an integer", v, diags);
                None
            }
        }
    }

    /// A duration (zero allowed: an expected duration may be negligible).
    pub fn duration(
        &mut self,
        key: &'static str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<Duration>> {
        let s = self.str(key, diags)?;
        match s.value.parse::<Duration>() {
            Ok(d) => Some(Sp::new(d, s.loc)),
            Err(e) => {
                diags.push(
                    Diagnostic::error(format!("invalid duration `{}`: {e}", s.value))
                        .at(s.loc)
                        .hint(
                            "write a duration like \"30s\", \"15m\", \"4h\", \"1d\" or \"1h30m\" (at most \"366d\")",
                        ),
                );
                None
            }
        }
    }

    /// A duration that must be more than zero (a timeout, a target, an interval).
    /// `hint` says why zero means nothing for this key.
    pub fn positive_duration(
        &mut self,
        key: &'static str,
        hint: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<Duration>> {
        let d = self.duration(key, diags)?;
        if d.value == Duration::ZERO {
            diags.push(
                Diagnostic::error(format!("`{key}` of {} is zero", self.what))
                    .at(d.loc)
                    .hint(hint),
            );
            return None;
        }
        Some(d)
    }

    /// Like [`Table::positive_duration`], and reports the key when it is missing.
    pub fn req_positive_duration(
        &mut self,
        key: &'static str,
        hint: &str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<Duration>> {
        self.require(key, diags)?;
        self.positive_duration(key, hint, diags)
    }

    /// Text that must not be blank, when present.
    pub fn text(&mut self, key: &'static str, diags: &mut Vec<Diagnostic>) -> Option<Sp<String>> {
        self.checked(key, diags, |v| {
            blank(v).then(|| {
                (
                    "is empty".into(),
                    format!("give `{key}` a value, or remove it"),
                )
            })
        })
    }

    /// Text that must be present and not blank.
    pub fn req_text(
        &mut self,
        key: &'static str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<String>> {
        self.require(key, diags)?;
        self.checked(key, diags, |v| {
            blank(v).then(|| ("is empty".into(), format!("`{key}` needs a value")))
        })
    }

    /// An IP address or a host name, when present.
    pub fn address(
        &mut self,
        key: &'static str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<String>> {
        self.checked(key, diags, |v| {
            address_problem(v).map(|p| (p, ADDRESS_HINT.into()))
        })
    }

    /// Like [`Table::address`], and reports the key when it is missing.
    pub fn req_address(
        &mut self,
        key: &'static str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<String>> {
        self.require(key, diags)?;
        self.address(key, diags)
    }

    /// A name that ends up in file names and commands on a host (a vm's name): letters,
    /// digits, `.`, `-` and `_`.
    pub fn name(&mut self, key: &'static str, diags: &mut Vec<Diagnostic>) -> Option<Sp<String>> {
        self.checked(key, diags, |v| {
            name_problem(v).map(|p| (p, NAME_HINT.into()))
        })
    }

    /// An absolute path on a host, when present.
    pub fn abs_path(
        &mut self,
        key: &'static str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<String>> {
        self.checked(key, diags, |v| {
            path_problem(v, true).map(|p| (p, ABS_PATH_HINT.into()))
        })
    }

    /// Like [`Table::abs_path`], and reports the key when it is missing.
    pub fn req_abs_path(
        &mut self,
        key: &'static str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<String>> {
        self.require(key, diags)?;
        self.abs_path(key, diags)
    }

    /// `Some(())` when `key` is present; else remembers it as missing (reported by `finish`).
    fn require(&mut self, key: &'static str, diags: &mut Vec<Diagnostic>) -> Option<()> {
        if self.entries.contains_key(key) {
            return Some(());
        }
        self.known.push(key);
        self.missing(key, diags);
        None
    }

    /// A string passed through `problem` (what is wrong with it, and a hint).
    fn checked(
        &mut self,
        key: &'static str,
        diags: &mut Vec<Diagnostic>,
        problem: impl Fn(&str) -> Option<(String, String)>,
    ) -> Option<Sp<String>> {
        let s = self.str(key, diags)?;
        match problem(&s.value) {
            None => Some(s),
            Some((what, hint)) => {
                diags.push(
                    Diagnostic::error(format!("`{key}` of {} {what}", self.what))
                        .at(s.loc)
                        .hint(hint),
                );
                None
            }
        }
    }

    /// A list of strings (`[]` when absent).
    pub fn str_list(&mut self, key: &'static str, diags: &mut Vec<Diagnostic>) -> Vec<Sp<String>> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(key, "an array of strings", v, diags);
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(s) => out.push(Sp::new(s.to_string(), self.loc(item.span()))),
                other => diags.push(
                    Diagnostic::error(format!(
                        "`{key}` of {} must hold strings, not {}",
                        self.what,
                        type_name(other)
                    ))
                    .at(self.loc(item.span())),
                ),
            }
        }
        out
    }

    /// A string that must be one of `choices`.
    pub fn choice(
        &mut self,
        key: &'static str,
        choices: &[&str],
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<String>> {
        let s = self.str(key, diags)?;
        if choices.contains(&s.as_str()) {
            return Some(s);
        }
        let hint = did_you_mean(&s.value, choices.iter().copied())
            .unwrap_or_else(|| format!("expected one of: {}", choices.join(", ")));
        diags.push(
            Diagnostic::error(format!("unknown {key} `{}` in {}", s.value, self.what))
                .at(s.loc)
                .hint(hint),
        );
        None
    }

    /// Like [`Table::choice`], and reports the key when it is missing.
    pub fn req_choice(
        &mut self,
        key: &'static str,
        choices: &[&str],
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<String>> {
        if !self.entries.contains_key(key) {
            self.known.push(key);
            self.missing(key, diags);
            return None;
        }
        self.choice(key, choices, diags)
    }

    /// Like [`Table::int`], and reports the key when it is missing.
    pub fn req_int(
        &mut self,
        key: &'static str,
        min: i64,
        max: i64,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<i64>> {
        if !self.entries.contains_key(key) {
            self.known.push(key);
            self.missing(key, diags);
            return None;
        }
        self.int(key, min, max, diags)
    }

    /// Like [`Table::duration`], and reports the key when it is missing.
    pub fn req_duration(
        &mut self,
        key: &'static str,
        diags: &mut Vec<Diagnostic>,
    ) -> Option<Sp<Duration>> {
        if !self.entries.contains_key(key) {
            self.known.push(key);
            self.missing(key, diags);
            return None;
        }
        self.duration(key, diags)
    }

    /// Reports the missing required keys and every key that was never read. A misspelt key
    /// that stands for a missing one is reported once, as a misspelling.
    pub fn finish(self, diags: &mut Vec<Diagnostic>) {
        let mut explained = Vec::new();
        for (k, _) in self.entries.iter() {
            let key = k.get_ref();
            if self.used.contains(key.as_ref()) || self.lenient {
                continue;
            }
            let hint = did_you_mean(key, self.known.iter().copied()).unwrap_or_else(|| {
                let mut known = self.known.clone();
                known.sort_unstable();
                known.dedup();
                format!("known keys: {}", known.join(", "))
            });
            explained.extend(
                self.missing
                    .iter()
                    .filter(|m| did_you_mean(key, [**m]).is_some()),
            );
            diags.push(
                Diagnostic::error(format!("unknown key `{key}` in {}", self.what))
                    .at(self.loc(k.span()))
                    .hint(hint),
            );
        }
        for key in &self.missing {
            if explained.contains(key) {
                continue;
            }
            diags.push(
                Diagnostic::error(format!("{} is missing `{key}`", self.what))
                    .at(self.loc.clone())
                    .hint(format!("add `{key} = ...` to this table")),
            );
        }
    }
}

/// Location of a sub-string of a string value, when the source holds the text verbatim (no
/// escapes); otherwise the whole value.
pub fn sub_location(text: &str, value: &Sp<String>, offset: usize, len: usize) -> Location {
    SubLocator::new(text, value).at(offset, len)
}

/// Locations of sub-strings of one string value; whether the source holds it verbatim is
/// found once (it costs the value's length), so placing many sub-strings stays linear.
pub struct SubLocator {
    whole: Location,
    /// Where the value's text starts in the file, when it is there verbatim.
    start: Option<usize>,
}

impl SubLocator {
    pub fn new(text: &str, value: &Sp<String>) -> Self {
        let span = &value.loc.span;
        let raw = text.get(span.clone()).unwrap_or("");
        let mut start = None;
        for quote in ["\"\"\"", "'''", "\"", "'"] {
            if let Some(body) = raw.strip_prefix(quote) {
                let body = body.strip_prefix('\n').unwrap_or(body);
                let skipped = raw.len() - body.len();
                if body.get(..value.value.len()) == Some(value.value.as_str()) {
                    start = Some(span.start + skipped);
                }
                break;
            }
        }
        SubLocator {
            whole: value.loc.clone(),
            start,
        }
    }

    pub fn at(&self, offset: usize, len: usize) -> Location {
        match self.start {
            Some(start) => Location::new(self.whole.file, start + offset..start + offset + len),
            None => self.whole.clone(),
        }
    }
}

fn blank(s: &str) -> bool {
    s.trim().is_empty()
}

pub const ADDRESS_HINT: &str = "write an IPv4 address (192.0.2.10), an IPv6 address (2001:db8::10) or a host name (hv1.example.org)";
pub const NAME_HINT: &str =
    "names use letters, digits, `.`, `-` and `_`, and start with a letter or digit";
pub const ABS_PATH_HINT: &str =
    "write an absolute path without `.` or `..` parts, e.g. \"/srv/replicas\"";
pub const REL_PATH_HINT: &str =
    "write a file name relative to the host's `images_dir`, e.g. \"erp-db-data.qcow2\"";

/// What is wrong with an address (after "`address` of host `x` "), if anything: it must be an
/// IP address or a host name.
pub fn address_problem(s: &str) -> Option<String> {
    if blank(s) {
        return Some("is empty".into());
    }
    if s.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    if s.matches(':').count() == 1 {
        return Some("holds a `:` (a port goes in `port`, not in the address)".into());
    }
    if s.contains(':') {
        return Some("is not a valid IPv6 address".into());
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Some("is not a valid IPv4 address (four numbers from 0 to 255)".into());
    }
    if name.len() > 253 {
        return Some("is not a valid host name (longer than 253 characters)".into());
    }
    for label in name.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Some(
                "is not a valid host name (dot-separated labels of letters, digits and `-`)".into(),
            );
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Some("is not a valid host name (its last label is a number)".into());
    }
    None
}

/// What is wrong with the URL of an http check, if anything: `http(s)://HOST[:PORT]/…`.
pub fn url_problem(url: &str) -> Option<String> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Some("is not an http:// or https:// URL".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (host, port) = match authority.strip_prefix('[') {
        Some(inner) => match inner.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, tail)) => match tail.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Some("has a malformed `[IPv6]:PORT`".into()),
            },
            None => return Some("has an unclosed `[`".into()),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Some("has an invalid port (1 to 65535)".into());
    }
    if host.contains(':') && !authority.starts_with('[') {
        return Some("has an IPv6 address without `[...]`".into());
    }
    address_problem(host).map(|p| format!("has a host that {p}"))
}

/// What is wrong with a name used in file names and commands on a host, if anything.
pub fn name_problem(s: &str) -> Option<String> {
    if blank(s) {
        return Some("is empty".into());
    }
    let ok = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    (!ok).then(|| "is not a plain name".into())
}

/// What is wrong with a path on a host, if anything: absolute (a folder or backup set) or
/// relative (a disk under `images_dir`), made of plain parts: no `.` or `..`, no empty part,
/// no control character, no part ending in `.reprise` (replica metadata lives there), and no
/// part so long that a name reprise makes of it (`NAME.reprise`, `STEM.reprise-replicate`)
/// would not fit a file name (255 bytes).
pub fn path_problem(s: &str, absolute: bool) -> Option<String> {
    if blank(s) {
        return Some("is empty".into());
    }
    if s.chars().any(char::is_control) {
        return Some("holds a control character".into());
    }
    let rest = match (s.strip_prefix('/'), absolute) {
        (Some(_), false) => return Some("is an absolute path".into()),
        (None, true) => return Some("is not an absolute path".into()),
        (Some(""), true) => return Some("is the root folder".into()),
        (Some(rest), true) => rest,
        (None, false) => s,
    };
    for part in rest.split('/') {
        match part {
            "" => return Some("has an empty part (`//` or a trailing `/`)".into()),
            "." | ".." => return Some(format!("has a `{part}` part")),
            p if p.ends_with(".reprise") => {
                return Some("has a part ending in `.reprise`, kept for replica metadata".into());
            }
            p if p.len() > MAX_PART => {
                return Some(format!(
                    "has a part of {} bytes: reprise names files after it with up to {} bytes more (`.reprise-replicate`), and a file name holds 255 at most; keep each part to {MAX_PART} bytes",
                    p.len(),
                    255 - MAX_PART
                ));
            }
            _ => {}
        }
    }
    None
}

/// The longest part of a path [`path_problem`] takes: 255 bytes less `.reprise-replicate`.
const MAX_PART: usize = 255 - ".reprise-replicate".len();

#[cfg(test)]
mod tests {
    use super::*;

    /// A part whose names reprise makes beside it would not fit a file name is refused at
    /// validation, not by the host's first replication ("File name too long").
    #[test]
    fn a_path_part_too_long_for_the_names_made_of_it_is_refused() {
        let fits = "a".repeat(MAX_PART);
        assert_eq!(path_problem(&fits, false), None);
        let long = "a".repeat(250);
        let why = path_problem(&long, false).unwrap();
        assert!(why.contains("has a part of 250 bytes"), "{why}");
        let why = path_problem(&format!("/srv/{long}/x"), true).unwrap();
        assert!(why.contains("has a part of 250 bytes"), "{why}");
    }

    #[track_caller]
    fn check(problem: Option<String>, expected: Option<&str>) {
        match (problem.as_deref(), expected) {
            (None, None) => {}
            (Some(p), Some(e)) if p.contains(e) => {}
            (p, e) => panic!("got {p:?}, expected {e:?}"),
        }
    }

    #[test]
    fn addresses_are_ip_addresses_or_host_names() {
        for ok in [
            "192.0.2.10",
            "::1",
            "2001:db8::10",
            "hv1",
            "hv-main.paris.school.example",
            "erp-db.example.",
            "x1.y2",
        ] {
            check(address_problem(ok), None);
        }
        for (bad, why) in [
            ("", "is empty"),
            ("  ", "is empty"),
            ("256.1.1.1", "IPv4"),
            ("10.0.0", "IPv4"),
            ("1.2.3.4.5", "IPv4"),
            ("fe80::1%eth0", "IPv6"),
            ("[::1]", "IPv6"),
            ("db pra.example", "host name"),
            ("db_pra", "host name"),
            ("-db.example", "host name"),
            ("a..b", "host name"),
            ("host.123", "last label is a number"),
            ("127.0.0.1:22", "a port goes in `port`"),
        ] {
            check(address_problem(bad), Some(why));
        }
        check(address_problem(&"a".repeat(64)), Some("host name"));
        check(address_problem(&["a"; 130].join(".")), Some("253"));
    }

    #[test]
    fn urls_name_a_scheme_a_host_and_maybe_a_port() {
        for ok in [
            "http://db.example/health",
            "https://db.example:8443/",
            "http://192.0.2.1",
            "http://[2001:db8::1]:8080/x?y#z",
        ] {
            check(url_problem(ok), None);
        }
        for (bad, why) in [
            ("ftp://db.example/", "http:// or https://"),
            ("db.example/health", "http:// or https://"),
            ("http://", "is empty"),
            ("http://db.example:0/", "port"),
            ("http://db.example:80800/", "port"),
            ("http://db.example:/", "port"),
            ("http://2001:db8::1/", "without `[...]`"),
            ("http://[::1/", "unclosed"),
            ("http://[::1]x/", "malformed"),
            ("http://db_pra/", "host name"),
        ] {
            check(url_problem(bad), Some(why));
        }
    }

    #[test]
    fn paths_on_hosts_stay_where_they_are_meant_to() {
        check(path_problem("/srv/replicas", true), None);
        check(path_problem("db.qcow2", false), None);
        check(path_problem("100/vm-100-disk-0.qcow2", false), None);
        for (bad, absolute, why) in [
            ("/etc/shadow", false, "absolute"),
            ("srv/x", true, "not an absolute"),
            ("/", true, "root"),
            ("", false, "empty"),
            ("../../etc/shadow", false, "`..`"),
            ("/srv/../etc", true, "`..`"),
            ("./db.qcow2", false, "`.`"),
            ("/srv//x", true, "empty part"),
            ("/srv/x/", true, "empty part"),
            ("db.qcow2.reprise", false, ".reprise"),
            ("a\nb", false, "control"),
        ] {
            check(path_problem(bad, absolute), Some(why));
        }
        check(name_problem("erp-db.v2"), None);
        for bad in ["", "../db", "a/b", "-x", ".x", "a b"] {
            assert!(name_problem(bad).is_some(), "{bad}");
        }
    }
}
