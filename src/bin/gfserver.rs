//! `gfserver`: serves the files under a root directory (or of a course-format listing) with the
//! GetFile protocol.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use gfprotocol::{BodyMode, FileServer, Handler, Server, ServerConfig, DEFAULT_INLINE_MAX_SIZE};

/// Serve files with the GetFile protocol.
#[derive(Parser, Debug)]
#[command(
    version,
    about = "A plain GetFile file server (the baseline gfcache is measured against)"
)]
struct Args {
    /// Serve the files beneath this directory (nothing outside it is reachable).
    #[arg(
        short,
        long,
        required_unless_present = "content",
        conflicts_with = "content"
    )]
    root: Option<PathBuf>,
    /// Serve a course-format listing instead: one `<path> <file>` per line.
    #[arg(short = 'm', long)]
    content: Option<PathBuf>,
    /// Address to listen on.
    #[arg(short, long, default_value = "127.0.0.1:10823")]
    listen: SocketAddr,
    /// Worker threads that always run.
    #[arg(short, long, default_value_t = ServerConfig::default().threads)]
    threads: usize,
    /// Worker threads at most: more start while every worker is busy (slow readers hold
    /// theirs) and exit after 10 s idle. At least --threads.
    #[arg(long, default_value_t = ServerConfig::default().max_threads)]
    max_threads: usize,
    /// Complete requests waiting for a worker.
    #[arg(long, default_value_t = ServerConfig::default().queue_depth)]
    queue_depth: usize,
    /// Open connections at most; one more is closed at once.
    #[arg(long, default_value_t = ServerConfig::default().max_connections)]
    max_connections: usize,
    /// The listen backlog.
    #[arg(long, default_value_t = ServerConfig::default().backlog)]
    backlog: i32,
    /// Seconds a client has to send its request header.
    #[arg(long, default_value_t = ServerConfig::default().header_timeout.as_secs_f64())]
    header_timeout: f64,
    /// Seconds a response write may make no progress (a client that stopped reading) before
    /// the connection is closed.
    #[arg(long, default_value_t = ServerConfig::default().send_timeout.as_secs_f64())]
    send_timeout: f64,
    /// Set SO_REUSEPORT (several servers on one port).
    #[arg(long)]
    reuse_port: bool,
    /// Also serve the files over HTTP/1.1 on this address.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Seconds a kept-alive HTTP connection may wait for its next request.
    #[arg(long, default_value_t = ServerConfig::default().http_keepalive_timeout.as_secs_f64())]
    http_keepalive_timeout: f64,
    /// How file bodies are sent: sendfile(2), or read(2) + send(2).
    #[arg(long, value_enum, default_value_t = SendMode::Sendfile)]
    send_mode: SendMode,
    /// Files of at most this many bytes are read and answered by the front door thread itself,
    /// with no hand-off to a worker (0: never; at most 1 MiB). Set 0 for a root on a slow or
    /// network file system: such a read holds up every connection while it waits.
    #[arg(long, default_value_t = DEFAULT_INLINE_MAX_SIZE)]
    inline_max_size: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SendMode {
    Sendfile,
    ReadWrite,
}

/// A positive number of seconds.
fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds (got {value})"))
}

fn main() -> anyhow::Result<()> {
    gfcache::init_logging_at("info");
    let args = Args::parse();
    gfcache::raise_open_files_limit();
    let files = match (&args.root, &args.content) {
        (Some(root), _) => FileServer::from_root(root)?,
        (None, Some(listing)) => FileServer::from_listing(listing)?,
        (None, None) => anyhow::bail!("give --root DIR or --content FILE"),
    };
    let mode = match args.send_mode {
        SendMode::Sendfile => BodyMode::Sendfile,
        SendMode::ReadWrite => BodyMode::ReadWrite,
    };
    let files = files
        .with_body_mode(mode)
        .with_inline_max_size(args.inline_max_size)
        .context("--inline-max-size")?;
    let handler: Arc<dyn Handler> = Arc::new(files);
    let header_timeout = seconds(args.header_timeout, "--header-timeout")?;
    let send_timeout = seconds(args.send_timeout, "--send-timeout")?;
    let config = ServerConfig {
        listen: args.listen,
        threads: args.threads,
        max_threads: args.max_threads,
        queue_depth: args.queue_depth,
        max_connections: args.max_connections,
        backlog: args.backlog,
        header_timeout,
        send_timeout,
        reuse_port: args.reuse_port,
        http_listen: args.http_listen,
        http_keepalive_timeout: seconds(args.http_keepalive_timeout, "--http-keepalive-timeout")?,
        ..ServerConfig::default()
    };
    let server = Server::bind(config, handler)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    gfcache::signals::shutdown_on_signals(server.shutdown_handle())
        .context("installing signal handlers")?;
    tracing::info!(listen = %server.local_addr(), threads = args.threads, "gfserver ready");
    // Scripts and tests started with port 0 read the real address from this line.
    println!("listening on {}", server.local_addr());
    if let Some(http) = server.http_addr() {
        println!("http listening on {http}");
    }
    std::io::stdout().flush().context("writing to stdout")?;
    server.run()?;
    Ok(())
}
