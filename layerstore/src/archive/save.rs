//! `save`: which images and tags go into the archive, their OCI manifests, and writing the
//! Docker ≥ 25 tarball or an OCI layout directory.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::path::Path;

use super::oci::{Descriptor, DockerManifestEntry, Index, Manifest, to_json};
use super::tarout::{EntryWrite, TarEntrySpec, TarWriter};
use super::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ArchiveError, BLOBS_DIR, INDEX_FILE, MANIFEST_FILE,
    OCI_LAYOUT_CONTENT, OCI_LAYOUT_FILE, REPOSITORIES_FILE, Result, io_err, media, rfc3339_secs,
};
use crate::digest::{Digest, Hasher};
use crate::digest::{HashWrite, ProgressWrite};
use crate::image::ImageConfig;
use crate::reference::ImageRef;
use crate::store::{ImageRecord, Store, StoreLock};

/// gzip level for `--compress gzip`: the zlib default, pinned (with the zlib-rs backend) so
/// the same layer always compresses to the same bytes.
const GZIP_LEVEL: u32 = 6;
/// zstd level for `--compress zstd` (the zstd CLI's default).
const ZSTD_LEVEL: i32 = 3;
/// zstd worker threads. Any count ≥ 1 gives identical output, 0 (single-threaded mode) gives
/// different bytes (facebook/zstd#2327), so this is never 0.
const ZSTD_WORKERS: u32 = 2;
/// Copy buffer for spooled layers.
const COPY_BUF: usize = 1 << 20;

/// How layer blobs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerCodec {
    /// Uncompressed tar, named by its DiffID (what `docker save` writes).
    #[default]
    None,
    /// gzip (`tar+gzip`).
    Gzip,
    /// zstd (`tar+zstd`).
    Zstd,
}

impl LayerCodec {
    fn media_type(self) -> &'static str {
        match self {
            LayerCodec::None => media::OCI_LAYER,
            LayerCodec::Gzip => media::OCI_LAYER_GZIP,
            LayerCodec::Zstd => media::OCI_LAYER_ZSTD,
        }
    }
}

/// Options of `save`.
#[derive(Debug, Clone, Default)]
pub struct SaveOptions {
    /// Compression of layer blobs.
    pub codec: LayerCodec,
}

/// One image to save and the tags it is saved under.
#[derive(Debug)]
struct SavedImage {
    record: ImageRecord,
    tags: Vec<ImageRef>,
    diff_ids: Vec<Digest>,
    mtime: i64,
}

/// One layer blob of the archive.
#[derive(Debug)]
struct LayerBlob {
    diff_id: Digest,
    /// Uncompressed size (what progress counts).
    tar_size: u64,
    /// Digest and size of the blob as written (equal to the DiffID and tar size when
    /// uncompressed); known after [`SavePlan::compress`].
    digest: Digest,
    size: u64,
    mtime: i64,
    /// The compressed blob, spooled under the store's `tmp/`.
    spool: Option<fs::File>,
}

/// The images of one `save`, resolved; write them with [`SavePlan::write_tar`] or
/// [`SavePlan::write_oci_dir`]. Holds the store lock shared, so `gc` cannot remove a layer
/// while it is being written.
#[derive(Debug)]
pub struct SavePlan<'s> {
    store: &'s Store,
    images: Vec<SavedImage>,
    layers: Vec<LayerBlob>,
    codec: LayerCodec,
    _lock: StoreLock,
}

