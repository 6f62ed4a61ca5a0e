//! `strata push IMAGE[:TAG]`: sends a local image to its registry (see `registry::push`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use layerstore::ImageRef;
use layerstore::blobs::{BlobCodec, ManifestFormat};

use crate::Globals;
use crate::registry::client::{Client, ClientOptions};
use crate::registry::push::{PushOptions, push};
use crate::registry::{DEFAULT_JOBS, multi_progress};

/// TLS flags shared by login, push and pull.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Verify the registry's TLS certificate. `--tls-verify=false` accepts any certificate
    /// and allows plain http. Registries on localhost/127.0.0.1 may use plain http anyway
    /// (tried when https fails, as Docker does).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub tls_verify: bool,
    /// Same as --tls-verify=false.
    #[arg(long)]
    pub insecure: bool,
    /// A PEM file of CA certificates to trust (repeatable).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Vec<PathBuf>,
    /// A directory of `*.crt` CA files (Docker's certs.d layout).
    #[arg(long, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
}

impl TlsArgs {
    /// The client options these flags ask for.
    ///
    /// # Errors
    /// An unreadable --cert-dir.
    pub fn options(&self, g: &Globals) -> Result<ClientOptions> {
        let mut ca_files = self.ca_file.clone();
        if let Some(d) = &self.cert_dir {
            let rd = std::fs::read_dir(d).with_context(|| format!("reading {}", d.display()))?;
            let mut found: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "crt" || x == "pem"))
                .collect();
            found.sort();
            ca_files.extend(found);
        }
        Ok(ClientOptions {
            insecure: self.insecure || !self.tls_verify,
            ca_files,
            verbose: g.verbose,
        })
    }
}

/// Push an image to a registry: layers not there yet, then the config, then the manifest.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The local image, named as in the registry (`localhost:5000/team/app:1.0`; tag it
    /// first with `strata tag`). Default tag: latest.
    pub image: String,
    /// Compression of the layers: gzip or zstd. Given, every layer goes up in it (a layer
    /// the store has only in the other compression is recompressed). Not given, layers pulled
    /// or pushed earlier go up as they are, new ones as gzip.
    #[arg(long, value_parser = ["gzip", "zstd"])]
    pub compression: Option<String>,
    /// Manifest type: oci (default) or docker (v2 schema 2; gzip layers only).
    #[arg(long, default_value = "oci", value_parser = ["oci", "docker"])]
    pub manifest_type: String,
    /// Layers uploaded at once.
    #[arg(short, long, default_value_t = DEFAULT_JOBS)]
    pub jobs: usize,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Runs `push`.
///
/// # Errors
/// Unknown image, network, auth and store errors.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let dest = ImageRef::parse(&a.image)
        .with_context(|| format!("invalid image name {:?}", a.image))?
        .with_default_tag();
    if dest.digest().is_some() {
        anyhow::bail!("push takes a name:tag, not a digest ({dest})");
    }
    let store = g.store()?;
    let rec = store
        .resolve_image(&dest.to_string())
        .with_context(|| format!("pushing {dest}: tag the image with this name first"))?;
    let format = if a.manifest_type == "docker" {
        ManifestFormat::Docker
    } else {
        ManifestFormat::Oci
    };
    let required = a.compression.as_deref().map(BlobCodec::parse).transpose()?;
    if format == ManifestFormat::Docker && required == Some(BlobCodec::Zstd) {
        anyhow::bail!(
            "--compression zstd needs an OCI manifest: Docker v2 manifests carry gzip layers \
             only (drop --manifest-type docker)"
        );
    }
    let client = Client::new(dest.registry(), &a.tls.options(g)?)?;
    let opts = PushOptions {
        codec: required.unwrap_or(BlobCodec::Gzip),
        codec_required: required.is_some(),
        format,
        jobs: a.jobs.max(1),
    };
    if !g.json() && !g.quiet {
        println!("The push refers to repository [{}]", dest.name());
    }
    let mp = multi_progress(g);
    let rep = push(g, &store, &client, &rec.config, &dest, &opts, &mp)
        .with_context(|| format!("pushing {dest}"))?;
    if g.json() {
        crate::output::print_json(&rep)?;
    } else if g.quiet {
        println!("{}", rep.manifest_digest);
    } else {
        for l in rep.layers.iter().rev() {
            let short = l.digest.strip_prefix("sha256:").unwrap_or(&l.digest);
            let short = &short[..short.len().min(12)];
            match (l.status, &l.mounted_from) {
                ("already_exists", _) => println!("{short}: Layer already exists"),
                ("mounted", Some(f)) => println!("{short}: Mounted from {f}"),
                _ => println!("{short}: Pushed"),
            }
        }
        println!(
            "{}: digest: {} size: {}",
            dest.tag().unwrap_or("latest"),
            rep.manifest_digest,
            rep.manifest_size
        );
    }
    Ok(ExitCode::SUCCESS)
}
