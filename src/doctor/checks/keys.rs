//! The key checks: the keys Vault will look up by label are there with the right class and
//! type, or Vault can generate them; and the temporary session keys the round trips use when
//! a key does not exist yet.

use pkcs11_sys::*;

use super::{at, Dialogue, Step, O, S};
use crate::backend::Backend;
use crate::doctor::seal::{mechanism_label, uses_hmac};
use crate::ffi::args::AttributeQuery;
use crate::ffi::owned::{OwnedMechanism, OwnedTemplate};
use crate::names::rv_name;

/// What kind of key a mechanism needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Aes,
    Rsa,
    Hmac,
}

impl Need {
    pub(super) fn of(m: CK_MECHANISM_TYPE) -> Need {
        match m {
            CKM_RSA_PKCS_OAEP | CKM_RSA_PKCS => Need::Rsa,
            _ => Need::Aes,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Need::Aes => "an AES secret key",
            Need::Rsa => "an RSA private and public key",
            Need::Hmac => "a generic secret key (CKK_GENERIC_SECRET)",
        }
    }

    fn generation(self) -> CK_MECHANISM_TYPE {
        match self {
            Need::Aes => CKM_AES_KEY_GEN,
            Need::Rsa => CKM_RSA_PKCS_KEY_PAIR_GEN,
            Need::Hmac => CKM_GENERIC_SECRET_KEY_GEN,
        }
    }

    /// The pkcs11-tool arguments that make such a key.
    fn keygen_args(self) -> &'static str {
        match self {
            Need::Aes => "--keygen --key-type AES:32",
            Need::Rsa => "--keypairgen --key-type rsa:2048",
            Need::Hmac => "--keygen --key-type GENERIC:32",
        }
    }
}

/// A key for the round trips: the one found, or a temporary session key the doctor made (and
/// only then destroys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Key {
    /// The secret key, or the RSA public key.
    pub encrypt: O,
    /// The secret key, or the RSA private key.
    pub decrypt: O,
    pub temporary: bool,
}

impl Key {
    fn secret(handle: O, temporary: bool) -> Key {
        Key {
            encrypt: handle,
            decrypt: handle,
            temporary,
        }
    }
}

/// An object found by label.
#[derive(Debug, Clone)]
struct Object {
    handle: O,
    class: Option<CK_ULONG>,
    key_type: Option<CK_ULONG>,
}

/// One key the seal names.
struct Wanted<'a> {
    /// The check's name (`key`, `default-key`, ...).
    check: &'static str,
    /// The stanza key that names it (`key_label`, ...).
    setting: &'static str,
    label: &'a str,
    id: Option<&'a [u8]>,
    need: Need,
    /// Whether `generate_key` applies (not to the keys of older entries).
    may_generate: bool,
}

