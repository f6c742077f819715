//! Namespaces and validated NVM/ZNS commands on a queue pair.
//!
//! [`submit`] checks a command against the namespace (range, transfer
//! size, zone rules) before anything reaches the submission ring, so bad
//! input is an error that changes nothing. The doorbell is the caller's:
//! place a batch, then [`QueuePair::ring`] once.

use std::time::{Duration, Instant};

use super::command::{self, LbaRange, ZoneAction, MAX_PRP_TRANSFER};
use super::identify::{
    identify_namespace, identify_zoned_controller, identify_zoned_namespace, namespace_csi,
    IdentifyController,
};
use super::{csi, opcode, NvmError};
use crate::nvme::spec::{CompletionEntry, SubmissionEntry};
use crate::nvme::{Controller, NvmeError, QueuePair, Scratch, SubmitFailure};

/// Zone layout of a zoned namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ZoneGeometry {
    /// Blocks per zone (zone starts are multiples of this).
    pub zone_size: u64,
    /// Number of zones.
    pub zone_count: u64,
    /// Largest Zone Append in bytes (ZASL, else the transfer limit).
    pub max_append: u64,
}

/// What a command needs to know about its namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Namespace {
    /// Namespace id.
    pub nsid: u32,
    /// Command set (0 NVM, 2 zoned).
    pub csi: u8,
    /// Bytes per logical block.
    pub block_size: u32,
    /// Size in blocks.
    pub blocks: u64,
    /// Metadata bytes per block in the current format.
    pub metadata_size: u16,
    /// Deallocated blocks read back as zeroes.
    pub deallocate_reads_zeroes: bool,
    /// Largest data transfer of one command, in bytes.
    pub max_transfer: u64,
    /// Zone layout, for zoned namespaces.
    pub zones: Option<ZoneGeometry>,
}

impl Namespace {
    /// Identifies namespace `nsid` of `ctrl` (NVM fields, command set, and
    /// for a zoned namespace its zone layout).
    pub fn probe(ctrl: &Controller, id: &IdentifyController, nsid: u32) -> Result<Self, NvmError> {
        let ns = identify_namespace(ctrl, nsid)?;
        if ns.nsze == 0 {
            return Err(NvmError::NoSuchNamespace {
                nsid,
                active: super::identify::active_namespaces(ctrl)?,
            });
        }
        let csi = namespace_csi(ctrl, nsid)?;
        let max_transfer = id.max_transfer().unwrap_or(u64::MAX).min(MAX_PRP_TRANSFER);
        let zones = if csi == csi::ZONED {
            let z = identify_zoned_namespace(ctrl, nsid, ns.formats.len())?;
            let zone_size = z
                .zone_sizes
                .get(ns.format_index as usize)
                .copied()
                .unwrap_or(0);
            if zone_size == 0 {
                return Err(NvmError::Nvme(NvmeError::Protocol(
                    "a zoned namespace reports a zone size of 0 for its LBA format",
                )));
            }
            let zasl = identify_zoned_controller(ctrl)?.zasl;
            let max_append = if zasl == 0 {
                max_transfer
            } else {
                (4096u64 << zasl.min(32)).min(max_transfer)
            };
            Some(ZoneGeometry {
                zone_size,
                zone_count: ns.nsze / zone_size,
                max_append,
            })
        } else {
            None
        };
        Ok(Self {
            nsid,
            csi,
            block_size: ns.format.block_size,
            blocks: ns.nsze,
            metadata_size: ns.format.metadata_size,
            deallocate_reads_zeroes: ns.deallocate_reads_zeroes,
            max_transfer,
            zones,
        })
    }

