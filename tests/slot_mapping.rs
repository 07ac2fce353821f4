//! Black-box tests of slot mapping, apps, PIN mapping, mechanism filtering and key policy
//! (README "Configuration reference", issue 3).
//!
//! Every test builds its own SoftHSMv2 installation with two real tokens, `vault-a` and
//! `vault-b`, and writes its p11gate config into that directory. Upstreams are SoftHSMv2 under
//! two names: the installed `libsofthsm2.so` and a copy of it at another path (so `dlopen` loads
//! two distinct modules), and in some tests the same path under two names, or OpenSC's
//! `pkcs11-spy` in front of SoftHSMv2 (it logs every call that reaches the upstream, which is how
//! the tests prove that a refused call never got there).
//!
//! Clients load the built `libp11gate.so` exactly as real ones do, each in its own process with
//! its own environment: `pkcs11-tool`, the `p11gate` CLI, and children of this test binary that
//! drive the module through a raw PKCS#11 client (`slot_mapping/client.rs`) so that return codes
//! and session handles can be checked exactly. This process never loads a module, so the tests
//! run in parallel. Every p11gate log is written at trace level and searched for the PINs used.

mod common;

#[path = "slot_mapping/client.rs"]
mod client;
#[path = "slot_mapping/harness.rs"]
mod harness;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use pkcs11_sys::*;

use client::{assert_err, assert_rv, mech, mech_with, ok, Attr, Module};
use common::{SO_PIN, USER_PIN};
use harness::{
    arg, arg_u64, assert_log_free_of_secrets, gate_tool, log_lines_at, read_log, run_child, show,
    stdout_ok, Bed, Interactive,
};

/// The PIN app `a` logs in with when its slot holds the upstream's credential.
const APP_PIN: &str = "app-pin-vault-a-5521";
/// A PIN that is wrong everywhere.
const WRONG_PIN: &str = "wrong-pin-31337";
/// What `pkcs11-tool` prints when C_Initialize fails with CKR_GENERAL_ERROR.
const TOOL_INIT_FAILED: &str =
    "error: PKCS11 function C_Initialize failed: rv = CKR_GENERAL_ERROR (0x5)";

/// Two upstreams (SoftHSMv2 and its copy), one slot each, two apps with one slot each.
const TWO_APPS: &str = r#"[[upstream]]
name = "hsm-a"
path = "@SOFTHSM@"

[[upstream]]
name = "hsm-b"
path = "@COPY@"

[[slot]]
id = 0
upstream = "hsm-a"
token_label = "vault-a"

[[slot]]
id = 1
upstream = "hsm-b"
token_label = "vault-b"

[[app]]
name = "a"
slots = [0]

[[app]]
name = "b"
slots = [1]
"#;

// ---------------------------------------------------------------------------------------------
// The child side: scenarios run in a child process that loads libp11gate.so.

/// Runs one scenario when this binary was started as a child by [`harness::run_child`]; does
/// nothing otherwise (it is ignored in normal runs).
#[test]
#[ignore = "runs only as a child process of the other tests in this file"]
fn child_process() {
    let Ok(name) = std::env::var(harness::CHILD_VAR) else {
        return;
    };
    match name.as_str() {
        "app_slots" => child_app_slots(),
        "slots_and_labels" => child_slots_and_labels(),
        "missing_token" => child_missing_token(),
        "refusals" => child_refusals(),
        "vault_flow" => child_vault_flow(),
        "non_extractable" => child_non_extractable(),
        "read_only" => child_read_only(),
        "pin_mapping" => child_pin_mapping(),
        "same_module_twice" => child_same_module_twice(),
        "unmatched_uri" => child_unmatched_uri(),
        other => panic!("unknown child scenario {other}"),
    }
    println!("{}", harness::CHILD_PASSED);
}

/// Loads libp11gate.so and initialises it as Vault does.
fn gate() -> Module {
    let m = Module::load(&harness::gate_module());
    assert_rv("C_Initialize", m.initialize(), CKR_OK);
    m
}

fn list_arg(name: &str) -> Vec<u64> {
    arg(name)
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("number"))
        .collect()
}

/// Opens a read-write session on `slot` and logs in with `pin`.
fn user_session(m: &Module, slot: CK_SLOT_ID, pin: &str) -> CK_SESSION_HANDLE {
    let h = ok("C_OpenSession", m.open_session(slot, true));
    assert_rv("C_Login", m.login(h, CKU_USER, pin), CKR_OK);
    h
}

/// Vault's template for its AES-256 seal key (VAULT.md), as a session or token object.
fn vault_aes_template(label: &str, token: bool) -> Vec<Attr> {
    vec![
        Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attr::ulong(CKA_KEY_TYPE, CKK_AES),
        Attr::ulong(CKA_VALUE_LEN, 32),
        Attr::bytes(CKA_LABEL, label.as_bytes()),
        Attr::bytes(CKA_ID, b"3735928559"),
        Attr::bool(CKA_PRIVATE, true),
        Attr::bool(CKA_TOKEN, token),
        Attr::bool(CKA_SENSITIVE, true),
        Attr::bool(CKA_ENCRYPT, true),
        Attr::bool(CKA_DECRYPT, true),
        Attr::bool(CKA_WRAP, true),
        Attr::bool(CKA_UNWRAP, true),
        Attr::bool(CKA_EXTRACTABLE, false),
    ]
}

/// An AES-256 session key template with `extra` attributes and nothing about extractability.
fn plain_aes_template(extra: &[Attr]) -> Vec<Attr> {
    let mut t = vec![
        Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attr::ulong(CKA_KEY_TYPE, CKK_AES),
        Attr::ulong(CKA_VALUE_LEN, 32),
        Attr::bool(CKA_TOKEN, false),
        Attr::bool(CKA_ENCRYPT, true),
        Attr::bool(CKA_DECRYPT, true),
    ];
    t.extend_from_slice(extra);
    t
}

/// Vault's RSA key pair templates (VAULT.md), public and private.
fn vault_rsa_templates(bits: CK_ULONG, token: bool) -> (Vec<Attr>, Vec<Attr>) {
    (
        vec![
            Attr::ulong(CKA_MODULUS_BITS, bits),
            Attr::bytes(CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
            Attr::bool(CKA_ENCRYPT, true),
            Attr::bool(CKA_WRAP, true),
            Attr::bool(CKA_TOKEN, token),
            Attr::bytes(CKA_LABEL, b"vault-rsa"),
        ],
        vec![
            Attr::bool(CKA_DECRYPT, true),
            Attr::bool(CKA_UNWRAP, true),
            Attr::bool(CKA_TOKEN, token),
            Attr::bool(CKA_EXTRACTABLE, false),
            Attr::bytes(CKA_LABEL, b"vault-rsa"),
        ],
    )
}

/// `CK_GCM_PARAMS` as Vault passes them: 12-byte caller IV, 128-bit tag, no AAD.
fn gcm_params(iv: &mut [u8; 12]) -> CK_GCM_PARAMS {
    CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: std::ptr::null_mut(),
        ulAADLen: 0,
        ulTagBits: 128,
    }
}

/// RSA-OAEP with SHA-1 and MGF1-SHA1 (what SoftHSMv2 2.6 accepts), no label.
fn oaep_sha1() -> CK_RSA_PKCS_OAEP_PARAMS {
    CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: CKM_SHA_1,
        mgf: CKG_MGF1_SHA1,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: std::ptr::null_mut(),
        ulSourceDataLen: 0,
    }
}

/// App `SM_APP`'s view: it sees exactly `SM_MINE` (token `SM_LABEL`); `SM_OTHER` (the other
/// app's slot) and SoftHSMv2's real slot ids `SM_REAL` are invalid for every slot function.
/// With `SM_FOREIGN`, a session handle from the other app's process is checked first. Prints
/// `SESSION <handle>` and waits for the parent with the session open.
fn child_app_slots() {
    let mine = arg_u64("SM_MINE");
    let label = arg("SM_LABEL");
    let m = gate();
    assert_eq!(ok("C_GetSlotList(TRUE)", m.slot_list(true)), vec![mine]);
    assert_eq!(ok("C_GetSlotList(FALSE)", m.slot_list(false)), vec![mine]);
    let info = ok("C_GetSlotInfo", m.slot_info(mine));
    assert_eq!(info.flags & CKF_TOKEN_PRESENT, CKF_TOKEN_PRESENT);
    assert_eq!(ok("C_GetTokenInfo", m.token_label(mine)), label);

    let mut hidden = list_arg("SM_REAL");
    hidden.push(arg_u64("SM_OTHER"));
    for bad in hidden {
        let what = |f: &str| format!("{f}(slot {bad}) as app {}", arg("P11GATE_APP"));
        assert_err(
            &what("C_GetSlotInfo"),
            m.slot_info(bad),
            CKR_SLOT_ID_INVALID,
        );
        assert_err(
            &what("C_GetTokenInfo"),
            m.token_info(bad),
            CKR_SLOT_ID_INVALID,
        );
        assert_err(
            &what("C_OpenSession"),
            m.open_session(bad, false),
            CKR_SLOT_ID_INVALID,
        );
        assert_err(
            &what("C_GetMechanismList"),
            m.mechanism_list(bad),
            CKR_SLOT_ID_INVALID,
        );
        assert_err(
            &what("C_GetMechanismInfo"),
            m.mechanism_info(bad, CKM_SHA256),
            CKR_SLOT_ID_INVALID,
        );
        assert_rv(
            &what("C_InitToken"),
            m.init_token(bad, SO_PIN, "must-not-happen"),
            CKR_SLOT_ID_INVALID,
        );
        assert_rv(
            &what("C_CloseAllSessions"),
            m.close_all_sessions(bad),
            CKR_SLOT_ID_INVALID,
        );
    }

    if let Ok(foreign) = std::env::var("SM_FOREIGN") {
        let foreign: CK_SESSION_HANDLE = foreign.parse().expect("handle");
        assert_err(
            "C_GetSessionInfo(the other app's session handle)",
            m.session_info(foreign),
            CKR_SESSION_HANDLE_INVALID,
        );
        assert_rv(
            "C_Login(the other app's session handle)",
            m.login(foreign, CKU_USER, USER_PIN),
            CKR_SESSION_HANDLE_INVALID,
        );
        assert_rv(
            "C_CloseSession(the other app's session handle)",
            m.close_session(foreign),
            CKR_SESSION_HANDLE_INVALID,
        );
    }

    let h = ok("C_OpenSession", m.open_session(mine, false));
    let si = ok("C_GetSessionInfo", m.session_info(h));
    assert_eq!(
        si.slotID, mine,
        "C_GetSessionInfo reports the virtual slot id"
    );
    assert_eq!(si.flags & CKF_RW_SESSION, 0);
    let rw = ok("C_OpenSession(RW)", m.open_session(mine, true));
    let si = ok("C_GetSessionInfo(RW)", m.session_info(rw));
    assert_eq!(si.slotID, mine);
    assert_eq!(si.flags & CKF_RW_SESSION, CKF_RW_SESSION);
    // No credential on this slot: the PIN passes through to SoftHSMv2.
    assert_rv("C_Login", m.login(h, CKU_USER, USER_PIN), CKR_OK);
    assert_eq!(
        ok("C_GetSessionInfo", m.session_info(rw)).state,
        CKS_RW_USER_FUNCTIONS
    );
    harness::tell_parent("SESSION", &h.to_string());
    harness::wait_for_parent();
    assert_eq!(ok("C_GetSessionInfo", m.session_info(h)).slotID, mine);
    assert_rv("C_CloseSession", m.close_session(h), CKR_OK);
    assert_rv("C_CloseAllSessions", m.close_all_sessions(mine), CKR_OK);
    assert_err(
        "C_GetSessionInfo after C_CloseAllSessions",
        m.session_info(rw),
        CKR_SESSION_HANDLE_INVALID,
    );
    assert_rv("C_Finalize", m.finalize(), CKR_OK);
}

