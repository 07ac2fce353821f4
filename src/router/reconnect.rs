//! Bringing an upstream back after its device went away (`reconnect = true`).
//!
//! The first call to the upstream that returns `CKR_DEVICE_REMOVED`, `CKR_DEVICE_ERROR`, or
//! `CKR_TOKEN_NOT_PRESENT` from a session call, takes it down (`backend::health`): that call
//! returns its code untouched, and so does every later call to that upstream, at once, without
//! reaching the module. Other upstreams and their sessions are not involved.
//!
//! Going down starts one thread for that upstream (never two: only the call that moves the
//! state from up to down starts one). It tries, 100 ms apart at first, doubling up to 5 s:
//! 1. wait until no call is left in the module (a call in flight keeps the module busy);
//! 2. `C_Finalize` (best effort) and `C_Initialize` with the application's arguments;
//! 3. look the mapped tokens up again by label, serial or slot;
//! 4. open every session the app still has on that upstream again, with its original flags,
//!    and put the new upstream handle behind the app's virtual handle (which stays valid);
//! 5. log in once per slot whose credential p11gate holds, where the app had logged in with
//!    its mapped PIN; a session logged in with a PIN p11gate passed through comes back logged
//!    out (p11gate does not keep that PIN);
//! 6. start a new object-handle epoch ([`super::objects`]): handles from before are refused;
//! 7. wait until no caller holds an old session route, and mark the upstream up.
//!
//! It logs one warning when the upstream goes down and one line when it is back, and writes an
//! `event=outage` audit record naming the upstream, the code and when it went down.
//! Operations that were in progress are gone (the next call of one gets the module's answer,
//! e.g. `CKR_OPERATION_NOT_INITIALIZED`), and so are the session's find operation and objects.
//!
//! `C_Finalize` stops the thread and waits for it (it returns as soon as its current call into
//! the module does); without threads (`CKF_LIBRARY_CANT_CREATE_OS_THREADS`) nothing reconnects
//! and codes pass through as with `reconnect = false`. A child after `fork()` has no such thread
//! and never waits for its parent's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pkcs11_sys::*;

use super::slots;
use super::Router;
use crate::audit::{self, record::Event, record::Record};
use crate::backend::health::{self, Health};
use crate::error::{Error, Result};
use crate::ffi::args::InBuf;
use crate::names::rv_name;
use crate::runtime::fork_generation;

/// The first pause between tries, and the longest.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// The reconnect threads of one router, one place per backend.
#[derive(Debug)]
pub struct Workers(Vec<Worker>);

#[derive(Debug, Default)]
struct Worker {
    /// The thread, with the fork generation it was started in.
    thread: Mutex<Option<(JoinHandle<()>, u32)>>,
    /// Set by C_Finalize: the thread returns at its next step.
    stop: AtomicBool,
}

impl Workers {
    pub fn new(backends: usize) -> Workers {
        Workers((0..backends).map(|_| Worker::default()).collect())
    }
}

/// What a successful try did.
struct Recovered {
    sessions: usize,
    logins: usize,
}

impl Router {
    /// Lets the upstreams that reconnect start doing so (C_Initialize). The router lives as long
    /// as the process, so the threads may borrow it.
    pub fn watch_upstreams(&'static self, threads_allowed: bool) {
        for (i, health) in self.health.iter().enumerate() {
            let Some(health) = health else { continue };
            if !threads_allowed {
                log::warn!(
                    "upstream {}: reconnect is off: the application does not let p11gate create threads",
                    self.backends[i].name()
                );
                health.disarm();
                continue;
            }
            self.reconnects.0[i].stop.store(false, Ordering::SeqCst);
            health.arm(|| Box::new(move || self.start_reconnect(i)));
        }
    }

    /// Stops every reconnect thread and waits for it (C_Finalize).
    pub(super) fn stop_reconnects(&self) {
        for (i, health) in self.health.iter().enumerate() {
            let Some(health) = health else { continue };
            health.disarm();
            let worker = &self.reconnects.0[i];
            let thread = {
                let mut slot = worker.thread.lock();
                worker.stop.store(true, Ordering::SeqCst);
                slot.take()
            };
            join(thread);
        }
    }

