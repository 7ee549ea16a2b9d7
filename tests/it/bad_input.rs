//! Every file under `tests/bad/` is one broken input. Its header says where it goes in a copy of
//! the small valid fixture and what the error must point at:
//!
//! ```toml
//! # target: runbooks/app.toml       (replaces or adds this file)
//! # expect: runbooks/app.toml:5:7   (a location the output must name)
//! # hint: did you mean `db`?        (text the output must contain; repeatable)
//! # args: --overlay overlay.toml    (options before `validate`, for an overlay case)
//! ```
//!
//! The test runs `reprise validate`, checks the documented exit code, the location and the
//! hints, and snapshots the whole error output.

use crate::common::{measured, mini_copy, reprise, root};

struct Case {
    name: String,
    target: String,
    expect: Vec<String>,
    hints: Vec<String>,
    args: Vec<String>,
    text: String,
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(root().join("tests/bad"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let header = |key: &str| -> Vec<String> {
            text.lines()
                .filter_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .map(|s| s.trim().to_string())
                .collect()
        };
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let target = header("target")
            .pop()
            .unwrap_or_else(|| panic!("{name}: no `# target:` line"));
        let expect = header("expect");
        assert!(!expect.is_empty(), "{name}: no `# expect:` line");
        cases.push(Case {
            name,
            target,
            expect,
            hints: header("hint"),
            args: header("args")
                .iter()
                .flat_map(|a| a.split_whitespace().map(str::to_string))
                .collect(),
            text,
        });
    }
    cases
}

#[test]
fn each_bad_input_is_reported_at_its_place_with_a_hint() {
    let cases = cases();
    assert!(cases.len() >= 20, "only {} bad-input cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let dir = mini_copy();
        let target = dir.path().join(&case.target);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, &case.text).unwrap();
        let mut args: Vec<&str> = case.args.iter().map(String::as_str).collect();
        args.push("validate");
        let run = reprise(dir.path(), &args);
        if run.code != 3 {
            failures.push(format!(
                "{}: exit code {} (expected 3)\n{}{}",
                case.name, run.code, run.stdout, run.stderr
            ));
            continue;
        }
        for needle in case
            .expect
            .iter()
            .map(|e| format!("--> {e}"))
            .chain(case.hints.iter().cloned())
        {
            if !run.stderr.contains(&needle) {
                failures.push(format!(
                    "{}: output lacks `{needle}`:\n{}",
                    case.name, run.stderr
                ));
            }
        }
        insta::assert_snapshot!(format!("bad_{}", case.name), run.stderr);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Deterministic bytes that look random (a xorshift generator).
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

#[test]
fn any_garbage_gives_a_short_located_error_in_bounded_memory() {
    use base64::Engine as _;
    let b64 =
        |n: usize, seed: u64| base64::engine::general_purpose::STANDARD.encode(noise(n, seed));
    let wrapped = |s: String| {
        s.as_bytes()
            .chunks(76)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let unknown_keys: String = (0..5000).map(|i| format!("key{i} = {i}\n")).collect();
    let placeholders = format!(
        "app.failover = []\napp.restore = []\napp.failback = []\n[[app.drill]]\nid = \"x\"\nkind = \"exec\"\nhost = \"hv2\"\nrun = \"{}\"\n",
        "{{ host.nope }}".repeat(20_000)
    );
    let cases: [(&str, &str, String); 5] = [
        // 133 KB of base64 on one line once gave 806 MB of errors.
        (
            "one line of base64",
            "inventory/garbage.toml",
            b64(100_000, 1),
        ),
        (
            "base64 in lines",
            "inventory/garbage.toml",
            wrapped(b64(100_000, 2)),
        ),
        // A 10 MB line once took 24 GB of memory.
        ("a 10 MB line", "inventory/garbage.toml", b64(7_500_000, 3)),
        ("5000 unknown keys", "inventory/garbage.toml", unknown_keys),
        ("20000 unknown variables", "runbooks/app.toml", placeholders),
    ];
    for (what, target, text) in cases {
        let dir = mini_copy();
        std::fs::write(dir.path().join(target), &text).unwrap();
        let run = measured(dir.path(), &["validate"]);
        let err = &run.stderr;
        assert_eq!(run.code, 3, "{what}: exit code\n{err}");
        assert!(
            err.len() < 24 * 1024,
            "{what}: {} bytes of errors for {} bytes of input",
            err.len(),
            text.len()
        );
        assert!(
            err.contains(&format!("--> {target}:")),
            "{what}: not located\n{err}"
        );
        assert!(
            err.lines().all(|l| l.chars().count() < 420),
            "{what}: a line is not cut\n{err}"
        );
        assert!(
            err.contains(&format!("more errors in {target}, not shown")),
            "{what}: the rest is not counted\n{err}"
        );
        assert!(
            run.max_rss_kib < 400 * 1024,
            "{what}: {} MiB of memory for {} bytes of input",
            run.max_rss_kib / 1024,
            text.len()
        );
    }
}

#[test]
fn a_long_line_is_quoted_around_the_column_with_the_caret_under_it() {
    let dir = mini_copy();
    let text = format!(
        "[sites.x]\nrole = \"remote\"\ndescription = \"{}\" ! {}\n",
        "k".repeat(5000),
        "y".repeat(5000)
    );
    std::fs::write(dir.path().join("inventory/long.toml"), text).unwrap();
    let run = reprise(dir.path(), &["validate"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    // The error is at the `!`, column 5018 of line 3: the quote is a window around it.
    let err = &run.stderr;
    let lines: Vec<&str> = err.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("--> inventory/long.toml:3:5018"))
        .unwrap_or_else(|| panic!("not located:\n{err}"));
    let (quoted, caret) = (lines[at + 2], lines[at + 3]);
    assert!(
        quoted.starts_with("3 | …") && quoted.ends_with('…'),
        "{quoted}"
    );
    assert!(quoted.chars().count() < 220, "{quoted}");
    let col = caret.find('^').expect("a caret");
    assert_eq!(
        quoted.chars().nth(caret[..col].chars().count()),
        Some('!'),
        "the caret is not under the error:\n{quoted}\n{caret}"
    );
}

#[test]
fn every_toml_entry_that_cannot_be_read_is_an_error_naming_it() {
    let dir = mini_copy();
    let inv = dir.path().join("inventory");
    std::os::unix::fs::symlink("gone.toml", inv.join("dangling.toml")).unwrap();
    std::fs::create_dir(inv.join("folder.toml")).unwrap();
    std::os::unix::fs::symlink("loop.toml", inv.join("loop.toml")).unwrap();
    let fifo = std::ffi::CString::new(inv.join("pipe.toml").to_str().unwrap()).unwrap();
    // SAFETY: a valid, NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let big = std::fs::File::create(dir.path().join("runbooks/big.toml")).unwrap();
    big.set_len(16 * 1024 * 1024 + 1).unwrap();
    // Not `.toml`: not read, as before.
    std::os::unix::fs::symlink("gone", inv.join("notes.txt")).unwrap();
    let run = reprise(dir.path(), &["validate"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    for needle in [
        "cannot read 5 files:",
        "inventory/loop.toml: Too many levels of symbolic links",
        "inventory/dangling.toml: it is a symbolic link to gone.toml, which does not exist",
        "inventory/folder.toml: it is a folder, not a file",
        "inventory/pipe.toml: it is not a regular file",
        "runbooks/big.toml: it is larger than 16 MiB",
    ] {
        assert!(
            run.stderr.contains(needle),
            "lacks `{needle}`:\n{}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("notes.txt"), "{}", run.stderr);

    // The same for an overlay.
    let dir = mini_copy();
    std::os::unix::fs::symlink("gone.toml", dir.path().join("overlay.toml")).unwrap();
    let run = reprise(dir.path(), &["--overlay", "overlay.toml", "validate"]);
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("overlay.toml: it is a symbolic link to gone.toml"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_file_that_is_not_utf8_is_a_located_error() {
    let dir = mini_copy();
    let mut text = b"[sites.x]\nrole = \"remote\"\ndescription = \"caf".to_vec();
    text.extend_from_slice(b"\xe9\"\n");
    std::fs::write(dir.path().join("inventory/latin1.toml"), text).unwrap();
    let run = reprise(dir.path(), &["validate"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("error: this file is not UTF-8 text")
            && run.stderr.contains("--> inventory/latin1.toml:3:19"),
        "{}",
        run.stderr
    );
}
