//! Signing and MACing, verification (PKCS#11 2.40 §5.11, §5.12).

use pkcs11_sys::*;

use crate::error::Error;

use crate::audit::ops::OpKind;
use crate::ffi::args::{InBuf, Mechanism, OutBuf};
use crate::ffi::boundary::{audited, mechanism_arg};

/// C_SignInit — §5.11.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.11 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SignInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    audited(
        "C_SignInit",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hKey={hKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism is NULL or points to a CK_MECHANISM (§5.11).
            let m = unsafe { Mechanism::new(pMechanism) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.init(OpKind::Sign);
            call.mechanism(m.mechanism_type());
            call.key(hKey);
            s.entry
                .policy
                .check_mechanism("C_SignInit", s.slot, m.mechanism_type())?;
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend.sign_init(s.handle, m, hKey)
        },
    )
}

/// C_Sign — §5.11.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.11 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_Sign(
    hSession: CK_SESSION_HANDLE,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    pulSignatureLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_Sign",
        || format!("hSession={hSession:#x}, ulDataLen={ulDataLen}, pSignature={pSignature:?}"),
        |rt, call| {
            // SAFETY: the input is NULL or has ulDataLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.11).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pData, ulDataLen)?,
                    OutBuf::new(pSignature, pulSignatureLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Sign, true, input.len(), &mut output, |o| {
                s.backend.sign(s.handle, input, o)
            })
        },
    )
}

/// C_SignUpdate — §5.11.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.11 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SignUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_SignUpdate",
        || format!("hSession={hSession:#x}, ulPartLen={ulPartLen}"),
        |rt, call| {
            // SAFETY: the input is NULL or has ulPartLen readable bytes (§5.11).
            let input = unsafe { InBuf::new(pPart, ulPartLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.update(OpKind::Sign);
            call.bytes(input.len(), 0);
            s.backend.sign_update(s.handle, input)
        },
    )
}

/// C_SignFinal — §5.11.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.11 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SignFinal(
    hSession: CK_SESSION_HANDLE,
    pSignature: CK_BYTE_PTR,
    pulSignatureLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_SignFinal",
        || format!("hSession={hSession:#x}, pSignature={pSignature:?}"),
        |rt, call| {
            // SAFETY: the length is NULL or writable; the output NULL (length query) or has room
            // for its length (§5.11).
            let mut output = unsafe { OutBuf::new(pSignature, pulSignatureLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Sign, true, 0, &mut output, |o| {
                s.backend.sign_final(s.handle, o)
            })
        },
    )
}

/// C_SignRecoverInit — §5.11.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.11 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SignRecoverInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    audited(
        "C_SignRecoverInit",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hKey={hKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism is NULL or points to a CK_MECHANISM (§5.11).
            let m = unsafe { Mechanism::new(pMechanism) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.init(OpKind::Sign);
            call.mechanism(m.mechanism_type());
            call.key(hKey);
            s.entry
                .policy
                .check_mechanism("C_SignRecoverInit", s.slot, m.mechanism_type())?;
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend.sign_recover_init(s.handle, m, hKey)
        },
    )
}

/// C_SignRecover — §5.11.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.11 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SignRecover(
    hSession: CK_SESSION_HANDLE,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    pulSignatureLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_SignRecover",
        || format!("hSession={hSession:#x}, ulDataLen={ulDataLen}, pSignature={pSignature:?}"),
        |rt, call| {
            // SAFETY: the input is NULL or has ulDataLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.11).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pData, ulDataLen)?,
                    OutBuf::new(pSignature, pulSignatureLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Sign, true, input.len(), &mut output, |o| {
                s.backend.sign_recover(s.handle, input, o)
            })
        },
    )
}

/// C_VerifyInit — §5.12.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.12 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    audited(
        "C_VerifyInit",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hKey={hKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism is NULL or points to a CK_MECHANISM (§5.12).
            let m = unsafe { Mechanism::new(pMechanism) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.init(OpKind::Verify);
            call.mechanism(m.mechanism_type());
            call.key(hKey);
            s.entry
                .policy
                .check_mechanism("C_VerifyInit", s.slot, m.mechanism_type())?;
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend.verify_init(s.handle, m, hKey)
        },
    )
}

/// C_Verify — §5.12.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.12 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_Verify(
    hSession: CK_SESSION_HANDLE,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    ulSignatureLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_Verify",
        || {
            format!(
                "hSession={hSession:#x}, ulDataLen={ulDataLen}, ulSignatureLen={ulSignatureLen}"
            )
        },
        |rt, call| {
            // SAFETY: each input is NULL or has its length in readable bytes (§5.12).
            let (data, signature) = unsafe {
                (
                    InBuf::new(pData, ulDataLen)?,
                    InBuf::new(pSignature, ulSignatureLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.end(OpKind::Verify, false);
            call.bytes(data.len(), 0);
            s.backend.verify(s.handle, data, signature)
        },
    )
}

/// C_VerifyUpdate — §5.12.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.12 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_VerifyUpdate",
        || format!("hSession={hSession:#x}, ulPartLen={ulPartLen}"),
        |rt, call| {
            // SAFETY: the input is NULL or has ulPartLen readable bytes (§5.12).
            let input = unsafe { InBuf::new(pPart, ulPartLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.update(OpKind::Verify);
            call.bytes(input.len(), 0);
            s.backend.verify_update(s.handle, input)
        },
    )
}

/// C_VerifyFinal — §5.12.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.12 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyFinal(
    hSession: CK_SESSION_HANDLE,
    pSignature: CK_BYTE_PTR,
    ulSignatureLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_VerifyFinal",
        || format!("hSession={hSession:#x}, ulSignatureLen={ulSignatureLen}"),
        |rt, call| {
            // SAFETY: each input is NULL or has its length in readable bytes (§5.12).
            let signature = unsafe { InBuf::new(pSignature, ulSignatureLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.end(OpKind::Verify, false);
            call.bytes(0, 0);
            s.backend.verify_final(s.handle, signature)
        },
    )
}

/// C_VerifyRecoverInit — §5.12.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.12 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyRecoverInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    audited(
        "C_VerifyRecoverInit",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hKey={hKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism is NULL or points to a CK_MECHANISM (§5.12).
            let m = unsafe { Mechanism::new(pMechanism) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.init(OpKind::Verify);
            call.mechanism(m.mechanism_type());
            call.key(hKey);
            s.entry
                .policy
                .check_mechanism("C_VerifyRecoverInit", s.slot, m.mechanism_type())?;
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend.verify_recover_init(s.handle, m, hKey)
        },
    )
}

/// C_VerifyRecover — §5.12.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.12 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyRecover(
    hSession: CK_SESSION_HANDLE,
    pSignature: CK_BYTE_PTR,
    ulSignatureLen: CK_ULONG,
    pData: CK_BYTE_PTR,
    pulDataLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_VerifyRecover",
        || format!("hSession={hSession:#x}, ulSignatureLen={ulSignatureLen}, pData={pData:?}"),
        |rt, call| {
            // SAFETY: the input is NULL or has ulSignatureLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.12).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pSignature, ulSignatureLen)?,
                    OutBuf::new(pData, pulDataLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Verify, true, input.len(), &mut output, |o| {
                s.backend.verify_recover(s.handle, input, o)
            })
        },
    )
}
