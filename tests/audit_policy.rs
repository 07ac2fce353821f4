//! Audit records of p11gate's own decisions and lifecycle: policy refusals name their rule,
//! configuration errors are audited, and an application that forbids threads gets its records
//! written on its own thread. Each test loads the built libp11gate.so in-process (cryptoki, or
//! the raw C API where cryptoki cannot pass the flag), with a JSON-lines audit file and its key.

mod common;

use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use serde_json::Value;

use common::{SoftHsm, USER_PIN};

const PLAINTEXT: &[u8] = b"audit-policy-plaintext-5521-never-logged";

fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("audit.key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["audit", "keygen"])
        .arg(&key)
        .output()
        .expect("p11gate audit keygen");
    assert!(out.status.success(), "{out:?}");
    key
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn verify(file: &Path, key: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["audit", "verify"])
        .arg(file)
        .arg("--key")
        .arg(key)
        .output()
        .expect("p11gate audit verify");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK, "),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn no_secrets(text: &str) {
    let hex: String = PLAINTEXT.iter().map(|b| format!("{b:02x}")).collect();
    for secret in [
        USER_PIN,
        common::SO_PIN,
        std::str::from_utf8(PLAINTEXT).unwrap(),
        &hex,
    ] {
        assert!(!text.contains(secret), "{secret:?} in audit output");
    }
}

#[test]
fn a_policy_refusal_is_audited_with_its_rule() {
    let hsm = SoftHsm::new();
    hsm.init_token("policy");
    let dir = hsm.dir();
    let key = keygen(dir);
    let audit = dir.join("audit.jsonl");
    let config = dir.join("p11gate.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstream]]\nname = \"hsm\"\npath = \"{}\"\nprofiles = [\"no-aes-gcm\"]\n\n\
             [audit]\nsyslog = false\nfile = \"{}\"\nkey_file = \"{}\"\n",
            common::softhsm_module().display(),
            audit.display(),
            key.display()
        ),
    )
    .unwrap();
    let mut env = hsm.gate_env();
    env.retain(|(k, _)| k != "P11GATE_UPSTREAM" && k != "P11GATE_CONFIG");
    env.push(("P11GATE_CONFIG".into(), config.display().to_string()));
    let _guard = common::in_process(&env);
    std::env::remove_var("P11GATE_UPSTREAM");
    std::env::remove_var("P11GATE_AUDIT");
    std::env::remove_var("P11GATE_AUDIT_KEY");

    let p = Pkcs11::new(common::module()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p.get_slots_with_token().unwrap()[0];
    let session = p.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    let aes = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::ValueLen(32.into()),
                Attribute::Label(b"gcm-key".to_vec()),
                Attribute::Encrypt(true),
                Attribute::Token(false),
            ],
        )
        .unwrap();
    let mut iv = [7u8; 12];
    let gcm = GcmParams::new(&mut iv, &[], 128.into()).unwrap();
    let err = session
        .encrypt(&Mechanism::AesGcm(gcm), aes, PLAINTEXT)
        .unwrap_err();
    assert!(
        matches!(
            err,
            cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::MechanismInvalid, _)
        ),
        "want CKR_MECHANISM_INVALID, got {err:?}"
    );
    drop(session);
    p.finalize().unwrap();

    let recs = records(&audit);
    let refused: Vec<&Value> = recs.iter().filter(|r| r["fn"] == "C_EncryptInit").collect();
    assert_eq!(refused.len(), 1, "{recs:#?}");
    let r = refused[0];
    assert_eq!(r["rv"], "CKR_MECHANISM_INVALID");
    assert_eq!(r["mech"], "CKM_AES_GCM");
    assert_eq!(r["refused"], "profile \"no-aes-gcm\" of upstream \"hsm\"");
    assert_eq!(r["key_label"], "gcm-key");
    assert_eq!(r["key_class"], "CKO_SECRET_KEY");
    assert_eq!(
        r["key_uri"],
        "pkcs11:token=policy;object=gcm-key;type=secret-key"
    );
    assert_eq!(r["upstream"], "hsm");
    assert_eq!(r["token"], "policy");
    // The generated key's record carries its label from the template.
    let made = recs.iter().find(|r| r["fn"] == "C_GenerateKey").unwrap();
    assert_eq!(made["object_label"], "gcm-key");
    assert_eq!(made["mech"], "CKM_AES_KEY_GEN");
    assert_eq!(made["rv"], "CKR_OK");
    // Lifecycle: the file starts with its start record, then the load and init records;
    // the last record is C_Finalize.
    assert_eq!(recs[0]["event"], "file_start");
    assert_eq!(recs[1]["event"], "load");
    assert_eq!(recs[2]["event"], "init");
    assert_eq!(recs.last().unwrap()["event"], "finalize");
    verify(&audit, &key);
    no_secrets(&std::fs::read_to_string(&audit).unwrap());
}

