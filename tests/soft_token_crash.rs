//! The soft token under kill -9 and under two processes at once, through the built
//! libp11gate.so: every key generation that was acknowledged to the application survives, the
//! store always loads, and two processes generating keys at once lose none.
//!
//! Children are this test binary run again (`child_process`), with `SOFT_CHILD` naming a role.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

const CHILD_VAR: &str = "SOFT_CHILD";
const SO_PIN: &str = "crash-so-pin-1177";
const USER_PIN: &str = "crash-user-pin-2288";

/// The child's side: `list` prints every key label, then `generate PREFIX N` makes token keys
/// `PREFIX-0`.. and prints each label once C_GenerateKey has returned.
#[test]
#[ignore = "run as a child by the other tests"]
fn child_process() {
    let Ok(role) = std::env::var(CHILD_VAR) else {
        return;
    };
    let p = Pkcs11::new(common::module()).expect("load");
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    let slot = p.get_slots_with_token().unwrap()[0];
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("C_Login");
    let mut out = std::io::stdout().lock();
    // The test harness has written "test child_process ... " without a newline: end that line
    // so that every line of ours stands alone.
    writeln!(out).unwrap();
    let keys = s
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .expect("C_FindObjects");
    for k in keys {
        let attrs = s.get_attributes(k, &[AttributeType::Label]).unwrap();
        if let Some(Attribute::Label(l)) = attrs.first() {
            writeln!(out, "have {}", String::from_utf8_lossy(l)).unwrap();
        }
    }
    writeln!(out, "listed").unwrap();
    out.flush().unwrap();
    let mut words = role.split(' ');
    if words.next() != Some("generate") {
        return;
    }
    let prefix = words.next().unwrap().to_string();
    let n: usize = words.next().unwrap().parse().unwrap();
    for i in 0..n {
        let label = format!("{prefix}-{i}");
        s.generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Label(label.clone().into_bytes()),
            ],
        )
        .expect("C_GenerateKey");
        writeln!(out, "made {label}").unwrap();
        out.flush().unwrap();
    }
}

fn init_home(home: &std::path::Path) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["token", "init", "--label", "crash"])
        .env("P11GATE_HOME", home)
        .env("P11GATE_CONFIG", "/nonexistent/p11gate.toml")
        .env_remove("P11GATE_UPSTREAM")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SO_PIN}\n{USER_PIN}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn env(home: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("P11GATE_HOME".into(), home.display().to_string()),
        ("P11GATE_CONFIG".into(), "/nonexistent/p11gate.toml".into()),
        ("P11GATE_AUDIT".into(), "off".into()),
        ("P11GATE_LOG".into(), "stderr".into()),
        ("P11GATE_LOG_LEVEL".into(), "error".into()),
    ]
}

fn spawn(role: &str, home: &std::path::Path) -> Child {
    common::child_test_command(CHILD_VAR, role, &env(home))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child")
}

/// A small xorshift: random enough for kill instants, and repeatable from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill_9_mid_key_generation_never_loses_an_acknowledged_key() {
    let dir = tempfile::tempdir().unwrap();
    init_home(dir.path());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let mut acknowledged: BTreeSet<String> = BTreeSet::new();
    let kills = 200;
    let started = Instant::now();
    for round in 0..kills {
        let mut child = spawn(&format!("generate r{round} 1000000"), dir.path());
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child has loaded the store and listed what it holds: every key
        // acknowledged before must be there.
        let mut have = BTreeSet::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if l == "listed" => break,
                Ok(l) => {
                    if let Some(label) = l.strip_prefix("have ") {
                        have.insert(label.to_string());
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().unwrap();
                    panic!(
                        "round {round} (seed {seed}): the store did not load: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        let missing: Vec<&String> = acknowledged.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "round {round} (seed {seed}): acknowledged keys missing after kill -9: {missing:?}"
        );
        // Let it generate for 0-20 ms, then kill -9 wherever it is.
        std::thread::sleep(Duration::from_micros(rng.next() % 20_000));
        let _ = child.kill();
        let _ = child.wait();
        reader.join().unwrap();
        for line in rx.try_iter() {
            if let Some(label) = line.strip_prefix("made ") {
                acknowledged.insert(label.to_string());
            }
        }
    }
    // A last load: everything acknowledged is there.
    let out = spawn("list", dir.path()).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let have: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("have ").map(str::to_string))
        .collect();
    let missing: Vec<&String> = acknowledged.difference(&have).collect();
    assert!(missing.is_empty(), "missing at the end: {missing:?}");
    assert!(
        acknowledged.len() > kills / 2,
        "{} keys acknowledged in {kills} runs: the kills came too early to test anything",
        acknowledged.len()
    );
    eprintln!(
        "{kills} kills in {:.1} s, {} keys acknowledged, all present (seed {seed})",
        started.elapsed().as_secs_f64(),
        acknowledged.len()
    );
}

#[test]
fn two_processes_generating_500_keys_each_lose_none() {
    let dir = tempfile::tempdir().unwrap();
    init_home(dir.path());
    let a = spawn("generate a 500", dir.path());
    let b = spawn("generate b 500", dir.path());
    for (name, child) in [("a", a), ("b", b)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let made = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("made "))
            .count();
        assert_eq!(made, 500, "{name}");
    }
    let out = spawn("list", dir.path()).wait_with_output().unwrap();
    let have: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("have ").map(str::to_string))
        .collect();
    let want: BTreeSet<String> = (0..500)
        .flat_map(|i| [format!("a-{i}"), format!("b-{i}")])
        .collect();
    assert_eq!(have, want);
}
