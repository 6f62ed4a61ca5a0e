//! Test helpers (feature `test-util`): an in-memory lower tree and a mount guard.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::sync::Arc;

use crate::index::{ArenaBuilder, Content, IndexEntry, IndexKind, IndexMeta, IndexTree, Payload};
use crate::lower::{DirEntry, DirListing, EntryKind, LowerAttr, LowerTree, NodeId};

pub use crate::mount::MountedUnion;

/// An in-memory lower tree for tests; contents live in memory, so `open` returns `None` and the
/// union reads through `read_at`.
#[derive(Debug)]
pub struct MemTree {
    inner: IndexTree,
}

/// Builds a [`MemTree`] entry by entry (paths relative, `/`-separated; parents implicit).
#[derive(Debug)]
pub struct MemTreeBuilder {
    b: ArenaBuilder,
    err: Option<io::Error>,
}

fn meta(path: &str, mode: u32) -> IndexEntry {
    IndexEntry {
        path: path.to_owned(),
        kind: IndexKind::Dir,
        meta: IndexMeta {
            mode,
            mtime: 1_000_000_000,
            ..IndexMeta::default()
        },
    }
}

impl MemTree {
    /// Starts an empty tree.
    pub fn builder() -> MemTreeBuilder {
        MemTreeBuilder {
            b: ArenaBuilder::new(),
            err: None,
        }
    }
}

impl MemTreeBuilder {
    /// A directory.
    pub fn dir(mut self, path: &str, mode: u32) -> Self {
        self.b.add(
            path,
            Payload::Dir {
                children: Vec::new(),
                opaque: false,
            },
            &meta(path, mode),
            0,
        );
        self
    }
    /// A regular file with `content`.
    pub fn file(mut self, path: &str, content: &[u8], mode: u32) -> Self {
        let c = if content.is_empty() {
            Content::Empty
        } else {
            Content::Inline(content.into())
        };
        self.b.add(
            path,
            Payload::File(c),
            &meta(path, mode),
            content.len() as u64,
        );
        self
    }
    /// A regular file with an owner and xattrs.
    pub fn file_with(
        mut self,
        path: &str,
        content: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Self {
        let mut m = meta(path, mode);
        m.meta.uid = uid;
        m.meta.gid = gid;
        m.meta.xattrs = xattrs;
        let c = if content.is_empty() {
            Content::Empty
        } else {
            Content::Inline(content.into())
        };
        self.b.add(path, Payload::File(c), &m, content.len() as u64);
        self
    }
    /// A symlink.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.b.add(
            path,
            Payload::Symlink(OsString::from(target)),
            &meta(path, 0o777),
            target.len() as u64,
        );
        self
    }
    /// A named pipe.
    pub fn fifo(mut self, path: &str, mode: u32) -> Self {
        self.b.add(path, Payload::Fifo, &meta(path, mode), 0);
        self
    }
    /// A whiteout hiding `path` in lower layers.
    pub fn whiteout(mut self, path: &str) -> Self {
        self.b.add(path, Payload::Whiteout, &meta(path, 0), 0);
        self
    }
    /// Marks directory `path` opaque.
    pub fn opaque(mut self, path: &str) -> Self {
        self.b.opaque(path);
        self
    }
    /// A second name `path` for the earlier file `target`.
    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        if let Err(e) = self.b.hardlink(path, target) {
            self.err.get_or_insert(e);
        }
        self
    }
    /// Finishes the tree.
    ///
    /// # Panics
    /// When a hard link named a missing target (test trees are written by hand).
    pub fn build(self) -> Arc<MemTree> {
        if let Some(e) = self.err {
            panic!("bad MemTree: {e}");
        }
        Arc::new(MemTree {
            inner: IndexTree::from_arena(self.b.finish()),
        })
    }
}

impl LowerTree for MemTree {
    fn root(&self) -> NodeId {
        self.inner.root()
    }
    fn lookup(&self, parent: NodeId, name: &OsStr) -> io::Result<Option<DirEntry>> {
        self.inner.lookup(parent, name)
    }
    fn read_dir(&self, dir: NodeId) -> io::Result<DirListing> {
        self.inner.read_dir(dir)
    }
    fn getattr(&self, node: NodeId) -> io::Result<LowerAttr> {
        self.inner.getattr(node)
    }
    fn readlink(&self, node: NodeId) -> io::Result<OsString> {
        self.inner.readlink(node)
    }
    fn open(&self, node: NodeId) -> io::Result<Option<File>> {
        match self.inner.getattr(node)?.kind {
            EntryKind::File => Ok(None),
            _ => self.inner.open(node),
        }
    }
    fn read_at(&self, node: NodeId, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(node, buf, offset)
    }
    fn xattrs(&self, node: NodeId) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.inner.xattrs(node)
    }
    fn marks(&self, node: NodeId) -> io::Result<crate::lower::Marks> {
        self.inner.marks(node)
    }
}
