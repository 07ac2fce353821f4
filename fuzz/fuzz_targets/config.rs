//! Target `config`: see `p11gate::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p11gate::fuzzing::config(data));
