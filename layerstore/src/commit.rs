//! Commit: a container's changes become one reproducible layer tar, ingested like any other layer.
