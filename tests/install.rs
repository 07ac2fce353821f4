//! Installation: `scripts/install.sh` into a DESTDIR and into the system, its `--uninstall`, the
//! example configuration it installs (`packaging/p11gate.toml`), and the Debian package
//! cargo-deb makes from the same layout.
//!
//! The system tests install p11gate for real (CI runs the suite as root on a clean Debian), so
//! they change global state: they run one at a time (a lock in the process, and a file lock
//! against test runs of other checkouts), refuse to run over an existing installation, and
//! always remove what they installed (a guard removes it on drop, also when an assertion
//! fails). Not root, they say so and pass without running.
//!
//! The package is built with cargo-deb `--no-build` from this test build's module and command:
//! the suite never makes a release build (minutes, with LTO), and the layout is the same.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use p11gate::config::{Config, LogTarget};
use p11gate::logging;

const CLI: &str = env!("CARGO_BIN_EXE_p11gate");
const SO_PIN: &str = "so-pin-2291";
const USER_PIN: &str = "user-pin-7703";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The output of a command that must have succeeded.
fn ok(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    text(&out.stdout).trim() == "0"
}

/// The gid of a group, if it exists.
fn gid_of(group: &str) -> Option<u32> {
    let out = Command::new("getent")
        .args(["group", group])
        .output()
        .expect("getent");
    let line = text(&out.stdout);
    line.split(':').nth(2).and_then(|g| g.trim().parse().ok())
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `scripts/install.sh ARGS` with only PATH and `env` in its environment.
fn script(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(repo("scripts/install.sh"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").expect("PATH"))
        .envs(env.iter().copied())
        .output()
        .expect("run scripts/install.sh")
}

/// Installs this test build's module and command with `args` (and `--destdir`, if any).
fn install(destdir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let module = common::module();
    let mut all = vec!["--lib", module.to_str().unwrap(), "--bin", CLI];
    if let Some(d) = destdir {
        all.extend(["--destdir", d.to_str().unwrap()]);
    }
    all.extend_from_slice(args);
    script(&all, env)
}

fn uninstall(destdir: Option<&Path>, env: &[(&str, &str)]) -> Output {
    match destdir {
        Some(d) => script(&["--uninstall", "--destdir", d.to_str().unwrap()], env),
        None => script(&["--uninstall"], env),
    }
}

/// Every entry under `root`, sorted: `d 0755 usr/local` or `f 0644 usr/local/bin/p11gate`.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let md = fs::symlink_metadata(&path).expect("metadata");
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let kind = if md.is_dir() {
                'd'
            } else if md.is_file() {
                'f'
            } else {
                'l'
            };
            out.push(format!(
                "{kind} {:04o} {rel}",
                md.permissions().mode() & 0o7777
            ));
            if md.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The manifest's entries (its comment lines left out).
fn manifest_entries(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let out = ok(
        "gzip -dc",
        Command::new("gzip")
            .arg("-dc")
            .arg(path)
            .output()
            .expect("gzip"),
    );
    out.stdout
}

/// `packaging/p11gate.toml` with the example block whose heading starts with `name` made
/// active: one leading `#` removed from each of its lines, as the file tells operators.
fn example_with(name: &str) -> String {
    let example = fs::read_to_string(repo("packaging/p11gate.toml")).expect("example config");
    let (mut out, mut in_block, mut found) = (String::new(), false, false);
    for line in example.lines() {
        if let Some(heading) = line.strip_prefix("# --- Example: ") {
            in_block = heading.starts_with(name);
            found |= in_block;
            out.push_str(line);
        } else if in_block && !line.is_empty() {
            let active = line
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("a line of example {name:?} is not commented: {line:?}"));
            out.push_str(active);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    assert!(found, "packaging/p11gate.toml has no example {name:?}");
    out
}

/// The documentation install.sh and the package ship, in install.sh's order: (the file in the
/// repository, its path under share/doc/p11gate).
fn doc_files() -> Vec<(PathBuf, String)> {
    let mut docs = vec![
        (repo("README.md"), "README.md".to_string()),
        (repo("SECURITY.md"), "SECURITY.md".to_string()),
        (
            repo("doc/config-reference.md"),
            "config-reference.md".to_string(),
        ),
        (
            repo("packaging/p11gate.toml"),
            "p11gate.toml.example".to_string(),
        ),
    ];
    // The Vault kit: every *.hcl of contrib/vault and *.conf of its vault.service.d.
    for (dir, ext, under) in [
        ("contrib/vault", "hcl", "examples/vault"),
        (
            "contrib/vault/vault.service.d",
            "conf",
            "examples/vault/vault.service.d",
        ),
    ] {
        let mut files: Vec<PathBuf> = fs::read_dir(repo(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == ext))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no *.{ext} in {dir}");
        for f in files {
            let name = f.file_name().unwrap().to_str().unwrap().to_string();
            docs.push((f, format!("{under}/{name}")));
        }
    }
    docs
}

// --- The example configuration ---------------------------------------------------------------

#[test]
fn example_config_is_the_built_in_defaults_spelled_out_and_p11gate_checks_it() {
    let path = repo("packaging/p11gate.toml");
    let example = fs::read_to_string(&path).unwrap();
    // Installing the example changes nothing: every value it sets is the built-in default
    // (for [log], the defaults an absent level and target stand for).
    let mut parsed = Config::parse(&example, &path).unwrap();
    assert_eq!(parsed.log.level, Some(logging::DEFAULT_LEVEL));
    assert_eq!(parsed.log.target, Some(LogTarget::Syslog(None)));
    parsed.log = Default::default();
    assert_eq!(parsed, Config::default());
    let headings: Vec<&str> = example
        .lines()
        .filter_map(|l| l.strip_prefix("# --- Example: "))
        .map(|h| h.trim_end_matches(['-', ' ']))
        .collect();
    assert_eq!(
        headings,
        ["SoftHSMv2", "Fortanix DSM, one Vault server per token"]
    );

    let home = tempfile::tempdir().unwrap();
    let out = ok(
        "p11gate config check packaging/p11gate.toml",
        Command::new(CLI)
            .args(["config", "check"])
            .arg(&path)
            .env_clear()
            .env("XDG_DATA_HOME", home.path())
            .output()
            .unwrap(),
    );
    assert_eq!(
        text(&out.stdout),
        format!(
            "config {}: OK\nno upstream: the built-in soft token\n  slot 0: {}/p11gate/token0\n",
            path.display(),
            home.path().display()
        )
    );
}

#[test]
fn example_config_softhsm_block_passes_softhsm_tokens_through() {
    let softhsm = common::SoftHsm::new();
    let init = ok(
        "softhsm2-util --init-token",
        Command::new(common::require_program("softhsm2-util"))
            .env("SOFTHSM2_CONF", &softhsm.conf)
            .args(["--init-token", "--free", "--label", "example-token"])
            .args(["--so-pin", common::SO_PIN, "--pin", common::USER_PIN])
            .output()
            .unwrap(),
    );
    // "The token has been initialized and is reassigned to slot 1288351845"
    let slot: u64 = text(&init.stdout)
        .split_whitespace()
        .last()
        .and_then(|s| s.parse().ok())
        .expect("softhsm2-util names the token's slot");
    let config = softhsm.dir().join("p11gate.toml");
    fs::write(&config, example_with("SoftHSMv2")).unwrap();
    let parsed = Config::parse(&fs::read_to_string(&config).unwrap(), &config).unwrap();
    assert_eq!(parsed.upstreams.len(), 1);
    assert_eq!(parsed.upstreams[0].name.get_ref(), "softhsm");
    assert_eq!(
        parsed.upstreams[0].path,
        Path::new("/usr/lib/softhsm/libsofthsm2.so")
    );

    let out = Command::new(CLI)
        .args(["config", "check"])
        .arg(&config)
        .env_clear()
        .env("SOFTHSM2_CONF", &softhsm.conf)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("config {}: OK", config.display()));
    assert_eq!(lines[1], "app \"default\":");
    assert_eq!(
        lines[2],
        "  all slots of upstream \"softhsm\" (/usr/lib/softhsm/libsofthsm2.so), ids unchanged"
    );
    let token_slot = format!("  slot {slot:#x}: mechanisms: ");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&token_slot) && l.ends_with(" allowed, 0 filtered")),
        "no line for SoftHSMv2's slot {slot:#x}:\n{stdout}"
    );
}

