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

use crate::template::shell_quote;

/// The first word of the line the check prints once every disk was looked at.
const CHECKED: &str = "reprise-window-checked";

/// The marks of one replication of a vm's disks, on the host they are read on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The disks, in the vm's order.
    files: Vec<String>,
    /// The marks' file name, new for every replication (two of one vm at once never move
    /// each other's mark): one beside each disk's file, its links followed (where its times
    /// are kept, by its file system's clock).
    name: String,
}

impl Window {
    /// The window of vm `vm`'s disk `files` (paths on one host); `None` for a single file,
    /// whose own looks suffice.
    pub fn of(vm: &str, files: &[String]) -> Option<Window> {
        if files.len() < 2 {
            return None;
        }
        let nonce = super::batch::nonce();
        let unique = nonce.rsplit('-').next().unwrap_or(&nonce);
        Some(Window {
            files: files.to_vec(),
            name: format!(".reprise-read-{vm}-{}", &unique[..unique.len().min(16)]),
        })
    }

    /// Where the marks are, in words (for a dry run).
    pub fn shown(vm: &str) -> String {
        format!(".reprise-read-{vm}-… beside each disk, its links followed")
    }

    /// The shell text that sets `m` to the mark of disk `file` (beside the file its links
    /// lead to), or runs `or`.
    fn mark_of(&self, file: &str, or: &str) -> String {
        format!(
            "if d=$(readlink -f -- {f}); then m=\"$(dirname -- \"$d\")\"/{n}; else {or}; fi\n",
            f = shell_quote(file),
            n = shell_quote(&self.name),
        )
    }

    /// The shell text that leaves every mark and returns a clock tick after (a second when a
    /// mark's time is to the second, or cannot be read); it fails, saying which, when a mark
    /// cannot be left.
    pub fn open_command(&self) -> String {
        let mut s = String::from("t=0.03\n");
        for f in &self.files {
            let lost = shell_quote(&format!(
                "the file {f} cannot be found to leave the mark of the start of the reads beside it"
            ));
            s.push_str(&self.mark_of(f, &format!("printf '%s\\n' {lost} >&2; exit 1")));
            s.push_str(
                "if ! e=$( (: > \"$m\") 2>&1); then echo \"the mark of the start of the reads cannot be left at $m: $e\" >&2; exit 1; fi\n\
                 case $(stat -c %y -- \"$m\" 2>/dev/null || echo .000000000) in *.000000000*) t=1;; esac\n",
            );
        }
        s.push_str("sleep \"$t\"\n");
        s
    }

    /// The shell text that prints every disk whose status (that of the file its links lead
    /// to) changed after its mark, then [`CHECKED`] once all were looked at, and removes the
    /// marks; it exits 0 whatever it found (what it printed says).
    pub fn check_command(&self) -> String {
        let mut s = String::from("ok=1\n");
        for f in &self.files {
            s.push_str(&self.mark_of(f, "ok=0; m=/nonexistent"));
            s.push_str(&format!(
                "find -H {} -maxdepth 0 -cnewer \"$m\" -print || ok=0\n",
                shell_quote(f)
            ));
        }
        for f in &self.files {
            s.push_str(&self.mark_of(f, "m="));
            s.push_str("[ -z \"$m\" ] || rm -f -- \"$m\"\n");
        }
        s.push_str(&format!("[ \"$ok\" = 1 ] && echo {CHECKED}\nexit 0\n"));
        s
    }

    /// Leaves the marks on `host` ([`Window::open_command`]); why it could not.
    pub fn open(&self, t: &dyn crate::ssh::Transport, host: &str) -> Result<(), String> {
        let o = t
            .exec(
                host,
                &self.open_command(),
                std::time::Duration::from_secs(120),
            )
            .map_err(|e| e.to_string())?;
        match (o.exit_code, o.stderr.trim()) {
            (0, _) => Ok(()),
            (c, "") => Err(format!("exited with {c} on {host}")),
            (_, said) => Err(said.to_string()),
        }
    }

    /// Looks at the disks on `host` and removes the marks ([`Window::check_command`]): the
    /// disks written since the reads began, as [`Window::changed`] says.
    pub fn close(&self, t: &dyn crate::ssh::Transport, host: &str) -> Result<Vec<String>, String> {
        let o = t
            .exec(
                host,
                &self.check_command(),
                std::time::Duration::from_secs(600),
            )
            .map_err(|e| e.to_string())?;
        self.changed(&o.stdout, &o.stderr)
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

    fn append(path: &str) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(b"later").unwrap();
    }

