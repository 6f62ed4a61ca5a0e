//! `strata tag SOURCE TARGET`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use layerstore::reference::ImageRef;

use crate::Globals;
use crate::output::print_json;

/// Create a tag TARGET that refers to the image SOURCE.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: `name[:tag]`, ID or ID prefix.
    pub source: String,
    /// The new name: `[registry/][org/]name[:tag]`.
    pub target: String,
}

/// Runs `tag`.
///
/// # Errors
/// Unknown image, invalid target name.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let target = ImageRef::parse(&a.target).context("the target name")?;
    let store = g.store()?;
    let img = store.resolve_image(&a.source)?;
    let tagged = store.tag(&img.id, &target)?;
    if g.json() {
        print_json(&serde_json::json!({ "id": img.id.to_string(), "tag": tagged.to_string() }))?;
    }
    Ok(ExitCode::SUCCESS)
}
