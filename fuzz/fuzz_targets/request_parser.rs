//! `cargo +nightly fuzz run request_parser`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wspush_fuzz::request_parser(data));
