//! Arguments p11gate makes itself, for calls it places into a module as a client would
//! (`p11gate doctor`): owned memory, lent out as the checked views of [`super::args`].
//!
//! Every value lives in its own `Vec` whose heap buffer never moves while the owner lives (the
//! `Vec`s are never pushed to after their pointers are taken), so the raw pointers inside the
//! `CK_ATTRIBUTE`s and `CK_MECHANISM` stay valid when the owner itself is moved.

use pkcs11_sys::*;

use super::args::{Mechanism, Template};

/// An attribute template with its values.
#[derive(Debug, Default)]
pub struct OwnedTemplate {
    attrs: Vec<CK_ATTRIBUTE>,
    values: Vec<Vec<u8>>,
}

impl OwnedTemplate {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an attribute with these bytes as its value.
    pub fn bytes(mut self, type_: CK_ATTRIBUTE_TYPE, value: &[u8]) -> Self {
        let mut owned = value.to_vec();
        let ptr = if owned.is_empty() {
            std::ptr::null_mut()
        } else {
            owned.as_mut_ptr().cast()
        };
        self.attrs.push(CK_ATTRIBUTE {
            type_,
            pValue: ptr,
            ulValueLen: owned.len() as CK_ULONG,
        });
        self.values.push(owned);
        self
    }

    /// Adds a `CK_ULONG` attribute (`CKA_CLASS`, `CKA_KEY_TYPE`, `CKA_VALUE_LEN`, ...).
    pub fn ulong(self, type_: CK_ATTRIBUTE_TYPE, value: CK_ULONG) -> Self {
        self.bytes(type_, &value.to_ne_bytes())
    }

    /// Adds a `CK_BBOOL` attribute.
    pub fn bool(self, type_: CK_ATTRIBUTE_TYPE, value: bool) -> Self {
        self.bytes(type_, &[if value { CK_TRUE } else { CK_FALSE }])
    }

    /// The template, lent to a backend call.
    pub fn view(&mut self) -> Template<'_> {
        // SAFETY: each attribute points to its own buffer in `self.values` of exactly
        // `ulValueLen` bytes (or is NULL with length 0); the buffers are borrowed with `self`
        // for the view's lifetime and never reallocated.
        unsafe { Template::new(self.attrs.as_mut_ptr(), self.attrs.len() as CK_ULONG) }
            .expect("a non-NULL template")
    }
}

/// A mechanism with its parameter block (and the memory that block points to).
#[derive(Debug)]
pub struct OwnedMechanism {
    raw: CK_MECHANISM,
    /// The parameter block's bytes, when the parameter is a plain byte string (an IV).
    bytes: Vec<u8>,
    /// `CK_GCM_PARAMS`, with its IV in `bytes`.
    gcm: Vec<CK_GCM_PARAMS>,
    oaep: Vec<CK_RSA_PKCS_OAEP_PARAMS>,
}

impl OwnedMechanism {
    fn with(mechanism: CK_MECHANISM_TYPE) -> Self {
        OwnedMechanism {
            raw: CK_MECHANISM {
                mechanism,
                pParameter: std::ptr::null_mut(),
                ulParameterLen: 0,
            },
            bytes: Vec::new(),
            gcm: Vec::new(),
            oaep: Vec::new(),
        }
    }

    /// A mechanism without parameters (`CKM_SHA256_HMAC`, `CKM_AES_KEY_GEN`, ...).
    pub fn plain(mechanism: CK_MECHANISM_TYPE) -> Self {
        Self::with(mechanism)
    }

    /// A mechanism whose parameter is a byte string (the IV of `CKM_AES_CBC`).
    pub fn with_bytes(mechanism: CK_MECHANISM_TYPE, parameter: &[u8]) -> Self {
        let mut m = Self::with(mechanism);
        m.bytes = parameter.to_vec();
        m.raw.pParameter = m.bytes.as_mut_ptr().cast();
        m.raw.ulParameterLen = m.bytes.len() as CK_ULONG;
        m
    }

    /// `CKM_AES_GCM` with this IV, no additional data, and a tag of `tag_bits` (2.40 layout).
    pub fn aes_gcm(iv: &[u8], tag_bits: CK_ULONG) -> Self {
        let mut m = Self::with(CKM_AES_GCM);
        m.bytes = iv.to_vec();
        m.gcm = vec![CK_GCM_PARAMS {
            pIv: m.bytes.as_mut_ptr(),
            ulIvLen: m.bytes.len() as CK_ULONG,
            ulIvBits: (m.bytes.len() * 8) as CK_ULONG,
            pAAD: std::ptr::null_mut(),
            ulAADLen: 0,
            ulTagBits: tag_bits,
        }];
        m.raw.pParameter = m.gcm.as_mut_ptr().cast();
        m.raw.ulParameterLen = std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG;
        m
    }

    /// `CKM_RSA_PKCS_OAEP` with this hash and MGF, and no label (as Vault calls it).
    pub fn rsa_oaep(hash: CK_MECHANISM_TYPE, mgf: CK_RSA_PKCS_MGF_TYPE) -> Self {
        let mut m = Self::with(CKM_RSA_PKCS_OAEP);
        m.oaep = vec![CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: hash,
            mgf,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: std::ptr::null_mut(),
            ulSourceDataLen: 0,
        }];
        m.raw.pParameter = m.oaep.as_mut_ptr().cast();
        m.raw.ulParameterLen = std::mem::size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG;
        m
    }

    /// The mechanism, lent to a backend call.
    pub fn view(&mut self) -> Mechanism<'_> {
        // SAFETY: `raw` is a live CK_MECHANISM borrowed with `self`; its parameter (when there
        // is one) points into a buffer owned by `self` of exactly `ulParameterLen` bytes, and a
        // GCM parameter's IV points into `bytes`: all valid, unmoved, for the view's lifetime.
        unsafe { Mechanism::new(&self.raw) }.expect("a valid mechanism")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_show_the_owned_values() {
        let mut t = OwnedTemplate::new()
            .ulong(CKA_CLASS, CKO_SECRET_KEY)
            .bytes(CKA_LABEL, b"vault-key")
            .bool(CKA_TOKEN, false)
            .bytes(CKA_ID, b"");
        let moved = std::mem::take(&mut t);
        let mut t = moved;
        let view = t.view();
        assert_eq!(view.ulong_value(CKA_CLASS), Some(CKO_SECRET_KEY));
        assert_eq!(view.value(CKA_LABEL), Some(&b"vault-key"[..]));
        assert_eq!(view.bool_value(CKA_TOKEN), Some(false));
        assert_eq!(view.len(), 4);

        let mut gcm = OwnedMechanism::aes_gcm(&[7u8; 12], 128);
        let (iv, aad, tag) = gcm.view().gcm_params().unwrap();
        assert_eq!((iv, aad, tag), (vec![7u8; 12], Vec::new(), 128));

        let mut oaep = OwnedMechanism::rsa_oaep(CKM_SHA256, CKG_MGF1_SHA256);
        let (hash, mgf, label) = oaep.view().oaep_params().unwrap();
        assert_eq!(
            (hash, mgf, label),
            (CKM_SHA256, CKG_MGF1_SHA256, Vec::new())
        );

        let mut cbc = OwnedMechanism::with_bytes(CKM_AES_CBC, &[1u8; 16]);
        assert_eq!(cbc.view().parameter_bytes(), &[1u8; 16]);
        assert_eq!(
            OwnedMechanism::plain(CKM_SHA256_HMAC)
                .view()
                .parameter_len(),
            0
        );
    }
}
