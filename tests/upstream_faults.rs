//! An upstream that fails: `tests/c/faulty.c`, a PKCS#11 module built here that wraps SoftHSMv2
//! and fails on the schedule in `FAULTY_SCHEDULE` (`C_Encrypt:2:0x30` = the 2nd C_Encrypt
//! returns CKR_DEVICE_ERROR without SoftHSMv2 doing it; `C_GenerateRandom:*:sleep=300` = every
//! call sleeps 300 ms first). Through libp11gate.so with the audit file on, each scenario shows
//! that the upstream's code comes out of p11gate unchanged, that the audit record of that very
//! call carries it, and that p11gate stays usable: the next call works, on the same session.
//!
//! Each scenario runs in a child process of its own (this test binary again, the ignored test
//! `child_process`) with its own SoftHSMv2 token, shim schedule and audit file: the shim reads
//! its schedule once per process and p11gate never unloads an upstream. The child makes the
//! PKCS#11 calls through the raw C API and asserts each exact CK_RV; the parent then reads the
//! audit file back and checks its chain.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::SoftHsm;

const SCENARIO_VAR: &str = "P11GATE_FAULTS_SCENARIO";
const TOKEN_LABEL: &str = "faults";
const KEY_LABEL: &str = "fault-key";
const CHILD_TIMEOUT: Duration = Duration::from_secs(20);
/// The slow scenario's delay, as `sleep=` in the schedule.
const SLOW_MS: u64 = 300;

// ------------------------------------------------------------------------------------------------
// The parent: fixtures, the child run, the audit trail
// ------------------------------------------------------------------------------------------------

