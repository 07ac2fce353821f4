//! Backends: what finally performs a PKCS#11 operation.
//!
//! [`Backend`] has one method per PKCS#11 function that reaches a token. Slot ids and session
//! handles here are the backend's own (the router has already translated p11gate's virtual
//! ones); object handles pass through unchanged. Every method defaults to
//! `CKR_FUNCTION_NOT_SUPPORTED`, so a backend implements exactly what it does; the upstream
//! backend forwards all of them.
//!
//! Arguments are the checked views of `ffi::args`: they keep the caller's pointers, so a
//! forwarding backend passes on exactly what the application gave, and a Rust backend uses their
//! safe accessors.

pub mod health;
pub mod upstream;

use pkcs11_sys::*;

use crate::error::{Error, Result};
use crate::ffi::args::{InBuf, Mechanism, MessageSignature, MutBuf, OutBuf, Param, Template};

type S = CK_SESSION_HANDLE;
type O = CK_OBJECT_HANDLE;

/// How p11gate initialises a backend, derived from the application's `CK_C_INITIALIZE_ARGS`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InitArgs {
    /// `CKF_OS_LOCKING_OK` and/or `CKF_LIBRARY_CANT_CREATE_OS_THREADS`.
    pub flags: CK_FLAGS,
    /// The application's mutex callbacks, when it supplied them.
    pub mutexes: Option<MutexCallbacks>,
}

/// The four application mutex callbacks, all present.
#[derive(Debug, Clone, Copy)]
pub struct MutexCallbacks {
    pub create: CK_CREATEMUTEX,
    pub destroy: CK_DESTROYMUTEX,
    pub lock: CK_LOCKMUTEX,
    pub unlock: CK_UNLOCKMUTEX,
}

/// Which PKCS#11 interface versions a backend offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// The 3.0 functions (`C_LoginUser`, `C_SessionCancel`, the message functions).
    pub v3_0: bool,
}

