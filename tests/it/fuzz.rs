//! Fuzzing of the decoders of untrusted input, in the normal test binary (stable Rust, no
//! libFuzzer): the block stream (decoded alone, and applied to a copy), the tree stream
//! (applied to a copy), the manifest, the run journal reader, the `known_hosts` reader, the
//! template parser, and the TOML loading of an inventory and its runbooks.
//!
//! Each target first replays its corpus, `tests/fuzz-corpus/<target>/` (seeds, and every input
//! that once crashed it, minimized), then runs a bounded number of proptest cases: corpus
//! inputs mutated (bits flipped, bytes set to edge values, runs inserted, deleted, repeated,
//! cut, spliced with another input) and arbitrary bytes. A case fails on a panic, on a single
//! allocation beyond 64 MiB (a decoder sizing memory from what it read: inputs are at most a
//! few hundred KiB; one of over 256 MiB is refused at once and the binary aborts), and, for
//! the targets that apply a stream, on any change outside the copy or to the copy when the
//! stream is refused. A case still running after a minute aborts the binary (a hang). Failing
//! inputs are written to `target/fuzz-crashes/<target>/` (and each input, before its case
//! runs, to `last-input` there: what killed the process): the smallest one goes into the corpus
//! with the fix.
//!
//! `REPRISE_FUZZ_CASES=N` runs N cases per target (the default keeps each target to a few
//! seconds); `REPRISE_FUZZ_SEEDS=write` writes the generated seeds into the corpus again.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use reprise::replica::blocks::{BLOCK, Manifest};
use reprise::replica::helper::{hash_file, send};
use reprise::replica::store::{NewPoint, Store, StoreError};
use reprise::replica::tree::{TreeStore, send_tree};
use reprise::replica::wire;

use crate::common::root;

// ---------------------------------------------------------------------------------------
// The largest single allocation, per thread, while watched.

/// The system allocator, noting the largest request of a watched thread.
pub struct Watch;

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = WATCHED.try_with(|w| {
        if w.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

/// Whether a watched thread may have `size` bytes at once; noted either way. A request far
/// beyond [`MOST_AT_ONCE`] fails at once (the process then aborts, its input saved before the
/// case ran), rather than taking the machine's memory.
fn allowed(size: usize) -> bool {
    note(size);
    size <= 4 * MOST_AT_ONCE || !WATCHED.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is passed to the system allocator unchanged, or fails with a null
// pointer as an allocator may; `note` and `allowed` only read and write thread-local cells,
// which allocate nothing.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !allowed(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !allowed(new_size) {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Watch = Watch;

/// No decoder may ask for more at once, whatever it read.
const MOST_AT_ONCE: usize = 64 << 20;

/// Runs `f` watching its allocations; the largest one.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    WATCHED.with(|w| w.set(true));
    struct Unwatch;
    impl Drop for Unwatch {
        fn drop(&mut self) {
            WATCHED.with(|w| w.set(false));
        }
    }
    let _unwatch = Unwatch;
    f();
    LARGEST.with(Cell::get)
}

// ---------------------------------------------------------------------------------------
// The harness.

fn corpus_dir(target: &str) -> PathBuf {
    root().join("tests/fuzz-corpus").join(target)
}

/// The corpus of `target`, sorted by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut all: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the corpus is kept in the repository)",
                dir.display()
            )
        })
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    all.sort();
    assert!(!all.is_empty(), "{}: no seed", dir.display());
    all
}

/// With `REPRISE_FUZZ_SEEDS=write`, writes generated seeds into the corpus of `target`.
fn write_seeds(target: &str, seeds: impl FnOnce() -> Vec<(&'static str, Vec<u8>)>) {
    if std::env::var("REPRISE_FUZZ_SEEDS").as_deref() != Ok("write") {
        return;
    }
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds() {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }
}

fn cases(default: u32) -> u32 {
    std::env::var("REPRISE_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Edge(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, u16),
    Repeat(Index, u16, u8),
    Cut(Index),
    Splice(Index, Index, Index, u16),
}

/// Values that cross the edges decoders check.
const EDGES: [u64; 12] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 40,
    1 << 46,
    i64::MAX as u64,
    u64::MAX,
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Edge(i, v)),
        2 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        2 => (any::<Index>(), 1u16..512).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), 1u16..256, 1u8..8).prop_map(|(i, n, k)| Mutation::Repeat(i, n, k)),
        1 => any::<Index>().prop_map(Mutation::Cut),
        1 => (any::<Index>(), any::<Index>(), any::<Index>(), 1u16..1024)
            .prop_map(|(s, f, a, n)| Mutation::Splice(s, f, a, n)),
    ]
}

