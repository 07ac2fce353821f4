//! The lifecycle: `C_Initialize`, `C_Finalize`, `fork()`, and the runtime every call uses.
//!
//! A [`Runtime`] is everything derived from one configuration for one app: backends, and the
//! router with its slots and their policies. It is
//! immutable once built (the session table inside is lock-free), and it is never freed: a call
//! still running on another thread while the application finalises keeps valid memory, and the
//! per-call cost of finding the runtime is one atomic load (no reference count, no lock, no
//! shared write). Runtimes are interned by configuration, so Vault's finalise/re-initialise
//! cycle after errors reuses the same one and memory stays flat; only a process that is
//! re-initialised under more than [`MAX_RUNTIMES`] distinct configurations is refused.
//!
//! `C_Initialize` and `C_Finalize` hold no lock while they call backends: a state word moves
//! from "not initialised" to "busy" to "runtime N" with compare-and-swap. After `fork()` the
//! child's hook bumps the fork generation and stores "not initialised" (atomic stores, safe in
//! a fork handler), so the child gets `CKR_CRYPTOKI_NOT_INITIALIZED` until it initialises
//! again. The fork itself waits until no call is inside p11gate (`ffi::fork_gate`), so the
//! child inherits no lock held by a thread that does not exist there.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use once_cell::sync::OnceCell;

use pkcs11_sys::*;

use crate::audit::{self, pipeline, record::now_us, record::Event, record::Record};
use crate::backend::upstream::Upstream;
use crate::backend::{Backend, InitArgs};
use crate::config::{App, Config, LogConfig, LogLevel, LogTarget, Source};
use crate::error::{Error, Result};
use crate::logging;
use crate::names::rv_name;
use crate::router::slots::SlotEntry;
use crate::router::Router;

/// How many distinct configurations one process may initialise with.
pub const MAX_RUNTIMES: usize = 32;
const NOT_INITIALIZED: usize = 0;
const BUSY: usize = usize::MAX;

/// Everything one configuration produces for one app.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    pub router: Router,
    /// Labels of objects and open operations, for audit records.
    pub audit: crate::audit::Auditor,
}

static RUNTIMES: [OnceCell<Runtime>; MAX_RUNTIMES] = [const { OnceCell::new() }; MAX_RUNTIMES];
/// How many of `RUNTIMES` are filled; only changed while the state is `BUSY`.
static CREATED: AtomicUsize = AtomicUsize::new(0);
/// `NOT_INITIALIZED`, `BUSY`, or the index of the current runtime plus one.
static STATE: AtomicUsize = AtomicUsize::new(NOT_INITIALIZED);
/// How many `fork()`s lie between the first process and this one (0 in the original process).
static FORK_GENERATION: AtomicU32 = AtomicU32::new(0);

/// The current runtime, or `CKR_CRYPTOKI_NOT_INITIALIZED`.
#[inline(always)]
pub fn current() -> Result<&'static Runtime> {
    let state = STATE.load(Ordering::Acquire);
    // NOT_INITIALIZED wraps to usize::MAX and BUSY to usize::MAX - 1: both out of range.
    RUNTIMES
        .get(state.wrapping_sub(1))
        .and_then(OnceCell::get)
        .ok_or(Error::NotInitialized)
}

/// `C_Initialize` after its arguments were checked.
pub fn initialize(args: InitArgs) -> Result<()> {
    if STATE
        .compare_exchange(NOT_INITIALIZED, BUSY, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(Error::AlreadyInitialized);
    }
    match start(args) {
        Ok(index) => {
            STATE.store(index + 1, Ordering::Release);
            Ok(())
        }
        Err(e) => {
            STATE.store(NOT_INITIALIZED, Ordering::Release);
            Err(e)
        }
    }
}

