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
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use unionfs::LowerTree;

use crate::net::{Network, NetworkMode, PortSpec};
use crate::seccomp::Seccomp;

/// Environment variable set in the re-executed process inside the user namespace.
pub const IN_USERNS_ENV: &str = "STRATA_IN_USERNS";
/// Runtimes tried in order when `--runtime` is not given.
const DEFAULT_RUNTIMES: &[&str] = &["runc", "crun"];
/// Searched after PATH for the runtime.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];
/// Docker's default capability set, without `CAP_NET_RAW` (raw sockets let a container forge
/// packets; ping works without it through `net.ipv4.ping_group_range`, which is set below).
const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];
/// Every capability, in the kernel's order (`--cap-add ALL` takes those the kernel has).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
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
    /// Attach standard input (`-i`): without it (and without `-t`) the process reads
    /// `/dev/null`, as docker's, so a `while read` loop around `strata run` keeps its input.
    #[serde(default)]
    pub interactive: bool,
    /// Bind mounts.
    pub binds: Vec<Bind>,
    /// Hostname.
    pub hostname: String,
    /// Runtime binary, when chosen explicitly.
    pub runtime: Option<String>,
    /// Exit code of the last run.
    #[serde(default)]
    pub last_exit: Option<i32>,
    /// Network, seccomp and capabilities (the defaults for containers stored before these
    /// existed).
    #[serde(default)]
    pub isolation: Isolation,
}

/// How a container is isolated: `--network`, `-p`, `--security-opt`, `--cap-add/--cap-drop`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Isolation {
    /// Which network namespace.
    pub network: NetworkMode,
    /// Ports published from the host.
    pub ports: Vec<PortSpec>,
    /// The seccomp filter.
    pub seccomp: Seccomp,
    /// Set no_new_privs (setuid binaries then do not raise privileges).
    pub no_new_privileges: bool,
    /// Capabilities added to the default set (`CAP_` names, or `ALL`).
    pub cap_add: Vec<String>,
    /// Capabilities dropped from it.
    pub cap_drop: Vec<String>,
}

impl Isolation {
    /// Parses `run`'s flags.
    ///
    /// # Errors
    /// An unknown network mode, capability or security option; a bad port spec; an
    /// unreadable seccomp profile.
    pub fn from_flags(
        network: &str,
        publish: &[String],
        security_opts: &[String],
        cap_add: &[String],
        cap_drop: &[String],
    ) -> Result<Isolation> {
        let mut iso = Isolation {
            network: network.parse()?,
            ports: publish
                .iter()
                .map(|p| PortSpec::parse(p))
                .collect::<Result<_>>()?,
            cap_add: cap_add
                .iter()
                .map(|c| normalize_cap(c))
                .collect::<Result<_>>()?,
            cap_drop: cap_drop
                .iter()
                .map(|c| normalize_cap(c))
                .collect::<Result<_>>()?,
            ..Isolation::default()
        };
        for o in security_opts {
            // Docker accepts `key=value` and the older `key:value`.
            let (k, v) = o
                .split_once('=')
                .or_else(|| o.split_once(':'))
                .unwrap_or((o.as_str(), ""));
            match (k, v) {
                ("seccomp", v) if !v.is_empty() => iso.seccomp = Seccomp::parse(v)?,
                ("no-new-privileges", "" | "true") => iso.no_new_privileges = true,
                ("no-new-privileges", "false") => iso.no_new_privileges = false,
                // Asks for less confinement than strata applies anyway (it has no LSM profile).
                ("apparmor", "unconfined") | ("label", "disable") => {}
                _ => bail!(
                    "--security-opt {o:?}: strata knows seccomp=unconfined|FILE and \
                     no-new-privileges[=true|false]"
                ),
            }
        }
        if !iso.ports.is_empty() && iso.network != NetworkMode::Private {
            bail!("-p publishes ports into a private network: not with --network host or none");
        }
        Ok(iso)
    }

    /// The container's capabilities, Docker's way: `--cap-add ALL` starts from every
    /// capability, `--cap-drop ALL` from none, else from the default set; then drops, then
    /// adds.
    pub fn capabilities(&self) -> Vec<String> {
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(ALL_CAPS.len() - 1);
        let all = || ALL_CAPS.iter().take(last + 1).map(|c| (*c).to_owned());
        let has = |v: &[String], c: &str| v.iter().any(|x| x == c);
        if has(&self.cap_add, "ALL") {
            return all().filter(|c| !has(&self.cap_drop, c)).collect();
        }
        let mut caps: Vec<String> = if has(&self.cap_drop, "ALL") {
            Vec::new()
        } else {
            DEFAULT_CAPS
                .iter()
                .map(|c| (*c).to_owned())
                .filter(|c| !has(&self.cap_drop, c))
                .collect()
        };
        for c in &self.cap_add {
            if !caps.contains(c) {
                caps.push(c.clone());
            }
        }
        caps
    }
}

