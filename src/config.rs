//! Configuration: a TOML file plus environment overrides.
//!
//! Parsing and checking ([`Config::parse`]) are separate from discovery ([`Config::discover`],
//! which reads the environment and finds the file), so both can be tested on their own. Unknown
//! keys are refused so that a typo never silently changes behaviour, and every error tied to a
//! place in the file names it: `config /etc/p11gate/p11gate.toml:12: slot id 0 is used twice`.
//! `p11gate config check` and `C_Initialize` run the very same checks.
//!
//! ```toml
//! default_app = "vault-a"                  # P11GATE_APP overrides it
//!
//! [[upstream]]
//! name = "hsm"                             # used in logs and by [[slot]]
//! path = "/usr/lib/softhsm/libsofthsm2.so" # the vendor module
//! profiles = ["no-aes-gcm"]                # and/or allow = [...], deny = [...]
//! reconnect = true                         # re-initialise it after the HSM went away (below)
//!
//! [[slot]]
//! id = 0                                   # the virtual slot id applications see
//! upstream = "hsm"
//! token_label = "vault-a"                  # or token_serial, token_uri, or upstream_slot
//! # token_uri = "pkcs11:token=vault-a;serial=4f2a9c0e1b7d3a55"  (RFC 7512: all must match)
//! credential_file = "/etc/p11gate/a.pin"   # optional PIN mapping, with pin_hash
//! pin_hash = "$argon2id$v=19$..."
//! require_non_extractable = true
//!
//! [[app]]
//! name = "vault-a"
//! slots = [0]
//!
//! [log]
//! level = "info"                           # error | warn | info | debug | trace
//! target = "syslog"                        # syslog | stderr | /path/to/file
//!
//! [metrics]                                # off unless dir is set
//! # node_exporter's textfile collector directory: one p11gate-<app>-<pid>.prom per process
//! dir = "/var/lib/prometheus/node-exporter"
//! interval_s = 10                          # seconds between two writes of the file
//! ```
//!
//! `reconnect = true` on an `[[upstream]]`: when a call to the module returns
//! `CKR_DEVICE_REMOVED`, `CKR_DEVICE_ERROR`, or `CKR_TOKEN_NOT_PRESENT` from a call on a session,
//! p11gate marks that upstream down and re-initialises it in a background thread (100 ms between
//! tries, doubling up to 5 s). Calls to it fail at once with the code that took it down; other
//! upstreams are not affected. When it is back, the app's open sessions on it are re-opened under
//! the same handles, and logged in again where the app logged in with a PIN p11gate maps to a
//! held credential (without one they come back logged out). Operations in progress are lost,
//! and object handles from before are refused: find the objects again. Default: false (the
//! module's codes pass through and nothing is re-initialised).
//!
//! `P11GATE_METRICS` (`off`, or the directory) and `P11GATE_METRICS_INTERVAL` (seconds) override
//! `[metrics]`, as `P11GATE_AUDIT` overrides the audit sinks.

use std::path::{Path, PathBuf};

use pkcs11_sys::{CK_MECHANISM_TYPE, CK_SLOT_ID};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::credentials::{self, CredentialSource};
use crate::error::{Error, Result};
use crate::policy::{self, MechanismFilter, SlotPolicy, PROFILES};
use crate::uri::{Attr, Pkcs11Uri};

/// Where the configuration file is when `P11GATE_CONFIG` does not say.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/p11gate/p11gate.toml";
/// The app name when the configuration defines no `[[app]]`.
pub const DEFAULT_APP_NAME: &str = "default";

/// Environment variables p11gate reads (also documented in `include/p11gate.h`).
pub mod env {
    pub const CONFIG: &str = "P11GATE_CONFIG";
    pub const UPSTREAM: &str = "P11GATE_UPSTREAM";
    pub const APP: &str = "P11GATE_APP";
    pub const LOG: &str = "P11GATE_LOG";
    pub const LOG_LEVEL: &str = "P11GATE_LOG_LEVEL";
    pub const AUDIT: &str = "P11GATE_AUDIT";
    pub const AUDIT_KEY: &str = "P11GATE_AUDIT_KEY";
    pub const HOME: &str = "P11GATE_HOME";
    pub const NUM_SLOTS: &str = "P11GATE_NUM_SLOTS";
    pub const SLOW_CALL_WARN_MS: &str = "P11GATE_SLOW_CALL_WARN_MS";
    pub const METRICS: &str = "P11GATE_METRICS";
    pub const METRICS_INTERVAL: &str = "P11GATE_METRICS_INTERVAL";
}

/// The whole configuration, after environment overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The app of a process that does not set `P11GATE_APP`.
    #[serde(default)]
    pub default_app: Option<Spanned<String>>,
    /// Vendor modules p11gate forwards to.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// Virtual slots. Without any, the one upstream's slots pass through unchanged.
    #[serde(default, rename = "slot")]
    pub slots: Vec<SlotConfig>,
    /// Applications and the virtual slots each may use.
    #[serde(default, rename = "app")]
    pub apps: Vec<AppConfig>,
    /// Diagnostics (not the audit trail).
    #[serde(default)]
    pub log: LogConfig,
    /// The audit trail.
    #[serde(default)]
    pub audit: AuditConfig,
    /// The built-in soft token, served when no upstream is configured.
    #[serde(default)]
    pub soft_token: SoftTokenConfig,
    /// Call counts and latency histograms for Prometheus.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[soft_token]`: where the built-in soft tokens live and how many slots there are.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoftTokenConfig {
    /// The directory holding one sub-directory per token (`P11GATE_HOME`; default
    /// `$XDG_DATA_HOME/p11gate`, else `~/.local/share/p11gate`).
    pub home: Option<PathBuf>,
    /// How many slots (tokens) there are (`P11GATE_NUM_SLOTS`, default 1).
    pub slots: usize,
    /// Wrong PINs in a row before a PIN is locked.
    pub max_pin_failures: u32,
}

impl Default for SoftTokenConfig {
    fn default() -> Self {
        SoftTokenConfig {
            home: None,
            slots: 1,
            max_pin_failures: 10,
        }
    }
}

impl SoftTokenConfig {
    /// The token directories, one per slot: `<home>/token<N>`.
    pub fn token_dirs(&self) -> Vec<PathBuf> {
        let home = self.home.clone().unwrap_or_else(default_soft_home);
        (0..self.slots)
            .map(|n| home.join(format!("token{n}")))
            .collect()
    }
}

/// `$XDG_DATA_HOME/p11gate`, else `$HOME/.local/share/p11gate`, else `/var/lib/p11gate`.
pub fn default_soft_home() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("p11gate");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/p11gate"),
        None => PathBuf::from("/var/lib/p11gate"),
    }
}

/// `[metrics]`: call counts and latency histograms, written as Prometheus text into
/// node_exporter's textfile collector directory (see `crate::metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The directory the file goes into; no directory, no metrics (`P11GATE_METRICS`).
    pub dir: Option<Spanned<PathBuf>>,
    /// Seconds between two writes of the file, 1 to 3600 (`P11GATE_METRICS_INTERVAL`).
    pub interval_s: Spanned<u64>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            dir: None,
            interval_s: Spanned::new(0..0, 10),
        }
    }
}

impl MetricsConfig {
    /// The longest interval: a file older than a scrape or two looks dead.
    pub const MAX_INTERVAL_S: u64 = 3600;

