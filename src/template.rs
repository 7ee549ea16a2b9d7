//! Command templates: `{{ namespace.name }}` placeholders in step commands, filled from the host,
//! service, VM and run when a plan is made.
//!
//! Every substituted value is shell-quoted unless the placeholder says `| raw`, so that an
//! inventory value can never inject a command: where the command's text leaves it an unquoted
//! word; anywhere else (quotes, backquotes, heredocs, `${…}`, …) only a value no shell reads
//! anything in is written, and any other is an error. Secrets stay placeholders in the rendered
//! [`Command`]: they are shown redacted and resolved only by the executor. No IO here.

use std::fmt;

use crate::diagnostic::{Diagnostic, Location};
use crate::fields::{Sp, SubLocator};

pub const NAMESPACES: &[&str] = &["host", "service", "vm", "primary", "recovery", "run"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var {
        namespace: String,
        name: String,
        raw: bool,
        loc: Location,
    },
}

/// A parsed template with the location of each placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub source: Sp<String>,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `value`; `file_text` is the text of the file it was read from, to place errors
    /// on the placeholder itself.
    pub fn parse(value: &Sp<String>, file_text: &str) -> Result<Template, Box<Diagnostic>> {
        Self::parse_inner(value, file_text).map_err(Box::new)
    }

    // The error is boxed once, in `parse`; inside, plain values keep the code readable.
    #[allow(clippy::result_large_err)]
    fn parse_inner(value: &Sp<String>, file_text: &str) -> Result<Template, Diagnostic> {
        let s = value.value.as_str();
        let locator = SubLocator::new(file_text, value);
        let mut parts = Vec::new();
        let mut rest = 0;
        while let Some(open) = s[rest..].find("{{").map(|i| i + rest) {
            if open > rest {
                parts.push(Part::Lit(s[rest..open].to_string()));
            }
            let Some(close) = s[open..].find("}}").map(|i| i + open) else {
                return Err(Diagnostic::error("unclosed `{{` in template")
                    .at(locator.at(open, 2))
                    .hint("close the placeholder with `}}`"));
            };
            let inner = &s[open + 2..close];
            let loc = locator.at(open, close + 2 - open);
            let (expr, filter) = match inner.split_once('|') {
                Some((e, f)) => (e.trim(), Some(f.trim())),
                None => (inner.trim(), None),
            };
            let raw = match filter {
                None => false,
                Some("raw") => true,
                Some(other) => {
                    return Err(
                        Diagnostic::error(format!("unknown template filter `{other}`"))
                            .at(loc)
                            .hint("the only filter is `raw`: {{ host.x | raw }}"),
                    );
                }
            };
            let Some((namespace, name)) = expr.split_once('.') else {
                return Err(
                    Diagnostic::error(format!("invalid placeholder `{{{{{inner}}}}}`"))
                        .at(loc)
                        .hint("write {{ namespace.name }}, e.g. {{ host.images_dir }}"),
                );
            };
            let valid = |t: &str| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            };
            if !valid(namespace) || !valid(name) {
                return Err(
                    Diagnostic::error(format!("invalid placeholder `{{{{{inner}}}}}`"))
                        .at(loc)
                        .hint("write {{ namespace.name }}, e.g. {{ host.images_dir }}"),
                );
            }
            if !NAMESPACES.contains(&namespace) {
                let hint = crate::diagnostic::did_you_mean(namespace, NAMESPACES.iter().copied())
                    .unwrap_or_else(|| format!("namespaces are: {}", NAMESPACES.join(", ")));
                return Err(
                    Diagnostic::error(format!("unknown template namespace `{namespace}`"))
                        .at(loc)
                        .hint(hint),
                );
            }
            parts.push(Part::Var {
                namespace: namespace.to_string(),
                name: name.to_string(),
                raw,
                loc,
            });
            rest = close + 2;
        }
        if rest < s.len() {
            parts.push(Part::Lit(s[rest..].to_string()));
        }
        Ok(Template {
            source: value.clone(),
            parts,
        })
    }

    /// Fills the placeholders from `scope`, shell-quoting each value; every unknown variable is
    /// reported.
    pub fn render(&self, scope: &dyn Scope) -> Result<Command, Vec<Diagnostic>> {
        self.render_with(scope, true)
    }

    /// Fills the placeholders without shell quoting, for values that are not shell commands
    /// (addresses, URLs).
    pub fn render_plain(&self, scope: &dyn Scope) -> Result<Command, Vec<Diagnostic>> {
        self.render_with(scope, false)
    }

    fn render_with(&self, scope: &dyn Scope, quote: bool) -> Result<Command, Vec<Diagnostic>> {
        let mut out = Command::default();
        let mut errors = Vec::new();
        // The command's text so far, as a shell reads it (a secret stands as one letter), to
        // tell where each placeholder stands.
        let mut seen = String::new();
        for part in &self.parts {
            let (namespace, name, raw, loc) = match part {
                Part::Lit(s) => {
                    seen.push_str(s);
                    out.push_text(s);
                    continue;
                }
                Part::Var {
                    namespace,
                    name,
                    raw,
                    loc,
                } => (namespace, name, *raw, loc),
            };
            let value = match scope.lookup(namespace, name) {
                Lookup::Found(value) => value,
                Lookup::Missing { what, known } => {
                    errors.push(missing(namespace, name, loc, &what, &known));
                    continue;
                }
            };
            let place = if quote && !raw {
                Shell::place(&seen)
            } else {
                Place::Word
            };
            let text = match (value, place) {
                (TemplateValue::Secret { env }, Place::Word) => {
                    out.parts.push(CommandPart::Secret {
                        env,
                        quote: quote && !raw,
                    });
                    seen.push('x');
                    continue;
                }
                (TemplateValue::Text(t), Place::Word) if raw || !quote => t,
                (TemplateValue::Text(t), Place::Word) => shell_quote(&t),
                (TemplateValue::List(items), Place::Word) => {
                    let words: Vec<String> = if raw || !quote {
                        items
                    } else {
                        items.iter().map(|i| shell_quote(i)).collect()
                    };
                    words.join(" ")
                }
                // Anywhere else, a value is written as it is when no shell reads anything in
                // it; one that holds what a shell reads cannot be quoted there.
                (TemplateValue::Text(t), Place::Guarded(_)) if is_plain(&t) => t,
                (TemplateValue::List(items), Place::Guarded(_))
                    if items.iter().all(|i| is_plain(i)) =>
                {
                    items.join(" ")
                }
                (value, Place::Guarded(guard)) => {
                    let what = match value {
                        TemplateValue::Text(t) => format!("its value `{t}` holds"),
                        TemplateValue::List(items) => {
                            format!("its value `{}` holds", items.join(" "))
                        }
                        TemplateValue::Secret { .. } => "a secret may hold".to_string(),
                    };
                    errors.push(guard.error(namespace, name, &what).at(loc.clone()));
                    continue;
                }
            };
            seen.push_str(&text);
            out.push_text(&text);
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

/// What the error of a placeholder where single quotes do not make its value one word, whose
/// value a shell would read, says.
pub const INSIDE_QUOTES: &str = "characters a shell reads: reprise quotes every value itself";

/// The error of a placeholder whose variable its scope does not have (`what`: why; `known`:
/// the names it has).
fn missing(
    namespace: &str,
    name: &str,
    loc: &Location,
    what: &str,
    known: &[String],
) -> Diagnostic {
    let hint = crate::diagnostic::did_you_mean(name, known.iter().map(String::as_str))
        .or_else(|| (!known.is_empty()).then(|| format!("known: {}", known.join(", "))));
    Diagnostic::error(format!(
        "unknown template variable `{namespace}.{name}`: {what}"
    ))
    .at(loc.clone())
    .hint_opt(hint)
}

/// Where a placeholder stands, as a POSIX shell (dash, bash) reads the command's text before
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// An unquoted word, at the top or inside `$(…)`: a value in single quotes is one literal
    /// word there.
    Word,
    /// Anywhere else: only a value no shell reads anything in is written there.
    Guarded(Guard),
}

/// A place where single quotes do not make a value one literal word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// The command's own quotes: single, double or `$'…'`.
    Quotes(&'static str),
    Backquotes,
    Heredoc,
    HeredocDelimiter,
    Parameter,
    Arithmetic,
    /// A `case` inside `$(…)`, between `case` and `esac`.
    Case,
    Comment,
    AfterDollar,
    AfterBackslash,
    /// After text that shells read differently, or that is not followed here.
    Unsure,
}

impl Guard {
    /// The error of a placeholder here whose value (`what` holds) a shell would read.
    fn error(self, namespace: &str, name: &str, what: &str) -> Diagnostic {
        let placeholder = format!("{{{{ {namespace}.{name} }}}}");
        let variable = format!(
            "assign the value to a variable where reprise quotes it (v={placeholder}) and write \"$v\" here"
        );
        let (place, why, hint) = match self {
            Guard::Quotes(quotes) => {
                return Diagnostic::error(format!(
                    "`{placeholder}` is inside {quotes} quotes, and {what} {INSIDE_QUOTES}, which it cannot do inside quotes (the quoted text may be run again, as by `sh -c`), so the value could run as a command"
                ))
                .hint("remove the quotes around the placeholder (reprise quotes its value), or, in a text run again by `sh -c`, pass it as an argument: sh -c 'cmd \"$1\"' sh {{ host.x }}");
            }
            Guard::Backquotes => (
                "inside backquotes",
                "single quotes do not hide a backquote, and backslashes change meaning there",
                "write `$(…)` instead of backquotes: reprise quotes the value inside it"
                    .to_string(),
            ),
            Guard::Heredoc => (
                "inside a heredoc",
                "a heredoc's text is not read as quoted words",
                format!(
                    "assign the value to a variable before the heredoc (v={placeholder}) and write $v in it"
                ),
            ),
            Guard::HeredocDelimiter => (
                "a heredoc's delimiter",
                "the value would say where the heredoc ends",
                "write the heredoc's delimiter in the command itself".to_string(),
            ),
            Guard::Parameter => (
                "inside `${…}`",
                "shells read quotes inside a parameter expansion differently",
                variable,
            ),
            Guard::Arithmetic => (
                "inside arithmetic (`$((…))`, `((…))`)",
                "arithmetic reads its text as if in double quotes",
                format!(
                    "assign the value to a variable (v={placeholder}) and check that it is a number before arithmetic uses it"
                ),
            ),
            Guard::Case => (
                "inside a `case` within `$(…)`",
                "reprise does not tell a pattern's `)` from the end of `$(…)` there",
                variable,
            ),
            Guard::Comment => (
                "in a comment",
                "a line break in the value would end the comment",
                "take the placeholder out of the comment".to_string(),
            ),
            Guard::AfterDollar => (
                "right after a `$`",
                "`$'…'` is a quoting of its own, which a quote escaped does not end",
                "remove the `$` before the placeholder".to_string(),
            ),
            Guard::AfterBackslash => (
                "right after a backslash",
                "the backslash would take away the value's opening quote",
                "remove the backslash before the placeholder".to_string(),
            ),
            Guard::Unsure => (
                "after text that reprise cannot be sure how a shell reads",
                "shells read it differently, or reprise does not follow it",
                variable,
            ),
        };
        Diagnostic::error(format!(
            "`{placeholder}` is {place}, and {what} {INSIDE_QUOTES}, which it cannot do there ({why}), so the value could run as a command"
        ))
        .hint(hint)
    }
}

/// A POSIX shell's reading of a command's text, as far as it tells where a placeholder after
/// it stands ([`Shell::place`]): quotes, backquotes, `$(…)`, `${…}`, arithmetic, comments (a
/// `#` that begins a word), heredocs, and `case` inside `$(…)`. What shells read differently,
/// or what is not followed here, leaves every placeholder after it guarded.
struct Shell {
    chars: Vec<char>,
    at: usize,
    /// Never empty: the bottom is the command's top level.
    stack: Vec<Ctx>,
    /// The `case`s being read, each with the index in `stack` of the commands it is in.
    cases: Vec<(usize, Case)>,
    word: Word,
    /// Whether a word here would be a command's first (where `case` and `esac` are keywords).
    command: bool,
    comment: bool,
    /// Heredocs whose delimiters were read: their bodies begin on the next line.
    pending: Vec<Heredoc>,
    /// Heredocs whose bodies are being read, and the line so far.
    bodies: Vec<Heredoc>,
    line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Single,
    Double,
    AnsiC,
    Backtick,
    /// `${…}`, inside double quotes or not.
    Parameter {
        quoted: bool,
    },
    /// `$((…))` or `((…))`, with the parentheses opened inside it.
    Arithmetic {
        depth: u32,
    },
    /// Commands: the top level, or `$(…)` (`subst`), with the parentheses opened inside and the
    /// number of heredocs pending when it began.
    Commands {
        subst: bool,
        depth: u32,
        pending: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// After `case`: the word it matches.
    Subject,
    /// Then `in`.
    In,
    /// A pattern, up to its `)`.
    Pattern,
    /// A pattern's commands, up to `;;`.
    Body,
}

#[derive(Debug, Clone, Default)]
struct Word {
    open: bool,
    /// Its text, when no quote or expansion is in it (a keyword can only be such a word).
    text: String,
    simple: bool,
    /// Whether it began where a command's first word does.
    command: bool,
}

#[derive(Debug, Clone)]
struct Heredoc {
    delimiter: String,
    /// `<<-`: tabs that begin a line are removed.
    strip: bool,
    /// A quoted delimiter: the body is read as it is.
    quoted: bool,
}

impl Shell {
    /// Where a placeholder right after `text` stands.
    fn place(text: &str) -> Place {
        let mut shell = Shell {
            chars: text.chars().collect(),
            at: 0,
            stack: vec![Ctx::Commands {
                subst: false,
                depth: 0,
                pending: 0,
            }],
            cases: Vec::new(),
            word: Word::default(),
            command: true,
            comment: false,
            pending: Vec::new(),
            bodies: Vec::new(),
            line: String::new(),
        };
        match shell.read() {
            Ok(()) => shell.end(),
            Err(guard) => Place::Guarded(guard),
        }
    }

    fn peek(&self, n: usize) -> Option<char> {
        self.chars.get(self.at + n).copied()
    }

    fn top(&self) -> Ctx {
        *self.stack.last().expect("the top level is never left")
    }

    /// The state of the `case` being read in the innermost commands, if any.
    fn case(&mut self) -> Option<&mut Case> {
        let frame = self.stack.len() - 1;
        match self.cases.last_mut() {
            Some((f, case)) if *f == frame => Some(case),
            _ => None,
        }
    }

    /// Where the text read leaves a placeholder.
    fn end(&mut self) -> Place {
        if !self.bodies.is_empty() {
            return Place::Guarded(Guard::Heredoc);
        }
        if self.comment {
            return Place::Guarded(Guard::Comment);
        }
        Place::Guarded(match self.top() {
            Ctx::Single => Guard::Quotes("single"),
            Ctx::Double => Guard::Quotes("double"),
            Ctx::AnsiC => Guard::Quotes("`$'…'`"),
            Ctx::Backtick => Guard::Backquotes,
            Ctx::Parameter { .. } => Guard::Parameter,
            Ctx::Arithmetic { .. } => Guard::Arithmetic,
            Ctx::Commands { subst: true, .. } if self.case().is_some() => Guard::Case,
            Ctx::Commands { .. } => return Place::Word,
        })
    }

    fn read(&mut self) -> Result<(), Guard> {
        while let Some(c) = self.peek(0) {
            if !self.bodies.is_empty() {
                self.body(c);
                continue;
            }
            if self.comment {
                if c != '\n' {
                    self.at += 1;
                    continue;
                }
                self.comment = false;
            }
            let next = self.peek(1);
            match (self.top(), c) {
                (Ctx::Single, '\'') => self.close()?,
                (Ctx::Single, _) => self.at += 1,
                (Ctx::AnsiC | Ctx::Double | Ctx::Backtick | Ctx::Parameter { .. }, '\\')
                | (Ctx::Arithmetic { .. }, '\\') => self.at += 2,
                (Ctx::AnsiC, '\'') | (Ctx::Double, '"') | (Ctx::Backtick, '`') => self.close()?,
                (Ctx::AnsiC | Ctx::Backtick, _) => self.at += 1,
                (Ctx::Parameter { .. }, '}') => self.close()?,
                // Inside `${…}` in double quotes, bash reads single quotes and dash does not.
                (Ctx::Parameter { quoted: true }, '\'') | (Ctx::Arithmetic { .. }, '\'') => {
                    return Err(Guard::Unsure);
                }
                (Ctx::Parameter { quoted: false }, '\'') => self.open(Ctx::Single, 1),
                (Ctx::Parameter { .. } | Ctx::Arithmetic { .. }, '"') => self.open(Ctx::Double, 1),
                (Ctx::Double | Ctx::Parameter { .. } | Ctx::Arithmetic { .. }, '`') => {
                    self.open(Ctx::Backtick, 1)
                }
                (Ctx::Double | Ctx::Parameter { .. } | Ctx::Arithmetic { .. }, '$') => {
                    self.dollar(next)?
                }
                (Ctx::Arithmetic { depth }, '(') => {
                    self.set_top(Ctx::Arithmetic { depth: depth + 1 });
                    self.at += 1;
                }
                (Ctx::Arithmetic { depth }, ')') if depth > 0 => {
                    self.set_top(Ctx::Arithmetic { depth: depth - 1 });
                    self.at += 1;
                }
                (Ctx::Arithmetic { .. }, ')') if next == Some(')') => {
                    self.at += 1;
                    self.close()?;
                }
                // `$((cmd) …)` is a command substitution after all, in bash.
                (Ctx::Arithmetic { .. }, ')') => return Err(Guard::Unsure),
                (Ctx::Double | Ctx::Parameter { .. } | Ctx::Arithmetic { .. }, _) => self.at += 1,
                (Ctx::Commands { .. }, _) => self.commands(c, next)?,
            }
        }
        Ok(())
    }

    fn set_top(&mut self, ctx: Ctx) {
        *self.stack.last_mut().expect("the top level is never left") = ctx;
    }

    /// Enters `ctx`, which begins with `len` characters.
    fn open(&mut self, ctx: Ctx, len: usize) {
        self.at += len;
        self.stack.push(ctx);
        if let Ctx::Commands { .. } = ctx {
            self.word = Word::default();
            self.command = true;
        }
    }

    /// Leaves the innermost context at its last character; what it was is part of a word.
    fn close(&mut self) -> Result<(), Guard> {
        self.at += 1;
        if let Some(Ctx::Commands { pending, .. }) = self.stack.pop() {
            // A `case` not ended, or a heredoc begun and not read, inside `$(…)`.
            let frame = self.stack.len();
            if self.pending.len() != pending || self.cases.last().is_some_and(|(f, _)| *f >= frame)
            {
                return Err(Guard::Unsure);
            }
        }
        if let Ctx::Commands { .. } = self.top() {
            self.word = Word {
                open: true,
                text: String::new(),
                simple: false,
                command: false,
            };
        }
        Ok(())
    }

    /// A `$` not in single quotes, `next` after it.
    fn dollar(&mut self, next: Option<char>) -> Result<(), Guard> {
        let quoted = !matches!(self.top(), Ctx::Commands { .. });
        match next {
            Some('(') if self.peek(2) == Some('(') => self.open(Ctx::Arithmetic { depth: 0 }, 3),
            Some('(') => self.open(
                Ctx::Commands {
                    subst: true,
                    depth: 0,
                    pending: self.pending.len(),
                },
                2,
            ),
            Some('{') => self.open(Ctx::Parameter { quoted }, 2),
            // bash's arithmetic, a word to dash.
            Some('[') => return Err(Guard::Unsure),
            Some('\'' | '"') if matches!(self.top(), Ctx::Parameter { .. }) => {
                return Err(Guard::Unsure);
            }
            None if !quoted => return Err(Guard::AfterDollar),
            _ => self.at += 1,
        }
        Ok(())
    }

    /// A character of commands, outside any quotes.
    fn commands(&mut self, c: char, next: Option<char>) -> Result<(), Guard> {
        match c {
            '\\' => match next {
                // A line continued: the word goes on.
                Some('\n') => self.at += 2,
                None => return Err(Guard::AfterBackslash),
                Some(_) => {
                    self.word_char(None);
                    self.at += 2;
                }
            },
            '\'' => {
                self.word_char(None);
                self.open(Ctx::Single, 1);
            }
            '"' => {
                self.word_char(None);
                self.open(Ctx::Double, 1);
            }
            '`' => {
                self.word_char(None);
                self.open(Ctx::Backtick, 1);
            }
            '$' => {
                self.word_char(None);
                match next {
                    Some('\'') => self.open(Ctx::AnsiC, 2),
                    Some('"') => self.open(Ctx::Double, 2),
                    _ => self.dollar(next)?,
                }
            }
            ' ' | '\t' => {
                self.end_word()?;
                self.at += 1;
            }
            '\n' => {
                self.end_word()?;
                self.command = true;
                self.at += 1;
                self.bodies = std::mem::take(&mut self.pending);
            }
            '#' if !self.word.open => {
                // `(#` and `)#` begin a comment only where the parenthesis is an operator
                // (not in bash's extended patterns).
                if self.at > 0 && matches!(self.chars[self.at - 1], '(' | ')') {
                    return Err(Guard::Unsure);
                }
                self.comment = true;
                self.at += 1;
            }
            ';' => {
                self.end_word()?;
                let len = match (next, self.peek(2)) {
                    (Some(';'), Some('&')) => 3,
                    (Some(';' | '&'), _) => 2,
                    _ => 1,
                };
                if len > 1 {
                    match self.case() {
                        Some(case @ Case::Body) => *case = Case::Pattern,
                        _ => return Err(Guard::Unsure),
                    }
                }
                self.command = true;
                self.at += len;
            }
            '&' | '|' => {
                self.end_word()?;
                // `a|b)`: one more pattern.
                self.command = !(c == '|' && matches!(self.case(), Some(Case::Pattern)));
                self.at += 1;
            }
            '<' | '>' => {
                self.end_word()?;
                self.command = false;
                match (c, next, self.peek(2)) {
                    ('<', Some('<'), Some('<')) => self.at += 3,
                    ('<', Some('<'), _) => {
                        self.at += 2;
                        self.heredoc()?;
                    }
                    _ => self.at += 1,
                }
            }
            '(' => {
                let joined = self.word.open;
                self.end_word()?;
                let Ctx::Commands {
                    subst,
                    depth,
                    pending,
                } = self.top()
                else {
                    unreachable!("read only in commands")
                };
                if matches!(self.case(), Some(Case::Pattern)) {
                    // `(a)`: a pattern may begin with `(`; `x(` is bash's extended pattern.
                    if joined {
                        return Err(Guard::Unsure);
                    }
                    self.at += 1;
                } else if self.command && next == Some('(') {
                    self.open(Ctx::Arithmetic { depth: 0 }, 2);
                } else {
                    self.set_top(Ctx::Commands {
                        subst,
                        depth: depth + 1,
                        pending,
                    });
                    self.command = true;
                    self.at += 1;
                }
            }
            ')' => {
                self.end_word()?;
                let Ctx::Commands {
                    subst,
                    depth,
                    pending,
                } = self.top()
                else {
                    unreachable!("read only in commands")
                };
                if let Some(case @ Case::Pattern) = self.case() {
                    *case = Case::Body;
                    self.command = true;
                    self.at += 1;
                } else if depth > 0 {
                    self.set_top(Ctx::Commands {
                        subst,
                        depth: depth - 1,
                        pending,
                    });
                    // `f()`: a function's name, its body to come, a command (`{ …; }`);
                    // after a subshell's `(…)` no command begins.
                    let empty = self.chars[..self.at]
                        .iter()
                        .rev()
                        .find(|c| !c.is_whitespace())
                        == Some(&'(');
                    self.command = empty;
                    self.at += 1;
                } else if subst {
                    self.close()?;
                } else {
                    return Err(Guard::Unsure);
                }
            }
            _ => {
                self.word_char(Some(c));
                self.at += 1;
            }
        }
        Ok(())
    }

    /// A character of a word (`None`: a quote or an expansion).
    fn word_char(&mut self, c: Option<char>) {
        if !self.word.open {
            self.word = Word {
                open: true,
                text: String::new(),
                simple: true,
                command: self.command,
            };
        }
        match c {
            Some(c) => self.word.text.push(c),
            None => self.word.simple = false,
        }
    }

    /// Ends the word being read, if any, and reads it as a keyword where it is one.
    fn end_word(&mut self) -> Result<(), Guard> {
        if !self.word.open {
            return Ok(());
        }
        let word = std::mem::take(&mut self.word);
        let keyword = if word.simple && word.command {
            word.text.as_str()
        } else {
            ""
        };
        let frame = self.stack.len() - 1;
        match self.case() {
            Some(case @ Case::Subject) => {
                *case = Case::In;
                self.command = false;
            }
            Some(case @ Case::In) => {
                if !(word.simple && word.text == "in") {
                    return Err(Guard::Unsure);
                }
                *case = Case::Pattern;
                self.command = true;
            }
            Some(Case::Pattern) => {
                if keyword == "esac" {
                    self.cases.pop();
                }
                self.command = false;
            }
            state => {
                let body = state.is_some();
                self.command = match keyword {
                    "case" => {
                        self.cases.push((frame, Case::Subject));
                        false
                    }
                    "esac" if body => {
                        self.cases.pop();
                        false
                    }
                    "if" | "then" | "else" | "elif" | "while" | "until" | "do" | "!" | "{"
                    | "time" => true,
                    _ => false,
                };
            }
        }
        Ok(())
    }

    /// A heredoc's delimiter, after `<<`.
    fn heredoc(&mut self) -> Result<(), Guard> {
        let strip = self.peek(0) == Some('-');
        if strip {
            self.at += 1;
        }
        while matches!(self.peek(0), Some(' ' | '\t')) {
            self.at += 1;
        }
        let mut delimiter = String::new();
        let mut quoted = false;
        loop {
            match self.peek(0) {
                None => return Err(Guard::HeredocDelimiter),
                Some(c) if c.is_whitespace() || ";&|<>()".contains(c) => break,
                Some('$' | '`') => return Err(Guard::Unsure),
                Some('\\') => {
                    quoted = true;
                    delimiter.push(self.peek(1).ok_or(Guard::HeredocDelimiter)?);
                    self.at += 2;
                }
                Some(q @ ('\'' | '"')) => {
                    quoted = true;
                    self.at += 1;
                    loop {
                        match self.peek(0) {
                            None => return Err(Guard::HeredocDelimiter),
                            Some(c) if c == q => break,
                            Some('\\') if q == '"' => {
                                let Some(e) = self.peek(1) else {
                                    return Err(Guard::HeredocDelimiter);
                                };
                                if !"$`\"\\".contains(e) {
                                    delimiter.push('\\');
                                }
                                delimiter.push(e);
                                self.at += 2;
                            }
                            Some(c) => {
                                delimiter.push(c);
                                self.at += 1;
                            }
                        }
                    }
                    self.at += 1;
                }
                Some(c) => {
                    delimiter.push(c);
                    self.at += 1;
                }
            }
        }
        if delimiter.is_empty() {
            return Err(Guard::Unsure);
        }
        self.pending.push(Heredoc {
            delimiter,
            strip,
            quoted,
        });
        Ok(())
    }

    /// A character of a heredoc's body, read line by line up to its delimiter.
    fn body(&mut self, c: char) {
        let doc = &self.bodies[0];
        match c {
            '\\' if !doc.quoted => {
                match self.peek(1) {
                    // A line continued, in a body whose delimiter is not quoted.
                    Some('\n') => {}
                    Some(e) => {
                        self.line.push(c);
                        self.line.push(e);
                    }
                    None => self.line.push(c),
                }
                self.at += 2;
            }
            '\n' => {
                let line = if doc.strip {
                    self.line.trim_start_matches('\t')
                } else {
                    &self.line
                };
                if line == doc.delimiter {
                    self.bodies.remove(0);
                }
                self.line.clear();
                self.at += 1;
            }
            c => {
                self.line.push(c);
                self.at += 1;
            }
        }
    }
}

/// Whether no shell reads anything in `s` (it is written as it is, quoted or not).
fn is_plain(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '@' | '%' | '+' | ',' | '=')
        })
}

