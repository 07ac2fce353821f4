//! PKCS#11 3.0 additions (3.0 §5.6 C_LoginUser, C_SessionCancel; §5.14–§5.19 message-based
//! encryption, decryption, signing and verification). They are offered only through the 3.0
//! interface, which p11gate offers only when its upstream does; each is forwarded.

use pkcs11_sys::*;

use crate::error::Error;

use crate::audit::ops::OpKind;
use crate::backend::MessageKind;
use crate::ffi::args::{InBuf, Mechanism, MessageSignature, OutBuf, Param, SignatureDirection};
use crate::ffi::boundary::{audited, mechanism_arg};
use crate::ffi::fns::session::user_text;

/// C_LoginUser — 3.0 §5.6. PIN and user name are forwarded, never logged.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 §5.6 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_LoginUser(
    hSession: CK_SESSION_HANDLE,
    userType: CK_USER_TYPE,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
    pUsername: CK_UTF8CHAR_PTR,
    ulUsernameLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_LoginUser",
        || {
            format!(
                "hSession={hSession:#x}, userType={}, pPin=<not logged>",
                user_text(userType)
            )
        },
        |rt, call| {
            // SAFETY: each of PIN and user name is NULL or has its length in bytes (3.0 §5.6).
            let (pin, user) = unsafe {
                (
                    InBuf::new(pPin, ulPinLen)?,
                    InBuf::new(pUsername, ulUsernameLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.user(userType);
            s.backend.login_user(s.handle, userType, pin, user)
        },
    )
}

/// C_SessionCancel — 3.0 §5.6.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 §5.6 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SessionCancel(hSession: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    audited(
        "C_SessionCancel",
        || format!("hSession={hSession:#x}, flags={flags:#x}"),
        |rt, call| {
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            s.backend.session_cancel(s.handle, flags)
        },
    )
}

/// C_MessageEncryptInit — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_MessageEncryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    audited(
        "C_MessageEncryptInit",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hKey={hKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism is NULL or points to a CK_MECHANISM.
            let m = unsafe { Mechanism::new(pMechanism) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.init(OpKind::MessageEncrypt);
            call.mechanism(m.mechanism_type());
            call.key(hKey);
            s.entry
                .policy
                .check_mechanism("C_MessageEncryptInit", s.slot, m.mechanism_type())?;
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend
                .message_init(MessageKind::Encrypt, s.handle, m, hKey)
        },
    )
}

/// C_MessageEncryptFinal — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_MessageEncryptFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    audited(
        "C_MessageEncryptFinal",
        || format!("hSession={hSession:#x}"),
        |rt, call| {
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.end(OpKind::MessageEncrypt, false);
            s.backend.message_final(MessageKind::Encrypt, s.handle)
        },
    )
}

/// C_MessageDecryptInit — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_MessageDecryptInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    audited(
        "C_MessageDecryptInit",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hKey={hKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism is NULL or points to a CK_MECHANISM.
            let m = unsafe { Mechanism::new(pMechanism) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.init(OpKind::MessageDecrypt);
            call.mechanism(m.mechanism_type());
            call.key(hKey);
            s.entry
                .policy
                .check_mechanism("C_MessageDecryptInit", s.slot, m.mechanism_type())?;
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend
                .message_init(MessageKind::Decrypt, s.handle, m, hKey)
        },
    )
}

/// C_MessageDecryptFinal — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_MessageDecryptFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    audited(
        "C_MessageDecryptFinal",
        || format!("hSession={hSession:#x}"),
        |rt, call| {
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.end(OpKind::MessageDecrypt, false);
            s.backend.message_final(MessageKind::Decrypt, s.handle)
        },
    )
}

/// C_MessageSignInit — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_MessageSignInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    audited(
        "C_MessageSignInit",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hKey={hKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism is NULL or points to a CK_MECHANISM.
            let m = unsafe { Mechanism::new(pMechanism) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.init(OpKind::MessageSign);
            call.mechanism(m.mechanism_type());
            call.key(hKey);
            s.entry
                .policy
                .check_mechanism("C_MessageSignInit", s.slot, m.mechanism_type())?;
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend.message_init(MessageKind::Sign, s.handle, m, hKey)
        },
    )
}

/// C_MessageSignFinal — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_MessageSignFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    audited(
        "C_MessageSignFinal",
        || format!("hSession={hSession:#x}"),
        |rt, call| {
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.end(OpKind::MessageSign, false);
            s.backend.message_final(MessageKind::Sign, s.handle)
        },
    )
}

/// C_MessageVerifyInit — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_MessageVerifyInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    audited(
        "C_MessageVerifyInit",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hKey={hKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism is NULL or points to a CK_MECHANISM.
            let m = unsafe { Mechanism::new(pMechanism) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.init(OpKind::MessageVerify);
            call.mechanism(m.mechanism_type());
            call.key(hKey);
            s.entry
                .policy
                .check_mechanism("C_MessageVerifyInit", s.slot, m.mechanism_type())?;
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend
                .message_init(MessageKind::Verify, s.handle, m, hKey)
        },
    )
}

