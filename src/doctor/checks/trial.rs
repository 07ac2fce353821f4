//! The round trips: what Vault will do with the keys, done once with 32 random bytes.

use pkcs11_sys::*;

use super::keys::Key;
use super::{at, random, Dialogue, Step, S};
use crate::backend::Backend;
use crate::doctor::seal::mechanism_label;
use crate::ffi::args::InBuf;
use crate::ffi::owned::OwnedMechanism;
use crate::names::rv_name;
use crate::router::slots::list_of;

impl Dialogue<'_> {
    /// The `round-trip` check: encrypt 32 random bytes and decrypt them, as Vault seals a key.
    pub(super) fn round_trip(&mut self, session: S, m: CK_MECHANISM_TYPE, key: Key) {
        const CHECK: &str = "round-trip";
        let data = random(32);
        let hash = self.settings().oaep_hash;
        let name = match m {
            CKM_AES_GCM => "AES-GCM".to_string(),
            CKM_AES_CBC => "AES-CBC".to_string(),
            CKM_AES_CBC_PAD => "AES-CBC-PAD".to_string(),
            CKM_RSA_PKCS_OAEP => format!("RSA-OAEP with {}", hash.display()),
            _ => "RSA PKCS#1 v1.5".to_string(),
        };
        let fresh = |m: CK_MECHANISM_TYPE, iv: &[u8]| match m {
            CKM_AES_GCM => OwnedMechanism::aes_gcm(iv, 128),
            CKM_AES_CBC | CKM_AES_CBC_PAD => OwnedMechanism::with_bytes(m, iv),
            CKM_RSA_PKCS_OAEP => OwnedMechanism::rsa_oaep(hash.hash, hash.mgf),
            _ => OwnedMechanism::plain(m),
        };
        let iv = random(if m == CKM_AES_GCM { 12 } else { 16 });
        // CKM_AES_CBC leaves padding to the caller: Vault pads (PKCS#7), so does this.
        let input = if m == CKM_AES_CBC {
            let mut p = data.clone();
            p.extend(std::iter::repeat_n(16u8, 16));
            p
        } else {
            data.clone()
        };
        let (enc_key, dec_key) = (key.encrypt, key.decrypt);
        let up = self.up;
        let result = (|| -> Step<Vec<u8>> {
            let mut enc = fresh(m, &iv);
            at(
                "C_EncryptInit",
                up.encrypt_init(session, enc.view(), enc_key),
            )?;
            let sealed = at(
                "C_Encrypt",
                list_of(|o| up.encrypt(session, InBuf::from_slice(&input), o)),
            )?;
            let mut dec = fresh(m, &iv);
            at(
                "C_DecryptInit",
                up.decrypt_init(session, dec.view(), dec_key),
            )?;
            at(
                "C_Decrypt",
                list_of(|o| up.decrypt(session, InBuf::from_slice(&sealed), o)),
            )
        })();
        let with = if key.temporary {
            "a temporary session key (the key does not exist yet)".to_string()
        } else {
            format!("key_label {:?}", self.settings().key_label)
        };
        match result {
            Ok(back) if back == input => self.report.pass(
                CHECK,
                format!("{name}: 32 random bytes encrypted and decrypted with {with}"),
            ),
            Ok(_) => self.report.fail(
                CHECK,
                format!("{name} with {with}: the bytes decrypted are not the bytes encrypted"),
                "the token's cipher is broken: do not seal Vault with it",
            ),
            Err((f, e)) => {
                let rv = e.rv();
                let oaep_sha1_only = m == CKM_RSA_PKCS_OAEP
                    && hash.name != "sha1"
                    && (rv == CKR_ARGUMENTS_BAD || rv == CKR_MECHANISM_PARAM_INVALID);
                if oaep_sha1_only {
                    self.report.fail(
                        CHECK,
                        format!(
                            "{name}: {f} returned {}: the backend does RSA-OAEP only with SHA-1 (SoftHSMv2 2.6)",
                            rv_name(rv)
                        ),
                        "set rsa_oaep_hash = \"sha1\"",
                    );
                } else {
                    self.report.fail(
                        CHECK,
                        format!("{name} with {with}: {f} returned {}", rv_name(rv)),
                        "Vault would fail the same way: see p11gate's log for the upstream's answer",
                    );
                }
            }
        }
        self.forget_temporary(session, key);
    }

    /// The `hmac-round-trip` check: sign and verify 32 random bytes, and a changed byte fails.
    pub(super) fn hmac_round_trip(&mut self, session: S, key: Key) {
        const CHECK: &str = "hmac-round-trip";
        let k = key.encrypt;
        let m = self.settings().hmac_mechanism;
        let data = random(32);
        let up = self.up;
        let result = (|| -> Step<CK_RV> {
            let mut sign = OwnedMechanism::plain(m);
            at("C_SignInit", up.sign_init(session, sign.view(), k))?;
            let mac = at(
                "C_Sign",
                list_of(|o| up.sign(session, InBuf::from_slice(&data), o)),
            )?;
            let mut verify = OwnedMechanism::plain(m);
            at("C_VerifyInit", up.verify_init(session, verify.view(), k))?;
            at(
                "C_Verify",
                up.verify(session, InBuf::from_slice(&data), InBuf::from_slice(&mac)),
            )?;
            let mut changed = data.clone();
            changed[0] ^= 1;
            let mut verify = OwnedMechanism::plain(m);
            at("C_VerifyInit", up.verify_init(session, verify.view(), k))?;
            Ok(up
                .verify(
                    session,
                    InBuf::from_slice(&changed),
                    InBuf::from_slice(&mac),
                )
                .map_or_else(|e| e.rv(), |_| CKR_OK))
        })();
        let with = if key.temporary {
            "a temporary session key (the key does not exist yet)".to_string()
        } else {
            format!(
                "hmac_key_label {:?}",
                self.settings().hmac_key_label.as_deref().unwrap_or("")
            )
        };
        let name = mechanism_label(m);
        match result {
            Ok(CKR_SIGNATURE_INVALID) => self.report.pass(
                CHECK,
                format!("{name}: 32 random bytes signed and verified with {with}"),
            ),
            Ok(rv) => self.report.fail(
                CHECK,
                format!(
                    "{name} with {with}: a changed message verified with {}",
                    rv_name(rv)
                ),
                "the token's HMAC is broken: do not seal Vault with it",
            ),
            Err((f, e)) => self.report.fail(
                CHECK,
                format!("{name} with {with}: {f} returned {}", rv_name(e.rv())),
                "Vault would fail the same way: see p11gate's log for the upstream's answer",
            ),
        }
        self.forget_temporary(session, key);
    }
}
