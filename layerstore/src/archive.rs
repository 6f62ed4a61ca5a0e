//! Image archives: `save` (Docker ≥ 25 tarball, OCI layout) and `load` (Docker tarballs old and
//! new, OCI layouts as tar or directory). See issue "save / load / export".
