//! The fork gate: `fork()` waits until no PKCS#11 call is running inside p11gate.
//!
//! Why: after `fork()` the child has only the thread that forked. A lock that another thread
//! held at that moment stays held in the child for ever: p11gate's own (soft token sessions,
//! the audit key-label cache, the logger) and the upstream's, including locks that no PKCS#11
//! mutex callback governs (SoftHSMv2's OpenSSL takes its RNG lock in `RAND_bytes`). The child's
//! first call that needs one of them hangs. So a `pthread_atfork` prepare handler closes the
//! gate (new calls wait at the entrance) and waits until the calls already inside have returned;
//! the parent and child handlers open it again. Every exported function passes the gate (see
//! `ffi::boundary`), and so does the audit writer thread while it works.
//!
//! Not waited for:
//! - the forking thread's own calls (an upstream that forks a helper from inside a call);
//! - calls that may block indefinitely (`C_WaitForSlotEvent` without `CKF_DONT_BLOCK`), and a
//!   call while it waits for another thread of p11gate ([`outside`]);
//! - anything still running after [`WAIT_LIMIT`]: a wedged upstream call must not deadlock the
//!   application's `fork()`. The fork then goes ahead and p11gate logs a warning.
//!
//! A call made while the gate is closed by a thread that is already inside (a nested call) goes
//! in: waiting would only hold up the fork that waits for that thread.
//!
//! Cost per call: every thread has its own in-flight counter on its own cache line (claimed on
//! its first call, given back when it exits), so entering and leaving are a thread-local lookup,
//! a load and two stores there, and a load of the gate word, which only `fork()` writes: no
//! read-modify-write and no cache line written by two threads. The entering thread must not miss a closing gate, nor the
//! forking thread an entered call: each stores, then loads what the other stores (Dekker's
//! pattern), which needs a full barrier on both sides. A full fence per call would cost more
//! than the rest of the forwarding path, so the barrier is asymmetric: the caller's half is a
//! compiler fence, and the forking thread's half is `membarrier()`, which makes every running
//! thread of the process execute a full barrier (the technique of liburcu and Folly). Where the
//! kernel does not offer membarrier, a bit in the gate word sends callers to the slow path, which
//! uses a real fence.

use std::cell::Cell;
use std::panic::catch_unwind;
use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicU32, AtomicUsize, Ordering::*};
use std::sync::Once;
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;

use crate::ffi::os;

/// How long `fork()` waits for running calls before it goes ahead anyway.
pub const WAIT_LIMIT: Duration = Duration::from_secs(2);

/// Set in [`GATE`] while callers must use a real fence (membarrier is not registered).
const FENCE: u32 = 1;
/// One fork between its prepare and parent handlers, in [`GATE`] (glibc runs one fork's handlers
/// at a time, so there is at most one).
const CLOSING: u32 = 2;
/// The one word a call reads on the way in: zero on the fast path. [`FENCE`] until membarrier
/// is registered, plus [`CLOSING`] for each fork in progress (the gate is closed).
static GATE: AtomicU32 = AtomicU32::new(FENCE);
/// Calls of threads without a counter of their own: a thread's first call until its counter is
/// claimed, and calls from thread-local destructors after this thread's counter was given back.
static SHARED: AtomicUsize = AtomicUsize::new(0);
/// Calls that were still running when the last fork went ahead without them (for the warning).
static LEFT_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Counters per chunk; the first chunk is static, more are allocated (and kept) when more
/// threads than that use p11gate at once.
const CHUNK: usize = 64;

/// One thread's count of calls in flight (nested calls count more than one). Only its owner
/// writes it (and the child handler, when no other thread exists); 128-byte aligned so that two
/// threads' counters never share a cache line (nor a pair that the prefetcher fetches together).
#[repr(align(128))]
#[derive(Debug)]
struct Counter {
    in_flight: AtomicU32,
    owned: AtomicBool,
}

impl Counter {
    const fn new() -> Counter {
        Counter {
            in_flight: AtomicU32::new(0),
            owned: AtomicBool::new(false),
        }
    }
}

#[derive(Debug)]
struct Chunk {
    counters: [Counter; CHUNK],
    next: OnceCell<Box<Chunk>>,
}

