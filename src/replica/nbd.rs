//! A read-only NBD client for the source side: the export of a disk as of one instant (libvirt's
//! pull-mode backup, or `qemu-nbd` on a stopped image) and the extents of a dirty bitmap
//! (`NBD_CMD_BLOCK_STATUS` with the `qemu:dirty-bitmap:NAME` meta context), so that only what
//! changed is read.
//!
//! Only the part of the protocol this needs: the fixed newstyle handshake, `NBD_OPT_GO`,
//! structured replies, one meta context, `NBD_CMD_READ`, `NBD_CMD_BLOCK_STATUS` and
//! `NBD_CMD_DISC`, over a Unix socket; reads may be asked several at once. The server is the source host's
//! own QEMU, but what it answers is still checked: every chunk within the request, every
//! extent advancing, every length bounded. It never writes.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;

const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;

const CMD_READ: u16 = 0;
const CMD_DISC: u16 = 2;
const CMD_BLOCK_STATUS: u16 = 7;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_TYPE_NONE: u16 = 0;
const REPLY_TYPE_OFFSET_DATA: u16 = 1;
const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
const REPLY_TYPE_ERROR_BIT: u16 = 1 << 15;

/// The largest read asked at once (QEMU serves up to 32 MiB).
pub const MAX_READ: u32 = 4 << 20;
/// Reads asked at once, at most, and their bytes.
pub const DEPTH: usize = 16;
pub const IN_FLIGHT: u64 = 16 << 20;
/// The longest option reply or chunk accepted that is not read data.
const MAX_META: u32 = 1 << 20;
/// Bytes asked per block-status request: the most a request can ask (its length is 32 bits),
/// rounded to 64 KiB, so that a large disk takes few round trips to the server.
const STATUS_SPAN: u64 = (1 << 32) - (1 << 16);

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("NBD export {export} at {socket}: {reason}")]
    Protocol {
        socket: String,
        export: String,
        reason: String,
    },
    #[error("NBD export {export} at {socket}: {source}")]
    Io {
        socket: String,
        export: String,
        source: io::Error,
    },
}

/// One connection to one export.
pub struct Client {
    stream: UnixStream,
    socket: String,
    export: String,
    size: u64,
    /// The id the server gave the dirty-bitmap context, when one was asked.
    context: Option<u32>,
    cookie: u64,
}

