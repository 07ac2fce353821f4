//! A plain C application against the built module: `tests/c/client.c` (lifecycle, C_Initialize
//! forms with real pthread mutex callbacks, C_GetInfo, NULL arguments, interfaces, a session with
//! an AES round trip), `tests/c/fork.c` (fork, again and again, while four threads are inside
//! the module) and `tests/c/cycles.c` (1,000 C_Initialize / C_Finalize cycles: memory and
//! descriptors stay flat).
//!
//! The programs are compiled with gcc (-Wall -Wextra -Werror) against `include/p11gate.h` and run as
//! separate processes on a fresh SoftHSMv2 token (fork.c also on the soft token), so each run gets
//! its own module state. Every
//! test asserts the exit status and the exact closing "N passed, 0 failed" line: a check that is
//! silently skipped changes N.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{SoftHsm, USER_PIN};

/// Checks `client -g -I 2` runs through p11gate with SoftHSMv2 as the upstream (also with
/// pkcs11-spy in front of SoftHSMv2: the spy then offers only 2.x, as SoftHSMv2 does).
const GATE_SOFTHSM_CHECKS: usize = 382;
/// Checks `client -g -I 3 -n` runs through p11gate with pkcs11-spy in front of OpenSC (3.0).
const GATE_3_0_TOKENLESS_CHECKS: usize = 275;
/// Checks `client -g -I 2 -U` runs through p11gate when the upstream cannot be loaded.
const GATE_NO_UPSTREAM_CHECKS: usize = 148;
/// Checks `client -I 0` runs directly against SoftHSMv2 (no p11gate).
const SOFTHSM_DIRECT_CHECKS: usize = 268;
/// Checks of fork.c's parent (plus FORK_PARENT_CHECKS_PER_FORK per fork) and of each child.
const FORK_PARENT_CHECKS: usize = 35;
const FORK_PARENT_CHECKS_PER_FORK: usize = 3;
const FORK_CHILD_CHECKS: usize = 23;
/// Forks per run of fork.c.
const FORKS: usize = 100;

const PKCS11_SPY: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/pkcs11-spy.so";
const OPENSC: &str = "/usr/lib/x86_64-linux-gnu/pkcs11/opensc-pkcs11.so";
const TIMEOUT: Duration = Duration::from_secs(180);

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn last_line(&self) -> &str {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
    }

    /// The report shown when an assertion fails: the failed checks first, then everything.
    fn report(&self) -> String {
        let failures: Vec<&str> = self
            .stdout
            .lines()
            .filter(|l| l.contains("FAIL - "))
            .collect();
        format!(
            "status: {}\nfailed checks:\n  {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            failures.join("\n  "),
            self.stdout,
            self.stderr
        )
    }

    /// Exit status 0 and the exact closing line.
    fn assert_all_passed(&self, checks: usize) {
        assert!(
            self.status.success() && self.last_line() == format!("{checks} passed, 0 failed"),
            "expected exit 0 and \"{checks} passed, 0 failed\", got \"{}\"\n{}",
            self.last_line(),
            self.report()
        );
    }
}

