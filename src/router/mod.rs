//! The router: which backend serves a slot or a session, under which of its own ids.
//!
//! Applications only ever see p11gate's virtual session handles ([`sessions`]); a handle that
//! p11gate did not hand out, or that was closed, is refused and never forwarded. Object handles
//! are not remapped: they pass through within the backend of their session.
//!
//! Slots: this version serves one backend and maps its slot ids one to one, so that slot numbers
//! and every slot-level answer are exactly the upstream's. Configured virtual slots, several
//! upstreams and per-app visibility replace [`Router::slot`] and [`Router::slot_list`] in the
//! slot-mapping capability; nothing else here changes for them.

pub mod sessions;

use pkcs11_sys::*;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ffi::args::OutBuf;
use sessions::{SessionRoute, SessionTable};

/// A resolved session: the backend that owns it and the backend's own handle.
#[derive(Debug, Clone, Copy)]
pub struct Session<'a> {
    pub backend: &'a dyn Backend,
    /// The backend's session handle.
    pub handle: CK_SESSION_HANDLE,
    /// The virtual slot the session was opened on.
    pub slot: CK_SLOT_ID,
}

/// A resolved slot.
#[derive(Debug, Clone, Copy)]
pub struct Slot<'a> {
    pub backend: &'a dyn Backend,
    pub backend_index: usize,
    /// The backend's slot id.
    pub id: CK_SLOT_ID,
}

/// Routes calls of one runtime.
#[derive(Debug)]
pub struct Router {
    backends: Vec<Box<dyn Backend>>,
    sessions: SessionTable,
}

impl Router {
    pub fn new(backends: Vec<Box<dyn Backend>>) -> Router {
        Router {
            backends,
            sessions: SessionTable::default(),
        }
    }

    pub fn backends(&self) -> &[Box<dyn Backend>] {
        &self.backends
    }

    /// The session behind a virtual handle.
    #[inline]
    pub fn session(&self, handle: CK_SESSION_HANDLE) -> Result<Session<'_>> {
        let route = self.sessions.get(handle)?;
        let backend = self
            .backends
            .get(route.backend)
            .ok_or(Error::SessionHandleInvalid)?;
        Ok(Session {
            backend: &**backend,
            handle: route.handle,
            slot: route.slot,
        })
    }

    /// The backend slot behind a slot id the application named.
    #[inline]
    pub fn slot(&self, id: CK_SLOT_ID) -> Result<Slot<'_>> {
        let backend = self.backends.first().ok_or(Error::SlotIdInvalid)?;
        Ok(Slot {
            backend: &**backend,
            backend_index: 0,
            id,
        })
    }

    /// `C_GetSlotList`.
    pub fn slot_list(&self, token_present: bool, out: OutBuf<'_, CK_SLOT_ID>) -> Result<()> {
        match self.backends.first() {
            Some(b) => b.slot_list(token_present, out),
            None => {
                let mut out = out;
                out.put(&[])
            }
        }
    }

    /// `C_WaitForSlotEvent`: the slot the backend reports, as the application knows it.
    pub fn wait_for_slot_event(&self, flags: CK_FLAGS, slot: &mut CK_SLOT_ID) -> Result<()> {
        let backend = self.backends.first().ok_or(Error::FunctionNotSupported)?;
        backend.wait_for_slot_event(flags, slot)
    }

    /// `C_OpenSession`: opens a backend session and hands out a virtual handle for it.
    ///
    /// Surrender callbacks (`Notify`) are not forwarded: the backend would call them with its own
    /// session handle, which the application must never see, and the spec lets a library never
    /// call them at all.
    pub fn open_session(&self, slot_id: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
        let slot = self.slot(slot_id)?;
        let handle = slot.backend.open_session(slot.id, flags)?;
        let route = SessionRoute {
            backend: slot.backend_index,
            handle,
            slot: slot_id,
        };
        self.sessions.insert(route).inspect_err(|_| {
            // No room for it: don't leave the backend session open behind the application.
            let _ = slot.backend.close_session(handle);
        })
    }

    /// `C_CloseSession`: the virtual handle is forgotten once the backend has closed the
    /// session, or says it no longer exists.
    pub fn close_session(&self, handle: CK_SESSION_HANDLE) -> Result<()> {
        let s = self.session(handle)?;
        let result = s.backend.close_session(s.handle);
        if matches!(
            result,
            Ok(())
                | Err(Error::Backend(
                    CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED
                ))
        ) {
            self.sessions.remove(handle);
        }
        result
    }

    /// `C_CloseAllSessions`.
    pub fn close_all_sessions(&self, slot_id: CK_SLOT_ID) -> Result<()> {
        let slot = self.slot(slot_id)?;
        slot.backend.close_all_sessions(slot.id)?;
        let index = slot.backend_index;
        self.sessions
            .remove_where(|r| r.backend == index && r.slot == slot_id);
        Ok(())
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

    /// Closes every session still open (C_Finalize), as far as the backends allow.
    pub fn close_everything(&self) {
        for route in self.sessions.open_routes() {
            if let Some(b) = self.backends.get(route.backend) {
                let _ = b.close_session(route.handle);
            }
        }
        self.forget_sessions();
    }

    /// Forgets every session without calling a backend (a child after `fork()`, whose
    /// sessions belong to the parent).
    pub fn forget_sessions(&self) {
        self.sessions.remove_where(|_| true);
    }
}
