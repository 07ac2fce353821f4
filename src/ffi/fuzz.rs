//! C arguments for the fuzz harnesses ([`crate::fuzzing`]), and safe wrappers of the exported
//! functions that take them.
//!
//! The harnesses throw everything a caller may legally pass at p11gate: NULL pointers with any
//! length, short buffers, huge counts, stale handles. What no caller may pass (a pointer to
//! fewer bytes than its length says) cannot be built from these types: every pointer comes
//! from a buffer owned here, with that buffer's length, or is NULL. So the `unsafe` calls stay
//! in `ffi`, and the harness logic is safe code.

use std::ffi::c_void;
use std::mem::size_of;
use std::ptr::{null, null_mut};

use pkcs11_sys::*;

use crate::error::Result;
use crate::ffi::args::{Mechanism, Template};
use crate::ffi::fns::{crypt, digest, keys, message, object, random, session, sign, slot_token};

/// An input value: the caller's own bytes, or NULL with any length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Buf {
    Bytes(Vec<u8>),
    Null(CK_ULONG),
}

impl Buf {
    fn raw(&mut self) -> (*mut u8, CK_ULONG) {
        match self {
            Buf::Bytes(b) => (b.as_mut_ptr(), b.len() as CK_ULONG),
            Buf::Null(len) => (null_mut(), *len),
        }
    }
}

/// An attribute template: a NULL array with a count, or attributes whose values are [`Buf`]s.
#[derive(Debug, Default)]
pub struct CTemplate {
    entries: Vec<(CK_ATTRIBUTE_TYPE, Buf)>,
    null_count: Option<CK_ULONG>,
    /// Rebuilt from `entries` for each call, so its pointers are always current.
    attrs: Vec<CK_ATTRIBUTE>,
}

impl CTemplate {
    /// A NULL `pTemplate` with `count`.
    pub fn null(count: CK_ULONG) -> CTemplate {
        CTemplate {
            null_count: Some(count),
            ..CTemplate::default()
        }
    }

    pub fn push(&mut self, ty: CK_ATTRIBUTE_TYPE, value: Buf) {
        self.entries.push((ty, value));
    }

    pub fn entries(&self) -> &[(CK_ATTRIBUTE_TYPE, Buf)] {
        &self.entries
    }

    pub fn entries_mut(&mut self) -> &mut [(CK_ATTRIBUTE_TYPE, Buf)] {
        &mut self.entries
    }

    fn raw(&mut self) -> (*mut CK_ATTRIBUTE, CK_ULONG) {
        if let Some(count) = self.null_count {
            return (null_mut(), count);
        }
        self.attrs = self
            .entries
            .iter_mut()
            .map(|(ty, v)| {
                let (p, len) = v.raw();
                CK_ATTRIBUTE {
                    type_: *ty,
                    pValue: p.cast(),
                    ulValueLen: len,
                }
            })
            .collect();
        (self.attrs.as_mut_ptr(), self.attrs.len() as CK_ULONG)
    }

    /// The lengths as the last call left them (`C_GetAttributeValue` writes them).
    pub fn lens(&self) -> Vec<CK_ULONG> {
        self.attrs.iter().map(|a| a.ulValueLen).collect()
    }

    /// A view as the exported functions make one ([`Template::new`]).
    pub fn view(&mut self) -> Result<Template<'_>> {
        let (p, count) = self.raw();
        // SAFETY: `p` is NULL or points to `count` attributes in `self.attrs`, each pValue NULL
        // or pointing into its own buffer in `self.entries` with that buffer's length; both
        // live, unmoved, as long as the borrow of `self`.
        unsafe { Template::new(p, count) }
    }

    /// A view as the functions that take values make one ([`Template::input`]).
    pub fn view_input(&mut self) -> Result<Template<'_>> {
        let (p, count) = self.raw();
        // SAFETY: as in `view`.
        unsafe { Template::input(p, count) }
    }
}

