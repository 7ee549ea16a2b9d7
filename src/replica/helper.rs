//! What `reprise helper …` does on a host: the source side reads its image and sends the
//! blocks that differ from the recovery manifest; the recovery side answers with its manifest,
//! applies a stream, lists, verifies and restores points. Standard input and output carry the
//! protocol (binary manifests and streams, JSON answers); errors are returned, one line each.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use serde::Serialize;

use super::blocks::{self, BLOCK, Manifest};
use super::meta::{CopyState, Lease};
pub use super::protocol::Request;
use super::protocol::{Hello, PROTOCOL, refuse_request};
use super::store::{NewPoint, Store};
use super::tree::{Tree, TreeStore, send_tree};
use super::wire;

/// What a verification found, per point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Checked {
    pub point: String,
    pub good: bool,
}

/// A definition kept with a point, as [`Request::Definition`] answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DefinitionText {
    pub blake3: String,
    pub text: String,
}

/// What the source sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub blocks: u64,
    pub bytes: u64,
}

/// Serves one request of protocol `protocol` (`None`: typed by hand, taken as this one's).
pub fn serve(
    req: Request,
    protocol: Option<u32>,
    stdin: &mut impl Read,
    stdout: &mut impl Write,
) -> Result<(), String> {
    if let Some(theirs) = protocol.filter(|p| *p != PROTOCOL) {
        return Err(refuse_request(theirs));
    }
    let out = |stdout: &mut dyn Write, bytes: &[u8]| {
        stdout
            .write_all(bytes)
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("writing the answer: {e}"))
    };
    match req {
        Request::Version => out(
            stdout,
            &serde_json::to_vec(&Hello::this()).expect("serializes"),
        ),
        Request::HashSelf => {
            // The file this process runs, even if its path was replaced since.
            let me = Path::new("/proc/self/exe");
            let h = hash_file(me).map_err(|e| format!("{}: {e}", me.display()))?;
            out(stdout, format!("{h}\n").as_bytes())
        }
        Request::Send { image, compress } => {
            let m = read_bounded(stdin, blocks::MAX_MANIFEST_BYTES, "the recovery manifest")?;
            let base = Manifest::decode(&m)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout);
            send(&image, &base, &mut w, compress)?;
            w.flush().map_err(|e| format!("writing the stream: {e}"))?;
            Ok(())
        }
        Request::Manifest { image, reread } => {
            let (m, _) = Store::new(&image)
                .base_manifest(reread)
                .map_err(|e| e.to_string())?;
            out(stdout, &m.encode())
        }
        Request::Apply {
            image,
            point,
            taken_at,
            source,
            retention,
            definition,
        } => {
            let mut input = std::io::BufReader::with_capacity(1 << 20, stdin);
            let applied = Store::new(&image)
                .apply(
                    &mut input,
                    NewPoint {
                        id: point,
                        taken_at,
                        source,
                        retention,
                        definition,
                    },
                )
                .map_err(|e| e.to_string())?;
            out(stdout, &serde_json::to_vec(&applied).expect("serializes"))
        }
        Request::PutDefinition { image, blake3 } => {
            let bytes = read_bounded(stdin, crate::vmdef::MAX_BYTES as u64, "the definition")?;
            let store = Store::new(&image);
            let got = blake3::hash(&bytes).to_hex().to_string();
            if got != blake3 {
                return Err(format!(
                    "the definition received has the BLAKE3 {got}, not the {blake3} announced: refused"
                ));
            }
            super::meta::write_definition(store.meta_dir(), &bytes)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Request::Definition { image, point } => {
            let store = Store::new(&image);
            let points = store.points().map_err(|e| e.to_string())?;
            let p = points
                .iter()
                .find(|p| p.id == point)
                .ok_or_else(|| format!("{}: no point `{point}`", image.display()))?;
            let hash = p.definition.clone().ok_or_else(|| {
                format!(
                    "{}: point {point} holds no definition of the vm",
                    image.display()
                )
            })?;
            let bytes = super::meta::read_definition(store.meta_dir(), &hash).map_err(|why| {
                format!("{}: the definition of point {point} {why}", image.display())
            })?;
            let answer = DefinitionText {
                blake3: hash,
                text: String::from_utf8_lossy(&bytes).into_owned(),
            };
            out(stdout, &serde_json::to_vec(&answer).expect("serializes"))
        }
        Request::SendTree { dir } => {
            let m = read_bounded(stdin, super::tree::MAX_TREE_BYTES, "the recovery tree")?;
            let base: Tree = serde_json::from_slice(&m)
                .map_err(|e| format!("the recovery tree is not understood: {e}"))?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout);
            send_tree(&dir, &base, &mut w)?;
            w.flush().map_err(|e| format!("writing the stream: {e}"))?;
            Ok(())
        }
        Request::TreeBase { dir, reread } => {
            let t = TreeStore::new(&dir)
                .base(reread)
                .map_err(|e| e.to_string())?;
            out(stdout, &serde_json::to_vec(&t).expect("serializes"))
        }
        Request::ApplyTree {
            dir,
            point,
            taken_at,
            source,
            retention,
        } => {
            let mut input = std::io::BufReader::with_capacity(1 << 20, stdin);
            let (point, files, recovered) = TreeStore::new(&dir)
                .apply(
                    &mut input,
                    NewPoint {
                        id: point,
                        taken_at,
                        source,
                        retention,
                        definition: None,
                    },
                )
                .map_err(|e| e.to_string())?;
            let applied = super::store::Applied {
                blocks: files,
                point,
                dropped: Vec::new(),
                recovered,
            };
            out(stdout, &serde_json::to_vec(&applied).expect("serializes"))
        }
        Request::Points { image } => {
            let points = if image.is_dir() {
                TreeStore::new(&image).points()
            } else {
                Store::new(&image).points()
            }
            .map_err(|e| e.to_string())?;
            out(stdout, &serde_json::to_vec(&points).expect("serializes"))
        }
        Request::Verify { image, point } => {
            let checked = if image.is_dir() {
                TreeStore::new(&image).verify(point.as_deref())
            } else {
                Store::new(&image).verify(point.as_deref())
            };
            let checked: Vec<Checked> = checked
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|(point, good)| Checked { point, good })
                .collect();
            out(stdout, &serde_json::to_vec(&checked).expect("serializes"))
        }
        Request::Restore {
            image,
            point,
            output,
        } => if image.is_dir() {
            TreeStore::new(&image).restore(&point, &output)
        } else {
            Store::new(&image).restore(&point, &output)
        }
        .map_err(|e| e.to_string()),
        Request::RollBack { image, point } => {
            let done = Store::new(&image)
                .roll_back(&point)
                .map_err(|e| e.to_string())?;
            out(stdout, &serde_json::to_vec(&done).expect("serializes"))
        }
        Request::Settle { image, wait } => {
            let wait = std::time::Duration::from_secs(wait);
            let until = std::time::Instant::now() + wait;
            let note = loop {
                let settled = if image.is_dir() {
                    TreeStore::new(&image).settle()
                } else {
                    Store::new(&image).settle()
                };
                match settled {
                    Err(super::StoreError::Locked { .. }) if std::time::Instant::now() < until => {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    }
                    other => break other.map_err(|e| e.to_string())?,
                }
            };
            out(stdout, &serde_json::to_vec(&note).expect("serializes"))
        }
        Request::Inspect { paths } => {
            let states: Vec<CopyState> = paths.iter().map(|p| inspect(p)).collect();
            out(stdout, &serde_json::to_vec(&states).expect("serializes"))
        }
        Request::Lease {
            path,
            kind,
            run,
            vm,
            step,
            machine,
            pid,
            point,
            taken_at,
            verified,
            expect,
            wait,
            started,
        } => {
            let lease = Lease {
                kind,
                run,
                vm,
                step,
                machine,
                pid,
                at: chrono::Utc::now(),
                point,
                taken_at,
                verified,
            };
            let wait = std::time::Duration::from_secs(wait);
            let note = if path.is_dir() {
                TreeStore::new(&path).take_lease(&lease, wait)
            } else {
                Store::new(&path).take_lease(&lease, expect.as_deref(), wait, started)
            }
            .map_err(|e| e.to_string())?;
            out(stdout, &serde_json::to_vec(&note).expect("serializes"))
        }
        Request::Release { paths, run, kind } => {
            let mut released = Vec::new();
            for p in &paths {
                let which = |l: Option<&Lease>, name: &str| match l {
                    Some(l) => {
                        run.as_ref().is_none_or(|r| &l.run == r) && kind.is_none_or(|k| l.kind == k)
                    }
                    // A lease that cannot be read: by its file name, or with no filter.
                    None => {
                        run.as_ref().is_none_or(|r| name.ends_with(r.as_str()))
                            && kind.is_none_or(|k| name.starts_with(&k.to_string()))
                    }
                };
                let done = if p.is_dir() {
                    TreeStore::new(p).release(which)
                } else {
                    Store::new(p).release(which)
                }
                .map_err(|e| e.to_string())?;
                released.extend(done.into_iter().map(|d| format!("{}: {d}", p.display())));
            }
            out(stdout, &serde_json::to_vec(&released).expect("serializes"))
        }
    }
}

