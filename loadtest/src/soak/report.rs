//! What the soak run measured: the ramp's steps, the steady samples, and the report with
//! its goals.

use std::fmt;
use std::time::Duration;

use lms_harness::compare::Tally;

/// One ramp step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Offered events/s.
    pub offered: f64,
    /// Accepted events/s (202s during the step).
    pub accepted: f64,
    /// Offered events/s the clients could not send (all busy): the shortfall.
    pub shed: f64,
    /// Progress lag (records) at the middle and at the end of the step.
    pub lag_mid: i64,
    /// See `lag_mid`.
    pub lag_end: i64,
    /// Whether the pipeline sustained it.
    pub held: bool,
}

/// One sample of the steady phase.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the start of the steady phase.
    pub at: Duration,
    /// Accepted events/s since the previous sample.
    pub rate: f64,
    /// Progress group lag (records).
    pub lag: i64,
    /// RSS in KiB per process, in the order of [`Report::processes`] (0 when unreadable).
    pub rss_kib: Vec<u64>,
    /// Freshness probes completed since the previous sample, and their p50/p95/p99 (ms).
    pub probes: usize,
    /// See `probes`.
    pub p50_ms: f64,
    /// See `probes`.
    pub p95_ms: f64,
    /// See `probes`.
    pub p99_ms: f64,
}

/// The outcome of a soak run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The ramp (empty when the rate was given).
    pub steps: Vec<Step>,
    /// The offered rate of the last step that held (`None` without a ramp or when none held).
    pub max_rate: Option<f64>,
    /// The steady phase's offered rate.
    pub steady_rate: f64,
    /// The accepted rate over the steady phase.
    pub steady_accepted_rate: f64,
    /// The steady phase's samples.
    pub samples: Vec<Sample>,
    /// The processes whose RSS was sampled (`api`, `processor-0`, …).
    pub processes: Vec<String>,
    /// Freshness of every probe that became visible (ms), in completion order.
    pub freshness_ms: Vec<f64>,
    /// Probes that did not become visible within the probe timeout.
    pub probes_late: u64,
    /// Probes skipped because `probe_concurrency` were polling.
    pub probes_skipped: u64,
    /// Events accepted in all (ramp and steady).
    pub events: u64,
    /// Cohort rounds the events came from (each with new learners).
    pub rounds: u32,
    /// Retried POSTs (429/503/connection errors).
    pub retries: u64,
    /// From the end of the load to caught up.
    pub catch_up: Duration,
    /// Progress (and achievements) against the oracle.
    pub tallies: Vec<Tally>,
}

/// The `p`-quantile (0..=1) of sorted values (0 when empty).
pub(crate) fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub(crate) fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

impl Report {
    /// Freshness p50, p95, p99 over the whole steady phase (ms); late probes count at the
    /// probe timeout, so they push the tail up.
    pub fn freshness(&self, timeout: Duration) -> (f64, f64, f64) {
        let mut all = self.freshness_ms.clone();
        all.extend(std::iter::repeat_n(timeout.as_secs_f64() * 1000.0, self.probes_late as usize));
        let s = sorted(&all);
        (quantile(&s, 0.5), quantile(&s, 0.95), quantile(&s, 0.99))
    }

