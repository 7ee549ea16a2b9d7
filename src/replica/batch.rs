//! Several driver commands for one host in one remote command: over a link of 30 ms a
//! command costs about three round trips (a channel opened, the command, its end), so the
//! steps that prepare a vm's copy (the check for a snapshot left, the definition, the
//! snapshot) go together, each stopping the ones after it when it fails.
//!
//! Each step runs in a subshell of its own (an `exit` in it ends only it); after it, a mark
//! `NONCE:CODE;` goes to both its standard output and its standard error, so that what each
//! step printed and how it ended are told apart. A step whose mark is missing did not end
//! (or its output was cut): it and every later step are unknown to the caller, which then
//! does them one by one as before. The nonce is new for every batch; a host could forge
//! one, but only about its own commands, whose output is checked as any other.

use std::fmt::Write as _;

/// One command of a batch.
pub struct Step<'a> {
    /// The shell text, run as the host's shell would run it alone.
    pub command: &'a str,
    /// The batch stops after this step when its standard output holds this text anywhere
    /// (the caller then decides from the output itself, with its own parser).
    pub stop_if_said: Option<&'a str>,
}

/// How a step of a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// A nonce no command's output holds by chance.
pub fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNT.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    format!("reprise-step-{}", &h.finalize().to_hex()[..32])
}

/// The POSIX shell text of `steps`: each runs only when every step before it exited 0 and
/// did not say its `stop_if_said`.
pub fn script(nonce: &str, steps: &[Step]) -> String {
    let mut s = format!("m={}\n", crate::template::shell_quote(nonce));
    for step in steps {
        let mark = "printf '%s:%d;' \"$m\" \"$r\"; printf '%s:%d;' \"$m\" \"$r\" >&2\n";
        match step.stop_if_said {
            // Kept to be searched; the output loses only its trailing newlines.
            Some(said) => {
                let _ = write!(
                    s,
                    "o=$(\n{}\n); r=$?; printf '%s' \"$o\"; {mark}[ \"$r\" = 0 ] || exit 0\ncase \"$o\" in *{}*) exit 0;; esac\n",
                    step.command,
                    crate::template::shell_quote(said)
                );
            }
            None => {
                let _ = write!(
                    s,
                    "(\n{}\n); r=$?; {mark}[ \"$r\" = 0 ] || exit 0\n",
                    step.command
                );
            }
        }
    }
    s
}

/// The steps of a batch that ended, in order, from what the remote command printed: a
/// step counts only when its mark is on both outputs with the same code.
pub fn parse(nonce: &str, stdout: &[u8], stderr: &str) -> Vec<Ran> {
    let outs = split(nonce.as_bytes(), stdout);
    let errs = split(nonce.as_bytes(), stderr.as_bytes());
    outs.into_iter()
        .zip(errs)
        .map_while(|((out, code), (err, code_err))| {
            (code == code_err).then(|| Ran {
                exit_code: code,
                stdout: out,
                stderr: String::from_utf8_lossy(&err).into_owned(),
            })
        })
        .collect()
}

