//! Diagnostics reach syslog as syslog expects them: the test binds its own datagram socket,
//! points p11gate at it with `P11GATE_LOG=syslog:<socket>` (the default target is the same code
//! with `/dev/log`), runs pkcs11-tool through the built libp11gate.so, and reads what arrives.
//! Also: with no syslog socket, warnings and errors still reach stderr; no PIN in any message.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{SoftHsm, USER_PIN};

fn pkcs11_tool(hsm: &SoftHsm, env: &[(&str, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(common::require_program("pkcs11-tool"));
    cmd.arg("--module").arg(common::module()).args(args);
    for (k, v) in hsm.gate_env() {
        cmd.env(k, v);
    }
    cmd.env_remove("P11GATE_LOG_LEVEL");
    // Diagnostics only: the audit trail (and what it says when no syslog daemon listens on
    // /dev/log) is tested in tests/audit.rs.
    cmd.env("P11GATE_AUDIT", "off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run pkcs11-tool")
}

/// A syslog daemon stand-in: drains the socket on its own thread while `run` runs, as a real
/// daemon would, and returns what arrived.
fn collect<T>(socket: &UnixDatagram, run: impl FnOnce() -> T) -> (T, Vec<String>) {
    let socket = socket.try_clone().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut messages = Vec::new();
            let mut buf = vec![0u8; 65536];
            loop {
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        messages.push(String::from_utf8(buf[..n].to_vec()).expect("UTF-8 datagram"))
                    }
                    Err(_) if done.load(std::sync::atomic::Ordering::Acquire) => return messages,
                    Err(_) => {}
                }
            }
        })
    };
    let result = run();
    done.store(true, std::sync::atomic::Ordering::Release);
    (result, reader.join().unwrap())
}

/// Splits `<PRI>Mmm dd hh:mm:ss p11gate[pid]: text` into (PRI, text), checking the rest.
fn parse(message: &str) -> (u8, &str) {
    let rest = message
        .strip_prefix('<')
        .unwrap_or_else(|| panic!("no <PRI> in {message:?}"));
    let (pri, rest) = rest.split_once('>').unwrap();
    let stamp = &rest[..15];
    let b = stamp.as_bytes();
    assert!(
        b[0].is_ascii_uppercase() && b[3] == b' ' && b[6] == b' ' && b[9] == b':' && b[12] == b':',
        "RFC 3164 timestamp in {message:?}"
    );
    let rest = rest[15..]
        .strip_prefix(" p11gate[")
        .unwrap_or_else(|| panic!("ident in {message:?}"));
    let (pid, text) = rest.split_once("]: ").unwrap();
    assert!(pid.parse::<u32>().is_ok(), "pid in {message:?}");
    (pri.parse().unwrap(), text)
}

#[test]
fn info_and_errors_reach_syslog_with_priority_and_ident() {
    let hsm = SoftHsm::new();
    hsm.init_token("syslog");
    let path = hsm.dir().join("log.sock");
    let socket = UnixDatagram::bind(&path).expect("bind a syslog socket");
    let target = format!("syslog:{}", path.display());

    let (out, messages) = collect(&socket, || {
        pkcs11_tool(&hsm, &[("P11GATE_LOG", target.clone())], &["--list-slots"])
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Vec<(u8, &str)> = messages.iter().map(|m| parse(m)).collect();
    // LOG_USER (1) * 8 + LOG_INFO (6) = 14.
    assert_eq!(parsed.len(), 2, "{messages:#?}");
    assert_eq!(parsed[0].0, 14);
    assert!(
        parsed[0].1.starts_with("initialised for app \"default\": config /nonexistent/p11gate.toml (absent; environment only), upstreams libsofthsm2 ("),
        "{messages:#?}"
    );
    assert_eq!(parsed[1], (14, "finalised"));

    let missing = [
        ("P11GATE_LOG", target.clone()),
        ("P11GATE_UPSTREAM", "/nonexistent/x.so".to_string()),
    ];
    let (out, messages) = collect(&socket, || pkcs11_tool(&hsm, &missing, &["--list-slots"]));
    assert!(!out.status.success());
    let parsed: Vec<(u8, &str)> = messages.iter().map(|m| parse(m)).collect();
    // LOG_USER (1) * 8 + LOG_ERR (3) = 11.
    assert_eq!(parsed.len(), 1, "{messages:#?}");
    assert_eq!(parsed[0].0, 11);
    assert!(
        parsed[0]
            .1
            .starts_with("cannot load upstream /nonexistent/x.so: "),
        "{messages:#?}"
    );
}

#[test]
fn trace_lines_reach_syslog_without_the_pin() {
    let hsm = SoftHsm::new();
    hsm.init_token("syslog-trace");
    let path = hsm.dir().join("log.sock");
    let socket = UnixDatagram::bind(&path).expect("bind a syslog socket");
    let env = [
        ("P11GATE_LOG", format!("syslog:{}", path.display())),
        ("P11GATE_LOG_LEVEL", "trace".to_string()),
    ];
    let (out, messages) = collect(&socket, || {
        pkcs11_tool(
            &hsm,
            &env,
            &["--login", "--pin", USER_PIN, "--generate-random", "16"],
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let traces: Vec<&str> = messages
        .iter()
        .map(|m| parse(m))
        .filter(|(p, _)| *p == 15)
        .map(|(_, t)| t)
        .collect();
    assert!(
        traces.iter().any(|t| t.starts_with("C_Login(hSession=")
            && t.ends_with(", userType=CKU_USER, pPin=<not logged>) = CKR_OK")),
        "{messages:#?}"
    );
    assert!(
        traces
            .iter()
            .any(|t| t.ends_with(", ulRandomLen=16) = CKR_OK")),
        "{messages:#?}"
    );
    for m in &messages {
        assert!(!m.contains(USER_PIN), "the PIN reached syslog: {m:?}");
    }
}

/// A daemon that reads nothing: the application's calls must not wait for it.
#[test]
fn a_syslog_daemon_that_does_not_read_never_stalls_the_application() {
    let hsm = SoftHsm::new();
    hsm.init_token("syslog-stuck");
    let path = hsm.dir().join("log.sock");
    let _socket = UnixDatagram::bind(&path).expect("bind a syslog socket");
    let env = [
        ("P11GATE_LOG", format!("syslog:{}", path.display())),
        ("P11GATE_LOG_LEVEL", "trace".to_string()),
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = pkcs11_tool(
            &hsm,
            &env,
            &["--login", "--pin", USER_PIN, "--generate-random", "16"],
        );
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("pkcs11-tool stalled behind a full syslog socket");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 16);
}

#[test]
fn without_a_syslog_socket_errors_still_reach_stderr() {
    let hsm = SoftHsm::new();
    let gone = Path::new("/nonexistent/p11gate-test/log.sock");
    let env = [
        ("P11GATE_LOG", format!("syslog:{}", gone.display())),
        ("P11GATE_UPSTREAM", "/nonexistent/x.so".to_string()),
    ];
    let out = pkcs11_tool(&hsm, &env, &["--list-slots"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cannot load upstream /nonexistent/x.so: "))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains(" p11gate["), "{stderr}");
    assert!(
        lines[0].contains("] ERROR: cannot load upstream"),
        "{stderr}"
    );
}
