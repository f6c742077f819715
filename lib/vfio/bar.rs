//! BARs: their layout (from sysfs or VFIO) and MMIO mappings.
//!
//! A mapped BAR is handed out only as an [`Mmio`]: a raw base pointer with
//! volatile accessors, whose owner `Arc` keeps the mapping (and the device)
//! alive. No Rust reference into device memory is ever made.

use std::ptr::NonNull;
use std::sync::Arc;

use super::config::BarType;
use super::device::{DeviceInner, BAR_COUNT};
use super::VfioError;
use crate::nvme::Mmio;
use crate::pci::{PciAddress, PciError, SysfsRoot};

/// One implemented BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BarInfo {
    /// BAR number (0-5).
    pub index: u32,
    /// Its type, `None` if the register holds a reserved encoding.
    pub kind: Option<BarType>,
    /// Bus address it is assigned.
    pub start: u64,
    /// Size in bytes.
    pub size: u64,
    /// Whether VFIO lets it be mmapped (always false from sysfs).
    pub mmap: bool,
}

/// `IORESOURCE_IO` in a sysfs `resource` line's flags.
const IORESOURCE_IO: u64 = 0x100;
/// `IORESOURCE_MEM`.
const IORESOURCE_MEM: u64 = 0x200;
/// `IORESOURCE_PREFETCH`.
const IORESOURCE_PREFETCH: u64 = 0x2000;
/// `IORESOURCE_MEM_64`.
const IORESOURCE_MEM_64: u64 = 0x0010_0000;

/// The BARs of `address` from `<dev>/resource` (no VFIO needed: this is how
/// a card on its vendor driver, or on none, is described).
pub fn sysfs_bars(root: &SysfsRoot, address: PciAddress) -> Result<Vec<BarInfo>, PciError> {
    let path = root.device_dir(address).join("resource");
    let text = std::fs::read_to_string(&path).map_err(|source| PciError::Read {
        path: path.clone(),
        source,
    })?;
    let mut bars = Vec::new();
    for (index, line) in text.lines().take(BAR_COUNT as usize).enumerate() {
        let malformed = || PciError::Malformed {
            path: path.clone(),
            found: line.to_owned(),
            expected: "three hex numbers per line: start end flags",
        };
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| malformed())?;
        let [start, end, flags] = fields[..] else {
            return Err(malformed());
        };
        if flags & (IORESOURCE_IO | IORESOURCE_MEM) == 0 || end < start {
            continue;
        }
        let kind = if flags & IORESOURCE_IO != 0 {
            BarType::Io
        } else if flags & IORESOURCE_MEM_64 != 0 {
            BarType::Memory64 {
                prefetchable: flags & IORESOURCE_PREFETCH != 0,
            }
        } else {
            BarType::Memory32 {
                prefetchable: flags & IORESOURCE_PREFETCH != 0,
            }
        };
        bars.push(BarInfo {
            index: index as u32,
            kind: Some(kind),
            start,
            size: end - start + 1,
            mmap: false,
        });
    }
    Ok(bars)
}

/// Formats a BAR list, one line each: `BAR0  mem64  0xfebf0000  16 KiB`.
pub fn render_bars(bars: &[BarInfo]) -> String {
    let mut out = String::new();
    for bar in bars {
        let kind = match bar.kind {
            Some(BarType::Io) => "io".to_owned(),
            Some(BarType::Memory32 { prefetchable }) => {
                format!("mem32{}", if prefetchable { " prefetchable" } else { "" })
            }
            Some(BarType::Memory64 { prefetchable }) => {
                format!("mem64{}", if prefetchable { " prefetchable" } else { "" })
            }
            None => "reserved-type".to_owned(),
        };
        out.push_str(&format!(
            "BAR{}  {:<18} {:#012x}  {}\n",
            bar.index,
            kind,
            bar.start,
            human_size(bar.size)
        ));
    }
    out
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// A BAR mapped into this process (`mmap` of the VFIO device file).
pub struct BarMapping {
    ptr: NonNull<u8>,
    len: usize,
    index: u32,
    device: Arc<DeviceInner>,
}

// SAFETY: the mapping is device memory owned by this value (unmapped only
// in Drop); it is only reached through `Mmio`'s volatile loads and stores of
// aligned words, which any thread may issue (that is how MMIO is shared).
unsafe impl Send for BarMapping {}
// SAFETY: see `Send`; `&BarMapping` exposes no access to the memory itself.
unsafe impl Sync for BarMapping {}

impl std::fmt::Debug for BarMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarMapping")
            .field("device", &self.device.address())
            .field("bar", &self.index)
            .field("len", &self.len)
            .finish()
    }
}

