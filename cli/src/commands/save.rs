//! `strata save [-o FILE | --format oci-dir DIR] IMAGE…`.

use std::fs::{self, File};
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
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
            // Written beside the target and renamed, so a failed save leaves no partial file.
            let out = OutputFile::create(path, SAVE_PREFIX)?;
            {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, out.file());
                plan.write_tar(&mut w, &mut progress)
                    .with_context(|| format!("saving to {}", path.display()))?;
                w.flush()
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            out.persist()?;
        }
    }
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}

/// Name prefix of the temp file `save -o` writes beside its target.
pub(crate) const SAVE_PREFIX: &str = ".strata-save-";
/// Name suffix of such temp files.
const TEMP_SUFFIX: &str = ".tmp";
/// Mode of the output (docker's CLI writes `save -o` through a 0600 temp file too).
const OUTPUT_MODE: u32 = 0o600;

/// An output file written beside its target and renamed over it once complete, so a failed
/// or killed writer never leaves a partial target.
///
/// The file has no name while it is written (`O_TMPFILE`), so a process killed at any point
/// leaves nothing behind; it is named only for the rename at the end. Where the filesystem
/// has no unnamed files it is named `<prefix><pid ns>-<pid>-<start time>-<random>.tmp` from
/// the start, and the next writer in that directory removes such files whose process is
/// gone (a pid reused by a later process is told apart by its start time).
pub(crate) struct OutputFile {
    file: File,
    target: PathBuf,
    dir: PathBuf,
    prefix: &'static str,
    /// The temp name, while the file has one.
    named: Option<PathBuf>,
}

/// This process's pid namespace (the inode of `/proc/self/ns/pid`), 0 when unknown.
fn pid_ns() -> u64 {
    fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino())
}

/// Start time of `pid` (clock ticks after boot, field 22 of `/proc/PID/stat`); `None` when
/// there is no such process or it has exited (a zombie).
fn start_time(pid: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state …`: comm may hold anything, so fields are counted after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&("Z" | "X" | "x"))) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// A temp name for this process: `<prefix><pid ns>-<pid>-<start>-<random>.tmp`.
fn temp_name(prefix: &str) -> String {
    let pid = std::process::id();
    let start = start_time("self").unwrap_or(0);
    let rand: u64 = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    format!(
        "{prefix}{}-{pid}-{start}-{rand:016x}{TEMP_SUFFIX}",
        pid_ns()
    )
}

/// Whether the process that named a temp file `name` (after the prefix) is certainly gone.
/// A name of another pid namespace, or one that does not parse, is kept.
fn owner_gone(rest: &str, my_ns: u64) -> bool {
    let Some(rest) = rest.strip_suffix(TEMP_SUFFIX) else {
        return false;
    };
    let mut it = rest.splitn(4, '-');
    let (Some(ns), Some(pid), Some(start)) = (it.next(), it.next(), it.next()) else {
        return false;
    };
    let (Ok(ns), Ok(pid), Ok(start)) = (ns.parse::<u64>(), pid.parse::<u32>(), start.parse())
    else {
        return false;
    };
    if ns != my_ns || my_ns == 0 {
        return false;
    }
    start_time(&pid.to_string()) != Some(start)
}

/// Removes the temp files of writers killed earlier in `dir` (only this user's).
fn remove_leftovers(dir: &Path, prefix: &str) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    let my_ns = pid_ns();
    let me = rustix::process::geteuid().as_raw();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        if !owner_gone(rest, my_ns) {
            continue;
        }
        let p = e.path();
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_file() && m.uid() == me) {
            let _ = fs::remove_file(&p); // gone already, or not ours to remove
        }
    }
}

impl OutputFile {
    /// Starts writing `target`: an unnamed file in its directory (or a named temp file, see
    /// the type), after removing what killed writers left there.
    ///
    /// # Errors
    /// The directory cannot be written.
    pub(crate) fn create(target: &Path, prefix: &'static str) -> Result<OutputFile> {
        let dir = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(".".as_ref())
            .to_owned();
        remove_leftovers(&dir, prefix);
        let unnamed = if Path::new("/proc/self/fd").is_dir() {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .mode(OUTPUT_MODE)
                .custom_flags(libc::O_TMPFILE)
                .open(&dir)
        } else {
            Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP))
        };
        let (file, named) = match unnamed {
            Ok(f) => (f, None),
            // No unnamed files here (EOPNOTSUPP; EISDIR from kernels that do not know them).
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) =>
            {
                let p = dir.join(temp_name(prefix));
                let f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .mode(OUTPUT_MODE)
                    .open(&p)
                    .with_context(|| format!("creating a temp file in {}", dir.display()))?;
                (f, Some(p))
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("creating a temp file in {}", dir.display())));
            }
        };
        Ok(OutputFile {
            file,
            target: target.to_owned(),
            dir,
            prefix,
            named,
        })
    }

    /// The file to write.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Makes the content durable and puts it at the target, replacing what was there.
    ///
    /// # Errors
    /// Write, link or rename errors.
    pub(crate) fn persist(mut self) -> Result<()> {
        let t = self.target.display().to_string();
        self.file
            .sync_all()
            .with_context(|| format!("writing {t}"))?;
        if self.named.is_none() {
            let p = self.dir.join(temp_name(self.prefix));
            let fd = format!("/proc/self/fd/{}", self.file.as_raw_fd());
            rustix::fs::linkat(
                rustix::fs::CWD,
                fd.as_str(),
                rustix::fs::CWD,
                &p,
                rustix::fs::AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(io::Error::from)
            .with_context(|| format!("naming the temp file of {t} in {}", self.dir.display()))?;
            self.named = Some(p);
        }
        if let Some(p) = &self.named {
            fs::rename(p, &self.target).with_context(|| format!("writing {t}"))?;
        }
        self.named = None;
        // The rename itself survives a crash once the directory is synced.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all(); // best effort: some filesystems refuse fsync on directories
        }
        Ok(())
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        if let Some(p) = self.named.take() {
            let _ = fs::remove_file(p); // a failed write: nothing may stay behind
        }
    }
}
