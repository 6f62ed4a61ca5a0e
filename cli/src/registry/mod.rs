//! A client of the OCI distribution API (registries): auth, blobs, manifests, push and pull.
//!
//! * [`client`]: HTTP (ureq, rustls), scheme probing (https first; plain http for
//!   `--tls-verify=false` and, like Docker, for `localhost`/loopback registries when https
//!   fails), Basic and Bearer auth with a token cache per realm/service/scope, retries on
//!   5xx/429 honouring `Retry-After`.
//! * [`auth`]: credentials files (strata's, containers', Docker's) and challenges.
//! * [`push`] / [`pull`]: the transfers, layers in parallel (bounded), progress per layer.
//!
//! Compression, blob bookkeeping and manifests live in `layerstore::blobs`.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};
use layerstore::Digest;

use crate::Globals;

pub mod auth;
pub mod client;
pub mod pull;
pub mod push;

/// Default number of layers transferred at once (fits 2 cores; registries limit too).
pub const DEFAULT_JOBS: usize = 3;

/// One layer of a push or pull (`--format json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerReport {
    /// Digest of the compressed blob.
    pub digest: String,
    /// The layer's DiffID.
    pub diff_id: Digest,
    /// Blob size.
    pub size: u64,
    /// `pushed`, `pulled`, `already_exists` or `mounted`.
    pub status: &'static str,
    /// Repository a mount came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounted_from: Option<String>,
}

/// True when progress bars should be drawn.
pub fn progress_visible(g: &Globals) -> bool {
    use std::io::IsTerminal;
    !g.quiet && !g.verbose && !g.json() && std::io::stderr().is_terminal()
}

/// The set of per-layer bars of one transfer.
pub fn multi_progress(g: &Globals) -> MultiProgress {
    MultiProgress::with_draw_target(if progress_visible(g) {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    })
}

/// A byte bar for one layer in `mp`.
pub fn layer_bar(g: &Globals, mp: &MultiProgress, len: u64, msg: &str) -> ProgressBar {
    let pb = crate::progress::bytes_bar(g, Some(len), msg);
    mp.add(pb)
}