#[test]
fn a_configuration_error_is_audited_with_file_and_line() {
    let hsm = SoftHsm::new();
    let dir = hsm.dir();
    let key = keygen(dir);
    let audit = dir.join("audit.jsonl");
    let config = dir.join("broken.toml");
    std::fs::write(
        &config,
        "[[upstream]]\nname = \"hsm\"\npath = \"/x.so\"\nbogus = 1\n",
    )
    .unwrap();
    let mut env = hsm.gate_env();
    env.retain(|(k, _)| k != "P11GATE_UPSTREAM" && k != "P11GATE_CONFIG");
    env.push(("P11GATE_CONFIG".into(), config.display().to_string()));
    env.push(("P11GATE_AUDIT".into(), format!("file:{}", audit.display())));
    env.push(("P11GATE_AUDIT_KEY".into(), key.display().to_string()));
    let _guard = common::in_process(&env);
    std::env::remove_var("P11GATE_UPSTREAM");

    let p = Pkcs11::new(common::module()).unwrap();
    let err = p
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap_err();
    assert!(
        matches!(
            err,
            cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::GeneralError, _)
        ),
        "{err:?}"
    );
    std::env::remove_var("P11GATE_AUDIT");
    std::env::remove_var("P11GATE_AUDIT_KEY");

    let recs = records(&audit);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    assert_eq!(recs[1]["event"], "config_error");
    assert_eq!(recs[1]["fn"], "C_Initialize");
    assert_eq!(recs[1]["rv"], "CKR_GENERAL_ERROR");
    let msg = recs[1]["msg"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!("config {}:4:", config.display())),
        "{msg}"
    );
    verify(&audit, &key);
}

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn without_os_threads_records_are_written_on_the_calling_thread() {
    use pkcs11_sys::*;
    let hsm = SoftHsm::new();
    hsm.init_token("nothreads");
    let dir = hsm.dir();
    let key = keygen(dir);
    let audit = dir.join("audit.jsonl");
    let mut env = hsm.gate_env();
    env.push(("P11GATE_AUDIT".into(), format!("file:{}", audit.display())));
    env.push(("P11GATE_AUDIT_KEY".into(), key.display().to_string()));
    let _guard = common::in_process(&env);

    // SAFETY: the built module exports the PKCS#11 API; every call below passes valid
    // pointers for its duration, as the spec requires.
    unsafe {
        let lib = libloading::Library::new(common::module()).unwrap();
        let get: libloading::Symbol<unsafe extern "C" fn(*mut CK_FUNCTION_LIST_PTR) -> CK_RV> =
            lib.get(b"C_GetFunctionList").unwrap();
        let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        assert_eq!(get(&mut list), CKR_OK);
        let f = &*list;
        let mut args = CK_C_INITIALIZE_ARGS {
            flags: CKF_LIBRARY_CANT_CREATE_OS_THREADS | CKF_OS_LOCKING_OK,
            ..Default::default()
        };
        assert_eq!(
            f.C_Initialize.unwrap()(&mut args as *mut _ as *mut _),
            CKR_OK
        );
        assert!(
            !thread_names().iter().any(|n| n == "p11gate-audit"),
            "a writer thread was started: {:?}",
            thread_names()
        );
        let mut slots = [0 as CK_SLOT_ID; 4];
        let mut count: CK_ULONG = 4;
        assert_eq!(
            f.C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut count),
            CKR_OK
        );
        let mut session: CK_SESSION_HANDLE = 0;
        assert_eq!(
            f.C_OpenSession.unwrap()(
                slots[0],
                CKF_SERIAL_SESSION,
                std::ptr::null_mut(),
                None,
                &mut session
            ),
            CKR_OK
        );
        let mut random = [0u8; 32];
        assert_eq!(
            f.C_GenerateRandom.unwrap()(session, random.as_mut_ptr(), 32),
            CKR_OK
        );
        // Written before C_Generate returned: nothing waits for a thread.
        let recs = records(&audit);
        let last = recs.last().unwrap();
        assert_eq!(last["fn"], "C_GenerateRandom", "{recs:#?}");
        assert_eq!(last["out"], 32);
        assert_eq!(last["rv"], "CKR_OK");
        assert_eq!(f.C_Finalize.unwrap()(std::ptr::null_mut()), CKR_OK);
    }
    std::env::remove_var("P11GATE_AUDIT");
    std::env::remove_var("P11GATE_AUDIT_KEY");
    assert_eq!(records(&audit).last().unwrap()["event"], "finalize");
    verify(&audit, &key);
}

