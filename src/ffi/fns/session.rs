//! Session management (PKCS#11 2.40 §5.6).

use pkcs11_sys::*;

use crate::error::Error;

use crate::ffi::args::{out, InBuf, OutBuf};
use crate::ffi::boundary::{audited, guarded};

/// C_OpenSession — §5.6. `pApplication` and `Notify` are not forwarded (see
/// `Router::open_session`): the application only ever sees p11gate's handles.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.6 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_OpenSession(
    slotID: CK_SLOT_ID,
    flags: CK_FLAGS,
    pApplication: CK_VOID_PTR,
    Notify: CK_NOTIFY,
    phSession: CK_SESSION_HANDLE_PTR,
) -> CK_RV {
    let _ = (pApplication, Notify);
    audited(
        "C_OpenSession",
        || format!("slotID={slotID:#x}, flags={flags:#x}"),
        |rt, call| {
            if let Some((entry, upstream)) = rt.router.slot_ref(slotID) {
                call.slot(slotID, upstream, entry);
            }
            call.rw(flags & CKF_RW_SESSION != 0);
            // SAFETY: phSession is NULL or points to a writable handle (§5.6).
            let handle = unsafe { out(phSession) }?;
            *handle = rt.router.open_session(slotID, flags)?;
            call.session_opened(*handle);
            if call.on() {
                rt.router.learn_token_label(slotID);
            }
            Ok(())
        },
    )
}

/// C_CloseSession — §5.6.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.6 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_CloseSession(hSession: CK_SESSION_HANDLE) -> CK_RV {
    audited(
        "C_CloseSession",
        || format!("hSession={hSession:#x}"),
        |rt, call| {
            if let Ok(s) = rt.router.session(hSession) {
                call.session(&s, hSession);
            }
            rt.router.close_session(hSession)?;
            call.session_closing();
            Ok(())
        },
    )
}

/// C_CloseAllSessions — §5.6.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.6 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_CloseAllSessions(slotID: CK_SLOT_ID) -> CK_RV {
    audited(
        "C_CloseAllSessions",
        || format!("slotID={slotID:#x}"),
        |rt, call| {
            let backend = rt.router.slot_ref(slotID).map(|(entry, upstream)| {
                call.slot(slotID, upstream, entry);
                entry.backend
            });
            let mut closed = Vec::new();
            let result = rt.router.close_all_sessions(slotID, &mut closed);
            if let Some(backend) = backend {
                call.sessions_closed(&closed, backend);
            }
            result
        },
    )
}

/// C_GetSessionInfo — §5.6.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.6 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetSessionInfo(
    hSession: CK_SESSION_HANDLE,
    pInfo: CK_SESSION_INFO_PTR,
) -> CK_RV {
    guarded(
        "C_GetSessionInfo",
        || format!("hSession={hSession:#x}"),
        |rt| {
            // SAFETY: pInfo is NULL or points to a writable CK_SESSION_INFO (§5.6).
            let info = unsafe { out(pInfo) }?;
            rt.router.session_info(hSession, info)
        },
    )
}

/// C_GetOperationState — §5.6.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.6 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetOperationState(
    hSession: CK_SESSION_HANDLE,
    pOperationState: CK_BYTE_PTR,
    pulOperationStateLen: CK_ULONG_PTR,
) -> CK_RV {
    guarded(
        "C_GetOperationState",
        || format!("hSession={hSession:#x}, pOperationState={pOperationState:?}"),
        |rt| {
            // SAFETY: the length pointer is NULL or writable; the buffer is NULL or has room for
            // *pulOperationStateLen bytes (§5.6).
            let state = unsafe { OutBuf::new(pOperationState, pulOperationStateLen) }?;
            let s = rt.router.session(hSession)?;
            s.backend.operation_state(s.handle, state)
        },
    )
}

/// C_SetOperationState — §5.6.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.6 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SetOperationState(
    hSession: CK_SESSION_HANDLE,
    pOperationState: CK_BYTE_PTR,
    ulOperationStateLen: CK_ULONG,
    hEncryptionKey: CK_OBJECT_HANDLE,
    hAuthenticationKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guarded(
        "C_SetOperationState",
        || format!("hSession={hSession:#x}, ulOperationStateLen={ulOperationStateLen}"),
        |rt| {
            // SAFETY: NULL or ulOperationStateLen readable bytes (§5.6).
            let state = unsafe { InBuf::new(pOperationState, ulOperationStateLen) }?;
            let s = rt.router.session(hSession)?;
            rt.router
                .check_object(&s, hEncryptionKey, Error::KeyHandleInvalid)?;
            rt.router
                .check_object(&s, hAuthenticationKey, Error::KeyHandleInvalid)?;
            s.backend
                .set_operation_state(s.handle, state, hEncryptionKey, hAuthenticationKey)
        },
    )
}

/// C_Login — §5.6. The PIN is forwarded, never logged.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.6 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_Login(
    hSession: CK_SESSION_HANDLE,
    userType: CK_USER_TYPE,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_Login",
        || {
            format!(
                "hSession={hSession:#x}, userType={}, pPin=<not logged>",
                user_text(userType)
            )
        },
        |rt, call| {
            call.user(userType);
            if let Ok(s) = rt.router.session(hSession) {
                call.session(&s, hSession);
            }
            // SAFETY: pPin is NULL (protected authentication path) or has ulPinLen bytes (§5.6).
            let pin = unsafe { InBuf::new(pPin, ulPinLen) }?;
            rt.router.login(hSession, userType, pin)
        },
    )
}

/// C_Logout — §5.6.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.6 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_Logout(hSession: CK_SESSION_HANDLE) -> CK_RV {
    audited(
        "C_Logout",
        || format!("hSession={hSession:#x}"),
        |rt, call| {
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            rt.router.logout(&s)
        },
    )
}

/// A user type for trace lines.
pub(crate) fn user_text(u: CK_USER_TYPE) -> String {
    match u {
        CKU_SO => "CKU_SO".into(),
        CKU_USER => "CKU_USER".into(),
        CKU_CONTEXT_SPECIFIC => "CKU_CONTEXT_SPECIFIC".into(),
        other => format!("{other:#x}"),
    }
}
