//! Fixtures shared by the mounted tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use unionfs::testing::MountedUnion;
use unionfs::{DirTree, LowerTree, MountOptions, UnionConfig, UpperDirs};

/// Whether mounted tests can run; prints `skipped: <why>` when not. Panics instead when
/// `STRATA_REQUIRE_FUSE=1`, because a silent skip in CI is a lie.
pub fn fuse_available(test: &str) -> bool {
    let why = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(_) => {
            let root = rustix_is_root();
            let fusermount = std::process::Command::new("fusermount3")
                .arg("-V")
                .output()
                .is_ok();
            if root || fusermount {
                return true;
            }
            "not root and no fusermount3 in PATH".to_owned()
        }
        Err(e) => format!("/dev/fuse is not accessible: {e}"),
    };
    if std::env::var("STRATA_REQUIRE_FUSE").as_deref() == Ok("1") {
        panic!("{test}: FUSE required (STRATA_REQUIRE_FUSE=1) but {why}");
    }
    eprintln!("skipped: {test}: {why}");
    false
}

pub fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// A scratch area: lower dirs, upper, work.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("strata-test-data-")
                .tempdir()
                .unwrap(),
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    /// Writes a file (creating parents).
    pub fn file(&self, rel: &str, content: &[u8]) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }
    pub fn dir(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

/// The standard two-layer fixture (`l1` on top of `l2`), as plain directories.
pub fn standard_layers(s: &Scratch) {
    // bottom
    s.file("l2/etc/os-release", b"NAME=strata-test\n");
    s.file("l2/etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    s.file("l2/dir/bottom", b"bottom");
    s.file("l2/dir/gone", b"will be whited out");
    s.file("l2/shadowed", b"from l2");
    s.file("l2/opq/hidden", b"hidden by opaque dir");
    s.file("l2/big", &vec![b'b'; 4 << 20]);
    s.file("l2/hl/a", b"hard linked");
    std::fs::hard_link(s.path("l2/hl/a"), s.path("l2/hl/b")).unwrap();
    s.dir("l2/deep/er/est");
    s.file("l2/deep/er/est/leaf", b"leaf");
    std::os::unix::fs::symlink("etc/os-release", s.path("l2/link")).unwrap();
    // top
    s.file("l1/dir/top", b"top");
    s.file("l1/dir/.wh.gone", b"");
    s.file("l1/shadowed", b"from l1");
    s.file("l1/opq/.wh..wh..opq", b"");
    s.file("l1/opq/visible", b"v");
    s.dir("upper");
    s.dir("work");
}

pub fn lowers(s: &Scratch, names: &[&str]) -> Vec<Arc<dyn LowerTree>> {
    names
        .iter()
        .map(|n| Arc::new(DirTree::open(s.path(n)).unwrap()) as Arc<dyn LowerTree>)
        .collect()
}

pub fn mount_standard(s: &Scratch, writable: bool) -> MountedUnion {
    standard_layers(s);
    mount_over(s, &["l1", "l2"], writable)
}

pub fn mount_over(s: &Scratch, names: &[&str], writable: bool) -> MountedUnion {
    let upper = writable.then(|| UpperDirs {
        upper: s.path("upper"),
        work: s.path("work"),
    });
    MountedUnion::mount(UnionConfig {
        lowers: lowers(s, names),
        upper,
        options: test_options(),
    })
    .unwrap()
}

/// Zero TTLs (`STRATA_TEST_CACHED=1`: the production TTLs, to check that strata's own changes
/// never leave the kernel's caches stale); `STRATA_TEST_WRITEBACK=1` or
/// `STRATA_TEST_PASSTHROUGH=1` rerun the suite in the modes the CLI uses rootless and as root.
pub fn test_options() -> MountOptions {
    let on = |v: &str| std::env::var(v).as_deref() == Ok("1");
    let base = if on("STRATA_TEST_CACHED") {
        MountOptions {
            fsync_copy_up: false,
            ..MountOptions::default()
        }
    } else {
        MountOptions::uncached()
    };
    MountOptions {
        writeback_cache: on("STRATA_TEST_WRITEBACK"),
        passthrough: on("STRATA_TEST_PASSTHROUGH"),
        ..base
    }
}

pub fn ls(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Mounts strata over dirs of `s` (`lowers` top first) with `upper_work` = (upper, work) dirs of
/// `s` (created if missing), or read-only when `None`.
pub fn mount_layers(s: &Scratch, names: &[&str], upper_work: Option<(&str, &str)>) -> MountedUnion {
    let upper = upper_work.map(|(u, w)| UpperDirs {
        upper: s.dir(u),
        work: s.dir(w),
    });
    MountedUnion::mount(UnionConfig {
        lowers: lowers(s, names),
        upper,
        options: test_options(),
    })
    .unwrap()
}

/// The mtime that [`set_old_mtimes`] gives fixture entries. [`tree_view`] shows a non-directory's
/// mtime only when it is older than [`RECENT`]: fixture times and times set explicitly
/// (`touch -d`) are compared, times of writes made by the test are not.
pub const OLD_MTIME: i64 = 1_000_000_000;
/// See [`OLD_MTIME`] (2017-07-14).
pub const RECENT: i64 = 1_500_000_000;

/// Sets atime and mtime of every non-directory under `dir` (symlinks themselves) to
/// [`OLD_MTIME`].
pub fn set_old_mtimes(dir: &Path) {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps};
    let t = Timespec {
        tv_sec: OLD_MTIME,
        tv_nsec: 0,
    };
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            set_old_mtimes(&e.path());
        } else {
            let times = Timestamps {
                last_access: t,
                last_modification: t,
            };
            rustix::fs::utimensat(CWD, e.path(), &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
        }
    }
}

/// One entry of a [`tree_view`]: `what` is everything but the hard-link facts, `links` is
/// `nlink=N inode-of=FIRST-PATH` for non-directories (empty for directories).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    pub what: String,
    pub links: String,
}

