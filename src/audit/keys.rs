//! What p11gate knows of objects, for audit records: label, id and class by handle.
//!
//! Filled from what calls carry anyway — the templates of `C_FindObjectsInit`,
//! `C_CreateObject`, `C_GenerateKey(Pair)`, `C_UnwrapKey`, `C_DeriveKey`, `C_CopyObject`, and
//! the values `C_GetAttributeValue` returns — never by asking the upstream. Read by the writer
//! thread when it formats a record, so the calling thread pays nothing for it. Bounded: a shard
//! that grows past its share is emptied (labels come back with the next lookup).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use pkcs11_sys::*;

use crate::ffi::args::Template;

const SHARDS: usize = 16;
const SHARD_CAPACITY: usize = 4096;
const MAX_LABEL: usize = 256;
const MAX_ID: usize = 128;

/// An object's label, id and class, as far as known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyInfo {
    pub label: Option<Box<str>>,
    pub id: Option<Box<[u8]>>,
    pub class: Option<CK_OBJECT_CLASS>,
}

impl KeyInfo {
    /// What a template says of the object(s) it makes or matches.
    pub fn from_template(t: &Template<'_>) -> Option<KeyInfo> {
        let info = KeyInfo {
            label: t.value(CKA_LABEL).map(label_text),
            id: t
                .value(CKA_ID)
                .map(|v| v[..v.len().min(MAX_ID)].to_vec().into_boxed_slice()),
            class: t.ulong_value(CKA_CLASS),
        };
        (!info.is_empty()).then_some(info)
    }

    pub fn is_empty(&self) -> bool {
        self.label.is_none() && self.id.is_none() && self.class.is_none()
    }

    /// `self`, with what `newer` knows taking precedence.
    fn merged(&self, newer: &KeyInfo) -> KeyInfo {
        KeyInfo {
            label: newer.label.clone().or_else(|| self.label.clone()),
            id: newer.id.clone().or_else(|| self.id.clone()),
            class: newer.class.or(self.class),
        }
    }
}

/// A label as text: lossy UTF-8, at most `MAX_LABEL` bytes (escaping happens when formatted).
fn label_text(bytes: &[u8]) -> Box<str> {
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LABEL)]).into_owned();
    // A cut in the middle of a character became U+FFFD; that is fine for a record. Invalid
    // bytes each became a three-byte U+FFFD: cut at a character boundary.
    let mut end = s.len().min(MAX_LABEL + 3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.into_boxed_str()
}

type Shard = RwLock<HashMap<(usize, CK_OBJECT_HANDLE), Arc<KeyInfo>>>;

/// Object handle (per backend) -> what is known of it.
#[derive(Debug)]
pub struct KeyCache {
    shards: Vec<Shard>,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }
}

impl KeyCache {
    fn shard(&self, handle: CK_OBJECT_HANDLE) -> &Shard {
        &self.shards[handle as usize % SHARDS]
    }

    pub fn get(&self, backend: usize, handle: CK_OBJECT_HANDLE) -> Option<Arc<KeyInfo>> {
        self.shard(handle).read().get(&(backend, handle)).cloned()
    }

    /// Records what is known of `handle`, keeping what was known before where `info` is silent.
    pub fn learn(&self, backend: usize, handle: CK_OBJECT_HANDLE, info: &KeyInfo) {
        if handle == CK_INVALID_HANDLE || info.is_empty() {
            return;
        }
        let mut shard = self.shard(handle).write();
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(&(backend, handle)) {
            shard.clear();
        }
        let merged = match shard.get(&(backend, handle)) {
            Some(old) if old.merged(info) == **old => return,
            Some(old) => old.merged(info),
            None => info.clone(),
        };
        shard.insert((backend, handle), Arc::new(merged));
    }

    /// Forgets a destroyed object, returning what was known of it.
    pub fn forget(&self, backend: usize, handle: CK_OBJECT_HANDLE) -> Option<Arc<KeyInfo>> {
        self.shard(handle).write().remove(&(backend, handle))
    }

    /// Forgets a destroyed object if what is known of it is still `was` (an object made since
    /// under the same handle keeps its entry).
    pub fn forget_if(&self, backend: usize, handle: CK_OBJECT_HANDLE, was: &KeyInfo) {
        let mut shard = self.shard(handle).write();
        if shard
            .get(&(backend, handle))
            .is_some_and(|now| **now == *was)
        {
            shard.remove(&(backend, handle));
        }
    }

    /// Forgets everything (`C_Finalize`, `C_InitToken`: handles may be reused).
    pub fn clear(&self) {
        for s in &self.shards {
            s.write().clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(label: Option<&str>, id: Option<&[u8]>, class: Option<CK_OBJECT_CLASS>) -> KeyInfo {
        KeyInfo {
            label: label.map(Into::into),
            id: id.map(|i| i.to_vec().into_boxed_slice()),
            class,
        }
    }

    /// Found by the `template` fuzz target: invalid bytes each became a three-byte U+FFFD, and
    /// the label was then cut inside one (a panic, so CKR_GENERAL_ERROR, in every audited call
    /// whose template carried such a label).
    #[test]
    fn a_label_of_invalid_utf8_is_cut_at_a_character_boundary() {
        let s = label_text(&[0xff; 300]);
        assert_eq!(s.len(), 258);
        assert!(s.chars().all(|c| c == '\u{fffd}'));
        assert_eq!(&*label_text(&[b'a'; 300]), "a".repeat(MAX_LABEL));
    }

    #[test]
    fn learning_merges_and_forgetting_returns_what_was_known() {
        let c = KeyCache::default();
        c.learn(0, 7, &info(Some("vault"), None, None));
        c.learn(0, 7, &info(None, Some(b"12"), Some(CKO_SECRET_KEY)));
        assert_eq!(
            *c.get(0, 7).unwrap(),
            info(Some("vault"), Some(b"12"), Some(CKO_SECRET_KEY))
        );
        assert_eq!(c.get(1, 7), None, "handles of another backend are others");
        c.learn(0, 8, &KeyInfo::default());
        assert_eq!(c.get(0, 8), None);
        assert_eq!(c.forget(0, 7).unwrap().label.as_deref(), Some("vault"));
        assert_eq!(c.get(0, 7), None);
    }

    #[test]
    fn a_full_shard_is_emptied_not_grown() {
        let c = KeyCache::default();
        for h in 0..(SHARD_CAPACITY as u64 + 1) * SHARDS as u64 {
            c.learn(0, h + 1, &info(Some("k"), None, None));
        }
        let total: usize = c.shards.iter().map(|s| s.read().len()).sum();
        assert!(total <= SHARD_CAPACITY * SHARDS, "{total}");
    }
}