impl Client {
    /// Connects to `export` at `socket`; with `bitmap`, asks the `qemu:dirty-bitmap:BITMAP`
    /// context, which must exist.
    pub fn connect(socket: &Path, export: &str, bitmap: Option<&str>) -> Result<Client, NbdError> {
        let stream = UnixStream::connect(socket).map_err(|source| NbdError::Io {
            socket: socket.display().to_string(),
            export: export.to_string(),
            source,
        })?;
        let mut c = Client {
            stream,
            socket: socket.display().to_string(),
            export: export.to_string(),
            size: 0,
            context: None,
            cookie: 0,
        };
        c.handshake(bitmap).map_err(|e| c.err(e))?;
        Ok(c)
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn err(&self, e: Fail) -> NbdError {
        match e {
            Fail::Io(source) => NbdError::Io {
                socket: self.socket.clone(),
                export: self.export.clone(),
                source,
            },
            Fail::Protocol(reason) => NbdError::Protocol {
                socket: self.socket.clone(),
                export: self.export.clone(),
                reason,
            },
        }
    }

    fn handshake(&mut self, bitmap: Option<&str>) -> Result<(), Fail> {
        let s = &mut self.stream;
        if read_u64(s)? != NBDMAGIC || read_u64(s)? != IHAVEOPT {
            return Err(Fail::Protocol("not an NBD newstyle server".into()));
        }
        let flags = read_u16(s)?;
        if flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(Fail::Protocol("the server is not fixed newstyle".into()));
        }
        let client_flags = (FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)) as u32;
        s.write_all(&client_flags.to_be_bytes())?;
        // Structured replies: needed for block status.
        send_option(s, OPT_STRUCTURED_REPLY, &[])?;
        let (kind, _) = option_reply(s, OPT_STRUCTURED_REPLY)?;
        if kind != REP_ACK {
            return Err(Fail::Protocol(format!(
                "the server refused structured replies ({})",
                rep_name(kind)
            )));
        }
        if let Some(bitmap) = bitmap {
            let query = format!("qemu:dirty-bitmap:{bitmap}");
            let mut data = Vec::new();
            push_str32(&mut data, &self.export);
            data.extend_from_slice(&1u32.to_be_bytes());
            push_str32(&mut data, &query);
            send_option(s, OPT_SET_META_CONTEXT, &data)?;
            loop {
                let (kind, payload) = option_reply(s, OPT_SET_META_CONTEXT)?;
                match kind {
                    REP_META_CONTEXT if payload.len() >= 4 => {
                        let id = u32::from_be_bytes(payload[..4].try_into().expect("4 bytes"));
                        if payload[4..] == *query.as_bytes() {
                            self.context = Some(id);
                        }
                    }
                    REP_ACK => break,
                    other => {
                        return Err(Fail::Protocol(format!(
                            "the server refused the context {query} ({})",
                            rep_name(other)
                        )));
                    }
                }
            }
            if self.context.is_none() {
                return Err(Fail::Protocol(format!(
                    "the server has no dirty bitmap {bitmap} (no context {query})"
                )));
            }
        }
        let mut data = Vec::new();
        push_str32(&mut data, &self.export);
        data.extend_from_slice(&0u16.to_be_bytes());
        send_option(s, OPT_GO, &data)?;
        let mut size = None;
        loop {
            let (kind, payload) = option_reply(s, OPT_GO)?;
            match kind {
                REP_INFO if payload.len() >= 12 => {
                    if u16::from_be_bytes([payload[0], payload[1]]) == INFO_EXPORT {
                        size = Some(u64::from_be_bytes(
                            payload[2..10].try_into().expect("8 bytes"),
                        ));
                    }
                }
                REP_INFO => {}
                REP_ACK => break,
                other => {
                    let said = printable(&payload);
                    return Err(Fail::Protocol(format!(
                        "the server refused the export ({}{}{said})",
                        rep_name(other),
                        if said.is_empty() { "" } else { ": " },
                    )));
                }
            }
        }
        self.size = size.ok_or_else(|| Fail::Protocol("the server gave no export size".into()))?;
        if self.size > super::blocks::MAX_IMAGE_SIZE {
            return Err(Fail::Protocol(format!(
                "the export says {} bytes, more than 64 TiB",
                self.size
            )));
        }
        Ok(())
    }

    fn request(&mut self, kind: u16, flags: u16, offset: u64, len: u32) -> Result<u64, Fail> {
        self.cookie += 1;
        let mut req = Vec::with_capacity(28);
        req.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        req.extend_from_slice(&flags.to_be_bytes());
        req.extend_from_slice(&kind.to_be_bytes());
        req.extend_from_slice(&self.cookie.to_be_bytes());
        req.extend_from_slice(&offset.to_be_bytes());
        req.extend_from_slice(&len.to_be_bytes());
        self.stream.write_all(&req)?;
        Ok(self.cookie)
    }

    /// Reads `buf.len()` (at most [`MAX_READ`]) bytes at `offset`.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.read_inner(offset, buf).map_err(|e| self.err(e))
    }

    fn read_inner(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Fail> {
        let len = u32::try_from(buf.len())
            .ok()
            .filter(|l| *l <= MAX_READ)
            .ok_or_else(|| Fail::Protocol("a read larger than the client allows".into()))?;
        if offset.checked_add(len as u64).is_none_or(|e| e > self.size) {
            return Err(Fail::Protocol(format!(
                "a read at {offset} of {len} bytes beyond the export's {} bytes",
                self.size
            )));
        }
        let cookie = self.request(CMD_READ, 0, offset, len)?;
        // Every byte must be covered by exactly one of the chunks sent.
        let mut filled = Filled::default();
        loop {
            let chunk = self.chunk(cookie, Some(len))?;
            place(offset, buf, &chunk, &mut filled)?;
            if chunk.done {
                break;
            }
        }
        filled.whole(offset, len as u64)
    }

    /// Reads `reads` (`(offset, length)`, each at most [`MAX_READ`]) with several asked at once
    /// (up to [`IN_FLIGHT`] bytes and [`DEPTH`] reads), so that the server, and the disk under it, works on several (scattered
    /// blocks read one after the other wait for the disk one by one): `f(offset, bytes)` for
    /// each, in order.
    pub fn read_many(
        &mut self,
        reads: &[(u64, u32)],
        mut f: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        struct Asked {
            cookie: u64,
            offset: u64,
            buf: Vec<u8>,
            filled: Filled,
            done: bool,
        }
        let mut asked: std::collections::VecDeque<Asked> = std::collections::VecDeque::new();
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut next = 0;
        loop {
            while next < reads.len()
                && (asked.is_empty()
                    || (asked.len() < DEPTH
                        && asked.iter().map(|a| a.buf.len() as u64).sum::<u64>()
                            + reads[next].1 as u64
                            <= IN_FLIGHT))
            {
                let (offset, len) = reads[next];
                if len > MAX_READ || offset.checked_add(len as u64).is_none_or(|e| e > self.size) {
                    return Err(self
                        .err(Fail::Protocol(format!(
                            "a read at {offset} of {len} bytes beyond the export's {} bytes or larger than the client allows",
                            self.size
                        )))
                        .to_string());
                }
                let cookie = self
                    .request(CMD_READ, 0, offset, len)
                    .map_err(|e| self.err(e).to_string())?;
                let mut buf = spare.pop().unwrap_or_default();
                buf.resize(len as usize, 0);
                asked.push_back(Asked {
                    cookie,
                    offset,
                    buf,
                    filled: Filled::default(),
                    done: false,
                });
                next += 1;
            }
            while asked.front().is_some_and(|a| a.done) {
                let a = asked.pop_front().expect("a front");
                a.filled
                    .whole(a.offset, a.buf.len() as u64)
                    .map_err(|e| self.err(e).to_string())?;
                f(a.offset, &a.buf)?;
                spare.push(a.buf);
            }
            if asked.is_empty() {
                if next == reads.len() {
                    return Ok(());
                }
                continue;
            }
            // A chunk of any read asked (the server may answer them in any order).
            let lens: Vec<(u64, u32)> = asked
                .iter()
                .filter(|a| !a.done)
                .map(|a| (a.cookie, a.buf.len() as u32))
                .collect();
            let (cookie, chunk) = self
                .chunk_of(|c| lens.iter().find(|(k, _)| *k == c).map(|(_, l)| Some(*l)))
                .map_err(|e| self.err(e).to_string())?;
            let a = asked
                .iter_mut()
                .find(|a| a.cookie == cookie)
                .expect("a cookie asked");
            place(a.offset, &mut a.buf, &chunk, &mut a.filled)
                .map_err(|e| self.err(e).to_string())?;
            a.done = chunk.done;
        }
    }

    /// The extents of the export that the dirty bitmap marks, in order and merged:
    /// `(offset, length)`.
    pub fn dirty_extents(&mut self) -> Result<Vec<(u64, u64)>, NbdError> {
        self.dirty_inner().map_err(|e| self.err(e))
    }

    fn dirty_inner(&mut self) -> Result<Vec<(u64, u64)>, Fail> {
        let context = self
            .context
            .ok_or_else(|| Fail::Protocol("no dirty bitmap was asked".into()))?;
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut at = 0u64;
        while at < self.size {
            let span = (self.size - at).min(STATUS_SPAN) as u32;
            let cookie = self.request(CMD_BLOCK_STATUS, 0, at, span)?;
            let mut next = at;
            let mut described = false;
            loop {
                let chunk = self.chunk(cookie, None)?;
                match chunk.kind {
                    REPLY_TYPE_BLOCK_STATUS => {
                        let p = &chunk.payload;
                        if p.len() < 4 || (p.len() - 4) % 8 != 0 {
                            return Err(Fail::Protocol(
                                "a block status of the wrong length".into(),
                            ));
                        }
                        let ours =
                            u32::from_be_bytes(p[..4].try_into().expect("4 bytes")) == context;
                        // One description a context: a second would be read as following
                        // the first, and mark blocks the bitmap does not.
                        if ours && std::mem::replace(&mut described, true) {
                            return Err(Fail::Protocol(format!(
                                "the block status at {at} described the dirty bitmap twice"
                            )));
                        }
                        for d in p[4..].chunks_exact(8).filter(|_| ours) {
                            let n = u32::from_be_bytes(d[..4].try_into().expect("4 bytes")) as u64;
                            let flags = u32::from_be_bytes(d[4..].try_into().expect("4 bytes"));
                            if n == 0 {
                                return Err(Fail::Protocol("an extent of no length".into()));
                            }
                            // The last extent may reach past the request, never past the export.
                            let n = n.min(self.size - next);
                            if n == 0 {
                                break;
                            }
                            if flags & 1 != 0 {
                                match out.last_mut() {
                                    Some((o, l)) if *o + *l == next => *l += n,
                                    _ => out.push((next, n)),
                                }
                            }
                            next += n;
                        }
                    }
                    REPLY_TYPE_NONE => {}
                    k => {
                        return Err(Fail::Protocol(format!(
                            "an unexpected reply of type {k} to a block status"
                        )));
                    }
                }
                if chunk.done {
                    break;
                }
            }
            if next <= at {
                return Err(Fail::Protocol(format!(
                    "the block status at {at} described nothing"
                )));
            }
            at = next;
        }
        Ok(out)
    }

    /// One structured reply chunk to `cookie` (a simple reply is taken as an error or as the
    /// whole answer to a read of `read_len`).
    fn chunk(&mut self, cookie: u64, read_len: Option<u32>) -> Result<Chunk, Fail> {
        self.chunk_of(|c| (c == cookie).then_some(read_len))
            .map(|(_, chunk)| chunk)
    }

    /// One structured reply chunk to a request whose cookie `asked` knows (and gives the
    /// length of, for a read): the cookie and the chunk.
    fn chunk_of(
        &mut self,
        asked: impl Fn(u64) -> Option<Option<u32>>,
    ) -> Result<(u64, Chunk), Fail> {
        let s = &mut self.stream;
        let magic = read_u32(s)?;
        if magic == SIMPLE_REPLY_MAGIC {
            // Structured replies were agreed: a simple reply can only be an error.
            let error = read_u32(s)?;
            let c = read_u64(s)?;
            if asked(c).is_none() {
                return Err(Fail::Protocol("a reply to another request".into()));
            }
            return Err(Fail::Protocol(format!(
                "the server answered error {error} (a simple reply)"
            )));
        }
        if magic != STRUCTURED_REPLY_MAGIC {
            return Err(Fail::Protocol(format!("a reply with the magic {magic:#x}")));
        }
        let flags = read_u16(s)?;
        let kind = read_u16(s)?;
        let c = read_u64(s)?;
        let len = read_u32(s)?;
        let Some(read_len) = asked(c) else {
            return Err(Fail::Protocol("a reply to another request".into()));
        };
        let limit = read_len.map_or(MAX_META, |l| (l + 8).max(MAX_META));
        if len > limit {
            return Err(Fail::Protocol(format!("a reply chunk of {len} bytes")));
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload)?;
        if kind & REPLY_TYPE_ERROR_BIT != 0 {
            let code = payload
                .get(..4)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
                .unwrap_or(0);
            let msg_len = payload
                .get(4..6)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                .unwrap_or(0);
            let msg = payload
                .get(6..6 + msg_len)
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            return Err(Fail::Protocol(format!(
                "the server answered error {code}{}{}",
                if msg.is_empty() { "" } else { ": " },
                printable(msg.as_bytes())
            )));
        }
        Ok((
            c,
            Chunk {
                kind,
                done: flags & REPLY_FLAG_DONE != 0,
                payload,
            },
        ))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.request(CMD_DISC, 0, 0, 0);
    }
}

