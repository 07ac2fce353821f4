//! Virtual session handles, looked up without a lock.
//!
//! Every session an application opens gets a p11gate handle that names an entry in this table;
//! the entry holds the backend's own handle, the backend's index and the virtual slot. Lookups
//! happen on every call (Vault's seal wrap calls `C_Encrypt`/`C_Decrypt` from many threads), so
//! they take no lock and write no shared memory: an entry is a small seqlock, read with two
//! loads of its state word around the field reads. Opening and closing (rare) claim entries
//! with compare-and-swap, so there is no lock to be left held by a thread that vanished in
//! `fork()` either.
//!
//! A handle is `generation << INDEX_BITS | (index + 1)`, never 0. The generation (13 bits)
//! changes every time an entry is reused, so a stale or forged handle is refused rather than
//! reaching some other session. Handles stay below 2^31 for clients that keep them in 32-bit
//! integers.

use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

use once_cell::sync::OnceCell;
use pkcs11_sys::{CK_FLAGS, CK_SESSION_HANDLE, CK_SLOT_ID};

use crate::error::{Error, Result};

const INDEX_BITS: u32 = 18;
const CHUNK_BITS: u32 = 10;
const CHUNK_LEN: usize = 1 << CHUNK_BITS;
const CHUNKS: usize = 1 << (INDEX_BITS - CHUNK_BITS);
/// The most sessions open at once through one p11gate runtime (262,143).
pub const MAX_SESSIONS: usize = (1 << INDEX_BITS) - 1;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const GENERATION_MASK: u64 = (1 << 13) - 1;

// An entry's state word: generation << 2 | flags.
const OPEN: u64 = 1;
const CLAIMED: u64 = 2;
const FLAGS: u64 = OPEN | CLAIMED;

/// Where a virtual session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRoute {
    pub backend: usize,
    /// The index of the router's slot entry the session was opened on.
    pub slot_index: usize,
    pub handle: CK_SESSION_HANDLE,
    /// The virtual slot id.
    pub slot: CK_SLOT_ID,
    /// The flags it was opened with (to open it again after a reconnect).
    pub flags: CK_FLAGS,
}

#[derive(Debug)]
struct Entry {
    state: AtomicU64,
    handle: AtomicU64,
    slot: AtomicU64,
    /// backend << 32 | slot_index
    owner: AtomicU64,
    flags: AtomicU64,
}

/// The table of open sessions of one runtime.
#[derive(Debug)]
pub struct SessionTable {
    /// Fixed sizes, so that indexing with masked bits needs no bounds checks on the hot path.
    chunks: Box<[OnceCell<Box<[Entry; CHUNK_LEN]>>; CHUNKS]>,
    /// Entries ever used; all below it are allocated.
    used: AtomicUsize,
    /// Where the next search for a free entry starts, so reuse rotates through the table.
    hint: AtomicUsize,
}

impl Entry {
    const fn new() -> Entry {
        Entry {
            state: AtomicU64::new(0),
            handle: AtomicU64::new(0),
            slot: AtomicU64::new(0),
            owner: AtomicU64::new(0),
            flags: AtomicU64::new(0),
        }
    }
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable {
            chunks: Box::new([const { OnceCell::new() }; CHUNKS]),
            used: AtomicUsize::new(0),
            hint: AtomicUsize::new(0),
        }
    }
}

/// The generation bits an entry's state puts into its handles.
#[inline]
fn generation_of(state: u64) -> u64 {
    (state >> 2) & GENERATION_MASK
}

#[inline]
fn handle_of(state: u64, index: usize) -> CK_SESSION_HANDLE {
    generation_of(state) << INDEX_BITS | (index as u64 + 1)
}

/// The entry index a handle names (None for 0 and for handles p11gate cannot have made).
#[inline]
fn index_of(handle: CK_SESSION_HANDLE) -> Option<usize> {
    let index = ((handle & INDEX_MASK) as usize).wrapping_sub(1);
    (index < MAX_SESSIONS).then_some(index)
}

/// The table entry a handle names, for per-session side tables (`usize::MAX` for a handle
/// p11gate cannot have made).
#[inline]
pub fn entry_index(handle: CK_SESSION_HANDLE) -> usize {
    index_of(handle).unwrap_or(usize::MAX)
}

impl SessionTable {
    fn entry(&self, index: usize) -> Option<&Entry> {
        self.chunks
            .get(index >> CHUNK_BITS)?
            .get()
            .map(|c| &c[index & (CHUNK_LEN - 1)])
    }

    fn entry_or_alloc(&self, index: usize) -> &Entry {
        let chunk = self.chunks[index >> CHUNK_BITS]
            .get_or_init(|| Box::new([const { Entry::new() }; CHUNK_LEN]));
        &chunk[index & (CHUNK_LEN - 1)]
    }

