//! Helpers that keep statements portable between PostgreSQL and SQLite.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::{Backend, StoreError, Tx};

/// Rows per multi-row statement: far below both databases' bind-parameter limits
/// (65 535 on PostgreSQL, 32 766 on SQLite) for the widest table.
pub const CHUNK_ROWS: usize = 500;

/// `($1, $2), ($3, $4), …` for `rows` rows of `cols` columns, numbering from `$first`.
pub fn values(rows: usize, cols: usize, first: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    let mut n = first;
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "${n}");
            n += 1;
        }
        s.push(')');
    }
    s
}

/// `$first, $first+1, …` (`count` placeholders), for `IN (…)` lists.
pub fn list(count: usize, first: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

/// A time as stored: microseconds since the Unix epoch (sub-microsecond digits dropped).
pub fn to_us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A stored time back as a `DateTime`.
pub fn from_us(us: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(us).ok_or_else(|| StoreError::Corrupt(format!("time {us} µs is out of range")))
}

/// Now, as stored.
pub fn now_us() -> i64 {
    to_us(Utc::now())
}

/// A stable 64-bit key for an advisory lock (FNV-1a over the parts, NUL-separated).
pub fn lock_key(namespace: &str, parts: &[&str]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in std::iter::once(namespace).chain(parts.iter().copied()).flat_map(|p| p.bytes().chain([0])) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

/// Takes transaction-scoped advisory locks on `keys` in ascending order (so two
/// transactions never wait on each other in a cycle), shared or exclusive. PostgreSQL
/// only: on SQLite the single connection already serialises every transaction.
pub async fn lock_keys(tx: &mut Tx, backend: Backend, keys: &[i64], exclusive: bool) -> Result<(), StoreError> {
    if backend != Backend::Postgres || keys.is_empty() {
        return Ok(());
    }
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let function = if exclusive { "pg_advisory_xact_lock" } else { "pg_advisory_xact_lock_shared" };
    for chunk in keys.chunks(CHUNK_ROWS * 4) {
        // The keys are integers formatted by us, so inlining them is safe; the ordered
        // subquery makes PostgreSQL take the locks in key order.
        let literals = chunk.iter().map(|k| format!("({k}::BIGINT)")).collect::<Vec<_>>().join(", ");
        let sql = format!("SELECT CAST(COUNT({function}(k)) AS BIGINT) FROM (SELECT k FROM (VALUES {literals}) AS v(k) ORDER BY k) AS s");
        sqlx::query(&sql).execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_number_rows_then_columns() {
        assert_eq!(values(2, 3, 1), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values(1, 2, 5), "($5, $6)");
        assert_eq!(list(3, 2), "$2, $3, $4");
    }

    #[test]
    fn lock_keys_are_stable_and_separate_parts() {
        assert_eq!(lock_key("course", &["t", "c"]), lock_key("course", &["t", "c"]));
        assert_ne!(lock_key("course", &["ab", "c"]), lock_key("course", &["a", "bc"]));
        assert_ne!(lock_key("course", &["t", "c"]), lock_key("learner", &["t", "c"]));
    }

    #[test]
    fn times_round_trip_at_microsecond_precision() {
        let t = DateTime::parse_from_rfc3339("2026-11-20T10:15:00.123456789Z").unwrap().with_timezone(&Utc);
        let back = from_us(to_us(t)).unwrap();
        assert_eq!(back.to_rfc3339(), "2026-11-20T10:15:00.123456+00:00");
    }
}
