//! The boundary every exported function runs inside.
//!
//! [`guarded`] finds the current runtime (or answers `CKR_CRYPTOKI_NOT_INITIALIZED`), runs the
//! function's body, maps its `Result` to a `CK_RV` through `Error::rv`, and catches any panic:
//! since Rust 1.81 a panic escaping an `extern "C"` function aborts the host process, which
//! would take Vault down. A caught panic is logged and answered with `CKR_GENERAL_ERROR`.
//!
//! At log level trace it writes one line per call: the function, its arguments and the result
//! name. The argument text comes from a closure each function supplies, which lists handles,
//! flags, lengths and mechanism names, and never a PIN or buffer contents; it only runs when
//! trace is on, so the hot path pays one relaxed load for it.
//!
//! Every call also passes the fork gate ([`fork_gate`]), from before the runtime is looked up
//! until after the trace line: a `fork()` waits until no call is inside. And each call is
//! counted and timed for [`crate::metrics`] (`begin` / `end`): with metrics off, a relaxed load
//! and a branch that is not taken.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pkcs11_sys::*;

use crate::audit::Call;
use crate::error::{Error, Result};
use crate::ffi::fork_gate;
use crate::metrics;
use crate::names::{mechanism_name, rv_name};
use crate::runtime::{self, Runtime};

/// Runs `body` with the current runtime; see the module docs.
#[inline(always)]
pub fn guarded(
    name: &'static str,
    args: impl FnOnce() -> String,
    body: impl FnOnce(&'static Runtime) -> Result<()>,
) -> CK_RV {
    let _pass = fork_gate::enter();
    let started = metrics::begin();
    let result = catch_unwind(AssertUnwindSafe(|| runtime::current().and_then(body)));
    finish(name, args, result, started)
}

/// Like [`guarded`], for a call that may wait indefinitely when `blocks` is true
/// (`C_WaitForSlotEvent` without `CKF_DONT_BLOCK`): such a call does not hold up `fork()`.
#[inline(always)]
pub fn guarded_may_block(
    blocks: bool,
    name: &'static str,
    args: impl FnOnce() -> String,
    body: impl FnOnce(&'static Runtime) -> Result<()>,
) -> CK_RV {
    if !blocks {
        return guarded(name, args, body);
    }
    let started = metrics::begin();
    let result = catch_unwind(AssertUnwindSafe(|| runtime::current().and_then(body)));
    finish(name, args, result, started)
}

/// Like [`guarded`], for a call that is audited: `body` also fills in the call's audit
/// record, which is queued (or not: see [`Call::finish`]) when it returns. Under
/// `on_failure = "deny"`, while an audit sink is down, the call fails with
/// `CKR_FUNCTION_FAILED` before anything else happens.
#[inline(always)]
pub fn audited(
    name: &'static str,
    args: impl FnOnce() -> String,
    body: impl FnOnce(&'static Runtime, &mut Call) -> Result<()>,
) -> CK_RV {
    let _pass = fork_gate::enter();
    let started = metrics::begin();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let rt = runtime::current()?;
        let mut call = Call::start(name, rt)?;
        let result = body(rt, &mut call);
        call.finish(&result);
        result
    }));
    finish(name, args, result, started)
}

/// Like [`guarded`], for the functions that work without a runtime (`C_Initialize`,
/// `C_GetFunctionList`, `C_GetInterfaceList`, `C_GetInterface`).
#[inline(always)]
pub fn guarded_uninit(
    name: &'static str,
    args: impl FnOnce() -> String,
    body: impl FnOnce() -> Result<()>,
) -> CK_RV {
    let _pass = fork_gate::enter();
    let started = metrics::begin();
    let result = catch_unwind(AssertUnwindSafe(body));
    finish(name, args, result, started)
}

#[inline(always)]
fn finish(
    name: &'static str,
    args: impl FnOnce() -> String,
    result: std::thread::Result<Result<()>>,
    started: Option<metrics::Started>,
) -> CK_RV {
    let rv = match result {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(e)) => {
            // A refusal in a call that is not audited (C_GetMechanismInfo) must not be
            // attributed to the next audited call on this thread.
            crate::audit::forget_refusal();
            e.rv()
        }
        Err(payload) => panicked(name, payload),
    };
    metrics::end(started, name, rv);
    if log::log_enabled!(log::Level::Trace) {
        log::trace!("{name}({}) = {}", args(), rv_name(rv));
    }
    rv
}

#[cold]
#[inline(never)]
fn panicked(name: &'static str, payload: Box<dyn std::any::Any + Send>) -> CK_RV {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    log::error!("{name}: internal error ({what}); returning CKR_GENERAL_ERROR");
    Error::Panic.rv()
}

/// Registers the fork handlers, once per process (see [`fork_gate::install`]). Called lazily
/// from `C_GetFunctionList`, `C_GetInterface*` and `C_Initialize`: p11gate has no global
/// constructors.
pub fn install_fork_handler() {
    fork_gate::install();
}

/// Formats a mechanism argument for a trace line.
///
/// # Safety
/// `p` is NULL or points to a `CK_MECHANISM` for the duration of the call being traced.
pub unsafe fn mechanism_arg(p: *const CK_MECHANISM) -> String {
    // SAFETY: NULL or valid for the duration of the call, per this function's contract.
    match unsafe { p.as_ref() } {
        None => "NULL".into(),
        Some(m) => match mechanism_name(m.mechanism) {
            Some(n) => format!("{n} (param {} bytes)", m.ulParameterLen),
            None => format!("{:#x} (param {} bytes)", m.mechanism, m.ulParameterLen),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_general_error_and_never_unwinds_further() {
        let rv = guarded_uninit("C_Test", String::new, || panic!("boom"));
        assert_eq!(rv, CKR_GENERAL_ERROR);
        let rv = guarded_uninit("C_Test", String::new, || -> Result<()> {
            Err(Error::Backend(CKR_PIN_INCORRECT))
        });
        assert_eq!(rv, CKR_PIN_INCORRECT);
    }

    #[test]
    fn every_runtime_function_is_not_initialized_before_c_initialize() {
        let mut ran = false;
        let rv = guarded("C_Test", String::new, |_| {
            ran = true;
            Ok(())
        });
        assert_eq!((rv, ran), (CKR_CRYPTOKI_NOT_INITIALIZED, false));
    }
}
