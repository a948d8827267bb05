//! The HTTP step variables: where steps without a native handler are sent, with which
//! credentials and signature, and how large an answer may be. All of them are optional; HTTP
//! dispatch is off unless `STEP_HANDLER_URL`, `SUPABASE_URL` or `STEP_ROUTES` routes somewhere.

use std::collections::{BTreeMap, BTreeSet};

use reqwest::Url;

use super::parse::{ConfigError, parse_int};
use super::{RawEnv, Secret, redact_url, redact_url_path};
use crate::http_step::route::{Routes, UrlTemplate, check_step_name, http_url};

/// Default `STEP_RESPONSE_MAX_BYTES`: 1 MiB is far above a typical step output and far below
/// what would strain the persist batch, which holds outputs in memory.
const DEFAULT_RESPONSE_MAX_BYTES: u64 = 1 << 20;
/// Outputs are written to a `jsonb` column in batches; 64 MiB per answer is the most we accept.
const MAX_RESPONSE_MAX_BYTES: u64 = 64 << 20;
/// Most `METRICS_STEPS` names: each is a label value of a few histograms (a dozen series each).
pub const MAX_METRICS_STEPS: usize = 500;
/// A shorter signing secret can be brute-forced offline from a single signed request.
const MIN_SIGNING_SECRET_LEN: usize = 16;

#[derive(Debug, Clone)]
pub struct HttpSteps {
    /// `STEP_HANDLER_URL` as configured.
    pub handler_url: Option<UrlTemplate>,
    /// `SUPABASE_URL`: the routing target when `STEP_HANDLER_URL` is unset.
    pub supabase_url: Option<Url>,
    /// Sent to the `SUPABASE_URL` origin only, never to another host.
    pub supabase_key: Option<Secret>,
    /// `STEP_ROUTES`: per-step URLs that win over the template.
    pub routes: BTreeMap<String, Url>,
    /// `STEP_HANDLER_TOKEN`: the bearer token for every endpoint outside the Supabase origin.
    pub token: Option<Secret>,
    pub signing_secret: Option<Secret>,
    pub response_max_bytes: usize,
    /// `METRICS_STEPS`: step names routed by the template that keep a metric label of their own.
    pub metrics_steps: BTreeSet<String>,
}

impl HttpSteps {
    /// The effective routes: `STEP_ROUTES`, then `STEP_HANDLER_URL`, else the Supabase functions.
    pub fn routes(&self) -> Routes {
        Routes {
            template: self
                .handler_url
                .clone()
                .or_else(|| self.supabase_url.as_ref().map(UrlTemplate::for_supabase)),
            overrides: self.routes.clone(),
        }
    }

    /// Whether `step` is known in advance (a `STEP_ROUTES` key or in `METRICS_STEPS`), so it may
    /// be a metric label: names a producer invents, which the template routes too, may not.
    pub fn is_known_step(&self, step: &str) -> bool {
        self.routes.contains_key(step) || self.metrics_steps.contains(step)
    }

    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let secret = |s: &Option<Secret>| s.as_ref().map(Secret::redacted).unwrap_or_default();
        let routes: Vec<String> = self
            .routes
            .iter()
            .map(|(step, url)| format!("{step}={}", redact_url_path(url.as_str())))
            .collect();
        vec![
            (
                "STEP_HANDLER_URL",
                self.handler_url
                    .as_ref()
                    .map(|t| redact_url(t.as_str()))
                    .unwrap_or_default(),
            ),
            ("STEP_ROUTES", routes.join(",")),
            ("STEP_HANDLER_TOKEN", secret(&self.token)),
            (
                "SUPABASE_URL",
                self.supabase_url.as_ref().map(Url::to_string).unwrap_or_default(),
            ),
            ("SUPABASE_SERVICE_ROLE_KEY", secret(&self.supabase_key)),
            ("STEP_SIGNING_SECRET", secret(&self.signing_secret)),
            ("STEP_RESPONSE_MAX_BYTES", self.response_max_bytes.to_string()),
            (
                "METRICS_STEPS",
                self.metrics_steps.iter().cloned().collect::<Vec<_>>().join(","),
            ),
        ]
    }
}

