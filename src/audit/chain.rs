//! Tamper evidence for audit files: a sequence number and an HMAC-SHA256 chain per record.
//!
//! `chain[n] = HMAC(key, chain[n-1] || body[n])`, where `body[n]` is the line's bytes up to,
//! not including, `,"chain":"`, and `chain[-1]` is 32 zero bytes (a file's record 0 is its
//! `file_start` record). A deleted, inserted, reordered or edited record breaks the chain at
//! that point; [`verify`] says which. Whoever holds the key can rewrite the whole file: keep the
//! key where the application's users cannot read it, or ship records off the host as well.

use std::io::BufRead;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// What precedes the chain value at the end of every line.
pub const CHAIN_MARK: &str = ",\"chain\":\"";

/// The audit key as a prepared HMAC state: the key schedule is done once (it is a quarter of
/// the work of chaining a short record), and the raw key bytes are wiped as soon as it is.
#[derive(Clone)]
pub struct AuditKey {
    keyed: HmacSha256,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey({})", self.id())
    }
}

impl AuditKey {
    /// Reads a key file: 32 or more bytes, raw or as hex (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<AuditKey, String> {
        let raw = Zeroizing::new(
            std::fs::read(path).map_err(|e| format!("audit key {}: {e}", path.display()))?,
        );
        let text = std::str::from_utf8(&raw).ok().map(str::trim);
        let key = match text.and_then(|t| decode_hex(t.as_bytes())) {
            Some(k) => Zeroizing::new(k),
            None => raw.clone(),
        };
        if key.len() < 32 {
            return Err(format!(
                "audit key {}: {} bytes; it needs at least 32 (p11gate audit keygen makes one)",
                path.display(),
                key.len()
            ));
        }
        Ok(AuditKey::from_secret(key))
    }

    pub fn from_bytes(bytes: &[u8]) -> AuditKey {
        AuditKey::from_secret(Zeroizing::new(bytes.to_vec()))
    }

    fn from_secret(key: Zeroizing<Vec<u8>>) -> AuditKey {
        // HMAC takes keys of any length: this cannot fail.
        let keyed = <HmacSha256 as Mac>::new_from_slice(&key).unwrap_or_else(|_| unreachable!());
        AuditKey { keyed }
    }

    fn mac(&self) -> HmacSha256 {
        self.keyed.clone()
    }

    /// The chain value of a record whose line body is `body`, after `prev`.
    pub fn chain(&self, prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
        let mut m = self.mac();
        m.update(prev);
        m.update(body);
        m.finalize().into_bytes().into()
    }

    /// The key's public fingerprint: the first 8 bytes of HMAC(key, "p11gate audit key id").
    pub fn id(&self) -> String {
        let mut m = self.mac();
        m.update(b"p11gate audit key id");
        hex(&m.finalize().into_bytes()[..8])
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    super::format::push_hex(&mut s, bytes);
    s
}

pub fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.is_empty() {
        return None;
    }
    text.chunks(2)
        .map(|p| {
            let d = |c: u8| (c as char).to_digit(16);
            Some((d(p[0])? * 16 + d(p[1])?) as u8)
        })
        .collect()
}

/// A line split into its body, its `seq` and its chain value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    pub body: &'a [u8],
    pub seq: Option<u64>,
    pub chain: Option<[u8; 32]>,
}

/// Splits a record line (without its newline).
pub fn split(line: &[u8]) -> Line<'_> {
    let mark = CHAIN_MARK.as_bytes();
    let (body, chain) = match line.windows(mark.len()).rposition(|w| w == mark) {
        Some(at) => {
            let rest = &line[at + mark.len()..];
            let chain = rest
                .strip_suffix(b"\"}")
                .and_then(decode_hex)
                .and_then(|v| <[u8; 32]>::try_from(v).ok());
            (&line[..at], chain)
        }
        None => (line, None),
    };
    let seq = body
        .strip_prefix(b"{\"seq\":")
        .map(|r| {
            r.iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect::<Vec<u8>>()
        })
        .and_then(|d| std::str::from_utf8(&d).ok()?.parse().ok());
    Line { body, seq, chain }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record chains: how many there are.
    Intact { records: u64 },
    /// The first problem: the 1-based line it was found on, its kind, and what was expected.
    Broken {
        line: u64,
        kind: Tamper,
        detail: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    Deleted,
    Inserted,
    Reordered,
    Edited,
}

impl Tamper {
    pub fn word(self) -> &'static str {
        match self {
            Tamper::Deleted => "deleted",
            Tamper::Inserted => "inserted",
            Tamper::Reordered => "reordered",
            Tamper::Edited => "edited",
        }
    }
}

/// How far ahead [`verify`] looks for a missing sequence number before calling it deleted
/// rather than moved.
const LOOKAHEAD: usize = 4096;