fn start(args: InitArgs) -> Result<usize> {
    let getenv = |k: &str| std::env::var(k).ok();
    let (config, source) = Config::discover(getenv).inspect_err(|e| {
        // The file could not be used: log where the environment says, then say why.
        logging::configure(&log_config_from_env(getenv));
        log::error!("{e}");
        audit_config_error(getenv, &e.to_string());
    })?;
    if let Some(problem) = logging::configure(&config.log) {
        log::warn!("{problem}");
    }
    let app = config
        .select_app(getenv(crate::config::env::APP).as_deref(), &source)
        .inspect_err(|e| log::error!("{e}"))?;
    let created_before = CREATED.load(Ordering::Acquire);
    let index = runtime_for(&config, &app).inspect_err(|e| {
        log::error!("{e}");
        audit_config_error(getenv, &e.to_string());
    })?;
    let rt = RUNTIMES[index].get().ok_or(Error::NotInitialized)?;
    let threads_allowed = args.flags & CKF_LIBRARY_CANT_CREATE_OS_THREADS == 0;
    pipeline::start(&rt.config.audit, rt.router.app(), threads_allowed).map_err(|e| {
        log::error!("audit: {e}");
        Error::setup(e)
    })?;
    if index >= created_before {
        for b in rt.router.backends() {
            let mut r = Record::note(Event::Load, rt.router.app().into());
            r.upstream = Some(b.name().into());
            r.path = b
                .source_path()
                .map(|p| p.display().to_string().into_boxed_str());
            r.msg = Some(b.describe().into());
            audit::note(r);
        }
    }
    // A fresh start: in a child after fork() these are the parent's sessions.
    rt.router.forget_sessions();
    let backends = rt.router.backends();
    let started = now_us();
    for (i, backend) in backends.iter().enumerate() {
        if let Err(e) = backend.initialize(&args) {
            log::error!(
                "upstream {}: C_Initialize returned {}",
                backend.name(),
                rv_name(e.rv())
            );
            for earlier in &backends[..i] {
                let _ = earlier.finalize();
            }
            audit_lifecycle(rt, Event::Call, "C_Initialize", started, e.rv(), None);
            stop_audit();
            return Err(e);
        }
    }
    if let Err(e) = rt.router.load_credentials() {
        log::error!("{e}");
        for backend in backends {
            let _ = backend.finalize();
        }
        audit_lifecycle(
            rt,
            Event::ConfigError,
            "C_Initialize",
            started,
            e.rv(),
            Some(e.to_string()),
        );
        stop_audit();
        return Err(e);
    }
    rt.router.watch_upstreams(threads_allowed);
    log_slots(rt);
    let description = format!(
        "config {}, upstreams {}",
        match &source {
            Source::File(p) => p.display().to_string(),
            Source::NoFile(p) => format!("{} (absent; environment only)", p.display()),
        },
        backends
            .iter()
            .map(|b| b.describe())
            .collect::<Vec<_>>()
            .join(", ")
    );
    crate::metrics::start(&rt.config.metrics, rt.router.app(), threads_allowed);
    log::info!("initialised for app {:?}: {description}", rt.router.app());
    audit_lifecycle(
        rt,
        Event::Init,
        "C_Initialize",
        started,
        CKR_OK,
        Some(description),
    );
    Ok(index)
}

/// Finds the runtime built from an equal configuration for the same app, or builds one.
fn runtime_for(config: &Config, app: &App) -> Result<usize> {
    let created = CREATED.load(Ordering::Acquire);
    let same = |rt: &Runtime| rt.config == *config && rt.router.app() == app.name;
    if let Some(i) = (0..created).find(|&i| RUNTIMES[i].get().is_some_and(same)) {
        return Ok(i);
    }
    if created == MAX_RUNTIMES {
        return Err(Error::setup(format!(
            "this process was already initialised under {MAX_RUNTIMES} different configurations; \
             restart it to use another"
        )));
    }
    let runtime = Runtime {
        config: config.clone(),
        router: build_router(config, app)?,
        audit: crate::audit::Auditor::default(),
    };
    RUNTIMES[created]
        .set(runtime)
        .map_err(|_| Error::setup("runtime slot already in use"))?;
    CREATED.store(created + 1, Ordering::Release);
    Ok(created)
}