fn mutate(input: &mut Vec<u8>, m: &Mutation, corpus: &[(String, Vec<u8>)]) {
    let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
    match m {
        Mutation::Flip(i, bit) if !input.is_empty() => {
            let p = at(i, input.len());
            input[p] ^= 1 << bit;
        }
        Mutation::Set(i, v) if !input.is_empty() => {
            let p = at(i, input.len());
            input[p] = *v;
        }
        Mutation::Edge(i, v) => {
            let value = EDGES[*v as usize % EDGES.len()];
            let width = [1, 2, 4, 8][(*v as usize / EDGES.len()) % 4];
            let bytes = if v & 0x80 == 0 {
                value.to_le_bytes()
            } else {
                value.to_be_bytes()
            };
            let p = at(i, input.len() + 1);
            let bytes = if v & 0x80 == 0 {
                &bytes[..width]
            } else {
                &bytes[8 - width..]
            };
            let end = (p + width).min(input.len());
            input.splice(p..end, bytes.iter().copied());
        }
        Mutation::Insert(i, v) => {
            let p = at(i, input.len() + 1);
            input.splice(p..p, v.iter().copied());
        }
        Mutation::Delete(i, n) if !input.is_empty() => {
            let p = at(i, input.len());
            let end = (p + *n as usize).min(input.len());
            input.drain(p..end);
        }
        Mutation::Repeat(i, n, k) if !input.is_empty() => {
            let p = at(i, input.len());
            let end = (p + *n as usize).min(input.len());
            let run = input[p..end].to_vec();
            for _ in 0..*k {
                input.splice(end..end, run.iter().copied());
            }
        }
        Mutation::Cut(i) => {
            let p = at(i, input.len() + 1);
            input.truncate(p);
        }
        Mutation::Splice(s, f, a, n) => {
            let other = &corpus[s.index(corpus.len())].1;
            let from = at(f, other.len());
            let end = (from + *n as usize).min(other.len());
            let p = at(a, input.len() + 1);
            input.splice(p..p, other[from..end].iter().copied());
        }
        _ => {}
    }
}

