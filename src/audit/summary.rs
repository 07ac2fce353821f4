//! `p11gate audit summary`: per app, key and function counts from JSON-lines or syslog text.
//!
//! The input is what an auditor has at hand: the audit file (JSON lines) or a syslog file
//! (`/var/log/syslog`, `journalctl -t p11gate`), possibly mixed with other programs' lines. The
//! format is the one README "Audit trail" specifies. Input is streamed line by line and
//! aggregated into maps keyed by app, key and function, which stay small; the only other state
//! is a bounded window of recent record identities used to drop duplicates, so memory does not
//! grow with the input.
//!
//! This command does not check the HMAC chain: `p11gate audit verify` does.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::uri::{Attr, ObjectType, Pkcs11Uri};

/// Usage text, printed by `--help` and, on stderr, after a usage error.
pub const USAGE: &str = "usage: p11gate audit summary [OPTIONS] [FILE|-]

Reads p11gate audit records from FILE, or standard input when FILE is - (the default): JSON
lines (the audit file) or syslog text (such as /var/log/syslog; other programs' lines are
skipped). Prints per app, per key and per function the calls, errors (result not CKR_OK),
refusals (by p11gate's policy) and first and last time, then the other events, including the
records p11gate dropped. A record seen twice (same host, pid, rec and time, as a syslog restart
can duplicate) is counted once.

options:
  --since TIME   records at or after TIME: RFC 3339 (2026-11-28T23:06:01Z,
                 2026-11-29T00:06:01.5+01:00) or an age: 45s, 30m, 2h, 7d
  --app NAME     records of the app NAME
  --key KEY      calls using the key whose label is KEY, or whose CKA_ID is KEY in hex
                 (3132 or id:3132), or whose handle is N (handle:N), or that a PKCS#11
                 URI names by token, object, type and id: every one it gives must match
                 (pkcs11:token=vault;object=vault-key;type=secret-key)
  --fn NAME      calls of the function NAME (C_Encrypt, or Encrypt)
  --errors       calls whose result is not CKR_OK or that p11gate refused
  --json         print one JSON object instead of tables: records (calls and events
                 counted), calls, errors, refusals, duplicates, malformed, dropped_records,
                 denied_calls, events {init, finalize, load, config_error, outage, dropped,
                 other}, and apps, keys, functions: [{name, calls, errors, refusals, first,
                 last}] (keys also app and key, and uri when the records carry one;
                 a key's name is app/key)
  -h, --help     print this text

A call counts for the key it used, else for the object it made, read or changed. A key is
named by its label, else id:CKA_ID, else handle:N, per app; its uri column is the fullest
PKCS#11 URI (key_uri) its records carry. Rows are sorted by calls, most first. Times are UTC.

Filters combine: a record is counted when all of them match. --key, --fn and --errors select
calls only; the events section (drops, outages, configuration errors, init, finalize) still
counts every event that --since and --app select, so that losses stay visible.

examples:
  p11gate audit summary /var/log/p11gate/audit.jsonl
  p11gate audit summary --since 2h --errors /var/log/syslog
  journalctl -t p11gate --since today | p11gate audit summary --app vault-1 --json
  p11gate audit summary --key vault-key --fn Decrypt --since 2026-11-28T00:00:00Z audit.jsonl
  p11gate audit summary --key 'pkcs11:token=vault;object=vault-key' audit.jsonl

Exit status: 0 success, 1 the input could not be read (or the output written), 2 usage error.";

/// How many recent record identities the duplicate check remembers. A syslog restart
/// re-sends at most what the daemon had not read, which is far fewer records than this.
const DEDUPE_WINDOW: usize = 65_536;
/// Longest line kept: p11gate records are a few hundred bytes; a longer line (or a file
/// without newlines) is not a record, and must not make memory grow with the input.
const MAX_LINE: usize = 1 << 20;
/// Read buffer: large reads keep the system-call count low on big files.
const READ_BUFFER: usize = 1 << 20;
/// Lines between two looks at the clock for the progress line.
const PROGRESS_EVERY: u64 = 4096;
/// At most ten progress updates a second.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Runs `p11gate audit summary` with the arguments after `summary`; writes to `out`, progress/errors to stderr.
/// Returns the process exit code: 0 success, 1 the input could not be read, 2 usage error.
pub fn run(args: &[String], out: &mut dyn Write) -> u8 {
    let stderr = io::stderr();
    let progress_allowed = stderr.is_terminal();
    let mut err = stderr.lock();
    run_with(args, out, &mut err, now_micros(), progress_allowed)
}

/// [`run`] with its surroundings passed in, so that tests can see stderr and fix "now".
fn run_with(
    args: &[String],
    out: &mut dyn Write,
    err: &mut dyn Write,
    now_us: i64,
    progress_allowed: bool,
) -> u8 {
    // Writing to stderr can fail (closed descriptor); there is nowhere else to report that,
    // so those results are ignored throughout.
    let options = match parse_args(args, now_us) {
        Ok(Parsed::Run(options)) => options,
        Ok(Parsed::Help) => {
            return match writeln!(out, "{USAGE}").and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writeln!(err, "audit summary: writing output: {e}");
                    1
                }
            };
        }
        Err(message) => {
            let _ = writeln!(err, "audit summary: {message}\n{USAGE}");
            return 2;
        }
    };

    let (mut input, name, size): (Box<dyn BufRead>, &str, Option<u64>) = if options.file == "-" {
        let reader = BufReader::with_capacity(READ_BUFFER, io::stdin());
        (Box::new(reader), "standard input", None)
    } else {
        let file = match File::open(&options.file) {
            Ok(f) => f,
            Err(e) => {
                let _ = writeln!(err, "audit summary: {}: {e}", options.file);
                return 1;
            }
        };
        // Only a regular file has a size that a percentage can be taken of.
        let size = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let reader = BufReader::with_capacity(READ_BUFFER, file);
        (Box::new(reader), options.file.as_str(), size)
    };

    let result = {
        let sink: Option<&mut dyn Write> = if shows_progress(progress_allowed, options.json, size) {
            Some(&mut *err)
        } else {
            None
        };
        let mut progress = Progress::new(sink, size.unwrap_or(0));
        let result = summarise(&mut *input, &options.filter, &mut progress);
        progress.finish();
        result
    };
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            // No partial summary: one that looks complete but is not would mislead.
            let _ = writeln!(err, "audit summary: {name}: {e}");
            return 1;
        }
    };

    let written = if options.json {
        write_json(&summary, out)
    } else {
        write_text(&summary, out)
    };
    if let Err(e) = written.and_then(|()| out.flush()) {
        let _ = writeln!(err, "audit summary: writing output: {e}");
        return 1;
    }
    if summary.malformed > 0 {
        let first = match &summary.first_malformed {
            Some((line, reason)) => format!(" (first: line {line}: {reason})"),
            None => String::new(),
        };
        let _ = writeln!(
            err,
            "audit summary: {} malformed p11gate line{} skipped{first}",
            summary.malformed,
            if summary.malformed == 1 { "" } else { "s" },
        );
    }
    0
}

// ---------------------------------------------------------------------------------------------
// Arguments

#[derive(Debug)]
enum Parsed {
    Run(Options),
    Help,
}

#[derive(Debug)]
struct Options {
    file: String,
    json: bool,
    filter: Filter,
}

/// What selects a record. Every `Some` (and `errors`) must match.
#[derive(Debug, Default)]
struct Filter {
    /// Microseconds since the epoch: records at or after it.
    since: Option<i64>,
    app: Option<String>,
    key: Option<KeyFilter>,
    /// Normalised to start with `C_`; compared without regard to case.
    func: Option<String>,
    errors: bool,
}

fn parse_args(args: &[String], now_us: i64) -> Result<Parsed, String> {
    let mut file: Option<String> = None;
    let mut json = false;
    let mut filter = Filter::default();
    let mut only_files = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        if only_files || arg == "-" || !arg.starts_with('-') {
            if file.is_some() {
                return Err(format!("one input only: {arg:?} is a second one"));
            }
            file = Some(arg.to_string());
            continue;
        }
        // `--name=value` and `--name value` are both accepted.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (arg, None),
        };
        let takes_value = matches!(name, "--since" | "--app" | "--key" | "--fn");
        if !takes_value && inline.is_some() {
            return Err(format!("{name} takes no value"));
        }
        let value = if takes_value {
            match inline {
                Some(v) => Some(v.to_string()),
                None => match args.get(i) {
                    Some(v) => {
                        i += 1;
                        Some(v.clone())
                    }
                    None => return Err(format!("{name} needs a value")),
                },
            }
        } else {
            None
        };
        match (name, value) {
            ("--", _) => only_files = true,
            ("-h" | "--help", _) => return Ok(Parsed::Help),
            ("--json", _) => json = true,
            ("--errors", _) => filter.errors = true,
            ("--since", Some(v)) => {
                let t = parse_since(&v, now_us).ok_or_else(|| {
                    format!("--since {v:?}: not an RFC 3339 time or an age like 30m, 2h, 7d")
                })?;
                set_once(&mut filter.since, t, name)?;
            }
            ("--app", Some(v)) => set_once(&mut filter.app, v, name)?,
            ("--key", Some(v)) => set_once(&mut filter.key, KeyFilter::parse(v)?, name)?,
            ("--fn", Some(v)) => {
                if v.is_empty() {
                    return Err("--fn needs a function name".into());
                }
                let normalised = if v.len() >= 2 && v[..2].eq_ignore_ascii_case("C_") {
                    v
                } else {
                    format!("C_{v}")
                };
                set_once(&mut filter.func, normalised, name)?;
            }
            _ => return Err(format!("unknown option {arg}")),
        }
    }
    Ok(Parsed::Run(Options {
        file: file.unwrap_or_else(|| "-".into()),
        json,
        filter,
    }))
}

/// `--key`: a name as the key table shows it, or a PKCS#11 URI.
#[derive(Debug)]
enum KeyFilter {
    Name(String),
    Uri(Pkcs11Uri),
}

impl KeyFilter {
    fn parse(text: String) -> Result<KeyFilter, String> {
        if !text
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("pkcs11:"))
        {
            return Ok(KeyFilter::Name(text));
        }
        let uri = Pkcs11Uri::parse(&text).map_err(|e| format!("--key: {e}"))?;
        uri.check_understood().map_err(|e| format!("--key: {e}"))?;
        let unknowable: Vec<&str> = uri
            .attrs()
            .filter(|a| !matches!(a, Attr::Token | Attr::Object | Attr::Type | Attr::Id))
            .map(Attr::name)
            .collect();
        if !unknowable.is_empty() {
            return Err(format!(
                "--key: audit records name a key by token, object, type and id; they do not \
                 say its {}",
                unknowable.join(", ")
            ));
        }
        Ok(KeyFilter::Uri(uri))
    }
}

/// A filter given twice is an error rather than "last wins": the user meant something else.
fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), String> {
    if slot.is_some() {
        return Err(format!("{name} given twice"));
    }
    *slot = Some(value);
    Ok(())
}

/// Whether `text` is a `--since` value, for a caller that checks arguments before [`run`].
pub fn is_since(text: &str) -> bool {
    parse_since(text, now_micros()).is_some()
}

/// `--since`: an RFC 3339 time, or an age (`30m`) counted back from `now_us`.
fn parse_since(text: &str, now_us: i64) -> Option<i64> {
    if let Some(t) = parse_rfc3339(text) {
        return Some(t);
    }
    let unit_len = text.chars().last()?.len_utf8();
    let (digits, unit) = text.split_at(text.len() - unit_len);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds_per_unit: i64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    let n: i64 = digits.parse().ok()?;
    let age_us = n.checked_mul(seconds_per_unit)?.checked_mul(1_000_000)?;
    now_us.checked_sub(age_us)
}