/// Runs `exe args` with `env` (and nothing of p11gate's from this process), with a timeout.
fn run(exe: &Path, args: &[&str], env: &[(String, String)], dir: &Path) -> Run {
    let out_path = dir.join(format!(
        "{}.stdout",
        exe.file_name().unwrap().to_string_lossy()
    ));
    let err_path = dir.join(format!(
        "{}.stderr",
        exe.file_name().unwrap().to_string_lossy()
    ));
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"));
    for (k, _) in std::env::vars() {
        if k.starts_with("P11GATE_") || k.starts_with("PKCS11SPY") || k == "SOFTHSM2_CONF" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd.spawn().expect("spawn C client");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for C client") {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let status = child.wait().expect("wait for killed C client");
            let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
            panic!(
                "{} timed out after {TIMEOUT:?} ({status})\n{stdout}",
                exe.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: std::fs::read_to_string(&out_path).expect("read stdout"),
        stderr: std::fs::read_to_string(&err_path).expect("read stderr"),
    }
}

fn with_pin(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    env.push(("P11_USER_PIN".into(), USER_PIN.into()));
    env
}

/// The environment for SoftHSMv2 loaded directly (no p11gate).
fn softhsm_env(hsm: &SoftHsm) -> Vec<(String, String)> {
    with_pin(vec![(
        "SOFTHSM2_CONF".into(),
        hsm.conf.display().to_string(),
    )])
}

fn module_arg() -> String {
    common::module().display().to_string()
}

#[test]
fn client_through_p11gate_with_softhsm_upstream() {
    let hsm = SoftHsm::new();
    hsm.init_token("c-client");
    let client = common::compile_c("client", hsm.dir());
    let module = module_arg();
    let run = run(
        &client,
        &["-g", "-I", "2", "-l", "c-client", &module],
        &with_pin(hsm.gate_env()),
        hsm.dir(),
    );
    run.assert_all_passed(GATE_SOFTHSM_CHECKS);
    assert!(
        !run.stdout.contains(USER_PIN) && !run.stderr.contains(USER_PIN),
        "the user PIN appears in the output or the log"
    );
}

#[test]
fn client_directly_against_softhsm() {
    let hsm = SoftHsm::new();
    hsm.init_token("c-direct");
    let client = common::compile_c("client", hsm.dir());
    let softhsm = common::softhsm_module().display().to_string();
    let run = run(
        &client,
        &["-I", "0", "-l", "c-direct", &softhsm],
        &softhsm_env(&hsm),
        hsm.dir(),
    );
    run.assert_all_passed(SOFTHSM_DIRECT_CHECKS);
}

/// Without `-g` the client runs only the checks that hold for any module; p11gate in front of
/// SoftHSMv2 must answer each of them exactly as SoftHSMv2 does (the interface checks differ by
/// design: SoftHSMv2 2.6 exports no C_GetInterfaceList, p11gate always offers 2.40).
#[test]
fn p11gate_answers_the_common_checks_like_softhsm() {
    fn common_checks(run: &Run) -> Vec<String> {
        run.stdout
            .lines()
            .filter(|l| l.starts_with("ok ") || l.starts_with("FAIL "))
            .filter(|l| !l.contains("nterface") && !l.contains("PKCS 11"))
            .map(|l| {
                // "dlopen <path>" names the module.
                if l.contains("dlopen ") {
                    "dlopen".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect()
    }

    let hsm = SoftHsm::new();
    hsm.init_token("c-same");
    let client = common::compile_c("client", hsm.dir());
    let softhsm = common::softhsm_module().display().to_string();
    let direct = run(
        &client,
        &["-I", "0", "-l", "c-same", &softhsm],
        &softhsm_env(&hsm),
        hsm.dir(),
    );
    direct.assert_all_passed(SOFTHSM_DIRECT_CHECKS);
    let module = module_arg();
    let gated = run(
        &client,
        &["-I", "2", "-l", "c-same", &module],
        &with_pin(hsm.gate_env()),
        hsm.dir(),
    );
    let (d, g) = (common_checks(&direct), common_checks(&gated));
    let differences: Vec<String> = d
        .iter()
        .zip(g.iter())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("  softhsm: {a}\n  p11gate: {b}"))
        .collect();
    assert!(
        differences.is_empty() && d.len() == g.len(),
        "p11gate and SoftHSMv2 answer differently ({} vs {} checks):\n{}\n{}",
        d.len(),
        g.len(),
        differences.join("\n"),
        gated.report()
    );
    gated.assert_all_passed(
        gated
            .stdout
            .lines()
            .filter(|l| l.starts_with("ok "))
            .count(),
    );
}

/// The environment that puts pkcs11-spy (logging to `log`) between p11gate and `module`.
fn spy_env(hsm: &SoftHsm, module: &str, log: &Path) -> Vec<(String, String)> {
    for so in [PKCS11_SPY, module] {
        assert!(
            Path::new(so).exists(),
            "{so} missing: install opensc-pkcs11 (scripts/test.sh does)"
        );
    }
    let mut env = with_pin(hsm.gate_env());
    env.retain(|(k, _)| k != "P11GATE_UPSTREAM");
    env.push(("P11GATE_UPSTREAM".into(), PKCS11_SPY.into()));
    env.push(("PKCS11SPY".into(), module.into()));
    env.push(("PKCS11SPY_OUTPUT".into(), log.display().to_string()));
    env
}

/// The functions whose calls, as pkcs11-spy logged them, returned `rv_name` from the upstream.
fn spy_calls_returning(log: &str, rv_name: &str) -> Vec<String> {
    let mut current = String::new();
    let mut found = Vec::new();
    for line in log.lines() {
        // "<n>: C_Name" starts a call, "Returned:  <rv> <name>" ends it.
        if let Some((n, name)) = line.split_once(": ") {
            if n.chars().all(|c| c.is_ascii_digit()) && name.starts_with("C_") {
                current = name.trim().to_string();
            }
        }
        if line.starts_with("Returned:") && line.split_whitespace().any(|w| w == rv_name) {
            found.push(current.clone());
        }
    }
    found
}

/// pkcs11-spy mirrors the module behind it: in front of OpenSC (a 3.0 module) it offers
/// "PKCS 11" 3.0, so p11gate must offer 3.0 too, before and after C_Initialize, and route the
/// 3.0 functions. OpenSC has no token here (no reader), hence `-n`.
#[test]
fn p11gate_offers_pkcs11_3_0_when_the_upstream_does() {
    let hsm = SoftHsm::new();
    let client = common::compile_c("client", hsm.dir());
    let spy_log = hsm.dir().join("spy.log");
    let env = spy_env(&hsm, OPENSC, &spy_log);
    let module = module_arg();
    let run = run(&client, &["-g", "-I", "3", "-n", &module], &env, hsm.dir());
    run.assert_all_passed(GATE_3_0_TOKENLESS_CHECKS);
    let log = std::fs::read_to_string(&spy_log).unwrap_or_default();
    assert!(
        log.contains("C_GetInterface") && log.contains("C_Initialize"),
        "p11gate did not negotiate through pkcs11-spy (its log {}):\n{log}",
        spy_log.display()
    );
}

/// pkcs11-spy in front of SoftHSMv2 offers only 2.x, so p11gate offers only 2.40; the whole
/// client passes through the spy, and the spy's log proves that none of the NULL-argument calls
/// the client makes reached the upstream (the one CKR_ARGUMENTS_BAD the upstream may return is
/// its answer to p11gate's probe for a 3.0 interface).
#[test]
fn client_through_p11gate_with_pkcs11_spy_in_front_of_softhsm() {
    let hsm = SoftHsm::new();
    hsm.init_token("c-spy");
    let client = common::compile_c("client", hsm.dir());
    let spy_log = hsm.dir().join("spy.log");
    let softhsm = common::softhsm_module().display().to_string();
    let env = spy_env(&hsm, &softhsm, &spy_log);
    let module = module_arg();
    let run = run(
        &client,
        &["-g", "-I", "2", "-l", "c-spy", &module],
        &env,
        hsm.dir(),
    );
    run.assert_all_passed(GATE_SOFTHSM_CHECKS);
    let log = std::fs::read_to_string(&spy_log).unwrap_or_default();
    assert!(
        log.contains("C_Initialize") && log.contains("C_OpenSession") && log.contains("C_Encrypt"),
        "the calls did not go through pkcs11-spy (its log {}):\n{log}",
        spy_log.display()
    );
    let reached: Vec<String> = spy_calls_returning(&log, "CKR_ARGUMENTS_BAD")
        .into_iter()
        .filter(|f| f != "C_GetInterface")
        .collect();
    assert!(
        reached.is_empty(),
        "calls with bad arguments reached the upstream: {reached:?}"
    );
}

/// Through p11gate with SoftHSMv2 (2.40 only) as the upstream: "PKCS 11" 2.40 only. The full
/// client run above checks the same with `-I 2`; this test isolates the interface lines so that a
/// failure here points at interface negotiation rather than at anything else the client does.
#[test]
fn p11gate_offers_only_2_40_when_the_upstream_is_softhsm() {
    let hsm = SoftHsm::new();
    hsm.init_token("c-240");
    let client = common::compile_c("client", hsm.dir());
    let module = module_arg();
    let run = run(
        &client,
        &["-g", "-I", "2", "-l", "c-240", &module],
        &with_pin(hsm.gate_env()),
        hsm.dir(),
    );
    let interface_failures: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL") && l.contains("nterface"))
        .collect();
    assert!(
        interface_failures.is_empty(),
        "interface checks failed:\n{}\n{}",
        interface_failures.join("\n"),
        run.report()
    );
    for line in [
        "ok   - \"PKCS 11\" 2.40 is offered once (1)",
        "ok   - \"PKCS 11\" 3.0 is not offered (0)",
        "ok   - C_GetInterface(\"PKCS 11\", 3.0) (not offered) -> CKR_ARGUMENTS_BAD",
        "ok   - initialised: \"PKCS 11\" 3.0 is not offered (0 listed)",
    ] {
        assert!(
            run.stdout.lines().any(|l| l == line),
            "missing \"{line}\"\n{}",
            run.report()
        );
    }
}

#[test]
fn missing_upstream_fails_c_initialize_and_says_why() {
    let hsm = SoftHsm::new();
    let client = common::compile_c("client", hsm.dir());
    let mut env = hsm.gate_env();
    env.retain(|(k, _)| k != "P11GATE_UPSTREAM" && k != "P11GATE_LOG");
    env.push(("P11GATE_UPSTREAM".into(), "/nonexistent/x.so".into()));
    env.push(("P11GATE_LOG".into(), "stderr".into()));
    let module = module_arg();
    let run = run(&client, &["-g", "-I", "2", "-U", &module], &env, hsm.dir());
    run.assert_all_passed(GATE_NO_UPSTREAM_CHECKS);
    assert!(
        run.stderr
            .contains("cannot load upstream /nonexistent/x.so:"),
        "no \"cannot load upstream /nonexistent/x.so:\" in the log\n{}",
        run.report()
    );
}

/// Runs fork.c with `forks` forks and checks every child's and the parent's closing line.
fn assert_forks_pass(run: &Run, forks: usize) {
    let child_line = format!("child: {FORK_CHILD_CHECKS} passed, 0 failed");
    let children: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("child: ") && l.ends_with(" failed"))
        .collect();
    assert!(
        children.len() == forks && children.iter().all(|l| *l == child_line),
        "expected {forks} times \"{child_line}\", got {children:?}\n{}",
        run.report()
    );
    run.assert_all_passed(FORK_PARENT_CHECKS + FORK_PARENT_CHECKS_PER_FORK * forks);
}

/// fork() while four threads are inside p11gate and SoftHSMv2 (random, AES, HMAC, digest, ECDSA,
/// session churn), 100 times: the fork gate lets the running calls finish first, so no child
/// inherits a lock held by a thread it does not have (before it, a child hung in about one fork
/// in twenty, on SoftHSMv2's OpenSSL RNG lock). Every child re-initialises and works; the
/// parent's threads see no failed call.
#[test]
fn fork_while_threads_are_inside_softhsm_through_p11gate() {
    let hsm = SoftHsm::new();
    hsm.init_token("c-fork");
    let fork = common::compile_c("fork", hsm.dir());
    let module = module_arg();
    // With an audit file: each child's C_Initialize starts a queue and writer of its own (the
    // parent's writer thread does not exist in the child), and all processes append to the
    // one chained file.
    let audit = hsm.dir().join("audit.jsonl");
    let key = hsm.dir().join("audit.key");
    let keygen = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["audit", "keygen"])
        .arg(&key)
        .output()
        .expect("p11gate audit keygen");
    assert!(keygen.status.success(), "{keygen:?}");
    let mut env = with_pin(hsm.gate_env());
    env.push(("P11GATE_AUDIT".into(), format!("file:{}", audit.display())));
    env.push(("P11GATE_AUDIT_KEY".into(), key.display().to_string()));
    let forks = FORKS.to_string();
    let run = run(
        &fork,
        &["-l", "c-fork", "-n", &forks, &module],
        &env,
        hsm.dir(),
    );
    assert_forks_pass(&run, FORKS);

    let text = std::fs::read_to_string(&audit).expect("the audit file");
    let init_pids: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.contains("\"event\":\"init\""))
        .filter_map(|l| l.split("\"pid\":").nth(1)?.split(',').next())
        .collect();
    assert_eq!(
        init_pids.len(),
        FORKS + 1,
        "one init record from the parent and one from each child"
    );
    let verify = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["audit", "verify"])
        .arg(&audit)
        .arg("--key")
        .arg(&key)
        .output()
        .expect("p11gate audit verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// The same on the built-in soft token (no upstream): its session and store locks, and the
/// audit key-label cache, must not be inherited locked either.
#[test]
fn fork_while_threads_are_inside_the_soft_token() {
    let home = tempfile::tempdir().expect("tempdir");
    let env = vec![
        (
            "P11GATE_HOME".to_string(),
            home.path().display().to_string(),
        ),
        ("P11GATE_CONFIG".into(), "/nonexistent/p11gate.toml".into()),
        ("P11GATE_LOG".into(), "stderr".into()),
        ("P11GATE_AUDIT".into(), "off".into()),
        ("P11_USER_PIN".into(), SOFT_USER_PIN.into()),
    ];
    init_soft_token(&env, "c-fork-soft");
    let fork = common::compile_c("fork", home.path());
    let forks = FORKS.to_string();
    let run = run(
        &fork,
        &["-l", "c-fork-soft", "-n", &forks, &module_arg()],
        &env,
        home.path(),
    );
    assert_forks_pass(&run, FORKS);
}

const SOFT_SO_PIN: &str = "c-soft-so-pin-2291";
const SOFT_USER_PIN: &str = "c-soft-user-pin-7714";

/// `p11gate token init` of slot 0 in the soft token home that `env` names.
fn init_soft_token(env: &[(String, String)], label: &str) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["token", "init", "--label", label])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("p11gate token init");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SOFT_SO_PIN}\n{SOFT_USER_PIN}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "token init: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Cycles of cycles.c per run. Memory and descriptors are measured after CYCLES_BASELINE cycles
/// (everything p11gate creates once per process exists by then: the interned runtime, the
/// logger, the audit pipeline, the writer thread's malloc arena, the soft token's KDF buffer),
/// after CYCLES_MIDDLE and after the last.
const CYCLES: usize = 1000;
const CYCLES_BASELINE: usize = 50;
const CYCLES_MIDDLE: usize = 500;
/// Checks cycles.c counts: dlopen, the export, C_GetFunctionList, then 14 per cycle.
const CYCLES_CHECKS: usize = 3 + 14 * CYCLES;
/// How much resident memory may grow from the baseline to the last cycle, and over the second
/// half. Runtimes are interned per configuration and a cycle frees what it allocated (valgrind
/// finds the same bytes in use at exit after 20 cycles as after 60), so what grows is the
/// allocator settling: measured +88..+160 KiB from cycle 50 to 1000, all of it before cycle 100,
/// and 0..8 KiB from 500 to 1000. glibc keeps up to 128 KiB free at the top of a heap before it
/// trims (M_TRIM_THRESHOLD), so the bounds leave that much room: a leak of 552 bytes or more per
/// cycle breaks the first, one of 393 bytes or more the second.
const CYCLES_RSS_GROWTH_KIB: i64 = 512;
const CYCLES_RSS_GROWTH_SECOND_HALF_KIB: i64 = 192;

