//! End-to-end tests: the real `strata` binary against stores in temp dirs.

// Test code: a panic that shows the value is the failure report.
#![allow(clippy::unwrap_used)]

mod archive_cli;
mod build_cli;
mod buildah_cli;
mod commit_cli;
mod common;
mod isolation_cli;
mod lease_cli;
mod lifecycle_cli;
mod mount_cli;
mod overlayfs_cli;
mod registry_cli;
mod run_cli;
mod seed_cli;
mod store_cli;
