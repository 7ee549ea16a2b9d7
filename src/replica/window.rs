//! The read window of a vm's disks: its copies are of one instant only when no disk was
//! written from the start of the first one's read to the end of the last one's.
//!
//! Each disk file is looked at before and after its own read ([`super::helper::send_image`]),
//! which sees a write during that read, not one to a disk read earlier while another is
//! read (nor to one read later, before its own read began). A stopped vm started between
//! the reads of two of its disks, a snapshot's base written by another program, would leave
//! copies of two moments, each found unwritten while it was read, each with a hash that
//! matches it. So, whatever the driver, before the first read reprise leaves a mark beside
//! the disks (one per folder: a file system's times, and its clock, are its own), a clock
//! tick old when the reads begin (a second where the file system keeps times to the
//! second); after the last read, any disk whose status changed after its folder's mark was
//! written since the reads began. The points are held until then
//! ([`super::Point::pending`]): a run cut in between leaves none usable.
//!
//! A single disk's own two looks say all of this. A driver that reads disks while the guest
//! writes them (`replicate_reads_live`) says through its `replicate-end` whether its freeze
//! held: its files are written while they are read, and the window does not apply.

use std::collections::BTreeMap;

use crate::template::shell_quote;

/// The first word of the line the check prints once every disk was looked at.
const CHECKED: &str = "reprise-window-checked";

/// The marks of one vm's disks, on the host they are read on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Per folder of the disks: its mark, and the disks in it.
    marks: BTreeMap<String, (String, Vec<String>)>,
    /// The disks, in the vm's order.
    files: Vec<String>,
}

impl Window {
    /// The window of vm `vm`'s disk `files` (absolute paths on one host); `None` for a
    /// single file, whose own looks suffice.
    pub fn of(vm: &str, files: &[String]) -> Option<Window> {
        if files.len() < 2 {
            return None;
        }
        let mut marks: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for f in files {
            let dir = match f.rsplit_once('/') {
                Some(("", _)) => "/".to_string(),
                Some((dir, _)) => dir.to_string(),
                None => ".".to_string(),
            };
            let mark = format!("{}/.reprise-read-{vm}", dir.trim_end_matches('/'));
            marks
                .entry(dir)
                .or_insert_with(|| (mark, Vec::new()))
                .1
                .push(f.clone());
        }
        Some(Window {
            marks,
            files: files.to_vec(),
        })
    }

    /// The marks' paths, one per folder.
    pub fn marks(&self) -> Vec<&str> {
        self.marks.values().map(|(m, _)| m.as_str()).collect()
    }

    /// The shell text that leaves every mark and returns a clock tick after (a second when a
    /// mark's time is to the second); it fails, saying which, when a mark cannot be left.
    pub fn open_command(&self) -> String {
        let mut s = String::from("t=0.03\n");
        for (mark, _) in self.marks.values() {
            let m = shell_quote(mark);
            s.push_str(&format!(
                "if ! e=$( (: > {m}) 2>&1); then echo \"the mark of the start of the reads cannot be left at \"{m}\": $e\" >&2; exit 1; fi\ncase $(stat -c %y {m}) in *.000000000*) t=1;; esac\n"
            ));
        }
        s.push_str("sleep \"$t\"\n");
        s
    }

    /// The shell text that prints every disk whose status changed after its folder's mark,
    /// then [`CHECKED`] once all were looked at, and removes the marks; it exits 0 whatever
    /// it found (what it printed says).
    pub fn check_command(&self) -> String {
        let mut s = String::from("ok=1\n");
        let mut all = Vec::new();
        for (mark, files) in self.marks.values() {
            let m = shell_quote(mark);
            let list: Vec<String> = files.iter().map(|f| shell_quote(f)).collect();
            s.push_str(&format!(
                "find {} -maxdepth 0 -cnewer {m} -print || ok=0\n",
                list.join(" ")
            ));
            all.push(m);
        }
        s.push_str(&format!(
            "rm -f {}\n[ \"$ok\" = 1 ] && echo {CHECKED}\nexit 0\n",
            all.join(" ")
        ));
        s
    }

    /// What the check printed: the disks written since the reads began, or why that cannot
    /// be told (`stderr`: what it said otherwise).
    pub fn changed(&self, stdout: &str, stderr: &str) -> Result<Vec<String>, String> {
        let lines: Vec<&str> = stdout.lines().collect();
        if !lines.iter().any(|l| l.trim_end() == CHECKED) {
            let said = stderr.trim();
            return Err(if said.is_empty() {
                "the disks could not all be looked at".to_string()
            } else {
                said.lines().take(3).collect::<Vec<_>>().join("; ")
            });
        }
        Ok(self
            .files
            .iter()
            .filter(|f| lines.iter().any(|l| l == f))
            .cloned()
            .collect())
    }

