//! Policy: what a slot may be asked to do, decided before any backend sees the call.
//!
//! Each slot has a [`SlotPolicy`], compiled at `C_Initialize` from its upstream's rules and its
//! own: mechanism filtering ([`MechanismFilter`]), `require_non_extractable` and `read_only`. A
//! refusal is logged once, at warn, naming the function, the mechanism or template, the slot and
//! the rule. Mechanism rules cost nothing for a slot that has none, and a binary search of a
//! short sorted list for one that has.
#![forbid(unsafe_code)]

use pkcs11_sys::*;

use crate::error::{Error, Result};
use crate::ffi::args::Template;
use crate::names::{mechanism_by_name, mechanism_name};

/// A named, documented set of mechanisms that some backends cannot or must not do.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    pub name: &'static str,
    pub why: &'static str,
    pub denies: &'static [CK_MECHANISM_TYPE],
}

/// The profiles a configuration can name in `profiles = [...]`.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "no-aes-gcm",
        why: "backends with AES-GCM disabled (some HSMs behind gateways)",
        denies: &[CKM_AES_GCM],
    },
    Profile {
        name: "no-aes-cbc",
        why: "backends or gateways without AES-CBC",
        denies: &[CKM_AES_CBC, CKM_AES_CBC_PAD],
    },
    Profile {
        name: "fortanix-hsm-gateway",
        why: "Fortanix DSM's HSM Gateway, which does not offer AES-CBC",
        denies: &[CKM_AES_CBC, CKM_AES_CBC_PAD],
    },
];

/// Looks up a profile by name.
pub fn profile(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name)
}

/// A mechanism as a configuration names it: a spec name (`CKM_AES_GCM`) or a number (`0x1087`,
/// `4231`).
pub fn parse_mechanism(text: &str) -> Option<CK_MECHANISM_TYPE> {
    let t = text.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return CK_MECHANISM_TYPE::from_str_radix(hex, 16).ok();
    }
    if t.bytes().all(|b| b.is_ascii_digit()) && !t.is_empty() {
        return t.parse().ok();
    }
    mechanism_by_name(t)
}

/// A mechanism's spec name, or its number in hex.
pub fn mechanism_text(m: CK_MECHANISM_TYPE) -> String {
    mechanism_name(m).map_or_else(|| format!("{m:#x}"), str::to_string)
}

/// Mechanism rules of one slot: deny lists (with the rule each entry came from) and allow lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MechanismFilter {
    /// Sorted by mechanism; the string names the rule ("profile \"no-aes-gcm\" of upstream \"a\"").
    deny: Vec<(CK_MECHANISM_TYPE, String)>,
    /// Each allow list sorted, with the rule it came from.
    allow: Vec<(Vec<CK_MECHANISM_TYPE>, String)>,
}

impl MechanismFilter {
    /// Adds mechanisms a rule refuses.
    pub fn deny(&mut self, mechanisms: &[CK_MECHANISM_TYPE], rule: &str) {
        for &m in mechanisms {
            if !self.deny.iter().any(|(d, _)| *d == m) {
                self.deny.push((m, rule.to_string()));
            }
        }
        self.deny.sort_by_key(|(m, _)| *m);
    }

    /// Adds an allow list: a mechanism must be on every allow list there is.
    pub fn allow_only(&mut self, mechanisms: &[CK_MECHANISM_TYPE], rule: &str) {
        let mut list = mechanisms.to_vec();
        list.sort_unstable();
        list.dedup();
        self.allow.push((list, rule.to_string()));
    }

    /// Whether there are no rules at all (everything passes through untouched).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.deny.is_empty() && self.allow.is_empty()
    }

    /// The rule that refuses `m`, if one does.
    #[inline]
    pub fn refusal(&self, m: CK_MECHANISM_TYPE) -> Option<&str> {
        if self.is_empty() {
            return None;
        }
        if let Ok(i) = self.deny.binary_search_by_key(&m, |(d, _)| *d) {
            return Some(&self.deny[i].1);
        }
        self.allow
            .iter()
            .find(|(list, _)| list.binary_search(&m).is_err())
            .map(|(_, rule)| rule.as_str())
    }

    /// Mechanisms of `all` that pass, in their order.
    pub fn retain_allowed(&self, all: &mut Vec<CK_MECHANISM_TYPE>) {
        all.retain(|m| self.refusal(*m).is_none());
    }
}

