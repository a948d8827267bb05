//! Masking personal data and credentials before anything leaves the process (Sentry events,
//! Slack messages). Job inputs and outputs are never logged; where they are attached to an error
//! report, values under sensitive keys are replaced.

use serde_json::Value;

pub use printable::printable;
pub use text::MAX_ERROR_CHARS;

mod printable;
mod text;

/// The default `PII_REDACT_KEYS`: a key matches when its lower-cased name contains one of them
/// (so `user_email` and `Authorization` match).
pub const DEFAULT_KEYS: &str = "password,token,secret,authorization,email,phone,ssn,card";
pub const MASK: &str = "[redacted]";

#[derive(Debug, Clone)]
pub struct Redactor {
    keys: Vec<String>,
}

impl Redactor {
    /// From a comma-separated key list.
    pub fn new(keys: &str) -> Self {
        Redactor {
            keys: keys
                .split(',')
                .map(|k| k.trim().to_ascii_lowercase())
                .filter(|k| !k.is_empty())
                .collect(),
        }
    }

    pub fn is_sensitive(&self, key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        self.keys.iter().any(|k| key.contains(k.as_str()))
    }

    /// A copy of `value` with every value under a sensitive key masked, at any depth.
    pub fn redact(&self, value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            if self.is_sensitive(k) {
                                Value::String(MASK.to_owned())
                            } else {
                                self.redact(v)
                            },
                        )
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.redact(v)).collect()),
            Value::String(s) => Value::String(self.text(s)),
            other => other.clone(),
        }
    }
}

/// Masks credentials inside free text: the password of `scheme://user:password@host` (also when
/// it holds an unencoded `/`, `?` or `#`), sensitive query parameters, and the token after
/// `Bearer `.
pub fn scrub_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // Back to the start of the scheme, forward to the end of the URL.
        let start = rest[..i]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
            .last()
            .map_or(i, |(p, _)| p);
        let end = rest[i + 3..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`'))
            .map_or(rest.len(), |e| i + 3 + e);
        out.push_str(&rest[..start]);
        out.push_str(&crate::config::redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    match out.find("Bearer ") {
        Some(i) => {
            let start = i + "Bearer ".len();
            let end = out[start..]
                .find(|c: char| c.is_whitespace() || c == '"')
                .map_or(out.len(), |e| start + e);
            format!("{}***{}", &out[..start], &out[end..])
        }
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_under_sensitive_keys_are_masked_at_any_depth() {
        let r = Redactor::new(DEFAULT_KEYS);
        let input = json!({"user": {"Email": "a@b.c", "name": "Ann", "cards": [{"card_number": "4111"}]}, "apiToken": "t", "n": 1});
        let out = r.redact(&input);
        assert_eq!(
            out,
            json!({"user": {"Email": MASK, "name": "Ann", "cards": MASK}, "apiToken": MASK, "n": 1})
        );
    }

    #[test]
    fn configured_keys_replace_the_defaults() {
        let r = Redactor::new("iban, dob");
        assert!(r.is_sensitive("customer_IBAN") && r.is_sensitive("DOB"));
        assert!(!r.is_sensitive("password"));
    }

    #[test]
    fn credentials_in_text_are_scrubbed() {
        assert_eq!(
            scrub_text("connect to redis://default:hunter2@cache:6379 failed"),
            "connect to redis://default:***@cache:6379 failed"
        );
        assert_eq!(
            scrub_text("header Authorization: Bearer abc.def rejected"),
            "header Authorization: Bearer *** rejected"
        );
        assert_eq!(scrub_text("plain http://host/path"), "plain http://host/path");
    }
}
