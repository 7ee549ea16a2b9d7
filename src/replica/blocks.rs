//! Blocks, their hashes and the manifest of an image.
//!
//! A block's hash is the BLAKE3 chaining value of its bytes at its offset in the image (BLAKE3
//! is a tree of 1 KiB chunks, and a 64 KiB block at a 64 KiB boundary is one of its subtrees),
//! so the plain BLAKE3 of the whole image is the merge of the block hashes: a side that knows
//! the hashes of its blocks knows the hash of its image without reading it again.
//!
//! Pure functions and plain file reads; nothing here knows about hosts.

use std::fs::File;
use std::io;
use std::path::Path;

use blake3::hazmat::{HasherExt as _, Mode, merge_subtrees_non_root, merge_subtrees_root};

/// Block size: 64 KiB.
pub const BLOCK: usize = 64 * 1024;

/// The largest image replicated: 64 TiB. A stream or manifest announcing more is refused.
pub const MAX_IMAGE_SIZE: u64 = 64 << 40;

/// The length of the manifest of an image of [`MAX_IMAGE_SIZE`] bytes.
pub const MAX_MANIFEST_BYTES: u64 = 56 + 32 * MAX_IMAGE_SIZE.div_ceil(BLOCK as u64);

/// Blocks hashed at once (on all cores).
const BATCH: usize = 256;

/// A block's hash (its BLAKE3 chaining value).
pub type Cv = [u8; 32];

static ZERO: [u8; BLOCK] = [0; BLOCK];

/// Whether `data` holds only zero bytes.
pub fn is_zero(data: &[u8]) -> bool {
    // A slice comparison is a memcmp: fast even in an unoptimized build.
    data == &ZERO[..data.len()]
}

/// Number of blocks of an image of `size` bytes.
pub fn count(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64)
}

/// Length of block `idx` of an image of `size` bytes.
pub fn block_len(size: u64, idx: u64) -> usize {
    let start = idx * BLOCK as u64;
    (size.saturating_sub(start)).min(BLOCK as u64) as usize
}

/// The hash of block `idx` holding `data`.
pub fn cv(idx: u64, data: &[u8]) -> Cv {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(idx * BLOCK as u64);
    h.update(data);
    h.finalize_non_root()
}

/// Hashes consecutive blocks starting at `first`, held back to back in `buf`, on all cores.
pub fn cvs(first: u64, buf: &[u8]) -> Vec<Cv> {
    let blocks: Vec<&[u8]> = buf.chunks(BLOCK).collect();
    // Asked once: each ask reads the cgroup's files, and this runs for every read.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let threads = cores.min(blocks.len().max(1));
    if threads <= 1 {
        return blocks
            .iter()
            .enumerate()
            .map(|(i, b)| cv(first + i as u64, b))
            .collect();
    }
    let per = blocks.len().div_ceil(threads);
    let mut out = vec![[0u8; 32]; blocks.len()];
    std::thread::scope(|s| {
        for (part, (slots, group)) in out.chunks_mut(per).zip(blocks.chunks(per)).enumerate() {
            s.spawn(move || {
                for (i, (slot, b)) in slots.iter_mut().zip(group).enumerate() {
                    *slot = cv(first + (part * per + i) as u64, b);
                }
            });
        }
    });
    out
}

fn merge(cvs: &[Cv]) -> Cv {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let split = left_len(cvs.len());
    merge_subtrees_non_root(&merge(&cvs[..split]), &merge(&cvs[split..]), Mode::Hash)
}

