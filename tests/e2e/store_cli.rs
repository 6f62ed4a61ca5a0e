//! The store through the CLI: import, images, history, inspect, tag, rmi, layer export, gc,
//! df, fsck, and bad input.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn diff_id(env: &TestEnv, image: &str) -> String {
    env.json(&["inspect", image])["rootfs"]["diff_ids"][0]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn import_history_export_gives_back_the_same_tar() {
    let env = TestEnv::new();
    let tar = rootfs_tar("");
    let file = env.write("rootfs.tar", &tar);
    let out = env.json(&[
        "import",
        file.to_str().unwrap(),
        "example.com/team/base:1.0",
    ]);
    assert_eq!(out["diff_id"], format!("sha256:{}", sha256_hex(&tar)));
    assert_eq!(out["tags"][0], "example.com/team/base:1.0");

    let hist = env.json(&["history", "example.com/team/base:1.0"]);
    assert_eq!(hist.as_array().unwrap().len(), 1);
    assert_eq!(hist[0]["image"], out["id"]);
    assert_eq!(hist[0]["size"], tar.len() as u64);
    assert!(
        hist[0]["comment"]
            .as_str()
            .unwrap()
            .starts_with("Imported from")
    );

    let exported = env.path("out.tar");
    env.ok(&[
        "layer",
        "export",
        out["diff_id"].as_str().unwrap(),
        "-o",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(sha256_file(&exported), sha256_hex(&tar));
    // Also by short prefix, to stdout.
    let short = &out["diff_id"].as_str().unwrap()[7..19];
    let o = env.cmd().args(["layer", "export", short]).output().unwrap();
    assert!(o.status.success());
    assert_eq!(sha256_hex(&o.stdout), sha256_hex(&tar));
    env.fsck_clean();
}

#[test]
fn import_from_stdin_with_changes() {
    let env = TestEnv::new();
    let tar = rootfs_tar("");
    let mut child = env
        .cmd()
        .args([
            "--format",
            "json",
            "import",
            "-c",
            "CMD [\"/bin/hello\"]",
            "-c",
            "ENV A=1",
            "-c",
        ])
        .args(["EXPOSE 18181/tcp", "-m", "my message", "-", "piped"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&tar).unwrap();
    }
    assert!(child.wait_with_output().unwrap().status.success());
    let cfg = env.json(&["inspect", "piped"]);
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["/bin/hello"]));
    assert_eq!(cfg["config"]["Env"], serde_json::json!(["A=1"]));
    assert!(cfg["config"]["ExposedPorts"]["18181/tcp"].is_object());
    assert_eq!(cfg["history"][0]["comment"], "my message");
    assert_eq!(cfg["repo_tags"][0], "docker.io/library/piped:latest");
    assert_eq!(cfg["architecture"], "amd64");
}

