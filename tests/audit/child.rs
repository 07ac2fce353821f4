//! Child processes for `tests/audit.rs`: each scenario's PKCS#11 client runs in a fresh process
//! (this test binary again, running only its `child_process` entry), with exactly the
//! environment the test gives it. Nothing p11gate keeps per process (the writer thread, the
//! record counter `rec`, the environment it read) leaks between tests, and the test knows the
//! client's pid.
//!
//! The two sides talk over the child's stdin/stdout: the child prints `KEY value` lines
//! ([`tell`]) and waits for a line ([`wait_parent`]) where its scenario says so.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The environment variable that names the scenario a child process runs.
pub const CHILD_VAR: &str = "AUDIT_CHILD";

/// What a child prints when its scenario ran to the end.
pub const PASSED: &str = "AUDIT-CHILD-PASSED";

/// How long any child may live.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// A running child scenario.
pub struct Client {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    seen: String,
    scenario: String,
    start: Instant,
}

impl Client {
    /// Starts `scenario` with exactly `env` (plus PATH).
    pub fn start(scenario: &str, env: &[(String, String)]) -> Client {
        let mut cmd = crate::common::child_test_command(CHILD_VAR, scenario, env);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn child");
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
        let mut err = child.stderr.take().expect("stderr");
        let stderr = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = err.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        });
        Client {
            child,
            lines,
            reader: Some(reader),
            stderr: Some(stderr),
            seen: String::new(),
            scenario: scenario.to_string(),
            start: Instant::now(),
        }
    }

    /// The client's pid: the `pid` of its records.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines until one starts with `key `, for at most `timeout`; returns the rest.
    #[track_caller]
    pub fn expect_within(&mut self, key: &str, timeout: Duration) -> String {
        self.expect_one_of(&[key], timeout).1
    }

    /// Reads lines until one starts with one of `keys` and a space, for at most `timeout`;
    /// returns that key and the rest of the line.
    #[track_caller]
    pub fn expect_one_of(&mut self, keys: &[&str], timeout: Duration) -> (String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    for key in keys {
                        if let Some(v) = line.strip_prefix(&format!("{key} ")) {
                            return (key.to_string(), v.to_string());
                        }
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let (_, rest) = self.finish_output();
                    panic!(
                        "child scenario {} printed none of {keys:?} within {timeout:?} ({e:?}):\n{}{rest}",
                        self.scenario, self.seen
                    );
                }
            }
        }
    }

    /// [`expect_within`](Self::expect_within) with the child's whole time budget.
    #[track_caller]
    pub fn expect(&mut self, key: &str) -> String {
        let left = CHILD_TIMEOUT.saturating_sub(self.start.elapsed());
        self.expect_within(key, left)
    }

    /// Sends one line to the child (it is waiting in [`wait_parent`]).
    pub fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write child stdin");
        stdin.flush().expect("flush child stdin");
    }

    /// Lets the child continue past its next wait.
    pub fn proceed(&mut self) {
        self.send("go");
    }

    fn finish_output(&mut self) -> (bool, String) {
        drop(self.child.stdin.take());
        let (status, killed) = loop {
            if let Some(status) = self.child.try_wait().expect("wait child") {
                break (status, false);
            }
            if self.start.elapsed() > CHILD_TIMEOUT {
                let _ = self.child.kill();
                break (self.child.wait().expect("wait killed child"), true);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let rest: Vec<String> = self.lines.try_iter().collect();
        let err = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr"))
            .unwrap_or_default();
        let note = if killed {
            " (killed after the timeout)"
        } else {
            ""
        };
        (
            status.success() && !killed,
            format!(
                "{}\n--- exit: {status}{note}\n--- stderr:\n{err}",
                rest.join("\n")
            ),
        )
    }

    /// Closes the child's stdin, waits for it and asserts that its scenario passed. Returns all
    /// it printed.
    #[track_caller]
    pub fn finish(mut self) -> String {
        let (success, rest) = self.finish_output();
        let all = format!("{}{rest}", self.seen);
        assert!(
            success && all.contains(PASSED),
            "child scenario {} failed:\n{all}",
            self.scenario
        );
        all
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `scenario` to its end and returns the client's pid and what it printed.
#[track_caller]
pub fn run(scenario: &str, env: &[(String, String)]) -> (u32, String) {
    let c = Client::start(scenario, env);
    let pid = c.pid();
    (pid, c.finish())
}

// ---------------------------------------------------------------------------------------------
// The child's side.

/// Prints `KEY value` for the parent, flushed at once.
pub fn tell(key: &str, value: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    // libtest has printed `test child_process ... ` without a newline.
    writeln!(out, "\n{key} {value}").expect("write stdout");
    out.flush().expect("flush stdout");
}

/// Waits for the parent's next line; returns it without its newline.
pub fn wait_parent() -> String {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("read stdin");
    line.trim_end().to_string()
}

/// The parameter `name` the parent passed in the environment.
pub fn param(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child parameter {name} not set"))
}
