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

use crate::common::{mini_copy, reprise, root};

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
