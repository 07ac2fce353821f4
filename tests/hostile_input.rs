//! Hostile input at the raw C API: one table, one row per case (the function, what is hostile
//! about the call, the exact `CK_RV` expected), run against the built libp11gate.so through
//! `C_GetFunctionList` (and `C_GetInterfaceList` / `C_GetInterface`).
//!
//! Every one of the 68 PKCS#11 2.40 functions is called with NULL required pointers, session
//! handles that are 0, never issued, forged, `CK_ULONG_MAX` or closed, object and key handles
//! that are 0 or never issued, zero and `CK_ULONG_MAX` lengths with NULL or real buffers,
//! mechanisms with a NULL parameter of non-zero length or a `CK_GCM_PARAMS` of the wrong size,
//! and templates with NULL values, bogus attribute types or a NULL array with a count.
//!
//! The table runs twice, each time in a child process (a crash must not take the test harness
//! down, and the child must exit 0 after printing "N cases, 0 unexpected"):
//!
//! - through p11gate to SoftHSMv2, with OpenSC's pkcs11-spy between the two: for every row
//!   p11gate must refuse itself (the NULL pointers it checks, session handles it did not issue
//!   or already closed) the spy's log must not grow during the call, so the upstream never saw
//!   it;
//! - on p11gate's built-in soft token (`P11GATE_HOME`, `p11gate token init`).
//!
//! Where the spec allows more than one code, the row's comment says which and why, and the row
//! asserts the one each backend gives. A row that fails keeps asserting the right behaviour.

mod common;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr::null_mut;

use pkcs11_sys::*;

use common::{SoftHsm, SO_PIN, USER_PIN};

/// Names the scenario a child process plays: "softhsm" or "soft".
const SCENARIO_VAR: &str = "P11GATE_HOSTILE_SCENARIO";
/// Rows (by number) a child must not run because they crashed an earlier child.
const SKIP_VAR: &str = "P11GATE_HOSTILE_SKIP";
const PKCS11_SPY: &str = "/usr/lib/x86_64-linux-gnu/pkcs11-spy.so";

/// A session handle p11gate never issued (p11gate's handles stay below 2^31).
const NEVER_ISSUED_SESSION: CK_SESSION_HANDLE = 0x5eed_0bad_c0de;
/// An object handle neither backend issued (both hand out small numbers).
const NEVER_ISSUED_OBJECT: CK_OBJECT_HANDLE = 0x7ead_beef;
/// An attribute type no spec defines.
const BOGUS_TYPE: CK_ATTRIBUTE_TYPE = 0xdead_beef;
const BOGUS_MECHANISM: CK_MECHANISM_TYPE = 0xdead_beef;
const BOGUS_SLOT: CK_SLOT_ID = 0xdead_beef;
const MAX: CK_ULONG = CK_ULONG::MAX;
const UNAVAILABLE: CK_ULONG = CK_ULONG::MAX;
/// A key handle that names no key in C_EncryptInit, C_DecryptInit, C_SignInit, C_VerifyInit
/// (§5.8-5.12 list CKR_KEY_HANDLE_INVALID, not CKR_OBJECT_HANDLE_INVALID). SoftHSMv2 answers
/// CKR_OBJECT_HANDLE_INVALID, which p11gate passes through (object handles are the
/// upstream's); the soft token must give the spec's code.
const KEY_HANDLE_INVALID: Expect = Expect::Split {
    softhsm: CKR_OBJECT_HANDLE_INVALID,
    soft: CKR_KEY_HANDLE_INVALID,
};
/// CKA_LABEL of the fixture's AES key.
const AES_LABEL: &[u8] = b"hostile-aes-key";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// p11gate -> pkcs11-spy -> SoftHSMv2.
    SoftHsm,
    /// p11gate's built-in soft token.
    Soft,
}

/// What a row expects.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The same code from both backends.
    Both(CK_RV),
    /// Each backend's own answer, where the spec allows either (the row's comment says why).
    Split { softhsm: CK_RV, soft: CK_RV },
}

impl Expect {
    fn rv(self, backend: Backend) -> CK_RV {
        match (self, backend) {
            (Expect::Both(rv), _) => rv,
            (Expect::Split { softhsm, .. }, Backend::SoftHsm) => softhsm,
            (Expect::Split { soft, .. }, Backend::Soft) => soft,
        }
    }
}

type Run = Box<dyn Fn(&Fx, &mut Vec<String>) -> CK_RV>;
/// A data function: (session, input, input length, output, output length pointer).
type DataCall = fn(&Fx, CK_SESSION_HANDLE, *mut u8, CK_ULONG, *mut u8, *mut CK_ULONG) -> CK_RV;

struct Case {
    func: &'static str,
    hostile: String,
    expect: Expect,
    /// p11gate must answer this itself: the upstream never sees the call.
    local: bool,
    run: Run,
}

type GetInterfaceList = unsafe extern "C" fn(CK_INTERFACE_PTR, CK_ULONG_PTR) -> CK_RV;
type GetInterface =
    unsafe extern "C" fn(CK_UTF8CHAR_PTR, CK_VERSION_PTR, CK_INTERFACE_PTR_PTR, CK_FLAGS) -> CK_RV;

/// What the rows work with: the function list, a slot with a logged-in token, a fresh session
/// per row, a closed one, and keys and a data object made in an anchor session.
struct Fx {
    f: &'static CK_FUNCTION_LIST,
    get_interface_list: GetInterfaceList,
    get_interface: GetInterface,
    slot: CK_SLOT_ID,
    /// The row's own session, opened before it runs and closed after (ending any operation).
    session: Cell<CK_SESSION_HANDLE>,
    /// A session opened and closed before the table runs.
    stale: CK_SESSION_HANDLE,
    /// AES-256, session object: encrypt, decrypt, wrap, unwrap, derive; sensitive.
    aes: CK_OBJECT_HANDLE,
    /// A 32-byte generic secret: sign and verify with CKM_SHA256_HMAC.
    hmac: CK_OBJECT_HANDLE,
    /// A data object, for the calls that change or destroy objects.
    data: CK_OBJECT_HANDLE,
    /// How many slots with a token the backend lists (SoftHSMv2 adds an empty token's slot).
    slots_with_token: CK_ULONG,
    /// pkcs11-spy's log, in the SoftHSMv2 run.
    spy_log: Option<PathBuf>,
    /// The spy log's length when the row's hostile call starts: rows that first start an
    /// operation (which reaches the upstream, as it should) move it past that.
    mark: Cell<u64>,
}

impl Fx {
    fn s(&self) -> CK_SESSION_HANDLE {
        self.session.get()
    }

    /// Notes that what the row did so far may reach the upstream; its hostile call follows.
    fn mark(&self) {
        self.mark.set(spy_log_len(self.spy_log.as_deref()));
    }
}

/// Calls a function of the list.
macro_rules! ck {
    ($fx:expr, $name:ident($($arg:expr),* $(,)?)) => {{
        let func = $fx.f.$name.expect(concat!(stringify!($name), " in the function list"));
        // SAFETY: every pointer argument is NULL (deliberately, where the row says so) or points
        // to live memory of at least the size its length argument gives, for the duration of
        // the call; the one row that claims more room than it has (C_FindObjects with
        // ulMaxObjectCount = CK_ULONG_MAX) runs a search that matches nothing, so no backend
        // writes beyond the array.
        unsafe { func($($arg),*) }
    }};
}

fn mech(m: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: m,
        pParameter: null_mut(),
        ulParameterLen: 0,
    }
}

fn attr<T>(type_: CK_ATTRIBUTE_TYPE, value: &T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_,
        pValue: value as *const T as *mut c_void,
        ulValueLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

fn attr_bytes(type_: CK_ATTRIBUTE_TYPE, value: &[u8]) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_,
        pValue: value.as_ptr() as *mut c_void,
        ulValueLen: value.len() as CK_ULONG,
    }
}

fn attr_mut<T>(type_: CK_ATTRIBUTE_TYPE, value: &mut T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_,
        pValue: value as *mut T as *mut c_void,
        ulValueLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

fn attr_raw(type_: CK_ATTRIBUTE_TYPE, value: *mut c_void, len: CK_ULONG) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_,
        pValue: value,
        ulValueLen: len,
    }
}

fn rv_text(rv: CK_RV) -> String {
    format!("{} ({rv:#x})", p11gate::names::rv_name(rv))
}

/// Notes a failure of a call a row makes before its hostile one.
fn want_ok(errs: &mut Vec<String>, what: &str, rv: CK_RV) {
    if rv != CKR_OK {
        errs.push(format!("setup {what} returned {}", rv_text(rv)));
    }
}

fn want_len(errs: &mut Vec<String>, what: &str, got: CK_ULONG, want: CK_ULONG) {
    if got != want {
        errs.push(format!("{what} is {got:#x}, want {want:#x}"));
    }
}

fn encrypt_init(fx: &Fx, errs: &mut Vec<String>) {
    let mut m = mech(CKM_AES_ECB);
    want_ok(
        errs,
        "C_EncryptInit(AES-ECB)",
        ck!(fx, C_EncryptInit(fx.s(), &mut m, fx.aes)),
    );
    fx.mark();
}

fn decrypt_init(fx: &Fx, errs: &mut Vec<String>) {
    let mut m = mech(CKM_AES_ECB);
    want_ok(
        errs,
        "C_DecryptInit(AES-ECB)",
        ck!(fx, C_DecryptInit(fx.s(), &mut m, fx.aes)),
    );
    fx.mark();
}

fn digest_init(fx: &Fx, errs: &mut Vec<String>) {
    let mut m = mech(CKM_SHA256);
    want_ok(
        errs,
        "C_DigestInit(SHA-256)",
        ck!(fx, C_DigestInit(fx.s(), &mut m)),
    );
    fx.mark();
}

fn sign_init(fx: &Fx, errs: &mut Vec<String>) {
    let mut m = mech(CKM_SHA256_HMAC);
    want_ok(
        errs,
        "C_SignInit(HMAC-SHA256)",
        ck!(fx, C_SignInit(fx.s(), &mut m, fx.hmac)),
    );
    fx.mark();
}

fn verify_init(fx: &Fx, errs: &mut Vec<String>) {
    let mut m = mech(CKM_SHA256_HMAC);
    want_ok(
        errs,
        "C_VerifyInit(HMAC-SHA256)",
        ck!(fx, C_VerifyInit(fx.s(), &mut m, fx.hmac)),
    );
    fx.mark();
}

fn find_nothing_init(fx: &Fx, errs: &mut Vec<String>) {
    let label = b"no-object-has-this-label-7731";
    let mut t = [attr_bytes(CKA_LABEL, label)];
    want_ok(
        errs,
        "C_FindObjectsInit(no match)",
        ck!(fx, C_FindObjectsInit(fx.s(), t.as_mut_ptr(), 1)),
    );
    fx.mark();
}

/// The hostile session handles every session function is called with.
#[derive(Debug, Clone, Copy)]
enum BadSession {
    Zero,
    NeverIssued,
    Max,
    /// The row's own session with another generation: a handle p11gate could make, but not now.
    Forged,
    /// Opened, then closed.
    Stale,
}

impl BadSession {
    const ALL: [BadSession; 5] = [
        BadSession::Zero,
        BadSession::NeverIssued,
        BadSession::Max,
        BadSession::Forged,
        BadSession::Stale,
    ];

    fn describe(self) -> &'static str {
        match self {
            BadSession::Zero => "hSession = 0",
            BadSession::NeverIssued => "hSession never issued (0x5eed0badc0de)",
            BadSession::Max => "hSession = CK_ULONG_MAX",
            BadSession::Forged => "hSession of an open session with another generation",
            BadSession::Stale => "hSession closed (stale)",
        }
    }

    fn handle(self, fx: &Fx) -> CK_SESSION_HANDLE {
        match self {
            BadSession::Zero => 0,
            BadSession::NeverIssued => NEVER_ISSUED_SESSION,
            BadSession::Max => MAX,
            // Handles are generation << 18 | (index + 1).
            BadSession::Forged => fx.s() ^ (1 << 18),
            BadSession::Stale => fx.stale,
        }
    }
}

struct Table {
    cases: Vec<Case>,
}

impl Table {
    fn row(
        &mut self,
        func: &'static str,
        hostile: &str,
        expect: Expect,
        local: bool,
        run: impl Fn(&Fx, &mut Vec<String>) -> CK_RV + 'static,
    ) {
        self.cases.push(Case {
            func,
            hostile: hostile.to_string(),
            expect,
            local,
            run: Box::new(run),
        });
    }

    /// A row p11gate must refuse itself with `rv`, before any backend sees it.
    fn local(
        &mut self,
        func: &'static str,
        hostile: &str,
        rv: CK_RV,
        run: impl Fn(&Fx, &mut Vec<String>) -> CK_RV + 'static,
    ) {
        self.row(func, hostile, Expect::Both(rv), true, run);
    }

    /// A row the backend answers (p11gate forwards it, or the soft token decides).
    fn fwd(
        &mut self,
        func: &'static str,
        hostile: &str,
        expect: Expect,
        run: impl Fn(&Fx, &mut Vec<String>) -> CK_RV + 'static,
    ) {
        self.row(func, hostile, expect, false, run);
    }

    /// One row per hostile session handle: `call` makes an otherwise valid call.
    fn sessions(&mut self, func: &'static str, call: fn(&Fx, CK_SESSION_HANDLE) -> CK_RV) {
        for kind in BadSession::ALL {
            self.local(
                func,
                kind.describe(),
                CKR_SESSION_HANDLE_INVALID,
                move |fx, _| call(fx, kind.handle(fx)),
            );
        }
    }
}

use Expect::{Both, Split};

unsafe extern "C" fn create_mutex(_: CK_VOID_PTR_PTR) -> CK_RV {
    CKR_OK
}

/// The whole table. Building it calls nothing: the parent counts its rows.
fn table() -> Vec<Case> {
    let mut t = Table { cases: Vec::new() };
    general(&mut t);
    slots_and_tokens(&mut t);
    sessions(&mut t);
    objects(&mut t);
    encryption(&mut t);
    decryption(&mut t);
    digests(&mut t);
    signatures(&mut t);
    verification(&mut t);
    dual_function(&mut t);
    keys(&mut t);
    random_and_legacy(&mut t);
    t.cases
}

