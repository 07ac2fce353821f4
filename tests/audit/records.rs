//! Reading audit records the way a reviewer would: RFC 5424 lines from rsyslog's output with
//! their `key=value` message, and JSON lines with their HMAC chain, checked here independently
//! of `p11gate audit verify`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::common::rsyslog::SyslogLine;

/// One record: its fields in the order they came (values unescaped), and for syslog records
/// the datagram's priority and header.
#[derive(Debug, Clone)]
pub struct Record {
    pub fields: Vec<(String, String)>,
    /// `<PRI>` of the syslog header; `None` for a JSON line.
    pub pri: Option<u8>,
    pub header: Option<SyslogLine>,
    /// The line as it was read.
    pub raw: String,
}

impl Record {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The field `name`, which the record must have.
    #[track_caller]
    pub fn req(&self, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| panic!("record has no {name}: {}", self.raw))
    }

    /// The field `name` as an unsigned number.
    #[track_caller]
    pub fn num(&self, name: &str) -> u64 {
        let v = self.req(name);
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number in {}", self.raw))
    }

    pub fn event(&self) -> &str {
        self.req("event")
    }

    /// `fn` of a call record, else "".
    pub fn func(&self) -> &str {
        self.get("fn").unwrap_or("")
    }

    pub fn rec(&self) -> u64 {
        self.num("rec")
    }

    pub fn pid(&self) -> u64 {
        self.num("pid")
    }

    pub fn is_call(&self, func: &str) -> bool {
        self.event() == "call" && self.func() == func
    }

    /// `event` or `event/fn`, for readable sequence comparisons.
    pub fn tag(&self) -> String {
        if self.event() == "call" {
            self.func().to_string()
        } else {
            format!("event={}", self.event())
        }
    }
}

/// Splits an audit message into its `key=value` pairs. Values with spaces, quotes or `=` are
/// quoted, with `\"`, `\\` and `\xNN` escapes. Errors describe the first malformation.
pub fn parse_kv(msg: &str) -> Result<Vec<(String, String)>, String> {
    let b = msg.as_bytes();
    let mut i = 0;
    let mut out: Vec<(String, String)> = Vec::new();
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i] != b'=' {
            let c = b[i];
            if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
                return Err(format!(
                    "bad key character {:?} at {i} in {msg:?}",
                    c as char
                ));
            }
            i += 1;
        }
        if i == b.len() || i == start {
            return Err(format!("key without value at {start} in {msg:?}"));
        }
        let key = msg[start..i].to_string();
        i += 1; // '='
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            loop {
                if i >= b.len() {
                    return Err(format!("unterminated quoted value of {key} in {msg:?}"));
                }
                match b[i] {
                    b'"' => {
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        match b.get(i + 1) {
                            Some(b'"') => value.push(b'"'),
                            Some(b'\\') => value.push(b'\\'),
                            Some(b'x') => {
                                let hex = msg
                                    .get(i + 2..i + 4)
                                    .ok_or_else(|| format!("short \\x escape in {msg:?}"))?;
                                value.push(
                                    u8::from_str_radix(hex, 16).map_err(|_| {
                                        format!("bad \\x escape {hex:?} in {msg:?}")
                                    })?,
                                );
                                i += 2;
                            }
                            other => {
                                return Err(format!("bad escape {other:?} in {msg:?}"));
                            }
                        }
                        i += 2;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && b[i] != b' ' {
                if b[i] == b'"' || b[i] == b'=' {
                    return Err(format!(
                        "unquoted value of {key} holds a quote or '=': {msg:?}"
                    ));
                }
                value.push(b[i]);
                i += 1;
            }
        }
        if i < b.len() {
            if b[i] != b' ' {
                return Err(format!("no space after the value of {key} in {msg:?}"));
            }
            i += 1;
        }
        if out.iter().any(|(k, _)| *k == key) {
            return Err(format!("field {key} twice in {msg:?}"));
        }
        let value = String::from_utf8(value).map_err(|_| format!("{key} is not UTF-8"))?;
        out.push((key, value));
    }
    Ok(out)
}

/// Every p11gate audit record in rsyslog's output (app-name `p11gate`, msgid `audit`), in the
/// order written. Panics on a line that does not parse.
pub fn syslog_records(lines: &[String]) -> Vec<Record> {
    lines
        .iter()
        .filter_map(|l| {
            let h = SyslogLine::parse(l)?;
            (h.app_name == "p11gate" && h.msgid == "audit").then_some((l, h))
        })
        .map(|(l, h)| {
            let fields = parse_kv(&h.msg).unwrap_or_else(|e| panic!("{e}\nline: {l}"));
            Record {
                fields,
                pri: Some(h.pri),
                header: Some(h),
                raw: l.clone(),
            }
        })
        .collect()
}

/// The records of process `pid`.
pub fn of_pid(records: &[Record], pid: u32) -> Vec<Record> {
    records
        .iter()
        .filter(|r| r.get("pid") == Some(pid.to_string().as_str()))
        .cloned()
        .collect()
}

