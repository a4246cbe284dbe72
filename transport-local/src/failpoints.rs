//! What a failpoint configured with `return(<marker>)` does: says where the
//! process stopped and stops the thread for good, so a test that reads the
//! line can kill the process exactly there.

use std::io::Write;

/// Prints `failpoint <name> <marker>` on stdout and never returns.
pub(crate) fn stop_here(name: &str, marker: Option<String>) -> ! {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "failpoint {name} {}", marker.unwrap_or_default());
    let _ = out.flush();
    loop {
        std::thread::park();
    }
}
