//! Two processes on one token at the same time: the soft token (one `P11GATE_HOME`) and a
//! SoftHSMv2 token (one `SOFTHSM2_CONF`), each through its own `libp11gate.so` instance.
//!
//! Each process is this test binary run again (the ignored test `child_process`). Both log in
//! and, for a few seconds, make token AES keys of their own, encrypt a known plaintext under
//! each and leave the ciphertext in a shared directory; they find each key the other process
//! made, by label, as soon as its ciphertext appears, and decrypt it. At the end each one sees
//! exactly the keys of both, while both still run and again after a fresh C_Initialize (the soft
//! token's store is shared under file locks with a generation counter; SoftHSMv2 re-reads its
//! object store), and no call failed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use common::SoftHsm;

/// Which process a child is ("a" or "b").
const ROLE_VAR: &str = "P11GATE_TWO_ROLE";
/// The directory both children share (ciphertexts, readiness markers).
const DIR_VAR: &str = "P11GATE_TWO_DIR";
const LABEL_VAR: &str = "P11GATE_TWO_LABEL";
const PIN_VAR: &str = "P11GATE_TWO_PIN";
/// "1": the processes take turns to initialise and log in, to make keys and to initialise again
/// at the end (and use the keys concurrently in between).
const TURNS_VAR: &str = "P11GATE_TWO_TURNS";
/// Keys each process makes.
const KEYS: usize = 24;
/// How long a child waits for the other one at most (a hang fails, not a slow machine).
const PEER_WAIT: Duration = Duration::from_secs(120);
const IV: [u8; 16] = *b"two-processes-iv";

const SOFT_SO_PIN: &str = "two-proc-so-pin-5120";
const SOFT_USER_PIN: &str = "two-proc-user-pin-6631";

fn peer_of(role: &str) -> &'static str {
    if role == "a" {
        "b"
    } else {
        "a"
    }
}

fn key_label(role: &str, i: usize) -> String {
    format!("two-{role}-{i:02}")
}

/// 48 bytes: 64 of ciphertext with AES-CBC-PAD.
fn plaintext(role: &str, i: usize) -> Vec<u8> {
    format!("{:<48}", format!("plaintext under key {role}-{i:02}")).into_bytes()
}

