//! `p11gate doctor`: checks, before Vault starts, that its `seal "pkcs11"` stanza will work
//! through p11gate, and says what to fix when it will not.
//!
//! ```text
//! p11gate doctor --vault-config VAULT.hcl [--config P11GATE.toml] [--app NAME] [--json]
//! ```
//!
//! The doctor does what Vault does, in this process: it loads `lib` (dlopen,
//! `C_GetFunctionList`, `C_Initialize` with `CKF_OS_LOCKING_OK`) with `P11GATE_CONFIG` and
//! `P11GATE_APP` set as the systemd drop-in sets them, finds the token, logs in, looks for the
//! keys, and tries the mechanism for real (a round trip of random bytes). Each check prints one
//! verdict line — PASS, WARN, FAIL, or SKIP when an earlier failure leaves nothing to check —
//! and a failed check a hint. Exit status: 0 when nothing failed, 1 when a check failed, 2 for
//! a usage error.
//!
//! [`hcl`] reads the stanza out of the Vault file, [`seal`] applies the `VAULT_HSM_*`
//! overrides and interprets it, [`checks`] talks to the module.

pub mod checks;
pub mod hcl;
pub mod seal;

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{self, env};

const USAGE: &str =
    "usage: p11gate doctor --vault-config VAULT.hcl [--config P11GATE.toml] [--app NAME] [--json]
  checks that Vault's seal \"pkcs11\" stanza in VAULT.hcl works: lib loads, the slot or token
  label resolves for the app, the PIN logs in, the keys exist (or generate_key is set), the
  mechanism is allowed and works. --config and --app set P11GATE_CONFIG and P11GATE_APP for the
  check, as the Vault service's environment does (default: this environment's).
  Exit status: 0 all checks pass, 1 a check failed, 2 usage error";

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
    /// Not checked: an earlier failure left nothing to check.
    Skip,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        }
    }
}

/// One verdict line: the check's name, its verdict, what was found, and how to fix a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub check: &'static str,
    pub verdict: Verdict,
    pub detail: String,
    pub hint: Option<String>,
}

/// The checks made so far, in order.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn pass(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(check, Verdict::Pass, detail.into(), None);
    }

    pub fn warn(
        &mut self,
        check: &'static str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(check, Verdict::Warn, detail.into(), Some(hint.into()));
    }

    pub fn fail(
        &mut self,
        check: &'static str,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(check, Verdict::Fail, detail.into(), Some(hint.into()));
    }

    /// SKIP lines for checks an earlier failure made impossible.
    pub fn skip(&mut self, checks: &[&'static str], why: &str) {
        for c in checks {
            self.push(c, Verdict::Skip, format!("not checked: {why}"), None);
        }
    }

    fn push(
        &mut self,
        check: &'static str,
        verdict: Verdict,
        detail: String,
        hint: Option<String>,
    ) {
        self.checks.push(Check {
            check,
            verdict,
            detail,
            hint,
        });
    }

    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.verdict == Verdict::Fail)
    }

    fn count(&self, v: Verdict) -> usize {
        self.checks.iter().filter(|c| c.verdict == v).count()
    }

    /// The verdict lines, each failure or warning followed by its hint, then a summary line.
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for c in &self.checks {
            writeln!(out, "{:<6}{:<18}{}", c.verdict.word(), c.check, c.detail)?;
            if let Some(h) = &c.hint {
                writeln!(out, "{:<24}hint: {h}", "")?;
            }
        }
        let (fail, warn, skip) = (
            self.count(Verdict::Fail),
            self.count(Verdict::Warn),
            self.count(Verdict::Skip),
        );
        let mut tail = Vec::new();
        if warn > 0 {
            tail.push(format!("{warn} warning{}", plural(warn)));
        }
        if skip > 0 {
            tail.push(format!("{skip} not checked"));
        }
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!(", {}", tail.join(", "))
        };
        if fail > 0 {
            writeln!(
                out,
                "result: FAIL ({fail} check{} failed{tail})",
                plural(fail)
            )
        } else {
            let n = self.count(Verdict::Pass);
            writeln!(out, "result: PASS ({n} check{} passed{tail})", plural(n))
        }
    }

    /// A JSON list of {check, verdict, detail, hint}.
    pub fn write_json(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let list: Vec<serde_json::Value> = self
            .checks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "check": c.check,
                    "verdict": c.verdict.word(),
                    "detail": c.detail,
                    "hint": c.hint,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(list))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Args {
    vault_config: PathBuf,
    config: Option<PathBuf>,
    app: Option<String>,
    json: bool,
}