/// The app sees exactly the slots `SM_IDS` in that order, with the token labels `SM_LABELS`,
/// and C_GetSessionInfo reports each virtual id.
fn child_slots_and_labels() {
    let ids = list_arg("SM_IDS");
    let labels: Vec<String> = arg("SM_LABELS").split(',').map(String::from).collect();
    let m = gate();
    assert_eq!(ok("C_GetSlotList(TRUE)", m.slot_list(true)), ids);
    assert_eq!(ok("C_GetSlotList(FALSE)", m.slot_list(false)), ids);
    for (id, label) in ids.iter().zip(&labels) {
        assert_eq!(
            &ok("C_GetTokenInfo", m.token_label(*id)),
            label,
            "slot {id}"
        );
        let h = ok("C_OpenSession", m.open_session(*id, false));
        assert_eq!(ok("C_GetSessionInfo", m.session_info(h)).slotID, *id);
        assert_rv("C_CloseSession", m.close_session(h), CKR_OK);
    }
    assert_rv("C_Finalize", m.finalize(), CKR_OK);
}

/// Slot 3 names token `vault-c`, which does not exist until this child initialises SoftHSMv2's
/// free token as `vault-c` through slot 9 (`upstream_slot` = that free slot); slot 0 is
/// `vault-a`. (SoftHSMv2 does not see tokens that another process creates while it runs, so
/// the token is made through the same module instance.)
fn child_missing_token() {
    let m = gate();
    assert_eq!(
        ok("C_GetSlotList(FALSE)", m.slot_list(false)),
        vec![0, 3, 9]
    );
    assert_eq!(ok("C_GetSlotList(TRUE)", m.slot_list(true)), vec![0, 9]);
    let info = ok("C_GetSlotInfo(3)", m.slot_info(3));
    assert_eq!(
        info.flags & CKF_TOKEN_PRESENT,
        0,
        "CKF_TOKEN_PRESENT clear for a label that is not there"
    );
    assert_eq!(
        ok("C_GetSlotInfo(0)", m.slot_info(0)).flags & CKF_TOKEN_PRESENT,
        CKF_TOKEN_PRESENT
    );
    assert_err("C_GetTokenInfo(3)", m.token_info(3), CKR_TOKEN_NOT_PRESENT);
    assert_err(
        "C_OpenSession(3)",
        m.open_session(3, false),
        CKR_TOKEN_NOT_PRESENT,
    );
    assert_eq!(ok("C_GetTokenInfo(0)", m.token_label(0)), "vault-a");
    assert_eq!(ok("C_GetTokenInfo(9)", m.token_label(9)), "");

    assert_rv(
        "C_InitToken(9, vault-c)",
        m.init_token(9, SO_PIN, "vault-c"),
        CKR_OK,
    );
    assert_eq!(ok("C_GetTokenInfo(9)", m.token_label(9)), "vault-c");
    // C_OpenSession looks the label up again...
    let h = ok("C_OpenSession(3)", m.open_session(3, false));
    assert_eq!(ok("C_GetSessionInfo", m.session_info(h)).slotID, 3);
    // ...and so does C_GetSlotList.
    assert_eq!(ok("C_GetSlotList(TRUE)", m.slot_list(true)), vec![0, 3, 9]);
    assert_eq!(
        ok("C_GetSlotInfo(3)", m.slot_info(3)).flags & CKF_TOKEN_PRESENT,
        CKF_TOKEN_PRESENT
    );
    assert_eq!(ok("C_GetTokenInfo(3)", m.token_label(3)), "vault-c");
    assert_rv("C_Finalize", m.finalize(), CKR_OK);
}

/// Slot 2's `token_uri` matches no token: it is listed only without tokenPresent, described
/// (`SM_DESC`) as not found, and has no token to show or open a session on.
fn child_unmatched_uri() {
    let m = gate();
    assert_eq!(ok("C_GetSlotList(FALSE)", m.slot_list(false)), vec![2]);
    assert_eq!(
        ok("C_GetSlotList(TRUE)", m.slot_list(true)),
        Vec::<CK_SLOT_ID>::new()
    );
    let info = ok("C_GetSlotInfo(2)", m.slot_info(2));
    assert_eq!(info.flags & CKF_TOKEN_PRESENT, 0);
    let description = String::from_utf8_lossy(&info.slotDescription);
    assert_eq!(description.trim_end(), arg("SM_DESC"));
    assert_err("C_GetTokenInfo(2)", m.token_info(2), CKR_TOKEN_NOT_PRESENT);
    assert_err(
        "C_OpenSession(2)",
        m.open_session(2, false),
        CKR_TOKEN_NOT_PRESENT,
    );
    assert_rv("C_Finalize", m.finalize(), CKR_OK);
}

/// The refused mechanisms the `refusals` scenario uses, with the function that refuses each
/// and how p11gate names the mechanism.
const REFUSALS: &[(&str, &str)] = &[
    ("C_EncryptInit", "CKM_AES_GCM"),
    ("C_DecryptInit", "CKM_AES_GCM"),
    ("C_DigestInit", "CKM_SHA256"),
    ("C_SignInit", "CKM_SHA256_HMAC"),
    ("C_VerifyInit", "CKM_SHA256_HMAC"),
    ("C_SignRecoverInit", "CKM_RSA_PKCS"),
    ("C_VerifyRecoverInit", "CKM_RSA_PKCS"),
    ("C_GenerateKey", "CKM_GENERIC_SECRET_KEY_GEN"),
    ("C_GenerateKeyPair", "CKM_RSA_PKCS_KEY_PAIR_GEN"),
    ("C_WrapKey", "CKM_AES_KEY_WRAP"),
    ("C_UnwrapKey", "CKM_AES_KEY_WRAP"),
    ("C_DeriveKey", "CKM_AES_ECB_ENCRYPT_DATA"),
];

/// Slot 0 refuses CKM_AES_GCM (upstream profile) and the slot's deny list; each refusal is
/// CKR_MECHANISM_INVALID. One allowed C_GenerateKey, C_EncryptInit and C_DigestInit follow.
fn child_refusals() {
    let m = gate();
    let list = ok("C_GetMechanismList", m.mechanism_list(0));
    for refused in [
        CKM_AES_GCM,
        CKM_SHA256,
        CKM_SHA256_HMAC,
        CKM_RSA_PKCS,
        CKM_GENERIC_SECRET_KEY_GEN,
        CKM_RSA_PKCS_KEY_PAIR_GEN,
        CKM_AES_KEY_WRAP,
        CKM_AES_ECB_ENCRYPT_DATA,
    ] {
        assert!(
            !list.contains(&refused),
            "mechanism 0x{refused:x} is listed"
        );
        assert_err(
            &format!("C_GetMechanismInfo(0x{refused:x})"),
            m.mechanism_info(0, refused),
            CKR_MECHANISM_INVALID,
        );
    }
    for allowed in [
        CKM_AES_CBC_PAD,
        CKM_AES_KEY_GEN,
        CKM_SHA_1,
        CKM_RSA_PKCS_OAEP,
    ] {
        assert!(list.contains(&allowed), "mechanism 0x{allowed:x} missing");
        ok("C_GetMechanismInfo", m.mechanism_info(0, allowed));
    }

    let h = user_session(&m, 0, USER_PIN);
    let key = ok(
        "C_GenerateKey(AES, Vault's template)",
        m.generate_key(h, &mech(CKM_AES_KEY_GEN), &vault_aes_template("k", false)),
    );
    let mut iv = [7u8; 12];
    let mut gcm = gcm_params(&mut iv);
    let gcm_mech = mech_with(CKM_AES_GCM, &mut gcm);
    let bad = CKR_MECHANISM_INVALID;
    assert_rv("C_EncryptInit(GCM)", m.encrypt_init(h, &gcm_mech, key), bad);
    assert_rv("C_DecryptInit(GCM)", m.decrypt_init(h, &gcm_mech, key), bad);
    assert_rv(
        "C_DigestInit(SHA256)",
        m.digest_init(h, &mech(CKM_SHA256)),
        bad,
    );
    assert_rv(
        "C_SignInit(HMAC)",
        m.sign_init(h, &mech(CKM_SHA256_HMAC), key),
        bad,
    );
    assert_rv(
        "C_VerifyInit(HMAC)",
        m.verify_init(h, &mech(CKM_SHA256_HMAC), key),
        bad,
    );
    assert_rv(
        "C_SignRecoverInit",
        m.sign_recover_init(h, &mech(CKM_RSA_PKCS), key),
        bad,
    );
    assert_rv(
        "C_VerifyRecoverInit",
        m.verify_recover_init(h, &mech(CKM_RSA_PKCS), key),
        bad,
    );
    let generic = [
        Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
        Attr::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET),
        Attr::ulong(CKA_VALUE_LEN, 32),
        Attr::bool(CKA_TOKEN, false),
        Attr::bool(CKA_SENSITIVE, true),
        Attr::bool(CKA_EXTRACTABLE, false),
    ];
    assert_err(
        "C_GenerateKey(generic secret)",
        m.generate_key(h, &mech(CKM_GENERIC_SECRET_KEY_GEN), &generic),
        bad,
    );
    let (public, private) = vault_rsa_templates(1024, false);
    assert_err(
        "C_GenerateKeyPair(RSA)",
        m.generate_key_pair(h, &mech(CKM_RSA_PKCS_KEY_PAIR_GEN), &public, &private),
        bad,
    );
    assert_err(
        "C_WrapKey",
        m.wrap_key(h, &mech(CKM_AES_KEY_WRAP), key, key),
        bad,
    );
    assert_err(
        "C_UnwrapKey",
        m.unwrap_key(
            h,
            &mech(CKM_AES_KEY_WRAP),
            key,
            &[0x5a; 40],
            &vault_aes_template("unwrapped", false),
        ),
        bad,
    );
    let mut data = [0x11u8; 32];
    let mut derive = CK_KEY_DERIVATION_STRING_DATA {
        pData: data.as_mut_ptr(),
        ulLen: 32,
    };
    assert_err(
        "C_DeriveKey",
        m.derive_key(
            h,
            &mech_with(CKM_AES_ECB_ENCRYPT_DATA, &mut derive),
            key,
            &vault_aes_template("derived", false),
        ),
        bad,
    );

    // The allowed operations reach the upstream (and the spy's log).
    let mut cbc_iv = [9u8; 16];
    assert_rv(
        "C_EncryptInit(AES-CBC-PAD)",
        m.encrypt_init(h, &mech_with(CKM_AES_CBC_PAD, &mut cbc_iv), key),
        CKR_OK,
    );
    let ct = ok("C_Encrypt", m.encrypt(h, b"sixteen byte msg"));
    assert_eq!(ct.len(), 32);
    assert_rv(
        "C_DigestInit(SHA-1)",
        m.digest_init(h, &mech(CKM_SHA_1)),
        CKR_OK,
    );
    assert_rv("C_Finalize", m.finalize(), CKR_OK);
}