fn general(t: &mut Table) {
    // p11gate checks CK_C_INITIALIZE_ARGS before it looks at whether it is initialised: bad
    // arguments are CKR_ARGUMENTS_BAD (2.40 §5.4) even now; the spec does not order the two.
    t.local(
        "C_Initialize",
        "pReserved not NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut reserved = 0u64;
            let mut args = CK_C_INITIALIZE_ARGS {
                flags: CKF_OS_LOCKING_OK,
                pReserved: &mut reserved as *mut u64 as *mut c_void,
                ..Default::default()
            };
            ck!(fx, C_Initialize(&mut args as *mut _ as *mut c_void))
        },
    );
    t.local(
        "C_Initialize",
        "only CreateMutex of the four callbacks",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut args = CK_C_INITIALIZE_ARGS {
                CreateMutex: Some(create_mutex),
                ..Default::default()
            };
            ck!(fx, C_Initialize(&mut args as *mut _ as *mut c_void))
        },
    );
    t.local(
        "C_Initialize",
        "pInitArgs = NULL while initialised",
        CKR_CRYPTOKI_ALREADY_INITIALIZED,
        |fx, _| ck!(fx, C_Initialize(null_mut())),
    );
    t.local(
        "C_Finalize",
        "pReserved not NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut reserved = 0u64;
            ck!(fx, C_Finalize(&mut reserved as *mut u64 as *mut c_void))
        },
    );
    t.local("C_GetInfo", "pInfo = NULL", CKR_ARGUMENTS_BAD, |fx, _| {
        ck!(fx, C_GetInfo(null_mut()))
    });
    t.local(
        "C_GetFunctionList",
        "ppFunctionList = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GetFunctionList(null_mut())),
    );
    // The 3.0 entry points (neither backend offers 3.0, so the 3.0 functions themselves are not
    // reachable: C_GetInterface for 3.0 is refused, as the last rows here check).
    t.local(
        "C_GetInterfaceList",
        "pulCount = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut list = [CK_INTERFACE::default(); 4];
            // SAFETY: `list` has room for 4 interfaces; the NULL count is the hostile part.
            unsafe { (fx.get_interface_list)(list.as_mut_ptr(), null_mut()) }
        },
    );
    t.local(
        "C_GetInterfaceList",
        "pInterfacesList = NULL, *pulCount = CK_ULONG_MAX (length query)",
        CKR_OK,
        |fx, errs| {
            let mut n = MAX;
            // SAFETY: a length query: NULL list, a live count.
            let rv = unsafe { (fx.get_interface_list)(null_mut(), &mut n) };
            want_len(errs, "*pulCount", n, 1);
            rv
        },
    );
    t.local(
        "C_GetInterfaceList",
        "*pulCount = 0 with a non-NULL list",
        CKR_BUFFER_TOO_SMALL,
        |fx, errs| {
            let mut list = [CK_INTERFACE::default(); 1];
            let mut n = 0;
            // SAFETY: `list` has room for 1 interface, more than the 0 claimed.
            let rv = unsafe { (fx.get_interface_list)(list.as_mut_ptr(), &mut n) };
            want_len(errs, "*pulCount", n, 1);
            rv
        },
    );
    t.local(
        "C_GetInterface",
        "ppInterface = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            // SAFETY: NULL name and version mean "any"; the NULL output is the hostile part.
            unsafe { (fx.get_interface)(null_mut(), null_mut(), null_mut(), 0) }
        },
    );
    // 3.0 §5.4 gives no code for "no such interface"; p11gate answers CKR_ARGUMENTS_BAD, as
    // OpenSC and p11-kit do, and leaves *ppInterface alone.
    t.local(
        "C_GetInterface",
        "unknown interface name \"bogus\"",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let name = b"bogus\0";
            let mut out: CK_INTERFACE_PTR = null_mut();
            // SAFETY: a NUL-terminated name and a live output pointer.
            unsafe { (fx.get_interface)(name.as_ptr() as *mut u8, null_mut(), &mut out, 0) }
        },
    );
    t.local(
        "C_GetInterface",
        "\"PKCS 11\" version 3.0 (not offered by this upstream)",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let name = b"PKCS 11\0";
            let mut v = CK_VERSION { major: 3, minor: 0 };
            let mut out: CK_INTERFACE_PTR = null_mut();
            // SAFETY: a NUL-terminated name, a live version and output pointer.
            unsafe { (fx.get_interface)(name.as_ptr() as *mut u8, &mut v, &mut out, 0) }
        },
    );
    t.local(
        "C_GetInterface",
        "flags 0xffffffff no interface has",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut out: CK_INTERFACE_PTR = null_mut();
            // SAFETY: NULL name and version mean "any"; a live output pointer.
            unsafe { (fx.get_interface)(null_mut(), null_mut(), &mut out, 0xffff_ffff) }
        },
    );
}

fn slots_and_tokens(t: &mut Table) {
    t.local(
        "C_GetSlotList",
        "pSlotList = NULL, pulCount = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GetSlotList(CK_TRUE, null_mut(), null_mut())),
    );
    t.local(
        "C_GetSlotList",
        "pulCount = NULL with a list",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut list = [0 as CK_SLOT_ID; 8];
            ck!(fx, C_GetSlotList(CK_TRUE, list.as_mut_ptr(), null_mut()))
        },
    );
    t.fwd(
        "C_GetSlotList",
        "pSlotList = NULL, *pulCount = CK_ULONG_MAX (length query)",
        Both(CKR_OK),
        |fx, errs| {
            let mut n = MAX;
            let rv = ck!(fx, C_GetSlotList(CK_TRUE, null_mut(), &mut n));
            want_len(errs, "*pulCount", n, fx.slots_with_token);
            rv
        },
    );
    t.fwd(
        "C_GetSlotList",
        "*pulCount = 0 with a non-NULL list",
        Both(CKR_BUFFER_TOO_SMALL),
        |fx, errs| {
            let mut list = [0 as CK_SLOT_ID; 1];
            let mut n = 0;
            let rv = ck!(fx, C_GetSlotList(CK_TRUE, list.as_mut_ptr(), &mut n));
            want_len(errs, "*pulCount", n, fx.slots_with_token);
            rv
        },
    );
    t.fwd(
        "C_GetSlotList",
        "*pulCount = CK_ULONG_MAX with a 64-entry list",
        Both(CKR_OK),
        |fx, errs| {
            let mut list = [0 as CK_SLOT_ID; 64];
            let mut n = MAX;
            let rv = ck!(fx, C_GetSlotList(CK_TRUE, list.as_mut_ptr(), &mut n));
            want_len(errs, "*pulCount", n, fx.slots_with_token);
            if list[0] != fx.slot {
                errs.push(format!("slot {} listed, want {}", list[0], fx.slot));
            }
            rv
        },
    );
    t.local(
        "C_GetSlotInfo",
        "pInfo = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GetSlotInfo(fx.slot, null_mut())),
    );
    for (what, slot) in [
        ("slotID never issued (0xdeadbeef)", BOGUS_SLOT),
        ("slotID = CK_ULONG_MAX", MAX),
    ] {
        t.fwd(
            "C_GetSlotInfo",
            what,
            Both(CKR_SLOT_ID_INVALID),
            move |fx, _| {
                let mut info = CK_SLOT_INFO::default();
                ck!(fx, C_GetSlotInfo(slot, &mut info))
            },
        );
        t.fwd(
            "C_GetTokenInfo",
            what,
            Both(CKR_SLOT_ID_INVALID),
            move |fx, _| {
                let mut info = CK_TOKEN_INFO::default();
                ck!(fx, C_GetTokenInfo(slot, &mut info))
            },
        );
    }
    t.local(
        "C_GetTokenInfo",
        "pInfo = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GetTokenInfo(fx.slot, null_mut())),
    );
    t.local(
        "C_WaitForSlotEvent",
        "pSlot = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            ck!(
                fx,
                C_WaitForSlotEvent(CKF_DONT_BLOCK, null_mut(), null_mut())
            )
        },
    );
    t.local(
        "C_WaitForSlotEvent",
        "pReserved not NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut slot = 0;
            let mut reserved = 0u64;
            ck!(
                fx,
                C_WaitForSlotEvent(
                    CKF_DONT_BLOCK,
                    &mut slot,
                    &mut reserved as *mut u64 as *mut c_void
                )
            )
        },
    );
    t.local(
        "C_GetMechanismList",
        "pMechanismList = NULL, pulCount = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GetMechanismList(fx.slot, null_mut(), null_mut())),
    );
    t.local(
        "C_GetMechanismList",
        "pulCount = NULL with a list",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut list = [0 as CK_MECHANISM_TYPE; 8];
            ck!(
                fx,
                C_GetMechanismList(fx.slot, list.as_mut_ptr(), null_mut())
            )
        },
    );
    t.fwd(
        "C_GetMechanismList",
        "pMechanismList = NULL, *pulCount = CK_ULONG_MAX (length query)",
        Both(CKR_OK),
        |fx, errs| {
            let mut n = MAX;
            let rv = ck!(fx, C_GetMechanismList(fx.slot, null_mut(), &mut n));
            if n == 0 || n > 1024 {
                errs.push(format!("*pulCount = {n:#x} after a length query"));
            }
            rv
        },
    );
    t.fwd(
        "C_GetMechanismList",
        "*pulCount = 0 with a non-NULL list",
        Both(CKR_BUFFER_TOO_SMALL),
        |fx, errs| {
            let mut list = [0 as CK_MECHANISM_TYPE; 1];
            let mut n = 0;
            let rv = ck!(fx, C_GetMechanismList(fx.slot, list.as_mut_ptr(), &mut n));
            if n <= 1 || n > 1024 {
                errs.push(format!("*pulCount = {n:#x}, want the number of mechanisms"));
            }
            rv
        },
    );
    t.fwd(
        "C_GetMechanismList",
        "*pulCount = CK_ULONG_MAX with a 1024-entry list",
        Both(CKR_OK),
        |fx, errs| {
            let mut list = vec![0 as CK_MECHANISM_TYPE; 1024];
            let mut n = MAX;
            let rv = ck!(fx, C_GetMechanismList(fx.slot, list.as_mut_ptr(), &mut n));
            if n == 0 || n > 1024 || !list[..n.min(1024) as usize].contains(&CKM_AES_ECB) {
                errs.push(format!("*pulCount = {n:#x}, or no CKM_AES_ECB listed"));
            }
            rv
        },
    );
    t.fwd(
        "C_GetMechanismList",
        "slotID never issued",
        Both(CKR_SLOT_ID_INVALID),
        |fx, _| {
            let mut n = 0;
            ck!(fx, C_GetMechanismList(BOGUS_SLOT, null_mut(), &mut n))
        },
    );
    t.local(
        "C_GetMechanismInfo",
        "pInfo = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GetMechanismInfo(fx.slot, CKM_AES_ECB, null_mut())),
    );
    t.fwd(
        "C_GetMechanismInfo",
        "type = 0xdeadbeef",
        Both(CKR_MECHANISM_INVALID),
        |fx, _| {
            let mut info = CK_MECHANISM_INFO::default();
            ck!(fx, C_GetMechanismInfo(fx.slot, BOGUS_MECHANISM, &mut info))
        },
    );
    t.fwd(
        "C_GetMechanismInfo",
        "slotID never issued",
        Both(CKR_SLOT_ID_INVALID),
        |fx, _| {
            let mut info = CK_MECHANISM_INFO::default();
            ck!(fx, C_GetMechanismInfo(BOGUS_SLOT, CKM_AES_ECB, &mut info))
        },
    );
    // C_InitToken: never with valid arguments (the token is in use).
    t.local(
        "C_InitToken",
        "pPin = NULL, ulPinLen = 8",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let label = [b' '; 32];
            ck!(
                fx,
                C_InitToken(fx.slot, null_mut(), 8, label.as_ptr() as *mut u8)
            )
        },
    );
    t.local(
        "C_InitToken",
        "pPin = NULL, ulPinLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let label = [b' '; 32];
            ck!(
                fx,
                C_InitToken(fx.slot, null_mut(), MAX, label.as_ptr() as *mut u8)
            )
        },
    );
    t.local(
        "C_InitToken",
        "pLabel = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let pin = SO_PIN.as_bytes();
            ck!(
                fx,
                C_InitToken(
                    fx.slot,
                    pin.as_ptr() as *mut u8,
                    pin.len() as CK_ULONG,
                    null_mut()
                )
            )
        },
    );
    t.fwd(
        "C_InitToken",
        "slotID never issued",
        Both(CKR_SLOT_ID_INVALID),
        |fx, _| {
            let pin = SO_PIN.as_bytes();
            let label = [b' '; 32];
            ck!(
                fx,
                C_InitToken(
                    BOGUS_SLOT,
                    pin.as_ptr() as *mut u8,
                    pin.len() as CK_ULONG,
                    label.as_ptr() as *mut u8
                )
            )
        },
    );
    t.local(
        "C_InitPIN",
        "pPin = NULL, ulPinLen = 6",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_InitPIN(fx.s(), null_mut(), 6)),
    );
    t.local(
        "C_InitPIN",
        "pPin = NULL, ulPinLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_InitPIN(fx.s(), null_mut(), MAX)),
    );
    t.sessions("C_InitPIN", |fx, h| {
        let pin = b"123456";
        ck!(fx, C_InitPIN(h, pin.as_ptr() as *mut u8, 6))
    });
    t.local(
        "C_SetPIN",
        "pOldPin = NULL, ulOldLen = 6",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let new = b"654321";
            ck!(
                fx,
                C_SetPIN(fx.s(), null_mut(), 6, new.as_ptr() as *mut u8, 6)
            )
        },
    );
    t.local(
        "C_SetPIN",
        "pNewPin = NULL, ulNewLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let old = USER_PIN.as_bytes();
            ck!(
                fx,
                C_SetPIN(
                    fx.s(),
                    old.as_ptr() as *mut u8,
                    old.len() as CK_ULONG,
                    null_mut(),
                    MAX
                )
            )
        },
    );
    t.sessions("C_SetPIN", |fx, h| {
        let old = USER_PIN.as_bytes();
        let new = b"654321";
        ck!(
            fx,
            C_SetPIN(
                h,
                old.as_ptr() as *mut u8,
                old.len() as CK_ULONG,
                new.as_ptr() as *mut u8,
                6
            )
        )
    });
}

