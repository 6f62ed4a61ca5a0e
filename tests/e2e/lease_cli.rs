//! `gc` beside running writers and mounts (issue 14 §2): every writer and mount holds a lease
//! on what it uses, so `gc` in a tight loop next to it removes nothing it needs; the lease of a
//! killed process expires and the next `gc` collects what it left.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

/// Writer operations per test.
const ROUNDS: usize = 20;

/// `strata gc` run over and over in a thread until [`GcLoop::finish`].
struct GcLoop {
    stop: Arc<AtomicBool>,
    /// Runs finished so far.
    runs: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<(u32, Vec<String>)>>,
}

impl GcLoop {
    fn start(env: &TestEnv) -> GcLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(AtomicU32::new(0));
        let root = env.root();
        let (flag, count) = (stop.clone(), runs.clone());
        let thread = std::thread::spawn(move || {
            let (mut runs, mut failures) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let o = Command::new(strata_bin())
                    .arg("--root")
                    .arg(&root)
                    .arg("gc")
                    .stdin(Stdio::null())
                    .output()
                    .unwrap();
                runs += 1;
                count.fetch_add(1, Ordering::Relaxed);
                if !o.status.success() {
                    failures.push(String::from_utf8_lossy(&o.stderr).into_owned());
                }
            }
            (runs, failures)
        });
        GcLoop {
            stop,
            runs,
            thread: Some(thread),
        }
    }

    /// Runs finished so far.
    fn runs(&self) -> u32 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Stops the loop; asserts every `gc` succeeded and that it ran alongside the writer.
    fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        let (runs, failures) = self.thread.take().unwrap().join().unwrap();
        assert!(failures.is_empty(), "gc failed: {failures:?}");
        assert!(runs >= 2, "gc ran {runs} times only");
        runs
    }
}

impl Drop for GcLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `fsck` finds neither errors nor leftovers, and no lease is left.
fn clean_after_gc(env: &TestEnv) {
    let gc = env.json(&["gc"]);
    let rep = env.json(&["fsck"]);
    assert_eq!(rep["errors"].as_array().unwrap().len(), 0, "{rep}");
    assert_eq!(rep["warnings"].as_array().unwrap().len(), 0, "{rep}\n{gc}");
    assert_eq!(leases(env).len(), 0);
}

fn leases(env: &TestEnv) -> Vec<layerstore::LeaseInfo> {
    layerstore::Store::open_reader(&env.root())
        .unwrap()
        .leases()
        .unwrap()
}

fn image_count(env: &TestEnv) -> usize {
    env.json(&["images"]).as_array().unwrap().len()
}

#[test]
fn rootless_gc_beside_import_loses_nothing() {
    let env = TestEnv::new();
    let gc = GcLoop::start(&env);
    for i in 0..ROUNDS {
        let tar = env.write("in.tar", &many_files_tar(40, 3000, i as u8));
        env.ok(&["import", tar.to_str().unwrap(), &format!("imp:{i}")]);
    }
    let runs = gc.finish();
    eprintln!("{runs} gc runs beside {ROUNDS} imports");
    assert_eq!(image_count(&env), ROUNDS);
    clean_after_gc(&env);
}

/// A three-layer image saved to an archive: the base, a small layer, one of many files.
fn layered(env: &TestEnv, name: &str) {
    add_layered_image(
        env,
        &[
            rootfs_tar(""),
            files_tar(&[("app/", b""), ("app/one", b"one")]),
            many_files_tar(60, 2000, 7),
        ],
        name,
    );
}