/// (resident KiB, open descriptors) after each measured cycle.
fn measures(run: &Run) -> std::collections::BTreeMap<usize, (i64, i64)> {
    run.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("measure: "))
        .map(|l| {
            let f: std::collections::BTreeMap<&str, &str> = l
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .collect();
            let num = |k: &str| f[k].parse::<i64>().expect("a number");
            (num("cycle") as usize, (num("rss_kib"), num("fds")))
        })
        .collect()
}

/// Runs cycles.c with `env` and checks that memory and descriptors stay flat.
fn assert_cycles_leak_nothing(env: &[(String, String)], dir: &Path, label: &str) {
    let cycles = common::compile_c("cycles", dir);
    let n = CYCLES.to_string();
    let (base, middle) = (CYCLES_BASELINE.to_string(), CYCLES_MIDDLE.to_string());
    let args = [
        "-l",
        label,
        "-n",
        &n,
        "-m",
        &base,
        "-m",
        &middle,
        &module_arg(),
    ];
    let run = run(&cycles, &args, env, dir);
    run.assert_all_passed(CYCLES_CHECKS);
    let m = measures(&run);
    let at = |cycle: usize| {
        *m.get(&cycle)
            .unwrap_or_else(|| panic!("no measurement after cycle {cycle}\n{}", run.report()))
    };
    let ((rss0, fds0), (rss1, fds1), (rss2, fds2)) =
        (at(CYCLES_BASELINE), at(CYCLES_MIDDLE), at(CYCLES));
    println!(
        "resident KiB / open descriptors after cycle {CYCLES_BASELINE}: {rss0} / {fds0}, \
         {CYCLES_MIDDLE}: {rss1} / {fds1}, {CYCLES}: {rss2} / {fds2}"
    );
    assert_eq!(
        (fds1, fds2),
        (fds0, fds0),
        "open descriptors after cycles {CYCLES_BASELINE}, {CYCLES_MIDDLE} and {CYCLES}"
    );
    assert!(
        rss2 - rss0 < CYCLES_RSS_GROWTH_KIB && rss2 - rss1 < CYCLES_RSS_GROWTH_SECOND_HALF_KIB,
        "resident memory grew: {rss0} KiB after cycle {CYCLES_BASELINE}, {rss1} after \
         {CYCLES_MIDDLE}, {rss2} after {CYCLES}"
    );
}

