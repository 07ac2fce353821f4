//! What does the audit trail cost? AES-256-GCM encryption of 32 bytes (`C_EncryptInit` +
//! `C_Encrypt`, one audit record per operation) through p11gate to SoftHSMv2, with audit off,
//! to syslog (a real rsyslogd), to the JSON-lines file with its HMAC chain (fsync on, the
//! default), and to both; SoftHSMv2 called directly as a reference. One process, one run,
//! interleaved round by round, at 1 and 2 threads.
//!
//! Each audit configuration is its own copy of `libp11gate.so` (copied to a temporary
//! directory: two paths are two module instances, each with its own audit pipeline and writer
//! thread), initialised with its own `P11GATE_AUDIT` and `P11GATE_APP` (`bench-off`,
//! `bench-syslog`, `bench-file`, `bench-both`). All copies forward to the same SoftHSMv2
//! instance, token, login and key.
//!
//! One sample = one batch of a fixed number of operations per thread. For every batch of an
//! audited variant the bench then waits until each of its sinks has one new line per operation
//! (rsyslogd's output file, the audit file; a cheap newline count, polled every 250 us), and
//! fails if they do not arrive within 30 s. After every round, outside the timing, it checks
//! record by record: each sink has exactly one `C_Encrypt` record of the variant's app per
//! operation run (nothing lost, nothing twice), no `dropped` or `outage` record and no stray
//! line. Two throughputs follow from one batch:
//! - *calls*: operations / wall time of the calls, what the application sees while the writer
//!   keeps up or the queue absorbs the batch;
//! - *end-to-end*: operations / time from the batch's start until its last record is in the
//!   sink's file, which also charges the writer's and rsyslogd's catch-up after the calls end
//!   (and up to about a millisecond of polling granularity).
//!
//! Also measured per batch (from `/proc/.../schedstat`, so including the drain): CPU time of
//! the variant's writer thread (`p11gate-audit`), of rsyslogd (all its threads), and of this
//! whole process, per operation. After every round each audit file is checked with
//! `p11gate audit verify FILE --key KEY`.
//!
//! Usage (arguments after `cargo bench --bench audit --`):
//! - no argument: the timing run; prints a table and one JSON line per variant and thread count.
//! - `--count off|syslog|file|both|direct N`: one session, `N` AES-GCM operations inside the
//!   function `p11gate_bench_audit_loop` after 200 for warm-up, bracketed by marker lines on
//!   stderr; for callgrind (`scripts/callgrind-audit.sh`). Prints `count KIND N ok records=R`
//!   (R: the `C_Encrypt` records in the audit file, for `file` and `both`).
//!
//! Environment:
//! - `P11GATE_BENCH_SYSLOG_SOCKET`: rsyslogd's socket; without it the syslog variants are
//!   skipped. `P11GATE_BENCH_SYSLOG_OUT`: the file rsyslogd writes (required with the socket).
//!   `P11GATE_BENCH_RSYSLOG_PID`: rsyslogd's pid, for its CPU time (optional).
//! - `P11GATE_BENCH_AUDIT_KEY`: the audit key (default: a new one in the temporary directory).
//! - `P11GATE_BENCH_AUDIT_DIR`: where the audit files go (default: the temporary directory).
//! - `P11GATE_BENCH_CLI`: the `p11gate` program for `audit verify` (default: `target/release/p11gate`
//!   beside this binary's directory).
//! - `P11GATE_BENCH_ROUNDS` (default 30), `P11GATE_BENCH_BATCH_MS` (default 200: the length
//!   of the audit-off batch; every variant runs the same number of operations),
//!   `P11GATE_BENCH_THREADS` (default `1,2`), `P11GATE_BENCH_VARIANTS` (default all:
//!   `direct,off,syslog,file,both`).
//! - `P11GATE_BENCH_GATE`: the `libp11gate.so` to copy (default: the one beside this binary).

#[path = "../tests/common/mod.rs"]
mod common;
#[macro_use]
mod shared;

use shared::{attr, attr_bytes, ck_res, env_num, load, median, quantile, req};

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::null_mut;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use pkcs11_sys::*;

const TOKEN_LABEL: &str = "p11gate-audit-bench";
const AES_LABEL: &str = "p11gate-audit-bench-aes";
const MARK_BEGIN: &[u8] = b"P11GATE_BENCH_LOOP_BEGIN\n";
const MARK_END: &[u8] = b"P11GATE_BENCH_LOOP_END\n";
/// The target: audit on keeps at least this share of the audit-off throughput.
const TARGET_PCT: f64 = 95.0;
/// How long the bench waits for a batch's records to reach a sink.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
const WARMUP_OPS: u64 = 200;

type InitFn = unsafe extern "C" fn(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE) -> CK_RV;
type EncryptFn = unsafe extern "C" fn(
    CK_SESSION_HANDLE,
    CK_BYTE_PTR,
    CK_ULONG,
    CK_BYTE_PTR,
    CK_ULONG_PTR,
) -> CK_RV;

// ---------------------------------------------------------------------------------------------
// Variants

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Direct,
    Off,
    Syslog,
    File,
    Both,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Direct,
        Kind::Off,
        Kind::Syslog,
        Kind::File,
        Kind::Both,
    ];

    fn id(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Off => "off",
            Kind::Syslog => "syslog",
            Kind::File => "file",
            Kind::Both => "both",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Kind::Direct => "SoftHSMv2 direct",
            Kind::Off => "p11gate, audit off",
            Kind::Syslog => "p11gate, audit syslog",
            Kind::File => "p11gate, audit file+chain",
            Kind::Both => "p11gate, syslog + file",
        }
    }

    fn from_id(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.id() == s)
    }

    fn app(self) -> String {
        format!("bench-{}", self.id())
    }

    fn syslog(self) -> bool {
        matches!(self, Kind::Syslog | Kind::Both)
    }

    fn file(self) -> bool {
        matches!(self, Kind::File | Kind::Both)
    }

    fn gate(self) -> bool {
        self != Kind::Direct
    }
}

