//! The upper directory on disk: paths, whiteouts, markers and the data-copy primitives.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{AtFlags, CWD, FileType, Mode};

use crate::dirtree::{WHITEOUT_PREFIX, is_whiteout_dev};
use crate::error::{FsError, Result};
use crate::longpath::{Base, SysPath};
use crate::lower::Redirect;
use crate::marker;
use crate::xattr;

/// Opaque marker read and written by kernel overlayfs as root.
pub(crate) const OPAQUE_TRUSTED: &[u8] = b"trusted.overlay.opaque";
/// Opaque marker kernel overlayfs reads with `userxattr` (rootless).
pub(crate) const OPAQUE_USER: &[u8] = b"user.overlay.opaque";
/// Prefix of the temp names inside the work directory.
const TMP_PREFIX: &str = "strata-tmp-";
/// Chunk size of the read/write fallback copy loop.
const COPY_CHUNK: usize = 1 << 20;

/// The writable upper directory and its work directory (same filesystem, for `rename(2)`).
#[derive(Debug)]
pub(crate) struct Upper {
    pub(crate) dir: PathBuf,
    /// `dir`, held open: entries too deep for one path string are named from it.
    base: std::sync::Arc<Base>,
    pub(crate) work: PathBuf,
    /// Whiteouts are `.wh.NAME` files because `mknod` of char 0/0 was refused.
    wh_files: AtomicBool,
    /// Opaque dirs are marked with `user.overlay.opaque` because `trusted.*` was refused.
    user_opaque: AtomicBool,
    tmp: AtomicU64,
    pub(crate) fsync: bool,
}

impl Upper {
    pub(crate) fn open(dir: PathBuf, work: PathBuf, fsync: bool) -> Result<Upper> {
        use std::os::unix::fs::MetadataExt;
        let md = dir
            .metadata()
            .map_err(FsError::io("open upper dir", &dir))?;
        let wmd = work
            .metadata()
            .map_err(FsError::io("open work dir", &work))?;
        if !md.is_dir() || !wmd.is_dir() {
            return Err(FsError::Config(format!(
                "upper {} and work {} must both be directories",
                dir.display(),
                work.display()
            )));
        }
        if md.dev() != wmd.dev() {
            return Err(FsError::Config(format!(
                "upper {} and work {} must be on the same filesystem",
                dir.display(),
                work.display()
            )));
        }
        // A crash can leave half-copied temp files; nothing in work/ is ever needed again.
        for e in std::fs::read_dir(&work).map_err(FsError::io("clean work dir", &work))? {
            let e = e.map_err(FsError::io("clean work dir", &work))?;
            let p = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(FsError::io("clean work dir", &p))?;
        }
        let base = Base::open(&dir).map_err(FsError::io("open upper dir", &dir))?;
        let u = Upper {
            dir,
            base,
            work,
            wh_files: AtomicBool::new(false),
            user_opaque: AtomicBool::new(false),
            tmp: AtomicU64::new(0),
            fsync,
        };
        u.probe();
        Ok(u)
    }

    /// Finds out once which whiteout and opaque spellings this upper filesystem accepts.
    fn probe(&self) {
        let t = self.tmp_path();
        if rustix::fs::mknodat(CWD, &t, FileType::CharacterDevice, Mode::empty(), 0).is_err() {
            self.wh_files.store(true, Ordering::Relaxed);
        }
        let _ = std::fs::remove_file(&t);
        let t = self.tmp_path();
        if std::fs::create_dir(&t).is_ok() {
            if xattr::set(&t, OPAQUE_TRUSTED, b"y", 0).is_err() {
                self.user_opaque.store(true, Ordering::Relaxed);
            }
            let _ = std::fs::remove_dir(&t);
        }
    }

    /// The upper copy of the merged path `rel`, as a path one syscall takes however deep it is
    /// (see [`SysPath`]).
    pub(crate) fn path(&self, rel: &Path) -> SysPath {
        SysPath::new(&self.base, rel)
    }

    pub(crate) fn tmp_path(&self) -> PathBuf {
        let n = self.tmp.fetch_add(1, Ordering::Relaxed);
        self.work
            .join(format!("{TMP_PREFIX}{}-{n}", std::process::id()))
    }

