//! `strata build [-t NAME[:TAG]]… [-f Dockerfile] [--target STAGE] [--build-arg K=V]…
//! [--no-cache] [--progress plain|tty] CONTEXT`: glue around [`crate::build::build`].
//!
//! While the build runs, everything (step lines, the output of RUN commands) goes to stderr;
//! stdout carries only the result: the image ID (or JSON with `--format json`).

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use layerstore::reference::ImageRef;

use crate::Globals;
use crate::build::{Options, dockerfile_path, parse_build_args};
use crate::runtime::{IN_USERNS_ENV, reexec_in_userns};

/// How step progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Progress {
    /// Plain lines (`STEP n/m: …`), as `docker build --progress=plain`.
    Plain,
    /// The same lines (a terminal display is not implemented).
    Tty,
}

/// Build an image from a Dockerfile.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Name the image `NAME[:TAG]` (tag defaults to `latest`); repeatable.
    #[arg(short, long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,
    /// The Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short, long = "file")]
    pub file: Option<PathBuf>,
    /// Build this stage (`AS name`) and what it needs, not the last stage.
    #[arg(long)]
    pub target: Option<String>,
    /// Set a build argument `K=V` (or `K` to take it from here); repeatable.
    #[arg(long = "build-arg", value_name = "K=V")]
    pub build_args: Vec<String>,
    /// Do not use the build cache (results are still recorded in it).
    #[arg(long)]
    pub no_cache: bool,
    /// Progress output (default: plain).
    #[arg(long, value_enum, default_value = "plain")]
    pub progress: Progress,
    /// The build context directory.
    pub context: PathBuf,
}

#[derive(serde::Serialize)]
struct BuildJson {
    id: String,
    tags: Vec<String>,
    steps: usize,
    cached: usize,
}

/// Runs `build`.
///
/// # Errors
/// Bad names or arguments (before any work), parse errors, failing steps.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let tags = a
        .tags
        .iter()
        .map(|t| {
            let r = ImageRef::parse(t)
                .with_context(|| format!("-t {t}: not a valid image name"))?
                .with_default_tag();
            if r.digest().is_some() {
                bail!("-t {t}: a tag cannot hold a digest; give NAME[:TAG]");
            }
            Ok(r)
        })
        .collect::<Result<Vec<_>>>()?;
    let build_args = parse_build_args(&a.build_args)?;
    // RUN steps run containers: rootless, the whole build runs in a user namespace.
    if !crate::is_root() && std::env::var_os(IN_USERNS_ENV).is_none() {
        return reexec_in_userns(&g.root);
    }
    let opts = Options {
        dockerfile: dockerfile_path(a.file.as_deref(), &a.context),
        context: a.context.clone(),
        target: a.target.clone(),
        build_args,
        no_cache: a.no_cache,
    };
    // Keep stdout for the result; the runtime's and the steps' output goes to stderr.
    let result_out = rustix::io::dup(std::io::stdout().as_fd()).context("duplicating stdout")?;
    rustix::stdio::dup2_stdout(std::io::stderr().as_fd())
        .context("sending build output to stderr")?;
    let store = g.store()?;
    // Holds base images, cache hits and new layers until the image is recorded and tagged.
    let _lease = store.lease("build")?;
    let outcome = crate::build::build(g, &store, &opts)?;
    let mut named = Vec::new();
    for r in &tags {
        let t = store.tag(&outcome.id, r)?;
        eprintln!("Successfully tagged {}", t.familiar());
        named.push(t.to_string());
    }
    let mut out = std::fs::File::from(result_out);
    if g.json() {
        let j = BuildJson {
            id: outcome.id.to_string(),
            tags: named,
            steps: outcome.steps,
            cached: outcome.cached,
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&j)?).context("writing the result")?;
    } else {
        writeln!(out, "{}", outcome.id).context("writing the result")?;
    }
    Ok(ExitCode::SUCCESS)
}