/// Writes `bytes` to `path` atomically (the other process reads it whole or not at all).
fn publish(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn find_one(s: &Session, label: &str) -> ObjectHandle {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .unwrap_or_else(|e| panic!("C_FindObjects({label}): {e}"));
    assert_eq!(found.len(), 1, "keys labelled {label}");
    found[0]
}

fn wait_for(path: &Path, what: &str) {
    let started = Instant::now();
    while !path.exists() {
        assert!(started.elapsed() < PEER_WAIT, "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The module, initialised, and a read-write session logged in on the token labelled `label`.
fn open_logged_in(label: &str, pin: &str) -> (Pkcs11, Session) {
    let p = Pkcs11::new(common::module()).expect("load libp11gate.so");
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slots = p.get_slots_with_token().expect("C_GetSlotList");
    let infos: Vec<_> = slots.iter().map(|&s| p.get_token_info(s)).collect();
    let slot = slots
        .iter()
        .zip(&infos)
        .find(|(_, t)| t.as_ref().is_ok_and(|t| t.label() == label))
        .map(|(&s, _)| s)
        .unwrap_or_else(|| panic!("no token labelled {label}: {slots:?} {infos:?}"));
    let s = p.open_rw_session(slot).expect("C_OpenSession");
    s.login(UserType::User, Some(&AuthPin::new(pin.into())))
        .expect("C_Login");
    (p, s)
}

/// The labels of every secret key the session sees, sorted.
fn all_labels(s: &Session) -> Vec<String> {
    let mut labels: Vec<String> = s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .expect("C_FindObjects")
        .into_iter()
        .map(|h| {
            let attrs = s
                .get_attributes(h, &[AttributeType::Label])
                .expect("C_GetAttributeValue");
            match attrs.first() {
                Some(Attribute::Label(l)) => String::from_utf8_lossy(l).into_owned(),
                other => panic!("no label: {other:?}"),
            }
        })
        .collect();
    labels.sort();
    labels
}

/// Finds the other process's key `j` and decrypts its published ciphertext.
fn check_peer_key(s: &Session, dir: &Path, peer: &str, j: usize) {
    let label = key_label(peer, j);
    let ct = std::fs::read(dir.join(format!("{label}.ct"))).expect("the other's ciphertext");
    let key = find_one(s, &label);
    let back = s
        .decrypt(&Mechanism::AesCbcPad(IV), key, &ct)
        .unwrap_or_else(|e| panic!("C_Decrypt with {label}: {e}"));
    assert_eq!(back, plaintext(peer, j), "{label}");
}

/// Runs `f`; when taking turns, "a" first, and "b" once "a" is through.
fn in_turn(turns: bool, role: &str, dir: &Path, name: &str, f: &mut dyn FnMut()) {
    if turns && role == "b" {
        wait_for(
            &dir.join(format!("{name}-a")),
            "the other process never took its turn",
        );
    }
    f();
    publish(&dir.join(format!("{name}-{role}")), b"");
}

/// The child: one process's part.
#[test]
#[ignore = "run by the two-process tests as a child process"]
fn child_process() {
    let role = std::env::var(ROLE_VAR).expect("role");
    let peer = peer_of(&role);
    let dir = PathBuf::from(std::env::var(DIR_VAR).expect("dir"));
    let label = std::env::var(LABEL_VAR).expect("label");
    let pin = std::env::var(PIN_VAR).expect("pin");
    let turns = std::env::var(TURNS_VAR).is_ok_and(|v| v == "1");
    let ct_path = |who: &str, i: usize| dir.join(format!("{}.ct", key_label(who, i)));

    let step = |name: &str, f: &mut dyn FnMut()| in_turn(turns, &role, &dir, name, f);

    let mut opened = None;
    step("open", &mut || opened = Some(open_logged_in(&label, &pin)));
    let (p, s) = opened.expect("opened");
    // Start together.
    publish(&dir.join(format!("ready-{role}")), b"");
    wait_for(
        &dir.join(format!("ready-{peer}")),
        "the other process never got ready",
    );

    let cbc = Mechanism::AesCbcPad(IV);
    let mut verified = [false; KEYS];
    let mut mine = Vec::new();
    for i in 0..KEYS {
        if turns {
            // "a" makes key i after "b" made key i - 1, "b" after "a" made key i.
            let turn = if role == "a" {
                i.checked_sub(1)
            } else {
                Some(i)
            };
            if let Some(j) = turn {
                wait_for(&ct_path(peer, j), "the other process's key never appeared");
                check_peer_key(&s, &dir, peer, j);
                verified[j] = true;
            }
        }
        let key = s
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::ValueLen(32.into()),
                    Attribute::Label(key_label(&role, i).into_bytes()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                ],
            )
            .unwrap_or_else(|e| panic!("C_GenerateKey({}): {e}", key_label(&role, i)));
        let ct = s
            .encrypt(&cbc, key, &plaintext(&role, i))
            .expect("C_Encrypt");
        assert_eq!(ct.len(), 64);
        publish(&ct_path(&role, i), &ct);
        mine.push(key);
        // Use every key of this process again, and whatever the other one made so far.
        for (k, &h) in mine.iter().enumerate() {
            assert_eq!(find_one(&s, &key_label(&role, k)), h);
            let ct = s.encrypt(&cbc, h, &plaintext(&role, k)).expect("C_Encrypt");
            assert_eq!(
                s.decrypt(&cbc, h, &ct).expect("C_Decrypt"),
                plaintext(&role, k)
            );
        }
        for (j, done) in verified.iter_mut().enumerate() {
            if !*done && ct_path(peer, j).exists() {
                check_peer_key(&s, &dir, peer, j);
                *done = true;
            }
        }
    }
    for (j, done) in verified.iter_mut().enumerate() {
        if !*done {
            wait_for(&ct_path(peer, j), "the other process's key never appeared");
            check_peer_key(&s, &dir, peer, j);
            *done = true;
        }
    }
    let mut expected: Vec<String> = (0..KEYS)
        .flat_map(|i| [key_label("a", i), key_label("b", i)])
        .collect();
    expected.sort();
    let live = all_labels(&s);
    assert_eq!(live, expected, "the keys seen while both processes run");

    // Once both are done: initialised afresh, each sees exactly the keys of both.
    publish(&dir.join(format!("done-{role}")), b"");
    wait_for(
        &dir.join(format!("done-{peer}")),
        "the other process never finished",
    );
    let mut fresh = Vec::new();
    let mut old = Some((p, s));
    step("reopen", &mut || {
        let (p, s) = old.take().expect("the first session");
        s.logout().expect("C_Logout");
        drop(s);
        p.finalize().expect("C_Finalize");
        let (p, s) = open_logged_in(&label, &pin);
        fresh = all_labels(&s);
        for j in 0..KEYS {
            check_peer_key(&s, &dir, peer, j);
        }
        drop(s);
        p.finalize().expect("C_Finalize");
    });
    assert_eq!(fresh, expected, "the keys seen after C_Initialize again");
    println!(
        "\nTWO-PROCESS {role}: made {KEYS} keys, decrypted under {} of the other's, saw {} keys, \
         then {} after C_Initialize again",
        verified.iter().filter(|v| **v).count(),
        live.len(),
        fresh.len()
    );
}

/// Runs both children at once with `env` and checks what they report.
fn run_both(env: &[(String, String)], dir: &Path, label: &str, pin: &str, turns: bool) {
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).expect("mkdir shared");
    let mut children = Vec::new();
    for role in ["a", "b"] {
        let mut env = env.to_vec();
        env.extend([
            (DIR_VAR.to_string(), shared.display().to_string()),
            (LABEL_VAR.to_string(), label.to_string()),
            (PIN_VAR.to_string(), pin.to_string()),
            (
                TURNS_VAR.to_string(),
                if turns { "1" } else { "0" }.to_string(),
            ),
            ("P11GATE_CONFIG".into(), "/nonexistent/p11gate.toml".into()),
            (
                "P11GATE_LOG".into(),
                dir.join(format!("p11gate-{role}.log"))
                    .display()
                    .to_string(),
            ),
            ("P11GATE_LOG_LEVEL".into(), "warn".into()),
            ("P11GATE_AUDIT".into(), "off".into()),
        ]);
        let child = common::child_test_command(ROLE_VAR, role, &env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a child");
        children.push((role, child));
    }
    for (role, child) in children {
        let out = child.wait_with_output().expect("wait for a child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let log =
            std::fs::read_to_string(dir.join(format!("p11gate-{role}.log"))).unwrap_or_default();
        let all = format!(
            "{stdout}\n{}\n--- p11gate log ---\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "process {role} failed:\n{all}");
        let want = format!(
            "TWO-PROCESS {role}: made {KEYS} keys, decrypted under {KEYS} of the other's, saw {} \
             keys, then {} after C_Initialize again",
            2 * KEYS,
            2 * KEYS
        );
        assert!(
            stdout.lines().any(|l| l == want),
            "expected \"{want}\" from process {role}:\n{all}"
        );
        assert_eq!(log, "", "process {role} logged warnings or errors");
    }
}

/// The soft token: both processes make keys at full speed at the same time (its store is shared
/// under file locks, and a generation counter tells each process to reload what the other wrote).
#[test]
fn two_processes_share_one_soft_token() {
    let home = tempfile::tempdir().expect("tempdir");
    let env = vec![(
        "P11GATE_HOME".to_string(),
        home.path().join("soft").display().to_string(),
    )];
    use std::io::Write;
    let mut init = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["token", "init", "--label", "two-proc-soft"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("P11GATE_CONFIG", "/nonexistent/p11gate.toml")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("p11gate token init");
    init.stdin
        .take()
        .unwrap()
        .write_all(format!("{SOFT_SO_PIN}\n{SOFT_USER_PIN}\n").as_bytes())
        .unwrap();
    let out = init.wait_with_output().unwrap();
    assert!(out.status.success(), "token init: {out:?}");
    run_both(&env, home.path(), "two-proc-soft", SOFT_USER_PIN, false);
}

/// SoftHSMv2 takes turns. Two processes making token objects at the same moment lose sight of
/// each other's (its token generation counter is read, incremented and written back by each
/// writer, so one process's bump can hide the other's), and a C_Initialize while the other
/// process writes may answer C_GetTokenInfo with CKR_GENERAL_ERROR or miss the token: both
/// reproduced with SoftHSMv2 loaded directly, without p11gate. So the processes initialise and
/// log in one after the other, each makes its next key only after it found the other's latest,
/// and they initialise again one after the other; finds, encryption and decryption run
/// concurrently.
#[test]
fn two_processes_share_one_softhsm_token() {
    let hsm = SoftHsm::new();
    hsm.init_token("two-proc-hsm");
    let env: Vec<(String, String)> = hsm
        .gate_env()
        .into_iter()
        .filter(|(k, _)| k != "P11GATE_LOG" && k != "P11GATE_CONFIG")
        .collect();
    run_both(&env, hsm.dir(), "two-proc-hsm", common::USER_PIN, true);
}
