//! `load`: Docker tarballs (≥ 25 and older), OCI layouts as a tar stream or a directory.
//!
//! # One pass
//! A tar stream is read once, front to back. Small JSON files (manifests, configs, indexes,
//! `repositories`) are kept in memory. Every other file is a layer candidate and is ingested
//! into the store as it passes, without a temp copy:
//! - when the metadata seen so far already says which layer it is (our own archives put all
//!   metadata first), it is ingested with its expected DiffID, and a layer that no selected
//!   image uses (another platform) is skipped;
//! - otherwise (Docker's own tarballs sort `blobs/` before `manifest.json`) it is ingested
//!   optimistically, hashing the raw bytes too, and matched against the manifests at the end.
//!   A file that is not a tar (plain, gzip or zstd) is skipped, and is only an error if a
//!   manifest names it as a layer.
//!
//! So no layer is spooled: the price of the optimistic case is that a layer of another
//! platform in a multi-platform tarball that puts blobs first is ingested for nothing; it is
//! removed again at the end, as is every layer this load added when the load fails.
//!
//! # Checks
//! Every layer's DiffID against its config ("invalid diffID for layer N"), every blob against
//! its name in `blobs/sha256/`, manifests naming missing blobs, layer counts, archive paths
//! (no absolute paths or `..`), truncation of the stream, the platform. Images are recorded
//! only after every check passed, so a failed load leaves no image, tag or layer behind.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};

use super::oci::{Descriptor, DockerManifestEntry, Index, Layout, Manifest, Sniff};
use super::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ArchiveError, BLOBS_DIR, INDEX_FILE, MANIFEST_FILE,
    OCI_LAYOUT_FILE, OCI_LAYOUT_VERSION, Result, io_err, media,
};
use crate::digest::{Digest, Hasher};
use crate::error::Error;
use crate::image::ImageConfig;
use crate::layer::LayerInfo;
use crate::reference::ImageRef;
use crate::store::Store;
use crate::tarfmt::{EntryKind, Next, TarReader};

/// Files up to this size that look like JSON are kept in memory as metadata; configs and
/// manifests are a few KiB, the largest real configs a few hundred.
const META_LIMIT: u64 = 16 << 20;
/// How many bytes of a file are looked at to tell JSON from a layer.
const SNIFF_LEN: usize = 512;
/// Buffer that sniffs a layer blob's compression (larger reads pass it by).
const SNIFF_BUF: usize = 64 << 10;
/// Offset and value of the ustar magic in a tar header.
const USTAR_MAGIC_AT: usize = 257;
/// Symlinks followed inside an archive before giving up.
const MAX_LINK_HOPS: usize = 16;
/// gzip and zstd magic (layers may be compressed).
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Options of `load`.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Platform to pick from multi-platform indexes; `None`: the host's, and single-platform
    /// archives load whatever their platform.
    pub platform: Option<Platform>,
}

/// An `os/arch[/variant]` platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// GOOS.
    pub os: String,
    /// GOARCH.
    pub architecture: String,
    /// Variant (`v7`, `v8`).
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*arch).to_owned(),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| (*v).to_owned()),
            }),
            _ => Err(ArchiveError::Invalid(format!(
                "platform {s:?}: expected os/arch[/variant], e.g. linux/amd64 or linux/arm/v7"
            ))),
        }
    }

    /// The host's platform (`linux/<GOARCH>`).
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: crate::image::host_architecture().into(),
            variant: None,
        }
    }

    fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == arch
            && (self.variant.is_none() || self.variant.as_deref() == variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// One loaded image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadedImage {
    /// ImageID.
    pub id: Digest,
    /// References it was tagged with (fully qualified); empty when untagged.
    #[serde(serialize_with = "ser_refs")]
    pub tags: Vec<ImageRef>,
    /// Layers, and how many of them were new to the store.
    pub layers: usize,
    /// Layers the store did not have.
    pub new_layers: usize,
}

fn ser_refs<S: serde::Serializer>(v: &[ImageRef], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(ToString::to_string))
}

/// What `load` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    /// Images, in archive order.
    pub images: Vec<LoadedImage>,
}

/// One layer of an image to load.
#[derive(Debug, Clone)]
struct PlannedLayer {
    /// Archive path (links resolved).
    path: String,
    diff_id: Digest,
    /// The digest the raw blob must have (OCI blobs), if its name says.
    blob: Option<Digest>,
}

