//! A minimal raw PKCS#11 client for the slot-mapping tests: it loads a module with `dlopen`,
//! takes its 2.40 function list (as Vault's Go binding does) and exposes each call with the
//! module's own `CK_RV`, so that tests can compare return codes exactly and hand the module
//! session handles it never issued.
//!
//! Only the child processes of `tests/slot_mapping.rs` use it: each child loads one module once.
#![allow(dead_code)]

use std::path::Path;
use std::ptr;

use pkcs11_sys::*;

/// A `CK_RV` that is not `CKR_OK`, or the value a call produced.
pub type Res<T> = Result<T, CK_RV>;

/// Names of the return codes these tests meet, for readable assertion messages.
pub fn rv_name(rv: CK_RV) -> String {
    let name = match rv {
        CKR_OK => "CKR_OK",
        CKR_GENERAL_ERROR => "CKR_GENERAL_ERROR",
        CKR_SLOT_ID_INVALID => "CKR_SLOT_ID_INVALID",
        CKR_ARGUMENTS_BAD => "CKR_ARGUMENTS_BAD",
        CKR_ATTRIBUTE_READ_ONLY => "CKR_ATTRIBUTE_READ_ONLY",
        CKR_ATTRIBUTE_VALUE_INVALID => "CKR_ATTRIBUTE_VALUE_INVALID",
        CKR_FUNCTION_NOT_SUPPORTED => "CKR_FUNCTION_NOT_SUPPORTED",
        CKR_KEY_TYPE_INCONSISTENT => "CKR_KEY_TYPE_INCONSISTENT",
        CKR_KEY_FUNCTION_NOT_PERMITTED => "CKR_KEY_FUNCTION_NOT_PERMITTED",
        CKR_MECHANISM_INVALID => "CKR_MECHANISM_INVALID",
        CKR_MECHANISM_PARAM_INVALID => "CKR_MECHANISM_PARAM_INVALID",
        CKR_OBJECT_HANDLE_INVALID => "CKR_OBJECT_HANDLE_INVALID",
        CKR_OPERATION_NOT_INITIALIZED => "CKR_OPERATION_NOT_INITIALIZED",
        CKR_PIN_INCORRECT => "CKR_PIN_INCORRECT",
        CKR_PIN_LOCKED => "CKR_PIN_LOCKED",
        CKR_SESSION_HANDLE_INVALID => "CKR_SESSION_HANDLE_INVALID",
        CKR_SESSION_READ_ONLY => "CKR_SESSION_READ_ONLY",
        CKR_TEMPLATE_INCOMPLETE => "CKR_TEMPLATE_INCOMPLETE",
        CKR_TEMPLATE_INCONSISTENT => "CKR_TEMPLATE_INCONSISTENT",
        CKR_TOKEN_NOT_PRESENT => "CKR_TOKEN_NOT_PRESENT",
        CKR_TOKEN_WRITE_PROTECTED => "CKR_TOKEN_WRITE_PROTECTED",
        CKR_USER_ALREADY_LOGGED_IN => "CKR_USER_ALREADY_LOGGED_IN",
        CKR_USER_NOT_LOGGED_IN => "CKR_USER_NOT_LOGGED_IN",
        CKR_CRYPTOKI_NOT_INITIALIZED => "CKR_CRYPTOKI_NOT_INITIALIZED",
        CKR_CRYPTOKI_ALREADY_INITIALIZED => "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        _ => return format!("0x{rv:x}"),
    };
    format!("{name} (0x{rv:x})")
}

/// Asserts that `got` is the return code `want`, naming both.
#[track_caller]
pub fn assert_rv(what: &str, got: CK_RV, want: CK_RV) {
    assert!(
        got == want,
        "{what}: got {}, want {}",
        rv_name(got),
        rv_name(want)
    );
}

/// Asserts that a call returned `want` (as an error).
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(what: &str, got: Res<T>, want: CK_RV) {
    match got {
        Ok(v) => panic!("{what}: succeeded with {v:?}, want {}", rv_name(want)),
        Err(rv) => assert_rv(what, rv, want),
    }
}

/// Unwraps a call's value, panicking with the return code's name.
#[track_caller]
pub fn ok<T>(what: &str, got: Res<T>) -> T {
    match got {
        Ok(v) => v,
        Err(rv) => panic!("{what}: {}", rv_name(rv)),
    }
}

