//! Mounted tests: one per section of docs/SEMANTICS.md, plus a differential test against kernel
//! overlayfs. Each mounts for real under a `strata-test-*` temp dir and always unmounts.

mod common;
mod differential;
mod semantics;
