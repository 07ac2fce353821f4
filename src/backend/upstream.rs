//! The upstream backend: a vendor PKCS#11 module loaded with libloading.
//!
//! Negotiation trusts nothing the module merely claims. The 3.0 table is taken only from the
//! module's `C_GetInterface("PKCS 11", 3.0)`; otherwise only the 2.40 part of what
//! `C_GetFunctionList` returns is copied, whatever version it reports (SoftHSMv2 reports 3.x but
//! fills only the 2.40 table). Both tables are copied into p11gate's own memory; the module's
//! structs are never handed to the application.
//!
//! A loaded module stays loaded for the life of the process: p11gate never `dlclose`s it. Many
//! vendor libraries start threads or register handlers that crash when unloaded, and keeping it
//! means every function pointer p11gate copied stays valid even for a call still in flight
//! while another thread finalises. Loading the same path again reuses the loaded module.
//!
//! With `reconnect = true` every call goes through the upstream's [`Health`]: refused with the
//! code that took it down while it is down, counted while it runs, and checked for an outage
//! code when it returns. `C_Initialize` and `C_Finalize` bypass it (the reconnect thread uses
//! them while the upstream is down); [`Backend::reinitialize`] repeats the application's
//! `C_Initialize` arguments.

use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use once_cell::sync::Lazy;
use parking_lot::Mutex;
use pkcs11_sys::*;

use super::health::Health;
use super::{Backend, Capabilities, InitArgs, MessageKind, MutexCallbacks};
use crate::config::UpstreamConfig;
use crate::error::{check, Error, Result};
use crate::ffi::args::{
    InBuf, Mechanism, MessageSignature, MutBuf, OutBuf, Param, SignatureDirection, Template,
};

type S = CK_SESSION_HANDLE;
type O = CK_OBJECT_HANDLE;
type GetFunctionListFn = unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV;
type GetInterfaceFn =
    unsafe extern "C" fn(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS) -> CK_RV;

/// A loaded vendor module and the function tables negotiated from it.
#[derive(Debug)]
pub struct Module {
    path: PathBuf,
    v2: CK_FUNCTION_LIST,
    v3: Option<CK_FUNCTION_LIST_3_0>,
    /// Kept so the module is never unloaded (see the module docs).
    _library: libloading::os::unix::Library,
}

static MODULES: Lazy<Mutex<Vec<Arc<Module>>>> = Lazy::new(|| Mutex::new(Vec::new()));

impl Module {
    /// Loads the module at `path`, or returns the one already loaded from there.
    pub fn load(path: &Path) -> Result<Arc<Module>> {
        let mut modules = MODULES.lock();
        if let Some(m) = modules.iter().find(|m| m.path == path) {
            return Ok(m.clone());
        }
        let module = Arc::new(Module::open(path, true).map_err(|why| {
            Error::setup(format!("cannot load upstream {}: {why}", path.display()))
        })?);
        modules.push(module.clone());
        Ok(module)
    }

    /// `with_3_0`: ask for the 3.0 interface first (false: `C_GetFunctionList` only, as Vault).
    fn open(path: &Path, with_3_0: bool) -> std::result::Result<Module, String> {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        if !path.is_absolute() {
            return Err("the path must be absolute (a relative path would be searched for)".into());
        }
        // SAFETY: loading a PKCS#11 module runs its initialisers; choosing to trust the
        // configured module is the operator's decision, which is what an upstream is.
        // RTLD_NOW reports unresolved symbols here, not as a crash at the first call.
        let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map_err(|e| {
            // libloading puts dlerror()'s text in the error's source; that is the useful part.
            std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string())
        })?;

