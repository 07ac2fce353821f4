//! Metrics through the built libp11gate.so: a known sequence of raw PKCS#11 calls, then the
//! Prometheus file is read back with a parser of this test's own and `p11gate stats` is run on
//! it. On the soft token (a mapped slot) and on SoftHSMv2 (slots passed through), in this
//! process, in two child processes at once, and across fork().

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use once_cell::sync::OnceCell;
use pkcs11_sys::*;

const SCENARIO_VAR: &str = "P11GATE_METRICS_TEST_SCENARIO";
const CALLS_VAR: &str = "P11GATE_METRICS_TEST_CALLS";
const SOFT_SO_PIN: &str = "metrics-so-pin-2231";
const SOFT_USER_PIN: &str = "metrics-user-pin-7719";
/// An app name that needs escaping in a label and replacing in a file name.
const APP: &str = "vault\"a\\b";
const APP_FILE: &str = "vault_a_b";
/// The histogram's upper bounds: 2^i µs for i in 0..=24, then +Inf.
const LE: [&str; 26] = [
    "0.000001",
    "0.000002",
    "0.000004",
    "0.000008",
    "0.000016",
    "0.000032",
    "0.000064",
    "0.000128",
    "0.000256",
    "0.000512",
    "0.001024",
    "0.002048",
    "0.004096",
    "0.008192",
    "0.016384",
    "0.032768",
    "0.065536",
    "0.131072",
    "0.262144",
    "0.524288",
    "1.048576",
    "2.097152",
    "4.194304",
    "8.388608",
    "16.777216",
    "+Inf",
];

// ---------------------------------------------------------------------------------------------
// The module, called through its function list

/// libp11gate.so's function list; the library is loaded once and never unloaded.
fn module() -> &'static CK_FUNCTION_LIST {
    static LIST: OnceCell<&'static CK_FUNCTION_LIST> = OnceCell::new();
    LIST.get_or_init(|| {
        // SAFETY: loading the built module runs no initialisers of its own (p11gate has none).
        let lib = unsafe { libloading::Library::new(common::module()) }.expect("load .so");
        // SAFETY: C_GetFunctionList has this signature (PKCS#11 2.40 §5.2).
        let get: libloading::Symbol<unsafe extern "C" fn(*mut CK_FUNCTION_LIST_PTR) -> CK_RV> =
            unsafe { lib.get(b"C_GetFunctionList") }.expect("C_GetFunctionList");
        let mut list: CK_FUNCTION_LIST_PTR = null_mut();
        // SAFETY: a live output pointer.
        assert_eq!(unsafe { get(&mut list) }, CKR_OK);
        std::mem::forget(lib);
        // SAFETY: p11gate's function list is static and the library is never unloaded.
        unsafe { &*list }
    })
}

fn initialize() -> CK_RV {
    // SAFETY: NULL arguments are allowed (no mutex callbacks, threads allowed).
    unsafe { (module().C_Initialize.unwrap())(null_mut()) }
}

fn finalize() -> CK_RV {
    // SAFETY: pReserved must be NULL.
    unsafe { (module().C_Finalize.unwrap())(null_mut()) }
}

fn first_slot() -> CK_SLOT_ID {
    let mut slots = [0 as CK_SLOT_ID; 8];
    let mut n = slots.len() as CK_ULONG;
    // SAFETY: the buffer holds n slot ids.
    let rv = unsafe { (module().C_GetSlotList.unwrap())(CK_TRUE, slots.as_mut_ptr(), &mut n) };
    assert_eq!(rv, CKR_OK, "C_GetSlotList");
    assert!(n >= 1, "no slot with a token");
    slots[0]
}

fn open(slot: CK_SLOT_ID) -> CK_SESSION_HANDLE {
    let mut h = 0;
    let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
    // SAFETY: a live output pointer; no notification callback.
    let rv = unsafe { (module().C_OpenSession.unwrap())(slot, flags, null_mut(), None, &mut h) };
    assert_eq!(rv, CKR_OK, "C_OpenSession({slot})");
    h
}