/// One image to load.
#[derive(Debug, Clone)]
struct PlannedImage {
    config: Vec<u8>,
    layers: Vec<PlannedLayer>,
    names: Vec<ImageRef>,
}

/// What happened to a layer candidate of the archive.
#[derive(Debug)]
enum Ingested {
    Layer { info: LayerInfo, raw: Digest },
    NotATar,
    Failed(Error),
}

/// Where metadata files come from.
trait Files {
    /// A small file by normalised archive path (links followed); `None` when absent.
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// The path after following archive links.
    fn resolve(&self, path: &str) -> String;
}

/// Normalises an archive path: no leading `/` or `./`, no `.` segments; `..` that would
/// leave the archive is refused.
fn norm(p: &str) -> Result<String> {
    if p.starts_with('/') {
        return Err(ArchiveError::Invalid(format!(
            "path {p:?} is absolute; archive paths are relative (refusing path traversal)"
        )));
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(ArchiveError::Invalid(format!(
                        "path {p:?} leaves the archive (refusing path traversal)"
                    )));
                }
            }
            s => out.push(s),
        }
    }
    Ok(out.join("/"))
}

fn parent_of(p: &str) -> &str {
    p.rsplit_once('/').map(|(a, _)| a).unwrap_or("")
}

/// The digest a `blobs/sha256/<hex>` path names.
fn blob_digest_of(path: &str) -> Option<Digest> {
    path.strip_prefix(BLOBS_DIR)
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|h| Digest::parse_lenient(h).ok())
}

/// Path of a descriptor's blob; only sha256 is supported.
fn blob_path(d: &Descriptor) -> Result<String> {
    let dg: Digest = d.digest.parse().map_err(|_| {
        ArchiveError::Invalid(format!(
            "descriptor digest {:?} is not sha256:<64 hex>; only sha256 blobs are supported",
            d.digest
        ))
    })?;
    Ok(format!("{BLOBS_DIR}/{}", dg.hex()))
}

fn json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ArchiveError::Invalid(format!("{what} is not valid: {e}")))
}

/// Reads a metadata file that must exist, checking a blob against its name.
fn need(files: &dyn Files, path: &str, what: &str) -> Result<Vec<u8>> {
    let real = files.resolve(path);
    let bytes = files.get(&real)?.ok_or_else(|| {
        ArchiveError::Invalid(format!(
            "{what} names {path}, which is not in the archive (an incomplete or truncated \
             archive?)"
        ))
    })?;
    if let Some(d) = blob_digest_of(&real) {
        let got = Digest::of(&bytes);
        if got != d {
            return Err(ArchiveError::Invalid(format!(
                "blob {real} does not match its name: its content hashes to {got}"
            )));
        }
    }
    Ok(bytes)
}

fn parse_config(bytes: &[u8], path: &str) -> Result<ImageConfig> {
    ImageConfig::parse(bytes).map_err(|e| match e {
        Error::BadConfig { reason, .. } => Error::BadConfig {
            context: Some(path.to_owned()),
            reason,
        }
        .into(),
        e => e.into(),
    })
}

/// Works out the images to load from the metadata (Docker's `manifest.json` when present,
/// else the OCI `index.json`).
fn plan(files: &dyn Files, opts: &LoadOptions) -> Result<Vec<PlannedImage>> {
    let mut images: Vec<PlannedImage> = if let Some(m) = files.get(MANIFEST_FILE)? {
        plan_docker(files, &m, opts)?
    } else if let Some(ix) = files.get(INDEX_FILE)? {
        if let Some(l) = files.get(OCI_LAYOUT_FILE)? {
            let l: Layout = json(&l, OCI_LAYOUT_FILE)?;
            if l.image_layout_version != OCI_LAYOUT_VERSION {
                return Err(ArchiveError::Invalid(format!(
                    "oci-layout says version {:?}; only {OCI_LAYOUT_VERSION} is defined",
                    l.image_layout_version
                )));
            }
        }
        plan_oci(files, &ix, opts)?
    } else {
        return Err(ArchiveError::Invalid(
            "it has neither manifest.json (Docker) nor index.json (OCI layout); is it an image \
             archive? (a rootfs tarball is imported with 'strata import')"
                .into(),
        ));
    };
    // One image per config; names merged.
    let mut merged: Vec<PlannedImage> = Vec::new();
    for img in images.drain(..) {
        match merged.iter_mut().find(|m| m.config == img.config) {
            Some(m) => {
                for n in img.names {
                    if !m.names.contains(&n) {
                        m.names.push(n);
                    }
                }
            }
            None => merged.push(img),
        }
    }
    Ok(merged)
}

