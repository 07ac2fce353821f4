//! The soak: 32 threads drive a Vault-like mix of calls through `libp11gate.so` for a set time,
//! to SoftHSMv2 (`softhsm` backend: p11gate with `P11GATE_UPSTREAM`) or to p11gate's built-in
//! soft token (`soft` backend: `P11GATE_HOME`, no upstream), and the run is judged on errors,
//! resident memory and open file descriptors. Not a CI test: `scripts/soak.sh` is the command
//! operators run (10 minutes per backend by default); `tests/soak_short.rs` runs this same code
//! (it includes this file as a module and calls [`run`]) for 60 s per backend in CI.
//!
//! What it does, in one process:
//! - loads the module, `C_Initialize` with `CKF_OS_LOCKING_OK`, finds the token by label, opens
//!   a session and logs in as the user;
//! - generates the keys on the token, with Vault's templates (token, private, sensitive, not
//!   extractable) and labels unique to the run (`soak-PID-TIME-aes` ...): an AES-256 key (for
//!   GCM and CBC-PAD), a 32-byte generic secret (HMAC-SHA256) and an RSA-2048 key pair; finds
//!   each by label; destroys them at the end;
//! - runs `threads` (32) worker threads; each has its own session, and one operation in 8 (but
//!   the session kind) uses a session taken from a shared pool of 4 instead, so sessions move
//!   between threads. The weighted mix (per 100 operations):
//!   - 15 `find`: `C_FindObjectsInit` (CKA_LABEL + CKA_CLASS of one of the 4 keys) +
//!     `C_FindObjects` + `C_FindObjectsFinal`; exactly the known handle must come back;
//!   - 30 `gcm`: seal and open, AES-256-GCM with a fresh 12-byte IV (thread number and counter)
//!     and a 128-bit tag, 1..512 random bytes; the plaintext must come back;
//!   - 25 `cbc_hmac`: Vault's 0x1085 seal wrap: AES-256-CBC-PAD with a fresh random 16-byte IV,
//!     HMAC-SHA256 `C_Sign` over IV || ciphertext; then `C_Verify` and `C_Decrypt`; the
//!     plaintext must come back;
//!   - 2 `rsa_oaep`: a random 32-byte data key encrypted with the public key and unwrapped with
//!     the private key (OAEP, SHA-1, MGF1-SHA1: what SoftHSMv2 offers), compared;
//!   - 20 `random`: `C_GenerateRandom` of 32 bytes, which must differ from the thread's last;
//!   - 8 `session`: `C_OpenSession` (RW) + `C_GetSessionInfo` (the slot, and
//!     `CKS_RW_USER_FUNCTIONS`: the token's login holds) + `C_CloseSession`.
//!
//!   Any CK_RV other than CKR_OK, or a wrong length, handle or round trip, is an error, counted
//!   by kind and by what failed; the thread then replaces the session it used.
//! - after the warm-up (the first twelfth of the run, 10 to 30 s: RSS was seen to climb for
//!   the first 5-10 s of 32 threads, then to stay within about 1%), every 30 s and at the end it
//!   pauses all workers between two operations (so no call is in flight) and samples `VmRSS`
//!   and the number of open descriptors (`/proc/self/fd`), and prints the interval's ops/s;
//! - at the end: ops/s per kind over the measured time (warm-up excluded), error counts, RSS
//!   and descriptors at start (after warm-up), mid and end with their growth; the verdict:
//!   zero errors, descriptors equal at start and end, RSS growth under 1% (or under 256 KiB);
//! - with an audit file (`P11GATE_AUDIT=file:...`, `P11GATE_AUDIT_KEY`): after `C_Finalize`
//!   (which drains the audit queue) it runs `p11gate audit verify` on it and counts its
//!   records: the `C_GenerateRandom`, `C_Sign` and `C_Verify` records must be exactly as many
//!   as the calls made (nothing lost or duplicated under load), and the verified count must be
//!   the file's line count.
//!
//! Usage: `soak [softhsm|soft]` (or `P11GATE_SOAK_BACKEND`; default `softhsm`). Environment:
//! - `P11GATE_SOAK_MODULE`: the `libp11gate.so` (default: the release one beside this binary);
//! - `P11GATE_SOAK_TOKEN` (default `soak`), `P11GATE_SOAK_PIN` (the user PIN; required);
//! - `P11GATE_SOAK_SECONDS` (default 600, warm-up included), `P11GATE_SOAK_THREADS` (32),
//!   `P11GATE_SOAK_REPORT_SECONDS` (30);
//! - `P11GATE_SOAK_P11GATE`: the `p11gate` program for `audit verify` (default: beside the
//!   module);
//! - p11gate's own: `softhsm` sets `P11GATE_UPSTREAM` to Debian's SoftHSMv2 if unset (and reads
//!   `SOFTHSM2_CONF`); `soft` removes `P11GATE_UPSTREAM` and needs `P11GATE_HOME`.
//!
//! Prints one `SOAK-RESULT key=value ...` line last. Exit status: 0 when every target is met,
//! 3 when one is missed, 1 when the soak could not run.

#[allow(unused_macros)]
mod shared;

use shared::{attr, attr_bytes, load};

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pkcs11_sys::*;

/// Calls a function of the function list `$fl`; `CKR_FUNCTION_NOT_SUPPORTED` if it has none.
macro_rules! call {
    ($fl:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        match $fl.$f {
            None => CKR_FUNCTION_NOT_SUPPORTED,
            Some(f) => {
                // SAFETY: `f` comes from the module's own CK_FUNCTION_LIST, the module stays
                // loaded for the life of the process (never unloaded), and every pointer argument
                // points to a live local or buffer that is valid, and as large as the accompanying
                // length says, for the duration of the call.
                unsafe { f($($arg),*) }
            }
        }
    }};
}

