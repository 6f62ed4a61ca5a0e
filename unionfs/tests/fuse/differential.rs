//! Differential test: the same operations on kernel overlayfs and on strata over the same
//! `DirTree` lowers; the resulting trees must match (content, mode, owner, nlink, readdir).
//! Then each upper is stacked as the top lower of a new union (layer rotation, [`rotate`]):
//! the views must not change.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::common::*;

/// A kernel overlayfs mount, unmounted on drop.
pub struct KernelOverlay {
    path: PathBuf,
    mounted: bool,
}

/// The kernel options of the differential tests: index=on keeps hard links together across
/// copy-up and redirect_dir=on lets lower dirs be renamed: the semantics strata gives by default.
pub const KERNEL_OPTS: &str = "index=on,redirect_dir=on";

impl KernelOverlay {
    /// Mounts `mount -t overlay` over `s`'s dirs with [`KERNEL_OPTS`]; `None` (with a
    /// `skipped:` line) when the kernel refuses.
    pub fn mount(s: &Scratch, lowers: &[&str], upper: &str, work: &str) -> Option<KernelOverlay> {
        KernelOverlay::mount_with(s, "kmnt", lowers, Some((upper, work)), KERNEL_OPTS)
    }

    /// Mounts at `s`'s dir `mnt` over `s`'s dirs `lowers` (top first) with `upper_work` =
    /// (upperdir, workdir), created if missing, or read-only when `None`, plus the mount
    /// options `opts`; `None` (with a `skipped:` line) when the kernel refuses.
    pub fn mount_with(
        s: &Scratch,
        mnt: &str,
        lowers: &[&str],
        upper_work: Option<(&str, &str)>,
        opts: &str,
    ) -> Option<KernelOverlay> {
        let path = s.dir(mnt);
        let lowerdir: Vec<String> = lowers
            .iter()
            .map(|l| s.path(l).display().to_string())
            .collect();
        let mut all = format!("lowerdir={}", lowerdir.join(":"));
        if let Some((upper, work)) = upper_work {
            all.push_str(&format!(
                ",upperdir={},workdir={}",
                s.dir(upper).display(),
                s.dir(work).display()
            ));
        }
        if !opts.is_empty() {
            all.push_str(&format!(",{opts}"));
        }
        let st = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &all])
            .arg(&path)
            .status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("skipped: kernel overlayfs mount failed: -o {all}");
            return None;
        }
        Some(KernelOverlay {
            path,
            mounted: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts now; panics when `umount` fails (`Drop` then unmounts lazily).
    pub fn unmount(mut self) {
        let st = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "umount {}",
            self.path.display()
        );
        self.mounted = false;
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let ok = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
        if !ok.is_ok_and(|s| s.success()) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.path)
                .status();
        }
    }
}

