//! `layerstore`: strata's content-addressed layer store. It knows nothing of FUSE.
//!
//! # On disk
//!
//! ```text
//! <root>/store.db                  SQLite index (WAL): objects, layers, layer_entries,
//!                                  entry_xattrs, images, image_layers, tags, containers
//! <root>/objects/sha256/ab/<hex>   one file's content, named by its sha256; read-only
//! <root>/tmp/                      staging for new objects; garbage after a crash
//! <root>/blobs/sha256/<hex>         compressed layer blobs kept from pulls
//! <root>/containers/<id>/          upper/ and work/ of a container's union mount
//! <root>/run/                      state of live mounts (owned by the CLI)
//! <root>/lock                      flock: writers shared, gc exclusive
//! ```
//!
//! The root and every directory in it are 0700, the store's files 0600 and objects 0400:
//! other users see image files only through a mount (see [`privacy`]).
//!
//! A layer is stored file by file: each regular file's content is one object (so identical
//! files anywhere are stored once), and the layer's raw tar header blocks are kept in
//! `layer_entries`, so [`Store::export_layer`] regenerates the tar byte for byte and its DiffID
//! never drifts. Layers are never extracted to directories.
//!
//! # Crash safety
//!
//! New objects are written to `tmp/`, made durable with one `syncfs`, renamed to their final
//! names, synced again, and only then are the index rows committed in one transaction. A crash
//! at any point leaves a store whose index is consistent; at worst there are object files no
//! row refers to, or temp files, which `fsck` reports as warnings and `gc` removes.
//!
//! # Locking
//!
//! SQLite serialises transactions (WAL, busy timeout). Writers (ingest, add_image) hold the
//! lock file shared while they run; `gc` holds it exclusively, so it never deletes an object
//! that an import in progress has found and is about to reference.
//!
//! Between those steps (a layer ingested, not yet in an image; an image a mount reads) what a
//! process uses is held by a lease ([`lease`]): `gc` removes nothing a live lease holds, and a
//! lease expires when its process is gone.

pub mod archive;
pub mod blobs;
pub mod buildcache;
pub mod commit;
pub mod container;
pub mod digest;
pub mod error;
pub mod image;
pub mod layer;
pub mod lease;
pub mod maint;
pub mod privacy;
pub mod reference;
pub mod repair;
pub mod tarfmt;

mod db;
mod objects;
mod store;

pub use container::ContainerRecord;
pub use digest::{Digest, chain_ids};
pub use error::{Error, Result};
pub use image::{History, ImageConfig, RunConfig};
pub use layer::{Compression, LayerEntry, LayerInfo};
pub use lease::{Holder, Lease, LeaseInfo};
pub use maint::{DfReport, FsckReport, GcReport, ImageUsage, Problem};
pub use objects::Objects;
pub use reference::ImageRef;
pub use store::{
    CONTAINERS_DIR, DB_FILE, HistoryRow, ImageRecord, RUN_DIR, Removal, Store, StoreLock,
};
pub use tarfmt::EntryKind;
