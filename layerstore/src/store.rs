//! The store: one root directory, its index, objects, images and tags.

use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::db;
use crate::digest::{Digest, chain_ids};
use crate::error::{Error, IoContext, Result};
use crate::image::{ImageConfig, now_rfc3339};
use crate::objects::{Objects, TMP_DIR};
use crate::privacy::{self, FILE_MODE, create_private_dir_all};
use crate::reference::ImageRef;

/// The index file under the root.
pub const DB_FILE: &str = "store.db";
/// The lock file: writers hold it shared, `gc` exclusive.
pub const LOCK_FILE: &str = "lock";
/// Directory for containers' upper and work dirs.
pub const CONTAINERS_DIR: &str = "containers";
/// Directory for pid and socket files of live mounts.
pub const RUN_DIR: &str = "run";
/// The directories every store has, made private at open (so nothing made in them later, by
/// any part of strata, is reachable by other users through a wider directory).
const LAYOUT_DIRS: &[&str] = &[
    TMP_DIR,
    crate::objects::OBJECTS_DIR,
    crate::blobs::BLOBS_DIR,
    CONTAINERS_DIR,
    RUN_DIR,
];

/// A layer store rooted at one directory.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    db_path: PathBuf,
    conn: Mutex<Connection>,
    objects: Objects,
    /// The lease this store's writes are added to (see [`Store::lease`]).
    pub(crate) active_lease: crate::lease::ActiveLease,
    /// What opening changed or could not change about the store's modes (printed once).
    notice: Option<String>,
}

/// An advisory lock on the store, released on drop.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// An image as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// ImageID: sha256 of the config bytes.
    pub id: Digest,
    /// The exact config bytes.
    pub config: Vec<u8>,
    /// The local image it was made from.
    pub parent: Option<Digest>,
    /// `created` of the config.
    pub created: Option<String>,
    /// When the image entered this store.
    pub added: String,
    /// Its tags, sorted.
    pub tags: Vec<ImageRef>,
}

/// One row of `history`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryRow {
    /// The image whose top this step is, when it is a local image; `None` prints `<missing>`.
    pub image: Option<Digest>,
    /// RFC 3339.
    pub created: Option<String>,
    /// The command.
    pub created_by: String,
    /// Bytes of the layer's tar (0 for empty-layer steps).
    pub size: u64,
    /// Comment.
    pub comment: String,
    /// True when the step made no layer.
    pub empty_layer: bool,
    /// The layer this step made.
    pub diff_id: Option<Digest>,
}

/// What `remove_image` did, in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", content = "target", rename_all = "snake_case")]
pub enum Removal {
    /// A tag was removed.
    Untagged(String),
    /// An image record was deleted.
    Deleted(Digest),
}

