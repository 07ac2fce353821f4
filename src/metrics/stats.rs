//! `p11gate stats`: the metrics files of every process, summed per app, slot and function.
//!
//! Counts and histogram buckets of the same app, slot and function from different processes
//! (files) are added up; p50 and p99 are estimated from the summed buckets the way Prometheus'
//! `histogram_quantile` does (linear within the bucket), so they are as exact as a bucket is
//! narrow: a factor of two.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::text::{parse_line, Sample, CALLS, DURATION};
use crate::config::Config;

/// Usage text, printed by `--help` and, on stderr, after a usage error.
pub const USAGE: &str = "usage: p11gate stats [PATH...] [--json]

Reads p11gate's metrics files (Prometheus text, one per process: p11gate-APP-PID.prom) from
each PATH, a file or a directory (where only p11gate-*.prom files are read); without PATH, from
the metrics directory of the configuration ([metrics] dir, or $P11GATE_METRICS). Prints per
app, slot and function: calls, errors (result not CKR_OK), mean time, and p50 and p99
estimated from the histogram buckets, all processes added up; then the results other than
CKR_OK.

options:
  --json      one JSON object instead of tables: files, processes, and rows: [{app, slot,
              function, processes, calls, errors, results {NAME: calls}, sum_seconds,
              mean_seconds, p50_seconds, p99_seconds}] (times null without calls)
  -h, --help  print this text

Exit status: 0 success, 1 no p11gate metrics file (or the configuration is not usable),
2 usage error, 3 a file could not be read or the output written.";

/// Runs `p11gate stats` with the arguments after `stats`; writes to `out`, errors to stderr.
/// Returns the process exit code.
pub fn run(args: &[String], out: &mut dyn Write) -> u8 {
    let getenv = |k: &str| std::env::var(k).ok();
    run_with(args, out, &mut io::stderr().lock(), getenv)
}

/// [`run`] with stderr and the environment passed in.
pub fn run_with(
    args: &[String],
    out: &mut dyn Write,
    err: &mut dyn Write,
    getenv: impl Fn(&str) -> Option<String>,
) -> u8 {
    let mut json = false;
    let mut paths = Vec::new();
    for a in args {
        match a.as_str() {
            "--json" => json = true,
            "-h" | "--help" => {
                return match writeln!(out, "{USAGE}") {
                    Ok(()) => 0,
                    Err(_) => 1,
                }
            }
            _ if a.starts_with('-') => {
                let _ = writeln!(err, "p11gate stats: unknown option {a}\n{USAGE}");
                return 2;
            }
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if paths.is_empty() {
        match Config::discover(getenv) {
            Ok((config, _)) => match config.metrics.dir() {
                Some(d) => paths.push(d.to_path_buf()),
                None => {
                    let _ = writeln!(
                        err,
                        "p11gate stats: no PATH given and no metrics directory configured \
                         ([metrics] dir or P11GATE_METRICS)\n{USAGE}"
                    );
                    return 2;
                }
            },
            Err(e) => {
                let _ = writeln!(err, "p11gate stats: {e}");
                return 1;
            }
        }
    }
    let files = match files_of(&paths) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(err, "p11gate stats: {e}");
            return 3;
        }
    };
    if files.is_empty() {
        let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        let _ = writeln!(
            err,
            "p11gate stats: no p11gate metrics file in {}",
            list.join(", ")
        );
        return 1;
    }
    let mut totals = Aggregate::default();
    for f in &files {
        match std::fs::read_to_string(f) {
            Ok(text) => totals.add_file(&text),
            // A process may exit (and remove its file) between listing and reading.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                let _ = writeln!(err, "p11gate stats: {}: {e}", f.display());
                return 3;
            }
        }
        totals.files += 1;
    }
    let summary = totals.summary();
    let written = if json {
        serde_json::to_writer_pretty(&mut *out, &summary)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_text(&summary, out)
    };
    if let Err(e) = written.and_then(|()| out.flush()) {
        let _ = writeln!(err, "p11gate stats: writing output: {e}");
        return 3;
    }
    if totals.malformed > 0 {
        let _ = writeln!(
            err,
            "p11gate stats: {} malformed line(s) skipped",
            totals.malformed
        );
    }
    0
}

