//! `strata save`, `load` and `export` end to end, and interop with the real skopeo and umoci.
//! Tests that need skopeo or umoci print `skipped: …` when a tool is missing, unless
//! `STRATA_REQUIRE_TOOLS=1` (then they fail).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;

/// True when `tool` runs; otherwise prints `skipped:` (or panics with STRATA_REQUIRE_TOOLS=1).
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none_or(|v| v != "1"),
            "{tool} is required (STRATA_REQUIRE_TOOLS=1) but missing"
        );
        eprintln!("skipped: {tool} is not installed");
    }
    ok
}

fn run_tool(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// All entries of a tar as (path, type, bytes, link target).
fn tar_entries(data: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>, Option<String>)> {
    let mut a = tar::Archive::new(data);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().into_owned();
        let t = e.header().entry_type();
        let l = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        let mut b = Vec::new();
        e.read_to_end(&mut b).unwrap();
        out.push((p, t, b, l));
    }
    out
}

/// A tar from (path, type, bytes, link) entries, in order.
fn build_tar(entries: &[(String, tar::EntryType, Vec<u8>, Option<String>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, t, data, l) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*t);
        h.set_mode(if t.is_dir() { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        match l {
            Some(l) => b.append_link(&mut h, p, l).unwrap(),
            None => b.append_data(&mut h, p, &data[..]).unwrap(),
        }
    }
    b.into_inner().unwrap()
}

fn file_entry(p: &str, data: &[u8]) -> (String, tar::EntryType, Vec<u8>, Option<String>) {
    (p.to_owned(), tar::EntryType::Regular, data.to_vec(), None)
}

fn json_of(
    entries: &[(String, tar::EntryType, Vec<u8>, Option<String>)],
    name: &str,
) -> serde_json::Value {
    let e = entries
        .iter()
        .find(|e| e.0 == name)
        .unwrap_or_else(|| panic!("no {name}"));
    serde_json::from_slice(&e.2).unwrap()
}

/// A layer with the entry types umoci can unpack rootless: dirs, files with modes, a
/// symlink, a hard link.
fn interop_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let hdr = |t: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(t);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_size(size);
        h
    };
    for d in ["etc/", "usr/", "usr/bin/", "var/"] {
        b.append_data(&mut hdr(tar::EntryType::Directory, 0o755, 0), d, &[][..])
            .unwrap();
    }
    b.append_data(
        &mut hdr(tar::EntryType::Directory, 0o700, 0),
        "var/secret/",
        &[][..],
    )
    .unwrap();
    let files: [(&str, &[u8], u32); 4] = [
        ("etc/os-release", b"NAME=strata\n", 0o644),
        ("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755),
        ("var/secret/key", b"k3y", 0o600),
        ("etc/empty", b"", 0o640),
    ];
    for (p, data, mode) in files {
        b.append_data(
            &mut hdr(tar::EntryType::Regular, mode, data.len() as u64),
            p,
            data,
        )
        .unwrap();
    }
    b.append_link(
        &mut hdr(tar::EntryType::Symlink, 0o777, 0),
        "usr/bin/alias",
        "tool",
    )
    .unwrap();
    b.append_link(
        &mut hdr(tar::EntryType::Link, 0o755, 0),
        "usr/bin/tool2",
        "usr/bin/tool",
    )
    .unwrap();
    b.into_inner().unwrap()
}

/// path → (kind, mode bits, contents, link target) of a directory tree.
fn tree_of(root: &Path) -> BTreeMap<String, (char, u32, Vec<u8>, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = p.symlink_metadata().unwrap();
            let mode = md.permissions().mode() & 0o7777;
            let v = if md.file_type().is_symlink() {
                (
                    'l',
                    0,
                    Vec::new(),
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else if md.is_dir() {
                stack.push(p.clone());
                ('d', mode, Vec::new(), String::new())
            } else {
                ('f', mode, std::fs::read(&p).unwrap(), String::new())
            };
            out.insert(rel, v);
        }
    }
    out
}

/// path → (kind, mode, contents, link) of a layer tar, hard links resolved to their file.
fn tree_of_tar(data: &[u8]) -> BTreeMap<String, (char, u32, Vec<u8>, String)> {
    let mut out: BTreeMap<String, (char, u32, Vec<u8>, String)> = BTreeMap::new();
    // Layers may end without padding or end blocks (umoci's do): complete them for the
    // strict `tar` crate.
    let mut padded = data.to_vec();
    padded.resize(data.len().div_ceil(512) * 512 + 1024, 0);
    let mut a = tar::Archive::new(&padded[..]);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_owned();
        let mode = e.header().mode().unwrap() & 0o7777;
        let t = e.header().entry_type();
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let v = match t {
            tar::EntryType::Directory => ('d', mode, Vec::new(), String::new()),
            tar::EntryType::Symlink => ('l', 0, Vec::new(), link),
            tar::EntryType::Link => out[&link].clone(),
            _ => {
                let mut b = Vec::new();
                e.read_to_end(&mut b).unwrap();
                ('f', mode, b, String::new())
            }
        };
        out.insert(p, v);
    }
    out
}

