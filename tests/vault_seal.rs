//! What HashiCorp Vault's `seal "pkcs11"` does to a module (see VAULT.md), replayed with the
//! cryptoki crate against SoftHSMv2 directly and through p11gate, with the same assertions both
//! ways: p11gate must be exactly as correct as its upstream.
//!
//! Every test holds `common::in_process` for its whole run and finalises before releasing it.

mod common;
#[path = "vault_seal/flow.rs"]
mod flow;
#[path = "vault_seal/raw.rs"]
mod raw;

use std::path::Path;
use std::sync::OnceLock;

use cryptoki::error::RvError;
use parking_lot::MutexGuard;

use common::{SoftHsm, SO_PIN, USER_PIN};
use flow::{Client, Failure, Report};

/// Takes the in-process lock with `env` set; P11GATE_LOG_LEVEL is cleared unless `env` sets it,
/// so a previous test's level does not leak into this one.
fn enter(env: &[(String, String)]) -> MutexGuard<'static, ()> {
    let guard = common::in_process(env);
    if !env.iter().any(|(k, _)| k == "P11GATE_LOG_LEVEL") {
        std::env::remove_var("P11GATE_LOG_LEVEL");
    }
    guard
}

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// SoftHSMv2 on its own: the environment only points it at this test's token directory.
fn direct_env(hsm: &SoftHsm) -> Vec<(String, String)> {
    vec![("SOFTHSM2_CONF".into(), hsm.conf.display().to_string())]
}

/// The flow run directly against SoftHSMv2 once per test binary: the reference p11gate is held to.
fn direct_report() -> &'static Report {
    static DIRECT: OnceLock<Report> = OnceLock::new();
    DIRECT.get_or_init(|| {
        let hsm = SoftHsm::new();
        hsm.init_token("vault-direct");
        let _guard = enter(&direct_env(&hsm));
        flow::run_flow(&common::softhsm_module(), "vault-direct").report
    })
}

/// The answers SoftHSMv2 2.6 gives (and so p11gate must give).
fn check_expected_codes(r: &Report) {
    let f = |function: &str, rv| Failure {
        function: function.into(),
        rv,
    };
    assert_eq!(r.wrong_pin, f("Login", RvError::PinIncorrect));
    // SoftHSMv2 2.6 answers a bad GCM tag with CKR_GENERAL_ERROR, not CKR_ENCRYPTED_DATA_INVALID.
    assert_eq!(r.gcm_bad_tag, f("Decrypt", RvError::GeneralError));
    assert_eq!(r.gcm_wrong_key, f("Decrypt", RvError::GeneralError));
    assert_eq!(r.hmac_bad_mac, f("Verify", RvError::SignatureInvalid));
    assert_eq!(
        r.hmac_with_aes_key,
        f("SignInit", RvError::KeyTypeInconsistent)
    );
    assert_eq!(
        r.oaep_sha256_encrypt,
        f("EncryptInit", RvError::ArgumentsBad)
    );
    assert_eq!(
        r.oaep_sha256_decrypt,
        f("DecryptInit", RvError::ArgumentsBad)
    );
}

#[test]
fn seal_flow_directly_against_softhsm() {
    let report = direct_report();
    check_expected_codes(report);
}

#[test]
fn seal_flow_through_p11gate_matches_softhsm() {
    let direct = direct_report().clone();
    let hsm = SoftHsm::new();
    hsm.init_token("vault-gate");
    let _guard = enter(&hsm.gate_env());
    let gate = flow::run_flow(&common::module(), "vault-gate");
    check_expected_codes(&gate.report);
    assert_eq!(
        gate.report, direct,
        "p11gate answers exactly as SoftHSMv2 does"
    );

    // Slot ids pass through unchanged: SoftHSMv2 on the same token directory names the same slot.
    let direct_slot = {
        let c = Client::init(&common::softhsm_module());
        let id = c.slot_by_label("vault-gate").id();
        c.finalize();
        id
    };
    assert_eq!(
        gate.slot, direct_slot,
        "slot id through p11gate = SoftHSMv2's slot id"
    );
}

fn concurrency_on(module: &Path, env: &[(String, String)], label: &str) {
    let _guard = enter(env);
    let (threads, per_thread, pool) = (16, 500, 8);
    let (pairs, distinct) = flow::concurrency(module, label, threads, per_thread, pool);
    assert_eq!(
        distinct,
        threads * per_thread,
        "every round trip produced a distinct ciphertext"
    );
    // 16 threads share 8 sessions: sessions necessarily moved between threads.
    assert!(
        pairs > pool,
        "sessions moved between threads ({pairs} session/thread pairs)"
    );
}

#[test]
fn concurrent_gcm_round_trips_directly_against_softhsm() {
    let hsm = SoftHsm::new();
    hsm.init_token("vault-conc-direct");
    concurrency_on(
        &common::softhsm_module(),
        &direct_env(&hsm),
        "vault-conc-direct",
    );
}

