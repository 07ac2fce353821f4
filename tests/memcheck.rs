//! Memory: the C client (`tests/c/client.c`) and the concurrency program (`tests/c/threads.c`)
//! run under valgrind memcheck with the built `libp11gate.so`, through p11gate to SoftHSMv2 and
//! on the built-in soft token, with the audit trail writing to a chained file (so its queue and
//! writer thread are checked too). A run passes when the program passes all its checks, valgrind
//! reports no invalid access ("ERROR SUMMARY: 0 errors"), nothing is definitely or indirectly
//! lost, and every "possibly lost" block is one of the known kinds of live memory that only an
//! interior pointer reaches (see [`unexplained_possible_leaks`]).
//!
//! `tests/valgrind.supp` suppresses what is not p11gate's; [`suppressions_never_match_p11gate`]
//! keeps it that way, and [`memcheck_reports_a_leak_an_invalid_read_and_a_stray_block`] proves
//! that the harness fails when it should.
//!
//! Valgrind runs the program 20-50 times slower: `threads` runs 4 threads, 2 rounds and
//! `P11GATE_MEMCHECK_ITERATIONS` iterations (default 3) per thread; the natively run
//! [`threads_pass_natively_with_more_threads`] does more.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::SoftHsm;

/// Checks `client -g -I 2` makes through p11gate (the same count tests/c_client.rs expects),
/// with SoftHSMv2 or the soft token behind it.
const CLIENT_CHECKS: usize = 382;
/// Checks `client -g -I 2 -U` makes when the upstream cannot be loaded.
const CLIENT_NO_UPSTREAM_CHECKS: usize = 148;
/// Checks `client -g -I 3 -n` makes through pkcs11-spy in front of OpenSC (3.0, no token).
const CLIENT_3_0_TOKENLESS_CHECKS: usize = 275;

/// The check counts of `tests/c/threads.c` (its ROUND_CHECKS, ITERATION_CHECKS, ...).
const ROUND_CHECKS: usize = 13;
const ITERATION_CHECKS: usize = 42;
const THREAD_CHECKS: usize = 10;
const CLOSE_ALL_CHECKS: usize = 2;
const MUTEX_CHECKS: usize = 2;

/// Threads and rounds of `threads` under valgrind.
const MEMCHECK_THREADS: usize = 4;
const MEMCHECK_ROUNDS: usize = 2;
/// Iterations per thread under valgrind unless `P11GATE_MEMCHECK_ITERATIONS` says otherwise.
const DEFAULT_MEMCHECK_ITERATIONS: usize = 3;

/// Valgrind's exit status when it found an error (the programs use 0, 1 and 2).
const VALGRIND_ERROR_EXIT: i32 = 97;
const TIMEOUT: Duration = Duration::from_secs(300);

const PKCS11_SPY: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so";
const OPENSC: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/opensc-pkcs11.so";

/// SoftHSMv2 2.6 answers CKR_GENERAL_ERROR for an AES-GCM tag that does not verify; p11gate
/// passes it through. (The soft token answers CKR_ENCRYPTED_DATA_INVALID, threads.c's default.)
const SOFTHSM_FORGED_TAG_RV: &str = "0x5";

fn memcheck_iterations() -> usize {
    match std::env::var("P11GATE_MEMCHECK_ITERATIONS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("P11GATE_MEMCHECK_ITERATIONS={v:?} is not a number")),
        Err(_) => DEFAULT_MEMCHECK_ITERATIONS,
    }
}

/// The closing count of `threads -t threads -i iterations -r rounds`.
fn threads_checks(threads: usize, iterations: usize, rounds: usize) -> usize {
    rounds * (ROUND_CHECKS + threads * (iterations * ITERATION_CHECKS + THREAD_CHECKS))
        + (rounds / 2) * CLOSE_ALL_CHECKS
        + rounds.div_ceil(2) * MUTEX_CHECKS
}

// ------------------------------------------------------------------------------------------------
// Test beds: a token behind p11gate and an audit file
// ------------------------------------------------------------------------------------------------

/// A token p11gate serves, the environment that points the programs at it, and an audit trail.
struct Bed {
    dir: tempfile::TempDir,
    /// Keeps the SoftHSMv2 installation or the soft token's home alive.
    _hsm: Option<SoftHsm>,
    _home: Option<tempfile::TempDir>,
    label: &'static str,
    env: Vec<(String, String)>,
    audit: PathBuf,
    audit_key: PathBuf,
}