fn layers_of(
    cfg: &ImageConfig,
    paths: Vec<(String, Option<Digest>)>,
    files: &dyn Files,
    what: &str,
) -> Result<Vec<PlannedLayer>> {
    if paths.len() != cfg.rootfs.diff_ids.len() {
        return Err(ArchiveError::Invalid(format!(
            "{what} lists {} layers, its config has {} diff_ids",
            paths.len(),
            cfg.rootfs.diff_ids.len()
        )));
    }
    Ok(paths
        .into_iter()
        .zip(&cfg.rootfs.diff_ids)
        .map(|((p, blob), d)| {
            let path = files.resolve(&p);
            let blob = blob.or_else(|| blob_digest_of(&path));
            PlannedLayer {
                path,
                diff_id: *d,
                blob,
            }
        })
        .collect())
}

fn check_explicit_platform(cfg: &ImageConfig, opts: &LoadOptions) -> Result<()> {
    if let Some(p) = &opts.platform
        && !p.matches(&cfg.os, &cfg.architecture, cfg.variant.as_deref())
    {
        let mut have = format!("{}/{}", cfg.os, cfg.architecture);
        if let Some(v) = &cfg.variant {
            have.push('/');
            have.push_str(v);
        }
        return Err(ArchiveError::Platform {
            wanted: p.to_string(),
            available: have,
        });
    }
    Ok(())
}