/// Checks a file's chain from its first record. Reads the file once, holding at most
/// `LOOKAHEAD` lines.
pub fn verify(input: impl BufRead, key: &AuditKey) -> std::io::Result<Verdict> {
    let mut lines = input.split(b'\n');
    let mut window: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut prev = [0u8; 32];
    let mut expected: u64 = 0;
    let mut number: u64 = 0;
    loop {
        let current = match window.pop_front() {
            Some(l) => l,
            None => match lines.next() {
                Some(l) => l?,
                None => break,
            },
        };
        number += 1;
        if current.is_empty() {
            return Ok(broken(number, Tamper::Edited, "an empty line"));
        }
        let line = split(&current);
        let Some(seq) = line.seq else {
            return Ok(broken(number, Tamper::Edited, "no sequence number"));
        };
        let Some(chain) = line.chain else {
            return Ok(broken(number, Tamper::Edited, "no chain value"));
        };
        let computed = key.chain(&prev, line.body);
        if computed == chain && seq == expected {
            prev = chain;
            expected += 1;
            continue;
        }
        if seq < expected {
            // A number seen before: a copy, or an earlier record moved here.
            let kind = if computed == chain {
                Tamper::Reordered
            } else {
                Tamper::Inserted
            };
            return Ok(broken(
                number,
                kind,
                &format!("record seq {seq} where seq {expected} was expected"),
            ));
        }
        if seq > expected {
            // Either the expected record comes later (moved) or it is gone.
            while window.len() < LOOKAHEAD {
                match lines.next() {
                    Some(l) => window.push_back(l?),
                    None => break,
                }
            }
            let later = window.iter().any(|l| split(l).seq == Some(expected));
            return Ok(if later {
                broken(
                    number,
                    Tamper::Reordered,
                    &format!("record seq {seq} comes before seq {expected}"),
                )
            } else {
                broken(
                    number,
                    Tamper::Deleted,
                    &format!(
                        "record(s) seq {expected}..{} missing before seq {seq}",
                        seq - 1
                    ),
                )
            });
        }
        // The right number, the wrong chain: a new record (the next one chains to the one
        // before this), or a changed one.
        let next = match window.front() {
            Some(l) => Some(l.clone()),
            None => lines.next().transpose()?,
        };
        if let Some(n) = &next {
            if window.is_empty() {
                window.push_back(n.clone());
            }
            let nl = split(n);
            if nl.chain == Some(key.chain(&prev, nl.body)) {
                return Ok(broken(
                    number,
                    Tamper::Inserted,
                    &format!("record seq {seq} does not belong to the chain"),
                ));
            }
        }
        return Ok(broken(
            number,
            Tamper::Edited,
            &format!("record seq {seq} does not match its chain value"),
        ));
    }
    Ok(Verdict::Intact { records: expected })
}

fn broken(line: u64, kind: Tamper, detail: &str) -> Verdict {
    Verdict::Broken {
        line,
        kind,
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuditKey {
        AuditKey::from_bytes(&[7u8; 32])
    }

    /// A chained file of `n` records.
    fn file(n: u64) -> Vec<String> {
        let k = key();
        let mut prev = [0u8; 32];
        (0..n)
            .map(|seq| {
                let body = format!("{{\"seq\":{seq},\"event\":\"call\",\"rv\":\"CKR_OK\"");
                prev = k.chain(&prev, body.as_bytes());
                format!("{body}{CHAIN_MARK}{}\"}}", hex(&prev))
            })
            .collect()
    }

    fn check(lines: &[String]) -> Verdict {
        verify(lines.join("\n").as_bytes(), &key()).unwrap()
    }

    fn kind_at(v: Verdict) -> (u64, Tamper) {
        match v {
            Verdict::Broken { line, kind, .. } => (line, kind),
            other => panic!("not broken: {other:?}"),
        }
    }

    #[test]
    fn an_intact_file_verifies() {
        assert_eq!(check(&file(5)), Verdict::Intact { records: 5 });
        let mut with_newline = file(3).join("\n");
        with_newline.push('\n');
        assert_eq!(
            verify(with_newline.as_bytes(), &key()).unwrap(),
            Verdict::Intact { records: 3 }
        );
    }

    #[test]
    fn each_kind_of_tampering_is_named_where_it_is() {
        let mut deleted = file(6);
        deleted.remove(2);
        assert_eq!(kind_at(check(&deleted)), (3, Tamper::Deleted));

        let mut inserted = file(6);
        inserted.insert(3, inserted[1].clone());
        assert_eq!(kind_at(check(&inserted)), (4, Tamper::Inserted));

        let mut swapped = file(6);
        swapped.swap(2, 3);
        assert_eq!(kind_at(check(&swapped)), (3, Tamper::Reordered));

        let mut edited = file(6);
        edited[4] = edited[4].replace("CKR_OK", "CKR_PIN_INCORRECT");
        assert_eq!(kind_at(check(&edited)), (5, Tamper::Edited));

        let mut last_edited = file(6);
        last_edited[5] = last_edited[5].replace("call", "cell");
        assert_eq!(kind_at(check(&last_edited)), (6, Tamper::Edited));

        // A forged record with the right number, without the key.
        let mut forged = file(6);
        forged.insert(
            3,
            format!(
                "{{\"seq\":3,\"event\":\"call\"{CHAIN_MARK}{}\"}}",
                hex(&[1; 32])
            ),
        );
        assert_eq!(kind_at(check(&forged)), (4, Tamper::Inserted));

        let wrong_key = verify(
            file(3).join("\n").as_bytes(),
            &AuditKey::from_bytes(&[8; 32]),
        );
        assert_eq!(kind_at(wrong_key.unwrap()), (1, Tamper::Edited));
    }

    #[test]
    fn keys_load_as_hex_or_raw_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let hex_file = dir.path().join("k.hex");
        std::fs::write(&hex_file, format!("{}\n", hex(&[7u8; 32]))).unwrap();
        assert_eq!(AuditKey::load(&hex_file).unwrap().id(), key().id());
        let raw = dir.path().join("k.raw");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        assert_eq!(AuditKey::load(&raw).unwrap().id(), key().id());
        let short = dir.path().join("k.short");
        std::fs::write(&short, [7u8; 31]).unwrap();
        assert!(AuditKey::load(&short).unwrap_err().contains("at least 32"));
    }
}
