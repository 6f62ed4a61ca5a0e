//! Running a container's process through an OCI runtime (runc or crun from Debian).
//!
//! `strata run` mounts the container's union in process, writes an OCI runtime bundle whose root
//! is that mount, and runs `RUNTIME run` in the foreground: the runtime owns the TTY (when `-t`)
//! and forwards signals to the container's process; strata forwards the signals it gets to the
//! runtime and unmounts when the process ends, however it ends.
//!
//! Rootless: strata re-executes itself in a new user namespace where the caller is root
//! (`unshare --user --map-root-user --mount`), so the union is mounted inside that namespace
//! (files the image gives to uid 0 belong to the caller) and the runtime needs no privilege.
//! No cgroup is used (resources are left out of the spec), so hybrid cgroup layouts do not matter.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Environment variable set in the re-executed process inside the user namespace.
pub const IN_USERNS_ENV: &str = "STRATA_IN_USERNS";
/// Runtimes tried in order when `--runtime` is not given.
const DEFAULT_RUNTIMES: &[&str] = &["runc", "crun"];
/// Searched after PATH for the runtime.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];
/// Docker's default capability set.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
/// PATH when the image sets none (Docker's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A host path bind-mounted into the container (`-v HOST:CTR[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// Host path (absolute).
    pub host: PathBuf,
    /// Path in the container (absolute).
    pub container: String,
    /// Read-only.
    pub readonly: bool,
}

impl Bind {
    /// Parses `HOST:CTR[:ro|rw]`.
    ///
    /// # Errors
    /// Not that shape, a relative container path, a missing host path.
    pub fn parse(s: &str) -> Result<Bind> {
        let parts: Vec<&str> = s.split(':').collect();
        let (host, ctr, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, "rw"),
            [h, c, m] => (*h, *c, *m),
            _ => bail!("-v {s:?}: expected HOST:CONTAINER[:ro]"),
        };
        if !ctr.starts_with('/') {
            bail!("-v {s:?}: the container path must be absolute");
        }
        let readonly = match mode {
            "ro" => true,
            "rw" => false,
            m => bail!("-v {s:?}: unknown mode {m:?} (ro or rw)"),
        };
        let host = std::fs::canonicalize(host)
            .with_context(|| format!("-v {s:?}: the host path {host} does not exist"))?;
        Ok(Bind {
            host,
            container: ctr.to_owned(),
            readonly,
        })
    }
}

/// What a container runs; stored with the container so `strata start` can run it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSettings {
    /// argv.
    pub args: Vec<String>,
    /// `K=V`.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// `user[:group]` as given (resolved at each start against the container's /etc/passwd).
    pub user: Option<String>,
    /// Allocate a TTY.
    pub tty: bool,
    /// Bind mounts.
    pub binds: Vec<Bind>,
    /// Hostname.
    pub hostname: String,
    /// Runtime binary, when chosen explicitly.
    pub runtime: Option<String>,
    /// Exit code of the last run.
    #[serde(default)]
    pub last_exit: Option<i32>,
}

/// Picks the runtime: the one asked for, else the first of runc, crun found in PATH.
///
/// # Errors
/// None found.
pub fn find_runtime(wanted: Option<&str>) -> Result<PathBuf> {
    let candidates: Vec<&str> = match wanted {
        Some(w) => vec![w],
        None => DEFAULT_RUNTIMES.to_vec(),
    };
    for c in &candidates {
        if c.contains('/') {
            if Path::new(c).is_file() {
                return Ok(PathBuf::from(c));
            }
            continue;
        }
        // Debian installs runc in /usr/sbin, which a user's PATH usually lacks.
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::env::split_paths(&path).chain(SBIN_DIRS.iter().map(PathBuf::from));
        if let Some(p) = dirs.map(|d| d.join(c)).find(|p| p.is_file()) {
            return Ok(p);
        }
    }
    bail!(
        "no OCI runtime found (tried {}); install one: apt-get install runc",
        candidates.join(", ")
    )
}

