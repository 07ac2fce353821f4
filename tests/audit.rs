//! Black-box tests of the audit trail (README "Audit trail").
//!
//! Each scenario's PKCS#11 client is a child process of this test binary (`audit/child.rs`) that
//! loads the built libp11gate.so with the cryptoki crate, in front of a private SoftHSMv2
//! installation, with exactly the environment the test gives it. Records are read where a
//! reviewer reads them: from a real rsyslogd's output file (`common/rsyslog.rs`, Debian's
//! rsyslogd with a private configuration and socket), from a datagram socket the test binds
//! itself (when the test must control the reader), and from the JSON-lines file, whose HMAC
//! chain the tests check independently of `p11gate audit verify`.
//!
//! This process never loads a PKCS#11 module itself, so the tests run in parallel.

mod common;

#[path = "audit/child.rs"]
mod child;
#[path = "audit/client.rs"]
mod client;
#[path = "audit/records.rs"]
mod records;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

use child::{param, tell, wait_parent, Client};
use common::rsyslog::{Rsyslog, SyslogLine};
use common::{SoftHsm, SO_PIN, USER_PIN};
use records::{
    assert_time, check_chain, file_records, hex, json_record, key_fingerprint, of_pid, read_key,
    syslog_records, tally, verify_problem, Record,
};

// ---------------------------------------------------------------------------------------------
// What the clients use: labels, ids, and distinctive secrets the tests search every output for.

const AES_LABEL: &str = "audit-aes-key";
const AES_ID: &[u8] = &[0x01, 0xab, 0xcd, 0xef];
const HMAC_LABEL: &str = "audit-hmac-key";
const HMAC_ID: &[u8] = &[0x02, 0x5e, 0xc0, 0x7f];

/// The PKCS#11 URI (RFC 7512) an audit record gives a secret key with this token, label and
/// id: the labels here need no escape, the id is escaped byte by byte.
fn key_uri(token: &str, label: &str, id: &[u8]) -> String {
    let id: String = id.iter().map(|b| format!("%{b:02X}")).collect();
    format!("pkcs11:token={token};object={label};type=secret-key;id={id}")
}

/// 32 bytes encrypted with AES-GCM in the flow scenario.
const PLAINTEXT: &[u8; 32] = b"plaintext-7731-never-logged-0032";
/// 45 bytes MACed in one part.
const MAC_DATA: &[u8; 45] = b"mac-data-5821-never-logged-abcdefghijklmnopqr";
/// A PIN nobody has.
const WRONG_PIN: &str = "wrong-pin-6610-never-logged";
/// The user PIN the secrets scenario changes to (and back).
const NEW_PIN: &str = "new-user-pin-2294-never-logged";
/// Key values the secrets scenario imports with C_CreateObject.
const KEY_VALUE: &[u8; 32] = b"keyvalue-3390-never-logged-0042!";
const HMAC_VALUE: &[u8; 32] = b"hmackey-4417-never-logged-00042!";
const PLAINTEXT_GCM: &[u8; 32] = b"plaintext-7731-never-logged-GCM!";
const PLAINTEXT_MAC: &[u8] = b"plaintext-8842-never-logged-MAC";
const PLAINTEXT_DIGEST: &[u8] = b"plaintext-9953-never-logged-SHA";
const SEED: &[u8] = b"seed-1207-never-logged";
/// A label that tries to forge fields and a second line, with a quote, a backslash, `=`, a
/// newline and non-ASCII.
const EVIL_LABEL: &str = "evil\" fn=C_Forged rec=999 \\x41\n<86>1 forged=1 \u{e9}";

/// authpriv (10) * 8 + severity.
const PRI_INFO: u8 = 86;
const PRI_NOTICE: u8 = 85;
const PRI_WARNING: u8 = 84;

/// How long the tests wait for records to show up in an output.
const ARRIVAL: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The child side: each scenario's client.

/// Runs one client scenario when this binary was started by `child::Client`; does nothing in a
/// normal run (it is ignored there).
#[test]
#[ignore = "runs only as a child process of the other tests in this file"]
fn child_process() {
    let Ok(name) = std::env::var(child::CHILD_VAR) else {
        return;
    };
    match name.as_str() {
        "flow" => child_flow(),
        "secrets" => child_secrets(),
        "encrypt_loop" => child_encrypt_loop(),
        "random_calls" => child_random_calls(),
        "burst" => child_burst(),
        "deny_full" => child_deny_full(),
        "continue_full" => child_continue_full(),
        "deny_recover" => child_deny_recover(),
        "deny_syslog" => child_deny_syslog(),
        other => panic!("unknown child scenario {other}"),
    }
    println!("\n{}", child::PASSED);
}

/// Scenario a's calls, each checked here; the parent checks their records.
fn child_flow() {
    let ctx = client::load();
    let slot = client::slot(&ctx);
    tell("SLOT", slot.id());
    let s = ctx.open_rw_session(slot).expect("C_OpenSession");
    tell("SESSION", s.handle());
    assert_eq!(
        client::rv_of(s.login(UserType::User, Some(&AuthPin::from(WRONG_PIN)))),
        RvError::PinIncorrect
    );
    client::user_login(&s);

    let aes = client::gen_aes(&s, AES_LABEL, AES_ID, true);
    tell("AES", aes.handle());
    let mut iv = [7u8; 12];
    // cryptoki's encrypt: C_EncryptInit, C_Encrypt with a NULL buffer (length query), C_Encrypt.
    let ct = s
        .encrypt(&client::gcm(&mut iv), aes, PLAINTEXT)
        .expect("encrypt");
    assert_eq!(ct.len(), 48);
    let pt = s.decrypt(&client::gcm(&mut iv), aes, &ct).expect("decrypt");
    assert_eq!(pt, PLAINTEXT);
    // Refused by the configuration's deny list: CKR_MECHANISM_INVALID before SoftHSMv2 sees it.
    assert_eq!(
        client::rv_of(s.encrypt_init(&Mechanism::AesCbcPad([0; 16]), aes)),
        RvError::MechanismInvalid
    );

    let hmac = client::gen_hmac(&s, HMAC_LABEL, HMAC_ID);
    tell("HMAC", hmac.handle());
    let mac = s
        .sign(&Mechanism::Sha256Hmac, hmac, MAC_DATA)
        .expect("sign");
    assert_eq!(mac.len(), 32);
    // Multi-part: C_SignInit, C_SignUpdate(10), C_SignUpdate(20), C_SignFinal (length query),
    // C_SignFinal.
    s.sign_init(&Mechanism::Sha256Hmac, hmac)
        .expect("C_SignInit");
    s.sign_update(&MAC_DATA[..10]).expect("C_SignUpdate");
    s.sign_update(&MAC_DATA[10..30]).expect("C_SignUpdate");
    let mac2 = s.sign_final().expect("C_SignFinal");
    assert_eq!(mac2.len(), 32);

    let found = s
        .find_objects(&[Attribute::Label(AES_LABEL.as_bytes().to_vec())])
        .expect("find");
    assert_eq!(found, vec![aes]);
    let raw = client::Raw::open();
    let (rv, len) = raw.get_ulong(s.handle(), aes.handle(), pkcs11_sys::CKA_VALUE_LEN);
    assert_eq!((rv, len), (pkcs11_sys::CKR_OK, 32));
    let random = s.generate_random_vec(32).expect("C_GenerateRandom");
    assert_eq!(random.len(), 32);
    s.destroy_object(hmac).expect("C_DestroyObject");

    // An operation still open when its session closes.
    let s2 = ctx.open_rw_session(slot).expect("C_OpenSession");
    tell("SESSION2", s2.handle());
    let mut iv2 = [9u8; 12];
    s2.encrypt_init(&client::gcm(&mut iv2), aes)
        .expect("C_EncryptInit");
    s2.close().expect("C_CloseSession");

    s.logout().expect("C_Logout");
    s.close().expect("C_CloseSession");
    ctx.finalize().expect("C_Finalize");
}

