//! The overlay markers for metadata-only copies and renamed directories, on disk: the one
//! place that knows their spellings (whiteouts and opacity are `dirtree.rs`'s).
//!
//! strata writes kernel overlayfs's own markers, so an upper reads the same when it is stacked
//! as a lower, in strata and in kernel overlayfs (`metacopy=on,redirect_dir=on`):
//! - `overlay.metacopy` (empty value) on a regular file that holds metadata only: its data is
//!   the file's in the layers below, at its own path or at its redirect. The file has the
//!   data's size, as a hole.
//! - `overlay.redirect` on such a file or on a directory whose lower content comes from another
//!   path: `/a/b` is a path from the root of the layers below, a bare name is that name in the
//!   parent directory's place in the layers below.
//!
//! The namespace is `trusted.` where the writer may set it (root), else `user.` (what overlayfs
//! reads with `userxattr`; the kernel follows neither marker there, only strata does). Read:
//! both namespaces, and the markers of strata before 0.4: `user.strata.metacopy=<path>` (a
//! metacopy file whose data is at that path) and `user.strata.redirect=<path>`, both paths from
//! the root without the leading `/`.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::lower::{Marks, Redirect};
use crate::xattr;

/// The markers strata writes in one namespace.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spelling {
    pub(crate) metacopy: &'static [u8],
    pub(crate) redirect: &'static [u8],
    /// On a directory whose entries carry the two others (overlayfs sets it too): a reader
    /// of the layer looks for markers on every entry there, elsewhere only on sparse files.
    pub(crate) impure: &'static [u8],
}

/// `trusted.overlay.*`: what kernel overlayfs reads and writes as root.
pub(crate) const TRUSTED: Spelling = Spelling {
    metacopy: b"trusted.overlay.metacopy",
    redirect: b"trusted.overlay.redirect",
    impure: b"trusted.overlay.impure",
};
/// `user.overlay.*`: the same with `userxattr` (rootless).
pub(crate) const USER: Spelling = Spelling {
    metacopy: b"user.overlay.metacopy",
    redirect: b"user.overlay.redirect",
    impure: b"user.overlay.impure",
};
/// strata's markers before 0.4, read only.
const LEGACY_METACOPY: &[u8] = b"user.strata.metacopy";
const LEGACY_REDIRECT: &[u8] = b"user.strata.redirect";

/// Every marker name, so removals can clear whichever spelling an entry has.
pub(crate) const ALL_METACOPY: [&[u8]; 3] = [TRUSTED.metacopy, USER.metacopy, LEGACY_METACOPY];
pub(crate) const ALL_REDIRECT: [&[u8]; 3] = [TRUSTED.redirect, USER.redirect, LEGACY_REDIRECT];

/// Parses an `overlay.redirect` value.
pub(crate) fn parse_redirect(v: &[u8]) -> Option<Redirect> {
    if let Some(abs) = v.strip_prefix(b"/") {
        let p = Path::new(OsStr::from_bytes(abs));
        return Some(Redirect::Absolute(p.to_path_buf()));
    }
    if v.is_empty() || v.contains(&b'/') || v == b"." || v == b".." {
        return None; // not a name: ignored, as overlayfs refuses it
    }
    Some(Redirect::Relative(OsStr::from_bytes(v).to_owned()))
}

/// The `overlay.redirect` value for `r`.
pub(crate) fn redirect_value(r: &Redirect) -> Vec<u8> {
    match r {
        Redirect::Absolute(p) => {
            let mut v = b"/".to_vec();
            v.extend_from_slice(p.as_os_str().as_bytes());
            v
        }
        Redirect::Relative(n) => n.as_bytes().to_vec(),
    }
}

/// The markers of the entry at `path` (not following a symlink), from its xattr names (one
/// `llistxattr`; values are read only for marker names).
///
/// # Errors
/// I/O errors other than "no xattrs here".
pub(crate) fn read(path: &Path) -> io::Result<Marks> {
    let names = xattr::list(path)?;
    from_names(&names, |n| xattr::get(path, n))
}

/// The markers, given an entry's xattr names and a way to read a value.
pub(crate) fn from_names(
    names: &[Vec<u8>],
    get: impl Fn(&[u8]) -> io::Result<Option<Vec<u8>>>,
) -> io::Result<Marks> {
    let mut m = Marks::default();
    let has = |n: &[u8]| names.iter().any(|x| x == n);
    if !names
        .iter()
        .any(|n| n.starts_with(b"trusted.overlay.") || n.starts_with(b"user."))
    {
        return Ok(m);
    }
    for s in [TRUSTED, USER] {
        if has(s.metacopy) {
            m.metacopy = true;
        }
        if m.redirect.is_none()
            && has(s.redirect)
            && let Some(v) = get(s.redirect)?
        {
            m.redirect = parse_redirect(&v);
        }
    }
    if m.redirect.is_none() {
        for legacy in [LEGACY_METACOPY, LEGACY_REDIRECT] {
            if has(legacy)
                && let Some(v) = get(legacy)?
                && !v.is_empty()
            {
                if legacy == LEGACY_METACOPY {
                    m.metacopy = true;
                }
                let p = PathBuf::from(OsStr::from_bytes(&v));
                m.redirect = Some(Redirect::Absolute(p));
                break;
            }
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_values_round_trip_and_bad_ones_are_ignored() {
        for r in [
            Redirect::Absolute(PathBuf::from("a/b")),
            Redirect::Relative("x".into()),
        ] {
            assert_eq!(parse_redirect(&redirect_value(&r)), Some(r));
        }
        assert_eq!(parse_redirect(b"a/b"), None);
        assert_eq!(parse_redirect(b".."), None);
        assert_eq!(parse_redirect(b""), None);
    }

    #[test]
    fn legacy_strata_markers_read_as_absolute_redirects() {
        let names = vec![LEGACY_METACOPY.to_vec()];
        let m = from_names(&names, |_| Ok(Some(b"usr/bin/ls".to_vec()))).unwrap();
        assert!(m.metacopy);
        assert_eq!(
            m.redirect,
            Some(Redirect::Absolute(PathBuf::from("usr/bin/ls")))
        );
        let names = vec![USER.metacopy.to_vec(), b"user.mime".to_vec()];
        let m = from_names(&names, |_| unreachable!()).unwrap();
        assert!(m.metacopy && m.redirect.is_none());
    }
}
