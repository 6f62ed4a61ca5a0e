//! The FUSE adapter: the only file that touches `fuser::Reply*`. Each method calls the
//! [`UnionFs`] method of the same name and turns the result into a reply; a failure is logged
//! once (op, inode, errno; `debug` for ENOENT) and answered with its errno.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::error::FsError;
use crate::fs::write::{SetAttr, SetTime};
use crate::fs::{Attr, Caller, Entry, Fh, Ino, UnionFs};
use crate::idmap::IdMap;
use crate::lower::EntryKind;
use crate::mount::MountOptions;

fn file_type(k: EntryKind) -> FileType {
    match k {
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::CharDev | EntryKind::Whiteout => FileType::CharDevice,
        EntryKind::BlockDev => FileType::BlockDevice,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::Socket => FileType::Socket,
        EntryKind::File => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr, ids: &IdMap) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.mtime,
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: ids.shown_uid(a.uid),
        gid: ids.shown_gid(a.gid),
        rdev: u32::try_from(a.rdev).unwrap_or(0),
        blksize: 4096,
        flags: 0,
    }
}

/// Attributes sent with a negative entry (the kernel looks only at the node id 0).
const NEGATIVE_ATTR: Attr = Attr {
    ino: Ino(0),
    kind: EntryKind::File,
    size: 0,
    blocks: 0,
    perm: 0,
    nlink: 0,
    uid: 0,
    gid: 0,
    rdev: 0,
    atime: std::time::UNIX_EPOCH,
    mtime: std::time::UNIX_EPOCH,
    ctime: std::time::UNIX_EPOCH,
};

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
    })
}

/// The caller of a request, as ids on disk.
fn caller(req: &Request, ids: &IdMap) -> Caller {
    Caller {
        uid: ids.disk_uid(req.uid()),
        gid: ids.disk_gid(req.gid()),
    }
}

fn errno(op: &str, ino: u64, e: &FsError) -> Errno {
    let code = e.errno();
    if code == libc::ENOENT || code == libc::ENODATA {
        log::debug!("{op}(ino {ino}): {e}");
    } else {
        log::warn!("{op}(ino {ino}) failed with errno {code}: {e}");
    }
    Errno::from_i32(code)
}

/// How the kernel does I/O on an inode's open files. The kernel requires all opens of an inode
/// to be passthrough with one backing file, or none of them.
#[derive(Debug)]
enum IoMode {
    /// Through the daemon (page cache); `usize` open handles.
    Cached(usize),
    /// Straight to a backing file; `usize` open handles.
    Passthrough(Arc<BackingId>, usize),
}

/// Per-inode I/O modes of open files, and which inode each handle belongs to.
#[derive(Debug, Default)]
struct Backing {
    by_ino: HashMap<u64, IoMode>,
    by_fh: HashMap<u64, u64>,
}

/// A job for the worker threads: one request, replied to by the job itself.
type Job = Box<dyn FnOnce() + Send>;

/// Worker threads for the requests that may take long (data copies, disk reads, fsync): the
/// threads that read `/dev/fuse` answer the quick metadata requests themselves and hand
/// anything that can block to the pool, so they stay free to take the next request and a
/// 1 GiB copy-up never stalls the `stat`s of others.
#[derive(Debug)]
struct Pool {
    tx: std::sync::mpsc::Sender<Job>,
}

impl Pool {
    fn new(n: usize) -> Pool {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("strata-io-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break, // the session ended
                        }
                    }
                });
            if let Err(e) = spawned {
                log::warn!("cannot start a worker thread: {e}");
            }
        }
        Pool { tx }
    }

    /// Runs `job` on a worker (or here, when no worker is left: the reply must be sent).
    fn run(&self, job: impl FnOnce() + Send + 'static) {
        if let Err(std::sync::mpsc::SendError(job)) = self.tx.send(Box::new(job)) {
            job();
        }
    }
}

/// What the request thread and the workers share.
#[derive(Debug)]
pub(crate) struct Core {
    fs: Arc<UnionFs>,
    opts: MountOptions,
    passthrough: AtomicBool,
    /// `FUSE_HANDLE_KILLPRIV_V2`: the daemon clears setuid/setgid on writes and truncates by
    /// callers without `CAP_FSETID` (the kernel then skips a GETXATTR per write and a GETATTR
    /// per chown). Only together with passthrough (as root).
    killpriv: AtomicBool,
    backing: Mutex<Backing>,
}

/// The `fuser::Filesystem` over a [`UnionFs`].
#[derive(Debug)]
pub(crate) struct FuseAdapter {
    core: Arc<Core>,
    pool: Pool,
}

