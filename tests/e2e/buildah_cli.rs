//! A real client of the fuse-overlayfs drop-in: buildah (containers/storage) with
//! `overlay.mount_program` set to `strata-overlayfs`, against the same steps with Debian's
//! fuse-overlayfs; the committed layers must hold exactly the same changes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn have(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// name, type, mode, uid, gid, size of each entry of the top layer of an OCI layout.
fn top_layer(layout: &Path) -> Vec<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let layers = m["layers"].as_array().unwrap();
    let path = blob(layers.last().unwrap()["digest"].as_str().unwrap());
    let data = std::fs::read(path).unwrap();
    let data = if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        use std::io::Read;
        flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        data
    };
    let mut a = tar::Archive::new(&data[..]);
    let mut out: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            format!(
                "{} {:?} {:o} {}:{} {}",
                e.path().unwrap().display(),
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.size().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

/// A working container from the archive (`from_extra`: more `buildah from` options), one
/// `buildah run` of `script`, a commit and a push to an OCI layout: the run's output and the
/// top layer.
fn buildah_steps(
    dir: &Path,
    mount_program: &Path,
    archive: &Path,
    from_extra: &[&str],
    script: &str,
) -> (String, Vec<String>) {
    // Rootless buildah wants a runtime dir of its own.
    let xdg = dir.join("xdg");
    std::fs::create_dir_all(&xdg).unwrap();
    let b = |args: &[&str]| {
        let o = Command::new("buildah")
            .env("XDG_RUNTIME_DIR", &xdg)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("runroot"))
            .args(["--storage-driver", "overlay", "--storage-opt"])
            .arg(format!("overlay.mount_program={}", mount_program.display()))
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "buildah {args:?} with {}: {}",
            mount_program.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    };
    let id = b(&[
        "pull",
        "-q",
        &format!("docker-archive:{}", archive.display()),
    ]);
    let mut from = vec!["from", "--pull-never", "--name", "w"];
    from.extend_from_slice(from_extra);
    from.push(&id);
    b(&from);
    // Rootless: no runc inside buildah's user namespace here; chroot isolation runs the step.
    let isolation = if strata::is_root() { "oci" } else { "chroot" };
    let out = b(&[
        "run",
        "--isolation",
        isolation,
        "w",
        "--",
        "sh",
        "-c",
        script,
    ]);
    // Commit into buildah's store, then push to an OCI layout: the push reads the new layer
    // back through the store (containers/storage's differ over the upper dir).
    b(&["commit", "w", "localhost/strata-test-out:1"]);
    b(&["rm", "w"]);
    let layout = dir.join("out");
    b(&[
        "push",
        "localhost/strata-test-out:1",
        &format!("oci:{}:1", layout.display()),
    ]);
    (out, top_layer(&layout))
}

/// The strata-overlayfs binary.
fn dropin() -> PathBuf {
    std::env::var_os("CARGO_BIN_EXE_strata-overlayfs")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_strata-overlayfs")))
}

/// Whether buildah, fuse-overlayfs, runc and busybox are here (required under
/// `STRATA_REQUIRE_TOOLS`).
fn have_buildah_tools() -> bool {
    let ok = have("buildah") && have("fuse-overlayfs") && have_runtime_and_busybox();
    if !ok {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "buildah, fuse-overlayfs, runc and busybox-static are required (scripts/test.sh)"
        );
        eprintln!("skipped: needs buildah, fuse-overlayfs, runc and busybox-static");
    }
    ok
}

/// A busybox image saved as a docker-archive by strata.
fn busybox_archive(env: &TestEnv) -> PathBuf {
    archive_of(env, &busybox_tar().unwrap())
}

