//! General-purpose functions (PKCS#11 2.40 §5.4) and the 3.0 interface functions (3.0 §5.4).

use std::ffi::CStr;

use pkcs11_sys::*;

use crate::backend::{InitArgs, MutexCallbacks};
use crate::error::{Error, Result};
use crate::ffi::args::{out, OutBuf};
use crate::ffi::boundary::{guarded, guarded_uninit, install_fork_handler};
use crate::ffi::tables::{self, Interface, FUNCTION_LIST};
use crate::runtime;

/// What p11gate reports as its manufacturer in `C_GetInfo`.
pub const MANUFACTURER: &str = "p11gate";
/// What p11gate reports as its library description in `C_GetInfo`.
pub const DESCRIPTION: &str = "p11gate PKCS#11 gateway";

/// C_Initialize — 2.40 §5.4.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.4 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_Initialize(pInitArgs: CK_VOID_PTR) -> CK_RV {
    install_fork_handler();
    crate::logging::ensure_installed();
    guarded_uninit(
        "C_Initialize",
        || format!("pInitArgs={pInitArgs:?}"),
        || {
            // SAFETY: pInitArgs is NULL or points to a CK_C_INITIALIZE_ARGS (2.40 §5.4).
            let args = unsafe { (pInitArgs as *const CK_C_INITIALIZE_ARGS).as_ref() };
            runtime::initialize(init_args(args)?)
        },
    )
}

/// Checks CK_C_INITIALIZE_ARGS as the spec requires and decides how backends are initialised.
///
/// p11gate's own synchronisation is atomics and short internal locks, correct whatever the
/// application's threads are; the application's mutex callbacks, when given, go to the
/// backend. Without them, the backend is asked for OS locking, since p11gate may call it from
/// several threads even for an application that promised not to.
fn init_args(args: Option<&CK_C_INITIALIZE_ARGS>) -> Result<InitArgs> {
    let Some(a) = args else {
        return Ok(InitArgs {
            flags: CKF_OS_LOCKING_OK,
            mutexes: None,
        });
    };
    if !a.pReserved.is_null() {
        return Err(Error::ArgumentsBad);
    }
    let given = [
        a.CreateMutex.is_some(),
        a.DestroyMutex.is_some(),
        a.LockMutex.is_some(),
        a.UnlockMutex.is_some(),
    ];
    let mutexes = match given.iter().filter(|g| **g).count() {
        0 => None,
        4 => Some(MutexCallbacks {
            create: a.CreateMutex,
            destroy: a.DestroyMutex,
            lock: a.LockMutex,
            unlock: a.UnlockMutex,
        }),
        _ => return Err(Error::ArgumentsBad),
    };
    let known = CKF_OS_LOCKING_OK | CKF_LIBRARY_CANT_CREATE_OS_THREADS;
    Ok(match mutexes {
        Some(_) => InitArgs {
            flags: a.flags & known,
            mutexes,
        },
        None => InitArgs {
            flags: CKF_OS_LOCKING_OK | (a.flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS),
            mutexes,
        },
    })
}

/// C_Finalize — 2.40 §5.4.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.4 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_Finalize(pReserved: CK_VOID_PTR) -> CK_RV {
    guarded(
        "C_Finalize",
        || format!("pReserved={pReserved:?}"),
        |_| {
            if !pReserved.is_null() {
                return Err(Error::ArgumentsBad);
            }
            runtime::finalize()
        },
    )
}

/// C_GetInfo — 2.40 §5.4: names p11gate, Cryptoki 2.40.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.4 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetInfo(pInfo: CK_INFO_PTR) -> CK_RV {
    guarded("C_GetInfo", String::new, |_| {
        // SAFETY: pInfo is NULL or points to a writable CK_INFO (2.40 §5.4).
        fill_info(
            unsafe { out(pInfo) }?,
            CK_VERSION {
                major: 2,
                minor: 40,
            },
        );
        Ok(())
    })
}

/// C_GetInfo as the 3.0 function list has it: the same, reporting Cryptoki 3.0.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 specifies for this function.
pub unsafe extern "C" fn get_info_3_0(pInfo: CK_INFO_PTR) -> CK_RV {
    guarded("C_GetInfo", String::new, |_| {
        // SAFETY: pInfo is NULL or points to a writable CK_INFO (3.0 §5.4).
        fill_info(unsafe { out(pInfo) }?, CK_VERSION { major: 3, minor: 0 });
        Ok(())
    })
}

