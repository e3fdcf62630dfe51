//! Tenants and their courses: modules, lessons, videos, quizzes, prices and versions.

use chrono::{DateTime, Duration, Utc};
use lms_events::{CoursePublished, CourseRetired, Event, EventData, Module, SPEC_VERSION};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::rhythm::{event_id, millis, mix, unit};

/// Built-in tenant names, used in order (then `tenant-<n>`).
const TENANT_NAMES: [&str; 8] = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka"];

/// Tenant currencies, in turn.
const CURRENCIES: [&str; 3] = ["EUR", "USD", "GBP"];

/// Course ids and titles, used in order (then with a numeric suffix).
const COURSES: [(&str, &str); 16] = [
    ("rust-fundamentals", "Rust Fundamentals"),
    ("data-engineering-kafka", "Data Engineering with Kafka"),
    ("intro-statistics", "Introduction to Statistics"),
    ("python-for-analysts", "Python for Analysts"),
    ("ux-research", "UX Research Methods"),
    ("cloud-architecture", "Cloud Architecture"),
    ("leadership-101", "Leadership 101"),
    ("spanish-a1", "Spanish A1"),
    ("machine-learning-basics", "Machine Learning Basics"),
    ("sql-deep-dive", "SQL Deep Dive"),
    ("product-management", "Product Management"),
    ("public-speaking", "Public Speaking"),
    ("accounting-essentials", "Accounting Essentials"),
    ("web-security", "Web Security"),
    ("digital-marketing", "Digital Marketing"),
    ("project-management", "Project Management"),
];

/// Returns the name of the `index`-th built-in tenant (`acme`, `globex`, … then `tenant-9`).
pub fn tenant_name(index: usize) -> String {
    TENANT_NAMES.get(index).map_or_else(|| format!("tenant-{}", index + 1), |n| (*n).to_owned())
}

/// A tenant of the cohort and its catalog.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tenant {
    /// The tenant name, the `tenant` of its events.
    pub name: String,
    /// The currency of the tenant's prices and payments.
    pub currency: String,
    /// The tenant's courses.
    pub courses: Vec<Course>,
}

/// One lesson of a course.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lesson {
    /// The lesson id, unique within the course.
    pub lesson_id: String,
    /// The index of the module the lesson belongs to.
    pub module: usize,
    /// The length of the lesson's video in seconds, for lessons with a video.
    pub video_s: Option<f64>,
}

/// One published version of a course: the first `lessons` lessons of [`Course::lessons`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CourseVersion {
    /// The version number, from 1.
    pub version: u32,
    /// When it was published.
    pub published_at: DateTime<Utc>,
    /// How many lessons (a prefix of the course's lessons) the version has.
    pub lessons: usize,
}

/// A course of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Course {
    /// The course id.
    pub course_id: String,
    /// The course title.
    pub title: String,
    /// The price in minor units of the tenant's currency; 0 for a free course.
    pub price_minor: i64,
    /// The highest score of the course's quizzes.
    pub max_score: f64,
    /// The lessons of the latest version, in order; earlier versions have a prefix of them.
    pub lessons: Vec<Lesson>,
    /// The published versions, in order of publication.
    pub versions: Vec<CourseVersion>,
    /// When the course was retired (it takes no new enrollments after), if it was.
    pub retired_at: Option<DateTime<Utc>>,
    /// How popular the course is relative to the tenant's others.
    pub popularity: f64,
}

impl Course {
    /// The number of lessons of the version current at `time` (the first version before it
    /// was published).
    pub fn lessons_at(&self, time: DateTime<Utc>) -> usize {
        self.versions.iter().rev().find(|v| v.published_at <= time).or(self.versions.first()).map_or(0, |v| v.lessons)
    }

    /// The id of the quiz that ends module `module` (0-based).
    pub fn assessment_id(&self, module: usize) -> String {
        format!("{}-quiz-{}", self.course_id, module + 1)
    }

    /// The ids of every quiz of the course, one per module.
    pub fn assessment_ids(&self) -> Vec<String> {
        let modules = self.lessons.last().map_or(0, |l| l.module + 1);
        (0..modules).map(|m| self.assessment_id(m)).collect()
    }

    /// Whether lesson `index` ends its module in a version of `count` lessons.
    pub(crate) fn ends_module(&self, index: usize, count: usize) -> bool {
        index + 1 == count || self.lessons.get(index + 1).is_some_and(|next| next.module != self.lessons[index].module)
    }

