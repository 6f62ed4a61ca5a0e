//! [`IndexTree`]: a lower tree built in memory from entries handed over by the store.
//!
//! The tree is an arena of nodes; each directory keeps its children sorted by name, so `lookup`
//! is a binary search and `read_dir` a copy. File contents are read from the content-addressed
//! object files named in the entries (the layer is never extracted).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::lower::{
    DirEntry, DirListing, EntryKind, LowerAttr, LowerTree, NodeId, bad_node, is_internal_xattr,
};

/// One entry of a layer, as the store hands it over (plain data, tar order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Relative path, no leading `/`, `""` = root, `/`-separated, already normalised.
    pub path: String,
    /// What the entry is.
    pub kind: IndexKind,
    /// Mode, owner, times, xattrs.
    pub meta: IndexMeta,
}

/// The kind of an [`IndexEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexKind {
    /// A regular file; `content` is the path of its content object (`None` when `size == 0`).
    File {
        /// Size in bytes.
        size: u64,
        /// Path of the content object file.
        content: Option<PathBuf>,
    },
    /// A directory.
    Dir,
    /// A symlink.
    Symlink {
        /// The link target, as stored.
        target: String,
    },
    /// A hard link to an earlier `File` entry of the same layer.
    HardLink {
        /// Path of the earlier entry.
        target: String,
    },
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A whiteout; `path` is the hidden path.
    Whiteout,
    /// An opaque marker; `path` is the directory whose lower children are hidden.
    Opaque,
}

/// Where a regular file's bytes come from.
#[derive(Clone, Debug)]
pub(crate) enum Content {
    /// No content: an empty file.
    Empty,
    /// A content object file on disk.
    Object(PathBuf),
    /// Bytes in memory (test trees).
    // Only `testing::MemTree` builds these.
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    Inline(Arc<[u8]>),
}

/// Kind-specific payload of an arena node.
#[derive(Clone, Debug)]
pub(crate) enum Payload {
    File(Content),
    Dir {
        children: Vec<(Box<OsStr>, NodeId)>,
        opaque: bool,
    },
    Symlink(OsString),
    Device {
        kind: EntryKind,
        rdev: u64,
    },
    Fifo,
    Whiteout,
}

/// One arena node.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) payload: Payload,
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) size: u64,
    pub(crate) nlink: u32,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: u32,
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Node {
    fn dir(mode: u32) -> Self {
        Node {
            payload: Payload::Dir {
                children: Vec::new(),
                opaque: false,
            },
            mode,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            mtime: 0,
            mtime_nsec: 0,
            xattrs: Vec::new(),
        }
    }

    fn kind(&self) -> EntryKind {
        match &self.payload {
            Payload::File(_) => EntryKind::File,
            Payload::Dir { .. } => EntryKind::Dir,
            Payload::Symlink(_) => EntryKind::Symlink,
            Payload::Device { kind, .. } => *kind,
            Payload::Fifo => EntryKind::Fifo,
            Payload::Whiteout => EntryKind::Whiteout,
        }
    }
}

/// Mode of directories a layer implies but never lists (tar archives may omit parents).
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// A small, fast, non-cryptographic hasher for the builder's path map (FxHash's multiply-rotate;
/// the keys are a layer's own paths, and a mount builds tens of thousands of them).
#[derive(Default, Clone, Copy, Debug)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

/// The attributes of an entry, as [`IndexTreeBuilder::push`] takes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexMeta {
    /// Permission bits including setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Extended attributes (name, value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The arena shared by [`IndexTree`] and the test-only `MemTree`.
#[derive(Debug, Default)]
pub(crate) struct Arena {
    nodes: Vec<Node>,
}

/// Most entries a capacity hint reserves room for up front (a bad hint must not abort).
const MAX_RESERVE: usize = 1 << 22;

/// Builds an [`Arena`] from entries in tar order.
///
/// While building, each directory's `children` collects `(name, node)` in the order names are
/// linked (a name linked again later wins); [`ArenaBuilder::finish`] sorts them and keeps the
/// last node of each name.
#[derive(Debug)]
pub(crate) struct ArenaBuilder {
    nodes: Vec<Node>,
    /// Path → node of every name seen so far ("" = root).
    by_path: HashMap<Box<str>, NodeId, FxBuild>,
}