/// Scenario g: every kind of secret a client hands p11gate, and a label built to forge fields.
fn child_secrets() {
    let ctx = client::load();
    let slot = client::slot(&ctx);
    let s = ctx.open_rw_session(slot).expect("C_OpenSession");
    s.login(UserType::So, Some(&AuthPin::from(SO_PIN)))
        .expect("C_Login(CKU_SO)");
    s.logout().expect("C_Logout");
    assert_eq!(
        client::rv_of(s.login(UserType::User, Some(&AuthPin::from(WRONG_PIN)))),
        RvError::PinIncorrect
    );
    client::user_login(&s);
    s.set_pin(&AuthPin::from(USER_PIN), &AuthPin::from(NEW_PIN))
        .expect("C_SetPIN");
    s.set_pin(&AuthPin::from(NEW_PIN), &AuthPin::from(USER_PIN))
        .expect("C_SetPIN back");

    let aes = s
        .create_object(&client::secret_object(
            KeyType::AES,
            KEY_VALUE,
            EVIL_LABEL.as_bytes(),
            b"id-aes",
        ))
        .expect("C_CreateObject(AES)");
    tell("AES", aes.handle());
    let mut iv = [3u8; 12];
    let ct = s
        .encrypt(&client::gcm(&mut iv), aes, PLAINTEXT_GCM)
        .expect("encrypt");
    tell("CT", hex(&ct));
    let pt = s.decrypt(&client::gcm(&mut iv), aes, &ct).expect("decrypt");
    assert_eq!(pt, PLAINTEXT_GCM);

    let hmac = s
        .create_object(&client::secret_object(
            KeyType::GENERIC_SECRET,
            HMAC_VALUE,
            b"secrets-hmac",
            b"id-hmac",
        ))
        .expect("C_CreateObject(generic secret)");
    let mac = s
        .sign(&Mechanism::Sha256Hmac, hmac, PLAINTEXT_MAC)
        .expect("sign");
    tell("MAC", hex(&mac));
    s.verify(&Mechanism::Sha256Hmac, hmac, PLAINTEXT_MAC, &mac)
        .expect("verify");
    let digest = s
        .digest(&Mechanism::Sha256, PLAINTEXT_DIGEST)
        .expect("digest");
    tell("DIGEST", hex(&digest));
    s.seed_random(SEED).expect("C_SeedRandom");
    let random = s.generate_random_vec(32).expect("C_GenerateRandom");
    tell("RANDOM", hex(&random));
    let label = s
        .get_attributes(aes, &[AttributeType::Label])
        .expect("C_GetAttributeValue");
    assert_eq!(
        label,
        vec![Attribute::Label(EVIL_LABEL.as_bytes().to_vec())]
    );
    s.destroy_object(hmac).expect("C_DestroyObject");
    s.logout().expect("C_Logout");
    s.close().expect("C_CloseSession");
    ctx.finalize().expect("C_Finalize");
}

/// Scenario b: encrypts, paced, until the parent says stop; prints how many.
fn child_encrypt_loop() {
    let ctx = client::load();
    let slot = client::slot(&ctx);
    let s = ctx.open_rw_session(slot).expect("C_OpenSession");
    client::user_login(&s);
    let aes = client::gen_aes(&s, AES_LABEL, AES_ID, false);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            wait_parent();
            stop.store(true, std::sync::atomic::Ordering::Release);
        });
    }
    tell("READY", "");
    let mut count = 0u64;
    let mut iv = [0u8; 12];
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        iv[..8].copy_from_slice(&count.to_be_bytes());
        let ct = s
            .encrypt(&client::gcm(&mut iv), aes, PLAINTEXT)
            .unwrap_or_else(|e| panic!("encrypt #{count} while the syslog daemon restarts: {e}"));
        assert_eq!(ct.len(), 48);
        count += 1;
        std::thread::sleep(Duration::from_micros(300));
    }
    tell("COUNT", count);
    s.close().expect("C_CloseSession");
    ctx.finalize().expect("C_Finalize");
}

/// AUDIT_CALLS C_GenerateRandom calls, AUDIT_PACE_US apart; with AUDIT_BARRIER, says READY and
/// waits for the parent before them.
fn child_random_calls() {
    let calls: usize = param("AUDIT_CALLS").parse().unwrap();
    let pace: u64 = param("AUDIT_PACE_US").parse().unwrap();
    let ctx = client::load();
    let slot = client::slot(&ctx);
    let s = ctx.open_rw_session(slot).expect("C_OpenSession");
    if std::env::var("AUDIT_BARRIER").is_ok() {
        tell("READY", "");
        wait_parent();
    }
    for _ in 0..calls {
        assert_eq!(
            s.generate_random_vec(16).expect("C_GenerateRandom").len(),
            16
        );
        if pace > 0 {
            std::thread::sleep(Duration::from_micros(pace));
        }
    }
    s.close().expect("C_CloseSession");
    ctx.finalize().expect("C_Finalize");
}

/// Scenario e: AUDIT_CALLS C_GenerateRandom calls on a thread after the parent says go; tells
/// `BLOCKED n` if they stop making progress for 500 ms, then `DONE calls max_ms blocked`.
fn child_burst() {
    let calls: usize = param("AUDIT_CALLS").parse().unwrap();
    let ctx = client::load();
    let slot = client::slot(&ctx);
    let s = ctx.open_ro_session(slot).expect("C_OpenSession");
    tell("READY", "");
    wait_parent();
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let worker = {
        let progress = progress.clone();
        std::thread::spawn(move || {
            let mut max = Duration::ZERO;
            for i in 0..calls {
                let t = Instant::now();
                let r = s.generate_random_vec(16);
                max = max.max(t.elapsed());
                assert_eq!(
                    r.unwrap_or_else(|e| panic!("C_GenerateRandom #{i}: {e}"))
                        .len(),
                    16
                );
                progress.store(i + 1, std::sync::atomic::Ordering::Release);
            }
            (s, max)
        })
    };
    let (mut last, mut changed, mut blocked) = (0, Instant::now(), false);
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        let p = progress.load(std::sync::atomic::Ordering::Acquire);
        if p != last {
            (last, changed) = (p, Instant::now());
        } else if !blocked && changed.elapsed() > Duration::from_millis(500) {
            blocked = true;
            tell("BLOCKED", p);
        }
    }
    let (s, max) = worker.join().expect("worker");
    tell(
        "DONE",
        format!(
            "{} {} {}",
            progress.load(std::sync::atomic::Ordering::Acquire),
            max.as_millis(),
            blocked as u8
        ),
    );
    wait_parent();
    s.close().expect("C_CloseSession");
    ctx.finalize().expect("C_Finalize");
}

