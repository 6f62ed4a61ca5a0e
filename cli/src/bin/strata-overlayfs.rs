//! `strata-overlayfs`: fuse-overlayfs's command line over strata's union filesystem (see
//! `strata::overlay`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match strata::overlay::run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("strata-overlayfs: {err:#}");
            ExitCode::FAILURE
        }
    }
}