// ---------------------------------------------------------------------------------------------
// One loaded module

/// One PKCS#11 module, initialised, with a logged-in session per thread and the AES key.
struct Side {
    name: String,
    fl: CK_FUNCTION_LIST,
    sessions: Vec<CK_SESSION_HANDLE>,
    aes: CK_OBJECT_HANDLE,
}

impl Side {
    /// Loads and initialises `path` (CKF_OS_LOCKING_OK, as Vault does), finds the bench token,
    /// opens `threads` read-write sessions and logs in.
    fn open(path: &Path, name: &str, threads: usize) -> Result<Side, String> {
        let mut side = Side {
            name: name.to_string(),
            fl: load(path, name)?,
            sessions: Vec::new(),
            aes: 0,
        };
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: null_mut(),
        };
        let rv = p11!(
            side,
            C_Initialize((&mut args as *mut CK_C_INITIALIZE_ARGS).cast())
        );
        // All sides share one SoftHSM: all but the first find it initialised.
        if rv != CKR_CRYPTOKI_ALREADY_INITIALIZED {
            ck_res(rv, name, "C_Initialize")?;
        }
        let slot = side.find_slot()?;
        for _ in 0..threads.max(1) {
            let mut h: CK_SESSION_HANDLE = 0;
            let rv = p11!(
                side,
                C_OpenSession(
                    slot,
                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                    null_mut(),
                    None,
                    &mut h
                )
            );
            ck_res(rv, name, "C_OpenSession")?;
            side.sessions.push(h);
        }
        let pin = common::USER_PIN.as_bytes();
        let rv = p11!(
            side,
            C_Login(
                side.sessions[0],
                CKU_USER,
                pin.as_ptr() as *mut u8,
                pin.len() as CK_ULONG
            )
        );
        if rv != CKR_USER_ALREADY_LOGGED_IN {
            ck_res(rv, name, "C_Login")?;
        }
        Ok(side)
    }

    fn find_slot(&self) -> Result<CK_SLOT_ID, String> {
        let mut n: CK_ULONG = 0;
        let rv = p11!(self, C_GetSlotList(CK_TRUE, null_mut(), &mut n));
        ck_res(rv, &self.name, "C_GetSlotList")?;
        let mut slots = vec![0 as CK_SLOT_ID; n as usize];
        let rv = p11!(self, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut n));
        ck_res(rv, &self.name, "C_GetSlotList")?;
        slots.truncate(n as usize);
        for slot in slots.iter().copied() {
            let mut info = CK_TOKEN_INFO::default();
            let rv = p11!(self, C_GetTokenInfo(slot, &mut info));
            ck_res(rv, &self.name, "C_GetTokenInfo")?;
            if String::from_utf8_lossy(&info.label).trim_end() == TOKEN_LABEL {
                return Ok(slot);
            }
        }
        Err(format!("[{}] no slot holds {TOKEN_LABEL:?}", self.name))
    }

    /// An AES-256 token key with Vault's template.
    fn generate_aes(&self) -> Result<(), String> {
        let (class, key_type, len, yes, no) =
            (CKO_SECRET_KEY, CKK_AES, 32 as CK_ULONG, CK_TRUE, CK_FALSE);
        let mut template = [
            attr(CKA_CLASS, &class),
            attr(CKA_KEY_TYPE, &key_type),
            attr(CKA_VALUE_LEN, &len),
            attr_bytes(CKA_LABEL, AES_LABEL.as_bytes()),
            attr(CKA_TOKEN, &yes),
            attr(CKA_PRIVATE, &yes),
            attr(CKA_SENSITIVE, &yes),
            attr(CKA_EXTRACTABLE, &no),
            attr(CKA_ENCRYPT, &yes),
            attr(CKA_DECRYPT, &yes),
        ];
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_KEY_GEN,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        let mut key: CK_OBJECT_HANDLE = 0;
        let rv = p11!(
            self,
            C_GenerateKey(
                self.sessions[0],
                &mut mech,
                template.as_mut_ptr(),
                template.len() as CK_ULONG,
                &mut key
            )
        );
        ck_res(rv, &self.name, "C_GenerateKey")
    }

    /// Looks the AES key up by label (so that p11gate learns its label, as with Vault).
    fn find_aes(&mut self) -> Result<(), String> {
        let s = self.sessions[0];
        let class = CKO_SECRET_KEY;
        let mut template = [
            attr_bytes(CKA_LABEL, AES_LABEL.as_bytes()),
            attr(CKA_CLASS, &class),
        ];
        let rv = p11!(self, C_FindObjectsInit(s, template.as_mut_ptr(), 2));
        ck_res(rv, &self.name, "C_FindObjectsInit")?;
        let mut found = [0 as CK_OBJECT_HANDLE; 2];
        let mut n: CK_ULONG = 0;
        let rv = p11!(self, C_FindObjects(s, found.as_mut_ptr(), 2, &mut n));
        ck_res(rv, &self.name, "C_FindObjects")?;
        ck_res(
            p11!(self, C_FindObjectsFinal(s)),
            &self.name,
            "C_FindObjectsFinal",
        )?;
        if n != 1 {
            return Err(format!("[{}] {n} keys labelled {AES_LABEL:?}", self.name));
        }
        self.aes = found[0];
        Ok(())
    }

    fn finalize(&self) {
        let _ = (|| -> Result<(), String> {
            for s in &self.sessions {
                let _ = p11!(self, C_CloseSession(*s));
            }
            let _ = p11!(self, C_Finalize(null_mut()));
            Ok(())
        })();
    }

    fn functions(&self) -> Result<(InitFn, EncryptFn), String> {
        Ok((
            req(self.fl.C_EncryptInit, &self.name, "C_EncryptInit")?,
            req(self.fl.C_Encrypt, &self.name, "C_Encrypt")?,
        ))
    }

    /// One batch: `threads` threads, each `iters` operations on its own session, released
    /// together by a barrier. Returns when the first thread started and the last one ended.
    fn run_batch(&self, threads: usize, iters: u64) -> Result<(Instant, Instant), String> {
        if threads > self.sessions.len() {
            return Err(format!("[{}] {threads} threads, fewer sessions", self.name));
        }
        let (init, enc) = self.functions()?;
        let barrier = Barrier::new(threads);
        let spans: Vec<(Instant, Instant, u64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (barrier, s, key) = (&barrier, self.sessions[t], self.aes);
                    scope.spawn(move || {
                        barrier.wait();
                        let t0 = Instant::now();
                        let bad = p11gate_bench_audit_loop(init, enc, s, key, iters);
                        (t0, Instant::now(), bad)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("bench thread panicked"))
                .collect()
        });
        let bad: u64 = spans.iter().map(|s| s.2).sum();
        if bad > 0 {
            return Err(format!(
                "[{}] {bad} AES-GCM operations did not return CKR_OK or 48 bytes",
                self.name
            ));
        }
        let start = spans.iter().map(|s| s.0).min().expect("one thread");
        let end = spans.iter().map(|s| s.1).max().expect("one thread");
        Ok((start, end))
    }
}

