//! Small safe wrappers over the `l*xattr` calls (never following symlinks).

use std::io;
use std::path::Path;

use rustix::fs::XattrFlags;

use crate::lower::is_internal_xattr;

fn no_data(e: &rustix::io::Errno) -> bool {
    *e == rustix::io::Errno::NODATA || *e == rustix::io::Errno::NOTSUP
}

/// The value of xattr `name`, or `None` when it is not set (or xattrs are unsupported).
pub(crate) fn get(path: &Path, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    loop {
        let size = match rustix::fs::lgetxattr_query(path, name) {
            Ok(s) => s,
            Err(e) if no_data(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; size];
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => continue, // grew in between
            Err(e) if no_data(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

fn split_names(buf: &[u8]) -> Vec<Vec<u8>> {
    buf.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// All xattr names of `path`. One `llistxattr` into a stack buffer for the usual short list
/// (every lookup of an upper entry asks), the size query only when it does not fit.
pub(crate) fn list(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut small = [0u8; 512];
    match rustix::fs::llistxattr(path, &mut small[..]) {
        Ok(n) => return Ok(split_names(&small[..n.min(small.len())])),
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(rustix::io::Errno::RANGE) => {}
        Err(e) => return Err(e.into()),
    }
    loop {
        let size = match rustix::fs::llistxattr_query(path) {
            Ok(s) => s,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut buf = vec![0u8; size];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(split_names(&buf));
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// All (name, value) pairs of `path`, optionally without overlay-internal names.
pub(crate) fn all(path: &Path, hide_internal: bool) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in list(path)? {
        if hide_internal && is_internal_xattr(&name) {
            continue;
        }
        if let Some(v) = get(path, &name)? {
            out.push((name, v));
        }
    }
    Ok(out)
}

/// Sets xattr `name` (flags: 0, `XATTR_CREATE` or `XATTR_REPLACE`).
pub(crate) fn set(path: &Path, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
    let flags = XattrFlags::from_bits_retain(flags as u32);
    rustix::fs::lsetxattr(path, name, value, flags).map_err(Into::into)
}

/// Removes xattr `name`.
pub(crate) fn remove(path: &Path, name: &[u8]) -> io::Result<()> {
    rustix::fs::lremovexattr(path, name).map_err(Into::into)
}
