//! strata's union filesystem: a FUSE mount that stacks read-only lower trees under an optional
//! writable upper directory, with kernel-overlayfs semantics (case by case in
//! `docs/SEMANTICS.md`).
//!
//! # Boundary
//! Lower layers come in through one narrow, read-only, object-safe trait, [`LowerTree`];
//! whiteouts and opaque directories cross it as typed values ([`EntryKind::Whiteout`], the
//! `opaque` flags), never as `.wh.` names. Shipped trees: [`IndexTree`] (entries handed over by
//! the store as plain data, contents read from its content objects, so layers are never
//! extracted), [`DirTree`] (a plain directory, `lowerdir=`-style; the one place here that parses
//! `.wh.` spellings; it also reports the overlay markers of a directory that was once an
//! upper, as [`Marks`], which the union follows like overlayfs) and `testing::MemTree` (feature
//! `test-util`). This crate never depends on the store or SQLite; the CLI resolves an image to its layers, builds the trees and calls
//! [`spawn`] or [`mount`].
//!
//! # Layout
//! ```text
//! lower.rs    LowerTree and its value types          index.rs    IndexTree (+ arena for MemTree)
//! dirtree.rs  DirTree                                testing.rs  MemTree, MountedUnion
//! fs/         UnionFs: the filesystem, no FUSE types (Result<T, FsError>)
//!   mod.rs    lookup, getattr, readdir, read, xattrs  write.rs   copy-up and every change
//!   inode.rs  InodeTable: merged path -> inode         upper.rs   upper dir, whiteouts, data copy
//! fuse.rs     fuser adapter (the only file with Reply*) mount.rs  UnionConfig, spawn, mount
//! error.rs    FsError with an exhaustive errno()      sys.rs     the only unsafe (signals)
//! idmap.rs    uid/gid shifting (uidmapping=, squash_*), applied by fuse.rs only
//! marker.rs   overlay.metacopy/redirect spellings   longpath.rs paths deeper than PATH_MAX
//! ```
//!
//! # Upper directory on disk
//! ```text
//! upper/            changes at their merged paths
//!   a/file          copied-up or new file; a metadata-only copy-up is a file of the data's
//!                   size with no data and overlayfs's marker overlay.metacopy (`trusted.` as
//!                   root, else `user.`), plus overlay.redirect when the data is elsewhere
//!   a/gone          whiteout: char device 0/0 (or an empty `.wh.gone` file where mknod fails)
//!   d/              opaque dir: trusted.overlay.opaque=y (root) or user.overlay.opaque=y
//!   moved/          renamed lower dir: overlay.redirect=<name in the parent, or /path>
//! work/             temp files of copy-ups (strata-tmp-*), emptied at mount
//! ```
//!
//! # Locking
//! Lock order (see [`fs`]): the namespace lock (shared for adding names and copy-up, exclusive
//! for unlink/rmdir/rename) → per-inode copy-up locks (a node before its ancestors) → the inode
//! table (map operations only, never held across I/O) → the handle table. Lookups, `getattr`
//! and reads take no namespace lock, so they never wait for a copy-up. `n_threads` threads
//! read the kernel's requests (`clone_fd`) and answer the quick ones; requests that may block
//! (reads not in the page cache, writes, opens for writing, truncates, fsync) go to as many
//! workers (`fuse.rs`, `Pool`).
//!
//! # Inode lifetimes
//! An inode number belongs to a merged path from its first lookup (or listing) for the life of
//! the mount; copy-up and rename keep it, hard links of a layer share it. `forget` only drops the
//! kernel's reference count; numbers are never reused within a mount.

pub mod changes;
pub mod dirtree;
pub mod error;
pub mod fs;
mod fuse;
pub mod idmap;
pub mod index;
mod longpath;
pub mod lower;
mod marker;
mod mount;
mod sys;
#[cfg(feature = "test-util")]
pub mod testing;
mod xattr;

pub use dirtree::DirTree;
pub use error::{FsError, Result};
pub use fs::write::{SetAttr, SetTime};
pub use fs::{Attr, Caller, DirItem, Entry, Fh, FsOptions, Ino, ROOT_INO, StatFs, UnionFs};
pub use idmap::{IdMap, IdRange};
pub use index::{IndexEntry, IndexKind, IndexMeta, IndexTree};
pub use lower::{DirEntry, DirListing, EntryKind, LowerAttr, LowerTree, Marks, NodeId, Redirect};
pub use mount::{MountOptions, Session, UnionConfig, UpperDirs, mount, spawn};