    /// Size in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.block_size))
    }

    /// Largest block count of one read or write.
    pub fn max_blocks_per_command(&self) -> u64 {
        (self.max_transfer / u64::from(self.block_size.max(1))).clamp(1, 1 << 16)
    }

    fn check_range(&self, slba: u64, blocks: u64) -> Result<(), NvmError> {
        match slba.checked_add(blocks) {
            Some(end) if blocks > 0 && end <= self.blocks => Ok(()),
            _ if blocks == 0 => Err(NvmError::Empty),
            _ => Err(NvmError::LbaOutOfRange {
                nsid: self.nsid,
                slba,
                blocks,
                capacity: self.blocks,
            }),
        }
    }

    fn check_transfer(&self, blocks: u64, max: u64) -> Result<u64, NvmError> {
        let bytes = blocks.saturating_mul(u64::from(self.block_size));
        if bytes > max {
            return Err(NvmError::TransferTooLarge { bytes, max });
        }
        Ok(bytes)
    }

    fn zone_geometry(&self) -> Result<ZoneGeometry, NvmError> {
        self.zones.ok_or(NvmError::NotZoned {
            nsid: self.nsid,
            csi: self.csi,
        })
    }

    fn check_zone_start(&self, zslba: u64) -> Result<ZoneGeometry, NvmError> {
        let z = self.zone_geometry()?;
        if !zslba.is_multiple_of(z.zone_size) || zslba >= self.blocks {
            return Err(NvmError::NotZoneStart {
                slba: zslba,
                zone_size: z.zone_size,
            });
        }
        Ok(z)
    }
}

/// One NVM or ZNS command. Buffers are IOVAs of DMA memory mapped for the
/// device (a [`DmaPool`](crate::dma::DmaPool) buffer of the controller's
/// space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvmCommand<'a> {
    /// Read `blocks` blocks at `slba` into the buffer at `iova`.
    Read {
        /// First LBA.
        slba: u64,
        /// Block count.
        blocks: u64,
        /// Buffer.
        iova: u64,
    },
    /// Write `blocks` blocks at `slba` from the buffer at `iova`.
    Write {
        /// First LBA.
        slba: u64,
        /// Block count.
        blocks: u64,
        /// Buffer.
        iova: u64,
    },
    /// Flush the volatile write cache.
    Flush,
    /// Deallocate (trim) the ranges.
    Deallocate {
        /// Ranges, at most [`MAX_DSM_RANGES`](super::MAX_DSM_RANGES).
        ranges: &'a [LbaRange],
    },
    /// Append to the zone starting at `zslba`; the completion carries the
    /// LBA written (see [`appended_lba`]).
    ZoneAppend {
        /// Zone start.
        zslba: u64,
        /// Block count.
        blocks: u64,
        /// Buffer.
        iova: u64,
    },
    /// Zone Management Send: reset, open, close, finish, offline.
    ZoneSend {
        /// Zone start (ignored with `all`).
        zslba: u64,
        /// The action.
        action: ZoneAction,
        /// Apply to every zone.
        all: bool,
    },
    /// Report zones from `slba` into the buffer at `iova` of `len` bytes.
    ReportZones {
        /// First LBA of interest.
        slba: u64,
        /// Buffer.
        iova: u64,
        /// Buffer length (at least 64, a multiple of 4).
        len: u64,
    },
}

