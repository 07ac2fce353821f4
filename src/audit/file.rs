//! The JSON-lines file sink, with a sequence number and an HMAC chain value on every record.
//!
//! Several processes may append to one file: each batch is written under an exclusive `flock`,
//! after reading the file's last record to continue its sequence and chain (skipped when the
//! file is as this process left it). A file that was rotated away (its path now names another
//! file, or none) is closed and a new one started, whose `file_start` record carries the old
//! file's last chain value. A write that fails part-way is cut back off, so the file never
//! keeps half a record.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use super::chain::{hex, split, AuditKey, CHAIN_MARK};
use super::format::{json_string, push_hex, push_u64, rfc3339, Origin};

/// How much of the file's end is read to find its last record.
const TAIL: u64 = 64 * 1024;
/// With `fsync`, how long written records may wait for `fdatasync` (group commit: one flush of
/// the device per interval, not per batch, which cost more CPU than everything else).
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    key: AuditKey,
    fsync: bool,
    file: Option<File>,
    /// The last record this process wrote or read: seq, chain, and the file's length after it.
    last: Option<(u64, [u8; 32], u64)>,
    /// The last chain value of the file before a rotation, for the next `file_start`.
    rotated_from: Option<[u8; 32]>,
    last_sync: std::time::Instant,
    /// Written since the last `fdatasync`.
    dirty: bool,
}

impl FileSink {
    pub fn new(path: PathBuf, key: AuditKey, fsync: bool) -> FileSink {
        FileSink {
            path,
            key,
            fsync,
            file: None,
            last: None,
            rotated_from: None,
            last_sync: std::time::Instant::now(),
            dirty: false,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Opens the file (created 0640), or re-opens it after a rotation.
    pub fn open(&mut self) -> io::Result<()> {
        if let Some(f) = &self.file {
            let same = match std::fs::metadata(&self.path) {
                Ok(now) => {
                    let ours = f.metadata()?;
                    now.ino() == ours.ino() && now.dev() == ours.dev()
                }
                Err(_) => false,
            };
            if same {
                return Ok(());
            }
            self.file = None;
            self.rotated_from = self.last.map(|(_, chain, _)| chain);
            self.last = None;
        }
        let file = OpenOptions::new()
            .append(true)
            .read(true)
            .create(true)
            .mode(0o640)
            .open(&self.path)?;
        self.file = Some(file);
        Ok(())
    }

    /// Appends records (each the JSON members of one record, without braces), continuing the
    /// file's chain.
    pub fn write(&mut self, records: &[String], origin: &Origin) -> io::Result<()> {
        self.open()?;
        let file = self.file.as_mut().ok_or(io::ErrorKind::NotConnected)?;
        file.lock()?;
        let result = append(
            file,
            &self.key,
            &mut self.last,
            &mut self.rotated_from,
            records,
            origin,
        );
        let _ = file.unlock();
        if result.is_err() {
            // The next write reads the file's end again.
            self.last = None;
            return result;
        }
        self.dirty = true;
        if self.last_sync.elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// `fdatasync`s what was written, if `fsync` is on and anything was.
    pub fn sync(&mut self) -> io::Result<()> {
        if let (true, true, Some(f)) = (self.fsync, self.dirty, &self.file) {
            f.sync_data()?;
        }
        self.dirty = false;
        self.last_sync = std::time::Instant::now();
        Ok(())
    }
}

fn append(
    file: &mut File,
    key: &AuditKey,
    last: &mut Option<(u64, [u8; 32], u64)>,
    rotated_from: &mut Option<[u8; 32]>,
    records: &[String],
    origin: &Origin,
) -> io::Result<()> {
    let len = file.metadata()?.len();
    let (mut next_seq, mut prev) = match *last {
        Some((seq, chain, at)) if at == len => (seq + 1, chain),
        _ => match last_record(file, len)? {
            Some((seq, chain)) => (seq + 1, chain),
            None => (0, [0; 32]),
        },
    };
    let mut out = String::with_capacity(records.len() * 400 + 400);
    let line = |body: &str, out: &mut String, seq: &mut u64, prev: &mut [u8; 32]| {
        let start = out.len();
        out.push_str("{\"seq\":");
        push_u64(out, *seq);
        out.push(',');
        out.push_str(body);
        *prev = key.chain(prev, &out.as_bytes()[start..]);
        out.push_str(CHAIN_MARK);
        push_hex(out, prev);
        out.push_str("\"}\n");
        *seq += 1;
    };
    if next_seq == 0 {
        let mut start = String::new();
        start.push_str("\"event\":\"file_start\",\"time\":");
        json_string(&mut start, &rfc3339(super::record::now_us()));
        start.push_str(",\"host\":");
        json_string(&mut start, &origin.host);
        start.push_str(&format!(",\"pid\":{},\"key_id\":", origin.pid));
        json_string(&mut start, &key.id());
        if let Some(before) = rotated_from.take() {
            start.push_str(",\"prev_chain\":");
            json_string(&mut start, &hex(&before));
        }
        line(&start, &mut out, &mut next_seq, &mut prev);
    }
    for r in records {
        line(r, &mut out, &mut next_seq, &mut prev);
    }
    if let Err(e) = file.write_all(out.as_bytes()) {
        // Never leave half a record: cut the file back to where this batch began.
        let _ = file.set_len(len);
        return Err(e);
    }
    *last = Some((next_seq - 1, prev, len + out.len() as u64));
    Ok(())
}

/// The seq and chain value of the file's last record, or `None` for an empty file (or one
/// whose end is not a record: then a new chain starts, which `audit verify` will point out).
fn last_record(file: &mut File, len: u64) -> io::Result<Option<(u64, [u8; 32])>> {
    if len == 0 {
        return Ok(None);
    }
    let from = len.saturating_sub(TAIL);
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::with_capacity((len - from) as usize);
    file.take(len - from).read_to_end(&mut tail)?;
    let text = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let last = text.rsplit(|b| *b == b'\n').next().unwrap_or(&[]);
    let l = split(last);
    Ok(match (l.seq, l.chain) {
        (Some(seq), Some(chain)) => Some((seq, chain)),
        _ => None,
    })
}
