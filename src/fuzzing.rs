//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay test
//! (`tests/fuzz_corpus.rs`): one function per target, taking the fuzzer's bytes.
//!
//! - [`config`]: TOML text (or `#env` lines) → `Config::parse` / `Config::discover` and what is
//!   derived from a configuration.
//! - [`template`]: a `CK_ATTRIBUTE` array → the template views of `ffi::args`, key policy, and
//!   the soft token's object rules and store encoding.
//! - [`mechanism`]: a `CK_MECHANISM` with any parameter block → policy, the soft token's
//!   parameter parsing, and the mechanisms themselves.
//! - [`calls`]: a sequence of PKCS#11 calls → the exported C functions, against soft tokens in
//!   a temporary directory (set up once per process).
//!
//! Besides "no panic" each harness checks properties that must hold (an output within the
//! length a length query gave, a store record that decodes to what was encoded, a protected
//! key that comes out sensitive). A panic that the C boundary catches counts as a crash:
//! `watch_panics` counts every panic, and each entry point fails when the count moves.
//!
//! Not part of the API: hidden from the docs, and free to change with the harnesses.

mod calls;
mod mechanism;
mod template;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use pkcs11_sys::*;

use crate::config::{env, Config, Source};
use crate::ffi::fuzz::{Buf, CMechanism, CTemplate, Param};

pub use calls::calls;
pub use mechanism::mechanism;
pub use template::template;

/// Runs target `name` (as `fuzz/` and `fuzz/corpus/` call it) on `data`; false for an unknown
/// name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "config" => config(data),
        "template" => template(data),
        "mechanism" => mechanism(data),
        "calls" => calls(data),
        _ => return false,
    }
    true
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Counts and reports every panic from now on (then calls whatever hook there was). The
/// library installs its own hook once, with its logger; this runs after that, so that the
/// library cannot replace the counting hook later. Also sends the library's log to stderr,
/// errors only.
pub(crate) fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        crate::logging::ensure_installed();
        // Errors only, to stderr: refusals are logged at warn, many per second here.
        crate::logging::configure(&crate::config::LogConfig {
            level: Some(crate::config::LogLevel::Error),
            target: Some(crate::config::LogTarget::Stderr),
        });
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            eprintln!("p11gate fuzzing: panic {info}");
            previous(info);
        }));
    });
}

/// How many panics there have been since `watch_panics`.
pub(crate) fn panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// Runs `body`, then fails if any panic happened meanwhile, even one that was caught (the C
/// boundary answers CKR_GENERAL_ERROR for those, which would otherwise go unnoticed).
fn no_panic(target: &str, body: impl FnOnce()) {
    watch_panics();
    let before = panics();
    body();
    let after = panics();
    assert_eq!(
        before, after,
        "{target}: a panic was caught inside p11gate (reported above)"
    );
}

/// The fuzzer's bytes, read front to back; reads past the end give zeros.
#[derive(Debug)]
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub(crate) fn bool(&mut self) -> bool {
        self.byte() & 1 == 1
    }

    /// Eight bytes, little-endian.
    pub(crate) fn ulong(&mut self) -> CK_ULONG {
        let mut b = [0u8; 8];
        let taken = self.bytes(8);
        b[..taken.len()].copy_from_slice(taken);
        CK_ULONG::from_le_bytes(b)
    }

    /// Up to `n` bytes (fewer at the end).
    pub(crate) fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub(crate) fn pick<T: Copy>(&mut self, table: &[T]) -> T {
        table[self.byte() as usize % table.len()]
    }

    /// A byte count for real buffers: mostly small, sometimes around the block and key sizes
    /// and a few kilobytes.
    pub(crate) fn size(&mut self) -> usize {
        match self.byte() {
            b @ 0..=0xEF => b as usize,
            b => [
                255, 256, 257, 511, 512, 1024, 4095, 4096, 4097, 8192, 15, 16, 17, 31, 32, 33,
            ][(b - 0xF0) as usize],
        }
    }

    /// A length that goes with a NULL pointer or a count: anything, edge values likely.
    pub(crate) fn length(&mut self) -> CK_ULONG {
        match self.byte() {
            b @ 0..=0xEF => b as CK_ULONG,
            0xF0 => u32::MAX as CK_ULONG,
            0xF1 => 1 << 63,
            0xF2 => CK_ULONG::MAX,
            0xF3 => isize::MAX as CK_ULONG,
            0xF4 => isize::MAX as CK_ULONG + 1,
            0xF5 => CK_ULONG::MAX / 8 + 1,
            0xF6 => CK_ULONG::MAX / 24 + 1,
            _ => self.ulong(),
        }
    }

    /// A CK_ULONG value: small numbers (classes, key types, sizes), values that matter to
    /// p11gate, or any.
    pub(crate) fn ulong_value(&mut self) -> CK_ULONG {
        const INTERESTING: &[CK_ULONG] = &[
            128,
            256,
            512,
            1024,
            2047,
            2048,
            3072,
            4096,
            4097,
            8192,
            CKM_AES_KEY_GEN,
            CKM_GENERIC_SECRET_KEY_GEN,
            CKM_RSA_PKCS_KEY_PAIR_GEN,
            CKM_EC_KEY_PAIR_GEN,
            CK_UNAVAILABLE_INFORMATION,
            1 << 63,
            u32::MAX as CK_ULONG,
            CKO_VENDOR_DEFINED,
            CKK_VENDOR_DEFINED,
            65537,
        ];
        match self.byte() {
            b @ 0..=0xBF => b as CK_ULONG,
            0xFF => self.ulong(),
            b => INTERESTING[(b - 0xC0) as usize % INTERESTING.len()],
        }
    }

    /// An input value: bytes of this input, or NULL with some length.
    pub(crate) fn buf(&mut self) -> Buf {
        match self.byte() % 4 {
            0 | 3 => {
                let n = self.size();
                Buf::Bytes(self.bytes(n).to_vec())
            }
            1 => Buf::Null(0),
            _ => Buf::Null(self.length()),
        }
    }
}

