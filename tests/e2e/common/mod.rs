//! Shared helpers: a temp store, running `strata`, building tars.

#![allow(dead_code)] // each test module uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The binary under test.
/// Read at run time first: the rootless rerun (scripts/test.sh) runs the tests from a nextest
/// archive, which points this variable at a copy the unprivileged user can read.
pub fn strata_bin() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_strata")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_strata")))
}

/// A temp dir (named `strata-test-*`) with a store root inside.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv {
            dir: tempfile::Builder::new()
                .prefix("strata-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `strata --root <root>` command.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(strata_bin());
        c.arg("--root").arg(self.root()).stdin(Stdio::null());
        c
    }

    /// Runs `strata ARGS`, returns the output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs `strata ARGS` and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "strata {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Runs `strata --format json ARGS` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--format", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Runs `strata ARGS`, asserts failure with exit code 1 and that stderr contains `needle`.
    pub fn fails(&self, args: &[&str], needle: &str) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            o.status.code(),
            Some(1),
            "strata {args:?} should fail: {err}"
        );
        assert!(
            err.contains(needle),
            "stderr of {args:?} lacks {needle:?}: {err}"
        );
        assert!(err.starts_with("error: "), "{err}");
        err
    }

    /// Asserts `strata fsck` passes.
    pub fn fsck_clean(&self) {
        let rep = self.json(&["fsck"]);
        assert_eq!(rep["errors"].as_array().unwrap().len(), 0, "{rep}");
    }

    /// Writes bytes to a file in the temp dir.
    pub fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use std::fmt::Write;
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn();
    // Prefer an independent implementation (coreutils) as the oracle.
    let mut child = out.unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(data).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let s = String::from_utf8(o.stdout).unwrap();
    let mut h = String::new();
    write!(h, "{}", &s[..64]).unwrap();
    h
}

pub fn sha256_file(p: &Path) -> String {
    let o = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(
        o.status.success(),
        "sha256sum {}: {}",
        p.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()[..64].to_owned()
}

/// The caller's uid and gid: test images are owned by whoever runs the tests, so the rootless
/// rerun can write to them through a union mount (a root-owned 0644 file is read-only for an
/// unprivileged user, in strata as in any filesystem).
pub fn caller_ids() -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata("/proc/self").unwrap();
    (u64::from(md.uid()), u64::from(md.gid()))
}

