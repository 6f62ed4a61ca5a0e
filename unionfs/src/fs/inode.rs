//! The inode table: one inode number per merged path, kept for the life of the mount.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::lower::{EntryKind, NodeId};

/// An inode number of the merged view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

/// Deepest merged path walked up to the root (far deeper than any path string can name: a
/// process can `chdir` down level by level); beyond it a cycle is assumed.
const MAX_DEPTH: usize = 1 << 20;

/// The root directory's inode number (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_INO: Ino = Ino(1);

/// One node of one lower tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LowerRef {
    pub(crate) layer: usize,
    pub(crate) node: NodeId,
}

/// The lower nodes of an inode, top first.
pub(crate) type LowerRefs = smallvec::SmallVec<[LowerRef; 1]>;

/// What the union knows about one inode. Refreshed on every lookup; changed by the union's own
/// operations.
#[derive(Clone, Debug)]
pub(crate) struct NodeState {
    /// Primary name: the one used to reach the upper/lower copy.
    pub(crate) parent: Ino,
    pub(crate) name: OsString,
    /// Other names (hard links), besides the primary one.
    pub(crate) aliases: Vec<(Ino, OsString)>,
    pub(crate) lookups: u64,
    pub(crate) kind: EntryKind,
    /// Dirs: the lower layers merged into it, top first. Non-dirs: the lower copy, if any.
    /// Inline for one (almost every node): no allocation per inode.
    pub(crate) lower: LowerRefs,
    /// Where `lower` was resolved when that is not the parent's lower path plus the name: the
    /// path (relative, in the lower layers) of a redirect, a metacopy origin or a renamed entry.
    /// `None` for almost every node, which saves a path per inode.
    pub(crate) lower_origin: Option<Box<Path>>,
    /// Exists in the upper directory.
    pub(crate) upper: bool,
    /// The upper copy is a metadata-only placeholder; data still comes from `lower`.
    pub(crate) metacopy: bool,
    /// Link count kept by the union for lower files with several names (hard links).
    pub(crate) nlink: Option<u32>,
    /// No name left (open handles may still use it).
    pub(crate) unlinked: bool,
    /// Attributes of an unlinked inode, taken when its last name went (`st_nlink` 0), for
    /// `fstat`/`fchmod`/… through a descriptor when no open upper file can answer: a removed
    /// directory (there are no directory handles) or a lower file. Changed in memory only.
    pub(crate) gone: Option<Box<super::Attr>>,
    /// Numbered by a readdir but never looked up: its state is not resolved yet.
    pub(crate) reserved: bool,
    /// Serialises copy-up of this inode; made on first use (most inodes are never copied up).
    pub(crate) copy_lock: Option<Arc<Mutex<()>>>,
}

impl NodeState {
    pub(crate) fn new(parent: Ino, name: OsString, kind: EntryKind) -> Self {
        NodeState {
            parent,
            name,
            aliases: Vec::new(),
            lookups: 0,
            kind,
            lower: LowerRefs::new(),
            lower_origin: None,
            upper: false,
            metacopy: false,
            nlink: None,
            unlinked: false,
            gone: None,
            reserved: false,
            copy_lock: None,
        }
    }
}

/// Inodes by number. Numbers are handed out in sequence from 1 and never freed (they stay
/// bound to their path for the mount's life), so a vector indexed by `ino - 1` is the whole map,
/// without a hash table's per-entry overhead.
#[derive(Debug, Default)]
struct NodeVec(Vec<NodeState>);

impl NodeVec {
    fn index(ino: &Ino) -> Option<usize> {
        usize::try_from(ino.0.checked_sub(1)?).ok()
    }

    fn get(&self, ino: &Ino) -> Option<&NodeState> {
        self.0.get(Self::index(ino)?)
    }

    fn get_mut(&mut self, ino: &Ino) -> Option<&mut NodeState> {
        let i = Self::index(ino)?;
        self.0.get_mut(i)
    }