/// One operation of the sequence.
#[derive(Clone, Debug)]
pub enum Op {
    Write(&'static str, &'static [u8]),
    Append(&'static str, &'static [u8]),
    Truncate(&'static str, u64),
    Chmod(&'static str, u32),
    Chown(&'static str, u32, u32),
    Mkdir(&'static str),
    Unlink(&'static str),
    RmTree(&'static str),
    Rename(&'static str, &'static str),
    Rmdir(&'static str),
    Link(&'static str, &'static str),
    Symlink(&'static str, &'static str),
    /// atime and mtime to these seconds, by `utimensat` on the path (`touch -d` opens the file
    /// for writing first, which makes kernel overlayfs copy the data up).
    Touch(&'static str, i64),
    SetXattr(&'static str, &'static str, &'static str),
    RemoveXattr(&'static str, &'static str),
    Mkfifo(&'static str),
}

/// Applies `op` under `root`; the errno on failure.
pub fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |r: &str| root.join(r);
    let e = |r: std::io::Result<()>| r.map_err(|e| e.raw_os_error().unwrap_or(-1));
    match op {
        Op::Write(f, d) => e(fs::write(p(f), d)),
        Op::Append(f, d) => e(fs::OpenOptions::new()
            .append(true)
            .open(p(f))
            .and_then(|mut h| std::io::Write::write_all(&mut h, d))),
        Op::Truncate(f, n) => e(fs::OpenOptions::new()
            .write(true)
            .open(p(f))
            .and_then(|h| h.set_len(*n))),
        Op::Chmod(f, m) => e(fs::set_permissions(p(f), fs::Permissions::from_mode(*m))),
        Op::Chown(f, u, g) => e(std::os::unix::fs::lchown(p(f), Some(*u), Some(*g))),
        Op::Mkdir(d) => e(fs::create_dir(p(d))),
        Op::Unlink(f) => e(fs::remove_file(p(f))),
        Op::RmTree(d) => e(fs::remove_dir_all(p(d))),
        Op::Rename(a, b) => e(fs::rename(p(a), p(b))),
        Op::Rmdir(d) => e(fs::remove_dir(p(d))),
        Op::Link(a, b) => e(fs::hard_link(p(a), p(b))),
        Op::Symlink(t, l) => e(std::os::unix::fs::symlink(t, p(l))),
        Op::Touch(f, secs) => {
            let t = rustix::fs::Timespec {
                tv_sec: *secs,
                tv_nsec: 0,
            };
            let times = rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            };
            rustix::fs::utimensat(rustix::fs::CWD, p(f), &times, rustix::fs::AtFlags::empty())
                .map_err(|e| e.raw_os_error())
        }
        Op::SetXattr(f, n, v) => {
            rustix::fs::lsetxattr(p(f), *n, v.as_bytes(), rustix::fs::XattrFlags::empty())
                .map_err(|e| e.raw_os_error())
        }
        Op::RemoveXattr(f, n) => rustix::fs::lremovexattr(p(f), *n).map_err(|e| e.raw_os_error()),
        Op::Mkfifo(f) => rustix::fs::mknodat(
            rustix::fs::CWD,
            p(f),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .map_err(|e| e.raw_os_error()),
    }
}

/// (kind, mode, uid, gid, nlink for non-dirs, content or link target) per path.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut first_name: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(root.join(&rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        out.insert(format!("{}/", rel.display()), format!("{names:?}"));
        for n in names {
            let r = rel.join(&n);
            let md = fs::symlink_metadata(root.join(&r)).unwrap();
            let what = if md.is_dir() {
                stack.push(r.clone());
                "dir".to_owned()
            } else if md.file_type().is_symlink() {
                format!(
                    "link -> {}",
                    fs::read_link(root.join(&r)).unwrap().display()
                )
            } else {
                let data = fs::read(root.join(&r)).unwrap();
                let head = String::from_utf8_lossy(&data[..data.len().min(40)]).into_owned();
                // Names of one inode must be one inode on both sides.
                let first = first_name
                    .entry(md.ino())
                    .or_insert_with(|| r.display().to_string());
                format!(
                    "file nlink={} len={} {head:?} inode-of={first}",
                    md.nlink(),
                    data.len()
                )
            };
            out.insert(
                r.display().to_string(),
                format!("{:o} {}:{} {what}", md.mode() & 0o7777, md.uid(), md.gid()),
            );
        }
    }
    out
}

/// Kernel overlayfs reads only its own markers in lower dirs: char 0/0 whiteouts and
/// `trusted.overlay.opaque`. Rewrite the fixture's `.wh.` spellings (DirTree reads both).
pub fn to_kernel_format(s: &Scratch) {
    use rustix::fs::{CWD, FileType, Mode};
    fs::remove_file(s.path("l1/dir/.wh.gone")).unwrap();
    rustix::fs::mknodat(
        CWD,
        s.path("l1/dir/gone"),
        FileType::CharacterDevice,
        Mode::empty(),
        0,
    )
    .unwrap();
    fs::remove_file(s.path("l1/opq/.wh..wh..opq")).unwrap();
    rustix::fs::lsetxattr(
        s.path("l1/opq"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

fn compare(kernel: &Path, strata: &Path, when: &str) {
    let (ks, ms) = (snapshot(kernel), snapshot(strata));
    if ks != ms {
        let diff: Vec<_> = ks
            .iter()
            .filter(|(p, v)| ms.get(*p) != Some(v))
            .map(|(p, v)| format!("{p}: kernel {v} / strata {:?}", ms.get(p)))
            .chain(
                ms.keys()
                    .filter(|p| !ks.contains_key(*p))
                    .map(|p| format!("{p}: only strata")),
            )
            .collect();
        panic!("trees differ {when}:\n{}", diff.join("\n"));
    }
}

const OPS: &[Op] = &[
    Op::Write("new", b"fresh"),
    Op::Append("shadowed", b"+1"),
    Op::Truncate("etc/passwd", 4),
    Op::Chmod("etc/os-release", 0o600),
    Op::Chown("big", 1000, 1000),
    Op::Mkdir("dir/sub"),
    Op::Write("dir/sub/f", b"in sub"),
    Op::Unlink("dir/bottom"),
    Op::Write("dir/gone", b"resurrected"),
    Op::RmTree("deep"),
    Op::Mkdir("deep"),
    Op::Rename("shadowed", "renamed"),
    Op::Rename("new", "etc/passwd"),
    Op::Link("hl/a", "hl/c"),
    Op::Append("hl/b", b"!"),
    Op::Link("link", "link2"),
    Op::Symlink("../etc", "dir/up"),
    Op::Unlink("hl/a"),
    Op::RmTree("opq"),
    Op::Write("opq", b"now a file"),
    Op::Unlink("missing"),
    Op::Mkdir("etc"),
    Op::Rename("dir", "dir2"),
    Op::Rename("dir2/top", "dir2/top2"),
    Op::Rename("etc", "dir2/etc"),
    Op::Write("dir2/etc/new", b"x"),
    Op::Rename("dir2", "deep/dir3"),
    Op::Unlink("deep/dir3/etc/os-release"),
    Op::Link("hl/b", "deep/hb"),
    Op::Chmod("deep/hb", 0o4755),
    Op::Truncate("renamed", 0),
];

#[test]
fn differential_against_kernel_overlayfs() {
    if !fuse_available("differential_against_kernel_overlayfs") {
        return;
    }
    if !rustix_is_root() {
        if std::env::var("STRATA_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("differential_against_kernel_overlayfs needs root (STRATA_REQUIRE_FUSE=1)");
        }
        eprintln!("skipped: differential_against_kernel_overlayfs: needs root for overlayfs");
        return;
    }
    let s = Scratch::new();
    standard_layers(&s);
    to_kernel_format(&s);
    s.dir("kupper");
    let Some(k) = KernelOverlay::mount(&s, &["l1", "l2"], "kupper", "kwork") else {
        return;
    };
    let m = mount_over(&s, &["l1", "l2"], true);
    compare(k.path(), m.path(), "before any operation");
    for (i, op) in OPS.iter().enumerate() {
        let a = apply(k.path(), op);
        let b = apply(m.path(), op);
        assert_eq!(a, b, "op {i} {op:?}: kernel {a:?} vs strata {b:?}");
        compare(k.path(), m.path(), &format!("after op {i} {op:?}"));
    }
    // Every name of the hard-link group hl/{a,b} is in the kernel's upper by now, so the
    // kernel's rotated layer keeps them one inode too.
    let (k, m) = rotate(&s, k, m, "after OPS", true);
    for (i, op) in OPS_AFTER_ROTATION.iter().enumerate() {
        let a = apply(k.path(), op);
        let b = apply(m.path(), op);
        assert_eq!(a, b, "rotated: op {i} {op:?}: kernel {a:?} vs strata {b:?}");
        compare(k.path(), m.path(), &format!("rotated: after op {i} {op:?}"));
    }
    m.unmount().unwrap();
    k.unmount();
}

/// Operations on entries of the rotated layer, after [`OPS`]: dirs renamed before (with
/// redirects) renamed again, copied-up files changed again, a hard link of the rotated layer.
const OPS_AFTER_ROTATION: &[Op] = &[
    Op::Rename("deep/dir3", "dir4"),
    Op::Rename("dir4/etc", "etc"),
    Op::Chmod("big", 0o640),
    Op::Append("renamed", b"again"),
    Op::Append("hl/c", b"?"),
    Op::Unlink("deep/hb"),
    Op::Rename("link2", "dir4/link3"),
    Op::Unlink("opq"),
    Op::Mkdir("opq"),
    Op::RmTree("dir4/sub"),
    Op::Write("dir4/top2", b"over"),
    Op::Chown("etc/passwd", 1000, 1000),
    Op::Rename("etc/new", "etc/newer"),
    Op::Rmdir("deep"),
];

/// Layer rotation: unmounts both unions and stacks each one's upper (`kupper`, `upper`) as the
/// top lower of a new union over `l1`, `l2` with a fresh upper (`kupper2`, `upper2`). The
/// kernel's work dir goes: it holds the kernel's hard-link index, which is no part of the
/// layer. Strata's view must not change, and must equal the kernel's rotated view wherever the
/// kernel's own view did not change. It does change when a hard-link group was copied up
/// through some of its names only: the other names stay in the lower layer, a different inode
/// there (with the old attributes). `kernel_keeps_view` asserts that this did not happen.
fn rotate(
    s: &Scratch,
    k: KernelOverlay,
    m: unionfs::testing::MountedUnion,
    ctx: &str,
    kernel_keeps_view: bool,
) -> (KernelOverlay, unionfs::testing::MountedUnion) {
    let before = tree_view(m.path());
    let kernel_before = tree_view(k.path());
    m.unmount().unwrap();
    k.unmount();
    fs::remove_dir_all(s.path("kwork")).unwrap();
    let k = KernelOverlay::mount_with(
        s,
        "kmnt",
        &["kupper", "l1", "l2"],
        Some(("kupper2", "kwork2")),
        KERNEL_OPTS,
    )
    .expect("kernel overlayfs mounts over its own rotated upper");
    let m = mount_layers(s, &["upper", "l1", "l2"], Some(("upper2", "work2")));
    let after = tree_view(m.path());
    let d = view_diff("before", &before, "rotated", &after, true);
    assert!(
        d.is_empty(),
        "{ctx}: strata's view changed when its upper became a lower layer:\n{}",
        d.join("\n")
    );
    let kernel_after = tree_view(k.path());
    let kd = view_diff("before", &kernel_before, "rotated", &kernel_after, true);
    if kd.is_empty() {
        let d = view_diff("kernel", &kernel_after, "strata", &after, true);
        assert!(
            d.is_empty(),
            "{ctx}: rotated views differ:\n{}",
            d.join("\n")
        );
    } else {
        assert!(
            !kernel_keeps_view,
            "{ctx}: the kernel's own view changed at rotation:\n{}",
            kd.join("\n")
        );
        eprintln!(
            "the kernel's view changed at rotation (a hard-link group split), so strata's \
             rotated view is compared with the view before only:\n{}",
            kd.join("\n")
        );
    }
    (k, m)
}

/// Tiny deterministic PRNG (xorshift64*), so failures replay from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

const FILES: &[&str] = &[
    "etc/os-release",
    "etc/passwd",
    "dir/top",
    "dir/bottom",
    "dir/gone",
    "shadowed",
    "hl/a",
    "hl/b",
    "deep/er/est/leaf",
    "opq/visible",
    "opq/hidden",
    "new1",
    "dir/new2",
    "deep/er/new3",
    "nd1/f",
    "dir/nd2/g",
    "deep/er/est/x",
];
const DIRS: &[&str] = &[
    "dir",
    "deep",
    "deep/er",
    "opq",
    "etc",
    "hl",
    "nd1",
    "dir/nd2",
    "deep/er/est",
];
const DATA: &[&[u8]] = &[b"", b"a", b"hello world", b"0123456789abcdef"];

fn random_op(r: &mut Rng) -> Op {
    let d = DATA[(r.next() % DATA.len() as u64) as usize];
    match r.next() % 14 {
        12 => Op::Rmdir(r.pick(DIRS)),
        13 => Op::Rename(r.pick(FILES), r.pick(DIRS)),
        0 => Op::Write(r.pick(FILES), d),
        1 => Op::Append(r.pick(FILES), d),
        2 => Op::Truncate(r.pick(FILES), r.next() % 8),
        3 => Op::Chmod(
            r.pick(FILES),
            [0o600, 0o755, 0o4711][(r.next() % 3) as usize],
        ),
        4 => Op::Unlink(r.pick(FILES)),
        5 => Op::RmTree(r.pick(DIRS)),
        6 => Op::Mkdir(r.pick(DIRS)),
        7 => Op::Rename(r.pick(FILES), r.pick(FILES)),
        8 => Op::Rename(r.pick(DIRS), r.pick(DIRS)),
        9 => Op::Link(r.pick(FILES), r.pick(FILES)),
        10 => Op::Symlink("target", r.pick(FILES)),
        _ => Op::Chown(r.pick(FILES), 1000, 1000),
    }
}

#[test]
fn differential_random_sequences_against_kernel_overlayfs() {
    if !fuse_available("differential_random_sequences_against_kernel_overlayfs") {
        return;
    }
    if !rustix_is_root() {
        if std::env::var("STRATA_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("differential_random_sequences_against_kernel_overlayfs needs root");
        }
        eprintln!("skipped: differential_random_sequences_against_kernel_overlayfs: needs root");
        return;
    }
    let seeds: Vec<u64> = match std::env::var("STRATA_DIFF_SEED") {
        Ok(s) => vec![s.parse().expect("STRATA_DIFF_SEED is a number")],
        Err(_) => vec![1, 2, 3, 4, 5, 6, 7, 8],
    };
    for seed in seeds {
        let s = Scratch::new();
        standard_layers(&s);
        to_kernel_format(&s);
        s.dir("kupper");
        let Some(k) = KernelOverlay::mount(&s, &["l1", "l2"], "kupper", "kwork") else {
            return;
        };
        let m = mount_over(&s, &["l1", "l2"], true);
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut done = Vec::new();
        for i in 0..80 {
            let op = random_op(&mut r);
            let a = apply(k.path(), &op);
            let b = apply(m.path(), &op);
            done.push(format!("{op:?} -> {a:?}"));
            assert_eq!(
                a,
                b,
                "seed {seed} op {i} {op:?}: kernel {a:?} vs strata {b:?}\n{}",
                done.join("\n")
            );
            compare(
                k.path(),
                m.path(),
                &format!("seed {seed} after op {i} {op:?}\n{}", done.join("\n")),
            );
        }
        let ctx = format!("seed {seed}\n{}", done.join("\n"));
        let (k, m) = rotate(&s, k, m, &ctx, false);
        m.unmount().unwrap();
        k.unmount();
    }
}

/// Rootless oracle: a plain directory that starts as a copy (`cp -a`) of the merged view; the
/// same random operations on it and on strata must agree, as on any POSIX filesystem.
#[test]
fn rootless_differential_against_plain_directory() {
    if !fuse_available("rootless_differential_against_plain_directory") {
        return;
    }
    let seeds: Vec<u64> = match std::env::var("STRATA_DIFF_SEED") {
        Ok(s) => vec![s.parse().expect("STRATA_DIFF_SEED is a number")],
        Err(_) => vec![1, 2, 3, 4, 5, 6],
    };
    for seed in seeds {
        let s = Scratch::new();
        standard_layers(&s);
        let m = mount_over(&s, &["l1", "l2"], true);
        let reference = s.dir("reference");
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", m.path().display()))
            .arg(&reference)
            .status()
            .unwrap();
        assert!(st.success());
        compare(&reference, m.path(), "after cp -a");
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut done = Vec::new();
        for i in 0..80 {
            let op = random_op(&mut r);
            let a = apply(&reference, &op);
            let b = apply(m.path(), &op);
            done.push(format!("{op:?} -> {a:?}"));
            assert_eq!(
                a,
                b,
                "seed {seed} op {i} {op:?}: plain {a:?} vs strata {b:?}\n{}",
                done.join("\n")
            );
            compare(
                &reference,
                m.path(),
                &format!("seed {seed} after op {i} {op:?}\n{}", done.join("\n")),
            );
        }
        m.unmount().unwrap();
    }
}
