//! A progress line on standard error for commands that read a large file, so that a person
//! sees it moving. Only on a terminal and never with `--json`: a script or a pipe gets nothing.
//! The line is redrawn at most ten times a second and erased at the end, so it never mixes
//! with the output. (`audit summary` has its own, which also counts records.)

use std::io::{self, IsTerminal, Read, Write};
use std::time::{Duration, Instant};

/// At most ten updates a second.
const INTERVAL: Duration = Duration::from_millis(100);

/// Whether a command may show progress: standard error is a terminal and the output is not
/// meant for a machine.
pub fn wanted(json: bool) -> bool {
    !json && io::stderr().is_terminal()
}

/// A reader that reports how much of `total` bytes has been read, as
/// `LABEL:  42%  12.3 of 29.0 MiB`. The first read draws the line at once.
pub struct ProgressReader<R> {
    inner: R,
    label: &'static str,
    total: u64,
    read: u64,
    next: Instant,
    shown: bool,
    enabled: bool,
}

impl<R: Read> ProgressReader<R> {
    /// `enabled` false makes it a plain reader (see [`wanted`]).
    pub fn new(inner: R, label: &'static str, total: u64, enabled: bool) -> Self {
        ProgressReader {
            inner,
            label,
            total,
            read: 0,
            next: Instant::now(),
            shown: false,
            enabled: enabled && total > 0,
        }
    }

    fn draw(&mut self) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + INTERVAL;
        let percent = (self.read.saturating_mul(100) / self.total).min(100);
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        // Progress is a courtesy: a failed write to stderr is not worth stopping for.
        let mut err = io::stderr().lock();
        let _ = write!(
            err,
            "\r{}: {percent:3}%  {:.1} of {:.1} MiB\x1b[K",
            self.label,
            mib(self.read),
            mib(self.total)
        );
        let _ = err.flush();
        self.shown = true;
    }
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.enabled {
            self.draw();
        }
        Ok(n)
    }
}

/// Dropping the reader erases the line, if one was drawn: drop it before printing a result.
impl<R> Drop for ProgressReader<R> {
    fn drop(&mut self) {
        if self.shown {
            let mut err = io::stderr().lock();
            let _ = err.write_all(b"\r\x1b[K");
            let _ = err.flush();
        }
    }
}
