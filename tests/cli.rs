//! The `p11gate` command as scripts and people use it: one test per exit status, the `--json`
//! output of each command that has it, `--help` with examples for every command, the committed
//! man page against what the code generates, shell completions run by a real bash, and the
//! progress line on a real terminal only.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

use common::{SoftHsm, SO_PIN, USER_PIN};

/// Runs `p11gate args` with only PATH and `env` in its environment, `stdin` on its input.
fn p11gate(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_p11gate"));
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run p11gate");
    // A command that fails before reading its input (a usage error, a refused token) may exit
    // before the write: a broken pipe then is the expected outcome, not a test failure.
    let written = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    child.wait_with_output().expect("wait for p11gate")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 stderr")
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    )
}

/// The one JSON object a `--json` run printed.
fn json_of(out: &Output) -> Value {
    let text = stdout(out);
    assert!(
        text.ends_with('\n') && text.matches('\n').count() == 1,
        "one line of JSON: {}",
        show(out)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {}", show(out)))
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", show(out));
}

/// An environment that reads no configuration file.
const NO_CONFIG: (&str, &str) = ("P11GATE_CONFIG", "/nonexistent/p11gate.toml");

/// A JSON-lines audit file of `records` records chained under `key`, as the module writes them.
fn chained_file(path: &Path, key: &[u8], records: u64) {
    let key = p11gate::audit::chain::AuditKey::from_bytes(key);
    let mut prev = [0u8; 32];
    let mut text = String::new();
    for seq in 0..records {
        let body = format!(
            "{{\"seq\":{seq},\"event\":\"call\",\"time\":\"2026-11-28T23:00:00.000000Z\",\"host\":\"h\",\"pid\":1,\"rec\":{},\"app\":\"a\",\"fn\":\"C_Encrypt\",\"rv\":\"CKR_OK\"",
            seq + 1
        );
        prev = key.chain(&prev, body.as_bytes());
        text.push_str(&body);
        text.push_str(&format!(
            ",\"chain\":\"{}\"}}\n",
            p11gate::audit::chain::hex(&prev)
        ));
    }
    std::fs::write(path, text).expect("write audit file");
}

const AUDIT_KEY: [u8; 32] = [7; 32];

/// A key file holding [`AUDIT_KEY`] as hex.
fn key_file(dir: &Path) -> String {
    let path = dir.join("audit.key");
    std::fs::write(&path, p11gate::audit::chain::hex(&AUDIT_KEY)).expect("write key");
    path.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// Exit statuses: one test each.

#[test]
fn exit_0_success_config_check_of_the_soft_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p11gate.toml");
    let home = dir.path().join("tokens");
    std::fs::write(
        &cfg,
        format!("[soft_token]\nhome = \"{}\"\nslots = 2\n", home.display()),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let out = p11gate(&["config", "check", &cfg], &[], "");
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        format!(
            "config {cfg}: OK\nno upstream: the built-in soft token\n  slot 0: {h}/token0\n  slot 1: {h}/token1\n",
            h = home.display()
        )
    );
    assert_eq!(stderr(&out), "");

    let out = p11gate(&["config", "check", "--json", &cfg], &[], "");
    assert_exit(&out, 0);
    assert_eq!(
        json_of(&out),
        json!({
            "config": cfg,
            "ok": true,
            "error": null,
            "backend": "soft_token",
            "soft_token_slots": [
                {"slot": 0, "dir": format!("{}/token0", home.display())},
                {"slot": 1, "dir": format!("{}/token1", home.display())},
            ],
            "apps": [],
        })
    );
}

#[test]
fn exit_1_check_failed_invalid_config_and_broken_chain() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[audit]\nqueue = 0\n").unwrap();
    let cfg = cfg.display().to_string();
    let message = format!("config {cfg}:2: audit queue = 0: it must be 1 to 1048576");
    let out = p11gate(&["config", "check", &cfg], &[], "");
    assert_exit(&out, 1);
    assert_eq!(stdout(&out), "");
    assert_eq!(stderr(&out), format!("{message}\n"));
    let out = p11gate(&["config", "check", "--json", &cfg], &[], "");
    assert_exit(&out, 1);
    assert_eq!(
        json_of(&out),
        json!({
            "config": cfg,
            "ok": false,
            "error": message,
            "backend": null,
            "soft_token_slots": [],
            "apps": [],
        })
    );

    // A record edited after the fact.
    let audit = dir.path().join("audit.jsonl");
    chained_file(&audit, &AUDIT_KEY, 5);
    let text = std::fs::read_to_string(&audit).unwrap();
    std::fs::write(&audit, text.replacen("\"rec\":3,", "\"rec\":33,", 1)).unwrap();
    let (audit, key) = (audit.display().to_string(), key_file(dir.path()));
    let out = p11gate(&["audit", "verify", &audit, "--key", &key], &[], "");
    assert_exit(&out, 1);
    assert!(
        stdout(&out).starts_with(&format!("{audit}:3: edited: ")),
        "{}",
        show(&out)
    );
}