/// Puts the data or hole of `chunk`, a reply to the read at `offset` into `buf`, in its
/// place: the bytes it covers, none outside the read and none another chunk covered (a byte
/// covered twice would let another go unread, its buffer holding an earlier read's data).
fn place(offset: u64, buf: &mut [u8], chunk: &Chunk, filled: &mut Filled) -> Result<(), Fail> {
    let len = buf.len() as u64;
    match chunk.kind {
        REPLY_TYPE_OFFSET_DATA | REPLY_TYPE_OFFSET_HOLE => {
            let p = &chunk.payload;
            if p.len() < 8 {
                return Err(Fail::Protocol("a read chunk too short".into()));
            }
            let at = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
            let n = if chunk.kind == REPLY_TYPE_OFFSET_DATA {
                (p.len() - 8) as u64
            } else if p.len() == 12 {
                u32::from_be_bytes(p[8..12].try_into().expect("4 bytes")) as u64
            } else {
                return Err(Fail::Protocol("a hole chunk of the wrong length".into()));
            };
            let start = at
                .checked_sub(offset)
                .filter(|s| n > 0 && s.checked_add(n).is_some_and(|e| e <= len));
            let Some(start) = start else {
                return Err(Fail::Protocol(format!(
                    "a read chunk at {at} of {n} bytes outside the read at {offset} of {len}"
                )));
            };
            filled.add(start, n).map_err(|(from, to)| {
                Fail::Protocol(format!(
                    "a read chunk at {at} of {n} bytes over bytes {} to {} of the read at {offset}, which another chunk already gave",
                    offset + from,
                    offset + to
                ))
            })?;
            let dst = &mut buf[start as usize..(start + n) as usize];
            if chunk.kind == REPLY_TYPE_OFFSET_DATA {
                dst.copy_from_slice(&p[8..]);
            } else {
                dst.fill(0);
            }
            Ok(())
        }
        REPLY_TYPE_NONE if chunk.done => Ok(()),
        REPLY_TYPE_NONE => Err(Fail::Protocol(
            "an empty reply chunk to a read that does not end it".into(),
        )),
        k => Err(Fail::Protocol(format!(
            "an unexpected reply of type {k} to a read"
        ))),
    }
}