impl Chunk {
    const fn new() -> Chunk {
        Chunk {
            counters: [const { Counter::new() }; CHUNK],
            next: OnceCell::new(),
        }
    }
}

static FIRST: Chunk = Chunk::new();

fn counters() -> impl Iterator<Item = &'static Counter> {
    std::iter::successors(Some(&FIRST), |c| c.next.get().map(|b| &**b))
        .flat_map(|c| c.counters.iter())
}

thread_local! {
    /// This thread's counter, once claimed. No destructor, so reading it needs no state check.
    static MINE: Cell<Option<&'static Counter>> = const { Cell::new(None) };
    /// Gives the counter back when the thread exits; touched only when it is claimed.
    static RELEASE: GiveBack = const { GiveBack };
}

struct GiveBack;

impl Drop for GiveBack {
    fn drop(&mut self) {
        if let Ok(Some(c)) = MINE.try_with(|m| m.take()) {
            c.in_flight.store(0, Release);
            c.owned.store(false, Release);
        }
    }
}

/// This thread's counter, if it has one.
#[inline(always)]
fn mine() -> Option<&'static Counter> {
    MINE.try_with(Cell::get).ok().flatten()
}

/// Being inside p11gate: dropping it leaves.
#[must_use]
#[derive(Debug)]
pub struct Pass(Inside);

