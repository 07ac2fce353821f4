//! The slots one app may use, and how each finds its token on its upstream.
//!
//! A mapped slot has a fixed virtual id from the configuration and a target: a PKCS#11 URI
//! (RFC 7512) of token and slot attributes, all of which must match (a `token_label` L is
//! `pkcs11:token=L`, a `token_serial` S `pkcs11:serial=S`), or an upstream slot id. URIs are
//! looked up on the upstream (`C_GetSlotList` + `C_GetTokenInfo`, and `C_GetSlotInfo` when the
//! URI has slot attributes) when first needed and again on each `C_GetSlotList` and
//! `C_OpenSession`, so a token that SoftHSMv2 renumbered, or an HSM that came back, is found;
//! the virtual id never changes.
//!
//! Without `[[slot]]` entries there is one passthrough entry: the upstream's own slot ids,
//! unchanged.

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use pkcs11_sys::*;
use zeroize::Zeroizing;

use crate::backend::Backend;
use crate::config::TokenTarget;
use crate::credentials::{Credential, CredentialSource};
use crate::error::Result;
use crate::ffi::args::OutBuf;
use crate::policy::SlotPolicy;
use crate::uri::{Attr, Pkcs11Uri};

/// One slot the app may use.
#[derive(Debug)]
pub struct SlotEntry {
    /// The virtual slot id (unused for the passthrough entry).
    pub id: CK_SLOT_ID,
    /// The index of its backend in the router.
    pub backend: usize,
    /// `None` for the passthrough entry.
    pub target: Option<TokenTarget>,
    pub policy: SlotPolicy,
    /// Where its upstream credential comes from, with the hash of the app's PIN.
    pub credential_source: Option<(CredentialSource, String)>,
    /// The credential read at the last `C_Initialize`.
    credential: RwLock<Option<std::sync::Arc<Credential>>>,
    /// The upstream slot id last found for the target.
    found: RwLock<Option<CK_SLOT_ID>>,
    /// Token labels seen in `C_GetTokenInfo` answers, by the slot id the application used, for
    /// audit records (a passthrough entry stands for several slots).
    token_labels: RwLock<Vec<(CK_SLOT_ID, std::sync::Arc<str>)>>,
    /// Whether the app is logged in as the user with the held credential: a reconnect logs in
    /// again only then.
    logged_in: AtomicBool,
}

impl SlotEntry {
    pub fn new(
        id: CK_SLOT_ID,
        backend: usize,
        target: Option<TokenTarget>,
        policy: SlotPolicy,
        credential_source: Option<(CredentialSource, String)>,
    ) -> SlotEntry {
        SlotEntry {
            id,
            backend,
            target,
            policy,
            credential_source,
            credential: RwLock::new(None),
            found: RwLock::new(None),
            token_labels: RwLock::new(Vec::new()),
            logged_in: AtomicBool::new(false),
        }
    }

    /// Notes a user login with the held credential (true) or its end (false: C_Logout, the
    /// last session closed, C_Finalize).
    pub fn set_logged_in(&self, yes: bool) {
        self.logged_in.store(yes, Ordering::Relaxed);
    }

    /// Whether the app logged in with the held credential and has not logged out since.
    pub fn logged_in(&self) -> bool {
        self.logged_in.load(Ordering::Relaxed)
    }

    /// The label of the token behind the application's slot `id`, as far as known: the
    /// configured label, or the last one `C_GetTokenInfo` reported.
    pub fn token_label(&self, id: CK_SLOT_ID) -> Option<std::sync::Arc<str>> {
        let labels = self.token_labels.read();
        if let Some((_, l)) = labels.iter().find(|(s, _)| *s == id) {
            return Some(l.clone());
        }
        drop(labels);
        self.target
            .as_ref()
            .and_then(TokenTarget::label)
            .map(Into::into)
    }

    /// Notes the label of the token behind the application's slot `id` (from token info).
    pub fn learn_token_label(&self, id: CK_SLOT_ID, info: &CK_TOKEN_INFO) {
        let label = String::from_utf8_lossy(trimmed(&info.label));
        let mut labels = self.token_labels.write();
        let full = labels.len() >= 256;
        match labels.iter_mut().find(|(s, _)| *s == id) {
            Some((_, l)) if **l == *label => {}
            Some((_, l)) => *l = label.as_ref().into(),
            // A passthrough upstream with very many slots: keep the first few hundred.
            None if !full => labels.push((id, label.as_ref().into())),
            None => {}
        }
    }

    pub fn is_passthrough(&self) -> bool {
        self.target.is_none()
    }

    /// Reads the upstream credential (at `C_Initialize`).
    pub fn load_credential(&self) -> std::result::Result<(), String> {
        let loaded = match &self.credential_source {
            Some((source, hash)) => Some(std::sync::Arc::new(
                Credential::load(source, hash).map_err(|e| format!("slot {}: {e}", self.id))?,
            )),
            None => None,
        };
        *self.credential.write() = loaded;
        Ok(())
    }

    /// Wipes the credential from memory (at `C_Finalize`).
    pub fn drop_credential(&self) {
        *self.credential.write() = None;
    }

    /// The credential, when the slot holds one.
    pub fn credential(&self) -> Option<std::sync::Arc<Credential>> {
        self.credential.read().clone()
    }

