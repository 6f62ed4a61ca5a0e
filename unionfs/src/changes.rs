//! Changes recorded in an upper directory (what `diff` and `commit` read), parsed in the one
//! place outside the FUSE code that knows the upper format.
//!
//! [`scan_upper`] walks only the upper directory, never the whole image: the lower trees are
//! asked about specific paths (is `etc/x` in the image? what does the metacopy placeholder
//! `usr/bin/ls` read?) and listed only where the upper replaces a whole directory (an opaque
//! directory, to report what it hides; a renamed lower directory, whose content has to be written
//! out in full at its new path). The cost is therefore O(changes).
//!
//! The upper format (`docs/SEMANTICS.md`, "On-disk format of the upper"):
//! - whiteouts: char devices 0/0, or empty `.wh.NAME` files;
//! - opaque directories: `trusted.overlay.opaque`/`user.overlay.opaque`/
//!   `user.fuseoverlayfs.opaque` = `y`, or a `.wh..wh..opq` file inside;
//! - metadata-only files and renamed lower directories: overlayfs's `overlay.metacopy` and
//!   `overlay.redirect` markers (and strata's older ones), as `crate::marker` reads them.
//!
//! Each [`Change`] is Docker's `A`/`C`/`D` plus what a commit needs to write the entry.
//! [`docker_diff`] turns the list into `docker diff`'s output (parents of A/D as C, sorted).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::dirtree::{OPAQUE_MARKER, WHITEOUT_PREFIX, dir_is_opaque, is_whiteout_dev, kind_of};
use crate::lower::{EntryKind, LowerAttr, LowerTree, NodeId, Redirect};
use crate::marker;
use crate::xattr;

/// Docker's change kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The path is new: the image has nothing there (`A`).
    Added,
    /// The path is in the image and was changed or replaced (`C`).
    Changed,
    /// The path was in the image and is gone (`D`).
    Deleted,
}

impl ChangeKind {
    /// `A`, `C` or `D`, as `docker diff` prints them.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// Where the content of a changed regular file is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Nothing to read (not a regular file).
    None,
    /// The upper file at this absolute path.
    Upper(PathBuf),
    /// A lower node: a metacopy placeholder's source, or a file of a renamed lower directory.
    /// `layer` indexes the `lowers` given to [`scan_upper`].
    Lower {
        /// Index into the lowers (top first).
        layer: usize,
        /// The node in that tree.
        node: NodeId,
    },
}

/// Identifies one file with several names (hard links): equal keys are one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkKey {
    /// An upper inode.
    Upper {
        /// `st_dev`.
        dev: u64,
        /// `st_ino`.
        ino: u64,
    },
    /// A node of one lower tree.
    Lower {
        /// Index into the lowers.
        layer: usize,
        /// The node.
        node: NodeId,
    },
}

/// An entry of the container's merged view that differs from the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// What it is (never [`EntryKind::Whiteout`]).
    pub kind: EntryKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner, as the union shows it.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size of a regular file's content (the lower's for a metacopy placeholder).
    pub size: u64,
    /// Device number of a char/block device.
    pub rdev: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Where a regular file's bytes are.
    pub content: Content,
    /// A symlink's target.
    pub symlink: Option<OsString>,
    /// The user-visible xattrs (internal markers removed), sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A directory that must hide everything the image has below it (an opaque upper dir, or a
    /// renamed dir put where the image has a directory).
    pub opaque: bool,
    /// For a renamed lower directory: where its lower content is (as its marker says).
    pub redirect: Option<Redirect>,
    /// Set for regular files with several names.
    pub link: Option<LinkKey>,
    /// The entry is in the upper (false: a lower entry inside a renamed directory).
    pub in_upper: bool,
}

