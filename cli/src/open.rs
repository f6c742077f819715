//! Opening a card named on the command line.

use std::path::Path;
use std::sync::Arc;

use iomemory::card::Card;
use iomemory::emu::{EmuOptions, NandArray};

/// Opens the emulated card image at `path` and brings it up over the
/// queue path.
pub fn open_image(path: &Path) -> Result<Arc<Card>, String> {
    if !path.exists() {
        return Err(format!(
            "{}: no such card image (create one with `iomem sim create {}`)",
            path.display(),
            path.display()
        ));
    }
    let nand = NandArray::open(path).map_err(|e| e.to_string())?;
    Card::open_emulated(nand, EmuOptions::default()).map_err(|e| format!("{}: {e}", path.display()))
}