fn sessions(t: &mut Table) {
    t.local(
        "C_OpenSession",
        "phSession = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            ck!(
                fx,
                C_OpenSession(
                    fx.slot,
                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                    null_mut(),
                    None,
                    null_mut()
                )
            )
        },
    );
    t.fwd(
        "C_OpenSession",
        "flags without CKF_SERIAL_SESSION",
        Both(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
        |fx, _| {
            let mut h = 0;
            let rv = ck!(fx, C_OpenSession(fx.slot, 0, null_mut(), None, &mut h));
            if rv == CKR_OK {
                ck!(fx, C_CloseSession(h));
            }
            rv
        },
    );
    t.fwd(
        "C_OpenSession",
        "slotID never issued",
        Both(CKR_SLOT_ID_INVALID),
        |fx, _| {
            let mut h = 0;
            let rv = ck!(
                fx,
                C_OpenSession(BOGUS_SLOT, CKF_SERIAL_SESSION, null_mut(), None, &mut h)
            );
            if rv == CKR_OK {
                ck!(fx, C_CloseSession(h));
            }
            rv
        },
    );
    t.sessions("C_CloseSession", |fx, h| ck!(fx, C_CloseSession(h)));
    t.fwd(
        "C_CloseAllSessions",
        "slotID never issued",
        Both(CKR_SLOT_ID_INVALID),
        |fx, _| ck!(fx, C_CloseAllSessions(BOGUS_SLOT)),
    );
    t.local(
        "C_GetSessionInfo",
        "pInfo = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GetSessionInfo(fx.s(), null_mut())),
    );
    t.sessions("C_GetSessionInfo", |fx, h| {
        let mut info = CK_SESSION_INFO::default();
        ck!(fx, C_GetSessionInfo(h, &mut info))
    });
    t.local(
        "C_GetOperationState",
        "pOperationState = NULL, pulOperationStateLen = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GetOperationState(fx.s(), null_mut(), null_mut())),
    );
    t.local(
        "C_GetOperationState",
        "pulOperationStateLen = NULL with a buffer",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut buf = [0u8; 64];
            ck!(
                fx,
                C_GetOperationState(fx.s(), buf.as_mut_ptr(), null_mut())
            )
        },
    );
    // SoftHSMv2 implements no operation state (CKR_FUNCTION_NOT_SUPPORTED, allowed by §5.6);
    // the soft token neither.
    t.fwd(
        "C_GetOperationState",
        "pOperationState = NULL, *pulOperationStateLen = CK_ULONG_MAX, digest active",
        Both(CKR_FUNCTION_NOT_SUPPORTED),
        |fx, errs| {
            digest_init(fx, errs);
            let mut n = MAX;
            ck!(fx, C_GetOperationState(fx.s(), null_mut(), &mut n))
        },
    );
    t.sessions("C_GetOperationState", |fx, h| {
        let mut n = 0;
        ck!(fx, C_GetOperationState(h, null_mut(), &mut n))
    });
    t.local(
        "C_SetOperationState",
        "pOperationState = NULL, ulOperationStateLen = 8",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_SetOperationState(fx.s(), null_mut(), 8, 0, 0)),
    );
    t.local(
        "C_SetOperationState",
        "pOperationState = NULL, ulOperationStateLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_SetOperationState(fx.s(), null_mut(), MAX, 0, 0)),
    );
    t.fwd(
        "C_SetOperationState",
        "8 bytes of garbage state, hEncryptionKey never issued",
        Both(CKR_FUNCTION_NOT_SUPPORTED),
        |fx, _| {
            let mut state = [0xa5u8; 8];
            ck!(
                fx,
                C_SetOperationState(fx.s(), state.as_mut_ptr(), 8, NEVER_ISSUED_OBJECT, 0)
            )
        },
    );
    t.sessions("C_SetOperationState", |fx, h| {
        let mut state = [0u8; 8];
        ck!(fx, C_SetOperationState(h, state.as_mut_ptr(), 8, 0, 0))
    });
    t.local(
        "C_Login",
        "pPin = NULL, ulPinLen = 6",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_Login(fx.s(), CKU_USER, null_mut(), 6)),
    );
    t.local(
        "C_Login",
        "pPin = NULL, ulPinLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_Login(fx.s(), CKU_USER, null_mut(), MAX)),
    );
    t.fwd(
        "C_Login",
        "userType = 0xdeadbeef",
        Both(CKR_USER_TYPE_INVALID),
        |fx, _| {
            let pin = USER_PIN.as_bytes();
            ck!(
                fx,
                C_Login(
                    fx.s(),
                    0xdead_beef,
                    pin.as_ptr() as *mut u8,
                    pin.len() as CK_ULONG
                )
            )
        },
    );
    t.fwd(
        "C_Login",
        "CKU_USER again while logged in",
        Both(CKR_USER_ALREADY_LOGGED_IN),
        |fx, _| {
            let pin = USER_PIN.as_bytes();
            ck!(
                fx,
                C_Login(
                    fx.s(),
                    CKU_USER,
                    pin.as_ptr() as *mut u8,
                    pin.len() as CK_ULONG
                )
            )
        },
    );
    t.sessions("C_Login", |fx, h| {
        let pin = USER_PIN.as_bytes();
        ck!(
            fx,
            C_Login(h, CKU_USER, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)
        )
    });
    t.sessions("C_Logout", |fx, h| ck!(fx, C_Logout(h)));
}

fn objects(t: &mut Table) {
    fn data_template(class: &CK_OBJECT_CLASS, no: &CK_BBOOL) -> [CK_ATTRIBUTE; 2] {
        [attr(CKA_CLASS, class), attr(CKA_TOKEN, no)]
    }
    t.local(
        "C_CreateObject",
        "pTemplate = NULL, ulCount = 2",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut h = 0;
            ck!(fx, C_CreateObject(fx.s(), null_mut(), 2, &mut h))
        },
    );
    t.local(
        "C_CreateObject",
        "pTemplate = NULL, ulCount = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut h = 0;
            ck!(fx, C_CreateObject(fx.s(), null_mut(), MAX, &mut h))
        },
    );
    t.local(
        "C_CreateObject",
        "phObject = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let (class, no) = (CKO_DATA, CK_FALSE);
            let mut tm = data_template(&class, &no);
            ck!(fx, C_CreateObject(fx.s(), tm.as_mut_ptr(), 2, null_mut()))
        },
    );
    t.fwd(
        "C_CreateObject",
        "an attribute of type 0xdeadbeef",
        Both(CKR_ATTRIBUTE_TYPE_INVALID),
        |fx, _| {
            let (class, no, v) = (CKO_DATA, CK_FALSE, 1u32);
            let mut tm = [
                attr(CKA_CLASS, &class),
                attr(CKA_TOKEN, &no),
                attr(BOGUS_TYPE, &v),
            ];
            let mut h = 0;
            ck!(fx, C_CreateObject(fx.s(), tm.as_mut_ptr(), 3, &mut h))
        },
    );
    // A NULL pValue with a length is a value the spec's template rules do not allow:
    // CKR_ATTRIBUTE_VALUE_INVALID (§5.7 for C_CreateObject; CKR_ARGUMENTS_BAD would do too).
    t.fwd(
        "C_CreateObject",
        "CKA_VALUE with pValue = NULL, ulValueLen = 16",
        Both(CKR_ATTRIBUTE_VALUE_INVALID),
        |fx, _| {
            let (class, no) = (CKO_DATA, CK_FALSE);
            let mut tm = [
                attr(CKA_CLASS, &class),
                attr(CKA_TOKEN, &no),
                attr_raw(CKA_VALUE, null_mut(), 16),
            ];
            let mut h = 0;
            ck!(fx, C_CreateObject(fx.s(), tm.as_mut_ptr(), 3, &mut h))
        },
    );
    // §4.1.1 rule 3: an invalid value for a valid attribute is CKR_ATTRIBUTE_VALUE_INVALID.
    // SoftHSMv2 ignores the malformed class and finds the template incomplete (p11gate passes
    // its answer through).
    t.fwd(
        "C_CreateObject",
        "CKA_CLASS with ulValueLen = 1 (not a CK_ULONG)",
        Split {
            softhsm: CKR_TEMPLATE_INCOMPLETE,
            soft: CKR_ATTRIBUTE_VALUE_INVALID,
        },
        |fx, _| {
            let (class, no) = (CKO_DATA, CK_FALSE);
            let mut tm = [
                attr_raw(CKA_CLASS, &class as *const _ as *mut c_void, 1),
                attr(CKA_TOKEN, &no),
            ];
            let mut h = 0;
            ck!(fx, C_CreateObject(fx.s(), tm.as_mut_ptr(), 2, &mut h))
        },
    );
    // An empty template lacks CKA_CLASS: CKR_TEMPLATE_INCOMPLETE. SoftHSMv2 refuses any NULL
    // template first (CKR_ARGUMENTS_BAD, its own check; p11gate forwards a NULL array of zero
    // entries, which the spec does not forbid).
    t.fwd(
        "C_CreateObject",
        "pTemplate = NULL, ulCount = 0 (no CKA_CLASS)",
        Split {
            softhsm: CKR_ARGUMENTS_BAD,
            soft: CKR_TEMPLATE_INCOMPLETE,
        },
        |fx, _| {
            let mut h = 0;
            ck!(fx, C_CreateObject(fx.s(), null_mut(), 0, &mut h))
        },
    );
    t.sessions("C_CreateObject", |fx, h| {
        let (class, no) = (CKO_DATA, CK_FALSE);
        let mut tm = data_template(&class, &no);
        let mut o = 0;
        ck!(fx, C_CreateObject(h, tm.as_mut_ptr(), 2, &mut o))
    });

    t.local(
        "C_CopyObject",
        "phNewObject = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_CopyObject(fx.s(), fx.data, null_mut(), 0, null_mut())),
    );
    t.local(
        "C_CopyObject",
        "pTemplate = NULL, ulCount = 2",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut h = 0;
            ck!(fx, C_CopyObject(fx.s(), fx.data, null_mut(), 2, &mut h))
        },
    );
    for (what, object) in [
        ("hObject = 0", 0),
        ("hObject never issued", NEVER_ISSUED_OBJECT),
    ] {
        t.fwd(
            "C_CopyObject",
            what,
            Both(CKR_OBJECT_HANDLE_INVALID),
            move |fx, _| {
                let label = b"copy";
                let mut tm = [attr_bytes(CKA_LABEL, label)];
                let mut h = 0;
                ck!(fx, C_CopyObject(fx.s(), object, tm.as_mut_ptr(), 1, &mut h))
            },
        );
        t.fwd(
            "C_DestroyObject",
            what,
            Both(CKR_OBJECT_HANDLE_INVALID),
            move |fx, _| ck!(fx, C_DestroyObject(fx.s(), object)),
        );
        t.fwd(
            "C_GetObjectSize",
            what,
            Both(CKR_OBJECT_HANDLE_INVALID),
            move |fx, _| {
                let mut n = 0;
                ck!(fx, C_GetObjectSize(fx.s(), object, &mut n))
            },
        );
        t.fwd(
            "C_GetAttributeValue",
            what,
            Both(CKR_OBJECT_HANDLE_INVALID),
            move |fx, _| {
                let mut class: CK_OBJECT_CLASS = 0;
                let mut tm = [attr_mut(CKA_CLASS, &mut class)];
                ck!(fx, C_GetAttributeValue(fx.s(), object, tm.as_mut_ptr(), 1))
            },
        );
        t.fwd(
            "C_SetAttributeValue",
            what,
            Both(CKR_OBJECT_HANDLE_INVALID),
            move |fx, _| {
                let label = b"x";
                let mut tm = [attr_bytes(CKA_LABEL, label)];
                ck!(fx, C_SetAttributeValue(fx.s(), object, tm.as_mut_ptr(), 1))
            },
        );
    }
    t.fwd(
        "C_DestroyObject",
        "hObject = CK_ULONG_MAX",
        Both(CKR_OBJECT_HANDLE_INVALID),
        |fx, _| ck!(fx, C_DestroyObject(fx.s(), MAX)),
    );
    t.fwd(
        "C_CopyObject",
        "an attribute of type 0xdeadbeef in the template",
        Both(CKR_ATTRIBUTE_TYPE_INVALID),
        |fx, _| {
            let v = 1u32;
            let mut tm = [attr(BOGUS_TYPE, &v)];
            let mut h = 0;
            ck!(
                fx,
                C_CopyObject(fx.s(), fx.data, tm.as_mut_ptr(), 1, &mut h)
            )
        },
    );
    t.sessions("C_CopyObject", |fx, h| {
        let label = b"copy";
        let mut tm = [attr_bytes(CKA_LABEL, label)];
        let mut o = 0;
        ck!(fx, C_CopyObject(h, fx.data, tm.as_mut_ptr(), 1, &mut o))
    });
    t.sessions("C_DestroyObject", |fx, h| {
        ck!(fx, C_DestroyObject(h, fx.data))
    });
    t.local(
        "C_GetObjectSize",
        "pulSize = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GetObjectSize(fx.s(), fx.aes, null_mut())),
    );
    t.sessions("C_GetObjectSize", |fx, h| {
        let mut n = 0;
        ck!(fx, C_GetObjectSize(h, fx.aes, &mut n))
    });

    t.local(
        "C_GetAttributeValue",
        "pTemplate = NULL, ulCount = 1",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GetAttributeValue(fx.s(), fx.aes, null_mut(), 1)),
    );
    t.local(
        "C_GetAttributeValue",
        "pTemplate = NULL, ulCount = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GetAttributeValue(fx.s(), fx.aes, null_mut(), MAX)),
    );
    t.fwd(
        "C_GetAttributeValue",
        "type 0xdeadbeef: ulValueLen = CK_UNAVAILABLE_INFORMATION",
        Both(CKR_ATTRIBUTE_TYPE_INVALID),
        |fx, errs| {
            let mut v = [0u8; 16];
            let mut tm = [attr_raw(BOGUS_TYPE, v.as_mut_ptr() as *mut c_void, 16)];
            let rv = ck!(fx, C_GetAttributeValue(fx.s(), fx.aes, tm.as_mut_ptr(), 1));
            want_len(errs, "ulValueLen", tm[0].ulValueLen, UNAVAILABLE);
            rv
        },
    );
    t.fwd(
        "C_GetAttributeValue",
        "CKA_CLASS and type 0xdeadbeef: the class is still returned",
        Both(CKR_ATTRIBUTE_TYPE_INVALID),
        |fx, errs| {
            let mut class: CK_OBJECT_CLASS = 0xffff;
            let mut v = [0u8; 16];
            let mut tm = [
                attr_mut(CKA_CLASS, &mut class),
                attr_raw(BOGUS_TYPE, v.as_mut_ptr() as *mut c_void, 16),
            ];
            let rv = ck!(fx, C_GetAttributeValue(fx.s(), fx.aes, tm.as_mut_ptr(), 2));
            want_len(errs, "CKA_CLASS ulValueLen", tm[0].ulValueLen, 8);
            want_len(errs, "CKA_CLASS value", class, CKO_SECRET_KEY);
            want_len(errs, "bogus ulValueLen", tm[1].ulValueLen, UNAVAILABLE);
            rv
        },
    );
    t.fwd(
        "C_GetAttributeValue",
        "CKA_LABEL with pValue = NULL, ulValueLen = 999 (length query)",
        Both(CKR_OK),
        |fx, errs| {
            let mut tm = [attr_raw(CKA_LABEL, null_mut(), 999)];
            let rv = ck!(fx, C_GetAttributeValue(fx.s(), fx.aes, tm.as_mut_ptr(), 1));
            want_len(
                errs,
                "ulValueLen",
                tm[0].ulValueLen,
                AES_LABEL.len() as CK_ULONG,
            );
            rv
        },
    );
    t.fwd(
        "C_GetAttributeValue",
        "CKA_LABEL into a 1-byte buffer",
        Both(CKR_BUFFER_TOO_SMALL),
        |fx, errs| {
            let mut v = [0u8; 1];
            let mut tm = [attr_raw(CKA_LABEL, v.as_mut_ptr() as *mut c_void, 1)];
            let rv = ck!(fx, C_GetAttributeValue(fx.s(), fx.aes, tm.as_mut_ptr(), 1));
            want_len(errs, "ulValueLen", tm[0].ulValueLen, UNAVAILABLE);
            rv
        },
    );
    t.fwd(
        "C_GetAttributeValue",
        "CKA_LABEL with ulValueLen = 0 and a buffer",
        Both(CKR_BUFFER_TOO_SMALL),
        |fx, errs| {
            let mut v = [0u8; 1];
            let mut tm = [attr_raw(CKA_LABEL, v.as_mut_ptr() as *mut c_void, 0)];
            let rv = ck!(fx, C_GetAttributeValue(fx.s(), fx.aes, tm.as_mut_ptr(), 1));
            want_len(errs, "ulValueLen", tm[0].ulValueLen, UNAVAILABLE);
            rv
        },
    );
    t.fwd(
        "C_GetAttributeValue",
        "CKA_VALUE of a sensitive key",
        Both(CKR_ATTRIBUTE_SENSITIVE),
        |fx, errs| {
            let mut v = [0u8; 64];
            let mut tm = [attr_raw(CKA_VALUE, v.as_mut_ptr() as *mut c_void, 64)];
            let rv = ck!(fx, C_GetAttributeValue(fx.s(), fx.aes, tm.as_mut_ptr(), 1));
            want_len(errs, "ulValueLen", tm[0].ulValueLen, UNAVAILABLE);
            rv
        },
    );
    // ulCount = 0: nothing to answer. The spec does not say whether a NULL template is then
    // allowed; SoftHSMv2 refuses any NULL template (CKR_ARGUMENTS_BAD, its own check, which
    // p11gate forwards: a NULL array of zero entries is not one p11gate forbids), the soft
    // token answers the empty request.
    t.fwd(
        "C_GetAttributeValue",
        "pTemplate = NULL, ulCount = 0",
        Split {
            softhsm: CKR_ARGUMENTS_BAD,
            soft: CKR_OK,
        },
        |fx, _| ck!(fx, C_GetAttributeValue(fx.s(), fx.aes, null_mut(), 0)),
    );
    t.sessions("C_GetAttributeValue", |fx, h| {
        let mut class: CK_OBJECT_CLASS = 0;
        let mut tm = [attr_mut(CKA_CLASS, &mut class)];
        ck!(fx, C_GetAttributeValue(h, fx.aes, tm.as_mut_ptr(), 1))
    });

    t.local(
        "C_SetAttributeValue",
        "pTemplate = NULL, ulCount = 1",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_SetAttributeValue(fx.s(), fx.data, null_mut(), 1)),
    );
    t.fwd(
        "C_SetAttributeValue",
        "type 0xdeadbeef",
        Both(CKR_ATTRIBUTE_TYPE_INVALID),
        |fx, _| {
            let v = 1u32;
            let mut tm = [attr(BOGUS_TYPE, &v)];
            ck!(fx, C_SetAttributeValue(fx.s(), fx.data, tm.as_mut_ptr(), 1))
        },
    );
    t.fwd(
        "C_SetAttributeValue",
        "CKA_LABEL with pValue = NULL, ulValueLen = 4",
        Both(CKR_ATTRIBUTE_VALUE_INVALID),
        |fx, _| {
            let mut tm = [attr_raw(CKA_LABEL, null_mut(), 4)];
            ck!(fx, C_SetAttributeValue(fx.s(), fx.data, tm.as_mut_ptr(), 1))
        },
    );
    t.sessions("C_SetAttributeValue", |fx, h| {
        let label = b"x";
        let mut tm = [attr_bytes(CKA_LABEL, label)];
        ck!(fx, C_SetAttributeValue(h, fx.data, tm.as_mut_ptr(), 1))
    });

    t.local(
        "C_FindObjectsInit",
        "pTemplate = NULL, ulCount = 1",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_FindObjectsInit(fx.s(), null_mut(), 1)),
    );
    t.local(
        "C_FindObjectsInit",
        "pTemplate = NULL, ulCount = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_FindObjectsInit(fx.s(), null_mut(), MAX)),
    );
    // §5.7 lists CKR_ATTRIBUTE_TYPE_INVALID for C_FindObjectsInit, but a search for an
    // attribute no object has may as well match nothing; both backends do the latter. (The
    // value is one no other row sets: a backend that wrongly accepts C_SetAttributeValue of
    // type 0xdeadbeef = 1 must not make this row fail too.)
    t.fwd(
        "C_FindObjectsInit",
        "type 0xdeadbeef (then finds nothing)",
        Both(CKR_OK),
        |fx, errs| {
            let v = 0x0bad_f00du32;
            let mut tm = [attr(BOGUS_TYPE, &v)];
            let rv = ck!(fx, C_FindObjectsInit(fx.s(), tm.as_mut_ptr(), 1));
            if rv == CKR_OK {
                let mut found = [0 as CK_OBJECT_HANDLE; 4];
                let mut n = 99;
                want_ok(
                    errs,
                    "C_FindObjects",
                    ck!(fx, C_FindObjects(fx.s(), found.as_mut_ptr(), 4, &mut n)),
                );
                want_len(errs, "objects found", n, 0);
            }
            rv
        },
    );
    // A search value that cannot be read: CKR_ATTRIBUTE_VALUE_INVALID (listed for
    // C_FindObjectsInit). p11gate refuses a NULL value with a length in every template that
    // gives values, before any backend sees it (SoftHSMv2 would accept this one, and crash on
    // the same template in C_GenerateKey).
    t.local(
        "C_FindObjectsInit",
        "CKA_LABEL with pValue = NULL, ulValueLen = 4",
        CKR_ATTRIBUTE_VALUE_INVALID,
        |fx, _| {
            let mut tm = [attr_raw(CKA_LABEL, null_mut(), 4)];
            ck!(fx, C_FindObjectsInit(fx.s(), tm.as_mut_ptr(), 1))
        },
    );
    t.fwd(
        "C_FindObjectsInit",
        "a search already active",
        Both(CKR_OPERATION_ACTIVE),
        |fx, errs| {
            find_nothing_init(fx, errs);
            ck!(fx, C_FindObjectsInit(fx.s(), null_mut(), 0))
        },
    );
    t.sessions("C_FindObjectsInit", |fx, h| {
        ck!(fx, C_FindObjectsInit(h, null_mut(), 0))
    });
    t.local(
        "C_FindObjects",
        "phObject = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, errs| {
            find_nothing_init(fx, errs);
            let mut n = 0;
            ck!(fx, C_FindObjects(fx.s(), null_mut(), 4, &mut n))
        },
    );
    t.local(
        "C_FindObjects",
        "pulObjectCount = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, errs| {
            find_nothing_init(fx, errs);
            let mut found = [0 as CK_OBJECT_HANDLE; 4];
            ck!(fx, C_FindObjects(fx.s(), found.as_mut_ptr(), 4, null_mut()))
        },
    );
    t.fwd(
        "C_FindObjects",
        "no search active",
        Both(CKR_OPERATION_NOT_INITIALIZED),
        |fx, _| {
            let mut found = [0 as CK_OBJECT_HANDLE; 4];
            let mut n = 0;
            ck!(fx, C_FindObjects(fx.s(), found.as_mut_ptr(), 4, &mut n))
        },
    );
    t.fwd(
        "C_FindObjects",
        "ulMaxObjectCount = 0",
        Both(CKR_OK),
        |fx, errs| {
            let mut tm = [attr_bytes(CKA_LABEL, AES_LABEL)];
            want_ok(
                errs,
                "C_FindObjectsInit(label)",
                ck!(fx, C_FindObjectsInit(fx.s(), tm.as_mut_ptr(), 1)),
            );
            let mut found = [0 as CK_OBJECT_HANDLE; 1];
            let mut n = 99;
            let rv = ck!(fx, C_FindObjects(fx.s(), found.as_mut_ptr(), 0, &mut n));
            want_len(errs, "objects found", n, 0);
            rv
        },
    );
    // A count no buffer can have (CK_ULONG_MAX handles is more than the address space):
    // p11gate refuses it as CKR_ARGUMENTS_BAD rather than describe such an array (which used
    // to abort the process), and writes nothing.
    t.local(
        "C_FindObjects",
        "ulMaxObjectCount = CK_ULONG_MAX with a 4-handle array, nothing matching",
        CKR_ARGUMENTS_BAD,
        |fx, errs| {
            find_nothing_init(fx, errs);
            let mut found = [0 as CK_OBJECT_HANDLE; 4];
            let mut n = 99;
            let rv = ck!(fx, C_FindObjects(fx.s(), found.as_mut_ptr(), MAX, &mut n));
            want_len(errs, "objects found (untouched)", n, 99);
            rv
        },
    );
    t.sessions("C_FindObjects", |fx, h| {
        let mut found = [0 as CK_OBJECT_HANDLE; 4];
        let mut n = 0;
        ck!(fx, C_FindObjects(h, found.as_mut_ptr(), 4, &mut n))
    });
    t.fwd(
        "C_FindObjectsFinal",
        "no search active",
        Both(CKR_OPERATION_NOT_INITIALIZED),
        |fx, _| ck!(fx, C_FindObjectsFinal(fx.s())),
    );
    t.sessions("C_FindObjectsFinal", |fx, h| ck!(fx, C_FindObjectsFinal(h)));
}

