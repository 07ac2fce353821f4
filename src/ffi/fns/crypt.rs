//! Encryption, decryption and dual-function operations (PKCS#11 2.40 §5.8, §5.9, §5.13).
//!
//! Data and results are forwarded, never logged: trace lines carry only lengths.

use pkcs11_sys::*;

use crate::error::Error;

use crate::audit::ops::OpKind;
use crate::ffi::args::{InBuf, Mechanism, OutBuf};
use crate::ffi::boundary::{audited, mechanism_arg};

/// C_EncryptInit — §5.8.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.8 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_EncryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    audited(
        "C_EncryptInit",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hKey={hKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism is NULL or points to a CK_MECHANISM (§5.8).
            let m = unsafe { Mechanism::new(pMechanism) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.init(OpKind::Encrypt);
            call.mechanism(m.mechanism_type());
            call.key(hKey);
            s.entry
                .policy
                .check_mechanism("C_EncryptInit", s.slot, m.mechanism_type())?;
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend.encrypt_init(s.handle, m, hKey)
        },
    )
}

/// C_Encrypt — §5.8.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.8 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_Encrypt(
    hSession: CK_SESSION_HANDLE,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pEncryptedData: CK_BYTE_PTR,
    pulEncryptedDataLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_Encrypt",
        || {
            format!(
                "hSession={hSession:#x}, ulDataLen={ulDataLen}, pEncryptedData={pEncryptedData:?}"
            )
        },
        |rt, call| {
            // SAFETY: the input is NULL or has ulDataLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.8).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pData, ulDataLen)?,
                    OutBuf::new(pEncryptedData, pulEncryptedDataLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Encrypt, true, input.len(), &mut output, |o| {
                s.backend.encrypt(s.handle, input, o)
            })
        },
    )
}

/// C_EncryptUpdate — §5.8.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.8 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_EncryptUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
    pEncryptedPart: CK_BYTE_PTR,
    pulEncryptedPartLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_EncryptUpdate",
        || {
            format!(
                "hSession={hSession:#x}, ulPartLen={ulPartLen}, pEncryptedPart={pEncryptedPart:?}"
            )
        },
        |rt, call| {
            // SAFETY: the input is NULL or has ulPartLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.8).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pPart, ulPartLen)?,
                    OutBuf::new(pEncryptedPart, pulEncryptedPartLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Encrypt, false, input.len(), &mut output, |o| {
                s.backend.encrypt_update(s.handle, input, o)
            })
        },
    )
}

/// C_EncryptFinal — §5.8.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.8 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_EncryptFinal(
    hSession: CK_SESSION_HANDLE,
    pLastEncryptedPart: CK_BYTE_PTR,
    pulLastEncryptedPartLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_EncryptFinal",
        || format!("hSession={hSession:#x}, pLastEncryptedPart={pLastEncryptedPart:?}"),
        |rt, call| {
            // SAFETY: the length is NULL or writable; the output NULL (length query) or has room
            // for its length (§5.8).
            let mut output = unsafe { OutBuf::new(pLastEncryptedPart, pulLastEncryptedPartLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Encrypt, true, 0, &mut output, |o| {
                s.backend.encrypt_final(s.handle, o)
            })
        },
    )
}

/// C_DecryptInit — §5.9.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.9 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    audited(
        "C_DecryptInit",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hKey={hKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism is NULL or points to a CK_MECHANISM (§5.9).
            let m = unsafe { Mechanism::new(pMechanism) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.init(OpKind::Decrypt);
            call.mechanism(m.mechanism_type());
            call.key(hKey);
            s.entry
                .policy
                .check_mechanism("C_DecryptInit", s.slot, m.mechanism_type())?;
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend.decrypt_init(s.handle, m, hKey)
        },
    )
}

/// C_Decrypt — §5.9.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.9 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_Decrypt(
    hSession: CK_SESSION_HANDLE,
    pEncryptedData: CK_BYTE_PTR,
    ulEncryptedDataLen: CK_ULONG,
    pData: CK_BYTE_PTR,
    pulDataLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_Decrypt",
        || {
            format!(
                "hSession={hSession:#x}, ulEncryptedDataLen={ulEncryptedDataLen}, pData={pData:?}"
            )
        },
        |rt, call| {
            // SAFETY: the input is NULL or has ulEncryptedDataLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.9).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pEncryptedData, ulEncryptedDataLen)?,
                    OutBuf::new(pData, pulDataLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Decrypt, true, input.len(), &mut output, |o| {
                s.backend.decrypt(s.handle, input, o)
            })
        },
    )
}