/// Everything a user sees of a tree, path by path: a directory's sorted names (key `DIR/`);
/// per entry its type, mode, uid:gid, `user.*` xattrs, and for non-directories size, content
/// (length, hash and head), symlink target, mtime when older than [`RECENT`], `st_nlink` and
/// which names share an inode (the first name of each inode in walk order). Not inode numbers,
/// other times, or directory link counts. Never opens anything but regular files. An error
/// (a listed name that cannot be looked up or read) is part of the view, not a panic.
pub fn tree_view(root: &Path) -> BTreeMap<String, EntryView> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = BTreeMap::new();
    let mut first_name: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    let err = |op: &str, e: std::io::Error| format!("<{op}: {e}>");
    while let Some(rel) = stack.pop() {
        let names = std::fs::read_dir(root.join(&rel)).and_then(|rd| {
            rd.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<Vec<String>>>()
        });
        let mut names = match names {
            Ok(names) => names,
            Err(e) => {
                let what = err("readdir", e);
                out.insert(
                    format!("{}/", rel.display()),
                    EntryView {
                        what,
                        links: String::new(),
                    },
                );
                continue;
            }
        };
        names.sort();
        let listing = EntryView {
            what: format!("{names:?}"),
            links: String::new(),
        };
        out.insert(format!("{}/", rel.display()), listing);
        for n in names {
            let r = rel.join(&n);
            let p = root.join(&r);
            let md = match std::fs::symlink_metadata(&p) {
                Ok(md) => md,
                Err(e) => {
                    let what = err("stat", e);
                    out.insert(
                        r.display().to_string(),
                        EntryView {
                            what,
                            links: String::new(),
                        },
                    );
                    continue;
                }
            };
            let ft = md.file_type();
            let mut what = format!("{:o} {}:{}", md.mode() & 0o7777, md.uid(), md.gid());
            let mut links = String::new();
            if ft.is_dir() {
                stack.push(r.clone());
                what.insert_str(0, "dir ");
            } else {
                let kind = if ft.is_symlink() {
                    match std::fs::read_link(&p) {
                        Ok(t) => format!("link -> {}", t.display()),
                        Err(e) => format!("link {}", err("readlink", e)),
                    }
                } else if ft.is_file() {
                    let content = match std::fs::read(&p) {
                        Ok(data) => {
                            let head = String::from_utf8_lossy(&data[..data.len().min(24)]);
                            format!(
                                "read={} hash={:016x} {head:?}",
                                data.len(),
                                content_hash(&data)
                            )
                        }
                        Err(e) => err("read", e),
                    };
                    format!("file size={} {content}", md.len())
                } else if ft.is_fifo() {
                    "fifo".to_owned()
                } else if ft.is_socket() {
                    "socket".to_owned()
                } else {
                    format!("device {:x}", md.rdev())
                };
                what.insert_str(0, &format!("{kind} "));
                if md.mtime() < RECENT {
                    what.push_str(&format!(" mtime={}", md.mtime()));
                }
                let first = first_name
                    .entry(md.ino())
                    .or_insert_with(|| r.display().to_string());
                links = format!("nlink={} inode-of={first}", md.nlink());
            }
            for (name, value) in user_xattrs(&p) {
                what.push_str(&format!(" {name}={value:?}"));
            }
            out.insert(r.display().to_string(), EntryView { what, links });
        }
    }
    out
}

/// FNV-1a over the data: enough to tell contents apart in a diff.
fn content_hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The `user.*` xattrs of `p` itself (not following a symlink), sorted by name.
pub fn user_xattrs(p: &Path) -> Vec<(String, String)> {
    let mut list = vec![0u8; 64 << 10];
    let Ok(n) = rustix::fs::llistxattr(p, &mut list[..]) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = list[..n]
        .split(|b| *b == 0)
        .filter(|name| name.starts_with(b"user."))
        .map(|name| {
            let name = String::from_utf8_lossy(name).into_owned();
            let mut value = vec![0u8; 64 << 10];
            let value = match rustix::fs::lgetxattr(p, name.as_str(), &mut value[..]) {
                Ok(len) => String::from_utf8_lossy(&value[..len]).into_owned(),
                Err(e) => format!("<{e}>"),
            };
            (name, value)
        })
        .collect();
    out.sort();
    out
}

/// The differences between two [`tree_view`]s, one line per path; hard-link facts are left out
/// when `with_links` is false.
pub fn view_diff(
    a_name: &str,
    a: &BTreeMap<String, EntryView>,
    b_name: &str,
    b: &BTreeMap<String, EntryView>,
    with_links: bool,
) -> Vec<String> {
    let show = |v: &EntryView| {
        if with_links && !v.links.is_empty() {
            format!("{} {}", v.what, v.links)
        } else {
            v.what.clone()
        }
    };
    let mut out = Vec::new();
    for (p, va) in a {
        match b.get(p) {
            None => out.push(format!("{p}: {a_name} {} / {b_name}: missing", show(va))),
            Some(vb) if show(va) != show(vb) => {
                out.push(format!(
                    "{p}: {a_name} {} / {b_name} {}",
                    show(va),
                    show(vb)
                ));
            }
            Some(_) => {}
        }
    }
    for (p, vb) in b {
        if !a.contains_key(p) {
            out.push(format!("{p}: {a_name}: missing / {b_name} {}", show(vb)));
        }
    }
    out
}
