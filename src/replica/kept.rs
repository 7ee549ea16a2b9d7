//! The manifests the source keeps of what it last sent, one per image, beside the helpers: the
//! next replication sends the recovery manifest's digest instead of the manifest when the
//! source kept that very one. A kept manifest holds the tree of block hashes (see
//! [`blocks::tree`]), so that a replication that reads only the blocks a dirty bitmap marks
//! reads, writes and hashes only the nodes above them, in place, whatever the size of the
//! disk.
//!
//! Only a cache: a kept manifest that is missing, damaged or cut by a crash is not used (its
//! header says so, or its digest differs) and the recovery manifest is sent instead. Its
//! hashes are never trusted beyond that: the recovery side checks the whole-image hash of
//! every update against its own.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::blocks::{self, Cv, Manifest, tree};

/// A complete kept manifest starts with this, then the size, the whole-image hash and the
/// number of blocks (as a manifest), then the tree's nodes.
const MAGIC: &[u8; 8] = b"RPRKEPT1";
/// What an update under way writes first: a kept manifest cut there is not used.
const UPDATING: &[u8; 8] = b"RPRKEPT-";
const HEADER: u64 = 56;

/// Where the source keeps them (beside the helpers).
pub fn dir() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/reprise/manifests"))
}

/// The file of `dir` that keeps the manifest last sent of `image`.
fn path(dir: &Path, image: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    dir.join(blake3::hash(image.as_os_str().as_bytes()).to_hex().as_str())
}

fn header(magic: &[u8; 8], size: u64, whole: &[u8; 32]) -> [u8; 56] {
    let mut h = blocks::header(size, whole);
    h[..8].copy_from_slice(magic);
    h
}

