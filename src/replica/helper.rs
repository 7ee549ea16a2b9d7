//! What `reprise helper …` does on a host: the source side reads its image and sends the
//! blocks that differ from the recovery manifest; the recovery side answers with its manifest,
//! applies a stream, lists, verifies and restores points. Standard input and output carry the
//! protocol (binary manifests and streams, JSON answers); errors are returned, one line each.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use serde::Serialize;

pub use super::blocks::hash_file;
use super::blocks::{self, BLOCK, Manifest, tree};
use super::kept::{self, Kept};
use super::meta::{CopyState, Lease};
use super::nbd;
pub use super::protocol::Request;
use super::protocol::{DiskFormat, GO, Hello, NO_GO, NOT_KEPT, PROTOCOL, refuse_request};
use super::store::{HowRead, NewPoint, Store};
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
    /// The point's copy is a raw image of the disk as the guest sees it (read through QEMU,
    /// `changed_blocks`), whatever format the definition gives the primary's disks.
    #[serde(default)]
    pub guest_view: bool,
}

/// What the source sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Blocks read, and of them sent (they differ from the recovery manifest).
    pub read: u64,
    pub blocks: u64,
    pub bytes: u64,
    /// The size and BLAKE3 of what was read: the recovery side's once it applied the stream.
    pub size: u64,
    pub whole: [u8; 32],
    /// The tree of its block hashes ([`blocks::tree`]), to keep whole; none when the kept
    /// manifest it was read against was updated in place.
    pub tree: Option<Vec<blocks::Cv>>,
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
    match req {
        Request::Version => answer_json(stdout, &Hello::this()),
        Request::HashSelf => hash_self(stdout),
        Request::Send {
            image,
            compress,
            live,
            nbd,
            export,
            format,
            bitmap,
            audit,
            base,
            marks,
            after_go,
        } => {
            if after_go {
                wait_for_go(&image, stdin)?;
            }
            let from = SendFrom {
                live,
                nbd,
                export,
                format,
                bitmap,
                audit,
                marks,
            };
            send_disk(&image, &from, base, compress, stdin, stdout)
        }
        Request::Kept { image, digest } => is_kept(&image, &digest, stdout),
        Request::Manifest {
            image,
            reread,
            digest,
            overwrite_changed,
        } => base_manifest(&image, (reread, overwrite_changed), digest, stdout),
        Request::Apply {
            image,
            point,
            taken_at,
            source,
            retention,
            definition,
            mode,
            why,
            checkpoint,
            since,
            created,
            marker,
            pending,
            overwrite_changed,
        } => {
            let read = mode.map(|mode| HowRead {
                mode,
                why,
                checkpoint,
                since,
                created,
                missed: None,
                marker,
            });
            let new = NewPoint {
                id: point,
                taken_at,
                source,
                retention,
                definition,
                read,
                pending,
                overwrite_changed,
            };
            apply_disk(&image, new, stdin, stdout)
        }
        Request::PutDefinition { image, blake3 } => put_definition(&image, &blake3, stdin),
        Request::Definition { image, point } => definition(&image, &point, stdout),
        Request::SendTree { dir } => send_files(&dir, stdin, stdout),
        Request::TreeBase {
            dir,
            reread,
            overwrite_changed,
        } => files_base(&dir, (reread, overwrite_changed), stdout),
        Request::ApplyTree {
            dir,
            point,
            taken_at,
            source,
            retention,
            source_ahead_us,
            overwrite_changed,
        } => {
            let ahead = chrono::Duration::microseconds(source_ahead_us);
            let new = NewPoint {
                id: point,
                taken_at,
                source,
                retention,
                definition: None,
                read: None,
                pending: false,
                overwrite_changed,
            };
            apply_files(&dir, new, ahead, stdin, stdout)
        }
        Request::Points { image } => points(&image, stdout),
        Request::Verify { image, point } => verify(&image, point.as_deref(), stdout),
        Request::Restore {
            image,
            point,
            output,
        } => restore(&image, &point, &output),
        Request::RollBack { image, point } => roll_back(&image, &point, stdout),
        Request::MarkUnusable { image, point, why } => {
            let marked = Store::new(&image)
                .mark_unusable(&point, &why)
                .map_err(|e| e.to_string())?;
            answer_json(stdout, &marked)
        }
        Request::MarkTorn {
            image,
            taken_at,
            why,
        } => {
            let marked = Store::new(&image)
                .mark_torn(taken_at, &why)
                .map_err(|e| e.to_string())?;
            answer_json(stdout, &marked)
        }
        Request::Confirm { image, taken_at } => {
            let points = Store::new(&image)
                .confirm(taken_at)
                .map_err(|e| e.to_string())?;
            answer_json(stdout, &points)
        }
        Request::Settle { image, wait } => settle(&image, wait, stdout),
        Request::Inspect { paths } => inspect_all(&paths, stdout),
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
            written_until,
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
                written_until,
                verified,
            };
            let terms = LeaseTerms {
                expect,
                wait,
                started,
            };
            take_lease(&path, &lease, &terms, stdout)
        }
        Request::Release {
            paths,
            run,
            kind,
            returned,
            forget_returned,
            accept,
        } => {
            let returned = CopiedBack {
                stamp: returned.as_deref(),
                forget: forget_returned,
                accept,
            };
            release(&paths, run.as_deref(), kind, returned, stdout)
        }
    }
}

/// Writes an answer whole and flushes it.
/// Waits for [`GO`], the first byte of `stdin`, before `image` is so much as opened: the
/// send was started while its disk's freeze was being made.
fn wait_for_go(image: &Path, stdin: &mut impl Read) -> Result<(), String> {
    let mut byte = [0u8; 1];
    loop {
        match stdin.read(&mut byte) {
            Ok(n) if n > 0 && byte[0] == GO => return Ok(()),
            Ok(_) => return Err(format!("{}: {NO_GO}", image.display())),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{}: {NO_GO} ({e})", image.display())),
        }
    }
}

fn answer(stdout: &mut dyn Write, bytes: &[u8]) -> Result<(), String> {
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing the answer: {e}"))
}

/// Writes `value` as a JSON answer.
fn answer_json(stdout: &mut dyn Write, value: &impl Serialize) -> Result<(), String> {
    answer(stdout, &serde_json::to_vec(value).expect("serializes"))
}

/// [`Request::HashSelf`].
fn hash_self(stdout: &mut dyn Write) -> Result<(), String> {
    // The file this process runs, even if its path was replaced since.
    let me = Path::new("/proc/self/exe");
    let h = hash_file(me).map_err(|e| format!("{}: {e}", me.display()))?;
    answer(stdout, format!("{h}\n").as_bytes())
}

/// Where [`Request::Send`] reads the disk: an NBD export given, a `qemu-nbd` of a qcow2 image,
/// or the image file itself.
struct SendFrom {
    /// The image file may be written while it is read (see [`send_image`]).
    live: bool,
    nbd: Option<std::path::PathBuf>,
    export: Option<String>,
    format: Option<DiskFormat>,
    bitmap: Option<String>,
    /// Every block read, checked against `bitmap` ([`NbdSource::audit`]).
    audit: bool,
    /// Bitmaps a qcow2 file must hold once `qemu-nbd` holds it ([`holds_marks`]).
    marks: Vec<String>,
}

/// [`Request::Send`]: the blocks of `image` that differ from the base, as a stream.
fn send_disk(
    image: &Path,
    from: &SendFrom,
    base: Option<String>,
    compress: bool,
    stdin: &mut impl Read,
    stdout: &mut impl Write,
) -> Result<(), String> {
    if let Some(why) = Store::new(image).written_by_its_own_copy() {
        return Err(format!("{} is not read: {why}", image.display()));
    }
    refuse_half_written(image, Store::new(image).half_written())?;
    let base = match base {
        Some(digest) => Base::Kept(
            Kept::open(kept::dir().as_deref(), image, &digest)?.ok_or_else(|| {
                format!("the manifest {digest} of {} {NOT_KEPT}", image.display())
            })?,
        ),
        None => Base::Given(
            Manifest::read(&mut (&mut *stdin).take(blocks::MAX_MANIFEST_BYTES))
                .map_err(|e| format!("the recovery manifest: {e}"))?,
        ),
    };
    let bitmap = from.bitmap.as_deref();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout);
    let sent = match (&from.nbd, from.format) {
        (Some(socket), _) => {
            let export = from.export.as_deref().ok_or("--nbd needs --export")?;
            send_nbd(
                &NbdSource {
                    socket,
                    export,
                    bitmap,
                    audit: from.audit,
                    // libvirt's export is of one instant, whatever is written after.
                    unchanged: None,
                    origin: origin_of(image),
                },
                base,
                &mut w,
                compress,
            )?
        }
        (None, Some(DiskFormat::Qcow2)) => {
            let unchanged = unwritten_since(image)?;
            let served = QemuNbd::serve(image, bitmap)?;
            // Held now (against QEMU; against anything else, by `unchanged` at the end).
            holds_marks(image, &from.marks)?;
            send_nbd(
                &NbdSource {
                    socket: &served.socket,
                    export: QemuNbd::EXPORT,
                    bitmap,
                    audit: from.audit,
                    unchanged: Some(&unchanged),
                    origin: origin_of(image),
                },
                base,
                &mut w,
                compress,
            )?
        }
        (None, _) if bitmap.is_some() => {
            return Err("a dirty bitmap is read through NBD only (--nbd or --format qcow2)".into());
        }
        (None, format) => {
            let how = AsFile {
                live: from.live,
                raw: format == Some(DiskFormat::Raw),
            };
            send_image(image, &base.manifest()?, &mut w, compress, how)?
        }
    };
    w.flush().map_err(|e| format!("writing the stream: {e}"))?;
    // Kept for the next replication, which then sends its digest instead of it. A
    // manifest that cannot be kept only costs sending it next time.
    if let Some(tree) = &sent.tree {
        kept::keep(kept::dir().as_deref(), image, sent.size, &sent.whole, tree);
    }
    Ok(())
}

