//! Error texts: what a step, an endpoint or a panic says is stored (`step_attempts.error`,
//! `step_results.error`, `step_dead_letters.error`), logged and reported, so it is masked and
//! bounded first. Masking is by shape, since free text has no keys to go by: credentials in URLs
//! and `Bearer` headers, `key=value` and `"key": "value"` pairs whose key is sensitive, e-mail
//! addresses, and the values the job's own input holds under sensitive keys.

use serde_json::Value;

use super::{MASK, Redactor, scrub_text};

/// Longest error text kept, in characters: a stack trace's head or an endpoint's error body fits;
/// a 10 MB message does not fill a column, a log line and a Sentry event.
pub const MAX_ERROR_CHARS: usize = 4096;
/// Shortest input value masked where it appears in an error: shorter ones (`"1"`, `"no"`) would
/// mask unrelated text.
const MIN_MASKED_VALUE: usize = 4;

impl Redactor {
    /// `text` with credentials, sensitive `key=value` pairs and e-mail addresses masked.
    pub fn text(&self, text: &str) -> String {
        mask_emails(&self.mask_pairs(&scrub_text(text)))
    }

    /// An error text fit to store and log: [`Self::text`], plus every string or number found
    /// under a sensitive key of `input` (a job's input, `Null` when unknown) masked where it
    /// appears, cut to [`MAX_ERROR_CHARS`] characters with a note of how much was cut.
    pub fn error_text(&self, text: &str, input: &Value) -> String {
        let mut values = Vec::new();
        self.sensitive_values(input, false, &mut values);
        // Masked on a prefix just past the cut, so a value across the cut is still found whole.
        let longest = values.iter().map(|v| v.chars().count()).max().unwrap_or(0);
        let total = text.chars().count();
        let head: String = text.chars().take(MAX_ERROR_CHARS + longest + 256).collect();
        let mut out = self.text(&head);
        for v in &values {
            out = out.replace(v.as_str(), MASK);
        }
        if out.chars().count() > MAX_ERROR_CHARS || total > head.chars().count() {
            let kept: String = out.chars().take(MAX_ERROR_CHARS).collect();
            out = format!("{kept}… [cut at {MAX_ERROR_CHARS} of {total} characters]");
        }
        out
    }

    /// [`Self::error_text`] for a job known by its raw payload: its `input` is read again only
    /// here, on the failure path, so a successful job pays nothing for it.
    pub fn job_error_text(&self, text: &str, payload: &[u8]) -> String {
        let input = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|mut v| v.get_mut("input").map(Value::take))
            .unwrap_or(Value::Null);
        self.error_text(text, &input)
    }

    /// Strings and numbers under sensitive keys, at any depth.
    fn sensitive_values(&self, v: &Value, under: bool, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    self.sensitive_values(v, under || self.is_sensitive(k), out);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.sensitive_values(v, under, out)),
            Value::String(s) if under && s.chars().count() >= MIN_MASKED_VALUE => out.push(s.clone()),
            Value::Number(n) if under && n.to_string().len() >= MIN_MASKED_VALUE => out.push(n.to_string()),
            _ => {}
        }
    }

    /// Masks the value of `key=value`, `key: value` and `"key": "value"` when the key is sensitive.
    fn mask_pairs(&self, text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let mut copied = 0;
        let mut i = 0;
        while i < bytes.len() {
            if !is_key_byte(bytes[i]) || (i > 0 && is_key_byte(bytes[i - 1])) {
                i += 1;
                continue;
            }
            let key_end = i + bytes[i..].iter().take_while(|b| is_key_byte(**b)).count();
            let Some((start, end)) = value_after(bytes, key_end).filter(|_| self.is_sensitive(&text[i..key_end]))
            else {
                i = key_end;
                continue;
            };
            out.push_str(&text[copied..start]);
            out.push_str(MASK);
            copied = end;
            i = end;
        }
        out.push_str(&text[copied..]);
        out
    }
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The byte range of the value following a key that ends at `at`: an optional closing quote,
/// spaces, `=` or `:`, spaces, then a quoted string or a run up to a delimiter.
fn value_after(bytes: &[u8], mut at: usize) -> Option<(usize, usize)> {
    let skip = |at: &mut usize, set: &[u8]| {
        while *at < bytes.len() && set.contains(&bytes[*at]) {
            *at += 1;
        }
    };
    skip(&mut at, b"\"'");
    skip(&mut at, b" ");
    if !matches!(bytes.get(at), Some(b'=' | b':')) {
        return None;
    }
    at += 1;
    skip(&mut at, b" ");
    let (start, end) = match bytes.get(at) {
        Some(q @ (b'"' | b'\'')) => {
            let start = at + 1;
            let len = bytes[start..]
                .iter()
                .position(|b| b == q)
                .unwrap_or(bytes.len() - start);
            (start, start + len)
        }
        _ => {
            let len = bytes[at..]
                .iter()
                .position(|b| b.is_ascii_whitespace() || b",;&}]\"'".contains(b))
                .unwrap_or(bytes.len() - at);
            (at, at + len)
        }
    };
    (end > start).then_some((start, end))
}

