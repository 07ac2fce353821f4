//! Target `mechanism`: see `p11gate::fuzzing::mechanism`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| p11gate::fuzzing::mechanism(data));
