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
//!
//! The recovery helper trusts nothing in the stream: it starts with the sender's protocol
//! (another is refused); every path is checked ([`beneath::check`]) and every file operation
//! goes through [`beneath::Dir`], which never follows a symbolic link; a path comes at most
//! once; a `touch` may change only the time of a file the copy holds, a `delete` only remove
//! one it holds; records, sizes, times and the number of files are bounded; and a link or a
//! non-file in the copy where the stream would write is refused before the commit.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead as _, Read, Seek as _, Write};
use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::beneath::{self, Dir, Kind};
use super::meta::{self, CopyState, Lease};
use super::store::{
    NewPoint, Point, StoreError, Verified, changed_since, damage_err, inspect_dir, io_err,
    lock_store, lock_wait, points_of,
};
use super::version::{PROTOCOL, VERSION};

/// The longest record line of a tree stream (a path is at most 4 KiB).
pub const MAX_LINE: usize = 64 << 10;
/// The copy's seal ([`tree_seal`]) when its tree was last given to a source (see
/// [`TreeStore::base`]).
const BASE_STAMP: &str = "base.stamp";
/// A failback copied the folder back to its primary: [`Returned`].
const RETURNED: &str = "returned.json";

/// What the folder was when a failback read it to copy it back to its primary: what is
/// written in it after is not on the primary, and no replication writes over it unnoticed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Returned {
    /// Its [`tree_seal`] (`seal …`) before the copy back read it; its stamp (`tree …`)
    /// when recorded by an earlier version.
    stamp: String,
    /// When its lease was released (this host's clock).
    at: Option<chrono::DateTime<Utc>>,
}
/// The most files a backup set may hold.
pub const MAX_FILES: usize = 1_000_000;
/// The largest file of a backup set.
pub const MAX_FILE_SIZE: u64 = super::blocks::MAX_IMAGE_SIZE;
/// The longest recovery tree (JSON) a source reads.
pub const MAX_TREE_BYTES: u64 = 1 << 30;
/// Modification times are within years 0 to 9999 (in nanoseconds from the epoch).
const MAX_MTIME_NS: i128 = 253_402_300_799 * 1_000_000_000;
const MIN_MTIME_NS: i128 = -62_167_219_200 * 1_000_000_000;

/// One file of a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub size: u64,
    pub mtime_ns: i128,
    /// The source file's status change time (0: not known, as for a copy's own files read
    /// again). Unlike the modification time, no program can set it back: a file rewritten
    /// with its size and modification time kept (`touch -d`, a tool that restores times)
    /// or copied in with its old time kept (`cp -p`, `rsync -t`) changes it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ctime_ns: i128,
    pub blake3: String,
}

fn is_zero(n: &i128) -> bool {
    *n == 0
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
        self.files
            .values()
            .fold(0u64, |n, f| n.saturating_add(f.size))
    }
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt as _;
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

fn ctime_ns(m: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt as _;
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

/// Whether the file `rel` beneath `root` is the one `entry` describes, by its size and
/// modification time (a staged file is given its time before it is moved in place).
fn in_place(root: &Dir, rel: &str, entry: Option<&FileEntry>) -> bool {
    let (Some(entry), Ok(f)) = (entry, root.open_file(rel)) else {
        return false;
    };
    f.metadata()
        .is_ok_and(|m| m.is_file() && m.len() == entry.size && mtime_ns(&m) == entry.mtime_ns)
}

/// Makes durable every regular file under `root` and the folders that name them.
fn sync_tree(root: &Path) -> Result<(), StoreError> {
    let files: Vec<String> = walk(root)
        .map_err(io_err(root))?
        .into_iter()
        .map(|(rel, _)| rel)
        .collect();
    let dir = Dir::open(root, false).map_err(io_err(root))?;
    for rel in &files {
        let path = root.join(rel);
        dir.open_file(rel)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&path))?;
    }
    sync_dirs(root, files.iter())
}

/// Makes durable the entries of `root` and of every folder on the way to each of `paths`
/// (relative to it), each folder once; a folder that is not there is skipped.
fn sync_dirs<'a>(root: &Path, paths: impl Iterator<Item = &'a String>) -> Result<(), StoreError> {
    let mut dirs = std::collections::BTreeSet::new();
    dirs.insert(PathBuf::new());
    for p in paths {
        let mut at = Path::new(p.as_str()).parent();
        while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
            if !dirs.insert(d.to_path_buf()) {
                break;
            }
            at = d.parent();
        }
    }
    for d in dirs {
        let path = root.join(&d);
        // A folder only, opened without waiting (never a pipe put where a folder was).
        let open = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NONBLOCK)
                .open(&path)
        };
        match open {
            Ok(f) => f.sync_all().map_err(io_err(&path))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    Ok(())
}

/// Regular files under `root`, sorted, with their metadata (links are not followed).
fn walk(root: &Path) -> io::Result<Vec<(String, std::fs::Metadata)>> {
    Ok(walk_all(root)?.files)
}

/// What [`walk_all`] found under a set's folder.
#[derive(Default)]
struct Walked {
    /// Its regular files, sorted, with their metadata.
    files: Vec<(String, std::fs::Metadata)>,
    /// The entries a copy of the files would leave out with data in them (a link that leads
    /// out of the set, a device), sorted, each with what it is.
    others: Vec<(String, String)>,
    /// Its folders, and its links that lead into the set or nowhere: what
    /// [`Walked::left_out`] is made of, only where it is said.
    folders: Vec<String>,
    links: Vec<String>,
}

/// The most entries of [`Walked::left_out`] said, the longest name in one (in characters),
/// and the most bytes of them all: the stream's end that carries them is one line, at most
/// [`MAX_LINE`].
const LEFT_OUT_SAID: usize = 100;
const LEFT_OUT_NAME: usize = 200;
const LEFT_OUT_BYTES: usize = 16 << 10;

/// Shown as text: what [`char::escape_debug`] escapes (control, invisible and bidi
/// characters), escaped; quotes and backslashes as they are.
fn as_text(name: &str) -> String {
    name.chars()
        .flat_map(|c| match c {
            '\\' | '\'' | '"' => vec![c],
            c => c.escape_debug().collect(),
        })
        .collect()
}

/// A name of the set as it is said in [`Walked::left_out`]: as text ([`as_text`]), at most
/// [`LEFT_OUT_NAME`] characters.
fn left_out_name(name: &str) -> String {
    let all = as_text(name);
    let shown: String = all.chars().take(LEFT_OUT_NAME).collect();
    match shown.chars().count() < all.chars().count() {
        true => format!("{shown}…"),
        false => shown,
    }
}

/// The files under `root` and what a copy of them leaves out ([`Walked`]).
fn walk_all(root: &Path) -> io::Result<Walked> {
    use std::os::unix::fs::FileTypeExt as _;
    let mut out = Vec::new();
    let mut others = Vec::new();
    let mut folders = Vec::new();
    let mut links = Vec::new();
    let mut inside: Option<io::Result<PathBuf>> = None;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            // Names travel as text: one in another encoding (an old share's Latin-1) would be
            // looked for under another name, and its file said missing.
            if entry.file_name().to_str().is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}: a name that is not UTF-8 text (written in another encoding, as an old share's Latin-1): a backup set's names travel as text, so it cannot be copied under its own name; rename it (`convmv -f latin1 -t utf-8 --notest`), or move it out of the backup set",
                        as_text(&rel.to_string_lossy())
                    ),
                ));
            }
            let meta = entry.metadata()?;
            let kind = meta.file_type();
            if meta.is_dir() {
                folders.push(rel.to_string_lossy().into_owned());
                stack.push(rel);
            } else if meta.is_file() {
                out.push((rel.to_string_lossy().into_owned(), meta));
            } else if kind.is_symlink() {
                // One that leads into the set names what is copied anyway, under its own
                // name (`latest -> dump-2026-12-04`), and one that leads nowhere names
                // nothing: left out. One that leads out of the set shows data the copy
                // would not have.
                let at = root.join(&rel);
                if let Ok(to) = std::fs::canonicalize(&at)
                    && !inside
                        .get_or_insert_with(|| std::fs::canonicalize(root))
                        .as_ref()
                        .is_ok_and(|r| to.starts_with(r))
                {
                    others.push((
                        rel.to_string_lossy().into_owned(),
                        format!(
                            "a symbolic link to {}, outside the backup set",
                            to.display()
                        ),
                    ));
                } else {
                    links.push(rel.to_string_lossy().into_owned());
                }
            } else if kind.is_block_device() || kind.is_char_device() {
                others.push((rel.to_string_lossy().into_owned(), "a device".to_string()));
            }
            // A pipe or a socket holds no data: left out.
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    others.sort();
    Ok(Walked {
        files: out,
        others,
        folders,
        links,
    })
}

impl Walked {
    /// What a copy of the files under `root` leaves out that holds no data but may be looked
    /// for: each folder with no file beneath it (the deepest only: making it makes those
    /// above) and each link that leads into the set or nowhere, said as a line, sorted, at
    /// most [`LEFT_OUT_SAID`] lines and [`LEFT_OUT_BYTES`], then how many more
    /// ([`Point::left_out`]).
    fn left_out(&self, root: &Path) -> Vec<String> {
        let (out, folders) = (&self.files, &self.folders);
        let links = self.links.iter().map(|rel| {
            let to = std::fs::read_link(root.join(rel)).unwrap_or_default();
            format!(
                "the link {} -> {}",
                left_out_name(rel),
                left_out_name(&to.to_string_lossy())
            )
        });
        // A folder the copy makes is one a file is beneath; of the others, the deepest.
        let made: std::collections::HashSet<&str> = out
            .iter()
            .flat_map(|(f, _)| {
                let mut above = Vec::new();
                let mut at = f.as_str();
                while let Some((up, _)) = at.rsplit_once('/') {
                    above.push(up);
                    at = up;
                }
                above
            })
            .collect();
        let empty: Vec<&String> = folders
            .iter()
            .filter(|d| !made.contains(d.as_str()))
            .collect();
        // The deepest: no other empty folder beneath (every folder between an empty one and one
        // above it is empty too, so its parent says it).
        let above: std::collections::HashSet<&str> = empty
            .iter()
            .filter_map(|d| d.rsplit_once('/').map(|(up, _)| up))
            .collect();
        let mut all: Vec<String> = empty
            .iter()
            .filter(|d| !above.contains(d.as_str()))
            .map(|d| format!("the folder {}/ (no file in it)", left_out_name(d)))
            .chain(links)
            .collect();
        // Links first: a link made again by hand in the copy is used only as its point
        // records it ([`links_unlike`]), so it must be among the lines said.
        all.sort_by_key(|l| (!l.starts_with("the link "), l.clone()));
        let mut left_out = Vec::new();
        let mut bytes = 0;
        for line in &all {
            if left_out.len() == LEFT_OUT_SAID || bytes + line.len() > LEFT_OUT_BYTES {
                break;
            }
            bytes += line.len();
            left_out.push(line.clone());
        }
        if left_out.len() < all.len() {
            left_out.push(format!("{} more", all.len() - left_out.len()));
        }
        left_out
    }
}

/// When anything under `root` (itself included) last changed: the newest modification or
/// status change time of its files, directories and other entries. The status change time
/// cannot be set back from userland, so a file copied in with its old modification time kept
/// (`cp -p`, `rsync -t`) counts when it came, and a removal counts through its directory.
fn newest_change(root: &Path) -> io::Result<i128> {
    let changed = |m: &std::fs::Metadata| mtime_ns(m).max(ctime_ns(m));
    let mut newest = changed(&std::fs::symlink_metadata(root)?);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            newest = newest.max(changed(&meta));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(newest)
}

/// The seal of a tree: BLAKE3 of its files' paths, sizes, modification and status change
/// times and inodes (stat only, no reading): a file written, added, removed or replaced
/// changes it, even one written at the same size with its modification time put back
/// (`touch -r`, `rsync -t`, `cp -p`), as no one can set a status change time back. What says
/// that a folder is still as it was read: by a failback's copy back, by a source given its
/// tree to compare against, by the point it holds. Earlier versions recorded a stamp, of
/// the paths, sizes and modification times only (`tree …`, compared as such: [`as_recorded`]).
pub fn tree_seal(root: &Path) -> Option<String> {
    stamps(root).map(|s| s.1)
}

/// The folder's stamp now (`now`, of [`stamps`]) as `recorded` was made: a seal, or a stamp
/// when an earlier version recorded one (`tree …`), so that an upgrade does not make every
/// copy look changed behind its point.
fn as_recorded(recorded: Option<&str>, now: Option<(String, String)>) -> Option<String> {
    now.map(|(stamp, seal)| match recorded {
        Some(r) if r.starts_with("tree ") => stamp,
        _ => seal,
    })
}

/// [`as_recorded`] for the stamp of the newest of `points`.
fn as_newest(points: &[Point], now: Option<(String, String)>) -> Option<String> {
    as_recorded(points.last().and_then(|p| p.stamp.as_deref()), now)
}

/// The stamp of earlier versions (`tree …`) and the [`tree_seal`], of one walk.
fn stamps(root: &Path) -> Option<(String, String)> {
    use std::os::unix::fs::MetadataExt as _;
    if !root.is_dir() {
        return None;
    }
    let (mut stamp, mut seal) = (blake3::Hasher::new(), blake3::Hasher::new());
    for (rel, meta) in walk(root).ok()? {
        for h in [&mut stamp, &mut seal] {
            h.update(rel.as_bytes());
            h.update(&[0]);
            h.update(&meta.len().to_le_bytes());
            h.update(&mtime_ns(&meta).to_le_bytes());
        }
        seal.update(&ctime_ns(&meta).to_le_bytes());
        seal.update(&meta.dev().to_le_bytes());
        seal.update(&meta.ino().to_le_bytes());
    }
    Some((
        format!("tree {}", stamp.finalize().to_hex()),
        format!("seal {}", seal.finalize().to_hex()),
    ))
}

/// The digest ([`Tree::digest`]) of the regular files under `root` as read now, each opened
/// beneath it without following a link (a copy's newest point, checked in place).
fn digest_in_place(root: &Path) -> io::Result<String> {
    let mut tree = Tree::default();
    if !root.exists() {
        return Ok(tree.digest());
    }
    let dir = Dir::open(root, false)?;
    for (rel, meta) in walk(root)? {
        let Some(meta) = settled(meta, &root.join(&rel))? else {
            return Err(written_while_read(&rel));
        };
        let mut f = dir.open_file(&rel)?;
        let mut h = blake3::Hasher::new();
        let size = io::copy(&mut f, &mut h)?;
        if !super::blocks::same_file_state(&meta, &f.metadata()?) {
            return Err(written_while_read(&rel));
        }
        let entry = FileEntry {
            size,
            mtime_ns: 0,
            ctime_ns: 0,
            blake3: h.finalize().to_hex().to_string(),
        };
        tree.files.insert(rel, entry);
    }
    Ok(tree.digest())
}

/// The look at a listed file that what is read of it is compared with: the listing's, or,
/// when its times are of the tick of now (a write in that tick would leave them), a look
/// once they are a tick old; `None` when that look is of another file (replaced meanwhile).
fn settled(listed: std::fs::Metadata, path: &Path) -> io::Result<Option<std::fs::Metadata>> {
    use std::os::unix::fs::MetadataExt as _;
    if !super::blocks::written_just_now(&listed) {
        return Ok(Some(listed));
    }
    let m = super::blocks::settled_look(|| std::fs::symlink_metadata(path))?;
    Ok(((m.dev(), m.ino()) == (listed.dev(), listed.ino()) && m.is_file()).then_some(m))
}

/// A file of a copy written while it was read: what was read is of no single instant.
fn written_while_read(rel: &str) -> io::Error {
    io::Error::other(format!(
        "{rel} was written while it was read (a program writing into the copy): what was read is of no single instant, so nothing was recorded of it; run this again once nothing writes it"
    ))
}

/// Reads and hashes every file of `root` (the recovery side's `--verify`).
pub fn scan(root: &Path) -> io::Result<Tree> {
    let mut tree = Tree::default();
    if !root.exists() {
        return Ok(tree);
    }
    // Each file opened beneath the folder with no link followed, and hashed from that one
    // descriptor, checked to be the file listed: a folder swapped for a link while it is
    // read never puts another folder's files in the tree.
    let dir = Dir::open(root, false)?;
    for (rel, meta) in walk(root)? {
        let path = root.join(&rel);
        let Some(meta) = settled(meta, &path)? else {
            return Err(written_while_read(&rel));
        };
        let mut f = dir.open_file(&rel)?;
        let hash = hash_open(&mut f)?;
        if !super::blocks::same_file_state(&meta, &f.metadata()?) {
            return Err(written_while_read(&rel));
        }
        tree.files.insert(
            rel,
            // Not the source's: unknown (the next replication reads each file again).
            FileEntry {
                size: meta.len(),
                mtime_ns: mtime_ns(&meta),
                ctime_ns: 0,
                blake3: hash,
            },
        );
    }
    Ok(tree)
}

// The stream: JSON header lines and raw file bytes.
//   {"hello": {protocol, origin}}\n          first, and only first
//   {"file": {path, entry: {size, mtime_ns, blake3}}}\n <size bytes>
//   {"touch": {path, entry}}\n                 same content, new time
//   {"delete": {path}}\n
//   {"end": {digest}}\n
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Rec {
    Hello {
        protocol: u32,
        /// Which folder on which machine the source read, when it can say ([`FolderOrigin`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<FolderOrigin>,
    },
    File {
        path: String,
        entry: FileEntry,
    },
    Touch {
        path: String,
        entry: FileEntry,
    },
    Delete {
        path: String,
    },
    End {
        digest: String,
        /// What the copy of the files leaves out ([`Walked::left_out`]).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left_out: Vec<String>,
    },
}

fn put(w: &mut impl Write, rec: &Rec) -> io::Result<()> {
    let mut line = serde_json::to_vec(rec).expect("serializes");
    line.push(b'\n');
    w.write_all(&line)
}

const ENDED_EARLY: &str =
    "the stream from the source ended early (connection lost or source helper stopped)";

/// The next line of the stream, at most [`MAX_LINE`] bytes.
fn line(r: &mut impl io::BufRead) -> Result<String, String> {
    let mut buf = Vec::new();
    (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .map_err(|e| format!("reading the stream from the source: {e}"))?;
    if buf.last() != Some(&b'\n') {
        if buf.len() > MAX_LINE {
            return Err(format!(
                "the stream from the source holds a record longer than {MAX_LINE} bytes: refused"
            ));
        }
        return Err(ENDED_EARLY.into());
    }
    String::from_utf8(buf)
        .map_err(|_| "the stream from the source is damaged: a record is not UTF-8".into())
}

fn get(r: &mut impl io::BufRead) -> Result<Rec, String> {
    serde_json::from_str(&line(r)?)
        .map_err(|e| format!("the stream from the source is damaged: {e}"))
}

/// A folder as one running machine knows it: its boot id ([`super::wire::Origin`]), and the
/// device and inode of the folder then of each folder it lies in, up to `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderOrigin {
    boot: String,
    chain: Vec<(u64, u64)>,
}

impl FolderOrigin {
    /// `folder` on this machine, its links followed; `None` when it cannot be told.
    pub fn of(folder: &Path) -> Option<FolderOrigin> {
        use std::os::unix::fs::MetadataExt;
        let boot = super::wire::boot_id()?;
        let mut at = std::fs::canonicalize(folder).ok()?;
        let mut chain = Vec::new();
        loop {
            let m = std::fs::metadata(&at).ok()?;
            chain.push((m.dev(), m.ino()));
            if !at.pop() || chain.len() > 4096 {
                break;
            }
        }
        Some(FolderOrigin {
            boot: String::from_utf8_lossy(&boot).into_owned(),
            chain,
        })
    }
}

impl FolderOrigin {
    /// How many folders up from the folder its nearest mount point is (the first where the
    /// device changes on the way up: 0 when the folder itself is mounted), `None` when every
    /// folder up to `/` is on one file system. A share or disk not mounted leaves the folder
    /// under its mount point, on the file system above: this changes.
    pub fn mount_depth(&self) -> Option<usize> {
        self.chain.windows(2).position(|w| w[0].0 != w[1].0)
    }
}

/// Beside a set's copy: where the source folder's nearest mount point was
/// ([`FolderOrigin::mount_depth`]) when its newest update was recorded.
const MOUNT: &str = "source-mount";

fn mount_said(depth: Option<usize>) -> String {
    match depth {
        Some(0) => "the folder itself is mounted".into(),
        Some(n) => format!("its nearest mount point is {n} folder(s) up"),
        None => "no folder up to / is mounted".into(),
    }
}

/// Why the copy `copy` may not be written by a stream of the folder `source`: one is the
/// other, or lies in it, on this machine (two host names for one machine, or folders set
/// inside each other). A copy made equal to a source inside it would delete the rest of the
/// copy's folder; one inside its source would be copied into itself at each run.
pub fn folder_overlap(copy: &Path, source: Option<&FolderOrigin>) -> Option<String> {
    let source = source?;
    // A copy not made yet would be made in the nearest folder that is.
    let (here, made) = match FolderOrigin::of(copy) {
        Some(here) => (here, true),
        None => (copy.ancestors().skip(1).find_map(FolderOrigin::of)?, false),
    };
    if here.boot != source.boot {
        return None;
    }
    let (copy_id, source_id) = (here.chain.first()?, source.chain.first()?);
    let how = if !made {
        if !here.chain.contains(source_id) {
            return None;
        }
        "would be made inside the folder the source read"
    } else if copy_id == source_id {
        "is the very folder the source read"
    } else if source.chain.contains(copy_id) {
        "holds the folder the source read"
    } else if here.chain.contains(source_id) {
        "lies inside the folder the source read"
    } else {
        return None;
    };
    Some(format!(
        "it {how}, on this machine (boot id {}): the primary host and the recovery host are one machine reached under two names (or the folders are set inside each other), and making the copy equal to its source would delete or copy into that folder; nothing was written: give the copy a folder of its own, apart from the backup set's, on a recovery host that is another machine",
        source.boot
    ))
}

/// Why an update of the copy at `root` may not make `changes`: it would delete or replace
/// what another copy of reprise's keeps in the folder (a path through a metadata folder,
/// `NAME.reprise` or `.reprise`, or a file beside its own `NAME.reprise`).
fn another_copy_in(root: &Path, changes: &Changes) -> Option<String> {
    let theirs = |path: &str| {
        path.split('/').any(|c| c.ends_with(".reprise"))
            || root.join(format!("{path}.reprise")).is_dir()
    };
    let hit: Vec<&String> = changes
        .deleted
        .iter()
        .chain(&changes.replaced)
        .filter(|p| theirs(p))
        .collect();
    let first = hit.first()?;
    Some(format!(
        "making it equal to its source would delete or replace {} file{} of another reprise copy kept in its folder (the first: {}): a vm's recovery copy or another backup set's copy, whose points would go with it; nothing was written: give the backup set a folder of its own, apart from every other copy (two host ids may be one machine, or share one storage, under two names)",
        hit.len(),
        if hit.len() == 1 { "" } else { "s" },
        beneath::shown(first)
    ))
}

