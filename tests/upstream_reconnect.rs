//! `reconnect = true`: an HSM that goes away and comes back, while the client keeps its
//! sessions. The upstream `hsm` is `tests/c/faulty.c` wrapping SoftHSMv2 in outage mode: while
//! the file named by FAULTY_OUTAGE_FILE exists every call answers CKR_DEVICE_REMOVED and
//! C_Initialize fails; when it is gone the device is back, having lost its sessions and login.
//! A second upstream `plain` (a copy of SoftHSMv2's module, so a separate instance) keeps
//! working throughout. Slot 0 (hsm) maps the app's PIN to a held credential; slot 1 (plain)
//! passes the PIN through.
//!
//! Each scenario runs in a child process of its own (this binary again, the ignored test
//! `child_process`): it makes the raw C API calls through libp11gate.so, switches the outage on
//! and off itself, and asserts every CK_RV. The parent then reads the child's log and audit
//! file. Waits are bounded polls: a call that hangs fails the "within 2 s" check, and the child
//! is killed after CHILD_TIMEOUT.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::{SoftHsm, USER_PIN};

const SCENARIO_VAR: &str = "P11GATE_RECONNECT_SCENARIO";
const APP_PIN: &str = "vault-app-pin-5150";
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Two SoftHSMv2 tokens, the shim, a copy of SoftHSMv2's module, the credential and audit key.
struct Fixture {
    hsm: SoftHsm,
    shim: PathBuf,
    plain_module: PathBuf,
    credential: PathBuf,
    pin_hash: String,
    audit_key: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let hsm = SoftHsm::new();
        hsm.init_token("reconn").init_token("plain");
        let dir = hsm.dir().to_path_buf();
        let plain_module = dir.join("libsofthsm2-plain.so");
        std::fs::copy(common::softhsm_module(), &plain_module).expect("copy libsofthsm2.so");
        let credential = dir.join("hsm.pin");
        std::fs::write(&credential, format!("{USER_PIN}\n")).expect("write the credential");
        std::fs::set_permissions(&credential, std::fs::Permissions::from_mode(0o600)).unwrap();
        let audit_key = dir.join("audit.key");
        let out = p11gate(&["audit", "keygen", &audit_key.display().to_string()], "");
        assert!(out.status.success(), "{out:?}");
        let out = p11gate(&["hash-pin"], &format!("{APP_PIN}\n"));
        assert!(out.status.success(), "{out:?}");
        let pin_hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(pin_hash.starts_with("$argon2id$"), "{pin_hash}");
        Fixture {
            shim: build_shim(&dir),
            hsm,
            plain_module,
            credential,
            pin_hash,
            audit_key,
        }
    }

    /// Runs `scenario` with `reconnect` on the hsm upstream; returns the child's log and the
    /// records of its audit file (whose chain has been verified).
    fn run(&self, scenario: &str, reconnect: bool) -> (String, Vec<Value>) {
        let dir = self.hsm.dir();
        let config = dir.join(format!("{scenario}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"[[upstream]]
name = "hsm"
path = "{shim}"
reconnect = {reconnect}

[[upstream]]
name = "plain"
path = "{plain}"

[[slot]]
id = 0
upstream = "hsm"
token_label = "reconn"
credential_file = "{credential}"
pin_hash = "{hash}"

[[slot]]
id = 1
upstream = "plain"
token_label = "plain"
"#,
                shim = self.shim.display(),
                plain = self.plain_module.display(),
                credential = self.credential.display(),
                hash = self.pin_hash,
            ),
        )
        .expect("write the config");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let audit = dir.join(format!("{scenario}.audit.jsonl"));
        let log = dir.join(format!("{scenario}.log"));
        let env: Vec<(String, String)> = [
            ("SOFTHSM2_CONF", self.hsm.conf.display().to_string()),
            ("P11GATE_CONFIG", config.display().to_string()),
            ("P11GATE_LOG", log.display().to_string()),
            ("P11GATE_LOG_LEVEL", "info".into()),
            ("P11GATE_AUDIT", format!("file:{}", audit.display())),
            ("P11GATE_AUDIT_KEY", self.audit_key.display().to_string()),
            (
                "FAULTY_REAL",
                common::softhsm_module().display().to_string(),
            ),
            (
                "FAULTY_OUTAGE_FILE",
                dir.join(format!("{scenario}.outage")).display().to_string(),
            ),
            ("RECONNECT_SHIM", self.shim.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let (status, stdout, stderr) = common::run_child_scenario(
            SCENARIO_VAR,
            scenario,
            &env,
            dir,
            CHILD_TIMEOUT,
            Some(&log),
        );
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            status.success() && stdout.contains(&format!("scenario {scenario} finished\n")),
            "scenario {scenario} failed: {status}\n--- stdout ---\n{stdout}\n--- stderr ---\n\
             {stderr}\n--- p11gate log ---\n{log_text}"
        );
        let out = Command::new(env!("CARGO_BIN_EXE_p11gate"))
            .args(["audit", "verify"])
            .arg(&audit)
            .arg("--key")
            .arg(&self.audit_key)
            .output()
            .expect("p11gate audit verify");
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK, "),
            "{out:?}"
        );
        let recs = std::fs::read_to_string(&audit)
            .expect("read the audit file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert!(
            !log_text.contains(USER_PIN) && !log_text.contains(APP_PIN),
            "a PIN in the log"
        );
        (log_text, recs)
    }
}