fn fill_info(info: &mut CK_INFO, cryptoki: CK_VERSION) {
    info.cryptokiVersion = cryptoki;
    info.manufacturerID = blank_padded(MANUFACTURER);
    info.flags = 0;
    info.libraryDescription = blank_padded(DESCRIPTION);
    info.libraryVersion = library_version();
}

/// p11gate's version as a CK_VERSION (major.minor of the crate version).
pub fn library_version() -> CK_VERSION {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse::<u8>().unwrap_or(0));
    CK_VERSION {
        major: parts.next().unwrap_or(0),
        minor: parts.next().unwrap_or(0),
    }
}

fn blank_padded<const N: usize>(s: &str) -> [CK_UTF8CHAR; N] {
    let mut out = [b' '; N];
    let n = s.len().min(N);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// C_GetFunctionList — 2.40 §5.4: p11gate's own static 2.40 list; works before C_Initialize.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 2.40 §5.4 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(ppFunctionList: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    install_fork_handler();
    guarded_uninit("C_GetFunctionList", String::new, || {
        // SAFETY: ppFunctionList is NULL or points to a writable pointer (2.40 §5.4).
        *unsafe { out(ppFunctionList) }? =
            &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
        Ok(())
    })
}

/// C_GetInterfaceList — 3.0 §5.4: 2.40 always, 3.0 first when the upstream offers it.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 §5.4 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(
    pInterfacesList: CK_INTERFACE_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    install_fork_handler();
    guarded_uninit("C_GetInterfaceList", String::new, || {
        // SAFETY: pulCount is NULL or writable; pInterfacesList is NULL (length query) or has
        // room for *pulCount interfaces (3.0 §5.4).
        let mut list = unsafe { OutBuf::new(pInterfacesList, pulCount) }?;
        let offered: Vec<CK_INTERFACE> = tables::interfaces(runtime::offers_3_0())
            .iter()
            .map(|i| i.0)
            .collect();
        list.put(&offered)
    })
}

/// C_GetInterface — 3.0 §5.4: by name (NULL: the default), version (NULL: any) and flags.
///
/// # Safety
/// Pointer arguments must be valid as PKCS#11 3.0 §5.4 specifies for this function.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    pInterfaceName: CK_UTF8CHAR_PTR,
    pVersion: CK_VERSION_PTR,
    ppInterface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    install_fork_handler();
    guarded_uninit(
        "C_GetInterface",
        || format!("flags={flags:#x}"),
        || {
            // SAFETY: ppInterface is NULL or points to a writable pointer (3.0 §5.4).
            let target = unsafe { out(ppInterface) }?;
            // SAFETY: pInterfaceName is NULL or a NUL-terminated string (3.0 §5.4).
            let name = (!pInterfaceName.is_null())
                .then(|| unsafe { CStr::from_ptr(pInterfaceName as *const _) });
            // SAFETY: pVersion is NULL or points to a CK_VERSION (3.0 §5.4).
            let version = unsafe { pVersion.as_ref() };
            let chosen = tables::interfaces(runtime::offers_3_0())
                .iter()
                .find(|i| interface_matches(i, name, version, flags))
                .ok_or(Error::ArgumentsBad)?;
            *target = &chosen.0 as *const CK_INTERFACE as *mut CK_INTERFACE;
            Ok(())
        },
    )
}

fn interface_matches(
    i: &Interface,
    name: Option<&CStr>,
    version: Option<&CK_VERSION>,
    flags: CK_FLAGS,
) -> bool {
    let ours = tables::INTERFACE_NAME;
    let name_ok = name.is_none_or(|n| n.to_bytes_with_nul() == ours);
    // SAFETY: our interfaces point at our static function lists, whose first field is the version.
    let v = unsafe { *(i.0.pFunctionList as *const CK_VERSION) };
    let version_ok = version.is_none_or(|w| w.major == v.major && w.minor == v.minor);
    name_ok && version_ok && i.0.flags & flags == flags
}