/// A mechanism parameter block.
#[derive(Debug, Clone)]
pub enum Param {
    /// Bytes as given (see [`CMechanism::new`] for the one adjustment).
    Raw(Buf),
    Gcm {
        iv: Buf,
        iv_bits: CK_ULONG,
        aad: Buf,
        tag_bits: CK_ULONG,
    },
    Oaep {
        hash: CK_MECHANISM_TYPE,
        mgf: CK_RSA_PKCS_MGF_TYPE,
        source: CK_ULONG,
        data: Buf,
    },
    Pss {
        hash: CK_MECHANISM_TYPE,
        mgf: CK_RSA_PKCS_MGF_TYPE,
        salt: CK_ULONG,
    },
}

/// A `CK_MECHANISM` with its parameter block.
#[derive(Debug)]
pub struct CMechanism {
    ty: CK_MECHANISM_TYPE,
    param: Param,
    mech: CK_MECHANISM,
    gcm: CK_GCM_PARAMS,
    oaep: CK_RSA_PKCS_OAEP_PARAMS,
    pss: CK_RSA_PKCS_PSS_PARAMS,
}

impl CMechanism {
    /// A raw block exactly the size of a parameter structure that holds pointers, for a
    /// mechanism whose parameters p11gate reads as that structure, gets one more byte: those
    /// bytes would be read as pointers, and no caller may pass wild pointers. (Keep this list
    /// in step with what `soft::backend` parses through `ffi::args::Mechanism`.)
    pub fn new(ty: CK_MECHANISM_TYPE, mut param: Param) -> CMechanism {
        if let Param::Raw(Buf::Bytes(b)) = &mut param {
            let pointer_struct = match ty {
                CKM_AES_GCM => Some(size_of::<CK_GCM_PARAMS>()),
                CKM_RSA_PKCS_OAEP => Some(size_of::<CK_RSA_PKCS_OAEP_PARAMS>()),
                _ => None,
            };
            if pointer_struct == Some(b.len()) {
                b.push(0);
            }
        }
        // SAFETY: all three are plain C structs of integers and pointers, for which all-zero
        // (NULL pointers, zero lengths) is a valid value; `raw` fills them in before use.
        let (mech, gcm, oaep, pss) = unsafe {
            (
                std::mem::zeroed(),
                std::mem::zeroed(),
                std::mem::zeroed(),
                std::mem::zeroed(),
            )
        };
        CMechanism {
            ty,
            param,
            mech,
            gcm,
            oaep,
            pss,
        }
    }

    pub fn mechanism_type(&self) -> CK_MECHANISM_TYPE {
        self.ty
    }

    fn raw(&mut self) -> *mut CK_MECHANISM {
        let (p, len): (*mut c_void, CK_ULONG) = match &mut self.param {
            Param::Raw(b) => {
                let (p, len) = b.raw();
                (p.cast(), len)
            }
            Param::Gcm {
                iv,
                iv_bits,
                aad,
                tag_bits,
            } => {
                let (iv, iv_len) = iv.raw();
                let (aad, aad_len) = aad.raw();
                self.gcm = CK_GCM_PARAMS {
                    pIv: iv,
                    ulIvLen: iv_len,
                    ulIvBits: *iv_bits,
                    pAAD: aad,
                    ulAADLen: aad_len,
                    ulTagBits: *tag_bits,
                };
                (
                    (&mut self.gcm as *mut CK_GCM_PARAMS).cast(),
                    size_of::<CK_GCM_PARAMS>() as CK_ULONG,
                )
            }
            Param::Oaep {
                hash,
                mgf,
                source,
                data,
            } => {
                let (p, len) = data.raw();
                self.oaep = CK_RSA_PKCS_OAEP_PARAMS {
                    hashAlg: *hash,
                    mgf: *mgf,
                    source: *source,
                    pSourceData: p.cast(),
                    ulSourceDataLen: len,
                };
                (
                    (&mut self.oaep as *mut CK_RSA_PKCS_OAEP_PARAMS).cast(),
                    size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
                )
            }
            Param::Pss { hash, mgf, salt } => {
                self.pss = CK_RSA_PKCS_PSS_PARAMS {
                    hashAlg: *hash,
                    mgf: *mgf,
                    sLen: *salt,
                };
                (
                    (&mut self.pss as *mut CK_RSA_PKCS_PSS_PARAMS).cast(),
                    size_of::<CK_RSA_PKCS_PSS_PARAMS>() as CK_ULONG,
                )
            }
        };
        self.mech = CK_MECHANISM {
            mechanism: self.ty,
            pParameter: p,
            ulParameterLen: len,
        };
        &mut self.mech
    }

