//! Shared fixtures for the black-box tests: where the built `libp11gate.so` is, real SoftHSMv2
//! tokens in a temporary directory, serialisation of in-process module use, and a private
//! rsyslogd for the audit tests ([`rsyslog`]).
//!
//! Every test loads the built cdylib (never the rlib), exactly as a client would.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use parking_lot::{Mutex, MutexGuard};

pub mod rsyslog;

/// The cdylib cargo built with this test binary: `target/<profile>/deps/libp11gate.so` (where
/// `cargo test` leaves it in a fresh target directory), else `target/<profile>/libp11gate.so`.
pub fn module() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    let candidates = [
        deps.join("libp11gate.so"),
        deps.parent().expect("target dir").join("libp11gate.so"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "libp11gate.so not built next to {} (cargo builds it with the tests)",
                exe.display()
            )
        })
}

/// SoftHSMv2's module as Debian installs it.
pub fn softhsm_module() -> PathBuf {
    for p in [
        "/usr/lib/softhsm/libsofthsm2.so",
        "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
        "/usr/local/lib/softhsm/libsofthsm2.so",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("SoftHSMv2 is not installed: run scripts/test.sh, which installs softhsm2")
}

/// A program the tests need, or a panic that says how to get it.
pub fn require_program(name: &str) -> PathBuf {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .expect("sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "{name} is not installed: run scripts/test.sh, which installs it"
    );
    PathBuf::from(path)
}

pub const SO_PIN: &str = "so-secret-8812";
pub const USER_PIN: &str = "user-secret-4471";

/// A private SoftHSMv2 installation: its own token directory and SOFTHSM2_CONF.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    pub conf: PathBuf,
}

impl SoftHsm {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).expect("mkdir tokens");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .expect("write softhsm2.conf");
        SoftHsm { dir, conf }
    }

    /// Initialises a token in the first free slot with [`SO_PIN`] and [`USER_PIN`].
    pub fn init_token(&self, label: &str) -> &Self {
        let out = Command::new(require_program("softhsm2-util"))
            .env("SOFTHSM2_CONF", &self.conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                SO_PIN,
                "--pin",
                USER_PIN,
            ])
            .output()
            .expect("softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Environment that points SoftHSMv2 at this installation and p11gate at SoftHSMv2.
    pub fn gate_env(&self) -> Vec<(String, String)> {
        vec![
            ("SOFTHSM2_CONF".into(), self.conf.display().to_string()),
            (
                "P11GATE_UPSTREAM".into(),
                softhsm_module().display().to_string(),
            ),
            ("P11GATE_LOG".into(), "stderr".into()),
            ("P11GATE_CONFIG".into(), "/nonexistent/p11gate.toml".into()),
        ]
    }
}

static IN_PROCESS: Mutex<()> = Mutex::new(());

/// A PKCS#11 module is process-global state: tests in one binary that load a module in-process
/// take this lock, set their environment, and finalise before they release it.
pub fn in_process(env: &[(String, String)]) -> MutexGuard<'static, ()> {
    let guard = IN_PROCESS.lock();
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    guard
}

/// Runs [`child_test_command`] for `scenario` with its output in `dir/<scenario>.stdout` and
/// `.stderr`, and returns (exit status, stdout, stderr). A child still running after `timeout`
/// is killed and the test fails, showing the file `hang_detail` (its stderr, or a log).
pub fn run_child_scenario(
    var: &str,
    scenario: &str,
    env: &[(String, String)],
    dir: &Path,
    timeout: std::time::Duration,
    hang_detail: Option<&Path>,
) -> (std::process::ExitStatus, String, String) {
    use std::fs::File;
    use std::process::Stdio;
    let out_path = dir.join(format!("{scenario}.stdout"));
    let err_path = dir.join(format!("{scenario}.stderr"));
    let mut child = child_test_command(var, scenario, env)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .expect("spawn the scenario's child process");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "scenario {scenario} hung: no exit after {timeout:?}\n{}",
                std::fs::read_to_string(hang_detail.unwrap_or(&err_path)).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&out_path).expect("read stdout");
    let stderr = std::fs::read_to_string(&err_path).expect("read stderr");
    (status, stdout, stderr)
}

/// A command that runs this test binary again as a child for one scenario: only the ignored
/// test `child_process` runs, with exactly `env` (plus PATH) and `var=scenario` telling it
/// which scenario to play.
pub fn child_test_command(var: &str, scenario: &str, env: &[(String, String)]) -> Command {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .env(var, scenario)
        .args([
            "--exact",
            "child_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
    cmd
}

/// Compiles `tests/c/<name>.c` with gcc (-Wall -Wextra -Werror, debug info) against
/// `include/p11gate.h` into `dir/<name>` and returns the executable.
pub fn compile_c(name: &str, dir: &Path) -> PathBuf {
    compile_c_as(name, &dir.join(name), &[])
}

/// [`compile_c`] into `exe`, with `link` added to the end of gcc's arguments.
pub fn compile_c_as(name: &str, exe: &Path, link: &[String]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("tests/c").join(format!("{name}.c"));
    let out = Command::new(require_program("gcc"))
        .args([
            "-std=gnu11",
            "-g",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pthread",
        ])
        .arg(format!("-I{}", root.join("include").display()))
        .args(p11kit_cflags())
        .arg(&src)
        .arg("-o")
        .arg(exe)
        .arg("-ldl")
        .args(link)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc {} failed (the PKCS#11 header comes from libp11-kit-dev):\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    exe.to_path_buf()
}

/// Include flags for `<p11-kit/pkcs11.h>`, which `include/p11gate.h` builds on.
pub fn p11kit_cflags() -> Vec<String> {
    let from_pkg_config = Command::new("pkg-config")
        .args(["--cflags", "p11-kit-1"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        });
    let flags = from_pkg_config.unwrap_or_else(|| vec!["-I/usr/include/p11-kit-1".to_string()]);
    let header_found = flags
        .iter()
        .filter_map(|f| f.strip_prefix("-I"))
        .any(|dir| Path::new(dir).join("p11-kit/pkcs11.h").exists());
    assert!(
        header_found,
        "<p11-kit/pkcs11.h> not found: install libp11-kit-dev (scripts/test.sh does)"
    );
    flags
}
