//! Object handles and the slot they belong to, where that can be confused.
//!
//! Object handles pass through unchanged. When each of an app's slots has its own backend,
//! a handle can only mean something to the backend of the session that uses it, and nothing
//! is tracked. When one backend serves several of the app's slots (two tokens of one HSM
//! module), its handle space is shared between them: then p11gate records which slot each
//! handle was handed out on (by C_FindObjects, C_CreateObject, C_CopyObject, C_GenerateKey,
//! C_GenerateKeyPair, C_UnwrapKey, C_DeriveKey) and refuses it on any other slot, before the
//! backend sees it.
//!
//! A backend that reconnected (`reconnect = true`) numbers its objects afresh: SoftHSMv2, for
//! one, hands out handles in the order objects are first found after `C_Initialize`, so a
//! handle from before the outage may name nothing, or another object. Each reconnect starts a
//! new epoch of that backend; from then on only handles handed out in the current epoch are
//! accepted, the others are refused like a handle of another slot, and the application finds
//! its objects again (Vault looks its keys up by label). Until a backend's first reconnect
//! nothing of it is tracked. What this cannot catch: a number handed out again in the new epoch
//! is accepted, whatever it named before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use pkcs11_sys::{CK_INVALID_HANDLE, CK_OBJECT_HANDLE};

use super::slots::SlotEntry;
use crate::error::{Error, Result};

const SHARDS: usize = 16;

/// Where and when a handle was handed out.
#[derive(Debug, Default)]
struct Seen {
    /// The slot indices it was handed out on (two slots on one token can both see an object);
    /// kept for slots that share their backend.
    slots: Vec<usize>,
    /// The backend's epoch at the time.
    epoch: u64,
}

/// (backend, handle) -> where and when it was handed out.
type Shard = RwLock<HashMap<(usize, CK_OBJECT_HANDLE), Seen>>;

/// Which slot and epoch each object handle of a tracked backend belongs to.
#[derive(Debug)]
pub struct ObjectScopes {
    /// Per slot index: whether its backend serves other slots of the app too.
    shared: Vec<bool>,
    /// Per backend: how many times it reconnected (0: never; its handles are not tracked).
    epochs: Vec<AtomicU64>,
    /// Sharded by handle to keep readers apart.
    shards: Vec<Shard>,
}

