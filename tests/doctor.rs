//! `p11gate doctor` (issue 7) and the Vault integration kit in contrib/vault/: the doctor runs as
//! the built `p11gate` command, loads the built `libp11gate.so` as Vault would, and its report
//! is compared line by line, with its exit status, against what each situation must produce:
//! the kit's stanzas on the built-in soft token (keys still to be generated, then created),
//! SoftHSMv2's SHA-1-only RSA-OAEP, a wrong PIN, an unknown token label, a mechanism p11gate's
//! policy hides, a missing key, an HMAC key of the wrong type, a missing library.
//!
//! This process never loads a module: every client (the doctor, `p11gate token init`,
//! `pkcs11-tool` making keys) is a child with its own environment, so the tests run in parallel.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{SO_PIN, USER_PIN};
use p11gate::doctor::hcl::seal_stanzas;

const KIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/vault");
const WRONG_PIN: &str = "wrong-pin-Hq27Zx";

/// A verdict line as the doctor prints it.
fn line(verdict: &str, check: &str, detail: &str) -> String {
    format!("{verdict:<6}{check:<18}{detail}")
}

/// A hint line under a verdict line.
fn hint(text: &str) -> String {
    format!("{:24}hint: {text}", "")
}

/// "p11gate 0.1, PKCS#11 2.40" for this build.
fn library_line(module: &Path) -> String {
    let mut v = env!("CARGO_PKG_VERSION").split('.');
    let (major, minor) = (v.next().unwrap(), v.next().unwrap());
    line(
        "PASS",
        "library",
        &format!(
            "{} loads (p11gate {major}.{minor}, PKCS#11 2.40)",
            module.display()
        ),
    )
}

fn text_of(lines: &[String]) -> String {
    let mut t = lines.join("\n");
    t.push('\n');
    t
}

/// A temporary directory with p11gate's configuration (log to a file, no audit) and tokens.
struct Bed {
    dir: tempfile::TempDir,
    softhsm: Option<common::SoftHsm>,
}

impl Bed {
    /// The built-in soft token (`slots` of them), token 0 initialised with `label`.
    fn soft(label: &str, slots: usize) -> Bed {
        let bed = Bed {
            dir: tempfile::tempdir().unwrap(),
            softhsm: None,
        };
        bed.write_config(&format!(
            "[soft_token]\nhome = \"{}\"\nslots = {slots}\n",
            bed.path("home").display()
        ));
        bed.token_init(&["--label", label]);
        bed
    }

    /// The soft token as an `[[upstream]]` (in its own directory), mapped to slot 0 of app
    /// "vault" with `rules` on the slot.
    fn mapped_soft(label: &str, rules: &str) -> Bed {
        let bed = Bed {
            dir: tempfile::tempdir().unwrap(),
            softhsm: None,
        };
        let dir = bed.path("lab");
        bed.write_config(&format!(
            "[[upstream]]\nname = \"lab\"\nsoft_token = \"{}\"\n\n[[slot]]\nid = 0\nupstream = \"lab\"\ntoken_label = \"{label}\"\n{rules}\n\n[[app]]\nname = \"vault\"\nslots = [0]\n",
            dir.display()
        ));
        bed.token_init(&["--dir", dir.to_str().unwrap(), "--label", label]);
        bed
    }

    /// SoftHSMv2 with a token `label`, mapped to slot 0 of app "vault".
    fn softhsm(label: &str) -> Bed {
        let hsm = common::SoftHsm::new();
        hsm.init_token(label);
        let bed = Bed {
            dir: tempfile::tempdir().unwrap(),
            softhsm: Some(hsm),
        };
        bed.write_config(&format!(
            "[[upstream]]\nname = \"softhsm\"\npath = \"{}\"\n\n[[slot]]\nid = 0\nupstream = \"softhsm\"\ntoken_label = \"{label}\"\n\n[[app]]\nname = \"vault\"\nslots = [0]\n",
            common::softhsm_module().display()
        ));
        bed
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("p11gate.toml")
    }