/// One change, relative to the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// Relative path (`etc/passwd`); never empty (the root is never reported).
    pub path: PathBuf,
    /// `A`, `C` or `D`.
    pub kind: ChangeKind,
    /// The new entry (`None` for deletions).
    pub entry: Option<Entry>,
    /// `docker diff` lists it. False for a directory the upper holds only as the parent of
    /// changes (same mode and mtime as in the image): a commit still writes it.
    pub listed: bool,
    /// A deletion implied by an opaque directory (the image's child is hidden by it, so a layer
    /// needs no whiteout for it).
    pub implied: bool,
}

/// One layer's directory node in a merged lower directory.
#[derive(Clone, Copy, Debug)]
struct Layered {
    layer: usize,
    node: NodeId,
}

/// A path found in the lowers: the top entry, and for directories every layer that merges in.
#[derive(Clone, Debug)]
struct Found {
    kind: EntryKind,
    attr: LowerAttr,
    stack: Vec<Layered>,
}

impl Found {
    fn top(&self) -> Layered {
        self.stack[0]
    }
    fn dir_stack(&self) -> Option<&[Layered]> {
        (self.kind == EntryKind::Dir).then_some(&self.stack[..])
    }
}

/// Read-only questions about the merged lowers (the image).
struct Lowers<'a> {
    trees: &'a [Arc<dyn LowerTree>],
}

impl Lowers<'_> {
    fn root(&self) -> io::Result<Option<Found>> {
        let mut stack = Vec::new();
        let mut attr = None;
        for (layer, t) in self.trees.iter().enumerate() {
            let node = t.root();
            let a = t.getattr(node)?;
            stack.push(Layered { layer, node });
            let opaque = a.opaque;
            attr.get_or_insert(a);
            if opaque {
                break;
            }
        }
        Ok(attr.map(|attr| Found {
            kind: EntryKind::Dir,
            attr,
            stack,
        }))
    }

    /// `name` in the merged directory `stack`, with overlay's rules: the first layer that has
    /// the name decides; directories merge down to an opaque one, a non-directory or a whiteout.
    fn child(&self, stack: &[Layered], name: &OsStr) -> io::Result<Option<Found>> {
        let mut found: Option<Found> = None;
        for l in stack {
            let t = &self.trees[l.layer];
            let Some(e) = t.lookup(l.node, name)? else {
                continue;
            };
            if e.kind == EntryKind::Whiteout {
                break;
            }
            let a = t.getattr(e.node)?;
            let here = Layered {
                layer: l.layer,
                node: e.node,
            };
            match &mut found {
                None => {
                    let stop = e.kind != EntryKind::Dir || a.opaque;
                    found = Some(Found {
                        kind: e.kind,
                        attr: a,
                        stack: vec![here],
                    });
                    if stop {
                        break;
                    }
                }
                Some(f) => {
                    if e.kind != EntryKind::Dir {
                        break;
                    }
                    f.stack.push(here);
                    if a.opaque {
                        break;
                    }
                }
            }
        }
        Ok(found)
    }

    /// The entry at a relative path, if the image has one.
    fn at(&self, path: &Path) -> io::Result<Option<Found>> {
        let mut cur = self.root()?;
        for c in path.components() {
            let Some(f) = cur else { return Ok(None) };
            let Some(stack) = f.dir_stack() else {
                return Ok(None);
            };
            cur = self.child(stack, c.as_os_str())?;
        }
        Ok(cur)
    }

    /// The visible names of a merged directory, sorted.
    fn names(&self, stack: &[Layered]) -> io::Result<BTreeSet<OsString>> {
        let mut seen: BTreeMap<OsString, bool> = BTreeMap::new();
        for l in stack {
            for e in self.trees[l.layer].read_dir(l.node)?.entries {
                seen.entry(e.name).or_insert(e.kind != EntryKind::Whiteout);
            }
        }
        Ok(seen
            .into_iter()
            .filter_map(|(n, visible)| visible.then_some(n))
            .collect())
    }
}

/// What one upper directory holds, parsed.
#[derive(Default)]
struct UpperDir {
    entries: BTreeMap<OsString, std::fs::Metadata>,
    whiteouts: BTreeSet<OsString>,
}

