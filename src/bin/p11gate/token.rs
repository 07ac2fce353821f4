//! `p11gate token init`: C_InitToken and C_InitPIN on a built-in soft token, in this process.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use pkcs11_sys::{CKF_RW_SESSION, CKF_SERIAL_SESSION, CKU_SO, CK_SLOT_ID, CK_TOKEN_INFO};
use serde::Serialize;

use p11gate::backend::{Backend, InitArgs};
use p11gate::config::Config;
use p11gate::ffi::args::InBuf;
use p11gate::router::slots::{slot_ids, token_matching};
use p11gate::soft::backend::SoftBackend;
use p11gate::uri::{Attr, Pkcs11Uri};

use crate::exit::Exit;
use crate::pin::read_pins;

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    #[command(
        about = "Initialise a built-in soft token: SO PIN, user PIN and label",
        long_about = INIT_ABOUT,
        after_help = INIT_EXAMPLES
    )]
    Init(InitTokenArgs),
}

const INIT_ABOUT: &str = "\
Initialise a built-in soft token: the one of slot N (default 0) under $P11GATE_HOME (or
[soft_token] home of the configuration), the one a PKCS#11 URI names (RFC 7512, such as
pkcs11:token=old-label or pkcs11:serial=0000000000000001; it must match exactly one, else the
tokens are listed), or, with --dir, the one in DIR (an [[upstream]] with soft_token = DIR; with
--token, only if it matches). Asks for the SO PIN and the user PIN, each twice without echo on a terminal;
otherwise reads two lines of standard input: the SO PIN, then the user PIN. A token that is
already initialised needs its current SO PIN, and all its objects are destroyed.

--json prints one JSON object on standard output (exit 0 or 1):
  ok     true when the token was initialised
  slot   the slot number (0 with --dir)
  label  the token's label
  dir    the token's directory (null when the slot does not exist)
  uri    the initialised token's PKCS#11 URI (null when not initialised)
  error  why not (a CKR name or a message; null when ok)";

const INIT_EXAMPLES: &str = "\
Examples:
  p11gate token init --label vault
  p11gate token init --token 'pkcs11:token=old-label' --label vault
  printf '%s\\n%s\\n' \"$SO_PIN\" \"$USER_PIN\" | P11GATE_HOME=/var/lib/p11gate p11gate token init --slot 1 --label vault-2
  p11gate token init --dir /var/lib/p11gate/lab --label lab --json";

#[derive(Debug, Args)]
pub struct InitTokenArgs {
    /// The soft token slot to initialise
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with_all = ["dir", "token"])]
    pub slot: u64,
    /// The token, by PKCS#11 URI (RFC 7512); it must match exactly one (with --dir: that one)
    // Checked by `token_arg_uri` after parsing, not by a clap value parser: clap's message
    // would repeat the whole argument, and a mistaken `?pin-value=` must not be echoed.
    #[arg(long, value_name = "URI")]
    pub token: Option<String>,
    /// The token's directory, for an [[upstream]] soft_token (instead of --slot)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// The token label (at most 32 bytes)
    #[arg(long, value_name = "LABEL", default_value = "p11gate", value_parser = label)]
    pub label: String,
    /// Print one JSON object instead of text (fields above)
    #[arg(long)]
    pub json: bool,
}

/// A token label fills a 32-byte, blank-padded field.
fn label(text: &str) -> Result<String, String> {
    if text.len() <= 32 {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{} bytes; a token label has at most 32",
            text.len()
        ))
    }
}

/// `--token URI`: a URI that names a token, and nothing a command line should not carry.
fn token_arg_uri(text: &str) -> Result<Pkcs11Uri, String> {
    let uri = Pkcs11Uri::parse(text).map_err(|e| e.to_string())?;
    uri.check_understood()?;
    if uri.get(Attr::PinValue).is_some() {
        return Err(
            "has a pin-value: the PINs are asked for (a PIN in an argument is visible to every \
             user of the machine)"
                .into(),
        );
    }
    let other: Vec<String> = uri
        .attrs()
        .filter(|a| a.is_query() || a.is_object() || a.name().starts_with("library-"))
        .map(|a| a.name().to_string())
        .chain(uri.vendor_query().iter().map(|(n, _)| n.clone()))
        .collect();
    if !other.is_empty() {
        return Err(format!(
            "has {}: it names a token by token and slot attributes only",
            other.join(", ")
        ));
    }
    Ok(uri)
}

/// `token init --json`.
#[derive(Debug, Serialize)]
struct InitReport {
    ok: bool,
    slot: u64,
    label: String,
    dir: Option<String>,
    /// The initialised token's PKCS#11 URI (null when not initialised).
    uri: Option<String>,
    error: Option<String>,
}

pub fn run(command: &TokenCommand, out: &mut dyn Write) -> Exit {
    match command {
        TokenCommand::Init(args) => init(args, out),
    }
}

