//! The crate's one error type.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;

/// Everything a union operation can fail with. Each variant maps to one errno in
/// [`FsError::errno`].
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The name does not exist in the merged view (or is hidden by a whiteout).
    #[error("no such file or directory")]
    NotFound,
    /// The name exists and the operation needs it not to.
    #[error("file exists")]
    Exists,
    /// A directory was needed.
    #[error("not a directory")]
    NotDir,
    /// A non-directory was needed.
    #[error("is a directory")]
    IsDir,
    /// The merged directory still has entries.
    #[error("directory not empty")]
    NotEmpty,
    /// The mount has no upper directory.
    #[error("read-only union: it has no upper directory")]
    ReadOnly,
    /// The name is spelled like an on-disk marker of the union and is refused.
    #[error("name {0:?} is reserved for whiteout markers")]
    ReservedName(OsString),
    /// An inode number the union never handed out (or already released).
    #[error("unknown inode {0}")]
    StaleInode(u64),
    /// A file handle the union never handed out (or already released).
    #[error("unknown file handle {0}")]
    BadHandle(u64),
    /// The extended attribute is not set.
    #[error("no such extended attribute")]
    NoXattr,
    /// The extended attribute belongs to the union's own markers.
    #[error("extended attribute {0:?} is internal to the union")]
    InternalXattr(String),
    /// The caller's buffer is too small.
    #[error("result does not fit the buffer")]
    Range,
    /// A bad argument.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// The operation is not implemented by the union.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// The operation is refused.
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    /// An I/O error on the upper or work directory.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An error reading a lower layer (0 = top).
    #[error("lower layer {layer}: {source}")]
    Lower {
        /// Index of the layer, top first.
        layer: usize,
        /// The error the tree returned.
        #[source]
        source: io::Error,
    },
    /// `/dev/fuse` cannot be opened.
    #[error("/dev/fuse is not accessible (mode 0600?): chmod 0666 /dev/fuse or run as root ({0})")]
    FuseUnavailable(#[source] io::Error),
    /// Mounting or serving failed.
    #[error("mount at {mountpoint}: {source}")]
    Mount {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// The error from fuser or the kernel.
        #[source]
        source: io::Error,
    },
    /// The union's configuration is unusable.
    #[error("bad union configuration: {0}")]
    Config(String),
}

/// Result of union operations.
pub type Result<T> = std::result::Result<T, FsError>;

fn os_errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl FsError {
    /// The errno to answer the kernel with.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::ReadOnly => libc::EROFS,
            FsError::ReservedName(_) => libc::EINVAL,
            FsError::StaleInode(_) => libc::ESTALE,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::NoXattr => libc::ENODATA,
            FsError::InternalXattr(_) => libc::EPERM,
            FsError::Range => libc::ERANGE,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::Unsupported(_) => libc::EOPNOTSUPP,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::Io { source, .. } => os_errno(source),
            FsError::Lower { source, .. } => os_errno(source),
            FsError::FuseUnavailable(source) => os_errno(source),
            FsError::Mount { source, .. } => os_errno(source),
            FsError::Config(_) => libc::EINVAL,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| FsError::Io { op, path, source }
    }

    pub(crate) fn lower(layer: usize) -> impl FnOnce(io::Error) -> Self {
        move |source| FsError::Lower { layer, source }
    }
}
