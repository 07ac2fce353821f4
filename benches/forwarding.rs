//! What does forwarding through p11gate cost? One run measures six workloads at 1 and 2 threads,
//! directly against SoftHSMv2 and through `libp11gate.so` (which forwards to that same SoftHSMv2),
//! interleaved round by round so that machine noise hits both sides alike, and reports medians.
//!
//! Both modules are loaded in this process with `dlopen` and called through their own
//! `CK_FUNCTION_LIST` (raw function pointers, no wrapper crate). p11gate's upstream is the very
//! same `libsofthsm2.so`, so both sides share one SoftHSM instance, one token and one login.
//!
//! Usage (arguments after `cargo bench --bench forwarding --`):
//! - no argument: the timing run; prints a table and one JSON line per workload (`{"bench":...}`).
//! - `--processes`: each module in its own child process of this binary (driven over a pipe,
//!   still interleaved by round) instead of both in this process. Chosen automatically when
//!   p11gate cannot be initialised next to a directly loaded SoftHSM.
//! - `--gate-first`: in one process, p11gate initialises SoftHSM (passing whatever locking it
//!   passes upstream) before the direct side does; by default the direct side comes first, so
//!   SoftHSM runs as a plain application would run it and p11gate finds it initialised.
//! - `--count direct|gate N`: one session, `N` calls of `C_GetSessionInfo` inside the function
//!   `p11gate_bench_count_loop`, bracketed by marker lines on stderr; for callgrind and strace
//!   (`scripts/callgrind-per-call.sh`).
//! - `--worker PATH SIDE THREADS create|find`: internal, one side of `--processes`.
//!
//! Environment:
//! - `P11GATE_BENCH_ROUNDS` (default 40) and `P11GATE_BENCH_BATCH_MS` (default 75): rounds, and
//!   the length of one timed batch (of each side, workload and thread count). The default run
//!   takes a little over a minute; raise either to lengthen it. Many short rounds pair the two
//!   sides more closely in time than few long ones.
//! - `P11GATE_BENCH_THREADS` (default `1,2`): thread counts; each thread has its own logged-in
//!   session.
//! - `P11GATE_BENCH_WORKLOADS` (default: all): a comma-separated subset of `get_session_info`,
//!   `aes_gcm_encrypt_32`, `hmac_sha256_sign_32`, `generate_random_32`, `find_by_label`,
//!   `rsa2048_oaep_decrypt`.
//! - `P11GATE_AUDIT` (default here: `off`): p11gate's audit sinks; the audit trail is on by
//!   default in p11gate, and would otherwise send a record per operation to `/dev/log`.
//! - `P11GATE_BENCH_GATE`: the module measured as "p11gate" (default: the `libp11gate.so` beside
//!   this binary in `target/release/deps/`). Point it at SoftHSM's module to check that the
//!   harness itself shows no difference between the two sides.
//!
//! The keys are token objects generated through p11gate with Vault's templates (AES-256, a
//! 32-byte generic secret for HMAC, RSA-2048); the direct side looks the same objects up.
//!
//! Reported per workload and thread count: ns per operation and thread directly and through
//! p11gate (medians over rounds), the added ns (median of the per-round differences), and the
//! throughput through p11gate as a percentage of direct (median of the per-round ratios). The
//! targets checked: <= 50 ns added per forwarded call (on C_GetSessionInfo, where nothing else
//! hides it) and >= 97% of direct throughput on every row.

#[path = "../tests/common/mod.rs"]
mod common;
#[macro_use]
mod shared;

use shared::{
    attr, attr_bytes, ck, ck_res, env_num, load, median, oaep_sha1_params, panic_text, quantile,
    req,
};

use std::io::{BufRead, BufReader, Write};
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::ptr::null_mut;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use pkcs11_sys::*;

const TOKEN_LABEL: &str = "p11gate-bench";
/// Marker lines around the counted loop, each written with one `write` system call.
const MARK_BEGIN: &[u8] = b"P11GATE_BENCH_LOOP_BEGIN\n";
const MARK_END: &[u8] = b"P11GATE_BENCH_LOOP_END\n";
const AES_LABEL: &str = "p11gate-bench-aes";
const HMAC_LABEL: &str = "p11gate-bench-hmac";
const RSA_LABEL: &str = "p11gate-bench-rsa";

/// Issue targets.
const TARGET_RATIO_PCT: f64 = 97.0;
const TARGET_ADDED_NS_PER_CALL: f64 = 50.0;

// ---------------------------------------------------------------------------------------------
// Workloads

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    SessionInfo,
    AesGcmEncrypt,
    HmacSign,
    Random,
    FindByLabel,
    RsaOaepDecrypt,
}

impl Workload {
    const ALL: [Workload; 6] = [
        Workload::SessionInfo,
        Workload::AesGcmEncrypt,
        Workload::HmacSign,
        Workload::Random,
        Workload::FindByLabel,
        Workload::RsaOaepDecrypt,
    ];

