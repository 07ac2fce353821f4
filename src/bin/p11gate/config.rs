//! `p11gate config check`: the module's own checks on a configuration file, then per app where
//! each virtual slot leads and which mechanisms it may use, asking the upstreams themselves.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use pkcs11_sys::{CKF_OS_LOCKING_OK, CK_SLOT_ID};
use serde::Serialize;

use p11gate::backend::{Backend, InitArgs};
use p11gate::config::{self, Config, Source, TokenTarget};
use p11gate::policy::{mechanism_text, MechanismFilter};
use p11gate::router::slots::{list_of, slot_ids, SlotEntry};

use crate::exit::Exit;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    #[command(
        about = "Validate a configuration and show, per app, where each slot leads",
        long_about = CHECK_ABOUT,
        after_help = CHECK_EXAMPLES
    )]
    Check(CheckArgs),
}

const CHECK_ABOUT: &str = "\
Validate a configuration file with the very checks C_Initialize runs (unknown keys, duplicate
slot ids, unknown upstreams, mechanisms and profiles, credential files and their permissions),
then load each upstream the apps use and print, per app, each virtual slot: its upstream, how its
token is found (or \"not present\"), how many mechanisms it allows and which it filters, and
its PIN mapping and key policy. With no [[upstream]], it lists the soft token's slot
directories. Environment overrides (P11GATE_UPSTREAM, ...) are not applied: this checks the
file as written.

--json prints one JSON object on standard output (also when the check fails, exit 1):
  config    the file checked
  ok        true when the file is valid and every upstream it names could be used
  error     why not (null when ok)
  backend   \"soft_token\" (no [[upstream]]), \"upstreams\", or null when the file is invalid
  soft_token_slots  [{slot, dir}] of the built-in soft token (backend soft_token)
  apps      [{name, default_app, slots}], where each slot is
            {id, upstream, module, target, present, upstream_slot, mechanisms,
             mechanisms_error, pin_mapped, require_non_extractable, read_only, tokens}:
            module is the upstream's library path or \"soft token in DIR\"; target is
            {token_label|token_serial|token_uri|upstream_slot: value} (null when an
            upstream's slots pass through unmapped); present says whether the token was
            found, upstream_slot where; mechanisms is {allowed, filtered: [CKM names]} or
            null, with mechanisms_error saying why; tokens (only for a token_uri that matches
            nothing) lists the upstream's tokens as URIs";

const CHECK_EXAMPLES: &str = "\
Examples:
  p11gate config check
  p11gate config check /etc/p11gate/p11gate.toml
  p11gate config check --json staging.toml | jq '.apps[].slots[] | {id, present}'";

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration file [default: $P11GATE_CONFIG, else /etc/p11gate/p11gate.toml]
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Print one JSON object instead of text (fields above)
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: &ConfigCommand, out: &mut dyn Write) -> Exit {
    match command {
        ConfigCommand::Check(args) => check(args, out),
    }
}

/// What `config check` found, as `--json` prints it.
#[derive(Debug, Default, Serialize)]
struct Report {
    config: String,
    ok: bool,
    error: Option<String>,
    /// None when the file is not a valid configuration.
    backend: Option<&'static str>,
    soft_token_slots: Vec<SoftSlot>,
    apps: Vec<AppReport>,
}

#[derive(Debug, Serialize)]
struct SoftSlot {
    slot: usize,
    dir: String,
}

#[derive(Debug, Serialize)]
struct AppReport {
    name: String,
    default_app: bool,
    /// With no [[slot]]: the one upstream whose slots pass through (text output only).
    #[serde(skip)]
    pass_through: Option<String>,
    slots: Vec<SlotReport>,
}

#[derive(Debug, Serialize)]
struct SlotReport {
    id: CK_SLOT_ID,
    upstream: String,
    module: String,
    target: Option<Target>,
    present: bool,
    upstream_slot: Option<CK_SLOT_ID>,
    mechanisms: Option<Mechanisms>,
    mechanisms_error: Option<String>,
    pin_mapped: bool,
    require_non_extractable: bool,
    read_only: bool,
    /// For a URI target that matches no token: the upstream's tokens as URIs (with slot-id),
    /// so that the one meant can be told apart or copied. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Target {
    TokenLabel(String),
    TokenSerial(String),
    TokenUri(String),
    UpstreamSlot(CK_SLOT_ID),
}

#[derive(Debug, Serialize)]
struct Mechanisms {
    allowed: usize,
    filtered: Vec<String>,
}

fn check(args: &CheckArgs, out: &mut dyn Write) -> Exit {
    let path = args.file.clone().unwrap_or_else(|| {
        PathBuf::from(
            std::env::var(config::env::CONFIG)
                .unwrap_or_else(|_| config::DEFAULT_CONFIG_PATH.into()),
        )
    });
    let mut report = Report {
        config: path.display().to_string(),
        ..Report::default()
    };
    // A file that cannot be opened is an I/O error (3), not an invalid configuration (1).
    let (exit, error) = match std::fs::File::open(&path) {
        Err(e) => (Exit::Io, format!("config {}: {e}", path.display())),
        Ok(_) => match Config::load(&path) {
            Ok(Some(config)) => {
                report.ok = true;
                match gather(&config, &Source::File(path.clone()), &mut report) {
                    Ok(()) => (Exit::Ok, String::new()),
                    Err(e) => (Exit::Failed, e),
                }
            }
            // Gone between the open and the read.
            Ok(None) => (Exit::Io, format!("config {}: no such file", path.display())),
            Err(e) => (Exit::Failed, e.to_string()),
        },
    };
    if exit != Exit::Ok {
        report.ok = false;
        report.error = Some(error.clone());
    }
    let written = if exit == Exit::Io {
        // Nothing was checked: stdout stays empty, as after every I/O error.
        Ok(())
    } else if args.json {
        crate::write_json(out, &report)
    } else {
        write_text(&report, &path, out)
    };
    if exit != Exit::Ok {
        eprintln!("{error}");
    }
    match written {
        Ok(()) => exit,
        Err(e) => crate::output_failed("config check", e),
    }
}

/// Fills the report: per app, where each slot leads, asking the upstreams (initialised here,
/// finalised before returning).
fn gather(config: &Config, source: &Source, report: &mut Report) -> Result<(), String> {
    if config.upstreams.is_empty() {
        report.backend = Some("soft_token");
        report.soft_token_slots = config
            .soft_token
            .token_dirs()
            .iter()
            .enumerate()
            .map(|(slot, dir)| SoftSlot {
                slot,
                dir: dir.display().to_string(),
            })
            .collect();
        return Ok(());
    }
    report.backend = Some("upstreams");
    let mut upstreams: Vec<Option<Box<dyn Backend>>> =
        config.upstreams.iter().map(|_| None).collect();
    let result = gather_apps(config, source, &mut upstreams, report);
    for u in upstreams.iter().flatten() {
        let _ = u.finalize();
    }
    result
}

fn gather_apps(
    config: &Config,
    source: &Source,
    upstreams: &mut [Option<Box<dyn Backend>>],
    report: &mut Report,
) -> Result<(), String> {
    let names: Vec<String> = if config.apps.is_empty() {
        vec![config::DEFAULT_APP_NAME.to_string()]
    } else {
        config
            .apps
            .iter()
            .map(|a| a.name.get_ref().clone())
            .collect()
    };
    let default = config.default_app.as_ref().map(|d| d.get_ref().as_str());
    for name in names {
        let app = config
            .select_app(Some(&name), source)
            .map_err(|e| e.to_string())?;
        report.apps.push(AppReport {
            default_app: default == Some(name.as_str()),
            name,
            pass_through: None,
            slots: Vec::new(),
        });
        let entry = report.apps.last_mut().expect("pushed above");
        if config.slots.is_empty() {
            let u = &config.upstreams[0];
            entry.pass_through = Some(format!("{:?} ({})", u.name.get_ref(), where_from(u)));
            let backend = upstream(config, upstreams, 0)?;
            let policy = config.upstream_policy(0);
            for slot in slot_ids(backend, true).map_err(|e| e.to_string())? {
                let (mechanisms, mechanisms_error) = mechanisms(backend, slot, &policy.mechanisms);
                entry.slots.push(SlotReport {
                    id: slot,
                    upstream: u.name.get_ref().clone(),
                    module: where_from(u),
                    target: None,
                    present: true,
                    upstream_slot: Some(slot),
                    mechanisms,
                    mechanisms_error,
                    pin_mapped: false,
                    require_non_extractable: false,
                    read_only: false,
                    tokens: None,
                });
            }
            continue;
        }
        for &i in &app.slots {
            let slot = &config.slots[i];
            let u = config
                .upstream_index(slot.upstream.get_ref())
                .ok_or("unknown upstream")?;
            let backend = upstream(config, upstreams, u)?;
            let policy = config.slot_policy(i);
            let target = slot.target();
            let found = SlotEntry::new(
                slot.id.get_ref().0,
                0,
                Some(target.clone()),
                policy.clone(),
                None,
            )
            .find(backend);
            let (mechanisms, mechanisms_error) = match found {
                Some(real) => mechanisms(backend, real, &policy.mechanisms),
                None => (None, Some("token not present".to_string())),
            };
            let tokens = match (&found, &target) {
                (None, TokenTarget::Uri(_)) => Some(
                    crate::token::token_uris(backend)
                        .into_iter()
                        .map(|(_, uri)| uri)
                        .collect(),
                ),
                _ => None,
            };
            entry.slots.push(SlotReport {
                id: slot.id.get_ref().0,
                upstream: slot.upstream.get_ref().clone(),
                module: where_from(&config.upstreams[u]),
                target: Some(match target {
                    TokenTarget::Label(l) => Target::TokenLabel(l),
                    TokenTarget::Serial(s) => Target::TokenSerial(s),
                    TokenTarget::Uri(u) => Target::TokenUri(u.path_only()),
                    TokenTarget::Slot(n) => Target::UpstreamSlot(n),
                }),
                present: found.is_some(),
                upstream_slot: found,
                mechanisms,
                mechanisms_error,
                pin_mapped: slot.credential_source().is_some(),
                require_non_extractable: policy.require_non_extractable,
                read_only: policy.read_only,
                tokens,
            });
        }
    }
    Ok(())
}

fn upstream<'a>(
    config: &Config,
    loaded: &'a mut [Option<Box<dyn Backend>>],
    index: usize,
) -> Result<&'a dyn Backend, String> {
    if loaded[index].is_none() {
        let u = p11gate::runtime::load_backend(config, index).map_err(|e| e.to_string())?;
        u.initialize(&InitArgs {
            flags: CKF_OS_LOCKING_OK,
            mutexes: None,
        })
        .map_err(|e| {
            format!(
                "upstream {:?}: C_Initialize returned {e}",
                config.upstreams[index].name.get_ref()
            )
        })?;
        loaded[index] = Some(u);
    }
    Ok(loaded[index].as_deref().expect("loaded above"))
}