/// Vault's seal on slot 0 (profile no-aes-gcm) and slot 1 (no rules): AES-256 key with
/// Vault's template, AES-GCM refused on slot 0 but working on slot 1, RSA-OAEP (SHA-1) working.
fn child_vault_flow() {
    let m = gate();
    let list0 = ok("C_GetMechanismList(0)", m.mechanism_list(0));
    let list1 = ok("C_GetMechanismList(1)", m.mechanism_list(1));
    assert!(!list0.contains(&CKM_AES_GCM), "0x1087 listed on slot 0");
    assert!(list1.contains(&CKM_AES_GCM), "0x1087 missing on slot 1");
    for both in [CKM_RSA_PKCS_OAEP, CKM_AES_CBC_PAD, CKM_AES_KEY_GEN] {
        assert!(list0.contains(&both) && list1.contains(&both), "0x{both:x}");
    }
    let plaintext = b"a 32-byte data key for the seal!";

    // Slot 0: the key is made and found as Vault does; GCM is refused.
    let h = user_session(&m, 0, USER_PIN);
    let key = ok(
        "C_GenerateKey",
        m.generate_key(
            h,
            &mech(CKM_AES_KEY_GEN),
            &vault_aes_template("vault-key", true),
        ),
    );
    let found = ok(
        "C_FindObjects",
        m.find(
            h,
            &[
                Attr::bytes(CKA_LABEL, b"vault-key"),
                Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
                Attr::ulong(CKA_KEY_TYPE, CKK_AES),
            ],
        ),
    );
    assert_eq!(found, vec![key]);
    let mut iv = [0x42u8; 12];
    let mut params = gcm_params(&mut iv);
    assert_rv(
        "C_EncryptInit(CKM_AES_GCM) on slot 0",
        m.encrypt_init(h, &mech_with(CKM_AES_GCM, &mut params), key),
        CKR_MECHANISM_INVALID,
    );
    // The refusal left the session usable: RSA-OAEP works.
    let (public, private) = vault_rsa_templates(2048, true);
    let (pubk, privk) = ok(
        "C_GenerateKeyPair",
        m.generate_key_pair(h, &mech(CKM_RSA_PKCS_KEY_PAIR_GEN), &public, &private),
    );
    let modulus = ok("C_GetAttributeValue", m.attribute(h, pubk, CKA_MODULUS));
    assert_eq!(modulus.len(), 256);
    let mut oaep = oaep_sha1();
    assert_rv(
        "C_EncryptInit(OAEP)",
        m.encrypt_init(h, &mech_with(CKM_RSA_PKCS_OAEP, &mut oaep), pubk),
        CKR_OK,
    );
    let ct = ok("C_Encrypt(OAEP)", m.encrypt(h, plaintext));
    assert_eq!(ct.len(), 256);
    let mut oaep = oaep_sha1();
    assert_rv(
        "C_DecryptInit(OAEP)",
        m.decrypt_init(h, &mech_with(CKM_RSA_PKCS_OAEP, &mut oaep), privk),
        CKR_OK,
    );
    assert_eq!(ok("C_Decrypt(OAEP)", m.decrypt(h, &ct)), plaintext);

    // Slot 1 has no rules: the same GCM flow works there.
    let h1 = user_session(&m, 1, USER_PIN);
    let key1 = ok(
        "C_GenerateKey(slot 1)",
        m.generate_key(
            h1,
            &mech(CKM_AES_KEY_GEN),
            &vault_aes_template("vault-key", true),
        ),
    );
    let mut iv = [0x42u8; 12];
    let mut params = gcm_params(&mut iv);
    assert_rv(
        "C_EncryptInit(GCM) on slot 1",
        m.encrypt_init(h1, &mech_with(CKM_AES_GCM, &mut params), key1),
        CKR_OK,
    );
    let ct = ok("C_Encrypt(GCM)", m.encrypt(h1, plaintext));
    assert_eq!(ct.len(), 32 + 16);
    let mut iv = [0x42u8; 12];
    let mut params = gcm_params(&mut iv);
    assert_rv(
        "C_DecryptInit(GCM)",
        m.decrypt_init(h1, &mech_with(CKM_AES_GCM, &mut params), key1),
        CKR_OK,
    );
    assert_eq!(ok("C_Decrypt(GCM)", m.decrypt(h1, &ct)), plaintext);
    assert_rv("C_Finalize", m.finalize(), CKR_OK);
}

/// Slot 0 has `require_non_extractable = true`; slot 1 is the same token without it (upstream:
/// the spy in front of SoftHSMv2).
fn child_non_extractable() {
    let m = gate();
    let h = user_session(&m, 0, USER_PIN);
    let gen = mech(CKM_AES_KEY_GEN);
    let bad = CKR_TEMPLATE_INCONSISTENT;
    // CKA_EXTRACTABLE and CKA_SENSITIVE of an object, as the token reports them.
    let protection = |what: &str, obj: CK_OBJECT_HANDLE| -> (Vec<u8>, Vec<u8>) {
        (
            ok(what, m.attribute(h, obj, CKA_EXTRACTABLE)),
            ok(what, m.attribute(h, obj, CKA_SENSITIVE)),
        )
    };
    let safe = (vec![CK_FALSE], vec![CK_TRUE]);

    // Templates that leave the flags unstated get the safe values added (SoftHSMv2's own
    // defaults would make the key extractable and not sensitive).
    let k1 = ok(
        "C_GenerateKey without CKA_EXTRACTABLE or CKA_SENSITIVE",
        m.generate_key(h, &gen, &plain_aes_template(&[])),
    );
    assert_eq!(protection("flags of k1", k1), safe);
    let k2 = ok(
        "C_GenerateKey with EXTRACTABLE=FALSE but no SENSITIVE",
        m.generate_key(
            h,
            &gen,
            &plain_aes_template(&[Attr::bool(CKA_EXTRACTABLE, false)]),
        ),
    );
    assert_eq!(protection("flags of k2", k2), safe);
    // Templates that ask for an exportable key are refused before the upstream.
    assert_err(
        "C_GenerateKey with SENSITIVE=TRUE, EXTRACTABLE=TRUE",
        m.generate_key(
            h,
            &gen,
            &plain_aes_template(&[
                Attr::bool(CKA_SENSITIVE, true),
                Attr::bool(CKA_EXTRACTABLE, true),
            ]),
        ),
        bad,
    );
    assert_err(
        "C_GenerateKey with SENSITIVE=FALSE",
        m.generate_key(
            h,
            &gen,
            &plain_aes_template(&[Attr::bool(CKA_SENSITIVE, false)]),
        ),
        bad,
    );
    let key = ok(
        "C_GenerateKey with Vault's template",
        m.generate_key(h, &gen, &vault_aes_template("nx", false)),
    );
    assert_eq!(protection("flags of Vault's key", key), safe);
    assert_rv(
        "C_SetAttributeValue(EXTRACTABLE=TRUE)",
        m.set_attributes(h, key, &[Attr::bool(CKA_EXTRACTABLE, true)]),
        bad,
    );
    assert_rv(
        "C_SetAttributeValue(SENSITIVE=FALSE)",
        m.set_attributes(h, key, &[Attr::bool(CKA_SENSITIVE, false)]),
        bad,
    );
    // Other attributes may change (the one C_SetAttributeValue the spy may see).
    assert_rv(
        "C_SetAttributeValue(LABEL)",
        m.set_attributes(h, key, &[Attr::bytes(CKA_LABEL, b"renamed")]),
        CKR_OK,
    );

    let rsa = mech(CKM_RSA_PKCS_KEY_PAIR_GEN);
    let (public, private) = vault_rsa_templates(1024, false);
    // Vault's RSA private template says EXTRACTABLE=FALSE but not SENSITIVE: accepted, and the
    // private key is made sensitive.
    let (_, vault_private) = ok(
        "C_GenerateKeyPair with Vault's templates",
        m.generate_key_pair(h, &rsa, &public, &private),
    );
    assert_eq!(
        protection("flags of Vault's private key", vault_private),
        safe
    );
    let stripped: Vec<Attr> = private
        .iter()
        .filter(|a| a.ty != CKA_EXTRACTABLE)
        .cloned()
        .collect();
    let (_, stripped_private) = ok(
        "C_GenerateKeyPair, private template without CKA_EXTRACTABLE",
        m.generate_key_pair(h, &rsa, &public, &stripped),
    );
    assert_eq!(
        protection("flags of that private key", stripped_private),
        safe
    );
    let mut extractable = stripped.clone();
    extractable.push(Attr::bool(CKA_EXTRACTABLE, true));
    assert_err(
        "C_GenerateKeyPair, private template with EXTRACTABLE=TRUE",
        m.generate_key_pair(h, &rsa, &public, &extractable),
        bad,
    );

    let value = Attr::bytes(CKA_VALUE, &[0x24; 32]);
    let secret = |extra: &[Attr]| {
        let mut t = vec![
            Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attr::ulong(CKA_KEY_TYPE, CKK_AES),
            Attr::bool(CKA_TOKEN, false),
            Attr::bool(CKA_ENCRYPT, true),
            value.clone(),
        ];
        t.extend_from_slice(extra);
        t
    };
    let created = ok(
        "C_CreateObject(secret key without the flags)",
        m.create_object(h, &secret(&[])),
    );
    assert_eq!(protection("flags of the created key", created), safe);
    assert_err(
        "C_CreateObject(secret key with EXTRACTABLE=TRUE)",
        m.create_object(h, &secret(&[Attr::bool(CKA_EXTRACTABLE, true)])),
        bad,
    );
    // Not a key: the rule does not apply.
    ok(
        "C_CreateObject(data object)",
        m.create_object(
            h,
            &[
                Attr::ulong(CKA_CLASS, CKO_DATA),
                Attr::bool(CKA_TOKEN, false),
                Attr::bytes(CKA_VALUE, b"not a key"),
            ],
        ),
    );

    assert_err(
        "C_CopyObject(EXTRACTABLE=TRUE)",
        m.copy_object(h, key, &[Attr::bool(CKA_EXTRACTABLE, true)]),
        bad,
    );
    let copy = ok("C_CopyObject(no template)", m.copy_object(h, key, &[]));
    assert_ne!(copy, key);
    assert_eq!(protection("flags of the copy", copy), safe);

    // An extractable token key made through slot 1 (same token, no policy) and found through
    // slot 0: a copy made through slot 0 is made non-extractable and sensitive.
    let h1 = ok("C_OpenSession(1)", m.open_session(1, true));
    ok(
        "C_CreateObject(extractable key) on slot 1",
        m.create_object(
            h1,
            &[
                Attr::ulong(CKA_CLASS, CKO_SECRET_KEY),
                Attr::ulong(CKA_KEY_TYPE, CKK_AES),
                Attr::bool(CKA_TOKEN, true),
                Attr::bool(CKA_PRIVATE, true),
                Attr::bool(CKA_EXTRACTABLE, true),
                Attr::bool(CKA_SENSITIVE, false),
                Attr::bytes(CKA_LABEL, b"extractable"),
                Attr::bytes(CKA_VALUE, &[0x33; 32]),
            ],
        ),
    );
    let found = ok(
        "C_FindObjects(extractable) on slot 0",
        m.find(h, &[Attr::bytes(CKA_LABEL, b"extractable")]),
    );
    assert_eq!(found.len(), 1);
    let ext = found[0];
    let ext_copy = ok(
        "C_CopyObject(extractable source, no template)",
        m.copy_object(h, ext, &[Attr::bool(CKA_TOKEN, false)]),
    );
    assert_eq!(
        protection("flags of the extractable key's copy", ext_copy),
        safe
    );
    assert_err(
        "C_CopyObject(extractable source, SENSITIVE=FALSE)",
        m.copy_object(h, ext, &[Attr::bool(CKA_SENSITIVE, false)]),
        bad,
    );
    assert_rv(
        "C_SetAttributeValue(SENSITIVE=FALSE) on the found key",
        m.set_attributes(h, ext, &[Attr::bool(CKA_SENSITIVE, false)]),
        bad,
    );

    assert_err(
        "C_UnwrapKey asking for an extractable key",
        m.unwrap_key(
            h,
            &mech(CKM_AES_KEY_WRAP),
            key,
            &[0x5a; 40],
            &plain_aes_template(&[Attr::bool(CKA_EXTRACTABLE, true)]),
        ),
        bad,
    );
    let mut data = [0x11u8; 32];
    let mut derive = CK_KEY_DERIVATION_STRING_DATA {
        pData: data.as_mut_ptr(),
        ulLen: 32,
    };
    assert_err(
        "C_DeriveKey asking for a key that is not sensitive",
        m.derive_key(
            h,
            &mech_with(CKM_AES_ECB_ENCRYPT_DATA, &mut derive),
            key,
            &plain_aes_template(&[Attr::bool(CKA_SENSITIVE, false)]),
        ),
        bad,
    );
    assert_rv("C_Finalize", m.finalize(), CKR_OK);
}