#[test]
fn operations_left_open_are_written_when_their_sessions_close() {
    use pkcs11_sys::*;
    let hsm = SoftHsm::new();
    hsm.init_token("open-ops");
    let dir = hsm.dir();
    let key = keygen(dir);
    let audit = dir.join("audit.jsonl");
    let mut env = hsm.gate_env();
    env.push(("P11GATE_AUDIT".into(), format!("file:{}", audit.display())));
    env.push(("P11GATE_AUDIT_KEY".into(), key.display().to_string()));
    let _guard = common::in_process(&env);

    // SAFETY: the built module exports the PKCS#11 API; every call below passes valid
    // pointers for its duration, as the spec requires.
    unsafe {
        let lib = libloading::Library::new(common::module()).unwrap();
        let get: libloading::Symbol<unsafe extern "C" fn(*mut CK_FUNCTION_LIST_PTR) -> CK_RV> =
            lib.get(b"C_GetFunctionList").unwrap();
        let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        assert_eq!(get(&mut list), CKR_OK);
        let f = &*list;
        assert_eq!(f.C_Initialize.unwrap()(std::ptr::null_mut()), CKR_OK);
        let mut slots = [0 as CK_SLOT_ID; 4];
        let mut count: CK_ULONG = 4;
        assert_eq!(
            f.C_GetSlotList.unwrap()(CK_TRUE, slots.as_mut_ptr(), &mut count),
            CKR_OK
        );
        let open = || {
            let mut s: CK_SESSION_HANDLE = 0;
            assert_eq!(
                f.C_OpenSession.unwrap()(
                    slots[0],
                    CKF_SERIAL_SESSION,
                    std::ptr::null_mut(),
                    None,
                    &mut s
                ),
                CKR_OK
            );
            s
        };
        let digest_open = |s: CK_SESSION_HANDLE, data: &[u8]| {
            let mut m = CK_MECHANISM {
                mechanism: CKM_SHA256,
                pParameter: std::ptr::null_mut(),
                ulParameterLen: 0,
            };
            assert_eq!(f.C_DigestInit.unwrap()(s, &mut m), CKR_OK);
            assert_eq!(
                f.C_DigestUpdate.unwrap()(s, data.as_ptr() as *mut u8, data.len() as CK_ULONG),
                CKR_OK
            );
        };
        let (a, b, c) = (open(), open(), open());
        digest_open(a, &PLAINTEXT[..7]);
        digest_open(b, &PLAINTEXT[..11]);
        digest_open(c, &PLAINTEXT[..13]);
        assert_eq!(f.C_CloseSession.unwrap()(a), CKR_OK);
        let keep = open();
        // C_CloseAllSessions closes b, c and keep; then one more for C_Finalize.
        assert_eq!(f.C_CloseAllSessions.unwrap()(slots[0]), CKR_OK);
        let _ = keep;
        let d = open();
        digest_open(d, &PLAINTEXT[..17]);
        assert_eq!(f.C_Finalize.unwrap()(std::ptr::null_mut()), CKR_OK);
    }
    std::env::remove_var("P11GATE_AUDIT");
    std::env::remove_var("P11GATE_AUDIT_KEY");

    let recs = records(&audit);
    let ended: Vec<(u64, &str, &str)> = recs
        .iter()
        .filter(|r| r.get("ended").is_some())
        .map(|r| {
            assert_eq!(r["fn"], "C_DigestInit", "{r}");
            assert_eq!(r["mech"], "CKM_SHA256", "{r}");
            assert_eq!(r["rv"], "CKR_OK", "{r}");
            assert_eq!(r["parts"], 1, "{r}");
            assert_eq!(r["out"], 0, "{r}");
            (
                r["in"].as_u64().unwrap(),
                r["ended"].as_str().unwrap(),
                r["fn"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ended,
        vec![
            (7, "session_closed", "C_DigestInit"),
            (11, "session_closed", "C_DigestInit"),
            (13, "session_closed", "C_DigestInit"),
            (17, "finalize", "C_DigestInit"),
        ],
        "{recs:#?}"
    );
    // The finalize-ended record comes before the finalize record itself.
    assert_eq!(recs.last().unwrap()["event"], "finalize");
    verify(&audit, &key);
}
