//! The committed fuzz corpus (`fuzz/corpus/<target>/`) replayed through the fuzz targets'
//! checks on the stable toolchain, so every input the fuzzers found interesting (and every
//! crash, once saved there) is checked by the ordinary test run. Longer fuzzing runs are
//! `cargo xtask fuzz`.

#[path = "../../fuzz/src/lib.rs"]
mod checks;

/// Runs `check` over every file of `fuzz/corpus/<target>/`; returns how many there were.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = tests::repo_root().join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{target}: the corpus file {} fails (the panic above says how)", path.display());
        }
        n += 1;
    }
    n
}

#[test]
fn parse_event_corpus() {
    let n = replay("parse_event", checks::parse_event);
    assert!(n >= 20, "the parse_event corpus holds the seeds: {n} files");
}

#[test]
fn parse_event_examples() {
    // Every example event type, as a client sends it and completed.
    for t in lms_events::EventType::ALL {
        checks::parse_event(lms_events::examples::client_json(t).to_string().as_bytes());
        checks::parse_event(&serde_json::to_vec(&lms_events::examples::event(t)).expect("json"));
    }
}

#[test]
fn webhook_signature_corpus() {
    let n = replay("webhook_signature", checks::webhook_signature);
    assert!(n >= 5, "the webhook_signature corpus holds the seeds: {n} files");
}
