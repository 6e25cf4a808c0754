//! `appguard-ratelimit`: see the library documentation and `--help`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match appguard_ratelimit::cli::Cli::try_parse() {
        Ok(cli) => appguard_ratelimit::cli::run(cli),
        Err(e) => {
            let args: Vec<String> = std::env::args_os()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            appguard_ratelimit::cli::command_line_error(&e, &args)
        }
    }
}