/// Which file on this machine `image` is ([`wire::Origin`]), its links followed.
fn origin_of(image: &Path) -> Option<wire::Origin> {
    wire::Origin::of(&std::fs::metadata(image).ok()?)
}

/// A look at the image file `image` now, and what tells, once it is read, whether it was
/// written since: `qemu-nbd` takes QEMU's lock, which stops QEMU, not a `cp` over the file or
/// a peer writing it on shared storage; read while written, it is a copy of no instant.
/// The files watched are the image and what QEMU reads through it (its backing chain and
/// data files, [`crate::replica::image::qcow2_chain`]): one written meanwhile changes the
/// disk as much.
fn unwritten_since(image: &Path) -> Result<impl Fn() -> Result<(), String> + '_, String> {
    let name = image.display().to_string();
    let files = crate::replica::image::qcow2_chain(image)?;
    let before = files
        .iter()
        .map(|f| {
            blocks::settled_look(|| std::fs::metadata(f))
                .map_err(|e| format!("{}: {e}", f.display()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(move || {
        for (f, before) in files.iter().zip(&before) {
            // By its path: a file renamed over it meanwhile is another file.
            let after = std::fs::metadata(f).map_err(|e| format!("{}: {e}", f.display()))?;
            if !blocks::same_file_state(before, &after) {
                let which = match f.as_path() == image {
                    true => String::new(),
                    false => format!(" (its {} was)", f.display()),
                };
                return Err(format!(
                    "{name}: it was written while it was read{which} (by a program other than QEMU, or the file replaced): a copy of no single instant, so this replication makes no point and the recovery copy keeps its last one; replicate again once nothing writes it"
                ));
            }
        }
        Ok(())
    })
}

/// Whether the qcow2 file `image` holds each bitmap of `marks`: the marks that prove it is
/// the file a read through a bitmap was decided on ([`crate::replica::cbt::add_marker`]). A
/// file put back to another (a copy kept by hand) between that decision and this read has a
/// bitmap that misses what the recovery copy holds; read through it, the copy would be
/// neither file.
fn holds_marks(image: &Path, marks: &[String]) -> Result<(), String> {
    if marks.is_empty() {
        return Ok(());
    }
    let name = image.display();
    let out = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json", "-f", "qcow2", "--"])
        .arg(image)
        .output()
        .map_err(|e| format!("{name}: qemu-img info cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{name}: its bitmaps cannot be read (qemu-img info): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{name}: qemu-img info is not understood: {e}"))?;
    let held = crate::replica::cbt::bitmaps_in(&info);
    match marks
        .iter()
        .find(|m| !held.iter().any(|b| b["name"] == m.as_str()))
    {
        None => Ok(()),
        Some(m) => Err(format!(
            "{name}: the bitmap {m} that marked it is not in it: it is not the file this replication decided to read through its dirty bitmap (put back to another since?); nothing was sent, the recovery copy keeps its last point; replicate again (the next one reads every block and says why)"
        )),
    }
}

/// A copy reprise writes now, or left half written (`why`), is never read as the source of a
/// replication (a failback's copy back reads a recovery copy): it holds neither the point
/// before nor the one after, and what it holds would be copied, and started, as data.
fn refuse_half_written(source: &Path, why: Option<String>) -> Result<(), String> {
    match why {
        None => Ok(()),
        Some(why) => Err(format!(
            "{} is not read: {why}; it holds neither the point before that update nor the one after (the run that wrote it, resumed, or the next replication into it settles it)",
            source.display()
        )),
    }
}

/// [`Request::Kept`]: whether the manifest `digest` of `image` is kept here.
fn is_kept(image: &Path, digest: &str, stdout: &mut dyn Write) -> Result<(), String> {
    let kept = Kept::open(kept::dir().as_deref(), image, digest)?.is_some();
    answer(stdout, if kept { b"true" } else { b"false" })
}

/// [`Request::Manifest`]: the base manifest of `image`, or only its digest; `(reread,
/// overwrite)` as [`Store::base_manifest`]'s.
fn base_manifest(
    image: &Path,
    (reread, overwrite): (bool, bool),
    digest: bool,
    stdout: &mut dyn Write,
) -> Result<(), String> {
    let store = Store::new(image);
    if digest {
        let d = store
            .base_digest(reread, overwrite)
            .map_err(|e| e.to_string())?;
        answer(stdout, format!("{d}\n").as_bytes())
    } else {
        let (m, _) = store
            .base_manifest(reread, overwrite)
            .map_err(|e| e.to_string())?;
        answer(stdout, &m.encode())
    }
}

/// [`Request::Apply`]: applies the stream on stdin to `image` as the point `new`.
fn apply_disk(
    image: &Path,
    new: NewPoint,
    stdin: &mut impl Read,
    stdout: &mut dyn Write,
) -> Result<(), String> {
    let mut input = std::io::BufReader::with_capacity(1 << 20, stdin);
    let applied = Store::new(image)
        .apply(&mut input, new)
        .map_err(|e| e.to_string())?;
    answer_json(stdout, &applied)
}

/// [`Request::PutDefinition`]: keeps the definition on stdin if it has the BLAKE3 announced.
fn put_definition(image: &Path, blake3: &str, stdin: &mut impl Read) -> Result<(), String> {
    let bytes = read_bounded(stdin, crate::vmdef::MAX_BYTES as u64, "the definition")?;
    let store = Store::new(image);
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

/// [`Request::Definition`]: the definition kept with `point`.
fn definition(image: &Path, point: &str, stdout: &mut dyn Write) -> Result<(), String> {
    let store = Store::new(image);
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
    let bytes = super::meta::read_definition(store.meta_dir(), &hash)
        .map_err(|why| format!("{}: the definition of point {point} {why}", image.display()))?;
    let text = DefinitionText {
        blake3: hash,
        text: String::from_utf8_lossy(&bytes).into_owned(),
        guest_view: p.read.is_some(),
    };
    answer_json(stdout, &text)
}

/// [`Request::SendTree`]: the files of `dir` that differ from the recovery tree on stdin.
fn send_files(dir: &Path, stdin: &mut impl Read, stdout: &mut impl Write) -> Result<(), String> {
    refuse_half_written(dir, TreeStore::new(dir).half_written())?;
    let m = read_bounded(stdin, super::tree::MAX_TREE_BYTES, "the recovery tree")?;
    let base: Tree = serde_json::from_slice(&m)
        .map_err(|e| format!("the recovery tree is not understood: {e}"))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout);
    send_tree(dir, &base, &mut w)?;
    w.flush().map_err(|e| format!("writing the stream: {e}"))?;
    Ok(())
}

/// [`Request::TreeBase`]: the tree of the backup set `dir` to compare against; `(reread,
/// overwrite)` as [`TreeStore::base`]'s.
fn files_base(
    dir: &Path,
    (reread, overwrite): (bool, bool),
    stdout: &mut dyn Write,
) -> Result<(), String> {
    let t = TreeStore::new(dir)
        .base(reread, overwrite)
        .map_err(|e| e.to_string())?;
    answer_json(stdout, &t)
}

/// [`Request::ApplyTree`]: applies the stream on stdin to the backup set `dir`.
fn apply_files(
    dir: &Path,
    new: NewPoint,
    source_ahead: chrono::Duration,
    stdin: &mut impl Read,
    stdout: &mut dyn Write,
) -> Result<(), String> {
    let mut input = std::io::BufReader::with_capacity(1 << 20, stdin);
    let (point, files, recovered) = TreeStore::new(dir)
        .apply_from(&mut input, new, source_ahead)
        .map_err(|e| e.to_string())?;
    let applied = super::store::Applied {
        blocks: files,
        point,
        dropped: Vec::new(),
        recovered,
        unmarked: None,
    };
    answer_json(stdout, &applied)
}

/// [`Request::Points`].
fn points(image: &Path, stdout: &mut dyn Write) -> Result<(), String> {
    let points = if image.is_dir() {
        TreeStore::new(image).points()
    } else {
        Store::new(image).points()
    }
    .map_err(|e| e.to_string())?;
    answer_json(stdout, &points)
}

/// [`Request::Verify`]: every point, or only `point`, checked against its hashes.
fn verify(image: &Path, point: Option<&str>, stdout: &mut dyn Write) -> Result<(), String> {
    let checked = if image.is_dir() {
        TreeStore::new(image).verify(point)
    } else {
        Store::new(image).verify(point)
    };
    let checked: Vec<Checked> = checked
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(point, good)| Checked { point, good })
        .collect();
    answer_json(stdout, &checked)
}

/// [`Request::Restore`]: writes `point` of `image` to `output`.
fn restore(image: &Path, point: &str, output: &Path) -> Result<(), String> {
    if image.is_dir() {
        let store = TreeStore::new(image);
        store.restore(point, output).map_err(|e| e.to_string())?;
        // What the point's copy left out is not in what was restored either: said, with
        // what to do, where the person restoring reads.
        let left = store.points().ok().and_then(|points| {
            let p = points.into_iter().find(|p| p.id == point)?;
            super::remote::left_out_said(&p.left_out)
        });
        if let Some(left) = left {
            eprintln!("{}: {left}", output.display());
        }
        Ok(())
    } else {
        Store::new(image)
            .restore(point, output)
            .map_err(|e| e.to_string())
    }
}

/// [`Request::RollBack`].
fn roll_back(image: &Path, point: &str, stdout: &mut dyn Write) -> Result<(), String> {
    let done = Store::new(image)
        .roll_back(point)
        .map_err(|e| e.to_string())?;
    answer_json(stdout, &done)
}

/// [`Request::Settle`]: settles an interrupted update, waiting up to `wait` seconds for a
/// lock held by another.
fn settle(image: &Path, wait: u64, stdout: &mut dyn Write) -> Result<(), String> {
    let wait = std::time::Duration::from_secs(wait);
    let until = super::store::instant_after(wait);
    let note = loop {
        let settled = if image.is_dir() {
            TreeStore::new(image).settle()
        } else {
            Store::new(image).settle()
        };
        match settled {
            Err(super::StoreError::Locked { .. }) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            other => break other.map_err(|e| e.to_string())?,
        }
    };
    answer_json(stdout, &note)
}

/// [`Request::Inspect`]: what each copy and its metadata say.
fn inspect_all(paths: &[std::path::PathBuf], stdout: &mut dyn Write) -> Result<(), String> {
    let states: Vec<CopyState> = paths.iter().map(|p| inspect(p)).collect();
    answer_json(stdout, &states)
}

/// How [`Request::Lease`] takes a copy's lease: the lease it expects to find, how long it
/// waits for another to go, whether the step it is for has started.
struct LeaseTerms {
    expect: Option<String>,
    wait: u64,
    started: bool,
}

/// [`Request::Lease`]: takes `lease` on the copy `path`.
fn take_lease(
    path: &Path,
    lease: &Lease,
    terms: &LeaseTerms,
    stdout: &mut dyn Write,
) -> Result<(), String> {
    let wait = std::time::Duration::from_secs(terms.wait);
    let note = if path.is_dir() {
        TreeStore::new(path).take_lease(lease, terms.expect.as_deref(), wait)
    } else {
        Store::new(path).take_lease(lease, terms.expect.as_deref(), wait, terms.started)
    }
    .map_err(|e| e.to_string())?;
    answer_json(stdout, &note)
}

/// What [`Request::Release`] records or forgets of a failback's copy back of a backup set,
/// and whether what was written in the copies since their newest point is let go.
struct CopiedBack<'a> {
    stamp: Option<&'a str>,
    forget: bool,
    accept: bool,
}

/// [`Request::Release`]: drops the leases on `paths` of run `run` and kind `kind` (each filter
/// only when given).
fn release(
    paths: &[std::path::PathBuf],
    run: Option<&str>,
    kind: Option<super::meta::LeaseKind>,
    returned: CopiedBack<'_>,
    stdout: &mut dyn Write,
) -> Result<(), String> {
    let mut released = Vec::new();
    for p in paths {
        let which = |l: Option<&Lease>, name: &str| match l {
            Some(l) => run.is_none_or(|r| l.run == r) && kind.is_none_or(|k| l.kind == k),
            // A lease that cannot be read: by its file name, or with no filter.
            None => {
                run.is_none_or(|r| name.ends_with(r))
                    && kind.is_none_or(|k| name.starts_with(&k.to_string()))
            }
        };
        let done = if p.is_dir() {
            let t = TreeStore::new(p);
            let mut done = match returned.stamp {
                Some(stamp) => t.release_returned(which, stamp),
                None => t.release(which),
            }
            .map_err(|e| e.to_string())?;
            if returned.forget && t.forget_returned().map_err(|e| e.to_string())? {
                done.push(
                    "the record of a failback's copy back (replication may write over the folder again)"
                        .to_string(),
                );
            }
            if returned.accept {
                done.extend(let_go(t.accept_changes())?);
            }
            done
        } else {
            let s = Store::new(p);
            // Let go as a failback's copy back read it: refused, before any lease is
            // removed, when it was written since.
            let as_read = match (returned.stamp, returned.accept) {
                (Some(stamp), true) => Some(let_go(s.accept_as(stamp))?),
                _ => None,
            };
            let mut done = s.release(which).map_err(|e| e.to_string())?;
            match as_read {
                Some(let_go_as) => done.extend(let_go_as),
                None if returned.accept => done.extend(let_go(s.accept_changes())?),
                None => {}
            }
            done
        };
        released.extend(done.into_iter().map(|d| format!("{}: {d}", p.display())));
    }
    answer_json(stdout, &released)
}

/// What [`Request::Release`] says of a copy it let go: its change since its newest point
/// (`accepted`, from `accept_changes`), if it changed.
fn let_go(accepted: Result<Option<String>, super::StoreError>) -> Result<Option<String>, String> {
    Ok(accepted
        .map_err(|e| e.to_string())?
        .map(|why| match why.starts_with(super::meta::TAKEN) {
            true => why,
            false => format!(
                "what was written in it outside reprise ({why}): the next replication overwrites it"
            ),
        }))
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

/// Reads `image` and writes the stream of the blocks that differ from `base`, compressed with
/// `compress` where that makes them smaller; an image written while it is read is refused
/// ([`send_image`]).
pub fn send(
    image: &Path,
    base: &Manifest,
    w: &mut impl Write,
    compress: bool,
) -> Result<Sent, String> {
    send_image(image, base, w, compress, AsFile::default())
}

/// How [`send_image`] reads a disk file as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct AsFile {
    /// Its driver reads it while the guest runs with its filesystems frozen, where writes
    /// below them (swap) still land: a file written while it is read is sent all the same.
    pub live: bool,
    /// Its format is known to be raw (the guest's bytes, whatever its first ones look like):
    /// its header is not looked at for another file it names ([`super::image`]). A file named
    /// `.raw` is taken as raw too.
    pub raw: bool,
}

/// [`send`], as `how` says. Unless [`AsFile::live`], nothing may write the file while it is
/// read (a stopped vm, or a snapshot's read-only base): one found written between the start
/// and the end of the read (a vm started on it, another program) would be a copy of no
/// instant, blocks of before beside blocks of after, with a hash that matches it; the stream
/// then has no end, and the recovery side makes no point. A file that is not all of its disk
/// (a device node, an overlay whose header names a backing file) is refused before anything
/// is sent ([`super::image::whole_disk`]).
pub fn send_image(
    image: &Path,
    base: &Manifest,
    w: &mut impl Write,
    compress: bool,
    how: AsFile,
) -> Result<Sent, String> {
    let name = image.display().to_string();
    let mut compressor = match compress {
        true => Some(wire::Compressor::new().map_err(|e| format!("zstd: {e}"))?),
        false => None,
    };
    let file = File::open(image).map_err(|e| format!("{name}: {e}"))?;
    // Once its times are a tick old: a write in the tick of the last one would leave them.
    let before = blocks::settled_look(|| file.metadata()).map_err(|e| format!("{name}: {e}"))?;
    // A device node's size as a file is 0, and an overlay's file is not all of its disk. A
    // file named `.raw` is raw (Proxmox, the lab: its hypervisor opens it so): its bytes are
    // the guest's, whatever they begin with.
    let raw = how.raw || image.extension().is_some_and(|e| e == "raw");
    super::image::whole_disk(&file, &before, raw).map_err(|e| format!("{name}: {e}"))?;
    let size = before.len();
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
            origin: wire::Origin::of(&before),
        },
    )
    .map_err(werr)?;
    // Handed on at once, as each batch's changed blocks are below: the link carries them
    // while the next batches are hashed (the 1 MiB buffer they go through would hold them
    // back for about 100 MiB of reading at 1% changed, and the first of them that long).
    w.flush().map_err(werr)?;
    let mut all = Vec::with_capacity(blocks::count(size) as usize);
    let mut single = None;
    let mut sent = Sent {
        read: blocks::count(size),
        blocks: 0,
        bytes: 0,
        size,
        whole: [0; 32],
        tree: None,
    };
    blocks::read_blocks(&file, size, |first, buf| {
        if size <= BLOCK as u64 {
            single = Some(*blake3::hash(buf).as_bytes());
        }
        let cvs = blocks::cvs(first, buf);
        let before = sent.blocks;
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
        if sent.blocks > before {
            w.flush()?;
        }
        all.extend(cvs);
        Ok(())
    })
    .map_err(|e| format!("{name}: {e}"))?;
    // By its path: a file renamed over it meanwhile is another file.
    let after = std::fs::metadata(image).map_err(|e| format!("{name}: {e}"))?;
    if !how.live && !super::blocks::same_file_state(&before, &after) {
        return Err(format!(
            "{name}: it was written while it was read (a vm started on it, or another program writing it): a copy of no single instant, so this replication makes no point and the recovery copy keeps its last one; replicate again once nothing writes it (a running vm is frozen by its driver's replicate-begin; a driver whose freeze lets the guest go on writing its disks, as a filesystem freeze does, says so with replicate_reads_live = true)"
        ));
    }
    let (whole, tree) = whole_of(all, single);
    wire::write_end(w, &whole).map_err(werr)?;
    sent.whole = whole;
    sent.tree = Some(tree);
    Ok(sent)
}