/// Operations per 100, in [`Kind::ALL`] order.
const WEIGHTS: [u32; 6] = [15, 30, 25, 2, 20, 8];
/// One operation in this many (but `session`) runs on a session from the shared pool.
const POOL_EVERY: u64 = 8;
const POOL_SESSIONS: usize = 4;
/// RSS may grow by less than this percentage, or by less than [`RSS_SLACK_KIB`].
pub const RSS_GROWTH_LIMIT_PCT: f64 = 1.0;
pub const RSS_SLACK_KIB: i64 = 256;
const MAX_PLAIN: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Find,
    Gcm,
    CbcHmac,
    RsaOaep,
    Random,
    Session,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Find,
        Kind::Gcm,
        Kind::CbcHmac,
        Kind::RsaOaep,
        Kind::Random,
        Kind::Session,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Kind::Find => "find",
            Kind::Gcm => "gcm",
            Kind::CbcHmac => "cbc_hmac",
            Kind::RsaOaep => "rsa_oaep",
            Kind::Random => "random",
            Kind::Session => "session",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::Find => "find by label (init/find/final)",
            Kind::Gcm => "AES-256-GCM seal + open",
            Kind::CbcHmac => "CBC-PAD + HMAC seal, verify + open",
            Kind::RsaOaep => "RSA-2048 OAEP wrap + unwrap 32 B",
            Kind::Random => "C_GenerateRandom 32 B",
            Kind::Session => "open / session info / close",
        }
    }

    fn pick(r: u64) -> Kind {
        let mut x = (r % 100) as u32;
        for (k, w) in Kind::ALL.into_iter().zip(WEIGHTS) {
            if x < w {
                return k;
            }
            x -= w;
        }
        unreachable!("the weights sum to 100")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    SoftHsm,
    Soft,
}

impl Backend {
    pub fn id(self) -> &'static str {
        match self {
            Backend::SoftHsm => "softhsm",
            Backend::Soft => "soft",
        }
    }

    pub fn from_id(s: &str) -> Option<Backend> {
        match s {
            "softhsm" => Some(Backend::SoftHsm),
            "soft" => Some(Backend::Soft),
            _ => None,
        }
    }
}

/// What one soak run does.
#[derive(Clone, Debug)]
pub struct Config {
    pub backend: Backend,
    pub module: PathBuf,
    pub token: String,
    pub pin: String,
    /// The whole run, warm-up included.
    pub seconds: u64,
    pub threads: usize,
    pub report_seconds: u64,
    /// The audit file and its key, to verify and count after the run.
    pub audit: Option<(PathBuf, PathBuf)>,
    /// The `p11gate` program (for `audit verify`).
    pub p11gate: Option<PathBuf>,
}

impl Config {
    /// Seconds of warm-up before the start sample: a twelfth of the run, 10 to 30 s (less only
    /// in a run shorter than 11 s).
    pub fn warmup_seconds(&self) -> u64 {
        (self.seconds / 12)
            .clamp(10, 30)
            .min(self.seconds.saturating_sub(1))
    }