fn now_micros() -> i64 {
    // A clock before 1970 is not worth an error: relative --since then counts from 1970.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

// ---------------------------------------------------------------------------------------------
// Time

/// Parses an RFC 3339 date-time (`2026-11-28T23:06:01.123456Z`, `...+01:00`) into
/// microseconds since the epoch, UTC. Fractions beyond microseconds are truncated.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = b.get(from..to)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let year = num(0, 4)?;
    let month = num(5, 7)?;
    let day = num(8, 10)?;
    let hour = num(11, 13)?;
    let minute = num(14, 16)?;
    let second = num(17, 19)?;
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
    {
        return None;
    }
    let mut i = 19;
    let mut micros = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..6 {
            micros *= 10;
        }
    }
    let offset_seconds = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let (oh, om) = (num(i + 1, i + 3)?, num(i + 4, i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let seconds = oh * 3600 + om * 60;
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return None,
    };
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(seconds * 1_000_000 + micros)
}

/// Formats microseconds since the epoch as RFC 3339 UTC with microseconds, as records are.
fn format_time(us: i64) -> String {
    let seconds = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------------------------
// Records

/// A string field, borrowed from the line when it needed no unescaping.
#[derive(Debug, Default)]
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        // serde's own `Cow<str>` always copies; this borrows when the JSON string has no escapes.
        deserializer.deserialize_str(StrVisitor).map(Str)
    }
}

/// The fields the summary uses, as found on a line (JSON or syslog), before validation. Other
/// fields are ignored.
#[derive(Debug, Default, Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    event: Option<Str<'a>>,
    #[serde(borrow)]
    time: Option<Str<'a>>,
    #[serde(borrow)]
    host: Option<Str<'a>>,
    pid: Option<u64>,
    rec: Option<u64>,
    #[serde(borrow)]
    app: Option<Str<'a>>,
    #[serde(borrow, rename = "fn")]
    func: Option<Str<'a>>,
    #[serde(borrow)]
    rv: Option<Str<'a>>,
    key: Option<u64>,
    #[serde(borrow)]
    key_label: Option<Str<'a>>,
    #[serde(borrow)]
    key_id: Option<Str<'a>>,
    #[serde(borrow)]
    key_uri: Option<Str<'a>>,
    /// The object a call made, read, changed or destroyed: counted as the key when the record
    /// names no key of its own (C_GenerateKey, C_GetAttributeValue, C_DestroyObject, ...).
    object: Option<u64>,
    #[serde(borrow)]
    object_label: Option<Str<'a>>,
    #[serde(borrow)]
    object_id: Option<Str<'a>>,
    #[serde(borrow)]
    object_uri: Option<Str<'a>>,
    #[serde(borrow)]
    refused: Option<Str<'a>>,
    count: Option<u64>,
    denied: Option<u64>,
}

/// A validated record.
#[derive(Debug)]
struct Record<'a> {
    event: Cow<'a, str>,
    /// Microseconds since the epoch.
    time: i64,
    host: Cow<'a, str>,
    pid: u64,
    rec: u64,
    app: Cow<'a, str>,
    func: Option<Cow<'a, str>>,
    rv: Option<Cow<'a, str>>,
    key: Option<u64>,
    key_label: Option<Cow<'a, str>>,
    key_id: Option<Cow<'a, str>>,
    /// The key's PKCS#11 URI, as p11gate wrote it.
    key_uri: Option<Cow<'a, str>>,
    refused: bool,
    count: Option<u64>,
    denied: Option<u64>,
}

impl Record<'_> {
    fn is_error(&self) -> bool {
        self.rv.as_deref().is_some_and(|rv| rv != "CKR_OK")
    }
}

/// What a line turned out to be: `Ok(Some)` a record, `Ok(None)` not a p11gate record
/// (another program's line, a blank line, `event=file_start`), `Err` a malformed p11gate line.
type Line<'a> = Result<Option<Record<'a>>, &'static str>;

fn classify(line: &[u8]) -> Line<'_> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let raw = if line[0] == b'{' {
        serde_json::from_slice::<Raw>(line).map_err(|_| "not a JSON audit record")?
    } else {
        let Some(start) =
            find(line, b"p11gate").and_then(|at| find(&line[at..], b" event=").map(|e| at + e + 1))
        else {
            return Ok(None);
        };
        parse_pairs(&line[start..])?
    };
    validate(raw)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks that the fields every record needs are there and parses the time.
/// `Ok(None)`: a record the summary does not count (`event=file_start`, a file's header).
fn validate(raw: Raw<'_>) -> Result<Option<Record<'_>>, &'static str> {
    let event = raw.event.ok_or("no event")?.0;
    if event == "file_start" {
        return Ok(None);
    }
    let time = raw.time.ok_or("no time")?.0;
    let time = parse_rfc3339(&time).ok_or("time is not RFC 3339")?;
    let names_key = raw.key.is_some()
        || raw.key_label.is_some()
        || raw.key_id.is_some()
        || raw.key_uri.is_some();
    let (key, key_label, key_id, key_uri) = if names_key {
        (raw.key, raw.key_label, raw.key_id, raw.key_uri)
    } else {
        (raw.object, raw.object_label, raw.object_id, raw.object_uri)
    };
    let record = Record {
        time,
        host: raw.host.ok_or("no host")?.0,
        pid: raw.pid.ok_or("no pid")?,
        rec: raw.rec.ok_or("no rec")?,
        app: raw.app.ok_or("no app")?.0,
        func: raw.func.map(|s| s.0),
        rv: raw.rv.map(|s| s.0),
        key,
        key_label: key_label.map(|s| s.0).filter(|s| !s.is_empty()),
        key_id: key_id.map(|s| s.0).filter(|s| !s.is_empty()),
        key_uri: key_uri.map(|s| s.0).filter(|s| !s.is_empty()),
        refused: raw.refused.is_some(),
        count: raw.count,
        denied: raw.denied,
        event,
    };
    match record.event.as_ref() {
        "call" if record.func.is_none() => Err("call without fn"),
        "call" if record.rv.is_none() => Err("call without rv"),
        "dropped" if record.count.is_none() => Err("dropped without count"),
        _ => Ok(Some(record)),
    }
}

/// Parses syslog `key=value` pairs (`text` starts at `event=`). Values with spaces, quotes or
/// `=` are quoted, with `\"`, `\\` and `\xNN` escapes; anything else is malformed, so that a
/// damaged or forged line is counted rather than half-read.
fn parse_pairs(text: &[u8]) -> Result<Raw<'_>, &'static str> {
    let mut raw = Raw::default();
    let mut i = 0;
    while i < text.len() {
        if text[i] == b' ' {
            i += 1;
            continue;
        }
        let key_start = i;
        while i < text.len() && (text[i].is_ascii_alphanumeric() || text[i] == b'_') {
            i += 1;
        }
        if i == key_start || text.get(i) != Some(&b'=') {
            return Err("not key=value");
        }
        let key = &text[key_start..i];
        i += 1;
        let value: Cow<'_, str> = if text.get(i) == Some(&b'"') {
            let (value, end) = parse_quoted(text, i + 1)?;
            i = end;
            value
        } else {
            let start = i;
            while i < text.len() && text[i] != b' ' {
                if text[i] == b'"' || text[i] == b'=' {
                    return Err("unquoted value with a quote or =");
                }
                i += 1;
            }
            utf8(&text[start..i])
        };
        if i < text.len() && text[i] != b' ' {
            return Err("no space after a value");
        }
        let value = Str(value);
        match key {
            b"event" => set_field(&mut raw.event, value)?,
            b"time" => set_field(&mut raw.time, value)?,
            b"host" => set_field(&mut raw.host, value)?,
            b"pid" => set_field(&mut raw.pid, number(&value.0)?)?,
            b"rec" => set_field(&mut raw.rec, number(&value.0)?)?,
            b"app" => set_field(&mut raw.app, value)?,
            b"fn" => set_field(&mut raw.func, value)?,
            b"rv" => set_field(&mut raw.rv, value)?,
            b"key" => set_field(&mut raw.key, number(&value.0)?)?,
            b"key_label" => set_field(&mut raw.key_label, value)?,
            b"key_id" => set_field(&mut raw.key_id, value)?,
            b"key_uri" => set_field(&mut raw.key_uri, value)?,
            b"object" => set_field(&mut raw.object, number(&value.0)?)?,
            b"object_label" => set_field(&mut raw.object_label, value)?,
            b"object_id" => set_field(&mut raw.object_id, value)?,
            b"object_uri" => set_field(&mut raw.object_uri, value)?,
            b"refused" => set_field(&mut raw.refused, value)?,
            b"count" => set_field(&mut raw.count, number(&value.0)?)?,
            b"denied" => set_field(&mut raw.denied, number(&value.0)?)?,
            _ => {}
        }
    }
    Ok(raw)
}

/// Reads a quoted value from `start` (just after the opening quote); returns it and the
/// index just after the closing quote.
fn parse_quoted(text: &[u8], start: usize) -> Result<(Cow<'_, str>, usize), &'static str> {
    let mut i = start;
    let mut decoded: Option<Vec<u8>> = None;
    loop {
        match text.get(i) {
            None => return Err("unterminated quote"),
            Some(b'"') => break,
            Some(b'\\') => {
                let buf = decoded.get_or_insert_with(|| text[start..i].to_vec());
                match text.get(i + 1) {
                    Some(b'"') => buf.push(b'"'),
                    Some(b'\\') => buf.push(b'\\'),
                    Some(b'x') => {
                        let byte = match text.get(i + 2..i + 4) {
                            Some(&[hi, lo]) => hex_digit(hi).zip(hex_digit(lo)),
                            _ => None,
                        };
                        let (hi, lo) = byte.ok_or("bad \\x escape")?;
                        buf.push(hi << 4 | lo);
                        i += 2;
                    }
                    _ => return Err("unknown escape"),
                }
                i += 2;
            }
            Some(&b) => {
                if let Some(buf) = decoded.as_mut() {
                    buf.push(b);
                }
                i += 1;
            }
        }
    }
    let value = match decoded {
        None => utf8(&text[start..i]),
        Some(bytes) => Cow::Owned(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }),
    };
    Ok((value, i + 1))
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// Labels are UTF-8 by the PKCS#11 spec; anything else is shown with replacement characters
/// rather than dropping the record.
fn utf8(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

fn number(text: &str) -> Result<u64, &'static str> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a number");
    }
    text.parse().map_err(|_| "number too large")
}

/// A field twice on one line is malformed: a label cannot forge one (it is quoted), so a
/// repeated field means the line is damaged or was not written by p11gate.
fn set_field<T>(slot: &mut Option<T>, value: T) -> Result<(), &'static str> {
    if slot.is_some() {
        return Err("a field twice");
    }
    *slot = Some(value);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Aggregation

/// Counts of call records, for one row of a table (or the totals).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    calls: u64,
    errors: u64,
    refusals: u64,
    /// Microseconds since the epoch; meaningful when `calls > 0`.
    first: i64,
    last: i64,
}

impl Counts {
    fn add(&mut self, record: &Record) {
        if self.calls == 0 {
            self.first = record.time;
            self.last = record.time;
        } else {
            self.first = self.first.min(record.time);
            self.last = self.last.max(record.time);
        }
        self.calls += 1;
        self.errors += u64::from(record.is_error());
        self.refusals += u64::from(record.refused);
    }
}

