//! Target `calls`: see `p11gate::fuzzing::calls`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p11gate::fuzzing::calls(data));