/// What a copy (an image, or a backup set's folder) and its metadata say.
pub fn inspect(path: &Path) -> CopyState {
    let tree_meta = {
        let mut dir = path.as_os_str().to_owned();
        dir.push(".reprise/tree.json");
        std::path::PathBuf::from(dir).exists()
    };
    if path.is_dir() || (!path.exists() && tree_meta) {
        TreeStore::new(path).inspect()
    } else {
        Store::new(path).inspect()
    }
}

/// All of `r`, refused beyond `limit` bytes (what a well-behaved peer can send).
fn read_bounded(r: &mut impl Read, limit: u64, what: &str) -> Result<Vec<u8>, String> {
    let mut m = Vec::new();
    r.take(limit + 1)
        .read_to_end(&mut m)
        .map_err(|e| format!("reading {what}: {e}"))?;
    if m.len() as u64 > limit {
        return Err(format!("{what} is longer than {limit} bytes: refused"));
    }
    Ok(m)
}

/// BLAKE3 of a file, hex.
pub fn hash_file(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(path)?;
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

/// Reads `image` and writes the stream of the blocks that differ from `base`, compressed with
/// `compress` where that makes them smaller.
pub fn send(
    image: &Path,
    base: &Manifest,
    w: &mut impl Write,
    compress: bool,
) -> Result<Sent, String> {
    let name = image.display().to_string();
    let mut compressor = match compress {
        true => Some(wire::Compressor::new().map_err(|e| format!("zstd: {e}"))?),
        false => None,
    };
    let file = File::open(image).map_err(|e| format!("{name}: {e}"))?;
    let size = file.metadata().map_err(|e| format!("{name}: {e}"))?.len();
    blocks::explain_faults(&format!(
        "error: {name} was cut short, or the disk could not read it, while it was sent; nothing was committed"
    ));
    let werr = |e: std::io::Error| format!("writing the stream of {name}: {e}");
    wire::write_header(
        w,
        &wire::Header {
            base_size: base.size,
            base_whole: base.whole,
            size,
        },
    )
    .map_err(werr)?;
    let mut all = Vec::with_capacity(blocks::count(size) as usize);
    let mut single = None;
    let mut sent = Sent::default();
    blocks::read_blocks(&file, size, |first, buf| {
        if size <= BLOCK as u64 {
            single = Some(*blake3::hash(buf).as_bytes());
        }
        let cvs = blocks::cvs(first, buf);
        for (i, (c, b)) in cvs.iter().zip(buf.chunks(BLOCK)).enumerate() {
            let idx = first + i as u64;
            if base.cvs.get(idx as usize) == Some(c) {
                continue;
            }
            sent.blocks += 1;
            if blocks::is_zero(b) {
                wire::write_zero(w, idx, b.len() as u32)?;
            } else if let Some(z) = compressor.as_mut().and_then(|c| c.compress(b)) {
                sent.bytes += z.len() as u64;
                wire::write_compressed(w, idx, b.len() as u32, &z)?;
            } else {
                sent.bytes += b.len() as u64;
                wire::write_data(w, idx, b)?;
            }
        }
        all.extend(cvs);
        Ok(())
    })
    .map_err(|e| format!("{name}: {e}"))?;
    let whole = blocks::root(&all)
        .or(single)
        .unwrap_or(*blake3::hash(b"").as_bytes());
    wire::write_end(w, &whole).map_err(werr)?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::store::Verified;
    use chrono::Utc;

    fn write_at(path: &Path, off: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(data, off).unwrap();
    }

    /// One replication, as the two helpers do it, without the network.
    fn replicate(src: &Path, dst: &Path, id: &str, retention: u32) -> (u64, Sent) {
        let store = Store::new(dst);
        let (m, _) = store.base_manifest(false).unwrap();
        let mut stream = Vec::new();
        let sent = send(src, &m, &mut stream, false).unwrap();
        let applied = store
            .apply(
                &mut &stream[..],
                NewPoint {
                    id: id.into(),
                    taken_at: Utc::now(),
                    source: "src".into(),
                    retention,
                    definition: None,
                },
            )
            .unwrap();
        assert_eq!(applied.point.blake3, hash_file(src).unwrap());
        (stream.len() as u64, sent)
    }

    #[test]
    fn only_changed_blocks_travel_and_every_point_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let f = File::create(&src).unwrap();
        f.set_len(40 * BLOCK as u64 + 100).unwrap();
        write_at(&src, 0, &vec![1u8; 5 * BLOCK]);
        let (_, first) = replicate(&src, &dst, "p1", 3);
        assert_eq!(first.bytes, 5 * BLOCK as u64);
        let v1 = std::fs::read(&src).unwrap();
        let (bytes, none) = replicate(&src, &dst, "p2", 3);
        assert_eq!(none.blocks, 0);
        assert!(bytes < 200);
        write_at(&src, 7 * BLOCK as u64 + 3, b"changed");
        let (_, one) = replicate(&src, &dst, "p3", 3);
        assert_eq!(one.blocks, 1);
        let v3 = std::fs::read(&src).unwrap();
        // Shrink, then grow.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&src)
            .unwrap()
            .set_len(3 * BLOCK as u64 + 7)
            .unwrap();
        replicate(&src, &dst, "p4", 3);
        let v4 = std::fs::read(&src).unwrap();
        let store = Store::new(&dst);
        let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
        assert_eq!(ids, ["p2", "p3", "p4"]);
        for (id, want) in [("p2", &v1), ("p3", &v3), ("p4", &v4)] {
            let out = dir.path().join(format!("{id}.out"));
            store.restore(id, &out).unwrap();
            assert_eq!(&std::fs::read(&out).unwrap(), want, "{id}");
        }
        assert!(store.verify(None).unwrap().iter().all(|(_, good)| *good));
    }

    #[test]
    fn a_compressed_stream_is_smaller_and_gives_the_same_copy() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        // Text-like blocks (compress well), then noise (does not), then zeros (a hole).
        let mut data: Vec<u8> = (0..6 * BLOCK)
            .map(|i| b"reprise "[i % 8] ^ (i / 4096) as u8)
            .collect();
        let mut x = 0x9e37_79b9_u32;
        data.extend((0..2 * BLOCK).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }));
        data.extend(vec![0u8; BLOCK]);
        std::fs::write(&src, &data).unwrap();
        let store = Store::new(&dst);
        let (m, _) = store.base_manifest(false).unwrap();
        let (mut plain, mut packed) = (Vec::new(), Vec::new());
        let sent_plain = send(&src, &m, &mut plain, false).unwrap();
        let sent_packed = send(&src, &m, &mut packed, true).unwrap();
        assert_eq!(sent_plain.blocks, sent_packed.blocks);
        assert_eq!(sent_plain.bytes, 8 * BLOCK as u64);
        // The noise goes as it is; the text shrinks to a few percent.
        assert!(
            sent_packed.bytes > 2 * BLOCK as u64,
            "{}",
            sent_packed.bytes
        );
        assert!(
            sent_packed.bytes < 3 * BLOCK as u64,
            "{}",
            sent_packed.bytes
        );
        assert!(packed.len() < plain.len() / 2);
        store
            .apply(
                &mut &packed[..],
                NewPoint {
                    id: "p1".into(),
                    taken_at: Utc::now(),
                    source: "src".into(),
                    retention: 2,
                    definition: None,
                },
            )
            .unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), data);
    }

    #[test]
    fn a_flipped_byte_marks_the_point_bad_and_the_next_run_mends_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![9u8; 4 * BLOCK]).unwrap();
        replicate(&src, &dst, "p1", 5);
        write_at(&dst, 2 * BLOCK as u64 + 10, b"X");
        let store = Store::new(&dst);
        assert_eq!(store.verify(None).unwrap(), [("p1".to_string(), false)]);
        assert_eq!(store.points().unwrap()[0].verified, Verified::Bad);
        let (_, sent) = replicate(&src, &dst, "p2", 5);
        assert_eq!(sent.blocks, 1);
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    }

    #[test]
    fn an_update_cut_before_its_commit_leaves_the_mirror_alone() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        std::fs::write(&src, vec![5u8; 8 * BLOCK]).unwrap();
        replicate(&src, &dst, "p1", 5);
        let before = std::fs::read(&dst).unwrap();
        write_at(&src, 0, &vec![6u8; 8 * BLOCK]);
        let store = Store::new(&dst);
        let (m, _) = store.base_manifest(false).unwrap();
        let mut stream = Vec::new();
        send(&src, &m, &mut stream, false).unwrap();
        let cut = &stream[..stream.len() / 2];
        let err = store
            .apply(
                &mut &cut[..],
                NewPoint {
                    id: "p2".into(),
                    taken_at: Utc::now(),
                    source: "src".into(),
                    retention: 5,
                    definition: None,
                },
            )
            .unwrap_err();
        assert!(err.to_string().contains("ended early"), "{err}");
        assert_eq!(std::fs::read(&dst).unwrap(), before);
        // The failed update threw its journal and pending delta away at once (a killed one
        // leaves them to the next run: see the lab's kill tests).
        let store_dir = dst.with_extension("img.reprise");
        for left in ["journal", "delta.pending"] {
            assert!(!store_dir.join(left).exists(), "{left} is left behind");
        }
        assert_eq!(store.verify(None).unwrap(), [("p1".to_string(), true)]);
        replicate(&src, &dst, "p2", 5);
        assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    }
}
