//! What a `seal "pkcs11"` stanza asks for, as Vault reads it: the stanza's values, each
//! overridden by its `VAULT_HSM_*` environment variable, interpreted into [`Settings`].

use std::path::PathBuf;

use pkcs11_sys::*;
use zeroize::Zeroizing;

use super::hcl::Stanza;
use crate::names::mechanism_name;
use crate::policy::parse_mechanism;

/// The stanza keys Vault reads, each also settable as `VAULT_HSM_<KEY>`.
pub const KEYS: &[&str] = &[
    "lib",
    "slot",
    "token_label",
    "pin",
    "key_label",
    "default_key_label",
    "key_id",
    "hmac_key_label",
    "hmac_default_key_label",
    "hmac_key_id",
    "hmac_mechanism",
    "mechanism",
    "generate_key",
    "regenerate_key",
    "force_rw_session",
    "max_parallel",
    "rsa_encrypt_local",
    "rsa_oaep_hash",
];

/// Keys every seal stanza may have (seal migration and multi-seal), with no `VAULT_HSM_` form.
const SEAL_KEYS: &[&str] = &["disabled", "name", "priority"];

/// The mechanisms Vault's seal can use, in the order it tries them when `mechanism` is unset.
pub const VAULT_MECHANISMS: &[CK_MECHANISM_TYPE] = &[
    CKM_AES_CBC_PAD,
    CKM_AES_CBC,
    CKM_AES_GCM,
    CKM_RSA_PKCS_OAEP,
    CKM_RSA_PKCS,
];

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The stanza, at this line (0 in a JSON file).
    File(usize),
    /// This environment variable.
    Env(String),
}

/// The stanza's values after the environment's overrides.
#[derive(Debug, Clone, Default)]
pub struct Seal {
    values: Vec<(&'static str, String, Origin)>,
    /// Keys Vault does not know (a typo Vault would silently ignore), with their lines.
    pub unknown: Vec<(String, usize)>,
    /// The `VAULT_HSM_*` variables that were applied.
    pub from_env: Vec<String>,
}

impl Seal {
    /// Reads `stanza` (None: the seal comes from the environment alone) with the overrides.
    pub fn read(stanza: Option<&Stanza>, getenv: &dyn Fn(&str) -> Option<String>) -> Seal {
        let mut seal = Seal::default();
        if let Some(stanza) = stanza {
            for e in &stanza.entries {
                match KEYS.iter().find(|k| **k == e.key) {
                    Some(k) => {
                        seal.values.retain(|(key, _, _)| key != k);
                        seal.values.push((k, e.value.clone(), Origin::File(e.line)));
                    }
                    None if SEAL_KEYS.contains(&e.key.as_str()) => {}
                    None => seal.unknown.push((e.key.clone(), e.line)),
                }
            }
        }
        for k in KEYS {
            let var = env_name(k);
            if let Some(v) = getenv(&var).filter(|v| !v.is_empty()) {
                seal.values.retain(|(key, _, _)| key != k);
                seal.values.push((k, v, Origin::Env(var.clone())));
                seal.from_env.push(var);
            }
        }
        seal
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entry(key).map(|(_, v, _)| v.as_str())
    }

    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.entry(key).map(|(_, _, o)| o)
    }

    fn entry(&self, key: &str) -> Option<&(&'static str, String, Origin)> {
        self.values.iter().find(|(k, _, _)| *k == key)
    }
}

/// `VAULT_HSM_<KEY>`.
pub fn env_name(key: &str) -> String {
    format!("VAULT_HSM_{}", key.to_ascii_uppercase())
}

/// The RSA-OAEP hash Vault uses (`rsa_oaep_hash`, default sha256), with its MGF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OaepHash {
    pub name: &'static str,
    pub hash: CK_MECHANISM_TYPE,
    pub mgf: CK_RSA_PKCS_MGF_TYPE,
}

