//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and the inputs that once crashed
//! (`fuzz/regressions/<target>/`) through the same entry points the fuzz targets use, on stable
//! Rust and in the normal test run: none may panic, not even where the C boundary would catch
//! it (see `p11gate::fuzzing`).
//!
//! These drive the rlib's entry points rather than the built .so: the harnesses are part of the
//! library (`p11gate::fuzzing`), so that the fuzzer and this test run the very same code.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.expect("a directory entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn replay(target: &str) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no corpus for {target} in fuzz/corpus/{target}"
    );
    for path in &files {
        let data = std::fs::read(path).expect("a corpus file");
        let outcome = std::panic::catch_unwind(|| p11gate::fuzzing::run(target, &data));
        assert!(
            matches!(outcome, Ok(true)),
            "{target}: {} fails (run it with scripts/fuzz.sh {target} to see why)",
            path.display()
        );
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn config_corpus_replays_without_a_panic() {
    replay("config");
}

#[test]
fn template_corpus_replays_without_a_panic() {
    replay("template");
}

#[test]
fn mechanism_corpus_replays_without_a_panic() {
    replay("mechanism");
}

#[test]
fn calls_corpus_replays_without_a_panic() {
    replay("calls");
}
