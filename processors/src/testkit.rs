//! What the processors' unit tests share: batches through a stage as the runner applies them.

use std::future::Future;

use lms_bus::Record;
use lms_events::Event;
use lms_state::Store;

use crate::stateful::{Emitted, Stage};

/// `events` cut into consecutive batches of the given sizes (cycled; at least one event each).
pub(crate) fn batches<'a>(events: &'a [Event], sizes: &[usize]) -> Vec<&'a [Event]> {
    let (mut out, mut rest, mut sizes) = (Vec::new(), events, sizes.iter().cycle());
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at((*sizes.next().unwrap_or(&1)).clamp(1, rest.len()));
        out.push(batch);
        rest = tail;
    }
    out
}

/// Applies one batch through `stage` in its own transaction, as the runner does, giving the
/// records the offsets after `offset`; returns what the stage emitted.
pub(crate) async fn apply_batch<'a>(
    store: &Store,
    stage: &dyn Stage,
    events: impl Iterator<Item = &'a Event>,
    offset: &mut i64,
) -> Emitted {
    let records: Vec<Record> = events
        .map(|e| {
            *offset += 1;
            Record::for_test(e.clone(), "events", *offset)
        })
        .collect();
    let mut tx = store.begin().await.expect("begin");
    let emitted = stage.apply(store, &mut tx, &records).await.expect("apply").emitted;
    tx.commit().await.expect("commit");
    emitted
}

pub(crate) fn block_on<T>(f: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(f)
}
