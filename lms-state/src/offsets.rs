//! Consumer offsets kept in the store, written in the transaction of a batch's effects.
//!
//! This is what makes a processor's effects exactly once without broker transactions:
//! the effects and the next offsets commit together or not at all, and on assignment the
//! runner seeks to what is stored here ([`lms_bus::OffsetStore`]). The compare-and-set on
//! the offsets a batch expected fences a member that lost its partitions to another one
//! during a rebalance: its transaction finds other offsets stored and rolls back.

use std::collections::HashMap;

use async_trait::async_trait;
use lms_bus::{BoxError, OffsetStore, PartitionOffsets, TopicPartition};
use sqlx::Row as _;

use crate::sql::now_us;
use crate::{Store, StoreError, Tx};

/// Advances the stored offsets of `group` to `next` for every partition of the batch,
/// if and only if the stored ones are still `expected`; otherwise fails with
/// [`StoreError::Fenced`] and the caller rolls the transaction back.
///
/// Call it first in the transaction: on PostgreSQL its row locks then serialise two
/// members that both believe they own a partition, and the loser is fenced before it
/// reads any state.
pub async fn advance(tx: &mut Tx, group: &str, offsets: &[PartitionOffsets]) -> Result<(), StoreError> {
    let now = now_us();
    for o in offsets {
        let done = match o.expected {
            Some(expected) => sqlx::query(
                "UPDATE consumer_offsets SET next_offset = $1, updated_at_us = $2 \
                 WHERE group_id = $3 AND topic = $4 AND partition_no = $5 AND next_offset = $6",
            )
            .bind(o.next)
            .bind(now)
            .bind(group)
            .bind(&*o.tp.topic)
            .bind(i64::from(o.tp.partition))
            .bind(expected)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
            None => sqlx::query(
                "INSERT INTO consumer_offsets (group_id, topic, partition_no, next_offset, updated_at_us) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (group_id, topic, partition_no) DO NOTHING",
            )
            .bind(group)
            .bind(&*o.tp.topic)
            .bind(i64::from(o.tp.partition))
            .bind(o.next)
            .bind(now)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
        };
        if done != 1 {
            return Err(StoreError::Fenced(format!("{} of group {group}: expected stored offset {:?}, found another", o.tp, o.expected)));
        }
    }
    Ok(())
}

/// Every stored offset of `group`.
pub async fn load(store: &Store, group: &str) -> Result<HashMap<TopicPartition, i64>, StoreError> {
    let rows = sqlx::query("SELECT topic, partition_no, next_offset FROM consumer_offsets WHERE group_id = $1")
        .bind(group)
        .fetch_all(store.pool())
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let topic: String = row.try_get(0)?;
        let partition: i64 = row.try_get(1)?;
        let partition = i32::try_from(partition).map_err(|_| StoreError::Corrupt(format!("partition {partition}")))?;
        out.insert(TopicPartition::new(&topic, partition), row.try_get::<i64, _>(2)?);
    }
    Ok(out)
}

/// Replaces the stored offsets of `group` for the given partitions (operator replay).
/// Partitions mapped to `None` lose their stored offset, so the group starts them from
/// the beginning.
pub async fn reset(store: &Store, group: &str, to: &[(TopicPartition, Option<i64>)]) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    for (tp, offset) in to {
        sqlx::query("DELETE FROM consumer_offsets WHERE group_id = $1 AND topic = $2 AND partition_no = $3")
            .bind(group)
            .bind(&*tp.topic)
            .bind(i64::from(tp.partition))
            .execute(&mut *tx)
            .await?;
        if let Some(offset) = offset {
            sqlx::query(
                "INSERT INTO consumer_offsets (group_id, topic, partition_no, next_offset, updated_at_us) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(group)
            .bind(&*tp.topic)
            .bind(i64::from(tp.partition))
            .bind(*offset)
            .bind(now_us())
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

#[async_trait]
impl OffsetStore for Store {
    async fn load_offsets(&self, group: &str, partitions: &[TopicPartition]) -> Result<HashMap<TopicPartition, i64>, BoxError> {
        let mut all = load(self, group).await?;
        Ok(partitions.iter().filter_map(|tp| all.remove_entry(tp)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn po(partition: i32, expected: Option<i64>, next: i64) -> PartitionOffsets {
        PartitionOffsets { tp: TopicPartition::new("t", partition), expected, next }
    }

    #[tokio::test]
    async fn offsets_advance_only_from_what_was_expected() {
        let store = Store::open("sqlite::memory:", 1, crate::schema::TEST_COMPONENT_TABLES).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        advance(&mut tx, "g", &[po(0, None, 10), po(1, None, 5)]).await.unwrap();
        tx.commit().await.unwrap();

        let mut tx = store.begin().await.unwrap();
        let err = advance(&mut tx, "g", &[po(0, Some(9), 12)]).await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced(_)), "{err}");
        drop(tx);
        let mut tx = store.begin().await.unwrap();
        assert!(matches!(advance(&mut tx, "g", &[po(1, None, 7)]).await, Err(StoreError::Fenced(_))));
        drop(tx);

        let mut tx = store.begin().await.unwrap();
        advance(&mut tx, "g", &[po(0, Some(10), 12)]).await.unwrap();
        tx.commit().await.unwrap();
        let stored = store.load_offsets("g", &[TopicPartition::new("t", 0), TopicPartition::new("t", 2)]).await.unwrap();
        assert_eq!(stored, HashMap::from([(TopicPartition::new("t", 0), 12)]));

        reset(&store, "g", &[(TopicPartition::new("t", 0), None), (TopicPartition::new("t", 1), Some(2))]).await.unwrap();
        let all = load(&store, "g").await.unwrap();
        assert_eq!(all, HashMap::from([(TopicPartition::new("t", 1), 2)]));
    }
}