    /// The route of a virtual handle, or `CKR_SESSION_HANDLE_INVALID`.
    #[inline]
    pub fn get(&self, handle: CK_SESSION_HANDLE) -> Result<SessionRoute> {
        let index = index_of(handle).ok_or(Error::SessionHandleInvalid)?;
        let entry = self.entry(index).ok_or(Error::SessionHandleInvalid)?;
        let state = entry.state.load(Ordering::Acquire);
        if state & FLAGS != OPEN || handle_of(state, index) != handle {
            return Err(Error::SessionHandleInvalid);
        }
        let owner = entry.owner.load(Ordering::Relaxed);
        let route = SessionRoute {
            backend: (owner >> 32) as usize,
            slot_index: (owner & 0xffff_ffff) as usize,
            handle: entry.handle.load(Ordering::Relaxed),
            slot: entry.slot.load(Ordering::Relaxed),
            flags: entry.flags.load(Ordering::Relaxed),
        };
        // Seqlock check: if the entry was closed and reused while we read, refuse.
        fence(Ordering::Acquire);
        if entry.state.load(Ordering::Relaxed) != state {
            return Err(Error::SessionHandleInvalid);
        }
        Ok(route)
    }

    /// Records an open backend session and returns its new virtual handle.
    pub fn insert(&self, route: SessionRoute) -> Result<CK_SESSION_HANDLE> {
        let used = self.used.load(Ordering::Acquire);
        let start = self.hint.load(Ordering::Relaxed);
        for i in 0..used {
            let index = (start + i) % used;
            if let Some(h) = self.try_claim(index, route) {
                self.hint.store(index + 1, Ordering::Relaxed);
                return Ok(h);
            }
        }
        loop {
            let index = self.used.load(Ordering::Acquire);
            if index >= MAX_SESSIONS {
                return Err(Error::SessionCount);
            }
            self.entry_or_alloc(index);
            if self
                .used
                .compare_exchange(index, index + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if let Some(h) = self.try_claim(index, route) {
                    return Ok(h);
                }
            }
        }
    }

