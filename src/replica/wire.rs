//! The stream from the source helper to the recovery helper: a header naming the sender's
//! protocol, the manifest it was computed against and the new size, the blocks that differ
//! (data, zstd-compressed data when asked for and smaller, or only their length for a block of
//! zeros, which stays a hole), in increasing order, and the whole-image hash at the end.
//!
//! The receiver trusts none of it: [`read_header`] refuses another protocol and sizes beyond
//! [`MAX_IMAGE_SIZE`]; [`Records`] refuses a block beyond the announced size, of the wrong
//! length, repeated or out of order, and a stream that ends before every block it must carry
//! came; nothing is allocated from a length before it is checked.
//!
//! Pure encoding and decoding over `Read`/`Write`.

use std::io::{self, Read, Write};

use super::blocks::{self, BLOCK, MAX_IMAGE_SIZE};
use super::version::{PROTOCOL, VERSION};

/// The start of a stream, followed by the protocol in decimal and a newline (`RPRSTR2\n`;
/// reprise before versions were checked sent `RPRSTR1\n`, i.e. protocol 1).
const MAGIC: &[u8; 6] = b"RPRSTR";

/// The start of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Size and whole hash of the recovery manifest the source compared against.
    pub base_size: u64,
    pub base_whole: [u8; 32],
    /// Size of the source image.
    pub size: u64,
    /// Which file on which machine the source read ([`Origin::of`]), when it can say: the
    /// recovery side refuses to write into that very file (two host names for one machine,
    /// or one folder for the disk and its copy).
    pub origin: Option<Origin>,
}

/// A file as one running machine knows it: its boot id (two machines, or two boots of one,
/// never share one; containers of one kernel do, and then share the file when they share
/// its device and inode), the device and inode of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub boot: [u8; 36],
    pub dev: u64,
    pub ino: u64,
}

impl Origin {
    /// The file `meta` is of, on this machine; `None` when this machine's boot id cannot be
    /// read (not Linux, no /proc).
    pub fn of(meta: &std::fs::Metadata) -> Option<Origin> {
        use std::os::unix::fs::MetadataExt;
        Some(Origin {
            boot: boot_id()?,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The boot id, in words.
    pub fn boot_text(&self) -> String {
        String::from_utf8_lossy(&self.boot).into_owned()
    }
}

/// This machine's boot id (`/proc/sys/kernel/random/boot_id`, a UUID of 36 characters).
pub fn boot_id() -> Option<[u8; 36]> {
    static BOOT: std::sync::OnceLock<Option<[u8; 36]>> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id: [u8; 36] = text.trim().as_bytes().try_into().ok()?;
        id.iter()
            .all(|b| b.is_ascii_hexdigit() || *b == b'-')
            .then_some(id)
    })
}

/// One record after the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Data {
        idx: u64,
        data: Vec<u8>,
    },
    Zero {
        idx: u64,
        len: u32,
    },
    /// Sent before the end by a source that read every block of a disk and checked them
    /// against a dirty bitmap (`send --audit`): `count` blocks differ from the copy and the
    /// bitmap does not mark them as written, the first of them `first` (none: `count` and
    /// `first` 0). Sent whenever the check was made, at most once.
    Unmarked {
        count: u64,
        first: u64,
    },
    End {
        whole: [u8; 32],
    },
}

pub fn write_header(w: &mut impl Write, h: &Header) -> io::Result<()> {
    w.write_all(MAGIC)?;
    w.write_all(format!("{PROTOCOL}\n").as_bytes())?;
    w.write_all(&h.base_size.to_le_bytes())?;
    w.write_all(&h.base_whole)?;
    w.write_all(&h.size.to_le_bytes())?;
    match &h.origin {
        None => w.write_all(&[0]),
        Some(o) => {
            w.write_all(&[1])?;
            w.write_all(&o.boot)?;
            w.write_all(&o.dev.to_le_bytes())?;
            w.write_all(&o.ino.to_le_bytes())
        }
    }
}

pub fn write_data(w: &mut impl Write, idx: u64, data: &[u8]) -> io::Result<()> {
    w.write_all(&[1])?;
    w.write_all(&idx.to_le_bytes())?;
    w.write_all(&(data.len() as u32).to_le_bytes())?;
    w.write_all(data)
}

/// Block `idx` of `len` bytes, as `z`, its zstd frame.
pub fn write_compressed(w: &mut impl Write, idx: u64, len: u32, z: &[u8]) -> io::Result<()> {
    w.write_all(&[4])?;
    w.write_all(&idx.to_le_bytes())?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&(z.len() as u32).to_le_bytes())?;
    w.write_all(z)
}

