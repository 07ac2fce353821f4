//! The soft token as a [`Backend`]: slots, tokens, sessions, objects and operations.
//!
//! One [`Token`] per slot, each on its own [`Store`] directory. Token objects live in the store
//! and in a per-process cache that is reloaded when another process changed the store (one
//! cheap `generation()` check per search or cache miss); session objects live in memory only.
//! Private token objects stay sealed until the user logs in; the login state is the process's,
//! shared by all its sessions, as PKCS#11 says.
//!
//! Object handles: a token object's handle is its store id (the same in every process); session
//! objects get handles from `SESSION_OBJECT_BASE` up.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use pkcs11_sys::*;
use zeroize::Zeroizing;

use super::crypto::{self, CipherOp, DigestOp, Params, SignOp};
use super::meta::{self, Meta};
use super::object::{Object, Origin};
use super::store::{open_sealed, seal, Store, StoreError};
use crate::backend::{Backend, Capabilities, InitArgs};
use crate::error::{Error, Result};
use crate::ffi::args::{InBuf, Mechanism, MutBuf, OutBuf, Template};

type S = CK_SESSION_HANDLE;
type O = CK_OBJECT_HANDLE;

/// Handles of session objects start here (token objects use their store ids, far below).
const SESSION_OBJECT_BASE: O = 0x4000_0000;
/// Wrong PINs in a row before a PIN is locked.
pub const DEFAULT_MAX_PIN_FAILURES: u32 = 10;
const MIN_PIN: usize = 4;
const MAX_PIN: usize = 255;

fn rv(code: CK_RV) -> Error {
    Error::Backend(code)
}

fn store_error(e: StoreError) -> Error {
    log::error!("soft token: {e}");
    rv(CKR_DEVICE_ERROR)
}

/// Objects by handle, indexed by label: Vault looks its keys up by label on every operation,
/// and a token may hold thousands of objects.
#[derive(Debug, Default)]
struct ObjectSet {
    map: HashMap<O, Arc<Object>>,
    by_label: HashMap<Vec<u8>, Vec<O>>,
}

fn label_of(o: &Object) -> &[u8] {
    o.get(CKA_LABEL).unwrap_or(&[])
}

impl ObjectSet {
    fn insert(&mut self, h: O, o: Arc<Object>) {
        self.by_label
            .entry(label_of(&o).to_vec())
            .or_default()
            .push(h);
        if let Some(old) = self.map.insert(h, o) {
            self.unindex(h, &old);
        }
    }

    fn remove(&mut self, h: &O) -> Option<Arc<Object>> {
        let old = self.map.remove(h)?;
        self.unindex(*h, &old);
        Some(old)
    }

    fn unindex(&mut self, h: O, old: &Object) {
        let label = label_of(old);
        let mut empty = false;
        if let Some(v) = self.by_label.get_mut(label) {
            if let Some(i) = v.iter().position(|x| *x == h) {
                v.swap_remove(i);
            }
            empty = v.is_empty();
        }
        if empty {
            self.by_label.remove(label);
        }
    }

    fn get(&self, h: &O) -> Option<&Arc<Object>> {
        self.map.get(h)
    }

    fn clear(&mut self) {
        self.map.clear();
        self.by_label.clear();
    }

    fn with_label(&self, label: &[u8]) -> &[O] {
        self.by_label.get(label).map_or(&[], Vec::as_slice)
    }

    /// Handles of the objects `f` selects.
    fn handles_where(&self, f: impl Fn(&Object) -> bool) -> Vec<O> {
        self.map
            .iter()
            .filter(|(_, o)| f(o))
            .map(|(h, _)| *h)
            .collect()
    }
}

/// What one process knows of one token.
#[derive(Debug, Default)]
struct TokenState {
    meta: Meta,
    /// The store generation the cache reflects (None: never loaded).
    generation: Option<u64>,
    /// Token objects readable now (public ones; private ones once the user is logged in).
    objects: ObjectSet,
    /// Private token objects still sealed (not logged in).
    sealed: HashMap<O, Vec<u8>>,
    /// Session objects, and the session that made each.
    session_objects: ObjectSet,
    owners: HashMap<O, S>,
    login: Option<CK_USER_TYPE>,
    token_key: Option<Zeroizing<[u8; 32]>>,
}

#[derive(Debug)]
struct Token {
    dir: PathBuf,
    store: RwLock<Option<Arc<Store>>>,
    state: RwLock<TokenState>,
}

/// An operation in progress on a session.
enum Op {
    Cipher(Box<dyn CipherOp>),
    Sign(Box<dyn SignOp>),
    Digest(Box<dyn DigestOp>),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Cipher(_) => "Cipher",
            Op::Sign(_) => "Sign",
            Op::Digest(_) => "Digest",
        })
    }
}

/// A session: its slot and kind, readable without its lock (counting sessions never waits for
/// an operation, so that no lock order can deadlock), and its operations behind the lock.
#[derive(Debug)]
struct SessionEntry {
    slot: usize,
    rw: bool,
    state: Mutex<Session>,
}

impl SessionEntry {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Session> {
        self.state.lock()
    }
}

#[derive(Debug, Default)]
struct Session {
    slot: usize,
    rw: bool,
    find: Option<Vec<O>>,
    encrypt: Option<Op>,
    decrypt: Option<Op>,
    sign: Option<Op>,
    verify: Option<Op>,
    digest: Option<Op>,
}

/// The built-in soft token backend.
#[derive(Debug)]
pub struct SoftBackend {
    name: String,
    tokens: Vec<Token>,
    sessions: RwLock<HashMap<S, Arc<SessionEntry>>>,
    next_session: AtomicU64,
    next_object: AtomicU64,
    max_pin_failures: u32,
}

impl SoftBackend {
    /// Soft tokens in `dirs`, one slot each (slot ids 0, 1, ...).
    pub fn new(name: &str, dirs: Vec<PathBuf>, max_pin_failures: u32) -> SoftBackend {
        SoftBackend {
            name: name.to_string(),
            tokens: dirs
                .into_iter()
                .map(|dir| Token {
                    dir,
                    store: RwLock::new(None),
                    state: RwLock::new(TokenState::default()),
                })
                .collect(),
            sessions: RwLock::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            next_object: AtomicU64::new(SESSION_OBJECT_BASE),
            max_pin_failures,
        }
    }

    fn token(&self, slot: CK_SLOT_ID) -> Result<&Token> {
        self.tokens
            .get(slot as usize)
            .ok_or(rv(CKR_SLOT_ID_INVALID))
    }

    fn store(&self, t: &Token) -> Result<Arc<Store>> {
        t.store
            .read()
            .clone()
            .ok_or(rv(CKR_CRYPTOKI_NOT_INITIALIZED))
    }

    fn session(&self, s: S) -> Result<Arc<SessionEntry>> {
        self.sessions
            .read()
            .get(&s)
            .cloned()
            .ok_or(rv(CKR_SESSION_HANDLE_INVALID))
    }