impl ObjectScopes {
    /// `None` when no backend serves two of the app's slots and none reconnects (nothing to
    /// keep apart). `reconnects` has one entry per backend.
    pub fn new(slots: &[SlotEntry], reconnects: &[bool]) -> Option<ObjectScopes> {
        let shared: Vec<bool> = slots
            .iter()
            .map(|e| {
                !e.is_passthrough() && slots.iter().filter(|o| o.backend == e.backend).count() > 1
            })
            .collect();
        (shared.iter().any(|s| *s) || reconnects.iter().any(|r| *r)).then(|| ObjectScopes {
            shared,
            epochs: reconnects.iter().map(|_| AtomicU64::new(0)).collect(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        })
    }

    fn shard(&self, handle: CK_OBJECT_HANDLE) -> &Shard {
        &self.shards[handle as usize % SHARDS]
    }

    fn epoch(&self, backend: usize) -> u64 {
        self.epochs
            .get(backend)
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    /// Records handles handed out on `slot`.
    pub fn record(&self, backend: usize, slot: usize, handles: &[CK_OBJECT_HANDLE]) {
        let shared = self.shared.get(slot).copied().unwrap_or(false);
        let epoch = self.epoch(backend);
        if !shared && epoch == 0 {
            return;
        }
        for &h in handles.iter().filter(|h| **h != CK_INVALID_HANDLE) {
            let mut shard = self.shard(h).write();
            let seen = shard.entry((backend, h)).or_default();
            if seen.epoch != epoch {
                *seen = Seen {
                    slots: Vec::new(),
                    epoch,
                };
            }
            if shared && !seen.slots.contains(&slot) {
                seen.slots.push(slot);
            }
        }
    }

    /// Forgets a destroyed object.
    pub fn forget(&self, backend: usize, handle: CK_OBJECT_HANDLE) {
        self.shard(handle).write().remove(&(backend, handle));
    }

    /// Starts a new epoch of `backend` after it reconnected: every handle it handed out
    /// before is refused from now on.
    pub fn new_epoch(&self, backend: usize) {
        let Some(e) = self.epochs.get(backend) else {
            return;
        };
        e.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            shard.write().retain(|(b, _), _| *b != backend);
        }
    }

    /// Refuses a handle that was not handed out on `slot`, or not since its backend last
    /// reconnected (`invalid` is the spec's code for the argument: CKR_OBJECT_HANDLE_INVALID,
    /// CKR_KEY_HANDLE_INVALID, ...).
    #[inline]
    pub fn check(
        &self,
        backend: usize,
        slot: usize,
        handle: CK_OBJECT_HANDLE,
        invalid: Error,
    ) -> Result<()> {
        let shared = self.shared.get(slot).copied().unwrap_or(false);
        let epoch = self.epoch(backend);
        if (!shared && epoch == 0) || handle == CK_INVALID_HANDLE {
            return Ok(());
        }
        match self.shard(handle).read().get(&(backend, handle)) {
            Some(seen) if seen.epoch == epoch && (!shared || seen.slots.contains(&slot)) => Ok(()),
            _ => {
                let (why, rule) = if epoch > 0 {
                    (
                        "it was not handed out on this slot since its upstream reconnected",
                        "object scope (handle from before a reconnect, or of another slot)",
                    )
                } else {
                    (
                        "it was not handed out on this slot",
                        "object scope (handle of another slot)",
                    )
                };
                log::warn!("object handle {handle:#x} refused: {why}");
                crate::audit::note_refusal(rule);
                Err(invalid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenTarget;
    use crate::policy::SlotPolicy;

    fn entry(id: u64, backend: usize) -> SlotEntry {
        SlotEntry::new(
            id,
            backend,
            Some(TokenTarget::Slot(id)),
            SlotPolicy::default(),
            None,
        )
    }

    #[test]
    fn only_shared_backends_are_tracked() {
        assert!(ObjectScopes::new(&[entry(0, 0), entry(1, 1)], &[false, false]).is_none());
        let scopes =
            ObjectScopes::new(&[entry(0, 0), entry(1, 0), entry(2, 1)], &[false, false]).unwrap();
        scopes.record(0, 0, &[5, 6]);
        assert_eq!(scopes.check(0, 0, 5, Error::SessionHandleInvalid), Ok(()));
        assert_eq!(
            scopes.check(0, 1, 5, Error::SessionHandleInvalid),
            Err(Error::SessionHandleInvalid)
        );
        assert_eq!(
            scopes.check(0, 1, 77, Error::SessionHandleInvalid),
            Err(Error::SessionHandleInvalid)
        );
        // Slot 2 has a backend of its own: not tracked.
        assert_eq!(scopes.check(1, 2, 77, Error::SessionHandleInvalid), Ok(()));
        // Found through slot 1 as well (same token): both may use it.
        scopes.record(0, 1, &[5]);
        assert_eq!(scopes.check(0, 0, 5, Error::SessionHandleInvalid), Ok(()));
        assert_eq!(scopes.check(0, 1, 5, Error::SessionHandleInvalid), Ok(()));
        scopes.forget(0, 5);
        assert_eq!(
            scopes.check(0, 0, 5, Error::SessionHandleInvalid),
            Err(Error::SessionHandleInvalid)
        );
        assert_eq!(
            scopes.check(0, 1, CK_INVALID_HANDLE, Error::SessionHandleInvalid),
            Ok(())
        );
    }

    #[test]
    fn after_a_reconnect_only_handles_handed_out_since_are_accepted() {
        // Backend 0 reconnects and serves slot 0 alone; backend 1 serves slots 1 and 2.
        let scopes =
            ObjectScopes::new(&[entry(0, 0), entry(1, 1), entry(2, 1)], &[true, false]).unwrap();
        scopes.record(0, 0, &[2, 3]);
        assert_eq!(scopes.check(0, 0, 2, Error::KeyHandleInvalid), Ok(()));
        assert_eq!(
            scopes.check(0, 0, 99, Error::KeyHandleInvalid),
            Ok(()),
            "nothing is tracked before the first reconnect"
        );
        scopes.new_epoch(0);
        assert_eq!(
            scopes.check(0, 0, 2, Error::KeyHandleInvalid),
            Err(Error::KeyHandleInvalid)
        );
        scopes.record(0, 0, &[3]);
        assert_eq!(scopes.check(0, 0, 3, Error::KeyHandleInvalid), Ok(()));
        assert_eq!(
            scopes.check(0, 0, 2, Error::ObjectHandleInvalid),
            Err(Error::ObjectHandleInvalid)
        );
        // The other backend's handles are not affected.
        scopes.record(1, 1, &[2]);
        assert_eq!(scopes.check(1, 1, 2, Error::KeyHandleInvalid), Ok(()));
        scopes.new_epoch(0);
        assert_eq!(
            scopes.check(0, 0, 3, Error::KeyHandleInvalid),
            Err(Error::KeyHandleInvalid),
            "each reconnect starts over"
        );
        assert_eq!(scopes.check(1, 1, 2, Error::KeyHandleInvalid), Ok(()));
        assert_eq!(
            scopes.check(1, 2, 2, Error::KeyHandleInvalid),
            Err(Error::KeyHandleInvalid),
            "slot scopes still apply"
        );
    }
}