/// An audit key and the environment that audits to a chained file with it.
fn audit_env(dir: &Path) -> Vec<(String, String)> {
    let key = dir.join("audit.key");
    let keygen = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["audit", "keygen"])
        .arg(&key)
        .output()
        .expect("p11gate audit keygen");
    assert!(keygen.status.success(), "{keygen:?}");
    vec![
        (
            "P11GATE_AUDIT".into(),
            format!("file:{}", dir.join("audit.jsonl").display()),
        ),
        ("P11GATE_AUDIT_KEY".into(), key.display().to_string()),
    ]
}

/// 1,000 C_Initialize / log in / encrypt / C_Finalize cycles through p11gate to SoftHSMv2, audit
/// on (a writer thread started and joined each cycle): descriptors exactly as after 50 cycles,
/// resident memory within CYCLES_RSS_GROWTH_KIB (and CYCLES_RSS_GROWTH_SECOND_HALF_KIB).
#[test]
fn initialize_finalize_cycles_leak_nothing_with_softhsm() {
    let hsm = SoftHsm::new();
    hsm.init_token("c-cycles");
    let mut env = with_pin(hsm.gate_env());
    env.extend(audit_env(hsm.dir()));
    assert_cycles_leak_nothing(&env, hsm.dir(), "c-cycles");
}

