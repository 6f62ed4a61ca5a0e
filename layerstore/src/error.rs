//! The one error type of the `layerstore` crate.

use std::path::PathBuf;

use crate::reference::ReferenceError;

/// Everything that can go wrong in the store. Messages say what, where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed; `path` is the file it was about.
    #[error("{op} {path}")]
    Io {
        /// What was being done ("open", "write", "rename", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading an input stream (a tar, a decompressor) failed.
    #[error("reading {what}")]
    Read {
        /// What was being read ("layer tar", "gzip stream", …).
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The SQLite index failed.
    #[error("store index {path}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A layer tar is malformed or unsafe.
    #[error("invalid layer tar at byte {offset}{}: {reason}", entry.as_ref().map(|e| format!(" (entry {e:?})")).unwrap_or_default())]
    BadTar {
        /// Offset of the header block in the uncompressed stream.
        offset: u64,
        /// The entry's name, when known.
        entry: Option<String>,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// A digest string does not parse.
    #[error("invalid digest {input:?}: {reason}")]
    BadDigest {
        /// The input.
        input: String,
        /// Why.
        reason: &'static str,
    },
    /// Content does not match the digest it was announced with.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked ("layer 2", "object …").
        what: String,
        /// The announced digest.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// An image reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// An image config (JSON) is invalid.
    #[error("invalid image config{}: {reason}", context.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    BadConfig {
        /// Where it came from.
        context: Option<String>,
        /// Why.
        reason: String,
    },
    /// Nothing in the store matches the name or ID.
    #[error("{kind} {name:?} not found in the store{hint}")]
    NotFound {
        /// "image", "layer", "container", …
        kind: &'static str,
        /// What was asked for.
        name: String,
        /// A hint on what to do (starts with "; " or is empty).
        hint: String,
    },
    /// A short ID matches more than one object.
    #[error("{kind} ID prefix {prefix:?} is ambiguous ({count} matches); give more characters")]
    Ambiguous {
        /// "image", "layer".
        kind: &'static str,
        /// The prefix given.
        prefix: String,
        /// How many matched.
        count: usize,
    },
    /// An operation is refused because of the store's state.
    #[error("{0}")]
    Conflict(String),
    /// The store's on-disk format is newer than this program.
    #[error(
        "store {path} has schema version {found}, newer than this strata ({supported}); upgrade strata"
    )]
    TooNew {
        /// The database path.
        path: PathBuf,
        /// The version found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
}

/// `Result` with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an `io::Error` with the operation and path it came from.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The message with every cause appended (`a: b: c`), for reports that keep errors as text.
    pub fn chain_text(&self) -> String {
        let mut s = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    pub(crate) fn bad_tar(offset: u64, entry: Option<&str>, reason: impl Into<String>) -> Error {
        Error::BadTar {
            offset,
            entry: entry.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

/// Adds path context to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
