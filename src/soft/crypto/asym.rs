//! RSA and EC mechanisms: key pairs, OAEP, PKCS #1 v1.5, PSS, ECDSA.
//!
//! Built on the RustCrypto crates: `rsa` 0.10 (crypto-bigint arithmetic, so the private-key
//! operations are constant-time and blinded; 0.9 and earlier are subject to RUSTSEC-2023-0071),
//! `p256`/`p384` 0.14 for ECDSA, and `sha1`/`sha2` 0.11, the digest generation those crates use
//! (the rest of the crate keeps `sha2` 0.10).
//!
//! Keys are rebuilt from the attribute bytes at the start of each operation and dropped (wiped)
//! with it: nothing is cached across operations.
//!
//! Behaviour worth knowing:
//! - `CKM_RSA_PKCS` decryption and unwrapping use implicit rejection (the `rsa` crate's
//!   countermeasure to Bleichenbacher/Marvin oracles): a ciphertext with bad padding yields a
//!   deterministic synthetic plaintext, not `CKR_ENCRYPTED_DATA_INVALID`. OAEP reports padding
//!   failures as `CKR_ENCRYPTED_DATA_INVALID` / `CKR_WRAPPED_KEY_INVALID`.
//! - ECDSA signatures are deterministic (RFC 6979) and encoded as `r || s`, each the curve's
//!   field length, as PKCS #11 specifies.
//! - RSA keys from 2048 to 8192 bits are accepted for operations; generation is 2048 to 4096.
//! - Key material that does not form a valid key (an RSA private key whose parts disagree, an
//!   EC point off the curve) fails with `CKR_FUNCTION_FAILED`: the object is corrupt, which no
//!   mechanism-specific code describes.

use getrandom_04::SysRng;
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use pkcs11_sys::*;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BoxedUint, Oaep, Pkcs1v15Encrypt, Pkcs1v15Sign, Pss};
use sha2_011::Digest;
use zeroize::Zeroizing;

use super::{CipherOp, CkResult, KeyRef, Params, SignOp};

type RsaPrivate = rsa::PrivateKey;
type RsaPublic = rsa::PublicKey;

/// Smallest RSA modulus accepted, in bits (below 2048 bits RSA is no longer considered safe).
const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted for operations: the `rsa` crate's default bound, which also
/// bounds the work an imported key can cause.
const RSA_MAX_BITS: usize = 8192;
/// Largest RSA modulus generated (generation time grows steeply with the size; operations
/// still take larger imported keys).
const RSA_GEN_MAX_BITS: usize = 4096;
/// Largest public exponent the `rsa` crate accepts (2^33 - 1; bigger ones are a DoS vector).
const RSA_MAX_E: u64 = (1 << 33) - 1;
/// PKCS #1 v1.5 padding overhead (RFC 8017 §7.2.1, §9.2).
const PKCS1_OVERHEAD: usize = 11;
/// Longest input CKM_ECDSA accepts: the longest supported digest (SHA-512). Longer hashes would
/// be truncated to the curve order anyway.
const ECDSA_MAX_INPUT: usize = 64;
/// What a key whose attributes do not form a valid key fails with (see the module doc).
const INVALID_KEY: CK_RV = CKR_FUNCTION_FAILED;

/// CKA_EC_PARAMS of P-256: the DER OID 1.2.840.10045.3.1.7.
const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// CKA_EC_PARAMS of P-384: the DER OID 1.3.132.0.34.
const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

// ------------------------------------------------------------------------------------------------
// Digests
// ------------------------------------------------------------------------------------------------

/// The hashes RSA-OAEP, RSA-PSS and the hash-and-sign mechanisms use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    /// The hash a CKM_SHA* mechanism names (as OAEP and PSS parameters carry it).
    fn from_mechanism(m: CK_MECHANISM_TYPE) -> Option<Hash> {
        match m {
            CKM_SHA_1 => Some(Hash::Sha1),
            CKM_SHA224 => Some(Hash::Sha224),
            CKM_SHA256 => Some(Hash::Sha256),
            CKM_SHA384 => Some(Hash::Sha384),
            CKM_SHA512 => Some(Hash::Sha512),
            _ => None,
        }
    }

    /// The MGF1 variant that goes with this hash: the `rsa` crate uses one digest for both.
    fn mgf(self) -> CK_RSA_PKCS_MGF_TYPE {
        match self {
            Hash::Sha1 => CKG_MGF1_SHA1,
            Hash::Sha224 => CKG_MGF1_SHA224,
            Hash::Sha256 => CKG_MGF1_SHA256,
            Hash::Sha384 => CKG_MGF1_SHA384,
            Hash::Sha512 => CKG_MGF1_SHA512,
        }
    }

    fn len(self) -> usize {
        match self {
            Hash::Sha1 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    fn hasher(self) -> Hasher {
        match self {
            Hash::Sha1 => Hasher::Sha1(sha1_011::Sha1::new()),
            Hash::Sha224 => Hasher::Sha224(sha2_011::Sha224::new()),
            Hash::Sha256 => Hasher::Sha256(sha2_011::Sha256::new()),
            Hash::Sha384 => Hasher::Sha384(sha2_011::Sha384::new()),
            Hash::Sha512 => Hasher::Sha512(sha2_011::Sha512::new()),
        }
    }
}

/// Runs `$body` with the type alias `$d` bound to the digest type of `$hash`: the `rsa` padding
/// schemes are generic over the digest.
macro_rules! with_digest {
    ($hash:expr, |$d:ident| $body:expr) => {
        match $hash {
            Hash::Sha1 => {
                type $d = sha1_011::Sha1;
                $body
            }
            Hash::Sha224 => {
                type $d = sha2_011::Sha224;
                $body
            }
            Hash::Sha256 => {
                type $d = sha2_011::Sha256;
                $body
            }
            Hash::Sha384 => {
                type $d = sha2_011::Sha384;
                $body
            }
            Hash::Sha512 => {
                type $d = sha2_011::Sha512;
                $body
            }
        }
    };
}

/// An incremental hash for the multi-part hash-and-sign mechanisms.
#[derive(Clone)]
enum Hasher {
    Sha1(sha1_011::Sha1),
    Sha224(sha2_011::Sha224),
    Sha256(sha2_011::Sha256),
    Sha384(sha2_011::Sha384),
    Sha512(sha2_011::Sha512),
}

impl Hasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => Digest::update(h, data),
            Hasher::Sha224(h) => Digest::update(h, data),
            Hasher::Sha256(h) => Digest::update(h, data),
            Hasher::Sha384(h) => Digest::update(h, data),
            Hasher::Sha512(h) => Digest::update(h, data),
        }
    }

    fn finish(&mut self) -> Vec<u8> {
        match self {
            Hasher::Sha1(h) => h.finalize_reset().to_vec(),
            Hasher::Sha224(h) => h.finalize_reset().to_vec(),
            Hasher::Sha256(h) => h.finalize_reset().to_vec(),
            Hasher::Sha384(h) => h.finalize_reset().to_vec(),
            Hasher::Sha512(h) => h.finalize_reset().to_vec(),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// RSA keys
// ------------------------------------------------------------------------------------------------

/// The `CK_RV`s a failure maps to: encryption, wrapping and unwrapping name the same failures
/// differently.
#[derive(Clone, Copy, Debug)]
struct Rvs {
    /// The key is not an RSA key of the needed kind.
    key_type: CK_RV,
    /// The modulus is outside 2048..=8192 bits.
    key_size: CK_RV,
    /// The plaintext is too long for the modulus and padding.
    data_len: CK_RV,
    /// The ciphertext is not as long as the modulus.
    ct_len: CK_RV,
    /// The ciphertext does not decrypt.
    ct_invalid: CK_RV,
}

const CIPHER_RVS: Rvs = Rvs {
    key_type: CKR_KEY_TYPE_INCONSISTENT,
    key_size: CKR_KEY_SIZE_RANGE,
    data_len: CKR_DATA_LEN_RANGE,
    ct_len: CKR_ENCRYPTED_DATA_LEN_RANGE,
    ct_invalid: CKR_ENCRYPTED_DATA_INVALID,
};

const WRAP_RVS: Rvs = Rvs {
    key_type: CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    key_size: CKR_WRAPPING_KEY_SIZE_RANGE,
    // The key to be wrapped is too long for the wrapping key.
    data_len: CKR_KEY_SIZE_RANGE,
    ct_len: CKR_WRAPPED_KEY_LEN_RANGE,
    ct_invalid: CKR_WRAPPED_KEY_INVALID,
};

const UNWRAP_RVS: Rvs = Rvs {
    key_type: CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    key_size: CKR_UNWRAPPING_KEY_SIZE_RANGE,
    data_len: CKR_KEY_SIZE_RANGE,
    ct_len: CKR_WRAPPED_KEY_LEN_RANGE,
    ct_invalid: CKR_WRAPPED_KEY_INVALID,
};

const SIGN_RVS: Rvs = Rvs {
    key_type: CKR_KEY_TYPE_INCONSISTENT,
    key_size: CKR_KEY_SIZE_RANGE,
    data_len: CKR_DATA_LEN_RANGE,
    ct_len: CKR_SIGNATURE_LEN_RANGE,
    ct_invalid: CKR_SIGNATURE_INVALID,
};

/// `be` without its leading zero bytes.
fn strip_zeros(be: &[u8]) -> &[u8] {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    &be[start..]
}

/// The bit length of a big-endian unsigned integer.
fn bit_len(be: &[u8]) -> usize {
    let be = strip_zeros(be);
    match be.first() {
        None => 0,
        Some(&top) => be.len() * 8 - top.leading_zeros() as usize,
    }
}

/// The modulus length in bytes, after checking the key size.
fn rsa_modulus_len(n: &[u8], rvs: &Rvs) -> CkResult<usize> {
    let bits = bit_len(n);
    if (RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        Ok(bits.div_ceil(8))
    } else {
        Err(rvs.key_size)
    }
}

/// A public value (modulus, exponent) as an integer sized to fit it.
fn public_uint(be: &[u8]) -> BoxedUint {
    BoxedUint::from_be_slice_vartime(strip_zeros(be))
}

/// A secret value as an integer of the modulus's width (`bytes` long), so that its storage size
/// reveals nothing about it. Leading zero bytes beyond that width are tolerated.
fn secret_uint(be: &[u8], bytes: usize) -> CkResult<BoxedUint> {
    let be = if be.len() > bytes {
        let (excess, rest) = be.split_at(be.len() - bytes);
        if excess.iter().any(|&b| b != 0) {
            return Err(INVALID_KEY);
        }
        rest
    } else {
        be
    };
    let bits = u32::try_from(bytes * 8).map_err(|_| INVALID_KEY)?;
    BoxedUint::from_be_slice(be, bits).map_err(|_| INVALID_KEY)
}

/// The public key from a modulus and public exponent.
fn rsa_public(n: &[u8], e: &[u8], rvs: &Rvs) -> CkResult<RsaPublic> {
    rsa_modulus_len(n, rvs)?;
    let e = strip_zeros(e);
    // Reject absurd exponents before building integers from them (the crate's bound is 2^33-1).
    if e.is_empty() || e.len() > 8 {
        return Err(INVALID_KEY);
    }
    RsaPublic::new(public_uint(n), public_uint(e)).map_err(|_| INVALID_KEY)
}

/// The public part of an RSA key reference (a private key object carries it too).
fn rsa_public_of(key: KeyRef<'_>, rvs: &Rvs) -> CkResult<RsaPublic> {
    match key {
        KeyRef::RsaPublic { n, e } | KeyRef::RsaPrivate { n, e, .. } => rsa_public(n, e, rvs),
        _ => Err(rvs.key_type),
    }
}

/// The private key from its parts, validated (p·q = n, d·e ≡ 1 mod p-1 and q-1) and with the
/// CRT values precomputed.
fn rsa_private_of(key: KeyRef<'_>, rvs: &Rvs) -> CkResult<Box<RsaPrivate>> {
    let KeyRef::RsaPrivate { n, e, d, p, q } = key else {
        return Err(rvs.key_type);
    };
    let n = strip_zeros(n);
    let bytes = rsa_modulus_len(n, rvs)?;
    let e = strip_zeros(e);
    if e.is_empty() || e.len() > 8 {
        return Err(INVALID_KEY);
    }
    let primes = vec![secret_uint(p, bytes)?, secret_uint(q, bytes)?];
    let key = RsaPrivate::from_components(
        public_uint(n),
        public_uint(e),
        secret_uint(d, bytes)?,
        primes,
    )
    .map_err(|_| INVALID_KEY)?;
    Ok(Box::new(key))
}

// ------------------------------------------------------------------------------------------------
// RSA encryption (cipher, wrap, unwrap)
// ------------------------------------------------------------------------------------------------

/// An RSA encryption padding with its parameters.
#[derive(Clone, Debug)]
enum EncPad {
    Pkcs1,
    Oaep { hash: Hash, label: Vec<u8> },
}

impl EncPad {
    /// The padding `mechanism` and `params` describe, or `CKR_MECHANISM_PARAM_INVALID`.
    fn new(mechanism: CK_MECHANISM_TYPE, params: &Params) -> CkResult<EncPad> {
        match (mechanism, params) {
            (CKM_RSA_PKCS, Params::None) => Ok(EncPad::Pkcs1),
            (CKM_RSA_PKCS, _) => Err(CKR_MECHANISM_PARAM_INVALID),
            (CKM_RSA_PKCS_OAEP, Params::Oaep { hash, mgf, label }) => {
                let hash = Hash::from_mechanism(*hash).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
                // The rsa crate's OAEP uses one digest for the label hash and MGF1.
                if *mgf != hash.mgf() {
                    return Err(CKR_MECHANISM_PARAM_INVALID);
                }
                Ok(EncPad::Oaep {
                    hash,
                    label: label.clone(),
                })
            }
            (CKM_RSA_PKCS_OAEP, _) => Err(CKR_MECHANISM_PARAM_INVALID),
            _ => Err(CKR_MECHANISM_INVALID),
        }
    }

    /// The longest message this padding fits in a `k`-byte modulus (RFC 8017 §7.1.1, §7.2.1).
    fn max_message(&self, k: usize) -> usize {
        match self {
            EncPad::Pkcs1 => k.saturating_sub(PKCS1_OVERHEAD),
            EncPad::Oaep { hash, .. } => k.saturating_sub(2 * hash.len() + 2),
        }
    }

    fn encrypt(&self, key: &RsaPublic, data: &[u8], rvs: &Rvs) -> CkResult<Vec<u8>> {
        if data.len() > self.max_message(key.size()) {
            return Err(rvs.data_len);
        }
        let result = match self {
            EncPad::Pkcs1 => key.encrypt(&mut SysRng, Pkcs1v15Encrypt, data),
            EncPad::Oaep { hash, label } => with_digest!(*hash, |D| key.encrypt(
                &mut SysRng,
                Oaep::<D>::new_with_label(label.as_slice()),
                data
            )),
        };
        result.map_err(|e| match e {
            rsa::Error::MessageTooLong => rvs.data_len,
            rsa::Error::LabelTooLong => CKR_MECHANISM_PARAM_INVALID,
            _ => CKR_FUNCTION_FAILED,
        })
    }

    /// Decrypts (blinded, with the operating system's RNG). For PKCS #1 v1.5, bad padding
    /// yields a synthetic plaintext (implicit rejection), not an error.
    fn decrypt(
        &self,
        key: &RsaPrivate,
        ciphertext: &[u8],
        rvs: &Rvs,
    ) -> CkResult<Zeroizing<Vec<u8>>> {
        if ciphertext.len() != key.size() {
            return Err(rvs.ct_len);
        }
        let result = match self {
            EncPad::Pkcs1 => key.decrypt(Pkcs1v15Encrypt, ciphertext),
            EncPad::Oaep { hash, label } => with_digest!(*hash, |D| key
                .decrypt(Oaep::<D>::new_with_label(label.as_slice()), ciphertext)),
        };
        match result {
            Ok(plain) => Ok(Zeroizing::new(plain)),
            Err(rsa::Error::Rng) => Err(CKR_FUNCTION_FAILED),
            // The key was validated when built and the length checked above: whatever else
            // fails is the ciphertext (a representative >= n, bad OAEP padding).
            Err(_) => Err(rvs.ct_invalid),
        }
    }
}

/// The key a single RSA operation needs.
enum RsaOpKey {
    Public(RsaPublic),
    Private(Box<RsaPrivate>),
}

/// RSA encryption or decryption: single-part, so `update` only collects the input and
/// `finish` does the work.
struct RsaCipher {
    pad: EncPad,
    key: RsaOpKey,
    /// The modulus length in bytes: the output never exceeds it.
    k: usize,
    input: Zeroizing<Vec<u8>>,
    /// The most input the operation takes, and what exceeding it fails with.
    limit: usize,
    limit_rv: CK_RV,
    finished: bool,
}

impl CipherOp for RsaCipher {
    fn update(&mut self, input: &[u8]) -> CkResult<Vec<u8>> {
        if self.finished {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        }
        if input.len() > self.limit - self.input.len() {
            return Err(self.limit_rv);
        }
        self.input.extend_from_slice(input);
        Ok(Vec::new())
    }

    fn finish(&mut self) -> CkResult<Vec<u8>> {
        if self.finished {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        }
        self.finished = true;
        let input = std::mem::take(&mut *self.input);
        let input = Zeroizing::new(input);
        match &self.key {
            RsaOpKey::Public(key) => self.pad.encrypt(key, &input, &CIPHER_RVS),
            RsaOpKey::Private(key) => {
                let mut plain = self.pad.decrypt(key, &input, &CIPHER_RVS)?;
                Ok(std::mem::take(&mut *plain))
            }
        }
    }

    fn max_update_len(&self, _input_len: usize) -> usize {
        0
    }

    fn max_final_len(&self) -> usize {
        self.k
    }

    fn max_oneshot_len(&self, _input_len: usize) -> usize {
        self.k
    }

    fn multipart(&self) -> bool {
        false
    }
}

/// Starts an RSA encryption (with the public key, or a private key's public part) or a
/// decryption (with the private key).
pub fn cipher(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    key: KeyRef<'_>,
    encrypt: bool,
) -> CkResult<Box<dyn CipherOp>> {
    let pad = EncPad::new(mechanism, params)?;
    let (key, k) = if encrypt {
        let key = rsa_public_of(key, &CIPHER_RVS)?;
        let k = key.size();
        (RsaOpKey::Public(key), k)
    } else {
        let key = rsa_private_of(key, &CIPHER_RVS)?;
        let k = key.size();
        (RsaOpKey::Private(key), k)
    };
    let (limit, limit_rv) = if encrypt {
        (pad.max_message(k), CKR_DATA_LEN_RANGE)
    } else {
        (k, CKR_ENCRYPTED_DATA_LEN_RANGE)
    };
    Ok(Box::new(RsaCipher {
        pad,
        key,
        k,
        input: Zeroizing::new(Vec::new()),
        limit,
        limit_rv,
        finished: false,
    }))
}

/// Wraps a key value (a secret key's CKA_VALUE) with an RSA public key.
pub fn wrap(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    wrapping: KeyRef<'_>,
    key_value: &[u8],
) -> CkResult<Vec<u8>> {
    let pad = EncPad::new(mechanism, params)?;
    let key = rsa_public_of(wrapping, &WRAP_RVS)?;
    pad.encrypt(&key, key_value, &WRAP_RVS)
}

/// Unwraps what [`wrap`] made, with the RSA private key.
pub fn unwrap(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    unwrapping: KeyRef<'_>,
    wrapped: &[u8],
) -> CkResult<Zeroizing<Vec<u8>>> {
    let pad = EncPad::new(mechanism, params)?;
    let key = rsa_private_of(unwrapping, &UNWRAP_RVS)?;
    let value = pad.decrypt(&key, wrapped, &UNWRAP_RVS)?;
    // No key has an empty value.
    if value.is_empty() {
        return Err(CKR_WRAPPED_KEY_INVALID);
    }
    Ok(value)
}

// ------------------------------------------------------------------------------------------------
// EC keys
// ------------------------------------------------------------------------------------------------

/// The curves the token supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    /// The curve CKA_EC_PARAMS names: `CKR_CURVE_NOT_SUPPORTED` for another named curve,
    /// `CKR_DOMAIN_PARAMS_INVALID` for anything that is not a DER OID.
    fn from_params(params: &[u8]) -> CkResult<Curve> {
        if params == OID_P256 {
            return Ok(Curve::P256);
        }
        if params == OID_P384 {
            return Ok(Curve::P384);
        }
        let is_oid = params.len() > 2
            && params[0] == 0x06
            && params[1] < 0x80
            && usize::from(params[1]) == params.len() - 2;
        Err(if is_oid {
            CKR_CURVE_NOT_SUPPORTED
        } else {
            CKR_DOMAIN_PARAMS_INVALID
        })
    }

    /// The field (and scalar) length in bytes.
    fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// An ECDSA key, ready to sign or verify.
enum EcKey {
    P256Sign(p256::ecdsa::SigningKey),
    P256Verify(p256::ecdsa::VerifyingKey),
    P384Sign(p384::ecdsa::SigningKey),
    P384Verify(p384::ecdsa::VerifyingKey),
}

/// The SEC1 point inside CKA_EC_POINT: DER OCTET STRING (as the spec says) or, as some
/// applications store it, the raw uncompressed point.
fn sec1_point(point: &[u8], curve: Curve) -> CkResult<&[u8]> {
    let raw_len = 1 + 2 * curve.field_len();
    if point.len() == raw_len && point[0] == 0x04 {
        return Ok(point);
    }
    if point.len() > 2
        && point[0] == 0x04
        && point[1] < 0x80
        && usize::from(point[1]) == point.len() - 2
    {
        return Ok(&point[2..]);
    }
    Err(INVALID_KEY)
}

/// The private scalar at the field length: CKA_VALUE may have lost leading zeros (or carry
/// extra ones).
fn ec_scalar(value: &[u8], curve: Curve) -> CkResult<Zeroizing<Vec<u8>>> {
    let len = curve.field_len();
    let mut out = Zeroizing::new(vec![0u8; len]);
    if value.len() > len {
        let (excess, rest) = value.split_at(value.len() - len);
        if excess.iter().any(|&b| b != 0) {
            return Err(INVALID_KEY);
        }
        out.copy_from_slice(rest);
    } else {
        out[len - value.len()..].copy_from_slice(value);
    }
    Ok(out)
}

/// The ECDSA key for signing (private keys only) or verifying (public keys, or a private key's
/// public part).
fn ec_key(key: KeyRef<'_>, sign: bool) -> CkResult<(EcKey, Curve)> {
    match (key, sign) {
        (KeyRef::EcPrivate { params, value }, _) => {
            let curve = Curve::from_params(params)?;
            let scalar = ec_scalar(value, curve)?;
            let key = match curve {
                Curve::P256 => {
                    let sk =
                        p256::ecdsa::SigningKey::from_slice(&scalar).map_err(|_| INVALID_KEY)?;
                    if sign {
                        EcKey::P256Sign(sk)
                    } else {
                        EcKey::P256Verify(*sk.verifying_key())
                    }
                }
                Curve::P384 => {
                    let sk =
                        p384::ecdsa::SigningKey::from_slice(&scalar).map_err(|_| INVALID_KEY)?;
                    if sign {
                        EcKey::P384Sign(sk)
                    } else {
                        EcKey::P384Verify(*sk.verifying_key())
                    }
                }
            };
            Ok((key, curve))
        }
        (KeyRef::EcPublic { params, point }, false) => {
            let curve = Curve::from_params(params)?;
            let sec1 = sec1_point(point, curve)?;
            let key = match curve {
                Curve::P256 => EcKey::P256Verify(
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1).map_err(|_| INVALID_KEY)?,
                ),
                Curve::P384 => EcKey::P384Verify(
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1).map_err(|_| INVALID_KEY)?,
                ),
            };
            Ok((key, curve))
        }
        _ => Err(CKR_KEY_TYPE_INCONSISTENT),
    }
}

