//! Symmetric mechanisms: AES (GCM, CBC, CBC_PAD, ECB, KEY_WRAP_PAD), HMAC, digests, random.
//! TO BE WRITTEN (helper): see the functions `mod.rs` calls.
