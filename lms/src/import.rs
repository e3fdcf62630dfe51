//! `lms import`: a backfill from files. NDJSON events (the envelope of `POST /v1/events`) and
//! xAPI statements (a JSON array or NDJSON, mapped as `POST /v1/xapi/statements` maps them),
//! plain or gzip, onto the same topics with the same keys and headers as the API, through the
//! same producer.
//!
//! - **The API's validation**: the same functions (`lms_events::parse_client_event_owned`,
//!   `api::xapi::statement_to_event`); lines that fail go to the report (file, line, and each
//!   error at its JSON pointer), the import goes on.
//! - **Idempotent**: events keep their ids. An envelope event without an id gets a UUIDv5 of
//!   the tenant, the line's number and its content, so importing the same file again changes
//!   no result (the processors deduplicate by event id); an xAPI statement without an id gets
//!   the API's content-derived id.
//! - **Resumable**: after each chunk the broker acknowledged, a checkpoint per file (its path,
//!   size and modification time, the next line) is written to `--checkpoint-dir`; a second run
//!   continues after the last acknowledged chunk and skips files already imported. A file
//!   that changed since its checkpoint is imported from the start (its ids are stable).

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use lms_bus::{BusMetrics, Delivered, OnQueueFull, ProduceError, Producer, TopicsFile};
use lms_events::{Event, FieldError, Rejection, TraceContext, parse_client_event_owned};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::config::Config;

/// The namespace of the ids `lms import` derives for envelope events without one.
const IMPORT_NAMESPACE: Uuid = Uuid::from_u128(0x6c6d_732d_696d_706f_7274_2d69_6473_0001);

/// Options of `lms import`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  lms import --tenant acme moodle-xapi-2024.json.gz
  lms import --tenant acme --rate 2000 exports/          # every .json/.ndjson/.jsonl(.gz) in it
  lms import --tenant acme --dry-run events.ndjson      # validate only, nothing is sent

An interrupted import continues where it stopped when run again with the same
--checkpoint-dir; --restart imports everything again (harmless: ids are stable).")]
pub struct ImportArgs {
    /// Files, or directories whose `.json`, `.ndjson` and `.jsonl` files (and their `.gz`)
    /// are imported in name order.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The tenant every event belongs to (an event naming another tenant is rejected).
    #[arg(long)]
    pub tenant: String,
    /// What the files hold: `events` (our envelope, NDJSON), `xapi` (statements, a JSON array
    /// or NDJSON) or `auto` (xAPI for a JSON array and for objects with `actor` and `verb`).
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Validates and reports only; sends nothing and writes no checkpoint.
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many events per second, so a backfill leaves room for live traffic.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Where the per-file checkpoints are kept.
    #[arg(long, default_value = "lms-import.checkpoints")]
    pub checkpoint_dir: PathBuf,
    /// Ignores the checkpoints and imports every file from its first line.
    #[arg(long)]
    pub restart: bool,
    /// The report of rejected lines, NDJSON `{file, line, errors: [{path, message}]}`
    /// (appended to).
    #[arg(long, default_value = "lms-import-rejected.ndjson")]
    pub report: PathBuf,
    /// Events per produced chunk (a checkpoint follows each).
    #[arg(long, default_value_t = 5000)]
    pub chunk: usize,
    /// Stops after this many lines of the run, as an interruption would (for tests of
    /// resuming).
    #[arg(long, hide = true)]
    pub stop_after_lines: Option<u64>,
}

/// What the files hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Decide per document: a JSON array is xAPI, an object with `actor` and `verb` too.
    Auto,
    /// Our event envelope.
    Events,
    /// xAPI statements.
    Xapi,
}

/// A file's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    file: String,
    size: u64,
    modified_ns: u128,
    /// Lines (array items) before this one are done.
    next_line: u64,
    accepted: u64,
    rejected: u64,
    done: bool,
}

/// Counts of a run.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    lines: u64,
    accepted: u64,
    rejected: u64,
}

