//! The soft token's on-disk store: one directory per token, shared by several processes.
//!
//! # Layout
//!
//! ```text
//! <dir>/                     0700
//!   store.key                0600  32 random bytes: the key every record file is sealed with
//!   lock                     0600  flock target; its first 8 bytes are the generation counter
//!   next-id                  0600  sealed: the next object id (u64, little-endian)
//!   meta                     0600  sealed: the token metadata blob (absent until first set)
//!   obj-<id, 16 hex digits>  0600  sealed: one object record
//!   .tmp-<pid>-<n>-<random>  0600  a write in progress (or left by a killed writer)
//! ```
//!
//! A sealed file is `"P11S" 1 || nonce || AES-256-GCM(ciphertext) || tag` under the store key,
//! with the file's kind and object id in the associated data: a flipped byte, a truncated file,
//! or one file's content copied over another's is [`StoreError::Corrupt`] naming the file, never
//! skipped. (Whole files deleted, or replaced by an older version of themselves, are not
//! detected: that would take a manifest rewritten on every change.)
//!
//! # Changes
//!
//! Writers hold [`Store::lock`] (`flock(LOCK_EX)` on `lock`). Every file is replaced as a whole:
//! a temp file is created in the directory (`O_EXCL`, 0600), written, `fsync`ed, renamed over
//! its target, and the directory is `fsync`ed; so `kill -9` (or a power cut) at any instant
//! leaves the old or the new file. Temp files exist only while their writer holds the exclusive
//! lock, so any temp file seen under the shared lock is a killed writer's: [`Store::snapshot`]
//! ignores and removes them.
//!
//! # Generation
//!
//! The first 8 bytes of `lock` (little-endian; an empty file is generation 0) count changes.
//! Under the exclusive lock a writer adds one *before* renaming or removing a record file, with
//! one in-place `pwrite`: a writer killed between the two leaves a generation that changed with
//! nothing else (a needless reload elsewhere), never a change the generation misses.
//! [`Store::generation`] is one `pread` on a descriptor kept open. The counter is a hint for
//! caches, not a record: it is not sealed or `fsync`ed (after a power cut every process starts
//! afresh anyway), and a read racing a write can only look changed, which costs a reload.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::marker::PhantomData;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::ThreadId;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use parking_lot::Mutex;
use password_hash::rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

const KEY_FILE: &str = "store.key";
const LOCK_FILE: &str = "lock";
const NEXT_ID_FILE: &str = "next-id";
const META_FILE: &str = "meta";
const OBJECT_PREFIX: &str = "obj-";
const TEMP_PREFIX: &str = ".tmp-";

/// What every sealed file starts with: a magic and the format version.
const HEADER: &[u8; 5] = b"P11S\x01";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;

/// An error from the store.
#[derive(Debug)]
pub enum StoreError {
    /// A system call failed (the message names the path where one is involved).
    Io(io::Error),
    /// A file's content is not what this store wrote there: altered, truncated, moved, or
    /// missing where it must exist.
    Corrupt { file: PathBuf, why: String },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io(e) => write!(f, "token store: {e}"),
            StoreError::Corrupt { file, why } => {
                write!(f, "token store file {} is corrupt: {why}", file.display())
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Io(e) => Some(e),
            StoreError::Corrupt { .. } => None,
        }
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> StoreError {
        StoreError::Io(e)
    }
}

fn corrupt(file: &Path, why: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        file: file.to_path_buf(),
        why: why.into(),
    }
}

/// Adds the path to an I/O error's message (io::Error has none of its own).
fn at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |e| StoreError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Everything in the store at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The generation the contents belong to (compare with [`Store::generation`]).
    pub generation: u64,
    /// The token metadata blob, if one was ever set.
    pub meta: Option<Vec<u8>>,
    /// Every object record, by ascending id.
    pub objects: Vec<(u64, Vec<u8>)>,
}

/// The exclusive lock for changes: `flock(LOCK_EX)` on `<dir>/lock`, released on drop.
///
/// It stays on the thread that took it (not `Send`): the store records that thread, so that
/// the thread's own [`Store::snapshot`] reads under it instead of deadlocking on it.
pub struct Lock<'a> {
    store: &'a Store,
    file: File,
    _on_this_thread: PhantomData<*const ()>,
}