/// `n` AES-256-GCM encryptions of 32 bytes (a fresh 12-byte IV each, no AAD, 128-bit tag):
/// `C_EncryptInit` + `C_Encrypt`. Returns how many failed. The loop callgrind counts
/// (`--toggle-collect=p11gate_bench_audit_loop`), and the timed loop.
#[no_mangle]
#[inline(never)]
pub fn p11gate_bench_audit_loop(
    init: InitFn,
    enc: EncryptFn,
    s: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    n: u64,
) -> u64 {
    let mut data = [0x42u8; 32];
    let mut out = [0u8; 64];
    let mut iv = [0u8; 12];
    let mut bad = 0;
    for i in 0..n {
        iv[..8].copy_from_slice(&i.to_le_bytes());
        let mut params = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: null_mut(),
            ulAADLen: 0,
            ulTagBits: 128,
        };
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&mut params as *mut CK_GCM_PARAMS).cast(),
            ulParameterLen: size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        // SAFETY: `mech` and the IV it points to are live for the call.
        if unsafe { init(s, &mut mech, key) } != CKR_OK {
            bad += 1;
            continue;
        }
        let mut len = out.len() as CK_ULONG;
        // SAFETY: 32 input bytes, `len` bytes of output space, live out-parameter.
        let rv = unsafe { enc(s, data.as_mut_ptr(), 32, out.as_mut_ptr(), &mut len) };
        if rv != CKR_OK || len != 48 {
            bad += 1;
        }
    }
    bad
}

// ---------------------------------------------------------------------------------------------
// Watching sinks and CPU time

/// Counts, in a growing text file, the complete new lines that contain every needle of a
/// pattern (one count per pattern).
struct Tail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    patterns: Vec<Vec<Vec<u8>>>,
    counts: Vec<u64>,
}

fn contains(line: &[u8], needle: &[u8]) -> bool {
    line.windows(needle.len()).any(|w| w == needle)
}

impl Tail {
    fn new(path: &Path, patterns: &[&[&str]]) -> Tail {
        Tail {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            patterns: patterns
                .iter()
                .map(|p| p.iter().map(|n| n.as_bytes().to_vec()).collect())
                .collect(),
            counts: vec![0; patterns.len()],
        }
    }

    /// Reads what was appended since the last poll.
    fn poll(&mut self) -> Result<(), String> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        f.seek(SeekFrom::Start(self.offset))
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_nl) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let rest = self.partial.split_off(last_nl + 1);
        for line in self.partial.split(|b| *b == b'\n') {
            for (i, p) in self.patterns.iter().enumerate() {
                if p.iter().all(|n| contains(line, n)) {
                    self.counts[i] += 1;
                }
            }
        }
        self.partial = rest;
        Ok(())
    }
}

/// Counts the lines of a growing file: the cheap check the bench polls while it waits for a
/// batch's records (the detailed [`Tail`] check runs after each round, outside the timing).
struct Lines {
    path: PathBuf,
    file: Option<std::fs::File>,
    buf: Vec<u8>,
    lines: u64,
}

impl Lines {
    fn new(path: &Path) -> Lines {
        Lines {
            path: path.to_path_buf(),
            file: None,
            buf: Vec::with_capacity(1 << 20),
            lines: 0,
        }
    }

    /// Reads what was appended; returns the number of lines so far.
    fn poll(&mut self) -> Result<u64, String> {
        if self.file.is_none() {
            match std::fs::File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(format!("{}: {e}", self.path.display())),
            }
        }
        let f = self.file.as_mut().expect("opened");
        self.buf.clear();
        f.read_to_end(&mut self.buf).map_err(|e| e.to_string())?;
        self.lines += self.buf.iter().filter(|b| **b == b'\n').count() as u64;
        Ok(self.lines)
    }
}

