//! Black-box tests with OpenSC's `pkcs11-tool` (Debian 12: OpenSC 0.23) as the client.
//!
//! Every scenario runs `pkcs11-tool` twice as a subprocess: once with `--module` naming
//! SoftHSMv2 directly ("direct") and once naming the built `libp11gate.so` with SoftHSMv2 as its
//! upstream ("gate"). In single-upstream mode p11gate passes slot ids through unchanged, so the
//! two outputs must be the same byte for byte. The only intentional difference is the library
//! part of `--show-info` (C_GetInfo names p11gate). Where a comparison needs normalising, a
//! comment says what is random or arbitrary about the part that is normalised.
//!
//! Each test has its own SoftHSMv2 directory, so the tests can run in parallel: the module is
//! loaded in the `pkcs11-tool` child process, never in this one.
//!
//! The gate side logs at trace level to a file in the test's directory (not to stderr, so that
//! `pkcs11-tool`'s own stderr can be compared), and after every gate run that file is checked
//! for the PINs; the tests that handle plaintext check the log for it too.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{SoftHsm, SO_PIN, USER_PIN};

/// A PIN that is wrong for every token made by [`SoftHsm::init_token`].
const WRONG_PIN: &str = "wrong-pin-31337";

/// Which module `pkcs11-tool` loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// SoftHSMv2's own module.
    Direct,
    /// `libp11gate.so`, forwarding to SoftHSMv2.
    Gate,
}

/// What one `pkcs11-tool` run returned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ToolOutput {
    /// Exit code (`None` if killed by a signal).
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl ToolOutput {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with everything printed unless the run exited 0.
    fn ok(self, what: &str) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "{what}: pkcs11-tool failed\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout(),
            self.stderr
        );
        self
    }
}

/// Runs `pkcs11-tool --module <module> <args>` with exactly `envs` (plus `PATH`) in its
/// environment and returns its exit status, stdout and stderr.
fn run_pkcs11_tool(module: &Path, envs: &[(String, String)], args: &[&str]) -> ToolOutput {
    let mut cmd = Command::new(common::require_program("pkcs11-tool"));
    // A clean environment: no P11GATE_* or SOFTHSM2_CONF leaks in from the test runner.
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(envs.iter().map(|(k, v)| (k, v)));
    cmd.arg("--module").arg(module).args(args);
    let out = cmd.output().expect("run pkcs11-tool");
    ToolOutput {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// p11gate's log file for the gate runs of `hsm`.
fn gate_log(hsm: &SoftHsm) -> PathBuf {
    hsm.dir().join("p11gate.log")
}

/// [`SoftHsm::gate_env`], but logging at trace level to [`gate_log`] instead of stderr.
fn gate_env_logging_to_file(hsm: &SoftHsm) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = hsm
        .gate_env()
        .into_iter()
        .filter(|(k, _)| k != "P11GATE_LOG" && k != "P11GATE_LOG_LEVEL")
        .collect();
    env.push(("P11GATE_LOG".into(), gate_log(hsm).display().to_string()));
    env.push(("P11GATE_LOG_LEVEL".into(), "trace".into()));
    env
}

/// Runs `pkcs11-tool` against `hsm`'s tokens through `via`.
fn tool(hsm: &SoftHsm, via: Via, args: &[&str]) -> ToolOutput {
    match via {
        Via::Direct => {
            let env = [("SOFTHSM2_CONF".to_string(), hsm.conf.display().to_string())];
            run_pkcs11_tool(&common::softhsm_module(), &env, args)
        }
        Via::Gate => {
            let out = run_pkcs11_tool(&common::module(), &gate_env_logging_to_file(hsm), args);
            assert_log_free_of(hsm, &[]);
            out
        }
    }
}

/// The gate log exists, is not empty (so the search below means something) and contains none of
/// the PINs nor any of `secrets` (raw, or as lower- or upper-case hex).
fn assert_log_free_of(hsm: &SoftHsm, secrets: &[&[u8]]) {
    let path = gate_log(hsm);
    let log = std::fs::read(&path).unwrap_or_default();
    assert!(
        !log.is_empty(),
        "P11GATE_LOG={} with P11GATE_LOG_LEVEL=trace wrote nothing: the check that no secret is \
         logged would be vacuous",
        path.display()
    );
    let pins = [USER_PIN.as_bytes(), SO_PIN.as_bytes(), WRONG_PIN.as_bytes()];
    for secret in pins.iter().chain(secrets) {
        let lower: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let upper = lower.to_uppercase();
        for needle in [secret.to_vec(), lower.into_bytes(), upper.into_bytes()] {
            assert!(
                !log.windows(needle.len()).any(|w| w == needle.as_slice()),
                "p11gate's log {} contains a secret ({:?})",
                path.display(),
                String::from_utf8_lossy(&needle)
            );
        }
    }
}

/// The slot id of slot index 0 as `pkcs11-tool` prints it (`0x1ec86f`), read directly from
/// SoftHSMv2. SoftHSMv2 derives it from the token's random serial number.
fn first_slot_id(hsm: &SoftHsm) -> String {
    let out = tool(hsm, Via::Direct, &["--list-token-slots"]).ok("list token slots");
    let stdout = out.stdout();
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Slot 0 ("))
        .unwrap_or_else(|| panic!("no slot 0 in:\n{stdout}"));
    let id = &line["Slot 0 (".len()..line.find(')').expect("closing parenthesis")];
    assert!(id.starts_with("0x"), "slot id {id:?} in {line:?}");
    id.to_string()
}

/// Replaces `slot_id` by a placeholder: used only to compare runs against two different tokens,
/// whose slot ids differ because SoftHSMv2 derives them from a random serial number.
fn without_slot_id(text: &str, slot_id: &str) -> String {
    text.replace(slot_id, "0xSLOT")
}

/// `--list-objects` output as a sorted list of object blocks (a block is a header line and its
/// indented lines). PKCS#11 leaves the order of C_FindObjects results unspecified and
/// SoftHSMv2's order is not stable between processes, so only the set of objects is compared.
fn object_blocks(listing: &str) -> Vec<String> {
    let mut blocks: Vec<String> = Vec::new();
    for line in listing.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            let block = blocks
                .last_mut()
                .expect("indented line before any object header");
            block.push('\n');
            block.push_str(line);
        } else {
            blocks.push(line.to_string());
        }
    }
    blocks.sort();
    blocks
}

