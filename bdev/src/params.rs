//! Parameters of the `bdev_iomemory_create` and `bdev_iomemory_delete` RPCs:
//! parsed strictly from the RPC's JSON `params` object, validated, and
//! written back (for `save_config`) in the same shape.

use std::path::{Path, PathBuf};

use iomemory::pci::PciAddress;
use serde::{Deserialize, Serialize};

/// JSON-RPC 2.0 "Invalid params".
pub const JSONRPC_INVALID_PARAMS: i32 = -32602;

/// Longest bdev name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Sector sizes a format may use.
pub const SECTOR_SIZES: [u32; 2] = [512, 4096];

/// Highest per-channel queue depth accepted.
pub const MAX_QUEUE_DEPTH: u16 = 4096;

/// Most I/O channels (SPDK threads) one card serves.
pub const MAX_CHANNELS: usize = 256;

/// Why RPC parameters were refused. Every message says what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// The JSON did not have the expected shape (unknown key, wrong type).
    #[error("invalid parameters: {0}")]
    Malformed(String),
    /// Neither a card image nor a PCI address was given.
    #[error("give the card as \"path\" (an emulated card image) or \"pci_address\" (a real card, e.g. \"0000:03:00.0\")")]
    MissingSource,
    /// Both a card image and a PCI address were given.
    #[error("give either \"path\" or \"pci_address\", not both")]
    BothSources,
    /// The bdev name is unusable.
    #[error("bdev name {name:?} is invalid: {reason}")]
    BadName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The card image path is unusable.
    #[error("card image {path:?}: {reason}")]
    BadPath {
        /// The rejected path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The PCI address does not parse.
    #[error("pci_address {0:?} is not a PCI address like \"0000:03:00.0\"")]
    BadPciAddress(String),
    /// A numeric or enumerated option is out of range.
    #[error("option {name} = {value} is invalid: {expected}")]
    BadOption {
        /// Option name.
        name: &'static str,
        /// Value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}

impl ParamError {
    /// The JSON-RPC error code to answer with.
    pub fn rpc_code(&self) -> i32 {
        JSONRPC_INVALID_PARAMS
    }
}

/// Where the card is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CardSource {
    /// An emulated card image file (absolute, canonical path).
    Image(PathBuf),
    /// A real card on the PCI bus.
    Pci(PciAddress),
}

/// Validated `bdev_iomemory_create` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateParams {
    /// Bdev name.
    pub name: String,
    /// The card.
    pub source: CardSource,
    /// Format the card first if it holds no VSL format.
    pub format_if_blank: bool,
    /// Sector size used when formatting (512 or 4096).
    pub sector_size: u32,
    /// User capacity used when formatting ("78%", "800MiB"); `None` = default.
    pub capacity: Option<String>,
    /// Commands in flight per channel; `None` = the VSL default.
    pub queue_depth: Option<u16>,
    /// Most channels (SPDK threads) at once; `None` = the VSL default.
    pub max_channels: Option<usize>,
}

/// The wire shape of the create parameters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCreate {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pci_address: Option<String>,
    #[serde(default)]
    format_if_blank: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sector_size: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    capacity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queue_depth: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_channels: Option<usize>,
}

/// Validated `bdev_iomemory_delete` parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// Bdev name.
    pub name: String,
}

impl DeleteParams {
    /// Parses and validates the RPC's `params` JSON text.
    pub fn from_json(text: &str) -> Result<Self, ParamError> {
        let params: DeleteParams = parse_object(text)?;
        validate_name(&params.name)?;
        Ok(params)
    }
}

/// Validated `bdev_iomemory_inject_power_cut` parameters (fault injection
/// on an emulated card: the way to exercise hot remove).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerCutParams {
    /// Bdev name.
    pub name: String,
    /// Card commands still executed before power goes (0: now).
    #[serde(default)]
    pub after_commands: u64,
}

