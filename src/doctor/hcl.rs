//! Reads the `seal "pkcs11" { ... }` stanzas out of a Vault configuration file.
//!
//! Vault's configuration is a whole HCL file (listener and storage blocks, nested blocks, lists,
//! objects, comments, heredocs); the doctor needs only the seal stanzas, whose values are flat
//! strings, numbers and booleans. A general HCL crate would bring a parser and its dependencies
//! into the library that Vault loads; this reader instead tokenises HCL fully enough (strings with
//! escapes and `${...}` templates, heredocs, the three comment forms, numbers, brackets) to skip
//! every other block and attribute correctly, and reads only the seal stanzas' values. A Vault
//! configuration in JSON (`vault.json`) is read too.

use std::fmt;

/// One `key = value` of a seal stanza. Numbers keep their text (`0x1087`), booleans are `true`
/// or `false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// 1-based line of the key (0 for a JSON file).
    pub line: usize,
}

/// A `seal "pkcs11"` block: where it starts and its entries in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    pub line: usize,
    pub entries: Vec<Entry>,
}

impl Stanza {
    /// The value of `key` (the last one, if given twice).
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.key == key)
    }
}

/// Why the file could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

type Result<T> = std::result::Result<T, ParseError>;

fn error<T>(line: usize, message: impl Into<String>) -> Result<T> {
    Err(ParseError {
        line,
        message: message.into(),
    })
}

/// Every `seal "pkcs11"` stanza of a Vault configuration (HCL, or JSON when the text starts
/// with `{`), in file order.
pub fn seal_stanzas(text: &str) -> Result<Vec<Stanza>> {
    if text.trim_start().starts_with('{') {
        return json_stanzas(text);
    }
    let tokens = lex(text)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        found: Vec::new(),
    };
    parser.body(false, 0)?;
    Ok(parser.found)
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A quoted string, decoded; `true` when it holds a `${...}` or `%{...}` template.
    Str(String, bool),
    Heredoc(String),
    Number(String),
    Punct(char),
    Newline,
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    text: &'a str,
    line: usize,
}

impl Lexer<'_> {
    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    fn peek2(&self) -> Option<char> {
        let mut it = self.chars.clone();
        it.next();
        it.next().map(|(_, c)| c)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next().map(|(_, c)| c);
        if c == Some('\n') {
            self.line += 1;
        }
        c
    }

    fn offset(&mut self) -> usize {
        self.chars.peek().map_or(self.text.len(), |&(i, _)| i)
    }
}

fn lex(text: &str) -> Result<Vec<Token>> {
    let mut lx = Lexer {
        chars: text.char_indices().peekable(),
        text,
        line: 1,
    };
    let mut out = Vec::new();
    loop {
        let line = lx.line;
        let Some(c) = lx.peek() else {
            out.push(Token {
                tok: Tok::Eof,
                line,
            });
            return Ok(out);
        };
        let tok = match c {
            '\n' => {
                lx.bump();
                Tok::Newline
            }
            c if c.is_whitespace() => {
                lx.bump();
                continue;
            }
            '#' => {
                skip_line(&mut lx);
                continue;
            }
            '/' if lx.peek2() == Some('/') => {
                skip_line(&mut lx);
                continue;
            }
            '/' if lx.peek2() == Some('*') => {
                lx.bump();
                lx.bump();
                loop {
                    match lx.bump() {
                        Some('*') if lx.peek() == Some('/') => {
                            lx.bump();
                            break;
                        }
                        Some(_) => {}
                        None => return error(line, "a /* comment is not closed"),
                    }
                }
                continue;
            }
            '"' => {
                lx.bump();
                let (s, template) = quoted(&mut lx, line)?;
                Tok::Str(s, template)
            }
            '<' if lx.peek2() == Some('<') => {
                lx.bump();
                lx.bump();
                Tok::Heredoc(heredoc(&mut lx, line)?)
            }
            c if c.is_ascii_digit() => {
                let start = lx.offset();
                let mut prev = c;
                while let Some(n) = lx.peek() {
                    let exponent_sign = (n == '+' || n == '-') && (prev == 'e' || prev == 'E');
                    if n.is_ascii_alphanumeric() || n == '.' || n == '_' || exponent_sign {
                        prev = n;
                        lx.bump();
                    } else {
                        break;
                    }
                }
                let end = lx.offset();
                Tok::Number(text[start..end].to_string())
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = lx.offset();
                while let Some(n) = lx.peek() {
                    if n.is_alphanumeric() || n == '_' || n == '-' {
                        lx.bump();
                    } else {
                        break;
                    }
                }
                let end = lx.offset();
                Tok::Ident(text[start..end].to_string())
            }
            c => {
                lx.bump();
                Tok::Punct(c)
            }
        };
        out.push(Token { tok, line });
    }
}

