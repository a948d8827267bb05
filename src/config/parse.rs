//! Parsing helpers that turn a raw string into a typed value or a [`ConfigError`] naming the
//! variable, the expected form and the value that was given.

use std::fmt;

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
