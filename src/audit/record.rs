//! Audit records: typed, so that they cannot carry a secret.
//!
//! A record holds numbers, `&'static` names, and the labels and ids of objects; there is no
//! field that could take a PIN, a key value, plaintext or ciphertext. Calls fill a [`Record`]
//! on their own stack; the writer thread turns it into text ([`super::format`]).

use std::borrow::Cow;
use std::sync::Arc;

use pkcs11_sys::*;

use super::keys::{KeyCache, KeyInfo};
use crate::router::slots::SlotEntry;

/// What a record is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Event {
    /// A PKCS#11 call.
    #[default]
    Call,
    /// `C_Initialize` succeeded: configuration, upstreams and app.
    Init,
    /// `C_Finalize`.
    Finalize,
    /// An upstream module was loaded.
    Load,
    /// The configuration could not be used.
    ConfigError,
    /// Records were dropped (queue full under `on_overflow = "drop"`, or during an outage).
    Dropped,
    /// A sink was down and is back.
    Outage,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Call => "call",
            Event::Init => "init",
            Event::Finalize => "finalize",
            Event::Load => "load",
            Event::ConfigError => "config_error",
            Event::Dropped => "dropped",
            Event::Outage => "outage",
        }
    }
}

/// The slot a call went to. The token label is looked up by the writer thread.
#[derive(Debug, Clone, Copy)]
pub struct SlotRef {
    /// The slot id the application used.
    pub id: CK_SLOT_ID,
    pub upstream: &'static str,
    pub entry: &'static SlotEntry,
}

/// An object a call used or made: its handle, and what the key cache knows of it.
#[derive(Debug, Clone, Default)]
pub struct ObjectRef {
    pub handle: CK_OBJECT_HANDLE,
    /// Label, id and class, when the call itself knew them (a template, or a destroyed object).
    pub info: Option<Arc<KeyInfo>>,
}

/// One audit record. Every field but `event`, `time_us` and `app` is optional.
#[derive(Debug, Default)]
pub struct Record {
    pub event: Event,
    /// Microseconds since the Unix epoch, when the call started.
    pub time_us: u64,
    pub app: Cow<'static, str>,
    pub function: Option<&'static str>,
    pub rv: Option<CK_RV>,
    pub duration_us: Option<u64>,
    pub slot: Option<SlotRef>,
    pub session: Option<CK_SESSION_HANDLE>,
    pub user: Option<CK_USER_TYPE>,
    pub mechanism: Option<CK_MECHANISM_TYPE>,
    pub key: Option<ObjectRef>,
    pub object: Option<ObjectRef>,
    pub public: Option<CK_OBJECT_HANDLE>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub parts: Option<u64>,
    /// Attribute types of the call's template (never their values).
    pub attrs: Option<Box<[CK_ATTRIBUTE_TYPE]>>,
    pub rw: Option<bool>,
    /// The policy rule that refused the call.
    pub refused: Option<Box<str>>,
    /// Why an operation ended other than by its own call (`session_closed`).
    pub ended: Option<&'static str>,
    pub count: Option<u64>,
    /// `C_DestroyObject`: the writer forgets `object` once this record (and every earlier one,
    /// which may name it) is written.
    pub forget_object: bool,
    /// Which backend's handles `key` and `object` are, for the writer's cache lookup.
    pub keys: Option<(&'static KeyCache, usize)>,
    /// Free text of lifecycle events (configuration path, error text); never call data.
    pub msg: Option<Box<str>>,
    pub path: Option<Box<str>>,
    pub sink: Option<&'static str>,
    pub since_us: Option<u64>,
    pub delayed: Option<u64>,
    pub denied: Option<u64>,
    /// `event=load`: the upstream's name.
    pub upstream: Option<Box<str>>,
}

impl Record {
    /// A lifecycle record (not a call) for `app`, stamped now.
    pub fn note(event: Event, app: Cow<'static, str>) -> Record {
        Record {
            event,
            time_us: now_us(),
            app,
            ..Record::default()
        }
    }

    /// The syslog severity: info for success, notice for other results, warning for refusals,
    /// drops, outages and configuration errors.
    pub fn severity(&self) -> u8 {
        match self.event {
            Event::ConfigError => 3,
            Event::Dropped | Event::Outage => 4,
            _ if self.refused.is_some() => 4,
            _ => match self.rv {
                Some(rv) if rv != CKR_OK => 5,
                _ => 6,
            },
        }
    }
}

/// Microseconds since the Unix epoch.
#[inline]
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_record_is_small_enough_to_queue_by_value() {
        let size = std::mem::size_of::<super::Record>();
        assert!(size <= 512, "{size}");
        eprintln!("Record: {size} bytes");
    }
}