/// Slot 0 is `vault-a`, slot 5 the same token with `read_only = true`.
fn child_read_only() {
    let m = gate();
    let w = user_session(&m, 0, USER_PIN);
    ok(
        "C_GenerateKey on slot 0",
        m.generate_key(
            w,
            &mech(CKM_AES_KEY_GEN),
            &vault_aes_template("ro-key", true),
        ),
    );
    assert_rv("C_CloseSession", m.close_session(w), CKR_OK);

    let wp = CKR_TOKEN_WRITE_PROTECTED;
    assert_err("C_OpenSession(5, RW)", m.open_session(5, true), wp);
    let h = ok("C_OpenSession(5, RO)", m.open_session(5, false));
    assert_rv("C_Login", m.login(h, CKU_USER, USER_PIN), CKR_OK);
    let found = ok(
        "C_FindObjects",
        m.find(h, &[Attr::bytes(CKA_LABEL, b"ro-key")]),
    );
    assert_eq!(
        found.len(),
        1,
        "the key is found through the read-only slot"
    );
    let k = found[0];
    let mut iv = [3u8; 16];
    assert_rv(
        "C_EncryptInit",
        m.encrypt_init(h, &mech_with(CKM_AES_CBC_PAD, &mut iv), k),
        CKR_OK,
    );
    assert_eq!(ok("C_Encrypt", m.encrypt(h, b"read-only works")).len(), 16);

    assert_err(
        "C_GenerateKey (session object)",
        m.generate_key(h, &mech(CKM_AES_KEY_GEN), &vault_aes_template("s", false)),
        wp,
    );
    let mut private = vault_rsa_templates(1024, false).1;
    private.push(Attr::bool(CKA_SENSITIVE, true));
    assert_err(
        "C_GenerateKeyPair",
        m.generate_key_pair(
            h,
            &mech(CKM_RSA_PKCS_KEY_PAIR_GEN),
            &vault_rsa_templates(1024, false).0,
            &private,
        ),
        wp,
    );
    assert_err(
        "C_CreateObject (session data object)",
        m.create_object(
            h,
            &[
                Attr::ulong(CKA_CLASS, CKO_DATA),
                Attr::bool(CKA_TOKEN, false),
                Attr::bytes(CKA_VALUE, b"x"),
            ],
        ),
        wp,
    );
    assert_err(
        "C_CopyObject",
        m.copy_object(h, k, &[Attr::bool(CKA_TOKEN, false)]),
        wp,
    );
    assert_rv(
        "C_SetAttributeValue",
        m.set_attributes(h, k, &[Attr::bytes(CKA_LABEL, b"changed")]),
        wp,
    );
    assert_rv("C_DestroyObject", m.destroy_object(h, k), wp);
    assert_err(
        "C_UnwrapKey",
        m.unwrap_key(
            h,
            &mech(CKM_AES_KEY_WRAP),
            k,
            &[0x5a; 40],
            &vault_aes_template("u", false),
        ),
        wp,
    );
    let mut data = [0x11u8; 32];
    let mut derive = CK_KEY_DERIVATION_STRING_DATA {
        pData: data.as_mut_ptr(),
        ulLen: 32,
    };
    assert_err(
        "C_DeriveKey",
        m.derive_key(
            h,
            &mech_with(CKM_AES_ECB_ENCRYPT_DATA, &mut derive),
            k,
            &vault_aes_template("d", false),
        ),
        wp,
    );
    assert_rv("C_InitPIN", m.init_pin(h, "new-user-pin-1"), wp);
    assert_rv("C_SetPIN", m.set_pin(h, USER_PIN, "new-user-pin-1"), wp);
    assert_rv("C_InitToken(5)", m.init_token(5, SO_PIN, "wiped"), wp);

    // Nothing changed: the key is still there under its name, through the writable slot
    // (the same SoftHSMv2 token, so the same login state).
    let r = ok("C_OpenSession(0)", m.open_session(0, false));
    assert_eq!(
        ok("C_GetSessionInfo", m.session_info(r)).state,
        CKS_RO_USER_FUNCTIONS
    );
    let found = ok(
        "C_FindObjects on slot 0",
        m.find(r, &[Attr::bytes(CKA_LABEL, b"ro-key")]),
    );
    assert_eq!(found.len(), 1);
    assert_eq!(ok("C_GetTokenInfo", m.token_label(0)), "vault-a");
    assert_rv("C_Finalize", m.finalize(), CKR_OK);
}

/// Slot 0 holds vault-a's user PIN as its credential (app PIN `SM_APP_PIN`); slot 1 (vault-b)
/// has none. `SM_FULL` adds the checks of C_InitPIN, C_SetPIN and SO login.
fn child_pin_mapping() {
    let app_pin = arg("SM_APP_PIN");
    let full = std::env::var("SM_FULL").is_ok();
    let m = gate();
    let h = ok("C_OpenSession", m.open_session(0, true));
    assert_rv(
        "C_Login with the upstream's real PIN",
        m.login(h, CKU_USER, USER_PIN),
        CKR_PIN_INCORRECT,
    );
    for _ in 0..3 {
        assert_rv(
            "C_Login with a wrong PIN",
            m.login(h, CKU_USER, WRONG_PIN),
            CKR_PIN_INCORRECT,
        );
    }
    let flags = ok("C_GetTokenInfo", m.token_info(0)).flags;
    assert_eq!(
        flags & (CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED),
        0,
        "wrong app PINs reached SoftHSMv2's PIN counter (token flags 0x{flags:x})"
    );
    assert_eq!(
        ok("C_GetSessionInfo", m.session_info(h)).state,
        CKS_RW_PUBLIC_SESSION
    );
    assert_rv(
        "C_Login with the app's PIN",
        m.login(h, CKU_USER, &app_pin),
        CKR_OK,
    );
    assert_eq!(
        ok("C_GetSessionInfo", m.session_info(h)).state,
        CKS_RW_USER_FUNCTIONS
    );
    // Logged in for real: private keys can be made and used.
    let key = ok(
        "C_GenerateKey",
        m.generate_key(
            h,
            &mech(CKM_AES_KEY_GEN),
            &vault_aes_template("pin-mapped", true),
        ),
    );
    let mut iv = [5u8; 16];
    assert_rv(
        "C_EncryptInit",
        m.encrypt_init(h, &mech_with(CKM_AES_CBC_PAD, &mut iv), key),
        CKR_OK,
    );
    let ct = ok("C_Encrypt", m.encrypt(h, b"pin mapping works"));
    let mut iv = [5u8; 16];
    assert_rv(
        "C_DecryptInit",
        m.decrypt_init(h, &mech_with(CKM_AES_CBC_PAD, &mut iv), key),
        CKR_OK,
    );
    assert_eq!(ok("C_Decrypt", m.decrypt(h, &ct)), b"pin mapping works");

    if full {
        assert_rv(
            "C_Login(CKU_CONTEXT_SPECIFIC) with a wrong PIN",
            m.login(h, CKU_CONTEXT_SPECIFIC, WRONG_PIN),
            CKR_PIN_INCORRECT,
        );
        assert_rv(
            "C_SetPIN on a credential slot",
            m.set_pin(h, &app_pin, "another-app-pin"),
            CKR_FUNCTION_NOT_SUPPORTED,
        );
        assert_rv(
            "C_InitPIN on a credential slot",
            m.init_pin(h, "another-user-pin"),
            CKR_FUNCTION_NOT_SUPPORTED,
        );
        assert_rv("C_Logout", m.logout(h), CKR_OK);
        // CKU_SO passes through unchanged: SoftHSMv2's SO PIN works, the app PIN does not.
        assert_rv(
            "C_Login(CKU_SO) with the app PIN",
            m.login(h, CKU_SO, &app_pin),
            CKR_PIN_INCORRECT,
        );
        assert_rv("C_Login(CKU_SO)", m.login(h, CKU_SO, SO_PIN), CKR_OK);
        assert_eq!(
            ok("C_GetSessionInfo", m.session_info(h)).state,
            CKS_RW_SO_FUNCTIONS
        );
        assert_rv("C_Logout", m.logout(h), CKR_OK);
        // The slot without a credential takes the upstream's PIN.
        let h1 = ok("C_OpenSession(1)", m.open_session(1, false));
        assert_rv(
            "C_Login on the slot without a credential",
            m.login(h1, CKU_USER, USER_PIN),
            CKR_OK,
        );
    }
    let flags = ok("C_GetTokenInfo", m.token_info(0)).flags;
    assert_eq!(flags & CKF_USER_PIN_COUNT_LOW, 0, "flags 0x{flags:x}");
    assert_rv("C_Finalize", m.finalize(), CKR_OK);
}

/// The same module path under two upstream names: both slots work, and finalise/initialise
/// cycles come back cleanly.
fn child_same_module_twice() {
    let m = gate();
    for round in 0..2 {
        if round > 0 {
            assert_rv("C_Initialize again", m.initialize(), CKR_OK);
        }
        assert_eq!(ok("C_GetSlotList", m.slot_list(true)), vec![0, 1]);
        assert_eq!(ok("C_GetTokenInfo(0)", m.token_label(0)), "vault-a");
        assert_eq!(ok("C_GetTokenInfo(1)", m.token_label(1)), "vault-b");
        let h0 = user_session(&m, 0, USER_PIN);
        let h1 = user_session(&m, 1, USER_PIN);
        assert_eq!(ok("C_GetSessionInfo", m.session_info(h0)).slotID, 0);
        assert_eq!(ok("C_GetSessionInfo", m.session_info(h1)).slotID, 1);
        assert_rv("C_CloseSession", m.close_session(h1), CKR_OK);
        // Closing slot 1's session leaves slot 0's (same module, other token) logged in.
        assert_eq!(
            ok("C_GetSessionInfo", m.session_info(h0)).state,
            CKS_RW_USER_FUNCTIONS
        );
        assert_rv("C_Finalize", m.finalize(), CKR_OK);
    }
}

// ---------------------------------------------------------------------------------------------
// The parent side.

