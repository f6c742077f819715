//! The lifecycle of one iomemory bdev, as SPDK drives it:
//!
//! ```text
//!  Active ──delete RPC / card lost──▶ Removing ──destruct──▶ Destructing ──last channel closed, detach──▶ Detached
//!     └──────────────────────── destruct (app shutdown) ─────────▲
//! ```
//!
//! - `Removing`: `spdk_bdev_unregister` has been called (once, by whoever
//!   won the transition); open channels keep serving so in-flight I/O
//!   drains.
//! - `Destructing`: SPDK called the bdev's `destruct`; no new channel may
//!   open; the card is detached once the last channel closed.
//! - `Detached`: the card was checkpointed and marked clean (or, if it was
//!   lost, left for recovery to scan at the next attach).
//!
//! Transitions are atomic compare-and-swaps, so concurrent callers (a delete
//! RPC on the app thread, a poller that sees the card go offline on a
//! reactor) agree on exactly one winner.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

use serde::Serialize;

/// Where a bdev is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum State {
    /// Registered and serving I/O.
    Active = 0,
    /// Unregistration started; in-flight I/O drains.
    Removing = 1,
    /// SPDK destructs it; waiting for channels to close.
    Destructing = 2,
    /// The card is detached.
    Detached = 3,
}

impl State {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => State::Active,
            1 => State::Removing,
            2 => State::Destructing,
            _ => State::Detached,
        }
    }
}

/// Why a bdev is being removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum RemoveReason {
    /// Not being removed.
    None = 0,
    /// `bdev_iomemory_delete`.
    Delete = 1,
    /// The card went offline (lost power, failed): hot remove.
    HotRemove = 2,
}

/// A transition that is not allowed from the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// Removal was already started (by a delete or a hot remove).
    #[error(
        "the bdev is already being removed ({0:?}); wait for it to disappear from bdev_get_bdevs"
    )]
    AlreadyRemoving(RemoveReason),
    /// No channel may open once destruction began.
    #[error("the bdev is being destroyed ({0:?}); no new I/O channel can be opened")]
    Closed(State),
    /// Detach asked for while channels are still open or before destruct.
    #[error("cannot detach the card: state {state:?} with {channels} channel(s) open")]
    NotQuiesced {
        /// Current state.
        state: State,
        /// Open channels.
        channels: usize,
    },
}

/// The state machine of one bdev. Shared by every thread that touches it.
#[derive(Debug, Default)]
pub struct Lifecycle {
    state: AtomicU8,
    reason: AtomicU8,
    channels: AtomicUsize,
    card_lost: AtomicBool,
}

impl Lifecycle {
    /// A new, active bdev.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current state.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Why it is being removed, if it is.
    pub fn reason(&self) -> RemoveReason {
        match self.reason.load(Ordering::Acquire) {
            1 => RemoveReason::Delete,
            2 => RemoveReason::HotRemove,
            _ => RemoveReason::None,
        }
    }

    /// Open I/O channels.
    pub fn channels(&self) -> usize {
        self.channels.load(Ordering::Acquire)
    }

    /// Whether the card was seen offline.
    pub fn card_lost(&self) -> bool {
        self.card_lost.load(Ordering::Acquire)
    }

