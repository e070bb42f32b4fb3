//! `gfdfs`: the gfdfs server, its client commands and the two-way mount. The logic lives in
//! the `dfs` crate (`dfs::commands`); this file parses arguments and maps errors to exit codes
//! (docs/dfs.md lists them).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dfs::commands::{self, Output, Target};

/// A weakly consistent distributed file system over gRPC.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct Remote {
    /// The server, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7070", env = "GFDFS_SERVER")]
    server: String,
    /// Give up after this long (e.g. 500ms, 5s): exit code 6 (DEADLINE_EXCEEDED).
    #[arg(long, value_parser = humantime::parse_duration)]
    deadline: Option<Duration>,
}

impl Remote {
    fn target(&self) -> Target {
        Target {
            server: self.server.clone(),
            deadline: self.deadline,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the files under a root directory; prints `listening on ADDR` when bound.
    Server {
        /// The directory served (created when missing).
        #[arg(long)]
        root: PathBuf,
        /// The gRPC address (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Serve Prometheus metrics at /metrics on this address.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// How long a write lock lasts (a crashed writer holds it no longer).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        lock_lease: Duration,
    },
    /// Upload a local file (with its mtime); nothing moves when the server has the same content.
    Store {
        /// The local file.
        local: PathBuf,
        /// The path on the server (default: the local file name).
        #[arg(long = "as")]
        as_path: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Download a file (atomically; given the server's mtime).
    Fetch {
        /// The path on the server.
        path: String,
        /// Where to write (`-` for stdout; default: the file name in the current directory).
        #[arg(short)]
        o: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a file (it leaves a tombstone: no client brings it back with an older copy).
    Delete {
        /// The path on the server.
        path: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List every file: size, mtime, CRC-32C, path.
    List {
        /// One JSON array of {path, size, mtime, mtime_rfc3339, checksum}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// One file's size, mtime and CRC-32C.
    Stat {
        /// The path on the server.
        path: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Keep a local directory and the server in sync, both ways, until SIGINT or SIGTERM.
    Mount {
        /// The local directory (created when missing).
        dir: PathBuf,
        /// The server, HOST:PORT.
        #[arg(long, default_value = "127.0.0.1:7070", env = "GFDFS_SERVER")]
        server: String,
        /// Quiet time after a write before a file is uploaded (a close uploads at once).
        #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
        debounce: Duration,
    },
}

fn run(command: Command) -> dfs::Result<()> {
    match command {
        Command::Server {
            root,
            listen,
            metrics_listen,
            lock_lease,
        } => commands::server(dfs::ServerConfig {
            root,
            listen,
            metrics_listen,
            lock_lease,
        }),
        Command::Store {
            local,
            as_path,
            remote,
        } => {
            let path = match as_path {
                Some(path) => path,
                None => commands::default_remote_name(&local)?,
            };
            eprintln!("{}", commands::store(&remote.target(), &local, &path)?);
            Ok(())
        }
        Command::Fetch { path, o, remote } => {
            let output = match o {
                Some(file) if file.as_os_str() == "-" => Output::Stdout,
                Some(file) => Output::File(file),
                None => Output::File(PathBuf::from(commands::default_remote_name(
                    std::path::Path::new(&path),
                )?)),
            };
            commands::fetch(&remote.target(), &path, &output).map(drop)
        }
        Command::Delete { path, remote } => commands::delete(&remote.target(), &path),
        Command::List { json, remote } => {
            let entries = commands::list(&remote.target())?;
            if json {
                let all: Vec<_> = entries
                    .iter()
                    .map(|(path, meta)| commands::entry_json(path, meta))
                    .collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                for (path, meta) in &entries {
                    println!("{}", commands::entry_line(path, meta));
                }
            }
            Ok(())
        }
        Command::Stat { path, json, remote } => {
            let meta = commands::stat(&remote.target(), &path)?;
            let shown = path.strip_prefix('/').unwrap_or(&path);
            if json {
                println!("{}", commands::entry_json(shown, &meta));
            } else {
                println!("{}", commands::entry_line(shown, &meta));
            }
            Ok(())
        }
        Command::Mount {
            dir,
            server,
            debounce,
        } => commands::mount(dfs::mount::MountConfig {
            dir,
            server,
            debounce,
        }),
    }
}

fn main() -> ExitCode {
    gfcache::init_logging();
    let args = Args::parse();
    match run(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gfdfs: {error}");
            ExitCode::from(commands::exit_code(&error))
        }
    }
}
