//! The router: which backend serves a slot or a session, under which of its own ids, for the
//! app this process is.
//!
//! Applications only ever see p11gate's virtual session handles ([`sessions`]); a handle that
//! p11gate did not hand out, or that was closed, is refused and never forwarded, so handles of
//! different upstreams cannot collide. Object handles are not remapped: they pass through within
//! the backend of their session.
//!
//! Slots ([`slots`]): with `[[slot]]` entries, the app sees exactly its configured virtual ids,
//! in its configured order; any other id is `CKR_SLOT_ID_INVALID`. Without them, the single
//! upstream's slot ids pass through unchanged.
//!
//! An upstream with `reconnect = true` is brought back after an outage by [`reconnect`]: its
//! sessions keep their virtual handles, with new upstream handles behind them.

pub mod objects;
pub mod reconnect;
pub mod sessions;
pub mod slots;

use std::sync::Arc;

use pkcs11_sys::*;

use crate::backend::health::{Health, Lease};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ffi::args::{AttributeQuery, InBuf, OutBuf, Template};
use objects::ObjectScopes;
use sessions::{SessionRoute, SessionTable};
use slots::SlotEntry;

/// A resolved session: the backend that owns it, the backend's own handle, and its slot.
/// For an upstream that reconnects it holds a lease on the upstream's health while it lives,
/// so that a reconnect never swaps the handle from under a caller that read it.
#[derive(Debug)]
pub struct Session<'a> {
    pub backend: &'a dyn Backend,
    /// The backend's session handle.
    pub handle: CK_SESSION_HANDLE,
    /// The virtual slot the session was opened on.
    pub slot: CK_SLOT_ID,
    /// The slot's entry: its policy and credential.
    pub entry: &'a SlotEntry,
    /// The index of that entry in the router.
    pub slot_index: usize,
    _lease: Option<Lease<'a>>,
}

/// A resolved slot with a present token.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    pub backend: &'a dyn Backend,
    pub entry: &'a SlotEntry,
    pub index: usize,
    /// The backend's slot id.
    pub id: CK_SLOT_ID,
}

/// Routes calls of one runtime.
#[derive(Debug)]
pub struct Router {
    app: String,
    backends: Vec<Box<dyn Backend>>,
    slots: Vec<SlotEntry>,
    sessions: SessionTable,
    /// Kept only when a backend serves several of the app's slots, or reconnects.
    objects: Option<ObjectScopes>,
    /// Per backend: its health, when it reconnects.
    health: Vec<Option<Arc<Health>>>,
    /// Per backend: its reconnect thread.
    reconnects: reconnect::Workers,
}

impl Router {
    /// `slots` is either one passthrough entry, or the app's mapped slots in its order.
    pub fn new(app: String, backends: Vec<Box<dyn Backend>>, slots: Vec<SlotEntry>) -> Router {
        let health: Vec<Option<Arc<Health>>> = backends.iter().map(|b| b.health()).collect();
        let reconnecting: Vec<bool> = health.iter().map(Option::is_some).collect();
        let objects = ObjectScopes::new(&slots, &reconnecting);
        Router {
            app,
            reconnects: reconnect::Workers::new(backends.len()),
            backends,
            slots,
            sessions: SessionTable::default(),
            objects,
            health,
        }
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    pub fn backends(&self) -> &[Box<dyn Backend>] {
        &self.backends
    }

    pub fn slot_entries(&self) -> &[SlotEntry] {
        &self.slots
    }

    fn passthrough(&self) -> Option<&SlotEntry> {
        self.slots.first().filter(|e| e.is_passthrough())
    }

    fn backend_of(&self, entry: &SlotEntry) -> &dyn Backend {
        &*self.backends[entry.backend]
    }

    /// The session behind a virtual handle.
    #[inline]
    pub fn session(&self, handle: CK_SESSION_HANDLE) -> Result<Session<'_>> {
        let mut route = self.sessions.get(handle)?;
        let mut lease = None;
        if let Some(Some(health)) = self.health.get(route.backend) {
            // Leased first, then read again: a reconnect either waits for this caller, or has
            // swapped the handle before this read (see `backend::health`).
            lease = Some(health.lease());
            let again = self.sessions.get(handle)?;
            if again.backend != route.backend {
                return Err(Error::SessionHandleInvalid);
            }
            route = again;
        }
        let backend = self
            .backends
            .get(route.backend)
            .ok_or(Error::SessionHandleInvalid)?;
        let entry = self
            .slots
            .get(route.slot_index)
            .ok_or(Error::SessionHandleInvalid)?;
        crate::metrics::note_slot(route.slot);
        Ok(Session {
            backend: &**backend,
            handle: route.handle,
            slot: route.slot,
            entry,
            slot_index: route.slot_index,
            _lease: lease,
        })
    }

