//! The writer: takes records off the queue, formats them for each sink, writes them, keeps a
//! backlog per sink while it is down and retries it, and reports drops and outages as records
//! of their own.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering::*;
use std::time::{Duration, Instant};

use super::chain::AuditKey;
use super::file::FileSink;
use super::format::{walk, JsonMembers, KeyValue, Origin};
use super::pipeline::{Pipeline, DRAIN_TIMEOUT};
use super::record::{now_us, Event, Record};
use super::syslog::SyslogSink;
use crate::config::AuditConfig;
use crate::ffi::fork_gate;

const BUSY_POLL: Duration = Duration::from_millis(2);
const IDLE_POLLS: u32 = 25;
const IDLE_WAIT: Duration = Duration::from_secs(1);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);
const BATCH: usize = 512;
/// Datagrams per `sendmmsg`.
const SYSLOG_BATCH: usize = 64;
/// Records a sink that is down may fall behind by before the queue backs up: enough for a
/// syslog daemon's restart under full load.
const BACKLOG_MIN: usize = 65536;

/// A sink's backlog and retry state.
#[derive(Debug)]
struct Lane<S, M> {
    sink: S,
    backlog: VecDeque<M>,
    /// When it failed and why, while it is down.
    down: Option<(u64, String)>,
    retry_at: Instant,
    retry_wait: Duration,
}

impl<S, M> Lane<S, M> {
    fn new(sink: S) -> Self {
        Lane {
            sink,
            backlog: VecDeque::new(),
            down: None,
            retry_at: Instant::now(),
            retry_wait: RETRY_MIN,
        }
    }

    fn due(&self) -> bool {
        self.down.is_none() || Instant::now() >= self.retry_at
    }

    /// Notes a failure; returns whether it starts an outage.
    fn failed(&mut self, e: &io::Error) -> bool {
        let starts = self.down.is_none();
        if starts {
            self.down = Some((now_us(), e.to_string()));
            self.retry_wait = RETRY_MIN;
        } else {
            self.retry_wait = (self.retry_wait * 2).min(RETRY_MAX);
        }
        self.retry_at = Instant::now() + self.retry_wait;
        starts
    }
}

/// The writer's side: sinks, their backlogs, and record numbering.
#[derive(Debug)]
pub struct Writer {
    /// Say nothing in the diagnostic log (the one-record pipeline of a configuration error,
    /// whose only news is already logged).
    pub(super) quiet: bool,
    /// The app named in the writer's own records (drops, outages).
    app: &'static str,
    origin: Origin,
    /// Syslog's backlog holds finished datagrams.
    syslog: Option<Lane<SyslogSink, Vec<u8>>>,
    file: Option<Lane<FileSink, String>>,
    /// Backlog length at which the writer stops taking records from the queue while a sink is
    /// down.
    cap: usize,
    /// The configured queue length: the most a slow (not failed) sink may fall behind.
    queue: usize,
}

impl Writer {
    pub(super) fn from_config(c: &AuditConfig, app: &'static str) -> Result<Writer, String> {
        let file = match &c.file {
            Some(path) => {
                let key_path = c
                    .key_file
                    .as_ref()
                    .ok_or("the audit file needs a key_file")?;
                let key = AuditKey::load(key_path)?;
                Some(Lane::new(FileSink::new(
                    path.get_ref().clone(),
                    key,
                    c.fsync,
                )))
            }
            None => None,
        };
        Ok(Writer {
            quiet: false,
            app,
            origin: Origin {
                host: hostname(),
                pid: std::process::id(),
            },
            syslog: c.syslog.then(|| {
                Lane::new(SyslogSink::new(
                    c.syslog_socket.clone(),
                    c.syslog_facility.code(),
                    c.syslog_format,
                ))
            }),
            file,
            cap: (*c.queue.get_ref()).max(BACKLOG_MIN),
            queue: *c.queue.get_ref(),
        })
    }

    /// Opens every sink, so that health is known before the first call.
    pub(super) fn open_all(&mut self, p: &Pipeline) {
        if let Some(l) = &mut self.syslog {
            if let Err(e) = l.sink.open() {
                if l.failed(&e) && !self.quiet {
                    log::warn!(
                        "audit: syslog socket {}: {e}; records are kept and retried",
                        l.sink.path().display()
                    );
                }
            }
        }
        if let Some(l) = &mut self.file {
            if let Err(e) = l.sink.open() {
                if l.failed(&e) && !self.quiet {
                    log::warn!(
                        "audit: file {}: {e}; records are kept and retried",
                        l.sink.path().display()
                    );
                }
            }
        }
        self.update_health(p);
    }

