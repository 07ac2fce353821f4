//! Key management (PKCS#11 2.40 §5.14). Key values never pass through p11gate's logs: wrapped
//! keys are forwarded as buffers, trace lines carry handles and lengths.

use pkcs11_sys::*;

use crate::error::Error;

use crate::ffi::args::{out, InBuf, Mechanism, OutBuf, Template};
use crate::ffi::boundary::{audited, mechanism_arg};
use crate::policy::NewObject;

/// C_GenerateKey — §5.14.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.14 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GenerateKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    audited(
        "C_GenerateKey",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, ulCount={ulCount}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism NULL or a CK_MECHANISM; pTemplate NULL or ulCount attributes;
            // phKey NULL or writable (§5.14).
            let (m, t, key) = unsafe {
                (
                    Mechanism::new(pMechanism)?,
                    Template::input(pTemplate, ulCount)?,
                    out(phKey)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.mechanism(m.mechanism_type());
            call.attrs(&t);
            let info = call.describe_as(&t, CKO_SECRET_KEY);
            s.entry
                .policy
                .check_mechanism("C_GenerateKey", s.slot, m.mechanism_type())?;
            s.entry.policy.check_writable("C_GenerateKey", s.slot)?;
            let mut storage = Vec::new();
            let t = s.entry.policy.protected_template(
                "C_GenerateKey",
                s.slot,
                NewObject::SecretKey,
                t,
                &mut storage,
            )?;
            s.backend.generate_key(s.handle, m, t, &mut *key)?;
            rt.router.record_objects(&s, &[*key]);
            call.made(*key, info);
            Ok(())
        },
    )
}

/// C_GenerateKeyPair — §5.14.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.14 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GenerateKeyPair(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    pPublicKeyTemplate: CK_ATTRIBUTE_PTR,
    ulPublicKeyAttributeCount: CK_ULONG,
    pPrivateKeyTemplate: CK_ATTRIBUTE_PTR,
    ulPrivateKeyAttributeCount: CK_ULONG,
    phPublicKey: CK_OBJECT_HANDLE_PTR,
    phPrivateKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    audited(
        "C_GenerateKeyPair",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!("hSession={hSession:#x}, pMechanism={}", mechanism)
        },
        |rt, call| {
            // SAFETY: pMechanism NULL or a CK_MECHANISM; each template NULL or its count of
            // attributes; the handle pointers NULL or writable (§5.14).
            let (m, public, private, public_key, private_key) = unsafe {
                (
                    Mechanism::new(pMechanism)?,
                    Template::input(pPublicKeyTemplate, ulPublicKeyAttributeCount)?,
                    Template::input(pPrivateKeyTemplate, ulPrivateKeyAttributeCount)?,
                    out(phPublicKey)?,
                    out(phPrivateKey)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.mechanism(m.mechanism_type());
            call.attrs(&private);
            let private_info = call.describe_as(&private, CKO_PRIVATE_KEY);
            let public_info = call.describe_as(&public, CKO_PUBLIC_KEY);
            s.entry
                .policy
                .check_mechanism("C_GenerateKeyPair", s.slot, m.mechanism_type())?;
            s.entry.policy.check_writable("C_GenerateKeyPair", s.slot)?;
            let mut storage = Vec::new();
            let private = s.entry.policy.protected_template(
                "C_GenerateKeyPair",
                s.slot,
                NewObject::PrivateKey,
                private,
                &mut storage,
            )?;
            s.backend.generate_key_pair(
                s.handle,
                m,
                public,
                private,
                &mut *public_key,
                &mut *private_key,
            )?;
            rt.router.record_objects(&s, &[*public_key, *private_key]);
            call.made(*private_key, private_info);
            call.made_public(*public_key, public_info);
            Ok(())
        },
    )
}