/// Skips a `#` or `//` comment up to (not including) the end of its line.
fn skip_line(lx: &mut Lexer<'_>) {
    while let Some(c) = lx.peek() {
        if c == '\n' {
            break;
        }
        lx.bump();
    }
}

/// The rest of a quoted string after its opening `"`: its decoded text, and whether it holds a
/// template sequence (whose nested braces and strings are skipped as a unit).
fn quoted(lx: &mut Lexer<'_>, line: usize) -> Result<(String, bool)> {
    let mut s = String::new();
    let mut template = false;
    loop {
        match lx.bump() {
            None | Some('\n') => return error(line, "a quoted string is not closed on its line"),
            Some('"') => return Ok((s, template)),
            Some('\\') => match lx.bump() {
                Some('n') => s.push('\n'),
                Some('t') => s.push('\t'),
                Some('r') => s.push('\r'),
                Some('"') => s.push('"'),
                Some('\\') => s.push('\\'),
                Some(u @ ('u' | 'U')) => {
                    let n = if u == 'u' { 4 } else { 8 };
                    let mut hex = String::new();
                    for _ in 0..n {
                        hex.extend(lx.bump());
                    }
                    let c = u32::from_str_radix(&hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| ParseError {
                            line,
                            message: format!("\\{u}{hex} is not a character"),
                        })?;
                    s.push(c);
                }
                other => {
                    return error(
                        line,
                        format!(
                            "unknown escape \\{}",
                            other.map_or(String::new(), String::from)
                        ),
                    )
                }
            },
            Some(c @ ('$' | '%')) if lx.peek() == Some(c) && lx.peek2() == Some('{') => {
                // `$${` and `%%{` are literal `${` and `%{`.
                lx.bump();
                s.push(c);
            }
            Some(c @ ('$' | '%')) if lx.peek() == Some('{') => {
                lx.bump();
                template = true;
                s.push(c);
                s.push('{');
                skip_template(lx, line)?;
                s.push('}');
            }
            Some(c) => s.push(c),
        }
    }
}

/// Skips a template sequence's body up to its closing `}` (nested braces and strings included).
fn skip_template(lx: &mut Lexer<'_>, line: usize) -> Result<()> {
    let mut depth = 1;
    loop {
        match lx.bump() {
            None => return error(line, "a ${ template is not closed"),
            Some('"') => {
                quoted(lx, line)?;
            }
            Some('{') => depth += 1,
            Some('}') => {
                depth -= 1;
                if depth == 0 {
                    return Ok(());
                }
            }
            Some(_) => {}
        }
    }
}

/// The rest of a heredoc after `<<`: `[-]MARKER`, the end of the line, then lines up to one
/// that holds only the marker (indented with `<<-`, whose common indentation is removed).
fn heredoc(lx: &mut Lexer<'_>, line: usize) -> Result<String> {
    let indented = lx.peek() == Some('-');
    if indented {
        lx.bump();
    }
    let mut marker = String::new();
    while let Some(c) = lx.peek() {
        if c.is_alphanumeric() || c == '_' || c == '-' {
            marker.push(c);
            lx.bump();
        } else {
            break;
        }
    }
    if lx.peek() == Some('\r') {
        lx.bump();
    }
    if marker.is_empty() || lx.bump() != Some('\n') {
        return error(line, "a heredoc needs <<MARKER at the end of its line");
    }
    let mut lines: Vec<String> = Vec::new();
    loop {
        let mut current = String::new();
        let mut ended = false;
        loop {
            match lx.peek() {
                None => {
                    ended = true;
                    break;
                }
                Some('\n') => break,
                Some(c) => {
                    current.push(c);
                    lx.bump();
                }
            }
        }
        if current.trim() == marker {
            break;
        }
        if ended {
            return error(line, format!("heredoc {marker} is not closed"));
        }
        lx.bump();
        lines.push(current);
    }
    if indented {
        let indent = lines
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        for l in &mut lines {
            *l = l.chars().skip(indent).collect();
        }
    }
    let mut s = lines.join("\n");
    s.push('\n');
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// Structure

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    found: Vec<Stanza>,
}