/// Resolves `user[:group]` (names or numbers) against the rootfs's /etc/passwd and /etc/group.
///
/// # Errors
/// A name that the image does not define.
pub fn resolve_user(rootfs: &Path, user: Option<&str>) -> Result<(u32, u32, Vec<u32>)> {
    let Some(spec) = user.filter(|u| !u.is_empty()) else {
        return Ok((0, 0, Vec::new()));
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let find = |text: &str, name: &str| -> Option<Vec<String>> {
        text.lines()
            .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
            .find(|f| {
                f.first().map(String::as_str) == Some(name)
                    || f.get(2).map(String::as_str) == Some(name)
            })
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(n) => (
            n,
            find(&passwd, u)
                .and_then(|f| f.get(3).and_then(|g| g.parse().ok()))
                .unwrap_or(0),
        ),
        Err(_) => {
            let f = find(&passwd, u)
                .with_context(|| format!("user {u:?} is not in the image's /etc/passwd"))?;
            let uid = f
                .get(2)
                .and_then(|v| v.parse().ok())
                .context("bad /etc/passwd line")?;
            let gid = f
                .get(3)
                .and_then(|v| v.parse().ok())
                .context("bad /etc/passwd line")?;
            (uid, gid)
        }
    };
    let gid = match g {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => find(&group, g)
                .and_then(|f| f.get(2).and_then(|v| v.parse().ok()))
                .with_context(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
    };
    Ok((uid, gid, Vec::new()))
}

/// The OCI runtime config for a run.
pub fn runtime_spec(
    s: &RunSettings,
    rootfs: &Path,
    ids: (u32, u32, Vec<u32>),
    rootless: bool,
) -> serde_json::Value {
    let caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        if rootless {
            // gid 5 (tty) may not exist in a user namespace with one mapping.
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]})
        } else {
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]})
        },
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        if rootless {
            // sysfs cannot be mounted without a network namespace of one's own: bind the host's.
            json!({"destination": "/sys", "type": "none", "source": "/sys",
                   "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
        } else {
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                   "options": ["nosuid", "noexec", "nodev", "ro"]})
        },
    ];
    // The host network is shared, so its name resolution is too.
    for f in ["/etc/resolv.conf", "/etc/hosts"] {
        if Path::new(f).exists() {
            mounts.push(json!({"destination": f, "type": "bind", "source": f,
                               "options": ["rbind", "ro", "nosuid", "nodev"]}));
        }
    }
    for b in &s.binds {
        let mut opts = vec!["rbind"];
        if b.readonly {
            opts.push("ro");
        }
        mounts.push(
            json!({"destination": b.container, "type": "bind", "source": b.host, "options": opts}),
        );
    }
    let (uid, gid, extra) = ids;
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": s.tty,
            "user": {"uid": uid, "gid": gid, "additionalGids": extra},
            "args": s.args,
            "env": s.env,
            "cwd": s.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": s.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Files listing subordinate ids (shadow-utils).
const SUBUID_FILE: &str = "/etc/subuid";
/// Same for groups.
const SUBGID_FILE: &str = "/etc/subgid";
/// The setuid helper that writes a multi-range uid map.
const NEWUIDMAP: &str = "/usr/bin/newuidmap";

/// True when `file` gives the calling user (by name or uid) a range of subordinate ids.
fn has_subordinate_ids(file: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata("/proc/self") else {
        return false;
    };
    let uid = md.uid().to_string();
    let name = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&uid.as_str())).then(|| f[0].to_owned())
        })
        .unwrap_or_default();
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let owner = l.split(':').next().unwrap_or_default();
            owner == uid || (!name.is_empty() && owner == name)
        })
}

/// Runs the current command in the user namespace when strata is not root (and not in one
/// already): `Some(exit code)` of that run, `None` when the caller should go on here.
///
/// # Errors
/// `unshare` cannot run.
pub fn enter_userns_if_rootless(store_root: &Path) -> Result<Option<ExitCode>> {
    if crate::is_root() || std::env::var_os(IN_USERNS_ENV).is_some() {
        return Ok(None);
    }
    reexec_in_userns(store_root).map(Some)
}

