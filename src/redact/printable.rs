//! Text from outside (ids, step names, errors) made safe for a terminal or a line-oriented log:
//! a newline in a job id could forge a log line, `ESC[2J` could clear the operator's screen, and a
//! bidirectional override could show text in another order than it is stored.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character (C0, DEL, C1) and bidirectional control escaped as `\n`,
/// `\t`, `\r` or `\u{…}`; a backslash stays as it is. Borrowed when there is nothing to escape.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped_and_plain_text_is_borrowed() {
        assert_eq!(
            printable("job\n2026 INFO forged\x1b[2J\u{202e}"),
            "job\\n2026 INFO forged\\u{1b}[2J\\u{202e}"
        );
        assert_eq!(printable("tab\there\r\u{85}"), "tab\\there\\r\\u{85}");
        assert!(matches!(printable("plain é ✓ \\n"), Cow::Borrowed(_)));
    }
}
