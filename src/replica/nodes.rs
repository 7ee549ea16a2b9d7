//! A tree of block hashes ([`blocks::tree`]) kept in a file, read and written node by node:
//! a 56-byte header (a magic of 8 bytes, then the size, the whole-image hash and the number of
//! blocks, as a manifest's), then every node of the tree, leaves first. The source keeps the
//! manifest it last sent this way ([`super::kept`]), the recovery side the manifest of its copy
//! ([`super::store`]): an update of a few blocks reads and writes only the nodes above them.
//!
//! Only the file's layout and its node-by-node access: which magic says what, when the header
//! is rewritten and what is synced are the owner's to decide. Nothing is written to the file
//! here except by [`NodeFile::write_at`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::blocks::{self, Cv, tree};

/// Bytes before the first node.
pub const HEADER: u64 = 56;

/// The length of the file of the tree of an image of `size` bytes.
pub fn file_len(size: u64) -> u64 {
    HEADER + 32 * tree::len(blocks::count(size))
}

/// The header of the file of the tree of an image of `size` bytes whose BLAKE3 is `whole`.
pub fn header(magic: &[u8; 8], size: u64, whole: &[u8; 32]) -> [u8; 56] {
    let mut h = blocks::header(size, whole);
    h[..8].copy_from_slice(magic);
    h
}

/// The size and whole-image hash of a header that starts with one of `magics`, and which of
/// them; `None` for any other.
pub fn read_header(h: &[u8; 56], magics: &[&[u8; 8]]) -> Option<(usize, u64, [u8; 32])> {
    let which = magics.iter().position(|m| h[..8] == m[..])?;
    let mut plain = *h;
    plain[..8].copy_from_slice(&blocks::header(0, &[0; 32])[..8]);
    let (size, whole) = blocks::read_header(&plain)?;
    Some((which, size, whole))
}

/// A tree kept in a file, open. Nodes set through [`tree::Nodes`] are held in memory until
/// [`NodeFile::write_at`] is asked for them.
pub struct NodeFile {
    file: File,
    path: PathBuf,
    /// Which of the magics it was opened with its header starts with.
    pub magic: usize,
    pub size: u64,
    pub whole: [u8; 32],
    n: u64,
    /// Runs of nodes read by [`NodeFile::load`]: (first node, its nodes), in increasing order,
    /// apart.
    loaded: Vec<(usize, Vec<Cv>)>,
    read: HashMap<usize, Cv>,
    written: BTreeMap<usize, Cv>,
    /// Nodes read one by one (not found in what [`NodeFile::load`] read).
    singles: u64,
}

/// Nodes of a load closer than this are read in one run with those between them: a read of a
/// few more bytes costs about what a read does (4 KiB, a page of nodes).
const RUN_GAP: usize = 128;