/// Attribute types the harnesses pick from (anything else comes as a raw number).
const ATTRIBUTES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_LABEL,
    CKA_APPLICATION,
    CKA_VALUE,
    CKA_OBJECT_ID,
    CKA_CERTIFICATE_TYPE,
    CKA_TRUSTED,
    CKA_KEY_TYPE,
    CKA_SUBJECT,
    CKA_ID,
    CKA_SENSITIVE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_SIGN,
    CKA_SIGN_RECOVER,
    CKA_VERIFY,
    CKA_VERIFY_RECOVER,
    CKA_DERIVE,
    CKA_START_DATE,
    CKA_END_DATE,
    CKA_MODULUS,
    CKA_MODULUS_BITS,
    CKA_PUBLIC_EXPONENT,
    CKA_PRIVATE_EXPONENT,
    CKA_PRIME_1,
    CKA_PRIME_2,
    CKA_EXPONENT_1,
    CKA_EXPONENT_2,
    CKA_COEFFICIENT,
    CKA_VALUE_LEN,
    CKA_EXTRACTABLE,
    CKA_LOCAL,
    CKA_NEVER_EXTRACTABLE,
    CKA_ALWAYS_SENSITIVE,
    CKA_KEY_GEN_MECHANISM,
    CKA_MODIFIABLE,
    CKA_COPYABLE,
    CKA_DESTROYABLE,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
    CKA_ALWAYS_AUTHENTICATE,
    CKA_WRAP_WITH_TRUSTED,
    CKA_WRAP_TEMPLATE,
    CKA_ALLOWED_MECHANISMS,
    CKA_VENDOR_DEFINED,
];

/// DER OIDs of the curves the soft token knows.
pub(crate) const OID_P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
pub(crate) const OID_P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

/// Key material the harnesses offer as attribute values, so that templates can describe real
/// keys, and that the mechanism harness uses. Fixed (an RSA-2048 key, P-256 and P-384 keys made
/// once with the soft token's own key generation): an input must do the same every time it runs,
/// or a crash found once would not show again.
#[derive(Debug)]
pub(crate) struct Material {
    pub(crate) rsa_n: Vec<u8>,
    pub(crate) rsa_e: Vec<u8>,
    pub(crate) rsa_d: Vec<u8>,
    pub(crate) rsa_p: Vec<u8>,
    pub(crate) rsa_q: Vec<u8>,
    pub(crate) p256_point: Vec<u8>,
    pub(crate) p256_value: Vec<u8>,
    pub(crate) values: Vec<Vec<u8>>,
}

