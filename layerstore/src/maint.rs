//! Maintenance: `gc` (remove what nothing reaches), `fsck` (verify everything), `df` (usage).

use std::collections::{HashMap, HashSet};
use std::fs;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::ImageConfig;
use crate::store::Store;

/// What `gc` removed (or would remove, with `dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// True when nothing was removed.
    pub dry_run: bool,
    /// Layers that no image uses.
    pub layers: Vec<Digest>,
    /// Objects that no layer uses (index rows or files).
    pub objects: u64,
    /// Bytes those objects take.
    pub bytes: u64,
    /// Leftover temp files from interrupted writes.
    pub tmp_files: u64,
    /// Container directories without a record (left by an interrupted create or remove).
    pub container_dirs: u64,
    /// Kept compressed blobs no layer needs any more.
    pub blobs: u64,
    /// Bytes those blobs take.
    pub blob_bytes: u64,
    /// Build-cache entries whose result is gone.
    pub build_cache: u64,
    /// Leases whose process is gone (deleted, unless `dry_run`).
    pub expired_leases: u64,
}

/// A problem `fsck` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// What is affected (`object sha256:…`, `layer sha256:…`, `image sha256:…`).
    pub subject: String,
    /// What is wrong.
    pub message: String,
}

/// What `fsck` checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FsckReport {
    /// Objects rehashed.
    pub objects: u64,
    /// Layers regenerated and checked against their DiffID.
    pub layers: u64,
    /// Images checked.
    pub images: u64,
    /// Damage: the store is not consistent.
    pub errors: Vec<Problem>,
    /// Harmless leftovers that `gc` removes (unreferenced objects, temp files).
    pub warnings: Vec<Problem>,
    /// Objects whose file is missing or does not hold their content (what
    /// [`Store::repair_objects`] works on).
    pub damaged_objects: Vec<Digest>,
}

impl FsckReport {
    /// True when no error was found.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Disk usage of one image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageUsage {
    /// The image.
    pub id: Digest,
    /// Its tags.
    pub tags: Vec<String>,
    /// Sum of its layers' uncompressed tar sizes (what other tools call its size).
    pub size: u64,
    /// Bytes of file objects that only this image uses.
    pub unique: u64,
    /// Bytes of file objects this image shares with other images.
    pub shared: u64,
}

/// Disk usage of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DfReport {
    /// Per image.
    pub images: Vec<ImageUsage>,
    /// Number of file objects.
    pub objects: u64,
    /// Bytes of all file objects (each stored once).
    pub object_bytes: u64,
    /// Sum of all layers' uncompressed sizes (what the same layers would take as tars).
    pub layer_bytes: u64,
    /// Number of layers.
    pub layers: u64,
    /// Bytes of the index (store.db and its WAL).
    pub index_bytes: u64,
    /// Bytes of objects no image uses (reclaimable by `gc`).
    pub reclaimable: u64,
}

fn query_digests(store: &Store, sql: &str) -> Result<Vec<Digest>> {
    let raw: Vec<Vec<u8>> = store.with_conn(|c| {
        let mut st = c.prepare(sql)?;
        let rows = st.query_map([], |r| r.get(0))?;
        rows.collect()
    })?;
    raw.iter().map(|b| Digest::from_bytes(b)).collect()
}