/// The whole-image hash of the blocks `leaves` (an image of one block: `single`, the hash of
/// its bytes) and their tree.
fn whole_of(leaves: Vec<blocks::Cv>, single: Option<[u8; 32]>) -> ([u8; 32], Vec<blocks::Cv>) {
    let n = leaves.len() as u64;
    let mut nodes = tree::of(leaves);
    let whole = tree::root(&mut nodes[..], n)
        .expect("in memory")
        .or(single)
        .unwrap_or(*blake3::hash(b"").as_bytes());
    (whole, nodes)
}

/// What the source compares against: the recovery manifest as it was sent, or the one it
/// kept (updated in place when only the blocks a dirty bitmap marks are read).
pub enum Base {
    Given(Manifest),
    Kept(Kept),
}

impl Base {
    fn size(&self) -> u64 {
        match self {
            Base::Given(m) => m.size,
            Base::Kept(k) => k.size,
        }
    }

    fn whole(&self) -> [u8; 32] {
        match self {
            Base::Given(m) => m.whole,
            Base::Kept(k) => k.whole,
        }
    }

    /// The whole manifest.
    pub fn manifest(self) -> Result<Manifest, String> {
        match self {
            Base::Given(m) => Ok(m),
            Base::Kept(k) => k.manifest(),
        }
    }
}

