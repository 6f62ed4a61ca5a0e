//! `strata load [-i FILE|DIR] [--platform os/arch[/variant]]`.

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use layerstore::archive::{LoadOptions, Platform};

use crate::Globals;
use crate::output::print_json;
use crate::progress::{ProgressReader, bytes_bar};

/// Load images from an archive: a Docker tarball (≥ 25 or older), an OCI layout as a tar or a
/// directory; the tarball may be gzip or zstd compressed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The archive file or OCI layout directory (default: standard input).
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Platform to pick from multi-platform archives, `os/arch[/variant]`. Default: the
    /// host's (single-platform archives then load whatever their platform).
    #[arg(long)]
    pub platform: Option<String>,
}

/// Runs `load`.
///
/// # Errors
/// A bad archive, a layer that does not match its DiffID, store errors.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let opts = LoadOptions {
        platform: a.platform.as_deref().map(Platform::parse).transpose()?,
    };
    let store = g.store()?;
    // Holds the layers from their ingest until the images are recorded (gc may run meanwhile).
    let _lease = store.lease("load")?;
    let report = match &a.input {
        Some(p) if p.is_dir() => {
            let bar = bytes_bar(g, None, "loading");
            let mut progress = |n: u64| bar.inc(n);
            let r = store
                .load_dir(p, &opts, &mut progress)
                .with_context(|| format!("loading {}", p.display()))?;
            bar.finish_and_clear();
            r
        }
        Some(p) => {
            let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            let bar = bytes_bar(g, len, "loading");
            let input = ProgressReader::new(f, bar.clone());
            let r = store
                .load_tar(input, &opts, &mut |_| {})
                .with_context(|| format!("loading {}", p.display()))?;
            bar.finish_and_clear();
            r
        }
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!(
                    "refusing to read an image archive from a terminal; use -i FILE or redirect \
                     the input"
                );
            }
            let bar = bytes_bar(g, None, "loading");
            let input: Box<dyn Read> = Box::new(ProgressReader::new(stdin.lock(), bar.clone()));
            let r = store
                .load_tar(input, &opts, &mut |_| {})
                .context("loading standard input")?;
            bar.finish_and_clear();
            r
        }
    };
    if g.json() {
        print_json(&report)?;
    } else {
        for img in &report.images {
            if img.tags.is_empty() {
                println!("Loaded image ID: {}", img.id);
            }
            for t in &img.tags {
                println!("Loaded image: {}", t.familiar());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