/// C_WrapKey — §5.14.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.14 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_WrapKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hWrappingKey: CK_OBJECT_HANDLE,
    hKey: CK_OBJECT_HANDLE,
    pWrappedKey: CK_BYTE_PTR,
    pulWrappedKeyLen: CK_ULONG_PTR,
) -> CK_RV {
    audited(
        "C_WrapKey",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hWrappingKey={hWrappingKey:#x}, hKey={hKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism NULL or a CK_MECHANISM; the length NULL or writable, the buffer
            // NULL (length query) or room for its length (§5.14).
            let (m, wrapped) = unsafe {
                (
                    Mechanism::new(pMechanism)?,
                    OutBuf::new(pWrappedKey, pulWrappedKeyLen)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.mechanism(m.mechanism_type());
            call.key(hWrappingKey);
            call.object(hKey);
            if wrapped.is_length_query() {
                call.only_errors();
            }
            s.entry
                .policy
                .check_mechanism("C_WrapKey", s.slot, m.mechanism_type())?;
            rt.router
                .check_object(&s, hWrappingKey, Error::WrappingKeyHandleInvalid)?;
            rt.router.check_object(&s, hKey, Error::KeyHandleInvalid)?;
            s.backend.wrap_key(s.handle, m, hWrappingKey, hKey, wrapped)
        },
    )
}

/// C_UnwrapKey — §5.14.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.14 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_UnwrapKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hUnwrappingKey: CK_OBJECT_HANDLE,
    pWrappedKey: CK_BYTE_PTR,
    ulWrappedKeyLen: CK_ULONG,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulAttributeCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    audited(
        "C_UnwrapKey",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hUnwrappingKey={hUnwrappingKey:#x}, ulWrappedKeyLen={ulWrappedKeyLen}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism NULL or a CK_MECHANISM; the wrapped key NULL or its length in
            // bytes; pTemplate NULL or ulAttributeCount attributes; phKey NULL or writable (§5.14).
            let (m, wrapped, t, key) = unsafe {
                (
                    Mechanism::new(pMechanism)?,
                    InBuf::new(pWrappedKey, ulWrappedKeyLen)?,
                    Template::input(pTemplate, ulAttributeCount)?,
                    out(phKey)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.mechanism(m.mechanism_type());
            call.key(hUnwrappingKey);
            call.attrs(&t);
            let info = call.describe(&t);
            s.entry
                .policy
                .check_mechanism("C_UnwrapKey", s.slot, m.mechanism_type())?;
            s.entry.policy.check_writable("C_UnwrapKey", s.slot)?;
            let mut storage = Vec::new();
            let t = s.entry.policy.protected_template(
                "C_UnwrapKey",
                s.slot,
                NewObject::FromTemplate,
                t,
                &mut storage,
            )?;
            rt.router
                .check_object(&s, hUnwrappingKey, Error::UnwrappingKeyHandleInvalid)?;
            s.backend
                .unwrap_key(s.handle, m, hUnwrappingKey, wrapped, t, &mut *key)?;
            rt.router.record_objects(&s, &[*key]);
            call.made(*key, info);
            Ok(())
        },
    )
}

/// C_DeriveKey — §5.14.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.14 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DeriveKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hBaseKey: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulAttributeCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    audited(
        "C_DeriveKey",
        || {
            // SAFETY: pMechanism is NULL or valid for the duration of this call.
            let mechanism = unsafe { mechanism_arg(pMechanism) };
            format!(
                "hSession={hSession:#x}, pMechanism={}, hBaseKey={hBaseKey:#x}",
                mechanism
            )
        },
        |rt, call| {
            // SAFETY: pMechanism NULL or a CK_MECHANISM; pTemplate NULL or ulAttributeCount
            // attributes; phKey NULL or writable (§5.14).
            let (m, t, key) = unsafe {
                (
                    Mechanism::new(pMechanism)?,
                    Template::input(pTemplate, ulAttributeCount)?,
                    out(phKey)?,
                )
            };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.mechanism(m.mechanism_type());
            call.key(hBaseKey);
            call.attrs(&t);
            let info = call.describe_as(&t, CKO_SECRET_KEY);
            s.entry
                .policy
                .check_mechanism("C_DeriveKey", s.slot, m.mechanism_type())?;
            s.entry.policy.check_writable("C_DeriveKey", s.slot)?;
            let mut storage = Vec::new();
            let t = s.entry.policy.protected_template(
                "C_DeriveKey",
                s.slot,
                NewObject::SecretKey,
                t,
                &mut storage,
            )?;
            rt.router
                .check_object(&s, hBaseKey, Error::KeyHandleInvalid)?;
            s.backend.derive_key(s.handle, m, hBaseKey, t, &mut *key)?;
            rt.router.record_objects(&s, &[*key]);
            call.made(*key, info);
            Ok(())
        },
    )
}
