//! Whether an upstream that reconnects (`reconnect = true`) is up, or down with the code that
//! took it down.
//!
//! One state word: 0 while up, else the `CK_RV` (`CKR_DEVICE_REMOVED`, `CKR_DEVICE_ERROR`,
//! `CKR_TOKEN_NOT_PRESENT`) whose arrival took it down. The first call that returns such a code
//! moves it from up to down with one compare-and-swap, so exactly one caller starts the
//! reconnection (the hook the router installed: `router::reconnect`); every later call is
//! refused at once with that code, before the module sees it. There is no lock: a call never
//! waits for the reconnect thread, whatever that thread is waiting for in the module.
//!
//! Calls into the module are counted while they run ([`Lease`]), and so are the router's uses
//! of a session route: the reconnect thread finalises the module only once no call is left in
//! it (PKCS#11 leaves `C_Finalize` during another thread's call undefined), and swaps in the new
//! session handles only once no caller holds an old one.

use std::cell::Cell;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;
use pkcs11_sys::*;

/// The state word's value while up.
const UP: u64 = 0;

/// Starts the reconnection of a backend that just went down.
pub type DownHook = Box<dyn Fn() + Send + Sync>;

thread_local! {
    /// Set on the reconnect thread: its own calls must reach the module while it is down.
    static RECONNECTING: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as a reconnect thread (for the rest of its life).
pub fn this_thread_reconnects() {
    RECONNECTING.with(|r| r.set(true));
}

/// The health of one upstream.
pub struct Health {
    state: AtomicU64,
    /// When it went down (microseconds since the epoch).
    since_us: AtomicU64,
    /// Calls in the module, and session routes in use by callers.
    in_flight: AtomicUsize,
    /// Whether going down starts a reconnection: only while p11gate is initialised, with the
    /// hook installed and threads allowed; otherwise codes pass through as without `reconnect`.
    armed: AtomicBool,
    hook: OnceCell<DownHook>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("down", &self.down())
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .field("armed", &self.armed.load(Ordering::Relaxed))
            .finish()
    }
}

/// One counted use; the count drops when it does.
#[derive(Debug)]
pub struct Lease<'a>(&'a Health);

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: AtomicU64::new(UP),
            since_us: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            armed: AtomicBool::new(false),
            hook: OnceCell::new(),
        }
    }
}

/// Whether `rv`, returned by `function`, means the device is gone. CKR_TOKEN_NOT_PRESENT only
/// counts from a call on a session: from slot-level calls it describes an empty slot.
pub fn is_outage(function: &str, rv: CK_RV) -> bool {
    match rv {
        CKR_DEVICE_REMOVED | CKR_DEVICE_ERROR => true,
        CKR_TOKEN_NOT_PRESENT => !matches!(
            function,
            "C_GetSlotList"
                | "C_GetSlotInfo"
                | "C_GetTokenInfo"
                | "C_GetMechanismList"
                | "C_GetMechanismInfo"
                | "C_InitToken"
                | "C_OpenSession"
                | "C_CloseAllSessions"
                | "C_WaitForSlotEvent"
        ),
        _ => false,
    }
}