fn login(s: CK_SESSION_HANDLE, pin: &str) {
    let mut pin = pin.as_bytes().to_vec();
    // SAFETY: the PIN buffer has the given length.
    let rv = unsafe {
        (module().C_Login.unwrap())(s, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
    };
    assert_eq!(rv, CKR_OK, "C_Login");
}

fn attr<T>(type_: CK_ATTRIBUTE_TYPE, value: &mut T) -> CK_ATTRIBUTE {
    CK_ATTRIBUTE {
        type_,
        pValue: value as *mut T as *mut _,
        ulValueLen: std::mem::size_of::<T>() as CK_ULONG,
    }
}

/// A 256-bit AES session key for encryption.
fn aes_key(s: CK_SESSION_HANDLE) -> CK_OBJECT_HANDLE {
    let (mut class, mut kt, mut len) = (CKO_SECRET_KEY, CKK_AES, 32 as CK_ULONG);
    let (mut yes, mut no) = (CK_TRUE, CK_FALSE);
    let mut template = [
        attr(CKA_CLASS, &mut class),
        attr(CKA_KEY_TYPE, &mut kt),
        attr(CKA_VALUE_LEN, &mut len),
        attr(CKA_ENCRYPT, &mut yes),
        attr(CKA_TOKEN, &mut no),
    ];
    let mut m = CK_MECHANISM {
        mechanism: CKM_AES_KEY_GEN,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let mut key = 0;
    // SAFETY: the mechanism and the template (whose values outlive the call) are valid.
    let rv = unsafe {
        (module().C_GenerateKey.unwrap())(
            s,
            &mut m,
            template.as_mut_ptr(),
            template.len() as CK_ULONG,
            &mut key,
        )
    };
    assert_eq!(rv, CKR_OK, "C_GenerateKey");
    key
}

fn encrypt_init(s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
    let mut iv = [7u8; 16];
    let mut m = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        pParameter: iv.as_mut_ptr() as *mut _,
        ulParameterLen: iv.len() as CK_ULONG,
    };
    // SAFETY: the mechanism and its 16-byte IV outlive the call.
    unsafe { (module().C_EncryptInit.unwrap())(s, &mut m, key) }
}

fn encrypt(s: CK_SESSION_HANDLE) -> CK_RV {
    let mut data = [1u8; 16];
    let mut out = [0u8; 64];
    let mut out_len = out.len() as CK_ULONG;
    // SAFETY: input and output buffers have the lengths given.
    unsafe {
        (module().C_Encrypt.unwrap())(
            s,
            data.as_mut_ptr(),
            data.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut out_len,
        )
    }
}

fn random(s: CK_SESSION_HANDLE) -> CK_RV {
    let mut buf = [0u8; 16];
    // SAFETY: the buffer has the length given.
    unsafe { (module().C_GenerateRandom.unwrap())(s, buf.as_mut_ptr(), buf.len() as CK_ULONG) }
}

fn session_info(s: CK_SESSION_HANDLE) -> CK_RV {
    let mut info = CK_SESSION_INFO::default();
    // SAFETY: a live output structure.
    unsafe { (module().C_GetSessionInfo.unwrap())(s, &mut info) }
}

fn slot_info(slot: CK_SLOT_ID) -> CK_RV {
    let mut info = CK_SLOT_INFO::default();
    // SAFETY: a live output structure.
    unsafe { (module().C_GetSlotInfo.unwrap())(slot, &mut info) }
}

/// Sets (or, with `None`, removes) each variable; the names p11gate reads are all listed by the
/// callers, so nothing of an earlier test leaks into the next.
fn set_env(vars: &[(&str, Option<&str>)]) {
    for (k, v) in vars {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The file, read with a parser of this test's own

/// One metrics file.
#[derive(Debug, Default)]
struct Prom {
    /// (slot, function, result) -> calls.
    calls: BTreeMap<(String, String, String), u64>,
    /// (slot, function) -> [(le, cumulative)] in file order.
    buckets: BTreeMap<(String, String), Vec<(String, u64)>>,
    sums: BTreeMap<(String, String), f64>,
    counts: BTreeMap<(String, String), u64>,
    apps: BTreeSet<String>,
    pids: BTreeSet<String>,
    types: Vec<String>,
}

/// `name{k="v",...} value`, with the label escapes of the format.
fn parse_sample(line: &str) -> Result<(String, BTreeMap<String, String>, f64), String> {
    let open = line.find('{').ok_or("no labels")?;
    let name = line[..open].to_string();
    let mut labels = BTreeMap::new();
    let bytes: Vec<char> = line[open + 1..].chars().collect();
    let mut i = 0;
    loop {
        if bytes.get(i) == Some(&'}') {
            i += 1;
            break;
        }
        let mut key = String::new();
        while let Some(&c) = bytes.get(i) {
            i += 1;
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if bytes.get(i) != Some(&'"') {
            return Err(format!("label {key} without a quoted value"));
        }
        i += 1;
        let mut value = String::new();
        loop {
            match bytes.get(i) {
                None => return Err("unterminated value".into()),
                Some('"') => break,
                Some('\\') => {
                    match bytes.get(i + 1) {
                        Some('n') => value.push('\n'),
                        Some(&c @ ('\\' | '"')) => value.push(c),
                        other => return Err(format!("bad escape {other:?}")),
                    }
                    i += 1;
                }
                Some(&c) => value.push(c),
            }
            i += 1;
        }
        i += 1;
        labels.insert(key, value);
        if bytes.get(i) == Some(&',') {
            i += 1;
        }
    }
    let rest: String = bytes[i..].iter().collect();
    let value = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .parse::<f64>()
        .map_err(|e| format!("value {rest:?}: {e}"))?;
    Ok((name, labels, value))
}

/// Parses a whole file; any line that is not a comment or a well-formed sample of ours fails.
fn parse_prom(text: &str) -> Result<Prom, String> {
    if !text.ends_with('\n') {
        return Err("the file does not end with a newline".into());
    }
    let mut p = Prom::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            p.types.push(t.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (name, labels, value) = parse_sample(line).map_err(|e| format!("{line:?}: {e}"))?;
        let get = |k: &str| {
            labels
                .get(k)
                .cloned()
                .ok_or_else(|| format!("{line:?}: no {k} label"))
        };
        p.apps.insert(get("app")?);
        p.pids.insert(get("pid")?);
        let key = (get("slot")?, get("function")?);
        let n = value as u64;
        match name.as_str() {
            "p11gate_calls_total" => {
                p.calls.insert((key.0, key.1, get("result")?), n);
            }
            "p11gate_call_duration_seconds_bucket" => {
                p.buckets.entry(key).or_default().push((get("le")?, n));
            }
            "p11gate_call_duration_seconds_sum" => {
                p.sums.insert(key, value);
            }
            "p11gate_call_duration_seconds_count" => {
                p.counts.insert(key, n);
            }
            other => return Err(format!("unexpected metric {other}")),
        }
    }
    Ok(p)
}

impl Prom {
    fn calls(&self, slot: &str, function: &str, result: &str) -> u64 {
        let key = (slot.to_string(), function.to_string(), result.to_string());
        self.calls.get(&key).copied().unwrap_or(0)
    }

    /// Every histogram is complete and cumulative, and, when `quiet` (no call was running while
    /// the file was written), its count is exactly the calls counted for its series.
    fn check_histograms(&self, quiet: bool) -> Result<(), String> {
        let mut series: BTreeSet<(String, String)> = self
            .calls
            .keys()
            .map(|(s, f, _)| (s.clone(), f.clone()))
            .collect();
        series.extend(self.buckets.keys().cloned());
        for key in &series {
            let buckets = self
                .buckets
                .get(key)
                .ok_or_else(|| format!("{key:?}: no histogram"))?;
            let les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
            if les != LE {
                return Err(format!("{key:?}: buckets {les:?}"));
            }
            if buckets.windows(2).any(|w| w[0].1 > w[1].1) {
                return Err(format!("{key:?}: buckets not cumulative: {buckets:?}"));
            }
            let count = self.counts.get(key).copied();
            let inf = buckets.last().map(|b| b.1);
            if count != inf {
                return Err(format!("{key:?}: _count {count:?}, +Inf bucket {inf:?}"));
            }
            // While calls run, a call's bucket may be read before its time is added.
            let sum = self.sums.get(key).copied().unwrap_or(-1.0);
            let least = if quiet { f64::MIN_POSITIVE } else { 0.0 };
            if !(sum >= least && sum <= inf.unwrap_or(0) as f64 * 16.777216) {
                return Err(format!("{key:?}: _sum {sum} for {inf:?} calls"));
            }
            let calls: u64 = self
                .calls
                .iter()
                .filter(|((s, f, _), _)| (s, f) == (&key.0, &key.1))
                .map(|(_, n)| n)
                .sum();
            if quiet && Some(calls) != count {
                return Err(format!("{key:?}: {calls} calls, histogram count {count:?}"));
            }
        }
        let want = [
            "p11gate_calls_total counter",
            "p11gate_call_duration_seconds histogram",
        ];
        if self.types != want {
            return Err(format!("TYPE lines {:?}", self.types));
        }
        Ok(())
    }
}

fn read_prom(path: &Path) -> Prom {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    parse_prom(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read the metrics dir")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

fn stats(args: &[&str], env: &[(&str, &str)]) -> (String, String, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .arg("stats")
        .args(args)
        .env_remove("P11GATE_METRICS")
        .envs(env.iter().copied())
        .output()
        .expect("run p11gate stats");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

/// A soft token directory initialised with `p11gate token init --dir`.
fn soft_token(dir: &Path) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["token", "init", "--dir"])
        .arg(dir)
        .args(["--label", "metrics"])
        .env("P11GATE_CONFIG", "/nonexistent/p11gate.toml")
        .env_remove("P11GATE_UPSTREAM")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("p11gate token init");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SOFT_SO_PIN}\n{SOFT_USER_PIN}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "token init: {out:?}");
}

// ---------------------------------------------------------------------------------------------
// Tests

/// 7 encryptions, 2 C_EncryptInit with a key handle that does not exist, 1 C_GenerateRandom,
/// and two calls that name no valid slot or session, on a soft token mapped to virtual slot 3:
/// the file holds exactly these counts, the histograms match them, and `p11gate stats` shows
/// them (table and JSON). A second C_Initialize keeps counting into the same file.
#[test]
fn exact_counts_histograms_and_stats_on_a_mapped_soft_token_slot() {
    let work = tempfile::tempdir().unwrap();
    let token = work.path().join("token");
    std::fs::create_dir(&token).unwrap();
    soft_token(&token);
    let metrics = work.path().join("metrics");
    std::fs::create_dir(&metrics).unwrap();
    let config = work.path().join("p11gate.toml");
    std::fs::write(
        &config,
        format!(
            "default_app = {app:?}\n\n[[upstream]]\nname = \"soft\"\nsoft_token = {token:?}\n\n\
             [[slot]]\nid = 3\nupstream = \"soft\"\nupstream_slot = 0\n\n\
             [[app]]\nname = {app:?}\nslots = [3]\n\n\
             [metrics]\ndir = {metrics:?}\ninterval_s = 3600\n",
            app = APP,
            token = token.display().to_string(),
            metrics = metrics.display().to_string(),
        ),
    )
    .unwrap();
    let config_s = config.display().to_string();
    let log = work.path().join("p11gate.log").display().to_string();
    let _guard = common::in_process(&[]);
    set_env(&[
        ("P11GATE_CONFIG", Some(&config_s)),
        ("P11GATE_AUDIT", Some("off")),
        ("P11GATE_LOG", Some(&log)),
        ("P11GATE_UPSTREAM", None),
        ("P11GATE_APP", None),
        ("P11GATE_METRICS", None),
        ("P11GATE_METRICS_INTERVAL", None),
    ]);

    assert_eq!(initialize(), CKR_OK);
    let pid = std::process::id().to_string();
    let file = metrics.join(format!("p11gate-{APP_FILE}-{pid}.prom"));
    // Written at C_Initialize: the headers, no series yet.
    let at_start = std::fs::read_to_string(&file).expect("the file right after C_Initialize");
    let empty = parse_prom(&at_start).unwrap();
    assert!(
        empty.calls.is_empty() && empty.buckets.is_empty(),
        "{at_start}"
    );

    let s = open(3);
    login(s, SOFT_USER_PIN);
    let key = aes_key(s);
    for _ in 0..7 {
        assert_eq!(encrypt_init(s, key), CKR_OK);
        assert_eq!(encrypt(s), CKR_OK);
    }
    for _ in 0..2 {
        assert_eq!(encrypt_init(s, key + 0x7777), CKR_KEY_HANDLE_INVALID);
    }
    assert_eq!(random(s), CKR_OK);
    assert_eq!(session_info(0xdead), CKR_SESSION_HANDLE_INVALID);
    assert_eq!(slot_info(99), CKR_SLOT_ID_INVALID);
    // interval_s = 3600: nothing is rewritten before C_Finalize.
    assert_eq!(std::fs::read_to_string(&file).unwrap(), at_start);
    assert_eq!(finalize(), CKR_OK);

    let p = read_prom(&file);
    let expected: BTreeMap<(String, String, String), u64> = [
        ("3", "C_OpenSession", "CKR_OK", 1),
        ("3", "C_Login", "CKR_OK", 1),
        ("3", "C_GenerateKey", "CKR_OK", 1),
        ("3", "C_EncryptInit", "CKR_OK", 7),
        ("3", "C_EncryptInit", "CKR_KEY_HANDLE_INVALID", 2),
        ("3", "C_Encrypt", "CKR_OK", 7),
        ("3", "C_GenerateRandom", "CKR_OK", 1),
        ("none", "C_GetSessionInfo", "CKR_SESSION_HANDLE_INVALID", 1),
        ("none", "C_GetSlotInfo", "CKR_SLOT_ID_INVALID", 1),
    ]
    .into_iter()
    .map(|(s, f, r, n)| ((s.into(), f.into(), r.into()), n))
    .collect();
    assert_eq!(p.calls, expected);
    p.check_histograms(true).unwrap();
    assert_eq!(p.apps, BTreeSet::from([APP.to_string()]));
    assert_eq!(p.pids, BTreeSet::from([pid.clone()]));
    assert_eq!(
        dir_names(&metrics),
        vec![format!("p11gate-{APP_FILE}-{pid}.prom")]
    );

    // p11gate stats, JSON: the same counts, and p50/p99 inside the buckets they fall in.
    let (out, err, code) = stats(&["--json", metrics.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["files"].as_u64(), v["processes"].as_u64()),
        (Some(1), Some(1))
    );
    let rows = v["rows"].as_array().unwrap();
    let got: BTreeMap<(String, String), (u64, u64)> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["app"], APP);
            (
                (
                    r["slot"].as_str().unwrap().to_string(),
                    r["function"].as_str().unwrap().to_string(),
                ),
                (r["calls"].as_u64().unwrap(), r["errors"].as_u64().unwrap()),
            )
        })
        .collect();
    let want: BTreeMap<(String, String), (u64, u64)> = [
        ("3", "C_OpenSession", 1, 0),
        ("3", "C_Login", 1, 0),
        ("3", "C_GenerateKey", 1, 0),
        ("3", "C_EncryptInit", 9, 2),
        ("3", "C_Encrypt", 7, 0),
        ("3", "C_GenerateRandom", 1, 0),
        ("none", "C_GetSessionInfo", 1, 1),
        ("none", "C_GetSlotInfo", 1, 1),
    ]
    .into_iter()
    .map(|(s, f, c, e)| ((s.into(), f.into()), (c, e)))
    .collect();
    assert_eq!(got, want);
    let init = rows
        .iter()
        .find(|r| r["function"] == "C_EncryptInit")
        .unwrap();
    assert_eq!(
        init["results"],
        serde_json::json!({"CKR_KEY_HANDLE_INVALID": 2, "CKR_OK": 7})
    );
    let buckets = &p.buckets[&("3".to_string(), "C_EncryptInit".to_string())];
    for (q, name) in [(0.5, "p50_seconds"), (0.99, "p99_seconds")] {
        let at = init[name].as_f64().unwrap();
        // The bucket holding the q-th call: its bounds contain the estimate.
        let rank = q * 9.0;
        let i = buckets.iter().position(|b| b.1 as f64 >= rank).unwrap();
        let lower: f64 = if i == 0 {
            0.0
        } else {
            buckets[i - 1].0.parse().unwrap()
        };
        let upper: f64 = buckets[i].0.parse().unwrap();
        assert!(
            lower <= at && at <= upper,
            "{name} {at} not in ({lower}, {upper}]"
        );
    }
    assert!(init["p50_seconds"].as_f64() <= init["p99_seconds"].as_f64());
    let sum = p.sums[&("3".to_string(), "C_EncryptInit".to_string())];
    assert!((init["sum_seconds"].as_f64().unwrap() - sum).abs() < 1e-9);

    // The table: found from the configuration ([metrics] dir) when no PATH is given.
    let (table, err, code) = stats(&[], &[("P11GATE_CONFIG", &config_s)]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["1", "file,", "1", "process"]);
    assert_eq!(
        lines[1],
        ["APP", "SLOT", "FUNCTION", "CALLS", "ERRORS", "MEAN", "P50", "P99"]
    );
    let row = |f: &str| {
        lines
            .iter()
            .find(|l| l.len() == 8 && l[2] == f)
            .unwrap_or_else(|| panic!("no row for {f}:\n{table}"))
            .clone()
    };
    assert_eq!(
        row("C_EncryptInit")[..5],
        [APP, "3", "C_EncryptInit", "9", "2"]
    );
    assert_eq!(row("C_Encrypt")[..5], [APP, "3", "C_Encrypt", "7", "0"]);
    assert_eq!(
        row("C_GetSessionInfo")[..5],
        [APP, "none", "C_GetSessionInfo", "1", "1"]
    );
    assert_eq!(
        lines.iter().filter(|l| l.len() == 8).count(),
        1 + 8,
        "{table}"
    );
    assert!(
        lines.contains(&vec!["results", "other", "than", "CKR_OK:"]),
        "{table}"
    );
    assert!(
        lines.contains(&vec![
            APP,
            "3",
            "C_EncryptInit",
            "CKR_KEY_HANDLE_INVALID",
            "2"
        ]),
        "{table}"
    );

    // Initialised again in the same process: the same file, counts continued.
    assert_eq!(initialize(), CKR_OK);
    let s = open(3);
    assert_eq!(random(s), CKR_OK);
    assert_eq!(finalize(), CKR_OK);
    let p = read_prom(&file);
    assert_eq!(p.calls("3", "C_OpenSession", "CKR_OK"), 2);
    assert_eq!(p.calls("3", "C_GenerateRandom", "CKR_OK"), 2);
    assert_eq!(p.calls("3", "C_Encrypt", "CKR_OK"), 7);
    p.check_histograms(true).unwrap();
    assert_eq!(dir_names(&metrics).len(), 1);
}