/// The rows every `*Init` that takes a mechanism and a key gets: NULL mechanism, NULL parameter
/// with a length, a bogus mechanism, key handles 0 and never issued, hostile sessions.
fn init_rows(
    t: &mut Table,
    func: &'static str,
    call: fn(&Fx, CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) -> CK_RV,
    good: CK_MECHANISM_TYPE,
    key: fn(&Fx) -> CK_OBJECT_HANDLE,
    bad_key: Expect,
    bad_mechanism: Expect,
) {
    t.local(
        func,
        "pMechanism = NULL",
        CKR_ARGUMENTS_BAD,
        move |fx, _| call(fx, fx.s(), null_mut(), key(fx)),
    );
    t.local(
        func,
        "pParameter = NULL, ulParameterLen = 5",
        CKR_ARGUMENTS_BAD,
        move |fx, _| {
            let mut m = CK_MECHANISM {
                mechanism: good,
                pParameter: null_mut(),
                ulParameterLen: 5,
            };
            call(fx, fx.s(), &mut m, key(fx))
        },
    );
    t.local(
        func,
        "pParameter = NULL, ulParameterLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        move |fx, _| {
            let mut m = CK_MECHANISM {
                mechanism: good,
                pParameter: null_mut(),
                ulParameterLen: MAX,
            };
            call(fx, fx.s(), &mut m, key(fx))
        },
    );
    t.fwd(func, "mechanism 0xdeadbeef", bad_mechanism, move |fx, _| {
        let mut m = mech(BOGUS_MECHANISM);
        call(fx, fx.s(), &mut m, key(fx))
    });
    for (what, k) in [("hKey = 0", 0), ("hKey never issued", NEVER_ISSUED_OBJECT)] {
        t.fwd(func, what, bad_key, move |fx, _| {
            let mut m = mech(good);
            call(fx, fx.s(), &mut m, k)
        });
    }
    for kind in BadSession::ALL {
        t.local(
            func,
            kind.describe(),
            CKR_SESSION_HANDLE_INVALID,
            move |fx, _| {
                let mut m = mech(good);
                call(fx, kind.handle(fx), &mut m, key(fx))
            },
        );
    }
}

/// A `CK_GCM_PARAMS` whose ulParameterLen is `len` (the struct is 48 bytes).
fn gcm_rows(
    t: &mut Table,
    func: &'static str,
    call: fn(&Fx, CK_SESSION_HANDLE, *mut CK_MECHANISM, CK_OBJECT_HANDLE) -> CK_RV,
) {
    for (what, len) in [
        ("CK_GCM_PARAMS with ulParameterLen = 40 (8 short)", 40),
        ("CK_GCM_PARAMS with ulParameterLen = 56 (8 over)", 56),
        ("CK_GCM_PARAMS with ulParameterLen = 1", 1),
    ] {
        // A parameter block of the wrong size is CKR_MECHANISM_PARAM_INVALID (§5.8), which the
        // soft token answers. p11gate forwards the block to SoftHSMv2, which answers
        // CKR_ARGUMENTS_BAD for it (also defensible: the caller's struct is malformed).
        t.fwd(
            func,
            what,
            Split {
                softhsm: CKR_ARGUMENTS_BAD,
                soft: CKR_MECHANISM_PARAM_INVALID,
            },
            move |fx, _| {
                let mut iv = [0u8; 12];
                // Room for 64 bytes, so that the 56-byte claim stays inside live memory.
                let mut block = [0u64; 8];
                let p = CK_GCM_PARAMS {
                    pIv: iv.as_mut_ptr(),
                    ulIvLen: 12,
                    ulIvBits: 96,
                    pAAD: null_mut(),
                    ulAADLen: 0,
                    ulTagBits: 128,
                };
                // SAFETY: `block` is 64 bytes, larger than CK_GCM_PARAMS (48), and u64-aligned.
                unsafe { std::ptr::write(block.as_mut_ptr() as *mut CK_GCM_PARAMS, p) };
                let mut m = CK_MECHANISM {
                    mechanism: CKM_AES_GCM,
                    pParameter: block.as_mut_ptr() as *mut c_void,
                    ulParameterLen: len,
                };
                call(fx, fx.s(), &mut m, fx.aes)
            },
        );
    }
}

/// The rows of a data function with input (`pIn`, `ulInLen`) and output (`pOut`, `pulOutLen`).
/// `call` gets (session, in, in_len, out, out_len).
fn data_rows(
    t: &mut Table,
    func: &'static str,
    call: DataCall,
    init: Option<fn(&Fx, &mut Vec<String>)>,
    no_op: Expect,
) {
    t.local(
        func,
        "input NULL, length 16",
        CKR_ARGUMENTS_BAD,
        move |fx, errs| {
            if let Some(init) = init {
                init(fx, errs);
            }
            let mut out = [0u8; 64];
            let mut n = 64;
            call(fx, fx.s(), null_mut(), 16, out.as_mut_ptr(), &mut n)
        },
    );
    t.local(
        func,
        "input NULL, length CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        move |fx, errs| {
            if let Some(init) = init {
                init(fx, errs);
            }
            let mut out = [0u8; 64];
            let mut n = 64;
            call(fx, fx.s(), null_mut(), MAX, out.as_mut_ptr(), &mut n)
        },
    );
    t.local(
        func,
        "output length pointer NULL",
        CKR_ARGUMENTS_BAD,
        move |fx, errs| {
            if let Some(init) = init {
                init(fx, errs);
            }
            let mut input = [0u8; 16];
            let mut out = [0u8; 64];
            call(
                fx,
                fx.s(),
                input.as_mut_ptr(),
                16,
                out.as_mut_ptr(),
                null_mut(),
            )
        },
    );
    t.fwd(func, "no operation active", no_op, move |fx, _| {
        let mut input = [0u8; 16];
        let mut out = [0u8; 64];
        let mut n = 64;
        call(fx, fx.s(), input.as_mut_ptr(), 16, out.as_mut_ptr(), &mut n)
    });
    for kind in BadSession::ALL {
        t.local(
            func,
            kind.describe(),
            CKR_SESSION_HANDLE_INVALID,
            move |fx, _| {
                let mut input = [0u8; 16];
                let mut out = [0u8; 64];
                let mut n = 64;
                call(
                    fx,
                    kind.handle(fx),
                    input.as_mut_ptr(),
                    16,
                    out.as_mut_ptr(),
                    &mut n,
                )
            },
        );
    }
}

