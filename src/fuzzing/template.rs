//! Target `template`: a `CK_ATTRIBUTE` array as a caller may pass it (values NULL or real,
//! any length, any count) → the template views of `ffi::args`, the key policy of
//! `require_non_extractable`, audit's label text, and the soft token's object rules and store
//! encoding.

use pkcs11_sys::*;

use super::{attribute_template, no_panic, Input};
use crate::audit::format::{Fields, JsonMembers, KeyValue};
use crate::audit::keys::KeyInfo;
use crate::error::Error;
use crate::ffi::fuzz::{Buf, CTemplate};
use crate::policy::{NewObject, SlotPolicy};
use crate::soft::object::{Object, Origin};

/// See the module docs. Input: a template, a second template (for `C_SetAttributeValue`), then
/// the rest as a soft token store record.
pub fn template(data: &[u8]) {
    no_panic("template", || {
        let mut input = Input::new(data);
        let mut t = attribute_template(&mut input);
        let mut change = attribute_template(&mut input);
        views(&mut t);
        if let Ok(v) = change.view_input() {
            let change: Vec<_> = v.entries().into_iter().map(owned).collect();
            objects(&mut t, &change);
        } else {
            objects(&mut t, &[]);
        }
        record(input.rest());
    })
}

type Owned = (CK_ATTRIBUTE_TYPE, Option<Vec<u8>>);

fn owned((ty, v): (CK_ATTRIBUTE_TYPE, Option<&[u8]>)) -> Owned {
    (ty, v.map(<[u8]>::to_vec))
}

fn borrowed(t: &[Owned]) -> Vec<(CK_ATTRIBUTE_TYPE, Option<&[u8]>)> {
    t.iter().map(|(ty, v)| (*ty, v.as_deref())).collect()
}

/// The views, and what the policy and audit take from them.
fn views(t: &mut CTemplate) {
    let null_with_len = t
        .entries()
        .iter()
        .any(|(_, v)| matches!(v, Buf::Null(n) if *n != 0));
    let count = t.entries().len();
    match t.view_input() {
        Ok(v) => {
            assert!(
                !null_with_len,
                "Template::input took a NULL value with a length"
            );
            let entries = v.entries();
            assert!(entries.len() <= count);
            assert!(entries.iter().all(|(_, v)| v.is_some()));
            let _ = (v.bool_value(CKA_TOKEN), v.ulong_value(CKA_CLASS));
            if let Some(info) = KeyInfo::from_template(&v) {
                if let Some(label) = &info.label {
                    label_text(label);
                }
            }
            let strict = SlotPolicy {
                require_non_extractable: true,
                ..SlotPolicy::default()
            };
            let _ = strict.weakens_key(&v);
            for kind in [
                NewObject::FromTemplate,
                NewObject::SecretKey,
                NewObject::PrivateKey,
            ] {
                if let Ok(extra) = strict.protect_new_key("C_CreateObject", 0, kind, &v) {
                    let mut storage = Vec::new();
                    let with = v.with_extra(extra, &mut storage);
                    assert_eq!(with.len() as usize, entries.len() + extra.len());
                }
            }
        }
        Err(e) => assert!(
            matches!(
                e,
                Error::ArgumentsBad | Error::Backend(CKR_ATTRIBUTE_VALUE_INVALID)
            ),
            "{e:?}"
        ),
    }
    if let Ok(v) = t.view() {
        // What C_GetAttributeValue's answers do to the caller's template.
        let _ = v.entries();
        let _ = v.value(CKA_LABEL);
    }
}

/// A label in both audit formats: one line in syslog, valid JSON that gives it back.
fn label_text(label: &str) {
    let mut kv = KeyValue::default();
    kv.text("label", label);
    assert!(
        !kv.text.chars().any(char::is_control),
        "a label put a control character into a syslog record: {:?}",
        kv.text
    );
    let mut json = JsonMembers::default();
    json.text("label", label);
    let parsed: serde_json::Value =
        serde_json::from_str(&format!("{{{}}}", json.0)).expect("a label made invalid JSON");
    assert_eq!(parsed["label"].as_str(), Some(label));
}

/// The soft token's objects made from the template, as each call would make them.
fn objects(t: &mut CTemplate, change: &[Owned]) {
    for o in made(t, change) {
        answer(t, &o);
    }
}