/// C_MessageVerifyFinal — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_MessageVerifyFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    audited(
        "C_MessageVerifyFinal",
        || format!("hSession={hSession:#x}"),
        |rt, call| {
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.end(OpKind::MessageVerify, false);
            s.backend.message_final(MessageKind::Verify, s.handle)
        },
    )
}

/// C_EncryptMessage — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_EncryptMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
    pPlaintext: CK_BYTE_PTR,
    ulPlaintextLen: CK_ULONG,
    pCiphertext: CK_BYTE_PTR,
    pulCiphertextLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_EncryptMessage",
        || {
            format!("hSession={hSession:#x}, ulAssociatedDataLen={ulAssociatedDataLen}, ulPlaintextLen={ulPlaintextLen}")
        },
        |rt, call| {
            // SAFETY: the inputs are NULL or have their lengths in bytes; the output length is
            // NULL or writable and the output NULL (length query) or room for its length.
            let (aad, input, output) = unsafe {
                (
                    InBuf::new(pAssociatedData, ulAssociatedDataLen)?,
                    InBuf::new(pPlaintext, ulPlaintextLen)?,
                    OutBuf::new(pCiphertext, pulCiphertextLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.message(OpKind::MessageEncrypt);
            let param = Param::new(pParameter, ulParameterLen);
            s.backend
                .crypt_message(MessageKind::Encrypt, s.handle, param, aad, input, output)
        },
    )
}

/// C_EncryptMessageBegin — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_EncryptMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_EncryptMessageBegin",
        || format!("hSession={hSession:#x}, ulAssociatedDataLen={ulAssociatedDataLen}"),
        |rt, call| {
            // SAFETY: the associated data is NULL or has its length in bytes.
            let aad = unsafe { InBuf::new(pAssociatedData, ulAssociatedDataLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.only_errors();
            s.backend.crypt_message_begin(
                MessageKind::Encrypt,
                s.handle,
                Param::new(pParameter, ulParameterLen),
                aad,
            )
        },
    )
}

/// C_EncryptMessageNext — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_EncryptMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pPlaintextPart: CK_BYTE_PTR,
    ulPlaintextPartLen: CK_ULONG,
    pCiphertextPart: CK_BYTE_PTR,
    pulCiphertextPartLen: CK_ULONG_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    audited(
        "C_EncryptMessageNext",
        || {
            format!(
                "hSession={hSession:#x}, ulPlaintextPartLen={ulPlaintextPartLen}, flags={flags:#x}"
            )
        },
        |rt, call| {
            // SAFETY: the input is NULL or has its length in bytes; the output length is NULL or
            // writable and the output NULL (length query) or room for its length.
            let (input, output) = unsafe {
                (
                    InBuf::new(pPlaintextPart, ulPlaintextPartLen)?,
                    OutBuf::new(pCiphertextPart, pulCiphertextPartLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.only_errors();
            let param = Param::new(pParameter, ulParameterLen);
            s.backend.crypt_message_next(
                MessageKind::Encrypt,
                s.handle,
                param,
                input,
                output,
                flags,
            )
        },
    )
}

/// C_DecryptMessage — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
    pCiphertext: CK_BYTE_PTR,
    ulCiphertextLen: CK_ULONG,
    pPlaintext: CK_BYTE_PTR,
    pulPlaintextLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_DecryptMessage",
        || {
            format!("hSession={hSession:#x}, ulAssociatedDataLen={ulAssociatedDataLen}, ulCiphertextLen={ulCiphertextLen}")
        },
        |rt, call| {
            // SAFETY: the inputs are NULL or have their lengths in bytes; the output length is
            // NULL or writable and the output NULL (length query) or room for its length.
            let (aad, input, output) = unsafe {
                (
                    InBuf::new(pAssociatedData, ulAssociatedDataLen)?,
                    InBuf::new(pCiphertext, ulCiphertextLen)?,
                    OutBuf::new(pPlaintext, pulPlaintextLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.message(OpKind::MessageDecrypt);
            let param = Param::new(pParameter, ulParameterLen);
            s.backend
                .crypt_message(MessageKind::Decrypt, s.handle, param, aad, input, output)
        },
    )
}

/// C_DecryptMessageBegin — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pAssociatedData: CK_BYTE_PTR,
    ulAssociatedDataLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_DecryptMessageBegin",
        || format!("hSession={hSession:#x}, ulAssociatedDataLen={ulAssociatedDataLen}"),
        |rt, call| {
            // SAFETY: the associated data is NULL or has its length in bytes.
            let aad = unsafe { InBuf::new(pAssociatedData, ulAssociatedDataLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.only_errors();
            s.backend.crypt_message_begin(
                MessageKind::Decrypt,
                s.handle,
                Param::new(pParameter, ulParameterLen),
                aad,
            )
        },
    )
}

/// C_DecryptMessageNext — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DecryptMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pCiphertextPart: CK_BYTE_PTR,
    ulCiphertextPartLen: CK_ULONG,
    pPlaintextPart: CK_BYTE_PTR,
    pulPlaintextPartLen: CK_ULONG_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    audited(
        "C_DecryptMessageNext",
        || {
            format!("hSession={hSession:#x}, ulCiphertextPartLen={ulCiphertextPartLen}, flags={flags:#x}")
        },
        |rt, call| {
            // SAFETY: the input is NULL or has its length in bytes; the output length is NULL or
            // writable and the output NULL (length query) or room for its length.
            let (input, output) = unsafe {
                (
                    InBuf::new(pCiphertextPart, ulCiphertextPartLen)?,
                    OutBuf::new(pPlaintextPart, pulPlaintextPartLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.only_errors();
            let param = Param::new(pParameter, ulParameterLen);
            s.backend.crypt_message_next(
                MessageKind::Decrypt,
                s.handle,
                param,
                input,
                output,
                flags,
            )
        },
    )
}

/// C_SignMessage — 3.0. The signature pointers pass through as given: the spec lets them be NULL
/// where no signature is produced yet.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SignMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    pulSignatureLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_SignMessage",
        || format!("hSession={hSession:#x}, ulDataLen={ulDataLen}"),
        |rt, call| {
            // SAFETY: pData is NULL or has ulDataLen readable bytes; the signature pointers are
            // as the spec allows for this function and are only forwarded.
            let (data, sig) = unsafe {
                (
                    InBuf::new(pData, ulDataLen)?,
                    MessageSignature::new(pSignature, SignatureDirection::Produce(pulSignatureLen)),
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.message(OpKind::MessageSign);
            let param = Param::new(pParameter, ulParameterLen);
            s.backend
                .sign_message(MessageKind::Sign, s.handle, param, data, sig)
        },
    )
}

/// C_SignMessageNext — 3.0. The signature pointers pass through as given: the spec lets them be NULL
/// where no signature is produced yet.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SignMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    pulSignatureLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_SignMessageNext",
        || format!("hSession={hSession:#x}, ulDataLen={ulDataLen}"),
        |rt, call| {
            // SAFETY: pData is NULL or has ulDataLen readable bytes; the signature pointers are
            // as the spec allows for this function and are only forwarded.
            let (data, sig) = unsafe {
                (
                    InBuf::new(pData, ulDataLen)?,
                    MessageSignature::new(pSignature, SignatureDirection::Produce(pulSignatureLen)),
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.only_errors();
            let param = Param::new(pParameter, ulParameterLen);
            s.backend
                .sign_message_next(MessageKind::Sign, s.handle, param, data, sig)
        },
    )
}

/// C_SignMessageBegin — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SignMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_SignMessageBegin",
        || format!("hSession={hSession:#x}"),
        |rt, call| {
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.only_errors();
            s.backend.sign_message_begin(
                MessageKind::Sign,
                s.handle,
                Param::new(pParameter, ulParameterLen),
            )
        },
    )
}

/// C_VerifyMessage — 3.0. The signature pointers pass through as given: the spec lets them be NULL
/// where no signature is produced yet.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyMessage(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    ulSignatureLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_VerifyMessage",
        || format!("hSession={hSession:#x}, ulDataLen={ulDataLen}"),
        |rt, call| {
            // SAFETY: pData is NULL or has ulDataLen readable bytes; the signature pointers are
            // as the spec allows for this function and are only forwarded.
            let (data, sig) = unsafe {
                (
                    InBuf::new(pData, ulDataLen)?,
                    MessageSignature::new(pSignature, SignatureDirection::Check(ulSignatureLen)),
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.message(OpKind::MessageVerify);
            let param = Param::new(pParameter, ulParameterLen);
            s.backend
                .sign_message(MessageKind::Verify, s.handle, param, data, sig)
        },
    )
}

/// C_VerifyMessageNext — 3.0. The signature pointers pass through as given: the spec lets them be NULL
/// where no signature is produced yet.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyMessageNext(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
    pData: CK_BYTE_PTR,
    ulDataLen: CK_ULONG,
    pSignature: CK_BYTE_PTR,
    ulSignatureLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_VerifyMessageNext",
        || format!("hSession={hSession:#x}, ulDataLen={ulDataLen}"),
        |rt, call| {
            // SAFETY: pData is NULL or has ulDataLen readable bytes; the signature pointers are
            // as the spec allows for this function and are only forwarded.
            let (data, sig) = unsafe {
                (
                    InBuf::new(pData, ulDataLen)?,
                    MessageSignature::new(pSignature, SignatureDirection::Check(ulSignatureLen)),
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.only_errors();
            let param = Param::new(pParameter, ulParameterLen);
            s.backend
                .sign_message_next(MessageKind::Verify, s.handle, param, data, sig)
        },
    )
}

/// C_VerifyMessageBegin — 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_VerifyMessageBegin(
    hSession: CK_SESSION_HANDLE,
    pParameter: CK_VOID_PTR,
    ulParameterLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_VerifyMessageBegin",
        || format!("hSession={hSession:#x}"),
        |rt, call| {
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.only_errors();
            s.backend.sign_message_begin(
                MessageKind::Verify,
                s.handle,
                Param::new(pParameter, ulParameterLen),
            )
        },
    )
}
