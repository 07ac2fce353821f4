//! Target `calls`: a sequence of PKCS#11 calls through the exported C functions, with handles,
//! lengths, templates and mechanisms from the input (stale and invalid handles, NULL and short
//! buffers included), against two soft tokens behind four virtual slots:
//!
//! | slot | token | policy |
//! |------|-------|--------|
//! | 0 | a | upstream `a` denies CKM_AES_ECB |
//! | 1 | a | also `require_non_extractable` |
//! | 2 | a | also `read_only` |
//! | 3 | b | none |
//!
//! Set-up is once per process (token initialisation and login cost argon2): a temporary
//! `P11GATE_CONFIG` and token directory, audit records to a socket this module drains, and a
//! "keeper" session on slot 0 that stays logged in as the user. Each input starts from that
//! state: afterwards the sessions it opened are closed, token objects it left are destroyed,
//! and whatever it changed of the logins and PINs is put back (PINs can only be set to the
//! ones the set-up uses, so that this is always possible).
//!
//! Checks besides "no panic": an output never longer than its buffer, `CKR_BUFFER_TOO_SMALL`
//! only with a larger length, a length from a length query that suffices, a found-object count
//! within the array, attribute lengths within their buffers.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use once_cell::sync::OnceCell;
use parking_lot::Mutex;
use pkcs11_sys::*;

use super::{attribute_template, attribute_value, material, mechanism_of, no_panic, Input};
use crate::ffi::fuzz::{
    self as c, Buf, CMechanism, CTemplate, InFn, InOutFn, MechKeyFn, Out, OutFn, SessionFn,
};

const SO_PIN: &[u8] = b"fuzz-so-pin-7731";
const USER_PIN: &[u8] = b"fuzz-user-pin-2265";
/// The virtual slots (see the module docs), and some that do not exist.
const SLOTS: &[CK_SLOT_ID] = &[0, 1, 2, 3, 4, 0x8000_0000, CK_ULONG::MAX];
/// The slot of token b.
const SLOT_B: CK_SLOT_ID = 3;
/// At most this many calls per input.
const MAX_CALLS: usize = 64;
/// At most this many calls per input that may check a PIN (argon2: tens of milliseconds).
const MAX_PIN_CHECKS: u32 = 2;

/// What stays from one input to the next.
#[derive(Debug)]
struct World {
    keeper: CK_SESSION_HANDLE,
}

static WORLD: OnceCell<Mutex<World>> = OnceCell::new();
static HOME: OnceCell<PathBuf> = OnceCell::new();

/// See the module docs.
pub fn calls(data: &[u8]) {
    let world = WORLD.get_or_init(|| Mutex::new(set_up()));
    let mut world = world.lock();
    no_panic("calls", || {
        let mut run = Run {
            input: Input::new(data),
            keeper: world.keeper,
            sessions: Vec::new(),
            objects: Vec::new(),
            pin_checks: 0,
            touched_b: false,
        };
        let mut n = 0;
        while !run.input.is_empty() && n < MAX_CALLS {
            run.step();
            n += 1;
        }
        reset(&mut world, &run);
    });
}