    fn id(self) -> &'static str {
        match self {
            Workload::SessionInfo => "get_session_info",
            Workload::AesGcmEncrypt => "aes_gcm_encrypt_32",
            Workload::HmacSign => "hmac_sha256_sign_32",
            Workload::Random => "generate_random_32",
            Workload::FindByLabel => "find_by_label",
            Workload::RsaOaepDecrypt => "rsa2048_oaep_decrypt",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Workload::SessionInfo => "C_GetSessionInfo",
            Workload::AesGcmEncrypt => "AES-256-GCM encrypt 32 B",
            Workload::HmacSign => "HMAC-SHA256 sign 32 B",
            Workload::Random => "C_GenerateRandom 32 B",
            Workload::FindByLabel => "find by label (init/find/final)",
            Workload::RsaOaepDecrypt => "RSA-2048 OAEP-SHA1 decrypt",
        }
    }

    /// PKCS#11 calls that make up one operation.
    fn calls(self) -> u32 {
        match self {
            Workload::SessionInfo | Workload::Random => 1,
            Workload::FindByLabel => 3,
            _ => 2,
        }
    }

    fn from_id(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.id() == s)
    }
}

// ---------------------------------------------------------------------------------------------
// One loaded module

/// One PKCS#11 module, initialised, with a logged-in session per thread and the bench's keys.
struct Side {
    name: String,
    fl: CK_FUNCTION_LIST,
    sessions: Vec<CK_SESSION_HANDLE>,
    aes: CK_OBJECT_HANDLE,
    hmac: CK_OBJECT_HANDLE,
    rsa_private: CK_OBJECT_HANDLE,
    rsa_ciphertext: Vec<u8>,
}

impl Side {
    /// Loads and initialises `path` with CKF_OS_LOCKING_OK and no mutex callbacks, as Vault
    /// does; no sessions, no keys yet.
    fn initialize(path: &Path, name: &str) -> Result<Side, String> {
        let side = Side {
            name: name.to_string(),
            fl: load(path, name)?,
            sessions: Vec::new(),
            aes: 0,
            hmac: 0,
            rsa_private: 0,
            rsa_ciphertext: Vec::new(),
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
        // Both sides share one SoftHSM: whoever comes second finds it initialised.
        if rv != CKR_CRYPTOKI_ALREADY_INITIALIZED {
            ck_res(rv, name, "C_Initialize")?;
        }
        Ok(side)
    }

    /// Initialises `path`, finds the bench token, opens `threads` read-write sessions and logs
    /// in. No keys yet: see [`Side::keys`].
    fn open(path: &Path, name: &str, threads: usize) -> Result<Side, String> {
        let mut side = Side::initialize(path, name)?;
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
        let s = side.sessions[0];
        let pin = common::USER_PIN.as_bytes();
        let rv = p11!(
            side,
            C_Login(s, CKU_USER, pin.as_ptr() as *mut u8, pin.len() as CK_ULONG)
        );
        // The login state of a token is per application; the other side may have logged in.
        if rv != CKR_USER_ALREADY_LOGGED_IN {
            ck_res(rv, name, "C_Login")?;
        }
        Ok(side)
    }

    /// With `create`, generates the bench's keys; either way then looks them up by label, so
    /// that both sides use the very same keys.
    fn keys(&mut self, create: bool) -> Result<(), String> {
        if create {
            self.generate_secret(
                CKM_AES_KEY_GEN,
                CKK_AES,
                AES_LABEL,
                &[CKA_ENCRYPT, CKA_DECRYPT],
            )?;
            self.generate_secret(
                CKM_GENERIC_SECRET_KEY_GEN,
                CKK_GENERIC_SECRET,
                HMAC_LABEL,
                &[CKA_SIGN, CKA_VERIFY],
            )?;
            self.generate_rsa()?;
        }
        self.aes = self.find_key(AES_LABEL, CKO_SECRET_KEY)?;
        self.hmac = self.find_key(HMAC_LABEL, CKO_SECRET_KEY)?;
        self.rsa_private = self.find_key(RSA_LABEL, CKO_PRIVATE_KEY)?;
        let rsa_public = self.find_key(RSA_LABEL, CKO_PUBLIC_KEY)?;
        self.rsa_ciphertext = self.rsa_encrypt(rsa_public)?;
        Ok(())
    }

    /// The one object of `class` labelled `label`.
    fn find_key(&self, label: &str, class: CK_OBJECT_CLASS) -> Result<CK_OBJECT_HANDLE, String> {
        let s = self.sessions[0];
        let mut template = [
            attr_bytes(CKA_LABEL, label.as_bytes()),
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
            return Err(format!(
                "[{}] {n} objects of class {class} labelled {label:?}",
                self.name
            ));
        }
        Ok(found[0])
    }

    fn find_slot(&self) -> Result<CK_SLOT_ID, String> {
        let mut n: CK_ULONG = 0;
        ck_res(
            p11!(self, C_GetSlotList(CK_TRUE, null_mut(), &mut n)),
            &self.name,
            "C_GetSlotList",
        )?;
        let mut slots = vec![0 as CK_SLOT_ID; n as usize];
        let rv = p11!(self, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut n));
        ck_res(rv, &self.name, "C_GetSlotList")?;
        slots.truncate(n as usize);
        for slot in slots.iter().copied() {
            let mut info = CK_TOKEN_INFO::default();
            ck_res(
                p11!(self, C_GetTokenInfo(slot, &mut info)),
                &self.name,
                "C_GetTokenInfo",
            )?;
            if String::from_utf8_lossy(&info.label).trim_end() == TOKEN_LABEL {
                eprintln!("{}: token {TOKEN_LABEL:?} in slot {slot:#x}", self.name);
                return Ok(slot);
            }
        }
        Err(format!(
            "[{}] no slot holds the token {TOKEN_LABEL:?} (slots {slots:?})",
            self.name
        ))
    }