impl PowerCutParams {
    /// Parses and validates the RPC's `params` JSON text.
    pub fn from_json(text: &str) -> Result<Self, ParamError> {
        let params: PowerCutParams = parse_object(text)?;
        validate_name(&params.name)?;
        Ok(params)
    }
}

/// Parses `text` as a JSON object into `T` (a JSON array is refused even
/// though serde would map it positionally).
fn parse_object<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ParamError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ParamError::Malformed(e.to_string()))?;
    if !value.is_object() {
        return Err(ParamError::Malformed(
            "params must be a JSON object such as {\"name\": \"iom0\", ...}".into(),
        ));
    }
    serde_json::from_value(value).map_err(|e| ParamError::Malformed(e.to_string()))
}

/// Checks a bdev name: 1 to [`MAX_NAME_LEN`] bytes of printable characters
/// without whitespace (SPDK, rpc.py and NVMe-oF all carry it unquoted).
pub fn validate_name(name: &str) -> Result<(), ParamError> {
    let bad = |reason| {
        Err(ParamError::BadName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty; give a name such as \"iom0\"");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 255 bytes");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace or control characters");
    }
    Ok(())
}

fn validate_image(path: &str) -> Result<PathBuf, ParamError> {
    let bad = |reason: String| ParamError::BadPath {
        path: path.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(bad("the path is empty".into()));
    }
    let canonical = std::fs::canonicalize(Path::new(path)).map_err(|e| {
        bad(format!(
            "{e}; create an emulated card with `iomem sim create {path} --capacity 1GiB`"
        ))
    })?;
    let meta = std::fs::metadata(&canonical).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad(
            "it is not a regular file (an emulated card image)".into()
        ));
    }
    Ok(canonical)
}

impl CreateParams {
    /// Parses and validates the RPC's `params` JSON text. A card image path
    /// is made absolute and canonical, so a saved configuration reloads from
    /// any working directory.
    pub fn from_json(text: &str) -> Result<Self, ParamError> {
        let raw: RawCreate = parse_object(text)?;
        validate_name(&raw.name)?;
        let source = match (&raw.path, &raw.pci_address) {
            (None, None) => return Err(ParamError::MissingSource),
            (Some(_), Some(_)) => return Err(ParamError::BothSources),
            (Some(path), None) => CardSource::Image(validate_image(path)?),
            (None, Some(addr)) => CardSource::Pci(
                addr.parse()
                    .map_err(|_| ParamError::BadPciAddress(addr.clone()))?,
            ),
        };
        let sector_size = raw.sector_size.unwrap_or(4096);
        if !SECTOR_SIZES.contains(&sector_size) {
            return Err(ParamError::BadOption {
                name: "sector_size",
                value: sector_size.to_string(),
                expected: "512 or 4096",
            });
        }
        if let Some(capacity) = &raw.capacity {
            capacity
                .parse::<iomemory::vsl::CapacitySpec>()
                .map_err(|_| ParamError::BadOption {
                    name: "capacity",
                    value: capacity.clone(),
                    expected: "a size such as \"800MiB\" or a percentage such as \"78%\"",
                })?;
        }
        if let Some(depth) = raw.queue_depth {
            if depth == 0 || depth > MAX_QUEUE_DEPTH {
                return Err(ParamError::BadOption {
                    name: "queue_depth",
                    value: depth.to_string(),
                    expected: "1 to 4096",
                });
            }
        }
        if let Some(channels) = raw.max_channels {
            if channels == 0 || channels > MAX_CHANNELS {
                return Err(ParamError::BadOption {
                    name: "max_channels",
                    value: channels.to_string(),
                    expected: "1 to 256",
                });
            }
        }
        Ok(Self {
            name: raw.name,
            source,
            format_if_blank: raw.format_if_blank,
            sector_size,
            capacity: raw.capacity,
            queue_depth: raw.queue_depth,
            max_channels: raw.max_channels,
        })
    }

