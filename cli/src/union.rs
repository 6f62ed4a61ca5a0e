//! Glue between the store and the union filesystem: an image's layers become `IndexTree`s
//! (entries from the index, contents read from the store's objects, nothing extracted), and
//! mounts run in a background process that exits with the mount.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use layerstore::layer::LayerEntryRef;
use layerstore::{Digest, EntryKind, ImageConfig, ImageRecord, Store};
use unionfs::index::IndexMeta;
use unionfs::{IndexKind, IndexTree, LowerTree, MountOptions, UnionConfig};

/// Set in the environment of the background mount process: it prints [`READY_LINE`] on stdout
/// once the mount is live.
const READY_ENV: &str = "STRATA_MOUNT_READY_STDOUT";
/// What the background process prints when the mount is live.
const READY_LINE: &str = "ready";
/// How long `strata umount` waits for the mount process to exit.
const UMOUNT_WAIT: Duration = Duration::from_secs(10);

/// Converts one store entry into the union's kind and attributes.
fn index_kind(store: &Store, e: &LayerEntryRef<'_>) -> (IndexKind, IndexMeta) {
    let link = || e.link.unwrap_or_default().to_owned();
    let kind = match e.kind {
        EntryKind::File => IndexKind::File {
            size: e.size,
            content: e.object.map(|d| store.objects().path(&d)),
        },
        EntryKind::Dir => IndexKind::Dir,
        EntryKind::Symlink => IndexKind::Symlink { target: link() },
        EntryKind::HardLink => IndexKind::HardLink { target: link() },
        EntryKind::CharDev => IndexKind::CharDev {
            major: e.dev_major,
            minor: e.dev_minor,
        },
        EntryKind::BlockDev => IndexKind::BlockDev {
            major: e.dev_major,
            minor: e.dev_minor,
        },
        EntryKind::Fifo => IndexKind::Fifo,
        EntryKind::Whiteout => IndexKind::Whiteout,
        EntryKind::Opaque => IndexKind::Opaque,
    };
    let meta = IndexMeta {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime: e.mtime,
        mtime_nsec: e.mtime_nsec,
        xattrs: e
            .xattrs
            .iter()
            .map(|(n, v)| (n.clone().into_bytes(), v.clone()))
            .collect(),
    };
    (kind, meta)
}

/// The tree of one stored layer, built straight from the index rows.
fn layer_tree(store: &Store, diff_id: &Digest) -> Result<IndexTree> {
    let mut b = IndexTree::builder(0);
    store.for_each_layer_entry(diff_id, |e| {
        let (kind, meta) = index_kind(store, e);
        b.push(e.path, kind, meta)
            .with_context(|| format!("building the tree of layer {diff_id}"))
    })?;
    Ok(b.finish())
}

/// The image's layers as lower trees, top first.
///
/// # Errors
/// A config that does not parse, a layer missing from the index.
pub fn image_lowers(store: &Store, image: &ImageRecord) -> Result<Vec<Arc<dyn LowerTree>>> {
    let cfg = ImageConfig::parse(&image.config)?;
    let mut lowers: Vec<Arc<dyn LowerTree>> = Vec::with_capacity(cfg.rootfs.diff_ids.len());
    for d in cfg.rootfs.diff_ids.iter().rev() {
        lowers.push(Arc::new(layer_tree(store, d)?));
    }
    Ok(lowers)
}

/// Mount options for CLI mounts: long kernel caching of the immutable lowers; FUSE passthrough
/// as root (reads never reach the daemon), the writeback cache otherwise.
pub fn cli_mount_options(fs_name: &str) -> MountOptions {
    let root = crate::is_root();
    MountOptions {
        passthrough: root,
        writeback_cache: !root,
        fs_name: fs_name.to_owned(),
        ..MountOptions::default()
    }
}

/// Refuses mountpoints that would make the union read itself, and ones already mounted.
///
/// # Errors
/// The mountpoint is missing, not a directory, a mount point already, or inside `dirs`.
pub fn check_mountpoint(mnt: &Path, dirs: &[&Path]) -> Result<PathBuf> {
    let canon = mnt
        .canonicalize()
        .with_context(|| format!("mountpoint {}: create the directory first", mnt.display()))?;
    if !canon.is_dir() {
        bail!("mountpoint {} is not a directory", mnt.display());
    }
    for d in dirs {
        if let Ok(dc) = d.canonicalize()
            && (canon.starts_with(&dc) || dc.starts_with(&canon))
        {
            bail!(
                "mountpoint {} overlaps {}, a directory the mount reads or writes; choose a \
                 mountpoint outside it",
                canon.display(),
                dc.display()
            );
        }
    }
    if is_mountpoint(&canon)? {
        bail!(
            "{} is already a mount point; unmount it first ('strata umount {}')",
            canon.display(),
            canon.display()
        );
    }
    Ok(canon)
}

/// True when `p` (canonical) is a mount point, from /proc/self/mountinfo.
pub fn is_mountpoint(p: &Path) -> Result<bool> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let want = p.to_string_lossy();
    Ok(info
        .lines()
        .any(|l| l.split(' ').nth(4).map(unescape_mount_path).as_deref() == Some(&want)))
}