#[test]
fn example_config_fortanix_block_is_valid_and_needs_only_the_vendor_module() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("p11gate.toml");
    fs::write(&config, example_with("Fortanix DSM")).unwrap();
    let parsed = Config::parse(&fs::read_to_string(&config).unwrap(), &config).unwrap();
    assert_eq!(parsed.upstreams.len(), 1);
    let dsm = &parsed.upstreams[0];
    assert_eq!(dsm.name.get_ref(), "dsm");
    assert_eq!(
        dsm.path,
        Path::new("/opt/fortanix/pkcs11/fortanix_pkcs11.so")
    );
    assert_eq!(dsm.profiles.len(), 1);
    assert_eq!(dsm.profiles[0].get_ref(), "fortanix-hsm-gateway");
    assert_eq!(dsm.slow_call_warn_ms, Some(2000));
    assert_eq!(parsed.slots.len(), 1);
    let slot = &parsed.slots[0];
    assert_eq!(slot.id.get_ref().0, 0);
    assert_eq!(slot.token_label.as_deref(), Some("vault-1"));
    assert!(slot.require_non_extractable);
    assert_eq!(parsed.apps.len(), 1);
    assert_eq!(parsed.apps[0].name.get_ref(), "vault-1");

    // p11gate's own check passes the file and stops only at the missing vendor module.
    let out = Command::new(CLI)
        .args(["config", "check"])
        .arg(&config)
        .env_clear()
        .env("P11GATE_APP", "vault-1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout),
        format!("config {}: OK\napp \"vault-1\":\n", config.display())
    );
    assert!(
        text(&out.stderr).starts_with(
            "cannot load upstream /opt/fortanix/pkcs11/fortanix_pkcs11.so: \
             /opt/fortanix/pkcs11/fortanix_pkcs11.so: cannot open shared object file"
        ),
        "{}",
        text(&out.stderr)
    );
}