fn read_upper_dir(abs: &Path) -> io::Result<UpperDir> {
    let mut d = UpperDir::default();
    let rd = match std::fs::read_dir(abs) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(d),
        Err(e) => return Err(ctx(e, "read upper dir", abs)),
    };
    for e in rd {
        let e = e.map_err(|e| ctx(e, "read upper dir", abs))?;
        let name = e.file_name();
        let b = name.as_bytes();
        if b == OPAQUE_MARKER.as_bytes() {
            continue; // read through dir_is_opaque on the directory itself
        }
        if let Some(hidden) = b.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if !hidden.is_empty() {
                d.whiteouts.insert(OsStr::from_bytes(hidden).to_owned());
            }
            continue;
        }
        let p = e.path();
        let md = p
            .symlink_metadata()
            .map_err(|e| ctx(e, "stat upper entry", &p))?;
        if is_whiteout_dev(&md) {
            d.whiteouts.insert(name);
        } else {
            d.entries.insert(name, md);
        }
    }
    // A layer's own entry wins over its own whiteout of the same name.
    let entries = &d.entries;
    d.whiteouts.retain(|w| !entries.contains_key(w));
    Ok(d)
}

fn ctx(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

struct Walker<'a> {
    lowers: Lowers<'a>,
    upper: &'a Path,
    out: Vec<Change>,
}

/// How a directory of the walk relates to the image.
struct DirCtx<'s> {
    /// The image's directory at this path.
    image: Option<&'s [Layered]>,
    /// The lower directory whose children show through here (`None` when opaque).
    merge: Option<&'s [Layered]>,
    /// Inside a renamed lower directory: every visible entry is written, lower ones too.
    full: bool,
    /// Report the image's children that are not visible here as implied deletions.
    hide_image: bool,
}

