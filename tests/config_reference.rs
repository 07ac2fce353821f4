//! doc/config-reference.md against the code, so that neither can change without the other.
//!
//! The keys the parser accepts are discovered from `p11gate::config::Config` itself: a probing
//! serde deserializer walks its `Deserialize` implementation and records every struct's field
//! names (the very list `deny_unknown_fields` checks against), whether it is a `[table]` or an
//! `[[array]]`, and every enum's values. A key, table or value added to the code fails these
//! tests until the reference documents it; one the reference lists that the code no longer
//! accepts fails too. Each documented key's example value must also deserialize, and so must
//! every TOML example in the reference. Environment variables are found as the `"P11GATE_..."`
//! string literals in src/.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, Visitor};
use serde::Deserialize;

use p11gate::config::Config;

// ---------------------------------------------------------------------------------------------
// The code's side: what `Config`'s Deserialize asks for.

/// One TOML table of the configuration as the code defines it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Table {
    /// `[[name]]` (an array of tables) rather than `[name]`.
    array: bool,
    /// Every key, in the order serde lists them.
    keys: Vec<String>,
}

#[derive(Debug, Default)]
struct Found {
    /// By dotted path; the top level is "".
    tables: BTreeMap<String, Table>,
    /// The accepted values of enum-valued keys, by "table.key".
    values: BTreeMap<String, Vec<String>>,
}

/// A deserializer that answers every request with a placeholder and records struct fields
/// and enum variants on the way.
struct Probe<'a> {
    found: &'a RefCell<Found>,
    /// The table this value belongs to, and its key there (None at the top).
    at: Option<(String, String)>,
    /// Inside a sequence: a struct here is an array of tables.
    in_array: bool,
}

impl<'a> Probe<'a> {
    fn path(&self) -> String {
        match &self.at {
            None => String::new(),
            Some((t, k)) if t.is_empty() => k.clone(),
            Some((t, k)) => format!("{t}.{k}"),
        }
    }

    /// A string the key's own parser accepts: "x", or a PKCS#11 URI for a `*_uri` key (whose
    /// deserializer checks the URI).
    fn placeholder_str(&self) -> &'static str {
        match &self.at {
            Some((_, k)) if k.ends_with("_uri") => "pkcs11:token=x",
            _ => "x",
        }
    }

    fn child(&self, table: &str, key: &str) -> Probe<'a> {
        Probe {
            found: self.found,
            at: Some((table.to_string(), key.to_string())),
            in_array: false,
        }
    }
}

#[derive(Debug)]
struct ProbeError(String);

impl std::fmt::Display for ProbeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ProbeError(msg.to_string())
    }
}

macro_rules! answer {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
            v.$visit($($value)?)
        })*
    };
}

