//! Who a card is: the identity strings and ratings `fio-status` prints.

use serde::{Deserialize, Serialize};

/// Identity of a card as reported by the identify command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardIdentity {
    /// Model name, e.g. "ioDrive2".
    pub model: String,
    /// Product number, e.g. "F00-001-1T20-CS-0001".
    pub product_number: String,
    /// Board serial number.
    pub serial: String,
    /// Fusion-io serial number.
    pub fio_serial: String,
    /// Firmware version, e.g. "7.1.15".
    pub firmware_version: String,
    /// Firmware revision number, e.g. 110356.
    pub firmware_revision: u32,
    /// PCI vendor id (0x1aed for Fusion-io).
    pub pci_vendor: u16,
    /// PCI device id (0x2001 for ioDrive2).
    pub pci_device: u16,
    /// PCI subsystem vendor id.
    pub pci_subsystem_vendor: u16,
    /// PCI subsystem device id.
    pub pci_subsystem_device: u16,
    /// Capacity the card is sold as, in bytes (the default format's size).
    pub advertised_bytes: u64,
    /// Rated program/erase cycles per block.
    pub rated_pe_cycles: u32,
    /// Rated petabytes written over the card's life, in bytes.
    pub rated_pbw_bytes: u64,
    /// Whether the card has power-loss protection (capacitors flushing its
    /// write buffer on power loss).
    pub powerloss_protection: bool,
}