    fn write_config(&self, body: &str) {
        let text = format!(
            "{body}\n[log]\ntarget = \"{}\"\nlevel = \"debug\"\n\n[audit]\nenabled = false\n",
            self.path("p11gate.log").display()
        );
        std::fs::write(self.config(), text).unwrap();
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// The environment every client of this bed gets (the Vault service's, in effect).
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("P11GATE_CONFIG".into(), self.config().display().to_string()),
            ("P11GATE_APP".into(), "vault".into()),
        ];
        if let Some(h) = &self.softhsm {
            env.push(("SOFTHSM2_CONF".into(), h.conf.display().to_string()));
        }
        env
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.envs(self.env());
        cmd
    }

    fn token_init(&self, args: &[&str]) {
        let mut child = self
            .command(Path::new(env!("CARGO_BIN_EXE_p11gate")))
            .args(["token", "init"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
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
    }

    /// `p11gate doctor ARGS` with the bed's environment plus `env`: (exit status, stdout).
    fn doctor(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
        let out = self
            .command(Path::new(env!("CARGO_BIN_EXE_p11gate")))
            .arg("doctor")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "",
            "the doctor wrote to stderr; stdout: {stdout}"
        );
        (out.status.code().unwrap(), stdout)
    }

    /// Makes a key through libp11gate.so with pkcs11-tool (a real client).
    fn pkcs11_tool_keygen(&self, args: &[&str], label: &str) {
        let out = self
            .command(&common::require_program("pkcs11-tool"))
            .args(["--module", common::module().to_str().unwrap()])
            .args(["--login", "--pin", USER_PIN])
            .args(args)
            .args(["--label", label])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// p11gate's log, which must never hold a PIN.
    fn assert_log_has_no_pins(&self) {
        let log = std::fs::read_to_string(self.path("p11gate.log")).unwrap_or_default();
        assert!(!log.is_empty(), "p11gate wrote no log");
        for pin in [USER_PIN, SO_PIN, WRONG_PIN] {
            assert!(!log.contains(pin), "p11gate's log holds a PIN");
        }
    }
}

/// The built module, as `lib` (VAULT_HSM_LIB overrides the kit's install path).
fn lib_env(module: &Path) -> (&'static str, String) {
    ("VAULT_HSM_LIB", module.display().to_string())
}

/// The `seal` line of a kit stanza run with VAULT_HSM_LIB and VAULT_HSM_PIN.
fn kit_seal_line(file: &Path, line_no: usize) -> String {
    line(
        "PASS",
        "seal",
        &format!(
            "seal \"pkcs11\" at {}:{line_no}; from the environment: VAULT_HSM_LIB, VAULT_HSM_PIN",
            file.display()
        ),
    )
}

fn soft_config_line(bed: &Bed) -> String {
    line(
        "PASS",
        "config",
        &format!(
            "{}: app \"vault\" (P11GATE_APP), the built-in soft token in {}",
            bed.config().display(),
            bed.path("home").display()
        ),
    )
}

/// Every kit file: it parses with the doctor's reader into one stanza with the install layout,
/// and the drop-in sets what p11gate needs.
#[test]
fn kit_files_parse_and_say_what_vault_needs() {
    let expected = [
        ("seal-aes-gcm.hcl", "0x1087", None, None),
        (
            "seal-aes-cbc-hmac.hcl",
            "0x1082",
            Some("vault-hmac-key"),
            None,
        ),
        ("seal-rsa-oaep.hcl", "0x0009", None, Some("sha256")),
    ];
    for (file, mechanism, hmac, oaep) in expected {
        let text = std::fs::read_to_string(Path::new(KIT).join(file)).unwrap();
        let stanzas = seal_stanzas(&text).unwrap();
        assert_eq!(stanzas.len(), 1, "{file}");
        let s = &stanzas[0];
        let value = |k: &str| s.get(k).map(|e| e.value.as_str());
        assert_eq!(
            value("lib"),
            Some("/usr/lib/p11gate/libp11gate.so"),
            "{file}"
        );
        assert_eq!(value("token_label"), Some("vault"), "{file}");
        assert_eq!(value("mechanism"), Some(mechanism), "{file}");
        assert_eq!(value("generate_key"), Some("true"), "{file}");
        assert_eq!(value("hmac_key_label"), hmac, "{file}");
        assert_eq!(value("rsa_oaep_hash"), oaep, "{file}");
        assert!(value("key_label").is_some(), "{file}");
        assert!(value("pin").is_some(), "{file}");
        assert!(
            text.contains("# default_key_label = "),
            "{file}: rotation comment"
        );
    }
    let oaep = std::fs::read_to_string(Path::new(KIT).join("seal-rsa-oaep.hcl")).unwrap();
    assert!(oaep.contains("SoftHSMv2 2.6 (Debian 12) does OAEP with SHA-1 only"));

    let dropin =
        std::fs::read_to_string(Path::new(KIT).join("vault.service.d/p11gate.conf")).unwrap();
    let settings: Vec<&str> = dropin
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    assert_eq!(
        settings,
        vec![
            "Environment=P11GATE_CONFIG=/etc/p11gate/p11gate.toml",
            "Environment=P11GATE_APP=vault",
            "EnvironmentFile=/etc/vault.d/hsm.env",
        ]
    );
    assert!(dropin.contains("[Service]"));
}

/// The three kit stanzas against the soft token, as the drop-in's environment gives it: all
/// checks pass while the keys are still to be generated (the round trips use temporary session
/// keys), and again once the keys exist.
#[test]
fn kit_stanzas_pass_on_the_soft_token() {
    let bed = Bed::soft("vault", 1);
    let module = common::module();
    let (lib_k, lib_v) = lib_env(&module);
    let env = [(lib_k, lib_v.as_str()), ("VAULT_HSM_PIN", USER_PIN)];
    let kit = |f: &str| Path::new(KIT).join(f);
    let run = |file: &Path| bed.doctor(&["--vault-config", file.to_str().unwrap()], &env);
    let common_lines = |file: &Path, seal_line: usize| {
        vec![
            kit_seal_line(file, seal_line),
            soft_config_line(&bed),
            library_line(&module),
            line("PASS", "token", "token_label \"vault\" is slot 0"),
            line(
                "PASS",
                "login",
                "the PIN from env://VAULT_HSM_PIN logs in to token \"vault\"",
            ),
        ]
    };
    let temporary = "a temporary session key (the key does not exist yet)";
    let will_generate = |label: &str, gen: &str| {
        format!("{label}: not found, and Vault will generate it (generate_key = true): {gen} is allowed and a read-write session opens")
    };

    // Before Vault's first start: no keys.
    let gcm = kit("seal-aes-gcm.hcl");
    let mut want = common_lines(&gcm, 4);
    want.extend([
        line(
            "PASS",
            "mechanism",
            "CKM_AES_GCM (0x1087): encrypt and decrypt allowed",
        ),
        line(
            "PASS",
            "key",
            &will_generate("key_label \"vault-aes-key\"", "CKM_AES_KEY_GEN (0x1080)"),
        ),
        line(
            "PASS",
            "round-trip",
            &format!("AES-GCM: 32 random bytes encrypted and decrypted with {temporary}"),
        ),
        "result: PASS (8 checks passed)".into(),
    ]);
    assert_eq!(run(&gcm), (0, text_of(&want)));

    let cbc = kit("seal-aes-cbc-hmac.hcl");
    let mut want = common_lines(&cbc, 5);
    want.extend([
        line(
            "PASS",
            "mechanism",
            "CKM_AES_CBC (0x1082): encrypt and decrypt allowed",
        ),
        line(
            "PASS",
            "hmac-mechanism",
            "CKM_SHA256_HMAC (0x0251): sign and verify allowed",
        ),
        line(
            "PASS",
            "key",
            &will_generate("key_label \"vault-cbc-key\"", "CKM_AES_KEY_GEN (0x1080)"),
        ),
        line(
            "PASS",
            "hmac-key",
            &will_generate(
                "hmac_key_label \"vault-hmac-key\"",
                "CKM_GENERIC_SECRET_KEY_GEN (0x0350)",
            ),
        ),
        line(
            "PASS",
            "round-trip",
            &format!("AES-CBC: 32 random bytes encrypted and decrypted with {temporary}"),
        ),
        line(
            "PASS",
            "hmac-round-trip",
            &format!(
                "CKM_SHA256_HMAC (0x0251): 32 random bytes signed and verified with {temporary}"
            ),
        ),
        "result: PASS (11 checks passed)".into(),
    ]);
    assert_eq!(run(&cbc), (0, text_of(&want)));

    let rsa = kit("seal-rsa-oaep.hcl");
    let mut want = common_lines(&rsa, 5);
    want.extend([
        line(
            "PASS",
            "mechanism",
            "CKM_RSA_PKCS_OAEP (0x0009): encrypt and decrypt allowed",
        ),
        line(
            "PASS",
            "key",
            &will_generate(
                "key_label \"vault-rsa-key\"",
                "CKM_RSA_PKCS_KEY_PAIR_GEN (0x0000)",
            ),
        ),
        line(
            "PASS",
            "round-trip",
            &format!(
                "RSA-OAEP with SHA-256: 32 random bytes encrypted and decrypted with {temporary}"
            ),
        ),
        "result: PASS (8 checks passed)".into(),
    ]);
    assert_eq!(run(&rsa), (0, text_of(&want)));

    // The keys exist (made by another client): found, and used for the round trips.
    bed.pkcs11_tool_keygen(&["--keygen", "--key-type", "AES:32"], "vault-aes-key");
    bed.pkcs11_tool_keygen(&["--keygen", "--key-type", "AES:32"], "vault-cbc-key");
    bed.pkcs11_tool_keygen(
        &["--keygen", "--key-type", "GENERIC:32", "--usage-sign"],
        "vault-hmac-key",
    );
    bed.pkcs11_tool_keygen(&["--keypairgen", "--key-type", "rsa:2048"], "vault-rsa-key");

    let mut want = common_lines(&gcm, 4);
    want.extend([
        line(
            "PASS",
            "mechanism",
            "CKM_AES_GCM (0x1087): encrypt and decrypt allowed",
        ),
        line(
            "PASS",
            "key",
            "key_label \"vault-aes-key\": AES secret key found",
        ),
        line(
            "PASS",
            "round-trip",
            "AES-GCM: 32 random bytes encrypted and decrypted with key_label \"vault-aes-key\"",
        ),
        "result: PASS (8 checks passed)".into(),
    ]);
    assert_eq!(run(&gcm), (0, text_of(&want)));

    let mut want = common_lines(&cbc, 5);
    want.extend([
        line("PASS", "mechanism", "CKM_AES_CBC (0x1082): encrypt and decrypt allowed"),
        line("PASS", "hmac-mechanism", "CKM_SHA256_HMAC (0x0251): sign and verify allowed"),
        line("PASS", "key", "key_label \"vault-cbc-key\": AES secret key found"),
        line("PASS", "hmac-key", "hmac_key_label \"vault-hmac-key\": generic secret (HMAC) key found"),
        line("PASS", "round-trip", "AES-CBC: 32 random bytes encrypted and decrypted with key_label \"vault-cbc-key\""),
        line("PASS", "hmac-round-trip", "CKM_SHA256_HMAC (0x0251): 32 random bytes signed and verified with hmac_key_label \"vault-hmac-key\""),
        "result: PASS (11 checks passed)".into(),
    ]);
    assert_eq!(run(&cbc), (0, text_of(&want)));

    let mut want = common_lines(&rsa, 5);
    want.extend([
        line("PASS", "mechanism", "CKM_RSA_PKCS_OAEP (0x0009): encrypt and decrypt allowed"),
        line("PASS", "key", "key_label \"vault-rsa-key\": RSA private and public key found (2048-bit)"),
        line("PASS", "round-trip", "RSA-OAEP with SHA-256: 32 random bytes encrypted and decrypted with key_label \"vault-rsa-key\""),
        "result: PASS (8 checks passed)".into(),
    ]);
    assert_eq!(run(&rsa), (0, text_of(&want)));
    bed.assert_log_has_no_pins();
}

/// A Vault configuration for the tests below; `token` is `token_label = "..."` or `slot = "..."`.
fn stanza(lib: &Path, token: &str, mechanism: &str, extra: &str) -> String {
    format!(
        "# a Vault server configuration\nstorage \"file\" {{\n  path = \"/opt/vault/data\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:8200\"\n}}\n\nseal \"pkcs11\" {{\n  lib = \"{}\"\n  {token}\n  pin = \"env://VAULT_HSM_PIN\"\n  mechanism = \"{mechanism}\"\n{extra}}}\n",
        lib.display()
    )
}

const SEAL_LINE: usize = 9;

/// SoftHSMv2 2.6 answers RSA-OAEP with SHA-256 with CKR_ARGUMENTS_BAD: the doctor tries it and
/// says to set rsa_oaep_hash = "sha1", with and without the key pair; with sha1 all passes.
#[test]
fn softhsm_does_oaep_with_sha1_only() {
    let bed = Bed::softhsm("vault-hsm");
    let module = common::module();
    let vault = bed.write(
        "vault.hcl",
        &stanza(&module, "token_label = \"vault-hsm\"",
            "0x0009",
            "  key_label = \"vault-rsa-key\"\n  rsa_oaep_hash = \"sha256\"\n  generate_key = \"true\"\n",
        ),
    );
    let args = ["--vault-config", vault.to_str().unwrap()];
    let head = |from_env: &str| {
        vec![
            line(
                "PASS",
                "seal",
                &format!(
                    "seal \"pkcs11\" at {}:{SEAL_LINE}{from_env}",
                    vault.display()
                ),
            ),
            line(
                "PASS",
                "config",
                &format!(
                    "{}: app \"vault\" (P11GATE_APP), upstream \"softhsm\"",
                    bed.config().display()
                ),
            ),
            library_line(&module),
            line("PASS", "token", "token_label \"vault-hsm\" is slot 0"),
            line(
                "PASS",
                "login",
                "the PIN from env://VAULT_HSM_PIN logs in to token \"vault-hsm\"",
            ),
            line(
                "PASS",
                "mechanism",
                "CKM_RSA_PKCS_OAEP (0x0009): encrypt and decrypt allowed",
            ),
        ]
    };
    let generate = line(
        "PASS",
        "key",
        "key_label \"vault-rsa-key\": not found, and Vault will generate it (generate_key = true): CKM_RSA_PKCS_KEY_PAIR_GEN (0x0000) is allowed and a read-write session opens",
    );
    let sha1_only = [
        line(
            "FAIL",
            "round-trip",
            "RSA-OAEP with SHA-256: C_EncryptInit returned CKR_ARGUMENTS_BAD: the backend does RSA-OAEP only with SHA-1 (SoftHSMv2 2.6)",
        ),
        hint("set rsa_oaep_hash = \"sha1\""),
        "result: FAIL (1 check failed)".into(),
    ];
    let pin = [("VAULT_HSM_PIN", USER_PIN)];
    let sha1 = [
        ("VAULT_HSM_PIN", USER_PIN),
        ("VAULT_HSM_RSA_OAEP_HASH", "sha1"),
    ];
    let from_env_sha1 = "; from the environment: VAULT_HSM_PIN, VAULT_HSM_RSA_OAEP_HASH";

    // No key pair yet: the trial runs on a temporary one.
    let mut want = head("; from the environment: VAULT_HSM_PIN");
    want.push(generate.clone());
    want.extend(sha1_only.clone());
    assert_eq!(bed.doctor(&args, &pin), (1, text_of(&want)));

    let mut want = head(from_env_sha1);
    want.push(generate);
    want.extend([
        line("PASS", "round-trip", "RSA-OAEP with SHA-1: 32 random bytes encrypted and decrypted with a temporary session key (the key does not exist yet)"),
        "result: PASS (8 checks passed)".into(),
    ]);
    assert_eq!(bed.doctor(&args, &sha1), (0, text_of(&want)));

    // With Vault's key pair on the token: the same answers.
    bed.pkcs11_tool_keygen(&["--keypairgen", "--key-type", "rsa:2048"], "vault-rsa-key");
    let found = line(
        "PASS",
        "key",
        "key_label \"vault-rsa-key\": RSA private and public key found (2048-bit)",
    );
    let mut want = head("; from the environment: VAULT_HSM_PIN");
    want.push(found.clone());
    want.extend(sha1_only);
    assert_eq!(bed.doctor(&args, &pin), (1, text_of(&want)));

    let mut want = head(from_env_sha1);
    want.push(found);
    want.extend([
        line("PASS", "round-trip", "RSA-OAEP with SHA-1: 32 random bytes encrypted and decrypted with key_label \"vault-rsa-key\""),
        "result: PASS (8 checks passed)".into(),
    ]);
    assert_eq!(bed.doctor(&args, &sha1), (0, text_of(&want)));
    bed.assert_log_has_no_pins();
}

/// A wrong PIN: CKR_PIN_INCORRECT at login, named with where the PIN came from (never the PIN
/// itself), and the checks that need a login are not made.
#[test]
fn wrong_pin_fails_login_with_ckr_pin_incorrect() {
    let bed = Bed::soft("vault", 1);
    let module = common::module();
    let gcm = Path::new(KIT).join("seal-aes-gcm.hcl");
    let (lib_k, lib_v) = lib_env(&module);
    let (code, out) = bed.doctor(
        &["--vault-config", gcm.to_str().unwrap()],
        &[(lib_k, &lib_v), ("VAULT_HSM_PIN", WRONG_PIN)],
    );
    let want = [
        kit_seal_line(&gcm, 4),
        soft_config_line(&bed),
        library_line(&module),
        line("PASS", "token", "token_label \"vault\" is slot 0"),
        line(
            "FAIL",
            "login",
            "CKR_PIN_INCORRECT: the PIN from env://VAULT_HSM_PIN does not log in to token \"vault\"",
        ),
        hint("give the token's user PIN in env://VAULT_HSM_PIN; where p11gate maps PINs (pin_hash), the app PIN that hash was made from"),
        line("SKIP", "mechanism", "not checked: not logged in"),
        line("SKIP", "key", "not checked: not logged in"),
        line("SKIP", "round-trip", "not checked: not logged in"),
        "result: FAIL (1 check failed, 3 not checked)".into(),
    ];
    assert_eq!((code, out.as_str()), (1, text_of(&want).as_str()));
    assert!(!out.contains(WRONG_PIN) && !out.contains(USER_PIN));
    bed.assert_log_has_no_pins();
}

/// An unknown token label: the app's slots and their tokens are listed.
#[test]
fn unknown_token_label_lists_the_apps_tokens() {
    let bed = Bed::soft("vault", 2);
    let module = common::module();
    let vault = bed.write(
        "vault.hcl",
        &stanza(
            &module,
            "token_label = \"vault-prod\"",
            "0x1087",
            "  key_label = \"k\"\n",
        ),
    );
    let (code, out) = bed.doctor(
        &["--vault-config", vault.to_str().unwrap()],
        &[("VAULT_HSM_PIN", USER_PIN)],
    );
    let config = bed.config();
    let want = [
        line(
            "PASS",
            "seal",
            &format!(
                "seal \"pkcs11\" at {}:{SEAL_LINE}; from the environment: VAULT_HSM_PIN",
                vault.display()
            ),
        ),
        soft_config_line(&bed),
        library_line(&module),
        line(
            "FAIL",
            "token",
            "no token labelled \"vault-prod\" among app \"vault\"'s slots: slot 0 \"vault\", slot 1 (token not initialised)",
        ),
        hint(&format!(
            "set token_label to one of those, or map the token to a slot of app \"vault\" in {} ([[slot]] token_label, [[app]] slots)",
            config.display()
        )),
        line("SKIP", "login", "not checked: no token"),
        line("SKIP", "mechanism", "not checked: no token"),
        line("SKIP", "key", "not checked: no token"),
        line("SKIP", "round-trip", "not checked: no token"),
        "result: FAIL (1 check failed, 4 not checked)".into(),
    ];
    assert_eq!((code, out), (1, text_of(&want)));
}

/// A mechanism p11gate's policy denies to the app: "hidden by p11gate policy", naming the rule,
/// here as JSON; the mechanisms the app may use are offered.
#[test]
fn mechanism_denied_to_the_app_is_hidden_by_policy() {
    let bed = Bed::mapped_soft("vault", "deny = [\"CKM_AES_GCM\"]");
    let module = common::module();
    let gcm = Path::new(KIT).join("seal-aes-gcm.hcl");
    let (lib_k, lib_v) = lib_env(&module);
    let (code, out) = bed.doctor(
        &["--vault-config", gcm.to_str().unwrap(), "--json"],
        &[(lib_k, &lib_v), ("VAULT_HSM_PIN", USER_PIN)],
    );
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows: Vec<(String, String, String, Option<String>)> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["check"].as_str().unwrap().to_string(),
                r["verdict"].as_str().unwrap().to_string(),
                r["detail"].as_str().unwrap().to_string(),
                r["hint"].as_str().map(str::to_string),
            )
        })
        .collect();
    let config = bed.config().display().to_string();
    let row = |c: &str, v: &str, d: &str, h: Option<&str>| {
        (
            c.to_string(),
            v.to_string(),
            d.to_string(),
            h.map(str::to_string),
        )
    };
    assert_eq!(
        rows,
        vec![
            row(
                "seal",
                "PASS",
                &format!(
                    "seal \"pkcs11\" at {}:4; from the environment: VAULT_HSM_LIB, VAULT_HSM_PIN",
                    gcm.display()
                ),
                None
            ),
            row(
                "config",
                "PASS",
                &format!("{config}: app \"vault\" (P11GATE_APP), upstream \"lab\""),
                None
            ),
            row(
                "library",
                "PASS",
                &library_line(&module)[24..],
                None
            ),
            row("token", "PASS", "token_label \"vault\" is slot 0", None),
            row(
                "login",
                "PASS",
                "the PIN from env://VAULT_HSM_PIN logs in to token \"vault\"",
                None
            ),
            row(
                "mechanism",
                "FAIL",
                "CKM_AES_GCM (0x1087) is hidden by p11gate policy for app \"vault\" on slot 0 (the deny list of slot 0)",
                Some(&format!(
                    "allow it in {config}, or set mechanism to one it may use: 0x1085, 0x1082, 0x0009, 0x0001"
                ))
            ),
            row("key", "SKIP", "not checked: no usable mechanism", None),
            row("round-trip", "SKIP", "not checked: no usable mechanism", None),
        ]
    );
}

