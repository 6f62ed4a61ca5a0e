//! `strata run`, `start`, `ps`, `rm` through a real OCI runtime (runc), as root and rootless.

use std::process::{Command, Stdio};
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
        "-c",
        "ENV GREETING=hello",
        f.to_str().unwrap(),
        "bb",
    ]);
    Some(env)
}

fn no_mounts_left(env: &TestEnv) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let root = env.root().canonicalize().unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(root.to_str().unwrap())),
        "a mount under the store is left: {mounts}"
    );
}

#[test]
fn rootless_run_output_exit_code_and_config_defaults() {
    let Some(env) = busybox_env() else { return };
    let o = env.run(&[
        "run",
        "--rm",
        "bb",
        "sh",
        "-c",
        "echo $GREETING from $(pwd) as $(id -u); exit 7",
    ]);
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello from / as 0\n");
    let o = env.run(&[
        "run",
        "--rm",
        "-e",
        "GREETING=bye",
        "-e",
        "X=1",
        "-w",
        "/tmp",
        "bb",
        "sh",
        "-c",
        "echo $GREETING $X $(pwd)",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "bye 1 /tmp\n",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The container's root is the union, of type fuse.strata.
    let o = env.ok(&["run", "--rm", "bb", "cat", "/proc/self/mountinfo"]);
    let root: Vec<_> = o
        .lines()
        .filter_map(|l| l.split_once(" - "))
        .filter(|(left, _)| left.split(' ').nth(4) == Some("/"))
        .map(|(_, right)| right.split(' ').take(2).collect::<Vec<_>>())
        .collect();
    assert_eq!(root.last(), Some(&vec!["fuse.strata", "strata"]), "{o}");
    assert_eq!(
        env.json(&["ps"]).as_array().unwrap().len(),
        0,
        "--rm removed the containers"
    );
    no_mounts_left(&env);
}

#[test]
fn rootless_run_keeps_changes_and_start_runs_again() {
    let Some(env) = busybox_env() else { return };
    let o = env.run(&[
        "run",
        "--name",
        "keeper",
        "bb",
        "sh",
        "-c",
        "echo data >> /root/log; cat /root/log | wc -l; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "1");
    let ps = env.json(&["ps", "-a"]);
    assert_eq!(ps[0]["name"], "keeper");
    assert_eq!(ps[0]["status"], "Exited (3)");
    let o = env.run(&["start", "-a", "keeper"]);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "2",
        "the writable layer persists"
    );
    env.ok(&["rm", "keeper"]);
    assert_eq!(env.json(&["ps", "-a"]).as_array().unwrap().len(), 0);
    no_mounts_left(&env);
}

#[test]
fn rootless_run_passes_stdin_through() {
    let Some(env) = busybox_env() else { return };
    let mut child = env
        .cmd()
        .args(["run", "-i", "--rm", "bb", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"piped through\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped through\n");
}

#[test]
fn rootless_run_without_i_does_not_take_stdin() {
    let Some(env) = busybox_env() else { return };
    // Without -i the process reads /dev/null, as docker's: `cat` ends at once and prints
    // nothing, and the caller's input stays for the caller.
    let script = format!(
        "printf 'a\\nb\\n' | while read x; do {} --root {} run --rm bb cat; echo \"got $x\"; done",
        strata_bin().display(),
        env.root().display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got a\ngot b\n");
}

#[test]
fn rootless_run_sigterm_reaches_the_process_and_the_mount_goes() {
    let Some(env) = busybox_env() else { return };
    let child = env
        .cmd()
        .args([
            "run",
            "--rm",
            "bb",
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut child = child;
    let mut stdout = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    use std::io::Read;
    stdout.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "strata run did not end after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(42));
    no_mounts_left(&env);
}

#[test]
fn rootless_run_with_a_tty() {
    let Some(env) = busybox_env() else { return };
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: needs script (util-linux)");
        return;
    }
    let cmd = format!(
        "{} --root {} run -it --rm bb sh -c 'tty; echo $TERM'",
        strata_bin().display(),
        env.root().display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert!(text.contains("xterm"), "{text}");
}

#[test]
fn run_bad_input() {
    let Some(env) = busybox_env() else { return };
    env.fails(&["run", "--rm", "nope"], "not found");
    env.fails(
        &["run", "--rm", "-v", "/does/not/exist:/x", "bb", "true"],
        "does not exist",
    );
    env.fails(
        &["run", "--rm", "-u", "ghost", "bb", "true"],
        "not in the image's /etc/passwd",
    );
    env.fails(
        &["run", "--rm", "--runtime", "/no/such/runtime", "bb", "true"],
        "no OCI runtime found",
    );
    let f = env.write("r.tar", &rootfs_tar(""));
    env.ok(&["import", f.to_str().unwrap(), "nocmd"]);
    env.fails(&["run", "--rm", "nocmd"], "no command given");
    no_mounts_left(&env);
}

/// True when this user has subordinate ids (as root, always true: no mapping needed).
fn full_id_mapping() -> bool {
    if strata::is_root() {
        return true;
    }
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").unwrap().uid().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd
        .lines()
        .find(|l| l.split(':').nth(2) == Some(uid.as_str()))
        .and_then(|l| l.split(':').next())
        .unwrap_or_default()
        .to_owned();
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    subuid.lines().any(|l| {
        let o = l.split(':').next().unwrap_or_default();
        o == uid || o == name
    })
}

#[test]
fn rootless_run_as_another_user_and_with_a_volume() {
    if !full_id_mapping() {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "the test user needs /etc/subuid entries (scripts/test.sh gives them)"
        );
        eprintln!("skipped: other users need subordinate ids in /etc/subuid");
        return;
    }
    let Some(env) = busybox_env() else { return };
    let vol = env.path("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("in"), b"from host").unwrap();
    let spec = format!("{}:/data", vol.display());
    let o = env.run(&[
        "run",
        "--rm",
        "-u",
        "nobody",
        "-v",
        &spec,
        "bb",
        "sh",
        "-c",
        "id -u; cat /data/in",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "65534\nfrom host",
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
