//! A file written all through what reads it, for the tests of "written while it was read":
//! shared by the unit tests and, through `#[path]`, the integration tests.
//!
//! Writing from a thread on a timer alone is not enough: on a loaded machine the thread can be
//! held off the processor, or its write held behind the file system's journal, for as long as
//! a read lasts, and the read then sees a file nothing wrote. Each read of the file by any
//! process (`read`, `pread`: what `qemu-nbd` and the recovery side's re-reads do) therefore
//! waits, through fanotify's permission events, until the file has been written again. Reads
//! through a mapping of the file raise no such event; between reads the file is written every
//! 0.2 ms all the same.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a [`Rewriter`] did.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    /// Writes in all.
    pub writes: u64,
    /// Reads of the file by any process that waited for a write.
    pub in_reads: u64,
    /// The longest time between two writes.
    pub longest: Duration,
}

/// Writes the first byte of a file (its own value, so its bytes stay the same) at every read
/// of it and every 0.2 ms in between, from [`Rewriter::start`] to [`Rewriter::stop`].
pub struct Rewriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Written>>,
}

impl Rewriter {
    /// Starts writing `path`. Panics, saying what is missing, without root or without
    /// fanotify's permission events in the kernel: the tests that use it need both.
    pub fn start(path: &Path) -> Rewriter {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut first = [0u8; 1];
        file.read_exact_at(&mut first, 0)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let reads = watch(path, libc::FAN_ACCESS_PERM);
        let stop = Arc::new(AtomicBool::new(false));
        let until = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut done = Written {
                writes: 0,
                in_reads: 0,
                longest: Duration::ZERO,
            };
            let mut last = Instant::now();
            let mut write = |done: &mut Written| {
                file.write_all_at(&first, 0).expect("rewriting the file");
                done.writes += 1;
                done.longest = done.longest.max(last.elapsed());
                last = Instant::now();
            };
            while !until.load(Ordering::Relaxed) {
                // The reads waiting now, each let go only after a write that follows its
                // start (one that begins meanwhile waits for the next write).
                let held = match wait_readable(&reads, Duration::from_micros(200)) {
                    true => waiting(&reads),
                    false => Vec::new(),
                };
                write(&mut done);
                done.in_reads += held.len() as u64;
                let_go(&reads, held);
            }
            // Closing `reads` lets any read still waiting go on.
            done
        });
        Rewriter {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops writing: what was written.
    pub fn stop(mut self) -> Written {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the rewriter thread")
    }
}

impl Drop for Rewriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A fanotify group told of each access `mask` (`FAN_ACCESS_PERM`: each read;
/// `FAN_OPEN_PERM`: each opening) of `path` before it happens, the access held until answered
/// ([`let_go`]).
pub fn watch(path: &Path, mask: u64) -> OwnedFd {
    use std::os::unix::ffi::OsStrExt as _;
    // SAFETY: plain system calls; the descriptor returned is owned at once.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
        )
    };
    if fd < 0 {
        panic!(
            "fanotify_init: {} (the tests that hold a file's reads run as root, on a kernel with fanotify's permission events)",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: `fd` was just returned open and is owned by nothing else.
    let group = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path without NUL");
    // SAFETY: `name` is a NUL-terminated path that outlives the call.
    let marked = unsafe {
        libc::fanotify_mark(
            group.as_raw_fd(),
            libc::FAN_MARK_ADD,
            mask,
            libc::AT_FDCWD,
            name.as_ptr(),
        )
    };
    if marked < 0 {
        panic!(
            "fanotify_mark {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    group
}

/// Whether an access waits on `group`, waiting for one at most `timeout`.
pub fn wait_readable(group: &OwnedFd, timeout: Duration) -> bool {
    let mut fds = [libc::pollfd {
        fd: group.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd and a valid timespec, both outliving the call.
    let n = unsafe { libc::ppoll(fds.as_mut_ptr(), 1, &ts, std::ptr::null()) };
    n > 0 && fds[0].revents & libc::POLLIN != 0
}

/// The accesses waiting on `group` now: the descriptors of their events.
pub fn waiting(group: &OwnedFd) -> Vec<OwnedFd> {
    const META: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut buf = vec![0u8; 64 * META];
    let mut waiting = Vec::new();
    loop {
        // SAFETY: reads into `buf`, which outlives the call, at most its length.
        let n = unsafe {
            libc::read(
                group.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len() as libc::size_t,
            )
        };
        if n <= 0 {
            return waiting;
        }
        let mut at = 0;
        while at + META <= n as usize {
            // SAFETY: the kernel wrote a whole event's metadata at `at`; read unaligned.
            let event: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
            if (event.event_len as usize) < META {
                return waiting;
            }
            if event.fd >= 0 {
                // SAFETY: the kernel opened it for this process, which owns it now.
                waiting.push(unsafe { OwnedFd::from_raw_fd(event.fd) });
            }
            at += event.event_len as usize;
        }
    }
}

/// Lets the accesses `waiting` on `group` go on.
pub fn let_go(group: &OwnedFd, waiting: Vec<OwnedFd>) {
    for event in waiting {
        let response = libc::fanotify_response {
            fd: event.as_raw_fd(),
            response: libc::FAN_ALLOW,
        };
        // SAFETY: writes the response struct, which outlives the call.
        unsafe {
            libc::write(
                group.as_raw_fd(),
                (&response as *const libc::fanotify_response).cast(),
                std::mem::size_of::<libc::fanotify_response>(),
            );
        }
    }
}