const OAEP_HASHES: &[OaepHash] = &[
    OaepHash {
        name: "sha1",
        hash: CKM_SHA_1,
        mgf: CKG_MGF1_SHA1,
    },
    OaepHash {
        name: "sha224",
        hash: CKM_SHA224,
        mgf: CKG_MGF1_SHA224,
    },
    OaepHash {
        name: "sha256",
        hash: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
    },
    OaepHash {
        name: "sha384",
        hash: CKM_SHA384,
        mgf: CKG_MGF1_SHA384,
    },
    OaepHash {
        name: "sha512",
        hash: CKM_SHA512,
        mgf: CKG_MGF1_SHA512,
    },
];

impl OaepHash {
    /// "SHA-256" for messages.
    pub fn display(&self) -> String {
        match self.name {
            "sha1" => "SHA-1".into(),
            n => format!("SHA-{}", &n[3..]),
        }
    }
}

/// Where the PIN comes from. The PIN itself is read only when it is used, and never printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// Written in the stanza (line) or in `VAULT_HSM_PIN` (None).
    Literal(Option<usize>),
    /// `env://VAR`.
    Env(String),
    /// `file://PATH`.
    File(PathBuf),
    /// No `pin` and no `VAULT_HSM_PIN`.
    Missing,
}

impl PinSource {
    /// How messages name it: `env://VAULT_HSM_PIN`, `file:///etc/vault.d/pin`, ...
    pub fn describe(&self) -> String {
        match self {
            PinSource::Literal(Some(line)) => format!("pin of the stanza (line {line})"),
            PinSource::Literal(None) => "env://VAULT_HSM_PIN".into(),
            PinSource::Env(var) => format!("env://{var}"),
            PinSource::File(p) => format!("file://{}", p.display()),
            PinSource::Missing => "(none)".into(),
        }
    }
}

/// The PIN as Vault would send it.
pub fn read_pin(
    seal: &Seal,
    source: &PinSource,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Zeroizing<String>, String> {
    match source {
        PinSource::Literal(_) => Ok(Zeroizing::new(seal.get("pin").unwrap_or("").to_string())),
        PinSource::Env(var) => getenv(var)
            .map(Zeroizing::new)
            .ok_or_else(|| format!("pin = \"env://{var}\", but {var} is not set here")),
        PinSource::File(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("pin = \"file://{}\": {e}", path.display()))?,
            );
            Ok(Zeroizing::new(
                text.trim_end_matches(['\n', '\r']).to_string(),
            ))
        }
        PinSource::Missing => Err("no PIN: pin is not set and VAULT_HSM_PIN is empty".into()),
    }
}

/// The interpreted seal settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub lib: PathBuf,
    pub slot: Option<CK_SLOT_ID>,
    pub token_label: Option<String>,
    pub pin: PinSource,
    pub key_label: String,
    pub default_key_label: Option<String>,
    pub key_id: Option<Vec<u8>>,
    pub hmac_key_label: Option<String>,
    pub hmac_default_key_label: Option<String>,
    pub hmac_key_id: Option<Vec<u8>>,
    pub hmac_mechanism: CK_MECHANISM_TYPE,
    /// None: Vault picks the first available of [`VAULT_MECHANISMS`].
    pub mechanism: Option<CK_MECHANISM_TYPE>,
    pub generate_key: bool,
    pub force_rw_session: bool,
    pub rsa_encrypt_local: bool,
    pub oaep_hash: OaepHash,
}

/// Whether a mechanism seals with CBC and therefore needs the HMAC key.
pub fn uses_hmac(m: CK_MECHANISM_TYPE) -> bool {
    m == CKM_AES_CBC || m == CKM_AES_CBC_PAD
}

/// "CKM_AES_GCM (0x1087)".
pub fn mechanism_label(m: CK_MECHANISM_TYPE) -> String {
    match mechanism_name(m) {
        Some(n) => format!("{n} ({m:#06x})"),
        None => format!("{m:#06x}"),
    }
}