impl ArenaBuilder {
    // Only `testing::MemTree` builds arenas directly.
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    pub(crate) fn new() -> Self {
        Self::with_capacity(0)
    }

    /// A builder with room for `entries` entries (a hint: at most [`MAX_RESERVE`] are reserved).
    pub(crate) fn with_capacity(entries: usize) -> Self {
        let entries = entries.min(MAX_RESERVE);
        let mut by_path = HashMap::with_capacity_and_hasher(entries + 1, FxBuild::default());
        by_path.insert(Box::from(""), NodeId(0));
        let mut nodes = Vec::with_capacity(entries + 1);
        nodes.push(Node::dir(IMPLICIT_DIR_MODE));
        ArenaBuilder { nodes, by_path }
    }

    fn split(path: &str) -> (&str, &str) {
        match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path),
        }
    }

    /// The directory at `path`, created (implicitly, 0755 root) with its parents when missing.
    fn ensure_dir(&mut self, path: &str) -> NodeId {
        if let Some(&id) = self.by_path.get(path)
            && matches!(self.nodes[id.0 as usize].payload, Payload::Dir { .. })
        {
            return id;
        }
        let (parent, name) = Self::split(path);
        let parent_id = self.ensure_dir(parent);
        let id = self.push(Node::dir(IMPLICIT_DIR_MODE));
        self.link(parent_id, name, path, id);
        id
    }

    fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        NodeId(self.nodes.len() as u64 - 1)
    }

    /// Names `id` `name` in the directory `parent` (always a directory: see `ensure_dir`).
    fn link(&mut self, parent: NodeId, name: &str, path: &str, id: NodeId) {
        if let Payload::Dir { children, .. } = &mut self.nodes[parent.0 as usize].payload {
            children.push((Box::from(OsStr::new(name)), id));
        }
        match self.by_path.get_mut(path) {
            Some(slot) => *slot = id,
            None => {
                self.by_path.insert(Box::from(path), id);
            }
        }
    }

    /// Adds one entry. A layer's own entries are never hidden by its own whiteouts.
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    pub(crate) fn add(&mut self, path: &str, payload: Payload, meta: &IndexEntry, size: u64) {
        self.add_meta(path, payload, meta.meta.clone(), size);
    }

    /// [`ArenaBuilder::add`] with the attributes by value.
    pub(crate) fn add_meta(&mut self, path: &str, payload: Payload, meta: IndexMeta, size: u64) {
        let path = path.trim_matches('/');
        if path.is_empty() {
            // The root: only attributes (and opacity) can change.
            self.set_meta(NodeId(0), meta);
            return;
        }
        let existing = self.by_path.get(path).copied();
        match payload {
            Payload::Whiteout => {
                if existing.is_none() {
                    let (parent, name) = Self::split(path);
                    let parent_id = self.ensure_dir(parent);
                    let id = self.push(Node {
                        payload: Payload::Whiteout,
                        mode: 0,
                        uid: 0,
                        gid: 0,
                        size: 0,
                        nlink: 1,
                        mtime: 0,
                        mtime_nsec: 0,
                        xattrs: Vec::new(),
                    });
                    self.link(parent_id, name, path, id);
                }
            }
            Payload::Dir { .. } => {
                if let Some(id) = existing
                    && let Payload::Dir { .. } = self.nodes[id.0 as usize].payload
                {
                    self.set_meta(id, meta);
                    return;
                }
                let id = self.ensure_dir_fresh(path);
                self.set_meta(id, meta);
            }
            payload => {
                let (parent, name) = Self::split(path);
                let parent_id = self.ensure_dir(parent);
                let id = self.push(Node {
                    payload,
                    mode: meta.mode & 0o7777,
                    uid: meta.uid,
                    gid: meta.gid,
                    size,
                    nlink: 1,
                    mtime: meta.mtime,
                    mtime_nsec: meta.mtime_nsec,
                    xattrs: meta.xattrs,
                });
                self.link(parent_id, name, path, id);
            }
        }
    }

    /// A new directory node at `path`, replacing whatever non-directory was there.
    fn ensure_dir_fresh(&mut self, path: &str) -> NodeId {
        let (parent, name) = Self::split(path);
        let parent_id = self.ensure_dir(parent);
        let id = self.push(Node::dir(IMPLICIT_DIR_MODE));
        self.link(parent_id, name, path, id);
        id
    }

    fn set_meta(&mut self, id: NodeId, meta: IndexMeta) {
        let node = &mut self.nodes[id.0 as usize];
        node.mode = meta.mode & 0o7777;
        node.uid = meta.uid;
        node.gid = meta.gid;
        node.mtime = meta.mtime;
        node.mtime_nsec = meta.mtime_nsec;
        node.xattrs = meta.xattrs;
    }

    /// Marks the directory at `path` opaque (creating it implicitly when missing).
    pub(crate) fn opaque(&mut self, path: &str) {
        let id = self.ensure_dir(path.trim_matches('/'));
        if let Payload::Dir { opaque, .. } = &mut self.nodes[id.0 as usize].payload {
            *opaque = true;
        }
    }

    /// Adds a second name for the file at `target`.
    pub(crate) fn hardlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = path.trim_matches('/');
        let target = target.trim_matches('/');
        let Some(&tid) = self.by_path.get(target) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("hard link {path:?} points at {target:?}, which is not an earlier entry"),
            ));
        };
        if matches!(
            self.nodes[tid.0 as usize].payload,
            Payload::Dir { .. } | Payload::Whiteout
        ) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("hard link {path:?} points at directory or whiteout {target:?}"),
            ));
        }
        let (parent, name) = Self::split(path);
        let parent_id = self.ensure_dir(parent);
        self.link(parent_id, name, path, tid);
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Arena {
        drop(std::mem::take(&mut self.by_path));
        // Sort each directory's names; a name linked more than once keeps its last node.
        for node in &mut self.nodes {
            if let Payload::Dir { children, .. } = &mut node.payload {
                // Stable: equal names stay in link order.
                children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                children.dedup_by(|later, kept| {
                    let same = later.0 == kept.0;
                    if same {
                        kept.1 = later.1;
                    }
                    same
                });
            }
        }
        // Count names per node (hard links) and subdirectories per dir.
        let mut names: Vec<u32> = vec![0; self.nodes.len()];
        let mut subdirs: Vec<u32> = vec![0; self.nodes.len()];
        for (parent, node) in self.nodes.iter().enumerate() {
            if let Payload::Dir { children, .. } = &node.payload {
                for (_, id) in children {
                    names[id.0 as usize] += 1;
                    if matches!(self.nodes[id.0 as usize].payload, Payload::Dir { .. }) {
                        subdirs[parent] += 1;
                    }
                }
            }
        }
        for (i, node) in self.nodes.iter_mut().enumerate() {
            match node.payload {
                Payload::Dir { .. } => node.nlink = 2 + subdirs[i],
                _ => node.nlink = names[i].max(1),
            }
        }
        Arena { nodes: self.nodes }
    }
}

