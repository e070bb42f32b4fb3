//! `gfcache-proxy`: one proxy process run by hand or by tests, outside the supervisor.
//!
//! Either attaches an existing region (`--region ID`) or creates one (`--caches K`) and prints
//! `region <id>` so that `gfcache-cache --region <id> --slot <k> ...` processes can serve it.
//! Prints `listening on <addr>` once ready and serves until SIGTERM or SIGINT, then drains.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use proxy_core::{Proxy, ProxyConfig};

#[derive(Parser, Debug)]
#[command(
    name = "gfcache-proxy",
    about = "Run one gfcache proxy outside the supervisor"
)]
struct Args {
    /// The region to attach, `<shmid>.<nonce-hex>`; without it a region is created.
    #[arg(long, conflicts_with_all = ["caches", "segments", "segment_size"])]
    region: Option<ipc::RegionId>,
    /// Creating a region: the number of cache slots.
    #[arg(long, default_value_t = 1)]
    caches: u32,
    /// Creating a region: the number of segments.
    #[arg(long, default_value_t = 16)]
    segments: u32,
    /// Creating a region: bytes per segment.
    #[arg(long, default_value_t = 1 << 20)]
    segment_size: usize,
    /// This proxy's slot.
    #[arg(long, default_value_t = 0)]
    slot: u32,
    /// Listen address (port 0 for any).
    #[arg(long, default_value = "127.0.0.1:10823")]
    listen: SocketAddr,
    /// Share the port with other proxies (SO_REUSEPORT).
    #[arg(long)]
    reuse_port: bool,
    /// Worker threads.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Origin base URL; without it a miss is FILE_NOT_FOUND.
    #[arg(long)]
    origin: Option<String>,
    /// Milliseconds to wait for a cache's answer or chunk before falling back.
    #[arg(long, default_value_t = 1000)]
    cache_timeout_ms: u64,
    /// Milliseconds one origin fetch may take in all.
    #[arg(long, default_value_t = 30_000)]
    origin_timeout_ms: u64,
    /// Larger objects are not filled.
    #[arg(long, default_value_t = 64 << 20)]
    max_object_size: u64,
    /// Milliseconds in-flight transfers may take after SIGTERM.
    #[arg(long, default_value_t = 10_000)]
    shutdown_timeout_ms: u64,
}

fn run(args: Args) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing the signal handlers")?;
    }
    let region = match args.region {
        Some(id) => ipc::Region::attach(id).with_context(|| format!("attaching region {id}"))?,
        None => {
            let config = ipc::RegionConfig {
                segments: args.segments,
                segment_size: args.segment_size,
                cache_slots: args.caches,
                proxy_slots: args.slot + 1,
            };
            let region = ipc::Region::create(&config, None).context("creating the region")?;
            println!("region {}", region.id());
            region
        }
    };
    let mut config = ProxyConfig::new(args.listen);
    config.slot = ipc::ProxySlot::from_raw(args.slot);
    config.reuse_port = args.reuse_port;
    config.threads = args.threads;
    config.origin = args.origin;
    config.cache_timeout = Duration::from_millis(args.cache_timeout_ms);
    config.origin_timeout = Duration::from_millis(args.origin_timeout_ms);
    config.max_object_size = args.max_object_size;
    config.shutdown_timeout = Duration::from_millis(args.shutdown_timeout_ms);
    let shutdown_timeout = config.shutdown_timeout;
    let proxy = Proxy::start(Arc::new(region), config)?;
    println!("listening on {}", proxy.local_addr());
    std::io::stdout().flush().context("stdout")?;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !proxy.join_timeout(shutdown_timeout)? {
        tracing::warn!("transfers still in flight at exit");
    }
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
            eprintln!("gfcache-proxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}
