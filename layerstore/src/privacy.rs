//! The store is private to its owner.
//!
//! Image layers hold files other users must not read (`/etc/shadow` is 0640 root:shadow in
//! most base images) and the index and bundles hold containers' environments (`-e
//! DB_PASSWORD=…`). Other users see an image's files only through a mount, where the kernel
//! checks each file's own mode (`default_permissions`). So the root and every directory the
//! store makes are [`DIR_MODE`], its own files [`FILE_MODE`] and objects [`OBJECT_MODE`]:
//! podman keeps its storage 0700, docker its root 0710.
//!
//! Modes are set explicitly where things are created, not by a process umask: the same
//! process serves FUSE mounts and starts the runtime, which create files inside containers
//! with the modes the container asks for, and writes `save -o`/`export -o` files for the user.
//!
//! A store made by an older strata (0755 dirs, 0644 index, 0444 objects) is tightened when it
//! is opened: see `tighten`.

use std::fs::{self, DirBuilder};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Mode of the store root and of every directory strata makes in it: owner only.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the store's own files (index and its WAL, lock, kept blobs, bundles, logs): they
/// hold containers' environments.
pub const FILE_MODE: u32 = 0o600;
/// Mode of object files: read-only (nothing may change a file whose name is its hash), and
/// for the owner only (the content may be a secret of the image).
pub const OBJECT_MODE: u32 = 0o400;
/// Permission bits that let group or others in.
const OTHERS: u32 = 0o077;

/// Creates `dir` and any missing parents with [`DIR_MODE`] (for paths inside the store).
/// An existing directory keeps its mode.
///
/// # Errors
/// I/O.
pub fn create_private_dir_all(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .ctx("create dir", dir)
}

/// Writes `data` to `path` (created or truncated) with [`FILE_MODE`], also when the file
/// existed with a wider mode: for files of the store that hold secrets (a runtime bundle's
/// `config.json` holds the container's environment).
///
/// # Errors
/// I/O.
pub fn write_private_file(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
        .ctx("create", path)?;
    f.set_permissions(fs::Permissions::from_mode(FILE_MODE))
        .ctx("chmod", path)?;
    f.write_all(data).ctx("write", path)
}

/// Creates the store root: its parents as any directory (they are the user's), the root
/// itself with [`DIR_MODE`].
pub(crate) fn create_root(root: &Path) -> Result<()> {
    if root.is_dir() {
        return Ok(());
    }
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).ctx("create dir", parent)?;
    }
    match DirBuilder::new().mode(DIR_MODE).create(root) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists && root.is_dir() => Ok(()),
        r => r.ctx("create dir", root),
    }
}

/// What `tighten` changed, for the one message the CLI prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    /// The store root.
    pub root: std::path::PathBuf,
    /// The widest mode found on the root or the index (e.g. `0o755`).
    pub was: u32,
    /// Files and directories whose mode was changed.
    pub changed: u64,
}

impl std::fmt::Display for Tightened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the store at {} was readable by other users (mode {:04o}); made it private to its \
             owner: {} paths changed (directories {DIR_MODE:04o}, files {FILE_MODE:04o}, \
             objects {OBJECT_MODE:04o})",
            self.root.display(),
            self.was,
            self.changed
        )
    }
}

/// The mode of the root or the index when either lets group or others in (the mark of a store
/// made by an older strata, or opened up by hand); two `stat`s.
pub(crate) fn too_open(root: &Path, db: &Path) -> Option<u32> {
    [root, db]
        .iter()
        .filter_map(|p| fs::symlink_metadata(p).ok())
        .map(|m| m.permissions().mode() & 0o7777)
        .filter(|m| m & OTHERS != 0)
        .max()
}

/// Makes an existing store private: objects [`OBJECT_MODE`], kept blobs, the index, its WAL,
/// the lock and bundle files [`FILE_MODE`], the directories of the layout [`DIR_MODE`]; the
/// root last, so an interrupted run is redone at the next open. A container's `upper/`,
/// `work/` and `rootfs/` keep their modes (they are the container's own files, and `rootfs/`
/// may be a live mount), as do `tmp/` and `run/` below their own directory.
///
/// # Errors
/// I/O (a store owned by another user cannot be changed: `EPERM`).
pub(crate) fn tighten(root: &Path, was: u32) -> Result<Tightened> {
    let mut t = Tightened {
        root: root.to_owned(),
        was,
        changed: 0,
    };
    for e in fs::read_dir(root).ctx("read dir", root)? {
        let e = e.ctx("read dir", root)?;
        let p = e.path();
        let ft = e.file_type().ctx("stat", &p)?;
        if ft.is_file() {
            restrict(&p, FILE_MODE, &mut t)?;
        } else if ft.is_dir() {
            match e.file_name().to_str() {
                Some("objects") => restrict_tree(&p, OBJECT_MODE, &mut t)?,
                Some("blobs") => restrict_tree(&p, FILE_MODE, &mut t)?,
                Some(crate::store::CONTAINERS_DIR) => restrict_containers(&p, &mut t)?,
                _ => restrict(&p, DIR_MODE, &mut t)?,
            }
        }
    }
    restrict(root, DIR_MODE, &mut t)?;
    Ok(t)
}

/// Sets `want` on `p` when its mode lets group or others in.
fn restrict(p: &Path, want: u32, t: &mut Tightened) -> Result<()> {
    let m = fs::symlink_metadata(p).ctx("stat", p)?;
    if m.file_type().is_symlink() || m.permissions().mode() & OTHERS == 0 {
        return Ok(());
    }
    fs::set_permissions(p, fs::Permissions::from_mode(want)).ctx("chmod", p)?;
    t.changed += 1;
    Ok(())
}

/// [`restrict`] on a directory tree: directories [`DIR_MODE`], files `file_mode`.
fn restrict_tree(dir: &Path, file_mode: u32, t: &mut Tightened) -> Result<()> {
    restrict(dir, DIR_MODE, t)?;
    for e in fs::read_dir(dir).ctx("read dir", dir)? {
        let e = e.ctx("read dir", dir)?;
        let p = e.path();
        let ft = e.file_type().ctx("stat", &p)?;
        if ft.is_dir() {
            restrict_tree(&p, file_mode, t)?;
        } else if ft.is_file() {
            restrict(&p, file_mode, t)?;
        }
    }
    Ok(())
}

/// `containers/`, each `containers/<id>/` and its `bundle/`; nothing of the container's tree.
fn restrict_containers(dir: &Path, t: &mut Tightened) -> Result<()> {
    restrict(dir, DIR_MODE, t)?;
    for e in fs::read_dir(dir).ctx("read dir", dir)? {
        let e = e.ctx("read dir", dir)?;
        let c = e.path();
        if !e.file_type().ctx("stat", &c)?.is_dir() {
            continue;
        }
        restrict(&c, DIR_MODE, t)?;
        let bundle = c.join(BUNDLE_DIR);
        if bundle.is_dir() {
            restrict_tree(&bundle, FILE_MODE, t)?;
        }
    }
    Ok(())
}

/// The runtime bundle of a container (`containers/<id>/bundle/config.json`), written by the CLI.
const BUNDLE_DIR: &str = "bundle";

/// Turns an error of `tighten` into the message the CLI prints instead of the notice.
pub(crate) fn failed(root: &Path, was: u32, e: &Error) -> String {
    format!(
        "the store at {} is readable by other users (mode {was:04o}) and could not be made \
         private: {}; run 'chmod -R go-rwx {}' as its owner",
        root.display(),
        e.chain_text(),
        root.display()
    )
}