    /// Per process: first, last and largest RSS (KiB) and growth from first to last (%).
    pub fn rss(&self) -> Vec<(String, u64, u64, u64, f64)> {
        self.processes
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let v: Vec<u64> = self.samples.iter().map(|s| s.rss_kib.get(i).copied().unwrap_or(0)).collect();
                let first = v.first().copied().unwrap_or(0);
                let last = v.last().copied().unwrap_or(0);
                let max = v.iter().copied().max().unwrap_or(0);
                let growth = if first > 0 { (last as f64 - first as f64) * 100.0 / first as f64 } else { f64::INFINITY };
                (name.clone(), first, last, max, growth)
            })
            .collect()
    }

    /// Lag of the last sample, and the largest sampled.
    pub fn lag(&self) -> (i64, i64) {
        (self.samples.last().map_or(0, |s| s.lag), self.samples.iter().map(|s| s.lag).max().unwrap_or(0))
    }

    /// Whether the lag is bounded: over the last third of the samples, the mean of its
    /// second half is not above the mean of its first half by more than one second of
    /// traffic at the steady rate.
    pub fn lag_bounded(&self) -> bool {
        let n = self.samples.len();
        let third = &self.samples[n - n / 3..];
        if third.len() < 2 {
            return true;
        }
        let mean = |s: &[Sample]| s.iter().map(|x| x.lag as f64).sum::<f64>() / s.len().max(1) as f64;
        let (a, b) = third.split_at(third.len() / 2);
        mean(b) <= mean(a) + self.steady_rate.max(1.0)
    }

    /// The goals and whether each holds: RSS growth < 10 %, lag bounded, freshness p99 ≤ 1 s,
    /// nothing lost or doubled.
    pub fn goals(&self, probe_timeout: Duration) -> Vec<(String, bool)> {
        let rss = self.rss();
        let worst = rss.iter().map(|r| r.4).fold(f64::NEG_INFINITY, f64::max);
        let (_, _, p99) = self.freshness(probe_timeout);
        let measured = !self.freshness_ms.is_empty() || self.probes_late > 0;
        vec![
            (format!("RSS growth < 10 % (largest {worst:+.1} %)"), !rss.is_empty() && worst < 10.0),
            ("lag bounded (not growing over the last third)".to_owned(), self.lag_bounded()),
            (format!("freshness p99 ≤ 1000 ms ({p99:.0} ms)"), measured && p99 <= 1000.0),
            ("progress equals the oracle (nothing lost / doubled)".to_owned(), self.tallies.iter().all(Tally::clean)),
        ]
    }

    /// Every goal holds.
    pub fn ok(&self, probe_timeout: Duration) -> bool {
        self.goals(probe_timeout).iter().all(|g| g.1)
    }

    /// The report, with the goals judged against `probe_timeout`.
    pub fn display(&self, probe_timeout: Duration) -> impl fmt::Display + '_ {
        ReportDisplay { r: self, probe_timeout }
    }
}

pub(crate) struct ReportDisplay<'a> {
    pub(crate) r: &'a Report,
    pub(crate) probe_timeout: Duration,
}

impl fmt::Display for ReportDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.r;
        if !r.steps.is_empty() {
            writeln!(f, "ramp:")?;
            for (i, s) in r.steps.iter().enumerate() {
                writeln!(
                    f,
                    "  step {:>2}: offered {:>7.0} ev/s, accepted {:>7.0} ev/s, shed {:>6.0} ev/s, progress lag {} → {} ({})",
                    i + 1,
                    s.offered,
                    s.accepted,
                    s.shed,
                    s.lag_mid,
                    s.lag_end,
                    if s.held { "held" } else { "not sustained" }
                )?;
            }
        }
        match r.max_rate {
            Some(m) => writeln!(f, "max sustainable rate: {m:.0} events/s")?,
            None if r.steps.is_empty() => writeln!(f, "max sustainable rate: not measured (rate given)")?,
            None => writeln!(f, "max sustainable rate: no step held")?,
        }
        writeln!(
            f,
            "steady rate: {:.0} events/s offered, {:.0} accepted, {} samples",
            r.steady_rate,
            r.steady_accepted_rate,
            r.samples.len()
        )?;
        let (p50, p95, p99) = r.freshness(self.probe_timeout);
        writeln!(
            f,
            "freshness (202 → visible in /progress): p50 {p50:.0} ms, p95 {p95:.0} ms, p99 {p99:.0} ms over {} probes ({} late, {} skipped)",
            r.freshness_ms.len() + r.probes_late as usize,
            r.probes_late,
            r.probes_skipped
        )?;
        let (end, max) = r.lag();
        writeln!(f, "progress lag: max {max} records, at the end {end} records")?;
        for (name, first, last, max, growth) in r.rss() {
            writeln!(
                f,
                "RSS {name:<12} first {:>7.1} MiB, last {:>7.1} MiB, max {:>7.1} MiB, growth {growth:+.1} %",
                first as f64 / 1024.0,
                last as f64 / 1024.0,
                max as f64 / 1024.0
            )?;
        }
        writeln!(
            f,
            "{} events accepted ({} cohort rounds), {} retried POSTs, caught up {:.1} s after the load stopped",
            r.events,
            r.rounds,
            r.retries,
            r.catch_up.as_secs_f64()
        )?;
        writeln!(f, "{:<42} {:>8} {:>6} {:>8} {:>6}", "endpoint", "checked", "lost", "doubled", "wrong")?;
        for t in &r.tallies {
            writeln!(f, "{:<42} {:>8} {:>6} {:>8} {:>6}", t.endpoint, t.checked, t.lost, t.doubled, t.wrong)?;
            for e in &t.examples {
                writeln!(f, "    {e}")?;
            }
        }
        write!(f, "goals:")?;
        for (goal, held) in r.goals(self.probe_timeout) {
            write!(f, "\n  [{}] {goal}", if held { "ok" } else { "FAILED" })?;
        }
        Ok(())
    }
}
