//! What HashiCorp Vault's `seal "pkcs11"` does to a module (see VAULT.md), replayed with the
//! cryptoki crate against p11gate's built-in soft token (no upstream configured): the same flow
//! as tests/vault_seal.rs with the soft token's profile (OAEP with SHA-256, Vault's default, and
//! CKM_AES_CBC with caller padding), the restart across two processes, 16 threads, and the exact
//! answers the soft token gives.
//!
//! Tests that load the module in-process hold `common::in_process` for their whole run and
//! finalise before releasing it. Children are this test binary run again (`child_process`), with
//! `VAULT_SOFT_CHILD` naming a role.

mod common;
#[allow(dead_code)]
#[path = "vault_seal/flow.rs"]
mod flow;
#[allow(dead_code)]
#[path = "vault_seal/raw.rs"]
mod raw;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use cryptoki::error::RvError;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState};
use parking_lot::MutexGuard;
use pkcs11_sys::*;

use common::{SO_PIN, USER_PIN};
use flow::{Answer, CbcBlob, Client, Failure, GcmBlob, Generated, Keys};
use raw::Raw;

const CHILD_VAR: &str = "VAULT_SOFT_CHILD";
/// Where the `make` child writes what the `open` child needs.
const BLOBS_VAR: &str = "VAULT_SOFT_BLOBS";

/// A soft token home (P11GATE_HOME) with token 0 initialised by `p11gate token init` with the
/// PINs the flow logs in with.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new(label: &str) -> Home {
        let home = Home {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_p11gate"))
            .args(["token", "init", "--label", label])
            .env_remove("P11GATE_UPSTREAM")
            .envs(home.env())
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
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "token init: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("slot 0: token \"{label}\" initialised")),
            "{stdout}"
        );
        home
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The soft token and nothing else: no upstream, no config file, no audit.
    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("P11GATE_HOME".into(), self.path().display().to_string()),
            ("P11GATE_CONFIG".into(), "/nonexistent/p11gate.toml".into()),
            ("P11GATE_AUDIT".into(), "off".into()),
            (
                "P11GATE_LOG".into(),
                self.path().join("p11gate.log").display().to_string(),
            ),
        ]
    }
}

/// Takes the in-process lock with the home's environment; no upstream, no inherited log level.
fn enter(home: &Home) -> MutexGuard<'static, ()> {
    let guard = common::in_process(&home.env());
    std::env::remove_var("P11GATE_UPSTREAM");
    std::env::remove_var("P11GATE_LOG_LEVEL");
    guard
}

fn f(function: &str, rv: RvError) -> Failure {
    Failure {
        function: function.into(),
        rv,
    }
}

