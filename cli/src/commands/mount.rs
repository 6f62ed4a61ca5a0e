//! `strata mount` and `strata umount`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use unionfs::{DirTree, LowerTree, MountOptions, UnionConfig, UpperDirs};

use crate::Globals;
use crate::union::{
    RunState, check_mountpoint, cli_mount_options, image_lowers, lease_image, serve_foreground,
    spawn_background,
};

/// Mount an image's rootfs read-only at DIR (no container needed), or plain directories with
/// `--lower` (top first, as overlayfs's lowerdir), writable with `--upper` and `--work`.
/// Runs in the background and returns once the mount is live; `strata umount DIR` ends it.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// `IMAGE DIR`, or only `DIR` with `--lower`.
    #[arg(required = true, num_args = 1..=2, value_name = "IMAGE DIR")]
    pub args: Vec<String>,
    /// Lower directories, top first, separated by `:` (`.wh.` files and 0/0 char devices are
    /// whiteouts, as overlayfs and fuse-overlayfs write them).
    #[arg(long, value_name = "DIR[:DIR…]")]
    pub lower: Option<String>,
    /// Writable upper directory: changes go there (with `--work`). Without it the mount is
    /// read-only.
    #[arg(long, requires = "work")]
    pub upper: Option<PathBuf>,
    /// Work directory on the same filesystem as the upper (with `--upper`); emptied at mount.
    #[arg(long, requires = "upper")]
    pub work: Option<PathBuf>,
    /// Stay in the foreground until unmounted (SIGTERM, Ctrl-C or `strata umount`).
    #[arg(short, long)]
    pub foreground: bool,
    /// Zero kernel cache TTLs (for tests: every lookup reaches strata).
    #[arg(long, hide = true)]
    pub uncached: bool,
}

/// Unmount a strata mount.
#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    /// The mountpoint.
    pub dir: PathBuf,
}

/// Runs `mount`.
///
/// # Errors
/// Unknown image, bad directories, a mount that fails.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    let (image, mnt) = match (&a.lower, a.args.as_slice()) {
        (Some(_), [mnt]) => (None, PathBuf::from(mnt)),
        (None, [image, mnt]) => (Some(image.clone()), PathBuf::from(mnt)),
        (Some(_), _) => bail!("with --lower, give only the mountpoint"),
        (None, _) => bail!("give IMAGE and DIR (or --lower DIRS and DIR)"),
    };
    let mut options = if a.uncached {
        MountOptions {
            fs_name: "strata".into(),
            ..MountOptions::uncached()
        }
    } else {
        cli_mount_options("strata")
    };
    // The image's lease, held (with the store) until the mount ends.
    let mut lease = None;
    let (lowers, upper, label, mnt): (Vec<Arc<dyn LowerTree>>, _, String, _) = match image {
        Some(name) => {
            // The background process checks the image and the mountpoint itself and its errors
            // come back through `spawn_background`, so the store is opened once, there. (A store
            // that does not exist yet is opened here: its creation errors stay this process's.)
            let db = g.root.join(layerstore::DB_FILE);
            if !a.foreground && db.is_file() {
                return spawn_background(&crate::union::run_dir(&g.root))
                    .map(|()| ExitCode::SUCCESS);
            }
            let store = g.store_reader()?;
            let img = store.resolve_image(&name)?;
            let mut dirs = vec![store.root()];
            dirs.extend(a.upper.as_deref());
            dirs.extend(a.work.as_deref());
            let mnt = check_mountpoint(&mnt, &dirs)?;
            if !a.foreground {
                drop(store);
                return spawn_background(&crate::union::run_dir(&g.root))
                    .map(|()| ExitCode::SUCCESS);
            }
            let held = lease_image(Box::new(store), &img)?;
            let lowers = image_lowers(&held, &img)?;
            lease = Some(held);
            let upper = a
                .upper
                .clone()
                .zip(a.work.clone())
                .map(|(upper, work)| UpperDirs { upper, work });
            (lowers, upper, img.id.to_string(), mnt)
        }
        None => {
            let dirs: Vec<PathBuf> = a
                .lower
                .as_deref()
                .unwrap_or_default()
                .split(':')
                .map(PathBuf::from)
                .collect();
            let mut all: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
            all.extend(a.upper.as_deref());
            all.extend(a.work.as_deref());
            let mnt = check_mountpoint(&mnt, &all)?;
            if !a.foreground {
                return spawn_background(&std::env::temp_dir()).map(|()| ExitCode::SUCCESS);
            }
            let mut lowers: Vec<Arc<dyn LowerTree>> = Vec::new();
            for d in &dirs {
                lowers.push(Arc::new(
                    DirTree::open(d).with_context(|| format!("lower directory {}", d.display()))?,
                ));
            }
            let upper = a
                .upper
                .clone()
                .zip(a.work.clone())
                .map(|(upper, work)| UpperDirs { upper, work });
            (lowers, upper, a.lower.clone().unwrap_or_default(), mnt)
        }
    };
    options.fs_name = "strata".into();
    let state = a
        .lower
        .is_none()
        .then(|| RunState::new(&g.root, &mnt, label, None));
    serve_foreground(
        UnionConfig {
            lowers,
            upper,
            options,
        },
        &mnt,
        state.as_ref(),
    )?;
    if let Some(l) = lease {
        l.release()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `umount`.
///
/// # Errors
/// Not mounted, busy.
pub fn run_umount(g: &Globals, a: UmountArgs) -> Result<ExitCode> {
    crate::union::unmount(&g.root, &a.dir)?;
    Ok(ExitCode::SUCCESS)
}
