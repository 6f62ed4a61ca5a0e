//! Operations that change the union: copy-up, create, write, remove, rename, setattr, xattrs.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps};

use super::upper::{DataSource, copy_data, is_reserved_name};
use super::{Attr, Caller, Entry, Fh, HandleData, Ino, LowerRef, UnionFs};
use crate::error::{FsError, Result};
use crate::longpath::SysPath;
use crate::lower::{EntryKind, LowerAttr, Redirect, is_internal_xattr};
use crate::xattr;

/// A time for `setattr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The current time.
    Now,
    /// A given time.
    At(SystemTime),
}

/// The changes of one `setattr` call; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

fn ts(t: Option<SetTime>) -> Timespec {
    match t {
        None => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(SetTime::Now) => Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(SetTime::At(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: d.subsec_nanos().into(),
            },
            Err(e) => Timespec {
                tv_sec: -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
                tv_nsec: 0,
            },
        },
    }
}

fn set_times_nofollow(path: &Path, atime: Timespec, mtime: Timespec) -> Result<()> {
    let t = Timestamps {
        last_access: atime,
        last_modification: mtime,
    };
    rustix::fs::utimensat(CWD, path, &t, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| FsError::io("utimensat", path)(e.into()))
}

fn check_name(name: &OsStr) -> Result<()> {
    if is_reserved_name(name) {
        return Err(FsError::ReservedName(name.to_owned()));
    }
    if name.len() > 255 {
        return Err(FsError::Invalid("name longer than 255 bytes"));
    }
    Ok(())
}