#[test]
fn exit_2_usage_errors_print_nothing_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    chained_file(&audit, &AUDIT_KEY, 1);
    let audit = audit.display().to_string();
    let short_key = dir.path().join("short.key");
    std::fs::write(&short_key, "0011").unwrap();
    let short_key = short_key.display().to_string();
    let long_label = "x".repeat(33);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "Usage: p11gate <COMMAND>"),
        (vec!["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (vec!["config", "check", "--bogus"], "unexpected argument '--bogus'"),
        (vec!["audit", "verify"], "the following required arguments"),
        (
            vec!["audit", "verify", &audit],
            "audit verify: no key: pass --key KEYFILE, set P11GATE_AUDIT_KEY, or key_file in [audit]",
        ),
        (
            vec!["audit", "verify", "--key", &short_key, &audit],
            "bytes; it needs at least 32",
        ),
        (
            vec!["audit", "summary", "--since", "yesterday"],
            "not an RFC 3339 time or an age like 30m, 2h, 7d",
        ),
        (
            vec!["audit", "summary", "--app", "a", "--app", "b"],
            "cannot be used multiple times",
        ),
        (vec!["audit", "summary", "--json=yes"], "unexpected value 'yes'"),
        (
            vec!["token", "init", "--label", &long_label],
            "33 bytes; a token label has at most 32",
        ),
        (
            vec!["token", "init", "--slot", "1", "--dir", "/tmp/x"],
            "cannot be used with",
        ),
        (vec!["token", "init", "--slot", "one"], "invalid value 'one'"),
        (vec!["completions", "tcsh"], "invalid value 'tcsh'"),
    ];
    for (args, message) in cases {
        let out = p11gate(&args, &[NO_CONFIG], "");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        assert_eq!(stdout(&out), "", "{args:?}");
        assert!(
            stderr(&out).contains(message),
            "{args:?}: want {message:?} in {}",
            show(&out)
        );
    }
}

#[test]
fn exit_3_io_errors_name_the_file_and_print_nothing_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let missing = missing.display().to_string();
    let audit = dir.path().join("audit.jsonl");
    chained_file(&audit, &AUDIT_KEY, 1);
    let audit = audit.display().to_string();
    let key = key_file(dir.path());
    let enoent = "No such file or directory (os error 2)";
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["config", "check", &missing],
            format!("config {missing}: {enoent}"),
        ),
        (
            vec!["config", "check", "--json", &missing],
            format!("config {missing}: {enoent}"),
        ),
        (
            vec!["audit", "verify", "--key", &key, &missing],
            format!("audit verify: {missing}: {enoent}"),
        ),
        (
            vec!["audit", "verify", "--json", "--key", &missing, &audit],
            format!("audit verify: audit key {missing}: {enoent}"),
        ),
        (
            vec!["audit", "keygen", &key],
            format!("audit keygen: {key}: File exists (os error 17)"),
        ),
        (
            vec!["audit", "summary", "--json", &missing],
            format!("audit summary: {missing}: {enoent}"),
        ),
    ];
    for (args, message) in cases {
        let out = p11gate(&args, &[NO_CONFIG], "");
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", show(&out));
        assert_eq!(stdout(&out), "", "{args:?}");
        assert_eq!(stderr(&out), format!("{message}\n"), "{args:?}");
    }
    // The key file was not touched.
    assert_eq!(
        std::fs::read_to_string(&key).unwrap(),
        p11gate::audit::chain::hex(&AUDIT_KEY)
    );
}

// ---------------------------------------------------------------------------------------------
// --json

