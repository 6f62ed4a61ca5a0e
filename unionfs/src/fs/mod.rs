//! The union filesystem itself, without FUSE: plain methods returning [`Result`].
//!
//! # State
//! An `InodeTable` maps inode numbers to merged paths (parent inode + name, so a renamed
//! directory carries its subtree along) and remembers, per inode, the lower nodes it merges and
//! whether an upper copy exists. Lookups refresh that state from disk; the union's own
//! operations update it.
//!
//! # Lock order
//! 1. `ns` (`RwLock<()>`): taken for writing by operations that remove or move names (`unlink`,
//!    `rmdir`, `rename`), for reading by everything that adds names or copies up metadata.
//!    Lookups, reads and `getattr` never take it; the data of a copy-up for `open` is copied
//!    with only the inode's copy-up lock held (`fill`), so nothing waits for a big copy but
//!    other openers of that same file.
//! 2. Per-inode copy-up locks (`NodeState::copy_lock`): a file's before any directory's, a
//!    directory's before its ancestors'. (Directory copy-up never takes a file's lock, so a file
//!    copy-up may copy up the parents of all its hard-link names.)
//! 3. `table` (`RwLock<InodeTable>`): held only for map operations, never across I/O.
//! 4. `handles` (`Mutex`): held only to insert, find or remove a handle.

mod inode;
pub(crate) mod upper;
pub mod write;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

pub use self::inode::{Ino, ROOT_INO};
pub(crate) use self::inode::{InodeTable, LowerRef, NodeState};
use self::upper::{OPAQUE_TRUSTED, OPAQUE_USER, Upper};
use crate::dirtree::{OPAQUE_MARKER, WHITEOUT_PREFIX, is_whiteout_dev, kind_of};
use crate::error::{FsError, Result};
use crate::lower::{EntryKind, LowerAttr, LowerTree, Marks, Redirect, is_internal_xattr};
use crate::marker;
use crate::xattr;

/// A file handle number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

/// Attributes of a merged inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number (stable for the path for the life of the mount).
    pub ino: Ino,
    /// Kind (never `Whiteout`).
    pub kind: EntryKind,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number for devices.
    pub rdev: u64,
    /// Access time.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Status change time.
    pub ctime: SystemTime,
}

/// A looked-up entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its attributes.
    pub attr: Attr,
    /// Served purely from immutable lower layers: the kernel may cache it for long.
    pub immutable: bool,
}

/// One item of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirItem {
    /// Inode number.
    pub ino: Ino,
    /// Kind.
    pub kind: EntryKind,
    /// Name.
    pub name: OsString,
}

/// Filesystem-wide numbers for `statfs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Maximum name length.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

/// Who asks (for the owner of new files).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
}

#[derive(Debug)]
enum HandleData {
    Upper(File),
    /// `file`: the lower content file (`None`: the tree reads it for us), opened on first
    /// use: a `tar` of files in the page cache never reads them (warm `tar` of the bench
    /// image: 7 % less daemon CPU without an open and a close per file).
    Lower {
        lower: LowerRef,
        file: OnceLock<Option<File>>,
    },
    Dir(Arc<[DirItem]>),
}

#[derive(Debug)]
pub(crate) struct Handle {
    ino: Ino,
    data: HandleData,
    /// A lower handle whose file has since been copied up reads the copy, opened on its
    /// first read after the copy-up, as kernel overlayfs does: `exec 3<f; echo x >> f` and
    /// the reader on fd 3 then sees the `x`.
    copied_up: OnceLock<File>,
}

/// Options of the filesystem layer.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// fsync copied-up files and dirs before they are renamed into place (kernel overlayfs does).
    pub fsync_copy_up: bool,
    /// The kernel writeback cache is on: it positions appends itself and flushes dirty pages
    /// through any writable handle, so upper files are never opened with `O_APPEND`.
    pub writeback_cache: bool,
    /// Directories with lower content may be renamed (by a redirect in the upper). Off, as
    /// overlayfs's and fuse-overlayfs's `redirect_dir=off`, such a rename fails with `EXDEV`
    /// (and `mv` falls back to copying).
    pub redirect_dir: bool,
    /// Metadata changes and renames of lower files copy metadata only (a placeholder with the
    /// `overlay.metacopy` marker). Off, as overlayfs's `metacopy=off`, they copy the data.
    pub metacopy: bool,
    /// A chown that fails on disk succeeds anyway (fuse-overlayfs does this when ids are
    /// squashed: the owner shown never changes).
    pub ignore_chown_errors: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            fsync_copy_up: true,
            writeback_cache: false,
            redirect_dir: true,
            metacopy: true,
            ignore_chown_errors: false,
        }
    }
}

/// What a lookup found, before it is put into the table.
#[derive(Debug)]
struct Resolved {
    kind: EntryKind,
    lower: Vec<LowerRef>,
    /// `Some` only where the lower content comes from another path (redirect, metacopy).
    lower_origin: Option<PathBuf>,
    upper: bool,
    metacopy: bool,
    origin: Option<LowerRef>,
    lower_nlink: Option<u32>,
}

/// One listing of a directory.
#[derive(Debug)]
struct Snapshot {
    /// The high half of its offsets (32 bits).
    id: u64,
    /// `ns_gen` when it was taken.
    generation: u64,
    items: Arc<[DirItem]>,
    /// Its directory was served purely from the lowers (it cannot change).
    lower_only: bool,
}

/// The kept listings of a directory.
#[derive(Debug, Default)]
struct Listings {
    current: Option<Snapshot>,
    previous: Option<Snapshot>,
    /// The id of a lower-only listing let go once read to its end: an offset of it is served
    /// from the same listing rebuilt from the lowers, which never change, even if the
    /// directory has changed since.
    dropped: Option<u64>,
}