    /// Reloads a token's cache if any process changed its store since.
    fn refresh(&self, t: &Token) -> Result<()> {
        let store = self.store(t)?;
        let now = store.generation().map_err(store_error)?;
        if t.state.read().generation == Some(now) {
            return Ok(());
        }
        let snap = store.snapshot().map_err(store_error)?;
        let mut st = t.state.write();
        st.meta = match &snap.meta {
            Some(m) => Meta::decode(m).ok_or_else(|| {
                log::error!("soft token {}: unreadable metadata", t.dir.display());
                rv(CKR_DEVICE_ERROR)
            })?,
            None => Meta::default(),
        };
        st.objects.clear();
        st.sealed.clear();
        for (id, record) in snap.objects {
            load_record(&mut st, id, record)?;
        }
        st.generation = Some(snap.generation);
        Ok(())
    }

    /// Runs a change of the store under its lock; the cache stays valid when nobody else
    /// changed the store meanwhile.
    fn change<T>(
        &self,
        t: &Token,
        f: impl FnOnce(&Store, &super::store::Lock<'_>, &mut TokenState) -> Result<T>,
    ) -> Result<T> {
        let store = self.store(t)?;
        let lock = store.lock().map_err(store_error)?;
        let before = store.generation().map_err(store_error)?;
        let mut st = t.state.write();
        let current = st.generation == Some(before);
        let out = f(&store, &lock, &mut st)?;
        st.generation = if current {
            Some(store.generation().map_err(store_error)?)
        } else {
            None
        };
        Ok(out)
    }

    /// An object used as a key: an unknown handle is `invalid` (CKR_KEY_HANDLE_INVALID,
    /// CKR_WRAPPING_KEY_HANDLE_INVALID, ...), as the spec names it for the argument.
    fn key(&self, s: &Session, h: O, invalid: CK_RV) -> Result<Arc<Object>> {
        self.object(s, h).map_err(|e| match e {
            Error::Backend(CKR_OBJECT_HANDLE_INVALID) => rv(invalid),
            other => other,
        })
    }

    fn object(&self, s: &Session, h: O) -> Result<Arc<Object>> {
        let t = &self.tokens[s.slot];
        if let Some(o) = lookup(&t.state.read(), h) {
            return Ok(o);
        }
        self.refresh(t)?;
        lookup(&t.state.read(), h).ok_or(rv(CKR_OBJECT_HANDLE_INVALID))
    }

    /// Stores or keeps a new object; returns its handle.
    fn add_object(&self, s: S, sess: &Session, o: Object) -> Result<O> {
        let t = &self.tokens[sess.slot];
        let st = t.state.read();
        if o.is_private() && st.login != Some(CKU_USER) {
            return Err(rv(CKR_USER_NOT_LOGGED_IN));
        }
        drop(st);
        if !o.is_token() {
            let h = self.next_object.fetch_add(1, Ordering::Relaxed);
            let mut st = t.state.write();
            st.session_objects.insert(h, Arc::new(o));
            st.owners.insert(h, s);
            return Ok(h);
        }
        if !sess.rw {
            return Err(rv(CKR_SESSION_READ_ONLY));
        }
        self.change(t, |store, lock, st| {
            let id = store.next_id(lock).map_err(store_error)?;
            let record = encode_record(st, id, &o)?;
            store.put_object(lock, id, &record).map_err(store_error)?;
            st.objects.insert(id as O, Arc::new(o));
            Ok(id as O)
        })
    }

    fn replace_object(&self, sess: &Session, h: O, o: Object) -> Result<()> {
        let t = &self.tokens[sess.slot];
        if t.state.read().session_objects.get(&h).is_some() {
            t.state.write().session_objects.insert(h, Arc::new(o));
            return Ok(());
        }
        if !sess.rw {
            return Err(rv(CKR_SESSION_READ_ONLY));
        }
        self.change(t, |store, lock, st| {
            let record = encode_record(st, h, &o)?;
            store.put_object(lock, h, &record).map_err(store_error)?;
            st.objects.insert(h, Arc::new(o));
            Ok(())
        })
    }

    fn pin_flags(&self, m: &Meta) -> CK_FLAGS {
        let mut f = 0;
        let max = self.max_pin_failures;
        if m.user_failures > 0 {
            f |= CKF_USER_PIN_COUNT_LOW;
        }
        if m.user_failures + 1 == max {
            f |= CKF_USER_PIN_FINAL_TRY;
        }
        if m.user_failures >= max {
            f |= CKF_USER_PIN_LOCKED;
        }
        if m.so_failures > 0 {
            f |= CKF_SO_PIN_COUNT_LOW;
        }
        if m.so_failures + 1 == max {
            f |= CKF_SO_PIN_FINAL_TRY;
        }
        if m.so_failures >= max {
            f |= CKF_SO_PIN_LOCKED;
        }
        f
    }

    /// Checks a PIN against the wrapped token key, counting failures in the store.
    fn check_pin(&self, t: &Token, user: CK_USER_TYPE, pin: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        let who = if user == CKU_SO { "so" } else { "user" };
        let (wrapped, failures) = {
            let st = t.state.read();
            let w = if user == CKU_SO {
                st.meta.so.clone()
            } else {
                st.meta.user.clone()
            };
            let f = if user == CKU_SO {
                st.meta.so_failures
            } else {
                st.meta.user_failures
            };
            (w, f)
        };
        let wrapped = wrapped.ok_or(rv(if user == CKU_SO {
            CKR_TOKEN_NOT_RECOGNIZED
        } else {
            CKR_USER_PIN_NOT_INITIALIZED
        }))?;
        if failures >= self.max_pin_failures {
            return Err(rv(CKR_PIN_LOCKED));
        }
        let key = meta::unwrap(&wrapped, pin, who);
        let ok = key.is_some();
        if ok && failures == 0 {
            return key.ok_or(rv(CKR_PIN_INCORRECT));
        }
        self.change(t, |store, lock, st| {
            let counter = if user == CKU_SO {
                &mut st.meta.so_failures
            } else {
                &mut st.meta.user_failures
            };
            *counter = if ok { 0 } else { *counter + 1 };
            store.set_meta(lock, &st.meta.encode()).map_err(store_error)
        })?;
        key.ok_or(rv(CKR_PIN_INCORRECT))
    }

    fn start_cipher(&self, s: S, m: Mechanism<'_>, key: O, encrypt: bool) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        idle(cipher_slot(&mut g, encrypt))?;
        let o = self.key(&g, key, CKR_KEY_HANDLE_INVALID)?;
        let usage = if encrypt { CKA_ENCRYPT } else { CKA_DECRYPT };
        if !o.flag(usage) {
            return Err(rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
        }
        check_key_type(m.mechanism_type(), &o)?;
        let params = parse_params(&m)?;
        let op = crypto::cipher(
            m.mechanism_type(),
            &params,
            o.key_ref().map_err(rv)?,
            encrypt,
        )
        .map_err(rv)?;
        *cipher_slot(&mut g, encrypt) = Some(Op::Cipher(op));
        Ok(())
    }

    fn start_sign(&self, s: S, m: Mechanism<'_>, key: O, sign: bool) -> Result<()> {
        let which: fn(&mut Session) -> &mut Option<Op> = if sign {
            |s| &mut s.sign
        } else {
            |s| &mut s.verify
        };
        let sess = self.session(s)?;
        let mut g = sess.lock();
        idle(which(&mut g))?;
        let o = self.key(&g, key, CKR_KEY_HANDLE_INVALID)?;
        let usage = if sign { CKA_SIGN } else { CKA_VERIFY };
        if !o.flag(usage) {
            return Err(rv(CKR_KEY_FUNCTION_NOT_PERMITTED));
        }
        check_key_type(m.mechanism_type(), &o)?;
        let params = parse_params(&m)?;
        let op = crypto::signer(m.mechanism_type(), &params, o.key_ref().map_err(rv)?, sign)
            .map_err(rv)?;
        *which(&mut g) = Some(Op::Sign(op));
        Ok(())
    }

    /// A single-part cipher call (`C_Encrypt`, `C_Decrypt`).
    fn cipher_once(&self, s: S, encrypt: bool, data: InBuf<'_>, mut out: OutBuf<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let slot = cipher_slot(&mut g, encrypt);
        let Some(Op::Cipher(op)) = slot.as_mut() else {
            return Err(rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        // Like SoftHSMv2: room for the most the call can produce, or the operation goes on.
        let need = op.max_oneshot_len(data.len() as usize) as CK_ULONG;
        if let Some(answer) = short_of_room(&mut out, need) {
            return answer;
        }
        let result = run_cipher(op.as_mut(), data.as_slice());
        *slot = None;
        out.put(&result.map_err(rv)?)
    }

    fn cipher_update(
        &self,
        s: S,
        encrypt: bool,
        data: InBuf<'_>,
        mut out: OutBuf<'_>,
    ) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let slot = cipher_slot(&mut g, encrypt);
        let Some(Op::Cipher(op)) = slot.as_mut() else {
            return Err(rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        if !op.multipart() {
            return Err(rv(CKR_FUNCTION_NOT_SUPPORTED));
        }
        let need = op.max_update_len(data.len() as usize) as CK_ULONG;
        if let Some(answer) = short_of_room(&mut out, need) {
            return answer;
        }
        match op.update(data.as_slice()) {
            Ok(bytes) => out.put(&bytes),
            Err(e) => {
                *slot = None;
                Err(rv(e))
            }
        }
    }

    fn cipher_final(&self, s: S, encrypt: bool, mut out: OutBuf<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let slot = cipher_slot(&mut g, encrypt);
        let Some(Op::Cipher(op)) = slot.as_mut() else {
            return Err(rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        if let Some(answer) = short_of_room(&mut out, op.max_final_len() as CK_ULONG) {
            return answer;
        }
        let result = op.finish();
        *slot = None;
        out.put(&result.map_err(rv)?)
    }

    fn sign_once(&self, s: S, data: &[u8], mut out: OutBuf<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let Some(Op::Sign(op)) = g.sign.as_mut() else {
            return Err(rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        if let Some(answer) = short_of_room(&mut out, op.max_signature_len() as CK_ULONG) {
            return answer;
        }
        let result = op.update(data).and_then(|_| op.sign());
        g.sign = None;
        out.put(&result.map_err(rv)?)
    }

    /// `C_SignUpdate` / `C_VerifyUpdate`: a failure ends the operation.
    fn sign_part(
        &self,
        s: S,
        which: fn(&mut Session) -> &mut Option<Op>,
        part: &[u8],
    ) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let slot = which(&mut g);
        let Some(Op::Sign(op)) = slot.as_mut() else {
            return Err(rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        if !op.multipart() {
            return Err(rv(CKR_FUNCTION_NOT_SUPPORTED));
        }
        if let Err(e) = op.update(part) {
            *slot = None;
            return Err(rv(e));
        }
        Ok(())
    }

    /// `C_Digest` (with `data`) and `C_DigestFinal` (with none).
    fn digest_end(&self, s: S, data: &[u8], mut out: OutBuf<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let Some(Op::Digest(op)) = g.digest.as_mut() else {
            return Err(rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        if let Some(answer) = short_of_room(&mut out, op.len() as CK_ULONG) {
            return answer;
        }
        op.update(data);
        let d = op.finish();
        g.digest = None;
        out.put(&d)
    }

    fn verify_once(&self, s: S, data: Option<&[u8]>, sig: &[u8]) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let Some(Op::Sign(op)) = g.verify.as_mut() else {
            return Err(rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        let result = match data {
            Some(d) => op.update(d).and_then(|_| op.verify(sig)),
            None => op.verify(sig),
        };
        g.verify = None;
        result.map_err(rv)
    }

    /// The handles of the objects the session may see that match `wanted`, highest first (the
    /// search hands them out from the end). A label in the template narrows the search to the
    /// objects with that label.
    fn matching(&self, slot: usize, wanted: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> Vec<O> {
        let st = self.tokens[slot].state.read();
        let user = st.login == Some(CKU_USER);
        let fits = |o: &Object| (user || !o.is_private()) && o.matches(wanted);
        let label = wanted.iter().find(|(t, _)| *t == CKA_LABEL).map(|(_, v)| v);
        let mut found = Vec::new();
        for set in [&st.objects, &st.session_objects] {
            match label {
                Some(l) => found.extend(
                    set.with_label(l)
                        .iter()
                        .filter(|h| set.get(h).is_some_and(|o| fits(o))),
                ),
                None => found.extend(set.handles_where(fits)),
            }
        }
        found.sort_unstable_by(|a, b| b.cmp(a));
        found
    }
}

fn lookup(st: &TokenState, h: O) -> Option<Arc<Object>> {
    let o = st
        .objects
        .get(&h)
        .cloned()
        .or_else(|| st.session_objects.get(&h).cloned())?;
    (!o.is_private() || st.login == Some(CKU_USER)).then_some(o)
}

/// Adds one stored record to the cache: public records are the object's encoding; private
/// ones are sealed under the token key, opened now if the key is known.
fn load_record(st: &mut TokenState, id: u64, record: Vec<u8>) -> Result<()> {
    let (private, body) = record.split_first().ok_or(rv(CKR_DEVICE_ERROR))?;
    if *private == 0 {
        let o = Object::decode(body).ok_or(rv(CKR_DEVICE_ERROR))?;
        st.objects.insert(id as O, Arc::new(o));
        return Ok(());
    }
    match &st.token_key {
        Some(k) => {
            let plain = open_sealed(k, &id.to_le_bytes(), body).map_err(store_error)?;
            let o = Object::decode(&plain).ok_or(rv(CKR_DEVICE_ERROR))?;
            st.objects.insert(id as O, Arc::new(o));
        }
        None => {
            st.sealed.insert(id as O, body.to_vec());
        }
    }
    Ok(())
}

/// The record for a token object: a flag byte, then the encoding, sealed under the token key
/// when the object is private.
fn encode_record(st: &TokenState, id: u64, o: &Object) -> Result<Vec<u8>> {
    let plain = o.encode();
    if !o.is_private() {
        let mut r = Vec::with_capacity(plain.len() + 1);
        r.push(0);
        r.extend_from_slice(&plain);
        return Ok(r);
    }
    let key = st.token_key.as_ref().ok_or(rv(CKR_USER_NOT_LOGGED_IN))?;
    let mut r = vec![1];
    r.extend_from_slice(&seal(key, &id.to_le_bytes(), &plain));
    Ok(r)
}

fn run_cipher(op: &mut dyn CipherOp, data: &[u8]) -> crypto::CkResult<Vec<u8>> {
    let mut out = op.update(data)?;
    out.extend_from_slice(&op.finish()?);
    Ok(out)
}

/// `CKR_OPERATION_ACTIVE` when an operation of this kind is already under way (checked under
/// the same lock that starts the new one).
fn idle(slot: &mut Option<Op>) -> Result<()> {
    match slot {
        Some(_) => Err(rv(CKR_OPERATION_ACTIVE)),
        None => Ok(()),
    }
}

/// The encryption or decryption slot of a session.
fn cipher_slot(g: &mut Session, encrypt: bool) -> &mut Option<Op> {
    if encrypt {
        &mut g.encrypt
    } else {
        &mut g.decrypt
    }
}

/// The answer to a call whose output buffer is a length query, or too small for `need`
/// (the spec's two-call convention; the operation goes on): `None` when there is room.
fn short_of_room(out: &mut OutBuf<'_>, need: CK_ULONG) -> Option<Result<()>> {
    if out.is_length_query() {
        return Some(out.put_len(need));
    }
    (out.len_value() < need).then(|| out.put_len(need).and(Err(rv(CKR_BUFFER_TOO_SMALL))))
}

/// The key type a mechanism takes, where it takes one kind only (HMAC takes generic secrets,
/// not AES keys: PKCS#11 2.40 §2.11, as SoftHSMv2 and Vault expect).
fn required_key_type(m: CK_MECHANISM_TYPE) -> Option<CK_KEY_TYPE> {
    Some(match m {
        CKM_AES_GCM | CKM_AES_CBC | CKM_AES_CBC_PAD | CKM_AES_ECB | CKM_AES_KEY_WRAP
        | CKM_AES_KEY_WRAP_PAD => CKK_AES,
        CKM_SHA_1_HMAC | CKM_SHA256_HMAC | CKM_SHA384_HMAC | CKM_SHA512_HMAC => CKK_GENERIC_SECRET,
        CKM_RSA_PKCS
        | CKM_RSA_PKCS_OAEP
        | CKM_RSA_PKCS_PSS
        | CKM_SHA256_RSA_PKCS
        | CKM_SHA384_RSA_PKCS
        | CKM_SHA512_RSA_PKCS
        | CKM_SHA256_RSA_PKCS_PSS
        | CKM_SHA384_RSA_PKCS_PSS
        | CKM_SHA512_RSA_PKCS_PSS => CKK_RSA,
        CKM_ECDSA | CKM_ECDSA_SHA256 | CKM_ECDSA_SHA384 | CKM_ECDSA_SHA512 => CKK_EC,
        _ => return None,
    })
}

/// Refuses a key of the wrong type for the mechanism.
fn check_key_type(m: CK_MECHANISM_TYPE, key: &Object) -> Result<()> {
    match required_key_type(m) {
        Some(want) if key.key_type() != Some(want) => Err(rv(CKR_KEY_TYPE_INCONSISTENT)),
        _ => Ok(()),
    }
}

pub(crate) fn parse_params(m: &Mechanism<'_>) -> Result<Params> {
    Ok(match m.mechanism_type() {
        CKM_AES_GCM => {
            let (iv, aad, tag_bits) = m.gcm_params()?;
            Params::Gcm {
                iv,
                aad,
                tag_bits: tag_bits as usize,
            }
        }
        CKM_AES_CBC | CKM_AES_CBC_PAD => Params::Iv(m.parameter_bytes().to_vec()),
        CKM_RSA_PKCS_OAEP => {
            let (hash, mgf, label) = m.oaep_params()?;
            Params::Oaep { hash, mgf, label }
        }
        CKM_RSA_PKCS_PSS
        | CKM_SHA256_RSA_PKCS_PSS
        | CKM_SHA384_RSA_PKCS_PSS
        | CKM_SHA512_RSA_PKCS_PSS => {
            let (hash, mgf, salt) = m.pss_params()?;
            Params::Pss {
                hash,
                mgf,
                salt_len: salt as usize,
            }
        }
        _ => {
            if m.parameter_len() != 0 {
                return Err(rv(CKR_MECHANISM_PARAM_INVALID));
            }
            Params::None
        }
    })
}

fn pad32(text: &str) -> [u8; 32] {
    let mut f = [b' '; 32];
    let n = text.len().min(32);
    f[..n].copy_from_slice(&text.as_bytes()[..n]);
    f
}

fn pad16(text: &str) -> [u8; 16] {
    let mut f = [b' '; 16];
    let n = text.len().min(16);
    f[..n].copy_from_slice(&text.as_bytes()[..n]);
    f
}

fn pin_bytes(pin: &InBuf<'_>) -> Result<Zeroizing<Vec<u8>>> {
    let p = pin.as_slice();
    if !(MIN_PIN..=MAX_PIN).contains(&p.len()) {
        return Err(rv(CKR_PIN_LEN_RANGE));
    }
    Ok(Zeroizing::new(p.to_vec()))
}

impl Backend for SoftBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> String {
        format!(
            "{} (built-in soft token, {} slot(s) in {})",
            self.name,
            self.tokens.len(),
            self.tokens
                .first()
                .and_then(|t| t.dir.parent())
                .map_or_else(String::new, |p| p.display().to_string())
        )
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { v3_0: false }
    }

    fn initialize(&self, _args: &InitArgs) -> Result<()> {
        for t in &self.tokens {
            let store = Store::open(&t.dir).map_err(|e| {
                log::error!("soft token {}: {e}", t.dir.display());
                rv(CKR_DEVICE_ERROR)
            })?;
            *t.store.write() = Some(Arc::new(store));
            *t.state.write() = TokenState::default();
            self.refresh(t)?;
        }
        self.sessions.write().clear();
        Ok(())
    }

    fn finalize(&self) -> Result<()> {
        self.sessions.write().clear();
        for t in &self.tokens {
            *t.state.write() = TokenState::default();
            *t.store.write() = None;
        }
        Ok(())
    }

    fn slot_list(&self, _token_present: bool, mut out: OutBuf<'_, CK_SLOT_ID>) -> Result<()> {
        let ids: Vec<CK_SLOT_ID> = (0..self.tokens.len() as CK_SLOT_ID).collect();
        out.put(&ids)
    }

    fn slot_info(&self, slot: CK_SLOT_ID, info: &mut CK_SLOT_INFO) -> Result<()> {
        let t = self.token(slot)?;
        *info = CK_SLOT_INFO::default();
        let desc = format!("p11gate soft token {}", t.dir.display());
        let mut d = [b' '; 64];
        let n = desc.len().min(64);
        d[..n].copy_from_slice(&desc.as_bytes()[..n]);
        info.slotDescription = d;
        info.manufacturerID = pad32("p11gate");
        info.flags = CKF_TOKEN_PRESENT;
        info.hardwareVersion = CK_VERSION { major: 0, minor: 1 };
        info.firmwareVersion = CK_VERSION { major: 0, minor: 1 };
        Ok(())
    }

    fn token_info(&self, slot: CK_SLOT_ID, info: &mut CK_TOKEN_INFO) -> Result<()> {
        let t = self.token(slot)?;
        self.refresh(t)?;
        let (mut count, mut rw) = (0, 0);
        for s in self.sessions.read().values() {
            if s.slot == slot as usize {
                count += 1;
                if s.rw {
                    rw += 1;
                }
            }
        }
        let st = t.state.read();
        *info = CK_TOKEN_INFO::default();
        info.label = pad32(&st.meta.label);
        info.manufacturerID = pad32("p11gate");
        info.model = pad16("soft token");
        let serial = format!("{:016x}", slot);
        info.serialNumber = pad16(&serial);
        let mut flags = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_RESTORE_KEY_NOT_NEEDED;
        if st.meta.initialized() {
            flags |= CKF_TOKEN_INITIALIZED;
        }
        if st.meta.user.is_some() {
            flags |= CKF_USER_PIN_INITIALIZED;
        }
        flags |= self.pin_flags(&st.meta);
        info.flags = flags;
        info.ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
        info.ulSessionCount = count;
        info.ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
        info.ulRwSessionCount = rw;
        info.ulMaxPinLen = MAX_PIN as CK_ULONG;
        info.ulMinPinLen = MIN_PIN as CK_ULONG;
        info.ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
        info.ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
        info.ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
        info.ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
        info.hardwareVersion = CK_VERSION { major: 0, minor: 1 };
        info.firmwareVersion = CK_VERSION { major: 0, minor: 1 };
        info.utcTime = pad16("");
        Ok(())
    }

    fn mechanism_list(
        &self,
        slot: CK_SLOT_ID,
        mut out: OutBuf<'_, CK_MECHANISM_TYPE>,
    ) -> Result<()> {
        self.token(slot)?;
        out.put(&crypto::mechanisms())
    }

    fn mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        mech: CK_MECHANISM_TYPE,
        info: &mut CK_MECHANISM_INFO,
    ) -> Result<()> {
        self.token(slot)?;
        *info = crypto::mechanism_info(mech).ok_or(rv(CKR_MECHANISM_INVALID))?;
        Ok(())
    }

    fn init_token(&self, slot: CK_SLOT_ID, so_pin: InBuf<'_>, label: &[u8; 32]) -> Result<()> {
        let t = self.token(slot)?;
        if self
            .sessions
            .read()
            .values()
            .any(|s| s.slot == slot as usize)
        {
            return Err(rv(CKR_SESSION_EXISTS));
        }
        let pin = pin_bytes(&so_pin)?;
        self.refresh(t)?;
        if t.state.read().meta.initialized() {
            self.check_pin(t, CKU_SO, &pin)?;
        }
        let mut key = Zeroizing::new([0u8; 32]);
        crypto::sym::random(&mut *key).map_err(rv)?;
        let so = meta::wrap(&key, &pin, "so").ok_or(rv(CKR_FUNCTION_FAILED))?;
        let label = String::from_utf8_lossy(label).trim_end().to_string();
        self.change(t, |store, lock, st| {
            let snap = store.snapshot().map_err(store_error)?;
            for (id, _) in snap.objects {
                store.delete_object(lock, id).map_err(store_error)?;
            }
            st.meta = Meta {
                label,
                so: Some(so),
                user: None,
                so_failures: 0,
                user_failures: 0,
            };
            store
                .set_meta(lock, &st.meta.encode())
                .map_err(store_error)?;
            st.objects.clear();
            st.sealed.clear();
            st.login = None;
            st.token_key = None;
            Ok(())
        })?;
        // Rebuild the cache from the store (a fresh token).
        t.state.write().generation = None;
        self.refresh(t)
    }

    fn init_pin(&self, s: S, pin: InBuf<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let t = &self.tokens[g.slot];
        if t.state.read().login != Some(CKU_SO) {
            return Err(rv(CKR_USER_NOT_LOGGED_IN));
        }
        if !g.rw {
            return Err(rv(CKR_SESSION_READ_ONLY));
        }
        let pin = pin_bytes(&pin)?;
        let key = t
            .state
            .read()
            .token_key
            .clone()
            .ok_or(rv(CKR_USER_NOT_LOGGED_IN))?;
        let user = meta::wrap(&key, &pin, "user").ok_or(rv(CKR_FUNCTION_FAILED))?;
        self.change(t, |store, lock, st| {
            st.meta.user = Some(user);
            st.meta.user_failures = 0;
            store.set_meta(lock, &st.meta.encode()).map_err(store_error)
        })
    }

    fn set_pin(&self, s: S, old: InBuf<'_>, new: InBuf<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        if !g.rw {
            return Err(rv(CKR_SESSION_READ_ONLY));
        }
        let t = &self.tokens[g.slot];
        let who = match t.state.read().login {
            Some(CKU_SO) => CKU_SO,
            _ => CKU_USER,
        };
        let (old, new) = (pin_bytes(&old)?, pin_bytes(&new)?);
        let key = self.check_pin(t, who, &old)?;
        let name = if who == CKU_SO { "so" } else { "user" };
        let wrapped = meta::wrap(&key, &new, name).ok_or(rv(CKR_FUNCTION_FAILED))?;
        self.change(t, |store, lock, st| {
            if who == CKU_SO {
                st.meta.so = Some(wrapped);
            } else {
                st.meta.user = Some(wrapped);
            }
            store.set_meta(lock, &st.meta.encode()).map_err(store_error)
        })
    }

    fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<S> {
        let t = self.token(slot)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(rv(CKR_SESSION_PARALLEL_NOT_SUPPORTED));
        }
        self.refresh(t)?;
        if !t.state.read().meta.initialized() {
            return Err(rv(CKR_TOKEN_NOT_RECOGNIZED));
        }
        let rw = flags & CKF_RW_SESSION != 0;
        if !rw && t.state.read().login == Some(CKU_SO) {
            return Err(rv(CKR_SESSION_READ_WRITE_SO_EXISTS));
        }
        let h = self.next_session.fetch_add(1, Ordering::Relaxed);
        self.sessions.write().insert(
            h,
            Arc::new(SessionEntry {
                slot: slot as usize,
                rw,
                state: Mutex::new(Session {
                    slot: slot as usize,
                    rw,
                    ..Session::default()
                }),
            }),
        );
        Ok(h)
    }

    fn close_session(&self, s: S) -> Result<()> {
        let sess = self
            .sessions
            .write()
            .remove(&s)
            .ok_or(rv(CKR_SESSION_HANDLE_INVALID))?;
        let slot = sess.slot;
        let t = &self.tokens[slot];
        let still_open = self.sessions.read().values().any(|x| x.slot == slot);
        let mut st = t.state.write();
        let owned: Vec<O> = st
            .owners
            .iter()
            .filter(|(_, owner)| **owner == s)
            .map(|(h, _)| *h)
            .collect();
        for h in owned {
            st.session_objects.remove(&h);
            st.owners.remove(&h);
        }
        if !still_open {
            // The last session: the application is logged out (PKCS#11 2.40 §5.6).
            st.login = None;
            st.token_key = None;
            let private = st.objects.handles_where(Object::is_private);
            for h in private {
                st.objects.remove(&h);
            }
            st.generation = None;
        }
        Ok(())
    }

    fn close_all_sessions(&self, slot: CK_SLOT_ID) -> Result<()> {
        self.token(slot)?;
        let handles: Vec<S> = self
            .sessions
            .read()
            .iter()
            .filter(|(_, s)| s.slot == slot as usize)
            .map(|(h, _)| *h)
            .collect();
        for h in handles {
            let _ = self.close_session(h);
        }
        Ok(())
    }

    fn session_info(&self, s: S, info: &mut CK_SESSION_INFO) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let login = self.tokens[g.slot].state.read().login;
        *info = CK_SESSION_INFO::default();
        info.slotID = g.slot as CK_SLOT_ID;
        info.state = match (login, g.rw) {
            (Some(CKU_SO), _) => CKS_RW_SO_FUNCTIONS,
            (Some(_), true) => CKS_RW_USER_FUNCTIONS,
            (Some(_), false) => CKS_RO_USER_FUNCTIONS,
            (None, true) => CKS_RW_PUBLIC_SESSION,
            (None, false) => CKS_RO_PUBLIC_SESSION,
        };
        info.flags = CKF_SERIAL_SESSION | if g.rw { CKF_RW_SESSION } else { 0 };
        Ok(())
    }

    fn login(&self, s: S, user: CK_USER_TYPE, pin: InBuf<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let slot = sess.slot;
        let t = &self.tokens[slot];
        match (user, t.state.read().login) {
            (CKU_USER | CKU_SO, Some(current)) if current == user => {
                return Err(rv(CKR_USER_ALREADY_LOGGED_IN))
            }
            (CKU_USER | CKU_SO, Some(_)) => return Err(rv(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)),
            (CKU_USER | CKU_SO, None) => {}
            (CKU_CONTEXT_SPECIFIC, _) => return Err(rv(CKR_OPERATION_NOT_INITIALIZED)),
            _ => return Err(rv(CKR_USER_TYPE_INVALID)),
        }
        if user == CKU_SO {
            let any_ro = self
                .sessions
                .read()
                .values()
                .any(|x| x.slot == slot && !x.rw);
            if any_ro {
                return Err(rv(CKR_SESSION_READ_ONLY_EXISTS));
            }
        }
        self.refresh(t)?;
        let pin = pin_bytes(&pin).map_err(|_| rv(CKR_PIN_INCORRECT))?;
        let key = self.check_pin(t, user, &pin)?;
        let mut st = t.state.write();
        st.token_key = Some(key);
        st.login = Some(user);
        if user == CKU_USER {
            let sealed: Vec<(O, Vec<u8>)> = st.sealed.drain().collect();
            for (h, body) in sealed {
                let mut record = vec![1u8];
                record.extend_from_slice(&body);
                load_record(&mut st, h, record)?;
            }
        }
        Ok(())
    }

    fn logout(&self, s: S) -> Result<()> {
        let sess = self.session(s)?;
        let slot = sess.slot;
        let mut st = self.tokens[slot].state.write();
        if st.login.is_none() {
            return Err(rv(CKR_USER_NOT_LOGGED_IN));
        }
        st.login = None;
        st.token_key = None;
        let private = st.objects.handles_where(Object::is_private);
        for h in private {
            st.objects.remove(&h);
        }
        for h in st.session_objects.handles_where(Object::is_private) {
            st.session_objects.remove(&h);
            st.owners.remove(&h);
        }
        // Re-read so that private records are held sealed again.
        st.generation = None;
        Ok(())
    }

    fn create_object(&self, s: S, t: Template<'_>, obj: &mut O) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let o = Object::build(&t.entries(), None, None, Origin::Imported, &[]).map_err(rv)?;
        *obj = self.add_object(s, &g, o)?;
        Ok(())
    }

    fn copy_object(&self, s: S, from: O, t: Template<'_>, obj: &mut O) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let src = self.object(&g, from)?;
        if !src.flag(CKA_COPYABLE) {
            return Err(rv(CKR_ACTION_PROHIBITED));
        }
        let mut o = (*src).clone();
        o.change(&t.entries(), true).map_err(rv)?;
        *obj = self.add_object(s, &g, o)?;
        Ok(())
    }

    fn destroy_object(&self, s: S, obj: O) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let o = self.object(&g, obj)?;
        if !o.flag(CKA_DESTROYABLE) {
            return Err(rv(CKR_ACTION_PROHIBITED));
        }
        let t = &self.tokens[g.slot];
        {
            let mut st = t.state.write();
            if st.session_objects.remove(&obj).is_some() {
                st.owners.remove(&obj);
                return Ok(());
            }
        }
        if !g.rw {
            return Err(rv(CKR_SESSION_READ_ONLY));
        }
        self.change(t, |store, lock, st| {
            store.delete_object(lock, obj).map_err(store_error)?;
            st.objects.remove(&obj);
            Ok(())
        })
    }

    fn object_size(&self, s: S, obj: O, size: &mut CK_ULONG) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let o = self.object(&g, obj)?;
        *size = o.encode().len() as CK_ULONG;
        Ok(())
    }

    fn get_attribute_value(&self, s: S, obj: O, mut t: Template<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let o = self.object(&g, obj)?;
        let types: Vec<CK_ATTRIBUTE_TYPE> = t.attributes().iter().map(|a| a.type_).collect();
        let mut result = CKR_OK;
        for (i, ty) in types.into_iter().enumerate() {
            if !o.readable(ty) {
                t.answer(i, None);
                result = CKR_ATTRIBUTE_SENSITIVE;
                continue;
            }
            match o.get(ty) {
                None => {
                    t.answer(i, None);
                    if result == CKR_OK || result == CKR_BUFFER_TOO_SMALL {
                        result = CKR_ATTRIBUTE_TYPE_INVALID;
                    }
                }
                Some(v) => {
                    if !t.answer(i, Some(v)) && result == CKR_OK {
                        result = CKR_BUFFER_TOO_SMALL;
                    }
                }
            }
        }
        if result == CKR_OK {
            Ok(())
        } else {
            Err(rv(result))
        }
    }

    fn set_attribute_value(&self, s: S, obj: O, t: Template<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let mut o = (*self.object(&g, obj)?).clone();
        o.change(&t.entries(), false).map_err(rv)?;
        self.replace_object(&g, obj, o)
    }

    fn find_objects_init(&self, s: S, t: Template<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        if g.find.is_some() {
            return Err(rv(CKR_OPERATION_ACTIVE));
        }
        self.refresh(&self.tokens[g.slot])?;
        let mut wanted = Vec::new();
        for (ty, v) in t.entries() {
            wanted.push((ty, v.ok_or(rv(CKR_ATTRIBUTE_VALUE_INVALID))?.to_vec()));
        }
        g.find = Some(self.matching(g.slot, &wanted));
        Ok(())
    }

    fn find_objects(&self, s: S, found: &mut [O], count: &mut CK_ULONG) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let pending = g.find.as_mut().ok_or(rv(CKR_OPERATION_NOT_INITIALIZED))?;
        let mut n = 0;
        while n < found.len() {
            match pending.pop() {
                Some(h) => {
                    found[n] = h;
                    n += 1;
                }
                None => break,
            }
        }
        *count = n as CK_ULONG;
        Ok(())
    }

    fn find_objects_final(&self, s: S) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        g.find.take().ok_or(rv(CKR_OPERATION_NOT_INITIALIZED))?;
        Ok(())
    }

    fn encrypt_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        self.start_cipher(s, m, key, true)
    }
    fn encrypt(&self, s: S, data: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        self.cipher_once(s, true, data, out)
    }
    fn encrypt_update(&self, s: S, part: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        self.cipher_update(s, true, part, out)
    }
    fn encrypt_final(&self, s: S, out: OutBuf<'_>) -> Result<()> {
        self.cipher_final(s, true, out)
    }
    fn decrypt_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        self.start_cipher(s, m, key, false)
    }
    fn decrypt(&self, s: S, data: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        self.cipher_once(s, false, data, out)
    }
    fn decrypt_update(&self, s: S, part: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        self.cipher_update(s, false, part, out)
    }
    fn decrypt_final(&self, s: S, out: OutBuf<'_>) -> Result<()> {
        self.cipher_final(s, false, out)
    }

    fn digest_init(&self, s: S, m: Mechanism<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        idle(&mut g.digest)?;
        g.digest = Some(Op::Digest(crypto::digest(m.mechanism_type()).map_err(rv)?));
        Ok(())
    }
    fn digest(&self, s: S, data: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        self.digest_end(s, data.as_slice(), out)
    }
    fn digest_update(&self, s: S, part: InBuf<'_>) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let Some(Op::Digest(op)) = g.digest.as_mut() else {
            return Err(rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        op.update(part.as_slice());
        Ok(())
    }
    fn digest_key(&self, s: S, key: O) -> Result<()> {
        let sess = self.session(s)?;
        let mut g = sess.lock();
        let o = self.key(&g, key, CKR_KEY_HANDLE_INVALID)?;
        if o.class() != Some(CKO_SECRET_KEY) {
            return Err(rv(CKR_KEY_INDIGESTIBLE));
        }
        let value = o.get(CKA_VALUE).ok_or(rv(CKR_KEY_INDIGESTIBLE))?.to_vec();
        let value = Zeroizing::new(value);
        let Some(Op::Digest(op)) = g.digest.as_mut() else {
            return Err(rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        op.update(&value);
        Ok(())
    }
    fn digest_final(&self, s: S, out: OutBuf<'_>) -> Result<()> {
        self.digest_end(s, &[], out)
    }

    fn sign_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        self.start_sign(s, m, key, true)
    }
    fn sign(&self, s: S, data: InBuf<'_>, out: OutBuf<'_>) -> Result<()> {
        self.sign_once(s, data.as_slice(), out)
    }
    fn sign_update(&self, s: S, part: InBuf<'_>) -> Result<()> {
        self.sign_part(s, |g| &mut g.sign, part.as_slice())
    }
    fn sign_final(&self, s: S, out: OutBuf<'_>) -> Result<()> {
        self.sign_once(s, &[], out)
    }
    fn verify_init(&self, s: S, m: Mechanism<'_>, key: O) -> Result<()> {
        self.start_sign(s, m, key, false)
    }
    fn verify(&self, s: S, data: InBuf<'_>, sig: InBuf<'_>) -> Result<()> {
        self.verify_once(s, Some(data.as_slice()), sig.as_slice())
    }
    fn verify_update(&self, s: S, part: InBuf<'_>) -> Result<()> {
        self.sign_part(s, |g| &mut g.verify, part.as_slice())
    }
    fn verify_final(&self, s: S, sig: InBuf<'_>) -> Result<()> {
        self.verify_once(s, None, sig.as_slice())
    }

    fn generate_key(&self, s: S, m: Mechanism<'_>, t: Template<'_>, key: &mut O) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let given = t.entries();
        let (key_type, default_len) = match m.mechanism_type() {
            CKM_AES_KEY_GEN => (CKK_AES, None),
            CKM_GENERIC_SECRET_KEY_GEN => (CKK_GENERIC_SECRET, None),
            _ => return Err(rv(CKR_MECHANISM_INVALID)),
        };
        let len = match (t.value(CKA_VALUE_LEN), t.ulong_value(CKA_VALUE_LEN)) {
            (_, Some(n)) => n,
            // Present but not a CK_ULONG.
            (Some(_), None) => return Err(rv(CKR_ATTRIBUTE_VALUE_INVALID)),
            (None, None) => default_len.ok_or(rv(CKR_TEMPLATE_INCOMPLETE))?,
        } as usize;
        if key_type == CKK_AES && ![16, 24, 32].contains(&len) {
            return Err(rv(CKR_ATTRIBUTE_VALUE_INVALID));
        }
        if !(1..=512).contains(&len) {
            return Err(rv(CKR_ATTRIBUTE_VALUE_INVALID));
        }
        if t.value(CKA_VALUE).is_some() {
            return Err(rv(CKR_TEMPLATE_INCONSISTENT));
        }
        let value = crypto::sym::generate_secret(len).map_err(rv)?;
        let o = Object::build(
            &given,
            Some(CKO_SECRET_KEY),
            Some(key_type),
            Origin::Generated(m.mechanism_type()),
            &[(CKA_VALUE, value.to_vec())],
        )
        .map_err(rv)?;
        *key = self.add_object(s, &g, o)?;
        Ok(())
    }

    fn generate_key_pair(
        &self,
        s: S,
        m: Mechanism<'_>,
        public: Template<'_>,
        private: Template<'_>,
        public_key: &mut O,
        private_key: &mut O,
    ) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let mech = m.mechanism_type();
        let (key_type, pub_parts, priv_parts) = match mech {
            CKM_RSA_PKCS_KEY_PAIR_GEN => {
                let bits = public
                    .ulong_value(CKA_MODULUS_BITS)
                    .ok_or(rv(CKR_TEMPLATE_INCOMPLETE))?;
                let e = public
                    .value(CKA_PUBLIC_EXPONENT)
                    .map(|e| e.to_vec())
                    .unwrap_or_else(|| vec![1, 0, 1]);
                let kp = crypto::asym::generate_rsa(bits as usize, &e).map_err(rv)?;
                let public_parts = vec![
                    (CKA_MODULUS, kp.n.clone()),
                    (CKA_PUBLIC_EXPONENT, kp.e.clone()),
                ];
                let private_parts = vec![
                    (CKA_MODULUS, kp.n.clone()),
                    (CKA_PUBLIC_EXPONENT, kp.e.clone()),
                    (CKA_PRIVATE_EXPONENT, kp.d.to_vec()),
                    (CKA_PRIME_1, kp.p.to_vec()),
                    (CKA_PRIME_2, kp.q.to_vec()),
                    (CKA_EXPONENT_1, kp.dp.to_vec()),
                    (CKA_EXPONENT_2, kp.dq.to_vec()),
                    (CKA_COEFFICIENT, kp.qinv.to_vec()),
                ];
                (CKK_RSA, public_parts, private_parts)
            }
            CKM_EC_KEY_PAIR_GEN => {
                let params = public
                    .value(CKA_EC_PARAMS)
                    .ok_or(rv(CKR_TEMPLATE_INCOMPLETE))?
                    .to_vec();
                let kp = crypto::asym::generate_ec(&params).map_err(rv)?;
                (
                    CKK_EC,
                    vec![(CKA_EC_POINT, kp.point.clone())],
                    vec![
                        (CKA_EC_PARAMS, params.clone()),
                        (CKA_VALUE, kp.value.to_vec()),
                    ],
                )
            }
            _ => return Err(rv(CKR_MECHANISM_INVALID)),
        };
        let pub_obj = Object::build(
            &public.entries(),
            Some(CKO_PUBLIC_KEY),
            Some(key_type),
            Origin::Generated(mech),
            &pub_parts,
        )
        .map_err(rv)?;
        let mut priv_given = private.entries();
        // The private key carries the public key's id and label when its template has none.
        let id = pub_obj.get(CKA_ID).map(<[u8]>::to_vec);
        if private.value(CKA_ID).is_none() {
            if let Some(id) = &id {
                priv_given.push((CKA_ID, Some(id)));
            }
        }
        let priv_obj = Object::build(
            &priv_given,
            Some(CKO_PRIVATE_KEY),
            Some(key_type),
            Origin::Generated(mech),
            &priv_parts,
        )
        .map_err(rv)?;
        *public_key = self.add_object(s, &g, pub_obj)?;
        *private_key = self.add_object(s, &g, priv_obj)?;
        Ok(())
    }

    fn wrap_key(
        &self,
        s: S,
        m: Mechanism<'_>,
        wrapping_key: O,
        key: O,
        mut out: OutBuf<'_>,
    ) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let w = self.key(&g, wrapping_key, CKR_WRAPPING_KEY_HANDLE_INVALID)?;
        if !w.flag(CKA_WRAP) {
            return Err(rv(CKR_WRAPPING_KEY_HANDLE_INVALID));
        }
        check_key_type(m.mechanism_type(), &w)
            .map_err(|_| rv(CKR_WRAPPING_KEY_TYPE_INCONSISTENT))?;
        let k = self.key(&g, key, CKR_KEY_HANDLE_INVALID)?;
        if !k.flag(CKA_EXTRACTABLE) {
            return Err(rv(CKR_KEY_UNEXTRACTABLE));
        }
        if k.class() != Some(CKO_SECRET_KEY) {
            return Err(rv(CKR_KEY_NOT_WRAPPABLE));
        }
        let value = k.get(CKA_VALUE).ok_or(rv(CKR_KEY_NOT_WRAPPABLE))?;
        let params = parse_params(&m)?;
        let wrapped = crypto::wrap(m.mechanism_type(), &params, w.key_ref().map_err(rv)?, value)
            .map_err(rv)?;
        out.put(&wrapped)
    }

    fn unwrap_key(
        &self,
        s: S,
        m: Mechanism<'_>,
        unwrapping_key: O,
        wrapped: InBuf<'_>,
        t: Template<'_>,
        key: &mut O,
    ) -> Result<()> {
        let sess = self.session(s)?;
        let g = sess.lock();
        let u = self.key(&g, unwrapping_key, CKR_UNWRAPPING_KEY_HANDLE_INVALID)?;
        if !u.flag(CKA_UNWRAP) {
            return Err(rv(CKR_UNWRAPPING_KEY_HANDLE_INVALID));
        }
        check_key_type(m.mechanism_type(), &u)
            .map_err(|_| rv(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT))?;
        let params = parse_params(&m)?;
        let value = crypto::unwrap(
            m.mechanism_type(),
            &params,
            u.key_ref().map_err(rv)?,
            wrapped.as_slice(),
        )
        .map_err(rv)?;
        let o = Object::build(
            &t.entries(),
            Some(CKO_SECRET_KEY),
            None,
            Origin::Imported,
            &[(CKA_VALUE, value.to_vec())],
        )
        .map_err(rv)?;
        *key = self.add_object(s, &g, o)?;
        Ok(())
    }

    fn function_status(&self, s: S) -> Result<()> {
        self.session(s)?;
        Err(rv(CKR_FUNCTION_NOT_PARALLEL))
    }

    fn cancel_function(&self, s: S) -> Result<()> {
        self.session(s)?;
        Err(rv(CKR_FUNCTION_NOT_PARALLEL))
    }

    fn seed_random(&self, s: S, seed: InBuf<'_>) -> Result<()> {
        self.session(s)?;
        crypto::sym::seed(seed.as_slice());
        Ok(())
    }

    fn generate_random(&self, s: S, mut out: MutBuf<'_>) -> Result<()> {
        self.session(s)?;
        crypto::sym::random(out.as_mut_slice()).map_err(rv)
    }
}
