//! Object handles and the slot they belong to, where that can be confused.
//!
//! Object handles pass through unchanged. When each of an app's slots has its own backend,
//! a handle can only mean something to the backend of the session that uses it, and nothing
//! is tracked. When one backend serves several of the app's slots (two tokens of one HSM
//! module), its handle space is shared between them: then p11gate records which slot each
//! handle was handed out on (by C_FindObjects, C_CreateObject, C_CopyObject, C_GenerateKey,
//! C_GenerateKeyPair, C_UnwrapKey, C_DeriveKey) and refuses it on any other slot, before the
//! backend sees it.

use std::collections::HashMap;

use parking_lot::RwLock;
use pkcs11_sys::{CK_INVALID_HANDLE, CK_OBJECT_HANDLE};

use super::slots::SlotEntry;
use crate::error::{Error, Result};

const SHARDS: usize = 16;

/// (backend, handle) -> the slot indices it was handed out on.
type Shard = RwLock<HashMap<(usize, CK_OBJECT_HANDLE), Vec<usize>>>;

/// Which slot each object handle of a shared backend belongs to.
#[derive(Debug)]
pub struct ObjectScopes {
    /// Per slot index: whether its backend serves other slots of the app too.
    shared: Vec<bool>,
    /// (backend, handle) -> the slot indices it was handed out on (two slots on one token can
    /// both see an object), sharded by handle to keep readers apart.
    shards: Vec<Shard>,
}

impl ObjectScopes {
    /// `None` when no backend serves two of the app's slots (nothing to keep apart).
    pub fn new(slots: &[SlotEntry]) -> Option<ObjectScopes> {
        let shared: Vec<bool> = slots
            .iter()
            .map(|e| {
                !e.is_passthrough() && slots.iter().filter(|o| o.backend == e.backend).count() > 1
            })
            .collect();
        shared.iter().any(|s| *s).then(|| ObjectScopes {
            shared,
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        })
    }

    fn shard(
        &self,
        handle: CK_OBJECT_HANDLE,
    ) -> &RwLock<HashMap<(usize, CK_OBJECT_HANDLE), Vec<usize>>> {
        &self.shards[handle as usize % SHARDS]
    }

    /// Records handles handed out on `slot`.
    pub fn record(&self, backend: usize, slot: usize, handles: &[CK_OBJECT_HANDLE]) {
        if !self.shared.get(slot).copied().unwrap_or(false) {
            return;
        }
        for &h in handles.iter().filter(|h| **h != CK_INVALID_HANDLE) {
            let mut shard = self.shard(h).write();
            let slots = shard.entry((backend, h)).or_default();
            if !slots.contains(&slot) {
                slots.push(slot);
            }
        }
    }

    /// Forgets a destroyed object.
    pub fn forget(&self, backend: usize, handle: CK_OBJECT_HANDLE) {
        self.shard(handle).write().remove(&(backend, handle));
    }

    /// Refuses a handle that was not handed out on `slot` (`invalid` is the spec's code for
    /// the argument: CKR_OBJECT_HANDLE_INVALID, CKR_KEY_HANDLE_INVALID, ...).
    #[inline]
    pub fn check(
        &self,
        backend: usize,
        slot: usize,
        handle: CK_OBJECT_HANDLE,
        invalid: Error,
    ) -> Result<()> {
        if !self.shared.get(slot).copied().unwrap_or(false) || handle == CK_INVALID_HANDLE {
            return Ok(());
        }
        match self.shard(handle).read().get(&(backend, handle)) {
            Some(slots) if slots.contains(&slot) => Ok(()),
            _ => {
                log::warn!("object handle {handle:#x} refused: it was not handed out on this slot");
                crate::audit::note_refusal("object scope (handle of another slot)");
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
        assert!(ObjectScopes::new(&[entry(0, 0), entry(1, 1)]).is_none());
        let scopes = ObjectScopes::new(&[entry(0, 0), entry(1, 0), entry(2, 1)]).unwrap();
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
}
