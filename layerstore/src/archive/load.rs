//! `load` (in progress).

/// Options of `load`.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Platform to pick from multi-platform indexes (default: the host's).
    pub platform: Option<Platform>,
}

/// An `os/arch[/variant]` platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// GOOS.
    pub os: String,
    /// GOARCH.
    pub architecture: String,
    /// Variant.
    pub variant: Option<String>,
}

/// One loaded image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedImage {
    /// ImageID.
    pub id: crate::Digest,
    /// Full references it was tagged with.
    pub tags: Vec<String>,
}

/// What `load` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Images, in archive order.
    pub images: Vec<LoadedImage>,
}
