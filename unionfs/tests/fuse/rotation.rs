//! Layer rotation: the upper of a union, once unmounted, is stacked as the top lower layer of a
//! new union over the same lowers with a fresh upper, three times over. The markers in the
//! upper (metadata-only copy-ups, redirected directories, whiteouts, opaque directories) must
//! read right as a lower layer: the view of the new union equals the view of the old one right
//! before its unmount.
//!
//! `layer_rotation_against_kernel_overlayfs` (root) runs the same operations on kernel overlayfs
//! (`index=on,redirect_dir=on,metacopy=on`), the oracle, rotated the same way, and checks also
//! that strata reads the kernel's layers and the kernel reads strata's.
//! `rootless_layer_rotation_keeps_the_merged_view` checks strata against its own view before
//! each rotation, as any user.

use std::collections::BTreeMap;
use std::fs;

use crate::common::*;
use crate::differential::{KernelOverlay, Op, apply};

/// Kernel overlayfs as the oracle: `index=on` keeps hard links together across copy-up (as
/// strata does), `redirect_dir=on` lets lower dirs be renamed, `metacopy=on` makes chmod, chown,
/// utimens, setxattr and rename of a lower file metadata-only copy-ups, and follows the
/// metacopy files of lower layers (without it the kernel refuses them: "refusing to follow
/// metacopy origin"). `metacopy=on` needs `redirect_dir=on` and no `nfs_export`.
const KERNEL_OPTS: &str = "index=on,redirect_dir=on,metacopy=on";
/// A read-only kernel union over rotated layers: no upper, so no index.
const KERNEL_RO_OPTS: &str = "redirect_dir=on,metacopy=on";

const T1: i64 = 1_100_000_000;
const T2: i64 = 1_200_000_000;
const T3: i64 = 1_300_000_000;