    /// Runs in the call that took backend `i` down: starts its reconnect thread.
    fn start_reconnect(&'static self, i: usize) {
        let worker = &self.reconnects.0[i];
        let mut slot = worker.thread.lock();
        if worker.stop.load(Ordering::SeqCst) {
            return;
        }
        // The previous thread marked the upstream up as its last step: it is ending.
        join(slot.take());
        let spawned = std::thread::Builder::new()
            .name("p11gate-reconnect".into())
            .spawn(move || {
                let run =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reconnect(i)));
                if run.is_err() {
                    // A bug: leave the upstream as without reconnect rather than down for good.
                    log::error!(
                        "upstream {}: the reconnect thread panicked",
                        self.backends[i].name()
                    );
                    if let Some(h) = &self.health[i] {
                        h.mark_up();
                    }
                }
            });
        match spawned {
            Ok(handle) => *slot = Some((handle, fork_generation())),
            Err(e) => {
                log::error!(
                    "upstream {}: cannot start the reconnect thread ({e}); it stays as it is",
                    self.backends[i].name()
                );
                if let Some(h) = &self.health[i] {
                    h.mark_up();
                }
            }
        }
    }

    /// The reconnect thread of backend `i`.
    fn reconnect(&'static self, i: usize) {
        health::this_thread_reconnects();
        let (Some(health), Some(worker)) = (&self.health[i], self.reconnects.0.get(i)) else {
            return;
        };
        let name = self.backends[i].name();
        let code = health.down().unwrap_or(CKR_DEVICE_ERROR);
        log::warn!(
            "upstream {name}: down ({}): its calls fail with that code until it is back; reconnecting",
            rv_name(code)
        );
        let mut pause = FIRST_PAUSE;
        let mut tries = 0u64;
        loop {
            if !health.wait_idle(name, &worker.stop) {
                return;
            }
            tries += 1;
            match self.recover(i) {
                Ok(done) => {
                    // Nobody may still hold a session route from before the swap.
                    if !health.wait_idle(name, &worker.stop) {
                        return;
                    }
                    self.report_back(i, health, code, tries, &done);
                    health.mark_up();
                    return;
                }
                Err(e) => log::debug!(
                    "upstream {name}: reconnect try {tries} failed: {}",
                    rv_name(e.rv())
                ),
            }
            if !sleep_unless_stopped(pause, &worker.stop) {
                return;
            }
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    /// One try: initialise the module again, find the tokens, re-open the sessions, log in.
    fn recover(&self, i: usize) -> Result<Recovered> {
        let backend = &*self.backends[i];
        backend.reinitialize()?;
        let mine = || {
            self.slots
                .iter()
                .enumerate()
                .filter(move |(_, e)| e.backend == i)
        };
        // Where each mapped token is now (kept here: an application's C_GetSlotList meanwhile
        // may overwrite the entry's cache with "not found" while the upstream is still down).
        let mut located = Vec::new();
        for (index, entry) in mine().filter(|(_, e)| !e.is_passthrough()) {
            entry.forget_location();
            located.push((index, entry.find(backend).ok_or(Error::TokenNotPresent)?));
        }
        let mut sessions = 0;
        for (handle, route) in self.sessions.open_sessions() {
            if route.backend != i {
                continue;
            }
            // A passthrough session's slot id is the upstream's own.
            let real_slot = located
                .iter()
                .find(|(index, _)| *index == route.slot_index)
                .map_or(route.slot, |(_, real)| *real);
            let new = match backend.open_session(real_slot, route.flags) {
                Ok(new) => new,
                Err(e) if is_retryable(&e) => return Err(e),
                Err(e) => {
                    // It cannot come back: the app gets CKR_SESSION_HANDLE_INVALID for it
                    // rather than an upstream handle that may now name another session.
                    log::warn!(
                        "upstream {}: session {handle:#x} cannot be opened again ({}); it is closed",
                        backend.name(),
                        rv_name(e.rv())
                    );
                    self.sessions.remove(handle);
                    continue;
                }
            };
            if self.sessions.replace_handle(handle, route.handle, new) {
                sessions += 1;
            } else {
                let _ = backend.close_session(new);
            }
        }
        let mut logins = 0;
        for (index, entry) in mine().filter(|(_, e)| e.logged_in() && e.holds_credential()) {
            let Some(credential) = entry.credential() else {
                continue;
            };
            let Some(route) = self
                .sessions
                .open_routes()
                .into_iter()
                .find(|r| r.slot_index == index)
            else {
                continue;
            };
            let secret = slots::credential_secret(&credential);
            drop(credential);
            match backend.login(route.handle, CKU_USER, InBuf::from_slice(&secret)) {
                Ok(()) | Err(Error::Backend(CKR_USER_ALREADY_LOGGED_IN)) => logins += 1,
                Err(e) if is_retryable(&e) => return Err(e),
                Err(e) => {
                    log::error!(
                        "upstream {}: slot {}: logging in again failed ({}); its sessions are back logged out",
                        backend.name(),
                        entry.id,
                        rv_name(e.rv())
                    );
                    entry.set_logged_in(false);
                }
            }
        }
        if let Some(objects) = &self.objects {
            objects.new_epoch(i);
        }
        Ok(Recovered { sessions, logins })
    }

    /// The line and the audit record for an upstream that is back.
    fn report_back(&self, i: usize, health: &Health, code: CK_RV, tries: u64, done: &Recovered) {
        let name = self.backends[i].name();
        let since = health.since_us();
        let down_ms = audit::record::now_us().saturating_sub(since) / 1000;
        let msg = format!(
            "back after {down_ms} ms ({tries} tries): {} session(s) re-opened, {} login(s)",
            done.sessions, done.logins
        );
        log::info!("upstream {name}: {msg}");
        let mut r = Record::note(Event::Outage, self.app.clone().into());
        r.upstream = Some(name.into());
        r.rv = Some(code);
        r.since_us = Some(since);
        r.msg = Some(msg.into_boxed_str());
        audit::note(r);
    }
}

/// A failure that the next try may not have: the device (still) away, the token not found yet.
fn is_retryable(e: &Error) -> bool {
    match e {
        Error::Backend(rv) => matches!(
            *rv,
            CKR_DEVICE_REMOVED
                | CKR_DEVICE_ERROR
                | CKR_TOKEN_NOT_PRESENT
                | CKR_SLOT_ID_INVALID
                | CKR_CRYPTOKI_NOT_INITIALIZED
        ),
        Error::TokenNotPresent | Error::NotInitialized => true,
        _ => false,
    }
}

/// Sleeps `pause`, or less when `stop` is set (the stopper unparks the thread); false then.
fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + pause;
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::park_timeout(until - now);
    }
}

/// Wakes and waits for a reconnect thread of this process; one started before a `fork()` does
/// not exist here and is let go.
fn join(thread: Option<(JoinHandle<()>, u32)>) {
    let Some((handle, generation)) = thread else {
        return;
    };
    if generation != fork_generation() {
        std::mem::forget(handle);
        return;
    }
    handle.thread().unpark();
    let _ = handle.join();
}