/// /proc/self/mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs the union in this process until it is unmounted (SIGTERM, SIGINT, `fusermount3 -u`).
/// Prints the ready line when started by [`spawn_background`].
///
/// # Errors
/// The mount failed.
pub fn serve_foreground(config: UnionConfig, mnt: &Path, state: Option<&RunState>) -> Result<()> {
    let notify = std::env::var_os(READY_ENV).is_some();
    let res = unionfs::mount(config, mnt, || {
        if let Some(s) = state {
            let _ = s.write();
        }
        if notify {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{READY_LINE}");
            let _ = out.flush();
        }
    });
    if let Some(s) = state {
        s.remove();
    }
    res.with_context(|| format!("mounting at {}", mnt.display()))
}

/// Re-runs this command line with `--foreground` in a background process, waits until the
/// mount is live (exit 0) or the process fails (its error is returned).
///
/// # Errors
/// The background process could not start or failed before the mount was live.
pub fn spawn_background(log_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let log = tempfile::Builder::new()
        .prefix("mount-")
        .suffix(".log")
        .tempfile_in(log_dir)
        .context("creating the mount log")?;
    let exe = std::env::current_exe().context("finding the strata binary")?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    args.push("--foreground".into());
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(exe)
            .args(&args)
            .env(READY_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().context("opening the mount log")?)
            // Its own process group: Ctrl-C in the terminal that ran `strata mount` must not
            // take the mount down.
            .process_group(0)
            .spawn()
            .context("starting the mount process")?
    };
    let stdout = child.stdout.take().context("mount process stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("waiting for the mount")?;
    if line.trim() == READY_LINE {
        // The log stays for the life of the mount only if something is written to it.
        let (_, path) = log.keep().context("keeping the mount log")?;
        if std::fs::metadata(&path)
            .map(|m| m.len() == 0)
            .unwrap_or(false)
        {
            let _ = std::fs::remove_file(&path);
        }
        return Ok(());
    }
    let status = child.wait().context("waiting for the mount process")?;
    let text = std::fs::read_to_string(log.path()).unwrap_or_default();
    let msg = text
        .trim()
        .strip_prefix("error: ")
        .unwrap_or(text.trim())
        .to_owned();
    if msg.is_empty() {
        bail!("the mount process exited with {status} before the mount was live");
    }
    bail!("{msg}")
}

/// What a live mount records under `<root>/run/mounts/`, so `umount` can wait for it and
/// `container rm` can refuse a mounted container.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    /// Process serving the mount.
    pub pid: u32,
    /// Canonical mountpoint.
    pub mountpoint: PathBuf,
    /// The container mounted, if any.
    pub container: Option<String>,
    /// The image mounted.
    pub image: String,
    #[serde(skip)]
    file: PathBuf,
}

/// Directory of run-state files.
pub fn run_dir(root: &Path) -> PathBuf {
    root.join(layerstore::RUN_DIR).join("mounts")
}

fn state_file(root: &Path, mountpoint: &Path) -> PathBuf {
    let key = layerstore::Digest::of(mountpoint.as_os_str().as_encoded_bytes()).short();
    run_dir(root).join(format!("{key}.json"))
}

impl RunState {
    /// A state for this process.
    pub fn new(
        root: &Path,
        mountpoint: &Path,
        image: String,
        container: Option<String>,
    ) -> RunState {
        RunState {
            pid: std::process::id(),
            mountpoint: mountpoint.to_owned(),
            container,
            image,
            file: state_file(root, mountpoint),
        }
    }

    /// Records the mount now (for mounts made in process).
    ///
    /// # Errors
    /// I/O.
    pub fn write_now(&self) -> Result<()> {
        self.write()
    }

    /// Forgets the record.
    pub fn remove_now(&self) {
        self.remove();
    }

    fn write(&self) -> Result<()> {
        if let Some(d) = self.file.parent() {
            std::fs::create_dir_all(d)?;
        }
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self)?)?;
        std::fs::rename(&tmp, &self.file)?;
        Ok(())
    }

    fn remove(&self) {
        let _ = std::fs::remove_file(&self.file);
    }

    /// Live mounts recorded in the store (stale records of dead processes are dropped).
    pub fn list(root: &Path) -> Vec<RunState> {
        let Ok(rd) = std::fs::read_dir(run_dir(root)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            let Ok(mut s) = serde_json::from_slice::<RunState>(&bytes) else {
                continue;
            };
            s.file = p.clone();
            if Path::new(&format!("/proc/{}", s.pid)).exists()
                && is_mountpoint(&s.mountpoint).unwrap_or(false)
            {
                out.push(s);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
        out
    }
}

/// Unmounts a strata mount: `fusermount3 -u` (plain `umount` as root when that is missing),
/// then waits for the serving process to exit.
///
/// # Errors
/// Not a mount point, or the unmount was refused (busy).
pub fn unmount(root: &Path, mnt: &Path) -> Result<()> {
    let canon = mnt
        .canonicalize()
        .with_context(|| format!("{}", mnt.display()))?;
    if !is_mountpoint(&canon)? {
        bail!("{} is not mounted", canon.display());
    }
    let owner = RunState::list(root)
        .into_iter()
        .find(|s| s.mountpoint == canon);
    let refused = match Command::new("fusermount3").arg("-u").arg(&canon).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Some(format!("running fusermount3 (apt-get install fuse3): {e}")),
    };
    if let Some(err) = refused {
        // As root a plain umount also works (and is what is left without fusermount3).
        let umounted = crate::is_root()
            && Command::new("umount")
                .arg(&canon)
                .status()
                .is_ok_and(|s| s.success());
        if !umounted {
            bail!("unmounting {}: {err}", canon.display());
        }
    }
    if let Some(s) = owner {
        let deadline = Instant::now() + UMOUNT_WAIT;
        while Path::new(&format!("/proc/{}", s.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}