#[derive(Debug)]
enum Inside {
    /// On this thread's counter, which held `depth` before this call.
    Own(&'static Counter, u32),
    Shared,
}

impl Drop for Pass {
    #[inline(always)]
    fn drop(&mut self) {
        match self.0 {
            // Release: whatever the call did (locks it released) happens before a forking
            // thread sees the counter drop.
            Inside::Own(counter, depth) => counter.in_flight.store(depth, Release),
            Inside::Shared => {
                // Saturating: a child handler may have reset it under a call of the forking thread.
                let _ = SHARED.fetch_update(Release, Relaxed, |n| n.checked_sub(1));
            }
        }
    }
}

/// Enters p11gate: waits while a `fork()` is in progress, unless this thread is already inside.
#[inline(always)]
pub fn enter() -> Pass {
    match mine() {
        Some(counter) => {
            let depth = counter.in_flight.load(Relaxed);
            come_in(counter, depth);
            Pass(Inside::Own(counter, depth))
        }
        None => enter_first(),
    }
}

/// Counts this thread in (its counter held `depth`), through the gate. The caller's half of
/// the barrier between "I am in" and "is the gate closed?" is a compiler fence; the forking
/// thread's half is `membarrier()` (see [`heavy_barrier`]).
#[inline(always)]
fn come_in(counter: &'static Counter, depth: u32) {
    counter.in_flight.store(depth + 1, Relaxed);
    compiler_fence(SeqCst);
    if GATE.load(Relaxed) != 0 {
        come_in_slowly(counter, depth);
    }
}

/// The gate word was not zero: a real fence is needed (no membarrier), or a fork is in progress.
#[cold]
#[inline(never)]
fn come_in_slowly(counter: &'static Counter, depth: u32) {
    if GATE.load(Relaxed) & FENCE != 0 {
        fence(SeqCst);
    }
    if GATE.load(Relaxed) < CLOSING || depth > 0 {
        return;
    }
    loop {
        counter.in_flight.store(0, Release);
        wait_while_closed();
        counter.in_flight.store(1, Relaxed);
        fence(SeqCst);
        if GATE.load(Relaxed) < CLOSING {
            return;
        }
    }
}

/// The forking thread's half: after it, every thread either sees the gate closed or its
/// counter is seen.
fn heavy_barrier() {
    fence(SeqCst);
    if GATE.load(Relaxed) & FENCE == 0 && !os::membarrier() {
        // Cannot happen once registered (the kernel refuses only unregistered processes). If
        // it did, a caller's store could still sit in its CPU's store buffer, which drains in
        // far less than this.
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_while_closed() {
    loop {
        let gate = GATE.load(Acquire);
        if gate < CLOSING {
            return;
        }
        os::futex_wait(&GATE, gate, Some(Duration::from_millis(100)));
    }
}

/// A thread's first call: in through the shared counter, then a counter of its own is claimed
/// (inside, so that a fork waits for the claim) and the call moves onto it.
#[cold]
#[inline(never)]
fn enter_first() -> Pass {
    let shared = enter_shared();
    // Registering the destructor that gives the counter back; if this thread is already
    // exiting (its thread-locals are being destroyed), it gets no counter of its own.
    if RELEASE.try_with(|_| ()).is_err() {
        return shared;
    }
    let Ok(counter) = MINE.try_with(|m| {
        let counter = m.get().unwrap_or_else(claim);
        m.set(Some(counter));
        counter
    }) else {
        return shared;
    };
    // Counted on both, then only on its own: a forking thread reads SHARED before the
    // counters, and SHARED's release orders this store before the decrement.
    let depth = counter.in_flight.load(Relaxed);
    counter.in_flight.store(depth + 1, Relaxed);
    drop(shared);
    Pass(Inside::Own(counter, depth))
}

fn enter_shared() -> Pass {
    loop {
        SHARED.fetch_add(1, SeqCst);
        if GATE.load(SeqCst) < CLOSING {
            return Pass(Inside::Shared);
        }
        let _ = SHARED.fetch_update(Release, Relaxed, |n| n.checked_sub(1));
        wait_while_closed();
    }
}

/// A free counter, marked owned.
fn claim() -> &'static Counter {
    let mut chunk = &FIRST;
    loop {
        for c in &chunk.counters {
            if !c.owned.load(Relaxed)
                && c.owned
                    .compare_exchange(false, true, Acquire, Relaxed)
                    .is_ok()
            {
                return c;
            }
        }
        chunk = chunk.next.get_or_init(|| Box::new(Chunk::new()));
    }
}

/// Runs `f` as if this thread were not inside p11gate, then comes back in through the gate. For
/// a call that waits for another thread of p11gate which may itself be waiting at the gate
/// (`C_Finalize` joining the audit writer): otherwise a fork would wait for the call, the call
/// for the writer, and the writer for the fork. `f` must not hold a lock that matters to a
/// forked child.
pub fn outside<T>(f: impl FnOnce() -> T) -> T {
    let Some(counter) = mine() else {
        return f();
    };
    let depth = counter.in_flight.load(Relaxed);
    if depth == 0 {
        return f();
    }
    counter.in_flight.store(depth - 1, Release);
    // If `f` panics, the caller's pass still restores its own depth when it is dropped.
    let result = f();
    come_in(counter, depth - 1);
    result
}

/// How many calls are inside, other than the calling thread's.
fn running_elsewhere(own: Option<&'static Counter>) -> usize {
    // SHARED first: see enter_first.
    let mut n = SHARED.load(Acquire);
    for c in counters() {
        if c.in_flight.load(Acquire) != 0 && !own.is_some_and(|o| std::ptr::eq(o, c)) {
            n += 1;
        }
    }
    n
}

extern "C" fn prepare() {
    let _ = catch_unwind(|| {
        GATE.fetch_add(CLOSING, SeqCst);
        heavy_barrier();
        let own = mine();
        let started = Instant::now();
        let mut rounds = 0u32;
        let running = loop {
            let running = running_elsewhere(own);
            if running == 0 || started.elapsed() >= WAIT_LIMIT {
                break running;
            }
            rounds += 1;
            if rounds < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        };
        // Logged by the parent handler, after the fork: logging here could block the fork on
        // the logger (a full stderr pipe), and the child must not inherit a logger lock.
        LEFT_RUNNING.store(running, Relaxed);
    });
}

extern "C" fn parent() {
    let _ = catch_unwind(|| {
        let _ = GATE.fetch_update(SeqCst, Relaxed, |g| g.checked_sub(CLOSING));
        os::futex_wake(&GATE, i32::MAX);
        let running = LEFT_RUNNING.swap(0, Relaxed);
        if running > 0 {
            log::warn!(
                "fork(): {running} PKCS#11 call(s) still running in p11gate after {WAIT_LIMIT:?}; \
                 forked anyway: the child may hang in p11gate if one of them held a lock"
            );
        }
    });
}

/// Only the forking thread exists in the child: every other counter belonged to a thread that
/// is not here (they are all zero unless the wait timed out), and nobody waits at the gate.
extern "C" fn child() {
    let _ = catch_unwind(|| {
        let own = mine();
        for c in counters().filter(|&c| !own.is_some_and(|o| std::ptr::eq(o, c))) {
            c.in_flight.store(0, Relaxed);
            c.owned.store(false, Relaxed);
        }
        SHARED.store(0, Relaxed);
        LEFT_RUNNING.store(0, Relaxed);
        GATE.fetch_and(FENCE, SeqCst);
        crate::runtime::forked_child();
    });
}

/// Registers the fork handlers (and membarrier), once per process. Called lazily from
/// `C_GetFunctionList`, `C_GetInterface*` and `C_Initialize`: p11gate has no global
/// constructors. Until then no handler runs, so no fork can be held up by the gate.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Callers use compiler fences only once a fork is sure to use membarrier.
        if os::membarrier_register() {
            GATE.fetch_and(!FENCE, SeqCst);
        }
        let rc = os::at_fork(prepare, parent, child);
        if rc != 0 {
            log::warn!(
                "pthread_atfork failed ({rc}): fork() would not wait for running calls, nor a \
                 forked child be told to re-initialise"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The handlers are process-wide: this one test drives them, step by step, as a forking
    /// thread that is itself inside a call (so its own call is not waited for).
    #[test]
    fn prepare_waits_for_running_calls_and_holds_new_ones_until_parent() {
        install();
        let forking_call = enter();
        let inside = Arc::new(AtomicBool::new(false));
        let left = Arc::new(AtomicBool::new(false));
        let go = Arc::new(AtomicBool::new(false));
        let worker = {
            let (inside, left, go) = (inside.clone(), left.clone(), go.clone());
            std::thread::spawn(move || {
                let pass = enter();
                inside.store(true, SeqCst);
                while !go.load(SeqCst) {
                    std::thread::yield_now();
                }
                // Still inside for a while after the main thread's prepare() started.
                std::thread::sleep(Duration::from_millis(50));
                left.store(true, SeqCst);
                drop(pass);
            })
        };
        while !inside.load(SeqCst) {
            std::thread::yield_now();
        }
        go.store(true, SeqCst);
        prepare();
        assert!(
            left.load(SeqCst),
            "prepare() returned while a call was inside"
        );
        assert_eq!(LEFT_RUNNING.load(SeqCst), 0);
        worker.join().unwrap();

        // Closed: a new call waits; a nested call of a thread that is inside goes in.
        let entered = Arc::new(AtomicBool::new(false));
        let waiter = {
            let entered = entered.clone();
            std::thread::spawn(move || {
                let _pass = enter();
                entered.store(true, SeqCst);
            })
        };
        drop(enter());
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !entered.load(SeqCst),
            "a call went in while the gate was closed"
        );
        parent();
        waiter.join().unwrap();
        assert!(entered.load(SeqCst));
        assert_eq!(GATE.load(SeqCst) & !FENCE, 0);
        drop(forking_call);
    }

    #[test]
    fn nested_passes_restore_the_depth_and_outside_steps_out() {
        let outer = enter();
        let counter = mine().expect("claimed by the first call");
        assert_eq!(counter.in_flight.load(SeqCst), 1);
        let inner = enter();
        assert_eq!(counter.in_flight.load(SeqCst), 2);
        let seen = outside(|| counter.in_flight.load(SeqCst));
        assert_eq!(seen, 1);
        assert_eq!(counter.in_flight.load(SeqCst), 2);
        drop(inner);
        assert_eq!(counter.in_flight.load(SeqCst), 1);
        drop(outer);
        assert_eq!(counter.in_flight.load(SeqCst), 0);
    }

    /// Threads that come and go reuse counters: 500 of them, one after another, leave the
    /// list at its first chunk (other tests of this binary run fewer than 64 threads at once).
    #[test]
    fn exiting_threads_give_their_counters_back() {
        for _ in 0..500 {
            std::thread::spawn(|| drop(enter())).join().unwrap();
        }
        assert!(FIRST.next.get().is_none(), "a second chunk was allocated");
    }
}
