//! The emulated card: the device side of the raw-flash protocol. The NAND
//! array (flash rules, physics, persistence) lives here; the controller
//! (registers, queues, command decoding) sits on top of it.

mod image;
mod nand;
mod physics;
mod profile;
mod seqlock;

pub use image::{EmuError, HEADER_LEN, IMAGE_MAGIC, IMAGE_VERSION};
pub use nand::{
    Backing, BadReason, BlockInfo, BlockState, NandArray, NandConfig, NandCounters, NandError, PageRead,
    WRITE_BUFFER_PAGES_PER_DIE,
};
pub use physics::{is_factory_bad, PhysicsParams};
pub use profile::{iodrive2_config, small_test_config};

mod controller;
mod timing;

pub use controller::{EmuController, EmuOptions, MAX_IO_QUEUES, MAX_QUEUE_ENTRIES};
pub use timing::{DieClocks, NandOp, TimingProfile};
