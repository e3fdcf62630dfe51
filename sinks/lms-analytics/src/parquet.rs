//! The embedded twin of the ClickHouse store: the same tables as Arrow record batches in
//! Parquet files (one directory per table), queried with DataFusion.
//!
//! Each insert appends one file per table: written under a temporary name, synced, then
//! renamed, so a query sees a file whole or not at all. Every query builds a fresh DataFusion
//! session over the directories, so what an insert returned is visible to the next query.
//! When a table has more than `compact_after_files` files, the insert that pushed it over
//! rewrites them into one, reduced the way ClickHouse merges reduce (distinct rows, the max or
//! min per key); reads are aggregates that duplicates cannot change (see the crate
//! documentation), so a query racing a compaction is still right. A lock keeps queries from
//! reading files while compaction deletes them.
//!
//! All Arrow, Parquet and DataFusion work runs on the store's own runtime, off the caller's.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use lms_events::Event;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};
use tracing::{debug, info};

use crate::compute::{self, CourseLearners};
use crate::query::{AtRiskParams, FunnelParams, Granularity, RevenueParams, ScoresParams, SeriesParams};
use crate::response::{ActiveLearnersPoint, AtRiskLearner, CompletionsPoint, EnrollmentsPoint, Funnel, RevenuePoint, Scores};
use crate::rows::{Facts, date_of, day_number};
use crate::store::{AnalyticsStore, MigrationReport, StoreError};

/// Where and how the twin keeps its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetConfig {
    /// The directory of the tables (created by `migrate` or on open).
    pub dir: PathBuf,
    /// A table's files are compacted into one when an insert leaves more than this many.
    #[serde(default = "default_compact_after_files")]
    pub compact_after_files: usize,
    /// Worker threads of the store's own runtime (DataFusion, Parquet encoding).
    #[serde(default = "default_threads")]
    pub threads: usize,
}

fn default_compact_after_files() -> usize {
    16
}
fn default_threads() -> usize {
    2
}

impl ParquetConfig {
    /// A configuration with defaults for everything but the directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), compact_after_files: default_compact_after_files(), threads: default_threads() }
    }
}

/// The twin's format version, written to `<dir>/FORMAT`.
pub const FORMAT_VERSION: u32 = 2;

/// A table of the twin: its schema and how compaction reduces it.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, DataType)],
    /// The reduction compaction applies, over the table named `t`; it must return the
    /// table's columns in order.
    compact_sql: &'static str,
}

const TABLES: &[Table] = &[
    Table {
        name: "activity_daily",
        columns: &[
            ("tenant", DataType::Utf8),
            ("day", DataType::Int32),
            ("week", DataType::Int32),
            ("month", DataType::Int32),
            ("course_id", DataType::Utf8),
            ("learner_id", DataType::Utf8),
        ],
        compact_sql: "SELECT DISTINCT tenant, day, week, month, course_id, learner_id FROM t",
    },
    Table {
        name: "course_activity",
        columns: &[("tenant", DataType::Utf8), ("course_id", DataType::Utf8), ("learner_id", DataType::Utf8), ("last_us", DataType::Int64)],
        compact_sql: "SELECT tenant, course_id, learner_id, MAX(last_us) AS last_us FROM t
                      GROUP BY tenant, course_id, learner_id",
    },
    Table {
        name: "enrollments",
        columns: &[
            ("tenant", DataType::Utf8),
            ("course_id", DataType::Utf8),
            ("learner_id", DataType::Utf8),
            ("id", DataType::Utf8),
            ("day", DataType::Int32),
            ("week", DataType::Int32),
            ("month", DataType::Int32),
            ("dropped", DataType::Int32),
            ("order_key", DataType::Int64),
        ],
        compact_sql: "SELECT DISTINCT tenant, course_id, learner_id, id, day, week, month, dropped, order_key FROM t",
    },
    // The figures of the largest revision per learner and course (format 2; format 1 had
    // `completions` and `progress` with the earliest completion and the furthest percent,
    // which a late course version could not take back: those directories are left unread).
    Table {
        name: "learner_progress",
        columns: &[
            ("tenant", DataType::Utf8),
            ("course_id", DataType::Utf8),
            ("learner_id", DataType::Utf8),
            ("revision", DataType::Int64),
            ("pct_tenths", DataType::Int32),
            ("completed", DataType::Int32),
            ("completed_us", DataType::Int64),
            ("day", DataType::Int32),
            ("week", DataType::Int32),
            ("month", DataType::Int32),
        ],
        compact_sql: "SELECT tenant, course_id, learner_id, revision, pct_tenths, completed, completed_us, day, week, month
                      FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY tenant, course_id, learner_id ORDER BY revision DESC) AS rn
                            FROM t) latest WHERE rn = 1",
    },
    Table {
        name: "payments",
        columns: &[
            ("tenant", DataType::Utf8),
            ("payment_id", DataType::Utf8),
            ("id", DataType::Utf8),
            ("refund", DataType::Int32),
            ("day", DataType::Int32),
            ("week", DataType::Int32),
            ("month", DataType::Int32),
            ("amount_minor", DataType::Int64),
            ("currency", DataType::Utf8),
            ("course_id", DataType::Utf8),
        ],
        compact_sql: "SELECT DISTINCT tenant, payment_id, id, refund, day, week, month, amount_minor, currency, course_id FROM t",
    },
    Table {
        name: "attempts",
        columns: &[
            ("tenant", DataType::Utf8),
            ("assessment_id", DataType::Utf8),
            ("learner_id", DataType::Utf8),
            ("id", DataType::Utf8),
            ("course_id", DataType::Utf8),
            ("day", DataType::Int32),
            ("pct", DataType::Float64),
        ],
        compact_sql: "SELECT DISTINCT tenant, assessment_id, learner_id, id, course_id, day, pct FROM t",
    },
    // Learners erased per tenant: the sink drops their events; `erase` rewrote the other
    // tables without them.
    Table {
        name: ERASED,
        columns: &[("tenant", DataType::Utf8), ("learner_id", DataType::Utf8), ("erased_us", DataType::Int64)],
        compact_sql: "SELECT tenant, learner_id, MIN(erased_us) AS erased_us FROM t GROUP BY tenant, learner_id",
    },
];