/// One JSON line as a record (numbers and strings both as text) and its parsed object.
pub fn json_record(line: &str) -> (Record, serde_json::Map<String, serde_json::Value>) {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let serde_json::Value::Object(map) = v else {
        panic!("not a JSON object: {line}")
    };
    let fields = map
        .iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => panic!("field {k} is neither string, number nor bool: {other} in {line}"),
            };
            (k.clone(), text)
        })
        .collect();
    (
        Record {
            fields,
            pri: None,
            header: None,
            raw: line.to_string(),
        },
        map,
    )
}

/// The audit file's lines as records.
pub fn file_records(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("audit file {}: {e}", path.display()));
    text.lines().map(|l| json_record(l).0).collect()
}

/// The audit key as p11gate reads a key file: hex if the file is hex, else its raw bytes.
pub fn read_key(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("key {}: {e}", path.display()));
    let text = String::from_utf8_lossy(&bytes);
    let t = text.trim();
    if t.len() >= 64 && t.len().is_multiple_of(2) && t.bytes().all(|c| c.is_ascii_hexdigit()) {
        hex_decode(t)
    } else {
        bytes
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC key");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The key's fingerprint as `event=file_start` carries it: the first 8 bytes of
/// HMAC-SHA256(key, "p11gate audit key id"), hex.
pub fn key_fingerprint(key: &[u8]) -> String {
    hex(&hmac(key, &[b"p11gate audit key id"])[..8])
}

/// Checks the README's chain over the file's text: each line is a JSON object that starts with
/// `{"seq":` and ends with `,"chain":"<64 hex>"}`, `seq` counts from 0, and `chain` is
/// HMAC-SHA256(key, previous chain (32 zero bytes for record 0) || the line's bytes before
/// `,"chain":"`). Panics naming the first line (1-based) that is wrong.
pub fn check_chain(text: &str, key: &[u8]) {
    let mut prev = [0u8; 32];
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        assert!(
            line.starts_with("{\"seq\":"),
            "line {n}: seq is not the first field: {line}"
        );
        let at = line
            .rfind(",\"chain\":\"")
            .unwrap_or_else(|| panic!("line {n}: no chain field: {line}"));
        let tail = &line[at + 10..];
        assert!(
            tail.len() == 66 && tail.ends_with("\"}"),
            "line {n}: chain is not the last field or not 64 hex digits: {line}"
        );
        let chain = &tail[..64];
        let want = hmac(key, &[&prev, &line.as_bytes()[..at]]);
        assert_eq!(chain, hex(&want), "line {n}: chain does not verify: {line}");
        let (rec, _) = json_record(line);
        assert_eq!(rec.num("seq"), i as u64, "line {n}: seq");
        prev = want;
    }
}

/// Counts by `tag()`.
pub fn tally(records: &[Record]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in records {
        *m.entry(r.tag()).or_insert(0) += 1;
    }
    m
}

/// Asserts `time` is RFC 3339 UTC with microseconds: `2026-11-28T23:06:01.123456Z`.
#[track_caller]
pub fn assert_time(r: &Record) {
    let t = r.req("time");
    let b = t.as_bytes();
    let digits = |range: std::ops::Range<usize>| range.clone().all(|i| b[i].is_ascii_digit());
    assert!(
        b.len() == 27
            && digits(0..4)
            && b[4] == b'-'
            && digits(5..7)
            && b[7] == b'-'
            && digits(8..10)
            && b[10] == b'T'
            && digits(11..13)
            && b[13] == b':'
            && digits(14..16)
            && b[16] == b':'
            && digits(17..19)
            && b[19] == b'.'
            && digits(20..26)
            && b[26] == b'Z',
        "time {t:?} is not RFC 3339 UTC with microseconds: {}",
        r.raw
    );
}

/// Parses `p11gate audit verify`'s first line `FILE:LINE: ...`: (LINE, the one problem word).
#[track_caller]
pub fn verify_problem(file: &Path, stdout: &str) -> (usize, &'static str) {
    let first = stdout.lines().next().unwrap_or("");
    let prefix = format!("{}:", file.display());
    let rest = first
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("verify's first line does not start with {prefix:?}: {stdout}"));
    let (line, text) = rest
        .split_once(": ")
        .unwrap_or_else(|| panic!("verify's first line is not FILE:LINE: ...: {stdout}"));
    let line: usize = line
        .parse()
        .unwrap_or_else(|_| panic!("LINE {line:?} is not a number: {stdout}"));
    let words: Vec<&'static str> = ["deleted", "inserted", "reordered", "edited"]
        .into_iter()
        .filter(|w| {
            text.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|t| t == *w)
        })
        .collect();
    assert_eq!(
        words.len(),
        1,
        "verify's first line names exactly one of deleted/inserted/reordered/edited: {stdout}"
    );
    (line, words[0])
}
