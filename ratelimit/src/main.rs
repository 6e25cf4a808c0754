//! `appguard-ratelimit`: see the library documentation and `--help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    appguard_ratelimit::cli::run(appguard_ratelimit::cli::Cli::parse())
}
