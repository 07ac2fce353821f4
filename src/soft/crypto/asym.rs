//! RSA and EC mechanisms: key pairs, OAEP, PKCS #1 v1.5, PSS, ECDSA.
//! Placeholder: every function refuses until it is written.
#![allow(unused_variables)]

use pkcs11_sys::*;
use zeroize::Zeroizing;

use super::{CipherOp, CkResult, KeyRef, Params, SignOp};

pub fn cipher(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    key: KeyRef<'_>,
    encrypt: bool,
) -> CkResult<Box<dyn CipherOp>> {
    Err(CKR_MECHANISM_INVALID)
}

pub fn signer(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    key: KeyRef<'_>,
    sign: bool,
) -> CkResult<Box<dyn SignOp>> {
    Err(CKR_MECHANISM_INVALID)
}

pub fn wrap(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    wrapping: KeyRef<'_>,
    key_value: &[u8],
) -> CkResult<Vec<u8>> {
    Err(CKR_MECHANISM_INVALID)
}

pub fn unwrap(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    unwrapping: KeyRef<'_>,
    wrapped: &[u8],
) -> CkResult<Zeroizing<Vec<u8>>> {
    Err(CKR_MECHANISM_INVALID)
}

pub fn mechanisms() -> &'static [CK_MECHANISM_TYPE] {
    &[]
}

pub fn mechanism_info(m: CK_MECHANISM_TYPE) -> Option<CK_MECHANISM_INFO> {
    None
}

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

/// A new RSA key pair of `bits` (2048 to 4096) with public exponent `e` (big-endian).
pub fn generate_rsa(bits: usize, e: &[u8]) -> CkResult<RsaKeyPair> {
    Err(CKR_MECHANISM_INVALID)
}

/// An EC key pair on the curve `params` names (DER OID of P-256 or P-384).
#[derive(Debug)]
pub struct EcKeyPair {
    /// CKA_EC_POINT: DER OCTET STRING of the uncompressed point.
    pub point: Vec<u8>,
    /// CKA_VALUE: the private scalar, big-endian.
    pub value: Zeroizing<Vec<u8>>,
}

pub fn generate_ec(params: &[u8]) -> CkResult<EcKeyPair> {
    Err(CKR_MECHANISM_INVALID)
}