/// Blocks nested deeper than this are refused (the reader recurses once per level).
const MAX_DEPTH: usize = 64;

impl Parser {
    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    /// A body: attributes and blocks up to `}` (in a block) or the end of the file.
    fn body(&mut self, in_block: bool, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return error(self.peek().line, "blocks are nested too deeply");
        }
        loop {
            let t = self.next();
            let name = match t.tok {
                Tok::Newline | Tok::Punct(',') => continue,
                Tok::Eof if in_block => return error(t.line, "a block is not closed with }"),
                Tok::Eof => return Ok(()),
                Tok::Punct('}') if in_block => return Ok(()),
                Tok::Ident(n) | Tok::Str(n, false) => n,
                other => return error(t.line, format!("unexpected {}", describe(&other))),
            };
            match self.peek().tok.clone() {
                Tok::Punct('=' | ':') => {
                    self.next();
                    self.skip_value()?;
                }
                _ => {
                    let mut labels = Vec::new();
                    loop {
                        let l = self.next();
                        match l.tok {
                            Tok::Str(s, false) | Tok::Ident(s) => labels.push(s),
                            Tok::Punct('{') => break,
                            other => {
                                return error(
                                    l.line,
                                    format!(
                                        "expected = or a block after {name}, found {}",
                                        describe(&other)
                                    ),
                                )
                            }
                        }
                    }
                    if name == "seal" && labels == ["pkcs11"] {
                        let stanza = self.seal_body(t.line)?;
                        self.found.push(stanza);
                    } else {
                        self.body(true, depth + 1)?;
                    }
                }
            }
        }
    }

    /// Skips an attribute's value: everything up to the end of the line (or `,` / `}`) outside
    /// brackets.
    fn skip_value(&mut self) -> Result<()> {
        let mut open: Vec<(char, usize)> = Vec::new();
        loop {
            let t = self.peek().clone();
            match t.tok {
                Tok::Eof => {
                    return match open.last() {
                        Some((c, line)) => error(*line, format!("{c} is not closed")),
                        None => Ok(()),
                    }
                }
                Tok::Newline | Tok::Punct(',' | '}') if open.is_empty() => return Ok(()),
                Tok::Punct(c @ ('{' | '[' | '(')) => {
                    if open.len() > MAX_DEPTH {
                        return error(t.line, "brackets are nested too deeply");
                    }
                    open.push((c, t.line));
                }
                Tok::Punct(c @ ('}' | ']' | ')')) => {
                    let want = match c {
                        '}' => '{',
                        ']' => '[',
                        _ => '(',
                    };
                    match open.pop() {
                        Some((o, _)) if o == want => {}
                        _ => return error(t.line, format!("unexpected {c}")),
                    }
                }
                _ => {}
            }
            self.next();
        }
    }

    /// The body of a `seal "pkcs11"` block: flat `key = value` lines.
    fn seal_body(&mut self, line: usize) -> Result<Stanza> {
        let mut entries = Vec::new();
        loop {
            let t = self.next();
            let key = match t.tok {
                Tok::Newline | Tok::Punct(',') => continue,
                Tok::Punct('}') => return Ok(Stanza { line, entries }),
                Tok::Eof => return error(line, "seal \"pkcs11\" is not closed with }"),
                Tok::Ident(k) | Tok::Str(k, false) => k,
                other => {
                    return error(
                        t.line,
                        format!("seal \"pkcs11\": unexpected {}", describe(&other)),
                    )
                }
            };
            let eq = self.next();
            if !matches!(eq.tok, Tok::Punct('=' | ':')) {
                return error(
                    eq.line,
                    format!("seal \"pkcs11\": {key}: expected = (the seal stanza holds no blocks)"),
                );
            }
            let v = self.next();
            let value = match v.tok {
                Tok::Str(s, false) | Tok::Heredoc(s) | Tok::Number(s) => s,
                Tok::Ident(b) if b == "true" || b == "false" => b,
                Tok::Punct('-') => match self.next().tok {
                    Tok::Number(n) => format!("-{n}"),
                    _ => return error(v.line, format!("{key}: expected a number after -")),
                },
                Tok::Str(_, true) => {
                    return error(
                        v.line,
                        format!("{key}: the doctor cannot evaluate ${{...}} templates; write the value itself"),
                    )
                }
                other => {
                    return error(
                        v.line,
                        format!("{key}: expected a string, number or bool, found {}", describe(&other)),
                    )
                }
            };
            match self.peek().tok {
                Tok::Newline | Tok::Punct(',' | '}') | Tok::Eof => {}
                ref other => {
                    return error(
                        v.line,
                        format!("{key}: unexpected {} after the value", describe(other)),
                    )
                }
            }
            entries.push(Entry {
                key,
                value,
                line: t.line,
            });
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(s) => format!("{s:?}"),
        Tok::Str(s, _) => format!("string {s:?}"),
        Tok::Heredoc(_) => "a heredoc".into(),
        Tok::Number(n) => format!("number {n}"),
        Tok::Punct(c) => format!("{c}"),
        Tok::Newline => "end of line".into(),
        Tok::Eof => "end of file".into(),
    }
}

