//! Templates (minijinja) per tenant, kind and locale: a title and a body each.
//!
//! A set is one YAML file per tenant and locale, `<tenant>/<locale>.yaml`, mapping each
//! kind (`achievement_unlocked`, `digest`, …) to `{title, body}`. The shipped defaults
//! (`config/templates/default`) are the tenant `default`. Lookup falls back tenant →
//! default, then locale → `en`: (tenant, locale), (default, locale), (tenant, en),
//! (default, en).
//!
//! A template that does not parse, or that uses a variable the event does not have
//! (undefined variables are errors), fails the render with a reason; the processor
//! dead-letters the event with it. Loading never fails on a broken template: the error
//! is kept and reported when the template is used.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use minijinja::{Environment, UndefinedBehavior};
use serde::Deserialize;

/// The shipped templates: (locale, YAML).
pub const DEFAULTS: &[(&str, &str)] =
    &[("en", include_str!("../../../config/templates/default/en.yaml")), ("de", include_str!("../../../config/templates/default/de.yaml"))];

/// The tenant whose templates apply where a tenant has none.
pub const DEFAULT_TENANT: &str = "default";

/// Why a notification could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// No set has a template for the kind.
    #[error("no template for {kind:?} (tenant {tenant:?}, locale {locale:?}, nor their fallbacks)")]
    Missing {
        /// Tenant.
        tenant: String,
        /// Kind.
        kind: String,
        /// Locale.
        locale: String,
    },
    /// The template does not parse or failed to render.
    #[error("template {name}: {reason}")]
    Broken {
        /// `<tenant>/<locale>/<kind>.<part>`.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why the template directory could not be read.
#[derive(Debug, thiserror::Error)]
#[error("templates directory {path}: {source}")]
pub struct LoadError {
    path: String,
    #[source]
    source: std::io::Error,
}

#[derive(Deserialize)]
struct Entry {
    title: String,
    body: String,
}

/// Every template set, compiled.
pub struct Templates {
    env: Environment<'static>,
    /// Names of templates that failed to compile, with why.
    broken: HashMap<String, String>,
    /// Sets whose file does not parse, with why: every kind of them fails.
    broken_sets: HashMap<(String, String), String>,
    /// (tenant, locale, kind) present.
    present: HashSet<(String, String, String)>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates").field("templates", &self.present.len()).finish_non_exhaustive()
    }
}

/// A rendered notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Title (the e-mail subject).
    pub title: String,
    /// Body.
    pub body: String,
}