/// A key that is not there, without generate_key: FAIL, and how to make it.
#[test]
fn missing_key_without_generate_key_fails() {
    let bed = Bed::soft("vault", 1);
    let module = common::module();
    let vault = bed.write(
        "vault.hcl",
        &stanza(
            &module,
            "token_label = \"vault\"",
            "0x1087",
            "  key_label = \"vault-aes-key\"\n  generate_key = \"false\"\n",
        ),
    );
    let (code, out) = bed.doctor(
        &["--vault-config", vault.to_str().unwrap()],
        &[("VAULT_HSM_PIN", USER_PIN)],
    );
    let want = [
        line(
            "PASS",
            "seal",
            &format!(
                "seal \"pkcs11\" at {}:{SEAL_LINE}; from the environment: VAULT_HSM_PIN",
                vault.display()
            ),
        ),
        soft_config_line(&bed),
        library_line(&module),
        line("PASS", "token", "token_label \"vault\" is slot 0"),
        line(
            "PASS",
            "login",
            "the PIN from env://VAULT_HSM_PIN logs in to token \"vault\"",
        ),
        line("PASS", "mechanism", "CKM_AES_GCM (0x1087): encrypt and decrypt allowed"),
        line(
            "FAIL",
            "key",
            "key_label \"vault-aes-key\": no key with this label on token \"vault\"",
        ),
        hint(&format!(
            "set generate_key = \"true\" for Vault to create it, or create it: pkcs11-tool --module {} --login --keygen --key-type AES:32 --label \"vault-aes-key\"",
            module.display()
        )),
        line("SKIP", "round-trip", "not checked: no key to try"),
        "result: FAIL (1 check failed, 1 not checked)".into(),
    ];
    assert_eq!((code, out), (1, text_of(&want)));
}

