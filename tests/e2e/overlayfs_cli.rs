//! `strata-overlayfs`, the fuse-overlayfs drop-in: its command line, daemonising, and the
//! on-disk upper format read both ways with kernel overlayfs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn dropin() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_strata-overlayfs")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_strata-overlayfs")))
}

fn fuse_usable() -> bool {
    let ok = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if !ok {
        assert!(
            std::env::var_os("STRATA_REQUIRE_FUSE").is_none(),
            "/dev/fuse is not usable"
        );
        eprintln!("skipped: /dev/fuse is not usable");
    }
    ok
}

/// Two lower dirs: L1 (top) whites out `gone` and makes `d` opaque, either with `.wh.` files
/// (the format containers/storage extracts layers in for a mount program) or, with `kernel`, as
/// kernel overlayfs spells them (a char 0/0 device, `trusted.overlay.opaque=y`; root only).
fn layers_in(env: &TestEnv, kernel: bool) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let (l1, l2, up, work) = (
        env.path("l1"),
        env.path("l2"),
        env.path("up"),
        env.path("work"),
    );
    for d in [&l1, &l2, &up, &work] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(l2.join("a"), b"lower a").unwrap();
    fs::write(l2.join("gone"), b"hidden").unwrap();
    fs::create_dir_all(l2.join("d")).unwrap();
    fs::write(l2.join("d/x"), b"x").unwrap();
    fs::create_dir_all(l2.join("keep")).unwrap();
    fs::write(l2.join("keep/k"), b"k").unwrap();
    fs::create_dir_all(l1.join("d")).unwrap();
    if kernel {
        let st = Command::new("mknod")
            .arg(l1.join("gone"))
            .args(["c", "0", "0"])
            .status()
            .unwrap();
        assert!(st.success());
        let st = Command::new("setfattr")
            .args(["-n", "trusted.overlay.opaque", "-v", "y"])
            .arg(l1.join("d"))
            .status()
            .unwrap();
        assert!(st.success());
    } else {
        fs::write(l1.join(".wh.gone"), b"").unwrap();
        fs::write(l1.join("d/.wh..wh..opq"), b"").unwrap();
    }
    fs::write(l1.join("d/y"), b"y").unwrap();
    (l1, l2, up, work)
}

fn layers(env: &TestEnv) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    layers_in(env, false)
}

/// name → content ("<dir>" for directories) of a tree, recursively.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                out.insert(rel, "<dir>".into());
                walk(root, &p, out);
            } else {
                out.insert(
                    rel,
                    String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned(),
                );
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn unmount(mnt: &Path) {
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(mnt)
        .status()
        .unwrap();
    if !st.success() {
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(mnt)
            .status();
    }
}

struct Guard(PathBuf);
impl Drop for Guard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.0)
                .status();
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Runs a fuse-overlayfs command line (`program -o OPTS MNT`), as containers/storage does: it
/// waits for the exit, then uses the mount.
fn run_mount(program: &Path, opts: &str, mnt: &Path) {
    let o = Command::new(program)
        .args(["-o", opts])
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}: {}",
        program.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(is_mounted(mnt), "the mount is live when the command exits");
}

/// Mounts with the drop-in the way containers/storage does (it waits for the exit, then uses
/// the mount) and applies the same changes as `changes_kernel` below.
fn mount_dropin(l1: &Path, l2: &Path, up: &Path, work: &Path, mnt: &Path) {
    fs::create_dir_all(mnt).unwrap();
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={},volatile,context=\"a:b,c\"",
        l1.display(),
        l2.display(),
        up.display(),
        work.display()
    );
    run_mount(&dropin(), &opts, mnt);
}

fn apply_changes(mnt: &Path) {
    fs::write(mnt.join("new"), b"new file").unwrap();
    fs::write(mnt.join("a"), b"changed a").unwrap();
    fs::remove_file(mnt.join("keep/k")).unwrap();
    fs::remove_dir_all(mnt.join("d")).unwrap();
    fs::create_dir(mnt.join("d")).unwrap();
    fs::write(mnt.join("d/z"), b"z").unwrap();
}