    /// A view as the exported functions make one ([`Mechanism::new`]).
    pub fn view(&mut self) -> Result<Mechanism<'_>> {
        let p = self.raw();
        // SAFETY: `p` points to `self.mech`, whose parameter block is NULL or a buffer or
        // structure in `self` of the stated length, with every pointer inside it NULL or to a
        // buffer of its stated length (`new` keeps raw bytes from posing as such a structure);
        // all live as long as the borrow of `self`.
        unsafe { Mechanism::new(p) }
    }

    /// The trace text the boundary writes for this mechanism.
    pub fn trace_text(&mut self) -> String {
        let p = self.raw();
        // SAFETY: `p` points to a CK_MECHANISM that lives for this call (see `view`).
        unsafe { crate::ffi::boundary::mechanism_arg(p) }
    }
}

/// An output buffer with its length variable: both may be NULL.
#[derive(Debug, Clone)]
pub struct Out<T = u8> {
    /// `None`: a NULL buffer (a length query).
    pub buf: Option<Vec<T>>,
    /// Whether the length pointer is NULL.
    pub len_null: bool,
    /// The length variable; set to the buffer's size before each call, read after it.
    pub len: CK_ULONG,
}

impl<T: Copy + Default> Out<T> {
    /// A buffer of `size` elements (`None`: NULL).
    pub fn new(size: Option<usize>, len_null: bool) -> Out<T> {
        Out {
            buf: size.map(|n| vec![T::default(); n]),
            len_null,
            len: 0,
        }
    }

    fn raw(&mut self) -> (*mut T, *mut CK_ULONG) {
        let p = match &mut self.buf {
            Some(b) => {
                self.len = b.len() as CK_ULONG;
                b.as_mut_ptr()
            }
            None => {
                // A length query: what the length variable holds does not matter.
                self.len = 0;
                null_mut()
            }
        };
        let len = if self.len_null {
            null_mut()
        } else {
            &mut self.len as *mut CK_ULONG
        };
        (p, len)
    }
}

fn opt<T>(p: Option<&mut T>) -> *mut T {
    p.map_or(null_mut(), |p| p as *mut T)
}

fn mech_ptr(m: Option<&mut CMechanism>) -> *mut CK_MECHANISM {
    m.map_or(null_mut(), CMechanism::raw)
}

/// Functions of the shape (session, input, output with length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InOutFn {
    Encrypt,
    EncryptUpdate,
    Decrypt,
    DecryptUpdate,
    Digest,
    Sign,
    SignRecover,
    VerifyRecover,
    DigestEncryptUpdate,
    DecryptDigestUpdate,
    SignEncryptUpdate,
    DecryptVerifyUpdate,
}

/// Functions of the shape (session, output with length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFn {
    EncryptFinal,
    DecryptFinal,
    DigestFinal,
    SignFinal,
    GetOperationState,
}

/// Functions of the shape (session, input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFn {
    DigestUpdate,
    SignUpdate,
    VerifyUpdate,
    VerifyFinal,
    SeedRandom,
    GenerateRandom,
    InitPin,
}

/// Functions of the shape (session, mechanism, key), named as in the spec.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MechKeyFn {
    EncryptInit,
    DecryptInit,
    SignInit,
    VerifyInit,
    SignRecoverInit,
    VerifyRecoverInit,
    MessageEncryptInit,
    MessageDecryptInit,
    MessageSignInit,
    MessageVerifyInit,
}

/// Functions of the shape (session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFn {
    CloseSession,
    Logout,
    FindObjectsFinal,
    GetFunctionStatus,
    CancelFunction,
    MessageEncryptFinal,
    MessageDecryptFinal,
    MessageSignFinal,
    MessageVerifyFinal,
}

