//! Message digesting (PKCS#11 2.40 §5.10).

use pkcs11_sys::*;

use crate::error::Error;

use crate::audit::ops::OpKind;
use crate::ffi::args::{InBuf, Mechanism, OutBuf};
use crate::ffi::boundary::{audited, mechanism_arg};

/// C_DigestInit — §5.10.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.10 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DigestInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
) -> CK_RV {
    audited(
        "C_DigestInit",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!("hSession={hSession:#x}, pMechanism={}", mechanism)
        },
        |rt, call| {
            // SAFETY: pMechanism is NULL or points to a CK_MECHANISM (§5.10).
            let m = unsafe { Mechanism::new(pMechanism) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.init(OpKind::Digest);
            call.mechanism(m.mechanism_type());
            s.entry
                .policy
                .check_mechanism("C_DigestInit", s.slot, m.mechanism_type())?;
            s.backend.digest_init(s.handle, m)
        },
    )
}

/// C_Digest — §5.10.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.10 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_Digest(
    hSession: CK_SESSION_HANDLE,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pDigest: CK_BYTE_PTR,
    pulDigestLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_Digest",
        || format!("hSession={hSession:#x}, ulDataLen={ulDataLen}, pDigest={pDigest:?}"),
        |rt, call| {
            // SAFETY: the input is NULL or has ulDataLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.10).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pData, ulDataLen)?,
                    OutBuf::new(pDigest, pulDigestLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Digest, true, input.len(), &mut output, |o| {
                s.backend.digest(s.handle, input, o)
            })
        },
    )
}

/// C_DigestUpdate — §5.10.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.10 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DigestUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_DigestUpdate",
        || format!("hSession={hSession:#x}, ulPartLen={ulPartLen}"),
        |rt, call| {
            // SAFETY: the input is NULL or has ulPartLen readable bytes (§5.10).
            let input = unsafe { InBuf::new(pPart, ulPartLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.update(OpKind::Digest);
            call.bytes(input.len(), 0);
            s.backend.digest_update(s.handle, input)
        },
    )
}

/// C_DigestKey — §5.10.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.10 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DigestKey(hSession: CK_SESSION_HANDLE, hKey: CK_OBJECT_HANDLE) -> CK_RV {
    audited(
        "C_DigestKey",
        || format!("hSession={hSession:#x}, hKey={hKey:#x}"),
        |rt, call| {
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.update(OpKind::Digest);
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend.digest_key(s.handle, hKey)
        },
    )
}

/// C_DigestFinal — §5.10.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.10 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DigestFinal(
    hSession: CK_SESSION_HANDLE,
    pDigest: CK_BYTE_PTR,
    pulDigestLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_DigestFinal",
        || format!("hSession={hSession:#x}, pDigest={pDigest:?}"),
        |rt, call| {
            // SAFETY: the length is NULL or writable; the output NULL (length query) or has room
            // for its length (§5.10).
            let mut output = unsafe { OutBuf::new(pDigest, pulDigestLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Digest, true, 0, &mut output, |o| {
                s.backend.digest_final(s.handle, o)
            })
        },
    )
}