/// The objects made, checked, changed.
fn made(t: &mut CTemplate, change: &[Owned]) -> Vec<Object> {
    let mut made = Vec::new();
    let Ok(v) = t.view_input() else {
        return made;
    };
    let given: Vec<Owned> = v.entries().into_iter().map(owned).collect();
    let given = borrowed(&given);
    let strict = SlotPolicy {
        require_non_extractable: true,
        ..SlotPolicy::default()
    };
    let value = vec![0x5a; 32];
    let cases: [(
        Option<CK_OBJECT_CLASS>,
        Option<CK_KEY_TYPE>,
        Origin,
        NewObject,
    ); 4] = [
        (None, None, Origin::Imported, NewObject::FromTemplate),
        (
            Some(CKO_SECRET_KEY),
            Some(CKK_AES),
            Origin::Generated(CKM_AES_KEY_GEN),
            NewObject::SecretKey,
        ),
        (
            Some(CKO_SECRET_KEY),
            Some(CKK_GENERIC_SECRET),
            Origin::Generated(CKM_GENERIC_SECRET_KEY_GEN),
            NewObject::SecretKey,
        ),
        (
            Some(CKO_SECRET_KEY),
            None,
            Origin::Imported,
            NewObject::SecretKey,
        ),
    ];
    for (class, key_type, origin, kind) in cases {
        let generated: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)] = match (class, origin) {
            (None, _) => &[],
            (Some(_), _) => &[(CKA_VALUE, value.clone())],
        };
        if let Ok(o) = Object::build(&given, class, key_type, origin, generated) {
            check_object(&o, origin);
            for copying in [false, true] {
                let mut c = o.clone();
                if c.change(&borrowed(change), copying).is_ok() {
                    check_object(&c, origin);
                    // Sensitivity only grows.
                    if o.flag(CKA_SENSITIVE) {
                        assert!(c.flag(CKA_SENSITIVE), "CKA_SENSITIVE went back to false");
                    }
                    if !o.flag(CKA_EXTRACTABLE) && o.get(CKA_EXTRACTABLE).is_some() {
                        assert!(
                            !c.flag(CKA_EXTRACTABLE),
                            "CKA_EXTRACTABLE went back to true"
                        );
                    }
                }
            }
            made.push(o);
        }
        // Under require_non_extractable, a key the soft token makes is not extractable and
        // is sensitive, or is not made.
        if let Ok(extra) = strict.protect_new_key("C_CreateObject", 0, kind, &v) {
            let mut storage = Vec::new();
            let with = v.with_extra(extra, &mut storage);
            let given: Vec<Owned> = with.entries().into_iter().map(owned).collect();
            if let Ok(o) = Object::build(&borrowed(&given), class, key_type, origin, generated) {
                if matches!(o.class(), Some(CKO_SECRET_KEY | CKO_PRIVATE_KEY)) {
                    assert!(
                        !o.flag(CKA_EXTRACTABLE) && o.flag(CKA_SENSITIVE),
                        "require_non_extractable let an extractable or non-sensitive key through"
                    );
                }
            }
        }
    }
    made
}

/// Rules every object the soft token makes keeps, and its store encoding.
fn check_object(o: &Object, origin: Origin) {
    assert!(o.class().is_some());
    for ty in [
        CKA_TOKEN,
        CKA_PRIVATE,
        CKA_MODIFIABLE,
        CKA_SENSITIVE,
        CKA_EXTRACTABLE,
    ] {
        if let Some(v) = o.get(ty) {
            assert_eq!(
                v.len(),
                1,
                "a CK_BBOOL attribute {ty:#x} of {} bytes",
                v.len()
            );
        }
    }
    if matches!(o.class(), Some(CKO_SECRET_KEY | CKO_PRIVATE_KEY)) {
        if o.flag(CKA_ALWAYS_SENSITIVE) {
            assert!(o.flag(CKA_SENSITIVE));
        }
        if o.flag(CKA_NEVER_EXTRACTABLE) {
            assert!(!o.flag(CKA_EXTRACTABLE));
        }
        if origin == Origin::Imported {
            assert!(!o.flag(CKA_LOCAL) && !o.flag(CKA_ALWAYS_SENSITIVE));
        }
        if o.flag(CKA_SENSITIVE) {
            for ty in [CKA_VALUE, CKA_PRIVATE_EXPONENT, CKA_PRIME_1] {
                assert!(!o.readable(ty), "a sensitive key's {ty:#x} is readable");
            }
        }
    }
    let _ = o.key_ref();
    let encoded = o.encode();
    let decoded = Object::decode(&encoded).expect("an encoded object decodes");
    assert_eq!(decoded.attrs, o.attrs);
}

/// C_GetAttributeValue's answers, written into the template: each length is the value's or
/// CK_UNAVAILABLE_INFORMATION, and a value is written only where it fits.
fn answer(t: &mut CTemplate, o: &Object) {
    let values: Vec<Option<Vec<u8>>> = t
        .entries()
        .iter()
        .map(|(ty, _)| {
            o.readable(*ty)
                .then(|| o.get(*ty).map(<[u8]>::to_vec))
                .flatten()
        })
        .collect();
    let capacity: Vec<Option<usize>> = t
        .entries()
        .iter()
        .map(|(_, v)| match v {
            Buf::Bytes(b) => Some(b.len()),
            Buf::Null(_) => None,
        })
        .collect();
    let Ok(mut v) = t.view() else { return };
    for (i, value) in values.iter().enumerate() {
        let _ = v.answer(i, value.as_deref());
    }
    for (i, len) in t.lens().into_iter().enumerate() {
        match (&values[i], capacity[i]) {
            (None, _) => assert_eq!(len, CK_UNAVAILABLE_INFORMATION),
            (Some(value), None) => assert_eq!(len, value.len() as CK_ULONG),
            (Some(value), Some(cap)) if cap < value.len() => {
                assert_eq!(len, CK_UNAVAILABLE_INFORMATION)
            }
            (Some(value), Some(_)) => {
                assert_eq!(len, value.len() as CK_ULONG);
                match &t.entries()[i].1 {
                    Buf::Bytes(b) => assert_eq!(&b[..value.len()], &value[..]),
                    Buf::Null(_) => unreachable!(),
                }
            }
        }
    }
}

/// A store record: whatever decodes must encode and decode to the same object.
fn record(bytes: &[u8]) {
    if let Some(o) = Object::decode(bytes) {
        let again = Object::decode(&o.encode()).expect("an encoded object decodes");
        assert_eq!(again.attrs, o.attrs);
    }
}
