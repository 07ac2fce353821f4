//! Vault's `seal "pkcs11"` replayed with the cryptoki crate as the client. Everything here takes
//! the module path as a parameter, so the same flow runs against SoftHSMv2 directly and through
//! p11gate, and the observable results ([`Report`]) of both runs can be compared.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Condvar, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use pkcs11_sys::{
    CKA_ID, CKA_MODULUS, CKA_VALUE, CKR_ATTRIBUTE_SENSITIVE, CKR_BUFFER_TOO_SMALL,
    CKR_CRYPTOKI_NOT_INITIALIZED, CKR_OK, CKR_OPERATION_NOT_INITIALIZED,
    CKR_SESSION_HANDLE_INVALID, CK_RV, CK_ULONG, CK_UNAVAILABLE_INFORMATION,
};

use super::common::{SO_PIN, USER_PIN};
use super::raw::Raw;

pub const AES_LABEL: &str = "vault-seal-aes-key";
/// The key a rotation adds (`key_label` changes, the old key stays for old entries).
pub const AES_ROTATED_LABEL: &str = "vault-seal-aes-key-2";
pub const RSA_LABEL: &str = "vault-seal-rsa-key";
pub const HMAC_LABEL: &str = "vault-seal-hmac-key";
/// A PIN nobody has: what a mistyped `VAULT_HSM_PIN` sends.
pub const WRONG_PIN: &str = "wrong-pin-Zq93Lx";

/// Distinctive plaintexts (Vault's raw payloads); the log check searches for them.
pub const GCM_PAYLOAD: &[u8] = b"plaintext-GCM-payload-kX7mQ2vR9wLp";
pub const CBC_PAYLOAD: &[u8] = b"plaintext-CBC-payload-Hn4tY8cJ3bVe";
pub const RSA_PAYLOAD: &[u8] = b"plaintext-RSA-payload-Pw6gD1sF5zKa";
pub const RAW_PAYLOAD: &[u8] = b"plaintext-RAW-twocall-Ud2mE7qN0xTo";

/// A PKCS#11 failure as the client saw it: which function, which return value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub function: String,
    pub rv: RvError,
}

pub fn failure(e: Error) -> Failure {
    match e {
        Error::Pkcs11(rv, f) => Failure {
            function: format!("{f:?}"),
            rv,
        },
        other => panic!("expected a PKCS#11 return value, got {other:?}"),
    }
}

pub fn expect_failure<T: std::fmt::Debug>(r: cryptoki::error::Result<T>, what: &str) -> Failure {
    match r {
        Ok(v) => panic!("{what}: expected a failure, got Ok({v:?})"),
        Err(e) => failure(e),
    }
}

/// Where the modules the flow runs against differ (the assertions that do not depend on it are
/// the same for every profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// RSA-OAEP with SHA-256 / MGF1-SHA256 (Vault's default `rsa_oaep_hash`) round-trips; when
    /// false it is expected to be refused (SoftHSMv2 2.6 does OAEP with SHA-1 only).
    pub oaep_sha256: bool,
    /// Also seal with CKM_AES_CBC (0x1082: the caller pads, PKCS#7) + HMAC-SHA256, besides
    /// CKM_AES_CBC_PAD.
    pub aes_cbc: bool,
}

/// SoftHSMv2 2.6, directly or through p11gate.
pub const SOFTHSM: Profile = Profile {
    oaep_sha256: false,
    aes_cbc: false,
};

/// p11gate's built-in soft token (tests/vault_seal_soft.rs).
#[allow(dead_code)]
pub const SOFT_TOKEN: Profile = Profile {
    oaep_sha256: true,
    aes_cbc: true,
};

/// How a module answered a request that may be refused (by one profile, or by every module that
/// is right). Compares equal to a [`Failure`] only when it is that refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Refused(Failure),
    Worked,
}

impl PartialEq<Failure> for Answer {
    fn eq(&self, other: &Failure) -> bool {
        matches!(self, Answer::Refused(f) if f == other)
    }
}

/// [`Answer::Refused`] with the failure, or [`Answer::Worked`].
pub fn answer<T>(r: cryptoki::error::Result<T>) -> Answer {
    match r {
        Ok(_) => Answer::Worked,
        Err(e) => Answer::Refused(failure(e)),
    }
}

/// What one run of the flow observed that must not depend on whether p11gate sits in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// C_GetMechanismList of the token's slot, sorted.
    pub mechanisms: Vec<CK_ULONG>,
    pub wrong_pin: Failure,
    pub gcm_bad_tag: Failure,
    /// An old entry opened with the rotated (wrong) key.
    pub gcm_wrong_key: Failure,
    pub hmac_bad_mac: Failure,
    /// C_Sign(CKM_SHA256_HMAC) with the AES key. Recorded rather than asserted on the spot, so a
    /// module that wrongly serves it still runs the rest of the flow; the tests assert the refusal.
    pub hmac_with_aes_key: Answer,
    pub oaep_sha256_encrypt: Answer,
    pub oaep_sha256_decrypt: Answer,
    /// With `Profile::oaep_sha256`: an OAEP-SHA256 ciphertext decrypted as OAEP-SHA1.
    pub oaep_wrong_hash: Option<Failure>,
    /// With `Profile::aes_cbc`: C_Encrypt(CKM_AES_CBC) of data that is not a whole number of blocks.
    pub cbc_unaligned: Option<Failure>,
    /// (call, rv, *pulLen) of every raw call in the two-call checks.
    pub raw_calls: Vec<(&'static str, CK_RV, CK_ULONG)>,
    /// C_Encrypt on the pre-restart session handle: after C_Finalize, then after C_Initialize.
    pub stale_session: (CK_RV, CK_RV),
}

/// A run's report plus what the secrets check greps the log for.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    pub slot: u64,
    /// Every plaintext the flow encrypted or MACed (random data keys included).
    pub plaintexts: Vec<Vec<u8>>,
    pub ciphertexts: Vec<Vec<u8>>,
}

/// One loaded module; finalised on drop if initialised, so a failing test leaves the process
/// clean for the next one.
pub struct Client {
    ctx: Option<Pkcs11>,
    initialized: bool,
}

impl Client {
    pub fn load(module: &Path) -> Client {
        let ctx =
            Pkcs11::new(module).unwrap_or_else(|e| panic!("loading {}: {e}", module.display()));
        Client {
            ctx: Some(ctx),
            initialized: false,
        }
    }

