//! `strata layer export|ls`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::Globals;
use crate::progress::bytes_bar;

/// Layer subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write a layer's tar, byte for byte as it was imported (its sha256 is the DiffID).
    Export(ExportArgs),
}

/// `layer export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The layer's DiffID (`sha256:…`, bare hex, or a unique prefix).
    pub diff_id: String,
    /// Output file (default: standard output).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// Runs a layer subcommand.
///
/// # Errors
/// Unknown layer, I/O.
pub fn run(g: &Globals, c: Command) -> Result<ExitCode> {
    match c {
        Command::Export(a) => export(g, a),
    }
}

/// A writer that advances a progress bar.
struct BarWriter<W> {
    inner: W,
    bar: indicatif::ProgressBar,
}

impl<W: Write> Write for BarWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn export(g: &Globals, a: ExportArgs) -> Result<ExitCode> {
    let store = g.store()?;
    let diff_id = store.resolve_layer(&a.diff_id)?;
    let size = store.layer_size(&diff_id)?;
    let bar = bytes_bar(g, Some(size), "exporting");
    match &a.output {
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("refusing to write a tar to a terminal; use -o FILE or redirect the output");
            }
            let mut w = BarWriter {
                inner: std::io::BufWriter::new(stdout.lock()),
                bar: bar.clone(),
            };
            store.export_layer(&diff_id, &mut w)?;
            w.flush()?;
        }
        Some(path) => {
            // Write beside the target and rename, so a failed export leaves no partial file.
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(".".as_ref());
            let tmp = tempfile_in(dir)?;
            let mut w = BarWriter {
                inner: std::io::BufWriter::new(tmp.as_file()),
                bar: bar.clone(),
            };
            store.export_layer(&diff_id, &mut w)?;
            w.flush()?;
            drop(w);
            tmp.as_file().sync_all()?;
            tmp.persist(path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}

fn tempfile_in(dir: &std::path::Path) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".strata-export-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))
}
