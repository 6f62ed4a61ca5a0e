//! `strata import FILE|- [NAME[:TAG]]`.

use std::fs::File;
use std::io::Read;
use std::process::ExitCode;

use anyhow::{Context, Result};
use layerstore::image::{History, ImageConfig, now_rfc3339};

use crate::output::{ImportJson, print_json};
use crate::progress::{ProgressReader, bytes_bar};
use crate::{Globals, change};

/// Import a rootfs tarball (plain, gzip or zstd) as a one-layer image.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The tarball, or `-` for standard input.
    pub file: String,
    /// Name for the image, `[registry/][org/]name[:tag]` (tag defaults to `latest`).
    pub reference: Option<String>,
    /// Apply a Dockerfile instruction to the config (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
    /// ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR); repeatable.
    #[arg(short, long = "change", value_name = "INSTRUCTION")]
    pub changes: Vec<String>,
    /// Commit message recorded in the history (default: "Imported from FILE").
    #[arg(short, long)]
    pub message: Option<String>,
}

/// Runs `import`.
///
/// # Errors
/// Bad reference, bad tar, store errors.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    // Validate everything cheap before reading a byte.
    let reference = crate::target_name(a.reference.as_deref())?;
    let mut cfg = ImageConfig::new_for_host(Vec::new());
    for c in &a.changes {
        change::apply(cfg.run_config_mut(), c)?;
    }
    let store = g.store()?;
    // Holds the layer from its ingest until the image is recorded (gc may run meanwhile).
    let _lease = store.lease("import")?;
    let (input, len): (Box<dyn Read>, Option<u64>) = if a.file == "-" {
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = File::open(&a.file).with_context(|| format!("opening {}", a.file))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let bar = bytes_bar(g, len, "importing");
    let info = store
        .ingest_layer(ProgressReader::new(input, bar.clone()), None)
        .with_context(|| format!("importing {}", a.file))?;
    bar.finish_and_clear();
    let created = now_rfc3339();
    cfg.created = Some(created.clone());
    cfg.rootfs.diff_ids = vec![info.diff_id];
    cfg.history = vec![History {
        created: Some(created),
        comment: Some(
            a.message
                .unwrap_or_else(|| format!("Imported from {}", a.file)),
        ),
        ..Default::default()
    }];
    let id = store.add_image(&cfg.to_bytes(), None)?;
    let mut tags = Vec::new();
    if let Some(r) = reference {
        tags.push(store.tag(&id, &r)?.to_string());
    }
    if g.json() {
        print_json(&ImportJson {
            id: id.to_string(),
            diff_id: info.diff_id.to_string(),
            size: info.tar_size,
            entries: info.entries,
            tags,
        })?;
    } else {
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}