/// An AES key where Vault needs the HMAC key: named, with Vault's CKR_KEY_TYPE_INCONSISTENT.
#[test]
fn hmac_key_of_the_wrong_type_is_named() {
    let bed = Bed::soft("vault", 1);
    let module = common::module();
    bed.pkcs11_tool_keygen(&["--keygen", "--key-type", "AES:32"], "vault-hmac-key");
    let cbc = Path::new(KIT).join("seal-aes-cbc-hmac.hcl");
    let (lib_k, lib_v) = lib_env(&module);
    let (code, out) = bed.doctor(
        &["--vault-config", cbc.to_str().unwrap()],
        &[(lib_k, &lib_v), ("VAULT_HSM_PIN", USER_PIN)],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(code, 1, "{out}");
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL  hmac-key"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        lines[at..].to_vec(),
        vec![
            line(
                "FAIL",
                "hmac-key",
                "hmac_key_label \"vault-hmac-key\" is a CKO_SECRET_KEY CKK_AES; Vault needs a generic secret key (CKK_GENERIC_SECRET) here (C_SignInit would answer CKR_KEY_TYPE_INCONSISTENT)",
            ),
            hint("give Vault's key another label, or create a generic secret key (CKK_GENERIC_SECRET) under this one"),
            line(
                "PASS",
                "round-trip",
                "AES-CBC: 32 random bytes encrypted and decrypted with a temporary session key (the key does not exist yet)",
            ),
            line("SKIP", "hmac-round-trip", "not checked: no HMAC key or mechanism to try"),
            "result: FAIL (1 check failed, 1 not checked)".into(),
        ]
    );
}

