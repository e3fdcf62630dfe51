//! The erasure processor: applies every `learner.erased` of the erasure topic to the state
//! store ([`lms_state::erasure::erase`]: the erased list, then the learner's rows), exactly
//! once with its offsets like every store-backed processor.
//!
//! `DELETE /v1/learners/{id}` and `lms learners erase` already erase synchronously; this
//! processor is what makes the erasure durable beyond the store that took it: a state store
//! rebuilt from the topics (a new database, `lms replay` of every group) learns every erasure
//! again from the compacted erasure topic, and removes whatever a replay wrote of the learner
//! before it got there. Every other processor drops erased learners' events where they enter
//! processing ([`crate::stateful::admitted`]).

use async_trait::async_trait;
use lms_bus::Record;
use lms_events::EventData;
use lms_state::sql::to_us;
use lms_state::{Store, Tx, erasure};

use crate::stateful::{Applied, Stage, StageError};

/// The erasure stage.
pub struct Erasure;

#[async_trait]
impl Stage for Erasure {
    fn name(&self) -> &'static str {
        "erasure"
    }

    async fn apply(&self, store: &Store, tx: &mut Tx, records: &[Record]) -> Result<Applied, StageError> {
        for r in records {
            if let EventData::LearnerErased(d) = &r.event.data {
                let erased = erasure::erase(tx, store.backend(), &r.event.tenant, &d.learner_id, to_us(r.event.time)).await?;
                tracing::info!(tenant = %r.event.tenant, event_id = %r.event.id, already = erased.already_erased, "learner erased in the state store");
            }
        }
        Ok(Applied::default())
    }
}