/// Compresses blocks for [`write_compressed`]: zstd at its fastest level, kept only when it
/// saves an eighth or more (data that does not compress is sent as it is).
pub struct Compressor(zstd::bulk::Compressor<'static>);

impl Compressor {
    pub fn new() -> io::Result<Compressor> {
        zstd::bulk::Compressor::new(1).map(Compressor)
    }

    /// The compressed frame of `block`, if worth it.
    pub fn compress(&mut self, block: &[u8]) -> Option<Vec<u8>> {
        let z = self.0.compress(block).ok()?;
        (z.len() <= block.len() - block.len() / 8).then_some(z)
    }
}

pub fn write_zero(w: &mut impl Write, idx: u64, len: u32) -> io::Result<()> {
    w.write_all(&[2])?;
    w.write_all(&idx.to_le_bytes())?;
    w.write_all(&len.to_le_bytes())
}

/// [`Record::Unmarked`].
pub fn write_unmarked(w: &mut impl Write, count: u64, first: u64) -> io::Result<()> {
    w.write_all(&[5])?;
    w.write_all(&count.to_le_bytes())?;
    w.write_all(&first.to_le_bytes())
}

pub fn write_end(w: &mut impl Write, whole: &[u8; 32]) -> io::Result<()> {
    w.write_all(&[3])?;
    w.write_all(whole)
}

fn truncated(e: io::Error) -> String {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        "the stream from the source ended early (connection lost or source helper stopped)".into()
    } else {
        format!("reading the stream from the source: {e}")
    }
}

fn u64_of(r: &mut impl Read) -> Result<u64, String> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(truncated)?;
    Ok(u64::from_le_bytes(b))
}

fn u32_of(r: &mut impl Read) -> Result<u32, String> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(truncated)?;
    Ok(u32::from_le_bytes(b))
}

pub fn read_header(r: &mut impl Read) -> Result<Header, String> {
    let mut magic = [0u8; 6];
    r.read_exact(&mut magic).map_err(truncated)?;
    if &magic != MAGIC {
        return Err("the source did not send a reprise block stream".into());
    }
    // The protocol: at most 10 digits, then a newline.
    let mut digits = Vec::new();
    loop {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).map_err(truncated)?;
        match b[0] {
            b'\n' if !digits.is_empty() => break,
            b'0'..=b'9' if digits.len() < 10 => digits.push(b[0]),
            _ => return Err("the header of the stream from the source is damaged".into()),
        }
    }
    let theirs: u64 = std::str::from_utf8(&digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or("the header of the stream from the source is damaged")?;
    if theirs != u64::from(PROTOCOL) {
        return Err(format!(
            "the source helper speaks protocol {theirs}; this helper speaks protocol {PROTOCOL} (reprise {VERSION}): both hosts must run the same reprise"
        ));
    }
    let base_size = u64_of(r)?;
    let mut base_whole = [0u8; 32];
    r.read_exact(&mut base_whole).map_err(truncated)?;
    let size = u64_of(r)?;
    for (what, n) in [("its base", base_size), ("the image", size)] {
        if n > MAX_IMAGE_SIZE {
            return Err(format!(
                "the stream from the source announces {n} bytes for {what}, more than the {MAX_IMAGE_SIZE} bytes reprise replicates: refused"
            ));
        }
    }
    let mut said = [0u8; 1];
    r.read_exact(&mut said).map_err(truncated)?;
    let origin = match said[0] {
        0 => None,
        1 => {
            let mut boot = [0u8; 36];
            r.read_exact(&mut boot).map_err(truncated)?;
            Some(Origin {
                boot,
                dev: u64_of(r)?,
                ino: u64_of(r)?,
            })
        }
        _ => return Err("the header of the stream from the source is damaged".into()),
    };
    Ok(Header {
        base_size,
        base_whole,
        size,
        origin,
    })
}

/// The records of one stream, each checked against its header as it comes: a block lies
/// within the announced size and has the length that size gives it; indexes only increase
/// (no block twice, none out of order); and every block the receiver does not already hold
/// (all of them for a first copy; beyond the base for an update) comes, in turn, before the end.
#[derive(Debug, Clone)]
pub struct Records {
    size: u64,
    count: u64,
    /// Blocks below this may be left out (the receiver has them).
    held: u64,
    /// The next index allowed.
    next: u64,
    ended: bool,
    unmarked: bool,
}

impl Records {
    /// `base_blocks`: how many blocks the receiver holds (0 for a first copy). The last of
    /// them is not held when its length changes with the size (an image grown or shrunk
    /// within it): the receiver's hash of it is of other bytes, so it must come again.
    pub fn new(header: &Header, base_blocks: u64) -> Records {
        let count = blocks::count(header.size);
        let mut held = base_blocks.min(count);
        if held > 0
            && blocks::block_len(header.base_size, held - 1)
                != blocks::block_len(header.size, held - 1)
        {
            held -= 1;
        }
        Records {
            size: header.size,
            count,
            held,
            next: 0,
            ended: false,
            unmarked: false,
        }
    }