    /// The directory, when metrics are on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(|d| d.get_ref().as_path())
    }

    /// Applies `P11GATE_METRICS` (`off`, or an absolute directory) and
    /// `P11GATE_METRICS_INTERVAL` (seconds).
    fn override_from(&mut self, getenv: &impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(spec) = getenv(env::METRICS).filter(|s| !s.trim().is_empty()) {
            let spec = spec.trim();
            self.dir = match spec {
                "off" => None,
                _ if Path::new(spec).is_absolute() => Some(Spanned::new(0..0, spec.into())),
                _ => {
                    return Err(Error::setup(format!(
                        "{}={spec:?} is neither off nor an absolute directory",
                        env::METRICS
                    )))
                }
            };
        }
        if let Some(n) = getenv(env::METRICS_INTERVAL).filter(|s| !s.trim().is_empty()) {
            match n.trim().parse::<u64>() {
                Ok(s) if (1..=Self::MAX_INTERVAL_S).contains(&s) => {
                    self.interval_s = Spanned::new(0..0, s)
                }
                _ => {
                    return Err(Error::setup(format!(
                        "{}={n:?} is not a number of seconds from 1 to {}",
                        env::METRICS_INTERVAL,
                        Self::MAX_INTERVAL_S
                    )))
                }
            }
        }
        Ok(())
    }

    fn check(&self, place: &Place<'_>) -> Result<()> {
        let interval = &self.interval_s;
        if !(1..=Self::MAX_INTERVAL_S).contains(interval.get_ref()) {
            return Err(place.at(
                interval.span(),
                format_args!(
                    "metrics interval_s = {}: it must be 1 to {}",
                    interval.get_ref(),
                    Self::MAX_INTERVAL_S
                ),
            ));
        }
        if let Some(dir) = &self.dir {
            if !dir.get_ref().is_absolute() {
                return Err(place.at(
                    dir.span(),
                    format_args!(
                        "metrics dir {} must be an absolute path",
                        dir.get_ref().display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `[audit]`: where audit records go and what happens when they cannot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `false`: no audit records at all.
    pub enabled: bool,
    /// RFC 5424 records to the local syslog socket.
    pub syslog: bool,
    pub syslog_socket: PathBuf,
    pub syslog_facility: Facility,
    pub syslog_format: SyslogFormat,
    /// JSON lines with the HMAC chain.
    pub file: Option<Spanned<PathBuf>>,
    /// The HMAC key of the file's chain.
    pub key_file: Option<PathBuf>,
    /// `fdatasync` the file after each batch of records.
    pub fsync: bool,
    /// Records held for the writer thread.
    pub queue: Spanned<usize>,
    pub on_overflow: OnOverflow,
    pub on_failure: OnFailure,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            syslog: true,
            syslog_socket: PathBuf::from("/dev/log"),
            syslog_facility: Facility::Authpriv,
            syslog_format: SyslogFormat::Rfc5424,
            file: None,
            key_file: None,
            fsync: true,
            queue: Spanned::new(0..0, 4096),
            on_overflow: OnOverflow::Wait,
            on_failure: OnFailure::Continue,
        }
    }
}

impl AuditConfig {
    /// Applies `P11GATE_AUDIT` (`off`, or a comma-separated list of `syslog`,
    /// `syslog:/path`, `file:/path`), which replaces the configured sinks.
    pub fn override_sinks(&mut self, spec: &str) -> Result<()> {
        let spec = spec.trim();
        if spec == "off" {
            self.enabled = false;
            return Ok(());
        }
        self.enabled = true;
        self.syslog = false;
        self.file = None;
        for part in spec.split(',').map(str::trim) {
            match part {
                "syslog" => self.syslog = true,
                _ if part.starts_with("syslog:") => {
                    self.syslog = true;
                    self.syslog_socket = PathBuf::from(&part["syslog:".len()..]);
                }
                _ if part.starts_with("file:") && part.len() > "file:".len() => {
                    self.file = Some(Spanned::new(0..0, PathBuf::from(&part["file:".len()..])));
                }
                _ => {
                    return Err(Error::setup(format!(
                        "{}={spec:?}: {part:?} is not off, syslog, syslog:/path or file:/path",
                        env::AUDIT
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Syslog facilities by their usual names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    Kern,
    User,
    Mail,
    Daemon,
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    Authpriv,
    Ftp,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl Facility {
    /// The facility's number (RFC 5424 §6.2.1).
    pub fn code(self) -> u8 {
        match self {
            Facility::Kern => 0,
            Facility::User => 1,
            Facility::Mail => 2,
            Facility::Daemon => 3,
            Facility::Auth => 4,
            Facility::Syslog => 5,
            Facility::Lpr => 6,
            Facility::News => 7,
            Facility::Uucp => 8,
            Facility::Cron => 9,
            Facility::Authpriv => 10,
            Facility::Ftp => 11,
            Facility::Local0 => 16,
            Facility::Local1 => 17,
            Facility::Local2 => 18,
            Facility::Local3 => 19,
            Facility::Local4 => 20,
            Facility::Local5 => 21,
            Facility::Local6 => 22,
            Facility::Local7 => 23,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFormat {
    Rfc5424,
    Rfc3164,
}

/// What a call does when the audit queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOverflow {
    /// The caller waits for room.
    Wait,
    /// The record is dropped, counted, and the count audited.
    Drop,
}

/// What calls do while an audit sink cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Keep working; the outage is logged and audited when the sink is back.
    Continue,
    /// Audited calls fail with `CKR_FUNCTION_FAILED`.
    Deny,
}

/// One vendor module.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// A short name for logs and `[[slot]]` entries.
    pub name: Spanned<String>,
    /// Path of the module's shared library (or `soft_token` instead).
    #[serde(default)]
    pub path: PathBuf,
    /// Instead of a module: a built-in soft token kept in this directory (one slot, id 0).
    #[serde(default)]
    pub soft_token: Option<PathBuf>,
    /// A call to this module that takes longer is logged (warn) with its function and time.
    #[serde(default)]
    pub slow_call_warn_ms: Option<u64>,
    /// After CKR_DEVICE_REMOVED, CKR_DEVICE_ERROR or (from a session call) CKR_TOKEN_NOT_PRESENT,
    /// re-initialise the module in the background and re-open (and, with a held credential,
    /// re-log-in) the app's sessions on it; calls fail fast with that code meanwhile
    /// (`router::reconnect`). Only for a module (`path`), not `soft_token`.
    #[serde(default)]
    pub reconnect: bool,
    /// Passed to the module's `C_Initialize` as `pReserved` (NSS-style module arguments).
    #[serde(default)]
    pub init_args: Option<String>,
    /// Named mechanism rule sets (see `policy::PROFILES`).
    #[serde(default)]
    pub profiles: Vec<Spanned<String>>,
    /// When present, only these mechanisms.
    #[serde(default)]
    pub allow: Option<Vec<Spanned<String>>>,
    /// Never these mechanisms.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
}

/// The mechanism rules of an upstream or a slot, as written.
#[derive(Debug, Clone, Copy)]
pub struct MechanismRules<'a> {
    pub profiles: &'a [Spanned<String>],
    pub allow: Option<&'a [Spanned<String>]>,
    pub deny: &'a [Spanned<String>],
}

impl UpstreamConfig {
    pub fn rules(&self) -> MechanismRules<'_> {
        MechanismRules {
            profiles: &self.profiles,
            allow: self.allow.as_deref(),
            deny: &self.deny,
        }
    }
}

/// One virtual slot.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// The slot id applications see; stable whatever the upstream does.
    pub id: Spanned<SlotNumber>,
    /// The `[[upstream]]` that serves it.
    pub upstream: Spanned<String>,
    #[serde(default)]
    pub token_label: Option<String>,
    #[serde(default)]
    pub token_serial: Option<String>,
    /// A PKCS#11 URI (RFC 7512) of token and slot attributes, all of which must match.
    #[serde(default, deserialize_with = "token_uri")]
    pub token_uri: Option<Spanned<Pkcs11Uri>>,
    #[serde(default)]
    pub upstream_slot: Option<SlotNumber>,
    /// A file holding the upstream's credential.
    #[serde(default)]
    pub credential_file: Option<Spanned<PathBuf>>,
    /// An environment variable holding the upstream's credential.
    #[serde(default)]
    pub credential_env: Option<String>,
    /// The argon2 hash of the PIN applications log in with (`p11gate hash-pin`).
    #[serde(default)]
    pub pin_hash: Option<Spanned<String>>,
    /// Named mechanism rule sets (see `policy::PROFILES`).
    #[serde(default)]
    pub profiles: Vec<Spanned<String>>,
    /// When present, only these mechanisms.
    #[serde(default)]
    pub allow: Option<Vec<Spanned<String>>>,
    /// Never these mechanisms.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    #[serde(default)]
    pub require_non_extractable: bool,
    #[serde(default)]
    pub read_only: bool,
}

/// One application.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    pub name: Spanned<String>,
    /// The virtual slot ids it may use, in the order `C_GetSlotList` lists them.
    #[serde(default)]
    pub slots: Vec<Spanned<SlotNumber>>,
}

/// A slot id in the file: an integer, or a string (decimal or `0x` hex) for ids beyond what
/// TOML integers hold (a full 64-bit CK_ULONG, as Luna uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotNumber(pub CK_SLOT_ID);

impl<'de> Deserialize<'de> for SlotNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SlotNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a slot id: a non-negative integer, or a string such as \"0x1f\" or \"2305843009213693953\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<SlotNumber, E> {
                u64::try_from(v)
                    .map(SlotNumber)
                    .map_err(|_| E::custom("a slot id cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<SlotNumber, E> {
                Ok(SlotNumber(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<SlotNumber, E> {
                let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => v.parse(),
                };
                parsed
                    .map(SlotNumber)
                    .map_err(|_| E::custom(format!("{v:?} is not a slot id")))
            }
        }
        d.deserialize_any(V)
    }
}

/// `token_uri`: a string, parsed as a PKCS#11 URI (the error names the key and says where in
/// the URI it is wrong).
fn token_uri<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Spanned<Pkcs11Uri>>, D::Error> {
    use zeroize::Zeroize;
    let text = Spanned::<String>::deserialize(d)?;
    let span = text.span();
    // It may hold a pin-value (refused later, but not left behind in memory meanwhile).
    let mut text = text.into_inner();
    let parsed = Pkcs11Uri::parse(&text);
    text.zeroize();
    parsed
        .map(|uri| Some(Spanned::new(span, uri)))
        .map_err(|e| de::Error::custom(format!("token_uri: {e}")))
}

/// How a slot finds its token on the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenTarget {
    Label(String),
    Serial(String),
    /// Token and slot attributes, all of which must match (checked by [`Config::parse`] to
    /// have no object, library or query attributes).
    Uri(Box<Pkcs11Uri>),
    Slot(CK_SLOT_ID),
}

impl TokenTarget {
    /// The URI a label, serial or URI target stands for: a label L is `pkcs11:token=L`, a
    /// serial S `pkcs11:serial=S`. `None` for a fixed upstream slot.
    pub fn uri(&self) -> Option<Pkcs11Uri> {
        match self {
            TokenTarget::Label(l) => Some(Pkcs11Uri::with(Attr::Token, l.as_bytes())),
            TokenTarget::Serial(s) => Some(Pkcs11Uri::with(Attr::Serial, s.as_bytes())),
            TokenTarget::Uri(u) => Some((**u).clone()),
            TokenTarget::Slot(_) => None,
        }
    }

    /// The token label the target names, if it names one.
    pub fn label(&self) -> Option<String> {
        match self {
            TokenTarget::Label(l) => Some(l.clone()),
            TokenTarget::Uri(u) => u
                .get(Attr::Token)
                .map(|l| String::from_utf8_lossy(l).into_owned()),
            TokenTarget::Serial(_) | TokenTarget::Slot(_) => None,
        }
    }
}

impl std::fmt::Display for TokenTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenTarget::Label(l) => write!(f, "token label {l:?}"),
            TokenTarget::Serial(s) => write!(f, "token serial {s:?}"),
            TokenTarget::Uri(u) => write!(f, "token {}", u.path_only()),
            TokenTarget::Slot(id) => write!(f, "upstream slot {id:#x}"),
        }
    }
}

/// Diagnostic log settings.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub level: Option<LogLevel>,
    #[serde(default)]
    pub target: Option<LogTarget>,
}

/// How much p11gate says. `trace` adds one line per call, never with a secret in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => return None,
        })
    }

    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Where diagnostics go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum LogTarget {
    /// The local syslog socket (`/dev/log`, or the path after `syslog:`), ident `p11gate`
    /// (the default).
    Syslog(Option<PathBuf>),
    /// The host process's standard error.
    Stderr,
    /// Appended to this file.
    File(PathBuf),
}

