//! strata's command line: the `Cli` definition and `run`, so tests can call it in process.
//!
//! Each subcommand is a module in `commands/` with an `Args` struct and a `run` function; they
//! parse, call `layerstore`/`unionfs`, and print. JSON output goes through `output.rs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

pub mod build;
pub mod change;
pub mod commands;
pub mod net;
pub mod output;
pub mod overlay;
pub mod progress;
pub mod registry;
pub mod runtime;
pub mod seccomp;
pub mod union;

/// strata: container images without a daemon and without root.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, propagate_version = true)]
pub struct Cli {
    /// Store root. Default: $STRATA_ROOT, else ~/.local/share/strata (/var/lib/strata as root).
    #[arg(long, global = true, env = "STRATA_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Output format: human-readable text or stable JSON (schema in cli/src/output.rs).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Print less: no progress bars, IDs only where a command supports it.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Print more about what is done (to stderr). Give it before the subcommand
    /// (`strata -v run …`): after it, `-v` is `run`'s volume flag, as in Docker.
    #[arg(short, long)]
    pub verbose: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people.
    Text,
    /// JSON for programs.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Import a rootfs tarball as a one-layer image (like `docker image import`).
    Import(commands::import::Args),
    /// List images.
    Images(commands::images::Args),
    /// Show the history of an image.
    History(commands::history::Args),
    /// Show an image's metadata and config as JSON.
    Inspect(commands::inspect::Args),
    /// Give an image a new name.
    Tag(commands::tag::Args),
    /// Remove images (untag; delete when no tag is left).
    Rmi(commands::rmi::Args),
    /// Work with layers.
    #[command(subcommand)]
    Layer(commands::layer::Command),
    /// Remove layers and objects that no image uses.
    Gc(commands::gc::Args),
    /// Show disk usage: unique and shared bytes per image.
    Df(commands::df::Args),
    /// Verify every object, layer and image in the store.
    Fsck(commands::fsck::Args),
    /// Mount an image read-only (or plain directories with --lower).
    Mount(commands::mount::Args),
    /// Unmount a strata mount.
    Umount(commands::mount::UmountArgs),
    /// Work with containers (writable layers over images).
    #[command(subcommand)]
    Container(commands::container::Command),
    /// Save images to a tarball (Docker ≥ 25 format, also an OCI layout).
    Save(commands::save::Args),
    /// Load images from a tarball (Docker old and new formats, OCI layouts).
    Load(commands::load::Args),
    /// Export a container's flattened rootfs as a tar (like `docker export`).
    Export(commands::export::Args),
    /// List the changes in a container's writable layer (A/C/D, like `docker diff`).
    Diff(commands::diff::Args),
    /// Commit a container's changes as a new layer and image.
    Commit(commands::commit::Args),
    /// Run a command in a new container (rootless: in a user namespace), through runc or crun.
    Run(commands::run::Args),
    /// Run a container's command again.
    Start(commands::run::StartArgs),
    /// List containers with their status.
    Ps(commands::run::PsArgs),
    /// Remove containers (same as `container rm`).
    Rm(commands::container::RmArgs),
    /// Stop running containers (same as `container stop`).
    Stop(commands::container::StopArgs),
    /// Send a signal to running containers (same as `container kill`).
    Kill(commands::container::KillArgs),
    /// Log in to a registry.
    Login(commands::login::Args),
    /// Log out from a registry.
    Logout(commands::logout::Args),
    /// Push an image to a registry.
    Push(commands::push::Args),
    /// Pull an image from a registry.
    Pull(commands::pull::Args),
    /// Build an image from a Dockerfile.
    Build(commands::build::Args),
    /// fuse-overlayfs's command line over strata's union (same as the `strata-overlayfs` binary).
    OverlayMount(OverlayMountArgs),
}

/// `strata overlay-mount`: the arguments fuse-overlayfs takes.
#[derive(Debug, clap::Args)]
pub struct OverlayMountArgs {
    /// `[-f] [-d] -o lowerdir=…,upperdir=…,workdir=… MOUNTPOINT`, as fuse-overlayfs.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<std::ffi::OsString>,
}

/// Global settings every command gets.
#[derive(Debug, Clone)]
pub struct Globals {
    /// Store root.
    pub root: PathBuf,
    /// Output format.
    pub format: Format,
    /// `-q`.
    pub quiet: bool,
    /// `-v`.
    pub verbose: bool,
}

