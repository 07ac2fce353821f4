//! Object management (PKCS#11 2.40 §5.7).

use pkcs11_sys::*;

use crate::error::Error;

use crate::ffi::args::{out, out_slice, Template};
use crate::ffi::boundary::guarded;
use crate::policy::NewObject;

/// C_CreateObject — §5.7.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.7 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_CreateObject(
    hSession: CK_SESSION_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phObject: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guarded(
        "C_CreateObject",
        || format!("hSession={hSession:#x}, ulCount={ulCount}"),
        |rt| {
            // SAFETY: pTemplate is NULL or has ulCount attributes; phObject NULL or writable (§5.7).
            let (t, obj) = unsafe { (Template::new(pTemplate, ulCount)?, out(phObject)?) };
            let s = rt.router.session(hSession)?;
            s.entry.policy.check_writable("C_CreateObject", s.slot)?;
            let mut storage = Vec::new();
            let t = s.entry.policy.protected_template(
                "C_CreateObject",
                s.slot,
                NewObject::FromTemplate,
                t,
                &mut storage,
            )?;
            s.backend.create_object(s.handle, t, &mut *obj)?;
            rt.router.record_objects(&s, &[*obj]);
            Ok(())
        },
    )
}

/// C_CopyObject — §5.7.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.7 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_CopyObject(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phNewObject: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    guarded(
        "C_CopyObject",
        || format!("hSession={hSession:#x}, hObject={hObject:#x}, ulCount={ulCount}"),
        |rt| {
            // SAFETY: pTemplate is NULL or has ulCount attributes; phNewObject NULL or writable (§5.7).
            let (t, obj) = unsafe { (Template::new(pTemplate, ulCount)?, out(phNewObject)?) };
            let s = rt.router.session(hSession)?;
            s.entry.policy.check_writable("C_CopyObject", s.slot)?;
            rt.router
                .check_object(&s, hObject, Error::ObjectHandleInvalid)?;
            let mut storage = Vec::new();
            let t = rt
                .router
                .protected_copy("C_CopyObject", &s, hObject, t, &mut storage)?;
            s.backend.copy_object(s.handle, hObject, t, &mut *obj)?;
            rt.router.record_objects(&s, &[*obj]);
            Ok(())
        },
    )
}

/// C_DestroyObject — §5.7.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.7 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_DestroyObject(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
) -> CK_RV {
    guarded(
        "C_DestroyObject",
        || format!("hSession={hSession:#x}, hObject={hObject:#x}"),
        |rt| {
            let s = rt.router.session(hSession)?;
            s.entry.policy.check_writable("C_DestroyObject", s.slot)?;
            rt.router
                .check_object(&s, hObject, Error::ObjectHandleInvalid)?;
            s.backend.destroy_object(s.handle, hObject)?;
            rt.router.forget_object(&s, hObject);
            Ok(())
        },
    )
}

/// C_GetObjectSize — §5.7.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.7 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetObjectSize(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pulSize: CK_ULONG_PTR,
) -> CK_RV {
    guarded(
        "C_GetObjectSize",
        || format!("hSession={hSession:#x}, hObject={hObject:#x}"),
        |rt| {
            // SAFETY: pulSize is NULL or writable (§5.7).
            let size = unsafe { out(pulSize) }?;
            let s = rt.router.session(hSession)?;
            rt.router
                .check_object(&s, hObject, Error::ObjectHandleInvalid)?;
            s.backend.object_size(s.handle, hObject, size)
        },
    )
}

/// C_GetAttributeValue — §5.7. Values are the caller's buffers; the backend fills them with
/// the length-query convention per attribute.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.7 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guarded(
        "C_GetAttributeValue",
        || format!("hSession={hSession:#x}, hObject={hObject:#x}, ulCount={ulCount}"),
        |rt| {
            // SAFETY: pTemplate is NULL or has ulCount attributes (§5.7).
            let t = unsafe { Template::new(pTemplate, ulCount) }?;
            let s = rt.router.session(hSession)?;
            rt.router
                .check_object(&s, hObject, Error::ObjectHandleInvalid)?;
            s.backend.get_attribute_value(s.handle, hObject, t)
        },
    )
}

/// C_SetAttributeValue — §5.7.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.7 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guarded(
        "C_SetAttributeValue",
        || format!("hSession={hSession:#x}, hObject={hObject:#x}, ulCount={ulCount}"),
        |rt| {
            // SAFETY: pTemplate is NULL or has ulCount attributes (§5.7).
            let t = unsafe { Template::new(pTemplate, ulCount) }?;
            let s = rt.router.session(hSession)?;
            s.entry
                .policy
                .check_writable("C_SetAttributeValue", s.slot)?;
            rt.router
                .check_object(&s, hObject, Error::ObjectHandleInvalid)?;
            rt.router
                .check_attribute_change("C_SetAttributeValue", &s, hObject, &t)?;
            s.backend.set_attribute_value(s.handle, hObject, t)
        },
    )
}

/// C_FindObjectsInit — §5.7.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.7 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsInit(
    hSession: CK_SESSION_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    guarded(
        "C_FindObjectsInit",
        || format!("hSession={hSession:#x}, ulCount={ulCount}"),
        |rt| {
            // SAFETY: pTemplate is NULL or has ulCount attributes (§5.7).
            let t = unsafe { Template::new(pTemplate, ulCount) }?;
            let s = rt.router.session(hSession)?;
            s.backend.find_objects_init(s.handle, t)
        },
    )
}

/// C_FindObjects — §5.7.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.7 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_FindObjects(
    hSession: CK_SESSION_HANDLE,
    phObject: CK_OBJECT_HANDLE_PTR,
    ulMaxObjectCount: CK_ULONG,
    pulObjectCount: CK_ULONG_PTR,
) -> CK_RV {
    guarded(
        "C_FindObjects",
        || format!("hSession={hSession:#x}, ulMaxObjectCount={ulMaxObjectCount}"),
        |rt| {
            // SAFETY: phObject is NULL or has room for ulMaxObjectCount handles; pulObjectCount
            // is NULL or writable (§5.7).
            let (found, count) =
                unsafe { (out_slice(phObject, ulMaxObjectCount)?, out(pulObjectCount)?) };
            let s = rt.router.session(hSession)?;
            s.backend.find_objects(s.handle, &mut *found, &mut *count)?;
            rt.router
                .record_objects(&s, &found[..(*count as usize).min(found.len())]);
            Ok(())
        },
    )
}

/// C_FindObjectsFinal — §5.7.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.7 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsFinal(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guarded(
        "C_FindObjectsFinal",
        || format!("hSession={hSession:#x}"),
        |rt| {
            let s = rt.router.session(hSession)?;
            s.backend.find_objects_final(s.handle)
        },
    )
}