/// The table of erased learners.
const ERASED: &str = "erased_learners";

impl Table {
    /// Whether an erasure rewrites this table: it names learners and is not the list of
    /// erased learners (`payments` names none: revenue keeps its totals).
    fn names_learners(&self) -> bool {
        self.name != ERASED && self.columns.iter().any(|(n, _)| *n == "learner_id")
    }

    fn schema(&self) -> SchemaRef {
        // Nullable throughout: aggregates in compaction produce nullable columns, and the
        // files of one table must share one schema.
        Arc::new(Schema::new(self.columns.iter().map(|(n, t)| Field::new(*n, t.clone(), true)).collect::<Vec<_>>()))
    }
}

fn table(name: &str) -> &'static Table {
    TABLES.iter().find(|t| t.name == name).expect("a table of TABLES")
}

/// The analytics store on Parquet files and DataFusion.
pub struct ParquetStore {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

struct Inner {
    cfg: ParquetConfig,
    /// One writer at a time (inserts and compactions).
    writer: Mutex<()>,
    /// Queries read files under the read side; compaction deletes files under the write side.
    files: RwLock<()>,
    seq: AtomicU64,
}

impl std::fmt::Debug for ParquetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetStore").field("dir", &self.inner.cfg.dir).finish()
    }
}

impl Drop for ParquetStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Dropping a runtime inside another one's task would block it; let it wind down.
            rt.shutdown_background();
        }
    }
}

impl ParquetStore {
    /// Opens (creating it if needed) the directory of `cfg` and starts the store's runtime.
    pub async fn open(cfg: ParquetConfig) -> Result<Self, StoreError> {
        tokio::fs::create_dir_all(&cfg.dir).await?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.threads.max(1))
            .thread_name("lms-analytics-df")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let inner = Arc::new(Inner { cfg, writer: Mutex::new(()), files: RwLock::new(()), seq: AtomicU64::new(0) });
        Ok(Self { inner, runtime: Some(runtime), handle })
    }

    /// The directory of the tables.
    pub fn dir(&self) -> &Path {
        &self.inner.cfg.dir
    }

    /// Runs `f` on the store's runtime.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(Arc<Inner>) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let fut = f(self.inner.clone());
        self.handle.spawn(fut).await.map_err(|e| StoreError::Internal(format!("a twin task failed: {e}")))?
    }

    /// Rewrites every table with more than one file into one file.
    pub async fn compact(&self) -> Result<(), StoreError> {
        self.run(|inner| async move {
            let _w = inner.writer.lock().await;
            for t in TABLES {
                inner.compact_table(t, 1).await?;
            }
            Ok(())
        })
        .await
    }
}

impl Inner {
    fn table_dir(&self, t: &Table) -> PathBuf {
        self.cfg.dir.join(t.name)
    }