impl UnionFs {
    /// Applies a lower node's metadata (xattrs, owner, mode, times) to a fresh upper copy.
    fn apply_lower_meta(&self, r: LowerRef, la: &LowerAttr, path: &Path) -> Result<()> {
        let xs = self.lowers[r.layer]
            .xattrs(r.node)
            .map_err(FsError::lower(r.layer))?;
        for (n, v) in xs {
            // Some namespaces (trusted.*, security.*) are root-only: keep what we can.
            if let Err(e) = xattr::set(path, &n, &v, 0)
                && !matches!(
                    e.raw_os_error(),
                    Some(libc::EPERM | libc::ENOTSUP | libc::EACCES)
                )
            {
                return Err(FsError::io("copy xattr", path)(e));
            }
        }
        if self.euid_root {
            std::os::unix::fs::lchown(path, Some(la.uid), Some(la.gid))
                .map_err(FsError::io("chown", path))?;
        }
        if la.kind != EntryKind::Symlink {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(la.mode))
                .map_err(FsError::io("chmod", path))?;
        }
        let t = Timespec {
            tv_sec: la.mtime,
            tv_nsec: la.mtime_nsec.into(),
        };
        set_times_nofollow(path, t, t)
    }

    /// The copy-up lock of an inode (made on first use).
    fn copy_lock(&self, ino: Ino) -> Result<Arc<Mutex<()>>> {
        if let Some(l) = self.table.read().get(ino).and_then(|n| n.copy_lock.clone()) {
            return Ok(l);
        }
        let mut t = self.table.write();
        let n = t.get_mut(ino).ok_or(FsError::StaleInode(ino.0))?;
        Ok(n.copy_lock
            .get_or_insert_with(|| Arc::new(Mutex::new(())))
            .clone())
    }

    /// Makes sure directory `ino` exists in the upper (copying its metadata, not its content),
    /// parents first. Returns its relative path.
    pub(crate) fn ensure_upper_dir(&self, ino: Ino) -> Result<PathBuf> {
        let s = self.state(ino)?;
        if s.upper {
            return self.path_of(ino);
        }
        if s.kind != EntryKind::Dir {
            return Err(FsError::NotDir);
        }
        let lock = self.copy_lock(ino)?;
        let _g = lock.lock();
        if self.state(ino)?.upper {
            return self.path_of(ino);
        }
        self.ensure_upper_dir(s.parent)?;
        let u = self.upper()?;
        let r = *s.lower.first().ok_or(FsError::StaleInode(ino.0))?;
        let la = self.lower_attr(r)?;
        let tmp = u.tmp_path();
        std::fs::create_dir(&tmp).map_err(FsError::io("mkdir", &tmp))?;
        self.apply_lower_meta(r, &la, &tmp)?;
        let rel = self.path_of(ino)?;
        let dst = u.path(&rel);
        std::fs::rename(&tmp, &dst).map_err(FsError::io("rename copied-up dir", &dst))?;
        if let Some(n) = self.table.write().get_mut(ino) {
            n.upper = true;
        }
        Ok(rel)
    }

    pub(super) fn data_source(&self, r: LowerRef) -> Result<Option<File>> {
        self.lowers[r.layer]
            .open(r.node)
            .map_err(FsError::lower(r.layer))
    }

    fn copy_lower_data(&self, r: LowerRef, dst: &File, size: u64) -> Result<()> {
        let tree = self.lowers[r.layer].clone();
        let read = move |buf: &mut [u8], off: u64| tree.read_at(r.node, buf, off);
        let src = match self.data_source(r)? {
            Some(f) => DataSource::File(f),
            None => DataSource::ReadAt(&read),
        };
        let write_behind = self.upper()?.fsync;
        copy_data(&src, dst, size, write_behind)
            .map_err(FsError::io("copy up data", "<upper file>"))
    }

    /// Copies a non-directory up. With `data == false` a regular file becomes a metadata-only
    /// placeholder (its data stays in the lower); with `data == true` its data is copied too.
    pub(crate) fn copy_up(&self, ino: Ino, data: bool) -> Result<()> {
        let s = self.state(ino)?;
        if s.unlinked {
            // Copying up would recreate a removed name.
            return Err(FsError::NotFound);
        }
        if s.kind == EntryKind::Dir {
            return self.ensure_upper_dir(ino).map(|_| ());
        }
        if s.upper && (!s.metacopy || !data) {
            return Ok(());
        }
        let lock = self.copy_lock(ino)?;
        let _g = lock.lock();
        let s = self.state(ino)?;
        if s.upper && (!s.metacopy || !data) {
            return Ok(());
        }
        let u = self.upper()?;
        let r = *s.lower.first().ok_or(FsError::StaleInode(ino.0))?;
        // A metadata-only file of a lower layer has its data further down.
        let data_ref = *s.lower.last().unwrap_or(&r);
        let mut la = self.lower_attr(r)?;
        if data_ref != r {
            la.size = self.lower_attr(data_ref)?.size;
        }
        if s.upper {
            drop(_g);
            return self.fill(ino, true);
        }
        self.ensure_upper_dir(s.parent)?;
        let tmp = u.tmp_path();
        let mut metacopy = false;
        match s.kind {
            EntryKind::File => {
                let f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(FsError::io("create", &tmp))?;
                if !data && la.size > 0 && self.metacopy {
                    // A hard-link group's marker is shared by all its names: point it at the
                    // data from the root (as overlayfs does).
                    let lower_path = self.lower_path_of(ino)?;
                    let redirect =
                        self.redirect_for(s.parent, &s.name, &lower_path, la.nlink > 1)?;
                    metacopy = u
                        .mark_metacopy(&f, &tmp, la.size, redirect.as_ref())
                        .is_ok();
                    if !metacopy {
                        // No xattrs here (or the redirect does not fit): a full copy.
                        u.clear_metacopy_path(&tmp)?;
                        f.set_len(0).map_err(FsError::io("truncate", &tmp))?;
                    }
                }
                if !metacopy {
                    self.copy_lower_data(data_ref, &f, la.size)?;
                    if u.fsync {
                        f.sync_all().map_err(FsError::io("fsync", &tmp))?;
                    }
                }
            }
            EntryKind::Symlink => {
                let target = self.lowers[r.layer]
                    .readlink(r.node)
                    .map_err(FsError::lower(r.layer))?;
                std::os::unix::fs::symlink(&target, &tmp).map_err(FsError::io("symlink", &tmp))?;
            }
            k => {
                let ft = match k {
                    EntryKind::CharDev => FileType::CharacterDevice,
                    EntryKind::BlockDev => FileType::BlockDevice,
                    EntryKind::Socket => FileType::Socket,
                    _ => FileType::Fifo,
                };
                rustix::fs::mknodat(CWD, &tmp, ft, Mode::from_raw_mode(0o600), la.rdev)
                    .map_err(|e| FsError::io("mknod", &tmp)(e.into()))?;
            }
        }
        self.apply_lower_meta(r, &la, &tmp)?;
        let dst = u.path(&self.path_of(ino)?);
        if metacopy {
            u.mark_parent_impure(&dst);
        }
        std::fs::rename(&tmp, &dst).map_err(FsError::io("rename copied-up file", &dst))?;
        let aliases = {
            let mut t = self.table.write();
            let Some(n) = t.get_mut(ino) else {
                return Ok(());
            };
            n.upper = true;
            n.metacopy = metacopy;
            if !metacopy {
                n.lower.clear();
            }
            n.aliases.clone()
        };
        // The other known names of a lower hard-link group become links of the copy, so any
        // of them can be the primary name later (dir locks after a file lock: see lock order).
        for (parent, name) in aliases {
            if let Ok(prel) = self.ensure_upper_dir(parent) {
                let p = u.path(&prel).join(&name);
                if p.symlink_metadata().is_err() {
                    if metacopy {
                        u.mark_parent_impure(&p);
                    }
                    let _ = std::fs::hard_link(&dst, &p);
                }
            }
        }
        Ok(())
    }

    /// Gives a metadata-only placeholder its data, in place (same inode, so its hard links stay
    /// linked). Works through one fd, so it needs no namespace lock: renames and unlinks of the
    /// file may go on meanwhile, and readers keep reading the lower until the marker goes. The
    /// marker is removed last, so a crash midway leaves a placeholder that still reads the lower.
    ///
    /// `ns_held`: the caller holds the namespace lock (else `fill` takes it just to open the
    /// file, and copies with only the inode's copy-up lock held).
    pub(crate) fn fill(&self, ino: Ino, ns_held: bool) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        if !self.state(ino)?.metacopy {
            return Ok(());
        }
        let u = self.upper()?;
        let (f, path) = {
            let _ns = (!ns_held).then(|| self.ns.read());
            let path = u.path(&self.path_of(ino)?);
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(FsError::io("open", &path))?;
            (f, path)
        };
        let lock = self.copy_lock(ino)?;
        let _g = lock.lock();
        let s = self.state(ino)?;
        if !s.metacopy {
            return Ok(());
        }
        let r = *s.lower.last().ok_or(FsError::StaleInode(ino.0))?;
        let la = self.lower_attr(r)?;
        let md = f.metadata().map_err(FsError::io("fstat", &path))?;
        self.copy_lower_data(r, &f, la.size)?;
        if u.fsync {
            f.sync_all().map_err(FsError::io("fsync", &path))?;
        }
        // Writing may have cleared setuid/setgid (a writer without CAP_FSETID), and it moved
        // the times: put back the placeholder's.
        rustix::fs::fchmod(&f, Mode::from_raw_mode(md.mode() & 0o7777))
            .map_err(|e| FsError::io("chmod", &path)(e.into()))?;
        let t = Timestamps {
            last_access: Timespec {
                tv_sec: md.atime(),
                tv_nsec: md.atime_nsec(),
            },
            last_modification: Timespec {
                tv_sec: md.mtime(),
                tv_nsec: md.mtime_nsec(),
            },
        };
        rustix::fs::futimens(&f, &t).map_err(|e| FsError::io("utimens", &path)(e.into()))?;
        u.clear_metacopy(&f, &path)?;
        if let Some(n) = self.table.write().get_mut(ino) {
            n.metacopy = false;
            n.lower.clear();
        }
        Ok(())
    }

    /// Another name of a lower hard-link group whose inode was already copied up: link it in
    /// the upper too, so the on-disk upper keeps the group together. Best effort.
    pub(crate) fn link_copied_alias(&self, ino: Ino, parent: Ino, name: &OsStr) {
        let Some(_ns) = self.ns.try_read() else {
            return;
        };
        let Ok(s) = self.state(ino) else { return };
        if !s.upper || (s.parent == parent && s.name == name) {
            return;
        }
        let (Ok(u), Ok(src)) = (self.upper(), self.path_of(ino)) else {
            return;
        };
        let Ok(prel) = self.ensure_upper_dir(parent) else {
            return;
        };
        let _ = std::fs::hard_link(u.path(&src), u.path(&prel).join(name));
    }

    fn new_entry(&self, parent: Ino, name: &OsStr, kind: EntryKind) -> Result<Entry> {
        let ino = self.attach_new(parent, name, kind);
        self.entry(ino)
    }

    /// Puts a new upper-only entry into the table (one kernel reference).
    fn attach_new(&self, parent: Ino, name: &OsStr, kind: EntryKind) -> Ino {
        let mut t = self.table.write();
        let ino = t.attach(parent, name, kind, None);
        if let Some(n) = t.get_mut(ino) {
            n.upper = true;
            n.metacopy = false;
            n.lower.clear();
            n.nlink = None;
            n.lookups += 1;
        }
        ino
    }

    fn exists(&self, parent: Ino, name: &OsStr) -> Result<Option<Ino>> {
        match self.lookup_ino(parent, name) {
            Ok(i) => Ok(Some(i)),
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Prepares `parent/name` for a new entry: the parent in the upper, no whiteout in the way.
    /// Returns the new entry's absolute upper path and whether lowers have the name.
    fn prepare_new(&self, parent: Ino, name: &OsStr) -> Result<(SysPath, bool)> {
        check_name(name)?;
        if self.exists(parent, name)?.is_some() {
            return Err(FsError::Exists);
        }
        self.prepare_absent(parent, name)
    }

    /// `prepare_new` for a name the caller has just found absent (holding the namespace lock).
    fn prepare_absent(&self, parent: Ino, name: &OsStr) -> Result<(SysPath, bool)> {
        let u = self.upper()?;
        let prel = self.ensure_upper_dir(parent)?;
        let ps = self.state(parent)?;
        let lower_has = !self.lower_child(&ps.lower, name)?.0.is_empty();
        // Whiteouts are only ever written over names a lower has.
        if lower_has {
            u.clear_whiteout(&prel, name)?;
        }
        Ok((u.path(&prel).join(name), lower_has))
    }

    /// Gives a new entry at `path` (maybe still in `work/`) the caller as owner, or the group of
    /// a setgid `parent` (and, for a directory, the setgid bit), as a plain filesystem would.
    fn chown_new(&self, path: &Path, parent: &Path, caller: Caller) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let pmd = parent.metadata().map_err(FsError::io("stat", parent))?;
        let sgid = pmd.mode() & libc::S_ISGID != 0;
        if self.euid_root {
            let gid = if sgid { pmd.gid() } else { caller.gid };
            std::os::unix::fs::lchown(path, Some(caller.uid), Some(gid))
                .map_err(FsError::io("chown", path))?;
        }
        if sgid {
            let md = path.symlink_metadata().map_err(FsError::io("stat", path))?;
            if md.is_dir() && md.mode() & libc::S_ISGID == 0 {
                let mode = std::fs::Permissions::from_mode(md.mode() | libc::S_ISGID);
                std::fs::set_permissions(path, mode).map_err(FsError::io("chmod", path))?;
            }
        }
        Ok(())
    }

    /// Opens a file. Opening for writing (or with `O_TRUNC`) copies a lower file up first.
    ///
    /// # Errors
    /// `ReadOnly` when writing without an upper; I/O errors.
    pub fn open(&self, ino: Ino, flags: i32) -> Result<Fh> {
        let s = self.state(ino)?;
        if s.kind == EntryKind::Dir {
            return Err(FsError::IsDir);
        }
        let acc = flags & libc::O_ACCMODE;
        let trunc = flags & libc::O_TRUNC != 0;
        if acc == libc::O_RDONLY && !trunc {
            if s.upper && !s.metacopy {
                let p = self.upper()?.path(&self.path_of(ino)?);
                let f = File::open(&p).map_err(FsError::io("open", &p))?;
                return Ok(self.add_handle(ino, HandleData::Upper(f)));
            }
            let r = *s.lower.last().ok_or(FsError::StaleInode(ino.0))?;
            return Ok(self.add_handle(
                ino,
                HandleData::Lower {
                    lower: r,
                    file: OnceLock::new(),
                },
            ));
        }
        let u = self.upper()?;
        {
            let _ns = self.ns.read();
            self.copy_up(ino, false)?;
        }
        // The data (maybe gigabytes) is copied without the namespace lock.
        if !trunc {
            self.fill(ino, false)?;
        }
        let _ns = self.ns.read();
        let path = u.path(&self.path_of(ino)?);
        let lock = self.copy_lock(ino)?;
        let _g = lock.lock();
        if trunc && self.state(ino)?.metacopy {
            u.clear_metacopy_path(&path)?;
            if let Some(n) = self.table.write().get_mut(ino) {
                n.metacopy = false;
                n.lower.clear();
            }
        }
        // Read access too when allowed: with the writeback cache the kernel reads pages of
        // write-only files.
        let open = |read: bool| {
            OpenOptions::new()
                .read(read)
                .write(true)
                .append(flags & libc::O_APPEND != 0 && !self.writeback_cache)
                .truncate(trunc)
                .custom_flags(flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME))
                .open(&path)
        };
        let f = open(true)
            .or_else(|e| {
                if acc == libc::O_WRONLY {
                    open(false)
                } else {
                    Err(e)
                }
            })
            .map_err(FsError::io("open", &path))?;
        Ok(self.add_handle(ino, HandleData::Upper(f)))
    }

    /// Creates and opens a regular file (`O_EXCL` honoured; an existing file is opened).
    ///
    /// # Errors
    /// `Exists` with `O_EXCL`; `ReadOnly`; `ReservedName`; I/O errors.
    pub fn create(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Entry, Fh)> {
        let _changed = NamesChanged(self);
        check_name(name)?;
        self.upper()?;
        let _ns = self.ns.read();
        if let Some(ino) = self.exists(parent, name)? {
            if flags & libc::O_EXCL != 0 {
                return Err(FsError::Exists);
            }
            drop(_ns);
            let fh = self.open(ino, flags)?;
            let e = self.lookup(parent, name)?;
            return Ok((e, fh));
        }
        let (path, _) = self.prepare_absent(parent, name)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .append(flags & libc::O_APPEND != 0 && !self.writeback_cache)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(FsError::io("create", &path))?;
        // Everything below works on the fd: no more path walks for a new file.
        let p = &path;
        let fd_err = |op| move |e: rustix::io::Errno| FsError::io(op, p)(e.into());
        rustix::fs::fchmod(&f, Mode::from_raw_mode(mode & !umask & 0o7777))
            .map_err(fd_err("chmod"))?;
        if self.euid_root {
            let parent_dir = path.parent().unwrap_or(&path);
            let pmd = rustix::fs::stat(parent_dir).map_err(fd_err("stat parent"))?;
            let gid = if pmd.st_mode & libc::S_ISGID != 0 {
                pmd.st_gid
            } else {
                caller.gid
            };
            rustix::fs::fchown(
                &f,
                Some(rustix::fs::Uid::from_raw(caller.uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(fd_err("chown"))?;
        }
        let md = f.metadata().map_err(FsError::io("fstat", &path))?;
        let ino = self.attach_new(parent, name, EntryKind::File);
        let e = Entry {
            attr: super::attr_from_md(ino, &md),
            immutable: false,
        };
        let fh = self.add_handle(ino, HandleData::Upper(f));
        Ok((e, fh))
    }

    /// Writes to an open file; returns the bytes written.
    ///
    /// # Errors
    /// `BadHandle`, `ReadOnly` for read-only handles, I/O errors.
    pub fn write(&self, fh: Fh, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.handle(fh)?;
        match &h.data {
            HandleData::Upper(f) => {
                f.write_all_at(data, offset)
                    .map_err(FsError::io("write", "<upper file>"))?;
                Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
            }
            HandleData::Lower { .. } => Err(FsError::BadHandle(fh.0)),
            HandleData::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// `fallocate(2)` on an open file (mode bits as the syscall takes them).
    ///
    /// # Errors
    /// `BadHandle` for read-only handles; the upper filesystem's error otherwise.
    pub fn fallocate(&self, fh: Fh, offset: u64, length: u64, mode: i32) -> Result<()> {
        let h = self.handle(fh)?;
        match &h.data {
            HandleData::Upper(f) => {
                let flags = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
                rustix::fs::fallocate(f, flags, offset, length)
                    .map_err(|e| FsError::io("fallocate", "<upper file>")(e.into()))
            }
            HandleData::Lower { .. } => Err(FsError::BadHandle(fh.0)),
            HandleData::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// `lseek(2)` for `SEEK_DATA`/`SEEK_HOLE` (and the others) on an open file.
    ///
    /// # Errors
    /// `Unsupported` for lower contents kept in memory; the filesystem's error otherwise
    /// (`ENXIO` past the last data).
    pub fn lseek(&self, fh: Fh, offset: i64, whence: i32) -> Result<i64> {
        use rustix::fs::SeekFrom;
        let h = self.handle(fh)?;
        let f = match &h.data {
            HandleData::Upper(f) => f,
            HandleData::Lower { lower, file } => match self.lower_file(*lower, file)? {
                Some(f) => f,
                None => return Err(FsError::Unsupported("lseek")),
            },
            HandleData::Dir(_) => return Err(FsError::IsDir),
        };
        let off = u64::try_from(offset).map_err(|_| FsError::Invalid("negative offset"))?;
        let pos = match whence {
            libc::SEEK_SET => SeekFrom::Start(off),
            libc::SEEK_CUR => SeekFrom::Current(offset),
            libc::SEEK_END => SeekFrom::End(offset),
            libc::SEEK_DATA => SeekFrom::Data(off),
            libc::SEEK_HOLE => SeekFrom::Hole(off),
            _ => return Err(FsError::Invalid("lseek whence")),
        };
        // The handle's fd is only used for positioned I/O, so moving its offset is harmless.
        let r = rustix::fs::seek(f, pos).map_err(|e| FsError::io("lseek", "<file>")(e.into()))?;
        i64::try_from(r).map_err(|_| FsError::Invalid("offset overflow"))
    }

    /// Flushes an open file to disk.
    ///
    /// # Errors
    /// I/O errors of the upper.
    pub fn fsync(&self, fh: Fh, datasync: bool) -> Result<()> {
        let h = self.handle(fh)?;
        if let HandleData::Upper(f) = &h.data {
            let r = if datasync {
                f.sync_data()
            } else {
                f.sync_all()
            };
            r.map_err(FsError::io("fsync", "<upper file>"))?;
        }
        Ok(())
    }

    /// Creates a directory; it is opaque when lower layers had the name (then whited out).
    ///
    /// # Errors
    /// `Exists`, `ReadOnly`, `ReservedName`, I/O errors.
    pub fn mkdir(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<Entry> {
        let _changed = NamesChanged(self);
        let _ns = self.ns.read();
        let (path, lower_has) = self.prepare_new(parent, name)?;
        let u = self.upper()?;
        let tmp = u.tmp_path();
        std::fs::create_dir(&tmp).map_err(FsError::io("mkdir", &tmp))?;
        std::fs::set_permissions(
            &tmp,
            std::fs::Permissions::from_mode(mode & !umask & 0o7777),
        )
        .map_err(FsError::io("chmod", &tmp))?;
        self.chown_new(&tmp, path.parent().unwrap_or(&path), caller)?;
        if lower_has {
            u.set_opaque(&tmp)?;
        }
        std::fs::rename(&tmp, &path).map_err(FsError::io("rename new dir", &path))?;
        self.new_entry(parent, name, EntryKind::Dir)
    }

    /// Creates a fifo, socket, regular file or (as root) a device. A char device 0/0 is refused:
    /// it is the whiteout spelling.
    ///
    /// # Errors
    /// `Exists`, `ReadOnly`, `NotPermitted`, I/O errors.
    pub fn mknod(
        &self,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u64,
        caller: Caller,
    ) -> Result<Entry> {
        let _changed = NamesChanged(self);
        let (ft, kind) = match mode & libc::S_IFMT {
            libc::S_IFIFO => (FileType::Fifo, EntryKind::Fifo),
            libc::S_IFCHR => (FileType::CharacterDevice, EntryKind::CharDev),
            libc::S_IFBLK => (FileType::BlockDevice, EntryKind::BlockDev),
            libc::S_IFSOCK => (FileType::Socket, EntryKind::Socket),
            libc::S_IFREG | 0 => (FileType::RegularFile, EntryKind::File),
            _ => return Err(FsError::Invalid("mknod of this file type")),
        };
        if kind == EntryKind::CharDev && rdev == 0 {
            return Err(FsError::NotPermitted(
                "char device 0/0 is the whiteout spelling",
            ));
        }
        let _ns = self.ns.read();
        let (path, _) = self.prepare_new(parent, name)?;
        rustix::fs::mknodat(CWD, &*path, ft, Mode::from_raw_mode(0o600), rdev)
            .map_err(|e| FsError::io("mknod", &path)(e.into()))?;
        std::fs::set_permissions(
            &path,
            std::fs::Permissions::from_mode(mode & !umask & 0o7777),
        )
        .map_err(FsError::io("chmod", &path))?;
        self.chown_new(&path, path.parent().unwrap_or(&path), caller)?;
        self.new_entry(parent, name, kind)
    }

    /// Creates a symlink.
    ///
    /// # Errors
    /// `Exists`, `ReadOnly`, I/O errors.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &OsStr,
        target: &Path,
        caller: Caller,
    ) -> Result<Entry> {
        let _changed = NamesChanged(self);
        let _ns = self.ns.read();
        let (path, _) = self.prepare_new(parent, name)?;
        std::os::unix::fs::symlink(target, &path).map_err(FsError::io("symlink", &path))?;
        self.chown_new(&path, path.parent().unwrap_or(&path), caller)?;
        self.new_entry(parent, name, EntryKind::Symlink)
    }

    /// Adds a hard link `new_parent/new_name` to `ino`; a lower file is copied up as a
    /// metadata-only placeholder first, and both names stay one inode.
    ///
    /// # Errors
    /// `Exists`, `NotPermitted` for directories, `ReadOnly`, I/O errors.
    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &OsStr) -> Result<Entry> {
        let _changed = NamesChanged(self);
        let _ns = self.ns.read();
        let s = self.state(ino)?;
        if s.kind == EntryKind::Dir {
            return Err(FsError::NotPermitted("hard link to a directory"));
        }
        let (path, _) = self.prepare_new(new_parent, new_name)?;
        self.copy_up(ino, false)?;
        let u = self.upper()?;
        let src = u.path(&self.path_of(ino)?);
        if self.state(ino)?.metacopy {
            // The marker is shared by every name from now on: point it at the data from the
            // root, so each name finds it (as overlayfs does for hard links).
            let lower = self.lower_path_of(ino)?;
            self.redirect_file(ino, &src, &Redirect::Absolute(lower))?;
        }
        if self.state(ino)?.metacopy {
            u.mark_parent_impure(&path);
        }
        std::fs::hard_link(&src, &path).map_err(FsError::io("link", &path))?;
        {
            let mut t = self.table.write();
            if let Some(n) = t.get_mut(ino)
                && n.nlink.is_none()
                && !n.lower.is_empty()
            {
                // First extra name of a lower file: from now on the union counts.
                let count = n.aliases.len() as u32 + 1;
                n.nlink = Some(count);
            }
            t.add_alias(ino, new_parent, new_name);
            if let Some(n) = t.get_mut(ino) {
                n.lookups += 1;
            }
        }
        self.entry(ino)
    }

    /// Removes a non-directory name; a whiteout hides it when a lower has it.
    ///
    /// # Errors
    /// `NotFound`, `IsDir`, `ReadOnly`, I/O errors.
    pub fn unlink(&self, parent: Ino, name: &OsStr) -> Result<()> {
        let _changed = NamesChanged(self);
        let u = self.upper()?;
        let _ns = self.ns.write();
        let ino = self.lookup_ino(parent, name)?;
        let s = self.state(ino)?;
        if s.kind == EntryKind::Dir {
            return Err(FsError::IsDir);
        }
        let before = self.attr_of(ino, &s, None).ok();
        if !s.upper {
            // A lower-only name: the upper has neither it nor a whiteout of it (the lookup just
            // checked), so one mknod of the whiteout does it.
            let prel = self.ensure_upper_dir(parent)?;
            u.make_whiteout_absent(&prel, name)?;
            self.detach_name(parent, name, before);
            return Ok(());
        }
        let ps = self.state(parent)?;
        let need_wh = !self.lower_child(&ps.lower, name)?.0.is_empty();
        let prel = self.ensure_upper_dir(parent)?;
        if need_wh {
            u.make_whiteout(&prel, name)?;
        } else {
            let p = u.path(&prel).join(name);
            std::fs::remove_file(&p).map_err(FsError::io("unlink", &p))?;
        }
        self.detach_name(parent, name, before);
        Ok(())
    }

    /// Removes an empty merged directory; a whiteout hides it when a lower has it.
    ///
    /// # Errors
    /// `NotFound`, `NotDir`, `NotEmpty`, `ReadOnly`, I/O errors.
    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> Result<()> {
        let _changed = NamesChanged(self);
        let u = self.upper()?;
        let _ns = self.ns.write();
        let ino = self.lookup_ino(parent, name)?;
        let s = self.state(ino)?;
        if s.kind != EntryKind::Dir {
            return Err(FsError::NotDir);
        }
        if !self.list_merged(ino)?.is_empty() {
            return Err(FsError::NotEmpty);
        }
        let before = self.attr_of(ino, &s, None).ok();
        let ps = self.state(parent)?;
        let need_wh = !self.lower_child(&ps.lower, name)?.0.is_empty();
        let prel = self.ensure_upper_dir(parent)?;
        if s.upper {
            u.empty_dir(&prel.join(name))?;
        }
        if need_wh {
            u.make_whiteout(&prel, name)?;
        } else {
            let p = u.path(&prel).join(name);
            std::fs::remove_dir(&p).map_err(FsError::io("rmdir", &p))?;
        }
        self.detach_name(parent, name, before);
        Ok(())
    }

    /// Renames a file or directory, lower ones included: a lower directory moves by a redirect
    /// marker (never `EXDEV`), a lower file by a metadata-only copy-up.
    ///
    /// # Errors
    /// `NotFound`, `Exists` (`RENAME_NOREPLACE`), `NotDir`, `IsDir`, `NotEmpty`, `Invalid`
    /// (a directory into itself), `Unsupported` (`RENAME_EXCHANGE`/`RENAME_WHITEOUT`), I/O errors.
    pub fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let _changed = NamesChanged(self);
        if flags & (libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT) != 0 {
            return Err(FsError::Unsupported("RENAME_EXCHANGE and RENAME_WHITEOUT"));
        }
        check_name(new_name)?;
        let u = self.upper()?;
        let _ns = self.ns.write();
        let src = self.lookup_ino(parent, name)?;
        let ss = self.state(src)?;
        let dst = self.exists(new_parent, new_name)?;
        if let Some(d) = dst {
            if d == src {
                return Ok(());
            }
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
            let ds = self.state(d)?;
            if ss.kind == EntryKind::Dir {
                if ds.kind != EntryKind::Dir {
                    return Err(FsError::NotDir);
                }
                if !self.list_merged(d)?.is_empty() {
                    return Err(FsError::NotEmpty);
                }
            } else if ds.kind == EntryKind::Dir {
                return Err(FsError::IsDir);
            }
        }
        if ss.kind == EntryKind::Dir {
            let t = self.table.read();
            let mut cur = new_parent;
            while cur != super::ROOT_INO {
                if cur == src {
                    return Err(FsError::Invalid("cannot move a directory into itself"));
                }
                cur = t.get(cur).map_or(super::ROOT_INO, |n| n.parent);
            }
        }
        let sp = self.state(parent)?;
        let np = self.state(new_parent)?;
        let src_need_wh = !self.lower_child(&sp.lower, name)?.0.is_empty();
        let dst_lower_has = !self.lower_child(&np.lower, new_name)?.0.is_empty();
        if ss.kind == EntryKind::Dir && !ss.lower.is_empty() && !self.redirect_dir {
            // redirect_dir=off: no redirect may be written, so the kernel's answer.
            return Err(FsError::Io {
                op: "rename a directory with lower content (redirect_dir=off)",
                path: PathBuf::from(name),
                source: std::io::Error::from_raw_os_error(libc::EXDEV),
            });
        }
        let prel = self.ensure_upper_dir(parent)?;
        let nrel = self.ensure_upper_dir(new_parent)?;
        if ss.kind == EntryKind::Dir {
            self.ensure_upper_dir(src)?;
        } else {
            self.copy_up(src, false)?;
        }
        let from = u.path(&prel).join(name);
        let to = u.path(&nrel).join(new_name);
        if ss.kind != EntryKind::Dir && from.symlink_metadata().is_err() {
            // Another name of a hard-link group was copied up: link this name to that copy.
            let primary = u.path(&self.path_of(src)?);
            std::fs::hard_link(&primary, &from).map_err(FsError::io("link", &from))?;
        }
        // Where the moved entry's lower content lives; after the move it can no longer be
        // derived from its new parent and name, so it is pinned (`lower_origin`).
        let src_lower_path = self.lower_path_of(src)?;
        // The moved entry's redirect is written before the move (a crash leaves the old name
        // with a redirect that still finds its own content): for a directory with lower
        // content, and for a metadata-only file.
        let src_now = self.state(src)?;
        let lower_content = if ss.kind == EntryKind::Dir {
            !ss.lower.is_empty()
        } else {
            src_now.metacopy
        };
        if lower_content {
            let shared = ss.kind != EntryKind::Dir && src_now.nlink.is_some_and(|n| n > 1)
                || !src_now.aliases.is_empty();
            match self.redirect_for(new_parent, new_name, &src_lower_path, shared)? {
                Some(r) if ss.kind == EntryKind::Dir => u.set_redirect(&from, &r)?,
                Some(r) => self.redirect_file(src, &from, &r)?,
                None => u.clear_redirect_path(&from)?,
            }
        } else if ss.kind == EntryKind::Dir && dst_lower_has {
            u.set_opaque(&from)?;
        }
        if let Some(d) = dst
            && self.state(d)?.kind == EntryKind::Dir
            && to.symlink_metadata().is_ok()
        {
            u.empty_dir(&nrel.join(new_name))?;
        }
        let replaced = match dst {
            Some(d) => self
                .state(d)
                .ok()
                .and_then(|ds| self.attr_of(d, &ds, None).ok()),
            None => None,
        };
        u.clear_whiteout(&nrel, new_name)?;
        if lower_content {
            u.mark_parent_impure(&to);
        }
        std::fs::rename(&from, &to).map_err(FsError::io("rename", &to))?;
        if src_need_wh {
            u.make_whiteout(&prel, name)?;
        }
        let mut t = self.table.write();
        if dst.is_some() {
            detach_keeping(&mut t, new_parent, new_name, replaced);
        }
        t.rename(parent, name, new_parent, new_name);
        if let Some(n) = t.get_mut(src) {
            n.upper = true;
            if !n.lower.is_empty() {
                n.lower_origin = Some(src_lower_path.into_boxed_path());
            }
        }
        Ok(())
    }

    /// Changes attributes. Mode, owner and times of a lower file are a metadata-only copy-up;
    /// a size change copies the data (none for size 0).
    ///
    /// # Errors
    /// `ReadOnly`, `IsDir` (size of a dir), I/O errors.
    pub fn setattr(&self, ino: Ino, set: SetAttr, fh: Option<Fh>) -> Result<Attr> {
        let u = self.upper()?;
        let _ns = self.ns.read();
        let s = self.state(ino)?;
        if s.unlinked {
            // No name left: only an open upper file can still change (ftruncate/fchmod after
            // unlink; the writeback cache also flushes times of unlinked files). Never
            // recreate the old name.
            return self.setattr_unlinked(ino, set, fh);
        }
        if let Some(size) = set.size {
            if s.kind == EntryKind::Dir {
                return Err(FsError::IsDir);
            }
            self.copy_up(ino, size != 0)?;
            let path = u.path(&self.path_of(ino)?);
            if self.state(ino)?.metacopy {
                // size == 0: the lower data is not needed any more.
                u.clear_metacopy_path(&path)?;
                if let Some(n) = self.table.write().get_mut(ino) {
                    n.metacopy = false;
                    n.lower.clear();
                }
            }
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(FsError::io("open", &path))?;
            f.set_len(size).map_err(FsError::io("truncate", &path))?;
        }
        let meta = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.atime.is_some()
            || set.mtime.is_some();
        if meta {
            self.copy_up(ino, false)?;
            let path = u.path(&self.path_of(ino)?);
            if set.uid.is_some() || set.gid.is_some() {
                std::os::unix::fs::lchown(&path, set.uid, set.gid)
                    .or_else(|e| self.chown_failed(e))
                    .map_err(FsError::io("chown", &path))?;
            }
            if let Some(mode) = set.mode
                && s.kind != EntryKind::Symlink
            {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(FsError::io("chmod", &path))?;
            }
            if set.atime.is_some() || set.mtime.is_some() {
                set_times_nofollow(&path, ts(set.atime), ts(set.mtime))?;
            }
        }
        self.getattr(ino, fh)
    }

    /// A chown of the upper failed with `e`: an error, unless failures are ignored.
    fn chown_failed(&self, e: std::io::Error) -> std::io::Result<()> {
        if self.ignore_chown_errors {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// Clears setuid, and setgid unless the file is not group-executable and `caller_gid` is
    /// its group, as a write or truncate by a caller without `CAP_FSETID` does on any
    /// filesystem. Returns the new attributes when something changed.
    ///
    /// # Errors
    /// As `setattr`.
    pub fn kill_suid(&self, ino: Ino, fh: Option<Fh>, caller_gid: u32) -> Result<Option<Attr>> {
        let a = self.getattr(ino, fh)?;
        if a.kind != EntryKind::File {
            return Ok(None);
        }
        let mut mode = a.perm & !libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 || caller_gid != a.gid {
            mode &= !libc::S_ISGID;
        }
        if mode == a.perm {
            return Ok(None);
        }
        let set = SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        self.setattr(ino, set, fh).map(Some)
    }

    /// The redirect that makes an entry at `parent/name` find its lower content at
    /// `lower_path` (a path in the lowers): none at its own place, a bare name when only the
    /// name differs, else the path from the root (always, with `absolute`).
    fn redirect_for(
        &self,
        parent: Ino,
        name: &OsStr,
        lower_path: &Path,
        absolute: bool,
    ) -> Result<Option<Redirect>> {
        let plower = self.lower_path_of(parent)?;
        if !absolute
            && lower_path.parent() == Some(plower.as_path())
            && let Some(n) = lower_path.file_name()
        {
            return Ok((n != name).then(|| Redirect::Relative(n.to_owned())));
        }
        Ok(Some(Redirect::Absolute(lower_path.to_path_buf())))
    }

    /// Points the placeholder `ino` (at `path`) at its data with `r`; where the upper cannot
    /// store that (a path too long for one xattr value), gives it its data instead.
    fn redirect_file(&self, ino: Ino, path: &Path, r: &Redirect) -> Result<()> {
        match self.upper()?.set_redirect(path, r) {
            Ok(()) => Ok(()),
            Err(_) => self.fill(ino, true),
        }
    }

    /// Removes the name `parent/name` from the table. When that was the inode's last name,
    /// `before` (its attributes just before the removal) is kept for `fstat` and friends
    /// through descriptors still open on it.
    fn detach_name(&self, parent: Ino, name: &OsStr, before: Option<Attr>) {
        detach_keeping(&mut self.table.write(), parent, name, before);
    }

    /// `setattr` of an inode with no name left: through an open upper file of it when there
    /// is one (`ftruncate`, and `fchmod`/`fchown`/`futimens`, for which the kernel sends no
    /// handle), else on the attributes kept in memory (a removed directory or lower file:
    /// nothing on disk can be reached, and nothing will ever read it there again).
    fn setattr_unlinked(&self, ino: Ino, set: SetAttr, fh: Option<Fh>) -> Result<Attr> {
        let s = self.state(ino)?;
        let Some(h) = self.upper_handle(ino, &s, fh) else {
            let mut t = self.table.write();
            if let Some(a) = t.get_mut(ino).and_then(|n| n.gone.as_mut()) {
                set_in_memory(a, &set);
            }
            drop(t);
            return self.getattr(ino, fh);
        };
        if let HandleData::Upper(f) = &h.data {
            let io = |op| move |e: rustix::io::Errno| FsError::io(op, "<unlinked file>")(e.into());
            if let Some(size) = set.size {
                f.set_len(size)
                    .map_err(FsError::io("truncate", "<unlinked file>"))?;
            }
            if set.uid.is_some() || set.gid.is_some() {
                let uid = set.uid.map(rustix::fs::Uid::from_raw);
                let gid = set.gid.map(rustix::fs::Gid::from_raw);
                rustix::fs::fchown(f, uid, gid)
                    .or_else(|e| self.chown_failed(e.into()))
                    .map_err(|e| FsError::io("chown", "<unlinked file>")(e))?;
            }
            if let Some(mode) = set.mode {
                rustix::fs::fchmod(f, Mode::from_raw_mode(mode & 0o7777)).map_err(io("chmod"))?;
            }
            if set.atime.is_some() || set.mtime.is_some() {
                let t = Timestamps {
                    last_access: ts(set.atime),
                    last_modification: ts(set.mtime),
                };
                rustix::fs::futimens(f, &t).map_err(io("utimens"))?;
            }
        }
        self.getattr(ino, fh)
    }

    /// Sets an xattr (copying a lower entry up, metadata only). Internal names are refused.
    ///
    /// # Errors
    /// `InternalXattr`, `ReadOnly`, I/O errors.
    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        if is_internal_xattr(name.as_bytes()) {
            return Err(FsError::InternalXattr(name.to_string_lossy().into_owned()));
        }
        let u = self.upper()?;
        let _ns = self.ns.read();
        self.copy_up(ino, false)?;
        let path = u.path(&self.path_of(ino)?);
        xattr::set(&path, name.as_bytes(), value, flags).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODATA) => FsError::NoXattr,
            _ => FsError::io("setxattr", &path)(e),
        })
    }

    /// Removes an xattr (copying a lower entry up, metadata only).
    ///
    /// # Errors
    /// `NoXattr`, `InternalXattr`, `ReadOnly`, I/O errors.
    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> Result<()> {
        if is_internal_xattr(name.as_bytes()) {
            return Err(FsError::InternalXattr(name.to_string_lossy().into_owned()));
        }
        self.getxattr(ino, name)?;
        let u = self.upper()?;
        let _ns = self.ns.read();
        self.copy_up(ino, false)?;
        let path = u.path(&self.path_of(ino)?);
        xattr::remove(&path, name.as_bytes()).map_err(|e| match e.raw_os_error() {
            Some(libc::ENODATA) => FsError::NoXattr,
            _ => FsError::io("removexattr", &path)(e),
        })
    }
}

/// Removes the name `parent/name` from the table; when that was the inode's last name, keeps
/// `before` (its attributes just before the removal, `st_nlink` 0) for descriptors still open.
fn detach_keeping(t: &mut super::InodeTable, parent: Ino, name: &OsStr, before: Option<Attr>) {
    if let Some(ino) = t.detach(parent, name)
        && let Some(n) = t.get_mut(ino)
        && n.unlinked
    {
        n.gone = before.map(|mut a| {
            a.nlink = 0;
            Box::new(a)
        });
    }
}

/// Applies `set` to attributes kept in memory (see [`UnionFs::setattr_unlinked`]).
fn set_in_memory(a: &mut Attr, set: &SetAttr) {
    let now = SystemTime::now();
    let at = |t: SetTime| match t {
        SetTime::Now => now,
        SetTime::At(t) => t,
    };
    if let Some(m) = set.mode {
        a.perm = m & 0o7777;
    }
    if let Some(u) = set.uid {
        a.uid = u;
    }
    if let Some(g) = set.gid {
        a.gid = g;
    }
    if let Some(size) = set.size {
        a.size = size;
    }
    if let Some(t) = set.atime {
        a.atime = at(t);
    }
    if let Some(t) = set.mtime {
        a.mtime = at(t);
    }
    a.ctime = now;
}

/// Calls [`UnionFs::names_changed`] when dropped: at the end of an operation on names, on
/// every path out of it.
struct NamesChanged<'a>(&'a UnionFs);

impl Drop for NamesChanged<'_> {
    fn drop(&mut self) {
        self.0.names_changed();
    }
}