/// C_DecryptUpdate — §5.9.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.9 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptUpdate(
    hSession: CK_SESSION_HANDLE,
    pEncryptedPart: CK_BYTE_PTR,
    ulEncryptedPartLen: CK_ULONG,
    pPart: CK_BYTE_PTR,
    pulPartLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_DecryptUpdate",
        || {
            format!(
                "hSession={hSession:#x}, ulEncryptedPartLen={ulEncryptedPartLen}, pPart={pPart:?}"
            )
        },
        |rt, call| {
            // SAFETY: the input is NULL or has ulEncryptedPartLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.9).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pEncryptedPart, ulEncryptedPartLen)?,
                    OutBuf::new(pPart, pulPartLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Decrypt, false, input.len(), &mut output, |o| {
                s.backend.decrypt_update(s.handle, input, o)
            })
        },
    )
}

/// C_DecryptFinal — §5.9.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.9 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptFinal(
    hSession: CK_SESSION_HANDLE,
    pLastPart: CK_BYTE_PTR,
    pulLastPartLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_DecryptFinal",
        || format!("hSession={hSession:#x}, pLastPart={pLastPart:?}"),
        |rt, call| {
            // SAFETY: the length is NULL or writable; the output NULL (length query) or has room
            // for its length (§5.9).
            let mut output = unsafe { OutBuf::new(pLastPart, pulLastPartLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Decrypt, true, 0, &mut output, |o| {
                s.backend.decrypt_final(s.handle, o)
            })
        },
    )
}

/// C_DigestEncryptUpdate — §5.13.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.13 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DigestEncryptUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
    pEncryptedPart: CK_BYTE_PTR,
    pulEncryptedPartLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_DigestEncryptUpdate",
        || {
            format!(
                "hSession={hSession:#x}, ulPartLen={ulPartLen}, pEncryptedPart={pEncryptedPart:?}"
            )
        },
        |rt, call| {
            // SAFETY: the input is NULL or has ulPartLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.13).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pPart, ulPartLen)?,
                    OutBuf::new(pEncryptedPart, pulEncryptedPartLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Encrypt, false, input.len(), &mut output, |o| {
                s.backend.digest_encrypt_update(s.handle, input, o)
            })
        },
    )
}

/// C_DecryptDigestUpdate — §5.13.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.13 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptDigestUpdate(
    hSession: CK_SESSION_HANDLE,
    pEncryptedPart: CK_BYTE_PTR,
    ulEncryptedPartLen: CK_ULONG,
    pPart: CK_BYTE_PTR,
    pulPartLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_DecryptDigestUpdate",
        || {
            format!(
                "hSession={hSession:#x}, ulEncryptedPartLen={ulEncryptedPartLen}, pPart={pPart:?}"
            )
        },
        |rt, call| {
            // SAFETY: the input is NULL or has ulEncryptedPartLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.13).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pEncryptedPart, ulEncryptedPartLen)?,
                    OutBuf::new(pPart, pulPartLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Decrypt, false, input.len(), &mut output, |o| {
                s.backend.decrypt_digest_update(s.handle, input, o)
            })
        },
    )
}

/// C_SignEncryptUpdate — §5.13.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.13 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SignEncryptUpdate(
    hSession: CK_SESSION_HANDLE,
    pPart: CK_BYTE_PTR,
    ulPartLen: CK_ULONG,
    pEncryptedPart: CK_BYTE_PTR,
    pulEncryptedPartLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_SignEncryptUpdate",
        || {
            format!(
                "hSession={hSession:#x}, ulPartLen={ulPartLen}, pEncryptedPart={pEncryptedPart:?}"
            )
        },
        |rt, call| {
            // SAFETY: the input is NULL or has ulPartLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.13).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pPart, ulPartLen)?,
                    OutBuf::new(pEncryptedPart, pulEncryptedPartLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Encrypt, false, input.len(), &mut output, |o| {
                s.backend.sign_encrypt_update(s.handle, input, o)
            })
        },
    )
}

/// C_DecryptVerifyUpdate — §5.13.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.13 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptVerifyUpdate(
    hSession: CK_SESSION_HANDLE,
    pEncryptedPart: CK_BYTE_PTR,
    ulEncryptedPartLen: CK_ULONG,
    pPart: CK_BYTE_PTR,
    pulPartLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_DecryptVerifyUpdate",
        || {
            format!(
                "hSession={hSession:#x}, ulEncryptedPartLen={ulEncryptedPartLen}, pPart={pPart:?}"
            )
        },
        |rt, call| {
            // SAFETY: the input is NULL or has ulEncryptedPartLen readable bytes; the output length is
            // NULL or writable, the output NULL (length query) or has room for its length (§5.13).
            let (input, mut output) = unsafe {
                (
                    InBuf::new(pEncryptedPart, ulEncryptedPartLen)?,
                    OutBuf::new(pPart, pulPartLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.data(OpKind::Decrypt, false, input.len(), &mut output, |o| {
                s.backend.decrypt_verify_update(s.handle, input, o)
            })
        },
    )
}
