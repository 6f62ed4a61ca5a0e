//! strata's union filesystem: a FUSE mount that stacks read-only lower trees under an optional
//! writable upper directory, with kernel-overlayfs semantics (see `docs/SEMANTICS.md`).
//!
//! # Boundary
//! Lower layers come in through one narrow, read-only trait, [`LowerTree`]; whiteouts and opaque
//! directories cross it as typed values, never as `.wh.` names. Shipped trees: [`IndexTree`]
//! (entries handed over by the store as plain data, contents read from its objects), [`DirTree`]
//! (a plain directory, `lowerdir=`-style) and `testing::MemTree` (feature `test-util`). This crate
//! never depends on the store or SQLite.

pub mod dirtree;
pub mod error;
pub mod fs;
mod fuse;
pub mod index;
pub mod lower;
mod mount;
mod sys;
#[cfg(feature = "test-util")]
pub mod testing;
mod xattr;

pub use dirtree::DirTree;
pub use error::{FsError, Result};
pub use fs::{Attr, Caller, DirItem, Entry, Fh, FsOptions, Ino, ROOT_INO, StatFs, UnionFs};
pub use index::{IndexEntry, IndexKind, IndexTree};
pub use lower::{DirEntry, DirListing, EntryKind, LowerAttr, LowerTree, NodeId};
pub use mount::{MountOptions, Session, UnionConfig, UpperDirs, mount, spawn};
