//! Backup sets: directories replicated file by file, with the same point model as images.
//!
//! The recovery side keeps, beside its copy `DIR`, a folder `DIR.reprise/` with `tree.json`
//! (path, size, mtime and BLAKE3 of every file of the copy), `points.json`, and per older point
//! a folder `deltas/<point>/` holding the files its successor replaced or deleted and the list
//! of files its successor added. The source helper sends a file when its size or mtime differ
//! from `tree.json` and its hash too (only the new mtime when the content is the same), and
//! names the files that are gone. The recovery helper stages the new files, checks the digest
//! of the whole tree against the source's, writes a commit record, then moves files in place;
//! an interrupted update is thrown away (before its commit) or completed (after it).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::store::{NewPoint, Point, StoreError, Verified, io_err, lock_store};

/// One file of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub mtime_ns: i128,
    pub blake3: String,
}

/// Every regular file of a tree, by path relative to its root (`/`-separated).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub files: BTreeMap<String, FileEntry>,
}

impl Tree {
    /// The digest of a tree: BLAKE3 of its sorted paths, sizes and hashes.
    pub fn digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        for (p, f) in &self.files {
            h.update(p.as_bytes());
            h.update(&[0]);
            h.update(&f.size.to_le_bytes());
            h.update(f.blake3.as_bytes());
            h.update(b"\n");
        }
        h.finalize().to_hex().to_string()
    }

    pub fn total(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt as _;
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// Regular files under `root`, sorted, with their metadata.
fn walk(root: &Path) -> io::Result<Vec<(String, std::fs::Metadata)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(rel);
            } else if meta.is_file() {
                out.push((rel.to_string_lossy().into_owned(), meta));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Reads and hashes every file of `root` (the recovery side's `--verify`).
pub fn scan(root: &Path) -> io::Result<Tree> {
    let mut tree = Tree::default();
    if !root.exists() {
        return Ok(tree);
    }
    for (rel, meta) in walk(root)? {
        let hash = super::helper::hash_file(&root.join(&rel))?;
        tree.files.insert(
            rel,
            FileEntry {
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
                blake3: hash,
            },
        );
    }
    Ok(tree)
}

// The stream: JSON header lines and raw file bytes.
//   {"file": {path, size, mtime_ns, blake3}}\n <size bytes>
//   {"touch": {path, size, mtime_ns, blake3}}\n
//   {"delete": path}\n
//   {"end": digest}\n
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Rec {
    File { path: String, entry: FileEntry },
    Touch { path: String, entry: FileEntry },
    Delete { path: String },
    End { digest: String },
}

fn put(w: &mut impl Write, rec: &Rec) -> io::Result<()> {
    let mut line = serde_json::to_vec(rec).expect("serializes");
    line.push(b'\n');
    w.write_all(&line)
}

fn get(r: &mut impl io::BufRead) -> Result<Rec, String> {
    let mut line = String::new();
    let n = r
        .read_line(&mut line)
        .map_err(|e| format!("reading the stream from the source: {e}"))?;
    if n == 0 {
        return Err(
            "the stream from the source ended early (connection lost or source helper stopped)"
                .into(),
        );
    }
    serde_json::from_str(&line).map_err(|e| format!("the stream from the source is damaged: {e}"))
}

/// What the source sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct TreeSent {
    pub files: u64,
    pub bytes: u64,
}

/// Source side: sends what differs from `base`.
pub fn send_tree(root: &Path, base: &Tree, w: &mut impl Write) -> Result<TreeSent, String> {
    let name = root.display().to_string();
    let err = |e: io::Error| format!("{name}: {e}");
    let mut now = Tree::default();
    let mut sent = TreeSent::default();
    for (rel, meta) in walk(root).map_err(err)? {
        let path = root.join(&rel);
        let known = base.files.get(&rel);
        let (size, mtime) = (meta.len(), mtime_ns(&meta));
        if let Some(k) = known
            && k.size == size
            && k.mtime_ns == mtime
        {
            now.files.insert(rel, k.clone());
            continue;
        }
        let hash =
            super::helper::hash_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let entry = FileEntry {
            size,
            mtime_ns: mtime,
            blake3: hash,
        };
        if known.is_some_and(|k| k.blake3 == entry.blake3 && k.size == size) {
            put(
                w,
                &Rec::Touch {
                    path: rel.clone(),
                    entry: entry.clone(),
                },
            )
            .map_err(err)?;
        } else {
            put(
                w,
                &Rec::File {
                    path: rel.clone(),
                    entry: entry.clone(),
                },
            )
            .map_err(err)?;
            let mut f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let copied = io::copy(&mut (&mut f).take(size), w).map_err(err)?;
            if copied != size {
                return Err(format!("{}: it changed while it was read", path.display()));
            }
            sent.files += 1;
            sent.bytes += size;
        }
        now.files.insert(rel, entry);
    }
    for gone in base.files.keys().filter(|p| !now.files.contains_key(*p)) {
        put(w, &Rec::Delete { path: gone.clone() }).map_err(err)?;
    }
    put(
        w,
        &Rec::End {
            digest: now.digest(),
        },
    )
    .map_err(err)?;
    Ok(sent)
}

/// The recovery side of one backup set.
#[derive(Debug, Clone)]
pub struct TreeStore {
    root: PathBuf,
    dir: PathBuf,
}

/// The commit record of a tree update.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Commit {
    point: Point,
    prev: Option<String>,
    /// Files moved from staging into the copy (new or replaced).
    put: Vec<String>,
    /// Files that existed before `put` (their old versions go to the previous point's delta).
    replaced: Vec<String>,
    deleted: Vec<String>,
    tree: Tree,
    retention: u32,
}