/// `net_raw`, `NET_RAW`, `CAP_NET_RAW` → `CAP_NET_RAW`; `all` → `ALL`.
fn normalize_cap(c: &str) -> Result<String> {
    let up = c.trim().to_ascii_uppercase();
    if up == "ALL" {
        return Ok(up);
    }
    let name = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if !ALL_CAPS.contains(&name.as_str()) {
        bail!("unknown capability {c:?}");
    }
    Ok(name)
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

/// Resolves `user[:group]` (names or numbers; default root) against the rootfs's /etc/passwd
/// and /etc/group: uid, gid and, as Docker (runc's `GetExecUser`), the supplementary groups
/// whose member lists name the user, when no group was given.
///
/// # Errors
/// A name that the image does not define.
pub fn resolve_user(rootfs: &Path, user: Option<&str>) -> Result<(u32, u32, Vec<u32>)> {
    let spec = user.filter(|u| !u.is_empty()).unwrap_or("0");
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
    let entry = find(&passwd, u);
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(n) => (
            n,
            entry
                .as_ref()
                .and_then(|f| f.get(3).and_then(|g| g.parse().ok()))
                .unwrap_or(0),
        ),
        Err(_) => {
            let f = entry
                .as_ref()
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
    let mut extra = Vec::new();
    if let (None, Some(name)) = (g, entry.as_ref().and_then(|f| f.first())) {
        for f in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            let member = f
                .get(3)
                .is_some_and(|m| m.split(',').any(|x| x.trim() == name));
            if let Some(gid) = f.get(2).and_then(|v| v.parse::<u32>().ok())
                && member
                && !extra.contains(&gid)
            {
                extra.push(gid);
            }
        }
    }
    Ok((uid, gid, extra))
}

/// Directories the runtime mounts over.
const RUNTIME_MOUNT_DIRS: &[&str] = &["proc", "sys", "dev"];
/// Files the runtime binds over (the network's name files).
const RUNTIME_MOUNT_FILES: &[&str] = &["etc/hosts", "etc/hostname", "etc/resolv.conf"];

/// Attributes of `path` in the image (the read-only union of `fs`), `None` when it is not
/// there. Each parent must be a directory.
fn image_attr(fs: &unionfs::UnionFs, path: &str) -> Option<unionfs::Entry> {
    let mut ino = unionfs::ROOT_INO;
    let mut found = fs.getattr_entry(ino, None).ok();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let e = fs.lookup(ino, std::ffi::OsStr::new(c)).ok()?;
        ino = e.attr.ino;
        found = Some(e);
    }
    found
}

/// The attributes and xattrs of an image entry, as an index entry takes them.
fn meta_of(fs: &unionfs::UnionFs, e: &unionfs::Entry) -> unionfs::IndexMeta {
    let (mtime, mtime_nsec) = match e.attr.mtime.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(0), d.subsec_nanos()),
        Err(_) => (0, 0),
    };
    let xattrs = fs
        .listxattr(e.attr.ino)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| {
            let v = fs
                .getxattr(e.attr.ino, std::ffi::OsStr::from_bytes(&n))
                .ok()?;
            Some((n, v))
        })
        .collect();
    unionfs::IndexMeta {
        mode: e.attr.perm,
        uid: e.attr.uid,
        gid: e.attr.gid,
        mtime,
        mtime_nsec,
        xattrs,
    }
}