/// Output-length rows for a data function whose output for 16 input bytes is `out_len`:
/// a length query with `*pulOutLen = CK_ULONG_MAX`, a non-NULL buffer with `*pulOutLen = 0`,
/// and a 64-byte buffer with `*pulOutLen = CK_ULONG_MAX`.
fn length_rows(
    t: &mut Table,
    func: &'static str,
    call: DataCall,
    init: fn(&Fx, &mut Vec<String>),
    in_len: CK_ULONG,
    out_len: CK_ULONG,
) {
    t.fwd(
        func,
        "output NULL, *pulOutLen = CK_ULONG_MAX (length query)",
        Both(CKR_OK),
        move |fx, errs| {
            init(fx, errs);
            let mut input = [0u8; 16];
            let mut n = MAX;
            let rv = call(fx, fx.s(), input.as_mut_ptr(), in_len, null_mut(), &mut n);
            want_len(errs, "*pulOutLen", n, out_len);
            rv
        },
    );
    t.fwd(
        func,
        "output buffer with *pulOutLen = 0",
        Both(CKR_BUFFER_TOO_SMALL),
        move |fx, errs| {
            init(fx, errs);
            let mut input = [0u8; 16];
            let mut out = [0u8; 64];
            let mut n = 0;
            let rv = call(
                fx,
                fx.s(),
                input.as_mut_ptr(),
                in_len,
                out.as_mut_ptr(),
                &mut n,
            );
            want_len(errs, "*pulOutLen", n, out_len);
            rv
        },
    );
    t.fwd(
        func,
        "64-byte output buffer with *pulOutLen = CK_ULONG_MAX",
        Both(CKR_OK),
        move |fx, errs| {
            init(fx, errs);
            let mut input = [0u8; 16];
            let mut out = [0u8; 64];
            let mut n = MAX;
            let rv = call(
                fx,
                fx.s(),
                input.as_mut_ptr(),
                in_len,
                out.as_mut_ptr(),
                &mut n,
            );
            want_len(errs, "*pulOutLen", n, out_len);
            rv
        },
    );
}

/// Rows of a `*Final` with output (`pOut`, `pulOutLen`).
fn final_rows(
    t: &mut Table,
    func: &'static str,
    call: fn(&Fx, CK_SESSION_HANDLE, *mut u8, *mut CK_ULONG) -> CK_RV,
    init: fn(&Fx, &mut Vec<String>),
    out_len: CK_ULONG,
) {
    t.local(
        func,
        "output length pointer NULL",
        CKR_ARGUMENTS_BAD,
        move |fx, errs| {
            init(fx, errs);
            let mut out = [0u8; 64];
            call(fx, fx.s(), out.as_mut_ptr(), null_mut())
        },
    );
    t.fwd(
        func,
        "no operation active",
        Both(CKR_OPERATION_NOT_INITIALIZED),
        move |fx, _| {
            let mut out = [0u8; 64];
            let mut n = 64;
            call(fx, fx.s(), out.as_mut_ptr(), &mut n)
        },
    );
    t.fwd(
        func,
        "output NULL, *pulOutLen = CK_ULONG_MAX (length query)",
        Both(CKR_OK),
        move |fx, errs| {
            init(fx, errs);
            let mut n = MAX;
            let rv = call(fx, fx.s(), null_mut(), &mut n);
            want_len(errs, "*pulOutLen", n, out_len);
            rv
        },
    );
    if out_len > 0 {
        t.fwd(
            func,
            "output buffer with *pulOutLen = 0",
            Both(CKR_BUFFER_TOO_SMALL),
            move |fx, errs| {
                init(fx, errs);
                let mut out = [0u8; 64];
                let mut n = 0;
                let rv = call(fx, fx.s(), out.as_mut_ptr(), &mut n);
                want_len(errs, "*pulOutLen", n, out_len);
                rv
            },
        );
    }
    for kind in BadSession::ALL {
        t.local(
            func,
            kind.describe(),
            CKR_SESSION_HANDLE_INVALID,
            move |fx, _| {
                let mut out = [0u8; 64];
                let mut n = 64;
                call(fx, kind.handle(fx), out.as_mut_ptr(), &mut n)
            },
        );
    }
}

/// Rows of an `*Update` without output (`pPart`, `ulPartLen`).
fn update_rows(
    t: &mut Table,
    func: &'static str,
    call: fn(&Fx, CK_SESSION_HANDLE, *mut u8, CK_ULONG) -> CK_RV,
    init: fn(&Fx, &mut Vec<String>),
) {
    t.local(
        func,
        "pPart = NULL, ulPartLen = 16",
        CKR_ARGUMENTS_BAD,
        move |fx, errs| {
            init(fx, errs);
            call(fx, fx.s(), null_mut(), 16)
        },
    );
    t.local(
        func,
        "pPart = NULL, ulPartLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        move |fx, errs| {
            init(fx, errs);
            call(fx, fx.s(), null_mut(), MAX)
        },
    );
    t.fwd(
        func,
        "no operation active",
        Both(CKR_OPERATION_NOT_INITIALIZED),
        move |fx, _| {
            let mut part = [0u8; 16];
            call(fx, fx.s(), part.as_mut_ptr(), 16)
        },
    );
    t.fwd(
        func,
        "a real pPart with ulPartLen = 0",
        Both(CKR_OK),
        move |fx, errs| {
            init(fx, errs);
            let mut part = [0u8; 16];
            call(fx, fx.s(), part.as_mut_ptr(), 0)
        },
    );
    for kind in BadSession::ALL {
        t.local(
            func,
            kind.describe(),
            CKR_SESSION_HANDLE_INVALID,
            move |fx, _| {
                let mut part = [0u8; 16];
                call(fx, kind.handle(fx), part.as_mut_ptr(), 16)
            },
        );
    }
}

fn aes_key(fx: &Fx) -> CK_OBJECT_HANDLE {
    fx.aes
}

fn hmac_key(fx: &Fx) -> CK_OBJECT_HANDLE {
    fx.hmac
}

fn encryption(t: &mut Table) {
    init_rows(
        t,
        "C_EncryptInit",
        |fx, h, m, k| ck!(fx, C_EncryptInit(h, m, k)),
        CKM_AES_ECB,
        aes_key,
        KEY_HANDLE_INVALID,
        Both(CKR_MECHANISM_INVALID),
    );
    gcm_rows(t, "C_EncryptInit", |fx, h, m, k| {
        ck!(fx, C_EncryptInit(h, m, k))
    });
    t.fwd(
        "C_EncryptInit",
        "an operation already active",
        Both(CKR_OPERATION_ACTIVE),
        |fx, errs| {
            encrypt_init(fx, errs);
            let mut m = mech(CKM_AES_ECB);
            ck!(fx, C_EncryptInit(fx.s(), &mut m, fx.aes))
        },
    );
    let encrypt: DataCall = |fx, h, i, il, o, ol| ck!(fx, C_Encrypt(h, i, il, o, ol));
    data_rows(
        t,
        "C_Encrypt",
        encrypt,
        Some(encrypt_init),
        Both(CKR_OPERATION_NOT_INITIALIZED),
    );
    length_rows(t, "C_Encrypt", encrypt, encrypt_init, 16, 16);
    t.fwd(
        "C_Encrypt",
        "AES-ECB with 15 bytes (not a block multiple)",
        Both(CKR_DATA_LEN_RANGE),
        |fx, errs| {
            encrypt_init(fx, errs);
            let mut input = [0u8; 16];
            let mut out = [0u8; 64];
            let mut n = 64;
            ck!(
                fx,
                C_Encrypt(fx.s(), input.as_mut_ptr(), 15, out.as_mut_ptr(), &mut n)
            )
        },
    );
    let update: DataCall = |fx, h, i, il, o, ol| ck!(fx, C_EncryptUpdate(h, i, il, o, ol));
    data_rows(
        t,
        "C_EncryptUpdate",
        update,
        Some(encrypt_init),
        Both(CKR_OPERATION_NOT_INITIALIZED),
    );
    length_rows(t, "C_EncryptUpdate", update, encrypt_init, 16, 16);
    final_rows(
        t,
        "C_EncryptFinal",
        |fx, h, o, ol| ck!(fx, C_EncryptFinal(h, o, ol)),
        encrypt_init,
        0,
    );
}

fn decryption(t: &mut Table) {
    init_rows(
        t,
        "C_DecryptInit",
        |fx, h, m, k| ck!(fx, C_DecryptInit(h, m, k)),
        CKM_AES_ECB,
        aes_key,
        KEY_HANDLE_INVALID,
        Both(CKR_MECHANISM_INVALID),
    );
    gcm_rows(t, "C_DecryptInit", |fx, h, m, k| {
        ck!(fx, C_DecryptInit(h, m, k))
    });
    let decrypt: DataCall = |fx, h, i, il, o, ol| ck!(fx, C_Decrypt(h, i, il, o, ol));
    data_rows(
        t,
        "C_Decrypt",
        decrypt,
        Some(decrypt_init),
        Both(CKR_OPERATION_NOT_INITIALIZED),
    );
    length_rows(t, "C_Decrypt", decrypt, decrypt_init, 16, 16);
    t.fwd(
        "C_Decrypt",
        "AES-ECB with 15 bytes (not a block multiple)",
        Both(CKR_ENCRYPTED_DATA_LEN_RANGE),
        |fx, errs| {
            decrypt_init(fx, errs);
            let mut input = [0u8; 16];
            let mut out = [0u8; 64];
            let mut n = 64;
            ck!(
                fx,
                C_Decrypt(fx.s(), input.as_mut_ptr(), 15, out.as_mut_ptr(), &mut n)
            )
        },
    );
    let update: DataCall = |fx, h, i, il, o, ol| ck!(fx, C_DecryptUpdate(h, i, il, o, ol));
    data_rows(
        t,
        "C_DecryptUpdate",
        update,
        Some(decrypt_init),
        Both(CKR_OPERATION_NOT_INITIALIZED),
    );
    length_rows(t, "C_DecryptUpdate", update, decrypt_init, 16, 16);
    final_rows(
        t,
        "C_DecryptFinal",
        |fx, h, o, ol| ck!(fx, C_DecryptFinal(h, o, ol)),
        decrypt_init,
        0,
    );
}

fn digests(t: &mut Table) {
    t.local(
        "C_DigestInit",
        "pMechanism = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_DigestInit(fx.s(), null_mut())),
    );
    t.local(
        "C_DigestInit",
        "pParameter = NULL, ulParameterLen = 5",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut m = CK_MECHANISM {
                mechanism: CKM_SHA256,
                pParameter: null_mut(),
                ulParameterLen: 5,
            };
            ck!(fx, C_DigestInit(fx.s(), &mut m))
        },
    );
    t.fwd(
        "C_DigestInit",
        "mechanism 0xdeadbeef",
        Both(CKR_MECHANISM_INVALID),
        |fx, _| {
            let mut m = mech(BOGUS_MECHANISM);
            ck!(fx, C_DigestInit(fx.s(), &mut m))
        },
    );
    t.fwd(
        "C_DigestInit",
        "an operation already active",
        Both(CKR_OPERATION_ACTIVE),
        |fx, errs| {
            digest_init(fx, errs);
            let mut m = mech(CKM_SHA256);
            ck!(fx, C_DigestInit(fx.s(), &mut m))
        },
    );
    t.sessions("C_DigestInit", |fx, h| {
        let mut m = mech(CKM_SHA256);
        ck!(fx, C_DigestInit(h, &mut m))
    });
    let digest: DataCall = |fx, h, i, il, o, ol| ck!(fx, C_Digest(h, i, il, o, ol));
    data_rows(
        t,
        "C_Digest",
        digest,
        Some(digest_init),
        Both(CKR_OPERATION_NOT_INITIALIZED),
    );
    length_rows(t, "C_Digest", digest, digest_init, 16, 32);
    update_rows(
        t,
        "C_DigestUpdate",
        |fx, h, p, l| ck!(fx, C_DigestUpdate(h, p, l)),
        digest_init,
    );
    for (what, k) in [("hKey = 0", 0), ("hKey never issued", NEVER_ISSUED_OBJECT)] {
        t.fwd(
            "C_DigestKey",
            what,
            Both(CKR_KEY_HANDLE_INVALID),
            move |fx, errs| {
                digest_init(fx, errs);
                ck!(fx, C_DigestKey(fx.s(), k))
            },
        );
    }
    t.fwd(
        "C_DigestKey",
        "no operation active",
        Both(CKR_OPERATION_NOT_INITIALIZED),
        |fx, _| ck!(fx, C_DigestKey(fx.s(), fx.aes)),
    );
    t.sessions("C_DigestKey", |fx, h| ck!(fx, C_DigestKey(h, fx.aes)));
    final_rows(
        t,
        "C_DigestFinal",
        |fx, h, o, ol| ck!(fx, C_DigestFinal(h, o, ol)),
        digest_init,
        32,
    );
}

fn signatures(t: &mut Table) {
    init_rows(
        t,
        "C_SignInit",
        |fx, h, m, k| ck!(fx, C_SignInit(h, m, k)),
        CKM_SHA256_HMAC,
        hmac_key,
        KEY_HANDLE_INVALID,
        Both(CKR_MECHANISM_INVALID),
    );
    let sign: DataCall = |fx, h, i, il, o, ol| ck!(fx, C_Sign(h, i, il, o, ol));
    data_rows(
        t,
        "C_Sign",
        sign,
        Some(sign_init),
        Both(CKR_OPERATION_NOT_INITIALIZED),
    );
    length_rows(t, "C_Sign", sign, sign_init, 16, 32);
    update_rows(
        t,
        "C_SignUpdate",
        |fx, h, p, l| ck!(fx, C_SignUpdate(h, p, l)),
        sign_init,
    );
    final_rows(
        t,
        "C_SignFinal",
        |fx, h, o, ol| ck!(fx, C_SignFinal(h, o, ol)),
        sign_init,
        32,
    );
    // Neither backend implements signing with recovery: CKR_FUNCTION_NOT_SUPPORTED for every
    // call that gets past p11gate's own checks (any function may answer it, §5.1); the
    // mechanism and key are never looked at.
    init_rows(
        t,
        "C_SignRecoverInit",
        |fx, h, m, k| ck!(fx, C_SignRecoverInit(h, m, k)),
        CKM_SHA256_HMAC,
        hmac_key,
        Both(CKR_FUNCTION_NOT_SUPPORTED),
        Both(CKR_FUNCTION_NOT_SUPPORTED),
    );
    data_rows(
        t,
        "C_SignRecover",
        |fx, h, i, il, o, ol| ck!(fx, C_SignRecover(h, i, il, o, ol)),
        None,
        Both(CKR_FUNCTION_NOT_SUPPORTED),
    );
}