const RSA_N: &str = concat!(
    "baf19843f572daeb373a203da763eed87ba4eebbd7d5cb3ba8e7a39c9bfc548eb1c4ec8e4ebcce0c",
    "68d19a6fc49e2e671e88babc76e38a372a3470219f5194827303466617ddc5ceb5613ac4953f045a",
    "6ef4fb2394a163ef7897c6cd04ec2b619c447cfeacc67bf694c7ddc827db6a0c4b08ec25f9abfe8d",
    "1c4b5089284e5588ec87bc68e4dd737e58b20c66ca6598250d9208550764313d9ff928da2f3e2033",
    "c105777ee5b70ec41e241ff2148ceb4f83de3ffe3dbfe5d1772529433bba785c33e28dccc6a52fe2",
    "4d6707c64024e0394ced147cc0f1de85fa1e5b41f4b6056c2a139d2c6fce727f8ba5be57a35f2135",
    "c513cee3e9edb646650929e5b4fb0c27",
);
const RSA_D: &str = concat!(
    "974a5a3df570043783b468cf3c9ea57751694343860321bca08f065c01e90dcd8594a714ec27e461",
    "2a9b26eef92242cf756896275bd7fdcd733c88dacd02cabb5fb4f0ce42d659f555d8e024a3dc21fb",
    "c5fc411aa478905607345dd12200b783016273fdef799a6d0e2f4a0f68222c0ad2d6dfb643feabbd",
    "2b7ed02890140527ad63b87cd86dd789d98a03ce3f05e45cbd47be6a6082a827e383f1c3d28c518e",
    "3ecfce88b6766946ee8ab66dd85b975d2d8889ecff066b40e70d806867c99527074c2a9b16b824be",
    "768a6740d11958775ae1b6b19d2c06025e2306cc527becd4f0913348701c00b4b240ac5e96c8b27d",
    "4b4151bc6f9e6cf448857277d18e1211",
);
const RSA_P: &str = concat!(
    "edbf3ff5e35841773b2df046d15a68bd55a8bdb99ddbf65ba10a0380d8c6049fbd15cdeff13a458a",
    "ecf6d433dc115f57e727744f03174507b702533f8477e842dd89a07acf989f9607440df5f5091310",
    "bfcbb6d0e1d28507906e0f289f91d1ec1dc5d7f474604c8251716649a6f13ceec7475af1ad032de1",
    "3d926c3c9c38b3f3",
);
const RSA_Q: &str = concat!(
    "c94bd75f56616903ef21c103aa3680d1c0f1d1209da56b3984020320ebe4f32f76949352f1c0060b",
    "19041c0ae9de19a82ddfdaba10bc8fa5965333d14df84666cb614e83c7b654f97acfb4c42844bbf1",
    "628b355c9e0a6558aac8eb30e8e7d9df9268af587f77d626d6ba889d75b5861b9ea1c52bee1c5eee",
    "1c3a7f9f0e9837fd",
);
const P256_POINT: &str = concat!(
    "0441047e15e76045a4f45d4d264a2d28c3ab3c7e0aefce1212dc8505a882fca7d8c2f083cbb1d842",
    "730e1166d502398809f7c333c7a374512566e13bc4009e47622131",
);
const P256_VALUE: &str = "12347cceff35d403456077f61225d6cc208dfe4b0dc6f666cbb13552b8e78d16";
const P384_POINT: &str = concat!(
    "046104e012b05485ef3997a66c5f9cee1291deb6926dff57c95c996edd5b5ee36a69131d2a24cefd",
    "6b8f44320cf65a34fb7d7910416ee395471428fce449d86c88b09da38237a1ea5385372316754753",
    "39a5f345d7563efe28d480c6a644e845fe8a40",
);
const P384_VALUE: &str = concat!(
    "388634a9e1ed36d95377b9b2a16230bffd290c7b8c10abe228eb4f243e676480d5a75992fe5ef9c9",
    "e647b4fa6d10d2e7",
);

fn from_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

pub(crate) fn material() -> &'static Material {
    static MATERIAL: once_cell::sync::OnceCell<Material> = once_cell::sync::OnceCell::new();
    MATERIAL.get_or_init(|| {
        let m = Material {
            rsa_n: from_hex(RSA_N),
            rsa_e: vec![1, 0, 1],
            rsa_d: from_hex(RSA_D),
            rsa_p: from_hex(RSA_P),
            rsa_q: from_hex(RSA_Q),
            p256_point: from_hex(P256_POINT),
            p256_value: from_hex(P256_VALUE),
            values: Vec::new(),
        };
        let values = vec![
            OID_P256.to_vec(),
            OID_P384.to_vec(),
            vec![0x42; 16],
            vec![0x42; 24],
            vec![0x42; 32],
            m.rsa_e.clone(),
            m.rsa_n.clone(),
            m.rsa_d.clone(),
            m.rsa_p.clone(),
            m.rsa_q.clone(),
            m.p256_point.clone(),
            m.p256_value.clone(),
            from_hex(P384_POINT),
            from_hex(P384_VALUE),
            b"fuzz-label".to_vec(),
        ];
        Material { values, ..m }
    })
}

