//! `p11gate::audit::summary::run` through the public API, as the CLI will call it.

use p11gate::audit::summary::{run, USAGE};

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn summarises_a_file_given_by_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"seq":0,"event":"file_start","time":"2026-11-28T23:00:00.000000Z","key_id":"00"}"#,
            "\n",
            r#"{"seq":1,"event":"call","time":"2026-11-28T23:00:01.000000Z","host":"h","pid":1,"rec":1,"app":"vault-1","fn":"C_Encrypt","rv":"CKR_OK","key":2,"key_label":"vault-key","chain":"00"}"#,
            "\n",
            r#"{"seq":2,"event":"call","time":"2026-11-28T23:00:02.000000Z","host":"h","pid":1,"rec":2,"app":"vault-1","fn":"C_Encrypt","rv":"CKR_MECHANISM_INVALID","refused":"deny","chain":"00"}"#,
            "\n",
        ),
    )
    .unwrap();
    let mut out = Vec::new();
    assert_eq!(run(&args(&["--json", path.to_str().unwrap()]), &mut out), 0);
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["calls"], 2);
    assert_eq!(v["errors"], 1);
    assert_eq!(v["refusals"], 1);
    assert_eq!(v["apps"][0]["name"], "vault-1");
    assert_eq!(v["keys"][0]["name"], "vault-1/vault-key");
    assert_eq!(v["keys"].as_array().unwrap().len(), 1);
    assert_eq!(v["functions"][0]["first"], "2026-11-28T23:00:01.000000Z");
    assert_eq!(v["functions"][0]["last"], "2026-11-28T23:00:02.000000Z");
}

#[test]
fn exit_codes() {
    let mut out = Vec::new();
    assert_eq!(run(&args(&["/nonexistent/audit.jsonl"]), &mut out), 1);
    assert_eq!(run(&args(&["--nope"]), &mut out), 2);
    assert!(out.is_empty());
    assert_eq!(run(&args(&["--help"]), &mut out), 0);
    assert_eq!(String::from_utf8(out).unwrap(), format!("{USAGE}\n"));
    assert!(USAGE.contains("examples:"));
}
