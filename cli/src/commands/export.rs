//! `strata export CONTAINER [-o FILE]`: the container's merged rootfs (image layers plus its
//! upper dir) as one tar, like `docker export`.
//!
//! The merged view is computed in process with `unionfs::UnionFs` (no FUSE mount, no
//! /dev/fuse needed): the same code that serves a mount resolves whiteouts, opaque dirs and
//! copied-up files, so the tar shows exactly what a mount of the container shows. The union
//! gets a private, empty work dir under the store's `tmp/`, so the container's own work dir is
//! never touched even while it is mounted. Entries are written in sorted order with their
//! real owners, modes, mtimes and user-visible xattrs; files with several links become tar
//! hard links (as `commit` and `docker export` write them): names of one lower file share the
//! union's inode, names of one upper file share the upper inode (the union numbers each merged
//! path apart, so the upper inode is looked up in the container's upper dir).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail};
use layerstore::archive::{TarEntrySpec, TarKind, TarWriter};
use unionfs::{EntryKind, FsOptions, Ino, ROOT_INO, UnionFs};

use super::save::OutputFile;
use crate::Globals;
use crate::progress::bytes_bar;
use crate::union::image_lowers;

/// Name prefix of the temp file `export -o` writes beside its target.
const EXPORT_PREFIX: &str = ".strata-export-";
/// Bytes read from the union per call.
const READ_CHUNK: u32 = 1 << 20;

/// Export a container's flattened rootfs as a tar (like `docker export`).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The container: name, ID or unique ID prefix.
    pub container: String,
    /// Output file (default: standard output, which must not be a terminal).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// Runs `export`.
///
/// # Errors
/// Unknown container, I/O errors of the store or the upper dir, write errors.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    if let Some(code) = crate::runtime::enter_userns_for_container(&g.root, &a.container)? {
        return Ok(code);
    }
    let store = g.store()?;
    let c = store.resolve_container(&a.container)?;
    let img = store.resolve_image(&c.image.to_string())?;
    let lowers = image_lowers(&store, &img)?;
    let tmp = store.root().join("tmp");
    let work = tempfile::Builder::new()
        .prefix("export-work-")
        .tempdir_in(&tmp)
        .with_context(|| format!("creating a work dir in {}", tmp.display()))?;
    let fs = UnionFs::new(
        lowers,
        Some((c.upper(), work.path().to_owned())),
        FsOptions {
            fsync_copy_up: false,
            ..FsOptions::default()
        },
    )
    .with_context(|| format!("opening the union of container {}", c.name))?;
    let bar = bytes_bar(g, None, "exporting");
    match &a.output {
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("refusing to write a tar to a terminal; use -o FILE or redirect the output");
            }
            let w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            write_tree(&fs, &c.upper(), w, &bar)?;
        }
        Some(path) => {
            // Written beside the target and renamed (see `OutputFile`).
            let out = OutputFile::create(path, EXPORT_PREFIX)?;
            let w = std::io::BufWriter::with_capacity(1 << 20, out.file());
            write_tree(&fs, &c.upper(), w, &bar)
                .with_context(|| format!("exporting to {}", path.display()))?;
            out.persist()?;
        }
    }
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}