fn init(args: &InitTokenArgs, out: &mut dyn Write) -> Exit {
    let token = match args.token.as_deref().map(token_arg_uri).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("token init: --token: {e}");
            return Exit::Usage;
        }
    };
    let slot = if args.dir.is_some() { 0 } else { args.slot };
    let mut report = InitReport {
        ok: false,
        slot,
        label: args.label.clone(),
        dir: None,
        uri: None,
        error: None,
    };
    let exit = match initialise(args, token.as_ref(), slot, &mut report) {
        Ok(()) => {
            report.ok = true;
            Exit::Ok
        }
        Err((exit, message)) => {
            eprintln!("token init: {message}");
            report.error = Some(message);
            exit
        }
    };
    if exit == Exit::Io {
        // Nothing was done: stdout stays empty, as for every I/O error.
        return exit;
    }
    let written = if args.json {
        crate::write_json(out, &report)
    } else if report.ok {
        writeln!(
            out,
            "slot {}: token {:?} initialised in {}\n  {}",
            report.slot,
            report.label,
            report.dir.as_deref().unwrap_or(""),
            report.uri.as_deref().unwrap_or("")
        )
    } else {
        Ok(())
    };
    match written {
        Ok(()) => exit,
        Err(e) => crate::output_failed("token init", e),
    }
}

fn initialise(
    args: &InitTokenArgs,
    token: Option<&Pkcs11Uri>,
    mut slot: u64,
    report: &mut InitReport,
) -> Result<(), (Exit, String)> {
    let getenv = |k: &str| std::env::var(k).ok();
    let config = match Config::discover(getenv) {
        Ok((c, _)) if c.upstreams.is_empty() || args.dir.is_some() => c,
        Ok(_) => {
            return Err((
                Exit::Failed,
                "this configuration has upstreams; name a soft token's directory with --dir".into(),
            ))
        }
        Err(e) => return Err((Exit::Failed, e.to_string())),
    };
    let dirs = match &args.dir {
        Some(d) => vec![d.clone()],
        None => config.soft_token.token_dirs(),
    };
    if let Some(uri) = token {
        slot = soft_token_named(uri, &dirs, config.soft_token.max_pin_failures)
            .map_err(|e| (Exit::Failed, e))?;
        report.slot = slot;
    }
    let Some(dir) = dirs.get(slot as usize).cloned() else {
        return Err((
            Exit::Failed,
            format!("there is no slot {slot} ({} configured)", dirs.len()),
        ));
    };
    report.dir = Some(dir.display().to_string());
    let pins = read_pins(&["SO PIN", "user PIN"]).map_err(|e| (e.exit, e.message))?;
    let (so, user) = (&pins[0], &pins[1]);
    let soft = SoftBackend::new("soft", dirs, config.soft_token.max_pin_failures);
    let result = (|| {
        soft.initialize(&InitArgs::default())?;
        let mut padded = [b' '; 32];
        padded[..args.label.len()].copy_from_slice(args.label.as_bytes());
        soft.init_token(slot, InBuf::from_slice(so.as_bytes()), &padded)?;
        let s = soft.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)?;
        soft.login(s, CKU_SO, InBuf::from_slice(so.as_bytes()))?;
        soft.init_pin(s, InBuf::from_slice(user.as_bytes()))?;
        soft.logout(s)?;
        soft.close_session(s)?;
        let mut info = CK_TOKEN_INFO::default();
        soft.token_info(slot, &mut info)?;
        soft.finalize()?;
        Ok::<_, p11gate::error::Error>(Pkcs11Uri::of_token(&info))
    })();
    let uri = result.map_err(|e| {
        (
            Exit::Failed,
            format!("slot {slot}: {}", p11gate::names::rv_name(e.rv())),
        )
    })?;
    report.uri = Some(uri.path_only());
    Ok(())
}

/// Every token of a backend: its slot id and its URI (token attributes and slot-id).
pub fn token_uris(backend: &dyn Backend) -> Vec<(CK_SLOT_ID, String)> {
    slot_ids(backend, true)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|slot| {
            let mut info = CK_TOKEN_INFO::default();
            backend.token_info(slot, &mut info).ok()?;
            let mut uri = Pkcs11Uri::of_token(&info);
            uri.set_slot_id(slot);
            Some((slot, uri.path_only()))
        })
        .collect()
}

/// The slot of the one soft token in `dirs` that `uri` matches; init is destructive, so a URI
/// that matches none or several is refused, with the tokens there listed.
fn soft_token_named(
    uri: &Pkcs11Uri,
    dirs: &[PathBuf],
    max_pin_failures: u32,
) -> Result<u64, String> {
    let soft = SoftBackend::new("soft", dirs.to_vec(), max_pin_failures);
    soft.initialize(&InitArgs::default())
        .map_err(|e| format!("the soft tokens: {}", p11gate::names::rv_name(e.rv())))?;
    let all = token_uris(&soft);
    let matching: Vec<u64> = all
        .iter()
        .map(|(slot, _)| *slot)
        .filter(|slot| token_matching(&soft, *slot, uri).is_some())
        .collect();
    let _ = soft.finalize();
    let listing: String = all
        .iter()
        .map(|(slot, u)| format!("\n  slot {slot}: {u}"))
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no soft token matches {}; there are:{listing}",
            uri.path_only()
        )),
        many => Err(format!(
            "{} matches {} soft tokens (slots {}): name one; there are:{listing}",
            uri.path_only(),
            many.len(),
            many.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