pub async fn run(args: ImportArgs, config: &Config) -> anyhow::Result<()> {
    ensure!(!args.tenant.trim().is_empty(), "--tenant must name a tenant");
    ensure!(args.chunk > 0, "--chunk must be positive");
    if let Some(rate) = args.rate {
        ensure!(rate.is_finite() && rate > 0.0, "--rate must be a positive number of events per second");
    }
    let files = collect_files(&args.paths)?;
    ensure!(!files.is_empty(), "no .json, .ndjson or .jsonl file (plain or .gz) in {:?}", args.paths);

    let producer = if args.dry_run {
        None
    } else {
        let topics = TopicsFile::bundled().topic_map(&config.kafka.topic_prefix);
        let producer = Producer::new(&config.kafka, topics, BusMetrics::standalone(), "lms-import")?;
        if let Err(why) = producer.broker_check(Duration::from_secs(10)) {
            bail!("the Kafka cluster at {} is not reachable: {why}", config.kafka.brokers);
        }
        std::fs::create_dir_all(&args.checkpoint_dir)
            .with_context(|| format!("creating the checkpoint directory {}", args.checkpoint_dir.display()))?;
        Some(Arc::new(producer))
    };
    let mut report = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.report)
        .with_context(|| format!("opening the report {}", args.report.display()))?;

    let progress = Progress::new();
    let mut total = Counts::default();
    let mut budget = args.stop_after_lines;
    let started = Instant::now();
    for file in &files {
        let outcome = import_file(file, &args, producer.as_ref(), &mut report, &progress, &mut total, &mut budget).await?;
        progress.line(&format!("{}: {outcome}", file.display()));
        if budget == Some(0) {
            progress.line("stopped early (--stop-after-lines); run again to continue");
            break;
        }
    }
    progress.finish();
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    println!(
        "{} {} lines: {} events {}, {} rejected{} in {:.1} s ({:.0} events/s)",
        if args.dry_run { "validated" } else { "imported" },
        total.lines,
        total.accepted,
        if args.dry_run { "valid" } else { "sent" },
        total.rejected,
        if total.rejected > 0 { format!(" (see {})", args.report.display()) } else { String::new() },
        secs,
        total.accepted as f64 / secs,
    );
    Ok(())
}

/// The files of `paths`: files as given, directories' importable files in name order.
fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let importable = |p: &Path| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let name = name.strip_suffix(".gz").unwrap_or(name);
        [".json", ".ndjson", ".jsonl"].iter().any(|ext| name.ends_with(ext))
    };
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
        if meta.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading the directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && importable(p))
                .collect();
            inside.sort();
            out.extend(inside);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}

