//! Whether a disk file read as it is holds all of its disk: a regular file, and not an image
//! whose header sends part of its data to another file (a qcow2 or QED overlay's backing file,
//! a qcow2 external data file, a VMDK descriptor's extents or parent, a VHD differencing
//! disk's parent).
//!
//! A copy of such a file alone is not the disk: started on the recovery host, the hypervisor
//! opens the other file by the name in the header, which is missing there (the start fails) or
//! another file of that name (a template of another version: the vm runs on the wrong data,
//! with nothing said). A device node (an LVM volume, a partition) has no size as a file: read
//! as one it is an empty copy. Both are refused before anything is sent.
//!
//! Only the header is read, with `pread`; nothing here writes. A disk read through QEMU (NBD)
//! is the disk as the guest sees it, backing files included: it is not checked here.

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt as _, FileTypeExt as _};
use std::path::{Path, PathBuf};

/// What the header of a disk file says, read from its first bytes (and, for a few formats,
/// a name or descriptor further on).
const HEAD: usize = 4096;
/// The longest name or descriptor read from a header.
const MAX_TEXT: u64 = 64 << 10;

/// `Err` with why when `file` (whose metadata is `meta`) is not a whole disk as a file. With
/// `raw` (its format known to be raw), its bytes are the guest's whatever they look like: its
/// header is not read.
pub fn whole_disk(file: &File, meta: &Metadata, raw: bool) -> Result<(), String> {
    let kind = meta.file_type();
    let what = if kind.is_block_device() {
        Some("a block device (an LVM volume, a partition)")
    } else if kind.is_char_device() {
        Some("a character device")
    } else if kind.is_fifo() {
        Some("a pipe")
    } else if kind.is_socket() {
        Some("a socket")
    } else if kind.is_dir() {
        Some("a folder")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(format!(
            "it is {what}, not a file: reprise replicates disks that are image files; this replication makes no point"
        ));
    }
    if raw {
        return Ok(());
    }
    let mut head = vec![0u8; HEAD];
    let n = read_at(file, &mut head, 0)?;
    head.truncate(n);
    match refers_elsewhere(file, &head)? {
        None => Ok(()),
        Some(why) => Err(format!(
            "{why}: a copy of this file alone is not the disk (started on the recovery host, the hypervisor would look for the other file there), so this replication makes no point; make the image whole first (with its vm stopped: qemu-img rebase -b '' FILE, or a full clone), or read it as the guest sees it (changed_blocks = true, libvirt)"
        )),
    }
}

/// The files a qcow2 image `image` reads besides itself: its backing chain (each backing
/// file, relative names taken from the folder of the file that names them, followed while
/// it is qcow2) and the external data file of each, from their headers. A name that is no
/// file of this machine (a `json:` description, a network URL) is not followed. What QEMU
/// reads through `qemu-nbd` of the image, so that what writes any of them while it is read
/// is seen (`helper::unwritten_since`).
pub fn qcow2_chain(image: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut at = Some(image.to_path_buf());
    while let Some(path) = at.take() {
        if out.len() > 64 {
            return Err(format!(
                "{}: its backing chain is longer than 64 files",
                image.display()
            ));
        }
        let name = |raw: String| -> Option<PathBuf> {
            let raw = raw.trim_end_matches('\0').to_string();
            if raw.is_empty() || raw.starts_with("json:") || raw.contains("://") {
                return None;
            }
            let p = PathBuf::from(raw);
            Some(match p.is_absolute() {
                true => p,
                false => path.parent().unwrap_or(Path::new("")).join(p),
            })
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            // The image itself must be there; a backing file that is not is qemu-nbd's to say.
            Err(_) if !out.is_empty() => break,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        out.push(path.clone());
        let mut head = vec![0u8; HEAD];
        let n = read_at(&file, &mut head, 0)?;
        head.truncate(n);
        if !head.starts_with(b"QFI\xfb") {
            break;
        }
        let version = be32(&head, 4).unwrap_or(0);
        // The header's extensions (version 3: after its length, at 100): the data file's name.
        if version >= 3 {
            let mut ext = be32(&head, 100).unwrap_or(104) as usize;
            while let (Some(kind), Some(len)) = (be32(&head, ext), be32(&head, ext + 4)) {
                let len = len as usize;
                if kind == 0 {
                    break;
                }
                if kind == 0x4441_5441 {
                    let text = head
                        .get(ext + 8..ext + 8 + len)
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    out.extend(name(text));
                }
                ext += 8 + len.div_ceil(8) * 8;
            }
        }
        let (offset, size) = (be64(&head, 8).unwrap_or(0), be32(&head, 16).unwrap_or(0));
        if offset != 0 && size != 0 {
            at = name(text_at(&file, offset, u64::from(size))?);
        }
    }
    Ok(out)
}

fn read_at(file: &File, buf: &mut [u8], at: u64) -> Result<usize, String> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading its header: {e}")),
        }
    }
    Ok(n)
}

