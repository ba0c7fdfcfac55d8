//! Fuzz target: `tunnel_core::fuzzing::mux_frames` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunnel_core::fuzzing::mux_frames(data));