/// `lib` names no file: FAIL library with dlopen's error; nothing else can be checked.
#[test]
fn missing_library_fails_with_the_dlopen_error() {
    let bed = Bed::soft("vault", 1);
    let missing = Path::new("/nonexistent/p11gate/libp11gate.so");
    let rsa = Path::new(KIT).join("seal-rsa-oaep.hcl");
    let (lib_k, lib_v) = lib_env(missing);
    let (code, out) = bed.doctor(
        &["--vault-config", rsa.to_str().unwrap()],
        &[(lib_k, &lib_v), ("VAULT_HSM_PIN", USER_PIN)],
    );
    let want = [
        kit_seal_line(&rsa, 5),
        soft_config_line(&bed),
        line(
            "FAIL",
            "library",
            "dlopen: /nonexistent/p11gate/libp11gate.so: cannot open shared object file: No such file or directory",
        ),
        hint("set lib to where libp11gate.so is installed: /usr/lib/p11gate/libp11gate.so (.deb), $PREFIX/lib/p11gate/libp11gate.so (install.sh)"),
        line("SKIP", "token", "not checked: the library did not load"),
        line("SKIP", "login", "not checked: the library did not load"),
        line("SKIP", "mechanism", "not checked: the library did not load"),
        line("SKIP", "key", "not checked: the library did not load"),
        line("SKIP", "round-trip", "not checked: the library did not load"),
        "result: FAIL (1 check failed, 5 not checked)".into(),
    ];
    assert_eq!((code, out), (1, text_of(&want)));
}