/// Records other than calls.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
struct Events {
    init: u64,
    finalize: u64,
    load: u64,
    config_error: u64,
    outage: u64,
    dropped: u64,
    /// Events this version does not know.
    other: u64,
}

#[derive(Debug, Default)]
struct Summary {
    apps: HashMap<String, Counts>,
    /// app -> key name -> counts: keys are per app, as handles and labels are.
    keys: HashMap<String, HashMap<String, Counts>>,
    /// app -> key name -> the fullest key URI its records carry.
    key_uris: HashMap<String, HashMap<String, String>>,
    functions: HashMap<String, Counts>,
    totals: Counts,
    events: Events,
    /// Sum of `count` over `event=dropped`: records p11gate lost.
    dropped_records: u64,
    /// Sum of `denied` over `event=outage`: calls refused while a sink was down.
    denied_calls: u64,
    /// Records counted (calls and events), after filters and duplicates.
    records: u64,
    duplicates: u64,
    malformed: u64,
    /// The first malformed line's number and what was wrong, to help find it.
    first_malformed: Option<(u64, &'static str)>,
}

/// Remembers the last [`DEDUPE_WINDOW`] record identities, oldest forgotten first.
#[derive(Debug)]
struct Dedupe {
    /// Host names are interned: a handful per input, and a small integer hashes fast.
    hosts: HashMap<String, u32>,
    seen: HashSet<RecordId>,
    order: VecDeque<RecordId>,
    capacity: usize,
}

/// host, pid, rec identify a record; the time is part of the key too, because a restarted
/// process (in a container, often) can get the same pid and starts again at rec 1.
type RecordId = (u32, u64, u64, i64);

impl Dedupe {
    fn new(capacity: usize) -> Self {
        Dedupe {
            hosts: HashMap::new(),
            seen: HashSet::with_capacity(capacity.min(DEDUPE_WINDOW)),
            order: VecDeque::with_capacity(capacity.min(DEDUPE_WINDOW)),
            capacity,
        }
    }

    /// True when this record was seen within the window; otherwise remembers it.
    fn is_duplicate(&mut self, record: &Record) -> bool {
        let host = match self.hosts.get(record.host.as_ref()) {
            Some(&id) => id,
            None => {
                let id = u32::try_from(self.hosts.len()).unwrap_or(u32::MAX);
                self.hosts.insert(record.host.to_string(), id);
                id
            }
        };
        let id = (host, record.pid, record.rec, record.time);
        if self.seen.contains(&id) {
            return true;
        }
        if self.order.len() >= self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(id);
        self.order.push_back(id);
        false
    }
}

impl Filter {
    /// --since and --app: they apply to every record.
    fn selects_record(&self, record: &Record) -> bool {
        self.since.is_none_or(|since| record.time >= since)
            && self.app.as_deref().is_none_or(|app| record.app == app)
    }

    /// --key, --fn and --errors: they apply to calls.
    fn selects_call(&self, record: &Record) -> bool {
        if self.errors && !record.is_error() && !record.refused {
            return false;
        }
        if let Some(func) = &self.func {
            if !record
                .func
                .as_deref()
                .is_some_and(|f| f.eq_ignore_ascii_case(func))
            {
                return false;
            }
        }
        match &self.key {
            None => true,
            Some(KeyFilter::Name(wanted)) => key_matches(record, wanted),
            Some(KeyFilter::Uri(wanted)) => key_matches_uri(record, wanted),
        }
    }
}

/// `--key`: a label, a CKA_ID in hex (bare or `id:`), or `handle:N`, as the key table names them.
fn key_matches(record: &Record, wanted: &str) -> bool {
    if record.key_label.as_deref() == Some(wanted) {
        return true;
    }
    if let Some(id) = record.key_id.as_deref() {
        let wanted_id = wanted.strip_prefix("id:").unwrap_or(wanted);
        if id.eq_ignore_ascii_case(wanted_id) {
            return true;
        }
    }
    if let (Some(handle), Some(wanted)) = (record.key, wanted.strip_prefix("handle:")) {
        return wanted.parse::<u64>().ok() == Some(handle);
    }
    false
}

/// `--key pkcs11:...`: every attribute the URI gives matches what the record says of its key
/// (its key_uri, else its label and id).
fn key_matches_uri(record: &Record, wanted: &Pkcs11Uri) -> bool {
    let said = record
        .key_uri
        .as_deref()
        .and_then(|u| Pkcs11Uri::parse(u).ok());
    let (token, label, id, class) = match &said {
        Some(u) => (
            u.get(Attr::Token).map(<[u8]>::to_vec),
            u.get(Attr::Object).map(<[u8]>::to_vec),
            u.get(Attr::Id).map(<[u8]>::to_vec),
            u.object_type().map(ObjectType::class),
        ),
        None => (
            None,
            record.key_label.as_deref().map(|l| l.as_bytes().to_vec()),
            record.key_id.as_deref().and_then(hex_bytes),
            None,
        ),
    };
    wanted
        .get(Attr::Token)
        .is_none_or(|t| token.as_deref() == Some(t))
        && wanted.matches_object(class, label.as_deref(), id.as_deref())
}

/// `key_id`'s hex as bytes.
fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|p| Some(hex_digit(p[0])? << 4 | hex_digit(p[1])?))
        .collect()
}

/// The key table's name of a record's key: its label, else `id:` its CKA_ID, else `handle:`
/// its handle; `None` for a record without a key. `buf` is reused to avoid an allocation.
fn key_name<'r>(record: &'r Record, buf: &'r mut String) -> Option<&'r str> {
    use std::fmt::Write as _;
    if let Some(label) = record.key_label.as_deref() {
        return Some(label);
    }
    buf.clear();
    if let Some(id) = record.key_id.as_deref() {
        buf.push_str("id:");
        buf.push_str(id);
    } else {
        let handle = record.key?;
        // Writing to a String cannot fail.
        let _ = write!(buf, "handle:{handle}");
    }
    Some(buf.as_str())
}

/// Keeps the longer of `uri` and the one `name` has (on a tie the smaller), so that the URI a
/// row shows does not depend on the order of the records.
fn keep_fullest(uris: &mut HashMap<String, String>, name: &str, uri: &str) {
    match uris.get_mut(name) {
        Some(kept) => {
            if (uri.len(), std::cmp::Reverse(uri)) > (kept.len(), std::cmp::Reverse(kept.as_str()))
            {
                uri.clone_into(kept);
            }
        }
        None => {
            uris.insert(name.to_string(), uri.to_string());
        }
    }
}

/// Adds `record` to the row `name` of `map`, allocating the name only for a new row.
fn add_to(map: &mut HashMap<String, Counts>, name: &str, record: &Record) {
    match map.get_mut(name) {
        Some(counts) => counts.add(record),
        None => {
            let mut counts = Counts::default();
            counts.add(record);
            map.insert(name.to_string(), counts);
        }
    }
}

impl Summary {
    fn add(&mut self, record: &Record, filter: &Filter, key_buf: &mut String) {
        if !filter.selects_record(record) {
            return;
        }
        if record.event != "call" {
            self.records += 1;
            let e = &mut self.events;
            match record.event.as_ref() {
                "init" => e.init += 1,
                "finalize" => e.finalize += 1,
                "load" => e.load += 1,
                "config_error" => e.config_error += 1,
                "outage" => e.outage += 1,
                "dropped" => e.dropped += 1,
                _ => e.other += 1,
            }
            self.dropped_records = self.dropped_records.saturating_add(
                record
                    .count
                    .filter(|_| record.event == "dropped")
                    .unwrap_or(0),
            );
            self.denied_calls = self.denied_calls.saturating_add(
                record
                    .denied
                    .filter(|_| record.event == "outage")
                    .unwrap_or(0),
            );
            return;
        }
        if !filter.selects_call(record) {
            return;
        }
        self.records += 1;
        self.totals.add(record);
        add_to(&mut self.apps, &record.app, record);
        if let Some(func) = record.func.as_deref() {
            add_to(&mut self.functions, func, record);
        }
        if let Some(name) = key_name(record, key_buf) {
            let per_app = match self.keys.get_mut(record.app.as_ref()) {
                Some(m) => m,
                None => self.keys.entry(record.app.to_string()).or_default(),
            };
            add_to(per_app, name, record);
            if let Some(uri) = record.key_uri.as_deref() {
                let uris = match self.key_uris.get_mut(record.app.as_ref()) {
                    Some(m) => m,
                    None => self.key_uris.entry(record.app.to_string()).or_default(),
                };
                keep_fullest(uris, name, uri);
            }
        }
    }

    fn note_malformed(&mut self, line_number: u64, reason: &'static str) {
        self.malformed += 1;
        if self.first_malformed.is_none() {
            self.first_malformed = Some((line_number, reason));
        }
    }
}

/// Reads every line of `input` and aggregates what `filter` selects.
fn summarise(
    input: &mut dyn BufRead,
    filter: &Filter,
    progress: &mut Progress,
) -> io::Result<Summary> {
    let mut summary = Summary::default();
    let mut dedupe = Dedupe::new(DEDUPE_WINDOW);
    let mut line = Vec::with_capacity(4096);
    let mut key_buf = String::new();
    let mut bytes: u64 = 0;
    let mut line_number: u64 = 0;
    let mut records_read: u64 = 0;
    loop {
        let (consumed, cut) = read_line(input, &mut line, MAX_LINE)?;
        if consumed == 0 {
            break;
        }
        bytes += consumed as u64;
        line_number += 1;
        if line_number.is_multiple_of(PROGRESS_EVERY) {
            progress.update(bytes, records_read);
        }
        if cut {
            // Only worth counting when it looks like ours.
            let ours =
                line.trim_ascii().first() == Some(&b'{') || find(&line, b"p11gate").is_some();
            if ours {
                summary.note_malformed(line_number, "line longer than 1 MiB");
            }
            continue;
        }
        match classify(&line) {
            Ok(None) => {}
            Err(reason) => summary.note_malformed(line_number, reason),
            Ok(Some(record)) => {
                records_read += 1;
                if dedupe.is_duplicate(&record) {
                    summary.duplicates += 1;
                } else {
                    summary.add(&record, filter, &mut key_buf);
                }
            }
        }
    }
    Ok(summary)
}

