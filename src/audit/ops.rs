//! Open cryptographic operations per session, so that one multi-part operation is one record.
//!
//! A successful `*Init` notes the mechanism and key here; `*Update` calls add their bytes; the
//! call that ends the operation takes the totals into its record. Indexed by the session's
//! entry in the session table, like it lock-free: each field is a relaxed atomic (a session is
//! used by one thread at a time; if an application breaks that rule, totals may be off, but
//! nothing is unsafe).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use once_cell::sync::OnceCell;
use pkcs11_sys::*;

use crate::router::sessions::MAX_SESSIONS;

/// The kinds of operation a session can have open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Encrypt,
    Decrypt,
    Sign,
    Verify,
    Digest,
    MessageEncrypt,
    MessageDecrypt,
    MessageSign,
    MessageVerify,
}

const KINDS: usize = 9;

impl OpKind {
    /// Every kind, in table order.
    pub const ALL: [OpKind; KINDS] = [
        OpKind::Encrypt,
        OpKind::Decrypt,
        OpKind::Sign,
        OpKind::Verify,
        OpKind::Digest,
        OpKind::MessageEncrypt,
        OpKind::MessageDecrypt,
        OpKind::MessageSign,
        OpKind::MessageVerify,
    ];
}
const CHUNK_BITS: u32 = 10;
const CHUNK_LEN: usize = 1 << CHUNK_BITS;
const CHUNKS: usize = MAX_SESSIONS.div_ceil(CHUNK_LEN);
/// `mechanism` of a kind with no open operation.
const IDLE: u64 = u64::MAX;

#[derive(Debug)]
struct Op {
    mechanism: AtomicU64,
    key: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    parts: AtomicU64,
    micros: AtomicU64,
}

impl Op {
    const fn new() -> Op {
        Op {
            mechanism: AtomicU64::new(IDLE),
            key: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            parts: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        }
    }
}

type SessionOps = [Op; KINDS];

/// An operation's totals, taken when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub mechanism: Option<CK_MECHANISM_TYPE>,
    pub key: CK_OBJECT_HANDLE,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub parts: u64,
    pub micros: u64,
}

/// Open operations of every session of one runtime.
#[derive(Debug)]
pub struct Operations {
    chunks: Box<[OnceCell<Box<[SessionOps; CHUNK_LEN]>>]>,
}

impl Default for Operations {
    fn default() -> Self {
        Operations {
            chunks: (0..CHUNKS).map(|_| OnceCell::new()).collect(),
        }
    }
}

impl Operations {
    #[inline]
    fn op(&self, session: usize, kind: OpKind) -> Option<&Op> {
        let chunk = self
            .chunks
            .get(session >> CHUNK_BITS)?
            .get_or_init(|| Box::new([const { [const { Op::new() }; KINDS] }; CHUNK_LEN]));
        Some(&chunk[session & (CHUNK_LEN - 1)][kind as usize])
    }

    /// A successful `*Init`.
    #[inline]
    pub fn begin(
        &self,
        session: usize,
        kind: OpKind,
        mechanism: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
        micros: u64,
    ) {
        if let Some(op) = self.op(session, kind) {
            op.mechanism.store(mechanism, Relaxed);
            op.key.store(key, Relaxed);
            op.bytes_in.store(0, Relaxed);
            op.bytes_out.store(0, Relaxed);
            op.parts.store(0, Relaxed);
            op.micros.store(micros, Relaxed);
        }
    }

    /// A call that continues the operation without data (a length query): only its time.
    #[inline]
    pub fn add_time(&self, session: usize, kind: OpKind, micros: u64) {
        if let Some(op) = self.op(session, kind) {
            op.micros.fetch_add(micros, Relaxed);
        }
    }

    /// A call that continues the operation with data (an update).
    #[inline]
    pub fn add(&self, session: usize, kind: OpKind, bytes_in: u64, bytes_out: u64, micros: u64) {
        if let Some(op) = self.op(session, kind) {
            op.bytes_in.fetch_add(bytes_in, Relaxed);
            op.bytes_out.fetch_add(bytes_out, Relaxed);
            op.parts.fetch_add(1, Relaxed);
            op.micros.fetch_add(micros, Relaxed);
        }
    }

    /// The operation's totals so far, without ending it (3.0 per-message calls).
    pub fn peek(&self, session: usize, kind: OpKind) -> Totals {
        self.op(session, kind).map_or_else(Totals::default, read)
    }

    /// Ends the operation and returns its totals.
    #[inline]
    pub fn end(&self, session: usize, kind: OpKind) -> Totals {
        match self.op(session, kind) {
            None => Totals::default(),
            Some(op) => {
                let t = read(op);
                op.mechanism.store(IDLE, Relaxed);
                t
            }
        }
    }

    /// Ends every operation of a session, returning those that were open (`C_CloseSession`).
    pub fn end_all(&self, session: usize) -> Vec<(OpKind, Totals)> {
        OpKind::ALL
            .into_iter()
            .filter_map(|k| {
                let t = self.end(session, k);
                t.mechanism.map(|_| (k, t))
            })
            .collect()
    }
}

fn read(op: &Op) -> Totals {
    let m = op.mechanism.load(Relaxed);
    Totals {
        mechanism: (m != IDLE).then_some(m),
        key: op.key.load(Relaxed),
        bytes_in: op.bytes_in.load(Relaxed),
        bytes_out: op.bytes_out.load(Relaxed),
        parts: op.parts.load(Relaxed),
        micros: op.micros.load(Relaxed),
    }
}

impl OpKind {
    /// The `*Init` function that starts this kind of operation.
    pub fn init_function(self) -> &'static str {
        match self {
            OpKind::Encrypt => "C_EncryptInit",
            OpKind::Decrypt => "C_DecryptInit",
            OpKind::Sign => "C_SignInit",
            OpKind::Verify => "C_VerifyInit",
            OpKind::Digest => "C_DigestInit",
            OpKind::MessageEncrypt => "C_MessageEncryptInit",
            OpKind::MessageDecrypt => "C_MessageDecryptInit",
            OpKind::MessageSign => "C_MessageSignInit",
            OpKind::MessageVerify => "C_MessageVerifyInit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_sums_its_parts_and_ends_once() {
        let ops = Operations::default();
        assert_eq!(ops.end(5, OpKind::Encrypt).mechanism, None);
        ops.begin(5, OpKind::Encrypt, CKM_AES_GCM, 9, 3);
        ops.add(5, OpKind::Encrypt, 16, 16, 2);
        ops.add(5, OpKind::Encrypt, 16, 0, 1);
        ops.begin(5, OpKind::Sign, CKM_SHA256_HMAC, 4, 1);
        assert_eq!(
            ops.end(5, OpKind::Encrypt),
            Totals {
                mechanism: Some(CKM_AES_GCM),
                key: 9,
                bytes_in: 32,
                bytes_out: 16,
                parts: 2,
                micros: 6
            }
        );
        assert_eq!(ops.end(5, OpKind::Encrypt).mechanism, None);
        let open = ops.end_all(5);
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].0, OpKind::Sign);
        assert_eq!(ops.end_all(5), vec![]);
        assert_eq!(ops.end(MAX_SESSIONS + 5000, OpKind::Sign).mechanism, None);
    }
}