/// The union of lower trees and an optional upper directory.
#[derive(Debug)]
pub struct UnionFs {
    lowers: Vec<Arc<dyn LowerTree>>,
    upper: Option<Upper>,
    table: RwLock<InodeTable>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    ns: RwLock<()>,
    /// Directory listings (with `.` and `..`), the last two of each directory listed, so that
    /// a read that goes on from an offset of an older listing still finds it. See
    /// [`UnionFs::readdir_at`]. Lock order: after `table`.
    listings: Mutex<HashMap<Ino, Listings>>,
    /// Bumped after every operation that adds, removes or renames a name: a listing taken at
    /// an older value may be stale (unless its directory is served purely from the lowers).
    ns_gen: AtomicU64,
    /// Counts listings; a listing's id (1..=2^32-1, the high half of its offsets) comes from it.
    next_listing: AtomicU64,
    euid_root: bool,
    writeback_cache: bool,
    redirect_dir: bool,
    metacopy: bool,
    ignore_chown_errors: bool,
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = u32::try_from(nsec).unwrap_or(0);
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec.unsigned_abs(), nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec.into())
    }
}

impl UnionFs {
    /// Builds the union. `lowers` are top first; `upper` is `(upper dir, work dir)`.
    ///
    /// # Errors
    /// When there is neither a lower nor an upper, when the upper or work dir is unusable, or
    /// when the work dir cannot be cleaned.
    pub fn new(
        lowers: Vec<Arc<dyn LowerTree>>,
        upper: Option<(PathBuf, PathBuf)>,
        options: FsOptions,
    ) -> Result<UnionFs> {
        if lowers.is_empty() && upper.is_none() {
            return Err(FsError::Config(
                "a union needs at least one lower or an upper".into(),
            ));
        }
        let upper = match upper {
            Some((u, w)) => Some(Upper::open(u, w, options.fsync_copy_up)?),
            None => None,
        };
        let mut root = NodeState::new(ROOT_INO, OsString::new(), EntryKind::Dir);
        root.lower = lowers
            .iter()
            .enumerate()
            .map(|(layer, t)| LowerRef {
                layer,
                node: t.root(),
            })
            .collect();
        root.upper = upper.is_some();
        if let Some(u) = &upper
            && let Ok(Some(v)) = xattr::get(&u.dir, OPAQUE_TRUSTED)
            && v == b"y"
        {
            root.lower.clear();
        }
        root.lookups = 1;
        Ok(UnionFs {
            lowers,
            upper,
            table: RwLock::new(InodeTable::new(root)),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            ns: RwLock::new(()),
            listings: Mutex::new(HashMap::new()),
            ns_gen: AtomicU64::new(0),
            next_listing: AtomicU64::new(0),
            euid_root: rustix::process::geteuid().is_root(),
            writeback_cache: options.writeback_cache,
            redirect_dir: options.redirect_dir,
            metacopy: options.metacopy,
            ignore_chown_errors: options.ignore_chown_errors,
        })
    }

    /// Whether the union has no upper directory.
    pub fn is_read_only(&self) -> bool {
        self.upper.is_none()
    }

    fn upper(&self) -> Result<&Upper> {
        self.upper.as_ref().ok_or(FsError::ReadOnly)
    }

    fn state(&self, ino: Ino) -> Result<NodeState> {
        self.table
            .read()
            .get(ino)
            .cloned()
            .ok_or(FsError::StaleInode(ino.0))
    }

    /// The path in the lower layers whose content the inode merges (see `lower_origin`).
    fn lower_path_of(&self, ino: Ino) -> Result<PathBuf> {
        self.table
            .read()
            .lower_path(ino)
            .ok_or(FsError::StaleInode(ino.0))
    }

    fn path_of(&self, ino: Ino) -> Result<PathBuf> {
        self.table
            .read()
            .path(ino)
            .ok_or(FsError::StaleInode(ino.0))
    }

    fn lower_attr(&self, r: LowerRef) -> Result<LowerAttr> {
        self.lowers[r.layer]
            .getattr(r.node)
            .map_err(FsError::lower(r.layer))
    }

    /// The lower nodes for `name` below the merged lower stack `stack` (top first): dirs merge
    /// down to the first opaque one; a non-dir or a whiteout ends the search.
    ///
    /// Markers in lower layers (a layer that was once an upper, see [`crate::Marks`]) are
    /// followed as kernel overlayfs does: a redirected directory merges the layers below at
    /// its redirect; a metadata-only file is followed by its data in the layers below, so a
    /// non-directory's nodes are `[metadata, …, data]` (one node when they are the same).
    fn lower_child(
        &self,
        stack: &[LowerRef],
        name: &OsStr,
    ) -> Result<(Vec<LowerRef>, Option<EntryKind>)> {
        let mut out = Vec::new();
        let mut kind = None;
        for (i, r) in stack.iter().enumerate() {
            let tree = &self.lowers[r.layer];
            let Some(e) = tree.lookup(r.node, name).map_err(FsError::lower(r.layer))? else {
                continue;
            };
            let child = LowerRef {
                layer: r.layer,
                node: e.node,
            };
            // Only a layer with layers below it can point into them.
            let marks = |k: EntryKind| -> Result<Marks> {
                if r.layer + 1 < self.lowers.len() && matches!(k, EntryKind::Dir | EntryKind::File)
                {
                    tree.marks(e.node).map_err(FsError::lower(r.layer))
                } else {
                    Ok(Marks::default())
                }
            };
            match e.kind {
                EntryKind::Whiteout => break,
                EntryKind::Dir => {
                    if kind.is_some_and(|k| k != EntryKind::Dir) {
                        break;
                    }
                    kind = Some(EntryKind::Dir);
                    out.push(child);
                    if tree
                        .getattr(e.node)
                        .map_err(FsError::lower(r.layer))?
                        .opaque
                    {
                        break;
                    }
                    if let Some(rd) = marks(EntryKind::Dir)?.redirect {
                        let (below, k) = self.redirect_target(&stack[i + 1..], r.layer, &rd)?;
                        if k == Some(EntryKind::Dir) {
                            out.extend(below);
                        }
                        break;
                    }
                }
                k => {
                    if out.is_empty() {
                        kind = Some(k);
                        out.push(child);
                        let m = marks(k)?;
                        if m.metacopy {
                            let (data, dk) = match &m.redirect {
                                Some(rd) => self.redirect_target(&stack[i + 1..], r.layer, rd)?,
                                None => self.lower_child(&stack[i + 1..], name)?,
                            };
                            if dk == Some(EntryKind::File) {
                                out.extend(data);
                            }
                        }
                    }
                    break;
                }
            }
        }
        Ok((out, kind))
    }

