//! Checked views of the caller's memory.
//!
//! The exported functions build these from raw C arguments, checking what the spec forbids
//! (a NULL pointer with a non-zero length, a NULL length or handle pointer) and answering
//! `CKR_ARGUMENTS_BAD` before any backend sees the call. A view keeps the caller's original
//! pointer, so the upstream backend forwards exactly what the application passed (NULL output
//! buffers for length queries, in-out mechanism parameters such as a GCM IV the HSM writes back),
//! while a Rust backend reads and writes through safe methods.

use std::ffi::c_void;
use std::marker::PhantomData;

use pkcs11_sys::*;

use crate::error::{Error, Result};

/// An input byte buffer (`pData`, `ulDataLen`): non-NULL unless empty.
/// Whether `count` elements of `T` could exist at all: no caller has a buffer larger than
/// `isize::MAX` bytes, and a larger count (`CK_ULONG` max) cannot even be described to Rust
/// (making such a slice is undefined behaviour). Such counts are refused as arguments.
fn representable<T>(count: CK_ULONG) -> bool {
    (count as u128) * (std::mem::size_of::<T>().max(1) as u128) <= isize::MAX as u128
}

#[derive(Debug, Clone, Copy)]
pub struct InBuf<'a> {
    ptr: *const u8,
    len: CK_ULONG,
    _caller: PhantomData<&'a [u8]>,
}

impl<'a> InBuf<'a> {
    /// # Safety
    /// When `ptr` is not NULL it must point to `len` readable bytes that stay valid and
    /// unmodified for `'a` (the PKCS#11 contract for input buffers during a call).
    pub unsafe fn new(ptr: *const u8, len: CK_ULONG) -> Result<Self> {
        if (ptr.is_null() && len != 0) || !representable::<u8>(len) {
            return Err(Error::ArgumentsBad);
        }
        Ok(InBuf {
            ptr,
            len,
            _caller: PhantomData,
        })
    }

    /// A view of p11gate's own bytes (a stored credential), for passing to a backend.
    pub fn from_slice(bytes: &'a [u8]) -> Self {
        InBuf {
            ptr: bytes.as_ptr(),
            len: bytes.len() as CK_ULONG,
            _caller: PhantomData,
        }
    }

    pub fn len(&self) -> CK_ULONG {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The caller's bytes.
    pub fn as_slice(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &[];
        }
        // SAFETY: non-NULL with `len` readable bytes valid for 'a, as `new`'s contract requires.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len as usize) }
    }

    /// The caller's pointer as it was passed (NULL stays NULL), for forwarding.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr as *mut u8
    }
}

/// An output array with the two-call length convention (`pOut`, `pulOutLen`): a NULL `pOut`
/// asks for the length; a short buffer gets `CKR_BUFFER_TOO_SMALL` and the length needed.
#[derive(Debug)]
pub struct OutBuf<'a, T = u8> {
    ptr: *mut T,
    len: &'a mut CK_ULONG,
}

impl<'a, T: Copy> OutBuf<'a, T> {
    /// # Safety
    /// `len`, when not NULL, must point to a writable `CK_ULONG`; `ptr`, when not NULL, to
    /// `*len` writable elements; both valid for `'a`.
    pub unsafe fn new(ptr: *mut T, len: *mut CK_ULONG) -> Result<Self> {
        // SAFETY: `len` is valid and writable when not NULL, per this function's contract.
        let len = unsafe { len.as_mut() }.ok_or(Error::ArgumentsBad)?;
        Ok(OutBuf { ptr, len })
    }

    /// A length query over p11gate's own counter: asks how many elements there are.
    pub fn length_query(len: &'a mut CK_ULONG) -> Self {
        OutBuf {
            ptr: std::ptr::null_mut(),
            len,
        }
    }

    /// An output buffer over p11gate's own memory; `len` starts as the slice's length.
    pub fn from_slice(buf: &'a mut [T], len: &'a mut CK_ULONG) -> Self {
        *len = buf.len() as CK_ULONG;
        OutBuf {
            ptr: buf.as_mut_ptr(),
            len,
        }
    }

    /// Whether this is a length query (NULL output): such a call ends no operation.
    pub fn is_length_query(&self) -> bool {
        self.ptr.is_null()
    }

    /// The length the caller's length variable holds now (after a call: what was written).
    pub fn len_value(&self) -> CK_ULONG {
        *self.len
    }