    /// The configuration from the environment (see the module documentation).
    pub fn from_env(backend: Backend) -> Result<Config, String> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let num = |n: &str, d: u64| -> Result<u64, String> {
            var(n).map_or(Ok(d), |v| {
                v.parse().map_err(|_| format!("{n}={v:?} is not a number"))
            })
        };
        let module = match var("P11GATE_SOAK_MODULE") {
            Some(m) => PathBuf::from(m),
            None => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                let deps = exe.parent().ok_or("no directory")?;
                [deps.join("libp11gate.so"), deps.join("../libp11gate.so")]
                    .into_iter()
                    .find(|p| p.exists())
                    .ok_or("no libp11gate.so beside the bench: set P11GATE_SOAK_MODULE")?
            }
        };
        let audit = var("P11GATE_AUDIT").and_then(|sinks| {
            let file = sinks
                .split(',')
                .find_map(|s| s.trim().strip_prefix("file:").map(PathBuf::from))?;
            Some((file, PathBuf::from(var("P11GATE_AUDIT_KEY")?)))
        });
        let p11gate = var("P11GATE_SOAK_P11GATE").map(PathBuf::from).or_else(|| {
            let dir = module.parent()?;
            [dir.join("p11gate"), dir.join("../p11gate")]
                .into_iter()
                .find(|p| p.exists())
        });
        Ok(Config {
            backend,
            module,
            token: var("P11GATE_SOAK_TOKEN").unwrap_or_else(|| "soak".into()),
            pin: var("P11GATE_SOAK_PIN").ok_or("P11GATE_SOAK_PIN (the user PIN) is not set")?,
            seconds: num("P11GATE_SOAK_SECONDS", 600)?,
            threads: num("P11GATE_SOAK_THREADS", 32)? as usize,
            report_seconds: num("P11GATE_SOAK_REPORT_SECONDS", 30)?.max(1),
            audit,
            p11gate,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The report

/// RSS and descriptors at one point, with all workers paused between operations.
#[derive(Clone, Debug)]
pub struct Sample {
    pub label: String,
    /// Seconds since the workers started.
    pub at: f64,
    pub rss_kib: u64,
    /// Bytes malloc has handed out and not had back (all arenas, mmapped blocks included), in
    /// KiB: what the process holds, as opposed to what the allocator keeps resident.
    pub heap_kib: u64,
    pub fds: u64,
}

#[derive(Clone, Debug)]
pub struct KindReport {
    pub kind: Kind,
    /// Operations in the measured time (after warm-up).
    pub ops: u64,
    /// All operations, warm-up included.
    pub total: u64,
    pub ops_per_s: f64,
    /// Failed operations, warm-up included.
    pub errors: u64,
}

/// The audit file after the run.
#[derive(Clone, Debug)]
pub struct AuditCheck {
    pub file: PathBuf,
    pub bytes: u64,
    /// Lines in the file.
    pub lines: u64,
    /// `p11gate audit verify`: the number of records it found intact, or what it said.
    pub verify: Result<u64, String>,
    /// Per audited function: (function, calls made, records in the file).
    pub counts: Vec<(&'static str, u64, u64)>,
}

impl AuditCheck {
    pub fn ok(&self) -> bool {
        self.verify.as_ref().is_ok_and(|n| *n == self.lines)
            && self.counts.iter().all(|(_, calls, recs)| calls == recs)
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub backend: Backend,
    pub threads: usize,
    /// Measured seconds (after warm-up).
    pub seconds: f64,
    pub kinds: Vec<KindReport>,
    /// Failures by what failed (`gcm: C_Decrypt CKR_...`).
    pub errors: BTreeMap<String, u64>,
    /// `start` (after warm-up), the periodic ones, `end`.
    pub samples: Vec<Sample>,
    pub audit: Option<AuditCheck>,
}

impl Report {
    pub fn total_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn total_ops(&self) -> u64 {
        self.kinds.iter().map(|k| k.ops).sum()
    }

    pub fn start(&self) -> &Sample {
        &self.samples[0]
    }

    pub fn end(&self) -> &Sample {
        self.samples.last().expect("samples")
    }

    /// The sample nearest half-way.
    pub fn mid(&self) -> &Sample {
        let half = (self.start().at + self.end().at) / 2.0;
        self.samples
            .iter()
            .min_by(|a, b| (a.at - half).abs().total_cmp(&(b.at - half).abs()))
            .expect("samples")
    }

    pub fn rss_growth_kib(&self) -> i64 {
        self.end().rss_kib as i64 - self.start().rss_kib as i64
    }

    pub fn rss_growth_pct(&self) -> f64 {
        growth_pct(self.start().rss_kib, self.end().rss_kib)
    }

    pub fn heap_growth_kib(&self) -> i64 {
        self.end().heap_kib as i64 - self.start().heap_kib as i64
    }

    pub fn heap_growth_pct(&self) -> f64 {
        growth_pct(self.start().heap_kib, self.end().heap_kib)
    }

    pub fn fd_growth_pct(&self) -> f64 {
        growth_pct(self.start().fds, self.end().fds)
    }

    pub fn rss_ok(&self) -> bool {
        self.rss_growth_pct() < RSS_GROWTH_LIMIT_PCT || self.rss_growth_kib() < RSS_SLACK_KIB
    }

    pub fn fds_ok(&self) -> bool {
        self.start().fds == self.end().fds
    }

    pub fn audit_ok(&self) -> bool {
        self.audit.as_ref().is_none_or(AuditCheck::ok)
    }

    pub fn passed(&self) -> bool {
        self.total_errors() == 0
            && self.kinds.iter().all(|k| k.ops > 0)
            && self.rss_ok()
            && self.fds_ok()
            && self.audit_ok()
    }

    /// The final report, for a person.
    pub fn print(&self) {
        let b = self.backend.id();
        println!(
            "\n== soak {b}: {} threads, {:.0} s measured (after warm-up)",
            self.threads, self.seconds
        );
        println!(
            "{:<36} {:>12} {:>12} {:>8}",
            "kind", "ops", "ops/s", "errors"
        );
        for k in &self.kinds {
            println!(
                "{:<36} {:>12} {:>12.1} {:>8}",
                format!("{} ({})", k.kind.id(), k.kind.title()),
                k.ops,
                k.ops_per_s,
                k.errors
            );
        }
        println!(
            "{:<36} {:>12} {:>12.1} {:>8}",
            "all",
            self.total_ops(),
            self.total_ops() as f64 / self.seconds,
            self.total_errors()
        );
        for (what, n) in &self.errors {
            println!("  error x{n}: {what}");
        }
        for (name, s) in [
            ("start", self.start()),
            ("mid", self.mid()),
            ("end", self.end()),
        ] {
            println!(
                "{name:<5} t={:>7.1}s VmRSS {:>8} KiB, heap in use {:>8} KiB, open fds {:>4}",
                s.at, s.rss_kib, s.heap_kib, s.fds
            );
        }
        println!(
            "growth: RSS {:+} KiB ({:+.3}%), heap in use {:+} KiB ({:+.3}%), fds {:+} ({:+.3}%)",
            self.rss_growth_kib(),
            self.rss_growth_pct(),
            self.heap_growth_kib(),
            self.heap_growth_pct(),
            self.end().fds as i64 - self.start().fds as i64,
            self.fd_growth_pct()
        );
        if let Some(a) = &self.audit {
            match &a.verify {
                Ok(n) => println!(
                    "audit: {}: {} bytes, {} lines, verify OK, {n} records",
                    a.file.display(),
                    a.bytes,
                    a.lines
                ),
                Err(e) => println!("audit: {}: verify FAILED: {e}", a.file.display()),
            }
            for (f, calls, recs) in &a.counts {
                println!("  {f}: {calls} calls, {recs} records");
            }
        }
        let mark = |ok: bool| if ok { "MET" } else { "NOT MET" };
        println!(
            "  [{}] zero errors ({})",
            mark(self.total_errors() == 0),
            self.total_errors()
        );
        println!(
            "  [{}] RSS growth under {RSS_GROWTH_LIMIT_PCT}% or {RSS_SLACK_KIB} KiB",
            mark(self.rss_ok())
        );
        println!(
            "  [{}] open fds equal at start and end",
            mark(self.fds_ok())
        );
        if self.audit.is_some() {
            println!(
                "  [{}] audit chain intact, one record per call",
                mark(self.audit_ok())
            );
        }
        println!("{}", self.result_line());
    }

    /// One machine-readable line: `SOAK-RESULT key=value ...`.
    pub fn result_line(&self) -> String {
        let mut line = format!(
            "SOAK-RESULT backend={} threads={} seconds={:.1} ops={} ops_per_s={:.1}",
            self.backend.id(),
            self.threads,
            self.seconds,
            self.total_ops(),
            self.total_ops() as f64 / self.seconds
        );
        for k in &self.kinds {
            line += &format!(" {}_ops_per_s={:.1}", k.kind.id(), k.ops_per_s);
        }
        for k in &self.kinds {
            line += &format!(" {}_ops={}", k.kind.id(), k.ops);
        }
        let (s, m, e) = (self.start(), self.mid(), self.end());
        line += &format!(
            " errors={} rss_start_kib={} rss_mid_kib={} rss_end_kib={} rss_growth_kib={} rss_growth_pct={:.3} heap_start_kib={} heap_mid_kib={} heap_end_kib={} heap_growth_kib={} heap_growth_pct={:.3} fds_start={} fds_mid={} fds_end={}",
            self.total_errors(),
            s.rss_kib,
            m.rss_kib,
            e.rss_kib,
            self.rss_growth_kib(),
            self.rss_growth_pct(),
            s.heap_kib,
            m.heap_kib,
            e.heap_kib,
            self.heap_growth_kib(),
            self.heap_growth_pct(),
            s.fds,
            m.fds,
            e.fds
        );
        line += &match &self.audit {
            None => " audit=none".to_string(),
            Some(a) => format!(
                " audit={} audit_records={} audit_bytes={}",
                if a.ok() { "OK" } else { "FAILED" },
                a.verify.as_ref().map_or(0, |n| *n),
                a.bytes
            ),
        };
        line += if self.passed() {
            " verdict=PASS"
        } else {
            " verdict=FAIL"
        };
        line
    }
}

fn growth_pct(start: u64, end: u64) -> f64 {
    if start == 0 {
        return 0.0;
    }
    (end as f64 - start as f64) * 100.0 / start as f64
}

/// `VmRSS` of this process, in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Heap in use (malloc's `uordblks + hblkhd`, summed over every arena by glibc's `mallinfo2`),
/// in KiB. RSS can grow while this stays flat: freed memory the allocator keeps in 32 threads'
/// arenas. This tells a leak (it grows) from allocator fragmentation (it does not).
pub fn heap_in_use_kib() -> u64 {
    // SAFETY: mallinfo2 takes no arguments and only reads the allocator's statistics (taking
    // each arena's lock); it is safe to call from any thread.
    let m = unsafe { libc::mallinfo2() };
    ((m.uordblks + m.hblkhd) / 1024) as u64
}

/// Open descriptors of this process (the listing's own descriptor not counted).
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count() as u64)
        .unwrap_or(1)
        .saturating_sub(1)
}

fn rv_name(rv: CK_RV) -> String {
    let name = match rv {
        CKR_OK => "CKR_OK",
        CKR_HOST_MEMORY => "CKR_HOST_MEMORY",
        CKR_GENERAL_ERROR => "CKR_GENERAL_ERROR",
        CKR_FUNCTION_FAILED => "CKR_FUNCTION_FAILED",
        CKR_ARGUMENTS_BAD => "CKR_ARGUMENTS_BAD",
        CKR_DEVICE_ERROR => "CKR_DEVICE_ERROR",
        CKR_DEVICE_MEMORY => "CKR_DEVICE_MEMORY",
        CKR_DATA_LEN_RANGE => "CKR_DATA_LEN_RANGE",
        CKR_ENCRYPTED_DATA_INVALID => "CKR_ENCRYPTED_DATA_INVALID",
        CKR_FUNCTION_NOT_SUPPORTED => "CKR_FUNCTION_NOT_SUPPORTED",
        CKR_KEY_HANDLE_INVALID => "CKR_KEY_HANDLE_INVALID",
        CKR_MECHANISM_INVALID => "CKR_MECHANISM_INVALID",
        CKR_MECHANISM_PARAM_INVALID => "CKR_MECHANISM_PARAM_INVALID",
        CKR_OBJECT_HANDLE_INVALID => "CKR_OBJECT_HANDLE_INVALID",
        CKR_OPERATION_ACTIVE => "CKR_OPERATION_ACTIVE",
        CKR_OPERATION_NOT_INITIALIZED => "CKR_OPERATION_NOT_INITIALIZED",
        CKR_SESSION_COUNT => "CKR_SESSION_COUNT",
        CKR_SESSION_HANDLE_INVALID => "CKR_SESSION_HANDLE_INVALID",
        CKR_SIGNATURE_INVALID => "CKR_SIGNATURE_INVALID",
        CKR_SIGNATURE_LEN_RANGE => "CKR_SIGNATURE_LEN_RANGE",
        CKR_USER_NOT_LOGGED_IN => "CKR_USER_NOT_LOGGED_IN",
        CKR_BUFFER_TOO_SMALL => "CKR_BUFFER_TOO_SMALL",
        CKR_CRYPTOKI_NOT_INITIALIZED => "CKR_CRYPTOKI_NOT_INITIALIZED",
        _ => "",
    };
    if name.is_empty() {
        format!("0x{rv:X}")
    } else {
        name.to_string()
    }
}

fn ck(rv: CK_RV, what: &str) -> Result<(), String> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(format!("{what} {}", rv_name(rv)))
    }
}

