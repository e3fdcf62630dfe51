//! Randomness and the rhythm of a learner's week: seeds, days, hours, ids.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc, Weekday};
use rand::Rng;
use rand::rngs::StdRng;

/// Mixes two 64-bit values into one (splitmix64 finaliser), to derive independent seeds.
pub(crate) fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_add(a << 6).wrapping_add(a >> 2);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a string, to fold a name into a seed.
pub(crate) fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// How much study happens on a weekday, relative to the busiest day (Tuesday).
pub(crate) fn day_weight(day: Weekday) -> f64 {
    match day {
        Weekday::Mon => 0.95,
        Weekday::Tue => 1.0,
        Weekday::Wed => 0.97,
        Weekday::Thu => 0.9,
        Weekday::Fri => 0.72,
        Weekday::Sat => 0.4,
        Weekday::Sun => 0.5,
    }
}

/// Relative activity by UTC hour: quiet nights, a morning and lunch bump, an evening peak.
const HOUR_WEIGHTS: [f64; 24] = [
    0.25, 0.12, 0.06, 0.04, 0.04, 0.08, 0.25, 0.55, 0.85, 1.0, 1.0, 1.05, 1.3, 1.2, 1.0, 0.95, 0.95, 1.05, 1.35, 1.75, 1.95, 1.65, 1.05,
    0.55,
];

/// A uniform number in `[0, 1)`.
pub(crate) fn unit(rng: &mut StdRng) -> f64 {
    rng.random::<f64>()
}

/// A normally distributed number (Box–Muller).
pub(crate) fn normal(rng: &mut StdRng, mean: f64, sd: f64) -> f64 {
    let u1 = unit(rng).max(f64::MIN_POSITIVE);
    let u2 = unit(rng);
    mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// An exponentially distributed number with the given mean.
pub(crate) fn exponential(rng: &mut StdRng, mean: f64) -> f64 {
    -mean * (1.0 - unit(rng)).ln()
}

/// Picks an index with probability proportional to its weight (weights are positive).
pub(crate) fn weighted(rng: &mut StdRng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = unit(rng) * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len().saturating_sub(1)
}

/// Seconds as a chrono duration (millisecond precision).
pub(crate) fn secs(s: f64) -> Duration {
    Duration::milliseconds((s * 1000.0).round() as i64)
}

/// A time on `day` at an hour drawn from the daily rhythm.
pub(crate) fn at_time_of_day(rng: &mut StdRng, day: NaiveDate) -> DateTime<Utc> {
    let hour = weighted(rng, &HOUR_WEIGHTS) as i64;
    let second = rng.random_range(0..3600i64);
    let midnight = day.and_hms_opt(0, 0, 0).map(|t| Utc.from_utc_datetime(&t)).unwrap_or_default();
    midnight + Duration::seconds(hour * 3600 + second) + Duration::milliseconds(rng.random_range(0..1000))
}

/// The time of the next study session after `after`: a day about `mean_gap_days` later
/// (rejection-sampled so that weekends are quieter), at an hour of the daily rhythm.
pub(crate) fn next_session(rng: &mut StdRng, after: DateTime<Utc>, mean_gap_days: f64) -> DateTime<Utc> {
    for _ in 0..64 {
        let gap = exponential(rng, mean_gap_days);
        let day = (after + secs(gap * 86_400.0)).date_naive();
        if unit(rng) >= day_weight(day.weekday()) {
            continue;
        }
        let t = at_time_of_day(rng, day);
        if t > after + Duration::minutes(20) {
            return t;
        }
    }
    after + Duration::days(1)
}

/// A UUIDv7 for an event at `time` whose random part comes from `rng` (deterministic).
pub(crate) fn event_id(rng: &mut StdRng, time: DateTime<Utc>) -> String {
    let bytes: [u8; 10] = rng.random();
    let ms = u64::try_from(time.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(ms, &bytes).into_uuid().to_string()
}

/// A short random hex token, for provider-style ids such as payment ids.
pub(crate) fn token(rng: &mut StdRng) -> String {
    format!("{:016x}", rng.random::<u64>())
}

/// `time` truncated to whole milliseconds, as events carry it.
pub(crate) fn millis(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(time.timestamp_millis()).unwrap_or(time)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn sessions_are_quieter_on_weekends() {
        let mut rng = StdRng::seed_from_u64(7);
        let start = Utc.with_ymd_and_hms(2026, 1, 5, 0, 0, 0).single().unwrap_or_default();
        let mut by_day = [0u32; 7];
        for i in 0..20_000 {
            let t = next_session(&mut rng, start + Duration::minutes(i * 37), 2.0);
            by_day[t.weekday().num_days_from_monday() as usize] += 1;
        }
        let weekday_mean = f64::from(by_day[..5].iter().sum::<u32>()) / 5.0;
        let weekend_mean = f64::from(by_day[5..].iter().sum::<u32>()) / 2.0;
        assert!(weekend_mean < 0.75 * weekday_mean, "{by_day:?}");
    }

    #[test]
    fn mixing_separates_neighbouring_seeds() {
        assert_ne!(mix(1, 2), mix(2, 1));
        assert_ne!(mix(0, 0), mix(0, 1));
    }
}
