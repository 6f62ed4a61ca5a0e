//! Mounting: the API the CLI calls, in a foreground (blocking) and a background form.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config, MountOption, SessionACL};

use crate::error::{FsError, Result};
use crate::fs::{FsOptions, UnionFs};
use crate::fuse::FuseAdapter;
use crate::idmap::IdMap;
use crate::lower::LowerTree;
use crate::sys;

/// Device node every FUSE mount needs.
const DEV_FUSE: &str = "/dev/fuse";
/// TTL of entries served purely from lower layers: they never change while mounted.
const LOWER_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// TTL of entries that may change (the upper): short, since only strata changes them.
const UPPER_TTL: Duration = Duration::from_secs(1);

/// The writable side of a union.
#[derive(Clone, Debug)]
pub struct UpperDirs {
    /// Directory that receives changes (at their merged paths).
    pub upper: PathBuf,
    /// Scratch directory on the same filesystem, emptied at mount.
    pub work: PathBuf,
}

/// Mount-time knobs.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// How long the kernel may cache a name → inode of the upper (and merged dirs).
    pub entry_ttl: Duration,
    /// How long the kernel may cache attributes of the upper.
    pub attr_ttl: Duration,
    /// Entry and attribute TTL of entries served purely from the (immutable) lowers.
    pub lower_ttl: Duration,
    /// Threads that read the kernel's requests and answer the quick ones, and as many workers
    /// for requests that may block (data copies, disk I/O, fsync). More readers than cores:
    /// while one thread writes a reply (and the woken caller takes its CPU), another is already
    /// waiting for the next request (10k creates: 1 reader 3.8 s, 2: 2.4 s, 4: 2.2 s, here).
    pub n_threads: usize,
    /// Ask for FUSE passthrough for reads of lower files (needs CAP_SYS_ADMIN, kernel ≥ 6.9).
    pub passthrough: bool,
    /// Ask for the kernel writeback cache (not together with passthrough).
    pub writeback_cache: bool,
    /// Let other users use the mount (`allow_other`; needs root or `user_allow_other` in
    /// `/etc/fuse.conf`). Default: on for root (a container's processes may run as any uid;
    /// the kernel still checks permissions), off otherwise.
    pub allow_other: bool,
    /// fsync copied-up files before renaming them into place.
    pub fsync_copy_up: bool,
    /// Answer `fsync` without syncing (fuse-overlayfs's `fsync=0`, overlayfs's `volatile`).
    pub ignore_fsync: bool,
    /// Allow renaming directories that have lower content (`redirect_dir=off` clears it).
    pub redirect_dir: bool,
    /// Metadata-only copy-up of lower files (`metacopy=off` clears it: every copy-up copies
    /// the data, and no metacopy marker is written).
    pub metacopy: bool,
    /// The `fsname` shown in `/proc/mounts` (the mount's source).
    pub fs_name: String,
    /// The subtype: the mount's type shows as `fuse.SUBTYPE` in `/proc/mounts`, `df -T` and
    /// `findmnt` (`None`: plain `fuse`). ASCII letters, digits and `-_.+` only.
    pub subtype: Option<String>,
    /// uid/gid shifting between the ids on disk and the ids shown (fuse-overlayfs's
    /// `uidmapping=`, `gidmapping=`, `squash_*`); the default maps nothing.
    pub id_map: IdMap,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            entry_ttl: UPPER_TTL,
            attr_ttl: UPPER_TTL,
            lower_ttl: LOWER_TTL,
            n_threads: std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).max(4)),
            passthrough: false,
            writeback_cache: false,
            allow_other: rustix::process::geteuid().is_root(),
            fsync_copy_up: true,
            ignore_fsync: false,
            redirect_dir: true,
            metacopy: true,
            fs_name: "strata".into(),
            subtype: Some("strata".into()),
            id_map: IdMap::default(),
        }
    }
}

impl MountOptions {
    /// Zero TTLs, so the kernel cache cannot hide a bug (for tests).
    pub fn uncached() -> Self {
        MountOptions {
            entry_ttl: Duration::ZERO,
            attr_ttl: Duration::ZERO,
            lower_ttl: Duration::ZERO,
            fsync_copy_up: false,
            ..MountOptions::default()
        }
    }
}

/// Everything a union mount needs.
#[derive(Clone, Debug)]
pub struct UnionConfig {
    /// Lower trees, top first.
    pub lowers: Vec<Arc<dyn LowerTree>>,
    /// The writable side; `None` mounts read-only.
    pub upper: Option<UpperDirs>,
    /// Knobs.
    pub options: MountOptions,
}

/// A live background mount; unmounts when dropped.
#[derive(Debug)]
pub struct Session {
    inner: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
}