impl Store {
    /// Resolves the images to save. Each argument is a name (`busybox:1.36`: that tag; a name
    /// without a tag, `busybox`: every tag of that repository, as `docker save` does) or an
    /// image ID (saved untagged). An image named twice is saved once, with all its tags.
    ///
    /// # Errors
    /// An unknown image or a name that does not parse.
    pub fn plan_save(&self, names: &[String], opts: &SaveOptions) -> Result<SavePlan<'_>> {
        let lock = self.lock_shared()?;
        let mut images: Vec<SavedImage> = Vec::new();
        let mut add = |rec: ImageRecord, tag: Option<ImageRef>| -> Result<()> {
            if let Some(i) = images.iter_mut().find(|i| i.record.id == rec.id) {
                if let Some(t) = tag
                    && !i.tags.contains(&t)
                {
                    i.tags.push(t);
                }
                return Ok(());
            }
            let cfg = ImageConfig::parse(&rec.config)?;
            let mtime = rfc3339_secs(cfg.created.as_deref()) as i64;
            images.push(SavedImage {
                diff_ids: cfg.rootfs.diff_ids,
                tags: tag.into_iter().collect(),
                mtime,
                record: rec,
            });
            Ok(())
        };
        let mut all: Option<Vec<ImageRecord>> = None;
        for name in names {
            let parsed = ImageRef::parse(name).ok();
            if let Some(r) = &parsed
                && r.tag().is_none()
                && r.digest().is_none()
            {
                if all.is_none() {
                    all = Some(self.images()?);
                }
                let mut found = false;
                for rec in all.iter().flatten() {
                    for t in rec.repo_tags().filter(|t| t.name() == r.name()) {
                        add(rec.clone(), Some(t.clone()))?;
                        found = true;
                    }
                }
                if found {
                    continue;
                }
            }
            let rec = self.resolve_image(name)?;
            // A repository digest (`repo@sha256:…`) finds the image but is no tag: such an
            // image is saved untagged unless named by a tag too (as `docker save`).
            let tag = parsed
                .map(ImageRef::with_default_tag)
                .filter(|t| t.digest().is_none() && rec.tags.contains(t));
            add(rec, tag)?;
        }
        let mut seen = HashSet::new();
        let mut layers = Vec::new();
        for img in &images {
            for d in &img.diff_ids {
                if seen.insert(*d) {
                    let tar_size = self.layer_size(d)?;
                    layers.push(LayerBlob {
                        diff_id: *d,
                        tar_size,
                        digest: *d,
                        size: tar_size,
                        mtime: img.mtime,
                        spool: None,
                    });
                }
            }
        }
        Ok(SavePlan {
            store: self,
            images,
            layers,
            codec: opts.codec,
            _lock: lock,
        })
    }
}