/// With interval_s = 1 and calls running on another thread, the file is replaced again and
/// again; every read finds a complete file (never a part of one), counts never go back, and
/// at the end no temporary file is left and the counts are exactly the calls made.
#[test]
fn the_file_is_replaced_atomically_every_interval_while_calls_run() {
    let hsm = common::SoftHsm::new();
    hsm.init_token("metrics-interval");
    let metrics = tempfile::tempdir().unwrap();
    let dir = metrics.path().display().to_string();
    let _guard = common::in_process(&hsm.gate_env());
    set_env(&[
        ("P11GATE_AUDIT", Some("off")),
        ("P11GATE_APP", Some("interval")),
        ("P11GATE_METRICS", Some(&dir)),
        ("P11GATE_METRICS_INTERVAL", Some("1")),
    ]);
    assert_eq!(initialize(), CKR_OK);
    let slot = first_slot();
    let s = open(slot);
    let slot_label = slot.to_string();
    let file = metrics
        .path()
        .join(format!("p11gate-interval-{}.prom", std::process::id()));
    let tmp = format!(".p11gate-interval-{}.prom.tmp", std::process::id());

    let stop = AtomicBool::new(false);
    let made = AtomicU64::new(0);
    let (rewrites, reads) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(random(s), CKR_OK);
                made.fetch_add(1, Ordering::Relaxed);
            }
        });
        // A rename gives the file a new inode: count the changes (an inode number freed by one
        // rename may come back with a later one, so distinct numbers would undercount).
        let (mut inode, mut rewrites) = (None, 0);
        let mut last = 0;
        let mut reads = 0;
        // Generous: a loaded machine may run the writer late, never early.
        let deadline = Instant::now() + Duration::from_secs(60);
        while rewrites < 2 && Instant::now() < deadline {
            for name in dir_names(metrics.path()) {
                assert!(
                    name == file.file_name().unwrap().to_str().unwrap() || name == tmp,
                    "unexpected file {name}"
                );
            }
            let Ok(f) = std::fs::File::open(&file) else {
                panic!("{} disappeared", file.display());
            };
            let ino = f.metadata().unwrap().ino();
            if inode.is_some_and(|i| i != ino) {
                rewrites += 1;
            }
            inode = Some(ino);
            let text = std::io::read_to_string(f).unwrap();
            let p = parse_prom(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            p.check_histograms(false)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            let n = p.calls(&slot_label, "C_GenerateRandom", "CKR_OK");
            assert!(n >= last, "C_GenerateRandom went from {last} to {n}");
            last = n;
            reads += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        (rewrites, reads)
    });
    assert!(
        rewrites >= 2,
        "with interval_s = 1 the file was replaced only {rewrites} times in 60 s ({reads} reads)"
    );
    assert_eq!(finalize(), CKR_OK);
    let p = read_prom(&file);
    p.check_histograms(true).unwrap();
    assert_eq!(
        p.calls(&slot_label, "C_GenerateRandom", "CKR_OK"),
        made.load(Ordering::Relaxed)
    );
    assert_eq!(
        dir_names(metrics.path()),
        vec![file.file_name().unwrap().to_str().unwrap().to_string()]
    );
}

