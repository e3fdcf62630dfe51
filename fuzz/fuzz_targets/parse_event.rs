#![no_main]
//! `lms_events::parse_client_event` on arbitrary bytes: see [`lms_fuzz::parse_event`].

libfuzzer_sys::fuzz_target!(|data: &[u8]| lms_fuzz::parse_event(data));
