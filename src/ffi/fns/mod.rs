//! The exported PKCS#11 functions, one file per chapter of the spec (2.40 §5.4–§5.16, and the
//! 3.0 additions in [`message`]). Each is a thin shell: check the caller's pointers into
//! `ffi::args` views, resolve the slot or session through the router, ask the policy where a
//! mechanism is involved, and call the backend.
//!
//! The names are the spec's (`C_Encrypt`), hence the lint allowance.
#![allow(non_snake_case)]

pub mod crypt;
pub mod digest;
pub mod general;
pub mod keys;
pub mod message;
pub mod object;
pub mod random;
pub mod session;
pub mod sign;
pub mod slot_token;