/// Asserts that the direct and gate runs printed the same and exited the same.
fn assert_same(what: &str, direct: &ToolOutput, gate: &ToolOutput) {
    assert_eq!(
        direct.stdout(),
        gate.stdout(),
        "{what}: stdout differs (left: direct, right: through p11gate)"
    );
    assert_eq!(
        direct.stderr, gate.stderr,
        "{what}: stderr differs (left: direct, right: through p11gate)"
    );
    assert_eq!(
        direct.code, gate.code,
        "{what}: exit code differs (left: direct, right: through p11gate)"
    );
}

/// Runs the same arguments directly and through p11gate against the same token and asserts the
/// results are identical; returns the direct result.
fn same_both_ways(hsm: &SoftHsm, args: &[&str]) -> ToolOutput {
    let direct = tool(hsm, Via::Direct, args);
    let gate = tool(hsm, Via::Gate, args);
    assert_same(&args.join(" "), &direct, &gate);
    direct
}

fn write_file(hsm: &SoftHsm, name: &str, data: &[u8]) -> String {
    let path = hsm.dir().join(name);
    std::fs::write(&path, data).expect("write test file");
    path.display().to_string()
}

fn read_file(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn path_in(hsm: &SoftHsm, name: &str) -> String {
    hsm.dir().join(name).display().to_string()
}

const AES_KEYGEN_STDOUT: &str = "Key generated:
Secret Key Object; AES length 32
  label:      aes-key
  ID:         a1
  Usage:      encrypt, decrypt, verify, wrap, unwrap
  Access:     never extractable, local
";

const RSA_KEYGEN_STDOUT: &str = "Key pair generated:
Private Key Object; RSA 
  label:      rsa-key
  ID:         b2
  Usage:      decrypt, sign, unwrap
  Access:     sensitive, always sensitive, never extractable, local
Public Key Object; RSA 2048 bits
  label:      rsa-key
  ID:         b2
  Usage:      encrypt, verify, wrap
  Access:     local
";

/// pkcs11-tool reads CKA_VALUE of each secret or private key it prints; SoftHSMv2 refuses.
const SENSITIVE_WARNING: &str =
    "warning: PKCS11 function C_GetAttributeValue(VALUE) failed: rv = CKR_ATTRIBUTE_SENSITIVE (0x11)\n";

fn using_slot_line(slot_id: &str) -> String {
    format!("Using slot 0 with a present token ({slot_id})\n")
}

fn keygen_aes(hsm: &SoftHsm, via: Via, label: &str, id: &str) -> ToolOutput {
    tool(
        hsm,
        via,
        &[
            "--login",
            "--pin",
            USER_PIN,
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            label,
            "--id",
            id,
        ],
    )
}

fn keygen_rsa(hsm: &SoftHsm, via: Via, label: &str, id: &str) -> ToolOutput {
    tool(
        hsm,
        via,
        &[
            "--login",
            "--pin",
            USER_PIN,
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--label",
            label,
            "--id",
            id,
        ],
    )
}

#[test]
fn show_info_names_p11gate_and_keeps_the_slot_and_token_part() {
    let hsm = SoftHsm::new();
    hsm.init_token("show-info");
    let slot_id = first_slot_id(&hsm);
    // --list-token-slots after --show-info prints the slot and token part on stdout as well.
    let args = ["--show-info", "--list-token-slots"];
    let direct = tool(&hsm, Via::Direct, &args).ok("direct --show-info");
    let gate = tool(&hsm, Via::Gate, &args).ok("gate --show-info");

    let direct_out = direct.stdout();
    let gate_out = gate.stdout();
    let direct_lines: Vec<&str> = direct_out.lines().collect();
    let gate_lines: Vec<&str> = gate_out.lines().collect();

    // The library part (C_GetInfo) is the one intentional difference.
    assert_eq!(
        direct_lines[..3],
        [
            "Cryptoki version 2.40",
            "Manufacturer     SoftHSM",
            "Library          Implementation of PKCS11 (ver 2.6)",
        ],
        "SoftHSMv2 baseline"
    );
    assert!(
        gate_lines.len() > 3,
        "gate --show-info printed too little:\n{gate_out}"
    );
    assert_eq!(gate_lines[0], "Cryptoki version 2.40", "gate:\n{gate_out}");
    assert_eq!(
        gate_lines[1], "Manufacturer     p11gate",
        "gate:\n{gate_out}"
    );
    let library = gate_lines[2];
    let description = library
        .strip_prefix("Library          ")
        .unwrap_or_else(|| panic!("library line {library:?}"));
    let (name, version) = description
        .rsplit_once(" (ver ")
        .unwrap_or_else(|| panic!("library line {library:?} has no version"));
    assert!(
        !name.trim().is_empty(),
        "empty library description in {library:?}"
    );
    let version = version.strip_suffix(')').expect("version in parentheses");
    let (major, minor) = version.split_once('.').expect("major.minor");
    assert!(
        major.parse::<u8>().is_ok() && minor.parse::<u8>().is_ok(),
        "library version {version:?} is not major.minor"
    );

    // The slot and token part is SoftHSMv2's, unchanged.
    assert_eq!(direct_lines[3], "Available slots:");
    assert_eq!(
        direct_lines[3..],
        gate_lines[3..],
        "slot/token part (left: direct, right: through p11gate)"
    );
    assert_eq!(
        direct_lines[4],
        format!("Slot 0 ({slot_id}): SoftHSM slot ID {slot_id}")
    );
    assert!(direct_out.contains("  token label        : show-info\n"));

    // --show-info alone: the slot it would use goes to stderr.
    let direct = tool(&hsm, Via::Direct, &["--show-info"]).ok("direct --show-info");
    let gate = tool(&hsm, Via::Gate, &["--show-info"]).ok("gate --show-info");
    assert_eq!(direct.stderr, using_slot_line(&slot_id));
    assert_eq!(
        gate.stderr, direct.stderr,
        "stderr (left: gate, right: direct)"
    );
    assert_eq!(gate.stdout(), gate_lines[..3].join("\n") + "\n");
}

#[test]
fn list_slots_is_identical() {
    let hsm = SoftHsm::new();
    hsm.init_token("list-slots");
    let slot_id = first_slot_id(&hsm);
    let all = same_both_ways(&hsm, &["--list-slots"]).ok("--list-slots");
    let stdout = all.stdout();
    assert!(stdout.starts_with(&format!(
        "Available slots:\nSlot 0 ({slot_id}): SoftHSM slot ID {slot_id}\n  token label        : list-slots\n"
    )));
    // SoftHSMv2 always offers one more slot with an uninitialised token.
    assert!(
        stdout.ends_with("  token state:   uninitialized\n"),
        "{stdout}"
    );
    let with_token = same_both_ways(&hsm, &["--list-token-slots"]).ok("--list-token-slots");
    assert!(with_token.stdout().contains("  serial num         : "));
}

#[test]
fn list_mechanisms_is_identical() {
    let hsm = SoftHsm::new();
    hsm.init_token("mechanisms");
    let slot_id = first_slot_id(&hsm);
    let direct = same_both_ways(&hsm, &["--list-mechanisms"]).ok("--list-mechanisms");
    let stdout = direct.stdout();
    assert!(stdout.starts_with("Supported mechanisms:\n"), "{stdout}");
    for line in [
        "  AES-CBC, keySize={16,32}, encrypt, decrypt, wrap\n",
        "  AES-CBC-PAD, keySize={16,32}, encrypt, decrypt\n",
        "  AES-GCM, keySize={16,32}, encrypt, decrypt\n",
        "  RSA-PKCS-OAEP, keySize={512,16384}, encrypt, decrypt, wrap, unwrap\n",
        "  SHA256-HMAC, keySize={32,512}, sign, verify\n",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    // SoftHSMv2 2.6.1 lists 70 mechanisms.
    assert_eq!(stdout.lines().count(), 1 + 70, "{stdout}");
    assert_eq!(direct.stderr, using_slot_line(&slot_id));
}

/// The same key generation on two identical tokens, one directly and one through p11gate, prints
/// the same; the objects each made list the same both ways.
#[test]
fn keygen_and_list_objects_match() {
    let direct_hsm = SoftHsm::new();
    direct_hsm.init_token("keygen");
    let gate_hsm = SoftHsm::new();
    gate_hsm.init_token("keygen");
    let direct_slot = first_slot_id(&direct_hsm);
    let gate_slot = first_slot_id(&gate_hsm);

    let mut results = Vec::new();
    for (hsm, via, slot_id) in [
        (&direct_hsm, Via::Direct, &direct_slot),
        (&gate_hsm, Via::Gate, &gate_slot),
    ] {
        let aes = keygen_aes(hsm, via, "aes-key", "a1").ok("keygen AES:32");
        assert_eq!(aes.stdout(), AES_KEYGEN_STDOUT, "{via:?}");
        let rsa = keygen_rsa(hsm, via, "rsa-key", "b2").ok("keypairgen rsa:2048");
        assert_eq!(rsa.stdout(), RSA_KEYGEN_STDOUT, "{via:?}");
        let listed_in = tool(hsm, via, &["--login", "--pin", USER_PIN, "--list-objects"])
            .ok("--list-objects logged in");
        let listed_out = tool(hsm, via, &["--list-objects"]).ok("--list-objects public");
        // Normalised: the two tokens' slot ids differ (random serial numbers).
        let normalise = |o: &ToolOutput| ToolOutput {
            code: o.code,
            stdout: without_slot_id(&o.stdout(), slot_id).into_bytes(),
            stderr: without_slot_id(&o.stderr, slot_id),
        };
        assert_eq!(
            aes.stderr,
            using_slot_line(slot_id) + SENSITIVE_WARNING + "\n",
            "{via:?} keygen stderr"
        );
        results.push([
            normalise(&aes),
            normalise(&rsa),
            normalise(&listed_in),
            normalise(&listed_out),
        ]);
    }
    let names = [
        "keygen",
        "keypairgen",
        "list-objects logged in",
        "list-objects public",
    ];
    for (i, name) in names.iter().enumerate() {
        let (d, g) = (&results[0][i], &results[1][i]);
        // Object listings: compared as sets (see object_blocks); the rest exactly.
        if name.starts_with("list-objects") {
            assert_eq!(
                object_blocks(&d.stdout()),
                object_blocks(&g.stdout()),
                "{name}"
            );
            assert_eq!(d.code, g.code, "{name}");
        } else {
            assert_same(name, d, g);
        }
    }
    // Logged in, all three objects are visible; without login the private key is not.
    let expected_private = object_blocks(
        &(AES_KEYGEN_STDOUT.replace("Key generated:\n", "")
            + &RSA_KEYGEN_STDOUT.replace("Key pair generated:\n", "")),
    );
    assert_eq!(object_blocks(&results[0][2].stdout()), expected_private);
    let public = object_blocks(&results[0][3].stdout());
    assert_eq!(public.len(), 2, "{public:?}");
    assert!(
        public.iter().all(|b| !b.starts_with("Private Key Object")),
        "{public:?}"
    );

    // Cross check on each token: what p11gate generated lists the same directly and through
    // p11gate, and vice versa.
    for hsm in [&direct_hsm, &gate_hsm] {
        for args in [
            &["--login", "--pin", USER_PIN, "--list-objects"][..],
            &["--list-objects"][..],
        ] {
            let direct = tool(hsm, Via::Direct, args).ok("direct --list-objects");
            let gate = tool(hsm, Via::Gate, args).ok("gate --list-objects");
            assert_eq!(
                object_blocks(&direct.stdout()),
                object_blocks(&gate.stdout()),
                "{args:?}"
            );
            assert_eq!(direct.stderr, gate.stderr, "{args:?}");
        }
    }
}

#[test]
fn generate_random_returns_exact_sizes() {
    let hsm = SoftHsm::new();
    hsm.init_token("random");
    for via in [Via::Direct, Via::Gate] {
        for size in [1usize, 32, 100, 4096, 65_536, 1_000_000] {
            let file = path_in(&hsm, &format!("random-{via:?}-{size}"));
            tool(
                &hsm,
                via,
                &["--generate-random", &size.to_string(), "-o", &file],
            )
            .ok("--generate-random -o");
            assert_eq!(
                read_file(&file).len(),
                size,
                "{via:?} --generate-random {size}"
            );
        }
        // Without -o the bytes go to stdout.
        let a = tool(&hsm, via, &["--generate-random", "48"]).ok("--generate-random");
        let b = tool(&hsm, via, &["--generate-random", "48"]).ok("--generate-random");
        assert_eq!(a.stdout.len(), 48, "{via:?}");
        assert_eq!(b.stdout.len(), 48, "{via:?}");
        // Two 48-byte draws collide or are all zero with probability 2^-384.
        assert_ne!(a.stdout, b.stdout, "{via:?}: two random draws are equal");
        assert!(a.stdout.iter().any(|&x| x != 0), "{via:?}: all zero");
    }
}

/// Key pair generated through p11gate; the public key read both ways is the same; OpenSSL
/// encrypts with it (pkcs11-tool 0.23 encrypts only with secret keys); both ways decrypt.
#[test]
fn rsa_oaep_sha1_round_trip() {
    let hsm = SoftHsm::new();
    hsm.init_token("oaep");
    keygen_rsa(&hsm, Via::Gate, "rsa-key", "b2").ok("keypairgen through p11gate");

    let pub_direct = path_in(&hsm, "pub-direct.der");
    let pub_gate = path_in(&hsm, "pub-gate.der");
    for (via, file) in [(Via::Direct, &pub_direct), (Via::Gate, &pub_gate)] {
        tool(
            &hsm,
            via,
            &[
                "--read-object",
                "--type",
                "pubkey",
                "--id",
                "b2",
                "-o",
                file,
            ],
        )
        .ok("--read-object pubkey");
    }
    let der = read_file(&pub_direct);
    assert!(der.len() > 256, "public key DER is {} bytes", der.len());
    assert_eq!(
        der,
        read_file(&pub_gate),
        "public key read directly vs through p11gate"
    );

    let plaintext = b"vault seal data key: 0123456789abcdef0123456789abcdef";
    let pt = write_file(&hsm, "oaep.pt", plaintext);
    let ct = path_in(&hsm, "oaep.ct");
    let openssl = Command::new(common::require_program("openssl"))
        .args([
            "pkeyutl", "-encrypt", "-pubin", "-keyform", "DER", "-inkey", &pub_gate,
        ])
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha1",
        ])
        .args(["-pkeyopt", "rsa_mgf1_md:sha1", "-in", &pt, "-out", &ct])
        .output()
        .expect("openssl");
    assert!(
        openssl.status.success(),
        "openssl pkeyutl -encrypt: {}",
        String::from_utf8_lossy(&openssl.stderr)
    );
    assert_eq!(read_file(&ct).len(), 256, "RSA-2048 ciphertext length");

    let mut outputs = Vec::new();
    for via in [Via::Direct, Via::Gate] {
        let out_file = path_in(&hsm, &format!("oaep-{via:?}.dec"));
        let out = tool(
            &hsm,
            via,
            &[
                "--login",
                "--pin",
                USER_PIN,
                "--decrypt",
                "-m",
                "RSA-PKCS-OAEP",
                "--hash-algorithm",
                "SHA-1",
                "--mgf",
                "MGF1-SHA1",
                "--id",
                "b2",
                "-i",
                &ct,
                "-o",
                &out_file,
            ],
        )
        .ok("--decrypt RSA-PKCS-OAEP SHA-1");
        assert_eq!(read_file(&out_file), plaintext, "{via:?} decrypted");
        outputs.push(out);
    }
    assert_same("OAEP SHA-1 decrypt", &outputs[0], &outputs[1]);

    // SoftHSMv2 2.6 refuses OAEP with SHA-256: the refusal passes through unchanged.
    let sha256 = [
        "--login",
        "--pin",
        USER_PIN,
        "--decrypt",
        "-m",
        "RSA-PKCS-OAEP",
        "--hash-algorithm",
        "SHA256",
        "--mgf",
        "MGF1-SHA256",
        "--id",
        "b2",
        "-i",
        &ct,
    ];
    let refused = same_both_ways(&hsm, &sha256);
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains(
            "error: PKCS11 function C_DecryptInit failed: rv = CKR_ARGUMENTS_BAD (0x7)\n"
        ),
        "{}",
        refused.stderr
    );
    assert_log_free_of(&hsm, &[plaintext]);
}

