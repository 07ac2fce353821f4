//! From calls to sinks: a bounded lock-free queue and one writer thread per process.
//!
//! Calls push typed records onto the queue (no lock, no system call while the
//! writer is awake) and return; the writer formats them, keeps per-sink backlogs while a sink is
//! down, retries it, and reports outages and drops as records of their own. The queue is never
//! shared with a forked child: a child's `C_Initialize` takes a fresh pipeline, since a thread of
//! the parent may have been half-way through a push when `fork()` copied the memory.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use once_cell::sync::OnceCell;
use parking_lot::{Mutex, RwLock};

use super::record::Record;
use super::writer::Writer;
use crate::config::{AuditConfig, OnFailure, OnOverflow};

/// How many pipelines one process (one fork generation, with changing queue sizes) may use.
const MAX_PIPELINES: usize = 64;
/// How long `C_Finalize` and process exit wait for queued records to be written.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

static PIPELINES: [OnceCell<Pipeline>; MAX_PIPELINES] = [const { OnceCell::new() }; MAX_PIPELINES];
static USED: AtomicUsize = AtomicUsize::new(0);
/// The current pipeline's index + 1 (0: none).
static CURRENT: AtomicUsize = AtomicUsize::new(0);

/// One process's queue and writer.
#[derive(Debug)]
pub struct Pipeline {
    pid: u32,
    pub(super) queue: ArrayQueue<Record>,
    /// Set while the writer waits without polling: then a push wakes it.
    pub(super) sleeping: AtomicBool,
    thread: RwLock<Option<Thread>>,
    handle: Mutex<Option<JoinHandle<()>>>,
    /// Without a writer thread (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`): the sinks, written on
    /// the calling thread.
    inline: Mutex<Option<Writer>>,
    /// Whether `inline` is in use (read on every push, so not behind the mutex).
    writes_inline: AtomicBool,
    pub(super) stop: AtomicBool,
    /// Every sink is writable (as far as the writer knows).
    pub(super) healthy: AtomicBool,
    drop_when_full: AtomicBool,
    deny_when_down: AtomicBool,
    pub(super) dropped: AtomicU64,
    pub(super) denied: AtomicU64,
    /// Records this process numbered so far (`rec`), kept across writer restarts.
    pub(super) numbered: AtomicU64,
}

/// The current pipeline, if audit is running.
#[inline]
pub fn current() -> Option<&'static Pipeline> {
    PIPELINES
        .get(CURRENT.load(Acquire).wrapping_sub(1))
        .and_then(OnceCell::get)
}

/// A pipeline for this process with room for `capacity` records: the current one if it fits,
/// else a new one.
fn pipeline_for(capacity: usize) -> Option<&'static Pipeline> {
    let pid = std::process::id();
    if let Some(p) = current() {
        if p.pid == pid && p.queue.capacity() == capacity {
            return Some(p);
        }
    }
    let index = USED.fetch_add(1, AcqRel);
    let cell = PIPELINES.get(index)?;
    let p = cell.get_or_init(|| Pipeline {
        pid,
        queue: ArrayQueue::new(capacity),
        sleeping: AtomicBool::new(false),
        thread: RwLock::new(None),
        handle: Mutex::new(None),
        inline: Mutex::new(None),
        writes_inline: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        healthy: AtomicBool::new(true),
        drop_when_full: AtomicBool::new(false),
        deny_when_down: AtomicBool::new(false),
        dropped: AtomicU64::new(0),
        denied: AtomicU64::new(0),
        numbered: AtomicU64::new(0),
    });
    CURRENT.store(index + 1, Release);
    Some(p)
}

/// Starts auditing as `config` says (`C_Initialize`). The sinks are opened here, so a sink
/// that is unusable from the start makes `on_failure = "deny"` refuse the very first call.
pub fn start(config: &AuditConfig, app: &'static str, threads_allowed: bool) -> Result<(), String> {
    start_with(config, app, threads_allowed, false)
}

