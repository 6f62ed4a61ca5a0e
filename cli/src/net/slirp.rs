//! The adapter to slirp4netns (Debian's `slirp4netns` package, 1.2.0 in bookworm): its command
//! line and port requests (pure functions), its start on a namespace, its readiness, its API
//! socket and its stop.
//!
//! slirp4netns joins the namespace through `/proc/self/fd/N`, a descriptor it inherits (a
//! path into strata's own /proc entry would need ptrace rights over strata). It gets two more
//! inherited descriptors: the write end of a pipe it signals readiness on once the tap
//! interface is configured, and the read end of a pipe whose write end only strata holds, so
//! it exits as soon as strata is gone, however strata ends (`--exit-fd`). It runs in its own
//! process group (a terminal's Ctrl-C is for the container), sandboxed (`--enable-sandbox
//! --enable-seccomp`), and cannot reach the host's loopback (`--disable-host-loopback`).
//!
//! Why not pasta: bookworm's pasta (0.0~git20230309) stalls or repeats data on TCP
//! connections the container half-closes (`shutdown(SHUT_WR)` then read, as `nc` does),
//! measured here against a server in a test namespace; slirp4netns passes the same check.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{PortSpec, Proto};

/// The container's address on slirp's network (10.0.2.0/24).
pub(super) const GUEST_ADDR: &str = "10.0.2.100";
/// Where the container finds its DNS server: slirp forwards it to the host's resolver.
pub(super) const DNS_ADDR: &str = "10.0.2.3";
/// The Debian package that ships slirp4netns.
const PACKAGE: &str = "slirp4netns";
/// Where slirp4netns is looked for after PATH.
const BIN_DIRS: &[&str] = &["/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin"];
/// How long slirp4netns may take to configure the namespace.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The tap device slirp4netns opens inside the namespace.
const TUN: &str = "/dev/net/tun";
/// The name of the container's interface.
const TAP: &str = "tap0";
/// The API socket, relative to slirp4netns's working directory (the bundle: a full path could
/// exceed the 108 bytes of a socket address).
const API_SOCKET: &str = "slirp4netns.sock";
/// Large frames: fewer copies through the tap (podman's choice).
const MTU: &str = "65520";

/// A running slirp4netns.
#[derive(Debug)]
pub(super) struct Slirp {
    child: Child,
    /// Closing it tells slirp4netns to exit.
    exit_w: Option<std::io::PipeWriter>,
}

/// Finds `name` in PATH, then in [`BIN_DIRS`].
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(BIN_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// slirp4netns's arguments: the namespace at `/proc/self/fd/<netns>`, readiness on `ready`,
/// exit on `exit`, the API socket when ports are published.
fn args(netns: i32, ready: i32, exit: i32, api: bool) -> Vec<OsString> {
    let mut a: Vec<String> = vec![
        "--configure".into(),
        format!("--mtu={MTU}"),
        "--disable-host-loopback".into(),
        "--enable-sandbox".into(),
        "--enable-seccomp".into(),
        "--netns-type=path".into(),
        format!("--ready-fd={ready}"),
        format!("--exit-fd={exit}"),
    ];
    if api {
        a.push(format!("--api-socket={API_SOCKET}"));
    }
    a.push(format!("/proc/self/fd/{netns}"));
    a.push(TAP.into());
    a.into_iter().map(OsString::from).collect()
}

/// The API requests that publish `ports` (one per port of a range).
fn hostfwd_requests(ports: &[PortSpec]) -> Vec<Value> {
    let mut out = Vec::new();
    for p in ports {
        let host_addr = p
            .host_ip
            .map_or_else(|| "0.0.0.0".to_owned(), |ip| ip.to_string());
        for i in 0..=(p.host.1 - p.host.0) {
            out.push(json!({
                "execute": "add_hostfwd",
                "arguments": {
                    "proto": match p.proto { Proto::Tcp => "tcp", Proto::Udp => "udp" },
                    "host_addr": host_addr,
                    "host_port": p.host.0 + i,
                    "guest_addr": GUEST_ADDR,
                    "guest_port": p.container.0 + i,
                }
            }));
        }
    }
    out
}

/// slirp4netns's `--version` line, for error messages.
fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "version unknown".into())
}

/// A copy of `fd` without close-on-exec: one a child inherits.
fn inheritable(fd: &impl std::os::fd::AsFd) -> Result<OwnedFd> {
    rustix::io::dup(fd).context("duplicating a descriptor for slirp4netns")
}

