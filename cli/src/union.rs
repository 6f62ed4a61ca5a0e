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
use layerstore::{Digest, EntryKind, ImageConfig, ImageRecord, Lease, Objects, Store};
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
fn index_kind(objects: &Objects, e: &LayerEntryRef<'_>) -> (IndexKind, IndexMeta) {
    let link = || e.link.unwrap_or_default().to_owned();
    let kind = match e.kind {
        EntryKind::File => IndexKind::File {
            size: e.size,
            content: e.object.map(|d| objects.path(&d)),
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

/// Entries per batch handed from the thread reading the index to the one building the trees.
const BATCH: usize = 1024;
/// Batches queued before the reading thread waits for the builder.
const QUEUE: usize = 8;

/// One entry as the reading thread hands it over: a [`LayerEntryRef`] whose strings live in
/// the batch's `text`.
struct Item {
    /// End of the path in `text` (it starts where the previous item's strings end).
    path_end: usize,
    /// End of the link target in `text` (it starts at `path_end`), when there is one.
    link_end: Option<usize>,
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    size: u64,
    dev_major: u32,
    dev_minor: u32,
    object: Option<Digest>,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// What the reading thread hands to the building one.
enum Feed {
    /// The next layer begins (its position in the list, its DiffID, its entry count).
    Layer(usize, Digest, usize),
    /// Entries of the current layer.
    Batch { text: String, items: Vec<Item> },
}

/// Reads the entries of `layers` from the index and sends them to the builder in batches.
/// Stops early, without an error, when the builder has gone (it failed and says why).
///
/// # Errors
/// The position of the layer whose entries could not be read, and why.
fn read_layers(
    store: &Store,
    layers: &[Digest],
    tx: &std::sync::mpsc::SyncSender<Feed>,
) -> std::result::Result<(), (usize, anyhow::Error)> {
    /// Why the walk of one layer stopped.
    enum Stop {
        Store(layerstore::Error),
        BuilderGone,
    }
    impl From<layerstore::Error> for Stop {
        fn from(e: layerstore::Error) -> Self {
            Stop::Store(e)
        }
    }
    let new_batch = || (String::with_capacity(BATCH * 64), Vec::with_capacity(BATCH));
    for (i, d) in layers.iter().enumerate() {
        let count = store
            .layer_entry_count(d)
            .map_err(|e| (i, anyhow::Error::from(e)))?;
        if tx
            .send(Feed::Layer(i, *d, usize::try_from(count).unwrap_or(0)))
            .is_err()
        {
            return Ok(());
        }
        let (mut text, mut items) = new_batch();
        let walk = store.for_each_layer_entry(d, |e| {
            text.push_str(e.path);
            let path_end = text.len();
            let link_end = e.link.map(|l| {
                text.push_str(l);
                text.len()
            });
            items.push(Item {
                path_end,
                link_end,
                kind: e.kind,
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: e.mtime,
                mtime_nsec: e.mtime_nsec,
                size: e.size,
                dev_major: e.dev_major,
                dev_minor: e.dev_minor,
                object: e.object,
                xattrs: e.xattrs.to_vec(),
            });
            if items.len() == BATCH {
                let (t, it) = new_batch();
                let text = std::mem::replace(&mut text, t);
                let items = std::mem::replace(&mut items, it);
                tx.send(Feed::Batch { text, items })
                    .map_err(|_| Stop::BuilderGone)?;
            }
            Ok::<(), Stop>(())
        });
        match walk {
            Ok(()) => {}
            Err(Stop::BuilderGone) => return Ok(()),
            Err(Stop::Store(e)) => return Err((i, e.into())),
        }
        if !items.is_empty() && tx.send(Feed::Batch { text, items }).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Builds one tree per layer from what [`read_layers`] sends.
///
/// # Errors
/// The position of the layer whose tree could not be built, and why.
fn build_trees(
    objects: &Objects,
    rx: std::sync::mpsc::Receiver<Feed>,
) -> std::result::Result<Vec<IndexTree>, (usize, anyhow::Error)> {
    let mut trees = Vec::new();
    let mut cur: Option<(usize, Digest, unionfs::index::IndexTreeBuilder)> = None;
    for feed in rx {
        match feed {
            Feed::Layer(i, d, count) => {
                trees.extend(cur.take().map(|(_, _, b)| b.finish()));
                cur = Some((i, d, IndexTree::builder(count)));
            }
            Feed::Batch { text, items } => {
                let Some((i, d, b)) = cur.as_mut() else {
                    continue;
                };
                let mut start = 0;
                for it in &items {
                    let e = LayerEntryRef {
                        path: &text[start..it.path_end],
                        kind: it.kind,
                        mode: it.mode,
                        uid: it.uid,
                        gid: it.gid,
                        mtime: it.mtime,
                        mtime_nsec: it.mtime_nsec,
                        size: it.size,
                        link: it.link_end.map(|end| &text[it.path_end..end]),
                        dev_major: it.dev_major,
                        dev_minor: it.dev_minor,
                        object: it.object,
                        xattrs: &it.xattrs,
                    };
                    start = it.link_end.unwrap_or(it.path_end);
                    let (kind, meta) = index_kind(objects, &e);
                    b.push(e.path, kind, meta).map_err(|err| {
                        (
                            *i,
                            anyhow::Error::from(err)
                                .context(format!("building the tree of layer {d}")),
                        )
                    })?;
                }
            }
        }
    }
    trees.extend(cur.map(|(_, _, b)| b.finish()));
    Ok(trees)
}

/// The image's layers as lower trees, top first. One thread reads the index while another
/// builds the trees.
///
/// # Errors
/// A config that does not parse, a layer missing from the index, a layer whose entries do not
/// make a tree (the first such layer, top first, as if the layers were read one by one).
pub fn image_lowers(store: &Store, image: &ImageRecord) -> Result<Vec<Arc<dyn LowerTree>>> {
    let cfg = ImageConfig::parse(&image.config)?;
    let layers: Vec<Digest> = cfg.rootfs.diff_ids.iter().rev().copied().collect();
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let (read, built) = std::thread::scope(|s| {
        let builder = std::thread::Builder::new()
            .name("strata-tree".into())
            .spawn_scoped(s, move || build_trees(store.objects(), rx))
            .context("starting the tree builder thread")?;
        let read = read_layers(store, &layers, &tx);
        drop(tx);
        let built = builder
            .join()
            .map_err(|_| anyhow::anyhow!("the tree builder thread panicked"))?;
        Ok::<_, anyhow::Error>((read, built))
    })?;
    // The first failing layer decides; for the same layer, reading it failed first.
    match (read, built) {
        (Err((ri, re)), Err((bi, _))) if ri <= bi => Err(re),
        (_, Err((_, be))) => Err(be),
        (Err((_, re)), Ok(_)) => Err(re),
        (Ok(()), Ok(trees)) => Ok(trees
            .into_iter()
            .map(|t| Arc::new(t) as Arc<dyn LowerTree>)
            .collect()),
    }
}

/// Holds an image's layers for the life of a mount: `rmi` may remove the image meanwhile, but
/// `gc` keeps every layer and object the mount reads until the lease is dropped or this
/// process ends. Take it before [`image_lowers`] reads the layers, and keep it (it derefs to
/// the store it holds) until the mount is gone.
///
/// # Errors
/// The image was removed since it was resolved, index errors.
pub fn lease_image<S: std::ops::Deref<Target = Store>>(
    store: S,
    image: &ImageRecord,
) -> Result<Lease<S>> {
    let lease = Lease::new(store, "mount").context("taking a lease on the image")?;
    if !lease.add_image(&image.id)? {
        bail!("image {} was removed meanwhile", image.id);
    }
    Ok(lease)
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
    layerstore::privacy::create_private_dir_all(log_dir)?;
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
            layerstore::privacy::create_private_dir_all(d)?;
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