    /// Adds the node for the next number, which must be `ino`.
    fn insert(&mut self, ino: Ino, n: NodeState) {
        debug_assert_eq!(
            Self::index(&ino),
            Some(self.0.len()),
            "inode numbers are sequential"
        );
        self.0.push(n);
    }
}

/// `(parent, name) -> inode`, as one map per parent directory.
#[derive(Debug, Default)]
struct Children(HashMap<Ino, HashMap<OsString, Ino>>);

impl Children {
    fn get(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        self.0.get(&parent)?.get(name).copied()
    }

    fn insert(&mut self, parent: Ino, name: &OsStr, ino: Ino) {
        self.0
            .entry(parent)
            .or_default()
            .insert(name.to_owned(), ino);
    }

    fn remove(&mut self, parent: Ino, name: &OsStr) -> Option<Ino> {
        let m = self.0.get_mut(&parent)?;
        let ino = m.remove(name);
        if m.is_empty() {
            self.0.remove(&parent);
        }
        ino
    }
}

/// All inodes. Guarded by one `RwLock` in `UnionFs`, held only for map operations, never I/O.
#[derive(Debug, Default)]
pub(crate) struct InodeTable {
    nodes: NodeVec,
    /// Names per directory (nested, so a lookup by `&OsStr` allocates nothing).
    children: Children,
    /// Lower file (layer, node) → inode, so hard links of a layer share one inode.
    origins: HashMap<LowerRef, Ino>,
    next: u64,
}

impl InodeTable {
    pub(crate) fn new(root: NodeState) -> Self {
        let mut t = InodeTable {
            next: ROOT_INO.0 + 1,
            ..Default::default()
        };
        t.nodes.insert(ROOT_INO, root);
        t
    }

    pub(crate) fn get(&self, ino: Ino) -> Option<&NodeState> {
        self.nodes.get(&ino)
    }

    pub(crate) fn get_mut(&mut self, ino: Ino) -> Option<&mut NodeState> {
        self.nodes.get_mut(&ino)
    }

