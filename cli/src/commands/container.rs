//! `strata container create|mount|ls|rm`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use unionfs::{MountOptions, UnionConfig, UpperDirs};

use crate::Globals;
use crate::output::{print_json, print_table, time_ago};
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
    /// Unmount a mounted container first.
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
    let store = layerstore::Store::open_reader(&g.root)
        .with_context(|| format!("opening the store at {}", g.root.display()))?;
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
    drop(store);
    let state = RunState::new(&g.root, &mnt, img.id.to_string(), Some(c.id.clone()));
    serve_foreground(
        UnionConfig {
            lowers,
            upper,
            options,
        },
        &mnt,
        Some(&state),
    )?;
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
            if let Some(s) = RunState::list(&g.root)
                .into_iter()
                .find(|s| s.container.as_deref() == Some(&c.id))
            {
                if !a.force {
                    bail!(
                        "container {} is mounted at {}; unmount it first or use --force",
                        c.name,
                        s.mountpoint.display()
                    );
                }
                crate::union::unmount(&g.root, &s.mountpoint)?;
            }
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
