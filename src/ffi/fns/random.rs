//! Random number generation (PKCS#11 2.40 §5.15) and the legacy parallel-function management
//! functions (§5.16), which are forwarded as they are.

use pkcs11_sys::*;

use crate::ffi::args::{InBuf, MutBuf};
use crate::ffi::boundary::{audited, guarded};

/// C_SeedRandom — §5.15.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.15 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_SeedRandom(
    hSession: CK_SESSION_HANDLE,
    pSeed: CK_BYTE_PTR,
    ulSeedLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_SeedRandom",
        || format!("hSession={hSession:#x}, ulSeedLen={ulSeedLen}"),
        |rt, call| {
            // SAFETY: pSeed is NULL or has ulSeedLen readable bytes (§5.15).
            let seed = unsafe { InBuf::new(pSeed, ulSeedLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            call.bytes(seed.len(), 0);
            s.backend.seed_random(s.handle, seed)
        },
    )
}

/// C_GenerateRandom — §5.15.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.15 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GenerateRandom(
    hSession: CK_SESSION_HANDLE,
    RandomData: CK_BYTE_PTR,
    ulRandomLen: CK_ULONG,
) -> CK_RV {
    audited(
        "C_GenerateRandom",
        || format!("hSession={hSession:#x}, ulRandomLen={ulRandomLen}"),
        |rt, call| {
            // SAFETY: RandomData is NULL or has ulRandomLen writable bytes (§5.15).
            let buf = unsafe { MutBuf::new(RandomData, ulRandomLen) }?;
            let s = rt.router.session(hSession)?;
            call.session(&s, hSession);
            let len = buf.len();
            // Bytes out only when there are some: a failed call produced none.
            let result = s.backend.generate_random(s.handle, buf);
            call.bytes(0, if result.is_ok() { len } else { 0 });
            result
        },
    )
}

/// C_GetFunctionStatus — §5.16 (legacy).
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.16 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionStatus(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guarded(
        "C_GetFunctionStatus",
        || format!("hSession={hSession:#x}"),
        |rt| {
            let s = rt.router.session(hSession)?;
            s.backend.function_status(s.handle)
        },
    )
}

/// C_CancelFunction — §5.16 (legacy).
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.16 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_CancelFunction(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guarded(
        "C_CancelFunction",
        || format!("hSession={hSession:#x}"),
        |rt| {
            let s = rt.router.session(hSession)?;
            s.backend.cancel_function(s.handle)
        },
    )
}
