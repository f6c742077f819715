//! Helpers shared by the integration tests that need a formatted card.

use std::sync::Arc;

use iomemory::blk::{BlockDevice, OpenOptions};
use iomemory::card::Card;
use iomemory::emu::{EmuOptions, NandArray};
use iomemory::vsl::FormatOptions;

/// Opens `nand` as a card and attaches it as a block device, formatting it
/// with `sector_size`-byte sectors first if it is blank.
pub fn block_device(nand: &Arc<NandArray>, sector_size: u32) -> Arc<BlockDevice> {
    let card = Card::open_emulated(nand.clone(), EmuOptions::default()).unwrap();
    let opts = OpenOptions {
        format_if_blank: true,
        format: FormatOptions {
            sector_size,
            ..FormatOptions::default()
        },
        ..OpenOptions::default()
    };
    BlockDevice::attach(card, &opts, &mut |_, _| {}).unwrap()
}