/// A SoftHSMv2 token with an AES key, the shim built next to it, and an audit key.
struct Fixture {
    hsm: SoftHsm,
    shim: PathBuf,
    audit_key: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let hsm = SoftHsm::new();
        hsm.init_token(TOKEN_LABEL);
        let shim = build_shim(hsm.dir());
        let audit_key = hsm.dir().join("audit.key");
        let out = Command::new(env!("CARGO_BIN_EXE_p11gate"))
            .args(["audit", "keygen"])
            .arg(&audit_key)
            .output()
            .expect("p11gate audit keygen");
        assert!(out.status.success(), "{out:?}");
        let fixture = Fixture {
            hsm,
            shim,
            audit_key,
        };
        // The key, made through p11gate and the shim with an empty schedule.
        let recs = fixture.run("make_key", "");
        let made: Vec<(&str, &str)> = calls(&recs, &["C_GenerateKey"]);
        assert_eq!(made, vec![("C_GenerateKey", "CKR_OK")], "{recs:#?}");
        fixture
    }

    /// Runs `scenario` in a child process with the shim following `schedule`; returns the
    /// records of its audit file, whose chain has been verified.
    fn run(&self, scenario: &str, schedule: &str) -> Vec<Value> {
        self.run_with(scenario, schedule, &[])
    }

    /// [`Fixture::run`] with more environment.
    fn run_with(&self, scenario: &str, schedule: &str, extra: &[(&str, &str)]) -> Vec<Value> {
        let dir = self.hsm.dir();
        let audit = dir.join(format!("{scenario}.audit.jsonl"));
        let mut env = self.hsm.gate_env();
        env.retain(|(k, _)| k != "P11GATE_UPSTREAM");
        env.extend([
            (
                "P11GATE_UPSTREAM".to_string(),
                self.shim.display().to_string(),
            ),
            (
                "FAULTY_REAL".to_string(),
                common::softhsm_module().display().to_string(),
            ),
            ("FAULTY_SCHEDULE".to_string(), schedule.to_string()),
            (
                "P11GATE_AUDIT".to_string(),
                format!("file:{}", audit.display()),
            ),
            (
                "P11GATE_AUDIT_KEY".to_string(),
                self.audit_key.display().to_string(),
            ),
        ]);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let (status, stdout, stderr) =
            common::run_child_scenario(SCENARIO_VAR, scenario, &env, dir, CHILD_TIMEOUT, None);
        assert!(
            status.success() && stdout.contains(&format!("scenario {scenario} finished\n")),
            "scenario {scenario} (schedule {schedule:?}) failed: {status}\n--- stdout ---\n\
             {stdout}\n--- stderr ---\n{stderr}"
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
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let recs: Vec<Value> = std::fs::read_to_string(&audit)
            .expect("read the audit file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(recs[0]["event"], "file_start", "{recs:#?}");
        assert_eq!(
            recs.last().unwrap()["event"],
            "finalize",
            "the child finalises last: {recs:#?}"
        );
        recs
    }
}

/// Compiles `tests/c/faulty.c` into `dir/libfaulty.so`.
fn build_shim(dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/c/faulty.c");
    let so = dir.join("libfaulty.so");
    let cflags = Command::new("pkg-config")
        .args(["--cflags", "p11-kit-1"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "-I/usr/include/p11-kit-1".to_string());
    let out = Command::new(common::require_program("gcc"))
        .args([
            "-std=gnu11",
            "-g",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
        ])
        .args(cflags.split_whitespace())
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

/// The call records of the functions in `fns`, in file order, as (fn, rv).
fn calls<'a>(recs: &'a [Value], fns: &[&str]) -> Vec<(&'a str, &'a str)> {
    recs.iter()
        .filter(|r| r["event"] == "call")
        .filter_map(|r| Some((r["fn"].as_str()?, r["rv"].as_str()?)))
        .filter(|(f, _)| fns.contains(f))
        .collect()
}

/// The call records of `function`, in file order.
fn records_of<'a>(recs: &'a [Value], function: &str) -> Vec<&'a Value> {
    recs.iter()
        .filter(|r| r["event"] == "call" && r["fn"] == function)
        .collect()
}

/// An encryption's record: AES-CBC with the token's key, 32 bytes in.
fn assert_encrypt_record(r: &Value, rv: &str, out: u64) {
    assert_eq!(r["rv"], rv, "{r}");
    assert_eq!(r["mech"], "CKM_AES_CBC", "{r}");
    assert_eq!(r["key_label"], KEY_LABEL, "{r}");
    assert_eq!(r["key_class"], "CKO_SECRET_KEY", "{r}");
    assert_eq!(r["in"], 32, "{r}");
    assert_eq!(r["out"], out, "{r}");
    assert_eq!(r["parts"], 1, "{r}");
    assert_eq!(r["token"], TOKEN_LABEL, "{r}");
}

// ------------------------------------------------------------------------------------------------
// The scenarios
// ------------------------------------------------------------------------------------------------

/// CKR_DEVICE_ERROR (0x30) from the 2nd C_Encrypt and the 4th C_EncryptInit.
#[test]
fn device_error_passes_through_is_audited_and_the_next_operation_works() {
    let fx = Fixture::new();
    let recs = fx.run("device_error", "C_Encrypt:2:0x30,C_EncryptInit:4:0x30");
    assert_eq!(
        calls(&recs, &["C_EncryptInit", "C_Encrypt"]),
        vec![
            ("C_Encrypt", "CKR_OK"),
            ("C_Encrypt", "CKR_DEVICE_ERROR"),
            ("C_Encrypt", "CKR_OK"),
            ("C_EncryptInit", "CKR_DEVICE_ERROR"),
            ("C_Encrypt", "CKR_OK"),
        ],
        "{recs:#?}"
    );
    let enc = records_of(&recs, "C_Encrypt");
    assert_encrypt_record(enc[0], "CKR_OK", 32);
    assert_encrypt_record(enc[1], "CKR_DEVICE_ERROR", 0);
    assert_encrypt_record(enc[2], "CKR_OK", 32);
    assert_encrypt_record(enc[3], "CKR_OK", 32);
    let init = records_of(&recs, "C_EncryptInit");
    assert_eq!(init.len(), 1, "{recs:#?}");
    assert_eq!(init[0]["mech"], "CKM_AES_CBC", "{}", init[0]);
    assert_eq!(init[0]["key_label"], KEY_LABEL, "{}", init[0]);
    // All on the one session the child opened.
    let session = &enc[0]["session"];
    assert!(session.is_u64(), "{}", enc[0]);
    for r in enc.iter().chain(&init) {
        assert_eq!(&r["session"], session, "{r}");
    }
}

/// CKR_DEVICE_REMOVED (0x32) from the 1st C_GenerateRandom and the 2nd C_Sign.
#[test]
fn device_removed_passes_through_is_audited_and_the_next_call_works() {
    let fx = Fixture::new();
    let recs = fx.run("device_removed", "C_GenerateRandom:1:0x32,C_Sign:2:0x32");
    assert_eq!(
        calls(&recs, &["C_GenerateRandom", "C_SignInit", "C_Sign"]),
        vec![
            ("C_GenerateRandom", "CKR_DEVICE_REMOVED"),
            ("C_GenerateRandom", "CKR_OK"),
            ("C_Sign", "CKR_OK"),
            ("C_Sign", "CKR_DEVICE_REMOVED"),
            ("C_Sign", "CKR_OK"),
        ],
        "{recs:#?}"
    );
    let random = records_of(&recs, "C_GenerateRandom");
    assert_eq!(random[1]["out"], 32, "{}", random[1]);
    let sign = records_of(&recs, "C_Sign");
    for (r, rv, out) in [
        (sign[0], "CKR_OK", 16),
        (sign[1], "CKR_DEVICE_REMOVED", 0),
        (sign[2], "CKR_OK", 16),
    ] {
        assert_eq!(r["rv"], rv, "{r}");
        assert_eq!(r["mech"], "CKM_AES_CMAC", "{r}");
        assert_eq!(r["key_label"], KEY_LABEL, "{r}");
        assert_eq!(r["in"], 32, "{r}");
        assert_eq!(r["out"], out, "{r}");
    }
    // The failed C_GenerateRandom delivered no bytes, so its record must not claim 32, just as
    // a failed C_Encrypt or C_Sign records out=0. Checked last: it fails today, because
    // p11gate records the requested length before it forwards the call.
    assert_eq!(
        random[0]["out"], 0,
        "a failed C_GenerateRandom is audited as if it had produced its bytes: {}",
        random[0]
    );
}

/// CKR_TOKEN_NOT_PRESENT (0xE0) from the 1st C_FindObjectsInit and the 2nd C_OpenSession.
#[test]
fn token_not_present_passes_through_is_audited_and_the_next_call_works() {
    let fx = Fixture::new();
    let recs = fx.run(
        "token_not_present",
        "C_FindObjectsInit:1:0xE0,C_OpenSession:2:0xE0",
    );
    assert_eq!(
        calls(&recs, &["C_OpenSession", "C_FindObjectsInit"]),
        vec![
            ("C_OpenSession", "CKR_OK"),
            ("C_FindObjectsInit", "CKR_TOKEN_NOT_PRESENT"),
            ("C_FindObjectsInit", "CKR_OK"),
            ("C_OpenSession", "CKR_TOKEN_NOT_PRESENT"),
            ("C_OpenSession", "CKR_OK"),
        ],
        "{recs:#?}"
    );
    let open = records_of(&recs, "C_OpenSession");
    assert_eq!(open[1]["rw"], "true", "{}", open[1]);
    assert!(open[1].get("session").is_none(), "{}", open[1]);
    assert!(open[0]["session"].is_u64() && open[2]["session"].is_u64());
    assert_ne!(open[0]["session"], open[2]["session"]);
    let find = records_of(&recs, "C_FindObjectsInit");
    assert_eq!(find[0]["attrs"], "CKA_CLASS,CKA_LABEL", "{}", find[0]);
    assert_eq!(find[0]["session"], open[0]["session"], "{}", find[0]);
    // Both sessions encrypted afterwards.
    let enc = records_of(&recs, "C_Encrypt");
    assert_eq!(enc.len(), 2, "{recs:#?}");
    assert_encrypt_record(enc[0], "CKR_OK", 32);
    assert_encrypt_record(enc[1], "CKR_OK", 32);
    assert_eq!(enc[0]["session"], open[0]["session"]);
    assert_eq!(enc[1]["session"], open[2]["session"]);
}

/// CKR_SESSION_HANDLE_INVALID (0xB3) from the 1st C_Login and the 2nd C_Encrypt, while the
/// upstream's session lives on: p11gate keeps its handle valid.
#[test]
fn session_handle_invalid_passes_through_is_audited_and_the_session_stays_usable() {
    let fx = Fixture::new();
    let recs = fx.run("session_handle_invalid", "C_Login:1:0xB3,C_Encrypt:2:0xB3");
    assert_eq!(
        calls(
            &recs,
            &["C_Login", "C_Encrypt", "C_CloseSession", "C_OpenSession"]
        ),
        vec![
            ("C_OpenSession", "CKR_OK"),
            ("C_Login", "CKR_SESSION_HANDLE_INVALID"),
            ("C_Login", "CKR_OK"),
            ("C_Encrypt", "CKR_OK"),
            ("C_Encrypt", "CKR_SESSION_HANDLE_INVALID"),
            ("C_Encrypt", "CKR_OK"),
            ("C_CloseSession", "CKR_OK"),
        ],
        "{recs:#?}"
    );
    let login = records_of(&recs, "C_Login");
    for r in &login {
        assert_eq!(r["user"], "CKU_USER", "{r}");
    }
    let enc = records_of(&recs, "C_Encrypt");
    assert_encrypt_record(enc[0], "CKR_OK", 32);
    assert_encrypt_record(enc[1], "CKR_SESSION_HANDLE_INVALID", 0);
    assert_encrypt_record(enc[2], "CKR_OK", 32);
    let session = &records_of(&recs, "C_OpenSession")[0]["session"];
    assert!(session.is_u64());
    for r in login.iter().chain(&enc) {
        assert_eq!(&r["session"], session, "{r}");
    }
}

/// The upstream's C_Initialize fails once with CKR_DEVICE_ERROR: p11gate's C_Initialize returns
/// that code, stays uninitialised, and the next C_Initialize works (Vault's retry).
#[test]
fn a_failed_upstream_initialize_passes_through_and_the_retry_works() {
    let fx = Fixture::new();
    let recs = fx.run("initialize_fails", "C_Initialize:1:0x30");
    let lifecycle: Vec<(&str, &str)> = recs
        .iter()
        .filter(|r| r["fn"] == "C_Initialize" || r["event"] == "load")
        .map(|r| {
            (
                r["event"].as_str().unwrap(),
                r["rv"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        lifecycle,
        vec![
            ("load", "-"),
            ("call", "CKR_DEVICE_ERROR"),
            ("init", "CKR_OK")
        ],
        "{recs:#?}"
    );
    assert_eq!(
        calls(&recs, &["C_Encrypt"]),
        vec![("C_Encrypt", "CKR_OK")],
        "{recs:#?}"
    );
}

/// Every C_GenerateRandom sleeps 300 ms in the upstream: it completes, its record shows the
/// time, and another session's calls meanwhile are not held up behind it.
#[test]
fn a_slow_upstream_call_completes_and_its_record_shows_the_time() {
    let fx = Fixture::new();
    let recs = fx.run_with(
        "slow",
        &format!("C_GenerateRandom:*:sleep={SLOW_MS}"),
        &[("P11GATE_SLOW_CALL_WARN_MS", "100")],
    );
    // slow_call_warn_ms: the slow call, and only it, is logged with its function and time.
    let log = std::fs::read_to_string(fx.hsm.dir().join("slow.stderr")).unwrap();
    let slow: Vec<&str> = log.lines().filter(|l| l.contains(" took ")).collect();
    assert_eq!(slow.len(), 1, "{log}");
    assert!(
        slow[0].contains("WARN: upstream libfaulty: C_GenerateRandom took ")
            && slow[0].ends_with(" ms (slow_call_warn_ms = 100)"),
        "{}",
        slow[0]
    );
    let random = records_of(&recs, "C_GenerateRandom");
    assert_eq!(random.len(), 1, "{recs:#?}");
    assert_eq!(random[0]["rv"], "CKR_OK", "{}", random[0]);
    assert_eq!(random[0]["out"], 32, "{}", random[0]);
    let us = random[0]["us"].as_u64().expect("us");
    assert!(us >= SLOW_MS * 1000, "us={us}: {}", random[0]);
    assert!(us < 10 * SLOW_MS * 1000, "us={us}: {}", random[0]);
    let enc = records_of(&recs, "C_Encrypt");
    assert_eq!(enc.len(), 1, "{recs:#?}");
    assert_encrypt_record(enc[0], "CKR_OK", 32);
    assert_ne!(enc[0]["session"], random[0]["session"]);
}

// ------------------------------------------------------------------------------------------------
// The child: PKCS#11 calls through libp11gate.so
// ------------------------------------------------------------------------------------------------

#[test]
#[ignore = "a scenario's child process, run by the tests above"]
fn child_process() {
    let Ok(scenario) = std::env::var(SCENARIO_VAR) else {
        return;
    };
    match scenario.as_str() {
        "make_key" => child::make_key(),
        "device_error" => child::device_error(),
        "device_removed" => child::device_removed(),
        "token_not_present" => child::token_not_present(),
        "session_handle_invalid" => child::session_handle_invalid(),
        "initialize_fails" => child::initialize_fails(),
        "slow" => child::slow(),
        other => panic!("unknown scenario {other:?}"),
    }
    println!("scenario {scenario} finished");
}

mod child {
    use std::ffi::c_void;
    use std::ptr::null_mut;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use pkcs11_sys::*;

    use super::{KEY_LABEL, SLOW_MS, TOKEN_LABEL};
    use crate::common::{self, USER_PIN};

    const PLAINTEXT: [u8; 32] = *b"upstream-faults-plaintext-731942";
    const IV: [u8; 16] = [0x5a; 16];

    /// Asserts an exact CK_RV, shown in hex.
    #[track_caller]
    fn expect(what: &str, rv: CK_RV, want: CK_RV) {
        assert_eq!(rv, want, "{what}: want {want:#x}, got {rv:#x}");
    }

    /// libp11gate.so, loaded with libloading, and its function list.
    pub struct Gate {
        _lib: libloading::Library,
        list: CK_FUNCTION_LIST_PTR,
    }

    // SAFETY: the list is p11gate's static function table, valid while the library is loaded
    // (as long as the Gate); p11gate is initialised with CKF_OS_LOCKING_OK and may be called from
    // any number of threads (README, "Safe for Vault's use").
    unsafe impl Sync for Gate {}

    impl Gate {
        pub fn load() -> Gate {
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

        pub fn initialize(&self) -> CK_RV {
            let mut args = CK_C_INITIALIZE_ARGS {
                flags: CKF_OS_LOCKING_OK,
                ..Default::default()
            };
            // SAFETY: args is a valid CK_C_INITIALIZE_ARGS for the duration of the call.
            unsafe { self.f().C_Initialize.unwrap()(&mut args as *mut _ as *mut c_void) }
        }

        pub fn finalize(&self) -> CK_RV {
            // SAFETY: pReserved must be NULL.
            unsafe { self.f().C_Finalize.unwrap()(null_mut()) }
        }

        /// The slot ids with a token, or the CK_RV of C_GetSlotList.
        pub fn slots(&self) -> Result<Vec<CK_SLOT_ID>, CK_RV> {
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

        /// The slot of the token labelled TOKEN_LABEL (SoftHSMv2 also lists its free slot).
        pub fn slot(&self) -> CK_SLOT_ID {
            let slots = self.slots().expect("C_GetSlotList");
            let ours: Vec<CK_SLOT_ID> = slots
                .iter()
                .copied()
                .filter(|&slot| {
                    let mut info = CK_TOKEN_INFO::default();
                    // SAFETY: info is a valid out-pointer.
                    let rv = unsafe { self.f().C_GetTokenInfo.unwrap()(slot, &mut info) };
                    expect("C_GetTokenInfo", rv, CKR_OK);
                    let label = String::from_utf8_lossy(&info.label);
                    label.trim_end() == TOKEN_LABEL
                })
                .collect();
            assert_eq!(ours.len(), 1, "slots {slots:?}");
            ours[0]
        }

        /// A read-write session, or the CK_RV of C_OpenSession.
        pub fn open(&self, slot: CK_SLOT_ID) -> Result<CK_SESSION_HANDLE, CK_RV> {
            let mut s: CK_SESSION_HANDLE = 0;
            // SAFETY: s is a valid out-pointer; no callback.
            let rv = unsafe {
                self.f().C_OpenSession.unwrap()(
                    slot,
                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                    null_mut(),
                    None,
                    &mut s,
                )
            };
            if rv == CKR_OK {
                Ok(s)
            } else {
                Err(rv)
            }
        }

        pub fn close(&self, s: CK_SESSION_HANDLE) -> CK_RV {
            // SAFETY: no pointers.
            unsafe { self.f().C_CloseSession.unwrap()(s) }
        }

        pub fn login(&self, s: CK_SESSION_HANDLE) -> CK_RV {
            let pin = USER_PIN.as_bytes();
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

        /// The session's state, or the CK_RV of C_GetSessionInfo.
        pub fn state(&self, s: CK_SESSION_HANDLE) -> Result<CK_STATE, CK_RV> {
            let mut info = CK_SESSION_INFO::default();
            // SAFETY: info is a valid out-pointer.
            let rv = unsafe { self.f().C_GetSessionInfo.unwrap()(s, &mut info) };
            if rv == CKR_OK {
                Ok(info.state)
            } else {
                Err(rv)
            }
        }

        /// The one secret key labelled KEY_LABEL, or the CK_RV of C_FindObjectsInit.
        pub fn find_key(&self, s: CK_SESSION_HANDLE) -> Result<CK_OBJECT_HANDLE, CK_RV> {
            let class: CK_OBJECT_CLASS = CKO_SECRET_KEY;
            let mut template = [
                CK_ATTRIBUTE {
                    type_: CKA_CLASS,
                    pValue: &class as *const _ as *mut c_void,
                    ulValueLen: std::mem::size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
                },
                CK_ATTRIBUTE {
                    type_: CKA_LABEL,
                    pValue: KEY_LABEL.as_ptr() as *mut c_void,
                    ulValueLen: KEY_LABEL.len() as CK_ULONG,
                },
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
                assert_eq!(count, 1, "objects labelled {KEY_LABEL}");
                Ok(found[0])
            }
        }

        /// Generates the token's AES key (encrypt and sign, sensitive, not extractable).
        pub fn generate_key(&self, s: CK_SESSION_HANDLE) -> CK_OBJECT_HANDLE {
            let class: CK_OBJECT_CLASS = CKO_SECRET_KEY;
            let key_type: CK_KEY_TYPE = CKK_AES;
            let len: CK_ULONG = 32;
            let yes: CK_BBOOL = CK_TRUE;
            let no: CK_BBOOL = CK_FALSE;
            let attr = |type_, p: *const c_void, n: usize| CK_ATTRIBUTE {
                type_,
                pValue: p as *mut c_void,
                ulValueLen: n as CK_ULONG,
            };
            let ulong = std::mem::size_of::<CK_ULONG>();
            let mut template = [
                attr(CKA_CLASS, &class as *const _ as *const c_void, ulong),
                attr(CKA_KEY_TYPE, &key_type as *const _ as *const c_void, ulong),
                attr(CKA_VALUE_LEN, &len as *const _ as *const c_void, ulong),
                attr(
                    CKA_LABEL,
                    KEY_LABEL.as_ptr() as *const c_void,
                    KEY_LABEL.len(),
                ),
                attr(CKA_TOKEN, &yes as *const _ as *const c_void, 1),
                attr(CKA_PRIVATE, &yes as *const _ as *const c_void, 1),
                attr(CKA_ENCRYPT, &yes as *const _ as *const c_void, 1),
                attr(CKA_SIGN, &yes as *const _ as *const c_void, 1),
                attr(CKA_SENSITIVE, &yes as *const _ as *const c_void, 1),
                attr(CKA_EXTRACTABLE, &no as *const _ as *const c_void, 1),
            ];
            let mut mech = CK_MECHANISM {
                mechanism: CKM_AES_KEY_GEN,
                pParameter: null_mut(),
                ulParameterLen: 0,
            };
            let mut key: CK_OBJECT_HANDLE = 0;
            // SAFETY: the mechanism, template (pointing at locals alive here) and out-pointer
            // are valid for the call.
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

        /// C_EncryptInit with AES-CBC and a fixed IV.
        pub fn encrypt_init(&self, s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
            let mut iv = IV;
            let mut mech = CK_MECHANISM {
                mechanism: CKM_AES_CBC,
                pParameter: iv.as_mut_ptr() as *mut c_void,
                ulParameterLen: iv.len() as CK_ULONG,
            };
            // SAFETY: the mechanism and its IV are valid for the call.
            unsafe { self.f().C_EncryptInit.unwrap()(s, &mut mech, key) }
        }

        /// C_Encrypt of PLAINTEXT: the ciphertext, or the CK_RV.
        pub fn encrypt(&self, s: CK_SESSION_HANDLE) -> Result<Vec<u8>, CK_RV> {
            let mut input = PLAINTEXT;
            let mut out = [0u8; 64];
            let mut len = out.len() as CK_ULONG;
            // SAFETY: input and output are valid for their lengths.
            let rv = unsafe {
                self.f().C_Encrypt.unwrap()(
                    s,
                    input.as_mut_ptr(),
                    input.len() as CK_ULONG,
                    out.as_mut_ptr(),
                    &mut len,
                )
            };
            if rv == CKR_OK {
                Ok(out[..len as usize].to_vec())
            } else {
                Err(rv)
            }
        }

        /// A whole encryption that must work.
        #[track_caller]
        pub fn encrypt_ok(&self, s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Vec<u8> {
            expect("C_EncryptInit", self.encrypt_init(s, key), CKR_OK);
            let c = self
                .encrypt(s)
                .unwrap_or_else(|rv| panic!("C_Encrypt: {rv:#x}"));
            assert_eq!(c.len(), 32);
            assert_ne!(&c[..], &PLAINTEXT[..]);
            c
        }

        /// C_SignInit with AES-CMAC.
        pub fn sign_init(&self, s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
            let mut mech = CK_MECHANISM {
                mechanism: CKM_AES_CMAC,
                pParameter: null_mut(),
                ulParameterLen: 0,
            };
            // SAFETY: the mechanism is valid for the call.
            unsafe { self.f().C_SignInit.unwrap()(s, &mut mech, key) }
        }

        /// C_Sign of PLAINTEXT: the MAC, or the CK_RV.
        pub fn sign(&self, s: CK_SESSION_HANDLE) -> Result<Vec<u8>, CK_RV> {
            let mut input = PLAINTEXT;
            let mut out = [0u8; 64];
            let mut len = out.len() as CK_ULONG;
            // SAFETY: input and output are valid for their lengths.
            let rv = unsafe {
                self.f().C_Sign.unwrap()(
                    s,
                    input.as_mut_ptr(),
                    input.len() as CK_ULONG,
                    out.as_mut_ptr(),
                    &mut len,
                )
            };
            if rv == CKR_OK {
                Ok(out[..len as usize].to_vec())
            } else {
                Err(rv)
            }
        }

        /// A whole signature that must work.
        #[track_caller]
        pub fn sign_ok(&self, s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Vec<u8> {
            expect("C_SignInit", self.sign_init(s, key), CKR_OK);
            let mac = self.sign(s).unwrap_or_else(|rv| panic!("C_Sign: {rv:#x}"));
            assert_eq!(mac.len(), 16);
            mac
        }

        /// C_GenerateRandom of 32 bytes, into a buffer that starts zeroed.
        pub fn random(&self, s: CK_SESSION_HANDLE) -> Result<[u8; 32], CK_RV> {
            let mut out = [0u8; 32];
            // SAFETY: out is writable for its length.
            let rv = unsafe { self.f().C_GenerateRandom.unwrap()(s, out.as_mut_ptr(), 32) };
            if rv == CKR_OK {
                Ok(out)
            } else {
                Err(rv)
            }
        }
    }

    /// Loaded, initialised, one read-write session logged in as the user.
    fn start() -> (Gate, CK_SLOT_ID, CK_SESSION_HANDLE) {
        let gate = Gate::load();
        expect("C_Initialize", gate.initialize(), CKR_OK);
        let slot = gate.slot();
        let s = gate.open(slot).expect("C_OpenSession");
        expect("C_Login", gate.login(s), CKR_OK);
        (gate, slot, s)
    }

    pub fn make_key() {
        let (gate, _, s) = start();
        let key = gate.generate_key(s);
        assert_eq!(gate.find_key(s), Ok(key));
        gate.encrypt_ok(s, key);
        expect("C_Finalize", gate.finalize(), CKR_OK);
    }

    pub fn device_error() {
        let (gate, _, s) = start();
        let key = gate.find_key(s).expect("C_FindObjectsInit");
        let first = gate.encrypt_ok(s, key);
        // The 2nd C_Encrypt fails in the upstream.
        expect("C_EncryptInit #2", gate.encrypt_init(s, key), CKR_OK);
        assert_eq!(gate.encrypt(s), Err(CKR_DEVICE_ERROR), "C_Encrypt #2");
        // The operation ended with the error: a new one starts and gives the same ciphertext.
        assert_eq!(gate.encrypt_ok(s, key), first, "C_Encrypt #3");
        // The 4th C_EncryptInit fails in the upstream; the 5th works.
        expect(
            "C_EncryptInit #4",
            gate.encrypt_init(s, key),
            CKR_DEVICE_ERROR,
        );
        assert_eq!(gate.encrypt_ok(s, key), first, "C_Encrypt #4");
        assert_eq!(gate.state(s), Ok(CKS_RW_USER_FUNCTIONS));
        expect("C_Finalize", gate.finalize(), CKR_OK);
    }

    pub fn device_removed() {
        let (gate, _, s) = start();
        assert_eq!(
            gate.random(s),
            Err(CKR_DEVICE_REMOVED),
            "C_GenerateRandom #1"
        );
        let random = gate.random(s).expect("C_GenerateRandom #2");
        assert_ne!(random, [0u8; 32], "C_GenerateRandom #2 wrote nothing");
        let key = gate.find_key(s).expect("C_FindObjectsInit");
        let mac = gate.sign_ok(s, key);
        expect("C_SignInit #2", gate.sign_init(s, key), CKR_OK);
        assert_eq!(gate.sign(s), Err(CKR_DEVICE_REMOVED), "C_Sign #2");
        assert_eq!(gate.sign_ok(s, key), mac, "C_Sign #3");
        assert_eq!(gate.state(s), Ok(CKS_RW_USER_FUNCTIONS));
        expect("C_Finalize", gate.finalize(), CKR_OK);
    }

    pub fn token_not_present() {
        let (gate, slot, s) = start();
        assert_eq!(
            gate.find_key(s),
            Err(CKR_TOKEN_NOT_PRESENT),
            "C_FindObjectsInit #1"
        );
        let key = gate.find_key(s).expect("C_FindObjectsInit #2");
        assert_eq!(
            gate.open(slot),
            Err(CKR_TOKEN_NOT_PRESENT),
            "C_OpenSession #2"
        );
        let s2 = gate.open(slot).expect("C_OpenSession #3");
        assert_ne!(s2, s);
        // The login is the token's: the new session is logged in too.
        assert_eq!(gate.state(s2), Ok(CKS_RW_USER_FUNCTIONS));
        assert_eq!(gate.encrypt_ok(s, key), gate.encrypt_ok(s2, key));
        expect("C_Finalize", gate.finalize(), CKR_OK);
    }

    pub fn session_handle_invalid() {
        let gate = Gate::load();
        expect("C_Initialize", gate.initialize(), CKR_OK);
        let slot = gate.slot();
        let s = gate.open(slot).expect("C_OpenSession");
        expect("C_Login #1", gate.login(s), CKR_SESSION_HANDLE_INVALID);
        // The upstream kept its session: p11gate's handle still works.
        assert_eq!(gate.state(s), Ok(CKS_RW_PUBLIC_SESSION));
        expect("C_Login #2", gate.login(s), CKR_OK);
        assert_eq!(gate.state(s), Ok(CKS_RW_USER_FUNCTIONS));
        let key = gate.find_key(s).expect("C_FindObjectsInit");
        let first = gate.encrypt_ok(s, key);
        expect("C_EncryptInit #2", gate.encrypt_init(s, key), CKR_OK);
        assert_eq!(
            gate.encrypt(s),
            Err(CKR_SESSION_HANDLE_INVALID),
            "C_Encrypt #2"
        );
        assert_eq!(gate.encrypt_ok(s, key), first, "C_Encrypt #3");
        expect("C_CloseSession", gate.close(s), CKR_OK);
        assert_eq!(gate.state(s), Err(CKR_SESSION_HANDLE_INVALID));
        expect("C_Finalize", gate.finalize(), CKR_OK);
    }

    pub fn initialize_fails() {
        let gate = Gate::load();
        expect("C_Initialize #1", gate.initialize(), CKR_DEVICE_ERROR);
        assert_eq!(gate.slots(), Err(CKR_CRYPTOKI_NOT_INITIALIZED));
        expect("C_Initialize #2", gate.initialize(), CKR_OK);
        let slot = gate.slot();
        let s = gate.open(slot).expect("C_OpenSession");
        expect("C_Login", gate.login(s), CKR_OK);
        let key = gate.find_key(s).expect("C_FindObjectsInit");
        gate.encrypt_ok(s, key);
        expect("C_Finalize", gate.finalize(), CKR_OK);
    }

    pub fn slow() {
        let (gate, slot, s) = start();
        let s2 = gate.open(slot).expect("C_OpenSession");
        let key = gate.find_key(s2).expect("C_FindObjectsInit");
        let started = AtomicBool::new(false);
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let slow = scope.spawn(|| {
                let start = Instant::now();
                started.store(true, Ordering::SeqCst);
                let random = gate.random(s).expect("C_GenerateRandom");
                done.store(true, Ordering::SeqCst);
                (start.elapsed(), random)
            });
            // While the random call sleeps in the upstream, another session works.
            while !started.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(50));
            gate.encrypt_ok(s2, key);
            assert!(
                !done.load(Ordering::SeqCst),
                "the encryption waited for the slow C_GenerateRandom"
            );
            let (elapsed, random) = slow.join().unwrap();
            assert!(
                elapsed >= Duration::from_millis(SLOW_MS),
                "C_GenerateRandom took {elapsed:?}"
            );
            assert_ne!(random, [0u8; 32], "C_GenerateRandom wrote nothing");
        });
        expect("C_Finalize", gate.finalize(), CKR_OK);
    }
}