fn set_up() -> World {
    let home = std::env::temp_dir().join(format!("p11gate-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir_all(&home).expect("a temporary directory");
    HOME.set(home.clone()).expect("set up once");
    crate::ffi::os::at_exit(remove_home);

    // Audit records go to a socket of ours; a thread reads and drops them.
    let audit = home.join("audit.sock");
    let socket = UnixDatagram::bind(&audit).expect("the audit socket");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while socket.recv(&mut buf).is_ok() {}
    });

    let config = home.join("p11gate.toml");
    std::fs::write(
        &config,
        format!(
            "[log]\nlevel = \"error\"\ntarget = \"stderr\"\n\n\
             [audit]\nsyslog_socket = \"{audit}\"\non_overflow = \"drop\"\n\n\
             [soft_token]\nmax_pin_failures = 4294967295\n\n\
             [[upstream]]\nname = \"a\"\nsoft_token = \"{a}\"\ndeny = [\"CKM_AES_ECB\"]\n\n\
             [[upstream]]\nname = \"b\"\nsoft_token = \"{b}\"\n\n\
             [[slot]]\nid = 0\nupstream = \"a\"\nupstream_slot = 0\n\n\
             [[slot]]\nid = 1\nupstream = \"a\"\nupstream_slot = 0\nrequire_non_extractable = true\n\n\
             [[slot]]\nid = 2\nupstream = \"a\"\nupstream_slot = 0\nread_only = true\n\n\
             [[slot]]\nid = 3\nupstream = \"b\"\nupstream_slot = 0\n",
            audit = audit.display(),
            a = home.join("a").display(),
            b = home.join("b").display(),
        ),
    )
    .expect("the configuration file");
    for var in [
        crate::config::env::UPSTREAM,
        crate::config::env::APP,
        crate::config::env::LOG,
        crate::config::env::LOG_LEVEL,
        crate::config::env::AUDIT,
        crate::config::env::AUDIT_KEY,
        crate::config::env::HOME,
        crate::config::env::NUM_SLOTS,
        crate::config::env::SLOW_CALL_WARN_MS,
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var(crate::config::env::CONFIG, &config);

    expect(c::initialize(), "C_Initialize");
    for slot in [0, SLOT_B] {
        expect(
            c::init_token(slot, &mut pin(SO_PIN), Some(&[b' '; 32])),
            "C_InitToken",
        );
        user_pin(slot);
    }
    World {
        keeper: keeper(None),
    }
}

extern "C" fn remove_home() {
    if let Some(home) = HOME.get() {
        let _ = std::fs::remove_dir_all(home);
    }
}

fn expect(rv: CK_RV, what: &str) {
    assert_eq!(
        rv,
        CKR_OK,
        "{what}: {} (fuzz set-up)",
        crate::names::rv_name(rv)
    );
}

fn pin(p: &[u8]) -> Buf {
    Buf::Bytes(p.to_vec())
}

/// Sets the user PIN of `slot`'s token (no session may be open on it).
fn user_pin(slot: CK_SLOT_ID) {
    let mut s = 0;
    expect(
        c::open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, Some(&mut s)),
        "C_OpenSession",
    );
    expect(c::login(s, CKU_SO, &mut pin(SO_PIN)), "C_Login(SO)");
    expect(c::input(InFn::InitPin, s, &mut pin(USER_PIN)), "C_InitPIN");
    expect(c::plain(SessionFn::Logout, s), "C_Logout");
    expect(c::plain(SessionFn::CloseSession, s), "C_CloseSession");
}

/// The keeper session: `old` if it is still open and logged in as the user, else a new one.
fn keeper(old: Option<CK_SESSION_HANDLE>) -> CK_SESSION_HANDLE {
    let mut info = CK_SESSION_INFO {
        slotID: 0,
        state: 0,
        flags: 0,
        ulDeviceError: 0,
    };
    if let Some(k) = old {
        if c::get_session_info(k, Some(&mut info)) == CKR_OK {
            if info.state == CKS_RW_USER_FUNCTIONS {
                return k;
            }
            // Someone else is logged in (the SO): log out, then as the user below.
            let _ = c::plain(SessionFn::Logout, k);
            return login_user(k);
        }
    }
    let mut k = 0;
    expect(
        c::open_session(0, CKF_SERIAL_SESSION | CKF_RW_SESSION, Some(&mut k)),
        "C_OpenSession",
    );
    login_user(k)
}

fn login_user(k: CK_SESSION_HANDLE) -> CK_SESSION_HANDLE {
    match c::login(k, CKU_USER, &mut pin(USER_PIN)) {
        CKR_OK | CKR_USER_ALREADY_LOGGED_IN => k,
        CKR_USER_PIN_NOT_INITIALIZED => {
            // C_InitToken wiped it.
            expect(c::plain(SessionFn::CloseSession, k), "C_CloseSession");
            user_pin(0);
            keeper(None)
        }
        rv => panic!("fuzz set-up: C_Login(user) = {}", crate::names::rv_name(rv)),
    }
}

/// Puts things back as they were before the input: see the module docs.
fn reset(world: &mut World, run: &Run<'_>) {
    match c::initialize() {
        CKR_OK | CKR_CRYPTOKI_ALREADY_INITIALIZED => {}
        rv => expect(rv, "C_Initialize"),
    }
    for (s, _) in &run.sessions {
        let _ = c::plain(SessionFn::CloseSession, *s);
    }
    world.keeper = keeper(Some(world.keeper));
    if !destroy_token_objects(world.keeper) {
        // Objects that cannot be destroyed: start token a afresh.
        expect(c::close_all_sessions(0), "C_CloseAllSessions");
        expect(
            c::init_token(0, &mut pin(SO_PIN), Some(&[b' '; 32])),
            "C_InitToken",
        );
        world.keeper = keeper(None);
    }
    if run.touched_b {
        reset_b();
    }
}