/// Two images sharing their base layer.
fn two_images(env: &TestEnv) {
    let base = files_tar(&[("etc/", b""), ("etc/base", b"base layer\n")]);
    let top1 = files_tar(&[("app/", b""), ("app/one", b"one\n")]);
    let top2 = files_tar(&[("app/", b""), ("app/two", b"two\n")]);
    add_layered_image(env, &[base.clone(), top1], "example.com/team/one:1.0");
    add_layered_image(env, &[base, top2], "two");
}

#[test]
fn save_writes_the_docker25_shape_with_shared_layers_once() {
    let env = TestEnv::new();
    two_images(&env);
    let out = env.path("both.tar");
    env.ok(&[
        "save",
        "-o",
        out.to_str().unwrap(),
        "example.com/team/one:1.0",
        "two",
    ]);
    let data = std::fs::read(&out).unwrap();
    let entries = tar_entries(&data);
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        &names[..4],
        ["oci-layout", "index.json", "manifest.json", "repositories"]
    );
    assert_eq!(entries[0].2, br#"{"imageLayoutVersion": "1.0.0"}"#);
    // 2 configs + 2 manifests + 3 distinct layers.
    let blobs = names
        .iter()
        .filter(|n| n.starts_with("blobs/sha256/") && n.len() > 13)
        .count();
    assert_eq!(blobs, 7, "{names:?}");
    let manifest = json_of(&entries, "manifest.json");
    assert_eq!(manifest[0]["RepoTags"][0], "example.com/team/one:1.0");
    assert_eq!(manifest[1]["RepoTags"][0], "two:latest");
    let inspect = env.json(&["inspect", "two"]);
    let diff_ids: Vec<String> = inspect["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    for (i, d) in diff_ids.iter().enumerate() {
        assert_eq!(
            manifest[1]["Layers"][i],
            format!("blobs/sha256/{}", &d[7..])
        );
        let blob = entries
            .iter()
            .find(|e| e.0 == format!("blobs/sha256/{}", &d[7..]))
            .unwrap();
        assert_eq!(format!("sha256:{}", sha256_hex(&blob.2)), *d);
    }
    assert_eq!(
        manifest[1]["Config"],
        format!("blobs/sha256/{}", &inspect["id"].as_str().unwrap()[7..])
    );
    let index = json_of(&entries, "index.json");
    let a = &index["manifests"][0]["annotations"];
    assert_eq!(a["io.containerd.image.name"], "example.com/team/one:1.0");
    assert_eq!(a["org.opencontainers.image.ref.name"], "1.0");
    assert_eq!(
        index["manifests"][1]["annotations"]["io.containerd.image.name"],
        "docker.io/library/two:latest"
    );
    // The OCI manifest names the uncompressed layers.
    let mdigest = index["manifests"][1]["digest"].as_str().unwrap();
    let m = json_of(&entries, &format!("blobs/sha256/{}", &mdigest[7..]));
    assert_eq!(
        m["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(m["layers"][1]["digest"], diff_ids[1]);
    let repos = json_of(&entries, "repositories");
    assert_eq!(repos["two"]["latest"], &diff_ids[1][7..]);
    assert_eq!(
        repos["example.com/team/one"]["1.0"].as_str().unwrap().len(),
        64
    );
}

#[test]
fn save_load_save_is_byte_identical_and_deterministic() {
    let env = TestEnv::new();
    two_images(&env);
    let a = env.path("a.tar");
    env.ok(&[
        "save",
        "-o",
        a.to_str().unwrap(),
        "example.com/team/one:1.0",
        "two",
    ]);
    // Twice → the same bytes; stdout too.
    let o = env
        .cmd()
        .args(["save", "example.com/team/one:1.0", "two"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, std::fs::read(&a).unwrap());

    let env2 = TestEnv::new();
    let out = env2.ok(&["load", "-i", a.to_str().unwrap()]);
    assert_eq!(
        out,
        "Loaded image: example.com/team/one:1.0\nLoaded image: two:latest\n"
    );
    let b = env2.path("b.tar");
    env2.ok(&[
        "save",
        "-o",
        b.to_str().unwrap(),
        "example.com/team/one:1.0",
        "two",
    ]);
    assert_eq!(sha256_file(&a), sha256_file(&b));
    env2.fsck_clean();
    // Loading again is a no-op that still succeeds.
    env2.ok(&["load", "-i", a.to_str().unwrap()]);
    assert_eq!(env2.json(&["images"]).as_array().unwrap().len(), 2);
}

#[test]
fn save_by_id_is_untagged_and_load_prints_the_id() {
    let env = TestEnv::new();
    two_images(&env);
    let id = env.json(&["inspect", "two"])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = env.path("a.tar");
    env.ok(&["save", "-o", a.to_str().unwrap(), &id[7..19]]);
    let env2 = TestEnv::new();
    assert_eq!(
        env2.ok(&["load", "-i", a.to_str().unwrap()]),
        format!("Loaded image ID: {id}\n")
    );
}

#[test]
fn load_reads_compressed_streams_and_compressed_layers() {
    let env = TestEnv::new();
    two_images(&env);
    let plain = env.path("p.tar");
    env.ok(&["save", "-o", plain.to_str().unwrap(), "two"]);
    for (tool, flag) in [("gzip", "-c"), ("zstd", "-qc")] {
        if !have(tool) {
            continue;
        }
        let comp = run_tool_bytes(Command::new(tool).arg(flag).arg(&plain));
        let env2 = TestEnv::new();
        let f = env2.write("c.tar", &comp);
        // Through stdin.
        let o = env2
            .cmd()
            .arg("load")
            .stdin(std::fs::File::open(&f).unwrap())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "Loaded image: two:latest\n"
        );
        env2.fsck_clean();
    }
    for codec in ["gzip", "zstd"] {
        let c1 = env.path(&format!("{codec}1.tar"));
        let c2 = env.path(&format!("{codec}2.tar"));
        env.ok(&[
            "save",
            "--compress",
            codec,
            "-o",
            c1.to_str().unwrap(),
            "two",
        ]);
        env.ok(&[
            "save",
            "--compress",
            codec,
            "-o",
            c2.to_str().unwrap(),
            "two",
        ]);
        assert_eq!(
            sha256_file(&c1),
            sha256_file(&c2),
            "{codec} output is deterministic"
        );
        let m = json_of(&tar_entries(&std::fs::read(&c1).unwrap()), "index.json");
        assert_eq!(m["manifests"].as_array().unwrap().len(), 1);
        let env2 = TestEnv::new();
        env2.ok(&["load", "-i", c1.to_str().unwrap()]);
        let p2 = env2.path("p2.tar");
        env2.ok(&["save", "-o", p2.to_str().unwrap(), "two"]);
        assert_eq!(
            sha256_file(&plain),
            sha256_file(&p2),
            "{codec}: same image after load"
        );
    }
}

fn run_tool_bytes(cmd: &mut Command) -> Vec<u8> {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

#[test]
fn oci_dir_save_and_load() {
    let env = TestEnv::new();
    two_images(&env);
    let dir = env.path("layout");
    env.ok(&[
        "save",
        "--oci-dir",
        dir.to_str().unwrap(),
        "--compress",
        "zstd",
        "two",
    ]);
    assert!(dir.join("oci-layout").is_file());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    // A second save into the same, now non-empty, directory is refused.
    env.fails(
        &["save", "--oci-dir", dir.to_str().unwrap(), "two"],
        "not empty",
    );
    let env2 = TestEnv::new();
    assert_eq!(
        env2.ok(&["load", "-i", dir.to_str().unwrap()]),
        "Loaded image: two:latest\n"
    );
    assert_eq!(
        env2.json(&["inspect", "two"])["id"],
        env.json(&["inspect", "two"])["id"]
    );
    env2.fsck_clean();
    if have("skopeo") {
        let cfg = run_tool(
            Command::new("skopeo")
                .args(["inspect", "--config"])
                .arg(format!("oci:{}:latest", dir.display())),
        );
        let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
        assert_eq!(cfg["rootfs"], env.json(&["inspect", "two"])["rootfs"]);
    }
}

#[test]
fn skopeo_reads_our_archive_and_umoci_unpacks_the_same_tree() {
    if !have("skopeo") || !have("umoci") {
        return;
    }
    let env = TestEnv::new();
    let layer = interop_layer();
    let f = env.write("layer.tar", &layer);
    env.ok(&["import", f.to_str().unwrap(), "interop/img:1"]);
    let diff_ids = env.json(&["inspect", "interop/img:1"])["rootfs"]["diff_ids"].clone();
    let saved = env.path("saved.tar");
    env.ok(&["save", "-o", saved.to_str().unwrap(), "interop/img:1"]);
    let oci = env.path("oci");
    run_tool(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("docker-archive:{}", saved.display()))
            .arg(format!("oci:{}:tag", oci.display())),
    );
    let cfg: serde_json::Value = serde_json::from_str(&run_tool(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:tag", oci.display())),
    ))
    .unwrap();
    assert_eq!(cfg["rootfs"]["diff_ids"], diff_ids);
    // skopeo also reads it as an OCI archive (the Docker ≥ 25 tarball is one).
    let cfg2: serde_json::Value = serde_json::from_str(&run_tool(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("docker-archive:{}", saved.display())),
    ))
    .unwrap();
    assert_eq!(cfg2["rootfs"]["diff_ids"], diff_ids);

    let bundle = env.path("bundle");
    run_tool(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:tag", oci.display()))
            .arg(&bundle),
    );
    let got = tree_of(&bundle.join("rootfs"));
    let want = tree_of_tar(&layer);
    assert_eq!(got, want);
    // Hard links stay hard links.
    let a = std::fs::metadata(bundle.join("rootfs/usr/bin/tool")).unwrap();
    let b = std::fs::metadata(bundle.join("rootfs/usr/bin/tool2")).unwrap();
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn image_made_by_umoci_loads_through_skopeo_with_the_same_diff_ids() {
    if !have("skopeo") || !have("umoci") {
        return;
    }
    let env = TestEnv::new();
    let layout = env.path("layout");
    run_tool(
        Command::new("umoci")
            .args(["init", "--layout"])
            .arg(&layout),
    );
    let img = format!("{}:t", layout.display());
    run_tool(Command::new("umoci").args(["new", "--image", &img]));
    let src = env.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("hello.txt"), b"hello from umoci\n").unwrap();
    std::fs::write(src.join("sub/run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        src.join("sub/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("../hello.txt", src.join("sub/link")).unwrap();
    run_tool(
        Command::new("umoci")
            .args(["insert", "--image", &img])
            .arg(&src)
            .arg("/data"),
    );
    run_tool(
        Command::new("umoci")
            .args(["insert", "--image", &img])
            .arg(src.join("hello.txt"))
            .arg("/etc/motd"),
    );
    let cfg: serde_json::Value = serde_json::from_str(&run_tool(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci:{img}")),
    ))
    .unwrap();
    let archive = env.path("umoci.tar");
    run_tool(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{img}"))
            .arg(format!("docker-archive:{}:umoci/made:1", archive.display())),
    );
    assert_eq!(
        env.ok(&["load", "-i", archive.to_str().unwrap()]),
        "Loaded image: umoci/made:1\n"
    );
    let ours = env.json(&["inspect", "umoci/made:1"]);
    assert_eq!(ours["rootfs"]["diff_ids"], cfg["rootfs"]["diff_ids"]);
    // Content: the second layer holds /data as umoci packed it.
    let d = ours["rootfs"]["diff_ids"][0].as_str().unwrap().to_owned();
    let o = env.cmd().args(["layer", "export", &d]).output().unwrap();
    assert!(o.status.success());
    let t = tree_of_tar(&o.stdout);
    assert_eq!(t["data/hello.txt"].2, b"hello from umoci\n");
    assert_eq!(t["data/sub/run.sh"].1, 0o755);
    assert_eq!(t["data/sub/link"].3, "../hello.txt");
    // The OCI layout itself loads too (gzip layers, no name annotation → untagged).
    let env2 = TestEnv::new();
    let out = env2.ok(&["load", "-i", layout.to_str().unwrap()]);
    assert!(out.starts_with("Loaded image ID: sha256:"), "{out}");
    assert_eq!(
        env2.json(&["inspect", out.trim().rsplit(' ').next().unwrap()])["rootfs"]["diff_ids"],
        cfg["rootfs"]["diff_ids"]
    );
    env.fsck_clean();
    env2.fsck_clean();
}

#[test]
fn handmade_pre25_tarball_loads() {
    let env = TestEnv::new();
    let l1 = files_tar(&[("etc/", b""), ("etc/old", b"pre-25\n")]);
    let l2 = files_tar(&[("srv/", b""), ("srv/x", b"x\n")]);
    let d1 = format!("sha256:{}", sha256_hex(&l1));
    let d2 = format!("sha256:{}", sha256_hex(&l2));
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["{d1}","{d2}","{d1}"]}},"history":[{{"created_by":"a"}},{{"created_by":"b"}},{{"created_by":"c"}}]}}"#
    );
    let id = sha256_hex(config.as_bytes());
    let (v1, v2, v3) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
    let manifest = format!(
        r#"[{{"Config":"{id}.json","RepoTags":["hand/made:1"],"Layers":["{v1}/layer.tar","{v2}/layer.tar","{v3}/layer.tar"]}}]"#
    );
    let repos = format!(r#"{{"hand/made":{{"1":"{v3}"}}}}"#);
    // Docker's order: layer dirs first (sorted), then <id>.json, manifest.json, repositories;
    // the repeated layer is a symlink to the first copy.
    let entries = vec![
        (
            format!("{v1}/"),
            tar::EntryType::Directory,
            Vec::new(),
            None,
        ),
        file_entry(&format!("{v1}/VERSION"), b"1.0"),
        file_entry(&format!("{v1}/json"), br#"{"id":"1"}"#),
        file_entry(&format!("{v1}/layer.tar"), &l1),
        (
            format!("{v2}/"),
            tar::EntryType::Directory,
            Vec::new(),
            None,
        ),
        file_entry(&format!("{v2}/VERSION"), b"1.0"),
        file_entry(&format!("{v2}/layer.tar"), &l2),
        (
            format!("{v3}/"),
            tar::EntryType::Directory,
            Vec::new(),
            None,
        ),
        (
            format!("{v3}/layer.tar"),
            tar::EntryType::Symlink,
            Vec::new(),
            Some(format!("../{v1}/layer.tar")),
        ),
        file_entry(&format!("{id}.json"), config.as_bytes()),
        file_entry("manifest.json", manifest.as_bytes()),
        file_entry("repositories", repos.as_bytes()),
    ];
    let f = env.write("old.tar", &build_tar(&entries));
    assert_eq!(
        env.ok(&["load", "-i", f.to_str().unwrap()]),
        "Loaded image: hand/made:1\n"
    );
    let ins = env.json(&["inspect", "hand/made:1"]);
    assert_eq!(ins["id"], format!("sha256:{id}"));
    assert_eq!(ins["rootfs"]["diff_ids"][2], d1);
    env.fsck_clean();
}

/// Asserts a failed load left nothing: no image, no layer, fsck clean.
fn assert_nothing_loaded(env: &TestEnv) {
    assert_eq!(env.json(&["images"]).as_array().unwrap().len(), 0);
    env.fsck_clean();
    let gc = env.json(&["gc", "--dry-run"]);
    assert_eq!(gc["layers"].as_array().map_or(0, Vec::len), 0, "{gc}");
}

#[test]
fn bad_archives_fail_cleanly_and_a_reload_works() {
    let src = TestEnv::new();
    two_images(&src);
    let good = src.path("good.tar");
    src.ok(&["save", "-o", good.to_str().unwrap(), "two"]);
    let data = std::fs::read(&good).unwrap();
    let entries = tar_entries(&data);
    let manifest = json_of(&entries, "manifest.json");
    let top = manifest[0]["Layers"][1].as_str().unwrap().to_owned();
    let env = TestEnv::new();

    // Missing manifest: a plain rootfs tar.
    let f = env.write("rootfs.tar", &files_tar(&[("a", b"a")]));
    env.fails(
        &["load", "-i", f.to_str().unwrap()],
        "neither manifest.json",
    );
    assert_nothing_loaded(&env);

    // A layer that does not match its DiffID (its content swapped); Docker-style order with
    // the manifest after the blobs, and ours with it before.
    let other = files_tar(&[("app/", b""), ("app/two", b"TWO\n")]);
    let mut swapped: Vec<_> = entries.clone();
    for e in &mut swapped {
        if e.0 == top {
            e.2 = other.clone();
        }
    }
    let f = env.write("swapped.tar", &build_tar(&swapped));
    env.fails(
        &["load", "-i", f.to_str().unwrap()],
        "invalid diffID for layer 1",
    );
    assert_nothing_loaded(&env);
    swapped.sort_by(|a, b| a.0.cmp(&b.0));
    let f = env.write("swapped-sorted.tar", &build_tar(&swapped));
    env.fails(
        &["load", "-i", f.to_str().unwrap()],
        "invalid diffID for layer 1",
    );
    assert_nothing_loaded(&env);

    // Truncated in the middle of the last layer.
    let f = env.write("trunc.tar", &data[..data.len() - 1536 - 100]);
    env.fails(&["load", "-i", f.to_str().unwrap()], "truncated");
    assert_nothing_loaded(&env);

    // A manifest naming a blob that is not there.
    let missing: Vec<_> = entries.iter().filter(|e| e.0 != top).cloned().collect();
    let f = env.write("missing.tar", &build_tar(&missing));
    env.fails(&["load", "-i", f.to_str().unwrap()], "not in the archive");
    assert_nothing_loaded(&env);

    // Path traversal inside a layer: replace the top layer and fix the config and manifest.
    let mut evil = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(4);
    h.set_mode(0o644);
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    evil.append(&h, &b"evil"[..]).unwrap();
    let evil = evil.into_inner().unwrap();
    let ed = sha256_hex(&evil);
    let cfg_path = manifest[0]["Config"].as_str().unwrap().to_owned();
    let cfg = String::from_utf8(entries.iter().find(|e| e.0 == cfg_path).unwrap().2.clone())
        .unwrap()
        .replace(&top[13..], &ed);
    let cid = sha256_hex(cfg.as_bytes());
    let m = format!(
        r#"[{{"Config":"blobs/sha256/{cid}","RepoTags":["evil:1"],"Layers":["{}","blobs/sha256/{ed}"]}}]"#,
        manifest[0]["Layers"][0].as_str().unwrap()
    );
    let mut ev: Vec<_> = entries
        .iter()
        .filter(|e| e.0 != "index.json" && e.0 != "manifest.json" && e.0 != top && e.0 != cfg_path)
        .cloned()
        .collect();
    ev.push(file_entry("manifest.json", m.as_bytes()));
    ev.push(file_entry(&format!("blobs/sha256/{cid}"), cfg.as_bytes()));
    ev.push(file_entry(&format!("blobs/sha256/{ed}"), &evil));
    let f = env.write("evil.tar", &build_tar(&ev));
    env.fails(&["load", "-i", f.to_str().unwrap()], "escape");
    assert_nothing_loaded(&env);

    // Path traversal in the archive's own names.
    let mut bad_names = entries.clone();
    bad_names[0].0 = "../oci-layout".into();
    let mut b = tar::Builder::new(Vec::new());
    for (p, _, data, _) in &bad_names {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        let n = p.as_bytes();
        if n.len() <= 100 {
            h.as_old_mut().name[..n.len()].copy_from_slice(n);
        }
        h.set_cksum();
        b.append(&h, &data[..]).unwrap();
    }
    let f = env.write("badnames.tar", &b.into_inner().unwrap());
    let o = env.run(&["load", "-i", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_nothing_loaded(&env);

    // Unknown platform.
    env.fails(
        &[
            "load",
            "-i",
            good.to_str().unwrap(),
            "--platform",
            "linux/s390x",
        ],
        "no image for platform linux/s390x",
    );
    assert_nothing_loaded(&env);

    // After all that, the good archive loads.
    assert_eq!(
        env.ok(&["load", "-i", good.to_str().unwrap()]),
        "Loaded image: two:latest\n"
    );
    env.fsck_clean();
}

#[test]
fn export_flattens_the_image_and_the_container_upper() {
    let env = TestEnv::new();
    let base = files_tar(&[
        ("etc/", b""),
        ("etc/keep", b"keep\n"),
        ("etc/gone", b"gone\n"),
    ]);
    let top = files_tar(&[("etc/", b""), ("etc/keep", b"changed\n"), ("srv/", b"")]);
    add_layered_image(&env, &[base, top], "exp:1");
    let c = env.json(&["container", "create", "exp:1", "--name", "c1"]);
    let dir = std::path::PathBuf::from(c["dir"].as_str().unwrap_or_default());
    let upper = if dir.as_os_str().is_empty() {
        let id = c["id"].as_str().unwrap();
        env.root().join("containers").join(id).join("upper")
    } else {
        dir.join("upper")
    };
    std::fs::create_dir_all(upper.join("srv")).unwrap();
    std::fs::write(upper.join("srv/new"), b"new\n").unwrap();
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    // An overlay whiteout (char 0/0) hides etc/gone.
    let st = Command::new("mknod")
        .arg(upper.join("etc/gone"))
        .args(["c", "0", "0"])
        .status();
    let whiteout = st.is_ok_and(|s| s.success());
    let out = env.path("rootfs.tar");
    env.ok(&["export", "c1", "-o", out.to_str().unwrap()]);
    let t = tree_of_tar(&std::fs::read(&out).unwrap());
    assert_eq!(t["etc/keep"].2, b"changed\n");
    assert_eq!(t["srv/new"].2, b"new\n");
    if whiteout {
        assert!(!t.contains_key("etc/gone"), "{:?}", t.keys());
    }
    // Stdout gives the same bytes.
    let o = env.cmd().args(["export", "c1"]).output().unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, std::fs::read(&out).unwrap());
}

/// The upper dir of a container made by `container create`.
fn container_upper(env: &TestEnv, c: &serde_json::Value) -> std::path::PathBuf {
    match c["dir"].as_str() {
        Some(d) if !d.is_empty() => Path::new(d).join("upper"),
        _ => env
            .root()
            .join("containers")
            .join(c["id"].as_str().unwrap())
            .join("upper"),
    }
}

#[test]
fn rootless_export_writes_hard_links_as_tar_links_like_commit() {
    let env = TestEnv::new();
    let dir = |p: &str| (p.to_owned(), tar::EntryType::Directory, Vec::new(), None);
    let link = |p: &str, to: &str| {
        (
            p.to_owned(),
            tar::EntryType::Link,
            Vec::new(),
            Some(to.to_owned()),
        )
    };
    let base = build_tar(&[dir("d/"), file_entry("d/a", b"lower\n"), link("d/b", "d/a")]);
    add_layered_image(&env, &[base], "hl:1");
    let c = env.json(&["container", "create", "hl:1", "--name", "c1"]);
    let upper = container_upper(&env, &c);
    // Hard links made in the container: two names of one upper file, and a third in
    // another directory.
    std::fs::create_dir_all(upper.join("u/v")).unwrap();
    std::fs::write(upper.join("u/p"), b"upper\n").unwrap();
    std::fs::hard_link(upper.join("u/p"), upper.join("u/q")).unwrap();
    std::fs::hard_link(upper.join("u/p"), upper.join("u/v/r")).unwrap();
    std::fs::write(upper.join("u/single"), b"one name\n").unwrap();

    let out = env.path("rootfs.tar");
    env.ok(&["export", "c1", "-o", out.to_str().unwrap()]);
    let entries = tar_entries(&std::fs::read(&out).unwrap());
    let kind_of = |p: &str| {
        let e = entries
            .iter()
            .find(|e| e.0 == p)
            .unwrap_or_else(|| panic!("no {p} in {entries:?}"));
        (e.1, e.2.clone(), e.3.clone())
    };
    assert_eq!(
        kind_of("d/a"),
        (tar::EntryType::Regular, b"lower\n".to_vec(), None)
    );
    assert_eq!(
        kind_of("d/b"),
        (tar::EntryType::Link, Vec::new(), Some("d/a".to_owned()))
    );
    // The first name in the walk holds the content; the others link to it.
    let holders: Vec<&String> = ["u/p", "u/q", "u/v/r"]
        .iter()
        .map(|p| entries.iter().find(|e| e.0 == *p).unwrap())
        .filter(|e| e.1 == tar::EntryType::Regular)
        .map(|e| &e.0)
        .collect();
    assert_eq!(holders.len(), 1, "{entries:?}");
    let first = holders[0].clone();
    assert_eq!(kind_of(&first).1, b"upper\n");
    for p in ["u/p", "u/q", "u/v/r"] {
        if p != first {
            assert_eq!(
                kind_of(p),
                (tar::EntryType::Link, Vec::new(), Some(first.clone())),
                "{p}"
            );
        }
    }
    assert_eq!(kind_of("u/single").0, tar::EntryType::Regular);

    // commit keeps the same links: the layer it writes links the same names.
    env.ok(&["commit", "c1", "hl:2"]);
    let hist = env.json(&["history", "hl:2"]);
    let diff_id = hist[0]["diff_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{hist}"))
        .to_owned();
    let layer = env.path("layer.tar");
    env.ok(&["layer", "export", &diff_id, "-o", layer.to_str().unwrap()]);
    let committed = tar_entries(&std::fs::read(&layer).unwrap());
    let links = |es: &[(String, tar::EntryType, Vec<u8>, Option<String>)]| {
        let mut v: Vec<String> = es
            .iter()
            .filter(|e| e.1 == tar::EntryType::Link && e.0.starts_with("u/"))
            .map(|e| e.0.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(links(&committed), links(&entries));
}

/// This process's pid namespace and start time (field 22 of /proc/self/stat).
fn my_pid_ns_and_start() -> (u64, u64) {
    let ns = std::fs::metadata("/proc/self/ns/pid").unwrap().ino();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let start = rest.split_whitespace().nth(19).unwrap().parse().unwrap();
    (ns, start)
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Starts `strata save -o <dir>/<name> big:1 --compress gzip`, waits until it has its
/// output open in `dir` (compression of the big layer is then under way), kills it with
/// SIGKILL and reaps it. Returns whether it was killed while writing (not finished).
fn kill_save_mid_write(env: &TestEnv, dir: &Path, name: &str) -> bool {
    let mut child = env
        .cmd()
        .args(["save", "--compress", "gzip", "-o"])
        .arg(dir.join(name))
        .arg("big:1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let fds = format!("/proc/{}/fd", child.id());
    let canon = dir.canonicalize().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let writing = loop {
        let open_here = std::fs::read_dir(&fds).ok().is_some_and(|rd| {
            rd.flatten()
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&canon)))
        });
        if open_here {
            break true;
        }
        if child.try_wait().unwrap().is_some() || std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let _ = child.kill();
    let st = child.wait().unwrap();
    writing && !st.success()
}

/// A big image: one layer of 48 MiB of noise (gzip needs a while for it).
fn big_image(env: &TestEnv) {
    let noise: Vec<u8> = (0..(48u32 << 20) / 4)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761) ^ (i >> 3)).to_le_bytes())
        .collect();
    let layer = files_tar(&[("data/", b""), ("data/noise", &noise)]);
    add_layered_image(env, &[layer], "big:1");
}

