//! A client of the OCI distribution API (registries): auth, blobs, manifests, push and pull.
