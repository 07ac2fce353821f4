//! Soft token objects: attributes, their defaults and rules (PKCS#11 2.40 §4), and their
//! encoding for the store.
//!
//! Values are held in zeroizing buffers: a key's value is wiped when its object goes.

use std::collections::BTreeMap;

use pkcs11_sys::*;
use zeroize::Zeroizing;

use super::crypto::{CkResult, KeyRef};

/// Attribute type -> value.
pub type Attrs = BTreeMap<CK_ATTRIBUTE_TYPE, Zeroizing<Vec<u8>>>;

/// A template as given: (type, value); `None` for a NULL value.
pub type Given<'a> = [(CK_ATTRIBUTE_TYPE, Option<&'a [u8]>)];

/// One object.
#[derive(Debug, Clone, Default)]
pub struct Object {
    pub attrs: Attrs,
}

pub fn bool_bytes(v: bool) -> Vec<u8> {
    vec![if v { CK_TRUE } else { CK_FALSE }]
}

pub fn ulong_bytes(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// Attributes that only the token sets.
const READ_ONLY_ON_CREATE: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_LOCAL,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_KEY_GEN_MECHANISM,
];

/// Attributes that never change once the object exists.
const IMMUTABLE: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_KEY_TYPE,
    CKA_VALUE,
    CKA_VALUE_LEN,
    CKA_MODULUS,
    CKA_MODULUS_BITS,
    CKA_PUBLIC_EXPONENT,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
    CKA_LOCAL,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_KEY_GEN_MECHANISM,
    CKA_MODIFIABLE,
];

/// Private parts, never returned while the key is sensitive or not extractable.
const SECRET_PARTS: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_VALUE,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
];

/// How an object comes to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `C_CreateObject`, `C_UnwrapKey`: the value came from outside.
    Imported,
    /// Generated on the token by this mechanism.
    Generated(CK_MECHANISM_TYPE),
}

impl Object {
    pub fn get(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        self.attrs.get(&ty).map(|v| v.as_slice())
    }

    pub fn ulong(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        Some(CK_ULONG::from_ne_bytes(self.get(ty)?.try_into().ok()?))
    }

    pub fn flag(&self, ty: CK_ATTRIBUTE_TYPE) -> bool {
        matches!(self.get(ty), Some([b]) if *b != CK_FALSE)
    }

    pub fn class(&self) -> Option<CK_OBJECT_CLASS> {
        self.ulong(CKA_CLASS)
    }

    pub fn key_type(&self) -> Option<CK_KEY_TYPE> {
        self.ulong(CKA_KEY_TYPE)
    }

    pub fn is_token(&self) -> bool {
        self.flag(CKA_TOKEN)
    }

    pub fn is_private(&self) -> bool {
        self.flag(CKA_PRIVATE)
    }

    fn set(&mut self, ty: CK_ATTRIBUTE_TYPE, v: Vec<u8>) {
        self.attrs.insert(ty, Zeroizing::new(v));
    }

    fn or_set(&mut self, ty: CK_ATTRIBUTE_TYPE, v: Vec<u8>) {
        self.attrs.entry(ty).or_insert_with(|| Zeroizing::new(v));
    }