fn verification(t: &mut Table) {
    init_rows(
        t,
        "C_VerifyInit",
        |fx, h, m, k| ck!(fx, C_VerifyInit(h, m, k)),
        CKM_SHA256_HMAC,
        hmac_key,
        KEY_HANDLE_INVALID,
        Both(CKR_MECHANISM_INVALID),
    );
    t.local(
        "C_Verify",
        "pData = NULL, ulDataLen = 16",
        CKR_ARGUMENTS_BAD,
        |fx, errs| {
            verify_init(fx, errs);
            let mut sig = [0u8; 32];
            ck!(fx, C_Verify(fx.s(), null_mut(), 16, sig.as_mut_ptr(), 32))
        },
    );
    t.local(
        "C_Verify",
        "pSignature = NULL, ulSignatureLen = 32",
        CKR_ARGUMENTS_BAD,
        |fx, errs| {
            verify_init(fx, errs);
            let mut data = [0u8; 16];
            ck!(fx, C_Verify(fx.s(), data.as_mut_ptr(), 16, null_mut(), 32))
        },
    );
    t.local(
        "C_Verify",
        "pSignature = NULL, ulSignatureLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, errs| {
            verify_init(fx, errs);
            let mut data = [0u8; 16];
            ck!(fx, C_Verify(fx.s(), data.as_mut_ptr(), 16, null_mut(), MAX))
        },
    );
    t.fwd(
        "C_Verify",
        "no operation active",
        Both(CKR_OPERATION_NOT_INITIALIZED),
        |fx, _| {
            let mut data = [0u8; 16];
            let mut sig = [0u8; 32];
            ck!(
                fx,
                C_Verify(fx.s(), data.as_mut_ptr(), 16, sig.as_mut_ptr(), 32)
            )
        },
    );
    t.fwd(
        "C_Verify",
        "a 5-byte HMAC-SHA256 signature",
        Both(CKR_SIGNATURE_LEN_RANGE),
        |fx, errs| {
            verify_init(fx, errs);
            let mut data = [0u8; 16];
            let mut sig = [0u8; 32];
            ck!(
                fx,
                C_Verify(fx.s(), data.as_mut_ptr(), 16, sig.as_mut_ptr(), 5)
            )
        },
    );
    t.fwd(
        "C_Verify",
        "a wrong 32-byte signature",
        Both(CKR_SIGNATURE_INVALID),
        |fx, errs| {
            verify_init(fx, errs);
            let mut data = [0u8; 16];
            let mut sig = [0u8; 32];
            ck!(
                fx,
                C_Verify(fx.s(), data.as_mut_ptr(), 16, sig.as_mut_ptr(), 32)
            )
        },
    );
    t.sessions("C_Verify", |fx, h| {
        let mut data = [0u8; 16];
        let mut sig = [0u8; 32];
        ck!(fx, C_Verify(h, data.as_mut_ptr(), 16, sig.as_mut_ptr(), 32))
    });
    update_rows(
        t,
        "C_VerifyUpdate",
        |fx, h, p, l| ck!(fx, C_VerifyUpdate(h, p, l)),
        verify_init,
    );
    t.local(
        "C_VerifyFinal",
        "pSignature = NULL, ulSignatureLen = 32",
        CKR_ARGUMENTS_BAD,
        |fx, errs| {
            verify_init(fx, errs);
            ck!(fx, C_VerifyFinal(fx.s(), null_mut(), 32))
        },
    );
    t.local(
        "C_VerifyFinal",
        "pSignature = NULL, ulSignatureLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, errs| {
            verify_init(fx, errs);
            ck!(fx, C_VerifyFinal(fx.s(), null_mut(), MAX))
        },
    );
    t.fwd(
        "C_VerifyFinal",
        "no operation active",
        Both(CKR_OPERATION_NOT_INITIALIZED),
        |fx, _| {
            let mut sig = [0u8; 32];
            ck!(fx, C_VerifyFinal(fx.s(), sig.as_mut_ptr(), 32))
        },
    );
    t.fwd(
        "C_VerifyFinal",
        "a real pSignature with ulSignatureLen = 0",
        Both(CKR_SIGNATURE_LEN_RANGE),
        |fx, errs| {
            verify_init(fx, errs);
            let mut sig = [0u8; 32];
            ck!(fx, C_VerifyFinal(fx.s(), sig.as_mut_ptr(), 0))
        },
    );
    t.sessions("C_VerifyFinal", |fx, h| {
        let mut sig = [0u8; 32];
        ck!(fx, C_VerifyFinal(h, sig.as_mut_ptr(), 32))
    });
    // As C_SignRecoverInit: verification with recovery is not implemented by either backend.
    init_rows(
        t,
        "C_VerifyRecoverInit",
        |fx, h, m, k| ck!(fx, C_VerifyRecoverInit(h, m, k)),
        CKM_SHA256_HMAC,
        hmac_key,
        Both(CKR_FUNCTION_NOT_SUPPORTED),
        Both(CKR_FUNCTION_NOT_SUPPORTED),
    );
    data_rows(
        t,
        "C_VerifyRecover",
        |fx, h, i, il, o, ol| ck!(fx, C_VerifyRecover(h, i, il, o, ol)),
        None,
        Both(CKR_FUNCTION_NOT_SUPPORTED),
    );
}

fn dual_function(t: &mut Table) {
    // Neither backend implements the dual-function calls: SoftHSMv2 answers
    // CKR_FUNCTION_NOT_SUPPORTED, and so does the soft token (§5.13 allows it).
    let dual: [(&'static str, DataCall); 4] = [
        ("C_DigestEncryptUpdate", |fx, h, i, il, o, ol| {
            ck!(fx, C_DigestEncryptUpdate(h, i, il, o, ol))
        }),
        ("C_DecryptDigestUpdate", |fx, h, i, il, o, ol| {
            ck!(fx, C_DecryptDigestUpdate(h, i, il, o, ol))
        }),
        ("C_SignEncryptUpdate", |fx, h, i, il, o, ol| {
            ck!(fx, C_SignEncryptUpdate(h, i, il, o, ol))
        }),
        ("C_DecryptVerifyUpdate", |fx, h, i, il, o, ol| {
            ck!(fx, C_DecryptVerifyUpdate(h, i, il, o, ol))
        }),
    ];
    for (func, call) in dual {
        data_rows(t, func, call, None, Both(CKR_FUNCTION_NOT_SUPPORTED));
    }
}

/// An AES-256 key template for C_GenerateKey / C_UnwrapKey / C_DeriveKey.
struct KeyTemplate {
    class: CK_OBJECT_CLASS,
    key_type: CK_KEY_TYPE,
    len: CK_ULONG,
    no: CK_BBOOL,
    yes: CK_BBOOL,
}

impl KeyTemplate {
    fn new() -> Self {
        KeyTemplate {
            class: CKO_SECRET_KEY,
            key_type: CKK_AES,
            len: 32,
            no: CK_FALSE,
            yes: CK_TRUE,
        }
    }

    /// With CKA_VALUE_LEN (for generation) or without (unwrap, derive).
    fn attrs(&self, with_len: bool) -> Vec<CK_ATTRIBUTE> {
        let mut v = vec![
            attr(CKA_CLASS, &self.class),
            attr(CKA_KEY_TYPE, &self.key_type),
            attr(CKA_TOKEN, &self.no),
            attr(CKA_ENCRYPT, &self.yes),
        ];
        if with_len {
            v.push(attr(CKA_VALUE_LEN, &self.len));
        }
        v
    }
}

fn keys(t: &mut Table) {
    t.local(
        "C_GenerateKey",
        "pMechanism = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let kt = KeyTemplate::new();
            let mut tm = kt.attrs(true);
            let mut k = 0;
            ck!(
                fx,
                C_GenerateKey(
                    fx.s(),
                    null_mut(),
                    tm.as_mut_ptr(),
                    tm.len() as CK_ULONG,
                    &mut k
                )
            )
        },
    );
    t.local(
        "C_GenerateKey",
        "pParameter = NULL, ulParameterLen = 5",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let kt = KeyTemplate::new();
            let mut tm = kt.attrs(true);
            let mut m = CK_MECHANISM {
                mechanism: CKM_AES_KEY_GEN,
                pParameter: null_mut(),
                ulParameterLen: 5,
            };
            let mut k = 0;
            ck!(
                fx,
                C_GenerateKey(
                    fx.s(),
                    &mut m,
                    tm.as_mut_ptr(),
                    tm.len() as CK_ULONG,
                    &mut k
                )
            )
        },
    );
    t.local(
        "C_GenerateKey",
        "pTemplate = NULL, ulCount = 5",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut m = mech(CKM_AES_KEY_GEN);
            let mut k = 0;
            ck!(fx, C_GenerateKey(fx.s(), &mut m, null_mut(), 5, &mut k))
        },
    );
    t.local(
        "C_GenerateKey",
        "phKey = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let kt = KeyTemplate::new();
            let mut tm = kt.attrs(true);
            let mut m = mech(CKM_AES_KEY_GEN);
            ck!(
                fx,
                C_GenerateKey(
                    fx.s(),
                    &mut m,
                    tm.as_mut_ptr(),
                    tm.len() as CK_ULONG,
                    null_mut()
                )
            )
        },
    );
    t.fwd(
        "C_GenerateKey",
        "mechanism 0xdeadbeef",
        Both(CKR_MECHANISM_INVALID),
        |fx, _| {
            let kt = KeyTemplate::new();
            let mut tm = kt.attrs(true);
            let mut m = mech(BOGUS_MECHANISM);
            let mut k = 0;
            ck!(
                fx,
                C_GenerateKey(
                    fx.s(),
                    &mut m,
                    tm.as_mut_ptr(),
                    tm.len() as CK_ULONG,
                    &mut k
                )
            )
        },
    );
    t.fwd(
        "C_GenerateKey",
        "an attribute of type 0xdeadbeef",
        Both(CKR_ATTRIBUTE_TYPE_INVALID),
        |fx, _| {
            let kt = KeyTemplate::new();
            let v = 1u32;
            let mut tm = kt.attrs(true);
            tm.push(attr(BOGUS_TYPE, &v));
            let mut m = mech(CKM_AES_KEY_GEN);
            let mut k = 0;
            ck!(
                fx,
                C_GenerateKey(
                    fx.s(),
                    &mut m,
                    tm.as_mut_ptr(),
                    tm.len() as CK_ULONG,
                    &mut k
                )
            )
        },
    );
    // A value that cannot be read is an invalid value (§4.1.1 rule 3). SoftHSMv2 2.6
    // dereferences it and crashes the process; p11gate, which reads templates for its own
    // policy anyway, could refuse it before forwarding, and the row asserts the spec's code.
    t.fwd(
        "C_GenerateKey",
        "CKA_VALUE_LEN with pValue = NULL, ulValueLen = 8",
        Both(CKR_ATTRIBUTE_VALUE_INVALID),
        |fx, _| {
            let kt = KeyTemplate::new();
            let mut tm = kt.attrs(false);
            tm.push(attr_raw(CKA_VALUE_LEN, null_mut(), 8));
            let mut m = mech(CKM_AES_KEY_GEN);
            let mut k = 0;
            ck!(
                fx,
                C_GenerateKey(
                    fx.s(),
                    &mut m,
                    tm.as_mut_ptr(),
                    tm.len() as CK_ULONG,
                    &mut k
                )
            )
        },
    );
    t.fwd(
        "C_GenerateKey",
        "CKA_VALUE_LEN with ulValueLen = 1 (not a CK_ULONG)",
        Both(CKR_ATTRIBUTE_VALUE_INVALID),
        |fx, _| {
            let kt = KeyTemplate::new();
            let mut tm = kt.attrs(false);
            tm.push(attr_raw(
                CKA_VALUE_LEN,
                &kt.len as *const CK_ULONG as *mut c_void,
                1,
            ));
            let mut m = mech(CKM_AES_KEY_GEN);
            let mut k = 0;
            ck!(
                fx,
                C_GenerateKey(
                    fx.s(),
                    &mut m,
                    tm.as_mut_ptr(),
                    tm.len() as CK_ULONG,
                    &mut k
                )
            )
        },
    );
    t.sessions("C_GenerateKey", |fx, h| {
        let kt = KeyTemplate::new();
        let mut tm = kt.attrs(true);
        let mut m = mech(CKM_AES_KEY_GEN);
        let mut k = 0;
        ck!(
            fx,
            C_GenerateKey(h, &mut m, tm.as_mut_ptr(), tm.len() as CK_ULONG, &mut k)
        )
    });

    // C_GenerateKeyPair: P-256 (fast on both backends).
    const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    type PairCall = fn(
        &Fx,
        CK_SESSION_HANDLE,
        *mut CK_MECHANISM,
        *mut CK_ATTRIBUTE,
        CK_ULONG,
        *mut CK_ATTRIBUTE,
        CK_ULONG,
        *mut CK_OBJECT_HANDLE,
        *mut CK_OBJECT_HANDLE,
    ) -> CK_RV;
    let pair: PairCall =
        |fx, h, m, pt, pc, kt, kc, hp, hk| ck!(fx, C_GenerateKeyPair(h, m, pt, pc, kt, kc, hp, hk));
    #[derive(Clone, Copy)]
    enum Hostile {
        NullMechanism,
        NullParam,
        NullPublicTemplate,
        NullPrivateTemplate,
        NullPublicHandle,
        NullPrivateHandle,
        BogusMechanism,
        Session(BadSession),
    }
    let mut cases: Vec<(String, Hostile, Expect, bool)> = vec![
        (
            "pMechanism = NULL".into(),
            Hostile::NullMechanism,
            Both(CKR_ARGUMENTS_BAD),
            true,
        ),
        (
            "pParameter = NULL, ulParameterLen = 5".into(),
            Hostile::NullParam,
            Both(CKR_ARGUMENTS_BAD),
            true,
        ),
        (
            "pPublicKeyTemplate = NULL, count = 2".into(),
            Hostile::NullPublicTemplate,
            Both(CKR_ARGUMENTS_BAD),
            true,
        ),
        (
            "pPrivateKeyTemplate = NULL, count = 3".into(),
            Hostile::NullPrivateTemplate,
            Both(CKR_ARGUMENTS_BAD),
            true,
        ),
        (
            "phPublicKey = NULL".into(),
            Hostile::NullPublicHandle,
            Both(CKR_ARGUMENTS_BAD),
            true,
        ),
        (
            "phPrivateKey = NULL".into(),
            Hostile::NullPrivateHandle,
            Both(CKR_ARGUMENTS_BAD),
            true,
        ),
        (
            "mechanism 0xdeadbeef".into(),
            Hostile::BogusMechanism,
            Both(CKR_MECHANISM_INVALID),
            false,
        ),
    ];
    for kind in BadSession::ALL {
        cases.push((
            kind.describe().into(),
            Hostile::Session(kind),
            Both(CKR_SESSION_HANDLE_INVALID),
            true,
        ));
    }
    for (what, hostile, expect, local) in cases {
        t.row("C_GenerateKeyPair", &what, expect, local, move |fx, _| {
            let (no, yes) = (CK_FALSE, CK_TRUE);
            let mut public = [attr_bytes(CKA_EC_PARAMS, &P256_OID), attr(CKA_TOKEN, &no)];
            let mut private = [
                attr(CKA_TOKEN, &no),
                attr(CKA_SIGN, &yes),
                attr(CKA_SENSITIVE, &yes),
            ];
            let mut m = mech(CKM_EC_KEY_PAIR_GEN);
            let mut bad_param = CK_MECHANISM {
                mechanism: CKM_EC_KEY_PAIR_GEN,
                pParameter: null_mut(),
                ulParameterLen: 5,
            };
            let mut bogus = mech(BOGUS_MECHANISM);
            let (mut hp, mut hk) = (0, 0);
            let mut session = fx.s();
            let mut mp: *mut CK_MECHANISM = &mut m;
            let (mut pt, mut kt) = (public.as_mut_ptr(), private.as_mut_ptr());
            let (mut php, mut phk): (*mut CK_OBJECT_HANDLE, *mut CK_OBJECT_HANDLE) =
                (&mut hp, &mut hk);
            match hostile {
                Hostile::NullMechanism => mp = null_mut(),
                Hostile::NullParam => mp = &mut bad_param,
                Hostile::NullPublicTemplate => pt = null_mut(),
                Hostile::NullPrivateTemplate => kt = null_mut(),
                Hostile::NullPublicHandle => php = null_mut(),
                Hostile::NullPrivateHandle => phk = null_mut(),
                Hostile::BogusMechanism => mp = &mut bogus,
                Hostile::Session(kind) => session = kind.handle(fx),
            }
            pair(fx, session, mp, pt, 2, kt, 3, php, phk)
        });
    }

    // C_WrapKey: AES key wrap (RFC 3394) of the AES key under itself.
    t.local(
        "C_WrapKey",
        "pMechanism = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut n = 0;
            ck!(
                fx,
                C_WrapKey(fx.s(), null_mut(), fx.aes, fx.aes, null_mut(), &mut n)
            )
        },
    );
    t.local(
        "C_WrapKey",
        "pParameter = NULL, ulParameterLen = 5",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut m = CK_MECHANISM {
                mechanism: CKM_AES_KEY_WRAP,
                pParameter: null_mut(),
                ulParameterLen: 5,
            };
            let mut n = 0;
            ck!(
                fx,
                C_WrapKey(fx.s(), &mut m, fx.aes, fx.aes, null_mut(), &mut n)
            )
        },
    );
    t.local(
        "C_WrapKey",
        "pulWrappedKeyLen = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut m = mech(CKM_AES_KEY_WRAP);
            let mut out = [0u8; 64];
            ck!(
                fx,
                C_WrapKey(fx.s(), &mut m, fx.aes, fx.aes, out.as_mut_ptr(), null_mut())
            )
        },
    );
    for (what, k) in [("0", 0), ("never issued", NEVER_ISSUED_OBJECT)] {
        t.fwd(
            "C_WrapKey",
            &format!("hWrappingKey {what}"),
            Both(CKR_WRAPPING_KEY_HANDLE_INVALID),
            move |fx, _| {
                let mut m = mech(CKM_AES_KEY_WRAP);
                let mut n = 0;
                ck!(fx, C_WrapKey(fx.s(), &mut m, k, fx.aes, null_mut(), &mut n))
            },
        );
        t.fwd(
            "C_WrapKey",
            &format!("hKey {what}"),
            Both(CKR_KEY_HANDLE_INVALID),
            move |fx, _| {
                let mut m = mech(CKM_AES_KEY_WRAP);
                let mut n = 0;
                ck!(fx, C_WrapKey(fx.s(), &mut m, fx.aes, k, null_mut(), &mut n))
            },
        );
    }
    t.sessions("C_WrapKey", |fx, h| {
        let mut m = mech(CKM_AES_KEY_WRAP);
        let mut n = 0;
        ck!(fx, C_WrapKey(h, &mut m, fx.aes, fx.aes, null_mut(), &mut n))
    });

    // C_UnwrapKey: 40 bytes of RFC 3394 output (a 32-byte key), garbage.
    #[allow(clippy::too_many_arguments)]
    fn unwrap(
        fx: &Fx,
        h: CK_SESSION_HANDLE,
        m: *mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        wrapped: *mut u8,
        wrapped_len: CK_ULONG,
        template: Option<*mut CK_ATTRIBUTE>,
        count: CK_ULONG,
        ph: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let kt = KeyTemplate::new();
        let mut tm = kt.attrs(false);
        let tp = template.unwrap_or(tm.as_mut_ptr());
        ck!(
            fx,
            C_UnwrapKey(h, m, key, wrapped, wrapped_len, tp, count, ph)
        )
    }
    t.local(
        "C_UnwrapKey",
        "pMechanism = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut w = [0u8; 40];
            let mut k = 0;
            unwrap(
                fx,
                fx.s(),
                null_mut(),
                fx.aes,
                w.as_mut_ptr(),
                40,
                None,
                4,
                &mut k,
            )
        },
    );
    t.local(
        "C_UnwrapKey",
        "pWrappedKey = NULL, ulWrappedKeyLen = 40",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut m = mech(CKM_AES_KEY_WRAP);
            let mut k = 0;
            unwrap(fx, fx.s(), &mut m, fx.aes, null_mut(), 40, None, 4, &mut k)
        },
    );
    t.local(
        "C_UnwrapKey",
        "pWrappedKey = NULL, ulWrappedKeyLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut m = mech(CKM_AES_KEY_WRAP);
            let mut k = 0;
            unwrap(fx, fx.s(), &mut m, fx.aes, null_mut(), MAX, None, 4, &mut k)
        },
    );
    t.local(
        "C_UnwrapKey",
        "pTemplate = NULL, ulAttributeCount = 4",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut m = mech(CKM_AES_KEY_WRAP);
            let mut w = [0u8; 40];
            let mut k = 0;
            unwrap(
                fx,
                fx.s(),
                &mut m,
                fx.aes,
                w.as_mut_ptr(),
                40,
                Some(null_mut()),
                4,
                &mut k,
            )
        },
    );
    t.local("C_UnwrapKey", "phKey = NULL", CKR_ARGUMENTS_BAD, |fx, _| {
        let mut m = mech(CKM_AES_KEY_WRAP);
        let mut w = [0u8; 40];
        unwrap(
            fx,
            fx.s(),
            &mut m,
            fx.aes,
            w.as_mut_ptr(),
            40,
            None,
            4,
            null_mut(),
        )
    });
    for (what, k) in [
        ("hUnwrappingKey = 0", 0),
        ("hUnwrappingKey never issued", NEVER_ISSUED_OBJECT),
    ] {
        t.fwd(
            "C_UnwrapKey",
            what,
            Both(CKR_UNWRAPPING_KEY_HANDLE_INVALID),
            move |fx, _| {
                let mut m = mech(CKM_AES_KEY_WRAP);
                let mut w = [0u8; 40];
                let mut h = 0;
                unwrap(fx, fx.s(), &mut m, k, w.as_mut_ptr(), 40, None, 4, &mut h)
            },
        );
    }
    t.sessions("C_UnwrapKey", |fx, h| {
        let mut m = mech(CKM_AES_KEY_WRAP);
        let mut w = [0u8; 40];
        let mut k = 0;
        unwrap(fx, h, &mut m, fx.aes, w.as_mut_ptr(), 40, None, 4, &mut k)
    });

    // C_DeriveKey: CKM_AES_ECB_ENCRYPT_DATA over 16 bytes.
    fn derive(
        fx: &Fx,
        h: CK_SESSION_HANDLE,
        null_mechanism: bool,
        base: CK_OBJECT_HANDLE,
        template: Option<*mut CK_ATTRIBUTE>,
        ph: *mut CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let mut data = [0x11u8; 16];
        let mut p = CK_KEY_DERIVATION_STRING_DATA {
            pData: data.as_mut_ptr(),
            ulLen: 16,
        };
        let mut m = CK_MECHANISM {
            mechanism: CKM_AES_ECB_ENCRYPT_DATA,
            pParameter: &mut p as *mut _ as *mut c_void,
            ulParameterLen: std::mem::size_of::<CK_KEY_DERIVATION_STRING_DATA>() as CK_ULONG,
        };
        let mp: *mut CK_MECHANISM = if null_mechanism { null_mut() } else { &mut m };
        let kt = KeyTemplate::new();
        let mut tm = kt.attrs(false);
        let tp = template.unwrap_or(tm.as_mut_ptr());
        ck!(fx, C_DeriveKey(h, mp, base, tp, 4, ph))
    }
    t.local(
        "C_DeriveKey",
        "pMechanism = NULL",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut k = 0;
            derive(fx, fx.s(), true, fx.aes, None, &mut k)
        },
    );
    t.local(
        "C_DeriveKey",
        "pTemplate = NULL, ulAttributeCount = 4",
        CKR_ARGUMENTS_BAD,
        |fx, _| {
            let mut k = 0;
            derive(fx, fx.s(), false, fx.aes, Some(null_mut()), &mut k)
        },
    );
    t.local("C_DeriveKey", "phKey = NULL", CKR_ARGUMENTS_BAD, |fx, _| {
        derive(fx, fx.s(), false, fx.aes, None, null_mut())
    });
    // The soft token has no key derivation at all (CKR_FUNCTION_NOT_SUPPORTED, before the key
    // is looked at). SoftHSMv2 answers CKR_OBJECT_HANDLE_INVALID where §5.14 lists
    // CKR_KEY_HANDLE_INVALID, as it does for every key argument (see KEY_HANDLE_INVALID).
    for (what, k) in [
        ("hBaseKey = 0", 0),
        ("hBaseKey never issued", NEVER_ISSUED_OBJECT),
    ] {
        t.fwd(
            "C_DeriveKey",
            what,
            Split {
                softhsm: CKR_OBJECT_HANDLE_INVALID,
                soft: CKR_FUNCTION_NOT_SUPPORTED,
            },
            move |fx, _| {
                let mut h = 0;
                derive(fx, fx.s(), false, k, None, &mut h)
            },
        );
    }
    t.sessions("C_DeriveKey", |fx, h| {
        let mut k = 0;
        derive(fx, h, false, fx.aes, None, &mut k)
    });
}

