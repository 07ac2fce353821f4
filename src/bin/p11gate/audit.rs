//! `p11gate audit keygen | verify | summary`: the audit file's key, its HMAC chain, and a
//! review of a trail per app, key and function.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use p11gate::audit::{chain, summary};
use p11gate::config::{self, Config};

use crate::exit::Exit;
use crate::progress::{self, ProgressReader};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    #[command(
        about = "Write a new random key for the audit file's HMAC chain",
        long_about = KEYGEN_ABOUT,
        after_help = KEYGEN_EXAMPLES
    )]
    Keygen(KeygenArgs),
    #[command(
        about = "Check the HMAC chain of a JSON-lines audit file",
        long_about = VERIFY_ABOUT,
        after_help = VERIFY_EXAMPLES
    )]
    Verify(VerifyArgs),
    #[command(
        about = "Count calls, errors and refusals per app, key and function",
        long_about = SUMMARY_ABOUT,
        after_help = SUMMARY_EXAMPLES
    )]
    Summary(SummaryArgs),
}

const KEYGEN_ABOUT: &str = "\
Write a new random 32-byte audit key, as hex, to FILE (created with mode 0600; an existing
file is never overwritten) and print its fingerprint (key_id, as file_start records carry it).
Point [audit] key_file or P11GATE_AUDIT_KEY at it. Keep it where the audited application's
users cannot read it: whoever holds the key can rewrite the whole file.";

const KEYGEN_EXAMPLES: &str = "\
Examples:
  p11gate audit keygen /etc/p11gate/audit.key
  install -d -m 0700 -o vault /etc/p11gate && sudo -u vault p11gate audit keygen /etc/p11gate/audit.key";

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the key (must not exist)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

const VERIFY_ABOUT: &str = "\
Check the HMAC chain of a JSON-lines audit file from its first record. Prints
\"FILE: OK, N records\" (exit 0), or the first deleted, inserted, reordered or edited record as
\"FILE:LINE: KIND: DETAIL\" (exit 1). The key is --key KEYFILE, else $P11GATE_AUDIT_KEY, else
key_file in [audit] of the configuration ($P11GATE_CONFIG).

On a terminal a progress line shows on standard error while a file is read (never with --json).

--json prints one JSON object on standard output (exit 0 or 1):
  file     the file checked
  key_id   the fingerprint of the key used
  ok       true when every record chains
  records  how many records (null when broken)
  line     the 1-based line of the first problem (null when ok)
  problem  deleted, inserted, reordered or edited (null when ok)
  detail   what was expected there (null when ok)";

const VERIFY_EXAMPLES: &str = "\
Examples:
  p11gate audit verify /var/log/p11gate/audit.jsonl
  p11gate audit verify --key /etc/p11gate/audit.key /var/log/p11gate/audit.jsonl
  P11GATE_AUDIT_KEY=/etc/p11gate/audit.key p11gate audit verify --json audit.jsonl";

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The audit file (JSON lines)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The key file [default: $P11GATE_AUDIT_KEY, else [audit] key_file]
    #[arg(long, value_name = "KEYFILE")]
    pub key: Option<PathBuf>,
    /// Print one JSON object instead of text (fields above)
    #[arg(long)]
    pub json: bool,
}

const SUMMARY_ABOUT: &str = "\
Read p11gate audit records from FILE, or standard input when FILE is - (the default): JSON
lines (the audit file) or syslog text (such as /var/log/syslog; other programs' lines are
skipped). Print per app, per key and per function the calls, errors (result not CKR_OK),
refusals (by p11gate's policy) and first and last time, then the other events, including the
records p11gate dropped. A record seen twice (same host, pid, rec and time, as a syslog restart
can duplicate) is counted once. This does not check the HMAC chain: audit verify does.

A call counts for the key it used, else for the object it made, read or changed. A key is named
by its label, else id:CKA_ID, else handle:N, per app. Rows are sorted by calls, most first.
Times are UTC. Filters combine: a record is counted when all of them match. --key, --fn and
--errors select calls only; the events section (drops, outages, configuration errors, init,
finalize) still counts every event that --since and --app select, so that losses stay visible.

On a terminal a progress line shows on standard error while a large file is read (never with
--json).

--json prints one JSON object: records (calls and events counted), calls, errors, refusals,
duplicates, malformed, dropped_records, denied_calls, events {init, finalize, load,
config_error, outage, dropped, other}, and apps, keys, functions: [{name, calls, errors,
refusals, first, last}] (keys also app and key; a key's name is app/key).";

const SUMMARY_EXAMPLES: &str = "\
Examples:
  p11gate audit summary /var/log/p11gate/audit.jsonl
  p11gate audit summary --since 2h --errors /var/log/syslog
  journalctl -t p11gate --since today | p11gate audit summary --app vault-1 --json
  p11gate audit summary --key vault-key --fn Decrypt --since 2026-11-28T00:00:00Z audit.jsonl";

#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// The audit records: a JSON-lines file, a syslog file, or - for standard input
    #[arg(value_name = "FILE", default_value = "-")]
    pub file: String,
    /// Records at or after TIME: RFC 3339 (2026-11-28T23:06:01Z) or an age: 45s, 30m, 2h, 7d
    #[arg(long, value_name = "TIME", allow_hyphen_values = true, value_parser = since)]
    pub since: Option<String>,
    /// Records of the app NAME
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    pub app: Option<String>,
    /// Calls using the key labelled KEY, or with CKA_ID KEY in hex (3132, id:3132), or handle:N
    #[arg(long, value_name = "KEY", allow_hyphen_values = true)]
    pub key: Option<String>,
    /// Calls of the function NAME (C_Encrypt, or Encrypt)
    #[arg(long = "fn", value_name = "NAME", allow_hyphen_values = true,
          value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub function: Option<String>,
    /// Calls whose result is not CKR_OK or that p11gate refused
    #[arg(long)]
    pub errors: bool,
    /// Print one JSON object instead of tables (fields above)
    #[arg(long)]
    pub json: bool,
}

/// `--since` is checked here so that a bad time is a usage error like any other.
fn since(text: &str) -> Result<String, String> {
    if summary::is_since(text) {
        Ok(text.to_string())
    } else {
        Err("not an RFC 3339 time or an age like 30m, 2h, 7d".into())
    }
}

pub fn run(command: &AuditCommand, out: &mut dyn Write) -> Exit {
    match command {
        AuditCommand::Keygen(a) => keygen(&a.file, out),
        AuditCommand::Verify(a) => verify(a, out),
        AuditCommand::Summary(a) => summary(a, out),
    }
}

/// 32 random bytes as hex, in a new file only its owner can read.
fn keygen(file: &Path, out: &mut dyn Write) -> Exit {
    use password_hash::rand_core::{OsRng, RngCore};
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut *key);
    let text = zeroize::Zeroizing::new(format!("{}\n", chain::hex(&*key)));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
    if let Err(e) = written {
        eprintln!("audit keygen: {}: {e}", file.display());
        return Exit::Io;
    }
    let id = chain::AuditKey::from_bytes(&*key).id();
    match writeln!(out, "{}: new audit key {id}", file.display()) {
        Ok(()) => Exit::Ok,
        Err(e) => crate::output_failed("audit keygen", e),
    }
}