/// BLAKE3's rule: the left subtree holds the largest power of two that leaves the right one
/// something.
fn left_len(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The BLAKE3 of an image of two blocks or more, from its block hashes. An image of one block
/// or none is its own hash (`blake3::hash`): there is no tree to merge.
pub fn root(cvs: &[Cv]) -> Option<[u8; 32]> {
    if cvs.len() < 2 {
        return None;
    }
    let split = left_len(cvs.len());
    Some(*merge_subtrees_root(&merge(&cvs[..split]), &merge(&cvs[split..]), Mode::Hash).as_bytes())
}

/// The block hashes of an image of `n` blocks with the BLAKE3 subtrees above them, laid out
/// flat: the `n` leaves, then the `n / 2` complete aligned pairs, then the `n / 4` groups of
/// four, and so on (level `l` holds `n >> l` nodes). Every complete aligned group of
/// `2^l` blocks is a node of BLAKE3's tree, so the whole-image hash needs only the few nodes
/// along the image's right edge, and a changed block only the nodes above it: an image whose
/// few blocks changed is hashed again in time that grows with what changed, not its size.
pub mod tree {
    use super::{Cv, Mode, left_len, merge_subtrees_non_root, merge_subtrees_root};
    use std::io;

    /// Where the nodes live: in memory, or in a file read and written node by node.
    pub trait Nodes {
        fn node(&mut self, i: usize) -> io::Result<Cv>;
        fn set_node(&mut self, i: usize, cv: Cv) -> io::Result<()>;
    }

    impl Nodes for [Cv] {
        fn node(&mut self, i: usize) -> io::Result<Cv> {
            Ok(self[i])
        }
        fn set_node(&mut self, i: usize, cv: Cv) -> io::Result<()> {
            self[i] = cv;
            Ok(())
        }
    }

    /// Nodes of the tree of `n` blocks (less than `2 n`).
    pub fn len(n: u64) -> u64 {
        (0..u64::BITS).map(|l| n >> l).sum()
    }

    /// Where level `l` starts.
    fn at(n: u64, l: u32) -> usize {
        (0..l).map(|j| (n >> j) as usize).sum()
    }

    fn parent(left: &Cv, right: &Cv) -> Cv {
        merge_subtrees_non_root(left, right, Mode::Hash)
    }

    /// The tree of the leaves `leaves`: them, then the levels above.
    pub fn of(mut leaves: Vec<Cv>) -> Vec<Cv> {
        let n = leaves.len() as u64;
        leaves.resize(len(n) as usize, [0; 32]);
        let mut below = 0;
        for l in 1..u64::BITS {
            let count = (n >> l) as usize;
            if count == 0 {
                break;
            }
            let here = below + (n >> (l - 1)) as usize;
            for i in 0..count {
                leaves[here + i] = parent(&leaves[below + 2 * i], &leaves[below + 2 * i + 1]);
            }
            below = here;
        }
        leaves
    }

    /// Walks the nodes above the leaves `changed` (in increasing order), level by level from
    /// the leaves up: `visit(nodes, index, what its two children give now)`; a visit that
    /// answers `false` ends the walk, which then answers `false`.
    fn walk_above<N: Nodes + ?Sized>(
        nodes: &mut N,
        n: u64,
        changed: &[u64],
        mut visit: impl FnMut(&mut N, usize, Cv) -> io::Result<bool>,
    ) -> io::Result<bool> {
        let mut level: Vec<u64> = changed.to_vec();
        let mut below = 0;
        for l in 1..u64::BITS {
            let count = n >> l;
            if count == 0 {
                break;
            }
            let here = below + (n >> (l - 1)) as usize;
            level = level
                .into_iter()
                .map(|i| i / 2)
                .filter(|i| *i < count)
                .collect();
            level.dedup();
            if level.is_empty() {
                break;
            }
            for &i in &level {
                let i = i as usize;
                let cv = parent(&nodes.node(below + 2 * i)?, &nodes.node(below + 2 * i + 1)?);
                if !visit(nodes, here + i, cv)? {
                    return Ok(false);
                }
            }
            below = here;
        }
        Ok(true)
    }

    /// Recomputes the nodes above the leaves `changed` (in increasing order).
    pub fn update(nodes: &mut (impl Nodes + ?Sized), n: u64, changed: &[u64]) -> io::Result<()> {
        walk_above(nodes, n, changed, |nodes, at, cv| {
            nodes.set_node(at, cv)?;
            Ok(true)
        })?;
        Ok(())
    }

    /// Whether every node [`update`] of the leaves `changed` (in increasing order) would
    /// compute again is, as stored, made of its two children as stored: read before the leaves
    /// change, a damaged node next to them (a leaf that rotted) would otherwise be built into
    /// the new hash.
    pub fn consistent_above(
        nodes: &mut (impl Nodes + ?Sized),
        n: u64,
        changed: &[u64],
    ) -> io::Result<bool> {
        walk_above(nodes, n, changed, |nodes, at, cv| Ok(nodes.node(at)? == cv))
    }

    /// The nodes that [`update`] of leaves within `ranges` (`[first, end)` block ranges, in
    /// increasing order) reads or writes, and [`root`] reads: ranges of node indexes in
    /// increasing order, so that a tree kept in a file can have them read ahead at once.
    pub fn touched(n: u64, ranges: &[(u64, u64)]) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        let mut push = |lo: usize, hi: usize| match out.last_mut() {
            Some((_, e)) if *e >= lo => *e = (*e).max(hi),
            _ => out.push((lo, hi)),
        };
        for l in 0..u64::BITS {
            let count = n >> l;
            if count == 0 {
                break;
            }
            let base = at(n, l);
            for &(a, b) in ranges.iter().filter(|(a, b)| a < b) {
                // Each node with its sibling, the pair its parent is made of.
                let lo = (a >> l) & !1;
                let hi = ((((b - 1) >> l) | 1) + 1).min(count);
                if lo < hi {
                    push(base + lo as usize, base + hi as usize);
                }
            }
            // The last node of the level: the image's right edge, which the root reads.
            push(base + count as usize - 1, base + count as usize);
        }
        out
    }

    /// The BLAKE3 of an image of `n` (two or more) blocks, from its tree; `None` for fewer
    /// (an image of one block is its own hash).
    pub fn root(nodes: &mut (impl Nodes + ?Sized), n: u64) -> io::Result<Option<[u8; 32]>> {
        if n < 2 {
            return Ok(None);
        }
        // The complete aligned group of `len` (a power of two) blocks from block `start`.
        let mut node =
            |start: u64, len: u64| nodes.node(at(n, len.trailing_zeros()) + (start / len) as usize);
        // BLAKE3's tree: the left subtree is the largest power of two that leaves the right
        // one something; the right one is split the same way, down to a complete group.
        let split = left_len(n as usize) as u64;
        let mut edge: Vec<(u64, u64)> = Vec::new();
        let (mut start, mut rest) = (split, n - split);
        while !rest.is_power_of_two() {
            let s = left_len(rest as usize) as u64;
            edge.push((start, s));
            start += s;
            rest -= s;
        }
        let mut right = node(start, rest)?;
        for (s, len) in edge.into_iter().rev() {
            right = parent(&node(s, len)?, &right);
        }
        let left = node(0, split)?;
        Ok(Some(
            *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes(),
        ))
    }
}

