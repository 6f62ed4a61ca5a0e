//! The `strata` binary: parse, run, print errors.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = strata::Cli::parse();
    match strata::run(cli) {
        Ok(code) => code,
        Err(err) => {
            if strata::is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
