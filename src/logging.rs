//! Diagnostics through the `log` facade: to syslog (ident `p11gate`) by default, or to stderr or
//! a file. This is the operator's troubleshooting log, not the audit trail.
//!
//! Nothing that reaches this module may hold a secret: callers log lengths and handles, never
//! PINs, key values, plaintext or ciphertext (the trace lines in `ffi::boundary` are built from
//! argument lists that leave those out).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use once_cell::sync::Lazy;
use parking_lot::RwLock;

use crate::config::{LogConfig, LogLevel, LogTarget};

/// The level used until a configuration says otherwise.
pub const DEFAULT_LEVEL: LogLevel = LogLevel::Info;
const SYSLOG_SOCKET: &str = "/dev/log";
/// syslog facility LOG_USER, as glibc's syslog(3) uses when none is given.
const FACILITY_USER: u8 = 1;

enum Sink {
    /// The socket's path, and the connected socket, `None` while it is not there (no syslog
    /// daemon): warnings and errors then go to stderr so that they are never lost.
    Syslog(PathBuf, Option<UnixDatagram>),
    Stderr,
    File(File),
}

struct GateLogger {
    sink: RwLock<Sink>,
}

static LOGGER: Lazy<GateLogger> = Lazy::new(|| {
    let path = PathBuf::from(SYSLOG_SOCKET);
    let socket = connect_syslog(&path);
    GateLogger {
        sink: RwLock::new(Sink::Syslog(path, socket)),
    }
});

/// Installs p11gate's logger (once per process) and applies `config`. A host that already set
/// its own `log` logger is a different copy of the `log` crate (this is a cdylib), so the two
/// never meet. Returns a message when the configured log file cannot be opened; diagnostics then
/// go to stderr.
pub fn configure(config: &LogConfig) -> Option<String> {
    let _ = log::set_logger(&*LOGGER);
    log::set_max_level(config.level.unwrap_or(DEFAULT_LEVEL).to_filter());
    let (sink, problem) = match config.target.clone().unwrap_or(LogTarget::Syslog(None)) {
        LogTarget::Syslog(path) => {
            let path = path.unwrap_or_else(|| PathBuf::from(SYSLOG_SOCKET));
            let socket = connect_syslog(&path);
            (Sink::Syslog(path, socket), None)
        }
        LogTarget::Stderr => (Sink::Stderr, None),
        LogTarget::File(path) => match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(f) => (Sink::File(f), None),
            Err(e) => (
                Sink::Stderr,
                Some(format!(
                    "cannot open log file {}: {e}; logging to stderr",
                    path.display()
                )),
            ),
        },
    };
    *LOGGER.sink.write() = sink;
    problem
}

/// Installs the logger with defaults if nothing has configured it yet (before `C_Initialize`),
/// and a panic hook that reports panics through it. The hook belongs to this cdylib's own copy
/// of the standard library, so the host's panic handling is untouched; the boundary then turns
/// the panic into CKR_GENERAL_ERROR.
pub fn ensure_installed() {
    if log::set_logger(&*LOGGER).is_ok() {
        log::set_max_level(DEFAULT_LEVEL.to_filter());
        std::panic::set_hook(Box::new(|info| log::error!("internal error: {info}")));
    }
}

/// A non-blocking socket: a stuck or slow syslog daemon must never stall the application's
/// PKCS#11 call (a full queue drops the diagnostic line; see `log`).
fn connect_syslog(path: &Path) -> Option<UnixDatagram> {
    let sock = UnixDatagram::unbound().ok()?;
    sock.connect(path).ok()?;
    sock.set_nonblocking(true).ok()?;
    Some(sock)
}

impl log::Log for GateLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let pid = std::process::id();
        let level = record.level();
        let plain = || plain_line(now, pid, level, record.args());
        let to_stderr = || {
            let _ = writeln!(std::io::stderr(), "{}", plain());
        };
        let sink = self.sink.read();
        match &*sink {
            Sink::Syslog(path, sock) => {
                let severity = match level {
                    log::Level::Error => 3,
                    log::Level::Warn => 4,
                    log::Level::Info => 6,
                    log::Level::Debug | log::Level::Trace => 7,
                };
                let line = format!(
                    "<{}>{} p11gate[{pid}]: {}",
                    FACILITY_USER * 8 + severity,
                    rfc3164_time(now.as_secs()),
                    record.args()
                );
                let sent = match sock.as_ref().map(|s| s.send(line.as_bytes())) {
                    Some(Ok(_)) => true,
                    // The daemon is not keeping up: drop the line rather than wait.
                    Some(Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if level <= log::Level::Warn {
                            to_stderr();
                        }
                        return;
                    }
                    _ => false,
                };
                if !sent {
                    // The daemon may have restarted: one reconnect, then fall back to stderr.
                    let path = path.clone();
                    drop(sink);
                    let mut sink = self.sink.write();
                    let reconnected = connect_syslog(&path);
                    let resent = reconnected
                        .as_ref()
                        .is_some_and(|s| s.send(line.as_bytes()).is_ok());
                    *sink = Sink::Syslog(path, reconnected);
                    if !resent && level <= log::Level::Warn {
                        to_stderr();
                    }
                }
            }
            Sink::Stderr => {
                to_stderr();
            }
            Sink::File(f) => {
                // One write per line on an O_APPEND file: lines from threads never interleave.
                let _ = (&*f).write_all(format!("{}\n", plain()).as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

fn plain_line(
    now: std::time::Duration,
    pid: u32,
    level: log::Level,
    msg: &std::fmt::Arguments<'_>,
) -> String {
    format!("{} p11gate[{pid}] {level}: {msg}", rfc3339_utc(now))
}

/// `2026-11-28T21:48:09.123456Z`.
pub fn rfc3339_utc(t: std::time::Duration) -> String {
    let (y, mo, d, h, mi, s) = civil(t.as_secs());
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:06}Z",
        t.subsec_micros()
    )
}

/// The traditional syslog timestamp of a Unix time (shared with the audit trail's).
fn rfc3164_time(secs: u64) -> String {
    crate::audit::format::rfc3164_time(secs.saturating_mul(1_000_000))
}

/// Seconds since the epoch to (year, month, day, hour, minute, second) in UTC, by the
/// days-to-civil calendar computation (proleptic Gregorian).
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let rem = secs % 86_400;
    let (year, month, day) = crate::audit::format::civil_from_days((secs / 86_400) as i64);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(
            rfc3339_utc(Duration::from_micros(0)),
            "1970-01-01T00:00:00.000000Z"
        );
        // 2026-11-28T21:48:09.5Z
        assert_eq!(
            rfc3339_utc(Duration::from_millis(1_795_902_489_500)),
            "2026-11-28T21:48:09.500000Z"
        );
        assert_eq!(rfc3164_time(951_782_400), "Feb 29 00:00:00"); // 2000-02-29, a leap day
        assert_eq!(rfc3164_time(1_795_902_489), "Nov 28 21:48:09");
    }
}