/// One input: a corpus entry mutated, or arbitrary bytes.
fn input(corpus: Arc<Vec<(String, Vec<u8>)>>) -> impl Strategy<Value = Vec<u8>> {
    let mutated = {
        let corpus = corpus.clone();
        (any::<Index>(), proptest::collection::vec(mutation(), 1..8)).prop_map(move |(pick, ms)| {
            let mut bytes = corpus[pick.index(corpus.len())].1.clone();
            for m in &ms {
                mutate(&mut bytes, m, &corpus);
            }
            bytes
        })
    };
    prop_oneof![
        6 => mutated,
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Where a failing input is saved.
fn save_crash(target: &str, kind: &str, bytes: &[u8]) -> PathBuf {
    let dir = root().join("target/fuzz-crashes").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let path = match kind {
        "last-input" => dir.join(kind),
        _ => dir.join(format!(
            "{kind}-{}",
            &blake3::hash(bytes).to_hex().as_str()[..16]
        )),
    };
    let _ = std::fs::write(&path, bytes);
    path
}

/// Runs `check` on the corpus of `target`, then on `n` generated inputs. `check` panics on
/// what it finds wrong beyond a panic of the decoder itself.
fn fuzz(target: &'static str, n: u32, check: impl FnMut(&[u8])) {
    let corpus = Arc::new(corpus(target));
    let check = std::cell::RefCell::new(check);
    // A hang: the input of the case running for over a minute is saved, then all stops.
    let current = Arc::new(Mutex::new(Vec::new()));
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let epoch = std::time::Instant::now();
    let watchdog = {
        let (current, started, done) = (current.clone(), started.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let since = started.load(Ordering::Relaxed);
                let now = epoch.elapsed().as_millis() as u64;
                if since != 0 && now.saturating_sub(since) > 60_000 {
                    let bytes = current.lock().map(|b| b.clone()).unwrap_or_default();
                    let path = save_crash(target, "hang", &bytes);
                    eprintln!(
                        "fuzz {target}: a case has run for over a minute: a hang; input saved to {}",
                        path.display()
                    );
                    std::process::abort();
                }
            }
        })
    };
    // Written before each case: what was running when the process died (an allocation
    // refused, a stack overflow) is there.
    let last = save_crash(target, "last-input", b"");
    let one = |bytes: &[u8]| -> Result<(), String> {
        let _ = std::fs::write(&last, bytes);
        *current.lock().unwrap() = bytes.to_vec();
        started.store(epoch.elapsed().as_millis().max(1) as u64, Ordering::Relaxed);
        let mut outcome = Ok(());
        let largest = largest_allocation(|| {
            outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (check.borrow_mut())(bytes)
            }))
            .map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into())
            });
        });
        started.store(0, Ordering::Relaxed);
        outcome?;
        if largest > MOST_AT_ONCE {
            return Err(format!("one allocation of {largest} bytes"));
        }
        Ok(())
    };
    for (name, bytes) in corpus.iter() {
        if let Err(e) = one(bytes) {
            panic!("fuzz {target}: corpus input {name} fails: {e}");
        }
    }
    let config = Config {
        cases: cases(n),
        failure_persistence: None,
        rng_seed: match std::env::var("REPRISE_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            Some(seed) => RngSeed::Fixed(seed),
            None => RngSeed::Random,
        },
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&input(corpus.clone()), |bytes| {
        one(&bytes).map_err(|e| {
            let path = save_crash(target, "crash", &bytes);
            TestCaseError::fail(format!("{e} (input saved to {})", path.display()))
        })
    });
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    if let Err(e) = result {
        panic!("fuzz {target}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures: deterministic, so that the seeds written from them stay valid streams for them.

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i / 4096) as u8 ^ salt)
        .collect()
}

/// The base image of the block targets: 3 blocks and 100 bytes.
fn base_image() -> Vec<u8> {
    pattern(3 * BLOCK + 100, 1)
}

fn point(id: &str) -> NewPoint {
    NewPoint {
        id: id.into(),
        taken_at: Utc::now(),
        source: "src:/img".into(),
        retention: 3,
        definition: None,
        read: None,
        pending: false,
        overwrite_changed: false,
    }
}

/// Retries while the store is locked by a process another test has just started (see
/// `hostile::unlocked`).
fn unlocked<T>(mut f: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

/// A copy of [`base_image`] with one point, in `dir`.
fn image_copy(dir: &Path) -> Store {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join("src.img");
    std::fs::write(&src, base_image()).unwrap();
    let store = Store::new(&dir.join("copy.img"));
    let mut s = Vec::new();
    send(&src, &Manifest::empty(), &mut s, false).unwrap();
    unlocked(|| store.apply(&mut &s[..], point("p1"))).unwrap();
    store
}

fn block_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let base = Manifest::of_file(&{
        let p = dir.path().join("base.img");
        std::fs::write(&p, base_image()).unwrap();
        p
    })
    .unwrap();
    let stream = |data: Vec<u8>, against: &Manifest, compress: bool| {
        let p = dir.path().join("next.img");
        std::fs::write(&p, data).unwrap();
        let mut s = Vec::new();
        send(&p, against, &mut s, compress).unwrap();
        s
    };
    let mut changed = base_image();
    changed[BLOCK + 7] ^= 0xff;
    changed[3 * BLOCK + 50] ^= 0xff;
    let mut grown = base_image();
    grown.extend(vec![0u8; BLOCK]);
    grown.extend(pattern(BLOCK + 3, 9));
    let shrunk = base_image()[..BLOCK + 10].to_vec();
    vec![
        (
            "first-copy",
            stream(pattern(BLOCK + 10, 3), &Manifest::empty(), false),
        ),
        (
            "first-copy-small",
            stream(b"tiny".to_vec(), &Manifest::empty(), false),
        ),
        (
            "first-copy-empty",
            stream(Vec::new(), &Manifest::empty(), false),
        ),
        ("update", stream(changed, &base, false)),
        ("update-grown-compressed", stream(grown, &base, true)),
        ("update-shrunk", stream(shrunk, &base, false)),
        ("update-nothing", stream(base_image(), &base, false)),
    ]
}