    /// Whether the object matches a search template (every attribute equal).
    pub fn matches(&self, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> bool {
        template
            .iter()
            .all(|(ty, v)| self.get(*ty) == Some(v.as_slice()))
    }

    /// Whether an attribute's value may be returned.
    pub fn readable(&self, ty: CK_ATTRIBUTE_TYPE) -> bool {
        let secretive = matches!(self.class(), Some(CKO_SECRET_KEY | CKO_PRIVATE_KEY));
        !(secretive
            && SECRET_PARTS.contains(&ty)
            && (self.flag(CKA_SENSITIVE) || !self.flag(CKA_EXTRACTABLE)))
    }

    /// The object as a key for the mechanisms.
    pub fn key_ref(&self) -> CkResult<KeyRef<'_>> {
        let need = |ty| self.get(ty).ok_or(CKR_KEY_TYPE_INCONSISTENT);
        match (self.class(), self.key_type()) {
            (Some(CKO_SECRET_KEY), Some(_)) => Ok(KeyRef::Secret(need(CKA_VALUE)?)),
            (Some(CKO_PUBLIC_KEY), Some(CKK_RSA)) => Ok(KeyRef::RsaPublic {
                n: need(CKA_MODULUS)?,
                e: need(CKA_PUBLIC_EXPONENT)?,
            }),
            (Some(CKO_PRIVATE_KEY), Some(CKK_RSA)) => Ok(KeyRef::RsaPrivate {
                n: need(CKA_MODULUS)?,
                e: need(CKA_PUBLIC_EXPONENT)?,
                d: need(CKA_PRIVATE_EXPONENT)?,
                p: need(CKA_PRIME_1)?,
                q: need(CKA_PRIME_2)?,
            }),
            (Some(CKO_PUBLIC_KEY), Some(CKK_EC)) => Ok(KeyRef::EcPublic {
                params: need(CKA_EC_PARAMS)?,
                point: need(CKA_EC_POINT)?,
            }),
            (Some(CKO_PRIVATE_KEY), Some(CKK_EC)) => Ok(KeyRef::EcPrivate {
                params: need(CKA_EC_PARAMS)?,
                value: need(CKA_VALUE)?,
            }),
            _ => Err(CKR_KEY_TYPE_INCONSISTENT),
        }
    }

