//! `strata container create|mount|ls|rm`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use unionfs::{MountOptions, UnionConfig, UpperDirs};

use layerstore::{ContainerRecord, Store};

use crate::Globals;
use crate::output::{print_json, print_table, time_ago};
use crate::runtime::RunSettings;
use crate::union::{
    RunState, check_mountpoint, cli_mount_options, image_lowers, serve_foreground, spawn_background,
};

/// Container subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a container: a record and an empty writable layer over an image.
    Create(CreateArgs),
    /// Mount a container's rootfs, writable (changes go to its upper layer).
    Mount(MountArgs),
    /// List containers.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Remove containers and their writable layers.
    Rm(RmArgs),
    /// Stop running containers: SIGTERM, then SIGKILL after a grace period.
    Stop(StopArgs),
    /// Send a signal to running containers' processes.
    Kill(KillArgs),
}

/// `stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// Containers: names or IDs.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `kill`.
#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Signal to send (name such as TERM or SIGHUP, or number).
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    /// Containers: names or IDs.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `container create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Name (default: a generated adjective_noun).
    #[arg(long)]
    pub name: Option<String>,
    /// The image: `name[:tag]`, ID or ID prefix.
    pub image: String,
}

/// `container mount`.
#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Container name or ID.
    pub container: String,
    /// Mountpoint.
    pub dir: PathBuf,
    /// Stay in the foreground until unmounted.
    #[arg(short, long)]
    pub foreground: bool,
    /// Zero kernel cache TTLs (for tests).
    #[arg(long, hide = true)]
    pub uncached: bool,
}

/// `container ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Only show container IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `container rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Containers: names or IDs.
    #[arg(required = true)]
    pub containers: Vec<String>,
    /// Stop (SIGKILL) a running container, or unmount a mounted one, first.
    #[arg(short, long)]
    pub force: bool,
}

/// Runs a container subcommand.
///
/// # Errors
/// Unknown container or image, mount failures.
pub fn run(g: &Globals, c: Command) -> Result<ExitCode> {
    match c {
        Command::Create(a) => create(g, a),
        Command::Mount(a) => mount(g, a),
        Command::Ls(a) => ls(g, a),
        Command::Rm(a) => rm(g, a),
        Command::Stop(a) => stop(g, a),
        Command::Kill(a) => kill(g, a),
    }
}

fn create(g: &Globals, a: CreateArgs) -> Result<ExitCode> {
    let store = g.store()?;
    let img = store.resolve_image(&a.image)?;
    let c = store.create_container(a.name.as_deref(), &img.id)?;
    if g.json() {
        print_json(&c)?;
    } else {
        println!("{}", c.id);
    }
    Ok(ExitCode::SUCCESS)
}

fn mount(g: &Globals, a: MountArgs) -> Result<ExitCode> {
    // As `strata mount`: the background process checks the container and the mountpoint and
    // its errors come back through `spawn_background`, so the store is opened once, there, and
    // only read (a store that does not exist yet is opened here: its errors stay ours).
    if !a.foreground && g.root.join(layerstore::DB_FILE).is_file() {
        return spawn_background(&crate::union::run_dir(&g.root)).map(|()| ExitCode::SUCCESS);
    }
    // Through the globals, so a store an older strata left open is tightened with its notice.
    let store = g.store_reader()?;
    let c = store.resolve_container(&a.container)?;
    if let Some(s) = RunState::list(&g.root)
        .into_iter()
        .find(|s| s.container.as_deref() == Some(&c.id))
    {
        bail!(
            "container {} is already mounted at {}; unmount it first ('strata umount {}')",
            c.name,
            s.mountpoint.display(),
            s.mountpoint.display()
        );
    }
    let mnt = check_mountpoint(&a.dir, &[store.root()])?;
    let img = store.resolve_image(&c.image.to_string())?;
    let store = crate::union::lease_image(Box::new(store), &img)?;
    let lowers = image_lowers(&store, &img)?;
    let options = if a.uncached {
        MountOptions {
            fs_name: "strata".into(),
            ..MountOptions::uncached()
        }
    } else {
        cli_mount_options("strata")
    };
    let upper = Some(UpperDirs {
        upper: c.upper(),
        work: c.work(),
    });
    let state = RunState::new(&g.root, &mnt, img.id.to_string(), Some(c.id.clone()));
    store.set_container_owner(&c)?;
    let served = serve_foreground(
        UnionConfig {
            lowers,
            upper,
            options,
        },
        &mnt,
        Some(&state),
    );
    store.clear_container_owner(&c);
    drop(store);
    served?;
    Ok(ExitCode::SUCCESS)
}