/// An attribute type: one of [`ATTRIBUTES`], a vendor-defined one, or any number.
pub(crate) fn attribute_type(input: &mut Input<'_>) -> CK_ATTRIBUTE_TYPE {
    match input.byte() {
        0xFF => input.ulong(),
        0xFE => CKA_VENDOR_DEFINED | input.byte() as CK_ULONG,
        b => ATTRIBUTES[b as usize % ATTRIBUTES.len()],
    }
}

/// An attribute value: bytes, NULL with a length, a CK_ULONG, a CK_BBOOL, or key material.
pub(crate) fn attribute_value(input: &mut Input<'_>) -> Buf {
    match input.byte() % 5 {
        0 => {
            let n = input.size();
            Buf::Bytes(input.bytes(n).to_vec())
        }
        1 => Buf::Null(input.length()),
        2 => Buf::Bytes(input.ulong_value().to_ne_bytes().to_vec()),
        3 => Buf::Bytes(vec![input.byte()]),
        _ => {
            let values = &material().values;
            Buf::Bytes(values[input.byte() as usize % values.len()].clone())
        }
    }
}

/// A template: up to 11 attributes, or a NULL array with some count.
pub(crate) fn attribute_template(input: &mut Input<'_>) -> CTemplate {
    let b = input.byte();
    if b == 0xFF {
        return CTemplate::null(input.length());
    }
    let mut t = CTemplate::default();
    for _ in 0..b % 12 {
        let ty = attribute_type(input);
        let v = attribute_value(input);
        t.push(ty, v);
    }
    t
}

/// Mechanisms the harnesses pick from: the soft token's, and some it does not do.
pub(crate) const MECHANISMS: &[CK_MECHANISM_TYPE] = &[
    CKM_AES_KEY_GEN,
    CKM_AES_ECB,
    CKM_AES_CBC,
    CKM_AES_CBC_PAD,
    CKM_AES_GCM,
    CKM_AES_KEY_WRAP,
    CKM_AES_KEY_WRAP_PAD,
    CKM_GENERIC_SECRET_KEY_GEN,
    CKM_SHA_1_HMAC,
    CKM_SHA256_HMAC,
    CKM_SHA384_HMAC,
    CKM_SHA512_HMAC,
    CKM_SHA_1,
    CKM_SHA256,
    CKM_SHA384,
    CKM_SHA512,
    CKM_RSA_PKCS_KEY_PAIR_GEN,
    CKM_RSA_PKCS,
    CKM_RSA_PKCS_OAEP,
    CKM_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS,
    CKM_SHA384_RSA_PKCS,
    CKM_SHA512_RSA_PKCS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_SHA384_RSA_PKCS_PSS,
    CKM_SHA512_RSA_PKCS_PSS,
    CKM_EC_KEY_PAIR_GEN,
    CKM_ECDSA,
    CKM_ECDSA_SHA256,
    CKM_ECDSA_SHA384,
    CKM_ECDSA_SHA512,
    CKM_AES_CTR,
    CKM_AES_CMAC,
    CKM_ECDH1_DERIVE,
    CKM_SHA224,
    CKM_MD5,
];

const HASHES: &[CK_MECHANISM_TYPE] = &[
    CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512, CKM_MD5, 0,
];
const MGFS: &[CK_RSA_PKCS_MGF_TYPE] = &[
    CKG_MGF1_SHA1,
    CKG_MGF1_SHA224,
    CKG_MGF1_SHA256,
    CKG_MGF1_SHA384,
    CKG_MGF1_SHA512,
    0,
    6,
];

/// A mechanism type: one of [`MECHANISMS`] or any number.
pub(crate) fn mechanism_type(input: &mut Input<'_>) -> CK_MECHANISM_TYPE {
    match input.byte() {
        0xFF => input.ulong(),
        b => MECHANISMS[b as usize % MECHANISMS.len()],
    }
}

/// A mechanism with a parameter block of any shape: raw bytes, NULL with a length, a GCM,
/// OAEP or PSS structure with fuzzed fields, or the usual parameters for its type.
pub(crate) fn mechanism_of(input: &mut Input<'_>) -> CMechanism {
    let ty = mechanism_type(input);
    let param = match input.byte() % 6 {
        0 => {
            let n = input.size();
            Param::Raw(Buf::Bytes(input.bytes(n).to_vec()))
        }
        1 => Param::Raw(Buf::Null(input.length())),
        2 => Param::Gcm {
            iv: input.buf(),
            iv_bits: input.ulong_value(),
            aad: input.buf(),
            tag_bits: input.pick(&[128, 96, 120, 64, 32, 0, 1, 129, 256, CK_ULONG::MAX]),
        },
        3 => Param::Oaep {
            hash: input.pick(HASHES),
            mgf: input.pick(MGFS),
            source: input.pick(&[CKZ_DATA_SPECIFIED, 0, 2]),
            data: input.buf(),
        },
        4 => Param::Pss {
            hash: input.pick(HASHES),
            mgf: input.pick(MGFS),
            salt: input.ulong_value(),
        },
        _ => usual_param(ty),
    };
    CMechanism::new(ty, param)
}

