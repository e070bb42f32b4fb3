//! `gfclient`: downloads one file, or generates load, with the GetFile protocol.
#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use gfprotocol::load::{self, Limit, LoadConfig};
use gfprotocol::{Client, Error, Status};

/// Exit codes of `gfclient get`.
const EXIT_OK: u8 = 0;
const EXIT_IO: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_ERROR: u8 = 4;
const EXIT_INVALID: u8 = 5;

/// GetFile client.
#[derive(Parser, Debug)]
#[command(version, about = "GetFile client: download one file, or generate load")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Download one file. Exit codes: 0 OK, 3 FILE_NOT_FOUND, 4 ERROR, 5 INVALID or a
    /// malformed or short response, 2 usage error or no connection, 1 output failure.
    Get {
        #[command(flatten)]
        common: Common,
        /// The path to fetch (starts with '/').
        path: String,
        /// Write the body here instead of stdout (only a complete OK body is written).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Generate load and print a summary. Exit code 1 if any request failed or did not
    /// verify.
    ///
    /// Event-driven like wrk: CONNECTIONS requests are kept in flight, each on its own
    /// connection (connect, send, read the whole answer, close, connect again), spread over
    /// THREADS event-loop threads.
    Load {
        #[command(flatten)]
        common: Common,
        /// Paths to request, one per line (as the course's workload.txt).
        #[arg(short, long)]
        workload: PathBuf,
        /// Connections kept in flight (the concurrency), one request each.
        #[arg(short, long, default_value_t = 32)]
        connections: usize,
        /// Event-loop threads sharing the connections (at most CONNECTIONS are used).
        #[arg(short, long, default_value_t = 2)]
        threads: usize,
        /// Total requests.
        #[arg(
            short,
            long,
            required_unless_present = "duration",
            conflicts_with = "duration"
        )]
        requests: Option<u64>,
        /// Run for this many seconds.
        #[arg(short, long)]
        duration: Option<f64>,
        /// Compare every body with DIR/path.
        #[arg(long)]
        verify: Option<PathBuf>,
        /// Also print the summary as one JSON object on the last line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// Server address.
    #[arg(short, long, default_value = "127.0.0.1:10823")]
    server: String,
    /// Seconds allowed to connect (for `load`: until the request is written).
    #[arg(long, default_value_t = 5.0)]
    connect_timeout: f64,
    /// Seconds allowed for each read or write (for `load`: the longest silence of a connection).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

impl Common {
    fn client(&self) -> Result<Client, String> {
        let seconds = |v: f64, name: &str| {
            Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("--{name} must be a positive number of seconds"))
        };
        Ok(Client {
            connect_timeout: seconds(self.connect_timeout, "connect-timeout")?,
            io_timeout: seconds(self.timeout, "timeout")?,
        })
    }
}

fn main() -> ExitCode {
    gfcache::init_logging_at("warn");
    let code = match Cli::parse().command {
        Command::Get {
            common,
            path,
            output,
        } => get(&common, &path, output.as_deref()),
        Command::Load {
            common,
            workload,
            connections,
            threads,
            requests,
            duration,
            verify,
            json,
        } => {
            let limit = match (requests, duration) {
                (Some(n), _) => Ok(Limit::Requests(n)),
                (None, Some(secs)) => Duration::try_from_secs_f64(secs)
                    .map(Limit::Duration)
                    .map_err(|_| "--duration must be a positive number of seconds".to_owned()),
                (None, None) => Err("give --requests or --duration".to_owned()),
            };
            limit
                .and_then(|limit| {
                    let concurrency = Concurrency {
                        connections,
                        threads,
                    };
                    load_run(&common, &workload, concurrency, limit, verify, json)
                })
                .unwrap_or_else(|message| {
                    eprintln!("gfclient: {message}");
                    EXIT_USAGE
                })
        }
    };
    ExitCode::from(code)
}