/// The Vault flow of tests/vault_seal.rs on the soft token, and every answer it gets, exactly.
#[test]
fn seal_flow_on_the_soft_token() {
    let home = Home::new("vault-soft");
    let _guard = enter(&home);
    let outcome = flow::run_flow_as(&common::module(), "vault-soft", flow::SOFT_TOKEN);
    let r = &outcome.report;

    assert_eq!(outcome.slot, 0, "token0 is slot 0");
    assert_eq!(r.wrong_pin, f("Login", RvError::PinIncorrect));
    assert_eq!(r.gcm_bad_tag, f("Decrypt", RvError::EncryptedDataInvalid));
    assert_eq!(r.gcm_wrong_key, f("Decrypt", RvError::EncryptedDataInvalid));
    assert_eq!(r.hmac_bad_mac, f("Verify", RvError::SignatureInvalid));
    assert_eq!(r.oaep_sha256_encrypt, Answer::Worked, "OAEP-SHA256 encrypt");
    assert_eq!(r.oaep_sha256_decrypt, Answer::Worked, "OAEP-SHA256 decrypt");
    assert_eq!(
        r.oaep_wrong_hash,
        Some(f("Decrypt", RvError::EncryptedDataInvalid)),
        "an OAEP-SHA256 ciphertext opened as OAEP-SHA1"
    );
    assert_eq!(
        r.cbc_unaligned,
        Some(f("Encrypt", RvError::DataLenRange)),
        "CKM_AES_CBC of data that is not whole blocks"
    );
    assert_eq!(
        r.stale_session,
        (CKR_CRYPTOKI_NOT_INITIALIZED, CKR_SESSION_HANDLE_INVALID)
    );

    // The two-call convention, call by call (RAW_PAYLOAD is 34 bytes: 50 with the GCM tag).
    let n = flow::RAW_PAYLOAD.len() as CK_ULONG;
    assert_eq!(n, 34);
    assert_eq!(
        r.raw_calls,
        vec![
            ("C_Encrypt(NULL)", CKR_OK, 50),
            ("C_Encrypt(short buf)", CKR_BUFFER_TOO_SMALL, 50),
            ("C_Encrypt(buf)", CKR_OK, 50),
            ("C_Encrypt(after)", CKR_OPERATION_NOT_INITIALIZED, 0),
            ("C_Decrypt(NULL)", CKR_OK, 34),
            ("C_Decrypt(buf)", CKR_OK, 34),
            ("C_Decrypt(after)", CKR_OPERATION_NOT_INITIALIZED, 0),
            ("C_Decrypt(bad tag, NULL)", CKR_OK, 34),
            ("C_Decrypt(bad tag, buf)", CKR_ENCRYPTED_DATA_INVALID, 0),
            (
                "C_Decrypt(bad tag, after)",
                CKR_OPERATION_NOT_INITIALIZED,
                0
            ),
            ("C_Sign(NULL)", CKR_OK, 32),
            ("C_Sign(buf)", CKR_OK, 32),
            ("C_Sign(after)", CKR_OPERATION_NOT_INITIALIZED, 0),
            ("C_GetAttributeValue(MODULUS, NULL)", CKR_OK, 256),
            (
                "C_GetAttributeValue(VALUE)",
                CKR_ATTRIBUTE_SENSITIVE,
                CK_UNAVAILABLE_INFORMATION
            ),
        ]
    );

    // Vault's candidates, in its order of preference, are all on offer.
    for m in [
        CKM_AES_CBC_PAD,
        CKM_AES_CBC,
        CKM_AES_GCM,
        CKM_RSA_PKCS_OAEP,
        CKM_RSA_PKCS,
        CKM_SHA256_HMAC,
    ] {
        assert!(r.mechanisms.contains(&m), "{m:#x} in C_GetMechanismList");
    }

    // HMAC-SHA256 takes generic secret keys only (VAULT.md: a non-generic key gives
    // CKR_KEY_TYPE_INCONSISTENT at C_SignInit, as SoftHSMv2 answers).
    assert_eq!(
        r.hmac_with_aes_key,
        Answer::Refused(f("SignInit", RvError::KeyTypeInconsistent)),
        "C_SignInit(CKM_SHA256_HMAC) with Vault's AES key"
    );
}

/// Vault's mechanisms as C_GetMechanismInfo describes them: key sizes and the flags Vault needs.
#[test]
fn mechanism_info_covers_what_vault_uses() {
    let home = Home::new("vault-mechs");
    let _guard = enter(&home);
    let client = Client::init(&common::module());
    let slot = client.slot_by_label("vault-mechs");
    let info = |m: MechanismType| {
        client
            .ctx()
            .get_mechanism_info(slot, m)
            .unwrap_or_else(|e| panic!("C_GetMechanismInfo({m}): {e}"))
    };
    for m in [
        MechanismType::AES_GCM,
        MechanismType::AES_CBC,
        MechanismType::AES_CBC_PAD,
    ] {
        let i = info(m);
        assert!(i.encrypt() && i.decrypt(), "{m}: encrypt and decrypt");
        assert!(
            i.min_key_size() <= 32 && i.max_key_size() >= 32,
            "{m}: AES-256 within [{}, {}]",
            i.min_key_size(),
            i.max_key_size()
        );
    }
    let oaep = info(MechanismType::RSA_PKCS_OAEP);
    assert!(
        oaep.encrypt() && oaep.decrypt() && oaep.wrap() && oaep.unwrap(),
        "OAEP: encrypt, decrypt, wrap, unwrap"
    );
    assert!(
        oaep.min_key_size() <= 2048 && oaep.max_key_size() >= 2048,
        "OAEP: 2048-bit keys within [{}, {}]",
        oaep.min_key_size(),
        oaep.max_key_size()
    );
    let hmac = info(MechanismType::SHA256_HMAC);
    assert!(hmac.sign() && hmac.verify(), "HMAC: sign and verify");
    assert!(info(MechanismType::AES_KEY_GEN).generate());
    assert!(info(MechanismType::GENERIC_SECRET_KEY_GEN).generate());
    assert!(info(MechanismType::RSA_PKCS_KEY_PAIR_GEN).generate_key_pair());
    client.finalize();
}

