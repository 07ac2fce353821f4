//! The test bed for `tests/slot_mapping.rs`: one SoftHSMv2 installation with two tokens, a
//! second copy of SoftHSMv2's module (a distinct upstream), config files written into the
//! test's own directory, and runners for the processes that load `libp11gate.so`:
//! `pkcs11-tool`, the `p11gate` CLI, and children of this test binary that use the raw client.
//!
//! This process never loads a PKCS#11 module itself, so the tests run in parallel.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{self, SoftHsm, SO_PIN, USER_PIN};

/// The module `pkcs11-spy` that OpenSC installs: forwards every call and logs it.
pub const SPY: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so";

/// The environment variable that names the scenario a child process runs.
pub const CHILD_VAR: &str = "SLOTMAP_CHILD";

/// What a child prints when its scenario ran to the end.
pub const CHILD_PASSED: &str = "CHILD-SCENARIO-PASSED";

/// One SoftHSMv2 token as SoftHSMv2 itself shows it.
#[derive(Debug, Clone)]
pub struct RealToken {
    pub label: String,
    pub slot: u64,
    pub serial: String,
}

/// A SoftHSMv2 directory with tokens `vault-a` and `vault-b`.
pub struct Bed {
    pub hsm: SoftHsm,
    pub a: RealToken,
    pub b: RealToken,
    /// SoftHSMv2's slot with a free (uninitialised) token.
    pub free_slot: u64,
    /// A copy of libsofthsm2.so at another path: `dlopen` loads it as a second module.
    pub copy: PathBuf,
}

impl Bed {
    pub fn new() -> Bed {
        let hsm = SoftHsm::new();
        hsm.init_token("vault-a").init_token("vault-b");
        let copy = hsm.dir().join("libsofthsm2-copy.so");
        std::fs::copy(common::softhsm_module(), &copy).expect("copy libsofthsm2.so");
        let (tokens, slots) = real_tokens(&hsm);
        let find = |label: &str| {
            tokens
                .iter()
                .find(|t| t.label == label)
                .unwrap_or_else(|| panic!("no token {label} in {tokens:?}"))
                .clone()
        };
        let (a, b) = (find("vault-a"), find("vault-b"));
        let free: Vec<u64> = slots
            .into_iter()
            .filter(|s| !tokens.iter().any(|t| t.slot == *s))
            .collect();
        assert_eq!(free.len(), 1, "one free SoftHSMv2 slot besides {tokens:?}");
        Bed {
            hsm,
            a,
            b,
            free_slot: free[0],
            copy,
        }
    }

    pub fn dir(&self) -> &Path {
        self.hsm.dir()
    }

    /// Replaces the placeholders `@SOFTHSM@`, `@COPY@`, `@SPY@`, `@DIR@`, `@SLOT_A@`, `@SLOT_B@`,
    /// `@SERIAL_A@`, `@SERIAL_B@`, `@FREE@` in a config text.
    pub fn subst(&self, text: &str) -> String {
        text.replace("@SOFTHSM@", &common::softhsm_module().display().to_string())
            .replace("@COPY@", &self.copy.display().to_string())
            .replace("@SPY@", SPY)
            .replace("@DIR@", &self.dir().display().to_string())
            .replace("@SLOT_A@", &self.a.slot.to_string())
            .replace("@SLOT_B@", &self.b.slot.to_string())
            .replace("@SERIAL_A@", &self.a.serial)
            .replace("@SERIAL_B@", &self.b.serial)
            .replace("@FREE@", &self.free_slot.to_string())
    }

    /// Writes `name` in the test's directory with the placeholders replaced, mode 0600.
    pub fn config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir().join(name);
        write_private(&path, &self.subst(text));
        path
    }

    /// The log file for one gate run named `tag`.
    pub fn log(&self, tag: &str) -> PathBuf {
        self.dir().join(format!("p11gate-{tag}.log"))
    }

    /// The environment of a process that loads p11gate with `config` as app `app` (None: no
    /// `P11GATE_APP`), logging at trace level to `log`.
    pub fn env(&self, config: &Path, app: Option<&str>, log: &Path) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "SOFTHSM2_CONF".to_string(),
                self.hsm.conf.display().to_string(),
            ),
            ("P11GATE_CONFIG".to_string(), config.display().to_string()),
            ("P11GATE_LOG".to_string(), log.display().to_string()),
            ("P11GATE_LOG_LEVEL".to_string(), "trace".to_string()),
            // These tests count diagnostic lines; the audit trail has tests of its own.
            ("P11GATE_AUDIT".to_string(), "off".to_string()),
        ];
        if let Some(app) = app {
            env.push(("P11GATE_APP".to_string(), app.to_string()));
        }
        env
    }

    /// `pkcs11-tool` straight against SoftHSMv2.
    pub fn direct_tool(&self, args: &[&str]) -> Output {
        let env = [(
            "SOFTHSM2_CONF".to_string(),
            self.hsm.conf.display().to_string(),
        )];
        pkcs11_tool(&common::softhsm_module(), &env, args)
    }
}