impl Session {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the FUSE threads.
    ///
    /// # Errors
    /// When the kernel refuses the unmount (busy) or the session thread failed.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    /// Waits until the mount goes away from outside (`fusermount3 -u`, `umount`), without
    /// unmounting.
    ///
    /// # Errors
    /// When the session thread failed.
    pub fn join(mut self) -> Result<()> {
        match self.inner.take() {
            Some(s) => s.join().map_err(|source| FsError::Mount {
                mountpoint: self.mountpoint.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    fn unmount_inner(&mut self) -> Result<()> {
        let Some(bg) = self.inner.take() else {
            return Ok(());
        };
        let mountpoint = self.mountpoint.clone();
        let err = |source| FsError::Mount {
            mountpoint: mountpoint.clone(),
            source,
        };
        // Dropping `bg` on failure leaves fuser's own (non-lazy) unmount attempt, then detaches
        // its thread; the caller decides about stronger means.
        unmount_path(&self.mountpoint).map_err(err)?;
        match bg.join() {
            Ok(()) => Ok(()),
            // Worker threads of a clone_fd session may see the connection aborted rather than
            // the device gone: the session ended because of our unmount either way.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::ENODEV)) => Ok(()),
            Err(e) => Err(err(e)),
        }
    }
}

/// How often, and how long apart, a busy unmount is retried before it is made lazy.
const UNMOUNT_RETRIES: u32 = 20;
const UNMOUNT_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Whether `p` is the root of a mount (its device differs from its parent's).
fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = p.parent().unwrap_or(p);
    match (p.symlink_metadata(), parent.symlink_metadata()) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Unmounts a FUSE mount: `umount(2)` as root, else `fusermount3 -u`; a mount still busy after
/// a second is detached lazily (it goes away when its last user does).
fn unmount_path(mountpoint: &Path) -> std::io::Result<()> {
    if rustix::process::geteuid().is_root() {
        for _ in 0..UNMOUNT_RETRIES {
            match rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::BUSY) => std::thread::sleep(UNMOUNT_RETRY_DELAY),
                // Not (any more) a mount point: unmounted from outside.
                Err(rustix::io::Errno::INVAL) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
        return rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH)
            .map_err(Into::into);
    }
    let fusermount = |args: &[&str]| {
        std::process::Command::new("fusermount3")
            .args(args)
            .arg(mountpoint)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for _ in 0..UNMOUNT_RETRIES {
        if fusermount(&["-u"]) || !is_mount_point(mountpoint) {
            return Ok(());
        }
        std::thread::sleep(UNMOUNT_RETRY_DELAY);
    }
    if fusermount(&["-u", "-z"]) {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::ResourceBusy,
        format!("fusermount3 -u {} failed", mountpoint.display()),
    ))
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            log::warn!("unmounting {}: {e}", self.mountpoint.display());
        }
    }
}

fn check_dev_fuse() -> Result<()> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(DEV_FUSE)
        .map(drop)
        .map_err(FsError::FuseUnavailable)
}

/// The mount option that sets the subtype on both of fuser's mount paths. fuser 0.18 treats
/// `MountOption::Subtype` as an option for fusermount3 only: as root it calls mount(2) with type
/// `fuse` and passes just its "kernel options" as data, so the subtype was lost and the mount
/// showed as plain `fuse`. A custom `subtype=` option goes into that data, where the kernel's
/// fuse takes it as its `subtype` parameter (the one a type `fuse.SUBTYPE` sets), and also onto
/// fusermount3's `-o`, which mounts type `fuse.SUBTYPE` itself.
fn subtype_option(subtype: &str) -> Result<MountOption> {
    let valid = !subtype.is_empty()
        && subtype
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    if !valid {
        return Err(FsError::Config(format!(
            "mount subtype {subtype:?}: use ASCII letters, digits and -_.+ only"
        )));
    }
    Ok(MountOption::CUSTOM(format!("subtype={subtype}")))
}

fn prepare(config: UnionConfig, mountpoint: &Path) -> Result<(FuseAdapter, Config)> {
    let subtype = config
        .options
        .subtype
        .as_deref()
        .map(subtype_option)
        .transpose()?;
    check_dev_fuse()?;
    let md = mountpoint
        .metadata()
        .map_err(FsError::io("mountpoint", mountpoint))?;
    if !md.is_dir() {
        return Err(FsError::Config(format!(
            "mountpoint {} is not a directory",
            mountpoint.display()
        )));
    }
    let read_only = config.upper.is_none();
    let fs = UnionFs::new(
        config.lowers,
        config.upper.map(|u| (u.upper, u.work)),
        FsOptions {
            fsync_copy_up: config.options.fsync_copy_up,
            writeback_cache: config.options.writeback_cache && !config.options.passthrough,
            redirect_dir: config.options.redirect_dir,
            metacopy: config.options.metacopy,
            ignore_chown_errors: config.options.id_map.squashed(),
        },
    )?;
    let mut opts = vec![
        MountOption::FSName(config.options.fs_name.clone()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
    ];
    opts.extend(subtype);
    if read_only {
        opts.push(MountOption::RO);
    }
    if rustix::process::geteuid().is_root() {
        opts.push(MountOption::Suid);
        opts.push(MountOption::Dev);
    }
    let mut cfg = Config::default();
    cfg.mount_options = opts;
    // `n_threads` threads read the kernel's requests, and as many workers take the slow ones
    // (see `fuse::Pool`).
    cfg.n_threads = Some(config.options.n_threads.max(1));
    cfg.clone_fd = true;
    cfg.acl = if config.options.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    Ok((FuseAdapter::new(Arc::new(fs), config.options), cfg))
}

/// Mounts in the background and returns once the mount is live.
///
/// # Errors
/// `FuseUnavailable` when `/dev/fuse` cannot be opened; `Config` for a bad mountpoint, upper or
/// work dir; `Mount` when the kernel (or fusermount3) refuses.
pub fn spawn(config: UnionConfig, mountpoint: &Path) -> Result<Session> {
    let (fs, cfg) = prepare(config, mountpoint)?;
    let s = fuser::spawn_mount(fs, mountpoint, &cfg).map_err(|source| FsError::Mount {
        mountpoint: mountpoint.to_owned(),
        source,
    })?;
    Ok(Session {
        inner: Some(s),
        mountpoint: mountpoint.to_owned(),
    })
}

/// Mounts in the foreground: returns when the mount goes away (`fusermount3 -u`, `umount`) or
/// after SIGTERM, SIGINT or SIGHUP, which unmount first. Call it from the main thread before
/// other threads exist, so the signals reach it.
///
/// `ready` runs once the mount is live (e.g. to tell a parent process).
///
/// # Errors
/// As [`spawn`]; also when the unmount at a signal fails.
pub fn mount(config: UnionConfig, mountpoint: &Path, ready: impl FnOnce()) -> Result<()> {
    let signals = sys::block_stop_signals().map_err(|source| FsError::Mount {
        mountpoint: mountpoint.to_owned(),
        source,
    })?;
    let mut session = spawn(config, mountpoint)?;
    ready();
    let waiter = sys::current_thread();
    let guard = session
        .inner
        .as_mut()
        .map(|s| std::mem::replace(&mut s.guard, std::thread::spawn(|| Ok(()))));
    let watcher = guard.map(|g| {
        std::thread::spawn(move || {
            let r = g.join();
            waiter.signal(sys::SESSION_ENDED_SIGNAL);
            r
        })
    });
    let sig = signals.wait().map_err(|source| FsError::Mount {
        mountpoint: mountpoint.to_owned(),
        source,
    })?;
    let result = if sig == sys::SESSION_ENDED_SIGNAL {
        // Unmounted from outside; nothing left to unmount.
        drop(session.inner.take());
        Ok(())
    } else {
        log::info!("signal {sig}: unmounting {}", mountpoint.display());
        session.unmount_inner()
    };
    if let Some(w) = watcher {
        let _ = w.join();
        // The watcher's signal may be pending; take it so it does not leak past the mask.
        if sig != sys::SESSION_ENDED_SIGNAL {
            let _ = signals.wait();
        }
    }
    drop(signals);
    result
}

/// A union mounted under a fresh temp dir named `strata-test-*`, for tests. `Drop` unmounts
/// (falling back to `fusermount3 -u`, then `-u -z`, then a lazy `umount`) before removing the
/// dir, so a failing test still cleans up.
#[cfg(feature = "test-util")]
#[derive(Debug)]
pub struct MountedUnion {
    session: Option<Session>,
    dir: Option<tempfile::TempDir>,
    mountpoint: PathBuf,
}

#[cfg(feature = "test-util")]
impl MountedUnion {
    /// Mounts `config` under a new temp dir.
    ///
    /// # Errors
    /// As [`spawn`], and I/O errors creating the temp dir.
    pub fn mount(config: UnionConfig) -> Result<MountedUnion> {
        let dir = tempfile::Builder::new()
            .prefix("strata-test-")
            .tempdir()
            .map_err(FsError::io("create temp dir", std::env::temp_dir()))?;
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).map_err(FsError::io("mkdir", &mountpoint))?;
        let session = spawn(config, &mountpoint)?;
        Ok(MountedUnion {
            session: Some(session),
            dir: Some(dir),
            mountpoint,
        })
    }

    /// The mounted directory.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts now, returning any error.
    ///
    /// # Errors
    /// When the unmount fails.
    pub fn unmount(mut self) -> Result<()> {
        let r = self.session.take().map_or(Ok(()), Session::unmount);
        if r.is_err() {
            self.force_unmount();
        }
        r
    }

    fn force_unmount(&self) {
        let mounted = || {
            std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
                m.lines()
                    .any(|l| l.split(' ').nth(1) == Some(&*self.mountpoint.to_string_lossy()))
            })
        };
        for args in [&["-u"][..], &["-u", "-z"][..]] {
            if !mounted() {
                return;
            }
            let _ = std::process::Command::new("fusermount3")
                .args(args)
                .arg(&self.mountpoint)
                .status();
        }
        if mounted() {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

#[cfg(feature = "test-util")]
impl Drop for MountedUnion {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && s.unmount().is_err()
        {
            self.force_unmount();
        }
        self.force_unmount();
        drop(self.dir.take());
    }
}
