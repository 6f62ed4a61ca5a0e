//! Merge logic over `MemTree`s, without FUSE.

use super::write::SetAttr;
use super::*;
use crate::testing::MemTree;
use std::os::unix::fs::MetadataExt;

fn caller() -> Caller {
    Caller { uid: 0, gid: 0 }
}

fn layers() -> Vec<Arc<dyn LowerTree>> {
    let top = MemTree::builder()
        .dir("d", 0o755)
        .file("d/top", b"top", 0o644)
        .whiteout("d/gone")
        .file("shadow", b"from top", 0o600)
        .dir("opq", 0o700)
        .opaque("opq")
        .file("opq/new", b"n", 0o644)
        .build();
    let bottom = MemTree::builder()
        .dir("d", 0o755)
        .file("d/gone", b"x", 0o644)
        .file("d/bottom", b"bottom", 0o644)
        .file("shadow", b"from bottom", 0o644)
        .dir("opq", 0o755)
        .file("opq/hidden", b"h", 0o644)
        .file("big", &vec![7u8; 3 << 20], 0o4755)
        .file("a", b"linked", 0o644)
        .hardlink("b", "a")
        .build();
    vec![top, bottom]
}

struct Fx {
    fs: UnionFs,
    _upper: tempfile::TempDir,
}

fn fx() -> Fx {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("u")).unwrap();
    std::fs::create_dir(d.path().join("w")).unwrap();
    let fs = UnionFs::new(
        layers(),
        Some((d.path().join("u"), d.path().join("w"))),
        FsOptions {
            fsync_copy_up: false,
            ..FsOptions::default()
        },
    )
    .unwrap();
    Fx { fs, _upper: d }
}

fn names(fs: &UnionFs, ino: Ino) -> Vec<String> {
    let fh = fs.opendir(ino).unwrap();
    let v = fs
        .readdir(fh, 2)
        .unwrap()
        .into_iter()
        .map(|i| i.name.to_string_lossy().into_owned())
        .collect();
    fs.release(fh);
    v
}

fn read_all(fs: &UnionFs, ino: Ino) -> Vec<u8> {
    let fh = fs.open(ino, libc::O_RDONLY).unwrap();
    let v = fs.read(fh, 0, 16 << 20).unwrap();
    fs.release(fh);
    v
}

fn lk(fs: &UnionFs, parent: Ino, name: &str) -> Result<Entry> {
    fs.lookup(parent, OsStr::new(name))
}

#[test]
fn merged_readdir_hides_whiteouts_and_opaque_lowers() {
    let f = fx();
    assert_eq!(
        names(&f.fs, ROOT_INO),
        ["a", "b", "big", "d", "opq", "shadow"]
    );
    let d = lk(&f.fs, ROOT_INO, "d").unwrap().attr.ino;
    assert_eq!(names(&f.fs, d), ["bottom", "top"]);
    let o = lk(&f.fs, ROOT_INO, "opq").unwrap().attr.ino;
    assert_eq!(names(&f.fs, o), ["new"]);
    assert!(matches!(lk(&f.fs, d, "gone"), Err(FsError::NotFound)));
    assert!(matches!(lk(&f.fs, o, "hidden"), Err(FsError::NotFound)));
    assert_eq!(lk(&f.fs, ROOT_INO, "shadow").unwrap().attr.perm, 0o600);
    assert_eq!(
        read_all(&f.fs, lk(&f.fs, ROOT_INO, "shadow").unwrap().attr.ino),
        b"from top"
    );
}

#[test]
fn hard_links_share_an_inode_and_count() {
    let f = fx();
    let a = lk(&f.fs, ROOT_INO, "a").unwrap().attr;
    let b = lk(&f.fs, ROOT_INO, "b").unwrap().attr;
    assert_eq!(a.ino, b.ino);
    assert_eq!(a.nlink, 2);
    // write through one name, read through the other
    let fh = f.fs.open(a.ino, libc::O_WRONLY | libc::O_TRUNC).unwrap();
    f.fs.write(fh, 0, b"new").unwrap();
    f.fs.release(fh);
    let b2 = lk(&f.fs, ROOT_INO, "b").unwrap().attr;
    assert_eq!(b2.ino, a.ino);
    assert_eq!(read_all(&f.fs, b2.ino), b"new");
    f.fs.link(a.ino, ROOT_INO, OsStr::new("c")).unwrap();
    assert_eq!(f.fs.getattr(a.ino, None).unwrap().nlink, 3);
    f.fs.unlink(ROOT_INO, OsStr::new("a")).unwrap();
    assert_eq!(f.fs.getattr(b2.ino, None).unwrap().nlink, 2);
}