/// The parts of one read its chunks have covered, none twice: `start → end`, within the read.
#[derive(Default)]
struct Filled {
    ranges: std::collections::BTreeMap<u64, u64>,
    bytes: u64,
}

impl Filled {
    /// Covers `n` (more than zero) bytes from `start`, or the part of them already covered.
    fn add(&mut self, start: u64, n: u64) -> Result<(), (u64, u64)> {
        let end = start + n;
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e > start
        {
            return Err((start.max(s), end.min(e)));
        }
        if let Some((&s, &e)) = self.ranges.range(start..).next()
            && s < end
        {
            return Err((s, end.min(e)));
        }
        self.ranges.insert(start, end);
        self.bytes += n;
        Ok(())
    }

    /// Whether the chunks covered every byte of the read at `offset` of `len` bytes.
    fn whole(&self, offset: u64, len: u64) -> Result<(), Fail> {
        if self.bytes == len {
            return Ok(());
        }
        Err(Fail::Protocol(format!(
            "the read at {offset} of {len} bytes was answered with {} bytes",
            self.bytes
        )))
    }
}

struct Chunk {
    kind: u16,
    done: bool,
    payload: Vec<u8>,
}

enum Fail {
    Io(io::Error),
    Protocol(String),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail::Io(e)
    }
}

