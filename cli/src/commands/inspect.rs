//! `strata inspect IMAGE`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::Globals;
use crate::output::{InspectJson, print_json};

/// Show an image's metadata and config as JSON (always JSON, like `docker inspect`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: `name[:tag]`, `name@sha256:…`, ID or ID prefix.
    pub image: String,
    /// Print the config exactly as stored (the bytes the image ID is the hash of).
    #[arg(long)]
    pub raw: bool,
}

/// Runs `inspect`.
///
/// # Errors
/// Unknown image, store errors.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let store = g.store()?;
    let img = store.resolve_image(&a.image)?;
    if a.raw {
        let mut out = std::io::stdout().lock();
        out.write_all(&img.config)?;
        return Ok(ExitCode::SUCCESS);
    }
    let config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&img.config).context("the stored config is not a JSON object")?;
    print_json(&InspectJson {
        id: img.id.to_string(),
        repo_tags: img.repo_tags().map(ToString::to_string).collect(),
        repo_digests: img.repo_digests().map(ToString::to_string).collect(),
        parent: img.parent.map(|p| p.to_string()),
        added: img.added.clone(),
        size: store.image_size(&img.id)?,
        chain_ids: store
            .chain_ids(&img)?
            .iter()
            .map(ToString::to_string)
            .collect(),
        config,
    })?;
    Ok(ExitCode::SUCCESS)
}