/// Why a restore may not write to `out`: it is, holds or lies in one of `read` (a copy, its
/// metadata folder), which the restore reads the point from, links followed (`None`: it does
/// not, or cannot be told so on this machine).
pub fn writes_into(out: &Path, read: &[&Path]) -> Option<String> {
    let chain_of = |p: &Path| -> Option<Vec<(u64, u64)>> {
        match FolderOrigin::of(p) {
            Some(o) => Some(o.chain),
            // A file, or not made yet: its own identity first, then its folder's chain.
            None => {
                use std::os::unix::fs::MetadataExt;
                let own = std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
                let parent = p.ancestors().skip(1).find_map(FolderOrigin::of)?;
                Some(own.into_iter().chain(parent.chain).collect())
            }
        }
    };
    let out_chain = chain_of(out)?;
    let out_exists = std::fs::symlink_metadata(out).is_ok();
    for r in read {
        let Some(r_chain) = chain_of(r) else {
            continue;
        };
        let r_id = r_chain.first()?;
        let hit = (out_exists && out_chain.first() == Some(r_id))
            || out_chain.contains(r_id)
            || (out_exists && r_chain.contains(out_chain.first()?));
        if hit {
            return Some(format!(
                "{} is, holds or lies in {}, which the point is read from: nothing was written; restore to a path apart from the copy",
                out.display(),
                r.display()
            ));
        }
    }
    None
}

/// Reads the first record, which must say the sender speaks this protocol; the folder it
/// read, when it says.
fn hello(r: &mut impl io::BufRead) -> Result<Option<FolderOrigin>, String> {
    let first = line(r)?;
    let value: serde_json::Value = serde_json::from_str(&first)
        .map_err(|_| "the source did not send a reprise tree stream".to_string())?;
    let theirs = match value.get("hello") {
        Some(h) => h.get("protocol").and_then(serde_json::Value::as_u64),
        // Protocol 1 began with its first file (or its end).
        None if ["file", "touch", "delete", "end"]
            .iter()
            .any(|k| value.get(k).is_some()) =>
        {
            Some(1)
        }
        None => None,
    };
    match theirs {
        Some(p) if p == u64::from(PROTOCOL) => {
            let origin = value
                .get("hello")
                .and_then(|h| h.get("origin"))
                .filter(|o| !o.is_null())
                .map(|o| serde_json::from_value::<FolderOrigin>(o.clone()))
                .transpose()
                .map_err(|e| {
                    format!("the header of the stream from the source is damaged ({e})")
                })?;
            Ok(origin)
        }
        Some(p) => Err(format!(
            "the source helper speaks protocol {p}; this helper speaks protocol {PROTOCOL} (reprise {VERSION}): both hosts must run the same reprise"
        )),
        None => Err("the source did not send a reprise tree stream".into()),
    }
}

/// Whether an entry is one the source could have sent; why not.
fn check_entry(path: &str, e: &FileEntry) -> Result<(), String> {
    let path = beneath::shown(path);
    if e.size > MAX_FILE_SIZE {
        return Err(format!(
            "`{path}` is announced with {} bytes, more than the {MAX_FILE_SIZE} bytes reprise replicates: refused",
            e.size
        ));
    }
    for t in [e.mtime_ns, e.ctime_ns] {
        if !(MIN_MTIME_NS..=MAX_MTIME_NS).contains(&t) {
            return Err(format!(
                "`{path}` is announced with an impossible time ({t} ns): refused"
            ));
        }
    }
    if !is_hash(&e.blake3) {
        return Err(format!("`{path}` is announced with a malformed hash"));
    }
    Ok(())
}

/// 64 lowercase hex digits.
fn is_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What the source sent.
#[derive(Debug, Clone, Default)]
pub struct TreeSent {
    pub files: u64,
    pub bytes: u64,
    /// What the copy of the files leaves out ([`Walked::left_out`]).
    pub left_out: Vec<String>,
}

fn changed_while_read(path: &Path) -> String {
    format!(
        "{}: it changed while it was read (a backup still being written?): this replication makes no point; replicate again once what writes it has finished",
        path.display()
    )
}

/// The size from which a file's hashing is long enough to hand on what was written first.
const HAND_ON_BEFORE: u64 = 1 << 20;

/// Source side: sends what differs from `base`.
pub fn send_tree(root: &Path, base: &Tree, w: &mut impl Write) -> Result<TreeSent, String> {
    let name = root.display().to_string();
    let err = |e: io::Error| format!("{name}: {e}");
    let mut now = Tree::default();
    let mut sent = TreeSent::default();
    put(
        w,
        &Rec::Hello {
            protocol: PROTOCOL,
            origin: FolderOrigin::of(root),
        },
    )
    .map_err(err)?;
    let walked = walk_all(root).map_err(err)?;
    let folder = super::beneath::Dir::open(root, false).map_err(err)?;
    let left_out = walked.left_out(root);
    let Walked { files, others, .. } = walked;
    // reprise's own files (a copy's metadata folder `NAME.reprise`, a replication overlay):
    // copied, they would make the copy another copy's folder, which every later update
    // refuses to touch, and the points recorded there would travel as data.
    if let Some((rel, _)) = files.iter().find(|(rel, _)| {
        rel.split('/')
            .any(|c| c.ends_with(".reprise") || c.ends_with(".reprise-replicate"))
    }) {
        return Err(format!(
            "{name} holds reprise's own files ({}: a recovery copy's metadata, or a replication's overlay): a backup set whose folder holds reprise copies would copy their history as data, and its copy could not be brought up to date; this replication makes no point. Make the backup set a folder that holds no recovery copy, or move them out of it",
            as_text(rel)
        ));
    }
    // Its file system not mounted (NFS down, a disk not there), a folder is there and empty:
    // made a point, it would empty the copy, and a run would rely on that point.
    if files.is_empty() && !base.files.is_empty() {
        return Err(format!(
            "{name} holds no file, and its copy holds {} ({} bytes): a file system not mounted there (an NFS share, a disk) leaves its folder empty, and this replication would empty the copy; it makes no point and writes nothing. Mount it (or let the job that fills it finish), then run it again",
            base.files.len(),
            base.total()
        ));
    }
    // Left out, the copy would lack what the folder holds, with nothing said: a link's target
    // (a folder of dumps linked in), or what a restore looks for by that name.
    if !others.is_empty() {
        let named: Vec<String> = others
            .iter()
            .take(5)
            .map(|(rel, what)| format!("{rel} ({what})"))
            .collect();
        return Err(format!(
            "{name}: {}{} {} not a file or a folder of the set: a backup set is copied as its files and folders, and a copy without what {} show{} would not be the folder; this replication makes no point. Move {} out of the backup set, or make the backup set the folder that holds what a link leads to",
            named.join(", "),
            if others.len() > 5 {
                format!(" and {} more", others.len() - 5)
            } else {
                String::new()
            },
            if others.len() == 1 { "is" } else { "are" },
            if others.len() == 1 { "it" } else { "they" },
            if others.len() == 1 { "s" } else { "" },
            if others.len() == 1 { "it" } else { "them" },
        ));
    }
    for (rel, listed) in files {
        let path = root.join(&rel);
        // Looked at again once its times are a tick old (a write in the tick of the last one
        // would leave them), still the file listed.
        let Some(meta) = settled(listed, &path).map_err(|e| format!("{}: {e}", path.display()))?
        else {
            return Err(changed_while_read(&path));
        };
        let known = base.files.get(&rel);
        let (size, mtime, ctime) = (meta.len(), mtime_ns(&meta), ctime_ns(&meta));
        // Not read again only when nothing about it changed, its status change time
        // included (which no program can set back, unlike the others).
        if let Some(k) = known
            && k.size == size
            && k.mtime_ns == mtime
            && k.ctime_ns == ctime
        {
            now.files.insert(rel, k.clone());
            continue;
        }
        // What is written so far is handed on before a large file is hashed: the link
        // carries it meanwhile, rather than wait in a buffer.
        if size >= HAND_ON_BEFORE {
            w.flush().map_err(err)?;
        }
        // Opened once, beneath the folder with no link followed on the way (a folder swapped
        // for a link since the listing would lead out of the set), and only the very file
        // listed: what is hashed and sent is read from that one descriptor.
        let at = |e: io::Error| format!("{}: {e}", path.display());
        let mut f = folder.open_file(&rel).map_err(at)?;
        let opened = f.metadata().map_err(at)?;
        if !super::blocks::same_file_state(&meta, &opened) {
            return Err(changed_while_read(&path));
        }
        let hash = hash_open(&mut f).map_err(at)?;
        let entry = FileEntry {
            size,
            mtime_ns: mtime,
            ctime_ns: ctime,
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
            f.seek(io::SeekFrom::Start(0)).map_err(at)?;
            let copied = io::copy(&mut (&mut f).take(size), w).map_err(err)?;
            if copied != size {
                return Err(changed_while_read(&path));
            }
            sent.files += 1;
            sent.bytes += size;
        }
        // What was hashed and sent is the file as it was listed only if nothing wrote it
        // meanwhile: a backup still being written would make a point of its first part.
        let after = f.metadata().map_err(at)?;
        if !super::blocks::same_file_state(&meta, &after) {
            return Err(changed_while_read(&path));
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
            left_out: left_out.clone(),
        },
    )
    .map_err(err)?;
    sent.left_out = left_out;
    Ok(sent)
}

/// BLAKE3 of an open file, read from its start.
fn hash_open(f: &mut File) -> io::Result<String> {
    f.seek(io::SeekFrom::Start(0))?;
    super::blocks::hash_read(f)
}

/// The recovery side of one backup set.
#[derive(Debug, Clone)]
pub struct TreeStore {
    root: PathBuf,
    dir: PathBuf,
    /// The most files the copy may hold ([`MAX_FILES`]).
    max_files: usize,
}

/// The paths an update changes, by what it does to them (as in [`Commit`]).
#[derive(Default)]
struct Changes {
    put: Vec<String>,
    replaced: Vec<String>,
    deleted: Vec<String>,
    touched: Vec<String>,
}

/// What the records of an update gave once its end came.
struct Received {
    /// The digest of the tree the source announced.
    digest: String,
    changes: Changes,
    /// Bytes of file content received.
    received: u64,
    /// What the source said its copy leaves out ([`Walked::left_out`]).
    left_out: Vec<String>,
    /// Where the source folder's nearest mount point is, when the source said.
    mount: Option<Option<usize>>,
}

/// Where [`TreeStore::stage_file`] writes, and the buffer it reads through.
struct Staged<'a> {
    dir: &'a Dir,
    dir_path: &'a Path,
    buf: &'a mut [u8],
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
    /// Files whose time changed, their content not (the time is in `tree`).
    #[serde(default)]
    touched: Vec<String>,
    tree: Tree,
    retention: u32,
    /// The copy's seal when the update found it fit: written since, until the update moves
    /// files in it ([`ROLLING`]), outside reprise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    before: Option<String>,
}

impl Commit {
    /// Every path the update moves in, away or over, or sets the time of.
    fn moved(&self) -> std::collections::HashSet<&String> {
        self.put
            .iter()
            .chain(&self.replaced)
            .chain(&self.deleted)
            .chain(&self.touched)
            .collect()
    }
}

/// When the commit record `commit` was written (its newest time): a file of the copy changed
/// later was written since the update was committed.
fn committed_at(commit: &Path) -> Result<i128, StoreError> {
    std::fs::metadata(commit)
        .map(|m| mtime_ns(&m).max(ctime_ns(&m)))
        .map_err(io_err(commit))
}

/// Written before a committed update moves files in the copy, removed with its record: from
/// then on the copy's seal moves by the update's own moves.
const ROLLING: &str = "rolling";

/// How to undo an update: put back `files/…`, remove `added`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Undo {
    restore: Vec<String>,
    remove: Vec<String>,
}

/// Copies the regular file `rel` from `from` to `to` without following a link on either side.
fn copy_file(from: &Dir, rel: &str, to: &Dir) -> Result<(), StoreError> {
    let src = from.path().join(rel);
    let dst = to.path().join(rel);
    let mut r = from.open_file(rel).map_err(io_err(&src))?;
    let mut w = to.create_file(rel).map_err(io_err(&dst))?;
    io::copy(&mut r, &mut w).map_err(io_err(&dst))?;
    Ok(())
}

