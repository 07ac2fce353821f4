//! A soft token's metadata: label, whether it is initialised, the token key wrapped under each
//! PIN, and the wrong-PIN counters. Stored as the store's (authenticated) meta record.
//!
//! The token key (32 random bytes) encrypts private objects. It is kept only wrapped: sealed
//! with AES-256-GCM under a key derived from the SO PIN, and another from the user PIN, with
//! argon2id (memory 19 MiB, 2 passes, 1 lane: OWASP's minimum; a login takes about 50 ms). A PIN
//! is right when it unwraps the token key; no PIN hash is stored.

use argon2::{Algorithm, Argon2, Block, Params, Version};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::store::{open_sealed, seal};

/// argon2id parameters: memory in KiB, passes, lanes.
#[cfg(not(fuzzing))]
pub const KDF_MEMORY_KIB: u32 = 19 * 1024;
#[cfg(not(fuzzing))]
pub const KDF_PASSES: u32 = 2;
/// In fuzz builds only (`cargo fuzz` sets `cfg(fuzzing)`), argon2's minimum cost: the `calls`
/// target logs in after most inputs, and 19 MiB under the address sanitizer took a tenth of a
/// second each time. The derivation is the same code.
#[cfg(fuzzing)]
pub const KDF_MEMORY_KIB: u32 = 8;
#[cfg(fuzzing)]
pub const KDF_PASSES: u32 = 1;
pub const KDF_LANES: u32 = 1;

/// argon2's working memory, one buffer for the process that every PIN check reuses (they take
/// turns). Allocated afresh each time, its 19 MiB came from glibc's heap after the first one
/// was freed (the mmap threshold adapts to the largest freed mapping), and the freed blocks
/// stayed resident and fragmented it: 1,000 `C_Initialize`/login/`C_Finalize` cycles on the
/// soft token swung between 60 and 140 MiB resident. Zeroed after each use: it holds values
/// derived from the PIN.
static KDF_MEMORY: Mutex<Vec<Block>> = Mutex::new(Vec::new());

/// The token key wrapped under one PIN.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Wrapped {
    /// argon2id salt (hex).
    pub salt: String,
    /// The sealed token key (hex).
    pub key: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// CKA_LABEL of the token: 32 blank-padded bytes, as text.
    pub label: String,
    pub so: Option<Wrapped>,
    pub user: Option<Wrapped>,
    pub so_failures: u32,
    pub user_failures: u32,
}

impl Meta {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Meta> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn initialized(&self) -> bool {
        self.so.is_some()
    }
}

/// The key a PIN derives, with `salt`.
fn kek(pin: &[u8], salt: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let params = Params::new(KDF_MEMORY_KIB, KDF_PASSES, KDF_LANES, Some(32)).ok()?;
    let blocks = params.block_count();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    let mut memory = KDF_MEMORY.lock();
    memory.resize(blocks, Block::default());
    let derived = argon.hash_password_into_with_memory(pin, salt, &mut *out, &mut memory[..]);
    memory.fill(Block::default());
    drop(memory);
    derived.ok()?;
    Some(out)
}

/// Wraps the token key under `pin` (a fresh salt each time).
pub fn wrap(token_key: &[u8; 32], pin: &[u8], who: &str) -> Option<Wrapped> {
    let mut salt = [0u8; 16];
    super::crypto::sym::random(&mut salt).ok()?;
    let k = kek(pin, &salt)?;
    Some(Wrapped {
        salt: crate::audit::chain::hex(&salt),
        key: crate::audit::chain::hex(&seal(&k, who.as_bytes(), token_key)),
    })
}

/// The token key, if `pin` is the one it was wrapped under.
pub fn unwrap(w: &Wrapped, pin: &[u8], who: &str) -> Option<Zeroizing<[u8; 32]>> {
    let salt = crate::audit::chain::decode_hex(w.salt.as_bytes())?;
    let sealed = crate::audit::chain::decode_hex(w.key.as_bytes())?;
    let k = kek(pin, &salt)?;
    let key = open_sealed(&k, who.as_bytes(), &sealed).ok()?;
    let key: [u8; 32] = key.as_slice().try_into().ok()?;
    Some(Zeroizing::new(key))
}
