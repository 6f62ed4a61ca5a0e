//! `push`: layers in parallel (HEAD first, cross-repository mount when the blob's source repo
//! on the same registry is known, else upload: monolithic POST → PUT for small blobs, PATCH
//! chunks for large ones, always following the newest `Location`), then the config, then the
//! manifest last.

use std::fs::File;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar};
use layerstore::blobs::{self, BlobCodec, LayerBlob, ManifestFormat};
use layerstore::{Digest, ImageConfig, ImageRef, Store};

use super::client::{Client, Payload, get_header};
use super::{LayerReport, layer_bar};
use crate::Globals;

/// Blobs up to this size go up in one PUT; larger ones in PATCH chunks of [`CHUNK`].
pub const MONOLITHIC_MAX: u64 = 32 << 20;
/// Chunk size of chunked uploads: large enough that per-request overhead is noise on a LAN,
/// small enough that progress moves and a failed chunk costs little.
pub const CHUNK: u64 = 32 << 20;
/// Attempts per blob upload (each restarts the upload session).
const UPLOAD_ATTEMPTS: u32 = 3;

/// Options of `push`.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Compression of layers made for this push.
    pub codec: BlobCodec,
    /// Every layer must go up in `codec` (`--compression` given): a blob of another
    /// compression, kept or recorded, is not reused. Otherwise blobs kept from a pull (or
    /// made by an earlier push) are sent as they are.
    pub codec_required: bool,
    /// Manifest flavour.
    pub format: ManifestFormat,
    /// Parallel layer uploads.
    pub jobs: usize,
}

/// What `push` did (`--format json`).
#[derive(Debug, serde::Serialize)]
pub struct PushReport {
    /// Where it went, fully qualified.
    pub reference: String,
    /// Digest of the manifest pushed.
    pub manifest_digest: String,
    /// Its size.
    pub manifest_size: u64,
    /// Its media type.
    pub manifest_media_type: String,
    /// Image ID (config digest).
    pub image_id: Digest,
    /// Layers, base first.
    pub layers: Vec<LayerReport>,
    /// Compressed bytes uploaded.
    pub uploaded_bytes: u64,
}

/// The bytes of a blob to upload.
enum Source<'a> {
    File(&'a File, u64),
    Bytes(&'a [u8]),
}

impl Source<'_> {
    fn len(&self) -> u64 {
        match self {
            Source::File(_, n) => *n,
            Source::Bytes(b) => b.len() as u64,
        }
    }
    fn payload(&self, offset: u64, len: u64) -> Payload<'_> {
        match self {
            Source::File(f, _) => Payload::File {
                file: f,
                offset,
                len,
            },
            Source::Bytes(b) => Payload::Bytes(&b[offset as usize..(offset + len) as usize]),
        }
    }
}

fn with_digest(loc: &str, d: &Digest) -> String {
    let sep = if loc.contains('?') { '&' } else { '?' };
    format!("{loc}{sep}digest={d}")
}

struct Ctx<'a> {
    client: &'a Client,
    base: String,
    repo: &'a str,
    scopes: Vec<String>,
}