    /// Where a redirect found in `layer` points: an absolute one from the roots of the layers
    /// below `layer`, a relative one in `below` (the parent's stack below `layer`).
    fn redirect_target(
        &self,
        below: &[LowerRef],
        layer: usize,
        rd: &Redirect,
    ) -> Result<(Vec<LowerRef>, Option<EntryKind>)> {
        match rd {
            Redirect::Absolute(p) => self.lower_at_from(layer + 1, p),
            Redirect::Relative(n) => self.lower_child(below, n),
        }
    }

    /// The lower stack at a path of the lower layers (for redirects and metacopy origins).
    fn lower_at(&self, path: &Path) -> Result<(Vec<LowerRef>, Option<EntryKind>)> {
        self.lower_at_from(0, path)
    }

    /// The stack at `path` in the layers from `first` down.
    fn lower_at_from(
        &self,
        first: usize,
        path: &Path,
    ) -> Result<(Vec<LowerRef>, Option<EntryKind>)> {
        let mut stack: Vec<LowerRef> = self
            .lowers
            .iter()
            .enumerate()
            .skip(first)
            .map(|(layer, t)| LowerRef {
                layer,
                node: t.root(),
            })
            .collect();
        if stack.is_empty() {
            return Ok((Vec::new(), None));
        }
        let mut kind = Some(EntryKind::Dir);
        for c in path.components() {
            if kind != Some(EntryKind::Dir) {
                return Ok((Vec::new(), None));
            }
            (stack, kind) = self.lower_child(&stack, c.as_os_str())?;
            if stack.is_empty() {
                return Ok((Vec::new(), None));
            }
        }
        Ok((stack, kind))
    }

    /// Resolves `parent/name` from disk: upper first, then the parent's lower stack.
    fn resolve(
        &self,
        pino: Ino,
        parent: &NodeState,
        ppath: &Path,
        name: &OsStr,
    ) -> Result<Option<Resolved>> {
        if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Ok(None); // marker spelling: never a visible name
        }
        if parent.kind != EntryKind::Dir {
            return Err(FsError::NotDir);
        }
        if let (Some(u), true) = (&self.upper, parent.upper) {
            let updir = u.path(ppath);
            let up = updir.join(name);
            match up.symlink_metadata() {
                Ok(md) if is_whiteout_dev(&md) => return Ok(None),
                Ok(md) => {
                    return self.resolve_upper(pino, parent, &up, &md, name).map(Some);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(FsError::io("stat", up)(e)),
            }
            let (lower, kind) = self.lower_child(&parent.lower, name)?;
            let Some(kind) = kind else { return Ok(None) };
            if u.has_wh_file(&updir, name) {
                return Ok(None);
            }
            return self.resolved_lower(lower, kind).map(Some);
        }
        let (lower, kind) = self.lower_child(&parent.lower, name)?;
        match kind {
            Some(kind) => self.resolved_lower(lower, kind).map(Some),
            None => Ok(None),
        }
    }

    fn resolved_lower(&self, lower: Vec<LowerRef>, kind: EntryKind) -> Result<Resolved> {
        let mut origin = None;
        let mut lower_nlink = None;
        if kind != EntryKind::Dir
            && let Some(r) = lower.first()
        {
            let a = self.lower_attr(*r)?;
            if a.nlink > 1 {
                origin = Some(*r);
                lower_nlink = Some(a.nlink);
            }
        }
        Ok(Resolved {
            kind,
            lower,
            lower_origin: None,
            upper: false,
            metacopy: false,
            origin,
            lower_nlink,
        })
    }

