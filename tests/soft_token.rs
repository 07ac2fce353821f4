//! The built-in soft token, driven as a client would: `p11gate token init`, then the built
//! `libp11gate.so` with nothing configured (no upstream), through cryptoki and pkcs11-tool.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

const SO_PIN: &str = "soft-so-pin-3390";
const USER_PIN: &str = "soft-user-pin-8841";
const PLAINTEXT: &[u8] = b"soft-token-plaintext-6613-never-stored";
/// A key value the test imports, to look for in the store files.
const IMPORTED_KEY: [u8; 32] = *b"imported-key-value-5521-ABCDEFGH";

/// A soft token home with token 0 initialised by `p11gate token init`.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home { dir };
        let mut child = Command::new(env!("CARGO_BIN_EXE_p11gate"))
            .args(["token", "init", "--label", "soft-test"])
            .envs(home.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("p11gate token init");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{SO_PIN}\n{USER_PIN}\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "token init: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .contains("slot 0: token \"soft-test\" initialised"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        home
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("P11GATE_HOME".into(), self.path().display().to_string()),
            ("P11GATE_CONFIG".into(), "/nonexistent/p11gate.toml".into()),
            ("P11GATE_AUDIT".into(), "off".into()),
            (
                "P11GATE_LOG".into(),
                self.path().join("p11gate.log").display().to_string(),
            ),
            ("P11GATE_LOG_LEVEL".into(), "trace".into()),
        ]
    }

    /// Every byte of every file under the token directory.
    fn store_bytes(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut dirs = vec![self.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn open(home: &Home) -> (Pkcs11, parking_lot::MutexGuard<'static, ()>) {
    let guard = common::in_process(&home.env());
    std::env::remove_var("P11GATE_UPSTREAM");
    let p = Pkcs11::new(common::module()).expect("load libp11gate.so");
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize on the soft token");
    (p, guard)
}

fn login(p: &Pkcs11) -> Session {
    let slot = p.get_slots_with_token().unwrap()[0];
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    s
}

fn aes_key(s: &Session, label: &str) -> cryptoki::object::ObjectHandle {
    s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(b"k1".to_vec()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ],
    )
    .expect("C_GenerateKey(AES-256) on the soft token")
}

#[test]
fn keys_persist_encrypted_and_nothing_secret_reaches_the_disk() {
    let home = Home::new();
    let mut iv = [9u8; 12];
    let ciphertext;
    {
        let (p, _guard) = open(&home);
        let s = login(&p);
        let key = aes_key(&s, "vault-key");
        let gcm = GcmParams::new(&mut iv, &[], 128.into()).unwrap();
        ciphertext = s.encrypt(&Mechanism::AesGcm(gcm), key, PLAINTEXT).unwrap();
        assert_eq!(ciphertext.len(), PLAINTEXT.len() + 16);
        // The key's value is never readable.
        let value = s.get_attributes(key, &[AttributeType::Value]).unwrap();
        assert!(value.is_empty(), "CKA_VALUE of a sensitive key: {value:?}");
        // An imported private key value, to look for on disk.
        s.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Value(IMPORTED_KEY.to_vec()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Label(b"imported".to_vec()),
        ])
        .unwrap();
        drop(s);
        p.finalize().unwrap();
    }
    // Nothing secret in the store, nor in the trace-level log (which is in the same
    // directory, so the loop covers it).
    assert!(
        home.path().join("p11gate.log").exists(),
        "the trace log was written"
    );
    for (path, bytes) in home.store_bytes() {
        let is_log = path.extension().is_some_and(|e| e == "log");
        for (what, secret) in [
            ("the user PIN", USER_PIN.as_bytes()),
            ("the SO PIN", SO_PIN.as_bytes()),
            ("the plaintext", PLAINTEXT),
            ("an imported key value", &IMPORTED_KEY[..]),
            ("a private object's label", b"vault-key"),
        ] {
            // Labels are not secret in the log (it may name what was searched for).
            if is_log && what.contains("label") {
                continue;
            }
            assert!(!contains(&bytes, secret), "{what} in {}", path.display());
        }
    }
    // Loaded again: the key is found by label and decrypts.
    let (p, _guard) = open(&home);
    let slot = p.get_slots_with_token().unwrap()[0];
    let public = p.open_ro_session(slot).unwrap();
    let before_login = public
        .find_objects(&[Attribute::Label(b"vault-key".to_vec())])
        .unwrap();
    assert!(
        before_login.is_empty(),
        "a private key is invisible before login"
    );
    drop(public);
    let s = login(&p);
    let found = s
        .find_objects(&[Attribute::Label(b"vault-key".to_vec())])
        .unwrap();
    assert_eq!(found.len(), 1);
    let gcm = GcmParams::new(&mut iv, &[], 128.into()).unwrap();
    let plain = s
        .decrypt(&Mechanism::AesGcm(gcm), found[0], &ciphertext)
        .unwrap();
    assert_eq!(plain, PLAINTEXT);
    drop(s);
    p.finalize().unwrap();
}