    /// A lease on the health of a backend that reconnects (see `backend::health`).
    fn lease(&self, backend: usize) -> Option<Lease<'_>> {
        self.health.get(backend)?.as_ref().map(|h| h.lease())
    }

    /// The entry for a slot id the application named, or `CKR_SLOT_ID_INVALID`.
    fn entry(&self, id: CK_SLOT_ID) -> Result<(usize, &SlotEntry)> {
        if let Some(p) = self.passthrough() {
            crate::metrics::note_slot(id);
            return Ok((0, p));
        }
        let found = self
            .slots
            .iter()
            .enumerate()
            .find(|(_, e)| e.id == id)
            .ok_or(Error::SlotIdInvalid)?;
        crate::metrics::note_slot(id);
        Ok(found)
    }

    /// A slot id's entry and its upstream's name, for audit records (None for an id this app
    /// may not use).
    pub fn slot_ref(&self, id: CK_SLOT_ID) -> Option<(&SlotEntry, &str)> {
        let (_, entry) = self.entry(id).ok()?;
        Some((entry, self.backend_of(entry).name()))
    }

    /// Makes sure the token label of a slot is known for audit records: one `C_GetTokenInfo`
    /// the first time a session is opened on a slot whose label nobody asked for yet.
    pub fn learn_token_label(&self, id: CK_SLOT_ID) {
        let Ok(slot) = self.slot(id, false) else {
            return;
        };
        if slot.entry.token_label(id).is_some() {
            return;
        }
        let mut info = CK_TOKEN_INFO::default();
        if slot.backend.token_info(slot.id, &mut info).is_ok() {
            slot.entry.learn_token_label(id, &info);
        }
    }

    /// The backend slot behind a slot id, with its token; `fresh` asks the upstream again.
    /// While its upstream is down (reconnect), the code that took it down.
    pub fn slot(&self, id: CK_SLOT_ID, fresh: bool) -> Result<Slot<'_>> {
        let (index, entry) = self.entry(id)?;
        if let Some(Some(code)) = self.health.get(entry.backend).map(|h| h.as_ref()?.down()) {
            return Err(Error::Backend(code));
        }
        let backend = self.backend_of(entry);
        let real = if entry.is_passthrough() {
            Some(id)
        } else if fresh {
            entry.find(backend)
        } else {
            entry.resolve(backend)
        };
        let real = real.ok_or(Error::TokenNotPresent)?;
        Ok(Slot {
            backend,
            entry,
            index,
            id: real,
        })
    }

    /// `C_GetSlotList`.
    pub fn slot_list(&self, token_present: bool, mut out: OutBuf<'_, CK_SLOT_ID>) -> Result<()> {
        if let Some(p) = self.passthrough() {
            return self.backend_of(p).slot_list(token_present, out);
        }
        // Every listing looks the tokens up again, so a renumbered or returned token is found.
        let ids: Vec<CK_SLOT_ID> = self
            .slots
            .iter()
            .filter(|e| {
                // An upstream that is down (reconnect) is not asked: its tokens are away.
                let found = !self.is_down(e.backend) && e.find(self.backend_of(e)).is_some();
                found || !token_present
            })
            .map(|e| e.id)
            .collect();
        out.put(&ids)
    }

    /// `C_GetSlotInfo`: the upstream's answer, or, for a mapped slot whose token is not there,
    /// p11gate's own description without CKF_TOKEN_PRESENT.
    pub fn slot_info(&self, id: CK_SLOT_ID, info: &mut CK_SLOT_INFO) -> Result<()> {
        match self.slot(id, false) {
            Ok(slot) => slot.backend.slot_info(slot.id, info),
            Err(Error::TokenNotPresent) => {
                let (_, entry) = self.entry(id)?;
                *info = slots::absent_slot_info(entry, self.backend_of(entry).name());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `C_GetMechanismList`, without the mechanisms the slot's policy refuses.
    pub fn mechanism_list(
        &self,
        id: CK_SLOT_ID,
        mut out: OutBuf<'_, CK_MECHANISM_TYPE>,
    ) -> Result<()> {
        let slot = self.slot(id, false)?;
        if slot.entry.policy.mechanisms.is_empty() {
            return slot.backend.mechanism_list(slot.id, out);
        }
        let mut all = slots::list_of(|o| slot.backend.mechanism_list(slot.id, o))?;
        slot.entry.policy.mechanisms.retain_allowed(&mut all);
        out.put(&all)
    }

    /// `C_WaitForSlotEvent`: only for unmapped slots (events of several upstreams cannot be
    /// merged into one blocking call).
    pub fn wait_for_slot_event(&self, flags: CK_FLAGS, slot: &mut CK_SLOT_ID) -> Result<()> {
        let p = self.passthrough().ok_or(Error::FunctionNotSupported)?;
        self.backend_of(p).wait_for_slot_event(flags, slot)
    }

    /// `C_InitToken`; slots are looked up afresh afterwards (SoftHSMv2 renumbers them).
    pub fn init_token(&self, id: CK_SLOT_ID, so_pin: InBuf<'_>, label: &[u8; 32]) -> Result<()> {
        let slot = self.slot(id, false)?;
        slot.entry.policy.check_writable("C_InitToken", id)?;
        let result = slot.backend.init_token(slot.id, so_pin, label);
        for e in self
            .slots
            .iter()
            .filter(|e| e.backend == slot.entry.backend)
        {
            e.forget_location();
        }
        result
    }

    /// `C_OpenSession`: opens a backend session and hands out a virtual handle for it.
    ///
    /// Surrender callbacks (`Notify`) are not forwarded: the backend would call them with its own
    /// session handle, which the application must never see, and the spec lets a library never
    /// call them at all.
    pub fn open_session(&self, slot_id: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
        let (_, entry) = self.entry(slot_id)?;
        if flags & CKF_RW_SESSION != 0 {
            entry
                .policy
                .check_writable("C_OpenSession (read-write)", slot_id)?;
        }
        // Held until the route is in the table, so that a reconnect re-opens this session too.
        let _lease = self.lease(entry.backend);
        let slot = match self.slot(slot_id, false) {
            Ok(s) => s,
            // Not found before: the token may have come back.
            Err(Error::TokenNotPresent) => self.slot(slot_id, true)?,
            Err(e) => return Err(e),
        };
        let handle = match slot.backend.open_session(slot.id, flags) {
            // The cached location may be stale (renumbered slots): look once more.
            Err(Error::Backend(CKR_SLOT_ID_INVALID | CKR_TOKEN_NOT_PRESENT))
                if !slot.entry.is_passthrough() =>
            {
                let again = self.slot(slot_id, true)?;
                again.backend.open_session(again.id, flags)?
            }
            other => other?,
        };
        let route = SessionRoute {
            backend: slot.entry.backend,
            slot_index: slot.index,
            handle,
            slot: slot_id,
            flags,
        };
        self.sessions.insert(route).inspect_err(|_| {
            // No room for it: don't leave the backend session open behind the application.
            let _ = slot.backend.close_session(handle);
        })
    }

    /// `C_CloseSession`: the virtual handle is forgotten once the backend has closed the
    /// session, or says it no longer exists.
    /// While its upstream is down (reconnect) the session is forgotten too, and not re-opened:
    /// the call still returns the code that took the upstream down.
    pub fn close_session(&self, handle: CK_SESSION_HANDLE) -> Result<()> {
        let s = self.session(handle)?;
        let result = s.backend.close_session(s.handle);
        let down = self.is_down(s.entry.backend);
        if down
            || matches!(
                result,
                Ok(())
                    | Err(Error::Backend(
                        CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED
                    ))
            )
        {
            self.sessions.remove(handle);
            self.note_session_gone(s.slot_index);
        }
        result
    }

    /// Whether a backend that reconnects is down now.
    fn is_down(&self, backend: usize) -> bool {
        matches!(self.health.get(backend), Some(Some(h)) if h.down().is_some())
    }

    /// After a session of slot entry `index` closed: the token logs out with its last session.
    fn note_session_gone(&self, index: usize) {
        let Some(entry) = self.slots.get(index) else {
            return;
        };
        if entry.logged_in()
            && !self
                .sessions
                .open_routes()
                .iter()
                .any(|r| r.slot_index == index)
        {
            entry.set_logged_in(false);
        }
    }

    /// `C_CloseAllSessions`. For a mapped slot only this app's sessions on it are closed, one by
    /// one: the upstream slot may also serve other virtual slots.
    /// The virtual handles of the sessions closed are added to `closed` (for the audit trail),
    /// whatever the result.
    pub fn close_all_sessions(
        &self,
        slot_id: CK_SLOT_ID,
        closed: &mut Vec<CK_SESSION_HANDLE>,
    ) -> Result<()> {
        let (index, entry) = self.entry(slot_id)?;
        if entry.is_passthrough() {
            let backend = self.backend_of(entry);
            backend.close_all_sessions(slot_id)?;
            closed.extend(self.sessions.remove_where(|r| r.slot == slot_id));
            return Ok(());
        }
        let backend = self.backend_of(entry);
        let mut result = Ok(());
        for route in self
            .sessions
            .open_routes()
            .into_iter()
            .filter(|r| r.slot_index == index)
        {
            if let Err(e) = backend.close_session(route.handle) {
                if !matches!(
                    e,
                    Error::Backend(CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED)
                ) {
                    result = result.and(Err(e));
                }
            }
        }
        closed.extend(self.sessions.remove_where(|r| r.slot_index == index));
        entry.set_logged_in(false);
        result
    }

    /// `C_GetSessionInfo`, with the slot id the application knows.
    #[inline]
    pub fn session_info(
        &self,
        handle: CK_SESSION_HANDLE,
        info: &mut CK_SESSION_INFO,
    ) -> Result<()> {
        let s = self.session(handle)?;
        s.backend.session_info(s.handle, info)?;
        info.slotID = s.slot;
        Ok(())
    }

    /// `C_Login`. On a slot that holds its upstream's credential, the application's PIN is
    /// checked against the configured hash, and the upstream is given the credential; a wrong
    /// PIN never reaches the upstream (so it cannot lock the HSM's PIN). SO logins pass through.
    pub fn login(
        &self,
        handle: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: InBuf<'_>,
    ) -> Result<()> {
        let s = self.session(handle)?;
        if user == CKU_SO || !s.entry.holds_credential() {
            return s.backend.login(s.handle, user, pin);
        }
        let credential = s.entry.credential().ok_or(Error::NotInitialized)?;
        if !credential.verify(pin.as_slice()) {
            log::warn!(
                "C_Login: wrong PIN for app {:?} on slot {}",
                self.app,
                s.slot
            );
            crate::audit::note_refusal("pin_hash");
            return Err(Error::PinIncorrect);
        }
        let secret = slots::credential_secret(&credential);
        drop(credential);
        let result = s.backend.login(s.handle, user, InBuf::from_slice(&secret));
        if matches!(
            result,
            Ok(()) | Err(Error::Backend(CKR_USER_ALREADY_LOGGED_IN))
        ) {
            s.entry.set_logged_in(true);
        }
        result
    }

    /// `C_Logout`.
    pub fn logout(&self, s: &Session<'_>) -> Result<()> {
        let result = s.backend.logout(s.handle);
        if matches!(result, Ok(()) | Err(Error::Backend(CKR_USER_NOT_LOGGED_IN))) {
            s.entry.set_logged_in(false);
        }
        result
    }

    /// Refuses PIN changes on a slot whose credential p11gate holds (change it in the
    /// configuration instead).
    pub fn check_pin_change(&self, func: &str, s: &Session<'_>) -> Result<()> {
        if s.entry.holds_credential() {
            log::warn!("{func}: refused on slot {}: p11gate holds this slot's credential; change it in the configuration", s.slot);
            crate::audit::note_refusal("credential held by p11gate");
            return Err(Error::FunctionNotSupported);
        }
        Ok(())
    }

    /// Refuses an object handle that was not handed out on the session's slot, where handles
    /// of several slots share one backend ([`objects`]); `invalid` is the code for its role.
    #[inline]
    pub fn check_object(
        &self,
        s: &Session<'_>,
        handle: CK_OBJECT_HANDLE,
        invalid: Error,
    ) -> Result<()> {
        match &self.objects {
            None => Ok(()),
            Some(o) => o.check(s.entry.backend, s.slot_index, handle, invalid),
        }
    }

    /// Notes object handles handed out on the session's slot.
    #[inline]
    pub fn record_objects(&self, s: &Session<'_>, handles: &[CK_OBJECT_HANDLE]) {
        if let Some(o) = &self.objects {
            o.record(s.entry.backend, s.slot_index, handles);
        }
    }

    /// Forgets a destroyed object.
    pub fn forget_object(&self, s: &Session<'_>, handle: CK_OBJECT_HANDLE) {
        if let Some(o) = &self.objects {
            o.forget(s.entry.backend, handle);
        }
    }

    /// `require_non_extractable` for `C_CopyObject`: the template to forward (the safe values
    /// it leaves unstated added, when the source is a secret or private key), or a refusal.
    pub fn protected_copy<'s>(
        &self,
        func: &str,
        s: &Session<'_>,
        source: CK_OBJECT_HANDLE,
        t: Template<'s>,
        storage: &'s mut Vec<CK_ATTRIBUTE>,
    ) -> Result<Template<'s>> {
        let policy = &s.entry.policy;
        if !policy.require_non_extractable {
            return Ok(t);
        }
        let (class, source_extractable, source_sensitive) = key_protection(s, source)?;
        if !matches!(class, Some(CKO_SECRET_KEY | CKO_PRIVATE_KEY)) {
            return Ok(t);
        }
        // The copy takes what the template does not state from its source: add only the safe
        // values the source lacks (a copy may turn CKA_EXTRACTABLE off and CKA_SENSITIVE on;
        // SoftHSMv2 refuses restating a value the source already has).
        let (extractable, sensitive) = (t.bool_value(CKA_EXTRACTABLE), t.bool_value(CKA_SENSITIVE));
        let extra = policy.protect(
            func,
            s.slot,
            extractable.or(source_extractable.filter(|e| !e)),
            sensitive.or(source_sensitive.filter(|s| *s)),
        )?;
        Ok(if extra.is_empty() {
            t
        } else {
            t.with_extra(extra, storage)
        })
    }

    /// `require_non_extractable` for `C_SetAttributeValue`: making a secret or private key
    /// extractable or not sensitive is refused.
    pub fn check_attribute_change(
        &self,
        func: &str,
        s: &Session<'_>,
        object: CK_OBJECT_HANDLE,
        t: &Template<'_>,
    ) -> Result<()> {
        let policy = &s.entry.policy;
        if !policy.weakens_key(t) {
            return Ok(());
        }
        let (class, _, _) = key_protection(s, object)?;
        if !matches!(class, Some(CKO_SECRET_KEY | CKO_PRIVATE_KEY)) {
            return Ok(());
        }
        policy
            .protect(
                func,
                s.slot,
                t.bool_value(CKA_EXTRACTABLE),
                t.bool_value(CKA_SENSITIVE),
            )
            .map(|_| ())
    }

    /// Reads every slot's credential (C_Initialize).
    pub fn load_credentials(&self) -> Result<()> {
        for e in &self.slots {
            e.load_credential().map_err(Error::setup)?;
        }
        Ok(())
    }

    /// Closes every session still open and wipes credentials (C_Finalize); returns the virtual
    /// handles of the sessions it closed, with their routes (for the audit trail).
    pub fn close_everything(&self) -> Vec<(CK_SESSION_HANDLE, SessionRoute)> {
        // No reconnect thread calls an upstream once C_Finalize has returned.
        self.stop_reconnects();
        let open = self.sessions.open_sessions();
        for (_, route) in &open {
            if let Some(b) = self.backends.get(route.backend) {
                let _ = b.close_session(route.handle);
            }
        }
        self.forget_sessions();
        for e in &self.slots {
            e.drop_credential();
            e.forget_location();
            e.set_logged_in(false);
        }
        open
    }

    /// Forgets every session without calling a backend (a child after `fork()`, whose
    /// sessions belong to the parent).
    pub fn forget_sessions(&self) {
        self.sessions.remove_where(|_| true);
        for e in &self.slots {
            e.set_logged_in(false);
        }
    }
}

/// An object's class, CKA_EXTRACTABLE and CKA_SENSITIVE, read from its backend.
fn key_protection(
    s: &Session<'_>,
    object: CK_OBJECT_HANDLE,
) -> Result<(Option<CK_OBJECT_CLASS>, Option<bool>, Option<bool>)> {
    let mut q = AttributeQuery::new(&[CKA_CLASS, CKA_EXTRACTABLE, CKA_SENSITIVE], 8);
    match s
        .backend
        .get_attribute_value(s.handle, object, q.template())
    {
        // Public objects have no CKA_EXTRACTABLE: the others are still filled in.
        Ok(()) | Err(Error::Backend(CKR_ATTRIBUTE_TYPE_INVALID | CKR_ATTRIBUTE_SENSITIVE)) => {}
        Err(e) => return Err(e),
    }
    Ok((q.ulong_value(0), q.bool_value(1), q.bool_value(2)))
}