/// Writes a file with mode 0600 (set before the content is written).
pub fn write_private(path: &Path, text: &str) {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .expect("chmod 0600");
    f.write_all(text.as_bytes()).expect("write");
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The initialised tokens SoftHSMv2 reports, and all its slot ids, read with `pkcs11-tool -L`
/// straight from SoftHSMv2.
fn real_tokens(hsm: &SoftHsm) -> (Vec<RealToken>, Vec<u64>) {
    let env = [("SOFTHSM2_CONF".to_string(), hsm.conf.display().to_string())];
    let out = pkcs11_tool(&common::softhsm_module(), &env, &["-L"]);
    let text = stdout_ok("pkcs11-tool -L (SoftHSMv2 directly)", &out);
    let mut tokens = Vec::new();
    let mut slots = Vec::new();
    let mut slot: Option<u64> = None;
    let mut label: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Slot ") {
            let open = rest.find("(0x").expect("slot id");
            let close = rest.find(')').expect("slot id end");
            let id = u64::from_str_radix(&rest[open + 3..close], 16).expect("hex slot id");
            slots.push(id);
            slot = Some(id);
            label = None;
        } else if let Some(v) = field(line, "token label") {
            label = Some(v);
        } else if let Some(v) = field(line, "serial num") {
            tokens.push(RealToken {
                label: label.take().expect("label before serial"),
                slot: slot.expect("slot before serial"),
                serial: v,
            });
        }
    }
    (tokens, slots)
}

/// `  name   : value` → `value`.
pub fn field(line: &str, name: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix(name)?;
    let rest = rest.trim_start().strip_prefix(':')?;
    Some(rest.trim().to_string())
}

/// Runs `pkcs11-tool --module <module> <args>` with exactly `env` (plus PATH).
pub fn pkcs11_tool(module: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    let mut cmd = Command::new(common::require_program("pkcs11-tool"));
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.arg("--module").arg(module).args(args);
    cmd.output().expect("run pkcs11-tool")
}

/// The built `libp11gate.so`. `cargo test --test slot_mapping` on its own builds the cdylib in
/// `target/<profile>/deps/` but does not copy it up to `target/<profile>/` (where
/// [`common::module`] looks; a plain `cargo build` does), so the copy next to this test binary
/// comes first: it is the one cargo built with this binary.
pub fn gate_module() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let beside = exe.parent().expect("deps dir").join("libp11gate.so");
    if beside.exists() {
        beside
    } else {
        common::module()
    }
}

/// `pkcs11-tool` loading p11gate.
pub fn gate_tool(env: &[(String, String)], args: &[&str]) -> Output {
    pkcs11_tool(&gate_module(), env, args)
}

/// Everything a process printed, for failure messages.
pub fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The stdout of a process that must have exited 0.
#[track_caller]
pub fn stdout_ok(what: &str, out: &Output) -> String {
    assert!(out.status.success(), "{what} failed: {}", show(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `p11gate` CLI that cargo built with the tests.
pub fn p11gate_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_p11gate") {
        Some(p) => PathBuf::from(p),
        None => panic!("this build has no `p11gate` binary target (src/bin/p11gate.rs)"),
    }
}

/// Runs the `p11gate` CLI with `args`, exactly `env` (plus PATH) and `stdin` piped in.
pub fn cli(args: &[&str], env: &[(String, String)], stdin: &str) -> Output {
    let mut cmd = Command::new(p11gate_bin());
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run p11gate");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait p11gate")
}

/// `p11gate hash-pin` with `pin` on stdin: the PHC string it prints.
pub fn hash_pin(pin: &str) -> String {
    let out = cli(&["hash-pin"], &[], &format!("{pin}\n"));
    let text = stdout_ok("p11gate hash-pin", &out);
    let line = text.trim_end_matches('\n');
    assert!(
        !line.contains('\n') && line.starts_with("$argon2id$v=19$"),
        "p11gate hash-pin printed {text:?}, want one argon2id PHC string"
    );
    line.to_string()
}

fn child_command(scenario: &str, env: &[(String, String)]) -> Command {
    crate::common::child_test_command(CHILD_VAR, scenario, env)
}