impl NvmCommand<'_> {
    /// Name for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Read { .. } => "read",
            Self::Write { .. } => "write",
            Self::Flush => "flush",
            Self::Deallocate { .. } => "dataset management (deallocate)",
            Self::ZoneAppend { .. } => "zone append",
            Self::ZoneSend { .. } => "zone management send",
            Self::ReportZones { .. } => "zone management receive (report zones)",
        }
    }

    /// Checks the command against `ns` without building it.
    pub fn validate(&self, ns: &Namespace) -> Result<(), NvmError> {
        match *self {
            Self::Read { slba, blocks, .. } | Self::Write { slba, blocks, .. } => {
                ns.check_range(slba, blocks)?;
                ns.check_transfer(blocks, ns.max_transfer).map(|_| ())
            }
            Self::Flush => Ok(()),
            Self::Deallocate { ranges } => {
                if ranges.len() > super::MAX_DSM_RANGES {
                    return Err(NvmError::TooManyRanges {
                        count: ranges.len(),
                        max: super::MAX_DSM_RANGES,
                    });
                }
                if ranges.is_empty() {
                    return Err(NvmError::Empty);
                }
                ranges
                    .iter()
                    .try_for_each(|r| ns.check_range(r.slba, u64::from(r.blocks)))
            }
            Self::ZoneAppend { zslba, blocks, .. } => {
                let z = ns.check_zone_start(zslba)?;
                if blocks > z.zone_size {
                    return Err(NvmError::LbaOutOfRange {
                        nsid: ns.nsid,
                        slba: zslba,
                        blocks,
                        capacity: ns.blocks,
                    });
                }
                ns.check_range(zslba, blocks)?;
                ns.check_transfer(blocks, z.max_append).map(|_| ())
            }
            Self::ZoneSend { zslba, all, .. } => {
                if all {
                    ns.zone_geometry().map(|_| ())
                } else {
                    ns.check_zone_start(zslba).map(|_| ())
                }
            }
            Self::ReportZones { slba, len, .. } => {
                ns.zone_geometry()?;
                ns.check_range(slba, 1)?;
                if len > ns.max_transfer {
                    return Err(NvmError::TransferTooLarge {
                        bytes: len,
                        max: ns.max_transfer,
                    });
                }
                Ok(())
            }
        }
    }

    /// Encodes the command, writing PRP or range lists into `scratch`.
    fn build(&self, ns: &Namespace, scratch: &Scratch) -> Result<SubmissionEntry, NvmError> {
        let bs = u64::from(ns.block_size);
        match *self {
            Self::Read { slba, blocks, iova } => {
                let prps = command::build_prps(iova, blocks * bs, scratch)?;
                command::read_write(opcode::READ, ns.nsid, slba, blocks, prps)
            }
            Self::Write { slba, blocks, iova } => {
                let prps = command::build_prps(iova, blocks * bs, scratch)?;
                command::read_write(opcode::WRITE, ns.nsid, slba, blocks, prps)
            }
            Self::Flush => Ok(command::flush(ns.nsid)),
            Self::Deallocate { ranges } => {
                let list = command::write_dsm_ranges(scratch, ranges)?;
                command::deallocate(ns.nsid, list, ranges.len())
            }
            Self::ZoneAppend {
                zslba,
                blocks,
                iova,
            } => {
                let prps = command::build_prps(iova, blocks * bs, scratch)?;
                command::zone_append(ns.nsid, zslba, blocks, prps)
            }
            Self::ZoneSend { zslba, action, all } => Ok(command::zone_send(
                ns.nsid,
                if all { 0 } else { zslba },
                action,
                all,
            )),
            Self::ReportZones { slba, iova, len } => {
                let prps = command::build_prps(iova, len, scratch)?;
                command::report_zones(ns.nsid, slba, prps, len)
            }
        }
    }
}

/// The LBA a Zone Append wrote, from its completion (dwords 0-1).
pub fn appended_lba(cqe: &CompletionEntry) -> u64 {
    u64::from(cqe.dw0) | (u64::from(cqe.dw1) << 32)
}

/// Validates `cmd` and places it in `qp`'s submission ring with `tag`
/// (returned with its completion). Does not ring the doorbell.
pub fn submit(
    qp: &mut QueuePair,
    ns: &Namespace,
    cmd: &NvmCommand<'_>,
    tag: u64,
) -> Result<u16, NvmError> {
    cmd.validate(ns)?;
    qp.submit_with(tag, |_, scratch| cmd.build(ns, &scratch))
        .map_err(|e| match e {
            SubmitFailure::Full => NvmError::QueueFull,
            SubmitFailure::Build(e) => e,
        })
}