/// Keeps the tree `nodes` of an image of `size` bytes whose BLAKE3 is `whole` as the manifest
/// last sent of `image` (best effort: written whole, then renamed; one that cannot be kept
/// only costs sending the manifest next time).
pub fn keep(dir: Option<&Path>, image: &Path, size: u64, whole: &[u8; 32], nodes: &[Cv]) {
    use std::io::Write as _;
    let Some(dir) = dir else {
        return;
    };
    let path = path(dir, image);
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = path.with_extension("tmp");
    let written = File::create(&tmp).and_then(|f| {
        let mut w = io::BufWriter::with_capacity(1 << 20, f);
        w.write_all(&header(MAGIC, size, whole))?;
        w.write_all(nodes.as_flattened())?;
        w.flush()
    });
    if written.is_err() || std::fs::rename(&tmp, &path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// A kept manifest, open and locked against another replication of the same image, read and
/// written node by node.
pub struct Kept {
    file: File,
    path: PathBuf,
    pub size: u64,
    pub whole: [u8; 32],
    n: u64,
    read: HashMap<usize, Cv>,
    written: BTreeMap<usize, Cv>,
    updating: bool,
}

impl Kept {
    /// The manifest kept for `image`, when its digest ([`Manifest::digest`]) is `digest`.
    pub fn open(dir: Option<&Path>, image: &Path, digest: &str) -> Result<Option<Kept>, String> {
        let Some(dir) = dir else {
            return Ok(None);
        };
        let path = path(dir, image);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(_) => return Ok(None),
        };
        let err = |e: io::Error| format!("{}: {e}", path.display());
        lock(&file).map_err(err)?;
        let mut h = [0u8; HEADER as usize];
        if file.read_exact_at(&mut h, 0).is_err() || &h[..8] != MAGIC {
            return Ok(None);
        }
        h[..8].copy_from_slice(b"RPRMAN1\n");
        let Some((size, whole)) = blocks::read_header(&h) else {
            return Ok(None);
        };
        let n = blocks::count(size);
        let len = file.metadata().map_err(err)?.len();
        if blocks::digest(size, &whole) != digest || len != HEADER + 32 * tree::len(n) {
            return Ok(None);
        }
        Ok(Some(Kept {
            file,
            path,
            size,
            whole,
            n,
            read: HashMap::new(),
            written: BTreeMap::new(),
            updating: false,
        }))
    }

    fn err(&self, e: io::Error) -> String {
        format!("{}: {e}", self.path.display())
    }

    /// The whole manifest (its block hashes read in one go).
    pub fn manifest(&self) -> Result<Manifest, String> {
        Ok(Manifest {
            size: self.size,
            whole: self.whole,
            cvs: self.leaves(0, self.n as usize)?,
        })
    }

    /// The hashes of blocks `first..first + count`.
    pub fn leaves(&self, first: u64, count: usize) -> Result<Vec<Cv>, String> {
        let mut out = vec![[0u8; 32]; count];
        self.file
            .read_exact_at(out.as_flattened_mut(), HEADER + 32 * first)
            .map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// Asks the kernel to read ahead the pages of the nodes an update of the blocks within
    /// `ranges` (`[first, end)`, in increasing order) reads and writes, all at once, so that
    /// the node-by-node reads that follow find them in memory instead of waiting for the
    /// disk one page after the other. Only a hint: nothing is read here.
    pub fn read_ahead(&self, ranges: &[(u64, u64)]) {
        use std::os::fd::AsRawFd as _;
        const PAGE: u64 = 4096;
        // Pages closer than this are asked in one go: one larger read costs about what a
        // small one does, and the lower levels of many changed blocks become few long reads.
        const GAP: u64 = 16 * PAGE;
        let mut asked: Option<(u64, u64)> = None;
        let ask = |(from, to): (u64, u64)| {
            // SAFETY: a hint on a descriptor this borrows, no memory involved.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    from as libc::off_t,
                    (to - from) as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
            };
        };
        for (lo, hi) in tree::touched(self.n, ranges) {
            let from = (HEADER + 32 * lo as u64) / PAGE * PAGE;
            let to = (HEADER + 32 * hi as u64).div_ceil(PAGE) * PAGE;
            asked = match asked {
                Some((f, t)) if from <= t + GAP => Some((f, t.max(to))),
                Some(a) => {
                    ask(a);
                    Some((from, to))
                }
                None => Some((from, to)),
            };
        }
        if let Some(a) = asked {
            ask(a);
        }
        // The header, rewritten first.
        ask((0, PAGE));
    }

    /// Writes the new whole-image hash: the kept manifest is complete again.
    pub fn finish(mut self, whole: &[u8; 32]) -> Result<(), String> {
        let mut run: Vec<u8> = Vec::new();
        let mut start = 0usize;
        let written = std::mem::take(&mut self.written);
        for (&i, cv) in &written {
            if start + run.len() / 32 != i {
                self.flush_run(start, &run)?;
                run.clear();
                start = i;
            }
            run.extend_from_slice(cv);
        }
        self.flush_run(start, &run)?;
        self.file
            .write_all_at(&header(MAGIC, self.size, whole), 0)
            .map_err(|e| self.err(e))
    }

    fn flush_run(&self, start: usize, run: &[u8]) -> Result<(), String> {
        if run.is_empty() {
            return Ok(());
        }
        self.file
            .write_all_at(run, HEADER + 32 * start as u64)
            .map_err(|e| self.err(e))
    }
}

impl tree::Nodes for Kept {
    fn node(&mut self, i: usize) -> io::Result<Cv> {
        if let Some(cv) = self.written.get(&i).or_else(|| self.read.get(&i)) {
            return Ok(*cv);
        }
        let mut cv = [0u8; 32];
        self.file.read_exact_at(&mut cv, HEADER + 32 * i as u64)?;
        self.read.insert(i, cv);
        Ok(cv)
    }

    fn set_node(&mut self, i: usize, cv: Cv) -> io::Result<()> {
        if !self.updating {
            // Before any node changes: a kept manifest cut from here on is not used.
            self.file.write_all_at(UPDATING, 0)?;
            self.updating = true;
        }
        self.written.insert(i, cv);
        Ok(())
    }
}

/// Takes `file`'s exclusive lock, waiting for another replication of the same image.
fn lock(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    loop {
        // SAFETY: flock on a descriptor this function borrows, no memory involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::blocks::tree::Nodes as _;

    #[test]
    fn a_kept_manifest_is_found_by_its_digest_and_updated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let kept = Some(dir.path().join("kept"));
        let kept = kept.as_deref();
        let img = dir.path().join("a.img");
        let leaves: Vec<Cv> = (0..5u8).map(|i| [i; 32]).collect();
        let nodes = tree::of(leaves.clone());
        let whole = tree::root(&mut nodes.clone()[..], 5).unwrap().unwrap();
        let size = 5 * blocks::BLOCK as u64;
        keep(kept, &img, size, &whole, &nodes);
        let digest = blocks::digest(size, &whole);
        assert!(Kept::open(kept, &img, "00").unwrap().is_none());
        let other = dir.path().join("b.img");
        assert!(Kept::open(kept, &other, &digest).unwrap().is_none());
        let mut k = Kept::open(kept, &img, &digest).unwrap().unwrap();
        assert_eq!(k.manifest().unwrap().cvs, leaves);
        // One block changes: only the nodes above it are written.
        k.set_node(3, [9; 32]).unwrap();
        tree::update(&mut k, 5, &[3]).unwrap();
        let new_whole = tree::root(&mut k, 5).unwrap().unwrap();
        let mut expected_leaves = leaves.clone();
        expected_leaves[3] = [9; 32];
        let expected = tree::of(expected_leaves.clone());
        assert_eq!(
            Some(new_whole),
            tree::root(&mut expected.clone()[..], 5).unwrap()
        );
        // Cut before it finished: not used.
        drop(k);
        assert!(Kept::open(kept, &img, &digest).unwrap().is_none());
        keep(kept, &img, size, &whole, &nodes);
        let mut k = Kept::open(kept, &img, &digest).unwrap().unwrap();
        k.set_node(3, [9; 32]).unwrap();
        tree::update(&mut k, 5, &[3]).unwrap();
        k.finish(&new_whole).unwrap();
        assert!(Kept::open(kept, &img, &digest).unwrap().is_none());
        let new_digest = blocks::digest(size, &new_whole);
        let k = Kept::open(kept, &img, &new_digest).unwrap().unwrap();
        assert_eq!(k.manifest().unwrap().cvs, expected_leaves);
        let on_disk = std::fs::read(path(kept.unwrap(), &img)).unwrap();
        assert_eq!(&on_disk[56..], expected.as_flattened());
    }
}
