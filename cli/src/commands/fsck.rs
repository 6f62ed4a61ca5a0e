//! `strata fsck`.

use std::process::ExitCode;

use anyhow::Result;

use crate::Globals;
use crate::output::print_json;

/// Verify the store: index integrity, every object's hash, every layer regenerated against
/// its DiffID, every image's config against its ID. Exit code 1 when damage is found.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Threads that rehash objects (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
}

/// Runs `fsck`.
///
/// # Errors
/// The check could not run.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let store = g.store()?;
    let workers = a.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let rep = store.fsck(workers)?;
    if g.json() {
        print_json(&rep)?;
    } else {
        for p in &rep.errors {
            println!("error: {}: {}", p.subject, p.message);
        }
        for p in &rep.warnings {
            println!("warning: {}: {}", p.subject, p.message);
        }
        println!(
            "checked {} objects, {} layers, {} images: {} errors, {} warnings",
            rep.objects,
            rep.layers,
            rep.images,
            rep.errors.len(),
            rep.warnings.len()
        );
    }
    Ok(if rep.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