impl Arena {
    fn node(&self, id: NodeId) -> io::Result<&Node> {
        self.nodes.get(id.0 as usize).ok_or_else(|| bad_node(id))
    }

    pub(crate) fn lookup(&self, parent: NodeId, name: &OsStr) -> io::Result<Option<DirEntry>> {
        let Payload::Dir { children, .. } = &self.node(parent)?.payload else {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        };
        Ok(children
            .binary_search_by(|(n, _)| n.as_bytes().cmp(name.as_bytes()))
            .ok()
            .map(|i| {
                let id = children[i].1;
                DirEntry {
                    name: name.to_owned(),
                    node: id,
                    kind: self.nodes[id.0 as usize].kind(),
                }
            }))
    }

    pub(crate) fn read_dir(&self, dir: NodeId) -> io::Result<DirListing> {
        let Payload::Dir { children, opaque } = &self.node(dir)?.payload else {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        };
        Ok(DirListing {
            entries: children
                .iter()
                .map(|(n, id)| DirEntry {
                    name: n.to_os_string(),
                    node: *id,
                    kind: self.nodes[id.0 as usize].kind(),
                })
                .collect(),
            opaque: *opaque,
        })
    }

    pub(crate) fn getattr(&self, id: NodeId) -> io::Result<LowerAttr> {
        let n = self.node(id)?;
        let (rdev, opaque) = match &n.payload {
            Payload::Device { rdev, .. } => (*rdev, false),
            Payload::Dir { opaque, .. } => (0, *opaque),
            Payload::Whiteout => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
            _ => (0, false),
        };
        Ok(LowerAttr {
            kind: n.kind(),
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            nlink: n.nlink,
            rdev,
            mtime: n.mtime,
            mtime_nsec: n.mtime_nsec,
            opaque,
        })
    }

