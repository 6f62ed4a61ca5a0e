//! Compressed layer blobs (gzip, zstd) for push, pull and save: made deterministically, recorded in `layer_blobs`, kept or regenerated.