/// CPU time (ns) a task has run, from `/proc/PID/task/TID/schedstat`.
fn task_cpu_ns(pid: u32, tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn tasks(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// CPU time (ns) of all live threads of a process.
fn process_cpu_ns(pid: u32) -> u64 {
    tasks(pid).into_iter().map(|t| task_cpu_ns(pid, t)).sum()
}

/// This process's audit writer threads.
fn writer_threads() -> Vec<u32> {
    let pid = std::process::id();
    tasks(pid)
        .into_iter()
        .filter(|t| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{t}/comm"))
                .is_ok_and(|c| c.trim() == "p11gate-audit")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Set-up shared by the timing and counting modes

struct Env {
    _hsm: common::SoftHsm,
    tmp: tempfile::TempDir,
    key: PathBuf,
    audit_dir: PathBuf,
    syslog_socket: Option<PathBuf>,
    syslog_out: Option<PathBuf>,
    rsyslog_pid: Option<u32>,
    cli: PathBuf,
    gate: PathBuf,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A fresh token, the environment SoftHSM and p11gate read, an audit key and the paths of the
/// sinks. Called before any thread exists.
fn setup() -> Result<Env, String> {
    let hsm = common::SoftHsm::new();
    hsm.init_token(TOKEN_LABEL);
    for (k, v) in hsm.gate_env() {
        std::env::set_var(k, v);
    }
    std::env::set_var("P11GATE_LOG_LEVEL", "warn");
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let key = match env_path("P11GATE_BENCH_AUDIT_KEY") {
        Some(k) => k,
        None => {
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .map_err(|e| format!("/dev/urandom: {e}"))?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let k = tmp.path().join("audit.key");
            std::fs::write(&k, hex + "\n").map_err(|e| e.to_string())?;
            k
        }
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let deps = exe.parent().ok_or("no deps dir")?;
    let gate = env_path("P11GATE_BENCH_GATE").unwrap_or_else(|| {
        let so = deps.join("libp11gate.so");
        if so.exists() {
            so
        } else {
            common::module()
        }
    });
    let cli = env_path("P11GATE_BENCH_CLI")
        .unwrap_or_else(|| deps.parent().expect("target dir").join("p11gate"));
    let syslog_socket = env_path("P11GATE_BENCH_SYSLOG_SOCKET");
    let syslog_out = env_path("P11GATE_BENCH_SYSLOG_OUT");
    let rsyslog_pid = std::env::var("P11GATE_BENCH_RSYSLOG_PID")
        .ok()
        .and_then(|p| p.trim().parse().ok());
    let audit_dir = env_path("P11GATE_BENCH_AUDIT_DIR").unwrap_or_else(|| tmp.path().into());
    Ok(Env {
        _hsm: hsm,
        tmp,
        key,
        audit_dir,
        syslog_socket,
        syslog_out,
        rsyslog_pid,
        cli,
        gate,
    })
}

impl Env {
    fn audit_file(&self, kind: Kind) -> PathBuf {
        self.audit_dir
            .join(format!("audit-{}-{}.jsonl", kind.id(), std::process::id()))
    }

    /// The `P11GATE_AUDIT` value of a variant.
    fn audit_spec(&self, kind: Kind) -> Result<String, String> {
        let mut parts = Vec::new();
        if kind.syslog() {
            let s = self
                .syslog_socket
                .as_ref()
                .ok_or_else(|| format!("{}: no P11GATE_BENCH_SYSLOG_SOCKET", kind.title()))?;
            parts.push(format!("syslog:{}", s.display()));
        }
        if kind.file() {
            parts.push(format!("file:{}", self.audit_file(kind).display()));
        }
        Ok(if parts.is_empty() {
            "off".into()
        } else {
            parts.join(",")
        })
    }

    /// Opens a variant: SoftHSM itself, or `module` (a copy of libp11gate.so) initialised with
    /// the variant's audit configuration.
    fn open(&self, kind: Kind, module: &Path, threads: usize) -> Result<Side, String> {
        if !kind.gate() {
            return Side::open(&common::softhsm_module(), kind.id(), threads);
        }
        std::env::set_var("P11GATE_AUDIT", self.audit_spec(kind)?);
        std::env::set_var("P11GATE_AUDIT_KEY", &self.key);
        std::env::set_var("P11GATE_APP", kind.app());
        let side = Side::open(module, kind.id(), threads);
        std::env::remove_var("P11GATE_AUDIT");
        std::env::remove_var("P11GATE_APP");
        side
    }

    /// `p11gate audit verify FILE --key KEY`: the record count, or why not.
    fn verify(&self, file: &Path) -> Result<u64, String> {
        let out = Command::new(&self.cli)
            .args(["audit", "verify"])
            .arg(file)
            .arg("--key")
            .arg(&self.key)
            .output()
            .map_err(|e| format!("{}: {e}", self.cli.display()))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(format!(
                "audit verify {} failed: {text} {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        // "FILE: OK, N records"
        text.rsplit_once("OK, ")
            .and_then(|(_, n)| n.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("audit verify said {text:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// The timing run

/// One batch of one variant.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// Wall time of the calls, per operation and thread (ns).
    calls_ns: f64,
    /// Until the last record was in every sink, per operation and thread (ns).
    e2e_ns: f64,
    /// After the calls ended, until the last record was in every sink (ms).
    drain_ms: f64,
    /// CPU per operation (ns): the variant's writer thread, rsyslogd, this whole process (its
    /// calling threads, writer threads and the bench's own polling of the sinks).
    writer_cpu: f64,
    rsyslog_cpu: f64,
    process_cpu: f64,
}

struct Variant {
    kind: Kind,
    side: Side,
    writer: Option<u32>,
    file: Option<(PathBuf, Tail)>,
    /// `C_Encrypt` records expected in the sinks so far (every operation run).
    expected: u64,
    /// rsyslogd's count for this variant's app at the last check.
    syslog_seen: u64,
    /// The audit file's lines, and how many it must have after the current batch.
    file_lines: Option<(Lines, u64)>,
}

/// rsyslogd's output: per app, its `C_Encrypt` lines; and anomaly lines of any app.
struct SyslogWatch {
    tail: Tail,
    index: HashMap<Kind, usize>,
    /// rsyslogd's output lines, and how many it must have after the current batch.
    lines: Lines,
    target: u64,
}

const ANOMALY_PATTERNS: usize = 2;

impl SyslogWatch {
    fn new(out: &Path) -> SyslogWatch {
        let apps: Vec<(Kind, String)> = [Kind::Syslog, Kind::Both]
            .into_iter()
            .map(|k| (k, format!("app={} ", k.app())))
            .collect();
        let mut patterns: Vec<Vec<&str>> = vec![vec!["event=dropped"], vec!["event=outage"]];
        let mut index = HashMap::new();
        for (k, app) in &apps {
            index.insert(*k, patterns.len());
            patterns.push(vec!["fn=C_Encrypt ", app.as_str()]);
        }
        let refs: Vec<&[&str]> = patterns.iter().map(Vec::as_slice).collect();
        SyslogWatch {
            tail: Tail::new(out, &refs),
            index,
            lines: Lines::new(out),
            target: 0,
        }
    }

    fn count(&self, k: Kind) -> u64 {
        self.index.get(&k).map_or(0, |&i| self.tail.counts[i])
    }

    fn anomalies(&self) -> u64 {
        self.tail.counts[..ANOMALY_PATTERNS].iter().sum()
    }
}

fn file_tail(path: &Path) -> Tail {
    Tail::new(
        path,
        &[
            &["\"event\":\"dropped\""],
            &["\"event\":\"outage\""],
            &["\"fn\":\"C_Encrypt\""],
        ],
    )
}

/// Waits until every sink of `v` holds `v.expected` records; returns when that was.
fn wait_for_records(v: &mut Variant, syslog: &mut Option<SyslogWatch>) -> Result<Instant, String> {
    let deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        let mut done = true;
        if v.kind.syslog() {
            let w = syslog.as_mut().ok_or("no syslog watch")?;
            w.tail.poll()?;
            let seen = w.count(v.kind);
            if w.anomalies() > 0 {
                return Err(format!(
                    "rsyslogd's output has {} dropped/outage record(s)",
                    w.anomalies()
                ));
            }
            if seen > v.expected {
                return Err(format!(
                    "[{}] rsyslogd has {seen} C_Encrypt records, {} operations ran (duplicates)",
                    v.kind.id(),
                    v.expected
                ));
            }
            v.syslog_seen = seen;
            done &= seen == v.expected;
        }
        if let Some((path, tail)) = &mut v.file {
            tail.poll()?;
            let anomalies: u64 = tail.counts[..ANOMALY_PATTERNS].iter().sum();
            if anomalies > 0 {
                return Err(format!(
                    "{} has {anomalies} dropped/outage record(s)",
                    path.display()
                ));
            }
            let seen = tail.counts[ANOMALY_PATTERNS];
            if seen > v.expected {
                return Err(format!(
                    "{} has {seen} C_Encrypt records, {} operations ran",
                    path.display(),
                    v.expected
                ));
            }
            done &= seen == v.expected;
        }
        if done {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            let file_seen = v.file.as_ref().map(|f| f.1.counts[ANOMALY_PATTERNS]);
            return Err(format!(
                "[{}] records missing after {} s: {} operations; syslog has {}, file has {:?}",
                v.kind.id(),
                DRAIN_LIMIT.as_secs(),
                v.expected,
                v.syslog_seen,
                file_seen
            ));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Waits until rsyslogd's output and the audit file have as many lines as their targets (the
/// lines of the batch just run are already counted in): each sink then holds the batch's
/// records, which the detailed check after the round confirms one by one.
fn wait_for_lines(v: &mut Variant, syslog: &mut Option<SyslogWatch>) -> Result<Instant, String> {
    let deadline = Instant::now() + DRAIN_LIMIT;
    loop {
        let mut done = true;
        if v.kind.syslog() {
            let w = syslog.as_mut().ok_or("no syslog watch")?;
            done &= w.lines.poll()? >= w.target;
        }
        if let Some((lines, target)) = &mut v.file_lines {
            done &= lines.poll()? >= *target;
        }
        if done {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "[{}] a batch's records are missing after {} s",
                v.kind.id(),
                DRAIN_LIMIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_micros(250));
    }
}

/// Switches `v` (and rsyslogd's watch) to the cheap line counts: from now on every line is one
/// of the bench's C_Encrypt records. Call when every record so far has arrived.
fn count_lines_from_now(v: &mut Variant, syslog: &mut Option<SyslogWatch>) -> Result<(), String> {
    if let Some(w) = syslog.as_mut() {
        w.target = w.lines.poll()?;
    }
    if let Some((path, _)) = &v.file {
        let mut lines = Lines::new(path);
        let n = lines.poll()?;
        v.file_lines = Some((lines, n));
    }
    Ok(())
}

struct CpuMark {
    writer: u64,
    rsyslog: u64,
    process: u64,
}

/// CPU time (ns) of this process, threads that ended included (the bench's worker threads
/// end with their batch).
fn self_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage only writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live, correctly typed out-parameter.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}

fn cpu_mark(env: &Env, writer: Option<u32>) -> CpuMark {
    CpuMark {
        writer: writer.map_or(0, |t| task_cpu_ns(std::process::id(), t)),
        rsyslog: env.rsyslog_pid.map_or(0, process_cpu_ns),
        process: self_cpu_ns(),
    }
}

/// Runs one batch of `v` and waits for its records.
fn sample(
    env: &Env,
    v: &mut Variant,
    syslog: &mut Option<SyslogWatch>,
    threads: usize,
    iters: u64,
    fast: bool,
) -> Result<Sample, String> {
    let before = cpu_mark(env, v.writer);
    let (start, end) = v.side.run_batch(threads, iters)?;
    let ops = threads as u64 * iters;
    if v.kind.gate() && v.kind != Kind::Off {
        v.expected += ops;
    }
    let audited = v.kind.syslog() || v.kind.file();
    let done = if audited && (v.file_lines.is_some() || !v.kind.file()) && fast {
        if v.kind.syslog() {
            syslog.as_mut().ok_or("no syslog watch")?.target += ops;
        }
        if let Some((_, target)) = &mut v.file_lines {
            *target += ops;
        }
        wait_for_lines(v, syslog)?
    } else if audited {
        wait_for_records(v, syslog)?
    } else {
        end
    };
    let after = cpu_mark(env, v.writer);
    let per_op = |a: u64, b: u64| b.saturating_sub(a) as f64 / ops as f64;
    Ok(Sample {
        calls_ns: (end - start).as_nanos() as f64 / iters as f64,
        e2e_ns: (done.max(end) - start).as_nanos() as f64 / iters as f64,
        drain_ms: done.saturating_duration_since(end).as_secs_f64() * 1e3,
        writer_cpu: per_op(before.writer, after.writer),
        rsyslog_cpu: per_op(before.rsyslog, after.rsyslog),
        process_cpu: per_op(before.process, after.process),
    })
}

/// Median, quartiles, minimum and maximum.
#[derive(Clone, Copy, Debug)]
struct Spread {
    med: f64,
    q1: f64,
    q3: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Spread {
        Spread {
            med: median(v),
            q1: quantile(v, 0.25),
            q3: quantile(v, 0.75),
            min: quantile(v, 0.0),
            max: quantile(v, 1.0),
        }
    }
}

fn timing() -> Result<(), String> {
    let rounds: usize = env_num("P11GATE_BENCH_ROUNDS", 30usize).max(1);
    let batch = Duration::from_millis(env_num("P11GATE_BENCH_BATCH_MS", 200u64));
    let threads: Vec<usize> = std::env::var("P11GATE_BENCH_THREADS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .map(|t| {
            t.trim()
                .parse()
                .map_err(|_| format!("bad P11GATE_BENCH_THREADS entry {t:?}"))
        })
        .collect::<Result<_, _>>()?;
    let max_threads = threads.iter().copied().max().unwrap_or(1);
    let env = setup()?;
    let mut kinds: Vec<Kind> = match std::env::var("P11GATE_BENCH_VARIANTS") {
        Ok(list) => list
            .split(',')
            .map(|id| Kind::from_id(id.trim()).ok_or_else(|| format!("unknown variant {id:?}")))
            .collect::<Result<_, _>>()?,
        Err(_) => Kind::ALL.to_vec(),
    };
    if env.syslog_socket.is_some() && env.syslog_out.is_none() {
        return Err("P11GATE_BENCH_SYSLOG_SOCKET needs P11GATE_BENCH_SYSLOG_OUT".into());
    }
    if env.syslog_socket.is_none() {
        eprintln!("no P11GATE_BENCH_SYSLOG_SOCKET: the syslog variants are skipped");
        kinds.retain(|k| !k.syslog());
    }
    if !kinds.contains(&Kind::Off) {
        return Err("the variant 'off' is the baseline and must be measured".into());
    }
    // SoftHSM is initialised first, directly (as an application would), when measured.
    kinds.sort_by_key(|k| Kind::ALL.iter().position(|a| a == k));

    let mut variants: Vec<Variant> = Vec::new();
    for &kind in &kinds {
        let module = env.tmp.path().join(format!("libp11gate-{}.so", kind.id()));
        if kind.gate() {
            std::fs::copy(&env.gate, &module)
                .map_err(|e| format!("copy {}: {e}", env.gate.display()))?;
        }
        let writers_before = writer_threads();
        let side = env.open(kind, &module, max_threads)?;
        if kind == Kind::Off {
            side.generate_aes()?;
        }
        // The new thread names itself once it runs: give it a moment.
        let mut writer = None;
        for _ in 0..200 {
            writer = writer_threads()
                .into_iter()
                .find(|t| !writers_before.contains(t));
            if writer.is_some() || !(kind.syslog() || kind.file()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if (kind.syslog() || kind.file()) && writer.is_none() {
            return Err(format!("[{}] no new p11gate-audit thread", kind.id()));
        }
        let file = kind.file().then(|| {
            let p = env.audit_file(kind);
            let t = file_tail(&p);
            (p, t)
        });
        variants.push(Variant {
            kind,
            side,
            writer,
            file,
            expected: 0,
            syslog_seen: 0,
            file_lines: None,
        });
    }
    // Every side looks the key up (the direct one included), after it exists.
    for v in &mut variants {
        v.side.find_aes()?;
    }
    let mut syslog = env.syslog_out.as_deref().map(SyslogWatch::new);
    let off = variants
        .iter()
        .position(|v| v.kind == Kind::Off)
        .expect("off is measured");

    eprintln!(
        "audit bench: {rounds} rounds, {} ms batches, threads {threads:?}, variants {:?}",
        batch.as_millis(),
        kinds.iter().map(|k| k.id()).collect::<Vec<_>>()
    );
    // Iterations per thread and batch, from the audit-off variant (then a warm-up batch of
    // every variant, which also checks that every sink receives its records).
    let mut iters_for = HashMap::new();
    for &t in &threads {
        let mut iters = 1u64;
        let d = loop {
            let (a, b) = variants[off].side.run_batch(t, iters)?;
            if b - a >= Duration::from_millis(30) || iters >= 1 << 30 {
                break b - a;
            }
            iters *= 4;
        };
        let iters = ((batch.as_nanos() as f64 * iters as f64 / d.as_nanos() as f64) as u64).max(3);
        iters_for.insert(t, iters);
        for v in variants.iter_mut() {
            sample(&env, v, &mut syslog, t, iters / 4 + 1, false)?;
        }
    }

    for v in variants.iter_mut() {
        count_lines_from_now(v, &mut syslog)?;
    }

    let mut samples: HashMap<(Kind, usize), Vec<Sample>> = HashMap::new();
    let mut verify_time = Duration::ZERO;
    let mut verified: HashMap<Kind, u64> = HashMap::new();
    let started = Instant::now();
    for round in 0..rounds {
        for (ti, &t) in threads.iter().enumerate() {
            let iters = iters_for[&t];
            let n = variants.len();
            // Rotate the order by round and thread count.
            for j in 0..n {
                let v = &mut variants[(j + round + ti) % n];
                let s = sample(&env, v, &mut syslog, t, iters, true)?;
                samples.entry((v.kind, t)).or_default().push(s);
            }
        }
        // Outside the timing: every record of the round, one by one, in every sink (nothing
        // lost, nothing twice, no dropped/outage record, no stray line), and the file chains.
        let vt = Instant::now();
        for v in variants.iter_mut() {
            if v.kind.syslog() || v.kind.file() {
                wait_for_records(v, &mut syslog)?;
            }
            if let Some(((path, _), (lines, target))) = v.file.as_ref().zip(v.file_lines.as_mut()) {
                if lines.poll()? != *target {
                    return Err(format!(
                        "{}: {} lines, expected {target}",
                        path.display(),
                        lines.lines
                    ));
                }
                verified.insert(v.kind, env.verify(path)?);
            }
        }
        if let Some(w) = syslog.as_mut() {
            if w.lines.poll()? != w.target {
                return Err(format!(
                    "rsyslogd's output has {} lines, expected {}",
                    w.lines.lines, w.target
                ));
            }
        }
        verify_time += vt.elapsed();
        eprintln!(
            "round {}/{rounds} done ({:.0} s; records checked, audit verify OK)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }

    // Audited variants first, then SoftHSM: each writer drains at C_Finalize.
    for v in variants.iter().rev() {
        v.side.finalize();
    }
    let mut final_check = Vec::new();
    for v in &mut variants {
        if v.kind.syslog() || v.kind.file() {
            wait_for_records(v, &mut syslog)?;
            let mut line = format!("{}: {} C_Encrypt records expected", v.kind.id(), v.expected);
            if v.kind.syslog() {
                line += &format!(", {} in rsyslogd's output", v.syslog_seen);
            }
            if let Some((path, tail)) = &v.file {
                let total = env.verify(path)?;
                line += &format!(
                    ", {} in the audit file ({total} records in all, chain verified)",
                    tail.counts[ANOMALY_PATTERNS]
                );
            }
            final_check.push(line);
        }
    }
    report(&kinds, &threads, &iters_for, &samples, &env, rounds)?;
    println!();
    println!(
        "records (no loss, no duplicates, no dropped/outage records; checked after every round):"
    );
    for l in final_check {
        println!("  {l}");
    }
    println!(
        "audit verify after every round: OK ({:.1} s in all)",
        verify_time.as_secs_f64()
    );
    let _ = verified;
    Ok(())
}

fn report(
    kinds: &[Kind],
    threads: &[usize],
    iters_for: &HashMap<usize, u64>,
    samples: &HashMap<(Kind, usize), Vec<Sample>>,
    env: &Env,
    rounds: usize,
) -> Result<(), String> {
    println!();
    println!(
        "p11gate audit cost: AES-256-GCM encrypt 32 B (C_EncryptInit + C_Encrypt, 1 record per op)"
    );
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {cpus} CPUs, load average {}; {rounds} interleaved rounds; module {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        env.gate.display()
    );
    println!(
        "audit file in {}; rsyslogd pid {}",
        env.audit_dir.display(),
        env.rsyslog_pid
            .map_or("unknown (no CPU figures)".into(), |p| p.to_string())
    );
    println!("ns/op = wall time per operation per thread, median over rounds. thrpt = throughput vs audit");
    println!(
        "off, median of per-round ratios [IQR] {{min..max}}. calls: until the calls returned;"
    );
    println!("e2e: until the last record was in the sink's file. CPU us/op: the variant's writer");
    println!("thread, rsyslogd, and this whole process (all threads), per operation, median.");
    let mut all_met = true;
    let mut json = Vec::new();
    for &t in threads {
        println!();
        println!(
            "{t} thread(s), {} operations per thread and batch",
            iters_for[&t]
        );
        println!(
            "{:<27} {:>9} {:>9} {:>31} {:>31} {:>7} {:>7} {:>7} {:>7}",
            "variant",
            "calls ns",
            "e2e ns",
            "thrpt calls % [IQR] {min..max}",
            "thrpt e2e % [IQR] {min..max}",
            "drainms",
            "writer",
            "rsyslog",
            "process"
        );
        println!("{}", "-".repeat(143));
        let off = &samples[&(Kind::Off, t)];
        for &k in kinds {
            let s = &samples[&(k, t)];
            let ratio = |f: fn(&Sample) -> f64| -> Vec<f64> {
                s.iter()
                    .zip(off)
                    .map(|(x, o)| 100.0 * o.calls_ns / f(x))
                    .collect()
            };
            let calls = Spread::of(&ratio(|x| x.calls_ns));
            let e2e = Spread::of(&ratio(|x| x.e2e_ns));
            let col = |f: fn(&Sample) -> f64| median(&s.iter().map(f).collect::<Vec<_>>());
            let fmt = |r: Spread| {
                format!(
                    "{:.1} [{:.1}..{:.1}] {{{:.0}..{:.0}}}",
                    r.med, r.q1, r.q3, r.min, r.max
                )
            };
            println!(
                "{:<27} {:>9.0} {:>9.0} {:>31} {:>31} {:>7.1} {:>7.2} {:>7.2} {:>7.2}",
                k.title(),
                col(|x| x.calls_ns),
                col(|x| x.e2e_ns),
                fmt(calls),
                fmt(e2e),
                col(|x| x.drain_ms),
                col(|x| x.writer_cpu) / 1e3,
                col(|x| x.rsyslog_cpu) / 1e3,
                col(|x| x.process_cpu) / 1e3,
            );
            json.push(format!(
                "{{\"bench\":\"p11gate-audit\",\"variant\":\"{}\",\"threads\":{t},\"rounds\":{},\
                 \"iters_per_batch\":{},\"calls_ns_per_op\":{:.1},\"e2e_ns_per_op\":{:.1},\
                 \"throughput_calls_pct\":{:.2},\"throughput_calls_pct_q1\":{:.2},\
                 \"throughput_calls_pct_q3\":{:.2},\"throughput_calls_pct_min\":{:.2},\
                 \"throughput_calls_pct_max\":{:.2},\"throughput_e2e_pct\":{:.2},\
                 \"throughput_e2e_pct_q1\":{:.2},\"throughput_e2e_pct_q3\":{:.2},\
                 \"drain_ms\":{:.2},\"writer_cpu_ns_per_op\":{:.0},\"rsyslog_cpu_ns_per_op\":{:.0},\
                 \"process_cpu_ns_per_op\":{:.0}}}",
                k.id(),
                s.len(),
                iters_for[&t],
                col(|x| x.calls_ns),
                col(|x| x.e2e_ns),
                calls.med,
                calls.q1,
                calls.q3,
                calls.min,
                calls.max,
                e2e.med,
                e2e.q1,
                e2e.q3,
                col(|x| x.drain_ms),
                col(|x| x.writer_cpu),
                col(|x| x.rsyslog_cpu),
                col(|x| x.process_cpu),
            ));
            if k.syslog() || k.file() {
                all_met &= calls.med >= TARGET_PCT && e2e.med >= TARGET_PCT;
            }
        }
    }
    println!();
    for l in &json {
        println!("{l}");
    }
    println!();
    println!("target: every audited variant >= {TARGET_PCT}% of audit-off throughput (calls and e2e medians)");
    for &t in threads {
        let off = &samples[&(Kind::Off, t)];
        for &k in kinds.iter().filter(|k| k.syslog() || k.file()) {
            let s = &samples[&(k, t)];
            for (what, f) in [
                ("calls", (|x: &Sample| x.calls_ns) as fn(&Sample) -> f64),
                ("e2e", |x: &Sample| x.e2e_ns),
            ] {
                let r: Vec<f64> = s
                    .iter()
                    .zip(off)
                    .map(|(x, o)| 100.0 * o.calls_ns / f(x))
                    .collect();
                let m = median(&r);
                println!(
                    "  [{}] {} at {t} thread(s), {what}: {m:.1}%",
                    if m >= TARGET_PCT { "MET" } else { "NOT MET" },
                    k.title()
                );
            }
        }
    }
    println!(
        "P11GATE_AUDIT_BENCH_TARGETS={}",
        if all_met { "met" } else { "not-met" }
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Counting mode

/// `--count KIND N`: one session, 200 warm-up operations, then `N` between the markers.
fn count(args: &[String]) -> Result<(), String> {
    let usage = "usage: --count off|syslog|file|both|direct N";
    let [kind, n, ..] = args else {
        return Err(usage.into());
    };
    let kind = Kind::from_id(kind).ok_or(usage)?;
    let n: u64 = n.parse().map_err(|_| usage)?;
    let env = setup()?;
    let mut side = env.open(kind, &env.gate, 1)?;
    side.generate_aes()?;
    side.find_aes()?;
    let (init, enc) = side.functions()?;
    let s = side.sessions[0];
    let mut bad = p11gate_bench_audit_loop(init, enc, s, side.aes, WARMUP_OPS);
    let mut err = std::io::stderr();
    let _ = err.write_all(MARK_BEGIN);
    bad += p11gate_bench_audit_loop(init, enc, s, side.aes, n);
    let _ = err.write_all(MARK_END);
    side.finalize();
    if bad != 0 {
        return Err(format!("[{}] {bad} operations failed", kind.id()));
    }
    let records = if kind.file() {
        let path = env.audit_file(kind);
        env.verify(&path)?;
        let mut t = file_tail(&path);
        t.poll()?;
        t.counts[ANOMALY_PATTERNS].to_string()
    } else {
        "-".into()
    };
    println!("count {} {n} ok records={records}", kind.id());
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let result = match args.first().map(String::as_str) {
        Some("--count") => count(&args[1..]),
        _ => timing(),
    };
    if let Err(e) = result {
        eprintln!("audit bench: {e}");
        std::process::exit(1);
    }
}
