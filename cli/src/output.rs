//! What the commands print on stdout. `println!` panics when stdout fails:
//! `dashi stat | head -1` (the reader leaves: a broken pipe) ended in a
//! panic and exit 101, and so did `dashi publish > /dev/full` after its
//! messages were stored, which a caller reading the exit code took for a
//! failed publish. Here a reader that left ends the output quietly (what
//! the command did still counts: the messages are stored), and any other
//! failure is one error line.

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};

/// Writes one line to stdout.
pub(crate) fn line(args: Arguments<'_>) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing to stdout: {e}")),
    }
}

/// `println!` that returns [`line`]'s result.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::output::line(format_args!($($t)*))
    };
}
pub(crate) use out;

/// `text` as a terminal may show it: control characters (a newline, an
/// escape sequence) written as escapes (`\n`, `\u{1b}`), everything else
/// as it is. A queue name or a body is anyone's input: printed raw, a name
/// forged a row of `dashi stat`'s table and sent escape sequences to the
/// operator's terminal.
pub(crate) fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A character that changes how a line shows rather than showing itself:
/// a control character, or a Unicode format character that reorders or
/// hides text (bidirectional overrides and isolates, zero-width marks), which
/// could make one queue name look like another.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_shown_as_escapes() {
        assert_eq!(super::shown("plain name é"), "plain name é");
        assert_eq!(
            super::shown("evil\nq 999\u{1b}]0;x\u{7}\t"),
            "evil\\nq 999\\u{1b}]0;x\\u{7}\\t"
        );
        // Right-to-left override: "jobs" shown as "sboj".
        assert_eq!(
            super::shown("\u{202e}sboj\u{200b}"),
            "\\u{202e}sboj\\u{200b}"
        );
    }
}
