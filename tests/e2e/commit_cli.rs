//! `strata diff` and `strata commit` with real FUSE mounts: every kind of change a container can
//! make, Docker's diff output exactly, the committed layer's tar, history, and a mount of the new
//! image that must show what the container showed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::*;

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

/// 4 MiB of deterministic bytes: big enough that a data copy would show.
fn big() -> Vec<u8> {
    (0..4u32 << 20).map(|i| (i % 251) as u8).collect()
}

/// Base layer (every entry type, a lower hard link) plus a second layer with the files the
/// test changes.
fn image(env: &TestEnv) -> String {
    let big = big();
    let top = files_tar(&[
        ("etc/", b""),
        ("etc/a", b"a\n"),
        ("etc/b", b"b\n"),
        ("d/", b""),
        ("d/x", b"x"),
        ("d/sub/", b""),
        ("d/sub/s", b"s"),
        ("old/", b""),
        ("old/o", b"o"),
        ("old/inner/", b""),
        ("old/inner/i", b"i"),
        ("gone/", b""),
        ("gone/g", b"g"),
        ("keep/", b""),
        ("keep/k", b"k"),
        ("bin/big", &big),
    ]);
    add_layered_image(env, &[rootfs_tar(""), top], "base:1")
}

/// Everything a mount shows, per path: type, mode, owner, size, mtime (seconds), content hash,
/// link target, and which names share an inode.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(
        root: &Path,
        rel: &str,
        out: &mut BTreeMap<String, String>,
        inos: &mut BTreeMap<u64, Vec<String>>,
    ) {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n.clone()
            } else {
                format!("{rel}/{n}")
            };
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let mut d = format!(
                "mode={:o} owner={}:{} mtime={}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.mtime()
            );
            if ft.is_file() {
                d += &format!(" size={} sha={}", md.len(), sha256_file(&p));
                if md.nlink() > 1 {
                    inos.entry(md.ino()).or_default().push(r.clone());
                }
            } else if ft.is_symlink() {
                d += &format!(" -> {}", fs::read_link(&p).unwrap().display());
            } else if !ft.is_dir() {
                d += &format!(" rdev={}", md.rdev());
            }
            out.insert(r.clone(), d);
            if ft.is_dir() {
                walk(root, &r, out, inos);
            }
        }
    }
    let mut out = BTreeMap::new();
    let mut inos = BTreeMap::new();
    walk(root, "", &mut out, &mut inos);
    for names in inos.into_values() {
        if names.len() > 1 {
            out.insert(format!("links {}", names.join(" ")), String::new());
        }
    }
    out
}

/// The container's upper dir (there is one container in these stores).
fn upper_of(env: &TestEnv, name: &str) -> std::path::PathBuf {
    let v = env.json(&["container", "ls"]);
    let id = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.root().join("containers").join(id).join("upper")
}

/// Makes one change of every kind through the container's mount.
fn change_everything(mnt: &Path) {
    // Added file, modified file, deleted lower file, deleted lower dir.
    fs::write(mnt.join("etc/new"), b"new\n").unwrap();
    let mut a = fs::read(mnt.join("etc/a")).unwrap();
    a.extend_from_slice(b"more\n");
    fs::write(mnt.join("etc/a"), &a).unwrap();
    fs::remove_file(mnt.join("etc/b")).unwrap();
    fs::remove_dir_all(mnt.join("gone")).unwrap();
    // rm -rf d && mkdir d: an opaque dir.
    fs::remove_dir_all(mnt.join("d")).unwrap();
    fs::create_dir(mnt.join("d")).unwrap();
    fs::write(mnt.join("d/y"), b"y").unwrap();
    // A renamed lower dir (a redirect), with a change inside it.
    fs::rename(mnt.join("old"), mnt.join("renamed")).unwrap();
    fs::write(mnt.join("renamed/added"), b"added").unwrap();
    // chmod of a big lower file: a metadata-only copy-up.
    fs::set_permissions(mnt.join("bin/big"), fs::Permissions::from_mode(0o700)).unwrap();
    // Hard links: a new pair, and a write to a lower hard-linked file (both names known).
    fs::hard_link(mnt.join("etc/new"), mnt.join("etc/new2")).unwrap();
    fs::metadata(mnt.join("bin/hello2")).unwrap();
    let mut h = fs::read(mnt.join("bin/hello")).unwrap();
    h.extend_from_slice(b"echo changed\n");
    fs::write(mnt.join("bin/hello"), &h).unwrap();
    // A symlink and a fifo.
    std::os::unix::fs::symlink("a", mnt.join("etc/sym")).unwrap();
    let st = Command::new("mkfifo")
        .arg(mnt.join("etc/fifo"))
        .status()
        .unwrap();
    assert!(st.success());
}