impl Globals {
    /// Opens the store.
    ///
    /// # Errors
    /// The store cannot be opened or created.
    pub fn store(&self) -> Result<layerstore::Store> {
        let store = layerstore::Store::open(&self.root)
            .with_context(|| format!("opening the store at {}", self.root.display()))?;
        announce(&store);
        Ok(store)
    }

    /// Opens the store for reading, as a mount does ([`layerstore::Store::open_reader`]).
    ///
    /// # Errors
    /// The store cannot be opened or created.
    pub fn store_reader(&self) -> Result<layerstore::Store> {
        let store = layerstore::Store::open_reader(&self.root)
            .with_context(|| format!("opening the store at {}", self.root.display()))?;
        announce(&store);
        Ok(store)
    }

    /// True when output is JSON.
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }
}

/// Prints what opening the store changed about its privacy (once: the store is private after).
fn announce(store: &layerstore::Store) {
    if let Some(n) = store.notice() {
        eprintln!("strata: {n}");
    }
}

/// The default store root: `/var/lib/strata` for root, else `$XDG_DATA_HOME/strata` or
/// `~/.local/share/strata`.
pub fn default_root() -> Result<PathBuf> {
    // SAFETY-free: geteuid via rustix would add a dependency; libc's is safe to call.
    if is_root() {
        return Ok(PathBuf::from("/var/lib/strata"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("strata"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("HOME is not set; give the store with --root DIR or STRATA_ROOT")?;
    Ok(PathBuf::from(home).join(".local/share/strata"))
}

/// Parses the name a new image gets (`import`, `commit`): tag `latest` when none is given, and
/// no digest (a tag cannot hold one). Checked before any work is done.
///
/// # Errors
/// An invalid reference, or one with a digest.
pub fn target_name(name: Option<&str>) -> Result<Option<layerstore::ImageRef>> {
    let Some(name) = name else { return Ok(None) };
    let r = layerstore::ImageRef::parse(name)
        .map(layerstore::ImageRef::with_default_tag)
        .context("the image name")?;
    if r.digest().is_some() {
        anyhow::bail!("the image name {r} has a digest; give name[:tag]");
    }
    Ok(Some(r))
}

/// True when running as root.
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Runs a parsed command line.
///
/// # Errors
/// Whatever the command reports; `main` prints the chain.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let root = match cli.root {
        Some(r) => r,
        None => default_root()?,
    };
    let g = Globals {
        root,
        format: cli.format,
        quiet: cli.quiet,
        verbose: cli.verbose,
    };
    match cli.command {
        Command::Import(a) => commands::import::run(&g, a),
        Command::Images(a) => commands::images::run(&g, a),
        Command::History(a) => commands::history::run(&g, a),
        Command::Inspect(a) => commands::inspect::run(&g, a),
        Command::Tag(a) => commands::tag::run(&g, a),
        Command::Rmi(a) => commands::rmi::run(&g, a),
        Command::Layer(c) => commands::layer::run(&g, c),
        Command::Gc(a) => commands::gc::run(&g, a),
        Command::Df(a) => commands::df::run(&g, a),
        Command::Fsck(a) => commands::fsck::run(&g, a),
        Command::Mount(a) => commands::mount::run(&g, a),
        Command::Umount(a) => commands::mount::run_umount(&g, a),
        Command::Container(c) => commands::container::run(&g, c),
        Command::Save(a) => commands::save::run(&g, a),
        Command::Load(a) => commands::load::run(&g, a),
        Command::Export(a) => commands::export::run(&g, a),
        Command::Diff(a) => commands::diff::run(&g, a),
        Command::Commit(a) => commands::commit::run(&g, a),
        Command::Run(a) => commands::run::run(&g, a),
        Command::Start(a) => commands::run::run_start(&g, a),
        Command::Ps(a) => commands::run::run_ps(&g, a),
        Command::Rm(a) => commands::container::run(&g, commands::container::Command::Rm(a)),
        Command::Stop(a) => commands::container::stop(&g, a),
        Command::Kill(a) => commands::container::kill(&g, a),
        Command::Login(a) => commands::login::run(&g, a),
        Command::Logout(a) => commands::logout::run(&g, a),
        Command::Push(a) => commands::push::run(&g, a),
        Command::Pull(a) => commands::pull::run(&g, a),
        Command::Build(a) => commands::build::run(&g, a),
        Command::OverlayMount(a) => overlay::run(&a.args),
    }
}

/// True when the error chain ends in a broken pipe (`strata images | head`): exit quietly.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(e.downcast_ref::<layerstore::Error>(), Some(layerstore::Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
