//! `gfcache-proxy`: one proxy process run by hand or by tests, outside the supervisor.
//!
//! Either attaches an existing region (`--region ID`) or creates one (`--caches K`) and prints
//! `region <id>` so that `gfcache-cache --region <id> --slot <k> ...` processes can serve it.
//! Prints `listening on <addr>` once ready and serves until SIGTERM or SIGINT, then drains.
//!
//! Its flags set fields of [`proxy_core::ProxySettings`], the type behind the supervisor's
//! `[proxy]` section: a flag left out keeps that type's default, and the same validator runs.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use proxy_core::{Proxy, ProxyConfig, ProxySettings};

#[derive(Parser, Debug)]
#[command(
    name = "gfcache-proxy",
    about = "Run one gfcache proxy outside the supervisor (defaults: the README's [proxy] table)"
)]
struct Args {
    /// The region to attach, `<shmid>.<nonce-hex>`; without it a region is created.
    #[arg(long, conflicts_with_all = ["caches", "segments", "segment_size"])]
    region: Option<ipc::RegionId>,
    /// Creating a region: the number of cache slots.
    #[arg(long, default_value_t = 1)]
    caches: u32,
    /// Creating a region: the number of segments.
    #[arg(long)]
    segments: Option<u32>,
    /// Creating a region: bytes per segment (e.g. 1MiB).
    #[arg(long, value_parser = settings::parse_size)]
    segment_size: Option<u64>,
    /// This proxy's slot.
    #[arg(long, default_value_t = 0)]
    slot: u32,
    /// Share the port with other proxies (SO_REUSEPORT).
    #[arg(long)]
    reuse_port: bool,
    /// The caches serve the same data (a read-only directory or a pack): a path whose cache
    /// cannot answer is asked of the next cache before the origin. Marks every cache slot.
    #[arg(long)]
    shared_backend: bool,
    /// proxy.listen (port 0 for any).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// proxy.threads.
    #[arg(long)]
    threads: Option<usize>,
    /// proxy.max_threads.
    #[arg(long)]
    max_threads: Option<usize>,
    /// proxy.header_timeout (e.g. 5s).
    #[arg(long, value_parser = settings::parse_duration)]
    header_timeout: Option<Duration>,
    /// proxy.send_timeout (e.g. 30s).
    #[arg(long, value_parser = settings::parse_duration)]
    send_timeout: Option<Duration>,
    /// proxy.max_connections.
    #[arg(long)]
    max_connections: Option<usize>,
    /// proxy.origin; without it a miss is FILE_NOT_FOUND.
    #[arg(long)]
    origin: Option<String>,
    /// proxy.cache_timeout (e.g. 500ms).
    #[arg(long, value_parser = settings::parse_duration)]
    cache_timeout: Option<Duration>,
    /// proxy.origin_timeout.
    #[arg(long, value_parser = settings::parse_duration)]
    origin_timeout: Option<Duration>,
    /// proxy.max_object_size (e.g. 64MiB).
    #[arg(long, value_parser = settings::parse_size)]
    max_object_size: Option<u64>,
    /// proxy.default_ttl: freshness of an origin answer that says nothing (e.g. 5m).
    #[arg(long, value_parser = settings::parse_duration)]
    default_ttl: Option<Duration>,
    /// proxy.negative_ttl: store 404 and 410 answers this long.
    #[arg(long, value_parser = settings::parse_duration)]
    negative_ttl: Option<Duration>,
    /// proxy.stale_while_revalidate.
    #[arg(long, value_parser = settings::parse_duration)]
    stale_while_revalidate: Option<Duration>,
    /// proxy.stale_if_error.
    #[arg(long, value_parser = settings::parse_duration)]
    stale_if_error: Option<Duration>,
    /// How long in-flight transfers may take after SIGTERM (supervisor.shutdown_timeout).
    #[arg(long, value_parser = settings::parse_duration)]
    shutdown_timeout: Option<Duration>,
}

impl Args {
    fn settings(&self) -> ProxySettings {
        let mut s = ProxySettings::default();
        set(&mut s.listen, self.listen);
        set(&mut s.threads, self.threads);
        set(&mut s.max_threads, self.max_threads);
        set(&mut s.header_timeout, self.header_timeout);
        set(&mut s.send_timeout, self.send_timeout);
        set(&mut s.max_connections, self.max_connections);
        set(&mut s.cache_timeout, self.cache_timeout);
        set(&mut s.origin_timeout, self.origin_timeout);
        set(&mut s.max_object_size, self.max_object_size);
        set(&mut s.default_ttl, self.default_ttl);
        set(&mut s.stale_while_revalidate, self.stale_while_revalidate);
        set(&mut s.stale_if_error, self.stale_if_error);
        s.negative_ttl = self.negative_ttl.or(s.negative_ttl);
        s.origin = self.origin.clone();
        s
    }

    fn region(&self) -> anyhow::Result<ipc::Region> {
        if let Some(id) = self.region {
            return ipc::Region::attach(id).with_context(|| format!("attaching region {id}"));
        }
        let defaults = supervisor::config::IpcSettings::default();
        let config = ipc::RegionConfig {
            segments: self.segments.unwrap_or(defaults.segments),
            segment_size: usize::try_from(self.segment_size.unwrap_or(defaults.segment_size))
                .context("--segment-size")?,
            cache_slots: self.caches,
            proxy_slots: self.slot + 1,
        };
        let region = ipc::Region::create(&config, None).context("creating the region")?;
        println!("region {}", region.id());
        Ok(region)
    }
}

fn set<T>(field: &mut T, flag: Option<T>) {
    if let Some(value) = flag {
        *field = value;
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    gfcache::raise_open_files_limit();
    let stop = gfcache::signals::stop_flag().context("installing the signal handlers")?;
    let config = ProxyConfig {
        slot: ipc::ProxySlot::from_raw(args.slot),
        reuse_port: args.reuse_port,
        settings: args.settings(),
    };
    config.validate()?;
    let drain_limit = args
        .shutdown_timeout
        .unwrap_or(supervisor::config::SupervisorSettings::default().shutdown_timeout);
    let region = Arc::new(args.region()?);
    for slot in 0..region.config().cache_slots {
        let slot = ipc::CacheSlot::from_raw(slot);
        proxy_core::routing::set_shares_data(&region, slot, args.shared_backend);
    }
    let proxy = Proxy::start(region, config)?;
    println!("listening on {}", proxy.local_addr());
    std::io::stdout().flush().context("stdout")?;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !proxy.join_timeout(drain_limit)? {
        tracing::warn!("transfers still in flight at exit");
    }
    Ok(())
}

fn main() -> ExitCode {
    gfcache::main_of("gfcache-proxy", || run(Args::parse()))
}