const EXPECTED_DIFF: &str = "\
C /bin
C /bin/big
C /bin/hello
C /bin/hello2
C /d
D /d/sub
D /d/x
A /d/y
C /etc
C /etc/a
D /etc/b
A /etc/fifo
A /etc/new
A /etc/new2
A /etc/sym
D /gone
D /old
A /renamed
A /renamed/added
A /renamed/inner
A /renamed/inner/i
A /renamed/o
";

#[test]
fn rootless_diff_commit_history_and_mount_of_every_change() {
    if skip_without_fuse() {
        return;
    }
    let env = TestEnv::new();
    let parent = image(&env);
    env.ok(&["container", "create", "--name", "c1", "base:1"]);
    let mnt = env.path("mnt");
    let m = StrataMount::start(&env, &["container", "mount", "c1"], &mnt);
    change_everything(&mnt);
    let seen = snapshot(&mnt);
    // Commit of a mounted container is refused (a consistent snapshot needs it unmounted).
    env.fails(&["commit", "c1", "x:1"], "is mounted at");
    m.umount_with_cli(&env);

    // The chmod did not copy 4 MiB: the upper holds a placeholder of that size, as a hole.
    let upper = upper_of(&env, "c1");
    let placeholder = fs::metadata(upper.join("bin/big")).unwrap();
    assert_eq!(placeholder.len(), 4 << 20);
    assert!(placeholder.blocks() * 512 < 1 << 20, "{placeholder:?}");

    assert_eq!(env.ok(&["diff", "c1"]), EXPECTED_DIFF);
    let j = env.json(&["diff", "c1"]);
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), EXPECTED_DIFF.lines().count());
    assert_eq!(rows[0], serde_json::json!({"kind": "C", "path": "/bin"}));

    let id = env.ok(&[
        "commit",
        "-m",
        "every change",
        "-a",
        "Tester <t@x>",
        "c1",
        "mine:1",
    ]);
    let id = id.trim().to_owned();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");

    // History: the new layer on top, labelled with the new ID; the parent's top row with its.
    let h = env.json(&["history", "mine:1"]);
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 3);
    assert_eq!(h[0]["image"], id.as_str());
    assert_eq!(h[0]["comment"], "every change");
    assert_eq!(h[1]["image"], parent.as_str());
    let text = env.ok(&["history", "mine:1"]);
    assert!(
        text.lines().nth(1).unwrap().starts_with(&id[7..19]),
        "{text}"
    );
    let info = env.json(&["inspect", "mine:1"]);
    assert_eq!(info["parent"], parent.as_str());
    assert_eq!(info["author"], "Tester <t@x>");
    assert_eq!(info["history"][2]["author"], "Tester <t@x>");
    let diff_id = info["rootfs"]["diff_ids"][2].as_str().unwrap().to_owned();

    // The layer tar, as GNU tar lists it.
    let tar = env.path("layer.tar");
    let bytes = env
        .cmd()
        .args(["layer", "export", &diff_id])
        .output()
        .unwrap();
    assert!(bytes.status.success());
    fs::write(&tar, &bytes.stdout).unwrap();
    assert_eq!(format!("sha256:{}", sha256_file(&tar)), diff_id);
    let listing = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
    let names = String::from_utf8(listing.stdout).unwrap();
    let names: Vec<&str> = names.lines().collect();
    assert_eq!(
        names,
        [
            "bin/",
            "bin/big",
            "bin/hello",
            "bin/hello2",
            "d/",
            "d/.wh..wh..opq",
            "d/y",
            "etc/",
            "etc/a",
            "etc/.wh.b",
            "etc/fifo",
            "etc/new",
            "etc/new2",
            "etc/sym",
            ".wh.gone",
            ".wh.old",
            "renamed/",
            "renamed/added",
            "renamed/inner/",
            "renamed/inner/i",
            "renamed/o",
        ]
    );
    let verbose = Command::new("tar").arg("-tvf").arg(&tar).output().unwrap();
    let verbose = String::from_utf8(verbose.stdout).unwrap();
    assert!(
        verbose.contains("bin/hello2 link to bin/hello"),
        "{verbose}"
    );
    assert!(verbose.contains("etc/new2 link to etc/new"), "{verbose}");
    assert!(
        verbose.contains(&format!("{} ", 4u32 << 20)),
        "big file in full: {verbose}"
    );
    assert!(verbose.contains("-rwx------"), "{verbose}");

    // The new image, mounted, shows exactly what the container showed.
    let mnt2 = env.path("mnt2");
    let m2 = StrataMount::start(&env, &["mount", "mine:1"], &mnt2);
    assert_eq!(snapshot(&mnt2), seen);
    assert_eq!(fs::read(mnt2.join("bin/big")).unwrap(), big());
    drop(m2);

    // Committing again without changes gives the same layer (reproducible).
    let j = env.json(&["commit", "c1"]);
    assert_eq!(j["diff_id"], diff_id.as_str());
    assert_eq!(j["parent"], parent.as_str());
    env.fsck_clean();
}

