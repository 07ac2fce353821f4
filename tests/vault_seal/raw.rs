//! A second, raw view of the same loaded module (libloading + pkcs11-sys), for the calls whose
//! exact shape matters to Vault's Go binding: the NULL-buffer length query followed by the real
//! call, and what a failure does to the operation. Handles come from the cryptoki client: both
//! views resolve to the one copy of the module in this process.

use std::path::Path;
use std::ptr;

use pkcs11_sys::*;

/// The module's 2.40 function list, reached through `C_GetFunctionList` (as Vault reaches it).
pub struct Raw {
    list: CK_FUNCTION_LIST,
    _lib: libloading::Library,
}

/// Calls one entry of the function list, panicking if the module left it NULL.
macro_rules! call {
    ($raw:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        let f = $raw.list.$name.expect(concat!(stringify!($name), " is NULL in the function list"));
        // SAFETY: every argument is a live local or a pointer into a buffer that outlives the call,
        // with the length PKCS#11 expects; the module stays loaded while `$raw` lives.
        unsafe { f($($arg),*) }
    }};
}

impl Raw {
    pub fn open(module: &Path) -> Raw {
        // SAFETY: loading a PKCS#11 module runs no initialisers with preconditions we must uphold;
        // the same module is already loaded by the cryptoki client, so this only takes a reference.
        let lib = unsafe { libloading::Library::new(module) }.expect("dlopen module");
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
        let get: libloading::Symbol<unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV> =
            unsafe { lib.get(b"C_GetFunctionList\0") }.expect("C_GetFunctionList symbol");
        let mut list: CK_FUNCTION_LIST_PTR = ptr::null_mut();
        // SAFETY: `list` is a valid out-pointer.
        let rv = unsafe { get(&mut list) };
        assert_eq!(rv, CKR_OK, "C_GetFunctionList");
        assert!(!list.is_null(), "C_GetFunctionList returned NULL");
        // SAFETY: on CKR_OK the module hands out a pointer to its function list, valid while loaded.
        let list = unsafe { *list };
        assert_eq!(
            list.version.major, 2,
            "C_GetFunctionList must give the 2.x list"
        );
        Raw { list, _lib: lib }
    }

    pub fn encrypt_init_gcm(
        &self,
        s: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        iv: &mut [u8],
    ) -> CK_RV {
        let mut params = gcm_params(iv);
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: &mut params as *mut CK_GCM_PARAMS as *mut _,
            ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        call!(self, C_EncryptInit(s, &mut mech, key))
    }

    pub fn decrypt_init_gcm(
        &self,
        s: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
        iv: &mut [u8],
    ) -> CK_RV {
        let mut params = gcm_params(iv);
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: &mut params as *mut CK_GCM_PARAMS as *mut _,
            ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        call!(self, C_DecryptInit(s, &mut mech, key))
    }

    pub fn sign_init_hmac(&self, s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
        let mut mech = CK_MECHANISM {
            mechanism: CKM_SHA256_HMAC,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        call!(self, C_SignInit(s, &mut mech, key))
    }

    /// `C_Encrypt`; `out = None` is the NULL-buffer length query. Returns (rv, *pulEncryptedDataLen).
    pub fn encrypt(
        &self,
        s: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> (CK_RV, CK_ULONG) {
        let (p, mut len) = out_buf(out);
        let rv = call!(
            self,
            C_Encrypt(
                s,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                p,
                &mut len
            )
        );
        (rv, len)
    }

    /// `C_Decrypt`; `out = None` is the NULL-buffer length query.
    pub fn decrypt(
        &self,
        s: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> (CK_RV, CK_ULONG) {
        let (p, mut len) = out_buf(out);
        let rv = call!(
            self,
            C_Decrypt(
                s,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                p,
                &mut len
            )
        );
        (rv, len)
    }

    /// `C_Sign`; `out = None` is the NULL-buffer length query.
    pub fn sign(
        &self,
        s: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> (CK_RV, CK_ULONG) {
        let (p, mut len) = out_buf(out);
        let rv = call!(
            self,
            C_Sign(
                s,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                p,
                &mut len
            )
        );
        (rv, len)
    }

    /// `C_GetAttributeValue` for one attribute; `out = None` is the NULL-buffer length query.
    pub fn get_attribute(
        &self,
        s: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        ty: CK_ATTRIBUTE_TYPE,
        out: Option<&mut [u8]>,
    ) -> (CK_RV, CK_ULONG) {
        let (p, len) = out_buf(out);
        let mut attr = CK_ATTRIBUTE {
            type_: ty,
            pValue: p as *mut _,
            ulValueLen: len,
        };
        let rv = call!(self, C_GetAttributeValue(s, obj, &mut attr, 1));
        (rv, attr.ulValueLen)
    }
}

fn gcm_params(iv: &mut [u8]) -> CK_GCM_PARAMS {
    CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: iv.len() as CK_ULONG,
        ulIvBits: (iv.len() * 8) as CK_ULONG,
        pAAD: ptr::null_mut(),
        ulAADLen: 0,
        ulTagBits: 128,
    }
}

fn out_buf(out: Option<&mut [u8]>) -> (*mut u8, CK_ULONG) {
    match out {
        Some(b) => (b.as_mut_ptr(), b.len() as CK_ULONG),
        None => (ptr::null_mut(), 0),
    }
}