    pub(crate) fn readlink(&self, id: NodeId) -> io::Result<OsString> {
        match &self.node(id)?.payload {
            Payload::Symlink(t) => Ok(t.clone()),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    pub(crate) fn open(&self, id: NodeId) -> io::Result<Option<File>> {
        match &self.node(id)?.payload {
            Payload::File(Content::Object(p)) => File::open(p).map(Some).map_err(|e| {
                io::Error::new(e.kind(), format!("content object {}: {e}", p.display()))
            }),
            Payload::File(_) => Ok(None),
            Payload::Dir { .. } => Err(io::Error::from_raw_os_error(libc::EISDIR)),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    pub(crate) fn read_at(&self, id: NodeId, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match &self.node(id)?.payload {
            Payload::File(Content::Empty) => Ok(0),
            Payload::File(Content::Inline(bytes)) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let n = buf.len().min(bytes.len() - start);
                buf[..n].copy_from_slice(&bytes[start..start + n]);
                Ok(n)
            }
            Payload::File(Content::Object(p)) => File::open(p)?.read_at(buf, offset),
            Payload::Dir { .. } => Err(io::Error::from_raw_os_error(libc::EISDIR)),
            _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }

    /// Overlay markers among a node's xattrs (a layer imported from an overlay upper).
    pub(crate) fn marks(&self, id: NodeId) -> io::Result<crate::lower::Marks> {
        let n = self.node(id)?;
        if n.xattrs.is_empty() {
            return Ok(crate::lower::Marks::default());
        }
        let names: Vec<Vec<u8>> = n.xattrs.iter().map(|(k, _)| k.clone()).collect();
        crate::marker::from_names(&names, |want| {
            Ok(n.xattrs
                .iter()
                .find(|(k, _)| k == want)
                .map(|(_, v)| v.clone()))
        })
    }

    pub(crate) fn xattrs(&self, id: NodeId) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .node(id)?
            .xattrs
            .iter()
            .filter(|(n, _)| !is_internal_xattr(n))
            .cloned()
            .collect())
    }
}

/// A lower tree built from the store's index entries of one layer.
#[derive(Debug)]
pub struct IndexTree {
    arena: Arena,
}

impl IndexTree {
    /// Builds the tree from one layer's entries in tar order. Missing parents become implicit
    /// directories (0755, root). Later entries for a path replace earlier ones; a whiteout never
    /// hides an entry of its own layer.
    ///
    /// # Errors
    /// `InvalidData` when a hard link names a path that is not an earlier file entry, or a
    /// non-empty file has no content object.
    pub fn from_entries(entries: Vec<IndexEntry>) -> io::Result<IndexTree> {
        let mut b = IndexTreeBuilder::with_capacity(entries.len());
        for e in entries {
            b.push(&e.path, e.kind, e.meta)?;
        }
        Ok(b.finish())
    }

    /// Starts a tree built entry by entry (the same rules as [`IndexTree::from_entries`],
    /// without a `Vec` of owned entries).
    pub fn builder(entries: usize) -> IndexTreeBuilder {
        IndexTreeBuilder::with_capacity(entries)
    }

    // Only `testing::MemTree` builds arenas directly.
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))]
    pub(crate) fn from_arena(arena: Arena) -> IndexTree {
        IndexTree { arena }
    }
}

/// Builds an [`IndexTree`] one entry at a time, in tar order (see [`IndexTree::from_entries`]).
#[derive(Debug)]
pub struct IndexTreeBuilder {
    b: ArenaBuilder,
}

impl IndexTreeBuilder {
    /// A builder with room for about `entries` entries (a hint; the tree grows as needed).
    pub fn with_capacity(entries: usize) -> IndexTreeBuilder {
        IndexTreeBuilder {
            b: ArenaBuilder::with_capacity(entries),
        }
    }