fn random_and_legacy(t: &mut Table) {
    t.local(
        "C_SeedRandom",
        "pSeed = NULL, ulSeedLen = 8",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_SeedRandom(fx.s(), null_mut(), 8)),
    );
    t.local(
        "C_SeedRandom",
        "pSeed = NULL, ulSeedLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_SeedRandom(fx.s(), null_mut(), MAX)),
    );
    t.fwd(
        "C_SeedRandom",
        "a real pSeed with ulSeedLen = 0",
        Both(CKR_OK),
        |fx, _| {
            let mut seed = [0u8; 8];
            ck!(fx, C_SeedRandom(fx.s(), seed.as_mut_ptr(), 0))
        },
    );
    t.sessions("C_SeedRandom", |fx, h| {
        let mut seed = [7u8; 8];
        ck!(fx, C_SeedRandom(h, seed.as_mut_ptr(), 8))
    });
    t.local(
        "C_GenerateRandom",
        "RandomData = NULL, ulRandomLen = 16",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GenerateRandom(fx.s(), null_mut(), 16)),
    );
    t.local(
        "C_GenerateRandom",
        "RandomData = NULL, ulRandomLen = CK_ULONG_MAX",
        CKR_ARGUMENTS_BAD,
        |fx, _| ck!(fx, C_GenerateRandom(fx.s(), null_mut(), MAX)),
    );
    t.fwd(
        "C_GenerateRandom",
        "a real buffer with ulRandomLen = 0",
        Both(CKR_OK),
        |fx, _| {
            let mut buf = [0u8; 16];
            ck!(fx, C_GenerateRandom(fx.s(), buf.as_mut_ptr(), 0))
        },
    );
    t.sessions("C_GenerateRandom", |fx, h| {
        let mut buf = [0u8; 16];
        ck!(fx, C_GenerateRandom(h, buf.as_mut_ptr(), 16))
    });
    // §5.16: legacy functions, CKR_FUNCTION_NOT_PARALLEL on a valid session.
    t.fwd(
        "C_GetFunctionStatus",
        "a valid session (legacy function)",
        Both(CKR_FUNCTION_NOT_PARALLEL),
        |fx, _| ck!(fx, C_GetFunctionStatus(fx.s())),
    );
    t.sessions("C_GetFunctionStatus", |fx, h| {
        ck!(fx, C_GetFunctionStatus(h))
    });
    t.fwd(
        "C_CancelFunction",
        "a valid session (legacy function)",
        Both(CKR_FUNCTION_NOT_PARALLEL),
        |fx, _| ck!(fx, C_CancelFunction(fx.s())),
    );
    t.sessions("C_CancelFunction", |fx, h| ck!(fx, C_CancelFunction(h)));
}

// ---------------------------------------------------------------------------------------------
// The child: set up, run the table, print one line per row and the total.

/// Opens a read-write session on `slot`.
fn open(f: &CK_FUNCTION_LIST, slot: CK_SLOT_ID) -> CK_SESSION_HANDLE {
    let mut h = 0;
    let fx = Setup { f };
    let rv = ck!(
        fx,
        C_OpenSession(
            slot,
            CKF_SERIAL_SESSION | CKF_RW_SESSION,
            null_mut(),
            None,
            &mut h
        )
    );
    assert_eq!(rv, CKR_OK, "C_OpenSession: {}", rv_text(rv));
    h
}

fn generate(
    f: &CK_FUNCTION_LIST,
    s: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_TYPE,
    template: &mut [CK_ATTRIBUTE],
) -> CK_OBJECT_HANDLE {
    let fx = Setup { f };
    let mut m = mech(mechanism);
    let mut k = 0;
    let rv = ck!(
        fx,
        C_GenerateKey(
            s,
            &mut m,
            template.as_mut_ptr(),
            template.len() as CK_ULONG,
            &mut k
        )
    );
    assert_eq!(rv, CKR_OK, "C_GenerateKey: {}", rv_text(rv));
    k
}

/// The function list alone, for setup calls through `ck!`.
struct Setup<'a> {
    f: &'a CK_FUNCTION_LIST,
}

fn spy_log_len(path: Option<&Path>) -> u64 {
    path.and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .unwrap_or(0)
}

fn spy_log_tail(path: &Path, from: u64) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let tail = &text[(from as usize).min(text.len())..];
    String::from_utf8_lossy(&tail[..tail.len().min(600)]).into_owned()
}