    /// Whether `dir_rel/name` is hidden by a `.wh.NAME` whiteout file in the upper, for a name
    /// that the upper does not have itself (the char 0/0 spelling is the name itself).
    pub(crate) fn has_wh_file(&self, dir: &SysPath, name: &OsStr) -> bool {
        // A name too long for a `.wh.` spelling simply has none.
        has_wh_spelling(name)
            && rustix::fs::statat(CWD, &*dir.join(wh_name(name)), AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Replaces whatever is at `dir_rel/name` (nothing, a non-dir or an empty dir) by a whiteout.
    /// The whiteout is made first, so a failure leaves the entry in place.
    pub(crate) fn make_whiteout(&self, dir_rel: &Path, name: &OsStr) -> Result<()> {
        let target = self.path(dir_rel).join(name);
        if !self.wh_files.load(Ordering::Relaxed) {
            let t = self.tmp_path();
            match rustix::fs::mknodat(CWD, &t, FileType::CharacterDevice, Mode::empty(), 0) {
                Ok(()) => {
                    if target.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                        std::fs::remove_dir(&target).map_err(FsError::io("rmdir", &target))?;
                    }
                    return std::fs::rename(&t, &target).map_err(FsError::io("whiteout", &target));
                }
                Err(rustix::io::Errno::PERM) => self.wh_files.store(true, Ordering::Relaxed),
                Err(e) => return Err(FsError::io("mknod whiteout", &t)(e.into())),
            }
        }
        let wh = self.path(dir_rel).join(wh_name(name));
        File::create(&wh).map_err(FsError::io("create whiteout", &wh))?;
        match target.symlink_metadata() {
            Ok(md) if md.is_dir() => {
                std::fs::remove_dir(&target).map_err(FsError::io("rmdir", &target))
            }
            Ok(_) => std::fs::remove_file(&target).map_err(FsError::io("unlink", &target)),
            Err(_) => Ok(()),
        }
    }

    /// Whiteout for a name that the upper does not have at all (neither an entry nor a
    /// whiteout): one `mknod` at the name (atomic, so no temp file and rename), else the
    /// general path.
    pub(crate) fn make_whiteout_absent(&self, dir_rel: &Path, name: &OsStr) -> Result<()> {
        if !self.wh_files.load(Ordering::Relaxed) {
            let target = self.path(dir_rel).join(name);
            match rustix::fs::mknodat(CWD, &*target, FileType::CharacterDevice, Mode::empty(), 0) {
                Ok(()) => return Ok(()),
                Err(rustix::io::Errno::PERM) => self.wh_files.store(true, Ordering::Relaxed),
                Err(rustix::io::Errno::EXIST) => return self.make_whiteout(dir_rel, name),
                Err(e) => return Err(FsError::io("mknod whiteout", &target)(e.into())),
            }
        }
        let wh = self.path(dir_rel).join(wh_name(name));
        File::create(&wh).map_err(FsError::io("create whiteout", &wh))?;
        Ok(())
    }

    /// Removes a whiteout of `dir_rel/name`, if any, so a new entry can take the name.
    pub(crate) fn clear_whiteout(&self, dir_rel: &Path, name: &OsStr) -> Result<()> {
        let dir = self.path(dir_rel);
        let p = dir.join(name);
        if p.symlink_metadata().is_ok_and(|m| is_whiteout_dev(&m)) {
            std::fs::remove_file(&p).map_err(FsError::io("remove whiteout", &p))?;
        }
        if !has_wh_spelling(name) {
            return Ok(());
        }
        let wh = dir.join(wh_name(name));
        match std::fs::remove_file(&*wh) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(FsError::io("remove whiteout", &wh)(e)),
        }
    }