impl EcKey {
    /// Signs a hash (any length: ECDSA truncates it to the order's length): `r || s`.
    fn sign(&self, hash: &[u8]) -> CkResult<Vec<u8>> {
        match self {
            EcKey::P256Sign(sk) => {
                let sig: p256::ecdsa::Signature =
                    sk.sign_prehash(hash).map_err(|_| CKR_FUNCTION_FAILED)?;
                Ok(sig.to_bytes().to_vec())
            }
            EcKey::P384Sign(sk) => {
                let sig: p384::ecdsa::Signature =
                    sk.sign_prehash(hash).map_err(|_| CKR_FUNCTION_FAILED)?;
                Ok(sig.to_bytes().to_vec())
            }
            EcKey::P256Verify(_) | EcKey::P384Verify(_) => Err(CKR_OPERATION_NOT_INITIALIZED),
        }
    }

    /// Verifies `r || s` (length already checked) over a hash.
    fn verify(&self, hash: &[u8], signature: &[u8]) -> CkResult<()> {
        let ok = match self {
            EcKey::P256Verify(vk) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| vk.verify_prehash(hash, &sig).is_ok()),
            EcKey::P384Verify(vk) => p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| vk.verify_prehash(hash, &sig).is_ok()),
            EcKey::P256Sign(_) | EcKey::P384Sign(_) => return Err(CKR_OPERATION_NOT_INITIALIZED),
        };
        if ok {
            Ok(())
        } else {
            Err(CKR_SIGNATURE_INVALID)
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Signatures
// ------------------------------------------------------------------------------------------------

/// An RSA signature scheme.
#[derive(Clone, Copy, Debug)]
enum RsaScheme {
    /// PKCS #1 v1.5: with `None` the input is the DigestInfo (CKM_RSA_PKCS), otherwise the
    /// hash of the data, DigestInfo-prefixed.
    Pkcs1(Option<Hash>),
    /// PSS with this hash (for the message and MGF1) and salt length.
    Pss { hash: Hash, salt_len: usize },
}

/// The algorithm and key of a signature.
enum SigKind {
    Rsa { scheme: RsaScheme, key: RsaOpKey },
    Ec(EcKey),
}

/// Where the data goes: hashed as it comes (multi-part mechanisms), or collected whole
/// (mechanisms whose input is already a hash).
enum Input {
    Hash(Hasher),
    Raw {
        data: Zeroizing<Vec<u8>>,
        /// The most it takes (CKR_DATA_LEN_RANGE beyond).
        max: usize,
    },
}

/// A signature or verification in progress.
struct AsymSigner {
    kind: SigKind,
    input: Input,
    sign: bool,
    /// The signature length: the modulus length, or twice the EC field length.
    sig_len: usize,
    finished: bool,
}

impl AsymSigner {
    /// The hash (or raw input) to sign, checked against the scheme's length rules.
    fn message(&mut self) -> CkResult<Zeroizing<Vec<u8>>> {
        let message = match &mut self.input {
            Input::Hash(h) => Zeroizing::new(h.finish()),
            Input::Raw { data, .. } => Zeroizing::new(std::mem::take(&mut **data)),
        };
        let ok = match &self.kind {
            SigKind::Rsa {
                scheme: RsaScheme::Pkcs1(None),
                ..
            } => message.len() + PKCS1_OVERHEAD <= self.sig_len,
            SigKind::Rsa {
                scheme: RsaScheme::Pkcs1(Some(hash)) | RsaScheme::Pss { hash, .. },
                ..
            } => message.len() == hash.len(),
            SigKind::Ec(_) => !message.is_empty() && message.len() <= ECDSA_MAX_INPUT,
        };
        if ok {
            Ok(message)
        } else {
            Err(CKR_DATA_LEN_RANGE)
        }
    }

    fn start_final(&mut self, sign: bool) -> CkResult<()> {
        if self.finished || self.sign != sign {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        }
        self.finished = true;
        Ok(())
    }
}

/// Maps an `rsa` signing error: an input the padding cannot take, or a failure.
fn rsa_sign_error(e: rsa::Error) -> CK_RV {
    match e {
        rsa::Error::MessageTooLong | rsa::Error::InputNotHashed => CKR_DATA_LEN_RANGE,
        _ => CKR_FUNCTION_FAILED,
    }
}

impl SignOp for AsymSigner {
    fn update(&mut self, data: &[u8]) -> CkResult<()> {
        if self.finished {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        }
        match &mut self.input {
            Input::Hash(h) => h.update(data),
            Input::Raw { data: buf, max } => {
                if data.len() > *max - buf.len() {
                    return Err(CKR_DATA_LEN_RANGE);
                }
                buf.extend_from_slice(data);
            }
        }
        Ok(())
    }

    fn sign(&mut self) -> CkResult<Vec<u8>> {
        self.start_final(true)?;
        let message = self.message()?;
        match &self.kind {
            SigKind::Rsa {
                scheme,
                key: RsaOpKey::Private(key),
            } => {
                // Blinded with the operating system's RNG; PKCS #1 v1.5 output is
                // deterministic all the same.
                let result = match *scheme {
                    RsaScheme::Pkcs1(None) => key.sign(Pkcs1v15Sign::new_unprefixed(), &message),
                    RsaScheme::Pkcs1(Some(hash)) => {
                        with_digest!(hash, |D| key.sign(Pkcs1v15Sign::new::<D>(), &message))
                    }
                    RsaScheme::Pss { hash, salt_len } => with_digest!(hash, |D| key
                        .sign(Pss::<D>::new_with_salt(salt_len), &message)),
                };
                result.map_err(rsa_sign_error)
            }
            SigKind::Rsa { .. } => Err(CKR_OPERATION_NOT_INITIALIZED),
            SigKind::Ec(key) => key.sign(&message),
        }
    }

    fn verify(&mut self, signature: &[u8]) -> CkResult<()> {
        self.start_final(false)?;
        if signature.len() != self.sig_len {
            return Err(CKR_SIGNATURE_LEN_RANGE);
        }
        let message = self.message()?;
        match &self.kind {
            SigKind::Rsa {
                scheme,
                key: RsaOpKey::Public(key),
            } => {
                let result = match *scheme {
                    RsaScheme::Pkcs1(None) => {
                        key.verify(Pkcs1v15Sign::new_unprefixed(), &message, signature)
                    }
                    RsaScheme::Pkcs1(Some(hash)) => with_digest!(hash, |D| key.verify(
                        Pkcs1v15Sign::new::<D>(),
                        &message,
                        signature
                    )),
                    RsaScheme::Pss { hash, salt_len } => with_digest!(hash, |D| key.verify(
                        Pss::<D>::new_with_salt(salt_len),
                        &message,
                        signature
                    )),
                };
                result.map_err(|_| CKR_SIGNATURE_INVALID)
            }
            SigKind::Rsa { .. } => Err(CKR_OPERATION_NOT_INITIALIZED),
            SigKind::Ec(key) => key.verify(&message, signature),
        }
    }

    fn max_signature_len(&self) -> usize {
        self.sig_len
    }

    fn multipart(&self) -> bool {
        matches!(self.input, Input::Hash(_))
    }
}

/// The PSS parameters' hash and salt length, checked: a supported hash (the mechanism's own for
/// the hash-and-sign mechanisms) with the matching MGF1. The salt is checked against the key
/// by [`pss_salt_fits`].
fn pss_params(params: &Params, expected: Option<Hash>) -> CkResult<(Hash, usize)> {
    let Params::Pss {
        hash,
        mgf,
        salt_len,
    } = params
    else {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    };
    let hash = Hash::from_mechanism(*hash).ok_or(CKR_MECHANISM_PARAM_INVALID)?;
    if expected.is_some_and(|e| e != hash) || *mgf != hash.mgf() {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    Ok((hash, *salt_len))
}

/// Whether a PSS salt fits the encoded message of a `modulus_bits` key (RFC 8017 §9.1.1:
/// emLen >= hLen + sLen + 2, emLen = ceil((modBits - 1) / 8)).
fn pss_salt_fits(hash: Hash, salt_len: usize, modulus_bits: usize) -> bool {
    let em_len = modulus_bits.saturating_sub(1).div_ceil(8);
    salt_len <= em_len.saturating_sub(hash.len() + 2)
}

/// Starts a signature (`sign`, private key) or verification (public key, or a private key's
/// public part).
pub fn signer(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    key: KeyRef<'_>,
    sign: bool,
) -> CkResult<Box<dyn SignOp>> {
    /// The scheme; with the hash the mechanism applies to the data (None: the input is a hash,
    /// or a DigestInfo for CKM_RSA_PKCS, and the mechanism is single-part).
    enum Family {
        Pkcs1,
        Pss,
        Ecdsa,
    }
    let (family, inner_hash) = match mechanism {
        CKM_RSA_PKCS => (Family::Pkcs1, None),
        CKM_SHA256_RSA_PKCS => (Family::Pkcs1, Some(Hash::Sha256)),
        CKM_SHA384_RSA_PKCS => (Family::Pkcs1, Some(Hash::Sha384)),
        CKM_SHA512_RSA_PKCS => (Family::Pkcs1, Some(Hash::Sha512)),
        CKM_RSA_PKCS_PSS => (Family::Pss, None),
        CKM_SHA256_RSA_PKCS_PSS => (Family::Pss, Some(Hash::Sha256)),
        CKM_SHA384_RSA_PKCS_PSS => (Family::Pss, Some(Hash::Sha384)),
        CKM_SHA512_RSA_PKCS_PSS => (Family::Pss, Some(Hash::Sha512)),
        CKM_ECDSA => (Family::Ecdsa, None),
        CKM_ECDSA_SHA256 => (Family::Ecdsa, Some(Hash::Sha256)),
        CKM_ECDSA_SHA384 => (Family::Ecdsa, Some(Hash::Sha384)),
        CKM_ECDSA_SHA512 => (Family::Ecdsa, Some(Hash::Sha512)),
        _ => return Err(CKR_MECHANISM_INVALID),
    };
    // Parameters first, then the key (whose size bounds the PSS salt).
    let pss = match family {
        Family::Pss => Some(pss_params(params, inner_hash)?),
        _ if *params != Params::None => return Err(CKR_MECHANISM_PARAM_INVALID),
        _ => None,
    };
    let (kind, sig_len, raw_max) = match family {
        Family::Pkcs1 | Family::Pss => {
            let key = if sign {
                RsaOpKey::Private(rsa_private_of(key, &SIGN_RVS)?)
            } else {
                RsaOpKey::Public(rsa_public_of(key, &SIGN_RVS)?)
            };
            let (k, bits) = match &key {
                RsaOpKey::Public(k) => (k.size(), k.n().bit_width() as usize),
                RsaOpKey::Private(k) => (k.size(), k.n().bit_width() as usize),
            };
            let (scheme, raw_max) = match pss {
                None => (RsaScheme::Pkcs1(inner_hash), k - PKCS1_OVERHEAD),
                Some((hash, salt_len)) => {
                    if !pss_salt_fits(hash, salt_len, bits) {
                        return Err(CKR_MECHANISM_PARAM_INVALID);
                    }
                    // CKM_RSA_PKCS_PSS signs the hash itself.
                    (RsaScheme::Pss { hash, salt_len }, hash.len())
                }
            };
            (SigKind::Rsa { scheme, key }, k, raw_max)
        }
        Family::Ecdsa => {
            let (key, curve) = ec_key(key, sign)?;
            (SigKind::Ec(key), 2 * curve.field_len(), ECDSA_MAX_INPUT)
        }
    };
    let input = match inner_hash {
        Some(hash) => Input::Hash(hash.hasher()),
        None => Input::Raw {
            data: Zeroizing::new(Vec::new()),
            max: raw_max,
        },
    };
    Ok(Box::new(AsymSigner {
        kind,
        input,
        sign,
        sig_len,
        finished: false,
    }))
}

// ------------------------------------------------------------------------------------------------
// Mechanism list
// ------------------------------------------------------------------------------------------------

const MECHANISMS: &[CK_MECHANISM_TYPE] = &[
    CKM_RSA_PKCS_KEY_PAIR_GEN,
    CKM_RSA_PKCS,
    CKM_RSA_PKCS_OAEP,
    CKM_SHA256_RSA_PKCS,
    CKM_SHA384_RSA_PKCS,
    CKM_SHA512_RSA_PKCS,
    CKM_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS,
    CKM_EC_KEY_PAIR_GEN,
    CKM_ECDSA,
    CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384,
    CKM_ECDSA_SHA512,
];

/// The RSA and EC mechanisms, in the order C_GetMechanismList lists them.
pub fn mechanisms() -> &'static [CK_MECHANISM_TYPE] {
    MECHANISMS
}

/// The capabilities of a supported EC mechanism's curves: prime fields, named curves (OIDs),
/// uncompressed points.
const EC_FLAGS: CK_FLAGS = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;

/// C_GetMechanismInfo: key sizes in bits (RSA modulus, EC field size).
pub fn mechanism_info(m: CK_MECHANISM_TYPE) -> Option<CK_MECHANISM_INFO> {
    let rsa_ops = (RSA_MIN_BITS, RSA_MAX_BITS);
    let ec = (256, 384);
    let ((min, max), flags) = match m {
        CKM_RSA_PKCS_KEY_PAIR_GEN => ((RSA_MIN_BITS, RSA_GEN_MAX_BITS), CKF_GENERATE_KEY_PAIR),
        CKM_RSA_PKCS => (
            rsa_ops,
            CKF_ENCRYPT | CKF_DECRYPT | CKF_SIGN | CKF_VERIFY | CKF_WRAP | CKF_UNWRAP,
        ),
        CKM_RSA_PKCS_OAEP => (rsa_ops, CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP),
        CKM_SHA256_RSA_PKCS
        | CKM_SHA384_RSA_PKCS
        | CKM_SHA512_RSA_PKCS
        | CKM_RSA_PKCS_PSS
        | CKM_SHA256_RSA_PKCS_PSS
        | CKM_SHA384_RSA_PKCS_PSS
        | CKM_SHA512_RSA_PKCS_PSS => (rsa_ops, CKF_SIGN | CKF_VERIFY),
        CKM_EC_KEY_PAIR_GEN => (ec, CKF_GENERATE_KEY_PAIR | EC_FLAGS),
        CKM_ECDSA | CKM_ECDSA_SHA256 | CKM_ECDSA_SHA384 | CKM_ECDSA_SHA512 => {
            (ec, CKF_SIGN | CKF_VERIFY | EC_FLAGS)
        }
        _ => return None,
    };
    Some(CK_MECHANISM_INFO {
        ulMinKeySize: min as CK_ULONG,
        ulMaxKeySize: max as CK_ULONG,
        flags,
    })
}

// ------------------------------------------------------------------------------------------------
// Key generation
// ------------------------------------------------------------------------------------------------

/// An RSA key pair's components, big-endian (private parts wiped on drop).
#[derive(Debug)]
pub struct RsaKeyPair {
    pub n: Vec<u8>,
    pub e: Vec<u8>,
    pub d: Zeroizing<Vec<u8>>,
    pub p: Zeroizing<Vec<u8>>,
    pub q: Zeroizing<Vec<u8>>,
    pub dp: Zeroizing<Vec<u8>>,
    pub dq: Zeroizing<Vec<u8>>,
    pub qinv: Zeroizing<Vec<u8>>,
}

/// A secret integer as big-endian bytes without leading zeros, wiped on drop.
fn secret_bytes(x: &BoxedUint) -> Zeroizing<Vec<u8>> {
    let full = Zeroizing::new(x.to_be_bytes());
    Zeroizing::new(strip_zeros(&full).to_vec())
}

/// A new RSA key pair of `bits` (2048 to 4096) with public exponent `e` (big-endian; empty
/// means 65537). The exponent must be odd, at least 3 and at most 2^33-1.
pub fn generate_rsa(bits: usize, e: &[u8]) -> CkResult<RsaKeyPair> {
    if !(RSA_MIN_BITS..=RSA_GEN_MAX_BITS).contains(&bits) {
        return Err(CKR_KEY_SIZE_RANGE);
    }
    let exponent = if e.is_empty() {
        65537
    } else if strip_zeros(e).len() > 8 {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    } else {
        strip_zeros(e)
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    };
    if exponent < 3 || exponent % 2 == 0 || exponent > RSA_MAX_E {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let key = RsaPrivate::new_with_exp(&mut SysRng, bits, BoxedUint::from(exponent))
        .map_err(|_| CKR_FUNCTION_FAILED)?;
    // from_components (inside new_with_exp) precomputes the CRT values; their absence would be
    // a bug in the crate, reported rather than panicked on.
    let (Some(dp), Some(dq), Some(qinv)) = (key.dp(), key.dq(), key.crt_coefficient()) else {
        return Err(CKR_FUNCTION_FAILED);
    };
    let [p, q] = key.primes() else {
        return Err(CKR_FUNCTION_FAILED);
    };
    Ok(RsaKeyPair {
        n: strip_zeros(&key.n().to_be_bytes()).to_vec(),
        e: strip_zeros(&key.e().to_be_bytes()).to_vec(),
        d: secret_bytes(key.d()),
        p: secret_bytes(p),
        q: secret_bytes(q),
        dp: secret_bytes(dp),
        dq: secret_bytes(dq),
        qinv: secret_bytes(&Zeroizing::new(qinv)),
    })
}

/// An EC key pair on the curve `params` names (DER OID of P-256 or P-384).
#[derive(Debug)]
pub struct EcKeyPair {
    /// CKA_EC_POINT: DER OCTET STRING of the uncompressed point.
    pub point: Vec<u8>,
    /// CKA_VALUE: the private scalar, big-endian.
    pub value: Zeroizing<Vec<u8>>,
}

/// `sec1` wrapped as a DER OCTET STRING (short-form length: points here are at most 97 bytes).
fn der_octet_string(sec1: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sec1.len() + 2);
    out.push(0x04);
    out.push(sec1.len() as u8);
    out.extend_from_slice(sec1);
    out
}

/// A new EC key pair on P-256 or P-384. The scalar is CKA_VALUE at the full field length.
pub fn generate_ec(params: &[u8]) -> CkResult<EcKeyPair> {
    use rsa::Generate;
    match Curve::from_params(params)? {
        Curve::P256 => {
            let sk = p256::ecdsa::SigningKey::try_generate_from_rng(&mut SysRng)
                .map_err(|_| CKR_FUNCTION_FAILED)?;
            let point = sk.verifying_key().to_sec1_point(false);
            let scalar = Zeroizing::new(sk.to_bytes());
            Ok(EcKeyPair {
                point: der_octet_string(point.as_bytes()),
                value: Zeroizing::new(scalar.to_vec()),
            })
        }
        Curve::P384 => {
            let sk = p384::ecdsa::SigningKey::try_generate_from_rng(&mut SysRng)
                .map_err(|_| CKR_FUNCTION_FAILED)?;
            let point = sk.verifying_key().to_sec1_point(false);
            let scalar = Zeroizing::new(sk.to_bytes());
            Ok(EcKeyPair {
                point: der_octet_string(point.as_bytes()),
                value: Zeroizing::new(scalar.to_vec()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known-answer material made with OpenSSL 3.0.19 on the command line when these tests were
    // written: `openssl genpkey` keys (RSA-2048, RSA-3072, P-256, P-384); over MESSAGE an
    // `openssl dgst -sha256 -sign` PKCS #1 v1.5 signature, an `openssl dgst -sha384 -sigopt
    // rsa_padding_mode:pss -sigopt rsa_pss_saltlen:48` signature and `openssl dgst -sha256|-sha384
    // -sign` ECDSA signatures (DER, converted to r || s); over PLAINTEXT `openssl pkeyutl
    // -encrypt` ciphertexts with OAEP SHA-256/MGF1-SHA-256 and label "label", OAEP SHA-1 (the
    // default) and PKCS #1 v1.5.
    const MESSAGE: &[u8] = b"p11gate known-answer test";
    const PLAINTEXT: &[u8] = b"wrapped secret key value 0123456";

    const RSA_N: &str = concat!(
        "992d0b7dbadd8fd605ebbf782f26b5aca8b161e9d614d00bc3b1528921df12f75bb1e09bd727035f18c30ecbcf50fee0",
        "6604543acf7c589bb8b671b3d872582e19d5a7590939c339e81885fd5fd111ca750800ab7cc5a22eac892d72241e9153",
        "a5ba71f9d39db3bd0ff7b38522b97fe75c02b5cb35193b6bb4021facca5aa3c84a6b9c1710509b3aadde25ce28df999a",
        "5e03b9f8d0c5ba46e2824f046b9ab4e2e6fc2131563280a7dd4eb53b7ac45c51597336b92480cbc472558d428e068a54",
        "7c0bb3e01c7d3259c9dd7d872338ae738d8b542f609e3b1dd7237d9df9068332970a4904d08a219a7d5fac9fbd7488a9",
        "6491ac578028cf40ed310024b703f4a5",
    );
    const RSA_E: &str = "010001";
    const RSA_D: &str = concat!(
        "0f78139982761eb10c0f075aa15464f38763c692216b1fa9987d3f6b16ef1ad0bd4364fe0807ea18bffceef119424243",
        "323a4cb155c3e684ef6e096492bed575ee68fbca0b9af842d0542dafed6dc540af79fbeb55a1f5e385cc22b94cb9838e",
        "b185773e36274e8010ed40857900c7d07b23d0ed313317a3a45db48a34335c27d588b2df66bb4e302d4b5fc23e718a85",
        "419b88a467030b8d063459bf8d67298c44142656e554db21479d301f1a834c58749b75062f72a63ac6b33da0eecc15c5",
        "fb768a47c7926fdc91bacc621415f6f47521b9082abe532f3a8578601395e9b7356e268ab5b733da3b552af2d2f01db2",
        "3eda48e89ae1447cc2fcb169e8952b11",
    );
    const RSA_P: &str = concat!(
        "ce2b4a485f427d0412a8153eb3198b17482736efdef1c9d417b4958cf82814482e3f8cdebc274e06996d895afe4506c4",
        "ca8b6dc5e9b3469719d3b029f12e5a8eaad46fbe078a3c8d7f75c160f124802e212f4a8ca810fe35e07c626eb3f223ff",
        "e146762137604f1425895338d38132c50f98a76a12e3dc067dac52d93a3e5879",
    );
    const RSA_Q: &str = concat!(
        "be32ce00d5e3aba0477cceaf49118a81c3ed53e80fa6db1d2f4741d5b4fb5780c347b17743645afc98e5f562b700fe42",
        "50989f53547424fbf46c6c2a2d0f66186d6c08ebfe8b97843f22a136b68400618a368d08b53eb3ba329e190e334e88bc",
        "30c564319fc7ec0952edcc251aebc9af2a44f9c0db6016c1146e0da437dc8a8d",
    );
    const RSA_PKCS1_SHA256_SIG: &str = concat!(
        "50494b87332921549e20736af4c7a7bebff825e41f4549950ef12af526326bb06375c789429a21de6ec592fce0357b01",
        "af7d0c45787b48ac41851ae9f7cd034e6f9bd9455fc29d36e0ef24fa12087e7c2af32155ee4785eb65281909a628dfaf",
        "3acfd3057ed599def1f6fcb8f086180a83ff82bf0111b67f33a7e2c342ce71a85152d99797283eb954481de58936d968",
        "5a893ec8ca3a1268c6d2399be7689c75196d82a34c1e1ee2690c83719b1efd04f9d8979b314c13fb14c596fe6d004174",
        "000b649c39e0c465c07d30ba4b7624fbda3b4e500c3b7094c9743b7c32d881bd03431aa9ce198b3a62be284092969583",
        "a7517432608b0d2470c3a6a8ae71ba50",
    );
    const RSA_PSS_SHA384_SIG: &str = concat!(
        "36bc9fac01ab827a19b587d28558cd55f6726213640381e7850db7868757a928f4f9576fd1d160eaaf83cdf3808c92c2",
        "52bcb7f8a6777e662808ae872e4eba8da664bd43f0762791a50e7265736f1a06b4018aaabfcd5e522ee150e6c60c95be",
        "eca2a811d8859a6d6bbb705385660ccef75c2152074ee5c202ce9d538c9c164cbb301ff5089aa0ad1c044596e3ab2710",
        "0a29b2d53720012ab6658e6ab21d44473347b38c9f8fbaafda0bc07ed97cf251b9d0828cd4b7720b6f6bb35cbaffdd11",
        "35c968dc53fb2dca73679725c8422c5fb9598c20ffad182337ab15fe248a252838e9c3c7a9ba8a474873e4f854908e38",
        "4e3e17b982eb62af1f2c972f163cab62",
    );
    const RSA_OAEP_SHA256_LABEL_CT: &str = concat!(
        "5b8b0561b8e12b97c1f384d8ee3aafda03941a696e4ef5e8e23fdc290362778a22800debac088d6a2bac81f6ed2a2716",
        "9373714bb4808df943487e416f4a1d2bfb9022fa77c33c1511ad57d28eca7343ab8f6f043e2ad9542cba853eeddb1df5",
        "37ff5d78644f901bb28f9d8e81405c02bc62366228149a63beee293c635a2564cd54b6409ec18b495d696a3e759778a8",
        "5335589032cb13acf72076ec9c4c6abdfadc60acfe5ef40e28badef433a1c1b0dd97d3dd00ad76977d55aa3f74b3cc34",
        "22d7814a63d57a7aabca0be4f4ed0fa015901d53f2977b29b23dbe5333359b7e7f51fe2654192590179c0c7c9418c16f",
        "90a4611b11df88863607969ac8a664b3",
    );
    const RSA_OAEP_SHA1_CT: &str = concat!(
        "0743586632f8bde2649ff625793a029dfdde48e064da1106c644eacbfbf156d56761939542194a933041a9fa00847fbb",
        "6bd4e52bbf3ccfa02480a94fbca55bc42202539e19ca4c40d6756ea358ad4b472fc12f94ed30a527c40689218b791a61",
        "3dadde1627a70e55840900c0cd674e9ad5a4d1d6ee25725376ef7ddb3ee83645fcb2c72270661ae5275e455fbe2f3a9c",
        "a0faebbd91142241d983a424c869fb77d3bc0a882cc1a812d74f9c619e57a473ed7aba13824282f87208b32de5597921",
        "8532038e9c00088a16c6b7134ffefbdab1a84ddf7323bdf8913d1739170cf5f633823f192c4447d4e66445abb25faff6",
        "0bde47bc38aa7a55f1123fc195295577",
    );
    const RSA_PKCS1_CT: &str = concat!(
        "224bc51c4ad857849af8e051aed721ffbb2eb219b06b876d333ed5955e831044b31be780b1c948665561cbbdc881a88a",
        "51934b4052409c1168e2c6e765ed5ea2c4d07dd65d483d02ea1078145a0b5b7289d178f4591c5eed22d46bf5a1c3e160",
        "693bc3ec5be13cda72836aca9e9ef97073f2e241804b1accf40c72a920b23ac66f4db77d0fab08587660b73fd4947fc9",
        "a20048e2a3084a1a1699859d6ca1067969c64b7ba572e8facf7be83862a0090773ae278b2449db55103b2437eaaaf719",
        "71d19fe9b109ac42088421cbc10d9530a64b66975d1133b3e6cdd2b451e350297c86eab09c0a58c701c1123e7e82eefd",
        "e0f1fb0fb5f7f280835f6b422da2c339",
    );
    const P256_D: &str = "e9b5033fd4bfd145c17891a1e30398f6d75e16c50b78005b5a87a847cf8df03a";
    const P256_POINT: &str = concat!(
        "04abbf29a3fc445136f0402e7d48a2f2e2765a80218f3817c17b1b86cbc64e52fd511e780fd08f70f94ec9c28475cca9",
        "82fc25904ee471a87a839c1e082c37c5bf",
    );
    const P256_SIG: &str = concat!(
        "e0f76dd34ec9ec45d2849be81f75dbc333c14d5947b79bf81f442cb25ed7cfc129e9155036c2f4a77302e4a1de92c82f",
        "34438651f224d302086392ff1e677986",
    );
    const P384_D: &str = "082b37639ae252ee8e2ee319f24047b2b292db525d9c42f02cf57b0582eb44a87ab83762a5e61d8a630db1b062e2d542";
    const P384_POINT: &str = concat!(
        "043580801fe93dcb0b9dd5c3491e9c41013bf5fb97ced07df4879f8b99279d67008c9fce75bd14e732f5b8dc1c931178",
        "0bab3114b3f636f9787017cc2509efe464072d827c87588fb0dff75599cbe6e17a30c2f5c34f2fda59421b1b4785c414",
        "b6",
    );
    const P384_SIG: &str = concat!(
        "949047372fd9770a17953d6661770106b331a35406eca415d9da871fc744ca10fa9bdad39943d66ed53165100bc32877",
        "dee585e99bf7f12a7e88369721f24a2abea86c7e4dc1a50dfca2e35c86be2eab88b281aaf0287b599ffbf65d5667d159",
    );
    const RSA3072_N: &str = concat!(
        "ab26af028436aa17cce3955f9e3800c76558a536ff3641efbd3ff5d299166eb64b4829c95dbf5eec6843c65c9114ba0e",
        "cd9a78ba9c8ebfaabe5455df845044dec1b69e6fc1cea54190ae42af1aabed5343d1082eb26fbe6a40c91c2c9a46b1c9",
        "74033701cde51f3fad6efeb6218401f8e066bf6ddbbd6b48a692927366233c586f5da4b440dd01b0398a57ef980c3293",
        "6e4b943ead010017b17ff211244a4934331ea7ed36fd97697007bb6de6ff5b77adee073ebd317d6cc03429f5ab48090c",
        "8ae40e2b64a52feeab75b6e043973562d7a46a0af459cc4dceadff051e40e4ab264d380d613946062e8587ec15193df3",
        "fad35eb1e35883ef8c9fe3a43d5dacdd8dbda0fe3ac13208ef2930ebe4a7943c30aa5885fdb5fde03e962c83f7cbf692",
        "dba319f24710172ea3b8f4770b769ea7746b0a80b52aa916af6868de84544fa8a865ea0dd68d4aaaee9fb005fc62b8f6",
        "211e2fee17b7de8ae5a86dc2a7331c9ba10830d5ff047a507a05f6ac37b8bc6c9eb66d13ed63ceee80bf3764d005ccc1",
    );
    const RSA3072_D: &str = concat!(
        "1a6686effb2f8878cfe2da378beb25199ce539e4fc24a532a32d72d0a7cb294c46dc0c90127d32da0232542e92b59106",
        "b809e82e16f8c1118836efa1212295a10bde0cddfdd60fb147ad4dbd7f7e7e470e0ab839a5ce2d5febfae9b4ea9e558d",
        "d6eea90546fa9d21a031e329fa8d0795d99d97d14d28509c7e0f5576660eb0e00e5bb24c98c5ce9d1d9f1cb5e96d163f",
        "1e301bdfb825939b5406c1b309b748c7fbcbb28919a6affcb46a88eba8ca82943938e296b7ade2e44bd8b0114478c1e6",
        "53ecc4526a2ffed343364042f0bfb3f2e4dfd13ff1380eef3930a7241903138cd9a581951c9aaf1abf65de9d558fc453",
        "a4176c4025a6e621bdb3caeca0455420f66d22b34345bdc7b58bbb7008db1e9e39454b4d8b881443af240f34c17ff990",
        "334c52eb152d632620aac4a3df6b7d09cc9d3260d1f8ebf558ffcfc88f4c5421ea30b072e71531f6df642d2614128473",
        "139bd7b248a2317ce295f3522afef6fefb9508b4901aff4e159db15cf9cde533bc9e0eed90eb8b6a484bf1c96d13201d",
    );
    const RSA3072_P: &str = concat!(
        "dfc53cea24a304285aec51a4d9d946f9a5b316c62f699b9572354970a03a0b9ce03764fd9393ae29c9f1f40a0a43e36a",
        "a0b4544cd577c1726c958c8e3801b64c06b20475d005eb5713ba4b480e98274c2e992500b5300297fa4fbe0b83945708",
        "ae993dd06c40b1f248ffbf456ecff18e7021baf165fbf7cb62913e866926dff9e5a4d2b0a3c8dfa190960cad6a668249",
        "f5182c8967c2ea3206eaab5cc71ae68fc5d8c3032dad0bb2920ffc31fd2025d72138de9f4b6514e347ee6a7fdd6fb3dd",
    );
    const RSA3072_Q: &str = concat!(
        "c3cd49fab48e1b82b348e42776de52386d437a35985665d428219d2b17b8ed26d51a3b33742f455bf3ec30a795d30877",
        "45f3188fb6bed9d5563e80c8701c65d4f4b303b8c425ee2f41a5617065a3c395d73eb6364f709847c4dac45242db329e",
        "9f2854bfebad1e4e00ca4e513ba0d23a2463e00aacfe2ffc80567a49711f14660482907d56d341a335d5ea045875f7b7",
        "61e505997da572e2cab3b5573c9dcabd6f248ed95980ed39a24d4e76e1c8b56fe55bfd3df849b020b751a7f509aad035",
    );

    fn hex(s: &str) -> Vec<u8> {
        assert!(s.len().is_multiple_of(2));
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Owned RSA components, to lend out as KeyRefs.
    struct Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
        d: Vec<u8>,
        p: Vec<u8>,
        q: Vec<u8>,
    }

    impl Rsa {
        fn public(&self) -> KeyRef<'_> {
            KeyRef::RsaPublic {
                n: &self.n,
                e: &self.e,
            }
        }
        fn private(&self) -> KeyRef<'_> {
            KeyRef::RsaPrivate {
                n: &self.n,
                e: &self.e,
                d: &self.d,
                p: &self.p,
                q: &self.q,
            }
        }
    }

    fn kat_rsa() -> Rsa {
        Rsa {
            n: hex(RSA_N),
            e: hex(RSA_E),
            d: hex(RSA_D),
            p: hex(RSA_P),
            q: hex(RSA_Q),
        }
    }

    fn kat_rsa3072() -> Rsa {
        Rsa {
            n: hex(RSA3072_N),
            e: vec![1, 0, 1],
            d: hex(RSA3072_D),
            p: hex(RSA3072_P),
            q: hex(RSA3072_Q),
        }
    }

    fn generated_rsa(bits: usize) -> Rsa {
        let k = generate_rsa(bits, &[1, 0, 1]).unwrap();
        Rsa {
            n: k.n.clone(),
            e: k.e.clone(),
            d: k.d.to_vec(),
            p: k.p.to_vec(),
            q: k.q.to_vec(),
        }
    }

    fn oaep(hash: CK_MECHANISM_TYPE, mgf: CK_RSA_PKCS_MGF_TYPE, label: &[u8]) -> Params {
        Params::Oaep {
            hash,
            mgf,
            label: label.to_vec(),
        }
    }

    fn pss(hash: CK_MECHANISM_TYPE, mgf: CK_RSA_PKCS_MGF_TYPE, salt_len: usize) -> Params {
        Params::Pss {
            hash,
            mgf,
            salt_len,
        }
    }

    /// Every supported (hash, MGF) pair.
    const HASHES: [(CK_MECHANISM_TYPE, CK_RSA_PKCS_MGF_TYPE, usize); 5] = [
        (CKM_SHA_1, CKG_MGF1_SHA1, 20),
        (CKM_SHA224, CKG_MGF1_SHA224, 28),
        (CKM_SHA256, CKG_MGF1_SHA256, 32),
        (CKM_SHA384, CKG_MGF1_SHA384, 48),
        (CKM_SHA512, CKG_MGF1_SHA512, 64),
    ];

    /// A single-part encryption or decryption as the caller does it: update, then finish.
    fn crypt(
        m: CK_MECHANISM_TYPE,
        params: &Params,
        key: KeyRef<'_>,
        encrypt: bool,
        input: &[u8],
    ) -> CkResult<Vec<u8>> {
        let mut op = cipher(m, params, key, encrypt)?;
        assert!(!op.multipart());
        assert!(op.max_oneshot_len(input.len()) >= op.max_final_len());
        let mut out = op.update(input)?;
        assert!(out.is_empty());
        out.extend(op.finish()?);
        assert!(out.len() <= op.max_oneshot_len(input.len()));
        Ok(out)
    }

    /// A signature, fed in chunks when the mechanism is multi-part.
    fn sign_data(
        m: CK_MECHANISM_TYPE,
        params: &Params,
        key: KeyRef<'_>,
        data: &[u8],
    ) -> CkResult<Vec<u8>> {
        let mut op = signer(m, params, key, true)?;
        if op.multipart() {
            for chunk in data.chunks(7) {
                op.update(chunk)?;
            }
        } else {
            op.update(data)?;
        }
        let sig = op.sign()?;
        assert_eq!(sig.len(), op.max_signature_len());
        Ok(sig)
    }

    fn verify_data(
        m: CK_MECHANISM_TYPE,
        params: &Params,
        key: KeyRef<'_>,
        data: &[u8],
        sig: &[u8],
    ) -> CkResult<()> {
        let mut op = signer(m, params, key, false)?;
        if op.multipart() {
            for chunk in data.chunks(5) {
                op.update(chunk)?;
            }
        } else {
            op.update(data)?;
        }
        op.verify(sig)
    }

    fn sha(hash: Hash, data: &[u8]) -> Vec<u8> {
        let mut h = hash.hasher();
        h.update(data);
        h.finish()
    }

    /// The DigestInfo of SHA-256(data), as a CKM_RSA_PKCS signer is given it (RFC 8017 §9.2).
    fn sha256_digest_info(data: &[u8]) -> Vec<u8> {
        let mut di = hex("3031300d060960864801650304020105000420");
        di.extend(sha(Hash::Sha256, data));
        di
    }

    // --------------------------------------------------------------------------------------------
    // RSA key generation
    // --------------------------------------------------------------------------------------------

    /// The components are consistent: n = p·q, dp = d mod p-1, dq = d mod q-1, qinv·q ≡ 1 mod p,
    /// and nothing has a leading zero.
    fn check_components(k: &RsaKeyPair, bits: usize) {
        use rsa::BoxedUint as U;
        for v in [&k.n, &k.e, &*k.d, &*k.p, &*k.q, &*k.dp, &*k.dq, &*k.qinv] {
            assert_ne!(v.first(), Some(&0), "leading zero");
            assert!(!v.is_empty());
        }
        assert_eq!(bit_len(&k.n), bits);
        let prec = (k.n.len() * 8 * 2) as u32;
        let u = |b: &[u8]| U::from_be_slice(b, prec).unwrap();
        let (n, d, p, q) = (u(&k.n), u(&k.d), u(&k.p), u(&k.q));
        assert_eq!(p.wrapping_mul(&q), n);
        let one = U::one_with_precision(prec);
        let nz = |x: U| p256::elliptic_curve::bigint::NonZero::new(x).unwrap();
        let p1 = p.wrapping_sub(&one);
        let q1 = q.wrapping_sub(&one);
        assert_eq!(d.rem(&nz(p1)), u(&k.dp));
        assert_eq!(d.rem(&nz(q1)), u(&k.dq));
        assert_eq!(u(&k.qinv).wrapping_mul(&q).rem(&nz(p)), one);
    }

    #[test]
    fn rsa_generation_2048() {
        let k = generate_rsa(2048, &[1, 0, 1]).unwrap();
        assert_eq!(k.e, [1, 0, 1]);
        check_components(&k, 2048);
        // An empty exponent means 65537; zero padding is ignored; other odd exponents work.
        assert_eq!(generate_rsa(2048, &[]).unwrap().e, [1, 0, 1]);
        assert_eq!(generate_rsa(2048, &[0, 0, 1, 0, 1]).unwrap().e, [1, 0, 1]);
        let k3 = generate_rsa(2048, &[3]).unwrap();
        assert_eq!(k3.e, [3]);
        check_components(&k3, 2048);
        // A modulus size that is not a whole number of bytes.
        check_components(&generate_rsa(2051, &[1, 0, 1]).unwrap(), 2051);
    }

    #[test]
    fn rsa_generation_errors() {
        for bits in [0, 1024, 2047, 4097, 8192] {
            assert_eq!(
                generate_rsa(bits, &[1, 0, 1]).unwrap_err(),
                CKR_KEY_SIZE_RANGE
            );
        }
        for e in [
            &[0u8][..],
            &[1],
            &[2],
            &[1, 0, 0],
            &[2, 0, 0, 0, 1],             // 2^33 + 1: beyond the crate's bound
            &[1, 0, 0, 0, 0, 0, 0, 0, 1], // nine bytes
        ] {
            assert_eq!(
                generate_rsa(2048, e).unwrap_err(),
                CKR_TEMPLATE_INCONSISTENT,
                "{e:?}"
            );
        }
    }

    /// The keys the token generates work for every RSA mechanism (2048 bits here; 3072 and 4096
    /// in the ignored test below, since larger key generation is slow in debug builds).
    #[test]
    fn rsa_generated_2048_all_mechanisms() {
        all_rsa_mechanisms(&generated_rsa(2048));
        // PSS's encoded-message length rule differs when the modulus bits are ≡ 1 mod 8.
        all_rsa_mechanisms(&generated_rsa(2049));
    }

    #[test]
    #[ignore = "slow: 3072- and 4096-bit key generation"]
    fn rsa_generated_3072_4096_all_mechanisms() {
        for bits in [3072, 4096] {
            let k = generate_rsa(bits, &[1, 0, 1]).unwrap();
            check_components(&k, bits);
            all_rsa_mechanisms(&generated_rsa(bits));
        }
    }

    #[test]
    fn rsa_kat_keys_all_mechanisms() {
        all_rsa_mechanisms(&kat_rsa());
        all_rsa_mechanisms(&kat_rsa3072());
    }

    /// Round trips through every RSA mechanism and parameter set with `key`.
    fn all_rsa_mechanisms(key: &Rsa) {
        let k = (bit_len(&key.n)).div_ceil(8);
        // OAEP, every hash, with and without a label, shortest and longest message.
        for (hash, mgf, hlen) in HASHES {
            for label in [&b""[..], b"a label"] {
                let params = oaep(hash, mgf, label);
                for msg in [&b""[..], PLAINTEXT, &vec![0xA5; k - 2 * hlen - 2]] {
                    let ct = crypt(CKM_RSA_PKCS_OAEP, &params, key.public(), true, msg).unwrap();
                    assert_eq!(ct.len(), k);
                    let pt = crypt(CKM_RSA_PKCS_OAEP, &params, key.private(), false, &ct).unwrap();
                    assert_eq!(pt, msg);
                }
                let wrapped = wrap(CKM_RSA_PKCS_OAEP, &params, key.public(), PLAINTEXT).unwrap();
                let value = unwrap(CKM_RSA_PKCS_OAEP, &params, key.private(), &wrapped).unwrap();
                assert_eq!(&*value, PLAINTEXT);
            }
        }
        // PKCS #1 v1.5 encryption and wrapping.
        for msg in [&b""[..], PLAINTEXT, &vec![0x5A; k - 11]] {
            let ct = crypt(CKM_RSA_PKCS, &Params::None, key.public(), true, msg).unwrap();
            let pt = crypt(CKM_RSA_PKCS, &Params::None, key.private(), false, &ct).unwrap();
            assert_eq!(pt, msg);
        }
        let wrapped = wrap(CKM_RSA_PKCS, &Params::None, key.public(), PLAINTEXT).unwrap();
        let value = unwrap(CKM_RSA_PKCS, &Params::None, key.private(), &wrapped).unwrap();
        assert_eq!(&*value, PLAINTEXT);

        // PKCS #1 v1.5 signatures: raw DigestInfo and hash-and-sign; deterministic.
        let di = sha256_digest_info(MESSAGE);
        let raw = sign_data(CKM_RSA_PKCS, &Params::None, key.private(), &di).unwrap();
        assert_eq!(
            raw,
            sign_data(CKM_RSA_PKCS, &Params::None, key.private(), &di).unwrap()
        );
        verify_data(CKM_RSA_PKCS, &Params::None, key.public(), &di, &raw).unwrap();
        for m in [
            CKM_SHA256_RSA_PKCS,
            CKM_SHA384_RSA_PKCS,
            CKM_SHA512_RSA_PKCS,
        ] {
            let sig = sign_data(m, &Params::None, key.private(), MESSAGE).unwrap();
            assert_eq!(sig.len(), k);
            assert_eq!(
                sig,
                sign_data(m, &Params::None, key.private(), MESSAGE).unwrap()
            );
            verify_data(m, &Params::None, key.public(), MESSAGE, &sig).unwrap();
            // The private key object verifies too (with its public part).
            verify_data(m, &Params::None, key.private(), MESSAGE, &sig).unwrap();
            if m == CKM_SHA256_RSA_PKCS {
                // Hashing inside is the same as signing the DigestInfo.
                assert_eq!(sig, raw);
            }
        }

        // PSS: raw hash input with every hash; hash-and-sign with theirs; salt lengths 0, hLen
        // and the largest that fits.
        let em_len = (bit_len(&key.n) - 1).div_ceil(8);
        for (hash, mgf, hlen) in HASHES {
            let h = Hash::from_mechanism(hash).unwrap();
            let digest = sha(h, MESSAGE);
            for salt in [0, hlen, em_len - hlen - 2] {
                let params = pss(hash, mgf, salt);
                let sig = sign_data(CKM_RSA_PKCS_PSS, &params, key.private(), &digest).unwrap();
                verify_data(CKM_RSA_PKCS_PSS, &params, key.public(), &digest, &sig).unwrap();
                let hashed = match hash {
                    CKM_SHA256 => CKM_SHA256_RSA_PKCS_PSS,
                    CKM_SHA384 => CKM_SHA384_RSA_PKCS_PSS,
                    CKM_SHA512 => CKM_SHA512_RSA_PKCS_PSS,
                    _ => continue,
                };
                // Same hash, same key: the hash-and-sign mechanism verifies the raw one's
                // signature.
                verify_data(hashed, &params, key.public(), MESSAGE, &sig).unwrap();
                let sig = sign_data(hashed, &params, key.private(), MESSAGE).unwrap();
                verify_data(CKM_RSA_PKCS_PSS, &params, key.public(), &digest, &sig).unwrap();
            }
        }
    }

    // --------------------------------------------------------------------------------------------
    // RSA known answers (OpenSSL)
    // --------------------------------------------------------------------------------------------

    #[test]
    fn rsa_pkcs1_signature_matches_openssl() {
        let key = kat_rsa();
        let expected = hex(RSA_PKCS1_SHA256_SIG);
        // PKCS #1 v1.5 signatures are deterministic: ours must be OpenSSL's, byte for byte.
        let sig = sign_data(CKM_SHA256_RSA_PKCS, &Params::None, key.private(), MESSAGE).unwrap();
        assert_eq!(sig, expected);
        let di = sha256_digest_info(MESSAGE);
        let raw = sign_data(CKM_RSA_PKCS, &Params::None, key.private(), &di).unwrap();
        assert_eq!(raw, expected);
        verify_data(
            CKM_SHA256_RSA_PKCS,
            &Params::None,
            key.public(),
            MESSAGE,
            &expected,
        )
        .unwrap();
        verify_data(CKM_RSA_PKCS, &Params::None, key.public(), &di, &expected).unwrap();
    }

    #[test]
    fn rsa_pss_verifies_openssl_signature() {
        let key = kat_rsa();
        let sig = hex(RSA_PSS_SHA384_SIG);
        let params = pss(CKM_SHA384, CKG_MGF1_SHA384, 48);
        verify_data(
            CKM_SHA384_RSA_PKCS_PSS,
            &params,
            key.public(),
            MESSAGE,
            &sig,
        )
        .unwrap();
        let digest = sha(Hash::Sha384, MESSAGE);
        verify_data(CKM_RSA_PKCS_PSS, &params, key.public(), &digest, &sig).unwrap();
        // The salt length is checked, not guessed.
        let other_salt = pss(CKM_SHA384, CKG_MGF1_SHA384, 32);
        assert_eq!(
            verify_data(
                CKM_SHA384_RSA_PKCS_PSS,
                &other_salt,
                key.public(),
                MESSAGE,
                &sig
            ),
            Err(CKR_SIGNATURE_INVALID)
        );
        assert_eq!(
            verify_data(
                CKM_SHA384_RSA_PKCS_PSS,
                &params,
                key.public(),
                b"other",
                &sig
            ),
            Err(CKR_SIGNATURE_INVALID)
        );
    }

    #[test]
    fn rsa_decrypts_openssl_ciphertexts() {
        let key = kat_rsa();
        let params = oaep(CKM_SHA256, CKG_MGF1_SHA256, b"label");
        let ct = hex(RSA_OAEP_SHA256_LABEL_CT);
        assert_eq!(
            crypt(CKM_RSA_PKCS_OAEP, &params, key.private(), false, &ct).unwrap(),
            PLAINTEXT
        );
        assert_eq!(
            &*unwrap(CKM_RSA_PKCS_OAEP, &params, key.private(), &ct).unwrap(),
            PLAINTEXT
        );
        // The wrong label (or none) is a decryption failure.
        let no_label = oaep(CKM_SHA256, CKG_MGF1_SHA256, b"");
        assert_eq!(
            crypt(CKM_RSA_PKCS_OAEP, &no_label, key.private(), false, &ct),
            Err(CKR_ENCRYPTED_DATA_INVALID)
        );
        assert_eq!(
            unwrap(CKM_RSA_PKCS_OAEP, &no_label, key.private(), &ct).unwrap_err(),
            CKR_WRAPPED_KEY_INVALID
        );
        let sha1 = oaep(CKM_SHA_1, CKG_MGF1_SHA1, b"");
        let ct = hex(RSA_OAEP_SHA1_CT);
        assert_eq!(
            crypt(CKM_RSA_PKCS_OAEP, &sha1, key.private(), false, &ct).unwrap(),
            PLAINTEXT
        );
        let ct = hex(RSA_PKCS1_CT);
        assert_eq!(
            crypt(CKM_RSA_PKCS, &Params::None, key.private(), false, &ct).unwrap(),
            PLAINTEXT
        );
    }

    // --------------------------------------------------------------------------------------------
    // RSA error paths
    // --------------------------------------------------------------------------------------------

    #[test]
    fn rsa_cipher_parameter_errors() {
        let key = kat_rsa();
        let bad = [
            oaep(CKM_SHA256, CKG_MGF1_SHA1, b""),
            oaep(CKM_SHA_1, CKG_MGF1_SHA256, b""),
            oaep(CKM_MD5, CKG_MGF1_SHA1, b""),
            oaep(CKM_SHA256, 0, b""),
            pss(CKM_SHA256, CKG_MGF1_SHA256, 32),
            Params::None,
            Params::Iv(vec![0; 16]),
        ];
        for params in &bad {
            for encrypt in [true, false] {
                let k = if encrypt { key.public() } else { key.private() };
                assert_eq!(
                    cipher(CKM_RSA_PKCS_OAEP, params, k, encrypt).err(),
                    Some(CKR_MECHANISM_PARAM_INVALID),
                    "{params:?}"
                );
            }
            assert_eq!(
                wrap(CKM_RSA_PKCS_OAEP, params, key.public(), PLAINTEXT).unwrap_err(),
                CKR_MECHANISM_PARAM_INVALID
            );
            assert_eq!(
                unwrap(CKM_RSA_PKCS_OAEP, params, key.private(), &[0; 256]).unwrap_err(),
                CKR_MECHANISM_PARAM_INVALID
            );
        }
        let sha256 = oaep(CKM_SHA256, CKG_MGF1_SHA256, b"");
        assert_eq!(
            cipher(CKM_RSA_PKCS, &sha256, key.public(), true).err(),
            Some(CKR_MECHANISM_PARAM_INVALID)
        );
        assert_eq!(
            cipher(CKM_AES_CBC, &Params::None, key.public(), true).err(),
            Some(CKR_MECHANISM_INVALID)
        );
        assert_eq!(
            wrap(CKM_SHA256_RSA_PKCS, &Params::None, key.public(), PLAINTEXT).unwrap_err(),
            CKR_MECHANISM_INVALID
        );
    }

    #[test]
    fn rsa_cipher_length_errors() {
        let key = kat_rsa();
        let params = oaep(CKM_SHA256, CKG_MGF1_SHA256, b"");
        // OAEP-SHA-256 fits 256 - 66 = 190 bytes; PKCS #1 v1.5 fits 245.
        for (m, p, max) in [
            (CKM_RSA_PKCS_OAEP, &params, 190),
            (CKM_RSA_PKCS, &Params::None, 245),
        ] {
            assert!(crypt(m, p, key.public(), true, &vec![1; max]).is_ok());
            assert_eq!(
                crypt(m, p, key.public(), true, &vec![1; max + 1]),
                Err(CKR_DATA_LEN_RANGE)
            );
            // Fed in two updates, the excess is refused when it arrives.
            let mut op = cipher(m, p, key.public(), true).unwrap();
            op.update(&vec![1; max]).unwrap();
            assert_eq!(op.update(&[1]), Err(CKR_DATA_LEN_RANGE));
            assert_eq!(
                wrap(m, p, key.public(), &vec![1; max + 1]).unwrap_err(),
                CKR_KEY_SIZE_RANGE
            );
            // Ciphertext must be exactly the modulus length.
            for len in [0, 1, 255] {
                assert_eq!(
                    crypt(m, p, key.private(), false, &vec![1; len]),
                    Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
                );
                assert_eq!(
                    unwrap(m, p, key.private(), &vec![1; len]).unwrap_err(),
                    CKR_WRAPPED_KEY_LEN_RANGE
                );
            }
            assert_eq!(
                crypt(m, p, key.private(), false, &[1; 257]),
                Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
            );
            assert_eq!(
                unwrap(m, p, key.private(), &[1; 257]).unwrap_err(),
                CKR_WRAPPED_KEY_LEN_RANGE
            );
            // A representative not below the modulus does not decrypt.
            assert_eq!(
                crypt(m, p, key.private(), false, &[0xFF; 256]),
                Err(CKR_ENCRYPTED_DATA_INVALID)
            );
            assert_eq!(
                unwrap(m, p, key.private(), &[0xFF; 256]).unwrap_err(),
                CKR_WRAPPED_KEY_INVALID
            );
            let op = cipher(m, p, key.private(), false).unwrap();
            assert_eq!(op.max_update_len(100), 0);
            assert_eq!(op.max_final_len(), 256);
            assert_eq!(op.max_oneshot_len(256), 256);
        }
    }

    #[test]
    fn rsa_oaep_tampering_is_detected() {
        let key = kat_rsa();
        let params = oaep(CKM_SHA256, CKG_MGF1_SHA256, b"");
        let mut ct = crypt(CKM_RSA_PKCS_OAEP, &params, key.public(), true, PLAINTEXT).unwrap();
        ct[100] ^= 1;
        assert_eq!(
            crypt(CKM_RSA_PKCS_OAEP, &params, key.private(), false, &ct),
            Err(CKR_ENCRYPTED_DATA_INVALID)
        );
        assert_eq!(
            unwrap(CKM_RSA_PKCS_OAEP, &params, key.private(), &ct).unwrap_err(),
            CKR_WRAPPED_KEY_INVALID
        );
        // Decrypting with another hash fails the same way.
        let sha1 = oaep(CKM_SHA_1, CKG_MGF1_SHA1, b"");
        ct[100] ^= 1;
        assert_eq!(
            crypt(CKM_RSA_PKCS_OAEP, &sha1, key.private(), false, &ct),
            Err(CKR_ENCRYPTED_DATA_INVALID)
        );
    }

    /// PKCS #1 v1.5 decryption uses implicit rejection: bad padding gives a synthetic message,
    /// the same for the same ciphertext, and no error to serve as an oracle.
    #[test]
    fn rsa_pkcs1_decryption_implicit_rejection() {
        let key = kat_rsa();
        let mut ct = crypt(CKM_RSA_PKCS, &Params::None, key.public(), true, PLAINTEXT).unwrap();
        ct[100] ^= 1;
        let a = crypt(CKM_RSA_PKCS, &Params::None, key.private(), false, &ct).unwrap();
        let b = crypt(CKM_RSA_PKCS, &Params::None, key.private(), false, &ct).unwrap();
        assert_ne!(a, PLAINTEXT);
        assert_eq!(a, b);
        assert!(a.len() <= 245);
    }

    #[test]
    fn rsa_key_errors() {
        let key = kat_rsa();
        let ec = KeyRef::EcPrivate {
            params: OID_P256,
            value: &[1; 32],
        };
        let aes = KeyRef::Secret(&[0; 32]);
        let oaep256 = oaep(CKM_SHA256, CKG_MGF1_SHA256, b"");
        for (m, p) in [(CKM_RSA_PKCS, &Params::None), (CKM_RSA_PKCS_OAEP, &oaep256)] {
            for wrong in [ec, aes] {
                assert_eq!(
                    cipher(m, p, wrong, true).err(),
                    Some(CKR_KEY_TYPE_INCONSISTENT)
                );
                assert_eq!(
                    cipher(m, p, wrong, false).err(),
                    Some(CKR_KEY_TYPE_INCONSISTENT)
                );
                assert_eq!(
                    wrap(m, p, wrong, PLAINTEXT).unwrap_err(),
                    CKR_WRAPPING_KEY_TYPE_INCONSISTENT
                );
                assert_eq!(
                    unwrap(m, p, wrong, &[0; 256]).unwrap_err(),
                    CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT
                );
            }
            // Decryption and unwrapping need the private key.
            assert_eq!(
                cipher(m, p, key.public(), false).err(),
                Some(CKR_KEY_TYPE_INCONSISTENT)
            );
            assert_eq!(
                unwrap(m, p, key.public(), &[0; 256]).unwrap_err(),
                CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT
            );
            // Encryption with a private key object uses its public part.
            let ct = crypt(m, p, key.private(), true, PLAINTEXT).unwrap();
            assert_eq!(crypt(m, p, key.private(), false, &ct).unwrap(), PLAINTEXT);
        }
        // Key sizes outside 2048..=8192 bits.
        let small = KeyRef::RsaPublic {
            n: &key.n[..128],
            e: &key.e,
        };
        let mut huge_n = vec![0xFF; 1025];
        huge_n[1024] = 0xFD;
        let huge = KeyRef::RsaPublic {
            n: &huge_n,
            e: &key.e,
        };
        for k in [small, huge] {
            assert_eq!(
                cipher(CKM_RSA_PKCS, &Params::None, k, true).err(),
                Some(CKR_KEY_SIZE_RANGE)
            );
            assert_eq!(
                wrap(CKM_RSA_PKCS, &Params::None, k, PLAINTEXT).unwrap_err(),
                CKR_WRAPPING_KEY_SIZE_RANGE
            );
            assert_eq!(
                signer(CKM_SHA256_RSA_PKCS, &Params::None, k, false).err(),
                Some(CKR_KEY_SIZE_RANGE)
            );
        }
        let small_private = KeyRef::RsaPrivate {
            n: &key.n[..128],
            e: &key.e,
            d: &key.d,
            p: &key.p,
            q: &key.q,
        };
        assert_eq!(
            unwrap(CKM_RSA_PKCS, &Params::None, small_private, &[0; 128]).unwrap_err(),
            CKR_UNWRAPPING_KEY_SIZE_RANGE
        );
        // Leading zeros on any component are harmless.
        let padded = |v: &[u8]| [&[0u8, 0][..], v].concat();
        let (n, e, d, p, q) = (
            padded(&key.n),
            padded(&key.e),
            padded(&key.d),
            padded(&key.p),
            padded(&key.q),
        );
        let padded_key = KeyRef::RsaPrivate {
            n: &n,
            e: &e,
            d: &d,
            p: &p,
            q: &q,
        };
        let sig = sign_data(CKM_SHA256_RSA_PKCS, &Params::None, padded_key, MESSAGE).unwrap();
        assert_eq!(sig, hex(RSA_PKCS1_SHA256_SIG));
    }

    /// Private keys whose parts disagree are refused (CKR_FUNCTION_FAILED), never used.
    #[test]
    fn rsa_inconsistent_private_keys() {
        let key = kat_rsa();
        let mut bad_q = key.q.clone();
        bad_q[10] ^= 1;
        let mut bad_d = key.d.clone();
        bad_d[10] ^= 1;
        let mut even_n = key.n.clone();
        *even_n.last_mut().unwrap() &= 0xFE;
        let long_d = [&[1u8][..], &key.d].concat();
        let zeros = vec![0u8; 256];
        type Parts<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a [u8], &'a [u8]);
        let cases: Vec<Parts<'_>> = vec![
            (&key.n, &key.e, &key.d, &key.p, &bad_q),
            (&key.n, &key.e, &bad_d, &key.p, &key.q),
            (&key.n, &key.e, &key.d, &key.q, &key.q),
            (&key.n, &[3], &key.d, &key.p, &key.q),
            (&key.n, &[], &key.d, &key.p, &key.q),
            (&key.n, &[1; 9], &key.d, &key.p, &key.q),
            (&key.n, &key.e, &[], &key.p, &key.q),
            (&key.n, &key.e, &key.d, &[], &[]),
            (&key.n, &key.e, &zeros, &key.p, &key.q),
            (&key.n, &key.e, &key.d, &[1], &key.n),
            (&key.n, &key.e, &long_d, &key.p, &key.q),
            (&key.n, &key.e, &key.n, &key.p, &key.q),
            (&even_n, &key.e, &key.d, &key.p, &key.q),
        ];
        for (i, (n, e, d, p, q)) in cases.into_iter().enumerate() {
            let k = KeyRef::RsaPrivate { n, e, d, p, q };
            assert_eq!(
                signer(CKM_SHA256_RSA_PKCS, &Params::None, k, true).err(),
                Some(CKR_FUNCTION_FAILED),
                "case {i}"
            );
            assert_eq!(
                cipher(CKM_RSA_PKCS, &Params::None, k, false).err(),
                Some(CKR_FUNCTION_FAILED),
                "case {i}"
            );
        }
        // Public keys: even modulus, zero or absurd exponent.
        for (n, e) in [
            (&even_n[..], &key.e[..]),
            (&key.n, &[]),
            (&key.n, &[0]),
            (&key.n, &[1; 9]),
        ] {
            assert_eq!(
                cipher(
                    CKM_RSA_PKCS,
                    &Params::None,
                    KeyRef::RsaPublic { n, e },
                    true
                )
                .err(),
                Some(CKR_FUNCTION_FAILED)
            );
        }
    }

    #[test]
    fn rsa_signature_errors() {
        let key = kat_rsa();
        let good = hex(RSA_PKCS1_SHA256_SIG);
        // Wrong length, then tampered.
        for len in [0, 255, 257] {
            let mut sig = good.clone();
            sig.resize(len, 0);
            assert_eq!(
                verify_data(
                    CKM_SHA256_RSA_PKCS,
                    &Params::None,
                    key.public(),
                    MESSAGE,
                    &sig
                ),
                Err(CKR_SIGNATURE_LEN_RANGE)
            );
        }
        let mut bad = good.clone();
        bad[0] ^= 0x80;
        assert_eq!(
            verify_data(
                CKM_SHA256_RSA_PKCS,
                &Params::None,
                key.public(),
                MESSAGE,
                &bad
            ),
            Err(CKR_SIGNATURE_INVALID)
        );
        assert_eq!(
            verify_data(
                CKM_SHA256_RSA_PKCS,
                &Params::None,
                key.public(),
                b"other",
                &good
            ),
            Err(CKR_SIGNATURE_INVALID)
        );
        assert_eq!(
            verify_data(
                CKM_SHA384_RSA_PKCS,
                &Params::None,
                key.public(),
                MESSAGE,
                &good
            ),
            Err(CKR_SIGNATURE_INVALID)
        );
        // A signature representative above the modulus.
        assert_eq!(
            verify_data(
                CKM_SHA256_RSA_PKCS,
                &Params::None,
                key.public(),
                MESSAGE,
                &[0xFF; 256]
            ),
            Err(CKR_SIGNATURE_INVALID)
        );
        // CKM_RSA_PKCS takes at most k - 11 bytes, refused as they arrive.
        let mut op = signer(CKM_RSA_PKCS, &Params::None, key.private(), true).unwrap();
        assert!(!op.multipart());
        assert_eq!(op.update(&[0; 246]), Err(CKR_DATA_LEN_RANGE));
        let mut op = signer(CKM_RSA_PKCS, &Params::None, key.public(), false).unwrap();
        op.update(&[0; 245]).unwrap();
        assert_eq!(op.update(&[0]), Err(CKR_DATA_LEN_RANGE));
        // CKM_RSA_PKCS_PSS takes exactly the hash.
        let params = pss(CKM_SHA256, CKG_MGF1_SHA256, 32);
        for len in [0, 31] {
            assert_eq!(
                sign_data(CKM_RSA_PKCS_PSS, &params, key.private(), &vec![0; len]),
                Err(CKR_DATA_LEN_RANGE)
            );
        }
        let mut op = signer(CKM_RSA_PKCS_PSS, &params, key.private(), true).unwrap();
        assert_eq!(op.update(&[0; 33]), Err(CKR_DATA_LEN_RANGE));
        // Verification checks the signature length before the data.
        let mut op = signer(CKM_RSA_PKCS_PSS, &params, key.public(), false).unwrap();
        op.update(&[0; 3]).unwrap();
        assert_eq!(op.verify(&[0; 10]), Err(CKR_SIGNATURE_LEN_RANGE));
        let mut op = signer(CKM_RSA_PKCS_PSS, &params, key.public(), false).unwrap();
        op.update(&[0; 3]).unwrap();
        assert_eq!(op.verify(&[0; 256]), Err(CKR_DATA_LEN_RANGE));
    }

    #[test]
    fn rsa_signature_parameter_and_key_errors() {
        let key = kat_rsa();
        // Hash-and-sign PSS needs its own hash; every PSS needs the matching MGF and a salt that
        // fits (2048 bits: emLen 256, so at most 256 - 32 - 2 = 222 with SHA-256).
        for (m, params) in [
            (
                CKM_SHA256_RSA_PKCS_PSS,
                pss(CKM_SHA384, CKG_MGF1_SHA384, 32),
            ),
            (
                CKM_SHA384_RSA_PKCS_PSS,
                pss(CKM_SHA256, CKG_MGF1_SHA256, 32),
            ),
            (CKM_SHA256_RSA_PKCS_PSS, pss(CKM_SHA256, CKG_MGF1_SHA1, 32)),
            (CKM_RSA_PKCS_PSS, pss(CKM_SHA256, CKG_MGF1_SHA384, 32)),
            (CKM_RSA_PKCS_PSS, pss(CKM_MD5, CKG_MGF1_SHA1, 16)),
            (CKM_RSA_PKCS_PSS, pss(CKM_SHA256, CKG_MGF1_SHA256, 223)),
            (
                CKM_SHA512_RSA_PKCS_PSS,
                pss(CKM_SHA512, CKG_MGF1_SHA512, 191),
            ),
            (CKM_RSA_PKCS_PSS, Params::None),
            (CKM_RSA_PKCS_PSS, oaep(CKM_SHA256, CKG_MGF1_SHA256, b"")),
            (CKM_RSA_PKCS, pss(CKM_SHA256, CKG_MGF1_SHA256, 32)),
            (CKM_SHA256_RSA_PKCS, pss(CKM_SHA256, CKG_MGF1_SHA256, 32)),
            (CKM_SHA256_RSA_PKCS, Params::Iv(vec![])),
        ] {
            for sign in [true, false] {
                let k = if sign { key.private() } else { key.public() };
                assert_eq!(
                    signer(m, &params, k, sign).err(),
                    Some(CKR_MECHANISM_PARAM_INVALID),
                    "{m:#x} {params:?}"
                );
            }
        }
        // The largest salt fits.
        let params = pss(CKM_SHA256, CKG_MGF1_SHA256, 222);
        let sig = sign_data(CKM_SHA256_RSA_PKCS_PSS, &params, key.private(), MESSAGE).unwrap();
        verify_data(
            CKM_SHA256_RSA_PKCS_PSS,
            &params,
            key.public(),
            MESSAGE,
            &sig,
        )
        .unwrap();
        // Signing needs the private key; EC and secret keys are not RSA keys.
        let ec = KeyRef::EcPublic {
            params: OID_P256,
            point: &[4; 65],
        };
        for m in [CKM_RSA_PKCS, CKM_SHA256_RSA_PKCS] {
            assert_eq!(
                signer(m, &Params::None, key.public(), true).err(),
                Some(CKR_KEY_TYPE_INCONSISTENT)
            );
            for sign in [true, false] {
                for wrong in [ec, KeyRef::Secret(&[0; 32])] {
                    assert_eq!(
                        signer(m, &Params::None, wrong, sign).err(),
                        Some(CKR_KEY_TYPE_INCONSISTENT)
                    );
                }
            }
        }
        assert_eq!(
            signer(CKM_SHA256_HMAC, &Params::None, key.private(), true).err(),
            Some(CKR_MECHANISM_INVALID)
        );
    }

    #[test]
    fn sign_ops_end_once() {
        let key = kat_rsa();
        let mut op = signer(CKM_SHA256_RSA_PKCS, &Params::None, key.private(), true).unwrap();
        assert!(op.multipart());
        op.update(MESSAGE).unwrap();
        assert_eq!(op.verify(&[0; 256]), Err(CKR_OPERATION_NOT_INITIALIZED));
        let mut op = signer(CKM_SHA256_RSA_PKCS, &Params::None, key.private(), true).unwrap();
        op.update(MESSAGE).unwrap();
        op.sign().unwrap();
        assert_eq!(op.sign(), Err(CKR_OPERATION_NOT_INITIALIZED));
        assert_eq!(op.update(MESSAGE), Err(CKR_OPERATION_NOT_INITIALIZED));
        let mut op = signer(CKM_SHA256_RSA_PKCS, &Params::None, key.public(), false).unwrap();
        assert_eq!(op.sign(), Err(CKR_OPERATION_NOT_INITIALIZED));
        let mut op = cipher(CKM_RSA_PKCS, &Params::None, key.public(), true).unwrap();
        op.finish().unwrap();
        assert_eq!(op.finish(), Err(CKR_OPERATION_NOT_INITIALIZED));
        assert_eq!(op.update(&[1]), Err(CKR_OPERATION_NOT_INITIALIZED));
    }

    // --------------------------------------------------------------------------------------------
    // ECDSA
    // --------------------------------------------------------------------------------------------

    /// RFC 6979 A.2.5 and A.2.6: deterministic ECDSA over "sample" with P-256/SHA-256 and
    /// P-384/SHA-384, by the hash-and-sign mechanisms and by CKM_ECDSA on the hash.
    #[test]
    fn ecdsa_rfc6979_known_answers() {
        let cases = [
            (
                OID_P256,
                "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721",
                CKM_ECDSA_SHA256,
                Hash::Sha256,
                concat!(
                    "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716",
                    "f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8"
                ),
            ),
            (
                OID_P384,
                concat!(
                    "6b9d3dad2e1b8c1c05b19875b6659f4de23c3b667bf297ba",
                    "9aa47740787137d896d5724e4c70a825f872c9ea60d2edf5"
                ),
                CKM_ECDSA_SHA384,
                Hash::Sha384,
                concat!(
                    "94edbb92a5ecb8aad4736e56c691916b3f88140666ce9fa73d64c4ea95ad133c",
                    "81a648152e44acf96e36dd1e80fabe46",
                    "99ef4aeb15f178cea1fe40db2603138f130e740a19624526203b6351d0a3a94f",
                    "a329c145786e679e7b82c71a38628ac8"
                ),
            ),
        ];
        for (params, x, m, hash, expected) in cases {
            let value = hex(x);
            let key = KeyRef::EcPrivate {
                params,
                value: &value,
            };
            let expected = hex(expected);
            assert_eq!(
                sign_data(m, &Params::None, key, b"sample").unwrap(),
                expected
            );
            let digest = sha(hash, b"sample");
            assert_eq!(
                sign_data(CKM_ECDSA, &Params::None, key, &digest).unwrap(),
                expected
            );
            verify_data(m, &Params::None, key, b"sample", &expected).unwrap();
        }
    }

    #[test]
    fn ecdsa_verifies_openssl_signatures() {
        for (params, d, point, sig, m, hash) in [
            (
                OID_P256,
                P256_D,
                P256_POINT,
                P256_SIG,
                CKM_ECDSA_SHA256,
                Hash::Sha256,
            ),
            (
                OID_P384,
                P384_D,
                P384_POINT,
                P384_SIG,
                CKM_ECDSA_SHA384,
                Hash::Sha384,
            ),
        ] {
            let (value, raw_point, sig) = (hex(d), hex(point), hex(sig));
            let der_point = der_octet_string(&raw_point);
            let digest = sha(hash, MESSAGE);
            for key in [
                KeyRef::EcPublic {
                    params,
                    point: &der_point,
                },
                KeyRef::EcPublic {
                    params,
                    point: &raw_point,
                },
                KeyRef::EcPrivate {
                    params,
                    value: &value,
                },
            ] {
                verify_data(m, &Params::None, key, MESSAGE, &sig).unwrap();
                verify_data(CKM_ECDSA, &Params::None, key, &digest, &sig).unwrap();
                assert_eq!(
                    verify_data(m, &Params::None, key, b"other", &sig),
                    Err(CKR_SIGNATURE_INVALID)
                );
            }
            // Our signature with the OpenSSL key verifies with the OpenSSL public point.
            let private = KeyRef::EcPrivate {
                params,
                value: &value,
            };
            let ours = sign_data(m, &Params::None, private, MESSAGE).unwrap();
            let public = KeyRef::EcPublic {
                params,
                point: &der_point,
            };
            verify_data(m, &Params::None, public, MESSAGE, &ours).unwrap();
        }
    }

    #[test]
    fn ec_generation_and_all_mechanisms() {
        for (params, field, point_len) in [(OID_P256, 32, 65), (OID_P384, 48, 97)] {
            let pair = generate_ec(params).unwrap();
            assert_eq!(pair.value.len(), field);
            assert_eq!(pair.point.len(), point_len + 2);
            assert_eq!(pair.point[..3], [0x04, point_len as u8, 0x04]);
            let private = KeyRef::EcPrivate {
                params,
                value: &pair.value,
            };
            let public = KeyRef::EcPublic {
                params,
                point: &pair.point,
            };
            for (m, hash) in [
                (CKM_ECDSA_SHA256, Hash::Sha256),
                (CKM_ECDSA_SHA384, Hash::Sha384),
                (CKM_ECDSA_SHA512, Hash::Sha512),
            ] {
                let sig = sign_data(m, &Params::None, private, MESSAGE).unwrap();
                assert_eq!(sig.len(), 2 * field);
                verify_data(m, &Params::None, public, MESSAGE, &sig).unwrap();
                let digest = sha(hash, MESSAGE);
                let raw = sign_data(CKM_ECDSA, &Params::None, private, &digest).unwrap();
                assert_eq!(raw, sig);
                verify_data(CKM_ECDSA, &Params::None, public, &digest, &raw).unwrap();
            }
            // CKM_ECDSA takes any hash length from 1 to 64 bytes without trouble.
            for len in [1, 20, field, 64] {
                let input = vec![0x42; len];
                let sig = sign_data(CKM_ECDSA, &Params::None, private, &input).unwrap();
                verify_data(CKM_ECDSA, &Params::None, public, &input, &sig).unwrap();
            }
            let op = signer(CKM_ECDSA, &Params::None, public, false).unwrap();
            assert!(!op.multipart());
            assert_eq!(op.max_signature_len(), 2 * field);
            assert!(signer(CKM_ECDSA_SHA256, &Params::None, public, false)
                .unwrap()
                .multipart());
        }
        // Each call makes a new key.
        assert_ne!(
            generate_ec(OID_P256).unwrap().value,
            generate_ec(OID_P256).unwrap().value
        );
    }

    #[test]
    fn ec_params_errors() {
        // secp256k1 and Ed25519 OIDs are well-formed but unsupported; the rest is not an OID.
        let secp256k1 = hex("06052b8104000a");
        let ed25519 = hex("06032b6570");
        for p in [&secp256k1[..], &ed25519] {
            assert_eq!(generate_ec(p).unwrap_err(), CKR_CURVE_NOT_SUPPORTED);
            let key = KeyRef::EcPrivate {
                params: p,
                value: &[1; 32],
            };
            assert_eq!(
                signer(CKM_ECDSA, &Params::None, key, true).err(),
                Some(CKR_CURVE_NOT_SUPPORTED)
            );
        }
        let printable = hex("130a7072696d6532353676"); // PrintableString "prime256v"
        for p in [
            &[][..],
            &[0x06],
            &[0x06, 0x08, 0x2A],
            &OID_P256[..9],
            &printable,
            &[0x30, 0x00],
        ] {
            assert_eq!(
                generate_ec(p).unwrap_err(),
                CKR_DOMAIN_PARAMS_INVALID,
                "{p:?}"
            );
        }
    }

    #[test]
    fn ecdsa_errors() {
        let value = hex(P256_D);
        let point = der_octet_string(&hex(P256_POINT));
        let private = KeyRef::EcPrivate {
            params: OID_P256,
            value: &value,
        };
        let public = KeyRef::EcPublic {
            params: OID_P256,
            point: &point,
        };
        let sig = hex(P256_SIG);
        // Lengths.
        for len in [0, 63, 65, 96] {
            let mut s = sig.clone();
            s.resize(len, 1);
            assert_eq!(
                verify_data(CKM_ECDSA_SHA256, &Params::None, public, MESSAGE, &s),
                Err(CKR_SIGNATURE_LEN_RANGE)
            );
        }
        // Tampered, zero and out-of-range r and s.
        let mut tampered = sig.clone();
        tampered[40] ^= 1;
        let mut zero_r = sig.clone();
        zero_r[..32].fill(0);
        let mut big_s = sig.clone();
        big_s[32..].fill(0xFF);
        for s in [tampered, zero_r, big_s, vec![0; 64]] {
            assert_eq!(
                verify_data(CKM_ECDSA_SHA256, &Params::None, public, MESSAGE, &s),
                Err(CKR_SIGNATURE_INVALID)
            );
        }
        // CKM_ECDSA: 1 to 64 bytes of hash.
        assert_eq!(
            sign_data(CKM_ECDSA, &Params::None, private, &[]),
            Err(CKR_DATA_LEN_RANGE)
        );
        let mut op = signer(CKM_ECDSA, &Params::None, private, true).unwrap();
        op.update(&[0; 64]).unwrap();
        assert_eq!(op.update(&[0]), Err(CKR_DATA_LEN_RANGE));
        // Keys: signing needs the private key; RSA keys are not EC keys and vice versa.
        let rsa = kat_rsa();
        assert_eq!(
            signer(CKM_ECDSA, &Params::None, public, true).err(),
            Some(CKR_KEY_TYPE_INCONSISTENT)
        );
        for sign in [true, false] {
            assert_eq!(
                signer(CKM_ECDSA_SHA256, &Params::None, rsa.private(), sign).err(),
                Some(CKR_KEY_TYPE_INCONSISTENT)
            );
            assert_eq!(
                signer(CKM_SHA256_RSA_PKCS, &Params::None, private, sign).err(),
                Some(CKR_KEY_TYPE_INCONSISTENT)
            );
        }
        assert_eq!(
            signer(
                CKM_ECDSA,
                &pss(CKM_SHA256, CKG_MGF1_SHA256, 0),
                private,
                true
            )
            .err(),
            Some(CKR_MECHANISM_PARAM_INVALID)
        );
        // Invalid key material: off-curve or malformed points, zero or too large scalars.
        let mut off_curve = point.clone();
        off_curve[40] ^= 1;
        let mut bad_der = point.clone();
        bad_der[1] = 0x40;
        let raw_compressed = {
            let mut c = hex(P256_POINT)[..33].to_vec();
            c[0] = 0x02;
            c
        };
        for pt in [
            &off_curve[..],
            &bad_der,
            &raw_compressed,
            &[],
            &[0x04],
            &[0x04, 0x00],
            &point[..66],
        ] {
            let key = KeyRef::EcPublic {
                params: OID_P256,
                point: pt,
            };
            assert_eq!(
                signer(CKM_ECDSA, &Params::None, key, false).err(),
                Some(CKR_FUNCTION_FAILED),
                "{pt:?}"
            );
        }
        // The P-256 order n, and n + 1, and a 33-byte value with a non-zero top byte.
        let order = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
        let mut above = order.clone();
        above[31] += 1;
        let long = [&[1u8][..], &value].concat();
        for v in [&[][..], &[0; 32], &order, &above, &long] {
            let key = KeyRef::EcPrivate {
                params: OID_P256,
                value: v,
            };
            assert_eq!(
                signer(CKM_ECDSA, &Params::None, key, true).err(),
                Some(CKR_FUNCTION_FAILED)
            );
        }
        // A scalar that lost (or gained) leading zeros is the same key.
        let small = [0u8; 31].iter().copied().chain([7]).collect::<Vec<_>>();
        let sign_with = |v: &[u8]| {
            sign_data(
                CKM_ECDSA_SHA256,
                &Params::None,
                KeyRef::EcPrivate {
                    params: OID_P256,
                    value: v,
                },
                MESSAGE,
            )
            .unwrap()
        };
        assert_eq!(sign_with(&small), sign_with(&[7]));
        assert_eq!(
            sign_with(&small),
            sign_with(&[&[0u8; 3][..], &small].concat())
        );
        // The DER-wrapped compressed point is accepted (SEC1 allows it).
        let wrapped_compressed = der_octet_string(&{
            let full = hex(P256_POINT);
            let mut c = full[..33].to_vec();
            c[0] = 0x02 | (full[64] & 1);
            c
        });
        verify_data(
            CKM_ECDSA_SHA256,
            &Params::None,
            KeyRef::EcPublic {
                params: OID_P256,
                point: &wrapped_compressed,
            },
            MESSAGE,
            &sig,
        )
        .unwrap();
    }

    // --------------------------------------------------------------------------------------------
    // Mechanism list, robustness
    // --------------------------------------------------------------------------------------------

    #[test]
    fn mechanism_list_and_info() {
        let list = mechanisms();
        assert_eq!(list.len(), 15);
        for &m in list {
            let info = mechanism_info(m).unwrap_or_else(|| panic!("{m:#x}"));
            assert!(info.ulMinKeySize <= info.ulMaxKeySize);
            assert_ne!(info.flags, 0);
        }
        let rsa_gen = mechanism_info(CKM_RSA_PKCS_KEY_PAIR_GEN).unwrap();
        assert_eq!((rsa_gen.ulMinKeySize, rsa_gen.ulMaxKeySize), (2048, 4096));
        assert_eq!(rsa_gen.flags, CKF_GENERATE_KEY_PAIR);
        let ec_gen = mechanism_info(CKM_EC_KEY_PAIR_GEN).unwrap();
        assert_eq!((ec_gen.ulMinKeySize, ec_gen.ulMaxKeySize), (256, 384));
        assert_eq!(
            ec_gen.flags,
            CKF_GENERATE_KEY_PAIR | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS
        );
        let all = CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP;
        assert_eq!(mechanism_info(CKM_RSA_PKCS_OAEP).unwrap().flags, all);
        assert_eq!(
            mechanism_info(CKM_RSA_PKCS).unwrap().flags,
            all | CKF_SIGN | CKF_VERIFY
        );
        for m in [
            CKM_SHA256_RSA_PKCS,
            CKM_RSA_PKCS_PSS,
            CKM_SHA512_RSA_PKCS_PSS,
        ] {
            let info = mechanism_info(m).unwrap();
            assert_eq!(info.flags, CKF_SIGN | CKF_VERIFY);
            assert_eq!((info.ulMinKeySize, info.ulMaxKeySize), (2048, 8192));
        }
        let ecdsa = mechanism_info(CKM_ECDSA).unwrap();
        assert_eq!(ecdsa.flags & (CKF_SIGN | CKF_VERIFY), CKF_SIGN | CKF_VERIFY);
        assert_eq!(ecdsa.flags & (CKF_ENCRYPT | CKF_GENERATE_KEY_PAIR), 0);
        for m in [CKM_AES_GCM, CKM_SHA256, CKM_SHA1_RSA_PKCS, CKM_ECDH1_DERIVE] {
            assert!(mechanism_info(m).is_none());
        }
    }

    /// Garbage keys and inputs make errors, never panics.
    #[test]
    fn no_panic_on_garbage() {
        let blobs: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0xFF],
            vec![0; 256],
            vec![0xFF; 256],
            vec![0x80; 257],
            vec![1; 512],
            vec![0x04; 65],
            vec![0x04; 67],
        ];
        let oaep256 = oaep(CKM_SHA256, CKG_MGF1_SHA256, b"");
        let params = [
            Params::None,
            oaep256,
            pss(CKM_SHA256, CKG_MGF1_SHA256, 32),
            pss(CKM_SHA256, CKG_MGF1_SHA256, usize::MAX),
        ];
        let mechs = [
            CKM_RSA_PKCS,
            CKM_RSA_PKCS_OAEP,
            CKM_SHA256_RSA_PKCS,
            CKM_RSA_PKCS_PSS,
            CKM_ECDSA,
            CKM_ECDSA_SHA384,
        ];
        for a in &blobs {
            for b in &blobs {
                let keys = [
                    KeyRef::RsaPublic { n: a, e: b },
                    KeyRef::RsaPrivate {
                        n: a,
                        e: &[1, 0, 1],
                        d: b,
                        p: b,
                        q: a,
                    },
                    KeyRef::EcPublic {
                        params: OID_P256,
                        point: a,
                    },
                    KeyRef::EcPrivate {
                        params: OID_P384,
                        value: a,
                    },
                    KeyRef::EcPrivate {
                        params: a,
                        value: b,
                    },
                ];
                for key in keys {
                    for m in mechs {
                        for p in &params {
                            for flag in [true, false] {
                                if let Ok(mut op) = signer(m, p, key, flag) {
                                    let _ = op.update(b);
                                    let _ = if flag {
                                        op.sign().map(|_| ())
                                    } else {
                                        op.verify(a)
                                    };
                                }
                                if let Ok(mut op) = cipher(m, p, key, flag) {
                                    let _ = op.update(b);
                                    let _ = op.finish();
                                }
                            }
                            let _ = wrap(m, p, key, b);
                            let _ = unwrap(m, p, key, b);
                        }
                    }
                }
            }
        }
        // And with a real key, garbage data.
        let key = kat_rsa();
        for blob in &blobs {
            for m in mechs {
                for p in &params {
                    let _ = crypt(m, p, key.private(), false, blob);
                    let _ = unwrap(m, p, key.private(), blob);
                    let _ = verify_data(m, p, key.public(), blob, blob);
                    let _ = sign_data(m, p, key.private(), blob);
                }
            }
        }
    }

    /// Timings for the report, release mode: `cargo test --release --lib soft::crypto::asym --
    /// --ignored --nocapture timings`.
    #[test]
    #[ignore = "prints timings"]
    fn timings() {
        use std::time::Instant;
        let mut total = std::time::Duration::ZERO;
        let runs = 10;
        for _ in 0..runs {
            let t = Instant::now();
            generate_rsa(2048, &[1, 0, 1]).unwrap();
            total += t.elapsed();
        }
        eprintln!("RSA-2048 keygen: mean {:?} over {runs}", total / runs);
        for bits in [3072, 4096] {
            let t = Instant::now();
            for _ in 0..3 {
                generate_rsa(bits, &[1, 0, 1]).unwrap();
            }
            eprintln!("RSA-{bits} keygen: mean {:?} over 3", t.elapsed() / 3);
        }
        let key = kat_rsa();
        let params = oaep(CKM_SHA256, CKG_MGF1_SHA256, b"");
        let ct = crypt(CKM_RSA_PKCS_OAEP, &params, key.public(), true, PLAINTEXT).unwrap();
        let t = Instant::now();
        for _ in 0..100 {
            crypt(CKM_RSA_PKCS_OAEP, &params, key.private(), false, &ct).unwrap();
        }
        eprintln!(
            "RSA-2048 OAEP decrypt (key build + decrypt): {:?}",
            t.elapsed() / 100
        );
        let t = Instant::now();
        for _ in 0..100 {
            rsa_private_of(key.private(), &CIPHER_RVS).unwrap();
        }
        eprintln!("RSA-2048 private key build alone: {:?}", t.elapsed() / 100);
        let t = Instant::now();
        for _ in 0..100 {
            sign_data(CKM_SHA256_RSA_PKCS, &Params::None, key.private(), MESSAGE).unwrap();
        }
        eprintln!("RSA-2048 SHA256_RSA_PKCS sign: {:?}", t.elapsed() / 100);
        let value = hex(P256_D);
        let t = Instant::now();
        for _ in 0..100 {
            sign_data(
                CKM_ECDSA_SHA256,
                &Params::None,
                KeyRef::EcPrivate {
                    params: OID_P256,
                    value: &value,
                },
                MESSAGE,
            )
            .unwrap();
        }
        eprintln!("P-256 ECDSA_SHA256 sign: {:?}", t.elapsed() / 100);
    }
}