/// 16 threads share 8 sessions for 8000 AES-GCM round trips, as Vault's Go runtime does.
#[test]
fn concurrent_gcm_round_trips_on_the_soft_token() {
    let home = Home::new("vault-soft-conc");
    let _guard = enter(&home);
    let (threads, per_thread, pool) = (16, 500, 8);
    let (pairs, distinct) = flow::concurrency(
        &common::module(),
        "vault-soft-conc",
        threads,
        per_thread,
        pool,
    );
    assert_eq!(
        distinct,
        threads * per_thread,
        "every round trip produced a distinct ciphertext"
    );
    assert!(
        pairs > pool,
        "sessions moved between threads ({pairs} session/thread pairs)"
    );
}

/// Vault's keys are not extractable: no secret attribute can be read, made readable, or wrapped.
#[test]
fn non_extractable_keys_keep_their_values() {
    let home = Home::new("vault-sensitive");
    let _guard = enter(&home);
    let module = common::module();
    let client = Client::init(&module);
    let slot = client.slot_by_label("vault-sensitive");
    let s = client.ctx().open_rw_session(slot).expect("C_OpenSession");
    client.login(&s);
    let (keys, _) = flow::find_or_generate(&s);
    let raw = Raw::open(&module);
    let h = s.handle();
    let unreadable = (CKR_ATTRIBUTE_SENSITIVE, CK_UNAVAILABLE_INFORMATION);
    for (what, key, attr) in [
        ("AES CKA_VALUE", keys.aes, CKA_VALUE),
        ("HMAC CKA_VALUE", keys.hmac, CKA_VALUE),
        // Vault's RSA private template sets CKA_EXTRACTABLE=false but not CKA_SENSITIVE: being
        // unextractable is enough to hide the private parts.
        (
            "RSA CKA_PRIVATE_EXPONENT",
            keys.rsa_priv,
            CKA_PRIVATE_EXPONENT,
        ),
        ("RSA CKA_PRIME_1", keys.rsa_priv, CKA_PRIME_1),
        ("RSA CKA_PRIME_2", keys.rsa_priv, CKA_PRIME_2),
        ("RSA CKA_EXPONENT_1", keys.rsa_priv, CKA_EXPONENT_1),
        ("RSA CKA_EXPONENT_2", keys.rsa_priv, CKA_EXPONENT_2),
        ("RSA CKA_COEFFICIENT", keys.rsa_priv, CKA_COEFFICIENT),
    ] {
        assert_eq!(
            raw.get_attribute(h, key.handle(), attr, None),
            unreadable,
            "{what}: length query"
        );
        let mut buf = vec![0xA5u8; 512];
        assert_eq!(
            raw.get_attribute(h, key.handle(), attr, Some(&mut buf)),
            unreadable,
            "{what}: into a buffer"
        );
        assert!(buf.iter().all(|&b| b == 0xA5), "{what}: buffer untouched");
    }
    // The public parts stay readable on the private key too.
    let m = raw.get_attribute(h, keys.rsa_priv.handle(), CKA_MODULUS, None);
    assert_eq!(m, (CKR_OK, 256), "CKA_MODULUS of the private key");

    // CKA_EXTRACTABLE may only go to false, CKA_SENSITIVE only to true.
    for (key, attr) in [
        (keys.aes, Attribute::Extractable(true)),
        (keys.aes, Attribute::Sensitive(false)),
        (keys.hmac, Attribute::Extractable(true)),
        (keys.hmac, Attribute::Sensitive(false)),
        (keys.rsa_priv, Attribute::Extractable(true)),
    ] {
        assert_eq!(
            flow::expect_failure(
                s.update_attributes(key, std::slice::from_ref(&attr)),
                "C_SetAttributeValue"
            ),
            f("SetAttributeValue", RvError::AttributeReadOnly),
            "{attr:?} on {key}"
        );
    }
    assert_eq!(
        raw.get_attribute(h, keys.aes.handle(), CKA_VALUE, None),
        unreadable,
        "AES CKA_VALUE after the refused changes"
    );
    assert_eq!(
        s.get_attributes(
            keys.aes,
            &[AttributeType::Extractable, AttributeType::Sensitive]
        )
        .expect("C_GetAttributeValue"),
        vec![Attribute::Extractable(false), Attribute::Sensitive(true)]
    );

    // The RSA public key may wrap (Vault's template), but not an unextractable key.
    for key in [keys.hmac, keys.aes] {
        assert_eq!(
            flow::expect_failure(
                s.wrap_key(&flow::oaep_sha256(), keys.rsa_pub, key),
                "C_WrapKey of an unextractable key"
            ),
            f("WrapKey", RvError::KeyUnextractable)
        );
    }
    drop(raw);
    drop(s);
    client.finalize();
}

