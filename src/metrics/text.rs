//! The Prometheus text exposition format (version 0.0.4), written by the writer thread and
//! read back by `p11gate stats`.
//!
//! ```text
//! # HELP p11gate_calls_total ...
//! # TYPE p11gate_calls_total counter
//! p11gate_calls_total{app="vault-a",pid="4242",slot="3",function="C_Encrypt",result="CKR_OK"} 7
//! # HELP p11gate_call_duration_seconds ...
//! # TYPE p11gate_call_duration_seconds histogram
//! p11gate_call_duration_seconds_bucket{app="vault-a",pid="4242",slot="3",function="C_Encrypt",le="0.000001"} 0
//! ...
//! p11gate_call_duration_seconds_bucket{...,le="+Inf"} 9
//! p11gate_call_duration_seconds_sum{...} 0.000131072
//! p11gate_call_duration_seconds_count{...} 9
//! ```
//!
//! `slot` is the virtual slot id the call named (directly or through its session), `none` for
//! calls that name no slot (`C_GetSlotList`, a session handle that was not valid), `other` for
//! the pairs beyond what one process tells apart. Only non-zero result counts are written; the
//! histogram has every bucket.

use std::fmt::Write as _;

use super::counters::{bucket_le_us, Totals, BUCKETS, NAMED_RESULTS, OTHER_RESULT, RESULTS};
use crate::names::rv_name;

pub const CALLS: &str = "p11gate_calls_total";
pub const DURATION: &str = "p11gate_call_duration_seconds";

/// A label value, escaped as the format requires (backslash, double quote, newline).
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The `slot` label of a series.
pub fn slot_label(t: &Totals) -> String {
    match t.key {
        None => "other".into(),
        Some(k) => k.slot.map_or_else(|| "none".into(), |s| s.to_string()),
    }
}

/// The name a result slot is labelled with.
pub fn result_label(index: usize) -> &'static str {
    if index == OTHER_RESULT {
        "other"
    } else {
        rv_name(NAMED_RESULTS[index])
    }
}

/// `micros` microseconds as decimal seconds, without a float's rounding.
fn seconds_from_us(micros: u64) -> String {
    trim_decimal(format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000))
}

fn seconds_from_ns(nanos: u64) -> String {
    trim_decimal(format!(
        "{}.{:09}",
        nanos / 1_000_000_000,
        nanos % 1_000_000_000
    ))
}