/// Everything one slot is held to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotPolicy {
    pub mechanisms: MechanismFilter,
    /// Secret and private keys must be created non-extractable and sensitive.
    pub require_non_extractable: bool,
    /// No read-write sessions, no object changes.
    pub read_only: bool,
}

/// What kind of object a template makes, for the key policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewObject {
    /// The template's CKA_CLASS decides (C_CreateObject, C_UnwrapKey).
    FromTemplate,
    /// Always a secret key (C_GenerateKey, C_DeriveKey).
    SecretKey,
    /// Always a private key (the private template of C_GenerateKeyPair).
    PrivateKey,
}

impl SlotPolicy {
    /// Refuses a mechanism this slot may not use.
    #[inline]
    pub fn check_mechanism(
        &self,
        func: &str,
        slot: CK_SLOT_ID,
        m: CK_MECHANISM_TYPE,
    ) -> Result<()> {
        match self.mechanisms.refusal(m) {
            None => Ok(()),
            Some(rule) => {
                log::warn!(
                    "{func}: {} refused on slot {slot} by {rule}",
                    mechanism_text(m)
                );
                crate::audit::note_refusal(rule);
                Err(Error::MechanismInvalid)
            }
        }
    }

    /// Refuses changes on a read-only slot.
    #[inline]
    pub fn check_writable(&self, func: &str, slot: CK_SLOT_ID) -> Result<()> {
        if self.read_only {
            log::warn!("{func}: refused on slot {slot}: the slot is read_only");
            crate::audit::note_refusal("read_only");
            return Err(Error::TokenWriteProtected);
        }
        Ok(())
    }

