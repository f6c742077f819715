//! The service configuration: a JSON file (`--config`), command-line card
//! and export specs, and the export specs `export_add` takes over RPC.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default control socket.
pub const DEFAULT_RPC_SOCKET: &str = "/run/iomem/iomem.sock";
/// Default NBD port.
pub const DEFAULT_NBD_PORT: u16 = 10809;

/// A whole configuration file.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Control socket path.
    #[serde(default)]
    pub rpc_socket: Option<PathBuf>,
    /// Reactor threads (default: one per core).
    #[serde(default)]
    pub reactors: Option<usize>,
    /// Cards to attach.
    #[serde(default)]
    pub cards: Vec<CardSpec>,
    /// Exports to serve.
    #[serde(default)]
    pub exports: Vec<ExportSpec>,
}

/// A card to attach.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CardSpec {
    /// Name exports and RPCs refer to it by.
    pub name: String,
    /// Emulated card image.
    pub path: PathBuf,
    /// Format the card if it holds no VSL format.
    #[serde(default)]
    pub format_if_blank: bool,
}

/// An export.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", deny_unknown_fields)]
pub enum ExportSpec {
    /// An NBD export.
    #[serde(rename = "nbd")]
    Nbd {
        /// Export name clients select.
        name: String,
        /// Card name.
        card: String,
        /// `ADDR:PORT`, `PORT`, or `unix:PATH` (default 127.0.0.1:10809).
        #[serde(default)]
        listen: Option<String>,
        /// Refuse writes.
        #[serde(default)]
        read_only: bool,
        /// Shown to clients.
        #[serde(default)]
        description: Option<String>,
    },
    /// A vhost-user-blk export.
    #[serde(rename = "vhost-user-blk")]
    VhostUserBlk {
        /// Export name (for RPC).
        name: String,
        /// Card name.
        card: String,
        /// Unix socket the VMM connects to.
        socket: PathBuf,
        /// Virtqueues (default: one per reactor).
        #[serde(default)]
        queues: Option<usize>,
        /// Refuse writes.
        #[serde(default)]
        read_only: bool,
    },
}

impl ExportSpec {
    /// The export's name.
    pub fn name(&self) -> &str {
        match self {
            ExportSpec::Nbd { name, .. } | ExportSpec::VhostUserBlk { name, .. } => name,
        }
    }

    /// The card it exports.
    pub fn card(&self) -> &str {
        match self {
            ExportSpec::Nbd { card, .. } | ExportSpec::VhostUserBlk { card, .. } => card,
        }
    }
}

/// Where an NBD listener listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenAddr {
    /// TCP.
    Tcp(SocketAddr),
    /// Unix socket path.
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parses `ADDR:PORT`, `[V6]:PORT`, `PORT`, `:PORT` (loopback) or
/// `unix:PATH`. `None` is 127.0.0.1:10809.
pub fn parse_listen(s: Option<&str>) -> Result<ListenAddr, String> {
    let Some(s) = s.map(str::trim) else {
        return Ok(ListenAddr::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_NBD_PORT)));
    };
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a socket path, e.g. unix:/run/iomem/disk0.nbd".into());
        }
        return Ok(ListenAddr::Unix(PathBuf::from(path)));
    }
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(ListenAddr::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
    }
    s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
        format!("{s:?} is not a listen address: use ADDR:PORT (e.g. 127.0.0.1:10809), PORT, or unix:PATH")
    })
}

