//! `p11gate`: the command-line companion of libp11gate.so.
//!
//! One file per command group, each holding its clap definitions, help texts and the work:
//! `config.rs` (config check), `pin.rs` (hash-pin), `audit.rs` (keygen, verify, summary),
//! `token.rs` (token init), `docs.rs` (completions, man page). `exit.rs` holds the exit statuses
//! every command shares, `progress.rs` the progress line. The man page (doc/p11gate.1) and the
//! shell completions are generated from these same definitions, so they cannot drift from
//! `--help`.

mod audit;
mod config;
mod docs;
mod doctor;
mod exit;
mod pin;
mod progress;
mod stats;
mod token;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

use exit::Exit;

const ABOUT: &str = "The command-line companion of libp11gate.so, the PKCS#11 gateway module";

const LONG_ABOUT: &str = "\
The command-line companion of libp11gate.so, the PKCS#11 gateway module that applications such
as HashiCorp Vault load instead of their HSM vendor's library. It checks configurations, makes
PIN hashes for PIN mapping, makes audit keys, verifies and reviews audit trails, and initialises
the built-in soft token. `p11gate COMMAND --help` describes each command.";

pub const EXAMPLES: &str = "\
Examples:
  p11gate config check /etc/p11gate/p11gate.toml
  p11gate audit verify --key /etc/p11gate/audit.key /var/log/p11gate/audit.jsonl
  p11gate audit summary --since 1d /var/log/p11gate/audit.jsonl
  p11gate completions bash > /etc/bash_completion.d/p11gate
  p11gate man > /usr/local/share/man/man1/p11gate.1";

pub const OUTPUT: &str = "\
Output: results go to standard output; messages, prompts and progress to standard error.
--json (config check, audit verify, audit summary, token init, doctor, stats) prints one JSON object
and a newline on standard output whenever the command ran (exit 0 or 1); after a usage or
input/output error (exit 2 or 3) standard output is empty. Field names are stable: fields may
be added, none renamed or removed.";

pub const ENVIRONMENT: &str = "\
Environment:
  P11GATE_CONFIG     the configuration file (default /etc/p11gate/p11gate.toml): config check
                     without FILE, audit verify's key_file, token init
  P11GATE_AUDIT_KEY  audit verify's key file when --key is not given
  P11GATE_HOME       token init: where the soft tokens live
  P11GATE_NUM_SLOTS  token init: how many soft token slots there are
  The other P11GATE_* variables of the module apply to token init as they do to
  C_Initialize (doc/config-reference.md lists them).";

/// `after_help` of the top command: the sections above and the exit statuses.
fn top_after_help() -> String {
    format!("{EXAMPLES}\n\n{OUTPUT}\n\n{}\n\n{ENVIRONMENT}", exit::HELP)
}

/// The whole command line.
#[derive(Debug, Parser)]
#[command(
    name = "p11gate",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = top_after_help(),
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(
        subcommand,
        about = "Check a configuration file",
        after_help = "Examples:\n  p11gate config check\n  p11gate config check --json /etc/p11gate/p11gate.toml"
    )]
    Config(config::ConfigCommand),
    #[command(
        about = "Hash a PIN for pin_hash (PIN mapping)",
        long_about = pin::HASH_PIN_ABOUT,
        after_help = pin::HASH_PIN_EXAMPLES
    )]
    HashPin(pin::HashPinArgs),
    #[command(
        subcommand,
        about = "Audit trail: make a key, verify a file's chain, summarise records",
        after_help = "Examples:\n  p11gate audit keygen /etc/p11gate/audit.key\n  p11gate audit verify /var/log/p11gate/audit.jsonl\n  p11gate audit summary --errors /var/log/syslog"
    )]
    Audit(audit::AuditCommand),
    #[command(
        subcommand,
        about = "The built-in soft token: initialise a token",
        after_help = "Examples:\n  p11gate token init --label vault\n  p11gate token init --dir /var/lib/p11gate/lab --label lab"
    )]
    Token(token::TokenCommand),
    #[command(
        about = "Check that a Vault seal \"pkcs11\" stanza works through p11gate",
        long_about = doctor::ABOUT,
        after_help = doctor::EXAMPLES
    )]
    Doctor(doctor::DoctorArgs),
    #[command(
        about = "Show call counts and latencies from the metrics files",
        long_about = stats::ABOUT,
        after_help = stats::EXAMPLES
    )]
    Stats(stats::StatsArgs),
    #[command(
        about = "Print a shell completion script",
        long_about = docs::COMPLETIONS_ABOUT,
        after_help = docs::COMPLETIONS_EXAMPLES
    )]
    Completions(docs::CompletionsArgs),
    #[command(
        about = "Print the man page (roff)",
        long_about = docs::MAN_ABOUT,
        after_help = docs::MAN_EXAMPLES
    )]
    Man(docs::ManArgs),
}

fn main() -> ExitCode {
    // clap prints help and version to stdout (exit 0) and usage errors to stderr (exit 2).
    let cli = Cli::parse();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let exit = match &cli.command {
        Command::Config(c) => config::run(c, &mut out),
        Command::HashPin(a) => pin::hash_pin(a, &mut out),
        Command::Audit(c) => audit::run(c, &mut out),
        Command::Token(c) => token::run(c, &mut out),
        Command::Doctor(a) => doctor::run(a, &mut out),
        Command::Stats(a) => stats::run(a, &mut out),
        Command::Completions(a) => docs::completions(a, &mut out),
        Command::Man(a) => docs::man(a, &mut out),
    };
    ExitCode::from(exit)
}

/// Writes `value` as one line of JSON.
pub fn write_json(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)?;
    out.flush()
}

/// Standard output could not be written (closed pipe, full disk): say so and exit 3.
pub fn output_failed(command: &str, e: io::Error) -> Exit {
    // A reader that went away (`p11gate man | head`) needs no message.
    if e.kind() != io::ErrorKind::BrokenPipe {
        eprintln!("{command}: writing output: {e}");
    }
    Exit::Io
}