#[test]
fn concurrent_gcm_round_trips_through_p11gate() {
    let hsm = SoftHsm::new();
    hsm.init_token("vault-conc-gate");
    concurrency_on(&common::module(), &hsm.gate_env(), "vault-conc-gate");
}

#[test]
fn missing_upstream_fails_initialize_then_valid_upstream_works() {
    let hsm = SoftHsm::new();
    hsm.init_token("vault-missing");
    let log = tempfile::NamedTempFile::new().expect("log file");
    let log_path = log.path().display().to_string();
    let env = with(
        hsm.gate_env(),
        &[
            ("P11GATE_UPSTREAM", "/nonexistent/x.so"),
            ("P11GATE_LOG", &log_path),
        ],
    );
    let _guard = enter(&env);

    let mut client = Client::load(&common::module());
    let err = flow::expect_failure(client.initialize(), "C_Initialize with a missing upstream");
    assert_eq!(
        err,
        Failure {
            function: "Initialize".into(),
            rv: RvError::GeneralError
        }
    );
    let text = std::fs::read_to_string(log.path()).expect("read log");
    let hits: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("cannot load upstream /nonexistent/x.so:"))
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "exactly one 'cannot load upstream' line; log:\n{text}"
    );
    let reason = hits[0]
        .split("cannot load upstream /nonexistent/x.so:")
        .nth(1)
        .unwrap_or("");
    assert!(
        !reason.trim().is_empty(),
        "the line says why: {:?}",
        hits[0]
    );
    let not_init = flow::expect_failure(client.ctx().get_slots_with_token(), "C_GetSlotList");
    assert_eq!(
        not_init,
        Failure {
            function: "GetSlotList".into(),
            rv: RvError::CryptokiNotInitialized
        }
    );

    // Vault re-initialises in the same process once the upstream is there.
    std::env::set_var("P11GATE_UPSTREAM", common::softhsm_module());
    client
        .initialize()
        .expect("C_Initialize with a valid upstream after a failed one");
    let slot = client.slot_by_label("vault-missing");
    let s = client.ctx().open_rw_session(slot).expect("C_OpenSession");
    client.login(&s);
    let (keys, _) = flow::find_or_generate(&s);
    let blob = flow::gcm_encrypt(&s, keys.aes, [7; 12], b"after-recovery");
    assert_eq!(
        flow::gcm_decrypt(&s, keys.aes, &blob).expect("C_Decrypt"),
        b"after-recovery"
    );
    drop(s);
    client.finalize();
}

/// Every form a secret could take in a log line.
fn forms(secret: &[u8]) -> Vec<Vec<u8>> {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let debug = format!("{secret:?}");
    vec![
        secret.to_vec(),
        hex.clone().into_bytes(),
        hex.to_uppercase().into_bytes(),
        debug
            .trim_start_matches('[')
            .trim_end_matches(']')
            .as_bytes()
            .to_vec(),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn trace_log_holds_no_pin_plaintext_or_ciphertext() {
    let hsm = SoftHsm::new();
    hsm.init_token("vault-secrets");
    let log = tempfile::NamedTempFile::new().expect("log file");
    let log_path = log.path().display().to_string();
    let env = with(
        hsm.gate_env(),
        &[("P11GATE_LOG", &log_path), ("P11GATE_LOG_LEVEL", "trace")],
    );
    let _guard = enter(&env);
    let outcome = flow::run_flow(&common::module(), "vault-secrets");

    let text = std::fs::read(log.path()).expect("read log");
    let lines = String::from_utf8_lossy(&text);
    assert!(!text.is_empty(), "trace logging wrote nothing");
    for f in ["C_Login", "C_Encrypt", "C_Decrypt", "C_Sign"] {
        assert!(
            lines.lines().any(|l| l.contains(f)),
            "no trace line for {f}; log:\n{lines}"
        );
    }
    let mut secrets: Vec<(String, Vec<u8>)> = vec![
        ("user PIN".into(), USER_PIN.as_bytes().to_vec()),
        ("SO PIN".into(), SO_PIN.as_bytes().to_vec()),
        ("wrong PIN".into(), flow::WRONG_PIN.as_bytes().to_vec()),
    ];
    for (i, p) in outcome.plaintexts.iter().enumerate() {
        secrets.push((format!("plaintext #{i}"), p.clone()));
    }
    for (i, c) in outcome.ciphertexts.iter().enumerate() {
        secrets.push((format!("ciphertext #{i}"), c.clone()));
    }
    for (what, secret) in &secrets {
        for form in forms(secret) {
            assert!(
                !contains(&text, &form),
                "the log holds the {what} as {:?}",
                String::from_utf8_lossy(&form)
            );
        }
    }
}