impl Dialogue<'_> {
    /// The key checks for `mechanism`: `key`, `default-key`, and with CBC `hmac-key` and
    /// `hmac-default-key`. Returns the keys for the round trips.
    pub(super) fn keys(
        &mut self,
        slot: CK_SLOT_ID,
        mechanism: CK_MECHANISM_TYPE,
    ) -> (Option<Key>, Option<Key>) {
        let s = self.settings().clone();
        let need = Need::of(mechanism);
        let key = self.key(
            slot,
            Wanted {
                check: "key",
                setting: "key_label",
                label: &s.key_label,
                id: s.key_id.as_deref(),
                need,
                may_generate: true,
            },
        );
        if let Some(d) = s.default_key_label.as_ref().filter(|d| **d != s.key_label) {
            self.key(
                slot,
                Wanted {
                    check: "default-key",
                    setting: "default_key_label",
                    label: d,
                    id: None,
                    need,
                    may_generate: false,
                },
            );
        }
        if !uses_hmac(mechanism) {
            return (key, None);
        }
        let Some(h) = &s.hmac_key_label else {
            self.report.fail(
                "hmac-key",
                format!(
                    "{} seals with an HMAC key, but hmac_key_label is not set",
                    mechanism_label(mechanism)
                ),
                "set hmac_key_label (and generate_key = \"true\", or create a CKK_GENERIC_SECRET key)",
            );
            return (key, None);
        };
        let hmac = self.key(
            slot,
            Wanted {
                check: "hmac-key",
                setting: "hmac_key_label",
                label: h,
                id: s.hmac_key_id.as_deref(),
                need: Need::Hmac,
                may_generate: true,
            },
        );
        if let Some(d) = s.hmac_default_key_label.as_ref().filter(|d| *d != h) {
            self.key(
                slot,
                Wanted {
                    check: "hmac-default-key",
                    setting: "hmac_default_key_label",
                    label: d,
                    id: None,
                    need: Need::Hmac,
                    may_generate: false,
                },
            );
        }
        (key, hmac)
    }

    /// Objects labelled `label` (with `id`, when given), with their class and key type.
    fn find(&self, session: S, label: &str, id: Option<&[u8]>) -> Step<Vec<Object>> {
        let mut t = OwnedTemplate::new().bytes(CKA_LABEL, label.as_bytes());
        if let Some(id) = id {
            t = t.bytes(CKA_ID, id);
        }
        at(
            "C_FindObjectsInit",
            self.up.find_objects_init(session, t.view()),
        )?;
        let mut handles = [0 as O; 16];
        let mut count: CK_ULONG = 0;
        let found = self.up.find_objects(session, &mut handles, &mut count);
        let _ = self.up.find_objects_final(session);
        at("C_FindObjects", found)?;
        Ok(handles[..(count as usize).min(handles.len())]
            .iter()
            .map(|&handle| {
                let mut q = AttributeQuery::new(&[CKA_CLASS, CKA_KEY_TYPE], 8);
                // Objects without a key type (data objects) answer part of the query only.
                let _ = self.up.get_attribute_value(session, handle, q.template());
                Object {
                    handle,
                    class: q.ulong_value(0),
                    key_type: q.ulong_value(1),
                }
            })
            .collect())
    }

    /// A `key` check: the key labelled `label` is there with the right class and type, or
    /// (`may_generate` and generate_key) Vault can make it. Returns the key for the round trip;
    /// for a key Vault will generate, a temporary session key of the same kind.
    fn key(&mut self, slot: CK_SLOT_ID, w: Wanted<'_>) -> Option<Key> {
        let Wanted {
            check,
            setting,
            label,
            id,
            need,
            may_generate,
        } = w;
        let session = self.session?;
        let objects = match self.find(session, label, id) {
            Ok(o) => o,
            Err((f, e)) => {
                self.report.fail(
                    check,
                    format!("{setting} {label:?}: {f} returned {}", rv_name(e.rv())),
                    "see p11gate's log for the upstream's answer",
                );
                return None;
            }
        };
        let of = |class: CK_ULONG, kt: CK_ULONG| -> Vec<O> {
            objects
                .iter()
                .filter(|o| o.class == Some(class) && o.key_type == Some(kt))
                .map(|o| o.handle)
                .collect()
        };
        let with_id = if id.is_some() { " and its id" } else { "" };
        let (found, n) = match need {
            Need::Aes => {
                let k = of(CKO_SECRET_KEY, CKK_AES);
                (k.first().map(|&h| Key::secret(h, false)), k.len())
            }
            Need::Hmac => {
                let k = of(CKO_SECRET_KEY, CKK_GENERIC_SECRET);
                (k.first().map(|&h| Key::secret(h, false)), k.len())
            }
            Need::Rsa => {
                let private = of(CKO_PRIVATE_KEY, CKK_RSA);
                let public = of(CKO_PUBLIC_KEY, CKK_RSA);
                let n = private.len();
                match (private.first(), public.first()) {
                    (Some(&private), Some(&public)) => (
                        Some(Key {
                            encrypt: public,
                            decrypt: private,
                            temporary: false,
                        }),
                        n,
                    ),
                    (Some(_), None) => {
                        self.report.fail(
                            check,
                            format!("{setting} {label:?}: the RSA private key is there, its public key is not"),
                            "Vault encrypts with the public key: import it with the same label",
                        );
                        return None;
                    }
                    (None, Some(_)) => {
                        self.report.fail(
                            check,
                            format!("{setting} {label:?}: only an RSA public key has this label"),
                            "Vault decrypts with the private key: it must be on the token with the same label",
                        );
                        return None;
                    }
                    (None, None) => (None, 0),
                }
            }
        };
        if let Some(key) = found {
            let what = match need {
                Need::Aes => "AES secret key found".to_string(),
                Need::Hmac => "generic secret (HMAC) key found".to_string(),
                Need::Rsa => {
                    let mut q = AttributeQuery::new(&[CKA_MODULUS], 1024);
                    let bits = self
                        .up
                        .get_attribute_value(session, key.encrypt, q.template())
                        .ok()
                        .and_then(|_| q.value(0).map(|v| v.len() * 8));
                    match bits {
                        Some(b) => format!("RSA private and public key found ({b}-bit)"),
                        None => "RSA private and public key found".to_string(),
                    }
                }
            };
            if n > 1 {
                self.report.warn(
                    check,
                    format!("{setting} {label:?}: {n} keys have this label{with_id}"),
                    "Vault expects one: give the others another label",
                );
            } else {
                self.report
                    .pass(check, format!("{setting} {label:?}: {what}"));
            }
            return Some(key);
        }
        if let Some(other) = objects.first() {
            let class = other
                .class
                .and_then(crate::names::class_name)
                .unwrap_or("object");
            let kt = other
                .key_type
                .map(key_type_name)
                .map_or(String::new(), |k| format!(" {k}"));
            let extra = if need == Need::Hmac && other.class == Some(CKO_SECRET_KEY) {
                " (C_SignInit would answer CKR_KEY_TYPE_INCONSISTENT)"
            } else {
                ""
            };
            self.report.fail(
                check,
                format!(
                    "{setting} {label:?} is a {class}{kt}; Vault needs {} here{extra}",
                    need.what()
                ),
                format!(
                    "give Vault's key another label, or create {} under this one",
                    need.what()
                ),
            );
            return None;
        }
        let generate = may_generate && self.settings().generate_key;
        if !generate {
            let hint = if may_generate {
                format!(
                    "set generate_key = \"true\" for Vault to create it, or create it: pkcs11-tool --module {} --login {} --label {label:?}",
                    self.settings().lib.display(),
                    need.keygen_args()
                )
            } else {
                format!("{setting} names the key of entries sealed before a rotation: keep that key on the token, or unset {setting}")
            };
            self.report.fail(
                check,
                format!(
                    "{setting} {label:?}: no key with this label{with_id} on token {:?}",
                    self.token_label
                ),
                hint,
            );
            return None;
        }
        self.will_generate(check, setting, label, need, slot, session)
    }

    /// generate_key with no key yet: Vault will open a read-write session and generate it;
    /// check that it can, and make a temporary session key for the round trip.
    fn will_generate(
        &mut self,
        check: &'static str,
        setting: &str,
        label: &str,
        need: Need,
        slot: CK_SLOT_ID,
        session: S,
    ) -> Option<Key> {
        let gen = need.generation();
        if !self.mechanisms.contains(&gen) {
            let (detail, hint) = self.absent(slot, gen, "mechanism");
            self.report.fail(
                check,
                format!("{setting} {label:?}: not found, and Vault cannot generate it: {detail}"),
                hint,
            );
            return None;
        }
        match self
            .up
            .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        {
            Ok(rw) => {
                let _ = self.up.close_session(rw);
            }
            Err(e) => {
                self.report.fail(
                    check,
                    format!(
                        "{setting} {label:?}: not found, and Vault cannot generate it: a read-write session is refused ({})",
                        rv_name(e.rv())
                    ),
                    "the token (or its p11gate slot, read_only) is read-only: create the key elsewhere and import it, or allow writes",
                );
                return None;
            }
        }
        match self.temporary_key(session, need) {
            Ok(k) => {
                self.report.pass(
                    check,
                    format!(
                        "{setting} {label:?}: not found, and Vault will generate it (generate_key = true): {} is allowed and a read-write session opens",
                        mechanism_label(gen)
                    ),
                );
                Some(k)
            }
            Err((f, e)) => {
                self.report.fail(
                    check,
                    format!(
                        "{setting} {label:?}: not found, and a key like the one Vault would generate cannot be made: {f} returned {}",
                        rv_name(e.rv())
                    ),
                    "Vault's generate_key would fail the same way: create the key yourself, or check the token and p11gate's key policy",
                );
                None
            }
        }
    }

    /// A session key (never stored on the token) of the kind Vault generates.
    fn temporary_key(&self, session: S, need: Need) -> Step<Key> {
        let common = |t: OwnedTemplate| {
            t.bool(CKA_TOKEN, false)
                .bool(CKA_SENSITIVE, true)
                .bool(CKA_EXTRACTABLE, false)
                .bytes(CKA_LABEL, b"p11gate-doctor-temporary")
        };
        match need {
            Need::Aes | Need::Hmac => {
                let (kt, ops) = match need {
                    Need::Aes => (CKK_AES, [CKA_ENCRYPT, CKA_DECRYPT]),
                    _ => (CKK_GENERIC_SECRET, [CKA_SIGN, CKA_VERIFY]),
                };
                let mut t = common(OwnedTemplate::new())
                    .ulong(CKA_CLASS, CKO_SECRET_KEY)
                    .ulong(CKA_KEY_TYPE, kt)
                    .ulong(CKA_VALUE_LEN, 32)
                    .bool(ops[0], true)
                    .bool(ops[1], true);
                let mut m = OwnedMechanism::plain(need.generation());
                let mut key = CK_INVALID_HANDLE;
                at(
                    "C_GenerateKey",
                    self.up.generate_key(session, m.view(), t.view(), &mut key),
                )?;
                Ok(Key::secret(key, true))
            }
            Need::Rsa => {
                let mut public = OwnedTemplate::new()
                    .ulong(CKA_CLASS, CKO_PUBLIC_KEY)
                    .ulong(CKA_KEY_TYPE, CKK_RSA)
                    .bool(CKA_TOKEN, false)
                    .bool(CKA_ENCRYPT, true)
                    .ulong(CKA_MODULUS_BITS, 2048)
                    .bytes(CKA_PUBLIC_EXPONENT, &[1, 0, 1])
                    .bytes(CKA_LABEL, b"p11gate-doctor-temporary");
                let mut private = common(OwnedTemplate::new())
                    .ulong(CKA_CLASS, CKO_PRIVATE_KEY)
                    .ulong(CKA_KEY_TYPE, CKK_RSA)
                    .bool(CKA_DECRYPT, true);
                let mut m = OwnedMechanism::plain(CKM_RSA_PKCS_KEY_PAIR_GEN);
                let (mut pub_key, mut priv_key) = (CK_INVALID_HANDLE, CK_INVALID_HANDLE);
                at(
                    "C_GenerateKeyPair",
                    self.up.generate_key_pair(
                        session,
                        m.view(),
                        public.view(),
                        private.view(),
                        &mut pub_key,
                        &mut priv_key,
                    ),
                )?;
                Ok(Key {
                    encrypt: pub_key,
                    decrypt: priv_key,
                    temporary: true,
                })
            }
        }
    }

    /// Destroys a temporary key of the doctor's (it would vanish with the session anyway);
    /// a key that was found is never touched.
    pub(super) fn forget_temporary(&self, session: S, key: Key) {
        if !key.temporary {
            return;
        }
        let _ = self.up.destroy_object(session, key.encrypt);
        if key.decrypt != key.encrypt {
            let _ = self.up.destroy_object(session, key.decrypt);
        }
    }
}

/// "CKK_AES" for messages.
fn key_type_name(kt: CK_KEY_TYPE) -> String {
    match kt {
        CKK_AES => "CKK_AES".into(),
        CKK_RSA => "CKK_RSA".into(),
        CKK_GENERIC_SECRET => "CKK_GENERIC_SECRET".into(),
        CKK_EC => "CKK_EC".into(),
        CKK_DES3 => "CKK_DES3".into(),
        other => format!("key type {other:#x}"),
    }
}