    fn files(&self, t: &Table) -> Result<Vec<PathBuf>, StoreError> {
        let mut files = Vec::new();
        let dir = self.table_dir(t);
        if !dir.exists() {
            return Ok(files);
        }
        for entry in std::fs::read_dir(dir)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "parquet") {
                files.push(p);
            }
        }
        files.sort();
        Ok(files)
    }

    /// Writes one file into a table's directory: temporary name, sync, rename, sync the
    /// directory.
    fn write_file(&self, t: &Table, batch: &RecordBatch) -> Result<PathBuf, StoreError> {
        let dir = self.table_dir(t);
        std::fs::create_dir_all(&dir)?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let name = format!("{nanos:024}-{:06}", self.seq.fetch_add(1, Ordering::Relaxed));
        let tmp = dir.join(format!("{name}.tmp"));
        let path = dir.join(format!("{name}.parquet"));
        let file = std::fs::File::create(&tmp)?;
        let mut writer = ArrowWriter::try_new(&file, batch.schema(), None).map_err(|e| StoreError::DataFusion(e.into()))?;
        writer.write(batch).map_err(|e| StoreError::DataFusion(e.into()))?;
        writer.close().map_err(|e| StoreError::DataFusion(e.into()))?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(path)
    }

    async fn write_batches(self: &Arc<Self>, batches: Vec<(&'static Table, RecordBatch)>) -> Result<(), StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            for (t, b) in &batches {
                me.write_file(t, b)?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|e| StoreError::Internal(format!("a twin write failed: {e}")))?
    }

    /// A fresh session over the current files of every table.
    async fn session(&self) -> Result<SessionContext, StoreError> {
        let config = SessionConfig::new().with_target_partitions(self.cfg.threads.max(1));
        let ctx = SessionContext::new_with_config(config);
        for t in TABLES {
            let dir = self.table_dir(t);
            std::fs::create_dir_all(&dir)?;
            let schema = t.schema();
            let url = format!("{}/", dir.display());
            ctx.register_parquet(t.name, &url, ParquetReadOptions::default().schema(&schema)).await?;
        }
        Ok(ctx)
    }

    async fn query(&self, sql: &str, params: Vec<ScalarValue>) -> Result<Vec<RecordBatch>, StoreError> {
        // The lock keeps this process's compaction away; another process's (the processors
        // write, `lms api` reads) may remove a listed file before it is read. The rows are
        // then in the compacted file: list the files again.
        let mut attempt = 1;
        loop {
            match self.query_once(sql, params.clone()).await {
                Err(StoreError::DataFusion(e)) if attempt < 5 && vanished(&e) => {
                    debug!(error = %e, attempt, "a twin file was compacted away during a read; reading again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn query_once(&self, sql: &str, params: Vec<ScalarValue>) -> Result<Vec<RecordBatch>, StoreError> {
        let _r = self.files.read().await;
        let ctx = self.session().await?;
        let df = ctx.sql(sql).await?;
        let df = if params.is_empty() { df } else { df.with_param_values(params)? };
        Ok(df.collect().await?)
    }

    async fn compact_table(&self, t: &'static Table, above: usize) -> Result<(), StoreError> {
        let files = self.files(t)?;
        if files.len() <= above {
            return Ok(());
        }
        let rows = self.rewrite(t, &files, t.compact_sql, Vec::new()).await?;
        debug!(table = t.name, files = files.len(), rows, "twin table compacted");
        Ok(())
    }

    /// Replaces `files` of `t` by one file holding what `sql` (over the files as table `t`)
    /// selects; returns its rows. The caller holds the writer lock.
    async fn rewrite(&self, t: &'static Table, files: &[PathBuf], sql: &str, params: Vec<ScalarValue>) -> Result<usize, StoreError> {
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let schema = t.schema();
        let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        let df = ctx.read_parquet(paths, ParquetReadOptions::default().schema(&schema)).await?;
        ctx.register_table("t", df.into_view())?;
        let df = ctx.sql(sql).await?;
        let df = if params.is_empty() { df } else { df.with_param_values(params)? };
        let batches = df.collect().await?;
        let columns: Vec<ArrayRef> = if batches.is_empty() {
            schema.fields().iter().map(|f| datafusion::arrow::array::new_empty_array(f.data_type())).collect()
        } else {
            let all = datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches)?;
            all.columns().iter().zip(schema.fields()).map(|(c, f)| cast(c, f.data_type())).collect::<Result<_, _>>()?
        };
        let merged = RecordBatch::try_new(schema, columns)?;
        let rows = merged.num_rows();
        self.write_file(t, &merged)?;
        let _w = self.files.write().await;
        for f in files {
            std::fs::remove_file(f)?;
        }
        Ok(rows)
    }

    /// Rewrites `t` without the rows of `learner` of `tenant`; returns how many there were.
    async fn remove_learner(&self, t: &'static Table, tenant: &str, learner: &str) -> Result<u64, StoreError> {
        let files = self.files(t)?;
        if files.is_empty() {
            return Ok(0);
        }
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        let paths: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        let df = ctx.read_parquet(paths, ParquetReadOptions::default().schema(&t.schema())).await?;
        ctx.register_table("t", df.into_view())?;
        let params = vec![text(tenant), text(learner)];
        let counted = ctx
            .sql("SELECT CAST(COUNT(*) AS BIGINT) FROM t WHERE tenant = $1 AND learner_id = $2")
            .await?
            .with_param_values(params.clone())?
            .collect()
            .await?;
        let n = ints(&counted, 0)?.first().copied().unwrap_or(0);
        if n > 0 {
            let columns = t.columns.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ");
            let keep = format!("SELECT {columns} FROM t WHERE NOT (tenant = $1 AND learner_id = $2)");
            self.rewrite(t, &files, &keep, params).await?;
        }
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// The error of reading a file that was removed after it was listed: a not-found of the
/// object store or the file system anywhere in the chain of causes (DataFusion reports it
/// directly, or wrapped in a Parquet or Arrow error).
fn vanished(e: &datafusion::error::DataFusionError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(datafusion::object_store::Error::NotFound { .. }) = c.downcast_ref::<datafusion::object_store::Error>() {
            return true;
        }
        if c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) {
            return true;
        }
        cause = c.source();
    }
    false
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}
fn i32s(values: impl Iterator<Item = i32>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(values))
}
fn i64s(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

/// The record batches of a batch's rows, one per non-empty table.
fn batches(f: &Facts) -> Result<Vec<(&'static Table, RecordBatch)>, StoreError> {
    let mut out = Vec::new();
    let mut push = |name: &str, columns: Vec<ArrayRef>| -> Result<(), StoreError> {
        let t = table(name);
        if columns.first().is_some_and(|c| !c.is_empty()) {
            out.push((t, RecordBatch::try_new(t.schema(), columns)?));
        }
        Ok(())
    };
    let r = &f.activity_daily;
    push(
        "activity_daily",
        vec![
            strings(r.iter().map(|r| r.tenant.as_str())),
            i32s(r.iter().map(|r| r.day)),
            i32s(r.iter().map(|r| r.week)),
            i32s(r.iter().map(|r| r.month)),
            strings(r.iter().map(|r| r.course_id.as_str())),
            strings(r.iter().map(|r| r.learner_id.as_str())),
        ],
    )?;
    let r = &f.course_activity;
    push(
        "course_activity",
        vec![
            strings(r.iter().map(|r| r.tenant.as_str())),
            strings(r.iter().map(|r| r.course_id.as_str())),
            strings(r.iter().map(|r| r.learner_id.as_str())),
            i64s(r.iter().map(|r| r.last_us)),
        ],
    )?;
    let r = &f.enrollments;
    push(
        "enrollments",
        vec![
            strings(r.iter().map(|r| r.tenant.as_str())),
            strings(r.iter().map(|r| r.course_id.as_str())),
            strings(r.iter().map(|r| r.learner_id.as_str())),
            strings(r.iter().map(|r| r.id.as_str())),
            i32s(r.iter().map(|r| r.day)),
            i32s(r.iter().map(|r| r.week)),
            i32s(r.iter().map(|r| r.month)),
            i32s(r.iter().map(|r| r.dropped)),
            i64s(r.iter().map(|r| r.order_key)),
        ],
    )?;
    let r = &f.learner_progress;
    push(
        "learner_progress",
        vec![
            strings(r.iter().map(|r| r.tenant.as_str())),
            strings(r.iter().map(|r| r.course_id.as_str())),
            strings(r.iter().map(|r| r.learner_id.as_str())),
            i64s(r.iter().map(|r| i64::try_from(r.revision).unwrap_or(i64::MAX))),
            i32s(r.iter().map(|r| r.pct_tenths)),
            i32s(r.iter().map(|r| r.completed)),
            i64s(r.iter().map(|r| r.completed_us)),
            i32s(r.iter().map(|r| r.day)),
            i32s(r.iter().map(|r| r.week)),
            i32s(r.iter().map(|r| r.month)),
        ],
    )?;
    let r = &f.payments;
    push(
        "payments",
        vec![
            strings(r.iter().map(|r| r.tenant.as_str())),
            strings(r.iter().map(|r| r.payment_id.as_str())),
            strings(r.iter().map(|r| r.id.as_str())),
            i32s(r.iter().map(|r| r.refund)),
            i32s(r.iter().map(|r| r.day)),
            i32s(r.iter().map(|r| r.week)),
            i32s(r.iter().map(|r| r.month)),
            i64s(r.iter().map(|r| r.amount_minor)),
            strings(r.iter().map(|r| r.currency.as_str())),
            strings(r.iter().map(|r| r.course_id.as_str())),
        ],
    )?;
    let r = &f.attempts;
    push(
        "attempts",
        vec![
            strings(r.iter().map(|r| r.tenant.as_str())),
            strings(r.iter().map(|r| r.assessment_id.as_str())),
            strings(r.iter().map(|r| r.learner_id.as_str())),
            strings(r.iter().map(|r| r.id.as_str())),
            strings(r.iter().map(|r| r.course_id.as_str())),
            i32s(r.iter().map(|r| r.day)),
            Arc::new(Float64Array::from_iter_values(r.iter().map(|r| r.pct))),
        ],
    )?;
    Ok(out)
}

/// Column `i` of every batch, cast to `T`'s type.
fn column<T: Array + Clone + 'static>(batches: &[RecordBatch], i: usize, as_type: &DataType) -> Result<Vec<T>, StoreError> {
    batches
        .iter()
        .map(|b| {
            let c = cast(b.column(i), as_type)?;
            c.as_any().downcast_ref::<T>().cloned().ok_or_else(|| StoreError::Internal(format!("column {i} is not {as_type}")))
        })
        .collect()
}

fn ints(batches: &[RecordBatch], i: usize) -> Result<Vec<i64>, StoreError> {
    Ok(column::<Int64Array>(batches, i, &DataType::Int64)?
        .iter()
        .flat_map(|a| a.iter().map(|v| v.unwrap_or(0)).collect::<Vec<_>>())
        .collect())
}

fn texts(batches: &[RecordBatch], i: usize) -> Result<Vec<String>, StoreError> {
    Ok(column::<StringArray>(batches, i, &DataType::Utf8)?
        .iter()
        .flat_map(|a| a.iter().map(|v| v.unwrap_or_default().to_owned()).collect::<Vec<_>>())
        .collect())
}

fn floats(batches: &[RecordBatch], i: usize) -> Result<Vec<f64>, StoreError> {
    Ok(column::<Float64Array>(batches, i, &DataType::Float64)?
        .iter()
        .flat_map(|a| a.iter().map(|v| v.unwrap_or(0.0)).collect::<Vec<_>>())
        .collect())
}

fn bucket_column(g: Granularity) -> &'static str {
    match g {
        Granularity::Day => "day",
        Granularity::Week => "week",
        Granularity::Month => "month",
    }
}