#[test]
fn chmod_of_lower_file_is_metadata_only() {
    let f = fx();
    let big = lk(&f.fs, ROOT_INO, "big").unwrap().attr;
    let a =
        f.fs.setattr(
            big.ino,
            SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!((a.perm, a.size, a.ino), (0o600, 3 << 20, big.ino));
    let on_disk = f._upper.path().join("u/big").metadata().unwrap();
    // overlayfs's placeholder: the data's size, as a hole
    assert_eq!(on_disk.len(), 3 << 20);
    assert!(
        on_disk.blocks() * 512 < 1 << 20,
        "data must not be copied for a chmod"
    );
    assert_eq!(read_all(&f.fs, big.ino).len(), 3 << 20);
    // now write: data is filled in, mode kept
    let fh = f.fs.open(big.ino, libc::O_RDWR).unwrap();
    f.fs.write(fh, 0, b"X").unwrap();
    f.fs.release(fh);
    let a = f.fs.getattr(big.ino, None).unwrap();
    assert_eq!((a.perm, a.size), (0o600, 3 << 20));
    let data = read_all(&f.fs, big.ino);
    assert_eq!((data[0], data[1]), (b'X', 7));
    assert!(f.fs.listxattr(big.ino).unwrap().is_empty());
}

#[test]
fn unlink_and_rmdir_leave_whiteouts() {
    let f = fx();
    let d = lk(&f.fs, ROOT_INO, "d").unwrap().attr.ino;
    f.fs.unlink(d, OsStr::new("bottom")).unwrap();
    f.fs.unlink(d, OsStr::new("top")).unwrap();
    assert!(names(&f.fs, d).is_empty());
    f.fs.rmdir(ROOT_INO, OsStr::new("d")).unwrap();
    assert!(!names(&f.fs, ROOT_INO).contains(&"d".to_owned()));
    // a new dir with the same name is opaque: nothing from below shows through
    let nd =
        f.fs.mkdir(ROOT_INO, OsStr::new("d"), 0o755, 0, caller())
            .unwrap();
    assert!(names(&f.fs, nd.attr.ino).is_empty());
    assert!(matches!(
        f.fs.rmdir(ROOT_INO, OsStr::new("opq")),
        Err(FsError::NotEmpty)
    ));
}

#[test]
fn rename_of_lower_dir_keeps_content_and_inodes() {
    let f = fx();
    let d = lk(&f.fs, ROOT_INO, "d").unwrap().attr.ino;
    let top = lk(&f.fs, d, "top").unwrap().attr.ino;
    f.fs.rename(ROOT_INO, OsStr::new("d"), ROOT_INO, OsStr::new("e"), 0)
        .unwrap();
    assert!(matches!(lk(&f.fs, ROOT_INO, "d"), Err(FsError::NotFound)));
    let e = lk(&f.fs, ROOT_INO, "e").unwrap().attr.ino;
    assert_eq!(e, d);
    assert_eq!(names(&f.fs, e), ["bottom", "top"]);
    assert_eq!(lk(&f.fs, e, "top").unwrap().attr.ino, top);
    // a fresh union over the same upper sees the same tree (the redirect is on disk)
    let fs2 = UnionFs::new(
        layers(),
        Some((f._upper.path().join("u"), f._upper.path().join("w"))),
        FsOptions::default(),
    )
    .unwrap();
    let e2 = lk(&fs2, ROOT_INO, "e").unwrap().attr.ino;
    assert_eq!(names(&fs2, e2), ["bottom", "top"]);
    assert!(matches!(lk(&fs2, ROOT_INO, "d"), Err(FsError::NotFound)));
}

#[test]
fn rename_of_lower_file_is_metadata_only_and_persists() {
    let f = fx();
    let big = lk(&f.fs, ROOT_INO, "big").unwrap().attr.ino;
    f.fs.rename(
        ROOT_INO,
        OsStr::new("big"),
        ROOT_INO,
        OsStr::new("moved"),
        0,
    )
    .unwrap();
    assert_eq!(lk(&f.fs, ROOT_INO, "moved").unwrap().attr.ino, big);
    assert_eq!(read_all(&f.fs, big).len(), 3 << 20);
    let on_disk = f._upper.path().join("u/moved").metadata().unwrap();
    assert!(
        on_disk.blocks() * 512 < 1 << 20,
        "no data copied by a rename"
    );
    let fs2 = UnionFs::new(
        layers(),
        Some((f._upper.path().join("u"), f._upper.path().join("w"))),
        FsOptions::default(),
    )
    .unwrap();
    let m = lk(&fs2, ROOT_INO, "moved").unwrap();
    assert_eq!(m.attr.size, 3 << 20);
    assert_eq!(m.attr.perm, 0o4755);
    assert!(matches!(lk(&fs2, ROOT_INO, "big"), Err(FsError::NotFound)));
}

#[test]
fn create_excl_and_reserved_names() {
    let f = fx();
    let (e, fh) =
        f.fs.create(
            ROOT_INO,
            OsStr::new("n"),
            0o644,
            0o022,
            libc::O_RDWR,
            caller(),
        )
        .unwrap();
    f.fs.write(fh, 0, b"hello").unwrap();
    f.fs.release(fh);
    assert_eq!(f.fs.getattr(e.attr.ino, None).unwrap().size, 5);
    assert!(matches!(
        f.fs.create(
            ROOT_INO,
            OsStr::new("n"),
            0o644,
            0,
            libc::O_RDWR | libc::O_EXCL,
            caller()
        ),
        Err(FsError::Exists)
    ));
    assert!(matches!(
        f.fs.create(
            ROOT_INO,
            OsStr::new(".wh.x"),
            0o644,
            0,
            libc::O_RDWR,
            caller()
        ),
        Err(FsError::ReservedName(_))
    ));
}

#[test]
fn read_only_union_refuses_writes() {
    let fs = UnionFs::new(layers(), None, FsOptions::default()).unwrap();
    let a = lk(&fs, ROOT_INO, "a").unwrap().attr.ino;
    assert!(matches!(fs.open(a, libc::O_WRONLY), Err(FsError::ReadOnly)));
    assert_eq!(FsError::ReadOnly.errno(), libc::EROFS);
}

#[test]
fn readdir_offsets_are_stable() {
    let f = fx();
    let fh = f.fs.opendir(ROOT_INO).unwrap();
    let all = f.fs.readdir(fh, 0).unwrap();
    for off in 0..all.len() {
        assert_eq!(f.fs.readdir(fh, off as u64).unwrap(), all[off..].to_vec());
    }
}

#[test]
fn link_to_lower_hard_link_counts_every_name() {
    let f = fx();
    names(&f.fs, ROOT_INO); // numbers a and b before any lookup
    let a = lk(&f.fs, ROOT_INO, "a").unwrap().attr.ino;
    lk(&f.fs, ROOT_INO, "b").unwrap();
    f.fs.link(a, ROOT_INO, OsStr::new("c")).unwrap();
    for n in ["a", "b", "c", "b", "a"] {
        let e = lk(&f.fs, ROOT_INO, n).unwrap().attr;
        assert_eq!((n, e.ino, e.nlink), (n, a, 3));
    }
}

#[test]
fn unlinking_the_copied_up_name_keeps_the_other_hard_link() {
    let f = fx();
    let a = lk(&f.fs, ROOT_INO, "a").unwrap().attr.ino;
    lk(&f.fs, ROOT_INO, "b").unwrap();
    let fh = f.fs.open(a, libc::O_WRONLY | libc::O_APPEND).unwrap();
    f.fs.write(fh, 6, b"!").unwrap();
    f.fs.release(fh);
    f.fs.unlink(ROOT_INO, OsStr::new("a")).unwrap();
    let b = lk(&f.fs, ROOT_INO, "b").unwrap().attr;
    assert_eq!((b.ino, b.nlink), (a, 1));
    assert_eq!(read_all(&f.fs, b.ino), b"linked!");
    assert!(f._upper.path().join("u/b").exists());
}

#[test]
fn setattr_after_unlink_never_recreates_the_name() {
    let f = fx();
    let d = lk(&f.fs, ROOT_INO, "d").unwrap().attr.ino;
    let top = lk(&f.fs, d, "top").unwrap().attr.ino;
    f.fs.unlink(d, OsStr::new("top")).unwrap();
    let set = SetAttr {
        mtime: Some(super::write::SetTime::Now),
        ..Default::default()
    };
    let _ = f.fs.setattr(top, set, None);
    assert!(matches!(lk(&f.fs, d, "top"), Err(FsError::NotFound)));
    assert!(!names(&f.fs, d).contains(&"top".to_owned()));
}

/// `readdir_at` (no handles): a read split over several calls goes on in the listing it
/// started with, even after names changed and another reader started over.
#[test]
fn handleless_readdir_offsets_survive_changes() {
    let f = fx();
    for i in 0..50 {
        f.fs.create(
            ROOT_INO,
            OsStr::new(&format!("n{i:02}")),
            0o644,
            0,
            libc::O_WRONLY,
            caller(),
        )
        .map(|(_, fh)| f.fs.release(fh))
        .unwrap();
    }
    let read = |offset: u64, max: usize| {
        let mut out = Vec::new();
        f.fs.readdir_at(ROOT_INO, offset, |next, item| {
            out.push((next, item.name.to_string_lossy().into_owned()));
            out.len() < max
        })
        .unwrap();
        out
    };
    let first = read(0, 20);
    let resume = first.last().unwrap().0;
    // Remove names already returned and names not yet returned.
    for n in ["n00", "n10", "n30", "n40"] {
        f.fs.unlink(ROOT_INO, OsStr::new(n)).unwrap();
    }
    // Another reader starts over and sees the change...
    let fresh: Vec<String> = read(0, usize::MAX).into_iter().map(|x| x.1).collect();
    assert!(!fresh.contains(&"n30".to_owned()) && fresh.contains(&"n31".to_owned()));
    // ...and the first reader still goes on in its own listing: nothing skipped or repeated.
    let rest = read(resume, usize::MAX);
    let mut all: Vec<String> = first.into_iter().chain(rest).map(|x| x.1).collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "a name came twice");
    for i in 0..50 {
        assert!(all.contains(&format!("n{i:02}")), "n{i:02} was skipped");
    }
    // Offsets are never 0 and a fresh read of an unchanged directory reuses its listing.
    let a = read(0, usize::MAX);
    let b = read(0, usize::MAX);
    assert_eq!(a, b);
    assert!(a.iter().all(|x| x.0 != 0));
}