/// Imports one file from its checkpoint; returns what happened, in words.
async fn import_file(
    file: &Path,
    args: &ImportArgs,
    producer: Option<&Arc<Producer>>,
    report: &mut File,
    progress: &Progress,
    total: &mut Counts,
    budget: &mut Option<u64>,
) -> anyhow::Result<String> {
    let meta = std::fs::metadata(file).with_context(|| format!("{}", file.display()))?;
    let modified_ns = meta.modified().ok().and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
    let fresh =
        Checkpoint { file: file.display().to_string(), size: meta.len(), modified_ns, next_line: 1, accepted: 0, rejected: 0, done: false };
    let checkpoint_path = args.checkpoint_dir.join(format!("{}.json", checkpoint_name(file)));
    let stored = if producer.is_some() && !args.restart { read_checkpoint(&checkpoint_path) } else { Ok(None) };
    let stored = stored.unwrap_or_else(|why| {
        progress.line(&format!("{}: {why}; importing it from the start", file.display()));
        None
    });
    let checkpoint = match stored {
        Some(c) if c.size == fresh.size && c.modified_ns == fresh.modified_ns => c,
        Some(_) => {
            progress.line(&format!("{}: changed since its checkpoint; importing it from the start", file.display()));
            fresh
        }
        None => fresh,
    };
    if checkpoint.done {
        return Ok(format!(
            "already imported ({} events, {} rejected; --restart imports it again)",
            checkpoint.accepted, checkpoint.rejected
        ));
    }
    let resumed_at = checkpoint.next_line;

    let mut items = Items::open(file, args.format)?;
    // With --rate, chunks of at most a second's worth, so the pace is even rather than a
    // burst of a whole chunk followed by a pause.
    let chunk_size = args.rate.map_or(args.chunk, |r| args.chunk.min((r as usize).max(1)));
    let mut chunk: Vec<(Event, Option<TraceContext>)> = Vec::with_capacity(chunk_size);
    let mut rejected_lines: Vec<String> = Vec::new();
    let now = Utc::now();
    let mut line_of_chunk_end = checkpoint.next_line;
    let rate_started = Instant::now();
    let mut sent_in_run = 0u64;
    let start_line = checkpoint.next_line;
    let mut committer = Committer { producer: producer.cloned(), checkpoint, path: checkpoint_path, report, in_flight: None };
    while let Some((line, item)) = items.next_item()? {
        if line < start_line {
            continue;
        }
        if *budget == Some(0) {
            break;
        }
        if let Some(b) = budget.as_mut() {
            *b -= 1;
        }
        total.lines += 1;
        match item.and_then(|(value, kind)| to_event(value, kind, &args.tenant, line, now)) {
            Ok(event) => chunk.push((event, None)),
            Err(errors) => {
                total.rejected += 1;
                rejected_lines.push(serde_json::to_string(&RejectedLine { file: &committer.checkpoint.file, line, errors: &errors })?);
            }
        }
        line_of_chunk_end = line + 1;
        if chunk.len() >= chunk_size {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(chunk_size));
            committer.send(full, std::mem::take(&mut rejected_lines), line_of_chunk_end, total).await?;
            sent_in_run += u64::try_from(chunk_size).unwrap_or(u64::MAX);
            pace(args.rate, rate_started, sent_in_run).await;
            progress.update(total);
        }
    }
    let finished = *budget != Some(0) || items.next_item()?.is_none();
    committer.send(chunk, rejected_lines, line_of_chunk_end, total).await?;
    committer.finish(finished, total).await?;
    progress.update(total);
    let checkpoint = &committer.checkpoint;
    let resumed = if resumed_at > 1 { format!(", resumed at line {resumed_at}") } else { String::new() };
    Ok(format!(
        "{} events, {} rejected{resumed}{}",
        checkpoint.accepted,
        checkpoint.rejected,
        if finished { "" } else { " (not finished)" }
    ))
}

/// A chunk handed to the producer and not yet committed.
struct InFlight {
    send: Option<tokio::task::JoinHandle<Vec<Result<Delivered, ProduceError>>>>,
    events: u64,
    rejected_lines: Vec<String>,
    next_line: u64,
}

/// Sends chunks and commits them in order: a chunk's rejected lines go to the report and the
/// checkpoint moves past it only once the broker acknowledged all its events, so a crash
/// before the checkpoint only repeats chunks, which changes nothing (stable ids). One chunk
/// is in flight while the next is read and validated.
struct Committer<'a> {
    producer: Option<Arc<Producer>>,
    checkpoint: Checkpoint,
    path: PathBuf,
    report: &'a mut File,
    in_flight: Option<InFlight>,
}

impl Committer<'_> {
    /// Sends `chunk` (ending before `next_line`), then commits the chunk sent before it.
    async fn send(
        &mut self,
        chunk: Vec<(Event, Option<TraceContext>)>,
        rejected_lines: Vec<String>,
        next_line: u64,
        total: &mut Counts,
    ) -> anyhow::Result<()> {
        let events = chunk.len() as u64;
        let send =
            self.producer.clone().filter(|_| events > 0).map(|producer| {
                tokio::spawn(async move { producer.send_events(&chunk, OnQueueFull::Wait(Duration::from_secs(60))).await })
            });
        if let Some(previous) = self.in_flight.replace(InFlight { send, events, rejected_lines, next_line }) {
            self.commit(previous, total).await?;
        }
        Ok(())
    }

    /// Commits the last chunk; `done` marks the file imported.
    async fn finish(&mut self, done: bool, total: &mut Counts) -> anyhow::Result<()> {
        self.checkpoint.done = done;
        match self.in_flight.take() {
            Some(last) => self.commit(last, total).await,
            None => Ok(()),
        }
    }

    async fn commit(&mut self, chunk: InFlight, total: &mut Counts) -> anyhow::Result<()> {
        if let Some(send) = chunk.send {
            let results = send.await.context("the producing task failed")?;
            if let Some(e) = results.iter().find_map(|r| r.as_ref().err()) {
                bail!(
                    "the broker did not acknowledge every event of lines {}..{} of {} ({e}); nothing after line {} is checkpointed, run again to continue",
                    self.checkpoint.next_line,
                    chunk.next_line,
                    self.checkpoint.file,
                    self.checkpoint.next_line.saturating_sub(1)
                );
            }
        }
        total.accepted += chunk.events;
        self.checkpoint.accepted += chunk.events;
        self.checkpoint.rejected += chunk.rejected_lines.len() as u64;
        for line in &chunk.rejected_lines {
            writeln!(self.report, "{line}").context("writing the report")?;
        }
        self.report.flush().context("writing the report")?;
        self.checkpoint.next_line = chunk.next_line;
        if self.producer.is_some() {
            write_checkpoint(&self.path, &self.checkpoint)?;
        }
        Ok(())
    }
}