impl std::fmt::Debug for Lock<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock")
            .field("dir", &self.store.dir)
            .finish()
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        // Forget the owner before the flock goes (when `file` closes): a thread that gets the
        // flock next then records itself after this, not before.
        *self.store.owner.lock() = None;
        let _ = self.file.unlock();
    }
}

/// One token's store. `Send + Sync`: threads share it; each [`Lock`] and shared-lock snapshot
/// uses its own descriptor of `lock`, since `flock` on one descriptor would not exclude the
/// process's other threads.
///
/// Open one `Store` per directory per process: two would exclude each other like two
/// processes, so a thread holding one's [`Lock`] would wait forever in the other's
/// [`snapshot`](Store::snapshot).
pub struct Store {
    dir: PathBuf,
    /// The directory, kept open to `fsync` it after each rename.
    dir_file: File,
    /// `lock`, kept open so that [`Store::generation`] is a single `pread`.
    gen_file: File,
    key: Zeroizing<[u8; KEY_LEN]>,
    /// The thread holding this store's [`Lock`], if one does.
    owner: Mutex<Option<ThreadId>>,
    /// Makes temp file names unique within the process.
    temp_seq: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Which record a sealed file holds; sealed into the associated data so a file cannot stand in
/// for another.
#[derive(Debug, Clone, Copy)]
enum Kind {
    NextId,
    Meta,
    Object(u64),
}

impl Kind {
    fn aad(self) -> Vec<u8> {
        let (name, id): (&[u8], u64) = match self {
            Kind::NextId => (b"next-id", 0),
            Kind::Meta => (b"meta", 0),
            Kind::Object(id) => (b"object", id),
        };
        let mut aad = Vec::with_capacity(HEADER.len() + name.len() + 9);
        aad.extend_from_slice(HEADER);
        aad.extend_from_slice(name);
        aad.push(0);
        aad.extend_from_slice(&id.to_be_bytes());
        aad
    }
}

fn object_name(id: u64) -> String {
    format!("{OBJECT_PREFIX}{id:016x}")
}

/// The id of an `obj-` file name, which must be exactly as [`object_name`] writes it.
fn parse_object_name(rest: &str) -> Option<u64> {
    let ok = rest.len() == 16 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        u64::from_str_radix(rest, 16).ok()
    } else {
        None
    }
}

fn open_lock_file(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(at(&path))
}

fn read_generation(lock_file: &File) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    // One pread; a file shorter than 8 bytes (a new store's) reads as zeros.
    lock_file.read_at(&mut bytes, 0)?;
    Ok(u64::from_le_bytes(bytes))
}

/// Reads `store.key`: `Ok(None)` if it does not exist.
fn read_key(path: &Path) -> Result<Option<Zeroizing<[u8; KEY_LEN]>>, StoreError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(corrupt(path, "is a symbolic link, not the key file"))
        }
        Err(e) => return Err(at(path)(e)),
    };
    let md = file.metadata().map_err(at(path))?;
    if !md.is_file() {
        return Err(corrupt(path, "is not a regular file"));
    }
    if md.len() != KEY_LEN as u64 {
        return Err(corrupt(
            path,
            format!("is {} bytes long; a store key is {KEY_LEN}", md.len()),
        ));
    }
    if md.mode() & 0o077 != 0 {
        log::warn!(
            "token store key {} is readable by others (mode {:o}); it should be 0600",
            path.display(),
            md.mode() & 0o777
        );
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    file.read_exact_at(&mut key[..], 0).map_err(at(path))?;
    Ok(Some(key))
}