/// AES-CBC and AES-CBC-PAD with a fixed IV are deterministic: the same key gives the same
/// ciphertext directly and through p11gate.
#[test]
fn aes_cbc_encrypt_decrypt_match() {
    let hsm = SoftHsm::new();
    hsm.init_token("aes-cbc");
    keygen_aes(&hsm, Via::Gate, "aes-key", "a1").ok("keygen through p11gate");
    let iv = "000102030405060708090a0b0c0d0e0f";

    // 64 bytes for AES-CBC (a multiple of the block size), 37 for AES-CBC-PAD.
    let block_plain: Vec<u8> = (0u8..64)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let pad_plain = b"37 bytes: not a multiple of 16 bytes.".to_vec();
    for (mech, plain, ct_len) in [
        ("AES-CBC", &block_plain, 64usize),
        ("AES-CBC-PAD", &pad_plain, 48),
    ] {
        let pt = write_file(&hsm, &format!("{mech}.pt"), plain);
        let mut ciphertexts = Vec::new();
        let mut runs = Vec::new();
        for via in [Via::Direct, Via::Gate] {
            let ct = path_in(&hsm, &format!("{mech}-{via:?}.ct"));
            let dec = path_in(&hsm, &format!("{mech}-{via:?}.dec"));
            let base = [
                "--login", "--pin", USER_PIN, "-m", mech, "--iv", iv, "--id", "a1",
            ];
            let enc = tool(
                &hsm,
                via,
                &[&base[..], &["--encrypt", "-i", &pt, "-o", &ct]].concat(),
            )
            .ok("--encrypt");
            let ciphertext = read_file(&ct);
            assert_eq!(ciphertext.len(), ct_len, "{via:?} {mech}");
            assert_ne!(
                &ciphertext[..plain.len().min(ct_len)],
                &plain[..plain.len().min(ct_len)]
            );
            // Decrypt what this side encrypted.
            let decr = tool(
                &hsm,
                via,
                &[&base[..], &["--decrypt", "-i", &ct, "-o", &dec]].concat(),
            )
            .ok("--decrypt");
            assert_eq!(&read_file(&dec), plain, "{via:?} {mech} round trip");
            ciphertexts.push(ciphertext);
            runs.push((enc, decr));
        }
        assert_eq!(
            ciphertexts[0], ciphertexts[1],
            "{mech}: direct vs p11gate ciphertext"
        );
        assert_same(&format!("{mech} encrypt"), &runs[0].0, &runs[1].0);
        assert_same(&format!("{mech} decrypt"), &runs[0].1, &runs[1].1);
        assert_log_free_of(&hsm, &[plain]);
    }
}