fn rep_name(kind: u32) -> String {
    match kind {
        k if k == REP_ERR | 1 => "unsupported".into(),
        k if k == REP_ERR | 2 => "not allowed".into(),
        k if k == REP_ERR | 3 => "invalid".into(),
        k if k == REP_ERR | 6 => "unknown export".into(),
        k => format!("reply {k:#x}"),
    }
}

/// What a server said, for a message: printable, one line, at most 200 characters.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect::<String>()
        .trim()
        .to_string()
}

fn push_str32(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn send_option(s: &mut UnixStream, option: u32, data: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    s.write_all(&out)
}

/// One option reply to `option`: its type and data.
fn option_reply(s: &mut UnixStream, option: u32) -> Result<(u32, Vec<u8>), Fail> {
    if read_u64(s)? != REPLY_MAGIC {
        return Err(Fail::Protocol("an option reply with a wrong magic".into()));
    }
    if read_u32(s)? != option {
        return Err(Fail::Protocol("a reply to another option".into()));
    }
    let kind = read_u32(s)?;
    let len = read_u32(s)?;
    if len > MAX_META {
        return Err(Fail::Protocol(format!("an option reply of {len} bytes")));
    }
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data)?;
    Ok((kind, data))
}

fn read_u16(s: &mut impl Read) -> io::Result<u16> {
    let mut b = [0u8; 2];
    s.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(s: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One chunk a scripted server sends: its type, whether it ends the reply, its payload.
    type Reply = (u16, bool, Vec<u8>);

    /// A client whose server answers each read `(offset, length)` with what `script` gives:
    /// the server of a source host that cannot be trusted to follow the protocol.
    fn scripted(size: u64, script: impl Fn(u64, u32) -> Vec<Reply> + Send + 'static) -> Client {
        let (ours, mut theirs) = UnixStream::pair().expect("a socket pair");
        std::thread::spawn(move || {
            let mut req = [0u8; 28];
            while theirs.read_exact(&mut req).is_ok() {
                let kind = u16::from_be_bytes([req[6], req[7]]);
                if kind != CMD_READ {
                    return;
                }
                let cookie = &req[8..16];
                let offset = u64::from_be_bytes(req[16..24].try_into().expect("8"));
                let len = u32::from_be_bytes(req[24..28].try_into().expect("4"));
                for (kind, done, payload) in script(offset, len) {
                    let mut out = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
                    out.extend_from_slice(&u16::from(done).to_be_bytes());
                    out.extend_from_slice(&kind.to_be_bytes());
                    out.extend_from_slice(cookie);
                    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
                    out.extend_from_slice(&payload);
                    if theirs.write_all(&out).is_err() {
                        return;
                    }
                }
            }
        });
        Client {
            stream: ours,
            socket: "scripted".into(),
            export: "sda".into(),
            size,
            context: None,
            cookie: 0,
        }
    }

    fn data(at: u64, bytes: &[u8]) -> Vec<u8> {
        let mut p = at.to_be_bytes().to_vec();
        p.extend_from_slice(bytes);
        p
    }

    fn hole(at: u64, n: u32) -> Vec<u8> {
        let mut p = at.to_be_bytes().to_vec();
        p.extend_from_slice(&n.to_be_bytes());
        p
    }

    const K64: usize = 64 << 10;

    /// The halves of each read, sent second half first, the first half a hole: what any
    /// server may send, and read in place.
    #[test]
    fn chunks_in_any_order_that_cover_each_byte_once_are_one_read() {
        let script = |offset: u64, len: u32| {
            let half = len / 2;
            vec![
                (
                    REPLY_TYPE_OFFSET_DATA,
                    false,
                    data(offset + half as u64, &vec![0xab; half as usize]),
                ),
                (REPLY_TYPE_OFFSET_HOLE, true, hole(offset, half)),
            ]
        };
        let mut buf = vec![0x55u8; 2 * K64];
        scripted(1 << 20, script)
            .read_at(0, &mut buf)
            .expect("a read covered once");
        assert!(buf[..K64].iter().all(|b| *b == 0));
        assert!(buf[K64..].iter().all(|b| *b == 0xab));
        let mut seen = Vec::new();
        scripted(1 << 20, script)
            .read_many(
                &[(0, 2 * K64 as u32), (4 * K64 as u64, 2 * K64 as u32)],
                |o, b| {
                    seen.push((o, b.to_vec()));
                    Ok(())
                },
            )
            .expect("reads covered once");
        assert_eq!(seen.len(), 2);
        for (_, b) in &seen {
            assert!(b[..K64].iter().all(|b| *b == 0) && b[K64..].iter().all(|b| *b == 0xab));
        }
    }

    /// A server that gives the first half of a read twice has as many bytes as the read asked,
    /// and half of it never read: refused, never handed on with what the buffer held before
    /// (by `read_many`, another read's data).
    #[test]
    fn a_read_answered_twice_in_one_place_is_refused_not_half_unread() {
        let script = |offset: u64, len: u32| {
            let half = vec![0xab; len as usize / 2];
            vec![
                (REPLY_TYPE_OFFSET_DATA, false, data(offset, &half)),
                (REPLY_TYPE_OFFSET_DATA, true, data(offset, &half)),
            ]
        };
        let mut buf = vec![0x55u8; 2 * K64];
        let e = scripted(1 << 20, script)
            .read_at(0, &mut buf)
            .expect_err("half of the read never came")
            .to_string();
        assert!(e.contains("which another chunk already gave"), "{e}");
        let mut handed = 0;
        let e = scripted(1 << 20, script)
            .read_many(
                &[(0, 2 * K64 as u32), (2 * K64 as u64, 2 * K64 as u32)],
                |_, _| {
                    handed += 1;
                    Ok(())
                },
            )
            .expect_err("half of each read never came");
        assert!(e.contains("which another chunk already gave"), "{e}");
        assert_eq!(handed, 0, "no read was handed on");
        // Overlapping in part, the other way round: the second chunk starts inside the first.
        let e = scripted(1 << 20, |offset: u64, len: u32| {
            vec![
                (
                    REPLY_TYPE_OFFSET_HOLE,
                    false,
                    hole(offset + 4096, len - 4096),
                ),
                (REPLY_TYPE_OFFSET_DATA, true, data(offset, &[1; 8192])),
            ]
        })
        .read_at(0, &mut buf)
        .expect_err("bytes 4096 to 8192 twice")
        .to_string();
        assert!(e.contains("over bytes 4096 to 8192"), "{e}");
    }

    /// Chunks at a place no read asked (an offset near 2^64, which once wrapped past the check
    /// into a slice out of bounds), of no length, or a reply that never ends: refused, never
    /// a panic or a read that waits forever.
    #[test]
    fn chunks_outside_the_read_of_no_length_or_that_never_end_are_refused() {
        let cases: Vec<(Vec<Reply>, &str)> = vec![
            (
                vec![(REPLY_TYPE_OFFSET_DATA, true, data(u64::MAX - 15, &[7; 32]))],
                "outside the read",
            ),
            (
                vec![(REPLY_TYPE_OFFSET_HOLE, true, hole(u64::MAX - 15, 32))],
                "outside the read",
            ),
            (
                vec![(REPLY_TYPE_OFFSET_DATA, true, data(K64 as u64 + 1, &[7; 16]))],
                "outside the read",
            ),
            (
                vec![
                    (REPLY_TYPE_OFFSET_HOLE, false, hole(0, 0)),
                    (REPLY_TYPE_OFFSET_HOLE, true, hole(0, K64 as u32)),
                ],
                "outside the read",
            ),
            (
                vec![
                    (REPLY_TYPE_NONE, false, vec![]),
                    (REPLY_TYPE_OFFSET_HOLE, true, hole(0, K64 as u32)),
                ],
                "does not end it",
            ),
            (
                vec![(REPLY_TYPE_OFFSET_HOLE, true, hole(0, K64 as u32 / 2))],
                "answered with 32768 bytes",
            ),
        ];
        for (replies, said) in cases {
            let mut buf = vec![0u8; K64];
            let e = scripted(1 << 20, move |_, _| replies.clone())
                .read_at(0, &mut buf)
                .expect_err(said)
                .to_string();
            assert!(e.contains(said), "{said}: {e}");
        }
    }
}
