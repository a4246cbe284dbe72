//! `dashi`: publish, consume, inspect, purge and benchmark queues on any
//! transport URL dashi supports, from a shell.
//!
//! Every error prints one line on stderr and exits non-zero; nothing panics on
//! bad input.

mod args;
mod bench;
mod connect;
mod consume;
mod declare;
mod json;
mod publish;
mod stat;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_error(e),
    };
    let result = match cli.command {
        Command::Publish(a) => publish::run(a),
        Command::Consume(a) => consume::run(a),
        Command::Stat(a) => stat::run(a),
        Command::Purge(a) => stat::purge(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchConsumer(a) => bench::child::run(a),
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

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
