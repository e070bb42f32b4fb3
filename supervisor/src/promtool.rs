//! Runs `promtool check metrics` on an exposition, for tests (unit and black-box).

use std::io::Write;
use std::process::{Command, Stdio};

/// Why a check did not pass.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum PromtoolError {
    /// promtool is not on PATH.
    #[error("promtool is not on PATH (Debian package: prometheus)")]
    Missing,
    /// promtool could not be run.
    #[error("running promtool: {0}")]
    Io(#[from] std::io::Error),
    /// promtool found problems.
    #[error("promtool check metrics failed (exit {code:?}):\n{output}")]
    Problems {
        /// Its exit code.
        code: Option<i32>,
        /// What it printed.
        output: String,
    },
}

/// Pipes `text` through `promtool check metrics`; Ok when it exits 0 and prints nothing.
pub fn check_metrics(text: &str) -> Result<(), PromtoolError> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(PromtoolError::Missing),
        Err(e) => return Err(e.into()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && output.trim().is_empty() {
        Ok(())
    } else {
        Err(PromtoolError::Problems {
            code: out.status.code(),
            output,
        })
    }
}
