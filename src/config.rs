//! Configuration: a TOML file plus environment overrides.
//!
//! Parsing ([`Config::parse`]) is separate from discovery ([`Config::discover`], which reads the
//! environment and the file system), so both can be tested on their own. The file format is the
//! one later capabilities extend (`[[slot]]`, `[[app]]`, `[policy]`, `[audit]`); unknown keys are
//! refused so that a typo never silently changes behaviour.
//!
//! ```toml
//! [[upstream]]
//! name = "hsm"                                   # used in logs
//! path = "/usr/lib/softhsm/libsofthsm2.so"       # the vendor module
//! # init_args = "configdir=/etc/vendor"          # passed as pReserved, for modules that want it
//!
//! [log]
//! level = "info"                                 # error | warn | info | debug | trace
//! target = "syslog"                              # syslog | stderr | /path/to/file
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where the configuration file is when `P11GATE_CONFIG` does not say.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/p11gate/p11gate.toml";

/// Environment variables p11gate reads (also documented in `include/p11gate.h`).
pub mod env {
    pub const CONFIG: &str = "P11GATE_CONFIG";
    pub const UPSTREAM: &str = "P11GATE_UPSTREAM";
    pub const LOG: &str = "P11GATE_LOG";
    pub const LOG_LEVEL: &str = "P11GATE_LOG_LEVEL";
}

/// The whole configuration, after environment overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Vendor modules p11gate forwards to.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// Diagnostics (not the audit trail).
    #[serde(default)]
    pub log: LogConfig,
}

/// One vendor module.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// A short name for logs.
    pub name: String,
    /// Path of the module's shared library.
    pub path: PathBuf,
    /// Passed to the module's `C_Initialize` as `pReserved` (NSS-style module arguments).
    #[serde(default)]
    pub init_args: Option<String>,
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
    /// The local syslog socket, ident `p11gate` (the default).
    Syslog,
    /// The host process's standard error.
    Stderr,
    /// Appended to this file.
    File(PathBuf),
}

impl From<String> for LogTarget {
    fn from(s: String) -> Self {
        match s.as_str() {
            "syslog" => LogTarget::Syslog,
            "stderr" => LogTarget::Stderr,
            _ => LogTarget::File(PathBuf::from(s)),
        }
    }
}

/// What [`Config::discover`] found, for the log line C_Initialize writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Read from this file (and perhaps overridden by the environment).
    File(PathBuf),
    /// No file at this path; only the environment and defaults.
    NoFile(PathBuf),
}

