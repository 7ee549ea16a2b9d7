//! Diagnostics: a problem found in a user's file, with the file, line, column, the offending line
//! and a hint, rendered the way a compiler would.
//!
//! Every stage that reads user input collects [`Diagnostic`]s instead of stopping at the first
//! problem. This module only formats; it never reads files (the [`SourceMap`] is filled by the
//! caller) and never prints.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Index of a file in a [`SourceMap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub usize);

/// A place in a user's file: which file and which bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    pub file: FileId,
    pub span: Range<usize>,
}

impl Location {
    pub fn new(file: FileId, span: Range<usize>) -> Self {
        Location { file, span }
    }
}

/// The text of every file read, so that diagnostics can quote them.
#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

#[derive(Debug, Clone)]
struct SourceFile {
    path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
}

impl SourceMap {
    pub fn add(&mut self, path: impl Into<PathBuf>, text: String) -> FileId {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        self.files.push(SourceFile {
            path: path.into(),
            text,
            line_starts,
        });
        FileId(self.files.len() - 1)
    }

    pub fn path(&self, file: FileId) -> &Path {
        &self.files[file.0].path
    }

    pub fn text(&self, file: FileId) -> &str {
        &self.files[file.0].text
    }

    pub fn files(&self) -> impl Iterator<Item = FileId> + '_ {
        (0..self.files.len()).map(FileId)
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, file: FileId, offset: usize) -> (usize, usize) {
        let f = &self.files[file.0];
        let offset = offset.min(f.text.len());
        let line = match f.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = f.line_starts[line];
        let col = f.text[start..floor_char_boundary(&f.text, offset)]
            .chars()
            .count();
        (line + 1, col + 1)
    }

    fn line_text(&self, file: FileId, line: usize) -> &str {
        let f = &self.files[file.0];
        let start = f.line_starts[line - 1];
        let end = f
            .line_starts
            .get(line)
            .map(|e| e - 1)
            .unwrap_or(f.text.len());
        f.text[start..end].trim_end_matches('\r')
    }

    /// `path:line:col` of a location.
    pub fn describe(&self, loc: &Location) -> String {
        let (line, col) = self.line_col(loc.file, loc.span.start);
        format!("{}:{}:{}", self.path(loc.file).display(), line, col)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in the user's files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub location: Option<Location>,
    /// A short label under the caret.
    pub label: Option<String>,
    pub hint: Option<String>,
    /// Other places worth quoting (e.g. the first definition of a duplicate id).
    pub notes: Vec<(String, Location)>,
}

impl Diagnostic {
    pub fn error(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            location: None,
            label: None,
            hint: None,
            notes: Vec::new(),
        }
    }

    pub fn warning(message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(message)
        }
    }

    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    pub fn at_opt(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    pub fn note(mut self, text: impl Into<String>, location: Location) -> Self {
        self.notes.push((text.into(), location));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic like a compiler message, quoting the offending line. Whatever
    /// the input, the result is short: long texts and lines are cut (around the column for a
    /// quoted line), and control characters are not copied to the terminal.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        let word = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{word}: {}", clean(&self.message, MAX_TEXT));
        if let Some(loc) = &self.location {
            quote(&mut out, sources, loc, self.label.as_deref());
        }
        for (text, loc) in self.notes.iter().take(MAX_NOTES) {
            let _ = writeln!(out, "   = note: {}", clean(text, MAX_TEXT));
            quote(&mut out, sources, loc, None);
        }
        if self.notes.len() > MAX_NOTES {
            let _ = writeln!(
                out,
                "   = note: and {} more places",
                self.notes.len() - MAX_NOTES
            );
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "   = hint: {}", clean(hint, MAX_TEXT));
        }
        out
    }
}

/// At most this many diagnostics of one file are shown; the rest are counted.
pub const MAX_PER_FILE: usize = 20;
/// Messages, hints and labels are cut at this many characters.
const MAX_TEXT: usize = 300;
/// A quoted line is cut to this many characters around the column.
const MAX_LINE: usize = 200;
const MAX_NOTES: usize = 5;

/// `s` as it may reach a terminal or a report: control characters other than a line feed and
/// a tab (escape sequences that clear the screen, set the title, move the cursor; a carriage
/// return that hides a line) shown as `�`. What is printed comes also from remote hosts and
/// from the journal, which are not trusted.
pub fn terminal_text(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if unsafe_char(c) {
                    char::REPLACEMENT_CHARACTER
                } else {
                    c
                }
            })
            .collect(),
    )
}

