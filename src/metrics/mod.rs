//! Metrics: per app, slot, function and result, call counts and latency histograms, written as
//! Prometheus text for node_exporter's textfile collector. See README "Metrics".
//!
//! The hot path is three hooks. The boundary calls [`begin`] before a call and [`end`] after it;
//! the router calls [`note_slot`] when it resolves the slot or session a call names. With
//! metrics off, `begin` and `note_slot` are one relaxed load of a word that only
//! `C_Initialize` / `C_Finalize` write and a branch that is not taken, and `end` tests what
//! `begin` returned (17 instructions per call in all, within noise in wall-clock time). With
//! metrics on a call costs two clock reads ([`clock`]: the TSC where the kernel trusts it), two
//! thread-local lookups, a series lookup (a hash and one probe) and three counter updates in
//! the calling thread's own block ([`counters`]): no lock, no locked instruction, no
//! allocation once the thread has counted that series once (about 180 instructions and 25 ns
//! per call, most of the time in the two TSC reads).
//!
//! - [`counters`]: series, per-thread blocks, results and buckets.
//! - [`text`]: the exposition format, written and read.
//! - [`writer`]: the file (one per process) and the thread that rewrites it.
//! - [`stats`]: `p11gate stats`.
//!
//! Lifecycle: [`start`] at `C_Initialize` (writes the file at once, then every `interval_s`),
//! [`stop`] at `C_Finalize` (stops the thread, writes the final counts; a re-initialised process
//! of the same app keeps counting into the same file), and the file is removed at process exit.
//! Calls are counted between the two: `C_Initialize` and `C_Finalize` themselves are not. A
//! child after `fork()` counts nothing until its own `C_Initialize`, which gives it counters
//! and a file of its own (the parent's writer thread does not exist in the child, and nothing
//! of the parent's registry is locked or written there).

pub mod clock;
pub mod counters;
pub mod stats;
pub mod text;
pub mod writer;

use std::cell::Cell;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering::*};

use once_cell::sync::OnceCell;
use pkcs11_sys::{CK_RV, CK_SLOT_ID};

use crate::config::MetricsConfig;
use counters::{result_index, Block};
use writer::Registry;

/// How many registries (app or directory changes, fork generations) one process may use.
const MAX_REGISTRIES: usize = 16;

static REGISTRIES: [OnceCell<Registry>; MAX_REGISTRIES] =
    [const { OnceCell::new() }; MAX_REGISTRIES];
static USED: AtomicUsize = AtomicUsize::new(0);
/// The registry calls are counted in: its index + 1, or 0 while metrics are off.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
/// The registry this process started last (index + 1): its file is removed at exit.
static LAST: AtomicUsize = AtomicUsize::new(0);

fn registry_at(index_plus_one: usize) -> Option<&'static Registry> {
    REGISTRIES
        .get(index_plus_one.wrapping_sub(1))
        .and_then(OnceCell::get)
}

/// A thread's view: its block, and the slot the current call named.
struct Local {
    /// The registry `block` belongs to.
    registry: Cell<Option<&'static Registry>>,
    block: Cell<Option<&'static Block>>,
    slot: Cell<Option<CK_SLOT_ID>>,
}

impl Local {
    /// A block of registry `index + 1 == registry`, after a start, a re-initialisation or a
    /// fork.
    #[cold]
    #[inline(never)]
    fn switch_to(&self, registry: NonZeroUsize) -> Option<(&'static Registry, &'static Block)> {
        let reg = registry_at(registry.get())?;
        let pid = std::process::id();
        self.give_back(pid);
        // A forked child that has not initialised again: the registry is its parent's.
        if reg.pid != pid {
            return None;
        }
        let block = reg.counters.claim();
        self.block.set(Some(block));
        self.registry.set(Some(reg));
        Some((reg, block))
    }

    fn give_back(&self, pid: u32) {
        if let (Some(block), Some(reg)) = (self.block.take(), self.registry.take()) {
            // Never lock a parent's registry in a forked child: its locks may be held for good.
            if reg.pid == pid {
                reg.counters.give_back(block);
            }
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if self.block.get().is_some() {
            self.give_back(std::process::id());
        }
    }
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            registry: Cell::new(None),
            block: Cell::new(None),
            slot: Cell::new(None),
        }
    };
}

/// A call's start, while metrics are on.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// The registry counting when the call started (`CURRENT`).
    registry: NonZeroUsize,
    at: u64,
}

/// Where a call starts: its clock reading, when metrics are on.
#[inline(always)]
pub fn begin() -> Option<Started> {
    NonZeroUsize::new(CURRENT.load(Relaxed)).map(|registry| Started {
        registry,
        at: clock::now(),
    })
}

