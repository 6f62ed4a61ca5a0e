//! `pull`: manifest (index → platform), config, layers in parallel; every blob is verified
//! (digest and size) while it streams into the store, and the layer commits only when it
//! matched.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use indicatif::MultiProgress;
use layerstore::archive::{Platform, media};
use layerstore::blobs::{self, Descriptor, ExpectedBlob, LayerBlob, ParsedManifest};
use layerstore::{Digest, ImageConfig, ImageRef, Store};

use super::client::{Client, MAX_DOC, Payload, get_header};
use super::{LayerReport, layer_bar};
use crate::Globals;
use crate::progress::ProgressReader;

/// Manifest types a pull accepts (registry 2.8 hides OCI manifests from clients that do not
/// list the OCI types).
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
/// Attempts per layer download when the connection breaks mid-stream.
const LAYER_ATTEMPTS: u32 = 3;

/// Options of `pull`.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Platform to pick from an index; `None`: the host's.
    pub platform: Option<Platform>,
    /// Parallel layer downloads.
    pub jobs: usize,
    /// Keep the compressed blobs (for a byte-identical re-push).
    pub keep_blobs: bool,
}

/// What `pull` did (`--format json`).
#[derive(Debug, serde::Serialize)]
pub struct PullReport {
    /// The reference pulled, fully qualified.
    pub reference: String,
    /// Digest of the image manifest.
    pub manifest_digest: String,
    /// Digest of the index it was picked from, when there was one.
    pub index_digest: Option<String>,
    /// Image ID (config digest).
    pub image_id: Digest,
    /// The tag recorded, when the reference had one.
    pub tagged: Option<String>,
    /// The repository digest recorded, `registry/repo@sha256:…`: the digest of the document
    /// the registry served for the reference (the index, for a multi-platform image), as
    /// docker records it. Every command finds the image by it.
    pub repo_digest: String,
    /// Layers, base first.
    pub layers: Vec<LayerReport>,
    /// Compressed bytes downloaded.
    pub downloaded_bytes: u64,
}

fn matches(p: &Platform, d: &Descriptor) -> bool {
    d.platform.as_ref().is_some_and(|dp| {
        dp.os == p.os
            && dp.architecture == p.architecture
            && (p.variant.is_none() || p.variant == dp.variant)
    })
}

fn parse_digest(s: &str, what: &str) -> Result<Digest> {
    s.parse::<Digest>()
        .with_context(|| format!("{what} has digest {s:?}; strata verifies sha256 digests only"))
}

/// Fetches a manifest by tag or digest; verifies by-digest fetches. Returns the bytes, the
/// Content-Type and the digest.
fn get_manifest(
    client: &Client,
    base: &str,
    repo: &str,
    reference: &str,
    scopes: &[String],
) -> Result<(Vec<u8>, Option<String>, Digest)> {
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let mut r = client.request(
        "GET",
        &url,
        &[("Accept", ACCEPT_MANIFESTS)],
        Payload::Empty,
        scopes,
        true,
    )?;
    let st = r.status().as_u16();
    if st == 404 {
        return Err(client.error_of(
            r,
            &format!(
                "fetching manifest {reference} of {}/{repo} (no such image or tag)",
                client.registry()
            ),
        ));
    }
    if st != 200 {
        return Err(client.error_of(r, &format!("fetching manifest {reference} of {repo}")));
    }
    let ct = get_header(r.headers(), "content-type")
        .map(|s| s.split(';').next().unwrap_or_default().trim().to_owned());
    let announced = get_header(r.headers(), "docker-content-digest").map(str::to_owned);
    let bytes = Client::read_doc(&mut r, MAX_DOC)
        .with_context(|| format!("reading manifest {reference} of {repo}"))?;
    let got = Digest::of(&bytes);
    if reference.contains(':') {
        let want = parse_digest(reference, "the reference")?;
        if got != want {
            bail!(
                "manifest {reference} of {repo} does not match its digest (got {got}); the \
                 registry served other bytes: refusing it"
            );
        }
    } else if let Some(a) = announced.filter(|a| a.starts_with("sha256:"))
        && a != got.to_string()
    {
        bail!(
            "manifest {reference} of {repo}: the registry announced {a} but sent bytes with \
             digest {got}: refusing it"
        );
    }
    Ok((bytes, ct, got))
}

