//! The programs a shell command calls ([`command_words`]), and bash syntax in a command run
//! by `sh` ([`bash_only`]): read from the text, never run. Hand-written on purpose: no
//! shell-words crate follows wrappers and `sh -c` scripts.

/// Shell words that are not programs to look for.
const NOT_TOOLS: &[&str] = &[
    "!", "{", "}", "(", ")", "[", "[[", "]]", ":", ".", "if", "then", "else", "elif", "fi", "for",
    "while", "until", "do", "done", "case", "esac", "in", "function", "time", "set", "cd", "echo",
    "exit", "true", "false", "export", "local", "read", "printf", "test", "return", "shift",
    "eval", "exec", "wait", "trap", "unset", "break", "continue", "source", "command", "type",
    "umask", "ulimit", "alias", "let", "declare", "readonly", "pwd", "kill",
];

/// Programs that run the command given after their own options (and, for `timeout`, a
/// duration; for `env`, assignments): with the options that take a value.
const WRAPPERS: &[(&str, &[&str])] = &[
    ("timeout", &["-s", "--signal", "-k", "--kill-after"]),
    ("env", &["-u", "--unset", "-C", "--chdir"]),
    ("nice", &["-n", "--adjustment"]),
    ("nohup", &[]),
    ("setsid", &[]),
    ("sudo", &["-u", "--user", "-g", "--group"]),
    ("exec", &["-a"]),
    ("ionice", &["-c", "--class", "-n", "--classdata"]),
    ("flock", &["-w", "--timeout", "-E", "--conflict-exit-code"]),
];

/// Shells whose `-c` script is read for the programs it calls.
const SHELLS: &[&str] = &["sh", "bash", "dash"];

/// Where a wrapper's command is, while its arguments are read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrapped {
    /// Reading the options of the wrapper at this index of [`WRAPPERS`].
    Options(usize),
    /// The next word is the option's value.
    Value(usize),
    /// `flock FILE` or `timeout DURATION`: one operand before the command.
    Operand,
}

/// The programs a shell command calls: the first word of each simple command (after
/// separators, pipes, `do`, `then`, `!`…), and the command a wrapper runs (`timeout 300 cmd`,
/// `env X=1 cmd`, `nohup`, `setsid`, `sudo`, `exec`, `flock FILE cmd`), skipping assignments,
/// redirections, builtins, shell functions the command defines, arithmetic (`$((…))`,
/// `((…))`), `case` patterns, here-documents and anything computed. The script of `sh -c '…'`
/// or `bash -c '…'` is read the same way; other quoted strings are not looked into; command
/// substitutions (`$(…)`) are.
pub fn command_words(cmd: &str) -> Vec<String> {
    command_words_at(cmd, 0)
}

fn command_words_at(cmd: &str, depth: usize) -> Vec<String> {
    let chars: Vec<char> = cmd.chars().collect();
    let mut reader = Reader {
        chars: &chars,
        depth,
        i: 0,
        words: Vec::new(),
        functions: Vec::new(),
        at_start: true,
        wrapped: None,
        shell: None,
        skipping: false,
        cases: 0,
        pattern_next: false,
        heredocs: Vec::new(),
    };
    while reader.i < chars.len() {
        if reader.pattern_next && reader.cases > 0 {
            reader.case_pattern();
        } else {
            reader.syntax_or_word();
        }
    }
    let Reader {
        mut words,
        functions,
        ..
    } = reader;
    words.retain(|w| !functions.contains(w));
    words
}

/// Where [`command_words`] stands in a command's text, and what it found so far.
struct Reader<'a> {
    chars: &'a [char],
    /// How deep in `sh -c` scripts this text is.
    depth: usize,
    i: usize,
    words: Vec<String>,
    /// Shell functions the text defines: their calls are not programs.
    functions: Vec<String>,
    /// Whether the next word is in command position.
    at_start: bool,
    /// After a wrapper (`timeout 300 cmd`): its options, then its command.
    wrapped: Option<Wrapped>,
    /// After `sh` or `bash` (in command position): whether `-c` was seen.
    shell: Option<bool>,
    /// After `for` or `case`, words are data until the next separator.
    skipping: bool,
    /// Open `case` statements, and whether a pattern (`a|b)`) comes next.
    cases: usize,
    pattern_next: bool,
    /// Here-documents announced on this line: their bodies start at the next new line.
    heredocs: Vec<(String, bool)>,
}