    /// Removes everything from an upper dir whose merged view is empty (only whiteouts left).
    pub(crate) fn empty_dir(&self, rel: &Path) -> Result<()> {
        let p = self.path(rel);
        for e in std::fs::read_dir(&p).map_err(FsError::io("read dir", &p))? {
            let e = e.map_err(FsError::io("read dir", &p))?;
            let c = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&c).map_err(FsError::io("remove", &c))?;
            } else {
                std::fs::remove_file(&c).map_err(FsError::io("remove", &c))?;
            }
        }
        Ok(())
    }

    /// The metacopy/redirect spelling this upper takes (`trusted.` as root, else `user.`).
    pub(crate) fn spelling(&self) -> marker::Spelling {
        if self.user_opaque.load(Ordering::Relaxed) {
            marker::USER
        } else {
            marker::TRUSTED
        }
    }

    /// Marks the directory holding `entry` `overlay.impure`, as overlayfs does for a directory
    /// whose entries carry metacopy or redirect markers, so that a reader of this upper as a
    /// lower layer knows to look for them there. Best effort (a reader also checks sparse files).
    pub(crate) fn mark_parent_impure(&self, entry: &Path) {
        if let Some(dir) = entry.parent() {
            let _ = xattr::set(dir, self.spelling().impure, b"y", 0);
        }
    }

    /// Sets the redirect marker of the entry at `path`. A value the filesystem cannot store
    /// (no user xattrs, or a path too long for one xattr value) is `EXDEV`, overlayfs's answer
    /// when it cannot redirect: `mv` then copies.
    pub(crate) fn set_redirect(&self, path: &Path, r: &Redirect) -> Result<()> {
        xattr::set(
            path,
            self.spelling().redirect,
            &marker::redirect_value(r),
            0,
        )
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTSUP | libc::ENOSPC | libc::E2BIG | libc::ERANGE) => FsError::Io {
                op: "set redirect (the upper cannot store it)",
                path: path.to_path_buf(),
                source: io::Error::from_raw_os_error(libc::EXDEV),
            },
            _ => FsError::io("set redirect", path)(e),
        })
    }

    /// Turns the new, empty upper file `f` at `path` into a metadata-only copy of a lower file
    /// of `size` bytes whose data is at `redirect` (or at its own path): the markers, then the
    /// size as a hole, as overlayfs writes them. On error the file may hold some markers and
    /// must get its data (see [`Upper::clear_metacopy`]).
    pub(crate) fn mark_metacopy(
        &self,
        f: &File,
        path: &Path,
        size: u64,
        redirect: Option<&Redirect>,
    ) -> Result<()> {
        if let Some(r) = redirect {
            self.set_redirect(path, r)?;
        }
        xattr::set(path, self.spelling().metacopy, b"", 0)
            .map_err(FsError::io("set metacopy", path))?;
        f.set_len(size).map_err(FsError::io("truncate", path))
    }

    /// Removes the metacopy and redirect markers (any spelling) of a file that has its data
    /// now; the metacopy marker goes first, so a crash leaves a full file, never a placeholder
    /// that has lost its redirect.
    pub(crate) fn clear_metacopy(&self, f: &File, path: &Path) -> Result<()> {
        for name in marker::ALL_METACOPY.iter().chain(&marker::ALL_REDIRECT) {
            match rustix::fs::fremovexattr(f, OsStr::from_bytes(name)) {
                // EPERM: a `trusted.` name, which a caller without CAP_SYS_ADMIN can neither
                // have written nor remove.
                Ok(())
                | Err(
                    rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM,
                ) => {}
                Err(e) => return Err(FsError::io("remove marker", path)(e.into())),
            }
        }
        Ok(())
    }

    /// [`Upper::clear_metacopy`] by path.
    pub(crate) fn clear_metacopy_path(&self, path: &Path) -> Result<()> {
        for name in marker::ALL_METACOPY.iter().chain(&marker::ALL_REDIRECT) {
            remove_marker(path, name)?;
        }
        Ok(())
    }

    /// Removes the redirect marker (any spelling) of the entry at `path`.
    pub(crate) fn clear_redirect_path(&self, path: &Path) -> Result<()> {
        for name in marker::ALL_REDIRECT {
            remove_marker(path, name)?;
        }
        Ok(())
    }

    pub(crate) fn set_opaque(&self, path: &Path) -> Result<()> {
        let name = if self.user_opaque.load(Ordering::Relaxed) {
            OPAQUE_USER
        } else {
            OPAQUE_TRUSTED
        };
        xattr::set(path, name, b"y", 0).map_err(FsError::io("set opaque xattr", path))
    }
}

fn remove_marker(path: &Path, name: &[u8]) -> Result<()> {
    match xattr::remove(path, name) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENODATA | libc::ENOTSUP | libc::EPERM)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(FsError::io("remove marker", path)(e)),
    }
}

/// Whether `name` fits the 255-byte name limit with the `.wh.` prefix (a longer name can have
/// no whiteout file, only the char 0/0 spelling).
pub(crate) fn has_wh_spelling(name: &OsStr) -> bool {
    name.len() + WHITEOUT_PREFIX.len() <= 255
}

/// `.wh.NAME`.
pub(crate) fn wh_name(name: &OsStr) -> OsString {
    let mut s = OsString::from(WHITEOUT_PREFIX);
    s.push(name);
    s
}

