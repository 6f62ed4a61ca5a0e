//! `strata pull` (not implemented yet).

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::Globals;

/// Not implemented yet.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `pull`.
///
/// # Errors
/// Always, until implemented.
pub fn run(_g: &Globals, _a: Args) -> Result<ExitCode> {
    bail!("'strata pull' is not implemented yet")
}
