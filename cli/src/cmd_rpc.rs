//! `iomem rpc METHOD [JSON]`: call the `iomem serve` control socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use crate::serve::config::DEFAULT_RPC_SOCKET;
use crate::serve::rpc::call_socket;

/// Options of `iomem rpc`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Methods: card_list, card_status {\"name\"}, card_attach {\"name\",\"path\",\"format_if_blank\"}, \
card_detach {\"name\",\"force\"}, export_list, export_add {\"type\":\"nbd\"|\"vhost-user-blk\",...}, \
export_remove {\"name\"}, rpc_get_methods, service_shutdown")]
pub struct Args {
    /// Control socket of `iomem serve`.
    #[arg(short = 's', long, default_value = DEFAULT_RPC_SOCKET)]
    pub socket: PathBuf,
    /// Seconds to wait for the reply (attach can scan a whole card).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Method name.
    pub method: String,
    /// Parameters as a JSON object.
    pub params: Option<String>,
}

/// Sends the request and prints the result as JSON.
pub fn run(args: Args) -> Result<ExitCode, String> {
    let params = match &args.params {
        Some(p) => serde_json::from_str::<Value>(p).map_err(|e| format!("params are not valid JSON: {e}"))?,
        None => Value::Null,
    };
    let result = call_socket(&args.socket, &args.method, params, Duration::from_secs(args.timeout))?;
    println!("{}", serde_json::to_string_pretty(&result).map_err(|e| e.to_string())?);
    Ok(ExitCode::SUCCESS)
}