/// The header's base replaced by the copy's, so that a mutated stream reaches its records.
fn rebase(bytes: &[u8], base: &Manifest) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let magic = format!("RPRSTR{}\n", reprise::replica::protocol::PROTOCOL);
    let at = magic.len();
    if b.len() >= at + 48 && b.starts_with(magic.as_bytes()) && b[at..at + 8] != [0; 8] {
        b[at..at + 8].copy_from_slice(&base.size.to_le_bytes());
        b[at + 8..at + 40].copy_from_slice(&base.whole);
    }
    b
}

// ---------------------------------------------------------------------------------------
// The targets.

#[test]
fn fuzz_block_stream_decoding() {
    write_seeds("block-stream", block_seeds);
    fuzz("block-stream", 2000, |bytes| {
        let mut r = bytes;
        let Ok(header) = wire::read_header(&mut r) else {
            return;
        };
        // Checked against the header as a receiver does, for a first copy and an update.
        for base in [0, header.base_size.div_ceil(BLOCK as u64)] {
            let mut r2 = r;
            let mut records = wire::Records::new(&header, base);
            while let Ok(rec) = records.next(&mut r2) {
                if matches!(rec, wire::Record::End { .. }) {
                    break;
                }
            }
        }
        while let Ok(rec) = wire::read_record(&mut r) {
            if matches!(rec, wire::Record::End { .. }) {
                break;
            }
        }
    });
}

#[test]
fn fuzz_block_stream_applied_to_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("copy");
    let mut store = image_copy(&fixture);
    let fresh = dir.path().join("fresh");
    fuzz("block-stream", 400, |bytes| {
        // A stream whose header names no base is tried as a first copy.
        if bytes.len() >= 16 && bytes[8..16] == [0; 8] {
            let _ = std::fs::remove_dir_all(&fresh);
            std::fs::create_dir_all(&fresh).unwrap();
            let s = Store::new(&fresh.join("copy.img"));
            if unlocked(|| s.apply(&mut &bytes[..], point("p"))).is_err() {
                assert!(
                    !fresh.join("copy.img").exists(),
                    "a refused first copy was kept"
                );
            }
            return;
        }
        let (base, _) = unlocked(|| store.base_manifest(false, false)).unwrap();
        let before = (
            hash_file(&fixture.join("copy.img")).unwrap(),
            store.points().unwrap(),
        );
        let stream = rebase(bytes, &base);
        match unlocked(|| store.apply(&mut &stream[..], point("p"))) {
            Ok(_) => store = image_copy(&fixture),
            Err(_) => {
                let after = (
                    hash_file(&fixture.join("copy.img")).unwrap(),
                    store.points().unwrap(),
                );
                assert!(after == before, "a refused stream changed the copy");
            }
        }
    });
}