fn parse_args(args: &[String]) -> Option<Args> {
    let mut vault_config = None;
    let mut config = None;
    let mut app = None;
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--vault-config" => vault_config = Some(PathBuf::from(it.next()?)),
            "--config" => config = Some(PathBuf::from(it.next()?)),
            "--app" => app = Some(it.next()?.clone()),
            "--json" => json = true,
            _ => return None,
        }
    }
    Some(Args {
        vault_config: vault_config?,
        config,
        app,
        json,
    })
}

/// `p11gate doctor ARGS`: runs the checks and writes the report to `out`; returns the exit
/// status (0 all pass, 1 a check failed, 2 usage).
///
/// `--config` and `--app` are put into this process's environment (`P11GATE_CONFIG`,
/// `P11GATE_APP`) before `lib` is loaded, exactly as the Vault service's environment carries
/// them: call this from a command's main thread, before other threads exist.
pub fn run(args: &[String], out: &mut dyn Write) -> u8 {
    let Some(args) = parse_args(args) else {
        let _ = writeln!(out, "{USAGE}");
        return 2;
    };
    if let Some(c) = &args.config {
        std::env::set_var(env::CONFIG, c);
    }
    if let Some(a) = &args.app {
        std::env::set_var(env::APP, a);
    }
    let getenv = |k: &str| std::env::var(k).ok();
    let report = diagnose(&args.vault_config, &getenv);
    let written = if args.json {
        report.write_json(out)
    } else {
        report.write_text(out)
    };
    match (written, report.failed()) {
        (Err(_), _) | (_, true) => 1,
        (Ok(()), false) => 0,
    }
}

/// Every check, for the seal stanza of the Vault configuration at `vault_config`.
pub fn diagnose(vault_config: &Path, getenv: &dyn Fn(&str) -> Option<String>) -> Report {
    let mut report = Report::default();
    let Some(settings) = seal_check(&mut report, vault_config, getenv) else {
        report.skip(checks::AFTER_SEAL, "the seal stanza is not usable");
        return report;
    };
    let gate = config_check(&mut report, getenv);
    checks::run(&mut report, &settings, gate.as_ref(), getenv);
    report
}

/// The `seal` check: the stanza is there, and Vault could read it.
fn seal_check(
    report: &mut Report,
    file: &Path,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Option<checks::Seal> {
    const CHECK: &str = "seal";
    let shown = file.display();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            report.fail(
                CHECK,
                format!("cannot read {shown}: {e}"),
                "pass the Vault server's configuration file with --vault-config",
            );
            return None;
        }
    };
    let stanzas = match hcl::seal_stanzas(&text) {
        Ok(s) => s,
        Err(e) => {
            report.fail(
                CHECK,
                format!("{shown}: {e}"),
                "fix the file: Vault would not start with it either",
            );
            return None;
        }
    };
    let enabled: Vec<&hcl::Stanza> = stanzas
        .iter()
        .filter(|s| s.get("disabled").is_none_or(|d| d.value != "true"))
        .collect();
    let env_only = getenv("VAULT_SEAL_TYPE").as_deref() == Some("pkcs11")
        && getenv("VAULT_HSM_LIB").is_some_and(|l| !l.is_empty());
    let (stanza, place) = match enabled.first() {
        Some(s) if s.line > 0 => (Some(*s), format!("seal \"pkcs11\" at {shown}:{}", s.line)),
        Some(s) => (Some(*s), format!("seal \"pkcs11\" in {shown}")),
        None if env_only => (
            None,
            "seal \"pkcs11\" from the environment (VAULT_SEAL_TYPE)".into(),
        ),
        None => {
            let why = if stanzas.is_empty() {
                format!("{shown} has no seal \"pkcs11\" stanza")
            } else {
                format!("{shown}: every seal \"pkcs11\" stanza is disabled")
            };
            report.fail(
                CHECK,
                why,
                "add one (examples in contrib/vault/), or set VAULT_SEAL_TYPE=pkcs11 and VAULT_HSM_*",
            );
            return None;
        }
    };
    let read = seal::Seal::read(stanza, getenv);
    let settings = match seal::Settings::from_seal(&read) {
        Ok(s) => s,
        Err(problems) => {
            report.fail(
                CHECK,
                format!("{place}: {}", problems.join("; ")),
                "Vault would refuse this stanza: see its seal \"pkcs11\" parameters",
            );
            return None;
        }
    };
    let mut detail = place;
    if !read.from_env.is_empty() {
        detail.push_str(&format!(
            "; from the environment: {}",
            read.from_env.join(", ")
        ));
    }
    if enabled.len() > 1 {
        detail.push_str(&format!(
            "; {} enabled pkcs11 stanzas, checking the first",
            enabled.len()
        ));
    }
    if read.unknown.is_empty() {
        report.pass(CHECK, detail);
    } else {
        let unknown: Vec<String> = read
            .unknown
            .iter()
            .map(|(k, line)| format!("{k:?} (line {line})"))
            .collect();
        report.warn(
            CHECK,
            format!(
                "{detail}; Vault ignores the unknown key{} {}",
                plural(unknown.len()),
                unknown.join(", ")
            ),
            format!(
                "check the spelling; the keys Vault reads: {}",
                seal::KEYS.join(", ")
            ),
        );
    }
    Some(checks::Seal { settings, read })
}