    /// `C_Initialize` exactly as Vault calls it: CKF_OS_LOCKING_OK, no mutex callbacks.
    pub fn initialize(&mut self) -> cryptoki::error::Result<()> {
        self.ctx()
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
        self.initialized = true;
        Ok(())
    }

    pub fn init(module: &Path) -> Client {
        let mut c = Client::load(module);
        c.initialize()
            .unwrap_or_else(|e| panic!("C_Initialize of {}: {e}", module.display()));
        c
    }

    pub fn ctx(&self) -> &Pkcs11 {
        self.ctx.as_ref().expect("context")
    }

    /// `C_Finalize`, which must succeed; the context is dropped with it.
    pub fn finalize(mut self) {
        self.initialized = false;
        let ctx = self.ctx.take().expect("context");
        ctx.finalize().expect("C_Finalize");
    }

    /// Slot by token label: C_GetSlotList(tokenPresent) + C_GetTokenInfo, exactly one match.
    pub fn slot_by_label(&self, label: &str) -> Slot {
        let slots = self
            .ctx()
            .get_slots_with_token()
            .expect("C_GetSlotList(tokenPresent)");
        let matching: Vec<Slot> = slots
            .into_iter()
            .filter(|s| {
                self.ctx()
                    .get_token_info(*s)
                    .expect("C_GetTokenInfo")
                    .label()
                    == label
            })
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "exactly one token labelled {label:?}: {matching:?}"
        );
        matching[0]
    }

    pub fn login(&self, s: &Session) {
        s.login(UserType::User, Some(&AuthPin::from(USER_PIN)))
            .expect("C_Login(CKU_USER)");
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(ctx) = self.ctx.take() {
            if self.initialized {
                let _ = ctx.finalize();
            }
        }
    }
}

/// The keys Vault works with, as found by label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub aes: ObjectHandle,
    pub aes_id: Vec<u8>,
    pub rsa_pub: ObjectHandle,
    pub rsa_priv: ObjectHandle,
    pub rsa_id: Vec<u8>,
    pub modulus: Vec<u8>,
    pub hmac: ObjectHandle,
    pub hmac_id: Vec<u8>,
}

/// Which keys a find-or-generate pass had to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generated {
    pub aes: bool,
    pub rsa: bool,
    pub hmac: bool,
}

/// `C_FindObjectsInit` / one `C_FindObjects(max 2)` / `C_FindObjectsFinal`, as Vault does; more
/// than one match is an error for Vault.
pub fn find_one(s: &Session, template: &[Attribute]) -> Option<ObjectHandle> {
    let found: Vec<ObjectHandle> = s
        .iter_objects_with_cache_size(template, NonZeroUsize::new(2).unwrap())
        .expect("C_FindObjectsInit")
        .take(2)
        .collect::<cryptoki::error::Result<_>>()
        .expect("C_FindObjects");
    assert!(
        found.len() <= 1,
        "more than one object matches {template:?}: {found:?}"
    );
    found.first().copied()
}

/// A fresh CKA_ID: the decimal digits of a random 32-bit number (from the token's RNG).
fn random_id(s: &Session) -> Vec<u8> {
    let r = s.generate_random_vec(4).expect("C_GenerateRandom(4)");
    u32::from_le_bytes(r.try_into().unwrap())
        .to_string()
        .into_bytes()
}

fn attrs(s: &Session, h: ObjectHandle, types: &[AttributeType]) -> Vec<Attribute> {
    let got = s.get_attributes(h, types).expect("C_GetAttributeValue");
    assert_eq!(
        got.len(),
        types.len(),
        "every attribute of {types:?} is readable: {got:?}"
    );
    got
}

fn id_of(a: &Attribute) -> Vec<u8> {
    match a {
        Attribute::Id(id) => id.clone(),
        other => panic!("expected CKA_ID, got {other:?}"),
    }
}

fn bytes_of(a: &Attribute) -> Vec<u8> {
    match a {
        Attribute::Modulus(v) | Attribute::PublicExponent(v) => v.clone(),
        other => panic!("expected a byte attribute, got {other:?}"),
    }
}

fn aes_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn hmac_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

fn rsa_template(class: ObjectClass, label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(class),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// Vault's AES key setup for one label (also a rotation: a new key under a new label):
/// find, else generate with Vault's template and find again. Returns (handle, CKA_ID, generated).
pub fn find_or_generate_aes(s: &Session, label: &str) -> (ObjectHandle, Vec<u8>, bool) {
    let mut generated = false;
    let aes = match find_one(s, &aes_template(label)) {
        Some(h) => h,
        None => {
            generated = true;
            let id = random_id(s);
            let h = s
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::AES),
                        Attribute::ValueLen(32.into()),
                        Attribute::Label(label.as_bytes().to_vec()),
                        Attribute::Id(id.clone()),
                        Attribute::Private(true),
                        Attribute::Token(true),
                        Attribute::Sensitive(true),
                        Attribute::Encrypt(true),
                        Attribute::Decrypt(true),
                        Attribute::Wrap(true),
                        Attribute::Unwrap(true),
                        Attribute::Extractable(false),
                    ],
                )
                .expect("C_GenerateKey(CKM_AES_KEY_GEN)");
            let found = find_one(s, &aes_template(label)).expect("generated AES key is found");
            assert_eq!(
                found, h,
                "lookup after generation returns the generated AES key"
            );
            assert_eq!(
                id_of(&attrs(s, h, &[AttributeType::Id])[0]),
                id,
                "AES CKA_ID as generated"
            );
            h
        }
    };
    let a = attrs(s, aes, &[AttributeType::Id, AttributeType::KeyType]);
    assert_eq!(a[1], Attribute::KeyType(KeyType::AES));
    (aes, id_of(&a[0]), generated)
}