/// Loads the upstreams the app's slots use and lays out its slots.
fn build_router(config: &Config, app: &App) -> Result<Router> {
    if config.upstreams.is_empty() {
        // Nothing configured: the built-in soft token, its slots passed through.
        let soft = crate::soft::backend::SoftBackend::new(
            "soft",
            config.soft_token.token_dirs(),
            config.soft_token.max_pin_failures,
        );
        let entry = SlotEntry::new(0, 0, None, crate::policy::SlotPolicy::default(), None);
        return Ok(Router::new(
            app.name.clone(),
            vec![Box::new(soft)],
            vec![entry],
        ));
    }
    if config.slots.is_empty() {
        // Passthrough: the one upstream's slots, unchanged (Config::parse allows one only).
        let upstream = load_backend(config, 0)?;
        let entry = SlotEntry::new(0, 0, None, config.upstream_policy(0), None);
        return Ok(Router::new(app.name.clone(), vec![upstream], vec![entry]));
    }
    // Only the upstreams this app uses: another app's HSM being down must not stop this one.
    let mut used: Vec<usize> = Vec::new();
    let mut entries = Vec::new();
    for &i in &app.slots {
        let slot = &config.slots[i];
        let upstream = config
            .upstream_index(slot.upstream.get_ref())
            .ok_or(Error::SlotIdInvalid)?;
        let backend = used.iter().position(|&u| u == upstream).unwrap_or_else(|| {
            used.push(upstream);
            used.len() - 1
        });
        let credential = slot
            .credential_source()
            .zip(slot.pin_hash.as_ref().map(|h| h.get_ref().clone()));
        entries.push(SlotEntry::new(
            slot.id.get_ref().0,
            backend,
            Some(slot.target()),
            config.slot_policy(i),
            credential,
        ));
    }
    let mut backends: Vec<Box<dyn Backend>> = Vec::new();
    for &u in &used {
        backends.push(load_backend(config, u)?);
    }
    Ok(Router::new(app.name.clone(), backends, entries))
}

/// The backend of `[[upstream]]` number `index`: its module, loaded, or its soft token.
pub fn load_backend(config: &Config, index: usize) -> Result<Box<dyn Backend>> {
    let u = &config.upstreams[index];
    Ok(match &u.soft_token {
        Some(dir) => Box::new(crate::soft::backend::SoftBackend::new(
            u.name.get_ref(),
            vec![dir.clone()],
            config.soft_token.max_pin_failures,
        )),
        None => Box::new(Upstream::load(u)?),
    })
}

/// One info line per mapped slot: where its token is now.
fn log_slots(rt: &Runtime) {
    for e in rt
        .router
        .slot_entries()
        .iter()
        .filter(|e| !e.is_passthrough())
    {
        let backend = &rt.router.backends()[e.backend];
        let target = e
            .target
            .as_ref()
            .map_or_else(String::new, |t| t.to_string());
        match e.find(&**backend) {
            Some(real) => log::info!(
                "slot {} -> {} {target}: upstream slot {real:#x}",
                e.id,
                backend.name()
            ),
            None => log::warn!(
                "slot {} -> {} {target}: not found (yet)",
                e.id,
                backend.name()
            ),
        }
    }
}

/// `C_Finalize`: closes p11gate's sessions and finalises the backends it initialised. The
/// first backend error is returned as the backend gave it; p11gate is finalised either way.
pub fn finalize() -> Result<()> {
    let state = STATE.load(Ordering::Acquire);
    if state == NOT_INITIALIZED || state == BUSY {
        return Err(Error::NotInitialized);
    }
    if STATE
        .compare_exchange(state, BUSY, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(Error::NotInitialized);
    }
    let rt = RUNTIMES[state - 1].get().ok_or(Error::NotInitialized)?;
    let started = now_us();
    let closed = rt.router.close_everything();
    audit_ended_by_finalize(rt, &closed, started);
    let mut result = Ok(());
    for backend in rt.router.backends() {
        if let Err(e) = backend.finalize() {
            log::warn!(
                "upstream {}: C_Finalize returned {}",
                backend.name(),
                rv_name(e.rv())
            );
            result = result.and(Err(e));
        }
    }
    let rv = result.as_ref().map_or_else(Error::rv, |_| CKR_OK);
    audit_lifecycle(rt, Event::Finalize, "C_Finalize", started, rv, None);
    stop_audit();
    crate::metrics::stop();
    rt.audit.keys.clear();
    STATE.store(NOT_INITIALIZED, Ordering::Release);
    log::info!("finalised");
    result
}

/// Stops the audit writer, waiting for it outside the fork gate: the writer may itself be
/// waiting at the gate for a fork that waits for this call.
fn stop_audit() {
    crate::ffi::fork_gate::outside(pipeline::stop);
}