fn check(rv: CK_RV) -> Res<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(rv)
    }
}

/// One attribute of a template: its type and value bytes.
#[derive(Debug, Clone)]
pub struct Attr {
    pub ty: CK_ATTRIBUTE_TYPE,
    pub value: Vec<u8>,
}

impl Attr {
    pub fn bool(ty: CK_ATTRIBUTE_TYPE, v: bool) -> Attr {
        Attr {
            ty,
            value: vec![if v { CK_TRUE } else { CK_FALSE }],
        }
    }
    pub fn ulong(ty: CK_ATTRIBUTE_TYPE, v: CK_ULONG) -> Attr {
        Attr {
            ty,
            value: v.to_ne_bytes().to_vec(),
        }
    }
    pub fn bytes(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> Attr {
        Attr {
            ty,
            value: v.to_vec(),
        }
    }
}

/// The `CK_ATTRIBUTE` array for `attrs`; it points into `attrs`, which must outlive its use.
fn raw_template(attrs: &[Attr]) -> Vec<CK_ATTRIBUTE> {
    attrs
        .iter()
        .map(|a| CK_ATTRIBUTE {
            type_: a.ty,
            pValue: a.value.as_ptr() as CK_VOID_PTR,
            ulValueLen: a.value.len() as CK_ULONG,
        })
        .collect()
}

/// A mechanism without a parameter.
pub fn mech(ty: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: ty,
        pParameter: ptr::null_mut(),
        ulParameterLen: 0,
    }
}

/// A mechanism whose parameter is `param` (which must outlive the mechanism's use).
pub fn mech_with<T>(ty: CK_MECHANISM_TYPE, param: &mut T) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: ty,
        pParameter: param as *mut T as CK_VOID_PTR,
        ulParameterLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

/// A padded PKCS#11 text field without its padding.
pub fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(field).trim_end().to_string()
}

/// A loaded module and its 2.40 function list. The library is never unloaded: `dlclose` of an
/// initialised libp11gate.so makes the process crash at exit (SIGSEGV), which would bury a
/// failing scenario's message; clients do not unload modules either.
pub struct Module {
    _lib: std::mem::ManuallyDrop<libloading::Library>,
    f: &'static CK_FUNCTION_LIST,
}

macro_rules! call {
    ($m:expr, $name:ident ( $($arg:expr),* $(,)? )) => {{
        let f = $m.f.$name.expect(concat!(stringify!($name), " is NULL in the function list"));
        // SAFETY: the function comes from the module's own function list, and every pointer
        // argument points to live memory of the size the call's length argument says.
        unsafe { f($($arg),*) }
    }};
}

impl Module {
    /// `dlopen`s `path` and calls its `C_GetFunctionList`.
    pub fn load(path: &Path) -> Module {
        // SAFETY: loading a PKCS#11 module runs its initialisers; that is what the test is about.
        let lib = unsafe { libloading::Library::new(path) }
            .unwrap_or_else(|e| panic!("dlopen {}: {e}", path.display()));
        let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
            unsafe { lib.get(b"C_GetFunctionList\0") }.expect("C_GetFunctionList symbol");
        // SAFETY: `list` is a valid out-pointer.
        let rv = unsafe { get(&mut list) };
        assert_rv("C_GetFunctionList", rv, CKR_OK);
        assert!(!list.is_null(), "C_GetFunctionList gave NULL");
        // SAFETY: the module keeps its function list alive while it is loaded, and `_lib` keeps
        // it loaded for as long as this value lives (the reference never leaves it).
        let f: &'static CK_FUNCTION_LIST = unsafe { &*list };
        Module {
            _lib: std::mem::ManuallyDrop::new(lib),
            f,
        }
    }