impl Slirp {
    /// Starts slirp4netns on namespace `ns` and publishes `ports`; its API socket and log go
    /// to `dir`.
    ///
    /// # Errors
    /// slirp4netns is not installed, `/dev/net/tun` is not usable, slirp4netns fails or times
    /// out (its output is quoted), a port cannot be published.
    pub(super) fn start(ns: &OwnedFd, ports: &[PortSpec], dir: &Path) -> Result<Slirp> {
        let Some(bin) = find("slirp4netns") else {
            bail!(
                "slirp4netns is not installed: the private network of a container needs it \
                 (apt-get install {PACKAGE}), or run with --network host or --network none"
            );
        };
        if rustix::fs::access(
            TUN,
            rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
        )
        .is_err()
        {
            bail!(
                "{TUN} is not readable and writable here, and slirp4netns needs it for the \
                 container's private network (udev makes it 0666; as root: chmod 0666 {TUN}), \
                 or run with --network host or --network none"
            );
        }
        let log_file = dir.join("slirp4netns.log");
        let log = std::fs::File::create(&log_file)
            .with_context(|| format!("creating {}", log_file.display()))?;
        let socket = dir.join(API_SOCKET);
        if !ports.is_empty() {
            match std::fs::remove_file(&socket) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", socket.display()));
                }
                _ => {}
            }
        }
        let (exit_r, exit_w) = std::io::pipe().context("creating a pipe")?;
        let (mut ready_r, ready_w) = std::io::pipe().context("creating a pipe")?;
        // The child's ends, inheritable; strata keeps none of them open after the spawn.
        let child_ns = inheritable(ns)?;
        let child_exit = inheritable(&exit_r)?;
        let child_ready = inheritable(&ready_w)?;
        drop((exit_r, ready_w));
        let a = args(
            child_ns.as_raw_fd(),
            child_ready.as_raw_fd(),
            child_exit.as_raw_fd(),
            !ports.is_empty(),
        );
        let spawned = Command::new(&bin)
            .args(&a)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log file")?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()));
        drop((child_ns, child_exit, child_ready));
        let mut slirp = Slirp {
            child: spawned?,
            exit_w: Some(exit_w),
        };
        let fail = |slirp: &mut Slirp, why: String| -> anyhow::Error {
            slirp.stop();
            let said = std::fs::read_to_string(&log_file).unwrap_or_default();
            let said = said.trim();
            anyhow::anyhow!(
                "slirp4netns ({}, from the {PACKAGE} package) {why} setting up the container's \
                 network{}",
                version(&bin),
                if said.is_empty() {
                    String::new()
                } else {
                    format!(":\n{said}")
                }
            )
        };
        // Ready: it writes one byte. EOF first: it died.
        let mut byte = [0u8; 1];
        let deadline = Instant::now() + READY_TIMEOUT;
        rustix::fs::fcntl_setfl(&ready_r, rustix::fs::OFlags::NONBLOCK)
            .context("making the readiness pipe non-blocking")?;
        loop {
            match ready_r.read(&mut byte) {
                Ok(1) => break,
                Ok(_) => return Err(fail(&mut slirp, "exited".into())),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(fail(&mut slirp, format!("failed ({e})"))),
            }
            if Instant::now() > deadline {
                let why = format!("did not get ready in {}s", READY_TIMEOUT.as_secs());
                return Err(fail(&mut slirp, why));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for req in hostfwd_requests(ports) {
            if let Err(e) = api_call(dir, &req) {
                let port = &req["arguments"]["host_port"];
                return Err(fail(
                    &mut slirp,
                    format!("could not publish port {port}: {e:#}"),
                ));
            }
        }
        Ok(slirp)
    }

    /// Stops slirp4netns. It keeps no state worth a graceful exit, and it notices a closed
    /// exit pipe only at its next poll timeout (20-30 ms measured): so it is killed, and the
    /// exit pipe is for when strata dies.
    pub(super) fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.exit_w.take());
    }
}

/// One request on the API socket in `dir`; an `error` answer is an error.
fn api_call(dir: &Path, req: &Value) -> Result<Value> {
    // The directory through a descriptor keeps the socket address short.
    let d = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let path = format!("/proc/self/fd/{}/{API_SOCKET}", d.as_raw_fd());
    let mut s = UnixStream::connect(&path).context("connecting to the slirp4netns API")?;
    s.write_all(req.to_string().as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let v: Value = serde_json::from_str(&answer)
        .with_context(|| format!("the slirp4netns API answered {answer:?}"))?;
    if let Some(e) = v.get("error") {
        bail!(
            "{}",
            e.get("desc").and_then(Value::as_str).unwrap_or("error")
        );
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_isolates() {
        let a: Vec<String> = args(7, 8, 9, true)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(a.contains(&"--disable-host-loopback".to_owned()), "{a:?}");
        assert!(a.contains(&"--ready-fd=8".to_owned()) && a.contains(&"--exit-fd=9".to_owned()));
        assert!(a.contains(&format!("--api-socket={API_SOCKET}")), "{a:?}");
        assert_eq!(
            a[a.len() - 2..],
            ["/proc/self/fd/7".to_owned(), TAP.to_owned()]
        );
        assert!(
            !args(7, 8, 9, false)
                .iter()
                .any(|a| a.to_string_lossy().starts_with("--api"))
        );
    }

    #[test]
    fn ports_become_one_request_each() {
        let ports = [
            PortSpec::parse("8080:80").unwrap(),
            PortSpec::parse("127.0.0.1:9000-9001:90-91/udp").unwrap(),
        ];
        let r = hostfwd_requests(&ports);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0]["arguments"]["host_addr"], "0.0.0.0");
        assert_eq!(r[0]["arguments"]["guest_port"], 80);
        assert_eq!(r[2]["arguments"]["proto"], "udp");
        assert_eq!(r[2]["arguments"]["host_addr"], "127.0.0.1");
        assert_eq!(
            (
                &r[2]["arguments"]["host_port"],
                &r[2]["arguments"]["guest_port"]
            ),
            (&json!(9001), &json!(91))
        );
    }
}