impl SavePlan<'_> {
    /// Uncompressed bytes of all the layers (the unit of progress).
    pub fn layer_bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.tar_size).sum()
    }

    /// Number of images.
    pub fn image_count(&self) -> usize {
        self.images.len()
    }

    /// Compresses one layer from the store into `out`; returns the blob's digest and size.
    fn compress_into(
        &self,
        diff_id: &Digest,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(Digest, u64)> {
        let mut hw = HashWrite {
            inner: out,
            hasher: Hasher::new(),
            count: 0,
        };
        let werr = |e: io::Error| ArchiveError::Io {
            op: "compress layer",
            path: diff_id.to_string().into(),
            source: e,
        };
        match self.codec {
            LayerCodec::None => {
                let mut pw = ProgressWrite {
                    inner: &mut hw,
                    progress,
                };
                self.store.export_layer(diff_id, &mut pw)?;
            }
            LayerCodec::Gzip => {
                let mut enc = flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(&mut hw, flate2::Compression::new(GZIP_LEVEL));
                let mut pw = ProgressWrite {
                    inner: &mut enc,
                    progress,
                };
                self.store.export_layer(diff_id, &mut pw)?;
                enc.finish().map_err(werr)?;
            }
            LayerCodec::Zstd => {
                let mut enc =
                    zstd::stream::write::Encoder::new(&mut hw, ZSTD_LEVEL).map_err(werr)?;
                enc.multithread(ZSTD_WORKERS).map_err(werr)?;
                enc.include_checksum(false).map_err(werr)?;
                let mut pw = ProgressWrite {
                    inner: &mut enc,
                    progress,
                };
                self.store.export_layer(diff_id, &mut pw)?;
                enc.finish().map_err(werr)?;
            }
        }
        hw.flush().map_err(werr)?;
        let count = hw.count;
        Ok((hw.hasher.finish(), count))
    }

    /// With a codec: compresses every layer into a temp file under the store's `tmp/` (the
    /// manifest, written before the layers, needs their digests and sizes). The temp files
    /// are unlinked at once and vanish when the plan is dropped.
    fn spool_compressed(&mut self, progress: &mut dyn FnMut(u64)) -> Result<()> {
        if self.codec == LayerCodec::None {
            return Ok(());
        }
        let tmp = self.store.root().join(crate::objects::TMP_DIR);
        for i in 0..self.layers.len() {
            let mut f = tempfile::tempfile_in(&tmp).map_err(io_err("create temp file in", &tmp))?;
            let d = self.layers[i].diff_id;
            let (digest, size) = {
                let mut bw = io::BufWriter::with_capacity(COPY_BUF, &mut f);
                let r = self.compress_into(&d, &mut bw, progress)?;
                bw.flush().map_err(io_err("write temp file in", &tmp))?;
                r
            };
            f.rewind().map_err(io_err("rewind temp file in", &tmp))?;
            let l = &mut self.layers[i];
            l.digest = digest;
            l.size = size;
            l.spool = Some(f);
        }
        Ok(())
    }

    fn layer(&self, d: &Digest) -> Result<&LayerBlob> {
        self.layers
            .iter()
            .find(|l| l.diff_id == *d)
            .ok_or_else(|| ArchiveError::Invalid(format!("internal: layer {d} not planned")))
    }

    /// The OCI manifest of each image (compact JSON, fixed field order).
    fn manifests(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for img in &self.images {
            let mut layers = Vec::new();
            for d in &img.diff_ids {
                let l = self.layer(d)?;
                layers.push(Descriptor {
                    media_type: self.codec.media_type().to_owned(),
                    digest: l.digest.to_string(),
                    size: l.size as i64,
                    annotations: None,
                    platform: None,
                });
            }
            let m = Manifest {
                schema_version: 2,
                media_type: Some(media::OCI_MANIFEST.to_owned()),
                config: Descriptor {
                    media_type: media::OCI_CONFIG.to_owned(),
                    digest: img.record.id.to_string(),
                    size: img.record.config.len() as i64,
                    annotations: None,
                    platform: None,
                },
                layers,
            };
            out.push(to_json(&m));
        }
        Ok(out)
    }

    /// `index.json`: one descriptor per tag, one bare one per untagged image.
    fn index(&self, manifests: &[Vec<u8>]) -> Vec<u8> {
        let mut descs = Vec::new();
        for (img, m) in self.images.iter().zip(manifests) {
            let base = Descriptor {
                media_type: media::OCI_MANIFEST.to_owned(),
                digest: Digest::of(m).to_string(),
                size: m.len() as i64,
                annotations: None,
                platform: None,
            };
            if img.tags.is_empty() {
                descs.push(base.clone());
            }
            for t in &img.tags {
                let mut a = BTreeMap::new();
                a.insert(ANNOTATION_IMAGE_NAME.to_owned(), t.to_string());
                a.insert(
                    ANNOTATION_REF_NAME.to_owned(),
                    t.tag().unwrap_or("latest").to_owned(),
                );
                descs.push(Descriptor {
                    annotations: Some(a),
                    ..base.clone()
                });
            }
        }
        to_json(&Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_owned()),
            manifests: descs,
        })
    }

    /// Docker's `manifest.json` and, when anything is tagged, `repositories`.
    fn docker_files(&self) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let mut entries = Vec::new();
        let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for img in &self.images {
            let mut layers = Vec::new();
            for d in &img.diff_ids {
                layers.push(format!("{BLOBS_DIR}/{}", self.layer(d)?.digest.hex()));
            }
            entries.push(DockerManifestEntry {
                config: format!("{BLOBS_DIR}/{}", img.record.id.hex()),
                repo_tags: img.tags.iter().map(ImageRef::familiar).collect(),
                layers,
            });
            if let Some(top) = img.diff_ids.last() {
                for t in &img.tags {
                    repos
                        .entry(t.familiar_name())
                        .or_default()
                        .insert(t.tag().unwrap_or("latest").to_owned(), top.hex());
                }
            }
        }
        let repos = (!repos.is_empty()).then(|| to_json(&repos));
        Ok((to_json(&entries), repos))
    }

    /// Writes the Docker ≥ 25 tarball to `out`, layers streamed from the store (or from their
    /// spooled compressed blobs). `progress` gets uncompressed layer bytes as they are read.
    /// Returns the bytes written.
    ///
    /// # Errors
    /// Store errors (a damaged layer is detected while it is written), write errors.
    pub fn write_tar(&mut self, out: &mut dyn Write, progress: &mut dyn FnMut(u64)) -> Result<u64> {
        self.spool_compressed(progress)?;
        let manifests = self.manifests()?;
        let index = self.index(&manifests);
        let (manifest_json, repositories) = self.docker_files()?;
        let werr = |e: io::Error| ArchiveError::Io {
            op: "write",
            path: "the archive output".into(),
            source: e,
        };
        let mut w = TarWriter::new(out);
        let meta = |name: &str| TarEntrySpec::file(name, 0, 0);
        w.append_bytes(&meta(OCI_LAYOUT_FILE), OCI_LAYOUT_CONTENT)
            .map_err(werr)?;
        w.append_bytes(&meta(INDEX_FILE), &index).map_err(werr)?;
        w.append_bytes(&meta(MANIFEST_FILE), &manifest_json)
            .map_err(werr)?;
        if let Some(r) = &repositories {
            w.header(&TarEntrySpec::file(REPOSITORIES_FILE, r.len() as u64, 0))
                .map_err(werr)?;
            w.content(r).map_err(werr)?;
            w.end_entry(r.len() as u64).map_err(werr)?;
        }
        w.header(&TarEntrySpec::dir("blobs", 0)).map_err(werr)?;
        w.header(&TarEntrySpec::dir(BLOBS_DIR, 0)).map_err(werr)?;
        let mut written: HashSet<Digest> = HashSet::new();
        for (img, m) in self.images.iter().zip(&manifests) {
            for (d, bytes) in [(img.record.id, &img.record.config), (Digest::of(m), m)] {
                if written.insert(d) {
                    let path = format!("{BLOBS_DIR}/{}", d.hex());
                    w.append_bytes(&TarEntrySpec::file(&path, 0, img.mtime), bytes)
                        .map_err(werr)?;
                }
            }
        }
        let codec = self.codec;
        for l in &mut self.layers {
            if !written.insert(l.digest) {
                continue;
            }
            let path = format!("{BLOBS_DIR}/{}", l.digest.hex());
            w.header(&TarEntrySpec::file(&path, l.size, l.mtime))
                .map_err(werr)?;
            match (&mut l.spool, codec) {
                (Some(f), _) => {
                    let mut r = io::BufReader::with_capacity(COPY_BUF, f).take(l.size);
                    let n = io::copy(&mut r, &mut EntryWrite { w: &mut w }).map_err(werr)?;
                    if n != l.size {
                        return Err(ArchiveError::Invalid(format!(
                            "the spooled blob of layer {} has {n} bytes, expected {}; is the \
                             store's tmp/ on a full or failing disk?",
                            l.diff_id, l.size
                        )));
                    }
                }
                (None, _) => {
                    let mut pw = ProgressWrite {
                        inner: EntryWrite { w: &mut w },
                        progress,
                    };
                    let n = self.store.export_layer(&l.diff_id, &mut pw)?;
                    if n != l.size {
                        return Err(ArchiveError::Invalid(format!(
                            "layer {} produced {n} bytes, the index says {}; run 'strata fsck'",
                            l.diff_id, l.size
                        )));
                    }
                }
            }
            w.end_entry(l.size).map_err(werr)?;
        }
        let n = w.written() + 2 * crate::tarfmt::BLOCK as u64;
        w.finish().map_err(werr)?;
        Ok(n)
    }

    /// Writes an OCI image layout into `dir`, which must not exist or be empty. Blobs are
    /// written under temporary names and renamed once complete; `index.json` and `oci-layout`
    /// come last, so an interrupted save never looks like a complete layout.
    ///
    /// # Errors
    /// A non-empty directory, store errors, write errors.
    pub fn write_oci_dir(&mut self, dir: &Path, progress: &mut dyn FnMut(u64)) -> Result<()> {
        if let Ok(mut rd) = fs::read_dir(dir)
            && rd.next().is_some()
        {
            return Err(ArchiveError::Invalid(format!(
                "{} is not empty; give a new or empty directory for the OCI layout",
                dir.display()
            )));
        }
        let blobs = dir.join(BLOBS_DIR);
        fs::create_dir_all(&blobs).map_err(io_err("create dir", &blobs))?;
        let put = |d: &Digest, bytes: &[u8]| -> Result<()> {
            let p = blobs.join(d.hex());
            fs::write(&p, bytes).map_err(io_err("write", &p))
        };
        for i in 0..self.layers.len() {
            let d = self.layers[i].diff_id;
            let tmp = blobs.join(format!(".tmp-{}", d.hex()));
            let f = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
            let mut bw = io::BufWriter::with_capacity(COPY_BUF, f);
            let (digest, size) = self.compress_into(&d, &mut bw, progress)?;
            bw.flush().map_err(io_err("write", &tmp))?;
            drop(bw);
            let fin = blobs.join(digest.hex());
            fs::rename(&tmp, &fin).map_err(io_err("rename", &fin))?;
            let l = &mut self.layers[i];
            l.digest = digest;
            l.size = size;
        }
        let manifests = self.manifests()?;
        for (img, m) in self.images.iter().zip(&manifests) {
            put(&img.record.id, &img.record.config)?;
            put(&Digest::of(m), m)?;
        }
        let index = self.index(&manifests);
        let p = dir.join(INDEX_FILE);
        fs::write(&p, index).map_err(io_err("write", &p))?;
        let p = dir.join(OCI_LAYOUT_FILE);
        fs::write(&p, OCI_LAYOUT_CONTENT).map_err(io_err("write", &p))?;
        Ok(())
    }
}
