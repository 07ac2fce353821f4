//! Target `template`: see `p11gate::fuzzing::template`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p11gate::fuzzing::template(data));