/// Each piece of `text` before a well-formed mark, with the mark's code.
fn split(nonce: &[u8], text: &[u8]) -> Vec<(Vec<u8>, i32)> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(at) = find(rest, nonce) {
        let after = &rest[at + nonce.len()..];
        let Some(tail) = after.strip_prefix(b":") else {
            break;
        };
        let Some(end) = tail.iter().position(|&b| b == b';') else {
            break;
        };
        let Some(code) = std::str::from_utf8(&tail[..end])
            .ok()
            .and_then(|c| c.parse::<i32>().ok())
        else {
            break;
        };
        pieces.push((rest[..at].to_vec(), code));
        rest = &tail[end + 1..];
    }
    pieces
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str) -> (Vec<u8>, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("sh runs");
        (
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn steps<'a>(cmds: &[(&'a str, Option<&'a str>)]) -> Vec<Step<'a>> {
        cmds.iter()
            .map(|&(command, stop_if_said)| Step {
                command,
                stop_if_said,
            })
            .collect()
    }

    #[test]
    fn every_step_is_told_apart_with_its_output_and_code() {
        let n = nonce();
        let s = steps(&[
            ("echo none left; echo warn >&2", Some("overlay")),
            ("printf 'def\\n\\n'; exit 0", None),
            ("echo frozen; echo said >&2; exit 0", None),
        ]);
        let (out, err) = run(&script(&n, &s));
        let ran = parse(&n, &out, &err);
        assert_eq!(ran.len(), 3, "{ran:?}");
        assert_eq!(ran[0].stdout, b"none left");
        assert_eq!(ran[0].stderr, "warn\n");
        // Bytes kept exactly where no search is asked (a definition's hash depends on them).
        assert_eq!(ran[1].stdout, b"def\n\n");
        assert_eq!(ran[2].stdout, b"frozen\n");
        assert_eq!(ran[2].stderr, "said\n");
        assert!(ran.iter().all(|r| r.exit_code == 0));
    }

    #[test]
    fn a_failed_step_stops_the_ones_after_it() {
        let n = nonce();
        let s = steps(&[
            ("true", None),
            ("echo no >&2; exit 3", None),
            ("touch /nonexistent/x", None),
        ]);
        let (out, err) = run(&script(&n, &s));
        let ran = parse(&n, &out, &err);
        assert_eq!(ran.len(), 2);
        assert_eq!(ran[1].exit_code, 3);
        assert_eq!(ran[1].stderr, "no\n");
    }

    #[test]
    fn a_step_that_says_the_stop_text_stops_the_batch() {
        let n = nonce();
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("ran");
        let later = format!("touch {}", flag.display());
        let s = steps(&[
            ("echo 'overlay disk vda uses /i/a'", Some("overlay")),
            (later.as_str(), None),
        ]);
        let (out, err) = run(&script(&n, &s));
        let ran = parse(&n, &out, &err);
        assert_eq!(ran.len(), 1);
        assert_eq!(ran[0].stdout, b"overlay disk vda uses /i/a");
        assert!(!flag.exists(), "the step after a stop must not run");
    }

    #[test]
    fn an_exit_ends_only_its_step_and_a_killed_batch_says_no_more_than_it_did() {
        let n = nonce();
        let s = steps(&[("exit 0", None), ("echo b", None)]);
        let (out, err) = run(&script(&n, &s));
        assert_eq!(parse(&n, &out, &err).len(), 2);
        // The shell itself killed during the second step: only the first is known.
        let s = steps(&[("echo a", None), ("echo half; kill -9 $$", None)]);
        let (out, err) = run(&script(&n, &s));
        let ran = parse(&n, &out, &err);
        assert_eq!(ran.len(), 1, "{ran:?}");
        assert_eq!(ran[0].stdout, b"a\n");
    }

    #[test]
    fn marks_that_are_cut_forged_or_disagree_end_what_is_known() {
        let n = nonce();
        // Cut in the middle of a mark.
        let out = format!("a{n}:0;b{n}:1");
        assert_eq!(parse(&n, out.as_bytes(), &format!("{n}:0;{n}:1;")).len(), 1);
        // A code that is not a number.
        let out = format!("a{n}:x;");
        assert!(parse(&n, out.as_bytes(), &format!("{n}:0;")).is_empty());
        // The two outputs disagree: nothing from there on is believed.
        let out = format!("a{n}:0;b{n}:0;");
        let ran = parse(&n, out.as_bytes(), &format!("{n}:0;{n}:2;"));
        assert_eq!(ran.len(), 1);
        // Another batch's nonce is only text.
        let other = nonce();
        assert_ne!(other, n);
        let out = format!("a{other}:0;");
        assert!(parse(&n, out.as_bytes(), &format!("{other}:0;")).is_empty());
    }
}