impl From<String> for LogTarget {
    fn from(s: String) -> Self {
        match s.as_str() {
            "syslog" => LogTarget::Syslog(None),
            _ if s.starts_with("syslog:") => {
                LogTarget::Syslog(Some(PathBuf::from(&s["syslog:".len()..])))
            }
            "stderr" => LogTarget::Stderr,
            _ => LogTarget::File(PathBuf::from(s)),
        }
    }
}

/// What [`Config::discover`] found, for log lines and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Read from this file (and perhaps overridden by the environment).
    File(PathBuf),
    /// No file at this path; only the environment and defaults.
    NoFile(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::File(p) | Source::NoFile(p) => p,
        }
    }
}

/// The application this process is, and the slots it may use (indices into `Config::slots`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub name: String,
    pub slots: Vec<usize>,
}

/// Errors tied to a place in the file: `config FILE:LINE: message`.
struct Place<'a> {
    origin: &'a Path,
    text: &'a str,
}

impl Place<'_> {
    fn at(&self, span: std::ops::Range<usize>, msg: impl std::fmt::Display) -> Error {
        Error::setup(format!(
            "config {}:{}: {msg}",
            self.origin.display(),
            self.line(span)
        ))
    }

    /// The line of an earlier entry whose key equals `this`, if there is one.
    fn earlier<T, K: PartialEq>(
        &self,
        earlier: &[T],
        key: impl Fn(&T) -> &Spanned<K>,
        this: &Spanned<K>,
    ) -> Option<usize> {
        earlier
            .iter()
            .map(key)
            .find(|k| k.get_ref() == this.get_ref())
            .map(|k| self.line(k.span()))
    }

    /// The 1-based line a span starts on.
    fn line(&self, span: std::ops::Range<usize>) -> usize {
        self.text[..span.start.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }
}