#[test]
fn a_wrong_pin_is_counted_and_a_flipped_byte_is_reported() {
    let home = Home::new();
    {
        let (p, _guard) = open(&home);
        let slot = p.get_slots_with_token().unwrap()[0];
        let s = p.open_rw_session(slot).unwrap();
        let err = s
            .login(UserType::User, Some(&AuthPin::new("wrong-pin-0000".into())))
            .unwrap_err();
        assert!(
            matches!(
                err,
                cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::PinIncorrect, _)
            ),
            "{err:?}"
        );
        let info = p.get_token_info(slot).unwrap();
        assert!(
            info.user_pin_count_low(),
            "CKF_USER_PIN_COUNT_LOW after a wrong PIN"
        );
        s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
            .unwrap();
        aes_key(&s, "k");
        drop(s);
        p.finalize().unwrap();
    }
    // Flip one byte in one object record.
    let (victim, mut bytes) = home
        .store_bytes()
        .into_iter()
        .filter(|(p, _)| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.starts_with("obj") || p.parent().unwrap().ends_with("objects")
        })
        .max_by_key(|(_, b)| b.len())
        .expect("an object file in the store");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&victim, &bytes).unwrap();
    let _guard = common::in_process(&home.env());
    let p = Pkcs11::new(common::module()).unwrap();
    let err = p
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap_err();
    assert!(
        matches!(
            err,
            cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::DeviceError, _)
        ),
        "{err:?}"
    );
    let log = std::fs::read_to_string(home.path().join("p11gate.log")).unwrap_or_default();
    let name = victim.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        log.contains(&name),
        "the log names the damaged file {name}:\n{log}"
    );
}

#[test]
fn pkcs11_tool_test_passes_on_the_soft_token() {
    let home = Home::new();
    let tool = |args: &[&str]| {
        let out = Command::new(common::require_program("pkcs11-tool"))
            .arg("--module")
            .arg(common::module())
            .args(args)
            .envs(home.env())
            .env_remove("P11GATE_UPSTREAM")
            .output()
            .expect("pkcs11-tool");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = tool(&[
        "--login",
        "--pin",
        USER_PIN,
        "--keypairgen",
        "--key-type",
        "rsa:2048",
        "--label",
        "rsa",
        "--id",
        "01",
    ]);
    assert!(ok, "{text}");
    let (ok, text) = tool(&[
        "--login",
        "--pin",
        USER_PIN,
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "aes",
        "--id",
        "02",
    ]);
    assert!(ok, "{text}");
    let (ok, text) = tool(&["--test", "--login", "--pin", USER_PIN]);
    assert!(
        ok && text.contains("No errors"),
        "pkcs11-tool --test:\n{text}"
    );
}

#[test]
fn a_mapped_slot_can_be_a_soft_token_in_its_own_directory() {
    let dir = tempfile::tempdir().unwrap();
    let token_dir = dir.path().join("lab-token");
    let mut child = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["token", "init", "--label", "lab", "--dir"])
        .arg(&token_dir)
        .env("P11GATE_CONFIG", "/nonexistent/p11gate.toml")
        .env_remove("P11GATE_UPSTREAM")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SO_PIN}\n{USER_PIN}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let config = dir.path().join("p11gate.toml");
    std::fs::write(
        &config,
        format!(
            "[[upstream]]\nname = \"lab\"\nsoft_token = \"{}\"\nprofiles = [\"no-aes-cbc\"]\n\n\
             [[slot]]\nid = 7\nupstream = \"lab\"\ntoken_label = \"lab\"\n",
            token_dir.display()
        ),
    )
    .unwrap();
    let env = vec![
        ("P11GATE_CONFIG".to_string(), config.display().to_string()),
        ("P11GATE_AUDIT".to_string(), "off".to_string()),
        ("P11GATE_LOG".to_string(), "stderr".to_string()),
    ];
    let _guard = common::in_process(&env);
    std::env::remove_var("P11GATE_UPSTREAM");
    std::env::remove_var("P11GATE_HOME");
    let p = Pkcs11::new(common::module()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slots = p.get_slots_with_token().unwrap();
    assert_eq!(slots.iter().map(|s| s.id()).collect::<Vec<_>>(), vec![7]);
    assert_eq!(p.get_token_info(slots[0]).unwrap().label(), "lab");
    let mechanisms = p.get_mechanism_list(slots[0]).unwrap();
    assert!(mechanisms.contains(&cryptoki::mechanism::MechanismType::AES_GCM));
    assert!(
        !mechanisms.contains(&cryptoki::mechanism::MechanismType::AES_CBC_PAD),
        "the upstream's profile filters the soft token too"
    );
    let s = login(&p);
    let key = aes_key(&s, "lab-key");
    let mut iv = [1u8; 12];
    let gcm = GcmParams::new(&mut iv, &[], 128.into()).unwrap();
    let ct = s.encrypt(&Mechanism::AesGcm(gcm), key, PLAINTEXT).unwrap();
    let gcm = GcmParams::new(&mut iv, &[], 128.into()).unwrap();
    assert_eq!(
        s.decrypt(&Mechanism::AesGcm(gcm), key, &ct).unwrap(),
        PLAINTEXT
    );
    drop(s);
    p.finalize().unwrap();
}

