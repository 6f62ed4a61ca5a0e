//! End-to-end tests: the real `strata` binary against stores in temp dirs.

mod archive_cli;
mod commit_cli;
mod common;
mod mount_cli;
mod store_cli;