impl Config {
    /// Parses and checks a configuration file's text. `origin` names it in error messages.
    /// Credential files are checked on disk (they must exist and be private).
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let place = Place { origin, text };
        let config: Config = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => place.at(span, one_line(e.message())),
            None => Error::setup(format!(
                "config {}: {}",
                origin.display(),
                one_line(e.message())
            )),
        })?;
        config.check(&place)?;
        Ok(config)
    }

    /// Reads and checks the file at `path`; `None` when there is no file there.
    pub fn load(path: &Path) -> Result<Option<Config>> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let config = Config::parse(&text, path)?;
                config.check_file_permissions(path)?;
                Ok(Some(config))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::setup(format!(
                "config {}: cannot read: {e}",
                path.display()
            ))),
        }
    }

    /// Reads the configuration as the process's environment directs: the file named by
    /// `P11GATE_CONFIG` (default [`DEFAULT_CONFIG_PATH`]) when it exists, then the overrides
    /// `P11GATE_UPSTREAM`, `P11GATE_LOG` and `P11GATE_LOG_LEVEL`.
    pub fn discover(getenv: impl Fn(&str) -> Option<String>) -> Result<(Config, Source)> {
        let path = PathBuf::from(getenv(env::CONFIG).unwrap_or_else(|| DEFAULT_CONFIG_PATH.into()));
        let (mut config, source) = match Config::load(&path)? {
            Some(config) => (config, Source::File(path)),
            None => (Config::default(), Source::NoFile(path)),
        };
        if let Some(upstream) = getenv(env::UPSTREAM).filter(|s| !s.is_empty()) {
            if !config.upstreams.is_empty() {
                return Err(Error::setup(format!(
                    "{} is set, but {} also has [[upstream]] entries: use one or the other",
                    env::UPSTREAM,
                    source.path().display()
                )));
            }
            let path = PathBuf::from(upstream);
            config.upstreams = vec![UpstreamConfig {
                // Named after the file (libsofthsm2), for log lines.
                name: Spanned::new(
                    0..0,
                    path.file_stem()
                        .map_or_else(|| "upstream".into(), |s| s.to_string_lossy().into_owned()),
                ),
                path,
                soft_token: None,
                slow_call_warn_ms: None,
                reconnect: false,
                init_args: None,
                profiles: Vec::new(),
                allow: None,
                deny: Vec::new(),
            }];
        }
        if let Some(level) = getenv(env::LOG_LEVEL).filter(|s| !s.is_empty()) {
            config.log.level = Some(LogLevel::parse(&level).ok_or_else(|| {
                Error::setup(format!(
                    "{}={level:?} is not one of error, warn, info, debug, trace",
                    env::LOG_LEVEL
                ))
            })?);
        }
        if let Some(target) = getenv(env::LOG).filter(|s| !s.is_empty()) {
            config.log.target = Some(LogTarget::from(target));
        }
        if let Some(spec) = getenv(env::AUDIT).filter(|s| !s.is_empty()) {
            config.audit.override_sinks(&spec)?;
        }
        if let Some(key) = getenv(env::AUDIT_KEY).filter(|s| !s.is_empty()) {
            config.audit.key_file = Some(PathBuf::from(key));
        }
        if config.audit.enabled && config.audit.file.is_some() && config.audit.key_file.is_none() {
            return Err(Error::setup(format!(
                "the audit file needs a key for its HMAC chain: set key_file in [audit] or {} \
                 (p11gate audit keygen FILE makes one)",
                env::AUDIT_KEY
            )));
        }
        config.metrics.override_from(&getenv)?;
        if let Some(home) = getenv(env::HOME).filter(|s| !s.is_empty()) {
            config.soft_token.home = Some(PathBuf::from(home));
        }
        if let Some(n) = getenv(env::NUM_SLOTS).filter(|s| !s.is_empty()) {
            config.soft_token.slots = match n.trim().parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => n,
                _ => {
                    return Err(Error::setup(format!(
                        "{}={n:?} is not a number of slots from 1 to 64",
                        env::NUM_SLOTS
                    )))
                }
            };
        }
        if let Some(ms) = getenv(env::SLOW_CALL_WARN_MS).filter(|s| !s.is_empty()) {
            let ms: u64 = ms.trim().parse().map_err(|_| {
                Error::setup(format!(
                    "{}={ms:?} is not a number of milliseconds",
                    env::SLOW_CALL_WARN_MS
                ))
            })?;
            for u in &mut config.upstreams {
                u.slow_call_warn_ms = Some(ms);
            }
        }
        if config.upstreams.is_empty() && !config.slots.is_empty() {
            return Err(Error::setup(format!(
                "{}: [[slot]] entries need an [[upstream]] to map onto",
                source.path().display()
            )));
        }
        Ok((config, source))
    }

    /// The app this process is: `P11GATE_APP`, else `default_app`, else (with no `[[app]]`
    /// entries) every slot under the name "default".
    pub fn select_app(&self, from_env: Option<&str>, source: &Source) -> Result<App> {
        let name = from_env.filter(|s| !s.is_empty()).map(str::to_string);
        if self.apps.is_empty() {
            return Ok(App {
                name: name.unwrap_or_else(|| DEFAULT_APP_NAME.to_string()),
                slots: (0..self.slots.len()).collect(),
            });
        }
        let from_env = name.is_some();
        let name = name
            .or_else(|| self.default_app.as_ref().map(|d| d.get_ref().clone()))
            .ok_or_else(|| {
                Error::setup(format!(
                    "no app selected: set {} or default_app in {}",
                    env::APP,
                    source.path().display()
                ))
            })?;
        let app = self
            .apps
            .iter()
            .find(|a| *a.name.get_ref() == name)
            .ok_or_else(|| {
                Error::setup(if from_env {
                    format!(
                        "{}={name:?}: no [[app]] named {name:?} in {}",
                        env::APP,
                        source.path().display()
                    )
                } else {
                    format!(
                        "default_app {name:?}: no [[app]] named {name:?} in {}",
                        source.path().display()
                    )
                })
            })?;
        let slots = app
            .slots
            .iter()
            .filter_map(|id| {
                self.slots
                    .iter()
                    .position(|s| s.id.get_ref() == id.get_ref())
            })
            .collect();
        Ok(App { name, slots })
    }

    /// The index of the upstream named `name`.
    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| u.name.get_ref() == name)
    }

    /// The policy of slot `index`: its upstream's mechanism rules, then its own.
    pub fn slot_policy(&self, index: usize) -> SlotPolicy {
        let slot = &self.slots[index];
        let mut mechanisms = MechanismFilter::default();
        if let Some(u) = self.upstream_index(slot.upstream.get_ref()) {
            let name = self.upstreams[u].name.get_ref();
            add_rules(
                &mut mechanisms,
                self.upstreams[u].rules(),
                &format!("upstream {name:?}"),
            );
        }
        add_rules(
            &mut mechanisms,
            slot.rules(),
            &format!("slot {}", slot.id.get_ref().0),
        );
        SlotPolicy {
            mechanisms,
            require_non_extractable: slot.require_non_extractable,
            read_only: slot.read_only,
        }
    }

    /// The policy of an upstream's slots when they pass through unmapped.
    pub fn upstream_policy(&self, index: usize) -> SlotPolicy {
        let mut mechanisms = MechanismFilter::default();
        let u = &self.upstreams[index];
        add_rules(
            &mut mechanisms,
            u.rules(),
            &format!("upstream {:?}", u.name.get_ref()),
        );
        SlotPolicy {
            mechanisms,
            ..SlotPolicy::default()
        }
    }

    fn check(&self, place: &Place<'_>) -> Result<()> {
        if !(1..=64).contains(&self.soft_token.slots) {
            return Err(Error::setup(format!(
                "config {}: [soft_token] slots = {}: it must be 1 to 64",
                place.origin.display(),
                self.soft_token.slots
            )));
        }
        if self.soft_token.max_pin_failures == 0 {
            return Err(Error::setup(format!(
                "config {}: [soft_token] max_pin_failures must be at least 1",
                place.origin.display()
            )));
        }
        let queue = &self.audit.queue;
        if !(1..=1 << 20).contains(queue.get_ref()) {
            return Err(place.at(
                queue.span(),
                format_args!("audit queue = {}: it must be 1 to 1048576", queue.get_ref()),
            ));
        }
        self.metrics.check(place)?;
        if let (Some(file), None) = (&self.audit.file, &self.audit.key_file) {
            return Err(place.at(
                file.span(),
                "the audit file needs a key_file for its HMAC chain (p11gate audit keygen FILE makes one)",
            ));
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            match (u.path.as_os_str().is_empty(), &u.soft_token) {
                (true, None) => {
                    return Err(place.at(
                        u.name.span(),
                        format_args!(
                        "upstream {:?} needs a path (a PKCS#11 module) or soft_token (a directory)",
                        u.name.get_ref()
                    ),
                    ))
                }
                (false, Some(_)) => {
                    return Err(place.at(
                        u.name.span(),
                        format_args!(
                            "upstream {:?} has both a path and soft_token: it is one or the other",
                            u.name.get_ref()
                        ),
                    ))
                }
                (true, Some(_)) if u.reconnect => {
                    return Err(place.at(
                        u.name.span(),
                        format_args!(
                            "upstream {:?}: reconnect is for a module (path); a soft_token cannot go down",
                            u.name.get_ref()
                        ),
                    ))
                }
                _ => {}
            }
            if let Some(line) = place.earlier(&self.upstreams[..i], |o| &o.name, &u.name) {
                return Err(place.at(
                    u.name.span(),
                    format_args!(
                        "two [[upstream]] entries are named {:?} (first at line {line})",
                        u.name.get_ref()
                    ),
                ));
            }
            check_rules(u.rules(), place)?;
        }
        if self.slots.is_empty() && self.upstreams.len() > 1 {
            return Err(place.at(
                self.upstreams[1].name.span(),
                format_args!(
                    "{} [[upstream]] entries but no [[slot]]: several upstreams need [[slot]] entries saying which \
                     token each virtual slot is",
                    self.upstreams.len()
                ),
            ));
        }
        for (i, s) in self.slots.iter().enumerate() {
            let id = s.id.get_ref().0;
            if let Some(line) = place.earlier(&self.slots[..i], |o| &o.id, &s.id) {
                return Err(place.at(
                    s.id.span(),
                    format_args!("slot id {id} is used twice (first at line {line})"),
                ));
            }
            if self.upstream_index(s.upstream.get_ref()).is_none() {
                return Err(place.at(
                    s.upstream.span(),
                    format_args!(
                        "slot {id}: no [[upstream]] named {:?}",
                        s.upstream.get_ref()
                    ),
                ));
            }
            let targets = [
                s.token_label.is_some(),
                s.token_serial.is_some(),
                s.token_uri.is_some(),
                s.upstream_slot.is_some(),
            ];
            if targets.iter().filter(|t| **t).count() != 1 {
                return Err(place.at(
                    s.id.span(),
                    format_args!(
                        "slot {id}: give exactly one of token_label, token_serial, token_uri, \
                         upstream_slot"
                    ),
                ));
            }
            if let Some(uri) = &s.token_uri {
                check_target_uri(uri.get_ref())
                    .map_err(|e| place.at(uri.span(), format_args!("slot {id}: token_uri {e}")))?;
            }
            check_rules(s.rules(), place)?;
            self.check_credential(s, place)?;
        }
        for (i, a) in self.apps.iter().enumerate() {
            if let Some(line) = place.earlier(&self.apps[..i], |o| &o.name, &a.name) {
                return Err(place.at(
                    a.name.span(),
                    format_args!(
                        "two [[app]] entries are named {:?} (first at line {line})",
                        a.name.get_ref()
                    ),
                ));
            }
            for id in &a.slots {
                if !self.slots.iter().any(|s| s.id.get_ref() == id.get_ref()) {
                    return Err(place.at(
                        id.span(),
                        format_args!(
                            "app {:?}: no [[slot]] with id {}",
                            a.name.get_ref(),
                            id.get_ref().0
                        ),
                    ));
                }
            }
        }
        if let Some(d) = &self.default_app {
            if !self.apps.iter().any(|a| a.name.get_ref() == d.get_ref()) {
                return Err(place.at(
                    d.span(),
                    format_args!("default_app {:?}: no [[app]] with that name", d.get_ref()),
                ));
            }
        }
        Ok(())
    }

    fn check_credential(&self, s: &SlotConfig, place: &Place<'_>) -> Result<()> {
        let id = s.id.get_ref().0;
        if s.credential_file.is_some() && s.credential_env.is_some() {
            return Err(place.at(
                s.id.span(),
                format_args!("slot {id}: give credential_file or credential_env, not both"),
            ));
        }
        let has_credential = s.credential_file.is_some() || s.credential_env.is_some();
        match (&s.pin_hash, has_credential) {
            (None, true) => {
                return Err(place.at(
                    s.id.span(),
                    format_args!(
                        "slot {id}: a credential needs pin_hash (make one with `p11gate hash-pin`)"
                    ),
                ))
            }
            (Some(h), false) => {
                return Err(place.at(
                    h.span(),
                    format_args!(
                    "slot {id}: pin_hash needs a credential_file or credential_env to log in with"
                ),
                ))
            }
            (Some(h), true) => credentials::check_pin_hash(h.get_ref())
                .map_err(|e| place.at(h.span(), format_args!("slot {id}: {e}")))?,
            (None, false) => {}
        }
        if let Some(file) = &s.credential_file {
            if !file.get_ref().is_absolute() {
                return Err(place.at(
                    file.span(),
                    format_args!(
                        "slot {id}: credential file {} must be an absolute path",
                        file.get_ref().display()
                    ),
                ));
            }
            credentials::check_file_permissions(file.get_ref())
                .map_err(|e| place.at(file.span(), format_args!("slot {id}: {e}")))?;
        }
        Ok(())
    }

    /// A file that holds PIN hashes must not be readable by other users.
    fn check_file_permissions(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if !self.slots.iter().any(|s| s.pin_hash.is_some()) {
            return Ok(());
        }
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        if mode & 0o007 != 0 {
            return Err(Error::setup(format!(
                "config {}: holds PIN hashes and is accessible by others (mode {mode:04o}); chmod o-rwx it",
                path.display()
            )));
        }
        Ok(())
    }
}

