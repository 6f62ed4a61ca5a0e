//! `strata build`: Dockerfile parsing, stages, the step runner and the cache.

pub mod dockerfile;
pub mod expand;
