//! The recovery side against a compromised source (and the reverse): hostile tree and block
//! streams, symbolic links planted in a copy, truncation at every record boundary and inside
//! records, absurd sizes and counts, and helpers of another protocol. Whatever arrives, the
//! copy, its points and everything outside it stay as they were, and the error says why.
//!
//! The streams are written by hand here, byte by byte, as a hostile helper would: the format
//! is the one `replica::tree` and `replica::wire` define.

use reprise::replica::protocol::PROTOCOL;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::Utc;
use reprise::replica::blocks::{BLOCK, MAX_IMAGE_SIZE};
use reprise::replica::helper::{hash_file, send};
use reprise::replica::store::{NewPoint, Store, StoreError};
use reprise::replica::tree::{Tree, TreeStore, send_tree};
use serde_json::json;

use crate::common::{mini_copy, random_bytes, reprise};
use crate::sshd::Sshd;

fn point(id: &str) -> NewPoint {
    NewPoint {
        id: id.into(),
        taken_at: Utc::now(),
        source: "hv-main:/src".into(),
        retention: 5,
        definition: None,
        read: None,
        pending: false,
        overwrite_changed: false,
    }
}

/// Runs `f` again while its store is locked by a process another test has just started: a
/// lock's open file lives on in a forked child until that child runs its program, and the
/// tests of this binary start processes all the time.
fn unlocked<T>(mut f: impl FnMut() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match f() {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

/// Every file, folder and link under `dir` (links not followed), with content and time.
fn state(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let what = if m.file_type().is_symlink() {
                format!("link to {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                // Not its time: a refused update may create and remove its own files.
                stack.push(p.clone());
                "folder".to_string()
            } else {
                format!(
                    "file {}, mtime {}.{}",
                    blake3::hash(&std::fs::read(&p).unwrap()).to_hex(),
                    m.mtime(),
                    m.mtime_nsec()
                )
            };
            out.insert(p, what);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Backup sets: the tree stream.

/// A backup set with one point, a folder beside it that nothing may touch, and the source.
struct Set {
    dir: tempfile::TempDir,
}

impl Set {
    fn new() -> Set {
        let set = Set {
            dir: tempfile::tempdir().unwrap(),
        };
        let src = set.src();
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.dump"), "a1").unwrap();
        std::fs::write(src.join("c.dump"), "c1").unwrap();
        std::fs::write(src.join("sub/b.dump"), "b1").unwrap();
        let outside = set.outside();
        std::fs::create_dir_all(outside.join("dir")).unwrap();
        std::fs::write(outside.join("victim"), "precious").unwrap();
        std::fs::write(outside.join("dir/victim"), "precious too").unwrap();
        set.replicate("p1").unwrap();
        set
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    fn copy(&self) -> PathBuf {
        self.dir.path().join("copy")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    fn store(&self) -> TreeStore {
        TreeStore::new(&self.copy())
    }

    /// The stream the source would send now.
    fn stream(&self) -> Vec<u8> {
        let base = unlocked(|| self.store().base(false, false)).unwrap();
        let mut s = Vec::new();
        send_tree(&self.src(), &base, &mut s).unwrap();
        s
    }

    fn replicate(&self, id: &str) -> Result<(), String> {
        let s = self.stream();
        self.apply(&s, id)
    }

    fn apply(&self, stream: &[u8], id: &str) -> Result<(), String> {
        unlocked(|| self.store().apply(&mut &stream[..], point(id)))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn base(&self) -> Tree {
        unlocked(|| self.store().base(false, false)).unwrap()
    }

    /// What must not change when a stream is refused.
    fn snapshot(&self) -> (BTreeMap<PathBuf, String>, BTreeMap<PathBuf, String>, usize) {
        (
            state(&self.outside()),
            state(&self.copy()),
            self.store().points().unwrap().len(),
        )
    }

    /// Applies `stream`, which must be refused with an error containing `says`, leaving the
    /// copy, its points and everything outside as they were, and no staging behind.
    fn refused(&self, stream: &[u8], says: &str) -> String {
        let before = self.snapshot();
        let err = self
            .apply(stream, "hostile")
            .expect_err("a hostile stream was accepted");
        assert!(err.contains(says), "expected `{says}` in: {err}");
        assert_eq!(self.snapshot(), before, "something changed after: {err}");
        let store_dir = self.dir.path().join("copy.reprise");
        for left in ["staging", "commit.json"] {
            assert!(!store_dir.join(left).exists(), "{left} left behind: {err}");
        }
        err
    }
}

fn hello() -> String {
    format!("{{\"hello\":{{\"protocol\":{PROTOCOL}}}}}\n")
}

/// The block stream's first line.
fn rprstr() -> Vec<u8> {
    format!("RPRSTR{PROTOCOL}\n").into_bytes()
}

/// `stream` (which starts with [`rprstr`]) said to be of protocol `protocol`.
fn of_protocol(stream: &[u8], protocol: &str) -> Vec<u8> {
    let mut out = format!("RPRSTR{protocol}\n").into_bytes();
    out.extend_from_slice(&stream[rprstr().len()..]);
    out
}

fn entry(data: &[u8]) -> serde_json::Value {
    json!({
        "size": data.len(),
        "mtime_ns": 1_700_000_000_000_000_000i64,
        "blake3": blake3::hash(data).to_hex().to_string(),
    })
}

fn line(v: serde_json::Value) -> Vec<u8> {
    let mut l = serde_json::to_vec(&v).unwrap();
    l.push(b'\n');
    l
}

fn file_rec(path: &str, data: &[u8]) -> Vec<u8> {
    let mut r = line(json!({"file": {"path": path, "entry": entry(data)}}));
    r.extend_from_slice(data);
    r
}

fn touch_rec(path: &str, data: &[u8]) -> Vec<u8> {
    line(json!({"touch": {"path": path, "entry": entry(data)}}))
}

fn delete_rec(path: &str) -> Vec<u8> {
    line(json!({"delete": {"path": path}}))
}

fn end_rec(tree: &Tree) -> Vec<u8> {
    line(json!({"end": {"digest": tree.digest()}}))
}

fn tree_stream(records: &[Vec<u8>]) -> Vec<u8> {
    let mut s = hello().into_bytes();
    for r in records {
        s.extend_from_slice(r);
    }
    s
}

/// Paths a hostile source may name, each to be refused.
fn hostile_paths(outside: &Path) -> Vec<String> {
    vec![
        "../outside/victim".into(),
        "sub/../../outside/victim".into(),
        "sub/..".into(),
        outside.join("victim").display().to_string(),
        "/etc/passwd".into(),
        "".into(),
        "a.dump/".into(),
        "sub//b.dump".into(),
        "./a.dump".into(),
        "sub/./b.dump".into(),
        "a\0.dump".into(),
        "x".repeat(256),
        "d/".repeat(2100) + "d",
    ]
}

#[test]
fn every_record_type_refuses_traversal_absolute_and_malformed_paths() {
    let set = Set::new();
    let outside = set.outside();
    let mut base = set.base();
    for path in hostile_paths(&outside) {
        // A tree that would match, had the path been taken: only the path check stops it.
        let data = b"precious";
        let mut with = base.clone();
        with.files
            .insert(path.clone(), serde_json::from_value(entry(data)).unwrap());
        let file = tree_stream(&[file_rec(&path, b"overwritten"), end_rec(&with)]);
        set.refused(&file, "refusing the path");
        let touch = tree_stream(&[touch_rec(&path, data), end_rec(&with)]);
        set.refused(&touch, "refusing the path");
        base.files.remove(&path);
        let delete = tree_stream(&[delete_rec(&path), end_rec(&base)]);
        set.refused(&delete, "refusing the path");
    }
    // The copy still takes honest updates.
    std::fs::write(set.src().join("a.dump"), "a2").unwrap();
    set.replicate("p2").unwrap();
    assert_eq!(std::fs::read(set.copy().join("a.dump")).unwrap(), b"a2");
}

#[test]
fn touch_and_delete_name_only_files_the_copy_holds_and_touch_keeps_their_content() {
    let set = Set::new();
    let base = set.base();
    let mut with = base.clone();
    with.files.insert(
        "new.dump".into(),
        serde_json::from_value(entry(b"x")).unwrap(),
    );
    set.refused(
        &tree_stream(&[touch_rec("new.dump", b"x"), end_rec(&with)]),
        "which the copy does not hold",
    );
    set.refused(
        &tree_stream(&[delete_rec("new.dump"), end_rec(&base)]),
        "which the copy does not hold",
    );
    // A touch claiming other content would make the copy's record lie about its files.
    let mut lying = base.clone();
    lying.files.insert(
        "a.dump".into(),
        serde_json::from_value(entry(b"zz")).unwrap(),
    );
    set.refused(
        &tree_stream(&[touch_rec("a.dump", b"zz"), end_rec(&lying)]),
        "other content",
    );
    // A name made to drive the operator's terminal is shown escaped.
    let err = set.refused(
        &tree_stream(&[delete_rec("evil\u{1b}[2J\nname"), end_rec(&base)]),
        "which the copy does not hold",
    );
    assert!(
        err.contains("evil\\u{1b}[2J\\nname") && !err.contains('\u{1b}') && !err.contains('\n'),
        "{err:?}"
    );
    // A path twice, or a second header.
    set.refused(
        &tree_stream(&[file_rec("n", b"1"), file_rec("n", b"1"), end_rec(&base)]),
        "comes twice",
    );
    set.refused(
        &tree_stream(&[
            delete_rec("a.dump"),
            file_rec("a.dump", b"a1"),
            end_rec(&base),
        ]),
        "comes twice",
    );
    set.refused(
        &tree_stream(&[hello().into_bytes(), end_rec(&base)]),
        "a second protocol header",
    );
    // A file that is not what its record says.
    let mut rec = line(json!({"file": {"path": "n", "entry": entry(b"one")}}));
    rec.extend_from_slice(b"two");
    set.refused(&tree_stream(&[rec, end_rec(&base)]), "arrived damaged");
    // Unknown records and fields.
    set.refused(
        &tree_stream(&[line(json!({"chmod": {"path": "a.dump"}}))]),
        "damaged",
    );
    set.refused(
        &tree_stream(&[line(json!({"delete": {"path": "a.dump", "follow": true}}))]),
        "damaged",
    );
}

#[test]
fn a_link_planted_in_the_copy_is_never_followed() {
    let set = Set::new();
    let (copy, outside) = (set.copy(), set.outside());
    // Someone on the recovery host swapped a folder and a file of the copy for links out.
    std::fs::remove_dir_all(copy.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.join("dir"), copy.join("sub")).unwrap();
    std::fs::remove_file(copy.join("a.dump")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), copy.join("a.dump")).unwrap();
    // Written behind its point, the copy is not replicated into until let go (`reprise
    // release`); let go, the links are still never gone through.
    let refused = unlocked(|| set.store().base(false, false)).unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("this replication would overwrite it"),
        "{refused}"
    );
    unlocked(|| set.store().accept_changes()).unwrap();
    let base = set.base();
    let with = |path: &str, data: &[u8]| {
        let mut t = base.clone();
        t.files
            .insert(path.into(), serde_json::from_value(entry(data)).unwrap());
        t
    };
    // A new file under the linked folder, a file replacing one of the same name outside.
    set.refused(
        &tree_stream(&[
            file_rec("sub/victim", b"x"),
            end_rec(&with("sub/victim", b"x")),
        ]),
        "symbolic link",
    );
    set.refused(
        &tree_stream(&[
            file_rec("sub/b.dump", b"x"),
            end_rec(&with("sub/b.dump", b"x")),
        ]),
        "symbolic link",
    );
    // The linked file itself: replaced, touched or deleted, the link is never gone through.
    set.refused(
        &tree_stream(&[file_rec("a.dump", b"x"), end_rec(&with("a.dump", b"x"))]),
        "symbolic link",
    );
    // The copy is read as it is on disk: a link is no file of it, so a touch or a delete of
    // it is refused.
    set.refused(
        &tree_stream(&[touch_rec("a.dump", b"a1"), end_rec(&with("a.dump", b"a1"))]),
        "which the copy does not hold",
    );
    let mut without = base.clone();
    without.files.remove("a.dump");
    set.refused(
        &tree_stream(&[delete_rec("a.dump"), end_rec(&without)]),
        "which the copy does not hold",
    );
    // An honest source that changed those files meets the same refusal, and the message
    // says what to remove.
    std::fs::write(set.src().join("sub/b.dump"), "b2").unwrap();
    let err = set.refused(&set.stream(), "symbolic link");
    assert!(err.contains("remove it"), "{err}");
    // Restoring or verifying the point reads no file through a link.
    let out = set.dir.path().join("restored");
    let restored = unlocked(|| set.store().restore("p1", &out));
    assert!(restored.is_err(), "a copy with links restored as good");
    for (_, what) in state(&out) {
        assert!(!what.contains(&blake3::hash(b"precious").to_hex().to_string()));
    }
    let before = state(&outside);
    // The copy changed behind its point (the links), so its point history was ended: no
    // point of it is found good.
    let verified = unlocked(|| set.store().verify(None)).unwrap();
    assert!(verified.iter().all(|(_, good)| !good), "{verified:?}");
    assert_eq!(state(&outside), before);
}

#[test]
fn a_tree_stream_cut_at_every_record_boundary_and_inside_records_changes_nothing() {
    let set = Set::new();
    let src = set.src();
    // An update with every kind of record: new, replaced, touched, deleted.
    std::fs::write(src.join("a.dump"), "a2 longer").unwrap();
    std::fs::write(src.join("sub/new.dump"), random_bytes(3000)).unwrap();
    std::fs::remove_file(src.join("c.dump")).unwrap();
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(src.join("sub/b.dump"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    let stream = set.stream();
    // Where each record starts: a line, and for a file its bytes after it.
    let mut starts = vec![0];
    let mut kinds = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let end = at + stream[at..].iter().position(|b| *b == b'\n').unwrap() + 1;
        let rec: serde_json::Value = serde_json::from_slice(&stream[at..end]).unwrap();
        let (kind, body) = rec.as_object().unwrap().iter().next().unwrap();
        kinds.push(kind.clone());
        let data = match kind.as_str() {
            "file" => body["entry"]["size"].as_u64().unwrap() as usize,
            _ => 0,
        };
        at = end + data;
        starts.push(at);
    }
    for kind in ["hello", "file", "touch", "delete", "end"] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "no {kind} record: {kinds:?}"
        );
    }
    // Every boundary, every byte of the first two records, and the first, middle and last
    // bytes of every other.
    let mut cuts: Vec<usize> = (0..starts[2]).collect();
    for w in starts.windows(2) {
        cuts.extend([w[0], w[0] + 1, (w[0] + w[1]) / 2, w[1] - 1]);
    }
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts.into_iter().filter(|c| *c < stream.len()) {
        let before = set.snapshot();
        let err = set
            .apply(&stream[..cut], "cut")
            .expect_err("a cut stream was accepted");
        assert!(
            err.contains("ended early") || err.contains("damaged"),
            "cut at {cut}: {err}"
        );
        assert_eq!(set.snapshot(), before, "cut at {cut} changed something");
    }
    set.apply(&stream, "p2").unwrap();
    assert_eq!(state_files(&set.copy()), state_files(&src));
}

/// Contents of the files under `dir`, by relative path.
fn state_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    state(dir)
        .into_keys()
        .filter(|p| p.is_file())
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn absurd_sizes_times_lines_and_counts_are_refused_before_anything_is_allocated() {
    let set = Set::new();
    let base = set.base();
    let rec = |size: serde_json::Value, mtime: serde_json::Value| {
        line(json!({"file": {"path": "big", "entry": {
            "size": size, "mtime_ns": mtime,
            "blake3": blake3::hash(b"").to_hex().to_string(),
        }}}))
    };
    let ns = json!(1_700_000_000_000_000_000i64);
    set.refused(
        &tree_stream(&[rec(json!(u64::MAX), ns.clone())]),
        "more than",
    );
    set.refused(
        &tree_stream(&[rec(json!(MAX_IMAGE_SIZE + 1), ns.clone())]),
        "more than",
    );
    // A size that passes, with the data missing: read as it comes, never allocated at once.
    set.refused(
        &tree_stream(&[rec(json!(1u64 << 40), ns.clone()), b"some".to_vec()]),
        "ended early",
    );
    // Times beyond the year 9999 (as JSON numbers wider than 64 bits).
    let empty = blake3::hash(b"").to_hex().to_string();
    for time in [
        "1000000000000000000000000000",
        "-1000000000000000000000000000",
    ] {
        let rec = format!(
            "{{\"file\":{{\"path\":\"t\",\"entry\":{{\"size\":0,\"mtime_ns\":{time},\"blake3\":\"{empty}\"}}}}}}\n"
        );
        set.refused(&tree_stream(&[rec.into_bytes()]), "impossible time");
    }
    set.refused(
        &tree_stream(&[line(json!({"file": {"path": "h", "entry": {
            "size": 0, "mtime_ns": 0, "blake3": "../../x",
        }}}))]),
        "malformed hash",
    );
    set.refused(
        &tree_stream(&[line(json!({"end": {"digest": "x".repeat(64)}}))]),
        "malformed",
    );
    // An endless line: refused at 64 KiB.
    let before = set.snapshot();
    let err = unlocked(|| {
        let h = hello();
        let endless = h.as_bytes().chain(std::io::repeat(b'x'));
        set.store()
            .apply(&mut std::io::BufReader::new(endless), point("endless"))
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("longer than 65536 bytes"), "{err}");
    assert_eq!(set.snapshot(), before);
    // More files than a backup set may hold (bounded lower here to try it).
    let small = set.store().with_max_files(4);
    let mut t = base.clone();
    let mut recs = Vec::new();
    for i in 0..2 {
        let p = format!("n{i}");
        t.files
            .insert(p.clone(), serde_json::from_value(entry(b"x")).unwrap());
        recs.push(file_rec(&p, b"x"));
    }
    recs.push(end_rec(&t));
    let err = unlocked(|| small.apply(&mut &tree_stream(&recs)[..], point("many")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than the 4 files"), "{err}");
    assert_eq!(set.store().points().unwrap().len(), 1);
}

#[test]
fn a_tree_stream_of_another_protocol_is_refused_naming_both() {
    let set = Set::new();
    let base = set.base();
    let v1 = line(json!({"end": {"digest": base.digest()}}));
    let err = set.refused(&v1, "the source helper speaks protocol 1");
    assert!(
        err.contains(&format!("this helper speaks protocol {PROTOCOL}")),
        "{err}"
    );
    let next = line(json!({"hello": {"protocol": PROTOCOL + 1}}));
    set.refused(
        &next,
        &format!("the source helper speaks protocol {}", PROTOCOL + 1),
    );
    set.refused(&rprstr(), "did not send a reprise tree stream");
    set.refused(b"", "ended early");
}

// ---------------------------------------------------------------------------------------
// Images: the block stream.

/// An image copy with one point; the source image.
struct Image {
    dir: tempfile::TempDir,
}

const SIZE: usize = 5 * BLOCK + 100;

impl Image {
    fn new() -> Image {
        let img = Image {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(img.src(), random_bytes(SIZE)).unwrap();
        let s = img.stream();
        unlocked(|| img.store().apply(&mut &s[..], point("p1"))).unwrap();
        img
    }

    fn src(&self) -> PathBuf {
        self.dir.path().join("src.img")
    }

    fn copy(&self) -> PathBuf {
        self.dir.path().join("copy.img")
    }

    fn store(&self) -> Store {
        Store::new(&self.copy())
    }

    fn stream(&self) -> Vec<u8> {
        let (base, _) = unlocked(|| self.store().base_manifest(false, false)).unwrap();
        let mut s = Vec::new();
        send(&self.src(), &base, &mut s, true).unwrap();
        s
    }

    /// The header of a stream against the copy's current manifest, announcing `size`.
    fn header(&self, size: u64) -> Vec<u8> {
        let (base, _) = unlocked(|| self.store().base_manifest(false, false)).unwrap();
        let mut h = rprstr();
        h.extend_from_slice(&base.size.to_le_bytes());
        h.extend_from_slice(&base.whole);
        h.extend_from_slice(&size.to_le_bytes());
        // No origin named (a source that cannot say which file it read).
        h.push(0);
        h
    }

    fn snapshot(
        &self,
    ) -> (
        String,
        Vec<reprise::replica::Point>,
        BTreeMap<PathBuf, String>,
    ) {
        (
            hash_file(&self.copy()).unwrap(),
            self.store().points().unwrap(),
            state(&self.dir.path().join("copy.img.reprise")),
        )
    }

    fn refused(&self, stream: &[u8], says: &str) -> String {
        let before = self.snapshot();
        let err = unlocked(|| self.store().apply(&mut &stream[..], point("hostile")))
            .expect_err("a hostile stream was accepted")
            .to_string();
        assert!(err.contains(says), "expected `{says}` in: {err}");
        assert_eq!(self.snapshot(), before, "something changed after: {err}");
        err
    }
}

fn data_rec(idx: u64, data: &[u8]) -> Vec<u8> {
    let mut r = vec![1];
    r.extend_from_slice(&idx.to_le_bytes());
    r.extend_from_slice(&(data.len() as u32).to_le_bytes());
    r.extend_from_slice(data);
    r
}

fn zero_rec(idx: u64, len: u32) -> Vec<u8> {
    let mut r = vec![2];
    r.extend_from_slice(&idx.to_le_bytes());
    r.extend_from_slice(&len.to_le_bytes());
    r
}

fn end_block_rec(whole: [u8; 32]) -> Vec<u8> {
    let mut r = vec![3];
    r.extend_from_slice(&whole);
    r
}

fn block_stream(header: Vec<u8>, records: &[Vec<u8>]) -> Vec<u8> {
    let mut s = header;
    for r in records {
        s.extend_from_slice(r);
    }
    s
}

#[test]
fn blocks_beyond_the_image_of_the_wrong_length_repeated_or_out_of_order_are_refused() {
    let img = Image::new();
    let h = img.header(SIZE as u64);
    let full = vec![7u8; BLOCK];
    let end = end_block_rec([0; 32]);
    for (records, says) in [
        (vec![data_rec(6, &full)], "lies beyond"),
        (vec![data_rec(u64::MAX, &full)], "lies beyond"),
        (vec![zero_rec(1 << 40, 16)], "lies beyond"),
        (vec![data_rec(5, &full)], "is 65536 bytes"),
        (vec![zero_rec(5, BLOCK as u32)], "is 65536 bytes"),
        (vec![data_rec(2, b"short")], "is 5 bytes"),
        (vec![data_rec(1, &full), data_rec(1, &full)], "comes again"),
        (vec![data_rec(3, &full), data_rec(1, &full)], "out of order"),
        (vec![zero_rec(2, u32::MAX)], "too long"),
        (vec![vec![1, 0, 0]], "ended early"),
        (vec![vec![9]], "unknown record 9"),
        // A whole hash that does not match what came: nothing is committed.
        (vec![data_rec(0, &full), end.clone()], "whole-image BLAKE3"),
    ] {
        img.refused(&block_stream(h.clone(), &records), says);
    }
    // A compressed block that lies about its length, or does not decompress.
    let mut z = vec![4];
    z.extend_from_slice(&0u64.to_le_bytes());
    z.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    z.extend_from_slice(&5u32.to_le_bytes());
    z.extend_from_slice(b"junk!");
    img.refused(&block_stream(h.clone(), &[z]), "does not decompress");
}

#[test]
fn a_header_lying_about_the_size_or_the_protocol_is_refused() {
    let img = Image::new();
    // More blocks announced than sent: the missing ones are named, from the base's last
    // block, which the new size makes longer.
    let grown = img.header(SIZE as u64 + 10 * BLOCK as u64);
    let err = img.refused(
        &block_stream(grown, &[end_block_rec([0; 32])]),
        "ended without block 5",
    );
    assert!(err.contains("the header announced"), "{err}");
    // A gap beyond the base.
    let grown = img.header(SIZE as u64 + 10 * BLOCK as u64);
    img.refused(
        &block_stream(
            grown,
            &[data_rec(5, &vec![1; BLOCK]), data_rec(8, &vec![1; BLOCK])],
        ),
        "block 6 is missing",
    );
    img.refused(&img.header(MAX_IMAGE_SIZE + 1), "more than the");
    img.refused(&img.header(u64::MAX), "more than the");
    // A header computed against another state of the copy.
    let mut other = img.header(SIZE as u64);
    other[20] ^= 1;
    img.refused(&other, "the copy changed since");
    // Other protocols, a damaged version, another stream.
    let v1 = of_protocol(&img.header(SIZE as u64), "1");
    let err = img.refused(&v1, "the source helper speaks protocol 1");
    assert!(
        err.contains(&format!("this helper speaks protocol {PROTOCOL}")),
        "{err}"
    );
    let v9 = of_protocol(&img.header(SIZE as u64), "9999999999");
    img.refused(&v9, "the source helper speaks protocol 9999999999");
    img.refused(
        b"RPRSTR2x\n",
        "header of the stream from the source is damaged",
    );
    img.refused(b"RPRSTR99999999999\n", "damaged");
    img.refused(
        b"{\"hello\":{\"protocol\":2}}\n",
        "did not send a reprise block stream",
    );

    // A first copy announced at 60 TiB: refused at its end, nothing of that size kept.
    let fresh = Store::new(&img.dir.path().join("fresh.img"));
    let mut s = rprstr();
    let empty = reprise::replica::Manifest::empty();
    s.extend_from_slice(&empty.size.to_le_bytes());
    s.extend_from_slice(&empty.whole);
    s.extend_from_slice(&(60u64 << 40).to_le_bytes());
    s.push(0);
    s.extend_from_slice(&data_rec(0, &vec![3; BLOCK]));
    s.extend_from_slice(&end_block_rec([0; 32]));
    let err = unlocked(|| fresh.apply(&mut &s[..], point("huge")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ended without block 1"), "{err}");
    assert!(!img.dir.path().join("fresh.img").exists());
    assert!(fresh.points().unwrap().is_empty());
    // An endless stream of records: refused at the first that does not fit.
    let before = img.snapshot();
    let header = img.header(SIZE as u64);
    let err = unlocked(|| {
        let endless = (&header[..]).chain(std::io::repeat(1));
        img.store()
            .apply(&mut std::io::BufReader::new(endless), point("endless"))
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("lies beyond"), "{err}");
    assert_eq!(img.snapshot(), before);
}

#[test]
fn a_block_stream_cut_at_every_record_boundary_and_inside_records_changes_nothing() {
    let img = Image::new();
    // Text-like blocks (compressed), noise (sent as is), zeros (a hole), a short last block.
    let mut data: Vec<u8> = (0..2 * BLOCK).map(|i| b"reprise "[i % 8]).collect();
    data.extend(random_bytes(2 * BLOCK));
    data.extend(vec![0u8; BLOCK]);
    data.extend(random_bytes(100));
    std::fs::write(img.src(), &data).unwrap();
    let stream = img.stream();
    // Where each record starts, from the stream itself.
    let mut r = &stream[..];
    reprise::replica::wire::read_header(&mut r).unwrap();
    let mut starts = vec![stream.len() - r.len()];
    let mut kinds = Vec::new();
    loop {
        let rec = reprise::replica::wire::read_record(&mut r).unwrap();
        kinds.push(stream[*starts.last().unwrap()]);
        starts.push(stream.len() - r.len());
        if matches!(rec, reprise::replica::wire::Record::End { .. }) {
            break;
        }
    }
    for kind in [1, 2, 3, 4] {
        assert!(kinds.contains(&kind), "no record of kind {kind}: {kinds:?}");
    }
    // Every byte of the header and of each record's head, the middle and the last byte of
    // each record, and every boundary.
    let mut cuts: Vec<usize> = (0..starts[0]).collect();
    for w in starts.windows(2) {
        let (a, b) = (w[0], w[1]);
        cuts.extend(a..(a + 17).min(b));
        cuts.extend([(a + b) / 2, b - 1]);
    }
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        if cut >= stream.len() {
            continue;
        }
        let err = img.refused(&stream[..cut], "");
        assert!(
            err.contains("ended early") || err.contains("damaged"),
            "cut at {cut}: {err}"
        );
    }
    unlocked(|| img.store().apply(&mut &stream[..], point("p2"))).unwrap();
    assert_eq!(std::fs::read(img.copy()).unwrap(), data);
}

// ---------------------------------------------------------------------------------------
// The helper as a process: requests and streams of another protocol.

fn helper(args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reprise"))
        .arg("helper")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The helper may stop reading when it refuses: a broken pipe here is expected.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_helper_says_its_protocol_and_refuses_requests_and_streams_of_another() {
    let (code, out, _) = helper(&["version"], b"");
    assert_eq!(code, 0);
    let hello: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(hello["protocol"], PROTOCOL, "{out}");
    assert_eq!(hello["reprise"], env!("CARGO_PKG_VERSION"), "{out}");

    let img = Image::new();
    let copy = img.copy().display().to_string();
    let (code, _, err) = helper(&["points", &copy, "--protocol=1"], b"");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the request is of protocol 1")
            && err.contains(&format!("speaks protocol {PROTOCOL}")),
        "{err}"
    );
    let (code, out, err) = helper(&["points", &copy, &format!("--protocol={PROTOCOL}")], b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"p1\""), "{out}");

    // A block stream of protocol 1 through the real recovery helper.
    let protocol = format!("--protocol={PROTOCOL}");
    let v1 = of_protocol(&img.header(SIZE as u64), "1");
    let before = img.snapshot();
    let at = Utc::now().to_rfc3339();
    let apply = [
        "apply",
        &copy,
        "--point=p2",
        "--taken-at",
        &at,
        "--source=hv-main:/src",
        "--retention=5",
        &protocol,
    ];
    let (code, _, err) = helper(&apply, &v1);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "the source helper speaks protocol 1; this helper speaks protocol {PROTOCOL}"
        )),
        "{err}"
    );
    assert_eq!(img.snapshot(), before);

    // A hostile tree stream through the real recovery helper.
    let set = Set::new();
    let set_copy = set.copy().display().to_string();
    // Taken now: the set's own first point is later than `at`, and a point taken before a
    // copy's newest is refused before its stream is read.
    let at = Utc::now().to_rfc3339();
    let mut apply_tree = apply.to_vec();
    apply_tree[0] = "apply-tree";
    apply_tree[1] = &set_copy;
    apply_tree[4] = &at;
    apply_tree.push("--source-ahead-us=0");
    let mut t = set.base();
    t.files.insert(
        "../outside/victim".into(),
        serde_json::from_value(entry(b"precious")).unwrap(),
    );
    let hostile = tree_stream(&[touch_rec("../outside/victim", b"precious"), end_rec(&t)]);
    let before = set.snapshot();
    let (code, _, err) = helper(&apply_tree, &hostile);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refusing the path `../outside/victim`"),
        "{err}"
    );
    assert_eq!(set.snapshot(), before);
}

// ---------------------------------------------------------------------------------------
// End to end: `reprise replicate` between two real sshd, the source helper replaced.

/// Two hosts of the mini inventory (hv1 the source, hv2 the recovery side), each a real sshd
/// with its own helper cache, and a backup set `copied` from one to the other.
struct TwoHosts {
    dir: tempfile::TempDir,
    _src: Sshd,
    _dst: Sshd,
    overlay: PathBuf,
}

impl TwoHosts {
    fn new() -> TwoHosts {
        let dir = mini_copy();
        let base = dir.path();
        let cache = |host: &str| base.join(format!("{host}-cache"));
        let src = Sshd::start_with(&format!(
            "SetEnv XDG_CACHE_HOME={}\n",
            cache("hv1").display()
        ));
        let dst = Sshd::start_with(&format!(
            "SetEnv XDG_CACHE_HOME={}\n",
            cache("hv2").display()
        ));
        std::fs::create_dir_all(base.join("data/sub")).unwrap();
        std::fs::write(base.join("data/a.dump"), "a1").unwrap();
        std::fs::write(base.join("data/sub/b.dump"), "b1").unwrap();
        std::fs::create_dir_all(base.join("outside")).unwrap();
        std::fs::write(base.join("outside/victim"), "precious").unwrap();
        std::fs::write(
            base.join("inventory/backups.toml"),
            format!(
                "[backups.copied]\ndescription = \"copied\"\nsource_host = \"hv1\"\nsource_path = \"{}\"\ndest_host = \"hv2\"\ndest_path = \"{}\"\nretention = 5\n",
                base.join("data").display(),
                base.join("copy").display()
            ),
        )
        .unwrap();
        let host = |id: &str, s: &Sshd| {
            format!(
                "[hosts.{id}]\naddress = \"{}\"\nport = {}\nuser = \"{}\"\nknown_hosts = \"{}\"\nidentity = \"{}\"\n",
                s.endpoint().ip(),
                s.endpoint().port(),
                s.user,
                s.known_hosts.display(),
                s.identity.display()
            )
        };
        let overlay = base.join("overlay.toml");
        std::fs::write(&overlay, host("hv1", &src) + &host("hv2", &dst)).unwrap();
        TwoHosts {
            dir,
            _src: src,
            _dst: dst,
            overlay,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn replicate(&self) -> crate::common::Run {
        reprise(
            self.dir.path(),
            &[
                "--overlay",
                self.overlay.to_str().unwrap(),
                "replicate",
                "--service",
                "copied",
            ],
        )
    }

    /// Replaces the source host's helper by a script: `case` lines for some requests (the
    /// second word), the real helper for the others.
    fn source_helper(&self, cases: &str) {
        self.helper_on("hv1", cases);
    }

    /// Replaces the helper of `host` by a script (see [`TwoHosts::source_helper`]).
    fn helper_on(&self, host: &str, cases: &str) {
        let reprise = Path::new(env!("CARGO_BIN_EXE_reprise"));
        let hash = hash_file(reprise).unwrap();
        let dir = self.path(&format!("{host}-cache/reprise"));
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "#!/bin/sh\ncase \"$2\" in\n{cases}\n*) exec '{}' \"$@\";;\nesac\n",
            reprise.display()
        );
        let tmp = dir.join("helper.tmp");
        std::fs::write(&tmp, script).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::rename(&tmp, dir.join(format!("helper-{hash}"))).unwrap();
    }
}

#[test]
fn a_compromised_source_cannot_reach_outside_the_copy_of_a_backup_set() {
    let hosts = TwoHosts::new();
    // First an honest copy (the recovery host gets the real helper, uploaded).
    let run = hosts.replicate();
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(std::fs::read(hosts.path("copy/a.dump")).unwrap(), b"a1");
    let store = TreeStore::new(&hosts.path("copy"));
    let base = unlocked(|| store.base(false, false)).unwrap();
    let victim = hosts.path("outside/victim");
    let absolute = victim.display().to_string();
    // Each record type with one way out (every way with every type is tried above, on the
    // recovery side alone).
    let with = |path: &str| {
        let mut t = base.clone();
        t.files.insert(
            path.into(),
            serde_json::from_value(entry(b"precious")).unwrap(),
        );
        t
    };
    let (up, down) = ("../outside/victim", "sub/../../outside/victim");
    for stream in [
        tree_stream(&[touch_rec(up, b"precious"), end_rec(&with(up))]),
        tree_stream(&[file_rec(&absolute, b"gone"), end_rec(&with(&absolute))]),
        tree_stream(&[delete_rec(down), end_rec(&base)]),
    ] {
        let file = hosts.path("hostile.stream");
        std::fs::write(&file, &stream).unwrap();
        hosts.source_helper(&format!(
            "send-tree) cat > /dev/null; cat '{}';;",
            file.display()
        ));
        let before = (state(&hosts.path("outside")), state(&hosts.path("copy")));
        let run = hosts.replicate();
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stderr.contains("refusing the path") && run.stderr.contains("hv2"),
            "{run:?}"
        );
        assert_eq!(
            (state(&hosts.path("outside")), state(&hosts.path("copy"))),
            before
        );
        assert_eq!(store.points().unwrap().len(), 1);
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

#[test]
fn a_helper_of_another_protocol_is_refused_naming_the_host_and_both_versions() {
    let hosts = TwoHosts::new();
    hosts.source_helper(
        "version) cat > /dev/null; echo '{\"protocol\":1,\"reprise\":\"0.0.9\"}';;\n*) echo \"$2\" >> \"$0.used\"; exit 1;;",
    );
    let run = hosts.replicate();
    assert_eq!(run.code, 1, "{run:?}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        run.stderr.contains(&format!(
            "hv1: its reprise helper speaks protocol 1 (reprise 0.0.9); this reprise speaks protocol {PROTOCOL} (reprise {version})"
        )),
        "{run:?}"
    );
    assert!(!hosts.path("copy").exists(), "the copy was made: {run:?}");
    let used = std::fs::read_dir(hosts.path("hv1-cache/reprise"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".used"));
    assert!(!used, "the helper of another protocol was asked something");
    // A reprise from before the handshake knows no `version` request (clap's exit 2).
    hosts.source_helper("version) echo \"error: unrecognized subcommand 'version'\" >&2; exit 2;;");
    let run = hosts.replicate();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("hv1: its reprise helper speaks no protocol this reprise knows")
            && run.stderr.contains("unrecognized subcommand")
            && run.stderr.contains(&format!("protocol {PROTOCOL}")),
        "{run:?}"
    );
    // A helper that answers the handshake but streams protocol 1 is caught by the receiver.
    let file = hosts.path("v1.stream");
    std::fs::write(
        &file,
        line(json!({"end": {"digest": Tree::default().digest()}})),
    )
    .unwrap();
    hosts.source_helper(&format!(
        "send-tree) cat > /dev/null; cat '{}';;",
        file.display()
    ));
    let run = hosts.replicate();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "the source helper speaks protocol 1; this helper speaks protocol {PROTOCOL}"
        )) && run.stderr.contains("hv1:")
            && run.stderr.contains("hv2:"),
        "{run:?}"
    );
    assert!(!hosts.path("copy/a.dump").exists());
}

#[test]
fn an_answer_without_end_is_refused_not_held_in_memory() {
    let hosts = TwoHosts::new();
    // The answer to a transfer, then to a question.
    hosts.helper_on("hv2", "apply-tree) cat > /dev/null; exec yes;;");
    let run = hosts.replicate();
    assert_eq!(run.code, 1, "{run:?}");
    // Read up to a bound, then the pipe is closed: the side writing dies of it at once.
    assert!(
        run.stderr.contains("hv2: replicating") && run.stderr.contains("recovery exit 141"),
        "{run:?}"
    );
    hosts.helper_on("hv2", "inspect) exec yes;;");
    let run = reprise(
        hosts.dir.path(),
        &[
            "--overlay",
            hosts.overlay.to_str().unwrap(),
            "points",
            "copied",
        ],
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("hv2: its answer is longer than 67108864 bytes: refused"),
        "{run:?}"
    );
}

/// What a host prints on its standard error is read up to a bound and kept shorter still, on
/// every path a host's output takes: either side of a transfer through either SSH client, and
/// a question to a helper. A host printing 300 MB of errors gets its transfer or its question
/// refused or cut, a short message, and this process's memory does not grow with it.
#[test]
fn errors_without_end_are_cut_or_refused_not_held_in_memory() {
    let hosts = TwoHosts::new();
    let overlay = hosts.overlay.to_str().unwrap();
    let replicate = |client: &str| {
        crate::common::measured(
            hosts.dir.path(),
            &[
                "--overlay",
                overlay,
                "replicate",
                "--service",
                "copied",
                "--ssh-client",
                client,
            ],
        )
    };
    // An honest copy first (the real helpers uploaded), for the memory it takes.
    let honest = replicate("libssh2");
    assert_eq!(honest.code, 0, "{}", honest.stderr);
    let flood = "yes | head -c 300000000 >&2; exit 3";
    let check = |what: &str, run: crate::common::Measured, host: &str| {
        assert_eq!(run.code, 1, "{what}: {}", run.stderr);
        assert!(
            run.stderr.len() < 64 * 1024,
            "{what}: {} bytes of errors",
            run.stderr.len()
        );
        assert!(
            run.stderr.contains(host)
                && (run.stderr.contains("more bytes of errors not kept")
                    || run.stderr.contains("bytes of errors: refused")),
            "{what}: {}",
            run.stderr
        );
        // The honest run's peak, and less than half of one bound of what is read.
        assert!(
            run.max_rss_kib < honest.max_rss_kib + 32 * 1024,
            "{what}: {} KiB at the peak, against {} KiB for an honest copy",
            run.max_rss_kib,
            honest.max_rss_kib
        );
    };
    for client in ["openssh", "libssh2"] {
        hosts.helper_on("hv1", &format!("send-tree) cat > /dev/null; {flood};;"));
        check(&format!("source, {client}"), replicate(client), "hv1");
        hosts.helper_on("hv1", "");
        hosts.helper_on("hv2", &format!("apply-tree) cat > /dev/null; {flood};;"));
        check(
            &format!("recovery side, {client}"),
            replicate(client),
            "hv2",
        );
        hosts.helper_on("hv2", "");
    }
    hosts.helper_on("hv2", &format!("inspect) {flood};;"));
    let points = crate::common::measured(
        hosts.dir.path(),
        &["--overlay", overlay, "points", "copied"],
    );
    check("a question", points, "hv2");
}

/// A recovery helper's answers are checked before anything relies on them: asked to verify
/// one point, an answer about another (good) is refused, never taken for that point read
/// again; asked about a copy, an answer about another copy, or with its points out of order,
/// is refused, never read as the copy's points.
#[test]
fn a_recovery_helper_answering_about_another_point_or_copy_is_not_believed() {
    let hosts = TwoHosts::new();
    let overlay = hosts.overlay.to_str().unwrap();
    let run_with = |args: &[&str]| {
        let mut all = vec!["--overlay", overlay];
        all.extend_from_slice(args);
        reprise(hosts.dir.path(), &all)
    };
    for text in ["a1", "a2"] {
        std::fs::write(hosts.path("data/a.dump"), text).unwrap();
        let run = hosts.replicate();
        assert_eq!(run.code, 0, "{run:?}");
    }
    let store = TreeStore::new(&hosts.path("copy"));
    let ids: Vec<String> = unlocked(|| store.points())
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    let [old, new] = &ids[..] else {
        panic!("two points: {ids:?}")
    };
    // Honest, for comparison: the newest point verifies.
    let honest = run_with(&["verify", "copied", "--point", new]);
    assert_eq!(honest.code, 0, "{honest:?}");

    // Asked about the newest point, the helper says the oldest is good.
    hosts.helper_on(
        "hv2",
        &format!("verify) echo '[{{\"point\":\"{old}\",\"good\":true}}]';;"),
    );
    let run = run_with(&["verify", "copied", "--point", new]);
    assert_ne!(run.code, 0, "{run:?}");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains(&format!(
            "asked to verify point {new} of {}, the helper answered about {old}",
            hosts.path("copy").display()
        )),
        "{run:?}"
    );
    // And about no point at all.
    hosts.helper_on("hv2", "verify) echo '[]';;");
    let run = run_with(&["verify", "copied", "--point", new]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains("the helper answered about no point"),
        "{run:?}"
    );

    // Asked about the copy, the helper answers about another folder with points of its own.
    let other = hosts.path("other");
    std::fs::create_dir_all(&other).unwrap();
    let reprise_bin = env!("CARGO_BIN_EXE_reprise");
    hosts.helper_on(
        "hv2",
        &format!(
            "inspect) exec '{reprise_bin}' helper inspect '{}';;",
            other.display()
        ),
    );
    let run = run_with(&["points", "copied"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "asked about {}, the helper answered about {}",
            hosts.path("copy").display(),
            other.display()
        )),
        "{run:?}"
    );

    // The copy's own state with its two points swapped: the newest would be taken for the
    // oldest.
    hosts.helper_on("hv2", "");
    let real = run_with(&["points", "copied", "--json"]);
    assert_eq!(real.code, 0, "{real:?}");
    let state = hosts.path("state.json");
    let mut out = std::process::Command::new(reprise_bin)
        .args(["helper", "inspect", hosts.path("copy").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut states: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let points = states[0]["points"].as_array_mut().unwrap();
    assert_eq!(points.len(), 2, "{states}");
    points.reverse();
    out.stdout = serde_json::to_vec(&states).unwrap();
    std::fs::write(&state, &out.stdout).unwrap();
    hosts.helper_on("hv2", &format!("inspect) cat '{}';;", state.display()));
    let run = run_with(&["points", "copied"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("it answered are not valid")
            && run.stderr.contains("is older than the point before it"),
        "{run:?}"
    );
}

/// A recovery helper that answers, for an update, that it made a point other than the one
/// asked (here the copy's older point, verified) is not believed: the replication fails, and
/// the older point is never reported as the new one.
#[test]
fn a_recovery_helper_answering_that_it_made_another_point_is_not_believed() {
    let hosts = TwoHosts::new();
    let run = hosts.replicate();
    assert_eq!(run.code, 0, "{run:?}");
    let reprise_bin = env!("CARGO_BIN_EXE_reprise");
    let out = std::process::Command::new(reprise_bin)
        .args(["helper", "inspect", hosts.path("copy").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let states: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let old = states[0]["points"][0].clone();
    let old_id = old["id"].as_str().unwrap().to_string();
    let answer = hosts.path("answer.json");
    std::fs::write(
        &answer,
        serde_json::json!({"point": old, "blocks": 0, "dropped": [], "recovered": null})
            .to_string(),
    )
    .unwrap();
    hosts.helper_on(
        "hv2",
        &format!("apply-tree) cat > /dev/null; cat '{}';;", answer.display()),
    );
    std::fs::write(hosts.path("data/a.dump"), "a2").unwrap();
    let run = hosts.replicate();
    assert_ne!(run.code, 0, "{run:?}");
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains(&format!(
            "the recovery helper answered that it made point {old_id}"
        )) && said.contains("not believed"),
        "{run:?}"
    );
}
