//! Command templates: `{{ namespace.name }}` placeholders in step commands, filled from the host,
//! service, VM and run when a plan is made.
//!
//! Every substituted value is shell-quoted unless the placeholder says `| raw`, so that an
//! inventory value can never inject a command. Secrets stay placeholders in the rendered
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
        // Whether the command's own text leaves the placeholder inside quotes.
        let mut shell = Shell::default();
        for part in &self.parts {
            let quotes = shell.quotes();
            match part {
                Part::Lit(s) => {
                    shell.after(s);
                    out.push_text(s)
                }
                Part::Var {
                    namespace,
                    name,
                    raw: false,
                    loc,
                } if quote && quotes.is_some() => match scope.lookup(namespace, name) {
                    // Inside quotes, a value is written as it is when no shell reads anything
                    // in it; one that holds what a shell reads cannot be quoted there (the
                    // quoted text may be run again: `sh -c '…'`).
                    Lookup::Found(TemplateValue::Text(t)) if is_plain(&t) => out.push_text(&t),
                    Lookup::Found(TemplateValue::List(items))
                        if items.iter().all(|i| is_plain(i)) =>
                    {
                        out.push_text(&items.join(" "))
                    }
                    Lookup::Found(value) => {
                        let what = match value {
                            TemplateValue::Text(t) => format!("its value `{t}` holds"),
                            TemplateValue::List(items) => {
                                format!("its value `{}` holds", items.join(" "))
                            }
                            TemplateValue::Secret { .. } => "a secret may hold".to_string(),
                        };
                        errors.push(
                            Diagnostic::error(format!(
                                "`{{{{ {namespace}.{name} }}}}` is inside {} quotes, and {what} {INSIDE_QUOTES}, which it cannot do inside quotes (the quoted text may be run again, as by `sh -c`), so the value could run as a command",
                                quotes.unwrap_or("")
                            ))
                            .at(loc.clone())
                            .hint("remove the quotes around the placeholder (reprise quotes its value), or, in a text run again by `sh -c`, pass it as an argument: sh -c 'cmd \"$1\"' sh {{ host.x }}"),
                        );
                    }
                    Lookup::Missing { what, known } => {
                        errors.push(missing(namespace, name, loc, &what, &known));
                    }
                },
                Part::Var {
                    namespace,
                    name,
                    raw,
                    loc,
                } => match scope.lookup(namespace, name) {
                    Lookup::Found(value) if !quote => match value {
                        TemplateValue::Text(t) => out.push_text(&t),
                        TemplateValue::List(items) => out.push_text(&items.join(" ")),
                        TemplateValue::Secret { env } => {
                            out.parts.push(CommandPart::Secret { env, quote: false })
                        }
                    },
                    Lookup::Found(value) => match value {
                        TemplateValue::Text(t) if *raw => out.push_text(&t),
                        TemplateValue::Text(t) => out.push_text(&shell_quote(&t)),
                        TemplateValue::List(items) => {
                            let words: Vec<String> = items
                                .iter()
                                .map(|i| if *raw { i.clone() } else { shell_quote(i) })
                                .collect();
                            out.push_text(&words.join(" "));
                        }
                        TemplateValue::Secret { env } => {
                            out.parts.push(CommandPart::Secret { env, quote: !raw })
                        }
                    },
                    Lookup::Missing { what, known } => {
                        errors.push(missing(namespace, name, loc, &what, &known));
                    }
                },
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

/// What the error of a placeholder inside quotes whose value a shell would read says.
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

/// Where a POSIX shell is in a command's text, read as far as the text before a placeholder:
/// inside quotes (single, double, `$'…'`) or not (a command substitution `$(…)` or backticks
/// inside double quotes start afresh, unquoted); a comment runs to the end of its line.
/// Heredocs are not read.
#[derive(Debug, Clone)]
struct Shell {
    stack: Vec<Ctx>,
    comment: bool,
    /// The character before, to tell a `#` that begins a word.
    prev: char,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Single,
    Double,
    AnsiC,
    /// `$(`, with the parentheses opened inside it.
    Subst(u32),
    Backtick,
}

impl Default for Shell {
    fn default() -> Self {
        Shell {
            stack: Vec::new(),
            comment: false,
            prev: ' ',
        }
    }
}

impl Shell {
    /// Reads `text` on from where the shell is.
    fn after(&mut self, text: &str) {
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let mut last = c;
            if self.comment {
                self.comment = c != '\n';
                self.prev = c;
                continue;
            }
            match self.stack.last().copied() {
                Some(Ctx::Single) => {
                    if c == '\'' {
                        self.stack.pop();
                    }
                }
                Some(Ctx::AnsiC) => match c {
                    '\\' => last = chars.next().unwrap_or(c),
                    '\'' => {
                        self.stack.pop();
                    }
                    _ => {}
                },
                Some(Ctx::Double) => match c {
                    '\\' => last = chars.next().unwrap_or(c),
                    '"' => {
                        self.stack.pop();
                    }
                    '`' => self.stack.push(Ctx::Backtick),
                    '$' if chars.peek() == Some(&'(') => {
                        chars.next();
                        self.stack.push(Ctx::Subst(0));
                    }
                    _ => {}
                },
                top => match c {
                    '\\' => last = chars.next().unwrap_or(c),
                    '\'' => self.stack.push(Ctx::Single),
                    '"' => self.stack.push(Ctx::Double),
                    '$' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        self.stack.push(Ctx::AnsiC);
                    }
                    '$' if chars.peek() == Some(&'(') => {
                        chars.next();
                        self.stack.push(Ctx::Subst(0));
                    }
                    '`' if top == Some(Ctx::Backtick) => {
                        self.stack.pop();
                    }
                    '`' => self.stack.push(Ctx::Backtick),
                    '(' => {
                        if let Some(Ctx::Subst(d)) = self.stack.last_mut() {
                            *d += 1;
                        }
                    }
                    ')' => match self.stack.last_mut() {
                        Some(Ctx::Subst(0)) => {
                            self.stack.pop();
                        }
                        Some(Ctx::Subst(d)) => *d -= 1,
                        _ => {}
                    },
                    '#' if self.prev.is_whitespace() || ";&|()".contains(self.prev) => {
                        self.comment = true;
                    }
                    _ => {}
                },
            }
            self.prev = last;
        }
    }

    /// The quotes a placeholder here would be inside, if any.
    fn quotes(&self) -> Option<&'static str> {
        match self.stack.last() {
            Some(Ctx::Single) => Some("single"),
            Some(Ctx::Double) => Some("double"),
            Some(Ctx::AnsiC) => Some("`$'…'`"),
            _ => None,
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
        // A command substitution or backticks inside double quotes start afresh, unquoted.
        check(
            "[ -z \"$(find {{ host.dir }} -name x)\" ]",
            "[ -z \"$(find '/srv/a b' -name x)\" ]",
        );
        check("echo \"`ls {{ host.dir }}`\"", "echo \"`ls '/srv/a b'`\"");
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
}
