//! Secrets that never print: `Debug` and `Display` show a redacted form.

use std::fmt;

/// A secret string (a URL with a password, a key). Read it with [`Secret::expose`] at the one
/// place that needs it.
#[derive(Clone)]
pub struct Secret {
    value: String,
    /// The URL's path and query are secret too (a webhook): only its host may print.
    path_is_secret: bool,
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret {
            value: value.into(),
            path_is_secret: false,
        }
    }

    /// A URL whose path or query carries the credential, such as a Slack webhook.
    pub fn url_with_secret_path(value: impl Into<String>) -> Self {
        Secret {
            value: value.into(),
            path_is_secret: true,
        }
    }

    pub fn expose(&self) -> &str {
        &self.value
    }

    /// For URLs, the URL with its password (or its whole path, for [`Self::url_with_secret_path`])
    /// replaced; otherwise a fixed mask.
    pub fn redacted(&self) -> String {
        match (self.value.contains("://"), self.path_is_secret) {
            (true, true) => redact_url_path(&self.value),
            (true, false) => redact_url(&self.value),
            (false, _) => "********".to_owned(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password (or a lone token) in `scheme://user:password@host/...` with `***`, masks
/// sensitive query parameters such as `password=` and any `#fragment`. A password with `/`, `?`
/// or `#` left unencoded still ends at the last `@`, so it is masked too; text without `://` is
/// masked whole.
pub fn redact_url(url: &str) -> String {
    // A list of URLs (Redis Cluster seeds): each one has its own password.
    if url.contains(',') && url.split(',').all(|u| u.contains("://")) {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return "********".to_owned();
    };
    let (authority, tail) = split_authority(rest);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None if !userinfo.is_empty() => format!("***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let (tail, fragment) = match tail.split_once('#') {
        Some((tail, _)) => (tail, "#***"),
        None => (tail, ""),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let masked: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if is_sensitive_param(k) => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", masked.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}{fragment}")
}

/// For URLs whose path or query is itself the secret (a Slack webhook, an endpoint with a token
/// in its path): the scheme and host only, `https://hooks.slack.com/***`.
pub fn redact_url_path(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "********".to_owned();
    };
    let (authority, tail) = split_authority(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let tail = if tail.is_empty() { "" } else { "/***" };
    format!("{scheme}://{host}{tail}")
}

/// Splits what follows `scheme://` into the authority and the rest. The authority normally ends
/// at the first `/`, `?` or `#`; when that part has no `@` but one comes later, the password held
/// one of those characters unencoded, and the authority runs to the last `@`'s host instead.
fn split_authority(rest: &str) -> (&str, &str) {
    let end_from = |from: usize| rest[from..].find(['/', '?', '#']).map_or(rest.len(), |e| from + e);
    let usual = end_from(0);
    let end = match rest.rfind('@') {
        Some(at) if at > usual && !rest[..usual].contains('@') => end_from(at),
        _ => usual,
    };
    rest.split_at(end)
}

fn is_sensitive_param(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "pass", "token", "secret", "key"]
        .iter()
        .any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_with_unencoded_delimiters_are_masked() {
        for (url, shown) in [
            ("redis://:pa/ss@cache:6379/0", "redis://:***@cache:6379/0"),
            ("postgres://app:p?w#d@db:5432/app", "postgres://app:***@db:5432/app"),
            (
                "postgres://app:p@ss@db/app?sslmode=require",
                "postgres://app:***@db/app?sslmode=require",
            ),
            ("postgres://app:pw@db/app?x=a@b", "postgres://app:***@db/app?x=a@b"),
            ("https://h/x?token=abc#frag", "https://h/x?token=***#***"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert_eq!(redact_url("not a url: hunter2"), "********");
    }

    #[test]
    fn urls_whose_path_is_the_secret_keep_their_host_only() {
        assert_eq!(
            redact_url_path("https://hooks.slack.com/services/T0/B0/XXXXXXXX"),
            "https://hooks.slack.com/***"
        );
        assert_eq!(
            redact_url_path("https://u:p@fn.example?key=1"),
            "https://fn.example/***"
        );
        assert_eq!(redact_url_path("https://fn.example"), "https://fn.example");
        assert_eq!(redact_url_path("hooks.slack.com/services/T0"), "********");
    }
}