pub(super) fn parse(raw: &RawEnv) -> Result<HttpSteps, ConfigError> {
    let handler_url = raw
        .step_handler_url
        .as_deref()
        .map(|v| {
            UrlTemplate::parse(v).map_err(|expected| ConfigError::new("STEP_HANDLER_URL", expected, &redact_url(v)))
        })
        .transpose()?;
    let supabase_url = raw
        .supabase_url
        .as_deref()
        .map(|v| {
            http_url(v)
                .filter(|u| u.query().is_none() && u.fragment().is_none())
                .ok_or_else(|| {
                    ConfigError::new(
                        "SUPABASE_URL",
                        "the project URL, e.g. https://abcdefgh.supabase.co",
                        &redact_url(v),
                    )
                })
        })
        .transpose()?;
    let supabase_key = token("SUPABASE_SERVICE_ROLE_KEY", &raw.supabase_service_role_key)?;
    if supabase_url.is_some() && handler_url.is_none() && supabase_key.is_none() {
        return Err(ConfigError::new(
            "SUPABASE_SERVICE_ROLE_KEY",
            "the project's service role key (required when steps go to SUPABASE_URL)",
            "",
        ));
    }
    let signing_secret = raw.step_signing_secret.clone().map(Secret::new);
    if let Some(secret) = &signing_secret
        && secret.expose().len() < MIN_SIGNING_SECRET_LEN
    {
        return Err(ConfigError::new(
            "STEP_SIGNING_SECRET",
            &format!("a random secret of at least {MIN_SIGNING_SECRET_LEN} characters"),
            "********",
        ));
    }
    Ok(HttpSteps {
        handler_url,
        supabase_url,
        supabase_key,
        routes: parse_routes(raw.step_routes.as_deref())?,
        token: token("STEP_HANDLER_TOKEN", &raw.step_handler_token)?,
        signing_secret,
        response_max_bytes: parse_int(
            "STEP_RESPONSE_MAX_BYTES",
            raw.step_response_max_bytes.as_deref(),
            DEFAULT_RESPONSE_MAX_BYTES,
            1,
            MAX_RESPONSE_MAX_BYTES,
        )? as usize,
        metrics_steps: parse_metrics_steps(raw.metrics_steps.as_deref())?,
    })
}

/// `METRICS_STEPS`: comma-separated step names (the HTTP step alphabet), at most
/// [`MAX_METRICS_STEPS`], since each one is a label value of several metrics.
fn parse_metrics_steps(raw: Option<&str>) -> Result<BTreeSet<String>, ConfigError> {
    let names: BTreeSet<String> = raw
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    let expected = format!("comma-separated step names, at most {MAX_METRICS_STEPS}");
    if let Some(bad) = names.iter().find(|n| check_step_name(n).is_err()) {
        return Err(ConfigError::new("METRICS_STEPS", &expected, bad));
    }
    if names.len() > MAX_METRICS_STEPS {
        return Err(ConfigError::new(
            "METRICS_STEPS",
            &expected,
            &format!("{} names", names.len()),
        ));
    }
    Ok(names)
}

/// A bearer token: it goes into an `Authorization` header, so only visible ASCII will do.
fn token(name: &'static str, raw: &Option<String>) -> Result<Option<Secret>, ConfigError> {
    match raw.as_deref().map(str::trim) {
        None => Ok(None),
        Some(t) if t.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(Secret::new(t))),
        Some(_) => Err(ConfigError::new(
            name,
            "a token of visible ASCII characters without spaces",
            "********",
        )),
    }
}

/// `STEP_ROUTES`: comma-separated `step=URL` pairs. Step names follow the HTTP step alphabet,
/// URLs are absolute http(s) URLs used as they are (no `{step}` substitution).
fn parse_routes(raw: Option<&str>) -> Result<BTreeMap<String, Url>, ConfigError> {
    const EXPECTED: &str = "comma-separated step=URL pairs, e.g. resize=https://img.internal/run,email=https://mail.internal/send (step names of A-Z a-z 0-9 . _ -)";
    let mut routes = BTreeMap::new();
    for entry in raw
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let (step, url) = entry.split_once('=').unwrap_or((entry, ""));
        // The URL part may carry credentials; the step name helps find the entry.
        let shown = match url {
            "" => entry.to_owned(),
            url => format!("{step}={}", redact_url_path(url)),
        };
        let bad = || ConfigError::new("STEP_ROUTES", EXPECTED, &shown);
        let step = step.trim();
        check_step_name(step).map_err(|_| bad())?;
        let url = http_url(url).ok_or_else(bad)?;
        if routes.insert(step.to_owned(), url).is_some() {
            return Err(ConfigError::new("STEP_ROUTES", "at most one URL per step name", step));
        }
    }
    Ok(routes)
}
