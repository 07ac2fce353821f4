//! `p11gate token init --token URI`: a built-in soft token named by a PKCS#11 URI (RFC 7512)
//! instead of a slot number. The URI must match exactly one token; what was initialised is then
//! checked through the built `libp11gate.so` with `pkcs11-tool`, as a client sees it.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

const SO_PIN: &str = "uri-so-pin-5190";
const USER_PIN: &str = "uri-user-pin-7723";
/// A PIN put where none belongs: it must not be echoed.
const ARG_PIN: &str = "arg-pin-3318-never-echoed";

/// `p11gate token init ARGS` with two soft token slots in `home`, the PINs on stdin.
fn token_init(home: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_p11gate"))
        .args(["token", "init"])
        .args(args)
        .env("P11GATE_HOME", home)
        .env("P11GATE_NUM_SLOTS", "2")
        .env("P11GATE_CONFIG", home.join("no-config.toml"))
        .env_remove("P11GATE_UPSTREAM")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run p11gate token init");
    use std::io::Write;
    // A closed stdin is fine when the command stops before it reads the PINs.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{SO_PIN}\n{USER_PIN}\n").as_bytes());
    child.wait_with_output().expect("wait p11gate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit code, stdout, stderr.
fn run(home: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = token_init(home, args);
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// The token label of each slot, through libp11gate.so (`pkcs11-tool -L`).
fn labels(home: &Path) -> Vec<String> {
    let out = Command::new(common::require_program("pkcs11-tool"))
        .arg("--module")
        .arg(common::module())
        .arg("-L")
        .env("P11GATE_HOME", home)
        .env("P11GATE_NUM_SLOTS", "2")
        .env("P11GATE_CONFIG", home.join("no-config.toml"))
        .env("P11GATE_AUDIT", "off")
        .env_remove("P11GATE_UPSTREAM")
        .output()
        .expect("pkcs11-tool");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let listing = text(&out.stdout);
    let lines: Vec<&str> = listing.lines().collect();
    // Each slot's header line is followed by its label, or by "token state: uninitialized".
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("Slot "))
        .map(|(i, _)| {
            let next = lines.get(i + 1).copied().unwrap_or("").trim();
            match next.strip_prefix("token label") {
                Some(v) => v.trim_start().trim_start_matches(':').trim().to_string(),
                None => next.to_string(),
            }
        })
        .collect()
}

fn soft_uri(label: &str, slot: u64) -> String {
    format!("pkcs11:token={label};manufacturer=p11gate;serial={slot:016x};model=soft%20token")
}

#[test]
fn token_init_finds_the_soft_token_a_uri_names() {
    let home = tempfile::tempdir().expect("tempdir");
    let home = home.path();
    let dir1 = home.join("token1").display().to_string();

    // By serial: the second slot's token (soft token serials are the slot number in hex).
    let (code, out, err) = run(
        home,
        &[
            "--token",
            "pkcs11:serial=0000000000000001",
            "--label",
            "lab-b",
        ],
    );
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    assert_eq!(
        out,
        format!(
            "slot 1: token \"lab-b\" initialised in {dir1}\n  {}\n",
            soft_uri("lab-b", 1)
        )
    );
    assert_eq!(labels(home), ["token state:   uninitialized", "lab-b"]);

    // By label (and manufacturer): the same token again, with its current SO PIN.
    let (code, out, err) = run(
        home,
        &[
            "--token",
            "pkcs11:token=lab-b;manufacturer=p11gate",
            "--label",
            "lab-c",
        ],
    );
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    assert!(
        out.starts_with(&format!("slot 1: token \"lab-c\" initialised in {dir1}\n")),
        "{out}"
    );
    assert_eq!(labels(home), ["token state:   uninitialized", "lab-c"]);

    // A URI that matches no token: nothing is touched, and the tokens there are listed.
    let listing = format!(
        "there are:\n  slot 0: {};slot-id=0\n  slot 1: {};slot-id=1\n",
        soft_uri("", 0),
        soft_uri("lab-c", 1)
    );
    let (code, out, err) = run(home, &["--token", "pkcs11:token=lab-b"]);
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert_eq!(
        err,
        format!("token init: no soft token matches pkcs11:token=lab-b; {listing}")
    );
    // A URI that matches two: refused, init is destructive.
    let (code, out, err) = run(home, &["--token", "pkcs11:model=soft%20token"]);
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert_eq!(
        err,
        format!(
            "token init: pkcs11:model=soft%20token matches 2 soft tokens (slots 0, 1): name one; \
             {listing}"
        )
    );
    assert_eq!(labels(home), ["token state:   uninitialized", "lab-c"]);
}

#[test]
fn token_init_with_dir_initialises_only_the_token_the_uri_names() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join("upstream-token");
    let dir_arg = dir.display().to_string();
    let (code, out, err) = run(
        home.path(),
        &["--dir", &dir_arg, "--token", "pkcs11:token=vault"],
    );
    assert_eq!((code, out.as_str()), (Some(1), ""));
    assert_eq!(
        err,
        format!(
            "token init: no soft token matches pkcs11:token=vault; there are:\n  slot 0: {};slot-id=0\n",
            soft_uri("", 0)
        )
    );
    let (code, out, err) = run(
        home.path(),
        &[
            "--dir",
            &dir_arg,
            "--token",
            "pkcs11:token=;slot-id=0",
            "--label",
            "vault",
        ],
    );
    assert_eq!((code, err.as_str()), (Some(0), ""), "{out}");
    assert_eq!(
        out,
        format!(
            "slot 0: token \"vault\" initialised in {dir_arg}\n  {}\n",
            soft_uri("vault", 0)
        )
    );
}

#[test]
fn token_arguments_that_name_no_token_are_usage_errors() {
    let home = tempfile::tempdir().expect("tempdir");
    let pin_uri = format!("pkcs11:token=x?pin-value={ARG_PIN}");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--token", "pkcs11:token=a b"],
            "token init: --token: invalid PKCS#11 URI at character 15: in token: ' ' must be \
             percent-encoded as %20\n",
        ),
        (
            &["--token", "token=a"],
            "token init: --token: invalid PKCS#11 URI at character 1: it does not start with \
             pkcs11:\n",
        ),
        (
            &["--token", &pin_uri],
            "token init: --token: has a pin-value: the PINs are asked for (a PIN in an argument \
             is visible to every user of the machine)\n",
        ),
        (
            &["--token", "pkcs11:token=x;object=k;type=secret-key"],
            "token init: --token: has object, type: it names a token by token and slot \
             attributes only\n",
        ),
        (
            &["--token", "pkcs11:label=x"],
            "token init: --token: path attribute label is not one p11gate knows: RFC 7512 reads \
             it as a vendor attribute, and a URI with a path attribute its reader does not \
             understand matches nothing\n",
        ),
    ];
    for (args, want) in cases {
        let (code, out, err) = run(home.path(), args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(out, "", "{args:?}");
        assert_eq!(err, want, "{args:?}");
        assert!(!err.contains(ARG_PIN), "{err}");
    }
    // --slot and --token together: clap's conflict message.
    let (code, out, err) = run(home.path(), &["--slot", "1", "--token", "pkcs11:token=x"]);
    assert_eq!((code, out.as_str()), (Some(2), ""));
    assert!(
        err.starts_with("error: the argument '--slot <N>' cannot be used with '--token <URI>'"),
        "{err}"
    );
    // Nothing was initialised (or even created).
    assert!(!home.path().join("token0").exists());
}
