//! `strata gc`.

use std::process::ExitCode;

use anyhow::Result;

use crate::Globals;
use crate::output::{human_size, print_json};

/// Remove layers no image uses, file objects no layer uses, and leftovers of interrupted
/// writes. Keeps what running commands and mounts hold (their leases); waits for running
/// imports.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only report what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `gc`.
///
/// # Errors
/// Store errors.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    if let Some(code) = crate::runtime::enter_userns_for_container_files(&g.root)? {
        return Ok(code);
    }
    let store = g.store()?;
    let rep = store.gc(a.dry_run)?;
    if g.json() {
        return print_json(&rep).map(|()| ExitCode::SUCCESS);
    }
    let verb = if a.dry_run { "Would remove" } else { "Removed" };
    if g.verbose {
        for l in &rep.layers {
            eprintln!("layer {l}");
        }
    }
    println!(
        "{verb} {} layers, {} objects ({}), {} temp files",
        rep.layers.len(),
        rep.objects,
        human_size(rep.bytes),
        rep.tmp_files
    );
    if rep.expired_leases > 0 {
        // Leases of processes that died (kill -9, a crash) held what they had written.
        println!(
            "{verb} {} leases of processes that are gone",
            rep.expired_leases
        );
    }
    Ok(ExitCode::SUCCESS)
}
