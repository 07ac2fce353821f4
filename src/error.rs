//! The one error type, and its mapping to `CK_RV` — here and nowhere else.
//!
//! A backend's return value travels as [`Error::Backend`] and comes out exactly as it went in:
//! p11gate never rewrites what the upstream said. Every other variant is a refusal of p11gate's
//! own and maps to the code the spec prescribes for it.

use std::fmt;

use pkcs11_sys::*;

use crate::names::rv_name;

/// Why a call did not return `CKR_OK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// What a backend returned, passed through untouched (including `CKR_BUFFER_TOO_SMALL`).
    Backend(CK_RV),
    /// A call before `C_Initialize`, after `C_Finalize`, or in a child after `fork()`.
    NotInitialized,
    /// `C_Initialize` while already initialised.
    AlreadyInitialized,
    /// A pointer the spec forbids to be NULL was NULL, or arguments contradict each other.
    ArgumentsBad,
    /// An unknown, closed or foreign session handle.
    SessionHandleInvalid,
    /// A slot id this process may not see.
    SlotIdInvalid,
    /// Neither p11gate nor its backend implements the function.
    FunctionNotSupported,
    /// The caller's output buffer is too small (the required length has been written).
    BufferTooSmall,
    /// More sessions than p11gate's session table holds.
    SessionCount,
    /// A mechanism the slot's policy refuses (the refusal has been logged with its rule).
    MechanismInvalid,
    /// A template the slot's key policy refuses.
    TemplateInconsistent,
    /// A change on a read-only slot.
    TokenWriteProtected,
    /// The slot's token cannot be found on its upstream right now.
    TokenNotPresent,
    /// The application's PIN does not match the slot's PIN hash.
    PinIncorrect,
    /// An object handle that was not handed out on the session's slot (per argument role).
    ObjectHandleInvalid,
    KeyHandleInvalid,
    WrappingKeyHandleInvalid,
    UnwrappingKeyHandleInvalid,
    /// The configuration is invalid or an upstream cannot be loaded; the text says exactly what.
    /// Logged once where it arises; C_Initialize returns `CKR_GENERAL_ERROR`. Boxed so that an
    /// `Error` is two words and every `Result` on the hot path comes back in registers.
    Setup(Box<String>),
    /// A panic was caught at the C boundary (a bug in p11gate; logged).
    Panic,
}

/// Results of p11gate's internal operations.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The `CK_RV` the C caller receives. This is the only mapping in the crate.
    #[inline]
    pub fn rv(&self) -> CK_RV {
        match self {
            Error::Backend(rv) => *rv,
            Error::NotInitialized => CKR_CRYPTOKI_NOT_INITIALIZED,
            Error::AlreadyInitialized => CKR_CRYPTOKI_ALREADY_INITIALIZED,
            Error::ArgumentsBad => CKR_ARGUMENTS_BAD,
            Error::SessionHandleInvalid => CKR_SESSION_HANDLE_INVALID,
            Error::SlotIdInvalid => CKR_SLOT_ID_INVALID,
            Error::FunctionNotSupported => CKR_FUNCTION_NOT_SUPPORTED,
            Error::BufferTooSmall => CKR_BUFFER_TOO_SMALL,
            Error::SessionCount => CKR_SESSION_COUNT,
            Error::MechanismInvalid => CKR_MECHANISM_INVALID,
            Error::TemplateInconsistent => CKR_TEMPLATE_INCONSISTENT,
            Error::TokenWriteProtected => CKR_TOKEN_WRITE_PROTECTED,
            Error::TokenNotPresent => CKR_TOKEN_NOT_PRESENT,
            Error::PinIncorrect => CKR_PIN_INCORRECT,
            Error::ObjectHandleInvalid => CKR_OBJECT_HANDLE_INVALID,
            Error::KeyHandleInvalid => CKR_KEY_HANDLE_INVALID,
            Error::WrappingKeyHandleInvalid => CKR_WRAPPING_KEY_HANDLE_INVALID,
            Error::UnwrappingKeyHandleInvalid => CKR_UNWRAPPING_KEY_HANDLE_INVALID,
            Error::Setup(_) | Error::Panic => CKR_GENERAL_ERROR,
        }
    }

    /// A setup error with its message.
    #[cold]
    pub fn setup(msg: impl Into<String>) -> Self {
        Error::Setup(Box::new(msg.into()))
    }
}

/// Turns a backend's `CK_RV` into a `Result`, keeping any non-OK value untouched.
#[inline(always)]
pub fn check(rv: CK_RV) -> Result<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(Error::Backend(rv))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Setup(msg) => f.write_str(msg),
            Error::Panic => f.write_str("internal error (panic caught at the C boundary)"),
            other => f.write_str(rv_name(other.rv())),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_codes_pass_through_untouched() {
        for rv in [
            CKR_BUFFER_TOO_SMALL,
            CKR_PIN_INCORRECT,
            CKR_DEVICE_ERROR,
            CKR_VENDOR_DEFINED + 7,
        ] {
            assert_eq!(check(rv).unwrap_err().rv(), rv);
        }
        assert_eq!(check(CKR_OK), Ok(()));
    }

    #[test]
    fn errors_are_two_words() {
        assert_eq!(std::mem::size_of::<Result<()>>(), 16);
    }

    #[test]
    fn setup_errors_are_general_errors_with_their_text() {
        let e = Error::setup("cannot load upstream /x.so: no such file");
        assert_eq!(e.rv(), CKR_GENERAL_ERROR);
        assert_eq!(e.to_string(), "cannot load upstream /x.so: no such file");
        assert_eq!(
            Error::NotInitialized.to_string(),
            "CKR_CRYPTOKI_NOT_INITIALIZED"
        );
    }
}