#[test]
fn lower_only_listing_read_to_its_end_is_taken_anew_for_an_old_offset() {
    let f = fx();
    let d = f.fs.lookup(ROOT_INO, OsStr::new("d")).unwrap().attr.ino;
    let read = |offset: u64, max: usize| {
        let mut out = Vec::new();
        f.fs.readdir_at(d, offset, |next, item| {
            out.push((next, item.ino, item.name.to_string_lossy().into_owned()));
            out.len() < max
        })
        .unwrap();
        out
    };
    let first = read(0, 3);
    let resume = first.last().unwrap().0;
    let rest = read(resume, usize::MAX);
    assert!(!rest.is_empty());
    // The call past the end lets the listing go...
    assert!(read(rest.last().unwrap().0, usize::MAX).is_empty());
    // ...and an old offset still goes on with the same names and inode numbers...
    let again: Vec<_> = read(resume, usize::MAX)
        .into_iter()
        .map(|x| (x.1, x.2))
        .collect();
    let before: Vec<_> = rest.iter().map(|x| (x.1, x.2.clone())).collect();
    assert_eq!(again, before);
    // ...also after the directory changed: the old listing comes back from the lowers, so a
    // name sorted before the resume point does not shift the rest (no name twice or skipped).
    assert!(read(rest.last().unwrap().0, usize::MAX).is_empty());
    f.fs.create(d, OsStr::new("0-new"), 0o644, 0, libc::O_WRONLY, caller())
        .map(|(_, fh)| f.fs.release(fh))
        .unwrap();
    let after: Vec<_> = read(resume, usize::MAX)
        .into_iter()
        .map(|x| (x.1, x.2))
        .collect();
    assert_eq!(after, before);
    let fresh: Vec<String> = read(0, usize::MAX).into_iter().map(|x| x.2).collect();
    assert!(fresh.contains(&"0-new".to_owned()));
}