/// `pkcs11-tool --test` prints no random values (checked: two direct runs print the same), so
/// its output is compared without normalisation. On SoftHSMv2 2.6 it ends with its OAEP test
/// failing (pkcs11-tool uses SHA-256 and a label, SoftHSMv2 supports only SHA-1): that failure
/// must come through p11gate unchanged.
#[test]
fn self_test_matches() {
    let hsm = SoftHsm::new();
    hsm.init_token("self-test");
    keygen_aes(&hsm, Via::Direct, "aes-key", "a1").ok("keygen");
    keygen_rsa(&hsm, Via::Direct, "rsa-key", "b2").ok("keypairgen");
    let args = ["--test", "--login", "--pin", USER_PIN];
    let first = tool(&hsm, Via::Direct, &args);
    let direct = same_both_ways(&hsm, &args);
    assert_eq!(
        first, direct,
        "two direct runs differ: the output has something random"
    );
    let stdout = direct.stdout();
    for line in [
        "C_SeedRandom() and C_GenerateRandom():\n  seems to be OK\n",
        "  all 4 digest functions seem to work\n",
        "  SHA256: OK\n",
        "    RSA-PKCS: OK\n    SHA1-RSA-PKCS: OK\n",
        "Decryption (currently only for RSA)\n  testing key 0 (rsa-key)\n",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert_eq!(direct.code, Some(1));
    assert!(
        direct
            .stderr
            .ends_with("error: PKCS11 function C_DecryptInit failed: rv = CKR_ARGUMENTS_BAD (0x7)\nAborting.\n"),
        "{}",
        direct.stderr
    );
}

#[test]
fn wrong_pin_fails_the_same_way() {
    let hsm = SoftHsm::new();
    hsm.init_token("wrong-pin");
    let slot_id = first_slot_id(&hsm);
    let failed = same_both_ways(&hsm, &["--login", "--pin", WRONG_PIN, "--list-objects"]);
    assert_eq!(failed.code, Some(1));
    assert_eq!(
        failed.stderr,
        using_slot_line(&slot_id)
            + "error: PKCS11 function C_Login failed: rv = CKR_PIN_INCORRECT (0xa0)\nAborting.\n"
    );
    assert_eq!(failed.stdout(), "");
    // Both failures were counted by SoftHSMv2, and both ways show it.
    let slots = same_both_ways(&hsm, &["--list-token-slots"]).ok("--list-token-slots");
    assert!(
        slots.stdout().contains("user PIN count low"),
        "{}",
        slots.stdout()
    );
    // The right PIN still works through p11gate.
    tool(
        &hsm,
        Via::Gate,
        &["--login", "--pin", USER_PIN, "--list-objects"],
    )
    .ok("right PIN after a wrong one");
}

#[test]
fn missing_upstream_fails_initialize_with_general_error() {
    let hsm = SoftHsm::new();
    hsm.init_token("no-upstream");
    let mut env: Vec<(String, String)> = hsm
        .gate_env()
        .into_iter()
        .filter(|(k, _)| k != "P11GATE_UPSTREAM" && k != "P11GATE_LOG")
        .collect();
    env.push(("P11GATE_UPSTREAM".into(), "/nonexistent/x.so".into()));
    env.push(("P11GATE_LOG".into(), "stderr".into()));
    let out = run_pkcs11_tool(&common::module(), &env, &["--list-slots"]);
    assert_eq!(out.code, Some(1), "stderr:\n{}", out.stderr);
    assert_eq!(out.stdout(), "", "stderr:\n{}", out.stderr);
    assert!(
        out.stderr
            .contains("error: PKCS11 function C_Initialize failed: rv = CKR_GENERAL_ERROR (0x5)\n"),
        "{}",
        out.stderr
    );
    let reasons: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("cannot load upstream"))
        .collect();
    assert_eq!(reasons.len(), 1, "{}", out.stderr);
    assert!(
        reasons[0].contains("cannot load upstream /nonexistent/x.so:"),
        "{}",
        out.stderr
    );
}