/// What the module computes is what independent implementations compute: OAEP-SHA256
/// ciphertexts made in software from CKA_MODULUS / CKA_PUBLIC_EXPONENT (Vault's
/// `rsa_encrypt_local`) decrypt in the token, and GCM / CBC / HMAC under an imported key equal
/// the RustCrypto crates' answers.
#[test]
fn outputs_match_independent_implementations() {
    use aes_gcm::aead::{Aead, KeyInit};
    use hmac::Mac;

    let home = Home::new("vault-kat");
    let _guard = enter(&home);
    let client = Client::init(&common::module());
    let slot = client.slot_by_label("vault-kat");
    let s = client.ctx().open_rw_session(slot).expect("C_OpenSession");
    client.login(&s);
    let (keys, _) = flow::find_or_generate(&s);

    // RSA-OAEP with SHA-256 / MGF1-SHA256 encrypted in software.
    let e = s
        .get_attributes(keys.rsa_pub, &[AttributeType::PublicExponent])
        .expect("CKA_PUBLIC_EXPONENT");
    let Attribute::PublicExponent(e) = &e[0] else {
        panic!("{e:?}")
    };
    let public = rsa::PublicKey::new(
        rsa::BoxedUint::from_be_slice_vartime(&keys.modulus),
        rsa::BoxedUint::from_be_slice_vartime(e),
    )
    .expect("RSA public key from CKA_MODULUS / CKA_PUBLIC_EXPONENT");
    let data_key = [0x5Au8; 32];
    let ct = public
        .encrypt(
            &mut getrandom_04::SysRng,
            rsa::Oaep::<sha2_011::Sha256>::new(),
            &data_key,
        )
        .expect("software OAEP-SHA256");
    assert_eq!(
        s.decrypt(&flow::oaep_sha256(), keys.rsa_priv, &ct)
            .expect("C_Decrypt(OAEP-SHA256) of a software ciphertext"),
        data_key
    );

    // An imported, readable AES-256 key and HMAC key with known values.
    let aes_value: [u8; 32] = *b"kat-aes-256-key-value-0123456789";
    let hmac_value: [u8; 32] = *b"kat-hmac-key-value-abcdefghijklm";
    let import = |key_type: KeyType, value: &[u8], label: &str| -> ObjectHandle {
        s.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::Value(value.to_vec()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Token(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Sign(true),
            Attribute::Verify(true),
        ])
        .expect("C_CreateObject")
    };
    let aes = import(KeyType::AES, &aes_value, "kat-aes");
    let hmac_key = import(KeyType::GENERIC_SECRET, &hmac_value, "kat-hmac");
    let hk = Keys {
        aes,
        hmac: hmac_key,
        ..keys.clone()
    };

    // AES-256-GCM, 12-byte IV, 128-bit tag, no AAD.
    let iv = [0x11u8; 12];
    let blob = flow::gcm_encrypt(&s, aes, iv, flow::GCM_PAYLOAD);
    let reference = aes_gcm::Aes256Gcm::new_from_slice(&aes_value)
        .unwrap()
        .encrypt(aes_gcm::Nonce::from_slice(&iv), flow::GCM_PAYLOAD)
        .unwrap();
    assert_eq!(blob.ct, reference, "AES-GCM ciphertext || tag");

    // AES-256-CBC (caller-padded) and CBC-PAD: the same bytes as CBC by hand.
    let iv16 = [0x22u8; 16];
    let cipher = aes::Aes256::new_from_slice(&aes_value).unwrap();
    let mut prev = iv16;
    let mut reference = Vec::new();
    for chunk in flow::pkcs7_pad(flow::CBC_PAYLOAD).chunks(16) {
        use aes::cipher::BlockEncrypt;
        let mut block = aes::Block::default();
        for (i, b) in block.iter_mut().enumerate() {
            *b = chunk[i] ^ prev[i];
        }
        cipher.encrypt_block(&mut block);
        prev.copy_from_slice(&block);
        reference.extend_from_slice(&block);
    }
    let cbc = flow::cbc_raw_seal(&s, &hk, iv16, flow::CBC_PAYLOAD);
    assert_eq!(cbc.ct, reference, "CKM_AES_CBC ciphertext");
    let cbc_pad = s
        .encrypt(&Mechanism::AesCbcPad(iv16), aes, flow::CBC_PAYLOAD)
        .expect("C_Encrypt(CKM_AES_CBC_PAD)");
    assert_eq!(cbc_pad, reference, "CKM_AES_CBC_PAD ciphertext");

    // HMAC-SHA256 over IV || ciphertext.
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&hmac_value).unwrap();
    mac.update(&iv16);
    mac.update(&reference);
    assert_eq!(
        cbc.mac,
        mac.finalize().into_bytes().to_vec(),
        "HMAC-SHA256 value"
    );
    assert_eq!(flow::cbc_raw_open(&s, &hk, &cbc), flow::CBC_PAYLOAD);
    drop(s);
    client.finalize();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// The `make` child: Vault's first start on a fresh token. Generates the keys, seals one blob per