/// The files to read: each PATH that is a file, and the p11gate-*.prom files of each directory.
fn files_of(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !meta.is_dir() {
            files.push(p.clone());
            continue;
        }
        let entries = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|f| is_metrics_file(f))
            .collect();
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

fn is_metrics_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("p11gate-") && n.ends_with(".prom"))
}

/// One app, slot and function, over every process.
#[derive(Debug, Default)]
struct Row {
    pids: BTreeSet<String>,
    results: BTreeMap<String, u64>,
    /// `le` -> cumulative count, summed over processes.
    buckets: BTreeMap<String, u64>,
    sum_seconds: f64,
}

#[derive(Debug, Default)]
struct Aggregate {
    files: usize,
    malformed: usize,
    rows: BTreeMap<(String, String, String), Row>,
}

impl Aggregate {
    fn add_file(&mut self, text: &str) {
        for line in text.lines() {
            match parse_line(line) {
                Ok(Some(s)) => self.add(&s),
                Ok(None) => {}
                Err(_) => self.malformed += 1,
            }
        }
    }

    fn add(&mut self, s: &Sample) {
        let is_ours = s.name == CALLS || s.name.starts_with(DURATION);
        let (Some(app), Some(slot), Some(function), true) = (
            s.label("app"),
            s.label("slot"),
            s.label("function"),
            is_ours,
        ) else {
            return;
        };
        let row = self
            .rows
            .entry((app.into(), slot.into(), function.into()))
            .or_default();
        if let Some(pid) = s.label("pid") {
            row.pids.insert(pid.into());
        }
        let count = if s.value.is_finite() && s.value >= 0.0 {
            s.value as u64
        } else {
            0
        };
        match s.name.strip_prefix(DURATION) {
            None => {
                let result = s.label("result").unwrap_or("other");
                *row.results.entry(result.into()).or_default() += count;
            }
            Some("_bucket") => {
                if let Some(le) = s.label("le") {
                    *row.buckets.entry(le.into()).or_default() += count;
                }
            }
            Some("_sum") if s.value.is_finite() => row.sum_seconds += s.value,
            Some(_) => {}
        }
    }