/// How to undo an update: put back `files/…`, remove `added`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Undo {
    restore: Vec<String>,
    remove: Vec<String>,
}

fn move_file(from: &Path, to: &Path) -> Result<(), StoreError> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    std::fs::rename(from, to).map_err(io_err(from))
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(to).map_err(io_err(to))?;
    if !from.exists() {
        return Ok(());
    }
    for (rel, _) in walk(from).map_err(io_err(from))? {
        let dst = to.join(&rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::fs::copy(from.join(&rel), &dst).map_err(io_err(&dst))?;
    }
    Ok(())
}

impl TreeStore {
    pub fn new(root: &Path) -> TreeStore {
        let mut dir = root.as_os_str().to_owned();
        dir.push(".reprise");
        TreeStore {
            root: root.to_path_buf(),
            dir: PathBuf::from(dir),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn lock(&self) -> Result<File, StoreError> {
        lock_store(&self.dir, &self.name())
    }

    fn read_json<T: for<'de> Deserialize<'de> + Default>(
        &self,
        name: &str,
    ) -> Result<T, StoreError> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Damaged {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn write_json(&self, name: &str, value: &impl Serialize) -> Result<(), StoreError> {
        let path = self.path(name);
        let tmp = self.path(&format!("{name}.tmp"));
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&serde_json::to_vec_pretty(value).expect("serializes"))
            .map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    pub fn points(&self) -> Result<Vec<Point>, StoreError> {
        self.read_json("points.json")
    }

    /// Settles an interrupted update (see the module).
    fn recover(&self) -> Result<Option<String>, StoreError> {
        let staging = self.path("staging");
        let commit = self.path("commit.json");
        if commit.exists() {
            let c: Commit = serde_json::from_slice(
                &std::fs::read(&commit).map_err(io_err(&commit))?,
            )
            .map_err(|e| StoreError::Damaged {
                path: commit.display().to_string(),
                reason: e.to_string(),
            })?;
            let id = c.point.id.clone();
            self.roll_forward(c)?;
            return Ok(Some(format!(
                "an interrupted update was completed: point {id}"
            )));
        }
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
            return Ok(Some(
                "an interrupted update was thrown away; the copy was not touched".into(),
            ));
        }
        Ok(None)
    }

    /// The tree the source compares against, after settling an interrupted update.
    pub fn base(&self, reread: bool) -> Result<Tree, StoreError> {
        let _lock = self.lock()?;
        self.recover()?;
        if self.points()?.is_empty() {
            return Ok(Tree::default());
        }
        if reread {
            let t = scan(&self.root).map_err(io_err(&self.root))?;
            self.write_json("tree.json", &t)?;
            return Ok(t);
        }
        self.read_json("tree.json")
    }

    /// Receives a stream and makes it a new point.
    /// Returns the point and the number of files received.
    pub fn apply(
        &self,
        input: &mut impl io::BufRead,
        new: NewPoint,
    ) -> Result<(Point, u64), StoreError> {
        let _lock = self.lock()?;
        self.recover()?;
        self.receive(input, new).inspect_err(|_| {
            // What a failed update staged is thrown away now (a committed one completed), so
            // that it does not hold the recovery host's space until the next run.
            let _ = self.recover();
        })
    }

    /// [`TreeStore::apply`] once the lock is held and an earlier update settled.
    fn receive(
        &self,
        input: &mut impl io::BufRead,
        new: NewPoint,
    ) -> Result<(Point, u64), StoreError> {
        let began = std::time::Instant::now();
        let stream_err = |reason: String| StoreError::Stream {
            image: self.name(),
            reason,
        };
        let points = self.points()?;
        let mut tree: Tree = if points.is_empty() {
            Tree::default()
        } else {
            self.read_json("tree.json")?
        };
        let staging = self.path("staging");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        let (mut put_files, mut replaced, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
        let mut received = 0u64;
        let digest = loop {
            match get(input).map_err(stream_err)? {
                Rec::File { path, entry } => {
                    if path.split('/').any(|c| c == ".." || c.is_empty()) || path.starts_with('/') {
                        return Err(stream_err(format!("refusing the path `{path}`")));
                    }
                    let dst = staging.join(&path);
                    if let Some(parent) = dst.parent() {
                        std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                    }
                    let mut f = File::create(&dst).map_err(io_err(&dst))?;
                    let mut h = blake3::Hasher::new();
                    let mut left = entry.size;
                    let mut buf = vec![0u8; 1 << 20];
                    while left > 0 {
                        let n = (left as usize).min(buf.len());
                        input.read_exact(&mut buf[..n]).map_err(|e| {
                            stream_err(if e.kind() == io::ErrorKind::UnexpectedEof {
                                "the stream from the source ended early (connection lost or source helper stopped)".into()
                            } else {
                                e.to_string()
                            })
                        })?;
                        h.update(&buf[..n]);
                        f.write_all(&buf[..n]).map_err(io_err(&dst))?;
                        left -= n as u64;
                    }
                    if h.finalize().to_hex().as_str() != entry.blake3 {
                        return Err(stream_err(format!("`{path}` arrived damaged")));
                    }
                    f.sync_all().map_err(io_err(&dst))?;
                    set_mtime(&dst, entry.mtime_ns);
                    received += entry.size;
                    if tree.files.contains_key(&path) {
                        replaced.push(path.clone());
                    }
                    put_files.push(path.clone());
                    tree.files.insert(path, entry);
                }
                Rec::Touch { path, entry } => {
                    set_mtime(&self.root.join(&path), entry.mtime_ns);
                    tree.files.insert(path, entry);
                }
                Rec::Delete { path } => {
                    if tree.files.remove(&path).is_some() {
                        deleted.push(path);
                    }
                }
                Rec::End { digest } => break digest,
            }
        };
        if tree.digest() != digest {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(StoreError::Mismatch {
                image: self.name(),
                expected: digest,
                got: tree.digest(),
            });
        }
        let taken: Vec<&str> = points.iter().map(|p| p.id.as_str()).collect();
        let mut id = new.id.clone();
        let mut n = 2;
        while taken.contains(&id.as_str()) {
            id = format!("{}-{n}", new.id);
            n += 1;
        }
        let point = Point {
            id,
            taken_at: new.taken_at,
            source: new.source.clone(),
            size: tree.total(),
            blake3: digest,
            verified: Verified::Yes,
            checked_at: Some(Utc::now()),
            received_bytes: received,
            duration_ms: began.elapsed().as_millis() as u64,
        };
        let commit = Commit {
            point: point.clone(),
            prev: points.last().map(|p| p.id.clone()),
            put: put_files,
            replaced,
            deleted,
            tree,
            retention: new.retention.max(1),
        };
        // The commit record: from here on the update is completed, now or by the next run.
        let files = commit.put.len() as u64;
        self.write_json("commit.json", &commit)?;
        self.roll_forward(commit)?;
        Ok((point, files))
    }

    /// Moves the staged files in place, keeping what they replace for the previous point.
    /// Each move is done once: a file already moved is not there any more.
    fn roll_forward(&self, c: Commit) -> Result<(), StoreError> {
        let staging = self.path("staging");
        std::fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let delta = c.prev.as_ref().map(|p| self.path(&format!("deltas/{p}")));
        if let Some(d) = &delta {
            let undo = Undo {
                restore: c.replaced.iter().chain(&c.deleted).cloned().collect(),
                remove: c
                    .put
                    .iter()
                    .filter(|p| !c.replaced.contains(p))
                    .cloned()
                    .collect(),
            };
            std::fs::create_dir_all(d).map_err(io_err(d))?;
            let f = d.join("undo.json");
            std::fs::write(&f, serde_json::to_vec(&undo).expect("serializes"))
                .map_err(io_err(&f))?;
        }
        for p in c.replaced.iter().chain(&c.deleted) {
            let cur = self.root.join(p);
            if let Some(d) = &delta {
                let keep = d.join("files").join(p);
                if cur.exists() && !keep.exists() {
                    move_file(&cur, &keep)?;
                }
            } else if cur.exists() && c.deleted.contains(p) {
                std::fs::remove_file(&cur).map_err(io_err(&cur))?;
            }
        }
        for p in &c.put {
            let staged = staging.join(p);
            if staged.exists() {
                move_file(&staged, &self.root.join(p))?;
            }
        }
        self.write_json("tree.json", &c.tree)?;
        let mut points = self.points()?;
        if !points.iter().any(|p| p.id == c.point.id) {
            points.push(c.point.clone());
        }
        let mut dropped = Vec::new();
        while points.len() > c.retention as usize {
            dropped.push(points.remove(0).id);
        }
        self.write_json("points.json", &points)?;
        for id in dropped {
            let _ = std::fs::remove_dir_all(self.path(&format!("deltas/{id}")));
        }
        let _ = std::fs::remove_dir_all(&staging);
        let commit = self.path("commit.json");
        std::fs::remove_file(&commit).map_err(io_err(&commit))?;
        Ok(())
    }

    /// Writes point `id` into the folder `out` and checks its digest.
    pub fn restore(&self, id: &str, out: &Path) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        self.recover()?;
        self.restore_locked(id, out)
    }

    fn restore_locked(&self, id: &str, out: &Path) -> Result<(), StoreError> {
        let points = self.points()?;
        let k = points
            .iter()
            .position(|p| p.id == id)
            .ok_or_else(|| StoreError::UnknownPoint {
                image: self.name(),
                point: id.to_string(),
            })?;
        copy_tree(&self.root, out)?;
        for j in (k..points.len() - 1).rev() {
            let d = self.path(&format!("deltas/{}", points[j].id));
            let undo_path = d.join("undo.json");
            let undo: Undo =
                serde_json::from_slice(&std::fs::read(&undo_path).map_err(io_err(&undo_path))?)
                    .map_err(|e| StoreError::Damaged {
                        path: undo_path.display().to_string(),
                        reason: e.to_string(),
                    })?;
            for p in &undo.remove {
                let _ = std::fs::remove_file(out.join(p));
            }
            for p in &undo.restore {
                let dst = out.join(p);
                if let Some(parent) = dst.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                std::fs::copy(d.join("files").join(p), &dst).map_err(io_err(&dst))?;
            }
        }
        let got = scan(out).map_err(io_err(out))?.digest();
        if got != points[k].blake3 {
            return Err(StoreError::Mismatch {
                image: format!("{} (point {id} restored to {})", self.name(), out.display()),
                expected: points[k].blake3.clone(),
                got,
            });
        }
        Ok(())
    }

    /// Checks points again (by restoring them aside); one that fails is marked bad.
    pub fn verify(&self, only: Option<&str>) -> Result<Vec<(String, bool)>, StoreError> {
        let _lock = self.lock()?;
        self.recover()?;
        let mut points = self.points()?;
        let ids: Vec<String> = match only {
            Some(id) => {
                if !points.iter().any(|p| p.id == id) {
                    return Err(StoreError::UnknownPoint {
                        image: self.name(),
                        point: id.to_string(),
                    });
                }
                vec![id.to_string()]
            }
            None => points.iter().map(|p| p.id.clone()).collect(),
        };
        let mut out = Vec::new();
        for id in ids {
            let tmp = self.path("verify");
            let _ = std::fs::remove_dir_all(&tmp);
            let good = match self.restore_locked(&id, &tmp) {
                Ok(()) => true,
                Err(StoreError::Mismatch { .. }) => false,
                Err(e) => return Err(e),
            };
            let _ = std::fs::remove_dir_all(&tmp);
            if let Some(p) = points.iter_mut().find(|p| p.id == id) {
                p.verified = if good { Verified::Yes } else { Verified::Bad };
                p.checked_at = Some(Utc::now());
            }
            out.push((id, good));
        }
        // The next replication must see the copy as it is, to mend it.
        if out.iter().any(|(_, g)| !g) {
            let t = scan(&self.root).map_err(io_err(&self.root))?;
            self.write_json("tree.json", &t)?;
        }
        self.write_json("points.json", &points)?;
        Ok(out)
    }
}

fn set_mtime(path: &Path, ns: i128) {
    let secs = (ns.div_euclid(1_000_000_000)) as i64;
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs.max(0) as u64, nanos);
    if let Ok(f) = File::options().write(true).open(path) {
        let _ = f.set_modified(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicate(src: &Path, dst: &Path, id: &str) -> TreeSent {
        let store = TreeStore::new(dst);
        let base = store.base(false).unwrap();
        let mut stream = Vec::new();
        let sent = send_tree(src, &base, &mut stream).unwrap();
        store
            .apply(
                &mut &stream[..],
                NewPoint {
                    id: id.into(),
                    taken_at: Utc::now(),
                    source: "src".into(),
                    retention: 3,
                },
            )
            .unwrap();
        sent
    }

    fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        walk(dir)
            .unwrap()
            .into_iter()
            .map(|(p, _)| (p.clone(), std::fs::read(dir.join(p)).unwrap()))
            .collect()
    }

    #[test]
    fn changed_files_travel_deletions_follow_and_points_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.dump"), "a1").unwrap();
        std::fs::write(src.join("sub/b.dump"), "b1").unwrap();
        let first = replicate(&src, &dst, "p1");
        assert_eq!(first.files, 2);
        let v1 = contents(&src);
        assert_eq!(contents(&dst), v1);
        assert_eq!(replicate(&src, &dst, "p2").files, 0);
        std::fs::write(src.join("a.dump"), "a2 longer").unwrap();
        std::fs::remove_file(src.join("sub/b.dump")).unwrap();
        std::fs::write(src.join("c.dump"), "c").unwrap();
        assert_eq!(replicate(&src, &dst, "p3").files, 2);
        assert_eq!(contents(&dst), contents(&src));
        let store = TreeStore::new(&dst);
        let out = dir.path().join("out");
        store.restore("p1", &out).unwrap();
        assert_eq!(contents(&out), v1);
        assert!(store.verify(None).unwrap().iter().all(|(_, g)| *g));
        // A damaged copy is found.
        std::fs::write(dst.join("c.dump"), "X").unwrap();
        let checked = store.verify(Some("p3")).unwrap();
        assert_eq!(checked, [("p3".to_string(), false)]);
        assert_eq!(replicate(&src, &dst, "p4").files, 1);
        assert_eq!(contents(&dst), contents(&src));
    }
}
