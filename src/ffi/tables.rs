//! p11gate's own function lists and interfaces: immutable statics, never the upstream's.
//!
//! The 2.40 list is what `C_GetFunctionList` returns (Vault uses only this). The 3.0 list is
//! offered through `C_GetInterface` when the upstream has a 3.0 interface; its `C_GetInfo`
//! reports 3.0, as a client that chose the 3.0 interface expects.

use std::ffi::c_void;

use pkcs11_sys::*;

use super::fns::{
    crypt, digest, general, keys, message, object, random, session, sign, slot_token,
};

/// The interface name the spec defines for the standard function lists.
pub const INTERFACE_NAME: &[u8; 8] = b"PKCS 11\0";

/// A function list: the 68 PKCS#11 2.40 entries with the given `C_GetInfo`, then any more.
macro_rules! function_list {
    ($ty:ident, $major:expr, $minor:expr, $get_info:path $(, $field:ident: $value:expr)* $(,)?) => {
        $ty {
            version: CK_VERSION { major: $major, minor: $minor },
            C_Initialize: Some(general::C_Initialize),
            C_Finalize: Some(general::C_Finalize),
            C_GetInfo: Some($get_info),
            C_GetFunctionList: Some(general::C_GetFunctionList),
            C_GetSlotList: Some(slot_token::C_GetSlotList),
            C_GetSlotInfo: Some(slot_token::C_GetSlotInfo),
            C_GetTokenInfo: Some(slot_token::C_GetTokenInfo),
            C_GetMechanismList: Some(slot_token::C_GetMechanismList),
            C_GetMechanismInfo: Some(slot_token::C_GetMechanismInfo),
            C_InitToken: Some(slot_token::C_InitToken),
            C_InitPIN: Some(slot_token::C_InitPIN),
            C_SetPIN: Some(slot_token::C_SetPIN),
            C_OpenSession: Some(session::C_OpenSession),
            C_CloseSession: Some(session::C_CloseSession),
            C_CloseAllSessions: Some(session::C_CloseAllSessions),
            C_GetSessionInfo: Some(session::C_GetSessionInfo),
            C_GetOperationState: Some(session::C_GetOperationState),
            C_SetOperationState: Some(session::C_SetOperationState),
            C_Login: Some(session::C_Login),
            C_Logout: Some(session::C_Logout),
            C_CreateObject: Some(object::C_CreateObject),
            C_CopyObject: Some(object::C_CopyObject),
            C_DestroyObject: Some(object::C_DestroyObject),
            C_GetObjectSize: Some(object::C_GetObjectSize),
            C_GetAttributeValue: Some(object::C_GetAttributeValue),
            C_SetAttributeValue: Some(object::C_SetAttributeValue),
            C_FindObjectsInit: Some(object::C_FindObjectsInit),
            C_FindObjects: Some(object::C_FindObjects),
            C_FindObjectsFinal: Some(object::C_FindObjectsFinal),
            C_EncryptInit: Some(crypt::C_EncryptInit),
            C_Encrypt: Some(crypt::C_Encrypt),
            C_EncryptUpdate: Some(crypt::C_EncryptUpdate),
            C_EncryptFinal: Some(crypt::C_EncryptFinal),
            C_DecryptInit: Some(crypt::C_DecryptInit),
            C_Decrypt: Some(crypt::C_Decrypt),
            C_DecryptUpdate: Some(crypt::C_DecryptUpdate),
            C_DecryptFinal: Some(crypt::C_DecryptFinal),
            C_DigestInit: Some(digest::C_DigestInit),
            C_Digest: Some(digest::C_Digest),
            C_DigestUpdate: Some(digest::C_DigestUpdate),
            C_DigestKey: Some(digest::C_DigestKey),
            C_DigestFinal: Some(digest::C_DigestFinal),
            C_SignInit: Some(sign::C_SignInit),
            C_Sign: Some(sign::C_Sign),
            C_SignUpdate: Some(sign::C_SignUpdate),
            C_SignFinal: Some(sign::C_SignFinal),
            C_SignRecoverInit: Some(sign::C_SignRecoverInit),
            C_SignRecover: Some(sign::C_SignRecover),
            C_VerifyInit: Some(sign::C_VerifyInit),
            C_Verify: Some(sign::C_Verify),
            C_VerifyUpdate: Some(sign::C_VerifyUpdate),
            C_VerifyFinal: Some(sign::C_VerifyFinal),
            C_VerifyRecoverInit: Some(sign::C_VerifyRecoverInit),
            C_VerifyRecover: Some(sign::C_VerifyRecover),
            C_DigestEncryptUpdate: Some(crypt::C_DigestEncryptUpdate),
            C_DecryptDigestUpdate: Some(crypt::C_DecryptDigestUpdate),
            C_SignEncryptUpdate: Some(crypt::C_SignEncryptUpdate),
            C_DecryptVerifyUpdate: Some(crypt::C_DecryptVerifyUpdate),
            C_GenerateKey: Some(keys::C_GenerateKey),
            C_GenerateKeyPair: Some(keys::C_GenerateKeyPair),
            C_WrapKey: Some(keys::C_WrapKey),
            C_UnwrapKey: Some(keys::C_UnwrapKey),
            C_DeriveKey: Some(keys::C_DeriveKey),
            C_SeedRandom: Some(random::C_SeedRandom),
            C_GenerateRandom: Some(random::C_GenerateRandom),
            C_GetFunctionStatus: Some(random::C_GetFunctionStatus),
            C_CancelFunction: Some(random::C_CancelFunction),
            C_WaitForSlotEvent: Some(slot_token::C_WaitForSlotEvent),
            $($field: $value,)*
        }
    };
}