impl std::ops::Deref for FuseAdapter {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl FuseAdapter {
    pub(crate) fn new(fs: Arc<UnionFs>, opts: MountOptions) -> Self {
        let workers = opts.n_threads;
        FuseAdapter {
            core: Arc::new(Core {
                fs,
                opts,
                passthrough: AtomicBool::new(false),
                killpriv: AtomicBool::new(false),
                backing: Mutex::new(Backing::default()),
            }),
            pool: Pool::new(workers),
        }
    }

    /// Runs `f` on the core in a worker thread.
    fn offload(&self, f: impl FnOnce(&Core) + Send + 'static) {
        let core = self.core.clone();
        self.pool.run(move || f(&core));
    }
}

impl Core {
    fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    fn killpriv(&self) -> bool {
        self.killpriv.load(Ordering::Relaxed)
    }

    fn open(&self, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fh = match self.fs.open(Ino(ino.0), flags.0) {
            Ok(fh) => fh,
            Err(e) => return reply.error(errno("open", ino.0, &e)),
        };
        let read_only = flags.0 & libc::O_ACCMODE == libc::O_RDONLY;
        let cache = if read_only && self.fs.is_lower_handle(fh) {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        if !self.passthrough() {
            return reply.opened(FileHandle(fh.0), cache);
        }
        let id = self.register_open(ino.0, fh, |f| reply.open_backing(f));
        match id {
            Some(id) => reply.opened_passthrough(FileHandle(fh.0), FopenFlags::empty(), &id),
            None => reply.opened(FileHandle(fh.0), cache),
        }
    }

    fn reply_entry(&self, reply: ReplyEntry, e: &Entry) {
        let (attr_ttl, entry_ttl) = if e.immutable {
            (self.opts.lower_ttl, self.opts.lower_ttl)
        } else {
            (self.opts.attr_ttl, self.opts.entry_ttl)
        };
        reply.entry_with_ttls(
            &attr_ttl,
            &entry_ttl,
            &file_attr(&e.attr, &self.opts.id_map),
            Generation(0),
        );
    }

    /// Counts an open handle of `ino` and decides its I/O mode: the inode's current mode, or for
    /// its first handle passthrough when the union can give a backing file (`open_backing`
    /// registers it with the kernel).
    fn register_open(
        &self,
        ino: u64,
        fh: Fh,
        open_backing: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        let mut b = self.backing.lock();
        b.by_fh.insert(fh.0, ino);
        match b.by_ino.get_mut(&ino) {
            Some(IoMode::Cached(n)) => {
                *n += 1;
                None
            }
            Some(IoMode::Passthrough(id, n)) => {
                *n += 1;
                Some(id.clone())
            }
            None => {
                let id = match self.fs.backing_file(fh).map(|f| open_backing(&f)) {
                    Some(Ok(id)) => Some(Arc::new(id)),
                    Some(Err(e)) => {
                        log::debug!("passthrough refused for ino {ino}: {e}");
                        None
                    }
                    None => None,
                };
                let mode = match &id {
                    Some(id) => IoMode::Passthrough(id.clone(), 1),
                    None => IoMode::Cached(1),
                };
                b.by_ino.insert(ino, mode);
                id
            }
        }
    }

    fn attr_ttl(&self) -> Duration {
        self.opts.attr_ttl
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // READDIR+LOOKUP in one round trip for `ls -l`/`find` style walks.
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // The kernel caches ACLs per inode (also their absence, which `ls -l` asks for on
        // every file) and checks them itself; symlink targets never change behind its back.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_CACHE_SYMLINKS);
        if self.opts.passthrough {
            if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
                let _ = config.set_max_stack_depth(2);
                self.passthrough.store(true, Ordering::Relaxed);
                let killpriv = config
                    .add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
                    .is_ok();
                self.killpriv.store(killpriv, Ordering::Relaxed);
            } else {
                log::warn!("the kernel does not offer FUSE passthrough; reads go through strata");
            }
        } else if self.opts.writeback_cache {
            let _ = config.add_capabilities(InitFlags::FUSE_WRITEBACK_CACHE);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(Ino(parent.0), name) {
            Ok(e) => self.reply_entry(reply, &e),
            // A negative entry (node 0) lets the kernel remember the miss (PATH and import
            // searches probe the same missing names again and again); it forgets it itself
            // when a name is created through the mount, the only way the union changes.
            Err(FsError::NotFound) if !self.opts.entry_ttl.is_zero() => {
                let mut attr = file_attr(&NEGATIVE_ATTR, &self.opts.id_map);
                attr.ino = INodeNo(0);
                reply.entry_with_ttls(&Duration::ZERO, &self.opts.entry_ttl, &attr, Generation(0));
            }
            Err(e) => reply.error(errno("lookup", parent.0, &e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(Ino(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        // Lower-only inodes keep their long TTL: a read's atime invalidation must not turn
        // every later stat into a round trip.
        match self.fs.getattr_entry(Ino(ino.0), fh.map(|f| Fh(f.0))) {
            Ok(e) => {
                let ttl = if e.immutable {
                    self.opts.lower_ttl
                } else {
                    self.attr_ttl()
                };
                reply.attr(&ttl, &file_attr(&e.attr, &self.opts.id_map));
            }
            Err(e) => reply.error(errno("getattr", ino.0, &e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let ids = &self.opts.id_map;
        let set = SetAttr {
            mode,
            uid: uid.map(|u| ids.disk_uid(u)),
            gid: gid.map(|g| ids.disk_gid(g)),
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        // With killpriv the kernel leaves clearing setuid/setgid to us: on a truncate, and
        // on the empty SETATTR it sends when a write must drop them. uid 0 stands for
        // CAP_FSETID (fuser does not pass FATTR_KILL_SUIDGID).
        let empty = mode.is_none()
            && uid.is_none()
            && gid.is_none()
            && size.is_none()
            && atime.is_none()
            && mtime.is_none()
            && ctime.is_none();
        let kill = self.killpriv() && req.uid() != 0 && (size.is_some() || empty);
        let fh = fh.map(|f| Fh(f.0));
        let gid = ids.disk_gid(req.gid());
        let run = move |c: &Core| {
            let r = c.fs.setattr(Ino(ino.0), set, fh).and_then(|a| {
                if kill {
                    Ok(c.fs.kill_suid(Ino(ino.0), fh, gid)?.unwrap_or(a))
                } else {
                    Ok(a)
                }
            });
            match r {
                Ok(a) => reply.attr(&c.attr_ttl(), &file_attr(&a, &c.opts.id_map)),
                Err(e) => reply.error(errno("setattr", ino.0, &e)),
            }
        };
        // A truncate may copy a lower file's data up first.
        if size.is_some() {
            self.offload(run);
        } else {
            run(&self.core);
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        use std::os::unix::ffi::OsStrExt;
        match self.fs.readlink(Ino(ino.0)) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(errno("readlink", ino.0, &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        match self.fs.mknod(
            Ino(parent.0),
            name,
            mode,
            umask,
            rdev.into(),
            caller(req, &self.opts.id_map),
        ) {
            Ok(e) => self.reply_entry(reply, &e),
            Err(e) => reply.error(errno("mknod", parent.0, &e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self.fs.mkdir(
            Ino(parent.0),
            name,
            mode,
            umask,
            caller(req, &self.opts.id_map),
        ) {
            Ok(e) => self.reply_entry(reply, &e),
            Err(e) => reply.error(errno("mkdir", parent.0, &e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.unlink(Ino(parent.0), name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("unlink", parent.0, &e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.rmdir(Ino(parent.0), name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rmdir", parent.0, &e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        match self.fs.symlink(
            Ino(parent.0),
            link_name,
            target,
            caller(req, &self.opts.id_map),
        ) {
            Ok(e) => self.reply_entry(reply, &e),
            Err(e) => reply.error(errno("symlink", parent.0, &e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match self
            .fs
            .rename(Ino(parent.0), name, Ino(newparent.0), newname, flags.bits())
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("rename", parent.0, &e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.fs.link(Ino(ino.0), Ino(newparent.0), newname) {
            Ok(e) => self.reply_entry(reply, &e),
            Err(e) => reply.error(errno("link", ino.0, &e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // An open for writing may copy a lower file's data up first.
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if writes {
            self.offload(move |c| c.open(ino, flags, reply));
        } else {
            self.core.open(ino, flags, reply);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Data in the page cache is answered here; a read that would wait for the disk goes
        // to a worker.
        match self.fs.read_cached(Fh(fh.0), offset, size) {
            Ok(Some(d)) => reply.data(&d),
            Ok(None) => self.offload(move |c| match c.fs.read(Fh(fh.0), offset, size) {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno("read", ino.0, &e)),
            }),
            Err(e) => reply.error(errno("read", ino.0, &e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        let gid = req.gid();
        self.offload(move |c| {
            let r = c.fs.write(Fh(fh.0), offset, &data).and_then(|n| {
                if c.killpriv() && write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
                    c.fs.kill_suid(Ino(ino.0), Some(Fh(fh.0)), c.opts.id_map.disk_gid(gid))?;
                }
                Ok(n)
            });
            match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno("write", ino.0, &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close (data goes straight to the upper file; locks are the kernel's):
        // ENOSYS once makes the kernel stop sending FLUSH, a round trip per close(2).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(Fh(fh.0));
        let mut b = self.backing.lock();
        if let Some(ino) = b.by_fh.remove(&fh.0)
            && let Some(IoMode::Cached(n) | IoMode::Passthrough(_, n)) = b.by_ino.get_mut(&ino)
        {
            *n -= 1;
            if *n == 0 {
                b.by_ino.remove(&ino);
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.opts.ignore_fsync {
            return reply.ok();
        }
        self.offload(move |c| match c.fs.fsync(Fh(fh.0), datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("fsync", ino.0, &e)),
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.offload(
            move |c| match c.fs.fallocate(Fh(fh.0), offset, length, mode) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno("fallocate", ino.0, &e)),
            },
        );
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(Fh(fh.0), offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno("lseek", ino.0, &e)),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No directory handles: the kernel then opens directories without asking (no OPENDIR
        // or RELEASEDIR round trip per directory), keeps their listings in its cache
        // (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, dropped when an entry op goes through the
        // directory, the only way the union changes), and READDIR comes with handle 0:
        // `UnionFs::readdir_at` keeps offsets stable without one.
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.fs.readdir_at(Ino(ino.0), offset, |next, item| {
            !reply.add(INodeNo(item.ino.0), next, file_type(item.kind), &item.name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("readdir", ino.0, &e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let mut added = false;
        let mut failed = None;
        let r = self.fs.readdir_at(Ino(ino.0), offset, |next, item| {
            let dot = item.name == "." || item.name == "..";
            // "." and ".." carry no kernel reference; every other entry counts one lookup.
            let entry = if dot {
                self.fs.getattr(item.ino, None).map(|attr| Entry {
                    attr,
                    immutable: false,
                })
            } else {
                self.fs.lookup(Ino(ino.0), &item.name)
            };
            let e = match entry {
                Ok(e) => e,
                // Removed since the listing was taken: leave it out.
                Err(FsError::NotFound) => return true,
                Err(e) => {
                    if !added {
                        failed = Some(e);
                    }
                    // Stop here; the next call starts at this offset.
                    return false;
                }
            };
            let ttl = if e.immutable {
                self.opts.lower_ttl
            } else {
                self.opts.entry_ttl
            };
            let full = reply.add(
                INodeNo(e.attr.ino.0),
                next,
                &item.name,
                &ttl,
                &file_attr(&e.attr, &self.opts.id_map),
                Generation(0),
            );
            if full && !dot {
                self.fs.forget(e.attr.ino, 1);
            }
            added |= !full;
            !full
        });
        match (r, failed) {
            (Err(e), _) | (Ok(()), Some(e)) => reply.error(errno("readdirplus", ino.0, &e)),
            (Ok(()), None) => reply.ok(),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.release(Fh(fh.0));
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno("statfs", ino.0, &e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        match self.fs.setxattr(Ino(ino.0), name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("setxattr", ino.0, &e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(Ino(ino.0), name) {
            Ok(v) => xattr_reply(reply, &v, size),
            Err(e) => reply.error(errno("getxattr", ino.0, &e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(Ino(ino.0)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                xattr_reply(reply, &buf, size);
            }
            Err(e) => reply.error(errno("listxattr", ino.0, &e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.fs.removexattr(Ino(ino.0), name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("removexattr", ino.0, &e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(Ino(ino.0), mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno("access", ino.0, &e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self.fs.create(
            Ino(parent.0),
            name,
            mode,
            umask,
            flags,
            caller(req, &self.opts.id_map),
        ) {
            Ok((e, fh)) => {
                // Writes to a new file go straight to its upper file (no WRITE round trips).
                let id = if self.passthrough() {
                    self.register_open(e.attr.ino.0, fh, |f| reply.open_backing(f))
                } else {
                    None
                };
                let ttl = if e.immutable {
                    self.opts.lower_ttl
                } else {
                    self.opts.entry_ttl
                };
                let attr = file_attr(&e.attr, &self.opts.id_map);
                match id {
                    Some(id) => reply.created_passthrough(
                        &ttl,
                        &attr,
                        Generation(0),
                        FileHandle(fh.0),
                        FopenFlags::empty(),
                        &id,
                    ),
                    None => reply.created(
                        &ttl,
                        &attr,
                        Generation(0),
                        FileHandle(fh.0),
                        FopenFlags::empty(),
                    ),
                }
            }
            Err(e) => reply.error(errno("create", parent.0, &e)),
        }
    }
}

fn xattr_reply(reply: ReplyXattr, data: &[u8], size: u32) {
    if size == 0 {
        reply.size(u32::try_from(data.len()).unwrap_or(u32::MAX));
    } else if data.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}