/// The same on the soft token (each login derives the PIN's key with argon2id in 19 MiB: this
/// test found the resident size swinging between 60 and 140 MiB before that memory was one
/// buffer reused by every login).
#[test]
fn initialize_finalize_cycles_leak_nothing_on_the_soft_token() {
    let home = tempfile::tempdir().expect("tempdir");
    let mut env = vec![
        (
            "P11GATE_HOME".to_string(),
            home.path().display().to_string(),
        ),
        ("P11GATE_CONFIG".into(), "/nonexistent/p11gate.toml".into()),
        ("P11GATE_LOG".into(), "stderr".into()),
        ("P11_USER_PIN".into(), SOFT_USER_PIN.into()),
    ];
    env.extend(audit_env(home.path()));
    init_soft_token(&env, "c-cycles-soft");
    assert_cycles_leak_nothing(&env, home.path(), "c-cycles-soft");
}

/// An application that dlclose()s p11gate without C_Finalize must still exit cleanly: the
/// upstream keeps p11gate's mutex callbacks, so p11gate must stay mapped (-z nodelete). Before
/// that, SoftHSMv2's exit-time clean-up called into the unmapped library and crashed.
#[test]
fn dlclose_without_finalize_exits_cleanly() {
    let hsm = common::SoftHsm::new();
    hsm.init_token("c-unload");
    let unload = common::compile_c("unload", hsm.dir());
    let module = common::module().display().to_string();
    let r = run(&unload, &[&module], &hsm.gate_env(), hsm.dir());
    assert_eq!(r.stdout, "unloaded, exiting\n", "stderr: {}", r.stderr);
    assert_eq!(r.status.code(), Some(0), "stderr: {}", r.stderr);
}
