//! The soft token's on-disk store. Placeholder with the agreed interface until it is written.
#![allow(unused_variables, dead_code)]

use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum StoreError {
    Io(std::io::Error),
    Corrupt { file: PathBuf, why: String },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Debug)]
pub struct Store;
#[derive(Debug)]
pub struct Lock<'a>(&'a Store);
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub meta: Option<Vec<u8>>,
    pub objects: Vec<(u64, Vec<u8>)>,
}

fn no() -> StoreError {
    StoreError::Io(std::io::ErrorKind::Unsupported.into())
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Err(no())
    }
    pub fn lock(&self) -> Result<Lock<'_>, StoreError> {
        Err(no())
    }
    pub fn generation(&self) -> Result<u64, StoreError> {
        Err(no())
    }
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Err(no())
    }
    pub fn set_meta(&self, lock: &Lock<'_>, meta: &[u8]) -> Result<(), StoreError> {
        Err(no())
    }
    pub fn put_object(&self, lock: &Lock<'_>, id: u64, record: &[u8]) -> Result<(), StoreError> {
        Err(no())
    }
    pub fn delete_object(&self, lock: &Lock<'_>, id: u64) -> Result<(), StoreError> {
        Err(no())
    }
    pub fn next_id(&self, lock: &Lock<'_>) -> Result<u64, StoreError> {
        Err(no())
    }
}

pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    Vec::new()
}

pub fn open_sealed(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreError> {
    Err(no())
}