    fn try_claim(&self, index: usize, route: SessionRoute) -> Option<CK_SESSION_HANDLE> {
        let entry = self.entry(index)?;
        let state = entry.state.load(Ordering::Relaxed);
        if state & FLAGS != 0 {
            return None;
        }
        entry
            .state
            .compare_exchange(state, state | CLAIMED, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // Seqlock write side: the claim above is visible before the new fields.
        fence(Ordering::Release);
        entry.handle.store(route.handle, Ordering::Relaxed);
        entry.slot.store(route.slot, Ordering::Relaxed);
        entry.flags.store(route.flags, Ordering::Relaxed);
        entry.owner.store(
            (route.backend as u64) << 32 | route.slot_index as u64 & 0xffff_ffff,
            Ordering::Relaxed,
        );
        entry
            .state
            .store((state & !FLAGS) | OPEN, Ordering::Release);
        Some(handle_of(state, index))
    }

    /// Forgets a virtual handle (after the backend closed it). Returns whether it was open.
    pub fn remove(&self, handle: CK_SESSION_HANDLE) -> bool {
        let Some(index) = index_of(handle) else {
            return false;
        };
        let Some(entry) = self.entry(index) else {
            return false;
        };
        let state = entry.state.load(Ordering::Acquire);
        if state & FLAGS != OPEN || handle_of(state, index) != handle {
            return false;
        }
        let closed = ((state >> 2) + 1) << 2;
        entry
            .state
            .compare_exchange(state, closed, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Puts a new backend handle behind an open virtual handle (after a reconnect re-opened its
    /// session), if it still has `old`; false when the application closed it meanwhile. The
    /// virtual handle does not change. Callers that may hold the old route are excluded by
    /// the upstream's health lease (`backend::health`), not by this table.
    pub fn replace_handle(
        &self,
        handle: CK_SESSION_HANDLE,
        old: CK_SESSION_HANDLE,
        new: CK_SESSION_HANDLE,
    ) -> bool {
        let Some(index) = index_of(handle) else {
            return false;
        };
        let Some(entry) = self.entry(index) else {
            return false;
        };
        let state = entry.state.load(Ordering::Acquire);
        if state & FLAGS != OPEN || handle_of(state, index) != handle {
            return false;
        }
        entry
            .handle
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
            && entry.state.load(Ordering::Acquire) == state
    }

    /// Forgets every session that `matches`, returning their virtual handles.
    pub fn remove_where(&self, matches: impl Fn(&SessionRoute) -> bool) -> Vec<CK_SESSION_HANDLE> {
        let mut removed = Vec::new();
        for index in 0..self.used.load(Ordering::Acquire) {
            let Some(entry) = self.entry(index) else {
                continue;
            };
            let state = entry.state.load(Ordering::Acquire);
            if state & FLAGS != OPEN {
                continue;
            }
            let handle = handle_of(state, index);
            if let Ok(route) = self.get(handle) {
                if matches(&route) && self.remove(handle) {
                    removed.push(handle);
                }
            }
        }
        removed
    }

    /// Every open session.
    pub fn open_routes(&self) -> Vec<SessionRoute> {
        self.open_sessions().into_iter().map(|(_, r)| r).collect()
    }

    /// Every open session with its virtual handle, for C_Finalize.
    pub fn open_sessions(&self) -> Vec<(CK_SESSION_HANDLE, SessionRoute)> {
        let mut open = Vec::new();
        for index in 0..self.used.load(Ordering::Acquire) {
            let Some(entry) = self.entry(index) else {
                continue;
            };
            let state = entry.state.load(Ordering::Acquire);
            if state & FLAGS == OPEN {
                let handle = handle_of(state, index);
                if let Ok(r) = self.get(handle) {
                    open.push((handle, r));
                }
            }
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(h: u64) -> SessionRoute {
        SessionRoute {
            backend: 0,
            slot_index: 1,
            handle: h,
            slot: 7,
            flags: 6,
        }
    }

    #[test]
    fn insert_get_remove() {
        let t = SessionTable::default();
        let a = t.insert(route(100)).unwrap();
        let b = t.insert(route(200)).unwrap();
        assert_ne!(a, 0);
        assert_ne!(a, b);
        assert_eq!(t.get(a).unwrap(), route(100));
        assert_eq!(t.get(b).unwrap(), route(200));
        assert!(t.remove(a));
        assert!(!t.remove(a));
        assert_eq!(t.get(a), Err(Error::SessionHandleInvalid));
        assert_eq!(t.get(0), Err(Error::SessionHandleInvalid));
        assert_eq!(t.get(u64::MAX), Err(Error::SessionHandleInvalid));
    }

    #[test]
    fn a_stale_handle_never_reaches_the_session_that_reused_its_entry() {
        let t = SessionTable::default();
        let a = t.insert(route(1)).unwrap();
        t.remove(a);
        let b = t.insert(route(2)).unwrap();
        assert_eq!(a & INDEX_MASK, b & INDEX_MASK, "same entry reused");
        assert_ne!(a, b);
        assert_eq!(t.get(a), Err(Error::SessionHandleInvalid));
        assert_eq!(t.get(b).unwrap().handle, 2);
        assert!(b < 1 << 31);
    }

    #[test]
    fn a_reconnect_swaps_the_backend_handle_behind_the_same_virtual_handle() {
        let t = SessionTable::default();
        let a = t.insert(route(100)).unwrap();
        assert!(!t.replace_handle(a, 99, 5), "not the handle it has");
        assert!(t.replace_handle(a, 100, 5));
        assert_eq!(
            t.get(a).unwrap(),
            SessionRoute {
                handle: 5,
                ..route(100)
            }
        );
        t.remove(a);
        assert!(!t.replace_handle(a, 5, 6), "closed meanwhile");
        let b = t.insert(route(200)).unwrap();
        assert!(
            !t.replace_handle(a, 200, 7),
            "a stale handle of a reused entry"
        );
        assert_eq!(t.get(b).unwrap().handle, 200);
    }

    #[test]
    fn remove_where_and_open_routes() {
        let t = SessionTable::default();
        let hs: Vec<_> = (0..10)
            .map(|i| {
                t.insert(SessionRoute {
                    backend: 0,
                    slot_index: 0,
                    handle: i,
                    slot: i % 2,
                    flags: 4,
                })
                .unwrap()
            })
            .collect();
        let removed = t.remove_where(|r| r.slot == 1);
        assert_eq!(removed.len(), 5);
        assert_eq!(t.open_routes().len(), 5);
        assert!(t.open_routes().iter().all(|r| r.slot == 0));
        assert_eq!(t.get(hs[1]), Err(Error::SessionHandleInvalid));
        assert_eq!(t.get(hs[2]).unwrap().handle, 2);
    }

    #[test]
    fn concurrent_open_use_close() {
        let t = std::sync::Arc::new(SessionTable::default());
        let threads: Vec<_> = (0..8u64)
            .map(|n| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        let real = n << 32 | i;
                        let h = t
                            .insert(SessionRoute {
                                backend: n as usize,
                                slot_index: 2,
                                handle: real,
                                slot: n,
                                flags: 4,
                            })
                            .unwrap();
                        let r = t.get(h).unwrap();
                        assert_eq!(
                            (r.handle, r.slot, r.backend, r.slot_index),
                            (real, n, n as usize, 2)
                        );
                        assert!(t.remove(h));
                        assert_eq!(t.get(h), Err(Error::SessionHandleInvalid));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert!(t.open_routes().is_empty());
    }
}
