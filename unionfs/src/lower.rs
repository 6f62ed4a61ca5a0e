//! The read-only lower side of the union: the [`LowerTree`] trait and its value types.
//!
//! A lower tree is one layer, immutable for the life of a mount. The union never asks a lower tree
//! to change anything, and it never parses whiteout spellings: whiteouts cross this boundary as
//! [`EntryKind::Whiteout`] entries and opaque directories as the [`DirListing::opaque`] /
//! [`LowerAttr::opaque`] flags.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::path::PathBuf;

/// Identifies one node inside one lower tree. Only meaningful together with the tree that issued
/// it. Two names that are hard links of one file in a tree have the same `NodeId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

/// What a directory entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device.
    CharDev,
    /// A block device.
    BlockDev,
    /// A named pipe.
    Fifo,
    /// A unix socket.
    Socket,
    /// A whiteout: this layer deletes the name from every layer below it.
    Whiteout,
}

/// One entry of a lower directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name (one path component, never `.` or `..`).
    pub name: OsString,
    /// The node the name points at (for a whiteout: a node whose `getattr` may fail).
    pub node: NodeId,
    /// The entry's kind; [`EntryKind::Whiteout`] for a whiteout.
    pub kind: EntryKind,
}

/// A whole lower directory listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirListing {
    /// Entries sorted by name, including whiteouts, without `.` and `..`.
    pub entries: Vec<DirEntry>,
    /// The directory is opaque: layers below this one contribute nothing to it.
    pub opaque: bool,
}

/// Attributes of a lower node, as `stat(2)` would report them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LowerAttr {
    /// The node's kind (never [`EntryKind::Whiteout`]).
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`), without the type bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (for a symlink: the target's length).
    pub size: u64,
    /// Number of names of this node in this tree (for dirs: 2 + subdirectories).
    pub nlink: u32,
    /// Device number of a char/block device (`makedev(major, minor)`), else 0.
    pub rdev: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// For a directory: it is opaque (hides the layers below). Always false for other kinds.
    pub opaque: bool,
}

/// Where a redirect points, in the layers below the one that has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// A path from the root of the layers below (without the leading `/`).
    Absolute(PathBuf),
    /// A name in the parent directory's place in the layers below.
    Relative(OsString),
}

/// Overlay markers on a lower node: the layer was once a union's upper directory (layer
/// rotation), and this node holds only metadata or was renamed there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// A regular file holding metadata only: its data is the file's in the layers below, at
    /// its own path or at `redirect`.
    pub metacopy: bool,
    /// For a directory: merge the layers below at this path instead of the entry's own. For a
    /// metadata-only file: where its data is.
    pub redirect: Option<Redirect>,
}

/// A read-only layer of the union.
///
/// Contract shared by every method: the tree never changes while it is mounted, so equal calls
/// give equal answers; `NodeId`s come from [`LowerTree::root`], [`LowerTree::lookup`] or
/// [`LowerTree::read_dir`] of the same tree; an `io::Error` means the tree itself is broken (a
/// missing object file, an I/O error), never "not found" (that is `Ok(None)`).
pub trait LowerTree: Send + Sync + fmt::Debug {
    /// The root directory.
    fn root(&self) -> NodeId;

    /// Looks `name` up in directory `parent`.
    ///
    /// Returns `Ok(None)` when the layer has no such entry, and an entry of kind
    /// [`EntryKind::Whiteout`] when the layer deletes the name. `parent` must be a directory.
    fn lookup(&self, parent: NodeId, name: &OsStr) -> io::Result<Option<DirEntry>>;

    /// Lists directory `dir`: every entry (whiteouts included, as typed entries) sorted by name,
    /// and whether the directory is opaque.
    fn read_dir(&self, dir: NodeId) -> io::Result<DirListing>;

    /// Attributes of a node. Not defined for whiteout entries.
    fn getattr(&self, node: NodeId) -> io::Result<LowerAttr>;

    /// The target of a symlink, as stored (not resolved).
    fn readlink(&self, node: NodeId) -> io::Result<OsString>;

    /// Opens a regular file's content read-only.
    ///
    /// Returns `Ok(Some(file))` when the content lives in a real file whose bytes are exactly
    /// the node's content (so the union can `copy_file_range`/`FICLONE` from it and hand it to
    /// FUSE passthrough), and `Ok(None)` when there is none (an empty file, or content kept in
    /// memory): then read through [`LowerTree::read_at`].
    fn open(&self, node: NodeId) -> io::Result<Option<File>>;

    /// Reads up to `buf.len()` bytes at `offset`; returns 0 at end of file.
    fn read_at(&self, node: NodeId, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// All extended attributes of a node, as (name, value) pairs, without overlay-internal
    /// markers (`trusted.overlay.*`, `user.overlay.*`, `user.fuseoverlayfs.*`).
    fn xattrs(&self, node: NodeId) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// The overlay markers of a regular file or directory (see [`Marks`]): what a union
    /// that used this tree as its upper wrote. The union asks only of layers that have layers
    /// below them. Trees that never hold markers (the store's layers) keep the default.
    fn marks(&self, node: NodeId) -> io::Result<Marks> {
        let _ = node;
        Ok(Marks::default())
    }
}

/// Xattr name prefixes that belong to overlay implementations, never to the user's data.
pub(crate) const OVERLAY_XATTR_PREFIXES: [&[u8]; 4] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"user.strata.",
];

/// Whether an xattr name is an overlay-internal marker.
pub(crate) fn is_internal_xattr(name: &[u8]) -> bool {
    OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Errors for a node id that the tree never issued.
pub(crate) fn bad_node(node: NodeId) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("unknown lower node {}", node.0),
    )
}