/// An NBD export to read a disk from, as the guest sees it.
pub struct NbdSource<'a> {
    pub socket: &'a Path,
    pub export: &'a str,
    /// Read only the blocks this dirty bitmap marks (`qemu:dirty-bitmap:NAME`); the others
    /// are the recovery manifest's.
    pub bitmap: Option<&'a str>,
    /// Read every block all the same, and check them against `bitmap`: a block that differs
    /// from the recovery manifest and that the bitmap does not mark was written without the
    /// bitmap knowing (or the copy changed behind its point); the stream says how many
    /// ([`wire::Record::Unmarked`]), and the recovery side marks the points read through
    /// that bitmap bad.
    pub audit: bool,
    /// Asked once every block is read, before the stream ends: an error ends it without its
    /// end (the recovery side then makes no point). `qemu-nbd` reading an image file does
    /// not stop another program writing it: [`unwritten_since`] tells.
    pub unchanged: Option<&'a dyn Fn() -> Result<(), String>>,
    /// The disk file the export is of, when it can be told ([`wire::Origin`]).
    pub origin: Option<wire::Origin>,
}

/// [`send`], reading the disk through an NBD export: every block, or with a bitmap only the
/// blocks it marks (the block hashes of the others, and so the whole-image hash, come from
/// the recovery manifest, which must be of the same size: only the nodes of its tree above
/// the blocks read are computed again, in place when it is the kept one).
pub fn send_nbd(
    src: &NbdSource,
    base: Base,
    w: &mut impl Write,
    compress: bool,
) -> Result<Sent, String> {
    let mut client =
        nbd::Client::connect(src.socket, src.export, src.bitmap).map_err(|e| e.to_string())?;
    let size = client.size();
    let n = blocks::count(size);
    let name = format!("NBD export {}", src.export);
    // Audited: every block, and what the bitmap marks beside (nothing to check for a disk
    // whose size changed, or of one block: both are read whole in any case).
    let marked = match src.bitmap {
        Some(_) if src.audit && base.size() == size && n > 1 => {
            Some(nbd_ranges(&mut client, src, &base, &name)?)
        }
        _ => None,
    };
    let ranges = match src.audit {
        true => vec![(0, n)],
        false => nbd_ranges(&mut client, src, &base, &name)?,
    };
    let mut unmarked = (0u64, 0u64);
    let mut compressor = match compress {
        true => Some(wire::Compressor::new().map_err(|e| format!("zstd: {e}"))?),
        false => None,
    };
    let werr = |e: std::io::Error| format!("writing the stream of {name}: {e}");
    wire::write_header(
        w,
        &wire::Header {
            base_size: base.size(),
            base_whole: base.whole(),
            size,
            origin: src.origin,
        },
    )
    .map_err(werr)?;
    // Handed on at once, as each read's changed blocks are below (see `send`).
    w.flush().map_err(werr)?;
    let mut hashes = NbdHashes::new(src.bitmap.filter(|_| !src.audit), base, n)?;
    if let NbdHashes::Kept(k) = &hashes {
        k.read_ahead(&ranges);
    }
    let mut changed: Vec<u64> = Vec::new();
    let mut sent = Sent {
        read: 0,
        blocks: 0,
        bytes: 0,
        size,
        whole: [0; 32],
        tree: None,
    };
    let mut single = None;
    client.read_many(&nbd_reads(&ranges, size), |start, data| {
        let b = start / BLOCK as u64;
        if size <= BLOCK as u64 {
            single = Some(*blake3::hash(data).as_bytes());
        }
        let cvs = blocks::cvs(b, data);
        let before = sent.blocks;
        for (i, (c, d)) in cvs.iter().zip(data.chunks(BLOCK)).enumerate() {
            let idx = b + i as u64;
            if !hashes.update(idx, *c)? {
                continue;
            }
            changed.push(idx);
            if let Some(marked) = &marked
                && !within(marked, idx)
            {
                if unmarked.0 == 0 {
                    unmarked.1 = idx;
                }
                unmarked.0 += 1;
            }
            sent.blocks += 1;
            sent.bytes += send_block(w, compressor.as_mut(), idx, d).map_err(werr)?;
        }
        if sent.blocks > before {
            w.flush().map_err(werr)?;
        }
        sent.read += cvs.len() as u64;
        Ok(())
    })?;
    drop(client);
    let (whole, kept) = hashes.root(n, &changed, single, &mut sent)?;
    let whole = whole.or(single).unwrap_or(*blake3::hash(b"").as_bytes());
    // Said whenever the check was made, none missed included: the recovery side keeps
    // distrusting a bitmap found missing writes until a check finds none.
    if marked.is_some() {
        wire::write_unmarked(w, unmarked.0, unmarked.1).map_err(werr)?;
    }
    if let Some(unchanged) = src.unchanged {
        unchanged()?;
    }
    wire::write_end(w, &whole).map_err(werr)?;
    // The kept manifest is complete again once the stream is.
    if let Some(k) = kept {
        k.finish(&whole)?;
    }
    sent.whole = whole;
    Ok(sent)
}

/// The block hashes [`send_nbd`] keeps while it reads: with a bitmap, the base's tree,
/// updated where blocks changed; else the new leaves, compared with the base's.
enum NbdHashes {
    Tree(Vec<blocks::Cv>),
    Kept(Kept),
    Leaves {
        base: Vec<blocks::Cv>,
        new: Vec<blocks::Cv>,
    },
}

impl NbdHashes {
    fn new(bitmap: Option<&str>, base: Base, n: u64) -> Result<NbdHashes, String> {
        Ok(match (bitmap, base) {
            (Some(_), Base::Given(m)) => NbdHashes::Tree(tree::of(m.cvs)),
            (Some(_), Base::Kept(k)) => NbdHashes::Kept(k),
            (None, base) => NbdHashes::Leaves {
                base: base.manifest()?.cvs,
                new: Vec::with_capacity(n as usize),
            },
        })
    }

    /// Takes in the hash `c` of block `idx` as read; says whether the block changed.
    fn update(&mut self, idx: u64, c: blocks::Cv) -> Result<bool, String> {
        let old = match self {
            NbdHashes::Tree(t) => Some(t[idx as usize]),
            NbdHashes::Kept(kept) => Some(tree::Nodes::node(kept, idx as usize).map_err(kept_err)?),
            NbdHashes::Leaves { base, new } => {
                new.push(c);
                base.get(idx as usize).copied()
            }
        };
        if old == Some(c) {
            return Ok(false);
        }
        match self {
            NbdHashes::Tree(t) => t[idx as usize] = c,
            NbdHashes::Kept(kept) => {
                tree::Nodes::set_node(kept, idx as usize, c).map_err(kept_err)?
            }
            NbdHashes::Leaves { .. } => {}
        }
        Ok(true)
    }

    /// The whole-image hash once every block was read (`None` for an image of at most one
    /// block), the tree into `sent` when it is in memory, and the kept manifest to finish.
    fn root(
        self,
        n: u64,
        changed: &[u64],
        single: Option<[u8; 32]>,
        sent: &mut Sent,
    ) -> Result<(Option<[u8; 32]>, Option<Kept>), String> {
        Ok(match self {
            NbdHashes::Tree(mut t) => {
                tree::update(&mut t[..], n, changed).expect("in memory");
                let whole = tree::root(&mut t[..], n).expect("in memory");
                sent.tree = Some(t);
                (whole, None)
            }
            NbdHashes::Kept(mut k) => {
                tree::update(&mut k, n, changed).map_err(kept_err)?;
                (tree::root(&mut k, n).map_err(kept_err)?, Some(k))
            }
            NbdHashes::Leaves { new, .. } => {
                let (whole, t) = whole_of(new, single);
                sent.tree = Some(t);
                (Some(whole), None)
            }
        })
    }
}

fn kept_err(e: std::io::Error) -> String {
    format!("the kept manifest: {e}")
}

/// Writes changed block `idx` to the stream: as zeros, compressed, or as it is. Returns
/// the bytes of block data it put in the stream.
fn send_block(
    w: &mut impl Write,
    compressor: Option<&mut wire::Compressor>,
    idx: u64,
    d: &[u8],
) -> std::io::Result<u64> {
    if blocks::is_zero(d) {
        wire::write_zero(w, idx, d.len() as u32)?;
        Ok(0)
    } else if let Some(z) = compressor.and_then(|c| c.compress(d)) {
        wire::write_compressed(w, idx, d.len() as u32, &z)?;
        Ok(z.len() as u64)
    } else {
        wire::write_data(w, idx, d)?;
        Ok(d.len() as u64)
    }
}

