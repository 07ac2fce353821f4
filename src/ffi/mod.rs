//! The C surface: the only place with `extern "C"` and `#[no_mangle]`, and (with the upstream
//! loader) the only place with `unsafe`.
//!
//! - [`boundary`]: the wrapper every exported function runs in (panics, initialisation, tracing).
//! - [`args`]: checked views of the caller's pointers.
//! - [`tables`]: p11gate's own static function lists and interfaces.
//! - [`fns`]: the exported functions, one file per chapter of the spec.
//! - [`mutex`]: fork-aware mutex callbacks p11gate gives its upstreams.
//! - [`terminal`]: reading a PIN without echo, for the `p11gate` command.
//! - [`os`]: `SIOCOUTQ` and `atexit`, for the audit writer.

pub mod args;
pub mod boundary;
pub mod fns;
pub(crate) mod fuzz;
pub mod mutex;
pub mod os;
pub mod tables;
pub mod terminal;
