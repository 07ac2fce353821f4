//! RSA and EC mechanisms. TO BE WRITTEN (helper): see the functions `mod.rs` calls.