/// Reads the first `size` bytes of `file` in batches of blocks: `f(first block, bytes)` for
/// each. Each batch is mapped rather than read: the bytes are hashed straight from the page
/// cache, without a copy (half the time of reading an image that is in memory), and unmapped
/// before the next, so at most one batch is resident.
///
/// A file that changes while it is read gives blocks whose bytes may differ from what was
/// hashed a moment before; the recovery side's end-to-end check then refuses the update.
/// A file cut shorter than `size` while mapped, or a disk read error under the mapping, ends
/// the process (SIGBUS) before anything is committed; `explain_faults` words its last line.
/// The recovery side reads its own copy with [`read_blocks_copied`] instead.
pub fn read_blocks(
    file: &File,
    size: u64,
    mut f: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    for (idx, start, len) in batches(size) {
        // SAFETY: a read-only private mapping of `len` (> 0) bytes of `file` at a block-aligned
        // offset, read only while `map` lives and unmapped when it drops. The file may change
        // under it (bytes the end-to-end hash then refuses) or be cut short (SIGBUS, which
        // `explain_faults` turns into an error line); no reference to it outlives `map`.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(len)
                .map_copy_read_only(file)?
        };
        // A hint only.
        let _ = map.advise(memmap2::Advice::Sequential);
        f(idx, &map)?;
    }
    Ok(())
}

/// The batches of the first `size` bytes of a file: (first block, offset, length).
fn batches(size: u64) -> impl Iterator<Item = (u64, u64, usize)> {
    let step = (BLOCK * BATCH) as u64;
    (0..size.div_ceil(step)).map(move |k| {
        let start = k * step;
        (
            start / BLOCK as u64,
            start,
            (size - start).min(step) as usize,
        )
    })
}