    /// The same caller buffer, lent to a backend call so that the length can be read after it.
    pub fn reborrow(&mut self) -> OutBuf<'_, T> {
        OutBuf {
            ptr: self.ptr,
            len: &mut *self.len,
        }
    }

    /// Answers with a length only: the length needed, for a length query or a buffer that is
    /// too small (the caller then gets `CKR_BUFFER_TOO_SMALL` from the backend).
    pub fn put_len(&mut self, needed: CK_ULONG) -> Result<()> {
        *self.len = needed;
        Ok(())
    }

    /// The caller's pointers as passed, for forwarding.
    pub fn as_raw(&mut self) -> (*mut T, *mut CK_ULONG) {
        (self.ptr, self.len as *mut CK_ULONG)
    }

    /// Answers with `data` by the spec's convention (PKCS#11 2.40 §5.2).
    pub fn put(&mut self, data: &[T]) -> Result<()> {
        let needed = data.len() as CK_ULONG;
        if self.ptr.is_null() {
            *self.len = needed;
            return Ok(());
        }
        if *self.len < needed {
            *self.len = needed;
            return Err(Error::BufferTooSmall);
        }
        // SAFETY: `ptr` has room for `*len >= data.len()` elements (contract of `new`), and
        // caller memory cannot overlap our own `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr, data.len()) };
        *self.len = needed;
        Ok(())
    }
}

/// A fixed-size output byte buffer (`C_GenerateRandom`'s `pRandomData`, `ulRandomLen`).
#[derive(Debug)]
pub struct MutBuf<'a> {
    ptr: *mut u8,
    len: CK_ULONG,
    _caller: PhantomData<&'a mut [u8]>,
}

impl<'a> MutBuf<'a> {
    /// # Safety
    /// When `ptr` is not NULL it must point to `len` writable bytes valid for `'a`.
    pub unsafe fn new(ptr: *mut u8, len: CK_ULONG) -> Result<Self> {
        if (ptr.is_null() && len != 0) || !representable::<u8>(len) {
            return Err(Error::ArgumentsBad);
        }
        Ok(MutBuf {
            ptr,
            len,
            _caller: PhantomData,
        })
    }

    pub fn len(&self) -> CK_ULONG {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.ptr.is_null() || self.len == 0 {
            return &mut [];
        }
        // SAFETY: non-NULL with `len` writable bytes valid for 'a, per `new`'s contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len as usize) }
    }

    pub fn as_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
}

/// An attribute template (`pTemplate`, `ulCount`): non-NULL unless empty. The attribute values
/// stay the caller's; `C_GetAttributeValue` writes into them.
#[derive(Debug)]
pub struct Template<'a> {
    ptr: *mut CK_ATTRIBUTE,
    count: CK_ULONG,
    _caller: PhantomData<&'a mut [CK_ATTRIBUTE]>,
}

impl<'a> Template<'a> {
    /// # Safety
    /// When `ptr` is not NULL it must point to `count` `CK_ATTRIBUTE`s valid for `'a`, each
    /// `pValue` pointing to `ulValueLen` bytes or NULL.
    pub unsafe fn new(ptr: *mut CK_ATTRIBUTE, count: CK_ULONG) -> Result<Self> {
        if (ptr.is_null() && count != 0) || !representable::<CK_ATTRIBUTE>(count) {
            return Err(Error::ArgumentsBad);
        }
        Ok(Template {
            ptr,
            count,
            _caller: PhantomData,
        })
    }

    /// A template that gives values (create, generate, copy, set, find, unwrap, derive): as
    /// [`Template::new`], and a NULL value with a non-zero length is refused with
    /// `CKR_ATTRIBUTE_VALUE_INVALID` before any backend sees it (SoftHSMv2 dereferences it).
    ///
    /// # Safety
    /// As for [`Template::new`].
    pub unsafe fn input(ptr: *mut CK_ATTRIBUTE, count: CK_ULONG) -> Result<Self> {
        // SAFETY: the caller's contract is this function's.
        let t = unsafe { Template::new(ptr, count) }?;
        if t.attributes().iter().any(|a| {
            (a.pValue.is_null() && a.ulValueLen != 0) || !representable::<u8>(a.ulValueLen)
        }) {
            return Err(Error::Backend(CKR_ATTRIBUTE_VALUE_INVALID));
        }
        Ok(t)
    }

