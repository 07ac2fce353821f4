//! Object management (PKCS#11 2.40 §5.7).

use pkcs11_sys::*;

use crate::error::Error;

use crate::ffi::args::{out, out_slice, Template};
use crate::ffi::boundary::{audited, guarded};
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
    audited(
        "C_CreateObject",
        || format!("hSession={hSession:#x}, ulCount={ulCount}"),
        |rt, call| {
            // SAFETY: pTemplate is NULL or has ulCount attributes; phObject NULL or writable (§5.7).
            let (t, obj) = unsafe { (Template::input(pTemplate, ulCount)?, out(phObject)?) };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.attrs(&t);
            let info = call.describe(&t);
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
            call.made(*obj, info);
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
    audited(
        "C_CopyObject",
        || format!("hSession={hSession:#x}, hObject={hObject:#x}, ulCount={ulCount}"),
        |rt, call| {
            // SAFETY: pTemplate is NULL or has ulCount attributes; phNewObject NULL or writable (§5.7).
            let (t, obj) = unsafe { (Template::input(pTemplate, ulCount)?, out(phNewObject)?) };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.key(hObject);
            call.attrs(&t);
            let info = call.describe(&t);
            s.entry.policy.check_writable("C_CopyObject", s.slot)?;
            rt.router
                .check_object(&s, hObject, Error::ObjectHandleInvalid)?;
            let mut storage = Vec::new();
            let t = rt
                .router
                .protected_copy("C_CopyObject", &s, hObject, t, &mut storage)?;
            s.backend.copy_object(s.handle, hObject, t, &mut *obj)?;
            rt.router.record_objects(&s, &[*obj]);
            call.made(*obj, info);
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
    audited(
        "C_DestroyObject",
        || format!("hSession={hSession:#x}, hObject={hObject:#x}"),
        |rt, call| {
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.destroying(hObject);
            s.entry.policy.check_writable("C_DestroyObject", s.slot)?;
            rt.router
                .check_object(&s, hObject, Error::ObjectHandleInvalid)?;
            s.backend.destroy_object(s.handle, hObject)?;
            rt.router.forget_object(&s, hObject);
            call.destroyed();
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
    audited(
        "C_GetAttributeValue",
        || format!("hSession={hSession:#x}, hObject={hObject:#x}, ulCount={ulCount}"),
        |rt, call| {
            // SAFETY: pTemplate is NULL or has ulCount attributes (§5.7).
            let t = unsafe { Template::new(pTemplate, ulCount) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.object(hObject);
            call.attrs(&t);
            if t.attributes().iter().all(|a| a.pValue.is_null()) {
                call.only_errors();
            }
            rt.router
                .check_object(&s, hObject, Error::ObjectHandleInvalid)?;
            let result = s.backend.get_attribute_value(s.handle, hObject, t);
            if matches!(
                result,
                Ok(())
                    | Err(Error::Backend(
                        CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID
                    ))
            ) {
                // SAFETY: the same caller template as above, now holding what the backend wrote
                // (lengths of CK_UNAVAILABLE_INFORMATION are skipped by Template::value).
                let filled = unsafe { Template::new(pTemplate, ulCount) }?;
                call.learn(hObject, &filled);
            }
            result
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
    audited(
        "C_SetAttributeValue",
        || format!("hSession={hSession:#x}, hObject={hObject:#x}, ulCount={ulCount}"),
        |rt, call| {
            // SAFETY: pTemplate is NULL or has ulCount attributes (§5.7).
            let t = unsafe { Template::input(pTemplate, ulCount) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.object(hObject);
            call.attrs(&t);
            let info = call.describe(&t);
            s.entry
                .policy
                .check_writable("C_SetAttributeValue", s.slot)?;
            rt.router
                .check_object(&s, hObject, Error::ObjectHandleInvalid)?;
            rt.router
                .check_attribute_change("C_SetAttributeValue", &s, hObject, &t)?;
            s.backend.set_attribute_value(s.handle, hObject, t)?;
            call.made(hObject, info);
            Ok(())
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
    audited(
        "C_FindObjectsInit",
        || format!("hSession={hSession:#x}, ulCount={ulCount}"),
        |rt, call| {
            // SAFETY: pTemplate is NULL or has ulCount attributes (§5.7).
            let t = unsafe { Template::input(pTemplate, ulCount) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.attrs(&t);
            call.find_started(&t);
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
    audited(
        "C_FindObjects",
        || format!("hSession={hSession:#x}, ulMaxObjectCount={ulMaxObjectCount}"),
        |rt, call| {
            // SAFETY: phObject is NULL or has room for ulMaxObjectCount handles; pulObjectCount
            // is NULL or writable (§5.7).
            let (found, count) =
                unsafe { (out_slice(phObject, ulMaxObjectCount)?, out(pulObjectCount)?) };
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.only_errors();
            s.backend.find_objects(s.handle, &mut *found, &mut *count)?;
            let handles = &found[..(*count as usize).min(found.len())];
            rt.router.record_objects(&s, handles);
            call.found(handles);
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
    audited(
        "C_FindObjectsFinal",
        || format!("hSession={hSession:#x}"),
        |rt, call| {
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.only_errors();
            call.find_ended();
            s.backend.find_objects_final(s.handle)
        },
    )
}