/// Calls from many threads, each counting in a block of its own, add up exactly; the counts of
/// threads that exited stay (their blocks go to the next threads).
#[test]
fn counts_from_many_threads_add_up_and_outlive_their_threads() {
    let hsm = common::SoftHsm::new();
    hsm.init_token("metrics-threads");
    let metrics = tempfile::tempdir().unwrap();
    let dir = metrics.path().display().to_string();
    let _guard = common::in_process(&hsm.gate_env());
    set_env(&[
        ("P11GATE_AUDIT", Some("off")),
        ("P11GATE_APP", Some("threads")),
        ("P11GATE_METRICS", Some(&dir)),
        ("P11GATE_METRICS_INTERVAL", Some("3600")),
    ]);
    assert_eq!(initialize(), CKR_OK);
    let slot = first_slot();
    for (threads, calls) in [(4, 250), (6, 100)] {
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let s = open(slot);
                    for _ in 0..calls {
                        assert_eq!(random(s), CKR_OK);
                    }
                    assert_eq!(session_info(s), CKR_OK);
                });
            }
        });
    }
    assert_eq!(finalize(), CKR_OK);
    let p = read_prom(
        &metrics
            .path()
            .join(format!("p11gate-threads-{}.prom", std::process::id())),
    );
    let slot = slot.to_string();
    let expected: BTreeMap<(String, String, String), u64> = [
        ("none", "C_GetSlotList", "CKR_OK", 1),
        (slot.as_str(), "C_OpenSession", "CKR_OK", 10),
        (
            slot.as_str(),
            "C_GenerateRandom",
            "CKR_OK",
            4 * 250 + 6 * 100,
        ),
        (slot.as_str(), "C_GetSessionInfo", "CKR_OK", 10),
    ]
    .into_iter()
    .map(|(s, f, r, n)| ((s.into(), f.into(), r.into()), n))
    .collect();
    assert_eq!(p.calls, expected);
    p.check_histograms(true).unwrap();
}