/// Destroys every token object `s` sees; false if some would not go.
fn destroy_token_objects(s: CK_SESSION_HANDLE) -> bool {
    loop {
        let mut t = CTemplate::default();
        t.push(CKA_TOKEN, Buf::Bytes(vec![CK_TRUE]));
        expect(c::find_objects_init(s, &mut t), "C_FindObjectsInit");
        let mut found = [0; 64];
        let mut count = 0;
        let rv = c::find_objects(s, Some(&mut found), 0, Some(&mut count));
        expect(rv, "C_FindObjects");
        expect(
            c::plain(SessionFn::FindObjectsFinal, s),
            "C_FindObjectsFinal",
        );
        if count == 0 {
            return true;
        }
        let all_gone = found[..count as usize]
            .iter()
            .all(|&o| c::destroy_object(s, o) == CKR_OK);
        if !all_gone {
            return false;
        }
    }
}

/// Token b after an input that used it: its user PIN set, no token objects.
fn reset_b() {
    let _ = c::close_all_sessions(SLOT_B);
    let mut s = 0;
    expect(
        c::open_session(SLOT_B, CKF_SERIAL_SESSION | CKF_RW_SESSION, Some(&mut s)),
        "C_OpenSession",
    );
    match c::login(s, CKU_USER, &mut pin(USER_PIN)) {
        CKR_OK => {}
        CKR_USER_PIN_NOT_INITIALIZED => {
            expect(c::plain(SessionFn::CloseSession, s), "C_CloseSession");
            user_pin(SLOT_B);
            return reset_b();
        }
        rv => expect(rv, "C_Login(user) on token b"),
    }
    let clean = destroy_token_objects(s);
    let _ = c::plain(SessionFn::Logout, s);
    expect(c::plain(SessionFn::CloseSession, s), "C_CloseSession");
    if !clean {
        expect(
            c::init_token(SLOT_B, &mut pin(SO_PIN), Some(&[b' '; 32])),
            "C_InitToken",
        );
        user_pin(SLOT_B);
    }
}

/// One input being run.
struct Run<'a> {
    input: Input<'a>,
    keeper: CK_SESSION_HANDLE,
    /// Sessions this input opened (and the slot), closed ones included (stale handles).
    sessions: Vec<(CK_SESSION_HANDLE, CK_SLOT_ID)>,
    /// Objects this input made or found, destroyed ones included.
    objects: Vec<CK_OBJECT_HANDLE>,
    pin_checks: u32,
    touched_b: bool,
}

