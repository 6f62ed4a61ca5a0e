//! Fixtures shared by the mounted tests.

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