    pub fn len(&self) -> CK_ULONG {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The attribute headers (type, pointer, length).
    pub fn attributes(&self) -> &[CK_ATTRIBUTE] {
        if self.ptr.is_null() || self.count == 0 {
            return &[];
        }
        // SAFETY: `count` valid attributes at `ptr` for 'a, per `new`'s contract.
        unsafe { std::slice::from_raw_parts(self.ptr, self.count as usize) }
    }

    /// A `CK_BBOOL` attribute's value, if present and well-formed.
    pub fn bool_value(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<bool> {
        match self.value(ty)? {
            [b] => Some(*b != CK_FALSE),
            _ => None,
        }
    }

    /// A `CK_ULONG` attribute's value (`CKA_CLASS`, `CKA_KEY_TYPE`), if present and well-formed.
    pub fn ulong_value(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        let bytes: [u8; std::mem::size_of::<CK_ULONG>()] = self.value(ty)?.try_into().ok()?;
        Some(CK_ULONG::from_ne_bytes(bytes))
    }

    /// Every attribute as (type, value); the value is `None` for a NULL `pValue` with a length
    /// (an empty value for NULL with length 0).
    pub fn entries(&self) -> Vec<(CK_ATTRIBUTE_TYPE, Option<&[u8]>)> {
        self.attributes()
            .iter()
            .map(|a| {
                let v = if a.pValue.is_null() && a.ulValueLen == 0 {
                    // An empty value (CKA_LABEL = "", say).
                    Some(&[][..])
                } else if a.pValue.is_null() || !representable::<u8>(a.ulValueLen) {
                    None
                } else {
                    // SAFETY: each pValue points to ulValueLen bytes, per `new`'s contract.
                    Some(unsafe {
                        std::slice::from_raw_parts(a.pValue as *const u8, a.ulValueLen as usize)
                    })
                };
                (a.type_, v)
            })
            .collect()
    }

    /// The value of the attribute of type `ty`, if present with a non-NULL value.
    pub fn value(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        let a = self.attributes().iter().find(|a| a.type_ == ty)?;
        // After C_GetAttributeValue a length may be CK_UNAVAILABLE_INFORMATION: no value.
        if a.pValue.is_null() || !representable::<u8>(a.ulValueLen) {
            return None;
        }
        // SAFETY: each pValue points to ulValueLen bytes, per `new`'s contract.
        Some(unsafe { std::slice::from_raw_parts(a.pValue as *const u8, a.ulValueLen as usize) })
    }

    /// Answers attribute `i` of a `C_GetAttributeValue` template by the spec's rules (2.40
    /// §5.7): `None` sets `CK_UNAVAILABLE_INFORMATION`; a NULL `pValue` gets the length; a
    /// buffer too small gets `CK_UNAVAILABLE_INFORMATION` and `false` is returned.
    pub fn answer(&mut self, i: usize, value: Option<&[u8]>) -> bool {
        if self.ptr.is_null() || i >= self.count as usize {
            return false;
        }
        // SAFETY: `i < count` attributes at `ptr`, valid and writable for 'a per `new`'s
        // contract (C_GetAttributeValue's template is the caller's to be written).
        let a = unsafe { &mut *self.ptr.add(i) };
        let Some(value) = value else {
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
            return true;
        };
        if a.pValue.is_null() {
            a.ulValueLen = value.len() as CK_ULONG;
            return true;
        }
        if (a.ulValueLen as usize) < value.len() {
            a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
            return false;
        }
        // SAFETY: pValue has room for ulValueLen >= value.len() bytes (the caller's buffer),
        // which cannot overlap p11gate's own `value`.
        unsafe {
            std::ptr::copy_nonoverlapping(value.as_ptr(), a.pValue as *mut u8, value.len());
        }
        a.ulValueLen = value.len() as CK_ULONG;
        true
    }

    pub fn as_ptr(&self) -> *mut CK_ATTRIBUTE {
        self.ptr
    }

    /// This template with `extra` attributes appended (values of p11gate's own, static), built
    /// in `storage`: the caller's attributes first, unchanged, then the extra ones.
    pub fn with_extra<'s>(
        &self,
        extra: &[(CK_ATTRIBUTE_TYPE, &'static [u8])],
        storage: &'s mut Vec<CK_ATTRIBUTE>,
    ) -> Template<'s>
    where
        'a: 's,
    {
        storage.clear();
        storage.extend_from_slice(self.attributes());
        storage.extend(extra.iter().map(|(type_, value)| CK_ATTRIBUTE {
            type_: *type_,
            pValue: value.as_ptr() as *mut std::ffi::c_void,
            ulValueLen: value.len() as CK_ULONG,
        }));
        // SAFETY: the copied attributes point to the caller's values, valid for 'a (which
        // outlives 's); the extra ones point to 'static bytes of their stated length. Backends
        // read creation templates and never write through them.
        unsafe { Template::new(storage.as_mut_ptr(), storage.len() as CK_ULONG) }
            .expect("a non-NULL template")
    }
}

/// Attribute values read from a backend into p11gate's own memory (for policy decisions that
/// depend on an existing object, such as the source of `C_CopyObject`).
#[derive(Debug)]
pub struct AttributeQuery {
    attrs: Vec<CK_ATTRIBUTE>,
    values: Vec<Vec<u8>>,
}

impl AttributeQuery {
    /// Asks for these attribute types, each with room for `max_len` bytes.
    pub fn new(types: &[CK_ATTRIBUTE_TYPE], max_len: usize) -> Self {
        let mut values: Vec<Vec<u8>> = types.iter().map(|_| vec![0u8; max_len]).collect();
        let attrs = types
            .iter()
            .zip(values.iter_mut())
            .map(|(&type_, v)| CK_ATTRIBUTE {
                type_,
                pValue: v.as_mut_ptr().cast(),
                ulValueLen: max_len as CK_ULONG,
            })
            .collect();
        AttributeQuery { attrs, values }
    }

    /// The template to pass to `Backend::get_attribute_value`.
    pub fn template(&mut self) -> Template<'_> {
        // SAFETY: every attribute points into its own buffer in `self.values`, which has exactly
        // `ulValueLen` bytes and lives (unmoved: only the Vec headers are owned here) as long as
        // the borrow of `self`.
        unsafe { Template::new(self.attrs.as_mut_ptr(), self.attrs.len() as CK_ULONG) }
            .expect("a non-NULL template")
    }

    /// The value the backend returned for the `i`th type, if it returned one.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        let len = self.attrs.get(i)?.ulValueLen;
        if len == CK_UNAVAILABLE_INFORMATION || len as usize > self.values[i].len() {
            return None;
        }
        Some(&self.values[i][..len as usize])
    }

    pub fn bool_value(&self, i: usize) -> Option<bool> {
        match self.value(i)? {
            [b] => Some(*b != CK_FALSE),
            _ => None,
        }
    }

    pub fn ulong_value(&self, i: usize) -> Option<CK_ULONG> {
        Some(CK_ULONG::from_ne_bytes(self.value(i)?.try_into().ok()?))
    }
}

/// A mechanism (`pMechanism`): never NULL. Its parameter block is forwarded as the caller's
/// pointer, so parameters the token writes back (a generated IV) reach the caller.
#[derive(Debug, Clone, Copy)]
pub struct Mechanism<'a> {
    raw: &'a CK_MECHANISM,
}