/// `ranges` of node indexes (`[lo, hi)`, in increasing order) joined where less than `gap`
/// nodes apart: the runs that read them all, in increasing order.
fn runs_of(ranges: impl IntoIterator<Item = (usize, usize)>, gap: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (lo, hi) in ranges {
        if lo >= hi {
            continue;
        }
        match out.last_mut() {
            Some((_, e)) if lo <= *e + gap => *e = (*e).max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

impl NodeFile {
    /// The tree in `file` (at `path`), when its header starts with one of `magics` and its
    /// length is that of the tree its header announces; `None` otherwise.
    pub fn read(file: File, path: &Path, magics: &[&[u8; 8]]) -> io::Result<Option<NodeFile>> {
        let mut h = [0u8; HEADER as usize];
        match file.read_exact_at(&mut h, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let Some((magic, size, whole)) = read_header(&h, magics) else {
            return Ok(None);
        };
        if file.metadata()?.len() != file_len(size) {
            return Ok(None);
        }
        Ok(Some(NodeFile {
            file,
            path: path.to_path_buf(),
            magic,
            size,
            whole,
            n: blocks::count(size),
            loaded: Vec::new(),
            read: HashMap::new(),
            written: BTreeMap::new(),
            singles: 0,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Blocks of the image.
    pub fn blocks(&self) -> u64 {
        self.n
    }

    /// The hashes of blocks `first..first + count`, as the file holds them (one read).
    pub fn leaves(&self, first: u64, count: usize) -> io::Result<Vec<Cv>> {
        let mut out = vec![[0u8; 32]; count];
        self.file
            .read_exact_at(out.as_flattened_mut(), HEADER + 32 * first)?;
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

    /// Reads the nodes an update of the blocks within `ranges` (`[first, end)`, in increasing
    /// order) reads and writes, and the root reads ([`tree::touched`]), in runs: one read for
    /// nodes less than a page apart, instead of one for each node (a change of 0.1% of a
    /// 64 GiB image walks about 10,000 nodes). Their pages are asked of the kernel at once
    /// first ([`Self::read_ahead`]). Replaces what an earlier load read; memory: the nodes
    /// touched and those between them, at most the whole tree.
    pub fn load(&mut self, ranges: &[(u64, u64)]) -> io::Result<()> {
        self.read_ahead(ranges);
        self.loaded.clear();
        for (lo, hi) in runs_of(tree::touched(self.n, ranges), RUN_GAP) {
            let mut run = vec![[0u8; 32]; hi - lo];
            self.file
                .read_exact_at(run.as_flattened_mut(), HEADER + 32 * lo as u64)?;
            self.loaded.push((lo, run));
        }
        Ok(())
    }

    /// Nodes read one by one since the file was opened: not found among those loaded.
    pub fn singles(&self) -> u64 {
        self.singles
    }

    fn loaded(&self, i: usize) -> Option<Cv> {
        let k = self
            .loaded
            .partition_point(|(lo, _)| *lo <= i)
            .checked_sub(1)?;
        let (lo, run) = &self.loaded[k];
        run.get(i - lo).copied()
    }

    /// The nodes set since the file was read, as runs of consecutive nodes: (offset in the
    /// file, bytes), in increasing order.
    pub fn runs(&self) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next = usize::MAX;
        for (&i, cv) in &self.written {
            match out.last_mut() {
                Some((_, run)) if i == next => run.extend_from_slice(cv),
                _ => out.push((HEADER + 32 * i as u64, cv.to_vec())),
            }
            next = i + 1;
        }
        out
    }

    /// Writes `bytes` at `at` (a run of [`Self::runs`], or a header).
    pub fn write_at(&self, bytes: &[u8], at: u64) -> io::Result<()> {
        self.file.write_all_at(bytes, at)
    }
}

impl tree::Nodes for NodeFile {
    fn node(&mut self, i: usize) -> io::Result<Cv> {
        if let Some(cv) = self.written.get(&i) {
            return Ok(*cv);
        }
        if let Some(cv) = self.loaded(i).or_else(|| self.read.get(&i).copied()) {
            return Ok(cv);
        }
        self.singles += 1;
        let mut cv = [0u8; 32];
        self.file.read_exact_at(&mut cv, HEADER + 32 * i as u64)?;
        self.read.insert(i, cv);
        Ok(cv)
    }

    fn set_node(&mut self, i: usize, cv: Cv) -> io::Result<()> {
        self.written.insert(i, cv);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::blocks::tree::Nodes as _;

    #[test]
    fn nodes_set_stay_in_memory_until_written_as_runs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let leaves: Vec<Cv> = (0..9u8).map(|i| [i; 32]).collect();
        let nodes = tree::of(leaves);
        let size = 9 * blocks::BLOCK as u64 - 3;
        let mut bytes = header(b"TESTMAG\n", size, &[7; 32]).to_vec();
        bytes.extend_from_slice(nodes.as_flattened());
        std::fs::write(&p, &bytes).unwrap();
        assert!(
            NodeFile::read(File::open(&p).unwrap(), &p, &[b"OTHERMG\n"])
                .unwrap()
                .is_none()
        );
        let mut t = NodeFile::read(File::open(&p).unwrap(), &p, &[b"OTHERMG\n", b"TESTMAG\n"])
            .unwrap()
            .unwrap();
        assert_eq!(
            (t.magic, t.size, t.whole, t.blocks()),
            (1, size, [7; 32], 9)
        );
        assert_eq!(t.leaves(2, 3).unwrap(), nodes[2..5]);
        t.set_node(3, [0xee; 32]).unwrap();
        t.set_node(4, [0xdd; 32]).unwrap();
        t.set_node(9, [0xcc; 32]).unwrap();
        assert_eq!(t.node(3).unwrap(), [0xee; 32]);
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "nothing written yet");
        let runs = t.runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].0, HEADER + 3 * 32);
        assert_eq!(runs[0].1, [[0xee; 32], [0xdd; 32]].as_flattened());
        assert_eq!(runs[1], (HEADER + 9 * 32, vec![0xcc; 32]));
        // A file of the wrong length is not a tree.
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(
            NodeFile::read(File::open(&p).unwrap(), &p, &[b"TESTMAG\n"])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn near_ranges_are_read_in_one_run() {
        assert_eq!(runs_of([], 4), vec![]);
        assert_eq!(
            runs_of([(0, 2), (2, 3), (7, 8), (13, 14), (14, 14), (20, 30)], 4),
            vec![(0, 8), (13, 14), (20, 30)]
        );
        assert_eq!(runs_of([(0, 10), (3, 5), (9, 12)], 0), vec![(0, 12)]);
    }

    /// A file holding the tree of `n` leaves, and that tree.
    fn tree_file(dir: &Path, n: u64) -> (PathBuf, Vec<Cv>) {
        let p = dir.join(format!("t{n}"));
        let leaves: Vec<Cv> = (0..n).map(|i| blocks::cv(i, &i.to_le_bytes())).collect();
        let nodes = tree::of(leaves);
        let mut bytes = header(b"TESTMAG\n", n * blocks::BLOCK as u64, &[7; 32]).to_vec();
        bytes.extend_from_slice(nodes.as_flattened());
        std::fs::write(&p, &bytes).unwrap();
        (p, nodes)
    }

    #[test]
    fn loaded_nodes_are_those_read_one_by_one_and_serve_the_whole_update() {
        let dir = tempfile::tempdir().unwrap();
        let open = |p: &Path| {
            NodeFile::read(File::open(p).unwrap(), p, &[b"TESTMAG\n"])
                .unwrap()
                .unwrap()
        };
        // Levels of odd lengths, an exact power of two, one over it; changes at the first
        // block, the last, next to each other, far apart, and runs wider than the gap.
        for n in [2u64, 3, 9, 255, 1024, 1025, 5000] {
            let (p, nodes) = tree_file(dir.path(), n);
            let mut sets: Vec<Vec<u64>> = vec![vec![0], vec![n - 1], vec![0, n - 1]];
            if n > 8 {
                sets.push(vec![1, 2, 3, n / 2, n - 2, n - 1]);
                sets.push((0..n).step_by(7).collect());
                sets.push((n / 3..n).collect());
            }
            for changed in sets {
                let mut ranges: Vec<(u64, u64)> = Vec::new();
                for &i in &changed {
                    match ranges.last_mut() {
                        Some((_, e)) if *e == i => *e += 1,
                        _ => ranges.push((i, i + 1)),
                    }
                }
                let mut loaded = open(&p);
                loaded.load(&ranges).unwrap();
                let mut single = open(&p);
                for (lo, hi) in tree::touched(n, &ranges) {
                    for (i, cv) in nodes.iter().enumerate().take(hi).skip(lo) {
                        assert_eq!(loaded.loaded(i), Some(*cv), "n {n}, node {i}");
                        assert_eq!(single.node(i).unwrap(), *cv);
                    }
                }
                // The check, the update and the root read nothing more, and give what the
                // tree in memory gives.
                let mut mem = nodes.clone();
                assert!(tree::consistent_above(&mut loaded, n, &changed).unwrap());
                for &i in &changed {
                    let cv = [i as u8 ^ 0x5a; 32];
                    loaded.set_node(i as usize, cv).unwrap();
                    mem[i as usize] = cv;
                }
                tree::update(&mut loaded, n, &changed).unwrap();
                tree::update(&mut mem[..], n, &changed).unwrap();
                assert_eq!(
                    tree::root(&mut loaded, n).unwrap(),
                    tree::root(&mut mem[..], n).unwrap()
                );
                assert_eq!(loaded.singles(), 0, "n {n}, changed {changed:?}");
                for (at, run) in loaded.runs() {
                    let i = ((at - HEADER) / 32) as usize;
                    assert_eq!(run, mem[i..i + run.len() / 32].as_flattened());
                }
            }
        }
    }
}