impl Run<'_> {
    /// A session: one this input opened, or a made-up handle (never the keeper).
    fn session(&mut self) -> CK_SESSION_HANDLE {
        let b = self.input.byte();
        let h = match b {
            0xF0 => self.input.ulong(),
            0xF1 => CK_INVALID_HANDLE,
            _ if b < 0xF0 && !self.sessions.is_empty() => {
                self.sessions[b as usize % self.sessions.len()].0
            }
            b => b as CK_SESSION_HANDLE,
        };
        if h == self.keeper {
            h ^ 1 << 40
        } else {
            h
        }
    }

    /// An object: one this input made or found, or a made-up handle.
    fn object(&mut self) -> CK_OBJECT_HANDLE {
        match self.input.byte() {
            0xF0 => self.input.ulong(),
            0xF1 => CK_INVALID_HANDLE,
            b if b < 0xF0 && !self.objects.is_empty() => {
                self.objects[b as usize % self.objects.len()]
            }
            b => b as CK_OBJECT_HANDLE,
        }
    }

    fn slot(&mut self) -> CK_SLOT_ID {
        let slot = self.input.pick(SLOTS);
        if slot == SLOT_B {
            self.touched_b = true;
        }
        slot
    }

    /// A PIN: the right ones, a wrong one, or one of a length no token takes.
    fn pin(&mut self) -> Buf {
        match self.input.byte() % 7 {
            0 => pin(USER_PIN),
            1 => pin(SO_PIN),
            2 => pin(b"wrong-pin-0000"),
            3 => Buf::Bytes(Vec::new()),
            4 => Buf::Bytes(b"123".to_vec()),
            5 => Buf::Bytes(vec![b'7'; 300]),
            _ => Buf::Null(self.input.length()),
        }
    }

    /// Whether a call with this PIN may run: PINs of a valid length cost argon2, and only
    /// [`MAX_PIN_CHECKS`] of them run per input.
    fn may_check(&mut self, pins: &[&Buf]) -> bool {
        let checks = pins
            .iter()
            .any(|p| matches!(p, Buf::Bytes(b) if (4..=255).contains(&b.len())));
        if !checks {
            return true;
        }
        self.pin_checks += 1;
        self.pin_checks <= MAX_PIN_CHECKS
    }

    fn mechanism(&mut self) -> Option<CMechanism> {
        if self.input.byte() == 0xFF {
            return None;
        }
        Some(mechanism_of(&mut self.input))
    }

    /// A template: fuzzed, or a recipe for a real object with fuzzed attributes after it.
    fn template(&mut self) -> CTemplate {
        let recipe = self.input.byte() % 10;
        if recipe >= 8 {
            return attribute_template(&mut self.input);
        }
        let m = material();
        let ulong = |v: CK_ULONG| Buf::Bytes(v.to_ne_bytes().to_vec());
        let bytes = |v: &[u8]| Buf::Bytes(v.to_vec());
        let truth = |b: bool| Buf::Bytes(vec![b as u8]);
        let mut t = CTemplate::default();
        let token = self.input.bool();
        let private = self.input.bool();
        let sensitive = self.input.bool();
        let extractable = self.input.bool();
        let common = |t: &mut CTemplate, class: CK_OBJECT_CLASS| {
            t.push(CKA_CLASS, ulong(class));
            t.push(CKA_TOKEN, truth(token));
            t.push(CKA_PRIVATE, truth(private));
            t.push(CKA_LABEL, bytes(b"fuzz"));
        };
        match recipe {
            0 | 1 => {
                common(&mut t, CKO_SECRET_KEY);
                t.push(CKA_KEY_TYPE, ulong(CKK_AES));
                t.push(CKA_VALUE, bytes(&[0x42; 32]));
                t.push(CKA_SENSITIVE, truth(sensitive));
                t.push(CKA_EXTRACTABLE, truth(extractable));
            }
            2 => {
                common(&mut t, CKO_SECRET_KEY);
                t.push(CKA_KEY_TYPE, ulong(CKK_GENERIC_SECRET));
                t.push(CKA_VALUE, bytes(&[0x43; 32]));
                t.push(CKA_EXTRACTABLE, truth(extractable));
            }
            3 => {
                common(&mut t, CKO_PRIVATE_KEY);
                t.push(CKA_KEY_TYPE, ulong(CKK_RSA));
                t.push(CKA_MODULUS, bytes(&m.rsa_n));
                t.push(CKA_PUBLIC_EXPONENT, bytes(&m.rsa_e));
                t.push(CKA_PRIVATE_EXPONENT, bytes(&m.rsa_d));
                t.push(CKA_PRIME_1, bytes(&m.rsa_p));
                t.push(CKA_PRIME_2, bytes(&m.rsa_q));
                t.push(CKA_SENSITIVE, truth(sensitive));
            }
            4 => {
                common(&mut t, CKO_PUBLIC_KEY);
                t.push(CKA_KEY_TYPE, ulong(CKK_RSA));
                t.push(CKA_MODULUS, bytes(&m.rsa_n));
                t.push(CKA_PUBLIC_EXPONENT, bytes(&m.rsa_e));
            }
            5 => {
                common(&mut t, CKO_PRIVATE_KEY);
                t.push(CKA_KEY_TYPE, ulong(CKK_EC));
                t.push(CKA_EC_PARAMS, bytes(super::OID_P256));
                t.push(CKA_VALUE, bytes(&m.p256_value));
            }
            6 => {
                common(&mut t, CKO_PUBLIC_KEY);
                t.push(CKA_KEY_TYPE, ulong(CKK_EC));
                t.push(CKA_EC_PARAMS, bytes(super::OID_P256));
                t.push(CKA_EC_POINT, bytes(&m.p256_point));
            }
            _ => {
                common(&mut t, CKO_DATA);
                t.push(CKA_VALUE, bytes(b"data object"));
            }
        }
        for _ in 0..self.input.byte() % 4 {
            let ty = super::attribute_type(&mut self.input);
            let v = attribute_value(&mut self.input);
            t.push(ty, v);
        }
        t
    }

    /// A key-making template: value length, modulus bits or curve first, then a template.
    fn key_template(&mut self) -> CTemplate {
        let mut t = self.template();
        match self.input.byte() % 4 {
            0 => t.push(
                CKA_VALUE_LEN,
                Buf::Bytes(
                    self.input
                        .pick(&[16u64, 32, 24, 0, 64])
                        .to_ne_bytes()
                        .to_vec(),
                ),
            ),
            1 => t.push(CKA_EC_PARAMS, Buf::Bytes(super::OID_P256.to_vec())),
            2 => t.push(
                CKA_MODULUS_BITS,
                Buf::Bytes(self.input.ulong_value().to_ne_bytes().to_vec()),
            ),
            _ => {}
        }
        t
    }

    /// An output buffer: NULL (a length query), of some size, or with a NULL length.
    fn out<T: Copy + Default>(&mut self) -> Out<T> {
        match self.input.byte() % 6 {
            0 => Out::new(None, false),
            1 => Out::new(Some(0), false),
            2 | 3 => Out::new(Some(self.input.size()), false),
            4 => Out::new(Some(4096), false),
            _ => Out::new(Some(self.input.size()), true),
        }
    }

    fn data(&mut self) -> Buf {
        self.input.buf()
    }

    fn made(&mut self, rv: CK_RV, handle: CK_OBJECT_HANDLE) {
        if rv == CKR_OK {
            self.objects.push(handle);
        }
    }

    /// Runs one call.
    fn step(&mut self) {
        match self.input.byte() % 32 {
            0 => {
                let slot = self.slot();
                let flags = self.input.pick(&[
                    CKF_SERIAL_SESSION | CKF_RW_SESSION,
                    CKF_SERIAL_SESSION,
                    0,
                    CKF_RW_SESSION,
                    CKF_SERIAL_SESSION | CKF_RW_SESSION | 0x80,
                ]);
                let mut h = 0;
                let null = self.input.byte() == 0xFF;
                let rv = c::open_session(slot, flags, (!null).then_some(&mut h));
                if rv == CKR_OK {
                    self.sessions.push((h, slot));
                }
            }
            1 => {
                let s = self.session();
                let _ = c::plain(SessionFn::CloseSession, s);
            }
            2 => {
                let slot = self.slot();
                let _ = c::close_all_sessions(slot);
            }
            3 => {
                let s = self.session();
                let mut info = CK_SESSION_INFO {
                    slotID: 0,
                    state: 0,
                    flags: 0,
                    ulDeviceError: 0,
                };
                let null = self.input.byte() == 0xFF;
                let _ = c::get_session_info(s, (!null).then_some(&mut info));
            }
            4 => {
                let s = self.session();
                let user = self
                    .input
                    .pick(&[CKU_USER, CKU_SO, CKU_CONTEXT_SPECIFIC, 3, 1 << 40]);
                let mut p = self.pin();
                if self.may_check(&[&p]) {
                    let _ = c::login(s, user, &mut p);
                }
            }
            5 => {
                let s = self.session();
                let _ = c::plain(SessionFn::Logout, s);
            }
            6 => self.slot_and_token(),
            7 => {
                // Both tokens are initialised, so C_InitToken needs the SO PIN: a wrong one
                // changes nothing, the right one keeps it (the reset sets the user PIN again).
                let slot = self.slot();
                let mut p = self.pin();
                let label: Option<[u8; 32]> = (!self.input.bool()).then(|| {
                    let mut l = [b' '; 32];
                    let b = self.input.bytes(32);
                    l[..b.len()].copy_from_slice(b);
                    l
                });
                if self.may_check(&[&p]) {
                    let _ = c::init_token(slot, &mut p, label.as_ref());
                }
            }
            8 => {
                // C_InitPIN and C_SetPIN may only set the PINs the set-up uses (or fail).
                let s = self.session();
                let mut new = match self.pin() {
                    Buf::Bytes(b) if (4..=255).contains(&b.len()) => pin(USER_PIN),
                    other => other,
                };
                if self.may_check(&[&new]) {
                    let _ = c::input(InFn::InitPin, s, &mut new);
                }
            }
            9 => {
                let s = self.session();
                let mut old = self.pin();
                let mut new = if self.input.bool() {
                    old.clone()
                } else {
                    Buf::Bytes(vec![b'1'; self.input.pick(&[0usize, 3, 256])])
                };
                if self.may_check(&[&old, &new]) {
                    let _ = c::set_pin(s, &mut old, &mut new);
                }
            }
            10 => {
                let s = self.session();
                let mut t = self.template();
                let mut h = 0;
                let rv = c::create_object(s, &mut t, Some(&mut h));
                self.made(rv, h);
            }
            11 => {
                let s = self.session();
                let o = self.object();
                let mut t = attribute_template(&mut self.input);
                let mut h = 0;
                let rv = c::copy_object(s, o, &mut t, Some(&mut h));
                self.made(rv, h);
            }
            12 => {
                let s = self.session();
                let o = self.object();
                let _ = c::destroy_object(s, o);
            }
            13 => {
                let s = self.session();
                let o = self.object();
                let mut size = 0;
                let null = self.input.byte() == 0xFF;
                let _ = c::get_object_size(s, o, (!null).then_some(&mut size));
            }
            14 => self.get_attributes(),
            15 => {
                let s = self.session();
                let o = self.object();
                let mut t = attribute_template(&mut self.input);
                let _ = c::set_attribute_value(s, o, &mut t);
            }
            16 => self.find(),
            17 => {
                let f = self.input.pick(&[
                    MechKeyFn::EncryptInit,
                    MechKeyFn::DecryptInit,
                    MechKeyFn::SignInit,
                    MechKeyFn::VerifyInit,
                    MechKeyFn::SignRecoverInit,
                    MechKeyFn::VerifyRecoverInit,
                    MechKeyFn::MessageEncryptInit,
                    MechKeyFn::MessageDecryptInit,
                    MechKeyFn::MessageSignInit,
                    MechKeyFn::MessageVerifyInit,
                ]);
                let s = self.session();
                let mut m = self.mechanism();
                let key = self.object();
                let _ = c::init(f, s, m.as_mut(), key);
            }
            18 => {
                let s = self.session();
                let mut m = self.mechanism();
                let _ = c::digest_init(s, m.as_mut());
            }
            19 | 20 => {
                let f = self.input.pick(&[
                    InOutFn::Encrypt,
                    InOutFn::EncryptUpdate,
                    InOutFn::Decrypt,
                    InOutFn::DecryptUpdate,
                    InOutFn::Digest,
                    InOutFn::Sign,
                    InOutFn::SignRecover,
                    InOutFn::VerifyRecover,
                    InOutFn::DigestEncryptUpdate,
                    InOutFn::DecryptDigestUpdate,
                    InOutFn::SignEncryptUpdate,
                    InOutFn::DecryptVerifyUpdate,
                ]);
                let s = self.session();
                let mut data = self.data();
                let mut out = self.out();
                let rv = c::in_out(f, s, &mut data, &mut out);
                check_out(rv, &out);
                if self.input.bool() {
                    self.two_calls(rv, &out, |out| c::in_out(f, s, &mut data, out));
                }
            }
            21 => {
                let f = self.input.pick(&[
                    OutFn::EncryptFinal,
                    OutFn::DecryptFinal,
                    OutFn::DigestFinal,
                    OutFn::SignFinal,
                    OutFn::GetOperationState,
                ]);
                let s = self.session();
                let mut out = self.out();
                let rv = c::final_(f, s, &mut out);
                check_out(rv, &out);
                if self.input.bool() {
                    self.two_calls(rv, &out, |out| c::final_(f, s, out));
                }
            }
            22 => {
                let f = self.input.pick(&[
                    InFn::DigestUpdate,
                    InFn::SignUpdate,
                    InFn::VerifyUpdate,
                    InFn::VerifyFinal,
                    InFn::SeedRandom,
                    InFn::GenerateRandom,
                ]);
                let s = self.session();
                let mut data = self.data();
                let _ = c::input(f, s, &mut data);
            }
            23 => {
                let s = self.session();
                let mut data = self.data();
                let mut sig = self.data();
                let _ = c::verify(s, &mut data, &mut sig);
            }
            24 => {
                let s = self.session();
                let key = self.object();
                let _ = c::digest_key(s, key);
            }
            25 => {
                let s = self.session();
                let mut m = self.mechanism();
                let mut t = self.key_template();
                let mut h = 0;
                let rv = c::generate_key(s, m.as_mut(), &mut t, Some(&mut h));
                self.made(rv, h);
            }
            26 => self.generate_key_pair(),
            27 => {
                let s = self.session();
                let mut m = self.mechanism();
                let wrapping = self.object();
                let key = self.object();
                let mut out = self.out();
                let rv = c::wrap_key(s, m.as_mut(), wrapping, key, &mut out);
                check_out(rv, &out);
                if self.input.bool() {
                    self.two_calls(rv, &out, |out| {
                        c::wrap_key(s, m.as_mut(), wrapping, key, out)
                    });
                }
            }
            28 => {
                let s = self.session();
                let mut m = self.mechanism();
                let key = self.object();
                let mut wrapped = self.data();
                let mut t = self.template();
                let mut h = 0;
                let rv = c::unwrap_key(s, m.as_mut(), key, &mut wrapped, &mut t, Some(&mut h));
                self.made(rv, h);
            }
            29 => {
                let s = self.session();
                let mut m = self.mechanism();
                let key = self.object();
                let mut t = self.template();
                let mut h = 0;
                let rv = c::derive_key(s, m.as_mut(), key, &mut t, Some(&mut h));
                self.made(rv, h);
            }
            30 => {
                let f = self.input.pick(&[
                    SessionFn::FindObjectsFinal,
                    SessionFn::GetFunctionStatus,
                    SessionFn::CancelFunction,
                    SessionFn::MessageEncryptFinal,
                    SessionFn::MessageDecryptFinal,
                    SessionFn::MessageSignFinal,
                    SessionFn::MessageVerifyFinal,
                ]);
                let s = self.session();
                let _ = c::plain(f, s);
                if self.input.bool() {
                    let s = self.session();
                    let flags = self.input.ulong_value();
                    let _ = c::session_cancel(s, flags);
                }
            }
            _ => {
                let s = self.session();
                let mut state = self.data();
                let (enc, auth) = (self.object(), self.object());
                let _ = c::set_operation_state(s, &mut state, enc, auth);
            }
        }
    }

    fn slot_and_token(&mut self) {
        let slot = self.slot();
        match self.input.byte() % 5 {
            0 => {
                let present = self.input.bool();
                let mut out = self.out::<CK_SLOT_ID>();
                let rv = c::get_slot_list(present, &mut out);
                check_out(rv, &out);
            }
            1 => {
                let mut info = CK_SLOT_INFO {
                    slotDescription: [0; 64],
                    manufacturerID: [0; 32],
                    flags: 0,
                    hardwareVersion: CK_VERSION { major: 0, minor: 0 },
                    firmwareVersion: CK_VERSION { major: 0, minor: 0 },
                };
                let null = self.input.byte() == 0xFF;
                let _ = c::get_slot_info(slot, (!null).then_some(&mut info));
            }
            2 => {
                let mut info = token_info();
                let null = self.input.byte() == 0xFF;
                let _ = c::get_token_info(slot, (!null).then_some(&mut info));
            }
            3 => {
                let mut out = self.out::<CK_MECHANISM_TYPE>();
                let rv = c::get_mechanism_list(slot, &mut out);
                check_out(rv, &out);
            }
            _ => {
                let ty = super::mechanism_type(&mut self.input);
                let mut info = CK_MECHANISM_INFO {
                    ulMinKeySize: 0,
                    ulMaxKeySize: 0,
                    flags: 0,
                };
                let null = self.input.byte() == 0xFF;
                let _ = c::get_mechanism_info(slot, ty, (!null).then_some(&mut info));
            }
        }
    }

    fn get_attributes(&mut self) {
        let s = self.session();
        let o = self.object();
        let mut t = attribute_template(&mut self.input);
        let rv = c::get_attribute_value(s, o, &mut t);
        if matches!(
            rv,
            CKR_OK | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID | CKR_BUFFER_TOO_SMALL
        ) {
            for ((_, v), len) in t.entries().iter().zip(t.lens()) {
                if let Buf::Bytes(b) = v {
                    assert!(
                        len == CK_UNAVAILABLE_INFORMATION || len as usize <= b.len(),
                        "C_GetAttributeValue said {len} bytes for a buffer of {}",
                        b.len()
                    );
                }
            }
        }
    }

    fn find(&mut self) {
        let s = self.session();
        match self.input.byte() % 3 {
            0 => {
                let mut t = attribute_template(&mut self.input);
                let _ = c::find_objects_init(s, &mut t);
            }
            1 => {
                let n = self.input.byte() % 17;
                let mut found = vec![0; n as usize];
                let mut count = 0;
                let (null_array, null_count) =
                    (self.input.byte() == 0xFF, self.input.byte() == 0xFF);
                let max = self.input.length();
                let rv = c::find_objects(
                    s,
                    (!null_array).then_some(&mut found[..]),
                    max,
                    (!null_count).then_some(&mut count),
                );
                if rv == CKR_OK && !null_array && !null_count {
                    assert!(
                        count as usize <= found.len(),
                        "C_FindObjects found {count} for {n}"
                    );
                    self.objects.extend_from_slice(&found[..count as usize]);
                }
            }
            _ => {
                let _ = c::plain(SessionFn::FindObjectsFinal, s);
            }
        }
    }

    fn generate_key_pair(&mut self) {
        let s = self.session();
        let mut m = self.mechanism();
        let mut public = self.key_template();
        let mut private = self.template();
        if m.as_ref().map(CMechanism::mechanism_type) == Some(CKM_RSA_PKCS_KEY_PAIR_GEN) {
            // RSA key generation takes up to seconds: only sizes that are refused.
            for (ty, v) in public.entries_mut() {
                if *ty == CKA_MODULUS_BITS {
                    if let Buf::Bytes(b) = v {
                        if let Ok(bits) = <[u8; 8]>::try_from(&b[..]) {
                            if (2048..=4096).contains(&CK_ULONG::from_ne_bytes(bits)) {
                                *b = 1024u64.to_ne_bytes().to_vec();
                            }
                        }
                    }
                }
            }
        }
        let (mut h1, mut h2) = (0, 0);
        let rv = c::generate_key_pair(
            s,
            m.as_mut(),
            &mut public,
            &mut private,
            (Some(&mut h1), Some(&mut h2)),
        );
        self.made(rv, h1);
        self.made(rv, h2);
    }

    /// The two-call convention: after a length query, a buffer of the length it gave must
    /// not be too small.
    fn two_calls(&mut self, rv: CK_RV, query: &Out, again: impl FnOnce(&mut Out) -> CK_RV) {
        if rv != CKR_OK || query.buf.is_some() || query.len_null || query.len > 1 << 20 {
            return;
        }
        let mut out = Out::new(Some(query.len as usize), false);
        let rv = again(&mut out);
        assert_ne!(
            rv, CKR_BUFFER_TOO_SMALL,
            "a buffer of the length the query gave ({}) was too small",
            query.len
        );
        check_out(rv, &out);
    }
}