        let (v2, v3) = match with_3_0.then(|| Self::negotiate_3_0(&library)).flatten() {
            Some(v3) => (Self::v2_part_of(&v3), Some(v3)),
            None => (Self::function_list_2_40(&library)?, None),
        };
        if v2.version.major < 2 {
            return Err(format!(
                "it reports Cryptoki {}.{}; p11gate needs 2.x or later",
                v2.version.major, v2.version.minor
            ));
        }
        Ok(Module {
            path: path.to_owned(),
            v2,
            v3,
            _library: library,
        })
    }

    /// The module's 3.0 table, if it offers one through `C_GetInterface`.
    fn negotiate_3_0(library: &libloading::os::unix::Library) -> Option<CK_FUNCTION_LIST_3_0> {
        // SAFETY: `C_GetInterface`, where exported, has this signature (PKCS#11 3.0 §5.4).
        let get_interface = unsafe { library.get::<GetInterfaceFn>(b"C_GetInterface\0") }.ok()?;
        let mut name = *b"PKCS 11\0";
        let mut version = CK_VERSION { major: 3, minor: 0 };
        let mut iface: CK_INTERFACE_PTR = std::ptr::null_mut();
        // SAFETY: name is NUL-terminated, version and iface are live locals; the module fills
        // `iface` with a pointer to its own static interface on success.
        let rv = unsafe { get_interface(name.as_mut_ptr(), &mut version, &mut iface, 0) };
        if rv != CKR_OK || iface.is_null() {
            return None;
        }
        // SAFETY: on CKR_OK `iface` points to the module's CK_INTERFACE (static per the spec).
        let list = unsafe { (*iface).pFunctionList } as *const CK_FUNCTION_LIST_3_0;
        if list.is_null() {
            return None;
        }
        // SAFETY: we asked for version 3.0 of "PKCS 11", whose function list is a
        // CK_FUNCTION_LIST_3_0; we copy it and check the version it carries below.
        let v3 = unsafe { *list };
        (v3.version.major == 3).then_some(v3)
    }

    /// The 2.40 part of what `C_GetFunctionList` returns, whatever version it claims.
    fn function_list_2_40(
        library: &libloading::os::unix::Library,
    ) -> std::result::Result<CK_FUNCTION_LIST, String> {
        // SAFETY: `C_GetFunctionList` has this signature in every PKCS#11 version.
        let get_list = unsafe { library.get::<GetFunctionListFn>(b"C_GetFunctionList\0") }
            .map_err(|_| {
                "it exports neither C_GetInterface (3.0) nor C_GetFunctionList".to_string()
            })?;
        let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        // SAFETY: `list` is a live local the module fills with a pointer to its static table.
        let rv = unsafe { get_list(&mut list) };
        if rv != CKR_OK {
            return Err(format!(
                "its C_GetFunctionList returned {}",
                crate::names::rv_name(rv)
            ));
        }
        if list.is_null() {
            return Err("its C_GetFunctionList returned a NULL list".into());
        }
        // SAFETY: on CKR_OK `list` points to at least a 2.40 CK_FUNCTION_LIST; we copy only that.
        Ok(unsafe { *list })
    }

    /// The 2.40 table is the first part of the 3.0 one; copy it field by field so nothing
    /// depends on struct layout beyond the spec's.
    fn v2_part_of(v3: &CK_FUNCTION_LIST_3_0) -> CK_FUNCTION_LIST {
        macro_rules! v2 { ($($f:ident),* $(,)?) => { CK_FUNCTION_LIST { version: v3.version, $($f: v3.$f),* } } }
        v2!(
            C_Initialize,
            C_Finalize,
            C_GetInfo,
            C_GetFunctionList,
            C_GetSlotList,
            C_GetSlotInfo,
            C_GetTokenInfo,
            C_GetMechanismList,
            C_GetMechanismInfo,
            C_InitToken,
            C_InitPIN,
            C_SetPIN,
            C_OpenSession,
            C_CloseSession,
            C_CloseAllSessions,
            C_GetSessionInfo,
            C_GetOperationState,
            C_SetOperationState,
            C_Login,
            C_Logout,
            C_CreateObject,
            C_CopyObject,
            C_DestroyObject,
            C_GetObjectSize,
            C_GetAttributeValue,
            C_SetAttributeValue,
            C_FindObjectsInit,
            C_FindObjects,
            C_FindObjectsFinal,
            C_EncryptInit,
            C_Encrypt,
            C_EncryptUpdate,
            C_EncryptFinal,
            C_DecryptInit,
            C_Decrypt,
            C_DecryptUpdate,
            C_DecryptFinal,
            C_DigestInit,
            C_Digest,
            C_DigestUpdate,
            C_DigestKey,
            C_DigestFinal,
            C_SignInit,
            C_Sign,
            C_SignUpdate,
            C_SignFinal,
            C_SignRecoverInit,
            C_SignRecover,
            C_VerifyInit,
            C_Verify,
            C_VerifyUpdate,
            C_VerifyFinal,
            C_VerifyRecoverInit,
            C_VerifyRecover,
            C_DigestEncryptUpdate,
            C_DecryptDigestUpdate,
            C_SignEncryptUpdate,
            C_DecryptVerifyUpdate,
            C_GenerateKey,
            C_GenerateKeyPair,
            C_WrapKey,
            C_UnwrapKey,
            C_DeriveKey,
            C_SeedRandom,
            C_GenerateRandom,
            C_GetFunctionStatus,
            C_CancelFunction,
            C_WaitForSlotEvent,
        )
    }

    /// Whether the module offered the 3.0 interface.
    pub fn has_3_0(&self) -> bool {
        self.v3.is_some()
    }
}