/// mechanism (0x1087, 0x1082 + HMAC, 0x0009 with SHA-256) and writes keys' IDs and the blobs.
fn child_make(out_path: &Path) {
    let module = common::module();
    let client = Client::init(&module);
    let slot = client.slot_by_label("vault-restart");
    let s = client
        .ctx()
        .open_rw_session(slot)
        .expect("C_OpenSession(RW)");
    client.login(&s);
    let (keys, generated) = flow::find_or_generate(&s);
    assert_eq!(
        generated,
        Generated {
            aes: true,
            rsa: true,
            hmac: true
        },
        "a fresh token: all generated"
    );
    let iv: [u8; 12] = flow::random_array(&s);
    let gcm = flow::gcm_encrypt(&s, keys.aes, iv, flow::GCM_PAYLOAD);
    let cbc = flow::cbc_raw_seal(&s, &keys, flow::random_array(&s), flow::CBC_PAYLOAD);
    let rsa = s
        .encrypt(&flow::oaep_sha256(), keys.rsa_pub, flow::RSA_PAYLOAD)
        .expect("C_Encrypt(OAEP-SHA256)");
    let lines = [
        ("aes_id", hex(&keys.aes_id)),
        ("rsa_id", hex(&keys.rsa_id)),
        ("hmac_id", hex(&keys.hmac_id)),
        ("modulus", hex(&keys.modulus)),
        ("gcm_iv", hex(&gcm.iv)),
        ("gcm_ct", hex(&gcm.ct)),
        ("cbc_iv", hex(&cbc.iv)),
        ("cbc_ct", hex(&cbc.ct)),
        ("cbc_mac", hex(&cbc.mac)),
        ("rsa_ct", hex(&rsa)),
    ];
    let text: String = lines.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
    std::fs::write(out_path, text).expect("write blobs");
    drop(s);
    client.finalize();
    println!("made");
}

