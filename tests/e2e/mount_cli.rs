//! `strata mount`, `umount` and `container create|mount|ls|rm` with real FUSE mounts.

use std::fs;
use std::os::unix::fs::MetadataExt;

use crate::common::*;

fn two_layer_image(env: &TestEnv) {
    let base = files_tar(&[
        ("etc/", b""),
        ("etc/a", b"base a"),
        ("etc/b", b"base b"),
        ("d/", b""),
        ("d/x", b"x"),
        ("keep/", b""),
        ("keep/k", b"k"),
    ]);
    let top = files_tar(&[
        ("etc/", b""),
        ("etc/a", b"top a"),
        ("etc/.wh.b", b""),
        ("etc/c", b"top c"),
        ("d/", b""),
        ("d/.wh..wh..opq", b""),
        ("d/y", b"y"),
    ]);
    add_layered_image(env, &[base, top], "layered:1");
}

fn skip_without_fuse() -> bool {
    let usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if !usable && std::env::var_os("STRATA_REQUIRE_FUSE").is_none() {
        eprintln!("skipped: /dev/fuse is not usable here");
        return true;
    }
    false
}

#[test]
fn rootless_mount_image_merges_layers() {
    if skip_without_fuse() {
        return;
    }
    let env = TestEnv::new();
    two_layer_image(&env);
    let mnt = env.path("mnt");
    let m = StrataMount::start(&env, &["mount", "layered:1"], &mnt);
    assert_mount_type(&mnt, "fuse.strata", "strata");
    assert_eq!(fs::read(mnt.join("etc/a")).unwrap(), b"top a");
    assert!(!mnt.join("etc/b").exists(), "whiteout hides etc/b");
    assert_eq!(fs::read(mnt.join("etc/c")).unwrap(), b"top c");
    let mut d: Vec<_> = fs::read_dir(mnt.join("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    d.sort();
    assert_eq!(d, ["y"], "opaque dir hides the lower d/x");
    assert_eq!(fs::read(mnt.join("keep/k")).unwrap(), b"k");
    let mut etc: Vec<_> = fs::read_dir(mnt.join("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    etc.sort();
    assert_eq!(etc, ["a", "c"], "no whiteout names in readdir");
    // Read-only: writes are refused.
    let err = fs::write(mnt.join("etc/new"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    m.umount_with_cli(&env);
    assert!(!is_mounted(&mnt));
}

#[test]
fn rootless_mount_shows_every_entry_type() {
    if skip_without_fuse() {
        return;
    }
    let env = TestEnv::new();
    let f = env.write("r.tar", &rootfs_tar(""));
    env.ok(&["import", f.to_str().unwrap(), "r"]);
    let mnt = env.path("mnt");
    let _m = StrataMount::start(&env, &["mount", "r"], &mnt);
    let hello = fs::metadata(mnt.join("bin/hello")).unwrap();
    let hello2 = fs::metadata(mnt.join("bin/hello2")).unwrap();
    assert_eq!(hello.ino(), hello2.ino(), "hard links share an inode");
    assert_eq!(hello.nlink(), 2);
    assert_eq!(hello.mode() & 0o7777, 0o755);
    assert_eq!(hello.mtime(), 1_700_000_000);
    assert_eq!(
        fs::read_link(mnt.join("bin/sh-link")).unwrap().to_str(),
        Some("/bin/hello")
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::symlink_metadata(mnt.join("tmp/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let null = fs::symlink_metadata(mnt.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    let x = Command::new("getfattr")
        .args(["--only-values", "-n", "user.k"])
        .arg(mnt.join("etc/os-release"))
        .output();
    if let Ok(x) = x {
        assert_eq!(
            String::from_utf8_lossy(&x.stdout),
            "v",
            "{}",
            String::from_utf8_lossy(&x.stderr)
        );
    }
    assert!(
        fs::read_to_string(mnt.join("etc/os-release"))
            .unwrap()
            .contains("strata test")
    );
}

use std::process::Command;

#[test]
fn rootless_container_changes_persist_across_mounts() {
    if skip_without_fuse() {
        return;
    }
    let env = TestEnv::new();
    two_layer_image(&env);
    let c = env.json(&["container", "create", "--name", "box", "layered:1"]);
    assert_eq!(c["name"], "box");
    let mnt = env.path("mnt");
    {
        let m = StrataMount::start(&env, &["container", "mount", "box"], &mnt);
        assert_mount_type(&mnt, "fuse.strata", "strata");
        fs::write(mnt.join("etc/new"), b"new").unwrap();
        fs::write(mnt.join("etc/a"), b"changed").unwrap();
        fs::remove_file(mnt.join("keep/k")).unwrap();
        fs::rename(mnt.join("d"), mnt.join("d2")).unwrap();
        let ls = env.json(&["container", "ls"]);
        assert_eq!(
            ls[0]["mountpoint"],
            mnt.canonicalize().unwrap().to_str().unwrap()
        );
        env.fails(&["container", "rm", "box"], "is mounted");
        env.fails(
            &[
                "container",
                "mount",
                "box",
                env.path("mnt2").to_str().unwrap(),
            ],
            "already mounted",
        );
        env.fails(
            &["rmi", "layered:1"],
            "container box is using its referenced image",
        );
        m.umount_with_cli(&env);
    }
    let _m = StrataMount::start(&env, &["container", "mount", "box"], &mnt);
    assert_eq!(fs::read(mnt.join("etc/new")).unwrap(), b"new");
    assert_eq!(fs::read(mnt.join("etc/a")).unwrap(), b"changed");
    assert!(!mnt.join("keep/k").exists());
    assert_eq!(fs::read(mnt.join("d2/y")).unwrap(), b"y");
    assert!(!mnt.join("d").exists());
    drop(_m);
    env.ok(&["container", "rm", "box"]);
    assert_eq!(env.json(&["container", "ls"]).as_array().unwrap().len(), 0);
    env.ok(&["rmi", "layered:1"]);
}

#[test]
fn rootless_background_mount_exits_once_live() {
    if skip_without_fuse() {
        return;
    }
    let env = TestEnv::new();
    let f = env.write("r.tar", &rootfs_tar(""));
    env.ok(&["import", f.to_str().unwrap(), "r"]);
    let mnt = env.path("mnt");
    fs::create_dir(&mnt).unwrap();
    struct Guard(std::path::PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            if is_mounted(&self.0) {
                let _ = Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&self.0)
                    .status();
            }
        }
    }
    let _g = Guard(mnt.clone());
    env.ok(&["mount", "r", mnt.to_str().unwrap()]);
    assert!(is_mounted(&mnt), "mounted when the command returns");
    assert_mount_type(&mnt, "fuse.strata", "strata");
    assert!(
        fs::read_to_string(mnt.join("etc/os-release"))
            .unwrap()
            .contains("strata test")
    );
    env.fails(
        &["mount", "r", mnt.to_str().unwrap()],
        "already a mount point",
    );
    env.ok(&["umount", mnt.to_str().unwrap()]);
    assert!(!is_mounted(&mnt));
    env.fails(&["umount", mnt.to_str().unwrap()], "not mounted");
}

#[test]
fn rootless_mount_plain_directories_with_whiteouts() {
    if skip_without_fuse() {
        return;
    }
    let env = TestEnv::new();
    let (low, up, work) = (env.path("low"), env.path("up"), env.path("work"));
    for d in [&low, &up, &work] {
        fs::create_dir_all(d).unwrap();
    }
    fs::write(low.join("a"), b"a").unwrap();
    fs::write(low.join("gone"), b"g").unwrap();
    let top = env.path("top");
    fs::create_dir_all(&top).unwrap();
    fs::write(top.join(".wh.gone"), b"").unwrap();
    let mnt = env.path("mnt");
    let lower = format!("{}:{}", top.display(), low.display());
    let m = StrataMount::start(
        &env,
        &[
            "mount",
            "--lower",
            &lower,
            "--upper",
            up.to_str().unwrap(),
            "--work",
            work.to_str().unwrap(),
        ],
        &mnt,
    );
    assert_mount_type(&mnt, "fuse.strata", "strata");
    assert!(!mnt.join("gone").exists());
    fs::write(mnt.join("a"), b"changed").unwrap();
    m.umount_with_cli(&env);
    assert_eq!(
        fs::read(up.join("a")).unwrap(),
        b"changed",
        "copy-up into the upper dir"
    );
    assert_eq!(
        fs::read(low.join("a")).unwrap(),
        b"a",
        "the lower is untouched"
    );
}

#[test]
fn mount_bad_input_is_refused_clearly() {
    let env = TestEnv::new();
    let f = env.write("r.tar", &rootfs_tar(""));
    env.ok(&["import", f.to_str().unwrap(), "r"]);
    env.fails(
        &["mount", "nope", env.path("m").to_str().unwrap()],
        "not found",
    );
    env.fails(
        &["mount", "r", env.path("missing").to_str().unwrap()],
        "create the directory first",
    );
    let low = env.path("low");
    fs::create_dir_all(low.join("inside")).unwrap();
    env.fails(
        &[
            "mount",
            "--lower",
            low.to_str().unwrap(),
            low.join("inside").to_str().unwrap(),
        ],
        "overlaps",
    );
    env.fails(
        &["container", "create", "--name", "bad name", "r"],
        "invalid container name",
    );
    env.ok(&["container", "create", "--name", "c1", "r"]);
    env.fails(
        &["container", "create", "--name", "c1", "r"],
        "already in use",
    );
    env.fails(
        &[
            "container",
            "mount",
            "nope",
            env.path("m").to_str().unwrap(),
        ],
        "not found",
    );
}

/// The issue's acceptance check: chroot into a mounted debootstrap image.
#[test]
fn slow_mount_debian_and_chroot() {
    let fixture = std::path::Path::new("/var/cache/strata-ci/debian-bookworm-minbase.tar");
    if !fixture.exists() || !strata::is_root() || skip_without_fuse() {
        eprintln!("skipped: needs root and {}", fixture.display());
        return;
    }
    let env = TestEnv::new();
    env.ok(&["import", fixture.to_str().unwrap(), "debian:bookworm"]);
    let mnt = env.path("mnt");
    let _m = StrataMount::start(&env, &["mount", "debian:bookworm"], &mnt);
    let out = Command::new("chroot")
        .arg(&mnt)
        .args(["/bin/sh", "-c", "ls / && cat /etc/os-release"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("usr") && text.contains("Debian GNU/Linux 12"),
        "{text}"
    );
}

#[test]
fn rootless_image_mount_with_an_upper_dir_is_writable() {
    if skip_without_fuse() {
        return;
    }
    let env = TestEnv::new();
    two_layer_image(&env);
    let (up, work) = (env.path("up"), env.path("work"));
    fs::create_dir_all(&up).unwrap();
    fs::create_dir_all(&work).unwrap();
    let mnt = env.path("mnt");
    let m = StrataMount::start(
        &env,
        &[
            "mount",
            "layered:1",
            "--upper",
            up.to_str().unwrap(),
            "--work",
            work.to_str().unwrap(),
        ],
        &mnt,
    );
    fs::write(mnt.join("etc/a"), b"written").unwrap();
    m.umount_with_cli(&env);
    assert_eq!(fs::read(up.join("etc/a")).unwrap(), b"written");
}
