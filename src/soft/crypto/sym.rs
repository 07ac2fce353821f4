//! Symmetric mechanisms: AES (GCM, CBC, CBC_PAD, ECB, KEY_WRAP_PAD), HMAC, digests, random.
//! Placeholder: every function refuses until it is written.
#![allow(unused_variables)]

use pkcs11_sys::*;
use zeroize::Zeroizing;

use super::{CipherOp, CkResult, DigestOp, KeyRef, Params, SignOp};

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

pub fn digest(mechanism: CK_MECHANISM_TYPE) -> CkResult<Box<dyn DigestOp>> {
    Err(CKR_MECHANISM_INVALID)
}

/// A secret key's value: `len` bytes from the OS CSPRNG.
pub fn generate_secret(len: usize) -> CkResult<Zeroizing<Vec<u8>>> {
    Err(CKR_FUNCTION_FAILED)
}

/// Fills `buf` from the OS CSPRNG (mixed with what `seed` gave).
pub fn random(buf: &mut [u8]) -> CkResult<()> {
    Err(CKR_FUNCTION_FAILED)
}

/// Mixes caller data into the generator (C_SeedRandom); never replaces the OS's entropy.
pub fn seed(data: &[u8]) {}