#[test]
#[ignore = "run as a child by the other tests"]
fn child_process() {
    let Ok(scenario) = std::env::var(SCENARIO_VAR) else {
        return;
    };
    let backend = match scenario.as_str() {
        "softhsm" => Backend::SoftHsm,
        "soft" => Backend::Soft,
        other => panic!("unknown scenario {other}"),
    };
    let skip: Vec<usize> = std::env::var(SKIP_VAR)
        .unwrap_or_default()
        .split(',')
        .filter_map(|n| n.parse().ok())
        .collect();
    let spy_log = std::env::var_os("PKCS11SPY_OUTPUT").map(PathBuf::from);

    let mut out = std::io::stdout().lock();
    writeln!(out).unwrap();

    // SAFETY: loading the built module runs no initialisers of its own (p11gate has none).
    let lib = unsafe { libloading::Library::new(common::module()) }.expect("load libp11gate.so");
    // SAFETY: the symbols have the PKCS#11 signatures.
    let (get_list, get_interface_list, get_interface) = unsafe {
        let get_list: libloading::Symbol<unsafe extern "C" fn(*mut CK_FUNCTION_LIST_PTR) -> CK_RV> =
            lib.get(b"C_GetFunctionList").unwrap();
        let gil: libloading::Symbol<GetInterfaceList> = lib.get(b"C_GetInterfaceList").unwrap();
        let gi: libloading::Symbol<GetInterface> = lib.get(b"C_GetInterface").unwrap();
        (*get_list, *gil, *gi)
    };
    let mut list: CK_FUNCTION_LIST_PTR = null_mut();
    // SAFETY: a live output pointer.
    assert_eq!(unsafe { get_list(&mut list) }, CKR_OK);
    // SAFETY: p11gate's function list is static and lives as long as the library, which this
    // process never unloads (the `lib` handle is leaked below).
    let f: &'static CK_FUNCTION_LIST = unsafe { &*list };
    std::mem::forget(lib);
    let setup = Setup { f };
    let rv = ck!(setup, C_Initialize(null_mut()));
    assert_eq!(rv, CKR_OK, "C_Initialize: {}", rv_text(rv));

    let mut slots = [0 as CK_SLOT_ID; 8];
    let mut n: CK_ULONG = 8;
    assert_eq!(
        ck!(setup, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut n)),
        CKR_OK
    );
    assert!(n >= 1, "no slot with a token");
    let slot = slots[0];
    let anchor = open(f, slot);
    let pin = USER_PIN.as_bytes();
    let rv = ck!(
        setup,
        C_Login(
            anchor,
            CKU_USER,
            pin.as_ptr() as *mut u8,
            pin.len() as CK_ULONG
        )
    );
    assert_eq!(rv, CKR_OK, "C_Login: {}", rv_text(rv));
    let stale = open(f, slot);
    assert_eq!(ck!(setup, C_CloseSession(stale)), CKR_OK);

    let (yes, no) = (CK_TRUE, CK_FALSE);
    let (secret, aes_type, generic, len32) =
        (CKO_SECRET_KEY, CKK_AES, CKK_GENERIC_SECRET, 32 as CK_ULONG);
    let aes = generate(
        f,
        anchor,
        CKM_AES_KEY_GEN,
        &mut [
            attr(CKA_CLASS, &secret),
            attr(CKA_KEY_TYPE, &aes_type),
            attr(CKA_VALUE_LEN, &len32),
            attr(CKA_TOKEN, &no),
            attr(CKA_SENSITIVE, &yes),
            attr(CKA_EXTRACTABLE, &yes),
            attr(CKA_ENCRYPT, &yes),
            attr(CKA_DECRYPT, &yes),
            attr(CKA_WRAP, &yes),
            attr(CKA_UNWRAP, &yes),
            attr(CKA_DERIVE, &yes),
            attr_bytes(CKA_LABEL, AES_LABEL),
        ],
    );
    let hmac = generate(
        f,
        anchor,
        CKM_GENERIC_SECRET_KEY_GEN,
        &mut [
            attr(CKA_CLASS, &secret),
            attr(CKA_KEY_TYPE, &generic),
            attr(CKA_VALUE_LEN, &len32),
            attr(CKA_TOKEN, &no),
            attr(CKA_SIGN, &yes),
            attr(CKA_VERIFY, &yes),
            attr_bytes(CKA_LABEL, b"hostile-hmac-key"),
        ],
    );
    let data_class = CKO_DATA;
    let mut data_template = [
        attr(CKA_CLASS, &data_class),
        attr(CKA_TOKEN, &no),
        attr_bytes(CKA_LABEL, b"hostile-data"),
        attr_bytes(CKA_VALUE, b"value"),
    ];
    let mut data = 0;
    let rv = ck!(
        setup,
        C_CreateObject(anchor, data_template.as_mut_ptr(), 4, &mut data)
    );
    assert_eq!(rv, CKR_OK, "C_CreateObject: {}", rv_text(rv));

    let fx = Fx {
        f,
        get_interface_list,
        get_interface,
        slot,
        session: Cell::new(0),
        stale,
        aes,
        hmac,
        data,
        slots_with_token: n,
        spy_log: spy_log.clone(),
        mark: Cell::new(0),
    };

    // The spy must log the calls that reach it, as they happen, or its silence proves nothing.
    if backend == Backend::SoftHsm {
        let before = spy_log_len(spy_log.as_deref());
        let mut buf = [0u8; 4];
        assert_eq!(
            ck!(fx, C_GenerateRandom(anchor, buf.as_mut_ptr(), 4)),
            CKR_OK
        );
        assert!(
            spy_log_len(spy_log.as_deref()) > before,
            "pkcs11-spy's log {spy_log:?} did not grow during a forwarded call"
        );
    }

    let cases = table();
    let mut unexpected = 0;
    let mut seen = std::collections::HashSet::new();
    for (i, case) in cases.iter().enumerate() {
        let name = format!("{}: {}", case.func, case.hostile);
        assert!(seen.insert(name.clone()), "two rows named {name}");
        if skip.contains(&i) {
            unexpected += 1;
            writeln!(
                out,
                "FAIL #{i} {name}: crashed the process (in an earlier run)"
            )
            .unwrap();
            continue;
        }
        writeln!(out, "run  #{i} {name}").unwrap();
        out.flush().unwrap();
        fx.session.set(open(f, slot));
        let mut errs = Vec::new();
        fx.mark();
        let rv = (case.run)(&fx, &mut errs);
        let before = fx.mark.get();
        let after = spy_log_len(spy_log.as_deref());
        let want = case.expect.rv(backend);
        if rv != want {
            errs.insert(
                0,
                format!("expected {}, got {}", rv_text(want), rv_text(rv)),
            );
        }
        if case.local && backend == Backend::SoftHsm && after != before {
            errs.push(format!(
                "reached the upstream (pkcs11-spy logged {} bytes: {:?})",
                after - before,
                spy_log_tail(spy_log.as_deref().unwrap(), before)
            ));
        }
        // Closing ends whatever the row started. A row that closed its own session gets
        // CKR_SESSION_HANDLE_INVALID here, which is fine.
        ck!(fx, C_CloseSession(fx.s()));
        if errs.is_empty() {
            writeln!(out, "ok   #{i} {name} -> {}", rv_text(rv)).unwrap();
        } else {
            unexpected += 1;
            writeln!(out, "FAIL #{i} {name}: {}", errs.join("; ")).unwrap();
        }
    }
    // Still alive and working: the fixture's keys survived every row.
    let mut class: CK_OBJECT_CLASS = 0;
    let mut tm = [attr_mut(CKA_CLASS, &mut class)];
    let rv = ck!(fx, C_GetAttributeValue(anchor, fx.aes, tm.as_mut_ptr(), 1));
    if rv != CKR_OK || class != CKO_SECRET_KEY {
        unexpected += 1;
        writeln!(
            out,
            "FAIL the AES key is gone after the table: {}",
            rv_text(rv)
        )
        .unwrap();
    }
    assert_eq!(ck!(fx, C_Finalize(null_mut())), CKR_OK);
    writeln!(out, "{} cases, {unexpected} unexpected", cases.len()).unwrap();
    out.flush().unwrap();
    if unexpected > 0 {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: prepare a backend, run the child (again, without the rows that crashed it), and
// check its verdict.

/// Runs the table in a child process until it completes; rows that crash a child are skipped
/// in the next run and reported.
fn run_table(scenario: &str, env: &[(String, String)], log: &Path) -> String {
    let mut crashed: Vec<usize> = Vec::new();
    loop {
        let skip = crashed
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut env = env.to_vec();
        env.push((SKIP_VAR.into(), skip));
        let out = common::child_test_command(SCENARIO_VAR, scenario, &env)
            .stdin(Stdio::null())
            .output()
            .expect("run the child");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let finished = stdout.lines().any(|l| l.ends_with(" unexpected"));
        if finished || out.status.code().is_some_and(|c| c != 0 && c != 1) {
            // Completed, or failed in setup (a panic: exit 101): report what it said.
            if !finished {
                panic!(
                    "{scenario}: the child failed before the table ran ({})\n{stdout}\n{stderr}",
                    out.status
                );
            }
            // The child's verdict line (the test harness may print its own lines after it).
            let last = stdout
                .lines()
                .rev()
                .find(|l| l.ends_with(" unexpected"))
                .unwrap_or("");
            let n = table().len();
            let failures: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
            assert!(
                out.status.success() && last == format!("{n} cases, 0 unexpected"),
                "{scenario}: expected exit 0 and \"{n} cases, 0 unexpected\", got {} and \"{last}\"\n\
                 unexpected:\n  {}\n--- stderr (tail) ---\n{}",
                out.status,
                failures.join("\n  "),
                &stderr[stderr.len().saturating_sub(4000)..]
            );
            return stdout;
        }
        // Killed by a signal (or exit 1 without a verdict): the row it was running crashed it.
        let running = stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("run  #"))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{scenario}: the child died ({}) outside any row\n{stdout}\n{stderr}",
                    out.status
                )
            });
        assert!(
            !crashed.contains(&running) && crashed.len() < 20,
            "{scenario}: crash loop at row #{running}\n{stderr}"
        );
        let log_text = std::fs::read_to_string(log).unwrap_or_default();
        eprintln!(
            "{scenario}: row #{running} crashed the child ({}); running the table again without it\n\
             --- stderr (tail) ---\n{}\n--- p11gate's log (tail) ---\n{}",
            out.status,
            &stderr[stderr.len().saturating_sub(2000)..],
            &log_text[log_text.len().saturating_sub(2000)..]
        );
        crashed.push(running);
    }
}

/// Rows per function, for the summary the tests print.
fn summary() -> String {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for c in table() {
        *per.entry(c.func).or_default() += 1;
    }
    per.iter()
        .map(|(f, n)| format!("{f} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn audit_env(dir: &Path) -> Vec<(String, String)> {
    let key = dir.join("audit.key");
    let out = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["audit", "keygen"])
        .arg(&key)
        .output()
        .expect("p11gate audit keygen");
    assert!(out.status.success(), "{out:?}");
    vec![
        (
            "P11GATE_AUDIT".into(),
            format!("file:{}", dir.join("audit.jsonl").display()),
        ),
        ("P11GATE_AUDIT_KEY".into(), key.display().to_string()),
    ]
}

/// The table every 2.40 function is in: the rows name each of the 68 (plus the two 3.0
/// interface functions).
#[test]
fn the_table_covers_every_2_40_function() {
    let names: std::collections::BTreeSet<&str> = table().iter().map(|c| c.func).collect();
    let exports = include_str!("exports.txt");
    let mut missing = Vec::new();
    for name in [
        "C_Initialize",
        "C_Finalize",
        "C_GetInfo",
        "C_GetFunctionList",
        "C_GetSlotList",
        "C_GetSlotInfo",
        "C_GetTokenInfo",
        "C_GetMechanismList",
        "C_GetMechanismInfo",
        "C_InitToken",
        "C_InitPIN",
        "C_SetPIN",
        "C_OpenSession",
        "C_CloseSession",
        "C_CloseAllSessions",
        "C_GetSessionInfo",
        "C_GetOperationState",
        "C_SetOperationState",
        "C_Login",
        "C_Logout",
        "C_CreateObject",
        "C_CopyObject",
        "C_DestroyObject",
        "C_GetObjectSize",
        "C_GetAttributeValue",
        "C_SetAttributeValue",
        "C_FindObjectsInit",
        "C_FindObjects",
        "C_FindObjectsFinal",
        "C_EncryptInit",
        "C_Encrypt",
        "C_EncryptUpdate",
        "C_EncryptFinal",
        "C_DecryptInit",
        "C_Decrypt",
        "C_DecryptUpdate",
        "C_DecryptFinal",
        "C_DigestInit",
        "C_Digest",
        "C_DigestUpdate",
        "C_DigestKey",
        "C_DigestFinal",
        "C_SignInit",
        "C_Sign",
        "C_SignUpdate",
        "C_SignFinal",
        "C_SignRecoverInit",
        "C_SignRecover",
        "C_VerifyInit",
        "C_Verify",
        "C_VerifyUpdate",
        "C_VerifyFinal",
        "C_VerifyRecoverInit",
        "C_VerifyRecover",
        "C_DigestEncryptUpdate",
        "C_DecryptDigestUpdate",
        "C_SignEncryptUpdate",
        "C_DecryptVerifyUpdate",
        "C_GenerateKey",
        "C_GenerateKeyPair",
        "C_WrapKey",
        "C_UnwrapKey",
        "C_DeriveKey",
        "C_SeedRandom",
        "C_GenerateRandom",
        "C_GetFunctionStatus",
        "C_CancelFunction",
        "C_WaitForSlotEvent",
    ] {
        assert!(exports.contains(name), "{name} is not in tests/exports.txt");
        if !names.contains(name) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "no rows for {missing:?}");
    assert_eq!(names.len(), 70, "{names:?}");
}

#[test]
fn hostile_input_through_p11gate_to_softhsm_behind_pkcs11_spy() {
    assert!(
        Path::new(PKCS11_SPY).exists(),
        "{PKCS11_SPY} missing: install opensc-pkcs11 (scripts/test.sh does)"
    );
    let hsm = SoftHsm::new();
    hsm.init_token("hostile");
    let spy_log = hsm.dir().join("spy.log");
    let mut env = hsm.gate_env();
    env.retain(|(k, _)| k != "P11GATE_UPSTREAM" && k != "P11GATE_LOG");
    env.push(("P11GATE_UPSTREAM".into(), PKCS11_SPY.into()));
    env.push((
        "PKCS11SPY".into(),
        common::softhsm_module().display().to_string(),
    ));
    env.push(("PKCS11SPY_OUTPUT".into(), spy_log.display().to_string()));
    env.push((
        "P11GATE_LOG".into(),
        hsm.dir().join("p11gate.log").display().to_string(),
    ));
    env.extend(audit_env(hsm.dir()));
    run_table("softhsm", &env, &hsm.dir().join("p11gate.log"));
    eprintln!("rows per function: {}", summary());

    // Over the whole log: no CKR_SESSION_HANDLE_INVALID from the upstream at all (every hostile
    // session handle is p11gate's to refuse), and the spy saw the calls it should.
    let log = std::fs::read_to_string(&spy_log).expect("the spy's log");
    assert!(
        log.contains("C_EncryptInit") && log.contains("C_GetAttributeValue"),
        "the forwarded rows did not go through pkcs11-spy:\n{log}"
    );
    assert!(
        !log.contains("CKR_SESSION_HANDLE_INVALID"),
        "a hostile session handle reached the upstream (spy log {})",
        spy_log.display()
    );
}

#[test]
fn hostile_input_on_the_soft_token() {
    let home = tempfile::tempdir().expect("tempdir");
    let env: Vec<(String, String)> = vec![
        ("P11GATE_HOME".into(), home.path().display().to_string()),
        ("P11GATE_CONFIG".into(), "/nonexistent/p11gate.toml".into()),
        (
            "P11GATE_LOG".into(),
            home.path().join("p11gate.log").display().to_string(),
        ),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["token", "init", "--label", "hostile"])
        .env_remove("P11GATE_UPSTREAM")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("p11gate token init");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SO_PIN}\n{USER_PIN}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "token init: {out:?}");
    let mut env = env;
    let audit_dir = home.path().join("audit");
    std::fs::create_dir(&audit_dir).unwrap();
    env.extend(audit_env(&audit_dir));
    run_table("soft", &env, &home.path().join("p11gate.log"));
}
