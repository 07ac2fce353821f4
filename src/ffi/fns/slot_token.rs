//! Slot and token management (PKCS#11 2.40 §5.5).

use pkcs11_sys::*;

use crate::error::Error;
use crate::ffi::args::{label32, out, InBuf, OutBuf};
use crate::ffi::boundary::{audited, guarded, guarded_may_block};
use crate::policy::mechanism_text;

/// C_GetSlotList — §5.5.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.5 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetSlotList(
    tokenPresent: CK_BBOOL,
    pSlotList: CK_SLOT_ID_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    guarded(
        "C_GetSlotList",
        || format!("tokenPresent={tokenPresent}, pSlotList={pSlotList:?}"),
        |rt| {
            // SAFETY: pulCount is NULL or writable; pSlotList is NULL (length query) or has room
            // for *pulCount slot ids (§5.5).
            let list = unsafe { OutBuf::new(pSlotList, pulCount) }?;
            rt.router.slot_list(tokenPresent != CK_FALSE, list)
        },
    )
}

/// C_GetSlotInfo — §5.5.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.5 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetSlotInfo(slotID: CK_SLOT_ID, pInfo: CK_SLOT_INFO_PTR) -> CK_RV {
    guarded(
        "C_GetSlotInfo",
        || format!("slotID={slotID:#x}"),
        |rt| {
            // SAFETY: pInfo is NULL or points to a writable CK_SLOT_INFO (§5.5).
            let info = unsafe { out(pInfo) }?;
            rt.router.slot_info(slotID, info)
        },
    )
}

/// C_GetTokenInfo — §5.5.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.5 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetTokenInfo(slotID: CK_SLOT_ID, pInfo: CK_TOKEN_INFO_PTR) -> CK_RV {
    guarded(
        "C_GetTokenInfo",
        || format!("slotID={slotID:#x}"),
        |rt| {
            // SAFETY: pInfo is NULL or points to a writable CK_TOKEN_INFO (§5.5).
            let info = unsafe { out(pInfo) }?;
            let slot = rt.router.slot(slotID, false)?;
            slot.backend.token_info(slot.id, info)?;
            slot.entry.learn_token_label(slotID, info);
            Ok(())
        },
    )
}

/// C_WaitForSlotEvent — §5.5.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.5 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_WaitForSlotEvent(
    flags: CK_FLAGS,
    pSlot: CK_SLOT_ID_PTR,
    pReserved: CK_VOID_PTR,
) -> CK_RV {
    // A blocking wait may last for ever: it must not hold up fork() (see ffi::fork_gate).
    guarded_may_block(
        flags & CKF_DONT_BLOCK == 0,
        "C_WaitForSlotEvent",
        || format!("flags={flags:#x}"),
        |rt| {
            if !pReserved.is_null() {
                return Err(Error::ArgumentsBad);
            }
            // SAFETY: pSlot is NULL or points to a writable CK_SLOT_ID (§5.5).
            let slot = unsafe { out(pSlot) }?;
            rt.router.wait_for_slot_event(flags, slot)
        },
    )
}

/// C_GetMechanismList — §5.5.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.5 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismList(
    slotID: CK_SLOT_ID,
    pMechanismList: CK_MECHANISM_TYPE_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    guarded(
        "C_GetMechanismList",
        || format!("slotID={slotID:#x}, pMechanismList={pMechanismList:?}"),
        |rt| {
            // SAFETY: pulCount is NULL or writable; pMechanismList is NULL (length query) or has
            // room for *pulCount entries (§5.5).
            let list = unsafe { OutBuf::new(pMechanismList, pulCount) }?;
            rt.router.mechanism_list(slotID, list)
        },
    )
}

/// C_GetMechanismInfo — §5.5.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.5 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismInfo(
    slotID: CK_SLOT_ID,
    type_: CK_MECHANISM_TYPE,
    pInfo: CK_MECHANISM_INFO_PTR,
) -> CK_RV {
    guarded(
        "C_GetMechanismInfo",
        || format!("slotID={slotID:#x}, type={}", mechanism_text(type_)),
        |rt| {
            // SAFETY: pInfo is NULL or points to a writable CK_MECHANISM_INFO (§5.5).
            let info = unsafe { out(pInfo) }?;
            // Some modules (SoftHSMv2 for CKM_AES_GCM) OR flags into the caller's struct rather
            // than setting them; start from zero so the answer never carries stack garbage.
            *info = CK_MECHANISM_INFO::default();
            let slot = rt.router.slot(slotID, false)?;
            slot.entry
                .policy
                .check_mechanism("C_GetMechanismInfo", slotID, type_)?;
            slot.backend.mechanism_info(slot.id, type_, info)
        },
    )
}

/// C_InitToken — §5.5. The SO PIN is forwarded, never logged.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.5 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_InitToken(
    slotID: CK_SLOT_ID,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
    pLabel: CK_UTF8CHAR_PTR,
) -> CK_RV {
    audited(
        "C_InitToken",
        || format!("slotID={slotID:#x}, pPin=<not logged>"),
        |rt, call| {
            // SAFETY: pPin is NULL or has ulPinLen readable bytes (§5.5).
            let pin = unsafe { InBuf::new(pPin, ulPinLen) }?;
            // SAFETY: pLabel is NULL or points to 32 readable bytes (§5.5).
            let label = unsafe { label32(pLabel) }?;
            if let Some((entry, upstream)) = rt.router.slot_ref(slotID) {
                call.slot(slotID, upstream, entry);
            }
            rt.router.init_token(slotID, pin, label)?;
            rt.audit.keys.clear();
            Ok(())
        },
    )
}

/// C_InitPIN — §5.5.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.5 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_InitPIN(
    hSession: CK_SESSION_HANDLE,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_InitPIN",
        || format!("hSession={hSession:#x}, pPin=<not logged>"),
        |rt, call| {
            // SAFETY: pPin is NULL or has ulPinLen readable bytes (§5.5).
            let pin = unsafe { InBuf::new(pPin, ulPinLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            rt.router.check_pin_change("C_InitPIN", &s)?;
            s.entry.policy.check_writable("C_InitPIN", s.slot)?;
            s.backend.init_pin(s.handle, pin)
        },
    )
}

/// C_SetPIN — §5.5.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.5 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SetPIN(
    hSession: CK_SESSION_HANDLE,
    pOldPin: CK_UTF8CHAR_PTR,
    ulOldLen: CK_ULONG,
    pNewPin: CK_UTF8CHAR_PTR,
    ulNewLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_SetPIN",
        || format!("hSession={hSession:#x}, pOldPin=<not logged>, pNewPin=<not logged>"),
        |rt, call| {
            // SAFETY: each PIN is NULL or has its length in readable bytes (§5.5).
            let (old, new) = unsafe {
                (
                    InBuf::new(pOldPin, ulOldLen)?,
                    InBuf::new(pNewPin, ulNewLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            rt.router.check_pin_change("C_SetPIN", &s)?;
            s.entry.policy.check_writable("C_SetPIN", s.slot)?;
            s.backend.set_pin(s.handle, old, new)
        },
    )
}
