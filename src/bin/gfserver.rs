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
use gfprotocol::{BodyMode, FileServer, Handler, Server, ServerConfig};

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
    /// Worker threads.
    #[arg(short, long, default_value_t = 16)]
    threads: usize,
    /// Complete requests waiting for a worker.
    #[arg(long, default_value_t = 1024)]
    queue_depth: usize,
    /// Open connections at most; one more is closed at once.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// The listen backlog.
    #[arg(long, default_value_t = 1024)]
    backlog: i32,
    /// Seconds a client has to send its request header.
    #[arg(long, default_value_t = 5.0)]
    header_timeout: f64,
    /// Set SO_REUSEPORT (several servers on one port).
    #[arg(long)]
    reuse_port: bool,
    /// How file bodies are sent: sendfile(2), or read(2) + send(2).
    #[arg(long, value_enum, default_value_t = SendMode::Sendfile)]
    send_mode: SendMode,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum SendMode {
    Sendfile,
    ReadWrite,
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
    let handler: Arc<dyn Handler> = Arc::new(files.with_body_mode(mode));
    let header_timeout = Duration::try_from_secs_f64(args.header_timeout)
        .context("--header-timeout must be a positive number of seconds")?;
    let config = ServerConfig {
        listen: args.listen,
        threads: args.threads,
        queue_depth: args.queue_depth,
        max_connections: args.max_connections,
        backlog: args.backlog,
        header_timeout,
        reuse_port: args.reuse_port,
        ..ServerConfig::default()
    };
    let server = Server::bind(config, handler)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    gfcache::signals::shutdown_on_signals(server.shutdown_handle())
        .context("installing signal handlers")?;
    tracing::info!(listen = %server.local_addr(), threads = args.threads, "gfserver ready");
    // Scripts and tests started with port 0 read the real address from this line.
    println!("listening on {}", server.local_addr());
    std::io::stdout().flush().context("writing to stdout")?;
    server.run()?;
    Ok(())
}