fn text(s: &str) -> ScalarValue {
    ScalarValue::Utf8(Some(s.to_owned()))
}

fn day(d: chrono::NaiveDate) -> ScalarValue {
    ScalarValue::Int32(Some(day_number(d)))
}

/// `$1` tenant, `$2` from, `$3` to, then `$4` course when filtered.
fn series_params(p: &SeriesParams) -> (Vec<ScalarValue>, &'static str) {
    let mut v = vec![text(&p.tenant), day(p.from), day(p.to)];
    match &p.course_id {
        Some(c) => {
            v.push(text(c));
            (v, "AND course_id = $4")
        }
        None => (v, ""),
    }
}

/// The rows of `learner_progress` of the largest revision per course and learner of tenant
/// `$1`, as a subquery (`course`: a further condition, such as `AND course_id = $4`).
/// Rows of one revision are copies of one event, so which of them is kept does not matter.
fn latest_progress(course: &str) -> String {
    format!(
        "(SELECT course_id, learner_id, pct_tenths, completed, day, week, month FROM (
            SELECT course_id, learner_id, pct_tenths, completed, day, week, month,
                   ROW_NUMBER() OVER (PARTITION BY course_id, learner_id ORDER BY revision DESC) AS rn
            FROM learner_progress WHERE tenant = $1 {course}
         ) ranked WHERE rn = 1) latest"
    )
}