// ---------------------------------------------------------------------------------------------
// The module, the keys, the operations

/// The loaded module and what every worker needs.
#[derive(Debug)]
struct Soak {
    fl: CK_FUNCTION_LIST,
    slot: CK_SLOT_ID,
    aes: CK_OBJECT_HANDLE,
    hmac: CK_OBJECT_HANDLE,
    rsa_public: CK_OBJECT_HANDLE,
    rsa_private: CK_OBJECT_HANDLE,
    /// (label, class, handle) of each key, for the lookups.
    lookups: Vec<(String, CK_OBJECT_CLASS, CK_OBJECT_HANDLE)>,
}

/// xorshift64*: the workers' cheap, seeded randomness (operation choice, lengths, data, IVs).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Calls made to the audited functions whose records the run counts.
#[derive(Debug, Default)]
struct Calls {
    random: u64,
    sign: u64,
    verify: u64,
}

/// One worker's state between operations.
#[derive(Debug)]
struct Worker {
    id: u32,
    rng: Rng,
    counter: u64,
    last_random: [u8; 32],
    calls: Calls,
}

fn mech(mechanism: CK_MECHANISM_TYPE) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism,
        pParameter: null_mut(),
        ulParameterLen: 0,
    }
}

impl Soak {
    fn open_session(&self) -> Result<CK_SESSION_HANDLE, String> {
        let mut h: CK_SESSION_HANDLE = 0;
        let rv = call!(
            self.fl,
            C_OpenSession(
                self.slot,
                CKF_SERIAL_SESSION | CKF_RW_SESSION,
                null_mut(),
                None,
                &mut h
            )
        );
        ck(rv, "C_OpenSession").map(|_| h)
    }

