//! Mounted tests: one per section of docs/SEMANTICS.md, plus a differential test against kernel
//! overlayfs. Each mounts for real under a `strata-test-*` temp dir and always unmounts.

// Fixture helpers outside #[test] fns panic on setup errors by design; clippy's
// allow-unwrap-in-tests only covers the test fns themselves.
#![allow(clippy::unwrap_used)]

mod common;
mod differential;
mod mounting;
mod semantics;