impl Reader<'_> {
    /// Where a `case` pattern comes: past it (up to its `)`), or the `esac` that ends the
    /// statement.
    fn case_pattern(&mut self) {
        if self.chars[self.i].is_whitespace() {
            self.i += 1;
            return;
        }
        if starts_word(self.chars, self.i, "esac") {
            self.cases -= 1;
            self.pattern_next = false;
            self.at_start = false;
            self.i += 4;
            return;
        }
        // Up to and past the `)` that closes the pattern.
        self.i = skip_past(self.chars, self.i, ')');
        self.pattern_next = false;
        self.at_start = true;
    }

    /// One blank, new line, arithmetic command, redirection or separator; or one word.
    fn syntax_or_word(&mut self) {
        let (chars, i) = (self.chars, self.i);
        let c = chars[i];
        match c {
            ' ' | '\t' => {
                self.i += 1;
            }
            '\n' => {
                self.i += 1;
                for (delim, strip_tabs) in std::mem::take(&mut self.heredocs) {
                    self.i = skip_heredoc(chars, self.i, &delim, strip_tabs);
                }
                self.at_start = true;
                self.skipping = false;
            }
            '(' if self.at_start && self.wrapped.is_none() && chars.get(i + 1) == Some(&'(') => {
                // An arithmetic command: `(( n++ ))`.
                self.i = skip_arithmetic(chars, i);
                self.at_start = false;
            }
            '&' if (i > 0 && matches!(chars[i - 1], '>' | '<'))
                || chars.get(i + 1) == Some(&'>') =>
            {
                // A redirection (`2>&1`, `<&3`, `&>/dev/null`), not a command separator: its
                // target is no program.
                let (_, _, next) = read_word(chars, i + 1, &mut self.heredocs);
                self.i = next.max(i + 1);
            }
            ';' | '&' | '|' | '(' | ')' | '{' | '}' | '`' => {
                self.wrapped = None;
                self.shell = None;
                if c == ';' && chars.get(i + 1) == Some(&';') && self.cases > 0 {
                    // The end of a `case` branch: a pattern comes next.
                    self.pattern_next = true;
                    self.i += 1;
                }
                self.at_start = true;
                self.skipping = false;
                self.i += 1;
            }
            _ => self.word(),
        }
    }

    /// One word: an argument of `sh -c` or of a wrapper, a function's name, data, or a word
    /// in command position.
    fn word(&mut self) {
        let chars = self.chars;
        let start = self.i;
        let (word, opaque, next) = read_word(chars, self.i, &mut self.heredocs);
        self.i = next;
        // A command substitution in double quotes (`"$(find …)"`) runs its programs too (a
        // script given to `sh -c` is read whole below).
        if self.shell.is_none() {
            for text in quoted_substitutions(&chars[start..next]) {
                self.words.extend(command_words_at(&text, self.depth));
            }
        }
        if let Some(seen_c) = self.shell {
            self.shell_argument(seen_c, &word, opaque, start);
            return;
        }
        if let Some(state) = self.wrapped
            && self.wrapper_argument(state, &word, opaque)
        {
            return;
        }
        // `name()`: a function definition; its calls are not programs.
        let j = skip_blanks(chars, self.i);
        if self.at_start && !opaque && chars.get(j) == Some(&'(') && chars.get(j + 1) == Some(&')')
        {
            self.functions.push(word);
            self.i = j + 2;
            self.at_start = true;
            return;
        }
        if !self.at_start || self.skipping {
            if self.skipping && word == "in" && self.cases > 0 {
                self.pattern_next = true;
                self.skipping = false;
            }
            return;
        }
        self.command_position(word, opaque);
    }

    /// An argument of `sh` or `bash`: its options up to `-c`, then the script, whose
    /// programs are read; the rest are the script's arguments.
    fn shell_argument(&mut self, seen_c: bool, word: &str, opaque: bool, start: usize) {
        if !seen_c {
            if word == "-c" {
                self.shell = Some(true);
            } else if !word.starts_with('-') || opaque {
                self.shell = None;
            }
            return;
        }
        self.shell = None;
        if self.depth < 4 {
            let raw: String = self.chars[start..self.i].iter().collect();
            if let Some(script) = unquote(&raw) {
                self.words.extend(command_words_at(&script, self.depth + 1));
            }
        }
    }

    /// An argument of a wrapper: whether it was one of its options, an option's value, its
    /// operand or an `env` assignment (true), or the command it runs (false: then in command
    /// position).
    fn wrapper_argument(&mut self, state: Wrapped, word: &str, opaque: bool) -> bool {
        match state {
            Wrapped::Value(w) => {
                self.wrapped = Some(Wrapped::Options(w));
                true
            }
            Wrapped::Options(w) if word.starts_with('-') && !opaque => {
                let takes_value = WRAPPERS[w].1.contains(&word);
                self.wrapped = Some(if takes_value {
                    Wrapped::Value(w)
                } else {
                    Wrapped::Options(w)
                });
                true
            }
            Wrapped::Options(w) if matches!(WRAPPERS[w].0, "timeout" | "flock") => {
                // The duration, or the lock file: the command comes next.
                self.wrapped = Some(Wrapped::Operand);
                true
            }
            Wrapped::Options(w) if WRAPPERS[w].0 == "env" && is_assignment(word) => true,
            Wrapped::Options(_) | Wrapped::Operand => {
                // The wrapped command: in command position.
                self.wrapped = None;
                self.at_start = true;
                false
            }
        }
    }

    /// A word in command position: an assignment, a redirection, a keyword or builtin, or a
    /// program (noted; a wrapper or a shell then reads its arguments).
    fn command_position(&mut self, word: String, opaque: bool) {
        if is_assignment(&word) {
            // An assignment before the command: the command comes next.
            return;
        }
        if word.starts_with(|c: char| c.is_ascii_digit()) && word.contains('>') {
            return;
        }
        if word == "for" || word == "case" {
            self.skipping = true;
            if word == "case" {
                self.cases += 1;
            }
            return;
        }
        if word == "esac" {
            self.cases = self.cases.saturating_sub(1);
            self.pattern_next = false;
        }
        if word == "function" {
            // `function name { … }`: the next word is a name, not a program.
            let at = skip_blanks(self.chars, self.i);
            let (name, _, next) = read_word(self.chars, at, &mut self.heredocs);
            self.functions.push(name);
            self.i = next;
            return;
        }
        if word == "exec" || word == "command" {
            // `exec cmd` runs cmd; `command cmd` too, but `command -v cmd` only looks.
            let at = skip_blanks(self.chars, self.i);
            let (peek, _, _) = read_word(self.chars, at, &mut Vec::new());
            if word == "exec" || !peek.starts_with('-') {
                self.wrapped = Some(Wrapped::Options(
                    WRAPPERS.iter().position(|(w, _)| *w == "exec").unwrap_or(0),
                ));
            }
            self.at_start = false;
            return;
        }
        if NOT_TOOLS.contains(&word.as_str()) {
            // Keywords keep the next word in command position.
            self.at_start = matches!(
                word.as_str(),
                "!" | "if" | "then" | "else" | "elif" | "while" | "until" | "do" | "time"
            );
            return;
        }
        self.at_start = false;
        if !opaque
            && !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-/".contains(c))
            && !word.starts_with('-')
        {
            let base = word.rsplit('/').next().unwrap_or(&word).to_string();
            if let Some(w) = WRAPPERS.iter().position(|(name, _)| *name == base) {
                self.wrapped = Some(Wrapped::Options(w));
            } else if SHELLS.contains(&base.as_str()) {
                self.shell = Some(false);
            }
            self.words.push(word);
        }
    }
}