    /// The next record, checked; an error for anything the header does not allow.
    pub fn next(&mut self, r: &mut impl Read) -> Result<Record, String> {
        if self.ended {
            return Err("the stream was read past its end".into());
        }
        let rec = read_record_within(r, self.size)?;
        match &rec {
            Record::Data { idx, data } => self.check(*idx, data.len())?,
            Record::Zero { idx, len } => self.check(*idx, *len as usize)?,
            Record::Unmarked { count, first } => {
                if std::mem::replace(&mut self.unmarked, true) {
                    return Err("the stream says twice which blocks its bitmap missed".into());
                }
                let first_ok = match count {
                    0 => *first == 0,
                    _ => *first < self.count,
                };
                if *count > self.count || !first_ok {
                    return Err(format!(
                        "the stream says {count} blocks its bitmap missed, the first {first}, of an image of {} blocks",
                        self.count
                    ));
                }
            }
            Record::End { .. } => {
                let missing = self.next.max(self.held);
                if missing < self.count {
                    return Err(format!(
                        "the stream ended without block {missing} of the {} the header announced ({} bytes)",
                        self.count, self.size
                    ));
                }
                self.ended = true;
            }
        }
        Ok(rec)
    }

    fn check(&mut self, idx: u64, len: usize) -> Result<(), String> {
        if idx >= self.count {
            return Err(format!(
                "block {idx} lies beyond the image of {} bytes the header announced",
                self.size
            ));
        }
        if idx < self.next {
            return Err(format!(
                "block {idx} comes again or out of order (after block {})",
                self.next - 1
            ));
        }
        let needed = self.next.max(self.held);
        if idx > needed {
            return Err(format!(
                "block {needed} is missing from the stream (block {idx} came instead)"
            ));
        }
        let want = blocks::block_len(self.size, idx);
        if len != want {
            return Err(format!(
                "block {idx} is {len} bytes; an image of {} bytes has {want} there",
                self.size
            ));
        }
        self.next = idx + 1;
        Ok(())
    }
}

/// The next record, its lengths checked before anything is allocated (use [`Records`] to
/// check it against the header too).
pub fn read_record(r: &mut impl Read) -> Result<Record, String> {
    read_record_within(r, MAX_IMAGE_SIZE)
}