    fn resolve_upper(
        &self,
        pino: Ino,
        parent: &NodeState,
        up: &Path,
        md: &std::fs::Metadata,
        name: &OsStr,
    ) -> Result<Resolved> {
        let kind = kind_of(md);
        let mut r = Resolved {
            kind,
            lower: Vec::new(),
            lower_origin: None,
            upper: true,
            metacopy: false,
            origin: None,
            lower_nlink: None,
        };
        if !matches!(kind, EntryKind::Dir | EntryKind::File) {
            return Ok(r);
        }
        let parent_lower = || self.lower_path_of(pino);
        // One llistxattr; values only for marker names.
        let names = xattr::list(up).unwrap_or_default();
        let has_y = |n: &[u8]| {
            names.iter().any(|x| x == n) && matches!(xattr::get(up, n), Ok(Some(v)) if v == b"y")
        };
        let marks = marker::from_names(&names, |n| xattr::get(up, n))
            .map_err(FsError::io("read markers", up))?;
        // Where a redirect points: the stack there and the path (in the lowers) it names.
        let target = |rd: &Redirect| -> Result<(Vec<LowerRef>, Option<EntryKind>, PathBuf)> {
            Ok(match rd {
                Redirect::Absolute(p) => {
                    let (stack, k) = self.lower_at(p)?;
                    (stack, k, p.clone())
                }
                Redirect::Relative(n) => {
                    let (stack, k) = self.lower_child(&parent.lower, n)?;
                    (stack, k, parent_lower()?.join(n))
                }
            })
        };
        if kind == EntryKind::Dir {
            let opaque = has_y(OPAQUE_TRUSTED)
                || has_y(OPAQUE_USER)
                || up.join(OPAQUE_MARKER).symlink_metadata().is_ok();
            if opaque {
                return Ok(r);
            }
            if let Some(rd) = &marks.redirect {
                let (stack, k, p) = target(rd)?;
                if k == Some(EntryKind::Dir) {
                    r.lower = stack;
                }
                r.lower_origin = Some(p);
                return Ok(r);
            }
            let (stack, k) = self.lower_child(&parent.lower, name)?;
            if k == Some(EntryKind::Dir) {
                r.lower = stack;
            }
        } else if marks.metacopy {
            let (stack, k, origin) = match &marks.redirect {
                Some(rd) => {
                    let (stack, k, p) = target(rd)?;
                    (stack, k, Some(p))
                }
                None => {
                    let (stack, k) = self.lower_child(&parent.lower, name)?;
                    (stack, k, None)
                }
            };
            if k == Some(EntryKind::File) {
                r.metacopy = true;
                r.lower = stack;
                r.lower_origin = origin;
            }
        }
        Ok(r)
    }

    /// Puts a resolution into the table and returns the inode.
    fn attach(&self, parent: Ino, name: &OsStr, r: Resolved) -> Ino {
        let mut t = self.table.write();
        let before = t.child(parent, name);
        let ino = t.attach(parent, name, r.kind, r.origin);
        if before.is_some_and(|b| b != ino) {
            // The name now has another number (a hard link joined its group): a kept listing
            // of the parent would show the old one.
            self.listings.lock().remove(&parent);
        }
        if let Some(n) = t.get_mut(ino) {
            // A hard-linked inode already copied up keeps its upper state.
            let keep_upper = r.origin.is_some() && n.upper && !r.upper;
            if !keep_upper {
                n.lower = r.lower.into_iter().collect();
                n.lower_origin = r.lower_origin.map(PathBuf::into_boxed_path);
                n.upper = r.upper;
                n.metacopy = r.metacopy;
            }
            if n.nlink.is_none() {
                n.nlink = r.lower_nlink;
            }
            n.kind = r.kind;
        }
        ino
    }