impl<'de> Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    answer! {
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_i64(1),
        deserialize_i16 => visit_i64(1),
        deserialize_i32 => visit_i64(1),
        deserialize_i64 => visit_i64(1),
        deserialize_u8 => visit_u64(1),
        deserialize_u16 => visit_u64(1),
        deserialize_u32 => visit_u64(1),
        deserialize_u64 => visit_u64(1),
        deserialize_f32 => visit_f64(1.0),
        deserialize_f64 => visit_f64(1.0),
        deserialize_char => visit_char('x'),
        deserialize_bytes => visit_bytes(b"x"),
        deserialize_byte_buf => visit_bytes(b"x"),
        deserialize_unit => visit_unit(),
        deserialize_identifier => visit_str("x"),
        deserialize_ignored_any => visit_unit(),
        // A type that asks for "anything" (a slot id: integer or string) gets an integer.
        deserialize_any => visit_u64(1),
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        v.visit_str(self.placeholder_str())
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        v.visit_str(self.placeholder_str())
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        v.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, ProbeError> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, ProbeError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        v.visit_seq(OneElement(Some(Probe {
            found: self.found,
            at: self.at,
            in_array: true,
        })))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, ProbeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        v: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, ProbeError> {
        // A free-form map (keys chosen by the user): a table without fixed keys.
        let path = self.path();
        self.found
            .borrow_mut()
            .tables
            .entry(path)
            .or_insert_with(|| Table {
                array: self.in_array,
                keys: Vec::new(),
            });
        v.visit_map(Fields {
            probe_of: Vec::new(),
            next: None,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ProbeError> {
        if name.starts_with("$__") {
            // A wrapper private to the TOML crate (`Spanned`): its fields are not keys, and
            // the wrapped value stands where the wrapper does.
            let probes = fields
                .iter()
                .map(|f| {
                    let p = if f.ends_with("value") {
                        Probe {
                            found: self.found,
                            at: self.at.clone(),
                            in_array: self.in_array,
                        }
                    } else {
                        self.child("$", f)
                    };
                    (*f, p)
                })
                .collect();
            return v.visit_map(Fields {
                probe_of: probes,
                next: None,
            });
        }
        let path = self.path();
        self.found.borrow_mut().tables.insert(
            path.clone(),
            Table {
                array: self.in_array,
                keys: fields.iter().map(|f| f.to_string()).collect(),
            },
        );
        let probes = fields.iter().map(|f| (*f, self.child(&path, f))).collect();
        v.visit_map(Fields {
            probe_of: probes,
            next: None,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ProbeError> {
        self.found.borrow_mut().values.insert(
            self.path(),
            variants.iter().map(|s| s.to_string()).collect(),
        );
        v.visit_enum(FirstVariant {
            name: variants.first().copied().unwrap_or(""),
            probe: self,
        })
    }
}

/// A sequence of one element.
struct OneElement<'a>(Option<Probe<'a>>);

impl<'de> de::SeqAccess<'de> for OneElement<'_> {
    type Error = ProbeError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ProbeError> {
        self.0.take().map(|p| seed.deserialize(p)).transpose()
    }
}

/// A map holding every field of a struct, each answered by its own probe.
struct Fields<'a> {
    probe_of: Vec<(&'static str, Probe<'a>)>,
    next: Option<Probe<'a>>,
}

impl<'de> de::MapAccess<'de> for Fields<'_> {
    type Error = ProbeError;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        if self.probe_of.is_empty() {
            return Ok(None);
        }
        let (name, probe) = self.probe_of.remove(0);
        self.next = Some(probe);
        seed.deserialize(de::value::BorrowedStrDeserializer::<ProbeError>::new(name))
            .map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, ProbeError> {
        let probe = self.next.take().expect("a key first");
        seed.deserialize(probe)
    }
}

/// An enum answered with its first variant.
struct FirstVariant<'a> {
    name: &'static str,
    probe: Probe<'a>,
}

impl<'de, 'a> de::EnumAccess<'de> for FirstVariant<'a> {
    type Error = ProbeError;
    type Variant = Probe<'a>;
    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Probe<'a>), ProbeError> {
        let name = de::value::BorrowedStrDeserializer::<ProbeError>::new(self.name);
        Ok((seed.deserialize(name)?, self.probe))
    }
}

impl<'de> de::VariantAccess<'de> for Probe<'_> {
    type Error = ProbeError;
    fn unit_variant(self) -> Result<(), ProbeError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ProbeError> {
        seed.deserialize(self)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, ProbeError> {
        self.deserialize_seq(v)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_struct("variant", fields, v)
    }
}

/// The configuration's tables and enum values, from the code.
fn from_code() -> Found {
    let found = RefCell::new(Found::default());
    Config::deserialize(Probe {
        found: &found,
        at: None,
        in_array: false,
    })
    .unwrap_or_else(|e| panic!("probing Config's Deserialize: {e}"));
    found.into_inner()
}

// ---------------------------------------------------------------------------------------------
// The reference's side.

fn reference_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("doc/config-reference.md")
}

fn reference() -> String {
    std::fs::read_to_string(reference_path()).expect("read doc/config-reference.md")
}

/// One documented key: its row's cells.
#[derive(Debug, Clone)]
struct Row {
    key: String,
    cells: Vec<String>,
}