/// pkcs11-tool against the soft token, in `home`'s environment plus `extra`.
fn tool(home: &Path, extra: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let out = Command::new(common::require_program("pkcs11-tool"))
        .arg("--module")
        .arg(common::module())
        .args(args)
        .env("P11GATE_HOME", home)
        .env("P11GATE_CONFIG", "/nonexistent/p11gate.toml")
        .env("P11GATE_AUDIT", "off")
        .env("P11GATE_LOG", "stderr")
        .envs(extra.iter().copied())
        .env_remove("P11GATE_UPSTREAM")
        .output()
        .expect("pkcs11-tool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn pkcs11_tool_initialises_the_token_and_pins_change_and_lock() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    // A fresh token is there, uninitialised.
    let (ok, text) = tool(home, &[], &["--list-token-slots"]);
    assert!(ok, "{text}");
    assert!(text.contains("token state:   uninitialized"), "{text}");
    let (ok, text) = tool(
        home,
        &[],
        &["--init-token", "--label", "by-tool", "--so-pin", SO_PIN],
    );
    assert!(ok, "--init-token: {text}");
    let (ok, text) = tool(
        home,
        &[],
        &[
            "--init-pin",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            SO_PIN,
            "--new-pin",
            USER_PIN,
        ],
    );
    assert!(ok, "--init-pin: {text}");
    let (ok, text) = tool(home, &[], &["--list-token-slots"]);
    assert!(ok && text.contains("by-tool"), "{text}");
    assert!(text.contains("PIN initialized"), "{text}");
    // C_SetPIN: the old PIN stops working, the new one works.
    let new_pin = "changed-user-pin-7734";
    let (ok, text) = tool(
        home,
        &[],
        &[
            "--change-pin",
            "--login",
            "--pin",
            USER_PIN,
            "--new-pin",
            new_pin,
        ],
    );
    assert!(ok, "--change-pin: {text}");
    let (ok, text) = tool(home, &[], &["--login", "--pin", USER_PIN, "--list-objects"]);
    assert!(!ok && text.contains("CKR_PIN_INCORRECT"), "{text}");
    let (ok, text) = tool(home, &[], &["--login", "--pin", new_pin, "--list-objects"]);
    assert!(ok, "{text}");

    // A lock after max_pin_failures wrong PINs in a row (3 here), lifted by the SO's C_InitPIN.
    let config = home.join("p11gate.toml");
    std::fs::write(&config, "[soft_token]\nmax_pin_failures = 3\n").unwrap();
    let cfg = [("P11GATE_CONFIG", config.to_str().unwrap())];
    for _ in 0..2 {
        let (ok, text) = tool(
            home,
            &cfg,
            &["--login", "--pin", "wrong-pin-0000", "--list-objects"],
        );
        assert!(!ok && text.contains("CKR_PIN_INCORRECT"), "{text}");
    }
    let (_, text) = tool(home, &cfg, &["--list-token-slots"]);
    assert!(
        text.contains("final user PIN try"),
        "CKF_USER_PIN_FINAL_TRY: {text}"
    );
    let (ok, text) = tool(
        home,
        &cfg,
        &["--login", "--pin", "wrong-pin-0000", "--list-objects"],
    );
    assert!(!ok && text.contains("CKR_PIN_INCORRECT"), "{text}");
    let (ok, text) = tool(home, &cfg, &["--login", "--pin", new_pin, "--list-objects"]);
    assert!(
        !ok && text.contains("CKR_PIN_LOCKED"),
        "the right PIN after the lock: {text}"
    );
    let (_, text) = tool(home, &cfg, &["--list-token-slots"]);
    assert!(
        text.contains("user PIN locked"),
        "CKF_USER_PIN_LOCKED: {text}"
    );
    let (ok, text) = tool(
        home,
        &cfg,
        &[
            "--init-pin",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            SO_PIN,
            "--new-pin",
            USER_PIN,
        ],
    );
    assert!(ok, "the SO sets a new user PIN: {text}");
    let (ok, text) = tool(
        home,
        &cfg,
        &["--login", "--pin", USER_PIN, "--list-objects"],
    );
    assert!(ok, "{text}");
}