type InOutPtr = unsafe extern "C" fn(
    CK_SESSION_HANDLE,
    CK_BYTE_PTR,
    CK_ULONG,
    CK_BYTE_PTR,
    CK_ULONG_PTR,
) -> CK_RV;

/// (session, input, output): see [`InOutFn`].
pub fn in_out(f: InOutFn, s: CK_SESSION_HANDLE, input: &mut Buf, out: &mut Out) -> CK_RV {
    let f: InOutPtr = match f {
        InOutFn::Encrypt => crypt::C_Encrypt,
        InOutFn::EncryptUpdate => crypt::C_EncryptUpdate,
        InOutFn::Decrypt => crypt::C_Decrypt,
        InOutFn::DecryptUpdate => crypt::C_DecryptUpdate,
        InOutFn::Digest => digest::C_Digest,
        InOutFn::Sign => sign::C_Sign,
        InOutFn::SignRecover => sign::C_SignRecover,
        InOutFn::VerifyRecover => sign::C_VerifyRecover,
        InOutFn::DigestEncryptUpdate => crypt::C_DigestEncryptUpdate,
        InOutFn::DecryptDigestUpdate => crypt::C_DecryptDigestUpdate,
        InOutFn::SignEncryptUpdate => crypt::C_SignEncryptUpdate,
        InOutFn::DecryptVerifyUpdate => crypt::C_DecryptVerifyUpdate,
    };
    let (ip, il) = input.raw();
    let (op, ol) = out.raw();
    // SAFETY: every function above takes (session, input pointer and length, output pointer,
    // pointer to the output's length); the input is NULL or `il` bytes, the output NULL or
    // `*ol` bytes, the length pointer NULL or a live CK_ULONG, all valid for the call.
    unsafe { f(s, ip, il, op, ol) }
}

/// (session, output): see [`OutFn`].
pub fn final_(f: OutFn, s: CK_SESSION_HANDLE, out: &mut Out) -> CK_RV {
    let f: unsafe extern "C" fn(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR) -> CK_RV = match f {
        OutFn::EncryptFinal => crypt::C_EncryptFinal,
        OutFn::DecryptFinal => crypt::C_DecryptFinal,
        OutFn::DigestFinal => digest::C_DigestFinal,
        OutFn::SignFinal => sign::C_SignFinal,
        OutFn::GetOperationState => session::C_GetOperationState,
    };
    let (op, ol) = out.raw();
    // SAFETY: each takes (session, output pointer, pointer to its length); the output is NULL
    // or `*ol` bytes, the length pointer NULL or a live CK_ULONG.
    unsafe { f(s, op, ol) }
}

/// (session, input): see [`InFn`].
pub fn input(f: InFn, s: CK_SESSION_HANDLE, input: &mut Buf) -> CK_RV {
    let f: unsafe extern "C" fn(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG) -> CK_RV = match f {
        InFn::DigestUpdate => digest::C_DigestUpdate,
        InFn::SignUpdate => sign::C_SignUpdate,
        InFn::VerifyUpdate => sign::C_VerifyUpdate,
        InFn::VerifyFinal => sign::C_VerifyFinal,
        InFn::SeedRandom => random::C_SeedRandom,
        InFn::GenerateRandom => random::C_GenerateRandom,
        InFn::InitPin => slot_token::C_InitPIN,
    };
    let (ip, il) = input.raw();
    // SAFETY: each takes (session, pointer, length); the buffer is NULL or `il` bytes owned by
    // `input` (writable: C_GenerateRandom writes it).
    unsafe { f(s, ip, il) }
}