/// Like [`read_blocks`], with `pread` into one reused buffer: for the recovery side's own
/// copy, where a read error (a bad sector) or a file cut short must come back as an error
/// naming the file, rather than end the process.
pub fn read_blocks_copied(
    file: &File,
    size: u64,
    mut f: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; size.min((BLOCK * BATCH) as u64) as usize];
    for (idx, start, len) in batches(size) {
        file.read_exact_at(&mut buf[..len], start).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(
                    e.kind(),
                    format!("shorter than {size} bytes: it changed while it was read"),
                )
            } else {
                e
            }
        })?;
        f(idx, &buf[..len])?;
    }
    Ok(())
}

/// The line written to standard error if the process faults (SIGBUS) on a mapped file: the
/// image was cut short or could not be read under its mapping. Each message set stays
/// allocated for the life of the process (the handler may read it at any time).
static FAULT_MESSAGE: std::sync::atomic::AtomicPtr<Vec<u8>> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());
/// Set by the first thread to fault: the others wait for its `_exit` without writing.
static FAULTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, a fault on a mapped file (SIGBUS, `BUS_ADRERR`) ends the process with exit 1
/// and `message` (one line) on standard error, instead of a bare signal death (exit 135).
/// Other causes of SIGBUS keep its default action.
pub fn explain_faults(message: &str) {
    use std::sync::atomic::Ordering;
    extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: only async-signal-safe calls (write, _exit, signal, raise, pause) and atomic
        // loads; `info` is the kernel's, valid during the handler; a message is never freed.
        unsafe {
            if info.is_null() || (*info).si_code != libc::BUS_ADRERR {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
                return;
            }
            if FAULTED.swap(true, Ordering::SeqCst) {
                loop {
                    libc::pause();
                }
            }
            let m = FAULT_MESSAGE.load(Ordering::SeqCst);
            if !m.is_null() {
                libc::write(2, (*m).as_ptr().cast(), (*m).len());
            }
            libc::_exit(1)
        }
    }
    let text = Box::new(format!("{}\n", message.trim_end()).into_bytes());
    FAULT_MESSAGE.store(Box::into_raw(text), Ordering::SeqCst);
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_fault as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

/// How long a file's times may stay as they are across a write: the kernel stamps them from a
/// clock that moves in ticks (a jiffy, 1 to 10 ms), and a write in the tick of the one before
/// leaves them unchanged (before Linux 6.13, which stamps a file just looked at finely).
pub const TIME_GRAIN: std::time::Duration = std::time::Duration::from_millis(20);

/// The tick of a file system that keeps times to the second or coarser (ext3, ext4 with small
/// inodes, FAT, some network file systems): times without nanoseconds are read so.
pub const COARSE_TIME_GRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// How far ahead of this machine's clock a file's time may be and still be of now (clocks
/// that differ a little, a file server's).
const AHEAD: std::time::Duration = std::time::Duration::from_secs(1);

/// The tick `m`'s times are kept to, as far as they show it.
fn grain_of(m: &std::fs::Metadata) -> std::time::Duration {
    use std::os::unix::fs::MetadataExt as _;
    if m.mtime_nsec() == 0 && m.ctime_nsec() == 0 {
        COARSE_TIME_GRAIN
    } else {
        TIME_GRAIN
    }
}

/// Whether `m`'s modification or status change time is within its tick of now (or a little
/// ahead of it): a write now could leave them as they are. A time far ahead is not of now: a
/// write now moves it.
pub fn written_just_now(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let now = std::time::SystemTime::now();
    let grain = grain_of(m);
    let at = |secs: i64, nsec: i64| {
        u64::try_from(secs).ok().and_then(|s| {
            std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(
                s,
                nsec.clamp(0, 999_999_999) as u32,
            ))
        })
    };
    [at(m.mtime(), m.mtime_nsec()), at(m.ctime(), m.ctime_nsec())]
        .into_iter()
        .flatten()
        .any(|t| match now.duration_since(t) {
            Ok(ago) => ago < grain,
            Err(ahead) => ahead.duration() <= AHEAD,
        })
}