    fn generate_secret(
        &self,
        mechanism: CK_MECHANISM_TYPE,
        key_type: CK_KEY_TYPE,
        label: &str,
        usage: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<(), String> {
        let m = shared::Module {
            fl: &self.fl,
            name: &self.name,
        };
        shared::generate_secret(&m, self.sessions[0], mechanism, key_type, label, usage)
    }

    /// An RSA-2048 key pair (exponent 65537) for OAEP.
    fn generate_rsa(&self) -> Result<(), String> {
        let m = shared::Module {
            fl: &self.fl,
            name: &self.name,
        };
        shared::generate_rsa(&m, self.sessions[0], RSA_LABEL)
    }

    /// 32 bytes encrypted once with the public key (OAEP, SHA-1, MGF1-SHA1, no label), for the
    /// decrypt workload.
    fn rsa_encrypt(&self, public: CK_OBJECT_HANDLE) -> Result<Vec<u8>, String> {
        let s = self.sessions[0];
        let mut params = oaep_sha1_params();
        let mut mech = CK_MECHANISM {
            mechanism: CKM_RSA_PKCS_OAEP,
            pParameter: (&mut params as *mut CK_RSA_PKCS_OAEP_PARAMS).cast(),
            ulParameterLen: size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
        };
        ck_res(
            p11!(self, C_EncryptInit(s, &mut mech, public)),
            &self.name,
            "C_EncryptInit(RSA-OAEP)",
        )?;
        let mut plain = [0x5au8; 32];
        let mut out = vec![0u8; 512];
        let mut len = out.len() as CK_ULONG;
        let rv = p11!(
            self,
            C_Encrypt(s, plain.as_mut_ptr(), 32, out.as_mut_ptr(), &mut len)
        );
        ck_res(rv, &self.name, "C_Encrypt(RSA-OAEP)")?;
        out.truncate(len as usize);
        Ok(out)
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

    /// Runs `iters` operations of `w` on session number `thread`; returns when the loop started
    /// and ended. Everything the loop needs is prepared before the clock starts.
    fn run_ops(
        &self,
        w: Workload,
        thread: usize,
        iters: u64,
    ) -> Result<(Instant, Instant), String> {
        let s = self.sessions[thread];
        let side = self.name.as_str();
        let mut data = [0x42u8; 32];
        let mut out = [0u8; 512];
        match w {
            Workload::SessionInfo => {
                let f = req(self.fl.C_GetSessionInfo, side, "C_GetSessionInfo")?;
                let mut info = CK_SESSION_INFO::default();
                let t0 = Instant::now();
                for _ in 0..iters {
                    // SAFETY: `info` is a live, correctly typed out-parameter.
                    ck(unsafe { f(s, &mut info) }, side, "C_GetSessionInfo");
                }
                Ok((t0, Instant::now()))
            }
            Workload::AesGcmEncrypt => {
                let init = req(self.fl.C_EncryptInit, side, "C_EncryptInit")?;
                let enc = req(self.fl.C_Encrypt, side, "C_Encrypt")?;
                let mut iv = [0u8; 12];
                let t0 = Instant::now();
                for i in 0..iters {
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
                    ck(
                        unsafe { init(s, &mut mech, self.aes) },
                        side,
                        "C_EncryptInit(AES-GCM)",
                    );
                    let mut len = out.len() as CK_ULONG;
                    // SAFETY: 32 input bytes, `len` bytes of output space, live out-parameter.
                    let rv = unsafe { enc(s, data.as_mut_ptr(), 32, out.as_mut_ptr(), &mut len) };
                    ck(rv, side, "C_Encrypt(AES-GCM)");
                    assert_eq!(
                        len, 48,
                        "[{side}] AES-GCM of 32 bytes must give 32 + 16 bytes"
                    );
                }
                Ok((t0, Instant::now()))
            }
            Workload::HmacSign => {
                let init = req(self.fl.C_SignInit, side, "C_SignInit")?;
                let sign = req(self.fl.C_Sign, side, "C_Sign")?;
                let mut mech = CK_MECHANISM {
                    mechanism: CKM_SHA256_HMAC,
                    pParameter: null_mut(),
                    ulParameterLen: 0,
                };
                let t0 = Instant::now();
                for _ in 0..iters {
                    // SAFETY: `mech` is live for the call.
                    ck(
                        unsafe { init(s, &mut mech, self.hmac) },
                        side,
                        "C_SignInit(HMAC)",
                    );
                    let mut len = out.len() as CK_ULONG;
                    // SAFETY: 32 input bytes, `len` bytes of output space, live out-parameter.
                    let rv = unsafe { sign(s, data.as_mut_ptr(), 32, out.as_mut_ptr(), &mut len) };
                    ck(rv, side, "C_Sign(HMAC)");
                    assert_eq!(len, 32, "[{side}] HMAC-SHA256 must give 32 bytes");
                }
                Ok((t0, Instant::now()))
            }
            Workload::Random => {
                let f = req(self.fl.C_GenerateRandom, side, "C_GenerateRandom")?;
                let t0 = Instant::now();
                for _ in 0..iters {
                    // SAFETY: `out` has room for the 32 bytes asked for.
                    ck(
                        unsafe { f(s, out.as_mut_ptr(), 32) },
                        side,
                        "C_GenerateRandom",
                    );
                }
                Ok((t0, Instant::now()))
            }
            Workload::FindByLabel => {
                let init = req(self.fl.C_FindObjectsInit, side, "C_FindObjectsInit")?;
                let find = req(self.fl.C_FindObjects, side, "C_FindObjects")?;
                let fin = req(self.fl.C_FindObjectsFinal, side, "C_FindObjectsFinal")?;
                let class = CKO_SECRET_KEY;
                let mut template = [
                    attr_bytes(CKA_LABEL, AES_LABEL.as_bytes()),
                    attr(CKA_CLASS, &class),
                ];
                let mut found = [0 as CK_OBJECT_HANDLE; 2];
                let t0 = Instant::now();
                for _ in 0..iters {
                    // SAFETY: the template and the values it points to are live for the call.
                    let rv = unsafe { init(s, template.as_mut_ptr(), 2) };
                    ck(rv, side, "C_FindObjectsInit");
                    let mut n: CK_ULONG = 0;
                    // SAFETY: `found` has room for the 2 handles asked for.
                    ck(
                        unsafe { find(s, found.as_mut_ptr(), 2, &mut n) },
                        side,
                        "C_FindObjects",
                    );
                    // SAFETY: plain call on a live session.
                    ck(unsafe { fin(s) }, side, "C_FindObjectsFinal");
                    assert_eq!(
                        n, 1,
                        "[{side}] the label {:?} must match one key",
                        AES_LABEL
                    );
                }
                Ok((t0, Instant::now()))
            }
            Workload::RsaOaepDecrypt => {
                let init = req(self.fl.C_DecryptInit, side, "C_DecryptInit")?;
                let dec = req(self.fl.C_Decrypt, side, "C_Decrypt")?;
                let mut params = oaep_sha1_params();
                let mut mech = CK_MECHANISM {
                    mechanism: CKM_RSA_PKCS_OAEP,
                    pParameter: (&mut params as *mut CK_RSA_PKCS_OAEP_PARAMS).cast(),
                    ulParameterLen: size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
                };
                let mut ct = self.rsa_ciphertext.clone();
                let t0 = Instant::now();
                for _ in 0..iters {
                    // SAFETY: `mech` and the parameters it points to are live for the call.
                    let rv = unsafe { init(s, &mut mech, self.rsa_private) };
                    ck(rv, side, "C_DecryptInit(RSA-OAEP)");
                    let mut len = out.len() as CK_ULONG;
                    // SAFETY: `ct.len()` input bytes, `len` bytes of output space.
                    let rv = unsafe {
                        dec(
                            s,
                            ct.as_mut_ptr(),
                            ct.len() as CK_ULONG,
                            out.as_mut_ptr(),
                            &mut len,
                        )
                    };
                    ck(rv, side, "C_Decrypt(RSA-OAEP)");
                    assert_eq!(len, 32, "[{side}] OAEP decrypt must give back the 32 bytes");
                }
                Ok((t0, Instant::now()))
            }
        }
    }

    /// One batch: `threads` threads, each `iters` operations on its own session, released
    /// together by a barrier. Returns the wall time from the first start to the last end.
    fn run_batch(&self, w: Workload, threads: usize, iters: u64) -> Result<Duration, String> {
        if threads > self.sessions.len() {
            return Err(format!(
                "[{}] {threads} threads but {} sessions",
                self.name,
                self.sessions.len()
            ));
        }
        let barrier = Barrier::new(threads);
        let spans: Vec<Result<(Instant, Instant), String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        self.run_ops(w, t, iters)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| Err(panic_text(&*e))))
                .collect()
        });
        let spans = spans.into_iter().collect::<Result<Vec<_>, _>>()?;
        let start = spans.iter().map(|s| s.0).min().expect("one thread");
        let end = spans.iter().map(|s| s.1).max().expect("one thread");
        Ok(end - start)
    }
}

