//! gfsupervisor: starts and supervises the gfcache proxy and cache processes (docs/supervisor.md).
#![forbid(unsafe_code)]
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use supervisor::commands::{self, ClientCommand};
use supervisor::{supervise, Role, DEFAULT_CONFIG_PATH};

#[derive(Parser)]
#[command(
    name = "gfsupervisor",
    version,
    about = "Runs and supervises the gfcache proxy and caches"
)]
struct Cli {
    /// The config file (relative paths inside it resolve against the current directory).
    #[arg(short, long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the supervisor in the foreground until SIGTERM or SIGINT.
    Start,
    /// Stops the running supervisor of the config and waits for it to exit.
    Stop,
    /// Shows the running supervisor and its children (exit code 3 if none runs).
    Status {
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Asks the running supervisor to re-read the config (same as SIGHUP) and prints its verdict.
    Reload,
    /// Removes the IPC objects left by a run that died (refused while it runs).
    Cleanup,
    /// Validates the config and exits.
    CheckConfig,
    /// Removes objects from the caches of the running supervisor: each PATH, and everything
    /// under each --prefix (exit code 1 if a cache did not answer, 2 for a bad path, 3 if none
    /// runs).
    #[command(arg_required_else_help = true)]
    Purge {
        /// GetFile paths to remove (`/dir/file.txt`).
        #[arg(value_name = "PATH")]
        paths: Vec<String>,
        /// Removes every object whose path starts with PREFIX (`/img/` for a directory);
        /// may be repeated.
        #[arg(long, value_name = "PREFIX")]
        prefix: Vec<String>,
        /// How long each cache may take to answer ("10s", "500ms").
        #[arg(long, default_value = "10s", value_parser = purge_timeout)]
        timeout: std::time::Duration,
    },
    /// Internal: the child process roles.
    #[command(hide = true)]
    Role {
        #[arg(value_parser = |s: &str| s.parse::<Role>())]
        role: Role,
        #[arg(long)]
        slot: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    gfcache::init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gfsupervisor: {e:#}");
            match e.downcast_ref::<supervisor::Error>() {
                Some(supervisor::Error::NotRunning { .. }) => ExitCode::from(3),
                Some(supervisor::Error::Purge(
                    supervisor::purge::PurgeError::BadPath { .. }
                    | supervisor::purge::PurgeError::NothingToPurge,
                )) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let client = match cli.command {
        Command::Start => {
            // Children inherit the raised limit.
            gfcache::raise_open_files_limit();
            return Ok(supervise::start(&cli.config).map(|()| ExitCode::SUCCESS)?);
        }
        Command::Role { role, slot } => {
            gfcache::raise_open_files_limit();
            let _span = tracing::info_span!("child", role = role.as_str(), slot).entered();
            let stop = gfcache::signals::stop_flag()?;
            supervisor::role::run_role(role, slot, &stop)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Purge {
            paths,
            prefix,
            timeout,
        } => {
            let (text, complete) = commands::run_purge(&cli.config, &paths, &prefix, timeout)?;
            return print(&text, complete);
        }
        Command::Stop => ClientCommand::Stop,
        Command::Status { json } => ClientCommand::Status { json },
        Command::Reload => ClientCommand::Reload,
        Command::Cleanup => ClientCommand::Cleanup,
        Command::CheckConfig => ClientCommand::CheckConfig,
    };
    let (text, ok) = commands::run_client(client, &cli.config)?;
    print(&text, ok)
}

fn purge_timeout(text: &str) -> Result<std::time::Duration, String> {
    match settings::parse_duration(text)? {
        d if d.is_zero() => Err("must not be zero".to_string()),
        d => Ok(d),
    }
}

/// Writes a client command's text to stdout; the exit code says whether it succeeded.
fn print(text: &str, ok: bool) -> anyhow::Result<ExitCode> {
    // A closed pipe (`| head`) is not an error.
    match std::io::stdout().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
