//! Sizes as people type and read them: "2GiB", "1.2TB", "512", "4k".

/// Parses a byte size: a number with an optional suffix, any case. Binary
/// suffixes (`KiB`, `MiB`, `GiB`, `TiB`, and the single letters `k`, `m`,
/// `g`, `t` as fio uses them) are powers of 1024; decimal ones (`KB`, `MB`,
/// `GB`, `TB`) are powers of 1000, as drive vendors use them.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (examples: 4096, 4k, 2GiB, 1.2TB)"))?;
    let multiplier: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown size suffix {other:?} in {text:?} (use k/KiB, M/MiB, G/GiB, T/TiB or KB, MB, GB, TB)"
            ))
        }
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size {text:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Formats a number with thousands separators, as `fio-status` prints
/// lifetime byte counts ("91,908,442,395,208").
pub fn with_commas(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Decimal gigabytes with two decimals ("1205.00").
pub fn gbytes(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_suffixes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.2TB").unwrap(), 1_200_000_000_000);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert!(parse_size("12XB").unwrap_err().contains("suffix"));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn formats_like_fio_status() {
        assert_eq!(with_commas(91_908_442_395_208), "91,908,442,395,208");
        assert_eq!(with_commas(7), "7");
        assert_eq!(with_commas(1000), "1,000");
        assert_eq!(gbytes(1_205_000_000_000), "1205.00");
    }
}
