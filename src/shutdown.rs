//! Stopping cleanly on a signal: SIGINT (Ctrl-C), SIGTERM (`kill`, systemd, a CI timeout) and
//! SIGHUP (the SSH session of the operator dropped) all turn one watch channel to `true`, which
//! runs and replications read as "start nothing new, let what runs finish, clean up".
//!
//! It only listens and tells; what stopping means is decided by the runner and `replicate`.

use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

/// The signals that stop a command cleanly, once listened to.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    /// Kept so that the channel stays open for as long as a handle lives.
    tx: Arc<watch::Sender<bool>>,
    reason: Arc<OnceLock<&'static str>>,
}

impl Shutdown {
    /// Starts listening for SIGINT, SIGTERM and SIGHUP (on a thread of its own, so that
    /// synchronous commands are told as well as the runner). If the listener cannot be set
    /// up, the command still runs, but only the default action of those signals stops it.
    pub fn listen() -> Shutdown {
        let shutdown = Shutdown::manual();
        let (tx, reason) = (shutdown.tx.clone(), shutdown.reason.clone());
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("reprise-signals".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    use tokio::signal::unix::{SignalKind, signal};
                    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                        signal(SignalKind::interrupt()),
                        signal(SignalKind::terminate()),
                        signal(SignalKind::hangup()),
                    ) else {
                        return;
                    };
                    // The handlers are in place: a signal from now on is seen.
                    let _ = ready_tx.send(());
                    loop {
                        let name = tokio::select! {
                            _ = int.recv() => "SIGINT",
                            _ = term.recv() => "SIGTERM",
                            _ = hup.recv() => "SIGHUP",
                        };
                        let _ = reason.set(name);
                        let _ = tx.send(true);
                    }
                });
            });
        if spawned.is_ok() {
            // Returns once the handlers are set (or the listener gave up, dropping its end).
            let _ = ready.recv();
        }
        shutdown
    }

    /// A shutdown that only [`Shutdown::trigger`] turns on (tests, embedding).
    pub fn manual() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            rx,
            tx: Arc::new(tx),
            reason: Arc::new(OnceLock::new()),
        }
    }

    /// Asks to stop, as a signal would, giving the reason.
    pub fn trigger(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        let _ = self.tx.send(true);
    }

    /// The channel the runner and replications watch.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    /// Whether a stop was asked.
    pub fn requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// The first signal received (`SIGINT`, `SIGTERM`, `SIGHUP`), or the reason given.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason.get().copied()
    }
}

/// SIGUSR1 heard: a long-running command's "now, not at the next time" (`reprise replicate
/// --every` starts its next round at once).
pub struct Asked(Arc<std::sync::atomic::AtomicBool>);

impl Asked {
    /// Starts listening for SIGUSR1 (on a thread of its own); returns once the handler is set,
    /// so that the signal no longer ends the process. `None` if it could not be set. The
    /// signal also wakes the thread that called this from `std::thread::park_timeout`.
    pub fn listen() -> Option<Asked> {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let set = flag.clone();
        let waiter = std::thread::current();
        let (ready_tx, ready) = std::sync::mpsc::channel::<bool>();
        std::thread::Builder::new()
            .name("reprise-usr1".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                else {
                    let _ = ready_tx.send(false);
                    return;
                };
                rt.block_on(async move {
                    use tokio::signal::unix::{SignalKind, signal};
                    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
                        let _ = ready_tx.send(false);
                        return;
                    };
                    let _ = ready_tx.send(true);
                    while usr1.recv().await.is_some() {
                        set.store(true, std::sync::atomic::Ordering::Relaxed);
                        waiter.unpark();
                    }
                });
            })
            .ok()?;
        ready.recv().ok()?.then_some(Asked(flag))
    }

    /// Whether SIGUSR1 came since the last call.
    pub fn take(&self) -> bool {
        self.0.swap(false, std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_turns_the_channel_and_names_itself() {
        let shutdown = Shutdown::listen();
        assert!(!shutdown.requested());
        use rustix::process::{Signal, getpid, kill_process};
        // A signal this process now handles.
        kill_process(getpid(), Signal::HUP).unwrap();
        let mut rx = shutdown.receiver();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(10), rx.wait_for(|v| *v))
                .await
                .expect("the signal arrives")
                .unwrap();
        });
        assert_eq!(shutdown.reason(), Some("SIGHUP"));
    }
}