#[test]
fn rootless_dropin_merges_overlay_format_lowers_and_daemonises() {
    if !fuse_usable() {
        return;
    }
    let env = TestEnv::new();
    let (l1, l2, up, work) = layers(&env);
    let mnt = env.path("mnt");
    let _g = Guard(mnt.clone());
    mount_dropin(&l1, &l2, &up, &work, &mnt);
    // fuse-overlayfs's source, so tools looking for it by name still find it, and a type of its
    // own: fuse-overlayfs itself shows `fuse.fuse-overlayfs` (see dropin_maps_ids_as_fuse_overlayfs).
    assert_mount_type(&mnt, "fuse.strata-overlayfs", "fuse-overlayfs");
    let t = tree(&mnt);
    let expect: BTreeMap<String, String> = [
        ("a", "lower a"),
        ("d", "<dir>"),
        ("d/y", "y"),
        ("keep", "<dir>"),
        ("keep/k", "k"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(t, expect);
    apply_changes(&mnt);
    unmount(&mnt);
    assert!(!is_mounted(&mnt));
    assert_eq!(fs::read(up.join("new")).unwrap(), b"new file");
    assert_eq!(
        fs::read(l2.join("a")).unwrap(),
        b"lower a",
        "lowers are never written"
    );
    let v = Command::new(dropin()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("fuse-overlayfs: version"));
}

#[test]
fn rootless_dropin_honours_redirect_dir_off() {
    if !fuse_usable() {
        return;
    }
    let env = TestEnv::new();
    let (l1, l2, up, work) = layers(&env);
    let mnt = env.path("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let _g = Guard(mnt.clone());
    let opts = format!(
        "lowerdir={}:{},upperdir={},workdir={},redirect_dir=off",
        l1.display(),
        l2.display(),
        up.display(),
        work.display()
    );
    run_mount(&dropin(), &opts, &mnt);
    // A directory with lower content cannot move (EXDEV, as overlayfs answers); `mv` copies.
    let err = fs::rename(mnt.join("keep"), mnt.join("moved")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{err}");
    // A new directory and files still move.
    fs::create_dir(mnt.join("fresh")).unwrap();
    fs::rename(mnt.join("fresh"), mnt.join("fresh2")).unwrap();
    fs::rename(mnt.join("a"), mnt.join("a2")).unwrap();
    unmount(&mnt);
}

#[test]
fn rootless_dropin_honours_metacopy_off() {
    if !fuse_usable() {
        return;
    }
    for (flag, placeholder) in [("metacopy=off", false), ("metacopy=on", true)] {
        let env = TestEnv::new();
        let (l1, l2, up, work) = layers(&env);
        let mnt = env.path("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let _g = Guard(mnt.clone());
        let opts = format!(
            "lowerdir={}:{},upperdir={},workdir={},{flag}",
            l1.display(),
            l2.display(),
            up.display(),
            work.display()
        );
        run_mount(&dropin(), &opts, &mnt);
        // chmod and rename of lower files: metadata only, or (metacopy=off) a full copy.
        fs::set_permissions(mnt.join("a"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::rename(mnt.join("keep/k"), mnt.join("k2")).unwrap();
        assert_eq!(fs::read(mnt.join("a")).unwrap(), b"lower a");
        assert_eq!(fs::read(mnt.join("k2")).unwrap(), b"k");
        unmount(&mnt);
        for (name, content) in [("a", &b"lower a"[..]), ("k2", &b"k"[..])] {
            let names = xattr_names(&up.join(name));
            let marked = names.iter().any(|n| n.ends_with("overlay.metacopy"));
            assert_eq!(marked, placeholder, "{flag}: {name} has {names:?}");
            if !placeholder {
                assert_eq!(
                    fs::read(up.join(name)).unwrap(),
                    content,
                    "{flag}: full copy"
                );
            }
        }
    }
    let env = TestEnv::new();
    let (l1, _, up, work) = layers(&env);
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},metacopy=maybe",
        l1.display(),
        up.display(),
        work.display()
    );
    let out = Command::new(dropin())
        .args(["-o", &opts])
        .arg(env.path("nomnt"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("metacopy=maybe"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The xattr names of a path (not following symlinks), from `getfattr -d -m -`.
fn xattr_names(p: &Path) -> Vec<String> {
    let out = Command::new("getfattr")
        .args(["-h", "-d", "-m", "-", "--absolute-names"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split('=').next().map(str::to_owned))
        .collect()
}

#[test]
fn dropin_and_kernel_overlayfs_read_each_others_upper() {
    if !strata::is_root() || !fuse_usable() {
        eprintln!("skipped: kernel overlayfs needs root");
        return;
    }
    // strata writes, the kernel reads.
    let env = TestEnv::new();
    let (l1, l2, up, work) = layers_in(&env, true);
    let mnt = env.path("mnt");
    let _g = Guard(mnt.clone());
    mount_dropin(&l1, &l2, &up, &work, &mnt);
    apply_changes(&mnt);
    let strata_view = tree(&mnt);
    unmount(&mnt);
    let kmnt = env.path("kmnt");
    fs::create_dir_all(&kmnt).unwrap();
    let _kg = Guard(kmnt.clone());
    let kopts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        l1.display(),
        l2.display(),
        up.display(),
        env.path("kwork").display()
    );
    fs::create_dir_all(env.path("kwork")).unwrap();
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &kopts])
        .arg(&kmnt)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        tree(&kmnt),
        strata_view,
        "kernel overlayfs sees what strata wrote"
    );
    Command::new("umount").arg(&kmnt).status().unwrap();

    // The kernel writes, strata reads.
    let env2 = TestEnv::new();
    let (l1, l2, up, _work) = layers_in(&env2, true);
    let kmnt2 = env2.path("kmnt");
    fs::create_dir_all(&kmnt2).unwrap();
    fs::create_dir_all(env2.path("kwork")).unwrap();
    let _kg2 = Guard(kmnt2.clone());
    let kopts = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        l1.display(),
        l2.display(),
        up.display(),
        env2.path("kwork").display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &kopts])
        .arg(&kmnt2)
        .status()
        .unwrap();
    assert!(st.success());
    apply_changes(&kmnt2);
    let kernel_view = tree(&kmnt2);
    Command::new("umount").arg(&kmnt2).status().unwrap();
    let mnt2 = env2.path("mnt");
    let _g2 = Guard(mnt2.clone());
    fs::create_dir_all(env2.path("work2")).unwrap();
    mount_dropin(&l1, &l2, &up, &env2.path("work2"), &mnt2);
    assert_eq!(
        tree(&mnt2),
        kernel_view,
        "strata sees what kernel overlayfs wrote"
    );
    unmount(&mnt2);
}

/// `(path, uid, gid)` of every entry under `root`, sorted (the root itself as ".").
fn owners(root: &Path) -> Vec<(String, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let rel = if rel.is_empty() { ".".into() } else { rel };
        // Whiteout and opaque-marker files differ between implementations (fuse-overlayfs
        // also marks a new directory opaque with `.wh..wh..opq` files).
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with(".wh.")) {
            continue;
        }
        out.push((rel, md.uid(), md.gid()));
        if md.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

/// The lower of the id-mapping tests: the image's (container) ids 0.., one id outside every
/// range, and a world-writable dir for an unprivileged caller.
fn idmap_lower(env: &TestEnv) -> PathBuf {
    let l = env.path("idl");
    fs::create_dir_all(l.join("etc")).unwrap();
    fs::create_dir_all(l.join("tmp")).unwrap();
    fs::write(l.join("etc/passwd"), b"root:x:0:0\n").unwrap();
    fs::write(l.join("etc/app"), b"app").unwrap();
    fs::write(l.join("stray"), b"outside the ranges").unwrap();
    std::os::unix::fs::symlink("etc/app", l.join("link")).unwrap();
    for (p, u, g) in [
        (".", 0, 0),
        ("etc", 0, 0),
        ("etc/passwd", 0, 0),
        ("etc/app", 33, 34),
        ("link", 33, 33),
        ("tmp", 0, 0),
        ("stray", 70000, 70000),
    ] {
        std::os::unix::fs::lchown(l.join(p), Some(u), Some(g)).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(l.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    l
}

/// Mounts `program` (a fuse-overlayfs command line) with `extra` options over the id-mapping
/// lower, shows the merged owners, makes changes as root and as host uid 1033, and returns (owners seen in the mount before, after, owners written to the upper).
type Views = (
    Vec<(String, u32, u32)>,
    Vec<(String, u32, u32)>,
    Vec<(String, u32, u32)>,
);
fn idmap_views(program: &Path, extra: &str) -> Views {
    let env = TestEnv::new();
    // uid 33 must reach the mountpoint.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let l = idmap_lower(&env);
    let (up, work, mnt) = (env.path("up"), env.path("work"), env.path("mnt"));
    for d in [&up, &work, &mnt] {
        fs::create_dir_all(d).unwrap();
    }
    let _g = Guard(mnt.clone());
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},{extra}",
        l.display(),
        up.display(),
        work.display()
    );
    run_mount(program, &opts, &mnt);
    // Both show source `fuse-overlayfs`; the types tell them apart.
    let fstype = if program == dropin() {
        "fuse.strata-overlayfs"
    } else {
        "fuse.fuse-overlayfs"
    };
    assert_mount_type(&mnt, fstype, "fuse-overlayfs");
    let before = owners(&mnt);
    // As host root: a new file and dir, a chown of a lower file (copy-up), a symlink.
    fs::write(mnt.join("etc/new"), b"n").unwrap();
    fs::create_dir(mnt.join("newdir")).unwrap();
    std::os::unix::fs::lchown(mnt.join("etc/passwd"), Some(1033), Some(1034)).unwrap();
    std::os::unix::fs::symlink("x", mnt.join("newlink")).unwrap();
    // As host uid 1033 (the container's 33 where container 0 is host 1000): a file in the
    // sticky dir. Where ids are squashed the new file shows another owner and touch cannot
    // set its times: the exit status is part of the comparison.
    let st = Command::new("setpriv")
        .args(["--reuid=1033", "--regid=1033", "--clear-groups", "touch"])
        .arg(mnt.join("tmp/by33"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    let mut after = owners(&mnt);
    after.push((
        "<touch exit status>".into(),
        st.code().unwrap_or(-1) as u32,
        0,
    ));
    unmount(&mnt);
    (before, after, owners(&up))
}

/// uidmapping/gidmapping and squash_* as fuse-overlayfs applies them: the test runs Debian's
/// fuse-overlayfs and strata-overlayfs with the same options and compares the owners shown in
/// the mount and the owners written to the upper.
#[test]
fn dropin_maps_ids_as_fuse_overlayfs() {
    if !strata::is_root() || !fuse_usable() {
        eprintln!("skipped: chown of the test lower needs root");
        return;
    }
    let peer = PathBuf::from("/usr/bin/fuse-overlayfs");
    if !peer.exists() {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "fuse-overlayfs is not installed"
        );
        eprintln!("skipped: no fuse-overlayfs");
        return;
    }
    for extra in [
        "uidmapping=0:1000:100:100:5:1,gidmapping=0:1000:100:1000:1100:100",
        "uidmapping=0:1000:65536,gidmapping=0:1000:65536,squash_to_root",
        "uidmapping=0:1000:65536,squash_to_uid=7,squash_to_gid=8",
    ] {
        let ours = idmap_views(&dropin(), extra);
        let theirs = idmap_views(&peer, extra);
        assert_eq!(ours.0, theirs.0, "{extra}: owners shown before changes");
        assert_eq!(ours.1, theirs.1, "{extra}: owners shown after changes");
        assert_eq!(ours.2, theirs.2, "{extra}: owners written to the upper");
    }
    // The figures themselves (not only "the same as the peer").
    let (before, after, upper) =
        idmap_views(&dropin(), "uidmapping=0:1000:65536,gidmapping=0:1000:65536");
    let get = |v: &[(String, u32, u32)], p: &str| {
        v.iter()
            .find(|e| e.0 == p)
            .map(|e| (e.1, e.2))
            .unwrap_or_else(|| panic!("{p} missing in {v:?}"))
    };
    assert_eq!(get(&before, "etc/passwd"), (1000, 1000));
    assert_eq!(get(&before, "etc/app"), (1033, 1034));
    assert_eq!(get(&before, "stray"), (65534, 65534), "outside every range");
    assert_eq!(
        get(&upper, "etc/passwd"),
        (33, 34),
        "chown 1033:1034 is 33:34"
    );
    assert_eq!(
        get(&upper, "etc/new"),
        (65534, 65534),
        "host root is unmapped"
    );
    assert_eq!(get(&upper, "tmp/by33"), (33, 33));
    assert_eq!(get(&after, "tmp/by33"), (1033, 1033));
    assert_eq!(get(&after, "<touch exit status>"), (0, 0));
}