    /// Builds a new object from a template, filling in the spec's defaults. `class` and
    /// `key_type` are what the call implies (generation), when the template may omit them.
    pub fn build(
        given: &Given<'_>,
        class: Option<CK_OBJECT_CLASS>,
        key_type: Option<CK_KEY_TYPE>,
        origin: Origin,
        generated: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)],
    ) -> CkResult<Object> {
        let mut o = Object::default();
        for (ty, v) in given {
            let v = v.ok_or(CKR_ATTRIBUTE_VALUE_INVALID)?;
            check_attribute(*ty, v)?;
            if READ_ONLY_ON_CREATE.contains(ty) {
                return Err(CKR_ATTRIBUTE_READ_ONLY);
            }
            if let Some(old) = o.get(*ty) {
                if old != v {
                    return Err(CKR_TEMPLATE_INCONSISTENT);
                }
            }
            o.set(*ty, v.to_vec());
        }
        for (ty, want) in [(CKA_CLASS, class), (CKA_KEY_TYPE, key_type)] {
            if let Some(want) = want {
                match o.ulong(ty) {
                    None => o.set(ty, ulong_bytes(want)),
                    Some(v) if v == want => {}
                    Some(_) => return Err(CKR_TEMPLATE_INCONSISTENT),
                }
            }
        }
        if let Origin::Generated(_) = origin {
            for (ty, _) in generated {
                if o.get(*ty).is_some()
                    && !matches!(
                        *ty,
                        CKA_VALUE_LEN | CKA_MODULUS_BITS | CKA_PUBLIC_EXPONENT | CKA_EC_PARAMS
                    )
                {
                    return Err(CKR_TEMPLATE_INCONSISTENT);
                }
            }
        }
        for (ty, v) in generated {
            o.set(*ty, v.clone());
        }
        let class = o.class().ok_or(CKR_TEMPLATE_INCOMPLETE)?;
        let is_key = matches!(class, CKO_SECRET_KEY | CKO_PRIVATE_KEY | CKO_PUBLIC_KEY);
        let secretive = matches!(class, CKO_SECRET_KEY | CKO_PRIVATE_KEY);
        o.or_set(CKA_TOKEN, bool_bytes(false));
        o.or_set(CKA_PRIVATE, bool_bytes(secretive));
        o.or_set(CKA_MODIFIABLE, bool_bytes(true));
        o.or_set(CKA_COPYABLE, bool_bytes(true));
        o.or_set(CKA_DESTROYABLE, bool_bytes(true));
        o.or_set(CKA_LABEL, Vec::new());
        match class {
            CKO_DATA => {
                o.or_set(CKA_APPLICATION, Vec::new());
                o.or_set(CKA_VALUE, Vec::new());
                o.or_set(CKA_OBJECT_ID, Vec::new());
            }
            CKO_SECRET_KEY | CKO_PRIVATE_KEY | CKO_PUBLIC_KEY => {}
            CKO_CERTIFICATE => {
                o.or_set(CKA_CERTIFICATE_TYPE, ulong_bytes(CKC_X_509));
                o.or_set(CKA_TRUSTED, bool_bytes(false));
                o.or_set(CKA_ID, Vec::new());
            }
            _ => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
        }
        if is_key {
            let key_type = o.key_type().ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            o.or_set(CKA_ID, Vec::new());
            o.or_set(CKA_DERIVE, bool_bytes(false));
            o.or_set(CKA_START_DATE, Vec::new());
            o.or_set(CKA_END_DATE, Vec::new());
            let (local, mech) = match origin {
                Origin::Generated(m) => (true, ulong_bytes(m)),
                Origin::Imported => (false, ulong_bytes(CK_UNAVAILABLE_INFORMATION)),
            };
            o.set(CKA_LOCAL, bool_bytes(local));
            o.set(CKA_KEY_GEN_MECHANISM, mech);
            match class {
                CKO_SECRET_KEY => {
                    for ty in [
                        CKA_ENCRYPT,
                        CKA_DECRYPT,
                        CKA_SIGN,
                        CKA_VERIFY,
                        CKA_WRAP,
                        CKA_UNWRAP,
                    ] {
                        o.or_set(ty, bool_bytes(true));
                    }
                    let value_len = o.get(CKA_VALUE).ok_or(CKR_TEMPLATE_INCOMPLETE)?.len();
                    if key_type == CKK_AES && ![16, 24, 32].contains(&value_len) {
                        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
                    }
                    if !matches!(key_type, CKK_AES | CKK_GENERIC_SECRET) || value_len == 0 {
                        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
                    }
                    o.set(CKA_VALUE_LEN, ulong_bytes(value_len as CK_ULONG));
                }
                CKO_PRIVATE_KEY => {
                    for ty in [CKA_DECRYPT, CKA_SIGN, CKA_UNWRAP] {
                        o.or_set(ty, bool_bytes(true));
                    }
                    o.or_set(CKA_SIGN_RECOVER, bool_bytes(false));
                    o.or_set(CKA_SUBJECT, Vec::new());
                    o.or_set(CKA_ALWAYS_AUTHENTICATE, bool_bytes(false));
                    o.or_set(CKA_WRAP_WITH_TRUSTED, bool_bytes(false));
                    let required: &[CK_ATTRIBUTE_TYPE] = match key_type {
                        CKK_RSA => &[
                            CKA_MODULUS,
                            CKA_PUBLIC_EXPONENT,
                            CKA_PRIVATE_EXPONENT,
                            CKA_PRIME_1,
                            CKA_PRIME_2,
                        ],
                        CKK_EC => &[CKA_EC_PARAMS, CKA_VALUE],
                        _ => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
                    };
                    if required.iter().any(|t| o.get(*t).is_none()) {
                        return Err(CKR_TEMPLATE_INCOMPLETE);
                    }
                }
                _ => {
                    for ty in [CKA_ENCRYPT, CKA_VERIFY, CKA_WRAP] {
                        o.or_set(ty, bool_bytes(true));
                    }
                    o.or_set(CKA_VERIFY_RECOVER, bool_bytes(false));
                    o.or_set(CKA_SUBJECT, Vec::new());
                    o.or_set(CKA_TRUSTED, bool_bytes(false));
                    let required: &[CK_ATTRIBUTE_TYPE] = match key_type {
                        CKK_RSA => &[CKA_MODULUS, CKA_PUBLIC_EXPONENT],
                        CKK_EC => &[CKA_EC_PARAMS, CKA_EC_POINT],
                        _ => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
                    };
                    if required.iter().any(|t| o.get(*t).is_none()) {
                        return Err(CKR_TEMPLATE_INCOMPLETE);
                    }
                    if key_type == CKK_RSA {
                        let bits = significant_bits(o.get(CKA_MODULUS).unwrap_or(&[]));
                        o.set(CKA_MODULUS_BITS, ulong_bytes(bits));
                    }
                }
            }
            if secretive {
                o.or_set(CKA_SENSITIVE, bool_bytes(false));
                o.or_set(CKA_EXTRACTABLE, bool_bytes(true));
                let generated = matches!(origin, Origin::Generated(_));
                let sensitive = o.flag(CKA_SENSITIVE);
                let extractable = o.flag(CKA_EXTRACTABLE);
                o.set(CKA_ALWAYS_SENSITIVE, bool_bytes(generated && sensitive));
                o.set(CKA_NEVER_EXTRACTABLE, bool_bytes(generated && !extractable));
                if key_type == CKK_RSA && class == CKO_PRIVATE_KEY {
                    let bits = significant_bits(o.get(CKA_MODULUS).unwrap_or(&[]));
                    o.or_set(CKA_MODULUS_BITS, ulong_bytes(bits));
                }
            }
        }
        Ok(o)
    }

    /// `C_SetAttributeValue` (and the template of `C_CopyObject`): the spec's one-way rules.
    pub fn change(&mut self, given: &Given<'_>, copying: bool) -> CkResult<()> {
        if !copying && !self.flag(CKA_MODIFIABLE) {
            return Err(CKR_ACTION_PROHIBITED);
        }
        let mut next = self.clone();
        for (ty, v) in given {
            let v = v.ok_or(CKR_ATTRIBUTE_VALUE_INVALID)?;
            check_attribute(*ty, v)?;
            let current = self.get(*ty);
            if current == Some(v) {
                continue;
            }
            match *ty {
                // Only ever towards safety.
                CKA_SENSITIVE if v == [CK_TRUE] => {}
                CKA_EXTRACTABLE if v == [CK_FALSE] => {}
                CKA_SENSITIVE | CKA_EXTRACTABLE => return Err(CKR_ATTRIBUTE_READ_ONLY),
                CKA_TOKEN | CKA_PRIVATE | CKA_MODIFIABLE if copying => {}
                t if IMMUTABLE.contains(&t) => return Err(CKR_ATTRIBUTE_READ_ONLY),
                _ => {}
            }
            next.set(*ty, v.to_vec());
        }
        *self = next;
        Ok(())
    }

    /// The record the store keeps: count, then (type, length, value) each, little-endian.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(64 * self.attrs.len()));
        out.extend_from_slice(&(self.attrs.len() as u32).to_le_bytes());
        for (ty, v) in &self.attrs {
            out.extend_from_slice(&(*ty).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Object> {
        let mut o = Object::default();
        let (count, mut rest) = take::<4>(bytes)?;
        for _ in 0..u32::from_le_bytes(count) {
            let (ty, r) = take::<8>(rest)?;
            let (len, r) = take::<4>(r)?;
            let len = u32::from_le_bytes(len) as usize;
            if r.len() < len {
                return None;
            }
            o.set(
                u64::from_le_bytes(ty) as CK_ATTRIBUTE_TYPE,
                r[..len].to_vec(),
            );
            rest = &r[len..];
        }
        rest.is_empty().then_some(o)
    }
}

/// Attribute types the soft token knows besides those `names::attribute_name` names.
const MORE_KNOWN: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_URL,
    CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
    CKA_HASH_OF_ISSUER_PUBLIC_KEY,
    CKA_NAME_HASH_ALGORITHM,
    CKA_OWNER,
    CKA_AC_ISSUER,
    CKA_ATTR_TYPES,
    CKA_JAVA_MIDP_SECURITY_DOMAIN,
    CKA_PRIME_BITS,
    CKA_SUBPRIME_BITS,
];