impl Walker<'_> {
    fn walk(&mut self, rel: &Path, c: &DirCtx<'_>) -> io::Result<()> {
        let abs = self.upper.join(rel);
        let up = read_upper_dir(&abs)?;
        let mut visible: BTreeSet<OsString> = up.entries.keys().cloned().collect();
        if !c.full {
            for w in &up.whiteouts {
                let in_image = match c.image {
                    Some(s) => self.lowers.child(s, w)?.is_some(),
                    None => false,
                };
                if in_image {
                    self.out.push(Change {
                        path: rel.join(w),
                        kind: ChangeKind::Deleted,
                        entry: None,
                        listed: true,
                        implied: false,
                    });
                }
            }
        }
        for (name, md) in &up.entries {
            self.upper_entry(rel, name, md, c)?;
        }
        if c.full
            && let Some(m) = c.merge
        {
            for name in self.lowers.names(m)? {
                if up.entries.contains_key(&name) || up.whiteouts.contains(&name) {
                    continue;
                }
                let Some(f) = self.lowers.child(m, &name)? else {
                    continue;
                };
                self.lower_entry(rel, &name, &f, c)?;
                visible.insert(name);
            }
        }
        if c.hide_image
            && let Some(s) = c.image
        {
            for name in self.lowers.names(s)? {
                if !visible.contains(&name) {
                    self.out.push(Change {
                        path: rel.join(&name),
                        kind: ChangeKind::Deleted,
                        entry: None,
                        listed: true,
                        implied: true,
                    });
                }
            }
        }
        Ok(())
    }

    /// What a redirect in a directory with context `c` points at: an absolute one from the
    /// lowers' root, a relative one in the directory's lower stack.
    fn redirect_target(&self, rd: &Redirect, c: &DirCtx<'_>) -> io::Result<Option<Found>> {
        match rd {
            Redirect::Absolute(p) => self.lowers.at(p),
            Redirect::Relative(n) => match c.merge {
                Some(m) => self.lowers.child(m, n),
                None => Ok(None),
            },
        }
    }

    fn upper_entry(
        &mut self,
        rel: &Path,
        name: &OsStr,
        md: &std::fs::Metadata,
        c: &DirCtx<'_>,
    ) -> io::Result<()> {
        let path = rel.join(name);
        let abs = self.upper.join(&path);
        let image = match c.image {
            Some(s) => self.lowers.child(s, name)?,
            None => None,
        };
        let kind = kind_of(md);
        let xattrs = xattr::all(&abs, true).map_err(|e| ctx(e, "read xattrs of", &abs))?;
        let mut e = Entry {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: 0,
            rdev: 0,
            mtime: md.mtime(),
            mtime_nsec: u32::try_from(md.mtime_nsec()).unwrap_or(0),
            content: Content::None,
            symlink: None,
            xattrs,
            opaque: false,
            redirect: None,
            link: None,
            in_upper: true,
        };
        let change_kind = if image.is_some() {
            ChangeKind::Changed
        } else {
            ChangeKind::Added
        };
        match kind {
            EntryKind::Dir => {
                let opaque = dir_is_opaque(&abs);
                let redirect = marker::read(&abs)
                    .map_err(|e| ctx(e, "read markers of", &abs))?
                    .redirect;
                let image_dir = image.as_ref().and_then(Found::dir_stack);
                let hide = !c.full && image_dir.is_some() && (opaque || redirect.is_some());
                e.opaque = hide;
                e.redirect.clone_from(&redirect);
                let redirected = match (&redirect, opaque) {
                    (Some(rd), false) => self.redirect_target(rd, c)?,
                    _ => None,
                };
                let merged_here = match c.merge {
                    Some(m) if !opaque && redirect.is_none() => self.lowers.child(m, name)?,
                    _ => None,
                };
                let merge = redirected
                    .as_ref()
                    .or(merged_here.as_ref())
                    .and_then(Found::dir_stack);
                // Docker skips a directory whose mode and mtime equal the image's.
                let unchanged = matches!(&image, Some(f) if f.kind == EntryKind::Dir
                    && !opaque
                    && redirect.is_none()
                    && f.attr.mode == e.mode
                    && same_time(f.attr.mtime, f.attr.mtime_nsec, e.mtime, e.mtime_nsec));
                self.out.push(Change {
                    path: path.clone(),
                    kind: change_kind,
                    entry: Some(e),
                    listed: !unchanged || c.full,
                    implied: false,
                });
                self.walk(
                    &path,
                    &DirCtx {
                        image: image_dir,
                        merge,
                        full: c.full || redirect.is_some(),
                        hide_image: hide,
                    },
                )?;
                return Ok(());
            }
            EntryKind::File => {
                e.size = md.len();
                e.content = Content::Upper(abs.clone());
                let marks = marker::read(&abs).map_err(|e| ctx(e, "read markers of", &abs))?;
                if marks.metacopy {
                    let rd = marks
                        .redirect
                        .unwrap_or_else(|| Redirect::Relative(name.to_owned()));
                    let src = match &rd {
                        Redirect::Absolute(p) => p.clone(),
                        Redirect::Relative(n) => path.with_file_name(n),
                    };
                    match self.redirect_target(&rd, c)? {
                        Some(f) if f.kind == EntryKind::File => {
                            e.size = f.attr.size;
                            e.content = Content::Lower {
                                layer: f.top().layer,
                                node: f.top().node,
                            };
                        }
                        _ => {
                            return Err(io::Error::new(
                                io::ErrorKind::NotFound,
                                format!(
                                    "{} is a metadata-only copy of {}, which the image does not \
                                     have as a regular file; the container's upper dir does not \
                                     belong to this image",
                                    abs.display(),
                                    src.display()
                                ),
                            ));
                        }
                    }
                }
                if md.nlink() > 1 {
                    e.link = Some(LinkKey::Upper {
                        dev: md.dev(),
                        ino: md.ino(),
                    });
                }
            }
            EntryKind::Symlink => {
                let t = std::fs::read_link(&abs).map_err(|e| ctx(e, "readlink", &abs))?;
                e.size = t.as_os_str().len() as u64;
                e.symlink = Some(t.into_os_string());
            }
            EntryKind::CharDev | EntryKind::BlockDev => e.rdev = md.rdev(),
            EntryKind::Fifo | EntryKind::Socket | EntryKind::Whiteout => {}
        }
        self.out.push(Change {
            path,
            kind: change_kind,
            entry: Some(e),
            listed: true,
            implied: false,
        });
        Ok(())
    }

    /// A lower entry inside a renamed directory: written out in full at its new path.
    fn lower_entry(
        &mut self,
        rel: &Path,
        name: &OsStr,
        f: &Found,
        c: &DirCtx<'_>,
    ) -> io::Result<()> {
        let path = rel.join(name);
        let image = match c.image {
            Some(s) => self.lowers.child(s, name)?,
            None => None,
        };
        let top = f.top();
        let t = &self.lowers.trees[top.layer];
        let a = &f.attr;
        let mut e = Entry {
            kind: f.kind,
            mode: a.mode,
            uid: a.uid,
            gid: a.gid,
            size: 0,
            rdev: a.rdev,
            mtime: a.mtime,
            mtime_nsec: a.mtime_nsec,
            content: Content::None,
            symlink: None,
            xattrs: t.xattrs(top.node)?,
            opaque: false,
            redirect: None,
            link: None,
            in_upper: false,
        };
        e.xattrs.sort();
        match f.kind {
            EntryKind::File => {
                e.size = a.size;
                e.content = Content::Lower {
                    layer: top.layer,
                    node: top.node,
                };
                if a.nlink > 1 {
                    e.link = Some(LinkKey::Lower {
                        layer: top.layer,
                        node: top.node,
                    });
                }
            }
            EntryKind::Symlink => {
                let target = t.readlink(top.node)?;
                e.size = target.len() as u64;
                e.symlink = Some(target);
            }
            _ => {}
        }
        self.out.push(Change {
            path: path.clone(),
            kind: if image.is_some() {
                ChangeKind::Changed
            } else {
                ChangeKind::Added
            },
            entry: Some(e),
            listed: true,
            implied: false,
        });
        if f.kind == EntryKind::Dir {
            self.walk(
                &path,
                &DirCtx {
                    image: image.as_ref().and_then(Found::dir_stack),
                    merge: Some(&f.stack),
                    full: true,
                    hide_image: false,
                },
            )?;
        }
        Ok(())
    }
}