/// Vault's HMAC key: a generic secret made through p11gate; CKM_SHA256_HMAC is deterministic,
/// so both ways give the same MAC, and each way verifies it.
#[test]
fn hmac_sha256_sign_verify_match() {
    let hsm = SoftHsm::new();
    hsm.init_token("hmac");
    let keygen = tool(
        &hsm,
        Via::Gate,
        &[
            "--login",
            "--pin",
            USER_PIN,
            "--keygen",
            "--key-type",
            "GENERIC:32",
            "--label",
            "hmac-key",
            "--id",
            "c3",
            "--usage-sign",
        ],
    )
    .ok("keygen GENERIC:32");
    assert!(
        keygen
            .stdout()
            .starts_with("Key generated:\nSecret Key Object; Generic secret length 32\n"),
        "{}",
        keygen.stdout()
    );

    let data = b"entry to authenticate";
    let input = write_file(&hsm, "hmac.in", data);
    let tampered = write_file(&hsm, "hmac.tampered", b"entry to authenticatE");
    let base = [
        "--login",
        "--pin",
        USER_PIN,
        "-m",
        "SHA256-HMAC",
        "--id",
        "c3",
    ];
    let mut macs = Vec::new();
    let mut signs = Vec::new();
    for via in [Via::Direct, Via::Gate] {
        let mac = path_in(&hsm, &format!("hmac-{via:?}.mac"));
        signs.push(
            tool(
                &hsm,
                via,
                &[&base[..], &["--sign", "-i", &input, "-o", &mac]].concat(),
            )
            .ok("--sign SHA256-HMAC"),
        );
        let bytes = read_file(&mac);
        assert_eq!(bytes.len(), 32, "{via:?} HMAC-SHA256 length");
        macs.push((mac, bytes));
    }
    assert_eq!(macs[0].1, macs[1].1, "MAC directly vs through p11gate");
    assert_same("--sign SHA256-HMAC", &signs[0], &signs[1]);

    // Each way verifies the other's MAC, and rejects it for other data (pkcs11-tool 0.23 says
    // so on stdout and still exits 0).
    let valid = tool(
        &hsm,
        Via::Gate,
        &[
            &base[..],
            &["--verify", "-i", &input, "--signature-file", &macs[0].0],
        ]
        .concat(),
    )
    .ok("gate --verify");
    assert_eq!(valid.stdout(), "Signature is valid\n");
    let valid = tool(
        &hsm,
        Via::Direct,
        &[
            &base[..],
            &["--verify", "-i", &input, "--signature-file", &macs[1].0],
        ]
        .concat(),
    )
    .ok("direct --verify");
    assert_eq!(valid.stdout(), "Signature is valid\n");
    let invalid = same_both_ways(
        &hsm,
        &[
            &base[..],
            &["--verify", "-i", &tampered, "--signature-file", &macs[1].0],
        ]
        .concat(),
    );
    assert_eq!(invalid.stdout(), "Invalid signature\n");
    assert_log_free_of(&hsm, &[data]);
}

/// C_Digest through p11gate gives the same SHA-256 as SoftHSMv2 directly and as coreutils.
#[test]
fn digest_sha256_matches() {
    let hsm = SoftHsm::new();
    hsm.init_token("digest");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let input = write_file(&hsm, "digest.in", &data);
    let direct = same_both_ways(&hsm, &["--hash", "-m", "SHA256", "-i", &input]).ok("--hash");
    let hex: String = direct.stdout.iter().map(|b| format!("{b:02x}")).collect();
    let sha256sum = Command::new(common::require_program("sha256sum"))
        .arg(&input)
        .output()
        .expect("sha256sum");
    let expected = String::from_utf8_lossy(&sha256sum.stdout);
    assert_eq!(Some(hex.as_str()), expected.split_whitespace().next());
}
