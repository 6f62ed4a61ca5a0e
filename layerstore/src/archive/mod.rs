//! Image archives: `save` writes the Docker ≥ 25 tarball (which is also an OCI image layout) or
//! an OCI layout directory; `load` reads Docker tarballs old and new and OCI layouts, as a tar
//! stream (plain, gzip or zstd) or a directory.
//!
//! # What `save` writes (Docker ≥ 25 shape)
//!
//! ```text
//! oci-layout                 {"imageLayoutVersion": "1.0.0"}
//! index.json                 OCI index: one manifest descriptor per tag (annotations
//!                            io.containerd.image.name = full ref,
//!                            org.opencontainers.image.ref.name = tag); one bare one per
//!                            untagged image
//! manifest.json              [{"Config":"blobs/sha256/<id>","RepoTags":[familiar],
//!                              "Layers":["blobs/sha256/<diff_id>",…]}]
//! repositories               {"<familiar name>":{"<tag>":"<hex of the top diff_id>"}} (tagged only)
//! blobs/sha256/<…>           configs, OCI manifests, then layers (each blob once)
//! ```
//!
//! The metadata comes first and the layers last, so `load` of our own archives knows every
//! layer's expected DiffID before the layer arrives and ingests it in one pass. The output is
//! deterministic: fixed header fields (uid/gid 0, modes 0644/0755, mtime 0 for metadata and
//! the image's `created` for its blobs), a fixed order, compact JSON with a fixed field order,
//! and pinned compressor settings, so saving the same images twice gives the same bytes.
//! Uncompressed layers are streamed from the store straight into the output (their sizes are
//! in the index): nothing is staged. With `--compress`, each compressed layer is written once
//! to a temp file under the store's `tmp/` (its digest and size must be in the manifest,
//! which precedes it) and then copied out.
//!
//! # What `load` reads
//!
//! See the `load` module: the tar is read once, front to back; small JSON files are kept in memory,
//! layers are ingested into the store as they pass (see there for the order rules).

mod load;
pub(crate) mod oci;
mod save;
mod tarout;

pub use load::{LoadOptions, LoadReport, LoadedImage, Platform};
pub use save::{LayerCodec, SaveOptions, SavePlan};
pub use tarout::{TarEntrySpec, TarKind, TarWriter};

use crate::error::Error;

/// Name of the OCI layout marker file.
pub const OCI_LAYOUT_FILE: &str = "oci-layout";
/// The OCI layout marker's content, spaced as Docker writes it.
pub const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion": "1.0.0"}"#;
/// The only layout version defined.
pub const OCI_LAYOUT_VERSION: &str = "1.0.0";
/// Name of the OCI index.
pub const INDEX_FILE: &str = "index.json";
/// Name of Docker's manifest list of a tarball.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Name of Docker's legacy repositories file.
pub const REPOSITORIES_FILE: &str = "repositories";
/// Directory of blobs in an OCI layout.
pub const BLOBS_DIR: &str = "blobs/sha256";

/// Media types (image-spec `media-types.md`, Docker's equivalents).
pub mod media {
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Uncompressed OCI layer.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// gzip OCI layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// zstd OCI layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker image manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
}

/// Annotation with the full reference (`docker.io/library/busybox:latest`).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// Annotation with the tag (`latest`).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// What went wrong with an archive. Store errors pass through unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive breaks the rules of its format.
    #[error("invalid image archive: {0}")]
    Invalid(String),
    /// A layer's content does not hash to the DiffID its config lists.
    #[error("invalid diffID for layer {index} ({path}): expected {expected}, got {actual}")]
    DiffId {
        /// Position in the image's layer list.
        index: usize,
        /// Where the layer is in the archive.
        path: String,
        /// From the config.
        expected: String,
        /// Of the bytes in the archive.
        actual: String,
    },
    /// A layer of the archive could not be read or stored.
    #[error("layer {path} of the archive")]
    Layer {
        /// Where the layer is in the archive.
        path: String,
        /// Why.
        #[source]
        source: Error,
    },
    /// No image of the archive matches the requested platform.
    #[error(
        "no image for platform {wanted} in the archive (it has: {available}); choose one \
         with --platform os/arch[/variant]"
    )]
    Platform {
        /// What was asked for.
        wanted: String,
        /// What the archive offers.
        available: String,
    },
    /// A file operation on an archive file or directory failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] Error),
}

/// `Result` of archive operations.
pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<std::path::PathBuf>,
) -> impl FnOnce(std::io::Error) -> ArchiveError {
    move |source| ArchiveError::Io {
        op,
        path: path.into(),
        source,
    }
}

/// Seconds since the epoch of an RFC 3339 time; 0 when absent or unparsable (tar mtimes of
/// saved blobs; Docker uses the image's `created`).
pub(crate) fn rfc3339_secs(s: Option<&str>) -> u64 {
    s.and_then(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    })
    .map(|t| u64::try_from(t.unix_timestamp()).unwrap_or(0))
    .unwrap_or(0)
}