impl Health {
    /// Counts a use without refusing it (the router's session routes).
    #[inline]
    pub fn lease(&self) -> Lease<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Lease(self)
    }

    /// Counts a call into the module, or refuses it with the code that took the module down.
    /// Counting first, then reading the state, pairs with [`Health::wait_idle`]: either the
    /// call sees "down", or the reconnect thread sees the call.
    #[inline]
    pub fn enter(&self) -> Result<Lease<'_>, CK_RV> {
        let lease = self.lease();
        match self.state.load(Ordering::SeqCst) {
            UP => Ok(lease),
            _ if RECONNECTING.with(Cell::get) => Ok(lease),
            code => Err(code),
        }
    }

    /// Notes what a call returned: an outage code takes an armed upstream down and starts its
    /// reconnection (once: later codes find it down already).
    #[inline]
    pub fn returned(&self, function: &str, rv: CK_RV) {
        if rv != CKR_OK && is_outage(function, rv) {
            self.trip(rv);
        }
    }

    #[cold]
    fn trip(&self, rv: CK_RV) {
        if !self.armed.load(Ordering::SeqCst) {
            return;
        }
        if self
            .state
            .compare_exchange(UP, rv, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.since_us
                .store(crate::audit::record::now_us(), Ordering::SeqCst);
            if let Some(start) = self.hook.get() {
                start();
            }
        }
    }

    /// The code that took it down, while it is down.
    pub fn down(&self) -> Option<CK_RV> {
        match self.state.load(Ordering::SeqCst) {
            UP => None,
            code => Some(code),
        }
    }

    /// When it went down (microseconds since the epoch).
    pub fn since_us(&self) -> u64 {
        self.since_us.load(Ordering::Relaxed)
    }

    /// Lets going down start a reconnection through `hook` (installed once: the router and
    /// its backends live as long as the process).
    pub fn arm(&self, hook: impl FnOnce() -> DownHook) {
        self.hook.get_or_init(hook);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Outage codes pass through again without starting anything (C_Finalize).
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }

    /// Up again: calls reach the module.
    pub fn mark_up(&self) {
        self.state.store(UP, Ordering::SeqCst);
    }

    /// A fresh start (C_Initialize). In a child after `fork()` the parent's calls in flight
    /// never return here, so the count starts from zero too.
    pub fn reset(&self, forked: bool) {
        self.state.store(UP, Ordering::SeqCst);
        if forked {
            self.in_flight.store(0, Ordering::SeqCst);
        }
    }

    /// Waits until no call is in the module and no caller holds a session route; false when
    /// `stop` was set meanwhile. Logs once if that takes long (a call hanging in the module).
    pub fn wait_idle(&self, name: &str, stop: &AtomicBool) -> bool {
        let started = Instant::now();
        let mut told = false;
        loop {
            fence(Ordering::SeqCst);
            let n = self.in_flight.load(Ordering::SeqCst);
            if n == 0 {
                return true;
            }
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            if !told && started.elapsed() >= Duration::from_secs(5) {
                log::warn!("upstream {name}: waiting for {n} call(s) still in the module before re-initialising it");
                told = true;
            }
            std::thread::park_timeout(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn only_armed_outage_codes_take_it_down_and_the_hook_runs_once() {
        let h = Arc::new(Health::default());
        h.returned("C_Encrypt", CKR_DEVICE_REMOVED);
        assert_eq!(h.down(), None, "not armed: passes through");
        let starts = Arc::new(AtomicUsize::new(0));
        let s = starts.clone();
        h.arm(move || {
            Box::new(move || {
                s.fetch_add(1, Ordering::SeqCst);
            })
        });
        h.returned("C_Encrypt", CKR_KEY_HANDLE_INVALID);
        h.returned("C_GetTokenInfo", CKR_TOKEN_NOT_PRESENT);
        assert_eq!(h.down(), None);
        h.returned("C_Encrypt", CKR_DEVICE_ERROR);
        h.returned("C_Sign", CKR_DEVICE_REMOVED);
        assert_eq!(h.down(), Some(CKR_DEVICE_ERROR), "the first code stays");
        assert_eq!(starts.load(Ordering::SeqCst), 1);
        assert_eq!(h.enter().map(|_| ()), Err(CKR_DEVICE_ERROR));
        h.mark_up();
        assert!(h.enter().is_ok());
        h.returned("C_FindObjectsInit", CKR_TOKEN_NOT_PRESENT);
        assert_eq!(h.down(), Some(CKR_TOKEN_NOT_PRESENT));
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_reconnect_thread_gets_through_and_idle_waits_for_leases() {
        let h = Arc::new(Health::default());
        h.arm(|| Box::new(|| {}));
        h.returned("C_Encrypt", CKR_DEVICE_REMOVED);
        let h2 = h.clone();
        std::thread::spawn(move || {
            this_thread_reconnects();
            assert!(h2.enter().is_ok());
        })
        .join()
        .unwrap();
        assert_eq!(h.enter().map(|_| ()), Err(CKR_DEVICE_REMOVED));
        let stop = AtomicBool::new(false);
        assert!(h.wait_idle("t", &stop), "refused calls hold no count");
        let lease = h.lease();
        stop.store(true, Ordering::SeqCst);
        assert!(!h.wait_idle("t", &stop), "stopped while a lease is held");
        drop(lease);
        assert!(h.wait_idle("t", &stop));
    }
}