impl<'a> Mechanism<'a> {
    /// # Safety
    /// When `ptr` is not NULL it must point to a `CK_MECHANISM` valid for `'a`.
    pub unsafe fn new(ptr: *const CK_MECHANISM) -> Result<Self> {
        // SAFETY: valid when not NULL, per this function's contract.
        let raw = unsafe { ptr.as_ref() }.ok_or(Error::ArgumentsBad)?;
        if raw.pParameter.is_null() && raw.ulParameterLen != 0 {
            return Err(Error::ArgumentsBad);
        }
        Ok(Mechanism { raw })
    }

    pub fn mechanism_type(&self) -> CK_MECHANISM_TYPE {
        self.raw.mechanism
    }

    pub fn parameter_len(&self) -> CK_ULONG {
        self.raw.ulParameterLen
    }

    pub fn as_ptr(&self) -> *mut CK_MECHANISM {
        self.raw as *const CK_MECHANISM as *mut CK_MECHANISM
    }

    /// The parameter block as bytes (empty without one): an IV, for CBC.
    pub fn parameter_bytes(&self) -> &'a [u8] {
        if self.raw.pParameter.is_null() || self.raw.ulParameterLen == 0 {
            return &[];
        }
        // SAFETY: a CK_MECHANISM's pParameter points to ulParameterLen readable bytes
        // (PKCS#11 2.40 §3.6), valid as long as the mechanism itself ('a).
        unsafe {
            std::slice::from_raw_parts(
                self.raw.pParameter as *const u8,
                self.raw.ulParameterLen as usize,
            )
        }
    }

    /// The parameter block as a `T`, when it is exactly that size.
    fn parameter_as<T: Copy>(&self) -> Result<T> {
        let bytes = self.parameter_bytes();
        if bytes.len() != std::mem::size_of::<T>() {
            return Err(Error::Backend(CKR_MECHANISM_PARAM_INVALID));
        }
        // SAFETY: `bytes` holds exactly size_of::<T>() bytes of the caller's parameter block;
        // read_unaligned copes with any alignment, and T is a plain C struct of integers and
        // pointers, valid for any bit pattern.
        Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
    }

    /// `CK_GCM_PARAMS`: (IV, additional data, tag bits), copied.
    pub fn gcm_params(&self) -> Result<(Vec<u8>, Vec<u8>, CK_ULONG)> {
        let p: CK_GCM_PARAMS = self.parameter_as()?;
        // SAFETY: the caller's CK_GCM_PARAMS points to ulIvLen IV bytes and ulAADLen additional
        // bytes (or NULL with a zero length), valid for the duration of the call.
        let (iv, aad) = unsafe {
            (
                caller_bytes(p.pIv, p.ulIvLen)?,
                caller_bytes(p.pAAD, p.ulAADLen)?,
            )
        };
        Ok((iv, aad, p.ulTagBits))
    }

    /// `CK_RSA_PKCS_OAEP_PARAMS`: (hash, MGF, label), copied.
    pub fn oaep_params(&self) -> Result<(CK_MECHANISM_TYPE, CK_RSA_PKCS_MGF_TYPE, Vec<u8>)> {
        let p: CK_RSA_PKCS_OAEP_PARAMS = self.parameter_as()?;
        let label = if p.source == CKZ_DATA_SPECIFIED {
            // SAFETY: with CKZ_DATA_SPECIFIED, pSourceData points to ulSourceDataLen bytes (or
            // is NULL with a zero length), valid for the duration of the call.
            unsafe { caller_bytes(p.pSourceData as *const u8, p.ulSourceDataLen)? }
        } else if p.source == 0 && p.ulSourceDataLen == 0 {
            Vec::new()
        } else {
            return Err(Error::Backend(CKR_MECHANISM_PARAM_INVALID));
        };
        Ok((p.hashAlg, p.mgf, label))
    }

    /// `CK_RSA_PKCS_PSS_PARAMS`: (hash, MGF, salt length).
    pub fn pss_params(&self) -> Result<(CK_MECHANISM_TYPE, CK_RSA_PKCS_MGF_TYPE, CK_ULONG)> {
        let p: CK_RSA_PKCS_PSS_PARAMS = self.parameter_as()?;
        Ok((p.hashAlg, p.mgf, p.sLen))
    }
}