#[test]
fn audit_verify_json_reports_the_count_or_the_first_problem() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    chained_file(&audit, &AUDIT_KEY, 6);
    let (path, key) = (audit.display().to_string(), key_file(dir.path()));
    let key_id = p11gate::audit::chain::AuditKey::from_bytes(&AUDIT_KEY).id();
    // The key from the environment, as the help says.
    let out = p11gate(
        &["audit", "verify", "--json", &path],
        &[NO_CONFIG, ("P11GATE_AUDIT_KEY", &key)],
        "",
    );
    assert_exit(&out, 0);
    assert_eq!(
        json_of(&out),
        json!({"file": path, "key_id": key_id, "ok": true, "records": 6,
               "line": null, "problem": null, "detail": null})
    );
    assert_eq!(stderr(&out), "");
    let out = p11gate(&["audit", "verify", &path, "--key", &key], &[], "");
    assert_exit(&out, 0);
    assert_eq!(stdout(&out), format!("{path}: OK, 6 records\n"));

    // Record seq 2 deleted.
    let text = std::fs::read_to_string(&audit).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("{\"seq\":2,"))
        .collect();
    std::fs::write(&audit, kept.join("\n") + "\n").unwrap();
    let out = p11gate(
        &["audit", "verify", "--json", "--key", &key, &path],
        &[],
        "",
    );
    assert_exit(&out, 1);
    assert_eq!(
        json_of(&out),
        json!({"file": path, "key_id": key_id, "ok": false, "records": null, "line": 3,
               "problem": "deleted", "detail": "record(s) seq 2..2 missing before seq 3"})
    );
}

#[test]
fn audit_summary_json_through_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    chained_file(&audit, &AUDIT_KEY, 4);
    let path = audit.display().to_string();
    // Options in any order, `--name=value` or `--name value`, standard input as `-`.
    let out = p11gate(
        &[
            "audit",
            "summary",
            "--fn=Encrypt",
            "--json",
            "--app",
            "a",
            "--since",
            "2026-11-28T22:00:00Z",
            &path,
        ],
        &[],
        "",
    );
    assert_exit(&out, 0);
    let v = json_of(&out);
    assert_eq!(v["calls"], 4, "{v}");
    assert_eq!(v["apps"][0]["name"], "a");
    let text = std::fs::read_to_string(&audit).unwrap();
    let out = p11gate(&["audit", "summary", "--json", "--app=b", "-"], &[], &text);
    assert_exit(&out, 0);
    assert_eq!(json_of(&out)["calls"], 0);
}

#[test]
fn token_init_json_reports_success_and_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let home_s = home.display().to_string();
    let env = [NO_CONFIG, ("P11GATE_HOME", home_s.as_str())];
    let pins = format!("{SO_PIN}\n{USER_PIN}\n");
    let out = p11gate(&["token", "init", "--label", "cli", "--json"], &env, &pins);
    assert_exit(&out, 0);
    let dir0 = format!("{home_s}/token0");
    assert_eq!(
        json_of(&out),
        json!({"ok": true, "slot": 0, "label": "cli", "dir": dir0,
               "uri": "pkcs11:token=cli;manufacturer=p11gate;serial=0000000000000000;model=soft%20token",
               "error": null})
    );
    // Initialising again needs the current SO PIN.
    let out = p11gate(
        &["token", "init", "--label", "cli2", "--json"],
        &env,
        &format!("wrong-so-pin-1\n{USER_PIN}\n"),
    );
    assert_exit(&out, 1);
    assert_eq!(
        json_of(&out),
        json!({"ok": false, "slot": 0, "label": "cli2", "dir": dir0, "uri": null,
               "error": "slot 0: CKR_PIN_INCORRECT"})
    );
    assert_eq!(stderr(&out), "token init: slot 0: CKR_PIN_INCORRECT\n");
    let out = p11gate(&["token", "init", "--slot", "4", "--json"], &env, &pins);
    assert_exit(&out, 1);
    assert_eq!(
        json_of(&out),
        json!({"ok": false, "slot": 4, "label": "p11gate", "dir": null, "uri": null,
               "error": "there is no slot 4 (1 configured)"})
    );
    let out = p11gate(&["token", "init", "--label", "cli3"], &env, &pins);
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        format!(
            "slot 0: token \"cli3\" initialised in {dir0}\n  \
             pkcs11:token=cli3;manufacturer=p11gate;serial=0000000000000000;model=soft%20token\n"
        )
    );
}

