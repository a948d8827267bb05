//! Where an HTTP step goes: the rule that makes a step name safe to put in a URL, the `{step}`
//! URL template, and per-step overrides.
//!
//! A job only ever chooses a *name*. The URL is built from configuration, the name is checked
//! against a small alphabet first, and the built URL must keep the template's origin, so a
//! payload cannot reach a host, port or path prefix the operator did not configure.

use std::collections::BTreeMap;

use reqwest::Url;

use crate::job::MAX_STEP_LEN;

/// The placeholder a URL template carries for the step name.
pub const PLACEHOLDER: &str = "{step}";

/// Why a step name cannot be sent over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step name {name:?} cannot be sent over HTTP: {reason}")]
pub struct InvalidStepName {
    pub name: String,
    pub reason: &'static str,
}

/// Checks a step name against the HTTP step alphabet: 1 to 200 characters of `A-Z a-z 0-9 . _ -`,
/// not starting with `.` and without `..`.
///
/// Those characters are all URL-unreserved, so the name is one path segment exactly as written:
/// it cannot contain `/`, `?`, `#`, `%`, `@` or `:` to leave its segment or change the host, and
/// it cannot be or contain a `.`/`..` segment that walks up the path once URL-normalised.
pub fn check_step_name(name: &str) -> Result<(), InvalidStepName> {
    let invalid = |reason| {
        Err(InvalidStepName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > MAX_STEP_LEN {
        return invalid("it must be 1 to 200 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("only A-Z, a-z, 0-9, `.`, `_` and `-` are allowed");
    }
    if name.starts_with('.') {
        return invalid("it must not start with `.`");
    }
    if name.contains("..") {
        return invalid("it must not contain `..`");
    }
    Ok(())
}

/// A URL with `{step}` in its path (or query), such as `https://app.internal/steps/{step}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    raw: String,
    /// `scheme://host:port` of the template: every URL built from it must have this origin.
    origin: String,
}

impl UrlTemplate {
    /// Validates a template; the error is the form it should have had.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        const EXPECTED: &str = "an http(s) URL with {step} in its path, e.g. https://app.internal/steps/{step}";
        let raw = raw.trim();
        let Some(first) = raw.find(PLACEHOLDER) else {
            return Err(EXPECTED);
        };
        // The placeholder must come after the authority: `{step}` in the host would let a job
        // choose which machine is called.
        let authority_end = raw.find("://").and_then(|s| raw[s + 3..].find('/').map(|i| s + 3 + i));
        if authority_end.is_none_or(|end| first < end) {
            return Err(EXPECTED);
        }
        let probe = http_url(&raw.replace(PLACEHOLDER, "step")).ok_or(EXPECTED)?;
        Ok(UrlTemplate {
            raw: raw.to_owned(),
            origin: probe.origin().ascii_serialization(),
        })
    }

    /// The template for a Supabase project: its Edge Functions live at `/functions/v1/{name}`.
    pub fn for_supabase(project: &Url) -> Self {
        let base = project.as_str().trim_end_matches('/');
        UrlTemplate {
            raw: format!("{base}/functions/v1/{PLACEHOLDER}"),
            origin: project.origin().ascii_serialization(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The URL for a step name that passed [`check_step_name`].
    fn url_for(&self, step: &str) -> Option<Url> {
        Url::parse(&self.raw.replace(PLACEHOLDER, step))
            .ok()
            .filter(|url| url.origin().ascii_serialization() == self.origin)
    }
}

/// Parses an absolute `http://` or `https://` URL with a host.
pub fn http_url(raw: &str) -> Option<Url> {
    Url::parse(raw.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// Why a step has no URL. Both are permanent: the same name will fail the same way next time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    InvalidName(#[from] InvalidStepName),
    #[error("unknown step `{0}`: it has no native handler, no STEP_ROUTES entry and no URL template to go to")]
    NoRoute(String),
}

/// Step name → URL: a `STEP_ROUTES` entry first, else the URL template.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    pub template: Option<UrlTemplate>,
    pub overrides: BTreeMap<String, Url>,
}

impl Routes {
    pub fn is_empty(&self) -> bool {
        self.template.is_none() && self.overrides.is_empty()
    }

    pub fn resolve(&self, step: &str) -> Result<Url, RouteError> {
        check_step_name(step)?;
        if let Some(url) = self.overrides.get(step) {
            return Ok(url.clone());
        }
        self.template
            .as_ref()
            .and_then(|t| t.url_for(step))
            .ok_or_else(|| RouteError::NoRoute(step.to_owned()))
    }
}