#[test]
fn rootless_gc_beside_load_loses_nothing() {
    let env = TestEnv::new();
    layered(&env, "ld:1");
    let archive = env.path("ld.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "ld:1"]);
    let gc = GcLoop::start(&env);
    for _ in 0..ROUNDS {
        // Unused, the layers are gc's to take while the load runs: the load finds some
        // stored (and holds them) and ingests the others again.
        env.ok(&["rmi", "ld:1"]);
        env.ok(&["load", "-i", archive.to_str().unwrap()]);
    }
    gc.finish();
    assert_eq!(image_count(&env), 1);
    clean_after_gc(&env);
}

#[test]
fn rootless_gc_beside_pull_loses_nothing() {
    if !crate::registry_cli::registry_available() {
        return;
    }
    let reg = crate::registry_cli::Registry::start(None, None);
    let name = format!("{}/lease/app:1", reg.host());
    let src = TestEnv::new();
    layered(&src, &name);
    let home = src.path("home");
    let with_home = |env: &TestEnv, args: &[&str]| {
        let o = env
            .cmd()
            .args(args)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_RUNTIME_DIR", home.join("run"))
            .env_remove("DOCKER_CONFIG")
            .env_remove("REGISTRY_AUTH_FILE")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "strata {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    with_home(&src, &["push", &name]);
    let env = TestEnv::new();
    let gc = GcLoop::start(&env);
    for i in 0..ROUNDS {
        if i > 0 {
            env.ok(&["rmi", &name]);
        }
        with_home(&env, &["pull", "-q", &name]);
    }
    gc.finish();
    assert_eq!(image_count(&env), 1);
    clean_after_gc(&env);
}

/// The upper dir of the one container named `name`.
fn upper_of(env: &TestEnv, name: &str) -> PathBuf {
    let v = env.json(&["container", "ls"]);
    let c = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap();
    env.root()
        .join("containers")
        .join(c["id"].as_str().unwrap())
        .join("upper")
}

#[test]
fn rootless_gc_beside_commit_loses_nothing() {
    let env = TestEnv::new();
    add_layered_image(&env, &[rootfs_tar("")], "base:1");
    env.ok(&["container", "create", "--name", "c", "base:1"]);
    let upper = upper_of(&env, "c");
    let gc = GcLoop::start(&env);
    for i in 0..ROUNDS {
        // A new file each round: every commit makes a new layer.
        std::fs::write(upper.join(format!("f{i}")), vec![i as u8; 5000]).unwrap();
        env.ok(&["commit", "c", &format!("snap:{i}")]);
    }
    gc.finish();
    assert_eq!(image_count(&env), ROUNDS + 1);
    env.ok(&["container", "rm", "c"]);
    clean_after_gc(&env);
}

#[test]
fn rootless_gc_beside_build_loses_nothing() {
    if !have_runtime_and_busybox() {
        return;
    }
    let env = TestEnv::new();
    let bb = env.write("bb.tar", &busybox_tar().unwrap());
    env.ok(&["import", bb.to_str().unwrap(), "bb"]);
    let ctx = env.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM bb\nCOPY a /a\nCOPY b /b\nRUN cat /a /b > /c\nCOPY a /d\n",
    )
    .unwrap();
    let gc = GcLoop::start(&env);
    for i in 0..ROUNDS {
        // New contents each round: every COPY and RUN makes a new layer.
        std::fs::write(ctx.join("a"), format!("a {i}\n")).unwrap();
        std::fs::write(ctx.join("b"), vec![i as u8; 3000]).unwrap();
        env.ok(&["build", "-t", &format!("b:{i}"), ctx.to_str().unwrap()]);
    }
    gc.finish();
    assert_eq!(image_count(&env), ROUNDS + 1);
    clean_after_gc(&env);
}

/// Reads every regular file under `dir` (recursively), returns path → content.
fn read_tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                let data = std::fs::read(e.path())
                    .unwrap_or_else(|err| panic!("reading {rel} through the mount: {err}"));
                out.insert(rel, data);
            }
        }
    }
    out
}

#[test]
fn rootless_gc_beside_a_live_mount_keeps_what_it_reads() {
    let env = TestEnv::new();
    layered(&env, "m:1");
    add_layered_image(&env, &[many_files_tar(150, 3000, 3)], "m:2");
    // The expected contents, read from a second mount that ends before the rmi.
    let mnt = env.path("mnt");
    let want = {
        let m = StrataMount::start(&env, &["mount", "m:2"], &env.path("ref"));
        let t = read_tree(&m.mnt);
        m.umount_with_cli(&env);
        t
    };
    assert_eq!(want.len(), 150);
    let m = StrataMount::start(&env, &["mount", "m:2"], &mnt);
    let held = leases(&env);
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].alive && held[0].label == "mount", "{held:?}");
    env.ok(&["rmi", "m:2"]);
    let rep = env.json(&["gc"]);
    assert_eq!(rep["layers"].as_array().unwrap().len(), 0, "{rep}");
    assert_eq!(rep["objects"], 0, "{rep}");
    // Everything reads back, also with gc running beside the reads.
    let gc = GcLoop::start(&env);
    let mut reads = 0;
    while reads < 3 || gc.runs() < 3 {
        assert!(
            read_tree(&m.mnt) == want,
            "contents differ through the mount"
        );
        reads += 1;
    }
    gc.finish();
    m.umount_with_cli(&env);
    assert_eq!(leases(&env).len(), 0, "the mount's lease goes with it");
    // Now nothing holds the image's layer: gc takes it and its objects.
    let rep = env.json(&["gc"]);
    assert_eq!(rep["layers"].as_array().unwrap().len(), 1, "{rep}");
    assert_eq!(rep["objects"], 150, "{rep}");
    clean_after_gc(&env);
}

