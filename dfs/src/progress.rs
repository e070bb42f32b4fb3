//! Progress of large transfers, drawn on stderr only when it is a terminal.
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Told how many bytes moved.
pub trait Progress: Send {
    /// The transfer of `total` bytes begins (when the total was not known up front).
    fn start(&mut self, _total: u64) {}
    /// `bytes` more moved.
    fn advance(&mut self, bytes: u64);
    /// The transfer ended (successfully or not).
    fn finish(&mut self) {}
}

/// Tells nobody.
pub struct NoProgress;

impl Progress for NoProgress {
    fn advance(&mut self, _bytes: u64) {}
}

/// A one-line counter on stderr, redrawn at most every 100 ms: shown only on a terminal and
/// for transfers of at least [`TerminalProgress::MIN_SIZE`].
pub struct TerminalProgress {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
    enabled: bool,
}

impl TerminalProgress {
    /// Smaller transfers end before a counter would help.
    pub const MIN_SIZE: u64 = 8 << 20;

    /// A counter for `total` bytes of `label`.
    pub fn new(label: &str, total: u64) -> Self {
        TerminalProgress {
            label: label.to_string(),
            total,
            done: 0,
            started: Instant::now(),
            drawn: None,
            enabled: total >= Self::MIN_SIZE && std::io::stderr().is_terminal(),
        }
    }

    fn draw(&mut self) {
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let _ = write!(
            std::io::stderr(),
            "\r{}: {:.1}/{:.1} MiB ({:.0} MiB/s)  ",
            self.label,
            mib(self.done),
            mib(self.total),
            mib(self.done) / secs
        );
        self.drawn = Some(Instant::now());
    }
}

impl Progress for TerminalProgress {
    fn start(&mut self, total: u64) {
        self.total = total;
        self.enabled = total >= Self::MIN_SIZE && std::io::stderr().is_terminal();
    }

    fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        let due = self
            .drawn
            .is_none_or(|at| at.elapsed() >= Duration::from_millis(100));
        if self.enabled && due {
            self.draw();
        }
    }

    fn finish(&mut self) {
        if self.enabled && self.drawn.is_some() {
            self.draw();
            let _ = writeln!(std::io::stderr());
        }
    }
}