    /// Looks `name` up in `parent` and counts one kernel reference.
    ///
    /// # Errors
    /// `NotFound` when the merged view has no such name.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> Result<Entry> {
        let ino = self.lookup_ino(parent, name)?;
        let e = self.entry(ino)?;
        if let Some(n) = self.table.write().get_mut(ino) {
            n.lookups += 1;
        }
        Ok(e)
    }

    fn lookup_ino(&self, parent: Ino, name: &OsStr) -> Result<Ino> {
        let (pstate, ppath) = {
            let t = self.table.read();
            let s = t
                .get(parent)
                .cloned()
                .ok_or(FsError::StaleInode(parent.0))?;
            (s, t.path(parent).ok_or(FsError::StaleInode(parent.0))?)
        };
        let r = self
            .resolve(parent, &pstate, &ppath, name)?
            .ok_or(FsError::NotFound)?;
        let linked_elsewhere = r.origin.is_some() && !r.upper;
        let ino = self.attach(parent, name, r);
        if linked_elsewhere {
            self.link_copied_alias(ino, parent, name);
        }
        Ok(ino)
    }

    /// Releases `n` kernel references. Inode numbers stay reserved for their path.
    pub fn forget(&self, ino: Ino, n: u64) {
        if let Some(s) = self.table.write().get_mut(ino) {
            s.lookups = s.lookups.saturating_sub(n);
        }
    }

    fn entry(&self, ino: Ino) -> Result<Entry> {
        let s = self.state(ino)?;
        let attr = self.attr_of(ino, &s, None)?;
        Ok(Entry {
            attr,
            immutable: !s.upper,
        })
    }

    /// Attributes of an inode (`fh`: an open handle, used once the name is gone).
    ///
    /// # Errors
    /// `StaleInode` for unknown inodes; I/O errors of the upper or lower.
    pub fn getattr(&self, ino: Ino, fh: Option<Fh>) -> Result<Attr> {
        let s = self.state(ino)?;
        self.attr_of(ino, &s, fh)
    }

    /// Attributes of an inode as an [`Entry`]: also whether it is served purely from the
    /// lowers (so the kernel may keep them for long).
    ///
    /// # Errors
    /// As `getattr`.
    pub fn getattr_entry(&self, ino: Ino, fh: Option<Fh>) -> Result<Entry> {
        let s = self.state(ino)?;
        Ok(Entry {
            attr: self.attr_of(ino, &s, fh)?,
            immutable: !s.upper,
        })
    }

    /// An open upper file of `ino`: the handle `fh` when it is one, else (for an inode with no
    /// name left, whose path is gone) any open upper handle of it. The kernel sends no handle
    /// with `fstat`, `fchmod`, `fchown` or `futimens`, so an unlinked file is found by inode.
    pub(crate) fn upper_handle(
        &self,
        ino: Ino,
        s: &NodeState,
        fh: Option<Fh>,
    ) -> Option<Arc<Handle>> {
        let is_upper = |h: &Handle| h.ino == ino && matches!(h.data, HandleData::Upper(_));
        if let Some(h) = fh.and_then(|f| self.handle(f).ok())
            && is_upper(&h)
        {
            return Some(h);
        }
        if !s.unlinked {
            return None;
        }
        self.handles.lock().values().find(|h| is_upper(h)).cloned()
    }

    fn attr_of(&self, ino: Ino, s: &NodeState, fh: Option<Fh>) -> Result<Attr> {
        if s.unlinked {
            if let Some(h) = self.upper_handle(ino, s, fh)
                && let HandleData::Upper(f) = &h.data
            {
                let md = f
                    .metadata()
                    .map_err(FsError::io("fstat", "<unlinked file>"))?;
                let mut a = attr_from_md(ino, &md);
                a.nlink = 0;
                return Ok(a);
            }
            if let Some(a) = &s.gone {
                return Ok((**a).clone());
            }
        }
        if s.upper {
            let md = match self.upper_handle(ino, s, fh).as_deref() {
                Some(Handle {
                    data: HandleData::Upper(f),
                    ..
                }) => f.metadata().map_err(FsError::io("fstat", "<handle>"))?,
                _ => {
                    let p = self.upper()?.path(&self.path_of(ino)?);
                    p.symlink_metadata().map_err(FsError::io("stat", &p))?
                }
            };
            let mut a = attr_from_md(ino, &md);
            if s.metacopy
                && let Some(r) = s.lower.last()
            {
                let la = self.lower_attr(*r)?;
                a.size = la.size;
                a.blocks = la.size.div_ceil(512);
            }
            if s.kind == EntryKind::Dir && !s.lower.is_empty() {
                a.nlink = 1; // merged dir: like overlayfs, "unknown"
            }
            if let Some(n) = s.nlink {
                a.nlink = n;
            }
            if s.unlinked {
                a.nlink = 0;
            }
            return Ok(a);
        }
        let r = s.lower.first().ok_or(FsError::StaleInode(ino.0))?;
        let mut la = self.lower_attr(*r)?;
        if let Some(data) = s.lower.get(1..).and_then(<[LowerRef]>::last)
            && la.kind == EntryKind::File
        {
            // A metadata-only file of a lower layer: its data (and size) is further down.
            la.size = self.lower_attr(*data)?.size;
        }
        let t = time(la.mtime, la.mtime_nsec.into());
        Ok(Attr {
            ino,
            kind: la.kind,
            size: la.size,
            blocks: la.size.div_ceil(512),
            perm: la.mode,
            nlink: if s.unlinked {
                0
            } else if la.kind == EntryKind::Dir && s.lower.len() > 1 {
                1
            } else {
                s.nlink.unwrap_or(la.nlink)
            },
            uid: la.uid,
            gid: la.gid,
            rdev: la.rdev,
            atime: t,
            mtime: t,
            ctime: t,
        })
    }

    fn handle(&self, fh: Fh) -> Result<Arc<Handle>> {
        self.handles
            .lock()
            .get(&fh.0)
            .cloned()
            .ok_or(FsError::BadHandle(fh.0))
    }

    fn add_handle(&self, ino: Ino, data: HandleData) -> Fh {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(
            fh,
            Arc::new(Handle {
                ino,
                data,
                copied_up: OnceLock::new(),
            }),
        );
        Fh(fh)
    }

    /// Closes a file or directory handle.
    pub fn release(&self, fh: Fh) {
        self.handles.lock().remove(&fh.0);
    }

    /// The target of a symlink.
    ///
    /// # Errors
    /// `Invalid` when the inode is not a symlink.
    pub fn readlink(&self, ino: Ino) -> Result<OsString> {
        let s = self.state(ino)?;
        if s.kind != EntryKind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        if s.upper {
            let p = self.upper()?.path(&self.path_of(ino)?);
            return Ok(std::fs::read_link(&p)
                .map_err(FsError::io("readlink", &p))?
                .into_os_string());
        }
        let r = s.lower.first().ok_or(FsError::StaleInode(ino.0))?;
        self.lowers[r.layer]
            .readlink(r.node)
            .map_err(FsError::lower(r.layer))
    }

    /// The merged listing of a directory: upper entries, then each lower's, top down; names
    /// already seen or whited out are skipped. Sorted by name.
    fn list_merged(&self, ino: Ino) -> Result<Vec<(OsString, EntryKind)>> {
        self.list_merged_from(ino, true)
    }

    /// The merged names of a directory, sorted; without `with_upper`, what its lowers alone
    /// hold (its listing before any change).
    fn list_merged_from(&self, ino: Ino, with_upper: bool) -> Result<Vec<(OsString, EntryKind)>> {
        let s = self.state(ino)?;
        if s.kind != EntryKind::Dir {
            return Err(FsError::NotDir);
        }
        let mut seen: BTreeMap<OsString, EntryKind> = BTreeMap::new();
        let mut hidden: HashSet<OsString> = HashSet::new();
        if s.upper && with_upper {
            let p = self.upper()?.path(&self.path_of(ino)?);
            for e in std::fs::read_dir(&p).map_err(FsError::io("read dir", &p))? {
                let e = e.map_err(FsError::io("read dir", &p))?;
                let name = e.file_name();
                if let Some(t) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                    hidden.insert(OsStr::from_bytes(t).to_owned());
                    continue;
                }
                // d_type tells the kind; only char devices need a stat (0/0 is a whiteout).
                let ft = e.file_type().map_err(FsError::io("stat", e.path()))?;
                let kind = if ft.is_dir() {
                    EntryKind::Dir
                } else if ft.is_file() {
                    EntryKind::File
                } else if ft.is_symlink() {
                    EntryKind::Symlink
                } else {
                    let md = e.metadata().map_err(FsError::io("stat", e.path()))?;
                    if is_whiteout_dev(&md) {
                        hidden.insert(name);
                        continue;
                    }
                    kind_of(&md)
                };
                seen.insert(name, kind);
            }
        }
        for r in &s.lower {
            let l = self.lowers[r.layer]
                .read_dir(r.node)
                .map_err(FsError::lower(r.layer))?;
            for e in l.entries {
                if seen.contains_key(&e.name) || hidden.contains(&e.name) {
                    continue;
                }
                if e.kind == EntryKind::Whiteout {
                    hidden.insert(e.name);
                } else {
                    seen.insert(e.name, e.kind);
                }
            }
            if l.opaque {
                break;
            }
        }
        Ok(seen.into_iter().collect())
    }

    /// Opens a directory: the merged listing is taken now and kept in the handle, so offsets
    /// stay stable however the reads are split.
    ///
    /// # Errors
    /// `NotDir`, or I/O errors while listing.
    pub fn opendir(&self, ino: Ino) -> Result<Fh> {
        let (_, items, _) = self.listing(ino, None)?;
        Ok(self.add_handle(ino, HandleData::Dir(items)))
    }

    /// Reads a directory without a handle (the FUSE adapter answers OPENDIR with `ENOSYS`, so
    /// the kernel sends none and caches listings itself): calls `f` with each item from
    /// `offset` on and the offset of the item after it, until `f` returns `false`.
    ///
    /// An offset names a listing and a position in it (`id << 32 | position`), and the last
    /// two listings of each directory are kept: a read split over several calls goes on in the
    /// listing it started with, whatever changed in between, so no entry is skipped or
    /// repeated. Offset 0 takes a new listing when a name may have changed since the last one
    /// (a directory served purely from the lowers never changes).
    ///
    /// # Errors
    /// `NotDir`, or I/O errors while listing.
    pub fn readdir_at(
        &self,
        ino: Ino,
        offset: u64,
        mut f: impl FnMut(u64, &DirItem) -> bool,
    ) -> Result<()> {
        let (want, start) = if offset == 0 {
            (None, 0)
        } else {
            (
                Some(offset >> 32),
                usize::try_from(offset & 0xffff_ffff).unwrap_or(usize::MAX),
            )
        };
        let (id, items, lower_only) = self.listing(ino, want)?;
        for (i, item) in items.iter().enumerate().skip(start) {
            if !f((id << 32) | (i as u64 + 1), item) {
                return Ok(());
            }
        }
        // Once the kernel has read to the end (the call past the last item), the listing of a
        // directory served purely from the lowers is not kept: the kernel caches it, and
        // should it ask again from an offset, the same listing (sorted, same inode numbers) is
        // taken anew. 100k entries kept 9 MB of names.
        if lower_only && start >= items.len() {
            let mut all = self.listings.lock();
            if let Some(l) = all.get_mut(&ino) {
                if l.previous.as_ref().is_some_and(|s| s.id == id) {
                    l.previous = None;
                }
                if l.current.as_ref().is_some_and(|s| s.id == id) {
                    l.current = l.previous.take();
                }
                l.dropped = Some(id);
            }
        }
        Ok(())
    }

    /// The listing `want` of a directory if it is still kept, else the current one (taken
    /// anew when it may be stale).
    fn listing(&self, ino: Ino, want: Option<u64>) -> Result<(u64, Arc<[DirItem]>, bool)> {
        if let Some(want) = want
            && let Some(l) = self.listings.lock().get(&ino)
            && let Some(snap) = [&l.current, &l.previous]
                .into_iter()
                .flatten()
                .find(|s| s.id == want)
        {
            return Ok((snap.id, snap.items.clone(), snap.lower_only));
        }
        let s = self.state(ino)?;
        if s.kind != EntryKind::Dir {
            return Err(FsError::NotDir);
        }
        // Read before listing: a change that lands during the listing bumps it after.
        let gen_before = self.ns_gen.load(Ordering::Acquire);
        if let Some(want) = want
            && self
                .listings
                .lock()
                .get(&ino)
                .is_some_and(|l| l.dropped == Some(want))
        {
            let items = self.numbered_items(ino, s.parent, self.list_merged_from(ino, false)?);
            let snap = Snapshot {
                id: want,
                generation: gen_before,
                items,
                lower_only: true,
            };
            let out = (snap.id, snap.items.clone(), true);
            // Kept as the previous listing: a read from offset 0 must not get it.
            self.listings.lock().entry(ino).or_default().previous = Some(snap);
            return Ok(out);
        }
        let lower_only = !s.upper;
        if let Some(l) = self.listings.lock().get(&ino)
            && let Some(cur) = &l.current
            && (lower_only || cur.generation == gen_before)
        {
            return Ok((cur.id, cur.items.clone(), cur.lower_only));
        }
        let items = self.numbered_items(ino, s.parent, self.list_merged(ino)?);
        let snap = Snapshot {
            id: self.next_listing.fetch_add(1, Ordering::Relaxed) % 0xffff_ffff + 1,
            generation: gen_before,
            items,
            lower_only,
        };
        let out = (snap.id, snap.items.clone(), lower_only);
        let mut all = self.listings.lock();
        let l = all.entry(ino).or_default();
        l.previous = l.current.replace(snap);
        Ok(out)
    }

    /// A listing's items: `.`, `..`, then `list` (sorted by name), each numbered now (the real
    /// state arrives with the lookup).
    fn numbered_items(
        &self,
        ino: Ino,
        parent: Ino,
        list: Vec<(OsString, EntryKind)>,
    ) -> Arc<[DirItem]> {
        let mut items = Vec::with_capacity(list.len() + 2);
        items.push(DirItem {
            ino,
            kind: EntryKind::Dir,
            name: ".".into(),
        });
        items.push(DirItem {
            ino: parent,
            kind: EntryKind::Dir,
            name: "..".into(),
        });
        let mut t = self.table.write();
        for (name, kind) in list {
            let ino = t.reserve(ino, &name, kind);
            items.push(DirItem { ino, kind, name });
        }
        items.into()
    }

    /// Marks a change of names: listings taken before it may be stale. Called by every
    /// operation that adds, removes or renames a name, once it is done.
    pub(crate) fn names_changed(&self) {
        self.ns_gen.fetch_add(1, Ordering::Release);
    }

    /// The items of an open directory from `offset` on; item `i` has offset `i + 1`.
    ///
    /// # Errors
    /// `BadHandle` for an unknown handle.
    pub fn readdir(&self, fh: Fh, offset: u64) -> Result<Vec<DirItem>> {
        let h = self.handle(fh)?;
        match &h.data {
            HandleData::Dir(items) => Ok(items
                .iter()
                .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                .cloned()
                .collect()),
            _ => Err(FsError::NotDir),
        }
    }

    /// Like `readdir`, but also looks each item up (one kernel reference each) for READDIRPLUS.
    ///
    /// # Errors
    /// `BadHandle` for an unknown handle.
    pub fn lookup_item(&self, dir: Ino, item: &DirItem) -> Result<Entry> {
        if item.name == "." || item.name == ".." {
            let e = self.entry(item.ino)?;
            return Ok(e);
        }
        self.lookup(dir, &item.name)
    }

    /// Reads from an open file.
    ///
    /// # Errors
    /// `BadHandle`, or the I/O error of the backing file.
    pub fn read(&self, fh: Fh, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.handle(fh)?;
        let mut buf = vec![0u8; size as usize];
        if let Some(f) = self.copy_of_lower(&h) {
            let n = read_full(f, &mut buf, offset).map_err(FsError::io("read", "<upper file>"))?;
            buf.truncate(n);
            return Ok(buf);
        }
        let n = match &h.data {
            HandleData::Upper(f) => {
                read_full(f, &mut buf, offset).map_err(FsError::io("read", "<upper file>"))?
            }
            HandleData::Lower { lower, file } => match self.lower_file(*lower, file)? {
                Some(f) => read_full(f, &mut buf, offset).map_err(FsError::lower(lower.layer))?,
                None => self.read_lower_at(*lower, &mut buf, offset)?,
            },
            HandleData::Dir(_) => return Err(FsError::IsDir),
        };
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads lower content through its tree (no file behind it), as much as `buf` holds.
    fn read_lower_at(&self, lower: LowerRef, buf: &mut [u8], offset: u64) -> Result<usize> {
        let tree = &self.lowers[lower.layer];
        let mut done = 0;
        while done < buf.len() {
            let n = tree
                .read_at(lower.node, &mut buf[done..], offset + done as u64)
                .map_err(FsError::lower(lower.layer))?;
            if n == 0 {
                break;
            }
            // A lower tree claiming more than the buffer must not panic a worker.
            done = (done + n).min(buf.len());
        }
        Ok(done)
    }

    /// The content file of a lower handle, opened on its first use.
    fn lower_file<'h>(
        &self,
        lower: LowerRef,
        file: &'h OnceLock<Option<File>>,
    ) -> Result<Option<&'h File>> {
        if let Some(f) = file.get() {
            return Ok(f.as_ref());
        }
        let f = self.data_source(lower)?;
        Ok(file.get_or_init(|| f).as_ref())
    }

    /// Like [`UnionFs::read`], but only when that cannot block on the disk: the data comes
    /// from the page cache (`preadv2` with `RWF_NOWAIT`) or from memory. `None`: some of it is
    /// not cached, read it with [`UnionFs::read`] where blocking is fine.
    ///
    /// # Errors
    /// As `read`.
    pub fn read_cached(&self, fh: Fh, offset: u64, size: u32) -> Result<Option<Vec<u8>>> {
        let h = self.handle(fh)?;
        let f = match (&h.data, self.copy_of_lower(&h)) {
            (_, Some(f)) => f,
            (HandleData::Upper(f), None) => f,
            (HandleData::Lower { lower, file }, None) => match self.lower_file(*lower, file)? {
                Some(f) => f,
                None => return self.read(fh, offset, size).map(Some),
            },
            (HandleData::Dir(_), None) => return Err(FsError::IsDir),
        };
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let r = rustix::io::preadv2(
                f,
                &mut [std::io::IoSliceMut::new(&mut buf[done..])],
                offset + done as u64,
                rustix::io::ReadWriteFlags::NOWAIT,
            );
            match r {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                // EAGAIN: not cached; EOPNOTSUPP: the filesystem cannot tell.
                Err(_) => return Ok(None),
            }
        }
        buf.truncate(done);
        Ok(Some(buf))
    }

    /// For a handle opened on a lower file that has been copied up since (with its data): the
    /// copy, opened once. `None` for other handles, and while the copy is not there.
    fn copy_of_lower<'h>(&self, h: &'h Handle) -> Option<&'h File> {
        // Nothing to look up for upper handles and in read-only unions (no copy-up there).
        let upper = self.upper.as_ref()?;
        if !matches!(h.data, HandleData::Lower { .. }) {
            return None;
        }
        if let Some(f) = h.copied_up.get() {
            return Some(f);
        }
        let copied = self
            .table
            .read()
            .get(h.ino)
            .is_some_and(|n| n.upper && !n.metacopy && !n.unlinked);
        if !copied {
            return None;
        }
        let p = upper.path(&self.path_of(h.ino).ok()?);
        let f = File::open(p).ok()?;
        Some(h.copied_up.get_or_init(|| f))
    }

    /// Whether an open handle reads an immutable lower file.
    pub fn is_lower_handle(&self, fh: Fh) -> bool {
        self.handle(fh)
            .is_ok_and(|h| matches!(h.data, HandleData::Lower { .. }))
    }

    /// A file for FUSE passthrough of an open handle: for an upper file, the file reopened
    /// read-write (so readers and writers of the inode can share it); for a lower file of a
    /// read-only union, its content file. `None` when the handle must go through the daemon
    /// (lower files of a writable union can be copied up while open, which would change the
    /// backing file, and the kernel requires one backing file per inode).
    pub fn backing_file(&self, fh: Fh) -> Option<File> {
        let h = self.handle(fh).ok()?;
        match &h.data {
            HandleData::Upper(f) => {
                let s = self.state(h.ino).ok()?;
                if s.metacopy || s.unlinked {
                    return None;
                }
                // Writes to setuid/setgid files go through the daemon, which clears the bits
                // for callers without CAP_FSETID (the backing file is written with its creds).
                use std::os::unix::fs::PermissionsExt;
                let mode = f.metadata().ok()?.permissions().mode();
                if mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
                    return None;
                }
                // A plain read-write fd (a new file's) serves as is: no reopen by path.
                if let Ok(fl) = rustix::fs::fcntl_getfl(f) {
                    let odd = rustix::fs::OFlags::APPEND
                        | rustix::fs::OFlags::SYNC
                        | rustix::fs::OFlags::DSYNC;
                    if fl.contains(rustix::fs::OFlags::RDWR)
                        && !fl.intersects(odd)
                        && let Ok(f) = f.try_clone()
                    {
                        return Some(f);
                    }
                }
                let p = self.upper.as_ref()?.path(&self.path_of(h.ino).ok()?);
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(p)
                    .ok()
            }
            HandleData::Lower { lower, file } if self.upper.is_none() => self
                .lower_file(*lower, file)
                .ok()
                .flatten()
                .and_then(|f| f.try_clone().ok()),
            _ => None,
        }
    }

    /// All user-visible xattr names (internal markers hidden).
    ///
    /// # Errors
    /// I/O errors of the upper or lower.
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let s = self.state(ino)?;
        if s.upper {
            let p = self.upper()?.path(&self.path_of(ino)?);
            let mut names = xattr::list(&p).map_err(FsError::io("listxattr", &p))?;
            names.retain(|n| !is_internal_xattr(n));
            return Ok(names);
        }
        let r = s.lower.first().ok_or(FsError::StaleInode(ino.0))?;
        Ok(self.lowers[r.layer]
            .xattrs(r.node)
            .map_err(FsError::lower(r.layer))?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// One xattr value.
    ///
    /// # Errors
    /// `NoXattr` when unset or internal.
    pub fn getxattr(&self, ino: Ino, name: &OsStr) -> Result<Vec<u8>> {
        if is_internal_xattr(name.as_bytes()) {
            return Err(FsError::NoXattr);
        }
        let s = self.state(ino)?;
        if s.upper {
            let p = self.upper()?.path(&self.path_of(ino)?);
            return xattr::get(&p, name.as_bytes())
                .map_err(FsError::io("getxattr", &p))?
                .ok_or(FsError::NoXattr);
        }
        let r = s.lower.first().ok_or(FsError::StaleInode(ino.0))?;
        self.lowers[r.layer]
            .xattrs(r.node)
            .map_err(FsError::lower(r.layer))?
            .into_iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v)
            .ok_or(FsError::NoXattr)
    }

    /// Filesystem numbers: the upper's, or zeros for a read-only union.
    ///
    /// # Errors
    /// I/O errors of `statvfs` on the upper.
    pub fn statfs(&self) -> Result<StatFs> {
        let Some(u) = &self.upper else {
            return Ok(StatFs {
                bsize: 4096,
                frsize: 4096,
                namelen: 255,
                ..StatFs::default()
            });
        };
        let v =
            rustix::fs::statvfs(&u.dir).map_err(|e| FsError::io("statvfs", &u.dir)(e.into()))?;
        Ok(StatFs {
            blocks: v.f_blocks,
            bfree: v.f_bfree,
            bavail: v.f_bavail,
            files: v.f_files,
            ffree: v.f_ffree,
            bsize: u32::try_from(v.f_bsize).unwrap_or(4096),
            namelen: u32::try_from(v.f_namemax).unwrap_or(255),
            frsize: u32::try_from(v.f_frsize).unwrap_or(4096),
        })
    }

    /// Checks that the inode exists and, for `W_OK`, that the union is writable. Permission bits
    /// are checked by the kernel (`default_permissions`).
    ///
    /// # Errors
    /// `ReadOnly` for `W_OK` on a read-only union.
    pub fn access(&self, ino: Ino, mask: i32) -> Result<()> {
        self.state(ino)?;
        if mask & libc::W_OK != 0 && self.upper.is_none() {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }
}

/// Attributes of an upper entry as its own `stat` reports them.
pub(crate) fn attr_from_md(ino: Ino, md: &std::fs::Metadata) -> Attr {
    Attr {
        ino,
        kind: kind_of(md),
        size: md.size(),
        blocks: md.blocks(),
        perm: md.mode() & 0o7777,
        nlink: u32::try_from(md.nlink()).unwrap_or(u32::MAX),
        uid: md.uid(),
        gid: md.gid(),
        rdev: md.rdev(),
        atime: time(md.atime(), md.atime_nsec()),
        mtime: time(md.mtime(), md.mtime_nsec()),
        ctime: time(md.ctime(), md.ctime_nsec()),
    }
}

fn read_full(f: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], offset + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