/// SoftHSMv2's own view: (slot id, label) of each initialised token, and a slot's mechanism
/// count, from pkcs11-tool loading SoftHSMv2 directly.
fn softhsm_tool(hsm: &SoftHsm, args: &[&str]) -> String {
    let out = Command::new(common::require_program("pkcs11-tool"))
        .env("SOFTHSM2_CONF", &hsm.conf)
        .arg("--module")
        .arg(common::softhsm_module())
        .args(args)
        .output()
        .expect("pkcs11-tool");
    assert!(out.status.success(), "pkcs11-tool {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn softhsm_slot_of(hsm: &SoftHsm, label: &str) -> u64 {
    let listing = softhsm_tool(hsm, &["-L"]);
    let mut slot = None;
    for line in listing.lines() {
        if let Some(rest) = line.strip_prefix("Slot ") {
            let hex = rest.split("(0x").nth(1).and_then(|r| r.split(')').next());
            slot = hex.map(|h| u64::from_str_radix(h, 16).expect("hex slot id"));
        }
        if line.trim() == format!("token label        : {label}") {
            return slot.expect("a Slot line first");
        }
    }
    panic!("no token {label} in:\n{listing}")
}

#[test]
fn config_check_json_shows_each_apps_slots_from_the_upstream() {
    use std::os::unix::fs::PermissionsExt;
    let hsm = SoftHsm::new();
    hsm.init_token("vault-a");
    let real = softhsm_slot_of(&hsm, "vault-a");
    let total = softhsm_tool(&hsm, &["-M", "--slot", &real.to_string()])
        .lines()
        .filter(|l| l.starts_with("  "))
        .count();
    assert!(total > 20, "SoftHSMv2 lists {total} mechanisms");
    let dir = hsm.dir();
    let cred = dir.join("a.pin");
    std::fs::write(&cred, "hsm-pin\n").unwrap();
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hash = p11gate::credentials::hash_pin(b"app-pin").unwrap();
    let softhsm = common::softhsm_module().display().to_string();
    let cfg = dir.join("p11gate.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"default_app = "b"

[[upstream]]
name = "hsm"
path = "{softhsm}"
deny = ["CKM_SHA_1"]

[[slot]]
id = 0
upstream = "hsm"
token_label = "vault-a"
credential_file = "{cred}"
pin_hash = "{hash}"

[[slot]]
id = 5
upstream = "hsm"
token_label = "missing"
require_non_extractable = true

[[slot]]
id = 9
upstream = "hsm"
upstream_slot = {real}
read_only = true

[[app]]
name = "a"
slots = [0, 5]

[[app]]
name = "b"
slots = [9]
"#,
            cred = cred.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = cfg.display().to_string();
    let conf = hsm.conf.display().to_string();
    let out = p11gate(
        &["config", "check", "--json", &cfg],
        &[("SOFTHSM2_CONF", &conf)],
        "",
    );
    assert_exit(&out, 0);
    let slot = |id: u64, target: Value, found: Option<u64>, filtered: bool| {
        json!({
            "id": id, "upstream": "hsm", "module": softhsm, "target": target,
            "present": found.is_some(), "upstream_slot": found,
            "mechanisms": found.map(|_| json!({
                "allowed": total - usize::from(filtered),
                "filtered": if filtered { vec!["CKM_SHA_1"] } else { vec![] },
            })),
            "mechanisms_error": if found.is_some() { Value::Null } else { json!("token not present") },
            "pin_mapped": false, "require_non_extractable": false, "read_only": false,
        })
    };
    let mut s0 = slot(0, json!({"token_label": "vault-a"}), Some(real), true);
    s0["pin_mapped"] = json!(true);
    let mut s5 = slot(5, json!({"token_label": "missing"}), None, true);
    s5["require_non_extractable"] = json!(true);
    let mut s9 = slot(9, json!({"upstream_slot": real}), Some(real), true);
    s9["read_only"] = json!(true);
    assert_eq!(
        json_of(&out),
        json!({
            "config": cfg, "ok": true, "error": null, "backend": "upstreams",
            "soft_token_slots": [],
            "apps": [
                {"name": "a", "default_app": false, "slots": [s0, s5]},
                {"name": "b", "default_app": true, "slots": [s9]},
            ],
        })
    );
    // The same facts as text.
    let out = p11gate(&["config", "check", &cfg], &[("SOFTHSM2_CONF", &conf)], "");
    assert_exit(&out, 0);
    let all = total - 1;
    assert_eq!(
        stdout(&out),
        format!(
            "config {cfg}: OK\n\
             app \"a\":\n\
             \x20 slot 0 -> upstream \"hsm\" ({softhsm}), token label \"vault-a\": upstream slot {real:#x}\n\
             \x20   mechanisms: {all} allowed, 1 filtered (CKM_SHA_1)\n\
             \x20   p11gate holds the upstream credential (PIN mapped)\n\
             \x20 slot 5 -> upstream \"hsm\" ({softhsm}), token label \"missing\": not present\n\
             \x20   mechanisms: unknown (token not present)\n\
             \x20   require_non_extractable\n\
             app \"b\" (default_app):\n\
             \x20 slot 9 -> upstream \"hsm\" ({softhsm}), upstream slot {real:#x}: token present\n\
             \x20   mechanisms: {all} allowed, 1 filtered (CKM_SHA_1)\n\
             \x20   read_only\n"
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Help, man page, completions.

/// The subcommand names a help text lists under "Commands:" (without `help`).
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_command_has_help_with_a_description_and_examples() {
    let mut queue: Vec<Vec<String>> = vec![vec![]];
    let mut seen = Vec::new();
    while let Some(path) = queue.pop() {
        for flag in ["-h", "--help"] {
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push(flag);
            let out = p11gate(&args, &[], "");
            assert_exit(&out, 0);
            let help = stdout(&out);
            assert!(
                help.contains("\nExamples:\n  p11gate "),
                "`p11gate {}` has no examples:\n{help}",
                args.join(" ")
            );
            assert!(
                !help.starts_with("Usage:") && !help.trim().is_empty(),
                "`p11gate {}` has no description:\n{help}",
                args.join(" ")
            );
            if flag == "--help" {
                for sub in listed_commands(&help) {
                    let mut next = path.clone();
                    next.push(sub);
                    queue.push(next);
                }
            }
        }
        seen.push(path.join(" "));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "",
            "audit",
            "audit keygen",
            "audit summary",
            "audit verify",
            "completions",
            "config",
            "config check",
            "doctor",
            "hash-pin",
            "man",
            "stats",
            "token",
            "token init",
        ]
    );
    // The version, from Cargo.toml.
    let out = p11gate(&["--version"], &[], "");
    assert_exit(&out, 0);
    assert_eq!(
        stdout(&out),
        format!("p11gate {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_committed_man_page_is_what_the_code_generates() {
    let out = p11gate(&["man"], &[], "");
    assert_exit(&out, 0);
    let generated = stdout(&out);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/p11gate.1");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "doc/p11gate.1 is not what `p11gate man` prints now: regenerate it with\n  \
         cargo run --bin p11gate -- man > doc/p11gate.1"
    );
    // Every command has its section, with its examples.
    for command in [
        "config check",
        "hash-pin",
        "audit keygen",
        "audit verify",
        "audit summary",
        "token init",
        "doctor",
        "stats",
        "completions",
        "man",
    ] {
        assert!(
            generated.contains(&format!(".SS \"p11gate {command}\"\n")),
            "no section for {command}"
        );
    }
    assert_eq!(generated.matches("\\fBExamples:\\fR").count(), 10);
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "COMMANDS",
        "EXAMPLES",
        "\"EXIT STATUS\"",
        "ENVIRONMENT",
        "FILES",
        "\"SEE ALSO\"",
    ] {
        assert!(
            generated.contains(&format!("\n.SH {section}\n")),
            "{section}"
        );
    }
    // groff reads it without a warning.
    let groff = Command::new(common::require_program("groff"))
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(&path)
        .output()
        .expect("groff");
    assert!(groff.status.success(), "groff: {groff:?}");
    assert_eq!(String::from_utf8_lossy(&groff.stderr), "", "groff warnings");
}

/// `bash` completing `p11gate WORDS<Tab>` with the script `p11gate completions bash` printed.
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = format!(
        "source {script}\nCOMP_WORDS=({line})\nCOMP_CWORD={}\nCOMP_LINE='{line}'\nCOMP_POINT=${{#COMP_LINE}}\n\
         _p11gate p11gate '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        words.len() - 1,
        words[words.len() - 1],
        words[words.len() - 2],
        script = script.display(),
    );
    let out = Command::new(common::require_program("bash"))
        .args(["--norc", "-c", &program])
        .output()
        .expect("bash");
    assert!(out.status.success(), "bash: {out:?}");
    let mut words: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    words.sort();
    words
}

#[test]
fn bash_completes_commands_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let out = p11gate(&["completions", "bash"], &[], "");
    assert_exit(&out, 0);
    let script = dir.path().join("p11gate.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    assert_eq!(
        bash_completes(&script, &["p11gate", "audit", "''"]),
        ["--help", "-h", "help", "keygen", "summary", "verify"]
    );
    assert_eq!(
        bash_completes(&script, &["p11gate", "audit", "verify", "--"]),
        ["--help", "--json", "--key"]
    );
    assert_eq!(
        bash_completes(&script, &["p11gate", "completions", "''"]),
        [
            "--help",
            "-h",
            "bash",
            "elvish",
            "fish",
            "powershell",
            "zsh"
        ]
    );
    for (shell, marker, json) in [
        ("zsh", "#compdef p11gate", "'--json["),
        ("fish", "complete -c p11gate", " -l json "),
    ] {
        let out = p11gate(&["completions", shell], &[], "");
        assert_exit(&out, 0);
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("summary") && script.contains(json),
            "{shell}: {script}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Progress on a terminal.

/// Runs `p11gate args` with its standard output and error on a pseudo-terminal; returns the
/// exit status and everything the terminal received.
const PTY_DRIVER: &str = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
seen = b""
while True:
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(seen)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

fn on_a_terminal(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(common::require_program("python3"))
        .args(["-c", PTY_DRIVER, env!("CARGO_BIN_EXE_p11gate")])
        .args(args)
        .output()
        .expect("run the pty driver");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn audit_verify_shows_progress_on_a_terminal_only_and_never_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    chained_file(&audit, &AUDIT_KEY, 3000);
    let size = std::fs::metadata(&audit).unwrap().len() as f64 / 1048576.0;
    let (path, key) = (audit.display().to_string(), key_file(dir.path()));

    let (code, screen) = on_a_terminal(&["audit", "verify", "--key", &key, &path]);
    assert_eq!(code, Some(0), "{screen:?}");
    // The line is drawn at the first read (and again at most every 100 ms), then erased
    // before the result.
    let (drawn, result) = screen
        .rsplit_once("\r\x1b[K")
        .unwrap_or_else(|| panic!("no erase in {screen:?}"));
    assert_eq!(result, format!("{path}: OK, 3000 records\r\n"));
    let draws: Vec<&str> = drawn.split('\r').skip(1).collect();
    assert!(drawn.starts_with('\r') && !draws.is_empty(), "{screen:?}");
    for draw in draws {
        let percent = draw
            .strip_prefix("audit verify: ")
            .and_then(|d| d.strip_suffix(" MiB\x1b[K"))
            .and_then(|d| d.split_once("%  "))
            .and_then(|(p, mib)| mib.ends_with(&format!(" of {size:.1}")).then_some(p))
            .unwrap_or_else(|| panic!("not a progress line: {draw:?}"));
        let percent: u32 = percent.trim().parse().expect("a percentage");
        assert!(percent <= 100, "{draw:?}");
    }

    let (code, screen) = on_a_terminal(&["audit", "verify", "--json", "--key", &key, &path]);
    assert_eq!(code, Some(0), "{screen:?}");
    // Only the JSON line, with the terminal's CR LF.
    assert!(screen.starts_with("{\"file\":"), "{screen:?}");
    assert!(screen.ends_with("}\r\n"), "{screen:?}");
    assert!(!screen.contains('\x1b'), "{screen:?}");
    assert_eq!(screen.matches('\r').count(), 1, "{screen:?}");

    // Not a terminal: nothing on stderr.
    let out = p11gate(&["audit", "verify", "--key", &key, &path], &[], "");
    assert_exit(&out, 0);
    assert_eq!(stderr(&out), "");
}