    /// Adds the entry at `path` (relative, `/`-separated, `""` = root).
    ///
    /// # Errors
    /// `InvalidData` when a hard link names a path that is not an earlier file entry, or a
    /// non-empty file has no content object; the builder stays usable.
    pub fn push(&mut self, path: &str, kind: IndexKind, meta: IndexMeta) -> io::Result<()> {
        let (payload, size) = match kind {
            IndexKind::File { size, content } => {
                let c = match content {
                    Some(p) if size > 0 => Content::Object(p),
                    None if size > 0 => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("file {path:?} has {size} bytes but no content object"),
                        ));
                    }
                    _ => Content::Empty,
                };
                (Payload::File(c), size)
            }
            IndexKind::Dir => (
                Payload::Dir {
                    children: Vec::new(),
                    opaque: false,
                },
                0,
            ),
            IndexKind::Symlink { target } => {
                let len = target.len() as u64;
                (Payload::Symlink(OsString::from(target)), len)
            }
            IndexKind::HardLink { target } => return self.b.hardlink(path, &target),
            IndexKind::CharDev { major, minor } => (
                Payload::Device {
                    kind: EntryKind::CharDev,
                    rdev: rustix::fs::makedev(major, minor),
                },
                0,
            ),
            IndexKind::BlockDev { major, minor } => (
                Payload::Device {
                    kind: EntryKind::BlockDev,
                    rdev: rustix::fs::makedev(major, minor),
                },
                0,
            ),
            IndexKind::Fifo => (Payload::Fifo, 0),
            IndexKind::Whiteout => (Payload::Whiteout, 0),
            IndexKind::Opaque => {
                self.b.opaque(path);
                return Ok(());
            }
        };
        self.b.add_meta(path, payload, meta, size);
        Ok(())
    }

    /// The finished tree.
    pub fn finish(self) -> IndexTree {
        IndexTree {
            arena: self.b.finish(),
        }
    }
}

/// The root node of every arena tree.
const ARENA_ROOT: NodeId = NodeId(0);

