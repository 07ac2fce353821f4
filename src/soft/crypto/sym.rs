//! Symmetric mechanisms: AES (GCM, CBC, CBC_PAD, ECB, KEY_WRAP, KEY_WRAP_PAD), HMAC, digests,
//! random.
//!
//! AES block operations come from the `aes` crate (key schedules zeroized on drop). GCM is
//! composed here from `aes` and `ghash` rather than taken from `aes-gcm`, because PKCS#11 lets
//! the caller choose any IV length and a truncated tag, which `aes-gcm` fixes at compile time,
//! and because encryption can then stream. The tests check it against the published vectors
//! and against `aes-gcm`.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockCipher, BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128, Aes192, Aes256};
use aes_kw::Kek;
use ghash::universal_hash::UniversalHash;
use ghash::GHash;
use hmac::{Hmac, Mac};
use pkcs11_sys::*;
use sha1::Sha1;
use sha2::digest::consts::U16;
use sha2::{Digest, Sha256, Sha384, Sha512};
use subtle::{ConstantTimeEq, ConstantTimeGreater};
use zeroize::{Zeroize, Zeroizing};

use super::{CipherOp, CkResult, DigestOp, KeyRef, Params, SignOp};

const BLOCK: usize = 16;

/// Largest key CKM_GENERIC_SECRET_KEY_GEN makes, and the HMAC key range advertised, in bytes.
pub const MAX_SECRET_LEN: usize = 512;

/// GCM's limit on the plaintext of one message: 2^39 - 256 bits (SP 800-38D, 5.2.1.1).
const GCM_MAX_DATA: u64 = (1 << 36) - 32;

/// Tag lengths SP 800-38D (5.2.1.2) allows; PKCS#11 would take any 0..=128.
const GCM_TAG_BITS: [usize; 7] = [32, 64, 96, 104, 112, 120, 128];

// ---------------------------------------------------------------------------------------------
// AES block cipher of any of the three key sizes

/// An AES key schedule; the `aes` crate's `zeroize` feature wipes it on drop.
enum Aes {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

impl Aes {
    /// `err` is the code for a wrong key length: it differs between encryption and wrapping.
    fn new(key: &[u8], err: CK_RV) -> CkResult<Self> {
        let aes = match key.len() {
            16 => Aes128::new_from_slice(key).map(Aes::A128),
            24 => Aes192::new_from_slice(key).map(Aes::A192),
            32 => Aes256::new_from_slice(key).map(Aes::A256),
            _ => return Err(err),
        };
        aes.map_err(|_| err)
    }

    fn encrypt(&self, block: &mut [u8; BLOCK]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Aes::A128(c) => c.encrypt_block(b),
            Aes::A192(c) => c.encrypt_block(b),
            Aes::A256(c) => c.encrypt_block(b),
        }
    }

    fn decrypt(&self, block: &mut [u8; BLOCK]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Aes::A128(c) => c.decrypt_block(b),
            Aes::A192(c) => c.decrypt_block(b),
            Aes::A256(c) => c.decrypt_block(b),
        }
    }
}

/// The secret bytes of a key for an AES or HMAC operation.
fn secret<'a>(key: KeyRef<'a>, wrong_type: CK_RV) -> CkResult<&'a [u8]> {
    match key {
        KeyRef::Secret(v) => Ok(v),
        _ => Err(wrong_type),
    }
}