/// The image's layers (`lowers`, top first) with, on top, an in-memory layer holding the
/// runtime's mount targets that the image lacks (Docker's init layer): empty `proc`, `sys`,
/// `dev`, and empty `etc/hosts`, `etc/hostname`, `etc/resolv.conf`, under directories that
/// carry the image's own attributes. So the runtime creates nothing in the container's
/// writable layer: a run that changes nothing leaves no change for `diff` or `commit`, even
/// when killed.
///
/// # Errors
/// The union of the image cannot be read.
pub fn with_init_layer(mut lowers: Vec<Arc<dyn LowerTree>>) -> Result<Vec<Arc<dyn LowerTree>>> {
    use unionfs::{EntryKind, IndexKind, IndexMeta};
    let fs = unionfs::UnionFs::new(lowers.clone(), None, unionfs::FsOptions::default())
        .context("reading the image's layers")?;
    let targets = RUNTIME_MOUNT_DIRS
        .iter()
        .map(|p| (*p, true))
        .chain(RUNTIME_MOUNT_FILES.iter().map(|p| (*p, false)));
    let mut entries: Vec<(String, IndexKind, IndexMeta)> = Vec::new();
    let default_dir = IndexMeta {
        mode: 0o755,
        ..IndexMeta::default()
    };
    for (path, is_dir) in targets {
        if image_attr(&fs, path).is_some() {
            continue;
        }
        // Its parents, from the root: the image's where it has them; none may be a non-dir
        // (an image whose /etc is a symlink is left to the runtime).
        let parts: Vec<&str> = path.split('/').collect();
        let mut parents = Vec::new();
        let mut ok = true;
        for i in 0..parts.len() {
            let p = parts[..i].join("/");
            match image_attr(&fs, &p) {
                Some(e) if e.attr.kind == EntryKind::Dir => parents.push((p, meta_of(&fs, &e))),
                Some(_) => ok = false,
                None => parents.push((p, default_dir.clone())),
            }
        }
        if !ok {
            continue;
        }
        for (p, meta) in parents {
            if !entries.iter().any(|(q, _, _)| *q == p) {
                entries.push((p, IndexKind::Dir, meta));
            }
        }
        let (kind, mode) = if is_dir {
            (IndexKind::Dir, 0o755)
        } else {
            (
                IndexKind::File {
                    size: 0,
                    content: None,
                },
                0o644,
            )
        };
        entries.push((
            path.to_owned(),
            kind,
            IndexMeta {
                mode,
                ..IndexMeta::default()
            },
        ));
    }
    if entries.is_empty() {
        return Ok(lowers);
    }
    let mut b = unionfs::IndexTree::builder(entries.len());
    for (p, kind, meta) in entries {
        b.push(&p, kind, meta)
            .context("building the container's init layer")?;
    }
    lowers.insert(0, Arc::new(b.finish()));
    Ok(lowers)
}

/// The highest group id this process's user namespace maps (for `ping_group_range`).
fn max_mapped_gid() -> u32 {
    std::fs::read_to_string("/proc/self/gid_map")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() == 3 && f[2] > 0).then(|| f[0] + f[2] - 1)
        })
        .max()
        .map_or(0, |g| u32::try_from(g.min(i32::MAX as u64)).unwrap_or(0))
}

/// The OCI runtime config for a run on network `net`.
///
/// # Errors
/// A stored seccomp profile that no longer parses.
pub fn runtime_spec(
    s: &RunSettings,
    rootfs: &Path,
    ids: (u32, u32, Vec<u32>),
    rootless: bool,
    net: &Network,
) -> Result<serde_json::Value> {
    let caps = s.isolation.capabilities();
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
        if rootless && !net.is_private() {
            // sysfs cannot be mounted without a network namespace of one's own: bind the host's.
            json!({"destination": "/sys", "type": "none", "source": "/sys",
                   "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
        } else {
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                   "options": ["nosuid", "noexec", "nodev", "ro"]})
        },
    ];
    mounts.extend(net.mounts());
    for b in &s.binds {
        let mut opts = vec!["rbind"];
        if b.readonly {
            opts.push("ro");
        }
        mounts.push(
            json!({"destination": b.container, "type": "bind", "source": b.host, "options": opts}),
        );
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    namespaces.extend(net.namespace());
    let mut linux = json!({
        "namespaces": namespaces,
        "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                        "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                        "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
    });
    if let Some(seccomp) = s.isolation.seccomp.to_spec(&caps)? {
        linux["seccomp"] = seccomp;
    }
    if net.is_private() {
        // Docker's way to let ping work without CAP_NET_RAW: ICMP sockets for every group.
        linux["sysctl"] = json!({
            "net.ipv4.ping_group_range": format!("0 {}", max_mapped_gid()),
        });
    }
    let (uid, gid, extra) = ids;
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": s.tty,
            "user": {"uid": uid, "gid": gid, "additionalGids": extra},
            "args": s.args,
            "env": s.env,
            "cwd": s.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": s.isolation.no_new_privileges
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": s.hostname,
        "mounts": mounts,
        "linux": linux
    }))
}

/// Where and how a container's process starts.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The runtime binary.
    pub runtime: &'a Path,
    /// The runtime's state directory (`--root`).
    pub state_dir: &'a Path,
    /// The bundle directory (config.json and the network's name files go there).
    pub bundle: &'a Path,
    /// The runtime's container id.
    pub id: &'a str,
    /// The mounted root filesystem.
    pub rootfs: &'a Path,
    /// Inside strata's user namespace (rootless).
    pub rootless: bool,
    /// Print the runtime's command line.
    pub verbose: bool,
}

