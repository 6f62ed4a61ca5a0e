//! Container isolation, root and rootless: the private network (slirp4netns), published ports,
//! Docker's seccomp profile and capabilities, no_new_privs, supplementary groups, and runs
//! that leave no trace in the writable layer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The diff_id of an empty layer (a tar of two zero blocks), what a commit of an unchanged
/// container holds, as with Docker.
const EMPTY_LAYER: &str = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

/// A static test program: what the seccomp filter and the capabilities let through.
const PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>
static void report(const char *what, long r) {
    printf("%s: %s\n", what, r < 0 ? strerror(errno) : "ok");
}
int main(void) {
    report("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
    report("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 0));
    report("add_key", syscall(SYS_add_key, "user", "strata-probe", "v", 1, -3));
    report("raw_socket", socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
    report("ping_socket", socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP));
    report("unshare_user", unshare(CLONE_NEWUSER)); /* last: it changes the namespace */
    return 0;
}
"#;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// A busybox rootfs with the network applets, a user `app` in two supplementary groups and,
/// when given, the probe at /bin/probe. `with_etc: false` leaves out /etc, /proc, /sys and
/// /dev altogether (a scratch-like image).
fn image_tar(probe: Option<&Path>, with_etc: bool) -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox").unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let dirs: &[&str] = if with_etc {
        &[
            "./", "bin/", "etc/", "tmp/", "root/", "proc/", "sys/", "dev/", "www/",
        ]
    } else {
        &["./", "bin/", "tmp/"]
    };
    for d in dirs {
        let mode = if *d == "tmp/" { 0o1777 } else { 0o755 };
        b.append_data(&mut header(tar::EntryType::Directory, mode, 0), d, &[][..])
            .unwrap();
    }
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    };
    add("bin/busybox", &bb, 0o755);
    if let Some(p) = probe {
        add("bin/probe", &std::fs::read(p).unwrap(), 0o755);
    }
    if with_etc {
        add(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n\
              nobody:x:65534:65534:nobody:/:/bin/false\n",
            0o644,
        );
        add(
            "etc/group",
            b"root:x:0:\nwheel:x:10:other,app\naudio:x:29:app\napp:x:1000:\nnogroup:x:65534:\n",
            0o644,
        );
        add("www/index.html", b"served from the container\n", 0o644);
    }
    for applet in [
        "sh",
        "cat",
        "echo",
        "id",
        "sleep",
        "ls",
        "grep",
        "nc",
        "httpd",
        "ip",
        "nslookup",
        "mkdir",
        "printf",
        "true",
        "cut",
        "tail",
        "sha256sum",
    ] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// True when runc, busybox-static and slirp4netns are installed and, rootless, /dev/net/tun is
/// usable; prints why a test is skipped otherwise (fails under STRATA_REQUIRE_TOOLS).
fn have_tools() -> bool {
    if !have_runtime_and_busybox() {
        return false;
    }
    let why = if !Path::new("/usr/bin/slirp4netns").exists() {
        Some("slirp4netns is required: scripts/test.sh installs it")
    } else if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .is_err()
    {
        Some("/dev/net/tun must be usable by this user (0666, as udev makes it)")
    } else {
        None
    };
    match why {
        None => true,
        Some(why) => {
            assert!(std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(), "{why}");
            eprintln!("skipped: {why}");
            false
        }
    }
}

/// A store with the test image `iso` (with the probe when `probe`).
fn iso_env(probe: bool) -> Option<TestEnv> {
    if !have_tools() {
        return None;
    }
    let env = TestEnv::new();
    let probe = if probe {
        let src = env.write("probe.c", PROBE_C.as_bytes());
        let bin = env.path("probe");
        let out = Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(bin),
            other => {
                assert!(
                    std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
                    "gcc -static failed (gcc and libc6-dev are required): {other:?}"
                );
                eprintln!("skipped: gcc -static cannot build the probe");
                return None;
            }
        }
    } else {
        None
    };
    let f = env.write("iso.tar", &image_tar(probe.as_deref(), true));
    env.ok(&["import", f.to_str().unwrap(), "iso"]);
    Some(env)
}

/// `strata run --rm [flags] iso sh -c SCRIPT`, asserting success; stdout.
fn run_sh(env: &TestEnv, flags: &[&str], script: &str) -> String {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(flags);
    args.extend(["iso", "sh", "-c", script]);
    env.ok(&args)
}