impl Config {
    /// Reads a JSON configuration file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: not a valid iomem serve configuration: {e}", path.display()))
    }

    /// Adds the command-line specs (`CARD [--nbd ADDR --export NAME]
    /// [--vhost-user-blk SOCKET] [--read-only] [--queues N] ...`).
    pub fn add_cli_specs(&mut self, args: &[String]) -> Result<(), String> {
        let mut card: Option<String> = None;
        let mut pending_nbd: Option<(String, Option<String>)> = None;
        let mut it = args.iter().peekable();
        let mut counter = 0usize;
        let flush_nbd = |cfg: &mut Config, card: &Option<String>, pending: &mut Option<(String, Option<String>)>| -> Result<(), String> {
            if let Some((listen, export)) = pending.take() {
                let card = card.clone().ok_or("--nbd must follow a CARD path")?;
                let name = export.unwrap_or_else(|| card.clone());
                cfg.exports.push(ExportSpec::Nbd { name, card, listen: Some(listen), read_only: false, description: None });
            }
            Ok(())
        };
        while let Some(a) = it.next() {
            let mut value = |flag: &str| it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
            match a.as_str() {
                "--nbd" => {
                    flush_nbd(self, &card, &mut pending_nbd)?;
                    pending_nbd = Some((value("--nbd")?, None));
                }
                "--export" => {
                    let v = value("--export")?;
                    match pending_nbd.as_mut() {
                        Some((_, e @ None)) => *e = Some(v),
                        _ => return Err("--export NAME must follow --nbd ADDR".into()),
                    }
                }
                "--vhost-user-blk" => {
                    flush_nbd(self, &card, &mut pending_nbd)?;
                    let socket = PathBuf::from(value("--vhost-user-blk")?);
                    let c = card.clone().ok_or("--vhost-user-blk must follow a CARD path")?;
                    let name = format!("{c}-vhost{}", self.exports.len());
                    self.exports.push(ExportSpec::VhostUserBlk { name, card: c, socket, queues: None, read_only: false });
                }
                "--queues" => {
                    let v = value("--queues")?;
                    let n: usize = v.parse().map_err(|_| format!("--queues {v:?} is not a number"))?;
                    match self.exports.last_mut() {
                        Some(ExportSpec::VhostUserBlk { queues, .. }) if pending_nbd.is_none() => *queues = Some(n),
                        _ => return Err("--queues must follow --vhost-user-blk SOCKET".into()),
                    }
                }
                "--read-only" => {
                    flush_nbd(self, &card, &mut pending_nbd)?;
                    match self.exports.last_mut() {
                        Some(ExportSpec::Nbd { read_only, .. } | ExportSpec::VhostUserBlk { read_only, .. }) => *read_only = true,
                        None => return Err("--read-only must follow an export".into()),
                    }
                }
                flag if flag.starts_with("--") => return Err(format!("unknown option {flag} in the export specs")),
                path => {
                    flush_nbd(self, &card, &mut pending_nbd)?;
                    let p = PathBuf::from(path);
                    let existing = self.cards.iter().find(|c| c.path == p).map(|c| c.name.clone());
                    let name = match existing {
                        Some(n) => n,
                        None => {
                            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("card").to_string();
                            let mut name = stem.clone();
                            while self.cards.iter().any(|c| c.name == name) {
                                counter += 1;
                                name = format!("{stem}{counter}");
                            }
                            self.cards.push(CardSpec { name: name.clone(), path: p, format_if_blank: false });
                            name
                        }
                    };
                    card = Some(name);
                }
            }
        }
        flush_nbd(self, &card, &mut pending_nbd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_default_to_loopback() {
        assert_eq!(parse_listen(None).unwrap().to_string(), "127.0.0.1:10809");
        assert_eq!(parse_listen(Some("10810")).unwrap().to_string(), "127.0.0.1:10810");
        assert_eq!(parse_listen(Some(":10811")).unwrap().to_string(), "127.0.0.1:10811");
        assert_eq!(parse_listen(Some("[::1]:5")).unwrap().to_string(), "[::1]:5");
        assert_eq!(parse_listen(Some("unix:/tmp/x.sock")).unwrap(), ListenAddr::Unix("/tmp/x.sock".into()));
        assert!(parse_listen(Some("unix:")).is_err());
        assert!(parse_listen(Some("localhost")).is_err());
    }

    #[test]
    fn command_line_specs_and_json_agree() {
        let mut c = Config::default();
        let args: Vec<String> = "/a/card0.img --nbd 127.0.0.1:10809 --export disk0 --nbd unix:/tmp/n.sock --read-only /b/card0.img --vhost-user-blk /tmp/v.sock --queues 2"
            .split(' ')
            .map(String::from)
            .collect();
        c.add_cli_specs(&args).unwrap();
        let json = r#"{
          "cards": [{"name":"card0","path":"/a/card0.img"},{"name":"card01","path":"/b/card0.img"}],
          "exports": [
            {"type":"nbd","name":"disk0","card":"card0","listen":"127.0.0.1:10809"},
            {"type":"nbd","name":"card0","card":"card0","listen":"unix:/tmp/n.sock","read_only":true},
            {"type":"vhost-user-blk","name":"card01-vhost2","card":"card01","socket":"/tmp/v.sock","queues":2}
          ]}"#;
        let j: Config = serde_json::from_str(json).unwrap();
        assert_eq!(c, j);
        assert!(Config::default().add_cli_specs(&["--nbd".into(), "1".into()]).is_err());
        assert!(Config::default().add_cli_specs(&["c.img".into(), "--bogus".into()]).is_err());
        assert!(serde_json::from_str::<Config>(r#"{"cards":[],"extra":1}"#).is_err());
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let c: Config = serde_json::from_str(include_str!("../../../contrib/serve.example.json")).unwrap();
        assert_eq!(c.cards.len(), 1);
        assert_eq!(c.exports.len(), 3);
        assert!(c.exports.iter().all(|e| e.card() == "card0"));
        for e in &c.exports {
            if let ExportSpec::Nbd { listen, .. } = e {
                parse_listen(listen.as_deref()).unwrap();
            }
        }
    }
}
