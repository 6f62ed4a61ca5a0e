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

fn buildah_steps(dir: &Path, mount_program: &Path, archive: &Path) -> Vec<String> {
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
    b(&["from", "--pull-never", "--name", "w", &id]);
    // Rootless: no runc inside buildah's user namespace here; chroot isolation runs the step.
    let isolation = if strata::is_root() { "oci" } else { "chroot" };
    b(&[
        "run",
        "--isolation",
        isolation,
        "w",
        "--",
        "sh",
        "-c",
        "echo new > /etc/new; rm /etc/passwd; mv /tmp /tmp2; mkdir /root/made; chmod 600 /etc/group",
    ]);
    let layout = dir.join("out");
    b(&["commit", "w", &format!("oci:{}:1", layout.display())]);
    b(&["rm", "w"]);
    top_layer(&layout)
}

/// As root, and again as the unprivileged user in the rootless rerun (buildah then runs the
/// mount program inside its user namespace, as podman does).
#[test]
fn rootless_buildah_with_strata_as_mount_program_commits_the_same_layer_as_fuse_overlayfs() {
    let ok = have("buildah") && have("fuse-overlayfs") && have_runtime_and_busybox();
    if !ok {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "buildah, fuse-overlayfs, runc and busybox-static are required (scripts/test.sh)"
        );
        eprintln!("skipped: needs buildah, fuse-overlayfs, runc and busybox-static");
        return;
    }
    let env = TestEnv::new();
    let f = env.write("bb.tar", &busybox_tar().unwrap());
    env.ok(&[
        "import",
        "-c",
        "CMD [\"/bin/sh\"]",
        f.to_str().unwrap(),
        "bb:1",
    ]);
    let archive = env.path("bb-archive.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "bb:1"]);
    let dropin: PathBuf = std::env::var_os("CARGO_BIN_EXE_strata-overlayfs")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_strata-overlayfs")));
    let with_strata = buildah_steps(&env.path("strata"), &dropin, &archive);
    let with_foi = buildah_steps(
        &env.path("foi"),
        Path::new("/usr/bin/fuse-overlayfs"),
        &archive,
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