/// A look at a file that a later look compares with ([`same_file_state`]), taken once its
/// times are a tick old ([`TIME_GRAIN`], [`COARSE_TIME_GRAIN`]), so that a write after it
/// moves them. A file written all along is looked at after its tick and a second at most: the
/// later look then finds it written.
pub fn settled_look(
    look: impl Fn() -> io::Result<std::fs::Metadata>,
) -> io::Result<std::fs::Metadata> {
    let began = std::time::Instant::now();
    loop {
        let m = look()?;
        if !written_just_now(&m) || began.elapsed() >= grain_of(&m) + AHEAD {
            return Ok(m);
        }
        std::thread::sleep(grain_of(&m).min(std::time::Duration::from_millis(100)));
    }
}

/// Whether two looks at a file saw it unwritten in between: the same file, size, and
/// modification and status change times (the status change time cannot be set back).
pub fn same_file_state(before: &std::fs::Metadata, after: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let state = |m: &std::fs::Metadata| {
        (
            m.dev(),
            m.ino(),
            m.len(),
            (m.mtime(), m.mtime_nsec()),
            (m.ctime(), m.ctime_nsec()),
        )
    };
    state(before) == state(after)
}

/// Runs `f` while the first byte of `path` is written again (its own value) at every read of
/// it and every 0.2 ms in between ([`super::rewriter::Rewriter`]): a file written all through
/// a read, whatever the machine's load.
#[cfg(test)]
pub(crate) fn written_all_through<T>(path: &Path, f: impl FnOnce() -> T) -> T {
    let writer = super::rewriter::Rewriter::start(path);
    let done = f();
    let written = writer.stop();
    // Written while `f` ran: during its reads, or before them, where a reader that looks at
    // the file first may see it written and read nothing (both are what is tested).
    assert!(
        written.in_reads > 0 || written.writes > 0,
        "never written while read: {written:?}"
    );
    done
}

/// BLAKE3 of a file, hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    hash_read(&mut File::open(path)?)
}

/// BLAKE3 of what `f` reads to its end, hex.
pub fn hash_read(f: &mut impl std::io::Read) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// What the recovery side knows of its copy: its size, the hash of every block and of the
/// whole image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub size: u64,
    pub whole: [u8; 32],
    pub cvs: Vec<Cv>,
}

const MAGIC: &[u8; 8] = b"RPRMAN1\n";

impl Manifest {
    /// The manifest of no copy: every block of the source differs from it.
    pub fn empty() -> Manifest {
        Manifest {
            size: 0,
            whole: *blake3::hash(b"").as_bytes(),
            cvs: Vec::new(),
        }
    }

    /// Reads and hashes the file at `path` (with `pread`: a read error is an error).
    pub fn of_file(path: &Path) -> io::Result<Manifest> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let mut all = Vec::with_capacity(count(size) as usize);
        let mut single = None;
        read_blocks_copied(&file, size, |first, buf| {
            if size <= BLOCK as u64 {
                single = Some(*blake3::hash(buf).as_bytes());
            }
            all.extend(cvs(first, buf));
            Ok(())
        })?;
        let whole = root(&all)
            .or(single)
            .unwrap_or(*blake3::hash(b"").as_bytes());
        Ok(Manifest {
            size,
            whole,
            cvs: all,
        })
    }

    /// What identifies this manifest, in hex: the BLAKE3 of its header (the size, and the
    /// whole-image hash, which is the root of the tree of every block hash: two manifests
    /// with the same header have the same block hashes). Read from the header alone, it costs
    /// the same for any size of image.
    pub fn digest(&self) -> String {
        digest(self.size, &self.whole)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(56 + self.cvs.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.whole);
        out.extend_from_slice(&(self.cvs.len() as u64).to_le_bytes());
        for c in &self.cvs {
            out.extend_from_slice(c);
        }
        out
    }

    /// Reads an encoded manifest from `r` to its end: the block hashes straight into their
    /// place (no copy of the whole), memory taken as they arrive, not as the header says.
    pub fn read(r: &mut impl io::Read) -> Result<Manifest, String> {
        let bad = |e: Option<io::Error>| match e {
            Some(e) if e.kind() != io::ErrorKind::UnexpectedEof => format!("reading it: {e}"),
            _ => "not a reprise manifest (truncated or damaged)".to_string(),
        };
        let mut h = [0u8; 56];
        r.read_exact(&mut h).map_err(|e| bad(Some(e)))?;
        let (size, whole) = read_header(&h).ok_or_else(|| bad(None))?;
        let n = count(size) as usize;
        let mut cvs: Vec<Cv> = Vec::new();
        while cvs.len() < n {
            let from = cvs.len();
            cvs.resize(n.min(from + (1 << 20)), [0; 32]);
            r.read_exact(cvs[from..].as_flattened_mut())
                .map_err(|e| bad(Some(e)))?;
        }
        let mut more = [0u8; 1];
        match r.read(&mut more) {
            Ok(0) => Ok(Manifest { size, whole, cvs }),
            Ok(_) => Err(bad(None)),
            Err(e) => Err(bad(Some(e))),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        let bad = || "not a reprise manifest (truncated or damaged)".to_string();
        if bytes.len() < 56 || &bytes[..8] != MAGIC {
            return Err(bad());
        }
        let size = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let whole: [u8; 32] = bytes[16..48].try_into().expect("32 bytes");
        let n = u64::from_le_bytes(bytes[48..56].try_into().expect("8 bytes"));
        let rest = &bytes[56..];
        if size > MAX_IMAGE_SIZE || n != count(size) || rest.len() as u64 != n * 32 {
            return Err(bad());
        }
        let cvs = rest
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        Ok(Manifest { size, whole, cvs })
    }
}