    fn find_slot(fl: &CK_FUNCTION_LIST, label: &str) -> Result<CK_SLOT_ID, String> {
        let mut n: CK_ULONG = 0;
        ck(
            call!(fl, C_GetSlotList(CK_TRUE, null_mut(), &mut n)),
            "C_GetSlotList",
        )?;
        let mut slots = vec![0 as CK_SLOT_ID; n as usize];
        ck(
            call!(fl, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut n)),
            "C_GetSlotList",
        )?;
        slots.truncate(n as usize);
        for slot in slots.iter().copied() {
            let mut info = CK_TOKEN_INFO::default();
            ck(call!(fl, C_GetTokenInfo(slot, &mut info)), "C_GetTokenInfo")?;
            if String::from_utf8_lossy(&info.label).trim_end() == label {
                return Ok(slot);
            }
        }
        Err(format!("no token labelled {label:?} (slots {slots:?})"))
    }

    /// The handles of the objects labelled `label` of class `class` (at most 4).
    fn find(
        &self,
        s: CK_SESSION_HANDLE,
        label: &str,
        class: CK_OBJECT_CLASS,
    ) -> Result<Vec<CK_OBJECT_HANDLE>, String> {
        let mut template = [
            attr_bytes(CKA_LABEL, label.as_bytes()),
            attr(CKA_CLASS, &class),
        ];
        ck(
            call!(
                self.fl,
                C_FindObjectsInit(s, template.as_mut_ptr(), template.len() as CK_ULONG)
            ),
            "C_FindObjectsInit",
        )?;
        let mut found = [0 as CK_OBJECT_HANDLE; 4];
        let mut n: CK_ULONG = 0;
        let rv = call!(
            self.fl,
            C_FindObjects(s, found.as_mut_ptr(), found.len() as CK_ULONG, &mut n)
        );
        if rv != CKR_OK {
            let _ = call!(self.fl, C_FindObjectsFinal(s));
            return Err(format!("C_FindObjects {}", rv_name(rv)));
        }
        ck(call!(self.fl, C_FindObjectsFinal(s)), "C_FindObjectsFinal")?;
        Ok(found[..(n as usize).min(4)].to_vec())
    }

    /// Generates the run's keys on the token (session `s`, logged in) and finds each by label.
    fn make_keys(&mut self, s: CK_SESSION_HANDLE, prefix: &str) -> Result<(), String> {
        let (yes, no, len) = (CK_TRUE, CK_FALSE, 32 as CK_ULONG);
        let fl = self.fl;
        let secret =
            |mechanism, key_type: CK_KEY_TYPE, label: &str, usage: &[CK_ATTRIBUTE_TYPE]| {
                let class = CKO_SECRET_KEY;
                let mut t = vec![
                    attr(CKA_CLASS, &class),
                    attr(CKA_KEY_TYPE, &key_type),
                    attr(CKA_VALUE_LEN, &len),
                    attr_bytes(CKA_LABEL, label.as_bytes()),
                    attr(CKA_TOKEN, &yes),
                    attr(CKA_PRIVATE, &yes),
                    attr(CKA_SENSITIVE, &yes),
                    attr(CKA_EXTRACTABLE, &no),
                ];
                t.extend(usage.iter().map(|u| attr(*u, &yes)));
                let mut m = mech(mechanism);
                let mut h: CK_OBJECT_HANDLE = 0;
                let rv = call!(
                    fl,
                    C_GenerateKey(s, &mut m, t.as_mut_ptr(), t.len() as CK_ULONG, &mut h)
                );
                ck(rv, &format!("C_GenerateKey({label})")).map(|_| h)
            };
        let aes_label = format!("{prefix}-aes");
        let hmac_label = format!("{prefix}-hmac");
        let rsa_label = format!("{prefix}-rsa");
        self.aes = secret(
            CKM_AES_KEY_GEN,
            CKK_AES,
            &aes_label,
            &[CKA_ENCRYPT, CKA_DECRYPT],
        )?;
        self.hmac = secret(
            CKM_GENERIC_SECRET_KEY_GEN,
            CKK_GENERIC_SECRET,
            &hmac_label,
            &[CKA_SIGN, CKA_VERIFY],
        )?;
        let bits = 2048 as CK_ULONG;
        let exponent = [1u8, 0, 1];
        let mut public = [
            attr(CKA_TOKEN, &yes),
            attr(CKA_ENCRYPT, &yes),
            attr(CKA_MODULUS_BITS, &bits),
            attr_bytes(CKA_PUBLIC_EXPONENT, &exponent),
            attr_bytes(CKA_LABEL, rsa_label.as_bytes()),
        ];
        let mut private = [
            attr(CKA_TOKEN, &yes),
            attr(CKA_PRIVATE, &yes),
            attr(CKA_SENSITIVE, &yes),
            attr(CKA_EXTRACTABLE, &no),
            attr(CKA_DECRYPT, &yes),
            attr_bytes(CKA_LABEL, rsa_label.as_bytes()),
        ];
        let mut m = mech(CKM_RSA_PKCS_KEY_PAIR_GEN);
        let rv = call!(
            self.fl,
            C_GenerateKeyPair(
                s,
                &mut m,
                public.as_mut_ptr(),
                public.len() as CK_ULONG,
                private.as_mut_ptr(),
                private.len() as CK_ULONG,
                &mut self.rsa_public,
                &mut self.rsa_private
            )
        );
        ck(rv, "C_GenerateKeyPair(RSA-2048)")?;
        self.lookups = vec![
            (aes_label, CKO_SECRET_KEY, self.aes),
            (hmac_label, CKO_SECRET_KEY, self.hmac),
            (rsa_label.clone(), CKO_PUBLIC_KEY, self.rsa_public),
            (rsa_label, CKO_PRIVATE_KEY, self.rsa_private),
        ];
        for (label, class, h) in &self.lookups {
            let found = self.find(s, label, *class)?;
            if found != [*h] {
                return Err(format!(
                    "looking {label:?} (class {class}) up gave {found:?}, not [{h}]"
                ));
            }
        }
        Ok(())
    }

    fn destroy_keys(&self, s: CK_SESSION_HANDLE) -> Result<(), String> {
        for h in [self.aes, self.hmac, self.rsa_public, self.rsa_private] {
            if h != 0 {
                ck(call!(self.fl, C_DestroyObject(s, h)), "C_DestroyObject")?;
            }
        }
        Ok(())
    }

    /// One operation of `kind` on session `s`.
    fn op(&self, kind: Kind, s: CK_SESSION_HANDLE, w: &mut Worker) -> Result<(), String> {
        match kind {
            Kind::Find => {
                let (label, class, h) = &self.lookups[(w.rng.next() % 4) as usize];
                let found = self.find(s, label, *class)?;
                if found != [*h] {
                    return Err(format!("find: got {} handles, or not the key", found.len()));
                }
                Ok(())
            }
            Kind::Gcm => self.gcm(s, w),
            Kind::CbcHmac => self.cbc_hmac(s, w),
            Kind::RsaOaep => self.rsa_oaep(s, w),
            Kind::Random => {
                let mut out = [0u8; 32];
                w.calls.random += 1;
                ck(
                    call!(self.fl, C_GenerateRandom(s, out.as_mut_ptr(), 32)),
                    "C_GenerateRandom",
                )?;
                if out == w.last_random {
                    return Err("C_GenerateRandom: the same 32 bytes twice".into());
                }
                w.last_random = out;
                Ok(())
            }
            Kind::Session => {
                let h = self.open_session()?;
                let mut info = CK_SESSION_INFO::default();
                let rv = call!(self.fl, C_GetSessionInfo(h, &mut info));
                let checked = ck(rv, "C_GetSessionInfo").and_then(|_| {
                    if info.slotID != self.slot || info.state != CKS_RW_USER_FUNCTIONS {
                        Err(format!(
                            "C_GetSessionInfo: slot {} state {} (want slot {}, CKS_RW_USER_FUNCTIONS)",
                            info.slotID, info.state, self.slot
                        ))
                    } else {
                        Ok(())
                    }
                });
                let closed = ck(call!(self.fl, C_CloseSession(h)), "C_CloseSession");
                checked.and(closed)
            }
        }
    }

    fn plaintext(w: &mut Worker) -> Vec<u8> {
        let len = 1 + (w.rng.next() % MAX_PLAIN as u64) as usize;
        let mut p = vec![0u8; len];
        w.rng.fill(&mut p);
        p
    }

    /// `C_EncryptInit`/`C_DecryptInit` + the single-part call; the output, checked for length.
    #[allow(clippy::too_many_arguments)]
    fn crypt(
        &self,
        s: CK_SESSION_HANDLE,
        encrypt: bool,
        m: &mut CK_MECHANISM,
        key: CK_OBJECT_HANDLE,
        input: &mut [u8],
        out_space: usize,
        want_len: usize,
        what: &str,
    ) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; out_space];
        let mut len = out.len() as CK_ULONG;
        if encrypt {
            ck(
                call!(self.fl, C_EncryptInit(s, m, key)),
                &format!("C_EncryptInit({what})"),
            )?;
            let rv = call!(
                self.fl,
                C_Encrypt(
                    s,
                    input.as_mut_ptr(),
                    input.len() as CK_ULONG,
                    out.as_mut_ptr(),
                    &mut len
                )
            );
            ck(rv, &format!("C_Encrypt({what})"))?;
        } else {
            ck(
                call!(self.fl, C_DecryptInit(s, m, key)),
                &format!("C_DecryptInit({what})"),
            )?;
            let rv = call!(
                self.fl,
                C_Decrypt(
                    s,
                    input.as_mut_ptr(),
                    input.len() as CK_ULONG,
                    out.as_mut_ptr(),
                    &mut len
                )
            );
            ck(rv, &format!("C_Decrypt({what})"))?;
        }
        if len as usize != want_len {
            return Err(format!(
                "{} ({what}): {len} bytes out, want {want_len}",
                if encrypt { "C_Encrypt" } else { "C_Decrypt" }
            ));
        }
        out.truncate(want_len);
        Ok(out)
    }

    fn gcm(&self, s: CK_SESSION_HANDLE, w: &mut Worker) -> Result<(), String> {
        let mut plain = Self::plaintext(w);
        let mut iv = [0u8; 12];
        w.counter += 1;
        iv[..4].copy_from_slice(&w.id.to_le_bytes());
        iv[4..].copy_from_slice(&w.counter.to_le_bytes());
        let gcm_params = |iv: &mut [u8; 12]| CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: null_mut(),
            ulAADLen: 0,
            ulTagBits: 128,
        };
        let mut params = gcm_params(&mut iv);
        let mut m = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&mut params as *mut CK_GCM_PARAMS).cast(),
            ulParameterLen: size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        let n = plain.len();
        let mut sealed = self.crypt(
            s,
            true,
            &mut m,
            self.aes,
            &mut plain,
            n + 32,
            n + 16,
            "AES-GCM",
        )?;
        let mut params = gcm_params(&mut iv);
        m.pParameter = (&mut params as *mut CK_GCM_PARAMS).cast();
        let opened = self.crypt(
            s,
            false,
            &mut m,
            self.aes,
            &mut sealed,
            n + 16,
            n,
            "AES-GCM",
        )?;
        if opened != plain {
            return Err("gcm: wrong plaintext after the round trip".into());
        }
        Ok(())
    }

    fn cbc_hmac(&self, s: CK_SESSION_HANDLE, w: &mut Worker) -> Result<(), String> {
        let mut plain = Self::plaintext(w);
        let mut iv = [0u8; 16];
        w.rng.fill(&mut iv);
        let mut m = CK_MECHANISM {
            mechanism: CKM_AES_CBC_PAD,
            pParameter: iv.as_mut_ptr().cast(),
            ulParameterLen: 16,
        };
        let n = plain.len();
        let padded = (n / 16 + 1) * 16;
        let ct = self.crypt(
            s,
            true,
            &mut m,
            self.aes,
            &mut plain,
            padded + 16,
            padded,
            "AES-CBC-PAD",
        )?;
        // Encrypt-then-MAC over IV || ciphertext, as Vault's seal wrap does.
        let mut blob = iv.to_vec();
        blob.extend_from_slice(&ct);
        let mut hm = mech(CKM_SHA256_HMAC);
        let mut mac = [0u8; 64];
        let mut mac_len = mac.len() as CK_ULONG;
        ck(
            call!(self.fl, C_SignInit(s, &mut hm, self.hmac)),
            "C_SignInit(HMAC)",
        )?;
        w.calls.sign += 1;
        let rv = call!(
            self.fl,
            C_Sign(
                s,
                blob.as_mut_ptr(),
                blob.len() as CK_ULONG,
                mac.as_mut_ptr(),
                &mut mac_len
            )
        );
        ck(rv, "C_Sign(HMAC)")?;
        if mac_len != 32 {
            return Err(format!("C_Sign(HMAC): {mac_len} bytes, want 32"));
        }
        // Open: verify, then decrypt.
        ck(
            call!(self.fl, C_VerifyInit(s, &mut hm, self.hmac)),
            "C_VerifyInit(HMAC)",
        )?;
        w.calls.verify += 1;
        let rv = call!(
            self.fl,
            C_Verify(
                s,
                blob.as_mut_ptr(),
                blob.len() as CK_ULONG,
                mac.as_mut_ptr(),
                32
            )
        );
        ck(rv, "C_Verify(HMAC)")?;
        let mut ct = blob.split_off(16);
        m.pParameter = blob.as_mut_ptr().cast();
        let opened = self.crypt(
            s,
            false,
            &mut m,
            self.aes,
            &mut ct,
            padded,
            n,
            "AES-CBC-PAD",
        )?;
        if opened != plain {
            return Err("cbc_hmac: wrong plaintext after the round trip".into());
        }
        Ok(())
    }

    fn rsa_oaep(&self, s: CK_SESSION_HANDLE, w: &mut Worker) -> Result<(), String> {
        let mut data_key = [0u8; 32];
        w.rng.fill(&mut data_key);
        let mut params = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA_1,
            mgf: CKG_MGF1_SHA1,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: null_mut(),
            ulSourceDataLen: 0,
        };
        let mut m = CK_MECHANISM {
            mechanism: CKM_RSA_PKCS_OAEP,
            pParameter: (&mut params as *mut CK_RSA_PKCS_OAEP_PARAMS).cast(),
            ulParameterLen: size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
        };
        let mut wrapped = self.crypt(
            s,
            true,
            &mut m,
            self.rsa_public,
            &mut data_key.clone(),
            256,
            256,
            "RSA-OAEP",
        )?;
        let unwrapped = self.crypt(
            s,
            false,
            &mut m,
            self.rsa_private,
            &mut wrapped,
            256,
            32,
            "RSA-OAEP",
        )?;
        if unwrapped != data_key {
            return Err("rsa_oaep: wrong data key after the round trip".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The run

/// One worker's counters, read by the main thread (exactly, while the workers are paused).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Counters {
    ops: [AtomicU64; 6],
    errors: [AtomicU64; 6],
    random: AtomicU64,
    sign: AtomicU64,
    verify: AtomicU64,
}

#[derive(Debug, Default)]
struct Control {
    stop: AtomicBool,
    pause: AtomicBool,
    parked: AtomicUsize,
}

fn worker(
    soak: &Soak,
    id: usize,
    seed: u64,
    control: &Control,
    counters: &Counters,
    pool: &Mutex<Vec<CK_SESSION_HANDLE>>,
    errors: &Mutex<BTreeMap<String, u64>>,
) {
    let mut w = Worker {
        id: id as u32,
        rng: Rng(seed | 1),
        counter: 0,
        last_random: [0; 32],
        calls: Calls::default(),
    };
    let fail = |what: String| *errors.lock().unwrap().entry(what).or_default() += 1;
    let mut own = match soak.open_session() {
        Ok(h) => h,
        Err(e) => {
            fail(format!("thread start: {e}"));
            0
        }
    };
    let mut n: u64 = 0;
    loop {
        if control.pause.load(Ordering::Acquire) {
            control.parked.fetch_add(1, Ordering::AcqRel);
            while control.pause.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(1));
            }
            control.parked.fetch_sub(1, Ordering::AcqRel);
        }
        if control.stop.load(Ordering::Acquire) {
            break;
        }
        n += 1;
        let kind = Kind::pick(w.rng.next());
        let pooled = kind != Kind::Session && n.is_multiple_of(POOL_EVERY);
        let s = if pooled {
            pool.lock().unwrap().pop().unwrap_or(own)
        } else {
            own
        };
        let from_pool = pooled && s != own;
        let result = soak.op(kind, s, &mut w);
        let k = kind as usize;
        let mut s = s;
        match result {
            Ok(()) => {
                counters.ops[k].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.errors[k].fetch_add(1, Ordering::Relaxed);
                fail(format!("{}: {e}", kind.id()));
                // Replace the session: it may hold an operation the failure left open.
                let _ = call!(soak.fl, C_CloseSession(s));
                s = soak.open_session().unwrap_or_else(|e| {
                    fail(format!("reopen: {e}"));
                    0
                });
                if !from_pool {
                    own = s;
                }
            }
        }
        if from_pool {
            pool.lock().unwrap().push(s);
        }
        counters.random.store(w.calls.random, Ordering::Relaxed);
        counters.sign.store(w.calls.sign, Ordering::Relaxed);
        counters.verify.store(w.calls.verify, Ordering::Relaxed);
    }
    let _ = call!(soak.fl, C_CloseSession(own));
}