/// Sets up the container's network, writes the bundle's config.json and runs the process
/// through the runtime in the foreground; the network goes when the runtime returns.
///
/// # Errors
/// The network cannot be set up, the bundle cannot be written, the runtime cannot start.
pub fn run_container(
    l: &Launch<'_>,
    s: &RunSettings,
    ids: (u32, u32, Vec<u32>),
) -> Result<std::process::ExitStatus> {
    let net = Network::start(
        s.isolation.network,
        &s.isolation.ports,
        &s.hostname,
        l.bundle,
    )?;
    let spec = runtime_spec(s, l.rootfs, ids, l.rootless, &net)?;
    // 0600: it holds the container's environment (`-e DB_PASSWORD=…`).
    layerstore::privacy::write_private_file(
        &l.bundle.join("config.json"),
        &serde_json::to_vec_pretty(&spec)?,
    )
    .context("writing the runtime bundle")?;
    let stdin = s.interactive || s.tty;
    let status = run_runtime(l.runtime, l.state_dir, l.bundle, l.id, l.verbose, stdin);
    drop(net);
    status
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

/// Runs `runtime run` in the foreground, forwarding signals to it; standard input is passed
/// through only with `stdin` (`-i` or `-t`).
///
/// # Errors
/// The runtime cannot be started.
pub fn run_runtime(
    runtime: &Path,
    state_dir: &Path,
    bundle: &Path,
    id: &str,
    verbose: bool,
    stdin: bool,
) -> Result<std::process::ExitStatus> {
    layerstore::privacy::create_private_dir_all(state_dir)?;
    let mut cmd = Command::new(runtime);
    if !stdin {
        cmd.stdin(std::process::Stdio::null());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(add: &[&str], drop: &[&str]) -> Isolation {
        let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Isolation::from_flags("private", &[], &[], &v(add), &v(drop)).unwrap()
    }

    #[test]
    fn capabilities_follow_docker() {
        let caps = iso(&[], &[]).capabilities();
        assert!(!caps.contains(&"CAP_NET_RAW".to_owned()));
        assert!(caps.contains(&"CAP_CHOWN".to_owned()));
        let caps = iso(&["net_raw"], &["chown"]).capabilities();
        assert!(caps.contains(&"CAP_NET_RAW".to_owned()));
        assert!(!caps.contains(&"CAP_CHOWN".to_owned()));
        assert_eq!(iso(&["KILL"], &["ALL"]).capabilities(), ["CAP_KILL"]);
        let all = iso(&["ALL"], &["SYS_ADMIN"]).capabilities();
        assert!(all.contains(&"CAP_SYS_PTRACE".to_owned()));
        assert!(!all.contains(&"CAP_SYS_ADMIN".to_owned()));
        assert!(Isolation::from_flags("private", &[], &[], &["BOGUS".into()], &[]).is_err());
    }

    #[test]
    fn security_options() {
        let o = |opts: &[&str]| {
            let v: Vec<String> = opts.iter().map(|s| (*s).to_owned()).collect();
            Isolation::from_flags("private", &[], &v, &[], &[])
        };
        assert!(o(&["no-new-privileges"]).unwrap().no_new_privileges);
        assert!(!o(&["no-new-privileges:false"]).unwrap().no_new_privileges);
        assert_eq!(
            o(&["seccomp=unconfined"]).unwrap().seccomp,
            Seccomp::Unconfined
        );
        assert!(o(&["label=disable", "apparmor=unconfined"]).is_ok());
        assert!(o(&["apparmor=docker-default"]).is_err());
        assert!(Isolation::from_flags("host", &["80:80".into()], &[], &[], &[]).is_err());
    }

    #[test]
    fn supplementary_groups_come_from_the_group_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/:/bin/sh\napp:x:1000:1000::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwheel:x:10:root,app\naudio:x:29:app\napp:x:1000:\n",
        )
        .unwrap();
        let r = |u: Option<&str>| resolve_user(dir.path(), u).unwrap();
        assert_eq!(r(Some("app")), (1000, 1000, vec![10, 29]));
        assert_eq!(r(Some("1000")), (1000, 1000, vec![10, 29]));
        assert_eq!(r(Some("app:audio")), (1000, 29, vec![]));
        assert_eq!(r(None), (0, 0, vec![10]));
        assert_eq!(r(Some("4242")), (4242, 0, vec![]));
    }
}
