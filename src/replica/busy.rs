//! One replication of a vm (or backup set) at a time on this machine. Two at once (a timer's
//! round and one run by hand, a runbook's final sync beside a round) would each take the
//! other's freeze, snapshot or checkpoint for one left by a killed run and undo it under the
//! other's reads: a Proxmox guest thawed while it is read, a libvirt overlay merged back while
//! its base is read. The second waits for the first to end.
//!
//! The lock is a file of `/run/lock` (else the temporary folder), named after the vm and its
//! first disk or folder on its primary host, held with `flock` for its whole replication: the kernel
//! lets it go when the process ends, however it ends. Replications of one vm from two
//! machines are not seen (documented).

use std::fs::File;
use std::path::PathBuf;

/// The lock file of the replication of `item` whose first disk or folder is `source`.
fn path(item: &str, source: &str) -> PathBuf {
    let dir = PathBuf::from("/run/lock");
    let dir = match dir.is_dir() {
        true => dir,
        false => std::env::temp_dir(),
    };
    let key = blake3::hash(format!("{source}\0{item}").as_bytes()).to_hex();
    dir.join(format!("reprise-replicate-{}.lock", &key[..16]))
}

/// Holds the replication of `item` (a vm or backup set) whose first disk or folder is
/// `source` (`HOST:PATH`) until the file returned is dropped, waiting while another
/// process of this machine holds it (`waiting` is told once, with its pid when it wrote it);
/// `Err` when `stopped` says to stop meanwhile, or the lock cannot be taken at all.
pub fn hold(
    item: &str,
    source: &str,
    stopped: &dyn Fn() -> bool,
    waiting: &mut dyn FnMut(&str),
) -> Result<File, String> {
    let path = path(item, source);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .or_else(|_| File::open(&path))
        .map_err(|e| {
            format!(
                "its replication lock {} cannot be opened: {e}",
                path.display()
            )
        })?;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => {
                // After one that ran: its points were taken in a second already begun, and
                // point ids are to the second (a copy refuses a second point of one id).
                if told {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    let rest = 1_000_000_000 - u64::from(now.subsec_nanos());
                    std::thread::sleep(std::time::Duration::from_nanos(rest + 1_000_000));
                }
                // Who holds it, for the one that waits (best effort).
                let _ = file.set_len(0);
                let _ = std::io::Write::write_all(
                    &mut &file,
                    std::process::id().to_string().as_bytes(),
                );
                return Ok(file);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                if !told {
                    let pid = std::fs::read_to_string(&path).unwrap_or_default();
                    let by = match pid.trim() {
                        "" => String::new(),
                        p => format!(" (process {p})"),
                    };
                    waiting(&format!(
                        "another replication of {item} runs on this machine{by}: waiting for it to end"
                    ));
                    told = true;
                }
                if stopped() {
                    return Err(format!(
                        "stopped while another replication of {item} ran on this machine"
                    ));
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!(
                    "its replication lock {} cannot be taken: {e}",
                    path.display()
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second replication of one vm waits for the first (told once), and goes on once the
    /// first lets go; another vm, or the same name on another host, does not wait.
    #[test]
    fn a_second_replication_of_one_vm_waits_for_the_first() {
        let item = format!("vm-{}", std::process::id());
        let never = || false;
        let first = hold(&item, "127.9.9.9:22", &never, &mut |_| panic!("waited")).unwrap();
        let _other = hold(&item, "127.9.9.8:22", &never, &mut |_| panic!("waited")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let item2 = item.clone();
        let second = std::thread::spawn(move || {
            let mut said = Vec::new();
            let held = hold(&item2, "127.9.9.9:22", &|| false, &mut |m| {
                said.push(m.to_string())
            });
            tx.send(()).unwrap();
            (held.is_ok(), said)
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(500))
                .is_err(),
            "the second did not wait"
        );
        drop(first);
        let (held, said) = second.join().unwrap();
        assert!(held);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].contains("another replication of vm-"), "{said:?}");
        assert!(said[0].contains("(process "), "{said:?}");
        // Stopped while it waits: it ends, saying so.
        let _first = hold(&item, "127.9.9.9:22", &never, &mut |_| {}).unwrap();
        let e = hold(&item, "127.9.9.9:22", &|| true, &mut |_| {}).unwrap_err();
        assert!(e.contains("stopped while another replication"), "{e}");
    }
}