impl SlotConfig {
    pub fn rules(&self) -> MechanismRules<'_> {
        MechanismRules {
            profiles: &self.profiles,
            allow: self.allow.as_deref(),
            deny: &self.deny,
        }
    }

    /// How this slot finds its token (checked to be exactly one by [`Config::parse`]).
    pub fn target(&self) -> TokenTarget {
        if let Some(l) = &self.token_label {
            return TokenTarget::Label(l.clone());
        }
        if let Some(s) = &self.token_serial {
            return TokenTarget::Serial(s.clone());
        }
        if let Some(u) = &self.token_uri {
            return TokenTarget::Uri(Box::new(u.get_ref().clone()));
        }
        TokenTarget::Slot(self.upstream_slot.unwrap_or(*self.id.get_ref()).0)
    }

    /// Where this slot's upstream credential comes from, if it holds one.
    pub fn credential_source(&self) -> Option<CredentialSource> {
        match (&self.credential_file, &self.credential_env) {
            (Some(f), _) => Some(CredentialSource::File(f.get_ref().clone())),
            (None, Some(e)) => Some(CredentialSource::Env(e.clone())),
            (None, None) => None,
        }
    }
}

/// What a slot's `token_uri` may say: which token (token and slot attributes), nothing else.
/// The error says why the rest does not belong there; it never repeats a value (a pin-value
/// is a PIN).
fn check_target_uri(uri: &Pkcs11Uri) -> std::result::Result<(), String> {
    uri.check_understood()?;
    if uri.get(Attr::PinValue).is_some() {
        return Err(
            "has a pin-value: a PIN does not belong in the configuration's URI (it would sit in \
             clear text wherever the URI is shown); give the upstream credential with \
             credential_file or credential_env, and pin_hash"
                .into(),
        );
    }
    if uri.get(Attr::PinSource).is_some() {
        return Err(
            "has a pin-source: p11gate reads the upstream credential from credential_file or \
             credential_env (with pin_hash)"
                .into(),
        );
    }
    if uri.get(Attr::ModuleName).is_some() || uri.get(Attr::ModulePath).is_some() {
        return Err(
            "has a module-name or module-path: the module is the [[upstream]]'s path".into(),
        );
    }
    if let Some((name, _)) = uri.vendor_query().first() {
        return Err(format!(
            "has the query attribute {name}: a slot target's URI names a token and has no query"
        ));
    }
    let object: Vec<&str> = uri
        .attrs()
        .filter(|a| a.is_object())
        .map(Attr::name)
        .collect();
    if !object.is_empty() {
        return Err(format!(
            "names an object ({}): a slot target names a token; which key to use is the \
             application's choice",
            object.join(", ")
        ));
    }
    let library: Vec<&str> = uri
        .attrs()
        .filter(|a| a.name().starts_with("library-"))
        .map(Attr::name)
        .collect();
    if !library.is_empty() {
        return Err(format!(
            "has {}: the library is the [[upstream]]; a slot target names a token on it by \
             token and slot attributes",
            library.join(", ")
        ));
    }
    if uri.attrs().next().is_none() {
        return Err(
            "names no token: give at least one of token, manufacturer, serial, model, \
             slot-description, slot-manufacturer, slot-id"
                .into(),
        );
    }
    for attr in uri.attrs() {
        let (Some(max), Some(value)) = (attr.field_len(), uri.get(attr)) else {
            continue;
        };
        if value.len() > max {
            return Err(format!(
                "has a {} of {} bytes, but PKCS#11 holds at most {max} there: it can never match",
                attr.name(),
                value.len()
            ));
        }
    }
    Ok(())
}