impl Store {
    /// Opens (creating, mode 0700) the directory; creates `<dir>/store.key` (32 random bytes,
    /// 0600) on first use.
    ///
    /// Creation happens under the exclusive lock, so processes opening a new store at once
    /// agree on one key. A missing key in a store that has records is an error, not a new key
    /// (which would make every record unreadable).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .map_err(at(dir))?;
        let md = fs::metadata(dir).map_err(at(dir))?;
        if !md.is_dir() {
            return Err(at(dir)(io::Error::new(
                io::ErrorKind::NotADirectory,
                "not a directory",
            )));
        }
        if md.mode() & 0o077 != 0 {
            log::warn!(
                "token store directory {} is accessible to others (mode {:o}); it should be 0700",
                dir.display(),
                md.mode() & 0o777
            );
        }
        let dir_file = File::open(dir).map_err(at(dir))?;
        let gen_file = open_lock_file(dir)?;
        let key_path = dir.join(KEY_FILE);
        let key = match read_key(&key_path)? {
            Some(key) if dir.join(NEXT_ID_FILE).exists() => key,
            // A new store, or one whose creation a kill interrupted.
            _ => {
                let lock = open_lock_file(dir)?;
                lock.lock().map_err(at(&dir.join(LOCK_FILE)))?;
                Store::create(dir, &dir_file)?
            }
        };
        Ok(Store {
            dir: dir.to_path_buf(),
            dir_file,
            gen_file,
            key,
            owner: Mutex::new(None),
            temp_seq: AtomicU64::new(0),
        })
    }

    /// Under the exclusive lock: creates what a new store lacks (the key, then `next-id`).
    fn create(dir: &Path, dir_file: &File) -> Result<Zeroizing<[u8; KEY_LEN]>, StoreError> {
        let key_path = dir.join(KEY_FILE);
        let mut records = false;
        for entry in fs::read_dir(dir).map_err(at(dir))? {
            let name = entry.map_err(at(dir))?.file_name();
            let name = name.to_string_lossy();
            records |= name == META_FILE || name == NEXT_ID_FILE || name.starts_with(OBJECT_PREFIX);
        }
        let key = match read_key(&key_path)? {
            Some(key) => key,
            None if records => {
                return Err(corrupt(
                    &key_path,
                    "is missing, but the store has records sealed under it",
                ))
            }
            None => {
                let mut key = Zeroizing::new([0u8; KEY_LEN]);
                OsRng.fill_bytes(&mut key[..]);
                let seq = AtomicU64::new(0);
                write_atomic(dir, dir_file, &seq, KEY_FILE, &key[..])?;
                // The directory's own entry, new too, must survive a power cut with the key.
                // Best effort: the parent may not be ours to open.
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    let _ = File::open(parent).and_then(|f| f.sync_all());
                }
                key
            }
        };
        if !dir.join(NEXT_ID_FILE).exists() {
            if records {
                // Objects or meta without next-id: the ids in use are unknown, so refuse rather
                // than hand out one again. (`next_id` says so; reading still works.)
                log::warn!("token store {}: {NEXT_ID_FILE} is missing", dir.display());
            } else {
                let body = seal_record(&key, Kind::NextId, &1u64.to_le_bytes());
                write_atomic(dir, dir_file, &AtomicU64::new(0), NEXT_ID_FILE, &body)?;
            }
        }
        Ok(key)
    }

    /// An exclusive lock for changes; blocks until other processes' changes are done.
    ///
    /// A thread that already holds this store's lock gets an error (`WouldBlock`) instead of
    /// waiting for itself forever.
    pub fn lock(&self) -> Result<Lock<'_>, StoreError> {
        let me = std::thread::current().id();
        if *self.owner.lock() == Some(me) {
            return Err(StoreError::Io(io::Error::new(
                io::ErrorKind::WouldBlock,
                "this thread already holds the token store's lock",
            )));
        }
        let file = open_lock_file(&self.dir)?;
        file.lock().map_err(at(&self.dir.join(LOCK_FILE)))?;
        *self.owner.lock() = Some(me);
        Ok(Lock {
            store: self,
            file,
            _on_this_thread: PhantomData,
        })
    }

    /// Cheap (at most one or two system calls): changes whenever any process committed a
    /// change.
    ///
    /// One `pread` of the counter in `lock` (see the module doc). Changes are
    /// [`set_meta`](Store::set_meta), [`put_object`](Store::put_object) and a
    /// [`delete_object`](Store::delete_object) that removed something; not
    /// [`next_id`](Store::next_id), which changes nothing a snapshot shows.
    pub fn generation(&self) -> Result<u64, StoreError> {
        read_generation(&self.gen_file).map_err(|e| at(&self.dir.join(LOCK_FILE))(e))
    }

    /// Everything, consistent (taken under a shared lock): token metadata blob and every
    /// object record.
    ///
    /// Called by the thread holding this store's [`Lock`], it reads under that lock (and sees
    /// that thread's changes). Any record that does not authenticate makes the whole snapshot
    /// [`StoreError::Corrupt`], naming the file.
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mine = *self.owner.lock() == Some(std::thread::current().id());
        let _shared = if mine {
            None
        } else {
            let file = open_lock_file(&self.dir)?;
            file.lock_shared().map_err(at(&self.dir.join(LOCK_FILE)))?;
            Some(file)
        };
        let generation = self.generation()?;
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(at(&self.dir))? {
            let entry = entry.map_err(at(&self.dir))?;
            // Names that are not UTF-8 are none of ours.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        // Sorted, so that objects come by id and the same damage is always reported alike.
        names.sort_unstable();
        let mut meta = None;
        let mut objects = Vec::with_capacity(names.len());
        for name in &names {
            let path = self.dir.join(name);
            if name == META_FILE {
                meta = Some(self.read_record(&path, Kind::Meta)?);
            } else if let Some(rest) = name.strip_prefix(OBJECT_PREFIX) {
                let id = parse_object_name(rest)
                    .ok_or_else(|| corrupt(&path, "is not a valid object file name"))?;
                objects.push((id, self.read_record(&path, Kind::Object(id))?));
            } else if name.starts_with(TEMP_PREFIX) {
                // No writer is active under the shared lock (or ours, and this thread is not
                // writing): the temp file is a killed writer's.
                let _ = fs::remove_file(&path);
            }
        }
        Ok(Snapshot {
            generation,
            meta,
            objects,
        })
    }

    /// Replaces the token metadata blob.
    pub fn set_meta(&self, lock: &Lock<'_>, meta: &[u8]) -> Result<(), StoreError> {
        self.check(lock)?;
        let body = seal_record(&self.key, Kind::Meta, meta);
        self.bump(lock)?;
        self.write(META_FILE, &body)
    }

    /// Creates or replaces object `id`'s record.
    pub fn put_object(&self, lock: &Lock<'_>, id: u64, record: &[u8]) -> Result<(), StoreError> {
        self.check(lock)?;
        let body = seal_record(&self.key, Kind::Object(id), record);
        self.bump(lock)?;
        self.write(&object_name(id), &body)
    }

    /// Removes object `id`'s record; an id without one is not an error (and not a change).
    pub fn delete_object(&self, lock: &Lock<'_>, id: u64) -> Result<(), StoreError> {
        self.check(lock)?;
        let path = self.dir.join(object_name(id));
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(at(&path)(e)),
            Ok(_) => {}
        }
        self.bump(lock)?;
        fs::remove_file(&path).map_err(at(&path))?;
        self.dir_file.sync_all().map_err(at(&self.dir))
    }

    /// A fresh object id (never reused, also across processes).
    ///
    /// The counter in `next-id` is durably advanced before the id is returned, so not even a
    /// crash hands an id out twice (a crash may skip ids). Ids start at 1.
    pub fn next_id(&self, lock: &Lock<'_>) -> Result<u64, StoreError> {
        self.check(lock)?;
        let path = self.dir.join(NEXT_ID_FILE);
        let value = match self.read_record(&path, Kind::NextId) {
            Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt(&path, "is missing (the ids in use are unknown)"))
            }
            other => other?,
        };
        let id = <[u8; 8]>::try_from(value.as_slice())
            .map(u64::from_le_bytes)
            .map_err(|_| corrupt(&path, format!("holds {} bytes, not 8", value.len())))?;
        let next = id
            .checked_add(1)
            .ok_or_else(|| corrupt(&path, "the id counter is exhausted"))?;
        let body = seal_record(&self.key, Kind::NextId, &next.to_le_bytes());
        self.write(NEXT_ID_FILE, &body)?;
        Ok(id)
    }

    /// Refuses a lock taken on another store (it would not exclude this one's writers).
    fn check(&self, lock: &Lock<'_>) -> Result<(), StoreError> {
        if std::ptr::eq(lock.store, self) {
            Ok(())
        } else {
            Err(StoreError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the lock given belongs to another token store",
            )))
        }
    }

    /// Advances the generation; done before each change (see the module doc).
    fn bump(&self, lock: &Lock<'_>) -> Result<(), StoreError> {
        let path = self.dir.join(LOCK_FILE);
        let generation = read_generation(&lock.file).map_err(at(&path))?;
        lock.file
            .write_all_at(&generation.wrapping_add(1).to_le_bytes(), 0)
            .map_err(at(&path))
    }

    fn write(&self, name: &str, body: &[u8]) -> Result<(), StoreError> {
        write_atomic(&self.dir, &self.dir_file, &self.temp_seq, name, body)
    }

    /// Reads and authenticates one sealed file.
    fn read_record(&self, path: &Path, kind: Kind) -> Result<Vec<u8>, StoreError> {
        let body = fs::read(path).map_err(at(path))?;
        let sealed = body
            .strip_prefix(HEADER.as_slice())
            .ok_or_else(|| corrupt(path, "does not start with the store's header"))?;
        let mut plain = unseal(&self.key, &kind.aad(), sealed).map_err(|why| corrupt(path, why))?;
        // Moved out, not copied: the caller owns the only copy.
        Ok(std::mem::take(&mut *plain))
    }
}