    fn update_health(&self, p: &Pipeline) {
        let down = self.syslog.as_ref().is_some_and(|l| l.down.is_some())
            || self.file.as_ref().is_some_and(|l| l.down.is_some());
        p.healthy.store(!down, Release);
    }

    pub(super) fn run(mut self, p: &'static Pipeline) {
        let mut idle = 0u32;
        loop {
            // Inside the fork gate while working (the logger's and the key cache's locks may be
            // held), outside while parked: see ffi::fork_gate.
            let pass = fork_gate::enter();
            let worked = self.pump(p);
            if p.stop.load(Acquire) {
                self.drain(p, Instant::now() + DRAIN_TIMEOUT);
                return;
            }
            if worked {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle < IDLE_POLLS || self.is_down() {
                drop(pass);
                // Busy, or retrying a sink: poll without making callers wake us.
                std::thread::park_timeout(if self.is_down() { RETRY_MIN } else { BUSY_POLL });
                continue;
            }
            self.sync_file();
            drop(pass);
            p.sleeping.store(true, SeqCst);
            if p.queue.is_empty() && !p.stop.load(SeqCst) {
                std::thread::park_timeout(IDLE_WAIT);
            }
            p.sleeping.store(false, SeqCst);
            if let Some(l) = &mut self.syslog {
                let _pass = fork_gate::enter();
                l.sink.trim();
            }
        }
    }

    /// Flushes the file sink to disk when the writer has nothing else to do.
    fn sync_file(&mut self) {
        if let Some(l) = &mut self.file {
            if let Err(e) = l.sink.sync() {
                if l.failed(&e) && !self.quiet {
                    log::warn!(
                        "audit: file {}: {e}; records are kept and retried",
                        l.sink.path().display()
                    );
                }
            }
        }
    }

    fn is_down(&self) -> bool {
        self.syslog.as_ref().is_some_and(|l| l.down.is_some())
            || self.file.as_ref().is_some_and(|l| l.down.is_some())
    }

    /// Writes until the queue and backlogs are empty or `deadline` passes; says what was lost.
    /// A sink that is down gets one more try, not the whole wait: waiting only helps a sink
    /// that is working through a backlog.
    pub(super) fn drain(&mut self, p: &Pipeline, deadline: Instant) {
        for lane_retry in [
            self.syslog.as_mut().map(|l| &mut l.retry_at),
            self.file.as_mut().map(|l| &mut l.retry_at),
        ]
        .into_iter()
        .flatten()
        {
            *lane_retry = Instant::now();
        }
        while Instant::now() < deadline {
            self.pump(p);
            if (p.queue.is_empty() && self.backlog() == 0) || self.is_down() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.sync_file();
        let lost = p.queue.len() + self.backlog();
        if lost > 0 && !self.quiet {
            log::error!(
                "audit: {lost} record(s) could not be written before the audit trail was \
                 stopped, and are lost"
            );
        }
    }

    fn backlog(&self) -> usize {
        self.syslog.as_ref().map_or(0, |l| l.backlog.len())
            + self.file.as_ref().map_or(0, |l| l.backlog.len())
    }

    /// Takes records from the queue into the backlogs and writes them; returns whether there
    /// was anything to do.
    pub(super) fn pump(&mut self, p: &Pipeline) -> bool {
        let mut taken = 0;
        while taken < BATCH && self.backlog_room() {
            let Some(r) = p.queue.pop() else { break };
            self.accept(p, &r);
            taken += 1;
        }
        let dropped = p.dropped.load(Relaxed);
        if dropped > 0 && !self.is_down() {
            let n = p.dropped.swap(0, Relaxed);
            let mut r = Record::note(Event::Dropped, self.app.into());
            r.count = Some(n);
            self.accept(p, &r);
            if !self.quiet {
                log::warn!("audit: {n} record(s) dropped (queue full)");
            }
        }
        let pending = self.backlog();
        self.flush(p);
        taken > 0 || pending > 0
    }

    /// Whether the writer may take more records from the queue. A sink that is down may fall
    /// behind by its backlog; one that is only slow (a daemon that reads slowly) by no more than
    /// the queue itself, so that `on_overflow` takes effect at `queue` records, as configured.
    fn backlog_room(&self) -> bool {
        let room = |len: usize, down: bool| len < if down { self.cap } else { self.queue };
        self.syslog
            .as_ref()
            .is_none_or(|l| room(l.backlog.len(), l.down.is_some()))
            && self
                .file
                .as_ref()
                .is_none_or(|l| room(l.backlog.len(), l.down.is_some()))
    }

    /// Numbers a record and formats it for each sink.
    fn accept(&mut self, p: &Pipeline, r: &Record) {
        let rec = p.numbered.fetch_add(1, Relaxed) + 1;
        if let Some(l) = &mut self.syslog {
            let header = l.sink.header(r.severity(), r.time_us, &self.origin);
            let mut kv = KeyValue::after(header);
            walk(r, &self.origin, rec, &mut kv);
            l.backlog.push_back(kv.text.into_bytes());
        }
        if let Some(l) = &mut self.file {
            let mut j = JsonMembers(String::with_capacity(640));
            walk(r, &self.origin, rec, &mut j);
            l.backlog.push_back(j.0);
        }
        if let (true, Some((cache, backend)), Some(o)) = (r.forget_object, r.keys, &r.object) {
            if let Some(was) = &o.info {
                cache.forget_if(backend, o.handle, was);
            }
        }
    }

    fn flush(&mut self, p: &Pipeline) {
        let mut recovered: Vec<Record> = Vec::new();
        if let Some(l) = &mut self.syslog {
            // A sink that is down is probed even with nothing to write (under "deny" nothing
            // is queued while it is down), so that calls are admitted again once it is back.
            if l.due() && (!l.backlog.is_empty() || l.down.is_some()) {
                let delayed = l.backlog.len() as u64;
                let mut failure = l.sink.open().err();
                // In batches of up to SYSLOG_BATCH datagrams, one system call each.
                while failure.is_none() && !l.backlog.is_empty() {
                    let (sent, error) = l.sink.send_from(&mut l.backlog, SYSLOG_BATCH);
                    match error {
                        Some(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            break
                        }
                        Some(e) => failure = Some(e),
                        None if sent == 0 => break,
                        None => {}
                    }
                }
                l.sink.trim();
                match failure {
                    Some(e) => {
                        if l.failed(&e) && !self.quiet {
                            log::warn!(
                                "audit: syslog socket {}: {e}; records are kept and retried",
                                l.sink.path().display()
                            );
                        }
                    }
                    None => {
                        if let Some(outage) = l.down.take() {
                            recovered.push(outage_record(
                                self.app,
                                "syslog",
                                outage,
                                delayed,
                                p.denied.swap(0, Relaxed),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(l) = &mut self.file {
            if l.due() && (!l.backlog.is_empty() || l.down.is_some()) {
                let batch: Vec<String> = l.backlog.iter().cloned().collect();
                match l.sink.write(&batch, &self.origin) {
                    Ok(()) => {
                        l.backlog.clear();
                        if let Some(outage) = l.down.take() {
                            recovered.push(outage_record(
                                self.app,
                                "file",
                                outage,
                                batch.len() as u64,
                                p.denied.swap(0, Relaxed),
                            ));
                        }
                    }
                    Err(e) => {
                        if l.failed(&e) && !self.quiet {
                            log::warn!(
                                "audit: file {}: {e}; records are kept and retried",
                                l.sink.path().display()
                            );
                        }
                    }
                }
            }
        }
        self.update_health(p);
        for r in recovered {
            if !self.quiet {
                log::info!(
                    "audit: {} sink is back after an outage; {} record(s) delayed",
                    r.sink.unwrap_or(""),
                    r.delayed.unwrap_or(0)
                );
            }
            self.accept(p, &r);
        }
    }
}

fn outage_record(
    app: &'static str,
    sink: &'static str,
    (since, why): (u64, String),
    delayed: u64,
    denied: u64,
) -> Record {
    let mut r = Record::note(Event::Outage, app.into());
    r.sink = Some(sink);
    r.since_us = Some(since);
    r.delayed = Some(delayed);
    r.denied = Some(denied);
    r.msg = Some(why.into_boxed_str());
    r
}

/// This host's name, for records (`-` when it has none).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".into())
}