/// One token provider. Methods take `&self` and may be called from many threads at once.
#[allow(unused_variables, clippy::too_many_arguments)]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// A short name for logs (the configured upstream name).
    fn name(&self) -> &str;
    /// The name and where the backend comes from, for the initialisation log line.
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// The file it was loaded from, if any (audit `load` records).
    fn source_path(&self) -> Option<&std::path::Path> {
        None
    }
    fn capabilities(&self) -> Capabilities;

    // --- General purpose (PKCS#11 2.40 §5.4) ---
    fn initialize(&self, args: &InitArgs) -> Result<()>;
    fn finalize(&self) -> Result<()>;

    // --- Reconnection (`reconnect = true`, see `router::reconnect`) ---
    /// The health of a backend that reconnects after its device went away; None for the others.
    fn health(&self) -> Option<std::sync::Arc<health::Health>> {
        None
    }
    /// Finalises the backend (best effort) and initialises it again with the arguments of the
    /// last `initialize`: the reconnect thread's first step.
    fn reinitialize(&self) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }

    // --- Slot and token management (§5.5) ---
    fn slot_list(&self, token_present: bool, out: OutBuf<'_, CK_SLOT_ID>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn slot_info(&self, slot: CK_SLOT_ID, info: &mut CK_SLOT_INFO) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn token_info(&self, slot: CK_SLOT_ID, info: &mut CK_TOKEN_INFO) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn wait_for_slot_event(&self, flags: CK_FLAGS, slot: &mut CK_SLOT_ID) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn mechanism_list(&self, slot: CK_SLOT_ID, out: OutBuf<'_, CK_MECHANISM_TYPE>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        mech: CK_MECHANISM_TYPE,
        info: &mut CK_MECHANISM_INFO,
    ) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn init_token(&self, slot: CK_SLOT_ID, so_pin: InBuf<'_>, label: &[u8; 32]) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn init_pin(&self, s: S, pin: InBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn set_pin(&self, s: S, old: InBuf<'_>, new: InBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }

    // --- Session management (§5.6) ---
    fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<S> {
        Err(Error::FunctionNotSupported)
    }
    fn close_session(&self, s: S) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn close_all_sessions(&self, slot: CK_SLOT_ID) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn session_info(&self, s: S, info: &mut CK_SESSION_INFO) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn operation_state(&self, s: S, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn set_operation_state(&self, s: S, state: InBuf<'_>, enc_key: O, auth_key: O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn login(&self, s: S, user: CK_USER_TYPE, pin: InBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn logout(&self, s: S) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }

    // --- Object management (§5.7) ---
    fn create_object(&self, s: S, t: Template<'_>, obj: &mut O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn copy_object(&self, s: S, from: O, t: Template<'_>, obj: &mut O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn destroy_object(&self, s: S, obj: O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn object_size(&self, s: S, obj: O, size: &mut CK_ULONG) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn get_attribute_value(&self, s: S, obj: O, t: Template<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn set_attribute_value(&self, s: S, obj: O, t: Template<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn find_objects_init(&self, s: S, t: Template<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    /// `found` has room for the caller's maximum; `count` receives how many were written.
    fn find_objects(&self, s: S, found: &mut [O], count: &mut CK_ULONG) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn find_objects_final(&self, s: S) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }

    // --- Encryption and decryption (§5.8, §5.9) ---
    fn encrypt_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn encrypt(&self, s: S, data: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn encrypt_update(&self, s: S, part: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn encrypt_final(&self, s: S, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn decrypt_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn decrypt(&self, s: S, data: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn decrypt_update(&self, s: S, part: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn decrypt_final(&self, s: S, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }

    // --- Message digesting (§5.10) ---
    fn digest_init(&self, s: S, m: Mechanism<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn digest(&self, s: S, data: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn digest_update(&self, s: S, part: InBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn digest_key(&self, s: S, key: O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn digest_final(&self, s: S, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }

    // --- Signing and MACing, verification (§5.11, §5.12) ---
    fn sign_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn sign(&self, s: S, data: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn sign_update(&self, s: S, part: InBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn sign_final(&self, s: S, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn sign_recover_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn sign_recover(&self, s: S, data: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn verify_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn verify(&self, s: S, data: InBuf<'_>, sig: InBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn verify_update(&self, s: S, part: InBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn verify_final(&self, s: S, sig: InBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn verify_recover_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn verify_recover(&self, s: S, sig: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }

    // --- Dual-function operations (§5.13) ---
    fn digest_encrypt_update(&self, s: S, part: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn decrypt_digest_update(&self, s: S, part: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn sign_encrypt_update(&self, s: S, part: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn decrypt_verify_update(&self, s: S, part: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }

    // --- Key management (§5.14) ---
    fn generate_key(&self, s: S, m: Mechanism<'_>, t: Template<'_>, key: &mut O) -> Result<()> {
        Err(Error::FunctionNotSupported)
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
        Err(Error::FunctionNotSupported)
    }
    fn wrap_key(
        &self,
        s: S,
        m: Mechanism<'_>,
        wrapping_key: O,
        key: O,
        out: OutBuf<'_>,
    ) -> Result<()> {
        Err(Error::FunctionNotSupported)
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
        Err(Error::FunctionNotSupported)
    }
    fn derive_key(
        &self,
        s: S,
        m: Mechanism<'_>,
        base_key: O,
        t: Template<'_>,
        key: &mut O,
    ) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }

    // --- Random numbers (§5.15) ---
    fn seed_random(&self, s: S, seed: InBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn generate_random(&self, s: S, out: MutBuf<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }

    // --- Parallel function management (§5.16, legacy) ---
    fn function_status(&self, s: S) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn cancel_function(&self, s: S) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }

    // --- PKCS#11 3.0 additions (3.0 §5.5, §5.6, §5.14–§5.19) ---
    fn login_user(
        &self,
        s: S,
        user: CK_USER_TYPE,
        pin: InBuf<'_>,
        username: InBuf<'_>,
    ) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn session_cancel(&self, s: S, flags: CK_FLAGS) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn message_init(&self, kind: MessageKind, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    fn message_final(&self, kind: MessageKind, s: S) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    /// `C_EncryptMessage` / `C_DecryptMessage`: one whole message.
    fn crypt_message(
        &self,
        kind: MessageKind,
        s: S,
        param: Param<'_>,
        aad: InBuf<'_>,
        input: InBuf<'_>,
        out: OutBuf<'_>,
    ) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    /// `C_EncryptMessageBegin` / `C_DecryptMessageBegin`.
    fn crypt_message_begin(
        &self,
        kind: MessageKind,
        s: S,
        param: Param<'_>,
        aad: InBuf<'_>,
    ) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    /// `C_EncryptMessageNext` / `C_DecryptMessageNext`.
    fn crypt_message_next(
        &self,
        kind: MessageKind,
        s: S,
        param: Param<'_>,
        input: InBuf<'_>,
        out: OutBuf<'_>,
        flags: CK_FLAGS,
    ) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    /// `C_SignMessage` / `C_VerifyMessage`.
    fn sign_message(
        &self,
        kind: MessageKind,
        s: S,
        param: Param<'_>,
        data: InBuf<'_>,
        sig: MessageSignature<'_>,
    ) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    /// `C_SignMessageBegin` / `C_VerifyMessageBegin`.
    fn sign_message_begin(&self, kind: MessageKind, s: S, param: Param<'_>) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
    /// `C_SignMessageNext` / `C_VerifyMessageNext`.
    fn sign_message_next(
        &self,
        kind: MessageKind,
        s: S,
        param: Param<'_>,
        data: InBuf<'_>,
        sig: MessageSignature<'_>,
    ) -> Result<()> {
        Err(Error::FunctionNotSupported)
    }
}

/// Which of the four 3.0 message-based operation families a call belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Encrypt,
    Decrypt,
    Sign,
    Verify,
}