fn plan_docker(files: &dyn Files, m: &[u8], opts: &LoadOptions) -> Result<Vec<PlannedImage>> {
    let entries: Vec<DockerManifestEntry> = json(m, MANIFEST_FILE)?;
    if entries.is_empty() {
        return Err(ArchiveError::Invalid(
            "manifest.json lists no images".into(),
        ));
    }
    let mut out = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        let what = format!("manifest.json entry {i}");
        let cpath = norm(&e.config)?;
        let config = need(files, &cpath, &what)?;
        let cfg = parse_config(&config, &cpath)?;
        check_explicit_platform(&cfg, opts)?;
        let paths = e
            .layers
            .iter()
            .map(|l| norm(l).map(|p| (p, None)))
            .collect::<Result<Vec<_>>>()?;
        let layers = layers_of(&cfg, paths, files, &what)?;
        let names = e
            .repo_tags
            .iter()
            .map(|t| {
                ImageRef::parse(t)
                    .map(ImageRef::with_default_tag)
                    .map_err(|err| {
                        ArchiveError::Invalid(format!("{what}: RepoTag {t:?} is invalid: {err}"))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(PlannedImage {
            config,
            layers,
            names,
        });
    }
    Ok(out)
}

fn is_index(d: &Descriptor, bytes: &[u8]) -> Result<bool> {
    if d.media_type == media::OCI_INDEX || d.media_type == media::DOCKER_LIST {
        return Ok(true);
    }
    if d.media_type == media::OCI_MANIFEST || d.media_type == media::DOCKER_MANIFEST {
        return Ok(false);
    }
    let s: Sniff = json(bytes, &format!("blob {}", d.digest))?;
    Ok(s.manifests.is_some()
        || s.media_type.as_deref() == Some(media::OCI_INDEX)
        || (s.config.is_none() && s.manifests.is_some()))
}

/// Collects the image manifests under a descriptor, choosing by platform in indexes.
fn walk_oci(
    files: &dyn Files,
    d: &Descriptor,
    want: &Platform,
    depth: usize,
    skipped: &mut Vec<String>,
    out: &mut Vec<(Vec<u8>, String)>,
) -> Result<()> {
    if depth > 8 {
        return Err(ArchiveError::Invalid(
            "indexes nested more than 8 deep (a loop?)".into(),
        ));
    }
    let path = blob_path(d)?;
    let bytes = need(files, &path, "the index")?;
    if !is_index(d, &bytes)? {
        out.push((bytes, path));
        return Ok(());
    }
    let ix: Index = json(&bytes, &format!("index {path}"))?;
    let mut picked = false;
    for c in &ix.manifests {
        let cb_is_index = c.media_type == media::OCI_INDEX || c.media_type == media::DOCKER_LIST;
        if !cb_is_index && let Some(p) = &c.platform {
            if !want.matches(&p.os, &p.architecture, p.variant.as_deref()) {
                let mut s = format!("{}/{}", p.os, p.architecture);
                if let Some(v) = &p.variant {
                    s.push('/');
                    s.push_str(v);
                }
                skipped.push(s);
                continue;
            }
            if picked {
                continue; // the first match wins, as in Docker and containerd
            }
        }
        walk_oci(files, c, want, depth + 1, skipped, out)?;
        picked = true;
    }
    Ok(())
}

fn plan_oci(files: &dyn Files, ix: &[u8], opts: &LoadOptions) -> Result<Vec<PlannedImage>> {
    let index: Index = json(ix, INDEX_FILE)?;
    if index.manifests.is_empty() {
        return Err(ArchiveError::Invalid("index.json lists no images".into()));
    }
    let want = opts.platform.clone().unwrap_or_else(Platform::host);
    let mut skipped = Vec::new();
    let mut out = Vec::new();
    for d in &index.manifests {
        let names = names_of(d)?;
        if let Some(p) = &d.platform
            && !want.matches(&p.os, &p.architecture, p.variant.as_deref())
        {
            skipped.push(format!("{}/{}", p.os, p.architecture));
            continue;
        }
        let mut manifests = Vec::new();
        walk_oci(files, d, &want, 0, &mut skipped, &mut manifests)?;
        for (mbytes, mpath) in manifests {
            let m: Manifest = json(&mbytes, &format!("manifest {mpath}"))?;
            let what = format!("manifest {mpath}");
            let cpath = blob_path(&m.config)?;
            let config = need(files, &cpath, &what)?;
            let cfg = parse_config(&config, &cpath)?;
            if opts.platform.is_some()
                && !want.matches(&cfg.os, &cfg.architecture, cfg.variant.as_deref())
            {
                skipped.push(format!("{}/{}", cfg.os, cfg.architecture));
                continue;
            }
            let paths = m
                .layers
                .iter()
                .map(|l| {
                    let p = blob_path(l)?;
                    Ok((p, l.digest.parse().ok()))
                })
                .collect::<Result<Vec<_>>>()?;
            let layers = layers_of(&cfg, paths, files, &what)?;
            out.push(PlannedImage {
                config,
                layers,
                names: names.clone(),
            });
        }
    }
    if out.is_empty() {
        skipped.sort();
        skipped.dedup();
        return Err(ArchiveError::Platform {
            wanted: want.to_string(),
            available: if skipped.is_empty() {
                "nothing".into()
            } else {
                skipped.join(", ")
            },
        });
    }
    Ok(out)
}

/// Names from the annotations of a top-level descriptor: the full name containerd and
/// Docker write, else `ref.name` when it is a full reference (not just a tag).
fn names_of(d: &Descriptor) -> Result<Vec<ImageRef>> {
    let Some(a) = &d.annotations else {
        return Ok(Vec::new());
    };
    let full = a.get(ANNOTATION_IMAGE_NAME).or_else(|| {
        a.get(ANNOTATION_REF_NAME)
            .filter(|r| r.contains('/') || r.contains(':'))
    });
    match full {
        Some(n) => Ok(vec![
            ImageRef::parse(n)
                .map(ImageRef::with_default_tag)
                .map_err(|e| ArchiveError::Invalid(format!("image name {n:?}: {e}")))?,
        ]),
        None => Ok(Vec::new()),
    }
}

/// Metadata and layers of a tar stream, as far as read.
#[derive(Default)]
struct Collected {
    small: HashMap<String, Vec<u8>>,
    /// Link path → target path (normalised, relative to the archive root).
    links: HashMap<String, String>,
    layers: HashMap<String, Ingested>,
}

impl Files for Collected {
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.small.get(&self.resolve(path)).cloned())
    }
    fn resolve(&self, path: &str) -> String {
        let mut p = path.to_owned();
        for _ in 0..MAX_LINK_HOPS {
            match self.links.get(&p) {
                Some(t) => p = t.clone(),
                None => break,
            }
        }
        p
    }
}

/// An OCI layout or extracted Docker archive on disk.
struct DirFiles {
    root: PathBuf,
}

impl DirFiles {
    /// The file for an archive path, refusing symlinks that leave the directory.
    fn file(&self, path: &str) -> Result<Option<PathBuf>> {
        let p = self.root.join(path);
        match p.canonicalize() {
            Ok(c) if c.starts_with(&self.root) => Ok(Some(c)),
            Ok(_) => Err(ArchiveError::Invalid(format!(
                "{path} points outside {} (refusing path traversal)",
                self.root.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("resolve", p)(e)),
        }
    }
}

impl Files for DirFiles {
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let Some(p) = self.file(path)? else {
            return Ok(None);
        };
        let md = fs::metadata(&p).map_err(io_err("stat", &p))?;
        if !md.is_file() || md.len() > META_LIMIT {
            return Ok(None);
        }
        fs::read(&p).map(Some).map_err(io_err("read", &p))
    }
    fn resolve(&self, path: &str) -> String {
        path.to_owned()
    }
}

/// Reads the content of the current entry of a [`TarReader`].
struct EntryRead<'a, R: Read> {
    tar: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tar
            .read_content(buf)
            .map_err(|e| io::Error::other(e.chain_text()))
    }
}