/// Vault's key setup with `generate_key = "true"`: look each key up by label, generate it with
/// Vault's template when absent, then look it up again and read CKA_ID / CKA_KEY_TYPE (and for
/// RSA CKA_MODULUS / CKA_PUBLIC_EXPONENT).
pub fn find_or_generate(s: &Session) -> (Keys, Generated) {
    let mut generated = Generated {
        aes: false,
        rsa: false,
        hmac: false,
    };

    // AES-256.
    let (aes, aes_id, gen_aes) = find_or_generate_aes(s, AES_LABEL);
    generated.aes = gen_aes;

    // RSA-2048, e = 65537.
    let (rsa_pub, rsa_priv) = match (
        find_one(s, &rsa_template(ObjectClass::PUBLIC_KEY, RSA_LABEL)),
        find_one(s, &rsa_template(ObjectClass::PRIVATE_KEY, RSA_LABEL)),
    ) {
        (Some(p), Some(q)) => (p, q),
        (None, None) => {
            generated.rsa = true;
            let id = random_id(s);
            let label = Attribute::Label(RSA_LABEL.as_bytes().to_vec());
            let (p, q) = s
                .generate_key_pair(
                    &Mechanism::RsaPkcsKeyPairGen,
                    &[
                        Attribute::ModulusBits(2048.into()),
                        Attribute::PublicExponent(vec![1, 0, 1]),
                        Attribute::Encrypt(true),
                        Attribute::Wrap(true),
                        Attribute::Token(true),
                        label.clone(),
                        Attribute::Id(id.clone()),
                    ],
                    &[
                        Attribute::Decrypt(true),
                        Attribute::Unwrap(true),
                        Attribute::Token(true),
                        Attribute::Extractable(false),
                        label,
                        Attribute::Id(id.clone()),
                    ],
                )
                .expect("C_GenerateKeyPair(CKM_RSA_PKCS_KEY_PAIR_GEN)");
            let fp = find_one(s, &rsa_template(ObjectClass::PUBLIC_KEY, RSA_LABEL)).expect("pub");
            let fq = find_one(s, &rsa_template(ObjectClass::PRIVATE_KEY, RSA_LABEL)).expect("priv");
            assert_eq!(
                (fp, fq),
                (p, q),
                "lookup after generation returns the generated pair"
            );
            assert_eq!(
                id_of(&attrs(s, q, &[AttributeType::Id])[0]),
                id,
                "RSA CKA_ID as generated"
            );
            (p, q)
        }
        other => panic!("half an RSA key pair on the token: {other:?}"),
    };
    let rsa_types = [
        AttributeType::Id,
        AttributeType::KeyType,
        AttributeType::Modulus,
        AttributeType::PublicExponent,
    ];
    let pa = attrs(s, rsa_pub, &rsa_types);
    let qa = attrs(s, rsa_priv, &rsa_types);
    assert_eq!(
        pa, qa,
        "public and private halves agree on ID, type, modulus, exponent"
    );
    assert_eq!(pa[1], Attribute::KeyType(KeyType::RSA));
    let modulus = bytes_of(&pa[2]);
    assert_eq!(modulus.len(), 256, "2048-bit modulus");
    assert!(modulus[0] & 0x80 != 0, "modulus has its top bit set");
    assert_eq!(bytes_of(&pa[3]), vec![1, 0, 1], "public exponent 65537");
    let rsa_id = id_of(&pa[0]);

    // HMAC (generic secret, 32 bytes).
    let hmac = match find_one(s, &hmac_template(HMAC_LABEL)) {
        Some(h) => h,
        None => {
            generated.hmac = true;
            let id = random_id(s);
            let h = s
                .generate_key(
                    &Mechanism::GenericSecretKeyGen,
                    &[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::GENERIC_SECRET),
                        Attribute::ValueLen(32.into()),
                        Attribute::Label(HMAC_LABEL.as_bytes().to_vec()),
                        Attribute::Id(id.clone()),
                        Attribute::Sign(true),
                        Attribute::Verify(true),
                        Attribute::Token(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                    ],
                )
                .expect("C_GenerateKey(CKM_GENERIC_SECRET_KEY_GEN)");
            let found =
                find_one(s, &hmac_template(HMAC_LABEL)).expect("generated HMAC key is found");
            assert_eq!(
                found, h,
                "lookup after generation returns the generated HMAC key"
            );
            assert_eq!(
                id_of(&attrs(s, h, &[AttributeType::Id])[0]),
                id,
                "HMAC CKA_ID as generated"
            );
            h
        }
    };
    let h = attrs(s, hmac, &[AttributeType::Id, AttributeType::KeyType]);
    assert_eq!(h[1], Attribute::KeyType(KeyType::GENERIC_SECRET));
    let hmac_id = id_of(&h[0]);

    for id in [&aes_id, &rsa_id, &hmac_id] {
        let text = std::str::from_utf8(id).expect("CKA_ID is ASCII");
        assert!(
            text.parse::<u32>().is_ok(),
            "CKA_ID {text:?} is the decimal digits of a u32"
        );
    }
    let keys = Keys {
        aes,
        aes_id,
        rsa_pub,
        rsa_priv,
        rsa_id,
        modulus,
        hmac,
        hmac_id,
    };
    (keys, generated)
}

/// Checks the generated keys carry Vault's template (and what the token derived from it).
fn check_key_attributes(s: &Session, k: &Keys) {
    use AttributeType as T;
    assert_eq!(
        attrs(
            s,
            k.aes,
            &[
                T::ValueLen,
                T::Token,
                T::Private,
                T::Sensitive,
                T::Extractable,
                T::Encrypt,
                T::Decrypt,
                T::Wrap,
                T::Unwrap
            ]
        ),
        vec![
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
        ]
    );
    assert_eq!(
        attrs(
            s,
            k.hmac,
            &[
                T::ValueLen,
                T::Token,
                T::Sensitive,
                T::Extractable,
                T::Sign,
                T::Verify
            ]
        ),
        vec![
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Verify(true),
        ]
    );
    assert_eq!(
        attrs(
            s,
            k.rsa_priv,
            &[T::Token, T::Extractable, T::Decrypt, T::Unwrap]
        ),
        vec![
            Attribute::Token(true),
            Attribute::Extractable(false),
            Attribute::Decrypt(true),
            Attribute::Unwrap(true),
        ]
    );
    assert_eq!(
        attrs(s, k.rsa_pub, &[T::Token, T::Encrypt, T::Wrap]),
        vec![
            Attribute::Token(true),
            Attribute::Encrypt(true),
            Attribute::Wrap(true)
        ]
    );
    // Vault adds CKA_ID to the lookup when `key_id` is set.
    let mut with_id = aes_template(AES_LABEL);
    with_id.push(Attribute::Id(k.aes_id.clone()));
    assert_eq!(find_one(s, &with_id), Some(k.aes));
    let mut wrong_id = aes_template(AES_LABEL);
    wrong_id.push(Attribute::Id(b"no-such-id".to_vec()));
    assert_eq!(find_one(s, &wrong_id), None);
    // Exactly one object per label: nothing was generated twice.
    for (label, n) in [(AES_LABEL, 1), (RSA_LABEL, 2), (HMAC_LABEL, 1)] {
        let all = s
            .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
            .expect("find by label");
        assert_eq!(all.len(), n, "objects labelled {label}");
    }
}

