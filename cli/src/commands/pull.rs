//! `strata pull IMAGE[:TAG|@DIGEST]`: fetches an image into the store (see `registry::pull`).

use std::process::ExitCode;

use anyhow::{Context, Result};
use layerstore::ImageRef;
use layerstore::archive::Platform;

use crate::Globals;
use crate::registry::client::Client;
use crate::registry::pull::{PullOptions, pull};
use crate::registry::{DEFAULT_JOBS, multi_progress};

use super::push::TlsArgs;

/// Pull an image from a registry.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `name[:tag]` or `name@sha256:…` (`ubuntu` is docker.io/library/ubuntu:latest).
    pub image: String,
    /// Platform to pick from a multi-platform image, `os/arch[/variant]`. Default: the host's.
    #[arg(long)]
    pub platform: Option<String>,
    /// Layers downloaded at once.
    #[arg(short, long, default_value_t = DEFAULT_JOBS)]
    pub jobs: usize,
    /// Do not keep the compressed layer blobs (saves disk; a later push of this image then
    /// recompresses, which changes the layer digests).
    #[arg(long)]
    pub no_keep_blobs: bool,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Runs `pull`.
///
/// # Errors
/// Network, auth, verification and store errors.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let r =
        ImageRef::parse(&a.image).with_context(|| format!("invalid image name {:?}", a.image))?;
    let r = if r.digest().is_some() {
        r
    } else {
        r.with_default_tag()
    };
    let opts = PullOptions {
        platform: a.platform.as_deref().map(Platform::parse).transpose()?,
        jobs: a.jobs.max(1),
        keep_blobs: !a.no_keep_blobs,
    };
    let store = g.store()?;
    // Holds every layer pulled or found stored until the image is recorded and tagged.
    let _lease = store.lease("pull")?;
    let client = Client::new(r.registry(), &a.tls.options(g)?)?;
    let show = !g.json() && !g.quiet;
    if show {
        println!(
            "{}: Pulling from {}",
            r.tag().or(r.digest()).unwrap_or("latest"),
            r.name()
        );
    }
    let mp = multi_progress(g);
    let rep = pull(g, &store, &client, &r, &opts, &mp).with_context(|| format!("pulling {r}"))?;
    if g.json() {
        crate::output::print_json(&rep)?;
    } else if g.quiet {
        println!("{}", rep.image_id);
    } else {
        for l in &rep.layers {
            let short = l.digest.strip_prefix("sha256:").unwrap_or(&l.digest);
            let short = &short[..short.len().min(12)];
            if l.status == "already_exists" {
                println!("{short}: Already exists");
            } else {
                println!("{short}: Pull complete");
            }
        }
        // As docker: the digest the image is recorded under, and a reference that finds it.
        let digest = rep.repo_digest.rsplit('@').next().unwrap_or_default();
        println!("Digest: {digest}");
        println!("Image ID: {}", rep.image_id);
        println!("{}", rep.tagged.as_deref().unwrap_or(&rep.repo_digest));
    }
    Ok(ExitCode::SUCCESS)
}