fn check_rules(rules: MechanismRules<'_>, place: &Place<'_>) -> Result<()> {
    for p in rules.profiles {
        if policy::profile(p.get_ref()).is_none() {
            let known: Vec<_> = PROFILES.iter().map(|p| p.name).collect();
            return Err(place.at(
                p.span(),
                format_args!(
                    "unknown profile {:?} (known: {})",
                    p.get_ref(),
                    known.join(", ")
                ),
            ));
        }
    }
    for m in rules.allow.into_iter().flatten().chain(rules.deny) {
        if policy::parse_mechanism(m.get_ref()).is_none() {
            return Err(place.at(
                m.span(),
                format_args!(
                    "unknown mechanism {:?} (use a spec name such as CKM_AES_GCM or a number such as 0x1087)",
                    m.get_ref()
                ),
            ));
        }
    }
    Ok(())
}

fn add_rules(filter: &mut MechanismFilter, rules: MechanismRules<'_>, owner: &str) {
    for p in rules.profiles {
        if let Some(profile) = policy::profile(p.get_ref()) {
            filter.deny(
                profile.denies,
                &format!("profile {:?} of {owner}", profile.name),
            );
        }
    }
    let parse = |list: &[Spanned<String>]| -> Vec<CK_MECHANISM_TYPE> {
        list.iter()
            .filter_map(|m| policy::parse_mechanism(m.get_ref()))
            .collect()
    };
    filter.deny(&parse(rules.deny), &format!("the deny list of {owner}"));
    if let Some(allow) = rules.allow {
        filter.allow_only(&parse(allow), &format!("the allow list of {owner}"));
    }
}