/// Reads one line into `buf` without its newline, keeping at most `max` bytes of it so that a
/// file without newlines cannot make memory grow. Returns the bytes consumed (0 at the end of
/// the input) and whether the line was cut.
fn read_line(input: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<(usize, bool)> {
    buf.clear();
    let mut consumed = 0;
    let mut cut = false;
    loop {
        let chunk = match input.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            return Ok((consumed, cut));
        }
        let newline = chunk.iter().position(|&b| b == b'\n');
        let data = &chunk[..newline.unwrap_or(chunk.len())];
        let room = max.saturating_sub(buf.len());
        if data.len() > room {
            cut = true;
        }
        buf.extend_from_slice(&data[..data.len().min(room)]);
        let used = newline.map_or(chunk.len(), |at| at + 1);
        input.consume(used);
        consumed += used;
        if newline.is_some() {
            return Ok((consumed, cut));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Progress

/// A progress line only on a terminal (`allowed`), for a regular file with something in it
/// (a size to take a percentage of), and never with `--json`, whose reader is a program.
fn shows_progress(allowed: bool, json: bool, size: Option<u64>) -> bool {
    allowed && !json && size.is_some_and(|total| total > 0)
}

/// A progress line on a terminal, so that a long file shows it is moving: at most ten updates a
/// second, erased at the end so that it never mixes with the output.
struct Progress<'w> {
    sink: Option<&'w mut dyn Write>,
    total: u64,
    start: Instant,
    next: Instant,
    shown: bool,
}

impl<'w> Progress<'w> {
    /// `sink` is `None` when no progress is wanted (stderr not a terminal, input not a file).
    fn new(sink: Option<&'w mut dyn Write>, total: u64) -> Self {
        let start = Instant::now();
        Progress {
            sink,
            total,
            start,
            next: start + PROGRESS_INTERVAL,
            shown: false,
        }
    }

    /// `bytes` read so far, of which `records` were p11gate records.
    fn update(&mut self, bytes: u64, records: u64) {
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + PROGRESS_INTERVAL;
        let percent = (bytes.saturating_mul(100) / self.total.max(1)).min(100);
        let seconds = now.duration_since(self.start).as_secs_f64();
        let rate = if seconds > 0.0 {
            records as f64 / seconds
        } else {
            0.0
        };
        // Progress is a courtesy: a failed write to stderr is not worth stopping for.
        let _ = write!(
            sink,
            "\raudit summary: {percent:3}%  {records} records  {rate:.0} records/s\x1b[K"
        );
        let _ = sink.flush();
        self.shown = true;
    }

    fn finish(&mut self) {
        if let (true, Some(sink)) = (self.shown, self.sink.as_mut()) {
            let _ = write!(sink, "\r\x1b[K");
            let _ = sink.flush();
            self.shown = false;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output

/// Rows sorted by calls, most first, then by name, so that the output is stable.
fn sorted<'a, I>(rows: I) -> Vec<(String, Counts)>
where
    I: Iterator<Item = (String, &'a Counts)>,
{
    let mut rows: Vec<(String, Counts)> = rows.map(|(n, c)| (n, *c)).collect();
    rows.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then_with(|| a.0.cmp(&b.0)));
    rows
}

/// A key row: app, key name, counts, and the key's URI when its records carry one.
type KeyRow = (String, String, Counts, Option<String>);

/// Key rows, sorted like [`sorted`] by "app/key".
fn key_rows(summary: &Summary) -> Vec<KeyRow> {
    let mut rows: Vec<KeyRow> = summary
        .keys
        .iter()
        .flat_map(|(app, keys)| {
            keys.iter().map(move |(k, c)| {
                let uri = summary.key_uris.get(app).and_then(|u| u.get(k)).cloned();
                (app.clone(), k.clone(), *c, uri)
            })
        })
        .collect();
    rows.sort_by(|a, b| {
        b.2.calls
            .cmp(&a.2.calls)
            .then_with(|| a.0.cmp(&b.0))
            .then_with(|| a.1.cmp(&b.1))
    });
    rows
}

/// Makes a name safe to print on a terminal: control characters and bidirectional overrides
/// are escaped (and so is `\`), so a label cannot forge a line or reorder what is shown.
fn printable(name: &str) -> Cow<'_, str> {
    let needs = |c: char| {
        c == '\\'
            || c.is_control()
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !name.chars().any(needs) {
        return Cow::Borrowed(name);
    }
    let mut s = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if c == '\\' {
            s.push_str("\\\\");
        } else if needs(c) && (c as u32) < 0x80 {
            s.push_str(&format!("\\x{:02x}", c as u32));
        } else if needs(c) {
            s.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            s.push(c);
        }
    }
    Cow::Owned(s)
}

/// A table of rows; `uris`, when any row has one, adds a last column.
fn write_table(
    out: &mut dyn Write,
    title: &str,
    header: &str,
    rows: &[(String, Counts)],
    uris: &[Option<String>],
) -> io::Result<()> {
    writeln!(out, "{title}")?;
    if rows.is_empty() {
        return writeln!(out, "  (none)");
    }
    let names: Vec<Cow<str>> = rows.iter().map(|(n, _)| printable(n)).collect();
    let width =
        |head: &str, values: &mut dyn Iterator<Item = usize>| values.fold(head.len(), usize::max);
    let name_w = width(header, &mut names.iter().map(|n| n.chars().count()));
    let calls_w = width(
        "calls",
        &mut rows.iter().map(|r| r.1.calls.to_string().len()),
    );
    let errors_w = width(
        "errors",
        &mut rows.iter().map(|r| r.1.errors.to_string().len()),
    );
    let refusals_w = width(
        "refusals",
        &mut rows.iter().map(|r| r.1.refusals.to_string().len()),
    );
    const TIME_W: usize = 27; // 2026-11-28T23:06:01.123456Z
    let with_uris = uris.iter().any(Option::is_some);
    let uri_head = if with_uris {
        format!("  {:<TIME_W$}  uri", "last")
    } else {
        "  last".to_string()
    };
    writeln!(
        out,
        "  {header:<name_w$}  {:>calls_w$}  {:>errors_w$}  {:>refusals_w$}  {:<TIME_W$}{uri_head}",
        "calls", "errors", "refusals", "first"
    )?;
    for (i, (name, (_, c))) in names.iter().zip(rows).enumerate() {
        // p11gate percent-encodes a URI, but the input may not be p11gate's: escaped as names.
        let uri = match uris.get(i) {
            Some(Some(u)) => format!("  {}", printable(u)),
            _ if with_uris => "  -".to_string(),
            _ => String::new(),
        };
        let last = if with_uris {
            format!("{:<TIME_W$}", format_time(c.last))
        } else {
            format_time(c.last)
        };
        writeln!(
            out,
            "  {name:<name_w$}  {:>calls_w$}  {:>errors_w$}  {:>refusals_w$}  {:<TIME_W$}  {last}{uri}",
            c.calls,
            c.errors,
            c.refusals,
            format_time(c.first),
        )?;
    }
    Ok(())
}

fn write_text(summary: &Summary, out: &mut dyn Write) -> io::Result<()> {
    let apps = sorted(summary.apps.iter().map(|(n, c)| (n.clone(), c)));
    write_table(out, "apps", "app", &apps, &[])?;
    writeln!(out)?;
    let (keys, uris): (Vec<(String, Counts)>, Vec<Option<String>>) = key_rows(summary)
        .into_iter()
        .map(|(app, key, c, uri)| ((format!("{app}/{key}"), c), uri))
        .unzip();
    write_table(out, "keys", "app/key", &keys, &uris)?;
    writeln!(out)?;
    let functions = sorted(summary.functions.iter().map(|(n, c)| (n.clone(), c)));
    write_table(out, "functions", "function", &functions, &[])?;
    writeln!(out)?;
    let e = &summary.events;
    writeln!(out, "events")?;
    writeln!(
        out,
        "  init {}  finalize {}  load {}  config_error {}  outage {}  dropped {}  other {}",
        e.init, e.finalize, e.load, e.config_error, e.outage, e.dropped, e.other
    )?;
    writeln!(
        out,
        "  records dropped by p11gate: {}",
        summary.dropped_records
    )?;
    writeln!(
        out,
        "  calls denied during outages: {}",
        summary.denied_calls
    )?;
    writeln!(out)?;
    let t = &summary.totals;
    writeln!(out, "totals")?;
    writeln!(
        out,
        "  records {}  calls {}  errors {}  refusals {}  duplicates {}  malformed {}",
        summary.records, t.calls, t.errors, t.refusals, summary.duplicates, summary.malformed
    )?;
    if summary.dropped_records > 0 {
        writeln!(
            out,
            "\nwarning: p11gate dropped {} audit record{}: the trail is incomplete",
            summary.dropped_records,
            if summary.dropped_records == 1 {
                ""
            } else {
                "s"
            }
        )?;
    }
    Ok(())
}

#[derive(Serialize)]
struct JsonRow {
    name: String,
    calls: u64,
    errors: u64,
    refusals: u64,
    first: String,
    last: String,
}

#[derive(Serialize)]
struct JsonKeyRow {
    /// `app/key`, as the text table shows it.
    name: String,
    app: String,
    key: String,
    calls: u64,
    errors: u64,
    refusals: u64,
    first: String,
    last: String,
    /// The fullest PKCS#11 URI the key's records carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
}

#[derive(Serialize)]
struct JsonSummary {
    records: u64,
    calls: u64,
    errors: u64,
    refusals: u64,
    duplicates: u64,
    malformed: u64,
    dropped_records: u64,
    denied_calls: u64,
    events: Events,
    apps: Vec<JsonRow>,
    keys: Vec<JsonKeyRow>,
    functions: Vec<JsonRow>,
}

fn json_rows(rows: Vec<(String, Counts)>) -> Vec<JsonRow> {
    rows.into_iter()
        .map(|(name, c)| JsonRow {
            name,
            calls: c.calls,
            errors: c.errors,
            refusals: c.refusals,
            first: format_time(c.first),
            last: format_time(c.last),
        })
        .collect()
}

fn write_json(summary: &Summary, out: &mut dyn Write) -> io::Result<()> {
    let doc = JsonSummary {
        records: summary.records,
        calls: summary.totals.calls,
        errors: summary.totals.errors,
        refusals: summary.totals.refusals,
        duplicates: summary.duplicates,
        malformed: summary.malformed,
        dropped_records: summary.dropped_records,
        denied_calls: summary.denied_calls,
        events: summary.events,
        apps: json_rows(sorted(summary.apps.iter().map(|(n, c)| (n.clone(), c)))),
        keys: key_rows(summary)
            .into_iter()
            .map(|(app, key, c, uri)| JsonKeyRow {
                name: format!("{app}/{key}"),
                app,
                key,
                calls: c.calls,
                errors: c.errors,
                refusals: c.refusals,
                first: format_time(c.first),
                last: format_time(c.last),
                uri,
            })
            .collect(),
        functions: json_rows(sorted(
            summary.functions.iter().map(|(n, c)| (n.clone(), c)),
        )),
    };
    serde_json::to_writer(&mut *out, &doc).map_err(io::Error::other)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// "Now" for the tests: 2026-11-29T00:00:00Z.
    const NOW: i64 = 1_795_910_400_000_000;

    /// The same eleven lines in both formats: a file header, five calls (one refused, one with
    /// an offset time, one out of order), init, dropped, outage and a duplicate of rec 3.
    const JSON_LINES: &str = r#"{"seq":0,"event":"file_start","time":"2026-11-28T22:58:00.000000Z","key_id":"0011223344556677"}
{"seq":1,"event":"init","time":"2026-11-28T22:59:00.000000Z","host":"vault1","pid":4242,"rec":1,"app":"vault-1","msg":"config /etc/p11gate/p11gate.toml","chain":"00"}
{"seq":2,"event":"call","time":"2026-11-28T23:00:00.123456Z","host":"vault1","pid":4242,"rec":2,"app":"vault-1","fn":"C_Login","rv":"CKR_OK","us":900,"slot":1,"user":"CKU_USER","chain":"aa"}
{"seq":3,"event":"call","time":"2026-11-28T23:00:01.000000Z","host":"vault1","pid":4242,"rec":3,"app":"vault-1","fn":"C_Encrypt","rv":"CKR_OK","us":41,"mech":"CKM_AES_GCM","key":2,"key_label":"vault-key","key_id":"3132","key_class":"CKO_SECRET_KEY","in":32,"out":48,"parts":1,"chain":"bb"}
{"seq":4,"event":"call","time":"2026-11-28T23:00:02.000000Z","host":"vault1","pid":4242,"rec":4,"app":"vault-1","fn":"C_Decrypt","rv":"CKR_ENCRYPTED_DATA_INVALID","key":2,"key_label":"vault-key","chain":"cc"}
{"seq":5,"event":"call","time":"2026-11-29T00:00:03+01:00","host":"vault2","pid":77,"rec":1,"app":"vault-2","fn":"C_Encrypt","rv":"CKR_MECHANISM_INVALID","mech":"CKM_DES3_CBC","key":5,"refused":"slot 1 deny CKM_DES3_CBC","chain":"dd"}
{"seq":6,"event":"call","time":"2026-11-28T22:59:59.000000Z","host":"vault1","pid":4242,"rec":5,"app":"vault-1","fn":"C_Encrypt","rv":"CKR_OK","key":7,"key_id":"ABCD","chain":"ee"}
{"seq":7,"event":"dropped","time":"2026-11-28T23:00:05.000000Z","host":"vault2","pid":77,"rec":2,"app":"vault-2","count":5,"chain":"ff"}
{"seq":8,"event":"outage","time":"2026-11-28T23:00:06.000000Z","host":"vault1","pid":4242,"rec":6,"app":"vault-1","sink":"syslog","since":"2026-11-28T23:00:04.000000Z","msg":"connection refused","delayed":12,"denied":2,"chain":"11"}
{"seq":9,"event":"call","time":"2026-11-28T23:00:01.000000Z","host":"vault1","pid":4242,"rec":3,"app":"vault-1","fn":"C_Encrypt","rv":"CKR_OK","us":41,"mech":"CKM_AES_GCM","key":2,"key_label":"vault-key","key_id":"3132","key_class":"CKO_SECRET_KEY","in":32,"out":48,"parts":1,"chain":"bb"}
"#;

    /// [`JSON_LINES`] as syslog text (RFC 5424 and RFC 3164 lines), with other programs' lines
    /// and a p11gate diagnostic line in between.
    const SYSLOG_LINES: &str = r#"Nov 28 22:58:00 vault1 systemd[1]: Starting p11gate-demo.service...
<86>1 2026-11-28T22:59:00.000000Z vault1 p11gate 4242 audit - event=init time=2026-11-28T22:59:00.000000Z host=vault1 pid=4242 rec=1 app=vault-1 msg="config /etc/p11gate/p11gate.toml"
Nov 28 23:00:00 vault1 p11gate[4242]: event=call time=2026-11-28T23:00:00.123456Z host=vault1 pid=4242 rec=2 app=vault-1 fn=C_Login rv=CKR_OK us=900 slot=1 user=CKU_USER
<86>1 2026-11-28T23:00:01.000000Z vault1 p11gate 4242 audit - event=call time=2026-11-28T23:00:01.000000Z host=vault1 pid=4242 rec=3 app=vault-1 fn=C_Encrypt rv=CKR_OK us=41 mech=CKM_AES_GCM key=2 key_label=vault-key key_id=3132 key_class=CKO_SECRET_KEY in=32 out=48 parts=1
Nov 28 23:00:01 vault1 kernel: [ 123.456] eth0: link up event=up
<86>1 2026-11-28T23:00:02.000000Z vault1 p11gate 4242 audit - event=call time=2026-11-28T23:00:02.000000Z host=vault1 pid=4242 rec=4 app=vault-1 fn=C_Decrypt rv=CKR_ENCRYPTED_DATA_INVALID key=2 key_label=vault-key
<84>1 2026-11-28T23:00:03.000000Z vault2 p11gate 77 audit - event=call time=2026-11-29T00:00:03+01:00 host=vault2 pid=77 rec=1 app=vault-2 fn=C_Encrypt rv=CKR_MECHANISM_INVALID mech=CKM_DES3_CBC key=5 refused="slot 1 deny CKM_DES3_CBC"
<86>1 2026-11-28T22:59:59.000000Z vault1 p11gate 4242 audit - event=call time=2026-11-28T22:59:59.000000Z host=vault1 pid=4242 rec=5 app=vault-1 fn=C_Encrypt rv=CKR_OK key=7 key_id=ABCD
Nov 28 23:00:04 vault1 p11gate[4242]: audit sink syslog: connection refused
<84>1 2026-11-28T23:00:05.000000Z vault2 p11gate 77 audit - event=dropped time=2026-11-28T23:00:05.000000Z host=vault2 pid=77 rec=2 app=vault-2 count=5
<84>1 2026-11-28T23:00:06.000000Z vault1 p11gate 4242 audit - event=outage time=2026-11-28T23:00:06.000000Z host=vault1 pid=4242 rec=6 app=vault-1 sink=syslog since=2026-11-28T23:00:04.000000Z msg="connection refused" delayed=12 denied=2
<86>1 2026-11-28T23:00:01.000000Z vault1 p11gate 4242 audit - event=call time=2026-11-28T23:00:01.000000Z host=vault1 pid=4242 rec=3 app=vault-1 fn=C_Encrypt rv=CKR_OK us=41 mech=CKM_AES_GCM key=2 key_label=vault-key key_id=3132 key_class=CKO_SECRET_KEY in=32 out=48 parts=1
"#;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    /// Runs the command on `input` (through a file) and returns exit code, stdout and stderr.
    fn run_on(input: &str, args: &[&str]) -> (u8, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, input).unwrap();
        let mut all = strings(args);
        all.push(path.to_str().unwrap().to_string());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(&all, &mut out, &mut err, NOW, false);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    /// The `--json` summary of `input` with `args`.
    fn json_of(input: &str, args: &[&str]) -> Value {
        let mut all = strings(args);
        all.push("--json".into());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (code, out, err) = run_on(input, &all);
        assert_eq!(code, 0, "stderr: {err}");
        assert!(
            out.ends_with('\n') && out.matches('\n').count() == 1,
            "one line: {out}"
        );
        serde_json::from_str(&out).unwrap()
    }

    /// One row of a JSON table as (name, calls, errors, refusals, first, last).
    fn row(v: &Value) -> (String, u64, u64, u64, String, String) {
        (
            v["name"].as_str().unwrap().to_string(),
            v["calls"].as_u64().unwrap(),
            v["errors"].as_u64().unwrap(),
            v["refusals"].as_u64().unwrap(),
            v["first"].as_str().unwrap().to_string(),
            v["last"].as_str().unwrap().to_string(),
        )
    }

    fn rows(v: &Value, table: &str) -> Vec<(String, u64, u64, u64, String, String)> {
        v[table].as_array().unwrap().iter().map(row).collect()
    }

    fn names(v: &Value, table: &str) -> Vec<String> {
        rows(v, table).into_iter().map(|r| r.0).collect()
    }

    /// (records, calls, errors, refusals) of a summary.
    fn totals(v: &Value) -> (u64, u64, u64, u64) {
        (
            v["records"].as_u64().unwrap(),
            v["calls"].as_u64().unwrap(),
            v["errors"].as_u64().unwrap(),
            v["refusals"].as_u64().unwrap(),
        )
    }

    fn t(s: &str) -> String {
        s.to_string()
    }

    #[test]
    fn json_lines_are_summarised_per_app_key_and_function() {
        let v = json_of(JSON_LINES, &[]);
        assert_eq!(
            rows(&v, "apps"),
            vec![
                (
                    t("vault-1"),
                    4,
                    1,
                    0,
                    t("2026-11-28T22:59:59.000000Z"),
                    t("2026-11-28T23:00:02.000000Z")
                ),
                (
                    t("vault-2"),
                    1,
                    1,
                    1,
                    t("2026-11-28T23:00:03.000000Z"),
                    t("2026-11-28T23:00:03.000000Z")
                ),
            ]
        );
        assert_eq!(
            rows(&v, "keys"),
            vec![
                (
                    t("vault-1/vault-key"),
                    2,
                    1,
                    0,
                    t("2026-11-28T23:00:01.000000Z"),
                    t("2026-11-28T23:00:02.000000Z")
                ),
                (
                    t("vault-1/id:ABCD"),
                    1,
                    0,
                    0,
                    t("2026-11-28T22:59:59.000000Z"),
                    t("2026-11-28T22:59:59.000000Z")
                ),
                (
                    t("vault-2/handle:5"),
                    1,
                    1,
                    1,
                    t("2026-11-28T23:00:03.000000Z"),
                    t("2026-11-28T23:00:03.000000Z")
                ),
            ]
        );
        assert_eq!(v["keys"][0]["app"], "vault-1");
        assert_eq!(v["keys"][0]["key"], "vault-key");
        assert_eq!(v["keys"][2]["app"], "vault-2");
        assert_eq!(v["keys"][2]["key"], "handle:5");
        assert_eq!(
            rows(&v, "functions"),
            vec![
                (
                    t("C_Encrypt"),
                    3,
                    1,
                    1,
                    t("2026-11-28T22:59:59.000000Z"),
                    t("2026-11-28T23:00:03.000000Z")
                ),
                (
                    t("C_Decrypt"),
                    1,
                    1,
                    0,
                    t("2026-11-28T23:00:02.000000Z"),
                    t("2026-11-28T23:00:02.000000Z")
                ),
                (
                    t("C_Login"),
                    1,
                    0,
                    0,
                    t("2026-11-28T23:00:00.123456Z"),
                    t("2026-11-28T23:00:00.123456Z")
                ),
            ]
        );
        // Five calls and three events; the header is not a record; rec 3 came twice.
        assert_eq!(totals(&v), (8, 5, 2, 1));
        assert_eq!(v["duplicates"], 1);
        assert_eq!(v["malformed"], 0);
        assert_eq!(v["dropped_records"], 5);
        assert_eq!(v["denied_calls"], 2);
        assert_eq!(
            v["events"],
            serde_json::json!({"init": 1, "finalize": 0, "load": 0, "config_error": 0,
                               "outage": 1, "dropped": 1, "other": 0})
        );
    }

    #[test]
    fn syslog_text_gives_the_same_summary_as_json_lines() {
        let (code, out, err) = run_on(SYSLOG_LINES, &["--json"]);
        assert_eq!((code, err.as_str()), (0, ""));
        let from_syslog: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(from_syslog, json_of(JSON_LINES, &[]));
        assert_eq!(totals(&from_syslog), (8, 5, 2, 1));
    }

    #[test]
    fn text_output_shows_the_tables_events_and_totals() {
        let (code, out, err) = run_on(JSON_LINES, &[]);
        assert_eq!((code, err.as_str()), (0, ""));
        let expected = "\
apps
  app      calls  errors  refusals  first                        last
  vault-1      4       1         0  2026-11-28T22:59:59.000000Z  2026-11-28T23:00:02.000000Z
  vault-2      1       1         1  2026-11-28T23:00:03.000000Z  2026-11-28T23:00:03.000000Z

keys
  app/key            calls  errors  refusals  first                        last
  vault-1/vault-key      2       1         0  2026-11-28T23:00:01.000000Z  2026-11-28T23:00:02.000000Z
  vault-1/id:ABCD        1       0         0  2026-11-28T22:59:59.000000Z  2026-11-28T22:59:59.000000Z
  vault-2/handle:5       1       1         1  2026-11-28T23:00:03.000000Z  2026-11-28T23:00:03.000000Z

functions
  function   calls  errors  refusals  first                        last
  C_Encrypt      3       1         1  2026-11-28T22:59:59.000000Z  2026-11-28T23:00:03.000000Z
  C_Decrypt      1       1         0  2026-11-28T23:00:02.000000Z  2026-11-28T23:00:02.000000Z
  C_Login        1       0         0  2026-11-28T23:00:00.123456Z  2026-11-28T23:00:00.123456Z

events
  init 1  finalize 0  load 0  config_error 0  outage 1  dropped 1  other 0
  records dropped by p11gate: 5
  calls denied during outages: 2

totals
  records 8  calls 5  errors 2  refusals 1  duplicates 1  malformed 0

warning: p11gate dropped 5 audit records: the trail is incomplete
";
        assert_eq!(out, expected);
    }

    #[test]
    fn empty_input_prints_empty_tables_and_no_warning() {
        let (code, out, err) = run_on("", &[]);
        assert_eq!((code, err.as_str()), (0, ""));
        assert_eq!(
            out,
            "apps\n  (none)\n\nkeys\n  (none)\n\nfunctions\n  (none)\n\nevents\n  init 0  \
             finalize 0  load 0  config_error 0  outage 0  dropped 0  other 0\n  records \
             dropped by p11gate: 0\n  calls denied during outages: 0\n\ntotals\n  records 0  \
             calls 0  errors 0  refusals 0  duplicates 0  malformed 0\n"
        );
    }

    #[test]
    fn syslog_quoting_and_escapes_are_decoded() {
        let line = r#"Nov 28 23:00:00 vault1 p11gate[1]: event=call time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app="my app" fn=C_Sign rv=CKR_OK key_label="a \"b\" c\\d\x41\x0a rv=CKR_FAKE refused=x" key_id=3132"#;
        let v = json_of(line, &[]);
        assert_eq!(names(&v, "apps"), vec!["my app"]);
        assert_eq!(v["keys"][0]["key"], "a \"b\" c\\dA\n rv=CKR_FAKE refused=x");
        // The quoted text did not become fields.
        assert_eq!(totals(&v), (1, 1, 0, 0));
    }

    #[test]
    fn json_escapes_are_decoded() {
        let line = r#"{"event":"call","time":"2026-11-28T23:00:00Z","host":"h","pid":1,"rec":1,"app":"a\"pp","fn":"C_Sign","rv":"CKR_OK","key_label":"k\u0041\\\n"}"#;
        let v = json_of(line, &[]);
        assert_eq!(names(&v, "apps"), vec!["a\"pp"]);
        assert_eq!(v["keys"][0]["key"], "kA\\\n");
    }

    #[test]
    fn text_output_escapes_control_characters_in_names() {
        let line = r#"x p11gate: event=call time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app=a fn=C_Sign rv=CKR_OK key_label="k\x0a  forged 9 9\\\x1b[2J""#;
        let (code, out, _) = run_on(line, &[]);
        assert_eq!(code, 0);
        assert!(
            out.contains("  a/k\\x0a  forged 9 9\\\\\\x1b[2J  "),
            "{out}"
        );
        assert!(!out.contains('\x1b'));
        // Bidirectional overrides too.
        let line = "{\"event\":\"call\",\"time\":\"2026-11-28T23:00:00Z\",\"host\":\"h\",\"pid\":1,\"rec\":1,\"app\":\"a\u{202e}b\",\"fn\":\"C_Sign\",\"rv\":\"CKR_OK\"}";
        let (_, out, _) = run_on(line, &[]);
        assert!(out.contains("  a\\u{202e}b  "), "{out}");
    }

    #[test]
    fn a_duplicate_is_counted_once_but_a_reused_pid_is_not_a_duplicate() {
        let a = r#"{"event":"call","time":"2026-11-28T23:00:00Z","host":"h","pid":1,"rec":1,"app":"a","fn":"C_Sign","rv":"CKR_OK"}"#;
        let other_host = a.replace("\"h\"", "\"h2\"");
        let restarted = a.replace("23:00:00Z", "23:30:00Z");
        let input = [a, a, &other_host, &restarted, a].join("\n");
        let v = json_of(&input, &[]);
        assert_eq!(totals(&v), (3, 3, 0, 0));
        assert_eq!(v["duplicates"], 2);
    }

    fn record(line: &str) -> Record<'_> {
        match classify(line.as_bytes()) {
            Ok(Some(r)) => r,
            other => panic!("not a record: {other:?}"),
        }
    }

    #[test]
    fn the_duplicate_window_is_bounded_and_forgets_the_oldest() {
        let lines: Vec<String> = (1..=3)
            .map(|rec| format!(r#"{{"event":"init","time":"2026-11-28T23:00:00Z","host":"h","pid":1,"rec":{rec},"app":"a"}}"#))
            .collect();
        let (r1, r2, r3) = (record(&lines[0]), record(&lines[1]), record(&lines[2]));
        let mut d = Dedupe::new(2);
        assert!(!d.is_duplicate(&r1));
        assert!(!d.is_duplicate(&r2));
        assert!(d.is_duplicate(&r1));
        assert!(!d.is_duplicate(&r3)); // forgets r1
        assert_eq!((d.seen.len(), d.order.len()), (2, 2));
        assert!(!d.is_duplicate(&r1)); // forgotten: counted again; forgets r2
        assert!(d.is_duplicate(&r3));
        assert!(!d.is_duplicate(&r2));
    }

    #[test]
    fn since_accepts_rfc3339_offsets_and_ages() {
        for since in [
            "2026-11-28T23:00:01Z",
            "2026-11-29T00:00:01+01:00",
            "2026-11-28T23:00:00.999999999-00:00",
        ] {
            let v = json_of(JSON_LINES, &["--since", since]);
            // rec 3, 4 and the vault-2 call; dropped and outage, not init.
            assert_eq!(totals(&v), (5, 3, 2, 1), "--since {since}");
            assert_eq!(v["events"]["init"], 0);
            assert_eq!(v["events"]["dropped"], 1);
            assert_eq!(v["dropped_records"], 5);
        }
        // NOW is 2026-11-29T00:00:00Z: 60m is 23:00:00, which leaves out 22:59:59 and init.
        let v = json_of(JSON_LINES, &["--since", "60m"]);
        assert_eq!(totals(&v), (6, 4, 2, 1));
        let v = json_of(JSON_LINES, &["--since=61m"]);
        assert_eq!(totals(&v), (8, 5, 2, 1));
        // 22:59:59: the out-of-order call, not init at 22:59:00.
        let v = json_of(JSON_LINES, &["--since", "3601s"]);
        assert_eq!(totals(&v), (7, 5, 2, 1));
        let v = json_of(JSON_LINES, &["--since", "1h"]);
        assert_eq!(totals(&v), (6, 4, 2, 1));
        let v = json_of(JSON_LINES, &["--since", "1d"]);
        assert_eq!(totals(&v), (8, 5, 2, 1));
        let v = json_of(JSON_LINES, &["--since", "0d"]);
        assert_eq!(totals(&v), (0, 0, 0, 0));
    }

    #[test]
    fn app_filter_applies_to_calls_and_events() {
        let v = json_of(JSON_LINES, &["--app", "vault-2"]);
        assert_eq!(totals(&v), (2, 1, 1, 1));
        assert_eq!(names(&v, "apps"), vec!["vault-2"]);
        assert_eq!(v["events"]["dropped"], 1);
        assert_eq!(v["events"]["outage"], 0);
        assert_eq!(v["dropped_records"], 5);
        let v = json_of(JSON_LINES, &["--app", "vault"]);
        assert_eq!(totals(&v), (0, 0, 0, 0));
    }

    #[test]
    fn key_filter_matches_label_id_and_handle() {
        let cases: [(&str, u64, &[&str]); 8] = [
            ("vault-key", 2, &["vault-1/vault-key"]),
            ("3132", 1, &["vault-1/vault-key"]),
            ("id:3132", 1, &["vault-1/vault-key"]),
            ("abcd", 1, &["vault-1/id:ABCD"]),
            ("id:AbCd", 1, &["vault-1/id:ABCD"]),
            ("handle:5", 1, &["vault-2/handle:5"]),
            ("handle:2", 2, &["vault-1/vault-key"]),
            ("vault", 0, &[]),
        ];
        for (key, calls, keys) in cases {
            let v = json_of(JSON_LINES, &["--key", key]);
            assert_eq!(v["calls"], calls, "--key {key}");
            assert_eq!(names(&v, "keys"), keys, "--key {key}");
            // Events stay visible whatever key is asked for.
            assert_eq!(v["events"]["init"], 1, "--key {key}");
            assert_eq!(v["dropped_records"], 5, "--key {key}");
        }
    }

    #[test]
    fn an_empty_label_or_id_does_not_name_a_key() {
        let line = |extra: &str| {
            format!(
                r#"{{"event":"call","time":"2026-11-28T23:00:00Z","host":"h","pid":1,"rec":1,"app":"a","fn":"C_Sign","rv":"CKR_OK"{extra}}}"#
            )
        };
        let v = json_of(&line(r#","key":9,"key_label":"","key_id":"99""#), &[]);
        assert_eq!(names(&v, "keys"), vec!["a/id:99"]);
        let v = json_of(&line(r#","key":9,"key_label":"","key_id":"""#), &[]);
        assert_eq!(names(&v, "keys"), vec!["a/handle:9"]);
        let v = json_of(&line(""), &[]);
        assert_eq!(names(&v, "keys"), Vec::<String>::new());
        assert_eq!(v["calls"], 1);
    }

    #[test]
    fn fn_filter_accepts_names_with_or_without_prefix() {
        for f in ["C_Encrypt", "Encrypt", "c_encrypt", "ENCRYPT"] {
            let v = json_of(JSON_LINES, &["--fn", f]);
            assert_eq!(totals(&v), (6, 3, 1, 1), "--fn {f}");
            assert_eq!(names(&v, "functions"), vec!["C_Encrypt"]);
        }
        let v = json_of(JSON_LINES, &["--fn", "Login"]);
        assert_eq!(v["calls"], 1);
        assert_eq!(names(&v, "keys"), Vec::<String>::new());
    }

    #[test]
    fn errors_filter_keeps_failures_and_refusals() {
        let v = json_of(JSON_LINES, &["--errors"]);
        assert_eq!(totals(&v), (5, 2, 2, 1));
        assert_eq!(names(&v, "functions"), vec!["C_Decrypt", "C_Encrypt"]);
        // A refusal counts even with CKR_OK (not what p11gate writes, but the rule is "or").
        let refused_ok = r#"{"event":"call","time":"2026-11-28T23:00:00Z","host":"h","pid":1,"rec":1,"app":"a","fn":"C_Sign","rv":"CKR_OK","refused":"r"}"#;
        let v = json_of(refused_ok, &["--errors"]);
        assert_eq!(totals(&v), (1, 1, 0, 1));
    }

    #[test]
    fn filters_combine_with_and() {
        let v = json_of(JSON_LINES, &["--app", "vault-1", "--errors"]);
        assert_eq!(totals(&v), (3, 1, 1, 0));
        assert_eq!(names(&v, "functions"), vec!["C_Decrypt"]);
        let v = json_of(JSON_LINES, &["--fn", "Encrypt", "--errors"]);
        assert_eq!(names(&v, "apps"), vec!["vault-2"]);
        let v = json_of(
            JSON_LINES,
            &["--app=vault-1", "--fn=Encrypt", "--key=vault-key"],
        );
        assert_eq!(v["calls"], 1);
        assert_eq!(v["apps"][0]["first"], "2026-11-28T23:00:01.000000Z");
        let v = json_of(
            JSON_LINES,
            &[
                "--since",
                "2026-11-28T23:00:02Z",
                "--key",
                "vault-key",
                "--errors",
            ],
        );
        assert_eq!(totals(&v), (3, 1, 1, 0));
    }

    #[test]
    fn malformed_p11gate_lines_are_counted_and_reported() {
        let cases = [
            (r#"{"event":"call","time":"2026-11-28T23:00:00Z""#, "not a JSON audit record"),
            (r#"{"event":"call","time":"2026-11-28T23:00:00Z","host":"h","pid":"1","rec":1,"app":"a","fn":"C_Sign","rv":"CKR_OK"}"#, "not a JSON audit record"),
            (r#"{"event":"call","time":"2026-11-28T23:00:00Z","host":"h","pid":1,"rec":1,"app":"a","fn":"C_Sign"}"#, "call without rv"),
            (r#"{"event":"call","time":"2026-11-28T23:00:00Z","host":"h","pid":1,"rec":1,"app":"a","rv":"CKR_OK"}"#, "call without fn"),
            (r#"{"event":"call","time":"2026-11-28T23:00:00Z","pid":1,"rec":1,"app":"a","fn":"C_Sign","rv":"CKR_OK"}"#, "no host"),
            (r#"{"event":"dropped","time":"2026-11-28T23:00:00Z","host":"h","pid":1,"rec":1,"app":"a"}"#, "dropped without count"),
            (r#"{"time":"2026-11-28T23:00:00Z","host":"h","pid":1,"rec":1,"app":"a"}"#, "no event"),
            (r#"{"event":"init","host":"h","pid":1,"rec":1,"app":"a"}"#, "no time"),
            ("p11gate: event=init time=2026-11-28T23:00:00Z host=h rec=1 app=a", "no pid"),
            ("p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 app=a", "no rec"),
            ("p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 rec=1", "no app"),
            ("p11gate: event=init time=2026-13-01T00:00:00Z host=h pid=1 rec=1 app=a", "time is not RFC 3339"),
            ("p11gate: event=init time=2026-11-28T23:00:00 host=h pid=1 rec=1 app=a", "time is not RFC 3339"),
            ("p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=x rec=1 app=a", "not a number"),
            ("p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=-1 rec=1 app=a", "not a number"),
            ("p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 rec=99999999999999999999 app=a", "number too large"),
            (r#"p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app="a"#, "unterminated quote"),
            (r#"p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app="a\q""#, "unknown escape"),
            (r#"p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app="a\xZ1""#, "bad \\x escape"),
            (r#"p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app="a\x4""#, "bad \\x escape"),
            (r#"p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app="a"b"#, "no space after a value"),
            (r#"p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app=a"b"#, "unquoted value with a quote or ="),
            ("p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app=a=b", "unquoted value with a quote or ="),
            ("p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app=a app=b", "a field twice"),
            ("p11gate: event=init time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app=a junk", "not key=value"),
        ];
        for (line, reason) in cases {
            let input = format!("{}\n{line}\n", JSON_LINES.lines().nth(2).unwrap());
            let (code, out, err) = run_on(&input, &["--json"]);
            assert_eq!(code, 0, "{line}");
            let v: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(v["malformed"], 1, "{line}");
            assert_eq!(v["records"], 1, "{line}");
            assert_eq!(
                err,
                format!(
                    "audit summary: 1 malformed p11gate line skipped (first: line 2: {reason})\n"
                ),
                "{line}"
            );
        }
    }

    #[test]
    fn malformed_count_is_in_text_totals_and_stderr_names_the_first() {
        let input = "{oops\nnot ours\np11gate: event=init\n{\"event\":\"file_start\"}\n";
        let (code, out, err) = run_on(input, &[]);
        assert_eq!(code, 0);
        assert!(
            out.contains("  records 0  calls 0  errors 0  refusals 0  duplicates 0  malformed 2\n")
        );
        assert_eq!(
            err,
            "audit summary: 2 malformed p11gate lines skipped (first: line 1: not a JSON audit record)\n"
        );
    }

    #[test]
    fn other_lines_and_file_headers_are_skipped_silently() {
        let input = "\n   \r\nNov 28 23:00:00 h sshd[1]: Accepted publickey for root\n\
                     Nov 28 23:00:00 h p11gate[1]: cannot load upstream /x.so: not found\n\
                     Nov 28 23:00:00 h app[1]: event=call time=x\n\
                     {\"seq\":0,\"event\":\"file_start\",\"time\":\"2026-11-28T23:00:00Z\",\"key_id\":\"00\"}\n\
                     <86>1 2026-11-28T23:00:00Z h p11gate 1 audit - event=file_start time=2026-11-28T23:00:00Z\n";
        let (code, out, err) = run_on(input, &["--json"]);
        assert_eq!((code, err.as_str()), (0, ""));
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(totals(&v), (0, 0, 0, 0));
        assert_eq!(v["malformed"], 0);
    }

    #[test]
    fn crlf_and_a_last_line_without_newline_are_read() {
        let input = JSON_LINES.replace('\n', "\r\n");
        let input = input.trim_end();
        let v = json_of(input, &[]);
        assert_eq!(totals(&v), (8, 5, 2, 1));
        assert_eq!(v["duplicates"], 1);
    }

    #[test]
    fn an_overlong_line_is_malformed_and_does_not_stop_reading() {
        let long = format!(
            "{{\"event\":\"call\",\"pad\":\"{}\"}}",
            "x".repeat(MAX_LINE + 10)
        );
        let long_other = "y".repeat(MAX_LINE * 2);
        let input = format!("{long}\n{long_other}\n{JSON_LINES}");
        let (code, out, err) = run_on(&input, &["--json"]);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(totals(&v), (8, 5, 2, 1));
        assert_eq!(v["malformed"], 1);
        assert_eq!(
            err,
            "audit summary: 1 malformed p11gate line skipped (first: line 1: line longer than 1 MiB)\n"
        );
    }

    #[test]
    fn read_line_keeps_at_most_max_bytes() {
        let mut input: &[u8] = b"abcdef\nxy\n\nlast";
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut input, &mut buf, 4).unwrap(), (7, true));
        assert_eq!(buf, b"abcd");
        assert_eq!(read_line(&mut input, &mut buf, 4).unwrap(), (3, false));
        assert_eq!(buf, b"xy");
        assert_eq!(read_line(&mut input, &mut buf, 4).unwrap(), (1, false));
        assert_eq!(buf, b"");
        assert_eq!(read_line(&mut input, &mut buf, 4).unwrap(), (4, false));
        assert_eq!(buf, b"last");
        assert_eq!(read_line(&mut input, &mut buf, 4).unwrap(), (0, false));
    }

    #[test]
    fn usage_errors_return_2_with_usage_on_stderr() {
        let cases: [(&[&str], &str); 13] = [
            (&["--bogus"], "unknown option --bogus"),
            (
                &["--key", "pkcs11:object=a b"],
                "--key: invalid PKCS#11 URI at character 16: in object: ' ' must be \
                 percent-encoded as %20",
            ),
            (
                &["--key", "pkcs11:objct=a"],
                "--key: path attribute objct is not one p11gate knows (did you mean object?)",
            ),
            (
                &["--key", "pkcs11:object=a;serial=1"],
                "--key: audit records name a key by token, object, type and id; they do not say \
                 its serial",
            ),
            (&["-x"], "unknown option -x"),
            (&["--app"], "--app needs a value"),
            (
                &["--since", "yesterday"],
                "--since \"yesterday\": not an RFC 3339 time",
            ),
            (&["--since", "5w"], "--since \"5w\": not an RFC 3339 time"),
            (
                &["--since", "99999999999999999d"],
                "--since \"99999999999999999d\"",
            ),
            (&["--json=yes"], "--json takes no value"),
            (&["--app", "a", "--app", "b"], "--app given twice"),
            (
                &["a.log", "b.log"],
                "one input only: \"b.log\" is a second one",
            ),
            (&["--fn", ""], "--fn needs a function name"),
        ];
        for (args, message) in cases {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let code = run_with(&strings(args), &mut out, &mut err, NOW, false);
            let err = String::from_utf8(err).unwrap();
            assert_eq!(code, 2, "{args:?}");
            assert!(out.is_empty(), "{args:?}");
            assert!(
                err.starts_with(&format!("audit summary: {message}")),
                "{args:?}: {err}"
            );
            assert!(err.ends_with(&format!("{USAGE}\n")), "{args:?}");
        }
    }

    #[test]
    fn help_prints_usage_on_stdout() {
        for arg in ["--help", "-h"] {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            assert_eq!(
                run_with(&strings(&[arg]), &mut out, &mut err, NOW, false),
                0
            );
            assert_eq!(String::from_utf8(out).unwrap(), format!("{USAGE}\n"));
            assert!(err.is_empty());
        }
    }

    #[test]
    fn double_dash_ends_options() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("--json");
        std::fs::write(&path, JSON_LINES).unwrap();
        let args = strings(&["--", path.to_str().unwrap()]);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run_with(&args, &mut out, &mut err, NOW, false), 0);
        assert!(String::from_utf8(out).unwrap().starts_with("apps\n"));
    }

    #[test]
    fn an_unreadable_input_returns_1_and_names_it() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = strings(&["/nonexistent/audit.jsonl"]);
        assert_eq!(run_with(&args, &mut out, &mut err, NOW, false), 1);
        assert!(out.is_empty());
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "audit summary: /nonexistent/audit.jsonl: No such file or directory (os error 2)\n"
        );
        // A directory opens but cannot be read: no partial summary either.
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().to_str().unwrap().to_string();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(
            run_with(std::slice::from_ref(&name), &mut out, &mut err, NOW, true),
            1
        );
        assert!(out.is_empty());
        assert_eq!(
            String::from_utf8(err).unwrap(),
            format!("audit summary: {name}: Is a directory (os error 21)\n")
        );
    }

    #[test]
    fn rfc3339_times_parse_to_microseconds() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-11-28T23:06:01.123456Z"),
            Some(1_795_907_161_123_456)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28t23:06:01.1z"),
            Some(1_795_907_161_100_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28 23:06:01Z"),
            Some(1_795_907_161_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28T23:06:01.1234567891Z"),
            Some(1_795_907_161_123_456)
        );
        assert_eq!(
            parse_rfc3339("2026-11-29T01:36:01+02:30"),
            Some(1_795_907_161_000_000)
        );
        assert_eq!(
            parse_rfc3339("2026-11-28T20:06:01-03:00"),
            Some(1_795_907_161_000_000)
        );
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.999999Z"), Some(-1));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000_000)
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z"),
            Some(951_782_400_000_000)
        );
        for bad in [
            "",
            "2026-11-28",
            "2026-11-28T23:06:01",
            "2026-11-28T23:06:01.Z",
            "2026-11-28T23:06:01ZZ",
            "2026-11-28T23:06:01+0100",
            "2026-11-28T23:06:01+24:00",
            "2026-11-28X23:06:01Z",
            "2025-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-00-10T00:00:00Z",
            "2026-11-00T00:00:00Z",
            "2026-11-28T24:00:00Z",
            "2026-11-28T23:60:00Z",
            "2026-11-28T23:00:61Z",
            "2026-1a-28T23:00:00Z",
            "+026-11-28T23:00:00Z",
            "2026-11-28T23:06:01.12é",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn times_format_back_to_rfc3339() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_time(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            format_time(1_795_907_161_123_456),
            "2026-11-28T23:06:01.123456Z"
        );
        assert_eq!(
            format_time(951_782_400_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        // Every day over four centuries round-trips.
        let start = parse_rfc3339("1900-01-01T00:00:00Z").unwrap();
        for day in 0..(400 * 366) {
            let us = start + day * 86_400_000_000 + 3_723_000_042;
            assert_eq!(parse_rfc3339(&format_time(us)), Some(us));
        }
    }

    #[test]
    fn progress_is_shown_at_most_every_interval_and_erased() {
        let mut sink = Vec::new();
        {
            let mut p = Progress::new(Some(&mut sink), 200);
            p.update(100, 10); // too early: within the first interval
            p.next = p.start;
            p.update(100, 10);
            p.update(150, 20); // too early again
            p.finish();
        }
        let text = String::from_utf8(sink).unwrap();
        assert!(
            text.starts_with("\raudit summary:  50%  10 records  "),
            "{text:?}"
        );
        assert!(text.ends_with(" records/s\x1b[K\r\x1b[K"), "{text:?}");
        assert_eq!(text.matches('%').count(), 1, "{text:?}");

        let mut quiet = Progress::new(None, 200);
        quiet.next = quiet.start;
        quiet.update(100, 10);
        quiet.finish();
        assert!(!quiet.shown);
    }

    #[test]
    fn progress_needs_a_terminal_a_sized_file_and_no_json() {
        assert!(shows_progress(true, false, Some(1)));
        assert!(!shows_progress(true, true, Some(1)), "--json");
        assert!(!shows_progress(false, false, Some(1)), "not a terminal");
        assert!(!shows_progress(true, false, None), "standard input");
        assert!(!shows_progress(true, false, Some(0)), "empty file");
    }

    #[test]
    fn nothing_is_written_to_stderr_when_there_is_nothing_to_report() {
        // progress allowed, but the file is read within the first interval
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, JSON_LINES).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = strings(&[path.to_str().unwrap()]);
        assert_eq!(run_with(&args, &mut out, &mut err, NOW, true), 0);
        assert!(err.is_empty());
    }

    /// Writes `n` call records in `format` ("json" or "syslog") with eight apps, four keys
    /// each, six functions and one error in sixteen.
    fn generate(path: &std::path::Path, n: u64, format: &str) {
        let mut w = io::BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
        let fns = [
            "C_Encrypt",
            "C_Decrypt",
            "C_Sign",
            "C_Verify",
            "C_Login",
            "C_FindObjectsInit",
        ];
        let start = parse_rfc3339("2026-11-28T00:00:00Z").unwrap();
        for i in 0..n {
            let time = format_time(start + (i as i64) * 1_000);
            let app = i % 8;
            let key = (i / 8) % 4;
            let f = fns[(i % 6) as usize];
            let rv = if i % 16 == 0 {
                "CKR_DATA_LEN_RANGE"
            } else {
                "CKR_OK"
            };
            if format == "json" {
                writeln!(
                    w,
                    r#"{{"seq":{i},"event":"call","time":"{time}","host":"vault1","pid":4242,"rec":{i},"app":"vault-{app}","fn":"{f}","rv":"{rv}","us":41,"slot":1,"upstream":"hsm","token":"vault","session":262145,"mech":"CKM_AES_GCM","key":{key},"key_label":"vault-key-{key}","key_id":"3132","key_class":"CKO_SECRET_KEY","in":32,"out":48,"parts":1,"chain":"9f3c5e2a9f3c5e2a9f3c5e2a9f3c5e2a9f3c5e2a9f3c5e2a9f3c5e2a9f3c5e2a"}}"#
                )
                .unwrap();
            } else {
                writeln!(
                    w,
                    r#"<86>1 {time} vault1 p11gate 4242 audit - event=call time={time} host=vault1 pid=4242 rec={i} app=vault-{app} fn={f} rv={rv} us=41 slot=1 upstream=hsm token=vault session=262145 mech=CKM_AES_GCM key={key} key_label="vault key {key}" key_id=3132 key_class=CKO_SECRET_KEY in=32 out=48 parts=1"#
                )
                .unwrap();
            }
        }
        w.flush().unwrap();
    }

    #[test]
    #[ignore = "performance: cargo test --release --lib audit::summary -- --ignored --nocapture"]
    fn one_million_records() {
        const N: u64 = 1_000_000;
        let dir = tempfile::tempdir().unwrap();
        for format in ["json", "syslog"] {
            let path = dir.path().join(format);
            let t0 = Instant::now();
            generate(&path, N, format);
            let generated = t0.elapsed();
            let size = std::fs::metadata(&path).unwrap().len();
            let mut out = Vec::new();
            let t1 = Instant::now();
            let code = run(&strings(&["--json", path.to_str().unwrap()]), &mut out);
            let elapsed = t1.elapsed();
            assert_eq!(code, 0);
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(totals(&v), (N, N, N / 16, 0));
            assert_eq!(v["apps"].as_array().unwrap().len(), 8);
            assert_eq!(v["keys"].as_array().unwrap().len(), 8 * 4);
            assert_eq!(v["functions"].as_array().unwrap().len(), 6);
            println!(
                "{format}: {N} records, {} MB, summarised in {:.2} s ({:.0} records/s; generated in {:.2} s)",
                size / 1_000_000,
                elapsed.as_secs_f64(),
                N as f64 / elapsed.as_secs_f64(),
                generated.as_secs_f64()
            );
        }
    }

    /// Records whose keys carry URIs: two tokens have a key labelled vault-key; an older record
    /// has only a label and an id.
    const WITH_URIS: &str = concat!(
        r#"{"event":"call","time":"2026-11-28T23:00:00Z","host":"h","pid":1,"rec":1,"app":"a","fn":"C_Encrypt","rv":"CKR_OK","token":"vault a","key":2,"key_label":"vault-key","key_class":"CKO_SECRET_KEY","key_uri":"pkcs11:token=vault%20a;object=vault-key;type=secret-key"}"#,
        "\n",
        r#"{"event":"call","time":"2026-11-28T23:00:01Z","host":"h","pid":1,"rec":2,"app":"a","fn":"C_Decrypt","rv":"CKR_OK","token":"vault a","key":2,"key_label":"vault-key","key_id":"0102","key_class":"CKO_SECRET_KEY","key_uri":"pkcs11:token=vault%20a;object=vault-key;type=secret-key;id=%01%02"}"#,
        "\n",
        r#"{"event":"call","time":"2026-11-28T23:00:02Z","host":"h","pid":1,"rec":3,"app":"a","fn":"C_Encrypt","rv":"CKR_OK","token":"vault-b","key":7,"key_label":"vault-key","key_uri":"pkcs11:token=vault-b;object=vault-key"}"#,
        "\n",
        r#"{"event":"call","time":"2026-11-28T23:00:03Z","host":"h","pid":1,"rec":4,"app":"a","fn":"C_GenerateKey","rv":"CKR_OK","object":9,"object_label":"other","object_id":"0102","object_uri":"pkcs11:token=vault-b;object=other;id=%01%02"}"#,
        "\n",
        r#"{"event":"call","time":"2026-11-28T23:00:04Z","host":"h","pid":1,"rec":5,"app":"a","fn":"C_Sign","rv":"CKR_OK","key":4,"key_label":"old","key_id":"0a"}"#,
        "\n",
    );

    #[test]
    fn key_rows_show_the_fullest_uri_and_a_uri_selects_keys() {
        let v = json_of(WITH_URIS, &[]);
        let uris: Vec<(String, Option<String>)> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["name"].as_str().unwrap().to_string(),
                    k.get("uri").map(|u| u.as_str().unwrap().to_string()),
                )
            })
            .collect();
        assert_eq!(
            uris,
            vec![
                (
                    t("a/vault-key"),
                    Some(t(
                        "pkcs11:token=vault%20a;object=vault-key;type=secret-key;id=%01%02"
                    ))
                ),
                (t("a/old"), None),
                (
                    t("a/other"),
                    Some(t("pkcs11:token=vault-b;object=other;id=%01%02"))
                ),
            ]
        );
        // The syslog form of the same records gives the same summary.
        let syslog: String = WITH_URIS
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                let mut kv = String::from("<86>1 - h p11gate 1 audit - ");
                // event= comes first, as p11gate writes it.
                let mut fields: Vec<(&String, &Value)> = v.as_object().unwrap().iter().collect();
                fields.sort_by_key(|(k, _)| *k != "event");
                for (i, (k, x)) in fields.into_iter().enumerate() {
                    let text = match x {
                        Value::String(s) if s.contains([' ', '=']) => format!("{s:?}"),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    kv.push_str(&format!("{}{k}={text}", if i > 0 { " " } else { "" }));
                }
                kv + "\n"
            })
            .collect();
        assert_eq!(json_of(&syslog, &[]), v);
        let (code, out, _) = run_on(WITH_URIS, &[]);
        assert_eq!(code, 0);
        let keys: Vec<&str> = out.lines().skip_while(|l| *l != "keys").take(5).collect();
        assert_eq!(
            keys,
            [
                "keys",
                "  app/key      calls  errors  refusals  first                        last                         uri",
                "  a/vault-key      3       0         0  2026-11-28T23:00:00.000000Z  2026-11-28T23:00:02.000000Z  pkcs11:token=vault%20a;object=vault-key;type=secret-key;id=%01%02",
                "  a/old            1       0         0  2026-11-28T23:00:04.000000Z  2026-11-28T23:00:04.000000Z  -",
                "  a/other          1       0         0  2026-11-28T23:00:03.000000Z  2026-11-28T23:00:03.000000Z  pkcs11:token=vault-b;object=other;id=%01%02",
            ]
        );
        // --key with a URI: every attribute it gives must match the record's key.
        let cases: [(&str, &[u64]); 9] = [
            ("pkcs11:object=vault-key", &[1, 2, 3]),
            ("pkcs11:token=vault%20a;object=vault-key", &[1, 2]),
            ("pkcs11:token=vault-b", &[3, 4]),
            ("pkcs11:id=%01%02", &[2, 4]),
            ("pkcs11:type=secret-key", &[1, 2]),
            // Without a key_uri, a record is known by its label and id only.
            ("pkcs11:object=old;id=%0A", &[5]),
            ("pkcs11:object=old;type=secret-key", &[]),
            ("pkcs11:object=vault-key;id=%01", &[]),
            ("pkcs11:", &[1, 2, 3, 4, 5]),
        ];
        for (uri, recs) in cases {
            let v = json_of(WITH_URIS, &["--key", uri]);
            assert_eq!(v["calls"], recs.len() as u64, "--key {uri}");
            let (_, out, _) = run_on(WITH_URIS, &["--key", uri]);
            assert!(
                out.contains(&format!("calls {}", recs.len())),
                "--key {uri}: {out}"
            );
        }
    }

    #[test]
    fn a_forged_uri_cannot_forge_output() {
        let line = r#"x p11gate: event=call time=2026-11-28T23:00:00Z host=h pid=1 rec=1 app=a fn=C_Sign rv=CKR_OK key_label=k key_uri="pkcs11:object=k\x0a  forged 9 9\x1b[2J""#;
        let (code, out, _) = run_on(line, &[]);
        assert_eq!(code, 0);
        assert!(
            out.contains("  pkcs11:object=k\\x0a  forged 9 9\\x1b[2J\n"),
            "{out}"
        );
        assert!(!out.contains('\x1b'), "{out:?}");
    }

    #[test]
    fn an_object_counts_as_the_key_when_a_record_names_no_key() {
        let lines = concat!(
            r#"{"event":"call","time":"2026-11-28T23:00:00Z","host":"h","pid":1,"rec":1,"app":"a","fn":"C_GenerateKey","rv":"CKR_OK","object":9,"object_label":"new-key","object_class":"CKO_SECRET_KEY"}"#,
            "\n",
            r#"{"event":"call","time":"2026-11-28T23:00:01Z","host":"h","pid":1,"rec":2,"app":"a","fn":"C_WrapKey","rv":"CKR_OK","key":3,"key_label":"kek","object":9,"object_label":"new-key"}"#,
            "\n",
        );
        let v = json_of(lines, &["--json"]);
        let keys: Vec<(String, u64)> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["name"].as_str().unwrap().to_string(),
                    k["calls"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![("a/kek".to_string(), 1), ("a/new-key".to_string(), 1)]
        );
    }
}