impl Store {
    /// Opens the store at `root`, creating the directory layout and index if needed, all
    /// private to the owner (see `privacy`); a store whose root or index lets other users in
    /// is made private first, and [`Store::notice`] says so.
    /// When no other process uses the store, leftovers of a crash in `tmp/` are removed.
    ///
    /// # Errors
    /// I/O, an index that cannot be opened or is newer than this program.
    pub fn open(root: &Path) -> Result<Store> {
        privacy::create_root(root)?;
        let root = root.canonicalize().ctx("resolve", root)?;
        let db_path = root.join(DB_FILE);
        let notice =
            privacy::too_open(&root, &db_path).map(|was| match privacy::tighten(&root, was) {
                Ok(t) => t.to_string(),
                Err(e) => privacy::failed(&root, was, &e),
            });
        for d in LAYOUT_DIRS {
            create_private_dir_all(&root.join(d))?;
        }
        // SQLite creates the WAL and shared-memory files with the index's mode.
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&db_path)
        {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io("create", &db_path, e));
            }
            _ => {}
        }
        let conn = db::open(&db_path)?;
        let store = Store {
            objects: Objects::new(&root),
            conn: Mutex::new(conn),
            db_path,
            root,
            notice,
            active_lease: Default::default(),
        };
        if let Some(_x) = store.try_lock_exclusive()? {
            store.clean_tmp()?;
        }
        Ok(store)
    }

    /// Opens an existing store for reading (what a mount needs): nothing is written, no
    /// directory created, no migration run and `tmp/` left alone, so this costs a few reads.
    /// A store that does not exist yet, whose schema is not this build's or that is not
    /// private yet is opened with [`Store::open`] instead.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_reader(root: &Path) -> Result<Store> {
        let Ok(canon) = root.canonicalize() else {
            return Store::open(root);
        };
        let db_path = canon.join(DB_FILE);
        if privacy::too_open(&canon, &db_path).is_some() {
            return Store::open(root);
        }
        match db::open_existing(&db_path)? {
            Some(conn) if canon.join(crate::objects::OBJECTS_DIR).is_dir() => Ok(Store {
                objects: Objects::new(&canon),
                conn: Mutex::new(conn),
                db_path,
                root: canon,
                notice: None,
                active_lease: Default::default(),
            }),
            _ => Store::open(root),
        }
    }

    /// A message for the user about this store's privacy, set when opening had to make an
    /// older store private (or could not): print it once.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The object directory.
    pub fn objects(&self) -> &Objects {
        &self.objects
    }

    fn lock_file(&self) -> Result<File> {
        let p = self.root.join(LOCK_FILE);
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(FILE_MODE)
            .open(&p)
            .ctx("open", p)
    }

    /// Takes the store lock shared (any number of writers; excludes `gc`).
    ///
    /// # Errors
    /// I/O.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        let f = self.lock_file()?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockShared)
            .map_err(|e| Error::io("lock", self.root.join(LOCK_FILE), e.into()))?;
        Ok(StoreLock { _file: f })
    }

    /// Takes the store lock exclusively (waits for writers to finish).
    ///
    /// # Errors
    /// I/O.
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        let f = self.lock_file()?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io("lock", self.root.join(LOCK_FILE), e.into()))?;
        Ok(StoreLock { _file: f })
    }

    fn try_lock_exclusive(&self) -> Result<Option<StoreLock>> {
        let f = self.lock_file()?;
        match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(StoreLock { _file: f })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::io("lock", self.root.join(LOCK_FILE), e.into())),
        }
    }

    /// Removes everything in `tmp/`; only call with the exclusive lock held.
    pub(crate) fn clean_tmp(&self) -> Result<u64> {
        let tmp = self.root.join(TMP_DIR);
        let mut n = 0;
        for e in fs::read_dir(&tmp).ctx("read dir", &tmp)? {
            let e = e.ctx("read dir", &tmp)?;
            let p = e.path();
            let r = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.ctx("remove", &p)?;
            n += 1;
        }
        Ok(n)
    }

    /// Runs `f` with the connection.
    pub(crate) fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let c = self.conn.lock();
        f(&c).map_err(db::db_err(&self.db_path))
    }

    /// Runs `f` in one immediate (write) transaction, committed when it returns `Ok`.
    pub(crate) fn with_tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let mut c = self.conn.lock();
        let e = db::db_err(&self.db_path);
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&e)?;
        let v = f(&tx).map_err(&e)?;
        tx.commit().map_err(&e)?;
        Ok(v)
    }

    /// Records an image whose layers are all in the store. Returns its ID; adding an image
    /// that exists is a no-op.
    ///
    /// # Errors
    /// Invalid config, a layer that is not in the store.
    pub fn add_image(&self, config: &[u8], parent: Option<&Digest>) -> Result<Digest> {
        let cfg = ImageConfig::parse(config)?;
        let id = Digest::of(config);
        let _lock = self.lock_shared()?;
        let mut layer_ids = Vec::with_capacity(cfg.rootfs.diff_ids.len());
        for (i, d) in cfg.rootfs.diff_ids.iter().enumerate() {
            let lid = self.layer_id(d)?.ok_or_else(|| Error::NotFound {
                kind: "layer",
                name: d.to_string(),
                hint: format!(" (layer {i} of image {id}); import the layer first"),
            })?;
            layer_ids.push(lid);
        }
        self.with_tx(|tx| {
            let n = tx.execute(
                "INSERT OR IGNORE INTO images (id, config, parent, created, added) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    id.bytes(),
                    config,
                    parent.map(|p| p.bytes().to_vec()),
                    cfg.created,
                    now_rfc3339()
                ],
            )?;
            if n == 1 {
                let mut st = tx.prepare_cached(
                    "INSERT INTO image_layers (image, idx, layer) VALUES (?1, ?2, ?3)",
                )?;
                for (i, lid) in layer_ids.iter().enumerate() {
                    st.execute(params![id.bytes(), i as i64, lid])?;
                }
            }
            Ok(())
        })?;
        Ok(id)
    }

    /// Points `reference` (tag added when missing) at an image, replacing an older target.
    ///
    /// # Errors
    /// A digest reference (tags cannot hold one), an unknown image.
    pub fn tag(&self, image: &Digest, reference: &ImageRef) -> Result<ImageRef> {
        if reference.digest().is_some() {
            return Err(Error::Conflict(format!(
                "refusing to create a tag with a digest reference ({reference}); give a name:tag"
            )));
        }
        let r = reference.clone().with_default_tag();
        self.with_tx(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO tags (name, image, added) VALUES (?1, ?2, ?3)",
                params![r.to_string(), image.bytes(), now_rfc3339()],
            )
        })
        .map_err(image_missing(image))?;
        Ok(r)
    }

    fn record(&self, id: &Digest) -> Result<Option<ImageRecord>> {
        type Row = (Vec<u8>, Option<Vec<u8>>, Option<String>, String);
        let row: Option<Row> = self.with_conn(|c| {
            c.query_row(
                "SELECT config, parent, created, added FROM images WHERE id = ?1",
                [id.bytes()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
        })?;
        let Some((config, parent, created, added)) = row else {
            return Ok(None);
        };
        let tags: Vec<String> = self.with_conn(|c| {
            let mut st = c.prepare("SELECT name FROM tags WHERE image = ?1 ORDER BY name")?;
            let rows = st.query_map([id.bytes()], |r| r.get(0))?;
            rows.collect()
        })?;
        Ok(Some(ImageRecord {
            id: *id,
            config,
            parent: parent.and_then(|p| Digest::from_bytes(&p).ok()),
            created,
            added,
            tags: tags
                .iter()
                .filter_map(|t| ImageRef::parse(t).ok())
                .collect(),
        }))
    }

    fn image_ids(&self) -> Result<Vec<Digest>> {
        let raw: Vec<Vec<u8>> = self.with_conn(|c| {
            let mut st = c.prepare("SELECT id FROM images ORDER BY added DESC, id")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })?;
        raw.iter().map(|b| Digest::from_bytes(b)).collect()
    }

    /// Finds an image by reference (`ubuntu`, `docker.io/library/ubuntu:22.04`), full ID
    /// (`sha256:…` or 64 hex) or a unique ID prefix, as `docker image inspect` does.
    ///
    /// # Errors
    /// Not found, ambiguous prefix, an input that is neither a valid reference nor an ID.
    pub fn resolve_image(&self, s: &str) -> Result<ImageRecord> {
        let not_found = || Error::NotFound {
            kind: "image",
            name: s.to_owned(),
            hint: "; 'strata images' lists the images in this store".into(),
        };
        if let Some(hexpart) = s.strip_prefix(crate::digest::SHA256_PREFIX) {
            return self.resolve_id_prefix(s, hexpart)?.ok_or_else(not_found);
        }
        let parsed = ImageRef::parse(s);
        if let Ok(r) = &parsed {
            let key = if r.digest().is_some() {
                r.clone()
            } else {
                r.clone().with_default_tag()
            };
            let found: Option<Vec<u8>> = self.with_conn(|c| {
                c.query_row(
                    "SELECT image FROM tags WHERE name = ?1",
                    [key.to_string()],
                    |r| r.get(0),
                )
                .optional()
            })?;
            if let Some(b) = found {
                let id = Digest::from_bytes(&b)?;
                return self.record(&id)?.ok_or_else(not_found);
            }
        }
        let looks_hex = !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit());
        if looks_hex && let Some(rec) = self.resolve_id_prefix(s, &s.to_ascii_lowercase())? {
            return Ok(rec);
        }
        match parsed {
            Err(e) if !looks_hex => Err(e.into()),
            _ => Err(not_found()),
        }
    }

    fn resolve_id_prefix(&self, input: &str, prefix: &str) -> Result<Option<ImageRecord>> {
        if prefix.is_empty() {
            return Ok(None);
        }
        let matches: Vec<Digest> = self
            .image_ids()?
            .into_iter()
            .filter(|d| d.hex().starts_with(prefix))
            .collect();
        match matches.len() {
            0 => Ok(None),
            1 => self.record(&matches[0]),
            n => Err(Error::Ambiguous {
                kind: "image",
                prefix: input.to_owned(),
                count: n,
            }),
        }
    }

    /// Every image, newest first.
    ///
    /// # Errors
    /// A damaged index.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for id in self.image_ids()? {
            if let Some(r) = self.record(&id)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Sum of the uncompressed sizes of an image's layers.
    ///
    /// # Errors
    /// A damaged index.
    pub fn image_size(&self, id: &Digest) -> Result<u64> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(l.tar_size), 0) FROM image_layers il \
                 JOIN layers l ON l.id = il.layer WHERE il.image = ?1",
                [id.bytes()],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|v| v as u64)
    }

    /// Uncompressed size of one layer's tar.
    ///
    /// # Errors
    /// Unknown layer.
    pub fn layer_size(&self, diff_id: &Digest) -> Result<u64> {
        let v: Option<i64> = self.with_conn(|c| {
            c.query_row(
                "SELECT tar_size FROM layers WHERE diff_id = ?1",
                [diff_id.bytes()],
                |r| r.get(0),
            )
            .optional()
        })?;
        v.map(|v| v as u64).ok_or_else(|| Error::NotFound {
            kind: "layer",
            name: diff_id.to_string(),
            hint: String::new(),
        })
    }

    /// The image's history as `docker image history` shows it: newest first, one row per
    /// history entry, the IMAGE column set for this image's top row and for the top rows of
    /// its local parents (`None`, printed `<missing>`, otherwise).
    ///
    /// # Errors
    /// A config that does not parse, a missing layer.
    pub fn history(&self, image: &ImageRecord) -> Result<Vec<HistoryRow>> {
        let cfg = ImageConfig::parse(&image.config)?;
        let diff_ids = &cfg.rootfs.diff_ids;
        let mut rows = Vec::new();
        if cfg.history.is_empty() {
            // No history recorded (some foreign images): one row per layer, so the layers show.
            for d in diff_ids {
                rows.push(HistoryRow {
                    image: None,
                    created: cfg.created.clone(),
                    created_by: String::new(),
                    size: self.layer_size(d)?,
                    comment: String::new(),
                    empty_layer: false,
                    diff_id: Some(*d),
                });
            }
        } else {
            let mut next_layer = 0;
            for h in &cfg.history {
                let (size, diff_id) = if h.empty_layer {
                    (0, None)
                } else {
                    let d = diff_ids.get(next_layer).copied();
                    next_layer += 1;
                    (
                        match d {
                            Some(d) => self.layer_size(&d)?,
                            None => 0,
                        },
                        d,
                    )
                };
                rows.push(HistoryRow {
                    image: None,
                    created: h.created.clone(),
                    created_by: h.created_by.clone().unwrap_or_default(),
                    size,
                    comment: h.comment.clone().unwrap_or_default(),
                    empty_layer: h.empty_layer,
                    diff_id,
                });
            }
        }
        // Label the top row of this image and of each local ancestor.
        let mut current = Some(image.clone());
        while let Some(img) = current {
            let n = ImageConfig::parse(&img.config)
                .map(|c| {
                    if c.history.is_empty() {
                        c.rootfs.diff_ids.len()
                    } else {
                        c.history.len()
                    }
                })
                .unwrap_or(0);
            if n > 0 && n <= rows.len() {
                rows[n - 1].image = Some(img.id);
            }
            current = match img.parent {
                Some(p) => self.record(&p)?,
                None => None,
            };
        }
        rows.reverse();
        Ok(rows)
    }

    /// ChainIDs of an image's layers, base first.
    ///
    /// # Errors
    /// A config that does not parse.
    pub fn chain_ids(&self, image: &ImageRecord) -> Result<Vec<Digest>> {
        Ok(chain_ids(
            &ImageConfig::parse(&image.config)?.rootfs.diff_ids,
        ))
    }

    /// Removes a tag or an image, as `docker rmi` does: a name untags, and the image goes
    /// when no tag, child image or container is left; an ID removes the image, which needs
    /// `force` when several tags point at it.
    ///
    /// # Errors
    /// Unknown image; an image referenced by several tags (without `force`); an image that is
    /// the parent of other images.
    pub fn remove_image(&self, s: &str, force: bool) -> Result<Vec<Removal>> {
        let rec = self.resolve_image(s)?;
        let by_name = ImageRef::parse(s).ok().map(|r| {
            if r.digest().is_some() {
                r
            } else {
                r.with_default_tag()
            }
        });
        let by_name = by_name.filter(|r| rec.tags.contains(r));
        let children: i64 = self.with_conn(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM images WHERE parent = ?1",
                [rec.id.bytes()],
                |r| r.get(0),
            )
        })?;
        let users = self.containers_of(&rec.id)?;
        let mut out = Vec::new();
        let untag = |r: &ImageRef, out: &mut Vec<Removal>| -> Result<()> {
            self.with_tx(|tx| tx.execute("DELETE FROM tags WHERE name = ?1", [r.to_string()]))?;
            out.push(Removal::Untagged(r.familiar()));
            Ok(())
        };
        match by_name {
            Some(r) => {
                if rec.tags.len() == 1 && !users.is_empty() && !force {
                    return Err(Error::Conflict(format!(
                        "conflict: unable to remove repository reference {:?} (must force) - \
                         container {} is using its referenced image {}",
                        r.familiar(),
                        users.join(", "),
                        rec.id.short()
                    )));
                }
                untag(&r, &mut out)?;
                if rec.tags.len() > 1 || children > 0 || !users.is_empty() {
                    return Ok(out);
                }
            }
            None => {
                if !users.is_empty() {
                    return Err(Error::Conflict(format!(
                        "conflict: unable to delete {} - image is used by containers {}; remove                          them first ('strata container rm')",
                        rec.id.short(),
                        users.join(", ")
                    )));
                }
                if rec.tags.len() > 1 && !force {
                    return Err(Error::Conflict(format!(
                        "conflict: unable to delete {} (must be forced) - image is referenced in \
                         multiple repositories; remove the tags by name or use --force",
                        rec.id.short()
                    )));
                }
                if children > 0 {
                    return Err(Error::Conflict(format!(
                        "conflict: unable to delete {} - image has dependent child images; \
                         remove them first",
                        rec.id.short()
                    )));
                }
                for t in &rec.tags {
                    untag(t, &mut out)?;
                }
            }
        }
        self.with_tx(|tx| tx.execute("DELETE FROM images WHERE id = ?1", [rec.id.bytes()]))?;
        out.push(Removal::Deleted(rec.id));
        Ok(out)
    }
}

/// A tag row's foreign key refused (`ConstraintViolation`): the image is not in the store.
pub(crate) fn image_missing(image: &Digest) -> impl FnOnce(Error) -> Error + '_ {
    move |e| match e {
        Error::Db { source, .. }
            if source.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) =>
        {
            Error::NotFound {
                kind: "image",
                name: image.to_string(),
                hint: String::new(),
            }
        }
        e => e,
    }
}
