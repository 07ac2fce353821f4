//! `p11gate hash-pin` on a real terminal: the PIN is asked twice, never echoed, and the printed
//! argon2id hash verifies it. A pseudo-terminal is driven the way a person would use it, answering
//! each prompt after it appears (Python's pty module, which this machine image has).

mod common;

use std::process::Command;

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;

const DRIVER: &str = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "hash-pin"])
seen = b""
def read_until(marker):
    global seen
    while marker not in seen:
        chunk = os.read(fd, 1024)
        if not chunk:
            break
        seen += chunk
read_until(b"PIN: ")
os.write(fd, sys.argv[2].encode() + b"\n")
read_until(b"PIN again: ")
os.write(fd, sys.argv[3].encode() + b"\n")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode())
sys.exit(os.waitstatus_to_exitcode(status))
"#;

fn hash_pin_on_a_terminal(first: &str, again: &str) -> (Option<i32>, String) {
    let python = common::require_program("python3");
    let out = Command::new(python)
        .args(["-c", DRIVER, env!("CARGO_BIN_EXE_p11gate"), first, again])
        .output()
        .expect("run the pty driver");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn hash_pin_asks_twice_without_echo_and_prints_a_verifying_hash() {
    let pin = "app-pin-5517";
    let (code, screen) = hash_pin_on_a_terminal(pin, pin);
    assert_eq!(code, Some(0), "{screen}");
    assert!(!screen.contains(pin), "the PIN was echoed: {screen:?}");
    let lines: Vec<&str> = screen
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 3, "{screen:?}");
    assert_eq!(lines[0], "PIN:");
    assert_eq!(lines[1], "PIN again:");
    let hash = PasswordHash::new(lines[2]).expect("a PHC string");
    assert_eq!(hash.algorithm.as_str(), "argon2id");
    assert!(Argon2::default()
        .verify_password(pin.as_bytes(), &hash)
        .is_ok());
    assert!(Argon2::default()
        .verify_password(b"app-pin-5518", &hash)
        .is_err());
}

#[test]
fn hash_pin_refuses_two_different_pins() {
    let (code, screen) = hash_pin_on_a_terminal("app-pin-1", "app-pin-2");
    assert_eq!(code, Some(1), "{screen}");
    assert!(
        screen.contains("hash-pin: the two PINs differ"),
        "{screen:?}"
    );
    assert!(!screen.contains("$argon2"), "{screen:?}");
    assert!(
        !screen.contains("app-pin-1") && !screen.contains("app-pin-2"),
        "{screen:?}"
    );
}