/// A layer imported from an overlay upper (xattrs kept by the store) is followed like a
/// `DirTree` one: a metadata-only file reads its data from below, renamed or not.
#[test]
fn store_layers_with_overlay_markers_are_followed() {
    let top = MemTree::builder()
        .file_with(
            "moved",
            &[0u8; 0],
            0o600,
            7,
            7,
            vec![
                (b"trusted.overlay.metacopy".to_vec(), Vec::new()),
                (b"trusted.overlay.redirect".to_vec(), b"shadow".to_vec()),
            ],
        )
        .file_with(
            "a",
            &[0u8; 0],
            0o640,
            0,
            0,
            vec![(b"user.overlay.metacopy".to_vec(), Vec::new())],
        )
        .whiteout("shadow")
        .build();
    let mut all = vec![top as Arc<dyn LowerTree>];
    all.extend(layers());
    let fs = UnionFs::new(all, None, FsOptions::default()).unwrap();
    let moved = lk(&fs, ROOT_INO, "moved").unwrap().attr;
    assert_eq!((moved.perm, moved.uid, moved.size), (0o600, 7, 8));
    assert_eq!(read_all(&fs, moved.ino), b"from top");
    assert!(lk(&fs, ROOT_INO, "shadow").is_err(), "whited out above");
    let a = lk(&fs, ROOT_INO, "a").unwrap().attr;
    assert_eq!((a.perm, a.size), (0o640, 6));
    assert_eq!(read_all(&fs, a.ino), b"linked");
    assert!(
        fs.listxattr(moved.ino).unwrap().is_empty(),
        "markers are never user xattrs"
    );
}