/// Where an upstream comes from: its module's path, or its soft token's directory.
fn where_from(u: &config::UpstreamConfig) -> String {
    match &u.soft_token {
        Some(dir) => format!("soft token in {}", dir.display()),
        None => u.path.display().to_string(),
    }
}

/// The slot's mechanisms as the filter leaves them, or why they are unknown.
fn mechanisms(
    backend: &dyn Backend,
    slot: CK_SLOT_ID,
    filter: &MechanismFilter,
) -> (Option<Mechanisms>, Option<String>) {
    match list_of(|o| backend.mechanism_list(slot, o)) {
        Ok(all) => {
            let filtered: Vec<String> = all
                .iter()
                .filter(|m| filter.refusal(**m).is_some())
                .map(|m| mechanism_text(*m))
                .collect();
            let allowed = all.len() - filtered.len();
            (Some(Mechanisms { allowed, filtered }), None)
        }
        Err(e) => (None, Some(format!("C_GetMechanismList returned {e}"))),
    }
}

fn write_text(report: &Report, path: &Path, out: &mut dyn Write) -> io::Result<()> {
    if report.backend.is_none() {
        // The file itself is not valid: the error on stderr says it all.
        return Ok(());
    }
    writeln!(out, "config {}: OK", path.display())?;
    if report.backend == Some("soft_token") {
        writeln!(out, "no upstream: the built-in soft token")?;
        for s in &report.soft_token_slots {
            writeln!(out, "  slot {}: {}", s.slot, s.dir)?;
        }
        return Ok(());
    }
    for app in &report.apps {
        let marker = if app.default_app {
            " (default_app)"
        } else {
            ""
        };
        writeln!(out, "app {:?}{marker}:", app.name)?;
        if let Some(upstream) = &app.pass_through {
            writeln!(out, "  all slots of upstream {upstream}, ids unchanged")?;
            for s in &app.slots {
                write!(out, "  slot {:#x}: ", s.id)?;
                write_mechanisms(s, out)?;
            }
            continue;
        }
        for s in &app.slots {
            let target = match &s.target {
                Some(Target::TokenLabel(l)) => format!("{}", TokenTarget::Label(l.clone())),
                Some(Target::TokenSerial(t)) => format!("{}", TokenTarget::Serial(t.clone())),
                Some(Target::TokenUri(u)) => format!("token {u}"),
                Some(Target::UpstreamSlot(n)) => format!("{}", TokenTarget::Slot(*n)),
                None => format!("{}", TokenTarget::Slot(s.id)),
            };
            let fixed_slot = matches!(s.target, Some(Target::UpstreamSlot(_)) | None);
            let found = match s.upstream_slot {
                None => "not present".to_string(),
                Some(_) if fixed_slot => "token present".to_string(),
                Some(id) => format!("upstream slot {id:#x}"),
            };
            writeln!(
                out,
                "  slot {} -> upstream {:?} ({}), {target}: {found}",
                s.id, s.upstream, s.module
            )?;
            write!(out, "    ")?;
            write_mechanisms(s, out)?;
            match s.tokens.as_deref() {
                Some([]) => writeln!(
                    out,
                    "    no token matches; upstream {:?} has none",
                    s.upstream
                )?,
                Some(tokens) => {
                    writeln!(out, "    no token matches; upstream {:?} has:", s.upstream)?;
                    for uri in tokens {
                        writeln!(out, "      {uri}")?;
                    }
                }
                None => {}
            }
            let mut notes = Vec::new();
            if s.pin_mapped {
                notes.push("p11gate holds the upstream credential (PIN mapped)");
            }
            if s.require_non_extractable {
                notes.push("require_non_extractable");
            }
            if s.read_only {
                notes.push("read_only");
            }
            if !notes.is_empty() {
                writeln!(out, "    {}", notes.join(", "))?;
            }
        }
    }
    Ok(())
}

fn write_mechanisms(s: &SlotReport, out: &mut dyn Write) -> io::Result<()> {
    match (&s.mechanisms, &s.mechanisms_error) {
        (Some(m), _) if m.filtered.is_empty() => {
            writeln!(out, "mechanisms: {} allowed, 0 filtered", m.allowed)
        }
        (Some(m), _) => writeln!(
            out,
            "mechanisms: {} allowed, {} filtered ({})",
            m.allowed,
            m.filtered.len(),
            m.filtered.join(", ")
        ),
        (None, why) => writeln!(
            out,
            "mechanisms: unknown ({})",
            why.as_deref().unwrap_or("not asked")
        ),
    }
}
