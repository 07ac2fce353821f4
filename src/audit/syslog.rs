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
            unread_len: 0,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The datagram for a record: header, then the `key=value` text.
    pub fn datagram(&self, severity: u8, time_us: u64, origin: &Origin, message: &str) -> Vec<u8> {
        let pri = u64::from(self.facility) * 8 + u64::from(severity);
        let mut d = String::with_capacity(message.len() + 80);
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
        d.push_str(message);
        d.into_bytes()
    }

    /// Connects (again), and re-sends what the daemon may have lost when it went away.
    pub fn open(&mut self) -> io::Result<()> {
        if self.socket.is_some() {
            return Ok(());
        }
        let socket = UnixDatagram::unbound()?;
        socket.connect(&self.path)?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        let lost: Vec<Vec<u8>> = self.unread.drain(..).collect();
        self.unread_len = 0;
        self.socket = Some(socket);
        for d in lost {
            self.send(d)?;
        }
        Ok(())
    }

    /// Sends one datagram. `Err(WouldBlock/TimedOut)` means the daemon is slow (try again);
    /// other errors mean it is gone (reconnect with [`SyslogSink::open`]).
    pub fn send(&mut self, datagram: Vec<u8>) -> io::Result<()> {
        if self.socket.is_none() {
            self.open()?;
        }
        let socket = self.socket.as_ref().ok_or(io::ErrorKind::NotConnected)?;
        match socket.send(&datagram) {
            Ok(_) => {
                self.unread_len += datagram.len();
                self.unread.push_back(datagram);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(e)
            }
            Err(e) => {
                // The daemon is gone: what it had not read is lost with its socket.
                self.socket = None;
                Err(e)
            }
        }
    }

    /// Sends datagrams in one system call where the kernel allows; returns how many were sent
    /// (from the front), and the error that stopped the rest, if any (as for [`SyslogSink::send`]).
    pub fn send_batch(&mut self, datagrams: Vec<Vec<u8>>) -> (usize, Option<io::Error>) {
        if self.socket.is_none() {
            if let Err(e) = self.open() {
                return (0, Some(e));
            }
        }
        let Some(socket) = self.socket.as_ref() else {
            return (0, Some(io::ErrorKind::NotConnected.into()));
        };
        match send_many(socket, &datagrams) {
            Ok(n) => {
                for d in datagrams.into_iter().take(n) {
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