/// Two processes of one app on one host: two files, each with its own pid label and counts;
/// `p11gate stats` adds them up; each file goes away when its process exits.
#[test]
fn two_processes_write_two_files_and_stats_adds_them_up() {
    let hsm = common::SoftHsm::new();
    hsm.init_token("metrics-twins");
    let metrics = tempfile::tempdir().unwrap();
    let mut env = hsm.gate_env();
    env.push(("P11GATE_AUDIT".into(), "off".into()));
    env.push(("P11GATE_APP".into(), "twin".into()));
    env.push((
        "P11GATE_METRICS".into(),
        metrics.path().display().to_string(),
    ));
    let mut children = Vec::new();
    for calls in [3, 5] {
        let mut cmd = common::child_test_command(SCENARIO_VAR, "process", &env);
        let mut child = cmd
            .env(CALLS_VAR, calls.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a child");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            // libtest writes "test child_process ... " before the test's own output.
            .find_map(|l| l.split_once("READY ").map(|(_, r)| r.to_string()))
            .expect("the child's READY line");
        let (pid, slot) = ready.split_once(' ').unwrap();
        assert_eq!(pid, child.id().to_string());
        // Kept open: the child still writes libtest's result line when it ends.
        children.push((child, calls, pid.to_string(), slot.to_string(), lines));
    }
    let mut names = Vec::new();
    for (_, calls, pid, slot, _) in &children {
        let name = format!("p11gate-twin-{pid}.prom");
        let p = read_prom(&metrics.path().join(&name));
        assert_eq!(p.pids, BTreeSet::from([pid.clone()]));
        assert_eq!(p.calls(slot, "C_GenerateRandom", "CKR_OK"), *calls);
        assert_eq!(p.calls(slot, "C_OpenSession", "CKR_OK"), 1);
        p.check_histograms(true).unwrap();
        names.push(name);
    }
    names.sort();
    assert_eq!(dir_names(metrics.path()), names);

    let (out, err, code) = stats(&["--json", metrics.path().to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["files"].as_u64(), v["processes"].as_u64()),
        (Some(2), Some(2))
    );
    let slot = &children[0].3;
    let row = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["function"] == "C_GenerateRandom" && r["slot"] == slot.as_str())
        .unwrap_or_else(|| panic!("no C_GenerateRandom row:\n{out}"));
    assert_eq!(
        (row["calls"].as_u64(), row["processes"].as_u64()),
        (Some(8), Some(2))
    );

    for (mut child, _, _, _, lines) in children {
        drop(child.stdin.take());
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(child.wait().unwrap().success(), "{rest:?}");
    }
    assert_eq!(dir_names(metrics.path()), Vec::<String>::new());
}