// ---------------------------------------------------------------------------------------------
// Runners: a side in this process, or in a child process of this binary

trait Runner {
    /// Wall time of one batch.
    fn batch(&mut self, w: Workload, threads: usize, iters: u64) -> Result<Duration, String>;
    fn finish(&mut self);
}

struct InProcess(Side);

impl Runner for InProcess {
    fn batch(&mut self, w: Workload, threads: usize, iters: u64) -> Result<Duration, String> {
        self.0.run_batch(w, threads, iters)
    }
    fn finish(&mut self) {
        self.0.finalize();
    }
}

struct InChild {
    name: String,
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl InChild {
    fn spawn(path: &Path, name: &str, threads: usize, create: bool) -> Result<InChild, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg("--worker")
            .arg(path)
            .arg(name)
            .arg(threads.to_string())
            .arg(if create { "create" } else { "find" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("[{name}] cannot start a worker process: {e}"))?;
        let to = child.stdin.take().expect("piped stdin");
        let from = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut me = InChild {
            name: name.to_string(),
            child,
            to,
            from,
        };
        let hello = me.read_line()?;
        if hello != "ready" {
            return Err(format!("[{name}] worker failed: {hello}"));
        }
        Ok(me)
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        let n = self.from.read_line(&mut line).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "[{}] worker exited (its stderr says why)",
                self.name
            ));
        }
        Ok(line.trim().to_string())
    }
}