    /// Whether this slot holds its upstream's credential (then the app's PIN is mapped).
    pub fn holds_credential(&self) -> bool {
        self.credential_source.is_some()
    }

    /// The upstream slot id found last time, without asking the upstream.
    pub fn cached(&self) -> Option<CK_SLOT_ID> {
        match &self.target {
            Some(TokenTarget::Slot(id)) => Some(*id),
            _ => *self.found.read(),
        }
    }

    /// Asks the upstream where the token is now (no lock is held while it answers); for a fixed
    /// upstream slot, whether it has a token.
    pub fn find(&self, backend: &dyn Backend) -> Option<CK_SLOT_ID> {
        let found = match self.target.as_ref()? {
            // A fixed upstream slot: there when the upstream lists it with a token.
            TokenTarget::Slot(id) => {
                return slot_ids(backend, true).ok()?.contains(id).then_some(*id)
            }
            target => find_token(backend, &target.uri()?),
        }
        .map(|(slot, info)| {
            self.learn_token_label(self.id, &info);
            slot
        });
        *self.found.write() = found;
        found
    }

    /// The upstream slot id: the cached one, or a fresh look-up.
    pub fn resolve(&self, backend: &dyn Backend) -> Option<CK_SLOT_ID> {
        self.cached().or_else(|| self.find(backend))
    }

    /// Forgets where the token was (after something that renumbers slots, such as C_InitToken).
    pub fn forget_location(&self) {
        *self.found.write() = None;
    }
}

/// A blank-padded PKCS#11 string without its padding.
fn trimmed(field: &[u8]) -> &[u8] {
    let end = field
        .iter()
        .rposition(|&b| b != b' ' && b != 0)
        .map_or(0, |i| i + 1);
    &field[..end]
}

/// The first slot with a token that `uri` matches, with its token info.
pub fn find_token(backend: &dyn Backend, uri: &Pkcs11Uri) -> Option<(CK_SLOT_ID, CK_TOKEN_INFO)> {
    let slots = slot_ids(backend, true).ok()?;
    slots
        .into_iter()
        .find_map(|slot| token_matching(backend, slot, uri).map(|info| (slot, info)))
}

/// The token info of `slot` when `uri` matches the slot and its token. Slot info is asked for
/// only when the URI has slot attributes that need it.
pub fn token_matching(
    backend: &dyn Backend,
    slot: CK_SLOT_ID,
    uri: &Pkcs11Uri,
) -> Option<CK_TOKEN_INFO> {
    let needs_slot_info =
        uri.get(Attr::SlotDescription).is_some() || uri.get(Attr::SlotManufacturer).is_some();
    let slot_matches = if needs_slot_info {
        let mut info = CK_SLOT_INFO::default();
        backend.slot_info(slot, &mut info).is_ok() && uri.matches_slot(slot, &info)
    } else {
        uri.slot_id().is_none_or(|id| id == slot)
    };
    if !slot_matches {
        return None;
    }
    let mut info = CK_TOKEN_INFO::default();
    (backend.token_info(slot, &mut info).is_ok() && uri.matches_token(&info)).then_some(info)
}

/// The backend's slot list, by the two-call convention.
pub fn slot_ids(backend: &dyn Backend, token_present: bool) -> Result<Vec<CK_SLOT_ID>> {
    list_of(|out| backend.slot_list(token_present, out))
}

/// Collects a two-call list (length query, then fill; again if it grew in between).
pub fn list_of<T: Copy + Default>(
    mut call: impl FnMut(OutBuf<'_, T>) -> Result<()>,
) -> Result<Vec<T>> {
    loop {
        let mut count: CK_ULONG = 0;
        call(OutBuf::length_query(&mut count))?;
        let mut list = vec![T::default(); count as usize];
        let mut len: CK_ULONG = 0;
        match call(OutBuf::from_slice(&mut list, &mut len)) {
            Ok(()) => {
                list.truncate(len as usize);
                return Ok(list);
            }
            Err(crate::error::Error::Backend(CKR_BUFFER_TOO_SMALL)) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A slot description for a slot whose token is not there (C_GetSlotInfo).
pub fn absent_slot_info(entry: &SlotEntry, upstream: &str) -> CK_SLOT_INFO {
    let mut info = CK_SLOT_INFO::default();
    let target = entry
        .target
        .as_ref()
        .map_or_else(String::new, |t| t.to_string());
    pad(
        &mut info.slotDescription,
        &format!(
            "p11gate slot {}: {target} not found on {upstream}",
            entry.id
        ),
    );
    pad(&mut info.manufacturerID, "p11gate");
    info.flags = CKF_REMOVABLE_DEVICE;
    info.hardwareVersion = CK_VERSION::default();
    info.firmwareVersion = CK_VERSION::default();
    info
}

fn pad(field: &mut [u8], text: &str) {
    field.fill(b' ');
    let n = text.len().min(field.len());
    field[..n].copy_from_slice(&text.as_bytes()[..n]);
}

/// The stored credential for `C_Login`, copied out so that no lock is held while the upstream
/// is called.
pub fn credential_secret(c: &Credential) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(c.secret().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_lose_their_padding() {
        let mut field = [b' '; 32];
        field[..7].copy_from_slice(b"vault-a");
        assert_eq!(trimmed(&field), b"vault-a");
        assert_eq!(trimmed(&[b' '; 32]), b"");
    }
}