/// The seal stanzas of a JSON configuration: `"seal": {"pkcs11": {...}}`, or a list of such.
fn json_stanzas(text: &str) -> Result<Vec<Stanza>> {
    use serde_json::Value;
    let root: Value = serde_json::from_str(text).or_else(|e| error(e.line(), e.to_string()))?;
    let seals = match root.get("seal") {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list.clone(),
        Some(one) => vec![one.clone()],
    };
    let mut found = Vec::new();
    for seal in seals {
        let bodies = match seal.get("pkcs11") {
            None => continue,
            Some(Value::Array(list)) => list.clone(),
            Some(one) => vec![one.clone()],
        };
        for body in bodies {
            let Value::Object(map) = body else {
                return error(0, "seal \"pkcs11\" is not an object");
            };
            let mut entries = Vec::new();
            for (key, v) in map {
                let value = match v {
                    Value::String(s) => s,
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return error(0, format!("{key}: expected a string, number or bool"));
                    }
                };
                entries.push(Entry {
                    key,
                    value,
                    line: 0,
                });
            }
            found.push(Stanza { line: 0, entries });
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &Stanza) -> Vec<(&str, &str, usize)> {
        s.entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str(), e.line))
            .collect()
    }

    #[test]
    fn finds_the_seal_among_everything_else_vault_allows() {
        let text = r#"
# a full Vault configuration
ui = true
api_addr = "https://vault.example:8200" // trailing comment
storage "raft" {
  path    = "/opt/vault/data"
  node_id = "node-${1 + 2}-x"
  retry_join {
    leader_api_addr = "https://a:8200"
    leader_ca_cert  = <<EOT
-----BEGIN CERTIFICATE-----
seal "pkcs11" { lib = "decoy" }  }}} "
-----END CERTIFICATE-----
EOT
  }
}
/* a block comment with seal "pkcs11" {
   lib = "decoy" } */
