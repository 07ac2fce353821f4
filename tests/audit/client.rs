//! The PKCS#11 client the child processes of `tests/audit.rs` run: the cryptoki crate on the
//! built libp11gate.so, plus a raw view of the same loaded module for the one call whose exact
//! shape matters (a single `C_GetAttributeValue` with the buffer already sized).
#![allow(dead_code)]

use std::path::PathBuf;
use std::ptr;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use pkcs11_sys::*;

use super::child::param;
use crate::common::USER_PIN;

/// The module under test, as the parent passed it.
pub fn module() -> PathBuf {
    PathBuf::from(param("AUDIT_MODULE"))
}

/// Loads libp11gate.so and initialises it as Vault does (CKF_OS_LOCKING_OK).
pub fn load() -> Pkcs11 {
    let ctx = Pkcs11::new(module()).expect("load libp11gate.so");
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    ctx
}

/// The slot whose token has the label the parent passed (AUDIT_TOKEN).
pub fn slot(ctx: &Pkcs11) -> Slot {
    let label = param("AUDIT_TOKEN");
    let slots = ctx.get_slots_with_token().expect("C_GetSlotList");
    let matching: Vec<Slot> = slots
        .into_iter()
        .filter(|s| ctx.get_token_info(*s).expect("C_GetTokenInfo").label() == label)
        .collect();
    assert_eq!(matching.len(), 1, "one token labelled {label}");
    matching[0]
}

pub fn user_login(s: &Session) {
    s.login(UserType::User, Some(&AuthPin::from(USER_PIN)))
        .expect("C_Login(CKU_USER)");
}

/// The template of the AES-256 keys the scenarios generate.
pub fn aes_template(label: &str, id: &[u8], token: bool) -> Vec<Attribute> {
    vec![
        Attribute::Token(token),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::ValueLen(32.into()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

/// The attribute types of [`aes_template`], as the audit's `attrs` names them.
pub const AES_TEMPLATE_ATTRS: &[&str] = &[
    "CKA_TOKEN",
    "CKA_PRIVATE",
    "CKA_SENSITIVE",
    "CKA_EXTRACTABLE",
    "CKA_ENCRYPT",
    "CKA_DECRYPT",
    "CKA_VALUE_LEN",
    "CKA_LABEL",
    "CKA_ID",
];

pub fn gen_aes(s: &Session, label: &str, id: &[u8], token: bool) -> ObjectHandle {
    s.generate_key(&Mechanism::AesKeyGen, &aes_template(label, id, token))
        .expect("C_GenerateKey(CKM_AES_KEY_GEN)")
}

pub fn hmac_template(label: &str, id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::ValueLen(32.into()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

pub const HMAC_TEMPLATE_ATTRS: &[&str] = &[
    "CKA_TOKEN",
    "CKA_PRIVATE",
    "CKA_SENSITIVE",
    "CKA_KEY_TYPE",
    "CKA_SIGN",
    "CKA_VERIFY",
    "CKA_VALUE_LEN",
    "CKA_LABEL",
    "CKA_ID",
];

pub fn gen_hmac(s: &Session, label: &str, id: &[u8]) -> ObjectHandle {
    s.generate_key(&Mechanism::GenericSecretKeyGen, &hmac_template(label, id))
        .expect("C_GenerateKey(CKM_GENERIC_SECRET_KEY_GEN)")
}

/// A secret key object with a known value (C_CreateObject).
pub fn secret_object(class_type: KeyType, value: &[u8], label: &[u8], id: &[u8]) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(class_type),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Value(value.to_vec()),
        Attribute::Label(label.to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    if class_type == KeyType::AES {
        t.extend([Attribute::Encrypt(true), Attribute::Decrypt(true)]);
    } else {
        t.extend([Attribute::Sign(true), Attribute::Verify(true)]);
    }
    t
}

/// AES-GCM with a 12-byte IV, no AAD, a 128-bit tag.
pub fn gcm(iv: &mut [u8; 12]) -> Mechanism<'_> {
    Mechanism::AesGcm(GcmParams::new(iv, &[], 128.into()).expect("GCM params"))
}

/// The PKCS#11 return code of a failed call; panics on success or a non-PKCS#11 error.
#[track_caller]
pub fn rv_of<T: std::fmt::Debug>(r: cryptoki::error::Result<T>) -> RvError {
    match r {
        Ok(v) => panic!("expected a failure, got Ok({v:?})"),
        Err(Error::Pkcs11(rv, _)) => rv,
        Err(other) => panic!("expected a PKCS#11 return code, got {other:?}"),
    }
}

/// `Ok` → None, a PKCS#11 failure → its code; panics on anything else.
#[track_caller]
pub fn outcome<T>(r: &cryptoki::error::Result<T>) -> Option<RvError> {
    match r {
        Ok(_) => None,
        Err(Error::Pkcs11(rv, _)) => Some(*rv),
        Err(other) => panic!("expected a PKCS#11 return code, got {other:?}"),
    }
}

/// The module's 2.40 function list, reached through a second `dlopen` of the same file (which
/// only takes a reference to the copy cryptoki loaded).
pub struct Raw {
    list: CK_FUNCTION_LIST,
    _lib: libloading::Library,
}

impl Raw {
    pub fn open() -> Raw {
        // SAFETY: the module is already loaded by the cryptoki client; this dlopen only takes a
        // reference and runs no initialiser.
        let lib = unsafe { libloading::Library::new(module()) }.expect("dlopen module");
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
        let get: libloading::Symbol<unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV> =
            unsafe { lib.get(b"C_GetFunctionList\0") }.expect("C_GetFunctionList symbol");
        let mut list: CK_FUNCTION_LIST_PTR = ptr::null_mut();
        // SAFETY: `list` is a valid out-pointer.
        let rv = unsafe { get(&mut list) };
        assert_eq!(rv, CKR_OK, "C_GetFunctionList");
        assert!(!list.is_null());
        // SAFETY: on CKR_OK the module hands out its function list, valid while it is loaded.
        let list = unsafe { *list };
        Raw { list, _lib: lib }
    }

    /// One `C_GetAttributeValue` of a CK_ULONG attribute, the buffer sized beforehand (no
    /// length query): its rv and value.
    pub fn get_ulong(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> (CK_RV, CK_ULONG) {
        let mut value: CK_ULONG = 0;
        let mut attr = CK_ATTRIBUTE {
            type_: ty,
            pValue: &mut value as *mut CK_ULONG as *mut _,
            ulValueLen: std::mem::size_of::<CK_ULONG>() as CK_ULONG,
        };
        let f = self.list.C_GetAttributeValue.expect("C_GetAttributeValue");
        // SAFETY: `attr` points at a live CK_ULONG of the stated size for the whole call.
        let rv = unsafe { f(session, object, &mut attr, 1) };
        (rv, value)
    }
}