/// (session, mechanism, key): see [`MechKeyFn`]. `None`: a NULL mechanism.
pub fn init(
    f: MechKeyFn,
    s: CK_SESSION_HANDLE,
    m: Option<&mut CMechanism>,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    let f: unsafe extern "C" fn(CK_SESSION_HANDLE, CK_MECHANISM_PTR, CK_OBJECT_HANDLE) -> CK_RV =
        match f {
            MechKeyFn::EncryptInit => crypt::C_EncryptInit,
            MechKeyFn::DecryptInit => crypt::C_DecryptInit,
            MechKeyFn::SignInit => sign::C_SignInit,
            MechKeyFn::VerifyInit => sign::C_VerifyInit,
            MechKeyFn::SignRecoverInit => sign::C_SignRecoverInit,
            MechKeyFn::VerifyRecoverInit => sign::C_VerifyRecoverInit,
            MechKeyFn::MessageEncryptInit => message::C_MessageEncryptInit,
            MechKeyFn::MessageDecryptInit => message::C_MessageDecryptInit,
            MechKeyFn::MessageSignInit => message::C_MessageSignInit,
            MechKeyFn::MessageVerifyInit => message::C_MessageVerifyInit,
        };
    let m = mech_ptr(m);
    // SAFETY: each takes (session, mechanism, key); the mechanism is NULL or a CMechanism's,
    // valid for the call (see `CMechanism::view`).
    unsafe { f(s, m, key) }
}

/// (session): see [`SessionFn`].
pub fn plain(f: SessionFn, s: CK_SESSION_HANDLE) -> CK_RV {
    let f: unsafe extern "C" fn(CK_SESSION_HANDLE) -> CK_RV = match f {
        SessionFn::CloseSession => session::C_CloseSession,
        SessionFn::Logout => session::C_Logout,
        SessionFn::FindObjectsFinal => object::C_FindObjectsFinal,
        SessionFn::GetFunctionStatus => random::C_GetFunctionStatus,
        SessionFn::CancelFunction => random::C_CancelFunction,
        SessionFn::MessageEncryptFinal => message::C_MessageEncryptFinal,
        SessionFn::MessageDecryptFinal => message::C_MessageDecryptFinal,
        SessionFn::MessageSignFinal => message::C_MessageSignFinal,
        SessionFn::MessageVerifyFinal => message::C_MessageVerifyFinal,
    };
    // SAFETY: each takes a session handle only.
    unsafe { f(s) }
}

pub fn initialize() -> CK_RV {
    // SAFETY: a NULL pInitArgs is allowed (2.40 §5.4).
    unsafe { crate::ffi::fns::general::C_Initialize(null_mut()) }
}

pub fn get_slot_list(present: bool, out: &mut Out<CK_SLOT_ID>) -> CK_RV {
    let (p, len) = out.raw();
    // SAFETY: NULL or `*len` slot ids; `len` NULL or a live CK_ULONG.
    unsafe { slot_token::C_GetSlotList(present as CK_BBOOL, p, len) }
}

pub fn get_slot_info(slot: CK_SLOT_ID, info: Option<&mut CK_SLOT_INFO>) -> CK_RV {
    // SAFETY: NULL or a live CK_SLOT_INFO.
    unsafe { slot_token::C_GetSlotInfo(slot, opt(info)) }
}

pub fn get_token_info(slot: CK_SLOT_ID, info: Option<&mut CK_TOKEN_INFO>) -> CK_RV {
    // SAFETY: NULL or a live CK_TOKEN_INFO.
    unsafe { slot_token::C_GetTokenInfo(slot, opt(info)) }
}

pub fn get_mechanism_list(slot: CK_SLOT_ID, out: &mut Out<CK_MECHANISM_TYPE>) -> CK_RV {
    let (p, len) = out.raw();
    // SAFETY: NULL or `*len` mechanism types; `len` NULL or a live CK_ULONG.
    unsafe { slot_token::C_GetMechanismList(slot, p, len) }
}

pub fn get_mechanism_info(
    slot: CK_SLOT_ID,
    ty: CK_MECHANISM_TYPE,
    info: Option<&mut CK_MECHANISM_INFO>,
) -> CK_RV {
    // SAFETY: NULL or a live CK_MECHANISM_INFO.
    unsafe { slot_token::C_GetMechanismInfo(slot, ty, opt(info)) }
}

pub fn init_token(slot: CK_SLOT_ID, pin: &mut Buf, label: Option<&[u8; 32]>) -> CK_RV {
    let (p, len) = pin.raw();
    let label = label.map_or(null(), |l| l.as_ptr());
    // SAFETY: the PIN is NULL or `len` bytes; the label NULL or 32 bytes.
    unsafe { slot_token::C_InitToken(slot, p, len, label as *mut u8) }
}

