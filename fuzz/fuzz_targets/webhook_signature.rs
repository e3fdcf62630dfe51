#![no_main]
//! The payment webhook signature check on arbitrary input: see [`lms_fuzz::webhook_signature`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| lms_fuzz::webhook_signature(data));