impl Ctx<'_> {
    fn blob_exists(&self, d: &Digest) -> Result<bool> {
        let url = format!("{}/v2/{}/blobs/{d}", self.base, self.repo);
        let r = self
            .client
            .request("HEAD", &url, &[], Payload::Empty, &self.scopes, true)?;
        match r.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self
                .client
                .error_of(r, &format!("checking blob {d} in {}", self.repo))),
        }
    }

    fn location(&self, r: &ureq::http::Response<ureq::Body>, what: &str) -> Result<String> {
        let loc = get_header(r.headers(), "location")
            .with_context(|| format!("the registry sent no Location while {what}"))?;
        Ok(self.client.absolute(&self.base, loc))
    }

    /// Starts an upload session, or mounts `d` from `from`: `Ok(None)` when mounted.
    fn start_upload(&self, d: &Digest, from: Option<&str>) -> Result<Option<String>> {
        let mut url = format!("{}/v2/{}/blobs/uploads/", self.base, self.repo);
        let mut scopes = self.scopes.clone();
        if let Some(f) = from {
            url.push_str(&format!("?mount={d}&from={f}"));
            scopes.push(format!("repository:{f}:pull"));
        }
        let r = self
            .client
            .request("POST", &url, &[], Payload::Empty, &scopes, true)?;
        match r.status().as_u16() {
            201 if from.is_some() => Ok(None),
            202 => Ok(Some(self.location(&r, "starting an upload")?)),
            _ => Err(self.client.error_of(
                r,
                &format!(
                    "starting the upload of {d} to {}/{}",
                    self.client.registry(),
                    self.repo
                ),
            )),
        }
    }

    /// Uploads a blob into an upload session (monolithic or chunked).
    fn upload(
        &self,
        d: &Digest,
        src: &Source<'_>,
        mut loc: String,
        bar: &ProgressBar,
    ) -> Result<()> {
        let size = src.len();
        let what = || format!("uploading {d} to {}/{}", self.client.registry(), self.repo);
        let octet = ("Content-Type", "application/octet-stream");
        if size > MONOLITHIC_MAX {
            let mut off = 0;
            while off < size {
                let len = CHUNK.min(size - off);
                let range = format!("{off}-{}", off + len - 1);
                let r = self.client.request(
                    "PATCH",
                    &loc,
                    &[octet, ("Content-Range", &range)],
                    src.payload(off, len),
                    &self.scopes,
                    false,
                )?;
                if r.status().as_u16() != 202 {
                    return Err(self.client.error_of(r, &what()));
                }
                // Registry 2.x signs the upload state into the Location: always use the newest.
                loc = self.location(&r, "uploading a chunk")?;
                off += len;
                bar.set_position(off);
            }
            let r = self.client.request(
                "PUT",
                &with_digest(&loc, d),
                &[],
                Payload::Empty,
                &self.scopes,
                false,
            )?;
            if r.status().as_u16() != 201 {
                return Err(self.client.error_of(r, &what()));
            }
        } else {
            let r = self.client.request(
                "PUT",
                &with_digest(&loc, d),
                &[octet],
                src.payload(0, size),
                &self.scopes,
                false,
            )?;
            if r.status().as_u16() != 201 {
                return Err(self.client.error_of(r, &what()));
            }
            bar.set_position(size);
        }
        Ok(())
    }

    /// Compresses a layer straight into a chunked upload: a thread compresses into
    /// [`CHUNK`]-sized pieces, this one PATCHes each as it comes; the final PUT names the
    /// digest, known once the compressor is done. Returns the blob's digest and size.
    fn stream_upload(
        &self,
        store: &Store,
        diff_id: &Digest,
        codec: BlobCodec,
        bar: &ProgressBar,
    ) -> Result<(Digest, u64)> {
        let mut loc = self
            .start_upload(diff_id, None)?
            .context("internal: upload session expected")?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        std::thread::scope(|s| {
            let producer = s.spawn(move || {
                let mut w = ChunkWriter {
                    tx,
                    buf: Vec::with_capacity(CHUNK as usize),
                };
                let r = store.compress_layer(diff_id, codec, &mut w, &mut |_| {});
                let last = std::mem::take(&mut w.buf);
                if r.is_ok() && !last.is_empty() {
                    let _ = w.tx.send(last); // a closed channel: the uploader already failed
                }
                r
            });
            let octet = ("Content-Type", "application/octet-stream");
            let mut off = 0u64;
            let mut failure = None;
            for chunk in rx.iter() {
                let len = chunk.len() as u64;
                let range = format!("{off}-{}", off + len - 1);
                let r = self.client.request(
                    "PATCH",
                    &loc,
                    &[octet, ("Content-Range", &range)],
                    Payload::Bytes(&chunk),
                    &self.scopes,
                    false,
                );
                match r {
                    Ok(r) if r.status().as_u16() == 202 => {
                        match self.location(&r, "uploading a chunk") {
                            Ok(l) => loc = l,
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                        off += len;
                        bar.set_position(off);
                    }
                    Ok(r) => {
                        failure =
                            Some(self.client.error_of(
                                r,
                                &format!("uploading layer {diff_id} to {}", self.repo),
                            ));
                        break;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            drop(rx);
            let made = producer
                .join()
                .map_err(|_| anyhow::anyhow!("the compressor of layer {diff_id} panicked"))?;
            if let Some(e) = failure {
                return Err(e);
            }
            let (digest, size) = made?;
            if size != off {
                bail!("internal: compressed {size} bytes of {diff_id} but uploaded {off}");
            }
            let r = self.client.request(
                "PUT",
                &with_digest(&loc, &digest),
                &[],
                Payload::Empty,
                &self.scopes,
                false,
            )?;
            if r.status().as_u16() != 201 {
                return Err(self.client.error_of(
                    r,
                    &format!("finishing the upload of {digest} to {}", self.repo),
                ));
            }
            Ok((digest, size))
        })
    }

    /// Uploads with retries; each attempt starts a new session.
    fn upload_retrying(
        &self,
        d: &Digest,
        src: &Source<'_>,
        first: Option<String>,
        bar: &ProgressBar,
    ) -> Result<()> {
        let mut session = first;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let loc = match session.take() {
                Some(l) => l,
                None => self
                    .start_upload(d, None)?
                    .context("internal: upload session expected")?,
            };
            match self.upload(d, src, loc, bar) {
                Ok(()) => return Ok(()),
                Err(e) if attempt < UPLOAD_ATTEMPTS && !is_auth_error(&e) => {
                    bar.set_position(0);
                    std::thread::sleep(std::time::Duration::from_millis(500 * u64::from(attempt)));
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Cuts a byte stream into [`CHUNK`]-sized pieces for the uploader.
struct ChunkWriter {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK as usize - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK as usize {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK as usize));
            self.tx
                .send(full)
                .map_err(|_| std::io::Error::other("the upload stopped"))?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn is_auth_error(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.starts_with("unauthorized") || s.starts_with("denied")
}

/// Pushes the local image `image` to `dest`.
///
/// # Errors
/// Network, auth and store errors, each naming what and where.
pub fn push(
    g: &Globals,
    store: &Store,
    client: &Client,
    config: &[u8],
    dest: &ImageRef,
    opts: &PushOptions,
    mp: &MultiProgress,
) -> Result<PushReport> {
    let repo = dest.repository();
    let tag = dest
        .tag()
        .unwrap_or(layerstore::reference::DEFAULT_TAG)
        .to_owned();
    let cfg = ImageConfig::parse(config).context("the image config")?;
    let diff_ids = cfg.rootfs.diff_ids.clone();
    let ctx = Ctx {
        client,
        base: client.base()?,
        repo,
        scopes: vec![format!("repository:{repo}:pull,push")],
    };
    let here = format!("{}/{repo}", client.registry());
    let same_registry = format!("{}/", client.registry());
    let uploaded = std::sync::atomic::AtomicU64::new(0);

    let work = |i: usize| -> Result<(LayerReport, String)> {
        let diff_id = diff_ids[i];
        let known = store.layer_blobs(&diff_id)?;
        let usable = |b: &LayerBlob| {
            ctx_allows(opts.format, &b.codec)
                && (b.stored || b.regenerable())
                && (!opts.codec_required || b.codec == opts.codec.name())
        };
        // Kept (pulled) bytes first: a re-push is byte-identical; then ours in the wanted codec.
        let cand = known
            .iter()
            .filter(|b| usable(b))
            .find(|b| b.stored)
            .or_else(|| {
                known
                    .iter()
                    .filter(|b| usable(b))
                    .find(|b| b.codec == opts.codec.name())
            })
            .or_else(|| known.iter().find(|b| usable(b)))
            .cloned();
        let mut rep = LayerReport {
            digest: String::new(),
            diff_id,
            size: 0,
            status: "pushed",
            mounted_from: None,
        };
        let mut session = None;
        let blob = match cand {
            Some(b) => {
                rep.digest = b.digest.to_string();
                rep.size = b.size;
                if ctx.blob_exists(&b.digest)? {
                    rep.status = "already_exists";
                    Some(b)
                } else {
                    let from = b
                        .source
                        .as_deref()
                        .and_then(|s| s.strip_prefix(&same_registry))
                        .filter(|r| *r != repo)
                        .map(str::to_owned);
                    if let Some(f) = from {
                        match ctx.start_upload(&b.digest, Some(&f))? {
                            None => {
                                rep.status = "mounted";
                                rep.mounted_from = Some(f);
                            }
                            Some(loc) => session = Some(loc),
                        }
                    }
                    Some(b)
                }
            }
            None => None,
        };
        if rep.status == "pushed" && blob.is_none() {
            // Never compressed before: compress and upload at once (chunks go up while the
            // next ones are made). Any failure falls back to the spooled path below.
            let bar = layer_bar(g, mp, 0, &diff_id.short());
            bar.set_message(format!("{} compressing+pushing", diff_id.short()));
            match ctx.stream_upload(store, &diff_id, opts.codec, &bar) {
                Ok((digest, size)) => {
                    bar.finish_and_clear();
                    uploaded.fetch_add(size, Ordering::Relaxed);
                    store.record_layer_blob(&LayerBlob {
                        digest,
                        diff_id,
                        media_type: opts.codec.oci_media_type().to_owned(),
                        size,
                        codec: opts.codec.name().to_owned(),
                        level: Some(opts.codec.level()),
                        source: Some(here.clone()),
                        stored: false,
                    })?;
                    rep.digest = digest.to_string();
                    rep.size = size;
                    return Ok((rep, opts.codec.name().to_owned()));
                }
                Err(e) if !is_auth_error(&e) => {
                    bar.finish_and_clear();
                    if g.verbose {
                        eprintln!(
                            "registry: streamed upload of {diff_id} failed ({e:#}); retrying"
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if rep.status == "pushed" {
            let bar = layer_bar(g, mp, 0, &diff_id.short());
            // The bytes: kept ones, or made (again) here.
            let (file, digest, size, codec) = match &blob {
                Some(b) if b.stored => match store.open_stored_blob(&b.digest)? {
                    Some(f) => (f, b.digest, b.size, b.codec.clone()),
                    None => {
                        let c = BlobCodec::parse(&b.codec).unwrap_or(opts.codec);
                        let s = store.spool_layer(&diff_id, c, &mut |_| {})?;
                        (s.file, s.digest, s.size, c.name().to_owned())
                    }
                },
                Some(b) => {
                    let c = BlobCodec::parse(&b.codec).unwrap_or(opts.codec);
                    bar.set_message(format!("{} compressing", diff_id.short()));
                    let s = store.spool_layer(&diff_id, c, &mut |_| {})?;
                    if s.digest != b.digest {
                        eprintln!(
                            "warning: layer {diff_id} compressed to {} this time, not {} as \
                             recorded; pushing the new blob",
                            s.digest, b.digest
                        );
                        session = None;
                    }
                    (s.file, s.digest, s.size, c.name().to_owned())
                }
                None => {
                    bar.set_message(format!("{} compressing", diff_id.short()));
                    let s = store.spool_layer(&diff_id, opts.codec, &mut |_| {})?;
                    (s.file, s.digest, s.size, opts.codec.name().to_owned())
                }
            };
            rep.digest = digest.to_string();
            rep.size = size;
            let fresh = blob.as_ref().is_none_or(|b| b.digest != digest);
            if fresh && ctx.blob_exists(&digest)? {
                rep.status = "already_exists";
            } else {
                bar.set_length(size);
                bar.set_message(format!("{} pushing", diff_id.short()));
                ctx.upload_retrying(&digest, &Source::File(&file, size), session, &bar)?;
                uploaded.fetch_add(size, Ordering::Relaxed);
            }
            bar.finish_and_clear();
            let mut rec = store
                .layer_blobs(&diff_id)?
                .into_iter()
                .find(|b| b.digest == digest)
                .context("internal: the blob just made is not recorded")?;
            rec.source = Some(here.clone());
            store.record_layer_blob(&rec)?;
            return Ok((rep, codec));
        }
        // Exists or mounted: remember it is there now.
        let b = blob.context("internal: no blob")?;
        store.record_layer_blob(&LayerBlob {
            source: Some(here.clone()),
            ..b.clone()
        })?;
        Ok((rep, b.codec))
    };

    type Slot = Mutex<Option<Result<(LayerReport, String)>>>;
    let results: Vec<Slot> = (0..diff_ids.len()).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, diff_ids.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= diff_ids.len() {
                        return;
                    }
                    let r = work(i);
                    let failed = r.is_err();
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                    if failed {
                        next.store(diff_ids.len(), Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    let mut layers = Vec::new();
    let mut descs = Vec::new();
    for slot in results {
        if let Some(r) = slot.into_inner().ok().flatten() {
            let (rep, codec) = r?;
            let d: Digest = rep.digest.parse()?;
            descs.push((d, rep.size, codec));
            layers.push(rep);
        }
    }
    if layers.len() != diff_ids.len() {
        bail!("internal: some layers of the image were not pushed");
    }
    // The config: the image's exact bytes (its digest is the image ID).
    let id = Digest::of(config);
    if !ctx.blob_exists(&id)? {
        let loc = ctx
            .start_upload(&id, None)?
            .context("internal: upload session expected")?;
        ctx.upload_retrying(
            &id,
            &Source::Bytes(config),
            Some(loc),
            &ProgressBar::hidden(),
        )?;
    }
    // The manifest, last: every blob it names is now in the repository.
    let manifest = blobs::image_manifest(opts.format, config, &descs)?;
    let mdigest = Digest::of(&manifest);
    let url = format!("{}/v2/{repo}/manifests/{tag}", ctx.base);
    let r = client.request(
        "PUT",
        &url,
        &[("Content-Type", opts.format.media_type())],
        Payload::Bytes(&manifest),
        &ctx.scopes,
        true,
    )?;
    if r.status().as_u16() != 201 {
        return Err(client.error_of(r, &format!("pushing the manifest of {here}:{tag}")));
    }
    if let Some(a) = get_header(r.headers(), "docker-content-digest")
        && a != mdigest.to_string()
    {
        bail!(
            "the registry stored the manifest of {here}:{tag} under {a}, not {mdigest}: it \
             changed the bytes"
        );
    }
    // As docker: the image is now also known by its digest in that repository.
    store.add_repo_digest(&id, &dest.canonical(&mdigest))?;
    Ok(PushReport {
        reference: format!("{here}:{tag}"),
        manifest_digest: mdigest.to_string(),
        manifest_size: manifest.len() as u64,
        manifest_media_type: opts.format.media_type().to_owned(),
        image_id: id,
        layers,
        uploaded_bytes: uploaded.into_inner(),
    })
}

/// Whether a blob of `codec` can go into a manifest of `format`.
fn ctx_allows(format: ManifestFormat, codec: &str) -> bool {
    match format {
        ManifestFormat::Oci => true,
        ManifestFormat::Docker => codec == "gzip",
    }
}
