//! Target `mechanism`: a `CK_MECHANISM` with any parameter block → the trace text, mechanism
//! policy, the soft token's parameter parsing, and the mechanisms run with what was parsed:
//! what one side makes the other must take back (encrypt/decrypt, sign/verify, wrap/unwrap),
//! and no output is longer than the length query promised.

use pkcs11_sys::*;

use super::{material, mechanism_of, mechanism_type, no_panic, Input, OID_P256};
use crate::names::mechanism_name;
use crate::policy::{mechanism_text, MechanismFilter, SlotPolicy};
use crate::soft::backend::parse_params;
use crate::soft::crypto::{self, CipherOp, CkResult, KeyRef, Params, SignOp};

/// See the module docs. Input: the mechanism, up to three denied and (maybe) three allowed
/// mechanisms, the key pair, what to do (see `run`), the part size for multi-part calls, then
/// the data.
pub fn mechanism(data: &[u8]) {
    no_panic("mechanism", || {
        let mut input = Input::new(data);
        let mut m = mechanism_of(&mut input);
        let ty = m.mechanism_type();
        let _ = (m.trace_text(), mechanism_name(ty), mechanism_text(ty));
        let _ = crypto::mechanism_info(ty);

        let mut filter = MechanismFilter::default();
        for _ in 0..input.byte() % 4 {
            filter.deny(&[mechanism_type(&mut input)], "the deny list of the fuzzer");
        }
        if input.bool() {
            let allow = [
                mechanism_type(&mut input),
                mechanism_type(&mut input),
                mechanism_type(&mut input),
            ];
            filter.allow_only(&allow, "the allow list of the fuzzer");
        }
        let refusal = filter.refusal(ty).map(str::to_string);
        let policy = SlotPolicy {
            mechanisms: filter,
            ..SlotPolicy::default()
        };
        assert_eq!(
            policy.check_mechanism("C_EncryptInit", 0, ty).is_err(),
            refusal.is_some()
        );

        let pair = input.byte();
        let what = input.byte();
        let part = input.size().max(1);
        let data = input.rest();
        let Ok(view) = m.view() else { return };
        assert_eq!(view.mechanism_type(), ty);
        let Ok(params) = parse_params(&view) else {
            return;
        };
        digest(ty, data, part);
        run(ty, &params, pair, what, part, data);
    })
}