/// Whether `name` is one of the union's on-disk marker spellings, refused as a user name.
pub(crate) fn is_reserved_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes())
}

/// Where copy-up reads a file's bytes from.
pub(crate) enum DataSource<'a> {
    File(File),
    ReadAt(&'a dyn Fn(&mut [u8], u64) -> io::Result<usize>),
}

/// Copies `size` bytes into `dst` (already open for writing, empty): FICLONE, else
/// `copy_file_range` over the data segments (holes stay holes), else read/write. With
/// `write_behind` (the copy is fsynced afterwards) the copied data is written back while the
/// copy goes on (see [`WriteBehind`]).
pub(crate) fn copy_data(
    src: &DataSource<'_>,
    dst: &File,
    size: u64,
    write_behind: bool,
) -> io::Result<()> {
    let mut wb = WriteBehind::new(dst, write_behind);
    match src {
        DataSource::File(f) => {
            if rustix::fs::ioctl_ficlone(dst, f).is_ok() {
                return Ok(());
            }
            let mut pos = 0u64;
            while pos < size {
                let data = match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
                    Ok(d) => d,
                    Err(rustix::io::Errno::NXIO) => break, // only a hole is left
                    Err(_) => pos,                         // no SEEK_DATA: copy everything
                };
                let hole = rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(data))
                    .unwrap_or(size)
                    .min(size);
                let mut at = data;
                while at < hole {
                    let end = hole.min(at + WRITE_BEHIND_CHUNK);
                    copy_range(f, dst, at, end)?;
                    wb.copied(at, end);
                    at = end;
                }
                pos = hole.max(data + 1);
            }
            dst.set_len(size)
        }
        DataSource::ReadAt(read) => {
            let mut buf = vec![0u8; COPY_CHUNK];
            let mut pos = 0u64;
            while pos < size {
                let n = read(&mut buf, pos)?.min(buf.len());
                if n == 0 {
                    break;
                }
                dst.write_all_at(&buf[..n], pos)?;
                wb.copied(pos, pos + n as u64);
                pos += n as u64;
            }
            dst.set_len(size)
        }
    }
}

/// How much is copied between two write-behind steps.
const WRITE_BEHIND_CHUNK: u64 = 16 << 20;

/// Writes a copy back to disk while it is being made (the streaming-write pattern): each
/// chunk's writeback starts once it is copied, and the copy waits for the writeback of the
/// chunk before it. The fsync that follows a copy-up then has almost nothing left to write,
/// and dirty memory stays at two chunks. Errors are ignored: the fsync reports them.
struct WriteBehind<'a> {
    dst: &'a File,
    on: bool,
    /// Copied bytes whose writeback has not been started, from `pending`.
    pending: u64,
    /// Start of the range whose writeback was started last and not waited for.
    started: Option<(u64, u64)>,
}

impl<'a> WriteBehind<'a> {
    fn new(dst: &'a File, on: bool) -> Self {
        WriteBehind {
            dst,
            on,
            pending: 0,
            started: None,
        }
    }

    fn copied(&mut self, start: u64, end: u64) {
        if !self.on {
            return;
        }
        if start < self.pending {
            self.pending = start;
        }
        if end - self.pending < WRITE_BEHIND_CHUNK {
            return;
        }
        if let Some((a, b)) = self.started.take() {
            let _ = crate::sys::sync_file_range(self.dst, a, b - a, true);
        }
        let _ = crate::sys::sync_file_range(self.dst, self.pending, end - self.pending, false);
        self.started = Some((self.pending, end));
        self.pending = end;
    }
}

fn copy_range(src: &File, dst: &File, start: u64, end: u64) -> io::Result<()> {
    let (mut off_in, mut off_out) = (start, start);
    while off_in < end {
        let len = usize::try_from(end - off_in)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), len) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => {
                // Different filesystems on old kernels, or no support: plain copy.
                let mut buf = vec![0u8; COPY_CHUNK];
                while off_in < end {
                    let want = buf
                        .len()
                        .min(usize::try_from(end - off_in).unwrap_or(usize::MAX));
                    let n = src.read_at(&mut buf[..want], off_in)?;
                    if n == 0 {
                        break;
                    }
                    dst.write_all_at(&buf[..n], off_out)?;
                    off_in += n as u64;
                    off_out += n as u64;
                }
            }
        }
    }
    Ok(())
}