pub struct GcmBlob {
    pub iv: Vec<u8>,
    pub ct: Vec<u8>,
}

fn gcm_mech(iv: &mut [u8]) -> Mechanism<'_> {
    Mechanism::AesGcm(GcmParams::new(iv, &[], 128.into()).expect("GcmParams"))
}

/// Vault's AES-GCM seal: 12-byte IV, 128-bit tag, no AAD; the IV is read back from the
/// parameters after C_Encrypt (an HSM may write its own).
pub fn gcm_encrypt(s: &Session, key: ObjectHandle, iv: [u8; 12], pt: &[u8]) -> GcmBlob {
    let mut params_iv = iv;
    let ct = s
        .encrypt(&gcm_mech(&mut params_iv), key, pt)
        .expect("C_Encrypt(CKM_AES_GCM)");
    assert_eq!(
        params_iv, iv,
        "the IV read back from CK_GCM_PARAMS is the one sent"
    );
    assert_eq!(
        ct.len(),
        pt.len() + 16,
        "GCM ciphertext = plaintext + 16-byte tag"
    );
    assert_ne!(&ct[..pt.len()], pt, "GCM output is not the plaintext");
    GcmBlob {
        iv: params_iv.to_vec(),
        ct,
    }
}

pub fn gcm_decrypt(
    s: &Session,
    key: ObjectHandle,
    blob: &GcmBlob,
) -> cryptoki::error::Result<Vec<u8>> {
    let mut iv = blob.iv.clone();
    s.decrypt(&gcm_mech(&mut iv), key, &blob.ct)
}

pub struct CbcBlob {
    pub iv: [u8; 16],
    pub ct: Vec<u8>,
    pub mac: Vec<u8>,
}

/// Encrypt-then-MAC: AES-CBC-PAD, then HMAC-SHA256 over IV || ciphertext.
pub fn cbc_seal(s: &Session, k: &Keys, iv: [u8; 16], pt: &[u8]) -> CbcBlob {
    let ct = s
        .encrypt(&Mechanism::AesCbcPad(iv), k.aes, pt)
        .expect("C_Encrypt(CKM_AES_CBC_PAD)");
    assert_eq!(ct.len(), (pt.len() / 16 + 1) * 16, "CBC-PAD output length");
    let mac = s
        .sign(&Mechanism::Sha256Hmac, k.hmac, &[&iv[..], &ct].concat())
        .expect("C_Sign(HMAC)");
    assert_eq!(mac.len(), 32, "HMAC-SHA256 length");
    CbcBlob { iv, ct, mac }
}

/// Verify, then decrypt.
pub fn cbc_open(s: &Session, k: &Keys, b: &CbcBlob) -> Vec<u8> {
    s.verify(
        &Mechanism::Sha256Hmac,
        k.hmac,
        &[&b.iv[..], &b.ct].concat(),
        &b.mac,
    )
    .expect("C_Verify(HMAC)");
    s.decrypt(&Mechanism::AesCbcPad(b.iv), k.aes, &b.ct)
        .expect("C_Decrypt(CKM_AES_CBC_PAD)")
}

/// PKCS#7 padding to whole AES blocks (what Vault does for CKM_AES_CBC).
pub fn pkcs7_pad(pt: &[u8]) -> Vec<u8> {
    let n = 16 - pt.len() % 16;
    let mut v = pt.to_vec();
    v.resize(pt.len() + n, n as u8);
    v
}

pub fn pkcs7_unpad(padded: &[u8]) -> &[u8] {
    let n = *padded.last().expect("non-empty padded data") as usize;
    assert!(
        (1..=16).contains(&n) && padded.len() >= n,
        "PKCS#7 padding byte {n}"
    );
    assert!(
        padded[padded.len() - n..].iter().all(|&b| b as usize == n),
        "PKCS#7 padding bytes"
    );
    &padded[..padded.len() - n]
}

/// Encrypt-then-MAC with CKM_AES_CBC (0x1082): pad in software, encrypt whole blocks, HMAC over
/// IV || ciphertext.
pub fn cbc_raw_seal(s: &Session, k: &Keys, iv: [u8; 16], pt: &[u8]) -> CbcBlob {
    let padded = pkcs7_pad(pt);
    let ct = s
        .encrypt(&Mechanism::AesCbc(iv), k.aes, &padded)
        .expect("C_Encrypt(CKM_AES_CBC)");
    assert_eq!(ct.len(), padded.len(), "CBC output length");
    let mac = s
        .sign(&Mechanism::Sha256Hmac, k.hmac, &[&iv[..], &ct].concat())
        .expect("C_Sign(HMAC)");
    assert_eq!(mac.len(), 32, "HMAC-SHA256 length");
    CbcBlob { iv, ct, mac }
}

/// Verify, decrypt with CKM_AES_CBC, unpad.
pub fn cbc_raw_open(s: &Session, k: &Keys, b: &CbcBlob) -> Vec<u8> {
    s.verify(
        &Mechanism::Sha256Hmac,
        k.hmac,
        &[&b.iv[..], &b.ct].concat(),
        &b.mac,
    )
    .expect("C_Verify(HMAC)");
    let padded = s
        .decrypt(&Mechanism::AesCbc(b.iv), k.aes, &b.ct)
        .expect("C_Decrypt(CKM_AES_CBC)");
    pkcs7_unpad(&padded).to_vec()
}

fn oaep(hash: MechanismType, mgf: PkcsMgfType) -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
}

pub fn oaep_sha1() -> Mechanism<'static> {
    oaep(MechanismType::SHA1, PkcsMgfType::MGF1_SHA1)
}

pub fn oaep_sha256() -> Mechanism<'static> {
    oaep(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256)
}

pub fn random_array<const N: usize>(s: &Session) -> [u8; N] {
    s.generate_random_vec(N as u32)
        .expect("C_GenerateRandom")
        .try_into()
        .unwrap()
}

/// Entropy augmentation: exact lengths, not all zero, two calls differ.
fn check_random(s: &Session) {
    for n in [32u32, 64, 1000, 4096] {
        let a = s.generate_random_vec(n).expect("C_GenerateRandom");
        let b = s.generate_random_vec(n).expect("C_GenerateRandom");
        assert_eq!(
            (a.len(), b.len()),
            (n as usize, n as usize),
            "C_GenerateRandom({n}) lengths"
        );
        assert!(
            a.iter().any(|&x| x != 0) && b.iter().any(|&x| x != 0),
            "random({n}) not all zero"
        );
        assert_ne!(a, b, "two C_GenerateRandom({n}) calls differ");
    }
    let mut buf = [0u8; 48];
    s.generate_random_slice(&mut buf)
        .expect("C_GenerateRandom into a caller buffer");
    assert!(buf.iter().any(|&x| x != 0));
}