/// A configured upstream: a loaded [`Module`] plus how this configuration initialises it.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    module: Arc<Module>,
    init_args: Option<CString>,
    /// Whether our C_Initialize succeeded with CKR_OK, so that C_Finalize is ours to call. An
    /// upstream that answered CKR_CRYPTOKI_ALREADY_INITIALIZED belongs to someone else in this
    /// process and is left initialised.
    initialized_by_us: AtomicBool,
    /// The fork generation in which we initialised it: in a child after `fork()` the module
    /// still holds the parent's state (sessions, login), which the child must not inherit.
    initialized_in: AtomicU32,
    /// `slow_call_warn_ms`: calls that take longer are logged.
    slow_call: Option<std::time::Duration>,
    /// With `reconnect = true`: up or down (see `router::reconnect`).
    health: Option<Arc<Health>>,
    /// The arguments of the last `initialize`, for re-initialising after an outage.
    last_init: Mutex<Option<InitArgs>>,
}

impl Upstream {
    pub fn load(config: &UpstreamConfig) -> Result<Upstream> {
        let init_args = match &config.init_args {
            Some(a) => Some(CString::new(a.as_str()).map_err(|_| {
                Error::setup(format!(
                    "upstream {:?}: init_args contains a NUL byte",
                    config.name
                ))
            })?),
            None => None,
        };
        Ok(Upstream {
            name: config.name.get_ref().clone(),
            module: Module::load(&config.path)?,
            init_args,
            initialized_by_us: AtomicBool::new(false),
            initialized_in: AtomicU32::new(0),
            slow_call: config
                .slow_call_warn_ms
                .map(std::time::Duration::from_millis),
            health: config.reconnect.then(|| Arc::new(Health::default())),
            last_init: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.module.path
    }

    /// Forgets that we initialised the module, without calling it: used in a child after
    /// `fork()`, where the parent's initialisation is not ours to finalise.
    pub fn forget_initialization(&self) {
        self.initialized_by_us.store(false, Ordering::Relaxed);
    }
}

/// Calls a function of the module's 2.40 table, or answers CKR_FUNCTION_NOT_SUPPORTED when
/// the module left that entry NULL. With `reconnect`, the call is refused while the upstream is
/// down, and an outage code it returns takes it down ([`Upstream::forward`]).
macro_rules! v2 {
    ($self:ident . $f:ident ( $($arg:expr),* $(,)? )) => {{
        let f = $self.module.v2.$f.ok_or(Error::FunctionNotSupported)?;
        $self.forward(stringify!($f), || {
            // SAFETY: `f` is the module's own implementation from its function table, and the
            // module stays loaded for the life of the process. The arguments are the
            // application's, checked by `ffi::args` against what the spec forbids, with the
            // types of this function's PKCS#11 signature.
            unsafe { f($($arg),*) }
        })
    }};
}

/// Like `v2!`, for the 3.0 table.
macro_rules! v3 {
    ($self:ident . $f:ident ( $($arg:expr),* $(,)? )) => {{
        let f = $self.module.v3.as_ref().and_then(|l| l.$f).ok_or(Error::FunctionNotSupported)?;
        $self.forward(stringify!($f), || {
            // SAFETY: as for `v2!`: the module's own 3.0 implementation (negotiated through
            // C_GetInterface for version 3.0), called with checked arguments of its signature.
            unsafe { f($($arg),*) }
        })
    }};
}

/// `C_Initialize` and `C_Finalize`: like `v2!`, but never refused and never taking the
/// upstream down (the reconnect thread itself uses them while it is down).
macro_rules! lifecycle {
    ($self:ident . $f:ident ( $($arg:expr),* $(,)? )) => {{
        let f = $self.module.v2.$f.ok_or(Error::FunctionNotSupported)?;
        let started = $self.slow_call.map(|_| std::time::Instant::now());
        // SAFETY: as for `v2!`: the module's own C_Initialize / C_Finalize with arguments of
        // their signatures (a CK_C_INITIALIZE_ARGS p11gate built, or NULL).
        let rv = unsafe { f($($arg),*) };
        $self.note_slow(stringify!($f), started);
        check(rv)
    }};
}

impl Upstream {
    /// Runs one call into the module: refused while the upstream is down (with `reconnect`),
    /// counted while it runs, timed for `slow_call_warn_ms`, and its result checked for an
    /// outage code.
    #[inline(always)]
    fn forward(&self, function: &'static str, call: impl FnOnce() -> CK_RV) -> Result<()> {
        let _lease = match &self.health {
            Some(h) => Some(h.enter().map_err(Error::Backend)?),
            None => None,
        };
        let started = self.slow_call.map(|_| std::time::Instant::now());
        let rv = call();
        self.note_slow(function, started);
        if let Some(h) = &self.health {
            h.returned(function, rv);
        }
        check(rv)
    }

    /// Logs a call that took longer than `slow_call_warn_ms` (`started` is None without one).
    #[inline]
    fn note_slow(&self, function: &str, started: Option<std::time::Instant>) {
        if let (Some(limit), Some(t0)) = (self.slow_call, started) {
            let took = t0.elapsed();
            if took >= limit {
                log::warn!(
                    "upstream {}: {function} took {} ms (slow_call_warn_ms = {})",
                    self.name,
                    took.as_millis(),
                    limit.as_millis()
                );
            }
        }
    }

    fn initialize_with(&self, flags: CK_FLAGS, m: MutexCallbacks) -> Result<()> {
        self.call_initialize(CK_C_INITIALIZE_ARGS {
            CreateMutex: m.create,
            DestroyMutex: m.destroy,
            LockMutex: m.lock,
            UnlockMutex: m.unlock,
            flags,
            pReserved: self.init_args_ptr(),
        })
    }

    fn initialize_with_os_locking(&self, flags: CK_FLAGS) -> Result<()> {
        self.call_initialize(CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags,
            pReserved: self.init_args_ptr(),
        })
    }

    fn call_initialize(&self, mut raw: CK_C_INITIALIZE_ARGS) -> Result<()> {
        lifecycle!(self.C_Initialize(&mut raw as *mut CK_C_INITIALIZE_ARGS as *mut c_void))
    }

    fn init_args_ptr(&self) -> *mut c_void {
        self.init_args
            .as_ref()
            .map_or(std::ptr::null_mut(), |a| a.as_ptr() as *mut c_void)
    }

    /// The module's C_Initialize with the application's locking choice (see `initialize`).
    fn initialize_module(&self, args: &InitArgs) -> Result<()> {
        let generation = crate::runtime::fork_generation();
        if self.initialized_by_us.load(Ordering::Relaxed)
            && self.initialized_in.load(Ordering::Relaxed) != generation
        {
            // A child after fork(): drop the parent's state so that the child starts clean
            // (logged out, no sessions). Locks held by the parent's threads do not block this:
            // they are p11gate's fork-aware mutexes.
            log::info!(
                "upstream {}: resetting the state inherited from the parent process after fork()",
                self.name
            );
            let _ = lifecycle!(self.C_Finalize(std::ptr::null_mut()));
            self.initialized_by_us.store(false, Ordering::Relaxed);
        }
        let result = match args.mutexes {
            Some(app) => self.initialize_with(args.flags, app),
            None => match self.initialize_with(args.flags, p11gate_mutexes()) {
                // A module that cannot use supplied mutex functions: its own OS locking then.
                Err(Error::Backend(CKR_CANT_LOCK)) => self.initialize_with_os_locking(args.flags),
                other => other,
            },
        };
        match result {
            Ok(()) => {
                self.initialized_by_us.store(true, Ordering::Relaxed);
                self.initialized_in.store(generation, Ordering::Relaxed);
                Ok(())
            }
            Err(Error::Backend(CKR_CRYPTOKI_ALREADY_INITIALIZED)) => {
                log::info!(
                    "upstream {} ({}) was already initialised in this process; p11gate will not finalise it",
                    self.name,
                    self.path().display()
                );
                self.initialized_by_us.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// p11gate's fork-aware mutexes (see `ffi::mutex`), for upstreams of applications that did not
/// supply their own.
fn p11gate_mutexes() -> MutexCallbacks {
    use crate::ffi::mutex;
    MutexCallbacks {
        create: Some(mutex::create_mutex),
        destroy: Some(mutex::destroy_mutex),
        lock: Some(mutex::lock_mutex),
        unlock: Some(mutex::unlock_mutex),
    }
}

impl Backend for Upstream {
    fn name(&self) -> &str {
        &self.name
    }

    fn source_path(&self) -> Option<&Path> {
        Some(self.path())
    }

    fn describe(&self) -> String {
        format!(
            "{} ({}, Cryptoki {}.{}{})",
            self.name,
            self.path().display(),
            self.module.v2.version.major,
            self.module.v2.version.minor,
            if self.module.has_3_0() {
                ", 3.0 interface"
            } else {
                ""
            }
        )
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            v3_0: self.module.has_3_0(),
        }
    }

    fn initialize(&self, args: &InitArgs) -> Result<()> {
        let forked =
            self.initialized_in.load(Ordering::Relaxed) != crate::runtime::fork_generation();
        if let Some(h) = &self.health {
            h.reset(forked);
        }
        *self.last_init.lock() = Some(*args);
        self.initialize_module(args)
    }

    fn finalize(&self) -> Result<()> {
        if self.initialized_by_us.swap(false, Ordering::Relaxed) {
            lifecycle!(self.C_Finalize(std::ptr::null_mut()))
        } else {
            Ok(())
        }
    }

    fn health(&self) -> Option<Arc<Health>> {
        self.health.clone()
    }

    fn reinitialize(&self) -> Result<()> {
        let args = (*self.last_init.lock()).ok_or(Error::NotInitialized)?;
        // Best effort: a module whose device is gone may fail here; its state goes either way.
        let _ = self.finalize();
        self.initialize_module(&args)
    }

    fn slot_list(&self, token_present: bool, mut out: OutBuf<'_, CK_SLOT_ID>) -> Result<()> {
        let (list, count) = out.as_raw();
        v2!(self.C_GetSlotList(token_present as CK_BBOOL, list, count))
    }
    fn slot_info(&self, slot: CK_SLOT_ID, info: &mut CK_SLOT_INFO) -> Result<()> {
        v2!(self.C_GetSlotInfo(slot, info))
    }
    fn token_info(&self, slot: CK_SLOT_ID, info: &mut CK_TOKEN_INFO) -> Result<()> {
        v2!(self.C_GetTokenInfo(slot, info))
    }
    fn wait_for_slot_event(&self, flags: CK_FLAGS, slot: &mut CK_SLOT_ID) -> Result<()> {
        v2!(self.C_WaitForSlotEvent(flags, slot, std::ptr::null_mut()))
    }
    fn mechanism_list(
        &self,
        slot: CK_SLOT_ID,
        mut out: OutBuf<'_, CK_MECHANISM_TYPE>,
    ) -> Result<()> {
        let (list, count) = out.as_raw();
        v2!(self.C_GetMechanismList(slot, list, count))
    }
    fn mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        mech: CK_MECHANISM_TYPE,
        info: &mut CK_MECHANISM_INFO,
    ) -> Result<()> {
        v2!(self.C_GetMechanismInfo(slot, mech, info))
    }
    fn init_token(&self, slot: CK_SLOT_ID, so_pin: InBuf<'_>, label: &[u8; 32]) -> Result<()> {
        v2!(self.C_InitToken(
            slot,
            so_pin.as_ptr(),
            so_pin.len(),
            label.as_ptr() as *mut u8
        ))
    }
    fn init_pin(&self, s: S, pin: InBuf<'_>) -> Result<()> {
        v2!(self.C_InitPIN(s, pin.as_ptr(), pin.len()))
    }
    fn set_pin(&self, s: S, old: InBuf<'_>, new: InBuf<'_>) -> Result<()> {
        v2!(self.C_SetPIN(s, old.as_ptr(), old.len(), new.as_ptr(), new.len()))
    }

    fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<S> {
        let mut s: S = CK_INVALID_HANDLE;
        v2!(self.C_OpenSession(slot, flags, std::ptr::null_mut(), None, &mut s))?;
        Ok(s)
    }
    fn close_session(&self, s: S) -> Result<()> {
        v2!(self.C_CloseSession(s))
    }
    fn close_all_sessions(&self, slot: CK_SLOT_ID) -> Result<()> {
        v2!(self.C_CloseAllSessions(slot))
    }
    fn session_info(&self, s: S, info: &mut CK_SESSION_INFO) -> Result<()> {
        v2!(self.C_GetSessionInfo(s, info))
    }
    fn operation_state(&self, s: S, mut out: OutBuf<'_>) -> Result<()> {
        let (state, len) = out.as_raw();
        v2!(self.C_GetOperationState(s, state, len))
    }
    fn set_operation_state(&self, s: S, state: InBuf<'_>, enc_key: O, auth_key: O) -> Result<()> {
        v2!(self.C_SetOperationState(s, state.as_ptr(), state.len(), enc_key, auth_key))
    }
    fn login(&self, s: S, user: CK_USER_TYPE, pin: InBuf<'_>) -> Result<()> {
        v2!(self.C_Login(s, user, pin.as_ptr(), pin.len()))
    }
    fn logout(&self, s: S) -> Result<()> {
        v2!(self.C_Logout(s))
    }

    fn create_object(&self, s: S, t: Template<'_>, obj: &mut O) -> Result<()> {
        v2!(self.C_CreateObject(s, t.as_ptr(), t.len(), obj))
    }
    fn copy_object(&self, s: S, from: O, t: Template<'_>, obj: &mut O) -> Result<()> {
        v2!(self.C_CopyObject(s, from, t.as_ptr(), t.len(), obj))
    }
    fn destroy_object(&self, s: S, obj: O) -> Result<()> {
        v2!(self.C_DestroyObject(s, obj))
    }
    fn object_size(&self, s: S, obj: O, size: &mut CK_ULONG) -> Result<()> {
        v2!(self.C_GetObjectSize(s, obj, size))
    }
    fn get_attribute_value(&self, s: S, obj: O, t: Template<'_>) -> Result<()> {
        v2!(self.C_GetAttributeValue(s, obj, t.as_ptr(), t.len()))
    }
    fn set_attribute_value(&self, s: S, obj: O, t: Template<'_>) -> Result<()> {
        v2!(self.C_SetAttributeValue(s, obj, t.as_ptr(), t.len()))
    }
    fn find_objects_init(&self, s: S, t: Template<'_>) -> Result<()> {
        v2!(self.C_FindObjectsInit(s, t.as_ptr(), t.len()))
    }
    fn find_objects(&self, s: S, found: &mut [O], count: &mut CK_ULONG) -> Result<()> {
        v2!(self.C_FindObjects(s, found.as_mut_ptr(), found.len() as CK_ULONG, count))
    }
    fn find_objects_final(&self, s: S) -> Result<()> {
        v2!(self.C_FindObjectsFinal(s))
    }

    fn encrypt_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        v2!(self.C_EncryptInit(s, m.as_ptr(), key))
    }
    fn encrypt(&self, s: S, data: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_Encrypt(s, data.as_ptr(), data.len(), o, ol))
    }
    fn encrypt_update(&self, s: S, part: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_EncryptUpdate(s, part.as_ptr(), part.len(), o, ol))
    }
    fn encrypt_final(&self, s: S, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_EncryptFinal(s, o, ol))
    }
    fn decrypt_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        v2!(self.C_DecryptInit(s, m.as_ptr(), key))
    }
    fn decrypt(&self, s: S, data: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_Decrypt(s, data.as_ptr(), data.len(), o, ol))
    }
    fn decrypt_update(&self, s: S, part: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_DecryptUpdate(s, part.as_ptr(), part.len(), o, ol))
    }
    fn decrypt_final(&self, s: S, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_DecryptFinal(s, o, ol))
    }

    fn digest_init(&self, s: S, m: Mechanism<'_>) -> Result<()> {
        v2!(self.C_DigestInit(s, m.as_ptr()))
    }
    fn digest(&self, s: S, data: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_Digest(s, data.as_ptr(), data.len(), o, ol))
    }
    fn digest_update(&self, s: S, part: InBuf<'_>) -> Result<()> {
        v2!(self.C_DigestUpdate(s, part.as_ptr(), part.len()))
    }
    fn digest_key(&self, s: S, key: O) -> Result<()> {
        v2!(self.C_DigestKey(s, key))
    }
    fn digest_final(&self, s: S, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_DigestFinal(s, o, ol))
    }

    fn sign_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        v2!(self.C_SignInit(s, m.as_ptr(), key))
    }
    fn sign(&self, s: S, data: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_Sign(s, data.as_ptr(), data.len(), o, ol))
    }
    fn sign_update(&self, s: S, part: InBuf<'_>) -> Result<()> {
        v2!(self.C_SignUpdate(s, part.as_ptr(), part.len()))
    }
    fn sign_final(&self, s: S, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_SignFinal(s, o, ol))
    }
    fn sign_recover_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        v2!(self.C_SignRecoverInit(s, m.as_ptr(), key))
    }
    fn sign_recover(&self, s: S, data: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_SignRecover(s, data.as_ptr(), data.len(), o, ol))
    }
    fn verify_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        v2!(self.C_VerifyInit(s, m.as_ptr(), key))
    }
    fn verify(&self, s: S, data: InBuf<'_>, sig: InBuf<'_>) -> Result<()> {
        v2!(self.C_Verify(s, data.as_ptr(), data.len(), sig.as_ptr(), sig.len()))
    }
    fn verify_update(&self, s: S, part: InBuf<'_>) -> Result<()> {
        v2!(self.C_VerifyUpdate(s, part.as_ptr(), part.len()))
    }
    fn verify_final(&self, s: S, sig: InBuf<'_>) -> Result<()> {
        v2!(self.C_VerifyFinal(s, sig.as_ptr(), sig.len()))
    }
    fn verify_recover_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        v2!(self.C_VerifyRecoverInit(s, m.as_ptr(), key))
    }
    fn verify_recover(&self, s: S, sig: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_VerifyRecover(s, sig.as_ptr(), sig.len(), o, ol))
    }

    fn digest_encrypt_update(&self, s: S, part: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_DigestEncryptUpdate(s, part.as_ptr(), part.len(), o, ol))
    }
    fn decrypt_digest_update(&self, s: S, part: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_DecryptDigestUpdate(s, part.as_ptr(), part.len(), o, ol))
    }
    fn sign_encrypt_update(&self, s: S, part: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_SignEncryptUpdate(s, part.as_ptr(), part.len(), o, ol))
    }
    fn decrypt_verify_update(&self, s: S, part: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_DecryptVerifyUpdate(s, part.as_ptr(), part.len(), o, ol))
    }

    fn generate_key(&self, s: S, m: Mechanism<'_>, t: Template<'_>, key: &mut O) -> Result<()> {
        v2!(self.C_GenerateKey(s, m.as_ptr(), t.as_ptr(), t.len(), key))
    }
    fn generate_key_pair(
        &self,
        s: S,
        m: Mechanism<'_>,
        public: Template<'_>,
        private: Template<'_>,
        public_key: &mut O,
        private_key: &mut O,
    ) -> Result<()> {
        v2!(self.C_GenerateKeyPair(
            s,
            m.as_ptr(),
            public.as_ptr(),
            public.len(),
            private.as_ptr(),
            private.len(),
            public_key,
            private_key
        ))
    }
    fn wrap_key(
        &self,
        s: S,
        m: Mechanism<'_>,
        wrapping_key: O,
        key: O,
        mut out: OutBuf<'_>,
    ) -> Result<()> {
        let (o, ol) = out.as_raw();
        v2!(self.C_WrapKey(s, m.as_ptr(), wrapping_key, key, o, ol))
    }
    fn unwrap_key(
        &self,
        s: S,
        m: Mechanism<'_>,
        unwrapping_key: O,
        wrapped: InBuf<'_>,
        t: Template<'_>,
        key: &mut O,
    ) -> Result<()> {
        v2!(self.C_UnwrapKey(
            s,
            m.as_ptr(),
            unwrapping_key,
            wrapped.as_ptr(),
            wrapped.len(),
            t.as_ptr(),
            t.len(),
            key
        ))
    }
    fn derive_key(
        &self,
        s: S,
        m: Mechanism<'_>,
        base_key: O,
        t: Template<'_>,
        key: &mut O,
    ) -> Result<()> {
        v2!(self.C_DeriveKey(s, m.as_ptr(), base_key, t.as_ptr(), t.len(), key))
    }

    fn seed_random(&self, s: S, seed: InBuf<'_>) -> Result<()> {
        v2!(self.C_SeedRandom(s, seed.as_ptr(), seed.len()))
    }
    fn generate_random(&self, s: S, mut out: MutBuf<'_>) -> Result<()> {
        v2!(self.C_GenerateRandom(s, out.as_ptr(), out.len()))
    }

    fn function_status(&self, s: S) -> Result<()> {
        v2!(self.C_GetFunctionStatus(s))
    }
    fn cancel_function(&self, s: S) -> Result<()> {
        v2!(self.C_CancelFunction(s))
    }

    fn login_user(
        &self,
        s: S,
        user: CK_USER_TYPE,
        pin: InBuf<'_>,
        username: InBuf<'_>,
    ) -> Result<()> {
        v3!(self.C_LoginUser(
            s,
            user,
            pin.as_ptr(),
            pin.len(),
            username.as_ptr(),
            username.len()
        ))
    }
    fn session_cancel(&self, s: S, flags: CK_FLAGS) -> Result<()> {
        v3!(self.C_SessionCancel(s, flags))
    }
    fn message_init(&self, kind: MessageKind, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        match kind {
            MessageKind::Encrypt => v3!(self.C_MessageEncryptInit(s, m.as_ptr(), key)),
            MessageKind::Decrypt => v3!(self.C_MessageDecryptInit(s, m.as_ptr(), key)),
            MessageKind::Sign => v3!(self.C_MessageSignInit(s, m.as_ptr(), key)),
            MessageKind::Verify => v3!(self.C_MessageVerifyInit(s, m.as_ptr(), key)),
        }
    }
    fn message_final(&self, kind: MessageKind, s: S) -> Result<()> {
        match kind {
            MessageKind::Encrypt => v3!(self.C_MessageEncryptFinal(s)),
            MessageKind::Decrypt => v3!(self.C_MessageDecryptFinal(s)),
            MessageKind::Sign => v3!(self.C_MessageSignFinal(s)),
            MessageKind::Verify => v3!(self.C_MessageVerifyFinal(s)),
        }
    }
    fn crypt_message(
        &self,
        kind: MessageKind,
        s: S,
        param: Param<'_>,
        aad: InBuf<'_>,
        input: InBuf<'_>,
        mut out: OutBuf<'_>,
    ) -> Result<()> {
        let (p, pl) = param.as_raw();
        let (o, ol) = out.as_raw();
        match kind {
            MessageKind::Encrypt => {
                v3!(self.C_EncryptMessage(
                    s,
                    p,
                    pl,
                    aad.as_ptr(),
                    aad.len(),
                    input.as_ptr(),
                    input.len(),
                    o,
                    ol
                ))
            }
            MessageKind::Decrypt => {
                v3!(self.C_DecryptMessage(
                    s,
                    p,
                    pl,
                    aad.as_ptr(),
                    aad.len(),
                    input.as_ptr(),
                    input.len(),
                    o,
                    ol
                ))
            }
            MessageKind::Sign | MessageKind::Verify => Err(Error::FunctionNotSupported),
        }
    }
    fn crypt_message_begin(
        &self,
        kind: MessageKind,
        s: S,
        param: Param<'_>,
        aad: InBuf<'_>,
    ) -> Result<()> {
        let (p, pl) = param.as_raw();
        match kind {
            MessageKind::Encrypt => {
                v3!(self.C_EncryptMessageBegin(s, p, pl, aad.as_ptr(), aad.len()))
            }
            MessageKind::Decrypt => {
                v3!(self.C_DecryptMessageBegin(s, p, pl, aad.as_ptr(), aad.len()))
            }
            MessageKind::Sign | MessageKind::Verify => Err(Error::FunctionNotSupported),
        }
    }
    fn crypt_message_next(
        &self,
        kind: MessageKind,
        s: S,
        param: Param<'_>,
        input: InBuf<'_>,
        mut out: OutBuf<'_>,
        flags: CK_FLAGS,
    ) -> Result<()> {
        let (p, pl) = param.as_raw();
        let (o, ol) = out.as_raw();
        match kind {
            MessageKind::Encrypt => {
                v3!(self.C_EncryptMessageNext(s, p, pl, input.as_ptr(), input.len(), o, ol, flags))
            }
            MessageKind::Decrypt => {
                v3!(self.C_DecryptMessageNext(s, p, pl, input.as_ptr(), input.len(), o, ol, flags))
            }
            MessageKind::Sign | MessageKind::Verify => Err(Error::FunctionNotSupported),
        }
    }
    fn sign_message(
        &self,
        kind: MessageKind,
        s: S,
        param: Param<'_>,
        data: InBuf<'_>,
        sig: MessageSignature<'_>,
    ) -> Result<()> {
        let (p, pl) = param.as_raw();
        let (sig, direction) = sig.as_raw();
        match (kind, direction) {
            (MessageKind::Sign, SignatureDirection::Produce(len)) => {
                v3!(self.C_SignMessage(s, p, pl, data.as_ptr(), data.len(), sig, len))
            }
            (MessageKind::Verify, SignatureDirection::Check(len)) => {
                v3!(self.C_VerifyMessage(s, p, pl, data.as_ptr(), data.len(), sig, len))
            }
            _ => Err(Error::ArgumentsBad),
        }
    }
    fn sign_message_begin(&self, kind: MessageKind, s: S, param: Param<'_>) -> Result<()> {
        let (p, pl) = param.as_raw();
        match kind {
            MessageKind::Sign => v3!(self.C_SignMessageBegin(s, p, pl)),
            MessageKind::Verify => v3!(self.C_VerifyMessageBegin(s, p, pl)),
            MessageKind::Encrypt | MessageKind::Decrypt => Err(Error::FunctionNotSupported),
        }
    }
    fn sign_message_next(
        &self,
        kind: MessageKind,
        s: S,
        param: Param<'_>,
        data: InBuf<'_>,
        sig: MessageSignature<'_>,
    ) -> Result<()> {
        let (p, pl) = param.as_raw();
        let (sig, direction) = sig.as_raw();
        match (kind, direction) {
            (MessageKind::Sign, SignatureDirection::Produce(len)) => {
                v3!(self.C_SignMessageNext(s, p, pl, data.as_ptr(), data.len(), sig, len))
            }
            (MessageKind::Verify, SignatureDirection::Check(len)) => {
                v3!(self.C_VerifyMessageNext(s, p, pl, data.as_ptr(), data.len(), sig, len))
            }
            _ => Err(Error::ArgumentsBad),
        }
    }
}