/// `(k, v)` pairs for a child's parameters.
fn params(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn with(mut env: Vec<(String, String)>, extra: &[(&str, String)]) -> Vec<(String, String)> {
    env.extend(params(extra));
    env
}

/// `Slot N (0xID): ...` lines of `pkcs11-tool -L` / `-T`: (id, token label) per slot.
fn tool_slots(listing: &str) -> Vec<(u64, String)> {
    let mut slots: Vec<(u64, String)> = Vec::new();
    for line in listing.lines() {
        if let Some(rest) = line.strip_prefix("Slot ") {
            let open = rest.find("(0x").expect("slot id");
            let close = rest.find(')').expect("slot id end");
            let id = u64::from_str_radix(&rest[open + 3..close], 16).expect("hex id");
            slots.push((id, String::new()));
        } else if let Some(label) = harness::field(line, "token label") {
            slots.last_mut().expect("label after slot").1 = label;
        }
    }
    slots
}

/// The mechanism lines of `pkcs11-tool -M`.
fn mechanism_lines(listing: &str) -> BTreeSet<String> {
    listing
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(|l| l.trim().to_string())
        .collect()
}

/// `pkcs11-tool -M` straight from SoftHSMv2 on real slot `slot`.
fn direct_mechanisms(bed: &Bed, slot: u64) -> BTreeSet<String> {
    let out = bed.direct_tool(&["-M", "--slot", &slot.to_string()]);
    let set = mechanism_lines(&stdout_ok("pkcs11-tool -M (SoftHSMv2)", &out));
    assert!(set.len() > 20, "SoftHSMv2 lists only {set:?}");
    set
}

/// pkcs11-tool's name of the mechanism on a `-M` line.
fn mechanism_name(line: &str) -> String {
    line.split(',').next().unwrap_or(line).to_string()
}

/// The mechanisms (pkcs11-tool's names) missing through p11gate on `virtual_slot` compared
/// with SoftHSMv2's `direct`; also asserts that every listed line is identical to SoftHSMv2's.
/// Except AES-GCM's: SoftHSMv2 2.6 ORs that mechanism's flags into the caller's
/// CK_MECHANISM_INFO, which pkcs11-tool leaves uninitialised, so that line shows whatever was
/// on pkcs11-tool's stack (seen with pkcs11-spy between p11gate and SoftHSMv2).
fn missing_mechanisms(
    direct: &BTreeSet<String>,
    env: &[(String, String)],
    virtual_slot: u64,
) -> BTreeSet<String> {
    let out = gate_tool(env, &["-M", "--slot", &virtual_slot.to_string()]);
    let gate = mechanism_lines(&stdout_ok("pkcs11-tool -M (p11gate)", &out));
    let direct_names: BTreeSet<String> = direct.iter().map(|l| mechanism_name(l)).collect();
    let gate_names: BTreeSet<String> = gate.iter().map(|l| mechanism_name(l)).collect();
    assert_eq!(
        gate_names.len(),
        gate.len(),
        "a mechanism listed twice: {gate:?}"
    );
    for line in &gate {
        let name = mechanism_name(line);
        assert!(
            direct_names.contains(&name),
            "slot {virtual_slot}: {line:?} is not in SoftHSMv2's list"
        );
        if name != "AES-GCM" {
            assert!(
                direct.contains(line),
                "slot {virtual_slot}: {line:?} differs from SoftHSMv2's"
            );
        }
    }
    direct_names.difference(&gate_names).cloned().collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// One argon2 hash of [`APP_PIN`] per test process (hashing is deliberately slow).
fn app_pin_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| harness::hash_pin(APP_PIN))
}

/// How many calls of `function` the spy logged (its lines are `N: C_Function`).
fn spy_calls(spy_log: &str, function: &str) -> usize {
    spy_log
        .lines()
        .filter(|l| {
            l.split_once(": ")
                .is_some_and(|(n, f)| n.chars().all(|c| c.is_ascii_digit()) && f.trim() == function)
        })
        .count()
}

/// The spy upstream's environment: it forwards to SoftHSMv2 and logs to `output`.
fn spy_env(output: &Path) -> Vec<(String, String)> {
    params(&[
        ("PKCS11SPY", common::softhsm_module().display().to_string()),
        ("PKCS11SPY_OUTPUT", output.display().to_string()),
    ])
}

#[test]
fn two_apps_see_disjoint_slots_and_sessions() {
    let bed = Bed::new();
    let cfg = bed.config("p11gate.toml", TWO_APPS);
    let real = format!("{},{}", bed.a.slot, bed.b.slot);
    let (log_a, log_b) = (bed.log("a"), bed.log("b"));
    let env_a = with(
        bed.env(&cfg, Some("a"), &log_a),
        &[
            ("SM_MINE", "0".into()),
            ("SM_LABEL", "vault-a".into()),
            ("SM_OTHER", "1".into()),
            ("SM_REAL", real.clone()),
        ],
    );
    let mut a = Interactive::start("app_slots", &env_a);
    let handle = a.expect("SESSION");
    // App b runs while app a holds its session open.
    let env_b = with(
        bed.env(&cfg, Some("b"), &log_b),
        &[
            ("SM_MINE", "1".into()),
            ("SM_LABEL", "vault-b".into()),
            ("SM_OTHER", "0".into()),
            ("SM_REAL", real),
            ("SM_FOREIGN", handle),
        ],
    );
    let mut b = Interactive::start("app_slots", &env_b);
    b.expect("SESSION");
    b.proceed();
    b.finish();
    a.proceed();
    a.finish();

    // pkcs11-tool shows each app one slot with its token.
    for (app, id, label) in [("a", 0u64, "vault-a"), ("b", 1, "vault-b")] {
        let log = bed.log(&format!("tool-{app}"));
        let out = gate_tool(&bed.env(&cfg, Some(app), &log), &["-L"]);
        let text = stdout_ok("pkcs11-tool -L", &out);
        assert_eq!(tool_slots(&text), vec![(id, label.to_string())], "{text}");
        assert_log_free_of_secrets(&log, &[]);
    }
    assert_log_free_of_secrets(&log_a, &[]);
    assert_log_free_of_secrets(&log_b, &[]);
}

#[test]
fn slots_follow_the_app_order_and_every_target_kind() {
    let bed = Bed::new();
    let cfg = bed.config(
        "p11gate.toml",
        r#"default_app = "ops"

[[upstream]]
name = "hsm-a"
path = "@SOFTHSM@"

[[upstream]]
name = "hsm-b"
path = "@COPY@"

[[slot]]
id = "0x1f"
upstream = "hsm-a"
token_serial = "@SERIAL_A@"

[[slot]]
id = 7
upstream = "hsm-b"
upstream_slot = @SLOT_B@

[[slot]]
id = "12"
upstream = "hsm-b"
upstream_slot = "@SLOT_A@"

[[app]]
name = "ops"
slots = [7, 31, 12]

[[app]]
name = "other"
slots = [12]
"#,
    );
    // default_app selects "ops" when P11GATE_APP is not set.
    let log = bed.log("ops");
    let env = bed.env(&cfg, None, &log);
    run_child(
        "slots_and_labels",
        &with(
            env.clone(),
            &[
                ("SM_IDS", "7,31,12".into()),
                ("SM_LABELS", "vault-b,vault-a,vault-a".into()),
            ],
        ),
    );
    let text = stdout_ok("pkcs11-tool -L", &gate_tool(&env, &["-L"]));
    assert_eq!(
        tool_slots(&text),
        vec![
            (7, "vault-b".to_string()),
            (31, "vault-a".to_string()),
            (12, "vault-a".to_string())
        ],
        "{text}"
    );
    // P11GATE_APP overrides default_app.
    let log_other = bed.log("other");
    run_child(
        "slots_and_labels",
        &with(
            bed.env(&cfg, Some("other"), &log_other),
            &[("SM_IDS", "12".into()), ("SM_LABELS", "vault-a".into())],
        ),
    );
    assert_log_free_of_secrets(&log, &[]);
    assert_log_free_of_secrets(&log_other, &[]);
}

#[test]
fn token_uris_select_by_every_attribute_they_give() {
    let bed = Bed::new();
    let text = r#"default_app = "found"

[[upstream]]
name = "hsm-a"
path = "@SOFTHSM@"

[[upstream]]
name = "hsm-b"
path = "@COPY@"

# Label and serial: both must match.
[[slot]]
id = 0
upstream = "hsm-a"
token_uri = "pkcs11:token=vault-a;serial=@SERIAL_A@"

# Every token attribute.
[[slot]]
id = 1
upstream = "hsm-b"
token_uri = "pkcs11:token=vault-b;manufacturer=SoftHSM%20project;serial=@SERIAL_B@;model=SoftHSM%20v2"

# Slot attributes: the slot id and C_GetSlotInfo's description.
[[slot]]
id = 3
upstream = "hsm-a"
token_uri = "pkcs11:slot-id=@SLOT_B@;slot-description=SoftHSM%20slot%20ID%200x@SLOT_B_HEX@"

# vault-a's label with vault-b's serial: no token has both.
[[slot]]
id = 2
upstream = "hsm-a"
token_uri = "pkcs11:token=vault-a;serial=@SERIAL_B@"

[[app]]
name = "found"
slots = [0, 1, 3]

[[app]]
name = "none"
slots = [2]
"#
    .replace("@SLOT_B_HEX@", &format!("{:x}", bed.b.slot));
    let cfg = bed.config("p11gate.toml", &text);
    let (a, b) = (&bed.a, &bed.b);

    let log = bed.log("found");
    let env = bed.env(&cfg, None, &log);
    run_child(
        "slots_and_labels",
        &with(
            env.clone(),
            &[
                ("SM_IDS", "0,1,3".into()),
                ("SM_LABELS", "vault-a,vault-b,vault-b".into()),
            ],
        ),
    );
    let listing = stdout_ok("pkcs11-tool -L", &gate_tool(&env, &["-L"]));
    assert_eq!(
        tool_slots(&listing),
        vec![
            (0, "vault-a".to_string()),
            (1, "vault-b".to_string()),
            (3, "vault-b".to_string())
        ],
        "{listing}"
    );
    assert_log_free_of_secrets(&log, &[]);

    // The URI that matches nothing: absent, described, and logged, with the URI.
    let target = format!("token pkcs11:token=vault-a;serial={}", b.serial);
    let description = format!("p11gate slot 2: {target} not found on hsm-a");
    let log_none = bed.log("none");
    run_child(
        "unmatched_uri",
        &with(
            bed.env(&cfg, Some("none"), &log_none),
            &[("SM_DESC", description[..64].to_string())],
        ),
    );
    let warnings = log_lines_at(&read_log(&log_none), "WARN");
    let want = format!("slot 2 -> hsm-a {target}: not found (yet)");
    assert!(
        warnings.contains(&want),
        "want the warning {want:?} in {warnings:#?}"
    );

    // config check: where each URI leads, and for the one that matches nothing, the tokens
    // that are there, as URIs to pick from.
    let env_check = params(&[("SOFTHSM2_CONF", bed.hsm.conf.display().to_string())]);
    let out = harness::cli(
        &["config", "check", &cfg.display().to_string()],
        &env_check,
        "",
    );
    let check = stdout_ok("p11gate config check", &out);
    let softhsm = common::softhsm_module().display().to_string();
    let lines: Vec<&str> = check.lines().collect();
    for want in [
        format!(
            "  slot 0 -> upstream \"hsm-a\" ({softhsm}), token pkcs11:token=vault-a;serial={}: upstream slot {:#x}",
            a.serial, a.slot
        ),
        format!(
            "  slot 1 -> upstream \"hsm-b\" ({}), token pkcs11:token=vault-b;manufacturer=SoftHSM%20project;serial={};model=SoftHSM%20v2: upstream slot {:#x}",
            bed.copy.display(),
            b.serial,
            b.slot
        ),
        format!(
            "  slot 3 -> upstream \"hsm-a\" ({softhsm}), token pkcs11:slot-description=SoftHSM%20slot%20ID%200x{:x};slot-id={}: upstream slot {:#x}",
            b.slot, b.slot, b.slot
        ),
        format!("  slot 2 -> upstream \"hsm-a\" ({softhsm}), {target}: not present"),
    ] {
        assert!(lines.contains(&want.as_str()), "want {want:?} in:\n{check}");
    }
    let header = lines
        .iter()
        .position(|l| *l == "    no token matches; upstream \"hsm-a\" has:")
        .unwrap_or_else(|| panic!("no list of tokens in:\n{check}"));
    let there: BTreeSet<&str> = lines[header + 1..]
        .iter()
        .take_while(|l| l.starts_with("      "))
        .map(|l| l.trim_start())
        .collect();
    let uri = |label: &str, serial: &str, slot: u64| {
        format!(
            "pkcs11:token={label};manufacturer=SoftHSM%20project;serial={serial};model=SoftHSM%20v2;slot-id={slot}"
        )
    };
    let want = [
        uri("vault-a", &a.serial, a.slot),
        uri("vault-b", &b.serial, b.slot),
        uri("", "", bed.free_slot),
    ];
    assert_eq!(
        there,
        want.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        "{check}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("no token matches"))
            .count(),
        1,
        "only the slot that matches nothing lists tokens:\n{check}"
    );
}