impl Config {
    /// Parses a configuration file's text. `origin` names it in error messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            Error::setup(format!(
                "config {}: {}",
                origin.display(),
                one_line(&e.to_string())
            ))
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// Reads the configuration as the process's environment directs: the file named by
    /// `P11GATE_CONFIG` (default [`DEFAULT_CONFIG_PATH`]) when it exists, then the overrides
    /// `P11GATE_UPSTREAM`, `P11GATE_LOG` and `P11GATE_LOG_LEVEL`.
    pub fn discover(getenv: impl Fn(&str) -> Option<String>) -> Result<(Config, Source)> {
        let path = PathBuf::from(getenv(env::CONFIG).unwrap_or_else(|| DEFAULT_CONFIG_PATH.into()));
        let (mut config, source) = match std::fs::read_to_string(&path) {
            Ok(text) => (Config::parse(&text, &path)?, Source::File(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (Config::default(), Source::NoFile(path))
            }
            Err(e) => {
                return Err(Error::setup(format!(
                    "config {}: cannot read: {e}",
                    path.display()
                )))
            }
        };
        if let Some(upstream) = getenv(env::UPSTREAM).filter(|s| !s.is_empty()) {
            let path = PathBuf::from(upstream);
            config.upstreams = vec![UpstreamConfig {
                // Named after the file (libsofthsm2), for log lines.
                name: path
                    .file_stem()
                    .map_or_else(|| "upstream".into(), |s| s.to_string_lossy().into_owned()),
                path,
                init_args: None,
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
        Ok((config, source))
    }

    /// The one upstream this version serves. Slot mapping across several upstreams is a later
    /// capability; until then a second upstream is refused rather than silently ignored.
    pub fn upstream(&self, source: &Source) -> Result<&UpstreamConfig> {
        match self.upstreams.as_slice() {
            [one] => Ok(one),
            [] => Err(Error::setup(format!(
                "no upstream configured: set {} to a PKCS#11 module, or add an [[upstream]] with a path to {} \
                 (this build has no built-in soft token yet)",
                env::UPSTREAM,
                match source {
                    Source::File(p) | Source::NoFile(p) => p.display().to_string(),
                }
            ))),
            more => Err(Error::setup(format!(
                "{} [[upstream]] entries configured, but this version serves exactly one \
                 (several upstreams need [[slot]] mapping, not yet available)",
                more.len()
            ))),
        }
    }

    fn validate(&self, origin: &Path) -> Result<()> {
        for (i, u) in self.upstreams.iter().enumerate() {
            if u.path.as_os_str().is_empty() {
                return Err(Error::setup(format!(
                    "config {}: [[upstream]] #{} ({:?}) has an empty path",
                    origin.display(),
                    i + 1,
                    u.name
                )));
            }
            if self.upstreams[..i].iter().any(|o| o.name == u.name) {
                return Err(Error::setup(format!(
                    "config {}: two [[upstream]] entries are named {:?}",
                    origin.display(),
                    u.name
                )));
            }
        }
        Ok(())
    }
}

/// Error texts from the TOML parser span lines; a log line must not.
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

    #[test]
    fn parses_upstream_and_log() {
        let c = Config::parse(
            "[[upstream]]\nname = \"hsm\"\npath = \"/x.so\"\ninit_args = \"a=b\"\n[log]\nlevel = \"trace\"\ntarget = \"/tmp/p.log\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(
            c.upstreams,
            vec![UpstreamConfig {
                name: "hsm".into(),
                path: "/x.so".into(),
                init_args: Some("a=b".into())
            }]
        );
        assert_eq!(c.log.level, Some(LogLevel::Trace));
        assert_eq!(c.log.target, Some(LogTarget::File("/tmp/p.log".into())));
    }

    #[test]
    fn unknown_keys_are_refused_with_the_file_named() {
        let e = Config::parse(
            "[[upstream]]\nname = \"a\"\npath = \"/x.so\"\npaht = 1\n",
            Path::new("/etc/p.toml"),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("config /etc/p.toml: "), "{msg}");
        assert!(msg.contains("paht"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn duplicate_names_and_empty_paths_are_refused() {
        let dup = "[[upstream]]\nname = \"a\"\npath = \"/x.so\"\n[[upstream]]\nname = \"a\"\npath = \"/y.so\"\n";
        assert!(Config::parse(dup, Path::new("c"))
            .unwrap_err()
            .to_string()
            .contains("two [[upstream]] entries"));
        let empty = "[[upstream]]\nname = \"a\"\npath = \"\"\n";
        assert!(Config::parse(empty, Path::new("c"))
            .unwrap_err()
            .to_string()
            .contains("empty path"));
    }

    #[test]
    fn environment_overrides_the_file_and_missing_file_is_not_an_error() {
        let (c, source) = Config::discover(env_of(&[
            ("P11GATE_CONFIG", "/nonexistent/p.toml"),
            ("P11GATE_UPSTREAM", "/usr/lib/x.so"),
            ("P11GATE_LOG_LEVEL", "DEBUG"),
            ("P11GATE_LOG", "stderr"),
        ]))
        .unwrap();
        assert_eq!(source, Source::NoFile("/nonexistent/p.toml".into()));
        assert_eq!(
            c.upstream(&source).unwrap().path,
            PathBuf::from("/usr/lib/x.so")
        );
        assert_eq!(c.log.level, Some(LogLevel::Debug));
        assert_eq!(c.log.target, Some(LogTarget::Stderr));
    }

    #[test]
    fn bad_level_and_missing_upstream_say_what_is_wrong() {
        let e = Config::discover(env_of(&[
            ("P11GATE_CONFIG", "/nonexistent/p.toml"),
            ("P11GATE_LOG_LEVEL", "loud"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("P11GATE_LOG_LEVEL=\"loud\""), "{e}");
        let (c, source) =
            Config::discover(env_of(&[("P11GATE_CONFIG", "/nonexistent/p.toml")])).unwrap();
        let e = c.upstream(&source).unwrap_err().to_string();
        assert!(
            e.starts_with("no upstream configured: set P11GATE_UPSTREAM"),
            "{e}"
        );
        assert!(e.contains("/nonexistent/p.toml"), "{e}");
    }
}
