//! `gfcache-cache`: one cache process run by hand or by tests, outside the supervisor.
//!
//! Attaches an existing region, opens a backend and serves one cache slot until SIGTERM or
//! SIGINT, then drains and exits 0.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cache_backends::{BackendConfig, CacheProcessConfig};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Directory,
    Memory,
    Pack,
}

#[derive(Parser, Debug)]
#[command(
    name = "gfcache-cache",
    about = "Serve one gfcache cache slot from a backend"
)]
struct Args {
    /// The region to attach, `<shmid>.<nonce-hex>`.
    #[arg(long)]
    region: ipc::RegionId,
    /// The cache slot to serve.
    #[arg(long, default_value_t = 0)]
    slot: u32,
    /// The backend.
    #[arg(long, value_enum)]
    backend: Kind,
    /// directory: the root.
    #[arg(long)]
    root: Option<PathBuf>,
    /// directory: a `<path> <file>` listing instead of a root.
    #[arg(long)]
    content: Option<PathBuf>,
    /// directory: store fills under the root.
    #[arg(long)]
    writable: bool,
    /// directory: byte bound of a writable root.
    #[arg(long)]
    max_size: Option<u64>,
    /// memory: byte bound.
    #[arg(long, default_value_t = 256 << 20)]
    capacity: u64,
    /// memory: larger objects are not stored.
    #[arg(long, default_value_t = 64 << 20)]
    max_object_size: u64,
    /// pack: the pack file.
    #[arg(long)]
    pack: Option<PathBuf>,
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Milliseconds a transfer waits for the proxy before it is aborted.
    #[arg(long, default_value_t = 5000)]
    transfer_timeout_ms: u64,
    /// Milliseconds in-flight transfers may take after SIGTERM.
    #[arg(long, default_value_t = 5000)]
    shutdown_timeout_ms: u64,
}

fn backend_config(args: &Args) -> anyhow::Result<BackendConfig> {
    Ok(match args.backend {
        Kind::Directory => BackendConfig::Directory {
            root: args.root.clone(),
            content: args.content.clone(),
            writable: args.writable,
            max_size: args.max_size,
        },
        Kind::Memory => BackendConfig::Memory {
            capacity: args.capacity,
            max_object_size: args.max_object_size,
        },
        Kind::Pack => BackendConfig::Pack {
            path: args
                .pack
                .clone()
                .context("--backend pack needs --pack FILE")?,
        },
    })
}

fn run(args: Args) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the signal handlers")?;
    }
    let config = CacheProcessConfig {
        slot: ipc::CacheSlot::from_raw(args.slot),
        workers: args.workers,
        transfer_timeout: Duration::from_millis(args.transfer_timeout_ms),
        shutdown_timeout: Duration::from_millis(args.shutdown_timeout_ms),
    };
    cache_backends::run_cache_slot(args.region, &backend_config(&args)?, &config, &stop)?;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gfcache-cache: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, leaving out a cause whose text its parent already shows.
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}