/// A documented table: `## \`[[upstream]]\`` or `## Top-level keys`, and its rows.
#[derive(Debug, Default)]
struct DocTable {
    array: bool,
    rows: Vec<Row>,
}

/// Cells of a markdown table row, trimmed.
fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_matches('|')
        .split('|')
        .map(|c| c.trim().to_string())
        .collect()
}

/// The text between the first pair of backticks.
fn backticked(text: &str) -> Option<&str> {
    let start = text.find('`')? + 1;
    let len = text[start..].find('`')?;
    Some(&text[start..start + len])
}

/// Documented tables by path ("" for the top level). The rows that count are those whose
/// first cell is a backticked key, under a `## ` heading that names a table.
fn documented_tables(text: &str) -> BTreeMap<String, DocTable> {
    let mut tables = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            current = None;
            if heading.starts_with("Top-level keys") {
                current = Some(String::new());
                tables.insert(String::new(), DocTable::default());
            } else if let Some(name) = backticked(heading).filter(|n| n.starts_with('[')) {
                let array = name.starts_with("[[");
                let path = name.trim_matches(|c| c == '[' || c == ']').to_string();
                current = Some(path.clone());
                tables.insert(
                    path,
                    DocTable {
                        array,
                        rows: Vec::new(),
                    },
                );
            }
            continue;
        }
        let Some(table) = &current else { continue };
        if !line.starts_with("| `") {
            continue;
        }
        let cells = cells(line);
        let key = backticked(&cells[0]).expect("a backticked key").to_string();
        tables
            .get_mut(table)
            .expect("inserted at its heading")
            .rows
            .push(Row { key, cells });
    }
    tables
}

/// Which column a table's header names `name` (the header row is the one starting `| Key`).
fn column(text: &str, name: &str) -> usize {
    let header = text
        .lines()
        .find(|l| l.starts_with("| Key "))
        .expect("a key table header");
    cells(header)
        .iter()
        .position(|c| c == name)
        .unwrap_or_else(|| panic!("no {name:?} column in {header:?}"))
}

// ---------------------------------------------------------------------------------------------
// The checks.

