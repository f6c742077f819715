//! PCI addresses: `DDDD:BB:DD.F` (domain, bus, device, function), the names
//! the kernel gives PCI functions in sysfs.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use super::PciError;

/// Highest PCI device number on a bus (5 bits).
const MAX_DEVICE: u8 = 0x1f;
/// Highest PCI function number of a device (3 bits).
const MAX_FUNCTION: u8 = 0x07;

/// The address of one PCI function, e.g. `0000:03:00.0`.
///
/// Parses the full form `0000:03:00.0` and the short form `03:00.0`
/// (domain 0, as `lspci` prints it). Displays in the full form sysfs uses.
/// Ordering is by domain, bus, device, function, so sorted lists read like
/// `lspci`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI segment (domain). Usually 0; VMD and large systems use more,
    /// and sysfs prints domains above 0xffff with more than four digits.
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

impl PciAddress {
    /// Builds an address, checking the device and function ranges.
    pub fn new(domain: u32, bus: u8, device: u8, function: u8) -> Result<Self, PciError> {
        let addr = Self {
            domain,
            bus,
            device,
            function,
        };
        if device > MAX_DEVICE {
            return Err(invalid(&addr.to_string(), "device number above 0x1f"));
        }
        if function > MAX_FUNCTION {
            return Err(invalid(&addr.to_string(), "function number above 7"));
        }
        Ok(addr)
    }
}

fn invalid(input: &str, reason: &'static str) -> PciError {
    PciError::InvalidAddress {
        input: input.to_owned(),
        reason,
    }
}

/// Parses a hex field of at most `max_digits` digits.
fn hex_field(
    input: &str,
    field: &str,
    max_digits: usize,
    what: &'static str,
) -> Result<u32, PciError> {
    if field.is_empty() || field.len() > max_digits || !field.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(invalid(input, what));
    }
    u32::from_str_radix(field, 16).map_err(|_| invalid(input, what))
}

impl FromStr for PciAddress {
    type Err = PciError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        let (head, function) = input
            .rsplit_once('.')
            .ok_or_else(|| invalid(input, "missing '.' before the function number"))?;
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [bus, device] => (0, *bus, *device),
            [domain, bus, device] => (
                hex_field(input, domain, 8, "domain is not 1 to 8 hex digits")?,
                *bus,
                *device,
            ),
            _ => return Err(invalid(input, "expected one or two ':' separators")),
        };
        let bus = hex_field(input, bus, 2, "bus is not 1 or 2 hex digits")?;
        let device = hex_field(input, device, 2, "device is not 1 or 2 hex digits")?;
        let function = hex_field(input, function, 1, "function is not one hex digit")?;
        if device > u32::from(MAX_DEVICE) {
            return Err(invalid(input, "device number above 0x1f"));
        }
        if function > u32::from(MAX_FUNCTION) {
            return Err(invalid(input, "function number above 7"));
        }
        // The digit limits above keep bus, device and function below 0x100.
        Ok(Self {
            domain,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for PciAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let full: PciAddress = "0000:03:00.0".parse().unwrap();
        assert_eq!(
            full,
            PciAddress {
                domain: 0,
                bus: 3,
                device: 0,
                function: 0
            }
        );
        let short: PciAddress = "03:00.0".parse().unwrap();
        assert_eq!(short, full);
        let vmd: PciAddress = "10000:e1:1f.7".parse().unwrap();
        assert_eq!(
            vmd,
            PciAddress {
                domain: 0x10000,
                bus: 0xe1,
                device: 0x1f,
                function: 7
            }
        );
        let upper: PciAddress = " 0000:AF:0A.1\n".parse().unwrap();
        assert_eq!(upper.to_string(), "0000:af:0a.1");
    }

    #[test]
    fn displays_in_sysfs_form() {
        let addr = PciAddress::new(0, 0x3, 0, 0).unwrap();
        assert_eq!(addr.to_string(), "0000:03:00.0");
        assert_eq!(serde_json::to_string(&addr).unwrap(), "\"0000:03:00.0\"");
    }

    #[test]
    fn rejects_malformed_addresses_with_reason() {
        for (input, reason) in [
            ("", "missing '.'"),
            ("03:00", "missing '.'"),
            ("0000:03:00.8", "function number above 7"),
            ("0000:03:20.0", "device number above 0x1f"),
            ("0000:103:00.0", "bus is not"),
            ("0000:03:00.00", "function is not"),
            ("0:0:03:00.0", "separators"),
            ("zz:00.0", "bus is not"),
            ("+3:00.0", "bus is not"),
            ("123456789:03:00.0", "domain is not"),
        ] {
            let err = input.parse::<PciAddress>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(reason), "{input:?}: {msg}");
            assert!(
                msg.contains("0000:03:00.0"),
                "message shows the expected form: {msg}"
            );
        }
    }

    #[test]
    fn new_checks_ranges() {
        assert!(PciAddress::new(0, 0, 31, 7).is_ok());
        assert!(PciAddress::new(0, 0, 32, 0).is_err());
        assert!(PciAddress::new(0, 0, 0, 8).is_err());
    }

    #[test]
    fn orders_like_lspci() {
        let mut v: Vec<PciAddress> = [
            "0000:05:00.1",
            "0000:03:00.0",
            "0001:00:00.0",
            "0000:05:00.0",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        v.sort();
        let s: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(
            s,
            [
                "0000:03:00.0",
                "0000:05:00.0",
                "0000:05:00.1",
                "0001:00:00.0"
            ]
        );
    }
}