/// A child after fork() counts nothing of its parent's: its own C_Initialize gives it a file of
/// its own, which goes away when it exits; the parent's file and counts are untouched.
#[test]
fn a_forked_child_writes_its_own_file_and_leaves_the_parents_alone() {
    let hsm = common::SoftHsm::new();
    hsm.init_token("metrics-fork");
    let metrics = tempfile::tempdir().unwrap();
    let mut env = hsm.gate_env();
    env.push(("P11GATE_AUDIT".into(), "off".into()));
    env.push(("P11GATE_APP".into(), "forker".into()));
    env.push((
        "P11GATE_METRICS".into(),
        metrics.path().display().to_string(),
    ));
    // Written at C_Initialize and C_Finalize only, so that the files can be compared.
    env.push(("P11GATE_METRICS_INTERVAL".into(), "3600".into()));
    let out = common::child_test_command(SCENARIO_VAR, "fork", &env)
        .output()
        .expect("run the fork scenario");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("FORK CHECKS PASSED"));
}

#[test]
#[ignore = "run as a child by the other tests"]
fn child_process() {
    let Ok(scenario) = std::env::var(SCENARIO_VAR) else {
        return;
    };
    let dir = PathBuf::from(std::env::var("P11GATE_METRICS").unwrap());
    match scenario.as_str() {
        "process" => {
            let calls: u64 = std::env::var(CALLS_VAR).unwrap().parse().unwrap();
            assert_eq!(initialize(), CKR_OK);
            let slot = first_slot();
            let s = open(slot);
            for _ in 0..calls {
                assert_eq!(random(s), CKR_OK);
            }
            assert_eq!(finalize(), CKR_OK);
            println!("READY {} {slot}", std::process::id());
            std::io::stdout().flush().unwrap();
            // Until the parent has read the files.
            let _ = std::io::read_to_string(std::io::stdin());
        }
        "fork" => fork_scenario(&dir),
        other => panic!("unknown scenario {other}"),
    }
}

