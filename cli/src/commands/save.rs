//! `strata save [-o FILE | --format oci-dir DIR] IMAGE…`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use layerstore::archive::{LayerCodec, SaveOptions};

use crate::Globals;
use crate::progress::bytes_bar;

/// Archive layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchiveFormat {
    /// A tarball in the Docker ≥ 25 shape (also an OCI image layout): `docker load`,
    /// `skopeo docker-archive:` and `oci-archive:` read it.
    DockerArchive,
    /// An OCI image layout directory (`skopeo oci:DIR`, `umoci`).
    OciDir,
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compress {
    /// Uncompressed layers, named by DiffID (what `docker save` writes).
    None,
    /// gzip, level 6 (deterministic).
    Gzip,
    /// zstd, level 3 (deterministic).
    Zstd,
}

/// Save images to a tarball (Docker ≥ 25 format, also an OCI layout) or an OCI layout dir.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Images: `name[:tag]` (a name without a tag saves every tag of that repository), or IDs.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Output file (default: standard output, which must not be a terminal); with
    /// `--format oci-dir`, the directory (new or empty).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Archive layout. Default: docker-archive.
    #[arg(long = "archive-format", alias = "layout", value_enum, default_value_t = ArchiveFormat::DockerArchive)]
    pub archive_format: ArchiveFormat,
    /// Write an OCI layout directory at DIR (same as `--archive-format oci-dir -o DIR`).
    #[arg(long = "oci-dir", value_name = "DIR", conflicts_with = "output")]
    pub oci_dir: Option<PathBuf>,
    /// Compress layer blobs. Default: none.
    #[arg(long, value_enum, default_value_t = Compress::None)]
    pub compress: Compress,
}

/// Runs `save`.
///
/// # Errors
/// Unknown images, write errors, a damaged store.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let store = g.store()?;
    let codec = match a.compress {
        Compress::None => LayerCodec::None,
        Compress::Gzip => LayerCodec::Gzip,
        Compress::Zstd => LayerCodec::Zstd,
    };
    let mut plan = store.plan_save(&a.images, &SaveOptions { codec })?;
    let bar = bytes_bar(g, Some(plan.layer_bytes()), "saving");
    let mut progress = |n: u64| bar.inc(n);
    let oci_dir = match (&a.oci_dir, a.archive_format) {
        (Some(d), _) => Some(d.clone()),
        (None, ArchiveFormat::OciDir) => Some(
            a.output
                .clone()
                .context("--archive-format oci-dir needs the directory: -o DIR")?,
        ),
        (None, ArchiveFormat::DockerArchive) => None,
    };
    if let Some(dir) = oci_dir {
        plan.write_oci_dir(&dir, &mut progress)
            .with_context(|| format!("writing the OCI layout {}", dir.display()))?;
        bar.finish_and_clear();
        return Ok(ExitCode::SUCCESS);
    }
    match &a.output {
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!(
                    "refusing to write an image archive to a terminal; use -o FILE or redirect \
                     the output"
                );
            }
            let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            plan.write_tar(&mut w, &mut progress)?;
            w.flush().context("writing standard output")?;
        }
        Some(path) => {
            // Write beside the target and rename, so a failed save leaves no partial file.
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(".".as_ref());
            let tmp = tempfile::Builder::new()
                .prefix(".strata-save-")
                .tempfile_in(dir)
                .with_context(|| format!("creating a temp file in {}", dir.display()))?;
            {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file());
                plan.write_tar(&mut w, &mut progress)
                    .with_context(|| format!("saving to {}", path.display()))?;
                w.flush()
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            tmp.as_file()
                .sync_all()
                .with_context(|| format!("writing {}", path.display()))?;
            tmp.persist(path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}
