//! p11gate: a PKCS#11 module that stands in front of a vendor's module (the "upstream") and
//! forwards every call to it, adding what the vendor library does not: audit, per-app slot
//! mapping and mechanism filtering (later capabilities build on the seams below).
//!
//! The call path, one module per layer:
//!
//! ```text
//! ffi::fns::*      exported C functions, thin: check pointers (ffi::args), then route
//! ffi::boundary    panic catch, initialisation check, Result -> CK_RV, trace line
//! router           virtual sessions and slots -> (backend, backend's handle)
//! policy           mechanism / key rules, checked before any backend sees a call
//! backend          trait Backend; backend::upstream forwards to the vendor module
//! ```
//!
//! Around it: [`runtime`] (C_Initialize / C_Finalize / fork), [`config`] (TOML + environment),
//! [`logging`] (syslog, stderr or file), [`error`] (the one error type and its CK_RV mapping),
//! [`names`] (spec names for logs). `unsafe` appears only in `ffi` and `backend::upstream`.

pub mod backend;
pub mod config;
pub mod credentials;
pub mod error;
pub mod ffi;
pub mod logging;
pub mod names;
pub mod policy;
pub mod router;
pub mod runtime;