/// The text of a word that is one quoted string (`'…'`, or `"…"` with nothing computed in it).
fn unquote(raw: &str) -> Option<String> {
    if raw.len() >= 2 && raw.starts_with('\'') && raw.ends_with('\'') {
        let inner = &raw[1..raw.len() - 1];
        return (!inner.contains('\'')).then(|| inner.to_string());
    }
    if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        let inner = &raw[1..raw.len() - 1];
        if inner.contains(['$', '`']) {
            return None;
        }
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some(n @ ('"' | '\\')) => out.push(n),
                    Some(n) => {
                        out.push('\\');
                        out.push(n);
                    }
                    None => return None,
                }
            } else if c == '"' {
                return None;
            } else {
                out.push(c);
            }
        }
        return Some(out);
    }
    None
}

/// Reads one word from `i`: its text (quotes removed, computed parts kept as `$`), whether
/// anything in it was quoted or computed, and where it ends. A here-document operator in it
/// (`<<END`, `<<-'END'`) is noted for the next new line.
fn read_word(
    chars: &[char],
    mut i: usize,
    heredocs: &mut Vec<(String, bool)>,
) -> (String, bool, usize) {
    let mut word = String::new();
    let mut opaque = false;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() || ";&|()`".contains(c) {
            break;
        }
        match c {
            '\'' | '"' => {
                opaque = true;
                let quote = c;
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    if quote == '"' && chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '\\' => {
                opaque = true;
                i += 2;
            }
            '$' if chars.get(i + 1) == Some(&'(') && chars.get(i + 2) == Some(&'(') => {
                // Arithmetic, `$(( … ))`: a value, never a program.
                opaque = true;
                word.push('$');
                i = skip_arithmetic(chars, i + 1);
            }
            '<' if chars.get(i + 1) == Some(&'<') && chars.get(i + 2) != Some(&'<') => {
                opaque = true;
                word.push_str("<<");
                i += 2;
                let strip_tabs = chars.get(i) == Some(&'-');
                if strip_tabs {
                    i += 1;
                }
                i = skip_blanks(chars, i);
                // The delimiter, quoted or not (`'END'`, `"END"`, `\END`).
                let mut delim = String::new();
                while i < chars.len() && !chars[i].is_whitespace() && !";&|()<>".contains(chars[i])
                {
                    if !"'\"\\".contains(chars[i]) {
                        delim.push(chars[i]);
                    }
                    i += 1;
                }
                if !delim.is_empty() {
                    heredocs.push((delim, strip_tabs));
                }
            }
            '$' | '<' | '>' | '*' | '?' => {
                opaque = true;
                word.push(c);
                i += 1;
            }
            _ => {
                word.push(c);
                i += 1;
            }
        }
    }
    (word, opaque, i.min(chars.len()))
}

/// The texts of the command substitutions (`$(…)`, `` `…` ``) inside the double-quoted
/// parts of the word `chars`.
fn quoted_substitutions(chars: &[char]) -> Vec<String> {
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\'' => i = past_single(chars, i + 1),
            '\\' => i += 2,
            '"' => i = double_quoted(chars, i + 1, &mut found),
            _ => i += 1,
        }
    }
    found
}