/// The `open` child: Vault after a restart. A read-only session finds the same keys by label
/// (generating nothing) and opens every blob the first process sealed.
fn child_open(in_path: &Path) {
    let text = std::fs::read_to_string(in_path).expect("read blobs");
    let v: BTreeMap<&str, Vec<u8>> = text
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').expect("key value");
            (k, unhex(v))
        })
        .collect();
    let module = common::module();
    let client = Client::init(&module);
    let slot = client.slot_by_label("vault-restart");
    let s = client
        .ctx()
        .open_ro_session(slot)
        .expect("C_OpenSession(RO)");
    client.login(&s);
    assert_eq!(
        s.get_session_info().unwrap().session_state(),
        SessionState::RoUser
    );
    let (keys, generated) = flow::find_or_generate(&s);
    assert_eq!(
        generated,
        Generated {
            aes: false,
            rsa: false,
            hmac: false
        },
        "the second process finds every key"
    );
    assert_eq!(
        (&keys.aes_id, &keys.rsa_id, &keys.hmac_id, &keys.modulus),
        (&v["aes_id"], &v["rsa_id"], &v["hmac_id"], &v["modulus"]),
        "the first process's keys"
    );
    let gcm = GcmBlob {
        iv: v["gcm_iv"].clone(),
        ct: v["gcm_ct"].clone(),
    };
    assert_eq!(
        flow::gcm_decrypt(&s, keys.aes, &gcm).expect("C_Decrypt(GCM) of the first process's blob"),
        flow::GCM_PAYLOAD
    );
    let cbc = CbcBlob {
        iv: v["cbc_iv"].clone().try_into().unwrap(),
        ct: v["cbc_ct"].clone(),
        mac: v["cbc_mac"].clone(),
    };
    assert_eq!(flow::cbc_raw_open(&s, &keys, &cbc), flow::CBC_PAYLOAD);
    assert_eq!(
        s.decrypt(&flow::oaep_sha256(), keys.rsa_priv, &v["rsa_ct"])
            .expect("C_Decrypt(OAEP-SHA256) of the first process's blob"),
        flow::RSA_PAYLOAD
    );
    // A tampered blob still fails exactly, and the session stays usable.
    let mut bad = gcm.ct.clone();
    bad[3] ^= 0x04;
    let tampered = GcmBlob {
        iv: gcm.iv.clone(),
        ct: bad,
    };
    assert_eq!(
        flow::expect_failure(flow::gcm_decrypt(&s, keys.aes, &tampered), "tampered"),
        f("Decrypt", RvError::EncryptedDataInvalid)
    );
    assert_eq!(
        flow::gcm_decrypt(&s, keys.aes, &gcm).expect("after a failed decrypt"),
        flow::GCM_PAYLOAD
    );
    drop(s);
    client.finalize();
    println!("opened");
}

#[test]
#[ignore = "run as a child by the other tests"]
fn child_process() {
    let Ok(role) = std::env::var(CHILD_VAR) else {
        return;
    };
    let blobs = std::path::PathBuf::from(std::env::var(BLOBS_VAR).expect(BLOBS_VAR));
    // The harness has written "test child_process ... " without a newline.
    println!();
    match role.as_str() {
        "make" => child_make(&blobs),
        "open" => child_open(&blobs),
        other => panic!("unknown role {other}"),
    }
}

fn run_child(home: &Home, role: &str, blobs: &Path) -> String {
    let mut env = home.env();
    env.push((BLOBS_VAR.into(), blobs.display().to_string()));
    let out = common::child_test_command(CHILD_VAR, role, &env)
        .output()
        .expect("run child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child {role} failed:\n{text}");
    text
}

/// Vault restarts: one process generates the keys and seals with 0x1087, 0x1082 + HMAC and
/// 0x0009 (SHA-256); a second process finds the same keys by label and opens every blob.
#[test]
fn a_second_process_finds_the_keys_and_opens_the_blobs() {
    let home = Home::new("vault-restart");
    let blobs = home.path().join("blobs.txt");
    let made = run_child(&home, "make", &blobs);
    assert!(made.lines().any(|l| l == "made"), "{made}");
    let opened = run_child(&home, "open", &blobs);
    assert!(opened.lines().any(|l| l == "opened"), "{opened}");
    // And a third time, after the second process's read-only session changed nothing.
    let again = run_child(&home, "open", &blobs);
    assert!(again.lines().any(|l| l == "opened"), "{again}");
}