impl Inner {
    async fn course_learners(&self, tenant: &str, course: &str) -> Result<CourseLearners, StoreError> {
        let params = || vec![text(tenant), text(course)];
        let enrolled = self
            .query("SELECT learner_id, MAX(order_key) FROM enrollments WHERE tenant = $1 AND course_id = $2 GROUP BY learner_id", params())
            .await?;
        let active = self
            .query(
                "SELECT learner_id, MAX(last_us) FROM course_activity WHERE tenant = $1 AND course_id = $2 GROUP BY learner_id",
                params(),
            )
            .await?;
        let progress = self
            .query(&format!("SELECT learner_id, pct_tenths, completed FROM {}", latest_progress("AND course_id = $2")), params())
            .await?;
        let mut c = CourseLearners::default();
        for (l, k) in texts(&enrolled, 0)?.into_iter().zip(ints(&enrolled, 1)?) {
            c.enrollment(l, k);
        }
        for (l, t) in texts(&active, 0)?.into_iter().zip(ints(&active, 1)?) {
            c.activity(l, t);
        }
        let figures = ints(&progress, 1)?.into_iter().zip(ints(&progress, 2)?);
        for (l, (p, done)) in texts(&progress, 0)?.into_iter().zip(figures) {
            c.progress(l, i32::try_from(p).unwrap_or(i32::MAX), done == 1);
        }
        Ok(c)
    }
}