/// Waits until `f` holds (10 s at most).
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `strata ARGS` reading `input` from a pipe that stays open; returns it once `ready`
/// holds, for a kill -9 mid-way.
fn stalled(env: &TestEnv, args: &[&str], input: &[u8], ready: impl FnMut() -> bool) -> u32 {
    let mut child = env
        .cmd()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    wait_for("the writer to hold a lease", ready);
    let pid = child.id();
    child.kill().unwrap(); // SIGKILL: no guard runs
    child.wait().unwrap();
    drop(stdin);
    pid
}

#[test]
fn rootless_the_lease_of_a_killed_writer_expires_and_gc_collects_its_leftovers() {
    let env = TestEnv::new();
    env.ok(&["images"]); // creates the store
    // An import killed while its layer is staged: the whole tar is in, the pipe stays open
    // (ingest reads to the end of the stream), so its objects wait in tmp/.
    let tar = many_files_tar(80, 2000, 5);
    let tmp = env.root().join("tmp");
    let pid = stalled(&env, &["import", "-", "killed:1"], &tar, || {
        leases(&env).len() == 1 && std::fs::read_dir(&tmp).unwrap().count() > 0
    });
    let l = leases(&env);
    assert_eq!(
        (l.len(), l[0].holder.pid, l[0].alive),
        (1, pid, false),
        "{l:?}"
    );
    assert!(std::fs::read_dir(&tmp).unwrap().count() > 0);
    let rep = env.json(&["gc"]);
    assert_eq!(rep["expired_leases"], 1, "{rep}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "{rep}");
    clean_after_gc(&env);

    // A load killed in its second layer: the first is committed and held by the lease, so only
    // the lease's expiry lets gc take it.
    layered(&env, "ld:1");
    let archive = env.path("ld.tar");
    env.ok(&["save", "-o", archive.to_str().unwrap(), "ld:1"]);
    env.ok(&["rmi", "ld:1"]);
    env.ok(&["gc"]);
    let bytes = std::fs::read(&archive).unwrap();
    // Up to the middle of the last layer blob (the one of many files, the largest entry).
    let mut ar = tar::Archive::new(&bytes[..]);
    let (start, size) = ar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.raw_file_position(), e.size())
        })
        .max_by_key(|(_, size)| *size)
        .unwrap();
    let cut = (start + size / 2) as usize;
    let pid = stalled(&env, &["load"], &bytes[..cut], || {
        leases(&env).first().is_some_and(|l| l.refs > 0)
    });
    let l = leases(&env);
    assert_eq!(
        (l.len(), l[0].holder.pid, l[0].alive),
        (1, pid, false),
        "{l:?}"
    );
    let dry = env.json(&["gc", "--dry-run"]);
    assert_eq!(dry["expired_leases"], 1, "{dry}");
    assert_eq!(leases(&env).len(), 1, "a dry run changes nothing");
    let rep = env.json(&["gc"]);
    assert_eq!(rep["expired_leases"], 1, "{rep}");
    assert!(!rep["layers"].as_array().unwrap().is_empty(), "{rep}");
    assert_eq!(rep["layers"], dry["layers"]);
    clean_after_gc(&env);
    let df = env.json(&["df"]);
    assert_eq!(
        (df["layers"].as_u64(), df["objects"].as_u64()),
        (Some(0), Some(0)),
        "{df}"
    );
}
