//! Learner preferences (the CONTRACT shape of `GET|PUT /v1/learners/{id}/notification-preferences`),
//! stored in `learner_preferences` (JSON plus the time zone column the achievements
//! processor cuts streak days by), and quiet hours.

use std::collections::HashMap;

use chrono::{DateTime, Days, NaiveTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use lms_state::sql::{CHUNK_ROWS, now_us, values};
use lms_state::{Store, StoreError};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row as _};

/// A learner's notification preferences; absent fields take the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = NotificationPreferences))]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Where e-mails go; no e-mail without it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(format = Email))]
    pub email: Option<String>,
    /// Template locale (`en`, `de`, …); templates fall back to `en`.
    #[serde(default = "default_locale")]
    #[cfg_attr(feature = "openapi", schema(default = "en"))]
    pub locale: String,
    /// IANA time zone of quiet hours, daily digests and streak days.
    #[serde(default = "default_timezone")]
    #[cfg_attr(feature = "openapi", schema(default = "UTC"))]
    pub timezone: String,
    /// Channels on or off.
    #[serde(default)]
    pub channels: Channels,
    /// Categories the learner does not want (transactional ones are sent anyway).
    #[serde(default)]
    pub muted_categories: Vec<String>,
    /// Nothing is delivered in this local period; deliveries wait for its end.
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
    /// Combine notifications into one message per hour or day.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(default = "off"))]
    pub digest: Digest,
}

fn default_locale() -> String {
    "en".to_owned()
}

fn default_timezone() -> String {
    "UTC".to_owned()
}

impl Default for Preferences {
    fn default() -> Self {
        Self {
            email: None,
            locale: default_locale(),
            timezone: default_timezone(),
            channels: Channels::default(),
            muted_categories: Vec::new(),
            quiet_hours: None,
            digest: Digest::Off,
        }
    }
}

/// Channels on or off (all on by default; e-mail needs an address and the webhook a
/// tenant webhook as well).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Channels {
    /// The in-app inbox.
    pub in_app: bool,
    /// E-mail.
    pub email: bool,
    /// The tenant's webhook.
    pub webhook: bool,
}

impl Default for Channels {
    fn default() -> Self {
        Self { in_app: true, email: true, webhook: true }
    }
}

/// A local period, `"22:00"` to `"07:00"` (it may wrap midnight).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Start, `HH:MM` local time.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-2][0-9]:[0-5][0-9]$"))]
    pub start: String,
    /// End, `HH:MM` local time (exclusive).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-2][0-9]:[0-5][0-9]$"))]
    pub end: String,
}

/// Digest preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Digest {
    /// Every notification on its own (throttled).
    #[default]
    Off,
    /// One message per hour.
    Hourly,
    /// One message per local day.
    Daily,
}

fn hhmm(s: &str) -> Option<NaiveTime> {
    if s.len() != 5 {
        return None;
    }
    NaiveTime::parse_from_str(s, "%H:%M").ok()
}

impl Preferences {
    /// The problems of a preferences document sent by a client, as (JSON pointer, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        if let Some(email) = &self.email {
            let ok = email.len() <= 254 && email.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.'));
            if !ok || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
                errors.push(("/email".to_owned(), "must be an e-mail address".to_owned()));
            }
        }
        if self.locale.is_empty()
            || self.locale.len() > 35
            || !self.locale.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push(("/locale".to_owned(), "must be a language tag such as `en` or `de-CH`".to_owned()));
        }
        if self.timezone.parse::<Tz>().is_err() {
            errors.push(("/timezone".to_owned(), "must be an IANA time zone such as `Europe/Berlin`".to_owned()));
        }
        for (i, c) in self.muted_categories.iter().enumerate() {
            if c.is_empty() || c.chars().count() > 128 {
                errors.push((format!("/muted_categories/{i}"), "must have 1 to 128 characters".to_owned()));
            }
        }
        if let Some(q) = &self.quiet_hours {
            for (field, v) in [("start", &q.start), ("end", &q.end)] {
                if hhmm(v).is_none() {
                    errors.push((format!("/quiet_hours/{field}"), "must be a local time `HH:MM`".to_owned()));
                }
            }
        }
        errors
    }

    /// The time zone (UTC when unknown).
    pub fn tz(&self) -> Tz {
        self.timezone.parse().unwrap_or(Tz::UTC)
    }

    /// True when `category` is muted.
    pub fn mutes(&self, category: &str) -> bool {
        self.muted_categories.iter().any(|c| c == category)
    }

    /// When a delivery decided at `now` may happen: `now`, or the end of the quiet
    /// period `now` falls in.
    pub fn deliver_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let Some(q) = &self.quiet_hours else { return now };
        let (Some(start), Some(end)) = (hhmm(&q.start), hhmm(&q.end)) else { return now };
        if start == end {
            return now;
        }
        let tz = self.tz();
        let local = now.with_timezone(&tz);
        let t = local.time();
        let (quiet, end_day) = if start < end {
            (start <= t && t < end, local.date_naive())
        } else if t >= start {
            (true, local.date_naive() + Days::new(1))
        } else {
            (t < end, local.date_naive())
        };
        if !quiet {
            return now;
        }
        let end_local = end_day.and_time(end);
        // In a DST gap the end does not exist locally: an hour later does.
        let resolved = tz
            .from_local_datetime(&end_local)
            .earliest()
            .or_else(|| tz.from_local_datetime(&(end_local + chrono::Duration::hours(1))).earliest());
        resolved.map_or(now, |t| t.with_timezone(&Utc).max(now))
    }
}