/// The PKCS#11 2.40 function list: all 68 functions.
pub static FUNCTION_LIST: CK_FUNCTION_LIST =
    function_list!(CK_FUNCTION_LIST, 2, 40, general::C_GetInfo);

/// The PKCS#11 3.0 function list: the 68 above (with a `C_GetInfo` that reports 3.0) plus the 24
/// 3.0 functions.
pub static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = function_list!(
    CK_FUNCTION_LIST_3_0,
    3,
    0,
    general::get_info_3_0,
    C_GetInterfaceList: Some(general::C_GetInterfaceList),
    C_GetInterface: Some(general::C_GetInterface),
    C_LoginUser: Some(message::C_LoginUser),
    C_SessionCancel: Some(message::C_SessionCancel),
    C_MessageEncryptInit: Some(message::C_MessageEncryptInit),
    C_EncryptMessage: Some(message::C_EncryptMessage),
    C_EncryptMessageBegin: Some(message::C_EncryptMessageBegin),
    C_EncryptMessageNext: Some(message::C_EncryptMessageNext),
    C_MessageEncryptFinal: Some(message::C_MessageEncryptFinal),
    C_MessageDecryptInit: Some(message::C_MessageDecryptInit),
    C_DecryptMessage: Some(message::C_DecryptMessage),
    C_DecryptMessageBegin: Some(message::C_DecryptMessageBegin),
    C_DecryptMessageNext: Some(message::C_DecryptMessageNext),
    C_MessageDecryptFinal: Some(message::C_MessageDecryptFinal),
    C_MessageSignInit: Some(message::C_MessageSignInit),
    C_SignMessage: Some(message::C_SignMessage),
    C_SignMessageBegin: Some(message::C_SignMessageBegin),
    C_SignMessageNext: Some(message::C_SignMessageNext),
    C_MessageSignFinal: Some(message::C_MessageSignFinal),
    C_MessageVerifyInit: Some(message::C_MessageVerifyInit),
    C_VerifyMessage: Some(message::C_VerifyMessage),
    C_VerifyMessageBegin: Some(message::C_VerifyMessageBegin),
    C_VerifyMessageNext: Some(message::C_VerifyMessageNext),
    C_MessageVerifyFinal: Some(message::C_MessageVerifyFinal),
);

/// A `CK_INTERFACE` that may live in a static.
#[repr(transparent)]
#[derive(Debug)]
pub struct Interface(pub CK_INTERFACE);

// SAFETY: the pointers inside an `Interface` point to immutable statics (the name and the
// function lists above) that are never written, so sharing them between threads is sound.
unsafe impl Sync for Interface {}

pub static INTERFACE_3_0: Interface = Interface(CK_INTERFACE {
    pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_CHAR,
    pFunctionList: &FUNCTION_LIST_3_0 as *const CK_FUNCTION_LIST_3_0 as *mut c_void,
    flags: 0,
});

pub static INTERFACE_2_40: Interface = Interface(CK_INTERFACE {
    pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_CHAR,
    pFunctionList: &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut c_void,
    flags: 0,
});

/// The interfaces on offer, the default first.
pub fn interfaces(with_3_0: bool) -> &'static [&'static Interface] {
    static BOTH: [&Interface; 2] = [&INTERFACE_3_0, &INTERFACE_2_40];
    static ONLY_2_40: [&Interface; 1] = [&INTERFACE_2_40];
    if with_3_0 {
        &BOTH
    } else {
        &ONLY_2_40
    }
}