/// The slot the current call names, directly or through its session (the router).
#[inline(always)]
pub fn note_slot(id: CK_SLOT_ID) {
    if CURRENT.load(Relaxed) != 0 {
        note_slot_on(id);
    }
}

#[inline(never)]
fn note_slot_on(id: CK_SLOT_ID) {
    let _ = LOCAL.try_with(|l| l.slot.set(Some(id)));
}

/// Where a call ends: counts it if [`begin`] started it.
#[inline(always)]
pub fn end(started: Option<Started>, function: &'static str, rv: CK_RV) {
    if let Some(s) = started {
        record(s, function, rv);
    }
}

#[inline(never)]
fn record(started: Started, function: &'static str, rv: CK_RV) {
    let ns = clock::elapsed_ns(started.at, clock::now());
    // Only while the registry it started in still counts: neither a C_Finalize (its final
    // write is done) nor a C_Initialize that started one (in a forked child the parent's
    // registry is current when C_Initialize begins).
    if CURRENT.load(Acquire) != started.registry.get() {
        return;
    }
    // try_with: a call made from another thread-local's destructor finds LOCAL gone.
    let _ = LOCAL.try_with(|l| {
        let slot = l.slot.take();
        let (reg, block) = match (l.registry.get(), l.block.get()) {
            (Some(r), Some(b)) if r.index + 1 == started.registry.get() => (r, b),
            _ => match l.switch_to(started.registry) {
                Some(rb) => rb,
                None => return,
            },
        };
        block.count(reg.counters.series(function, slot), result_index(rv), ns);
    });
}

/// Starts counting for `app` as `config` says (`C_Initialize`). Metrics never make
/// `C_Initialize` fail: a directory that cannot be written is logged, and retried.
pub fn start(config: &MetricsConfig, app: &str, threads_allowed: bool) {
    stop();
    let Some(dir) = config.dir() else {
        return;
    };
    let pid = std::process::id();
    let Some(reg) = registry_for(pid, app, dir) else {
        log::warn!("metrics: too many metrics registries in one process; metrics stay off");
        return;
    };
    reg.interval_s.store(*config.interval_s.get_ref(), Relaxed);
    clock::setup();
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| {
        if !crate::ffi::os::at_exit(remove_at_exit) {
            log::warn!("metrics: atexit failed; the metrics file will stay after exit");
        }
    });
    CURRENT.store(reg.index + 1, Release);
    reg.write();
    if !threads_allowed {
        log::info!(
            "metrics: no threads allowed (CKF_LIBRARY_CANT_CREATE_OS_THREADS): {} is written at C_Initialize and C_Finalize only",
            reg.path().display()
        );
        return;
    }
    match reg.spawn() {
        Ok(()) => log::info!(
            "metrics: writing {} every {} s",
            reg.path().display(),
            config.interval_s.get_ref()
        ),
        Err(e) => log::warn!("metrics: {e}; the file is written at C_Finalize only"),
    }
}

/// The registry for this process and app: the last one if it matches, else a new one.
fn registry_for(pid: u32, app: &str, dir: &std::path::Path) -> Option<&'static Registry> {
    if let Some(last) = registry_at(LAST.load(Acquire)).filter(|r| r.pid == pid) {
        if last.app == app && last.dir == dir {
            return Some(last);
        }
        // This process is another app now (or writes elsewhere): its old file would be stale.
        last.remove_file();
    }
    let index = USED.fetch_add(1, AcqRel);
    let reg = REGISTRIES
        .get(index)?
        .get_or_init(|| Registry::new(index, pid, app, dir));
    LAST.store(index + 1, Release);
    reg.remove_dead_files();
    Some(reg)
}

/// Stops counting (`C_Finalize`): stops the writer thread and writes the final counts.
pub fn stop() {
    let Some(reg) = registry_at(CURRENT.load(Acquire)) else {
        return;
    };
    if reg.pid != std::process::id() {
        // A forked child: the writer thread was its parent's. Stop counting, touch nothing.
        CURRENT.store(0, Release);
        return;
    }
    CURRENT.store(0, Release);
    reg.stop_thread();
    reg.write();
}

/// At process exit: the writer thread stops and this process's file goes away.
extern "C" fn remove_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        let pid = std::process::id();
        if let Some(reg) = registry_at(CURRENT.load(Acquire)).filter(|r| r.pid == pid) {
            CURRENT.store(0, Release);
            reg.stop_thread();
        }
        if let Some(reg) = registry_at(LAST.load(Acquire)).filter(|r| r.pid == pid) {
            reg.remove_file();
        }
    });
}