/// Operations still open in the sessions `C_Finalize` closed are written, ended by it.
fn audit_ended_by_finalize(
    rt: &'static Runtime,
    closed: &[(CK_SESSION_HANDLE, crate::router::sessions::SessionRoute)],
    started: u64,
) {
    let entries = rt.router.slot_entries();
    let backends = rt.router.backends();
    for (handle, route) in closed {
        let (Some(entry), Some(backend)) =
            (entries.get(route.slot_index), backends.get(route.backend))
        else {
            continue;
        };
        let like = Record {
            time_us: started,
            app: rt.router.app().into(),
            slot: Some(audit::record::SlotRef {
                id: route.slot,
                upstream: backend.name(),
                entry,
            }),
            keys: Some((&rt.audit.keys, route.backend)),
            ..Record::default()
        };
        rt.audit.end_open_operations(&like, *handle, "finalize");
    }
}

/// An audit record for `C_Initialize` / `C_Finalize`.
fn audit_lifecycle(
    rt: &'static Runtime,
    event: Event,
    function: &'static str,
    started: u64,
    rv: CK_RV,
    msg: Option<String>,
) {
    let mut r = Record::note(event, rt.router.app().into());
    r.time_us = started;
    r.function = Some(function);
    r.rv = Some(rv);
    r.duration_us = Some(now_us().saturating_sub(started));
    r.msg = msg.map(String::into_boxed_str);
    audit::note(r);
}

/// Audits a configuration that could not be used, with the audit settings the environment
/// gives (the file's own could not be read), written before `C_Initialize` returns.
fn audit_config_error(getenv: impl Fn(&str) -> Option<String>, msg: &str) {
    let mut settings = crate::config::AuditConfig::default();
    if let Some(spec) = getenv(crate::config::env::AUDIT).filter(|s| !s.is_empty()) {
        if settings.override_sinks(&spec).is_err() {
            return;
        }
    }
    if let Some(key) = getenv(crate::config::env::AUDIT_KEY).filter(|s| !s.is_empty()) {
        settings.key_file = Some(std::path::PathBuf::from(key));
    }
    let app = getenv(crate::config::env::APP).unwrap_or_default();
    if pipeline::start_with(&settings, "", false, true).is_err() {
        return;
    }
    let mut r = Record::note(Event::ConfigError, app.into());
    r.function = Some("C_Initialize");
    r.rv = Some(CKR_GENERAL_ERROR);
    r.msg = Some(msg.into());
    audit::note(r);
    pipeline::stop();
}

/// Runs in the child right after `fork()` (from a `pthread_atfork` handler): only atomic
/// stores, which are async-signal-safe.
pub fn forked_child() {
    FORK_GENERATION.fetch_add(1, Ordering::AcqRel);
    STATE.store(NOT_INITIALIZED, Ordering::Release);
}

/// This process's fork generation: it changes in a child after `fork()`, never in the parent.
#[inline]
pub fn fork_generation() -> u32 {
    FORK_GENERATION.load(Ordering::Acquire)
}

/// Whether the upstream this process would use offers PKCS#11 3.0. Asked by
/// `C_GetInterfaceList` / `C_GetInterface`, which applications call before `C_Initialize`,
/// so the module may be loaded (not initialised) here. Any problem means "no": C_Initialize
/// reports it properly.
pub fn offers_3_0() -> bool {
    if let Ok(rt) = current() {
        return rt.router.backends().iter().all(|b| b.capabilities().v3_0);
    }
    let Ok((config, source)) = Config::discover(|k| std::env::var(k).ok()) else {
        return false;
    };
    let Ok(app) = config.select_app(
        std::env::var(crate::config::env::APP).ok().as_deref(),
        &source,
    ) else {
        return false;
    };
    let paths: Vec<&std::path::Path> = if config.slots.is_empty() {
        config.upstreams.iter().map(|u| u.path.as_path()).collect()
    } else {
        app.slots
            .iter()
            .filter_map(|&i| config.upstream_index(config.slots[i].upstream.get_ref()))
            .map(|u| config.upstreams[u].path.as_path())
            .collect()
    };
    !paths.is_empty()
        && paths
            .iter()
            .all(|p| crate::backend::upstream::Module::load(p).is_ok_and(|m| m.has_3_0()))
}

fn log_config_from_env(getenv: impl Fn(&str) -> Option<String>) -> LogConfig {
    use crate::config::env;
    LogConfig {
        level: getenv(env::LOG_LEVEL).and_then(|l| LogLevel::parse(&l)),
        target: getenv(env::LOG)
            .filter(|t| !t.is_empty())
            .map(LogTarget::from),
    }
}