pub fn set_pin(s: CK_SESSION_HANDLE, old: &mut Buf, new: &mut Buf) -> CK_RV {
    let (o, ol) = old.raw();
    let (n, nl) = new.raw();
    // SAFETY: each PIN is NULL or its stated length.
    unsafe { slot_token::C_SetPIN(s, o, ol, n, nl) }
}

pub fn open_session(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    handle: Option<&mut CK_SESSION_HANDLE>,
) -> CK_RV {
    // SAFETY: no application pointer or callback; the handle NULL or a live CK_ULONG.
    unsafe { session::C_OpenSession(slot, flags, null_mut(), None, opt(handle)) }
}

pub fn close_all_sessions(slot: CK_SLOT_ID) -> CK_RV {
    // SAFETY: no pointers.
    unsafe { session::C_CloseAllSessions(slot) }
}

pub fn get_session_info(s: CK_SESSION_HANDLE, info: Option<&mut CK_SESSION_INFO>) -> CK_RV {
    // SAFETY: NULL or a live CK_SESSION_INFO.
    unsafe { session::C_GetSessionInfo(s, opt(info)) }
}

pub fn set_operation_state(
    s: CK_SESSION_HANDLE,
    state: &mut Buf,
    enc: CK_OBJECT_HANDLE,
    auth: CK_OBJECT_HANDLE,
) -> CK_RV {
    let (p, len) = state.raw();
    // SAFETY: NULL or `len` bytes.
    unsafe { session::C_SetOperationState(s, p, len, enc, auth) }
}

pub fn login(s: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: &mut Buf) -> CK_RV {
    let (p, len) = pin.raw();
    // SAFETY: NULL or `len` bytes.
    unsafe { session::C_Login(s, user, p, len) }
}

pub fn create_object(
    s: CK_SESSION_HANDLE,
    t: &mut CTemplate,
    obj: Option<&mut CK_OBJECT_HANDLE>,
) -> CK_RV {
    let (p, count) = t.raw();
    // SAFETY: the template as `CTemplate::view` describes; the handle NULL or live.
    unsafe { object::C_CreateObject(s, p, count, opt(obj)) }
}

pub fn copy_object(
    s: CK_SESSION_HANDLE,
    from: CK_OBJECT_HANDLE,
    t: &mut CTemplate,
    obj: Option<&mut CK_OBJECT_HANDLE>,
) -> CK_RV {
    let (p, count) = t.raw();
    // SAFETY: as for `create_object`.
    unsafe { object::C_CopyObject(s, from, p, count, opt(obj)) }
}

pub fn destroy_object(s: CK_SESSION_HANDLE, obj: CK_OBJECT_HANDLE) -> CK_RV {
    // SAFETY: no pointers.
    unsafe { object::C_DestroyObject(s, obj) }
}

pub fn get_object_size(
    s: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    size: Option<&mut CK_ULONG>,
) -> CK_RV {
    // SAFETY: NULL or a live CK_ULONG.
    unsafe { object::C_GetObjectSize(s, obj, opt(size)) }
}

pub fn get_attribute_value(
    s: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    t: &mut CTemplate,
) -> CK_RV {
    let (p, count) = t.raw();
    // SAFETY: the template as `CTemplate::view` describes; each value buffer is writable.
    unsafe { object::C_GetAttributeValue(s, obj, p, count) }
}

pub fn set_attribute_value(
    s: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    t: &mut CTemplate,
) -> CK_RV {
    let (p, count) = t.raw();
    // SAFETY: the template as `CTemplate::view` describes.
    unsafe { object::C_SetAttributeValue(s, obj, p, count) }
}

pub fn find_objects_init(s: CK_SESSION_HANDLE, t: &mut CTemplate) -> CK_RV {
    let (p, count) = t.raw();
    // SAFETY: the template as `CTemplate::view` describes.
    unsafe { object::C_FindObjectsInit(s, p, count) }
}