/// The two-call convention, checked call by call on the raw function list: a NULL-buffer length
/// query answers CKR_OK with the exact size and leaves the operation running; the real call ends
/// it (a third call answers CKR_OPERATION_NOT_INITIALIZED). Returns what each raw call gave.
fn raw_two_call(raw: &Raw, s: &Session, k: &Keys) -> Vec<(&'static str, CK_RV, CK_ULONG)> {
    let h = s.handle();
    let mut log = Vec::new();
    let n = RAW_PAYLOAD.len() as CK_ULONG;

    // C_Encrypt, AES-GCM.
    let iv: [u8; 12] = random_array(s);
    let mut iv_param = iv;
    assert_eq!(
        raw.encrypt_init_gcm(h, k.aes.handle(), &mut iv_param),
        CKR_OK,
        "C_EncryptInit(GCM)"
    );
    let q = raw.encrypt(h, RAW_PAYLOAD, None);
    assert_eq!(q, (CKR_OK, n + 16), "C_Encrypt length query");
    log.push(("C_Encrypt(NULL)", q.0, q.1));
    // A buffer one byte short: CKR_BUFFER_TOO_SMALL with the size needed, operation still running.
    let mut short = vec![0u8; q.1 as usize - 1];
    let t = raw.encrypt(h, RAW_PAYLOAD, Some(&mut short));
    assert_eq!(
        t,
        (CKR_BUFFER_TOO_SMALL, n + 16),
        "C_Encrypt into a short buffer"
    );
    log.push(("C_Encrypt(short buf)", t.0, t.1));
    let mut ct = vec![0u8; q.1 as usize];
    let r = raw.encrypt(h, RAW_PAYLOAD, Some(&mut ct));
    assert_eq!(r, (CKR_OK, n + 16), "C_Encrypt after the length query");
    log.push(("C_Encrypt(buf)", r.0, r.1));
    let e = raw.encrypt(h, RAW_PAYLOAD, None);
    assert_eq!(
        e.0, CKR_OPERATION_NOT_INITIALIZED,
        "the real C_Encrypt ended the operation"
    );
    log.push(("C_Encrypt(after)", e.0, 0));
    let blob = GcmBlob {
        iv: iv.to_vec(),
        ct: ct.clone(),
    };
    assert_eq!(
        gcm_decrypt(s, k.aes, &blob).expect("decrypt raw GCM output"),
        RAW_PAYLOAD
    );

    // C_Decrypt, AES-GCM.
    let mut iv_param = iv;
    assert_eq!(
        raw.decrypt_init_gcm(h, k.aes.handle(), &mut iv_param),
        CKR_OK,
        "C_DecryptInit(GCM)"
    );
    let q = raw.decrypt(h, &ct, None);
    assert_eq!(q.0, CKR_OK, "C_Decrypt length query");
    assert!(
        q.1 >= n,
        "C_Decrypt length query {} covers the {n}-byte plaintext",
        q.1
    );
    log.push(("C_Decrypt(NULL)", q.0, q.1));
    let mut pt = vec![0u8; q.1 as usize];
    let r = raw.decrypt(h, &ct, Some(&mut pt));
    assert_eq!(r, (CKR_OK, n), "C_Decrypt after the length query");
    assert_eq!(&pt[..n as usize], RAW_PAYLOAD, "raw C_Decrypt plaintext");
    log.push(("C_Decrypt(buf)", r.0, r.1));
    let e = raw.decrypt(h, &ct, None);
    assert_eq!(
        e.0, CKR_OPERATION_NOT_INITIALIZED,
        "the real C_Decrypt ended the operation"
    );
    log.push(("C_Decrypt(after)", e.0, 0));

    // C_Decrypt with a bad tag: fails, ends the operation, the session stays usable.
    let mut bad = ct.clone();
    *bad.last_mut().unwrap() ^= 0x01;
    let mut iv_param = iv;
    assert_eq!(
        raw.decrypt_init_gcm(h, k.aes.handle(), &mut iv_param),
        CKR_OK
    );
    let q = raw.decrypt(h, &bad, None);
    log.push(("C_Decrypt(bad tag, NULL)", q.0, q.1));
    let mut out = vec![0u8; (q.1 as usize).max(bad.len())];
    let r = raw.decrypt(h, &bad, Some(&mut out));
    assert_ne!(r.0, CKR_OK, "C_Decrypt of a tampered tag fails");
    log.push(("C_Decrypt(bad tag, buf)", r.0, 0));
    let e = raw.decrypt(h, &bad, None);
    assert_eq!(
        e.0, CKR_OPERATION_NOT_INITIALIZED,
        "the failed C_Decrypt ended the operation"
    );
    log.push(("C_Decrypt(bad tag, after)", e.0, 0));
    assert_eq!(
        gcm_decrypt(s, k.aes, &blob).expect("session usable after a failed decrypt"),
        RAW_PAYLOAD
    );

    // C_Sign, HMAC-SHA256: same MAC as the cryptoki client computes.
    assert_eq!(
        raw.sign_init_hmac(h, k.hmac.handle()),
        CKR_OK,
        "C_SignInit(HMAC)"
    );
    let q = raw.sign(h, RAW_PAYLOAD, None);
    assert_eq!(q, (CKR_OK, 32), "C_Sign length query");
    log.push(("C_Sign(NULL)", q.0, q.1));
    let mut mac = vec![0u8; 32];
    let r = raw.sign(h, RAW_PAYLOAD, Some(&mut mac));
    assert_eq!(r, (CKR_OK, 32), "C_Sign after the length query");
    log.push(("C_Sign(buf)", r.0, r.1));
    let e = raw.sign(h, RAW_PAYLOAD, None);
    assert_eq!(
        e.0, CKR_OPERATION_NOT_INITIALIZED,
        "the real C_Sign ended the operation"
    );
    log.push(("C_Sign(after)", e.0, 0));
    let mac2 = s
        .sign(&Mechanism::Sha256Hmac, k.hmac, RAW_PAYLOAD)
        .expect("C_Sign");
    assert_eq!(mac, mac2, "HMAC is deterministic across both views");

    // C_GetAttributeValue: CKA_MODULUS and CKA_ID two-call, CKA_VALUE of a sensitive key.
    let q = raw.get_attribute(h, k.rsa_pub.handle(), CKA_MODULUS, None);
    assert_eq!(q, (CKR_OK, 256), "CKA_MODULUS length query");
    log.push(("C_GetAttributeValue(MODULUS, NULL)", q.0, q.1));
    let mut m = vec![0u8; 256];
    let r = raw.get_attribute(h, k.rsa_pub.handle(), CKA_MODULUS, Some(&mut m));
    assert_eq!(r, (CKR_OK, 256));
    assert_eq!(m, k.modulus, "raw CKA_MODULUS");
    let q = raw.get_attribute(h, k.aes.handle(), CKA_ID, None);
    assert_eq!(
        q,
        (CKR_OK, k.aes_id.len() as CK_ULONG),
        "CKA_ID length query"
    );
    let mut id = vec![0u8; q.1 as usize];
    assert_eq!(
        raw.get_attribute(h, k.aes.handle(), CKA_ID, Some(&mut id))
            .0,
        CKR_OK
    );
    assert_eq!(id, k.aes_id, "raw CKA_ID");
    let v = raw.get_attribute(h, k.aes.handle(), CKA_VALUE, None);
    assert_eq!(
        v,
        (CKR_ATTRIBUTE_SENSITIVE, CK_UNAVAILABLE_INFORMATION),
        "CKA_VALUE of the AES key"
    );
    log.push(("C_GetAttributeValue(VALUE)", v.0, v.1));
    log
}