/// The source of the tree targets: `a.dump`, `c.dump`, `sub/b.dump`.
fn tree_source(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (p, data) in [("a.dump", "a1"), ("c.dump", "c1"), ("sub/b.dump", "b1")] {
        std::fs::write(dir.join(p), data).unwrap();
        std::fs::File::options()
            .write(true)
            .open(dir.join(p))
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
}

/// A copy of [`tree_source`] with one point, in `dir/copy`, and `dir/outside/victim`.
fn tree_copy(dir: &Path) -> TreeStore {
    let _ = std::fs::remove_dir_all(dir);
    tree_source(&dir.join("src"));
    std::fs::create_dir_all(dir.join("outside")).unwrap();
    std::fs::write(dir.join("outside/victim"), "precious").unwrap();
    let store = TreeStore::new(&dir.join("copy"));
    let base = unlocked(|| store.base(false, false)).unwrap();
    let mut s = Vec::new();
    send_tree(&dir.join("src"), &base, &mut s).unwrap();
    unlocked(|| store.apply(&mut &s[..], point("p1"))).unwrap();
    store
}

fn tree_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    tree_source(&src);
    let store = tree_copy(&dir.path().join("fixture"));
    let base = unlocked(|| store.base(false, false)).unwrap();
    let stream = || {
        let mut s = Vec::new();
        send_tree(&src, &base, &mut s).unwrap();
        s
    };
    let mut seeds = vec![("nothing-changed", stream())];
    std::fs::write(src.join("a.dump"), "a2, longer").unwrap();
    std::fs::write(src.join("sub/new.dump"), pattern(300, 5)).unwrap();
    std::fs::remove_file(src.join("c.dump")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(src.join("sub/b.dump"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000))
        .unwrap();
    seeds.push(("every-record", stream()));
    let mut first = Vec::new();
    send_tree(&src, &Default::default(), &mut first).unwrap();
    seeds.push(("first-copy", first));
    seeds
}

#[test]
fn fuzz_tree_stream_applied_to_a_copy() {
    write_seeds("tree-stream", tree_seeds);
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("fixture");
    let mut store = tree_copy(&fixture);
    let outside = || {
        let names: Vec<String> = std::fs::read_dir(&fixture)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let victim = fixture.join("outside/victim");
        let meta = std::fs::symlink_metadata(&victim).unwrap();
        (
            names,
            std::fs::read(&victim).unwrap(),
            meta.modified().unwrap(),
            std::fs::read_dir(fixture.join("outside")).unwrap().count(),
        )
    };
    let mut expected = outside();
    fuzz("tree-stream", 400, |bytes| {
        // The copy gives its tree to the source first, as in a replication.
        unlocked(|| store.base(false, false)).unwrap();
        let before = store.points().unwrap();
        match unlocked(|| store.apply(&mut &bytes[..], point("p"))) {
            Ok(_) => {
                assert!(outside() == expected, "a stream reached outside the copy");
                store = tree_copy(&fixture);
                expected = outside();
            }
            Err(_) => {
                assert!(outside() == expected, "a stream reached outside the copy");
                assert!(
                    store.points().unwrap() == before,
                    "a refused stream made a point"
                );
            }
        }
    });
}

#[test]
fn fuzz_manifest() {
    write_seeds("manifest", || {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, base_image()).unwrap();
        vec![
            ("empty", Manifest::empty().encode()),
            ("image", Manifest::of_file(&p).unwrap().encode()),
        ]
    });
    fuzz("manifest", 1500, |bytes| {
        if let Ok(m) = Manifest::decode(bytes) {
            assert_eq!(m.encode(), bytes, "a manifest decodes to another");
        }
    });
}

#[test]
fn fuzz_journal_reader() {
    write_seeds("journal", || {
        ["drill", "emergency", "manual", "resumed"]
            .into_iter()
            .map(|n| {
                let bytes =
                    std::fs::read(root().join(format!("tests/fixtures/journals/{n}.jsonl")))
                        .unwrap();
                (n, bytes)
            })
            .collect()
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.jsonl");
    fuzz("journal", 600, |bytes| {
        std::fs::write(&path, bytes).unwrap();
        let _ = reprise::journal::read(&path);
    });
}

/// An ed25519 host key blob.
fn host_key() -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode("AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")
        .unwrap()
}

#[test]
fn fuzz_known_hosts_reader() {
    write_seeds("known-hosts", || {
        let key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
        let other = "AAAAC3NzaC1lZDI1NTE5AAAAIBbJq1C1Q4wzhr8+6qKp7S0pqfGOjJ0tJxJHEdjKvXkP";
        vec![
            ("match", format!("[127.0.0.1]:2222 ssh-ed25519 {key}\n").into_bytes()),
            (
                "mixed",
                format!(
                    "# comment\n\n@cert-authority *.example ssh-ed25519 {other}\n\
                     |1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= ssh-ed25519 {other}\n\
                     [127.0.0.1]:2222,hv1 ssh-ed25519 {other} comment here\n\
                     127.0.0.1 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7\n"
                )
                .into_bytes(),
            ),
            (
                "revoked",
                format!("@revoked [127.0.0.1]:2222 ssh-ed25519 {key}\n[127.0.0.1]:2222 ssh-ed25519 {key}\n")
                    .into_bytes(),
            ),
        ]
    });
    let key = host_key();
    fuzz("known-hosts", 1000, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let _ = reprise::ssh::known_hosts_say(&text, "127.0.0.1", 2222, &key);
    });
}

struct AnyScope;

