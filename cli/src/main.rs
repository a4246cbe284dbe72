//! `dashi`: publish, consume, inspect, purge and benchmark queues on any
//! transport URL dashi supports, from a shell.
//!
//! Every error prints one line on stderr and exits non-zero; nothing panics on
//! bad input.

/// The binary's allocator: mimalloc (see `alloc.rs`).
#[global_allocator]
static ALLOC: alloc::Mimalloc = alloc::Mimalloc;

mod alloc;
mod args;
mod bench;
mod connect;
mod consume;
mod declare;
mod json;
mod output;
mod publish;
mod stat;
mod torture;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

/// The library's warnings and errors (a segment missing from its lane, a
/// corrupt record set aside, a failed background step) go to stderr, one
/// line each: what a library user's subscriber would show, the user of a
/// command sees. Not for bench and torture, whose output is their report.
fn say_warnings() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_error(e),
    };
    if matches!(
        cli.command,
        Command::Publish(_) | Command::Consume(_) | Command::Stat(_) | Command::Purge(_)
    ) {
        say_warnings();
    }
    let result = match cli.command {
        Command::Publish(a) => publish::run(a),
        Command::Consume(a) => consume::run(a),
        Command::Stat(a) => stat::run(a),
        Command::Purge(a) => stat::purge(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchConsumer(a) => bench::child::run(a),
        Command::Torture(a) => torture::run(a),
        Command::TortureChild(a) => torture::worker::child(a),
        Command::TortureFs(a) => torture::lossyfs::serve(&a.backing, &a.mount, a.keep, a.seed),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("dashi: {}", one_line(&msg));
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` print as clap formats them; real errors print
/// clap's first line only, so scripts get one line to read.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("dashi: {first} (see dashi --help)");
            ExitCode::from(2)
        }
    }
}

/// Longest error line printed; echoed input beyond it is cut.
const MAX_LINE: usize = 400;

/// One line: whitespace folded, a prefix repeated by nested errors
/// (`transport error: transport error: ...`) said once, and cut to
/// [`MAX_LINE`] characters with a note of how much was cut.
fn one_line(s: &str) -> String {
    let folded = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let folded = output::shown(&folded);
    let mut parts: Vec<&str> = Vec::new();
    for part in folded.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    let line = parts.join(": ");
    let n = line.chars().count();
    if n <= MAX_LINE {
        return line;
    }
    let kept: String = line.chars().take(MAX_LINE).collect();
    format!("{kept}... ({} more characters cut)", n - MAX_LINE)
}