/// From just inside a double-quoted string, past its closing quote (or to the end): the texts
/// of the command substitutions in it are added to `found`.
fn double_quoted(chars: &[char], mut i: usize, found: &mut Vec<String>) -> usize {
    while i < chars.len() {
        match chars[i] {
            '"' => return i + 1,
            '\\' => i += 2,
            '$' if chars.get(i + 1) == Some(&'(') && chars.get(i + 2) != Some(&'(') => {
                let end = substitution_end(chars, i + 2);
                let inner = match chars.get(end.wrapping_sub(1)) {
                    Some(')') if end > i + 2 => &chars[i + 2..end - 1],
                    _ => &chars[(i + 2).min(chars.len())..end.min(chars.len())],
                };
                found.push(inner.iter().collect());
                i = end;
            }
            '`' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|c| *c == '`')
                    .map_or(chars.len(), |p| i + 1 + p);
                found.push(chars[i + 1..end].iter().collect());
                i = end + 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// From just inside a single-quoted string, past its closing quote (or to the end).
fn past_single(chars: &[char], i: usize) -> usize {
    chars[i.min(chars.len())..]
        .iter()
        .position(|c| *c == '\'')
        .map_or(chars.len(), |p| i + p + 1)
}

/// From just inside a `$(`, past its closing `)` (or to the end): parentheses counted, quoted
/// text skipped.
fn substitution_end(chars: &[char], mut i: usize) -> usize {
    let mut depth = 1usize;
    while i < chars.len() {
        match chars[i] {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            '\'' => {
                i = past_single(chars, i + 1);
                continue;
            }
            '"' => {
                i = double_quoted(chars, i + 1, &mut Vec::new());
                continue;
            }
            '\\' => i += 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// `NAME=value`: a variable assignment (the value may be quoted or computed).
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn skip_blanks(chars: &[char], mut i: usize) -> usize {
    while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
        i += 1;
    }
    i
}

fn starts_word(chars: &[char], i: usize, word: &str) -> bool {
    let w: Vec<char> = word.chars().collect();
    chars.len() >= i + w.len()
        && chars[i..i + w.len()] == w[..]
        && chars
            .get(i + w.len())
            .is_none_or(|c| c.is_whitespace() || ";&|()".contains(*c))
}

/// From a `((` at `i`, past its closing `))` (or to the end).
fn skip_arithmetic(chars: &[char], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < chars.len() {
        match chars[i] {
            '(' => depth += 1,
            ')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    i
}

/// From `i`, past the next `c` outside quotes (or to the end).
fn skip_past(chars: &[char], mut i: usize, c: char) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\'' | '"' => {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += 1;
                }
            }
            x if x == c => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// From the start of a here-document's body, past the line that ends it.
fn skip_heredoc(chars: &[char], mut i: usize, delim: &str, strip_tabs: bool) -> usize {
    while i < chars.len() {
        let end = chars[i..]
            .iter()
            .position(|&c| c == '\n')
            .map_or(chars.len(), |p| i + p);
        let line: String = chars[i..end].iter().collect();
        let line = if strip_tabs {
            line.trim_start_matches('\t')
        } else {
            line.as_str()
        };
        i = (end + 1).min(chars.len());
        if line.trim_end() == delim {
            break;
        }
    }
    i
}

/// Syntax of bash that `sh` lacks, with how it reads. Every command reprise runs on a host
/// (steps, checks, undos, driver actions) runs under `sh -c`, which is dash on Debian.
const BASH_ONLY: &[(&str, &str)] = &[
    ("/dev/tcp/", "/dev/tcp"),
    ("/dev/udp/", "/dev/udp"),
    ("[[", "`[[ … ]]`"),
    ("<(", "process substitution `<(…)`"),
    (">(", "process substitution `>(…)`"),
    ("<<<", "a here-string `<<<`"),
    (
        "&>",
        "`&>` (sh reads it as `&` then `>`: the command runs in the background)",
    ),
];

/// The bash syntax in a command that runs under `sh`, outside the scripts of `bash -c '…'`.
pub fn bash_only(cmd: &str) -> Option<&'static str> {
    let mut rest = cmd;
    let mut outside = String::new();
    while let Some(at) = rest.find("bash -c ") {
        outside.push_str(&rest[..at]);
        let after = rest[at + "bash -c ".len()..].trim_start();
        let Some(quote) = after.chars().next().filter(|c| *c == '\'' || *c == '"') else {
            rest = after;
            continue;
        };
        match after[1..].find(quote) {
            Some(end) => rest = &after[end + 2..],
            None => {
                rest = "";
            }
        }
    }
    outside.push_str(rest);
    BASH_ONLY
        .iter()
        .find(|(marker, _)| outside.contains(marker))
        .map(|(_, what)| *what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_words_finds_the_programs_and_skips_shell_syntax() {
        let w = command_words(
            "virsh domstate dc1 | grep -qx 'shut off' || { virsh shutdown dc1 && timeout 300 sh -c 'until virsh domstate \"$0\"; do sleep 2; done' dc1; }",
        );
        assert_eq!(
            w,
            ["virsh", "grep", "virsh", "timeout", "sh", "virsh", "sleep"]
        );
        let w = command_words(
            "set -e; dir=/var/x; mkdir -p \"$dir\"; files=; for d in a.qcow2 b.qcow2; do qemu-img create -q -f qcow2 \"$dir/$d\"; done",
        );
        assert_eq!(w, ["mkdir", "qemu-img"]);
        let w = command_words("LC_ALL=C iptables-restore < /etc/iptables/rules.v4 2>/dev/null");
        assert_eq!(w, ["iptables-restore"]);
        let w = command_words("if ! mountpoint -q /srv; then mount /srv; fi; \"$HOME/x\" run");
        assert_eq!(w, ["mountpoint", "mount"]);
        let w = command_words("/usr/sbin/upsrw -s x=1\nsystemctl start a");
        assert_eq!(w, ["/usr/sbin/upsrw", "systemctl"]);
        let w = command_words(
            "virsh net-info x >/dev/null 2>&1 || virsh net-start x &>/dev/null; cat <&3",
        );
        assert_eq!(w, ["virsh", "virsh", "cat"]);
        // Command substitutions in double quotes, nested quotes and parentheses in them; a
        // single-quoted one is text.
        let w = command_words(
            "[ -z \"$(find \"$dir/$d\" -maxdepth 0 -cnewer \"$sm\" 2>&1)\" ] || echo \"x `date +%s` $(basename \"$(dirname /a/b)\")\" '$(rm -rf /)'",
        );
        assert_eq!(w, ["find", "date", "basename", "dirname"]);
    }

    proptest::proptest! {
        #[test]
        fn any_command_text_gives_words_without_panicking(
            text in "[a-z $()=<>'\"\\;|&{}\n\t!#*?`-]{0,80}",
        ) {
            for w in command_words(&text) {
                proptest::prop_assert!(!w.is_empty() && !w.starts_with('-'));
            }
        }
    }

    #[test]
    fn arithmetic_patterns_functions_and_here_documents_are_not_programs() {
        let check =
            |cmd: &str, expected: &[&str]| assert_eq!(command_words(cmd), expected, "{cmd}");
        check(
            "id=$((900000 + 101)); qm clone 101 $id --name drill-x && qm set $id --net0 virtio",
            &["qm", "qm"],
        );
        check(
            "x=$(( 1 + 2 )) ; echo $((x * 3)) ; (( n++ )) ; qm stop $id",
            &["qm"],
        );
        check(
            "case $x in a|b) virsh start a;; (c) qm start 1;; *) ;; esac; ip a",
            &["virsh", "qm", "ip"],
        );
        check(
            "f() { virsh list; }; f; function g { qm list; }; g",
            &["virsh", "qm"],
        );
        check(
            "a=$(qm status 101 | awk '{print $2}') b=1 virsh list",
            &["qm", "awk", "virsh"],
        );
        check(
            "cat <<EOF > /x\nhello world\nEOF\nvirsh list",
            &["cat", "virsh"],
        );
        check(
            "cat <<-'END'\n\tnot a program\n\tEND\nqm list",
            &["cat", "qm"],
        );
        check("x=1 y=2 qm list", &["qm"]);
        check("[[ -e /x ]] && virsh list", &["virsh"]);
    }

    #[test]
    fn wrapped_commands_and_shell_scripts_are_programs_too() {
        let check =
            |cmd: &str, expected: &[&str]| assert_eq!(command_words(cmd), expected, "{cmd}");
        check("timeout -k 5 300 qm stop 101", &["timeout", "qm"]);
        check(
            "timeout --kill-after=5 30 virsh list",
            &["timeout", "virsh"],
        );
        check("env -u X A=1 B=2 virsh list", &["env", "virsh"]);
        check(
            "nice -n 10 ionice -c 3 rsync -a x y",
            &["nice", "ionice", "rsync"],
        );
        check(
            "nohup setsid sudo -u qemu qemu-img info x",
            &["nohup", "setsid", "sudo", "qemu-img"],
        );
        check(
            "flock /run/x.lock virsh list; exec virsh start a",
            &["flock", "virsh", "virsh"],
        );
        check("command -v virsh && command virsh list", &["virsh"]);
        check("bash -c 'cat </dev/tcp/$0/7000' 10.0.0.1", &["bash", "cat"]);
        check(
            "sh -c \"pvesm status | grep -q local\"",
            &["sh", "pvesm", "grep"],
        );
        check("sh -e -c 'x=$(( 1 + 2 ))' arg", &["sh"]);
        check("sh ./script.sh; bash", &["sh", "bash"]);
        check("exec 2>&1; mount -a", &["mount"]);
    }

    /// A driver command as a plan renders it: every value a quoted word.
    fn rendered(template: &str) -> String {
        let mut out = String::new();
        let mut rest = template;
        while let Some(at) = rest.find("{{") {
            out.push_str(&rest[..at]);
            let end = rest[at..].find("}}").map_or(rest.len(), |e| at + e + 2);
            out.push_str("'v'");
            rest = &rest[end..];
        }
        out + rest
    }

    /// `virsh` says a domain's state in the host's language (a French hypervisor: not
    /// "running", not "shut off"): every action of the libvirt driver reads it in English,
    /// as the changed-blocks path does.
    #[test]
    fn every_libvirt_action_reads_virsh_in_english() {
        let doc: toml::Table = crate::inventory::BUILTIN_DRIVERS.parse().unwrap();
        let actions = doc["drivers"]["libvirt"].as_table().unwrap();
        let mut commands = 0;
        for (action, cmd) in actions {
            if !crate::inventory::VM_ACTIONS.contains(&action.as_str()) {
                continue;
            }
            commands += 1;
            let cmd = cmd.as_str().unwrap();
            assert!(cmd.starts_with("export LC_ALL=C; "), "{action}: {cmd}");
        }
        assert!(commands >= 15, "{commands}");
    }

    /// Every action of every built-in driver, and the programs `check` looks for: exactly
    /// the tools it calls, nothing of its shell syntax.
    #[test]
    fn the_builtin_drivers_need_exactly_their_tools() {
        let doc: toml::Table = crate::inventory::BUILTIN_DRIVERS.parse().unwrap();
        let mut seen = Vec::new();
        for (driver, actions) in doc["drivers"].as_table().unwrap() {
            for (action, cmd) in actions.as_table().unwrap() {
                // `definition_format`, `replicate_reads_live`: not commands.
                if !crate::inventory::VM_ACTIONS.contains(&action.as_str()) {
                    continue;
                }
                let mut words = command_words(&rendered(cmd.as_str().unwrap()));
                words.sort();
                words.dedup();
                seen.push(format!("{driver} {action}: {}", words.join(" ")));
            }
        }
        let expected = [
            "libvirt start: grep virsh",
            "libvirt stop: grep sh sleep timeout virsh",
            "libvirt status: grep virsh",
            "libvirt drill-status: virsh",
            "libvirt autostart-off: virsh",
            "libvirt autostart-on: virsh",
            "libvirt definition: grep virsh",
            "libvirt define: virsh",
            "libvirt undefine: virsh",
            "libvirt drill-start: awk grep ip mkdir qemu-img sed virsh",
            "libvirt drill-network-check: awk grep ip sed virsh",
            "libvirt drill-stop: grep rm rmdir virsh",
            "libvirt replicate-check: awk grep sort virsh",
            "libvirt replicate-begin: awk virsh",
            "libvirt replicate-end: awk grep qemu-img rm sed virsh virt-xml",
            "proxmox definition: qm",
            "proxmox define: awk cat grep mv qm readlink rm",
            "proxmox undefine: qm rm",
            "proxmox start: awk pvesm qm readlink sleep",
            "proxmox stop: qm sleep",
            "proxmox status: qm",
            "proxmox drill-status: qm",
            "proxmox autostart-off: qm",
            "proxmox autostart-on: qm",
            "proxmox drill-start: awk grep ip mkdir pvesm qemu-img qm readlink",
            "proxmox drill-network-check: awk ip",
            "proxmox drill-stop: grep qemu-img qm rm rmdir",
            "proxmox replicate-check: awk pvesm qm readlink",
            "proxmox replicate-begin: qm rm sleep stat",
            "proxmox replicate-end: find qm rm",
            "lab start: lab-vm",
            "lab stop: lab-vm",
            "lab status: lab-vm",
            "lab drill-status: lab-vm",
            "lab autostart-off: lab-vm",
            "lab autostart-on: lab-vm",
            "lab drill-start: grep lab-vm mkdir qemu-img",
            "lab definition: lab-vm",
            "lab define: lab-vm",
            "lab undefine: lab-vm",
            "lab drill-stop: lab-vm rm rmdir",
            "lab replicate-check: lab-vm",
            "lab replicate-begin: lab-vm",
            "lab replicate-end: lab-vm",
        ];
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        seen.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn bash_syntax_outside_bash_is_found() {
        assert_eq!(bash_only("cat </dev/tcp/10.0.0.1/7000"), Some("/dev/tcp"));
        assert_eq!(bash_only("bash -c 'cat </dev/tcp/$0/7000' x"), None);
        assert_eq!(
            bash_only("bash -c 'exec 3<>/dev/tcp/a/1' && [[ -e /x ]]"),
            Some("`[[ … ]]`")
        );
        assert_eq!(
            bash_only("diff <(ls a) <(ls b)"),
            Some("process substitution `<(…)`")
        );
        assert!(bash_only("virsh start x &>/dev/null").is_some());
        assert_eq!(bash_only("virsh start x >/dev/null 2>&1"), None);
        assert_eq!(
            bash_only("grep -q x <<<\"$y\""),
            Some("a here-string `<<<`")
        );
        let doc: toml::Table = crate::inventory::BUILTIN_DRIVERS.parse().unwrap();
        for (driver, actions) in doc["drivers"].as_table().unwrap() {
            for (action, cmd) in actions.as_table().unwrap() {
                // `definition_format`, `replicate_reads_live`: not commands.
                if !crate::inventory::VM_ACTIONS.contains(&action.as_str()) {
                    continue;
                }
                assert_eq!(bash_only(cmd.as_str().unwrap()), None, "{driver} {action}");
            }
        }
    }
    /// libvirt's snapshot hooks read `virsh domblklist --details` (Type Device Target Source,
    /// the source last and unquoted): a disk whose path holds a space is still found as an
    /// overlay left, committed back, and its overlay removed only once no longer used. Run
    /// against stand-ins of `virsh`, `qemu-img` and `virt-xml` that print what they print.
    #[test]
    fn libvirt_s_snapshot_hooks_read_a_disk_path_with_spaces_whole() {
        libvirt_s_snapshot_hooks_find_the_overlay_of("data disk.qcow2", Domain::ShutOff);
    }
    /// libvirt names an external snapshot's file by dropping the extension of the disk's file
    /// name only: the overlay of `v1.d/data` is `v1.d/data.reprise-replicate`, never
    /// `v1.reprise-replicate`, which is another disk's overlay (`v1.qcow2`'s) that the hooks
    /// must neither take for this one nor remove.
    #[test]
    fn libvirt_s_snapshot_hooks_take_the_extension_of_the_file_name_only() {
        libvirt_s_snapshot_hooks_find_the_overlay_of("v1.d/data", Domain::ShutOff);
    }
    /// A running domain's overlay is merged into its disk alone (`--shallow`: a disk that is
    /// a template's linked clone keeps its template untouched), then the defined domain is
    /// pointed back at the disk with the disk's own format, as `qemu-img info` prints it
    /// (QEMU 8 and later list the file's child node, format `file`, first in JSON).
    #[test]
    fn libvirt_s_snapshot_hooks_merge_a_running_domain_s_overlay_into_its_disk_alone() {
        libvirt_s_snapshot_hooks_find_the_overlay_of("data.qcow2", Domain::Running);
    }
    /// `virsh domblklist` failing (libvirtd restarting) is never read as "no overlay in use":
    /// the hooks fail, nothing is merged, pointed elsewhere or removed.
    #[test]
    fn libvirt_s_snapshot_hooks_fail_when_the_domain_s_disks_cannot_be_listed() {
        libvirt_s_snapshot_hooks_find_the_overlay_of("data.qcow2", Domain::Unlisted);
    }
    /// A domain whose disk is another file than the one the inventory names (moved by a
    /// `virsh blockcopy`, the running domain only, or an external snapshot of another tool):
    /// libvirt's `replicate-check` refuses, naming the file, so that no replication reads a
    /// file the vm no longer writes and makes points of it.
    #[test]
    fn libvirt_s_replicate_check_refuses_a_disk_file_the_domain_does_not_use() {
        let doc: toml::Table = crate::inventory::BUILTIN_DRIVERS.parse().unwrap();
        let check = doc["drivers"]["libvirt"]["replicate-check"]
            .as_str()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (dir, bin) = (tmp.path().join("images"), tmp.path().join("bin"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let q = |s: &str| crate::template::shell_quote(s);
        let run = |running: &str, defined: &str| {
            let virsh = bin.join("virsh");
            std::fs::write(
                &virsh,
                format!(
                    "#!/bin/sh\ncase \"$1\" in\ndomstate) echo running;;\ndomblklist) printf ' Type Device Target Source\\n------\\n'; case \"$*\" in *--inactive*) s={defined};; *) s={running};; esac; printf ' file disk vda %s\\n' \"$s\";;\nesac\n",
                    running = q(running),
                    defined = q(defined)
                ),
            )
            .unwrap();
            let mut perms = std::fs::metadata(&virsh).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&virsh, perms).unwrap();
            let text = check
                .replace("{{ vm.name }}", "app")
                .replace("{{ host.images_dir }}", &q(dir.to_str().unwrap()))
                .replace("{{ vm.disks }}", "app.qcow2");
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(text)
                .env(
                    "PATH",
                    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
                )
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        };
        let disk = dir.join("app.qcow2").to_string_lossy().into_owned();
        let (code, err) = run(&disk, &disk);
        assert_eq!(code, Some(0), "{err}");
        for (running, defined) in [
            ("/elsewhere/app.qcow2", disk.as_str()),
            (disk.as_str(), "/elsewhere/app.qcow2"),
        ] {
            let (code, err) = run(running, defined);
            assert_eq!(code, Some(2), "{err}");
            assert!(
                err.contains(&format!(
                    "{disk} is not a disk of domain app as it runs and as it is defined"
                )),
                "{err}"
            );
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Domain {
        ShutOff,
        Running,
        /// Running, and `virsh domblklist` fails.
        Unlisted,
    }
    fn libvirt_s_snapshot_hooks_find_the_overlay_of(disk: &str, domain: Domain) {
        let doc: toml::Table = crate::inventory::BUILTIN_DRIVERS.parse().unwrap();
        let libvirt = doc["drivers"]["libvirt"].as_table().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vm images");
        let bin = tmp.path().join("bin");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let q = |s: &str| crate::template::shell_quote(s);
        let render = |action: &str| {
            libvirt[action]
                .as_str()
                .unwrap()
                .replace("{{ vm.name }}", "app")
                .replace("{{ host.images_dir }}", &q(dir.to_str().unwrap()))
                .replace("{{ vm.disks }}", &q(disk))
        };
        let overlay = dir.join(crate::inventory::replication_overlay(disk));
        let base = dir.join(disk);
        std::fs::create_dir_all(base.parent().unwrap()).unwrap();
        std::fs::write(&overlay, b"overlay").unwrap();
        std::fs::write(&base, b"base").unwrap();
        // Where the extension of the whole path would put it (`${d%.*}`): another disk's.
        let careless = disk.rsplit_once('.').map_or(disk, |(stem, _)| stem);
        let other = dir.join(format!("{careless}.reprise-replicate"));
        let other_kept = other != overlay;
        if other_kept {
            std::fs::write(&other, b"another vm's overlay").unwrap();
        }
        // The defined domain uses the overlay until virt-xml points it back at its disk; a
        // running one until blockcommit pivots it.
        let uses = tmp.path().join("uses-overlay");
        std::fs::write(&uses, b"").unwrap();
        let live = tmp.path().join("runs-on-overlay");
        if domain != Domain::ShutOff {
            std::fs::write(&live, b"").unwrap();
        }
        let unlisted = tmp.path().join("unlisted");
        if domain == Domain::Unlisted {
            std::fs::write(&unlisted, b"").unwrap();
        }
        let log = tmp.path().join("log");
        let stub = |name: &str, body: &str| {
            let path = bin.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            let mut perms = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&path, perms).unwrap();
        };
        stub(
            "virsh",
            &format!(
                r#"echo "virsh $*" >> {log}
case "$1" in
domstate) if [ -e {live} ]; then echo running; else echo 'shut off'; fi;;
domblklist)
  if [ -e {unlisted} ]; then echo 'error: failed to connect to the hypervisor' >&2; exit 1; fi
  printf ' Type   Device   Target   Source\n------------------------------------------------\n'
  case "$*" in *--inactive*) on={uses};; *) on={live}; [ -e {live} ] || on={uses};; esac
  if [ -e "$on" ]; then src={ov}; else src={base}; fi
  printf ' file   disk     vda      %s\n' "$src"
  printf ' file   cdrom    sda      -\n';;
blockcommit) rm -f {live};;
esac"#,
                log = q(log.to_str().unwrap()),
                uses = q(uses.to_str().unwrap()),
                live = q(live.to_str().unwrap()),
                unlisted = q(unlisted.to_str().unwrap()),
                ov = q(overlay.to_str().unwrap()),
                base = q(base.to_str().unwrap()),
            ),
        );
        stub(
            "qemu-img",
            &format!(
                r#"echo "qemu-img $*" >> {log}
case "$1 $*" in
info*--output=json*) printf '{{\n    "children": [\n        {{\n            "name": "file",\n            "info": {{\n                "format": "file"\n            }}\n        }}\n    ],\n    "format": "qcow2"\n}}\n';;
info*) printf 'image: x\nfile format: qcow2\nvirtual size: 1 MiB (1048576 bytes)\nChild node '"'"'/file'"'"':\n    filename: x\n    protocol type: file\n';;
esac"#,
                log = q(log.to_str().unwrap())
            ),
        );
        stub(
            "virt-xml",
            &format!(
                r#"echo "virt-xml $*" >> {log}; rm -f {uses}"#,
                log = q(log.to_str().unwrap()),
                uses = q(uses.to_str().unwrap())
            ),
        );
        let run = |action: &str| {
            let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(render(action))
                .env("PATH", path)
                .output()
                .unwrap();
            let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
            (out.status.code(), text(&out.stdout), text(&out.stderr))
        };
        let ov = overlay.display().to_string();
        let (code, out, err) = run("replicate-check");
        if domain == Domain::Unlisted {
            assert_ne!(code, Some(0), "{out}");
            let (code, _, err) = run("replicate-end");
            assert_ne!(code, Some(0), "{err}");
            let log = std::fs::read_to_string(&log).unwrap();
            assert!(
                !log.contains("blockcommit")
                    && !log.contains("commit -q")
                    && !log.contains("virt-xml"),
                "{log}"
            );
            assert!(
                overlay.exists(),
                "an overlay that may be in use is kept: {log}"
            );
            return;
        }
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.contains(&format!("overlay disk vda uses {ov}")),
            "{out}"
        );
        let (code, _, err) = run("replicate-end");
        assert_eq!(code, Some(0), "{err}");
        let log = std::fs::read_to_string(&log).unwrap();
        let merged = match domain {
            Domain::Running => log
                .find("virsh blockcommit app vda --active --shallow --pivot --wait")
                .unwrap_or_else(|| panic!("merged into its disk alone: {log}")),
            _ => log
                .find(&format!("qemu-img commit -q {ov}"))
                .unwrap_or_else(|| panic!("the overlay is committed back: {log}")),
        };
        let edit = log
            .find(&format!(
                "virt-xml app --edit target=vda --disk path={},driver.type=qcow2",
                base.display()
            ))
            .unwrap_or_else(|| panic!("the domain is pointed back at its disk: {log}"));
        assert!(merged < edit, "{log}");
        assert!(!overlay.exists(), "removed once no longer used: {log}");
        if other_kept {
            assert!(
                other.exists(),
                "another disk's overlay is left alone: {log}"
            );
        }
    }
}