/// How long a child scenario may take before it is killed (they take well under a second).
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads a child's pipe to the end on its own thread.
fn drain<R: Read + Send + 'static>(mut pipe: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Waits for `child` until [`CHILD_TIMEOUT`] after `start`, then kills it (by its handle).
/// Returns its status and whether it had to be killed.
fn wait_or_kill(child: &mut Child, start: Instant) -> (ExitStatus, bool) {
    loop {
        if let Some(status) = child.try_wait().expect("wait child") {
            return (status, false);
        }
        if start.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            return (child.wait().expect("wait killed child"), true);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `scenario` (see `child_process` in slot_mapping.rs) in a child process with exactly
/// `env`; panics with its output unless it passed. Returns its stdout.
#[track_caller]
pub fn run_child(scenario: &str, env: &[(String, String)]) -> String {
    let start = Instant::now();
    let mut child = child_command(scenario, env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run child process");
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let (status, killed) = wait_or_kill(&mut child, start);
    let (text, err) = (out.join().expect("stdout"), err.join().expect("stderr"));
    assert!(
        !killed && status.success() && text.contains(CHILD_PASSED),
        "child scenario {scenario} failed ({status}{}):\n--- stdout:\n{text}\n--- stderr:\n{err}",
        if killed {
            ", killed after the timeout"
        } else {
            ""
        }
    );
    text
}

/// A child process that talks to this one on its stdin/stdout: it prints `KEY value` lines and
/// waits for a line on stdin where its scenario says so.
pub struct Interactive {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    seen: String,
    scenario: String,
    start: Instant,
}

impl Interactive {
    pub fn start(scenario: &str, env: &[(String, String)]) -> Interactive {
        let mut child = child_command(scenario, env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Some(drain(child.stderr.take().expect("stderr")));
        Interactive {
            child,
            lines,
            reader: Some(reader),
            stderr,
            seen: String::new(),
            scenario: scenario.to_string(),
            start: Instant::now(),
        }
    }

    /// Reads lines until one starts with `key `; returns the rest.
    pub fn expect(&mut self, key: &str) -> String {
        loop {
            let left = CHILD_TIMEOUT.saturating_sub(self.start.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if let Some(v) = line.strip_prefix(&format!("{key} ")) {
                        return v.to_string();
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let (_, rest) = self.finish_output();
                    panic!(
                        "child scenario {} printed no {key} ({e:?}):\n{}{rest}",
                        self.scenario, self.seen
                    );
                }
            }
        }
    }

    /// Lets the child continue past its next wait.
    pub fn proceed(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("write child stdin");
        stdin.flush().expect("flush");
    }

    /// Closes stdin, waits (or kills after the timeout); whether it exited 0, and the rest of
    /// its stdout and its stderr.
    fn finish_output(&mut self) -> (bool, String) {
        drop(self.child.stdin.take());
        let (status, killed) = wait_or_kill(&mut self.child, self.start);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join(); // the child is gone: its stdout is at its end
        }
        let rest: Vec<String> = self.lines.try_iter().collect();
        let err = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr"))
            .unwrap_or_default();
        let killed_note = if killed {
            " (killed after the timeout)"
        } else {
            ""
        };
        let text = format!(
            "{}\n--- exit: {status}{killed_note}\n--- stderr:\n{err}",
            rest.join("\n")
        );
        (status.success() && !killed, text)
    }

    /// Closes the child's stdin and asserts that it passed.
    pub fn finish(mut self) {
        let (success, rest) = self.finish_output();
        let all = format!("{}{rest}", self.seen);
        assert!(
            success && all.contains(CHILD_PASSED),
            "child scenario {} failed:\n{all}",
            self.scenario
        );
    }
}

/// In a child: prints `KEY value` for the parent (flushed at once).
pub fn tell_parent(key: &str, value: &str) {
    let mut out = std::io::stdout().lock();
    // libtest has printed `test child_process ... ` without a newline.
    writeln!(out, "\n{key} {value}").expect("write stdout");
    out.flush().expect("flush stdout");
}

/// In a child: waits until the parent says go.
pub fn wait_for_parent() {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("read stdin");
}

/// In a child: the parameter `name` the parent passed in the environment.
pub fn arg(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child parameter {name} not set"))
}

pub fn arg_u64(name: &str) -> u64 {
    arg(name)
        .parse()
        .unwrap_or_else(|e| panic!("child parameter {name}: {e}"))
}

/// The text of a log file, which must exist and not be empty.
#[track_caller]
pub fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("p11gate log {}: {e}", path.display()));
    assert!(!text.is_empty(), "p11gate log {} is empty", path.display());
    text
}

/// The log exists, is not empty (so that the search means something), and holds none of the
/// SoftHSM PINs nor any of `secrets`, raw or hex-encoded.
#[track_caller]
pub fn assert_log_free_of_secrets(path: &Path, secrets: &[&str]) {
    let log = read_log(path);
    for s in [USER_PIN, SO_PIN].iter().chain(secrets) {
        let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
        for needle in [s.to_string(), hex.clone(), hex.to_uppercase()] {
            assert!(
                !log.contains(&needle),
                "p11gate log {} contains the secret {needle:?}",
                path.display()
            );
        }
    }
}

/// The log lines of `log` at `level` (`ERROR`, `WARN`, ...), without their timestamp prefix.
pub fn log_lines_at(log: &str, level: &str) -> Vec<String> {
    let tag = format!(" {level}: ");
    log.lines()
        .filter_map(|l| l.find(&tag).map(|i| l[i + tag.len()..].to_string()))
        .collect()
}