impl BarMapping {
    /// Maps BAR `index` of `device`: the whole region, or, when the kernel
    /// only allows parts (sparse mmap, e.g. around an MSI-X table), the
    /// part that starts at offset 0.
    pub(crate) fn map(device: Arc<DeviceInner>, index: u32) -> Result<Self, VfioError> {
        let address = device.address();
        if index >= BAR_COUNT {
            return Err(VfioError::Region {
                address,
                index,
                reason: "is not a BAR (BARs are 0-5)",
            });
        }
        let region = device.region(index);
        if region.size == 0 {
            return Err(VfioError::Region {
                address,
                index,
                reason: "is not implemented by the device",
            });
        }
        if !region.mmap {
            return Err(VfioError::Region {
                address,
                index,
                reason: "cannot be mmapped (I/O port BAR, or the kernel refuses mmap)",
            });
        }
        let sparse = device.sparse_areas(index);
        let len = if sparse.is_empty() {
            region.size
        } else {
            match sparse.iter().find(|(offset, _)| *offset == 0) {
                Some((_, size)) => *size,
                None => {
                    return Err(VfioError::Region {
                        address,
                        index,
                        reason: "has no mmappable area at offset 0",
                    })
                }
            }
        };
        let len = usize::try_from(len).map_err(|_| VfioError::Region {
            address,
            index,
            reason: "is larger than the address space",
        })?;
        let offset = libc::off_t::try_from(region.offset).map_err(|_| VfioError::Region {
            address,
            index,
            reason: "has an offset mmap cannot take",
        })?;
        // SAFETY: a fresh shared mapping of the device file at an address of
        // the kernel's choice (no MAP_FIXED), so no existing memory is
        // affected; the fd is open for as long as `device` lives, which this
        // mapping holds.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device.raw_fd(),
                offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(VfioError::Io {
                address,
                what: "mmap of a BAR",
                source: std::io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or(VfioError::Region {
            address,
            index,
            reason: "was mapped at address 0",
        })?;
        Ok(Self {
            ptr,
            len,
            index,
            device,
        })
    }

    /// Mapped length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The BAR number.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Register access to this BAR. The `Mmio` keeps the mapping (and the
    /// device) alive. No emulator is notified: real hardware sees its own
    /// register writes.
    pub fn mmio(self: &Arc<Self>) -> Mmio {
        let owner: Arc<dyn Send + Sync> = self.clone();
        // SAFETY: `ptr` is a page-aligned mapping of `len` readable and
        // writable bytes that stays mapped while `owner` (this mapping)
        // lives, and Mmio holds `owner`.
        unsafe { Mmio::new(self.ptr, self.len, None, Some(owner)) }
    }
}

impl Drop for BarMapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping created in `map`, owned by this value;
        // every `Mmio` into it held an Arc to us, so none is left.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_resource_lines_become_bars() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysfsRoot::new(dir.path(), dir.path().join("mounts"));
        let addr: PciAddress = "0000:03:00.0".parse().unwrap();
        let dev = root.device_dir(addr);
        std::fs::create_dir_all(&dev).unwrap();
        // An ioDrive2 as the kernel shows it: BAR0 32-bit memory, BAR2 64-bit
        // prefetchable, BAR4 I/O ports, others unimplemented, then the ROM.
        std::fs::write(
            dev.join("resource"),
            "0x00000000fb000000 0x00000000fb00ffff 0x0000000000040200\n\
             0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
             0x00000000e0000000 0x00000000e01fffff 0x000000000014220c\n\
             0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
             0x000000000000e000 0x000000000000e0ff 0x0000000000040101\n\
             0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
             0x00000000fb100000 0x00000000fb13ffff 0x0000000000046200\n",
        )
        .unwrap();
        let bars = sysfs_bars(&root, addr).unwrap();
        assert_eq!(bars.len(), 3);
        assert_eq!(bars[0].index, 0);
        assert_eq!(bars[0].size, 64 << 10);
        assert_eq!(
            bars[0].kind,
            Some(BarType::Memory32 {
                prefetchable: false
            })
        );
        assert_eq!(bars[1].index, 2);
        assert_eq!(bars[1].start, 0xe000_0000);
        assert_eq!(bars[1].size, 2 << 20);
        assert_eq!(bars[1].kind, Some(BarType::Memory64 { prefetchable: true }));
        assert_eq!(bars[2].kind, Some(BarType::Io));
        assert_eq!(bars[2].size, 256);
        let text = render_bars(&bars);
        assert!(text.contains("BAR0  mem32"), "{text}");
        assert!(text.contains("64 KiB"), "{text}");
        assert!(text.contains("BAR2  mem64 prefetchable"), "{text}");
        assert!(text.contains("2 MiB"), "{text}");
        assert!(text.contains("BAR4  io"), "{text}");
    }

    #[test]
    fn a_malformed_resource_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = SysfsRoot::new(dir.path(), dir.path().join("mounts"));
        let addr: PciAddress = "0000:03:00.0".parse().unwrap();
        let dev = root.device_dir(addr);
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("resource"), "0x1000 zz 0x200\n").unwrap();
        let err = sysfs_bars(&root, addr).unwrap_err();
        assert!(err.to_string().contains("resource"), "{err}");
        std::fs::remove_file(dev.join("resource")).unwrap();
        let err = sysfs_bars(&root, addr).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