    /// The `course.published` data of a version.
    fn published(&self, version: &CourseVersion) -> CoursePublished {
        let mut modules: Vec<Module> = Vec::new();
        for lesson in &self.lessons[..version.lessons] {
            if modules.len() <= lesson.module {
                modules.push(Module { module_id: format!("{}-m{}", self.course_id, lesson.module + 1), lessons: Vec::new() });
            }
            if let Some(m) = modules.last_mut() {
                m.lessons.push(lesson.lesson_id.clone());
            }
        }
        CoursePublished { course_id: self.course_id.clone(), title: self.title.clone(), version: version.version, modules }
    }
}

/// Builds tenant `index`'s catalog; it depends on the seed and the tenant only.
pub(crate) fn tenant(seed: u64, index: usize, name: String, courses: usize, start: DateTime<Utc>, now: DateTime<Utc>) -> Tenant {
    let mut rng = StdRng::seed_from_u64(mix(mix(seed, 0xCA7A_1065), index as u64));
    let currency = CURRENCIES[index % CURRENCIES.len()].to_owned();
    let period = (now - start).num_seconds().max(1) as f64;
    let courses = (0..courses)
        .map(|c| {
            let (slug, title) = COURSES[c % COURSES.len()];
            let round = c / COURSES.len();
            let (course_id, title) = if round == 0 {
                (slug.to_owned(), title.to_owned())
            } else {
                (format!("{slug}-{}", round + 1), format!("{title} {}", round + 1))
            };
            let modules = rng.random_range(3..=6usize);
            let mut lessons = Vec::new();
            for m in 0..modules {
                for l in 0..rng.random_range(2..=5usize) {
                    let video_s = (unit(&mut rng) < 0.8).then(|| f64::from(rng.random_range(180..=900u32)));
                    lessons.push(Lesson { lesson_id: format!("{course_id}-m{}-l{}", m + 1, l + 1), module: m, video_s });
                }
            }
            let first =
                CourseVersion { version: 1, published_at: millis(start + Duration::minutes(7 + 13 * c as i64)), lessons: lessons.len() };
            let mut versions = vec![first];
            // About a third of the courses get a second version half-way: one more lesson
            // at the end of the last module.
            if unit(&mut rng) < 0.35 {
                let last_module = lessons.last().map_or(0, |l| l.module);
                let n = lessons.iter().filter(|l| l.module == last_module).count();
                lessons.push(Lesson {
                    lesson_id: format!("{course_id}-m{}-l{}", last_module + 1, n + 1),
                    module: last_module,
                    video_s: Some(f64::from(rng.random_range(240..=600u32))),
                });
                let at = start + Duration::seconds((period * (0.4 + 0.2 * unit(&mut rng))) as i64);
                versions.push(CourseVersion { version: 2, published_at: millis(at), lessons: lessons.len() });
            }
            let price_minor = if unit(&mut rng) < 0.3 { 0 } else { i64::from(rng.random_range(19..=149u32)) * 100 - 1 };
            let max_score = [10.0, 20.0, 50.0, 100.0][rng.random_range(0..4usize)];
            // Zipf-like popularity: the first courses are the best sellers.
            let popularity = 1.0 / (c as f64 + 1.5).powf(0.9);
            Course { course_id, title, price_minor, max_score, lessons, versions, retired_at: None, popularity }
        })
        .collect::<Vec<_>>();
    let mut tenant = Tenant { name, currency, courses };
    // With four courses or more the least popular one is retired late in the period.
    if tenant.courses.len() >= 4
        && let Some(last) = tenant.courses.last_mut()
    {
        last.retired_at = Some(millis(start + Duration::seconds((period * 0.8) as i64)));
    }
    tenant
}

/// The catalog events of a tenant, in time order: every version's `course.published` and
/// the retirements.
pub(crate) fn catalog_events(seed: u64, tenant: &Tenant, now: DateTime<Utc>) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(mix(mix(seed, 0x0E7E_4175), hash(&tenant.name)));
    let mut events = Vec::new();
    for course in &tenant.courses {
        for v in &course.versions {
            events.push((v.published_at, EventData::CoursePublished(course.published(v))));
        }
        if let Some(at) = course.retired_at {
            events.push((at, EventData::CourseRetired(CourseRetired { course_id: course.course_id.clone() })));
        }
    }
    events.sort_by_key(|(t, _)| *t);
    events
        .into_iter()
        .filter(|(t, _)| *t <= now)
        .map(|(time, data)| Event {
            specversion: SPEC_VERSION.to_owned(),
            id: event_id(&mut rng, time),
            source: "cms".to_owned(),
            time,
            subject: None,
            tenant: tenant.name.clone(),
            data,
        })
        .collect()
}

fn hash(s: &str) -> u64 {
    crate::rhythm::hash_str(s)
}