/// The content of a sealed file: header and [`seal`].
fn seal_record(key: &[u8; KEY_LEN], kind: Kind, record: &[u8]) -> Vec<u8> {
    let mut body = HEADER.to_vec();
    body.extend_from_slice(&seal(key, &kind.aad(), record));
    body
}

/// Replaces `dir/name` with `body` atomically and durably: temp file (O_EXCL, 0600), fsync,
/// rename, fsync of the directory. On failure the temp file is removed.
fn write_atomic(
    dir: &Path,
    dir_file: &File,
    seq: &AtomicU64,
    name: &str,
    body: &[u8],
) -> Result<(), StoreError> {
    let (temp_path, mut file) = loop {
        let temp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}-{:08x}",
            std::process::id(),
            seq.fetch_add(1, Ordering::Relaxed),
            OsRng.next_u32()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)
        {
            Ok(f) => break (temp, f),
            // Left by a killed process that had this pid: another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(at(&temp)(e)),
        }
    };
    let target = dir.join(name);
    let result = file
        .write_all(body)
        .and_then(|()| file.sync_all())
        .map_err(at(&temp_path))
        .and_then(|()| fs::rename(&temp_path, &target).map_err(at(&target)));
    drop(file);
    if let Err(e) = result {
        let _ = fs::remove_file(&temp_path);
        return Err(e);
    }
    dir_file.sync_all().map_err(at(dir))
}