    /// `require_non_extractable` for a template that makes an object: refuses a secret or
    /// private key the template asks to be extractable or not sensitive, and returns the
    /// attributes to add where it leaves them unstated (so that the token's defaults cannot
    /// make the key exportable; Vault's RSA template, for one, states no CKA_SENSITIVE).
    pub fn protect_new_key(
        &self,
        func: &str,
        slot: CK_SLOT_ID,
        kind: NewObject,
        t: &Template<'_>,
    ) -> Result<&'static [(CK_ATTRIBUTE_TYPE, &'static [u8])]> {
        if !self.require_non_extractable {
            return Ok(&[]);
        }
        let is_key = match kind {
            NewObject::SecretKey | NewObject::PrivateKey => true,
            NewObject::FromTemplate => {
                matches!(
                    t.ulong_value(CKA_CLASS),
                    Some(CKO_SECRET_KEY | CKO_PRIVATE_KEY)
                )
            }
        };
        if !is_key {
            return Ok(&[]);
        }
        self.protect(
            func,
            slot,
            t.bool_value(CKA_EXTRACTABLE),
            t.bool_value(CKA_SENSITIVE),
        )
    }

    /// The template to forward under `require_non_extractable`: the caller's, or the caller's
    /// with the safe values it left unstated appended (in `storage`), or a refusal.
    pub fn protected_template<'s>(
        &self,
        func: &str,
        slot: CK_SLOT_ID,
        kind: NewObject,
        t: Template<'s>,
        storage: &'s mut Vec<CK_ATTRIBUTE>,
    ) -> Result<Template<'s>> {
        let extra = self.protect_new_key(func, slot, kind, &t)?;
        if extra.is_empty() {
            return Ok(t);
        }
        log::debug!(
            "{func}: slot {slot}: adding {} safe key attribute(s) (require_non_extractable)",
            extra.len()
        );
        Ok(t.with_extra(extra, storage))
    }

    /// The decision for a key whose resulting `CKA_EXTRACTABLE` / `CKA_SENSITIVE` are these
    /// (None: not stated): refused when stated unsafe, else the safe values still to add.
    pub fn protect(
        &self,
        func: &str,
        slot: CK_SLOT_ID,
        extractable: Option<bool>,
        sensitive: Option<bool>,
    ) -> Result<&'static [(CK_ATTRIBUTE_TYPE, &'static [u8])]> {
        const NOT_EXTRACTABLE: (CK_ATTRIBUTE_TYPE, &[u8]) = (CKA_EXTRACTABLE, &[CK_FALSE]);
        const SENSITIVE: (CK_ATTRIBUTE_TYPE, &[u8]) = (CKA_SENSITIVE, &[CK_TRUE]);
        if !self.require_non_extractable {
            return Ok(&[]);
        }
        if extractable == Some(true) || sensitive == Some(false) {
            log::warn!(
                "{func}: refused on slot {slot} by require_non_extractable: the template makes the key {}",
                if extractable == Some(true) {
                    "extractable (CKA_EXTRACTABLE=TRUE)"
                } else {
                    "not sensitive (CKA_SENSITIVE=FALSE)"
                }
            );
            crate::audit::note_refusal(if extractable == Some(true) {
                "require_non_extractable (CKA_EXTRACTABLE=TRUE)"
            } else {
                "require_non_extractable (CKA_SENSITIVE=FALSE)"
            });
            return Err(Error::TemplateInconsistent);
        }
        Ok(match (extractable, sensitive) {
            (None, None) => &[NOT_EXTRACTABLE, SENSITIVE],
            (None, _) => &[NOT_EXTRACTABLE],
            (_, None) => &[SENSITIVE],
            _ => &[],
        })
    }

    /// Whether a `C_SetAttributeValue` template would weaken a key (then the object's class
    /// decides, see [`SlotPolicy::protect`]).
    pub fn weakens_key(&self, t: &Template<'_>) -> bool {
        self.require_non_extractable
            && (t.bool_value(CKA_EXTRACTABLE) == Some(true)
                || t.bool_value(CKA_SENSITIVE) == Some(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_by_name_and_number() {
        assert_eq!(parse_mechanism("CKM_AES_GCM"), Some(CKM_AES_GCM));
        assert_eq!(parse_mechanism("0x1087"), Some(CKM_AES_GCM));
        assert_eq!(parse_mechanism("4231"), Some(CKM_AES_GCM));
        assert_eq!(parse_mechanism("CKM_NOPE"), None);
        assert_eq!(parse_mechanism("0xZZ"), None);
        assert_eq!(mechanism_text(CKM_RSA_PKCS_OAEP), "CKM_RSA_PKCS_OAEP");
        assert_eq!(mechanism_text(0x8000_1234), "0x80001234");
    }

    #[test]
    fn deny_beats_allow_and_every_allow_list_must_agree() {
        let mut f = MechanismFilter::default();
        assert!(f.is_empty());
        assert_eq!(f.refusal(CKM_AES_GCM), None);
        f.deny(
            profile("no-aes-gcm").unwrap().denies,
            "profile \"no-aes-gcm\" of upstream \"a\"",
        );
        f.allow_only(
            &[CKM_AES_GCM, CKM_RSA_PKCS_OAEP, CKM_AES_CBC_PAD],
            "allow list of upstream \"a\"",
        );
        f.allow_only(&[CKM_RSA_PKCS_OAEP, CKM_AES_GCM], "allow list of slot 0");
        assert_eq!(
            f.refusal(CKM_AES_GCM),
            Some("profile \"no-aes-gcm\" of upstream \"a\"")
        );
        assert_eq!(f.refusal(CKM_AES_CBC_PAD), Some("allow list of slot 0"));
        assert_eq!(
            f.refusal(CKM_SHA256_HMAC),
            Some("allow list of upstream \"a\"")
        );
        assert_eq!(f.refusal(CKM_RSA_PKCS_OAEP), None);
        let mut list = vec![CKM_AES_GCM, CKM_RSA_PKCS_OAEP, CKM_SHA256_HMAC];
        f.retain_allowed(&mut list);
        assert_eq!(list, vec![CKM_RSA_PKCS_OAEP]);
    }

    #[test]
    fn key_policy_refuses_unsafe_and_fills_in_unstated() {
        let p = SlotPolicy {
            require_non_extractable: true,
            ..SlotPolicy::default()
        };
        let added = |e, s| {
            p.protect("C_GenerateKey", 0, e, s)
                .map(|a| a.iter().map(|(t, v)| (*t, v[0])).collect::<Vec<_>>())
        };
        assert_eq!(added(Some(false), Some(true)), Ok(vec![]));
        assert_eq!(
            added(None, Some(true)),
            Ok(vec![(CKA_EXTRACTABLE, CK_FALSE)])
        );
        assert_eq!(added(Some(false), None), Ok(vec![(CKA_SENSITIVE, CK_TRUE)]));
        assert_eq!(
            added(None, None),
            Ok(vec![(CKA_EXTRACTABLE, CK_FALSE), (CKA_SENSITIVE, CK_TRUE)])
        );
        assert_eq!(
            added(Some(true), Some(true)),
            Err(Error::TemplateInconsistent)
        );
        assert_eq!(
            added(Some(false), Some(false)),
            Err(Error::TemplateInconsistent)
        );
        let lax = SlotPolicy::default();
        assert_eq!(
            lax.protect("C_GenerateKey", 0, Some(true), None),
            Ok(&[][..])
        );
    }
}
