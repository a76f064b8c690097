//! Graceful shutdown: a phase every listener and connection watches, and a count of the
//! connections still open so the proxy knows when it may exit.

use tokio::sync::{mpsc, watch};

/// Where the proxy is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    /// Readiness is false and the removal is propagating; new connections are still served.
    Draining,
    /// Listeners are closed; connections finish what they have in flight and close.
    Closing,
}

/// Owned by the proxy's run loop: moves the phase forward and waits for connections to end.
pub struct Drain {
    phase: watch::Sender<Phase>,
    open_tx: mpsc::Sender<()>,
    open_rx: mpsc::Receiver<()>,
}

/// Held by each listener and connection. Dropping it says "this one is done".
#[derive(Clone)]
pub struct Watch {
    phase: watch::Receiver<Phase>,
    _open: mpsc::Sender<()>,
}

impl Drain {
    pub fn new() -> Self {
        let (phase, _) = watch::channel(Phase::Serving);
        let (open_tx, open_rx) = mpsc::channel(1);
        Self { phase, open_tx, open_rx }
    }

    pub fn watch(&self) -> Watch {
        Watch { phase: self.phase.subscribe(), _open: self.open_tx.clone() }
    }

    /// A handle that can start a drain from elsewhere (the admin endpoint).
    pub fn trigger(&self) -> Trigger {
        Trigger(self.phase.clone())
    }

    /// Resolves once someone asked to drain through a [`Trigger`].
    pub async fn requested(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p >= Phase::Draining).await;
    }

    pub fn advance(&self, to: Phase) {
        self.phase.send_if_modified(|p| {
            let moved = to > *p;
            if moved {
                *p = to;
            }
            moved
        });
    }

    /// Waits until every [`Watch`] has been dropped.
    pub async fn closed(mut self) {
        drop(self.open_tx);
        let _ = self.open_rx.recv().await;
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Watch {
    /// Resolves when the proxy reaches `phase` (at once if it already has).
    pub async fn reached(&mut self, phase: Phase) {
        let _ = self.phase.wait_for(|p| *p >= phase).await;
    }
}

/// Starts a drain; used by `POST /drain`.
#[derive(Clone)]
pub struct Trigger(watch::Sender<Phase>);

impl Trigger {
    pub fn drain(&self) {
        self.0.send_if_modified(|p| {
            let moved = *p == Phase::Serving;
            if moved {
                *p = Phase::Draining;
            }
            moved
        });
    }

    pub fn is_draining(&self) -> bool {
        *self.0.borrow() != Phase::Serving
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_waits_for_every_watch() {
        let drain = Drain::new();
        let mut w = drain.watch();
        let t = drain.trigger();
        t.drain();
        assert!(t.is_draining());
        w.reached(Phase::Draining).await;
        drain.advance(Phase::Closing);
        let done = tokio::spawn(drain.closed());
        tokio::task::yield_now().await;
        assert!(!done.is_finished(), "a watch is still held");
        drop(w);
        done.await.unwrap();
    }
}