#[derive(serde::Serialize)]
struct ContainerJson {
    id: String,
    name: String,
    image: String,
    image_tags: Vec<String>,
    created: String,
    mountpoint: Option<PathBuf>,
}

fn ls(g: &Globals, a: LsArgs) -> Result<ExitCode> {
    let store = g.store()?;
    let mounts = RunState::list(&g.root);
    let mut out = Vec::new();
    for c in store.containers()? {
        let tags = store
            .resolve_image(&c.image.to_string())
            .map(|i| i.tags.iter().map(|t| t.familiar()).collect())
            .unwrap_or_default();
        let mountpoint = mounts
            .iter()
            .find(|s| s.container.as_deref() == Some(&c.id))
            .map(|s| s.mountpoint.clone());
        out.push(ContainerJson {
            id: c.id.clone(),
            name: c.name.clone(),
            image: c.image.to_string(),
            image_tags: tags,
            created: c.created.clone(),
            mountpoint,
        });
    }
    if g.json() {
        return print_json(&out).map(|()| ExitCode::SUCCESS);
    }
    if a.quiet || g.quiet {
        for c in &out {
            println!("{}", &c.id[..12]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|c| {
            vec![
                c.id[..12].to_owned(),
                c.image_tags
                    .first()
                    .cloned()
                    .unwrap_or_else(|| c.image[7..19].to_owned()),
                time_ago(Some(&c.created)),
                c.mountpoint
                    .as_ref()
                    .map(|m| m.display().to_string())
                    .unwrap_or_default(),
                c.name.clone(),
            ]
        })
        .collect();
    print_table(
        &["CONTAINER ID", "IMAGE", "CREATED", "MOUNTED AT", "NAMES"],
        &rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

fn rm(g: &Globals, a: RmArgs) -> Result<ExitCode> {
    if let Some(code) = crate::runtime::enter_userns_for_container_files(&g.root)? {
        return Ok(code);
    }
    let store = g.store()?;
    let mut failed = false;
    for name in &a.containers {
        let r = (|| -> Result<()> {
            let c = store.resolve_container(name)?;
            if is_live(&g.root, &store, &c) {
                if !a.force {
                    let runtime = runtime_of(&store, &c).ok();
                    if let Some(s) = RunState::list(&g.root)
                        .into_iter()
                        .find(|s| s.container.as_deref() == Some(&c.id))
                        && runtime.is_none_or(|r| runtime_status(&r, &g.root, &c).is_none())
                    {
                        bail!(
                            "container {} is mounted at {}; unmount it first or use --force",
                            c.name,
                            s.mountpoint.display()
                        );
                    }
                    bail!(
                        "container {} is running; stop it first ('strata stop {}') or use \
                         --force",
                        c.name,
                        c.name
                    );
                }
                // Docker's rm -f: SIGKILL, no grace period.
                stop_one(&g.root, &store, &c, Duration::ZERO)?;
                if let Some(s) = RunState::list(&g.root)
                    .into_iter()
                    .find(|s| s.container.as_deref() == Some(&c.id))
                {
                    crate::union::unmount(&g.root, &s.mountpoint)?;
                }
            }
            // Everything that could fail (a stale mount, the runtime's state) goes first: a
            // failure leaves the record and the writable layer in place.
            reap_dead(&g.root, &store, &c)?;
            store.remove_container(&c)?;
            if !g.json() {
                println!("{}", c.name);
            }
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("error: {e:#}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The runtime's state directory (`--root`) that `run` uses.
pub fn runtime_state_dir(root: &Path) -> PathBuf {
    root.join(layerstore::RUN_DIR).join("runtime")
}

/// The container's id as the runtime knows it.
fn runtime_id(c: &ContainerRecord) -> &str {
    &c.id[..32]
}

fn settings_of(store: &Store, c: &ContainerRecord) -> Option<RunSettings> {
    store
        .container_config(c)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The runtime the container was run with (the default one when it names none).
fn runtime_of(store: &Store, c: &ContainerRecord) -> Result<PathBuf> {
    let s = settings_of(store, c);
    crate::runtime::find_runtime(s.as_ref().and_then(|s| s.runtime.as_deref()))
}

/// Runs `runtime --root STATE args…`; the error holds its stderr.
fn runtime_cmd(runtime: &Path, root: &Path, args: &[&str]) -> Result<String> {
    let o = std::process::Command::new(runtime)
        .arg("--root")
        .arg(runtime_state_dir(root))
        .args(args)
        .output()
        .with_context(|| format!("running {}", runtime.display()))?;
    if !o.status.success() {
        bail!(
            "{} {}: {}",
            runtime.display(),
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The runtime's status of the container (`running`, `stopped`, …); `None` when it has no
/// state for it.
fn runtime_status(runtime: &Path, root: &Path, c: &ContainerRecord) -> Option<String> {
    if !runtime_state_dir(root).join(runtime_id(c)).exists() {
        return None;
    }
    let out = runtime_cmd(runtime, root, &["state", runtime_id(c)]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.get("status")?.as_str().map(str::to_owned)
}

/// True while the process that mounted or ran the container lives (its owner record, else
/// its live-mount record).
pub fn is_live(root: &Path, store: &Store, c: &ContainerRecord) -> bool {
    match store.container_owner(c) {
        Some(h) => h.alive(&layerstore::Holder::current()),
        None => RunState::list(root)
            .iter()
            .any(|s| s.container.as_deref() == Some(&c.id)),
    }
}

/// Where the container's rootfs is mounted by `run` (the canonical path, as mountinfo has it).
fn rootfs_mountpoint(c: &ContainerRecord) -> Option<PathBuf> {
    c.dir.canonicalize().ok().map(|d| {
        d.join(
            crate::commands::run::rootfs_dir(c)
                .file_name()
                .unwrap_or_default(),
        )
    })
}

/// Detaches a mount whose server is gone: `fusermount3 -uz`, else (as root) `umount -l`.
///
/// # Errors
/// Both refused.
pub fn lazy_unmount(mnt: &Path) -> Result<()> {
    let fuser = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(mnt)
        .output();
    if matches!(&fuser, Ok(o) if o.status.success()) {
        return Ok(());
    }
    if crate::is_root()
        && std::process::Command::new("umount")
            .arg("-l")
            .arg(mnt)
            .status()
            .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    let why = match fuser {
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        Err(e) => format!("running fusermount3: {e}"),
    };
    bail!("unmounting the stale mount {}: {why}", mnt.display())
}

/// Cleans up after a container whose owner died (kill -9 of `strata run`): kills and deletes
/// what the runtime still runs, detaches the dead mount, forgets the owner and records the
/// run as killed (exit 137). `Ok(false)` when the owner lives or nothing was left.
///
/// # Errors
/// The runtime or the unmount failed; what was not cleaned stays in place.
pub fn reap_dead(root: &Path, store: &Store, c: &ContainerRecord) -> Result<bool> {
    if is_live(root, store, c) {
        return Ok(false);
    }
    let mut reaped = false;
    if runtime_state_dir(root).join(runtime_id(c)).exists() {
        let runtime = runtime_of(store, c)?;
        let _ = runtime_cmd(&runtime, root, &["kill", runtime_id(c), "KILL"]);
        if let Err(e) = runtime_cmd(&runtime, root, &["delete", "--force", runtime_id(c)]) {
            // `runc run` (left running by the dead owner) may have deleted it meanwhile.
            let deadline = Instant::now() + Duration::from_secs(5);
            while runtime_state_dir(root).join(runtime_id(c)).exists() {
                if Instant::now() > deadline {
                    return Err(e.context(format!("removing the runtime state of {}", c.name)));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        reaped = true;
    }
    if let Some(mnt) = rootfs_mountpoint(c)
        && crate::union::is_mountpoint(&mnt)?
    {
        lazy_unmount(&mnt)?;
        reaped = true;
    }
    if store.container_owner(c).is_some() {
        store.clear_container_owner(c);
        reaped = true;
    }
    if reaped && let Some(mut s) = settings_of(store, c) {
        s.last_exit = Some(137);
        store.set_container_config(c, &serde_json::to_vec(&s)?)?;
    }
    Ok(reaped)
}

/// Waits until the runtime no longer runs the container; false at the deadline.
fn wait_stopped(runtime: &Path, root: &Path, c: &ContainerRecord, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        match runtime_status(runtime, root, c).as_deref() {
            None | Some("stopped") => return true,
            _ if Instant::now() >= deadline => return false,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Stops a running container as docker does: SIGTERM, `grace` to exit, SIGKILL; then waits
/// for its owner to unmount (a zero grace sends SIGKILL at once).
fn stop_one(root: &Path, store: &Store, c: &ContainerRecord, grace: Duration) -> Result<()> {
    let runtime = runtime_of(store, c)?;
    if runtime_status(&runtime, root, c).is_some() {
        let stopped = !grace.is_zero()
            && runtime_cmd(&runtime, root, &["kill", runtime_id(c), "TERM"]).is_ok()
            && wait_stopped(&runtime, root, c, grace);
        if !stopped {
            let _ = runtime_cmd(&runtime, root, &["kill", runtime_id(c), "KILL"]);
            if !wait_stopped(&runtime, root, c, Duration::from_secs(10)) {
                bail!("container {} did not stop after SIGKILL", c.name);
            }
        }
        // The owner (`strata run`) unmounts and records the exit code.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.container_owner(c).is_some()
            && is_live(root, store, c)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn for_each(
    g: &Globals,
    names: &[String],
    f: impl Fn(&Store, &ContainerRecord) -> Result<()>,
) -> Result<ExitCode> {
    if let Some(code) = crate::runtime::enter_userns_if_rootless(&g.root)? {
        return Ok(code);
    }
    let store = g.store()?;
    let mut failed = false;
    for name in names {
        let r = store
            .resolve_container(name)
            .map_err(anyhow::Error::from)
            .and_then(|c| f(&store, &c).map(|()| c));
        match r {
            Ok(c) => {
                if !g.json() {
                    println!("{}", c.name);
                }
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `strata stop [-t N] CONTAINER…`.
///
/// # Errors
/// The runtime cannot be run.
pub fn stop(g: &Globals, a: StopArgs) -> Result<ExitCode> {
    for_each(g, &a.containers, |store, c| {
        if is_live(&g.root, store, c) {
            stop_one(&g.root, store, c, Duration::from_secs(a.time))
        } else {
            reap_dead(&g.root, store, c).map(|_| ())
        }
    })
}

/// `strata kill [-s SIG] CONTAINER…`.
///
/// # Errors
/// The runtime cannot be run.
pub fn kill(g: &Globals, a: KillArgs) -> Result<ExitCode> {
    let sig = a.signal.trim_start_matches("SIG").to_ascii_uppercase();
    for_each(g, &a.containers, |store, c| {
        let runtime = runtime_of(store, c)?;
        if !is_live(&g.root, store, c)
            || runtime_status(&runtime, &g.root, c).as_deref() != Some("running")
        {
            reap_dead(&g.root, store, c)?;
            bail!("container {} is not running", c.name);
        }
        runtime_cmd(&runtime, &g.root, &["kill", runtime_id(c), &sig])?;
        Ok(())
    })
}