fn p11gate(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run p11gate");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("p11gate output")
}

/// Compiles `tests/c/faulty.c` into `dir/libfaulty.so`.
fn build_shim(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/faulty.c");
    let so = dir.join("libfaulty.so");
    let out = Command::new(common::require_program("gcc"))
        .args([
            "-std=gnu11",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            "-I/usr/include/p11-kit-1",
        ])
        .arg(&src)
        .arg("-o")
        .arg(&so)
        .arg("-ldl")
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc {} failed (the PKCS#11 header comes from libp11-kit-dev):\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

/// Log lines that contain `what`.
fn lines_with<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

/// The (fn, rv) of the call records on `session`, in order.
fn calls_on(recs: &[Value], session: &Value) -> Vec<(String, String)> {
    recs.iter()
        .filter(|r| r["event"] == "call" && &r["session"] == session)
        .map(|r| {
            (
                r["fn"].as_str().unwrap_or("").to_string(),
                r["rv"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// The scenarios
// ------------------------------------------------------------------------------------------------

/// The outage takes `hsm` down; calls fail fast with CKR_DEVICE_REMOVED without reaching it,
/// `plain` keeps working; when the HSM is back the same session handles work again, logged
/// in, and keys found again decrypt what was encrypted before.
#[test]
fn the_same_sessions_come_back_logged_in_while_another_upstream_keeps_working() {
    let fx = Fixture::new();
    let (log, recs) = fx.run("reconnect", true);
    let down = lines_with(&log, "upstream hsm: down");
    assert_eq!(down.len(), 1, "{log}");
    assert!(
        down[0].contains("WARN") && down[0].contains("down (CKR_DEVICE_REMOVED)"),
        "{}",
        down[0]
    );
    let back = lines_with(&log, "upstream hsm: back after ");
    assert_eq!(back.len(), 1, "{log}");
    assert!(
        back[0].ends_with(": 2 session(s) re-opened, 1 login(s)"),
        "{}",
        back[0]
    );
    // Two tries failed while the HSM was away (the child waited for them).
    let tries: u64 = back[0]
        .split(" ms (")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", back[0]));
    assert!(tries >= 3, "{}", back[0]);
    assert!(lines_with(&log, "upstream plain: down").is_empty(), "{log}");
    let refused = lines_with(&log, "refused: it was not handed out on this slot since");
    assert_eq!(refused.len(), 1, "the stale key handle: {log}");

    let outages: Vec<&Value> = recs.iter().filter(|r| r["event"] == "outage").collect();
    assert_eq!(outages.len(), 1, "{recs:#?}");
    let o = outages[0];
    assert_eq!(o["upstream"], "hsm", "{o}");
    assert_eq!(o["rv"], "CKR_DEVICE_REMOVED", "{o}");
    assert!(o["since"].is_string(), "{o}");
    assert!(
        o["msg"]
            .as_str()
            .unwrap()
            .ends_with(": 2 session(s) re-opened, 1 login(s)"),
        "{o}"
    );
    // The first session's calls, as the audit trail tells them.
    let first = recs
        .iter()
        .find(|r| r["event"] == "call" && r["fn"] == "C_OpenSession" && r["slot"] == 0)
        .expect("C_OpenSession on slot 0");
    let calls = calls_on(&recs, &first["session"]);
    let outage_calls: Vec<&(String, String)> = calls
        .iter()
        .filter(|(_, rv)| rv == "CKR_DEVICE_REMOVED")
        .collect();
    assert_eq!(
        outage_calls
            .iter()
            .map(|(f, _)| f.as_str())
            .collect::<Vec<_>>(),
        vec![
            "C_EncryptInit",
            "C_EncryptInit",
            "C_SignInit",
            "C_FindObjectsInit",
            "C_Logout",
            "C_EncryptInit",
            "C_SignInit",
            "C_EncryptInit",
            "C_SignInit",
            "C_EncryptInit",
        ],
        "{calls:#?}"
    );
    assert!(
        calls.contains(&("C_EncryptInit".into(), "CKR_KEY_HANDLE_INVALID".into())),
        "{calls:#?}"
    );
}

/// Without `reconnect` the codes pass through, every call reaches the module, and after the
/// outage the session is gone for good (the device lost it): CKR_SESSION_HANDLE_INVALID.
/// C_Finalize and C_Initialize (what Vault does after errors) bring the client back.
#[test]
fn without_reconnect_the_session_stays_broken_until_the_client_initialises_again() {
    let fx = Fixture::new();
    let (log, recs) = fx.run("no_reconnect", false);
    assert!(lines_with(&log, ": down (").is_empty(), "{log}");
    assert!(lines_with(&log, "back after").is_empty(), "{log}");
    assert!(!recs.iter().any(|r| r["event"] == "outage"), "{recs:#?}");
}

/// Four threads encrypt on sessions of their own while the HSM goes away and comes back, and a
/// fifth on the other upstream: every call returns within 2 s, with the right ciphertext or
/// the outage code, and each thread's session is back, with its key found again.
#[test]
fn threads_in_flight_ride_through_an_outage() {
    let fx = Fixture::new();
    let (log, _) = fx.run("concurrent", true);
    assert_eq!(lines_with(&log, "upstream hsm: down").len(), 1, "{log}");
    let back = lines_with(&log, "upstream hsm: back after ");
    assert_eq!(back.len(), 1, "{log}");
    assert!(
        back[0].ends_with(": 6 session(s) re-opened, 1 login(s)"),
        "{}",
        back[0]
    );
}

/// C_Finalize while the upstream is down and its reconnect thread retries: it returns at once
/// and no reconnect thread is left; after the outage C_Initialize brings everything back.
#[test]
fn finalize_during_an_outage_returns_promptly_and_leaves_no_thread() {
    let fx = Fixture::new();
    let (log, _) = fx.run("finalize_while_down", true);
    assert_eq!(lines_with(&log, "upstream hsm: down").len(), 1, "{log}");
    assert!(lines_with(&log, "back after").is_empty(), "{log}");
}

// ------------------------------------------------------------------------------------------------
// The child: raw PKCS#11 calls through libp11gate.so
// ------------------------------------------------------------------------------------------------

#[test]
#[ignore = "a scenario's child process, run by the tests above"]
fn child_process() {
    let Ok(scenario) = std::env::var(SCENARIO_VAR) else {
        return;
    };
    match scenario.as_str() {
        "reconnect" => child::reconnect(),
        "no_reconnect" => child::no_reconnect(),
        "finalize_while_down" => child::finalize_while_down(),
        "concurrent" => child::concurrent(),
        other => panic!("unknown scenario {other:?}"),
    }
    println!("scenario {scenario} finished");
}

mod child {
    use std::ffi::c_void;
    use std::ptr::null_mut;
    use std::time::{Duration, Instant};

    use pkcs11_sys::*;

    use super::APP_PIN;
    use crate::common::{self, USER_PIN};

    const PLAINTEXT: [u8; 32] = *b"reconnect-plaintext-000000000042";
    const IV: [u8; 12] = [0x3c; 12];
    /// A call that takes longer counts as hanging.
    const HANG: Duration = Duration::from_secs(2);
    /// How long the HSM may take to come back after the outage ends.
    const COMEBACK: Duration = Duration::from_secs(10);

    #[track_caller]
    fn expect(what: &str, rv: CK_RV, want: CK_RV) {
        assert_eq!(rv, want, "{what}: want {want:#x}, got {rv:#x}");
    }

    /// Runs `call`, asserting that it returned within [`HANG`].
    #[track_caller]
    fn quick<T>(what: &str, call: impl FnOnce() -> T) -> T {
        let t0 = Instant::now();
        let out = call();
        let took = t0.elapsed();
        assert!(took < HANG, "{what} took {took:?}");
        out
    }

    fn outage(on: bool) {
        let file = std::env::var("FAULTY_OUTAGE_FILE").expect("FAULTY_OUTAGE_FILE");
        if on {
            std::fs::write(&file, b"away").expect("create the outage file");
        } else {
            std::fs::remove_file(&file).expect("remove the outage file");
        }
    }

    /// The shim's counts of calls it answered with the outage code: C_Initialize, and others.
    struct Shim {
        _lib: libloading::Library,
        answers: unsafe extern "C" fn() -> std::ffi::c_ulong,
        initializes: unsafe extern "C" fn() -> std::ffi::c_ulong,
    }

    impl Shim {
        fn load() -> Shim {
            let path = std::env::var("RECONNECT_SHIM").expect("RECONNECT_SHIM");
            // SAFETY: the shim has no initialisers; loading it again by its path gives the very
            // instance p11gate loads, and both counters have this signature.
            unsafe {
                let lib = libloading::Library::new(path).expect("load the shim");
                let counter = |name: &[u8]| {
                    *lib.get::<unsafe extern "C" fn() -> std::ffi::c_ulong>(name)
                        .expect("a counter of the shim")
                };
                let answers = counter(b"faulty_outage_answers");
                let initializes = counter(b"faulty_outage_initializes");
                Shim {
                    _lib: lib,
                    answers,
                    initializes,
                }
            }
        }

        fn answers(&self) -> u64 {
            // SAFETY: a plain read of an atomic counter.
            unsafe { (self.answers)() }
        }

        /// Waits (bounded) until the reconnect thread's C_Initialize was refused `n` times.
        fn await_refused_initializes(&self, n: u64) {
            let t0 = Instant::now();
            // SAFETY: a plain read of an atomic counter.
            while unsafe { (self.initializes)() } < n {
                assert!(t0.elapsed() < COMEBACK, "no C_Initialize tries");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// libp11gate.so and its function list.
    struct Gate {
        _lib: libloading::Library,
        list: CK_FUNCTION_LIST_PTR,
    }

    // SAFETY: the list is p11gate's static function table, valid while the library is loaded
    // (as long as the Gate); p11gate is initialised with CKF_OS_LOCKING_OK and may be called
    // from any number of threads.
    unsafe impl Sync for Gate {}

    fn attr<T>(type_: CK_ATTRIBUTE_TYPE, value: &T) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE {
            type_,
            pValue: value as *const T as *mut c_void,
            ulValueLen: std::mem::size_of::<T>() as CK_ULONG,
        }
    }

    fn bytes_attr(type_: CK_ATTRIBUTE_TYPE, value: &[u8]) -> CK_ATTRIBUTE {
        CK_ATTRIBUTE {
            type_,
            pValue: value.as_ptr() as *mut c_void,
            ulValueLen: value.len() as CK_ULONG,
        }
    }

    impl Gate {
        fn load() -> Gate {
            // SAFETY: loading the built module runs no initialisers of concern; its
            // C_GetFunctionList has this signature and is given a valid out-pointer.
            unsafe {
                let lib = libloading::Library::new(common::module()).expect("load libp11gate.so");
                let get: libloading::Symbol<
                    unsafe extern "C" fn(*mut CK_FUNCTION_LIST_PTR) -> CK_RV,
                > = lib.get(b"C_GetFunctionList").expect("C_GetFunctionList");
                let mut list: CK_FUNCTION_LIST_PTR = null_mut();
                expect("C_GetFunctionList", get(&mut list), CKR_OK);
                assert!(!list.is_null());
                Gate { _lib: lib, list }
            }
        }

        fn f(&self) -> &CK_FUNCTION_LIST {
            // SAFETY: non-NULL (checked in load) and valid while the library is loaded.
            unsafe { &*self.list }
        }

        fn initialize(&self) -> CK_RV {
            let mut args = CK_C_INITIALIZE_ARGS {
                flags: CKF_OS_LOCKING_OK,
                ..Default::default()
            };
            // SAFETY: args is a valid CK_C_INITIALIZE_ARGS for the duration of the call.
            unsafe { self.f().C_Initialize.unwrap()(&mut args as *mut _ as *mut c_void) }
        }

        fn finalize(&self) -> CK_RV {
            // SAFETY: pReserved must be NULL.
            unsafe { self.f().C_Finalize.unwrap()(null_mut()) }
        }

        fn open(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE, CK_RV> {
            let mut s: CK_SESSION_HANDLE = 0;
            // SAFETY: s is a valid out-pointer; no callback.
            let rv =
                unsafe { self.f().C_OpenSession.unwrap()(slot, flags, null_mut(), None, &mut s) };
            if rv == CKR_OK {
                Ok(s)
            } else {
                Err(rv)
            }
        }

        fn login(&self, s: CK_SESSION_HANDLE, pin: &str) -> CK_RV {
            // SAFETY: the PIN is readable for its length.
            unsafe {
                self.f().C_Login.unwrap()(
                    s,
                    CKU_USER,
                    pin.as_ptr() as *mut u8,
                    pin.len() as CK_ULONG,
                )
            }
        }

        /// The slot ids with a token, or the CK_RV of C_GetSlotList.
        fn slots(&self) -> Result<Vec<CK_SLOT_ID>, CK_RV> {
            let mut slots = [0 as CK_SLOT_ID; 8];
            let mut count: CK_ULONG = 8;
            // SAFETY: slots has room for count entries.
            let rv =
                unsafe { self.f().C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut count) };
            if rv != CKR_OK {
                return Err(rv);
            }
            Ok(slots[..count as usize].to_vec())
        }

        fn token_info(&self, slot: CK_SLOT_ID) -> CK_RV {
            let mut info = CK_TOKEN_INFO::default();
            // SAFETY: info is a valid out-pointer.
            unsafe { self.f().C_GetTokenInfo.unwrap()(slot, &mut info) }
        }

        fn logout(&self, s: CK_SESSION_HANDLE) -> CK_RV {
            // SAFETY: no pointers.
            unsafe { self.f().C_Logout.unwrap()(s) }
        }

        fn state(&self, s: CK_SESSION_HANDLE) -> Result<CK_STATE, CK_RV> {
            let mut info = CK_SESSION_INFO::default();
            // SAFETY: info is a valid out-pointer.
            let rv = unsafe { self.f().C_GetSessionInfo.unwrap()(s, &mut info) };
            if rv == CKR_OK {
                Ok(info.state)
            } else {
                Err(rv)
            }
        }

        /// Makes a token key: AES-256 for encryption, or a generic secret for HMAC.
        fn make_key(&self, s: CK_SESSION_HANDLE, label: &str, hmac: bool) -> CK_OBJECT_HANDLE {
            let class: CK_OBJECT_CLASS = CKO_SECRET_KEY;
            let key_type: CK_KEY_TYPE = if hmac { CKK_GENERIC_SECRET } else { CKK_AES };
            let len: CK_ULONG = 32;
            let (yes, no): (CK_BBOOL, CK_BBOOL) = (CK_TRUE, CK_FALSE);
            let (use_a, use_b) = if hmac {
                (CKA_SIGN, CKA_VERIFY)
            } else {
                (CKA_ENCRYPT, CKA_DECRYPT)
            };
            let mut template = [
                attr(CKA_CLASS, &class),
                attr(CKA_KEY_TYPE, &key_type),
                attr(CKA_VALUE_LEN, &len),
                bytes_attr(CKA_LABEL, label.as_bytes()),
                attr(CKA_TOKEN, &yes),
                attr(CKA_PRIVATE, &yes),
                attr(use_a, &yes),
                attr(use_b, &yes),
                attr(CKA_SENSITIVE, &yes),
                attr(CKA_EXTRACTABLE, &no),
            ];
            let mut mech = CK_MECHANISM {
                mechanism: if hmac {
                    CKM_GENERIC_SECRET_KEY_GEN
                } else {
                    CKM_AES_KEY_GEN
                },
                pParameter: null_mut(),
                ulParameterLen: 0,
            };
            let mut key: CK_OBJECT_HANDLE = 0;
            // SAFETY: mechanism, template (pointing at live locals) and out-pointer are valid.
            let rv = unsafe {
                self.f().C_GenerateKey.unwrap()(
                    s,
                    &mut mech,
                    template.as_mut_ptr(),
                    template.len() as CK_ULONG,
                    &mut key,
                )
            };
            expect("C_GenerateKey", rv, CKR_OK);
            key
        }

        /// The one secret key labelled `label`, or the CK_RV of C_FindObjectsInit.
        fn find(&self, s: CK_SESSION_HANDLE, label: &str) -> Result<CK_OBJECT_HANDLE, CK_RV> {
            let class: CK_OBJECT_CLASS = CKO_SECRET_KEY;
            let mut template = [
                attr(CKA_CLASS, &class),
                bytes_attr(CKA_LABEL, label.as_bytes()),
            ];
            let f = self.f();
            // SAFETY: the template and the handle buffer are valid for the calls.
            unsafe {
                let rv = f.C_FindObjectsInit.unwrap()(s, template.as_mut_ptr(), 2);
                if rv != CKR_OK {
                    return Err(rv);
                }
                let mut found = [0 as CK_OBJECT_HANDLE; 2];
                let mut count: CK_ULONG = 0;
                expect(
                    "C_FindObjects",
                    f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), 2, &mut count),
                    CKR_OK,
                );
                expect(
                    "C_FindObjectsFinal",
                    f.C_FindObjectsFinal.unwrap()(s),
                    CKR_OK,
                );
                assert_eq!(count, 1, "keys labelled {label}");
                Ok(found[0])
            }
        }

        /// AES-GCM (12-byte IV, 128-bit tag, no AAD) as Vault calls it: init, then one call.
        fn gcm(
            &self,
            s: CK_SESSION_HANDLE,
            key: CK_OBJECT_HANDLE,
            encrypt: bool,
            input: &[u8],
        ) -> Result<Vec<u8>, CK_RV> {
            let mut iv = IV;
            let mut params = CK_GCM_PARAMS {
                pIv: iv.as_mut_ptr(),
                ulIvLen: iv.len() as CK_ULONG,
                ulIvBits: 96,
                pAAD: null_mut(),
                ulAADLen: 0,
                ulTagBits: 128,
            };
            let mut mech = CK_MECHANISM {
                mechanism: CKM_AES_GCM,
                pParameter: &mut params as *mut _ as *mut c_void,
                ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
            };
            let f = self.f();
            let mut data = input.to_vec();
            let mut out = vec![0u8; input.len() + 16];
            let mut len = out.len() as CK_ULONG;
            // SAFETY: mechanism, parameters, input and output are valid for the calls.
            let rv = unsafe {
                let (init, call) = if encrypt {
                    (f.C_EncryptInit.unwrap(), f.C_Encrypt.unwrap())
                } else {
                    (f.C_DecryptInit.unwrap(), f.C_Decrypt.unwrap())
                };
                let rv = init(s, &mut mech, key);
                if rv != CKR_OK {
                    return Err(rv);
                }
                call(
                    s,
                    data.as_mut_ptr(),
                    data.len() as CK_ULONG,
                    out.as_mut_ptr(),
                    &mut len,
                )
            };
            if rv == CKR_OK {
                out.truncate(len as usize);
                Ok(out)
            } else {
                Err(rv)
            }
        }

        /// A GCM round trip that must work; returns the ciphertext.
        #[track_caller]
        fn gcm_ok(&self, s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Vec<u8> {
            let c = self
                .gcm(s, key, true, &PLAINTEXT)
                .unwrap_or_else(|rv| panic!("GCM encrypt: {rv:#x}"));
            assert_eq!(c.len(), PLAINTEXT.len() + 16);
            let p = self
                .gcm(s, key, false, &c)
                .unwrap_or_else(|rv| panic!("GCM decrypt: {rv:#x}"));
            assert_eq!(p, PLAINTEXT);
            c
        }

        /// CKM_SHA256_HMAC: C_SignInit's CK_RV, else the MAC.
        fn hmac(&self, s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Result<Vec<u8>, CK_RV> {
            let mut mech = CK_MECHANISM {
                mechanism: CKM_SHA256_HMAC,
                pParameter: null_mut(),
                ulParameterLen: 0,
            };
            let f = self.f();
            let mut data = PLAINTEXT;
            let mut out = [0u8; 32];
            let mut len = out.len() as CK_ULONG;
            // SAFETY: mechanism, input and output are valid for the calls.
            unsafe {
                let rv = f.C_SignInit.unwrap()(s, &mut mech, key);
                if rv != CKR_OK {
                    return Err(rv);
                }
                expect(
                    "C_Sign",
                    f.C_Sign.unwrap()(s, data.as_mut_ptr(), 32, out.as_mut_ptr(), &mut len),
                    CKR_OK,
                );
                expect(
                    "C_VerifyInit",
                    f.C_VerifyInit.unwrap()(s, &mut mech, key),
                    CKR_OK,
                );
                expect(
                    "C_Verify",
                    f.C_Verify.unwrap()(s, data.as_mut_ptr(), 32, out.as_mut_ptr(), len),
                    CKR_OK,
                );
            }
            Ok(out[..len as usize].to_vec())
        }

        fn random(&self, s: CK_SESSION_HANDLE) -> CK_RV {
            let mut out = [0u8; 32];
            // SAFETY: out is writable for its length.
            unsafe { self.f().C_GenerateRandom.unwrap()(s, out.as_mut_ptr(), 32) }
        }
    }

    /// What every scenario starts with: p11gate initialised, on slot 0 (hsm) a read-write and
    /// a read-only session logged in with the app's PIN and two keys, on slot 1 (plain) a
    /// session logged in with the token's own PIN and a key; every key used once.
    struct Start {
        gate: Gate,
        shim: Shim,
        rw: CK_SESSION_HANDLE,
        ro: CK_SESSION_HANDLE,
        aes: CK_OBJECT_HANDLE,
        hmac: CK_OBJECT_HANDLE,
        plain: CK_SESSION_HANDLE,
        plain_key: CK_OBJECT_HANDLE,
        ciphertext: Vec<u8>,
        mac: Vec<u8>,
    }

    fn start() -> Start {
        let shim = Shim::load();
        let gate = Gate::load();
        expect("C_Initialize", gate.initialize(), CKR_OK);
        let rw = gate
            .open(0, CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .expect("C_OpenSession rw");
        expect("C_Login (app PIN)", gate.login(rw, APP_PIN), CKR_OK);
        let ro = gate.open(0, CKF_SERIAL_SESSION).expect("C_OpenSession ro");
        assert_eq!(gate.state(ro), Ok(CKS_RO_USER_FUNCTIONS));
        let aes = gate.make_key(rw, "vault-aes", false);
        let hmac = gate.make_key(rw, "vault-hmac", true);
        let ciphertext = gate.gcm_ok(rw, aes);
        let mac = gate.hmac(rw, hmac).expect("HMAC");
        assert_eq!(mac.len(), 32);
        let plain = gate
            .open(1, CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .expect("C_OpenSession plain");
        expect("C_Login (plain)", gate.login(plain, USER_PIN), CKR_OK);
        let plain_key = gate.make_key(plain, "plain-aes", false);
        gate.gcm_ok(plain, plain_key);
        assert_eq!(shim.answers(), 0);
        Start {
            gate,
            shim,
            rw,
            ro,
            aes,
            hmac,
            plain,
            plain_key,
            ciphertext,
            mac,
        }
    }

    pub fn reconnect() {
        let st = start();
        let g = &st.gate;
        outage(true);
        // The call that finds the HSM gone: its code, untouched.
        assert_eq!(
            quick("GCM encrypt #1", || g.gcm(st.rw, st.aes, true, &PLAINTEXT)),
            Err(CKR_DEVICE_REMOVED)
        );
        assert_eq!(st.shim.answers(), 1);
        // Down: every call to hsm fails at once with that code, without reaching it.
        for round in 0..3 {
            assert_eq!(
                quick("GCM encrypt", || g.gcm(st.rw, st.aes, true, &PLAINTEXT)),
                Err(CKR_DEVICE_REMOVED),
                "round {round}"
            );
            assert_eq!(
                quick("HMAC", || g.hmac(st.rw, st.hmac)),
                Err(CKR_DEVICE_REMOVED)
            );
            expect(
                "C_GenerateRandom",
                quick("C_GenerateRandom", || g.random(st.ro)),
                CKR_DEVICE_REMOVED,
            );
            assert_eq!(
                quick("C_GetSessionInfo", || g.state(st.ro)),
                Err(CKR_DEVICE_REMOVED)
            );
            assert_eq!(
                quick("C_OpenSession", || g.open(0, CKF_SERIAL_SESSION)),
                Err(CKR_DEVICE_REMOVED)
            );
            // ...while plain works.
            assert_eq!(g.gcm_ok(st.plain, st.plain_key).len(), 48);
            // Slot 0's token is away; slot 1's is there.
            assert_eq!(quick("C_GetSlotList", || g.slots()), Ok(vec![1]));
            expect(
                "C_GetTokenInfo(0)",
                quick("C_GetTokenInfo", || g.token_info(0)),
                CKR_DEVICE_REMOVED,
            );
            expect("C_GetTokenInfo(1)", g.token_info(1), CKR_OK);
            if round == 0 {
                assert_eq!(
                    quick("C_FindObjectsInit", || g.find(st.rw, "vault-aes")),
                    Err(CKR_DEVICE_REMOVED)
                );
                // The app's logout fails too: it stays logged in, as far as p11gate knows.
                expect(
                    "C_Logout",
                    quick("C_Logout", || g.logout(st.rw)),
                    CKR_DEVICE_REMOVED,
                );
            }
        }
        // The reconnect thread tried twice meanwhile (100 ms apart), and will again.
        st.shim.await_refused_initializes(2);
        assert_eq!(
            st.shim.answers(),
            1,
            "calls reached the HSM while it was down"
        );
        assert_eq!(
            quick("GCM encrypt", || g.gcm(st.rw, st.aes, true, &PLAINTEXT)),
            Err(CKR_DEVICE_REMOVED)
        );
        outage(false);
        // Back within COMEBACK, on the same handles, logged in, without C_Initialize.
        let t0 = Instant::now();
        let state = loop {
            match g.state(st.rw) {
                Ok(state) => break state,
                Err(rv) => expect("C_GetSessionInfo while coming back", rv, CKR_DEVICE_REMOVED),
            }
            assert!(t0.elapsed() < COMEBACK, "not back after {COMEBACK:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(state, CKS_RW_USER_FUNCTIONS);
        assert_eq!(
            g.state(st.ro),
            Ok(CKS_RO_USER_FUNCTIONS),
            "opened read-only again"
        );
        assert_eq!(g.slots(), Ok(vec![0, 1]));
        expect("C_GetTokenInfo(0)", g.token_info(0), CKR_OK);
        // Key handles from before the outage are refused: the HSM numbers them afresh.
        assert_eq!(
            g.gcm(st.rw, st.aes, true, &PLAINTEXT),
            Err(CKR_KEY_HANDLE_INVALID)
        );
        // Found again by label, the same keys work as before.
        let aes = g.find(st.rw, "vault-aes").expect("find vault-aes");
        let hmac = g.find(st.ro, "vault-hmac").expect("find vault-hmac");
        assert_eq!(
            g.gcm(st.rw, aes, false, &st.ciphertext),
            Ok(PLAINTEXT.to_vec())
        );
        assert_eq!(g.gcm_ok(st.rw, aes), st.ciphertext);
        assert_eq!(g.hmac(st.ro, hmac), Ok(st.mac.clone()));
        for _ in 0..5 {
            assert_eq!(g.gcm_ok(st.ro, aes), st.ciphertext);
            g.gcm_ok(st.plain, st.plain_key);
        }
        assert_eq!(st.shim.answers(), 1);
        expect("C_Finalize", g.finalize(), CKR_OK);
    }

    pub fn no_reconnect() {
        let st = start();
        let g = &st.gate;
        outage(true);
        assert_eq!(
            g.gcm(st.rw, st.aes, true, &PLAINTEXT),
            Err(CKR_DEVICE_REMOVED)
        );
        assert_eq!(g.hmac(st.rw, st.hmac), Err(CKR_DEVICE_REMOVED));
        expect("C_GenerateRandom", g.random(st.ro), CKR_DEVICE_REMOVED);
        // Every call reached the module: nothing is refused on its behalf.
        assert_eq!(st.shim.answers(), 3);
        g.gcm_ok(st.plain, st.plain_key);
        outage(false);
        // The device is back without the sessions: nothing re-opens them.
        for _ in 0..3 {
            assert_eq!(
                g.gcm(st.rw, st.aes, true, &PLAINTEXT),
                Err(CKR_SESSION_HANDLE_INVALID)
            );
            assert_eq!(g.state(st.ro), Err(CKR_SESSION_HANDLE_INVALID));
        }
        g.gcm_ok(st.plain, st.plain_key);
        // What Vault does after errors: finalise and initialise again.
        expect("C_Finalize", g.finalize(), CKR_OK);
        expect("C_Initialize", g.initialize(), CKR_OK);
        let s = g
            .open(0, CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .expect("C_OpenSession");
        expect("C_Login", g.login(s, APP_PIN), CKR_OK);
        let aes = g.find(s, "vault-aes").expect("find vault-aes");
        assert_eq!(g.gcm_ok(s, aes), st.ciphertext);
        expect("C_Finalize", g.finalize(), CKR_OK);
    }

    /// The names of this process's threads.
    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect()
    }

    pub fn finalize_while_down() {
        let st = start();
        let g = &st.gate;
        outage(true);
        assert_eq!(
            g.gcm(st.rw, st.aes, true, &PLAINTEXT),
            Err(CKR_DEVICE_REMOVED)
        );
        // The reconnect thread runs (thread names are cut to 15 bytes; it names itself as it
        // starts).
        let t0 = Instant::now();
        while !thread_names().iter().any(|n| n == "p11gate-reconne") {
            assert!(
                t0.elapsed() < HANG,
                "no reconnect thread: {:?}",
                thread_names()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        st.shim.await_refused_initializes(1);
        expect("C_Finalize", quick("C_Finalize", || g.finalize()), CKR_OK);
        assert!(
            !thread_names().iter().any(|n| n == "p11gate-reconne"),
            "a reconnect thread outlived C_Finalize: {:?}",
            thread_names()
        );
        outage(false);
        expect("C_Initialize", g.initialize(), CKR_OK);
        let s = g
            .open(0, CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .expect("C_OpenSession");
        expect("C_Login", g.login(s, APP_PIN), CKR_OK);
        let aes = g.find(s, "vault-aes").expect("find vault-aes");
        assert_eq!(g.gcm_ok(s, aes), st.ciphertext);
        expect("C_Finalize", g.finalize(), CKR_OK);
    }

    pub fn concurrent() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        let st = start();
        let g = &st.gate;
        let sessions: Vec<CK_SESSION_HANDLE> = (0..4)
            .map(|_| {
                g.open(0, CKF_SERIAL_SESSION | CKF_RW_SESSION)
                    .expect("C_OpenSession")
            })
            .collect();
        let stop = AtomicBool::new(false);
        // Per worker: calls that worked, calls refused with the outage code.
        let ok: Vec<AtomicU64> = (0..5).map(|_| AtomicU64::new(0)).collect();
        let down: Vec<AtomicU64> = (0..5).map(|_| AtomicU64::new(0)).collect();
        let oks =
            |n: usize| -> Vec<u64> { ok[..n].iter().map(|c| c.load(Ordering::SeqCst)).collect() };
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let t0 = Instant::now();
            while !done() {
                assert!(t0.elapsed() < COMEBACK, "{what}");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        std::thread::scope(|scope| {
            for (w, &s) in sessions.iter().enumerate() {
                let (stop, ok, down, st) = (&stop, &ok[w], &down[w], &st);
                scope.spawn(move || {
                    let mut key = st.aes;
                    while !stop.load(Ordering::SeqCst) {
                        match quick("GCM encrypt", || g.gcm(s, key, true, &PLAINTEXT)) {
                            // The right key, whatever happened.
                            Ok(c) => {
                                assert_eq!(c, st.ciphertext);
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(CKR_DEVICE_REMOVED) => {
                                down.fetch_add(1, Ordering::SeqCst);
                            }
                            // Back, with handles numbered afresh: find the key again.
                            Err(CKR_KEY_HANDLE_INVALID) => match g.find(s, "vault-aes") {
                                Ok(k) => key = k,
                                Err(rv) => expect("C_FindObjectsInit", rv, CKR_DEVICE_REMOVED),
                            },
                            Err(rv) => panic!("worker {w}: GCM encrypt returned {rv:#x}"),
                        }
                    }
                    assert_eq!(g.state(s), Ok(CKS_RW_USER_FUNCTIONS));
                });
            }
            let (stop, plain_ok) = (&stop, &ok[4]);
            let st = &st;
            scope.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    quick("plain GCM", || g.gcm_ok(st.plain, st.plain_key));
                    plain_ok.fetch_add(1, Ordering::SeqCst);
                }
            });
            // Stops the workers however this closure ends (an assertion failing included).
            struct StopOnDrop<'a>(&'a AtomicBool);
            impl Drop for StopOnDrop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _stop = StopOnDrop(stop);
            wait_for("workers running", &|| oks(5).iter().all(|n| *n >= 20));
            outage(true);
            wait_for("workers refused", &|| {
                down[..4].iter().all(|d| d.load(Ordering::SeqCst) >= 5)
            });
            st.shim.await_refused_initializes(2);
            // Calls already in flight when the device went away reached it (one per worker at
            // most); once it was down, none did.
            let reached = st.shim.answers();
            assert!(
                (1..=4).contains(&reached),
                "{reached} calls reached the HSM"
            );
            let plain_before = ok[4].load(Ordering::SeqCst);
            let before = oks(4);
            wait_for("plain working during the outage", &|| {
                ok[4].load(Ordering::SeqCst) >= plain_before + 20
            });
            assert_eq!(oks(4), before, "hsm calls worked during the outage");
            assert_eq!(
                st.shim.answers(),
                reached,
                "calls reached the HSM while it was down"
            );
            outage(false);
            wait_for("workers back", &|| {
                oks(4)
                    .iter()
                    .zip(&before)
                    .all(|(now, then)| *now >= then + 20)
            });
            stop.store(true, Ordering::SeqCst);
        });
        expect("C_Finalize", g.finalize(), CKR_OK);
    }
}