/// p11gate's own configuration as the module will see it.
#[derive(Debug)]
pub struct Gate {
    pub config: config::Config,
    pub source: config::Source,
    pub app: config::App,
}

/// The `config` check: p11gate's configuration loads and names the app.
fn config_check(report: &mut Report, getenv: &dyn Fn(&str) -> Option<String>) -> Option<Gate> {
    const CHECK: &str = "config";
    let (config, source) = match config::Config::discover(getenv) {
        Ok(c) => c,
        Err(e) => {
            report.fail(
                CHECK,
                e.to_string(),
                "fix p11gate's configuration (p11gate config check FILE shows the details)",
            );
            return None;
        }
    };
    let from_env = getenv(env::APP).filter(|a| !a.is_empty());
    let app = match config.select_app(from_env.as_deref(), &source) {
        Ok(a) => a,
        Err(e) => {
            report.fail(
                CHECK,
                e.to_string(),
                format!(
                    "set {} in the Vault service's environment (contrib/vault/vault.service.d/p11gate.conf) to one of the [[app]] names",
                    env::APP
                ),
            );
            return None;
        }
    };
    let which = if from_env.is_some() {
        env::APP
    } else if config.apps.is_empty() {
        "no [[app]]: every slot"
    } else {
        "default_app"
    };
    let file = match &source {
        config::Source::File(p) => p.display().to_string(),
        config::Source::NoFile(p) => format!("no file at {} (environment only)", p.display()),
    };
    let backends = if config.upstreams.is_empty() {
        let home = config
            .soft_token
            .home
            .clone()
            .unwrap_or_else(config::default_soft_home);
        format!("the built-in soft token in {}", home.display())
    } else {
        let mut names: Vec<String> = Vec::new();
        let used: Vec<usize> = if config.slots.is_empty() {
            vec![0]
        } else {
            app.slots
                .iter()
                .filter_map(|&i| config.upstream_index(config.slots[i].upstream.get_ref()))
                .collect()
        };
        for u in used {
            let u = &config.upstreams[u];
            let n = format!("upstream {:?}", u.name.get_ref());
            if !names.contains(&n) {
                names.push(n);
            }
        }
        if names.is_empty() {
            "no slots".to_string()
        } else {
            names.join(", ")
        }
    };
    report.pass(
        CHECK,
        format!("{file}: app {:?} ({which}), {backends}", app.name),
    );
    Some(Gate {
        config,
        source,
        app,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&s(&["--vault-config", "v.hcl", "--json", "--app", "a"])),
            Some(Args {
                vault_config: "v.hcl".into(),
                config: None,
                app: Some("a".into()),
                json: true
            })
        );
        assert_eq!(parse_args(&s(&["--json"])), None);
        assert_eq!(parse_args(&s(&["--vault-config"])), None);
        assert_eq!(parse_args(&s(&["--vault-config", "v", "--bogus"])), None);
        let mut out = Vec::new();
        assert_eq!(run(&s(&["--config", "x"]), &mut out), 2);
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("usage: p11gate doctor"));
    }

    #[test]
    fn text_and_json_reports() {
        let mut r = Report::default();
        r.pass("seal", "ok");
        r.fail("login", "CKR_PIN_INCORRECT: no", "set it");
        r.skip(&["key"], "no login");
        let mut out = Vec::new();
        r.write_text(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PASS  seal              ok\n\
             FAIL  login             CKR_PIN_INCORRECT: no\n\
             \x20                       hint: set it\n\
             SKIP  key               not checked: no login\n\
             result: FAIL (1 check failed, 1 not checked)\n"
        );
        let mut out = Vec::new();
        r.write_json(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[{\"check\":\"seal\",\"detail\":\"ok\",\"hint\":null,\"verdict\":\"PASS\"},\
             {\"check\":\"login\",\"detail\":\"CKR_PIN_INCORRECT: no\",\"hint\":\"set it\",\"verdict\":\"FAIL\"},\
             {\"check\":\"key\",\"detail\":\"not checked: no login\",\"hint\":null,\"verdict\":\"SKIP\"}]\n"
        );
    }
}
