//! Parsing helpers that turn a raw string into a typed value or a [`ConfigError`] naming the
//! variable, the expected form and the value that was given.

use std::fmt;

use super::secret::Secret;

/// A configuration error: one line that names the variable and the form it expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub expected: String,
    pub got: String,
}

impl ConfigError {
    pub fn new(variable: &str, expected: &str, got: &str) -> Self {
        ConfigError {
            variable: variable.to_owned(),
            expected: expected.to_owned(),
            got: got.to_owned(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.got.is_empty() {
            write!(
                f,
                "invalid configuration: {} must be {}, but it is not set",
                self.variable, self.expected
            )
        } else {
            write!(
                f,
                "invalid configuration: {} must be {}, got {:?}",
                self.variable, self.expected, self.got
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// A named raw value, so parse helpers can report which variable was wrong.
pub struct Var<'a> {
    name: &'static str,
    value: &'a str,
}

impl<'a> Var<'a> {
    pub fn new(name: &'static str, value: &'a str) -> Self {
        Var { name, value }
    }
}

pub fn parse_int(name: &'static str, raw: Option<&str>, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    let expected = format!("an integer from {min} to {max}");
    match raw.trim().parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(name, &expected, raw)),
    }
}

pub fn parse_bool(name: &'static str, raw: Option<&str>, default: bool) -> Result<bool, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::new(name, "true or false", raw)),
    }
}

/// Case-insensitive choice among `options`; returns the matching option.
pub fn parse_one_of<'o>(var: Var<'_>, options: &[&'o str]) -> Result<&'o str, ConfigError> {
    let wanted = var.value.trim().to_ascii_lowercase();
    options
        .iter()
        .find(|o| **o == wanted)
        .copied()
        .ok_or_else(|| ConfigError::new(var.name, &format!("one of {}", options.join(", ")), var.value))
}

/// Shortest accepted bearer token: 16 characters, so it cannot be guessed by trying.
pub const MIN_TOKEN_LEN: usize = 16;

/// A bearer token: at least [`MIN_TOKEN_LEN`] visible ASCII characters. A space, a newline (the
/// usual leftover of a secret store or `echo >`) or any other character a client cannot send back
/// in an `Authorization` header would make every request fail, so it is refused here instead. The
/// value is never echoed.
pub fn parse_token(name: &'static str, raw: Option<String>) -> Result<Option<Secret>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let expected =
        format!("a token of at least {MIN_TOKEN_LEN} visible ASCII characters, without spaces or line breaks");
    let got = match raw.chars().find(|c| !c.is_ascii_graphic()) {
        Some(c) => format!("a value containing {}", what_char(c)),
        None if raw.len() < MIN_TOKEN_LEN => format!("{} characters", raw.len()),
        None => return Ok(Some(Secret::new(raw))),
    };
    Err(ConfigError::new(name, &expected, &got))
}

fn what_char(c: char) -> &'static str {
    match c {
        '\n' | '\r' => "a line break",
        ' ' | '\t' => "a space",
        c if c.is_control() => "a control character",
        _ => "a non-ASCII character",
    }
}