/// The rootfs tar `rootfs` imported as `bb:1` and saved as a docker-archive by strata.
fn archive_of(env: &TestEnv, rootfs: &[u8]) -> PathBuf {
    let f = env.write("bb.tar", rootfs);
    env.ok(&[
        "import",
        "-c",
        "CMD [\"/bin/sh\"]",
        f.to_str().unwrap(),
        "bb:1",
    ]);
    let archive = env.path("bb-archive.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "bb:1"]);
    archive
}

/// As root, and again as the unprivileged user in the rootless rerun (buildah then runs the
/// mount program inside its user namespace, as podman does).
#[test]
fn rootless_buildah_with_strata_as_mount_program_commits_the_same_layer_as_fuse_overlayfs() {
    if !have_buildah_tools() {
        return;
    }
    let env = TestEnv::new();
    let archive = busybox_archive(&env);
    let script = "echo new > /etc/new; rm /etc/passwd; mv /tmp /tmp2; mkdir /root/made; \
                  chmod 600 /etc/group";
    let (_, with_strata) = buildah_steps(&env.path("strata"), &dropin(), &archive, &[], script);
    let (_, with_foi) = buildah_steps(
        &env.path("foi"),
        Path::new("/usr/bin/fuse-overlayfs"),
        &archive,
        &[],
        script,
    );
    assert_eq!(with_strata, with_foi);
    assert!(
        with_strata.iter().any(|l| l.starts_with("etc/new ")),
        "{with_strata:?}"
    );
    assert!(
        with_strata.iter().any(|l| l.starts_with("etc/.wh.passwd ")),
        "{with_strata:?}"
    );
    assert!(
        with_strata.iter().any(|l| l.starts_with(".wh.tmp ")),
        "{with_strata:?}"
    );
    // buildah unmounts when it is done: nothing of ours stays mounted.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(env.dir.path().to_str().unwrap()),
        "{mounts}"
    );
}

/// A working container with its own id map (`buildah from --userns-uid-map`): containers/storage
/// then passes `uidmapping=`/`gidmapping=` to the mount program (and mounts an id-mapped view
/// of the lower that it detaches once the program is running). Owners seen inside the
/// container, and the committed layer, must be those of Debian's fuse-overlayfs. Root only:
/// the map needs host ids 100000.. .
#[test]
fn buildah_with_an_id_map_sees_and_commits_what_fuse_overlayfs_does() {
    if !strata::is_root() {
        eprintln!("skipped: the id map needs root");
        return;
    }
    if !have_buildah_tools() {
        return;
    }
    let env = TestEnv::new();
    // No /etc: with an id-mapped lower, the lower's files show as the overflow id to the
    // container's root (in fuse-overlayfs as in strata), and runc could not bind /etc/hosts.
    let mut b = tar::Builder::new(Vec::new());
    let bb = std::fs::read("/bin/busybox").unwrap();
    let entry = |kind, mode, size| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h
    };
    for d in ["./", "bin/"] {
        b.append_data(&mut entry(tar::EntryType::Directory, 0o755, 0), d, &[][..])
            .unwrap();
    }
    b.append_data(
        &mut entry(tar::EntryType::Regular, 0o755, bb.len() as u64),
        "bin/busybox",
        &bb[..],
    )
    .unwrap();
    for applet in ["sh", "stat", "echo", "mkdir", "touch", "chown", "rm"] {
        b.append_link(
            &mut entry(tar::EntryType::Symlink, 0o777, 0),
            format!("bin/{applet}"),
            "busybox",
        )
        .unwrap();
    }
    let archive = archive_of(&env, &b.into_inner().unwrap());
    let maps = [
        "--userns-uid-map",
        "0:100000:65536",
        "--userns-gid-map",
        "0:100000:65536",
    ];
    let script = "stat -c '%u:%g %n' / /bin /bin/busybox; echo new > /new; \
                  mkdir /made; touch /made/f; chown 5:6 /made/f; rm /bin/rm; \
                  stat -c '%u:%g %n' /new /made /made/f";
    let ours = buildah_steps(&env.path("strata"), &dropin(), &archive, &maps, script);
    let theirs = buildah_steps(
        &env.path("foi"),
        Path::new("/usr/bin/fuse-overlayfs"),
        &archive,
        &maps,
        script,
    );
    assert_eq!(ours.0, theirs.0, "owners seen inside the container");
    assert_eq!(ours.1, theirs.1, "the committed layer");
    assert!(ours.0.contains("5:6 /made/f"), "{}", ours.0);
    assert!(
        ours.1.iter().any(|l| l.starts_with("made/f ")),
        "{:?}",
        ours.1
    );
}
