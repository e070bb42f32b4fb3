//! `gfcache-cache`: one cache process run by hand or by tests, outside the supervisor.
//!
//! Attaches an existing region, opens a backend and serves one cache slot until SIGTERM or
//! SIGINT, then drains and exits 0.
//!
//! Its flags set fields of [`cache_backends::CacheSettings`], the type behind the supervisor's
//! `[cache]` section: a flag left out keeps that type's default, and the same validator runs.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cache_backends::{
    BackendKind, CacheProcessConfig, CacheSettings, DirectorySettings, MemorySettings, PackSettings,
};
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
    about = "Serve one gfcache cache slot from a backend (defaults: the README's [cache] table)"
)]
struct Args {
    /// The region to attach, `<shmid>.<nonce-hex>`.
    #[arg(long)]
    region: ipc::RegionId,
    /// The cache slot to serve.
    #[arg(long, default_value_t = 0)]
    slot: u32,
    /// cache.backend.
    #[arg(long, value_enum)]
    backend: Kind,
    /// cache.directory.root.
    #[arg(long)]
    root: Option<PathBuf>,
    /// cache.directory.content: a `<path> <file>` listing instead of a root.
    #[arg(long)]
    content: Option<PathBuf>,
    /// cache.directory.writable.
    #[arg(long)]
    writable: bool,
    /// cache.directory.max_size (e.g. 1GiB).
    #[arg(long, value_parser = settings::parse_size)]
    max_size: Option<u64>,
    /// cache.directory.ttl: how long files put in place stay fresh (e.g. 10m); never stale
    /// without it.
    #[arg(long, value_parser = settings::parse_duration)]
    ttl: Option<Duration>,
    /// cache.memory.capacity (e.g. 256MiB).
    #[arg(long, value_parser = settings::parse_size)]
    capacity: Option<u64>,
    /// cache.memory.max_object_size.
    #[arg(long, value_parser = settings::parse_size)]
    max_object_size: Option<u64>,
    /// cache.pack.path.
    #[arg(long)]
    pack: Option<PathBuf>,
    /// cache.workers.
    #[arg(long)]
    workers: Option<usize>,
    /// cache.transfer_timeout (e.g. 5s).
    #[arg(long, value_parser = settings::parse_duration)]
    transfer_timeout: Option<Duration>,
    /// How long in-flight transfers may take after SIGTERM (supervisor.shutdown_timeout).
    #[arg(long, value_parser = settings::parse_duration)]
    shutdown_timeout: Option<Duration>,
}

impl Args {
    fn settings(&self) -> CacheSettings {
        let mut s = CacheSettings::default();
        if let Some(workers) = self.workers {
            s.workers = workers;
        }
        if let Some(timeout) = self.transfer_timeout {
            s.transfer_timeout = timeout;
        }
        match self.backend {
            Kind::Directory => {
                s.backend = Some(BackendKind::Directory);
                s.directory = Some(DirectorySettings {
                    root: self.root.clone(),
                    content: self.content.clone(),
                    writable: self.writable,
                    max_size: self.max_size,
                    ttl: self.ttl,
                });
            }
            Kind::Memory => {
                s.backend = Some(BackendKind::Memory);
                let defaults = MemorySettings::default();
                s.memory = Some(MemorySettings {
                    capacity: self.capacity.unwrap_or(defaults.capacity),
                    max_object_size: self.max_object_size,
                });
            }
            Kind::Pack => {
                s.backend = Some(BackendKind::Pack);
                s.pack = Some(PackSettings {
                    path: self.pack.clone(),
                });
            }
        }
        s
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let stop = gfcache::signals::stop_flag().context("installing the signal handlers")?;
    let settings = args.settings();
    let problems: Vec<String> = settings
        .validate()
        .into_iter()
        .map(|p| format!("cache.{p}"))
        .collect();
    if !problems.is_empty() {
        anyhow::bail!("invalid settings: {}", problems.join("; "));
    }
    let backend = settings
        .backend_config()
        .context("the backend's settings are incomplete")?;
    let drain_limit = args
        .shutdown_timeout
        .unwrap_or(supervisor::config::SupervisorSettings::default().shutdown_timeout);
    let config =
        CacheProcessConfig::new(ipc::CacheSlot::from_raw(args.slot), &settings, drain_limit);
    cache_backends::run_cache_slot(args.region, &backend, &config, &stop)?;
    Ok(())
}

fn main() -> ExitCode {
    gfcache::main_of("gfcache-cache", || run(Args::parse()))
}
