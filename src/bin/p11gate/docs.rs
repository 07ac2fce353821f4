//! `p11gate completions SHELL` and `p11gate man`: both generated from the clap definitions, so
//! that they say what `--help` says. The committed doc/p11gate.1 is `p11gate man`'s output; a
//! test compares them.

use std::io::Write;

use clap::{Arg, Args, CommandFactory};
use clap_complete::Shell;
use roff::{bold, italic, roman, Roff};

use crate::exit::{self, Exit};
use crate::Cli;

pub const COMPLETIONS_ABOUT: &str = "\
Print a completion script for SHELL on standard output: commands, options and file arguments
complete with Tab. Install it where the shell looks for completions, or source it.";

pub const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  p11gate completions bash > /etc/bash_completion.d/p11gate
  p11gate completions zsh > /usr/local/share/zsh/site-functions/_p11gate
  p11gate completions fish > ~/.config/fish/completions/p11gate.fish
  source <(p11gate completions bash)";

pub const MAN_ABOUT: &str = "\
Print the p11gate(1) man page, in roff, on standard output: every command with its options,
examples, the exit statuses and the environment. doc/p11gate.1 in the source is this output.";

pub const MAN_EXAMPLES: &str = "\
Examples:
  p11gate man > /usr/local/share/man/man1/p11gate.1
  p11gate man | man -l -";

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_name = "SHELL")]
    pub shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {}

pub fn completions(args: &CompletionsArgs, out: &mut dyn Write) -> Exit {
    let mut command = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(args.shell, &mut command, "p11gate", &mut buf);
    match out.write_all(&buf).and_then(|()| out.flush()) {
        Ok(()) => Exit::Ok,
        Err(e) => crate::output_failed("completions", e),
    }
}

pub fn man(_args: &ManArgs, out: &mut dyn Write) -> Exit {
    match out.write_all(page().as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Exit::Ok,
        Err(e) => crate::output_failed("man", e),
    }
}

/// The man page: one page for the whole command, each subcommand a subsection of COMMANDS.
/// It carries no date, so that it changes only when the commands do.
fn page() -> String {
    let mut top = Cli::command();
    top.build();
    let version = top.get_version().unwrap_or_default().to_string();
    let mut r = Roff::new();
    r.control(
        "TH",
        [
            "P11GATE",
            "1",
            "",
            &format!("p11gate {version}"),
            "p11gate manual",
        ],
    );
    r.control("SH", ["NAME"]);
    r.text([roman(format!("p11gate - {}", about(&top)))]);
    r.control("SH", ["SYNOPSIS"]);
    let leaves = leaves(&top);
    for (i, cmd) in leaves.iter().enumerate() {
        if i > 0 {
            r.control("br", []);
        }
        synopsis(&mut r, cmd);
    }
    r.control("SH", ["DESCRIPTION"]);
    paragraphs(&mut r, &long_about(&top));
    r.control("PP", []);
    paragraphs(&mut r, crate::OUTPUT);
    r.control("SH", ["COMMANDS"]);
    for cmd in &leaves {
        r.control("SS", [name(cmd).as_str()]);
        synopsis(&mut r, cmd);
        r.control("PP", []);
        paragraphs(&mut r, &long_about(cmd));
        options(&mut r, cmd);
        if let Some(after) = cmd.get_after_help() {
            r.control("PP", []);
            paragraphs(&mut r, &after.to_string());
        }
    }
    r.control("SH", ["EXAMPLES"]);
    paragraphs(&mut r, without_heading(crate::EXAMPLES));
    r.control("SH", ["EXIT STATUS"]);
    paragraphs(&mut r, without_heading(exit::HELP));
    r.control("SH", ["ENVIRONMENT"]);
    paragraphs(&mut r, without_heading(crate::ENVIRONMENT));
    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([italic("/etc/p11gate/p11gate.toml")]);
    r.text([roman(
        "The configuration, unless P11GATE_CONFIG names another. \
         doc/config-reference.md in the source describes every key.",
    )]);
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("pkcs11-tool"),
        roman("(1), "),
        bold("softhsm2-util"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1)"),
    ]);
    r.render()
}

/// The commands that do something (not groups, not `help`), in definition order.
fn leaves(cmd: &clap::Command) -> Vec<&clap::Command> {
    let mut found = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        if sub.has_subcommands() {
            found.extend(leaves(sub));
        } else {
            found.push(sub);
        }
    }
    found
}

/// `p11gate audit verify`.
fn name(cmd: &clap::Command) -> String {
    cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string()
}

fn about(cmd: &clap::Command) -> String {
    cmd.get_about().map(|a| a.to_string()).unwrap_or_default()
}

fn long_about(cmd: &clap::Command) -> String {
    cmd.get_long_about()
        .or(cmd.get_about())
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// A help section's text without its first line (`Examples:`), which the page has as a heading.
fn without_heading(text: &str) -> &str {
    text.split_once('\n').map_or("", |(_, rest)| rest)
}

/// The usage line clap prints, with the command's name in bold.
fn synopsis(r: &mut Roff, cmd: &clap::Command) {
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim_start_matches("Usage:").trim();
    let name = name(cmd);
    match usage.strip_prefix(name.as_str()) {
        Some(rest) => r.text([bold(name.clone()), roman(rest.to_string())]),
        None => r.text([roman(usage.to_string())]),
    };
}

/// Help text as roff: lines of prose are filled; indented lines (lists, examples) are kept
/// as they are; an empty line starts a new paragraph; `Examples:` is bold.
fn paragraphs(r: &mut Roff, text: &str) {
    let mut literal = false;
    for line in text.lines() {
        let indented = line.starts_with(' ');
        if indented != literal {
            r.control(if indented { "nf" } else { "fi" }, []);
            literal = indented;
        }
        if line.trim().is_empty() {
            r.control("PP", []);
        } else if line == "Examples:" {
            r.text([bold(line.to_string())]);
        } else {
            r.text([roman(line.to_string())]);
        }
    }
    if literal {
        r.control("fi", []);
    }
}

/// One `.TP` entry per argument: `--key KEYFILE` or `FILE`, then its help.
fn options(r: &mut Roff, cmd: &clap::Command) {
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "version")
        .collect();
    if args.is_empty() {
        return;
    }
    r.control("PP", []);
    r.text([bold("Arguments and options:")]);
    for arg in args {
        let value = arg
            .get_value_names()
            .map(|v| v.join(" "))
            .unwrap_or_else(|| arg.get_id().to_string());
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        let mut header = Vec::new();
        if let Some(long) = arg.get_long() {
            header.push(bold(format!("--{long}")));
            if takes_value {
                header.push(roman(" "));
                header.push(italic(value));
            }
        } else {
            header.push(italic(value));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() && arg.get_long().is_some() && takes_value {
            header.push(roman(format!(" (default: {})", defaults.join(", "))));
        }
        let mut help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .filter(|v| !v.is_hide_set())
            .map(|v| v.get_name().to_string())
            .collect();
        if !values.is_empty() {
            help.push_str(&format!(" (one of: {})", values.join(", ")));
        }
        r.control("TP", []);
        r.text(header);
        r.text([roman(help)]);
    }
}