    /// The `params` object that recreates this bdev (for `save_config`).
    /// Formatting options are kept: they only act on a blank card.
    pub fn to_json(&self) -> serde_json::Value {
        let (path, pci_address) = match &self.source {
            CardSource::Image(p) => (Some(p.to_string_lossy().into_owned()), None),
            CardSource::Pci(a) => (None, Some(a.to_string())),
        };
        let raw = RawCreate {
            name: self.name.clone(),
            path,
            pci_address,
            format_if_blank: self.format_if_blank,
            sector_size: Some(self.sector_size),
            capacity: self.capacity.clone(),
            queue_depth: self.queue_depth,
            max_channels: self.max_channels,
        };
        // A struct of strings, integers and booleans always serializes.
        serde_json::to_value(raw).unwrap_or(serde_json::Value::Null)
    }

    /// The block-layer open options these parameters ask for.
    pub fn open_options(&self) -> iomemory::blk::OpenOptions {
        let mut opts = iomemory::blk::OpenOptions {
            format_if_blank: self.format_if_blank,
            ..Default::default()
        };
        opts.format.sector_size = self.sector_size;
        opts.format.capacity = self.capacity.as_deref().and_then(|c| c.parse().ok());
        if let Some(depth) = self.queue_depth {
            opts.attach.queue_depth = depth;
        }
        if let Some(channels) = self.max_channels {
            opts.attach.max_channels = channels;
        }
        opts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempfile::NamedTempFile {
        tempfile::NamedTempFile::new().unwrap()
    }

    #[test]
    fn a_minimal_create_parses_with_defaults() {
        let f = image();
        let text = format!(r#"{{"name":"iom0","path":"{}"}}"#, f.path().display());
        let p = CreateParams::from_json(&text).unwrap();
        assert_eq!(p.name, "iom0");
        assert_eq!(
            p.source,
            CardSource::Image(std::fs::canonicalize(f.path()).unwrap())
        );
        assert!(!p.format_if_blank);
        assert_eq!(p.sector_size, 4096);
        assert_eq!(p.queue_depth, None);
        let opts = p.open_options();
        assert!(!opts.format_if_blank);
        assert_eq!(opts.format.sector_size, 4096);
    }

    #[test]
    fn relative_paths_are_saved_absolute_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("card.img"), b"x").unwrap();
        let rel = {
            // Build a path with a `..` component that canonicalizes away.
            let sub = dir.path().join("sub");
            std::fs::create_dir(&sub).unwrap();
            format!("{}/../card.img", sub.display())
        };
        let text = format!(
            r#"{{"name":"a","path":"{rel}","format_if_blank":true,"sector_size":512,"capacity":"50%","queue_depth":64,"max_channels":4}}"#
        );
        let p = CreateParams::from_json(&text).unwrap();
        let saved = p.to_json();
        let canon = std::fs::canonicalize(dir.path().join("card.img")).unwrap();
        assert_eq!(saved["path"], canon.to_string_lossy().as_ref());
        assert_eq!(saved["sector_size"], 512);
        assert_eq!(saved["capacity"], "50%");
        assert!(saved.get("pci_address").is_none());
        let again = CreateParams::from_json(&saved.to_string()).unwrap();
        assert_eq!(again, p);
        let opts = again.open_options();
        assert!(opts.format_if_blank);
        assert_eq!(opts.format.sector_size, 512);
        assert_eq!(opts.attach.queue_depth, 64);
        assert_eq!(opts.attach.max_channels, 4);
        assert_eq!(
            opts.format.capacity,
            Some(iomemory::vsl::CapacitySpec::Percent(50.0))
        );
    }

