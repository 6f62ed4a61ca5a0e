//! `fsck --repair` for objects: get back the bytes of objects that are missing or damaged, or
//! drop the damaged file and say what is lost.
//!
//! An object's content can come back only from a copy of a layer that holds it: a compressed
//! blob kept under `blobs/` (pulls keep them), or the registry the layer was pulled from (the
//! caller fetches: this crate speaks no HTTP). Either is ingested again with its DiffID
//! checked, and ingesting a stored layer rewrites exactly its missing or damaged objects
//! (`objects::Staging`). What no copy can restore is lost: its damaged file is removed, so a
//! mount or an export fails with "missing; run 'strata fsck'" instead of serving wrong bytes,
//! and the report names every file and image that used it. Importing the same tar again
//! (`import`; `load` and `pull` skip layers the store has) restores it too.

use std::collections::BTreeSet;
use std::fs;

use rusqlite::OptionalExtension;

use crate::blobs::LayerBlob;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::maint::Problem;
use crate::reference::ImageRef;
use crate::store::Store;

/// Where a restored object's bytes came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RepairSource {
    /// A compressed layer blob kept under `blobs/`.
    KeptBlob {
        /// The layer ingested again.
        layer: Digest,
        /// The blob.
        blob: Digest,
    },
    /// The registry the layer was pulled from.
    Registry {
        /// The layer ingested again.
        layer: Digest,
        /// The blob fetched.
        blob: Digest,
        /// `registry/repository`.
        source: String,
    },
}

impl std::fmt::Display for RepairSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RepairSource::KeptBlob { layer, blob } => {
                write!(f, "the kept blob {blob} of layer {layer}")
            }
            RepairSource::Registry {
                layer,
                blob,
                source,
            } => write!(f, "{source} (blob {blob} of layer {layer})"),
        }
    }
}

/// An object whose right bytes are back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Restored {
    /// The object.
    pub object: Digest,
    /// Where its bytes came from.
    pub from: RepairSource,
}

/// One file of one layer that has a lost object's content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectUse {
    /// The layer.
    pub layer: Digest,
    /// The file's path in the layer.
    pub path: String,
    /// Images that have the layer: their tags, or their ID when untagged.
    pub images: Vec<String>,
}

/// An object no copy could restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LostObject {
    /// The object.
    pub object: Digest,
    /// Its size, as the index records it.
    pub size: u64,
    /// True when a damaged file was removed (false: it was missing already).
    pub removed: bool,
    /// The files that had it.
    pub uses: Vec<ObjectUse>,
}

/// What [`Store::repair_objects`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepairReport {
    /// Objects restored.
    pub restored: Vec<Restored>,
    /// Objects lost.
    pub lost: Vec<LostObject>,
    /// Copies that were tried and failed (a blob that no longer matches, an unreachable
    /// registry): why an object may be lost although it had a source.
    pub failed_sources: Vec<Problem>,
}

/// Fetches a layer's blob again from `blob.source` and ingests it (`Store::pull_layer`):
/// `Ok(true)` when it did, `Ok(false)` when it cannot try (no way to reach that source),
/// `Err(why)` when the attempt failed.
pub type Refetch<'a> = dyn FnMut(&LayerBlob) -> std::result::Result<bool, String> + 'a;

