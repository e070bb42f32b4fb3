//! gfsupervisor: starts and supervises the gfcache proxy and cache processes (see docs/supervisor.md).
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use supervisor::{commands, supervise, Role, DEFAULT_CONFIG_PATH};

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
    /// Shows the running supervisor and its children.
    Status {
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Asks the running supervisor to re-read the config (same as SIGHUP).
    Reload,
    /// Removes the IPC objects left by a run that died (refused while it runs).
    Cleanup,
    /// Validates the config and exits.
    CheckConfig,
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gfsupervisor: {e:#}");
            match e.downcast_ref::<supervisor::Error>() {
                Some(supervisor::Error::NotRunning { .. }) => ExitCode::from(3),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_path();
    match cli.command {
        Command::Start => supervise::start(config)?,
        Command::Stop => {
            let pid = commands::stop(config)?;
            println!("gfsupervisor (pid {pid}) stopped");
        }
        Command::Status { json } => {
            let report = commands::status(config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render_table());
            }
        }
        Command::Reload => {
            let outcome = commands::reload(config)?;
            println!("{outcome}");
            return Ok(if outcome.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Cleanup => {
            let report = commands::cleanup(config)?;
            println!(
                "removed {} IPC object(s); skipped {} no longer ours",
                report.removed.len(),
                report.skipped.len()
            );
        }
        Command::CheckConfig => println!("{}", commands::check_config(config)?),
        Command::Role { role, slot } => {
            let _span = tracing::info_span!("child", role = role.as_str(), slot).entered();
            supervisor::role::run_role(role, slot)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
