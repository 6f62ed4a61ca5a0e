//! Mount API behaviour: store-index lowers, foreground mounts, passthrough, bad input.

use std::fs;
use std::io::Write;
use std::sync::Arc;

use unionfs::testing::MountedUnion;
use unionfs::{
    FsError, IndexEntry, IndexKind, IndexMeta, IndexTree, LowerTree, MountOptions, UnionConfig,
    UpperDirs,
};

use crate::common::*;

fn entry(path: &str, kind: IndexKind, mode: u32) -> IndexEntry {
    // Owned by whoever runs the test, so the rootless run may write too.
    let (uid, gid) = (
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    IndexEntry {
        path: path.into(),
        kind,
        meta: IndexMeta {
            mode,
            uid,
            gid,
            mtime: 1_600_000_000,
            ..IndexMeta::default()
        },
    }
}

/// Two store layers as the CLI builds them: entries plus content objects.
fn index_layers(s: &Scratch) -> Vec<Arc<dyn LowerTree>> {
    let obj = s.file("objects/ab/cd", b"#!/bin/sh\necho hi\n");
    let obj2 = s.file("objects/ef/01", b"config v2\n");
    let bottom = IndexTree::from_entries(vec![
        entry("bin", IndexKind::Dir, 0o755),
        entry(
            "bin/hello",
            IndexKind::File {
                size: 18,
                content: Some(obj),
            },
            0o755,
        ),
        entry(
            "bin/hi",
            IndexKind::HardLink {
                target: "bin/hello".into(),
            },
            0,
        ),
        entry(
            "etc/app.conf",
            IndexKind::File {
                size: 4,
                content: Some(s.file("objects/00/11", b"v1\n\n")),
            },
            0o644,
        ),
        entry(
            "etc/old",
            IndexKind::File {
                size: 0,
                content: None,
            },
            0o600,
        ),
        entry(
            "var/cache/x",
            IndexKind::File {
                size: 0,
                content: None,
            },
            0o644,
        ),
        entry(
            "sh",
            IndexKind::Symlink {
                target: "bin/hello".into(),
            },
            0o777,
        ),
    ])
    .unwrap();
    let top = IndexTree::from_entries(vec![
        entry(
            "etc/app.conf",
            IndexKind::File {
                size: 10,
                content: Some(obj2),
            },
            0o640,
        ),
        entry("etc/old", IndexKind::Whiteout, 0),
        entry("var/cache", IndexKind::Dir, 0o755),
        entry("var/cache", IndexKind::Opaque, 0),
        entry(
            "var/cache/y",
            IndexKind::File {
                size: 0,
                content: None,
            },
            0o644,
        ),
    ])
    .unwrap();
    vec![Arc::new(top), Arc::new(bottom)]
}

#[test]
fn rootless_store_layers() {
    if !fuse_available("rootless_store_layers") {
        return;
    }
    let s = Scratch::new();
    s.dir("upper");
    s.dir("work");
    let m = MountedUnion::mount(UnionConfig {
        lowers: index_layers(&s),
        upper: Some(UpperDirs {
            upper: s.path("upper"),
            work: s.path("work"),
        }),
        options: MountOptions::uncached(),
    })
    .unwrap();
    let p = m.path();
    assert_eq!(
        fs::read(p.join("bin/hello")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(fs::read(p.join("etc/app.conf")).unwrap(), b"config v2\n");
    assert_eq!(ls(&p.join("etc")), ["app.conf"]);
    assert_eq!(ls(&p.join("var/cache")), ["y"]);
    assert_eq!(
        fs::read_link(p.join("sh")).unwrap().to_str(),
        Some("bin/hello")
    );
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        fs::metadata(p.join("bin/hello")).unwrap(),
        fs::metadata(p.join("bin/hi")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink(), a.mode() & 0o7777), (b.ino(), 2, 0o755));
    // copy-up from an object file
    fs::OpenOptions::new()
        .append(true)
        .open(p.join("bin/hi"))
        .unwrap()
        .write_all(b"#\n")
        .unwrap();
    assert_eq!(
        fs::read(p.join("bin/hello")).unwrap(),
        b"#!/bin/sh\necho hi\n#\n"
    );
    assert_eq!(
        fs::read(s.path("objects/ab/cd")).unwrap(),
        b"#!/bin/sh\necho hi\n",
        "objects untouched"
    );
    m.unmount().unwrap();
}

#[test]
fn rootless_foreground_mount_returns_after_external_unmount() {
    if !fuse_available("rootless_foreground_mount_returns_after_external_unmount") {
        return;
    }
    let s = Scratch::new();
    standard_layers(&s);
    let mp = s.dir("fg");
    let cfg = UnionConfig {
        lowers: lowers(&s, &["l1", "l2"]),
        upper: None,
        options: MountOptions::uncached(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let mp2 = mp.clone();
    let t = std::thread::spawn(move || unionfs::mount(cfg, &mp2, move || tx.send(()).unwrap()));
    rx.recv().unwrap();
    assert_eq!(fs::read(mp.join("shadowed")).unwrap(), b"from l1");
    let st = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&mp)
        .status();
    if !st.is_ok_and(|s| s.success()) {
        let _ = std::process::Command::new("umount").arg(&mp).status();
    }
    t.join().unwrap().unwrap();
    assert!(!mp.join("shadowed").exists());
}

#[test]
fn rootless_work_dir_is_cleaned_at_mount() {
    if !fuse_available("rootless_work_dir_is_cleaned_at_mount") {
        return;
    }
    let s = Scratch::new();
    standard_layers(&s);
    s.file("work/strata-tmp-1-1", b"half a copy");
    s.file("work/leftover/deep", b"x");
    let m = mount_over(&s, &["l1", "l2"], true);
    assert!(fs::read_dir(s.path("work")).unwrap().next().is_none());
    m.unmount().unwrap();
}

#[test]
fn rootless_bad_mount_input() {
    let s = Scratch::new();
    standard_layers(&s);
    let cfg = || UnionConfig {
        lowers: lowers(&s, &["l1"]),
        upper: None,
        options: MountOptions::uncached(),
    };
    // not a directory
    let e = unionfs::spawn(cfg(), &s.path("l2/shadowed")).unwrap_err();
    assert!(
        matches!(e, FsError::Config(_) | FsError::FuseUnavailable(_)),
        "{e}"
    );
    // missing upper
    let bad = UnionConfig {
        upper: Some(UpperDirs {
            upper: s.path("nope"),
            work: s.path("work"),
        }),
        ..cfg()
    };
    let e = unionfs::spawn(bad, &s.dir("mp")).unwrap_err();
    assert!(
        matches!(e, FsError::Io { .. } | FsError::FuseUnavailable(_)),
        "{e}"
    );
    // a subtype that would break the mount options (or is empty) is refused before mounting
    for bad in ["a,b", "", "x y", "a=b"] {
        let mut c = cfg();
        c.options.subtype = Some(bad.into());
        let e = unionfs::spawn(c, &s.dir("mp")).unwrap_err();
        assert!(matches!(e, FsError::Config(_)), "{bad:?}: {e}");
        assert!(e.to_string().contains("subtype"), "{e}");
    }
    // the message for an unusable /dev/fuse tells what to do
    let msg = FsError::FuseUnavailable(std::io::Error::from_raw_os_error(libc::EACCES)).to_string();
    assert!(msg.contains("chmod 0666 /dev/fuse or run as root"), "{msg}");
}

/// `(fstype, source)` of the mount at `p`, from /proc/self/mountinfo (fields after ` - `).
fn mount_type(p: &std::path::Path) -> Option<(String, String)> {
    let p = p.canonicalize().unwrap();
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if left.split(' ').nth(4)? != p.to_str()? {
            return None;
        }
        let mut r = right.split(' ');
        Some((r.next()?.to_owned(), r.next()?.to_owned()))
    })
}

/// The mount type is `fuse.SUBTYPE` on both of fuser's paths: mount(2) as root, fusermount3
/// rootless (this test runs again as an unprivileged user).
#[test]
fn rootless_mount_type_shows_the_subtype() {
    if !fuse_available("rootless_mount_type_shows_the_subtype") {
        return;
    }
    let s = Scratch::new();
    standard_layers(&s);
    let mount = |options: MountOptions, writable: bool| {
        MountedUnion::mount(UnionConfig {
            lowers: lowers(&s, &["l1", "l2"]),
            upper: writable.then(|| UpperDirs {
                upper: s.path("upper"),
                work: s.path("work"),
            }),
            options,
        })
        .unwrap()
    };
    let pair = |t: &str, src: &str| Some((t.to_owned(), src.to_owned()));
    // the default: `strata mount`, `strata container mount`, `strata run`
    let m = mount(MountOptions::uncached(), false);
    assert_eq!(mount_type(m.path()), pair("fuse.strata", "strata"));
    assert_eq!(fs::read(m.path().join("shadowed")).unwrap(), b"from l1");
    m.unmount().unwrap();
    // the fuse-overlayfs drop-in's: fuse-overlayfs's source, its own subtype
    let m = mount(
        MountOptions {
            fs_name: "fuse-overlayfs".into(),
            subtype: Some("strata-overlayfs".into()),
            ..MountOptions::uncached()
        },
        true,
    );
    assert_eq!(
        mount_type(m.path()),
        pair("fuse.strata-overlayfs", "fuse-overlayfs")
    );
    fs::write(m.path().join("new"), b"x").unwrap();
    m.unmount().unwrap();
    // no subtype: plain `fuse`
    let m = mount(
        MountOptions {
            subtype: None,
            ..MountOptions::uncached()
        },
        false,
    );
    assert_eq!(mount_type(m.path()), pair("fuse", "strata"));
    m.unmount().unwrap();
}

#[test]
fn passthrough_reads_lower_files() {
    if !fuse_available("passthrough_reads_lower_files") {
        return;
    }
    if !rustix_is_root() {
        eprintln!("skipped: passthrough_reads_lower_files: FUSE passthrough needs CAP_SYS_ADMIN");
        return;
    }
    let s = Scratch::new();
    standard_layers(&s);
    let options = MountOptions {
        passthrough: true,
        ..MountOptions::uncached()
    };
    let m = MountedUnion::mount(UnionConfig {
        lowers: lowers(&s, &["l1", "l2"]),
        upper: Some(UpperDirs {
            upper: s.path("upper"),
            work: s.path("work"),
        }),
        options,
    })
    .unwrap();
    let p = m.path().join("big");
    let r1 = fs::File::open(&p).unwrap();
    assert_eq!(fs::read(&p).unwrap().len(), 4 << 20);
    // copied-up files are passthrough for readers and writers alike
    let q = m.path().join("shadowed");
    let mut w1 = fs::OpenOptions::new().append(true).open(&q).unwrap();
    let r2 = fs::File::open(&q).unwrap();
    w1.write_all(b"+").unwrap();
    assert_eq!(fs::read(&q).unwrap(), b"from l1+");
    drop((w1, r2));
    // a writer while a passthrough reader is open, then reads after the copy-up
    let w = fs::OpenOptions::new().append(true).open(&p);
    match w {
        Ok(mut w) => {
            w.write_all(b"!").unwrap();
            drop(w);
            drop(r1);
            let d = fs::read(&p).unwrap();
            assert_eq!((d.len(), d[d.len() - 1]), ((4 << 20) + 1, b'!'));
            // The write went to the copy in the upper, never to the layer. (A writer that
            // shares a reader's passthrough backing file gets the lower file itself opened for
            // writing by the kernel: fuse-overlayfs 2.0 appends to the lower layer this way.)
            assert_eq!(fs::read(s.path("upper/big")).unwrap(), d);
            assert_eq!(fs::read(s.path("l2/big")).unwrap(), vec![b'b'; 4 << 20]);
        }
        Err(e) => panic!("open for write beside a passthrough reader: {e}"),
    }
    assert_eq!(
        fs::read(m.path().join("etc/os-release")).unwrap(),
        b"NAME=strata-test\n"
    );
    m.unmount().unwrap();
}

#[test]
fn passthrough_read_only_union() {
    if !fuse_available("passthrough_read_only_union") {
        return;
    }
    if !rustix_is_root() {
        eprintln!("skipped: passthrough_read_only_union: FUSE passthrough needs CAP_SYS_ADMIN");
        return;
    }
    let s = Scratch::new();
    standard_layers(&s);
    let options = MountOptions {
        passthrough: true,
        ..MountOptions::uncached()
    };
    let m = MountedUnion::mount(UnionConfig {
        lowers: lowers(&s, &["l1", "l2"]),
        upper: None,
        options,
    })
    .unwrap();
    let (a, b) = (
        fs::File::open(m.path().join("big")).unwrap(),
        fs::read(m.path().join("big")).unwrap(),
    );
    assert_eq!(b.len(), 4 << 20);
    drop(a);
    assert_eq!(fs::read(m.path().join("shadowed")).unwrap(), b"from l1");
    m.unmount().unwrap();
}

#[test]
fn rootless_writeback_cache() {
    if !fuse_available("rootless_writeback_cache") {
        return;
    }
    let s = Scratch::new();
    standard_layers(&s);
    let options = MountOptions {
        writeback_cache: true,
        ..MountOptions::uncached()
    };
    let m = MountedUnion::mount(UnionConfig {
        lowers: lowers(&s, &["l1", "l2"]),
        upper: Some(UpperDirs {
            upper: s.path("upper"),
            work: s.path("work"),
        }),
        options,
    })
    .unwrap();
    let p = m.path().join("etc/passwd");
    {
        use std::io::{Seek, SeekFrom};
        let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(2)).unwrap();
        f.write_all(b"XX").unwrap();
        let mut a = fs::OpenOptions::new().append(true).open(&p).unwrap();
        a.write_all(b"tail").unwrap();
    }
    assert_eq!(fs::read(&p).unwrap(), b"roXX:x:0:0::/root:/bin/sh\ntail");
    fs::write(m.path().join("new"), b"wb").unwrap();
    assert_eq!(fs::read(m.path().join("new")).unwrap(), b"wb");
    m.unmount().unwrap();
    assert_eq!(
        fs::read(s.path("upper/etc/passwd")).unwrap(),
        b"roXX:x:0:0::/root:/bin/sh\ntail"
    );
}

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn rootless_mount_unmount_cycles_do_not_leak() {
    if !fuse_available("rootless_mount_unmount_cycles_do_not_leak") {
        return;
    }
    let s = Scratch::new();
    standard_layers(&s);
    // one warm-up cycle, then 100 more; other tests run in parallel threads, so allow slack
    let m = mount_over(&s, &["l1", "l2"], true);
    m.unmount().unwrap();
    let before = open_fds();
    for i in 0..100 {
        let m = mount_over(&s, &["l1", "l2"], true);
        fs::write(m.path().join(format!("f{i}")), b"x").unwrap();
        assert_eq!(fs::read(m.path().join("shadowed")).unwrap(), b"from l1");
        m.unmount().unwrap();
    }
    let after = open_fds();
    assert!(
        after <= before + 16,
        "fds grew from {before} to {after} over 100 mounts"
    );
    let mounted = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounted.contains(&*s.dir.path().to_string_lossy()));
    assert_eq!(
        fs::read_dir(s.path("upper"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with('f'))
            })
            .count(),
        100
    );
}
