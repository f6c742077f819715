//! The card's raw-flash command set: geometry, identity, health, and the
//! I/O commands on physical page addresses, carried over NVMe-style queues.

mod geometry;
mod identity;

pub use geometry::{Geometry, Ppa};
pub use identity::CardIdentity;
