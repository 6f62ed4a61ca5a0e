//! Paths of any depth for the syscalls that take one path string.
//!
//! The kernel refuses a path string of `PATH_MAX` (4096) bytes or more, but a union has no
//! such limit: a process can `chdir` level by level and work 4095 bytes below any directory, so
//! the upper or lower copy of a merged entry can be far deeper than one string can name. The
//! union names such an entry from a descriptor of a deep ancestor (`O_PATH`, opened a chunk of
//! components at a time), through `/proc/self/fd/N/rest` or an `*at` call. Paths that fit are
//! used as they are: nothing is opened for them.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

/// A path string of this many bytes or more is named through an ancestor's descriptor
/// (below `PATH_MAX`, with room for a name joined to it).
pub(crate) const LONG: usize = 3800;
/// Longest part of a path opened or kept in one piece.
const CHUNK: usize = 2048;

/// Splits `rel` for a lookup from `base`: `(None, rel)` when `rel` fits in one call, else a
/// descriptor of a deep ancestor (opened from `base` in chunks) and the rest below it (never
/// empty: it ends with `rel`'s last component, so that component is not followed).
///
/// # Errors
/// When an ancestor cannot be opened (it does not exist, or is not a directory).
pub(crate) fn anchor(base: BorrowedFd<'_>, rel: &Path) -> io::Result<(Option<OwnedFd>, PathBuf)> {
    if rel.as_os_str().len() < LONG {
        return Ok((None, rel.to_path_buf()));
    }
    let comps: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    // The rest: as many trailing components as fit in a chunk, at least one.
    let mut split = comps.len().saturating_sub(1);
    let mut rest_len = comps.last().map_or(0, |c| c.len());
    while split > 0 && rest_len + 1 + comps[split - 1].len() <= CHUNK {
        split -= 1;
        rest_len += 1 + comps[split].len();
    }
    let mut cur: Option<OwnedFd> = None;
    let mut chunk = PathBuf::new();
    let open_chunk = |cur: &mut Option<OwnedFd>, chunk: &mut PathBuf| -> io::Result<()> {
        let from = cur.as_ref().map_or(base, AsFd::as_fd);
        let fd = rustix::fs::openat(
            from,
            chunk.as_path(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        *cur = Some(fd);
        chunk.clear();
        Ok(())
    };
    for c in &comps[..split] {
        if !chunk.as_os_str().is_empty() && chunk.as_os_str().len() + 1 + c.len() > CHUNK {
            open_chunk(&mut cur, &mut chunk)?;
        }
        chunk.push(c);
    }
    if !chunk.as_os_str().is_empty() {
        open_chunk(&mut cur, &mut chunk)?;
    }
    Ok((cur, comps[split..].iter().collect()))
}

/// Calls `f` with a directory and a path below it that together name `base/rel`, however deep
/// `rel` is (no allocation when it fits in one string).
///
/// # Errors
/// `f`'s, or the error of opening an ancestor.
pub(crate) fn with_at<T>(
    base: BorrowedFd<'_>,
    rel: &Path,
    f: impl FnOnce(BorrowedFd<'_>, &Path) -> io::Result<T>,
) -> io::Result<T> {
    let dot = |p: &Path| -> PathBuf {
        if p.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            p.to_path_buf()
        }
    };
    if rel.as_os_str().len() < LONG {
        return if rel.as_os_str().is_empty() {
            f(base, Path::new("."))
        } else {
            f(base, rel)
        };
    }
    let (fd, rest) = anchor(base, rel)?;
    f(fd.as_ref().map_or(base, AsFd::as_fd), &dot(&rest))
}

/// The `/proc/self/fd/N/…` name of `rel` below the directory `base`, with the descriptor it
/// needs, for the calls that take a path only (xattrs).
///
/// # Errors
/// The error of opening an ancestor.
pub(crate) fn proc_path(
    base: BorrowedFd<'_>,
    rel: &Path,
) -> io::Result<(Option<OwnedFd>, PathBuf)> {
    let (fd, rest) = anchor(base, rel)?;
    let raw = fd.as_ref().map_or(base.as_raw_fd(), AsRawFd::as_raw_fd);
    let mut p = PathBuf::from(format!("/proc/self/fd/{raw}"));
    p.push(rest);
    Ok((fd, p))
}

/// A path for one syscall, valid while the value lives (it may hold the descriptor that its
/// `/proc/self/fd/N/…` string names). Dereferences to the path; [`SysPath::join`] keeps the
/// descriptor, so `upper.path(dir).join(name)` stays valid, unlike `Path::join`.
#[derive(Debug, Clone)]
pub(crate) struct SysPath {
    path: PathBuf,
    /// The directory the path string starts from (`/proc/self/fd/N/…`), when it is not
    /// `base`'s own path. Short paths (nearly all) are `base/rel` and hold nothing else.
    anchor: Option<Arc<OwnedFd>>,
    base: Arc<Base>,
}

/// Where relative paths start: a directory's path and a descriptor of it.
#[derive(Debug)]
pub(crate) struct Base {
    path: PathBuf,
    fd: OwnedFd,
}

impl Base {
    /// Opens `path` (a directory) as a base.
    ///
    /// # Errors
    /// When it cannot be opened as a directory.
    pub(crate) fn open(path: &Path) -> io::Result<Arc<Base>> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Arc::new(Base {
            path: path.to_path_buf(),
            fd,
        }))
    }
}