impl Store {
    /// Removes layers no image uses and no live lease holds, objects no remaining layer uses
    /// and no lease holds, temp files, and the leases of processes that are gone. Takes the
    /// store lock exclusively, so it waits for running imports; decides and deletes the rows
    /// in one write transaction, so a lease taken meanwhile either is seen or finds only what
    /// stays (see [`crate::lease`]).
    ///
    /// # Errors
    /// I/O, a damaged index.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let _x = self.lock_exclusive()?;
        let mut report = GcReport {
            dry_run,
            ..Default::default()
        };
        // Objects referenced by layers that stay, or held by a lease.
        let (layers, keep, expired) = self.with_tx(|tx| {
            let expired = crate::lease::gc_roots(tx, dry_run)?;
            let digests = |sql: &str| -> rusqlite::Result<Vec<Vec<u8>>> {
                let mut st = tx.prepare(sql)?;
                let rows = st.query_map([], |r| r.get(0))?;
                rows.collect()
            };
            let layers = digests(
                "SELECT diff_id FROM layers WHERE id NOT IN (SELECT id FROM temp.gc_kept_layers)",
            )?;
            let keep = digests(&format!(
                "SELECT DISTINCT object FROM layer_entries WHERE object IS NOT NULL AND layer IN \
                 (SELECT id FROM temp.gc_kept_layers) \
                 UNION SELECT digest FROM lease_refs WHERE kind = {} AND lease IN \
                 (SELECT id FROM temp.gc_live_leases)",
                crate::lease::KIND_OBJECT
            ))?;
            if !dry_run {
                // Index first, files after: a crash in between leaves only unreferenced files.
                tx.execute(
                    "DELETE FROM layers WHERE id NOT IN (SELECT id FROM temp.gc_kept_layers)",
                    [],
                )?;
                tx.execute(
                    "DELETE FROM objects WHERE digest NOT IN \
                     (SELECT object FROM layer_entries WHERE object IS NOT NULL) \
                     AND digest NOT IN (SELECT digest FROM lease_refs WHERE kind = ?1)",
                    [crate::lease::KIND_OBJECT],
                )?;
            }
            Ok((layers, keep, expired))
        })?;
        report.expired_leases = expired;
        report.layers = layers
            .iter()
            .map(|b| Digest::from_bytes(b))
            .collect::<Result<_>>()?;
        let keep: HashSet<Digest> = keep
            .iter()
            .filter_map(|b| Digest::from_bytes(b).ok())
            .collect();
        let on_disk = self.objects().list()?;
        let doomed: Vec<_> = on_disk.iter().filter(|(d, _)| !keep.contains(d)).collect();
        for (_, p) in &doomed {
            report.bytes += fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0);
        }
        report.objects = doomed.len() as u64;
        let tmp = self.root().join(crate::objects::TMP_DIR);
        report.tmp_files = fs::read_dir(&tmp).map(|r| r.count() as u64).unwrap_or(0);
        let orphan_dirs = self.orphan_container_dirs()?;
        report.container_dirs = orphan_dirs.len() as u64;
        if dry_run {
            let (n, bytes) = self.gc_blobs(true)?;
            report.blobs = n;
            report.blob_bytes = bytes;
            report.build_cache = self.gc_build_cache(true)?;
            return Ok(report);
        }
        for (_, p) in doomed {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", p, e)),
            }
        }
        self.clean_tmp()?;
        self.remove_orphan_container_dirs(&orphan_dirs)?;
        let (n, bytes) = self.gc_blobs(false)?;
        report.blobs = n;
        report.blob_bytes = bytes;
        report.build_cache = self.gc_build_cache(false)?;
        Ok(report)
    }

    /// Verifies the whole store: SQLite integrity and foreign keys, every object's hash and
    /// size, every layer regenerated against its DiffID, every image's config against its ID
    /// and layers. `workers` threads rehash objects.
    ///
    /// # Errors
    /// Only when the check itself cannot run; damage is reported in the [`FsckReport`].
    pub fn fsck(&self, workers: usize) -> Result<FsckReport> {
        let mut rep = FsckReport::default();
        let err = |rep: &mut FsckReport, subject: String, message: String| {
            rep.errors.push(Problem { subject, message })
        };
        let integrity: Vec<String> = self.with_conn(|c| {
            let mut st = c.prepare("PRAGMA integrity_check")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })?;
        if integrity != ["ok"] {
            err(&mut rep, "index".into(), integrity.join("; "));
        }
        let fk: i64 = self.with_conn(|c| {
            c.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
        })?;
        if fk != 0 {
            err(
                &mut rep,
                "index".into(),
                format!("{fk} rows break foreign keys"),
            );
        }
        // Objects: the index's view, rehashed in parallel.
        let rows: Vec<(Vec<u8>, i64)> = self.with_conn(|c| {
            let mut st = c.prepare("SELECT digest, size FROM objects")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let indexed: Vec<(Digest, u64)> = rows
            .iter()
            .filter_map(|(b, s)| Digest::from_bytes(b).ok().map(|d| (d, *s as u64)))
            .collect();
        rep.objects = indexed.len() as u64;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let found = parking_lot::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..workers.max(1) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((d, size)) = indexed.get(i) else {
                            break;
                        };
                        let problem = match fs::metadata(self.objects().path(d)) {
                            Err(e) => Some(format!("cannot read the object file: {e}")),
                            Ok(m) if m.len() != *size => Some(format!(
                                "object file has {} bytes, the index says {size}",
                                m.len()
                            )),
                            Ok(_) => match self.objects().verify(d) {
                                Ok(true) => None,
                                Ok(false) => Some("content does not match its digest".into()),
                                Err(e) => Some(e.chain_text()),
                            },
                        };
                        if let Some(m) = problem {
                            let p = Problem {
                                subject: format!("object {d}"),
                                message: m,
                            };
                            found.lock().push((*d, p));
                        }
                    }
                });
            }
        });
        let mut found = found.into_inner();
        found.sort_by_key(|(d, _)| *d.bytes());
        rep.damaged_objects = found.iter().map(|(d, _)| *d).collect();
        rep.errors.extend(found.into_iter().map(|(_, p)| p));
        // Entries whose size disagrees with their object.
        let bad_sizes: i64 = self.with_conn(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM layer_entries e JOIN objects o ON o.digest = e.object \
                 WHERE e.size != o.size",
                [],
                |r| r.get(0),
            )
        })?;
        if bad_sizes > 0 {
            err(
                &mut rep,
                "index".into(),
                format!("{bad_sizes} layer entries disagree with their object's size"),
            );
        }
        // Layers: regenerate and hash.
        for d in query_digests(self, "SELECT diff_id FROM layers")? {
            rep.layers += 1;
            if let Err(e) = self.verify_layer(&d) {
                err(&mut rep, format!("layer {d}"), e.chain_text());
            }
        }
        // Images: config bytes hash to the ID and list the layers the index links.
        for img in self.images()? {
            rep.images += 1;
            let subject = format!("image {}", img.id);
            if Digest::of(&img.config) != img.id {
                err(
                    &mut rep,
                    subject.clone(),
                    "config bytes do not hash to the image ID".into(),
                );
            }
            match ImageConfig::parse(&img.config) {
                Err(e) => err(&mut rep, subject, e.chain_text()),
                Ok(cfg) => {
                    let linked = self.image_diff_ids(&img.id)?;
                    if linked != cfg.rootfs.diff_ids {
                        err(
                            &mut rep,
                            subject,
                            "layers in the index differ from the config's diff_ids".into(),
                        );
                    }
                }
            }
        }
        // Leftovers: harmless, gc removes them.
        let known: HashSet<Digest> = indexed.iter().map(|(d, _)| *d).collect();
        let orphans = self
            .objects()
            .list()?
            .into_iter()
            .filter(|(d, _)| !known.contains(d))
            .count();
        if orphans > 0 {
            rep.warnings.push(Problem {
                subject: "objects".into(),
                message: format!("{orphans} object files are not in the index (left by an interrupted write); 'strata gc' removes them"),
            });
        }
        let tmp = self.root().join(crate::objects::TMP_DIR);
        let tmp_files = fs::read_dir(&tmp).map(|r| r.count()).unwrap_or(0);
        if tmp_files > 0 {
            rep.warnings.push(Problem {
                subject: "tmp".into(),
                message: format!("{tmp_files} temp files (left by an interrupted write, or a write in progress); 'strata gc' removes them"),
            });
        }
        Ok(rep)
    }

    /// The DiffIDs the index links to an image, in order.
    pub(crate) fn image_diff_ids(&self, id: &Digest) -> Result<Vec<Digest>> {
        let raw: Vec<Vec<u8>> = self.with_conn(|c| {
            let mut st = c.prepare(
                "SELECT l.diff_id FROM image_layers il JOIN layers l ON l.id = il.layer \
                 WHERE il.image = ?1 ORDER BY il.idx",
            )?;
            let rows = st.query_map([id.bytes()], |r| r.get(0))?;
            rows.collect()
        })?;
        raw.iter().map(|b| Digest::from_bytes(b)).collect()
    }

    /// Disk usage: per image (size, unique and shared object bytes) and totals.
    ///
    /// # Errors
    /// A damaged index.
    pub fn df(&self) -> Result<DfReport> {
        let pairs: Vec<(Vec<u8>, Vec<u8>, i64)> = self.with_conn(|c| {
            let mut st = c.prepare(
                "SELECT DISTINCT il.image, e.object, o.size FROM image_layers il \
                 JOIN layer_entries e ON e.layer = il.layer \
                 JOIN objects o ON o.digest = e.object",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })?;
        let mut users: HashMap<&[u8], u32> = HashMap::new();
        for (_, o, _) in &pairs {
            *users.entry(o.as_slice()).or_default() += 1;
        }
        let mut per: HashMap<&[u8], (u64, u64)> = HashMap::new();
        for (img, o, size) in &pairs {
            let e = per.entry(img.as_slice()).or_default();
            if users[o.as_slice()] > 1 {
                e.1 += *size as u64
            } else {
                e.0 += *size as u64
            }
        }
        let mut rep = DfReport::default();
        for img in self.images()? {
            let (unique, shared) = per
                .get(img.id.bytes().as_slice())
                .copied()
                .unwrap_or_default();
            rep.images.push(ImageUsage {
                id: img.id,
                tags: img.tags.iter().map(|t| t.familiar()).collect(),
                size: self.image_size(&img.id)?,
                unique,
                shared,
            });
        }
        let (objects, object_bytes, layers, layer_bytes, used): (i64, i64, i64, i64, i64) =
            self.with_conn(|c| {
                c.query_row(
                    "SELECT (SELECT COUNT(*) FROM objects), (SELECT COALESCE(SUM(size),0) FROM objects), \
                     (SELECT COUNT(*) FROM layers), (SELECT COALESCE(SUM(tar_size),0) FROM layers), \
                     (SELECT COALESCE(SUM(size),0) FROM objects WHERE digest IN (SELECT e.object FROM \
                      layer_entries e JOIN image_layers il ON il.layer = e.layer))",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
            })?;
        rep.objects = objects as u64;
        rep.object_bytes = object_bytes as u64;
        rep.layers = layers as u64;
        rep.layer_bytes = layer_bytes as u64;
        rep.reclaimable = (object_bytes - used).max(0) as u64;
        for f in [crate::store::DB_FILE, "store.db-wal"] {
            rep.index_bytes += fs::metadata(self.root().join(f))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        Ok(rep)
    }
}