/// Hashes and counts what passes through; reports progress.
/// Without a hasher it only counts (a plain tar: its raw digest is its DiffID).
struct RawHash<'p, R> {
    inner: R,
    hasher: Option<Hasher>,
    count: u64,
    progress: &'p mut dyn FnMut(u64),
}

impl<R: Read> Read for RawHash<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        (self.progress)(n as u64);
        Ok(n)
    }
}

fn looks_like_json(head: &[u8]) -> bool {
    matches!(
        head.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    )
}

fn looks_like_layer(head: &[u8]) -> bool {
    head.starts_with(GZIP_MAGIC)
        || head.starts_with(ZSTD_MAGIC)
        || head.get(USTAR_MAGIC_AT..USTAR_MAGIC_AT + 5) == Some(b"ustar")
}

fn is_metadata_name(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    matches!(
        base,
        MANIFEST_FILE
            | INDEX_FILE
            | OCI_LAYOUT_FILE
            | super::REPOSITORIES_FILE
            | "VERSION"
            | "json"
    ) || base.ends_with(".json")
}

impl Store {
    /// Loads every image of an archive tar stream (plain, gzip or zstd; Docker old or new, or
    /// an OCI layout) in one pass. `progress` gets the raw bytes of layers as they are read.
    ///
    /// # Errors
    /// A bad archive (see the module docs), a layer that does not match its DiffID, store
    /// errors. Nothing is recorded then.
    pub fn load_tar(
        &self,
        input: impl Read,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<LoadReport> {
        let mut created = Vec::new();
        let r = self.load_tar_inner(input, opts, progress, &mut created);
        self.finish_load(r, &created)
    }

    /// Loads from an OCI layout directory (or an extracted Docker archive).
    ///
    /// # Errors
    /// As [`Store::load_tar`].
    pub fn load_dir(
        &self,
        dir: &Path,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<LoadReport> {
        let root = dir.canonicalize().map_err(io_err("open", dir))?;
        let files = DirFiles { root };
        let mut created = Vec::new();
        let r = (|| {
            let images = plan(&files, opts)?;
            let mut done: HashMap<String, Ingested> = HashMap::new();
            for img in &images {
                for (i, l) in img.layers.iter().enumerate() {
                    if done.contains_key(&l.path) {
                        continue;
                    }
                    let Some(p) = files.file(&l.path)? else {
                        return Err(ArchiveError::Invalid(format!(
                            "a manifest names the layer {}, which is not in {} (an incomplete \
                             layout?)",
                            l.path,
                            dir.display()
                        )));
                    };
                    let f = fs::File::open(&p).map_err(io_err("open", &p))?;
                    let ing = self.ingest_candidate(f, Some(l.diff_id), progress);
                    if let Ingested::Layer { info, .. } = &ing
                        && !info.existed
                    {
                        created.push(info.diff_id);
                    }
                    if let Ingested::Failed(Error::DigestMismatch { actual, .. }) = &ing {
                        return Err(ArchiveError::DiffId {
                            index: i,
                            path: l.path.clone(),
                            expected: l.diff_id.to_string(),
                            actual: actual.clone(),
                        });
                    }
                    done.insert(l.path.clone(), ing);
                }
            }
            self.commit_load(&images, &done)
        })();
        self.finish_load(r, &created)
    }

    /// Ingests one layer candidate, hashing its raw bytes; drains what the tar reader left.
    fn ingest_candidate(
        &self,
        input: impl Read,
        expected: Option<Digest>,
        progress: &mut dyn FnMut(u64),
    ) -> Ingested {
        // A plain tar is its own DiffID: ingest hashes it already, so it is not hashed twice.
        let mut input = io::BufReader::with_capacity(SNIFF_BUF, input);
        let compressed = match input.fill_buf() {
            Ok(head) => head.starts_with(GZIP_MAGIC) || head.starts_with(ZSTD_MAGIC),
            Err(e) => {
                return Ingested::Failed(Error::Read {
                    what: "layer blob".into(),
                    source: e,
                });
            }
        };
        let mut raw = RawHash {
            inner: input,
            hasher: compressed.then(Hasher::new),
            count: 0,
            progress,
        };
        let res = self.ingest_layer(&mut raw, expected.as_ref());
        if let Err(e) = res {
            return Ingested::Failed(e);
        }
        if let Err(e) = io::copy(&mut raw, &mut io::sink()) {
            return Ingested::Failed(Error::Read {
                what: "layer blob".into(),
                source: e,
            });
        }
        match res {
            Ok(info) => {
                let raw = match raw.hasher {
                    Some(h) => h.finish(),
                    // Everything after the tar's end blocks is part of the trailer, so the
                    // DiffID covers the whole blob; the size check makes sure of it.
                    None if raw.count == info.tar_size => info.diff_id,
                    None => {
                        return Ingested::Failed(Error::Conflict(format!(
                            "internal: the layer blob has {} bytes, its tar {}",
                            raw.count, info.tar_size
                        )));
                    }
                };
                Ingested::Layer { info, raw }
            }
            Err(e) => Ingested::Failed(e),
        }
    }

    /// A layer blob whose DiffID the store has: drained and hashed (its raw digest is checked
    /// against the manifest like any other), not ingested.
    fn skip_stored(
        &self,
        input: impl Read,
        diff_id: Digest,
        progress: &mut dyn FnMut(u64),
    ) -> Ingested {
        let mut raw = RawHash {
            inner: input,
            hasher: Some(Hasher::new()),
            count: 0,
            progress,
        };
        if let Err(e) = io::copy(&mut raw, &mut io::sink()) {
            return Ingested::Failed(Error::Read {
                what: "layer blob".into(),
                source: e,
            });
        }
        let digest = raw.hasher.map(Hasher::finish).unwrap_or(diff_id);
        let info = LayerInfo {
            diff_id,
            tar_size: raw.count,
            entries: 0,
            existed: true,
            compression: crate::layer::Compression::None,
        };
        Ingested::Layer { info, raw: digest }
    }

    fn load_tar_inner(
        &self,
        input: impl Read,
        opts: &LoadOptions,
        progress: &mut dyn FnMut(u64),
        created: &mut Vec<Digest>,
    ) -> Result<LoadReport> {
        let (decoded, _) = crate::layer::decompress(input)?;
        let mut tar = TarReader::new(decoded);
        let mut c = Collected::default();
        // The plan as far as the metadata seen so far allows; recomputed when metadata arrives.
        let mut early: Option<Vec<PlannedImage>> = None;
        let mut stale = true;
        let archive_err = |e: Error| match e {
            Error::BadTar { offset, reason, .. } => ArchiveError::Invalid(format!(
                "the archive's tar stream at byte {offset}: {reason}"
            )),
            e => ArchiveError::Store(e),
        };
        loop {
            let entry = match tar.next_entry().map_err(archive_err)? {
                Next::End(_) => break,
                Next::Entry(e) => e,
            };
            let path = norm(&entry.path)?;
            match entry.kind {
                EntryKind::Symlink => {
                    let t = entry.link.as_deref().unwrap_or_default();
                    let target = norm(&format!("{}/{t}", parent_of(&path)))?;
                    c.links.insert(path, target);
                }
                EntryKind::HardLink => {
                    let target = norm(entry.link.as_deref().unwrap_or_default())?;
                    c.links.insert(path, target);
                }
                EntryKind::File if entry.size > 0 => {
                    let mut head = vec![0u8; SNIFF_LEN.min(entry.size as usize)];
                    let mut got = 0;
                    while got < head.len() {
                        let n = tar.read_content(&mut head[got..]).map_err(archive_err)?;
                        got += n;
                    }
                    let small = entry.size <= META_LIMIT
                        && (looks_like_json(&head)
                            || (is_metadata_name(&path) && !looks_like_layer(&head)));
                    if small {
                        let mut all = head;
                        EntryRead { tar: &mut tar }
                            .read_to_end(&mut all)
                            .map_err(|e| ArchiveError::Invalid(format!("reading {path}: {e}")))?;
                        c.small.insert(path, all);
                        stale = true;
                    } else {
                        if stale {
                            early = plan(&c, opts).ok();
                            stale = false;
                        }
                        let wanted = early.as_ref().map(|imgs| {
                            imgs.iter()
                                .flat_map(|i| i.layers.iter().enumerate())
                                .find(|(_, l)| l.path == path)
                                .map(|(i, l)| (i, l.diff_id))
                        });
                        let reader = io::Cursor::new(head).chain(EntryRead { tar: &mut tar });
                        let ing = match wanted {
                            // Known to be no selected image's layer: skip it. Only for OCI
                            // blobs: Docker's older layout reaches layers through symlinks
                            // that may come later in the stream.
                            Some(None) if c.links.is_empty() && blob_digest_of(&path).is_some() => {
                                let mut r = reader;
                                io::copy(&mut r, &mut io::sink()).map_err(|e| {
                                    ArchiveError::Invalid(format!("reading {path}: {e}"))
                                })?;
                                continue_after(&mut tar, &path)?;
                                continue;
                            }
                            // Already stored (a reload): its files are not read again;
                            // only the blob's own digest is computed (checked at the end).
                            Some(Some((_, d))) if self.has_layer(&d).unwrap_or(false) => {
                                self.skip_stored(reader, d, progress)
                            }
                            Some(Some((index, d))) => {
                                let ing = self.ingest_candidate(reader, Some(d), progress);
                                if let Ingested::Failed(Error::DigestMismatch { actual, .. }) = &ing
                                {
                                    return Err(ArchiveError::DiffId {
                                        index,
                                        path,
                                        expected: d.to_string(),
                                        actual: actual.clone(),
                                    });
                                }
                                ing
                            }
                            Some(None) | None
                                if !looks_like_layer(reader.get_ref().0.get_ref()) =>
                            {
                                let mut r = reader;
                                io::copy(&mut r, &mut io::sink()).map_err(|e| {
                                    ArchiveError::Invalid(format!("reading {path}: {e}"))
                                })?;
                                Ingested::NotATar
                            }
                            Some(None) | None => self.ingest_candidate(reader, None, progress),
                        };
                        if let Ingested::Layer { info, .. } = &ing
                            && !info.existed
                        {
                            created.push(info.diff_id);
                        }
                        // The outer stream itself may be what failed: finishing the entry tells.
                        if matches!(ing, Ingested::Failed(_)) {
                            let mut rest = EntryRead { tar: &mut tar };
                            io::copy(&mut rest, &mut io::sink()).map_err(|e| {
                                ArchiveError::Invalid(format!("reading {path}: {e}"))
                            })?;
                        }
                        c.layers.insert(path.clone(), ing);
                    }
                }
                _ => {}
            }
            continue_after(&mut tar, "")?;
        }
        let images = plan(&c, opts)?;
        let layers = std::mem::take(&mut c.layers);
        self.commit_load(&images, &layers)
    }

    /// Checks every layer of every image, then records images and tags.
    fn commit_load(
        &self,
        images: &[PlannedImage],
        layers: &HashMap<String, Ingested>,
    ) -> Result<LoadReport> {
        let mut report = LoadReport::default();
        for img in images {
            let mut new_layers = 0;
            for (i, l) in img.layers.iter().enumerate() {
                match layers.get(&l.path) {
                    None => {
                        return Err(ArchiveError::Invalid(format!(
                            "a manifest names the layer {}, which is not in the archive (an \
                             incomplete or truncated archive?)",
                            l.path
                        )));
                    }
                    Some(Ingested::NotATar) => {
                        return Err(ArchiveError::Invalid(format!(
                            "layer {i} ({}) is not a tar (plain, gzip or zstd)",
                            l.path
                        )));
                    }
                    Some(Ingested::Failed(e)) => {
                        return Err(ArchiveError::Layer {
                            path: l.path.clone(),
                            source: clone_err(e),
                        });
                    }
                    Some(Ingested::Layer { info, raw }) => {
                        if info.diff_id != l.diff_id {
                            return Err(ArchiveError::DiffId {
                                index: i,
                                path: l.path.clone(),
                                expected: l.diff_id.to_string(),
                                actual: info.diff_id.to_string(),
                            });
                        }
                        if let Some(b) = l.blob
                            && *raw != b
                        {
                            return Err(ArchiveError::Invalid(format!(
                                "blob {} does not match its digest: its content hashes to {raw}",
                                l.path
                            )));
                        }
                        if !info.existed {
                            new_layers += 1;
                        }
                    }
                }
            }
            report.images.push(LoadedImage {
                id: Digest::of(&img.config),
                tags: img.names.clone(),
                layers: img.layers.len(),
                new_layers,
            });
        }
        for (img, rep) in images.iter().zip(&report.images) {
            self.add_image(&img.config, None)?;
            for n in &img.names {
                self.tag(&rep.id, n)?;
            }
        }
        Ok(report)
    }

    /// Removes the layers this load added that no image uses: all of them after a failure,
    /// and after success those of images not selected (another platform).
    fn finish_load(&self, r: Result<LoadReport>, created: &[Digest]) -> Result<LoadReport> {
        if !created.is_empty() {
            // Best effort: the original error matters more than a failed cleanup (gc would
            // remove these layers too).
            let _ = self.with_tx(|tx| {
                // Not a layer another process holds (it found this one meanwhile).
                let mut st = tx.prepare(
                    "DELETE FROM layers WHERE diff_id = ?1 AND id NOT IN \
                     (SELECT layer FROM image_layers) AND diff_id NOT IN \
                     (SELECT digest FROM lease_refs WHERE kind = ?2 AND lease IS NOT ?3)",
                )?;
                for d in created {
                    st.execute(rusqlite::params![
                        d.bytes(),
                        crate::lease::KIND_LAYER,
                        self.active_lease_id()
                    ])?;
                }
                Ok(())
            });
        }
        r
    }
}

fn continue_after<R: Read>(tar: &mut TarReader<R>, _path: &str) -> Result<()> {
    let mut rest = EntryRead { tar };
    io::copy(&mut rest, &mut io::sink())
        .map_err(|e| ArchiveError::Invalid(format!("reading the archive: {e}")))?;
    tar.finish_content().map_err(|e| match e {
        Error::BadTar { offset, reason, .. } => ArchiveError::Invalid(format!(
            "the archive's tar stream at byte {offset}: {reason}"
        )),
        e => ArchiveError::Store(e),
    })?;
    Ok(())
}

/// Errors are kept per layer until a manifest asks for that layer; this copies one for the
/// report (the source chain is kept as text).
fn clone_err(e: &Error) -> Error {
    match e {
        Error::BadTar {
            offset,
            entry,
            reason,
        } => Error::BadTar {
            offset: *offset,
            entry: entry.clone(),
            reason: reason.clone(),
        },
        Error::DigestMismatch {
            what,
            expected,
            actual,
        } => Error::DigestMismatch {
            what: what.clone(),
            expected: expected.clone(),
            actual: actual.clone(),
        },
        other => Error::Conflict(other.chain_text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_refuses_traversal_and_cleans_dots() {
        assert_eq!(norm("./blobs/sha256/x").unwrap(), "blobs/sha256/x");
        assert_eq!(norm("a/../b").unwrap(), "b");
        assert!(norm("../etc/passwd").is_err());
        assert!(norm("/etc/passwd").is_err());
    }

    #[test]
    fn platform_parse_and_match() {
        let p = Platform::parse("linux/arm/v7").unwrap();
        assert!(p.matches("linux", "arm", Some("v7")));
        assert!(!p.matches("linux", "arm", Some("v6")));
        assert!(Platform::parse("linux").is_err());
        assert!(
            Platform::parse("linux/amd64")
                .unwrap()
                .matches("linux", "amd64", None)
        );
    }
}