impl reprise::template::Scope for AnyScope {
    fn lookup(&self, namespace: &str, name: &str) -> reprise::template::Lookup {
        use reprise::template::{Lookup, TemplateValue};
        match (namespace, name.len() % 4) {
            ("vm", _) => Lookup::Found(TemplateValue::List(vec![name.into(), "b c".into()])),
            (_, 0) => Lookup::Found(TemplateValue::Secret { env: name.into() }),
            (_, 1) => Lookup::Missing {
                what: format!("no `{name}`"),
                known: vec!["dir".into(), name.chars().rev().collect()],
            },
            _ => Lookup::Found(TemplateValue::Text(format!("{name}'; x \"{namespace}"))),
        }
    }
}

#[test]
fn fuzz_template_parser() {
    write_seeds("template", || {
        [
            "virsh start {{ vm.name }}",
            "qemu-img create -f qcow2 -b {{ recovery.images_dir }}/{{ vm.disks }} {{ host.x | raw }}",
            "echo {{ host.token }} {{ run.id }} {{service.id}}",
            "{{ a.b | nope }} {{ }} {{ x }} {{ host.é }} }} {{",
            "curl -fsS https://{{ host.address }}:{{ host.port | raw }}/health",
        ]
        .into_iter()
        .enumerate()
        .map(|(i, t)| (["start", "create", "echo", "broken", "curl"][i], t.as_bytes().to_vec()))
        .collect()
    });
    use reprise::diagnostic::{FileId, Location};
    use reprise::fields::Sp;
    use reprise::template::Template;
    fuzz("template", 1500, |bytes| {
        let text = String::from_utf8_lossy(bytes).into_owned();
        // As a value of its own, and as the TOML string it was read from.
        let alone = Sp::new(text.clone(), Location::new(FileId(0), 0..text.len()));
        let quoted = format!("run = {:?}", text);
        let inner = Sp::new(text.clone(), Location::new(FileId(0), 6..quoted.len()));
        for (value, file) in [(&alone, &text), (&inner, &quoted)] {
            if let Ok(t) = Template::parse(value, file) {
                if let Ok(c) = t.render(&AnyScope) {
                    let _ = c.to_string();
                    let _ = c.expose(|n| (n.len() % 2 == 0).then(|| n.to_string()));
                }
                let _ = t.render_plain(&AnyScope);
            }
        }
    });
}

/// All files of a folder, concatenated (one TOML document: the files define other tables).
fn concatenated(dir: &Path) -> Vec<u8> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(std::fs::read(f).unwrap());
        out.push(b'\n');
    }
    out
}

#[test]
fn fuzz_inventory_and_runbook_loading() {
    write_seeds("toml", || {
        let pair = |inv: &Path, books: &Path| {
            let mut b = concatenated(inv);
            b.push(0xff);
            b.extend(concatenated(books));
            b
        };
        let mini = root().join("tests/fixtures/mini");
        let mut seeds = vec![(
            "mini",
            pair(&mini.join("inventory"), &mini.join("runbooks")),
        )];
        for (name, case) in [
            ("bad-cycle", "dependency-cycle.toml"),
            ("bad-duration", "duration-words.toml"),
            ("bad-host-key", "host-key-typo.toml"),
        ] {
            let mut b = concatenated(&mini.join("inventory"));
            b.extend(std::fs::read(root().join("tests/bad").join(case)).unwrap());
            b.push(0xff);
            b.extend(concatenated(&mini.join("runbooks")));
            seeds.push((name, b));
        }
        seeds
    });
    use reprise::sources::Sources;
    fuzz("toml", 250, |bytes| {
        let (inv, books) = match bytes.iter().position(|b| *b == 0xff) {
            Some(at) => (&bytes[..at], &bytes[at + 1..]),
            None => (bytes, &[][..]),
        };
        let sources = Sources::from_texts(
            [(
                "inventory/all.toml".to_string(),
                String::from_utf8_lossy(inv).into_owned(),
            )],
            [(
                "runbooks/all.toml".to_string(),
                String::from_utf8_lossy(books).into_owned(),
            )],
        );
        match reprise::plan::validate::load(sources) {
            Ok((model, warnings)) => {
                let _ = model.report(warnings).render();
            }
            Err(report) => {
                let _ = report.render();
            }
        }
    });
}
