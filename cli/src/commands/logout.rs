//! `strata logout [REGISTRY]`: removes the registry's entry from strata's credentials file.

use std::process::ExitCode;

use anyhow::Result;

use crate::Globals;
use crate::registry::auth;

/// Log out from a registry (default docker.io).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Registry `host[:port]`. Default: docker.io.
    pub registry: Option<String>,
}

/// Runs `logout`.
///
/// # Errors
/// I/O on the credentials file.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let registry = auth::normalize_registry(a.registry.as_deref().unwrap_or(auth::DOCKER_HUB));
    let removed = auth::remove(&registry)?;
    if g.json() {
        crate::output::print_json(&serde_json::json!({
            "registry": registry,
            "removed": removed,
        }))?;
    } else if !g.quiet {
        if removed {
            println!("Removing login credentials for {registry}");
        } else {
            println!("Not logged in to {registry}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