    /// Starts removal. `Ok` means this caller won and must call
    /// `spdk_bdev_unregister`; anyone else gets `AlreadyRemoving`.
    pub fn begin_remove(&self, reason: RemoveReason) -> Result<(), LifecycleError> {
        match self.state.compare_exchange(
            State::Active as u8,
            State::Removing as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.reason.store(reason as u8, Ordering::Release);
                Ok(())
            }
            Err(_) => Err(LifecycleError::AlreadyRemoving(self.reason())),
        }
    }

    /// Records that the card went offline. Returns true exactly once, to
    /// the caller that must then start a hot remove (the bdev was active).
    pub fn card_went_offline(&self) -> bool {
        if self.card_lost.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.begin_remove(RemoveReason::HotRemove).is_ok()
    }

    /// Registers a new I/O channel; refused once destruction began.
    pub fn open_channel(&self) -> Result<(), LifecycleError> {
        self.channels.fetch_add(1, Ordering::AcqRel);
        let state = self.state();
        if matches!(state, State::Destructing | State::Detached) {
            self.channels.fetch_sub(1, Ordering::AcqRel);
            return Err(LifecycleError::Closed(state));
        }
        Ok(())
    }

    /// An I/O channel closed. Returns the number still open.
    pub fn close_channel(&self) -> usize {
        let before = self.channels.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "close_channel without open_channel");
        before.saturating_sub(1)
    }

    /// SPDK called `destruct` (after a removal, or at application shutdown).
    pub fn begin_destruct(&self) -> Result<(), LifecycleError> {
        loop {
            let cur = self.state.load(Ordering::Acquire);
            let state = State::from_u8(cur);
            if !matches!(state, State::Active | State::Removing) {
                return Err(LifecycleError::Closed(state));
            }
            if self
                .state
                .compare_exchange(
                    cur,
                    State::Destructing as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                return Ok(());
            }
        }
    }

    /// Checks that the card may be detached now (destructing, no channel).
    pub fn ready_to_detach(&self) -> Result<(), LifecycleError> {
        let state = self.state();
        let channels = self.channels();
        if state != State::Destructing || channels != 0 {
            return Err(LifecycleError::NotQuiesced { state, channels });
        }
        Ok(())
    }

    /// The card was detached.
    pub fn finish_detach(&self) -> Result<(), LifecycleError> {
        self.ready_to_detach()?;
        self.state.store(State::Detached as u8, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn delete_path_runs_in_order() {
        let l = Lifecycle::new();
        assert_eq!(l.state(), State::Active);
        l.open_channel().unwrap();
        l.begin_remove(RemoveReason::Delete).unwrap();
        assert_eq!(
            (l.state(), l.reason()),
            (State::Removing, RemoveReason::Delete)
        );
        // Channels may still open while draining (existing descriptors).
        l.open_channel().unwrap();
        assert_eq!(l.channels(), 2);
        l.begin_destruct().unwrap();
        assert_eq!(
            l.open_channel(),
            Err(LifecycleError::Closed(State::Destructing))
        );
        assert_eq!(l.channels(), 2);
        assert!(matches!(
            l.finish_detach(),
            Err(LifecycleError::NotQuiesced { channels: 2, .. })
        ));
        assert_eq!(l.close_channel(), 1);
        assert_eq!(l.close_channel(), 0);
        l.finish_detach().unwrap();
        assert_eq!(l.state(), State::Detached);
        assert_eq!(
            l.begin_destruct(),
            Err(LifecycleError::Closed(State::Detached))
        );
    }

    #[test]
    fn shutdown_destructs_an_active_bdev_directly() {
        let l = Lifecycle::new();
        l.begin_destruct().unwrap();
        assert_eq!(l.reason(), RemoveReason::None);
        assert_eq!(
            l.begin_remove(RemoveReason::Delete),
            Err(LifecycleError::AlreadyRemoving(RemoveReason::None))
        );
        l.finish_detach().unwrap();
    }

    #[test]
    fn second_delete_is_refused_with_the_first_reason() {
        let l = Lifecycle::new();
        assert!(l.card_went_offline());
        assert!(l.card_lost());
        assert!(!l.card_went_offline());
        assert_eq!(
            l.begin_remove(RemoveReason::Delete),
            Err(LifecycleError::AlreadyRemoving(RemoveReason::HotRemove))
        );
    }

    #[test]
    fn card_loss_after_delete_does_not_unregister_twice() {
        let l = Lifecycle::new();
        l.begin_remove(RemoveReason::Delete).unwrap();
        assert!(!l.card_went_offline());
        assert!(l.card_lost());
        assert_eq!(l.reason(), RemoveReason::Delete);
    }

    #[test]
    fn exactly_one_of_many_racing_removers_wins() {
        let l = Arc::new(Lifecycle::new());
        let winners: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let l = l.clone();
                    s.spawn(move || {
                        if i % 2 == 0 {
                            l.begin_remove(RemoveReason::Delete).is_ok() as usize
                        } else {
                            l.card_went_offline() as usize
                        }
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(winners, 1);
        assert_eq!(l.state(), State::Removing);
    }
}
