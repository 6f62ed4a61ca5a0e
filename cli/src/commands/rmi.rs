//! `strata rmi IMAGE…`.

use std::process::ExitCode;

use anyhow::Result;
use layerstore::Removal;

use crate::Globals;
use crate::output::print_json;

/// Remove images: a name untags; the image is deleted when no tag is left. Layers and
/// objects are freed by `strata gc`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images: `name[:tag]`, `name@sha256:…`, ID or ID prefix.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove an image by ID even when several tags point at it.
    #[arg(short, long)]
    pub force: bool,
}

/// Runs `rmi`.
///
/// # Errors
/// None of its own: per-image failures are printed and make the exit code 1.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let store = g.store()?;
    let mut all = Vec::new();
    let mut failed = false;
    for name in &a.images {
        match store.remove_image_and_digests(name, a.force) {
            Ok(events) => {
                if !g.json() {
                    for e in &events {
                        match e {
                            Removal::Untagged(t) => println!("Untagged: {t}"),
                            Removal::Deleted(d) => println!("Deleted: {d}"),
                        }
                    }
                }
                all.extend(events);
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if g.json() {
        print_json(&all)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