/// Docker's `sameFsTime`: equal, or the same second when either side has no sub-second part
/// (tar round trips drop it).
fn same_time(a: i64, an: u32, b: i64, bn: u32) -> bool {
    a == b && (an == bn || an == 0 || bn == 0)
}

/// Reads the changes a container's upper directory holds, relative to the image whose layers
/// are `lowers` (top first), sorted bytewise by path. Walks only the upper directory.
///
/// # Errors
/// I/O errors on the upper (with the path), a broken lower tree, or a metacopy placeholder
/// whose source the image does not have (an upper dir used with another image).
pub fn scan_upper(upper: &Path, lowers: &[Arc<dyn LowerTree>]) -> io::Result<Vec<Change>> {
    let lw = Lowers { trees: lowers };
    let root = lw.root()?;
    let stack = root.as_ref().map(|f| f.stack.as_slice());
    let mut w = Walker {
        lowers: Lowers { trees: lowers },
        upper,
        out: Vec::new(),
    };
    w.walk(
        Path::new(""),
        &DirCtx {
            image: stack,
            merge: stack,
            full: false,
            hide_image: false,
        },
    )?;
    let mut out = w.out;
    out.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    Ok(out)
}

/// `docker diff`'s view of `changes`: the listed changes plus the parent of every `A`/`D` as
/// `C` once (never the root), sorted bytewise by path. Paths are relative (print with a
/// leading `/`).
pub fn docker_diff(changes: &[Change]) -> Vec<(ChangeKind, PathBuf)> {
    let mut out: BTreeMap<Vec<u8>, ChangeKind> = BTreeMap::new();
    for c in changes.iter().filter(|c| c.listed) {
        out.insert(c.path.as_os_str().as_bytes().to_vec(), c.kind);
    }
    for c in changes.iter().filter(|c| c.listed) {
        if matches!(c.kind, ChangeKind::Added | ChangeKind::Deleted)
            && let Some(p) = c.path.parent()
            && !p.as_os_str().is_empty()
        {
            out.entry(p.as_os_str().as_bytes().to_vec())
                .or_insert(ChangeKind::Changed);
        }
    }
    out.into_iter()
        .map(|(p, k)| (k, PathBuf::from(OsStr::from_bytes(&p))))
        .collect()
}