fn fork_scenario(dir: &Path) {
    assert_eq!(initialize(), CKR_OK);
    let slot = first_slot();
    let s = open(slot);
    assert_eq!(random(s), CKR_OK);
    assert_eq!(random(s), CKR_OK);
    let parent = std::process::id();
    let parent_file = dir.join(format!("p11gate-forker-{parent}.prom"));
    let written = std::fs::read_to_string(&parent_file).expect("the parent's file");

    // SAFETY: the child only calls the module and exits; this process has no thread of its
    // own inside the module (the module's writer threads are not copied into the child).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match std::panic::catch_unwind(|| forked_child(dir, slot, s, &parent_file)) {
            Ok(()) => 0,
            Err(_) => 1,
        };
        // exit() (not _exit): the atexit handler must remove the child's file.
        std::process::exit(code);
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; status is a live output.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child failed (status {status:#x})"
    );
    let child_file = dir.join(format!("p11gate-forker-{pid}.prom"));
    assert!(
        !child_file.exists(),
        "the child's file is left after its exit"
    );
    // The child wrote nothing into the parent's file.
    assert_eq!(std::fs::read_to_string(&parent_file).unwrap(), written);
    assert_eq!(random(s), CKR_OK);
    assert_eq!(finalize(), CKR_OK);
    let p = read_prom(&parent_file);
    let slot = slot.to_string();
    let expected: BTreeMap<(String, String, String), u64> = [
        ("none", "C_GetSlotList", "CKR_OK", 1),
        (slot.as_str(), "C_OpenSession", "CKR_OK", 1),
        (slot.as_str(), "C_GenerateRandom", "CKR_OK", 3),
    ]
    .into_iter()
    .map(|(s, f, r, n)| ((s.into(), f.into(), r.into()), n))
    .collect();
    assert_eq!(p.calls, expected);
    assert_eq!(p.pids, BTreeSet::from([parent.to_string()]));
    println!("FORK CHECKS PASSED");
}

