//! The syslog sink: one RFC 5424 (or RFC 3164) datagram per record to the local socket.
//!
//! The socket is blocking with a short send timeout: a daemon that reads slowly slows the
//! writer thread, not the application (the queue absorbs it). A daemon that goes away loses the
//! datagrams it had not read yet; the kernel's count of those bytes ([`unread_bytes`]) tells
//! which recently sent records may be affected, and they are sent again after reconnecting, so
//! a restart loses nothing (a few records may arrive twice; `pid` + `rec` identify them).

use std::collections::VecDeque;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

use super::format::{push_rfc3339, push_u64, rfc3164_time, Origin};
use crate::config::SyslogFormat;
use crate::ffi::os::{send_many, unread_bytes};

/// How long one send may block before the writer looks up (to notice a stop request).
const SEND_TIMEOUT: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct SyslogSink {
    path: PathBuf,
    facility: u8,
    format: SyslogFormat,
    socket: Option<UnixDatagram>,
    /// Recently sent datagrams the daemon may not have read yet, oldest first.
    unread: VecDeque<Vec<u8>>,
    /// Datagrams a daemon that went away may not have read, to be sent again first.
    resend: VecDeque<Vec<u8>>,
    unread_len: usize,
}

impl SyslogSink {
    pub fn new(path: PathBuf, facility: u8, format: SyslogFormat) -> SyslogSink {
        SyslogSink {
            path,
            facility,
            format,
            socket: None,
            unread: VecDeque::new(),
            resend: VecDeque::new(),
            unread_len: 0,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// A record's datagram header, to which its `key=value` text is appended.
    pub fn header(&self, severity: u8, time_us: u64, origin: &Origin) -> String {
        let pri = u64::from(self.facility) * 8 + u64::from(severity);
        let mut d = String::with_capacity(640);
        d.push('<');
        push_u64(&mut d, pri);
        d.push('>');
        match self.format {
            SyslogFormat::Rfc5424 => {
                d.push_str("1 ");
                push_rfc3339(&mut d, time_us);
                d.push(' ');
                d.push_str(if origin.host.is_empty() {
                    "-"
                } else {
                    &origin.host
                });
                d.push_str(" p11gate ");
                push_u64(&mut d, u64::from(origin.pid));
                d.push_str(" audit - ");
            }
            SyslogFormat::Rfc3164 => {
                d.push_str(&rfc3164_time(time_us));
                d.push_str(" p11gate[");
                push_u64(&mut d, u64::from(origin.pid));
                d.push_str("]: ");
            }
        }
        d
    }

    /// Connects (again). What the daemon may have lost when it went away is queued to be sent
    /// again before anything new.
    pub fn open(&mut self) -> io::Result<()> {
        if self.socket.is_some() {
            return Ok(());
        }
        let socket = UnixDatagram::unbound()?;
        socket.connect(&self.path)?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        // Sent on the last connection (possibly unread), then what still waited to be re-sent
        // from the one before: oldest first.
        let mut again = std::mem::take(&mut self.unread);
        again.append(&mut self.resend);
        self.resend = again;
        self.unread_len = 0;
        self.socket = Some(socket);
        Ok(())
    }

    /// Sends up to `max` datagrams from the front of `queue`, after any that are to be sent
    /// again, with one system call per batch; moves those sent out of `queue` and returns how
    /// many. An error stops the rest: `WouldBlock`/`TimedOut` means the daemon is slow (try
    /// again); any other means it is gone (reconnect with [`SyslogSink::open`]).
    pub fn send_from(
        &mut self,
        queue: &mut VecDeque<Vec<u8>>,
        max: usize,
    ) -> (usize, Option<io::Error>) {
        if let Err(e) = self.open() {
            return (0, Some(e));
        }
        while !self.resend.is_empty() {
            let mut resend = std::mem::take(&mut self.resend);
            let (sent, error) = self.send_now(&mut resend, max);
            self.resend = resend;
            if error.is_some() || sent == 0 {
                return (0, error);
            }
        }
        self.send_now(queue, max)
    }

    fn send_now(
        &mut self,
        queue: &mut VecDeque<Vec<u8>>,
        max: usize,
    ) -> (usize, Option<io::Error>) {
        let Some(socket) = self.socket.as_ref() else {
            return (0, Some(io::ErrorKind::NotConnected.into()));
        };
        let batch = queue.make_contiguous();
        let batch = &batch[..batch.len().min(max)];
        match send_many(socket, batch) {
            Ok(n) => {
                for d in queue.drain(..n) {
                    self.unread_len += d.len();
                    self.unread.push_back(d);
                }
                (n, None)
            }
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    // The daemon is gone: what it had not read is lost with its socket.
                    self.socket = None;
                }
                (0, Some(e))
            }
        }
    }

    /// Forgets sent datagrams the daemon has read: only the newest `unread_bytes` worth can
    /// still be in its socket (counted without the kernel's per-datagram overhead, so more are
    /// kept than strictly needed: a duplicate rather than a loss).
    pub fn trim(&mut self) {
        let Some(socket) = &self.socket else { return };
        let Ok(unread) = unread_bytes(socket) else {
            return;
        };
        while self.unread_len > unread {
            match self.unread.pop_front() {
                Some(d) => self.unread_len -= d.len(),
                None => break,
            }
        }
        if self.unread.is_empty() {
            self.unread_len = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive_all(r: &UnixDatagram) -> Vec<String> {
        r.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        while let Ok(n) = r.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got
    }

    #[test]
    fn what_a_vanished_daemon_had_not_read_is_sent_again_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let daemon = UnixDatagram::bind(&path).unwrap();
        let mut sink = SyslogSink::new(path.clone(), 10, SyslogFormat::Rfc5424);
        let mut queue: VecDeque<Vec<u8>> = (1..=3).map(|i| format!("r{i}").into_bytes()).collect();
        assert_eq!(sink.send_from(&mut queue, 64).0, 3);
        sink.trim();
        // The daemon reads one, then goes away with two unread.
        let mut buf = [0u8; 64];
        let n = daemon.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"r1");
        sink.trim();
        drop(daemon);
        std::fs::remove_file(&path).unwrap();
        let mut queue: VecDeque<Vec<u8>> = [b"r4".to_vec()].into();
        let (sent, error) = sink.send_from(&mut queue, 64);
        assert_eq!(sent, 0);
        assert!(error.is_some());
        assert_eq!(queue.len(), 1, "a record that was not sent stays queued");
        // Not back yet: connecting fails.
        assert!(sink.send_from(&mut queue, 64).1.is_some());
        // Back: r2 and r3 again (never read), then r4. r1 was read, but the kernel's count
        // includes its per-datagram overhead, so r1 may be sent again too: a duplicate, never
        // a loss.
        let daemon = UnixDatagram::bind(&path).unwrap();
        let (sent, error) = sink.send_from(&mut queue, 64);
        assert_eq!(sent, 1);
        assert!(error.is_none(), "{error:?}");
        let got = receive_all(&daemon);
        assert!(
            got == ["r2", "r3", "r4"] || got == ["r1", "r2", "r3", "r4"],
            "{got:?}"
        );
    }
}