impl Templates {
    /// The shipped defaults plus `sets` of (tenant, locale, YAML).
    pub fn from_sets<'a>(sets: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> Templates {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(false);
        let mut t = Templates { env, broken: HashMap::new(), broken_sets: HashMap::new(), present: HashSet::new() };
        for (locale, yaml) in DEFAULTS {
            t.add_set(DEFAULT_TENANT, locale, yaml);
        }
        for (tenant, locale, yaml) in sets {
            t.add_set(tenant, locale, yaml);
        }
        t
    }

    /// The shipped defaults plus the sets of `dir` (`<dir>/<tenant>/<locale>.yaml`).
    pub fn load(dir: Option<&Path>) -> Result<Templates, LoadError> {
        let mut sets = Vec::new();
        if let Some(dir) = dir {
            let err = |path: &Path| {
                let path = path.display().to_string();
                move |source| LoadError { path, source }
            };
            for tenant in std::fs::read_dir(dir).map_err(err(dir))? {
                let tenant = tenant.map_err(err(dir))?;
                if !tenant.file_type().map_err(err(&tenant.path()))?.is_dir() {
                    continue;
                }
                for file in std::fs::read_dir(tenant.path()).map_err(err(&tenant.path()))? {
                    let path = file.map_err(err(&tenant.path()))?.path();
                    if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                        continue;
                    }
                    let Some(locale) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
                    let yaml = std::fs::read_to_string(&path).map_err(err(&path))?;
                    sets.push((tenant.file_name().to_string_lossy().into_owned(), locale, yaml));
                }
            }
        }
        Ok(Templates::from_sets(sets.iter().map(|(t, l, y)| (t.as_str(), l.as_str(), y.as_str()))))
    }

    fn add_set(&mut self, tenant: &str, locale: &str, yaml: &str) {
        let entries: HashMap<String, Entry> = match serde_yaml::from_str(yaml) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(tenant, locale, error = %e, "a template set does not parse; its notifications will be dead-lettered");
                self.broken_sets.insert((tenant.to_owned(), locale.to_owned()), format!("{tenant}/{locale}.yaml: {e}"));
                return;
            }
        };
        for (kind, entry) in entries {
            for (part, source) in [("title", entry.title), ("body", entry.body)] {
                let name = format!("{tenant}/{locale}/{kind}.{part}");
                if let Err(e) = self.env.add_template_owned(name.clone(), source) {
                    tracing::warn!(template = %name, error = %e, "a template does not parse; its notifications will be dead-lettered");
                    self.broken.insert(name, e.to_string());
                }
            }
            self.present.insert((tenant.to_owned(), locale.to_owned(), kind));
        }
    }

    /// Renders `kind` for a learner of `tenant` in `locale` with `vars`.
    pub fn render(&self, tenant: &str, locale: &str, kind: &str, vars: &serde_json::Value) -> Result<Rendered, TemplateError> {
        let candidates = [(tenant, locale), (DEFAULT_TENANT, locale), (tenant, "en"), (DEFAULT_TENANT, "en")];
        for (t, l) in candidates {
            if let Some(reason) = self.broken_sets.get(&(t.to_owned(), l.to_owned())) {
                return Err(TemplateError::Broken { name: format!("{t}/{l}/{kind}"), reason: reason.clone() });
            }
            if !self.present.contains(&(t.to_owned(), l.to_owned(), kind.to_owned())) {
                continue;
            }
            let part = |part: &str| -> Result<String, TemplateError> {
                let name = format!("{t}/{l}/{kind}.{part}");
                if let Some(reason) = self.broken.get(&name) {
                    return Err(TemplateError::Broken { name, reason: reason.clone() });
                }
                let broken = |e: minijinja::Error| TemplateError::Broken { name: name.clone(), reason: e.to_string() };
                self.env.get_template(&name).map_err(broken)?.render(vars).map_err(broken)
            };
            let title = part("title")?;
            return Ok(Rendered { title: title.trim().replace(['\r', '\n'], " "), body: part("body")? });
        }
        Err(TemplateError::Missing { tenant: tenant.to_owned(), kind: kind.to_owned(), locale: locale.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vars() -> serde_json::Value {
        json!({"learner_id": "l1", "title": "First steps", "achievement_id": "first", "course_id": "c1",
               "count": 2, "items": [{"title": "a", "body": "b"}], "course_title": "c1", "milestone": 50,
               "amount": "12.00", "currency": "EUR", "reason": "card declined", "payment_id": "p1", "category": "achievement",
               "source": "self", "completed_at": "2026-11-21T10:00:00Z", "percent_complete": 50.0, "digest_category": null,
               "tenant": "acme"})
    }

    #[test]
    fn every_default_kind_renders_in_every_shipped_locale() {
        let t = Templates::from_sets([]);
        for kind in super::super::KINDS {
            for locale in ["en", "de"] {
                let r = t.render("acme", locale, kind, &vars()).unwrap_or_else(|e| panic!("{kind}/{locale}: {e}"));
                assert!(!r.title.is_empty() && !r.body.is_empty(), "{kind}/{locale}");
            }
        }
        let de = t.render("acme", "de", "achievement_unlocked", &vars()).unwrap();
        let en = t.render("acme", "en", "achievement_unlocked", &vars()).unwrap();
        assert_ne!(de.title, en.title);
        assert_eq!(t.render("acme", "fr", "achievement_unlocked", &vars()).unwrap(), en, "unknown locales fall back to en");
    }

    #[test]
    fn tenants_override_and_fall_back() {
        let t = Templates::from_sets([(
            "acme",
            "en",
            "achievement_unlocked:\n  title: 'Acme: {{ title }}'\n  body: 'Well done, {{ learner_id }}'\n",
        )]);
        let r = t.render("acme", "de", "achievement_unlocked", &vars()).unwrap();
        assert_ne!(r.title, "Acme: First steps", "the default German template beats the tenant's English one");
        let r = t.render("acme", "fr", "achievement_unlocked", &vars()).unwrap();
        assert_eq!(r, Rendered { title: "Acme: First steps".into(), body: "Well done, l1".into() });
        let other = t.render("globex", "en", "achievement_unlocked", &vars()).unwrap();
        assert_ne!(other.title, "Acme: First steps");
    }

    #[test]
    fn broken_templates_fail_with_a_reason_when_used() {
        let t = Templates::from_sets([
            ("bad", "en", "achievement_unlocked:\n  title: '{{ title'\n  body: x\n"),
            ("strict", "en", "achievement_unlocked:\n  title: '{{ no_such_var }}'\n  body: x\n"),
            ("garbled", "en", "[not a map"),
        ]);
        for tenant in ["bad", "strict", "garbled"] {
            let e = t.render(tenant, "en", "achievement_unlocked", &vars()).expect_err(tenant);
            assert!(matches!(e, TemplateError::Broken { .. }), "{tenant}: {e}");
        }
        assert!(t.render("bad", "en", "course_completed", &vars()).is_ok(), "other kinds still render");
        assert!(matches!(t.render("x", "en", "nope", &vars()), Err(TemplateError::Missing { .. })));
    }
}