#[test]
fn rootless_commit_of_an_unchanged_container_is_an_empty_layer() {
    let env = TestEnv::new();
    let parent = image(&env);
    env.ok(&["container", "create", "--name", "c", "base:1"]);
    assert_eq!(env.ok(&["diff", "c"]), "");
    assert_eq!(env.json(&["diff", "c"]), serde_json::json!([]));
    let j = env.json(&[
        "commit",
        "-c",
        "CMD [\"/bin/hello\"]",
        "-c",
        "ENV A=1",
        "c",
        "example.com/org/empty:v1",
    ]);
    // An empty layer is the end-of-archive blocks: 1024 zero bytes.
    assert_eq!(
        j["diff_id"],
        format!("sha256:{}", sha256_hex(&[0u8; 1024])).as_str()
    );
    assert_eq!(j["tags"][0], "example.com/org/empty:v1");
    let info = env.json(&["inspect", "example.com/org/empty:v1"]);
    assert_eq!(info["config"]["Cmd"], serde_json::json!(["/bin/hello"]));
    assert_eq!(info["config"]["Env"], serde_json::json!(["A=1"]));
    assert_eq!(info["parent"], parent.as_str());
    assert_eq!(info["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
    // The plain output is the ID, as `docker commit` prints it.
    let id = env.ok(&["commit", "c"]);
    assert!(id.starts_with("sha256:") && id.trim().len() == 71, "{id}");
    // A commit of a container of a committed image: every local ancestor labels its top row.
    let mid = j["id"].as_str().unwrap().to_owned();
    env.ok(&[
        "container",
        "create",
        "--name",
        "c2",
        "example.com/org/empty:v1",
    ]);
    let top = env.json(&["commit", "-m", "second", "c2", "chained"]);
    let h = env.json(&["history", "chained"]);
    let images: Vec<&str> = h
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["image"].as_str().unwrap_or("<missing>"))
        .collect();
    assert_eq!(
        images,
        [
            top["id"].as_str().unwrap(),
            mid.as_str(),
            parent.as_str(),
            "<missing>"
        ]
    );
    assert_eq!(h[0]["comment"], "second");
}

#[test]
fn rootless_commit_and_diff_refuse_bad_input() {
    let env = TestEnv::new();
    image(&env);
    env.ok(&["container", "create", "--name", "c", "base:1"]);
    env.fails(&["diff", "nope"], "not found");
    env.fails(&["commit", "nope"], "not found");
    let before = env.json(&["images"]).as_array().unwrap().len();
    env.fails(&["commit", "c", "Bad Name!"], "image name");
    env.fails(&["commit", "c", "x@sha256:abc"], "image name");
    env.fails(&["commit", "-c", "FROB x", "c"], "FROB");
    assert_eq!(
        env.json(&["images"]).as_array().unwrap().len(),
        before,
        "nothing is committed on bad input"
    );
    let o = env.run(&["commit"]);
    assert_eq!(o.status.code(), Some(2), "usage error");
}