/// The blocks [`send_nbd`] reads: ranges `[first, end)` of block indexes, every block or,
/// with a bitmap, those it marks.
fn nbd_ranges(
    client: &mut nbd::Client,
    src: &NbdSource,
    base: &Base,
    name: &str,
) -> Result<Vec<(u64, u64)>, String> {
    let size = client.size();
    let n = blocks::count(size);
    Ok(match src.bitmap {
        Some(bitmap) => {
            if base.size() != size {
                return Err(format!(
                    "{name} is {size} bytes and its copy {} bytes: the size changed, and the bitmap {bitmap} does not say what was written meanwhile; nothing was sent: replicate it with --scan (every block read)",
                    base.size()
                ));
            }
            if n <= 1 {
                // The hash of an image of one block is of its bytes: read it.
                vec![(0, n)]
            } else {
                let mut ranges: Vec<(u64, u64)> = Vec::new();
                for (off, len) in client.dirty_extents().map_err(|e| e.to_string())? {
                    let (a, b) = (
                        off / BLOCK as u64,
                        (off + len).div_ceil(BLOCK as u64).min(n),
                    );
                    match ranges.last_mut() {
                        Some((_, end)) if *end >= a => *end = (*end).max(b),
                        _ => ranges.push((a, b)),
                    }
                }
                ranges
            }
        }
        None => vec![(0, n)],
    })
}

/// Whether block `idx` is in one of `ranges` (sorted, apart).
fn within(ranges: &[(u64, u64)], idx: u64) -> bool {
    let k = ranges.partition_point(|&(_, end)| end <= idx);
    ranges.get(k).is_some_and(|&(first, _)| first <= idx)
}

/// The NBD reads of the block ranges `ranges` of an export of `size` bytes, each at most
/// [`nbd::MAX_READ`]: `(offset, length)`.
fn nbd_reads(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u32)> {
    let per = (nbd::MAX_READ as usize / BLOCK) as u64;
    let mut reads: Vec<(u64, u32)> = Vec::new();
    for &(first, end) in ranges {
        let mut b = first;
        while b < end {
            let k = per.min(end - b);
            let start = b * BLOCK as u64;
            reads.push((start, (k * BLOCK as u64).min(size - start) as u32));
            b += k;
        }
    }
    reads
}

/// A `qemu-nbd` serving an image read-only on a socket of its own, for as long as this lives.
/// It takes QEMU's shared lock: an image a running vm writes is refused.
pub struct QemuNbd {
    child: std::process::Child,
    dir: std::path::PathBuf,
    pub socket: std::path::PathBuf,
}

impl QemuNbd {
    pub const EXPORT: &'static str = "disk";

    /// Serves the qcow2 `image`, with the dirty bitmap `bitmap` (persistent, in the file).
    pub fn serve(image: &Path, bitmap: Option<&str>) -> Result<QemuNbd, String> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = std::env::temp_dir().join(format!(
            "reprise-nbd-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let socket = dir.join("nbd.sock");
        // Written once the image and its bitmap are open (the socket exists before).
        let ready = dir.join("pid");
        let mut cmd = std::process::Command::new("qemu-nbd");
        cmd.args([
            "--read-only",
            "--format=qcow2",
            "--shared=1",
            "--export-name",
        ])
        .arg(Self::EXPORT)
        .arg("--socket")
        .arg(&socket)
        .arg("--pid-file")
        .arg(&ready);
        if let Some(b) = bitmap {
            cmd.arg(format!("--bitmap={b}"));
        }
        cmd.arg("--")
            .arg(image)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().map_err(|e| {
            let _ = std::fs::remove_dir(&dir);
            format!("cannot start qemu-nbd (qemu-utils): {e}")
        })?;
        let mut served = QemuNbd { child, dir, socket };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ready.exists() {
            if let Ok(Some(status)) = served.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = served.child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!(
                    "qemu-nbd could not serve {} ({status}): {}",
                    image.display(),
                    err.trim()
                ));
            }
            if std::time::Instant::now() > until {
                return Err(format!(
                    "qemu-nbd did not serve {} within 30 s",
                    image.display()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(served)
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::store::{Applied, Verified};
    use chrono::Utc;

    fn write_at(path: &Path, off: u64, data: &[u8]) {
        use std::os::unix::fs::FileExt as _;
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(data, off).unwrap();
    }

    /// A send started before its disk's freeze holds opens nothing until it is told to read:
    /// its input's end, or another byte, ends it first (a disk that is not there is not
    /// even looked for); told, it reads as any send.
    #[test]
    fn a_send_started_early_opens_nothing_before_it_is_told_to_read() {
        let dir = tempfile::tempdir().unwrap();
        let send_of = |image: &Path| Request::Send {
            image: image.to_path_buf(),
            compress: false,
            live: false,
            nbd: None,
            export: None,
            format: None,
            bitmap: None,
            audit: false,
            base: None,
            marks: Vec::new(),
            after_go: true,
        };
        let absent = dir.path().join("absent.img");
        for input in [&b""[..], b"x", b"\0g"] {
            let mut out = Vec::new();
            let err = serve(send_of(&absent), None, &mut &input[..], &mut out).unwrap_err();
            assert!(err.contains(NO_GO), "{input:?}: {err}");
            assert!(out.is_empty());
        }
        // Told to read: the recovery manifest follows, then the disk is read.
        let mut input = vec![GO];
        input.extend_from_slice(&Manifest::empty().encode());
        let mut out = Vec::new();
        let err = serve(send_of(&absent), None, &mut &input[..], &mut out).unwrap_err();
        assert!(!err.contains(NO_GO) && err.contains("absent.img"), "{err}");
        // And the stream is the one a send started at once makes.
        let src = dir.path().join("src.img");
        std::fs::write(&src, vec![7u8; 3 * BLOCK]).unwrap();
        let mut early = Vec::new();
        serve(send_of(&src), None, &mut &input[..], &mut early).unwrap();
        let mut at_once = Vec::new();
        send(&src, &Manifest::empty(), &mut at_once, false).unwrap();
        assert_eq!(early, at_once);
    }

    /// One replication, as the two helpers do it, without the network.
    fn replicate(src: &Path, dst: &Path, id: &str, retention: u32) -> (u64, Sent) {
        let store = Store::new(dst);
        let (m, _) = store.base_manifest(false, false).unwrap();
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
                    read: None,
                    pending: false,
                    overwrite_changed: false,
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

    /// A stream that runs `then` once, at its first write after the header (flushed alone).
    struct WrittenMeanwhile<F: FnMut()> {
        bytes: Vec<u8>,
        flushed: bool,
        then: Option<F>,
    }

    impl<F: FnMut()> Write for WrittenMeanwhile<F> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.flushed
                && let Some(mut then) = self.then.take()
            {
                then();
            }
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.flushed = true;
            Ok(())
        }
    }

    /// A qcow2 overlay's file is refused (it is not all of its disk), unless the disk is
    /// known raw: told so, or named `.raw`, where the same bytes are a raw disk whose guest
    /// wrote a qcow2 header (and are copied as they are).
    #[test]
    fn an_overlay_is_refused_unless_the_disk_is_raw() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let qemu_img = crate::replica::image::tests::qemu_img;
        let base = p("base.qcow2").to_string_lossy().into_owned();
        qemu_img(&["create", "-q", "-f", "qcow2", &base, "1M"]);
        let over = p("over.qcow2").to_string_lossy().into_owned();
        qemu_img(&[
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", &base, &over,
        ]);
        let send_as = |path: &Path, how: AsFile| {
            send_image(path, &Manifest::empty(), &mut Vec::new(), false, how)
        };
        let e = send_as(&p("over.qcow2"), AsFile::default()).unwrap_err();
        assert!(e.contains("over the backing file"), "{e}");
        let told = AsFile {
            raw: true,
            ..AsFile::default()
        };
        assert!(send_as(&p("over.qcow2"), told).is_ok());
        std::fs::copy(p("over.qcow2"), p("disk.raw")).unwrap();
        let sent = send_as(&p("disk.raw"), AsFile::default()).unwrap();
        assert_eq!(sent.size, std::fs::metadata(p("disk.raw")).unwrap().len());
    }

    #[test]
    fn an_image_written_while_it_is_read_makes_no_point_unless_its_driver_reads_it_live() {
        type Change = fn(&Path);
        let changes: [(&str, Change); 4] = [
            ("appended to", |p| {
                let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
                f.write_all(&[9u8; BLOCK]).unwrap();
            }),
            // In a block already read and sent: what was sent is no longer the file.
            ("rewritten in place", |p| write_at(p, 0, &[7u8; BLOCK])),
            ("written, its time put back", |p| {
                let before = std::fs::metadata(p).unwrap().modified().unwrap();
                write_at(p, 0, &[5u8; BLOCK]);
                File::options()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_modified(before)
                    .unwrap();
            }),
            ("replaced by another file", |p| {
                let other = p.with_extension("new");
                std::fs::write(&other, vec![3u8; 4 * BLOCK]).unwrap();
                std::fs::rename(&other, p).unwrap();
            }),
        ];
        for (what, change) in changes {
            for live in [false, true] {
                let dir = tempfile::tempdir().unwrap();
                let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
                std::fs::write(&src, vec![1u8; 4 * BLOCK]).unwrap();
                replicate(&src, &dst, "p1", 3);
                write_at(&src, BLOCK as u64, &[2u8; BLOCK]);
                let store = Store::new(&dst);
                let (m, _) = store.base_manifest(false, false).unwrap();
                let mut stream = WrittenMeanwhile {
                    bytes: Vec::new(),
                    flushed: false,
                    then: Some(|| change(&src)),
                };
                let how = AsFile { live, raw: false };
                let sent = send_image(&src, &m, &mut stream, false, how);
                assert!(stream.then.is_none(), "{what}: the change was made");
                let new = NewPoint {
                    id: "p2".into(),
                    taken_at: Utc::now(),
                    source: "src".into(),
                    retention: 3,
                    definition: None,
                    read: None,
                    pending: false,
                    overwrite_changed: false,
                };
                let applied = store.apply(&mut &stream.bytes[..], new);
                if live {
                    // Its driver said so: what was read is sent and applied.
                    assert!(sent.is_ok() && applied.is_ok(), "{what}, live");
                    continue;
                }
                let err = sent.expect_err(what);
                assert!(
                    err.contains(&src.display().to_string())
                        && err.contains("written while it was read")
                        && err.contains("makes no point"),
                    "{what}: {err}"
                );
                // The stream has no end: no point, the copy as it was.
                assert!(applied.is_err(), "{what}");
                let ids: Vec<String> = store.points().unwrap().into_iter().map(|p| p.id).collect();
                assert_eq!(ids, ["p1"], "{what}");
                assert_eq!(std::fs::read(&dst).unwrap(), vec![1u8; 4 * BLOCK], "{what}");
                // Once nothing writes it, the next replication takes it as it is now.
                replicate(&src, &dst, "p3", 3);
                assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
            }
        }
    }

    /// A stream as it reaches the pipe: its bytes, and how many of them had come at each
    /// flush.
    #[derive(Default)]
    struct Flushes {
        bytes: Vec<u8>,
        at: Vec<usize>,
    }

    impl Write for Flushes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            self.at.push(self.bytes.len());
            Ok(())
        }
    }

