//! Translation of an SPDK `spdk_bdev_io` (as the shim describes it in an
//! [`IoDesc`]) into one block-channel operation, and of the outcome back
//! into a bdev I/O status.

use iomemory::blk::{IoError, SubmitError};

/// `enum spdk_bdev_io_type` values of SPDK v26.05 (`include/spdk/bdev.h`).
/// The shim `_Static_assert`s each one against the headers it is built with.
pub mod spdk_io_type {
    /// `SPDK_BDEV_IO_TYPE_READ`
    pub const READ: u32 = 1;
    /// `SPDK_BDEV_IO_TYPE_WRITE`
    pub const WRITE: u32 = 2;
    /// `SPDK_BDEV_IO_TYPE_UNMAP`
    pub const UNMAP: u32 = 3;
    /// `SPDK_BDEV_IO_TYPE_FLUSH`
    pub const FLUSH: u32 = 4;
    /// `SPDK_BDEV_IO_TYPE_RESET`
    pub const RESET: u32 = 5;
    /// `SPDK_BDEV_IO_TYPE_WRITE_ZEROES`
    pub const WRITE_ZEROES: u32 = 9;
}

/// The bdev I/O types this module serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdevIoType {
    /// Read into the request's buffers.
    Read,
    /// Write from the request's buffers.
    Write,
    /// Deallocate (TRIM); reads return zeroes afterwards.
    Unmap,
    /// Make every earlier acknowledged write durable.
    Flush,
    /// Complete once every earlier request on the channel has completed.
    Reset,
    /// Zero a range (done as an unmap: zeroed blocks cost no flash).
    WriteZeroes,
}

impl BdevIoType {
    /// Maps an `enum spdk_bdev_io_type` value; `None` for types not served.
    pub fn from_spdk(raw: u32) -> Option<Self> {
        Some(match raw {
            spdk_io_type::READ => Self::Read,
            spdk_io_type::WRITE => Self::Write,
            spdk_io_type::UNMAP => Self::Unmap,
            spdk_io_type::FLUSH => Self::Flush,
            spdk_io_type::RESET => Self::Reset,
            spdk_io_type::WRITE_ZEROES => Self::WriteZeroes,
            _ => return None,
        })
    }

    /// What `io_type_supported` answers: exactly the types served.
    pub fn supported(raw: u32) -> bool {
        Self::from_spdk(raw).is_some()
    }
}

/// One bdev I/O as the C shim hands it over (`struct iomem_rs_io` in
/// `csrc/iomemory_rs.h`; sizes asserted on both sides).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IoDesc {
    /// `sizeof(struct iomem_rs_io)`, so a mismatched shim is refused.
    pub size: u32,
    /// `enum spdk_bdev_io_type` value.
    pub io_type: u32,
    /// First block.
    pub offset_blocks: u64,
    /// Number of blocks.
    pub num_blocks: u64,
    /// Data buffers (read/write only).
    pub iovs: *const libc::iovec,
    /// Number of entries in `iovs`.
    pub iovcnt: u32,
    /// Zero.
    pub reserved: u32,
    /// Opaque to Rust: handed back with the completion (the `spdk_bdev_io`).
    pub token: u64,
}

const _: () = assert!(std::mem::size_of::<IoDesc>() == 48);

/// Completion status of a bdev I/O (`enum iomem_rs_status` in the header).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStatus {
    /// `SPDK_BDEV_IO_STATUS_SUCCESS`.
    Success = 0,
    /// `SPDK_BDEV_IO_STATUS_FAILED`.
    Failed = 1,
    /// `SPDK_BDEV_IO_STATUS_NOMEM`: SPDK queues the request and resubmits it
    /// after some I/O on the channel completed.
    NoMem = 2,
}

impl IoStatus {
    /// The status for a submission the channel refused: retryable refusals
    /// (queue full, groomer busy) become NOMEM, anything else FAILED.
    pub fn from_submit_error(e: &SubmitError) -> Self {
        if e.is_retryable() {
            IoStatus::NoMem
        } else {
            IoStatus::Failed
        }
    }

    /// The status for a completion.
    pub fn from_result(r: &Result<(), IoError>) -> Self {
        match r {
            Ok(()) => IoStatus::Success,
            Err(_) => IoStatus::Failed,
        }
    }
}

/// Why a request could not be turned into a channel operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// The shim was built from a different header.
    #[error("request descriptor of {0} bytes does not match this library's 48; rebuild the shim and library together")]
    AbiMismatch(u32),
    /// An I/O type this module does not serve.
    #[error("I/O type {0} is not supported by the iomemory bdev (io_type_supported said so)")]
    Unsupported(u32),
    /// A read or write of zero blocks, or without buffers.
    #[error("{0}")]
    Malformed(&'static str),
    /// Buffers and block count disagree.
    #[error("buffers hold {bytes} bytes but {blocks} blocks of {block_size} bytes were asked for")]
    LengthMismatch {
        /// Total buffer bytes.
        bytes: u64,
        /// Blocks requested.
        blocks: u64,
        /// Block size.
        block_size: u32,
    },
    /// The range is beyond the device.
    #[error("blocks {offset}+{count} are beyond the device's {capacity} blocks")]
    OutOfRange {
        /// First block.
        offset: u64,
        /// Count.
        count: u64,
        /// Device size in blocks.
        capacity: u64,
    },
}