/// Usage errors exit 2; a Vault file without a usable seal stanza is a FAIL (exit 1).
#[test]
fn usage_and_unusable_stanzas() {
    let bed = Bed::soft("vault", 1);
    // The command line is clap's: a missing --vault-config is a usage error on stderr.
    let out = bed
        .command(Path::new(env!("CARGO_BIN_EXE_p11gate")))
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the following required arguments were not provided")
            && stderr.contains("--vault-config <VAULT.hcl>"),
        "{stderr}"
    );

    let none = bed.write("none.hcl", "storage \"file\" {\n  path = \"/x\"\n}\n");
    let (code, out) = bed.doctor(&["--vault-config", none.to_str().unwrap()], &[]);
    let rest = [
        "config",
        "library",
        "token",
        "login",
        "mechanism",
        "key",
        "round-trip",
    ]
    .map(|c| line("SKIP", c, "not checked: the seal stanza is not usable"));
    let mut want = vec![
        line(
            "FAIL",
            "seal",
            &format!("{} has no seal \"pkcs11\" stanza", none.display()),
        ),
        hint("add one (examples in contrib/vault/), or set VAULT_SEAL_TYPE=pkcs11 and VAULT_HSM_*"),
    ];
    want.extend(rest.clone());
    want.push("result: FAIL (1 check failed, 7 not checked)".into());
    assert_eq!((code, out), (1, text_of(&want)));

    let bad = bed.write(
        "bad.hcl",
        "seal \"pkcs11\" {\n  lib = \"/x.so\"\n  generate_key = \"yes\"\n  rsa_oaep_hash = \"md5\"\n}\n",
    );
    let (code, out) = bed.doctor(&["--vault-config", bad.to_str().unwrap()], &[]);
    let mut want = vec![
        line(
            "FAIL",
            "seal",
            &format!(
                "seal \"pkcs11\" at {}:1: neither slot nor token_label is set; key_label is not set; rsa_oaep_hash = \"md5\" is not one of sha1, sha224, sha256, sha384, sha512; generate_key = \"yes\" is not a boolean (\"true\" or \"false\")",
                bad.display()
            ),
        ),
        hint("Vault would refuse this stanza: see its seal \"pkcs11\" parameters"),
    ];
    want.extend(rest);
    want.push("result: FAIL (1 check failed, 7 not checked)".into());
    assert_eq!((code, out), (1, text_of(&want)));
}