/// Counts of ops per kind, errors per kind, and audited calls, over all workers.
fn totals(counters: &[Counters]) -> ([u64; 6], [u64; 6], [u64; 3]) {
    let (mut ops, mut errs, mut calls) = ([0u64; 6], [0u64; 6], [0u64; 3]);
    for c in counters {
        for k in 0..6 {
            ops[k] += c.ops[k].load(Ordering::Relaxed);
            errs[k] += c.errors[k].load(Ordering::Relaxed);
        }
        calls[0] += c.random.load(Ordering::Relaxed);
        calls[1] += c.sign.load(Ordering::Relaxed);
        calls[2] += c.verify.load(Ordering::Relaxed);
    }
    (ops, errs, calls)
}

/// Sets the environment p11gate reads for `backend`.
pub fn backend_env(backend: Backend) -> Result<(), String> {
    match backend {
        Backend::SoftHsm => {
            if std::env::var_os("P11GATE_UPSTREAM").is_none() {
                let softhsm = [
                    "/usr/lib/softhsm/libsofthsm2.so",
                    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                    "/usr/local/lib/softhsm/libsofthsm2.so",
                ]
                .into_iter()
                .find(|p| Path::new(p).exists())
                .ok_or("SoftHSMv2 is not installed and P11GATE_UPSTREAM is not set")?;
                std::env::set_var("P11GATE_UPSTREAM", softhsm);
            }
        }
        Backend::Soft => {
            std::env::remove_var("P11GATE_UPSTREAM");
            if std::env::var_os("P11GATE_HOME").is_none() {
                return Err("the soft backend needs P11GATE_HOME".into());
            }
        }
    }
    Ok(())
}

