//! The checks that talk to the module named by `lib`, in the order Vault meets the same
//! problems: load, token, login, mechanism, keys, and a real round trip.
//!
//! The module is loaded and called through p11gate's own upstream loader
//! ([`Upstream::load_like_vault`]), so every call here is a safe [`Backend`] call; the arguments
//! are p11gate's own ([`crate::ffi::owned`]).

mod keys;
mod trial;

use pkcs11_sys::*;

use super::seal::{self, mechanism_label, uses_hmac, Settings, VAULT_MECHANISMS};
use super::{Gate, Report};
use crate::backend::upstream::Upstream;
use crate::backend::Backend;
use crate::error::Error;
use crate::ffi::args::InBuf;
use crate::names::rv_name;
use crate::router::slots::list_of;
use keys::Need;

/// The checks that follow `seal` when nothing more is known.
pub const AFTER_SEAL: &[&str] = &[
    "config",
    "library",
    "token",
    "login",
    "mechanism",
    "key",
    "round-trip",
];

/// The seal stanza as read (for PIN look-ups) and as interpreted.
#[derive(Debug)]
pub struct Seal {
    pub settings: Settings,
    pub read: seal::Seal,
}

type S = CK_SESSION_HANDLE;
type O = CK_OBJECT_HANDLE;

/// Runs every check after `seal` and `config`.
pub fn run(
    report: &mut Report,
    seal: &Seal,
    gate: Option<&Gate>,
    getenv: &dyn Fn(&str) -> Option<String>,
) {
    let s = &seal.settings;
    let plan = plan(s, None);
    let Some(up) = library(report, s) else {
        skip_rest(report, &plan, "the library did not load");
        return;
    };
    let (upstream, is_p11gate) = up;
    let mut d = Dialogue {
        up: &upstream,
        report,
        seal,
        gate: gate.filter(|_| is_p11gate),
        plan,
        getenv,
        session: None,
        token_label: String::new(),
        mechanisms: Vec::new(),
    };
    d.checks();
    if let Some(session) = d.session {
        let _ = upstream.logout(session);
        let _ = upstream.close_session(session);
    }
    let _ = upstream.finalize();
}

/// The checks after `config`, in order, for `mechanism` (None: what the stanza says, and with
/// no mechanism set, the HMAC checks when it names an HMAC key).
fn plan(s: &Settings, mechanism: Option<CK_MECHANISM_TYPE>) -> Vec<&'static str> {
    let hmac = mechanism
        .or(s.mechanism)
        .map_or(s.hmac_key_label.is_some(), uses_hmac);
    let mut plan = vec!["library", "token", "login", "mechanism"];
    if hmac {
        plan.push("hmac-mechanism");
    }
    plan.push("key");
    if s.default_key_label
        .as_ref()
        .is_some_and(|d| *d != s.key_label)
    {
        plan.push("default-key");
    }
    if hmac {
        plan.push("hmac-key");
        if s.hmac_default_key_label.is_some() && s.hmac_default_key_label != s.hmac_key_label {
            plan.push("hmac-default-key");
        }
    }
    plan.push("round-trip");
    if hmac {
        plan.push("hmac-round-trip");
    }
    plan
}

