//! The audit trail: one typed record per security-relevant call, written by a writer thread
//! to syslog (RFC 5424) and/or a JSON-lines file with an HMAC chain. See README "Audit trail".
//!
//! - [`record`]: the typed record (it has no field that could hold a secret).
//! - [`Call`]: what an exported function fills in while it runs; [`Call::finish`] decides
//!   whether it is a record (one per operation, not per `*Update`) and queues it.
//! - [`keys`]: labels and ids of objects, learnt from templates, for records.
//! - [`ops`]: open multi-part operations per session.
//! - [`pipeline`]: the bounded queue, and starting and stopping the [`writer`] thread, which
//!   writes to the [`syslog`] and [`file`] sinks; [`format`] turns records into text, [`chain`]
//!   makes files tamper-evident.
//! - [`summary`]: `p11gate audit summary`.

pub mod chain;
pub mod file;
pub mod format;
pub mod keys;
pub mod ops;
pub mod pipeline;
pub mod record;
pub mod summary;
pub mod syslog;
pub mod writer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use pkcs11_sys::*;

use crate::error::{Error, Result};
use crate::ffi::args::{OutBuf, Template};
use crate::router::Session;
use crate::runtime::Runtime;
use keys::{KeyCache, KeyInfo};
use ops::{OpKind, Operations};
use pipeline::Pipeline;
use record::{now_us, ObjectRef, Record, SlotRef};

const FIND_SHARDS: usize = 16;

/// A runtime's audit state: what it knows of objects, and open operations per session.
#[derive(Debug)]
pub struct Auditor {
    pub keys: KeyCache,
    pub ops: Operations,
    /// What each session's current `C_FindObjectsInit` searched for, by session entry.
    finds: Vec<Mutex<HashMap<usize, Arc<KeyInfo>>>>,
}

impl Default for Auditor {
    fn default() -> Self {
        Auditor {
            keys: KeyCache::default(),
            ops: Operations::default(),
            finds: (0..FIND_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }
}

impl Auditor {
    fn finds(&self, session: usize) -> &Mutex<HashMap<usize, Arc<KeyInfo>>> {
        &self.finds[session % FIND_SHARDS]
    }

    /// Writes a record for each operation `session` still had open, ended by `why`
    /// (`session_closed`, `finalize`); `like` gives the time, app, slot and key cache.
    pub fn end_open_operations(
        &self,
        like: &Record,
        session: CK_SESSION_HANDLE,
        why: &'static str,
    ) {
        let index = crate::router::sessions::entry_index(session);
        self.finds(index).lock().remove(&index);
        let Some(p) = pipeline::current() else {
            self.ops.end_all(index);
            return;
        };
        for (kind, t) in self.ops.end_all(index) {
            p.submit(Record {
                event: record::Event::Call,
                time_us: like.time_us,
                app: like.app.clone(),
                function: Some(kind.init_function()),
                rv: Some(CKR_OK),
                duration_us: Some(t.micros),
                slot: like.slot,
                session: Some(session),
                mechanism: t.mechanism,
                key: Some(ObjectRef {
                    handle: t.key,
                    info: None,
                }),
                bytes_in: Some(t.bytes_in),
                bytes_out: Some(t.bytes_out),
                parts: Some(t.parts),
                keys: like.keys,
                ended: Some(why),
                ..Record::default()
            });
        }
    }
}

/// Whether, and how, a call becomes a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A record of its own.
    Record,
    /// A record only when it fails (`C_FindObjects`, length queries).
    OnError,
    /// Starts an operation: a record only when it fails.
    Init(OpKind),
    /// Continues one: a failure ends the operation and is its record.
    Update(OpKind),
    /// May end one: the operation's record, unless this was a length query or too small.
    End(OpKind),
    /// A 3.0 per-message call: a record with the operation's mechanism and key.
    Message(OpKind),
}

/// The record an exported function fills in while it runs.
#[derive(Debug)]
pub struct Call {
    pipeline: Option<&'static Pipeline>,
    auditor: &'static Auditor,
    /// The record, when audit is on: out of line, so that a call with audit off neither
    /// builds nor moves its 500 bytes.
    pub record: Option<Box<Record>>,
    phase: Phase,
    /// The session's entry in the session table, and its backend.
    session: Option<(usize, usize)>,
    /// A length query (NULL output): does not end an operation.
    query: bool,
}

/// The `CKR_FUNCTION_FAILED` of `on_failure = "deny"`.
pub const AUDIT_DOWN: Error = Error::Backend(CKR_FUNCTION_FAILED);

impl Call {
    /// Starts a call's record; refused while a sink is down under `on_failure = "deny"`.
    #[inline]
    pub fn start(function: &'static str, rt: &'static Runtime) -> Result<Call> {
        let pipeline = pipeline::current();
        let record = match pipeline {
            None => None,
            Some(p) => {
                if !p.admits() {
                    return Err(AUDIT_DOWN);
                }
                Some(Box::new(Record {
                    time_us: now_us(),
                    app: std::borrow::Cow::Borrowed(rt.router.app()),
                    function: Some(function),
                    ..Record::default()
                }))
            }
        };
        Ok(Call {
            pipeline,
            auditor: &rt.audit,
            record,
            phase: Phase::Record,
            session: None,
            query: false,
        })
    }