#[test]
fn every_table_and_key_the_parser_accepts_is_documented_and_no_other() {
    let code = from_code();
    let text = reference();
    let doc = documented_tables(&text);
    let table_paths: BTreeSet<&String> = code.tables.keys().filter(|p| !p.is_empty()).collect();
    let mut problems = Vec::new();
    for (path, table) in &code.tables {
        // Top-level keys that are tables are documented as their own sections.
        let keys: BTreeSet<&str> = table
            .keys
            .iter()
            .filter(|k| {
                let full = if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                };
                !table_paths.contains(&full)
            })
            .map(String::as_str)
            .collect();
        let shown = if path.is_empty() {
            "the top level".to_string()
        } else if table.array {
            format!("[[{path}]]")
        } else {
            format!("[{path}]")
        };
        let Some(documented) = doc.get(path) else {
            problems.push(format!(
                "{shown} is not documented (keys: {})",
                keys.iter().copied().collect::<Vec<_>>().join(", ")
            ));
            continue;
        };
        if documented.array != table.array {
            problems.push(format!(
                "{shown} is documented as {}",
                if documented.array { "[[...]]" } else { "[...]" }
            ));
        }
        let doc_keys: BTreeSet<&str> = documented.rows.iter().map(|r| r.key.as_str()).collect();
        for missing in keys.difference(&doc_keys) {
            problems.push(format!("{shown} key `{missing}` is not documented"));
        }
        for extra in doc_keys.difference(&keys) {
            problems.push(format!(
                "{shown} key `{extra}` is documented but the parser does not accept it"
            ));
        }
    }
    for path in doc.keys() {
        if !code.tables.contains_key(path) {
            problems.push(format!(
                "the reference documents a table {path:?} the parser does not have"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "doc/config-reference.md and src/config.rs disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_enum_value_is_documented_in_its_keys_row() {
    let code = from_code();
    let text = reference();
    let doc = documented_tables(&text);
    let mut problems = Vec::new();
    assert!(
        code.values.contains_key("audit.on_failure"),
        "the probe finds enum values: {:?}",
        code.values.keys()
    );
    for (full, values) in &code.values {
        let (table, key) = full.rsplit_once('.').unwrap_or(("", full));
        let Some(row) = doc
            .get(table)
            .and_then(|t| t.rows.iter().find(|r| r.key == key))
        else {
            // The missing key itself is reported by the test above.
            continue;
        };
        let line = row.cells.join(" | ");
        for v in values {
            if !line.contains(&format!("\"{v}\"")) {
                problems.push(format!("{full}: the value \"{v}\" is not in its row"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Each table's documented keys, with their example values, make a configuration the parser
/// reads (types checked, nothing unknown). Only deserialisation: the cross-checks of
/// `Config::parse` (one target per slot, files on disk) are not the reference's subject.
#[test]
fn every_documented_example_value_is_accepted() {
    let text = reference();
    let doc = documented_tables(&text);
    let example = column(&text, "Example");
    let mut toml = String::new();
    // Top-level keys first: TOML puts every key after a table header into that table.
    let mut order: Vec<&String> = doc.keys().collect();
    order.sort_by_key(|p| !p.is_empty());
    for path in order {
        let table = &doc[path];
        if !path.is_empty() {
            toml.push_str(&if table.array {
                format!("[[{path}]]\n")
            } else {
                format!("[{path}]\n")
            });
        }
        for row in &table.rows {
            let cell = row.cells.get(example).map(String::as_str).unwrap_or("");
            let value = backticked(cell)
                .unwrap_or_else(|| panic!("key `{}`: no backticked example value", row.key));
            toml.push_str(&format!("{} = {value}\n", row.key));
        }
    }
    if let Err(e) = toml::from_str::<Config>(&toml) {
        panic!("the documented examples do not parse: {e}\n{toml}");
    }
}

#[test]
fn every_toml_example_in_the_reference_parses() {
    let text = reference();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(blocks.len() >= 2, "the reference has TOML examples");
    for block in blocks {
        if let Err(e) = toml::from_str::<Config>(&block) {
            panic!("a TOML example does not parse: {e}\n{block}");
        }
    }
}

/// The `"P11GATE_..."` string literals in the library's source.
fn env_vars_in_code() -> BTreeSet<String> {
    fn walk(dir: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for (at, _) in text.match_indices("\"P11GATE_") {
                    let rest = &text[at + 1..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if rest[name.len()..].starts_with('"') {
                        found.insert(name);
                    }
                }
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut found,
    );
    found
}

#[test]
fn every_environment_variable_is_documented_and_no_other() {
    let code = env_vars_in_code();
    assert!(code.contains("P11GATE_CONFIG"), "{code:?}");
    let text = reference();
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Environment variables"))
        .expect("an \"Environment variables\" section");
    let documented: BTreeSet<String> = section
        .lines()
        .filter(|l| l.starts_with("| `P11GATE_"))
        .filter_map(|l| backticked(l).map(str::to_string))
        .collect();
    let missing: Vec<_> = code.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "environment variables not documented: {missing:?}; documented but not in src/: {extra:?}"
    );
}

/// The probe itself: it must see what is known to be there, or the tests above prove nothing.
#[test]
fn the_probe_finds_known_tables_keys_and_values() {
    let code = from_code();
    assert!(code.tables["upstream"].array);
    assert!(!code.tables["audit"].array);
    assert!(code.tables["slot"].keys.iter().any(|k| k == "token_label"));
    assert!(code.tables[""].keys.iter().any(|k| k == "default_app"));
    assert_eq!(code.values["log.level"].len(), 5);
    assert_eq!(
        code.values["audit.syslog_format"],
        vec!["rfc5424".to_string(), "rfc3164".to_string()]
    );
}

#[test]
fn every_mechanism_profile_has_a_row() {
    let text = reference();
    for p in p11gate::policy::PROFILES {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("| `{}` |", p.name))),
            "profile {:?} has no row in doc/config-reference.md",
            p.name
        );
    }
}