/// [`read_record`] for an image of `size` bytes: a block index beyond it is refused before
/// its data is read.
fn read_record_within(r: &mut impl Read, size: u64) -> Result<Record, String> {
    let beyond = |idx: u64| {
        (idx >= blocks::count(size)).then(|| {
            format!("block {idx} lies beyond the image of {size} bytes the header announced")
        })
    };
    let mut tag = [0u8; 1];
    r.read_exact(&mut tag).map_err(truncated)?;
    match tag[0] {
        1 => {
            let idx = u64_of(r)?;
            if let Some(e) = beyond(idx) {
                return Err(e);
            }
            let len = u32_of(r)? as usize;
            if len > BLOCK {
                return Err(format!(
                    "block {idx} of the stream is too long ({len} bytes)"
                ));
            }
            let mut data = vec![0u8; len];
            r.read_exact(&mut data).map_err(truncated)?;
            Ok(Record::Data { idx, data })
        }
        2 => {
            let idx = u64_of(r)?;
            let len = u32_of(r)?;
            if len as usize > BLOCK {
                return Err(format!(
                    "block {idx} of the stream is too long ({len} bytes)"
                ));
            }
            Ok(Record::Zero { idx, len })
        }
        3 => {
            let mut whole = [0u8; 32];
            r.read_exact(&mut whole).map_err(truncated)?;
            Ok(Record::End { whole })
        }
        5 => {
            let count = u64_of(r)?;
            let first = u64_of(r)?;
            Ok(Record::Unmarked { count, first })
        }
        4 => {
            let idx = u64_of(r)?;
            if let Some(e) = beyond(idx) {
                return Err(e);
            }
            let len = u32_of(r)? as usize;
            let zlen = u32_of(r)? as usize;
            if len > BLOCK || zlen > BLOCK {
                return Err(format!(
                    "block {idx} of the stream is too long ({len} bytes, {zlen} compressed)"
                ));
            }
            let mut z = vec![0u8; zlen];
            r.read_exact(&mut z).map_err(truncated)?;
            let data = zstd::bulk::decompress(&z, len)
                .map_err(|e| format!("block {idx} of the stream does not decompress: {e}"))?;
            if data.len() != len {
                return Err(format!(
                    "block {idx} of the stream decompresses to {} bytes, not {len}",
                    data.len()
                ));
            }
            Ok(Record::Data { idx, data })
        }
        t => Err(format!("unknown record {t} in the stream from the source")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_cut_stream_is_an_error() {
        let mut buf = Vec::new();
        let h = Header {
            base_size: 5,
            base_whole: [1; 32],
            size: 9,
            origin: Some(Origin {
                boot: *b"0b9c1a4e-2f7d-4c7e-9a55-3e1f0c2d4b6a",
                dev: 2049,
                ino: 1 << 40,
            }),
        };
        write_header(&mut buf, &h).unwrap();
        write_data(&mut buf, 3, b"abc").unwrap();
        write_zero(&mut buf, 4, 100).unwrap();
        write_end(&mut buf, &[7; 32]).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_header(&mut r).unwrap(), h);
        assert_eq!(
            read_record(&mut r).unwrap(),
            Record::Data {
                idx: 3,
                data: b"abc".to_vec()
            }
        );
        assert_eq!(
            read_record(&mut r).unwrap(),
            Record::Zero { idx: 4, len: 100 }
        );
        assert_eq!(read_record(&mut r).unwrap(), Record::End { whole: [7; 32] });
        let mut cut = &buf[..buf.len() - 3];
        read_header(&mut cut).unwrap();
        read_record(&mut cut).unwrap();
        read_record(&mut cut).unwrap();
        assert!(read_record(&mut cut).unwrap_err().contains("ended early"));
    }

    #[test]
    fn a_compressed_block_comes_back_whole_and_a_damaged_one_is_an_error() {
        let block: Vec<u8> = (0..BLOCK).map(|i| (i / 512) as u8).collect();
        let mut c = Compressor::new().unwrap();
        let z = c.compress(&block).expect("a repetitive block compresses");
        assert!(z.len() < block.len() / 8, "{} bytes", z.len());
        let mut buf = Vec::new();
        write_compressed(&mut buf, 6, block.len() as u32, &z).unwrap();
        assert_eq!(
            read_record(&mut &buf[..]).unwrap(),
            Record::Data {
                idx: 6,
                data: block.clone()
            }
        );
        // Random bytes do not compress: sent as they are.
        let noise: Vec<u8> = (0..4096u32)
            .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
            .collect();
        assert!(c.compress(&noise).is_none());
        // A frame damaged in transit, or claiming another length, is refused.
        let mut bad = buf.clone();
        let last = bad.len() - 2;
        bad[last] ^= 0xff;
        assert!(read_record(&mut &bad[..]).is_err());
        let mut short = Vec::new();
        write_compressed(&mut short, 6, block.len() as u32 - 1, &z).unwrap();
        assert!(read_record(&mut &short[..]).is_err());
    }

    /// A source's word on the blocks its bitmap missed (none included) comes once, before the
    /// end, and names blocks of the image: said twice, or of blocks it does not have, it is
    /// refused.
    #[test]
    fn blocks_a_bitmap_missed_are_said_once_within_the_image() {
        let h = Header {
            base_size: 3 * BLOCK as u64,
            base_whole: [1; 32],
            size: 3 * BLOCK as u64,
            origin: None,
        };
        let stream = |unmarked: &[(u64, u64)]| {
            let mut buf = Vec::new();
            write_header(&mut buf, &h).unwrap();
            write_zero(&mut buf, 1, BLOCK as u32).unwrap();
            for &(count, first) in unmarked {
                write_unmarked(&mut buf, count, first).unwrap();
            }
            write_end(&mut buf, &[7; 32]).unwrap();
            buf
        };
        let all = |buf: &[u8]| -> Result<Vec<Record>, String> {
            let mut r = buf;
            let mut records = Records::new(&read_header(&mut r).unwrap(), 3);
            let mut out = Vec::new();
            loop {
                let rec = records.next(&mut r)?;
                let end = matches!(rec, Record::End { .. });
                out.push(rec);
                if end {
                    return Ok(out);
                }
            }
        };
        let got = all(&stream(&[(2, 1)])).unwrap();
        assert_eq!(got[1], Record::Unmarked { count: 2, first: 1 });
        // A check that found none says so.
        let got = all(&stream(&[(0, 0)])).unwrap();
        assert_eq!(got[1], Record::Unmarked { count: 0, first: 0 });
        assert!(
            all(&stream(&[(1, 1), (1, 1)]))
                .unwrap_err()
                .contains("twice")
        );
        for bad in [(0, 1), (4, 1), (1, 3)] {
            let e = all(&stream(&[bad])).unwrap_err();
            assert!(e.contains("of an image of 3 blocks"), "{bad:?}: {e}");
        }
    }
}