/// The whole seal flow on one fresh token: setup, round trips, error answers, restart.
pub fn run_flow(module: &Path, token_label: &str) -> Outcome {
    run_flow_as(module, token_label, SOFTHSM)
}

/// [`run_flow`] with the profile-dependent parts chosen by `profile`.
pub fn run_flow_as(module: &Path, token_label: &str, profile: Profile) -> Outcome {
    let mut plaintexts: Vec<Vec<u8>> = Vec::new();
    let mut ciphertexts: Vec<Vec<u8>> = Vec::new();
    let client = Client::init(module);
    let slot = client.slot_by_label(token_label);

    let mut mechanisms: Vec<CK_ULONG> = client
        .ctx()
        .get_mechanism_list(slot)
        .expect("C_GetMechanismList")
        .into_iter()
        .map(CK_ULONG::from)
        .collect();
    mechanisms.sort_unstable();
    for m in [
        MechanismType::AES_CBC_PAD,
        MechanismType::AES_CBC,
        MechanismType::AES_GCM,
        MechanismType::RSA_PKCS_OAEP,
        MechanismType::RSA_PKCS,
        MechanismType::SHA256_HMAC,
        MechanismType::AES_KEY_GEN,
        MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        MechanismType::GENERIC_SECRET_KEY_GEN,
    ] {
        assert!(
            mechanisms.contains(&CK_ULONG::from(m)),
            "{m} in C_GetMechanismList"
        );
    }

    let s = client
        .ctx()
        .open_rw_session(slot)
        .expect("C_OpenSession(RW)");
    let wrong_pin = expect_failure(
        s.login(UserType::User, Some(&AuthPin::from(WRONG_PIN))),
        "wrong PIN",
    );
    assert_eq!(
        wrong_pin,
        Failure {
            function: "Login".into(),
            rv: RvError::PinIncorrect
        }
    );
    // The SO logs in and out once (so the log check sees the SO PIN pass through), then the user.
    s.login(UserType::So, Some(&AuthPin::from(SO_PIN)))
        .expect("C_Login(CKU_SO)");
    s.logout().expect("C_Logout(SO)");
    client.login(&s);
    assert_eq!(
        s.get_session_info()
            .expect("C_GetSessionInfo")
            .session_state(),
        SessionState::RwUser
    );

    let (keys, generated) = find_or_generate(&s);
    assert_eq!(
        generated,
        Generated {
            aes: true,
            rsa: true,
            hmac: true
        },
        "fresh token: all generated"
    );
    let (again, generated) = find_or_generate(&s);
    assert_eq!(
        generated,
        Generated {
            aes: false,
            rsa: false,
            hmac: false
        },
        "second pass finds all"
    );
    assert_eq!(
        again, keys,
        "second lookup gives the same handles, IDs and modulus"
    );
    check_key_attributes(&s, &keys);

    // AES-GCM: a 32-byte data key (what Vault most likely sends) and a raw payload.
    let data_key: [u8; 32] = random_array(&s);
    let mut gcm = Vec::new();
    for pt in [&data_key[..], GCM_PAYLOAD] {
        let blob = gcm_encrypt(&s, keys.aes, random_array(&s), pt);
        assert_eq!(
            gcm_decrypt(&s, keys.aes, &blob).expect("C_Decrypt(GCM)"),
            pt
        );
        plaintexts.push(pt.to_vec());
        ciphertexts.push(blob.ct.clone());
        gcm.push((blob, pt.to_vec()));
    }
    let mut tampered = GcmBlob {
        iv: gcm[1].0.iv.clone(),
        ct: gcm[1].0.ct.clone(),
    };
    tampered.ct[0] ^= 0x80;
    let gcm_bad_tag = expect_failure(gcm_decrypt(&s, keys.aes, &tampered), "tampered GCM");
    assert_eq!(
        gcm_decrypt(&s, keys.aes, &gcm[1].0).expect("session usable after a failed decrypt"),
        GCM_PAYLOAD
    );

    // Rotation: a new key under a new label; the old key stays and still opens old entries.
    let (rotated, rotated_id, gen_rotated) = find_or_generate_aes(&s, AES_ROTATED_LABEL);
    assert!(gen_rotated, "the rotated key is new");
    assert_ne!(
        (rotated, &rotated_id),
        (keys.aes, &keys.aes_id),
        "a distinct key"
    );
    assert_eq!(
        find_or_generate_aes(&s, AES_ROTATED_LABEL),
        (rotated, rotated_id.clone(), false)
    );
    assert_eq!(
        find_or_generate_aes(&s, AES_LABEL),
        (keys.aes, keys.aes_id.clone(), false)
    );
    let new_entry = gcm_encrypt(&s, rotated, random_array(&s), GCM_PAYLOAD);
    ciphertexts.push(new_entry.ct.clone());
    assert_eq!(
        gcm_decrypt(&s, rotated, &new_entry).expect("new entry, new key"),
        GCM_PAYLOAD
    );
    assert_eq!(
        gcm_decrypt(&s, keys.aes, &gcm[1].0).expect("old entry, old key"),
        GCM_PAYLOAD
    );
    let gcm_wrong_key = expect_failure(
        gcm_decrypt(&s, rotated, &gcm[1].0),
        "old entry with the rotated key",
    );

    // AES-CBC-PAD + HMAC-SHA256.
    let cbc = cbc_seal(&s, &keys, random_array(&s), CBC_PAYLOAD);
    assert_eq!(cbc_open(&s, &keys, &cbc), CBC_PAYLOAD);
    plaintexts.push(CBC_PAYLOAD.to_vec());
    ciphertexts.push(cbc.ct.clone());
    let mut bad_mac = cbc.mac.clone();
    bad_mac[5] ^= 0x10;
    let hmac_bad_mac = expect_failure(
        s.verify(
            &Mechanism::Sha256Hmac,
            keys.hmac,
            &[&cbc.iv[..], &cbc.ct].concat(),
            &bad_mac,
        ),
        "verify a tampered MAC",
    );
    let hmac_with_aes_key = answer(s.sign(&Mechanism::Sha256Hmac, keys.aes, b"x"));
    assert_eq!(
        cbc_open(&s, &keys, &cbc),
        CBC_PAYLOAD,
        "session usable after failed verify/sign"
    );

    // AES-CBC (0x1082) + HMAC-SHA256: Vault pads; the same bytes as CBC-PAD under the same IV.
    let (cbc_raw, cbc_unaligned) = if profile.aes_cbc {
        let blob = cbc_raw_seal(&s, &keys, cbc.iv, CBC_PAYLOAD);
        assert_eq!(
            blob.ct, cbc.ct,
            "CKM_AES_CBC of the PKCS#7-padded payload = CKM_AES_CBC_PAD of the payload"
        );
        let blob = cbc_raw_seal(&s, &keys, random_array(&s), CBC_PAYLOAD);
        assert_eq!(cbc_raw_open(&s, &keys, &blob), CBC_PAYLOAD);
        ciphertexts.push(blob.ct.clone());
        let unaligned = expect_failure(
            s.encrypt(&Mechanism::AesCbc(blob.iv), keys.aes, CBC_PAYLOAD),
            "CKM_AES_CBC of unpadded data",
        );
        assert_eq!(
            cbc_raw_open(&s, &keys, &blob),
            CBC_PAYLOAD,
            "session usable after a refused C_Encrypt"
        );
        (Some(blob), Some(unaligned))
    } else {
        (None, None)
    };

    // RSA-OAEP: SHA-1/MGF1-SHA1 works everywhere; SHA-256 (Vault's default) round-trips on the
    // soft token and is refused by SoftHSMv2 2.6 (`Profile::oaep_sha256`).
    let rsa_ct = s
        .encrypt(&oaep_sha1(), keys.rsa_pub, RSA_PAYLOAD)
        .expect("C_Encrypt(OAEP-SHA1)");
    assert_eq!(rsa_ct.len(), 256);
    assert_eq!(
        s.decrypt(&oaep_sha1(), keys.rsa_priv, &rsa_ct)
            .expect("C_Decrypt(OAEP-SHA1)"),
        RSA_PAYLOAD
    );
    plaintexts.push(RSA_PAYLOAD.to_vec());
    ciphertexts.push(rsa_ct.clone());
    let (oaep_sha256_encrypt, oaep_sha256_decrypt, oaep_wrong_hash, rsa256) = if profile.oaep_sha256
    {
        // Vault's default: OAEP with SHA-256 and MGF1-SHA256, no label.
        let ct = s
            .encrypt(&oaep_sha256(), keys.rsa_pub, RSA_PAYLOAD)
            .expect("C_Encrypt(OAEP-SHA256)");
        assert_eq!(ct.len(), 256);
        assert_eq!(
            s.decrypt(&oaep_sha256(), keys.rsa_priv, &ct)
                .expect("C_Decrypt(OAEP-SHA256)"),
            RSA_PAYLOAD
        );
        ciphertexts.push(ct.clone());
        let dk_ct = s
            .encrypt(&oaep_sha256(), keys.rsa_pub, &data_key)
            .expect("C_Encrypt(OAEP-SHA256) of a data key");
        assert_eq!(
            s.decrypt(&oaep_sha256(), keys.rsa_priv, &dk_ct)
                .expect("C_Decrypt(OAEP-SHA256) of a data key"),
            data_key
        );
        ciphertexts.push(dk_ct);
        let wrong_hash = expect_failure(
            s.decrypt(&oaep_sha1(), keys.rsa_priv, &ct),
            "an OAEP-SHA256 ciphertext opened as OAEP-SHA1",
        );
        assert_eq!(
            s.decrypt(&oaep_sha256(), keys.rsa_priv, &ct)
                .expect("session usable after a failed C_Decrypt(OAEP)"),
            RSA_PAYLOAD
        );
        (Answer::Worked, Answer::Worked, Some(wrong_hash), Some(ct))
    } else {
        let enc = expect_failure(
            s.encrypt(&oaep_sha256(), keys.rsa_pub, RSA_PAYLOAD),
            "OAEP-SHA256 encrypt",
        );
        let dec = expect_failure(
            s.decrypt(&oaep_sha256(), keys.rsa_priv, &rsa_ct),
            "OAEP-SHA256 decrypt",
        );
        (Answer::Refused(enc), Answer::Refused(dec), None, None)
    };
    // The RSA key also wraps a data key (envelope encryption).
    let rsa_dk_ct = s
        .encrypt(&oaep_sha1(), keys.rsa_pub, &data_key)
        .expect("C_Encrypt(OAEP-SHA1)");
    assert_eq!(
        s.decrypt(&oaep_sha1(), keys.rsa_priv, &rsa_dk_ct)
            .expect("C_Decrypt"),
        data_key
    );
    ciphertexts.push(rsa_dk_ct);

    check_random(&s);

    let raw = Raw::open(module);
    let raw_calls = raw_two_call(&raw, &s, &keys);
    plaintexts.push(RAW_PAYLOAD.to_vec());
    drop(raw);

    // Restart: C_Finalize, a new context, C_Initialize, log in, find by label, decrypt.
    let old_handle = s.handle();
    drop(s);
    client.finalize();
    let stale_finalized = Raw::open(module).encrypt(old_handle, RAW_PAYLOAD, None).0;
    assert_eq!(
        stale_finalized, CKR_CRYPTOKI_NOT_INITIALIZED,
        "a call between C_Finalize and C_Initialize"
    );
    let client = Client::init(module);
    // A handle from before the restart names no session now (none has been opened yet).
    let stale_reinit = Raw::open(module).encrypt(old_handle, RAW_PAYLOAD, None).0;
    assert_eq!(
        stale_reinit, CKR_SESSION_HANDLE_INVALID,
        "a session handle from before the restart"
    );
    let slot2 = client.slot_by_label(token_label);
    assert_eq!(slot2, slot, "same slot id after re-initialisation");
    let s = client
        .ctx()
        .open_ro_session(slot2)
        .expect("C_OpenSession(RO)");
    client.login(&s);
    assert_eq!(
        s.get_session_info()
            .expect("C_GetSessionInfo")
            .session_state(),
        SessionState::RoUser
    );
    let (after, generated) = find_or_generate(&s);
    assert_eq!(
        generated,
        Generated {
            aes: false,
            rsa: false,
            hmac: false
        },
        "after restart: all found"
    );
    assert_eq!(
        (&after.aes_id, &after.rsa_id, &after.hmac_id, &after.modulus),
        (&keys.aes_id, &keys.rsa_id, &keys.hmac_id, &keys.modulus),
        "the same keys after restart"
    );
    let (rotated_after, rotated_id_after, _) = find_or_generate_aes(&s, AES_ROTATED_LABEL);
    assert_eq!(
        rotated_id_after, rotated_id,
        "the rotated key after restart"
    );
    assert_eq!(
        gcm_decrypt(&s, rotated_after, &new_entry).expect("new entry after restart"),
        GCM_PAYLOAD
    );
    for (blob, pt) in &gcm {
        assert_eq!(
            &gcm_decrypt(&s, after.aes, blob).expect("GCM decrypt after restart"),
            pt
        );
    }
    assert_eq!(
        cbc_open(&s, &after, &cbc),
        CBC_PAYLOAD,
        "CBC+HMAC open after restart"
    );
    if let Some(blob) = &cbc_raw {
        assert_eq!(
            cbc_raw_open(&s, &after, blob),
            CBC_PAYLOAD,
            "CKM_AES_CBC+HMAC open after restart"
        );
    }
    if let Some(ct) = &rsa256 {
        assert_eq!(
            s.decrypt(&oaep_sha256(), after.rsa_priv, ct)
                .expect("OAEP-SHA256 decrypt after restart"),
            RSA_PAYLOAD
        );
    }
    assert_eq!(
        s.decrypt(&oaep_sha1(), after.rsa_priv, &rsa_ct)
            .expect("OAEP decrypt after restart"),
        RSA_PAYLOAD
    );
    drop(s);
    client.finalize();

    Outcome {
        report: Report {
            mechanisms,
            wrong_pin,
            gcm_bad_tag,
            gcm_wrong_key,
            hmac_bad_mac,
            hmac_with_aes_key,
            oaep_sha256_encrypt,
            oaep_sha256_decrypt,
            oaep_wrong_hash,
            cbc_unaligned,
            raw_calls,
            stale_session: (stale_finalized, stale_reinit),
        },
        slot: slot.id(),
        plaintexts,
        ciphertexts,
    }
}