/// The header of the manifest of an image of `size` bytes whose BLAKE3 is `whole`.
pub fn header(size: u64, whole: &[u8; 32]) -> [u8; 56] {
    let mut h = [0u8; 56];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&size.to_le_bytes());
    h[16..48].copy_from_slice(whole);
    h[48..].copy_from_slice(&count(size).to_le_bytes());
    h
}

/// [`Manifest::digest`] of the manifest of an image of `size` bytes whose BLAKE3 is `whole`.
pub fn digest(size: u64, whole: &[u8; 32]) -> String {
    blake3::hash(&header(size, whole)).to_hex().to_string()
}

/// The size and whole-image hash of an encoded manifest's first 56 bytes.
pub fn read_header(bytes: &[u8]) -> Option<(u64, [u8; 32])> {
    if bytes.len() < 56 || &bytes[..8] != MAGIC {
        return None;
    }
    let size = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let n = u64::from_le_bytes(bytes[48..56].try_into().expect("8 bytes"));
    (size <= MAX_IMAGE_SIZE && n == count(size))
        .then(|| (size, bytes[16..48].try_into().expect("32 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written just now is looked at only once its times are a tick old: a write
    /// after that look moves them, where one in the tick of the last write would not. An old
    /// file's look is the first.
    #[test]
    fn a_file_written_just_now_is_looked_at_once_its_times_are_a_tick_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, [1u8; 4096]).unwrap();
        // Its time just ahead of now, as a file written in the tick of now looks, however
        // slowly this test runs.
        let soon = std::time::SystemTime::now() + std::time::Duration::from_millis(800);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(soon)
            .unwrap();
        let first = std::fs::metadata(&path).unwrap();
        assert!(written_just_now(&first), "just written");
        let looks = std::cell::Cell::new(0);
        let m = settled_look(|| {
            looks.set(looks.get() + 1);
            std::fs::metadata(&path)
        })
        .unwrap();
        assert!(!written_just_now(&m));
        assert!(looks.get() > 1, "looked at again");
        assert!(same_file_state(&m, &first), "nothing wrote it");
        looks.set(0);
        settled_look(|| {
            looks.set(looks.get() + 1);
            std::fs::metadata(&path)
        })
        .unwrap();
        assert_eq!(looks.get(), 1, "a tick old already: one look");
        // A time far ahead of the clock (a file copied with its times from a host whose clock
        // runs ahead) is not of now, once its status change is a tick old: a write now moves
        // it, and it is looked at once.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(later)
            .unwrap();
        let m = settled_look(|| std::fs::metadata(&path)).unwrap();
        assert!(!written_just_now(&m));
        looks.set(0);
        settled_look(|| {
            looks.set(looks.get() + 1);
            std::fs::metadata(&path)
        })
        .unwrap();
        assert_eq!(looks.get(), 1, "far ahead: one look");
    }

    /// A node next to the leaves about to change that is not made of its children (a leaf
    /// that rotted beside them, a node above them or beside those) is found before they
    /// change; one the update does not read is not.
    #[test]
    fn a_rotten_node_next_to_the_changed_leaves_is_found_before_they_change() {
        let leaves: Vec<Cv> = (0..38u64).map(|i| cv(i, &[i as u8; 100])).collect();
        let sound = tree::of(leaves);
        let rot = |i: usize| {
            let mut t = sound.clone();
            t[i][0] ^= 1;
            t
        };
        let consistent = |t: &mut Vec<Cv>| tree::consistent_above(&mut t[..], 38, &[5]).unwrap();
        assert!(consistent(&mut sound.clone()));
        assert!(!consistent(&mut rot(4)), "its sibling");
        assert!(!consistent(&mut rot(38 + 2)), "its parent");
        assert!(!consistent(&mut rot(38 + 3)), "its parent's sibling");
        // Leaves under a sibling node are not read: the update uses that node as stored.
        assert!(consistent(&mut rot(6)), "a leaf under its parent's sibling");
        assert!(consistent(&mut rot(30)), "a leaf away from it");
    }

    fn check_whole(size: usize) {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 1000) as u8).collect();
        let hashes = cvs(0, &data);
        assert_eq!(hashes.len() as u64, count(size as u64));
        let expected = *blake3::hash(&data).as_bytes();
        match root(&hashes) {
            Some(r) => assert_eq!(r, expected, "size {size}"),
            None => assert!(size <= BLOCK),
        }
    }

    #[test]
    fn the_whole_hash_is_plain_blake3_of_the_image() {
        for size in [
            BLOCK + 1,
            2 * BLOCK,
            3 * BLOCK - 5,
            5 * BLOCK,
            7 * BLOCK + 1024,
            9 * BLOCK + 3,
        ] {
            check_whole(size);
        }
    }

    #[test]
    fn a_file_read_in_several_batches_gives_every_block_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let size = 2 * BATCH * BLOCK + 3 * BLOCK + 100;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let mut seen = Vec::new();
        read_blocks(&File::open(&p).unwrap(), size as u64, |first, bytes| {
            assert_eq!(first as usize * BLOCK, seen.len());
            seen.extend_from_slice(bytes);
            Ok(())
        })
        .unwrap();
        assert!(seen == data, "the batches do not give back the file");
        // Read with pread, the same blocks in the same batches.
        let mut copied = Vec::new();
        read_blocks_copied(&File::open(&p).unwrap(), size as u64, |first, bytes| {
            assert_eq!(first as usize * BLOCK, copied.len());
            assert!(bytes.len() <= BATCH * BLOCK);
            copied.extend_from_slice(bytes);
            Ok(())
        })
        .unwrap();
        assert!(
            copied == data,
            "the copied batches do not give back the file"
        );
        // A file shorter than expected is an error that says so, not a fault.
        let err = read_blocks_copied(&File::open(&p).unwrap(), size as u64 + 1, |_, _| Ok(()))
            .unwrap_err();
        assert!(err.to_string().contains("shorter than"), "{err}");
        let m = Manifest::of_file(&p).unwrap();
        assert_eq!(m.whole, *blake3::hash(&data).as_bytes());
        assert_eq!(m.cvs.len(), 2 * BATCH + 4);
        // An empty file has no batch at all.
        std::fs::write(&p, b"").unwrap();
        read_blocks(&File::open(&p).unwrap(), 0, |_, _| panic!("no block")).unwrap();
    }

    #[test]
    fn a_manifest_survives_encoding_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![3u8; 3 * BLOCK + 10]).unwrap();
        let m = Manifest::of_file(&p).unwrap();
        assert_eq!(
            m.whole,
            *blake3::hash(&std::fs::read(&p).unwrap()).as_bytes()
        );
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert!(Manifest::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Manifest::decode(b"garbage").is_err());
        assert_eq!(Manifest::read(&mut &bytes[..]).unwrap(), m);
        assert!(Manifest::read(&mut &bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Manifest::read(&mut &longer[..]).is_err());
        assert!(Manifest::read(&mut &b"garbage"[..]).is_err());
        // The digest is of the header, which the whole hash makes unique.
        assert_eq!(m.digest(), digest(m.size, &m.whole));
        assert_eq!(read_header(&bytes), Some((m.size, m.whole)));
        let other = Manifest::of_file(&{
            std::fs::write(&p, vec![4u8; 3 * BLOCK + 10]).unwrap();
            p.clone()
        })
        .unwrap();
        assert_ne!(other.digest(), m.digest());
    }

    #[test]
    fn the_tree_gives_the_whole_hash_and_follows_changed_blocks() {
        for n in [2u64, 3, 4, 5, 7, 8, 9, 31, 64, 100, 257] {
            let mut data: Vec<u8> = (0..n as usize * BLOCK)
                .map(|i| (i * 13 + i / 4000) as u8)
                .collect();
            let leaves = cvs(0, &data);
            let mut nodes = tree::of(leaves.clone());
            assert_eq!(nodes.len() as u64, tree::len(n));
            let whole = Some(*blake3::hash(&data).as_bytes());
            assert_eq!(tree::root(&mut nodes[..], n).unwrap(), whole);
            assert_eq!(root(&leaves), whole, "{n} blocks");
            // Some blocks change: only the nodes above them are computed again.
            let mut changed = vec![0, n / 3, n / 2, n - 1];
            changed.dedup();
            for &b in &changed {
                data[b as usize * BLOCK + 5] ^= 0x5a;
                nodes[b as usize] = cv(b, &data[b as usize * BLOCK..(b as usize + 1) * BLOCK]);
            }
            tree::update(&mut nodes[..], n, &changed).unwrap();
            assert_eq!(
                tree::root(&mut nodes[..], n).unwrap(),
                Some(*blake3::hash(&data).as_bytes()),
                "{n} blocks, {changed:?} changed"
            );
            let fresh = tree::of(nodes[..n as usize].to_vec());
            assert!(fresh == nodes, "{n} blocks: the update left a node stale");
        }
        assert_eq!(tree::root(&mut [[1; 32]][..], 1).unwrap(), None);
        assert_eq!(tree::len(1), 1);
        assert_eq!(tree::len(5), 5 + 2 + 1);
    }

    #[test]
    fn the_nodes_read_ahead_are_every_node_an_update_and_the_root_touch() {
        // Nodes in memory that record which ones are read or written.
        struct Seen(Vec<Cv>, std::collections::BTreeSet<usize>);
        impl tree::Nodes for Seen {
            fn node(&mut self, i: usize) -> std::io::Result<Cv> {
                self.1.insert(i);
                Ok(self.0[i])
            }
            fn set_node(&mut self, i: usize, cv: Cv) -> std::io::Result<()> {
                self.1.insert(i);
                self.0[i] = cv;
                Ok(())
            }
        }
        for n in [2u64, 3, 5, 7, 8, 9, 31, 64, 100, 257, 1000] {
            for ranges in [
                vec![(0, 1)],
                vec![(n - 1, n)],
                vec![(1, 2), (n / 3, n / 3 + 3), (n / 2, n)],
                vec![(0, n)],
            ] {
                let leaves: Vec<Cv> = (0..n).map(|i| [i as u8; 32]).collect();
                let mut t = Seen(tree::of(leaves), Default::default());
                let changed: Vec<u64> = ranges.iter().flat_map(|&(a, b)| a..b).collect();
                for &b in &changed {
                    t.0[b as usize] = [0xee; 32];
                    t.1.insert(b as usize);
                }
                tree::update(&mut t, n, &changed).unwrap();
                tree::root(&mut t, n).unwrap();
                let spans = tree::touched(n, &ranges);
                assert!(spans.windows(2).all(|w| w[0].1 < w[1].0), "{spans:?}");
                for i in &t.1 {
                    assert!(
                        spans.iter().any(|(lo, hi)| lo <= i && i < hi),
                        "{n} blocks, {ranges:?}: node {i} not in {spans:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn zero_blocks_are_seen() {
        assert!(is_zero(&[0; 100]));
        assert!(!is_zero(&[0, 0, 1]));
        assert_eq!(block_len(BLOCK as u64 + 5, 1), 5);
        assert_eq!(block_len(BLOCK as u64, 1), 0);
    }
}
