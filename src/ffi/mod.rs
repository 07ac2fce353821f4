//! The C surface: the only place with `extern "C"` and `#[no_mangle]`, and (with the upstream
//! loader) the only place with `unsafe`.
//!
//! - [`boundary`]: the wrapper every exported function runs in (panics, initialisation, tracing).
//! - [`args`]: checked views of the caller's pointers.
//! - [`owned`]: arguments p11gate makes itself, as a client (`p11gate doctor`).
//! - [`tables`]: p11gate's own static function lists and interfaces.
//! - [`fns`]: the exported functions, one file per chapter of the spec.
//! - [`fork_gate`]: `fork()` waits until no call is inside p11gate.
//! - [`mutex`]: fork-aware mutex callbacks p11gate gives its upstreams.
//! - [`terminal`]: reading a PIN without echo, for the `p11gate` command.
//! - [`os`]: system calls std does not offer (`SIOCOUTQ`, `atexit`, futexes, `membarrier`).

pub mod args;
pub mod boundary;
pub mod fns;
pub mod fork_gate;
pub(crate) mod fuzz;
pub mod mutex;
pub mod os;
pub mod owned;
pub mod tables;
pub mod terminal;