/// Opens a changed file's content for reading.
///
/// # Errors
/// The file cannot be opened, a lower node is broken; `Ok(None)` for [`Content::None`].
pub fn open_content(
    lowers: &[Arc<dyn LowerTree>],
    content: &Content,
) -> io::Result<Option<Box<dyn Read + Send>>> {
    match content {
        Content::None => Ok(None),
        Content::Upper(p) => Ok(Some(Box::new(
            std::fs::File::open(p).map_err(|e| ctx(e, "open", p))?,
        ))),
        Content::Lower { layer, node } => {
            let tree = lowers.get(*layer).cloned().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("lower layer {layer} does not exist"),
                )
            })?;
            match tree.open(*node)? {
                Some(f) => Ok(Some(Box::new(f))),
                None => Ok(Some(Box::new(LowerReader {
                    tree,
                    node: *node,
                    pos: 0,
                }))),
            }
        }
    }
}

/// Reads a lower file without a backing file through [`LowerTree::read_at`].
struct LowerReader {
    tree: Arc<dyn LowerTree>,
    node: NodeId,
    pos: u64,
}

impl Read for LowerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.tree.read_at(self.node, buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemTree;

    fn lowers() -> Vec<Arc<dyn LowerTree>> {
        let top = MemTree::builder()
            .dir("etc", 0o755)
            .file("etc/a", b"top a", 0o644)
            .whiteout("etc/hidden")
            .build();
        let bottom = MemTree::builder()
            .dir("etc", 0o755)
            .file("etc/hidden", b"h", 0o644)
            .file("etc/old", b"o", 0o644)
            .dir("d", 0o755)
            .file("d/x", b"x", 0o644)
            .file("d/y", b"y", 0o644)
            .dir("src", 0o750)
            .file("src/f", b"f", 0o600)
            .dir("src/sub", 0o755)
            .symlink("src/sub/l", "../f")
            .file("big", &[9u8; 5000], 0o644)
            .build();
        vec![top, bottom]
    }

    fn user_xattrs_work(dir: &Path) -> bool {
        let p = dir.join("probe");
        std::fs::write(&p, b"").is_ok()
            && xattr::set(&p, b"user.strata.probe", b"1", 0).is_ok()
            && std::fs::remove_file(&p).is_ok()
    }

    fn listed(changes: &[Change]) -> Vec<String> {
        docker_diff(changes)
            .into_iter()
            .map(|(k, p)| format!("{} /{}", k.letter(), p.display()))
            .collect()
    }

    #[test]
    fn scan_reads_whiteout_files_and_opaque_markers() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path();
        std::fs::create_dir_all(up.join("etc")).unwrap();
        std::fs::write(up.join("etc/new"), b"n").unwrap();
        std::fs::write(up.join("etc/.wh.old"), b"").unwrap();
        // A whiteout of a name the image already hides is not a deletion.
        std::fs::write(up.join("etc/.wh.hidden"), b"").unwrap();
        std::fs::create_dir(up.join("d")).unwrap();
        std::fs::write(up.join("d/.wh..wh..opq"), b"").unwrap();
        std::fs::write(up.join("d/y"), b"new y").unwrap();
        let ch = scan_upper(up, &lowers()).unwrap();
        assert_eq!(
            listed(&ch),
            [
                "C /d",
                "D /d/x",
                "C /d/y",
                "C /etc",
                "A /etc/new",
                "D /etc/old"
            ]
        );
        let d = ch.iter().find(|c| c.path == Path::new("d")).unwrap();
        assert!(d.entry.as_ref().unwrap().opaque);
        let x = ch.iter().find(|c| c.path == Path::new("d/x")).unwrap();
        assert!(x.implied, "hidden by the opaque dir: no whiteout needed");
        let old = ch.iter().find(|c| c.path == Path::new("etc/old")).unwrap();
        assert!(!old.implied);
        let new = ch.iter().find(|c| c.path == Path::new("etc/new")).unwrap();
        assert_eq!(
            new.entry.as_ref().unwrap().content,
            Content::Upper(up.join("etc/new"))
        );
    }

    #[test]
    fn scan_expands_metacopy_and_redirects_from_the_lowers() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path();
        if !user_xattrs_work(up) {
            eprintln!("skipped: no user xattrs on {}", up.display());
            return;
        }
        std::fs::write(up.join("big"), b"").unwrap();
        xattr::set(&up.join("big"), b"user.strata.metacopy", b"big", 0).unwrap();
        std::fs::create_dir(up.join("moved")).unwrap();
        xattr::set(&up.join("moved"), b"user.strata.redirect", b"src", 0).unwrap();
        std::fs::write(up.join("moved/extra"), b"e").unwrap();
        std::fs::write(up.join(".wh.src"), b"").unwrap();
        let lw = lowers();
        let ch = scan_upper(up, &lw).unwrap();
        assert_eq!(
            listed(&ch),
            [
                "C /big",
                "A /moved",
                "A /moved/extra",
                "A /moved/f",
                "A /moved/sub",
                "A /moved/sub/l",
                "D /src"
            ]
        );
        let big = ch.iter().find(|c| c.path == Path::new("big")).unwrap();
        let e = big.entry.as_ref().unwrap();
        assert_eq!(e.size, 5000);
        let mut r = open_content(&lw, &e.content).unwrap().unwrap();
        let mut data = Vec::new();
        r.read_to_end(&mut data).unwrap();
        assert_eq!(data, vec![9u8; 5000]);
        let f = ch.iter().find(|c| c.path == Path::new("moved/f")).unwrap();
        let f = f.entry.as_ref().unwrap();
        assert!(!f.in_upper);
        assert_eq!((f.mode, f.size), (0o600, 1));
        let l = ch
            .iter()
            .find(|c| c.path == Path::new("moved/sub/l"))
            .unwrap();
        assert_eq!(
            l.entry.as_ref().unwrap().symlink.as_deref(),
            Some(OsStr::new("../f"))
        );
        let moved = ch.iter().find(|c| c.path == Path::new("moved")).unwrap();
        let m = moved.entry.as_ref().unwrap();
        assert_eq!(m.redirect, Some(Redirect::Absolute(PathBuf::from("src"))));
        assert!(!m.opaque, "the image has no 'moved': nothing to hide");
        assert!(m.xattrs.is_empty(), "internal markers are not user xattrs");
    }

    #[test]
    fn docker_diff_lists_parents_once_and_never_the_root() {
        let ch = |p: &str, kind, listed| Change {
            path: PathBuf::from(p),
            kind,
            entry: None,
            listed,
            implied: false,
        };
        let v = vec![
            ch("a", ChangeKind::Changed, false),
            ch("a/b", ChangeKind::Added, true),
            ch("a/c", ChangeKind::Deleted, true),
            ch("top", ChangeKind::Added, true),
            ch("n", ChangeKind::Added, true),
            ch("n/m", ChangeKind::Added, true),
        ];
        assert_eq!(
            listed(&v),
            ["C /a", "A /a/b", "D /a/c", "A /n", "A /n/m", "A /top"]
        );
    }
}
