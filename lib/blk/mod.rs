//! The block API every frontend uses: open a card as a block device, give
//! each thread its own I/O channel, submit, poll, complete.
//!
//! SPDK's model: a [`BlockDevice`] is shared; an [`IoChannel`] belongs to
//! one thread (its own card queue pair and append points) and is never
//! shared. Submission and completion take no lock, allocate nothing and
//! make no syscall. A full queue is [`SubmitError::QueueFull`] (retry after
//! polling, like SPDK's `-ENOMEM`); bad input is an error at submit.
//!
//! ```no_run
//! use iomemory::blk::{BlockDevice, OpenOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = BlockDevice::open("card.img".as_ref(), &OpenOptions::default(), &mut |_, _| {})?;
//! let mut ch = dev.channel()?;
//! let buf = dev.alloc_buffer(4096)?;
//! // SAFETY: `buf` outlives the write and is untouched until it completes.
//! ch.write(0, &[unsafe { buf.iovec() }], 1)?;
//! let mut done = false;
//! while !done {
//!     ch.poll(&mut |ctx, result| { assert_eq!(ctx, 1); result.unwrap(); done = true; });
//! }
//! # Ok(()) }
//! ```

mod buffer;
mod device;
mod reactor;

pub use buffer::IoBuffer;
pub use device::{BlkError, BlockDevice, Capabilities, OpenOptions};
pub use reactor::{pin_to_core, spawn_reactors, PollGroup, PollStatus, Poller};
pub use crate::vsl::{IoError, IoVec, SubmitError, VslChannel as IoChannel};