/// A request, validated and ready for the channel.
#[derive(Debug, Clone, Copy)]
pub enum Op<'a> {
    /// Read `count` blocks at `lba` into `iovs`.
    Read {
        /// First block.
        lba: u64,
        /// Blocks.
        count: u64,
        /// Destination buffers, in order.
        iovs: &'a [libc::iovec],
    },
    /// Write `count` blocks at `lba` from `iovs`.
    Write {
        /// First block.
        lba: u64,
        /// Blocks.
        count: u64,
        /// Source buffers, in order.
        iovs: &'a [libc::iovec],
    },
    /// Unmap `count` blocks at `lba`.
    Unmap {
        /// First block.
        lba: u64,
        /// Blocks.
        count: u64,
    },
    /// Zero `count` blocks at `lba`.
    WriteZeroes {
        /// First block.
        lba: u64,
        /// Blocks.
        count: u64,
    },
    /// Flush the whole device.
    Flush,
    /// Barrier: complete after every earlier request on the channel.
    Reset,
}

/// Turns a descriptor into an operation on a device of `num_blocks` blocks
/// of `block_size` bytes.
///
/// # Safety
/// `desc.iovs` must point to `desc.iovcnt` valid `iovec`s (or be null with
/// `iovcnt == 0`), alive for `'a`.
pub unsafe fn translate<'a>(
    desc: &IoDesc,
    block_size: u32,
    num_blocks: u64,
) -> Result<Op<'a>, TranslateError> {
    if desc.size as usize != std::mem::size_of::<IoDesc>() {
        return Err(TranslateError::AbiMismatch(desc.size));
    }
    let kind =
        BdevIoType::from_spdk(desc.io_type).ok_or(TranslateError::Unsupported(desc.io_type))?;
    let (lba, count) = (desc.offset_blocks, desc.num_blocks);
    let check_range = || {
        if count == 0 {
            return Err(TranslateError::Malformed("a request of zero blocks"));
        }
        match lba.checked_add(count) {
            Some(end) if end <= num_blocks => Ok(()),
            _ => Err(TranslateError::OutOfRange {
                offset: lba,
                count,
                capacity: num_blocks,
            }),
        }
    };
    let buffers = || -> Result<&'a [libc::iovec], TranslateError> {
        if desc.iovs.is_null() || desc.iovcnt == 0 {
            return Err(TranslateError::Malformed(
                "a read or write without data buffers",
            ));
        }
        // SAFETY: the caller guarantees `iovs` points to `iovcnt` valid
        // iovecs that outlive 'a.
        let iovs = unsafe { std::slice::from_raw_parts(desc.iovs, desc.iovcnt as usize) };
        let bytes: u64 = iovs.iter().map(|v| v.iov_len as u64).sum();
        if count.checked_mul(block_size as u64) != Some(bytes) {
            return Err(TranslateError::LengthMismatch {
                bytes,
                blocks: count,
                block_size,
            });
        }
        if iovs.iter().any(|v| v.iov_len > 0 && v.iov_base.is_null()) {
            return Err(TranslateError::Malformed(
                "a data buffer with a null address",
            ));
        }
        Ok(iovs)
    };
    Ok(match kind {
        BdevIoType::Read => {
            check_range()?;
            Op::Read {
                lba,
                count,
                iovs: buffers()?,
            }
        }
        BdevIoType::Write => {
            check_range()?;
            Op::Write {
                lba,
                count,
                iovs: buffers()?,
            }
        }
        BdevIoType::Unmap => {
            check_range()?;
            Op::Unmap { lba, count }
        }
        BdevIoType::WriteZeroes => {
            check_range()?;
            Op::WriteZeroes { lba, count }
        }
        BdevIoType::Flush => Op::Flush,
        BdevIoType::Reset => Op::Reset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(io_type: u32, offset: u64, blocks: u64, iovs: &[libc::iovec]) -> IoDesc {
        IoDesc {
            size: 48,
            io_type,
            offset_blocks: offset,
            num_blocks: blocks,
            iovs: if iovs.is_empty() {
                std::ptr::null()
            } else {
                iovs.as_ptr()
            },
            iovcnt: iovs.len() as u32,
            reserved: 0,
            token: 0xdead,
        }
    }

    /// Translates a descriptor these tests built for a 100-block device of
    /// 4 KiB blocks.
    fn tr(d: &IoDesc) -> Result<Op<'_>, TranslateError> {
        // SAFETY: every test builds `d` from iovecs (or none) that outlive
        // the returned op.
        unsafe { translate(d, 4096, 100) }
    }

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    #[test]
    fn supported_types_are_exactly_the_served_ones() {
        for t in 0..32u32 {
            let expected = matches!(t, 1..=5 | 9);
            assert_eq!(BdevIoType::supported(t), expected, "type {t}");
        }
    }

    #[test]
    fn reads_and_writes_carry_their_buffers() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 8192];
        let iovs = [iov(&mut a), iov(&mut b)];
        let d = desc(spdk_io_type::WRITE, 10, 3, &iovs);
        // SAFETY: `iovs` outlives the translated op.
        let op = tr(&d).unwrap();
        match op {
            Op::Write {
                lba,
                count,
                iovs: got,
            } => {
                assert_eq!((lba, count), (10, 3));
                assert_eq!(got.len(), 2);
                assert_eq!(got[1].iov_len, 8192);
            }
            other => panic!("{other:?}"),
        }
        let d = desc(spdk_io_type::READ, 97, 3, &iovs);
        assert!(matches!(
            tr(&d),
            Ok(Op::Read {
                lba: 97,
                count: 3,
                ..
            })
        ));
    }

    #[test]
    fn length_and_range_errors_are_reported_not_submitted() {
        let mut a = vec![0u8; 4096];
        let iovs = [iov(&mut a)];
        let d = desc(spdk_io_type::WRITE, 0, 2, &iovs);
        // SAFETY: `iovs` outlives the call.
        let err = tr(&d).unwrap_err();
        assert_eq!(
            err,
            TranslateError::LengthMismatch {
                bytes: 4096,
                blocks: 2,
                block_size: 4096
            }
        );
        let d = desc(spdk_io_type::READ, 100, 1, &iovs);
        assert!(matches!(tr(&d), Err(TranslateError::OutOfRange { .. })));
        let d = desc(spdk_io_type::UNMAP, u64::MAX, 2, &[]);
        assert!(matches!(tr(&d), Err(TranslateError::OutOfRange { .. })));
        let d = desc(spdk_io_type::WRITE_ZEROES, 5, 0, &[]);
        assert!(matches!(tr(&d), Err(TranslateError::Malformed(_))));
        let d = desc(spdk_io_type::READ, 5, 1, &[]);
        assert!(matches!(tr(&d), Err(TranslateError::Malformed(_))));
        let null = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 4096,
        }];
        let d = desc(spdk_io_type::READ, 5, 1, &null);
        assert!(matches!(tr(&d), Err(TranslateError::Malformed(_))));
    }

    #[test]
    fn non_data_ops_and_unknown_types() {
        // SAFETY: no iovecs in any of these.
        unsafe {
            assert!(matches!(
                translate(&desc(spdk_io_type::UNMAP, 4, 8, &[]), 512, 100),
                Ok(Op::Unmap { lba: 4, count: 8 })
            ));
            assert!(matches!(
                translate(&desc(spdk_io_type::WRITE_ZEROES, 0, 100, &[]), 512, 100),
                Ok(Op::WriteZeroes { lba: 0, count: 100 })
            ));
            assert!(matches!(
                translate(&desc(spdk_io_type::FLUSH, 0, 0, &[]), 512, 100),
                Ok(Op::Flush)
            ));
            assert!(matches!(
                translate(&desc(spdk_io_type::RESET, 0, 0, &[]), 512, 100),
                Ok(Op::Reset)
            ));
            assert_eq!(
                translate(&desc(16, 0, 1, &[]), 512, 100).unwrap_err(),
                TranslateError::Unsupported(16)
            );
            let mut bad = desc(spdk_io_type::FLUSH, 0, 0, &[]);
            bad.size = 40;
            assert_eq!(
                translate(&bad, 512, 100).unwrap_err(),
                TranslateError::AbiMismatch(40)
            );
        }
    }

    #[test]
    fn statuses_map_retryable_refusals_to_nomem() {
        assert_eq!(
            IoStatus::from_submit_error(&SubmitError::QueueFull),
            IoStatus::NoMem
        );
        assert_eq!(
            IoStatus::from_submit_error(&SubmitError::Busy),
            IoStatus::NoMem
        );
        assert_eq!(
            IoStatus::from_submit_error(&SubmitError::Offline),
            IoStatus::Failed
        );
        assert_eq!(
            IoStatus::from_submit_error(&SubmitError::ReadOnly),
            IoStatus::Failed
        );
        assert_eq!(IoStatus::from_result(&Ok(())), IoStatus::Success);
        assert_eq!(
            IoStatus::from_result(&Err(IoError::PowerLost)),
            IoStatus::Failed
        );
    }
}