fn xor_into(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

// ---------------------------------------------------------------------------------------------
// Encryption and decryption

/// AES ECB, CBC, CBC_PAD or GCM. Checks the mechanism, then the key, then the parameters, so
/// each error is the most specific one that applies.
pub fn cipher(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    key: KeyRef<'_>,
    encrypt: bool,
) -> CkResult<Box<dyn CipherOp>> {
    let mode = match mechanism {
        CKM_AES_ECB => BlockMode::Ecb,
        CKM_AES_CBC => BlockMode::Cbc,
        CKM_AES_CBC_PAD => BlockMode::CbcPad,
        CKM_AES_GCM => BlockMode::Gcm,
        _ => return Err(CKR_MECHANISM_INVALID),
    };
    let aes = Aes::new(secret(key, CKR_KEY_TYPE_INCONSISTENT)?, CKR_KEY_SIZE_RANGE)?;
    match (mode, params) {
        (BlockMode::Ecb, Params::None) => {
            Ok(Box::new(BlockOp::new(aes, mode, [0; BLOCK], encrypt)))
        }
        (BlockMode::Cbc | BlockMode::CbcPad, Params::Iv(iv)) => {
            let iv: [u8; BLOCK] = iv
                .as_slice()
                .try_into()
                .map_err(|_| CKR_MECHANISM_PARAM_INVALID)?;
            Ok(Box::new(BlockOp::new(aes, mode, iv, encrypt)))
        }
        (BlockMode::Gcm, Params::Gcm { iv, aad, tag_bits }) => {
            Ok(Box::new(GcmOp::new(aes, iv, aad, *tag_bits, encrypt)?))
        }
        _ => Err(CKR_MECHANISM_PARAM_INVALID),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockMode {
    Ecb,
    Cbc,
    CbcPad,
    Gcm,
}

/// ECB, CBC and CBC_PAD: output per complete block; CBC_PAD decryption keeps the last block
/// back until `finish`, since only then is it known to carry the padding.
struct BlockOp {
    aes: Aes,
    mode: BlockMode,
    /// CBC's chaining value (the previous ciphertext block); unused by ECB.
    chain: [u8; BLOCK],
    encrypt: bool,
    /// Input not yet processed: under a block, or exactly one block for CBC_PAD decryption.
    pending: Zeroizing<Vec<u8>>,
    /// Set once `finish` ran or an error ended the operation.
    done: bool,
}

impl BlockOp {
    fn new(aes: Aes, mode: BlockMode, iv: [u8; BLOCK], encrypt: bool) -> Self {
        BlockOp {
            aes,
            mode,
            chain: iv,
            encrypt,
            pending: Zeroizing::new(Vec::with_capacity(BLOCK)),
            done: false,
        }
    }

    fn holds_last_block(&self) -> bool {
        self.mode == BlockMode::CbcPad && !self.encrypt
    }

    /// How many bytes `update` with `input_len` more bytes processes now.
    fn ready(&self, input_len: usize) -> usize {
        let total = self.pending.len().saturating_add(input_len);
        let mut n = total - total % BLOCK;
        if self.holds_last_block() && n == total && n > 0 {
            n -= BLOCK;
        }
        n
    }

    /// Encrypts or decrypts whole blocks in place.
    fn process(&mut self, data: &mut [u8]) {
        let mut block = Zeroizing::new([0u8; BLOCK]);
        for chunk in data.chunks_exact_mut(BLOCK) {
            block.copy_from_slice(chunk);
            match (self.mode, self.encrypt) {
                (BlockMode::Ecb, true) => self.aes.encrypt(&mut block),
                (BlockMode::Ecb, false) => self.aes.decrypt(&mut block),
                (_, true) => {
                    xor_into(&mut block[..], &self.chain);
                    self.aes.encrypt(&mut block);
                    self.chain = *block;
                }
                (_, false) => {
                    let ct = *block;
                    self.aes.decrypt(&mut block);
                    xor_into(&mut block[..], &self.chain);
                    self.chain = ct;
                }
            }
            chunk.copy_from_slice(&block[..]);
        }
    }

    fn finish_inner(&mut self) -> CkResult<Vec<u8>> {
        let len_err = if self.encrypt {
            CKR_DATA_LEN_RANGE
        } else {
            CKR_ENCRYPTED_DATA_LEN_RANGE
        };
        match (self.mode, self.encrypt) {
            (BlockMode::CbcPad, true) => {
                // PKCS#7: 1 to 16 bytes, each the pad length.
                let pad = BLOCK - self.pending.len();
                let mut out = std::mem::take(&mut *self.pending);
                out.resize(BLOCK, pad as u8);
                self.process(&mut out);
                Ok(out)
            }
            (BlockMode::CbcPad, false) => {
                if self.pending.len() != BLOCK {
                    return Err(len_err);
                }
                let mut last = Zeroizing::new(std::mem::take(&mut *self.pending));
                self.process(&mut last);
                let pad = last[BLOCK - 1];
                // Checked without branching on the plaintext, to give a padding oracle no timing.
                let mut ok = !pad.ct_eq(&0) & !pad.ct_gt(&(BLOCK as u8));
                for (i, b) in last.iter().enumerate() {
                    let in_pad = !((BLOCK - i) as u8).ct_gt(&pad);
                    ok &= !in_pad | b.ct_eq(&pad);
                }
                if !bool::from(ok) {
                    return Err(CKR_ENCRYPTED_DATA_INVALID);
                }
                Ok(last[..BLOCK - pad as usize].to_vec())
            }
            _ => {
                if self.pending.is_empty() {
                    Ok(Vec::new())
                } else {
                    Err(len_err)
                }
            }
        }
    }
}

impl CipherOp for BlockOp {
    fn update(&mut self, input: &[u8]) -> CkResult<Vec<u8>> {
        if self.done {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        }
        let n = self.ready(input.len());
        if n == 0 {
            self.pending.extend_from_slice(input);
            return Ok(Vec::new());
        }
        // n is a whole number of blocks and pending holds at most one, so n >= pending.len().
        let from_input = n - self.pending.len();
        let mut out = Vec::with_capacity(n);
        out.extend_from_slice(&self.pending);
        out.extend_from_slice(&input[..from_input]);
        self.pending.clear();
        self.pending.extend_from_slice(&input[from_input..]);
        self.process(&mut out);
        Ok(out)
    }

    fn finish(&mut self) -> CkResult<Vec<u8>> {
        if self.done {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        }
        self.done = true;
        self.finish_inner()
    }

    fn max_update_len(&self, input_len: usize) -> usize {
        self.ready(input_len)
    }

    fn max_final_len(&self) -> usize {
        match self.mode {
            BlockMode::CbcPad => BLOCK,
            _ => 0,
        }
    }

    fn max_oneshot_len(&self, input_len: usize) -> usize {
        let total = self.pending.len().saturating_add(input_len);
        if self.mode == BlockMode::CbcPad && self.encrypt {
            (total - total % BLOCK).saturating_add(BLOCK)
        } else {
            total
        }
    }

    fn multipart(&self) -> bool {
        true
    }
}

impl Drop for BlockOp {
    fn drop(&mut self) {
        self.chain.zeroize();
    }
}

/// AES-GCM (SP 800-38D). Encryption streams; decryption keeps all input until `finish`, so
/// that no plaintext leaves before the tag is verified.
struct GcmOp {
    aes: Aes,
    /// GHASH so far: the AAD, then whole blocks of ciphertext; taken by `tag`.
    ghash: Option<GHash>,
    /// Ciphertext bytes not yet hashed (under a block).
    ghash_pending: Vec<u8>,
    /// The pre-counter block J0: its encryption masks the tag.
    j0: [u8; BLOCK],
    /// The counter block of the keystream block in `keystream`.
    counter: [u8; BLOCK],
    keystream: [u8; BLOCK],
    /// How much of `keystream` is used; BLOCK when the next byte needs a new block.
    keystream_used: usize,
    aad_len: u64,
    data_len: u64,
    tag_len: usize,
    encrypt: bool,
    /// Decryption: everything received (ciphertext then tag).
    received: Vec<u8>,
    done: bool,
}

impl GcmOp {
    fn new(aes: Aes, iv: &[u8], aad: &[u8], tag_bits: usize, encrypt: bool) -> CkResult<Self> {
        if iv.is_empty() || !GCM_TAG_BITS.contains(&tag_bits) {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        let mut h = Zeroizing::new([0u8; BLOCK]);
        aes.encrypt(&mut h);
        let key = GenericArray::from_slice(&h[..]);
        let mut j0 = [0u8; BLOCK];
        if iv.len() == 12 {
            j0[..12].copy_from_slice(iv);
            j0[15] = 1;
        } else {
            let mut g = GHash::new(key);
            g.update_padded(iv);
            let mut lens = [0u8; BLOCK];
            lens[8..].copy_from_slice(&bits(iv.len()).to_be_bytes());
            g.update_padded(&lens);
            j0.copy_from_slice(&g.finalize());
        }
        let mut ghash = GHash::new(key);
        ghash.update_padded(aad);
        Ok(GcmOp {
            aes,
            ghash: Some(ghash),
            ghash_pending: Vec::with_capacity(BLOCK),
            j0,
            counter: j0,
            keystream: [0; BLOCK],
            keystream_used: BLOCK,
            aad_len: bits(aad.len()),
            data_len: 0,
            tag_len: tag_bits / 8,
            encrypt,
            received: Vec::new(),
            done: false,
        })
    }

    /// XORs the keystream into `data` (CTR with a 32-bit counter, GCTR in SP 800-38D).
    fn ctr(&mut self, data: &mut [u8]) {
        for byte in data {
            if self.keystream_used == BLOCK {
                let c = u32::from_be_bytes([
                    self.counter[12],
                    self.counter[13],
                    self.counter[14],
                    self.counter[15],
                ]);
                self.counter[12..].copy_from_slice(&c.wrapping_add(1).to_be_bytes());
                self.keystream = self.counter;
                self.aes.encrypt(&mut self.keystream);
                self.keystream_used = 0;
            }
            *byte ^= self.keystream[self.keystream_used];
            self.keystream_used += 1;
        }
    }

    /// Hashes ciphertext, keeping a partial block for later.
    fn hash_ciphertext(&mut self, mut ct: &[u8]) {
        if !self.ghash_pending.is_empty() {
            let take = (BLOCK - self.ghash_pending.len()).min(ct.len());
            self.ghash_pending.extend_from_slice(&ct[..take]);
            ct = &ct[take..];
            if self.ghash_pending.len() < BLOCK {
                return;
            }
            if let Some(g) = self.ghash.as_mut() {
                g.update_padded(&self.ghash_pending);
            }
            self.ghash_pending.clear();
        }
        let whole = ct.len() - ct.len() % BLOCK;
        if let Some(g) = self.ghash.as_mut() {
            g.update_padded(&ct[..whole]);
        }
        self.ghash_pending.extend_from_slice(&ct[whole..]);
    }

    /// The full 16-byte tag over what was hashed; called once, by `finish`.
    fn tag(&mut self) -> CkResult<[u8; BLOCK]> {
        let mut g = self.ghash.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        g.update_padded(&self.ghash_pending);
        self.ghash_pending.clear();
        let mut lens = [0u8; BLOCK];
        lens[..8].copy_from_slice(&self.aad_len.to_be_bytes());
        lens[8..].copy_from_slice(&self.data_len.wrapping_mul(8).to_be_bytes());
        g.update_padded(&lens);
        let s = g.finalize();
        let mut tag = self.j0;
        self.aes.encrypt(&mut tag);
        xor_into(&mut tag, &s);
        Ok(tag)
    }

    fn finish_inner(&mut self) -> CkResult<Vec<u8>> {
        if self.encrypt {
            return Ok(self.tag()?[..self.tag_len].to_vec());
        }
        let ct_len = self
            .received
            .len()
            .checked_sub(self.tag_len)
            .ok_or(CKR_ENCRYPTED_DATA_LEN_RANGE)?;
        let mut data = std::mem::take(&mut self.received);
        let given = data.split_off(ct_len);
        self.data_len = ct_len as u64;
        self.hash_ciphertext(&data);
        let tag = self.tag()?;
        if !bool::from(tag[..self.tag_len].ct_eq(&given)) {
            return Err(CKR_ENCRYPTED_DATA_INVALID);
        }
        self.ctr(&mut data);
        Ok(data)
    }
}

/// A length in bytes as GCM's 64-bit bit count (usize fits in u64 on every target Rust has).
fn bits(len: usize) -> u64 {
    (len as u64).wrapping_mul(8)
}

impl CipherOp for GcmOp {
    fn update(&mut self, input: &[u8]) -> CkResult<Vec<u8>> {
        if self.done {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        }
        if self.encrypt {
            let len = self.data_len.saturating_add(input.len() as u64);
            if len > GCM_MAX_DATA {
                self.done = true;
                return Err(CKR_DATA_LEN_RANGE);
            }
            self.data_len = len;
            let mut out = input.to_vec();
            self.ctr(&mut out);
            self.hash_ciphertext(&out);
            Ok(out)
        } else {
            let len = (self.received.len() as u64).saturating_add(input.len() as u64);
            if len > GCM_MAX_DATA + self.tag_len as u64 {
                self.done = true;
                return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
            }
            self.received.extend_from_slice(input);
            Ok(Vec::new())
        }
    }

    fn finish(&mut self) -> CkResult<Vec<u8>> {
        if self.done {
            return Err(CKR_OPERATION_NOT_INITIALIZED);
        }
        self.done = true;
        self.finish_inner()
    }

    fn max_update_len(&self, input_len: usize) -> usize {
        if self.encrypt {
            input_len
        } else {
            0
        }
    }

    fn max_final_len(&self) -> usize {
        if self.encrypt {
            self.tag_len
        } else {
            self.received.len().saturating_sub(self.tag_len)
        }
    }

    fn max_oneshot_len(&self, input_len: usize) -> usize {
        if self.encrypt {
            input_len.saturating_add(self.tag_len)
        } else {
            self.received
                .len()
                .saturating_add(input_len)
                .saturating_sub(self.tag_len)
        }
    }

    fn multipart(&self) -> bool {
        true
    }
}

impl Drop for GcmOp {
    fn drop(&mut self) {
        self.keystream.zeroize();
        self.counter.zeroize();
    }
}

// ---------------------------------------------------------------------------------------------
// HMAC

/// HMAC with SHA-1 or SHA-2. Any non-empty secret is accepted: PKCS#11 sets no minimum, and
/// RFC 2104 hashes long keys down itself.
pub fn signer(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    key: KeyRef<'_>,
    sign: bool,
) -> CkResult<Box<dyn SignOp>> {
    let _ = sign; // A MAC is computed the same way for both; `verify` compares.
    if !matches!(
        mechanism,
        CKM_SHA_1_HMAC | CKM_SHA256_HMAC | CKM_SHA384_HMAC | CKM_SHA512_HMAC
    ) {
        return Err(CKR_MECHANISM_INVALID);
    }
    let key = secret(key, CKR_KEY_TYPE_INCONSISTENT)?;
    if key.is_empty() {
        return Err(CKR_KEY_SIZE_RANGE);
    }
    if *params != Params::None {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    // new_from_slice takes keys of any length for HMAC; the error cannot happen.
    let mac = match mechanism {
        CKM_SHA_1_HMAC => <Hmac<Sha1> as Mac>::new_from_slice(key).map(HmacState::Sha1),
        CKM_SHA256_HMAC => <Hmac<Sha256> as Mac>::new_from_slice(key).map(HmacState::Sha256),
        CKM_SHA384_HMAC => <Hmac<Sha384> as Mac>::new_from_slice(key).map(HmacState::Sha384),
        _ => <Hmac<Sha512> as Mac>::new_from_slice(key).map(HmacState::Sha512),
    }
    .map_err(|_| CKR_KEY_SIZE_RANGE)?;
    Ok(Box::new(HmacOp { mac: Some(mac) }))
}

enum HmacState {
    Sha1(Hmac<Sha1>),
    Sha256(Hmac<Sha256>),
    Sha384(Hmac<Sha384>),
    Sha512(Hmac<Sha512>),
}

impl HmacState {
    fn update(&mut self, data: &[u8]) {
        match self {
            HmacState::Sha1(m) => m.update(data),
            HmacState::Sha256(m) => m.update(data),
            HmacState::Sha384(m) => m.update(data),
            HmacState::Sha512(m) => m.update(data),
        }
    }

    fn finalize(self) -> Vec<u8> {
        match self {
            HmacState::Sha1(m) => m.finalize().into_bytes().to_vec(),
            HmacState::Sha256(m) => m.finalize().into_bytes().to_vec(),
            HmacState::Sha384(m) => m.finalize().into_bytes().to_vec(),
            HmacState::Sha512(m) => m.finalize().into_bytes().to_vec(),
        }
    }

    fn len(&self) -> usize {
        match self {
            HmacState::Sha1(_) => 20,
            HmacState::Sha256(_) => 32,
            HmacState::Sha384(_) => 48,
            HmacState::Sha512(_) => 64,
        }
    }
}

/// An HMAC in progress; `None` once it has ended, so a second end is refused.
struct HmacOp {
    mac: Option<HmacState>,
}

impl SignOp for HmacOp {
    fn update(&mut self, data: &[u8]) -> CkResult<()> {
        self.mac
            .as_mut()
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)?
            .update(data);
        Ok(())
    }

    fn sign(&mut self) -> CkResult<Vec<u8>> {
        Ok(self
            .mac
            .take()
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)?
            .finalize())
    }

    fn verify(&mut self, signature: &[u8]) -> CkResult<()> {
        let mac = self.mac.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if signature.len() != mac.len() {
            return Err(CKR_SIGNATURE_LEN_RANGE);
        }
        if bool::from(mac.finalize().ct_eq(signature)) {
            Ok(())
        } else {
            Err(CKR_SIGNATURE_INVALID)
        }
    }

    fn max_signature_len(&self) -> usize {
        self.mac.as_ref().map_or(64, HmacState::len)
    }

    fn multipart(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------------------
// Key wrapping

/// The default IVs, which PKCS#11 lets the caller pass explicitly.
const KW_IV: [u8; 8] = aes_kw::IV;
const KWP_IV: [u8; 4] = aes_kw::KWP_IV_PREFIX;

/// Which wrap algorithm, after checking the parameters.
fn wrap_mode(mechanism: CK_MECHANISM_TYPE, params: &Params) -> CkResult<bool> {
    let (pad, default_iv): (bool, &[u8]) = match mechanism {
        CKM_AES_KEY_WRAP => (false, &KW_IV),
        CKM_AES_KEY_WRAP_PAD => (true, &KWP_IV),
        _ => return Err(CKR_MECHANISM_INVALID),
    };
    match params {
        Params::None => Ok(pad),
        // aes-kw only does the RFCs' IVs: an explicit one is fine only if it is that one.
        Params::Iv(iv) if iv.is_empty() || iv.as_slice() == default_iv => Ok(pad),
        _ => Err(CKR_MECHANISM_PARAM_INVALID),
    }
}

/// Wraps (`unwrap` false) or unwraps `input` into `out` with an AES-`A` KEK; returns the
/// length of the result.
fn key_wrap<A>(
    kek: &[u8],
    pad: bool,
    unwrap: bool,
    input: &[u8],
    out: &mut [u8],
) -> Option<Result<usize, aes_kw::Error>>
where
    A: KeyInit + BlockCipher + BlockSizeUser<BlockSize = U16> + BlockEncrypt + BlockDecrypt,
{
    let kek = Kek::<A>::try_from(kek).ok()?;
    Some(match (pad, unwrap) {
        (true, false) => kek.wrap_with_padding(input, out).map(|()| out.len()),
        (false, false) => kek.wrap(input, out).map(|()| out.len()),
        (true, true) => kek.unwrap_with_padding(input, out).map(<[u8]>::len),
        (false, true) => kek.unwrap(input, out).map(|()| out.len()),
    })
}

/// [`key_wrap`] for a KEK of any AES size; `None` when its size is wrong.
fn key_wrap_any(
    kek: &[u8],
    pad: bool,
    unwrap: bool,
    input: &[u8],
    out: &mut [u8],
) -> Option<Result<usize, aes_kw::Error>> {
    match kek.len() {
        16 => key_wrap::<Aes128>(kek, pad, unwrap, input, out),
        24 => key_wrap::<Aes192>(kek, pad, unwrap, input, out),
        32 => key_wrap::<Aes256>(kek, pad, unwrap, input, out),
        _ => None,
    }
}

/// RFC 3394 (CKM_AES_KEY_WRAP) or RFC 5649 (CKM_AES_KEY_WRAP_PAD, as SoftHSM and most tokens
/// implement it).
pub fn wrap(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    wrapping: KeyRef<'_>,
    key_value: &[u8],
) -> CkResult<Vec<u8>> {
    let pad = wrap_mode(mechanism, params)?;
    let kek = secret(wrapping, CKR_WRAPPING_KEY_TYPE_INCONSISTENT)?;
    let n = key_value.len();
    // RFC 3394 wraps two or more semiblocks; RFC 5649 one byte up to 2^32 - 1.
    let valid = if pad {
        (1..=aes_kw::KWP_MAX_LEN).contains(&n)
    } else {
        n >= 16 && n.is_multiple_of(8)
    };
    if !valid {
        return Err(CKR_KEY_SIZE_RANGE);
    }
    let mut out = vec![0u8; n.div_ceil(8) * 8 + 8];
    key_wrap_any(kek, pad, false, key_value, &mut out)
        .ok_or(CKR_WRAPPING_KEY_SIZE_RANGE)?
        .map_err(|_| CKR_FUNCTION_FAILED)?;
    Ok(out)
}

/// Reverses [`wrap`]; a failed integrity check is `CKR_WRAPPED_KEY_INVALID`, and the bytes it
/// decrypted are wiped.
pub fn unwrap(
    mechanism: CK_MECHANISM_TYPE,
    params: &Params,
    unwrapping: KeyRef<'_>,
    wrapped: &[u8],
) -> CkResult<Zeroizing<Vec<u8>>> {
    let pad = wrap_mode(mechanism, params)?;
    let kek = secret(unwrapping, CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)?;
    let min = if pad { 16 } else { 24 };
    if wrapped.len() < min || !wrapped.len().is_multiple_of(8) {
        return Err(CKR_WRAPPED_KEY_LEN_RANGE);
    }
    // Zeroizing, because a failed check leaves decrypted bytes in it.
    let mut out = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
    let res =
        key_wrap_any(kek, pad, true, wrapped, &mut out).ok_or(CKR_UNWRAPPING_KEY_SIZE_RANGE)?;
    let len = res.map_err(|e| match e {
        aes_kw::Error::IntegrityCheckFailed => CKR_WRAPPED_KEY_INVALID,
        _ => CKR_WRAPPED_KEY_LEN_RANGE,
    })?;
    out.truncate(len);
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Mechanism list

const MECHANISMS: &[CK_MECHANISM_TYPE] = &[
    CKM_AES_KEY_GEN,
    CKM_AES_ECB,
    CKM_AES_CBC,
    CKM_AES_CBC_PAD,
    CKM_AES_GCM,
    CKM_AES_KEY_WRAP,
    CKM_AES_KEY_WRAP_PAD,
    CKM_GENERIC_SECRET_KEY_GEN,
    CKM_SHA_1_HMAC,
    CKM_SHA256_HMAC,
    CKM_SHA384_HMAC,
    CKM_SHA512_HMAC,
    CKM_SHA_1,
    CKM_SHA256,
    CKM_SHA384,
    CKM_SHA512,
];

/// Key generation first, then ciphers, wrapping, MACs and digests.
pub fn mechanisms() -> &'static [CK_MECHANISM_TYPE] {
    MECHANISMS
}

/// Key sizes in bytes, as PKCS#11 2.40 gives them for AES and generic secrets.
pub fn mechanism_info(m: CK_MECHANISM_TYPE) -> Option<CK_MECHANISM_INFO> {
    let (min, max, flags) = match m {
        CKM_AES_KEY_GEN => (16, 32, CKF_GENERATE),
        CKM_AES_ECB | CKM_AES_CBC | CKM_AES_CBC_PAD | CKM_AES_GCM => {
            (16, 32, CKF_ENCRYPT | CKF_DECRYPT)
        }
        CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD => (16, 32, CKF_WRAP | CKF_UNWRAP),
        CKM_GENERIC_SECRET_KEY_GEN => (1, MAX_SECRET_LEN, CKF_GENERATE),
        CKM_SHA_1_HMAC | CKM_SHA256_HMAC | CKM_SHA384_HMAC | CKM_SHA512_HMAC => {
            (1, MAX_SECRET_LEN, CKF_SIGN | CKF_VERIFY)
        }
        CKM_SHA_1 | CKM_SHA256 | CKM_SHA384 | CKM_SHA512 => (0, 0, CKF_DIGEST),
        _ => return None,
    };
    Some(CK_MECHANISM_INFO {
        ulMinKeySize: min as CK_ULONG,
        ulMaxKeySize: max as CK_ULONG,
        flags,
    })
}

// ---------------------------------------------------------------------------------------------
// Digests

/// SHA-1 (legacy callers still ask for it) and SHA-2.
pub fn digest(mechanism: CK_MECHANISM_TYPE) -> CkResult<Box<dyn DigestOp>> {
    let d: Box<dyn sha2::digest::DynDigest + Send> = match mechanism {
        CKM_SHA_1 => Box::new(Sha1::new()),
        CKM_SHA256 => Box::new(Sha256::new()),
        CKM_SHA384 => Box::new(Sha384::new()),
        CKM_SHA512 => Box::new(Sha512::new()),
        _ => return Err(CKR_MECHANISM_INVALID),
    };
    Ok(Box::new(HashOp(d)))
}

struct HashOp(Box<dyn sha2::digest::DynDigest + Send>);

impl DigestOp for HashOp {
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    fn finish(&mut self) -> Vec<u8> {
        self.0.finalize_reset().to_vec()
    }

    fn len(&self) -> usize {
        self.0.output_size()
    }
}

// ---------------------------------------------------------------------------------------------
// Random
//
// Output is always the OS CSPRNG's bytes. Once C_SeedRandom has given data, a mask derived
// from a 32-byte pool is XORed in: pool = SHA-256("seed" || pool || len || data) on each seed,
// mask block i of call c = SHA-256("mask" || pool || c || i). The mask is independent of the
// OS bytes, so the output is at least as unpredictable as the OS's even if the caller chose the
// seed; the seed only adds entropy should the OS's be weak.

struct Pool {
    state: [u8; 32],
    seeded: bool,
    calls: u64,
}

static POOL: parking_lot::Mutex<Pool> = parking_lot::const_mutex(Pool {
    state: [0; 32],
    seeded: false,
    calls: 0,
});

/// A secret key's value: `len` (1 to [`MAX_SECRET_LEN`]) bytes from the OS CSPRNG.
pub fn generate_secret(len: usize) -> CkResult<Zeroizing<Vec<u8>>> {
    if len == 0 || len > MAX_SECRET_LEN {
        return Err(CKR_KEY_SIZE_RANGE);
    }
    let mut key = Zeroizing::new(vec![0u8; len]);
    random(&mut key)?;
    Ok(key)
}

/// Fills `buf` from the OS CSPRNG (mixed with what `seed` gave).
pub fn random(buf: &mut [u8]) -> CkResult<()> {
    getrandom::getrandom(buf).map_err(|_| CKR_FUNCTION_FAILED)?;
    let mut pool = POOL.lock();
    if !pool.seeded {
        return Ok(());
    }
    pool.calls = pool.calls.wrapping_add(1);
    for (i, chunk) in buf.chunks_mut(32).enumerate() {
        let mut mask = Sha256::new();
        mask.update(b"p11gate random mask");
        mask.update(pool.state);
        mask.update(pool.calls.to_be_bytes());
        mask.update((i as u64).to_be_bytes());
        let mut m = mask.finalize();
        xor_into(chunk, &m);
        m.zeroize();
    }
    Ok(())
}

/// Mixes caller data into the pool (C_SeedRandom); never replaces the OS's entropy.
pub fn seed(data: &[u8]) {
    let mut pool = POOL.lock();
    let mut h = Sha256::new();
    h.update(b"p11gate random seed");
    h.update(pool.state);
    h.update((data.len() as u64).to_be_bytes());
    h.update(data);
    pool.state.copy_from_slice(&h.finalize());
    pool.seeded = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Feeds `input` in pieces of the sizes in `chunks` (cycled), checking each output length
    /// against `max_update_len` and the final one against `max_final_len`.
    fn run_chunks(op: &mut dyn CipherOp, input: &[u8], chunks: &[usize]) -> CkResult<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = input;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            let expect = op.max_update_len(n);
            let got = op.update(&rest[..n])?;
            assert_eq!(got.len(), expect, "update output length vs max_update_len");
            out.extend_from_slice(&got);
            rest = &rest[n..];
        }
        let max_final = op.max_final_len();
        let last = op.finish()?;
        assert!(
            last.len() <= max_final,
            "finish output beyond max_final_len"
        );
        out.extend_from_slice(&last);
        Ok(out)
    }

    /// Single-part: one update and finish, within `max_oneshot_len`.
    fn oneshot(
        mech: CK_MECHANISM_TYPE,
        params: &Params,
        key: &[u8],
        encrypt: bool,
        input: &[u8],
    ) -> CkResult<Vec<u8>> {
        let mut op = cipher(mech, params, KeyRef::Secret(key), encrypt)?;
        let max = op.max_oneshot_len(input.len());
        let mut out = op.update(input)?;
        out.extend(op.finish()?);
        assert!(out.len() <= max, "output beyond max_oneshot_len");
        Ok(out)
    }

    fn multipart(
        mech: CK_MECHANISM_TYPE,
        params: &Params,
        key: &[u8],
        encrypt: bool,
        input: &[u8],
        chunks: &[usize],
    ) -> CkResult<Vec<u8>> {
        let mut op = cipher(mech, params, KeyRef::Secret(key), encrypt)?;
        assert!(op.multipart());
        run_chunks(op.as_mut(), input, chunks)
    }

    const CHUNKINGS: &[&[usize]] = &[&[1], &[3, 7, 16, 5], &[15, 17], &[0, 1, 31], &[16], &[33]];

    /// Checks single-part and every chunking give `expect`.
    fn check_all_ways(
        mech: CK_MECHANISM_TYPE,
        params: &Params,
        key: &[u8],
        encrypt: bool,
        input: &[u8],
        expect: &[u8],
    ) {
        assert_eq!(oneshot(mech, params, key, encrypt, input).unwrap(), expect);
        for chunks in CHUNKINGS {
            let got = multipart(mech, params, key, encrypt, input, chunks).unwrap();
            assert_eq!(got, expect, "chunks {chunks:?}");
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    // SP 800-38A, F.1 and F.2.
    const SP800_38A_PT: &str = "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
                                30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710";
    const KEY128: &str = "2b7e151628aed2a6abf7158809cf4f3c";
    const KEY192: &str = "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b";
    const KEY256: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
    const IV38A: &str = "000102030405060708090a0b0c0d0e0f";
    const CBC128_CT: &str = "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2
                             73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7";

    #[test]
    fn ecb_sp800_38a() {
        let pt = h(SP800_38A_PT);
        for (key, ct) in [
            (
                KEY128,
                "3ad77bb40d7a3660a89ecaf32466ef97 f5d3d58503b9699de785895a96fdbaaf
                 43b1cd7f598ece23881b00e3ed030688 7b0c785e27e8ad3f8223207104725dd4",
            ),
            (
                KEY192,
                "bd334f1d6e45f25ff712a214571fa5cc 974104846d0ad3ad7734ecb3ecee4eef
                 ef7afd2270e2e60adce0ba2face6444e 9a4b41ba738d6c72fb16691603c18e0e",
            ),
            (
                KEY256,
                "f3eed1bdb5d2a03c064b5a7e3db181f8 591ccb10d410ed26dc5ba74a31362870
                 b6ed21b99ca6f4f9f153e7b1beafed1d 23304b7a39f9f3ff067d8d8f9e24ecc7",
            ),
        ] {
            let (key, ct) = (h(key), h(ct));
            check_all_ways(CKM_AES_ECB, &Params::None, &key, true, &pt, &ct);
            check_all_ways(CKM_AES_ECB, &Params::None, &key, false, &ct, &pt);
        }
    }

    #[test]
    fn cbc_sp800_38a() {
        let pt = h(SP800_38A_PT);
        let iv = Params::Iv(h(IV38A));
        for (key, ct) in [
            (KEY128, CBC128_CT),
            (
                KEY192,
                "4f021db243bc633d7178183a9fa071e8 b4d9ada9ad7dedf4e5e738763f69145a
                 571b242012fb7ae07fa9baac3df102e0 08b0e27988598881d920a9e64f5615cd",
            ),
            (
                KEY256,
                "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
                 39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b",
            ),
        ] {
            let (key, ct) = (h(key), h(ct));
            check_all_ways(CKM_AES_CBC, &iv, &key, true, &pt, &ct);
            check_all_ways(CKM_AES_CBC, &iv, &key, false, &ct, &pt);
        }
    }

    /// CBC_PAD has no NIST vector: the first blocks are SP 800-38A's, the padding blocks were
    /// computed with OpenSSL.
    #[test]
    fn cbc_pad_vectors() {
        let key = h(KEY128);
        let iv = Params::Iv(h(IV38A));
        let pt = h(SP800_38A_PT);
        let mut ct = h(CBC128_CT);
        ct.extend(h("8cb82807230e1321d3fae00d18cc2012"));
        check_all_ways(CKM_AES_CBC_PAD, &iv, &key, true, &pt, &ct);
        check_all_ways(CKM_AES_CBC_PAD, &iv, &key, false, &ct, &pt);

        let ct20 = h("7649abac8119b246cee98e9b12e9197d 2e013f890472d82217b17f45f6e7f539");
        check_all_ways(CKM_AES_CBC_PAD, &iv, &key, true, &pt[..20], &ct20);
        check_all_ways(CKM_AES_CBC_PAD, &iv, &key, false, &ct20, &pt[..20]);

        // Empty input: one block of padding, which decrypts to nothing.
        let empty = oneshot(CKM_AES_CBC_PAD, &iv, &key, true, &[]).unwrap();
        assert_eq!(empty.len(), 16);
        let block = oneshot(CKM_AES_CBC, &iv, &key, true, &[16u8; 16]).unwrap();
        assert_eq!(empty, block);
        assert_eq!(
            oneshot(CKM_AES_CBC_PAD, &iv, &key, false, &empty).unwrap(),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn cbc_pad_decrypt_holds_back_last_block() {
        let key = h(KEY128);
        let iv = Params::Iv(h(IV38A));
        let pt = h(SP800_38A_PT);
        let mut ct = h(CBC128_CT);
        ct.extend(h("8cb82807230e1321d3fae00d18cc2012"));
        let mut op = cipher(CKM_AES_CBC_PAD, &iv, KeyRef::Secret(&key), false).unwrap();
        assert_eq!(op.max_update_len(16), 0);
        assert_eq!(op.update(&ct[..16]).unwrap(), Vec::<u8>::new());
        assert_eq!(op.max_update_len(16), 16);
        assert_eq!(op.update(&ct[16..32]).unwrap(), pt[..16].to_vec());
        assert_eq!(op.update(&ct[32..80]).unwrap(), pt[16..64].to_vec());
        assert_eq!(op.max_final_len(), 16);
        assert_eq!(op.finish().unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn block_modes_round_trip_all_lengths_and_chunkings() {
        for key_len in [16, 24, 32] {
            let key = pattern(key_len, 7);
            let iv = Params::Iv(pattern(16, 99));
            for len in 0..=80 {
                let pt = pattern(len, len as u8);
                let ct = oneshot(CKM_AES_CBC_PAD, &iv, &key, true, &pt).unwrap();
                assert_eq!(ct.len(), (len / 16 + 1) * 16);
                check_all_ways(CKM_AES_CBC_PAD, &iv, &key, true, &pt, &ct);
                check_all_ways(CKM_AES_CBC_PAD, &iv, &key, false, &ct, &pt);
                if len % 16 == 0 {
                    for (mech, p) in [(CKM_AES_CBC, &iv), (CKM_AES_ECB, &Params::None)] {
                        let ct = oneshot(mech, p, &key, true, &pt).unwrap();
                        assert_eq!(ct.len(), len);
                        check_all_ways(mech, p, &key, true, &pt, &ct);
                        check_all_ways(mech, p, &key, false, &ct, &pt);
                    }
                }
            }
        }
    }

    #[test]
    fn block_mode_length_queries() {
        let key = h(KEY128);
        let iv = Params::Iv(h(IV38A));
        let enc = cipher(CKM_AES_CBC_PAD, &iv, KeyRef::Secret(&key), true).unwrap();
        assert_eq!(enc.max_oneshot_len(0), 16);
        assert_eq!(enc.max_oneshot_len(15), 16);
        assert_eq!(enc.max_oneshot_len(16), 32);
        assert_eq!(enc.max_update_len(15), 0);
        assert_eq!(enc.max_update_len(33), 32);
        let dec = cipher(CKM_AES_CBC_PAD, &iv, KeyRef::Secret(&key), false).unwrap();
        assert_eq!(dec.max_oneshot_len(32), 32);
        assert_eq!(dec.max_update_len(32), 16);
        let ecb = cipher(CKM_AES_ECB, &Params::None, KeyRef::Secret(&key), true).unwrap();
        assert_eq!(ecb.max_oneshot_len(48), 48);
        assert_eq!(ecb.max_final_len(), 0);
        assert_eq!(ecb.max_update_len(usize::MAX), usize::MAX - usize::MAX % 16);
    }

    #[test]
    fn block_mode_length_errors() {
        let key = h(KEY128);
        let iv = Params::Iv(h(IV38A));
        for (mech, p) in [(CKM_AES_ECB, &Params::None), (CKM_AES_CBC, &iv)] {
            for len in [1, 15, 17, 31] {
                let data = pattern(len, 1);
                assert_eq!(oneshot(mech, p, &key, true, &data), Err(CKR_DATA_LEN_RANGE));
                assert_eq!(
                    oneshot(mech, p, &key, false, &data),
                    Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
                );
            }
        }
        for len in [0, 1, 15, 17, 31] {
            let data = pattern(len, 1);
            assert_eq!(
                oneshot(CKM_AES_CBC_PAD, &iv, &key, false, &data),
                Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
            );
        }
    }

    #[test]
    fn cbc_pad_bad_padding() {
        let key = h(KEY128);
        let iv = Params::Iv(h(IV38A));
        let mut bad_last_blocks = vec![
            [0u8; 16],  // pad byte 0
            [17u8; 16], // pad byte over the block size
            [0xffu8; 16],
        ];
        let mut b = [5u8; 16];
        b[15] = 2;
        b[14] = 1; // says 2, the byte before is not 2
        bad_last_blocks.push(b);
        let mut b = [16u8; 16];
        b[0] = 15; // says 16, first byte differs
        bad_last_blocks.push(b);
        for last in bad_last_blocks {
            let mut pt = pattern(16, 3);
            pt.extend_from_slice(&last);
            let ct = oneshot(CKM_AES_CBC, &iv, &key, true, &pt).unwrap();
            assert_eq!(
                oneshot(CKM_AES_CBC_PAD, &iv, &key, false, &ct),
                Err(CKR_ENCRYPTED_DATA_INVALID),
                "{last:?}"
            );
        }
        // The accepted extremes: 1 byte and 16 bytes of padding.
        let mut b = [9u8; 16];
        b[15] = 1;
        let ct = oneshot(CKM_AES_CBC, &iv, &key, true, &b).unwrap();
        assert_eq!(
            oneshot(CKM_AES_CBC_PAD, &iv, &key, false, &ct).unwrap(),
            vec![9u8; 15]
        );
    }

    #[test]
    fn cipher_setup_errors() {
        let k16 = [0u8; 16];
        let iv = Params::Iv(vec![0; 16]);
        let gcm = Params::Gcm {
            iv: vec![0; 12],
            aad: vec![],
            tag_bits: 128,
        };
        let key = KeyRef::Secret(&k16);
        for enc in [true, false] {
            let e = |m, p: &Params, k: KeyRef<'_>| cipher(m, p, k, enc).err();
            for m in [CKM_AES_CTR, CKM_DES3_CBC, CKM_AES_KEY_WRAP, CKM_SHA256_HMAC] {
                assert_eq!(e(m, &Params::None, key), Some(CKR_MECHANISM_INVALID));
            }
            for len in [0, 1, 15, 17, 23, 25, 31, 33, 64] {
                let k = vec![0u8; len];
                for (m, p) in [
                    (CKM_AES_ECB, &Params::None),
                    (CKM_AES_CBC, &iv),
                    (CKM_AES_CBC_PAD, &iv),
                    (CKM_AES_GCM, &gcm),
                ] {
                    assert_eq!(e(m, p, KeyRef::Secret(&k)), Some(CKR_KEY_SIZE_RANGE));
                }
            }
            let rsa = KeyRef::RsaPublic { n: &k16, e: &k16 };
            let ec = KeyRef::EcPrivate {
                params: &k16,
                value: &k16,
            };
            for k in [rsa, ec] {
                assert_eq!(e(CKM_AES_GCM, &gcm, k), Some(CKR_KEY_TYPE_INCONSISTENT));
                assert_eq!(
                    e(CKM_AES_ECB, &Params::None, k),
                    Some(CKR_KEY_TYPE_INCONSISTENT)
                );
            }
            let bad = CKR_MECHANISM_PARAM_INVALID;
            assert_eq!(e(CKM_AES_ECB, &iv, key), Some(bad));
            assert_eq!(e(CKM_AES_ECB, &gcm, key), Some(bad));
            assert_eq!(e(CKM_AES_CBC, &Params::None, key), Some(bad));
            assert_eq!(e(CKM_AES_CBC_PAD, &gcm, key), Some(bad));
            for len in [0, 8, 12, 15, 17, 32] {
                let p = Params::Iv(vec![0; len]);
                assert_eq!(e(CKM_AES_CBC, &p, key), Some(bad));
                assert_eq!(e(CKM_AES_CBC_PAD, &p, key), Some(bad));
            }
            assert_eq!(e(CKM_AES_GCM, &Params::None, key), Some(bad));
            assert_eq!(e(CKM_AES_GCM, &iv, key), Some(bad));
            let no_iv = Params::Gcm {
                iv: vec![],
                aad: vec![],
                tag_bits: 128,
            };
            assert_eq!(e(CKM_AES_GCM, &no_iv, key), Some(bad));
            for tag_bits in [0, 8, 16, 40, 48, 56, 72, 80, 88, 95, 97, 127, 129, 136, 256] {
                let p = Params::Gcm {
                    iv: vec![0; 12],
                    aad: vec![],
                    tag_bits,
                };
                assert_eq!(e(CKM_AES_GCM, &p, key), Some(bad), "tag_bits {tag_bits}");
            }
            for tag_bits in GCM_TAG_BITS {
                let p = Params::Gcm {
                    iv: vec![0; 1],
                    aad: vec![],
                    tag_bits,
                };
                assert!(cipher(CKM_AES_GCM, &p, key, enc).is_ok());
            }
        }
    }

    #[test]
    fn operations_end_at_finish() {
        let k = [1u8; 16];
        let gcm = Params::Gcm {
            iv: vec![0; 12],
            aad: vec![],
            tag_bits: 128,
        };
        for (m, p) in [
            (CKM_AES_ECB, Params::None),
            (CKM_AES_CBC_PAD, Params::Iv(vec![0; 16])),
            (CKM_AES_GCM, gcm),
        ] {
            let mut op = cipher(m, &p, KeyRef::Secret(&k), true).unwrap();
            op.finish().unwrap();
            assert_eq!(op.update(&[0; 16]), Err(CKR_OPERATION_NOT_INITIALIZED));
            assert_eq!(op.finish(), Err(CKR_OPERATION_NOT_INITIALIZED));
        }
    }

    struct GcmCase {
        key: &'static str,
        iv: &'static str,
        pt: &'static str,
        aad: &'static str,
        ct: &'static str,
        tag: &'static str,
    }

    const GCM_P3: &str = "d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72
                          1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b391aafd255";
    const GCM_P4: &str = "d9313225f88406e5a55909c5aff5269a 86a7a9531534f7da2e4c303d8a318a72
                          1c3c0c95956809532fcf0e2449a6b525 b16aedf5aa0de657ba637b39";
    const GCM_A: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
    const GCM_K: &str = "feffe9928665731c6d6a8f9467308308";

    /// The GCM specification's test cases 1-6 and 16 (McGrew and Viega), which NIST's GCM
    /// validation uses too: 96-bit, 64-bit and 480-bit IVs, AES-128 and AES-256.
    const GCM_CASES: &[GcmCase] = &[
        GcmCase {
            key: "00000000000000000000000000000000",
            iv: "000000000000000000000000",
            pt: "",
            aad: "",
            ct: "",
            tag: "58e2fccefa7e3061367f1d57a4e7455a",
        },
        GcmCase {
            key: "00000000000000000000000000000000",
            iv: "000000000000000000000000",
            pt: "00000000000000000000000000000000",
            aad: "",
            ct: "0388dace60b6a392f328c2b971b2fe78",
            tag: "ab6e47d42cec13bdf53a67b21257bddf",
        },
        GcmCase {
            key: GCM_K,
            iv: "cafebabefacedbaddecaf888",
            pt: GCM_P3,
            aad: "",
            ct: "42831ec2217774244b7221b784d0d49c e3aa212f2c02a4e035c17e2329aca12e
                 21d514b25466931c7d8f6a5aac84aa05 1ba30b396a0aac973d58e091473f5985",
            tag: "4d5c2af327cd64a62cf35abd2ba6fab4",
        },
        GcmCase {
            key: GCM_K,
            iv: "cafebabefacedbaddecaf888",
            pt: GCM_P4,
            aad: GCM_A,
            ct: "42831ec2217774244b7221b784d0d49c e3aa212f2c02a4e035c17e2329aca12e
                 21d514b25466931c7d8f6a5aac84aa05 1ba30b396a0aac973d58e091",
            tag: "5bc94fbc3221a5db94fae95ae7121a47",
        },
        GcmCase {
            key: GCM_K,
            iv: "cafebabefacedbad",
            pt: GCM_P4,
            aad: GCM_A,
            ct: "61353b4c2806934a777ff51fa22a4755 699b2a714fcdc6f83766e5f97b6c7423
                 73806900e49f24b22b097544d4896b42 4989b5e1ebac0f07c23f4598",
            tag: "3612d2e79e3b0785561be14aaca2fccb",
        },
        GcmCase {
            key: GCM_K,
            iv: "9313225df88406e555909c5aff5269aa 6a7a9538534f7da1e4c303d2a318a728
                 c3c0c95156809539fcf0e2429a6b5254 16aedbf5a0de6a57a637b39b",
            pt: GCM_P4,
            aad: GCM_A,
            ct: "8ce24998625615b603a033aca13fb894 be9112a5c3a211a8ba262a3cca7e2ca7
                 01e4a9a4fba43c90ccdcb281d48c7c6f d62875d2aca417034c34aee5",
            tag: "619cc5aefffe0bfa462af43c1699d050",
        },
        GcmCase {
            key: "feffe9928665731c6d6a8f9467308308 feffe9928665731c6d6a8f9467308308",
            iv: "cafebabefacedbaddecaf888",
            pt: GCM_P4,
            aad: GCM_A,
            ct: "522dc1f099567d07f47f37a32a84427d 643a8cdcbfe5c0c97598a2bd2555d1aa
                 8cb08e48590dbb3da7b08b1056828838 c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        },
    ];

    fn gcm_params(iv: &[u8], aad: &[u8], tag_bits: usize) -> Params {
        Params::Gcm {
            iv: iv.to_vec(),
            aad: aad.to_vec(),
            tag_bits,
        }
    }

    #[test]
    fn gcm_spec_vectors_all_tag_lengths() {
        for c in GCM_CASES {
            let (key, pt) = (h(c.key), h(c.pt));
            let tag = h(c.tag);
            for tag_bits in GCM_TAG_BITS {
                let p = gcm_params(&h(c.iv), &h(c.aad), tag_bits);
                let mut ct = h(c.ct);
                ct.extend_from_slice(&tag[..tag_bits / 8]);
                check_all_ways(CKM_AES_GCM, &p, &key, true, &pt, &ct);
                check_all_ways(CKM_AES_GCM, &p, &key, false, &ct, &pt);
            }
        }
    }

    #[test]
    fn gcm_decrypt_outputs_only_at_finish() {
        let c = &GCM_CASES[3];
        let p = gcm_params(&h(c.iv), &h(c.aad), 128);
        let key = h(c.key);
        let mut ct = h(c.ct);
        ct.extend(h(c.tag));
        let mut op = cipher(CKM_AES_GCM, &p, KeyRef::Secret(&key), false).unwrap();
        assert_eq!(op.max_oneshot_len(ct.len()), 60);
        for piece in ct.chunks(7) {
            assert_eq!(op.max_update_len(piece.len()), 0);
            assert_eq!(op.update(piece).unwrap(), Vec::<u8>::new());
        }
        assert_eq!(op.max_final_len(), 60);
        assert_eq!(op.finish().unwrap(), h(GCM_P4));

        let enc = cipher(CKM_AES_GCM, &p, KeyRef::Secret(&key), true).unwrap();
        assert_eq!(enc.max_update_len(60), 60);
        assert_eq!(enc.max_final_len(), 16);
        assert_eq!(enc.max_oneshot_len(60), 76);
        let p96 = gcm_params(&h(c.iv), &[], 96);
        let enc = cipher(CKM_AES_GCM, &p96, KeyRef::Secret(&key), true).unwrap();
        assert_eq!(enc.max_final_len(), 12);
        assert_eq!(enc.max_oneshot_len(5), 17);
    }

    #[test]
    fn gcm_rejects_tampering() {
        let c = &GCM_CASES[3];
        let key = h(c.key);
        let p = gcm_params(&h(c.iv), &h(c.aad), 128);
        let mut good = h(c.ct);
        good.extend(h(c.tag));
        for i in [0, 30, 59, 60, 75] {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                oneshot(CKM_AES_GCM, &p, &key, false, &bad),
                Err(CKR_ENCRYPTED_DATA_INVALID),
                "byte {i}"
            );
        }
        // Other AAD, other IV, truncated ciphertext.
        let other_aad = gcm_params(&h(c.iv), b"x", 128);
        let other_iv = gcm_params(&h("cafebabefacedbaddecaf889"), &h(c.aad), 128);
        for q in [other_aad, other_iv] {
            assert_eq!(
                oneshot(CKM_AES_GCM, &q, &key, false, &good),
                Err(CKR_ENCRYPTED_DATA_INVALID)
            );
        }
        assert_eq!(
            oneshot(CKM_AES_GCM, &p, &key, false, &good[1..]),
            Err(CKR_ENCRYPTED_DATA_INVALID)
        );
        // A shorter tag than the parameters say: the tag is then taken from the ciphertext.
        let p96 = gcm_params(&h(c.iv), &h(c.aad), 96);
        assert_eq!(
            oneshot(CKM_AES_GCM, &p96, &key, false, &good),
            Err(CKR_ENCRYPTED_DATA_INVALID)
        );
        // Shorter than the tag.
        for len in [0, 1, 15] {
            assert_eq!(
                oneshot(CKM_AES_GCM, &p, &key, false, &good[..len]),
                Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
            );
        }
        assert_eq!(
            oneshot(CKM_AES_GCM, &p96, &key, false, &good[..11]),
            Err(CKR_ENCRYPTED_DATA_LEN_RANGE)
        );
    }

    /// Cross-check against RustCrypto's aes-gcm for the lengths around block boundaries.
    #[test]
    fn gcm_matches_aes_gcm_crate() {
        use aes_gcm::aead::{Aead, KeyInit as _, Payload};
        for key_len in [16, 32] {
            let key = pattern(key_len, 42);
            let nonce = pattern(12, 5);
            for len in 0..=70 {
                let pt = pattern(len, 200);
                let aad = pattern(len % 19, 17);
                let reference = if key_len == 16 {
                    aes_gcm::Aes128Gcm::new_from_slice(&key)
                        .unwrap()
                        .encrypt(
                            (&nonce[..]).into(),
                            Payload {
                                msg: &pt,
                                aad: &aad,
                            },
                        )
                        .unwrap()
                } else {
                    aes_gcm::Aes256Gcm::new_from_slice(&key)
                        .unwrap()
                        .encrypt(
                            (&nonce[..]).into(),
                            Payload {
                                msg: &pt,
                                aad: &aad,
                            },
                        )
                        .unwrap()
                };
                let p = gcm_params(&nonce, &aad, 128);
                check_all_ways(CKM_AES_GCM, &p, &key, true, &pt, &reference);
                check_all_ways(CKM_AES_GCM, &p, &key, false, &reference, &pt);
            }
        }
    }

    #[test]
    fn gcm_data_limit() {
        let k = [0u8; 16];
        let mut op = GcmOp::new(Aes::new(&k, 0).unwrap(), &[0; 12], &[], 128, true).unwrap();
        op.data_len = GCM_MAX_DATA - 1;
        assert_eq!(op.update(&[0; 2]), Err(CKR_DATA_LEN_RANGE));
        assert_eq!(op.update(&[0; 1]), Err(CKR_OPERATION_NOT_INITIALIZED));
        let mut op = GcmOp::new(Aes::new(&k, 0).unwrap(), &[0; 12], &[], 128, true).unwrap();
        op.data_len = GCM_MAX_DATA - 1;
        assert_eq!(op.update(&[0; 1]).map(|v| v.len()), Ok(1));
    }

    // RFC 4231 test cases 1, 2 and 6; RFC 2202 for SHA-1.
    #[test]
    fn hmac_vectors_and_multipart() {
        let cases: &[(CK_MECHANISM_TYPE, Vec<u8>, &[u8], &str)] = &[
            (
                CKM_SHA_1_HMAC,
                vec![0x0b; 20],
                b"Hi There",
                "b617318655057264e28bc0b6fb378c8ef146be00",
            ),
            (
                CKM_SHA_1_HMAC,
                b"Jefe".to_vec(),
                b"what do ya want for nothing?",
                "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
            ),
            (
                CKM_SHA256_HMAC,
                vec![0x0b; 20],
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                CKM_SHA384_HMAC,
                vec![0x0b; 20],
                b"Hi There",
                "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c
                 faea9ea9076ede7f4af152e8b2fa9cb6",
            ),
            (
                CKM_SHA512_HMAC,
                vec![0x0b; 20],
                b"Hi There",
                "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde
                 daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
            ),
            (
                CKM_SHA256_HMAC,
                b"Jefe".to_vec(),
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                CKM_SHA256_HMAC,
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                CKM_SHA512_HMAC,
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f352
                 6b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
            ),
        ];
        for (mech, key, data, mac) in cases {
            let mac = h(mac);
            let k = KeyRef::Secret(key);
            let mut s = signer(*mech, &Params::None, k, true).unwrap();
            assert!(s.multipart());
            assert_eq!(s.max_signature_len(), mac.len());
            s.update(data).unwrap();
            assert_eq!(s.sign().unwrap(), mac);
            for chunk in [1, 3, 5, 7] {
                let mut s = signer(*mech, &Params::None, k, true).unwrap();
                s.update(&[]).unwrap();
                for piece in data.chunks(chunk) {
                    s.update(piece).unwrap();
                }
                assert_eq!(s.sign().unwrap(), mac);
                let mut v = signer(*mech, &Params::None, k, false).unwrap();
                for piece in data.chunks(chunk) {
                    v.update(piece).unwrap();
                }
                assert_eq!(v.verify(&mac), Ok(()));
            }
        }
    }

    #[test]
    fn hmac_errors() {
        let key = [0x0bu8; 20];
        let k = KeyRef::Secret(&key);
        let mac = h("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
        let verify = |sig: &[u8]| {
            let mut v = signer(CKM_SHA256_HMAC, &Params::None, k, false).unwrap();
            v.update(b"Hi There").unwrap();
            v.verify(sig)
        };
        assert_eq!(verify(&mac), Ok(()));
        assert_eq!(verify(&mac[..31]), Err(CKR_SIGNATURE_LEN_RANGE));
        assert_eq!(
            verify(&[mac.as_slice(), &[0]].concat()),
            Err(CKR_SIGNATURE_LEN_RANGE)
        );
        assert_eq!(verify(&[]), Err(CKR_SIGNATURE_LEN_RANGE));
        for i in [0, 17, 31] {
            let mut bad = mac.clone();
            bad[i] ^= 0x80;
            assert_eq!(verify(&bad), Err(CKR_SIGNATURE_INVALID));
        }
        let e = |m, p: &Params, k: KeyRef<'_>| signer(m, p, k, true).err();
        assert_eq!(
            e(CKM_SHA256_HMAC, &Params::None, KeyRef::Secret(&[])),
            Some(CKR_KEY_SIZE_RANGE)
        );
        let rsa = KeyRef::RsaPublic { n: &key, e: &key };
        assert_eq!(
            e(CKM_SHA256_HMAC, &Params::None, rsa),
            Some(CKR_KEY_TYPE_INCONSISTENT)
        );
        assert_eq!(
            e(CKM_SHA384_HMAC, &Params::Iv(vec![0; 16]), k),
            Some(CKR_MECHANISM_PARAM_INVALID)
        );
        for m in [
            CKM_SHA224_HMAC,
            CKM_SHA256_HMAC_GENERAL,
            CKM_AES_CMAC,
            CKM_SHA256,
        ] {
            assert_eq!(e(m, &Params::None, k), Some(CKR_MECHANISM_INVALID));
        }
        // One byte of key is enough.
        assert!(signer(CKM_SHA_1_HMAC, &Params::None, KeyRef::Secret(&[1]), true).is_ok());
        // Ended operations refuse more.
        let mut s = signer(CKM_SHA512_HMAC, &Params::None, k, true).unwrap();
        assert_eq!(s.sign().map(|v| v.len()), Ok(64));
        assert_eq!(s.update(b"x"), Err(CKR_OPERATION_NOT_INITIALIZED));
        assert_eq!(s.sign(), Err(CKR_OPERATION_NOT_INITIALIZED));
        assert_eq!(s.verify(&[0; 64]), Err(CKR_OPERATION_NOT_INITIALIZED));
    }

    // FIPS 180 examples ("abc", the two-block message, one million 'a').
    #[test]
    fn digest_vectors() {
        let two_block = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        let cases: &[(CK_MECHANISM_TYPE, &[u8], &str)] = &[
            (
                CKM_SHA_1,
                b"abc",
                "a9993e364706816aba3e25717850c26c9cd0d89d",
            ),
            (
                CKM_SHA_1,
                two_block,
                "84983e441c3bd26ebaae4aa1f95129e5e54670f1",
            ),
            (
                CKM_SHA256,
                b"abc",
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                CKM_SHA256,
                b"",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            (
                CKM_SHA256,
                two_block,
                "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
            ),
            (
                CKM_SHA384,
                b"abc",
                "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed
                 8086072ba1e7cc2358baeca134c825a7",
            ),
            (
                CKM_SHA512,
                b"abc",
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a
                 2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
        ];
        for (mech, data, expect) in cases {
            let expect = h(expect);
            let mut d = digest(*mech).unwrap();
            assert_eq!(d.len(), expect.len());
            d.update(data);
            assert_eq!(d.finish(), expect);
            let mut d = digest(*mech).unwrap();
            for piece in data.chunks(3) {
                d.update(piece);
            }
            assert_eq!(d.finish(), expect);
        }
        let mut d = digest(CKM_SHA_1).unwrap();
        let a = vec![b'a'; 1_000_000];
        for piece in a.chunks(777) {
            d.update(piece);
        }
        assert_eq!(d.finish(), h("34aa973cd4c4daa4f61eeb2bdbad27316534016f"));
        for m in [CKM_MD5, CKM_SHA224, CKM_SHA3_256, CKM_SHA256_HMAC] {
            assert_eq!(digest(m).err(), Some(CKR_MECHANISM_INVALID));
        }
    }

    #[test]
    fn key_wrap_vectors() {
        // RFC 5649 section 6.
        let kek = h("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8");
        for (key, wrapped) in [
            (
                "c37b7e6492584340bed12207808941155068f738",
                "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
            ),
            ("466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"),
        ] {
            let (key, wrapped) = (h(key), h(wrapped));
            let k = KeyRef::Secret(&kek);
            assert_eq!(
                wrap(CKM_AES_KEY_WRAP_PAD, &Params::None, k, &key).unwrap(),
                wrapped
            );
            assert_eq!(
                *unwrap(CKM_AES_KEY_WRAP_PAD, &Params::None, k, &wrapped).unwrap(),
                key
            );
        }
        // RFC 3394 sections 4.1 and 4.6.
        for (kek, key, wrapped) in [
            (
                "000102030405060708090a0b0c0d0e0f",
                "00112233445566778899aabbccddeeff",
                "1fa68b0a8112b447aef34bd8fb5a7b829d3e862371d2cfe5",
            ),
            (
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f",
                "28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326
                 cbc7f0e71a99f43bfb988b9b7a02dd21",
            ),
        ] {
            let (kek, key, wrapped) = (h(kek), h(key), h(wrapped));
            let k = KeyRef::Secret(&kek);
            assert_eq!(
                wrap(CKM_AES_KEY_WRAP, &Params::None, k, &key).unwrap(),
                wrapped
            );
            assert_eq!(
                *unwrap(CKM_AES_KEY_WRAP, &Params::None, k, &wrapped).unwrap(),
                key
            );
        }
    }

    #[test]
    fn key_wrap_round_trips() {
        for kek_len in [16, 24, 32] {
            let kek = pattern(kek_len, 11);
            let k = KeyRef::Secret(&kek);
            for len in 1..=70 {
                let key = pattern(len, 3);
                let w = wrap(CKM_AES_KEY_WRAP_PAD, &Params::None, k, &key).unwrap();
                assert_eq!(w.len(), len.div_ceil(8) * 8 + 8);
                assert_eq!(
                    *unwrap(CKM_AES_KEY_WRAP_PAD, &Params::None, k, &w).unwrap(),
                    key
                );
                if len >= 16 && len % 8 == 0 {
                    let w = wrap(CKM_AES_KEY_WRAP, &Params::None, k, &key).unwrap();
                    assert_eq!(w.len(), len + 8);
                    assert_eq!(
                        *unwrap(CKM_AES_KEY_WRAP, &Params::None, k, &w).unwrap(),
                        key
                    );
                }
            }
        }
    }

    #[test]
    fn key_wrap_errors() {
        let kek = [7u8; 32];
        let k = KeyRef::Secret(&kek);
        let key = [9u8; 32];
        let kwp = wrap(CKM_AES_KEY_WRAP_PAD, &Params::None, k, &key).unwrap();
        let kw = wrap(CKM_AES_KEY_WRAP, &Params::None, k, &key).unwrap();
        let uw = |m, w: &[u8]| unwrap(m, &Params::None, k, w).map(|v| v.to_vec());

        for (m, w) in [(CKM_AES_KEY_WRAP_PAD, &kwp), (CKM_AES_KEY_WRAP, &kw)] {
            for i in [0, 7, 8, w.len() - 1] {
                let mut bad = w.clone();
                bad[i] ^= 1;
                assert_eq!(uw(m, &bad), Err(CKR_WRAPPED_KEY_INVALID));
            }
            let other = [8u8; 32];
            assert_eq!(
                unwrap(m, &Params::None, KeyRef::Secret(&other), w).err(),
                Some(CKR_WRAPPED_KEY_INVALID)
            );
            for len in [0, 8, 39, 41] {
                assert_eq!(
                    uw(m, &vec![0; len]),
                    Err(CKR_WRAPPED_KEY_LEN_RANGE),
                    "len {len}"
                );
            }
        }
        // One algorithm's output is not the other's.
        assert_eq!(uw(CKM_AES_KEY_WRAP, &kwp), Err(CKR_WRAPPED_KEY_INVALID));
        assert_eq!(uw(CKM_AES_KEY_WRAP_PAD, &kw), Err(CKR_WRAPPED_KEY_INVALID));
        assert_eq!(
            uw(CKM_AES_KEY_WRAP, &[0; 16]),
            Err(CKR_WRAPPED_KEY_LEN_RANGE)
        );
        assert_eq!(
            uw(CKM_AES_KEY_WRAP_PAD, &[0; 16]),
            Err(CKR_WRAPPED_KEY_INVALID)
        );

        // Keys to wrap of the wrong length.
        assert_eq!(
            wrap(CKM_AES_KEY_WRAP_PAD, &Params::None, k, &[]),
            Err(CKR_KEY_SIZE_RANGE)
        );
        for len in [0, 8, 15, 17, 20] {
            assert_eq!(
                wrap(CKM_AES_KEY_WRAP, &Params::None, k, &vec![0; len]),
                Err(CKR_KEY_SIZE_RANGE)
            );
        }
        // Wrapping keys of the wrong size or type.
        for len in [0, 8, 15, 17, 33] {
            let bad = vec![0u8; len];
            let b = KeyRef::Secret(&bad);
            for m in [CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD] {
                assert_eq!(
                    wrap(m, &Params::None, b, &key),
                    Err(CKR_WRAPPING_KEY_SIZE_RANGE)
                );
                assert_eq!(
                    unwrap(m, &Params::None, b, &kw).err(),
                    Some(CKR_UNWRAPPING_KEY_SIZE_RANGE)
                );
            }
        }
        let rsa = KeyRef::RsaPublic { n: &kek, e: &kek };
        assert_eq!(
            wrap(CKM_AES_KEY_WRAP_PAD, &Params::None, rsa, &key),
            Err(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
        );
        assert_eq!(
            unwrap(CKM_AES_KEY_WRAP_PAD, &Params::None, rsa, &kwp).err(),
            Some(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
        );
        // Parameters: absent, empty or the RFCs' own IV are accepted; anything else is not.
        let kwp_iv = Params::Iv(h("a65959a6"));
        let kw_iv = Params::Iv(h("a6a6a6a6a6a6a6a6"));
        assert_eq!(
            wrap(CKM_AES_KEY_WRAP_PAD, &kwp_iv, k, &key),
            Ok(kwp.clone())
        );
        assert_eq!(
            wrap(CKM_AES_KEY_WRAP_PAD, &Params::Iv(vec![]), k, &key),
            Ok(kwp.clone())
        );
        assert_eq!(wrap(CKM_AES_KEY_WRAP, &kw_iv, k, &key), Ok(kw.clone()));
        let bad = CKR_MECHANISM_PARAM_INVALID;
        assert_eq!(wrap(CKM_AES_KEY_WRAP_PAD, &kw_iv, k, &key), Err(bad));
        assert_eq!(wrap(CKM_AES_KEY_WRAP, &kwp_iv, k, &key), Err(bad));
        assert_eq!(
            wrap(CKM_AES_KEY_WRAP, &Params::Iv(vec![1; 8]), k, &key),
            Err(bad)
        );
        let gcm = gcm_params(&[0; 12], &[], 128);
        assert_eq!(unwrap(CKM_AES_KEY_WRAP_PAD, &gcm, k, &kwp).err(), Some(bad));
        // Not a wrap mechanism here.
        for m in [
            CKM_AES_ECB,
            CKM_AES_CBC_PAD,
            CKM_AES_GCM,
            CKM_AES_KEY_WRAP_KWP,
        ] {
            assert_eq!(wrap(m, &Params::None, k, &key), Err(CKR_MECHANISM_INVALID));
            assert_eq!(
                unwrap(m, &Params::None, k, &kw).err(),
                Some(CKR_MECHANISM_INVALID)
            );
        }
    }

    #[test]
    fn mechanism_list_and_info() {
        let list = mechanisms();
        assert_eq!(list.len(), 16);
        for (i, m) in list.iter().enumerate() {
            assert!(!list[..i].contains(m), "duplicate {m:#x}");
            let info = mechanism_info(*m).expect("listed mechanism has info");
            assert_eq!(info.flags & CKF_HW, 0);
        }
        let info = |m| {
            let i = mechanism_info(m).unwrap();
            (i.ulMinKeySize, i.ulMaxKeySize, i.flags)
        };
        assert_eq!(info(CKM_AES_KEY_GEN), (16, 32, CKF_GENERATE));
        assert_eq!(info(CKM_GENERIC_SECRET_KEY_GEN), (1, 512, CKF_GENERATE));
        for m in [CKM_AES_ECB, CKM_AES_CBC, CKM_AES_CBC_PAD, CKM_AES_GCM] {
            assert_eq!(info(m), (16, 32, CKF_ENCRYPT | CKF_DECRYPT));
        }
        for m in [CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP_PAD] {
            assert_eq!(info(m), (16, 32, CKF_WRAP | CKF_UNWRAP));
        }
        for m in [
            CKM_SHA_1_HMAC,
            CKM_SHA256_HMAC,
            CKM_SHA384_HMAC,
            CKM_SHA512_HMAC,
        ] {
            assert_eq!(info(m), (1, 512, CKF_SIGN | CKF_VERIFY));
        }
        for m in [CKM_SHA_1, CKM_SHA256, CKM_SHA384, CKM_SHA512] {
            assert_eq!(info(m), (0, 0, CKF_DIGEST));
        }
        for m in [CKM_RSA_PKCS, CKM_AES_CTR, CKM_AES_KEY_WRAP_KWP, CKM_MD5] {
            assert!(mechanism_info(m).is_none());
        }
    }

    #[test]
    fn random_and_secrets() {
        let a = generate_secret(32).unwrap();
        let b = generate_secret(32).unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(*a, *b);
        assert_eq!(generate_secret(1).unwrap().len(), 1);
        assert_eq!(generate_secret(512).unwrap().len(), 512);
        assert_eq!(generate_secret(0).err(), Some(CKR_KEY_SIZE_RANGE));
        assert_eq!(generate_secret(513).err(), Some(CKR_KEY_SIZE_RANGE));

        let mut empty = [];
        random(&mut empty).unwrap();
        let mut x = [0u8; 100];
        let mut y = [0u8; 100];
        random(&mut x).unwrap();
        seed(b"caller data");
        seed(&[]);
        random(&mut y).unwrap();
        assert_ne!(x, y);
        assert_ne!(x, [0; 100]);
        assert_ne!(y, [0; 100]);
        // Seeding the same data twice does not make the output repeat.
        seed(b"same");
        random(&mut x).unwrap();
        seed(b"same");
        random(&mut y).unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn seed_changes_the_pool_and_keeps_os_output() {
        let before = POOL.lock().state;
        seed(b"more");
        let after = POOL.lock().state;
        assert_ne!(before, after);
        assert!(POOL.lock().seeded);
    }
}