#[test]
fn images_text_output_uses_familiar_names_and_docker_columns() {
    let env = TestEnv::new();
    let f = env.write("r.tar", &rootfs_tar(""));
    env.ok(&["import", f.to_str().unwrap(), "alpha"]);
    let out = env.ok(&["images"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("REPOSITORY   TAG      IMAGE ID       CREATED"),
        "{out}"
    );
    assert!(lines[1].starts_with("alpha        latest   "), "{out}");
    let q = env.ok(&["images", "-q"]);
    assert_eq!(q.trim().len(), 12);
    let hist = env.ok(&["history", "alpha"]);
    assert!(hist.starts_with("IMAGE          CREATED"), "{hist}");
}

#[test]
fn tag_rmi_and_gc() {
    let env = TestEnv::new();
    let f = env.write("r.tar", &rootfs_tar(""));
    let id = env.json(&["import", f.to_str().unwrap(), "one"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(&["tag", "one", "localhost:5000/two:v2"]);
    env.ok(&["tag", &id[7..19], "three"]);
    let images = env.json(&["images"]);
    assert_eq!(images[0]["repo_tags"].as_array().unwrap().len(), 3);
    // By ID with several tags: refused unless forced.
    env.fails(&["rmi", &id], "must be forced");
    let out = env.ok(&["rmi", "one"]);
    assert_eq!(out.trim(), "Untagged: one:latest");
    let out = env.ok(&["rmi", "-f", &id]);
    assert!(out.contains("Untagged: localhost:5000/two:v2"), "{out}");
    assert!(out.contains(&format!("Deleted: {id}")), "{out}");
    assert_eq!(env.json(&["images"]).as_array().unwrap().len(), 0);
    let dry = env.json(&["gc", "--dry-run"]);
    assert_eq!(dry["layers"].as_array().unwrap().len(), 1);
    assert!(dry["objects"].as_u64().unwrap() >= 2);
    assert_eq!(env.json(&["df"])["layers"], 1, "dry run removed nothing");
    env.ok(&["gc"]);
    let df = env.json(&["df"]);
    assert_eq!(
        (df["layers"].as_u64(), df["objects"].as_u64()),
        (Some(0), Some(0))
    );
    env.fsck_clean();
}

#[test]
fn df_reports_shared_and_unique_bytes() {
    let env = TestEnv::new();
    let a = env.write("a.tar", &rootfs_tar("A=1\n"));
    let b = env.write("b.tar", &rootfs_tar("B=22\n"));
    env.ok(&["import", a.to_str().unwrap(), "a"]);
    env.ok(&["import", b.to_str().unwrap(), "b"]);
    let df = env.json(&["df"]);
    for img in df["images"].as_array().unwrap() {
        // bin/hello is shared; os-release differs.
        assert_eq!(img["shared"], 21, "{img}");
        assert!(img["unique"].as_u64().unwrap() > 20, "{img}");
    }
}

#[test]
fn invalid_references_are_refused_before_any_work() {
    let env = TestEnv::new();
    let f = env.write("r.tar", &rootfs_tar(""));
    let f = f.to_str().unwrap();
    env.fails(&["import", f, "Ubuntu"], "must be lowercase");
    env.fails(&["import", f, "ubuntu:bad@tag"], "invalid");
    env.fails(&["import", f, "ubuntu@sha256:1234"], "digest");
    env.fails(&["import", f, "a/:b"], "invalid");
    env.fails(&["import", f, &"a".repeat(300)], "more than 255 characters");
    assert_eq!(env.json(&["df"])["layers"], 0);
    env.ok(&["import", f, "fine"]);
    env.fails(&["tag", "fine", "UPPER"], "must be lowercase");
}

#[test]
fn unknown_image_and_layer_say_what_to_do() {
    let env = TestEnv::new();
    env.fails(&["history", "nope"], "not found");
    env.fails(&["inspect", "nope:1"], "strata images");
    env.fails(&["rmi", "nope"], "not found");
    env.fails(
        &[
            "layer",
            "export",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ],
        "not found",
    );
}

#[test]
fn bad_tars_fail_cleanly_and_leave_the_store_clean() {
    let env = TestEnv::new();
    let tar = rootfs_tar("");
    let cut = env.write("cut.tar", &tar[..1200]);
    let err = env.fails(&["import", cut.to_str().unwrap(), "x"], "truncated");
    assert!(err.contains("cut.tar"), "the error names the file: {err}");
    let mut evil = tar.clone();
    evil[0..4].copy_from_slice(b"../x");
    let evil = env.write("evil.tar", &evil);
    env.fails(&["import", evil.to_str().unwrap(), "x"], "checksum");
    let garbage = env.write(
        "garbage.gz",
        &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4, 5],
    );
    env.fails(&["import", garbage.to_str().unwrap(), "x"], "importing");
    let xz = env.write("x.xz", &[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2]);
    env.fails(&["import", xz.to_str().unwrap(), "x"], "xz -d");
    env.fails(
        &["import", env.path("missing.tar").to_str().unwrap(), "x"],
        "opening",
    );
    assert_eq!(env.json(&["images"]).as_array().unwrap().len(), 0);
    env.fsck_clean();
    let good = env.write("good.tar", &tar);
    env.ok(&["import", good.to_str().unwrap(), "x"]);
}

#[test]
fn fsck_finds_a_damaged_object() {
    let env = TestEnv::new();
    let f = env.write("r.tar", &rootfs_tar(""));
    env.ok(&["import", f.to_str().unwrap(), "x"]);
    // Corrupt one object behind the store's back.
    let objects = env.root().join("objects/sha256");
    let sub = std::fs::read_dir(&objects)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let obj = std::fs::read_dir(sub)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut perm = std::fs::metadata(&obj).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)] // the test damages the store on purpose
    perm.set_readonly(false);
    std::fs::set_permissions(&obj, perm).unwrap();
    std::fs::write(&obj, b"damaged").unwrap();
    let o = env.run(&["fsck"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("error: object sha256:"), "{out}");
    assert!(out.contains("error: layer sha256:"), "{out}");
    env.fails(
        &[
            "layer",
            "export",
            &diff_id(&env, "x"),
            "-o",
            env.path("o.tar").to_str().unwrap(),
        ],
        "fsck",
    );
    assert!(
        !env.path("o.tar").exists(),
        "a failed export leaves no file"
    );
}

#[test]
fn two_processes_import_into_one_store_at_once() {
    let env = TestEnv::new();
    let a = env.write("a.tar", &many_files_tar(300, 20_000, 1));
    let b = env.write("b.tar", &many_files_tar(300, 20_000, 2));
    let pa = env
        .cmd()
        .args(["import", a.to_str().unwrap(), "a"])
        .spawn()
        .unwrap();
    let pb = env
        .cmd()
        .args(["import", b.to_str().unwrap(), "b"])
        .spawn()
        .unwrap();
    assert!(pa.wait_with_output().unwrap().status.success());
    assert!(pb.wait_with_output().unwrap().status.success());
    assert_eq!(env.json(&["images"]).as_array().unwrap().len(), 2);
    env.fsck_clean();
}

/// SIGKILL `strata import` at many points; each time the store must pass fsck, and a
/// re-import must then succeed.
#[test]
fn killed_import_leaves_a_store_that_fsck_passes() {
    let env = TestEnv::new();
    let tar = env.write("big.tar", &many_files_tar(1500, 30_000, 3));
    // Deterministic spread of kill points from 0 to ~400 ms.
    for i in 0..12u64 {
        let delay = Duration::from_millis((i * 37) % 400);
        let mut child = env
            .cmd()
            .args(["import", tar.to_str().unwrap(), &format!("k:{i}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();
        env.fsck_clean();
    }
    env.ok(&["import", tar.to_str().unwrap(), "final"]);
    env.ok(&["gc"]);
    let rep = env.json(&["fsck"]);
    assert_eq!(rep["errors"].as_array().unwrap().len(), 0);
    assert_eq!(
        rep["warnings"].as_array().unwrap().len(),
        0,
        "gc removed the leftovers: {rep}"
    );
    let exported = env.path("final.tar");
    env.ok(&[
        "layer",
        "export",
        &diff_id(&env, "final"),
        "-o",
        exported.to_str().unwrap(),
    ]);
    assert_eq!(sha256_file(&exported), sha256_file(&tar));
}

/// The debootstrap rootfs fixture (scripts/fixtures/debian-rootfs.sh): import, export
/// byte-identical, and a second import adds < 1% to the objects.
#[test]
fn slow_debian_rootfs_round_trip_and_dedup() {
    let fixture = std::path::Path::new("/var/cache/strata-ci/debian-bookworm-minbase.tar");
    if !fixture.exists() {
        if std::env::var_os("STRATA_REQUIRE_FIXTURES").is_some() {
            panic!(
                "{} is missing: run scripts/fixtures/debian-rootfs.sh",
                fixture.display()
            );
        }
        eprintln!(
            "skipped: {} missing (scripts/fixtures/debian-rootfs.sh)",
            fixture.display()
        );
        return;
    }
    let env = TestEnv::new();
    let f = fixture.to_str().unwrap();
    env.ok(&["import", f, "debian:bookworm"]);
    let before = env.json(&["df"])["object_bytes"].as_u64().unwrap();
    // The same files in a different tar (another order of entries is another diff_id).
    env.ok(&["import", f, "debian:again"]);
    let after = env.json(&["df"])["object_bytes"].as_u64().unwrap();
    assert!(after - before < before / 100, "{before} -> {after}");
    let out = env.path("deb.tar");
    env.ok(&[
        "layer",
        "export",
        &diff_id(&env, "debian:bookworm"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(sha256_file(&out), sha256_file(fixture));
    env.fsck_clean();
}

/// A store on a full filesystem: the import fails with the OS error and the path, and the
/// store stays consistent and usable once space is back. Needs root (a small tmpfs).
#[test]
fn full_disk_import_fails_cleanly() {
    if !strata::is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let env = TestEnv::new();
    std::fs::create_dir_all(env.root()).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "strata-test-tmpfs"])
        .arg(env.root())
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(env.root());
    let small = env.write("small.tar", &rootfs_tar(""));
    env.ok(&["import", small.to_str().unwrap(), "small"]);
    let big = env.write("big.tar", &many_files_tar(200, 50_000, 9));
    let err = env.fails(
        &["import", big.to_str().unwrap(), "big"],
        "No space left on device",
    );
    assert!(
        err.contains(env.root().to_str().unwrap()),
        "the error names the path: {err}"
    );
    env.fsck_clean();
    assert_eq!(env.json(&["images"]).as_array().unwrap().len(), 1);
    // The store still works: the small image exports, and a re-import is a no-op.
    env.ok(&["import", small.to_str().unwrap(), "small2"]);
    env.fsck_clean();
}

// --- Privacy: the store is its owner's alone (issue 14, section 1) ---------------------------

fn mode_of(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(p: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Every path under `dir` with its mode, without entering a container's own tree (`upper/`,
/// `work/`, `rootfs/`: the container's files keep the modes the container gave them).
fn store_paths(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let ft = std::fs::symlink_metadata(&p).unwrap().file_type();
        out.push((p.clone(), mode_of(&p)));
        let container_tree = p.parent().and_then(|c| c.parent()).is_some_and(|cs| {
            cs.file_name() == Some(std::ffi::OsStr::new("containers"))
                && ["upper", "work", "rootfs"]
                    .iter()
                    .any(|n| p.file_name() == Some(std::ffi::OsStr::new(n)))
        });
        if ft.is_dir() && !container_tree {
            store_paths(&p, out);
        }
    }
}

/// The object file of `content`.
fn object_path(env: &TestEnv, content: &[u8]) -> std::path::PathBuf {
    let hex = sha256_hex(content);
    env.root().join("objects/sha256").join(&hex[..2]).join(&hex)
}

/// Asserts the layout's modes: root and directories 0700, objects 0400, other files 0600.
fn assert_private(root: &std::path::Path) {
    assert_eq!(mode_of(root), 0o700, "{}", root.display());
    let mut all = Vec::new();
    store_paths(root, &mut all);
    let mut objects = 0;
    for (p, m) in &all {
        let rel = p.strip_prefix(root).unwrap();
        let container_tree = rel.starts_with("containers")
            && rel.components().count() == 3
            && ["upper", "work", "rootfs"].iter().any(|n| rel.ends_with(n));
        if container_tree {
            continue;
        }
        if p.is_dir() {
            assert_eq!(*m, 0o700, "directory {}", rel.display());
        } else if rel.starts_with("objects") {
            assert_eq!(*m, 0o400, "object {}", rel.display());
            objects += 1;
        } else {
            assert_eq!(*m & 0o077, 0, "{} is {m:o}", rel.display());
        }
    }
    assert!(objects > 0, "no object checked");
    assert_eq!(mode_of(&root.join("store.db")), 0o600);
    assert_eq!(mode_of(&root.join("lock")), 0o600);
}

/// `import` and `container create` make a store only its owner can enter: 0700 directories,
/// 0600 index and lock, 0400 objects (docker keeps its root 0710, podman 0700).
#[test]
fn rootless_store_is_private_to_its_owner() {
    let env = TestEnv::new();
    let f = env.write("r.tar", &rootfs_tar(""));
    env.ok(&["import", f.to_str().unwrap(), "x"]);
    env.ok(&["container", "create", "--name", "c", "x"]);
    assert_private(&env.root());
    let c = std::fs::read_dir(env.root().join("containers"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode_of(&c), 0o700);
    // The container's own root keeps the usual mode (the union's root takes it).
    assert_eq!(mode_of(&c.join("upper")), 0o755);
}

/// Without `--root`, an unprivileged user's store is `~/.local/share/strata`, private too.
/// (As root the default is /var/lib/strata, which a test must not touch: the rootless rerun of
/// scripts/test.sh runs this as an unprivileged user.)
#[test]
fn rootless_default_store_is_private() {
    if strata::is_root() {
        eprintln!("skipped as root: the rootless rerun checks ~/.local/share/strata");
        return;
    }
    let env = TestEnv::new();
    let home = env.path("home");
    std::fs::create_dir(&home).unwrap();
    let f = env.write("r.tar", &rootfs_tar(""));
    let o = Command::new(strata_bin())
        .args(["import", f.to_str().unwrap(), "x"])
        .env("HOME", &home)
        .env_remove("STRATA_ROOT")
        .env_remove("XDG_DATA_HOME")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_private(&home.join(".local/share/strata"));
}

/// The unprivileged user scripts/test.sh creates for the rootless tier, if it exists here.
fn other_user() -> Option<&'static str> {
    const USER: &str = "strata-test";
    let exists = Command::new("id")
        .arg("-u")
        .arg(USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "user {USER} is missing (scripts/test.sh creates it)"
        );
        eprintln!("skipped: needs the user {USER} (scripts/test.sh creates it)");
        return None;
    }
    Some(USER)
}

/// Runs `cat PATH` as `user`; returns (success, stderr).
fn cat_as(user: &str, p: &std::path::Path) -> (bool, String) {
    let o = Command::new("runuser")
        .args(["-u", user, "--", "cat"])
        .arg(p)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Another local user reads neither an image's files (here a 0640 `etc/shadow`) from
/// `objects/` nor containers' settings from `store.db`, even where the directories above the
/// store let them through, and even when the root was opened up by hand after the fact.
#[test]
fn another_user_cannot_read_objects_or_the_index() {
    if !strata::is_root() {
        eprintln!("skipped: needs root (runs cat as another user)");
        return;
    }
    let Some(user) = other_user() else { return };
    let env = TestEnv::new();
    set_mode(env.dir.path(), 0o755); // only the store's own modes protect it now
    let shadow = b"root:$y$SECRET-HASH:19000:0:99999:7:::\n";
    let f = env.write(
        "r.tar",
        &files_tar(&[("etc/", b""), ("etc/shadow", shadow)]),
    );
    env.ok(&["import", f.to_str().unwrap(), "x"]);
    let public = env.write("public.txt", b"anyone may read this\n");
    set_mode(&public, 0o644);
    let (ok, err) = cat_as(user, &public);
    assert!(
        ok,
        "control: {user} reads a 0644 file beside the store: {err}"
    );
    let obj = object_path(&env, shadow);
    assert!(obj.is_file());
    for p in [obj.clone(), env.root().join("store.db")] {
        let (ok, err) = cat_as(user, &p);
        assert!(!ok, "{user} read {}", p.display());
        assert!(err.contains("Permission denied"), "{err}");
    }
    // A root opened up by hand: the files' own modes still keep others out.
    set_mode(&env.root(), 0o755);
    set_mode(&env.root().join("objects"), 0o755);
    set_mode(&env.root().join("objects/sha256"), 0o755);
    set_mode(obj.parent().unwrap(), 0o755);
    for p in [obj, env.root().join("store.db")] {
        let (ok, err) = cat_as(user, &p);
        assert!(
            !ok && err.contains("Permission denied"),
            "{}: {err}",
            p.display()
        );
    }
}

/// A store made by an older strata (0755 directories, 0644 index and lock, 0444 objects) is
/// made private when it is next opened, with one message on stderr; the container's own files
/// keep their modes, and the next command says nothing.
#[test]
fn rootless_open_store_is_made_private_once() {
    let env = TestEnv::new();
    let f = env.write("r.tar", &rootfs_tar(""));
    env.ok(&["import", f.to_str().unwrap(), "x"]);
    env.ok(&["container", "create", "--name", "c", "x"]);
    let root = env.root();
    let c = std::fs::read_dir(root.join("containers"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::create_dir(c.join("bundle")).unwrap();
    std::fs::write(
        c.join("bundle/config.json"),
        b"{\"env\":[\"DB_PASSWORD=x\"]}",
    )
    .unwrap();
    std::fs::write(c.join("upper/kept.txt"), b"the container's file").unwrap();
    set_mode(&c.join("upper/kept.txt"), 0o644);
    // What an older strata left.
    let mut all = Vec::new();
    store_paths(&root, &mut all);
    for (p, _) in &all {
        let rel = p.strip_prefix(&root).unwrap();
        let m = if p.is_dir() {
            0o755
        } else if rel.starts_with("objects") {
            0o444
        } else {
            0o644
        };
        set_mode(p, m);
    }
    set_mode(&root, 0o755);

    let o = env.cmd().args(["images"]).output().unwrap();
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.matches("made it private").count(), 1, "{err}");
    assert!(err.contains("mode 0755"), "{err}");
    assert_private(&root);
    assert_eq!(mode_of(&c.join("bundle/config.json")), 0o600);
    assert_eq!(mode_of(&c.join("upper/kept.txt")), 0o644);
    assert_eq!(mode_of(&c.join("upper")), 0o755);

    let o = env.cmd().args(["images"]).output().unwrap();
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stderr), "", "said once only");
    env.fsck_clean();
}

// --- Credentials: auth.json under a lock -----------------------------------------------------

/// Forwards each connection on a new 127.0.0.1 port to `to`, so one registry answers under
/// many `host:port` names (each its own auths key). Threads end with the test process.
fn forward_port(to: u16) -> u16 {
    use std::net::{TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(a) = c else { return };
            let Ok(b) = TcpStream::connect(("127.0.0.1", to)) else {
                return;
            };
            for (mut from, mut into) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    port
}

/// 20 `strata login`s at once, to one htpasswd docker-registry under 20 names: every entry
/// lands in auth.json (without the lock, concurrent read-modify-writes lost entries), the file
/// stays 0600 and its directory 0700; then 20 concurrent logouts remove them all.
#[test]
fn concurrent_logins_all_land_in_auth_json() {
    use crate::registry_cli::{Registry, registry_available};
    if !registry_available() {
        return;
    }
    let env = TestEnv::new();
    let pw = env.path("htpasswd");
    let o = Command::new("htpasswd")
        .args(["-Bbc", pw.to_str().unwrap(), "alice", "s3cret"])
        .output()
        .expect("htpasswd (apache2-utils) is installed by scripts/test.sh");
    assert!(o.status.success());
    let reg = Registry::start(Some(pw.to_str().unwrap()), None);
    let port: u16 = reg.host().rsplit(':').next().unwrap().parse().unwrap();
    let hosts: Vec<String> = (0..20)
        .map(|_| format!("127.0.0.1:{}", forward_port(port)))
        .collect();
    let home = env.path("home");
    std::fs::create_dir(&home).unwrap();
    let spawn = |args: &[&str]| {
        let mut c = env.cmd();
        c.args(args)
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
        child
    };
    let children: Vec<_> = hosts
        .iter()
        .map(|h| spawn(&["login", h, "-u", "alice", "--password-stdin"]))
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let auth = home.join(".config/strata/auth.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&auth).unwrap()).unwrap();
    let auths = doc["auths"].as_object().unwrap();
    for h in &hosts {
        assert_eq!(
            auths[h]["auth"], "YWxpY2U6czNjcmV0",
            "{h} is missing: {doc}"
        );
    }
    assert_eq!(auths.len(), hosts.len(), "{doc}");
    assert_eq!(mode_of(&auth), 0o600);
    assert_eq!(mode_of(auth.parent().unwrap()), 0o700);

    let children: Vec<_> = hosts.iter().map(|h| spawn(&["logout", h])).collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&auth).unwrap()).unwrap();
    assert_eq!(doc["auths"].as_object().unwrap().len(), 0, "{doc}");
    assert_eq!(mode_of(&auth), 0o600);
}

// --- A corrupted object is repaired (issue 14, section 5) ------------------------------------

/// Damages an object file behind the store's back: `same_size` flips one byte, else the file
/// is replaced by a short one.
fn corrupt(obj: &std::path::Path, same_size: bool) {
    set_mode(obj, 0o600);
    let mut data = std::fs::read(obj).unwrap();
    if same_size {
        data[0] ^= 0x20;
    } else {
        data = b"damaged".to_vec();
    }
    std::fs::write(obj, data).unwrap();
    set_mode(obj, 0o400);
}

/// Importing the same tar again replaces an object that fails verification (it used to keep
/// it, since an object of that name "existed"): fsck is clean after, the file holds the
/// content, and the layer exports byte for byte.
#[test]
fn rootless_reimporting_the_same_tar_repairs_a_corrupt_object() {
    let env = TestEnv::new();
    let os_release = b"PRETTY_NAME=\"strata test\"\n";
    let tar = rootfs_tar("");
    let f = env.write("r.tar", &tar);
    env.ok(&["import", f.to_str().unwrap(), "x"]);
    let obj = object_path(&env, os_release);
    for same_size in [true, false] {
        corrupt(&obj, same_size);
        let o = env.run(&["fsck"]);
        assert_eq!(o.status.code(), Some(1), "fsck sees the damage");
        env.ok(&["import", f.to_str().unwrap(), "x"]);
        env.fsck_clean();
        assert_eq!(std::fs::read(&obj).unwrap(), os_release);
        assert_eq!(mode_of(&obj), 0o400);
    }
    let out = env.path("out.tar");
    env.ok(&[
        "layer",
        "export",
        &diff_id(&env, "x"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(sha256_file(&out), sha256_hex(&tar));
}

/// `fsck --repair` when no copy of the content is left (an imported tar): the damaged file is
/// removed (a read fails instead of returning wrong bytes), the output names the file and the
/// images that lost it, the exit code stays 1; importing the tar again brings it back.
#[test]
fn rootless_fsck_repair_says_what_is_lost() {
    let env = TestEnv::new();
    let os_release = b"PRETTY_NAME=\"strata test\"\n";
    let f = env.write("r.tar", &rootfs_tar(""));
    env.ok(&["import", f.to_str().unwrap(), "x"]);
    env.ok(&["tag", "x", "y:2"]);
    let obj = object_path(&env, os_release);
    corrupt(&obj, true);
    let o = env.run(&["fsck", "--repair"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let hex = sha256_hex(os_release);
    assert!(out.contains(&format!("lost: object sha256:{hex}")), "{out}");
    assert!(out.contains("its damaged file was removed"), "{out}");
    assert!(out.contains("/etc/os-release in layer"), "{out}");
    assert!(out.contains("(x:latest, y:2)"), "{out}");
    assert!(!obj.exists(), "the damaged file is gone");
    let o = env.run(&["--format", "json", "fsck", "--repair"]);
    assert_eq!(o.status.code(), Some(1), "still lost");
    let rep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rep["repair"]["lost"][0]["object"], format!("sha256:{hex}"));
    assert_eq!(
        rep["repair"]["lost"][0]["removed"], false,
        "missing already"
    );
    let out_tar = env.path("o.tar");
    env.fails(
        &[
            "layer",
            "export",
            &diff_id(&env, "x"),
            "-o",
            out_tar.to_str().unwrap(),
        ],
        "fsck",
    );
    env.ok(&["import", f.to_str().unwrap(), "x"]);
    let rep = env.json(&["fsck", "--repair"]);
    assert_eq!(rep["after"]["errors"].as_array().unwrap().len(), 0, "{rep}");
    assert_eq!(rep["repair"]["lost"].as_array().unwrap().len(), 0, "{rep}");
}

/// `fsck --repair` of a pulled image: a damaged object comes back from the compressed blob
/// the pull kept, and, once that blob is gone too, from the registry the layer came from.
#[test]
fn fsck_repair_restores_from_the_kept_blob_then_the_registry() {
    use crate::registry_cli::{Registry, registry_available};
    if !registry_available() {
        return;
    }
    let reg = Registry::start(None, None);
    let name = format!("{}/repair/x:1", reg.host());
    let os_release = b"PRETTY_NAME=\"strata test\"\n";
    let pusher = TestEnv::new();
    let f = pusher.write("r.tar", &rootfs_tar(""));
    pusher.ok(&["import", f.to_str().unwrap(), &name]);
    pusher.ok(&["push", &name]);
    let env = TestEnv::new();
    env.ok(&["pull", &name]);
    let obj = object_path(&env, os_release);
    let blobs: Vec<_> = std::fs::read_dir(env.root().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(blobs.len(), 1, "the pull kept the layer's blob");
    assert_eq!(mode_of(&blobs[0]), 0o600);
    assert_private(&env.root());

    corrupt(&obj, true);
    let o = env.run(&["fsck", "--repair"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("restored: object sha256:"), "{out}");
    assert!(out.contains("from the kept blob sha256:"), "{out}");
    assert_eq!(std::fs::read(&obj).unwrap(), os_release);

    std::fs::remove_file(&blobs[0]).unwrap();
    corrupt(&obj, false);
    let rep = env.json(&["fsck", "--repair"]);
    assert_eq!(rep["after"]["errors"].as_array().unwrap().len(), 0, "{rep}");
    let from = &rep["repair"]["restored"][0]["from"];
    assert_eq!(from["kind"], "registry", "{rep}");
    assert_eq!(from["source"], format!("{}/repair/x", reg.host()), "{rep}");
    assert_eq!(std::fs::read(&obj).unwrap(), os_release);
    assert_eq!(mode_of(&obj), 0o400);
    env.fsck_clean();
}

/// `run -e SECRET=…`: the secret is in the index and in the runtime bundle's config.json, and
/// neither is readable by anyone but the owner: config.json is 0600 under 0700 directories.
#[test]
fn rootless_run_keeps_the_bundle_and_its_environment_private() {
    if !have_runtime_and_busybox() {
        return;
    }
    let env = TestEnv::new();
    let f = env.write("bb.tar", &busybox_tar().unwrap());
    env.ok(&["import", f.to_str().unwrap(), "bb"]);
    env.ok(&[
        "run",
        "--name",
        "c",
        "-e",
        "DB_PASSWORD=s3cret",
        "bb",
        "true",
    ]);
    let c = std::fs::read_dir(env.root().join("containers"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let config = c.join("bundle/config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("DB_PASSWORD=s3cret"), "{text}");
    assert_eq!(mode_of(&config), 0o600);
    let root = env.root();
    for dir in [
        root.clone(),
        root.join("containers"),
        c.clone(),
        root.join("run"),
        root.join("run/runtime"),
    ] {
        assert_eq!(mode_of(&dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode_of(&root.join("store.db")), 0o600);
}

/// Other users see an image's files only through a mount, where the kernel applies each
/// file's own mode (`default_permissions`): as root, mount an image; another user reads its
/// 0644 `etc/os-release` there but not its 0640 `etc/shadow`, and nothing in the store.
#[test]
fn another_user_reads_an_image_only_through_a_mount_by_its_modes() {
    if !strata::is_root() {
        eprintln!("skipped: needs root (runs cat as another user)");
        return;
    }
    let Some(user) = other_user() else { return };
    let env = TestEnv::new();
    set_mode(env.dir.path(), 0o755);
    let mut b = tar::Builder::new(Vec::new());
    for (name, mode, data) in [
        ("etc/os-release", 0o644, &b"PRETTY_NAME=\"strata\"\n"[..]),
        ("etc/shadow", 0o640, &b"root:$y$SECRET:19000::::::\n"[..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }
    let f = env.write("r.tar", &b.into_inner().unwrap());
    env.ok(&["import", f.to_str().unwrap(), "x"]);
    let mnt = env.path("mnt");
    let _m = StrataMount::start(&env, &["mount", "x"], &mnt);
    let (ok, err) = cat_as(user, &mnt.join("etc/os-release"));
    assert!(ok, "{err}");
    let (ok, err) = cat_as(user, &mnt.join("etc/shadow"));
    assert!(!ok && err.contains("Permission denied"), "{err}");
    let (ok, _) = cat_as(user, &env.root().join("store.db"));
    assert!(!ok);
}
