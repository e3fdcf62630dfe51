//! The properties the fuzz targets check, as plain functions of the fuzzer's bytes.
//!
//! `fuzz_targets/*.rs` hand them to libFuzzer (`cargo +nightly fuzz run <target>`, or
//! `cargo xtask fuzz`); the test suite replays the committed corpus (`fuzz/corpus/<target>/`)
//! through the same functions on the stable toolchain (`tests/it/fuzz_corpus.rs`), so a
//! crash found once and saved in the corpus stays a failing test until it is fixed.
//!
//! Each function panics when the property it checks does not hold; that is how libFuzzer
//! learns of a failure.

use lms_events::signature::{sign, verify};
use lms_events::{Rejection, decode, encode, parse_client_event};
use serde_json::Value;

/// The tenant of the caller in [`parse_event`].
const TENANT: &str = "acme";

/// `lms_events::parse_client_event` on arbitrary bytes (those that are JSON):
///
/// - it never panics;
/// - an accepted event belongs to the caller's tenant, serialises to JSON that is accepted
///   again as the same event, and survives the bus codec unchanged;
/// - a refusal names the foreign tenant only when the input names one, and an invalid event
///   comes with at least one error, each at a JSON pointer.
pub fn parse_event(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    match parse_client_event(&value, TENANT) {
        Ok(event) => {
            assert_eq!(event.tenant, TENANT, "an accepted event belongs to the caller's tenant");
            let json = serde_json::to_value(&event).expect("an accepted event serialises");
            match parse_client_event(&json, TENANT) {
                Ok(again) => assert_eq!(again, event, "the re-parsed event differs; its JSON: {json}"),
                Err(e) => panic!("an accepted event is refused when sent again: {e:?}; its JSON: {json}"),
            }
            let decoded = decode(&encode(&event)).expect("an accepted event decodes from the bus codec");
            assert_eq!(decoded, event, "the bus codec changes an accepted event");
        }
        Err(Rejection::ForeignTenant { named, caller }) => {
            assert_eq!(caller, TENANT);
            assert_eq!(value.get("tenant").and_then(Value::as_str), Some(named.as_str()), "the refusal names the input's tenant");
            assert_ne!(named, TENANT);
        }
        Err(Rejection::Invalid(errors)) => {
            assert!(!errors.is_empty(), "an invalid event has at least one error");
            for e in &errors {
                assert!(e.path.is_empty() || e.path.starts_with('/'), "not a JSON pointer: {e:?}");
                assert!(!e.message.is_empty(), "an error without a message at {}", e.path);
            }
        }
    }
}

/// How many positions of a body or header [`webhook_signature`] alters, at most.
const MAX_CHANGES: usize = 128;

/// The payment webhook signature check (`lms_events::signature::verify`, the check `POST /v1/payments/webhook` runs) on arbitrary input. The
/// bytes are read as: 8 bytes of signature time `t` (little endian), a secret length (mod
/// 65), a header length, then the secret, an arbitrary `Lms-Signature` header and the body.
///
/// - Checking the arbitrary header never panics.
/// - The header [`sign`] computes for (secret, `t`, body) verifies at `t` and
///   300 s either side, and not 301 s away.
/// - Any single-byte change of the body, of the signed header or of the secret fails the
///   check (a change of a header byte that only changes the case of a hex digit does not
///   count: hex is case-insensitive).
pub fn webhook_signature(data: &[u8]) {
    if data.len() < 10 {
        return;
    }
    let t = i64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let rest = &data[10..];
    let secret_len = (usize::from(data[8]) % 65).min(rest.len());
    let (secret, rest) = rest.split_at(secret_len);
    let header_len = usize::from(data[9]).min(rest.len());
    let (header, body) = rest.split_at(header_len);
    let header = String::from_utf8_lossy(header);

    // Arbitrary headers: an answer, never a panic; and never without a header.
    let _ = verify(secret, Some(&header), body, t, 300);
    assert!(verify(secret, None, body, t, 300).is_err(), "no header is a refusal");

    let signed = sign(secret, t, body);
    assert!(verify(secret, Some(&signed), body, t, 300).is_ok(), "{signed} does not verify");
    for now in [t.checked_sub(300), t.checked_add(300)].into_iter().flatten() {
        assert!(verify(secret, Some(&signed), body, now, 300).is_ok(), "{signed} is refused at {now}, within 300 s");
    }
    for now in [t.checked_sub(301), t.checked_add(301)].into_iter().flatten() {
        assert!(verify(secret, Some(&signed), body, now, 300).is_err(), "{signed} is accepted at {now}, 301 s away");
    }

    let step = |len: usize| (len / MAX_CHANGES).max(1);
    let mut changed = body.to_vec();
    for i in (0..body.len()).step_by(step(body.len())) {
        for delta in [0x01, 0x80] {
            changed[i] ^= delta;
            assert!(verify(secret, Some(&signed), &changed, t, 300).is_err(), "the body changed at byte {i} still verifies");
            changed[i] ^= delta;
        }
    }
    let mut changed = signed.clone().into_bytes();
    for i in 0..changed.len() {
        for delta in [0x01, 0x20, 0x80] {
            changed[i] ^= delta;
            let header = String::from_utf8_lossy(&changed);
            let hex_case_only = header.eq_ignore_ascii_case(&signed) && signed.as_bytes()[i].is_ascii_hexdigit();
            if !hex_case_only {
                assert!(verify(secret, Some(&header), body, t, 300).is_err(), "the header changed at byte {i} still verifies: {header}");
            }
            changed[i] ^= delta;
        }
    }
    let mut changed = secret.to_vec();
    for i in (0..secret.len()).step_by(step(secret.len())) {
        changed[i] ^= 0x01;
        assert!(verify(&changed, Some(&signed), body, t, 300).is_err(), "another secret (byte {i} changed) verifies");
        changed[i] ^= 0x01;
    }
}