/// [`start`], optionally without diagnostics of the audit trail's own.
pub fn start_with(
    config: &AuditConfig,
    app: &'static str,
    threads_allowed: bool,
    quiet: bool,
) -> Result<(), String> {
    stop();
    if !config.enabled {
        CURRENT.store(0, Release);
        return Ok(());
    }
    let mut writer = Writer::from_config(config, app)?;
    writer.quiet = quiet;
    let p = pipeline_for(*config.queue.get_ref())
        .ok_or_else(|| "too many audit pipelines in one process".to_string())?;
    p.drop_when_full
        .store(config.on_overflow == OnOverflow::Drop, Relaxed);
    p.deny_when_down
        .store(config.on_failure == OnFailure::Deny, Relaxed);
    p.stop.store(false, Relaxed);
    writer.open_all(p);
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| {
        if !crate::ffi::os::at_exit(flush_at_exit) {
            log::warn!("audit: atexit failed; records queued at exit may be lost");
        }
    });
    p.writes_inline.store(!threads_allowed, Relaxed);
    if !threads_allowed {
        *p.inline.lock() = Some(writer);
        return Ok(());
    }
    let spawned = std::thread::Builder::new()
        .name("p11gate-audit".into())
        .spawn(move || writer.run(p));
    match spawned {
        Ok(handle) => {
            *p.thread.write() = Some(handle.thread().clone());
            *p.handle.lock() = Some(handle);
            Ok(())
        }
        Err(e) => Err(format!("cannot start the audit writer thread: {e}")),
    }
}

/// Writes what is queued (for up to [`DRAIN_TIMEOUT`]) and stops the writer (`C_Finalize`,
/// process exit). Records of calls still running on other threads are written inline.
pub fn stop() {
    let Some(p) = current() else { return };
    if p.pid != std::process::id() {
        return;
    }
    p.stop.store(true, Release);
    p.wake();
    let handle = p.handle.lock().take();
    if let Some(h) = handle {
        let _ = h.join();
    }
    *p.thread.write() = None;
    if let Some(mut w) = p.inline.lock().take() {
        w.drain(p, Instant::now() + DRAIN_TIMEOUT);
    }
}

/// Writes what is queued when the process exits without `C_Finalize`.
extern "C" fn flush_at_exit() {
    let _ = std::panic::catch_unwind(stop);
}

impl Pipeline {
    /// Whether an audited call may proceed: `false` while a sink is down under
    /// `on_failure = "deny"` (the refusal is counted).
    #[inline]
    pub fn admits(&self) -> bool {
        if self.healthy.load(Relaxed) || !self.deny_when_down.load(Relaxed) {
            return true;
        }
        self.denied.fetch_add(1, Relaxed);
        false
    }

    /// Queues a record for the writer.
    #[inline]
    pub fn submit(&self, record: Record) {
        match self.queue.push(record) {
            Ok(()) => {
                if self.sleeping.load(Acquire) {
                    self.wake();
                }
            }
            Err(record) => self.full(record),
        }
        if self.inline_mode() {
            if let Some(w) = self.inline.lock().as_mut() {
                w.pump(self);
            }
        }
    }

    #[inline]
    fn inline_mode(&self) -> bool {
        self.writes_inline.load(Relaxed) && !self.stop.load(Relaxed)
    }

    /// The queue is full: wait for room, or drop and count.
    #[cold]
    fn full(&self, mut record: Record) {
        loop {
            let down = !self.healthy.load(Relaxed);
            // Waiting on a sink that is down would stall the application indefinitely: with
            // on_failure = "continue" the record is dropped (and counted) instead.
            if self.drop_when_full.load(Relaxed) || down || self.stop.load(Relaxed) {
                self.dropped.fetch_add(1, Relaxed);
                return;
            }
            self.wake();
            if self.inline_mode() {
                if let Some(w) = self.inline.lock().as_mut() {
                    w.pump(self);
                }
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
            match self.queue.push(record) {
                Ok(()) => return,
                Err(r) => record = r,
            }
        }
    }

    pub(super) fn wake(&self) {
        if let Some(t) = self.thread.read().as_ref() {
            t.unpark();
        }
    }
}