listener "tcp" {
  address = "0.0.0.0:8200"
  tls_cipher_suites = ["a", "b",
     "c"]
  telemetry = { unauthenticated_metrics_access = true, nested = { x = [1, {y = 2}] } }
  expr = var.x ? "}" : "{"
}
telemetry {
  prometheus_retention_time = "30s"
}
seal "pkcs11" {
  lib            = "/usr/lib/p11gate/libp11gate.so"
  token_label    = "vault"   # the token
  pin            = "env://VAULT_HSM_PIN"
  key_label      = "vault-key"
  mechanism      = 0x1087
  slot           = 2305843009213693953
  generate_key   = true
  rsa_oaep_hash  = "sha\u0032\x35\x36"
}
"#
        .replace(r"\x35\x36", "56");
        let found = seal_stanzas(&text).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line, 29);
        assert_eq!(
            pairs(&found[0]),
            vec![
                ("lib", "/usr/lib/p11gate/libp11gate.so", 30),
                ("token_label", "vault", 31),
                ("pin", "env://VAULT_HSM_PIN", 32),
                ("key_label", "vault-key", 33),
                ("mechanism", "0x1087", 34),
                ("slot", "2305843009213693953", 35),
                ("generate_key", "true", 36),
                ("rsa_oaep_hash", "sha256", 37),
            ]
        );
    }

    #[test]
    fn several_seals_and_other_seal_types() {
        let text = "seal \"awskms\" {\n  region = \"x\"\n}\nseal \"pkcs11\" {\n  disabled = \"true\"\n  lib = \"/a.so\"\n}\nseal \"pkcs11\" { lib = \"/b.so\", key_label = \"k\" }\n";
        let found = seal_stanzas(text).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].get("disabled").unwrap().value, "true");
        assert_eq!(found[1].get("lib").unwrap().value, "/b.so");
        assert_eq!(found[1].get("key_label").unwrap().line, 8);
    }

    #[test]
    fn heredoc_values_and_indented_heredocs() {
        let text = "seal \"pkcs11\" {\n  pin = <<-EOT\n    one\n      two\n    EOT\n}\n";
        let found = seal_stanzas(text).unwrap();
        assert_eq!(found[0].get("pin").unwrap().value, "one\n  two\n");
    }

    #[test]
    fn errors_name_their_line() {
        let cases = [
            (
                "seal \"pkcs11\" {\n  lib = \"/x.so\n}\n",
                2,
                "a quoted string is not closed on its line",
            ),
            (
                "storage \"file\" {\n  path = \"/x\"\n",
                3,
                "a block is not closed with }",
            ),
            ("/* open\n\n", 1, "a /* comment is not closed"),
            (
                "seal \"pkcs11\" {\n  lib = [\"/x.so\"]\n}\n",
                2,
                "lib: expected a string, number or bool, found [",
            ),
            (
                "seal \"pkcs11\" {\n  pin = \"${env.PIN}\"\n}\n",
                2,
                "pin: the doctor cannot evaluate ${...} templates; write the value itself",
            ),
            (
                "seal \"pkcs11\" {\n  x { }\n}\n",
                2,
                "seal \"pkcs11\": x: expected = (the seal stanza holds no blocks)",
            ),
            ("a = [1, 2\n", 1, "[ is not closed"),
            ("a = (1]\n", 1, "unexpected ]"),
            ("x = <<EOT\nnever closed\n", 1, "heredoc EOT is not closed"),
        ];
        for (text, line, message) in cases {
            let e = seal_stanzas(text).unwrap_err();
            assert_eq!((e.line, e.message.as_str()), (line, message), "{text:?}");
        }
    }

    #[test]
    fn no_seal_is_an_empty_list() {
        assert_eq!(
            seal_stanzas("storage \"file\" { path = \"/x\" }\n").unwrap(),
            vec![]
        );
        assert_eq!(seal_stanzas("").unwrap(), vec![]);
    }

    #[test]
    fn json_configurations() {
        let text = r#"{"storage": {"file": {"path": "/x"}},
            "seal": {"pkcs11": {"lib": "/l.so", "slot": 0, "generate_key": true}}}"#;
        let found = seal_stanzas(text).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].get("lib").unwrap().value, "/l.so");
        assert_eq!(found[0].get("slot").unwrap().value, "0");
        assert_eq!(found[0].get("generate_key").unwrap().value, "true");
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let text = "a {\n".repeat(100_000);
        let e = seal_stanzas(&text).unwrap_err();
        assert_eq!(e.message, "blocks are nested too deeply");
        let text = format!("a = {}\n", "[".repeat(100_000));
        let e = seal_stanzas(&text).unwrap_err();
        assert_eq!(e.message, "brackets are nested too deeply");
    }
}