impl Store {
    /// Restores the `damaged` objects (from [`crate::FsckReport::damaged_objects`]) from kept
    /// blobs, then through `refetch` from the registries their layers came from; removes the
    /// files of those that stay damaged and reports where each lost one was used.
    ///
    /// # Errors
    /// Index or I/O errors of the repair itself; a source that fails is reported in
    /// [`RepairReport::failed_sources`].
    pub fn repair_objects(
        &self,
        damaged: &[Digest],
        refetch: &mut Refetch<'_>,
    ) -> Result<RepairReport> {
        let mut rep = RepairReport::default();
        let mut left = BTreeSet::new();
        for d in damaged {
            if !self.object_intact(d)? {
                left.insert(*d);
            }
        }
        for layer in self.layers_holding(&left)? {
            let wanted = self.objects_of_layer_in(&layer, &left)?;
            if wanted.is_empty() {
                continue; // restored meanwhile through another layer
            }
            for blob in self.layer_blobs(&layer)? {
                let Some(from) = self.ingest_copy(&layer, &blob, refetch, &mut rep)? else {
                    continue;
                };
                for d in &wanted {
                    if self.object_intact(d)? {
                        left.remove(d);
                        rep.restored.push(Restored {
                            object: *d,
                            from: from.clone(),
                        });
                    }
                }
                break;
            }
        }
        if left.is_empty() {
            return Ok(rep);
        }
        // Nothing else can run `gc` meanwhile, and an import that repairs one of these now
        // is seen by the check below.
        let _x = self.lock_exclusive()?;
        for d in left {
            if self.object_intact(&d)? {
                continue;
            }
            let p = self.objects().path(&d);
            let removed = match fs::remove_file(&p) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => return Err(Error::io("remove", p, e)),
            };
            rep.lost.push(LostObject {
                object: d,
                size: self.indexed_size(&d)?.unwrap_or(0),
                removed,
                uses: self.uses_of(&d)?,
            });
        }
        Ok(rep)
    }

    /// Ingests one copy of `layer` (the kept blob, else a fetch from its source); `None` when
    /// this blob gives no copy.
    fn ingest_copy(
        &self,
        layer: &Digest,
        blob: &LayerBlob,
        refetch: &mut Refetch<'_>,
        rep: &mut RepairReport,
    ) -> Result<Option<RepairSource>> {
        let mut failed = |message: String| {
            rep.failed_sources.push(Problem {
                subject: format!("blob {}", blob.digest),
                message,
            })
        };
        if blob.stored
            && let Some(f) = self.open_stored_blob(&blob.digest)?
        {
            match self.ingest_layer(f, Some(layer)) {
                Ok(_) => {
                    return Ok(Some(RepairSource::KeptBlob {
                        layer: *layer,
                        blob: blob.digest,
                    }));
                }
                Err(e) => failed(format!("the kept copy: {}", e.chain_text())),
            }
        }
        let Some(source) = &blob.source else {
            return Ok(None);
        };
        match refetch(blob) {
            Ok(true) => Ok(Some(RepairSource::Registry {
                layer: *layer,
                blob: blob.digest,
                source: source.clone(),
            })),
            Ok(false) => Ok(None),
            Err(e) => {
                failed(format!("fetching it from {source}: {e}"));
                Ok(None)
            }
        }
    }

    /// Whether the object's file exists with the indexed size and its content.
    fn object_intact(&self, d: &Digest) -> Result<bool> {
        let Ok(m) = fs::metadata(self.objects().path(d)) else {
            return Ok(false);
        };
        if self.indexed_size(d)?.is_some_and(|s| s != m.len()) {
            return Ok(false);
        }
        Ok(self.objects().verify(d).unwrap_or(false))
    }

    fn indexed_size(&self, d: &Digest) -> Result<Option<u64>> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT size FROM objects WHERE digest = ?1",
                [d.bytes()],
                |r| r.get::<_, i64>(0),
            )
            .optional()
        })
        .map(|s| s.map(|s| s as u64))
    }

    /// The layers (DiffIDs, oldest first) that have any of `objects`.
    fn layers_holding(&self, objects: &BTreeSet<Digest>) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for d in objects {
            let raw: Vec<Vec<u8>> = self.with_conn(|c| {
                let mut st = c.prepare_cached(
                    "SELECT DISTINCT l.diff_id FROM layer_entries e \
                     JOIN layers l ON l.id = e.layer WHERE e.object = ?1 ORDER BY l.id",
                )?;
                let rows = st.query_map([d.bytes()], |r| r.get(0))?;
                rows.collect()
            })?;
            for b in raw {
                let l = Digest::from_bytes(&b)?;
                if !out.contains(&l) {
                    out.push(l);
                }
            }
        }
        Ok(out)
    }

    /// Which of `objects` the layer has (and are still damaged).
    fn objects_of_layer_in(
        &self,
        layer: &Digest,
        objects: &BTreeSet<Digest>,
    ) -> Result<Vec<Digest>> {
        let raw: Vec<Vec<u8>> = self.with_conn(|c| {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT e.object FROM layer_entries e JOIN layers l ON l.id = e.layer \
                 WHERE l.diff_id = ?1 AND e.object IS NOT NULL",
            )?;
            let rows = st.query_map([layer.bytes()], |r| r.get(0))?;
            rows.collect()
        })?;
        let mut out = Vec::new();
        for b in raw {
            let d = Digest::from_bytes(&b)?;
            if objects.contains(&d) && !self.object_intact(&d)? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Every file of every layer that has the object, with the images that have the layer.
    fn uses_of(&self, d: &Digest) -> Result<Vec<ObjectUse>> {
        let rows: Vec<(Vec<u8>, String)> = self.with_conn(|c| {
            let mut st = c.prepare(
                "SELECT l.diff_id, e.path FROM layer_entries e JOIN layers l ON l.id = e.layer \
                 WHERE e.object = ?1 ORDER BY l.id, e.seq",
            )?;
            let rows = st.query_map([d.bytes()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let mut out = Vec::new();
        for (layer, path) in rows {
            let layer = Digest::from_bytes(&layer)?;
            out.push(ObjectUse {
                images: self.images_with_layer(&layer)?,
                layer,
                path,
            });
        }
        Ok(out)
    }

    /// Names of the images that have the layer: their tags (familiar form), or the short ID.
    fn images_with_layer(&self, layer: &Digest) -> Result<Vec<String>> {
        let rows: Vec<(Vec<u8>, Option<String>)> = self.with_conn(|c| {
            let mut st = c.prepare(
                "SELECT DISTINCT il.image, t.name FROM image_layers il \
                 JOIN layers l ON l.id = il.layer LEFT JOIN tags t ON t.image = il.image \
                 WHERE l.diff_id = ?1",
            )?;
            let rows = st.query_map([layer.bytes()], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let mut out = Vec::new();
        for (id, tag) in rows {
            let name = match tag {
                Some(t) => ImageRef::parse(&t).map(|r| r.familiar()).unwrap_or(t),
                None => Digest::from_bytes(&id)?.short(),
            };
            out.push(name);
        }
        out.sort();
        Ok(out)
    }
}
