//! What the processors' unit tests share: batches through a stage as the runner applies them.

use std::future::Future;

use lms_bus::Record;
use lms_events::Event;
use lms_state::Store;
use proptest::prelude::*;
use proptest::sample::Index;

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

/// `events` in order, the same set shuffled, batch sizes and duplicate positions: the inputs
/// of the property that effects depend on the events, not on their order, batching or
/// redelivery.
pub(crate) fn reorderings(events: Vec<Event>) -> impl Strategy<Value = (Vec<Event>, Vec<Event>, Vec<usize>, Vec<Index>)> {
    (Just(events.clone()), Just(events).prop_shuffle(), prop::collection::vec(1usize..8, 1..6), prop::collection::vec(any::<Index>(), 0..8))
}

/// Redeliveries: some events of `shuffled` again at arbitrary places (in the same batch or
/// later), then the whole stream `events` once more, as after a consumer restarted from old
/// offsets.
pub(crate) fn redelivered(events: &[Event], shuffled: &[Event], duplicates: &[Index]) -> Vec<Event> {
    let mut out = shuffled.to_vec();
    for (k, at) in duplicates.iter().enumerate() {
        let original = shuffled[at.index(shuffled.len())].clone();
        let position = duplicates[(k + 1) % duplicates.len()].index(out.len() + 1);
        out.insert(position, original);
    }
    out.extend(events.iter().cloned());
    out
}