impl Bed {
    /// p11gate in front of a SoftHSMv2 token.
    fn softhsm() -> Bed {
        let hsm = SoftHsm::new();
        hsm.init_token("memcheck");
        let mut env = hsm.gate_env();
        env.retain(|(k, _)| k != "P11GATE_LOG");
        env.push(("P11_USER_PIN".into(), common::USER_PIN.into()));
        Bed::with_audit(Some(hsm), "memcheck", env)
    }

    /// p11gate with nothing configured: its soft token, initialised by `p11gate token init`.
    fn soft_token() -> Bed {
        let home = tempfile::tempdir().expect("tempdir");
        let env = vec![
            ("P11GATE_HOME".into(), home.path().display().to_string()),
            ("P11GATE_CONFIG".into(), "/nonexistent/p11gate.toml".into()),
            ("P11_USER_PIN".into(), common::USER_PIN.into()),
        ];
        let mut init = Command::new(env!("CARGO_BIN_EXE_p11gate"))
            .args(["token", "init", "--label", "memcheck-soft"])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("p11gate token init");
        {
            use std::io::Write;
            let pins = format!("{}\n{}\n", common::SO_PIN, common::USER_PIN);
            let mut stdin = init.stdin.take().expect("stdin");
            stdin.write_all(pins.as_bytes()).expect("write PINs");
        }
        let out = init.wait_with_output().expect("p11gate token init");
        assert!(
            out.status.success(),
            "p11gate token init: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut bed = Bed::with_audit(None, "memcheck-soft", env);
        bed._home = Some(home);
        bed
    }

    fn with_audit(
        hsm: Option<SoftHsm>,
        label: &'static str,
        mut env: Vec<(String, String)>,
    ) -> Bed {
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = dir.path().join("audit.jsonl");
        let audit_key = dir.path().join("audit.key");
        let keygen = Command::new(env!("CARGO_BIN_EXE_p11gate"))
            .args(["audit", "keygen"])
            .arg(&audit_key)
            .output()
            .expect("p11gate audit keygen");
        assert!(keygen.status.success(), "audit keygen: {keygen:?}");
        env.push(("P11GATE_AUDIT".into(), format!("file:{}", audit.display())));
        env.push(("P11GATE_AUDIT_KEY".into(), audit_key.display().to_string()));
        // Trace logging: every call's arguments are formatted, under valgrind too.
        env.push((
            "P11GATE_LOG".into(),
            dir.path().join("p11gate.log").display().to_string(),
        ));
        env.push(("P11GATE_LOG_LEVEL".into(), "trace".into()));
        Bed {
            dir,
            _hsm: hsm,
            _home: None,
            label,
            env,
            audit,
            audit_key,
        }
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The audit file verifies (`p11gate audit verify`) and each `(needle, count)` of `checks`
    /// occurs `count` times in it: the writer thread wrote every record.
    fn assert_audit(&self, checks: &[(&str, usize)]) {
        let verify = Command::new(env!("CARGO_BIN_EXE_p11gate"))
            .args(["audit", "verify"])
            .arg(&self.audit)
            .arg("--key")
            .arg(&self.audit_key)
            .output()
            .expect("p11gate audit verify");
        let text = std::fs::read_to_string(&self.audit).expect("the audit file");
        let records = text.lines().count();
        let said = String::from_utf8_lossy(&verify.stdout).trim().to_string();
        assert!(
            verify.status.success() && said.ends_with(&format!(": OK, {records} records")),
            "audit verify: {said} {}",
            String::from_utf8_lossy(&verify.stderr)
        );
        for (needle, count) in checks {
            let found = text.matches(needle).count();
            assert_eq!(
                found,
                *count,
                "{needle} in the audit file {}",
                self.audit.display()
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Running under valgrind and reading its report
// ------------------------------------------------------------------------------------------------

/// What a program printed and what valgrind reported.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    /// Valgrind's report (its --log-file), empty for a native run.
    log: String,
    log_path: PathBuf,
}

/// Runs `exe args` natively (`valgrind` false) or under memcheck, with exactly `env` (plus
/// PATH), output to files in `dir`.
fn run(exe: &Path, args: &[&str], env: &[(String, String)], dir: &Path, valgrind: bool) -> Run {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let name = exe.file_name().unwrap().to_string_lossy().to_string();
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let out_path = dir.join(format!("{name}.{n}.stdout"));
    let err_path = dir.join(format!("{name}.{n}.stderr"));
    let log_path = dir.join(format!("{name}.{n}.valgrind"));
    let mut cmd = if valgrind {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut c = Command::new(common::require_program("valgrind"));
        c.args([
            "--tool=memcheck",
            "--leak-check=full",
            "--show-leak-kinds=definite,indirect,possible",
            "--errors-for-leak-kinds=definite,indirect",
            "--track-origins=no",
            "--num-callers=40",
            "--fair-sched=yes",
        ])
        .arg(format!("--error-exitcode={VALGRIND_ERROR_EXIT}"))
        .arg(format!(
            "--suppressions={}",
            root.join("tests/valgrind.supp").display()
        ))
        .arg(format!("--log-file={}", log_path.display()))
        .arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.args(args)
        .env_clear()
        .envs(std::env::var_os("PATH").map(|p| ("PATH", p)))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"));
    let mut child = cmd.spawn().expect("spawn");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name} {args:?} did not finish in {TIMEOUT:?}:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        status,
        stdout: std::fs::read_to_string(&out_path).expect("read stdout"),
        stderr: std::fs::read_to_string(&err_path).expect("read stderr"),
        log: std::fs::read_to_string(&log_path).unwrap_or_default(),
        log_path,
    }
}

impl Run {
    fn report(&self) -> String {
        let failures: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| l.starts_with("FAIL"))
            .collect();
        format!(
            "status: {}\nfailed checks:\n  {}\n--- stderr ---\n{}\n--- valgrind ({}) ---\n{}",
            self.status,
            failures.join("\n  "),
            self.stderr,
            self.log_path.display(),
            self.log
        )
    }

    /// The program passed exactly `checks` checks and failed none.
    fn assert_passed(&self, checks: usize) {
        let last = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        assert!(
            last == format!("{checks} passed, 0 failed"),
            "expected \"{checks} passed, 0 failed\", got \"{last}\"\n{}",
            self.report()
        );
    }

    /// Exit status 0, all `checks` passed, and a clean valgrind report.
    fn assert_clean(&self, checks: usize) {
        self.assert_passed(checks);
        let summary = Summary::parse(&self.log);
        assert!(
            self.status.code() == Some(0)
                && summary.complete
                && summary.errors == Some(0)
                && summary.definitely_lost == 0
                && summary.indirectly_lost == 0,
            "valgrind: exit {} (its error exit is {VALGRIND_ERROR_EXIT}), {summary:?}\n{}",
            self.status,
            self.report()
        );
        let stray = unexplained_possible_leaks(&self.log);
        assert!(
            stray.is_empty(),
            "possibly lost blocks that are not a known kind of live memory:\n{}\n{}",
            stray.join("\n\n"),
            self.report()
        );
    }
}

/// The numbers valgrind's closing summaries give.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    /// "HEAP SUMMARY" was written: the program ran to its end under valgrind.
    complete: bool,
    /// "ERROR SUMMARY: N errors": invalid accesses plus definite and indirect leaks.
    errors: Option<u64>,
    definitely_lost: u64,
    indirectly_lost: u64,
    possibly_lost: u64,
}

impl Summary {
    fn parse(log: &str) -> Summary {
        let mut s = Summary::default();
        for line in log.lines() {
            // "==123== ERROR SUMMARY: 0 errors from 0 contexts (suppressed: 0 from 0)"
            let text = line.split_once("== ").map_or(line, |(_, t)| t).trim();
            if text.starts_with("HEAP SUMMARY:") {
                s.complete = true;
            } else if let Some(rest) = text.strip_prefix("ERROR SUMMARY:") {
                s.errors = first_number(rest);
            } else if let Some(rest) = text.strip_prefix("definitely lost:") {
                s.definitely_lost = first_number(rest).expect("definitely lost: N bytes");
            } else if let Some(rest) = text.strip_prefix("indirectly lost:") {
                s.indirectly_lost = first_number(rest).expect("indirectly lost: N bytes");
            } else if let Some(rest) = text.strip_prefix("possibly lost:") {
                s.possibly_lost = first_number(rest).expect("possibly lost: N bytes");
            }
        }
        s
    }
}

/// The first number in `text`, thousands separators allowed ("1,024 bytes" is 1024).
fn first_number(text: &str) -> Option<u64> {
    text.split_whitespace()
        .next()
        .and_then(|w| w.replace(',', "").parse().ok())
}

/// The "possibly lost" records of a valgrind log that are not one of the kinds of memory that is
/// live but reached only through a pointer into its middle:
/// - a hashbrown table (`std::collections::HashMap`): the map points at the control bytes in
///   the middle of its allocation; p11gate's runtimes (and their maps) are interned on purpose
///   and live until exit;
/// - the handle of the current thread that the Rust standard library keeps in thread-local
///   storage (`std::thread::current`);
/// - the thread-local storage of a thread that another library (glib, under OpenSC) started and
///   keeps running; a thread p11gate started (through `std::thread`) does not qualify: p11gate
///   joins its threads in `C_Finalize`.
fn unexplained_possible_leaks(log: &str) -> Vec<String> {
    let mut stray = Vec::new();
    let mut lines = log
        .lines()
        .map(|l| l.split_once("== ").map_or(l, |(_, t)| t));
    while let Some(line) = lines.next() {
        if !line.contains("are possibly lost in loss record") {
            continue;
        }
        let frames: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.trim().is_empty())
            .collect();
        let hashbrown_table = frames
            .iter()
            .any(|f| f.contains("hashbrown::raw::RawTableInner"));
        let std_thread_handle = frames
            .iter()
            .any(|f| f.contains("std::thread::current::init_current"));
        let foreign_thread_tls = frames.iter().any(|f| f.contains("_dl_allocate_tls"))
            && frames
                .iter()
                .position(|f| f.contains("pthread_create"))
                .and_then(|i| frames.get(i + 1))
                .is_some_and(|caller| !caller.contains("std::") && !caller.contains("p11gate"));
        if !(hashbrown_table || std_thread_handle || foreign_thread_tls) {
            stray.push(format!("{line}\n{}", frames.join("\n")));
        }
    }
    stray
}

// ------------------------------------------------------------------------------------------------
// The C client under valgrind
// ------------------------------------------------------------------------------------------------

fn module_arg() -> String {
    common::module().display().to_string()
}

#[test]
fn client_through_p11gate_to_softhsm_is_memcheck_clean() {
    let bed = Bed::softhsm();
    let client = common::compile_c("client", bed.dir());
    let module = module_arg();
    let run = run(
        &client,
        &["-g", "-I", "2", "-l", bed.label, &module],
        &bed.env,
        bed.dir(),
        true,
    );
    run.assert_clean(CLIENT_CHECKS);
    // Every C_Initialize (and its C_Finalize) of the client's lifecycle checks was written.
    bed.assert_audit(&[("\"event\":\"init\"", 11), ("\"event\":\"finalize\"", 11)]);
}

#[test]
fn client_on_the_soft_token_is_memcheck_clean() {
    let bed = Bed::soft_token();
    let client = common::compile_c("client", bed.dir());
    let module = module_arg();
    let run = run(
        &client,
        &["-g", "-I", "2", "-l", bed.label, &module],
        &bed.env,
        bed.dir(),
        true,
    );
    run.assert_clean(CLIENT_CHECKS);
    bed.assert_audit(&[("\"event\":\"init\"", 11), ("\"event\":\"finalize\"", 11)]);
}

/// The error paths: the upstream cannot be loaded, so every C_Initialize fails and unwinds.
#[test]
fn client_without_its_upstream_is_memcheck_clean() {
    let bed = Bed::softhsm();
    let client = common::compile_c("client", bed.dir());
    let mut env = bed.env.clone();
    env.retain(|(k, _)| k != "P11GATE_UPSTREAM");
    env.push(("P11GATE_UPSTREAM".into(), "/nonexistent/x.so".into()));
    let module = module_arg();
    let run = run(
        &client,
        &["-g", "-I", "2", "-U", &module],
        &env,
        bed.dir(),
        true,
    );
    run.assert_clean(CLIENT_NO_UPSTREAM_CHECKS);
}

/// The PKCS#11 3.0 path: interface negotiation and the 3.0 functions, with pkcs11-spy in front
/// of OpenSC (a 3.0 module without a token here).
#[test]
fn client_through_p11gate_to_a_3_0_upstream_is_memcheck_clean() {
    for so in [PKCS11_SPY, OPENSC] {
        assert!(
            Path::new(so).exists(),
            "{so} missing: install opensc-pkcs11 (scripts/test.sh does)"
        );
    }
    let bed = Bed::softhsm();
    let client = common::compile_c("client", bed.dir());
    let mut env = bed.env.clone();
    env.retain(|(k, _)| k != "P11GATE_UPSTREAM");
    env.push(("P11GATE_UPSTREAM".into(), PKCS11_SPY.into()));
    env.push(("PKCS11SPY".into(), OPENSC.into()));
    let spy_log = bed.dir().join("spy.log");
    env.push(("PKCS11SPY_OUTPUT".into(), spy_log.display().to_string()));
    let module = module_arg();
    let run = run(
        &client,
        &["-g", "-I", "3", "-n", &module],
        &env,
        bed.dir(),
        true,
    );
    run.assert_clean(CLIENT_3_0_TOKENLESS_CHECKS);
    let spy = std::fs::read_to_string(&spy_log).unwrap_or_default();
    assert!(
        spy.contains("C_GetInterface") && spy.contains("C_Initialize"),
        "p11gate did not go through pkcs11-spy:\n{spy}"
    );
}

// ------------------------------------------------------------------------------------------------
// The concurrency program
// ------------------------------------------------------------------------------------------------

/// `threads` through p11gate on `bed`; `extra` are more arguments (the forged-tag answer).
fn run_threads(
    bed: &Bed,
    threads: usize,
    iterations: usize,
    extra: &[&str],
    valgrind: bool,
) -> Run {
    let exe = common::compile_c("threads", bed.dir());
    let module = module_arg();
    let (t, i, r) = (
        threads.to_string(),
        iterations.to_string(),
        MEMCHECK_ROUNDS.to_string(),
    );
    let mut args = vec!["-t", &t, "-i", &i, "-r", &r, "-l", bed.label];
    args.extend_from_slice(extra);
    args.push(&module);
    run(&exe, &args, &bed.env, bed.dir(), valgrind)
}

/// The audit records `threads` leaves: one init and one finalize per round, and every
/// C_OpenSession (main, two per iteration, three per thread at the end).
fn assert_threads_audit(bed: &Bed, threads: usize, iterations: usize) {
    let rounds = MEMCHECK_ROUNDS;
    let opens = rounds * (1 + threads * (2 * iterations + 3));
    bed.assert_audit(&[
        ("\"event\":\"init\"", rounds),
        ("\"event\":\"finalize\"", rounds),
        ("\"fn\":\"C_OpenSession\"", opens),
    ]);
}

#[test]
fn threads_through_p11gate_to_softhsm_are_memcheck_clean() {
    let bed = Bed::softhsm();
    let iterations = memcheck_iterations();
    let run = run_threads(
        &bed,
        MEMCHECK_THREADS,
        iterations,
        &["-T", SOFTHSM_FORGED_TAG_RV],
        true,
    );
    run.assert_clean(threads_checks(
        MEMCHECK_THREADS,
        iterations,
        MEMCHECK_ROUNDS,
    ));
    assert_threads_audit(&bed, MEMCHECK_THREADS, iterations);
}

#[test]
fn threads_on_the_soft_token_are_memcheck_clean() {
    let bed = Bed::soft_token();
    let iterations = memcheck_iterations();
    let run = run_threads(&bed, MEMCHECK_THREADS, iterations, &[], true);
    run.assert_clean(threads_checks(
        MEMCHECK_THREADS,
        iterations,
        MEMCHECK_ROUNDS,
    ));
    assert_threads_audit(&bed, MEMCHECK_THREADS, iterations);
}

/// Without valgrind the program runs more threads and iterations in seconds: through p11gate to
/// SoftHSMv2, on the soft token, and directly against SoftHSMv2 (which shows that its checks
/// hold for a plain module, not only for p11gate).
#[test]
fn threads_pass_natively_with_more_threads() {
    const THREADS: usize = 12;
    const ITERATIONS: usize = 25;
    let expected = threads_checks(THREADS, ITERATIONS, MEMCHECK_ROUNDS);

    let bed = Bed::softhsm();
    run_threads(
        &bed,
        THREADS,
        ITERATIONS,
        &["-T", SOFTHSM_FORGED_TAG_RV],
        false,
    )
    .assert_passed(expected);
    assert_threads_audit(&bed, THREADS, ITERATIONS);

    let soft = Bed::soft_token();
    run_threads(&soft, THREADS, ITERATIONS, &[], false).assert_passed(expected);
    assert_threads_audit(&soft, THREADS, ITERATIONS);

    let exe = common::compile_c("threads", bed.dir());
    let softhsm = common::softhsm_module().display().to_string();
    let (t, i, r) = (
        THREADS.to_string(),
        ITERATIONS.to_string(),
        MEMCHECK_ROUNDS.to_string(),
    );
    let env: Vec<(String, String)> = bed
        .env
        .iter()
        .filter(|(k, _)| !k.starts_with("P11GATE_"))
        .cloned()
        .collect();
    let direct = run(
        &exe,
        &[
            "-t",
            &t,
            "-i",
            &i,
            "-r",
            &r,
            "-T",
            SOFTHSM_FORGED_TAG_RV,
            "-l",
            bed.label,
            &softhsm,
        ],
        &env,
        bed.dir(),
        false,
    );
    direct.assert_passed(expected);
}

// ------------------------------------------------------------------------------------------------
// AddressSanitizer and LeakSanitizer (optional: needs nightly Rust)
// ------------------------------------------------------------------------------------------------

/// The nightly toolchain's `rustup run` command, with nothing of the outer cargo's inherited.
fn nightly(tool: &str) -> Command {
    let mut cmd = Command::new(common::require_program("rustup"));
    cmd.args(["run", "nightly", tool]);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTDOCFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// libp11gate.so built by nightly Rust with `-Zsanitizer=address`, in `P11GATE_ASAN_TARGET_DIR`
/// (default: `asan` beside this test's profile directory). The target is named so that build
/// scripts and proc macros stay uninstrumented.
fn asan_module() -> PathBuf {
    let target_dir = std::env::var_os("P11GATE_ASAN_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("current_exe");
            // <target>/debug/deps/memcheck-<hash>
            exe.ancestors().nth(3).expect("target dir").join("asan")
        });
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = nightly("cargo")
        .args(["build", "--lib", "--target", "x86_64-unknown-linux-gnu"])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(&manifest)
        .env("RUSTFLAGS", "-Zsanitizer=address")
        .output()
        .expect("rustup run nightly cargo build");
    assert!(
        out.status.success(),
        "building p11gate with -Zsanitizer=address needs nightly Rust \
         (rustup toolchain install nightly):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join("x86_64-unknown-linux-gnu/debug/libp11gate.so")
}

/// gcc link arguments that put nightly Rust's own ASan runtime (the LLVM version that
/// instrumented p11gate) into a C program and export it to the modules it loads. libstdc++ is
/// linked even though the program does not use it: the runtime must find the real
/// `__cxa_throw` when it starts, before SoftHSMv2 (C++) is loaded and throws.
fn asan_link_args() -> Vec<String> {
    let out = nightly("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc --print sysroot");
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let runtime = Path::new(&sysroot)
        .join("lib/rustlib/x86_64-unknown-linux-gnu/lib/librustc-nightly_rt.asan.a");
    assert!(runtime.exists(), "{} is missing", runtime.display());
    [
        "-Wl,--whole-archive",
        &runtime.display().to_string(),
        "-Wl,--no-whole-archive",
        "-rdynamic",
        "-Wl,--no-as-needed",
        "-lstdc++",
        "-lm",
        "-lrt",
    ]
    .map(String::from)
    .to_vec()
}

/// The C client and the concurrency program with p11gate built under AddressSanitizer, its
/// leak check at exit on, through p11gate to SoftHSMv2 and on the soft token. The C programs
/// themselves are not instrumented (gcc's ASan runtime is another LLVM version than nightly
/// Rust's), but their heap goes through the runtime's allocator, and every line of p11gate is
/// instrumented. Run it with `cargo test --test memcheck -- --ignored`: the first run builds
/// p11gate's dependencies with nightly Rust (about 15 minutes on two busy cores).
#[test]
#[ignore = "needs nightly Rust, and builds p11gate with -Zsanitizer=address"]
fn client_and_threads_are_asan_and_lsan_clean() {
    const THREADS: usize = 8;
    const ITERATIONS: usize = 20;
    let module = asan_module().display().to_string();
    let link = asan_link_args();
    for (bed, forged_tag) in [
        (Bed::softhsm(), Some(SOFTHSM_FORGED_TAG_RV)),
        (Bed::soft_token(), None),
    ] {
        let client = common::compile_c_as("client", &bed.dir().join("client-asan"), &link);
        let threads = common::compile_c_as("threads", &bed.dir().join("threads-asan"), &link);
        let mut env = bed.env.clone();
        env.push(("ASAN_OPTIONS".into(), "detect_leaks=1:exitcode=86".into()));
        let (t, i, r) = (
            THREADS.to_string(),
            ITERATIONS.to_string(),
            MEMCHECK_ROUNDS.to_string(),
        );
        let mut threads_args = vec!["-t", &t, "-i", &i, "-r", &r, "-l", bed.label];
        if let Some(rv) = forged_tag {
            threads_args.extend(["-T", rv]);
        }
        threads_args.push(&module);
        for (run, checks) in [
            (
                run(
                    &client,
                    &["-g", "-I", "2", "-l", bed.label, &module],
                    &env,
                    bed.dir(),
                    false,
                ),
                CLIENT_CHECKS,
            ),
            (
                run(&threads, &threads_args, &env, bed.dir(), false),
                threads_checks(THREADS, ITERATIONS, MEMCHECK_ROUNDS),
            ),
        ] {
            run.assert_passed(checks);
            assert!(
                run.status.code() == Some(0) && !run.stderr.contains("Sanitizer"),
                "{}",
                run.report()
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The suppressions and the harness itself
// ------------------------------------------------------------------------------------------------

/// Allocator entry points that may head a leak suppression.
const ALLOCATORS: &[&str] = &[
    "fun:malloc",
    "fun:calloc",
    "fun:realloc",
    "fun:memalign",
    "fun:posix_memalign",
    "fun:aligned_alloc",
    "fun:_Znwm",
    "fun:_Znam",
];

/// Why a suppressions file breaks the policy of `tests/valgrind.supp`, one line per problem:
/// an entry without a comment before it, a frame that names p11gate or Rust, or an entry whose
/// first frame below the allocator is not a concrete frame of another library (a "..." or a bare
/// "*" there could match an allocation made by libp11gate.so).
fn suppression_problems(text: &str) -> Vec<String> {
    let rust_or_p11gate = [
        "p11gate",
        "rust",
        "_ZN",
        "_R",
        "std::",
        "core::",
        "alloc::",
        "hashbrown",
        "once_cell",
        "crossbeam",
        "parking_lot",
    ];
    let mut problems = Vec::new();
    let mut comment_before = false;
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line.starts_with('#') {
            comment_before = true;
            continue;
        }
        if line.is_empty() {
            continue;
        }
        if line != "{" {
            problems.push(format!("unexpected line outside an entry: {line}"));
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "}").collect();
        let name = body.first().copied().unwrap_or("(unnamed)");
        if !comment_before {
            problems.push(format!("{name}: no comment says whose it is and why"));
        }
        comment_before = false;
        let kind = body.get(1).copied().unwrap_or("");
        let frames: Vec<&str> = body
            .iter()
            .skip(2)
            .copied()
            .filter(|l| !l.starts_with("match-leak-kinds:"))
            .collect();
        for f in &frames {
            if rust_or_p11gate.iter().any(|bad| f.contains(bad)) {
                problems.push(format!("{name}: frame {f} names p11gate or Rust"));
            }
        }
        let first_owner = if kind == "Memcheck:Leak" {
            frames.iter().find(|f| !ALLOCATORS.contains(f))
        } else {
            frames.first()
        };
        // A concrete frame names something: at least three characters between its wildcards.
        let concrete = first_owner.is_some_and(|f| {
            let pattern = f.strip_prefix("fun:").or_else(|| f.strip_prefix("obj:"));
            pattern.is_some_and(|p| p.split(['*', '?', '/']).any(|part| part.len() >= 3))
        });
        if kind == "Memcheck:Leak" && !frames.first().is_some_and(|f| ALLOCATORS.contains(f)) {
            problems.push(format!("{name}: a leak entry must start at the allocator"));
        }
        if !concrete {
            problems.push(format!(
                "{name}: the frame below the allocator must name another library, not {first_owner:?}"
            ));
        }
    }
    problems
}

#[test]
fn suppressions_never_match_p11gate() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/valgrind.supp");
    let text = std::fs::read_to_string(&path).expect("tests/valgrind.supp");
    let problems = suppression_problems(&text);
    assert!(
        problems.is_empty(),
        "{}:\n{}",
        path.display(),
        problems.join("\n")
    );

    // The checker itself refuses each kind of bad entry.
    let bad = [
        (
            "{\n  x\n  Memcheck:Leak\n  fun:malloc\n  obj:*/libsofthsm2.so\n}\n",
            "no comment",
        ),
        (
            "# p11gate's\n{\n  x\n  Memcheck:Leak\n  fun:malloc\n  obj:*/libp11gate.so\n}\n",
            "names p11gate",
        ),
        (
            "# std's\n{\n  x\n  Memcheck:Leak\n  fun:malloc\n  fun:_ZN5alloc5alloc\n}\n",
            "names p11gate or Rust",
        ),
        (
            "# anyone's\n{\n  x\n  Memcheck:Leak\n  fun:malloc\n  ...\n  obj:*/libsofthsm2.so\n}\n",
            "must name another library",
        ),
        (
            "# anyone's\n{\n  x\n  Memcheck:Leak\n  fun:malloc\n  obj:*\n}\n",
            "must name another library",
        ),
        (
            "# anyone's\n{\n  x\n  Memcheck:Leak\n  fun:malloc\n  obj:*/*\n}\n",
            "must name another library",
        ),
        (
            "# anyone's\n{\n  x\n  Memcheck:Leak\n  obj:*/libsofthsm2.so\n}\n",
            "must start at the allocator",
        ),
        (
            "# anyone's\n{\n  x\n  Memcheck:Cond\n  ...\n}\n",
            "must name another library",
        ),
    ];
    for (text, why) in bad {
        let problems = suppression_problems(text);
        assert!(
            problems.iter().any(|p| p.contains(why)),
            "not refused ({why}): {problems:?}\n{text}"
        );
    }
    let good = "# SoftHSMv2's\n{\n  x\n  Memcheck:Leak\n  match-leak-kinds: definite\n  fun:calloc\n  obj:*/libsofthsm2.so\n  ...\n}\n";
    assert_eq!(suppression_problems(good), Vec::<String>::new());
}

/// A small C program with one invalid read, one definite leak (40 bytes) and one block reached
/// only through a pointer into its middle: the harness must report all three.
const CANARY: &str = r#"
#include <stdio.h>
#include <stdlib.h>
static char *middle;
static __attribute__((noinline)) void leak(void) { char *p = malloc(40); p[0] = 1; }
int main(void)
{
    char *p = malloc(8);
    volatile char c;
    leak();
    middle = (char *)malloc(64) + 8;
    c = p[8];
    free(p);
    printf("canary %d\n", c);
    return 0;
}
"#;

#[test]
fn memcheck_reports_a_leak_an_invalid_read_and_a_stray_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("canary.c");
    std::fs::write(&src, CANARY).expect("write canary.c");
    let exe = dir.path().join("canary");
    let gcc = Command::new(common::require_program("gcc"))
        .args(["-g", "-O0", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("gcc");
    assert!(
        gcc.status.success(),
        "{}",
        String::from_utf8_lossy(&gcc.stderr)
    );
    let run = run(&exe, &[], &[], dir.path(), true);
    let summary = Summary::parse(&run.log);
    assert_eq!(
        run.status.code(),
        Some(VALGRIND_ERROR_EXIT),
        "{}",
        run.report()
    );
    assert_eq!(
        summary,
        Summary {
            complete: true,
            errors: Some(2),
            definitely_lost: 40,
            indirectly_lost: 0,
            possibly_lost: 64,
        },
        "{}",
        run.report()
    );
    let stray = unexplained_possible_leaks(&run.log);
    assert_eq!(stray.len(), 1, "{stray:?}\n{}", run.report());
    assert!(stray[0].contains("64 bytes in 1 blocks"), "{}", stray[0]);
}