/// `lib` pointing at the vendor module itself: it works, but without p11gate: a WARN, not a
/// failure (exit 0).
#[test]
fn a_module_that_is_not_p11gate_is_a_warning() {
    let bed = Bed::softhsm("vault-hsm");
    let softhsm = common::softhsm_module();
    let vault = bed.write(
        "vault.hcl",
        &stanza(
            &softhsm,
            "token_label = \"vault-hsm\"",
            "0x1087",
            "  key_label = \"vault-aes-key\"\n  generate_key = \"true\"\n",
        ),
    );
    let (code, out) = bed.doctor(
        &["--vault-config", vault.to_str().unwrap()],
        &[("VAULT_HSM_PIN", USER_PIN)],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        lines[2..4].to_vec(),
        vec![
            line(
                "WARN",
                "library",
                &format!(
                    "{} loads, but it is \"SoftHSM\" (Implementation of PKCS11 2.6, PKCS#11 2.40), not p11gate",
                    softhsm.display()
                ),
            ),
            hint("Vault would use this module directly, without p11gate's audit, slot mapping and policy: set lib = \"/usr/lib/p11gate/libp11gate.so\" and make this module an [[upstream]] in p11gate.toml"),
        ]
    );
    // SoftHSMv2 numbers its own slots: the token is found under its real id.
    assert!(lines[4].starts_with(&line("PASS", "token", "token_label \"vault-hsm\" is slot ")));
    assert_eq!(
        lines.last(),
        Some(&"result: PASS (7 checks passed, 1 warning)")
    );
}