#[test]
fn rootless_killed_save_leaves_no_temp_file_and_the_next_save_cleans_up() {
    let env = TestEnv::new();
    big_image(&env);
    let out = env.path("out");
    std::fs::create_dir(&out).unwrap();
    // Killed mid-write: nothing is left in the target directory (neither the target nor a
    // temp file).
    assert!(
        kill_save_mid_write(&env, &out, "big.tar"),
        "save finished before it was killed"
    );
    assert_eq!(names_in(&out), Vec::<String>::new());

    // Temp files of killed saves that had a name (a filesystem without unnamed files): the
    // next save removes those whose process is gone, and keeps those of live processes, of
    // another pid namespace, and files of other names.
    let (ns, start) = my_pid_ns_and_start();
    let dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let me = std::process::id();
    let planted = [
        (format!(".strata-save-{ns}-{dead_pid}-1-00.tmp"), false),
        // This pid with another start time: an earlier process with the same pid.
        (
            format!(".strata-save-{ns}-{me}-{}-01.tmp", start + 1),
            false,
        ),
        (format!(".strata-save-{ns}-{me}-{start}-02.tmp"), true),
        (format!(".strata-save-{}-{dead_pid}-1-03.tmp", ns + 1), true),
        (".strata-save-notes.txt".to_owned(), true),
    ];
    for (n, _) in &planted {
        std::fs::write(out.join(n), b"partial").unwrap();
    }
    env.ok(&["save", "-o", out.join("big.tar").to_str().unwrap(), "big:1"]);
    let mut want: Vec<String> = planted
        .iter()
        .filter(|(_, kept)| *kept)
        .map(|(n, _)| n.clone())
        .collect();
    want.push("big.tar".into());
    want.sort();
    assert_eq!(names_in(&out), want);
    let t = tar_entries(&std::fs::read(out.join("big.tar")).unwrap());
    assert!(t.iter().any(|e| e.0 == "manifest.json"));
    // Output mode as docker's CLI writes it.
    assert_eq!(
        std::fs::metadata(out.join("big.tar")).unwrap().mode() & 0o777,
        0o600
    );
}