// --- scripts/install.sh into a DESTDIR --------------------------------------------------------

#[test]
fn destdir_install_puts_exactly_these_files_and_uninstall_removes_exactly_them() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    // A directory and a file that were there before: the install must leave both.
    fs::create_dir(d.join("etc")).unwrap();
    fs::set_permissions(d.join("etc"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(d.join("etc/hosts.local"), "not p11gate's\n").unwrap();
    fs::set_permissions(d.join("etc/hosts.local"), fs::Permissions::from_mode(0o644)).unwrap();
    let before = tree(d);

    let out = ok(
        "install.sh --p11-kit",
        install(Some(d), &["--p11-kit"], &[]),
    );
    let docs = doc_files();
    let doc = "usr/local/share/doc/p11gate";
    let mut expected: Vec<String> = [
        "d 0755 etc",
        "d 0750 etc/p11gate",
        "d 0755 etc/pkcs11",
        "d 0755 etc/pkcs11/modules",
        "d 0755 usr",
        "d 0755 usr/local",
        "d 0755 usr/local/bin",
        "d 0755 usr/local/lib",
        "d 0755 usr/local/lib/p11gate",
        "d 0755 usr/local/share",
        "d 0755 usr/local/share/doc",
        "d 0755 usr/local/share/doc/p11gate",
        "d 0755 usr/local/share/doc/p11gate/examples",
        "d 0755 usr/local/share/doc/p11gate/examples/vault",
        "d 0755 usr/local/share/doc/p11gate/examples/vault/vault.service.d",
        "d 0755 usr/local/share/man",
        "d 0755 usr/local/share/man/man1",
        "f 0640 etc/p11gate/p11gate.toml",
        "f 0644 etc/hosts.local",
        "f 0644 etc/pkcs11/modules/p11gate.module",
        "f 0644 usr/local/lib/p11gate/install-manifest",
        "f 0644 usr/local/lib/p11gate/libp11gate.so",
        "f 0644 usr/local/share/man/man1/p11gate.1.gz",
        "f 0755 usr/local/bin/p11gate",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(docs.iter().map(|(_, rel)| format!("f 0644 {doc}/{rel}")))
    .collect();
    expected.sort();
    assert_eq!(tree(d), expected);

    let read = |rel: &str| fs::read(d.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let example = fs::read(repo("packaging/p11gate.toml")).unwrap();
    assert_eq!(
        read("usr/local/lib/p11gate/libp11gate.so"),
        fs::read(common::module()).unwrap()
    );
    assert_eq!(read("usr/local/bin/p11gate"), fs::read(CLI).unwrap());
    assert_eq!(read("etc/p11gate/p11gate.toml"), example);
    for (source, rel) in &docs {
        assert_eq!(
            read(&format!("{doc}/{rel}")),
            fs::read(source).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(
        gunzip(&d.join("usr/local/share/man/man1/p11gate.1.gz")),
        fs::read(repo("doc/p11gate.1")).unwrap()
    );
    // The p11-kit module file names the installed module, by its final path (no DESTDIR).
    let module_file = text(&read("etc/pkcs11/modules/p11gate.module"));
    let packaged = fs::read_to_string(repo("packaging/p11gate.module")).unwrap();
    assert_eq!(
        module_file,
        packaged.replace(
            "module: /usr/lib/p11gate/libp11gate.so",
            "module: /usr/local/lib/p11gate/libp11gate.so"
        )
    );
    assert_eq!(
        module_file
            .lines()
            .filter(|l| l.starts_with("module:"))
            .count(),
        1
    );

    let manifest = d.join("usr/local/lib/p11gate/install-manifest");
    let module_sum = sha256_hex(module_file.as_bytes());
    let example_sum = sha256_hex(&example);
    let mut entries: Vec<String> = [
        "dir\t/usr",
        "dir\t/usr/local",
        "dir\t/usr/local/lib",
        "dir\t/usr/local/lib/p11gate",
        "file\t/usr/local/lib/p11gate/libp11gate.so",
        "dir\t/usr/local/bin",
        "file\t/usr/local/bin/p11gate",
        "dir\t/usr/local/share",
        "dir\t/usr/local/share/doc",
        "dir\t/usr/local/share/doc/p11gate",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (_, rel) in &docs {
        // Each directory of the kit just before its first file.
        for dir in [
            "examples",
            "examples/vault",
            "examples/vault/vault.service.d",
        ] {
            let line = format!("dir\t/{doc}/{dir}");
            if rel.starts_with(&format!("{dir}/")) && !entries.contains(&line) {
                entries.push(line);
            }
        }
        entries.push(format!("file\t/{doc}/{rel}"));
    }
    entries.extend([
        "dir\t/usr/local/share/man".to_string(),
        "dir\t/usr/local/share/man/man1".into(),
        "file\t/usr/local/share/man/man1/p11gate.1.gz".into(),
        "dir\t/etc/p11gate".into(),
        format!("conf\t{example_sum}\t/etc/p11gate/p11gate.toml"),
        "dir\t/etc/pkcs11".into(),
        "dir\t/etc/pkcs11/modules".into(),
        format!("conf\t{module_sum}\t/etc/pkcs11/modules/p11gate.module"),
    ]);
    assert_eq!(manifest_entries(&manifest), entries);

    // Owners: root, and the configuration's group is p11gate when that group exists.
    if is_root() {
        let conf_gid = gid_of("p11gate").unwrap_or(0);
        for entry in tree(d) {
            let rel = entry.split(' ').nth(2).unwrap();
            if rel == "etc" || rel == "etc/hosts.local" {
                continue;
            }
            let md = fs::metadata(d.join(rel)).unwrap();
            let gid = if rel.starts_with("etc/p11gate") {
                conf_gid
            } else {
                0
            };
            assert_eq!((md.uid(), md.gid()), (0, gid), "owner of {rel}");
        }
    }
    assert_eq!(text(&out.stderr), "");

    // The installed command accepts the installed configuration.
    let home = tempfile::tempdir().unwrap();
    let check = ok(
        "installed p11gate config check",
        Command::new(d.join("usr/local/bin/p11gate"))
            .args(["config", "check"])
            .arg(d.join("etc/p11gate/p11gate.toml"))
            .env_clear()
            .env("XDG_DATA_HOME", home.path())
            .output()
            .unwrap(),
    );
    assert!(text(&check.stdout).starts_with(&format!(
        "config {}/etc/p11gate/p11gate.toml: OK\nno upstream: the built-in soft token\n",
        d.display()
    )));

    // Installing again replaces the installation: the same files, the same manifest.
    let manifest_before = fs::read(&manifest).unwrap();
    let again = ok("install.sh again", install(Some(d), &["--p11-kit"], &[]));
    assert!(text(&again.stdout).contains(&format!(
        "install.sh: removed the earlier installation in {}/usr/local first\n",
        d.display()
    )));
    assert_eq!(tree(d), expected);
    assert_eq!(fs::read(&manifest).unwrap(), manifest_before);

    let out = ok("install.sh --uninstall", uninstall(Some(d), &[]));
    assert_eq!(
        text(&out.stdout),
        format!(
            "install.sh: removed the installation listed in {}/usr/local/lib/p11gate/install-manifest\n",
            d.display()
        )
    );
    assert_eq!(tree(d), before);
}

#[test]
fn uninstall_keeps_an_edited_configuration_and_reinstall_puts_the_example_beside_it() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    let conf = d.join("etc/p11gate/p11gate.toml");
    ok("install.sh", install(Some(d), &[], &[]));
    let mut edited = fs::read_to_string(&conf).unwrap();
    edited.push_str("# edited by the administrator\n");
    fs::write(&conf, &edited).unwrap();

    let out = ok("install.sh --uninstall", uninstall(Some(d), &[]));
    assert!(
        text(&out.stdout).starts_with(&format!(
            "install.sh: kept {}: it was changed after installation\n",
            conf.display()
        )),
        "{}",
        text(&out.stdout)
    );
    let kept = [
        "d 0750 etc/p11gate",
        "d 0755 etc",
        "f 0640 etc/p11gate/p11gate.toml",
    ];
    assert_eq!(tree(d), kept);
    assert_eq!(fs::read_to_string(&conf).unwrap(), edited);

    // A new installation never overwrites it: the example goes beside it.
    let out = ok(
        "install.sh over an edited configuration",
        install(Some(d), &[], &[]),
    );
    assert!(text(&out.stdout).contains(&format!(
        "install.sh: kept the existing {}; the example is p11gate.toml.example beside it\n",
        conf.display()
    )));
    assert_eq!(fs::read_to_string(&conf).unwrap(), edited);
    let example = fs::read(repo("packaging/p11gate.toml")).unwrap();
    assert_eq!(
        fs::read(d.join("etc/p11gate/p11gate.toml.example")).unwrap(),
        example
    );
    let listed: Vec<String> = manifest_entries(&d.join("usr/local/lib/p11gate/install-manifest"))
        .into_iter()
        .filter(|l| l.contains("/etc/"))
        .collect();
    assert_eq!(
        listed,
        [format!(
            "conf\t{}\t/etc/p11gate/p11gate.toml.example",
            sha256_hex(&example)
        )]
    );
    assert!(tree(d).contains(&"f 0640 etc/p11gate/p11gate.toml.example".to_string()));

    // Uninstalling removes the example it put there, and still not the administrator's file.
    ok("install.sh --uninstall", uninstall(Some(d), &[]));
    assert_eq!(tree(d), kept);
    assert_eq!(fs::read_to_string(&conf).unwrap(), edited);
}

#[test]
fn uninstall_without_a_manifest_fails_and_removes_nothing() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    fs::create_dir_all(d.join("usr/local/lib/p11gate")).unwrap();
    fs::write(
        d.join("usr/local/lib/p11gate/libp11gate.so"),
        "someone else's",
    )
    .unwrap();
    let before = tree(d);
    let out = uninstall(Some(d), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "install.sh: no manifest at {}/usr/local/lib/p11gate/install-manifest: nothing installed there by install.sh\n",
            d.display()
        )
    );
    assert_eq!(tree(d), before);
}

#[test]
fn prefix_sysconfdir_and_group_from_the_environment_and_options() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    let env = [("PREFIX", "/opt/p11"), ("SYSCONFDIR", "/srv/conf")];
    let args: &[&str] = if is_root() {
        // "daemon" (gid 1) is in every Debian system's base-passwd.
        &["--p11-kit-dir", "/srv/p11-kit", "--group", "daemon"]
    } else {
        &["--p11-kit-dir", "/srv/p11-kit"]
    };
    ok(
        "install.sh with PREFIX and SYSCONFDIR",
        install(Some(d), args, &env),
    );
    for (rel, mode) in [
        ("opt/p11/lib/p11gate/libp11gate.so", 0o644),
        ("opt/p11/bin/p11gate", 0o755),
        ("srv/conf/p11gate", 0o750),
        ("srv/conf/p11gate/p11gate.toml", 0o640),
        ("srv/p11-kit/p11gate.module", 0o644),
    ] {
        let md = fs::metadata(d.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(md.permissions().mode() & 0o7777, mode, "mode of {rel}");
        if is_root() {
            let gid = if rel.starts_with("srv/conf") {
                gid_of("daemon").expect("group daemon")
            } else {
                0
            };
            assert_eq!((md.uid(), md.gid()), (0, gid), "owner of {rel}");
        }
    }
    let module_file = fs::read_to_string(d.join("srv/p11-kit/p11gate.module")).unwrap();
    assert!(module_file
        .ends_with("\nmodule: /opt/p11/lib/p11gate/libp11gate.so\nenable-in: p11-kit, p11tool\n"));
    ok("install.sh --uninstall", uninstall(Some(d), &env));
    assert_eq!(tree(d), Vec::<String>::new());

    if !is_root() {
        let out = install(Some(d), &["--group", "daemon"], &env);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            text(&out.stderr),
            "install.sh: --group needs root (files can be given to a group only by root)\n"
        );
    } else {
        let out = install(Some(d), &["--group", "no-such-group-p11gate"], &env);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            text(&out.stderr),
            "install.sh: group no-such-group-p11gate does not exist\n"
        );
    }
    assert_eq!(tree(d), Vec::<String>::new());
}

// --- The Debian package ---------------------------------------------------------------------

/// Builds the .deb with cargo-deb from this test build's module and command, staged where
/// cargo-deb finds release builds (`--no-build`: the suite never makes a release build).
fn build_deb(work: &Path) -> PathBuf {
    let version = Command::new("cargo").args(["deb", "--version"]).output();
    assert!(
        version.is_ok_and(|v| v.status.success()),
        "cargo-deb is not installed: run scripts/test.sh, which installs it"
    );
    let release = work.join("target/release");
    fs::create_dir_all(&release).unwrap();
    for (from, name) in [
        (common::module(), "libp11gate.so"),
        (PathBuf::from(CLI), "p11gate"),
    ] {
        // A hard link where the file system allows (cargo-deb strips into copies of its own).
        fs::hard_link(&from, release.join(name))
            .or_else(|_| fs::copy(&from, release.join(name)).map(|_| ()))
            .unwrap();
    }
    let deb = work.join("p11gate.deb");
    ok(
        "cargo deb",
        Command::new("cargo")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", work.join("target"))
            .args(["deb", "--no-build", "--strip", "--fast", "--quiet", "-o"])
            .arg(&deb)
            .output()
            .unwrap(),
    );
    deb
}

/// A scratch directory in the target directory, so that the staged build can be hard links.
fn scratch() -> tempfile::TempDir {
    let module = common::module();
    tempfile::tempdir_in(module.parent().unwrap()).unwrap()
}

#[test]
fn deb_package_has_the_layout_of_install_sh() {
    let work = scratch();
    let deb = build_deb(work.path());

    // dpkg-deb -c: "-rw-r--r-- 0/0   3866 2026-11-29 00:00 ./etc/p11gate/p11gate.toml"
    let listing = ok(
        "dpkg-deb -c",
        Command::new("dpkg-deb")
            .arg("-c")
            .arg(&deb)
            .output()
            .unwrap(),
    );
    let mut in_deb: Vec<String> = Vec::new();
    for line in text(&listing.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[1], "0/0", "owner in {line}");
        let path = fields[5].trim_start_matches("./").trim_end_matches('/');
        let perms = fields[0];
        let mode = perms[1..].chars().enumerate().fold(0u32, |m, (i, c)| {
            m | if c == '-' { 0 } else { 1 << (8 - i) }
        });
        let kind = if perms.starts_with('d') { 'd' } else { 'f' };
        in_deb.push(format!("{kind} {mode:04o} {path}"));
    }
    in_deb.sort();

    // install.sh with the package's paths: PREFIX=/usr, p11-kit's package directory.
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    ok(
        "install.sh PREFIX=/usr",
        install(
            Some(d),
            &[
                "--prefix",
                "/usr",
                "--p11-kit-dir",
                "/usr/share/p11-kit/modules",
            ],
            &[],
        ),
    );
    let mut from_script: Vec<String> = tree(d)
        .into_iter()
        .filter(|e| e != "f 0644 usr/lib/p11gate/install-manifest")
        .map(|e| {
            // cargo-deb ships every directory 0755; the postinst makes /etc/p11gate 0750.
            if e == "d 0750 etc/p11gate" {
                "d 0755 etc/p11gate".to_string()
            } else {
                e
            }
        })
        .collect();
    from_script.sort();
    let copyright = "f 0644 usr/share/doc/p11gate/copyright";
    assert!(in_deb.iter().any(|e| e == copyright), "{in_deb:#?}");
    let from_deb: Vec<String> = in_deb.into_iter().filter(|e| e != copyright).collect();
    assert_eq!(from_deb, from_script);

    // The same bytes, but for the binaries (cargo-deb strips them) and the man page's gzip.
    let x = tempfile::tempdir().unwrap();
    ok(
        "dpkg-deb -x",
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(x.path())
            .output()
            .unwrap(),
    );
    let mut same = vec![
        "etc/p11gate/p11gate.toml".to_string(),
        "usr/share/p11-kit/modules/p11gate.module".to_string(),
    ];
    same.extend(
        doc_files()
            .into_iter()
            .map(|(_, rel)| format!("usr/share/doc/p11gate/{rel}")),
    );
    for rel in &same {
        assert_eq!(
            fs::read(x.path().join(rel)).unwrap(),
            fs::read(d.join(rel)).unwrap(),
            "{rel}"
        );
    }
    assert_eq!(
        gunzip(&x.path().join("usr/share/man/man1/p11gate.1.gz")),
        gunzip(&d.join("usr/share/man/man1/p11gate.1.gz"))
    );
    let nm = ok(
        "nm -D",
        Command::new("nm")
            .args(["-D", "--defined-only"])
            .arg(x.path().join("usr/lib/p11gate/libp11gate.so"))
            .output()
            .unwrap(),
    );
    assert!(text(&nm.stdout)
        .lines()
        .any(|l| l.ends_with(" T C_GetFunctionList")));

    // Control data: the configuration is the one conffile; the postinst is executable.
    let field = |name: &str| {
        let out = ok(
            "dpkg-deb -f",
            Command::new("dpkg-deb")
                .arg("-f")
                .arg(&deb)
                .arg(name)
                .output()
                .unwrap(),
        );
        text(&out.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "p11gate");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    assert!(
        field("Depends").starts_with("libc6 (>= "),
        "{}",
        field("Depends")
    );
    let control = x.path().join("DEBIAN");
    ok(
        "dpkg-deb -e",
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(&deb)
            .arg(&control)
            .output()
            .unwrap(),
    );
    assert_eq!(
        fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/p11gate/p11gate.toml\n"
    );
    assert_eq!(
        fs::read(control.join("postinst")).unwrap(),
        fs::read(repo("packaging/debian/postinst")).unwrap()
    );
    assert_eq!(
        fs::metadata(control.join("postinst"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
}

// --- Into the system ------------------------------------------------------------------------

/// One system test at a time: they install into the same places.
static SYSTEM: Mutex<()> = Mutex::new(());

/// Everything either installation puts on the system.
const SYSTEM_PATHS: [&str; 11] = [
    "/usr/local/lib/p11gate",
    "/usr/local/bin/p11gate",
    "/usr/local/share/doc/p11gate",
    "/usr/local/share/man/man1/p11gate.1.gz",
    "/etc/p11gate",
    "/etc/pkcs11/modules/p11gate.module",
    "/usr/lib/p11gate",
    "/usr/bin/p11gate",
    "/usr/share/doc/p11gate",
    "/usr/share/man/man1/p11gate.1.gz",
    "/usr/share/p11-kit/modules/p11gate.module",
];

fn deb_installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "p11gate"])
        .output()
        .is_ok_and(|o| text(&o.stdout).contains("installed"))
}

/// Holds a system test's turn: the in-process lock, then a file lock that keeps test runs of
/// other checkouts on this machine apart. Released on drop.
#[derive(Debug)]
struct SystemTurn {
    _in_process: parking_lot::MutexGuard<'static, ()>,
    _file: fs::File,
}

/// The system test's turn, on a system without p11gate; `None` (the test is skipped) when
/// not root.
fn system_turn(name: &str) -> Option<SystemTurn> {
    if !is_root() {
        eprintln!(
            "{name}: SKIPPED, not root: installing into the system needs root (CI runs as root)"
        );
        return None;
    }
    let in_process = SYSTEM.lock();
    let path = std::env::temp_dir().join("p11gate-system-install-test.lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    let present: Vec<&str> = SYSTEM_PATHS
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    assert!(
        present.is_empty() && !deb_installed(),
        "p11gate is already installed here ({present:?}, package installed: {}): the system \
         tests install it for real and need a system without it. Remove it with \
         `scripts/install.sh --uninstall` or `dpkg --purge p11gate`",
        deb_installed()
    );
    Some(SystemTurn {
        _in_process: in_process,
        _file: file,
    })
}

/// Removes a system installation when dropped, also after a failed assertion.
struct Installed {
    deb: bool,
    removed: bool,
}

impl Installed {
    fn remove(&mut self) -> Output {
        self.removed = true;
        if self.deb {
            Command::new("dpkg")
                .args(["--purge", "p11gate"])
                .output()
                .expect("dpkg --purge")
        } else {
            uninstall(None, &[])
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.removed {
            let out = self.remove();
            eprintln!(
                "cleanup after a failure: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
    }
}

/// A program as a user would run it: PATH, a HOME of its own, nothing else (so p11gate
/// reads /etc/p11gate/p11gate.toml and keeps its soft token under `home`).
fn as_user(program: &str, args: &[&str], home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("share"));
    cmd
}

fn init_token(cli: &str, home: &Path, label: &str) {
    let mut child = as_user(cli, &["token", "init", "--label", label], home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{SO_PIN}\n{USER_PIN}\n").as_bytes())
        .unwrap();
    let out = ok("p11gate token init", child.wait_with_output().unwrap());
    assert_eq!(
        text(&out.stdout),
        format!(
            "slot 0: token \"{label}\" initialised in {}/share/p11gate/token0\n  \
             pkcs11:token={label};manufacturer=p11gate;serial=0000000000000000;model=soft%20token\n",
            home.display()
        )
    );
}

/// `p11-kit list-modules`'s lines for module `name` (its header and the indented lines after
/// it), trimmed; `None` when p11-kit does not list it.
fn p11kit_module(home: &Path, name: &str) -> Option<Vec<String>> {
    let out = ok(
        "p11-kit list-modules",
        as_user("p11-kit", &["list-modules"], home)
            .output()
            .unwrap(),
    );
    let listing = text(&out.stdout);
    let mut lines = listing.lines();
    let header = lines.find(|l| l.starts_with(&format!("{name}: ")))?;
    let mut block = vec![header.to_string()];
    block.extend(
        lines
            .take_while(|l| l.starts_with(' '))
            .map(|l| l.trim().to_string()),
    );
    Some(block)
}

/// `p11tool --list-tokens`'s token entries (blank-line separated), each as trimmed lines.
fn p11tool_tokens(home: &Path) -> Vec<Vec<String>> {
    let out = ok(
        "p11tool --list-tokens",
        as_user("p11tool", &["--list-tokens"], home)
            .output()
            .unwrap(),
    );
    text(&out.stdout)
        .split("\n\n")
        .map(|b| {
            b.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
        })
        .filter(|b| !b.is_empty())
        .collect()
}

/// Checks that p11-kit, p11tool and pkcs11-tool all find the installed module at `lib` and
/// the soft token labelled `label` behind it.
fn assert_tools_see_p11gate(lib: &str, home: &Path, label: &str) {
    let block = p11kit_module(home, "p11gate").expect("p11-kit list-modules lists p11gate");
    assert_eq!(block[0], format!("p11gate: {lib}"));
    for line in [
        "library-description: p11gate PKCS#11 gateway",
        "library-manufacturer: p11gate",
        &format!("token: {label}"),
        "model: soft token",
        "token-initialized",
        "user-pin-initialized",
    ] {
        assert!(
            block.iter().any(|l| l == line),
            "p11-kit's entry for p11gate has no line {line:?}: {block:#?}"
        );
    }

    let tokens = p11tool_tokens(home);
    let ours: Vec<&Vec<String>> = tokens
        .iter()
        .filter(|t| t.contains(&format!("Module: {lib}")))
        .collect();
    assert_eq!(ours.len(), 1, "p11tool --list-tokens: {tokens:#?}");
    for line in [
        format!("Label: {label}"),
        "Manufacturer: p11gate".to_string(),
        "Model: soft token".to_string(),
        "Type: Generic token".to_string(),
    ] {
        assert!(ours[0].contains(&line), "no {line:?} in {:#?}", ours[0]);
    }
    assert!(
        ours[0][1].starts_with("URL: pkcs11:model=soft%20token;manufacturer=p11gate;")
            && ours[0][1].ends_with(&format!(";token={label}")),
        "{:#?}",
        ours[0]
    );

    let pkcs11_tool = common::require_program("pkcs11-tool");
    let pkcs11_tool = pkcs11_tool.to_str().unwrap();
    let info = ok(
        "pkcs11-tool --show-info",
        as_user(pkcs11_tool, &["--module", lib, "--show-info"], home)
            .output()
            .unwrap(),
    );
    let info = text(&info.stdout);
    assert!(info.contains("Manufacturer     p11gate\n"), "{info}");
    assert!(
        info.contains(&format!(
            "Library          p11gate PKCS#11 gateway (ver {}.{})\n",
            env!("CARGO_PKG_VERSION_MAJOR"),
            env!("CARGO_PKG_VERSION_MINOR")
        )),
        "{info}"
    );
    let slots = ok(
        "pkcs11-tool -L",
        as_user(pkcs11_tool, &["--module", lib, "-L"], home)
            .output()
            .unwrap(),
    );
    let slots = text(&slots.stdout);
    assert!(
        slots.contains(&format!("  token label        : {label}\n")),
        "{slots}"
    );
    let keygen = ok(
        "pkcs11-tool --keygen",
        as_user(
            pkcs11_tool,
            &[
                "--module",
                lib,
                "--login",
                "--pin",
                USER_PIN,
                "--keygen",
                "--key-type",
                "AES:32",
                "--label",
                "installed-key",
            ],
            home,
        )
        .output()
        .unwrap(),
    );
    assert!(
        text(&keygen.stdout)
            .contains("Secret Key Object; AES length 32\n  label:      installed-key\n"),
        "{}",
        text(&keygen.stdout)
    );
}

/// Every entry under `root` (full paths), or nothing when it does not exist.
fn snapshot(root: &str) -> Vec<String> {
    if Path::new(root).exists() {
        tree(Path::new(root))
    } else {
        Vec::new()
    }
}

#[test]
fn system_install_is_seen_by_p11_kit_p11tool_and_pkcs11_tool_then_uninstall_removes_it() {
    let Some(_turn) = system_turn("system_install") else {
        return;
    };
    let (usr_local, pkcs11_dir) = (snapshot("/usr/local"), Path::new("/etc/pkcs11").exists());
    let home = tempfile::tempdir().unwrap();
    let lib = "/usr/local/lib/p11gate/libp11gate.so";

    // The guard first: a failed install is cleaned up too.
    let mut installed = Installed {
        deb: false,
        removed: false,
    };
    ok("install.sh --p11-kit", install(None, &["--p11-kit"], &[]));
    let md = fs::metadata("/etc/p11gate/p11gate.toml").unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o640);
    let conf_dir = fs::metadata("/etc/p11gate").unwrap();
    assert_eq!(conf_dir.permissions().mode() & 0o777, 0o750);
    let module_file = fs::read_to_string("/etc/pkcs11/modules/p11gate.module").unwrap();
    let settings: Vec<&str> = module_file
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect();
    assert_eq!(
        settings,
        [
            format!("module: {lib}").as_str(),
            "enable-in: p11-kit, p11tool"
        ]
    );

    // With no P11GATE_CONFIG the module reads the installed /etc/p11gate/p11gate.toml.
    let check = ok(
        "p11gate config check",
        as_user("/usr/local/bin/p11gate", &["config", "check"], home.path())
            .output()
            .unwrap(),
    );
    assert_eq!(
        text(&check.stdout),
        format!(
            "config /etc/p11gate/p11gate.toml: OK\nno upstream: the built-in soft token\n  slot 0: {}/share/p11gate/token0\n",
            home.path().display()
        )
    );
    init_token("/usr/local/bin/p11gate", home.path(), "p11gate-ci");
    assert_tools_see_p11gate(lib, home.path(), "p11gate-ci");

    let out = ok("install.sh --uninstall", installed.remove());
    assert_eq!(
        text(&out.stdout),
        "install.sh: removed the installation listed in /usr/local/lib/p11gate/install-manifest\n"
    );
    assert_eq!(p11kit_module(home.path(), "p11gate"), None);
    assert!(!p11tool_tokens(home.path())
        .iter()
        .any(|t| t.contains(&format!("Module: {lib}"))));
    for p in SYSTEM_PATHS {
        assert!(!Path::new(p).exists(), "{p} is left after uninstall");
    }
    assert_eq!(Path::new("/etc/pkcs11").exists(), pkcs11_dir);
    assert_eq!(snapshot("/usr/local"), usr_local);
}

#[test]
fn system_deb_install_is_seen_by_p11_kit_p11tool_and_pkcs11_tool_then_purge_removes_it() {
    let Some(_turn) = system_turn("system_deb_install") else {
        return;
    };
    let work = scratch();
    let deb = build_deb(work.path());
    let home = tempfile::tempdir().unwrap();
    let lib = "/usr/lib/p11gate/libp11gate.so";
    let dpkg_i = || {
        ok(
            "dpkg -i",
            Command::new("dpkg").arg("-i").arg(&deb).output().unwrap(),
        )
    };

    let mut installed = Installed {
        deb: true,
        removed: false,
    };
    dpkg_i();
    // The postinst made the configuration directory 0750, as install.sh does.
    for (path, mode) in [
        ("/etc/p11gate", 0o750),
        ("/etc/p11gate/p11gate.toml", 0o640),
        ("/usr/lib/p11gate/libp11gate.so", 0o644),
        ("/usr/bin/p11gate", 0o755),
        ("/usr/share/p11-kit/modules/p11gate.module", 0o644),
    ] {
        let md = fs::metadata(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(md.permissions().mode() & 0o777, mode, "mode of {path}");
        assert_eq!((md.uid(), md.gid()), (0, 0), "owner of {path}");
    }
    init_token("/usr/bin/p11gate", home.path(), "p11gate-deb");
    assert_tools_see_p11gate(lib, home.path(), "p11gate-deb");

    // Installing the package again (an upgrade) keeps the directory's mode.
    dpkg_i();
    let mode = fs::metadata("/etc/p11gate").unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750);

    ok("dpkg --purge", installed.remove());
    assert!(!deb_installed());
    assert_eq!(p11kit_module(home.path(), "p11gate"), None);
    for p in SYSTEM_PATHS {
        assert!(!Path::new(p).exists(), "{p} is left after dpkg --purge");
    }
}