impl Runner for InChild {
    fn batch(&mut self, w: Workload, threads: usize, iters: u64) -> Result<Duration, String> {
        writeln!(self.to, "run {} {threads} {iters}", w.id()).map_err(|e| e.to_string())?;
        self.to.flush().map_err(|e| e.to_string())?;
        let reply = self.read_line()?;
        match reply.strip_prefix("ns ") {
            Some(ns) => Ok(Duration::from_nanos(ns.parse().map_err(|_| reply.clone())?)),
            None => Err(format!("[{}] worker: {reply}", self.name)),
        }
    }
    fn finish(&mut self) {
        let _ = writeln!(self.to, "quit");
        let _ = self.to.flush();
        let _ = self.child.wait();
    }
}

/// `--worker PATH SIDE THREADS create|find`: serve `run WORKLOAD THREADS ITERS` lines on stdin with
/// `ns WALL_NANOS` (or `error ...`) lines on stdout.
fn worker(args: &[String]) -> Result<(), String> {
    let [path, name, threads, keys] = args else {
        return Err("usage: --worker PATH SIDE THREADS create|find".into());
    };
    let threads: usize = threads.parse().map_err(|_| "THREADS must be a number")?;
    let stdout = std::io::stdout();
    let opened = Side::open(Path::new(path), name, threads)
        .and_then(|mut side| side.keys(keys == "create").map(|()| side));
    let side = match opened {
        Ok(side) => side,
        Err(e) => {
            let _ = writeln!(stdout.lock(), "error {e}");
            return Err(e);
        }
    };
    writeln!(stdout.lock(), "ready").map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["quit"] => break,
            ["run", w, t, n] => match (Workload::from_id(w), t.parse(), n.parse()) {
                (Some(w), Ok(t), Ok(n)) => match side.run_batch(w, t, n) {
                    Ok(d) => format!("ns {}", d.as_nanos()),
                    Err(e) => format!("error {e}"),
                },
                _ => format!("error bad command {line:?}"),
            },
            _ => format!("error bad command {line:?}"),
        };
        let mut out = stdout.lock();
        writeln!(out, "{reply}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    side.finalize();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Statistics and report

struct Cell {
    w: Workload,
    threads: usize,
    iters: u64,
    /// ns per operation and thread, one entry per round.
    direct: Vec<f64>,
    gate: Vec<f64>,
}

struct Row {
    w: Workload,
    threads: usize,
    iters: u64,
    rounds: usize,
    direct_ns: f64,
    gate_ns: f64,
    added_ns: f64,
    ratio_pct: f64,
    ratio_q1: f64,
    ratio_q3: f64,
}

impl Cell {
    fn row(&self) -> Row {
        let diffs: Vec<f64> = self
            .gate
            .iter()
            .zip(&self.direct)
            .map(|(g, d)| g - d)
            .collect();
        let ratios: Vec<f64> = self
            .gate
            .iter()
            .zip(&self.direct)
            .map(|(g, d)| 100.0 * d / g)
            .collect();
        Row {
            w: self.w,
            threads: self.threads,
            iters: self.iters,
            rounds: self.direct.len(),
            direct_ns: median(&self.direct),
            gate_ns: median(&self.gate),
            added_ns: median(&diffs),
            ratio_pct: median(&ratios),
            ratio_q1: quantile(&ratios, 0.25),
            ratio_q3: quantile(&ratios, 0.75),
        }
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns.abs() >= 100_000.0 {
        format!("{:.1} us", ns / 1000.0)
    } else {
        format!("{ns:.1}")
    }
}

fn report(rows: &[Row], gate_path: &Path, mode: &str) {
    println!();
    println!(
        "p11gate forwarding overhead ({mode}); p11gate = {}",
        gate_path.display()
    );
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!("machine: {cpus} CPUs; load average now {load} (other processes add noise)");
    println!("ns/op = wall time per operation per thread (median of rounds); added = median of per-round");
    println!(
        "differences; thrpt = p11gate throughput / direct throughput (median of per-round ratios,"
    );
    println!("with the interquartile range of those ratios).");
    println!();
    println!(
        "{:<33} {:>3} {:>5} {:>12} {:>12} {:>10} {:>10} {:>8} {:>15}",
        "workload",
        "thr",
        "calls",
        "direct ns",
        "p11gate ns",
        "added ns",
        "added/call",
        "thrpt %",
        "IQR %"
    );
    println!("{}", "-".repeat(116));
    for r in rows {
        println!(
            "{:<33} {:>3} {:>5} {:>12} {:>12} {:>10} {:>10.1} {:>8.2} {:>15}",
            r.w.title(),
            r.threads,
            r.w.calls(),
            fmt_ns(r.direct_ns),
            fmt_ns(r.gate_ns),
            format!("{:+.1}", r.added_ns),
            r.added_ns / f64::from(r.w.calls()),
            r.ratio_pct,
            format!("{:.2}..{:.2}", r.ratio_q1, r.ratio_q3),
        );
    }
    println!();
    for r in rows {
        println!(
            "{{\"bench\":\"p11gate-forwarding\",\"mode\":\"{mode}\",\"workload\":\"{}\",\"threads\":{},\
             \"calls_per_op\":{},\"rounds\":{},\"iters_per_batch\":{},\"direct_ns_per_op\":{:.2},\
             \"p11gate_ns_per_op\":{:.2},\"added_ns_per_op\":{:.2},\"added_ns_per_call\":{:.2},\
             \"throughput_pct\":{:.3},\"throughput_pct_q1\":{:.3},\"throughput_pct_q3\":{:.3}}}",
            r.w.id(),
            r.threads,
            r.w.calls(),
            r.rounds,
            r.iters,
            r.direct_ns,
            r.gate_ns,
            r.added_ns,
            r.added_ns / f64::from(r.w.calls()),
            r.ratio_pct,
            r.ratio_q1,
            r.ratio_q3,
        );
    }
    println!();
    println!("targets:");
    let mut all = true;
    for r in rows.iter().filter(|r| r.w == Workload::SessionInfo) {
        let ok = r.added_ns <= TARGET_ADDED_NS_PER_CALL;
        all &= ok;
        println!(
            "  [{}] added time per forwarded call <= {TARGET_ADDED_NS_PER_CALL} ns ({} at {} thread(s)): {:+.1} ns",
            if ok { "MET" } else { "NOT MET" },
            r.w.title(),
            r.threads,
            r.added_ns
        );
    }
    for r in rows {
        let ok = r.ratio_pct >= TARGET_RATIO_PCT;
        all &= ok;
        // A miss whose upper quartile still reaches the target may be this machine's noise.
        let noisy = !ok && r.ratio_q3 >= TARGET_RATIO_PCT;
        println!(
            "  [{}] throughput >= {TARGET_RATIO_PCT}% of direct: {} at {} thread(s): {:.2}%{}",
            if ok { "MET" } else { "NOT MET" },
            r.w.title(),
            r.threads,
            r.ratio_pct,
            if noisy {
                " (the upper quartile reaches the target: rerun longer to tell)"
            } else {
                ""
            }
        );
    }
    println!(
        "  => timing targets {}; instruction and system-call targets: scripts/callgrind-per-call.sh",
        if all { "all MET" } else { "NOT all met" }
    );
    println!(
        "P11GATE_BENCH_TIMING_TARGETS={}",
        if all { "met" } else { "not-met" }
    );
}

// ---------------------------------------------------------------------------------------------
// Main modes

/// The module measured as "p11gate": `P11GATE_BENCH_GATE`, else the `libp11gate.so` cargo built
/// together with this binary (`target/release/deps/`; `cargo bench` does not always copy it up to
/// `target/release/`), else the one the tests use.
fn gate_module() -> PathBuf {
    if let Some(p) = std::env::var_os("P11GATE_BENCH_GATE") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    match exe.parent().map(|deps| deps.join("libp11gate.so")) {
        Some(so) if so.exists() => so,
        _ => common::module(),
    }
}

/// Runs `open` with `P11GATE_CONFIG` set to `P11GATE_BENCH_GATE_CONFIG` (and without
/// `P11GATE_UPSTREAM`, which a file's upstreams exclude) when that is set: the measured side then
/// initialises under its own configuration, e.g. mapped slots with policy rules, while the
/// baseline side keeps the plain environment. Called before any worker thread exists.
fn with_gate_config<T>(open: impl FnOnce() -> T) -> T {
    let Some(config) = std::env::var_os("P11GATE_BENCH_GATE_CONFIG") else {
        return open();
    };
    let (old_config, old_upstream) = (
        std::env::var_os("P11GATE_CONFIG"),
        std::env::var_os("P11GATE_UPSTREAM"),
    );
    std::env::set_var("P11GATE_CONFIG", config);
    std::env::remove_var("P11GATE_UPSTREAM");
    let result = open();
    match old_config {
        Some(v) => std::env::set_var("P11GATE_CONFIG", v),
        None => std::env::remove_var("P11GATE_CONFIG"),
    }
    if let Some(v) = old_upstream {
        std::env::set_var("P11GATE_UPSTREAM", v);
    }
    result
}

/// A fresh SoftHSM token, and the environment p11gate and SoftHSM read, set in this process
/// (before any thread exists) so that child processes inherit it.
fn fixture() -> common::SoftHsm {
    let hsm = common::SoftHsm::new();
    hsm.init_token(TOKEN_LABEL);
    for (k, v) in hsm.gate_env() {
        std::env::set_var(k, v);
    }
    std::env::set_var("P11GATE_LOG_LEVEL", "warn");
    // The audit trail is on by default (syslog to /dev/log): this bench measures forwarding, so
    // it turns audit off unless told otherwise (benches/audit.rs measures what audit costs).
    if std::env::var_os("P11GATE_AUDIT").is_none() {
        std::env::set_var("P11GATE_AUDIT", "off");
    }
    hsm
}

/// Runs both sides with growing batches until one takes 30 ms; returns the iterations per
/// thread that make a batch last about `batch`.
fn calibrate(
    runners: &mut [Box<dyn Runner>; 2],
    w: Workload,
    threads: usize,
    batch: Duration,
) -> Result<u64, String> {
    let mut worst_ns_per_op = 0f64;
    for r in runners.iter_mut() {
        let mut iters = 1u64;
        loop {
            let d = r.batch(w, threads, iters)?;
            if d >= Duration::from_millis(30) || iters >= 1 << 30 {
                worst_ns_per_op = worst_ns_per_op.max(d.as_nanos() as f64 / iters as f64);
                break;
            }
            iters *= 4;
        }
    }
    Ok(((batch.as_nanos() as f64 / worst_ns_per_op) as u64).max(3))
}

fn timing(args: &[String]) -> Result<(), String> {
    let rounds: usize = env_num("P11GATE_BENCH_ROUNDS", 40usize).max(1);
    let batch = Duration::from_millis(env_num("P11GATE_BENCH_BATCH_MS", 75u64));
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
    let gate_path = gate_module();
    // The baseline side: SoftHSMv2 itself, or (P11GATE_BENCH_DIRECT) another module, such as
    // a copy of libp11gate.so in passthrough mode when measuring what routing and policy add.
    let direct_path =
        std::env::var_os("P11GATE_BENCH_DIRECT").map_or_else(common::softhsm_module, PathBuf::from);
    let mut hsm = fixture();

    // In one process the direct side initialises SoftHSM first (as the application would),
    // so p11gate finds its upstream initialised and SoftHSM runs with its own OS locking on both
    // sides; `--gate-first` turns that round. Either way the keys are generated through
    // p11gate and the direct side looks the same keys up. In two processes each side
    // initialises its own SoftHSM.
    let children = |max_threads| -> Result<[Box<dyn Runner>; 2], String> {
        let gate = InChild::spawn(&gate_path, "p11gate", max_threads, true)?;
        let direct = InChild::spawn(&direct_path, "direct", max_threads, false)?;
        Ok([Box::new(direct), Box::new(gate)])
    };
    let gate_first = args.iter().any(|a| a == "--gate-first");
    let open_gate = || with_gate_config(|| Side::open(&gate_path, "p11gate", max_threads));
    let in_process = || -> Result<[Box<dyn Runner>; 2], String> {
        let (mut direct, mut gate) = if gate_first {
            let gate = open_gate()?;
            (Side::open(&direct_path, "direct", max_threads)?, gate)
        } else {
            let direct = Side::open(&direct_path, "direct", max_threads)?;
            (direct, open_gate()?)
        };
        gate.keys(true)?;
        direct.keys(false)?;
        Ok([Box::new(InProcess(direct)), Box::new(InProcess(gate))])
    };
    let mut processes = args.iter().any(|a| a == "--processes");
    let mut runners: [Box<dyn Runner>; 2] = if processes {
        children(max_threads)?
    } else {
        match in_process() {
            Ok(runners) => runners,
            Err(e) => {
                eprintln!("p11gate next to a directly loaded SoftHSM failed: {e}");
                eprintln!(
                    "falling back to one child process per side (--processes), on a new token"
                );
                processes = true;
                hsm = fixture();
                children(max_threads)?
            }
        }
    };
    let mode = match (processes, gate_first) {
        (true, _) => "two processes",
        (false, false) => "one process, SoftHSM initialised directly first",
        (false, true) => "one process, SoftHSM initialised by p11gate first",
    };
    eprintln!(
        "forwarding bench: {rounds} rounds, {} ms batches, threads {threads:?}, {mode}",
        batch.as_millis()
    );

    let workloads: Vec<Workload> = match std::env::var("P11GATE_BENCH_WORKLOADS") {
        Ok(list) => list
            .split(',')
            .map(|id| {
                Workload::from_id(id.trim())
                    .ok_or_else(|| format!("unknown workload {id:?} in P11GATE_BENCH_WORKLOADS"))
            })
            .collect::<Result<_, _>>()?,
        Err(_) => Workload::ALL.to_vec(),
    };
    let mut cells = Vec::new();
    for w in workloads {
        for &t in &threads {
            let iters = calibrate(&mut runners, w, t, batch)?;
            cells.push(Cell {
                w,
                threads: t,
                iters,
                direct: Vec::new(),
                gate: Vec::new(),
            });
        }
    }
    let started = Instant::now();
    for round in 0..rounds {
        for (i, cell) in cells.iter_mut().enumerate() {
            // Alternate which side goes first, by round and by cell.
            let order = if (round + i) % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let d = runners[side].batch(cell.w, cell.threads, cell.iters)?;
                let ns = d.as_nanos() as f64 / cell.iters as f64;
                if side == 0 {
                    &mut cell.direct
                } else {
                    &mut cell.gate
                }
                .push(ns);
            }
        }
        eprintln!(
            "round {}/{rounds} done ({:.0} s)",
            round + 1,
            started.elapsed().as_secs_f64()
        );
    }
    // p11gate first: it finalises SoftHSM only if it initialised it; then the direct side.
    runners[1].finish();
    runners[0].finish();
    let rows: Vec<Row> = cells.iter().map(Cell::row).collect();
    report(&rows, &gate_path, mode);
    drop(hsm);
    Ok(())
}

/// The loop callgrind counts (`--toggle-collect=p11gate_bench_count_loop`): `n` calls of
/// `C_GetSessionInfo`; returns how many did not answer CKR_OK.
#[no_mangle]
#[inline(never)]
fn p11gate_bench_count_loop(
    f: unsafe extern "C" fn(CK_SESSION_HANDLE, CK_SESSION_INFO_PTR) -> CK_RV,
    s: CK_SESSION_HANDLE,
    n: u64,
) -> u64 {
    let mut info = CK_SESSION_INFO::default();
    let mut bad = 0;
    for _ in 0..n {
        // SAFETY: `f` is the module's C_GetSessionInfo and `info` a live out-parameter.
        if unsafe { f(s, &mut info) } != CKR_OK {
            bad += 1;
        }
    }
    bad
}

/// `--count direct|gate N`: a session (no keys, no login) and `N` calls of C_GetSessionInfo
/// between two marker lines on stderr.
fn count(args: &[String]) -> Result<(), String> {
    let (which, n) = match args {
        [which, n, ..] => (
            which.as_str(),
            n.parse::<u64>().map_err(|_| "N must be a number")?,
        ),
        _ => return Err("usage: --count direct|gate N".into()),
    };
    let path = match which {
        "direct" => common::softhsm_module(),
        "gate" => gate_module(),
        _ => return Err("usage: --count direct|gate N".into()),
    };
    let _hsm = fixture();
    let side = Side::initialize(&path, which)?;
    let slot = side.find_slot()?;
    let mut s: CK_SESSION_HANDLE = 0;
    let rv = p11!(
        side,
        C_OpenSession(slot, CKF_SERIAL_SESSION, null_mut(), None, &mut s)
    );
    ck_res(rv, which, "C_OpenSession")?;
    let f = req(side.fl.C_GetSessionInfo, which, "C_GetSessionInfo")?;
    // Warm up (lazy state, caches) outside the counted loop.
    let bad = p11gate_bench_count_loop(f, s, 1000);
    let mut err = std::io::stderr();
    let _ = err.write_all(MARK_BEGIN);
    let bad = bad + p11gate_bench_count_loop(f, s, n);
    let _ = err.write_all(MARK_END);
    let _ = p11!(side, C_CloseSession(s));
    let _ = p11!(side, C_Finalize(null_mut()));
    if bad != 0 {
        return Err(format!("[{which}] {bad} calls of C_GetSessionInfo failed"));
    }
    println!("count {which} {n} ok");
    Ok(())
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let result = match args.first().map(String::as_str) {
        Some("--worker") => worker(&args[1..]),
        Some("--count") => count(&args[1..]),
        _ => timing(&args),
    };
    if let Err(e) = result {
        eprintln!("forwarding bench: {e}");
        std::process::exit(1);
    }
}
