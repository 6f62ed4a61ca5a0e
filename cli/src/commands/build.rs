//! `strata build` (not implemented yet).

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::Globals;

/// Not implemented yet.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `build`.
///
/// # Errors
/// Always, until implemented.
pub fn run(_g: &Globals, _a: Args) -> Result<ExitCode> {
    bail!("'strata build' is not implemented yet")
}
