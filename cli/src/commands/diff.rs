//! `strata diff CONTAINER`: the changes in a container's writable layer, as `docker diff`
//! prints them (`A`/`C`/`D` lines, sorted, parents of added and deleted paths as `C`).

use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::Globals;
use crate::output::{DiffJson, print_json};
use crate::union::image_lowers;

/// List the changes in a container's writable layer (read from its upper dir only).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container name or ID.
    pub container: String,
}

/// Runs `diff`.
///
/// # Errors
/// Unknown container, an image missing from the store, I/O on the upper dir.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    if let Some(code) = crate::runtime::enter_userns_for_container(&g.root, &a.container)? {
        return Ok(code);
    }
    let store = g.store()?;
    let c = store.resolve_container(&a.container)?;
    let img = store
        .resolve_image(&c.image.to_string())
        .with_context(|| format!("the image of container {}", c.name))?;
    let lowers = image_lowers(&store, &img)?;
    let changes = unionfs::changes::scan_upper(&c.upper(), &lowers)
        .with_context(|| format!("reading the changes of container {}", c.name))?;
    let rows: Vec<DiffJson> = unionfs::changes::docker_diff(&changes)
        .into_iter()
        .map(|(k, p)| DiffJson {
            kind: k.letter().to_string(),
            path: format!("/{}", String::from_utf8_lossy(p.as_os_str().as_bytes())),
        })
        .collect();
    if g.json() {
        return print_json(&rows).map(|()| ExitCode::SUCCESS);
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for r in &rows {
        writeln!(out, "{} {}", r.kind, r.path)?;
    }
    Ok(ExitCode::SUCCESS)
}