/// Copies `len` bytes the caller gave at `ptr` (NULL only with a zero length).
///
/// # Safety
/// `ptr` is NULL or points to `len` readable bytes.
unsafe fn caller_bytes(ptr: *const u8, len: CK_ULONG) -> Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if ptr.is_null() {
        return Err(Error::Backend(CKR_MECHANISM_PARAM_INVALID));
    }
    // SAFETY: `len` readable bytes at `ptr`, per this function's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len as usize) }.to_vec())
}

/// A 3.0 message parameter block (`pParameter`, `ulParameterLen`), forwarded as given: its
/// layout depends on the mechanism and the token may write into it.
#[derive(Debug, Clone, Copy)]
pub struct Param<'a> {
    ptr: *mut c_void,
    len: CK_ULONG,
    _caller: PhantomData<&'a mut [u8]>,
}

impl Param<'_> {
    /// Wraps the pointer without reading it; the backend that forwards it is responsible.
    pub fn new(ptr: *mut c_void, len: CK_ULONG) -> Self {
        Param {
            ptr,
            len,
            _caller: PhantomData,
        }
    }

    pub fn as_raw(&self) -> (*mut c_void, CK_ULONG) {
        (self.ptr, self.len)
    }
}

/// The signature argument of the 3.0 message sign/verify functions. Its pointers pass through
/// as given: in `C_SignMessageNext` both may be NULL until the last part.
#[derive(Debug, Clone, Copy)]
pub struct MessageSignature<'a> {
    ptr: *mut u8,
    direction: SignatureDirection,
    _caller: PhantomData<&'a mut [u8]>,
}