/// A value a placeholder can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateValue {
    Text(String),
    List(Vec<String>),
    Secret { env: String },
}

/// The answer of a [`Scope`].
pub enum Lookup {
    Found(TemplateValue),
    /// Not there: `what` says why ("host `hv-main` has no variable `x`"), `known` lists the names
    /// that are.
    Missing {
        what: String,
        known: Vec<String>,
    },
}

/// Where placeholders find their values.
pub trait Scope {
    fn lookup(&self, namespace: &str, name: &str) -> Lookup;
}

/// A rendered command: text with secrets kept apart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Command {
    pub parts: Vec<CommandPart>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CommandPart {
    Text(String),
    /// Read from the environment variable `env` when the command runs.
    Secret {
        env: String,
        quote: bool,
    },
}

impl Command {
    pub fn text(s: impl Into<String>) -> Self {
        Command {
            parts: vec![CommandPart::Text(s.into())],
        }
    }

    fn push_text(&mut self, s: &str) {
        if let Some(CommandPart::Text(t)) = self.parts.last_mut() {
            t.push_str(s);
        } else {
            self.parts.push(CommandPart::Text(s.to_string()));
        }
    }

    /// The environment variables the command needs.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            CommandPart::Secret { env, .. } => Some(env.as_str()),
            CommandPart::Text(_) => None,
        })
    }

    /// The command with every secret resolved by `resolve`, for execution only.
    pub fn expose(&self, resolve: impl Fn(&str) -> Option<String>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                CommandPart::Text(t) => out.push_str(t),
                CommandPart::Secret { env, quote } => {
                    let v = resolve(env).ok_or_else(|| env.clone())?;
                    if *quote {
                        out.push_str(&shell_quote(&v));
                    } else {
                        out.push_str(&v);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Command {
    /// The redacted form: secrets appear as `<secret:NAME>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.parts {
            match p {
                CommandPart::Text(t) => f.write_str(t)?,
                CommandPart::Secret { env, .. } => write!(f, "<secret:{env}>")?,
            }
        }
        Ok(())
    }
}

/// Quotes `s` for a POSIX shell, leaving plain words as they are.
pub fn shell_quote(s: &str) -> String {
    if is_plain(s) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::{FileId, Location};

    struct Fixed;
    impl Scope for Fixed {
        fn lookup(&self, namespace: &str, name: &str) -> Lookup {
            match (namespace, name) {
                ("host", "dir") => Lookup::Found(TemplateValue::Text("/srv/a b".into())),
                ("host", "evil") => Lookup::Found(TemplateValue::Text("x; rm -rf / 'y'".into())),
                ("vm", "disks") => {
                    Lookup::Found(TemplateValue::List(vec!["a.qcow2".into(), "b c".into()]))
                }
                ("host", "pw") => Lookup::Found(TemplateValue::Secret { env: "PW".into() }),
                ("host", "plain") => Lookup::Found(TemplateValue::Text("/srv/images".into())),
                ("vm", "names") => Lookup::Found(TemplateValue::List(vec![
                    "a.qcow2".into(),
                    "b.qcow2".into(),
                ])),
                _ => Lookup::Missing {
                    what: format!("no `{name}`"),
                    known: vec!["dir".into(), "evil".into()],
                },
            }
        }
    }

    fn tpl(s: &str) -> Template {
        let text = format!("run = \"{s}\"");
        let value = Sp::new(s.to_string(), Location::new(FileId(0), 6..text.len()));
        Template::parse(&value, &text).unwrap()
    }

    #[track_caller]
    fn check(template: &str, expected: &str) {
        assert_eq!(tpl(template).render(&Fixed).unwrap().to_string(), expected);
    }

    #[test]
    fn quotes_every_value() {
        check("ls {{ host.dir }}", "ls '/srv/a b'");
        check("echo {{host.evil}}", r"echo 'x; rm -rf / '\''y'\'''");
        check("echo {{ host.evil | raw }}", "echo x; rm -rf / 'y'");
        check("for d in {{ vm.disks }}", "for d in a.qcow2 'b c'");
        check("mysql -p{{ host.pw }}", "mysql -p<secret:PW>");
    }

    /// A placeholder inside the command's own quotes cannot be quoted there (its quotes would
    /// end the command's, and the quoted text may be run again by `sh -c`): a value a shell
    /// reads anything in is refused at the placeholder; a plain one is written as it is;
    /// `raw` is the author's own word; quotes escaped or closed are left.
    #[test]
    fn a_value_inside_the_command_s_quotes_never_runs_as_a_command() {
        for bad in [
            "sh -c 'cat < {{ host.evil }}'",
            "logger \"loading {{ host.dir }}\"",
            "sh -c \"for d in {{ vm.disks }}; do :; done\"",
            "curl -H 'X-Token: {{ host.pw }}'",
            "echo 'it'\\''s {{ host.evil }}'",
            // An apostrophe in a comment quotes nothing.
            "# don't load twice\nsh -c 'cat < {{ host.evil }}'",
            "echo $'a\\'b {{ host.evil }}'",
            "echo \"$((1 + 2)) {{ host.dir }}\"",
            "echo \"$(true) {{ host.dir }}\"",
            // Single quotes do not hide a backquote inside backquotes.
            "echo \"`ls {{ host.dir }}`\"",
        ] {
            let errs = tpl(bad).render(&Fixed).unwrap_err();
            assert_eq!(errs.len(), 1, "{bad}");
            assert!(
                errs[0].message.contains("inside") && errs[0].message.contains("quotes"),
                "{bad}: {}",
                errs[0].message
            );
            let at = errs[0].location.clone().unwrap().span;
            let text = format!("run = \"{bad}\"");
            assert!(text[at].starts_with("{{"), "{bad}");
        }
        check("sh -c 'ls {{ host.plain }}/x'", "sh -c 'ls /srv/images/x'");
        check("echo \"{{ vm.names }}\"", "echo \"a.qcow2 b.qcow2\"");
        check("echo 'x' {{ host.dir }}", "echo 'x' '/srv/a b'");
        check("echo \\' {{ host.dir }}", "echo \\' '/srv/a b'");
        check("echo \"a'b\" {{ host.dir }}", "echo \"a'b\" '/srv/a b'");
        check(
            "sh -c 'echo {{ host.evil | raw }}'",
            "sh -c 'echo x; rm -rf / 'y''",
        );
        // A command substitution inside double quotes starts afresh, unquoted.
        check(
            "[ -z \"$(find {{ host.dir }} -name x)\" ]",
            "[ -z \"$(find '/srv/a b' -name x)\" ]",
        );
        check(
            "echo \"`ls {{ host.plain }}`\"",
            "echo \"`ls /srv/images`\"",
        );
        check("echo a#b 'c' {{ host.dir }}", "echo a#b 'c' '/srv/a b'");
        check(
            "echo x # it's\nls {{ host.dir }}",
            "echo x # it's\nls '/srv/a b'",
        );
    }

    #[test]
    fn secrets_are_resolved_only_on_demand() {
        let cmd = tpl("x {{ host.pw }}").render(&Fixed).unwrap();
        assert_eq!(cmd.secrets().collect::<Vec<_>>(), ["PW"]);
        assert_eq!(cmd.expose(|_| Some("s3 cr".into())).unwrap(), "x 's3 cr'");
        assert_eq!(cmd.expose(|_| None), Err("PW".to_string()));
    }

    #[test]
    fn unknown_variable_points_at_the_placeholder() {
        let errs = tpl("ls {{ host.dri }}").render(&Fixed).unwrap_err();
        assert_eq!(errs.len(), 1);
        let loc = errs[0].location.clone().unwrap();
        assert_eq!(loc.span, 10..24);
        assert_eq!(errs[0].hint.as_deref(), Some("did you mean `dir`?"));
    }

    #[test]
    fn syntax_errors() {
        let text = "run = \"ls {{ host.dir\"";
        let value = Sp::new(
            "ls {{ host.dir".to_string(),
            Location::new(FileId(0), 6..text.len()),
        );
        assert!(Template::parse(&value, text).is_err());
        for bad in ["{{ hostdir }}", "{{ hots.dir }}", "{{ host.dir | upper }}"] {
            let text = format!("run = \"{bad}\"");
            let value = Sp::new(bad.to_string(), Location::new(FileId(0), 6..text.len()));
            assert!(Template::parse(&value, &text).is_err(), "{bad}");
        }
    }

    /// `host.v` is the value given, `host.p` a plain one.
    struct Hostile(String);
    impl Scope for Hostile {
        fn lookup(&self, namespace: &str, name: &str) -> Lookup {
            match (namespace, name) {
                ("host", "v") => Lookup::Found(TemplateValue::Text(self.0.clone())),
                ("host", "p") => Lookup::Found(TemplateValue::Text("/srv/images".into())),
                _ => Lookup::Missing {
                    what: format!("no `{name}`"),
                    known: vec!["v".into(), "p".into()],
                },
            }
        }
    }

    /// Renders `template` with values that try to create a file: each is refused at its
    /// placeholder, or the command it gives, run by `sh -c` and by `bash -c`, creates nothing.
    /// A plain value (in `{{ host.v }}`'s place) renders.
    #[track_caller]
    fn never_runs(template: &str) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ran");
        let f = f.display();
        let payloads = [
            format!("$(touch {f})"),
            format!("'` ; touch {f} ; `'"),
            format!("x\ntouch {f}\n"),
        ];
        for payload in &payloads {
            match tpl(template).render(&Hostile(payload.clone())) {
                Err(errs) => {
                    assert_eq!(errs.len(), 1, "{template}");
                    let e = &errs[0];
                    assert!(
                        e.message.contains("`{{ host.v }}` is")
                            && e.message.contains(INSIDE_QUOTES)
                            && e.message.contains("so the value could run as a command")
                            && e.hint.is_some(),
                        "{template}: {}",
                        e.message
                    );
                    let at = e.location.clone().unwrap().span;
                    let text = format!("run = \"{template}\"");
                    assert!(text[at].starts_with("{{ host.v"), "{template}");
                }
                Ok(cmd) => {
                    let cmd = cmd.to_string();
                    for shell in ["sh", "bash"] {
                        std::process::Command::new(shell)
                            .args(["-c", &cmd])
                            .stdin(std::process::Stdio::null())
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null())
                            .status()
                            .unwrap();
                        assert!(
                            !dir.path().join("ran").exists(),
                            "{shell} -c ran the value of {template}: {cmd}"
                        );
                    }
                }
            }
        }
        let plain = template.replace("{{ host.v }}", "{{ host.p }}");
        let cmd = tpl(template).render(&Hostile("/srv/images".into()));
        assert!(cmd.is_ok(), "{template}: {cmd:?}");
        assert!(tpl(&plain).render(&Hostile(String::new())).is_ok());
    }

    #[test]
    fn a_value_in_a_parameter_expansion_never_runs_as_a_command() {
        never_runs("echo \"${X:-\"{{ host.v }}\"}\"");
        never_runs("echo ${X:-{{ host.v }}}");
        never_runs("echo \"${X:-'{{ host.v }}'}\"");
        never_runs("echo ${X:+\"a\"}\"{{ host.v }}\"");
    }

    #[test]
    fn a_value_in_a_case_inside_a_command_substitution_never_runs_as_a_command() {
        never_runs("echo \"$(case a in a) echo \"{{ host.v }}\";; esac)\"");
        never_runs("echo \"$(case a in (a) echo {{ host.v }};; esac)\"");
        never_runs("echo \"$(case a in a) echo x;; esac) {{ host.v }}\"");
        never_runs("echo \"$(if true; then case a in a|b) echo \"{{ host.v }}\";; esac; fi)\"");
        // `case` is a keyword only as a command's first word.
        never_runs("echo \"$(echo case) and esac {{ host.v }}\"");
    }

    #[test]
    fn a_hash_inside_a_word_begins_no_comment_that_hides_quotes() {
        never_runs("t=$(date)#\"{{ host.v }}\"");
        never_runs("t=$(date)#{{ host.v }}");
        never_runs("echo ${X}#\"{{ host.v }}\"");
        never_runs("echo a #\"\n{{ host.v }}");
        // A line break in a value would end a comment.
        never_runs("echo a # {{ host.v }}");
        // A line continued does not end a word before a `#`.
        never_runs("echo a \\\n# it's\necho '{{ host.v }}'");
    }

    #[test]
    fn a_value_in_a_heredoc_never_runs_as_a_command() {
        never_runs("cat <<EOF\n{{ host.v }}\nEOF");
        never_runs("cat <<'EOF'\n{{ host.v }}\nEOF");
        never_runs("cat <<-\"EOF\"\n\t{{ host.v }}\n\tEOF");
        never_runs("x=$(cat <<EOF\n{{ host.v }}\nEOF\n)");
        never_runs("cat <<EOF\nEOF \\\nEOF\n{{ host.v }}\nEOF");
        never_runs("cat <<{{ host.v }}\nx\n");
        // After its delimiter, a line is commands again.
        never_runs("cat <<EOF >/dev/null\nit's\nEOF\necho {{ host.v }}");
    }

    #[test]
    fn a_value_in_backquotes_never_runs_as_a_command() {
        never_runs("echo `ls {{ host.v }}`");
        never_runs("echo \"`ls {{ host.v }}`\"");
        never_runs("echo `echo '{{ host.v }}'`");
        never_runs("echo `echo \\`ls {{ host.v }}\\``");
    }

    /// What reads quotes its own way: arithmetic, `$'…'`, a backslash.
    #[test]
    fn a_value_where_single_quotes_do_not_make_one_word_never_runs_as_a_command() {
        never_runs("echo $(( {{ host.v }} + 1 ))");
        never_runs("(( {{ host.v }} > 1 )); echo");
        never_runs("echo ${{ host.v }}");
        never_runs("echo \\{{ host.v }}");
        never_runs("echo $[ {{ host.v }} ]");
    }

    /// Where the command's text is read to its end, a value is quoted as before.
    #[test]
    fn a_value_after_what_is_read_through_is_quoted() {
        for (template, expected) in [
            ("t=$(date)#x {{ host.dir }}", "t=$(date)#x '/srv/a b'"),
            (
                "case $x in a) ;; (b|c) echo;; esac; ls {{ host.dir }}",
                "case $x in a) ;; (b|c) echo;; esac; ls '/srv/a b'",
            ),
            (
                "echo \"$(case a in a) echo;; esac)\" {{ host.dir }}",
                "echo \"$(case a in a) echo;; esac)\" '/srv/a b'",
            ),
            (
                "x=$(for d in a; do case $d in *) :;; esac; done); ls {{ host.dir }}",
                "x=$(for d in a; do case $d in *) :;; esac; done); ls '/srv/a b'",
            ),
            (
                "cat <<'EOF'\nit's\nEOF\nls {{ host.dir }}",
                "cat <<'EOF'\nit's\nEOF\nls '/srv/a b'",
            ),
            (
                "d=$((1 + (2))); x=${d%.*}; f() { ls \"$@\"; }; f {{ host.dir }}",
                "d=$((1 + (2))); x=${d%.*}; f() { ls \"$@\"; }; f '/srv/a b'",
            ),
            (
                "echo \"`date`\" {{ host.dir }}",
                "echo \"`date`\" '/srv/a b'",
            ),
            ("cat <<< x {{ host.dir }}", "cat <<< x '/srv/a b'"),
            // A function whose body holds a `case`: its patterns are read as patterns.
            (
                "f() { case $1 in a) echo;; esac; }; f x; ls {{ host.dir }}",
                "f() { case $1 in a) echo;; esac; }; f x; ls '/srv/a b'",
            ),
        ] {
            check(template, expected);
        }
    }
}