    fn summary(&self) -> Summary {
        let mut rows: Vec<RowSummary> = self
            .rows
            .iter()
            .map(|((app, slot, function), r)| {
                let calls: u64 = r.results.values().sum();
                let errors = calls - r.results.get("CKR_OK").copied().unwrap_or(0);
                let buckets = sorted_buckets(&r.buckets);
                let observed = buckets.last().map_or(0, |b| b.1);
                RowSummary {
                    app: app.clone(),
                    slot: slot.clone(),
                    function: function.clone(),
                    processes: r.pids.len(),
                    calls,
                    errors,
                    results: r.results.clone(),
                    sum_seconds: r.sum_seconds,
                    mean_seconds: (observed > 0).then(|| r.sum_seconds / observed as f64),
                    p50_seconds: quantile(0.5, &buckets),
                    p99_seconds: quantile(0.99, &buckets),
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            (&a.app, slot_order(&a.slot), b.calls, &a.function).cmp(&(
                &b.app,
                slot_order(&b.slot),
                a.calls,
                &b.function,
            ))
        });
        let processes: BTreeSet<&String> = self.rows.values().flat_map(|r| &r.pids).collect();
        Summary {
            files: self.files,
            processes: processes.len(),
            rows,
        }
    }
}

/// Slots by number, then `none`, then `other`.
fn slot_order(slot: &str) -> (u8, u64, &str) {
    match slot.parse::<u64>() {
        Ok(n) => (0, n, ""),
        Err(_) if slot == "none" => (1, 0, ""),
        Err(_) => (2, 0, slot),
    }
}

/// Buckets as (upper bound, cumulative count), by upper bound (+Inf last).
fn sorted_buckets(buckets: &BTreeMap<String, u64>) -> Vec<(f64, u64)> {
    let mut v: Vec<(f64, u64)> = buckets
        .iter()
        .filter_map(|(le, n)| {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *n))
        })
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The `q` quantile from cumulative buckets, as Prometheus' `histogram_quantile` estimates it:
/// linear within the bucket it falls in; the largest finite bound when it falls in +Inf.
pub fn quantile(q: f64, buckets: &[(f64, u64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(le, cumulative) in buckets {
        if cumulative as f64 >= rank && cumulative > below {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = (rank - below as f64) / (cumulative - below) as f64;
            return Some(lower + (le - lower) * within.clamp(0.0, 1.0));
        }
        if le.is_finite() {
            lower = le;
        }
        below = cumulative;
    }
    Some(lower)
}

#[derive(Debug, Serialize)]
struct Summary {
    files: usize,
    processes: usize,
    rows: Vec<RowSummary>,
}

#[derive(Debug, Serialize)]
struct RowSummary {
    app: String,
    slot: String,
    function: String,
    processes: usize,
    calls: u64,
    errors: u64,
    results: BTreeMap<String, u64>,
    sum_seconds: f64,
    mean_seconds: Option<f64>,
    p50_seconds: Option<f64>,
    p99_seconds: Option<f64>,
}

/// A duration for people: ns, us, ms or s.
fn human(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 1e-6 => format!("{:.0}ns", s * 1e9),
        Some(s) if s < 1e-3 => format!("{:.1}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.2}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

fn write_text(s: &Summary, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "{} file{}, {} process{}",
        s.files,
        if s.files == 1 { "" } else { "s" },
        s.processes,
        if s.processes == 1 { "" } else { "es" }
    )?;
    let header = [
        "APP", "SLOT", "FUNCTION", "CALLS", "ERRORS", "MEAN", "P50", "P99",
    ];
    let table: Vec<[String; 8]> = s
        .rows
        .iter()
        .map(|r| {
            [
                r.app.clone(),
                r.slot.clone(),
                r.function.clone(),
                r.calls.to_string(),
                r.errors.to_string(),
                human(r.mean_seconds),
                human(r.p50_seconds),
                human(r.p99_seconds),
            ]
        })
        .collect();
    write_table(out, &header, &table, 3)?;
    let errors: Vec<[String; 5]> = s
        .rows
        .iter()
        .flat_map(|r| {
            r.results
                .iter()
                .filter(|(name, n)| *name != "CKR_OK" && **n > 0)
                .map(|(name, n)| {
                    [
                        r.app.clone(),
                        r.slot.clone(),
                        r.function.clone(),
                        name.clone(),
                        n.to_string(),
                    ]
                })
        })
        .collect();
    if !errors.is_empty() {
        writeln!(out, "\nresults other than CKR_OK:")?;
        write_table(
            out,
            &["APP", "SLOT", "FUNCTION", "RESULT", "CALLS"],
            &errors,
            4,
        )?;
    }
    Ok(())
}

/// Columns padded to their widest cell; columns from `numeric` on are right-aligned.
fn write_table<const N: usize>(
    out: &mut dyn Write,
    header: &[&str; N],
    rows: &[[String; N]],
    numeric: usize,
) -> io::Result<()> {
    let mut widths = header.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; N]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            if i >= numeric {
                s.push_str(&format!("{c:>w$}"));
            } else {
                s.push_str(&format!("{c:<w$}"));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(*header))?;
    for r in rows {
        writeln!(out, "{}", line(r.each_ref().map(String::as_str)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let b = [(1.0, 0), (2.0, 10), (4.0, 20), (f64::INFINITY, 20)];
        assert_eq!(quantile(0.5, &b), Some(2.0));
        assert_eq!(quantile(0.25, &b), Some(1.5));
        assert_eq!(quantile(0.75, &b), Some(3.0));
        assert_eq!(quantile(0.5, &[(1.0, 0), (f64::INFINITY, 0)]), None);
        // In +Inf: the largest finite bound.
        assert_eq!(quantile(0.99, &[(1.0, 1), (f64::INFINITY, 10)]), Some(1.0));
        assert_eq!(quantile(0.5, &[(1.0, 4), (f64::INFINITY, 4)]), Some(0.5));
    }

    #[test]
    fn human_units() {
        assert_eq!(human(None), "-");
        assert_eq!(human(Some(5e-7)), "500ns");
        assert_eq!(human(Some(1.5e-5)), "15.0us");
        assert_eq!(human(Some(0.0025)), "2.50ms");
        assert_eq!(human(Some(3.0)), "3.00s");
    }
}