    /// The marks left in `dirs`.
    fn marks(dirs: &[&std::path::Path]) -> Vec<String> {
        dirs.iter()
            .flat_map(|d| std::fs::read_dir(d).unwrap().flatten())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".reprise-read-"))
            .collect()
    }

    #[test]
    fn one_disk_has_no_window_and_each_replication_its_own_marks() {
        assert_eq!(Window::of("db", &["/i/db.qcow2".into()]), None);
        let two = ["/i/db.qcow2".to_string(), "/d/db-data.raw".to_string()];
        let (a, b) = (
            Window::of("db", &two).unwrap(),
            Window::of("db", &two).unwrap(),
        );
        assert!(
            a.name.starts_with(".reprise-read-db-") && a.name != b.name,
            "{a:?} {b:?}"
        );
    }

    #[test]
    fn a_disk_written_after_the_reads_began_is_named_and_one_written_before_is_not() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let mut disks = files(a.path(), &["sys.qcow2", "data raw's \"x\".raw"]);
        disks.extend(files(b.path(), &["logs.raw"]));
        let w = Window::of("db", &disks).unwrap();
        let opened = sh(&w.open_command());
        assert!(opened.status.success(), "{opened:?}");
        assert_eq!(marks(&[a.path(), b.path()]).len(), 2);
        // Read one after the other; then the data disk and the other folder's are written,
        // as a vm started between the reads would.
        append(&disks[1]);
        append(&disks[2]);
        let found = check(&w);
        assert_eq!(found, Ok(vec![disks[1].clone(), disks[2].clone()]));
        let why = Window::torn_why("db", &found).unwrap();
        assert!(
            why.contains("x\".raw") && why.contains("different moments"),
            "{why}"
        );
        assert!(marks(&[a.path(), b.path()]).is_empty(), "removed");

        // Nothing written between the marks and the check: nothing named.
        let w = Window::of("db", &disks).unwrap();
        assert!(sh(&w.open_command()).status.success());
        assert_eq!(check(&w), Ok(vec![]));
        assert_eq!(Window::torn_why("db", &Ok(vec![])), None);
    }

    /// A disk named by a link: what is written is the file it leads to, whose status is
    /// looked at, beside which the mark is left (its file system's clock).
    #[test]
    fn a_disk_behind_a_link_is_looked_at_where_it_is() {
        let images = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let real = files(store.path(), &["data.raw"]);
        let mut disks = files(images.path(), &["sys.qcow2"]);
        let link = images.path().join("data.raw");
        std::os::unix::fs::symlink(&real[0], &link).unwrap();
        disks.push(link.to_string_lossy().into_owned());
        let w = Window::of("db", &disks).unwrap();
        assert!(sh(&w.open_command()).status.success());
        assert_eq!(marks(&[store.path()]).len(), 1, "beside the file itself");
        append(&real[0]);
        assert_eq!(check(&w), Ok(vec![disks[1].clone()]));
    }

    #[test]
    fn a_mark_that_cannot_be_left_or_a_disk_gone_is_said_not_passed() {
        let dir = tempfile::tempdir().unwrap();
        let disks = files(dir.path(), &["sys.qcow2", "data.raw"]);
        let gone = Window::of("db", &[disks[0].clone(), "/nonexistent/x.raw".into()]).unwrap();
        let opened = sh(&gone.open_command());
        assert!(!opened.status.success());
        let said = String::from_utf8_lossy(&opened.stderr);
        assert!(said.contains("/nonexistent/x.raw"), "{said}");

        let w = Window::of("db", &disks).unwrap();
        assert!(sh(&w.open_command()).status.success());
        std::fs::remove_file(&disks[1]).unwrap();
        let found = check(&w);
        assert!(found.is_err(), "{found:?}");
        let why = Window::torn_why("db", &found).unwrap();
        assert!(why.contains("cannot be told"), "{why}");
        // A mark gone (another program removed it): cannot be told either.
        let w = Window::of(
            "db",
            &disks[..1]
                .iter()
                .cloned()
                .chain([disks[0].clone()])
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(sh(&w.open_command()).status.success());
        for m in marks(&[dir.path()]) {
            std::fs::remove_file(dir.path().join(m)).unwrap();
        }
        assert!(check(&w).is_err());
        // A check whose output says nothing of having looked passes nothing.
        assert!(w.changed("", "").is_err());
    }
}