fn proc_fd(fd: &OwnedFd, rest: &Path) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    p.push(rest);
    p
}

impl SysPath {
    /// `base/rel`, through a descriptor when that is too long for one string. Falls back to
    /// the plain (too long) path when an ancestor cannot be opened, so the call that uses it
    /// fails with the kernel's own error.
    pub(crate) fn new(base: &Arc<Base>, rel: &Path) -> SysPath {
        let plain = base.path.join(rel);
        if plain.as_os_str().len() < LONG {
            return Self::plain(base, plain);
        }
        let anchored = match anchor(base.fd.as_fd(), rel) {
            Ok((Some(fd), rest)) => Some((fd, rest)),
            // A short `rel` under a long base: anchor at the base itself.
            Ok((None, rest)) => base.fd.try_clone().ok().map(|fd| (fd, rest)),
            Err(_) => None,
        };
        match anchored {
            Some((fd, rest)) => Self::anchored(base, fd, &rest),
            None => Self::plain(base, plain),
        }
    }

    fn plain(base: &Arc<Base>, path: PathBuf) -> SysPath {
        SysPath {
            path,
            anchor: None,
            base: base.clone(),
        }
    }

    fn anchored(base: &Arc<Base>, fd: OwnedFd, rest: &Path) -> SysPath {
        SysPath {
            path: proc_fd(&fd, rest),
            anchor: Some(Arc::new(fd)),
            base: base.clone(),
        }
    }

    /// This path with `name` (one or more components) below it; keeps or renews the
    /// descriptor as needed.
    pub(crate) fn join(&self, name: impl AsRef<Path>) -> SysPath {
        let name = name.as_ref();
        let mut s = self.clone();
        s.path.push(name);
        if s.path.as_os_str().len() < LONG {
            return s;
        }
        // Too long now: anchor again below what this path starts from.
        match &self.anchor {
            None => {
                let rel = s.path.strip_prefix(&self.base.path).map(Path::to_path_buf);
                rel.map_or(s, |rel| SysPath::new(&self.base, &rel))
            }
            Some(a) => {
                let start = proc_fd(a, Path::new(""));
                let rel = s.path.strip_prefix(&start).map(Path::to_path_buf);
                match rel.map(|rel| anchor(a.as_fd(), &rel)) {
                    Ok(Ok((Some(fd), rest))) => Self::anchored(&self.base, fd, &rest),
                    _ => s,
                }
            }
        }
    }
}

impl std::ops::Deref for SysPath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for SysPath {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<OsStr> for SysPath {
    fn as_ref(&self) -> &OsStr {
        self.path.as_os_str()
    }
}

impl From<SysPath> for PathBuf {
    fn from(p: SysPath) -> PathBuf {
        p.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_paths_are_reached_through_an_ancestor() {
        let tmp = tempfile::tempdir().unwrap();
        let base = Base::open(tmp.path()).unwrap();
        let name = "n".repeat(200);
        let mut rel = PathBuf::new();
        for _ in 0..40 {
            rel.push(&name);
        }
        // mkdir level by level through SysPath, as the union does.
        let mut cur = PathBuf::new();
        for _ in 0..40 {
            cur.push(&name);
            let p = SysPath::new(&base, &cur);
            assert!(p.as_os_str().len() < 4096, "{}", p.as_os_str().len());
            std::fs::create_dir(&*p).unwrap();
        }
        assert!(rel.as_os_str().len() > 8000);
        let f = SysPath::new(&base, &rel).join("file");
        std::fs::write(&*f, b"deep").unwrap();
        let again = SysPath::new(&base, &rel.join("file"));
        assert_eq!(std::fs::read(&*again).unwrap(), b"deep");
        // Short paths stay plain.
        let short = SysPath::new(&base, Path::new("a/b"));
        assert_eq!(&*short, tmp.path().join("a/b").as_path());
    }
}