fn forked_child(
    dir: &Path,
    slot: CK_SLOT_ID,
    parent_session: CK_SESSION_HANDLE,
    parent_file: &Path,
) {
    let before = std::fs::read_to_string(parent_file).unwrap();
    assert_eq!(random(parent_session), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(initialize(), CKR_OK);
    let me = std::process::id();
    let file = dir.join(format!("p11gate-forker-{me}.prom"));
    assert!(file.exists(), "the child's own file after its C_Initialize");
    let s = open(slot);
    assert_eq!(random(s), CKR_OK);
    assert_eq!(finalize(), CKR_OK);
    let p = read_prom(&file);
    let slot = slot.to_string();
    let expected: BTreeMap<(String, String, String), u64> = [
        (slot.as_str(), "C_OpenSession", "CKR_OK", 1),
        (slot.as_str(), "C_GenerateRandom", "CKR_OK", 1),
    ]
    .into_iter()
    .map(|(s, f, r, n)| ((s.into(), f.into(), r.into()), n))
    .collect();
    assert_eq!(p.calls, expected);
    assert_eq!(p.pids, BTreeSet::from([me.to_string()]));
    assert_eq!(std::fs::read_to_string(parent_file).unwrap(), before);
}

#[test]
fn stats_exit_codes_and_messages() {
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("node.prom"), "up 1\n").unwrap();
    let (out, err, code) = stats(&[empty.path().to_str().unwrap()], &[]);
    assert_eq!((out.as_str(), code), ("", Some(1)));
    assert_eq!(
        err,
        format!(
            "p11gate stats: no p11gate metrics file in {}\n",
            empty.path().display()
        )
    );
    let (_, err, code) = stats(&["/nonexistent/metrics"], &[]);
    assert_eq!(code, Some(3));
    assert!(
        err.starts_with("p11gate stats: /nonexistent/metrics: "),
        "{err}"
    );
    let (_, err, code) = stats(&["--nope"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("error: unexpected argument '--nope' found"),
        "{err}"
    );
    // No PATH and nothing configured.
    let (_, err, code) = stats(&[], &[("P11GATE_CONFIG", "/nonexistent/p11gate.toml")]);
    assert_eq!(code, Some(2));
    assert!(err.starts_with("p11gate stats: no PATH given"), "{err}");
    let (out, _, code) = stats(&["--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("Show the call counts and latencies p11gate's processes wrote"),
        "{out}"
    );
    // A file named explicitly is read whatever its name; malformed lines are reported.
    let file = empty.path().join("other-name.txt");
    std::fs::write(
        &file,
        "p11gate_calls_total{app=\"a\",pid=\"1\",slot=\"0\",function=\"C_Sign\",result=\"CKR_OK\"} 4\nbroken{\n",
    )
    .unwrap();
    let (out, err, code) = stats(&["--json", file.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(err, "p11gate stats: 1 malformed line(s) skipped\n");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"][0]["calls"], 4);
    assert_eq!(v["rows"][0]["p50_seconds"], serde_json::Value::Null);
}
