//! `p11gate`: the command-line companion of libp11gate.so.
//!
//! ```text
//! p11gate config check [FILE]   validate a configuration and show, per app, where each
//!                               virtual slot leads and which mechanisms it may use
//! p11gate hash-pin              make the pin_hash for a slot whose credential p11gate holds
//! p11gate audit keygen FILE     make a key for the audit file's HMAC chain
//! p11gate audit verify FILE     check an audit file's chain
//! p11gate audit summary [FILE]  counts per app, key and function from an audit trail
//! p11gate token init            initialise a built-in soft token (SO PIN, user PIN, label)
//! p11gate stats [PATH...]       calls, errors and latency per app, slot and function
//! ```
//!
//! Exit status: 0 success, 1 the configuration (or an upstream) is not usable, 2 usage error.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use pkcs11_sys::*;

use p11gate::audit::{self, chain};
use p11gate::backend::{Backend, InitArgs};
use p11gate::config::{self, Config, Source, TokenTarget};
use p11gate::credentials;
use p11gate::ffi::args::InBuf;
use p11gate::ffi::terminal::read_hidden_line;
use p11gate::policy::mechanism_text;
use p11gate::router::slots::{list_of, SlotEntry};

const USAGE: &str = "usage:
  p11gate config check [FILE]   validate FILE (default: $P11GATE_CONFIG or /etc/p11gate/p11gate.toml)
                                and print, per app, each virtual slot's upstream, token and mechanisms
  p11gate hash-pin              read a PIN (without echo on a terminal, else one line of standard
                                input) and print its argon2id hash for pin_hash
  p11gate audit keygen FILE     write a new random 32-byte audit key (hex, mode 0600) to FILE
  p11gate audit verify FILE [--key KEYFILE]
                                check the HMAC chain of a JSON-lines audit file; the key defaults
                                to $P11GATE_AUDIT_KEY, else key_file of the configuration.
                                Prints \"FILE: OK, N records\" (exit 0) or the first deleted,
                                inserted, reordered or edited record as FILE:LINE: ... (exit 1)
  p11gate audit summary [FILE|-] [--since TIME] [--app NAME] [--key LABEL] [--fn NAME] [--errors] [--json]
                                counts, errors, refusals and first/last time per app, key and
                                function, from JSON lines or syslog text (default: standard input)
  p11gate token init [--slot N | --dir DIR] [--label LABEL]
                                initialise the built-in soft token of slot N (default 0) in
                                $P11GATE_HOME, or the one in DIR (an [[upstream]] soft_token):
                                asks for the SO PIN and the user PIN (without echo
                                on a terminal, else two lines of standard input: SO PIN, user
                                PIN). An initialised token needs its current SO PIN; all its
                                objects are destroyed
  p11gate stats [PATH...] [--json]
                                calls, errors, mean, p50 and p99 per app, slot and function
                                from the metrics files (default: the configured metrics dir)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["config", "check"] => config_check(None),
        ["config", "check", file] => config_check(Some(PathBuf::from(file))),
        ["hash-pin"] => hash_pin(),
        ["audit", "keygen", file] => audit_keygen(file),
        ["audit", "verify", file] => audit_verify(file, None),
        ["audit", "verify", file, "--key", key] | ["audit", "verify", "--key", key, file] => {
            audit_verify(file, Some(key))
        }
        ["token", "init", rest @ ..] => token_init(rest),
        ["audit", "summary", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            let code = audit::summary::run(&rest, &mut std::io::stdout().lock());
            ExitCode::from(code)
        }
        ["stats", rest @ ..] => {
            let rest: Vec<String> = rest.iter().map(|s| s.to_string()).collect();
            ExitCode::from(p11gate::metrics::stats::run(
                &rest,
                &mut std::io::stdout().lock(),
            ))
        }
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn config_check(file: Option<PathBuf>) -> ExitCode {
    let path = file.unwrap_or_else(|| {
        PathBuf::from(
            std::env::var(config::env::CONFIG)
                .unwrap_or_else(|_| config::DEFAULT_CONFIG_PATH.into()),
        )
    });
    let config = match Config::load(&path) {
        Ok(Some(c)) => c,
        Ok(None) => {
            eprintln!("config {}: no such file", path.display());
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    println!("config {}: OK", path.display());
    match show_apps(&config, &Source::File(path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// Prints, per app, where each slot leads, asking the upstreams (initialised here, finalised
/// before returning).
fn show_apps(config: &Config, source: &Source) -> Result<(), String> {
    if config.upstreams.is_empty() {
        println!("no upstream: the built-in soft token");
        for (slot, dir) in config.soft_token.token_dirs().iter().enumerate() {
            println!("  slot {slot}: {}", dir.display());
        }
        return Ok(());
    }
    let mut upstreams: Vec<Option<Box<dyn Backend>>> =
        config.upstreams.iter().map(|_| None).collect();
    let result = (|| {
        let apps: Vec<String> = if config.apps.is_empty() {
            vec![config::DEFAULT_APP_NAME.to_string()]
        } else {
            config
                .apps
                .iter()
                .map(|a| a.name.get_ref().clone())
                .collect()
        };
        let default = config.default_app.as_ref().map(|d| d.get_ref().as_str());
        for name in apps {
            let app = config
                .select_app(Some(&name), source)
                .map_err(|e| e.to_string())?;
            let marker = if default == Some(name.as_str()) {
                " (default_app)"
            } else {
                ""
            };
            println!("app {name:?}{marker}:");
            if config.slots.is_empty() {
                let u = &config.upstreams[0];
                println!(
                    "  all slots of upstream {:?} ({}), ids unchanged",
                    u.name.get_ref(),
                    where_from(u)
                );
                let backend = upstream(config, &mut upstreams, 0)?;
                let policy = config.upstream_policy(0);
                for slot in
                    p11gate::router::slots::slot_ids(backend, true).map_err(|e| e.to_string())?
                {
                    print!("  slot {slot:#x}: ");
                    show_mechanisms(backend, slot, &policy.mechanisms);
                }
                continue;
            }
            for &i in &app.slots {
                let slot = &config.slots[i];
                let u = config
                    .upstream_index(slot.upstream.get_ref())
                    .ok_or("unknown upstream")?;
                let backend = upstream(config, &mut upstreams, u)?;
                let policy = config.slot_policy(i);
                let target = slot.target();
                let entry = SlotEntry::new(
                    slot.id.get_ref().0,
                    0,
                    Some(target.clone()),
                    policy.clone(),
                    None,
                );
                let found = entry.find(backend);
                println!(
                    "  slot {} -> upstream {:?} ({}), {target}: {}",
                    slot.id.get_ref().0,
                    slot.upstream.get_ref(),
                    where_from(&config.upstreams[u]),
                    match (found, &target) {
                        (None, _) => "not present".to_string(),
                        (Some(_), TokenTarget::Slot(_)) => "token present".to_string(),
                        (Some(id), _) => format!("upstream slot {id:#x}"),
                    }
                );
                print!("    ");
                match found {
                    Some(real) => show_mechanisms(backend, real, &policy.mechanisms),
                    None => println!("mechanisms: unknown (token not present)"),
                }
                let mut notes = Vec::new();
                if slot.credential_source().is_some() {
                    notes.push("p11gate holds the upstream credential (PIN mapped)");
                }
                if policy.require_non_extractable {
                    notes.push("require_non_extractable");
                }
                if policy.read_only {
                    notes.push("read_only");
                }
                if !notes.is_empty() {
                    println!("    {}", notes.join(", "));
                }
            }
        }
        Ok(())
    })();
    for u in upstreams.iter().flatten() {
        let _ = u.finalize();
    }
    result
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

fn show_mechanisms(
    backend: &dyn Backend,
    slot: CK_SLOT_ID,
    filter: &p11gate::policy::MechanismFilter,
) {
    match list_of(|o| backend.mechanism_list(slot, o)) {
        Ok(all) => {
            let filtered: Vec<String> = all
                .iter()
                .filter(|m| filter.refusal(**m).is_some())
                .map(|m| mechanism_text(*m))
                .collect();
            let allowed = all.len() - filtered.len();
            if filtered.is_empty() {
                println!("mechanisms: {allowed} allowed, 0 filtered");
            } else {
                println!(
                    "mechanisms: {allowed} allowed, {} filtered ({})",
                    filtered.len(),
                    filtered.join(", ")
                );
            }
        }
        Err(e) => println!("mechanisms: unknown (C_GetMechanismList returned {e})"),
    }
}

fn hash_pin() -> ExitCode {
    let pin = match read_pin() {
        Ok(pin) => pin,
        Err(e) => {
            eprintln!("hash-pin: {e}");
            return ExitCode::from(1);
        }
    };
    if pin.is_empty() {
        eprintln!("hash-pin: the PIN is empty");
        return ExitCode::from(1);
    }
    match credentials::hash_pin(pin.as_bytes()) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hash-pin: {e}");
            ExitCode::from(1)
        }
    }
}

/// The PIN, from the terminal without echo (asked twice), or one line of standard input.
fn read_pin() -> Result<zeroize::Zeroizing<String>, String> {
    if std::io::stdin().is_terminal() {
        let first = read_hidden_line("PIN: ").map_err(|e| e.to_string())?;
        let again = read_hidden_line("PIN again: ").map_err(|e| e.to_string())?;
        if *first != *again {
            return Err("the two PINs differ".into());
        }
        return Ok(first);
    }
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let trimmed = line.trim_end_matches(['\n', '\r']).len();
    line.truncate(trimmed);
    let _ = std::io::stderr().flush();
    Ok(line)
}

/// `p11gate audit keygen FILE`: 32 random bytes as hex, in a new file only its owner can read.
fn audit_keygen(file: &str) -> ExitCode {
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
    match written {
        Ok(()) => {
            let id = chain::AuditKey::from_bytes(&*key).id();
            println!("{file}: new audit key {id}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("audit keygen: {file}: {e}");
            ExitCode::from(1)
        }
    }
}

/// `p11gate audit verify FILE`: OK, or the first broken record.
fn audit_verify(file: &str, key: Option<&str>) -> ExitCode {
    let key_path = match key {
        Some(k) => PathBuf::from(k),
        None => match std::env::var(config::env::AUDIT_KEY)
            .ok()
            .filter(|k| !k.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                let getenv = |k: &str| std::env::var(k).ok();
                Config::discover(getenv).ok()?.0.audit.key_file
            }) {
            Some(p) => p,
            None => {
                eprintln!(
                    "audit verify: no key: pass --key KEYFILE, set {}, or key_file in [audit]",
                    config::env::AUDIT_KEY
                );
                return ExitCode::from(2);
            }
        },
    };
    let key = match chain::AuditKey::load(&key_path) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("audit verify: {e}");
            return ExitCode::from(1);
        }
    };
    let input = match std::fs::File::open(file) {
        Ok(f) => std::io::BufReader::with_capacity(1 << 20, f),
        Err(e) => {
            eprintln!("audit verify: {file}: {e}");
            return ExitCode::from(1);
        }
    };
    match chain::verify(input, &key) {
        Ok(chain::Verdict::Intact { records }) => {
            println!("{file}: OK, {records} records");
            ExitCode::SUCCESS
        }
        Ok(chain::Verdict::Broken { line, kind, detail }) => {
            println!("{file}:{line}: {}: {detail}", kind.word());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("audit verify: {file}: {e}");
            ExitCode::from(1)
        }
    }
}

/// `p11gate token init`: C_InitToken and C_InitPIN on a soft token, in this process.
fn token_init(args: &[&str]) -> ExitCode {
    let (mut slot, mut label) = (0u64, "p11gate".to_string());
    let mut dir_arg: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (*a, it.next()) {
            ("--slot", Some(v)) => match v.parse() {
                Ok(n) => slot = n,
                Err(_) => {
                    eprintln!("token init: --slot {v:?} is not a number");
                    return ExitCode::from(2);
                }
            },
            ("--label", Some(v)) if v.len() <= 32 => label = v.to_string(),
            ("--dir", Some(v)) => dir_arg = Some(PathBuf::from(v)),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let getenv = |k: &str| std::env::var(k).ok();
    let config = match (Config::discover(getenv), &dir_arg) {
        (Ok((c, _)), None) if c.upstreams.is_empty() => c,
        (Ok((c, _)), Some(_)) => c,
        (Ok(_), None) => {
            eprintln!(
                "token init: this configuration has upstreams; name a soft token's directory with --dir"
            );
            return ExitCode::from(1);
        }
        (Err(e), _) => {
            eprintln!("token init: {e}");
            return ExitCode::from(1);
        }
    };
    let (so, user) = match read_two_pins() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("token init: {e}");
            return ExitCode::from(1);
        }
    };
    let dirs = match &dir_arg {
        Some(d) => {
            slot = 0;
            vec![d.clone()]
        }
        None => config.soft_token.token_dirs(),
    };
    let Some(dir) = dirs.get(slot as usize).cloned() else {
        eprintln!(
            "token init: there is no slot {slot} ({} configured)",
            dirs.len()
        );
        return ExitCode::from(1);
    };
    let soft =
        p11gate::soft::backend::SoftBackend::new("soft", dirs, config.soft_token.max_pin_failures);
    let result = (|| {
        soft.initialize(&InitArgs::default())?;
        let mut padded = [b' '; 32];
        padded[..label.len()].copy_from_slice(label.as_bytes());
        soft.init_token(slot, InBuf::from_slice(so.as_bytes()), &padded)?;
        let s = soft.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)?;
        soft.login(s, CKU_SO, InBuf::from_slice(so.as_bytes()))?;
        soft.init_pin(s, InBuf::from_slice(user.as_bytes()))?;
        soft.logout(s)?;
        soft.close_session(s)?;
        soft.finalize()
    })();
    match result {
        Ok(()) => {
            println!(
                "slot {slot}: token {label:?} initialised in {}",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("token init: slot {slot}: {}", names_rv(e.rv()));
            ExitCode::from(1)
        }
    }
}

fn names_rv(rv: CK_RV) -> &'static str {
    p11gate::names::rv_name(rv)
}

/// The SO PIN and the user PIN: asked twice each on a terminal, else two lines of stdin.
fn read_two_pins() -> Result<(zeroize::Zeroizing<String>, zeroize::Zeroizing<String>), String> {
    if std::io::stdin().is_terminal() {
        let mut pins = Vec::new();
        for who in ["SO PIN", "user PIN"] {
            let first = read_hidden_line(&format!("{who}: ")).map_err(|e| e.to_string())?;
            let again = read_hidden_line(&format!("{who} again: ")).map_err(|e| e.to_string())?;
            if *first != *again {
                return Err(format!("the two {who}s differ"));
            }
            pins.push(first);
        }
        let user = pins.pop().unwrap_or_default();
        let so = pins.pop().unwrap_or_default();
        return Ok((so, user));
    }
    let read = || -> Result<zeroize::Zeroizing<String>, String> {
        let mut line = zeroize::Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let n = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(n);
        Ok(line)
    };
    let so = read()?;
    let user = read()?;
    Ok((so, user))
}