// --- For `p11gate doctor` (src/doctor): a module used exactly as Vault uses it ---

impl Upstream {
    /// Loads the module at `path` the way Vault does: `dlopen` and `C_GetFunctionList` only
    /// (never `C_GetInterface`). Like every module, it stays loaded for the life of the process.
    /// The error is the loader's own text (`dlerror()`).
    pub fn load_like_vault(path: &Path) -> std::result::Result<Upstream, String> {
        let module = Arc::new(Module::open(path, false)?);
        MODULES.lock().push(module.clone());
        Ok(Upstream {
            name: path.display().to_string(),
            module,
            init_args: None,
            initialized_by_us: AtomicBool::new(false),
            initialized_in: AtomicU32::new(0),
            slow_call: None,
            health: None,
            last_init: Mutex::new(None),
        })
    }

    /// `C_Initialize` as Vault calls it: `CKF_OS_LOCKING_OK` and no mutex functions.
    pub fn initialize_like_vault(&self) -> Result<()> {
        self.initialize_with_os_locking(CKF_OS_LOCKING_OK)?;
        self.initialized_by_us.store(true, Ordering::Relaxed);
        self.initialized_in
            .store(crate::runtime::fork_generation(), Ordering::Relaxed);
        Ok(())
    }

    /// `C_GetInfo`: who made the module and which Cryptoki version it reports.
    pub fn library_info(&self) -> Result<CK_INFO> {
        let mut info = CK_INFO::default();
        v2!(self.C_GetInfo(&mut info))?;
        Ok(info)
    }
}
