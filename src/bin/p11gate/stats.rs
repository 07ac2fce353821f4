//! `p11gate stats`: the metrics files of every process, added up per app, slot and function.
//! The work lives in the library (`p11gate::metrics::stats`); this file is its command line.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::exit::Exit;

pub const ABOUT: &str = "\
Show the call counts and latencies p11gate's processes wrote for Prometheus ([metrics] dir, or
P11GATE_METRICS): per app, slot and function over every process's p11gate-*.prom file, the
calls, errors, mean, p50 and p99 (estimated from the histogram buckets, as Prometheus's
histogram_quantile does), and the results other than CKR_OK. PATH is a metrics file or a
directory of them; without one, the configuration's metrics directory.

--json prints one JSON object with the same rows: files, processes, and rows: [{app, slot,
function, processes, calls, errors, results {NAME: calls}, sum_seconds, mean_seconds,
p50_seconds, p99_seconds}] (times null without calls).

Exit status: 0 success, 1 no p11gate metrics file there (or the configuration is not usable),
2 usage error (also: no PATH and no metrics directory configured), 3 a file could not be read
or the output written.";

pub const EXAMPLES: &str = "\
Examples:
  p11gate stats
  p11gate stats /var/lib/prometheus/node-exporter
  p11gate stats --json /var/lib/prometheus/node-exporter/p11gate-vault-1-4242.prom";

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Metrics files, or directories of them (default: the configured metrics directory)
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Print one JSON object instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &StatsArgs, out: &mut dyn Write) -> Exit {
    let mut args: Vec<String> = Vec::new();
    if a.json {
        args.push("--json".to_string());
    }
    // Paths as clap parsed them; none starts with '-' unless given after `--`, which the
    // library's own parser would read as an option, so such a path is made explicit.
    args.extend(a.paths.iter().map(|p| {
        let text = p.display().to_string();
        if text.starts_with('-') {
            format!("./{text}")
        } else {
            text
        }
    }));
    match p11gate::metrics::stats::run(&args, out) {
        0 => Exit::Ok,
        1 => Exit::Failed,
        2 => Exit::Usage,
        _ => Exit::Io,
    }
}
