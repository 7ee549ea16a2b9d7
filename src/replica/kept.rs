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

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::blocks::{self, Cv, Manifest, tree};
use super::nodes::{self, NodeFile};

/// A complete kept manifest starts with this, then the size, the whole-image hash and the
/// number of blocks (as a manifest), then the tree's nodes ([`nodes`]).
const MAGIC: &[u8; 8] = b"RPRKEPT1";
/// What an update under way writes first: a kept manifest cut there is not used.
const UPDATING: &[u8; 8] = b"RPRKEPT-";

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
        w.write_all(&nodes::header(MAGIC, size, whole))?;
        w.write_all(nodes.as_flattened())?;
        // Durable before it is found under its name (see `finish`).
        w.into_inner().map_err(|e| e.into_error())?.sync_all()
    });
    if written.is_err() || std::fs::rename(&tmp, &path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// A kept manifest, open and locked against another replication of the same image, read and
/// written node by node.
pub struct Kept {
    tree: NodeFile,
    pub size: u64,
    pub whole: [u8; 32],
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
        // One that cannot be read is not used: the recovery manifest is sent instead.
        let Ok(Some(tree)) = NodeFile::read(file, &path, &[MAGIC]) else {
            return Ok(None);
        };
        if blocks::digest(tree.size, &tree.whole) != digest {
            return Ok(None);
        }
        Ok(Some(Kept {
            size: tree.size,
            whole: tree.whole,
            tree,
            updating: false,
        }))
    }

    fn err(&self, e: io::Error) -> String {
        format!("{}: {e}", self.tree.path().display())
    }

    /// The whole manifest (its block hashes read in one go).
    pub fn manifest(&self) -> Result<Manifest, String> {
        Ok(Manifest {
            size: self.size,
            whole: self.whole,
            cvs: self.leaves(0, self.tree.blocks() as usize)?,
        })
    }

    /// The hashes of blocks `first..first + count`.
    pub fn leaves(&self, first: u64, count: usize) -> Result<Vec<Cv>, String> {
        self.tree.leaves(first, count).map_err(|e| self.err(e))
    }

    /// Asks the kernel to read ahead the nodes an update of the blocks within `ranges`
    /// touches ([`NodeFile::read_ahead`]).
    pub fn read_ahead(&self, ranges: &[(u64, u64)]) {
        self.tree.read_ahead(ranges);
    }

    /// Writes the new whole-image hash: the kept manifest is complete again.
    /// The nodes are durable before the header that makes them trusted: a kept manifest whose
    /// header survived a power cut but not its nodes would make the source skip a block the
    /// recovery copy lacks and claim the copy's own whole hash (wrong data, unseen).
    pub fn finish(self, whole: &[u8; 32]) -> Result<(), String> {
        for (at, run) in self.tree.runs() {
            self.tree.write_at(&run, at).map_err(|e| self.err(e))?;
        }
        self.tree.file().sync_data().map_err(|e| self.err(e))?;
        self.tree
            .write_at(&nodes::header(MAGIC, self.size, whole), 0)
            .map_err(|e| self.err(e))?;
        self.tree.file().sync_data().map_err(|e| self.err(e))
    }
}

impl tree::Nodes for Kept {
    fn node(&mut self, i: usize) -> io::Result<Cv> {
        self.tree.node(i)
    }

    fn set_node(&mut self, i: usize, cv: Cv) -> io::Result<()> {
        if !self.updating {
            // Before any node changes, durably: a kept manifest cut from here on is not used.
            self.tree.write_at(UPDATING, 0)?;
            self.tree.file().sync_data()?;
            self.updating = true;
        }
        self.tree.set_node(i, cv)
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