/// Runs the soak as `config` says and reports. `Err` when it could not run at all (no module,
/// no token, set-up failed); every failure once it runs is counted in the report instead.
pub fn run(config: &Config) -> Result<Report, String> {
    let b = config.backend.id();
    let fl = load(&config.module, b)?;
    let mut args = CK_C_INITIALIZE_ARGS {
        CreateMutex: None,
        DestroyMutex: None,
        LockMutex: None,
        UnlockMutex: None,
        flags: CKF_OS_LOCKING_OK,
        pReserved: null_mut(),
    };
    ck(
        call!(
            fl,
            C_Initialize((&mut args as *mut CK_C_INITIALIZE_ARGS).cast())
        ),
        "C_Initialize",
    )?;
    let slot = Soak::find_slot(&fl, &config.token)?;
    let mut soak = Soak {
        fl,
        slot,
        aes: 0,
        hmac: 0,
        rsa_public: 0,
        rsa_private: 0,
        lookups: Vec::new(),
    };
    let main = soak.open_session()?;
    let pin = config.pin.as_bytes();
    let rv = call!(
        fl,
        C_Login(
            main,
            CKU_USER,
            pin.as_ptr() as *mut u8,
            pin.len() as CK_ULONG
        )
    );
    ck(rv, "C_Login")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prefix = format!("soak-{}-{now}", std::process::id());
    soak.make_keys(main, &prefix)?;
    let mut pool = Vec::new();
    for _ in 0..POOL_SESSIONS {
        pool.push(soak.open_session()?);
    }
    let pool = Mutex::new(pool);
    let errors = Mutex::new(BTreeMap::new());
    let control = Control::default();
    let counters: Vec<Counters> = (0..config.threads).map(|_| Counters::default()).collect();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let warmup = config.warmup_seconds();
    println!(
        "soak {b}: {} threads, {} s ({warmup} s warm-up), module {}, token {:?}, slot {slot}, keys {prefix}-*",
        config.threads,
        config.seconds,
        config.module.display(),
        config.token
    );
    let _ = std::io::stdout().flush();

    let mut samples = Vec::new();
    let mut start_counts = ([0u64; 6], [0u64; 6], [0u64; 3]);
    let mut measured = 0.0;
    std::thread::scope(|scope| {
        for (id, c) in counters.iter().enumerate() {
            let (soak, control, pool, errors) = (&soak, &control, &pool, &errors);
            let seed = seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            std::thread::Builder::new()
                .name(format!("soak-{id}"))
                .spawn_scoped(scope, move || {
                    worker(soak, id, seed, control, c, pool, errors)
                })
                .expect("spawn a worker");
        }
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(config.seconds);
        let warm_end = t0 + Duration::from_secs(warmup);
        // Pauses the workers between operations, samples, resumes (unless it is the end).
        let sample = |label: &str, resume: bool| {
            control.pause.store(true, Ordering::Release);
            while control.parked.load(Ordering::Acquire) < config.threads {
                std::thread::sleep(Duration::from_millis(1));
            }
            // Let the audit writer drain its queue: records waiting there are heap in use
            // (up to ~1 MiB at 32 threads), which would make the heap figure jump around.
            std::thread::sleep(Duration::from_millis(200));
            let s = Sample {
                label: label.to_string(),
                at: t0.elapsed().as_secs_f64(),
                rss_kib: rss_kib(),
                heap_kib: heap_in_use_kib(),
                fds: open_fds(),
            };
            let counts = totals(&counters);
            if resume {
                control.pause.store(false, Ordering::Release);
            }
            (s, counts)
        };
        std::thread::sleep(warm_end.saturating_duration_since(Instant::now()));
        let (s, counts) = sample("start", true);
        println!(
            "[{b}] t={:>6.1}s start (after warm-up): VmRSS {} KiB, fds {}, {} ops in warm-up",
            s.at,
            s.rss_kib,
            s.fds,
            counts.0.iter().sum::<u64>()
        );
        let _ = std::io::stdout().flush();
        start_counts = counts;
        let (mut last_at, mut last_ops) = (s.at, counts.0.iter().sum::<u64>());
        samples.push(s);
        loop {
            let next = Instant::now() + Duration::from_secs(config.report_seconds);
            let is_end = next + Duration::from_millis(500) >= end;
            std::thread::sleep(if is_end {
                end.saturating_duration_since(Instant::now())
            } else {
                Duration::from_secs(config.report_seconds)
            });
            let (s, counts) = sample(if is_end { "end" } else { "mid" }, !is_end);
            let ops: u64 = counts.0.iter().sum();
            let errs: u64 = counts.1.iter().sum();
            println!(
                "[{b}] t={:>6.1}s {:>9.1} ops/s, errors {errs}, VmRSS {} KiB ({:+.3}%), heap {} KiB ({:+.3}%), fds {} ({:+})",
                s.at,
                (ops - last_ops) as f64 / (s.at - last_at),
                s.rss_kib,
                growth_pct(samples[0].rss_kib, s.rss_kib),
                s.heap_kib,
                growth_pct(samples[0].heap_kib, s.heap_kib),
                s.fds,
                s.fds as i64 - samples[0].fds as i64
            );
            let _ = std::io::stdout().flush();
            (last_at, last_ops) = (s.at, ops);
            samples.push(s);
            if is_end {
                measured = samples.last().unwrap().at - samples[0].at;
                control.stop.store(true, Ordering::Release);
                control.pause.store(false, Ordering::Release);
                break;
            }
        }
    });
    let (ops, errs, calls) = totals(&counters);
    let kinds = Kind::ALL
        .into_iter()
        .map(|k| {
            let i = k as usize;
            // The end sample's counts are the final ones: the workers stopped while paused.
            let window = ops[i] - start_counts.0[i];
            KindReport {
                kind: k,
                ops: window,
                total: ops[i],
                ops_per_s: window as f64 / measured,
                errors: errs[i],
            }
        })
        .collect();
    for s in pool.into_inner().unwrap() {
        let _ = call!(fl, C_CloseSession(s));
    }
    let mut errors = errors.into_inner().unwrap();
    if let Err(e) = soak.destroy_keys(main) {
        *errors.entry(format!("clean-up: {e}")).or_default() += 1;
    }
    let _ = call!(fl, C_CloseSession(main));
    if let Err(e) = ck(call!(fl, C_Finalize(null_mut())), "C_Finalize") {
        *errors.entry(format!("clean-up: {e}")).or_default() += 1;
    }
    let audit = config
        .audit
        .as_ref()
        .map(|(file, key)| check_audit(file, key, config.p11gate.as_deref(), calls));
    Ok(Report {
        backend: config.backend,
        threads: config.threads,
        seconds: measured,
        kinds,
        errors,
        samples,
        audit,
    })
}