/// An output within its buffer; CKR_BUFFER_TOO_SMALL with a length that would not have fit.
fn check_out<T>(rv: CK_RV, out: &Out<T>) {
    let (Some(buf), false) = (&out.buf, out.len_null) else {
        return;
    };
    match rv {
        CKR_OK => assert!(
            out.len as usize <= buf.len(),
            "CKR_OK with {} bytes for a buffer of {}",
            out.len,
            buf.len()
        ),
        CKR_BUFFER_TOO_SMALL => assert!(
            out.len as usize > buf.len(),
            "CKR_BUFFER_TOO_SMALL asking for {} with a buffer of {}",
            out.len,
            buf.len()
        ),
        _ => {}
    }
}

fn token_info() -> CK_TOKEN_INFO {
    CK_TOKEN_INFO {
        label: [0; 32],
        manufacturerID: [0; 32],
        model: [0; 16],
        serialNumber: [0; 16],
        flags: 0,
        ulMaxSessionCount: 0,
        ulSessionCount: 0,
        ulMaxRwSessionCount: 0,
        ulRwSessionCount: 0,
        ulMaxPinLen: 0,
        ulMinPinLen: 0,
        ulTotalPublicMemory: 0,
        ulFreePublicMemory: 0,
        ulTotalPrivateMemory: 0,
        ulFreePrivateMemory: 0,
        hardwareVersion: CK_VERSION { major: 0, minor: 0 },
        firmwareVersion: CK_VERSION { major: 0, minor: 0 },
        utcTime: [0; 16],
    }
}