    /// Where each record of `stream` ends: (block, end); the end record as block `u64::MAX`.
    fn record_ends(stream: &[u8]) -> Vec<(u64, usize)> {
        // The header as it was sent (its length depends on the origin it names).
        let mut rest = stream;
        wire::read_header(&mut rest).unwrap();
        let mut at = stream.len() - rest.len();
        let mut ends = vec![(u64::MAX - 1, at)];
        loop {
            let kind = stream[at];
            let idx = u64::from_le_bytes(stream[at + 1..at + 9].try_into().unwrap());
            let len = u32::from_le_bytes(stream[at + 9..at + 13].try_into().unwrap()) as usize;
            at += match kind {
                1 => 13 + len,
                2 => 13,
                3 => {
                    ends.push((u64::MAX, at + 33));
                    return ends;
                }
                k => panic!("record kind {k}"),
            };
            ends.push((idx, at));
        }
    }

    /// The header and each changed block reach the pipe (a flush) as soon as the batch that
    /// holds it is hashed, not when a buffer fills or the image is read to its end: a block
    /// of the first batch before any of the third is read.
    fn assert_handed_on_early(stream: &Flushes, first: u64, later: u64) {
        let ends = record_ends(&stream.bytes);
        let end = |b: u64| ends.iter().find(|(i, _)| *i == b).unwrap().1;
        assert!(
            stream.at.contains(&end(u64::MAX - 1)),
            "the header: {:?}",
            stream.at
        );
        assert!(
            stream.at.iter().any(|&f| f >= end(first) && f < end(later)),
            "block {first} flushed before block {later} is written: {:?} {ends:?}",
            stream.at
        );
    }

    #[test]
    fn each_batch_of_changed_blocks_is_handed_on_before_the_next_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.img");
        let f = File::create(&src).unwrap();
        let batch = 256 * BLOCK as u64;
        f.set_len(3 * batch).unwrap();
        write_at(&src, 0, &vec![1u8; 3 * batch as usize]);
        let base = Manifest::of_file(&src).unwrap();
        write_at(&src, 5 * BLOCK as u64, b"first batch");
        write_at(&src, 2 * batch + 7 * BLOCK as u64, b"third batch");
        let mut stream = Flushes::default();
        let sent = send(&src, &base, &mut stream, false).unwrap();
        assert_eq!(sent.blocks, 2);
        assert_handed_on_early(&stream, 5, 2 * 256 + 7);
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
        let (m, _) = store.base_manifest(false, false).unwrap();
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
                    read: None,
                    pending: false,
                    overwrite_changed: false,
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
        // Rot: the byte changes, the file's times do not.
        let modified = std::fs::metadata(&dst).unwrap().modified().unwrap();
        write_at(&dst, 2 * BLOCK as u64 + 10, b"X");
        let f = std::fs::OpenOptions::new().write(true).open(&dst).unwrap();
        f.set_modified(modified).unwrap();
        drop(f);
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
        let (m, _) = store.base_manifest(false, false).unwrap();
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
                    read: None,
                    pending: false,
                    overwrite_changed: false,
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