#[async_trait]
impl AnalyticsStore for ParquetStore {
    fn kind(&self) -> &'static str {
        "parquet"
    }

    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        self.run(|inner| async move {
            let _w = inner.writer.lock().await;
            let format = inner.cfg.dir.join("FORMAT");
            let found = match tokio::fs::read_to_string(&format).await {
                Ok(s) => {
                    Some(s.trim().parse::<u32>().map_err(|_| StoreError::Schema(format!("{} is not a version number", format.display())))?)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            };
            let mut report = MigrationReport { version: FORMAT_VERSION, ..MigrationReport::default() };
            match found {
                Some(v) if v > FORMAT_VERSION => {
                    return Err(StoreError::Schema(format!("the twin's files are format {v}, newer than this build's {FORMAT_VERSION}")));
                }
                Some(v) if v == FORMAT_VERSION => {}
                // Format 2 added `learner_progress` (its rows come from `progress.updated`:
                // replay the derived topic to fill it, README "Upgrading").
                older => {
                    for t in TABLES {
                        tokio::fs::create_dir_all(inner.table_dir(t)).await?;
                    }
                    tokio::fs::write(&format, format!("{FORMAT_VERSION}\n")).await?;
                    report.applied.push(FORMAT_VERSION);
                    info!(dir = %inner.cfg.dir.display(), from = ?older, "created or upgraded the analytics twin");
                }
            }
            // Temporary files of writes that died half-way are never visible; remove them.
            for t in TABLES {
                let dir = inner.table_dir(t);
                if dir.exists() {
                    for entry in std::fs::read_dir(&dir)? {
                        let p = entry?.path();
                        if p.extension().is_some_and(|e| e == "tmp") {
                            std::fs::remove_file(p)?;
                        }
                    }
                }
            }
            Ok(report)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let format = self.inner.cfg.dir.join("FORMAT");
        tokio::fs::metadata(&format).await?;
        Ok(())
    }

    async fn insert(&self, events: &[&Event]) -> Result<(), StoreError> {
        let f = Facts::from_events(events.iter().copied());
        if f.is_empty() {
            return Ok(());
        }
        self.run(move |inner| async move {
            let b = batches(&f)?;
            let _w = inner.writer.lock().await;
            inner.write_batches(b).await?;
            for t in TABLES {
                inner.compact_table(t, inner.cfg.compact_after_files).await?;
            }
            Ok(())
        })
        .await
    }

    async fn erase(&self, tenant: &str, learner: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let (tenant, learner) = (tenant.to_owned(), learner.to_owned());
        self.run(move |inner| async move {
            let _w = inner.writer.lock().await;
            let list = table(ERASED);
            let now = chrono::Utc::now().timestamp_micros();
            let row = RecordBatch::try_new(
                list.schema(),
                vec![strings(std::iter::once(tenant.as_str())), strings(std::iter::once(learner.as_str())), i64s(std::iter::once(now))],
            )?;
            inner.write_file(list, &row)?;
            let mut removed = BTreeMap::new();
            for t in TABLES.iter().filter(|t| t.names_learners()) {
                removed.insert(t.name.to_owned(), inner.remove_learner(t, &tenant, &learner).await?);
            }
            info!(rows = removed.values().sum::<u64>(), "learner erased in the analytics twin");
            Ok(removed)
        })
        .await
    }

    async fn erased(&self, learners: &[(&str, &str)]) -> Result<HashSet<(String, String)>, StoreError> {
        if learners.is_empty() || self.inner.files(table(ERASED))?.is_empty() {
            return Ok(HashSet::new());
        }
        let tenants: BTreeSet<&str> = learners.iter().map(|(t, _)| *t).collect();
        let mut all = HashSet::new();
        for tenant in tenants {
            let sql = "SELECT DISTINCT learner_id FROM erased_learners WHERE tenant = $1";
            let found = self
                .run({
                    let tenant = tenant.to_owned();
                    move |inner| async move { inner.query(sql, vec![text(&tenant)]).await }
                })
                .await?;
            all.extend(texts(&found, 0)?.into_iter().map(|l| (tenant.to_owned(), l)));
        }
        Ok(learners.iter().map(|(t, l)| ((*t).to_owned(), (*l).to_owned())).filter(|k| all.contains(k)).collect())
    }

    async fn active_learners(&self, p: &SeriesParams) -> Result<Vec<ActiveLearnersPoint>, StoreError> {
        let (params, course) = series_params(p);
        let b = bucket_column(p.granularity);
        let sql = format!(
            "SELECT {b} AS bucket, COUNT(DISTINCT learner_id) AS n FROM activity_daily
             WHERE tenant = $1 AND day >= $2 AND day <= $3 {course}
             GROUP BY {b} ORDER BY bucket"
        );
        let rows = self.run(move |inner| async move { inner.query(&sql, params).await }).await?;
        Ok(ints(&rows, 0)?
            .into_iter()
            .zip(ints(&rows, 1)?)
            .map(|(b, n)| ActiveLearnersPoint { bucket: date_of(b as i32), active_learners: n as u64 })
            .collect())
    }

    async fn enrollments(&self, p: &SeriesParams) -> Result<Vec<EnrollmentsPoint>, StoreError> {
        let (params, course) = series_params(p);
        let b = bucket_column(p.granularity);
        let sql = format!(
            "SELECT {b} AS bucket,
                    COUNT(DISTINCT CASE WHEN dropped = 0 THEN id END) AS created,
                    COUNT(DISTINCT CASE WHEN dropped = 1 THEN id END) AS drops
             FROM enrollments WHERE tenant = $1 AND day >= $2 AND day <= $3 {course}
             GROUP BY {b} ORDER BY bucket"
        );
        let rows = self.run(move |inner| async move { inner.query(&sql, params).await }).await?;
        let (buckets, created, drops) = (ints(&rows, 0)?, ints(&rows, 1)?, ints(&rows, 2)?);
        Ok(buckets
            .into_iter()
            .zip(created.into_iter().zip(drops))
            .map(|(b, (c, d))| EnrollmentsPoint { bucket: date_of(b as i32), enrollments: c as u64, drops: d as u64 })
            .collect())
    }

    async fn completions(&self, p: &SeriesParams) -> Result<Vec<CompletionsPoint>, StoreError> {
        let (params, course) = series_params(p);
        let b = bucket_column(p.granularity);
        // The completion of the latest revision per learner and course.
        let sql = format!(
            "SELECT {b} AS bucket, COUNT(*) AS n FROM {} WHERE completed = 1 AND day >= $2 AND day <= $3
             GROUP BY {b} ORDER BY bucket",
            latest_progress(course)
        );
        let rows = self.run(move |inner| async move { inner.query(&sql, params).await }).await?;
        Ok(ints(&rows, 0)?
            .into_iter()
            .zip(ints(&rows, 1)?)
            .map(|(b, n)| CompletionsPoint { bucket: date_of(b as i32), completions: n as u64 })
            .collect())
    }

    async fn funnel(&self, p: &FunnelParams) -> Result<Funnel, StoreError> {
        let p = p.clone();
        let c = self.run(move |inner| async move { inner.course_learners(&p.tenant, &p.course_id).await }).await?;
        Ok(c.funnel())
    }

    async fn revenue(&self, p: &RevenueParams) -> Result<Vec<RevenuePoint>, StoreError> {
        let s = &p.series;
        let b = bucket_column(s.granularity);
        let mut params = vec![text(&s.tenant), day(s.from), day(s.to)];
        let mut filter = String::new();
        if let Some(c) = &p.currency {
            params.push(text(c));
            filter.push_str(&format!(" AND currency = ${}", params.len()));
        }
        if let Some(c) = &s.course_id {
            params.push(text(c));
            filter.push_str(&format!(" AND course = ${}", params.len()));
        }
        let sql = format!(
            "SELECT bucket, currency, SUM(gross) AS gross, SUM(refunds) AS refunds FROM (
                SELECT p_{b} AS bucket, p_currency AS currency, p_amount AS gross, CAST(0 AS BIGINT) AS refunds,
                       p_course AS course
                FROM (
                    SELECT id, MIN(day) AS p_day, MIN(week) AS p_week, MIN(month) AS p_month,
                           MIN(amount_minor) AS p_amount, MIN(currency) AS p_currency, MIN(course_id) AS p_course
                    FROM payments WHERE tenant = $1 AND refund = 0 AND day >= $2 AND day <= $3 GROUP BY id
                ) g
                UNION ALL
                SELECT r.r_{b} AS bucket, pay.currency AS currency, CAST(0 AS BIGINT) AS gross, r.r_amount AS refunds,
                       pay.course AS course
                FROM (
                    SELECT id, payment_id, MIN(day) AS r_day, MIN(week) AS r_week, MIN(month) AS r_month,
                           MIN(amount_minor) AS r_amount
                    FROM payments WHERE tenant = $1 AND refund = 1 AND day >= $2 AND day <= $3
                    GROUP BY id, payment_id
                ) r
                JOIN (
                    SELECT payment_id, MIN(currency) AS currency, MIN(course_id) AS course
                    FROM payments WHERE tenant = $1 AND refund = 0 GROUP BY payment_id
                ) pay ON r.payment_id = pay.payment_id
             ) u WHERE TRUE {filter}
             GROUP BY bucket, currency ORDER BY bucket, currency"
        );
        let rows = self.run(move |inner| async move { inner.query(&sql, params).await }).await?;
        let (buckets, currencies, gross, refunds) = (ints(&rows, 0)?, texts(&rows, 1)?, ints(&rows, 2)?, ints(&rows, 3)?);
        Ok(buckets
            .into_iter()
            .zip(currencies)
            .zip(gross.into_iter().zip(refunds))
            .map(|((b, currency), (g, r))| RevenuePoint {
                bucket: date_of(b as i32),
                currency,
                gross_minor: g,
                refunds_minor: r,
                net_minor: g - r,
            })
            .collect())
    }

    async fn scores(&self, p: &ScoresParams) -> Result<Scores, StoreError> {
        let mut params = vec![text(&p.tenant), text(&p.assessment_id)];
        let mut filter = String::from("tenant = $1 AND assessment_id = $2");
        if let Some((from, to)) = p.range {
            params.push(day(from));
            params.push(day(to));
            filter.push_str(" AND day >= $3 AND day <= $4");
        }
        if let Some(c) = &p.course_id {
            params.push(text(c));
            filter.push_str(&format!(" AND course_id = ${}", params.len()));
        }
        let attempts_sql = format!("SELECT COUNT(DISTINCT id) FROM attempts WHERE {filter}");
        let best_sql = format!("SELECT MAX(pct) AS best FROM attempts WHERE {filter} GROUP BY learner_id");
        let (attempts, best) = self
            .run(move |inner| async move {
                let a = inner.query(&attempts_sql, params.clone()).await?;
                let b = inner.query(&best_sql, params).await?;
                Ok((a, b))
            })
            .await?;
        let attempts = ints(&attempts, 0)?.first().copied().unwrap_or(0) as u64;
        Ok(compute::scores(attempts, floats(&best, 0)?))
    }

    async fn at_risk(&self, p: &AtRiskParams) -> Result<Vec<AtRiskLearner>, StoreError> {
        let q = p.clone();
        let c = self.run(move |inner| async move { inner.course_learners(&q.tenant, &q.course_id).await }).await?;
        Ok(c.at_risk(p))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::error::DataFusionError;

    use super::vanished;

    #[test]
    fn a_file_removed_after_listing_is_read_again() {
        let gone = datafusion::object_store::Error::NotFound { path: "t/1.parquet".into(), source: "gone".into() };
        assert!(vanished(&DataFusionError::ObjectStore(Box::new(gone))));
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert!(vanished(&DataFusionError::IoError(io).context("reading t")));
        let wrapped = datafusion::object_store::Error::NotFound { path: "t/2.parquet".into(), source: "gone".into() };
        let parquet = datafusion::parquet::errors::ParquetError::External(Box::new(wrapped));
        assert!(vanished(&DataFusionError::ParquetError(Box::new(parquet))));
        assert!(!vanished(&DataFusionError::Plan("no such column".into())));
    }
}
