//! End-to-end tests: the real `strata` binary against stores in temp dirs.

mod common;
mod store_cli;
