//! Container lifecycle through a real runtime (runc): a `strata run` killed with SIGKILL
//! leaves nothing `ps`, `start` and `rm` trip on; `rm -f`, `stop`, `kill`; `fsck` finds and
//! repairs orphan container directories and stale mounts.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn busybox_env() -> Option<TestEnv> {
    if !have_runtime_and_busybox() {
        return None;
    }
    let env = TestEnv::new();
    let f = env.write("bb.tar", &busybox_tar()?);
    env.ok(&[
        "import",
        "-c",
        "CMD [\"/bin/sh\"]",
        f.to_str().unwrap(),
        "bb",
    ]);
    Some(env)
}

fn mounts_under(env: &TestEnv) -> Vec<String> {
    let root = env.root().canonicalize().unwrap();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(root.to_str().unwrap()))
        .map(str::to_owned)
        .collect()
}

/// Containers the runtime has state for in the store's runtime dir.
fn runc_list(env: &TestEnv) -> String {
    let o = Command::new("runc")
        .arg("--root")
        .arg(env.root().join("run/runtime"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether a process runs `sleep SECS` (each test sleeps a different number of seconds).
fn sleep_runs(secs: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| c == format!("sleep\0{secs}\0").as_bytes())
    })
}

/// `strata run --name NAME bb ARGS…` in the background; returns once `ps` says it is up and
/// the command runs.
fn start_run(env: &TestEnv, name: &str, args: &[&str], secs: &str) -> Child {
    let child = env
        .cmd()
        .args(["run", "--network", "none", "--name", name, "bb"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(sleep_runs(secs) && env.ok(&["ps"]).contains("Up")) {
        assert!(Instant::now() < deadline, "the container did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn wait_gone(secs: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleep_runs(secs) {
        assert!(Instant::now() < deadline, "sleep {secs} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is_root() -> bool {
    caller_ids().0 == 0
}

#[test]
fn kill_9_of_run_leaves_nothing_that_ps_start_and_rm_trip_on() {
    if !is_root() {
        return;
    }
    let Some(env) = busybox_env() else { return };
    // The second run (start) ends at once, with 5.
    let mut child = start_run(
        &env,
        "x",
        &[
            "sh",
            "-c",
            "[ -e /again ] && exit 5; touch /again; exec sleep 1301",
        ],
        "1301",
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // The owner is gone: ps cleans up after it and says the run was killed.
    let ps = env.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited (137)"), "{ps}");
    wait_gone("1301");
    assert_eq!(mounts_under(&env), Vec::<String>::new());
    assert_eq!(runc_list(&env).trim(), "");
    // start works again.
    let o = env.run(&["start", "x"]);
    assert_eq!(
        o.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    env.ok(&["rm", "x"]);
    assert!(env.ok(&["ps", "-a", "-q"]).trim().is_empty());
    let dirs: Vec<_> = std::fs::read_dir(env.root().join("containers"))
        .unwrap()
        .collect();
    assert!(dirs.is_empty(), "{dirs:?}");
}

#[test]
fn rm_after_kill_9_removes_the_mount_the_runtime_state_and_the_dir() {
    if !is_root() {
        return;
    }
    let Some(env) = busybox_env() else { return };
    let mut child = start_run(&env, "x", &["sleep", "1302"], "1302");
    child.kill().unwrap();
    child.wait().unwrap();
    env.ok(&["rm", "x"]);
    wait_gone("1302");
    assert_eq!(mounts_under(&env), Vec::<String>::new());
    assert_eq!(runc_list(&env).trim(), "");
    assert_eq!(
        std::fs::read_dir(env.root().join("containers"))
            .unwrap()
            .count(),
        0
    );
    env.fsck_clean();
    // The name is free again.
    env.ok(&["run", "--network", "none", "--name", "x", "bb", "true"]);
}

#[test]
fn rootless_rm_force_kills_a_running_container() {
    let Some(env) = busybox_env() else { return };
    let mut child = start_run(&env, "x", &["sleep", "1303"], "1303");
    env.fails(&["rm", "x"], "running");
    assert!(sleep_runs("1303"));
    env.ok(&["rm", "-f", "x"]);
    wait_gone("1303");
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(137));
    assert_eq!(mounts_under(&env), Vec::<String>::new());
    assert_eq!(runc_list(&env).trim(), "");
    assert!(env.ok(&["ps", "-a", "-q"]).trim().is_empty());
}

#[test]
fn rootless_stop_sends_term_then_kill_after_the_grace_period() {
    let Some(env) = busybox_env() else { return };
    // A process that ignores SIGTERM: stop -t 1 kills it after about a second.
    let mut child = start_run(
        &env,
        "x",
        &["sh", "-c", "trap '' TERM; sleep 1304; true"],
        "1304",
    );
    let t = Instant::now();
    env.ok(&["stop", "-t", "1", "x"]);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(137));
    wait_gone("1304");
    assert!(env.ok(&["ps", "-a"]).contains("Exited (137)"));
    // One that exits on SIGTERM stops at once.
    // (A plain `sleep` as the container's pid 1 would ignore SIGTERM: no handler.)
    let mut child = start_run(
        &env,
        "y",
        &["sh", "-c", "trap 'exit 143' TERM; sleep 1305 & wait"],
        "1305",
    );
    let t = Instant::now();
    env.ok(&["stop", "y"]);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(child.wait().unwrap().code(), Some(143));
    // Stopping a stopped container is fine; killing one is not.
    env.ok(&["stop", "y"]);
    env.fails(&["kill", "y"], "not running");
    assert_eq!(mounts_under(&env), Vec::<String>::new());
}

#[test]
fn rootless_kill_sends_the_signal() {
    let Some(env) = busybox_env() else { return };
    let mut child = start_run(
        &env,
        "x",
        &["sh", "-c", "trap 'exit 3' HUP; sleep 1306 & wait"],
        "1306",
    );
    env.ok(&["kill", "-s", "SIGHUP", "x"]);
    assert_eq!(child.wait().unwrap().code(), Some(3));
    wait_gone("1306");
}

#[test]
fn fsck_reports_and_repairs_orphan_dirs_and_stale_mounts() {
    if !is_root() {
        return;
    }
    let Some(env) = busybox_env() else { return };
    // A stale mount: the owner of a running container killed.
    let mut child = start_run(&env, "x", &["sleep", "1307"], "1307");
    child.kill().unwrap();
    child.wait().unwrap();
    // An orphan directory.
    let orphan = env.root().join("containers").join("ab".repeat(32));
    std::fs::create_dir_all(orphan.join("upper/etc")).unwrap();
    let o = env.run(&["fsck"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("stale mount"), "{out}");
    assert!(out.contains("no container record"), "{out}");
    let out = env.ok(&["fsck", "--repair"]);
    assert!(out.contains("unmounted the stale mount"), "{out}");
    assert!(
        out.contains("removed the orphan container directory"),
        "{out}"
    );
    assert!(!orphan.exists());
    assert_eq!(mounts_under(&env), Vec::<String>::new());
    wait_gone("1307");
    env.fsck_clean();
    env.ok(&["rm", "x"]);
}

#[test]
fn rootless_fsck_repairs_an_orphan_dir() {
    let Some(env) = busybox_env() else { return };
    env.ok(&["run", "--network", "none", "--name", "x", "bb", "true"]);
    let orphan = env.root().join("containers").join("cd".repeat(32));
    std::fs::create_dir_all(orphan.join("upper")).unwrap();
    assert_eq!(env.run(&["fsck"]).status.code(), Some(1));
    env.ok(&["fsck", "--repair"]);
    assert!(!orphan.exists());
    env.fsck_clean();
    env.ok(&["rm", "x"]);
    env.fsck_clean();
}