impl Settings {
    /// Interprets the values; every problem is listed (each is a reason Vault would not start).
    pub fn from_seal(seal: &Seal) -> Result<Settings, Vec<String>> {
        let mut problems = Vec::new();
        let text = |k: &str| seal.get(k).map(str::to_string).filter(|v| !v.is_empty());
        let boolean = |k: &str, problems: &mut Vec<String>| match seal.get(k) {
            None | Some("") => false,
            Some(v) => parse_bool(v).unwrap_or_else(|| {
                problems.push(format!(
                    "{k} = {v:?} is not a boolean (\"true\" or \"false\")"
                ));
                false
            }),
        };
        let lib = match text("lib") {
            Some(l) => PathBuf::from(l),
            None => {
                problems.push("lib is not set".into());
                PathBuf::new()
            }
        };
        let slot = match text("slot") {
            None => None,
            Some(s) => match parse_number(&s) {
                Some(n) => Some(n),
                None => {
                    problems.push(format!("slot = {s:?} is not a number"));
                    None
                }
            },
        };
        let token_label = text("token_label");
        if slot.is_none()
            && token_label.is_none()
            && !problems.iter().any(|p| p.starts_with("slot"))
        {
            problems.push("neither slot nor token_label is set".into());
        }
        let pin = match (seal.get("pin"), seal.origin("pin")) {
            (None | Some(""), _) => PinSource::Missing,
            (Some(p), origin) => {
                if let Some(var) = p.strip_prefix("env://") {
                    PinSource::Env(var.to_string())
                } else if let Some(path) = p.strip_prefix("file://") {
                    PinSource::File(PathBuf::from(path))
                } else {
                    match origin {
                        Some(Origin::File(line)) => PinSource::Literal(Some(*line)),
                        _ => PinSource::Literal(None),
                    }
                }
            }
        };
        let key_label = text("key_label").unwrap_or_else(|| {
            problems.push("key_label is not set".into());
            String::new()
        });
        let key_id_of = |k: &str, problems: &mut Vec<String>| {
            text(k).and_then(|v| match parse_key_id(&v) {
                Some(id) => Some(id),
                None => {
                    problems.push(format!("{k} = {v:?} is not a hexadecimal id (0x...)"));
                    None
                }
            })
        };
        let key_id = key_id_of("key_id", &mut problems);
        let hmac_key_id = key_id_of("hmac_key_id", &mut problems);
        let mechanism_of = |k: &str, problems: &mut Vec<String>| {
            text(k).and_then(|v| match parse_mechanism(&v) {
                Some(m) => Some(m),
                None => {
                    problems.push(format!(
                        "{k} = {v:?} is not a mechanism (0x1087, CKM_AES_GCM)"
                    ));
                    None
                }
            })
        };
        let mechanism = mechanism_of("mechanism", &mut problems);
        if let Some(m) = mechanism {
            if !VAULT_MECHANISMS.contains(&m) {
                problems.push(format!(
                    "mechanism {} is not one Vault's seal uses ({})",
                    mechanism_label(m),
                    VAULT_MECHANISMS
                        .iter()
                        .map(|m| format!("{m:#06x}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let hmac_mechanism =
            mechanism_of("hmac_mechanism", &mut problems).unwrap_or(CKM_SHA256_HMAC);
        let oaep_hash = match text("rsa_oaep_hash") {
            None => OAEP_HASHES[2],
            Some(h) => match OAEP_HASHES
                .iter()
                .find(|o| o.name == h.to_ascii_lowercase())
            {
                Some(o) => *o,
                None => {
                    problems.push(format!(
                        "rsa_oaep_hash = {h:?} is not one of sha1, sha224, sha256, sha384, sha512"
                    ));
                    OAEP_HASHES[2]
                }
            },
        };
        let generate_key = boolean("generate_key", &mut problems);
        let force_rw_session = boolean("force_rw_session", &mut problems);
        let rsa_encrypt_local = boolean("rsa_encrypt_local", &mut problems);
        boolean("regenerate_key", &mut problems);
        if let Some(m) = text("max_parallel") {
            if m.parse::<u32>().map_or(true, |n| n == 0) {
                problems.push(format!("max_parallel = {m:?} is not a number from 1"));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Settings {
            lib,
            slot,
            token_label,
            pin,
            key_label,
            default_key_label: text("default_key_label"),
            key_id,
            hmac_key_label: text("hmac_key_label"),
            hmac_default_key_label: text("hmac_default_key_label"),
            hmac_key_id,
            hmac_mechanism,
            mechanism,
            generate_key,
            force_rw_session,
            rsa_encrypt_local,
            oaep_hash,
        })
    }
}

/// Go's `strconv.ParseBool`, which Vault uses.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A decimal or `0x` hexadecimal number.
fn parse_number(v: &str) -> Option<CK_ULONG> {
    let v = v.trim();
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => CK_ULONG::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// A key id: `0x` and hex digits (Vault's form), else the string's own bytes.
fn parse_key_id(v: &str) -> Option<Vec<u8>> {
    let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) else {
        return Some(v.as_bytes().to_vec());
    };
    if hex.len() % 2 != 0 || hex.is_empty() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::hcl::seal_stanzas;

    fn settings(text: &str, env: &[(&str, &str)]) -> Result<(Seal, Settings), Vec<String>> {
        let stanzas = seal_stanzas(text).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let getenv = move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let seal = Seal::read(stanzas.first(), &getenv);
        Settings::from_seal(&seal).map(|s| (seal, s))
    }

    #[test]
    fn environment_overrides_the_stanza() {
        let (seal, s) = settings(
            "seal \"pkcs11\" {\n lib = \"/a.so\"\n token_label = \"t\"\n key_label = \"k\"\n pin = \"1234\"\n token_lable = \"x\"\n}\n",
            &[("VAULT_HSM_LIB", "/b.so"), ("VAULT_HSM_MECHANISM", "0x1087")],
        )
        .unwrap();
        assert_eq!(s.lib, PathBuf::from("/b.so"));
        assert_eq!(s.mechanism, Some(CKM_AES_GCM));
        assert_eq!(s.pin, PinSource::Literal(Some(5)));
        assert_eq!(seal.from_env, vec!["VAULT_HSM_LIB", "VAULT_HSM_MECHANISM"]);
        assert_eq!(seal.unknown, vec![("token_lable".to_string(), 6)]);
        assert_eq!(s.oaep_hash.name, "sha256");
        assert_eq!(s.hmac_mechanism, CKM_SHA256_HMAC);
        assert!(!s.generate_key);
    }

    #[test]
    fn pin_forms() {
        let base = "seal \"pkcs11\" {\n lib = \"/a.so\"\n slot = \"0x10\"\n key_label = \"k\"\n";
        let (_, s) = settings(&format!("{base} pin = \"env://MY_PIN\"\n}}\n"), &[]).unwrap();
        assert_eq!(s.pin, PinSource::Env("MY_PIN".into()));
        assert_eq!(s.slot, Some(16));
        let (_, s) = settings(&format!("{base} pin = \"file:///etc/p\"\n}}\n"), &[]).unwrap();
        assert_eq!(s.pin.describe(), "file:///etc/p");
        let (_, s) = settings(&format!("{base}}}\n"), &[("VAULT_HSM_PIN", "9")]).unwrap();
        assert_eq!(s.pin.describe(), "env://VAULT_HSM_PIN");
        let (_, s) = settings(&format!("{base}}}\n"), &[]).unwrap();
        assert_eq!(s.pin, PinSource::Missing);
    }

    #[test]
    fn every_problem_is_listed() {
        let problems = settings(
            "seal \"pkcs11\" {\n slot = \"x\"\n generate_key = \"yes\"\n mechanism = \"0x1234\"\n rsa_oaep_hash = \"md5\"\n key_id = \"0xZZ\"\n}\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            problems,
            vec![
                "lib is not set",
                "slot = \"x\" is not a number",
                "key_label is not set",
                "key_id = \"0xZZ\" is not a hexadecimal id (0x...)",
                "mechanism 0x1234 is not one Vault's seal uses (0x1085, 0x1082, 0x1087, 0x0009, 0x0001)",
                "rsa_oaep_hash = \"md5\" is not one of sha1, sha224, sha256, sha384, sha512",
                "generate_key = \"yes\" is not a boolean (\"true\" or \"false\")",
            ]
        );
    }

    #[test]
    fn key_ids_and_bools() {
        assert_eq!(parse_key_id("0x3334"), Some(vec![0x33, 0x34]));
        assert_eq!(parse_key_id("abc"), Some(b"abc".to_vec()));
        assert_eq!(parse_key_id("0x333"), None);
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(
            parse_number("2305843009213693953"),
            Some(2305843009213693953)
        );
    }
}