fn get(common: &Common, path: &str, output: Option<&Path>) -> u8 {
    let client = match common.client() {
        Ok(c) => c,
        Err(message) => return usage(&message),
    };
    if let Err(e) = gfprotocol::codec::validate_path(path) {
        return usage(&format!("bad path {path:?}: {e}"));
    }
    let result = match output {
        None => to_stdout(&client, &common.server, path),
        Some(file) if file.as_os_str() == "-" => to_stdout(&client, &common.server, path),
        Some(file) => match Target::of(file) {
            Target::Stream => match std::fs::OpenOptions::new().write(true).open(file) {
                Ok(f) => {
                    let mut out = BufWriter::new(f);
                    client.fetch(&common.server, path, &mut out)
                }
                Err(e) => {
                    eprintln!("gfclient: cannot open {}: {e}", file.display());
                    return EXIT_IO;
                }
            },
            Target::RegularOrAbsent => match to_file(&client, &common.server, path, file) {
                Ok(result) => result,
                Err(code) => return code,
            },
            Target::Refused(what) => {
                eprintln!(
                    "gfclient: will not write to {}: it is {what}",
                    file.display()
                );
                return EXIT_IO;
            }
        },
    };
    let (code, line) = match result {
        Ok(o) => match o.status {
            Status::Ok => (EXIT_OK, format!("OK {} bytes", o.received)),
            Status::FileNotFound => (EXIT_NOT_FOUND, "FILE_NOT_FOUND".to_owned()),
            Status::Error => (EXIT_ERROR, "ERROR".to_owned()),
            Status::Invalid => (EXIT_INVALID, "INVALID".to_owned()),
        },
        Err(e @ Error::Connect { .. }) => (EXIT_USAGE, format!("NO CONNECTION: {e}")),
        Err(e @ Error::Output(_)) => (EXIT_IO, format!("OUTPUT FAILED: {e}")),
        Err(e) => (EXIT_INVALID, format!("INVALID: {e}")),
    };
    eprintln!("{line}");
    code
}

/// What `-o FILE` names, which decides how the download is written.
enum Target {
    /// A regular file, or nothing yet: written beside it and renamed over it on success.
    RegularOrAbsent,
    /// A character device, a FIFO or a socket (`/dev/null`, a terminal, a pipe): written
    /// straight into, never replaced.
    Stream,
    /// Something that can be neither (a directory).
    Refused(&'static str),
}

impl Target {
    fn of(file: &Path) -> Target {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata(file) {
            Err(_) => Target::RegularOrAbsent,
            Ok(meta) => {
                let kind = meta.file_type();
                if kind.is_file() {
                    Target::RegularOrAbsent
                } else if kind.is_char_device() || kind.is_fifo() || kind.is_socket() {
                    Target::Stream
                } else if kind.is_dir() {
                    Target::Refused("a directory")
                } else {
                    Target::Refused("neither a regular file nor a stream")
                }
            }
        }
    }
}

fn to_stdout(
    client: &gfprotocol::Client,
    server: &str,
    path: &str,
) -> Result<gfprotocol::FetchOutcome, Error> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    client.fetch(server, path, &mut out)
}

/// Written beside the target and renamed on success: a failed download neither leaves a
/// partial file nor destroys an existing one.
fn to_file(
    client: &gfprotocol::Client,
    server: &str,
    path: &str,
    file: &Path,
) -> Result<Result<gfprotocol::FetchOutcome, Error>, u8> {
    let part = part_path(file);
    let f = File::create(&part).map_err(|e| {
        eprintln!("gfclient: cannot create {}: {e}", part.display());
        EXIT_IO
    })?;
    let mut out = BufWriter::new(f);
    let result = client.fetch(server, path, &mut out);
    drop(out);
    let result = match result {
        Ok(o) if o.status == Status::Ok => std::fs::rename(&part, file)
            .map(|()| o)
            .map_err(Error::Output),
        other => other,
    };
    let _ = std::fs::remove_file(&part);
    Ok(result)
}

/// `FILE` -> `FILE.part-<pid>` in the same directory.
fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(format!(".part-{}", std::process::id()));
    PathBuf::from(name)
}

fn usage(message: &str) -> u8 {
    eprintln!("gfclient: {message}");
    EXIT_USAGE
}

/// `--connections` and `--threads` of `load`.
struct Concurrency {
    connections: usize,
    threads: usize,
}

fn load_run(
    common: &Common,
    workload: &Path,
    concurrency: Concurrency,
    limit: Limit,
    verify: Option<PathBuf>,
    json: bool,
) -> Result<u8, String> {
    let client = common.client()?;
    let paths = load::read_workload(workload).map_err(|e| e.to_string())?;
    if concurrency.connections == 0 {
        return Err("--connections must be at least 1".to_owned());
    }
    if concurrency.threads == 0 {
        return Err("--threads must be at least 1".to_owned());
    }
    // Every connection in flight is a descriptor.
    gfcache::raise_open_files_limit();
    let config = LoadConfig {
        server: common.server.clone(),
        paths,
        connections: concurrency.connections,
        threads: concurrency.threads,
        limit,
        verify,
        client,
        progress: LoadConfig::stderr_is_terminal(),
    };
    let summary = load::run(&config).map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    let _ = write!(stdout, "{}", summary.render());
    if json {
        let _ = writeln!(stdout, "{}", summary.to_json());
    }
    let _ = stdout.flush();
    Ok(if summary.failed + summary.verify_failed > 0 {
        EXIT_IO
    } else {
        EXIT_OK
    })
}