/// The session Vault keeps after a failed C_Decrypt still serves every mechanism, in-process.
#[test]
fn failed_decrypts_leave_the_session_usable_for_every_mechanism() {
    let home = Home::new("vault-fail");
    let _guard = enter(&home);
    let client = Client::init(&common::module());
    let slot = client.slot_by_label("vault-fail");
    let s = client.ctx().open_rw_session(slot).expect("C_OpenSession");
    client.login(&s);
    let (keys, _) = flow::find_or_generate(&s);
    let roundtrips = |s: &Session| {
        let g = flow::gcm_encrypt(s, keys.aes, flow::random_array(s), flow::GCM_PAYLOAD);
        assert_eq!(
            flow::gcm_decrypt(s, keys.aes, &g).unwrap(),
            flow::GCM_PAYLOAD
        );
        let c = flow::cbc_raw_seal(s, &keys, flow::random_array(s), flow::CBC_PAYLOAD);
        assert_eq!(flow::cbc_raw_open(s, &keys, &c), flow::CBC_PAYLOAD);
        let r = s
            .encrypt(&flow::oaep_sha256(), keys.rsa_pub, flow::RSA_PAYLOAD)
            .unwrap();
        assert_eq!(
            s.decrypt(&flow::oaep_sha256(), keys.rsa_priv, &r).unwrap(),
            flow::RSA_PAYLOAD
        );
        (g, c, r)
    };
    let (g, c, r) = roundtrips(&s);

    // GCM: a flipped tag byte, a flipped ciphertext byte, a wrong IV, a truncated blob.
    let mut cases: Vec<(&str, GcmBlob, Failure)> = Vec::new();
    let mut tag = g.ct.clone();
    *tag.last_mut().unwrap() ^= 1;
    cases.push((
        "flipped tag",
        GcmBlob {
            iv: g.iv.clone(),
            ct: tag,
        },
        f("Decrypt", RvError::EncryptedDataInvalid),
    ));
    let mut body = g.ct.clone();
    body[0] ^= 1;
    cases.push((
        "flipped ciphertext",
        GcmBlob {
            iv: g.iv.clone(),
            ct: body,
        },
        f("Decrypt", RvError::EncryptedDataInvalid),
    ));
    let mut iv = g.iv.clone();
    iv[11] ^= 1;
    cases.push((
        "wrong IV",
        GcmBlob {
            iv,
            ct: g.ct.clone(),
        },
        f("Decrypt", RvError::EncryptedDataInvalid),
    ));
    cases.push((
        "shorter than the tag",
        GcmBlob {
            iv: g.iv.clone(),
            ct: g.ct[..15].to_vec(),
        },
        f("Decrypt", RvError::EncryptedDataLenRange),
    ));
    for (what, blob, expected) in cases {
        assert_eq!(
            flow::expect_failure(flow::gcm_decrypt(&s, keys.aes, &blob), what),
            expected,
            "GCM {what}"
        );
        roundtrips(&s);
    }

    // OAEP: a flipped ciphertext byte.
    let mut bad = r.clone();
    bad[100] ^= 1;
    assert_eq!(
        flow::expect_failure(s.decrypt(&flow::oaep_sha256(), keys.rsa_priv, &bad), "OAEP"),
        f("Decrypt", RvError::EncryptedDataInvalid)
    );
    // CBC: a ciphertext that is not whole blocks.
    assert_eq!(
        flow::expect_failure(
            s.decrypt(&Mechanism::AesCbc(c.iv), keys.aes, &c.ct[..c.ct.len() - 1]),
            "CBC"
        ),
        f("Decrypt", RvError::EncryptedDataLenRange)
    );
    roundtrips(&s);
    drop(s);
    client.finalize();
}