    /// The merged path of an inode, relative to the root (`""` for the root).
    pub(crate) fn path(&self, ino: Ino) -> Option<PathBuf> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        let mut guard = 0usize;
        while cur != ROOT_INO {
            let n = self.nodes.get(&cur)?;
            parts.push(&n.name);
            cur = n.parent;
            guard += 1;
            if guard > MAX_DEPTH {
                return None; // a cycle would be a bug; refuse rather than spin
            }
        }
        let mut p = PathBuf::new();
        for part in parts.iter().rev() {
            p.push(part);
        }
        Some(p)
    }

    /// The path (relative, in the lower layers) whose lower content the inode merges: its own
    /// `lower_origin`, else its parent's lower path plus its name.
    pub(crate) fn lower_path(&self, ino: Ino) -> Option<PathBuf> {
        let mut parts: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        let mut base: &Path = Path::new("");
        for _ in 0..MAX_DEPTH {
            let n = self.nodes.get(&cur)?;
            if let Some(o) = &n.lower_origin {
                base = o;
                break;
            }
            if cur == ROOT_INO {
                break;
            }
            parts.push(&n.name);
            cur = n.parent;
        }
        let mut p = base.to_path_buf();
        for part in parts.iter().rev() {
            p.push(part);
        }
        Some(p)
    }

    pub(crate) fn child(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        self.children.get(parent, name)
    }

    /// The inode for `parent/name`: the existing one, the one of a hard-linked `origin`, or a
    /// new one. The name is (re)attached to it.
    pub(crate) fn attach(
        &mut self,
        parent: Ino,
        name: &OsStr,
        kind: EntryKind,
        origin: Option<LowerRef>,
    ) -> Ino {
        if let Some(ino) = self.child(parent, name) {
            let reserved = match self.nodes.get_mut(&ino) {
                Some(n) if n.kind == kind => std::mem::replace(&mut n.reserved, false),
                _ => {
                    self.detach(parent, name);
                    return self.attach(parent, name, kind, origin);
                }
            };
            if let (true, Some(o)) = (reserved, origin) {
                match self.origins.get(&o).copied() {
                    // A hard link of an inode known under another name: share that inode.
                    Some(other) if other != ino => {
                        if let Some(n) = self.nodes.get_mut(&ino) {
                            n.unlinked = true;
                        }
                        self.children.remove(parent, name);
                        return self.attach(parent, name, kind, origin);
                    }
                    Some(_) => {}
                    None => {
                        self.origins.insert(o, ino);
                    }
                }
            }
            return ino;
        }
        if let Some(ino) = origin.as_ref().and_then(|o| self.origins.get(o).copied())
            && let Some(n) = self.nodes.get_mut(&ino)
        {
            if n.unlinked {
                n.parent = parent;
                n.name = name.to_owned();
                n.unlinked = false;
                n.gone = None;
            } else if !(n.parent == parent && n.name == name) {
                n.aliases.push((parent, name.to_owned()));
            }
            self.children.insert(parent, name, ino);
            return ino;
        }
        let ino = Ino(self.next);
        self.next += 1;
        self.nodes
            .insert(ino, NodeState::new(parent, name.to_owned(), kind));
        self.children.insert(parent, name, ino);
        if let Some(o) = origin {
            self.origins.insert(o, ino);
        }
        ino
    }

    /// Removes the name `parent/name`; returns its inode. The inode stays in the table (open
    /// handles, stable numbers) and is marked unlinked when it has no name left.
    pub(crate) fn detach(&mut self, parent: Ino, name: &OsStr) -> Option<Ino> {
        let ino = self.children.remove(parent, name)?;
        if let Some(n) = self.nodes.get_mut(&ino) {
            if n.parent == parent && n.name == name {
                if let Some((p, nm)) = n.aliases.pop() {
                    n.parent = p;
                    n.name = nm;
                } else {
                    n.unlinked = true;
                }
            } else {
                n.aliases.retain(|(p, nm)| !(*p == parent && nm == name));
            }
            if let Some(c) = n.nlink.as_mut() {
                *c = c.saturating_sub(1);
            }
        }
        Some(ino)
    }

    /// Moves the name `parent/name` to `new_parent/new_name` (which must be free).
    pub(crate) fn rename(&mut self, parent: Ino, name: &OsStr, new_parent: Ino, new_name: &OsStr) {
        let Some(ino) = self.children.remove(parent, name) else {
            return;
        };
        self.children.insert(new_parent, new_name, ino);
        if let Some(n) = self.nodes.get_mut(&ino) {
            if n.parent == parent && n.name == name {
                n.parent = new_parent;
                n.name = new_name.to_owned();
            } else {
                for a in n.aliases.iter_mut() {
                    if a.0 == parent && a.1 == name {
                        *a = (new_parent, new_name.to_owned());
                    }
                }
            }
        }
    }

    /// Numbers `parent/name` for a directory listing without resolving it.
    pub(crate) fn reserve(&mut self, parent: Ino, name: &OsStr, kind: EntryKind) -> Ino {
        if let Some(ino) = self.child(parent, name) {
            return ino;
        }
        let ino = Ino(self.next);
        self.next += 1;
        let mut n = NodeState::new(parent, name.to_owned(), kind);
        n.reserved = true;
        self.nodes.insert(ino, n);
        self.children.insert(parent, name, ino);
        ino
    }

    /// Adds a second name to an existing inode (hard link).
    pub(crate) fn add_alias(&mut self, ino: Ino, parent: Ino, name: &OsStr) {
        self.children.insert(parent, name, ino);
        if let Some(n) = self.nodes.get_mut(&ino) {
            if n.unlinked {
                n.parent = parent;
                n.name = name.to_owned();
                n.unlinked = false;
                n.gone = None;
            } else {
                n.aliases.push((parent, name.to_owned()));
            }
            if let Some(c) = n.nlink.as_mut() {
                *c += 1;
            }
        }
    }
}