/// Attributes whose value is a CK_ULONG.
const ULONG_VALUED: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_CERTIFICATE_TYPE,
    CKA_VALUE_LEN,
    CKA_MODULUS_BITS,
    CKA_CERTIFICATE_CATEGORY,
    CKA_KEY_GEN_MECHANISM,
];

/// CK_BBOOL attributes whose value the token's rules read.
const BOOL_VALUED: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_MODIFIABLE,
    CKA_COPYABLE,
    CKA_DESTROYABLE,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_SIGN,
    CKA_VERIFY,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_DERIVE,
];

/// An attribute type the token does not know (it knows no vendor-defined ones) is
/// `CKR_ATTRIBUTE_TYPE_INVALID`; a CK_ULONG- or CK_BBOOL-valued one of another size is
/// `CKR_ATTRIBUTE_VALUE_INVALID` (2.40 §4.1.1), when an object is made and when it is changed
/// or copied alike.
fn check_attribute(ty: CK_ATTRIBUTE_TYPE, v: &[u8]) -> CkResult<()> {
    let known = crate::names::attribute_name(ty).is_some() || MORE_KNOWN.contains(&ty);
    if !known {
        return Err(CKR_ATTRIBUTE_TYPE_INVALID);
    }
    if ULONG_VALUED.contains(&ty) && v.len() != std::mem::size_of::<CK_ULONG>() {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    if BOOL_VALUED.contains(&ty) && v.len() != 1 {
        return Err(CKR_ATTRIBUTE_VALUE_INVALID);
    }
    Ok(())
}

fn take<const N: usize>(b: &[u8]) -> Option<([u8; N], &[u8])> {
    let head: [u8; N] = b.get(..N)?.try_into().ok()?;
    Some((head, &b[N..]))
}

/// The bit length of a big-endian unsigned number.
pub fn significant_bits(n: &[u8]) -> CK_ULONG {
    let n = match n.iter().position(|b| *b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    (n.len() as CK_ULONG - 1) * 8 + (8 - n[0].leading_zeros() as CK_ULONG)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aes_template(value: &[u8]) -> Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> {
        vec![
            (CKA_CLASS, ulong_bytes(CKO_SECRET_KEY)),
            (CKA_KEY_TYPE, ulong_bytes(CKK_AES)),
            (CKA_VALUE, value.to_vec()),
            (CKA_LABEL, b"k".to_vec()),
            (CKA_SENSITIVE, bool_bytes(true)),
        ]
    }

    fn given(t: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> Vec<(CK_ATTRIBUTE_TYPE, Option<&[u8]>)> {
        t.iter().map(|(ty, v)| (*ty, Some(v.as_slice()))).collect()
    }

    #[test]
    fn a_created_key_gets_the_spec_defaults_and_hides_its_value() {
        let t = aes_template(&[7; 32]);
        let o = Object::build(&given(&t), None, None, Origin::Imported, &[]).unwrap();
        assert!(!o.is_token());
        assert!(o.is_private());
        assert_eq!(o.ulong(CKA_VALUE_LEN), Some(32));
        assert!(!o.flag(CKA_LOCAL));
        assert!(
            !o.flag(CKA_ALWAYS_SENSITIVE),
            "imported: never ALWAYS_SENSITIVE"
        );
        assert!(!o.readable(CKA_VALUE));
        assert!(o.readable(CKA_LABEL));
        let back = Object::decode(&o.encode()).unwrap();
        assert_eq!(back.attrs, o.attrs);
    }

    #[test]
    fn templates_are_checked() {
        let mut t = aes_template(&[7; 15]);
        assert_eq!(
            Object::build(&given(&t), None, None, Origin::Imported, &[]).unwrap_err(),
            CKR_ATTRIBUTE_VALUE_INVALID
        );
        t = aes_template(&[7; 16]);
        t.push((CKA_LOCAL, bool_bytes(true)));
        assert_eq!(
            Object::build(&given(&t), None, None, Origin::Imported, &[]).unwrap_err(),
            CKR_ATTRIBUTE_READ_ONLY
        );
        let t = vec![(CKA_LABEL, b"x".to_vec())];
        assert_eq!(
            Object::build(&given(&t), None, None, Origin::Imported, &[]).unwrap_err(),
            CKR_TEMPLATE_INCOMPLETE
        );
        let t = vec![(CKA_CLASS, ulong_bytes(CKO_PUBLIC_KEY))];
        assert_eq!(
            Object::build(
                &given(&t),
                Some(CKO_SECRET_KEY),
                None,
                Origin::Imported,
                &[]
            )
            .unwrap_err(),
            CKR_TEMPLATE_INCONSISTENT
        );
    }

    #[test]
    fn sensitivity_only_grows_and_fixed_attributes_stay() {
        let t = vec![
            (CKA_CLASS, ulong_bytes(CKO_SECRET_KEY)),
            (CKA_KEY_TYPE, ulong_bytes(CKK_GENERIC_SECRET)),
            (CKA_VALUE, vec![1; 32]),
        ];
        let mut o = Object::build(&given(&t), None, None, Origin::Imported, &[]).unwrap();
        assert!(o.readable(CKA_VALUE));
        let on = [(CKA_SENSITIVE, bool_bytes(true))];
        o.change(&given(&on), false).unwrap();
        assert!(!o.readable(CKA_VALUE));
        let off = [(CKA_SENSITIVE, bool_bytes(false))];
        assert_eq!(o.change(&given(&off), false), Err(CKR_ATTRIBUTE_READ_ONLY));
        let value = [(CKA_VALUE, vec![2; 32])];
        assert_eq!(
            o.change(&given(&value), false),
            Err(CKR_ATTRIBUTE_READ_ONLY)
        );
        let label = [(CKA_LABEL, b"new".to_vec())];
        o.change(&given(&label), false).unwrap();
        assert_eq!(o.get(CKA_LABEL), Some(&b"new"[..]));
        assert_eq!(significant_bits(&[0, 0x80, 0]), 16);
    }

    /// Found by the `template` fuzz target: C_CopyObject took CKA_TOKEN = "" (and
    /// C_SetAttributeValue any CK_BBOOL of any length), which C_CreateObject refuses.
    #[test]
    fn a_bbool_of_the_wrong_length_is_refused_when_copied_or_set_too() {
        let t = aes_template(&[7; 16]);
        let o = Object::build(&given(&t), None, None, Origin::Imported, &[]).unwrap();
        for (ty, v, copying) in [
            (CKA_TOKEN, vec![], true),
            (CKA_PRIVATE, vec![0, 0], true),
            (CKA_ENCRYPT, vec![], false),
            (CKA_SENSITIVE, vec![1, 1], false),
        ] {
            let mut c = o.clone();
            assert_eq!(
                c.change(&given(&[(ty, v)]), copying),
                Err(CKR_ATTRIBUTE_VALUE_INVALID),
                "{ty:#x}"
            );
            assert_eq!(c.attrs, o.attrs);
        }
        let mut bad = aes_template(&[7; 16]);
        bad.push((CKA_DERIVE, vec![]));
        assert_eq!(
            Object::build(&given(&bad), None, None, Origin::Imported, &[]).unwrap_err(),
            CKR_ATTRIBUTE_VALUE_INVALID
        );
    }
}
