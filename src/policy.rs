//! Policy: what a slot may be asked to do, decided before any backend sees the call.
//!
//! This is the seam the mechanism-filtering and key-policy capability fills in. Every exported
//! function that takes a mechanism already asks [`Policy::check_mechanism`] first, so a refusal
//! here is a refusal everywhere. Today's policy allows everything and costs nothing (it inlines
//! away).
#![forbid(unsafe_code)]

use pkcs11_sys::{CK_MECHANISM_TYPE, CK_SLOT_ID};

use crate::error::Result;

/// Rules for the slots of one runtime. Immutable after `C_Initialize`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {}

impl Policy {
    /// Whether `mechanism` may be used on `slot` (by a `*Init`, key generation, wrapping,
    /// derivation or `C_GetMechanismInfo`).
    #[inline(always)]
    pub fn check_mechanism(&self, _slot: CK_SLOT_ID, _mechanism: CK_MECHANISM_TYPE) -> Result<()> {
        Ok(())
    }
}