/// The value of a `Name:\tvalue` line of /proc/self/status as the container prints it.
fn status_field(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .to_owned()
}

const CAP_NET_RAW: u32 = 13;

fn cap_eff(text: &str) -> u64 {
    u64::from_str_radix(&status_field(text, "CapEff"), 16).unwrap()
}

/// Interface names in the container's /proc/net/dev output.
fn interfaces(proc_net_dev: &str) -> Vec<String> {
    let mut v: Vec<String> = proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_owned())
        .collect();
    v.sort();
    v
}

/// Processes whose command line mentions `needle` (zombies have none).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                found.push(c);
            }
        }
    }
    found
}

/// No slirp4netns (nor anything else) of this store runs, and nothing of it is mounted.
fn nothing_left(env: &TestEnv) {
    let root = env.root().canonicalize().unwrap();
    let root = root.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = processes_mentioning(root);
        if procs.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left: {procs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.lines().any(|l| l.contains(root)),
        "a mount under the store is left: {mounts}"
    );
}

/// A TCP server on the host's loopback that answers every connection with `reply`, for a
/// bounded time; `port` is where it listens.
struct LoopbackServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoopbackServer {
    fn start(reply: &'static str) -> LoopbackServer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(120);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        LoopbackServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A free TCP port on the host's loopback (free when asked).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `child` to exit, at most `secs`; kills it after that and fails.
fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not end in {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `curl -s URL` until it answers, at most `secs`.
fn curl_until(url: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let o = Command::new("curl")
            .args(["-s", "--max-time", "3", url])
            .output()
            .expect("curl (scripts/test.sh installs it)");
        if o.status.success() && !o.stdout.is_empty() {
            return String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "{url} did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rootless_isolation_defaults_and_flags() {
    let Some(env) = iso_env(false) else { return };
    let status = "grep -E '^(Seccomp|CapEff|NoNewPrivs):' /proc/self/status";
    let o = run_sh(&env, &[], &format!("{status}; echo ==; cat /proc/net/dev"));
    let (st, dev) = o.split_once("==\n").unwrap();
    assert_eq!(status_field(st, "Seccomp"), "2", "{st}");
    assert_eq!(status_field(st, "NoNewPrivs"), "0", "{st}");
    assert_eq!(cap_eff(st) & (1 << CAP_NET_RAW), 0, "no CAP_NET_RAW: {st}");
    assert_ne!(cap_eff(st), 0, "{st}");
    // Loopback and slirp4netns's tap.
    assert_eq!(
        interfaces(dev),
        vec!["lo".to_owned(), "tap0".to_owned()],
        "{dev}"
    );

    let none = interfaces(&run_sh(&env, &["--network", "none"], "cat /proc/net/dev"));
    assert_eq!(none, vec!["lo".to_owned()]);
    let host = interfaces(&run_sh(&env, &["--network", "host"], "cat /proc/net/dev"));
    let here = interfaces(&std::fs::read_to_string("/proc/self/net/dev").unwrap());
    assert_eq!(host, here, "--network host shows the host's interfaces");

    let o = run_sh(
        &env,
        &[
            "--security-opt",
            "no-new-privileges",
            "--security-opt",
            "seccomp=unconfined",
            "--cap-add",
            "net_raw",
        ],
        status,
    );
    assert_eq!(status_field(&o, "NoNewPrivs"), "1", "{o}");
    assert_eq!(status_field(&o, "Seccomp"), "0", "{o}");
    assert_ne!(cap_eff(&o) & (1 << CAP_NET_RAW), 0, "{o}");
    let o = run_sh(&env, &["--cap-drop", "ALL"], status);
    assert_eq!(cap_eff(&o), 0, "{o}");
    let o = run_sh(
        &env,
        &["--cap-drop", "ALL", "--cap-add", "CAP_KILL"],
        status,
    );
    assert_eq!(cap_eff(&o), 1 << 5, "{o}");

    // The name files are the container's own.
    let o = run_sh(
        &env,
        &[],
        "cat /etc/resolv.conf; hostname; grep -c localhost /etc/hosts",
    );
    assert!(o.starts_with("nameserver 10.0.2.3\n"), "{o}");
    nothing_left(&env);
}

#[test]
fn rootless_host_loopback_is_out_of_reach() {
    let Some(env) = iso_env(false) else { return };
    let server = LoopbackServer::start("host-only service\n");
    // Neither as 127.0.0.1 nor through slirp's gateway address.
    for addr in ["127.0.0.1", "10.0.2.2"] {
        let script = format!("nc -w 3 {addr} {} </dev/null; echo rc=$?", server.port);
        let o = run_sh(&env, &[], &script);
        assert!(!o.contains("host-only service"), "{addr}: {o}");
        assert!(o.ends_with("rc=1\n"), "{addr}: {o}");
    }
    let script = format!("nc -w 3 127.0.0.1 {} </dev/null; echo rc=$?", server.port);
    // The host network reaches it: the server and the probe work.
    let o = run_sh(&env, &["--network", "host"], &script);
    assert!(o.contains("host-only service"), "{o}");
    drop(server);
    nothing_left(&env);
}

#[test]
fn rootless_published_port_answers_curl() {
    let Some(env) = iso_env(false) else { return };
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:80");
    // httpd forks into the background; the shell is the container's init and ends on TERM.
    let mut child = env
        .cmd()
        .args([
            "run",
            "--rm",
            "-p",
            &publish,
            "iso",
            "sh",
            "-c",
            "trap 'exit 0' TERM; httpd -p 80 -h /www; echo up; while true; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let body = if line == "up\n" {
        Some(curl_until(&format!("http://127.0.0.1:{port}/"), 30))
    } else {
        None
    };
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let st = wait_exit(&mut child, 30);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(
        body.as_deref(),
        Some("served from the container\n"),
        "{err}"
    );
    assert!(st.success(), "{st}: {err}");
    // The port is free again: slirp4netns is gone.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    nothing_left(&env);
}

#[test]
fn rootless_seccomp_denies_keys_mounts_and_user_namespaces() {
    let Some(env) = iso_env(true) else { return };
    let probe = |flags: &[&str]| -> String {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend(["iso", "probe"]);
        env.ok(&args)
    };
    let eperm = "Operation not permitted";
    let o = probe(&[]);
    for denied in ["mount", "keyctl", "add_key", "raw_socket", "unshare_user"] {
        assert!(
            o.contains(&format!("{denied}: {eperm}\n")),
            "{denied} must fail with EPERM: {o}"
        );
    }
    assert!(
        o.contains("ping_socket: ok\n"),
        "ping without CAP_NET_RAW: {o}"
    );
    let o = probe(&["--security-opt", "seccomp=unconfined"]);
    assert!(
        o.contains("keyctl: ok\n") && o.contains("add_key: ok\n"),
        "{o}"
    );
    let o = probe(&["--cap-add", "SYS_ADMIN", "--cap-add", "NET_RAW"]);
    assert!(o.contains("mount: ok\n"), "CAP_SYS_ADMIN opens mount: {o}");
    assert!(o.contains("raw_socket: ok\n"), "{o}");
    assert!(o.contains(&format!("keyctl: {eperm}\n")), "{o}");
    // A profile file: Docker's format, evaluated the same way.
    let profile = env.write(
        "profile.json",
        br#"{"defaultAction": "SCMP_ACT_ALLOW",
             "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    );
    let opt = format!("seccomp={}", profile.display());
    let o = run_sh(
        &env,
        &["--security-opt", &opt],
        "mkdir /tmp/x 2>&1; grep Seccomp: /proc/self/status",
    );
    assert!(o.contains("Permission denied"), "{o}");
    nothing_left(&env);
}

/// True when this user has subordinate ids (as root, always true: no mapping needed).
fn full_id_mapping() -> bool {
    if strata::is_root() {
        return true;
    }
    let (uid, _) = caller_ids();
    let uid = uid.to_string();
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
fn rootless_user_gets_supplementary_groups() {
    if !full_id_mapping() {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "the test user needs /etc/subuid entries (scripts/test.sh gives them)"
        );
        eprintln!("skipped: other users need subordinate ids in /etc/subuid");
        return;
    }
    let Some(env) = iso_env(false) else { return };
    let o = env.ok(&["run", "--rm", "-u", "app", "iso", "id"]);
    assert_eq!(
        o, "uid=1000(app) gid=1000(app) groups=10(wheel),29(audio)\n",
        "Docker: the groups that list the user"
    );
    let o = env.ok(&["run", "--rm", "-u", "app:audio", "iso", "id"]);
    assert_eq!(
        o, "uid=1000(app) gid=29(audio)\n",
        "an explicit group: no others"
    );
    let o = env.ok(&["run", "--rm", "iso", "id"]);
    assert_eq!(o, "uid=0(root) gid=0(root)\n");
}

/// The upper directory of the only container of `env`.
fn upper_of_only_container(env: &TestEnv) -> PathBuf {
    let ps = env.json(&["ps", "-a"]);
    let id = ps[0]["id"].as_str().unwrap();
    env.root().join("containers").join(id).join("upper")
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p).unwrap().next().is_none()
}

#[test]
fn rootless_a_run_that_changes_nothing_leaves_no_change() {
    let Some(env) = iso_env(false) else { return };
    env.ok(&["run", "--name", "idle", "iso", "true"]);
    assert_eq!(env.ok(&["diff", "idle"]), "", "no C /etc, no A /etc/hosts");
    assert!(dir_is_empty(&upper_of_only_container(&env)));
    env.ok(&["commit", "idle", "idle-img"]);
    let img = env.json(&["inspect", "idle-img"]);
    let text = img.to_string();
    assert!(
        text.contains(EMPTY_LAYER),
        "the committed layer is the empty one: {text}"
    );
    env.ok(&["rm", "idle"]);
    env.ok(&["rmi", "idle-img"]);

    // While it runs, nothing is in the upper either: a kill -9 now leaves no placeholder.
    let mut child = env
        .cmd()
        .args([
            "run",
            "--name",
            "busy",
            "iso",
            "sh",
            "-c",
            "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let empty_while_running = dir_is_empty(&upper_of_only_container(&env));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    wait_exit(&mut child, 30);
    assert_eq!(line, "ready\n");
    assert!(
        empty_while_running,
        "the runtime's mount points are not in the upper"
    );
    assert_eq!(env.ok(&["diff", "busy"]), "");
    env.ok(&["rm", "busy"]);

    // An image without /etc, /proc, /sys or /dev: the run still sees them, and they stay out
    // of the container's changes.
    let f = env.write("bare.tar", &image_tar(None, false));
    env.ok(&["import", f.to_str().unwrap(), "bare"]);
    let o = env.ok(&[
        "run",
        "--name",
        "bare",
        "bare",
        "sh",
        "-c",
        "ls /; cat /etc/hostname",
    ]);
    for d in ["dev\n", "etc\n", "proc\n", "sys\n"] {
        assert!(o.contains(d), "{o}");
    }
    assert_eq!(env.ok(&["diff", "bare"]), "");
    env.ok(&["rm", "bare"]);
    nothing_left(&env);
}

#[test]
fn run_isolation_flags_are_checked_before_anything_is_created() {
    if !have_runtime_and_busybox() {
        return;
    }
    let env = TestEnv::new();
    let f = env.write("bb.tar", &image_tar(None, true));
    env.ok(&["import", f.to_str().unwrap(), "iso"]);
    for (flags, needle) in [
        (&["--network", "bogus"][..], "expected private"),
        (&["-p", "80"][..], "give the host port too"),
        (&["-p", "8080:80/sctp"][..], "unknown protocol"),
        (
            &["--network", "host", "-p", "8080:80"][..],
            "not with --network host",
        ),
        (
            &["--security-opt", "apparmor=x"][..],
            "strata knows seccomp",
        ),
        (
            &["--security-opt", "seccomp=/does/not/exist"][..],
            "reading the file",
        ),
        (&["--cap-add", "NOPE"][..], "unknown capability"),
    ] {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(flags);
        args.extend(["iso", "true"]);
        env.fails(&args, needle);
    }
    let bad = env.write("bad.json", b"{\"syscalls\": 3}");
    let opt = format!("seccomp={}", bad.display());
    env.fails(
        &["run", "--rm", "--security-opt", &opt, "iso", "true"],
        "not a seccomp profile",
    );
    assert_eq!(env.json(&["ps", "-a"]).as_array().unwrap().len(), 0);
}

/// Two network namespaces made by the test (root only): `in`, where strata runs, whose
/// default route leads over a veth pair to `out`, which holds a test host at 203.0.113.1
/// (an HTTP server and a DNS server). No traffic leaves the machine.
struct TestNet {
    inner: String,
    outer: String,
    servers: Vec<Child>,
}

impl TestNet {
    fn new(tag: &str) -> TestNet {
        let id = format!("{}{tag}", std::process::id());
        let net = TestNet {
            inner: format!("strata-in-{id}"),
            outer: format!("strata-out-{id}"),
            servers: Vec::new(),
        };
        let (i, o) = (net.inner.as_str(), net.outer.as_str());
        let (vi, vo) = (format!("si{id}"), format!("so{id}"));
        let script = format!(
            "set -e
             ip netns add {i}; ip netns add {o}
             ip link add {vi} netns {i} type veth peer name {vo} netns {o}
             ip -n {i} addr add 198.51.100.2/24 dev {vi}; ip -n {i} link set {vi} up
             ip -n {i} link set lo up; ip -n {i} route add default via 198.51.100.1
             ip -n {o} addr add 198.51.100.1/24 dev {vo}; ip -n {o} addr add 203.0.113.1/32 dev {vo}
             ip -n {o} link set {vo} up; ip -n {o} link set lo up
             mkdir -p /etc/netns/{i}; echo 'nameserver 203.0.113.1' > /etc/netns/{i}/resolv.conf"
        );
        let st = Command::new("sh").args(["-c", &script]).status().unwrap();
        assert!(st.success(), "setting up the test network");
        net
    }

    /// Starts `cmd` in the outer namespace; waits for its first line on stdout.
    fn serve(&mut self, cmd: &[&str]) {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.outer])
            .args(cmd)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        self.servers.push(c);
        assert_eq!(line, "ready\n", "{cmd:?}");
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for n in [&self.inner, &self.outer] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.inner));
    }
}

/// Answers A queries for any name with 203.0.113.1 (and others with no answer), on the
/// outer test host, for at most a minute.
const DNS_SERVER: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("203.0.113.1", 53))
s.settimeout(1)
print("ready", flush=True)
end = time.time() + 60
while time.time() < end:
    try:
        q, peer = s.recvfrom(512)
    except socket.timeout:
        continue
    i = 12
    while q[i] != 0:
        i += q[i] + 1
    question = q[12:i + 5]
    a = q[i + 1:i + 3] == b"\x00\x01"
    answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([203, 0, 113, 1]) if a else b""
    head = q[:2] + b"\x81\x80\x00\x01" + (b"\x00\x01" if a else b"\x00\x00") + b"\x00\x00\x00\x00"
    s.sendto(head + question + answer, peer)
"#;

#[test]
fn run_outbound_connections_and_dns_through_slirp4netns() {
    if !strata::is_root() {
        eprintln!("skipped: needs root to make the test network namespaces");
        return;
    }
    let Some(env) = iso_env(false) else { return };
    if Command::new("python3").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("STRATA_REQUIRE_TOOLS").is_none(),
            "python3 is required"
        );
        return;
    }
    let mut net = TestNet::new("o");
    let www = env.path("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "from the outer test host\n").unwrap();
    // 2 MB that must arrive intact.
    let big: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(www.join("big"), &big).unwrap();
    let big_sum = sha256_hex(&big);
    let www = www.to_str().unwrap().to_owned();
    net.serve(&[
        "sh",
        "-c",
        &format!("echo ready; exec busybox httpd -f -p 203.0.113.1:8000 -h {www}"),
    ]);
    net.serve(&["python3", "-c", DNS_SERVER]);
    // Not `ip netns exec`: it remounts /sys, hiding the cgroup mounts runc needs as root. The
    // test network's resolv.conf is bound over the host's in a mount namespace of its own.
    let inner = format!("--net=/run/netns/{}", net.inner);
    let resolv = format!("/etc/netns/{}/resolv.conf", net.inner);
    let out = Command::new("nsenter")
        .arg(&inner)
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/resolv.conf && shift && exec "$@""#)
        .arg("sh")
        .arg(&resolv)
        .arg(strata_bin())
        .arg("--root")
        .arg(env.root())
        .args([
            "run",
            "--rm",
            "iso",
            "sh",
            "-c",
            // nc half-closes after the request (what bookworm's pasta mishandled).
            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 203.0.113.1 8000 | tail -n 1; \
             printf 'GET /big HTTP/1.0\\r\\n\\r\\n' | nc -w 5 203.0.113.1 8000 \
               | tail -c 2000000 | sha256sum; \
             nslookup web.test",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("from the outer test host\n"), "{text}");
    assert!(text.contains(&big_sum), "2 MB intact: {text}");
    assert!(
        text.contains("Address: 203.0.113.1"),
        "DNS through slirp4netns: {text}"
    );
    drop(net);
    nothing_left(&env);
}