    /// Why the points of vm `vm`, read with this window, are unusable: `found` is what
    /// [`Window::changed`] found. `None`: none was written.
    pub fn torn_why(vm: &str, found: &Result<Vec<String>, String>) -> Option<String> {
        match found {
            Ok(changed) if changed.is_empty() => None,
            Ok(changed) => Some(format!(
                "{} changed while the disks of {vm} were read (the vm started during the copy, or another program wrote them): its disks may be copies of different moments",
                changed.join(" ")
            )),
            Err(e) => Some(format!(
                "whether the disks of {vm} were written while they were read cannot be told ({e})"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> std::process::Output {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .expect("sh runs")
    }

    fn files(dir: &std::path::Path, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .map(|n| {
                let p = dir.join(n);
                std::fs::write(&p, b"disk").unwrap();
                p.to_string_lossy().into_owned()
            })
            .collect()
    }

    fn check(w: &Window) -> Result<Vec<String>, String> {
        let out = sh(&w.check_command());
        assert!(out.status.success(), "{out:?}");
        w.changed(
            &String::from_utf8_lossy(&out.stdout),
            &String::from_utf8_lossy(&out.stderr),
        )
    }

    #[test]
    fn one_disk_has_no_window_and_every_folder_its_own_mark() {
        assert_eq!(Window::of("db", &["/i/db.qcow2".into()]), None);
        let w = Window::of(
            "db",
            &[
                "/i/db.qcow2".into(),
                "/d/db-data.raw".into(),
                "/i/db-2.raw".into(),
            ],
        )
        .unwrap();
        assert_eq!(w.marks(), ["/d/.reprise-read-db", "/i/.reprise-read-db"]);
    }

    #[test]
    fn a_disk_written_after_the_reads_began_is_named_and_one_written_before_is_not() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let mut disks = files(a.path(), &["sys.qcow2", "data.raw"]);
        disks.extend(files(b.path(), &["logs.raw"]));
        let w = Window::of("db", &disks).unwrap();
        let opened = sh(&w.open_command());
        assert!(opened.status.success(), "{opened:?}");
        for m in w.marks() {
            assert!(std::path::Path::new(m).exists(), "{m}");
        }
        // Read one after the other; then the data disk and the other folder's are written,
        // as a vm started between the reads would.
        for d in [&disks[1], &disks[2]] {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new().append(true).open(d).unwrap();
            f.write_all(b"later").unwrap();
        }
        let found = check(&w);
        assert_eq!(found, Ok(vec![disks[1].clone(), disks[2].clone()]));
        let why = Window::torn_why("db", &found).unwrap();
        assert!(
            why.contains("data.raw") && why.contains("different moments"),
            "{why}"
        );
        for m in w.marks() {
            assert!(!std::path::Path::new(m).exists(), "removed: {m}");
        }

        // Nothing written between the marks and the check: nothing named.
        let opened = sh(&w.open_command());
        assert!(opened.status.success(), "{opened:?}");
        assert_eq!(check(&w), Ok(vec![]));
        assert_eq!(Window::torn_why("db", &Ok(vec![])), None);
    }

    #[test]
    fn a_mark_that_cannot_be_left_or_a_disk_gone_is_said_not_passed() {
        let dir = tempfile::tempdir().unwrap();
        let disks = files(dir.path(), &["sys.qcow2", "data.raw"]);
        let gone = Window::of("db", &[disks[0].clone(), "/nonexistent/x.raw".into()]).unwrap();
        let opened = sh(&gone.open_command());
        assert!(!opened.status.success());
        let said = String::from_utf8_lossy(&opened.stderr);
        assert!(
            said.contains("/nonexistent/.reprise-read-db") && said.contains("cannot be left"),
            "{said}"
        );

        let w = Window::of("db", &disks).unwrap();
        assert!(sh(&w.open_command()).status.success());
        std::fs::remove_file(&disks[1]).unwrap();
        let found = check(&w);
        assert!(found.is_err(), "{found:?}");
        let why = Window::torn_why("db", &found).unwrap();
        assert!(why.contains("cannot be told"), "{why}");
        // A check whose output says nothing of having looked passes nothing.
        assert!(w.changed("", "").is_err());
    }
}