/// Waits until `sent` events fit `rate` events/s since `started`.
async fn pace(rate: Option<f64>, started: Instant, sent: u64) {
    if let Some(rate) = rate {
        let due = started + Duration::from_secs_f64(sent as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
    }
}

#[derive(Serialize)]
struct RejectedLine<'a> {
    file: &'a str,
    line: u64,
    errors: &'a [FieldError],
}

/// What an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Event,
    Statement,
}

/// The event of one item, validated as the API validates it.
fn to_event(mut value: Value, kind: Kind, tenant: &str, line: u64, now: chrono::DateTime<Utc>) -> Result<Event, Vec<FieldError>> {
    match kind {
        Kind::Statement => api::xapi::statement_to_event(&value, tenant, now),
        Kind::Event => {
            if let Some(object) = value.as_object_mut()
                && !object.contains_key("id")
            {
                let content = serde_json::to_string(object).unwrap_or_default();
                let id = Uuid::new_v5(&IMPORT_NAMESPACE, format!("{tenant}\n{line}\n{content}").as_bytes());
                object.insert("id".to_owned(), Value::from(id.to_string()));
            }
            parse_client_event_owned(value, tenant).map_err(|rejection| match rejection {
                Rejection::Invalid(errors) => errors,
                Rejection::ForeignTenant { named, caller } => {
                    vec![FieldError::new("/tenant", format!("names tenant {named:?}; this import is for tenant {caller:?}"))]
                }
            })
        }
    }
}

/// The items of a file, numbered from 1: NDJSON lines (blank lines are counted, not
/// returned), or the elements of a JSON array.
struct Items {
    format: Format,
    source: Source,
}

enum Source {
    Lines { reader: Box<dyn BufRead>, line: u64, buf: String },
    Array { items: std::vec::IntoIter<Value>, index: u64 },
}

type Item = Result<(Value, Kind), Vec<FieldError>>;

impl Items {
    fn open(file: &Path, format: Format) -> anyhow::Result<Items> {
        let raw = File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let mut buffered = BufReader::with_capacity(1 << 20, raw);
        let gzip = buffered.fill_buf().with_context(|| format!("reading {}", file.display()))?.starts_with(&[0x1f, 0x8b]);
        let mut reader: Box<dyn BufRead> = if gzip {
            Box::new(BufReader::with_capacity(1 << 20, flate2::bufread::MultiGzDecoder::new(buffered)))
        } else {
            Box::new(buffered)
        };
        let first = loop {
            let buf = reader.fill_buf().with_context(|| format!("reading {}", file.display()))?;
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => break Some(buf[i]),
                None if buf.is_empty() => break None,
                None => {
                    let n = buf.len();
                    reader.consume(n);
                }
            }
        };
        let source = if first == Some(b'[') {
            ensure!(
                format != Format::Events,
                "{} is a JSON array: events are imported from NDJSON (xAPI statements may come as an array)",
                file.display()
            );
            let mut text = Vec::new();
            reader.read_to_end(&mut text).with_context(|| format!("reading {}", file.display()))?;
            let items: Vec<Value> =
                serde_json::from_slice(&text).with_context(|| format!("{} is not a JSON array of statements", file.display()))?;
            Source::Array { items: items.into_iter(), index: 0 }
        } else {
            Source::Lines { reader, line: 0, buf: String::new() }
        };
        Ok(Items { format, source })
    }

    /// The next item and its number, or None at the end.
    fn next_item(&mut self) -> anyhow::Result<Option<(u64, Item)>> {
        let format = self.format;
        match &mut self.source {
            Source::Array { items, index } => Ok(items.next().map(|v| {
                *index += 1;
                (*index, Ok((v, Kind::Statement)))
            })),
            Source::Lines { reader, line, buf } => loop {
                buf.clear();
                if reader.read_line(buf).context("reading a line")? == 0 {
                    return Ok(None);
                }
                *line += 1;
                let text = buf.trim();
                if text.is_empty() {
                    continue;
                }
                let item = match serde_json::from_str::<Value>(text) {
                    Ok(v) => {
                        let kind = match format {
                            Format::Events => Kind::Event,
                            Format::Xapi => Kind::Statement,
                            Format::Auto if v.get("actor").is_some() && v.get("verb").is_some() => Kind::Statement,
                            Format::Auto => Kind::Event,
                        };
                        Ok((v, kind))
                    }
                    Err(e) => Err(vec![FieldError::new("", format!("not JSON: {e}"))]),
                };
                return Ok(Some((*line, item)));
            },
        }
    }
}

