//! The built-in soft token: p11gate's own backend when no HSM is configured (issue 5).
//!
//! - [`crypto`]: the mechanisms, on RustCrypto crates ([`crypto::sym`]: AES, HMAC, digests,
//!   key wrap, random; [`crypto::asym`]: RSA and EC).
//! - [`store`]: one directory per token: authenticated, encrypted-at-rest records written
//!   atomically and durably, shared by several processes under file locks.

pub mod backend;
pub mod crypto;
pub mod meta;
pub mod object;
pub mod store;