    /// Whether records are written at all (skip work that only feeds them).
    #[inline]
    pub fn on(&self) -> bool {
        self.pipeline.is_some()
    }

    /// The session the call uses.
    #[inline]
    pub fn session(&mut self, s: &Session<'static>, handle: CK_SESSION_HANDLE) {
        self.session = Some((
            crate::router::sessions::entry_index(handle),
            s.entry.backend,
        ));
        if let Some(r) = self.record.as_deref_mut() {
            r.session = Some(handle);
            r.slot = Some(SlotRef {
                id: s.slot,
                upstream: s.backend.name(),
                entry: s.entry,
            });
            r.keys = Some((&self.auditor.keys, s.entry.backend));
        }
    }

    /// The slot a slot-level call uses (`C_OpenSession`, `C_InitToken`).
    pub fn slot(
        &mut self,
        id: CK_SLOT_ID,
        upstream: &'static str,
        entry: &'static crate::router::slots::SlotEntry,
    ) {
        if let Some(r) = self.record.as_deref_mut() {
            r.slot = Some(SlotRef {
                id,
                upstream,
                entry,
            });
        }
    }

    #[inline]
    pub fn mechanism(&mut self, m: CK_MECHANISM_TYPE) {
        if let Some(r) = self.record.as_deref_mut() {
            r.mechanism = Some(m);
        }
    }

    #[inline]
    pub fn key(&mut self, handle: CK_OBJECT_HANDLE) {
        if let Some(r) = self.record.as_deref_mut() {
            r.key = Some(ObjectRef { handle, info: None });
        }
    }

    /// The object the call makes, reads, changes or destroys.
    pub fn object(&mut self, handle: CK_OBJECT_HANDLE) {
        if let Some(r) = self.record.as_deref_mut() {
            r.object = Some(ObjectRef { handle, info: None });
        }
    }

    #[inline]
    pub fn bytes(&mut self, bytes_in: u64, bytes_out: u64) {
        if let Some(r) = self.record.as_deref_mut() {
            r.bytes_in = Some(bytes_in);
            r.bytes_out = Some(bytes_out);
        }
    }

    pub fn user(&mut self, user: CK_USER_TYPE) {
        if let Some(r) = self.record.as_deref_mut() {
            r.user = Some(user);
        }
    }

    /// The attribute types of a template (never their values).
    pub fn attrs(&mut self, t: &Template<'_>) {
        if let Some(r) = self.record.as_deref_mut() {
            r.attrs = Some(t.attributes().iter().map(|a| a.type_).collect());
        }
    }

    pub fn rw(&mut self, rw: bool) {
        if let Some(r) = self.record.as_deref_mut() {
            r.rw = Some(rw);
        }
    }

    /// A record only if the call fails.
    pub fn only_errors(&mut self) {
        self.phase = Phase::OnError;
    }

    #[inline]
    pub fn init(&mut self, kind: OpKind) {
        self.phase = Phase::Init(kind);
    }

    #[inline]
    pub fn update(&mut self, kind: OpKind) {
        self.phase = Phase::Update(kind);
    }

    /// A call that ends the operation unless it is a length query (`query`).
    #[inline]
    pub fn end(&mut self, kind: OpKind, query: bool) {
        self.phase = Phase::End(kind);
        self.query = query;
    }

    pub fn message(&mut self, kind: OpKind) {
        self.phase = Phase::Message(kind);
    }