/// `s` cut to `max` characters (with `…`), control characters shown as `�`.
fn clean(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        out.push(match c {
            '\t' => ' ',
            c if c.is_control() => char::REPLACEMENT_CHARACTER,
            c => c,
        });
    }
    out
}

fn quote(out: &mut String, sources: &SourceMap, loc: &Location, label: Option<&str>) {
    let (line, col) = sources.line_col(loc.file, loc.span.start);
    let text = sources.line_text(loc.file, line);
    let gutter = line.to_string().len();
    let pad = " ".repeat(gutter);
    let _ = writeln!(out, "{pad}--> {}", sources.describe(loc));
    let _ = writeln!(out, "{pad} |");
    // The caret covers the span, clipped to the first line.
    let file_text = sources.text(loc.file);
    let start = floor_char_boundary(file_text, loc.span.start.min(file_text.len()));
    let end = floor_char_boundary(file_text, loc.span.end.min(file_text.len())).max(start);
    let span_chars = file_text[start..end]
        .split('\n')
        .next()
        .unwrap_or("")
        .chars()
        .take(MAX_LINE)
        .count();
    // A long line is shown as a window around the column.
    let line_chars = text.chars().count();
    let (from, to) = if line_chars <= MAX_LINE {
        (0, line_chars)
    } else {
        let from = (col - 1)
            .saturating_sub(MAX_LINE / 3)
            .min(line_chars - MAX_LINE);
        (from, from + MAX_LINE)
    };
    let shown: String = text.chars().skip(from).take(to - from).collect();
    let (lead, tail) = (
        if from > 0 { "…" } else { "" },
        if to < line_chars { "…" } else { "" },
    );
    let _ = writeln!(out, "{line} | {lead}{}{tail}", clean(&shown, MAX_LINE));
    let caret_at = (col - 1).saturating_sub(from) + lead.chars().count();
    let carets = span_chars.max(1).min(to.saturating_sub(col - 1).max(1));
    let _ = write!(
        out,
        "{pad} | {}{}",
        " ".repeat(caret_at),
        "^".repeat(carets)
    );
    match label {
        Some(label) => {
            let _ = writeln!(out, " {}", clean(label, MAX_TEXT));
        }
        None => out.push('\n'),
    }
}

/// All diagnostics of a stage, with the sources needed to show them.
#[derive(Debug, Clone)]
pub struct Report {
    pub sources: SourceMap,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    pub fn warnings(&self) -> usize {
        self.diagnostics.len() - self.errors()
    }

    /// Every diagnostic rendered (at most [`MAX_PER_FILE`] per file, the others counted), then
    /// a count.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut shown: HashMap<Option<FileId>, usize> = HashMap::new();
        let mut hidden: BTreeMap<Option<FileId>, (usize, usize)> = BTreeMap::new();
        for d in &self.diagnostics {
            let file = d.location.as_ref().map(|l| l.file);
            let n = shown.entry(file).or_default();
            if *n >= MAX_PER_FILE {
                let h = hidden.entry(file).or_default();
                if d.is_error() {
                    h.0 += 1;
                } else {
                    h.1 += 1;
                }
                continue;
            }
            *n += 1;
            out.push_str(&d.render(&self.sources));
            out.push('\n');
        }
        for (file, (e, w)) in hidden {
            let place = match file {
                Some(f) => format!("in {}", self.sources.path(f).display()),
                None => "without a place".to_string(),
            };
            let mut counts = Vec::new();
            if e > 0 {
                counts.push(format!("{e} more error{}", plural(e)));
            }
            if w > 0 {
                counts.push(format!("{w} more warning{}", plural(w)));
            }
            let _ = writeln!(
                out,
                "... and {} {place}, not shown: fix the ones above first (later ones often follow from them)\n",
                counts.join(" and ")
            );
        }
        let (e, w) = (self.errors(), self.warnings());
        if e > 0 {
            let _ = writeln!(
                out,
                "{} error{} and {} warning{} found",
                e,
                plural(e),
                w,
                plural(w)
            );
        }
        out
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Names longer than this get no suggestion.
const MAX_SUGGESTED: usize = 200;

/// The closest candidate to `name`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let name_l = name.to_lowercase();
    let mut best: Vec<&str> = Vec::new();
    let mut best_d = usize::MAX;
    // Long names are not typos of short ones, and the distance costs their product.
    if name.len() > MAX_SUGGESTED {
        return None;
    }
    for c in candidates {
        if c.len() > MAX_SUGGESTED {
            continue;
        }
        let d = edit_distance(&name_l, &c.to_lowercase());
        let limit = (name.chars().count().max(c.chars().count()) / 3).max(1);
        let d = if normalise(name) == normalise(c) {
            0
        } else {
            d
        };
        if d > limit || d > best_d {
            continue;
        }
        if d < best_d {
            best.clear();
            best_d = d;
        }
        if !best.contains(&c) {
            best.push(c);
        }
    }
    match best.as_slice() {
        [] => None,
        [one] => Some(format!("did you mean `{one}`?")),
        many => {
            let names: Vec<String> = many.iter().map(|c| format!("`{c}`")).collect();
            Some(format!("did you mean {}?", names.join(" or ")))
        }
    }
}

fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbouring characters each count one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {

    /// What reaches a terminal never carries an escape sequence, a bell or a carriage return
    /// (a remote host's output, a name in the journal); lines and tabs stay.
    #[test]
    fn terminal_text_shows_control_characters_and_keeps_lines() {
        assert!(matches!(
            terminal_text("plain\n\ttext"),
            std::borrow::Cow::Borrowed("plain\n\ttext")
        ));
        assert_eq!(
            terminal_text("a\u{1b}[2Jb\u{7}c\rd\u{9b}e\n"),
            "a\u{fffd}[2Jb\u{fffd}c\u{fffd}d\u{fffd}e\n"
        );
    }
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let names = ["erp-db", "erp-app", "directory"];
        assert_eq!(
            did_you_mean("erp_db", names).as_deref(),
            Some("did you mean `erp-db`?")
        );
        assert_eq!(
            did_you_mean("directroy", names).as_deref(),
            Some("did you mean `directory`?")
        );
        assert_eq!(did_you_mean("print", names), None);
    }

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let mut map = SourceMap::default();
        let f = map.add("a.toml", "x = 1\né = \"y\"\n".to_string());
        assert_eq!(map.line_col(f, 0), (1, 1));
        let at_y = map.text(f).find('"').unwrap();
        assert_eq!(map.line_col(f, at_y), (2, 5));
    }

    #[test]
    fn a_long_line_is_cut_around_the_caret_at_its_start_middle_and_end() {
        let mut map = SourceMap::default();
        let line = format!("{}X{}\u{1b}[2J", "é".repeat(1000), "ü".repeat(1000));
        let f = map.add("a.toml", format!("{line}\n"));
        let text = map.text(f).to_string();
        for (at, marked) in [
            (0, 'é'),
            (text.find('X').unwrap(), 'X'),
            (text.find('\u{1b}').unwrap(), '\u{fffd}'),
        ] {
            let d = Diagnostic::error("e").at(Location::new(f, at..at + 1));
            let out = d.render(&map);
            let lines: Vec<&str> = out.lines().collect();
            let (quoted, caret) = (lines[3], lines[4]);
            assert!(quoted.chars().count() <= MAX_LINE + 8, "{quoted}");
            assert!(
                !out.contains('\u{1b}'),
                "a control character reached the output"
            );
            let col = caret.chars().position(|c| c == '^').unwrap();
            assert_eq!(quoted.chars().nth(col), Some(marked), "{quoted}\n{caret}");
        }
    }

    #[test]
    fn renders_file_line_caret_and_hint() {
        let mut map = SourceMap::default();
        let f = map.add("inv/h.toml", "[hosts.a]\nsite = \"pari\"\n".to_string());
        let start = map.text(f).find("\"pari\"").unwrap();
        let d = Diagnostic::error("unknown site `pari`")
            .at(Location::new(f, start..start + 6))
            .hint("did you mean `paris`?");
        let text = d.render(&map);
        assert!(text.contains("--> inv/h.toml:2:8"), "{text}");
        assert!(text.contains("2 | site = \"pari\""), "{text}");
        assert!(text.contains("  |        ^^^^^^"), "{text}");
        assert!(text.contains("= hint: did you mean `paris`?"), "{text}");
    }
}