/// Fetches a small blob (the config) and verifies it.
fn get_small_blob(
    client: &Client,
    base: &str,
    repo: &str,
    d: &Descriptor,
    scopes: &[String],
) -> Result<Vec<u8>> {
    let want = parse_digest(&d.digest, "the config")?;
    let url = format!("{base}/v2/{repo}/blobs/{want}");
    let mut r = client.request("GET", &url, &[], Payload::Empty, scopes, true)?;
    if r.status().as_u16() != 200 {
        return Err(client.error_of(r, &format!("fetching config {want} of {repo}")));
    }
    let bytes = Client::read_doc(&mut r, MAX_DOC)?;
    let got = Digest::of(&bytes);
    if got != want || bytes.len() as i64 != d.size {
        bail!(
            "config blob {want} of {repo} is not what the manifest announced ({} bytes, \
             digest {got}; expected {} bytes): refusing it",
            bytes.len(),
            d.size
        );
    }
    Ok(bytes)
}

/// Pulls `r` into the store.
///
/// # Errors
/// Network, auth, verification and store errors, each naming what and where.
pub fn pull(
    g: &Globals,
    store: &Store,
    client: &Client,
    r: &ImageRef,
    opts: &PullOptions,
    mp: &MultiProgress,
) -> Result<PullReport> {
    let repo = r.repository();
    let reference = match (r.digest(), r.tag()) {
        (Some(d), _) => d.to_owned(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => layerstore::reference::DEFAULT_TAG.to_owned(),
    };
    let scopes = vec![format!("repository:{repo}:pull")];
    let base = client.base()?;
    let source = format!("{}/{repo}", client.registry());
    let (mut bytes, mut ct, mut mdigest) = get_manifest(client, &base, repo, &reference, &scopes)?;
    let mut index_digest = None;
    let (config_desc, layer_descs) = match blobs::parse_manifest(&bytes, ct.as_deref())? {
        ParsedManifest::Image { config, layers } => (config, layers),
        ParsedManifest::Index(entries) => {
            let want = opts.platform.clone().unwrap_or_else(Platform::host);
            let pick = entries
                .iter()
                .filter(|d| {
                    d.media_type.is_empty()
                        || d.media_type == media::OCI_MANIFEST
                        || d.media_type == media::DOCKER_MANIFEST
                })
                .find(|d| matches(&want, d))
                .with_context(|| {
                    let have: Vec<String> = entries
                        .iter()
                        .filter_map(|d| d.platform.as_ref())
                        .map(|p| match &p.variant {
                            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                            None => format!("{}/{}", p.os, p.architecture),
                        })
                        .collect();
                    format!(
                        "{source}:{reference} has no image for platform {want} (it has: {}); \
                         choose one with --platform os/arch[/variant]",
                        have.join(", ")
                    )
                })?;
            let d = parse_digest(&pick.digest, "the index entry")?;
            index_digest = Some(mdigest.to_string());
            (bytes, ct, mdigest) = get_manifest(client, &base, repo, &d.to_string(), &scopes)?;
            match blobs::parse_manifest(&bytes, ct.as_deref())? {
                ParsedManifest::Image { config, layers } => (config, layers),
                ParsedManifest::Index(_) => {
                    bail!("{source}@{d}: an index inside an index is not supported")
                }
            }
        }
    };
    let _ = (&bytes, &ct);
    let image_id = parse_digest(&config_desc.digest, "the config")?;
    let config = match store.resolve_image(&image_id.to_string()) {
        Ok(rec) if rec.id == image_id => rec.config,
        _ => get_small_blob(client, &base, repo, &config_desc, &scopes)?,
    };
    let cfg = ImageConfig::parse(&config).context("the pulled image config")?;
    let diff_ids = cfg.rootfs.diff_ids.clone();
    if diff_ids.len() != layer_descs.len() {
        bail!(
            "{source}@{mdigest}: the manifest lists {} layers but the config {} diff_ids; \
             refusing the image",
            layer_descs.len(),
            diff_ids.len()
        );
    }
    let mut expected = Vec::with_capacity(layer_descs.len());
    for (i, d) in layer_descs.iter().enumerate() {
        let digest = parse_digest(&d.digest, &format!("layer {i}"))?;
        if blobs::layer_compression(&d.media_type).is_none() {
            bail!(
                "layer {i} ({digest}) of {source}@{mdigest} has media type {:?}, which is not \
                 an image layer strata can store",
                d.media_type
            );
        }
        if d.size < 0 {
            bail!("layer {i} ({digest}) has a negative size in the manifest");
        }
        expected.push(ExpectedBlob {
            digest,
            size: d.size as u64,
            media_type: d.media_type.clone(),
        });
    }
    let reports: Vec<Mutex<Option<Result<LayerReport>>>> =
        (0..expected.len()).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let downloaded = std::sync::atomic::AtomicU64::new(0);
    let work = |i: usize| -> Result<LayerReport> {
        let e = &expected[i];
        let diff_id = diff_ids[i];
        let mut rep = LayerReport {
            digest: e.digest.to_string(),
            diff_id,
            size: e.size,
            status: "already_exists",
            mounted_from: None,
        };
        if store.has_layer(&diff_id)? {
            store.record_layer_blob(&LayerBlob {
                digest: e.digest,
                diff_id,
                media_type: e.media_type.clone(),
                size: e.size,
                codec: blobs::layer_compression(&e.media_type)
                    .unwrap_or("none")
                    .to_owned(),
                level: None,
                source: Some(source.clone()),
                stored: false,
            })?;
            return Ok(rep);
        }
        let bar = layer_bar(g, mp, e.size, &e.digest.short());
        let url = format!("{base}/v2/{repo}/blobs/{}", e.digest);
        let mut attempt = 0;
        loop {
            attempt += 1;
            bar.set_position(0);
            let resp = client.request("GET", &url, &[], Payload::Empty, &scopes, true)?;
            if resp.status().as_u16() != 200 {
                return Err(
                    client.error_of(resp, &format!("fetching layer {} of {repo}", e.digest))
                );
            }
            let body = resp.into_body().into_reader();
            let input = ProgressReader::new(body, bar.clone());
            match store.pull_layer(input, e, &diff_id, &source, opts.keep_blobs) {
                Ok(_) => break,
                // A broken connection: fetch again. A bad blob is final.
                Err(layerstore::Error::Read { source: ioe, .. })
                    if attempt < LAYER_ATTEMPTS
                        && ioe.kind() != std::io::ErrorKind::InvalidData =>
                {
                    continue;
                }
                Err(err) => {
                    return Err(anyhow::Error::new(err)
                        .context(format!("layer {i} ({}) of {source}@{mdigest}", e.digest)));
                }
            }
        }
        bar.finish_and_clear();
        downloaded.fetch_add(e.size, Ordering::Relaxed);
        rep.status = "pulled";
        Ok(rep)
    };
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, expected.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= expected.len() {
                        return;
                    }
                    let r = work(i);
                    let failed = r.is_err();
                    if let Ok(mut slot) = reports[i].lock() {
                        *slot = Some(r);
                    }
                    if failed {
                        // Stop handing out work; running downloads finish.
                        next.store(expected.len(), Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
    });
    let mut layers = Vec::with_capacity(expected.len());
    for slot in reports {
        match slot.into_inner().ok().flatten() {
            Some(r) => layers.push(r?),
            None => continue, // not started because another layer failed
        }
    }
    if layers.len() != expected.len() {
        bail!("internal: some layers of {source} were not pulled");
    }
    let id = store.add_image(&config, None)?;
    let top: Digest = match &index_digest {
        Some(d) => parse_digest(d, "the index")?,
        None => mdigest,
    };
    let repo_digest = r.canonical(&top);
    store.add_repo_digest(&id, &repo_digest)?;
    let tagged = match r.digest() {
        Some(_) => None,
        None => {
            let t = store.tag(&id, &r.clone().with_default_tag())?;
            Some(t.to_string())
        }
    };
    Ok(PullReport {
        reference: r.clone().with_default_tag().to_string(),
        manifest_digest: mdigest.to_string(),
        index_digest,
        image_id: id,
        tagged,
        repo_digest: repo_digest.to_string(),
        layers,
        downloaded_bytes: downloaded.into_inner(),
    })
}