    #[test]
    fn source_must_be_exactly_one_of_path_and_pci_address() {
        assert_eq!(
            CreateParams::from_json(r#"{"name":"a"}"#),
            Err(ParamError::MissingSource)
        );
        let f = image();
        let both = format!(
            r#"{{"name":"a","path":"{}","pci_address":"0000:03:00.0"}}"#,
            f.path().display()
        );
        assert_eq!(CreateParams::from_json(&both), Err(ParamError::BothSources));
        let pci = CreateParams::from_json(r#"{"name":"a","pci_address":"0000:03:00.0"}"#).unwrap();
        assert!(matches!(pci.source, CardSource::Pci(_)));
        assert_eq!(pci.to_json()["pci_address"], "0000:03:00.0");
        assert!(matches!(
            CreateParams::from_json(r#"{"name":"a","pci_address":"03:00"}"#),
            Err(ParamError::BadPciAddress(_))
        ));
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_malformed() {
        for text in [
            r#"{"name":"a","path":"/x","colour":"red"}"#,
            r#"{"name":7,"path":"/x"}"#,
            r#"{"name":"a","path":"/x","format_if_blank":"yes"}"#,
            r#"{"name":"a","path":"/x","queue_depth":70000}"#,
            r#"["a"]"#,
            r#"{"name":"a""#,
        ] {
            let err = CreateParams::from_json(text).unwrap_err();
            assert!(matches!(err, ParamError::Malformed(_)), "{text}: {err}");
            assert_eq!(err.rpc_code(), JSONRPC_INVALID_PARAMS);
        }
    }

    #[test]
    fn bad_names_are_refused_with_reasons() {
        for name in ["", "has space", "tab\there", &"x".repeat(256)] {
            assert!(matches!(
                validate_name(name),
                Err(ParamError::BadName { .. })
            ));
        }
        assert!(validate_name("iom0").is_ok());
        assert!(validate_name("card:0/ns-1").is_ok());
        let err = DeleteParams::from_json(r#"{"name":""}"#).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        assert_eq!(
            DeleteParams::from_json(r#"{"name":"iom0"}"#).unwrap().name,
            "iom0"
        );
        assert!(matches!(
            DeleteParams::from_json(r#"{"name":"iom0","force":true}"#),
            Err(ParamError::Malformed(_))
        ));
    }

    #[test]
    fn power_cut_params_default_to_now() {
        let p = PowerCutParams::from_json(r#"{"name":"iom0"}"#).unwrap();
        assert_eq!((p.name.as_str(), p.after_commands), ("iom0", 0));
        let p = PowerCutParams::from_json(r#"{"name":"iom0","after_commands":500}"#).unwrap();
        assert_eq!(p.after_commands, 500);
        assert!(matches!(
            PowerCutParams::from_json(r#"{"name":"iom0","after_commands":-1}"#),
            Err(ParamError::Malformed(_))
        ));
        assert!(matches!(
            PowerCutParams::from_json(r#"{"name":""}"#),
            Err(ParamError::BadName { .. })
        ));
    }

    #[test]
    fn missing_or_non_file_images_say_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.img");
        let text = format!(r#"{{"name":"a","path":"{}"}}"#, missing.display());
        let err = CreateParams::from_json(&text).unwrap_err();
        assert!(matches!(err, ParamError::BadPath { .. }));
        assert!(err.to_string().contains("iomem sim create"), "{err}");
        let text = format!(r#"{{"name":"a","path":"{}"}}"#, dir.path().display());
        let err = CreateParams::from_json(&text).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn option_ranges_are_enforced() {
        let f = image();
        let p = f.path().display();
        for (extra, name) in [
            (r#""sector_size":1024"#, "sector_size"),
            (r#""capacity":"lots""#, "capacity"),
            (r#""capacity":"120%""#, "capacity"),
            (r#""queue_depth":0"#, "queue_depth"),
            (r#""queue_depth":5000"#, "queue_depth"),
            (r#""max_channels":0"#, "max_channels"),
            (r#""max_channels":1000"#, "max_channels"),
        ] {
            let text = format!(r#"{{"name":"a","path":"{p}",{extra}}}"#);
            match CreateParams::from_json(&text) {
                Err(ParamError::BadOption { name: n, .. }) => assert_eq!(n, name, "{extra}"),
                other => panic!("{extra}: {other:?}"),
            }
        }
    }
}
