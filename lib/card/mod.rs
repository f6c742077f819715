//! The card's raw-flash command set: geometry, identity, health, and the
//! I/O commands on physical page addresses, carried over NVMe-style queues.

mod client;
mod geometry;
mod identity;
pub mod protocol;

pub use client::{Card, CardError, CardQueue, Completion, SubmitError};
pub use geometry::{Geometry, Ppa};
pub use identity::CardIdentity;
pub use protocol::{BadBlockReason, BlockInfoEntry, BlockStateCode, CardStatus, Column, HealthLog, IdentifyData};
