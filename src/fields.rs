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
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        diags.push(
            Diagnostic::error(format!("invalid TOML: {}", first_line(e.message())))
                .at(Location::new(file, span)),
        );
    }
    doc
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
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
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
                            "write a duration like \"30s\", \"15m\", \"4h\", \"1d\" or \"1h30m\"",
                        ),
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
    let span = &value.loc.span;
    let raw = text.get(span.clone()).unwrap_or("");
    for quote in ["\"\"\"", "'''", "\"", "'"] {
        if let Some(body) = raw.strip_prefix(quote) {
            let body = body.strip_prefix('\n').unwrap_or(body);
            let skipped = raw.len() - body.len();
            if body.get(..value.value.len()) == Some(value.value.as_str()) {
                let start = span.start + skipped + offset;
                return Location::new(value.loc.file, start..start + len);
            }
            break;
        }
    }
    value.loc.clone()
}