/// A p11gate configuration that does not load: FAIL config with its reason, and the library's
/// C_Initialize fails as Vault would see it.
#[test]
fn broken_p11gate_config_fails_config_and_library() {
    let bed = Bed::soft("vault", 1);
    let module = common::module();
    std::fs::write(bed.config(), "[soft_token]\nslots = 0\n").unwrap();
    let gcm = Path::new(KIT).join("seal-aes-gcm.hcl");
    let (lib_k, lib_v) = lib_env(&module);
    let log = bed.path("p11gate.log").display().to_string();
    let (code, out) = bed.doctor(
        &["--vault-config", gcm.to_str().unwrap()],
        &[
            (lib_k, &lib_v),
            ("VAULT_HSM_PIN", USER_PIN),
            ("P11GATE_LOG", &log),
            ("P11GATE_AUDIT", "off"),
        ],
    );
    let config = bed.config();
    let want = [
        kit_seal_line(&gcm, 4),
        line(
            "FAIL",
            "config",
            &format!(
                "config {}: [soft_token] slots = 0: it must be 1 to 64",
                config.display()
            ),
        ),
        hint("fix p11gate's configuration (p11gate config check FILE shows the details)"),
        line(
            "FAIL",
            "library",
            &format!("{}: C_Initialize returned CKR_GENERAL_ERROR", module.display()),
        ),
        hint("p11gate could not start with this configuration: see the config line above and p11gate's log (P11GATE_LOG, [log] target)"),
        line("SKIP", "token", "not checked: the library did not load"),
        line("SKIP", "login", "not checked: the library did not load"),
        line("SKIP", "mechanism", "not checked: the library did not load"),
        line("SKIP", "key", "not checked: the library did not load"),
        line("SKIP", "round-trip", "not checked: the library did not load"),
        "result: FAIL (2 checks failed, 5 not checked)".into(),
    ];
    assert_eq!((code, out), (1, text_of(&want)));
}

/// Rotation: the new key_label will be generated, but default_key_label names the key of older
/// entries, which must still be there (it is never generated). The token is chosen by slot.
#[test]
fn rotation_needs_the_old_key() {
    let bed = Bed::soft("vault", 1);
    let module = common::module();
    let vault = bed.write(
        "vault.hcl",
        &stanza(
            &module,
            "slot = \"0\"",
            "0x1087",
            "  key_label = \"vault-aes-key-2\"\n  default_key_label = \"vault-aes-key\"\n  generate_key = \"true\"\n",
        ),
    );
    let args = ["--vault-config", vault.to_str().unwrap()];
    let env = [("VAULT_HSM_PIN", USER_PIN)];
    let head = [
        line(
            "PASS",
            "seal",
            &format!(
                "seal \"pkcs11\" at {}:{SEAL_LINE}; from the environment: VAULT_HSM_PIN",
                vault.display()
            ),
        ),
        soft_config_line(&bed),
        library_line(&module),
        line("PASS", "token", "slot 0: token \"vault\""),
        line("PASS", "login", "the PIN from env://VAULT_HSM_PIN logs in to token \"vault\""),
        line("PASS", "mechanism", "CKM_AES_GCM (0x1087): encrypt and decrypt allowed"),
        line("PASS", "key", "key_label \"vault-aes-key-2\": not found, and Vault will generate it (generate_key = true): CKM_AES_KEY_GEN (0x1080) is allowed and a read-write session opens"),
    ];
    let round_trip = line(
        "PASS",
        "round-trip",
        "AES-GCM: 32 random bytes encrypted and decrypted with a temporary session key (the key does not exist yet)",
    );
    let mut want = head.to_vec();
    want.extend([
        line("FAIL", "default-key", "default_key_label \"vault-aes-key\": no key with this label on token \"vault\""),
        hint("default_key_label names the key of entries sealed before a rotation: keep that key on the token, or unset default_key_label"),
        round_trip.clone(),
        "result: FAIL (1 check failed)".into(),
    ]);
    assert_eq!(bed.doctor(&args, &env), (1, text_of(&want)));

    bed.pkcs11_tool_keygen(&["--keygen", "--key-type", "AES:32"], "vault-aes-key");
    let mut want = head.to_vec();
    want.extend([
        line(
            "PASS",
            "default-key",
            "default_key_label \"vault-aes-key\": AES secret key found",
        ),
        round_trip,
        "result: PASS (9 checks passed)".into(),
    ]);
    assert_eq!(bed.doctor(&args, &env), (0, text_of(&want)));
}