    /// C_Initialize with `CKF_OS_LOCKING_OK` and no mutex callbacks, as Vault calls it.
    pub fn initialize(&self) -> CK_RV {
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: ptr::null_mut(),
        };
        call!(
            self,
            C_Initialize(&mut args as *mut CK_C_INITIALIZE_ARGS as CK_VOID_PTR)
        )
    }

    pub fn finalize(&self) -> CK_RV {
        call!(self, C_Finalize(ptr::null_mut()))
    }

    pub fn slot_list(&self, token_present: bool) -> Res<Vec<CK_SLOT_ID>> {
        let present = if token_present { CK_TRUE } else { CK_FALSE };
        let mut n: CK_ULONG = 0;
        check(call!(self, C_GetSlotList(present, ptr::null_mut(), &mut n)))?;
        let mut ids = vec![0; n as usize];
        check(call!(
            self,
            C_GetSlotList(present, ids.as_mut_ptr(), &mut n)
        ))?;
        ids.truncate(n as usize);
        Ok(ids)
    }

    pub fn slot_info(&self, slot: CK_SLOT_ID) -> Res<CK_SLOT_INFO> {
        // SAFETY: CK_SLOT_INFO is plain data; all zero bytes is a valid value.
        let mut info: CK_SLOT_INFO = unsafe { std::mem::zeroed() };
        check(call!(self, C_GetSlotInfo(slot, &mut info)))?;
        Ok(info)
    }

    pub fn token_info(&self, slot: CK_SLOT_ID) -> Res<CK_TOKEN_INFO> {
        // SAFETY: CK_TOKEN_INFO is plain data; all zero bytes is a valid value.
        let mut info: CK_TOKEN_INFO = unsafe { std::mem::zeroed() };
        check(call!(self, C_GetTokenInfo(slot, &mut info)))?;
        Ok(info)
    }

    pub fn token_label(&self, slot: CK_SLOT_ID) -> Res<String> {
        self.token_info(slot).map(|t| text(&t.label))
    }

    pub fn mechanism_list(&self, slot: CK_SLOT_ID) -> Res<Vec<CK_MECHANISM_TYPE>> {
        let mut n: CK_ULONG = 0;
        check(call!(
            self,
            C_GetMechanismList(slot, ptr::null_mut(), &mut n)
        ))?;
        let mut list = vec![0; n as usize];
        check(call!(
            self,
            C_GetMechanismList(slot, list.as_mut_ptr(), &mut n)
        ))?;
        list.truncate(n as usize);
        Ok(list)
    }

    pub fn mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        ty: CK_MECHANISM_TYPE,
    ) -> Res<CK_MECHANISM_INFO> {
        let mut info = CK_MECHANISM_INFO {
            ulMinKeySize: 0,
            ulMaxKeySize: 0,
            flags: 0,
        };
        check(call!(self, C_GetMechanismInfo(slot, ty, &mut info)))?;
        Ok(info)
    }

    pub fn init_token(&self, slot: CK_SLOT_ID, so_pin: &str, label: &str) -> CK_RV {
        let mut padded = [b' '; 32];
        padded[..label.len()].copy_from_slice(label.as_bytes());
        call!(
            self,
            C_InitToken(
                slot,
                so_pin.as_ptr() as *mut u8,
                so_pin.len() as CK_ULONG,
                padded.as_mut_ptr()
            )
        )
    }

    pub fn open_session(&self, slot: CK_SLOT_ID, rw: bool) -> Res<CK_SESSION_HANDLE> {
        let flags = CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 };
        let mut h: CK_SESSION_HANDLE = 0;
        check(call!(
            self,
            C_OpenSession(slot, flags, ptr::null_mut(), None, &mut h)
        ))?;
        Ok(h)
    }

    pub fn close_session(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        call!(self, C_CloseSession(h))
    }

    pub fn close_all_sessions(&self, slot: CK_SLOT_ID) -> CK_RV {
        call!(self, C_CloseAllSessions(slot))
    }

    pub fn session_info(&self, h: CK_SESSION_HANDLE) -> Res<CK_SESSION_INFO> {
        let mut info = CK_SESSION_INFO {
            slotID: 0,
            state: 0,
            flags: 0,
            ulDeviceError: 0,
        };
        check(call!(self, C_GetSessionInfo(h, &mut info)))?;
        Ok(info)
    }

    pub fn login(&self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &str) -> CK_RV {
        call!(
            self,
            C_Login(h, user, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)
        )
    }

    pub fn logout(&self, h: CK_SESSION_HANDLE) -> CK_RV {
        call!(self, C_Logout(h))
    }

    pub fn init_pin(&self, h: CK_SESSION_HANDLE, pin: &str) -> CK_RV {
        call!(
            self,
            C_InitPIN(h, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)
        )
    }

    pub fn set_pin(&self, h: CK_SESSION_HANDLE, old: &str, new: &str) -> CK_RV {
        call!(
            self,
            C_SetPIN(
                h,
                old.as_ptr() as *mut u8,
                old.len() as CK_ULONG,
                new.as_ptr() as *mut u8,
                new.len() as CK_ULONG
            )
        )
    }

    pub fn create_object(&self, h: CK_SESSION_HANDLE, attrs: &[Attr]) -> Res<CK_OBJECT_HANDLE> {
        let mut t = raw_template(attrs);
        let mut o: CK_OBJECT_HANDLE = 0;
        check(call!(
            self,
            C_CreateObject(h, t.as_mut_ptr(), t.len() as CK_ULONG, &mut o)
        ))?;
        Ok(o)
    }

    pub fn copy_object(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        attrs: &[Attr],
    ) -> Res<CK_OBJECT_HANDLE> {
        let mut t = raw_template(attrs);
        let mut o: CK_OBJECT_HANDLE = 0;
        check(call!(
            self,
            C_CopyObject(h, obj, t.as_mut_ptr(), t.len() as CK_ULONG, &mut o)
        ))?;
        Ok(o)
    }

    pub fn destroy_object(&self, h: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) -> CK_RV {
        call!(self, C_DestroyObject(h, obj))
    }

    pub fn set_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        attrs: &[Attr],
    ) -> CK_RV {
        let mut t = raw_template(attrs);
        call!(
            self,
            C_SetAttributeValue(h, obj, t.as_mut_ptr(), t.len() as CK_ULONG)
        )
    }

    /// One attribute's value (two calls: length, then value).
    pub fn attribute(
        &self,
        h: CK_SESSION_HANDLE,
        obj: CK_OBJECT_HANDLE,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> Res<Vec<u8>> {
        let mut a = CK_ATTRIBUTE {
            type_: ty,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        check(call!(self, C_GetAttributeValue(h, obj, &mut a, 1)))?;
        let mut buf = vec![0u8; a.ulValueLen as usize];
        a.pValue = buf.as_mut_ptr() as CK_VOID_PTR;
        check(call!(self, C_GetAttributeValue(h, obj, &mut a, 1)))?;
        buf.truncate(a.ulValueLen as usize);
        Ok(buf)
    }

    pub fn find(&self, h: CK_SESSION_HANDLE, attrs: &[Attr]) -> Res<Vec<CK_OBJECT_HANDLE>> {
        let mut t = raw_template(attrs);
        check(call!(
            self,
            C_FindObjectsInit(h, t.as_mut_ptr(), t.len() as CK_ULONG)
        ))?;
        let mut found = Vec::new();
        loop {
            let mut batch = [0 as CK_OBJECT_HANDLE; 16];
            let mut n: CK_ULONG = 0;
            let rv = call!(
                self,
                C_FindObjects(h, batch.as_mut_ptr(), batch.len() as CK_ULONG, &mut n)
            );
            if rv != CKR_OK {
                let _ = call!(self, C_FindObjectsFinal(h));
                return Err(rv);
            }
            found.extend_from_slice(&batch[..n as usize]);
            if n == 0 {
                break;
            }
        }
        check(call!(self, C_FindObjectsFinal(h)))?;
        Ok(found)
    }

    pub fn generate_key(
        &self,
        h: CK_SESSION_HANDLE,
        m: &CK_MECHANISM,
        attrs: &[Attr],
    ) -> Res<CK_OBJECT_HANDLE> {
        let mut m = *m;
        let mut t = raw_template(attrs);
        let mut o: CK_OBJECT_HANDLE = 0;
        check(call!(
            self,
            C_GenerateKey(h, &mut m, t.as_mut_ptr(), t.len() as CK_ULONG, &mut o)
        ))?;
        Ok(o)
    }

    pub fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        m: &CK_MECHANISM,
        public: &[Attr],
        private: &[Attr],
    ) -> Res<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let mut m = *m;
        let mut pubt = raw_template(public);
        let mut privt = raw_template(private);
        let (mut pubk, mut privk): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
        check(call!(
            self,
            C_GenerateKeyPair(
                h,
                &mut m,
                pubt.as_mut_ptr(),
                pubt.len() as CK_ULONG,
                privt.as_mut_ptr(),
                privt.len() as CK_ULONG,
                &mut pubk,
                &mut privk
            )
        ))?;
        Ok((pubk, privk))
    }

    pub fn encrypt_init(
        &self,
        h: CK_SESSION_HANDLE,
        m: &CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let mut m = *m;
        call!(self, C_EncryptInit(h, &mut m, key))
    }

    pub fn decrypt_init(
        &self,
        h: CK_SESSION_HANDLE,
        m: &CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let mut m = *m;
        call!(self, C_DecryptInit(h, &mut m, key))
    }

    pub fn digest_init(&self, h: CK_SESSION_HANDLE, m: &CK_MECHANISM) -> CK_RV {
        let mut m = *m;
        call!(self, C_DigestInit(h, &mut m))
    }

    pub fn sign_init(
        &self,
        h: CK_SESSION_HANDLE,
        m: &CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let mut m = *m;
        call!(self, C_SignInit(h, &mut m, key))
    }

    pub fn verify_init(
        &self,
        h: CK_SESSION_HANDLE,
        m: &CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let mut m = *m;
        call!(self, C_VerifyInit(h, &mut m, key))
    }

    pub fn sign_recover_init(
        &self,
        h: CK_SESSION_HANDLE,
        m: &CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let mut m = *m;
        call!(self, C_SignRecoverInit(h, &mut m, key))
    }

    pub fn verify_recover_init(
        &self,
        h: CK_SESSION_HANDLE,
        m: &CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let mut m = *m;
        call!(self, C_VerifyRecoverInit(h, &mut m, key))
    }

    /// C_Encrypt with the length query first, as Vault's binding does.
    pub fn encrypt(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> Res<Vec<u8>> {
        let mut n: CK_ULONG = 0;
        check(call!(
            self,
            C_Encrypt(
                h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                ptr::null_mut(),
                &mut n
            )
        ))?;
        let mut out = vec![0u8; n as usize];
        check(call!(
            self,
            C_Encrypt(
                h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n
            )
        ))?;
        out.truncate(n as usize);
        Ok(out)
    }

    /// C_Decrypt with the length query first.
    pub fn decrypt(&self, h: CK_SESSION_HANDLE, data: &[u8]) -> Res<Vec<u8>> {
        let mut n: CK_ULONG = 0;
        check(call!(
            self,
            C_Decrypt(
                h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                ptr::null_mut(),
                &mut n
            )
        ))?;
        let mut out = vec![0u8; n as usize];
        check(call!(
            self,
            C_Decrypt(
                h,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n
            )
        ))?;
        out.truncate(n as usize);
        Ok(out)
    }

    pub fn wrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        m: &CK_MECHANISM,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
    ) -> Res<Vec<u8>> {
        let mut m = *m;
        let mut n: CK_ULONG = 0;
        check(call!(
            self,
            C_WrapKey(h, &mut m, wrapping, key, ptr::null_mut(), &mut n)
        ))?;
        let mut out = vec![0u8; n as usize];
        check(call!(
            self,
            C_WrapKey(h, &mut m, wrapping, key, out.as_mut_ptr(), &mut n)
        ))?;
        out.truncate(n as usize);
        Ok(out)
    }

    pub fn unwrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        m: &CK_MECHANISM,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        attrs: &[Attr],
    ) -> Res<CK_OBJECT_HANDLE> {
        let mut m = *m;
        let mut t = raw_template(attrs);
        let mut o: CK_OBJECT_HANDLE = 0;
        check(call!(
            self,
            C_UnwrapKey(
                h,
                &mut m,
                unwrapping,
                wrapped.as_ptr() as *mut u8,
                wrapped.len() as CK_ULONG,
                t.as_mut_ptr(),
                t.len() as CK_ULONG,
                &mut o
            )
        ))?;
        Ok(o)
    }

    pub fn derive_key(
        &self,
        h: CK_SESSION_HANDLE,
        m: &CK_MECHANISM,
        base: CK_OBJECT_HANDLE,
        attrs: &[Attr],
    ) -> Res<CK_OBJECT_HANDLE> {
        let mut m = *m;
        let mut t = raw_template(attrs);
        let mut o: CK_OBJECT_HANDLE = 0;
        check(call!(
            self,
            C_DeriveKey(h, &mut m, base, t.as_mut_ptr(), t.len() as CK_ULONG, &mut o)
        ))?;
        Ok(o)
    }
}