/// Vault with `max_parallel` sessions and many Go threads: `threads` x `per_thread` AES-GCM round
/// trips, each taking a session from a shared pool and giving it back, so sessions move between
/// threads. Returns (distinct (session, thread) pairs, round trips done).
pub fn concurrency(
    module: &Path,
    token_label: &str,
    threads: usize,
    per_thread: usize,
    pool_size: usize,
) -> (usize, usize) {
    let client = Client::init(module);
    let slot = client.slot_by_label(token_label);
    let first = client
        .ctx()
        .open_rw_session(slot)
        .expect("C_OpenSession(RW)");
    client.login(&first);
    let (keys, _) = find_or_generate(&first);
    let mut sessions = vec![first];
    while sessions.len() < pool_size {
        let next = client
            .ctx()
            .open_ro_session(slot)
            .expect("C_OpenSession(RO)");
        // Vault logs every new session in; the token is already logged in.
        let again = next.login(UserType::User, Some(&AuthPin::from(USER_PIN)));
        assert_eq!(
            expect_failure(again, "C_Login on a second session"),
            Failure {
                function: "Login".into(),
                rv: RvError::UserAlreadyLoggedIn
            }
        );
        assert_eq!(
            next.get_session_info()
                .expect("C_GetSessionInfo")
                .session_state(),
            SessionState::RoUser
        );
        sessions.push(next);
    }
    let pool = Mutex::new(sessions);
    let returned = Condvar::new();
    let used: Mutex<HashMap<u64, HashSet<usize>>> = Mutex::new(HashMap::new());
    let ciphertexts: Mutex<HashSet<Vec<u8>>> = Mutex::new(HashSet::new());

    std::thread::scope(|scope| {
        for t in 0..threads {
            let (pool, returned, used, ciphertexts, keys) =
                (&pool, &returned, &used, &ciphertexts, &keys);
            scope.spawn(move || {
                let mut mine = HashSet::new();
                let mut cts = Vec::with_capacity(per_thread);
                for i in 0..per_thread {
                    let session = {
                        let mut p = pool.lock().unwrap();
                        loop {
                            if let Some(s) = p.pop() {
                                break s;
                            }
                            p = returned.wait(p).unwrap();
                        }
                    };
                    mine.insert(session.handle());
                    let pt = format!("concurrent-plaintext thread={t:02} op={i:04}").into_bytes();
                    let mut iv = [0u8; 12];
                    iv[..8].copy_from_slice(&(t as u32).to_be_bytes().repeat(2));
                    iv[8..].copy_from_slice(&(i as u32).to_be_bytes());
                    let blob = gcm_encrypt(&session, keys.aes, iv, &pt);
                    let back = gcm_decrypt(&session, keys.aes, &blob)
                        .unwrap_or_else(|e| panic!("thread {t} op {i}: C_Decrypt: {e}"));
                    assert_eq!(back, pt, "thread {t} op {i}: plaintext");
                    cts.push(blob.ct);
                    pool.lock().unwrap().push(session);
                    returned.notify_one();
                }
                let mut u = used.lock().unwrap();
                for h in mine {
                    u.entry(h).or_default().insert(t);
                }
                ciphertexts.lock().unwrap().extend(cts);
            });
        }
    });

    let used = used.into_inner().unwrap();
    let pairs: usize = used.values().map(HashSet::len).sum();
    let distinct = ciphertexts.into_inner().unwrap().len();
    drop(pool);
    client.finalize();
    (pairs, distinct)
}