/// Verifies the audit file's chain and counts its records per audited function.
fn check_audit(file: &Path, key: &Path, p11gate: Option<&Path>, calls: [u64; 3]) -> AuditCheck {
    let fns = ["C_GenerateRandom", "C_Sign", "C_Verify"];
    let needles: Vec<String> = fns.iter().map(|f| format!("\"fn\":\"{f}\"")).collect();
    let (mut lines, mut found) = (0u64, [0u64; 3]);
    let bytes = std::fs::metadata(file).map_or(0, |m| m.len());
    if let Ok(f) = std::fs::File::open(file) {
        for line in std::io::BufReader::with_capacity(1 << 20, f).lines() {
            let Ok(line) = line else { break };
            lines += 1;
            for (i, n) in needles.iter().enumerate() {
                if line.contains(n.as_str()) {
                    found[i] += 1;
                }
            }
        }
    }
    let verify = match p11gate {
        None => Err("no p11gate program to run `audit verify` (P11GATE_SOAK_P11GATE)".into()),
        Some(bin) => match Command::new(bin)
            .args(["audit", "verify"])
            .arg(file)
            .arg("--key")
            .arg(key)
            .output()
        {
            Err(e) => Err(format!("{}: {e}", bin.display())),
            Ok(out) => {
                let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
                let count = text
                    .rsplit_once(": OK, ")
                    .and_then(|(_, r)| r.strip_suffix(" records")?.parse::<u64>().ok());
                match (out.status.success(), count) {
                    (true, Some(n)) => Ok(n),
                    _ => Err(format!(
                        "{text} {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )),
                }
            }
        },
    };
    AuditCheck {
        file: file.to_path_buf(),
        bytes,
        lines,
        verify,
        counts: (0..3).map(|i| (fns[i], calls[i], found[i])).collect(),
    }
}

#[allow(dead_code)]
fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let backend = args
        .first()
        .cloned()
        .or_else(|| std::env::var("P11GATE_SOAK_BACKEND").ok())
        .unwrap_or_else(|| "softhsm".into());
    let result = Backend::from_id(&backend)
        .ok_or_else(|| format!("backend {backend:?}: softhsm or soft"))
        .and_then(|b| {
            backend_env(b)?;
            run(&Config::from_env(b)?)
        });
    match result {
        Ok(report) => {
            report.print();
            let _ = std::io::stdout().flush();
            std::process::exit(if report.passed() { 0 } else { 3 });
        }
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(1);
        }
    }
}