/// The preferences of these learners of a tenant (defaults for those without a row),
/// inside the caller's transaction.
pub async fn load(conn: &mut AnyConnection, learners: &[(String, String)]) -> Result<HashMap<(String, String), Preferences>, StoreError> {
    let mut out = HashMap::new();
    // 2000 learners (4000 parameters) per statement: one round trip for a whole batch.
    for chunk in learners.chunks(CHUNK_ROWS * 4) {
        let sql = format!(
            "SELECT tenant, learner_id, preferences FROM learner_preferences WHERE (tenant, learner_id) IN (VALUES {})",
            values(chunk.len(), 2, 1)
        );
        let mut q = sqlx::query(&sql);
        for (t, l) in chunk {
            q = q.bind(t.as_str()).bind(l.as_str());
        }
        for row in q.fetch_all(&mut *conn).await? {
            let json: String = row.try_get(2)?;
            // A row written by another version or by hand that does not parse counts as
            // the defaults rather than stopping the learner's notifications.
            let prefs = serde_json::from_str(&json).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "unreadable notification preferences; using the defaults");
                Preferences::default()
            });
            out.insert((row.try_get(0)?, row.try_get(1)?), prefs);
        }
    }
    Ok(out)
}

/// `GET …/notification-preferences`: the stored preferences or the defaults.
pub async fn read(store: &Store, tenant: &str, learner: &str) -> Result<Preferences, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let key = (tenant.to_owned(), learner.to_owned());
    Ok(load(&mut conn, std::slice::from_ref(&key)).await?.remove(&key).unwrap_or_default())
}

/// `PUT …/notification-preferences`: stores validated preferences (and the time zone the
/// achievements processor reads).
/// Writes a learner's preferences, unless the learner is erased (`Ok(false)`, nothing
/// written): under the erasure lock, so an erasure at the same moment either removes these
/// rows or is seen here.
pub async fn write(store: &Store, tenant: &str, learner: &str, prefs: &Preferences) -> Result<bool, StoreError> {
    let json = serde_json::to_string(prefs).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut tx = store.begin().await?;
    lms_state::erasure::guard(&mut tx, store.backend()).await?;
    if !lms_state::erasure::erased(&mut tx, [(tenant, learner)]).await?.is_empty() {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO learner_preferences (tenant, learner_id, timezone, preferences, updated_at_us) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (tenant, learner_id) DO UPDATE SET timezone = excluded.timezone, preferences = excluded.preferences, \
         updated_at_us = excluded.updated_at_us",
    )
    .bind(tenant)
    .bind(learner)
    .bind(prefs.timezone.as_str())
    .bind(json)
    .bind(now_us())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn quiet(tz: &str, start: &str, end: &str) -> Preferences {
        Preferences {
            timezone: tz.to_owned(),
            quiet_hours: Some(QuietHours { start: start.to_owned(), end: end.to_owned() }),
            ..Preferences::default()
        }
    }

    #[test]
    fn quiet_hours_defer_to_their_local_end() {
        let p = quiet("Europe/Berlin", "22:00", "07:00");
        // (now, expected delivery), Berlin is UTC+1 in November.
        let cases = [
            ("2026-11-20T20:30:00Z", "unused"),               // 21:30 local: before the quiet period
            ("2026-11-20T21:30:00Z", "2026-11-21T06:00:00Z"), // 22:30 local: until 07:00 next day
            ("2026-11-21T02:00:00Z", "2026-11-21T06:00:00Z"), // 03:00 local: until 07:00 same day
            ("2026-11-21T06:00:00Z", "2026-11-21T06:00:00Z"), // 07:00 local: the end is not quiet
            ("2026-11-21T12:00:00Z", "2026-11-21T12:00:00Z"),
        ];
        for (now, want) in &cases[1..] {
            assert_eq!(p.deliver_at(at(now)), at(want), "at {now}");
        }
        assert_eq!(p.deliver_at(at(cases[0].0)), at(cases[0].0), "21:30 local is before the quiet period");
        let day = quiet("UTC", "12:00", "13:30");
        assert_eq!(day.deliver_at(at("2026-11-21T12:10:00Z")), at("2026-11-21T13:30:00Z"));
        assert_eq!(day.deliver_at(at("2026-11-21T13:31:00Z")), at("2026-11-21T13:31:00Z"));
        assert_eq!(Preferences::default().deliver_at(at("2026-11-21T03:00:00Z")), at("2026-11-21T03:00:00Z"));
    }

    #[test]
    fn the_contract_shape_round_trips_and_validates() {
        let json = r#"{"email":"ada@example.org","locale":"de","timezone":"Europe/Berlin",
            "channels":{"in_app":true,"email":false,"webhook":true},"muted_categories":["achievement"],
            "quiet_hours":{"start":"22:00","end":"07:00"},"digest":"daily"}"#;
        let p: Preferences = serde_json::from_str(json).unwrap();
        assert!(p.validate().is_empty());
        assert_eq!(p.digest, Digest::Daily);
        assert!(p.mutes("achievement"));
        let back: Preferences = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        let bad = Preferences {
            email: Some("nope".into()),
            timezone: "Mars/Olympus".into(),
            quiet_hours: Some(QuietHours { start: "25:00".into(), end: "7:00".into() }),
            ..Preferences::default()
        };
        let paths: Vec<String> = bad.validate().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["/email", "/timezone", "/quiet_hours/start", "/quiet_hours/end"]);
        let defaults: Preferences = serde_json::from_str("{}").unwrap();
        assert_eq!(defaults, Preferences::default());
    }
}