/// `audit verify --json`.
#[derive(Debug, Serialize)]
struct VerifyReport {
    file: String,
    key_id: String,
    ok: bool,
    records: Option<u64>,
    line: Option<u64>,
    problem: Option<&'static str>,
    detail: Option<String>,
}

/// OK, or the first broken record.
fn verify(args: &VerifyArgs, out: &mut dyn Write) -> Exit {
    let file = args.file.display().to_string();
    let key_path = match args.key.clone().or_else(configured_key) {
        Some(p) => p,
        None => {
            eprintln!(
                "audit verify: no key: pass --key KEYFILE, set {}, or key_file in [audit]",
                config::env::AUDIT_KEY
            );
            return Exit::Usage;
        }
    };
    // A key file that cannot be read is an I/O error; one that is not a key, a usage error.
    if let Err(e) = std::fs::File::open(&key_path) {
        eprintln!("audit verify: audit key {}: {e}", key_path.display());
        return Exit::Io;
    }
    let key = match chain::AuditKey::load(&key_path) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("audit verify: {e}");
            return Exit::Usage;
        }
    };
    let (input, size) = match std::fs::File::open(&args.file) {
        Ok(f) => {
            let size = f.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
            (f, size.unwrap_or(0))
        }
        Err(e) => {
            eprintln!("audit verify: {file}: {e}");
            return Exit::Io;
        }
    };
    let reader = ProgressReader::new(input, "audit verify", size, progress::wanted(args.json));
    // The reader (and so the progress line) is gone once verify returns.
    let verdict = match chain::verify(BufReader::with_capacity(1 << 20, reader), &key) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("audit verify: {file}: {e}");
            return Exit::Io;
        }
    };
    let mut report = VerifyReport {
        file,
        key_id: key.id(),
        ok: false,
        records: None,
        line: None,
        problem: None,
        detail: None,
    };
    let exit = match verdict {
        chain::Verdict::Intact { records } => {
            report.ok = true;
            report.records = Some(records);
            Exit::Ok
        }
        chain::Verdict::Broken { line, kind, detail } => {
            report.line = Some(line);
            report.problem = Some(kind.word());
            report.detail = Some(detail);
            Exit::Failed
        }
    };
    let written = if args.json {
        crate::write_json(out, &report)
    } else if let (Some(records), true) = (report.records, report.ok) {
        writeln!(out, "{}: OK, {records} records", report.file)
    } else {
        writeln!(
            out,
            "{}:{}: {}: {}",
            report.file,
            report.line.unwrap_or(0),
            report.problem.unwrap_or(""),
            report.detail.as_deref().unwrap_or("")
        )
    };
    match written {
        Ok(()) => exit,
        Err(e) => crate::output_failed("audit verify", e),
    }
}

/// `$P11GATE_AUDIT_KEY`, else `key_file` of the configuration the environment names.
fn configured_key() -> Option<PathBuf> {
    std::env::var(config::env::AUDIT_KEY)
        .ok()
        .filter(|k| !k.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            let getenv = |k: &str| std::env::var(k).ok();
            Config::discover(getenv).ok()?.0.audit.key_file
        })
}

/// Hands the parsed options to `p11gate::audit::summary::run`, which owns their meaning (time
/// formats, function names) and is also a library entry point: written back in its one
/// canonical form, `--name=value` and the input after `--`.
fn summary(args: &SummaryArgs, out: &mut dyn Write) -> Exit {
    let mut list = Vec::new();
    for (name, value) in [
        ("--since", &args.since),
        ("--app", &args.app),
        ("--key", &args.key),
        ("--fn", &args.function),
    ] {
        if let Some(v) = value {
            list.push(format!("{name}={v}"));
        }
    }
    if args.errors {
        list.push("--errors".into());
    }
    if args.json {
        list.push("--json".into());
    }
    list.push("--".into());
    list.push(args.file.clone());
    // summary::run: 0 done, 1 the input could not be read or the output written, 2 usage.
    match summary::run(&list, out) {
        0 => Exit::Ok,
        2 => Exit::Usage,
        _ => Exit::Io,
    }
}
