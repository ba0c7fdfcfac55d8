//! Fuzz target: `tunnel_core::fuzzing::grants` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunnel_core::fuzzing::grants(data));
