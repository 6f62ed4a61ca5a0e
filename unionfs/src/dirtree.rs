//! [`DirTree`]: a lower tree over a plain directory (a `lowerdir=` of kernel overlayfs).
//!
//! This file is the one place in `unionfs` that parses the on-disk whiteout spellings of a lower
//! directory: `.wh.NAME` files and char 0/0 devices are whiteouts; a `.wh..wh..opq` file or an
//! opaque xattr (`trusted.overlay.opaque`, `user.overlay.opaque`, `user.fuseoverlayfs.opaque`
//! = `y`) marks an opaque directory.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use parking_lot::RwLock;
use rustix::fs::{AtFlags, Dir, Mode, OFlags};

use crate::longpath;
use crate::lower::{
    DirEntry, DirListing, EntryKind, LowerAttr, LowerTree, Marks, NodeId, bad_node,
};
use crate::marker;
use crate::xattr;

/// Prefix of AUFS-style whiteout files (`.wh.NAME` hides `NAME`).
pub(crate) const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the AUFS-style opaque marker file.
pub(crate) const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Xattrs that mark a directory opaque when set to `y`.
pub(crate) const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];

/// Whether a stat result is an overlayfs whiteout (char device 0/0).
pub(crate) fn is_whiteout_dev(md: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Whether the directory at `path` is opaque by any of the known markers.
pub(crate) fn dir_is_opaque(path: &Path) -> bool {
    OPAQUE_XATTRS
        .iter()
        .any(|x| matches!(xattr::get(path, x.as_bytes()), Ok(Some(v)) if v == b"y"))
        || path.join(OPAQUE_MARKER).symlink_metadata().is_ok()
}

pub(crate) fn kind_of(md: &std::fs::Metadata) -> EntryKind {
    use std::os::unix::fs::FileTypeExt;
    let ft = md.file_type();
    if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_char_device() {
        if md.rdev() == 0 {
            EntryKind::Whiteout
        } else {
            EntryKind::CharDev
        }
    } else if ft.is_block_device() {
        EntryKind::BlockDev
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else if ft.is_socket() {
        EntryKind::Socket
    } else {
        EntryKind::File
    }
}

/// One node: its name in its parent (the path is rebuilt from the chain when a call needs
/// it) and its `stat`, once read. No path per node and no map by path: a walk of 100k
/// entries took 105 MB of daemon memory with them.
#[derive(Debug)]
struct Node {
    parent: NodeId,
    name: Box<OsStr>,
    /// `stat` result (without `opaque`), read once.
    attr: Option<LowerAttr>,
    /// Whether its overlay markers were read, and found (then they are in `Interner::marks`).
    marks: MarkState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MarkState {
    Unread,
    None,
    Some,
}

/// The nodes handed out, indexed by id (a directory's entries are made once, when it is read
/// whole), and by hard-linked (dev, ino).
#[derive(Debug)]
struct Interner {
    nodes: Vec<Node>,
    by_inode: HashMap<(u64, u64), NodeId>,
    /// Opacity of directories, read once (the tree never changes while mounted).
    opaque: HashMap<NodeId, bool>,
    /// Directories read whole (entries and attributes), on first use.
    dirs: HashMap<NodeId, Arc<DirIndex>>,
    /// Overlay markers of the nodes that have some (see `Node::marks`).
    marks: HashMap<NodeId, Marks>,
    /// Names of directories whose opacity was asked before they were read whole (a lookup
    /// asks it of every directory it passes): `index` takes them over.
    scans: HashMap<NodeId, Arc<Scan>>,
}

/// A directory's names as `getdents` gives them (nothing `stat`ed yet), and its opacity.
#[derive(Debug)]
struct Scan {
    names: Vec<OsString>,
    opaque: bool,
    /// Marked `overlay.impure` (overlayfs and strata set it on a directory of an upper whose
    /// entries carry metacopy or redirect markers): all its entries' markers are read.
    impure: bool,
}

/// The `overlay.impure` marker of a directory (`trusted.` or `user.`).
fn is_impure_xattr(name: &[u8]) -> bool {
    name == b"trusted.overlay.impure" || name == b"user.overlay.impure"
}

/// Whether the open directory `fd` has one of [`OPAQUE_XATTRS`] set to `y` (one `flistxattr`,
/// then a `fgetxattr` only for a name that matches), and whether it is marked impure.
fn dir_xattr_flags(fd: BorrowedFd<'_>) -> (bool, bool) {
    let mut list = vec![0u8; 1024];
    let n = match rustix::fs::flistxattr(fd, &mut list[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::RANGE) => {
            let Ok(len) = rustix::fs::flistxattr_query(fd) else {
                return (false, false);
            };
            list.resize(len, 0);
            match rustix::fs::flistxattr(fd, &mut list[..]) {
                Ok(n) => n,
                Err(_) => return (false, false),
            }
        }
        Err(_) => return (false, false),
    };
    let names = &list[..n.min(list.len())];
    let impure = names.split(|&b| b == 0).any(is_impure_xattr);
    (has_opaque_xattr(fd, names), impure)
}

/// Whether a name of `list` (`flistxattr`'s answer) is an opaque marker set to `y`.
fn has_opaque_xattr(fd: BorrowedFd<'_>, list: &[u8]) -> bool {
    list.split(|&b| b == 0)
        .filter(|name| OPAQUE_XATTRS.iter().any(|x| x.as_bytes() == *name))
        .any(|name| {
            let mut v = [0u8; 2];
            matches!(rustix::fs::fgetxattr(fd, OsStr::from_bytes(name), &mut v[..]), Ok(1) if v[0] == b'y')
        })
}

/// One directory of the tree, read once: lookups and listings are answered from memory.
#[derive(Debug)]
struct DirIndex {
    /// Sorted by name: lookups search it. An entry's name is its node's (kept once).
    entries: Vec<IndexEntry>,
    opaque: bool,
}

/// One name of a [`DirIndex`].
#[derive(Debug)]
struct IndexEntry {
    node: NodeId,
    kind: EntryKind,
    /// The name when it is not the node's: a hard link whose node was made for another name.
    alias: Option<Box<OsStr>>,
}

impl IndexEntry {
    fn name<'a>(&'a self, nodes: &'a [Node]) -> &'a OsStr {
        match &self.alias {
            Some(a) => a,
            None => nodes
                .get(self.node.0 as usize)
                .map_or(OsStr::new(""), |n| &n.name),
        }
    }
}

fn lower_attr(st: &rustix::fs::Stat) -> LowerAttr {
    let fmt = st.st_mode & libc::S_IFMT;
    let kind = match fmt {
        libc::S_IFDIR => EntryKind::Dir,
        libc::S_IFLNK => EntryKind::Symlink,
        libc::S_IFCHR if st.st_rdev == 0 => EntryKind::Whiteout,
        libc::S_IFCHR => EntryKind::CharDev,
        libc::S_IFBLK => EntryKind::BlockDev,
        libc::S_IFIFO => EntryKind::Fifo,
        libc::S_IFSOCK => EntryKind::Socket,
        _ => EntryKind::File,
    };
    LowerAttr {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: u64::try_from(st.st_size).unwrap_or(0),
        nlink: u32::try_from(st.st_nlink).unwrap_or(u32::MAX),
        rdev: st.st_rdev,
        mtime: st.st_mtime,
        mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        opaque: false,
    }
}

/// A lower tree over a plain directory on disk.
///
/// The directory is held open from [`DirTree::open`] on and every path is resolved through
/// that descriptor (`/proc/self/fd/N/…`), as fuse-overlayfs keeps a descriptor per layer:
/// containers/storage mounts an id-mapped view of a layer, starts the mount program, and
/// detaches the view once the program has exited.
#[derive(Debug)]
pub struct DirTree {
    /// `/proc/self/fd/N` of `fd`, for the calls that take a path only (xattrs).
    root: PathBuf,
    /// The directory as it was named.
    named: PathBuf,
    /// The directory (`O_PATH`): opens and stats are relative to it, a walk of the relative
    /// path only (through `/proc/self/fd/N/…`, a cold `find` spent a fifth of the daemon's time
    /// resolving the magic link and walking again from the root).
    fd: OwnedFd,
    nodes: RwLock<Interner>,
}

impl DirTree {
    /// Opens the directory `root` as a lower tree.
    ///
    /// # Errors
    /// When `root` is not a readable directory.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<DirTree> {
        let root = root.into();
        let md = root.metadata().map_err(|e| {
            io::Error::new(e.kind(), format!("lower directory {}: {e}", root.display()))
        })?;
        if !md.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("lower {} is not a directory", root.display()),
            ));
        }
        let fd = rustix::fs::open(
            &root,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("lower directory {}: {e}", root.display()),
            )
        })?;
        let via_fd = PathBuf::from(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        // Without /proc, fall back to the name.
        let access = if via_fd.is_dir() {
            via_fd
        } else {
            root.clone()
        };
        let i = Interner {
            nodes: vec![Node {
                parent: NodeId(0),
                name: OsStr::new("").into(),
                attr: None,
                marks: MarkState::Unread,
            }],
            by_inode: HashMap::new(),
            opaque: HashMap::new(),
            marks: HashMap::new(),
            dirs: HashMap::new(),
            scans: HashMap::new(),
        };
        Ok(DirTree {
            root: access,
            named: root,
            fd,
            nodes: RwLock::new(i),
        })
    }

    /// The directory this tree reads, as it was named (e.g. to refuse a mountpoint inside a
    /// lower).
    pub fn root_dir(&self) -> &Path {
        &self.named
    }

    /// The path of `node` relative to the root, from its chain of parents.
    fn rel(&self, node: NodeId) -> io::Result<PathBuf> {
        let n = self.nodes.read();
        let mut names: Vec<&OsStr> = Vec::new();
        let mut at = node;
        while at != NodeId(0) {
            let rec = n.nodes.get(at.0 as usize).ok_or_else(|| bad_node(node))?;
            names.push(&rec.name);
            at = rec.parent;
        }
        Ok(names.iter().rev().collect())
    }

    /// Calls `f` with a directory and a path below it that name `rel` (however deep).
    fn at<T>(
        &self,
        rel: &Path,
        f: impl FnOnce(BorrowedFd<'_>, &Path) -> io::Result<T>,
    ) -> io::Result<T> {
        longpath::with_at(self.fd.as_fd(), rel, f)
    }

    /// Reads the overlay markers of every regular file and directory in `dir` at once: one
    /// open of the directory, then one `llistxattr` per entry through `/proc/self/fd/N/name`
    /// (a walk of one name, not of the whole path, which doubled a cold `find`).
    fn read_marks_of_dir(&self, dir: NodeId) -> io::Result<()> {
        let index = self.index(dir)?;
        let want: Vec<(NodeId, OsString)> = {
            let n = self.nodes.read();
            index
                .entries
                .iter()
                .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Dir))
                .filter(|e| {
                    n.nodes
                        .get(e.node.0 as usize)
                        .is_some_and(|r| r.marks == MarkState::Unread)
                })
                .map(|e| (e.node, e.name(&n.nodes).to_owned()))
                .collect()
        };
        if want.is_empty() {
            return Ok(());
        }
        let fd = self.at(&self.rel(dir)?, |d, p| {
            Ok(rustix::fs::openat(
                d,
                p,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?)
        })?;
        let base = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let mut found = Vec::with_capacity(want.len());
        for (node, name) in want {
            found.push((node, marker::read(&base.join(&name))?));
        }
        let mut n = self.nodes.write();
        for (node, m) in found {
            let state = if m == Marks::default() {
                MarkState::None
            } else {
                n.marks.insert(node, m);
                MarkState::Some
            };
            if let Some(rec) = n.nodes.get_mut(node.0 as usize) {
                rec.marks = state;
            }
        }
        Ok(())
    }

    /// Calls `f` with a path of `node` for the calls that take a path only (xattrs).
    fn with_path<T>(&self, node: NodeId, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
        let rel = self.rel(node)?;
        if rel.as_os_str().len() < longpath::LONG {
            return f(&self.root.join(rel));
        }
        let (_fd, p) = longpath::proc_path(self.fd.as_fd(), &rel)?;
        f(&p)
    }

    /// A new node `name` in `parent`, with its `stat` when known.
    fn push(n: &mut Interner, parent: NodeId, name: &OsStr, attr: Option<LowerAttr>) -> NodeId {
        let id = NodeId(n.nodes.len() as u64);
        n.nodes.push(Node {
            parent,
            name: name.into(),
            attr,
            marks: MarkState::Unread,
        });
        id
    }

    /// Whether the directory `node` is opaque: known once it was listed; otherwise its names
    /// are read (no `stat`s) and kept for its listing.
    fn is_opaque(&self, node: NodeId) -> io::Result<bool> {
        if let Some(o) = self.nodes.read().opaque.get(&node) {
            return Ok(*o);
        }
        let (scan, _) = self.read_scan(&self.rel(node)?)?;
        let o = scan.opaque;
        let mut n = self.nodes.write();
        n.opaque.insert(node, o);
        if !n.dirs.contains_key(&node) {
            n.scans.insert(node, Arc::new(scan));
        }
        Ok(o)
    }

    fn open_dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.at(rel, |d, p| {
            Ok(rustix::fs::openat(
                d,
                p,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?)
        })
    }

    /// Reads the names of the directory `rel` and whether it is opaque (a `.wh..wh..opq`
    /// among them or an opaque xattr); the open directory is returned for `stat`s.
    fn read_scan(&self, rel: &Path) -> io::Result<(Scan, Dir)> {
        let mut dir = Dir::new(self.open_dir(rel)?)?;
        let mut names = Vec::new();
        let mut marker = false;
        while let Some(de) = dir.read() {
            let de = de?;
            let name = de.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            if name == OPAQUE_MARKER.as_bytes() {
                marker = true;
                continue;
            }
            names.push(OsStr::from_bytes(name).to_owned());
        }
        let (opaque_xattr, impure) = dir_xattr_flags(dir.fd()?);
        Ok((
            Scan {
                names,
                opaque: marker || opaque_xattr,
                impure,
            },
            dir,
        ))
    }

    /// The node of `name` in `dir` with its `stat`: hard links (nlink > 1, not dirs) share
    /// one node, reached by the first name seen.
    ///
    /// `impure`: `dir` is marked `overlay.impure`. Outside such directories a regular file can
    /// be a metadata-only placeholder only if it is sparse (its size has no data blocks behind
    /// it): others are known to have no markers, and their xattrs are never read for them.
    fn intern_stat(
        &self,
        dir: NodeId,
        name: &OsStr,
        st: &rustix::fs::Stat,
        impure: bool,
    ) -> NodeId {
        let key = (st.st_mode & libc::S_IFMT != libc::S_IFDIR && st.st_nlink > 1)
            .then_some((st.st_dev, st.st_ino));
        let mut n = self.nodes.write();
        if let Some(id) = key.and_then(|k| n.by_inode.get(&k)) {
            return *id;
        }
        let id = Self::push(&mut n, dir, name, Some(lower_attr(st)));
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let sparse =
            size > 0 && u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512) < size;
        if st.st_mode & libc::S_IFMT == libc::S_IFREG
            && !impure
            && !sparse
            && let Some(rec) = n.nodes.get_mut(id.0 as usize)
        {
            rec.marks = MarkState::None;
        }
        if let Some(k) = key {
            n.by_inode.insert(k, id);
        }
        id
    }

    /// The directory `dir`, read whole (every entry `stat`ed) on first use.
    fn index(&self, dir: NodeId) -> io::Result<Arc<DirIndex>> {
        if let Some(d) = self.nodes.read().dirs.get(&dir) {
            return Ok(d.clone());
        }
        let rel = self.rel(dir)?;
        let cached = self.nodes.write().scans.remove(&dir);
        let opened: OwnedFd;
        let read: (Scan, Dir);
        let (scan, dirfd): (&Scan, BorrowedFd<'_>) = match &cached {
            Some(scan) => {
                opened = self.at(&rel, |d, p| {
                    Ok(rustix::fs::openat(
                        d,
                        p,
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?)
                })?;
                (scan, opened.as_fd())
            }
            None => {
                read = self.read_scan(&rel)?;
                (&read.0, read.1.fd()?)
            }
        };
        let mut real: HashMap<OsString, DirEntry> = HashMap::new();
        let mut whiteouts: Vec<DirEntry> = Vec::new();
        for name in &scan.names {
            if let Some(target) = whiteout_target(name) {
                whiteouts.push(self.whiteout(dir, target));
                continue;
            }
            let st = match rustix::fs::statat(dirfd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            let attr = lower_attr(&st);
            let entry = if attr.kind == EntryKind::Whiteout {
                self.whiteout(dir, name)
            } else {
                DirEntry {
                    name: name.clone(),
                    node: self.intern_stat(dir, name, &st, scan.impure),
                    kind: attr.kind,
                }
            };
            real.insert(name.clone(), entry);
        }
        for w in whiteouts {
            // A layer's own entry wins over its own whiteout of the same name.
            real.entry(w.name.clone()).or_insert(w);
        }
        let mut entries: Vec<DirEntry> = real.into_values().collect();
        entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        let opaque = scan.opaque;
        let mut n = self.nodes.write();
        let entries = entries
            .into_iter()
            .map(|e| {
                let own = n
                    .nodes
                    .get(e.node.0 as usize)
                    .is_some_and(|rec| *rec.name == *e.name);
                IndexEntry {
                    node: e.node,
                    kind: e.kind,
                    alias: (!own).then(|| e.name.into_boxed_os_str()),
                }
            })
            .collect();
        let d = Arc::new(DirIndex { entries, opaque });
        n.opaque.insert(dir, opaque);
        Ok(n.dirs.entry(dir).or_insert(d).clone())
    }

    fn open_file(&self, node: NodeId) -> io::Result<File> {
        let fd = self.at(&self.rel(node)?, |d, p| {
            Ok(rustix::fs::openat(
                d,
                p,
                OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?)
        })?;
        Ok(File::from(fd))
    }

    /// A whiteout entry for `name` in `dir` (its node is the whiteout itself).
    fn whiteout(&self, dir: NodeId, name: &OsStr) -> DirEntry {
        DirEntry {
            name: name.to_owned(),
            node: Self::push(&mut self.nodes.write(), dir, name, None),
            kind: EntryKind::Whiteout,
        }
    }
}

fn whiteout_target(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b == OPAQUE_MARKER.as_bytes() {
        return None;
    }
    b.strip_prefix(WHITEOUT_PREFIX.as_bytes())
        .map(OsStr::from_bytes)
}

impl LowerTree for DirTree {
    fn root(&self) -> NodeId {
        NodeId(0)
    }

    fn lookup(&self, parent: NodeId, name: &OsStr) -> io::Result<Option<DirEntry>> {
        if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Ok(None); // the spelling of a marker, never a name
        }
        let d = self.index(parent)?;
        let n = self.nodes.read();
        let found = d
            .entries
            .binary_search_by(|e| e.name(&n.nodes).as_bytes().cmp(name.as_bytes()))
            .ok();
        Ok(found.map(|i| {
            let e = &d.entries[i];
            DirEntry {
                name: name.to_owned(),
                node: e.node,
                kind: e.kind,
            }
        }))
    }

    fn read_dir(&self, dir: NodeId) -> io::Result<DirListing> {
        let d = self.index(dir)?;
        let n = self.nodes.read();
        Ok(DirListing {
            entries: d
                .entries
                .iter()
                .map(|e| DirEntry {
                    name: e.name(&n.nodes).to_owned(),
                    node: e.node,
                    kind: e.kind,
                })
                .collect(),
            opaque: d.opaque,
        })
    }

    fn getattr(&self, node: NodeId) -> io::Result<LowerAttr> {
        let cached = self
            .nodes
            .read()
            .nodes
            .get(node.0 as usize)
            .ok_or_else(|| bad_node(node))?
            .attr
            .clone();
        let mut attr = match cached {
            Some(a) => a,
            None => {
                let st = self.at(&self.rel(node)?, |d, p| {
                    Ok(rustix::fs::statat(d, p, AtFlags::SYMLINK_NOFOLLOW)?)
                })?;
                let a = lower_attr(&st);
                if let Some(rec) = self.nodes.write().nodes.get_mut(node.0 as usize) {
                    rec.attr = Some(a.clone());
                }
                a
            }
        };
        if attr.kind == EntryKind::Dir {
            attr.opaque = self.is_opaque(node)?;
        }
        Ok(attr)
    }

    fn readlink(&self, node: NodeId) -> io::Result<OsString> {
        let target = self.at(&self.rel(node)?, |d, p| {
            Ok(rustix::fs::readlinkat(d, p, Vec::new())?)
        })?;
        Ok(OsString::from_vec(target.into_bytes()))
    }

    fn open(&self, node: NodeId) -> io::Result<Option<File>> {
        Ok(Some(self.open_file(node)?))
    }

    fn read_at(&self, node: NodeId, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.open_file(node)?.read_at(buf, offset)
    }

    fn xattrs(&self, node: NodeId) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.with_path(node, |p| xattr::all(p, true))
    }

    fn marks(&self, node: NodeId) -> io::Result<Marks> {
        let parent = {
            let n = self.nodes.read();
            let rec = n.nodes.get(node.0 as usize).ok_or_else(|| bad_node(node))?;
            match rec.marks {
                MarkState::None => return Ok(Marks::default()),
                MarkState::Some => return Ok(n.marks.get(&node).cloned().unwrap_or_default()),
                MarkState::Unread => rec.parent,
            }
        };
        if node == self.root() {
            return Ok(Marks::default());
        }
        self.read_marks_of_dir(parent)?;
        let n = self.nodes.read();
        Ok(n.marks.get(&node).cloned().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wh_files_and_opq_marker_become_typed_values() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        std::fs::write(d.path().join("dir/.wh..wh..opq"), b"").unwrap();
        std::fs::write(d.path().join(".wh.gone"), b"").unwrap();
        std::fs::write(d.path().join("kept"), b"x").unwrap();
        std::fs::write(d.path().join(".wh.kept"), b"").unwrap();
        let t = DirTree::open(d.path()).unwrap();
        let root = t.read_dir(t.root()).unwrap();
        let got: Vec<_> = root
            .entries
            .iter()
            .map(|e| (e.name.to_str().unwrap().to_owned(), e.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("dir".to_owned(), EntryKind::Dir),
                ("gone".to_owned(), EntryKind::Whiteout),
                ("kept".to_owned(), EntryKind::File)
            ]
        );
        assert!(!root.opaque);
        let dir = t.lookup(t.root(), OsStr::new("dir")).unwrap().unwrap();
        assert!(t.read_dir(dir.node).unwrap().opaque);
        assert!(t.read_dir(dir.node).unwrap().entries.is_empty());
        assert!(t.getattr(dir.node).unwrap().opaque);
        assert_eq!(
            t.lookup(t.root(), OsStr::new("gone"))
                .unwrap()
                .unwrap()
                .kind,
            EntryKind::Whiteout
        );
        assert!(
            t.lookup(t.root(), OsStr::new(".wh.gone"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn opacity_asked_before_the_listing_comes_from_names_and_xattrs() {
        let d = tempfile::tempdir().unwrap();
        for sub in ["marker", "xattr", "plain", "xattr_n"] {
            std::fs::create_dir(d.path().join(sub)).unwrap();
        }
        std::fs::write(d.path().join("marker/.wh..wh..opq"), b"").unwrap();
        std::fs::write(d.path().join("marker/kept"), b"").unwrap();
        let set = |dir: &str, v: &[u8]| {
            rustix::fs::setxattr(
                d.path().join(dir).as_path(),
                "user.overlay.opaque",
                v,
                rustix::fs::XattrFlags::empty(),
            )
        };
        if set("xattr", b"y").is_err() {
            eprintln!("skipped: no user xattrs on {}", d.path().display());
            return;
        }
        set("xattr_n", b"n").unwrap();
        let t = DirTree::open(d.path()).unwrap();
        let node = |n: &str| t.lookup(t.root(), OsStr::new(n)).unwrap().unwrap().node;
        // getattr first (a lookup through the directory), then the listing, which must reuse
        // what the first read found.
        for (name, opaque) in [
            ("marker", true),
            ("xattr", true),
            ("plain", false),
            ("xattr_n", false),
        ] {
            assert_eq!(t.getattr(node(name)).unwrap().opaque, opaque, "{name}");
            let l = t.read_dir(node(name)).unwrap();
            assert_eq!(l.opaque, opaque, "{name}");
            assert_eq!(t.getattr(node(name)).unwrap().opaque, opaque, "{name}");
        }
        let names: Vec<_> = t
            .read_dir(node("marker"))
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, vec![OsString::from("kept")]);
    }

    #[test]
    fn hard_links_share_a_node() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"x").unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        let t = DirTree::open(d.path()).unwrap();
        let a = t.lookup(t.root(), OsStr::new("a")).unwrap().unwrap();
        let b = t.lookup(t.root(), OsStr::new("b")).unwrap().unwrap();
        assert_eq!(a.node, b.node);
        assert_eq!(t.getattr(b.node).unwrap().nlink, 2);
    }
}