/// SKIP lines for every planned check not reported yet.
fn skip_rest(report: &mut Report, plan: &[&'static str], why: &str) {
    let done: Vec<&str> = report.checks.iter().map(|c| c.check).collect();
    let rest: Vec<&'static str> = plan.iter().copied().filter(|c| !done.contains(c)).collect();
    report.skip(&rest, why);
}

/// The `library` check: dlopen, C_GetFunctionList, C_Initialize as Vault calls them, then
/// C_GetInfo to see whether it is p11gate.
fn library(report: &mut Report, s: &Settings) -> Option<(Upstream, bool)> {
    const CHECK: &str = "library";
    let lib = s.lib.display();
    let up = match Upstream::load_like_vault(&s.lib) {
        Ok(u) => u,
        Err(why) => {
            // dlerror() names the file itself.
            let why = if why.starts_with(&lib.to_string()) {
                format!("dlopen: {why}")
            } else {
                format!("cannot load {lib}: {why}")
            };
            report.fail(
                CHECK,
                why,
                "set lib to where libp11gate.so is installed: /usr/lib/p11gate/libp11gate.so (.deb), $PREFIX/lib/p11gate/libp11gate.so (install.sh)",
            );
            return None;
        }
    };
    if let Err(e) = up.initialize_like_vault() {
        report.fail(
            CHECK,
            format!("{lib}: C_Initialize returned {}", rv_name(e.rv())),
            "p11gate could not start with this configuration: see the config line above and p11gate's log (P11GATE_LOG, [log] target)",
        );
        return None;
    }
    let info = match up.library_info() {
        Ok(i) => i,
        Err(e) => {
            report.fail(
                CHECK,
                format!("{lib}: C_GetInfo returned {}", rv_name(e.rv())),
                "this module does not answer like a PKCS#11 module",
            );
            let _ = up.finalize();
            return None;
        }
    };
    let maker = text(&info.manufacturerID);
    let description = text(&info.libraryDescription);
    let version = format!(
        "{}.{}",
        info.libraryVersion.major, info.libraryVersion.minor
    );
    let cryptoki = format!(
        "PKCS#11 {}.{}",
        info.cryptokiVersion.major, info.cryptokiVersion.minor
    );
    let is_p11gate = maker == crate::ffi::fns::general::MANUFACTURER;
    if is_p11gate {
        report.pass(
            CHECK,
            format!("{lib} loads (p11gate {version}, {cryptoki})"),
        );
    } else {
        report.warn(
            CHECK,
            format!("{lib} loads, but it is {maker:?} ({description} {version}, {cryptoki}), not p11gate"),
            "Vault would use this module directly, without p11gate's audit, slot mapping and policy: set lib = \"/usr/lib/p11gate/libp11gate.so\" and make this module an [[upstream]] in p11gate.toml",
        );
    }
    Some((up, is_p11gate))
}

/// A blank-padded PKCS#11 text field, trimmed.
fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .trim_end_matches([' ', '\0'])
        .to_string()
}

/// Where a failed call left things: which function, what it returned.
type Step<T> = std::result::Result<T, (&'static str, Error)>;

fn at<T>(function: &'static str, r: crate::error::Result<T>) -> Step<T> {
    r.map_err(|e| (function, e))
}

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    getrandom::getrandom(&mut b).expect("the operating system's random numbers");
    b
}

struct Dialogue<'a> {
    up: &'a Upstream,
    report: &'a mut Report,
    seal: &'a Seal,
    /// p11gate's configuration, when `lib` is p11gate.
    gate: Option<&'a Gate>,
    plan: Vec<&'static str>,
    getenv: &'a dyn Fn(&str) -> Option<String>,
    session: Option<S>,
    token_label: String,
    mechanisms: Vec<CK_MECHANISM_TYPE>,
}

