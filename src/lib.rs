//! What the gfcache binaries share and the libraries must not carry: logging set-up, error
//! rendering and signal wiring. The binaries themselves live in `src/bin`.
#![forbid(unsafe_code)]

use std::io::IsTerminal;

pub mod signals;

/// Logs to stderr through `tracing`, at `RUST_LOG` or else `default_level`, in colour only on a
/// terminal.
pub fn init_logging_at(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// [`init_logging_at`] `info`.
pub fn init_logging() {
    init_logging_at("info");
}

/// The error and its causes on one line, leaving out a cause whose text its parent already
/// shows.
pub fn describe(error: &anyhow::Error) -> String {
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

/// The `main` of a role binary: logs at `info`, runs `run`, and on failure prints
/// `name: error` and exits 1.
pub fn main_of(name: &str, run: impl FnOnce() -> anyhow::Result<()>) -> std::process::ExitCode {
    init_logging();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {}", describe(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: every client connection, idle ones
/// included, is a descriptor, and the usual soft limit (1024) is far below `max_connections`.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open files limit"),
    }
}
