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
