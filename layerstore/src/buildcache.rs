//! The build cache: content keys of Dockerfile steps mapped to their results (config and layer).