fn secs(t: std::time::SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Walks the union depth first in name order and writes every entry. `upper` is the
/// container's upper dir, where hard links made in the container are told apart.
fn write_tree(
    fs: &UnionFs,
    upper: &Path,
    out: impl Write,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let mut w = TarWriter::new(out);
    // The first name written of each file with several names, by union inode and by upper
    // inode (`st_dev`, `st_ino`).
    let mut links: HashMap<Ino, String> = HashMap::new();
    let mut upper_links: HashMap<(u64, u64), String> = HashMap::new();
    let mut stack: Vec<(Ino, String, PathBuf)> = vec![(ROOT_INO, String::new(), PathBuf::new())];
    while let Some((dir, prefix, rel_dir)) = stack.pop() {
        let fh = fs
            .opendir(dir)
            .map_err(|e| anyhow::anyhow!("listing /{prefix}: {e}"))?;
        let items = fs.readdir(fh, 0);
        fs.release(fh);
        let items = items.map_err(|e| anyhow::anyhow!("listing /{prefix}: {e}"))?;
        let mut subdirs = Vec::new();
        for item in items {
            if item.name == "." || item.name == ".." {
                continue;
            }
            let name = String::from_utf8_lossy(item.name.as_bytes()).into_owned();
            let path = format!("{prefix}{name}");
            let e = fs
                .lookup(dir, &item.name)
                .map_err(|e| anyhow::anyhow!("/{path}: {e}"))?;
            let at = &e.attr;
            let mut xattrs = Vec::new();
            for n in fs.listxattr(at.ino).unwrap_or_default() {
                if let Ok(v) = fs.getxattr(at.ino, OsStr::from_bytes(&n)) {
                    xattrs.push((String::from_utf8_lossy(&n).into_owned(), v));
                }
            }
            xattrs.sort();
            let mut spec = TarEntrySpec {
                path: path.clone(),
                kind: TarKind::File,
                mode: at.perm,
                uid: u64::from(at.uid),
                gid: u64::from(at.gid),
                mtime: secs(at.mtime),
                size: 0,
                link: None,
                dev: (libc::major(at.rdev), libc::minor(at.rdev)),
                xattrs,
            };
            match at.kind {
                EntryKind::Dir => {
                    spec.kind = TarKind::Dir;
                    w.header(&spec)?;
                    subdirs.push((at.ino, format!("{path}/"), rel_dir.join(&item.name)));
                }
                EntryKind::Symlink => {
                    spec.kind = TarKind::Symlink;
                    let t = fs
                        .readlink(at.ino)
                        .map_err(|e| anyhow::anyhow!("/{path}: {e}"))?;
                    spec.link = Some(String::from_utf8_lossy(t.as_bytes()).into_owned());
                    w.header(&spec)?;
                }
                EntryKind::CharDev | EntryKind::BlockDev | EntryKind::Fifo => {
                    spec.kind = match at.kind {
                        EntryKind::CharDev => TarKind::CharDev,
                        EntryKind::BlockDev => TarKind::BlockDev,
                        _ => TarKind::Fifo,
                    };
                    w.header(&spec)?;
                }
                EntryKind::Socket | EntryKind::Whiteout => {} // not storable in a tar / hidden
                EntryKind::File => {
                    let upper_key = if e.immutable {
                        None
                    } else {
                        std::fs::symlink_metadata(upper.join(rel_dir.join(&item.name)))
                            .ok()
                            .filter(|m| m.is_file() && m.nlink() > 1)
                            .map(|m| (m.dev(), m.ino()))
                    };
                    if at.nlink > 1 || upper_key.is_some() {
                        let first = links
                            .get(&at.ino)
                            .or_else(|| upper_key.and_then(|k| upper_links.get(&k)));
                        if let Some(first) = first {
                            spec.kind = TarKind::HardLink;
                            spec.link = Some(first.clone());
                            w.header(&spec)?;
                            continue;
                        }
                        links.insert(at.ino, path.clone());
                        if let Some(k) = upper_key {
                            upper_links.insert(k, path.clone());
                        }
                    }
                    spec.size = at.size;
                    w.header(&spec)?;
                    let fh = fs
                        .open(at.ino, libc::O_RDONLY)
                        .map_err(|e| anyhow::anyhow!("opening /{path}: {e}"))?;
                    let mut off = 0u64;
                    let res = (|| -> Result<()> {
                        while off < at.size {
                            let want = u32::try_from((at.size - off).min(u64::from(READ_CHUNK)))
                                .unwrap_or(READ_CHUNK);
                            let buf = fs
                                .read(fh, off, want)
                                .map_err(|e| anyhow::anyhow!("reading /{path}: {e}"))?;
                            if buf.is_empty() {
                                bail!(
                                    "/{path} shrank while it was exported ({off} of {} bytes)",
                                    at.size
                                );
                            }
                            w.content(&buf)?;
                            bar.inc(buf.len() as u64);
                            off += buf.len() as u64;
                        }
                        Ok(())
                    })();
                    fs.release(fh);
                    res?;
                    w.end_entry(at.size)?;
                }
            }
        }
        // Depth first, in name order: push in reverse so the first name is walked first.
        stack.extend(subdirs.into_iter().rev());
    }
    w.finish()?;
    Ok(())
}