#[test]
fn rootless_killed_save_into_a_fuse_dir_is_cleaned_by_the_next_save() {
    // A FUSE union has no unnamed temp files (O_TMPFILE): save names its temp file, a kill
    // leaves it, and the next save into that directory removes it.
    let usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if !usable {
        assert!(
            std::env::var_os("STRATA_REQUIRE_FUSE").is_none(),
            "/dev/fuse is required"
        );
        eprintln!("skipped: /dev/fuse is not usable here");
        return;
    }
    let env = TestEnv::new();
    big_image(&env);
    add_layered_image(&env, &[files_tar(&[("out/", b"")])], "scratch:1");
    env.ok(&["container", "create", "scratch:1", "--name", "w"]);
    let mnt = env.path("mnt");
    let _m = StrataMount::start(&env, &["container", "mount", "w"], &mnt);
    let out = mnt.join("out");
    assert!(
        kill_save_mid_write(&env, &out, "big.tar"),
        "save finished before it was killed"
    );
    let left = names_in(&out);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].starts_with(".strata-save-") && left[0].ends_with(".tmp"),
        "{left:?}"
    );
    env.ok(&[
        "save",
        "-o",
        out.join("small.tar").to_str().unwrap(),
        "scratch:1",
    ]);
    assert_eq!(names_in(&out), ["small.tar"]);
}