#[test]
fn a_token_that_is_not_there_is_listed_absent_and_found_later() {
    let bed = Bed::new();
    let cfg = bed.config(
        "p11gate.toml",
        r#"[[upstream]]
name = "hsm-a"
path = "@SOFTHSM@"

[[slot]]
id = 0
upstream = "hsm-a"
token_label = "vault-a"

[[slot]]
id = 3
upstream = "hsm-a"
token_label = "vault-c"

[[slot]]
id = 9
upstream = "hsm-a"
upstream_slot = @FREE@

[[app]]
name = "a"
slots = [0, 3, 9]
"#,
    );
    // config check, before the token exists (its output is checked last).
    let env_check = params(&[("SOFTHSM2_CONF", bed.hsm.conf.display().to_string())]);
    let out = harness::cli(
        &["config", "check", &cfg.display().to_string()],
        &env_check,
        "",
    );
    let check = stdout_ok("p11gate config check", &out);

    let log = bed.log("a");
    run_child("missing_token", &bed.env(&cfg, Some("a"), &log));
    assert_log_free_of_secrets(&log, &[]);

    let line = format!(
        "  slot 3 -> upstream \"hsm-a\" ({}), token label \"vault-c\": not present",
        common::softhsm_module().display()
    );
    assert!(
        check.lines().any(|l| l == line),
        "want the line {line:?} in:\n{check}"
    );
}