/// `found`: `None` for a NULL array, with `max` as the count.
pub fn find_objects(
    s: CK_SESSION_HANDLE,
    found: Option<&mut [CK_OBJECT_HANDLE]>,
    max: CK_ULONG,
    count: Option<&mut CK_ULONG>,
) -> CK_RV {
    let (p, max) = match found {
        Some(f) => (f.as_mut_ptr(), f.len() as CK_ULONG),
        None => (null_mut(), max),
    };
    // SAFETY: NULL or `max` writable handles; the count NULL or a live CK_ULONG.
    unsafe { object::C_FindObjects(s, p, max, opt(count)) }
}

pub fn digest_init(s: CK_SESSION_HANDLE, m: Option<&mut CMechanism>) -> CK_RV {
    let m = mech_ptr(m);
    // SAFETY: NULL or a CMechanism's (see `CMechanism::view`).
    unsafe { digest::C_DigestInit(s, m) }
}

pub fn digest_key(s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> CK_RV {
    // SAFETY: no pointers.
    unsafe { digest::C_DigestKey(s, key) }
}

pub fn verify(s: CK_SESSION_HANDLE, data: &mut Buf, sig: &mut Buf) -> CK_RV {
    let (d, dl) = data.raw();
    let (g, gl) = sig.raw();
    // SAFETY: each NULL or its stated length.
    unsafe { sign::C_Verify(s, d, dl, g, gl) }
}

pub fn generate_key(
    s: CK_SESSION_HANDLE,
    m: Option<&mut CMechanism>,
    t: &mut CTemplate,
    key: Option<&mut CK_OBJECT_HANDLE>,
) -> CK_RV {
    let m = mech_ptr(m);
    let (p, count) = t.raw();
    // SAFETY: mechanism and template as their views describe; the handle NULL or live.
    unsafe { keys::C_GenerateKey(s, m, p, count, opt(key)) }
}

pub fn generate_key_pair(
    s: CK_SESSION_HANDLE,
    m: Option<&mut CMechanism>,
    public: &mut CTemplate,
    private: &mut CTemplate,
    handles: (Option<&mut CK_OBJECT_HANDLE>, Option<&mut CK_OBJECT_HANDLE>),
) -> CK_RV {
    let m = mech_ptr(m);
    let (pp, pc) = public.raw();
    let (qp, qc) = private.raw();
    // SAFETY: mechanism and templates as their views describe; the handles NULL or live.
    unsafe { keys::C_GenerateKeyPair(s, m, pp, pc, qp, qc, opt(handles.0), opt(handles.1)) }
}

pub fn wrap_key(
    s: CK_SESSION_HANDLE,
    m: Option<&mut CMechanism>,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    out: &mut Out,
) -> CK_RV {
    let m = mech_ptr(m);
    let (op, ol) = out.raw();
    // SAFETY: mechanism as its view describes; output NULL or `*ol` bytes, length NULL or live.
    unsafe { keys::C_WrapKey(s, m, wrapping, key, op, ol) }
}

pub fn unwrap_key(
    s: CK_SESSION_HANDLE,
    m: Option<&mut CMechanism>,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: &mut Buf,
    t: &mut CTemplate,
    key: Option<&mut CK_OBJECT_HANDLE>,
) -> CK_RV {
    let m = mech_ptr(m);
    let (w, wl) = wrapped.raw();
    let (p, count) = t.raw();
    // SAFETY: mechanism and template as their views describe; the wrapped key NULL or `wl`
    // bytes; the handle NULL or live.
    unsafe { keys::C_UnwrapKey(s, m, unwrapping, w, wl, p, count, opt(key)) }
}

pub fn derive_key(
    s: CK_SESSION_HANDLE,
    m: Option<&mut CMechanism>,
    base: CK_OBJECT_HANDLE,
    t: &mut CTemplate,
    key: Option<&mut CK_OBJECT_HANDLE>,
) -> CK_RV {
    let m = mech_ptr(m);
    let (p, count) = t.raw();
    // SAFETY: mechanism and template as their views describe; the handle NULL or live.
    unsafe { keys::C_DeriveKey(s, m, base, p, count, opt(key)) }
}

pub fn session_cancel(s: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    // SAFETY: no pointers.
    unsafe { message::C_SessionCancel(s, flags) }
}
