//! `cargo +nightly fuzz run frame_decoder`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wspush_fuzz::frame_decoder(data));