/// The parameters a client usually passes with `ty`.
fn usual_param(ty: CK_MECHANISM_TYPE) -> Param {
    match ty {
        CKM_AES_GCM => Param::Gcm {
            iv: Buf::Bytes(vec![7; 12]),
            iv_bits: 96,
            aad: Buf::Null(0),
            tag_bits: 128,
        },
        CKM_AES_CBC | CKM_AES_CBC_PAD => Param::Raw(Buf::Bytes(vec![9; 16])),
        CKM_RSA_PKCS_OAEP => Param::Oaep {
            hash: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            source: CKZ_DATA_SPECIFIED,
            data: Buf::Null(0),
        },
        CKM_RSA_PKCS_PSS | CKM_SHA256_RSA_PKCS_PSS => Param::Pss {
            hash: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            salt: 32,
        },
        CKM_SHA384_RSA_PKCS_PSS => Param::Pss {
            hash: CKM_SHA384,
            mgf: CKG_MGF1_SHA384,
            salt: 48,
        },
        CKM_SHA512_RSA_PKCS_PSS => Param::Pss {
            hash: CKM_SHA512,
            mgf: CKG_MGF1_SHA512,
            salt: 64,
        },
        _ => Param::Raw(Buf::Null(0)),
    }
}

/// Where configuration errors say they come from.
const ORIGIN: &str = "/fuzz/p11gate.toml";

/// Target `config`: TOML text → [`Config::parse`]; or, after a first line `#env`, lines
/// `NAME=value` → [`Config::discover`] with that environment (and no file). A configuration
/// that is accepted must also give its slot policies, app selections and token directories;
/// an error must name the file and be one line (it goes into one log line).
pub fn config(data: &[u8]) {
    no_panic("config", || {
        let text = String::from_utf8_lossy(data);
        let (result, source) = match text.strip_prefix("#env\n") {
            Some(lines) => {
                let vars: Vec<(&str, &str)> =
                    lines.lines().filter_map(|l| l.split_once('=')).collect();
                let getenv = |k: &str| {
                    if k == env::CONFIG {
                        return Some("/nonexistent/p11gate-fuzz.toml".to_string());
                    }
                    vars.iter()
                        .find(|(name, _)| *name == k)
                        .map(|(_, v)| v.to_string())
                };
                match Config::discover(getenv) {
                    Ok((c, source)) => {
                        let app = getenv(env::APP);
                        (Ok((c, app)), source)
                    }
                    Err(e) => (Err(e), Source::NoFile(ORIGIN.into())),
                }
            }
            None => (
                Config::parse(&text, Path::new(ORIGIN)).map(|c| (c, None)),
                Source::File(ORIGIN.into()),
            ),
        };
        match result {
            Ok((c, app)) => use_config(&c, app.as_deref(), &source),
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "a multi-line config error: {msg:?}");
                if source == Source::File(ORIGIN.into()) {
                    assert!(msg.starts_with("config /fuzz/p11gate.toml"), "{msg:?}");
                }
            }
        }
    })
}

/// Everything C_Initialize derives from an accepted configuration.
fn use_config(c: &Config, app: Option<&str>, source: &Source) {
    for i in 0..c.slots.len() {
        let p = c.slot_policy(i);
        for m in MECHANISMS {
            let _ = p.mechanisms.refusal(*m);
        }
        let _ = c.slots[i].target().to_string();
        let _ = c.slots[i].credential_source();
        assert!(c.upstream_index(c.slots[i].upstream.get_ref()).is_some());
    }
    for i in 0..c.upstreams.len() {
        let _ = c.upstream_policy(i);
    }
    if let Ok(a) = c.select_app(app, source) {
        assert!(a.slots.iter().all(|&i| i < c.slots.len()), "{a:?}");
    }
    for a in &c.apps {
        let _ = c.select_app(Some(a.name.get_ref()), source);
    }
    assert_eq!(c.soft_token.token_dirs().len(), c.soft_token.slots);
}