/// Copies every regular file of `from` into `to` (links in `from` are not files: left out).
fn copy_tree(from: &Path, to: &Dir) -> Result<(), StoreError> {
    if !from.exists() {
        return Ok(());
    }
    let src = Dir::open(from, false).map_err(io_err(from))?;
    for (rel, _) in walk(from).map_err(io_err(from))? {
        copy_file(&src, &rel, to)?;
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
            max_files: MAX_FILES,
        }
    }

    /// The same store, holding at most `max_files` files (a lower bound than
    /// [`MAX_FILES`], so that the bound can be tried without a million files).
    pub fn with_max_files(self, max_files: usize) -> TreeStore {
        TreeStore {
            max_files: max_files.min(MAX_FILES),
            ..self
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
        // Its tree and commit record hold an entry for each file: up to what a source takes.
        match meta::read_file_up_to(&path, MAX_TREE_BYTES) {
            Ok(Some(b)) => serde_json::from_slice(&b).map_err(|e| StoreError::Damaged {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
            Ok(None) => Ok(T::default()),
            Err(reason) => Err(StoreError::Damaged {
                path: path.display().to_string(),
                reason,
            }),
        }
    }

    fn write_json(&self, name: &str, value: &impl Serialize) -> Result<(), StoreError> {
        if name == "points.json" {
            let bytes = serde_json::to_vec_pretty(value).expect("serializes");
            return meta::write_points_file(&self.dir, &bytes);
        }
        // A tree and a commit record hold an entry (and a commit a path or more) per file:
        // compact, a million files stay well within what is read back ([`MAX_TREE_BYTES`]).
        let bytes = serde_json::to_vec(value).expect("serializes");
        meta::write_file(&self.dir, name, &bytes, false)
    }

    /// The points, oldest first (from `points.json.prev` when the newest is damaged); an
    /// error when neither can be read.
    pub fn points(&self) -> Result<Vec<Point>, StoreError> {
        points_of(&self.dir)
    }

    /// With the lock held: the points, the points file rewritten from its previous
    /// generation when that was used (and said).
    fn checked_points(&self) -> Result<(Vec<Point>, Option<String>), StoreError> {
        match meta::read_points(&self.dir) {
            meta::PointsRead::Read {
                points,
                source: meta::PointsSource::Previous { damage },
            } => {
                let json = serde_json::to_vec_pretty(&points).expect("points serialize");
                meta::write_file(&self.dir, "points.json", &json, false)?;
                let newest = points.last().map(|p| p.id.clone()).unwrap_or_default();
                Ok((
                    points,
                    Some(format!(
                        "{damage}: it was rewritten from points.json.prev (newest point {newest})"
                    )),
                ))
            }
            _ => Ok((self.points()?, None)),
        }
    }

    /// With the lock held, before the copy is written: its points, or none when its history
    /// cannot go on (points unreadable, or the copy changed behind its newest point), which
    /// is then ended (and said).
    /// A folder written outside reprise since its newest point (a file added, changed or
    /// removed there) is refused, since what was written there is in no point and would be
    /// deleted or overwritten: unless `overwrite` (a failback's copy back, judged before), a
    /// failback copied it back as it now is, or the operator let it go as it now is
    /// ([`Self::accept_changes`]).
    fn history_for_update(&self, overwrite: bool) -> Result<(Vec<Point>, Vec<String>), StoreError> {
        if let Some(reason) = self.foreign().filter(|_| !overwrite) {
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        let mut notes = Vec::new();
        let mut points = match self.checked_points() {
            Ok((p, n)) => {
                notes.extend(n);
                p
            }
            Err(StoreError::Damaged { reason, .. }) => {
                notes.push(self.end_history(format!("its points cannot be read: {reason}"))?);
                return Ok((Vec::new(), notes));
            }
            Err(e) => return Err(e),
        };
        let now = stamps(&self.root);
        // Gone is only a folder that is not there: one that cannot be read whole (a file or
        // folder there denied, an I/O error) may hold what was written outside reprise.
        if now.is_none() {
            self.refuse_unreadable()?;
        }
        let accepted = meta::read_accepted(&self.dir)
            .is_some_and(|a| as_recorded(Some(&a), now.clone()).as_ref() == Some(&a));
        if let Some(why) = changed_since(&points, as_newest(&points, now.clone())) {
            let returned =
                self.path(RETURNED).exists() && self.written_since_returned(now.clone())?.is_none();
            // A folder that is gone holds nothing to lose; one whose files are still those
            // of its newest point changed only in their status (owner, mode, labels, a
            // device number after a remount): that point is it again.
            if !(overwrite || accepted || returned || now.is_none()) {
                if self.still_newest(&mut points)? {
                    return Ok((points, notes));
                }
                return Err(StoreError::Refused {
                    image: self.name(),
                    reason: meta::written_outside(&why),
                });
            }
            notes.push(self.end_history(why)?);
            return Ok((Vec::new(), notes));
        }
        // No point to compare with (its history ended, a failover started on it): once let
        // go (a failback's copy back, `reprise release`), it is refused when written again.
        if points.is_empty()
            && !overwrite
            && now.is_some()
            && let Some(a) = meta::read_accepted(&self.dir)
            && !accepted
        {
            return Err(StoreError::Refused {
                image: self.name(),
                reason: meta::written_since_let_go(&a),
            });
        }
        Ok((points, notes))
    }

    /// An error when the copy's folder, or the folder within it where one of `paths` is
    /// moved, is on another mount than its metadata folder beside it (a mount point, a bind
    /// mount of the same file system, a link to elsewhere): an update is staged in the
    /// metadata folder and moved into the copy's, which cannot cross mounts; found at a move,
    /// the update would be left half done, files already removed. `paths` empty: the folder
    /// itself.
    fn refuse_moves_apart<'p>(
        &self,
        paths: impl Iterator<Item = &'p String>,
    ) -> Result<(), StoreError> {
        let (Ok(root), Ok(meta)) = (Dir::open(&self.root, false), Dir::open(&self.dir, false))
        else {
            // Nothing there yet: made beside the metadata folder, on its mount.
            return Ok(());
        };
        let mut seen = std::collections::BTreeSet::new();
        let mut folders: Vec<&str> = paths
            .map(|p| p.rsplit_once('/').map_or("", |(d, _)| d))
            .filter(|d| seen.insert(*d))
            .collect();
        if folders.is_empty() {
            folders.push("");
        }
        for folder in folders {
            let probe = if folder.is_empty() {
                "f".to_string()
            } else {
                format!("{folder}/f")
            };
            let apart = match root.reachable_by_move(&probe, &meta) {
                Ok(reachable) => !reachable,
                Err(e) => {
                    return Err(StoreError::Io {
                        path: format!("{}/{}", self.root.display(), beneath::shown(folder)),
                        reason: format!("{e}; nothing was written"),
                    });
                }
            };
            if !apart {
                continue;
            }
            let at = if folder.is_empty() {
                "the folder is".to_string()
            } else {
                format!("its folder `{}` is", beneath::shown(folder))
            };
            return Err(StoreError::Refused {
                image: self.name(),
                reason: format!(
                    "{at} on another mount than {} beside it (a mount point, a bind mount, or a link to elsewhere): an update is staged there and moved into the folder, which cannot cross mounts; nothing was written. Give the backup set a folder with no mount in it, inside the file system it is on (a subfolder of the mount point), as its `dest_path` (or its `source_path`, for a failback's copy back)",
                    self.dir.display()
                ),
            });
        }
        Ok(())
    }

    /// An error when the copy's folder is there but cannot be read whole (not a folder, a
    /// part of it denied, an I/O error): its stamp is none, as if it were gone, and it may
    /// hold what was written outside reprise. Nothing there is no error.
    fn refuse_unreadable(&self) -> Result<(), StoreError> {
        let why = match std::fs::symlink_metadata(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => e.to_string(),
            Ok(m) if !m.is_dir() => "it is not a folder".to_string(),
            // Read whole now, it was not when its stamp was taken (a file gone between its
            // listing and its look): not gone either.
            Ok(_) => walk(&self.root)
                .err()
                .map_or("it changed while it was listed".to_string(), |e| {
                    e.to_string()
                }),
        };
        Err(StoreError::Refused {
            image: self.name(),
            reason: format!(
                "the copy's folder cannot be read whole ({why}): what it holds cannot be compared with its newest point, and nothing is written over it or ended; make it readable by the helper's user (or move what is in the way), then run again"
            ),
        })
    }

    /// Whether the folder, whose seal differs from its newest point's, still holds exactly
    /// that point's files (read whole, and not written while read): the point's seal is
    /// then recorded anew.
    fn still_newest(&self, points: &mut [Point]) -> Result<bool, StoreError> {
        let Some(newest) = points.last_mut() else {
            return Ok(false);
        };
        let before = tree_seal(&self.root);
        let whole = digest_in_place(&self.root).is_ok_and(|d| d == newest.blake3);
        if !whole || tree_seal(&self.root) != before {
            return Ok(false);
        }
        newest.stamp = before;
        self.write_json("points.json", &points.to_vec())?;
        Ok(true)
    }

    /// The operator (`reprise release`) let what was written in the folder since its newest
    /// point go: a replication may delete or overwrite it while the folder is still as it is
    /// now ([`Self::history_for_update`]). What was let go: the folder's change since its
    /// newest point, if it changed.
    /// A folder at the copy's path holding files of which reprise made no point is taken as a
    /// copy made by hand as it now is: `Some` says so.
    pub fn accept_changes(&self) -> Result<Option<String>, StoreError> {
        let foreign = self.foreign().is_some();
        if !meta::has_history(&self.dir) && !foreign {
            return Ok(None);
        }
        let _lock = self.lock()?;
        let now = stamps(&self.root);
        let seal = now.clone().map(|s| s.1).unwrap_or_default();
        meta::write_accepted(&self.dir, &seal)?;
        // Its source folder taken as it now is too, on whatever file system it is.
        match std::fs::remove_file(self.path(MOUNT)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err(&self.path(MOUNT))(e));
            }
            _ => {}
        }
        if foreign {
            return Ok(Some(format!(
                "{} as it is now: a folder holding files reprise made no point of; the next replication makes it equal to its source (what the source lacks is deleted)",
                meta::TAKEN
            )));
        }
        let points = self.points().unwrap_or_default();
        Ok(changed_since(&points, as_newest(&points, now)))
    }

    /// Why what is at the copy's path is not to be written over ([`meta::not_a_copy`]): files
    /// of which reprise made no point (another set's or an application's data on shared
    /// storage, a folder filled by hand), that the operator did not take as a copy as they now
    /// are; a replication would delete what its source lacks. `None` for nothing there or an
    /// empty folder (nothing to lose).
    pub fn foreign(&self) -> Option<String> {
        let m = std::fs::symlink_metadata(&self.root).ok()?;
        // A first update committed and not yet completed (a crash) is reprise's own: the
        // next use completes it.
        if meta::has_history(&self.dir) || self.path("commit.json").exists() {
            return None;
        }
        let what = match m.is_dir() {
            true => {
                if std::fs::read_dir(&self.root).is_ok_and(|mut d| d.next().is_none()) {
                    return None;
                }
                "a folder holding files"
            }
            // Never taken as a copy of a folder: only moved away.
            false => {
                return Some(format!(
                    "a file, not a folder, is at the copy's path {}: a backup set's copy is a folder; nothing was written. Move the file away",
                    self.root.display()
                ));
            }
        };
        let taken = meta::read_accepted(&self.dir);
        if taken.is_some() && as_recorded(taken.as_deref(), stamps(&self.root)) == taken {
            return None;
        }
        Some(meta::not_a_copy(what, taken.as_deref()))
    }

    /// Ends the copy's point history: points and deltas go, `ended.json` says why.
    fn end_history(&self, why: String) -> Result<String, StoreError> {
        let given_up: Vec<String> = self
            .points()
            .map(|p| p.into_iter().map(|p| p.id).collect())
            .unwrap_or_default();
        let ended = meta::Ended {
            missed: None,
            at: Utc::now(),
            why: why.clone(),
            points: given_up.clone(),
        };
        self.write_json("ended.json", &ended)?;
        meta::write_file(&self.dir, "points.json", b"[]", false)?;
        let _ = std::fs::remove_file(self.path("points.json.prev"));
        let _ = std::fs::remove_file(self.path(meta::ACCEPTED));
        let _ = std::fs::remove_dir_all(self.path("deltas"));
        std::fs::create_dir_all(self.path("deltas")).map_err(io_err(&self.dir))?;
        meta::sync_dir(&self.dir)?;
        Ok(format!(
            "its point history was ended ({why}){}",
            if given_up.is_empty() {
                String::new()
            } else {
                format!("; points given up: {}", given_up.join(", "))
            }
        ))
    }

    /// What the copy and its metadata say now, without changing anything.
    pub fn inspect(&self) -> CopyState {
        let mut state = CopyState {
            path: self.name(),
            ..CopyState::default()
        };
        if self.root.is_dir() {
            state.exists = true;
            if let Ok(files) = walk(&self.root) {
                state.size = files.iter().map(|(_, m)| m.len()).sum();
            }
            if let Ok(newest) = newest_change(&self.root) {
                state.mtime = chrono::DateTime::<Utc>::from_timestamp(
                    (newest.div_euclid(1_000_000_000)) as i64,
                    newest.rem_euclid(1_000_000_000) as u32,
                );
            }
        }
        let now = stamps(&self.root);
        state.stamp = now.clone().map(|s| s.1);
        inspect_dir(&self.dir, &mut state);
        state.foreign = self.foreign();
        state.returned = self
            .written_since_returned(now.clone())
            .unwrap_or_else(|e| Some(e.to_string()));
        state.copied_back = state.returned.is_none() && self.path(RETURNED).exists();
        state.changed = changed_since(&state.points, as_newest(&state.points, now));
        if !state.busy {
            state.unsettled = self.cut();
        }
        // What a run's lease refuses ([`TreeStore::take_lease`]), seen before the run.
        if state.exists && state.changed.is_none() {
            state.links = state
                .points
                .last()
                .and_then(|p| links_unlike(&self.root, p));
        }
        state
    }

    /// What an update cut in the middle left in the copy, until it is settled.
    fn cut(&self) -> Option<String> {
        if self.path("commit.json").exists() {
            Some("an update was cut in the middle (its commit record is still there)".into())
        } else if self.path("staging").exists() {
            Some("an update was cut before its commit".into())
        } else {
            None
        }
    }

    /// As [`crate::replica::store::Store::half_written`], for a backup set's copy: why its
    /// files are neither the point before an update of reprise's nor the one after. Changes
    /// nothing, and does not walk the files.
    pub fn half_written(&self) -> Option<String> {
        if crate::replica::store::held(&self.dir) {
            return Some("reprise is writing it now".into());
        }
        self.cut()
            .map(|why| format!("reprise left it half written: {why}"))
    }

    /// Refuses to write into a copy that a lease holds.
    fn refuse_in_use(&self) -> Result<(), StoreError> {
        match meta::in_use(&self.dir) {
            Some(who) => Err(StoreError::InUse {
                image: self.name(),
                who,
            }),
            None => Ok(()),
        }
    }

    /// Records that `lease` uses the folder (see [`crate::replica::Store::take_lease`]): with
    /// `expect`, only while the folder still is that point (its newest, the folder not
    /// changed behind it, not found bad since a run chose it as verified); else refused and
    /// nothing recorded.
    pub fn take_lease(
        &self,
        lease: &Lease,
        expect: Option<&str>,
        wait: std::time::Duration,
    ) -> Result<Option<String>, StoreError> {
        let _lock = lock_wait(&self.dir, &self.name(), wait)?;
        let mut notes: Vec<String> = self.recover()?.into_iter().collect();
        if let Some(id) = expect {
            let (points, repaired) = self.checked_points()?;
            notes.extend(repaired);
            let now = as_newest(&points, stamps(&self.root));
            if let Some(reason) = lease_refusal(&points, now, id, lease.verified)
                .or_else(|| points.last().and_then(|p| links_unlike(&self.root, p)))
            {
                return Err(StoreError::Refused {
                    image: self.name(),
                    reason,
                });
            }
        }
        meta::write_lease(&self.dir, lease)?;
        Ok((!notes.is_empty()).then(|| notes.join("; ")))
    }

    /// Removes the leases `which` selects; what was released.
    pub fn release(
        &self,
        which: impl Fn(Option<&Lease>, &str) -> bool,
    ) -> Result<Vec<String>, StoreError> {
        meta::remove_leases(&self.dir, which)
    }

    /// A failback copied the folder back to its primary as it was at `stamp` (its
    /// [`tree_seal`] before the copy back read it): that is recorded, then the leases
    /// `which` selects are removed. A replication then writes into the folder only while it
    /// is still that ([`Self::refuse_written_since_returned`]). A folder already written
    /// since (the service still ran on the recovery site) is refused, its leases kept: what
    /// was written there is on no other host, and the failback is not said done with it.
    pub fn release_returned(
        &self,
        which: impl Fn(Option<&Lease>, &str) -> bool,
        stamp: &str,
    ) -> Result<Vec<String>, StoreError> {
        let _lock = self.lock()?;
        if let Some(why) = self.written_since(stamp) {
            return Err(StoreError::Refused {
                image: self.name(),
                reason: format!(
                    "{why} since the failback's copy back read it: what was written there is only on this copy, which stays leased"
                ),
            });
        }
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let returned = Returned {
            stamp: stamp.to_string(),
            at: Some(Utc::now()),
        };
        self.write_json(RETURNED, &returned)?;
        self.release(which)
    }

    /// Forgets that a failback copied the folder back (the operator's `reprise release`):
    /// replication may write over what was written in it since. Whether there was a record.
    pub fn forget_returned(&self) -> Result<bool, StoreError> {
        let path = self.path(RETURNED);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Refuses to write into a folder written after a failback read it to copy it back to its
    /// primary (the recovery site still wrote in it: what it wrote is only here). One still as
    /// the failback read it is written into as any copy, the record forgotten once that
    /// update is recorded (the update itself refuses a folder changed since its base).
    fn refuse_written_since_returned(&self) -> Result<(), StoreError> {
        if !self.path(RETURNED).exists() {
            return Ok(());
        }
        match self.written_since_returned(stamps(&self.root))? {
            None => Ok(()),
            Some(reason) => Err(StoreError::Refused {
                image: self.name(),
                reason,
            }),
        }
    }

    /// Why no replication may write into the folder, when a failback copied it back and it
    /// was written since ([`Self::refuse_written_since_returned`]); `now` is the folder's
    /// [`stamps`] now.
    fn written_since_returned(
        &self,
        now: Option<(String, String)>,
    ) -> Result<Option<String>, StoreError> {
        if !self.path(RETURNED).exists() {
            return Ok(None);
        }
        let returned: Returned = self.read_json(RETURNED)?;
        if as_recorded(Some(&returned.stamp), now).as_ref() == Some(&returned.stamp) {
            // Forgotten once an update made from this very folder is recorded.
            return Ok(None);
        }
        let newest = self.newest_files();
        let at = returned
            .at
            .map(|t| t.format(" on %Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default();
        Ok(Some(format!(
            "it was written after a failback read it to copy it back to its primary (released{at}){newest}: what was written in it since is not on the primary, and a replication would delete or overwrite it, so none writes into it; copy what is to be kept to the primary's folder, then `reprise release` of this backup set lets replication write over the copy"
        )))
    }

    /// Why the folder is no longer as it was at `stamp` (a [`tree_seal`], or an older
    /// version's stamp), if it is not: its newest files, to show what was written.
    fn written_since(&self, stamp: &str) -> Option<String> {
        if as_recorded(Some(stamp), stamps(&self.root)).as_deref() == Some(stamp) {
            return None;
        }
        Some(format!("it was written{}", self.newest_files()))
    }

    /// The folder's newest files, to show what would be lost: ` (its newest files: …)`.
    fn newest_files(&self) -> String {
        // The newest files, to show what would be lost.
        let mut files: Vec<(i128, String)> = walk(&self.root)
            .map(|w| w.into_iter().map(|(rel, m)| (mtime_ns(&m), rel)).collect())
            .unwrap_or_default();
        files.sort();
        let newest: Vec<String> = files
            .iter()
            .rev()
            .take(3)
            .map(|(ns, rel)| {
                let at = i64::try_from(ns.div_euclid(1_000_000_000))
                    .ok()
                    .and_then(|s| chrono::DateTime::<Utc>::from_timestamp(s, 0))
                    .map(|t| t.format(" %Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_default();
                format!("{rel}{at}")
            })
            .collect();
        if newest.is_empty() {
            " (it holds no file now: files were removed)".to_string()
        } else {
            format!(" (its newest files: {})", newest.join(", "))
        }
    }

    /// [`Self::recover`] before a replication writes: a record of an interrupted update or
    /// roll-back that cannot be read leaves the copy in an unknown state, so its history is
    /// ended and the replication makes a first point again (said).
    fn recover_for_update(&self) -> Result<Option<String>, StoreError> {
        match self.recover() {
            Err(StoreError::Damaged { path, reason }) => {
                let _ = std::fs::remove_file(self.path("commit.json"));
                let _ = std::fs::remove_file(self.path(ROLLING));
                let _ = std::fs::remove_dir_all(self.path("staging"));
                Ok(Some(self.end_history(format!("{path}: {reason}"))?))
            }
            other => other,
        }
    }

    /// Settles an interrupted update (see the module).
    fn recover(&self) -> Result<Option<String>, StoreError> {
        let staging = self.path("staging");
        let commit = self.path("commit.json");
        if commit.exists() {
            let c: Commit = meta::read_file_up_to(&commit, MAX_TREE_BYTES)
                .and_then(|b| {
                    serde_json::from_slice(&b.unwrap_or_default()).map_err(|e| e.to_string())
                })
                .and_then(|c: Commit| {
                    // Ids name folders (the previous point's delta).
                    let bad = [Some(&c.point.id), c.prev.as_ref()]
                        .into_iter()
                        .flatten()
                        .find(|id| !meta::valid_point_id(id))
                        .map(|id| format!("{id:?} cannot name a point"))
                        .or_else(|| {
                            // A retention of no point would drop every point and its delta.
                            (c.retention == 0).then(|| "a retention of 0 points".to_string())
                        });
                    bad.map_or(Ok(c), Err)
                })
                .map_err(|reason| StoreError::Damaged {
                    path: commit.display().to_string(),
                    reason: format!(
                        "the commit record of an interrupted update cannot be read ({reason}): \
                         the copy may be half updated; replicate it again once this file is removed"
                    ),
                })?;
            if let Some(why) = self.written_after_commit(&c) {
                self.discard_update()?;
                return Ok(Some(why));
            }
            if let Some(why) = self.written_since_cut(&c, &commit)? {
                return Ok(Some(why));
            }
            let id = c.point.id.clone();
            let unusable = self.roll_forward(c)?;
            return Ok(Some(super::point::completed_note(&id, unusable)));
        }
        // A marker left by a crash after its record went is of no update.
        let _ = std::fs::remove_file(self.path(ROLLING));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
            return Ok(Some(
                "an interrupted update was thrown away; the copy was not touched".into(),
            ));
        }
        Ok(None)
    }

    /// Why the folder was written after `c` found it fit and before the update began moving
    /// files in it (a crash cut the update, then a program wrote there; or it was written
    /// while the update was received): completing it would move files over what was written,
    /// which is in no point, and record a point that is not the folder. `None` once the
    /// update began (its [`ROLLING`] marker names it), or what was written was let go.
    fn written_after_commit(&self, c: &Commit) -> Option<String> {
        let before = c.before.as_ref()?;
        let marker = meta::read_file(&self.path(ROLLING)).ok().flatten();
        if marker.as_deref() == Some(c.point.id.as_bytes()) {
            return None;
        }
        let now = tree_seal(&self.root)?;
        let let_go = meta::read_accepted(&self.dir).as_ref() == Some(&now);
        (now != *before && !let_go).then(|| {
            format!(
                "the folder changed after a replication into it was committed and before it was written (it was `{before}`, it is `{now}`): a program wrote there, or a vm ran on it; that update was thrown away, the folder left as it is (no point holds what was written there)"
            )
        })
    }

    /// An update found begun (cut while it moved files in the copy: its [`ROLLING`] marker
    /// names it): its own moves changed the folder's seal, so a write made in the copy since
    /// the cut cannot be told by it. Each file must then be as the point before it or the
    /// update leave it: a file the update does not move, as the previous tree records it and
    /// not changed since the update was committed (its status change time, which no one can
    /// set back); one it moves, not changed since either, or the update's very file (its
    /// hash); none added or removed besides. Completing it over a write made since would
    /// record a point of what is not the point (the write kept, unlisted, or overwritten
    /// unsaid). Then nothing more is moved: the update is thrown away, the copy left as it
    /// is (it counts as written outside reprise: its seal is no point's), what its moves
    /// replaced kept beside its deltas. What was done, said; `None` when the copy is as the
    /// update and its point left it.
    fn written_since_cut(&self, c: &Commit, commit: &Path) -> Result<Option<String>, StoreError> {
        let marker = meta::read_file(&self.path(ROLLING)).ok().flatten();
        if marker.as_deref() != Some(c.point.id.as_bytes()) {
            return Ok(None);
        }
        let committed = committed_at(commit)?;
        let old: Tree = self.read_json("tree.json")?;
        let moved = c.moved();
        let root = match Dir::open(&self.root, false) {
            Ok(d) => d,
            // No folder: nothing of it is judged; the roll-forward says what it finds.
            Err(_) => return Ok(None),
        };
        let same = |e: Option<&FileEntry>, m: &std::fs::Metadata| {
            e.is_some_and(|e| e.size == m.len() && e.mtime_ns == mtime_ns(m))
        };
        let mut foreign: Vec<String> = Vec::new();
        let files = walk(&self.root).map_err(io_err(&self.root))?;
        let present: std::collections::HashSet<&str> =
            files.iter().map(|(rel, _)| rel.as_str()).collect();
        for (rel, m) in &files {
            let (was, will) = (old.files.get(rel), c.tree.files.get(rel));
            let untouched = ctime_ns(m) <= committed;
            let fits = if moved.contains(rel) {
                // Not moved yet (as it was), or moved in: the update's file, by its hash.
                (untouched && (same(was, m) || same(will, m)))
                    || (same(will, m)
                        && will.is_some_and(|e| {
                            root.open_file(rel)
                                .and_then(|mut f| hash_open(&mut f))
                                .is_ok_and(|h| h == e.blake3)
                        }))
            } else {
                untouched && (same(was, m) || same(will, m))
            };
            if !fits {
                foreign.push(rel.clone());
            }
        }
        // A file of the point the update does not move, gone: removed since.
        for rel in old.files.keys().chain(c.tree.files.keys()) {
            if !moved.contains(rel) && !present.contains(rel.as_str()) && !foreign.contains(rel) {
                foreign.push(rel.clone());
            }
        }
        if foreign.is_empty() {
            return Ok(None);
        }
        foreign.sort();
        self.thrown_away(c, commit, &foreign, false).map(Some)
    }

    /// Throws away an update found, once it had begun moving files (`during` its moves, or
    /// after a cut), with `foreign` files written since it was committed: nothing more is
    /// moved, the folder is left as it is (written outside reprise: its seal is no point's),
    /// and what its moves replaced is kept apart. What was done.
    fn thrown_away(
        &self,
        c: &Commit,
        commit: &Path,
        foreign: &[String],
        during: bool,
    ) -> Result<String, StoreError> {
        // What its moves replaced (the previous point's files) kept apart from the deltas a
        // roll-back reads, as it was.
        let mut kept = String::new();
        if let Some(prev) = &c.prev {
            let delta = self.path(&format!("deltas/{prev}"));
            if delta.exists() {
                let cut = self.path(&format!("deltas/{prev}.cut-{}", c.point.id));
                std::fs::rename(&delta, &cut).map_err(io_err(&cut))?;
                kept = format!("; what its moves replaced is kept in {}", cut.display());
            }
        }
        let _ = std::fs::remove_dir_all(self.path("staging"));
        meta::sync_dir(&self.dir)?;
        std::fs::remove_file(commit).map_err(io_err(commit))?;
        let _ = std::fs::remove_file(self.path(ROLLING));
        meta::sync_dir(&self.dir)?;
        let found = match during {
            false => format!(
                "was cut while it moved files in the copy, and {} of its files (the first, {}) are neither as that update nor as the point before it left them: written, added or removed since the cut (a program run on the copy by hand)",
                foreign.len(),
                beneath::shown(&foreign[0])
            ),
            true => format!(
                "found, as it moved files in the folder, {} written since it was committed (a program writing the folder meanwhile: a backup job still enabled, a vm run on it)",
                beneath::shown(&foreign[0])
            ),
        };
        Ok(format!(
            "an update into it (point {}) {found}. Nothing more was moved: the update was thrown away and the folder left as it is, a mix of the point before, of that update and of what was written there (it counts as written outside reprise){kept}",
            c.point.id,
        ))
    }

    /// Why the folder, once an update moved its files, is not the tree `c` records, if it is
    /// not: a file of the tree missing under its very name or of another size, a file the
    /// tree does not hold, or one the update did not move written since `committed`.
    fn unlike_tree(&self, c: &Commit, committed: i128) -> Option<String> {
        let files = match walk(&self.root) {
            Ok(f) => f,
            Err(e) => {
                return Some(format!(
                    "the copy's folder cannot be read whole after the update ({e})"
                ));
            }
        };
        let moved = c.moved();
        let mut odd: Vec<String> = Vec::new();
        for (rel, m) in &files {
            match c.tree.files.get(rel) {
                None => odd.push(format!(
                    "{} is in the folder, not in the point",
                    beneath::shown(rel)
                )),
                Some(e) if e.size != m.len() => odd.push(format!(
                    "{} is of {} bytes in the folder, {} in the point",
                    beneath::shown(rel),
                    m.len(),
                    e.size
                )),
                Some(_) if !moved.contains(rel) && ctime_ns(m) > committed => odd.push(format!(
                    "{} was written during the update",
                    beneath::shown(rel)
                )),
                Some(_) => {}
            }
        }
        let listed: std::collections::HashSet<&str> =
            files.iter().map(|(rel, _)| rel.as_str()).collect();
        odd.extend(
            c.tree
                .files
                .keys()
                .filter(|rel| !listed.contains(rel.as_str()))
                .map(|rel| {
                    format!(
                        "{} is not in the folder under that name (a file system that folds case or normalizes names makes two names one)",
                        beneath::shown(rel)
                    )
                }),
        );
        let first = odd.first()?;
        Some(format!(
            "the copy's folder is not this point after the update moved its files ({} difference(s); the first: {first}): the next replication sends what differs",
            odd.len()
        ))
    }

    /// Throws away a committed update that never moved a file in the folder.
    fn discard_update(&self) -> Result<(), StoreError> {
        let _ = std::fs::remove_dir_all(self.path("staging"));
        let _ = std::fs::remove_file(self.path(ROLLING));
        let commit = self.path("commit.json");
        if commit.exists() {
            std::fs::remove_file(&commit).map_err(io_err(&commit))?;
        }
        Ok(())
    }

    /// Settles an interrupted update and repairs a damaged points file; what was done.
    pub fn settle(&self) -> Result<Option<String>, StoreError> {
        if !self.dir.is_dir() {
            return Ok(None);
        }
        let _lock = self.lock()?;
        let mut notes: Vec<String> = self.recover()?.into_iter().collect();
        if let Ok((_, repaired)) = self.checked_points() {
            notes.extend(repaired);
        }
        Ok((!notes.is_empty()).then(|| notes.join("; ")))
    }

    /// The tree the source compares against, after settling an interrupted update. A copy
    /// without points is read whole (so the first point sends only what differs, and files
    /// the source does not have are deleted); a damaged `tree.json` is read again too.
    /// `overwrite`: as [`NewPoint::overwrite_changed`].
    pub fn base(&self, reread: bool, overwrite: bool) -> Result<Tree, StoreError> {
        let _lock = self.lock()?;
        self.refuse_in_use()?;
        self.refuse_moves_apart(std::iter::empty())?;
        // An update cut before it was recorded is settled first: it was made from the folder
        // as the failback left it (its base was checked), and completing it forgets that.
        let mut notes: Vec<String> = self.recover_for_update()?.into_iter().collect();
        if let Err(e) = self.refuse_written_since_returned() {
            // What was settled is said by the next update that gets this far.
            if !notes.is_empty() {
                meta::write_file(&self.dir, "notes", notes.join("; ").as_bytes(), false)?;
            }
            return Err(e);
        }
        let (points, settled) = self.history_for_update(overwrite)?;
        notes.extend(settled);
        if !notes.is_empty() {
            // Said again by the update that follows, which reports to the operator.
            meta::write_file(&self.dir, "notes", notes.join("; ").as_bytes(), false)?;
        }
        let saved = if points.is_empty() || reread {
            None
        } else {
            self.read_json::<Tree>("tree.json").ok()
        };
        // Sealed before it is read: a file written while the folder is scanned would
        // otherwise be in the seal the update checks, and not in the tree the source compares
        // against (kept, or replaced, unseen).
        let sealed = tree_seal(&self.root);
        let t = match saved.filter(|_| self.path("tree.json").exists()) {
            Some(t) => t,
            None => {
                let t = scan(&self.root).map_err(io_err(&self.root))?;
                self.write_json("tree.json", &t)?;
                t
            }
        };
        if tree_seal(&self.root) != sealed {
            let _ = std::fs::remove_file(self.path("tree.json"));
            return Err(StoreError::Stream {
                image: self.name(),
                reason: "the copy's folder was written while it was read (something writes there: a job of this host, a vm): nothing was written; run again once it is done".into(),
            });
        }
        // What the copy was when the source was given its tree: the update that follows is
        // refused if the copy changed since (the tree would no longer describe it).
        let stamp = sealed.unwrap_or_default();
        meta::write_file(&self.dir, BASE_STAMP, stamp.as_bytes(), false)?;
        Ok(t)
    }

    /// Receives a stream from a source whose clock is this machine's, and makes it a new
    /// point (see [`TreeStore::apply_from`]).
    pub fn apply(
        &self,
        input: &mut impl io::BufRead,
        new: NewPoint,
    ) -> Result<(Point, u64, Option<String>), StoreError> {
        self.apply_from(input, new, chrono::Duration::zero())
    }

    /// Receives a stream and makes it a new point, its newest file time brought from the
    /// source's clock, at least `source_ahead` ahead of the orchestrator's, to the
    /// orchestrator's. Returns the point and the number of files received.
    pub fn apply_from(
        &self,
        input: &mut impl io::BufRead,
        new: NewPoint,
        source_ahead: chrono::Duration,
    ) -> Result<(Point, u64, Option<String>), StoreError> {
        let _lock = self.lock()?;
        self.refuse_in_use()?;
        self.refuse_moves_apart(std::iter::empty())?;
        let mut notes: Vec<String> = meta::read_file(&self.path("notes"))
            .ok()
            .flatten()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .into_iter()
            .collect();
        let _ = std::fs::remove_file(self.path("notes"));
        notes.extend(self.recover_for_update()?);
        let note = (!notes.is_empty()).then(|| notes.join("; "));
        self.receive(input, new, source_ahead)
            .map(|(p, n)| {
                // Written over as the failback read it (its base said so): nothing to keep.
                let _ = self.forget_returned();
                (p, n, note)
            })
            .inspect_err(|_| {
                // What a failed update staged is thrown away now (a committed one completed), so
                // that it does not hold the recovery host's space until the next run.
                let _ = self.recover();
            })
    }

    /// [`TreeStore::apply_from`] once the lock is held and an earlier update settled.
    fn receive(
        &self,
        input: &mut impl io::BufRead,
        new: NewPoint,
        source_ahead: chrono::Duration,
    ) -> Result<(Point, u64), StoreError> {
        let began = std::time::Instant::now();
        // The copy must still be what `base` gave the source to compare against: a file
        // written into it since would be kept, and counted as the source's.
        let based = meta::read_file(&self.path(BASE_STAMP)).ok().flatten();
        let now = tree_seal(&self.root).unwrap_or_default();
        if based.as_deref() != Some(now.as_bytes()) {
            return Err(StoreError::Stream {
                image: self.name(),
                reason: "the copy changed since the source compared against it; run the replication again".into(),
            });
        }
        let (points, _) = self.history_for_update(new.overwrite_changed)?;
        if let Some(reason) = meta::other_source(&points, &new.source)
            .or_else(|| meta::new_point_problem(&points, &new.id, new.taken_at))
        {
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        // The tree the source compared against: `base` wrote it.
        let mut tree: Tree = self.read_json("tree.json")?;
        let staging_path = self.path("staging");
        let _ = std::fs::remove_dir_all(&staging_path);
        let staging = Dir::open(&staging_path, true).map_err(io_err(&staging_path))?;
        let r = self.receive_records(input, &mut tree, &staging, &staging_path)?;
        // Another copy of reprise's kept in this folder (a vm's recovery copy and its
        // metadata folder, another set's copy: the recovery host of vms the same machine as
        // this one under another name, or one storage shared) is never deleted or replaced to
        // make this copy equal to its source: its points would go with it.
        if let Some(reason) = another_copy_in(&self.root, &r.changes) {
            let _ = std::fs::remove_dir_all(&staging_path);
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        if tree.digest() != r.digest {
            let _ = std::fs::remove_dir_all(&staging_path);
            return Err(StoreError::Mismatch {
                image: self.name(),
                expected: r.digest,
                got: tree.digest(),
            });
        }
        self.refuse_non_files(&r.changes)?;
        if let Err(e) = self.refuse_moves_apart(
            r.changes
                .put
                .iter()
                .chain(&r.changes.replaced)
                .chain(&r.changes.deleted),
        ) {
            let _ = std::fs::remove_dir_all(&staging_path);
            return Err(e);
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
            left_out: r.left_out.clone(),
            blake3: r.digest,
            verified: Verified::Yes,
            checked_at: Some(Utc::now()),
            received_bytes: r.received,
            duration_ms: began.elapsed().as_millis() as u64,
            stamp: None,
            definition: None,
            read: None,
            unusable: None,
            pending: false,
            // Its files were read one after the other: what it holds was written until the
            // newest of them, by when each was written or came (its status change: a file
            // copied in with an older modification time kept counts when it came), by the
            // source's clock brought to the orchestrator's: the latest it may be (a time
            // that cannot be brought over is after every other).
            newest_file: tree
                .files
                .values()
                .map(|f| f.mtime_ns.max(f.ctime_ns))
                .max()
                .map(|ns| {
                    i64::try_from(ns.div_euclid(1_000_000_000))
                        .ok()
                        .and_then(|secs| {
                            chrono::DateTime::from_timestamp(
                                secs,
                                ns.rem_euclid(1_000_000_000) as u32,
                            )
                        })
                        .and_then(|t| t.checked_sub_signed(source_ahead))
                        .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC)
                }),
        };
        let commit = Commit {
            point: point.clone(),
            prev: points.last().map(|p| p.id.clone()),
            put: r.changes.put,
            replaced: r.changes.replaced,
            deleted: r.changes.deleted,
            touched: r.changes.touched,
            tree,
            retention: new.retention.max(1),
            before: Some(now),
        };
        // The staged files' names are durable before the record that commits them (each
        // file's data was synced as it came): a power cut never leaves a commit whose files
        // are gone.
        sync_dirs(&staging_path, commit.put.iter())?;
        // The commit record: from here on the update is completed, now or by the next run.
        let files = commit.put.len() as u64;
        self.write_json("commit.json", &commit)?;
        if let Some(why) = self.written_after_commit(&commit) {
            self.discard_update()?;
            return Err(StoreError::Refused {
                image: self.name(),
                reason: meta::written_outside(&why),
            });
        }
        let mount = r.mount;
        let unusable = self.roll_forward(commit)?;
        if let Some(depth) = mount {
            let said = serde_json::to_vec(&depth).expect("serializes");
            meta::write_file(&self.dir, MOUNT, &said, false)?;
        }
        if let Some(why) = unusable {
            return Err(super::point::recorded_unusable(
                self.name(),
                &point.id,
                &why,
            ));
        }
        Ok((point, files))
    }

    /// Reads the records of an update up to its end: each file into `staging`, and every
    /// change into `tree`, which then is the tree the copy will hold.
    fn receive_records(
        &self,
        input: &mut impl io::BufRead,
        tree: &mut Tree,
        staging: &Dir,
        staging_path: &Path,
    ) -> Result<Received, StoreError> {
        let stream_err = |reason: String| StoreError::Stream {
            image: self.name(),
            reason,
        };
        let mut changes = Changes::default();
        let mut seen = std::collections::HashSet::new();
        let mut received = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        let origin = hello(input).map_err(stream_err)?;
        if let Some(reason) = folder_overlap(&self.root, origin.as_ref()) {
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        // The source folder on another file system than at the newest update: a share or a
        // disk not mounted shows what lies under its mount point, which would be copied as
        // the set, and every file only on the share deleted from the copy.
        let mount = origin.as_ref().map(FolderOrigin::mount_depth);
        let recorded = meta::read_file(&self.path(MOUNT))
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<Option<usize>>(&b).ok());
        if let (Some(now), Some(was)) = (mount, recorded)
            && now != was
        {
            return Err(StoreError::Refused {
                image: self.name(),
                reason: format!(
                    "the source folder is not on the file system it was on when the copy's newest point was made ({}; then {}): a share or a disk not mounted shows what lies under its mount point, which would be replicated as the set and every file only on the share deleted from the copy; nothing was written. Mount it and replicate again; if the folder moved to another file system for good, `reprise release SET` takes it as it now is",
                    mount_said(now),
                    mount_said(was)
                ),
            });
        }
        let (digest, left_out) = loop {
            let rec = get(input).map_err(stream_err)?;
            let path = match &rec {
                Rec::File { path, .. } | Rec::Touch { path, .. } | Rec::Delete { path } => {
                    beneath::check(path).map_err(stream_err)?;
                    if !seen.insert(path.clone()) {
                        return Err(stream_err(format!(
                            "`{}` comes twice in the stream",
                            beneath::shown(path)
                        )));
                    }
                    path.clone()
                }
                Rec::Hello { .. } => {
                    return Err(stream_err("a second protocol header in the stream".into()));
                }
                Rec::End { digest, left_out } => {
                    if !is_hash(digest) || left_out.len() > LEFT_OUT_SAID + 1 {
                        return Err(stream_err("the end of the stream is malformed".into()));
                    }
                    // Said on terminals and in reports: the source's text, shown as text.
                    let said = left_out
                        .iter()
                        .map(|l| as_text(&l.chars().take(4 * LEFT_OUT_NAME).collect::<String>()))
                        .collect();
                    break (digest.clone(), said);
                }
            };
            match rec {
                Rec::File { entry, .. } => {
                    check_entry(&path, &entry).map_err(stream_err)?;
                    let known = tree.files.contains_key(&path);
                    if !known && tree.files.len() >= self.max_files {
                        return Err(stream_err(format!(
                            "the stream brings more than the {} files a backup set may hold: refused",
                            self.max_files
                        )));
                    }
                    let staged = Staged {
                        dir: staging,
                        dir_path: staging_path,
                        buf: &mut buf,
                    };
                    self.stage_file(input, staged, &path, &entry)?;
                    received += entry.size;
                    if known {
                        changes.replaced.push(path.clone());
                    }
                    changes.put.push(path.clone());
                    tree.files.insert(path, entry);
                }
                Rec::Touch { entry, .. } => {
                    check_entry(&path, &entry).map_err(stream_err)?;
                    let Some(known) = tree.files.get_mut(&path) else {
                        return Err(stream_err(format!(
                            "the stream touches `{}`, which the copy does not hold",
                            beneath::shown(&path)
                        )));
                    };
                    if known.size != entry.size || known.blake3 != entry.blake3 {
                        return Err(stream_err(format!(
                            "the stream touches `{}` with other content than the copy's (a touch changes only the time)",
                            beneath::shown(&path)
                        )));
                    }
                    *known = entry;
                    changes.touched.push(path);
                }
                Rec::Delete { .. } => {
                    if tree.files.remove(&path).is_none() {
                        return Err(stream_err(format!(
                            "the stream deletes `{}`, which the copy does not hold",
                            beneath::shown(&path)
                        )));
                    }
                    changes.deleted.push(path);
                }
                Rec::Hello { .. } | Rec::End { .. } => unreachable!("handled above"),
            }
        };
        Ok(Received {
            digest,
            changes,
            received,
            left_out,
            mount,
        })
    }

    /// Writes the `entry.size` bytes of file `path` that follow in the stream into the
    /// staging folder, checks them against `entry`'s hash, syncs them and sets their time.
    fn stage_file(
        &self,
        input: &mut impl io::BufRead,
        staged: Staged,
        path: &str,
        entry: &FileEntry,
    ) -> Result<(), StoreError> {
        let stream_err = |reason: String| StoreError::Stream {
            image: self.name(),
            reason,
        };
        let buf = staged.buf;
        let dst = staged.dir_path.join(path);
        let mut f = staged.dir.create_file(path).map_err(io_err(&dst))?;
        let mut h = blake3::Hasher::new();
        let mut left = entry.size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            input.read_exact(&mut buf[..n]).map_err(|e| {
                stream_err(if e.kind() == io::ErrorKind::UnexpectedEof {
                    ENDED_EARLY.into()
                } else {
                    e.to_string()
                })
            })?;
            h.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(io_err(&dst))?;
            left -= n as u64;
        }
        if h.finalize().to_hex().as_str() != entry.blake3 {
            return Err(stream_err(format!(
                "`{}` arrived damaged",
                beneath::shown(path)
            )));
        }
        // Its time set before it is made durable, with its bytes: after a power cut, a file
        // moved in place is known by it (`in_place`).
        staged
            .dir
            .set_mtime(path, entry.mtime_ns)
            .map_err(io_err(&dst))?;
        f.sync_all().map_err(io_err(&dst))?;
        drop(f);
        Ok(())
    }

    /// Refuses an update where the copy holds a link, or anything but a file, at a path the
    /// update writes: now rather than after the commit, which could not be completed.
    fn refuse_non_files(&self, changes: &Changes) -> Result<(), StoreError> {
        if !self.root.exists() {
            return Ok(());
        }
        let root = Dir::open(&self.root, false).map_err(io_err(&self.root))?;
        let paths = changes
            .put
            .iter()
            .chain(&changes.deleted)
            .chain(&changes.touched);
        for p in paths {
            let at = format!("{}/{}", self.root.display(), beneath::shown(p));
            let kind = root.kind(p).map_err(|e| StoreError::Io {
                path: at.clone(),
                reason: e.to_string(),
            })?;
            match kind {
                None | Some(Kind::File) => {}
                Some(kind) => {
                    return Err(StoreError::Io {
                        path: at,
                        reason: format!(
                            "it is a {} in the copy, where the source has a file; nothing was changed (remove it)",
                            match kind {
                                Kind::Link => "symbolic link",
                                Kind::Dir => "folder",
                                _ => "special file",
                            }
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Moves the staged files in place, keeping what they replace for the previous point.
    /// Each move is done once: a file already moved is not there any more. Every path goes
    /// through [`Dir`]: checked again, and no link followed.
    /// Completes a committed update; why its point is not what the copy holds, if so (a
    /// staged file lost before it was moved in place: the point is recorded bad with that
    /// reason, and the copy's tree does not list the file, so the next replication sends it).
    fn roll_forward(&self, mut c: Commit) -> Result<Option<String>, StoreError> {
        // Read first: a points file that cannot be read is never taken for "no points" (the
        // history would start again from this point, the older ones lost unsaid); nothing is
        // moved, and the next replication ends the history, saying why.
        let mut points = self.points()?;
        // From here on the copy's seal moves by the update's own moves
        // ([`Self::written_after_commit`]).
        let rolling = self.path(ROLLING);
        meta::write_file(&self.dir, ROLLING, c.point.id.as_bytes(), false)?;
        let staging_path = self.path("staging");
        let root = Dir::open(&self.root, true).map_err(io_err(&self.root))?;
        let staging = Dir::open(&staging_path, true).map_err(io_err(&staging_path))?;
        // Each file moved away or over is first found as the update found it, not written
        // since its commit (its status change time, which no one sets back, and, where the
        // folder's tree records it, its size and time): a program writing the folder during
        // the moves (a backup job on a failback's primary) never loses what it wrote unsaid.
        let commit_path = self.path("commit.json");
        let committed = committed_at(&commit_path)?;
        let old: Tree = self.read_json("tree.json").unwrap_or_default();
        let as_found = |rel: &str| {
            root.open_file(rel)
                .and_then(|f| f.metadata())
                .is_ok_and(|m| {
                    ctime_ns(&m) <= committed
                        && old
                            .files
                            .get(rel)
                            .is_none_or(|e| e.size == m.len() && e.mtime_ns == mtime_ns(&m))
                })
        };
        let refuse = |rel: &String| -> StoreError {
            match self.thrown_away(&c, &commit_path, std::slice::from_ref(rel), true) {
                Ok(reason) => StoreError::Refused {
                    image: self.name(),
                    reason,
                },
                Err(e) => e,
            }
        };
        let delta = c.prev.as_ref().map(|p| self.path(&format!("deltas/{p}")));
        let mut keep = None;
        let replaced: std::collections::HashSet<&String> = c.replaced.iter().collect();
        let deleted: std::collections::HashSet<&String> = c.deleted.iter().collect();
        if let Some(d) = &delta {
            let undo = Undo {
                restore: c.replaced.iter().chain(&c.deleted).cloned().collect(),
                remove: c
                    .put
                    .iter()
                    .filter(|p| !replaced.contains(p))
                    .cloned()
                    .collect(),
            };
            std::fs::create_dir_all(d).map_err(io_err(d))?;
            meta::write_file(
                d,
                "undo.json",
                &serde_json::to_vec(&undo).expect("serializes"),
                false,
            )?;
            let files = d.join("files");
            keep = Some(Dir::open(&files, true).map_err(io_err(&files))?);
        }
        for p in c.replaced.iter().chain(&c.deleted) {
            let cur = self.root.join(p);
            let present = root.kind(p).map_err(io_err(&cur))?.is_some();
            if let Some(keep) = &keep {
                let kept = keep.path().join(p);
                if present && keep.kind(p).map_err(io_err(&kept))?.is_none() {
                    if !as_found(p) {
                        return Err(refuse(p));
                    }
                    root.rename(p, keep, p).map_err(io_err(&cur))?;
                }
            } else if present && deleted.contains(p) {
                if !as_found(p) {
                    return Err(refuse(p));
                }
                root.remove_file(p).map_err(io_err(&cur))?;
            }
        }
        let mut lost = Vec::new();
        for p in &c.put {
            let staged = staging_path.join(p);
            if staging.kind(p).map_err(io_err(&staged))? == Some(Kind::File) {
                // Over nothing (a new file, or one whose old version was kept), or, with no
                // delta to keep it in, over the old version as the update found it.
                let there = root.kind(p).map_err(io_err(&self.root.join(p)))?.is_some();
                let over_old = keep.is_none() && replaced.contains(p);
                if there && !(over_old && as_found(p)) {
                    return Err(refuse(p));
                }
                staging.rename(p, &root, p).map_err(io_err(&staged))?;
            } else if !in_place(&root, p, c.tree.files.get(p)) {
                // Neither staged nor moved in place by an earlier try (a file there of
                // another size or time is the one it was to replace): lost.
                lost.push(p.clone());
            }
        }
        for p in &lost {
            c.tree.files.remove(p);
        }
        let unusable = lost.first().map(|first| {
            format!(
                "{} file(s) of the update that made it were lost on the recovery host's disk before they were moved into the copy (the first: {}): the copy is not this point; the next replication sends them again",
                lost.len(),
                beneath::shown(first)
            )
        });
        // The moves are durable before the points say the copy is the new point.
        let moved = c.put.iter().chain(&c.replaced).chain(&c.deleted);
        sync_dirs(&self.root, moved)?;
        if let Some(d) = &delta {
            let files = d.join("files");
            if files.is_dir() {
                sync_dirs(&files, c.replaced.iter().chain(&c.deleted))?;
            }
        }
        for p in &c.touched {
            if let Some(f) = c.tree.files.get(p) {
                // Only a time: a file gone from the copy meanwhile is found by the next check.
                let _ = root.set_mtime(p, f.mtime_ns);
            }
        }
        // The folder as it now is must be the tree the point records: each of its files
        // there under its very name (a file system that folds case or normalizes names makes
        // two names one), of its size, and those the update did not move not written since
        // it was committed; else the point is not the folder, and says why.
        let unlike = self.unlike_tree(&c, committed);
        let unusable = match (unusable, unlike) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        self.write_json("tree.json", &c.tree)?;
        if !points.iter().any(|p| p.id == c.point.id) {
            points.push(c.point.clone());
        }
        // The new newest records what the copy now is.
        if let Some(p) = points.last_mut().filter(|p| p.id == c.point.id) {
            p.stamp = tree_seal(&self.root);
            if let Some(why) = &unusable {
                p.mark_unusable(why);
            }
        }
        let dropped = super::point::prune(&mut points, c.retention as usize);
        // Both generations: a points file damaged later is recovered whole.
        self.write_json("points.json", &points)?;
        for id in dropped {
            let _ = std::fs::remove_dir_all(self.path(&format!("deltas/{id}")));
        }
        let _ = std::fs::remove_dir_all(&staging_path);
        // The update was made from the folder as a failback copied it back (its base was
        // checked against that record): written over now, it is forgotten with the update,
        // never left to refuse the next replication as a write of the recovery site.
        if self.path(RETURNED).exists() {
            self.forget_returned()?;
            meta::sync_dir(&self.dir)?;
        }
        let commit = self.path("commit.json");
        std::fs::remove_file(&commit).map_err(io_err(&commit))?;
        let _ = std::fs::remove_file(&rolling);
        Ok(unusable)
    }

    /// Writes point `id` into the folder `out` and checks its digest. Never into the copy,
    /// which the point is rebuilt from, nor into a folder that holds it or lies in it.
    pub fn restore(&self, id: &str, out: &Path) -> Result<(), StoreError> {
        // What is there would be written over or removed before the point is checked.
        let holds = std::fs::symlink_metadata(out).is_ok_and(|m| {
            !m.is_dir() || std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some())
        });
        let refused = writes_into(out, &[&self.root, &self.dir]).or_else(|| {
            holds.then(|| format!("{} is there already: a point is restored into a new or empty folder only, never over what a folder holds", out.display()))
        });
        if let Some(reason) = refused {
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        // Made beside `out` (`OUT.reprise-partial`), made durable, checked, then renamed to
        // `out`: a restore cut, or found wrong, leaves nothing at `out` that could be taken
        // for the point, and one said done survives a power cut.
        let mut partial = out.as_os_str().to_owned();
        partial.push(".reprise-partial");
        let partial = PathBuf::from(partial);
        if let Some(reason) = writes_into(&partial, &[&self.root, &self.dir]) {
            return Err(StoreError::Refused {
                image: self.name(),
                reason,
            });
        }
        let _lock = self.lock()?;
        self.recover()?;
        // One left by a restore cut before: never the point.
        if std::fs::symlink_metadata(&partial).is_ok() {
            std::fs::remove_dir_all(&partial).map_err(io_err(&partial))?;
        }
        let restored = self
            .restore_locked(id, &partial)
            .and_then(|()| sync_tree(&partial))
            .and_then(|()| std::fs::rename(&partial, out).map_err(io_err(out)))
            .and_then(|()| {
                let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
                meta::sync_dir(parent.unwrap_or(Path::new(".")))
            });
        if restored.is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        restored
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
        let outd = Dir::open(out, true).map_err(io_err(out))?;
        copy_tree(&self.root, &outd)?;
        for j in (k..points.len() - 1).rev() {
            let d = self.path(&format!("deltas/{}", points[j].id));
            let undo_path = d.join("undo.json");
            let undo: Undo = meta::read_file_up_to(&undo_path, MAX_TREE_BYTES)
                .and_then(|b| b.ok_or_else(|| "missing".to_string()))
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                .map_err(|reason| StoreError::Damaged {
                    path: undo_path.display().to_string(),
                    reason,
                })?;
            for p in &undo.remove {
                match outd.remove_file(p) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err(&out.join(p))(e));
                    }
                    _ => {}
                }
            }
            if !undo.restore.is_empty() {
                let files = d.join("files");
                let kept = Dir::open(&files, false).map_err(damage_err(&files))?;
                for p in &undo.restore {
                    let mut r = kept.open_file(p).map_err(damage_err(&files.join(p)))?;
                    let dst = out.join(p);
                    let mut w = outd.create_file(p).map_err(io_err(&dst))?;
                    io::copy(&mut r, &mut w).map_err(io_err(&dst))?;
                }
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

    /// Checks points again (the newest by reading the folder in place, an older one by
    /// restoring it aside); one that fails is marked bad.
    pub fn verify(&self, only: Option<&str>) -> Result<Vec<(String, bool)>, StoreError> {
        let _lock = self.lock()?;
        self.recover()?;
        let (mut points, _) = self.checked_points()?;
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
            let newest = points.last().map(|p| p.id.clone());
            let before = tree_seal(&self.root);
            let good = if let Some(p) = points.last().filter(|p| p.id == id) {
                // The newest point is the folder itself: read in place, nothing copied.
                digest_in_place(&self.root).map_err(io_err(&self.root))? == p.blake3
            } else {
                let tmp = self.path("verify");
                let _ = std::fs::remove_dir_all(&tmp);
                // A point whose delta is damaged cannot be rebuilt: it is bad.
                let good = match self.restore_locked(&id, &tmp) {
                    Ok(()) => true,
                    Err(StoreError::Mismatch { .. } | StoreError::Damaged { .. }) => false,
                    Err(e) => return Err(e),
                };
                let _ = std::fs::remove_dir_all(&tmp);
                good
            };
            let stamp = tree_seal(&self.root);
            // Files added, removed or written meanwhile: the stamp would vouch for a folder
            // that was not the one read.
            if stamp != before {
                return Err(StoreError::Refused {
                    image: self.name(),
                    reason: "it was written while it was read (a program writing into the copy): nothing was recorded of what was read; run this again once nothing writes it".into(),
                });
            }
            // Whole, but what its source said makes it unusable: still bad.
            let good = good && points.iter().all(|p| p.id != id || p.unusable.is_none());
            if let Some(p) = points.iter_mut().find(|p| p.id == id) {
                p.verified = if good { Verified::Yes } else { Verified::Bad };
                p.checked_at = Some(Utc::now());
                if good && newest.as_deref() == Some(id.as_str()) {
                    // Read again and found whole: the copy is this point.
                    p.stamp = stamp;
                }
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

/// Why the links in the copy folder `root` are not those its point `point` records
/// ([`Point::left_out`]), if they are not. A copy of the files makes no link; one made in the
/// copy by hand (as the replication's line says to) is never brought up to date by a later
/// replication, and a restore through it (`latest -> dump-2026-12-04`, while the point's
/// source said `latest -> dump-2026-12-20`) would read other data than the point: each link
/// there must be one the point records, to the same target.
fn links_unlike(root: &Path, point: &Point) -> Option<String> {
    let walked = match walk_all(root) {
        Ok(w) => w,
        Err(e) => return Some(format!("its links cannot be read ({e})")),
    };
    // A link that leads out of the copy never holds the point's data, whatever its text (a
    // source's link to a path of its own leads elsewhere on this host).
    let outside = walked.others.iter().map(|(rel, _)| rel).filter(|rel| {
        std::fs::symlink_metadata(root.join(rel)).is_ok_and(|m| m.file_type().is_symlink())
    });
    let mut unlike: Vec<String> = outside
        .map(|rel| {
            let to = std::fs::read_link(root.join(rel)).unwrap_or_default();
            format!(
                "{} -> {} (it leads out of the copy)",
                left_out_name(rel),
                left_out_name(&to.to_string_lossy())
            )
        })
        .collect();
    let recorded: std::collections::HashMap<&str, &str> = point
        .left_out
        .iter()
        .filter_map(|l| l.strip_prefix("the link ")?.split_once(" -> "))
        .collect();
    let source_root = point
        .source
        .split_once(':')
        .map_or(point.source.as_str(), |(_, p)| p);
    let copy_root = std::fs::canonicalize(root).ok();
    unlike.extend(walked.links.iter().filter_map(|rel| {
        let to = std::fs::read_link(root.join(rel)).unwrap_or_default();
        let (name, text) = (left_out_name(rel), left_out_name(&to.to_string_lossy()));
        let link = format!("{name} -> {text}");
        // A link of a name the point does not record at all.
        let Some(want) = recorded.get(name.as_str()) else {
            return Some(link);
        };
        // The source's text, when it leads where it led there: a relative one within the
        // set (a full path leads to the source's own folder on this host, not into the copy).
        if *want == text && !want.starts_with('/') && set_relative(rel, want, None).is_some() {
            return None;
        }
        // Written another way, to the same file of the set: as the source's resolves in
        // the source, so this one in the copy.
        let theirs = set_relative(rel, want, Some(source_root));
        let ours = std::fs::canonicalize(root.join(rel)).ok().and_then(|t| {
            let r = t.strip_prefix(copy_root.as_ref()?).ok()?;
            Some(r.to_string_lossy().into_owned())
        });
        (theirs.is_none() || theirs != ours).then_some(link)
    }));
    if unlike.is_empty() {
        return None;
    }
    unlike.sort();
    let n = unlike.len();
    unlike.truncate(10);
    let more = match n > unlike.len() {
        true => format!(" and {} more", n - unlike.len()),
        false => String::new(),
    };
    let recorded: Vec<&str> = point
        .left_out
        .iter()
        .filter_map(|l| l.strip_prefix("the link "))
        .take(10)
        .collect();
    let cut = match point.left_out.last().is_some_and(|l| l.ends_with(" more")) {
        true => " (it records only its first lines: one not among them cannot be told)",
        false => "",
    };
    // A full path of the source leads elsewhere here: said as the copy's link must read.
    let here: Vec<String> = recorded
        .iter()
        .filter_map(|l| l.split_once(" -> "))
        .filter(|(_, to)| to.starts_with('/'))
        .filter_map(|(name, to)| {
            let within = set_relative(name, to, Some(source_root))?;
            let up = "../".repeat(name.matches('/').count());
            Some(format!("{name} -> {up}{within}"))
        })
        .collect();
    let cut = match here.is_empty() {
        true => cut.to_string(),
        false => format!(
            "{cut}, which in the copy read {} (a full path of the source leads out of the copy here)",
            here.join(", ")
        ),
    };
    Some(format!(
        "it holds links that its point {} does not record as they are: {}{more}; the point records {}{cut}. A link made in the copy is never brought up to date by replication, and one that leads elsewhere than the point's source said would give a restore through it other data than the point: make each as the point records it (`ln -sfn TARGET NAME` in the copy), or remove it, then run the step again",
        point.id,
        unlike.join(", "),
        match recorded.is_empty() {
            true => "no link".to_string(),
            false => recorded.join(", "),
        }
    ))
}

/// Where the link `rel` of a set, whose target is `to`, leads within the set (a path from
/// its root), when it does: `to` relative to the link's folder, or a path under `root` (the
/// set's folder where the link was read). Lexical, no file looked at. Pure.
fn set_relative(rel: &str, to: &str, root: Option<&str>) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    let rest = if let Some(abs) = to.strip_prefix('/') {
        let root = root?.trim_end_matches('/').trim_start_matches('/');
        let under = abs.strip_prefix(root)?;
        under.strip_prefix('/')?
    } else {
        parts.extend(rel.split('/'));
        parts.pop();
        to
    };
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Why a folder whose points are `points` and whose stamp is `now` is no longer point
/// `expect` a run chose (as verified when `verified`), if it is not. Pure.
pub fn lease_refusal(
    points: &[Point],
    now: Option<String>,
    expect: &str,
    verified: bool,
) -> Option<String> {
    let newest = points.last();
    if newest.map(|p| p.id.as_str()) != Some(expect) {
        return Some(format!(
            "it is no longer point {expect} (its newest point is {}): it changed while the run chose it; start the run again",
            newest.map_or("none", |p| p.id.as_str())
        ));
    }
    if let Some(why) = changed_since(points, now) {
        return Some(why);
    }
    if verified && newest.is_some_and(|p| p.verified == Verified::Bad) {
        return Some(format!(
            "its point {expect} failed verification while the run chose it; start the run again"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup set's copy folder that is its source, holds it, lies in it, or would be made
    /// in it, on this machine, is named so; folders side by side are not.
    #[test]
    fn a_copy_folder_that_is_holds_or_lies_in_its_source_on_this_machine_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (exports, source, beside) = (
            d.path().join("exports"),
            d.path().join("exports/erp"),
            d.path().join("copies"),
        );
        for f in [&source, &beside, &source.join("inner")] {
            std::fs::create_dir_all(f).unwrap();
        }
        let from = FolderOrigin::of(&source).expect("a folder of this machine");
        let said = |copy: &Path| folder_overlap(copy, Some(&from)).unwrap_or_default();
        assert!(said(&source).contains("is the very folder the source read"));
        assert!(said(&exports).contains("holds the folder the source read"));
        assert!(said(&source.join("inner")).contains("lies inside the folder the source read"));
        assert!(
            said(&source.join("not-yet/made"))
                .contains("would be made inside the folder the source read")
        );
        // Through a link: the folder it leads to.
        std::os::unix::fs::symlink(&exports, d.path().join("link")).unwrap();
        assert!(said(&d.path().join("link")).contains("holds the folder the source read"));
        assert_eq!(folder_overlap(&beside, Some(&from)), None);
        assert_eq!(folder_overlap(&beside.join("new"), Some(&from)), None);
        // Another machine's folder (another boot id), or a source that could not say.
        let mut elsewhere = from.clone();
        elsewhere.boot = "00000000-0000-0000-0000-000000000000".into();
        assert_eq!(folder_overlap(&source, Some(&elsewhere)), None);
        assert_eq!(folder_overlap(&source, None), None);
        // It travels in the stream's first line, and a damaged one is refused.
        let mut w = Vec::new();
        put(
            &mut w,
            &Rec::Hello {
                protocol: PROTOCOL,
                origin: Some(from.clone()),
            },
        )
        .unwrap();
        assert_eq!(hello(&mut &w[..]).unwrap(), Some(from));
        let bad = format!("{{\"hello\":{{\"protocol\":{PROTOCOL},\"origin\":{{\"boot\":1}}}}}}\n");
        assert!(hello(&mut bad.as_bytes()).unwrap_err().contains("damaged"));
    }

    /// A file listed in the tick of now is read against a look once its times are a tick
    /// old, which must be of the file listed: one replaced meanwhile is not taken for it.
    #[test]
    fn a_file_listed_just_written_is_read_against_a_later_look_at_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dump.sql");
        // Its time just ahead of now, as a file written in the tick of now looks, however
        // slowly this test runs.
        let written = |path: &Path, text: &str| {
            std::fs::write(path, text).unwrap();
            let soon = std::time::SystemTime::now() + std::time::Duration::from_millis(800);
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(soon)
                .unwrap();
        };
        written(&path, "one");
        let listed = std::fs::symlink_metadata(&path).unwrap();
        assert!(super::super::blocks::written_just_now(&listed));
        let m = settled(listed.clone(), &path)
            .unwrap()
            .expect("the same file");
        assert!(!super::super::blocks::written_just_now(&m));
        assert!(super::super::blocks::same_file_state(&m, &listed));
        // Replaced by another file (renamed over it) just after it was listed.
        written(&path, "one");
        let listed = std::fs::symlink_metadata(&path).unwrap();
        let other = dir.path().join("dump.sql.new");
        std::fs::write(&other, "two").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert!(settled(listed, &path).unwrap().is_none());
    }

    /// A folder of the set swapped for a link to another folder after the listing, and put
    /// back before its file's read ends: the file under that name is read through no link,
    /// so the other folder's file of the same name and size never travels as the set's.
    #[test]
    fn a_folder_swapped_for_a_link_during_the_copy_never_lets_another_folder_s_file_in() {
        let dir = tempfile::tempdir().unwrap();
        let (src, outside) = (dir.path().join("src"), dir.path().join("outside"));
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // A first file large enough that the stream is handed on before the next is read.
        std::fs::write(src.join("a/first"), vec![1u8; 2 << 20]).unwrap();
        std::fs::write(src.join("d/x"), "set's own data").unwrap();
        std::fs::write(outside.join("x"), "SECRET, ELSEWH").unwrap();
        /// Swaps `d` for a link to `outside` once the first file's record is written, and
        /// puts it back once the other folder's bytes have gone by.
        struct Swapping {
            src: PathBuf,
            outside: PathBuf,
            swapped: bool,
            back: bool,
            sent: Vec<u8>,
        }
        impl Write for Swapping {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.sent.extend_from_slice(buf);
                let has = |what: &[u8], all: &[u8]| all.windows(what.len()).any(|w| w == what);
                if !self.swapped && has(b"a/first", &self.sent) {
                    std::fs::rename(self.src.join("d"), self.src.join("d.real"))?;
                    std::os::unix::fs::symlink(&self.outside, self.src.join("d"))?;
                    self.swapped = true;
                }
                if self.swapped && !self.back && has(b"SECRET", &self.sent) {
                    std::fs::remove_file(self.src.join("d"))?;
                    std::fs::rename(self.src.join("d.real"), self.src.join("d"))?;
                    self.back = true;
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = Swapping {
            src: src.clone(),
            outside,
            swapped: false,
            back: false,
            sent: Vec::new(),
        };
        let e = send_tree(&src, &Tree::default(), &mut w).unwrap_err();
        assert!(w.swapped, "the folder was swapped during the copy");
        assert!(
            !w.sent.windows(6).any(|x| x == b"SECRET"),
            "another folder's file was sent as the set's: {e}"
        );
        assert!(e.contains("d is a symbolic link"), "{e}");
    }

    fn replicate(src: &Path, dst: &Path, id: &str) -> TreeSent {
        replicate_at(src, dst, id, Utc::now()).unwrap()
    }

    fn replicate_at(
        src: &Path,
        dst: &Path,
        id: &str,
        taken_at: chrono::DateTime<Utc>,
    ) -> Result<TreeSent, StoreError> {
        let store = TreeStore::new(dst);
        let base = store.base(false, false)?;
        let mut stream = Vec::new();
        let sent = send_tree(src, &base, &mut stream).unwrap();
        store.apply(&mut &stream[..], new_point(id, taken_at))?;
        Ok(sent)
    }

    /// A set's folder found empty (its file system not mounted: the mount point is there)
    /// while its copy holds files is never made a point: the copy keeps its files and its
    /// points, and the error says why and what to do. Empty at its first copy, it is one.
    #[test]
    fn a_set_folder_found_empty_never_empties_its_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(src.join("erp")).unwrap();
        std::fs::write(src.join("erp/nightly.dump"), b"the dump").unwrap();
        std::fs::write(src.join("ad.ldif"), b"the directory").unwrap();
        replicate(&src, &dst, "p1");
        std::fs::remove_dir_all(&src).unwrap();
        std::fs::create_dir_all(&src).unwrap();
        let store = TreeStore::new(&dst);
        let base = store.base(false, false).unwrap();
        let mut stream = Vec::new();
        let err = send_tree(&src, &base, &mut stream).unwrap_err();
        assert!(
            err.contains("holds no file, and its copy holds 2 (21 bytes)")
                && err.contains("it makes no point and writes nothing")
                && err.contains("Mount it"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(dst.join("erp/nightly.dump")).unwrap(),
            b"the dump"
        );
        let points = store.points().unwrap();
        assert_eq!(points.len(), 1, "{points:?}");
        // A set that is empty from the start is copied as it is.
        let (empty, copy) = (dir.path().join("empty"), dir.path().join("copy"));
        std::fs::create_dir_all(&empty).unwrap();
        replicate(&empty, &copy, "p1");
        assert_eq!(TreeStore::new(&copy).points().unwrap().len(), 1);
    }

    /// A set's folder holding reprise's own files (a copy's metadata folder, an overlay) is
    /// refused at its first copy, naming them, rather than copied once and then refused at
    /// every later update as another copy's folder.
    #[test]
    fn a_set_folder_holding_reprise_copies_is_refused_at_its_first_copy() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("vms/db.qcow2.reprise")).unwrap();
        std::fs::write(src.join("vms/db.qcow2"), b"disk").unwrap();
        std::fs::write(src.join("vms/db.qcow2.reprise/points.json"), b"[]").unwrap();
        let mut stream = Vec::new();
        let err = send_tree(&src, &Tree::default(), &mut stream).unwrap_err();
        assert!(
            err.contains("holds reprise's own files (vms/db.qcow2.reprise/points.json")
                && err.contains("this replication makes no point"),
            "{err}"
        );
        std::fs::remove_dir_all(src.join("vms/db.qcow2.reprise")).unwrap();
        std::fs::write(src.join("vms/db.reprise-replicate"), b"overlay").unwrap();
        let err = send_tree(&src, &Tree::default(), &mut stream).unwrap_err();
        assert!(err.contains("vms/db.reprise-replicate"), "{err}");
    }

    /// A link made in a set's copy by hand, as the point records it, and left so after its
    /// source's link moved: the copy's state says so (`check`, `status` and a run's choice
    /// see it unverified, before a run's lease would refuse it).
    #[test]
    fn a_hand_made_link_its_newest_point_no_longer_records_leaves_the_copy_unverified() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("dump-1"), b"the first dump").unwrap();
        std::os::unix::fs::symlink("dump-1", src.join("latest")).unwrap();
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        std::os::unix::fs::symlink("dump-1", dst.join("latest")).unwrap();
        let state = store.inspect();
        assert_eq!(state.links, None, "{state:?}");
        assert_eq!(crate::replica::choice::unverified(&state, None), None);

        std::fs::write(src.join("dump-2"), b"the second dump").unwrap();
        std::fs::remove_file(src.join("latest")).unwrap();
        std::os::unix::fs::symlink("dump-2", src.join("latest")).unwrap();
        replicate(&src, &dst, "p2");
        let state = store.inspect();
        let why = state.links.clone().expect("the link is not the point's");
        assert!(
            why.contains("its point p2 does not record as they are: latest -> dump-1")
                && why.contains("the point records latest -> dump-2"),
            "{why}"
        );
        let said = crate::replica::choice::unverified(&state, None).unwrap();
        assert!(said.contains("latest -> dump-1"), "{said}");
        // Made as the point records it: the copy is its point again.
        std::fs::remove_file(dst.join("latest")).unwrap();
        std::os::unix::fs::symlink("dump-2", dst.join("latest")).unwrap();
        assert_eq!(store.inspect().links, None);
    }

    /// A copy a failback copied back says so while it is still as that failback read it, and
    /// no longer once written since.
    #[test]
    fn a_copy_copied_back_says_so_while_it_is_as_it_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("nightly.dump"), b"the dump").unwrap();
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        assert!(!store.inspect().copied_back);
        let stamp = store.inspect().stamp.unwrap();
        store.release_returned(|_, _| true, &stamp).unwrap();
        assert!(store.inspect().copied_back);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dst.join("written-since.dump"), b"new").unwrap();
        let state = store.inspect();
        assert!(!state.copied_back && state.returned.is_some(), "{state:?}");
    }

    /// A file whose name is not UTF-8 (an old share's Latin-1) is named, with what to do: not
    /// said missing, and no point is made.
    #[test]
    fn a_name_that_is_not_utf8_is_said_as_such() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("compta")).unwrap();
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.sql");
        std::fs::write(src.join("compta").join(name), b"dump").unwrap();
        let mut stream = Vec::new();
        let err = send_tree(&src, &Tree::default(), &mut stream).unwrap_err();
        assert!(
            err.contains("compta/caf\u{fffd}.sql: a name that is not UTF-8 text")
                && err.contains("convmv")
                && !err.contains("No such file"),
            "{err}"
        );
    }

    /// A new point `id` of source `src` taken at `taken_at`, keeping 3.
    fn new_point(id: &str, taken_at: chrono::DateTime<Utc>) -> NewPoint {
        NewPoint {
            id: id.into(),
            taken_at,
            source: "src".into(),
            retention: 3,
            definition: None,
            read: None,
            pending: false,
            overwrite_changed: false,
        }
    }

    /// A backup set's point is never restored into its copy, into a folder inside it, or
    /// into the folder that holds it: it is rebuilt from the copy.
    #[test]
    fn a_backup_set_point_is_never_restored_into_its_own_copy() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), b"a1").unwrap();
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        for out in [dst.clone(), dst.join("inner"), dir.path().to_path_buf()] {
            let err = store.restore("p1", &out).unwrap_err().to_string();
            assert!(
                err.contains("which the point is read from"),
                "{}: {err}",
                out.display()
            );
        }
        assert_eq!(std::fs::read(dst.join("a.dump")).unwrap(), b"a1");
        assert!(!dst.join("inner").exists());
        // Nor into a folder that holds files (the primary's live folder): they would be
        // written over or removed before the point is checked.
        let live = dir.path().join("live");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::write(live.join("a.dump"), b"newer").unwrap();
        let err = store.restore("p1", &live).unwrap_err().to_string();
        assert!(err.contains("is there already"), "{err}");
        assert_eq!(std::fs::read(live.join("a.dump")).unwrap(), b"newer");
        let out = dir.path().join("restored");
        store.restore("p1", &out).unwrap();
        assert_eq!(std::fs::read(out.join("a.dump")).unwrap(), b"a1");
        assert!(!dir.path().join("restored.reprise-partial").exists());
        // Nor where it is first made, beside `out`, when that is the copy.
        let beside = dir.path().join("beside.reprise-partial");
        replicate(&src, &beside, "p1");
        let err = TreeStore::new(&beside)
            .restore("p1", &dir.path().join("beside"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("which the point is read from"), "{err}");
        assert_eq!(std::fs::read(beside.join("a.dump")).unwrap(), b"a1");
        // Found not to be the point (the copy rotted): nothing at `out`, nothing beside it.
        rewrite_keeping_its_time(&dst.join("a.dump"), "A1");
        let out = dir.path().join("rotten");
        let err = store.restore("p1", &out).unwrap_err();
        assert!(matches!(err, StoreError::Mismatch { .. }), "{err}");
        assert!(!out.exists());
        assert!(!dir.path().join("rotten.reprise-partial").exists());
    }

    /// A copy whose folder also keeps another copy of reprise's (a vm's recovery copy and
    /// its metadata folder) never deletes it to be equal to its source, first copy or not;
    /// what else its folder holds the source does not is deleted, as a copy must.
    #[test]
    fn a_copy_never_deletes_another_reprise_copy_kept_in_its_folder() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(dst.join("images/erp-db-system.qcow2.reprise")).unwrap();
        std::fs::write(src.join("a.dump"), b"a1").unwrap();
        std::fs::write(dst.join("images/erp-db-system.qcow2"), b"another copy").unwrap();
        std::fs::write(
            dst.join("images/erp-db-system.qcow2.reprise/points.json"),
            b"[]",
        )
        .unwrap();
        std::fs::write(dst.join("stray.txt"), b"not a copy").unwrap();
        // Taken as a copy made by hand, as the operator may: the other copy still stands.
        assert!(TreeStore::new(&dst).accept_changes().unwrap().is_some());
        let err = replicate_at(&src, &dst, "p1", Utc::now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("would delete or replace 2 files of another reprise copy")
                && err.contains("images/erp-db-system.qcow2")
                && err.contains("nothing was written"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(dst.join("images/erp-db-system.qcow2")).unwrap(),
            b"another copy"
        );
        assert!(dst.join("stray.txt").exists() && !dst.join("a.dump").exists());
        assert!(TreeStore::new(&dst).points().unwrap().is_empty());
        // Moved out and taken again as it now is, the copy is made: what else the folder
        // held goes.
        std::fs::remove_dir_all(dst.join("images")).unwrap();
        assert!(TreeStore::new(&dst).accept_changes().unwrap().is_some());
        replicate(&src, &dst, "p1");
        assert!(!dst.join("stray.txt").exists() && dst.join("a.dump").exists());
    }

    /// A folder at a set's copy path holding files reprise made no point of (another
    /// application's data on shared storage, a folder filled by hand) is never made equal to
    /// the source, which would delete them: refused untouched, at the base and at the update,
    /// until the operator takes it as a copy as it now is (`reprise release`); changed since,
    /// it is refused again. An empty folder, or none, holds nothing to lose.
    #[test]
    fn a_folder_reprise_made_no_point_of_is_never_made_equal_to_a_source_unless_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(dst.join("scans")).unwrap();
        std::fs::write(src.join("a.dump"), b"a1").unwrap();
        std::fs::write(dst.join("scans/xray-0001.dcm"), b"a patient's image").unwrap();
        let store = TreeStore::new(&dst);
        let foreign = store.inspect().foreign.expect("said by inspect");
        assert!(foreign.contains("a folder holding files is at the copy's path"));
        let base_err = store.base(false, false).unwrap_err().to_string();
        // A stream made against an empty folder, as a source would send for a new copy.
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let base = TreeStore::new(&empty).base(false, false).unwrap();
        let mut stream = Vec::new();
        send_tree(&src, &base, &mut stream).unwrap();
        std::fs::write(store.path(BASE_STAMP), tree_seal(&dst).unwrap()).unwrap();
        let apply_err = store
            .apply(&mut &stream[..], new_point("p1", Utc::now()))
            .unwrap_err()
            .to_string();
        for e in [&base_err, &apply_err] {
            assert!(
                e.contains("reprise did not make it and has no point of it")
                    && e.contains("nothing was written")
                    && e.contains("`reprise release NAME`"),
                "{e}"
            );
        }
        assert_eq!(
            std::fs::read(dst.join("scans/xray-0001.dcm")).unwrap(),
            b"a patient's image"
        );
        assert!(!dst.join("a.dump").exists() && store.points().unwrap().is_empty());
        // A failback's copy back writes over its primary's own folder, judged before.
        store.base(false, true).unwrap();
        // Taken as it is, then written: refused again, saying so.
        let said = store.accept_changes().unwrap().unwrap();
        assert!(said.contains("taken as a copy made by hand"), "{said}");
        assert_eq!(store.inspect().foreign, None);
        std::fs::write(dst.join("scans/xray-0002.dcm"), b"another").unwrap();
        let e = replicate_at(&src, &dst, "p1", Utc::now())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("taken as a copy made by hand") && e.contains("changed since"),
            "{e}"
        );
        assert!(dst.join("scans/xray-0002.dcm").exists());
        // Taken again as it now is: the copy is made, what the source lacks goes.
        store.accept_changes().unwrap();
        replicate(&src, &dst, "p1");
        assert!(!dst.join("scans/xray-0001.dcm").exists() && dst.join("a.dump").exists());
        assert_eq!(store.inspect().foreign, None);
        // An empty folder, and no folder, are new copies.
        for fresh in [dir.path().join("made-empty"), dir.path().join("none")] {
            if fresh.ends_with("made-empty") {
                std::fs::create_dir_all(&fresh).unwrap();
            }
            assert_eq!(TreeStore::new(&fresh).inspect().foreign, None);
            replicate(&src, &fresh, "p1");
            assert!(fresh.join("a.dump").exists());
        }
    }

    /// A copy's folder that is there but cannot be read whole (here folders nested past the
    /// longest path the system takes, as root reads everything else; the same for a part
    /// denied to the helper's user, or an I/O error), or that is no longer a folder, is not
    /// taken for a folder that is gone: its history is not ended, nothing is written, and what
    /// is in it is not deleted by the next replication.
    #[test]
    fn a_copy_folder_that_cannot_be_read_whole_is_never_taken_for_one_that_is_gone() {
        use rustix::fs::{Mode, OFlags, mkdirat, openat};
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), b"a1").unwrap();
        replicate(&src, &dst, "p1");
        std::fs::write(src.join("a.dump"), b"a2").unwrap();
        replicate(&src, &dst, "p2");
        let store = TreeStore::new(&dst);
        let name = "d".repeat(200);
        let mut fd = openat(rustix::fs::CWD, &dst, OFlags::DIRECTORY, Mode::empty()).unwrap();
        for _ in 0..30 {
            mkdirat(&fd, name.as_str(), Mode::RWXU).unwrap();
            fd = openat(&fd, name.as_str(), OFlags::DIRECTORY, Mode::empty()).unwrap();
        }
        let deep = dst.join(&name);
        let ids = || -> Vec<String> { store.points().unwrap().into_iter().map(|p| p.id).collect() };
        let e = replicate_at(&src, &dst, "p3", Utc::now())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot be read whole") && e.contains("nothing is written"),
            "{e}"
        );
        assert_eq!(ids(), ["p1", "p2"]);
        assert!(store.path("deltas/p1").exists() && deep.exists());
        std::fs::remove_dir_all(&deep).unwrap();
        // No longer a folder: not gone either.
        let moved = dir.path().join("dst.moved");
        std::fs::rename(&dst, &moved).unwrap();
        std::fs::write(&dst, b"a file where the folder was").unwrap();
        let e = store.base(false, false).unwrap_err().to_string();
        assert!(e.contains("it is not a folder"), "{e}");
        assert_eq!(ids(), ["p1", "p2"]);
        assert_eq!(std::fs::read(&dst).unwrap(), b"a file where the folder was");
        // Put back, it is its newest point again.
        std::fs::remove_file(&dst).unwrap();
        std::fs::rename(&moved, &dst).unwrap();
        replicate(&src, &dst, "p3");
        assert_eq!(ids(), ["p1", "p2", "p3"]);
    }

    /// A set's folder on another file system than its metadata folder beside it (a mount
    /// point; here a link to a folder of `/dev/shm`) is refused before anything is written:
    /// the update's files, staged beside, could not be moved in, and it would be left half
    /// done with files already removed.
    #[test]
    fn a_set_folder_on_another_file_system_than_its_metadata_is_refused_untouched() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir_in("/dev/shm").unwrap();
        assert_ne!(
            std::fs::metadata(dir.path()).unwrap().dev(),
            std::fs::metadata(elsewhere.path()).unwrap().dev(),
            "/dev/shm is on the temporary folder's file system here: no other to try"
        );
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), b"a1").unwrap();
        std::fs::write(elsewhere.path().join("old.dump"), b"there").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), &dst).unwrap();
        let store = TreeStore::new(&dst);
        for overwrite in [false, true] {
            let e = store.base(false, overwrite).unwrap_err().to_string();
            assert!(
                e.contains("on another mount") && e.contains("nothing was written"),
                "{e}"
            );
        }
        assert_eq!(
            std::fs::read(elsewhere.path().join("old.dump")).unwrap(),
            b"there"
        );
        assert!(!elsewhere.path().join("a.dump").exists());
    }

    /// A bind mount shares its file system's device number, so only a move tells that it is
    /// another mount: one over the whole copy, or over a folder inside it, is refused before
    /// anything is written, not found at the update's first move with files already removed.
    /// The bind mounts are made in a mount namespace of this test's own (`unshare -m`, as
    /// root), in which this test runs again: the machine's mounts are not touched.
    #[test]
    fn a_bind_mount_in_a_set_folder_is_refused_before_anything_is_written() {
        const INSIDE: &str = "REPRISE_TEST_BIND_MOUNT_DIR";
        let Ok(at) = std::env::var(INSIDE) else {
            let dir = tempfile::tempdir().unwrap();
            let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
            std::fs::create_dir_all(src.join("sub")).unwrap();
            std::fs::write(src.join("a.dump"), b"a1").unwrap();
            std::fs::write(src.join("sub/b.dump"), b"b1").unwrap();
            replicate(&src, &dst, "p1");
            let out = std::process::Command::new("unshare")
                .args(["-m", "--propagation", "private"])
                .arg(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "replica::tree::tests::a_bind_mount_in_a_set_folder_is_refused_before_anything_is_written",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(INSIDE, dir.path())
                .output()
                .expect("unshare (util-linux) runs this test in a mount namespace of its own");
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{said}");
            assert!(said.contains("1 passed"), "{said}");
            return;
        };
        let dir = Path::new(&at);
        let (src, dst) = (dir.join("src"), dir.join("dst"));
        let bind = |from: &Path, to: &Path| {
            let status = std::process::Command::new("mount")
                .arg("--bind")
                .arg(from)
                .arg(to)
                .status()
                .unwrap();
            assert!(status.success(), "mount --bind needs root");
        };
        let umount = |at: &Path| {
            assert!(
                std::process::Command::new("umount")
                    .arg(at)
                    .status()
                    .unwrap()
                    .success()
            );
        };
        let store = TreeStore::new(&dst);
        // A folder inside the copy bind-mounted over itself, and a file changed there.
        bind(&dst.join("sub"), &dst.join("sub"));
        std::fs::write(src.join("sub/b.dump"), b"b2-changed").unwrap();
        let e = replicate_at(&src, &dst, "p2", Utc::now())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`sub` is on another mount") && e.contains("nothing was written"),
            "{e}"
        );
        assert_eq!(std::fs::read(dst.join("sub/b.dump")).unwrap(), b"b1");
        assert!(!store.path("commit.json").exists());
        assert!(!store.path("staging").exists());
        assert_eq!(store.points().unwrap().len(), 1);
        // A change elsewhere in the copy still goes through.
        std::fs::write(src.join("sub/b.dump"), b"b1").unwrap();
        std::fs::write(src.join("a.dump"), b"a2").unwrap();
        replicate(&src, &dst, "p3");
        assert_eq!(std::fs::read(dst.join("a.dump")).unwrap(), b"a2");
        umount(&dst.join("sub"));
        // The whole copy bind-mounted over itself: refused at its base.
        bind(&dst, &dst);
        std::fs::write(src.join("a.dump"), b"a3").unwrap();
        for overwrite in [false, true] {
            let e = store.base(false, overwrite).unwrap_err().to_string();
            assert!(
                e.contains("the folder is on another mount") && e.contains("nothing was written"),
                "{e}"
            );
        }
        assert_eq!(std::fs::read(dst.join("a.dump")).unwrap(), b"a2");
        umount(&dst);
        replicate(&src, &dst, "p4");
        assert_eq!(std::fs::read(dst.join("a.dump")).unwrap(), b"a3");
        assert_eq!(store.points().unwrap().len(), 3);
    }

    /// A folder written while its base is scanned (a job of the host writing there as a
    /// failback copies back, a vm) is refused: the seal the update checks is the one taken
    /// before the scan, never one that already holds what the scan did not see.
    #[test]
    fn a_copy_folder_written_while_its_base_is_scanned_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        for i in 0..200 {
            std::fs::write(dst.join(format!("{i:03}.dump")), vec![i as u8; 64 << 10]).unwrap();
        }
        let store = TreeStore::new(&dst);
        let done = std::sync::atomic::AtomicBool::new(false);
        let written = std::sync::atomic::AtomicU64::new(0);
        let got = std::thread::scope(|scope| {
            scope.spawn(|| {
                // Whole new files (renamed in): each read whole if listed, so the scan
                // itself finds nothing written while read; those that come after it listed
                // the folder are what it did not see.
                let mut n = 0u64;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let tmp = dir.path().join("new.tmp");
                    std::fs::write(&tmp, n.to_string()).unwrap();
                    std::fs::rename(&tmp, dst.join(format!("new-{n}.log"))).unwrap();
                    written.store(n, std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
            });
            // A failback's copy back: the primary's folder, written over as judged. Asked
            // while the writer writes (a few times: a loaded machine may not let it write
            // during one scan; without the check, every one of them passes).
            let mut got = Ok(Tree::default());
            for _ in 0..5 {
                while written.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                    std::thread::yield_now();
                }
                got = store.base(false, true);
                if got.is_err() {
                    break;
                }
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            got
        });
        let e = got.unwrap_err().to_string();
        assert!(
            e.contains("the copy's folder was written while it was read"),
            "{e}"
        );
        assert!(!store.path("tree.json").exists());
        // Left alone, it is read.
        store.base(false, true).unwrap();
    }

    /// A backup set of hundreds of thousands of files has a tree file of hundreds of MiB:
    /// read back for the next update as any tree a source takes (here one grown past the
    /// 64 MiB of a points file by the spaces JSON allows), not refused as damaged.
    #[test]
    fn a_backup_set_s_tree_file_larger_than_a_points_file_is_read_for_the_next_update() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), b"a1").unwrap();
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        let mut tree = std::fs::read(store.path("tree.json")).unwrap();
        tree.extend(std::iter::repeat_n(b' ', 65 << 20));
        std::fs::write(store.path("tree.json"), &tree).unwrap();
        std::fs::write(src.join("a.dump"), b"a2, changed").unwrap();
        replicate(&src, &dst, "p2");
        assert_eq!(std::fs::read(dst.join("a.dump")).unwrap(), b"a2, changed");
        let p2 = store.points().unwrap().pop().unwrap();
        assert_eq!((p2.id.as_str(), p2.verified), ("p2", Verified::Yes));
    }

    /// A backup set's copy whose points are of another folder (the inventory gives it to
    /// another source) is refused untouched, saying both and what to do.
    #[test]
    fn a_backup_set_copy_of_another_source_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (src, other, dst) = (
            dir.path().join("src"),
            dir.path().join("other"),
            dir.path().join("dst"),
        );
        for (d, text) in [(&src, "ours"), (&other, "theirs")] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("dump.sql"), text).unwrap();
        }
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        // A replication of `other` into the copy.
        let from_other = || {
            let base = store.base(false, false).unwrap();
            let mut stream = Vec::new();
            send_tree(&other, &base, &mut stream).unwrap();
            let new = NewPoint {
                id: "p2".into(),
                taken_at: Utc::now(),
                source: "hv-files:/other".into(),
                retention: 3,
                definition: None,
                read: None,
                pending: false,
                overwrite_changed: false,
            };
            store.apply(&mut &stream[..], new)
        };
        let e = from_other().unwrap_err().to_string();
        assert!(
            e.contains("its points are of src (the newest, p1)")
                && e.contains("this replication reads hv-files:/other")
                && e.contains("nothing was written")
                && e.contains("move the copy's `.reprise` folder aside"),
            "{e}"
        );
        assert_eq!(std::fs::read(dst.join("dump.sql")).unwrap(), b"ours");
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p1"]);
        // As it says: its history moved aside and the folder taken as it is, the copy
        // follows the new source.
        std::fs::rename(
            dst.with_extension("reprise"),
            dir.path().join("dst.reprise.old"),
        )
        .unwrap();
        assert!(store.accept_changes().unwrap().is_some());
        from_other().unwrap();
        assert_eq!(std::fs::read(dst.join("dump.sql")).unwrap(), b"theirs");
    }

    /// A backup set's files are read one after the other from the point's time on: the point
    /// records the newest of their times, and is not taken as holding only what was written
    /// before a time its newest file is after.
    #[test]
    fn a_backup_set_point_holds_what_was_written_until_its_newest_file() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        // An hour ahead: the files' status change times (now) are older than what is set.
        let t0 = Utc::now() + chrono::Duration::hours(1);
        for (name, secs) in [("monday.sql", -3600), ("tuesday.sql", 5)] {
            let path = src.join(name);
            std::fs::write(&path, name).unwrap();
            let at = std::time::SystemTime::from(t0 + chrono::Duration::seconds(secs));
            std::fs::File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        }
        replicate_at(&src, &dst, "p1", t0).unwrap();
        let p = TreeStore::new(&dst).points().unwrap().pop().unwrap();
        assert_eq!(p.newest_file, Some(t0 + chrono::Duration::seconds(5)));
        assert!(
            !p.holds_only_before(t0),
            "tuesday.sql was written after {t0}"
        );
        assert!(p.holds_only_before(t0 + chrono::Duration::seconds(5)));
    }

    /// The point's newest file time is brought from the source's clock to the orchestrator's:
    /// a source 10 minutes ahead wrote its newest file 10 minutes before its own clock says.
    /// A time that cannot be brought over is after every time asked for.
    #[test]
    fn a_backup_set_point_is_timed_by_the_orchestrators_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        let dump = src.join("erp.dump");
        std::fs::write(&dump, "dump").unwrap();
        let meta = std::fs::metadata(&dump).unwrap();
        let by_source = chrono::DateTime::<Utc>::from(meta.modified().unwrap()).max(
            chrono::DateTime::from(std::time::UNIX_EPOCH) + {
                use std::os::unix::fs::MetadataExt as _;
                chrono::Duration::seconds(meta.ctime())
                    + chrono::Duration::nanoseconds(meta.ctime_nsec())
            },
        );
        let apply = |id: &str, ahead: chrono::Duration| {
            let store = TreeStore::new(&dst);
            let base = store.base(false, false).unwrap();
            let mut stream = Vec::new();
            send_tree(&src, &base, &mut stream).unwrap();
            let new = NewPoint {
                id: id.into(),
                taken_at: Utc::now() - chrono::Duration::hours(1),
                source: "src".into(),
                retention: 3,
                definition: None,
                read: None,
                pending: false,
                overwrite_changed: false,
            };
            store.apply_from(&mut &stream[..], new, ahead).unwrap().0
        };
        let ten = chrono::Duration::minutes(10);
        let p = apply("ahead", ten);
        assert_eq!(p.newest_file, Some(by_source - ten));
        let p = apply("behind", -ten);
        assert_eq!(p.newest_file, Some(by_source + ten));
        assert!(!p.holds_only_before(by_source + ten - chrono::Duration::seconds(1)));
        let p = apply("absurd", chrono::Duration::microseconds(i64::MIN));
        assert_eq!(p.newest_file, Some(chrono::DateTime::<Utc>::MAX_UTC));
        assert!(!p.holds_only_before(Utc::now() + chrono::Duration::days(365 * 100)));
    }

    /// Writes `text` into the file at `path` and puts its modification time back (as `touch
    /// -r` or `rsync -t` can), past the file system's clock tick of its last change.
    fn rewrite_keeping_its_time(path: &Path, text: &str) {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(path, text).unwrap();
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(mtime).unwrap();
    }

    /// A failback copied the folder back to its primary: a replication writes over it only
    /// while it is what the copy back read. A file the recovery site wrote after stops it,
    /// naming the file and what to do, the file kept; `reprise release` lets it go on.
    #[test]
    fn a_folder_written_after_a_failback_copied_it_back_is_never_written_over_unnoticed() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("monday.dump"), "monday").unwrap();
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        let all = |_: Option<&Lease>, _: &str| true;
        // Written on the recovery site after the copy back read it: not released, its lease
        // kept, saying what was written.
        let stamp = tree_seal(&dst).unwrap();
        let live = Lease {
            kind: meta::LeaseKind::Live,
            run: "r9".into(),
            vm: "shares".into(),
            step: "files/backup-shares".into(),
            machine: "m".into(),
            pid: 1,
            at: Utc::now(),
            point: Some("p1".into()),
            taken_at: None,
            written_until: None,
            verified: true,
        };
        meta::write_lease(&store.dir, &live).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(dst.join("late.dump"), "late").unwrap();
        let e = store.release_returned(all, &stamp).unwrap_err().to_string();
        assert!(
            e.contains("it was written (its newest files: late.dump")
                && e.contains("only on this copy, which stays leased"),
            "{e}"
        );
        assert_eq!(store.inspect().leases.len(), 1, "its lease is kept");
        assert!(!store.path(RETURNED).exists());
        std::fs::remove_file(dst.join("late.dump")).unwrap();
        store.release(all).unwrap();
        // Copied back as it is, then written into by the primary only: replicated as any copy.
        let stamp = tree_seal(&dst).unwrap();
        store.release_returned(all, &stamp).unwrap();
        std::fs::write(src.join("tuesday.dump"), "tuesday").unwrap();
        replicate(&src, &dst, "p2");
        assert!(
            !store.path(RETURNED).exists(),
            "forgotten once written over"
        );
        // Copied back, then the recovery site rewrote a dump at its size and put its
        // modification time back: the same paths, sizes and times.
        let stamp = tree_seal(&dst).unwrap();
        store.release_returned(all, &stamp).unwrap();
        assert_eq!(store.inspect().returned, None, "as copied back");
        let stamp_of = |dst: &Path| stamps(dst).unwrap().0;
        let listed = stamp_of(&dst);
        rewrite_keeping_its_time(&dst.join("monday.dump"), "MONDAY");
        assert_eq!(stamp_of(&dst), listed, "its list of files is unchanged");
        let said = store.inspect().returned.unwrap_or_default();
        assert!(said.contains("monday.dump"), "{said}");
        assert!(store.base(false, false).is_err());
        // Then a dump written into the folder.
        std::fs::write(dst.join("written-at-pra.dump"), "only here").unwrap();
        // Said by what reads the copy (`check`), and refused by a replication.
        let said = store.inspect().returned.unwrap_or_default();
        assert!(said.contains("written-at-pra.dump"), "{said}");
        let e = store.base(false, false).unwrap_err().to_string();
        assert!(
            e.contains("written after a failback read it to copy it back")
                && e.contains("written-at-pra.dump")
                && e.contains("`reprise release`"),
            "{e}"
        );
        std::fs::write(src.join("wednesday.dump"), "wednesday").unwrap();
        assert!(replicate_at(&src, &dst, "p3", Utc::now()).is_err());
        assert_eq!(
            std::fs::read_to_string(dst.join("written-at-pra.dump")).unwrap(),
            "only here"
        );
        // A file removed there counts as written too.
        std::fs::remove_file(dst.join("written-at-pra.dump")).unwrap();
        std::fs::remove_file(dst.join("monday.dump")).unwrap();
        assert!(store.base(false, false).is_err());
        // The operator lets it go: replicated again.
        assert!(store.forget_returned().unwrap());
        assert!(store.accept_changes().unwrap().is_some());
        replicate(&src, &dst, "p4");
        assert_eq!(contents(&dst), contents(&src));
    }

    /// A file's modification time can be set back; its status change time cannot. A dump
    /// copied into the set with an old modification time kept (`cp -p`) counts as written
    /// when it came: a point is not taken as holding only what was written before a time it
    /// came after. A file rewritten with its size and modification time as they were
    /// (`touch -d` after the write, a tool that restores times) is read again and sent: the
    /// copy is the source, never the file as it was.
    #[test]
    fn a_file_whose_modification_time_was_set_back_is_still_known_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        let set_mtime = |path: &Path, at: std::time::SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
        let t0 = Utc::now() - chrono::Duration::minutes(10);
        let dump = src.join("erp.dump");
        std::fs::write(&dump, "monday's dump").unwrap();
        set_mtime(&dump, day_ago);
        replicate_at(&src, &dst, "p1", t0).unwrap();
        let p = TreeStore::new(&dst).points().unwrap().pop().unwrap();
        assert!(
            p.newest_file.is_some_and(|f| f > t0),
            "{:?} (the dump came after {t0})",
            p.newest_file
        );
        assert!(!p.holds_only_before(t0));
        // Rewritten: the same size, its modification time put back.
        std::fs::write(&dump, "tuesday dump!").unwrap();
        set_mtime(&dump, day_ago);
        let sent = replicate_at(&src, &dst, "p2", Utc::now()).unwrap();
        assert_eq!(sent.files, 1);
        assert_eq!(
            std::fs::read(dst.join("erp.dump")).unwrap(),
            b"tuesday dump!"
        );
        // Nothing changed since: nothing read again.
        let sent =
            replicate_at(&src, &dst, "p3", Utc::now() + chrono::Duration::seconds(1)).unwrap();
        assert_eq!(sent.files, 0);
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
        // Written outside reprise: mended once let go (`reprise release`).
        assert!(replicate_at(&src, &dst, "p4", Utc::now()).is_err());
        store.accept_changes().unwrap();
        assert_eq!(replicate(&src, &dst, "p4").files, 1);
        assert_eq!(contents(&dst), contents(&src));
    }

    /// A delta missing, or a file it keeps missing, makes bad the points that need it (that
    /// point and the older ones), and verification goes on with the others.
    #[test]
    fn a_missing_delta_marks_bad_the_points_that_need_it_and_verification_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(&src).unwrap();
        for (id, text) in [("p1", "a1"), ("p2", "a2"), ("p3", "a3")] {
            std::fs::write(src.join("a.dump"), text).unwrap();
            replicate(&src, &dst, id);
        }
        let store = TreeStore::new(&dst);
        let v = |id: &str, good: bool| (id.to_string(), good);
        std::fs::remove_file(store.path("deltas/p1/files/a.dump")).unwrap();
        assert_eq!(
            store.verify(None).unwrap(),
            [v("p1", false), v("p2", true), v("p3", true)]
        );
        std::fs::remove_dir_all(store.path("deltas/p2")).unwrap();
        assert_eq!(
            store.verify(None).unwrap(),
            [v("p1", false), v("p2", false), v("p3", true)]
        );
        let verdicts: Vec<Verified> = store
            .points()
            .unwrap()
            .into_iter()
            .map(|p| p.verified)
            .collect();
        assert_eq!(verdicts, [Verified::Bad, Verified::Bad, Verified::Yes]);
    }

    /// A copy with points p1 and p2, and the commit record of an update to p3 keeping
    /// `retention` points, written and not yet completed: (the folder, the source, the copy,
    /// its store).
    fn committed_after_two_points(
        retention: u32,
    ) -> (tempfile::TempDir, PathBuf, PathBuf, TreeStore) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(&src).unwrap();
        for (id, text) in [("p1", "a1"), ("p2", "a2")] {
            std::fs::write(src.join("a.dump"), text).unwrap();
            replicate(&src, &dst, id);
        }
        let store = TreeStore::new(&dst);
        let mut point = store.points().unwrap().pop().unwrap();
        point.id = "p3".into();
        let commit = Commit {
            point,
            prev: Some("p2".into()),
            put: vec![],
            replaced: vec![],
            deleted: vec![],
            touched: vec![],
            tree: scan(&dst).unwrap(),
            retention,
            before: tree_seal(&dst),
        };
        store.write_json("commit.json", &commit).unwrap();
        (dir, src, dst, store)
    }

    /// A committed update one of whose staged files is gone when it is completed (lost on
    /// the recovery host's disk): its point is recorded bad with why, the copy's tree does not
    /// list the file, and the next replication sends it and makes a good point.
    #[test]
    fn a_staged_file_lost_before_its_update_is_completed_makes_an_unusable_point() {
        let (_dir, src, dst, store) = committed_after_two_points(3);
        std::fs::write(src.join("b.dump"), b"the new dump").unwrap();
        let bytes = std::fs::read(store.path("commit.json")).unwrap();
        let mut c: Commit = serde_json::from_slice(&bytes).unwrap();
        c.put = vec!["b.dump".into()];
        c.tree = scan(&src).unwrap();
        store.write_json("commit.json", &c).unwrap();
        let note = store.settle().unwrap().unwrap();
        assert!(
            note.contains("point p3 is UNUSABLE") && note.contains("(the first: b.dump)"),
            "{note}"
        );
        let p3 = store.points().unwrap().pop().unwrap();
        assert_eq!((p3.id.as_str(), p3.verified), ("p3", Verified::Bad));
        let tree: Tree = store.read_json("tree.json").unwrap();
        assert!(!tree.files.contains_key("b.dump"), "{tree:?}");
        replicate(&src, &dst, "p4");
        assert_eq!(contents(&dst), contents(&src));
        let p4 = store.points().unwrap().pop().unwrap();
        assert_eq!((p4.id.as_str(), p4.verified), ("p4", Verified::Yes));

        // A file the update replaces, with no previous point to keep the old one in (it stays
        // where it is until the new one is moved over it): its staged version lost, the old
        // one in place is not taken for the new one.
        let (_dir, src, _dst, store) = committed_after_two_points(3);
        std::fs::write(src.join("a.dump"), b"a3, longer than a2").unwrap();
        let bytes = std::fs::read(store.path("commit.json")).unwrap();
        let mut c: Commit = serde_json::from_slice(&bytes).unwrap();
        c.prev = None;
        c.put = vec!["a.dump".into()];
        c.replaced = vec!["a.dump".into()];
        c.tree = scan(&src).unwrap();
        store.write_json("commit.json", &c).unwrap();
        let note = store.settle().unwrap().unwrap();
        assert!(note.contains("(the first: a.dump)"), "{note}");
        assert_eq!(
            store.points().unwrap().pop().unwrap().verified,
            Verified::Bad
        );
    }

    /// An update committed (its commit record written) and not yet completed, over a points
    /// file that cannot be read: completing it never takes the damaged file for "no points"
    /// (a new history of one point, the older ones lost unsaid). Nothing is moved, and the
    /// next replication ends the history, saying why.
    #[test]
    fn a_roll_forward_over_an_unreadable_points_file_never_takes_it_for_no_points() {
        let (_dir, src, dst, store) = committed_after_two_points(3);
        for name in ["points.json", "points.json.prev"] {
            std::fs::write(store.path(name), b"{ damaged").unwrap();
        }
        assert!(
            matches!(store.verify(None), Err(StoreError::Damaged { .. })),
            "{:?}",
            store.points()
        );
        assert_eq!(
            std::fs::read(store.path("points.json")).unwrap(),
            b"{ damaged"
        );
        assert!(!store.path("deltas/p2").exists());
        assert!(matches!(store.points(), Err(StoreError::Damaged { .. })));
        // The next replication ends the history, saying why, and makes a first point.
        std::fs::write(src.join("a.dump"), "a4").unwrap();
        replicate(&src, &dst, "p4");
        let ended: meta::Ended =
            serde_json::from_slice(&std::fs::read(store.path("ended.json")).unwrap()).unwrap();
        assert!(ended.why.contains("points"), "{}", ended.why);
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p4"]);
        assert_eq!(contents(&dst), contents(&src));
    }

    /// An update committed and cut before it moved its files; then a file is written into
    /// the copy outside reprise: completing the update would record a point that is not the
    /// copy, over what was written. The update is thrown away, nothing moved.
    #[test]
    fn a_committed_update_is_never_completed_over_what_was_written_after_it() {
        let (_dir, _src, dst, store) = committed_after_two_points(3);
        std::fs::write(dst.join("by-hand.txt"), b"written by hand").unwrap();
        let note = store.settle().unwrap().unwrap();
        assert!(
            note.contains("changed after a replication into it was committed")
                && note.contains("that update was thrown away"),
            "{note}"
        );
        assert!(!store.path("commit.json").exists() && !store.path(ROLLING).exists());
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p1", "p2"]);
        assert_eq!(
            std::fs::read(dst.join("by-hand.txt")).unwrap(),
            b"written by hand"
        );
        assert!(store.inspect().written_outside().is_some());
    }

    /// After point p1 of `src` in `dst`: the source changes (a.dump rewritten, b.dump
    /// added, c.dump removed), and an update to it, p2, is staged and committed as a
    /// replication stages and commits one (its bytes, the source's times), not begun.
    fn committed_change(store: &TreeStore, src: &Path, dst: &Path) {
        std::fs::write(src.join("a.dump"), b"a2 longer").unwrap();
        std::fs::write(src.join("b.dump"), b"b2").unwrap();
        std::fs::remove_file(src.join("c.dump")).unwrap();
        let tree = scan(src).unwrap();
        let mut point = store.points().unwrap().pop().unwrap();
        (point.id, point.blake3, point.size) = ("p2".into(), tree.digest(), tree.total());
        let staging = store.path("staging");
        std::fs::create_dir_all(&staging).unwrap();
        for f in ["a.dump", "b.dump"] {
            std::fs::copy(src.join(f), staging.join(f)).unwrap();
            let m = std::fs::metadata(src.join(f)).unwrap().modified().unwrap();
            File::options()
                .write(true)
                .open(staging.join(f))
                .unwrap()
                .set_modified(m)
                .unwrap();
        }
        let commit = Commit {
            point,
            prev: Some("p1".into()),
            put: vec!["a.dump".into(), "b.dump".into()],
            replaced: vec!["a.dump".into()],
            deleted: vec!["c.dump".into()],
            touched: vec![],
            tree,
            retention: 3,
            before: tree_seal(dst),
        };
        store.write_json("commit.json", &commit).unwrap();
    }

    /// A failback copied the folder back, then a replication into it was committed and cut
    /// (a power cut): completed, the record that the failback copied it back goes with it,
    /// so that the next replication is not refused as if the recovery site had written
    /// there.
    #[test]
    fn a_cut_update_completed_forgets_that_a_failback_copied_the_folder_back() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        for (f, text) in [("a.dump", "a1"), ("c.dump", "c1")] {
            std::fs::write(src.join(f), text).unwrap();
        }
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        let stamp = tree_seal(&dst).unwrap();
        store
            .release_returned(|_: Option<&Lease>, _: &str| true, &stamp)
            .unwrap();
        assert!(store.path(RETURNED).exists());
        committed_change(&store, &src, &dst);
        let note = store.settle().unwrap().unwrap_or_default();
        assert!(note.contains("completed"), "{note}");
        assert_eq!(contents(&dst), contents(&src));
        assert!(!store.path(RETURNED).exists());
        assert_eq!(store.inspect().returned, None);
        store.base(false, false).unwrap();
    }

    /// Where a source folder's nearest mount point is, from the devices of the folders up to
    /// `/`; a set whose source folder is no longer on the file system of its newest point (a
    /// share not mounted: its mount point's old files would be copied as the set) is
    /// refused, the copy untouched, until it is mounted again or released.
    #[test]
    fn a_source_folder_on_another_file_system_than_before_is_refused_until_released() {
        let origin = |devs: &[u64]| FolderOrigin {
            boot: "b".into(),
            chain: devs
                .iter()
                .enumerate()
                .map(|(i, d)| (*d, i as u64))
                .collect(),
        };
        assert_eq!(
            origin(&[7, 3, 3]).mount_depth(),
            Some(0),
            "the folder mounted"
        );
        assert_eq!(origin(&[7, 7, 3]).mount_depth(), Some(1));
        assert_eq!(origin(&[3, 3, 3]).mount_depth(), None, "one file system");

        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), b"a1").unwrap();
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        let here = FolderOrigin::of(&src).unwrap().mount_depth();
        let recorded = std::fs::read(store.path(MOUNT)).unwrap();
        assert_eq!(
            serde_json::from_slice::<Option<usize>>(&recorded).unwrap(),
            here
        );
        // As if the folder had been elsewhere then (its share mounted).
        let then = match here {
            Some(n) => Some(n + 1),
            None => Some(0),
        };
        meta::write_file(
            &store.dir,
            MOUNT,
            &serde_json::to_vec(&then).unwrap(),
            false,
        )
        .unwrap();
        std::fs::write(src.join("a.dump"), b"a2").unwrap();
        let e = replicate_at(&src, &dst, "p2", Utc::now())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the source folder is not on the file system it was on")
                && e.contains("nothing was written"),
            "{e}"
        );
        assert_eq!(std::fs::read(dst.join("a.dump")).unwrap(), b"a1");
        store.accept_changes().unwrap();
        replicate(&src, &dst, "p2");
        assert_eq!(std::fs::read(dst.join("a.dump")).unwrap(), b"a2");
        let recorded = std::fs::read(store.path(MOUNT)).unwrap();
        assert_eq!(
            serde_json::from_slice::<Option<usize>>(&recorded).unwrap(),
            here
        );
    }

    /// A program writing the folder while an update moves its files (a backup job still
    /// enabled on a failback's primary): a file it is about to move away or over, written
    /// since the commit, stops the update, thrown away, the write kept; one it does not move,
    /// or one added, leaves the point recorded unusable, saying why, never vouching for a
    /// folder that is not it.
    #[test]
    fn a_folder_written_while_an_update_moves_its_files_is_never_taken_for_the_point() {
        for write in ["moved", "kept", "added"] {
            let dir = tempfile::tempdir().unwrap();
            let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
            std::fs::create_dir_all(&src).unwrap();
            for (f, text) in [("a.dump", "a1"), ("c.dump", "c1"), ("d.dump", "d1")] {
                std::fs::write(src.join(f), text).unwrap();
            }
            replicate(&src, &dst, "p1");
            let store = TreeStore::new(&dst);
            committed_change(&store, &src, &dst);
            let c: Commit =
                serde_json::from_slice(&std::fs::read(store.path("commit.json")).unwrap()).unwrap();
            // Later than the commit by more than a tick of the file system's clock.
            std::thread::sleep(std::time::Duration::from_millis(50));
            match write {
                "moved" => std::fs::write(dst.join("a.dump"), b"by hand").unwrap(),
                "kept" => std::fs::write(dst.join("d.dump"), b"dX").unwrap(),
                _ => std::fs::write(dst.join("e.txt"), b"by hand").unwrap(),
            }
            let done = store.roll_forward(c);
            let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
            if write == "moved" {
                let e = done.unwrap_err().to_string();
                assert!(
                    e.contains("found, as it moved files in the folder, a.dump written since it was committed")
                        && e.contains("the update was thrown away"),
                    "{e}"
                );
                assert_eq!(std::fs::read(dst.join("a.dump")).unwrap(), b"by hand");
                assert_eq!(ids, ["p1"]);
                assert!(!store.path("commit.json").exists() && !store.path(ROLLING).exists());
                assert!(store.inspect().written_outside().is_some());
                continue;
            }
            let why = done.unwrap().unwrap_or_default();
            let says = match write {
                "kept" => "d.dump was written during the update",
                _ => "e.txt is in the folder, not in the point",
            };
            assert!(
                why.contains(says) && why.contains("is not this point"),
                "{write}: {why}"
            );
            assert_eq!(ids, ["p1", "p2"]);
            let p2 = store.points().unwrap().pop().unwrap();
            assert!(
                p2.unusable.as_deref().is_some_and(|u| u.contains(says)),
                "{p2:?}"
            );
        }
    }

    /// An update cut while it moved its files (its marker written, one file moved in) is
    /// completed when the copy is as the update and its point left it. A file written (even
    /// at its size with its time put back), added or removed in the copy since the cut makes
    /// it thrown away: never completed over what was written, never recorded as a point.
    #[test]
    fn an_update_cut_while_it_moved_files_is_never_completed_over_a_write_since() {
        use std::os::unix::fs::MetadataExt as _;
        for write in [
            None,
            Some("kept"),
            Some("moved"),
            Some("added"),
            Some("removed"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src");
            let dst = dir.path().join("dst");
            std::fs::create_dir_all(&src).unwrap();
            for (f, text) in [("a.dump", "a1"), ("c.dump", "c1"), ("d.dump", "d1")] {
                std::fs::write(src.join(f), text).unwrap();
            }
            replicate(&src, &dst, "p1");
            let store = TreeStore::new(&dst);
            committed_change(&store, &src, &dst);
            meta::write_file(&store.dir, ROLLING, b"p2", false).unwrap();
            // Cut once a.dump's old version was kept and its new one moved in.
            let kept = store.path("deltas/p1/files");
            std::fs::create_dir_all(&kept).unwrap();
            std::fs::rename(dst.join("a.dump"), kept.join("a.dump")).unwrap();
            std::fs::rename(store.path("staging/a.dump"), dst.join("a.dump")).unwrap();
            // Later than the commit by more than a tick of the file system's clock.
            std::thread::sleep(std::time::Duration::from_millis(50));
            let same_size_time_put_back = |path: &Path, text: &[u8]| {
                let m = std::fs::metadata(path).unwrap();
                assert_eq!(m.len(), text.len() as u64);
                std::fs::write(path, text).unwrap();
                File::options()
                    .write(true)
                    .open(path)
                    .unwrap()
                    .set_modified(m.modified().unwrap())
                    .unwrap();
                assert_eq!(std::fs::metadata(path).unwrap().mtime(), m.mtime());
            };
            match write {
                None => {}
                Some("kept") => same_size_time_put_back(&dst.join("d.dump"), b"dX"),
                Some("moved") => same_size_time_put_back(&dst.join("a.dump"), b"a2 LONGER"),
                Some("added") => std::fs::write(dst.join("e.txt"), b"by hand").unwrap(),
                Some(_) => std::fs::remove_file(dst.join("d.dump")).unwrap(),
            }
            let left = contents(&dst);
            let note = store.settle().unwrap().unwrap_or_default();
            let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
            if write.is_none() {
                assert!(note.contains("completed"), "{note}");
                assert_eq!(contents(&dst), contents(&src));
                assert_eq!(ids, ["p1", "p2"]);
                assert!(store.verify(None).unwrap().iter().all(|(_, good)| *good));
                continue;
            }
            assert!(
                note.contains("are neither as that update nor as the point before it left them")
                    && note.contains("the update was thrown away"),
                "{write:?}: {note}"
            );
            assert_eq!(contents(&dst), left, "{write:?}");
            assert_eq!(ids, ["p1"], "{write:?}");
            assert!(!store.path("commit.json").exists() && !store.path(ROLLING).exists());
            assert!(store.path("deltas/p1.cut-p2/files/a.dump").exists());
            assert!(store.inspect().written_outside().is_some(), "{write:?}");
        }
    }

    /// A commit record that keeps no point (a damaged file: a replication always keeps at
    /// least one): refused as damaged, never completed by dropping every point and its delta.
    #[test]
    fn a_commit_record_that_keeps_no_point_is_damaged_and_drops_nothing() {
        let (_dir, _src, _dst, store) = committed_after_two_points(0);
        let e = store.verify(None).expect_err("a retention of 0 is damage");
        assert!(
            matches!(&e, StoreError::Damaged { reason, .. } if reason.contains("retention of 0")),
            "{e}"
        );
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p1", "p2"]);
        assert!(store.path("deltas/p1").exists());
        assert!(store.path("commit.json").exists());
    }

    /// A stream as it reaches the pipe: its bytes, and how many of them had come at each
    /// flush.
    #[derive(Default)]
    struct Flushes {
        bytes: Vec<u8>,
        at: Vec<usize>,
    }

    impl Write for Flushes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            self.at.push(self.bytes.len());
            Ok(())
        }
    }

    /// A stream that, once the record of `path` went into it, has `then` done to the file
    /// (a backup job still writing it while it is sent).
    struct WrittenMeanwhile<F: FnMut()> {
        bytes: Vec<u8>,
        path: &'static str,
        then: Option<F>,
    }

    impl<F: FnMut()> Write for WrittenMeanwhile<F> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes.extend_from_slice(buf);
            let record = format!("\"{}\"", self.path);
            if self
                .bytes
                .windows(record.len())
                .any(|w| w == record.as_bytes())
                && let Some(mut then) = self.then.take()
            {
                then();
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_file_written_while_it_is_sent_makes_no_point() {
        type Change = fn(&Path);
        let changes: [(&str, Change); 3] = [
            // Appended to: what was hashed and sent is its first part, whole and matching.
            ("appended to", |p| {
                let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(&[9u8; 4096]).unwrap();
            }),
            // Rewritten in place, the same size.
            ("rewritten", |p| {
                let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.write_all(&[7u8; 4096]).unwrap();
            }),
            // Written, its time then put back.
            ("written, its time put back", |p| {
                let before = std::fs::metadata(p).unwrap().modified().unwrap();
                let mut f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                f.write_all(&[5u8; 4096]).unwrap();
                f.set_modified(before).unwrap();
            }),
        ];
        for (what, change) in changes {
            let dir = tempfile::tempdir().unwrap();
            let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("a.conf"), b"kept").unwrap();
            std::fs::write(src.join("nightly.dump"), vec![1u8; 64 << 10]).unwrap();
            let dump = src.join("nightly.dump");
            let mut stream = WrittenMeanwhile {
                bytes: Vec::new(),
                path: "nightly.dump",
                then: Some(|| change(&dump)),
            };
            let err = send_tree(&src, &Tree::default(), &mut stream)
                .expect_err(&format!("a file {what} while it was sent"));
            assert!(
                err.contains("nightly.dump") && err.contains("changed while it was read"),
                "{what}: {err}"
            );
            // What the recovery side got ends before the end: no point, nothing kept.
            let store = TreeStore::new(&dst);
            assert!(
                store
                    .apply(
                        &mut &stream.bytes[..],
                        NewPoint {
                            id: "p1".into(),
                            taken_at: Utc::now(),
                            source: "src".into(),
                            retention: 3,
                            definition: None,
                            read: None,
                            pending: false,
                            overwrite_changed: false,
                        },
                    )
                    .is_err(),
                "{what}"
            );
            assert!(store.points().unwrap().is_empty(), "{what}");
            // Once nothing writes it, the next replication takes the file as it is now.
            replicate(&src, &dst, "p2");
            assert_eq!(contents(&dst), contents(&src), "{what}");
        }
    }

    /// What a copy of a set's files leaves out that the folder held (the deepest folders with
    /// no file beneath, links within the set or leading nowhere) is recorded with the point,
    /// said by the replication's line, and by the step that relies on the copy; a folder made
    /// by a file in it, a pipe, and a folder above a left-out one are not said.
    #[test]
    fn what_a_copy_of_the_files_leaves_out_is_recorded_with_its_point() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        for d in [
            "pg/base/1",
            "pg/pg_tblspc",
            "pg/pg_notify",
            "pg/deep/er/est",
        ] {
            std::fs::create_dir_all(src.join(d)).unwrap();
        }
        std::fs::write(src.join("pg/base/1/16384"), b"rows").unwrap();
        std::fs::write(src.join("pg/PG_VERSION"), b"15").unwrap();
        std::os::unix::fs::symlink("base/1/16384", src.join("pg/latest")).unwrap();
        std::os::unix::fs::symlink("gone", src.join("pg/dangling")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(src.join("pg/base/fifo"))
            .status()
            .unwrap();
        assert!(made.success());
        let sent = replicate(&src, &dst, "p1");
        let said = [
            "the link pg/dangling -> gone",
            "the link pg/latest -> base/1/16384",
            "the folder pg/deep/er/est/ (no file in it)",
            "the folder pg/pg_notify/ (no file in it)",
            "the folder pg/pg_tblspc/ (no file in it)",
        ];
        assert_eq!(sent.left_out, said);
        let points = TreeStore::new(&dst).points().unwrap();
        assert_eq!(points.last().unwrap().left_out, said);
        let line = crate::replica::remote::left_out_said(&points.last().unwrap().left_out).unwrap();
        assert!(
            line.contains("pg/pg_tblspc/") && line.contains("make them again by hand"),
            "{line}"
        );
        // Made again in the source: nothing left out, nothing said.
        for d in ["pg/pg_tblspc", "pg/pg_notify", "pg/deep/er/est"] {
            std::fs::write(src.join(d).join("keep"), b"").unwrap();
        }
        std::fs::remove_file(src.join("pg/latest")).unwrap();
        std::fs::remove_file(src.join("pg/dangling")).unwrap();
        let sent = replicate(&src, &dst, "p2");
        assert!(sent.left_out.is_empty(), "{:?}", sent.left_out);
        let points = TreeStore::new(&dst).points().unwrap();
        assert!(points.last().unwrap().left_out.is_empty());
        assert_eq!(
            points[0].left_out, said,
            "the older point keeps what it left out"
        );
    }

    /// A link made in a set's copy by hand (as the replication's line says to) is used only
    /// while its point records it, to the same target: one left as it was while the source's
    /// moved on (`latest` to a newer dump), or one the source never had, is refused where the
    /// copy is used, naming both, since a restore through it would read other data than the
    /// point.
    #[test]
    fn a_link_in_a_set_s_copy_is_used_only_as_its_point_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("dump-12-04"), b"old").unwrap();
        std::os::unix::fs::symlink("dump-12-04", src.join("latest")).unwrap();
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        let lease = |point: &str| Lease {
            kind: meta::LeaseKind::Drill,
            run: "r1".into(),
            vm: "erp-dumps".into(),
            step: "backups/backup-erp-dumps".into(),
            machine: "m".into(),
            pid: 1,
            at: Utc::now(),
            point: Some(point.into()),
            taken_at: None,
            written_until: None,
            verified: true,
        };
        let wait = std::time::Duration::from_millis(10);
        let release = || store.release(|_, _| true).unwrap();
        // Made in the copy as the point records it: used.
        std::os::unix::fs::symlink("dump-12-04", dst.join("latest")).unwrap();
        store.take_lease(&lease("p1"), Some("p1"), wait).unwrap();
        release();
        // The source's link moved on to a newer dump; the copy's did not.
        std::fs::write(src.join("dump-12-20"), b"new").unwrap();
        std::fs::remove_file(src.join("latest")).unwrap();
        std::os::unix::fs::symlink("dump-12-20", src.join("latest")).unwrap();
        replicate(&src, &dst, "p2");
        let err = store
            .take_lease(&lease("p2"), Some("p2"), wait)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "links that its point p2 does not record as they are: latest -> dump-12-04"
            ) && err.contains("the point records latest -> dump-12-20")
                && err.contains("ln -sfn TARGET NAME"),
            "{err}"
        );
        assert!(
            meta::read_leases(&store.dir).is_empty(),
            "leased all the same"
        );
        std::fs::remove_file(dst.join("latest")).unwrap();
        std::os::unix::fs::symlink("dump-12-20", dst.join("latest")).unwrap();
        store.take_lease(&lease("p2"), Some("p2"), wait).unwrap();
        release();
        // A link the source never had, into the copy or out of it.
        for to in ["dump-12-04", "/etc"] {
            std::os::unix::fs::symlink(to, dst.join("other")).unwrap();
            let err = store
                .take_lease(&lease("p2"), Some("p2"), wait)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("other -> {to}")), "{err}");
            std::fs::remove_file(dst.join("other")).unwrap();
        }
        store.take_lease(&lease("p2"), Some("p2"), wait).unwrap();
    }

    /// A link of the copy is judged by where it leads within the set, as the source's led
    /// within the source: written another way to the same file passes; one that leads out of
    /// the copy never does, even written as the source's (a path of the source's host, which
    /// leads elsewhere on this one).
    #[test]
    fn a_link_of_a_set_s_copy_is_judged_by_where_it_leads_within_the_set() {
        assert_eq!(set_relative("a/b", "../c", None).as_deref(), Some("c"));
        assert_eq!(
            set_relative("a/b", "./c/./d", None).as_deref(),
            Some("a/c/d")
        );
        assert_eq!(
            set_relative("x", "/srv/dumps/erp/y", Some("/srv/dumps/erp")).as_deref(),
            Some("y")
        );
        assert_eq!(set_relative("x", "/etc/y", Some("/srv/dumps/erp")), None);
        assert_eq!(
            set_relative("x", "/srv/dumps/erpx/y", Some("/srv/dumps/erp")),
            None
        );
        assert_eq!(set_relative("x", "../../etc", None), None);
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy");
        std::fs::create_dir_all(copy.join("sub")).unwrap();
        std::fs::write(copy.join("dump-12-20"), b"new").unwrap();
        let point = Point {
            id: "p2".into(),
            taken_at: Utc::now(),
            source: "nas-main:/srv/dumps/erp".into(),
            size: 3,
            blake3: String::new(),
            verified: Verified::Yes,
            checked_at: None,
            received_bytes: 0,
            duration_ms: 0,
            stamp: None,
            definition: None,
            read: None,
            unusable: None,
            pending: false,
            newest_file: None,
            left_out: vec![
                "the link latest -> /srv/dumps/erp/dump-12-20".into(),
                "the link sub/up -> ../dump-12-20".into(),
            ],
        };
        let link = |to: &str, name: &str| {
            let _ = std::fs::remove_file(copy.join(name));
            std::os::unix::fs::symlink(to, copy.join(name)).unwrap();
        };
        link("dump-12-20", "latest");
        link("../dump-12-20", "sub/up");
        assert_eq!(links_unlike(&copy, &point), None);
        link(copy.join("dump-12-20").to_str().unwrap(), "sub/up");
        assert_eq!(
            links_unlike(&copy, &point),
            None,
            "a full path into the copy"
        );
        link("/etc", "latest");
        let why = links_unlike(&copy, &point).unwrap();
        assert!(
            why.contains("latest -> /etc (it leads out of the copy)"),
            "{why}"
        );
        link("sub", "latest");
        let why = links_unlike(&copy, &point).unwrap();
        assert!(
            why.contains("latest -> sub;") || why.contains("latest -> sub"),
            "{why}"
        );
        // The source's own text, a full path of the source: on this host it leads to that
        // path, not into the copy (nowhere here, or to another folder made there later).
        link("/srv/dumps/erp/dump-12-20", "latest");
        let why = links_unlike(&copy, &point).unwrap();
        assert!(
            why.contains("does not record as they are: latest -> /srv/dumps/erp/dump-12-20;")
                && why.contains("which in the copy read latest -> dump-12-20 ("),
            "{why}"
        );
        link("dump-12-20", "latest");
        link("dump-12-20", "extra");
        let why = links_unlike(&copy, &point).unwrap();
        assert!(why.contains("extra -> dump-12-20"), "{why}");
    }

    /// Many long names left out (links named in a script of three bytes a character) still
    /// fit the stream's end, which is one line: the first are said, then how many more; a
    /// name is cut at its characters, said cut, and an invisible or bidi character in it is
    /// shown escaped.
    #[test]
    fn many_long_names_left_out_are_said_within_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        for i in 0..150 {
            let name = format!("{i:03}{}", "é".repeat(20) + &"日".repeat(60));
            std::os::unix::fs::symlink("f", src.join(name)).unwrap();
        }
        let sent = replicate(&src, &dst, "p1");
        let (said, more) = sent.left_out.split_at(sent.left_out.len() - 1);
        assert!(said.len() < 150, "{}", said.len());
        assert_eq!(more, [format!("{} more", 150 - said.len())]);
        assert!(said.iter().map(String::len).sum::<usize>() <= LEFT_OUT_BYTES);
        assert_eq!(
            TreeStore::new(&dst).points().unwrap()[0].left_out,
            sent.left_out
        );
        let long = "é".repeat(LEFT_OUT_NAME + 1);
        assert_eq!(
            left_out_name(&long),
            format!("{}…", "é".repeat(LEFT_OUT_NAME))
        );
        assert_eq!(left_out_name("a\u{202e}b'c"), "a\\u{202e}b'c");
    }

    /// What a source says its copy left out is shown as text: its control characters (a
    /// terminal's escape sequences) are escaped before the point records it.
    #[test]
    fn what_a_source_says_it_left_out_is_recorded_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(src.join("empty")).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        let store = TreeStore::new(&dst);
        let base = store.base(false, false).unwrap();
        let mut stream = Vec::new();
        send_tree(&src, &base, &mut stream).unwrap();
        let text = String::from_utf8(stream).unwrap();
        let hostile = text.replace("the folder empty/", "\\u001b[2Jthe folder empty/");
        assert_ne!(hostile, text);
        store
            .apply(&mut hostile.as_bytes(), new_point("p1", Utc::now()))
            .unwrap();
        let points = store.points().unwrap();
        assert_eq!(
            points[0].left_out,
            ["\\u{1b}[2Jthe folder empty/ (no file in it)"]
        );
    }

    /// A link that leads out of a backup set shows data a copy of its files would not have:
    /// the replication makes no point and names it (and what it leads to). A link into the set
    /// (`latest -> dump`), a link that leads nowhere, a pipe or a socket hold nothing the
    /// copy lacks: left out, the files are copied.
    #[test]
    fn a_link_out_of_a_backup_set_makes_no_point_and_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let elsewhere = dir.path().join("dumps");
        std::fs::create_dir_all(src.join("db")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(src.join("db/base.conf"), b"kept").unwrap();
        std::fs::write(elsewhere.join("nightly.dump"), vec![3u8; 4096]).unwrap();
        std::os::unix::fs::symlink("base.conf", src.join("db/latest.conf")).unwrap();
        std::os::unix::fs::symlink("gone.dump", src.join("db/dangling")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(src.join("db/fifo"))
            .status()
            .unwrap();
        assert!(made.success());
        replicate(&src, &dst, "p1");
        assert_eq!(
            contents(&dst).keys().collect::<Vec<_>>(),
            ["db/base.conf"],
            "the links into the set and the pipe are left out, the files copied"
        );
        let before = std::fs::read(TreeStore::new(&dst).path("points.json")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, src.join("db/dumps")).unwrap();
        let mut stream = Vec::new();
        let err = send_tree(&src, &Tree::default(), &mut stream).unwrap_err();
        let to = std::fs::canonicalize(&elsewhere).unwrap();
        assert!(
            err.contains(&format!(
                "db/dumps (a symbolic link to {}, outside the backup set) is not a file or a folder of the set",
                to.display()
            )) && err.contains("makes no point"),
            "{err}"
        );
        let store = TreeStore::new(&dst);
        let point = NewPoint {
            id: "p2".into(),
            taken_at: Utc::now(),
            source: "src".into(),
            retention: 3,
            definition: None,
            read: None,
            pending: false,
            overwrite_changed: false,
        };
        assert!(store.apply(&mut &stream[..], point).is_err());
        assert_eq!(std::fs::read(store.path("points.json")).unwrap(), before);
        // The dumps moved into the set: copied.
        std::fs::remove_file(src.join("db/dumps")).unwrap();
        std::fs::rename(&elsewhere, src.join("db/dumps")).unwrap();
        replicate(&src, &dst, "p3");
        assert_eq!(contents(&dst), contents(&src));
        assert!(contents(&dst).contains_key("db/dumps/nightly.dump"));
    }

    /// A copy written while it is read again is not vouched for: neither its point's stamp
    /// nor its tree records what was read, even when the bytes written are the same.
    #[test]
    fn a_copy_written_while_it_is_verified_is_not_vouched_for() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        // Long enough to read (tens of milliseconds) for writes to land during it.
        std::fs::write(src.join("nightly.dump"), vec![4u8; 96 << 20]).unwrap();
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        let points = || std::fs::read(store.path("points.json")).unwrap();
        let before = points();
        // Something writes the copy all through its read.
        let verified =
            crate::replica::blocks::written_all_through(&dst.join("nightly.dump"), || {
                store.verify(None)
            });
        let e = verified.unwrap_err().to_string();
        assert!(e.contains("written while it was read"), "{e}");
        assert_eq!(points(), before);
        // Once nothing writes it, it is read again and found whole.
        assert_eq!(store.verify(None).unwrap(), [("p1".to_string(), true)]);
    }

    #[test]
    fn a_file_sent_is_handed_on_before_the_next_large_one_is_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), vec![1u8; 2 << 20]).unwrap();
        std::fs::write(src.join("b.dump"), vec![2u8; 2 << 20]).unwrap();
        let mut stream = Flushes::default();
        let sent = send_tree(&src, &Tree::default(), &mut stream).unwrap();
        assert_eq!(sent.files, 2);
        // a.dump's record line, its bytes, then b.dump's record.
        let find = |what: &[u8]| stream.bytes.windows(what.len()).position(|w| w == what);
        let a = find(b"\"a.dump\"").unwrap();
        let a_line_end = a + stream.bytes[a..].iter().position(|c| *c == b'\n').unwrap();
        let b_record = a_line_end + 1 + (2 << 20);
        assert!(find(b"\"b.dump\"").unwrap() > b_record);
        assert!(
            stream.at.contains(&b_record),
            "a.dump flushed before b.dump is hashed: {:?}, b.dump's record at {b_record}",
            stream.at,
        );
    }

    #[test]
    fn a_point_taken_before_the_newest_is_refused_and_the_history_kept() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), "a1").unwrap();
        replicate(&src, &dst, "p1");
        let v1 = contents(&dst);
        std::fs::write(src.join("a.dump"), "a2").unwrap();
        // The clock of the machine running reprise an hour behind: written, the points file
        // was out of order, found damaged by the next run, and the history ended.
        let early = Utc::now() - chrono::Duration::hours(1);
        let err = replicate_at(&src, &dst, "p0", early)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the clock of the machine running reprise is behind"),
            "{err}"
        );
        assert_eq!(contents(&dst), v1);
        let err = replicate_at(&src, &dst, "../x", Utc::now())
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot name a point"), "{err}");
        replicate(&src, &dst, "p2");
        let store = TreeStore::new(&dst);
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p1", "p2"]);
        let out = dir.path().join("out");
        store.restore("p1", &out).unwrap();
        assert_eq!(contents(&out), v1);
    }

    #[test]
    fn a_copy_changed_between_its_base_and_the_stream_is_not_made_a_point() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), "a1").unwrap();
        std::fs::write(src.join("b.dump"), "b1").unwrap();
        replicate(&src, &dst, "p1");
        for reread in [false, true] {
            let store = TreeStore::new(&dst);
            let base = store.base(reread, false).unwrap();
            let mut stream = Vec::new();
            send_tree(&src, &base, &mut stream).unwrap();
            // Written into the copy after the source compared against it, at its size and
            // with its modification time put back.
            rewrite_keeping_its_time(&dst.join("b.dump"), "XX");
            let result = store.apply(
                &mut &stream[..],
                NewPoint {
                    id: "p2".into(),
                    taken_at: Utc::now(),
                    source: "src".into(),
                    retention: 3,
                    definition: None,
                    read: None,
                    pending: false,
                    overwrite_changed: false,
                },
            );
            let err = match result {
                Ok(made) => panic!(
                    "a point was made of a copy that is not the source: {made:?}; {:?}",
                    contents(&dst)
                ),
                Err(e) => e.to_string(),
            };
            assert!(err.contains("changed since the source compared"), "{err}");
            assert!(
                store.points().unwrap().iter().all(|p| p.id != "p2"),
                "{:?}",
                store.points()
            );
            // Written outside reprise: let go (`reprise release`), the next replication
            // mends it.
            assert!(replicate_at(&src, &dst, "p3", Utc::now()).is_err());
            store.accept_changes().unwrap();
            replicate(&src, &dst, "p3");
            assert_eq!(contents(&dst), contents(&src));
        }
    }

    /// A copy whose files changed in their status only (mode, owner, labels: their change
    /// time) holds its newest point still: the next replication reads it whole, finds it so,
    /// records its seal anew and goes on, its history kept. A copy gone is made anew.
    #[test]
    fn a_copy_changed_in_its_files_status_only_keeps_its_history() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), "a1").unwrap();
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        std::fs::set_permissions(dst.join("a.dump"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert!(store.inspect().changed.is_some());
        std::fs::write(src.join("b.dump"), "b1").unwrap();
        replicate(&src, &dst, "p2");
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p1", "p2"], "its history kept");
        assert_eq!(contents(&dst), contents(&src));
        std::fs::remove_dir_all(&dst).unwrap();
        replicate(&src, &dst, "p3");
        assert_eq!(contents(&dst), contents(&src));
    }

    #[test]
    fn a_damaged_points_file_or_a_lease_never_lets_a_wrong_history_through() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), "a1").unwrap();
        replicate(&src, &dst, "p1");
        std::fs::write(src.join("a.dump"), "a2").unwrap();
        replicate(&src, &dst, "p2");
        let store = TreeStore::new(&dst);
        assert!(store.inspect().changed.is_none());
        let meta = dir.path().join("dst.reprise");
        std::fs::write(meta.join("points.json"), "[").unwrap();
        let state = store.inspect();
        assert!(matches!(
            state.points_from,
            Some(meta::PointsSource::Previous { .. })
        ));
        assert_eq!(state.points.last().unwrap().id, "p2");
        // A file of the copy written behind its points: no longer its newest point.
        std::fs::write(dst.join("a.dump"), "edited").unwrap();
        assert!(store.inspect().changed.is_some());
        std::fs::write(src.join("b.dump"), "b").unwrap();
        // Refused until let go (`reprise release`): what was written there is in no point.
        let e = store.base(false, false).unwrap_err().to_string();
        assert!(e.contains("this replication would overwrite it"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dst.join("a.dump")).unwrap(),
            "edited"
        );
        store.accept_changes().unwrap();
        replicate(&src, &dst, "p3");
        assert_eq!(contents(&dst), contents(&src));
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(
            ids,
            ["p3"],
            "the history that no longer described it was ended"
        );
        // A lease (even one that cannot be read) holds the copy.
        std::fs::create_dir_all(meta.join("leases")).unwrap();
        std::fs::write(meta.join("leases/drill-x.json"), "not json").unwrap();
        let err = store.base(false, false).unwrap_err().to_string();
        assert!(err.contains("lease drill-x.json is damaged"), "{err}");
    }

    /// A lease that expects a point refuses a folder that is not that point any more: a newer
    /// point, a file added, removed or rewritten behind the point (its modification time put
    /// back too), or the point found bad.
    #[test]
    fn a_lease_expecting_a_point_refuses_a_folder_that_is_not_that_point() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), "a1").unwrap();
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        let lease = |kind, run: &str, point: &str| Lease {
            kind,
            run: run.into(),
            vm: "erp-dumps".into(),
            step: "backups/backup-erp-dumps".into(),
            machine: "m".into(),
            pid: 1,
            at: Utc::now(),
            point: Some(point.into()),
            taken_at: None,
            written_until: None,
            verified: true,
        };
        let wait = std::time::Duration::from_millis(10);
        let live = lease(meta::LeaseKind::Live, "r1", "p1");
        let err = store
            .take_lease(&live, Some("p0"), wait)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no longer point p0 (its newest point is p1)"),
            "{err}"
        );
        assert!(store.inspect().leases.is_empty(), "nothing recorded");
        // Each change behind the point is refused, and the lease not recorded.
        let meta_dir = dir.path().join("dst.reprise");
        let mut at = "p1".to_string();
        let changes = [
            "added",
            "removed",
            "rewritten",
            "rewritten, its time put back",
        ];
        for (k, change) in changes.into_iter().enumerate() {
            let a = dst.join("a.dump");
            match change {
                "added" => std::fs::write(dst.join("new.dump"), "n").unwrap(),
                "removed" => std::fs::remove_file(&a).unwrap(),
                "rewritten" => std::fs::write(&a, "a2").unwrap(),
                _ => rewrite_keeping_its_time(&a, "a3"),
            }
            let live = lease(meta::LeaseKind::Live, "r1", &at);
            let err = store
                .take_lease(&live, Some(&at), wait)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("the copy changed since its newest point {at}")),
                "{change}: {err}"
            );
            assert!(
                store.inspect().leases.is_empty(),
                "{change}: nothing recorded"
            );
            // Mended by the next replication once let go, a point of its own.
            let _ = std::fs::remove_file(dst.join("new.dump"));
            store.accept_changes().unwrap();
            at = format!("p{}", k + 2);
            replicate(&src, &dst, &at);
            assert!(store.inspect().changed.is_none(), "{change}: mended");
            assert_eq!(contents(&dst), contents(&src), "{change}");
        }
        // Found bad since a run chose it as verified.
        let live = lease(meta::LeaseKind::Live, "r1", &at);
        let mut points = store.points().unwrap();
        let newest = points.len() - 1;
        points[newest].verified = Verified::Bad;
        store.write_json("points.json", &points).unwrap();
        let err = store
            .take_lease(&live, Some(&at), wait)
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed verification"), "{err}");
        points[newest].verified = Verified::Yes;
        store.write_json("points.json", &points).unwrap();
        assert!(meta_dir.join("points.json").exists());
        store.take_lease(&live, Some(&at), wait).unwrap();
        let leases = store.inspect().leases;
        assert_eq!(leases.len(), 1);
        let who = leases[0].describe();
        assert!(
            who.starts_with(&format!(
                "backup set erp-dumps, relied on by failover run r1 at point {at}"
            )),
            "{who}"
        );
    }

    /// A point and a failback's record made by an earlier version hold a stamp (paths,
    /// sizes, modification times), not a seal: each is compared as it was made, so that an
    /// upgrade does not make a copy look changed behind its point, nor written since.
    #[test]
    fn a_stamp_recorded_by_an_earlier_version_is_compared_as_a_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.dump"), "a1").unwrap();
        replicate(&src, &dst, "p1");
        let store = TreeStore::new(&dst);
        let (stamp, seal) = stamps(&dst).unwrap();
        assert!(stamp.starts_with("tree ") && seal.starts_with("seal "));
        let mut points = store.points().unwrap();
        assert_eq!(points[0].stamp.as_deref(), Some(seal.as_str()));
        points[0].stamp = Some(stamp.clone());
        store.write_json("points.json", &points).unwrap();
        let all = |_: Option<&Lease>, _: &str| true;
        store.release_returned(all, &stamp).unwrap();
        let state = store.inspect();
        assert_eq!((state.changed, state.returned), (None, None));
        // And still finds a change.
        std::fs::write(dst.join("b.dump"), "b").unwrap();
        let state = store.inspect();
        assert!(state.changed.is_some() && state.returned.is_some());
    }

    /// The time the fs's own clock gives a change made now (the reference for a test).
    fn fs_now(scratch: &Path) -> chrono::DateTime<Utc> {
        // Past the tick of what was made before (the fs clock is coarse).
        std::thread::sleep(std::time::Duration::from_millis(50));
        let stamp = scratch.join("stamp");
        std::fs::write(&stamp, "now").unwrap();
        std::fs::metadata(&stamp)
            .unwrap()
            .modified()
            .unwrap()
            .into()
    }

    #[test]
    fn a_folder_file_copied_in_with_an_old_time_or_removed_counts_as_a_change_when_made() {
        let dir = tempfile::tempdir().unwrap();
        let (folder, scratch) = (dir.path().join("dumps"), dir.path().join("scratch"));
        std::fs::create_dir_all(folder.join("sub")).unwrap();
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::write(folder.join("a.dump"), "a").unwrap();
        std::fs::write(folder.join("sub/b.dump"), "b").unwrap();
        let store = TreeStore::new(&folder);
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);

        // `cp -p`: a new file whose modification time is years back.
        let moment = fs_now(&scratch);
        let f = File::create(folder.join("sub/kept.dump")).unwrap();
        f.set_modified(old).unwrap();
        let seen = store.inspect().mtime.unwrap();
        assert!(seen >= moment, "copied in at {moment}, newest seen {seen}");

        // A file removed (in a subfolder, whose own time is set back afterwards too).
        let moment = fs_now(&scratch);
        std::fs::remove_file(folder.join("sub/b.dump")).unwrap();
        File::open(folder.join("sub"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let seen = store.inspect().mtime.unwrap();
        assert!(seen >= moment, "removed at {moment}, newest seen {seen}");
    }

    /// The newest point is read where it is: verifying it copies nothing (the place of the
    /// copy is taken by a file here, so a copy could not be made), and a file of it changed
    /// in place (same size and time) is found bad by what it holds.
    #[test]
    fn the_newest_point_of_a_folder_is_verified_in_place_without_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let dst = dir.path().join("dst");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/b.dump"), "b").unwrap();
        for (id, text) in [("p1", "a1"), ("p2", "a2")] {
            std::fs::write(src.join("a.dump"), text).unwrap();
            replicate(&src, &dst, id);
        }
        let store = TreeStore::new(&dst);
        let blocker = store.path("verify");
        std::fs::write(&blocker, "no copy here").unwrap();
        let v = |id: &str, good: bool| (id.to_string(), good);
        assert_eq!(store.verify(Some("p2")).unwrap(), [v("p2", true)]);
        assert_eq!(std::fs::read(&blocker).unwrap(), b"no copy here");
        assert_eq!(store.points().unwrap()[1].verified, Verified::Yes);

        rewrite_keeping_its_time(&dst.join("sub/b.dump"), "x");
        // Seen by its status change time (rot on the disk would not be: what verify reads).
        assert!(store.inspect().changed.is_some());
        assert_eq!(store.verify(Some("p2")).unwrap(), [v("p2", false)]);
        assert_eq!(store.points().unwrap()[1].verified, Verified::Bad);
    }
}