/// AES-256-GCM with a random 96-bit nonce: nonce || ciphertext || tag. `aad` binds a record to
/// its place.
///
/// Random nonces are safe for far more records than a token store ever writes under one key
/// (the bound is about 2^32 seals).
pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    // Encrypted in place in the output: no other copy of the plaintext is made.
    // The only failure is a plaintext over 64 GiB.
    let tag = cipher
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), aad, &mut out[NONCE_LEN..])
        .unwrap_or_else(|_| unreachable!("AES-GCM plaintext over 64 GiB"));
    out.extend_from_slice(&tag);
    out
}

/// Opens what [`seal`] made with the same key and `aad`. Anything else (altered, truncated,
/// another key or place) is [`StoreError::Corrupt`]; as no file is involved, its `file` is
/// empty.
pub fn open_sealed(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    unseal(key, aad, sealed).map_err(|why| corrupt(Path::new(""), why))
}

fn unseal(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, &'static str> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err("too short to hold a sealed record (truncated)");
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
    let cipher = Aes256Gcm::new(key.into());
    let mut plain = Zeroizing::new(ciphertext.to_vec());
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            aad,
            &mut plain[..],
            Tag::from_slice(tag),
        )
        .map_err(|_| {
            "does not authenticate: altered, truncated, moved from another place, or not \
             sealed with this store's key"
        })?;
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, Instant};

    fn new_store() -> (tempfile::TempDir, PathBuf, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("token");
        let store = Store::open(&dir).unwrap();
        (tmp, dir, store)
    }

    fn put(store: &Store, id: u64, record: &[u8]) {
        let lock = store.lock().unwrap();
        store.put_object(&lock, id, record).unwrap();
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn corrupt_file(result: Result<Snapshot, StoreError>) -> PathBuf {
        match result {
            Err(StoreError::Corrupt { file, why }) => {
                assert!(!why.is_empty());
                file
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    fn flip(path: &Path, at: usize) {
        let mut bytes = fs::read(path).unwrap();
        bytes[at] ^= 0x01;
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
        check::<StoreError>();
        check::<Snapshot>();
    }

    #[test]
    fn round_trip() {
        let (_tmp, dir, store) = new_store();
        let empty = store.snapshot().unwrap();
        assert_eq!(empty.meta, None);
        assert!(empty.objects.is_empty());
        {
            let lock = store.lock().unwrap();
            store.set_meta(&lock, b"token meta").unwrap();
            let a = store.next_id(&lock).unwrap();
            let b = store.next_id(&lock).unwrap();
            let c = store.next_id(&lock).unwrap();
            store.put_object(&lock, a, b"object a").unwrap();
            store.put_object(&lock, b, b"").unwrap();
            store.put_object(&lock, c, &vec![7u8; 100_000]).unwrap();
            store.put_object(&lock, a, b"object a, again").unwrap();
            store.delete_object(&lock, c).unwrap();
            store.set_meta(&lock, b"token meta 2").unwrap();
        }
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.meta.as_deref(), Some(&b"token meta 2"[..]));
        assert_eq!(
            snap.objects,
            vec![(1, b"object a, again".to_vec()), (2, Vec::new())]
        );
        // Another store on the same directory (another process's view) reads the same.
        drop(store);
        let again = Store::open(&dir).unwrap();
        assert_eq!(again.snapshot().unwrap(), snap);
        let lock = again.lock().unwrap();
        assert_eq!(again.next_id(&lock).unwrap(), 4);
    }

    #[test]
    fn generation_changes_on_every_change_and_not_otherwise() {
        let (_tmp, dir, store) = new_store();
        let other = Store::open(&dir).unwrap();
        let mut last = store.generation().unwrap();
        let mut changed = |expect: bool| {
            let now = other.generation().unwrap();
            assert_eq!(now != last, expect, "generation {last} -> {now}");
            assert_eq!(store.generation().unwrap(), now);
            last = now;
        };
        store.snapshot().unwrap();
        changed(false);
        let lock = store.lock().unwrap();
        changed(false);
        let id = store.next_id(&lock).unwrap();
        changed(false);
        store.put_object(&lock, id, b"x").unwrap();
        changed(true);
        store.put_object(&lock, id, b"y").unwrap();
        changed(true);
        store.set_meta(&lock, b"m").unwrap();
        changed(true);
        store.delete_object(&lock, id).unwrap();
        changed(true);
        store.delete_object(&lock, id).unwrap();
        changed(false);
        drop(lock);
        changed(false);
        let snap = other.snapshot().unwrap();
        assert_eq!(snap.generation, store.generation().unwrap());
    }

    #[test]
    fn next_id_is_unique_across_stores_and_threads() {
        let (_tmp, dir, store) = new_store();
        let ids = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                let dir = &dir;
                let ids = &ids;
                s.spawn(move || {
                    let own = Store::open(dir).unwrap();
                    for _ in 0..25 {
                        let lock = own.lock().unwrap();
                        ids.lock().push(own.next_id(&lock).unwrap());
                    }
                });
            }
            // And threads sharing one store.
            for _ in 0..2 {
                let store = &store;
                let ids = &ids;
                s.spawn(move || {
                    for _ in 0..25 {
                        let lock = store.lock().unwrap();
                        ids.lock().push(store.next_id(&lock).unwrap());
                    }
                });
            }
        });
        let mut ids = ids.into_inner();
        ids.sort_unstable();
        assert_eq!(ids, (1..=150).collect::<Vec<u64>>());
    }

    #[test]
    fn flipped_byte_in_an_object_file_is_corrupt() {
        let (_tmp, dir, store) = new_store();
        put(&store, 1, b"one");
        put(&store, 2, b"two");
        let path = dir.join("obj-0000000000000002");
        let len = fs::metadata(&path).unwrap().len() as usize;
        // Header, nonce, ciphertext and tag: each is covered.
        for at in [0, 4, 5, 10, 17, 20, len - 1] {
            let before = fs::read(&path).unwrap();
            flip(&path, at);
            assert_eq!(corrupt_file(store.snapshot()), path, "byte {at}");
            fs::write(&path, before).unwrap();
            store.snapshot().unwrap();
        }
    }

    #[test]
    fn flipped_byte_in_the_meta_file_is_corrupt() {
        let (_tmp, dir, store) = new_store();
        let lock = store.lock().unwrap();
        store.set_meta(&lock, b"metadata").unwrap();
        drop(lock);
        let path = dir.join(META_FILE);
        flip(&path, 25);
        assert_eq!(corrupt_file(store.snapshot()), path);
    }

    #[test]
    fn swapped_object_files_are_corrupt() {
        let (_tmp, dir, store) = new_store();
        put(&store, 1, b"one");
        put(&store, 2, b"two");
        let (a, b) = (dir.join(object_name(1)), dir.join(object_name(2)));
        let (one, two) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
        fs::write(&a, &two).unwrap();
        fs::write(&b, &one).unwrap();
        assert_eq!(corrupt_file(store.snapshot()), a);
        // One copied over the other.
        fs::write(&a, &one).unwrap();
        assert_eq!(corrupt_file(store.snapshot()), b);
        // An object file where the meta file belongs, and the next-id file read as an object.
        fs::write(&b, &two).unwrap();
        fs::write(dir.join(META_FILE), &one).unwrap();
        assert_eq!(corrupt_file(store.snapshot()), dir.join(META_FILE));
        fs::remove_file(dir.join(META_FILE)).unwrap();
        fs::copy(dir.join(NEXT_ID_FILE), dir.join(object_name(3))).unwrap();
        assert_eq!(corrupt_file(store.snapshot()), dir.join(object_name(3)));
        // And the other way round: next_id refuses an object file in its place.
        fs::copy(&a, dir.join(NEXT_ID_FILE)).unwrap();
        let lock = store.lock().unwrap();
        match store.next_id(&lock) {
            Err(StoreError::Corrupt { file, .. }) => assert_eq!(file, dir.join(NEXT_ID_FILE)),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn a_record_from_another_store_is_corrupt() {
        let (_tmp, dir, store) = new_store();
        let (_tmp2, dir2, store2) = new_store();
        put(&store, 1, b"one");
        put(&store2, 1, b"one");
        fs::copy(dir2.join(object_name(1)), dir.join(object_name(1))).unwrap();
        assert_eq!(corrupt_file(store.snapshot()), dir.join(object_name(1)));
    }

    #[test]
    fn truncated_files_are_corrupt() {
        let (_tmp, dir, store) = new_store();
        put(&store, 1, b"a record of some length");
        let path = dir.join(object_name(1));
        let len = fs::metadata(&path).unwrap().len();
        let whole = fs::read(&path).unwrap();
        for keep in [len - 1, len - 16, 20, 5, 3, 0] {
            fs::write(&path, &whole[..keep as usize]).unwrap();
            assert_eq!(corrupt_file(store.snapshot()), path, "kept {keep} bytes");
        }
        fs::write(&path, &whole).unwrap();
        let lock = store.lock().unwrap();
        store.set_meta(&lock, b"meta").unwrap();
        drop(lock);
        let meta = dir.join(META_FILE);
        let whole = fs::read(&meta).unwrap();
        fs::write(&meta, &whole[..whole.len() - 1]).unwrap();
        assert_eq!(corrupt_file(store.snapshot()), meta);
    }

    #[test]
    fn bad_object_file_names_are_corrupt() {
        let (_tmp, dir, store) = new_store();
        put(&store, 1, b"one");
        let odd = dir.join("obj-1");
        fs::copy(dir.join(object_name(1)), &odd).unwrap();
        assert_eq!(corrupt_file(store.snapshot()), odd);
        fs::remove_file(&odd).unwrap();
        // Files that are none of the store's are left alone.
        fs::write(dir.join("README"), b"hello").unwrap();
        assert_eq!(store.snapshot().unwrap().objects.len(), 1);
    }

    #[test]
    fn stray_temp_files_are_ignored_and_removed() {
        let (_tmp, dir, store) = new_store();
        put(&store, 1, b"one");
        let stray = dir.join(".tmp-4242-0-deadbeef");
        fs::write(&stray, b"half a rec").unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.objects, vec![(1, b"one".to_vec())]);
        assert!(!stray.exists());
        // And a write after a stray with a name the writer might pick still works.
        fs::write(&stray, b"").unwrap();
        put(&store, 2, b"two");
        assert_eq!(store.snapshot().unwrap().objects.len(), 2);
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with(TEMP_PREFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn permissions() {
        let (_tmp, dir, store) = new_store();
        let lock = store.lock().unwrap();
        store.set_meta(&lock, b"m").unwrap();
        let id = store.next_id(&lock).unwrap();
        store.put_object(&lock, id, b"o").unwrap();
        drop(lock);
        assert_eq!(mode(&dir), 0o700);
        for name in [
            KEY_FILE,
            LOCK_FILE,
            NEXT_ID_FILE,
            META_FILE,
            &object_name(id),
        ] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        assert_eq!(fs::metadata(dir.join(KEY_FILE)).unwrap().len(), 32);
    }

    #[test]
    fn bad_key_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        drop(Store::open(&dir).unwrap());
        let key = dir.join(KEY_FILE);
        let good = fs::read(&key).unwrap();
        let refused = |why: &str| match Store::open(&dir) {
            Err(StoreError::Corrupt { file, .. }) => assert_eq!(file, key, "{why}"),
            other => panic!("{why}: expected Corrupt, got {other:?}"),
        };
        fs::write(&key, &good[..31]).unwrap();
        refused("short");
        fs::remove_file(&key).unwrap();
        fs::create_dir(&key).unwrap();
        refused("directory");
        fs::remove_dir(&key).unwrap();
        fs::write(tmp.path().join("k"), &good).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("k"), &key).unwrap();
        refused("symlink");
        fs::remove_file(&key).unwrap();
        // Missing while records exist: not a new key.
        refused("missing");
        // Readable by others: a warning only.
        fs::write(&key, &good).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        Store::open(&dir).unwrap();
    }

    #[test]
    fn locks_between_threads_and_stores() {
        let (_tmp, dir, store) = new_store();
        let other = Store::open(&dir).unwrap();
        let lock = store.lock().unwrap();
        // A lock of another store is refused; nesting on one thread is an error, not a hang.
        assert!(matches!(
            other.put_object(&lock, 1, b"x"),
            Err(StoreError::Io(_))
        ));
        assert!(matches!(store.lock(), Err(StoreError::Io(_))));
        store.put_object(&lock, 1, b"first").unwrap();
        // The lock holder's own snapshot sees its changes.
        assert_eq!(store.snapshot().unwrap().objects.len(), 1);
        std::thread::scope(|s| {
            let reader = s.spawn(|| store.snapshot().unwrap());
            let reader2 = s.spawn(|| other.snapshot().unwrap());
            std::thread::sleep(Duration::from_millis(100));
            assert!(!reader.is_finished() && !reader2.is_finished());
            store.put_object(&lock, 2, b"second").unwrap();
            drop(lock);
            // Neither saw half the change.
            assert_eq!(reader.join().unwrap().objects.len(), 2);
            assert_eq!(reader2.join().unwrap().objects.len(), 2);
        });
        drop(store.lock().unwrap());
        drop(other.lock().unwrap());
    }

    #[test]
    fn seal_round_trip_and_tampering() {
        let key = [9u8; 32];
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = seal(&key, b"place", &plain);
            assert_eq!(sealed.len(), 12 + len + 16);
            assert_eq!(*open_sealed(&key, b"place", &sealed).unwrap(), plain);
            assert_ne!(seal(&key, b"place", &plain), sealed, "fresh nonce");
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x80;
                assert!(matches!(
                    open_sealed(&key, b"place", &bad),
                    Err(StoreError::Corrupt { .. })
                ));
            }
            for cut in 0..sealed.len() {
                assert!(open_sealed(&key, b"place", &sealed[..cut]).is_err());
            }
            assert!(open_sealed(&key, b"other place", &sealed).is_err());
            assert!(open_sealed(&[8u8; 32], b"place", &sealed).is_err());
        }
    }

    /// Writes `n` object files as the store would, without a sync per file (this measures the
    /// reading side).
    fn fill(dir: &Path, store: &Store, n: u64) {
        for id in 1..=n {
            let body = seal_record(&store.key, Kind::Object(id), &[id as u8; 200]);
            fs::write(dir.join(object_name(id)), body).unwrap();
        }
    }

    #[test]
    fn snapshot_and_generation_are_fast() {
        let (_tmp, dir, store) = new_store();
        fill(&dir, &store, 10_000);
        let start = Instant::now();
        let snap = store.snapshot().unwrap();
        let took = start.elapsed();
        assert_eq!(snap.objects.len(), 10_000);
        // Well under a second even unoptimised (about 0.1 s in release).
        assert!(
            took < Duration::from_secs(2),
            "snapshot of 10,000: {took:?}"
        );
        let start = Instant::now();
        for _ in 0..10_000 {
            store.generation().unwrap();
        }
        let each = start.elapsed() / 10_000;
        assert!(each < Duration::from_micros(50), "generation(): {each:?}");
        eprintln!("snapshot of 10,000 objects: {took:?}; generation(): {each:?}");
    }
}