#[test]
fn config_check_prints_each_apps_slots() {
    let bed = Bed::new();
    let cfg = bed.config(
        "p11gate.toml",
        r#"[[upstream]]
name = "hsm-a"
path = "@SOFTHSM@"
deny = ["CKM_SHA_1"]

[[upstream]]
name = "hsm-b"
path = "@COPY@"

[[slot]]
id = 0
upstream = "hsm-a"
token_label = "vault-a"

[[slot]]
id = 1
upstream = "hsm-b"
token_label = "vault-b"
profiles = ["no-aes-cbc"]

[[slot]]
id = 2
upstream = "hsm-b"
token_label = "vault-a"
allow = ["CKM_AES_GCM", "0x0009"]

[[app]]
name = "alpha"
slots = [0]

[[app]]
name = "beta"
slots = [1, 2]
"#,
    );
    let total = direct_mechanisms(&bed, bed.a.slot).len();
    let env = params(&[("SOFTHSM2_CONF", bed.hsm.conf.display().to_string())]);
    let out = harness::cli(&["config", "check", &cfg.display().to_string()], &env, "");
    let text = stdout_ok("p11gate config check", &out);
    let (softhsm, copy) = (
        common::softhsm_module().display().to_string(),
        bed.copy.display().to_string(),
    );
    // Per app: (slot line, allowed, filtered, the filtered names when they are few).
    type SlotLines = (String, usize, usize, Option<BTreeSet<String>>);
    let expected: Vec<(&str, Vec<SlotLines>)> = vec![
        (
            "alpha",
            vec![(
                format!(
                    "  slot 0 -> upstream \"hsm-a\" ({softhsm}), token label \"vault-a\": upstream slot 0x{:x}",
                    bed.a.slot
                ),
                total - 1,
                1,
                Some(names(&["CKM_SHA_1"])),
            )],
        ),
        (
            "beta",
            vec![
                (
                    format!(
                        "  slot 1 -> upstream \"hsm-b\" ({copy}), token label \"vault-b\": upstream slot 0x{:x}",
                        bed.b.slot
                    ),
                    total - 2,
                    2,
                    Some(names(&["CKM_AES_CBC", "CKM_AES_CBC_PAD"])),
                ),
                (
                    format!(
                        "  slot 2 -> upstream \"hsm-b\" ({copy}), token label \"vault-a\": upstream slot 0x{:x}",
                        bed.a.slot
                    ),
                    2,
                    total - 2,
                    None,
                ),
            ],
        ),
    ];
    // Without FILE, config check reads P11GATE_CONFIG.
    let mut env_default = env.clone();
    env_default.push(("P11GATE_CONFIG".into(), cfg.display().to_string()));
    let out = harness::cli(&["config", "check"], &env_default, "");
    assert_eq!(
        stdout_ok("p11gate config check (P11GATE_CONFIG)", &out),
        text
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let headers: Vec<usize> = (0..lines.len())
        .filter(|&i| !lines[i].starts_with(' '))
        .collect();
    for (app, slots) in &expected {
        let mine: Vec<usize> = headers
            .iter()
            .copied()
            .filter(|&i| lines[i].contains(app))
            .collect();
        assert_eq!(mine.len(), 1, "one header line for app {app} in:\n{text}");
        let end = headers
            .iter()
            .copied()
            .find(|&i| i > mine[0])
            .unwrap_or(lines.len());
        let body = &lines[mine[0] + 1..end];
        assert_eq!(
            body.len(),
            2 * slots.len(),
            "app {app}: a slot line and a mechanisms line per slot in:\n{text}"
        );
        for (k, (slot_line, allowed, filtered, filtered_names)) in slots.iter().enumerate() {
            assert_eq!(body[2 * k], slot_line, "in:\n{text}");
            let mech_line = body[2 * k + 1];
            let prefix = format!("    mechanisms: {allowed} allowed, {filtered} filtered (");
            let inside = mech_line
                .strip_prefix(&prefix)
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or_else(|| panic!("want {prefix:?}...\")\", got {mech_line:?}"));
            let got: BTreeSet<String> = inside.split(',').map(|s| s.trim().to_string()).collect();
            assert_eq!(got.len(), *filtered, "{mech_line:?}");
            match filtered_names {
                Some(want) => assert_eq!(&got, want, "{mech_line:?}"),
                None => {
                    assert!(got.contains("CKM_AES_CBC") && !got.contains("CKM_AES_GCM"));
                    assert!(!got.contains("CKM_RSA_PKCS_OAEP"), "{mech_line:?}");
                }
            }
        }
    }
}

/// One config error: the file's text, the message, and the line(s) it may be reported at.
/// Where the spec does not say whether a table-level error points at the `[[...]]` header or
/// at the key concerned, both lines are accepted.
struct BadConfig {
    name: &'static str,
    text: String,
    lines: &'static [usize],
    message: String,
    /// The message is a prefix (the rest is the parser's list of fields).
    prefix_only: bool,
}

/// Runs `p11gate config check` and C_Initialize (through pkcs11-tool) on `path`; both must
/// fail with the same one line. Returns it.
fn config_error_line(bed: &Bed, path: &Path, tag: &str, extra_env: &[(String, String)]) -> String {
    let check_env = {
        let mut e = params(&[("SOFTHSM2_CONF", bed.hsm.conf.display().to_string())]);
        e.extend_from_slice(extra_env);
        e
    };
    let out = harness::cli(
        &["config", "check", &path.display().to_string()],
        &check_env,
        "",
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{tag}: p11gate config check: {}",
        show(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stderr_lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        stderr_lines.len(),
        1,
        "{tag}: config check prints one line on stderr: {}",
        show(&out)
    );
    let log = bed.log(tag);
    let mut env = bed.env(path, Some("a"), &log);
    env.extend_from_slice(extra_env);
    let init_line = initialize_error_line(&env, &log, tag);
    assert_eq!(
        init_line, stderr_lines[0],
        "{tag}: C_Initialize logged (left) not what config check printed (right)"
    );
    init_line
}

/// C_Initialize (through `pkcs11-tool -I`) fails with CKR_GENERAL_ERROR and logs exactly one
/// line at error level; returns it.
fn initialize_error_line(env: &[(String, String)], log: &Path, tag: &str) -> String {
    let out = gate_tool(env, &["-I"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(TOOL_INIT_FAILED),
        "{tag}: want C_Initialize to fail with CKR_GENERAL_ERROR: {}",
        show(&out)
    );
    let text = read_log(log);
    let errors = log_lines_at(&text, "ERROR");
    assert_eq!(
        errors.len(),
        1,
        "{tag}: one error line in the log, got:\n{text}"
    );
    errors[0].clone()
}

#[test]
fn every_config_error_names_file_and_line() {
    let bed = Bed::new();
    let hash = app_pin_hash();
    let dir = bed.dir().display().to_string();
    let pin_file = bed.dir().join("good.pin");
    harness::write_private(&pin_file, &format!("{USER_PIN}\n"));
    let open_pin = bed.dir().join("open.pin");
    harness::write_private(&open_pin, &format!("{USER_PIN}\n"));
    harness::chmod(&open_pin, 0o644);
    let up = "[[upstream]]\nname = \"hsm-a\"\npath = \"@SOFTHSM@\"\n";
    let slot0 = "[[slot]]\nid = 0\nupstream = \"hsm-a\"\ntoken_label = \"vault-a\"\n";
    let cases = vec![
        BadConfig {
            name: "unknown-field",
            text: "[[upstream]]\nname = \"hsm-a\"\npaht = \"@SOFTHSM@\"\n".into(),
            lines: &[3],
            message: "unknown field `paht`, expected one of ".into(),
            prefix_only: true,
        },
        BadConfig {
            name: "unknown-slot-field",
            text: format!("{up}\n[[slot]]\nid = 0\nupstream = \"hsm-a\"\ntoken_lable = \"vault-a\"\n"),
            lines: &[8],
            message: "unknown field `token_lable`, expected one of ".into(),
            prefix_only: true,
        },
        BadConfig {
            name: "slot-id-twice",
            // 1-3 upstream, 5-8 slot 0, 10-13 slot "0x0" (the same id written as a string)
            text: format!(
                "{up}\n{slot0}\n[[slot]]\nid = \"0x0\"\nupstream = \"hsm-a\"\ntoken_label = \"vault-b\"\n"
            ),
            lines: &[10, 11],
            message: String::new(), // built below: names the first line
            prefix_only: false,
        },
        BadConfig {
            name: "no-such-upstream",
            text: format!(
                "{up}\n[[slot]]\nid = 1\nupstream = \"hsm-z\"\ntoken_label = \"vault-a\"\n"
            ),
            lines: &[5, 7],
            message: "slot 1: no [[upstream]] named \"hsm-z\"".into(),
            prefix_only: false,
        },
        BadConfig {
            name: "unknown-mechanism",
            text: "[[upstream]]\nname = \"hsm-a\"\nallow = [\"CKM_AES_GCM\", \"CKM_FOO\"]\npath = \"@SOFTHSM@\"\n".into(),
            lines: &[3],
            message: "unknown mechanism \"CKM_FOO\" (use a spec name such as CKM_AES_GCM or a number such as 0x1087)".into(),
            prefix_only: false,
        },
        BadConfig {
            name: "unknown-mechanism-in-slot",
            text: format!("{up}\n{slot0}deny = [\"0x1087\", \"CKM_FOO\"]\n"),
            lines: &[9],
            message: "unknown mechanism \"CKM_FOO\" (use a spec name such as CKM_AES_GCM or a number such as 0x1087)".into(),
            prefix_only: false,
        },
        BadConfig {
            name: "unknown-profile",
            text: "[[upstream]]\nname = \"hsm-a\"\nprofiles = [\"x\"]\npath = \"@SOFTHSM@\"\n".into(),
            lines: &[3],
            message: "unknown profile \"x\" (known: no-aes-gcm, no-aes-cbc, fortanix-hsm-gateway)".into(),
            prefix_only: false,
        },
        BadConfig {
            name: "credential-file-missing",
            text: format!(
                "{up}\n{slot0}credential_file = \"{dir}/missing.pin\"\npin_hash = \"{hash}\"\n"
            ),
            lines: &[5, 9],
            message: format!(
                "slot 0: credential file {dir}/missing.pin: No such file or directory (os error 2)"
            ),
            prefix_only: false,
        },
        BadConfig {
            name: "credential-file-open",
            text: format!(
                "{up}\n{slot0}credential_file = \"{}\"\npin_hash = \"{hash}\"\n",
                open_pin.display()
            ),
            lines: &[5, 9],
            message: format!(
                "slot 0: credential file {} is accessible by others (mode 0644); chmod o-rwx it",
                open_pin.display()
            ),
            prefix_only: false,
        },
        BadConfig {
            name: "app-unknown-slot",
            // 1-3 upstream, 5-8 slot 0, 10-12 app
            text: format!("{up}\n{slot0}\n[[app]]\nname = \"vault-b\"\nslots = [0, 7]\n"),
            lines: &[10, 12],
            message: "app \"vault-b\": no [[slot]] with id 7".into(),
            prefix_only: false,
        },
        BadConfig {
            name: "two-targets",
            text: format!(
                "{up}\n[[slot]]\nid = 0\nupstream = \"hsm-a\"\ntoken_label = \"vault-a\"\nupstream_slot = @SLOT_A@\n"
            ),
            lines: &[5, 6],
            message: "slot 0: give exactly one of token_label, token_serial, token_uri, upstream_slot".into(),
            prefix_only: false,
        },
        BadConfig {
            name: "no-target",
            text: format!("{up}\n[[slot]]\nid = 0\nupstream = \"hsm-a\"\n"),
            lines: &[5, 6],
            message: "slot 0: give exactly one of token_label, token_serial, token_uri, upstream_slot".into(),
            prefix_only: false,
        },
        BadConfig {
            name: "credential-without-hash",
            text: format!("{up}\n{slot0}credential_file = \"{}\"\n", pin_file.display()),
            lines: &[5, 6, 9],
            message: "slot 0: a credential needs pin_hash (make one with `p11gate hash-pin`)".into(),
            prefix_only: false,
        },
        BadConfig {
            name: "token-uri-syntax",
            // 1-3 upstream, 5-8 slot 0 (its token_uri on line 8)
            text: format!(
                "{up}\n[[slot]]\nid = 0\nupstream = \"hsm-a\"\ntoken_uri = \"pkcs11:token=vault a\"\n"
            ),
            lines: &[8],
            message: "token_uri: invalid PKCS#11 URI at character 19: in token: ' ' must be \
                      percent-encoded as %20"
                .into(),
            prefix_only: false,
        },
        BadConfig {
            name: "token-uri-pin-value",
            text: format!(
                "{up}\n[[slot]]\nid = 0\nupstream = \"hsm-a\"\ntoken_uri = \"pkcs11:token=vault-a?pin-value={APP_PIN}\"\n"
            ),
            lines: &[8],
            message: "slot 0: token_uri has a pin-value: a PIN does not belong in the \
                      configuration's URI (it would sit in clear text wherever the URI is shown); \
                      give the upstream credential with credential_file or credential_env, and \
                      pin_hash"
                .into(),
            prefix_only: false,
        },
        BadConfig {
            name: "token-uri-object",
            text: format!(
                "{up}\n[[slot]]\nid = 0\nupstream = \"hsm-a\"\ntoken_uri = \"pkcs11:token=vault-a;object=vault-key;type=secret-key\"\n"
            ),
            lines: &[8],
            message: "slot 0: token_uri names an object (object, type): a slot target names a \
                      token; which key to use is the application's choice"
                .into(),
            prefix_only: false,
        },
        BadConfig {
            name: "credential-env-without-hash",
            text: format!("{up}\n{slot0}credential_env = \"HSM_A_PIN\"\n"),
            lines: &[5, 6, 9],
            message: "slot 0: a credential needs pin_hash (make one with `p11gate hash-pin`)".into(),
            prefix_only: false,
        },
    ];
    std::thread::scope(|scope| {
        for case in &cases {
            let bed = &bed;
            scope.spawn(move || {
                let path = bed.config(&format!("{}.toml", case.name), &case.text);
                let got = config_error_line(bed, &path, case.name, &[]);
                assert_log_free_of_secrets(&bed.log(case.name), &[APP_PIN]);
                let file = path.display().to_string();
                let ok_line = case.lines.iter().any(|line| {
                    let message = if case.name == "slot-id-twice" {
                        format!("slot id 0 is used twice (first at line {})", line - 5)
                    } else {
                        case.message.clone()
                    };
                    let want = format!("config {file}:{line}: {message}");
                    if case.prefix_only {
                        got.starts_with(&want) && got.len() > want.len()
                    } else {
                        got == want
                    }
                });
                assert!(
                    ok_line,
                    "{}: got   {got:?}\nwant (at line {:?}) {:?}",
                    case.name, case.lines, case.message
                );
            });
        }
    });
}

#[test]
fn app_and_upstream_selection_errors() {
    let bed = Bed::new();
    let cfg = bed.config("p11gate.toml", TWO_APPS);
    let file = cfg.display().to_string();

    // P11GATE_APP naming no [[app]].
    let log = bed.log("no-such-app");
    let line = initialize_error_line(&bed.env(&cfg, Some("x"), &log), &log, "no-such-app");
    assert_eq!(
        line,
        format!("P11GATE_APP=\"x\": no [[app]] named \"x\" in {file}")
    );

    // [[app]] entries, no default_app, no P11GATE_APP.
    let log = bed.log("no-app");
    let line = initialize_error_line(&bed.env(&cfg, None, &log), &log, "no-app");
    assert!(
        line.starts_with("no app selected: set P11GATE_APP or default_app"),
        "{line:?}"
    );

    // P11GATE_UPSTREAM while the file has [[upstream]] entries.
    let log = bed.log("env-upstream");
    let mut env = bed.env(&cfg, Some("a"), &log);
    env.push((
        "P11GATE_UPSTREAM".into(),
        common::softhsm_module().display().to_string(),
    ));
    let line = initialize_error_line(&env, &log, "env-upstream");
    assert!(line.contains("P11GATE_UPSTREAM"), "{line:?}");

    // Two upstreams without [[slot]] entries: which one would serve is not defined.
    let two = bed.config(
        "two-upstreams.toml",
        "[[upstream]]\nname = \"hsm-a\"\npath = \"@SOFTHSM@\"\n\n[[upstream]]\nname = \"hsm-b\"\npath = \"@COPY@\"\n",
    );
    config_error_line(&bed, &two, "two-upstreams", &[]);

    // The valid config is valid: the same C_Initialize works with an app selected.
    let log = bed.log("valid");
    let out = gate_tool(&bed.env(&cfg, Some("a"), &log), &["-I"]);
    stdout_ok("pkcs11-tool -I with a valid config", &out);
    assert!(log_lines_at(&read_log(&log), "ERROR").is_empty());
}

#[test]
fn filtered_mechanisms_are_exactly_the_ones_missing_from_the_list() {
    let bed = Bed::new();
    let cfg = bed.config(
        "p11gate.toml",
        r#"[[upstream]]
name = "hsm-a"
path = "@SOFTHSM@"
deny = ["CKM_SHA_1"]

[[upstream]]
name = "hsm-b"
path = "@COPY@"

[[slot]]
id = 0
upstream = "hsm-a"
token_label = "vault-a"
profiles = ["no-aes-cbc"]

[[slot]]
id = 1
upstream = "hsm-b"
token_label = "vault-b"
deny = ["0x1087", "CKM_SHA256_HMAC"]

[[slot]]
id = 2
upstream = "hsm-b"
token_label = "vault-b"
allow = ["CKM_AES_GCM", "CKM_RSA_PKCS_OAEP", "0x1080", "CKM_SHA256"]
deny = ["CKM_SHA256"]

[[slot]]
id = 3
upstream = "hsm-a"
token_label = "vault-a"
profiles = ["fortanix-hsm-gateway", "no-aes-gcm"]

[[upstream]]
name = "hsm-c"
path = "@SOFTHSM@"
allow = ["CKM_AES_GCM", "CKM_RSA_PKCS_OAEP", "CKM_AES_KEY_GEN"]

[[slot]]
id = 4
upstream = "hsm-c"
token_label = "vault-b"
allow = ["CKM_RSA_PKCS_OAEP", "CKM_AES_KEY_GEN", "CKM_SHA256"]
"#,
    );
    let direct_a = direct_mechanisms(&bed, bed.a.slot);
    let direct_b = direct_mechanisms(&bed, bed.b.slot);
    // No [[app]]: every slot is visible.
    let log = bed.log("all");
    let env = bed.env(&cfg, None, &log);
    let listed: BTreeSet<u64> = tool_slots(&stdout_ok("pkcs11-tool -L", &gate_tool(&env, &["-L"])))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, BTreeSet::from([0, 1, 2, 3, 4]));

    assert_eq!(
        missing_mechanisms(&direct_a, &env, 0),
        names(&["SHA-1", "AES-CBC", "AES-CBC-PAD"])
    );
    assert_eq!(
        missing_mechanisms(&direct_b, &env, 1),
        names(&["AES-GCM", "SHA256-HMAC"])
    );
    let kept = ["AES-GCM", "RSA-PKCS-OAEP", "AES-KEY-GEN"];
    let all_b: BTreeSet<String> = direct_b.iter().map(|l| mechanism_name(l)).collect();
    let want: BTreeSet<String> = all_b.difference(&names(&kept)).cloned().collect();
    assert_eq!(missing_mechanisms(&direct_b, &env, 2), want);
    assert_eq!(
        missing_mechanisms(&direct_a, &env, 3),
        names(&["SHA-1", "AES-CBC", "AES-CBC-PAD", "AES-GCM"])
    );
    // Two allow lists (upstream's and slot's): only what both name.
    let both = ["RSA-PKCS-OAEP", "AES-KEY-GEN"];
    let want: BTreeSet<String> = all_b.difference(&names(&both)).cloned().collect();
    assert_eq!(missing_mechanisms(&direct_b, &env, 4), want);
    assert_log_free_of_secrets(&log, &[]);
}

#[test]
fn without_slot_entries_ids_pass_through_and_rules_still_apply() {
    let bed = Bed::new();
    let cfg = bed.config(
        "p11gate.toml",
        "[[upstream]]\nname = \"hsm-a\"\npath = \"@SOFTHSM@\"\nprofiles = [\"no-aes-gcm\"]\ndeny = [\"CKM_SHA_1\"]\n",
    );
    let log = bed.log("passthrough");
    let env = bed.env(&cfg, None, &log);
    let direct = stdout_ok("pkcs11-tool -L (SoftHSMv2)", &bed.direct_tool(&["-L"]));
    let gate = stdout_ok("pkcs11-tool -L (p11gate)", &gate_tool(&env, &["-L"]));
    assert_eq!(tool_slots(&gate), tool_slots(&direct));
    assert!(tool_slots(&gate).contains(&(bed.a.slot, "vault-a".to_string())));
    let direct_a = direct_mechanisms(&bed, bed.a.slot);
    assert_eq!(
        missing_mechanisms(&direct_a, &env, bed.a.slot),
        names(&["AES-GCM", "SHA-1"])
    );
    assert_log_free_of_secrets(&log, &[]);
}

#[test]
fn refused_mechanisms_never_reach_the_upstream_and_are_logged() {
    let bed = Bed::new();
    let cfg = bed.config(
        "p11gate.toml",
        r#"[[upstream]]
name = "spied"
path = "@SPY@"
profiles = ["no-aes-gcm"]

[[slot]]
id = 0
upstream = "spied"
token_label = "vault-a"
deny = ["CKM_SHA256", "CKM_SHA256_HMAC", "CKM_RSA_PKCS", "CKM_GENERIC_SECRET_KEY_GEN", "CKM_RSA_PKCS_KEY_PAIR_GEN", "CKM_AES_KEY_WRAP", "CKM_AES_ECB_ENCRYPT_DATA"]

[[app]]
name = "a"
slots = [0]
"#,
    );
    let spy_log = bed.dir().join("spy.log");
    let log = bed.log("refusals");
    let mut env = bed.env(&cfg, Some("a"), &log);
    env.extend(spy_env(&spy_log));
    run_child("refusals", &env);

    let spy = std::fs::read_to_string(&spy_log).expect("spy log");
    // The spy saw the allowed calls, so it was in the path...
    assert_eq!(spy_calls(&spy, "C_Login"), 1, "spy log:\n{spy}");
    assert_eq!(spy_calls(&spy, "C_GenerateKey"), 1, "the allowed one only");
    assert_eq!(spy_calls(&spy, "C_EncryptInit"), 1, "the allowed one only");
    assert_eq!(spy_calls(&spy, "C_DigestInit"), 1, "the allowed one only");
    assert!(spy.contains("CKM_AES_CBC_PAD"), "the allowed C_EncryptInit");
    // ...and none of the refused calls reached it.
    for f in [
        "C_DecryptInit",
        "C_SignInit",
        "C_VerifyInit",
        "C_SignRecoverInit",
        "C_VerifyRecoverInit",
        "C_GenerateKeyPair",
        "C_WrapKey",
        "C_UnwrapKey",
        "C_DeriveKey",
    ] {
        assert_eq!(spy_calls(&spy, f), 0, "{f} reached the upstream");
    }

    let text = read_log(&log);
    let warns = log_lines_at(&text, "WARN");
    assert!(
        warns.contains(
            &"C_EncryptInit: CKM_AES_GCM refused on slot 0 by profile \"no-aes-gcm\" of upstream \"spied\""
                .to_string()
        ),
        "warnings:\n{}",
        warns.join("\n")
    );
    let want = "C_DecryptInit: CKM_AES_GCM refused on slot 0 by profile \"no-aes-gcm\" of upstream \"spied\"";
    assert!(warns.iter().any(|w| w == want), "no warning {want:?}");
    for (function, mechanism) in &REFUSALS[2..] {
        let prefix = format!("{function}: {mechanism} refused on slot 0 by ");
        let hits: Vec<&String> = warns.iter().filter(|w| w.starts_with(&prefix)).collect();
        assert_eq!(
            hits.len(),
            1,
            "one warning {prefix:?}... naming the deny rule; warnings:\n{}",
            warns.join("\n")
        );
        assert!(hits[0].contains("deny"), "{:?} names no rule", hits[0]);
    }
    assert_log_free_of_secrets(&log, &[]);
}

#[test]
fn vault_seal_under_no_aes_gcm_uses_rsa_oaep() {
    let bed = Bed::new();
    let cfg = bed.config(
        "p11gate.toml",
        r#"default_app = "vault"

[[upstream]]
name = "hsm-a"
path = "@SOFTHSM@"

[[slot]]
id = 0
upstream = "hsm-a"
token_label = "vault-a"
profiles = ["no-aes-gcm"]

[[slot]]
id = 1
upstream = "hsm-a"
token_label = "vault-b"

[[app]]
name = "vault"
slots = [0, 1]
"#,
    );
    let log = bed.log("vault");
    run_child("vault_flow", &bed.env(&cfg, None, &log));
    let warns = log_lines_at(&read_log(&log), "WARN");
    // The rule is the slot's own profile here (the spec words only the upstream case).
    let prefix = "C_EncryptInit: CKM_AES_GCM refused on slot 0 by profile \"no-aes-gcm\"";
    assert!(
        warns.iter().any(|w| w.starts_with(prefix)),
        "no warning {prefix:?}...; warnings:\n{}",
        warns.join("\n")
    );
    assert_log_free_of_secrets(&log, &["a 32-byte data key for the seal!"]);
}

#[test]
fn require_non_extractable_fills_in_safe_flags_and_refuses_unsafe_templates() {
    let bed = Bed::new();
    let cfg = bed.config(
        "p11gate.toml",
        r#"[[upstream]]
name = "spied"
path = "@SPY@"

[[slot]]
id = 0
upstream = "spied"
token_label = "vault-a"
require_non_extractable = true

[[slot]]
id = 1
upstream = "spied"
token_label = "vault-a"

[[app]]
name = "a"
slots = [0, 1]
"#,
    );
    let spy_log = bed.dir().join("spy.log");
    let log = bed.log("nx");
    let mut env = bed.env(&cfg, Some("a"), &log);
    env.extend(spy_env(&spy_log));
    run_child("non_extractable", &env);
    let spy = std::fs::read_to_string(&spy_log).expect("spy log");
    // Exactly the calls the policy let through reach the upstream.
    for (f, n) in [
        ("C_GenerateKey", 3),
        ("C_GenerateKeyPair", 2),
        ("C_CreateObject", 3),
        ("C_SetAttributeValue", 1),
        ("C_CopyObject", 2),
        ("C_UnwrapKey", 0),
        ("C_DeriveKey", 0),
    ] {
        assert_eq!(
            spy_calls(&spy, f),
            n,
            "{f}: only the allowed calls reach the upstream"
        );
    }
    assert_log_free_of_secrets(&log, &[]);
}

#[test]
fn read_only_slot_refuses_every_write() {
    let bed = Bed::new();
    let cfg = bed.config(
        "p11gate.toml",
        r#"[[upstream]]
name = "hsm-a"
path = "@SOFTHSM@"

[[slot]]
id = 0
upstream = "hsm-a"
token_label = "vault-a"

[[slot]]
id = 5
upstream = "hsm-a"
token_label = "vault-a"
read_only = true

[[app]]
name = "a"
slots = [0, 5]
"#,
    );
    let log = bed.log("ro");
    run_child("read_only", &bed.env(&cfg, Some("a"), &log));
    // SoftHSMv2 directly: the token still has its label and its PIN.
    let out = bed.direct_tool(&[
        "--login",
        "--pin",
        USER_PIN,
        "-O",
        "--slot",
        &bed.a.slot.to_string(),
    ]);
    let text = stdout_ok("pkcs11-tool -O (SoftHSMv2)", &out);
    assert!(text.contains("label:      ro-key"), "{text}");
    assert_log_free_of_secrets(&log, &["new-user-pin-1"]);
}

/// A config where slot 0 (vault-a) holds a credential given by `credential` (a TOML line).
fn pin_mapping_config(bed: &Bed, credential: &str) -> std::path::PathBuf {
    bed.config(
        "p11gate.toml",
        &format!(
            r#"[[upstream]]
name = "hsm-a"
path = "@SOFTHSM@"

[[slot]]
id = 0
upstream = "hsm-a"
token_label = "vault-a"
{credential}
pin_hash = "{}"

[[slot]]
id = 1
upstream = "hsm-a"
token_label = "vault-b"

[[app]]
name = "a"
slots = [0, 1]
"#,
            app_pin_hash()
        ),
    )
}

/// The `token flags` line SoftHSMv2 itself shows for `slot`.
fn direct_token_flags(bed: &Bed, slot: u64) -> String {
    let text = stdout_ok("pkcs11-tool -L (SoftHSMv2)", &bed.direct_tool(&["-L"]));
    let mut in_slot = false;
    for line in text.lines() {
        if line.starts_with("Slot ") {
            in_slot = line.contains(&format!("(0x{slot:x})"));
        } else if in_slot {
            if let Some(flags) = harness::field(line, "token flags") {
                return flags;
            }
        }
    }
    panic!("no token flags for slot 0x{slot:x} in:\n{text}")
}

#[test]
fn app_pin_maps_to_the_credential_file() {
    let bed = Bed::new();
    let pin_file = bed.dir().join("a.pin");
    harness::write_private(&pin_file, &format!("{USER_PIN}\n"));
    // Readable by its group is allowed: only "others" bits are refused.
    harness::chmod(&pin_file, 0o640);
    let cfg = pin_mapping_config(
        &bed,
        &format!("credential_file = \"{}\"", pin_file.display()),
    );
    let log = bed.log("pin");
    let env = bed.env(&cfg, Some("a"), &log);
    run_child(
        "pin_mapping",
        &with(
            env.clone(),
            &[("SM_APP_PIN", APP_PIN.into()), ("SM_FULL", "1".into())],
        ),
    );
    // SoftHSMv2's own view: the wrong PINs never reached its counter...
    let flags = direct_token_flags(&bed, bed.a.slot);
    assert!(!flags.contains("user PIN count low"), "{flags}");
    // ...which does show a wrong PIN that does reach it (so the check above can fail).
    let out = bed.direct_tool(&[
        "--login",
        "--pin",
        WRONG_PIN,
        "-O",
        "--slot",
        &bed.b.slot.to_string(),
    ]);
    assert!(!out.status.success());
    assert!(direct_token_flags(&bed, bed.b.slot).contains("user PIN count low"));

    // pkcs11-tool as the app: its own PIN works, the upstream's does not.
    let out = gate_tool(&env, &["--login", "--pin", APP_PIN, "-O", "--slot", "0"]);
    let text = stdout_ok("pkcs11-tool --login with the app PIN", &out);
    assert!(text.contains("label:      pin-mapped"), "{text}");
    let out = gate_tool(&env, &["--login", "--pin", USER_PIN, "-O", "--slot", "0"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CKR_PIN_INCORRECT"),
        "{}",
        show(&out)
    );
    assert_log_free_of_secrets(
        &log,
        &[APP_PIN, WRONG_PIN, "another-app-pin", "another-user-pin"],
    );
}

#[test]
fn app_pin_maps_to_the_credential_env() {
    let bed = Bed::new();
    let cfg = pin_mapping_config(&bed, "credential_env = \"VAULT_A_HSM_PIN\"");
    let log = bed.log("pin-env");
    let env = with(
        bed.env(&cfg, Some("a"), &log),
        &[("VAULT_A_HSM_PIN", USER_PIN.into())],
    );
    run_child(
        "pin_mapping",
        &with(env.clone(), &[("SM_APP_PIN", APP_PIN.into())]),
    );
    let flags = direct_token_flags(&bed, bed.a.slot);
    assert!(!flags.contains("user PIN count low"), "{flags}");
    assert_log_free_of_secrets(&log, &[APP_PIN, WRONG_PIN]);
}

#[test]
fn hash_pin_reads_stdin_and_salts_every_hash() {
    let one = harness::hash_pin("some-app-pin");
    let two = harness::hash_pin("some-app-pin");
    assert_ne!(one, two, "the same PIN hashed twice must get two salts");
    assert!(!one.contains("some-app-pin"));
}

#[test]
fn one_module_under_two_upstream_names() {
    let bed = Bed::new();
    let cfg = bed.config(
        "p11gate.toml",
        r#"[[upstream]]
name = "one"
path = "@SOFTHSM@"

[[upstream]]
name = "two"
path = "@SOFTHSM@"

[[slot]]
id = 0
upstream = "one"
token_label = "vault-a"

[[slot]]
id = 1
upstream = "two"
token_label = "vault-b"
"#,
    );
    let log = bed.log("twice");
    run_child("same_module_twice", &bed.env(&cfg, None, &log));
    assert_log_free_of_secrets(&log, &[]);
}