/// Replaces `local@domain.tld` with the mask.
fn mask_emails(text: &str) -> String {
    let local = |c: char| c.is_ascii_alphanumeric() || "._%+-".contains(c);
    let domain = |c: char| c.is_ascii_alphanumeric() || ".-".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('@') {
        let start = rest[..at].rfind(|c: char| !local(c)).map_or(0, |p| p + 1);
        let end = rest[at + 1..]
            .find(|c: char| !domain(c))
            .map_or(rest.len(), |e| at + 1 + e);
        let host = rest[at + 1..end].trim_end_matches('.');
        if start < at && host.contains('.') && !host.starts_with('.') {
            out.push_str(&rest[..start]);
            out.push_str(MASK);
            rest = &rest[at + 1 + host.len()..];
        } else {
            out.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::redact::DEFAULT_KEYS;

    #[test]
    fn sensitive_pairs_and_emails_are_masked_in_free_text() {
        let r = Redactor::new(DEFAULT_KEYS);
        assert_eq!(
            r.text(r#"login failed: password=hunter2; user ann@example.com"#),
            "login failed: password=[redacted]; user [redacted]"
        );
        assert_eq!(
            r.text(r#"{"api_token": "abc def", "name":"Ann", "Password":"x"}"#),
            r#"{"api_token": "[redacted]", "name":"Ann", "Password":"[redacted]"}"#
        );
        assert_eq!(r.text("token: t0k3n, ok"), "token: [redacted], ok");
        assert_eq!(r.text("a@b and x@localhost stay"), "a@b and x@localhost stay");
        assert_eq!(r.text("redis://u:pw@cache:6379"), "redis://u:***@cache:6379");
    }

    #[test]
    fn values_under_sensitive_input_keys_are_masked_wherever_they_appear() {
        let r = Redactor::new(DEFAULT_KEYS);
        let input = json!({"customer": {"ssn": "078-05-1120", "card": 4111111111111111u64}, "n": "078"});
        let out = r.error_text("no match for 078-05-1120 (card 4111111111111111), n=078", &input);
        assert_eq!(out, "no match for [redacted] (card [redacted]), n=078");
    }

    #[test]
    fn long_error_texts_are_cut_with_a_note() {
        let r = Redactor::new(DEFAULT_KEYS);
        let out = r.error_text(&"é".repeat(100_000), &Value::Null);
        assert!(out.starts_with(&"é".repeat(MAX_ERROR_CHARS)));
        assert!(
            out.ends_with(&format!("[cut at {MAX_ERROR_CHARS} of 100000 characters]")),
            "{}",
            &out[out.len() - 60..]
        );
        assert_eq!(r.error_text("short", &Value::Null), "short");
    }
}