    /// A call that passes data through an operation and may write output: `ends` for the
    /// single-part and final calls. Runs `f` with the caller's output buffer and notes the bytes.
    #[inline]
    pub fn data(
        &mut self,
        kind: OpKind,
        ends: bool,
        bytes_in: CK_ULONG,
        output: &mut OutBuf<'_>,
        f: impl FnOnce(OutBuf<'_>) -> Result<()>,
    ) -> Result<()> {
        let query = output.is_length_query();
        if ends || query {
            self.end(kind, query);
        } else {
            self.update(kind);
        }
        let result = f(output.reborrow());
        let out = if result.is_ok() && !query {
            output.len_value()
        } else {
            0
        };
        self.bytes(if query { 0 } else { bytes_in }, out);
        result
    }

    /// What a template says of the object a call is about to make (None when audit is off).
    pub fn describe(&self, t: &Template<'_>) -> Option<KeyInfo> {
        if self.on() {
            KeyInfo::from_template(t)
        } else {
            None
        }
    }

    /// Like [`Call::describe`], for a call that always makes one class of object.
    pub fn describe_as(&self, t: &Template<'_>, class: CK_OBJECT_CLASS) -> Option<KeyInfo> {
        if !self.on() {
            return None;
        }
        let mut info = KeyInfo::from_template(t).unwrap_or_default();
        info.class.get_or_insert(class);
        Some(info)
    }

    /// The call made `handle`, which `info` describes: it goes into this record and the cache.
    pub fn made(&mut self, handle: CK_OBJECT_HANDLE, info: Option<KeyInfo>) {
        let object = self.learnt(handle, info);
        if let Some(r) = self.record.as_deref_mut() {
            r.object = Some(object);
        }
    }

    /// `C_GenerateKeyPair`'s public key.
    pub fn made_public(&mut self, handle: CK_OBJECT_HANDLE, info: Option<KeyInfo>) {
        if let Some(r) = self.record.as_deref_mut() {
            r.public = Some(handle);
        }
        self.learnt(handle, info);
    }

    fn learnt(&self, handle: CK_OBJECT_HANDLE, info: Option<KeyInfo>) -> ObjectRef {
        let info = info.map(Arc::new);
        if let (Some(i), Some((_, backend))) = (&info, self.session) {
            self.auditor.keys.learn(backend, handle, i);
        }
        ObjectRef { handle, info }
    }

    /// Learns what a template (given, or returned by `C_GetAttributeValue`) says of an object.
    pub fn learn(&mut self, handle: CK_OBJECT_HANDLE, t: &Template<'_>) {
        if let (Some(info), Some((_, backend))) = (self.describe(t), self.session) {
            self.auditor.keys.learn(backend, handle, &info);
        }
    }

    /// `C_DestroyObject`, before the call: what is known of the object goes into the record.
    pub fn destroying(&mut self, handle: CK_OBJECT_HANDLE) {
        let info = match (self.session, self.on()) {
            (Some((_, backend)), true) => self.auditor.keys.get(backend, handle),
            _ => None,
        };
        if let Some(r) = self.record.as_deref_mut() {
            r.object = Some(ObjectRef { handle, info });
        }
    }

    /// `C_DestroyObject` succeeded: the writer forgets the object after writing this record,
    /// so that records queued before it still find its label.
    pub fn destroyed(&mut self) {
        if let Some(r) = self.record.as_deref_mut() {
            r.forget_object = true;
        }
    }

    /// `C_FindObjectsInit`: remembers what the search is for, to label what it finds.
    pub fn find_started(&mut self, t: &Template<'_>) {
        let (Some((session, _)), true) = (self.session, self.on()) else {
            return;
        };
        let mut finds = self.auditor.finds(session).lock();
        match KeyInfo::from_template(t) {
            Some(info) => {
                // The record names what was searched for (a handle of 0: none yet).
                let info = Arc::new(info);
                if let Some(r) = self.record.as_deref_mut() {
                    r.object = Some(ObjectRef {
                        handle: CK_INVALID_HANDLE,
                        info: Some(info.clone()),
                    });
                }
                finds.insert(session, info);
            }
            None => {
                finds.remove(&session);
            }
        }
    }

    /// `C_FindObjects`: labels the handles found with what the search was for.
    pub fn found(&mut self, handles: &[CK_OBJECT_HANDLE]) {
        let (Some((session, backend)), true) = (self.session, self.on()) else {
            return;
        };
        if handles.is_empty() {
            return;
        }
        let info = self.auditor.finds(session).lock().get(&session).cloned();
        if let Some(info) = info {
            for &h in handles {
                self.auditor.keys.learn(backend, h, &info);
            }
        }
    }

    /// `C_FindObjectsFinal`.
    pub fn find_ended(&mut self) {
        if let (Some((session, _)), true) = (self.session, self.on()) {
            self.auditor.finds(session).lock().remove(&session);
        }
    }

    /// `C_CloseSession`: operations still open are written, ended by the closing.
    pub fn session_closing(&mut self) {
        if let Some(r) = self.record.as_deref() {
            if let Some(handle) = r.session {
                self.auditor
                    .end_open_operations(r, handle, "session_closed");
            }
        }
    }

    /// `C_CloseAllSessions`: the same for each session it closed (`record` has their slot).
    pub fn sessions_closed(&mut self, handles: &[CK_SESSION_HANDLE], backend: usize) {
        let Some(r) = self.record.as_deref_mut() else {
            return;
        };
        r.keys = Some((&self.auditor.keys, backend));
        for &h in handles {
            let mut like = Record {
                time_us: r.time_us,
                app: r.app.clone(),
                slot: r.slot,
                keys: r.keys,
                ..Record::default()
            };
            like.session = Some(h);
            self.auditor.end_open_operations(&like, h, "session_closed");
        }
    }

    /// A new session's entry starts with no operations (its previous user may have left some).
    pub fn session_opened(&mut self, handle: CK_SESSION_HANDLE) {
        if self.on() {
            let index = crate::router::sessions::entry_index(handle);
            self.auditor.ops.end_all(index);
            self.auditor.finds(index).lock().remove(&index);
            if let Some(r) = self.record.as_deref_mut() {
                r.session = Some(handle);
            }
        }
    }

    /// Ends the call: decides whether it is a record, completes it and queues it.
    #[inline]
    pub fn finish(self, result: &Result<()>) {
        let (Some(p), Some(mut record)) = (self.pipeline, self.record) else {
            return;
        };
        let r = &mut *record;
        let rv = match result {
            Ok(()) => CKR_OK,
            Err(e) => {
                r.refused = take_refusal();
                e.rv()
            }
        };
        let micros = now_us().saturating_sub(r.time_us);
        let ops = &self.auditor.ops;
        let session = self.session.map_or(usize::MAX, |(s, _)| s);
        match self.phase {
            Phase::Record => {}
            Phase::OnError if rv == CKR_OK => return,
            Phase::OnError => {}
            Phase::Init(kind) => {
                if rv == CKR_OK {
                    let key = r.key.as_ref().map_or(0, |k| k.handle);
                    let m = r.mechanism.unwrap_or(0);
                    ops.begin(session, kind, m, key, micros);
                    return;
                }
            }
            Phase::Update(kind) => {
                let (i, o) = (r.bytes_in.unwrap_or(0), r.bytes_out.unwrap_or(0));
                if rv == CKR_OK {
                    ops.add(session, kind, i, o, micros);
                    return;
                }
                take_totals(r, ops.end(session, kind), micros);
            }
            Phase::End(kind) => {
                if (rv == CKR_OK && self.query) || rv == CKR_BUFFER_TOO_SMALL {
                    // Not the end: only the time counts.
                    ops.add_time(session, kind, micros);
                    return;
                }
                take_totals(r, ops.end(session, kind), micros);
            }
            Phase::Message(kind) => {
                let t = ops.peek(session, kind);
                r.mechanism = t.mechanism;
                r.key = Some(ObjectRef {
                    handle: t.key,
                    info: None,
                });
            }
        }
        r.rv = Some(rv);
        r.duration_us.get_or_insert(micros);
        p.submit(*record);
    }
}

/// Puts an operation's totals, up to and with this call, into the record that ends it.
fn take_totals(r: &mut Record, t: ops::Totals, micros: u64) {
    if t.mechanism.is_some() {
        r.mechanism = t.mechanism;
        r.key = Some(ObjectRef {
            handle: t.key,
            info: None,
        });
    }
    r.bytes_in = Some(t.bytes_in + r.bytes_in.unwrap_or(0));
    r.bytes_out = Some(t.bytes_out + r.bytes_out.unwrap_or(0));
    r.parts = Some(t.parts + 1);
    r.duration_us = Some(t.micros + micros);
}

thread_local! {
    /// The rule of the last policy refusal on this thread, for the call's record.
    static REFUSAL: RefCell<Option<Box<str>>> = const { RefCell::new(None) };
}

/// Notes that p11gate's policy refused the current call, and by which rule (a refusal is
/// rare: the allocation is not on any hot path).
#[cold]
pub fn note_refusal(rule: &str) {
    REFUSAL.with(|r| *r.borrow_mut() = Some(rule.into()));
}

fn take_refusal() -> Option<Box<str>> {
    REFUSAL.with(|r| r.borrow_mut().take())
}

/// Drops a noted refusal (the boundary, after any failed call).
#[cold]
pub fn forget_refusal() {
    take_refusal();
}

/// Queues a lifecycle record (`init`, `finalize`, `load`, `config_error`) if audit is running.
pub fn note(record: Record) {
    if let Some(p) = pipeline::current() {
        p.submit(record);
    }
}