/// Makes audited calls (C_OpenSession until one works, then C_GenerateRandom on it) every
/// 20 ms until one is denied or `limit` passes. Returns the session, if one was opened, how
/// many calls were denied, and when the first denial came.
fn until_denied(
    ctx: &cryptoki::context::Pkcs11,
    slot: cryptoki::slot::Slot,
    session: &mut Option<cryptoki::session::Session>,
    start: Instant,
    limit: Duration,
) -> Option<Duration> {
    loop {
        let r = match session {
            None => match ctx.open_rw_session(slot) {
                Ok(s) => {
                    *session = Some(s);
                    None
                }
                Err(e) => client::outcome::<()>(&Err(e)),
            },
            Some(s) => client::outcome(&s.generate_random_vec(16)),
        };
        match r {
            None => {}
            Some(RvError::FunctionFailed) => return Some(start.elapsed()),
            Some(other) => {
                panic!("an audited call returned {other:?}, not CKR_OK or CKR_FUNCTION_FAILED")
            }
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Scenario d, /dev/full with on_failure = "deny".
fn child_deny_full() {
    let start = Instant::now();
    let ctx = client::load();
    let slot = client::slot(&ctx);
    let mut session = None;
    let denied = until_denied(&ctx, slot, &mut session, start, Duration::from_secs(3))
        .expect("audited calls still succeed 3 s after C_Initialize, with the audit file /dev/full and on_failure = \"deny\"");
    tell("DENIED_AFTER_MS", denied.as_millis());
    // Every audited call now fails fast ...
    assert_eq!(
        client::rv_of(ctx.open_rw_session(slot)),
        RvError::FunctionFailed,
        "C_OpenSession while the audit file fails"
    );
    if let Some(s) = &session {
        assert_eq!(
            client::rv_of(s.generate_random_vec(16)),
            RvError::FunctionFailed,
            "C_GenerateRandom while the audit file fails"
        );
        assert_eq!(
            client::rv_of(s.login(UserType::User, Some(&AuthPin::from(USER_PIN)))),
            RvError::FunctionFailed,
            "C_Login while the audit file fails"
        );
        // ... and queries, which are not audited, still work.
        s.get_session_info()
            .expect("C_GetSessionInfo is not audited");
    }
    ctx.get_slots_with_token()
        .expect("C_GetSlotList is not audited");
    ctx.get_token_info(slot)
        .expect("C_GetTokenInfo is not audited");
    tell("SESSION_BEFORE_DENY", session.is_some() as u8);
    // C_CloseSession and C_Finalize are audited too: their results are not part of this check.
    if let Some(s) = session {
        std::mem::forget(s);
    }
    let _ = ctx.finalize();
}

/// Scenario d, /dev/full with the default on_failure: every call keeps working for 2.5 s.
fn child_continue_full() {
    let start = Instant::now();
    let ctx = client::load();
    let slot = client::slot(&ctx);
    let s = ctx.open_rw_session(slot).expect("C_OpenSession");
    client::user_login(&s);
    let aes = client::gen_aes(&s, AES_LABEL, AES_ID, false);
    let mut iv = [5u8; 12];
    let mut calls = 0;
    while start.elapsed() < Duration::from_millis(2500) {
        assert_eq!(
            s.generate_random_vec(16)
                .unwrap_or_else(|e| panic!("C_GenerateRandom after {:?}: {e}", start.elapsed()))
                .len(),
            16
        );
        let ct = s
            .encrypt(&client::gcm(&mut iv), aes, PLAINTEXT)
            .unwrap_or_else(|e| panic!("encrypt after {:?}: {e}", start.elapsed()));
        assert_eq!(ct.len(), 48);
        calls += 2;
        std::thread::sleep(Duration::from_millis(10));
    }
    s.logout().expect("C_Logout");
    s.close().expect("C_CloseSession");
    ctx.finalize().expect("C_Finalize");
    tell("CALLS", calls);
}

/// Scenario d, an audit file in a directory that does not exist yet, on_failure = "deny".
fn child_deny_recover() {
    let start = Instant::now();
    let ctx = client::load();
    let slot = client::slot(&ctx);
    let mut session = None;
    let mut denied = 0u64;
    until_denied(&ctx, slot, &mut session, start, Duration::from_secs(3)).expect(
        "audited calls still succeed 3 s after C_Initialize, with the audit file's directory missing and on_failure = \"deny\"",
    );
    denied += 1;
    // A few more denied calls, counted: the outage record must count them all.
    for _ in 0..3 {
        let r = match &session {
            None => client::outcome(&ctx.open_rw_session(slot)),
            Some(s) => client::outcome(&s.generate_random_vec(16)),
        };
        assert_eq!(r, Some(RvError::FunctionFailed));
        denied += 1;
    }
    tell("DENIED", "");
    wait_parent(); // the parent creates the directory
    let back = Instant::now();
    loop {
        let r = match &session {
            None => match ctx.open_rw_session(slot) {
                Ok(s) => {
                    session = Some(s);
                    None
                }
                Err(e) => client::outcome::<()>(&Err(e)),
            },
            Some(s) => client::outcome(&s.generate_random_vec(16)),
        };
        match r {
            None => break,
            Some(RvError::FunctionFailed) => denied += 1,
            Some(other) => panic!("an audited call returned {other:?}"),
        }
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "audited calls still fail 3 s after the audit file's directory was created"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    tell("RECOVERED_MS", back.elapsed().as_millis());
    let s = session.expect("a session");
    client::user_login(&s);
    for _ in 0..3 {
        assert_eq!(
            s.generate_random_vec(32).expect("C_GenerateRandom").len(),
            32
        );
    }
    s.close().expect("C_CloseSession");
    ctx.finalize().expect("C_Finalize");
    tell("COUNTS", denied);
}

/// Scenario d, syslog socket taken away and given back, on_failure = "deny": C_Encrypt and
/// C_GenerateRandom fail while it is gone and work again once it is back.
fn child_deny_syslog() {
    let ctx = client::load();
    let slot = client::slot(&ctx);
    let s = ctx.open_rw_session(slot).expect("C_OpenSession");
    client::user_login(&s);
    let aes = client::gen_aes(&s, AES_LABEL, AES_ID, false);
    let mut iv = [1u8; 12];
    s.encrypt(&client::gcm(&mut iv), aes, PLAINTEXT)
        .expect("encrypt");
    tell("READY", "");
    wait_parent(); // the parent removes the socket
    let gone = Instant::now();
    let mut denied = 0u64;
    loop {
        let e = client::outcome(&s.encrypt(&client::gcm(&mut iv), aes, PLAINTEXT));
        let r = client::outcome(&s.generate_random_vec(16));
        for x in [e, r] {
            assert!(
                matches!(x, None | Some(RvError::FunctionFailed)),
                "an audited call returned {x:?}"
            );
        }
        if e.is_some() || r.is_some() {
            denied += e.is_some() as u64 + r.is_some() as u64;
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(2),
            "audited calls still succeed 2 s after the syslog socket went away (on_failure = \"deny\")"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Both kinds fail now.
    assert_eq!(
        client::outcome(&s.encrypt(&client::gcm(&mut iv), aes, PLAINTEXT)),
        Some(RvError::FunctionFailed),
        "C_Encrypt while the syslog socket is gone"
    );
    assert_eq!(
        client::outcome(&s.generate_random_vec(16)),
        Some(RvError::FunctionFailed),
        "C_GenerateRandom while the syslog socket is gone"
    );
    denied += 2;
    tell("DENIED", denied);
    wait_parent(); // the parent binds the socket again
    let back = Instant::now();
    loop {
        match client::outcome(&s.encrypt(&client::gcm(&mut iv), aes, PLAINTEXT)) {
            None => break,
            Some(RvError::FunctionFailed) => {}
            Some(other) => panic!("C_Encrypt returned {other:?}"),
        }
        assert!(
            back.elapsed() < Duration::from_secs(3),
            "audited calls still fail 3 s after the syslog socket came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        s.generate_random_vec(16).expect("C_GenerateRandom").len(),
        16
    );
    s.close().expect("C_CloseSession");
    ctx.finalize().expect("C_Finalize");
}

// ---------------------------------------------------------------------------------------------
// The parent side: test beds.

/// A SoftHSMv2 installation with one token, and the environment of a client in front of it.
struct Bed {
    hsm: SoftHsm,
    label: String,
}

impl Bed {
    fn new(label: &str) -> Bed {
        let hsm = SoftHsm::new();
        hsm.init_token(label);
        Bed {
            hsm,
            label: label.to_string(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.hsm.dir().join(name)
    }

    /// The client's environment: SoftHSMv2 as the one upstream, no configuration file, the
    /// diagnostic log in `p11gate.log` (never syslog: only audit records reach the daemons).
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SOFTHSM2_CONF".into(), self.hsm.conf.display().to_string()),
            (
                "P11GATE_UPSTREAM".into(),
                common::softhsm_module().display().to_string(),
            ),
            ("P11GATE_CONFIG".into(), "/nonexistent/p11gate.toml".into()),
            (
                "P11GATE_LOG".into(),
                self.path("p11gate.log").display().to_string(),
            ),
            (
                "AUDIT_MODULE".into(),
                common::module().display().to_string(),
            ),
            ("AUDIT_TOKEN".into(), self.label.clone()),
        ]
    }

    /// Writes `p11gate.toml` and returns the environment that uses it.
    fn env_with_config(&self, toml: &str) -> Vec<(String, String)> {
        let path = self.path("p11gate.toml");
        std::fs::write(&path, toml).expect("write p11gate.toml");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        set(
            self.env(),
            &[("P11GATE_CONFIG", path.display().to_string())],
        )
    }

    /// `p11gate audit keygen` into this bed's directory.
    fn keygen(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let out = cli(&["audit", "keygen", &path.display().to_string()]);
        assert_eq!(out.status.code(), Some(0), "audit keygen: {}", show(&out));
        path
    }
}

/// `env` with `vars` set (replacing earlier values).
fn set(mut env: Vec<(String, String)>, vars: &[(&str, String)]) -> Vec<(String, String)> {
    for (k, v) in vars {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.clone()));
    }
    env
}

fn unset(mut env: Vec<(String, String)>, key: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != key);
    env
}

/// The `p11gate` CLI with `args`, an empty environment (plus PATH).
fn cli(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p11gate"));
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.args(args).output().expect("run p11gate")
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `p11gate audit verify FILE --key KEY`.
fn verify(file: &Path, key: &Path) -> Output {
    cli(&[
        "audit",
        "verify",
        &file.display().to_string(),
        "--key",
        &key.display().to_string(),
    ])
}

#[track_caller]
fn assert_verify_ok(file: &Path, key: &Path, records: usize) {
    let out = verify(file, key);
    assert_eq!(
        out.status.code(),
        Some(0),
        "verify {}: {}",
        file.display(),
        show(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        format!("{}: OK, {records} records", file.display()),
        "{}",
        show(&out)
    );
}

/// This machine's host name, as gethostname(2) gives it.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    assert_eq!(rc, 0);
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Waits until rsyslog's output holds the `event=finalize` record of `pid`; returns `pid`'s
/// records.
fn records_until_finalize(r: &Rsyslog, pid: u32) -> Vec<Record> {
    let lines = r.wait_for(ARRIVAL, &format!("the finalize record of pid {pid}"), |l| {
        of_pid(&syslog_records(l), pid)
            .iter()
            .any(|r| r.event() == "finalize")
    });
    of_pid(&syslog_records(&lines), pid)
}

/// The sorted distinct `rec`s of `records` (those that have one).
fn recs(records: &[Record]) -> BTreeSet<u64> {
    records
        .iter()
        .filter(|r| r.get("rec").is_some())
        .map(Record::rec)
        .collect()
}

/// Asserts `records` (one process's, in output order) are numbered 1, 2, 3, ... in order.
#[track_caller]
fn assert_consecutive(records: &[Record]) {
    let got: Vec<u64> = records.iter().map(Record::rec).collect();
    let want: Vec<u64> = (1..=records.len() as u64).collect();
    assert_eq!(got, want, "rec counts 1, 2, 3, ...:\n{}", dump(records));
}

fn dump(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| r.raw.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

thread_local! {
    static FINDINGS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// While one of these lives, [`check`] (and so [`assert_fields`] and [`assert_attrs`]) collects
/// mismatches instead of panicking at the first: the test fails when it is dropped, with every
/// mismatch listed, so that one run shows all that is wrong with a record sequence.
struct Findings;

impl Findings {
    fn start() -> Findings {
        FINDINGS.with(|f| *f.borrow_mut() = Some(Vec::new()));
        Findings
    }
}

impl Drop for Findings {
    fn drop(&mut self) {
        let found = FINDINGS.with(|f| f.borrow_mut().take()).unwrap_or_default();
        if found.is_empty() {
            return;
        }
        let text = found.join("\n\n");
        if std::thread::panicking() {
            eprintln!("also found:\n{text}");
        } else {
            panic!("{} mismatches:\n{text}", found.len());
        }
    }
}

/// An assertion: a panic, or a finding while [`Findings`] collects.
#[track_caller]
fn check(ok: bool, message: impl FnOnce() -> String) {
    if ok {
        return;
    }
    let m = format!("{}: {}", std::panic::Location::caller(), message());
    let collected = FINDINGS.with(|f| match f.borrow_mut().as_mut() {
        Some(v) => {
            v.push(m.clone());
            true
        }
        None => false,
    });
    if !collected {
        panic!("{m}");
    }
}

/// Asserts `fields` of `r`, exactly.
#[track_caller]
fn assert_fields(r: &Record, fields: &[(&str, String)]) {
    for (k, v) in fields {
        let got = r.get(k);
        check(got == Some(v.as_str()), || {
            format!("field {k}: got {got:?}, want {v:?} in\n{}", r.raw)
        });
    }
}

/// Asserts the `attrs` field names exactly the attribute types `want` (in any order).
#[track_caller]
fn assert_attrs(r: &Record, want: &[&str]) {
    let got: BTreeSet<&str> = r.get("attrs").unwrap_or("").split(',').collect();
    let want: BTreeSet<&str> = want.iter().copied().collect();
    check(got == want, || {
        format!("attrs: got {got:?}, want {want:?} in\n{}", r.raw)
    });
}

/// A syslog daemon stand-in the test controls: a datagram socket it binds itself, read on a
/// thread that can be paused (then nothing reads it, and it fills up).
struct Sink {
    path: PathBuf,
    shared: Arc<(Mutex<SinkState>, Condvar)>,
    reader: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct SinkState {
    messages: Vec<String>,
    pause: bool,
    paused: bool,
    stop: bool,
}

impl Sink {
    fn bind(path: &Path) -> Sink {
        let socket = UnixDatagram::bind(path).expect("bind the sink socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let shared = Arc::new((Mutex::new(SinkState::default()), Condvar::new()));
        let reader = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    {
                        let (lock, cv) = &*shared;
                        let mut st = lock.lock().unwrap();
                        if st.stop {
                            return;
                        }
                        st.paused = st.pause;
                        cv.notify_all();
                        if st.pause {
                            drop(st);
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    }
                    if let Ok(n) = socket.recv(&mut buf) {
                        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                        shared.0.lock().unwrap().messages.push(text);
                    }
                }
            })
        };
        Sink {
            path: path.to_path_buf(),
            shared,
            reader: Some(reader),
        }
    }

    /// Stops reading; returns once the reader has stopped.
    fn pause(&self) {
        let (lock, cv) = &*self.shared;
        let mut st = lock.lock().unwrap();
        st.pause = true;
        while !st.paused {
            st = cv.wait(st).unwrap();
        }
    }

    fn resume(&self) {
        self.shared.0.lock().unwrap().pause = false;
    }

    /// The audit records received so far.
    fn records(&self) -> Vec<Record> {
        let lines = self.shared.0.lock().unwrap().messages.clone();
        let lines: Vec<String> = lines
            .into_iter()
            .map(|m| m.trim_end_matches('\n').to_string())
            .collect();
        syslog_records(&lines)
    }

    #[track_caller]
    fn wait_for(&self, what: &str, done: impl Fn(&[Record]) -> bool) -> Vec<Record> {
        let start = Instant::now();
        loop {
            let recs = self.records();
            if done(&recs) {
                return recs;
            }
            assert!(
                start.elapsed() < ARRIVAL,
                "sink {}: {what} did not arrive within {ARRIVAL:?}; got:\n{}",
                self.path.display(),
                dump(&recs)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops reading, closes the socket and removes its file: the "daemon" is gone.
    fn close(mut self) -> Vec<Record> {
        self.shared.0.lock().unwrap().stop = true;
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.path);
        self.records()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shared.0.lock().unwrap().stop = true;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// a. Records arrive at a real rsyslogd, parse, and match the calls one for one.

#[test]
fn records_reach_rsyslog_one_per_operation_with_exact_fields() {
    let rsyslog = Rsyslog::start();
    let bed = Bed::new("audit-flow");
    let softhsm = common::softhsm_module();
    let env = bed.env_with_config(&format!(
        r#"[[upstream]]
name = "hsm"
path = "{}"
deny = ["CKM_AES_CBC_PAD"]

[audit]
syslog = true
syslog_socket = "{}"
"#,
        softhsm.display(),
        rsyslog.socket().display()
    ));
    let env = unset(env, "P11GATE_UPSTREAM");
    let mut c = Client::start("flow", &env);
    let pid = c.pid();
    let slot = c.expect("SLOT");
    let session = c.expect("SESSION");
    let aes = c.expect("AES");
    let hmac = c.expect("HMAC");
    let session2 = c.expect("SESSION2");
    c.finish();

    let all = records_until_finalize(&rsyslog, pid);
    assert_consecutive(&all);
    let _findings = Findings::start();

    // Common fields of every record.
    let host = hostname();
    let mut last_time = String::new();
    for r in &all {
        assert_fields(
            r,
            &[
                ("host", host.clone()),
                ("pid", pid.to_string()),
                ("app", "default".to_string()),
            ],
        );
        assert_time(r);
        assert!(
            r.req("time") >= last_time.as_str(),
            "time goes forward: {}",
            r.raw
        );
        last_time = r.req("time").to_string();
        let h = r.header.as_ref().unwrap();
        check(h.procid == pid.to_string(), || {
            format!("PROCID is the pid: {}", r.raw)
        });
        check(h.hostname == host, || {
            format!("HOSTNAME is the host: {}", r.raw)
        });
        check(h.structured_data == "-", || format!("no SD: {}", r.raw));
        let expected_pri = match r.get("rv") {
            Some("CKR_OK") | None => PRI_INFO,
            Some(_) if r.get("refused").is_some() => PRI_WARNING,
            Some(_) => PRI_NOTICE,
        };
        check(r.pri == Some(expected_pri), || {
            format!("priority {:?}, want {expected_pri}: {}", r.pri, r.raw)
        });
    }

    // Before the first call: the upstream's load and the initialisation; last: finalisation.
    let first_call = all
        .iter()
        .position(|r| r.event() == "call")
        .expect("call records");
    let before: Vec<String> = all[..first_call].iter().map(Record::tag).collect();
    let before_set: BTreeSet<&str> = before.iter().map(String::as_str).collect();
    assert_eq!(
        (before.len(), before_set),
        (2, BTreeSet::from(["event=init", "event=load"])),
        "records before the first call:\n{}",
        dump(&all)
    );
    let load = all[..first_call]
        .iter()
        .find(|r| r.event() == "load")
        .unwrap();
    assert_fields(
        load,
        &[
            ("upstream", "hsm".to_string()),
            ("path", softhsm.display().to_string()),
        ],
    );
    let init = all[..first_call]
        .iter()
        .find(|r| r.event() == "init")
        .unwrap();
    check(!init.get("msg").unwrap_or("").is_empty(), || {
        format!("init names the configuration in msg: {}", init.raw)
    });
    assert_eq!(
        all.last().unwrap().tag(),
        "event=finalize",
        "{}",
        dump(&all)
    );

    // The operation its session's closing ended.
    let ended: Vec<&Record> = all.iter().filter(|r| r.get("ended").is_some()).collect();
    assert_eq!(ended.len(), 1, "one record with ended=:\n{}", dump(&all));
    assert_fields(
        ended[0],
        &[
            ("event", "call".into()),
            ("rv", "CKR_OK".into()),
            ("ended", "session_closed".into()),
            ("session", session2.clone()),
            ("mech", "CKM_AES_GCM".into()),
            ("key", aes.clone()),
            ("key_label", AES_LABEL.into()),
            ("key_id", hex(AES_ID)),
            ("key_uri", key_uri("audit-flow", AES_LABEL, AES_ID)),
        ],
    );

    // The call records, in order, one per operation.
    let calls: Vec<&Record> = all[first_call..all.len() - 1]
        .iter()
        .filter(|r| r.get("ended").is_none())
        .collect();
    let tags: Vec<String> = calls.iter().map(|r| r.tag()).collect();
    assert_eq!(
        tags,
        [
            "C_OpenSession",
            "C_Login",
            "C_Login",
            "C_GenerateKey",
            "C_Encrypt",
            "C_Decrypt",
            "C_EncryptInit",
            "C_GenerateKey",
            "C_Sign",
            "C_SignFinal",
            "C_FindObjectsInit",
            "C_GetAttributeValue",
            "C_GenerateRandom",
            "C_DestroyObject",
            "C_OpenSession",
            "C_CloseSession",
            "C_Logout",
            "C_CloseSession",
        ],
        "the call records in order:\n{}",
        dump(&all)
    );
    // The ended operation is written when session 2 closes: right before or after its record.
    let ended_at = all.iter().position(|r| r.get("ended").is_some()).unwrap();
    let close2_at = all
        .iter()
        .position(|r| r.is_call("C_CloseSession") && r.get("session") == Some(session2.as_str()))
        .expect("C_CloseSession of session 2");
    assert!(
        ended_at + 1 == close2_at || close2_at + 1 == ended_at,
        "the session_closed record sits next to its C_CloseSession:\n{}",
        dump(&all)
    );

    for r in &calls {
        let s = if r.is_call("C_OpenSession") && r.rec() > calls[0].rec()
            || r.is_call("C_CloseSession") && r.get("session") == Some(session2.as_str())
        {
            session2.clone()
        } else {
            session.clone()
        };
        assert_fields(
            r,
            &[
                ("slot", slot.clone()),
                ("upstream", "hsm".into()),
                ("token", "audit-flow".into()),
                ("session", s),
            ],
        );
        check(
            r.get("us").is_some_and(|v| v.parse::<u64>().is_ok()),
            || format!("us: {}", r.raw),
        );
    }
    let ok = || ("rv", "CKR_OK".to_string());
    let aes_key = || {
        vec![
            ("key", aes.clone()),
            ("key_label", AES_LABEL.to_string()),
            ("key_id", hex(AES_ID)),
            ("key_uri", key_uri("audit-flow", AES_LABEL, AES_ID)),
        ]
    };
    let hmac_key = || {
        vec![
            ("key", hmac.clone()),
            ("key_label", HMAC_LABEL.to_string()),
            ("key_id", hex(HMAC_ID)),
            ("key_uri", key_uri("audit-flow", HMAC_LABEL, HMAC_ID)),
        ]
    };
    let with = |mut a: Vec<(&'static str, String)>, b: &[(&'static str, String)]| {
        a.extend_from_slice(b);
        a
    };

    // C_OpenSession
    assert_fields(calls[0], &[ok()]);
    check(
        matches!(calls[0].get("rw"), Some("true" | "1" | "yes")),
        || format!("rw of a read-write session: {}", calls[0].raw),
    );
    // C_Login, wrong PIN, then right
    assert_fields(
        calls[1],
        &[
            ("rv", "CKR_PIN_INCORRECT".into()),
            ("user", "CKU_USER".into()),
        ],
    );
    assert_fields(calls[2], &[ok(), ("user", "CKU_USER".into())]);
    // C_GenerateKey (AES): the object made
    assert_fields(
        calls[3],
        &[
            ok(),
            ("mech", "CKM_AES_KEY_GEN".into()),
            ("object", aes.clone()),
            ("object_label", AES_LABEL.into()),
            ("object_id", hex(AES_ID)),
            ("object_uri", key_uri("audit-flow", AES_LABEL, AES_ID)),
        ],
    );
    assert_attrs(calls[3], client::AES_TEMPLATE_ATTRS);
    // C_Encrypt: 32 in, 48 out (tag included), one call; the length query wrote nothing
    assert_fields(
        calls[4],
        &with(
            aes_key(),
            &[
                ok(),
                ("mech", "CKM_AES_GCM".into()),
                ("in", "32".into()),
                ("out", "48".into()),
                ("parts", "1".into()),
            ],
        ),
    );
    // C_Decrypt
    assert_fields(
        calls[5],
        &with(
            aes_key(),
            &[
                ok(),
                ("mech", "CKM_AES_GCM".into()),
                ("in", "48".into()),
                ("out", "32".into()),
                ("parts", "1".into()),
            ],
        ),
    );
    // C_EncryptInit refused by the deny list: a record of its own, naming the rule
    assert_fields(
        calls[6],
        &with(
            aes_key(),
            &[
                ("rv", "CKR_MECHANISM_INVALID".into()),
                ("mech", "CKM_AES_CBC_PAD".into()),
            ],
        ),
    );
    check(!calls[6].get("refused").unwrap_or("").is_empty(), || {
        format!("refused names the rule: {}", calls[6].raw)
    });
    // C_GenerateKey (generic secret)
    assert_fields(
        calls[7],
        &[
            ok(),
            ("mech", "CKM_GENERIC_SECRET_KEY_GEN".into()),
            ("object", hmac.clone()),
            ("object_label", HMAC_LABEL.into()),
            ("object_id", hex(HMAC_ID)),
            ("object_uri", key_uri("audit-flow", HMAC_LABEL, HMAC_ID)),
        ],
    );
    assert_attrs(calls[7], client::HMAC_TEMPLATE_ATTRS);
    // C_Sign, single part
    assert_fields(
        calls[8],
        &with(
            hmac_key(),
            &[
                ok(),
                ("mech", "CKM_SHA256_HMAC".into()),
                ("in", "45".into()),
                ("out", "32".into()),
                ("parts", "1".into()),
            ],
        ),
    );
    // C_SignFinal: two updates (10 + 20 bytes) and the final call
    assert_fields(
        calls[9],
        &with(
            hmac_key(),
            &[
                ok(),
                ("mech", "CKM_SHA256_HMAC".into()),
                ("in", "30".into()),
                ("out", "32".into()),
                ("parts", "3".into()),
            ],
        ),
    );
    // C_FindObjectsInit by label
    assert_fields(calls[10], &[ok()]);
    assert_attrs(calls[10], &["CKA_LABEL"]);
    // C_GetAttributeValue of the AES key: the object read
    assert_fields(
        calls[11],
        &[
            ok(),
            ("object", aes.clone()),
            ("object_label", AES_LABEL.into()),
            ("object_id", hex(AES_ID)),
            ("object_uri", key_uri("audit-flow", AES_LABEL, AES_ID)),
        ],
    );
    assert_attrs(calls[11], &["CKA_VALUE_LEN"]);
    // C_GenerateRandom(32)
    assert_fields(calls[12], &[ok(), ("out", "32".into())]);
    // C_DestroyObject of the HMAC key
    assert_fields(
        calls[13],
        &[
            ok(),
            ("object", hmac.clone()),
            ("object_label", HMAC_LABEL.into()),
            ("object_id", hex(HMAC_ID)),
            ("object_uri", key_uri("audit-flow", HMAC_LABEL, HMAC_ID)),
        ],
    );
    // C_OpenSession (2), C_CloseSession (2), C_Logout, C_CloseSession
    for r in &calls[14..] {
        assert_fields(r, &[ok()]);
    }
    // Calls that use no key or mechanism carry none.
    for i in [0, 1, 2, 10, 12, 14, 15, 16, 17] {
        for f in ["mech", "key", "key_label", "key_id", "key_uri"] {
            check(calls[i].get(f).is_none(), || {
                format!("{f} in {}", calls[i].raw)
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// b. rsyslogd stopped and killed while a client encrypts: nothing is lost.

#[test]
fn rsyslog_stopped_and_killed_mid_run_loses_no_record() {
    let mut rsyslog = Rsyslog::start();
    let bed = Bed::new("audit-restart");
    let env = set(
        bed.env(),
        &[(
            "P11GATE_AUDIT",
            format!("syslog:{}", rsyslog.socket().display()),
        )],
    );
    let mut c = Client::start("encrypt_loop", &env);
    let pid = c.pid();
    c.expect("READY");
    std::thread::sleep(Duration::from_millis(300));
    rsyslog.stop();
    std::thread::sleep(Duration::from_millis(300));
    rsyslog.restart();
    // p11gate retries a failed sink every 100 ms to 1 s: let it find the daemon back.
    std::thread::sleep(Duration::from_millis(1200));
    rsyslog.kill_after_stop(Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(300));
    rsyslog.restart();
    std::thread::sleep(Duration::from_millis(1200));
    c.proceed();
    let count: usize = c.expect("COUNT").parse().unwrap();
    c.finish();
    assert!(count > 1000, "the client kept encrypting ({count} calls)");

    let all = records_until_finalize(&rsyslog, pid);
    let got = recs(&all);
    let last = all.iter().find(|r| r.event() == "finalize").unwrap().rec();
    let missing: Vec<u64> = (1..=last).filter(|n| !got.contains(n)).collect();
    assert!(
        missing.is_empty() && got.iter().all(|&n| n <= last),
        "{} of {last} records missing (first ones: {:?})",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    eprintln!(
        "{count} encrypts; {last} records, {} lines ({} duplicates); outages: {:?}",
        all.len(),
        all.len() - got.len(),
        all.iter()
            .filter(|r| r.event() == "outage")
            .map(|r| r.raw.as_str())
            .collect::<Vec<_>>()
    );
    let encrypts: BTreeSet<u64> = all
        .iter()
        .filter(|r| r.is_call("C_Encrypt"))
        .map(Record::rec)
        .collect();
    assert_eq!(encrypts.len(), count, "one C_Encrypt record per call");
    for r in all.iter().filter(|r| r.is_call("C_Encrypt")) {
        assert_fields(
            r,
            &[
                ("rv", "CKR_OK".into()),
                ("in", "32".into()),
                ("out", "48".into()),
                ("key_label", AES_LABEL.into()),
            ],
        );
    }
    // One outage record per time the daemon was away, written once it was back.
    let outages: BTreeMap<u64, &Record> = all
        .iter()
        .filter(|r| r.event() == "outage")
        .map(|r| (r.rec(), r))
        .collect();
    assert!(
        outages.len() >= 2,
        "an event=outage record after each restart, got {}:\n{}",
        outages.len(),
        dump(&outages.values().map(|r| (*r).clone()).collect::<Vec<_>>())
    );
    for r in outages.values() {
        assert!(r.req("sink").contains("syslog"), "{}", r.raw);
        assert!(!r.req("msg").is_empty(), "{}", r.raw);
        r.num("delayed");
        r.num("denied");
        assert_eq!(r.pri, Some(PRI_WARNING), "{}", r.raw);
    }
}

// ---------------------------------------------------------------------------------------------
// c. The JSON-lines file: an HMAC chain that verifies, shared by two processes.

#[test]
fn keygen_makes_a_private_key_and_never_overwrites() {
    let bed = Bed::new("audit-keygen");
    let key = bed.keygen("audit.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode");
    let text = std::fs::read_to_string(&key).unwrap();
    let t = text.trim_end_matches('\n');
    assert!(
        t.len() == 64 && t.bytes().all(|c| c.is_ascii_hexdigit()),
        "32 bytes in hex: {text:?}"
    );
    let out = cli(&["audit", "keygen", &key.display().to_string()]);
    // 3: a file that must be new exists (an input/output error, see `p11gate --help`).
    assert_eq!(
        out.status.code(),
        Some(3),
        "keygen over an existing file: {}",
        show(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        text,
        "the key is unchanged"
    );
    let other = bed.keygen("other.key");
    assert_ne!(
        std::fs::read_to_string(other).unwrap(),
        text,
        "keys are random"
    );
}

#[test]
fn file_records_form_a_chain_that_verifies() {
    let bed = Bed::new("audit-file");
    let key = bed.keygen("audit.key");
    let file = bed.path("audit.jsonl");
    let env = set(
        bed.env(),
        &[
            ("P11GATE_AUDIT", format!("file:{}", file.display())),
            ("P11GATE_AUDIT_KEY", key.display().to_string()),
            ("AUDIT_CALLS", "5".into()),
            ("AUDIT_PACE_US", "0".into()),
        ],
    );
    let (pid, _) = child::run("random_calls", &env);
    let text = std::fs::read_to_string(&file).expect("audit file");
    check_chain(&text, &read_key(&key));
    let all = file_records(&file);
    assert_eq!(all.len(), text.lines().count());
    assert_verify_ok(&file, &key, all.len());

    let first = &all[0];
    assert_fields(
        first,
        &[
            ("seq", "0".into()),
            ("event", "file_start".into()),
            ("key_id", key_fingerprint(&read_key(&key))),
        ],
    );
    assert_eq!(
        first.get("prev_chain"),
        None,
        "a new file has no prev_chain"
    );
    let counts = tally(&all);
    assert_eq!(
        counts,
        BTreeMap::from([
            ("event=file_start".to_string(), 1),
            ("event=load".to_string(), 1),
            ("event=init".to_string(), 1),
            ("C_OpenSession".to_string(), 1),
            ("C_GenerateRandom".to_string(), 5),
            ("C_CloseSession".to_string(), 1),
            ("event=finalize".to_string(), 1),
        ]),
        "{}",
        dump(&all)
    );
    assert_eq!(all.last().unwrap().tag(), "event=finalize");
    for r in all.iter().filter(|r| r.is_call("C_GenerateRandom")) {
        assert_fields(r, &[("rv", "CKR_OK".into()), ("out", "16".into())]);
    }
    // "Every record (but a file's own file_start) has event, time, host, pid, rec and app";
    // file_start has event, time, host and pid, and neither rec nor app (it is no call's).
    let _findings = Findings::start();
    let host = hostname();
    for (i, line) in text.lines().enumerate() {
        let (r, map) = json_record(line);
        assert_eq!(r.num("seq"), i as u64);
        let start = i == 0;
        let numbers: &[&str] = if start {
            &["seq", "pid"]
        } else {
            &["seq", "pid", "rec"]
        };
        for n in numbers {
            check(map.get(*n).is_some_and(|v| v.is_u64()), || {
                format!("{n} is a JSON number: {line}")
            });
        }
        if start {
            check(!map.contains_key("rec") && !map.contains_key("app"), || {
                format!("file_start has no rec or app: {line}")
            });
            assert_fields(&r, &[("host", host.clone()), ("pid", pid.to_string())]);
        } else {
            assert_fields(
                &r,
                &[
                    ("host", host.clone()),
                    ("pid", pid.to_string()),
                    ("app", "default".into()),
                ],
            );
        }
        assert_time(&r);
    }
    // The process's records count from 1, in file order.
    let got: Vec<u64> = all
        .iter()
        .filter_map(|r| r.get("rec").map(|_| r.rec()))
        .collect();
    check(got == (1..=got.len() as u64).collect::<Vec<_>>(), || {
        format!("recs {got:?} in\n{}", dump(&all))
    });
}

#[test]
fn two_processes_appending_at_once_make_one_chain() {
    let bed = Bed::new("audit-shared");
    let key = bed.keygen("audit.key");
    let file = bed.path("audit.jsonl");
    let env = set(
        bed.env(),
        &[
            ("P11GATE_AUDIT", format!("file:{}", file.display())),
            ("P11GATE_AUDIT_KEY", key.display().to_string()),
            ("AUDIT_CALLS", "300".into()),
            ("AUDIT_PACE_US", "1000".into()),
            ("AUDIT_BARRIER", "1".into()),
        ],
    );
    let mut a = Client::start("random_calls", &env);
    let mut b = Client::start("random_calls", &env);
    let pids = [a.pid(), b.pid()];
    a.expect("READY");
    b.expect("READY");
    a.proceed();
    b.proceed();
    a.finish();
    b.finish();

    let text = std::fs::read_to_string(&file).expect("audit file");
    check_chain(&text, &read_key(&key));
    let all = file_records(&file);
    assert_verify_ok(&file, &key, all.len());
    assert_eq!(all[0].event(), "file_start");
    assert_eq!(
        all.iter().filter(|r| r.event() == "file_start").count(),
        1,
        "one file_start: the second process continues the file's chain"
    );
    for pid in pids {
        let mine = of_pid(&all, pid);
        assert_eq!(
            mine.iter()
                .filter(|r| r.is_call("C_GenerateRandom"))
                .count(),
            300,
            "pid {pid}"
        );
        assert_eq!(mine.iter().filter(|r| r.event() == "finalize").count(), 1);
        let got = recs(&mine);
        assert_eq!(
            got,
            (1..=got.len() as u64).collect::<BTreeSet<_>>(),
            "recs of pid {pid}"
        );
    }
    // Both really wrote at once: their records interleave.
    let switches = all
        .windows(2)
        .filter(|w| w[0].get("pid") != w[1].get("pid"))
        .count();
    assert!(
        switches >= 3,
        "the two processes' records interleave ({switches} switches)"
    );
}

// ---------------------------------------------------------------------------------------------
// d. on_failure: "deny" fails audited calls while the sink fails, "continue" keeps working.

#[test]
fn deny_fails_audited_calls_when_the_audit_file_is_full() {
    let bed = Bed::new("audit-deny-full");
    let key = bed.keygen("audit.key");
    let env = bed.env_with_config(&format!(
        "[audit]\nsyslog = false\nfile = \"/dev/full\"\nkey_file = \"{}\"\non_failure = \"deny\"\n",
        key.display()
    ));
    let mut c = Client::start("deny_full", &env);
    let after: u64 = c.expect("DENIED_AFTER_MS").parse().unwrap();
    let session = c.expect("SESSION_BEFORE_DENY");
    eprintln!("first denial {after} ms after C_Initialize; a session was open before: {session}");
    assert!(after <= 2000, "first denial {after} ms after C_Initialize");
    c.finish();
}

#[test]
fn continue_keeps_calls_working_when_the_audit_file_is_full() {
    let bed = Bed::new("audit-continue-full");
    let key = bed.keygen("audit.key");
    // on_failure is not set: "continue" is the default.
    let env = bed.env_with_config(&format!(
        "[audit]\nsyslog = false\nfile = \"/dev/full\"\nkey_file = \"{}\"\n",
        key.display()
    ));
    let mut c = Client::start("continue_full", &env);
    let calls: u64 = c.expect("CALLS").parse().unwrap();
    assert!(calls >= 100, "{calls} calls in 2.5 s");
    c.finish();
}

#[test]
fn deny_until_the_audit_directory_exists_then_records_and_outage() {
    let bed = Bed::new("audit-deny-dir");
    let key = bed.keygen("audit.key");
    let dir = bed.path("later");
    let file = dir.join("audit.jsonl");
    let env = bed.env_with_config(&format!(
        "[audit]\nsyslog = false\nfile = \"{}\"\nkey_file = \"{}\"\non_failure = \"deny\"\n",
        file.display(),
        key.display()
    ));
    let mut c = Client::start("deny_recover", &env);
    let pid = c.pid();
    c.expect("DENIED");
    std::fs::create_dir(&dir).unwrap();
    c.proceed();
    let recovered: u64 = c.expect("RECOVERED_MS").parse().unwrap();
    let denied = c.expect("COUNTS");
    c.finish();
    assert!(
        recovered <= 3000,
        "calls work again {recovered} ms after the directory appeared"
    );

    let text = std::fs::read_to_string(&file).expect("audit file");
    check_chain(&text, &read_key(&key));
    let all = file_records(&file);
    assert_verify_ok(&file, &key, all.len());
    assert_eq!(all[0].event(), "file_start", "{}", dump(&all));
    let mine = of_pid(&all, pid);
    let pos = |pred: &dyn Fn(&Record) -> bool| mine.iter().position(pred);
    let init = pos(&|r| r.event() == "init").expect("the init record, queued during the outage");
    let outages: Vec<&Record> = mine.iter().filter(|r| r.event() == "outage").collect();
    assert_eq!(outages.len(), 1, "{}", dump(&all));
    let outage = pos(&|r| r.event() == "outage").unwrap();
    assert!(
        init < outage,
        "queued records come before the outage record:\n{}",
        dump(&all)
    );
    assert_fields(outages[0], &[("denied", denied.clone())]);
    assert!(
        outages[0].req("sink").contains("file"),
        "{}",
        outages[0].raw
    );
    assert!(!outages[0].req("msg").is_empty(), "{}", outages[0].raw);
    outages[0].num("delayed");
    let since = Record {
        fields: vec![("time".into(), outages[0].req("since").to_string())],
        pri: None,
        header: None,
        raw: outages[0].raw.clone(),
    };
    assert_time(&since);
    // The calls made after recovery, in order, then the finalisation.
    let tags: Vec<String> = mine
        .iter()
        .filter(|r| r.get("rv") == Some("CKR_OK") || r.event() == "finalize")
        .map(Record::tag)
        .collect();
    let tail = [
        "C_Login",
        "C_GenerateRandom",
        "C_GenerateRandom",
        "C_GenerateRandom",
        "C_CloseSession",
        "event=finalize",
    ];
    assert!(
        tags.ends_with(&tail.map(String::from)),
        "records after the recovery: {tags:?}"
    );
    assert!(tags.contains(&"C_OpenSession".to_string()), "{tags:?}");
}

#[test]
fn deny_fails_encrypt_while_the_syslog_socket_is_gone() {
    let bed = Bed::new("audit-deny-syslog");
    let path = bed.path("sink.sock");
    let sink = Sink::bind(&path);
    let env = bed.env_with_config(&format!(
        "[audit]\nsyslog = true\nsyslog_socket = \"{}\"\non_failure = \"deny\"\n",
        path.display()
    ));
    let mut c = Client::start("deny_syslog", &env);
    let pid = c.pid();
    c.expect("READY");
    let before = sink.close();
    c.proceed();
    let denied = c.expect("DENIED");
    let sink = Sink::bind(&path);
    c.proceed();
    c.finish();
    let after = sink.wait_for("the finalize record", |r| {
        of_pid(r, pid).iter().any(|r| r.event() == "finalize")
    });
    let mut all = of_pid(&before, pid);
    all.extend(of_pid(&after, pid));
    let got = recs(&all);
    let last = *got.iter().max().unwrap();
    assert_eq!(
        got,
        (1..=last).collect::<BTreeSet<_>>(),
        "every record reaches one socket or the other:\n{}",
        dump(&all)
    );
    let outages: Vec<&Record> = all.iter().filter(|r| r.event() == "outage").collect();
    assert_eq!(outages.len(), 1, "{}", dump(&all));
    assert!(
        outages[0].req("sink").contains("syslog"),
        "{}",
        outages[0].raw
    );
    assert!(
        outages[0].num("denied") >= denied.parse::<u64>().unwrap(),
        "denied counts the {denied} calls the client saw denied: {}",
        outages[0].raw
    );
}

// ---------------------------------------------------------------------------------------------
// e. on_overflow with a reader that stops reading: "drop" drops and counts, "wait" waits.

fn overflow_env(bed: &Bed, socket: &Path, mode: &str) -> Vec<(String, String)> {
    let env = bed.env_with_config(&format!(
        "[audit]\nsyslog = true\nsyslog_socket = \"{}\"\nqueue = 64\non_overflow = \"{mode}\"\n",
        socket.display()
    ));
    set(env, &[("AUDIT_CALLS", "3000".into())])
}

const BURST: usize = 3000;

#[test]
fn overflow_drop_keeps_calls_fast_and_counts_every_drop() {
    let bed = Bed::new("audit-drop");
    let path = bed.path("sink.sock");
    let sink = Sink::bind(&path);
    let mut c = Client::start("burst", &overflow_env(&bed, &path, "drop"));
    let pid = c.pid();
    c.expect("READY");
    sink.wait_for("C_OpenSession", |r| {
        of_pid(r, pid).iter().any(|r| r.is_call("C_OpenSession"))
    });
    sink.pause();
    c.proceed();
    let done = c.expect_within("DONE", Duration::from_secs(30));
    let v: Vec<u64> = done.split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!(v[0], BURST as u64);
    assert_eq!(
        v[2], 0,
        "calls stalled behind a full queue with on_overflow = \"drop\""
    );
    assert!(v[1] < 250, "slowest call took {} ms", v[1]);
    sink.resume();
    sink.wait_for("an event=dropped record", |r| {
        of_pid(r, pid).iter().any(|r| r.event() == "dropped")
    });
    c.proceed();
    c.finish();
    let all = of_pid(
        &sink.wait_for("the finalize record", |r| {
            of_pid(r, pid).iter().any(|r| r.event() == "finalize")
        }),
        pid,
    );
    let randoms = recs(
        &all.iter()
            .filter(|r| r.is_call("C_GenerateRandom"))
            .cloned()
            .collect::<Vec<_>>(),
    )
    .len() as u64;
    let dropped: u64 = all
        .iter()
        .filter(|r| r.event() == "dropped")
        .map(|r| r.num("count"))
        .sum();
    eprintln!("{randoms} C_GenerateRandom records, {dropped} dropped");
    assert!(dropped > 0, "records were dropped: {}", dump(&all));
    assert_eq!(
        randoms + dropped,
        BURST as u64,
        "{randoms} C_GenerateRandom records + {dropped} dropped = the {BURST} calls"
    );
    for r in all.iter().filter(|r| r.event() == "dropped") {
        assert_eq!(r.pri, Some(PRI_WARNING), "{}", r.raw);
    }
}

#[test]
fn overflow_wait_blocks_calls_until_the_reader_reads() {
    let bed = Bed::new("audit-wait");
    let path = bed.path("sink.sock");
    let sink = Sink::bind(&path);
    let mut c = Client::start("burst", &overflow_env(&bed, &path, "wait"));
    let pid = c.pid();
    c.expect("READY");
    sink.wait_for("C_OpenSession", |r| {
        of_pid(r, pid).iter().any(|r| r.is_call("C_OpenSession"))
    });
    sink.pause();
    c.proceed();
    let (key, value) = c.expect_one_of(&["BLOCKED", "DONE"], Duration::from_secs(20));
    assert_eq!(
        key, "BLOCKED",
        "with queue = 64 and on_overflow = \"wait\", calls must wait while nothing reads the \
         socket; instead the client's {BURST} calls all completed (DONE calls max_ms blocked: \
         {value})"
    );
    let blocked: usize = value.parse().unwrap();
    assert!(
        (64..=256).contains(&blocked),
        "calls block once the queue of 64 (and the socket's few datagrams) is full: blocked after {blocked}"
    );
    sink.resume();
    let done = c.expect_within("DONE", Duration::from_secs(20));
    let v: Vec<u64> = done.split(' ').map(|x| x.parse().unwrap()).collect();
    assert_eq!((v[0], v[2]), (BURST as u64, 1), "{done}");
    c.proceed();
    c.finish();
    let all = of_pid(
        &sink.wait_for("the finalize record", |r| {
            of_pid(r, pid).iter().any(|r| r.event() == "finalize")
        }),
        pid,
    );
    assert_eq!(
        all.iter().filter(|r| r.event() == "dropped").count(),
        0,
        "nothing dropped"
    );
    assert_eq!(
        all.iter().filter(|r| r.is_call("C_GenerateRandom")).count(),
        BURST,
        "every call has its record"
    );
    let got = recs(&all);
    assert_eq!(got, (1..=all.len() as u64).collect::<BTreeSet<_>>());
}

// ---------------------------------------------------------------------------------------------
// f. `p11gate audit verify` finds each kind of tampering, at the right line.

#[test]
fn verify_reports_deleted_inserted_reordered_edited_and_wrong_key() {
    let bed = Bed::new("audit-tamper");
    let key = bed.keygen("audit.key");
    let file = bed.path("audit.jsonl");
    let env = set(
        bed.env(),
        &[
            ("P11GATE_AUDIT", format!("file:{}", file.display())),
            ("P11GATE_AUDIT_KEY", key.display().to_string()),
            ("AUDIT_CALLS", "8".into()),
            ("AUDIT_PACE_US", "0".into()),
        ],
    );
    child::run("random_calls", &env);
    let text = std::fs::read_to_string(&file).expect("audit file");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 12, "{text}");
    assert_verify_ok(&file, &key, lines.len());

    let write = |name: &str, lines: &[&str]| -> PathBuf {
        let p = bed.path(name);
        std::fs::write(
            &p,
            lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )
        .unwrap();
        p
    };
    let check = |name: &str, tampered: Vec<&str>, key: &Path, want: (usize, &str)| {
        let p = write(name, &tampered);
        let out = verify(&p, key);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", show(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(verify_problem(&p, &stdout), want, "{name}: {}", show(&out));
    };

    // Delete line 6 (seq 5): found at line 6, where seq 6 stands.
    let mut t = lines.clone();
    t.remove(5);
    check("deleted.jsonl", t, &key, (6, "deleted"));
    // Delete the first line (file_start).
    let mut t = lines.clone();
    t.remove(0);
    check("deleted-first.jsonl", t, &key, (1, "deleted"));
    // Line 6 duplicated: the copy, line 7, is inserted.
    let mut t = lines.clone();
    t.insert(6, lines[5]);
    check("inserted.jsonl", t, &key, (7, "inserted"));
    // Lines 6 and 7 swapped.
    let mut t = lines.clone();
    t.swap(5, 6);
    check("reordered.jsonl", t, &key, (6, "reordered"));
    // Line 7's rv changed, its chain value kept.
    let mut t = lines.clone();
    let edited = lines[6].replacen("\"rv\":\"CKR_OK\"", "\"rv\":\"CKR_GENERAL_ERROR\"", 1);
    assert_ne!(
        edited, lines[6],
        "line 7 is a call record with rv=CKR_OK: {}",
        lines[6]
    );
    t[6] = &edited;
    check("edited.jsonl", t, &key, (7, "edited"));
    // The untampered file with another key: the first record does not verify.
    let other = bed.keygen("other.key");
    check("wrong-key.jsonl", lines.clone(), &other, (1, "edited"));
    // The original is still intact.
    assert_verify_ok(&file, &key, lines.len());
}

// ---------------------------------------------------------------------------------------------
// g. No secret in any output.

/// The documented fields (README "Audit trail"); a record has no other.
const FIELDS: &[&str] = &[
    "seq",
    "event",
    "time",
    "host",
    "pid",
    "rec",
    "app",
    "fn",
    "rv",
    "us",
    "slot",
    "upstream",
    "token",
    "session",
    "user",
    "mech",
    "key",
    "key_label",
    "key_id",
    "key_class",
    "key_uri",
    "object",
    "object_label",
    "object_id",
    "object_class",
    "object_uri",
    "public",
    "in",
    "out",
    "parts",
    "attrs",
    "rw",
    "refused",
    "ended",
    "msg",
    "path",
    "count",
    "sink",
    "since",
    "delayed",
    "denied",
    "key_id",
    "prev_chain",
    "chain",
];

#[track_caller]
fn assert_free_of(what: &str, text: &str, secrets: &[&[u8]], hex_values: &[String]) {
    assert!(
        !text.is_empty(),
        "{what} is empty: the search would mean nothing"
    );
    for s in secrets {
        let raw = String::from_utf8_lossy(s).into_owned();
        for needle in [raw, hex(s), hex(s).to_uppercase()] {
            assert!(
                !text.contains(&needle),
                "{what} contains the secret {needle:?}"
            );
        }
    }
    for h in hex_values {
        for needle in [h.clone(), h.to_uppercase()] {
            assert!(!text.contains(&needle), "{what} contains data {needle:?}");
        }
    }
}

#[test]
fn no_pin_key_value_or_data_in_any_output() {
    let rsyslog = Rsyslog::start();
    let bed = Bed::new("audit-secrets");
    let key = bed.keygen("audit.key");
    let file = bed.path("audit.jsonl");
    let log = bed.path("p11gate.log");
    let env = set(
        bed.env(),
        &[
            (
                "P11GATE_AUDIT",
                format!(
                    "syslog:{},file:{}",
                    rsyslog.socket().display(),
                    file.display()
                ),
            ),
            ("P11GATE_AUDIT_KEY", key.display().to_string()),
            ("P11GATE_LOG_LEVEL", "trace".into()),
        ],
    );
    let mut c = Client::start("secrets", &env);
    let pid = c.pid();
    let aes = c.expect("AES");
    let data: Vec<String> = ["CT", "MAC", "DIGEST", "RANDOM"]
        .iter()
        .map(|k| c.expect(k))
        .collect();
    c.finish();

    let from_syslog = records_until_finalize(&rsyslog, pid);
    let from_file = file_records(&file);
    check_chain(&std::fs::read_to_string(&file).unwrap(), &read_key(&key));

    let secrets: &[&[u8]] = &[
        USER_PIN.as_bytes(),
        SO_PIN.as_bytes(),
        WRONG_PIN.as_bytes(),
        NEW_PIN.as_bytes(),
        KEY_VALUE,
        HMAC_VALUE,
        PLAINTEXT_GCM,
        PLAINTEXT_MAC,
        PLAINTEXT_DIGEST,
        SEED,
    ];
    let syslog_text = std::fs::read_to_string(rsyslog.out()).unwrap();
    assert_free_of("rsyslog's output", &syslog_text, secrets, &data);
    assert_free_of(
        "the audit file",
        &std::fs::read_to_string(&file).unwrap(),
        secrets,
        &data,
    );
    assert_free_of(
        "the trace log",
        &std::fs::read_to_string(&log).unwrap(),
        secrets,
        &data,
    );

    for (what, records) in [("syslog", &from_syslog), ("file", &of_pid(&from_file, pid))] {
        // Only documented fields.
        for r in records.iter() {
            for (k, _) in &r.fields {
                assert!(
                    FIELDS.contains(&k.as_str()),
                    "{what}: undocumented field {k} in {}",
                    r.raw
                );
            }
        }
        // The forging label is one value, intact, wherever the key is named.
        assert!(
            !records
                .iter()
                .any(|r| r.get("fn") == Some("C_Forged") || r.get("forged").is_some()),
            "{what}: a label forged a field:\n{}",
            dump(records)
        );
        let created = records
            .iter()
            .find(|r| r.is_call("C_CreateObject") && r.get("object") == Some(aes.as_str()))
            .unwrap_or_else(|| panic!("{what}: the AES key's C_CreateObject:\n{}", dump(records)));
        assert_eq!(
            created.get("object_label"),
            Some(EVIL_LABEL),
            "{what}: {}",
            created.raw
        );
        assert_attrs(
            created,
            &[
                "CKA_CLASS",
                "CKA_KEY_TYPE",
                "CKA_TOKEN",
                "CKA_PRIVATE",
                "CKA_SENSITIVE",
                "CKA_VALUE",
                "CKA_LABEL",
                "CKA_ID",
                "CKA_ENCRYPT",
                "CKA_DECRYPT",
            ],
        );
        let encrypt = records
            .iter()
            .find(|r| r.is_call("C_Encrypt"))
            .unwrap_or_else(|| panic!("{what}: C_Encrypt:\n{}", dump(records)));
        assert_eq!(
            encrypt.get("key_label"),
            Some(EVIL_LABEL),
            "{what}: {}",
            encrypt.raw
        );
        // Its URI is percent-encoded: no space, quote or control character to forge with, and
        // it names the very label.
        let uri = encrypt.req("key_uri");
        assert!(
            uri.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
            "{what}: {uri:?}"
        );
        let parsed = p11gate::uri::Pkcs11Uri::parse(uri).expect("key_uri parses");
        assert_eq!(
            parsed.get(p11gate::uri::Attr::Object),
            Some(EVIL_LABEL.as_bytes()),
            "{what}: {uri}"
        );
        // Every audited call of the scenario is there.
        for f in [
            "C_Login",
            "C_Logout",
            "C_SetPIN",
            "C_CreateObject",
            "C_Encrypt",
            "C_Decrypt",
            "C_Sign",
            "C_Verify",
            "C_Digest",
            "C_SeedRandom",
            "C_GenerateRandom",
            "C_GetAttributeValue",
            "C_DestroyObject",
        ] {
            assert!(
                records.iter().any(|r| r.is_call(f)),
                "{what}: no {f} record"
            );
        }
        let logins: Vec<(&str, &str)> = records
            .iter()
            .filter(|r| r.is_call("C_Login"))
            .map(|r| (r.req("user"), r.req("rv")))
            .collect();
        assert_eq!(
            logins,
            [
                ("CKU_SO", "CKR_OK"),
                ("CKU_USER", "CKR_PIN_INCORRECT"),
                ("CKU_USER", "CKR_OK")
            ],
            "{what}"
        );
    }
    // Each rsyslog line is one record: the label's newline did not split one.
    for line in syslog_text.lines() {
        let h = SyslogLine::parse(line).unwrap_or_else(|| panic!("not an RFC 5424 line: {line:?}"));
        assert!(
            h.app_name == "p11gate" || h.app_name == "rsyslogd",
            "{line}"
        );
    }
}