/// The checkpoint's file name: a digest of the file's absolute path.
fn checkpoint_name(file: &Path) -> String {
    let absolute = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
    Uuid::new_v5(&IMPORT_NAMESPACE, absolute.to_string_lossy().as_bytes()).simple().to_string()
}

/// The stored checkpoint: None when there is none, an error naming the file when it cannot
/// be read or parsed (the caller says so and starts the file over: its ids are stable).
fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>, String> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read the checkpoint {}: {e}", path.display())),
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("the checkpoint {} is unreadable: {e}", path.display())),
    }
}

/// Writes the checkpoint atomically (a temporary file renamed over it).
fn write_checkpoint(path: &Path, checkpoint: &Checkpoint) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(checkpoint)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A progress bar on a terminal (lines, events/s, rejected), plain lines every five
/// seconds otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: std::sync::Mutex<Instant>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress { bar, started: Instant::now(), last_line: std::sync::Mutex::new(Instant::now()) }
    }

    fn update(&self, c: &Counts) {
        let rate = c.accepted as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let msg = format!("{} lines, {} events ({rate:.0} events/s), {} rejected", c.lines, c.accepted, c.rejected);
        match &self.bar {
            Some(bar) => bar.set_message(msg),
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if last.elapsed() >= Duration::from_secs(5) {
                    *last = Instant::now();
                    eprintln!("import: {msg}");
                }
            }
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("import: {text}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_depend_on_tenant_line_and_content() {
        let v = serde_json::json!({"specversion": "1.0", "type": "lesson.completed", "source": "export", "time": "2024-03-01T10:00:00Z",
            "subject": "ada", "data": {"learner_id": "ada", "course_id": "c1", "lesson_id": "l1"}});
        let id = |tenant: &str, line: u64, value: &Value| to_event(value.clone(), Kind::Event, tenant, line, Utc::now()).expect("valid").id;
        assert_eq!(id("acme", 3, &v), id("acme", 3, &v), "the same line of the same file: the same id");
        assert_ne!(id("acme", 3, &v), id("acme", 4, &v));
        assert_ne!(id("acme", 3, &v), id("globex", 3, &v));
        let mut given = v.clone();
        given["id"] = serde_json::json!("evt-1");
        assert_eq!(id("acme", 3, &given), "evt-1", "an event keeps its id");
        let mut foreign = v;
        foreign["tenant"] = serde_json::json!("globex");
        let errors = to_event(foreign, Kind::Event, "acme", 1, Utc::now()).expect_err("another tenant");
        assert_eq!(errors[0].path, "/tenant");
    }

    #[test]
    fn directories_give_their_importable_files_in_name_order() {
        let dir = std::env::temp_dir().join(format!("lms-import-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        for name in ["b.ndjson", "a.json.gz", "c.jsonl", "notes.txt"] {
            std::fs::write(dir.join(name), "").expect("file");
        }
        let files = collect_files(std::slice::from_ref(&dir)).expect("files");
        let names: Vec<_> = files.iter().filter_map(|f| f.file_name()?.to_str()).collect();
        assert_eq!(names, ["a.json.gz", "b.ndjson", "c.jsonl"]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