    /// Runs `sh -c script`, which must succeed.
    fn sh(script: &str) -> String {
        let out = std::process::Command::new("sh")
            .args(["-c", script])
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One replication of the qcow2 `img` as the guest sees it (through qemu-nbd, with the
    /// dirty bitmap `bitmap` when given) into the raw copy `dst`: what the source sent.
    /// The source keeps its manifests in `kept` (and reads against the one kept when its
    /// digest is the recovery side's, as a replication does).
    fn replicate_guest(
        img: &Path,
        dst: &Path,
        id: &str,
        bitmap: Option<&str>,
        kept: &Path,
    ) -> Sent {
        let (sent, _) = replicate_guest_as(img, dst, id, bitmap, false, kept);
        // The copy is the disk as the guest sees it.
        sh(&format!(
            "qemu-img compare -q -f raw -F qcow2 '{}' '{}'",
            dst.display(),
            img.display()
        ));
        sent
    }

    /// A folder for a guest's disk `disk.qcow2`, its copy `copy.raw` and the manifests its
    /// source keeps (`kept`).
    fn guest_files() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        std::path::PathBuf,
        std::path::PathBuf,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (img, dst, kept) = (
            dir.path().join("disk.qcow2"),
            dir.path().join("copy.raw"),
            dir.path().join("kept"),
        );
        (dir, img, dst, kept)
    }

    /// [`replicate_guest`], every block read and checked against `bitmap` when `audit`,
    /// the copy not compared with the disk: what the source sent and the recovery side did.
    fn replicate_guest_as(
        img: &Path,
        dst: &Path,
        id: &str,
        bitmap: Option<&str>,
        audit: bool,
        kept: &Path,
    ) -> (Sent, Applied) {
        let store = Store::new(dst);
        let digest = store.base_digest(false, false).unwrap();
        let (m, _) = store.base_manifest(false, false).unwrap();
        assert_eq!(m.digest(), digest);
        let base = match Kept::open(Some(kept), img, &digest).unwrap() {
            Some(k) => Base::Kept(k),
            None => Base::Given(m),
        };
        let served = QemuNbd::serve(img, bitmap).unwrap();
        let mut stream = Vec::new();
        let sent = send_nbd(
            &NbdSource {
                socket: &served.socket,
                export: QemuNbd::EXPORT,
                bitmap,
                audit,
                unchanged: None,
                origin: None,
            },
            base,
            &mut stream,
            false,
        )
        .unwrap();
        drop(served);
        if let Some(tree) = &sent.tree {
            kept::keep(Some(kept), img, sent.size, &sent.whole, tree);
        }
        let applied = store
            .apply(
                &mut &stream[..],
                NewPoint {
                    id: id.into(),
                    taken_at: Utc::now(),
                    source: "src".into(),
                    retention: 5,
                    definition: None,
                    read: Some(HowRead {
                        mode: if bitmap.is_some() && !audit {
                            crate::replica::store::ReadMode::ChangedBlocks
                        } else {
                            crate::replica::store::ReadMode::Scan
                        },
                        why: None,
                        checkpoint: bitmap.map(String::from),
                        since: None,
                        created: None,
                        missed: None,
                        marker: None,
                    }),
                    pending: false,
                    overwrite_changed: false,
                },
            )
            .unwrap();
        assert_eq!(applied.blocks, sent.blocks);
        let copy = Manifest::of_file(dst).unwrap();
        assert_eq!(sent.whole, copy.whole);
        if let Some(tree) = &sent.tree {
            assert_eq!(tree[..copy.cvs.len()], copy.cvs[..]);
        }
        (sent, applied)
    }

    /// Blocks written while the bitmap did not record (a tool that wrote the image file
    /// outside QEMU's knowledge): the replications through the bitmap miss them and cannot
    /// tell. A scan checked against the bitmap sends them, says how many and which came
    /// first, and the recovery side marks bad every point read through the bitmap since the
    /// disk was last read whole (the first copy stays good); a scan that finds nothing
    /// missed marks nothing, and its point trusts the bitmap again.
    #[test]
    fn a_scan_checked_against_the_bitmap_says_what_it_missed_and_marks_the_points_read_through_it()
    {
        let (_dir, img, dst, kept) = guest_files();
        let i = img.display();
        sh(&format!("qemu-img create -q -f qcow2 '{i}' 65M"));
        sh(&format!("qemu-io -c 'write -q -P 0x11 0 8M' '{i}'"));
        let (_, p1) = replicate_guest_as(&img, &dst, "p1", None, false, &kept);
        assert_eq!(p1.unmarked, None);
        sh(&format!("qemu-img bitmap --add '{i}' cp1"));
        sh(&format!("qemu-io -c 'write -q -P 0x33 1M 64k' '{i}'"));
        replicate_guest(&img, &dst, "p2", Some("cp1"), &kept);
        // Written with the bitmap off: blocks 480 and 496.
        sh(&format!("qemu-img bitmap --disable '{i}' cp1"));
        sh(&format!(
            "qemu-io -c 'write -q -P 0x77 30M 64k' -c 'write -q -P 0x78 31M 64k' '{i}'"
        ));
        sh(&format!("qemu-img bitmap --enable '{i}' cp1"));
        sh(&format!("qemu-io -c 'write -q -P 0x44 2M 64k' '{i}'"));
        let (missed, _) = replicate_guest_as(&img, &dst, "p3", Some("cp1"), false, &kept);
        // What a bitmap does not mark is not read: the copy lacks it, and nothing says so.
        assert_eq!(missed.read, 2);
        let differs = std::process::Command::new("qemu-img")
            .args(["compare", "-q", "-f", "raw", "-F", "qcow2"])
            .arg(&dst)
            .arg(&img)
            .status()
            .unwrap();
        assert_eq!(differs.code(), Some(1));
        // Read whole, checked against the bitmap.
        let (sent, p4) = replicate_guest_as(&img, &dst, "p4", Some("cp1"), true, &kept);
        assert_eq!((sent.read, sent.blocks), (1040, 2));
        let said = p4.unmarked.expect("the scan says what the bitmap missed");
        assert!(
            said.contains("2 blocks differ from the copy that the dirty bitmap did not mark")
                && said.contains("the first block 480")
                && said.contains("point p4, read whole, holds them")
                && said.contains("marked bad: p2, p3"),
            "{said}"
        );
        sh(&format!(
            "qemu-img compare -q -f raw -F qcow2 '{}' '{i}'",
            dst.display()
        ));
        let points = Store::new(&dst).points().unwrap();
        let bad: Vec<(&str, bool)> = points
            .iter()
            .map(|p| (p.id.as_str(), p.unusable.is_some()))
            .collect();
        assert_eq!(
            bad,
            [("p1", false), ("p2", true), ("p3", true), ("p4", false)]
        );
        assert!(
            points[1]
                .unusable
                .as_deref()
                .unwrap()
                .contains("a dirty bitmap that missed writes"),
            "{:?}",
            points[1].unusable
        );
        // Nothing missed since: nothing said, nothing marked.
        sh(&format!("qemu-io -c 'write -q -P 0x55 3M 64k' '{i}'"));
        let (_, p5) = replicate_guest_as(&img, &dst, "p5", Some("cp1"), true, &kept);
        assert_eq!(p5.unmarked, None);
        let points = Store::new(&dst).points().unwrap();
        assert!(
            points[3..].iter().all(|p| p.unusable.is_none()),
            "{points:?}"
        );
        // The check that found none says so, and the bitmap is trusted again.
        let missed: Vec<Option<u64>> = points
            .iter()
            .map(|p| p.read.as_ref().and_then(|r| r.missed))
            .collect();
        assert_eq!(missed[3..], [Some(2), None]);
    }

    #[test]
    fn through_a_dirty_bitmap_only_the_blocks_written_are_read_and_the_copy_equals_the_disk() {
        let (_dir, img, dst, kept) = guest_files();
        let i = img.display();
        // 1040 blocks: not a power of two, so that the tree has a right edge.
        sh(&format!("qemu-img create -q -f qcow2 '{i}' 65M"));
        sh(&format!(
            "qemu-io -c 'write -q -P 0x11 0 8M' -c 'write -q -P 0x22 40M 1M' '{i}'"
        ));
        // The first copy reads every block; the holes travel as lengths only.
        let first = replicate_guest(&img, &dst, "p1", None, &kept);
        assert_eq!(first.read, 1040);
        assert_eq!(first.bytes, 9 << 20);
        // From a checkpoint on, writes are recorded in the qcow2 file's persistent bitmap.
        sh(&format!("qemu-img bitmap --add '{i}' cp1"));
        sh(&format!(
            "qemu-io -c 'write -q -P 0x33 1M 64k' -c 'write -q -P 0x44 50M 200k' -c 'write -q -P 0x11 0 64k' -c 'write -q -P 0x55 66496k 64k' '{i}'"
        ));
        let second = replicate_guest(&img, &dst, "p2", Some("cp1"), &kept);
        // 1 + 4 + 1 blocks marked (200 KiB spans 4 blocks), and block 0 rewritten as it
        // was: read, hashed, not sent. Against the manifest the source kept, updated in place.
        assert_eq!(second.read, 7, "{:?}", (second.read, second.blocks));
        assert_eq!(second.blocks, 6);
        assert!(second.tree.is_none(), "the kept manifest was not used");
        // The source lost what it kept: the recovery manifest is sent, the result the same.
        std::fs::remove_dir_all(&kept).unwrap();
        sh(&format!("qemu-io -c 'write -q -P 0x66 30M 64k' '{i}'"));
        let lost = replicate_guest(&img, &dst, "p2b", Some("cp1"), &kept);
        assert!(lost.tree.is_some());
        assert_eq!(lost.blocks, 1);
        // Nothing written since: nothing read, nothing sent.
        sh(&format!("qemu-img bitmap --clear '{i}' cp1"));
        let third = replicate_guest(&img, &dst, "p3", Some("cp1"), &kept);
        assert_eq!((third.read, third.blocks), (0, 0));
        // Every point comes back as the disk was.
        let store = Store::new(&dst);
        assert!(store.verify(None).unwrap().iter().all(|(_, good)| *good));
    }

    /// What QEMU reads through a stopped overlay is watched as the overlay is: its backing
    /// file written all through the read (a sibling overlay committed into a shared
    /// template by a program other than QEMU) makes no point either, and is named.
    #[test]
    fn an_overlay_whose_backing_file_is_written_while_it_is_read_makes_no_point() {
        let (dir, img, dst, kept) = guest_files();
        let base = dir.path().join("base.qcow2");
        let (i, b) = (img.display(), base.display());
        sh(&format!(
            "qemu-img create -q -f qcow2 '{b}' 8M && qemu-io -c 'write -q -P 0x11 0 4M' '{b}' && qemu-img create -q -f qcow2 -F qcow2 -b base.qcow2 '{i}'"
        ));
        assert_eq!(
            crate::replica::image::qcow2_chain(&img).unwrap(),
            [img.clone(), base.clone()]
        );
        replicate_guest(&img, &dst, "p1", None, &kept);
        let store = Store::new(&dst);
        let manifest = store.base_manifest(false, false).unwrap().0.encode();
        let from = SendFrom {
            live: false,
            nbd: None,
            export: None,
            format: Some(DiskFormat::Qcow2),
            bitmap: None,
            audit: false,
            marks: Vec::new(),
        };
        let mut stream = Vec::new();
        let err = blocks::written_all_through(&base, || {
            send_disk(&img, &from, None, false, &mut &manifest[..], &mut stream)
        })
        .expect_err("its backing file written while read");
        assert!(
            err.contains(&format!(
                "{i}: it was written while it was read (its {b} was)"
            )) && err.contains("makes no point"),
            "{err}"
        );
        // A data file is watched too.
        let data = dir.path().join("data.raw");
        let d = dir.path().join("d.qcow2");
        sh(&format!(
            "qemu-img create -q -f qcow2 -o data_file='{}' '{}' 1M",
            data.display(),
            d.display()
        ));
        assert_eq!(
            crate::replica::image::qcow2_chain(&d).unwrap(),
            [d.clone(), data]
        );
    }

    /// A stopped vm's qcow2 image is read through `qemu-nbd`, whose lock stops QEMU, not
    /// another program writing the file: written all through the read (the same byte again
    /// and again, the file's times moving), the stream has no end, so the recovery side makes
    /// no point, and the error says why.
    #[test]
    fn a_qcow2_image_written_while_qemu_nbd_reads_it_makes_no_point() {
        let (_dir, img, dst, kept) = guest_files();
        let i = img.display();
        sh(&format!(
            "qemu-img create -q -f qcow2 '{i}' 8M && qemu-io -c 'write -q -P 0x11 0 4M' '{i}'"
        ));
        replicate_guest(&img, &dst, "p1", None, &kept);
        sh(&format!("qemu-io -c 'write -q -P 0x22 1M 64k' '{i}'"));
        let store = Store::new(&dst);
        let manifest = store.base_manifest(false, false).unwrap().0.encode();
        let from = SendFrom {
            live: false,
            nbd: None,
            export: None,
            format: Some(DiskFormat::Qcow2),
            bitmap: None,
            audit: false,
            marks: Vec::new(),
        };
        let mut stream = Vec::new();
        // The first byte of a qcow2 file is its magic's `Q`: written again, it stays one.
        let err = blocks::written_all_through(&img, || {
            send_disk(&img, &from, None, false, &mut &manifest[..], &mut stream)
        })
        .expect_err("written while read");
        assert!(
            err.contains(&i.to_string())
                && err.contains("written while it was read")
                && err.contains("makes no point"),
            "{err}"
        );
        let before = std::fs::read(&dst).unwrap();
        let new = NewPoint {
            id: "p2".into(),
            taken_at: Utc::now(),
            source: "src".into(),
            retention: 3,
            definition: None,
            read: Some(HowRead {
                mode: crate::replica::store::ReadMode::Scan,
                why: None,
                checkpoint: None,
                since: None,
                created: None,
                missed: None,
                marker: None,
            }),
            pending: false,
            overwrite_changed: false,
        };
        assert!(store.apply(&mut &stream[..], new).is_err());
        assert_eq!(std::fs::read(&dst).unwrap(), before);
        assert_eq!(store.points().unwrap().len(), 1);
    }

    /// A stopped vm's file read through its dirty bitmap must hold, once `qemu-nbd` holds
    /// it, the marks the read was decided on: a file put back to another in between (its
    /// checkpoint's bitmap as it was, missing what the copy holds) sends nothing, naming the
    /// mark; the file that holds them is read through its bitmap.
    #[test]
    fn a_file_without_the_marks_its_read_was_decided_on_sends_nothing() {
        let (_dir, img, dst, kept) = guest_files();
        let i = img.display();
        sh(&format!(
            "qemu-img create -q -f qcow2 '{i}' 8M && qemu-io -c 'write -q -P 0x11 0 4M' '{i}'"
        ));
        replicate_guest(&img, &dst, "p1", None, &kept);
        sh(&format!(
            "qemu-img bitmap --add '{i}' cp && qemu-img bitmap --add -g 2147483648 --disable '{i}' reprise-mark-p1-a && qemu-io -c 'write -q -P 0x22 1M 64k' '{i}'"
        ));
        let manifest = Store::new(&dst)
            .base_manifest(false, false)
            .unwrap()
            .0
            .encode();
        let send = |marks: &[&str]| {
            let from = SendFrom {
                live: false,
                nbd: None,
                export: None,
                format: Some(DiskFormat::Qcow2),
                bitmap: Some("cp".into()),
                audit: false,
                marks: marks.iter().map(|m| m.to_string()).collect(),
            };
            let mut stream = Vec::new();
            send_disk(&img, &from, None, false, &mut &manifest[..], &mut stream).map(|()| stream)
        };
        let Err(err) = send(&["reprise-mark-p1-a", "reprise-mark-p2-b"]) else {
            panic!("sent, a mark missing");
        };
        assert!(
            err.contains(&i.to_string())
                && err.contains("the bitmap reprise-mark-p2-b that marked it is not in it")
                && err.contains("nothing was sent"),
            "{err}"
        );
        // What it holds: read through the bitmap, the one block written.
        let stream = send(&["reprise-mark-p1-a"]).unwrap();
        assert!(
            stream.len() > 64 << 10 && stream.len() < 256 << 10,
            "{}",
            stream.len()
        );
    }

    /// A leaf of the recovery manifest rots (its header intact): an incremental replication
    /// through a dirty bitmap whose blocks do not include that leaf's never records a point
    /// verified with a hash that is not the copy's bytes', whether the rotten leaf is next to
    /// a block written (its node above is computed again) or far from them, and whether the
    /// source reads against the manifest it kept or the recovery side's.
    #[test]
    fn a_damaged_leaf_of_the_recovery_manifest_never_gives_a_point_a_hash_not_its_bytes() {
        // How the source gets its base: the manifest it kept, the one the recovery side gives,
        // or the rotten leaves as they are (a source given them before the check).
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum From {
            Kept,
            Given,
            Rotten,
        }
        for rotten in [4u64, 40] {
            for from in [From::Kept, From::Given, From::Rotten] {
                check_rotten_leaf(rotten, from == From::Kept, from == From::Rotten);
            }
        }
    }

    fn check_rotten_leaf(rotten: u64, kept_by_source: bool, raw: bool) {
        let (_dir, img, dst, kept) = guest_files();
        let i = img.display();
        sh(&format!("qemu-img create -q -f qcow2 '{i}' 4M"));
        sh(&format!("qemu-io -c 'write -q -P 0x11 0 4M' '{i}'"));
        replicate_guest(&img, &dst, "p1", None, &kept);
        sh(&format!("qemu-img bitmap --add '{i}' cp1"));
        // Block 5 is written; the leaf of block `rotten` rots in the recovery manifest.
        sh(&format!(
            "qemu-io -c 'write -q -P 0x22 {} 64k' '{i}'",
            5 * BLOCK
        ));
        let store = Store::new(&dst);
        let copy = Manifest::of_file(&dst).unwrap();
        let leaf = copy.cvs[rotten as usize];
        let manifest = store.meta_dir().join("manifest");
        let mut bytes = std::fs::read(&manifest).unwrap();
        let at = bytes[56..]
            .chunks(32)
            .position(|c| c == leaf)
            .map(|k| 56 + 32 * k)
            .unwrap();
        bytes[at] ^= 0xff;
        std::fs::write(&manifest, &bytes).unwrap();
        if !kept_by_source {
            let _ = std::fs::remove_dir_all(&kept);
        }
        let digest = store.base_digest(false, false).unwrap();
        // The rotten leaves as the file holds them, under its intact header: what the
        // recovery side gives when it does not check them, the recovery manifest left
        // rotten for the update.
        let base = match Kept::open(Some(&kept), &img, &digest).unwrap() {
            Some(k) => Base::Kept(k),
            None if raw => Base::Given(Manifest {
                cvs: bytes[56..56 + 32 * copy.cvs.len()]
                    .chunks(32)
                    .map(|c| c.try_into().unwrap())
                    .collect(),
                ..copy
            }),
            None => Base::Given(store.base_manifest(false, false).unwrap().0),
        };
        let served = QemuNbd::serve(&img, Some("cp1")).unwrap();
        let mut stream = Vec::new();
        let sent = send_nbd(
            &NbdSource {
                socket: &served.socket,
                export: QemuNbd::EXPORT,
                bitmap: Some("cp1"),
                audit: false,
                unchanged: None,
                origin: None,
            },
            base,
            &mut stream,
            false,
        );
        drop(served);
        let case = format!("leaf {rotten}, kept: {kept_by_source}, raw: {raw}");
        sent.unwrap_or_else(|e| panic!("{case}: {e}"));
        let applied = store.apply(
            &mut &stream[..],
            NewPoint {
                id: "p2".into(),
                taken_at: Utc::now(),
                source: "src".into(),
                retention: 5,
                definition: None,
                read: Some(HowRead {
                    mode: crate::replica::store::ReadMode::ChangedBlocks,
                    why: None,
                    checkpoint: Some("cp1".into()),
                    since: None,
                    created: None,
                    missed: None,
                    marker: None,
                }),
                pending: false,
                overwrite_changed: false,
            },
        );
        let bytes = blake3::hash(&std::fs::read(&dst).unwrap())
            .to_hex()
            .to_string();
        if raw {
            // The source's hash is built on the rotten leaf: refused, nothing recorded.
            assert!(
                matches!(
                    applied,
                    Err(crate::replica::store::StoreError::Mismatch { .. })
                ),
                "{case}: {applied:?}"
            );
            assert!(store.points().unwrap().iter().all(|p| p.id != "p2"));
            return;
        }
        // The point recorded is the copy's bytes, and reading it again finds it whole.
        let p = applied.unwrap_or_else(|e| panic!("{case}: {e}")).point;
        assert_eq!((p.verified, &p.blake3), (Verified::Yes, &bytes), "{case}");
        let checked = store.verify(Some("p2")).unwrap();
        assert_eq!(checked, [("p2".to_string(), true)], "{case}");
    }

    #[test]
    fn through_nbd_each_read_of_changed_blocks_is_handed_on_before_the_next_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.qcow2");
        let i = img.display();
        // Three reads of `nbd::MAX_READ`.
        let per = (nbd::MAX_READ as usize / BLOCK) as u64;
        sh(&format!("qemu-img create -q -f qcow2 '{i}' 12M"));
        sh(&format!("qemu-io -c 'write -q -P 0x11 0 12M' '{i}'"));
        let read = |base: Manifest, w: &mut dyn FnMut(&mut Flushes)| {
            let served = QemuNbd::serve(&img, None).unwrap();
            let src = NbdSource {
                socket: &served.socket,
                export: QemuNbd::EXPORT,
                bitmap: None,
                audit: false,
                unchanged: None,
                origin: None,
            };
            let mut stream = Flushes::default();
            let sent = send_nbd(&src, Base::Given(base), &mut stream, false).unwrap();
            w(&mut stream);
            sent
        };
        let first = read(Manifest::empty(), &mut |_| {});
        let n = blocks::count(first.size) as usize;
        let base = Manifest {
            size: first.size,
            whole: first.whole,
            cvs: first.tree.unwrap()[..n].to_vec(),
        };
        sh(&format!(
            "qemu-io -c 'write -q -P 0x22 {} 3' -c 'write -q -P 0x33 {} 3' '{i}'",
            5 * BLOCK,
            (2 * per + 7) * BLOCK as u64
        ));
        let sent = read(base, &mut |stream| {
            assert_handed_on_early(stream, 5, 2 * per + 7)
        });
        assert_eq!(sent.blocks, 2);
    }

    #[test]
    fn a_missing_bitmap_or_a_disk_of_another_size_is_an_error_that_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.qcow2");
        let i = img.display();
        sh(&format!("qemu-img create -q -f qcow2 '{i}' 4M"));
        let err = QemuNbd::serve(&img, Some("nope")).err().unwrap();
        assert!(err.contains("nope"), "{err}");
        sh(&format!("qemu-img bitmap --add '{i}' cp1"));
        let served = QemuNbd::serve(&img, Some("cp1")).unwrap();
        let base = Manifest {
            size: 8 << 20,
            whole: [0; 32],
            cvs: vec![[0; 32]; 128],
        };
        let err = send_nbd(
            &NbdSource {
                socket: &served.socket,
                export: QemuNbd::EXPORT,
                bitmap: Some("cp1"),
                audit: false,
                unchanged: None,
                origin: None,
            },
            Base::Given(base),
            &mut Vec::new(),
            false,
        )
        .unwrap_err();
        assert!(err.contains("size changed"), "{err}");
        // An export that is not there is named.
        let err = nbd::Client::connect(&served.socket, "other", None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("other"), "{err}");
    }
}