impl Dialogue<'_> {
    fn settings(&self) -> &Settings {
        &self.seal.settings
    }

    fn stop(&mut self, why: &str) {
        skip_rest(self.report, &self.plan, why);
    }

    fn checks(&mut self) {
        let Some((slot, label)) = self.token() else {
            return self.stop("no token");
        };
        let Some(session) = self.login(slot, &label) else {
            return self.stop("not logged in");
        };
        self.token_label = label;
        self.session = Some(session);
        let Some(mechanism) = self.mechanism(slot) else {
            return self.stop("no usable mechanism");
        };
        self.plan = plan(self.settings(), Some(mechanism));
        let hmac = uses_hmac(mechanism);
        let hmac_ok = !hmac || self.hmac_mechanism(slot);
        let (key, hmac_key) = self.keys(slot, mechanism);
        match key {
            Some(k) => self.round_trip(session, mechanism, k),
            None => self.report.skip(&["round-trip"], "no key to try"),
        }
        if hmac {
            match (hmac_key, hmac_ok) {
                (Some(k), true) => self.hmac_round_trip(session, k),
                _ => self
                    .report
                    .skip(&["hmac-round-trip"], "no HMAC key or mechanism to try"),
            }
        }
    }

    /// The `token` check: the slot number or token label resolves, as Vault looks it up.
    fn token(&mut self) -> Option<(CK_SLOT_ID, String)> {
        const CHECK: &str = "token";
        let up = self.up;
        let slots = match list_of(|o| up.slot_list(false, o)) {
            Ok(s) => s,
            Err(e) => {
                self.report.fail(
                    CHECK,
                    format!("C_GetSlotList returned {}", rv_name(e.rv())),
                    "see p11gate's log for why the module cannot list slots",
                );
                return None;
            }
        };
        // Per slot: its token's label; None without a token, Some(None) for one that is not
        // initialised (it has no label yet, and Vault cannot use it).
        let labels: Vec<(CK_SLOT_ID, Option<Option<String>>)> = slots
            .iter()
            .map(|&slot| {
                let mut info = CK_TOKEN_INFO::default();
                let label = up
                    .token_info(slot, &mut info)
                    .ok()
                    .map(|_| (info.flags & CKF_TOKEN_INITIALIZED != 0).then(|| text(&info.label)));
                (slot, label)
            })
            .collect();
        let listing = if labels.is_empty() {
            "none".to_string()
        } else {
            labels
                .iter()
                .map(|(slot, l)| match l {
                    Some(Some(l)) => format!("slot {slot} {l:?}"),
                    Some(None) => format!("slot {slot} (token not initialised)"),
                    None => format!("slot {slot} (no token)"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let whose = match self.gate {
            Some(g) => format!("app {:?}'s slots", g.app.name),
            None => "the slots".to_string(),
        };
        let map_hint = |what: &str| {
            match self.gate {
            Some(g) => format!(
                "set {what} to one of those, or map the token to a slot of app {:?} in {} ([[slot]] token_label, [[app]] slots)",
                g.app.name,
                g.source.path().display()
            ),
            None => format!("set {what} to one of those"),
        }
        };
        let want_label = self.settings().token_label.clone();
        match self.settings().slot {
            Some(n) => {
                let Some((_, label)) = labels.iter().find(|(s, _)| *s == n) else {
                    self.report.fail(
                        CHECK,
                        format!("slot {n} is not one of {whose}: {listing}"),
                        map_hint("slot"),
                    );
                    return None;
                };
                let label = match label {
                    Some(Some(l)) => l.clone(),
                    Some(None) => {
                        self.report.fail(
                            CHECK,
                            format!("slot {n}: its token is not initialised"),
                            "initialise it (p11gate token init, softhsm2-util --init-token) with a label and a user PIN",
                        );
                        return None;
                    }
                    None => {
                        self.report.fail(
                            CHECK,
                            format!("slot {n} has no token (its token is not found)"),
                            "check that the token exists and is reachable (p11gate config check shows where each slot leads)",
                        );
                        return None;
                    }
                };
                if let Some(w) = want_label.filter(|w| *w != label) {
                    self.report.fail(
                        CHECK,
                        format!("slot {n} holds token {label:?}, not token_label {w:?}"),
                        "with both slot and token_label set, both must match: set one of them only",
                    );
                    return None;
                }
                self.report
                    .pass(CHECK, format!("slot {n}: token {label:?}"));
                Some((n, label))
            }
            None => {
                let want = want_label.unwrap_or_default();
                let found: Vec<CK_SLOT_ID> = labels
                    .iter()
                    .filter(|(_, l)| matches!(l, Some(Some(l)) if *l == want))
                    .map(|(s, _)| *s)
                    .collect();
                match found.first() {
                    Some(&slot) => {
                        let more = if found.len() > 1 {
                            format!(
                                " ({} tokens have this label: Vault takes the first)",
                                found.len()
                            )
                        } else {
                            String::new()
                        };
                        self.report
                            .pass(CHECK, format!("token_label {want:?} is slot {slot}{more}"));
                        Some((slot, want))
                    }
                    None => {
                        self.report.fail(
                            CHECK,
                            format!("no token labelled {want:?} among {whose}: {listing}"),
                            map_hint("token_label"),
                        );
                        None
                    }
                }
            }
        }
    }

    /// The `login` check: a session as Vault opens it, and C_Login with the PIN Vault sends.
    fn login(&mut self, slot: CK_SLOT_ID, label: &str) -> Option<S> {
        const CHECK: &str = "login";
        let source = self.settings().pin.clone();
        let shown = source.describe();
        let pin = match seal::read_pin(&self.seal.read, &source, self.getenv) {
            Ok(p) => p,
            Err(why) => {
                let hint = match &source {
                    seal::PinSource::Env(var) => format!(
                        "set {var} in the Vault service's environment (EnvironmentFile= in its systemd drop-in) and in this shell"
                    ),
                    seal::PinSource::File(_) => "make the PIN file exist and readable by the user Vault runs as".into(),
                    _ => "set pin = \"env://VAULT_HSM_PIN\" and VAULT_HSM_PIN in the service's EnvironmentFile".into(),
                };
                self.report.fail(CHECK, why, hint);
                return None;
            }
        };
        let rw = self.settings().force_rw_session;
        let flags = CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 };
        let session = match self.up.open_session(slot, flags) {
            Ok(s) => s,
            Err(e) => {
                self.report.fail(
                    CHECK,
                    format!(
                        "C_OpenSession ({}) on slot {slot} returned {}",
                        if rw { "read-write" } else { "read-only" },
                        rv_name(e.rv())
                    ),
                    "see p11gate's log for the upstream's answer",
                );
                return None;
            }
        };
        match self
            .up
            .login(session, CKU_USER, InBuf::from_slice(pin.as_bytes()))
        {
            Ok(()) | Err(Error::Backend(CKR_USER_ALREADY_LOGGED_IN)) => {
                self.report.pass(
                    CHECK,
                    format!("the PIN from {shown} logs in to token {label:?}"),
                );
                Some(session)
            }
            Err(e) => {
                let rv = e.rv();
                let hint = match rv {
                    CKR_PIN_INCORRECT => format!(
                        "give the token's user PIN in {shown}; where p11gate maps PINs (pin_hash), the app PIN that hash was made from"
                    ),
                    CKR_PIN_LOCKED => "the user PIN is locked after too many wrong PINs: the token's SO must unlock it".into(),
                    CKR_USER_PIN_NOT_INITIALIZED => "initialise the token's user PIN first (p11gate token init, softhsm2-util --init-token)".into(),
                    CKR_PIN_LEN_RANGE => "the PIN's length is outside what the token accepts".into(),
                    _ => "see p11gate's log for the upstream's answer".into(),
                };
                self.report.fail(
                    CHECK,
                    format!(
                        "{}: the PIN from {shown} does not log in to token {label:?}",
                        rv_name(rv)
                    ),
                    hint,
                );
                let _ = self.up.close_session(session);
                None
            }
        }
    }

    /// The p11gate policy of the app's virtual slot `slot`, when `lib` is p11gate.
    fn refusal(&self, slot: CK_SLOT_ID, m: CK_MECHANISM_TYPE) -> Option<String> {
        let g = self.gate?;
        let c = &g.config;
        let policy = if c.upstreams.is_empty() {
            return None;
        } else if c.slots.is_empty() {
            c.upstream_policy(0)
        } else {
            let i = g
                .app
                .slots
                .iter()
                .copied()
                .find(|&i| c.slots[i].id.get_ref().0 == slot)?;
            c.slot_policy(i)
        };
        policy.mechanisms.refusal(m).map(str::to_string)
    }

    /// Why `m` is not in the mechanism list: (detail, hint).
    fn absent(&self, slot: CK_SLOT_ID, m: CK_MECHANISM_TYPE, what: &str) -> (String, String) {
        let others: Vec<String> = VAULT_MECHANISMS
            .iter()
            .filter(|v| self.mechanisms.contains(v))
            .map(|v| format!("{v:#06x}"))
            .collect();
        let others = if others.is_empty() {
            String::new()
        } else {
            format!(", or set {what} to one it may use: {}", others.join(", "))
        };
        match self.refusal(slot, m) {
            Some(rule) => {
                let (app, file) = match self.gate {
                    Some(g) => (g.app.name.clone(), g.source.path().display().to_string()),
                    None => (String::new(), String::new()),
                };
                (
                    format!(
                        "{} is hidden by p11gate policy for app {app:?} on slot {slot} ({rule})",
                        mechanism_label(m)
                    ),
                    format!("allow it in {file}{others}"),
                )
            }
            None => (
                format!(
                    "{} is not supported by the backend (not in the mechanism list of slot {slot})",
                    mechanism_label(m)
                ),
                format!("use a token that does it{others}"),
            ),
        }
    }

    /// The `mechanism` check: listed, and allowed the operations Vault needs.
    fn mechanism(&mut self, slot: CK_SLOT_ID) -> Option<CK_MECHANISM_TYPE> {
        const CHECK: &str = "mechanism";
        let up = self.up;
        self.mechanisms = match list_of(|o| up.mechanism_list(slot, o)) {
            Ok(l) => l,
            Err(e) => {
                self.report.fail(
                    CHECK,
                    format!("C_GetMechanismList returned {}", rv_name(e.rv())),
                    "see p11gate's log for the upstream's answer",
                );
                return None;
            }
        };
        let (m, picked) = match self.settings().mechanism {
            Some(m) => (m, false),
            None => match VAULT_MECHANISMS
                .iter()
                .find(|v| self.mechanisms.contains(v))
            {
                Some(&m) => (m, true),
                None => {
                    let why: Vec<String> = VAULT_MECHANISMS
                        .iter()
                        .map(|&v| match self.refusal(slot, v) {
                            Some(_) => format!("{v:#06x} hidden by p11gate policy"),
                            None => format!("{v:#06x} not supported"),
                        })
                        .collect();
                    self.report.fail(
                        CHECK,
                        format!("none of the mechanisms Vault's seal uses is available: {}", why.join(", ")),
                        "allow one of them for this app in p11gate.toml, or use a token that does one",
                    );
                    return None;
                }
            },
        };
        if !self.mechanisms.contains(&m) {
            let (detail, hint) = self.absent(slot, m, "mechanism");
            self.report.fail(CHECK, detail, hint);
            return None;
        }
        let mut needs = vec![(CKF_DECRYPT, "decrypt")];
        if !(Need::of(m) == Need::Rsa && self.settings().rsa_encrypt_local) {
            needs.insert(0, (CKF_ENCRYPT, "encrypt"));
        }
        let how = if picked {
            let hidden: Vec<String> = VAULT_MECHANISMS
                .iter()
                .take_while(|v| **v != m)
                .filter(|&&v| self.refusal(slot, v).is_some())
                .map(|v| format!("{v:#06x}"))
                .collect();
            let hidden = if hidden.is_empty() {
                String::new()
            } else {
                format!("; {} hidden by p11gate policy", hidden.join(", "))
            };
            format!(" (Vault's pick: mechanism is not set{hidden})")
        } else {
            String::new()
        };
        self.flags(CHECK, slot, m, &needs, &how).then_some(m)
    }

    /// C_GetMechanismInfo allows each needed operation.
    fn flags(
        &mut self,
        check: &'static str,
        slot: CK_SLOT_ID,
        m: CK_MECHANISM_TYPE,
        needs: &[(CK_FLAGS, &str)],
        how: &str,
    ) -> bool {
        let mut info = CK_MECHANISM_INFO::default();
        if let Err(e) = self.up.mechanism_info(slot, m, &mut info) {
            self.report.fail(
                check,
                format!(
                    "{}: C_GetMechanismInfo returned {}",
                    mechanism_label(m),
                    rv_name(e.rv())
                ),
                "see p11gate's log for the upstream's answer",
            );
            return false;
        }
        let missing: Vec<&str> = needs
            .iter()
            .filter(|(f, _)| info.flags & f == 0)
            .map(|(_, n)| *n)
            .collect();
        let names: Vec<&str> = needs.iter().map(|(_, n)| *n).collect();
        if missing.is_empty() {
            self.report.pass(
                check,
                format!(
                    "{}: {} allowed{how}",
                    mechanism_label(m),
                    names.join(" and ")
                ),
            );
            true
        } else {
            self.report.fail(
                check,
                format!(
                    "{}: the token does not allow {} with it (C_GetMechanismInfo flags {:#x})",
                    mechanism_label(m),
                    missing.join(" and "),
                    info.flags
                ),
                "use a token (or mechanism) that does",
            );
            false
        }
    }

    /// The `hmac-mechanism` check (CBC modes).
    fn hmac_mechanism(&mut self, slot: CK_SLOT_ID) -> bool {
        const CHECK: &str = "hmac-mechanism";
        let m = self.settings().hmac_mechanism;
        if !self.mechanisms.contains(&m) {
            let (detail, hint) = self.absent(slot, m, "hmac_mechanism");
            self.report.fail(CHECK, detail, hint);
            return false;
        }
        self.flags(
            CHECK,
            slot,
            m,
            &[(CKF_SIGN, "sign"), (CKF_VERIFY, "verify")],
            "",
        )
    }
}
