//! PCI configuration space layout (PCI Local Bus Specification 3.0,
//! section 6.1, type 0 header) and BAR register decoding (section 6.2.5.1).

/// Vendor ID, 16-bit.
pub const VENDOR_ID: u64 = 0x00;
/// Device ID, 16-bit.
pub const DEVICE_ID: u64 = 0x02;
/// Command register, 16-bit.
pub const COMMAND: u64 = 0x04;
/// Status register, 16-bit.
pub const STATUS: u64 = 0x06;
/// Revision ID (byte 0x08) and class code (bytes 0x09..0x0b), as one dword.
pub const CLASS_REVISION: u64 = 0x08;
/// First base address register; BAR n is at `BAR0 + 4 * n`.
pub const BAR0: u64 = 0x10;
/// Subsystem vendor ID, 16-bit.
pub const SUBSYSTEM_VENDOR_ID: u64 = 0x2c;
/// Subsystem ID, 16-bit.
pub const SUBSYSTEM_ID: u64 = 0x2e;

/// Command register: respond to I/O space accesses.
pub const COMMAND_IO: u16 = 1 << 0;
/// Command register: respond to memory space accesses.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: the device may master the bus (issue DMA).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command register: legacy INTx interrupts disabled.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// What a BAR register says about its space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BarType {
    /// I/O port space.
    Io,
    /// 32-bit memory space.
    Memory32 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// 64-bit memory space (the BAR takes this and the next register).
    Memory64 {
        /// Prefetchable.
        prefetchable: bool,
    },
}

/// Decodes the low bits of a BAR register. `None` for the reserved memory
/// type encoding (bits 2:1 = 01b or 11b).
pub fn decode_bar(register: u32) -> Option<BarType> {
    if register & 1 == 1 {
        return Some(BarType::Io);
    }
    let prefetchable = register & (1 << 3) != 0;
    match (register >> 1) & 0b11 {
        0b00 => Some(BarType::Memory32 { prefetchable }),
        0b10 => Some(BarType::Memory64 { prefetchable }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_types_decode_per_spec() {
        // QEMU's NVMe BAR0: 64-bit, non-prefetchable memory.
        assert_eq!(
            decode_bar(0xfebf_0004),
            Some(BarType::Memory64 {
                prefetchable: false
            })
        );
        assert_eq!(
            decode_bar(0xe000_000c),
            Some(BarType::Memory64 { prefetchable: true })
        );
        assert_eq!(
            decode_bar(0xfeb0_0000),
            Some(BarType::Memory32 {
                prefetchable: false
            })
        );
        assert_eq!(decode_bar(0x0000_c001), Some(BarType::Io));
        assert_eq!(decode_bar(0x0000_0002), None);
    }

    #[test]
    fn header_offsets_match_the_type0_layout() {
        assert_eq!(COMMAND, 4);
        assert_eq!(BAR0 + 4 * 5, 0x24);
        assert_eq!(SUBSYSTEM_VENDOR_ID, 0x2c);
        assert_eq!(COMMAND_BUS_MASTER | COMMAND_MEMORY, 0b110);
    }
}
