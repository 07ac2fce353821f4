//! The soft token's mechanisms: pure functions and operation state machines over key bytes and
//! parsed parameters. Nothing here knows about sessions, objects or PKCS#11 pointers; errors
//! are the `CK_RV` the spec prescribes.
//!
//! Length queries: `max_*_len` give a length that suffices (PKCS#11 allows an upper bound).

pub mod asym;
pub mod sym;

use pkcs11_sys::*;
use zeroize::Zeroizing;

/// A result whose error is the `CK_RV` to return.
pub type CkResult<T> = Result<T, CK_RV>;

/// A mechanism's parameters, parsed from the caller's structures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Params {
    None,
    /// CBC, CBC_PAD: the 16-byte IV.
    Iv(Vec<u8>),
    /// GCM: the caller's IV, additional data and tag length in bits.
    Gcm {
        iv: Vec<u8>,
        aad: Vec<u8>,
        tag_bits: usize,
    },
    /// RSA-OAEP: hash (CKM_SHA_1, CKM_SHA256, ...), MGF (CKG_MGF1_SHA1, ...), label.
    Oaep {
        hash: CK_MECHANISM_TYPE,
        mgf: CK_RSA_PKCS_MGF_TYPE,
        label: Vec<u8>,
    },
    /// RSA-PSS: hash, MGF, salt length.
    Pss {
        hash: CK_MECHANISM_TYPE,
        mgf: CK_RSA_PKCS_MGF_TYPE,
        salt_len: usize,
    },
}

/// A key as the operations need it: borrowed attribute values.
#[derive(Debug, Clone, Copy)]
pub enum KeyRef<'a> {
    /// CKK_AES or CKK_GENERIC_SECRET: CKA_VALUE.
    Secret(&'a [u8]),
    /// CKA_MODULUS, CKA_PUBLIC_EXPONENT (big-endian).
    RsaPublic { n: &'a [u8], e: &'a [u8] },
    /// CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_PRIVATE_EXPONENT, CKA_PRIME_1, CKA_PRIME_2.
    RsaPrivate {
        n: &'a [u8],
        e: &'a [u8],
        d: &'a [u8],
        p: &'a [u8],
        q: &'a [u8],
    },
    /// CKA_EC_PARAMS (DER OID of P-256 or P-384), CKA_EC_POINT (DER OCTET STRING holding the
    /// uncompressed point).
    EcPublic { params: &'a [u8], point: &'a [u8] },
    /// CKA_EC_PARAMS, CKA_VALUE (the private scalar, big-endian).
    EcPrivate { params: &'a [u8], value: &'a [u8] },
}

/// An encryption or decryption in progress.
pub trait CipherOp: Send {
    /// Takes more input; returns the output it can produce now (maybe none).
    fn update(&mut self, input: &[u8]) -> CkResult<Vec<u8>>;
    /// Ends the operation; returns the remaining output.
    fn finish(&mut self) -> CkResult<Vec<u8>>;
    /// Output that suffices for `update` with `input_len` bytes.
    fn max_update_len(&self, input_len: usize) -> usize;
    /// Output that suffices for `finish`.
    fn max_final_len(&self) -> usize;
    /// Output that suffices for a single-part call on `input_len` bytes.
    fn max_oneshot_len(&self, input_len: usize) -> usize;
    /// Whether `update` may be used (RSA mechanisms are single-part only).
    fn multipart(&self) -> bool;
}

/// A signature or verification (MAC or asymmetric) in progress.
pub trait SignOp: Send {
    fn update(&mut self, data: &[u8]) -> CkResult<()>;
    /// Ends a signing operation.
    fn sign(&mut self) -> CkResult<Vec<u8>>;
    /// Ends a verification: `CKR_SIGNATURE_INVALID` or `CKR_SIGNATURE_LEN_RANGE` when it fails.
    fn verify(&mut self, signature: &[u8]) -> CkResult<()>;
    fn max_signature_len(&self) -> usize;
    /// Whether `update` may be used (CKM_RSA_PKCS, CKM_ECDSA raw: single-part only).
    fn multipart(&self) -> bool;
}

/// A digest in progress. (`len` is the digest's length; there is no "empty" digest.)
#[allow(clippy::len_without_is_empty)]
pub trait DigestOp: Send {
    fn update(&mut self, data: &[u8]);
    fn finish(&mut self) -> Vec<u8>;
    fn len(&self) -> usize;
}

/// Starts an encryption (`encrypt`) or decryption with `mechanism`.
pub fn cipher(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    key: KeyRef<'_>,
    encrypt: bool,
) -> CkResult<Box<dyn CipherOp>> {
    match mechanism {
        CKM_RSA_PKCS | CKM_RSA_PKCS_OAEP => asym::cipher(mechanism, params, key, encrypt),
        _ => sym::cipher(mechanism, params, key, encrypt),
    }
}

/// Starts a signature (`sign`) or verification with `mechanism`.
pub fn signer(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    key: KeyRef<'_>,
    sign: bool,
) -> CkResult<Box<dyn SignOp>> {
    match mechanism {
        CKM_SHA256_HMAC | CKM_SHA384_HMAC | CKM_SHA512_HMAC | CKM_SHA_1_HMAC => {
            sym::signer(mechanism, params, key, sign)
        }
        _ => asym::signer(mechanism, params, key, sign),
    }
}

/// Starts a digest.
pub fn digest(mechanism: CK_MECHANISM_TYPE) -> CkResult<Box<dyn DigestOp>> {
    sym::digest(mechanism)
}

/// Wraps `key_value` (a secret key's CKA_VALUE, or a private key's PKCS#8 encoding) with
/// `wrapping` (AES-KWP, RSA-OAEP, RSA-PKCS).
pub fn wrap(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    wrapping: KeyRef<'_>,
    key_value: &[u8],
) -> CkResult<Vec<u8>> {
    match mechanism {
        CKM_RSA_PKCS | CKM_RSA_PKCS_OAEP => asym::wrap(mechanism, params, wrapping, key_value),
        _ => sym::wrap(mechanism, params, wrapping, key_value),
    }
}

/// Unwraps what [`wrap`] made.
pub fn unwrap(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    unwrapping: KeyRef<'_>,
    wrapped: &[u8],
) -> CkResult<Zeroizing<Vec<u8>>> {
    match mechanism {
        CKM_RSA_PKCS | CKM_RSA_PKCS_OAEP => asym::unwrap(mechanism, params, unwrapping, wrapped),
        _ => sym::unwrap(mechanism, params, unwrapping, wrapped),
    }
}

/// Every mechanism the soft token offers, in the order C_GetMechanismList lists them.
pub fn mechanisms() -> Vec<CK_MECHANISM_TYPE> {
    let mut all = sym::mechanisms().to_vec();
    all.extend_from_slice(asym::mechanisms());
    all
}

/// C_GetMechanismInfo for a mechanism the soft token offers.
pub fn mechanism_info(m: CK_MECHANISM_TYPE) -> Option<CK_MECHANISM_INFO> {
    sym::mechanism_info(m).or_else(|| asym::mechanism_info(m))
}