/// [`standard_layers`] plus what the rounds work on: files to change metadata-only, a file with
/// a `user.*` xattr, hard-link groups of two and three names, a dir merged from both lowers, a
/// dir with content to move into another dir, an empty dir, a fifo. `kernel_format` spells the
/// lowers' whiteout and opaque dir the kernel's way (needs root). Every non-dir gets the mtime
/// [`OLD_MTIME`], so [`tree_view`] compares the times that copy-up must keep.
fn rotation_layers(s: &Scratch, kernel_format: bool) {
    standard_layers(s);
    s.file("l2/data/a.txt", b"alpha\n");
    let pattern: Vec<u8> = (0..96u32 << 10).map(|i| (i * 7 % 251) as u8).collect();
    s.file("l2/data/b.bin", &pattern);
    s.file("l2/data/c.txt", b"charlie\n");
    s.file("l2/data/d.txt", b"delta\n");
    s.file("l2/data/e.txt", b"echo\n");
    s.file("l2/data/app.txt", b"append to me\n");
    let x = s.file("l2/data/x.txt", b"x has an xattr\n");
    rustix::fs::lsetxattr(
        &x,
        "user.fixture",
        b"lower",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    s.file("l2/hl2/p", b"three names\n");
    fs::hard_link(s.path("l2/hl2/p"), s.path("l2/hl2/q")).unwrap();
    fs::hard_link(s.path("l2/hl2/p"), s.path("l2/hl2/r")).unwrap();
    s.file("l2/hl3/s", b"two names, one renamed\n");
    fs::hard_link(s.path("l2/hl3/s"), s.path("l2/hl3/t")).unwrap();
    s.file("l2/tree/file", b"tree file\n");
    s.file("l2/tree/sub/leaf", b"tree leaf\n");
    s.file("l1/tree/top", b"tree top from l1\n");
    s.file("l2/mv/inner/g", b"g\n");
    s.file("l2/mv/inner/deep/f", b"f\n");
    s.file("l2/mv/stay", b"stays\n");
    s.dir("l2/empty");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        s.path("l2/pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    if kernel_format {
        crate::differential::to_kernel_format(s);
    }
    set_old_mtimes(&s.path("l1"));
    set_old_mtimes(&s.path("l2"));
}

/// The operations of the three rounds; `ids` are what chown gives. Round 1 works on lower
/// entries; rounds 2 and 3 mostly on entries of the rotated layers: a file chmodded (a
/// metadata-only copy-up) in round 1 is chmodded again, dirs renamed before are renamed again,
/// a renamed file is renamed again and appended to (its data comes through two redirects).
///
/// Every round that copies up one name of a lower hard-link group copies up all its names: the
/// kernel keeps a group together across copy-up through its index, in its work dir, which is no
/// part of the layer, so after a rotation names left in the lower layer are another inode there.
/// (The kernel links a name into the upper when it changes the name's metadata, but not for
/// `setxattr` once another name has copied the inode up: such a name stays in the lower layer.)
/// `partial_links` adds the case the kernel cannot be the oracle for: one name of `hl3` renamed
/// and the other left alone (strata must keep them one inode across rotations).
fn rounds(ids: (u32, u32), partial_links: bool) -> [Vec<Op>; 3] {
    let (u, g) = ids;
    let mut r1 = vec![
        Op::Write("new", b"fresh\n"),
        Op::Mkdir("newdir"),
        Op::Write("newdir/f", b"in newdir\n"),
        Op::Append("data/app.txt", b"+round1\n"),
        Op::Chmod("data/a.txt", 0o600),
        Op::Chown("data/c.txt", u, g),
        Op::Touch("data/d.txt", T1),
        Op::SetXattr("data/e.txt", "user.test", "v1"),
        Op::Chmod("big", 0o640),
        Op::Rename("data/b.bin", "data/b-renamed.bin"),
        Op::Rename("data/x.txt", "newdir/x.txt"),
        Op::Rename("hl/b", "hl/c"),
        Op::Chown("hl/a", u, g),
        Op::Rename("hl2/q", "newdir/q"),
        Op::Chmod("hl2/p", 0o755),
        Op::Unlink("hl2/r"),
        Op::Rename("tree", "tree2"),
        Op::Rename("tree2/sub", "tree2/sub-renamed"),
        Op::Rename("mv/inner", "newdir/inner"),
        Op::Rmdir("empty"),
        Op::Unlink("etc/passwd"),
        Op::Unlink("dir/top"),
        Op::Write("dir/gone", b"resurrected\n"),
        Op::RmTree("deep"),
        Op::Mkdir("deep"),
        Op::Write("deep/new", b"in the opaque dir\n"),
        Op::Symlink("data/a.txt", "sym"),
        Op::Rename("link", "link2"),
        Op::Mkfifo("fifo-new"),
        Op::Chmod("pipe", 0o600),
        Op::Append("shadowed", b"+1\n"),
    ];
    let mut r2 = vec![
        Op::Chmod("data/a.txt", 0o640),
        Op::Rename("tree2", "tree3"),
        Op::Chmod("tree3/file", 0o600),
        Op::Rename("data/b-renamed.bin", "newdir/b.bin"),
        Op::Append("data/d.txt", b"+round2\n"),
        Op::Touch("newdir/x.txt", T2),
        Op::Truncate("data/c.txt", 3),
        Op::SetXattr("data/e.txt", "user.test", "v2"),
        Op::RemoveXattr("newdir/x.txt", "user.fixture"),
        Op::Chmod("hl/c", 0o700),
        Op::SetXattr("hl/c", "user.hl", "both names"),
        Op::Touch("hl/a", T2),
        Op::Rename("newdir/inner", "inner-top"),
        Op::Rename("newdir/q", "hl2/q-back"),
        Op::Touch("hl2/p", T2),
        Op::RmTree("tree3/sub-renamed"),
        Op::Write("deep/new2", b"round 2\n"),
        Op::RmTree("etc"),
        Op::Mkdir("etc"),
        Op::Write("etc/hosts", b"127.0.0.1 localhost\n"),
        Op::Write("opq/new", b"in l1's opaque dir\n"),
        Op::Rename("link2", "newdir/link3"),
        Op::Unlink("sym"),
        Op::Rename("fifo-new", "fifo2"),
        Op::Rename("pipe", "newdir/pipe"),
        Op::Rename("big", "big2"),
    ];
    let r3 = vec![
        Op::Chmod("data/a.txt", 0o444),
        Op::Rename("tree3", "newdir/tree4"),
        Op::Append("newdir/b.bin", b"+round3\n"),
        Op::Rename("hl/c", "hl/d"),
        Op::Chmod("hl/a", 0o600),
        Op::Rename("inner-top", "inner-again"),
        Op::Write("inner-again/deep/f", b"rewritten\n"),
        Op::Append("inner-again/g", b"+round3\n"),
        Op::Unlink("newdir/pipe"),
        Op::Unlink("data/e.txt"),
        Op::Append("big2", b"END"),
        Op::Rmdir("deep"),
        Op::Rename("hl2/q-back", "hl2/q"),
        Op::Touch("hl2/p", T3),
        Op::Touch("newdir/tree4/file", T3),
    ];
    if partial_links {
        r1.push(Op::Rename("hl3/t", "hl3/t2"));
        r2.push(Op::Chmod("hl3/t2", 0o600));
    }
    [r1, r2, r3]
}

/// Failed checks, gathered so that one run shows every check that fails.
#[derive(Default)]
struct Report {
    failures: Vec<String>,
}

impl Report {
    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    /// Records the differences of two views, if any; whether they are equal.
    fn check(
        &mut self,
        what: &str,
        (a_name, a): (&str, &BTreeMap<String, EntryView>),
        (b_name, b): (&str, &BTreeMap<String, EntryView>),
    ) -> bool {
        let d = view_diff(a_name, a, b_name, b, true);
        if d.is_empty() {
            return true;
        }
        const SHOWN: usize = 30;
        let mut lines: Vec<String> = d.iter().take(SHOWN).cloned().collect();
        if d.len() > SHOWN {
            lines.push(format!("... and {} more", d.len() - SHOWN));
        }
        self.fail(format!("{what}:\n    {}", lines.join("\n    ")));
        false
    }

    fn finish(self, test: &str) {
        assert!(
            self.failures.is_empty(),
            "{test}: {} failed checks:\n\n{}",
            self.failures.len(),
            self.failures.join("\n\n")
        );
    }
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn layer_rotation_against_kernel_overlayfs() {
    const NAME: &str = "layer_rotation_against_kernel_overlayfs";
    if !fuse_available(NAME) {
        return;
    }
    if !rustix_is_root() {
        if std::env::var("STRATA_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("{NAME} needs root for kernel overlayfs (STRATA_REQUIRE_FUSE=1)");
        }
        eprintln!("skipped: {NAME}: needs root for kernel overlayfs");
        return;
    }
    let s = Scratch::new();
    rotation_layers(&s, true);
    let mut report = Report::default();
    // Top first; k<n> and u<n> are the kernel's and strata's uppers of round n.
    let mut kstack: Vec<String> = vec!["l1".into(), "l2".into()];
    let mut sstack = kstack.clone();
    let Some(mut k) =
        KernelOverlay::mount_with(&s, "kmnt", &refs(&kstack), Some(("k1", "kw1")), KERNEL_OPTS)
    else {
        return;
    };
    let mut m = mount_layers(&s, &refs(&sstack), Some(("u1", "w1")));
    report.check(
        "before any operation",
        ("kernel", &tree_view(k.path())),
        ("strata", &tree_view(m.path())),
    );
    for (r, ops) in rounds((1000, 1000), false).iter().enumerate() {
        let n = r + 1;
        // After the first difference of a round the rest of it differs too: shown once.
        let mut same = true;
        for (i, op) in ops.iter().enumerate() {
            let a = apply(k.path(), op);
            let b = apply(m.path(), op);
            if a != b {
                report.fail(format!(
                    "round {n} op {i} {op:?}: kernel {a:?} / strata {b:?}"
                ));
            }
            if same {
                same = report.check(
                    &format!("round {n}, after op {i} {op:?}"),
                    ("kernel", &tree_view(k.path())),
                    ("strata", &tree_view(m.path())),
                );
            }
        }
        let kernel_before = tree_view(k.path());
        let strata_before = tree_view(m.path());
        k.unmount();
        m.unmount().unwrap();
        // The kernel's work dir (its hard-link index) is no part of the layer.
        fs::remove_dir_all(s.path(&format!("kw{n}"))).unwrap();
        kstack.insert(0, format!("k{n}"));
        sstack.insert(0, format!("u{n}"));

        let ro = mount_layers(&s, &refs(&kstack), None);
        report.check(
            &format!("rotation {n}: strata reading the kernel's layers {kstack:?} (read-only)"),
            ("kernel before unmount", &kernel_before),
            ("strata", &tree_view(ro.path())),
        );
        ro.unmount().unwrap();
        match KernelOverlay::mount_with(&s, "kmnt-ro", &refs(&sstack), None, KERNEL_RO_OPTS) {
            Some(ro) => {
                report.check(
                    &format!("rotation {n}: kernel reading strata's layers {sstack:?} (read-only)"),
                    ("strata before unmount", &strata_before),
                    ("kernel", &tree_view(ro.path())),
                );
                ro.unmount();
            }
            None => report.fail(format!(
                "rotation {n}: the kernel refuses to mount strata's layers {sstack:?} \
                 (-o {KERNEL_RO_OPTS}; see dmesg)"
            )),
        }

        let (up, work) = (format!("k{}", n + 1), format!("kw{}", n + 1));
        k = KernelOverlay::mount_with(&s, "kmnt", &refs(&kstack), Some((&up, &work)), KERNEL_OPTS)
            .expect("kernel overlayfs mounts over its own rotated layers");
        let (up, work) = (format!("u{}", n + 1), format!("w{}", n + 1));
        m = mount_layers(&s, &refs(&sstack), Some((&up, &work)));
        let kernel_after = tree_view(k.path());
        let strata_after = tree_view(m.path());
        // The oracle itself: if this fails, the test's operations are wrong, not strata.
        report.check(
            &format!("rotation {n}: KERNEL ORACLE before unmount vs over its rotated layers"),
            ("kernel before", &kernel_before),
            ("kernel rotated", &kernel_after),
        );
        report.check(
            &format!("rotation {n}: strata before unmount vs over its rotated layers {sstack:?}"),
            ("strata before", &strata_before),
            ("strata rotated", &strata_after),
        );
        report.check(
            &format!("rotation {n}: kernel vs strata, each over its rotated layers"),
            ("kernel", &kernel_after),
            ("strata", &strata_after),
        );
    }
    k.unmount();
    m.unmount().unwrap();
    report.finish(NAME);
}

#[test]
fn rootless_layer_rotation_keeps_the_merged_view() {
    const NAME: &str = "rootless_layer_rotation_keeps_the_merged_view";
    if !fuse_available(NAME) {
        return;
    }
    let s = Scratch::new();
    rotation_layers(&s, false);
    let ids = if rustix_is_root() {
        (1000, 1000)
    } else {
        let md = fs::metadata(s.path("l2")).unwrap();
        (
            std::os::unix::fs::MetadataExt::uid(&md),
            std::os::unix::fs::MetadataExt::gid(&md),
        )
    };
    let mut report = Report::default();
    let mut stack: Vec<String> = vec!["l1".into(), "l2".into()];
    let mut m = mount_layers(&s, &refs(&stack), Some(("u1", "w1")));
    for (r, ops) in rounds(ids, true).iter().enumerate() {
        let n = r + 1;
        for (i, op) in ops.iter().enumerate() {
            let res = apply(m.path(), op);
            // Every operation of the rounds succeeds, but `rmdir` of a non-empty dir.
            let expected = if matches!(op, Op::Rmdir("deep")) {
                Err(libc::ENOTEMPTY)
            } else {
                Ok(())
            };
            if res != expected {
                report.fail(format!(
                    "round {n} op {i} {op:?}: {res:?}, expected {expected:?}"
                ));
            }
        }
        let before = tree_view(m.path());
        m.unmount().unwrap();
        stack.insert(0, format!("u{n}"));
        let (up, work) = (format!("u{}", n + 1), format!("w{}", n + 1));
        m = mount_layers(&s, &refs(&stack), Some((&up, &work)));
        report.check(
            &format!("rotation {n}: strata before unmount vs over its rotated layers {stack:?}"),
            ("before", &before),
            ("rotated", &tree_view(m.path())),
        );
    }
    m.unmount().unwrap();
    report.finish(NAME);
}