/// Whether a [`MessageSignature`] is produced (signing) or checked (verifying).
#[derive(Debug, Clone, Copy)]
pub enum SignatureDirection {
    /// Signing: the caller's length pointer (may be NULL before the last part).
    Produce(*mut CK_ULONG),
    /// Verifying: the signature's length.
    Check(CK_ULONG),
}

impl MessageSignature<'_> {
    /// # Safety
    /// The pointers must be valid as the 3.0 message function they come from specifies.
    pub unsafe fn new(ptr: *mut u8, direction: SignatureDirection) -> Self {
        MessageSignature {
            ptr,
            direction,
            _caller: PhantomData,
        }
    }

    /// The caller's pointer and direction, for forwarding.
    pub fn as_raw(&self) -> (*mut u8, SignatureDirection) {
        (self.ptr, self.direction)
    }
}

/// A single output value (`CK_SLOT_INFO *`, `CK_SESSION_HANDLE *`, ...): never NULL.
///
/// # Safety
/// When `ptr` is not NULL it must point to a writable `T` valid for `'a`.
pub unsafe fn out<'a, T>(ptr: *mut T) -> Result<&'a mut T> {
    // SAFETY: valid and writable when not NULL, per this function's contract.
    unsafe { ptr.as_mut() }.ok_or(Error::ArgumentsBad)
}

/// An output array of fixed capacity (`C_FindObjects`' `phObject`, `ulMaxObjectCount`): never
/// NULL, even when empty.
///
/// # Safety
/// When `ptr` is not NULL it must point to `len` writable elements valid for `'a`.
pub unsafe fn out_slice<'a, T>(ptr: *mut T, len: CK_ULONG) -> Result<&'a mut [T]> {
    if ptr.is_null() || !representable::<T>(len) {
        return Err(Error::ArgumentsBad);
    }
    // SAFETY: non-NULL with `len` writable elements valid for 'a, per this function's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len as usize) })
}

/// A fixed 32-byte, blank-padded label (`C_InitToken`'s `pLabel`): never NULL.
///
/// # Safety
/// When `ptr` is not NULL it must point to 32 readable bytes valid for `'a`.
pub unsafe fn label32<'a>(ptr: *const u8) -> Result<&'a [u8; 32]> {
    // SAFETY: 32 readable bytes when not NULL, per this function's contract.
    unsafe { (ptr as *const [u8; 32]).as_ref() }.ok_or(Error::ArgumentsBad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_with_length_is_refused_null_without_is_kept() {
        // SAFETY: NULL pointers are never dereferenced by `new`.
        unsafe {
            assert_eq!(
                InBuf::new(std::ptr::null(), 4).unwrap_err(),
                Error::ArgumentsBad
            );
            assert!(InBuf::new(std::ptr::null(), 0).unwrap().as_ptr().is_null());
            assert_eq!(
                OutBuf::<u8>::new(std::ptr::null_mut(), std::ptr::null_mut()).unwrap_err(),
                Error::ArgumentsBad
            );
            assert_eq!(
                Mechanism::new(std::ptr::null()).unwrap_err(),
                Error::ArgumentsBad
            );
            assert_eq!(
                Template::new(std::ptr::null_mut(), 1).unwrap_err(),
                Error::ArgumentsBad
            );
        }
    }

    #[test]
    fn put_follows_the_two_call_convention() {
        let mut len: CK_ULONG = 0;
        // SAFETY: `len` is a live local; the NULL data pointer asks for the length only.
        let mut query = unsafe { OutBuf::<u8>::new(std::ptr::null_mut(), &mut len) }.unwrap();
        query.put(b"abc").unwrap();
        assert_eq!(len, 3);

        let mut small = [0u8; 2];
        let mut len: CK_ULONG = 2;
        // SAFETY: `small` has `len` writable bytes.
        let mut out = unsafe { OutBuf::new(small.as_mut_ptr(), &mut len) }.unwrap();
        assert_eq!(out.put(b"abc").unwrap_err(), Error::BufferTooSmall);
        assert_eq!(len, 3);

        let mut big = [0u8; 8];
        let mut len: CK_ULONG = 8;
        // SAFETY: `big` has `len` writable bytes.
        let mut out = unsafe { OutBuf::new(big.as_mut_ptr(), &mut len) }.unwrap();
        out.put(b"abc").unwrap();
        assert_eq!((len, &big[..3]), (3, &b"abc"[..]));
    }
}