fn trim_decimal(s: String) -> String {
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The whole file for one process.
pub fn render(app: &str, pid: u32, series: &[Totals]) -> String {
    let mut sorted: Vec<&Totals> = series.iter().filter(|t| t.calls() > 0).collect();
    sorted.sort_by_key(|t| {
        (
            t.key.is_none(),
            t.key.map(|k| (k.slot.is_none(), k.slot, k.function)),
        )
    });
    let app = escape(app);
    let labels = |t: &Totals| {
        let function = t.key.map_or("other", |k| k.function);
        format!(
            "app=\"{app}\",pid=\"{pid}\",slot=\"{}\",function=\"{}\"",
            slot_label(t),
            escape(function)
        )
    };
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP {CALLS} PKCS#11 calls p11gate answered, by app, process, slot, function and result."
    );
    let _ = writeln!(out, "# TYPE {CALLS} counter");
    for t in &sorted {
        let l = labels(t);
        for (i, n) in t.results.iter().enumerate().take(RESULTS) {
            if *n > 0 {
                let _ = writeln!(out, "{CALLS}{{{l},result=\"{}\"}} {n}", result_label(i));
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP {DURATION} Time p11gate took to answer a call, the backend's time included."
    );
    let _ = writeln!(out, "# TYPE {DURATION} histogram");
    for t in &sorted {
        let l = labels(t);
        let mut cumulative = 0;
        for (i, n) in t.buckets.iter().enumerate() {
            cumulative += n;
            let le = if i == BUCKETS - 1 {
                "+Inf".to_string()
            } else {
                seconds_from_us(bucket_le_us(i))
            };
            let _ = writeln!(out, "{DURATION}_bucket{{{l},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{DURATION}_sum{{{l}}} {}", seconds_from_ns(t.sum_ns));
        let _ = writeln!(out, "{DURATION}_count{{{l}}} {cumulative}");
    }
    out
}

/// One sample line: metric name, labels in order, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one line of the format: `None` for comments and blank lines.
pub fn parse_line(line: &str) -> Result<Option<Sample>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("a sample without a value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("a sample without a name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=').ok_or("a label without a value")?;
            let key = rest[..eq].trim().to_string();
            let r = rest[eq + 1..]
                .trim_start()
                .strip_prefix('"')
                .ok_or("a label value without quotes")?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("an unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("an unterminated label value".into()),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = &r[end + 1..];
        }
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("a sample without a value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("{v:?} is not a number"))?,
    };
    Ok(Some(Sample {
        name: name.to_string(),
        labels,
        value,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::counters::SeriesKey;
    use super::*;
    use pkcs11_sys::*;

    fn totals(function: &'static str, slot: Option<u64>) -> Totals {
        Totals {
            key: Some(SeriesKey { function, slot }),
            results: [0; RESULTS],
            buckets: [0; BUCKETS],
            sum_ns: 0,
        }
    }

    #[test]
    fn renders_counters_and_cumulative_buckets_with_escaped_labels() {
        let mut t = totals("C_Encrypt", Some(3));
        t.results[0] = 7;
        t.results[super::super::counters::result_index(CKR_KEY_HANDLE_INVALID)] = 2;
        t.buckets[0] = 4;
        t.buckets[3] = 5;
        t.sum_ns = 1_234_567_890;
        let text = render("a\"b\\c\nd", 42, &[t, totals("C_Sign", None)]);
        let l = r#"app="a\"b\\c\nd",pid="42",slot="3",function="C_Encrypt""#;
        assert!(text.contains(&format!("p11gate_calls_total{{{l},result=\"CKR_OK\"}} 7\n")));
        assert!(text.contains(&format!(
            "p11gate_calls_total{{{l},result=\"CKR_KEY_HANDLE_INVALID\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "p11gate_call_duration_seconds_bucket{{{l},le=\"0.000001\"}} 4\n"
        )));
        assert!(text.contains(&format!(
            "p11gate_call_duration_seconds_bucket{{{l},le=\"0.000004\"}} 4\n"
        )));
        assert!(text.contains(&format!(
            "p11gate_call_duration_seconds_bucket{{{l},le=\"0.000008\"}} 9\n"
        )));
        assert!(text.contains(&format!(
            "p11gate_call_duration_seconds_bucket{{{l},le=\"16.777216\"}} 9\n"
        )));
        assert!(text.contains(&format!(
            "p11gate_call_duration_seconds_bucket{{{l},le=\"+Inf\"}} 9\n"
        )));
        assert!(text.contains(&format!(
            "p11gate_call_duration_seconds_sum{{{l}}} 1.23456789\n"
        )));
        assert!(text.contains(&format!("p11gate_call_duration_seconds_count{{{l}}} 9\n")));
        // A series without calls is not written.
        assert!(!text.contains("C_Sign"));
        // Everything written parses back, labels unescaped.
        let samples: Vec<Sample> = text
            .lines()
            .filter_map(|l| parse_line(l).unwrap())
            .collect();
        assert_eq!(samples.len(), 2 + BUCKETS + 2);
        assert_eq!(samples[0].label("app"), Some("a\"b\\c\nd"));
        assert_eq!(samples[0].value, 7.0);
    }

    #[test]
    fn parse_errors() {
        assert_eq!(parse_line("# HELP x y"), Ok(None));
        assert!(parse_line("x{a=\"b} 1").is_err());
        assert!(parse_line("x{a=b} 1").is_err());
        assert!(parse_line("x{a=\"b\"}").is_err());
        assert!(parse_line("x 1e").is_err());
        assert_eq!(
            parse_line("x{le=\"+Inf\"} +Inf 123")
                .unwrap()
                .unwrap()
                .value,
            f64::INFINITY
        );
    }
}