/// Runs one command to completion on an idle queue: submit, ring, poll
/// until it completes or `timeout` passes. A failed status is an error.
pub fn execute(
    qp: &mut QueuePair,
    ns: &Namespace,
    cmd: &NvmCommand<'_>,
    timeout: Duration,
) -> Result<CompletionEntry, NvmError> {
    if qp.outstanding() > 0 {
        return Err(NvmError::QueueBusy {
            qid: qp.qid(),
            outstanding: qp.outstanding(),
        });
    }
    submit(qp, ns, cmd, 0)?;
    qp.ring();
    let deadline = Instant::now() + timeout;
    let mut done = None;
    while done.is_none() {
        qp.poll(1, |_, cqe| done = Some(*cqe));
        if done.is_none() {
            if Instant::now() > deadline {
                return Err(NvmError::Nvme(NvmeError::Timeout("an NVM I/O command")));
            }
            std::hint::spin_loop();
        }
    }
    let cqe = done.unwrap_or_default();
    if !cqe.is_success() {
        return Err(NvmError::CommandFailed {
            what: cmd.name(),
            status: cqe.status_code(),
        });
    }
    Ok(cqe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conventional() -> Namespace {
        Namespace {
            nsid: 1,
            csi: csi::NVM,
            block_size: 512,
            blocks: 1000,
            metadata_size: 0,
            deallocate_reads_zeroes: true,
            max_transfer: 128 * 1024,
            zones: None,
        }
    }

    fn zoned() -> Namespace {
        Namespace {
            nsid: 2,
            csi: csi::ZONED,
            block_size: 4096,
            blocks: 64,
            metadata_size: 0,
            deallocate_reads_zeroes: false,
            max_transfer: 128 * 1024,
            zones: Some(ZoneGeometry {
                zone_size: 16,
                zone_count: 4,
                max_append: 32 * 1024,
            }),
        }
    }

    #[test]
    fn ranges_and_transfer_sizes_are_checked_before_submission() {
        let ns = conventional();
        let ok = NvmCommand::Read {
            slba: 990,
            blocks: 10,
            iova: 0x1000,
        };
        ok.validate(&ns).unwrap();
        let past_end = NvmCommand::Write {
            slba: 995,
            blocks: 10,
            iova: 0x1000,
        };
        assert!(matches!(
            past_end.validate(&ns),
            Err(NvmError::LbaOutOfRange { .. })
        ));
        let overflow = NvmCommand::Read {
            slba: u64::MAX,
            blocks: 2,
            iova: 0x1000,
        };
        assert!(matches!(
            overflow.validate(&ns),
            Err(NvmError::LbaOutOfRange { .. })
        ));
        let too_big = NvmCommand::Read {
            slba: 0,
            blocks: 257,
            iova: 0x1000,
        };
        assert!(matches!(
            too_big.validate(&ns),
            Err(NvmError::TransferTooLarge {
                bytes: 131_584,
                max: 131_072
            })
        ));
        let none = NvmCommand::Read {
            slba: 0,
            blocks: 0,
            iova: 0x1000,
        };
        assert!(matches!(none.validate(&ns), Err(NvmError::Empty)));
        assert_eq!(ns.max_blocks_per_command(), 256);
        assert_eq!(ns.capacity_bytes(), 512_000);
        let ranges = [
            LbaRange { slba: 0, blocks: 8 },
            LbaRange {
                slba: 999,
                blocks: 2,
            },
        ];
        assert!(NvmCommand::Deallocate { ranges: &ranges }
            .validate(&ns)
            .is_err());
        NvmCommand::Deallocate {
            ranges: &ranges[..1],
        }
        .validate(&ns)
        .unwrap();
    }

    #[test]
    fn zone_commands_need_a_zoned_namespace_and_zone_starts() {
        let conv = conventional();
        let append = NvmCommand::ZoneAppend {
            zslba: 0,
            blocks: 1,
            iova: 0x1000,
        };
        let err = append.validate(&conv).unwrap_err();
        assert!(
            matches!(err, NvmError::NotZoned { nsid: 1, csi: 0 }),
            "{err}"
        );
        let reset_all = NvmCommand::ZoneSend {
            zslba: 0,
            action: ZoneAction::Reset,
            all: true,
        };
        assert!(reset_all.validate(&conv).is_err());

        let zns = zoned();
        append.validate(&zns).unwrap();
        reset_all.validate(&zns).unwrap();
        let mid_zone = NvmCommand::ZoneAppend {
            zslba: 3,
            blocks: 1,
            iova: 0x1000,
        };
        assert!(matches!(
            mid_zone.validate(&zns),
            Err(NvmError::NotZoneStart {
                slba: 3,
                zone_size: 16
            })
        ));
        let over_zasl = NvmCommand::ZoneAppend {
            zslba: 16,
            blocks: 9,
            iova: 0x1000,
        };
        assert!(matches!(
            over_zasl.validate(&zns),
            Err(NvmError::TransferTooLarge { .. })
        ));
        let reset_one = NvmCommand::ZoneSend {
            zslba: 48,
            action: ZoneAction::Reset,
            all: false,
        };
        reset_one.validate(&zns).unwrap();
        let past = NvmCommand::ZoneSend {
            zslba: 64,
            action: ZoneAction::Reset,
            all: false,
        };
        assert!(past.validate(&zns).is_err());
        let report = NvmCommand::ReportZones {
            slba: 0,
            iova: 0x1000,
            len: 4096,
        };
        report.validate(&zns).unwrap();
        assert!(report.validate(&conv).is_err());
    }

    #[test]
    fn appended_lba_comes_from_dwords_0_and_1() {
        let cqe = CompletionEntry {
            dw0: 0x10,
            dw1: 0x2,
            ..Default::default()
        };
        assert_eq!(appended_lba(&cqe), 0x2_0000_0010);
    }
}