impl LowerTree for IndexTree {
    fn root(&self) -> NodeId {
        ARENA_ROOT
    }
    fn lookup(&self, parent: NodeId, name: &OsStr) -> io::Result<Option<DirEntry>> {
        self.arena.lookup(parent, name)
    }
    fn read_dir(&self, dir: NodeId) -> io::Result<DirListing> {
        self.arena.read_dir(dir)
    }
    fn getattr(&self, node: NodeId) -> io::Result<LowerAttr> {
        self.arena.getattr(node)
    }
    fn readlink(&self, node: NodeId) -> io::Result<OsString> {
        self.arena.readlink(node)
    }
    fn open(&self, node: NodeId) -> io::Result<Option<File>> {
        self.arena.open(node)
    }
    fn read_at(&self, node: NodeId, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.arena.read_at(node, buf, offset)
    }
    fn xattrs(&self, node: NodeId) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.arena.xattrs(node)
    }
    fn marks(&self, node: NodeId) -> io::Result<crate::lower::Marks> {
        self.arena.marks(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, kind: IndexKind) -> IndexEntry {
        IndexEntry {
            path: path.into(),
            kind,
            meta: IndexMeta {
                mode: 0o644,
                uid: 1,
                gid: 2,
                mtime: 5,
                ..IndexMeta::default()
            },
        }
    }

    fn file(path: &str) -> IndexEntry {
        e(
            path,
            IndexKind::File {
                size: 0,
                content: None,
            },
        )
    }

    fn names(t: &IndexTree, dir: NodeId) -> Vec<(String, EntryKind)> {
        t.read_dir(dir)
            .unwrap()
            .entries
            .into_iter()
            .map(|d| (d.name.to_string_lossy().into_owned(), d.kind))
            .collect()
    }

    #[test]
    fn implicit_parents_are_root_owned_0755_dirs() {
        let t = IndexTree::from_entries(vec![file("a/b/c")]).unwrap();
        let a = t.lookup(t.root(), OsStr::new("a")).unwrap().unwrap();
        let attr = t.getattr(a.node).unwrap();
        assert_eq!((attr.kind, attr.mode, attr.uid), (EntryKind::Dir, 0o755, 0));
        assert_eq!(attr.nlink, 3);
    }

    #[test]
    fn own_whiteout_never_hides_own_entry() {
        let t = IndexTree::from_entries(vec![
            file("x"),
            e("x", IndexKind::Whiteout),
            e("y", IndexKind::Whiteout),
            file("y"),
        ])
        .unwrap();
        assert_eq!(
            names(&t, t.root()),
            vec![("x".into(), EntryKind::File), ("y".into(), EntryKind::File)]
        );
    }

    #[test]
    fn whiteouts_and_opaque_are_typed() {
        let t = IndexTree::from_entries(vec![
            e("d", IndexKind::Dir),
            e("d", IndexKind::Opaque),
            e("d/gone", IndexKind::Whiteout),
        ])
        .unwrap();
        let d = t.lookup(t.root(), OsStr::new("d")).unwrap().unwrap();
        let l = t.read_dir(d.node).unwrap();
        assert!(l.opaque);
        assert!(t.getattr(d.node).unwrap().opaque);
        assert_eq!(
            names(&t, d.node),
            vec![("gone".into(), EntryKind::Whiteout)]
        );
    }

    #[test]
    fn hard_links_share_node_and_count_names() {
        let t = IndexTree::from_entries(vec![
            file("a"),
            e("b", IndexKind::HardLink { target: "a".into() }),
        ])
        .unwrap();
        let a = t.lookup(t.root(), OsStr::new("a")).unwrap().unwrap();
        let b = t.lookup(t.root(), OsStr::new("b")).unwrap().unwrap();
        assert_eq!(a.node, b.node);
        assert_eq!(t.getattr(a.node).unwrap().nlink, 2);
        assert!(
            IndexTree::from_entries(vec![e("b", IndexKind::HardLink { target: "z".into() })])
                .is_err()
        );
    }

    #[test]
    fn later_entries_replace_earlier_names() {
        let t = IndexTree::from_entries(vec![
            file("a"),
            e("a", IndexKind::Symlink { target: "x".into() }),
            file("b"),
            e("c", IndexKind::HardLink { target: "b".into() }),
            e("c", IndexKind::HardLink { target: "b".into() }),
            e("d", IndexKind::Dir),
            file("d/f"),
            e("d", IndexKind::Dir),
        ])
        .unwrap();
        assert_eq!(
            names(&t, t.root()),
            vec![
                ("a".into(), EntryKind::Symlink),
                ("b".into(), EntryKind::File),
                ("c".into(), EntryKind::File),
                ("d".into(), EntryKind::Dir)
            ]
        );
        let b = t.lookup(t.root(), OsStr::new("b")).unwrap().unwrap();
        assert_eq!(t.getattr(b.node).unwrap().nlink, 2);
        let d = t.lookup(t.root(), OsStr::new("d")).unwrap().unwrap();
        assert_eq!(names(&t, d.node), vec![("f".into(), EntryKind::File)]);
        assert_eq!(t.getattr(t.root()).unwrap().nlink, 3);
    }

    #[test]
    fn builder_matches_from_entries() {
        let entries = vec![
            e("", IndexKind::Dir),
            file("z/y"),
            e("z", IndexKind::Opaque),
            e("w", IndexKind::Whiteout),
            e(
                "l",
                IndexKind::HardLink {
                    target: "z/y".into(),
                },
            ),
        ];
        let a = IndexTree::from_entries(entries.clone()).unwrap();
        let mut b = IndexTree::builder(entries.len());
        for x in entries {
            b.push(&x.path, x.kind, x.meta).unwrap();
        }
        let b = b.finish();
        assert_eq!(names(&a, a.root()), names(&b, b.root()));
        let z = b.lookup(b.root(), OsStr::new("z")).unwrap().unwrap();
        assert!(b.read_dir(z.node).unwrap().opaque);
        assert_eq!(b.getattr(b.root()).unwrap().uid, 1);
        let mut bad = IndexTree::builder(1);
        assert!(
            bad.push(
                "q",
                IndexKind::HardLink {
                    target: "nope".into()
                },
                IndexMeta::default()
            )
            .is_err()
        );
    }

    #[test]
    fn dir_entry_after_implicit_keeps_children() {
        let t = IndexTree::from_entries(vec![file("d/f"), e("d", IndexKind::Dir)]).unwrap();
        let d = t.lookup(t.root(), OsStr::new("d")).unwrap().unwrap();
        assert_eq!(t.getattr(d.node).unwrap().uid, 1);
        assert_eq!(names(&t, d.node), vec![("f".into(), EntryKind::File)]);
    }
}
