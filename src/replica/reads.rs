//! The reads of a vm's source disks while its snapshot freezes them: once every disk's source
//! has read its image to the end, nothing reads them again in this replication, and the
//! snapshot can be merged back (`replicate-end`) while the recovery side still commits.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex};

/// The reads of one vm's source disks (see the module).
#[derive(Debug)]
pub struct Reads {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// Disks not yet read to their end.
    left: usize,
    /// The disks read to their end: never read again.
    done: HashSet<String>,
    /// Every stream has ended (however it ended).
    ended: bool,
    /// The disks were let go ([`Reads::release`]): nothing reads them any more.
    released: bool,
}

impl Reads {
    /// The reads of `disks` disks.
    pub fn new(disks: usize) -> Reads {
        Reads {
            state: Mutex::new(State {
                left: disks,
                done: HashSet::new(),
                ended: false,
                released: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the disk `disk` may be read (again): not once it was read to its end, nor once
    /// the disks were let go.
    pub fn may_read(&self, disk: &str) -> bool {
        let s = self.state();
        !s.released && !s.done.contains(disk)
    }

    /// The source of `disk` has read it to its end, and sent all of it: it is not read again.
    pub fn read_to_end(&self, disk: &str) {
        let mut s = self.state();
        if s.done.insert(disk.to_string()) {
            s.left = s.left.saturating_sub(1);
        }
        self.changed.notify_all();
    }

    /// Every stream has ended, however: nothing reads the disks any more.
    pub fn streams_ended(&self) {
        self.state().ended = true;
        self.changed.notify_all();
    }

    /// Waits until every disk was read to its end or every stream has ended, then lets the
    /// disks go: no read starts after. Whether every disk had been read to its end.
    pub fn release(&self) -> bool {
        let mut s = self.state();
        while s.left > 0 && !s.ended {
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.released = true;
        s.left == 0
    }
}

/// Calls [`Reads::streams_ended`] when dropped: on every way out, a panic included.
pub struct Ended<'a>(pub &'a Reads);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.0.streams_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disks_go_once_each_was_read_to_its_end_and_are_never_read_again() {
        let reads = Reads::new(2);
        std::thread::scope(|s| {
            let released = s.spawn(|| reads.release());
            reads.read_to_end("a");
            // The same disk twice counts once: one disk is still read.
            reads.read_to_end("a");
            assert!(!reads.may_read("a"));
            assert!(reads.may_read("b"));
            reads.read_to_end("b");
            assert!(released.join().unwrap());
        });
        assert!(!reads.may_read("b"));
        // Nothing starts after they went, not even a disk never read.
        assert!(!reads.may_read("c"));
    }

    #[test]
    fn a_disk_not_read_to_its_end_holds_them_until_every_stream_has_ended() {
        let reads = Reads::new(2);
        reads.read_to_end("a");
        std::thread::scope(|s| {
            let released = s.spawn(|| reads.release());
            // "b" failed and may be tried again: it is still read.
            assert!(reads.may_read("b"));
            let ended = Ended(&reads);
            drop(ended);
            assert!(!released.join().unwrap());
        });
        assert!(!reads.may_read("b"));
    }
}