/// Error texts from the TOML parser may span lines; a log line must not.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("/c/p.toml"))
            .unwrap_err()
            .to_string()
    }

    const TWO: &str = "[[upstream]]\nname = \"a\"\npath = \"/a.so\"\n[[upstream]]\nname = \"b\"\npath = \"/b.so\"\n";

    #[test]
    fn parses_upstream_and_log() {
        let c = Config::parse(
            "[[upstream]]\nname = \"hsm\"\npath = \"/x.so\"\ninit_args = \"a=b\"\n[log]\nlevel = \"trace\"\ntarget = \"/tmp/p.log\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].name.get_ref(), "hsm");
        assert_eq!(c.upstreams[0].init_args.as_deref(), Some("a=b"));
        assert_eq!(c.log.level, Some(LogLevel::Trace));
        assert_eq!(c.log.target, Some(LogTarget::File("/tmp/p.log".into())));
        assert!(
            !c.upstreams[0].reconnect,
            "reconnect is off unless asked for"
        );
    }

    #[test]
    fn reconnect_is_for_modules_only() {
        let c = Config::parse(
            "[[upstream]]\nname = \"hsm\"\npath = \"/x.so\"\nreconnect = true\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(c.upstreams[0].reconnect);
        assert_eq!(
            err("[[upstream]]\nname = \"s\"\nsoft_token = \"/var/lib/t\"\nreconnect = true\n"),
            "config /c/p.toml:2: upstream \"s\": reconnect is for a module (path); a soft_token cannot go down"
        );
        assert!(
            err("[[upstream]]\nname = \"hsm\"\npath = \"/x.so\"\nreconnect = \"yes\"\n")
                .starts_with(
                    "config /c/p.toml:4: invalid type: string \"yes\", expected a boolean"
                ),
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        assert!(
            err("[[upstream]]\nname = \"a\"\npath = \"/x.so\"\npaht = 1\n")
                .starts_with("config /c/p.toml:4: unknown field `paht`")
        );
        let dup = format!("{TWO}[[slot]]\nid = 0\nupstream = \"a\"\ntoken_label = \"x\"\n[[slot]]\nid = 0\nupstream = \"b\"\nupstream_slot = 1\n");
        assert_eq!(
            err(&dup),
            "config /c/p.toml:12: slot id 0 is used twice (first at line 8)"
        );
        let unknown = format!("{TWO}[[slot]]\nid = 1\nupstream = \"z\"\ntoken_label = \"x\"\n");
        assert_eq!(
            err(&unknown),
            "config /c/p.toml:9: slot 1: no [[upstream]] named \"z\""
        );
        assert_eq!(
            err("[[upstream]]\nname = \"a\"\npath = \"/x.so\"\ndeny = [\"CKM_FOO\"]\n"),
            "config /c/p.toml:4: unknown mechanism \"CKM_FOO\" (use a spec name such as CKM_AES_GCM or a number such as 0x1087)"
        );
        assert_eq!(
            err("[[upstream]]\nname = \"a\"\npath = \"/x.so\"\nprofiles = [\"x\"]\n"),
            "config /c/p.toml:4: unknown profile \"x\" (known: no-aes-gcm, no-aes-cbc, fortanix-hsm-gateway)"
        );
        let two_targets = format!(
            "{TWO}[[slot]]\nid = 0\nupstream = \"a\"\ntoken_label = \"x\"\nupstream_slot = 3\n"
        );
        assert_eq!(err(&two_targets), "config /c/p.toml:8: slot 0: give exactly one of token_label, token_serial, token_uri, upstream_slot");
        let app = format!("{TWO}[[slot]]\nid = 0\nupstream = \"a\"\ntoken_label = \"x\"\n[[app]]\nname = \"v\"\nslots = [0, 7]\n");
        assert_eq!(
            err(&app),
            "config /c/p.toml:13: app \"v\": no [[slot]] with id 7"
        );
        assert!(err(TWO).starts_with("config /c/p.toml:5: 2 [[upstream]] entries but no [[slot]]"));
    }

    #[test]
    fn token_uri_targets_and_their_errors() {
        let slot = |uri: &str| {
            format!("[[upstream]]\nname = \"a\"\npath = \"/a.so\"\n[[slot]]\nid = 4\nupstream = \"a\"\ntoken_uri = \"{uri}\"\n")
        };
        let c = Config::parse(&slot("pkcs11:token=vault%20a;serial=4f2a"), Path::new("c")).unwrap();
        let target = c.slots[0].target();
        assert_eq!(
            target.to_string(),
            "token pkcs11:token=vault%20a;serial=4f2a"
        );
        assert_eq!(target.label().as_deref(), Some("vault a"));
        let uri = target.uri().unwrap();
        assert_eq!(uri.get(Attr::Token), Some(&b"vault a"[..]));
        assert_eq!(uri.get(Attr::Serial), Some(&b"4f2a"[..]));
        // The old keys are URIs too.
        assert_eq!(
            TokenTarget::Label("vault a".into())
                .uri()
                .unwrap()
                .canonical(),
            "pkcs11:token=vault%20a"
        );
        assert_eq!(
            TokenTarget::Serial("4f2a".into())
                .uri()
                .unwrap()
                .canonical(),
            "pkcs11:serial=4f2a"
        );
        assert_eq!(TokenTarget::Slot(3).uri(), None);
        // Slot attributes are fine: slot-id 9 on the upstream, if it has a token.
        Config::parse(&slot("pkcs11:slot-id=9;model=SoftHSM%20v2"), Path::new("c")).unwrap();

        let at = "config /c/p.toml:7: slot 4: token_uri";
        let cases = [
            (
                "pkcs11:token=vault a",
                "config /c/p.toml:7: token_uri: invalid PKCS#11 URI at character 19: in token: ' ' \
                 must be percent-encoded as %20"
                    .to_string(),
            ),
            (
                "pkcs11:tokn=vault",
                format!("{at} path attribute tokn is not one p11gate knows (did you mean token?): \
                 RFC 7512 reads it as a vendor attribute, and a URI with a path attribute its \
                 reader does not understand matches nothing"),
            ),
            (
                "pkcs11:token=vault?pin-value=sekrit-2219",
                format!("{at} has a pin-value: a PIN does not belong in the configuration's URI \
                 (it would sit in clear text wherever the URI is shown); give the upstream \
                 credential with credential_file or credential_env, and pin_hash"),
            ),
            (
                "pkcs11:token=vault?pin-source=file:/etc/pin",
                format!("{at} has a pin-source: p11gate reads the upstream credential from \
                 credential_file or credential_env (with pin_hash)"),
            ),
            (
                "pkcs11:token=vault?module-path=/usr/lib/x.so",
                format!("{at} has a module-name or module-path: the module is the [[upstream]]'s path"),
            ),
            (
                "pkcs11:token=vault?x-thing=1",
                format!("{at} has the query attribute x-thing: a slot target's URI names a token \
                 and has no query"),
            ),
            (
                "pkcs11:token=vault;object=k;id=%01",
                format!("{at} names an object (object, id): a slot target names a token; which \
                 key to use is the application's choice"),
            ),
            (
                "pkcs11:token=vault;library-version=2.6",
                format!("{at} has library-version: the library is the [[upstream]]; a slot target \
                 names a token on it by token and slot attributes"),
            ),
            (
                "pkcs11:",
                format!("{at} names no token: give at least one of token, manufacturer, serial, \
                 model, slot-description, slot-manufacturer, slot-id"),
            ),
            (
                "pkcs11:serial=12345678901234567",
                format!("{at} has a serial of 17 bytes, but PKCS#11 holds at most 16 there: it \
                 can never match"),
            ),
        ];
        for (uri, want) in cases {
            let e = err(&slot(uri));
            assert_eq!(e, want, "{uri}");
            assert!(!e.contains("sekrit"), "{e}");
        }
        let both = slot("pkcs11:token=v").replace("token_uri", "token_label = \"v\"\ntoken_uri");
        assert_eq!(
            err(&both),
            "config /c/p.toml:5: slot 4: give exactly one of token_label, token_serial, token_uri, upstream_slot"
        );
    }

    #[test]
    fn credentials_are_checked_on_disk() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cred = dir.path().join("a.pin");
        let hash = crate::credentials::hash_pin(b"app").unwrap();
        let text = |extra: &str| {
            format!("[[upstream]]\nname = \"a\"\npath = \"/a.so\"\n[[slot]]\nid = 0\nupstream = \"a\"\ntoken_label = \"x\"\n{extra}")
        };
        let with_file = text(&format!(
            "credential_file = \"{}\"\npin_hash = \"{hash}\"\n",
            cred.display()
        ));
        assert_eq!(
            err(&with_file),
            format!("config /c/p.toml:8: slot 0: credential file {}: No such file or directory (os error 2)", cred.display())
        );
        std::fs::write(&cred, "secret\n").unwrap();
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            err(&with_file),
            format!("config /c/p.toml:8: slot 0: credential file {} is accessible by others (mode 0644); chmod o-rwx it", cred.display())
        );
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o600)).unwrap();
        Config::parse(&with_file, Path::new("/c/p.toml")).unwrap();
        let no_hash = text(&format!("credential_file = \"{}\"\n", cred.display()));
        assert_eq!(err(&no_hash), "config /c/p.toml:5: slot 0: a credential needs pin_hash (make one with `p11gate hash-pin`)");
    }

    #[test]
    fn slot_ids_take_full_ulongs() {
        let c = Config::parse(
            "[[upstream]]\nname = \"a\"\npath = \"/a.so\"\n[[slot]]\nid = \"0xffffffffffffffff\"\nupstream = \"a\"\nupstream_slot = \"2305843009213693953\"\n",
            Path::new("c"),
        )
        .unwrap();
        assert_eq!(c.slots[0].id.get_ref().0, u64::MAX);
        assert_eq!(c.slots[0].target(), TokenTarget::Slot(2305843009213693953));
    }

    #[test]
    fn policies_combine_upstream_and_slot_rules() {
        let c = Config::parse(
            "[[upstream]]\nname = \"a\"\npath = \"/a.so\"\nprofiles = [\"no-aes-gcm\"]\n[[slot]]\nid = 3\nupstream = \"a\"\ntoken_label = \"x\"\ndeny = [\"0x1085\"]\nread_only = true\n",
            Path::new("c"),
        )
        .unwrap();
        let p = c.slot_policy(0);
        assert!(p.read_only);
        assert_eq!(
            p.mechanisms.refusal(pkcs11_sys::CKM_AES_GCM),
            Some("profile \"no-aes-gcm\" of upstream \"a\"")
        );
        assert_eq!(
            p.mechanisms.refusal(pkcs11_sys::CKM_AES_CBC_PAD),
            Some("the deny list of slot 3")
        );
        assert_eq!(p.mechanisms.refusal(pkcs11_sys::CKM_AES_CBC), None);
    }

    #[test]
    fn app_selection() {
        let text = format!(
            "default_app = \"a\"\n{TWO}[[slot]]\nid = 0\nupstream = \"a\"\ntoken_label = \"x\"\n[[slot]]\nid = 1\nupstream = \"b\"\ntoken_label = \"y\"\n[[app]]\nname = \"a\"\nslots = [0]\n[[app]]\nname = \"b\"\nslots = [1, 0]\n"
        );
        let c = Config::parse(&text, Path::new("/c/p.toml")).unwrap();
        let source = Source::File("/c/p.toml".into());
        assert_eq!(
            c.select_app(None, &source).unwrap(),
            App {
                name: "a".into(),
                slots: vec![0]
            }
        );
        assert_eq!(
            c.select_app(Some("b"), &source).unwrap(),
            App {
                name: "b".into(),
                slots: vec![1, 0]
            }
        );
        assert_eq!(
            c.select_app(Some("x"), &source).unwrap_err().to_string(),
            "P11GATE_APP=\"x\": no [[app]] named \"x\" in /c/p.toml"
        );
    }

    #[test]
    fn environment_overrides_and_missing_upstream() {
        let (c, source) = Config::discover(env_of(&[
            ("P11GATE_CONFIG", "/nonexistent/p.toml"),
            ("P11GATE_UPSTREAM", "/usr/lib/x.so"),
            ("P11GATE_LOG_LEVEL", "DEBUG"),
            ("P11GATE_LOG", "stderr"),
        ]))
        .unwrap();
        assert_eq!(source, Source::NoFile("/nonexistent/p.toml".into()));
        assert_eq!(c.upstreams[0].path, PathBuf::from("/usr/lib/x.so"));
        assert_eq!(c.upstreams[0].name.get_ref(), "x");
        assert_eq!(c.log.level, Some(LogLevel::Debug));
        assert_eq!(c.log.target, Some(LogTarget::Stderr));
        let e = Config::discover(env_of(&[
            ("P11GATE_CONFIG", "/nonexistent/p.toml"),
            ("P11GATE_LOG_LEVEL", "loud"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("P11GATE_LOG_LEVEL=\"loud\""), "{e}");
        // Nothing configured: the soft token, in P11GATE_HOME with P11GATE_NUM_SLOTS slots.
        let (c, _) = Config::discover(env_of(&[
            ("P11GATE_CONFIG", "/nonexistent/p.toml"),
            ("P11GATE_HOME", "/srv/tokens"),
            ("P11GATE_NUM_SLOTS", "2"),
        ]))
        .unwrap();
        assert!(c.upstreams.is_empty());
        assert_eq!(
            c.soft_token.token_dirs(),
            vec![
                PathBuf::from("/srv/tokens/token0"),
                PathBuf::from("/srv/tokens/token1")
            ]
        );
        let e = Config::discover(env_of(&[
            ("P11GATE_CONFIG", "/nonexistent/p.toml"),
            ("P11GATE_NUM_SLOTS", "0"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("P11GATE_NUM_SLOTS=\"0\""), "{e}");
    }
}

#[cfg(test)]
mod soft_token_tests {
    use super::*;

    #[test]
    fn soft_token_settings_are_checked() {
        let e = Config::parse("[soft_token]\nslots = 0\n", Path::new("c.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config c.toml: [soft_token] slots = 0: it must be 1 to 64"
        );
        let e =
            Config::parse("[soft_token]\nmax_pin_failures = 0\n", Path::new("c.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config c.toml: [soft_token] max_pin_failures must be at least 1"
        );
        let c = Config::parse(
            "[soft_token]\nhome = \"/srv/t\"\nslots = 3\nmax_pin_failures = 5\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(c.soft_token.token_dirs().len(), 3);
        assert_eq!(c.soft_token.max_pin_failures, 5);
        let e = Config::parse(
            "[[upstream]]\nname = \"x\"\npath = \"/x.so\"\nsoft_token = \"/t\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("upstream \"x\" has both a path and soft_token"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod metrics_tests {
    use super::*;
    use std::collections::HashMap;

    fn discover(file: &str, env_pairs: &[(&str, &str)]) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, file).unwrap();
        let mut map: HashMap<String, String> = env_pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.insert(env::CONFIG.into(), path.display().to_string());
        Config::discover(move |k| map.get(k).cloned()).map(|(c, _)| c)
    }

    #[test]
    fn metrics_are_off_by_default_and_set_by_file_or_environment() {
        let c = discover("", &[]).unwrap();
        assert_eq!(c.metrics.dir(), None);
        assert_eq!(*c.metrics.interval_s.get_ref(), 10);
        let c = discover("[metrics]\ndir = \"/var/lib/ne\"\ninterval_s = 30\n", &[]).unwrap();
        assert_eq!(c.metrics.dir(), Some(Path::new("/var/lib/ne")));
        assert_eq!(*c.metrics.interval_s.get_ref(), 30);
        let c = discover(
            "[metrics]\ndir = \"/var/lib/ne\"\n",
            &[(env::METRICS, "/tmp/m"), (env::METRICS_INTERVAL, "2")],
        )
        .unwrap();
        assert_eq!(c.metrics.dir(), Some(Path::new("/tmp/m")));
        assert_eq!(*c.metrics.interval_s.get_ref(), 2);
        let c = discover(
            "[metrics]\ndir = \"/var/lib/ne\"\n",
            &[(env::METRICS, "off")],
        )
        .unwrap();
        assert_eq!(c.metrics.dir(), None);
    }

    #[test]
    fn metrics_settings_are_checked() {
        let e = |file: &str, env_pairs: &[(&str, &str)]| {
            let e = discover(file, env_pairs).unwrap_err().to_string();
            // The file's temporary path varies: keep what follows it.
            e.split_once("p.toml")
                .map_or(e.clone(), |(_, rest)| rest.to_string())
        };
        assert_eq!(
            e("[metrics]\ninterval_s = 0\n", &[]),
            ":2: metrics interval_s = 0: it must be 1 to 3600"
        );
        assert_eq!(
            e("[metrics]\ndir = \"rel/dir\"\n", &[]),
            ":2: metrics dir rel/dir must be an absolute path"
        );
        let unknown = e("[metrics]\nfile = \"/x\"\n", &[]);
        assert!(unknown.starts_with(":2: unknown field `file`"), "{unknown}");
        assert_eq!(
            e("", &[(env::METRICS, "rel")]),
            "P11GATE_METRICS=\"rel\" is neither off nor an absolute directory"
        );
        assert_eq!(
            e("", &[(env::METRICS_INTERVAL, "0")]),
            "P11GATE_METRICS_INTERVAL=\"0\" is not a number of seconds from 1 to 3600"
        );
        assert_eq!(
            e("", &[(env::METRICS_INTERVAL, "10s")]),
            "P11GATE_METRICS_INTERVAL=\"10s\" is not a number of seconds from 1 to 3600"
        );
    }
}
