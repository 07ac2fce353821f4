//! The module's dynamic symbol table is exactly the PKCS#11 entry points listed in
//! `tests/exports.txt` (68 functions of 2.40 + 24 of 3.0): nothing is missing, nothing else leaks.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Symbols a Rust cdylib exports whatever the code does. Empty: rustc's version script keeps only
/// `#[no_mangle]` items global. Anything found here must be explained, not silently accepted.
const INEVITABLE: &[&str] = &[];

fn expected_exports() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/exports.txt");
    let text = std::fs::read_to_string(&path).expect("read tests/exports.txt");
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "tests/exports.txt must stay sorted");
    let set: BTreeSet<String> = names.iter().cloned().collect();
    assert_eq!(set.len(), names.len(), "tests/exports.txt has duplicates");
    set
}

/// `(type, name)` of every defined dynamic symbol of the built module, from `nm -D --defined-only`.
fn defined_dynamic_symbols() -> Vec<(String, String)> {
    let nm = common::require_program("nm");
    let module = common::module();
    let out = Command::new(nm)
        .args(["-D", "--defined-only"])
        .arg(&module)
        .output()
        .expect("run nm");
    assert!(
        out.status.success(),
        "nm -D {} failed: {}",
        module.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            // "<address> <type> <name>[@version]"; undefined symbols are already filtered out.
            let mut fields = line.split_whitespace();
            let _address = fields.next()?;
            let kind = fields.next()?.to_string();
            let name = fields.next()?;
            let name = name.split('@').next().unwrap_or(name).to_string();
            Some((kind, name))
        })
        .collect()
}

#[test]
fn exports_txt_lists_the_92_pkcs11_functions() {
    let expected = expected_exports();
    assert_eq!(
        expected.len(),
        92,
        "68 PKCS#11 2.40 functions + 24 PKCS#11 3.0 additions"
    );
    assert!(expected.iter().all(|n| n.starts_with("C_")));
    for name in [
        "C_GetFunctionList",
        "C_GetInterfaceList",
        "C_GetInterface",
        "C_LoginUser",
    ] {
        assert!(
            expected.contains(name),
            "{name} missing from tests/exports.txt"
        );
    }
}

#[test]
fn text_symbols_are_exactly_the_pkcs11_functions() {
    let expected = expected_exports();
    let text: BTreeSet<String> = defined_dynamic_symbols()
        .into_iter()
        .filter(|(kind, _)| kind == "T")
        .map(|(_, name)| name)
        .collect();
    let missing: Vec<&String> = expected.difference(&text).collect();
    let extra: Vec<&String> = text.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "exported functions differ from tests/exports.txt\n  missing: {missing:?}\n  not listed: {extra:?}"
    );
}

#[test]
fn nothing_else_is_exported() {
    let expected = expected_exports();
    let others: Vec<(String, String)> = defined_dynamic_symbols()
        .into_iter()
        .filter(|(kind, name)| {
            let pkcs11_function = kind == "T" && expected.contains(name);
            let inevitable = INEVITABLE.contains(&name.as_str());
            !(pkcs11_function || inevitable)
        })
        .collect();
    assert!(
        others.is_empty(),
        "the module defines dynamic symbols besides the PKCS#11 functions: {others:?}"
    );
}
