//! p11gate: a PKCS#11 module that stands in front of vendors' modules (the "upstreams") and
//! forwards every call, adding what a vendor library does not: per-app virtual slots over
//! several upstreams, mechanism filtering, key policy and PIN mapping (audit comes next, in
//! the same call path).
//!
//! The call path, one module per layer:
//!
//! ```text
//! ffi::fns::*      exported C functions, thin: check pointers (ffi::args), then route
//! ffi::boundary    panic catch, initialisation check, Result -> CK_RV, trace line
//! router           the app's virtual slots and sessions -> (backend, backend's handle)
//! policy           per-slot mechanism and key rules, checked before any backend sees a call
//! backend          trait Backend; backend::upstream forwards to the vendor module
//! ```
//!
//! Around it: [`runtime`] (C_Initialize / C_Finalize / fork), [`config`] (TOML + environment),
//! [`logging`] (syslog, stderr or file), [`metrics`] (call counts and latency histograms for
//! Prometheus), [`error`] (the one error type and its CK_RV mapping), [`credentials`] (PIN
//! mapping), [`names`] (spec names for logs), [`uri`] (PKCS#11 URIs, RFC 7512, wherever a token
//! or object is named). `unsafe` appears only in
//! `ffi` and `backend::upstream`.

pub mod audit;
pub mod backend;
pub mod config;
pub mod credentials;
pub mod doctor;
pub mod error;
pub mod ffi;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod policy;
pub mod router;
pub mod runtime;
pub mod soft;
pub mod uri;