/// True when rootless runs map subordinate ids: then a container's upper dir may hold files
/// owned by those ids, which only the user namespace can read or remove.
fn maps_subordinate_ids() -> bool {
    Path::new(NEWUIDMAP).exists()
        && has_subordinate_ids(SUBUID_FILE)
        && has_subordinate_ids(SUBGID_FILE)
}

/// For commands that read or remove a container's upper dir (diff, commit, export, rm, gc):
/// when rootless with subordinate ids, run in the user namespace as `run` does.
///
/// # Errors
/// `unshare` cannot run.
pub fn enter_userns_for_container_files(store_root: &Path) -> Result<Option<ExitCode>> {
    if crate::is_root() || std::env::var_os(IN_USERNS_ENV).is_some() || !maps_subordinate_ids() {
        return Ok(None);
    }
    reexec_in_userns(store_root).map(Some)
}

/// For commands that read a container's upper dir (diff, commit, export): the upper of a
/// container that `run` used was written inside the user namespace (its uid 0 is the caller),
/// so it is read there too when rootless with subordinate ids; a container only ever mounted
/// with `container mount` was written with the caller's own ids and is read here.
///
/// # Errors
/// `unshare` cannot run.
pub fn enter_userns_for_container(store_root: &Path, container: &str) -> Result<Option<ExitCode>> {
    if crate::is_root() || std::env::var_os(IN_USERNS_ENV).is_some() || !maps_subordinate_ids() {
        return Ok(None);
    }
    let was_run = layerstore::Store::open(store_root)
        .and_then(|s| {
            let c = s.resolve_container(container)?;
            s.container_config(&c)
        })
        .map(|cfg| cfg.is_some())
        .unwrap_or(false);
    if !was_run {
        return Ok(None);
    }
    reexec_in_userns(store_root).map(Some)
}

/// Re-runs this command line inside a new user namespace with its own mount namespace, and
/// returns its exit code. The caller is root there; when /etc/subuid and /etc/subgid give the
/// caller ranges (and newuidmap is installed), ids 1… map to the first range, so images with
/// other users work (`-u nobody`, files of uid 100); else only root is mapped.
///
/// # Errors
/// `unshare` is missing or user namespaces are disabled.
pub fn reexec_in_userns(store_root: &Path) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the strata binary")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user"]);
    if maps_subordinate_ids() {
        cmd.args(["--map-users=auto", "--map-groups=auto"]);
    }
    cmd.args(["--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args(args)
        .env(IN_USERNS_ENV, "1")
        .env("STRATA_ROOT", store_root);
    // Signals sent to this process (the one the caller knows) must reach the one inside.
    let status = run_forwarding_signals(&mut cmd)
        .context("running unshare (util-linux) to enter a user namespace")?;
    Ok(exit_code_of(status))
}

/// Maps a child's exit status to ours (128 + signal for a killed child, as shells do).
pub fn exit_code_of(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

/// Same as [`exit_code_of`], as a number.
pub fn exit_number(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs `cmd` to its end, forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT to it (strata itself
/// stays alive to clean up: unmount, remove `--rm` containers).
///
/// # Errors
/// The command cannot be started.
pub fn run_forwarding_signals(cmd: &mut Command) -> Result<std::process::ExitStatus> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGQUIT,
    ])
    .context("installing signal handlers")?;
    let handle = signals.handle();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            if let (Some(pid), Some(sig)) = (pid, rustix::process::Signal::from_named_raw(sig)) {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    });
    let status = child.wait().context("waiting for the child process")?;
    handle.close();
    let _ = forwarder.join();
    Ok(status)
}

/// Runs `runtime run` in the foreground, forwarding signals to it.
///
/// # Errors
/// The runtime cannot be started.
pub fn run_runtime(
    runtime: &Path,
    state_dir: &Path,
    bundle: &Path,
    id: &str,
    verbose: bool,
) -> Result<std::process::ExitStatus> {
    layerstore::privacy::create_private_dir_all(state_dir)?;
    let mut cmd = Command::new(runtime);
    cmd.arg("--root")
        .arg(state_dir)
        .arg("run")
        .arg("--bundle")
        .arg(bundle)
        .arg(id);
    if verbose {
        eprintln!("strata: {cmd:?}");
    }
    run_forwarding_signals(&mut cmd)
}
