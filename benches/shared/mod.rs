//! What the benchmarks share: loading a module's function list, calling through it, building
//! attributes, and the statistics of a run. Included by each bench with `mod shared;`.
#![allow(dead_code)]

use std::ffi::c_void;
use std::mem::size_of;
use std::path::Path;
use std::ptr::null_mut;

use pkcs11_sys::*;

/// A return value's spec name.
pub fn rv_name(rv: CK_RV) -> &'static str {
    p11gate::names::rv_name(rv)
}

/// Panics (with the side and the function) unless `rv` is CKR_OK. Used inside timed loops: the
/// comparison costs the same on every side, the message is built only on failure.
#[inline(always)]
pub fn ck(rv: CK_RV, side: &str, what: &str) {
    if rv != CKR_OK {
        failed(rv, side, what)
    }
}

#[cold]
#[inline(never)]
pub fn failed(rv: CK_RV, side: &str, what: &str) -> ! {
    panic!("[{side}] {what} returned {} (0x{rv:X})", rv_name(rv))
}

/// `Ok` for `CKR_OK`, else an error naming the side and the call.
pub fn ck_res(rv: CK_RV, side: &str, what: &str) -> Result<(), String> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(format!(
            "[{side}] {what} returned {} (0x{rv:X})",
            rv_name(rv)
        ))
    }
}

/// RSA-OAEP with SHA-1 and MGF1-SHA1, no label: the only OAEP SoftHSMv2 2.6 does.
pub fn oaep_sha1_params() -> CK_RSA_PKCS_OAEP_PARAMS {
    CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA_1,
        mgf: CKG_MGF1_SHA1,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: null_mut(),
        ulSourceDataLen: 0,
    }
}

/// A panic's message.
pub fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// A function-list entry the bench needs, or an error naming it.
pub fn req<T>(f: Option<T>, side: &str, name: &str) -> Result<T, String> {
    f.ok_or_else(|| format!("[{side}] the function list has no {name}"))
}

/// Calls a function of a side's function list. The callers pass only pointers to live locals of
/// the right size and type (see the `attr*` helpers and each workload loop). `req` must be in
/// scope where it is used.
macro_rules! p11 {
    ($side:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        let f = req($side.fl.$f, &$side.name, stringify!($f))?;
        // SAFETY: `f` comes from the module's own CK_FUNCTION_LIST, the module stays loaded for
        // the life of the process, and every pointer argument points to a live local that is
        // valid (and large enough, as the accompanying length says) for the duration of the call.
        let rv = unsafe { f($($arg),*) };
        rv
    }};
}

/// An attribute pointing at a fixed-size value.
pub fn attr<T>(ty: CK_ATTRIBUTE_TYPE, v: &T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v as *const T as *mut c_void,
        ulValueLen: size_of::<T>() as CK_ULONG,
    }
}

/// An attribute pointing at bytes.
pub fn attr_bytes(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_: ty,
        pValue: v.as_ptr() as *mut c_void,
        ulValueLen: v.len() as CK_ULONG,
    }
}

/// Loads a module (RTLD_NOW | RTLD_LOCAL; never unloaded) and copies its CK_FUNCTION_LIST.
pub fn load(path: &Path, side: &str) -> Result<CK_FUNCTION_LIST, String> {
    use libloading::os::unix::{Library, Symbol, RTLD_LOCAL, RTLD_NOW};
    type GetFunctionList = unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV;
    // SAFETY: loading a PKCS#11 module runs its initialisers; the modules measured here are
    // ordinary shared libraries without load-time side effects beyond their own state.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
        .map_err(|e| format!("[{side}] cannot load {}: {e}", path.display()))?;
    let lib: &'static Library = Box::leak(Box::new(lib));
    // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module (spec 5.2).
    let get: Symbol<GetFunctionList> = unsafe { lib.get(b"C_GetFunctionList\0") }
        .map_err(|e| format!("[{side}] {}: no C_GetFunctionList: {e}", path.display()))?;
    let mut list: CK_FUNCTION_LIST_PTR = null_mut();
    // SAFETY: `list` is a valid out-pointer; the module stays loaded (leaked above).
    ck_res(unsafe { get(&mut list) }, side, "C_GetFunctionList")?;
    if list.is_null() {
        return Err(format!(
            "[{side}] C_GetFunctionList returned CKR_OK and a NULL list"
        ));
    }
    // SAFETY: the module returned a non-NULL pointer to its (static) 2.40 function list.
    Ok(unsafe { *list })
}

pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// The `q` quantile of `v`, interpolated (NaN for no values).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// A number from the environment, or `default`; a value that is not a number stops the bench.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A module's function list and its name in messages, for the set-up helpers below.
pub struct Module<'a> {
    pub fl: &'a CK_FUNCTION_LIST,
    pub name: &'a str,
}

/// A private, sensitive, non-extractable 32-byte token secret key with `usage` flags set.
pub fn generate_secret(
    m: &Module<'_>,
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_TYPE,
    key_type: CK_KEY_TYPE,
    label: &str,
    usage: &[CK_ATTRIBUTE_TYPE],
) -> Result<(), String> {
    let (class, len, yes, no) = (CKO_SECRET_KEY, 32 as CK_ULONG, CK_TRUE, CK_FALSE);
    let mut template = vec![
        attr(CKA_CLASS, &class),
        attr(CKA_KEY_TYPE, &key_type),
        attr(CKA_VALUE_LEN, &len),
        attr_bytes(CKA_LABEL, label.as_bytes()),
        attr(CKA_TOKEN, &yes),
        attr(CKA_PRIVATE, &yes),
        attr(CKA_SENSITIVE, &yes),
        attr(CKA_EXTRACTABLE, &no),
    ];
    template.extend(usage.iter().map(|u| attr(*u, &yes)));
    let mut mech = CK_MECHANISM {
        mechanism,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let mut key: CK_OBJECT_HANDLE = 0;
    let rv = p11!(
        m,
        C_GenerateKey(
            session,
            &mut mech,
            template.as_mut_ptr(),
            template.len() as CK_ULONG,
            &mut key
        )
    );
    ck_res(rv, m.name, "C_GenerateKey")
}

/// An RSA-2048 key pair (exponent 65537) for OAEP, labelled `label`.
pub fn generate_rsa(m: &Module<'_>, session: CK_SESSION_HANDLE, label: &str) -> Result<(), String> {
    let (yes, no, bits) = (CK_TRUE, CK_FALSE, 2048 as CK_ULONG);
    let exponent = [1u8, 0, 1];
    let mut public = [
        attr(CKA_TOKEN, &yes),
        attr(CKA_ENCRYPT, &yes),
        attr(CKA_MODULUS_BITS, &bits),
        attr_bytes(CKA_PUBLIC_EXPONENT, &exponent),
        attr_bytes(CKA_LABEL, label.as_bytes()),
    ];
    let mut private = [
        attr(CKA_TOKEN, &yes),
        attr(CKA_PRIVATE, &yes),
        attr(CKA_SENSITIVE, &yes),
        attr(CKA_EXTRACTABLE, &no),
        attr(CKA_DECRYPT, &yes),
        attr_bytes(CKA_LABEL, label.as_bytes()),
    ];
    let mut mech = CK_MECHANISM {
        mechanism: CKM_RSA_PKCS_KEY_PAIR_GEN,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let (mut pub_key, mut priv_key): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
    let rv = p11!(
        m,
        C_GenerateKeyPair(
            session,
            &mut mech,
            public.as_mut_ptr(),
            public.len() as CK_ULONG,
            private.as_mut_ptr(),
            private.len() as CK_ULONG,
            &mut pub_key,
            &mut priv_key
        )
    );
    ck_res(rv, m.name, "C_GenerateKeyPair")
}