/// The bytes of `file` from `at`, at most `len` (and [`MAX_TEXT`]), as text for a message.
fn text_at(file: &File, at: u64, len: u64) -> Result<String, String> {
    let mut buf = vec![0u8; len.min(MAX_TEXT) as usize];
    let n = read_at(file, &mut buf, at)?;
    buf.truncate(n);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A name read from a header, quoted for a message (at most 200 characters shown).
fn quoted(name: &str) -> String {
    let name = name.trim_end_matches('\0');
    let shown: String = name.chars().take(200).collect();
    format!(
        "'{}'{}",
        shown.escape_debug(),
        if shown.len() < name.len() { "…" } else { "" }
    )
}

/// Why the image whose first bytes are `head` keeps data in another file, if it does.
fn refers_elsewhere(file: &File, head: &[u8]) -> Result<Option<String>, String> {
    // qcow2 (big-endian): magic, version, backing file offset and size; from version 3 the
    // incompatible features, whose bit 2 is an external data file.
    if head.starts_with(b"QFI\xfb") {
        let version = be32(head, 4).unwrap_or(0);
        let (offset, size) = (be64(head, 8).unwrap_or(0), be32(head, 16).unwrap_or(0));
        if offset != 0 && size != 0 {
            let name = text_at(file, offset, u64::from(size))?;
            return Ok(Some(format!(
                "it is a qcow2 image over the backing file {}",
                quoted(&name)
            )));
        }
        if version >= 3 && be64(head, 72).is_some_and(|f| f & (1 << 2) != 0) {
            return Ok(Some(
                "it is a qcow2 image whose data is in an external data file".into(),
            ));
        }
        return Ok(None);
    }
    // QED (little-endian): its features' bit 0 is a backing file, named at an offset.
    if head.starts_with(b"QED\0") {
        if le64(head, 16).is_some_and(|f| f & 1 != 0) {
            let (at, len) = (le32(head, 56).unwrap_or(0), le32(head, 60).unwrap_or(0));
            let name = text_at(file, u64::from(at), u64::from(len))?;
            return Ok(Some(format!(
                "it is a QED image over the backing file {}",
                quoted(&name)
            )));
        }
        return Ok(None);
    }
    // VMDK: a descriptor file names its extents (other files); a sparse extent embeds a
    // descriptor, which names a parent when it is a delta.
    if head.starts_with(b"# Disk DescriptorFile") {
        return Ok(Some(
            "it is a VMDK descriptor: its data is in the extent files it names".into(),
        ));
    }
    if head.starts_with(b"KDMV") {
        let (at, len) = (le64(head, 28).unwrap_or(0), le64(head, 36).unwrap_or(0));
        if at != 0 && len != 0 {
            let text = text_at(
                file,
                at.saturating_mul(512),
                len.saturating_mul(512).min(MAX_TEXT),
            )?;
            return Ok(vmdk_descriptor_refers(&text));
        }
        return Ok(None);
    }
    // VHD: a dynamic or differencing disk starts with a copy of its footer; disk type 4 is a
    // differencing disk, whose parent holds what it did not change.
    if head.starts_with(b"conectix") && be32(head, 60) == Some(4) {
        return Ok(Some(
            "it is a VHD differencing disk: what it did not change is in its parent".into(),
        ));
    }
    if head.starts_with(b"vhdxfile") {
        return vhdx_refers(file);
    }
    Ok(None)
}

/// A VHDX's metadata region (its region table's entry of this GUID, as stored).
const VHDX_METADATA: [u8; 16] = [
    0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e,
];
/// A VHDX metadata item naming the parent of a differencing disk.
const VHDX_PARENT_LOCATOR: [u8; 16] = [
    0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c,
];

/// Why a VHDX keeps data elsewhere, if it does: a differencing disk has a parent locator in
/// its metadata (found through its region table, at 192 KiB). One whose tables cannot be
/// read is refused too: what it refers to cannot be told.
fn vhdx_refers(file: &File) -> Result<Option<String>, String> {
    let unreadable = |what: &str| {
        Ok(Some(format!(
            "it is a VHDX whose {what} cannot be read: whether it is a differencing disk (its data partly in a parent) cannot be told"
        )))
    };
    let mut regions = vec![0u8; 16 + 2047 * 32];
    let n = read_at(file, &mut regions, 192 << 10)?;
    regions.truncate(n);
    if !regions.starts_with(b"regi") {
        return unreadable("region table");
    }
    let count = le32(&regions, 8).unwrap_or(0).min(2047) as usize;
    let metadata = (0..count)
        .map(|i| 16 + i * 32)
        .find(|&at| regions.get(at..at + 16) == Some(&VHDX_METADATA[..]))
        .and_then(|at| le64(&regions, at + 16));
    let Some(offset) = metadata else {
        return unreadable("region table");
    };
    let mut table = vec![0u8; 32 + 2047 * 32];
    let n = read_at(file, &mut table, offset)?;
    table.truncate(n);
    if !table.starts_with(b"metadata") {
        return unreadable("metadata table");
    }
    let entries = usize::from(u16::from_le_bytes([
        table.get(10).copied().unwrap_or(0),
        table.get(11).copied().unwrap_or(0),
    ]))
    .min(2047);
    let parent = (0..entries)
        .map(|i| 32 + i * 32)
        .any(|at| table.get(at..at + 16) == Some(&VHDX_PARENT_LOCATOR[..]));
    Ok(parent.then(|| {
        "it is a VHDX differencing disk: what it did not change is in its parent".to_string()
    }))
}

/// Why a sparse VMDK's embedded descriptor `text` keeps data elsewhere, if it does.
fn vmdk_descriptor_refers(text: &str) -> Option<String> {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
        })
    };
    if let Some(parent) = value("parentFileNameHint") {
        return Some(format!(
            "it is a VMDK delta over the parent {}",
            quoted(&parent)
        ));
    }
    if value("parentCID").is_some_and(|c| !c.eq_ignore_ascii_case("ffffffff")) {
        return Some("it is a VMDK delta over a parent disk".into());
    }
    let extents = text
        .lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            matches!(w.next(), Some("RW" | "RDONLY" | "NOACCESS"))
        })
        .count();
    (extents > 1).then(|| format!("it is a VMDK of {extents} extents, each another file"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// Runs `qemu-img` with `args`, which must succeed.
    pub(crate) fn qemu_img(args: &[&str]) {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img is needed by these tests (apt-get install qemu-utils)");
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn check(path: &std::path::Path) -> Result<(), String> {
        let f = File::open(path).unwrap();
        whole_disk(&f, &f.metadata().unwrap(), false)
    }

    /// Images made by `qemu-img` itself: the ones that hold all their data pass, the ones
    /// that keep some in another file are refused, naming it.
    #[test]
    fn an_image_that_keeps_data_in_another_file_is_not_a_whole_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        qemu_img(&["create", "-q", "-f", "qcow2", &p("base.qcow2"), "1M"]);
        qemu_img(&["create", "-q", "-f", "raw", &p("plain.raw"), "1M"]);
        qemu_img(&["create", "-q", "-f", "qed", &p("base.qed"), "1M"]);
        qemu_img(&["create", "-q", "-f", "vmdk", &p("whole.vmdk"), "1M"]);
        qemu_img(&["create", "-q", "-f", "vpc", &p("whole.vhd"), "1M"]);
        qemu_img(&["create", "-q", "-f", "vhdx", &p("whole.vhdx"), "1M"]);
        for whole in [
            "base.qcow2",
            "plain.raw",
            "base.qed",
            "whole.vmdk",
            "whole.vhd",
            "whole.vhdx",
        ] {
            assert_eq!(check(&dir.path().join(whole)), Ok(()), "{whole}");
        }
        std::fs::write(dir.path().join("empty.raw"), b"").unwrap();
        assert_eq!(check(&dir.path().join("empty.raw")), Ok(()));

        let base = p("base.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            &base,
            &p("over.qcow2"),
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qed",
            "-F",
            "qcow2",
            "-b",
            &base,
            &p("over.qed"),
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", p("data.raw")),
            &p("external.qcow2"),
            "1M",
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            &p("flat.vmdk"),
            "1M",
        ]);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "vmdk",
            "-o",
            "subformat=twoGbMaxExtentSparse",
            &p("split.vmdk"),
            "1M",
        ]);
        let cases = [
            ("over.qcow2", "qcow2 image over the backing file"),
            ("over.qed", "QED image over the backing file"),
            ("external.qcow2", "external data file"),
            ("flat.vmdk", "VMDK descriptor"),
            ("split.vmdk", "VMDK descriptor"),
        ];
        for (file, says) in cases {
            let e = check(&dir.path().join(file)).unwrap_err();
            assert!(e.contains(says), "{file}: {e}");
            assert!(
                e.contains("makes no point") && e.contains("qemu-img rebase"),
                "{e}"
            );
        }
        let e = check(&dir.path().join("over.qcow2")).unwrap_err();
        assert!(e.contains(&base), "the backing file is named: {e}");
        // A disk known to be raw is the guest's bytes, a header its guest wrote included.
        let f = File::open(dir.path().join("over.qcow2")).unwrap();
        assert_eq!(whole_disk(&f, &f.metadata().unwrap(), true), Ok(()));
    }

    /// Deltas over a parent, as other tools write them (headers built from the formats'
    /// specifications: qemu-img writes neither).
    #[test]
    fn a_delta_over_a_parent_is_not_a_whole_disk() {
        let dir = tempfile::tempdir().unwrap();
        // A sparse VMDK whose embedded descriptor names a parent.
        let desc = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=87654321\ncreateType=\"monolithicSparse\"\nparentFileNameHint=\"base.vmdk\"\nRW 2048 SPARSE \"child.vmdk\"\n";
        let mut vmdk = vec![0u8; 2048];
        vmdk[..4].copy_from_slice(b"KDMV");
        vmdk[28..36].copy_from_slice(&1u64.to_le_bytes());
        vmdk[36..44].copy_from_slice(&2u64.to_le_bytes());
        vmdk[512..512 + desc.len()].copy_from_slice(desc.as_bytes());
        std::fs::write(dir.path().join("child.vmdk"), &vmdk).unwrap();
        let e = check(&dir.path().join("child.vmdk")).unwrap_err();
        assert!(e.contains("VMDK delta over the parent 'base.vmdk'"), "{e}");
        // A VHD differencing disk: its footer's copy at the start, disk type 4.
        let mut vhd = vec![0u8; 1024];
        vhd[..8].copy_from_slice(b"conectix");
        vhd[60..64].copy_from_slice(&4u32.to_be_bytes());
        std::fs::write(dir.path().join("child.vhd"), &vhd).unwrap();
        let e = check(&dir.path().join("child.vhd")).unwrap_err();
        assert!(e.contains("VHD differencing disk"), "{e}");
        // A qcow2 header cut short is not taken for an overlay (nor does it fail the check).
        std::fs::write(dir.path().join("short.qcow2"), b"QFI\xfb\0\0\0\x03").unwrap();
        assert_eq!(check(&dir.path().join("short.qcow2")), Ok(()));
        // A VHDX differencing disk (qemu-img makes none): one qemu-img made, whose first
        // metadata item is made a parent locator, as a differencing disk has.
        let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
        qemu_img(&["create", "-q", "-f", "vhdx", &p("child.vhdx"), "1M"]);
        let mut bytes = std::fs::read(dir.path().join("child.vhdx")).unwrap();
        let count =
            u32::from_le_bytes(bytes[(192 << 10) + 8..(192 << 10) + 12].try_into().unwrap());
        let region = (0..count as usize)
            .map(|i| (192 << 10) + 16 + i * 32)
            .find(|&at| bytes[at..at + 16] == VHDX_METADATA)
            .expect("a metadata region");
        let table =
            u64::from_le_bytes(bytes[region + 16..region + 24].try_into().unwrap()) as usize;
        assert_eq!(&bytes[table..table + 8], b"metadata");
        bytes[table + 32..table + 48].copy_from_slice(&VHDX_PARENT_LOCATOR);
        std::fs::write(dir.path().join("child.vhdx"), &bytes).unwrap();
        let e = check(&dir.path().join("child.vhdx")).unwrap_err();
        assert!(e.contains("VHDX differencing disk"), "{e}");
        // Its tables gone: what it refers to cannot be told.
        bytes[192 << 10..(192 << 10) + 4].copy_from_slice(b"xxxx");
        std::fs::write(dir.path().join("child.vhdx"), &bytes).unwrap();
        let e = check(&dir.path().join("child.vhdx")).unwrap_err();
        assert!(e.contains("VHDX whose region table cannot be read"), "{e}");
    }

    /// A device node, a pipe or a socket is not a disk file: read as one, it would be an
    /// empty copy (its size as a file is 0).
    #[test]
    fn a_device_a_pipe_or_a_socket_is_not_a_disk_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = check(std::path::Path::new("/dev/null")).unwrap_err();
        assert!(e.contains("a character device, not a file"), "{e}");
        let null = File::open("/dev/null").unwrap();
        let e = whole_disk(&null, &null.metadata().unwrap(), true).unwrap_err();
        assert!(e.contains("not a file"), "raw or not: {e}");
        let fifo = dir.path().join("fifo");
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        // Opened for reading and writing, so that the open does not wait for a writer.
        let f = File::options().read(true).write(true).open(&fifo).unwrap();
        let e = whole_disk(&f, &f.metadata().unwrap(), false).unwrap_err();
        assert!(e.contains("a pipe, not a file"), "{e}");
        let sock = dir.path().join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let meta = std::fs::metadata(&sock).unwrap();
        let e = whole_disk(&File::open("/dev/null").unwrap(), &meta, false).unwrap_err();
        assert!(e.contains("a socket, not a file"), "{e}");
        // A block device's node, made here (only its type is looked at: it is not opened).
        let blk = dir.path().join("blk");
        let made = Command::new("mknod")
            .arg(&blk)
            .args(["b", "7", "0"])
            .status()
            .unwrap();
        assert!(made.success(), "mknod (the tests run as root)");
        let meta = std::fs::symlink_metadata(&blk).unwrap();
        let e = whole_disk(&File::open("/dev/null").unwrap(), &meta, false).unwrap_err();
        assert!(
            e.contains("a block device (an LVM volume, a partition), not a file"),
            "{e}"
        );
    }
}