/// Runs `ty` with `params` over `data` (`what` says how), with a pair of keys:
/// (encrypt/verify/wrap, decrypt/sign/unwrap).
fn run(ty: CK_MECHANISM_TYPE, params: &Params, pair: u8, what: u8, part: usize, data: &[u8]) {
    let m = material();
    let aes16 = [0x11u8; 16];
    let aes32 = [0x22u8; 32];
    let odd = [0x33u8; 20];
    let rsa_public = KeyRef::RsaPublic {
        n: &m.rsa_n,
        e: &m.rsa_e,
    };
    let rsa_private = KeyRef::RsaPrivate {
        n: &m.rsa_n,
        e: &m.rsa_e,
        d: &m.rsa_d,
        p: &m.rsa_p,
        q: &m.rsa_q,
    };
    let ec_public = KeyRef::EcPublic {
        params: OID_P256,
        point: &m.p256_point,
    };
    let ec_private = KeyRef::EcPrivate {
        params: OID_P256,
        value: &m.p256_value,
    };
    let (public, private) = match pair % 7 {
        0 => (KeyRef::Secret(&aes16), KeyRef::Secret(&aes16)),
        1 => (KeyRef::Secret(&aes32), KeyRef::Secret(&aes32)),
        2 => (KeyRef::Secret(&odd), KeyRef::Secret(&odd)),
        3 | 4 => (rsa_public, rsa_private),
        5 => (ec_public, ec_private),
        _ => (KeyRef::Secret(&aes16), rsa_private),
    };
    let matched = pair % 7 != 6;

    // One family per input, and at most one private-key operation: RSA under the address
    // sanitizer takes a tenth of a second each.
    match what % 6 {
        0 => {
            let Ok(mut enc) = crypto::cipher(ty, params, public, true) else {
                return;
            };
            let Ok(ct) = cipher(&mut *enc, data, part) else {
                return;
            };
            if matched {
                let mut dec = crypto::cipher(ty, params, private, false)
                    .expect("the decryption side refused what encryption took");
                let pt = cipher(&mut *dec, &ct, part).expect("a ciphertext did not decrypt");
                assert_eq!(pt, data, "decryption gave other bytes");
            }
        }
        1 => {
            if let Ok(mut dec) = crypto::cipher(ty, params, private, false) {
                let _ = cipher(&mut *dec, data, part);
            }
        }
        2 => {
            let Ok(mut signer) = crypto::signer(ty, params, private, true) else {
                return;
            };
            let Ok(sig) = sign(&mut *signer, data, part) else {
                return;
            };
            if matched {
                let mut verifier = crypto::signer(ty, params, public, false)
                    .expect("the verifying side refused what signing took");
                feed(&mut *verifier, data, part).expect("verify update");
                verifier.verify(&sig).expect("a signature did not verify");
            }
        }
        3 => {
            if let Ok(mut verifier) = crypto::signer(ty, params, public, false) {
                let (msg, sig) = data.split_at(data.len() / 2);
                if feed(&mut *verifier, msg, part).is_ok() {
                    let _ = verifier.verify(sig);
                }
            }
        }
        // Wrapping takes a key's value, and no key has an empty one (unwrapping refuses it).
        4 if !data.is_empty() => {
            let Ok(wrapped) = crypto::wrap(ty, params, public, data) else {
                return;
            };
            if matched {
                let unwrapped = crypto::unwrap(ty, params, private, &wrapped)
                    .expect("a wrapped key did not unwrap");
                assert_eq!(&unwrapped[..], data, "unwrapping gave other bytes");
            }
        }
        4 => {}
        _ => {
            let _ = crypto::unwrap(ty, params, private, data);
        }
    }
}

/// A digest of `data` in parts: as long as the digest says.
fn digest(ty: CK_MECHANISM_TYPE, data: &[u8], part: usize) {
    if let Ok(mut d) = crypto::digest(ty) {
        for chunk in data.chunks(part) {
            d.update(chunk);
        }
        let len = d.len();
        assert_eq!(d.finish().len(), len);
    }
}

/// Encrypts or decrypts `data` in parts of `part` bytes (or at once, for single-part
/// mechanisms), checking each output against the length the operation said would do.
fn cipher(op: &mut dyn CipherOp, data: &[u8], part: usize) -> CkResult<Vec<u8>> {
    let max_total = op.max_oneshot_len(data.len());
    let mut out = Vec::new();
    if op.multipart() {
        for chunk in data.chunks(part) {
            let max = op.max_update_len(chunk.len());
            let o = op.update(chunk)?;
            assert!(o.len() <= max, "update gave {} bytes, said {max}", o.len());
            out.extend_from_slice(&o);
        }
    } else {
        op.update(data)?;
    }
    let max = op.max_final_len();
    let o = op.finish()?;
    assert!(o.len() <= max, "final gave {} bytes, said {max}", o.len());
    out.extend_from_slice(&o);
    assert!(
        out.len() <= max_total,
        "gave {} bytes in all, said {max_total}",
        out.len()
    );
    Ok(out)
}

fn feed(op: &mut dyn SignOp, data: &[u8], part: usize) -> CkResult<()> {
    if op.multipart() {
        for chunk in data.chunks(part) {
            op.update(chunk)?;
        }
        Ok(())
    } else {
        op.update(data)
    }
}

fn sign(op: &mut dyn SignOp, data: &[u8], part: usize) -> CkResult<Vec<u8>> {
    feed(op, data, part)?;
    let max = op.max_signature_len();
    let sig = op.sign()?;
    assert!(
        sig.len() <= max,
        "signature of {} bytes, said {max}",
        sig.len()
    );
    Ok(sig)
}
