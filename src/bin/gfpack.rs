//! `gfpack`: build, list, verify and read pack files (docs/pack-format.md).
//!
//! Exit codes: 0 success; 1 the pack is damaged (it does not open, or `verify` found a problem)
//! or `get` did not find the path; 2 any other error (usage, I/O).
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cache_backends::{CacheBackend, PackBackend};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gfpack",
    version,
    about = "Build, list, verify and read gfcache pack files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Packs every regular file under DIR into a new pack (written to a temp file, fsynced, renamed).
    Build {
        /// The directory to pack; object paths are `/` + the path under it.
        dir: PathBuf,
        /// The pack file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// How long the objects stay fresh after the build (e.g. 10m, 1d); without it they
        /// never go stale. A proxy with an origin revalidates them once stale.
        #[arg(long, value_parser = settings::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Lists the objects: length, CRC32C and path, one per line.
    Ls {
        /// The pack file.
        pack: PathBuf,
    },
    /// Checks the structure and every object's checksum; exits 1 on any damage.
    Verify {
        /// The pack file.
        pack: PathBuf,
    },
    /// Writes one object's bytes to stdout.
    Get {
        /// The pack file.
        pack: PathBuf,
        /// The object's GetFile path, e.g. /images/a.jpg.
        path: String,
    },
}

/// An outcome that is not an error but still a non-zero exit.
enum Outcome {
    Done,
    Damaged,
    NotFound,
}

fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Build { dir, output, ttl } => {
            let options = cache_backends::BuildOptions { ttl };
            let report = cache_backends::build_pack_with(&dir, &output, &options)?;
            for (file, reason) in &report.skipped {
                eprintln!("gfpack: skipped {}: {reason}", file.display());
            }
            eprintln!(
                "gfpack: {} objects, {} bytes in {} ({} bytes)",
                report.objects,
                report.bytes,
                output.display(),
                report.pack_len
            );
            Ok(Outcome::Done)
        }
        Command::Ls { pack } => {
            let pack = PackBackend::open(&pack)?;
            let mut out = std::io::stdout().lock();
            for object in pack.objects() {
                writeln!(
                    out,
                    "{}\t{:08x}\t{}",
                    object.len, object.crc32c, object.path
                )?;
            }
            out.flush()?;
            Ok(Outcome::Done)
        }
        Command::Verify { pack } => {
            let report = cache_backends::verify_pack(&pack)?;
            for problem in &report.problems {
                eprintln!("gfpack: {}: {problem}", pack.display());
            }
            if report.problems.is_empty() {
                println!(
                    "{}: ok, {} objects, {} bytes",
                    pack.display(),
                    report.objects,
                    report.bytes
                );
                Ok(Outcome::Done)
            } else {
                Ok(Outcome::Damaged)
            }
        }
        Command::Get { pack, path } => {
            let pack = PackBackend::open(&pack)?;
            let Some(object) = pack.get(&path)? else {
                eprintln!("gfpack: {path}: not found in {}", pack.path().display());
                return Ok(Outcome::NotFound);
            };
            let mut out = std::io::stdout().lock();
            cache_backends::write_object(object.as_ref(), &mut out)
                .with_context(|| format!("writing {path} to stdout"))?;
            out.flush()?;
            Ok(Outcome::Done)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Damaged | Outcome::NotFound) => ExitCode::from(1),
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gfpack: {}", gfcache::describe(&error));
            let damaged = matches!(
                error.downcast_ref::<cache_backends::Error>(),
                Some(
                    cache_backends::Error::CorruptPack { .. }
                        | cache_backends::Error::PackWritable { .. }
                )
            );
            ExitCode::from(if damaged { 1 } else { 2 })
        }
    }
}

/// A reader that went away (`gfpack get ... | head`) is not a failure.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