fn hdr(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    let (uid, gid) = caller_ids();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// A small rootfs tar: dirs, files, a symlink, a hard link, a fifo, a device, xattrs.
pub fn rootfs_tar(extra: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in ["./", "bin/", "etc/", "tmp/"] {
        let mut h = hdr(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, d, &[][..]).unwrap();
    }
    let os = format!("PRETTY_NAME=\"strata test\"\n{extra}");
    b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
        .unwrap();
    let mut h = hdr(tar::EntryType::Regular, 0o644, os.len() as u64);
    b.append_data(&mut h, "etc/os-release", os.as_bytes())
        .unwrap();
    let script = b"#!/bin/sh\necho hello\n";
    let mut h = hdr(tar::EntryType::Regular, 0o755, script.len() as u64);
    b.append_data(&mut h, "bin/hello", &script[..]).unwrap();
    let mut h = hdr(tar::EntryType::Link, 0o755, 0);
    b.append_link(&mut h, "bin/hello2", "bin/hello").unwrap();
    let mut h = hdr(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "bin/sh-link", "/bin/hello").unwrap();
    let mut h = hdr(tar::EntryType::Fifo, 0o600, 0);
    b.append_data(&mut h, "tmp/fifo", &[][..]).unwrap();
    let mut h = hdr(tar::EntryType::Char, 0o666, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "null", &[][..]).unwrap();
    b.into_inner().unwrap()
}

/// A tar with `files` files of `size` bytes each (distinct contents), for slow imports.
pub fn many_files_tar(files: usize, size: usize, seed: u8) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = hdr(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "data/", &[][..]).unwrap();
    for i in 0..files {
        let data: Vec<u8> = (0..size)
            .map(|j| (j as u64 * 31 + i as u64 * 7 + u64::from(seed)) as u8)
            .collect();
        let mut h = hdr(tar::EntryType::Regular, 0o644, size as u64);
        b.append_data(&mut h, format!("data/f{i:05}"), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// `strata mount … -f` (or `container mount`) run as a child; waits until the mountpoint's
/// `st_dev` changes. Drop unmounts (`fusermount3 -u`, then `-u -z`), then kills and reaps the
/// child, so a failing test still cleans up.
pub struct StrataMount {
    child: Option<std::process::Child>,
    pub mnt: PathBuf,
}

fn dev_of(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.dev()).unwrap_or(0)
}

impl StrataMount {
    pub fn start(env: &TestEnv, args: &[&str], mnt: &Path) -> StrataMount {
        std::fs::create_dir_all(mnt).unwrap();
        let before = dev_of(mnt);
        let child = env
            .cmd()
            .args(args)
            .arg(mnt)
            .args(["--foreground", "--uncached"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut m = StrataMount {
            child: Some(child),
            mnt: mnt.to_owned(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while dev_of(mnt) == before {
            if let Some(st) = m.child.as_mut().unwrap().try_wait().unwrap() {
                let child = m.child.take().unwrap();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "strata {args:?} exited ({st}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mount did not come up"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        m
    }

    /// Unmounts through the CLI and checks the serving process exits by itself.
    pub fn umount_with_cli(mut self, env: &TestEnv) {
        env.ok(&["umount", self.mnt.to_str().unwrap()]);
        let mut child = self.child.take().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "mount process exit status {st}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "mount process did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

pub fn is_mounted(p: &Path) -> bool {
    let canon = p.canonicalize().unwrap_or_else(|_| p.to_owned());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(canon.to_str().unwrap()))
}

/// `(fstype, source)` of the mount at `p`, from /proc/self/mountinfo (the fields after ` - `):
/// `("fuse.strata", "strata")` for `strata mount`.
pub fn mount_type(p: &Path) -> Option<(String, String)> {
    let canon = p.canonicalize().unwrap_or_else(|_| p.to_owned());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().rev().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if left.split(' ').nth(4)? != canon.to_str()? {
            return None;
        }
        let mut r = right.split(' ');
        Some((r.next()?.to_owned(), r.next()?.to_owned()))
    })
}

/// Asserts the mount at `p` has type `fstype` and source `source`.
pub fn assert_mount_type(p: &Path, fstype: &str, source: &str) {
    assert_eq!(
        mount_type(p),
        Some((fstype.to_owned(), source.to_owned())),
        "type and source of the mount at {}",
        p.display()
    );
}

impl Drop for StrataMount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .status();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A tar built from (path, content) files plus raw extra entries (whiteouts), all mode 0644.
pub fn files_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in files {
        if p.ends_with('/') {
            let mut h = hdr(tar::EntryType::Directory, 0o755, 0);
            b.append_data(&mut h, p, &[][..]).unwrap();
        } else {
            let mut h = hdr(tar::EntryType::Regular, 0o644, data.len() as u64);
            b.append_data(&mut h, p, *data).unwrap();
        }
    }
    b.into_inner().unwrap()
}

/// Puts a multi-layer image into the store through the library (no CLI makes one yet) and
/// tags it. Layers are given base first.
pub fn add_layered_image(env: &TestEnv, layers: &[Vec<u8>], name: &str) -> String {
    let store = layerstore::Store::open(&env.root()).unwrap();
    let mut diff_ids = Vec::new();
    for l in layers {
        diff_ids.push(store.ingest_layer(&l[..], None).unwrap().diff_id);
    }
    let mut cfg = layerstore::ImageConfig::new_for_host(diff_ids);
    cfg.created = Some("2024-01-01T00:00:00Z".into());
    cfg.history = (0..layers.len())
        .map(|i| layerstore::History {
            created_by: Some(format!("layer {i}")),
            ..Default::default()
        })
        .collect();
    let id = store.add_image(&cfg.to_bytes(), None).unwrap();
    store
        .tag(&id, &layerstore::ImageRef::parse(name).unwrap())
        .unwrap();
    id.to_string()
}

/// A runnable image rootfs: Debian's static busybox (package busybox-static) with applet links,
/// /etc/passwd and /etc/group. `None` when busybox is not installed.
pub fn busybox_tar() -> Option<Vec<u8>> {
    let bb = std::fs::read("/bin/busybox").ok()?;
    let mut b = tar::Builder::new(Vec::new());
    for d in [
        "./", "bin/", "etc/", "tmp/", "root/", "proc/", "sys/", "dev/",
    ] {
        let mut h = hdr(
            tar::EntryType::Directory,
            if d == "tmp/" { 0o1777 } else { 0o755 },
            0,
        );
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, d, &[][..]).unwrap();
    }
    let mut h = hdr(tar::EntryType::Regular, 0o755, bb.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, "bin/busybox", &bb[..]).unwrap();
    for applet in [
        "sh", "cat", "echo", "id", "sleep", "ls", "tty", "touch", "env", "pwd", "true", "false",
        "rm", "mkdir", "mv", "chmod", "hostname", "kill", "trap", "wc",
    ] {
        let mut h = hdr(tar::EntryType::Symlink, 0o777, 0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n";
    let group = b"root:x:0:\nnogroup:x:65534:\n";
    for (p, data) in [("etc/passwd", &passwd[..]), ("etc/group", &group[..])] {
        let mut h = hdr(tar::EntryType::Regular, 0o644, data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, p, data).unwrap();
    }
    Some(b.into_inner().unwrap())
}

/// True when an OCI runtime is installed; prints why a test is skipped otherwise (and fails
/// when STRATA_REQUIRE_TOOLS is set, as in CI).
pub fn have_runtime_and_busybox() -> bool {
    let ok = ["/usr/sbin/runc", "/usr/bin/runc", "/usr/bin/crun"]
        .iter()
        .any(|p| Path::new(p).exists())
        && Path::new("/bin/busybox").exists();
    if !ok {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "runc and busybox-static are required (scripts/test.sh installs them)"
        );
        eprintln!("skipped: needs runc and busybox-static");
    }
    ok
}
