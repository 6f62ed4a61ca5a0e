//! `strata run`, `strata start`, `strata ps`, `strata rm`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use layerstore::{ContainerRecord, ImageConfig, Store};
use unionfs::{UnionConfig, UpperDirs};

use crate::Globals;
use crate::runtime::{
    Bind, DEFAULT_PATH, IN_USERNS_ENV, Isolation, Launch, RunSettings, enter_userns_if_rootless,
    exit_number, find_runtime, resolve_user, run_container, with_init_layer,
};
use crate::union::{RunState, cli_mount_options, image_lowers};

/// Directory of a container's root filesystem mount, inside its store directory.
const ROOTFS_DIR: &str = "rootfs";
/// Directory of its OCI runtime bundle.
const BUNDLE_DIR: &str = "bundle";

/// What `run --help` says about isolation, after the options.
const ISOLATION_HELP: &str = "\
Isolation (Docker's defaults, root and rootless):
  network   a namespace of its own (--network private, alias bridge), connected outward
            through slirp4netns (Debian package slirp4netns): DNS at 10.0.2.3, the address
            10.0.2.100; the host's loopback services are out of reach; -p publishes ports.
            --network host shares the host's; --network none has loopback only.
  seccomp   Docker's default profile: keyctl, add_key, request_key, mount, unshare, setns,
            new namespaces, ptrace on kernels before 4.8, ... fail with EPERM (more with
            --cap-add SYS_ADMIN or SYS_PTRACE). --security-opt seccomp=unconfined|FILE.
  caps      Docker's set without CAP_NET_RAW (ping still works: ping_group_range).
            --cap-add/--cap-drop NAME or ALL.
  privs     no_new_privs off, so setuid binaries (su) work; on with
            --security-opt no-new-privileges.
  users     -u USER also gets USER's supplementary groups from the image's /etc/group.
            Rootless, root in the container is the caller and other ids are the caller's
            subordinate ids (/etc/subuid): no more than the caller can do.";

/// Run a command in a new container: its rootfs is the image's layers under a fresh writable
/// layer (a strata union mount), the process runs through an OCI runtime (runc or crun).
#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true, after_help = ISOLATION_HELP)]
pub struct Args {
    /// Keep standard input open (the runtime passes it through).
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a TTY.
    #[arg(short, long)]
    pub tty: bool,
    /// Remove the container when the command exits.
    #[arg(long)]
    pub rm: bool,
    /// Container name (default: a generated one).
    #[arg(long)]
    pub name: Option<String>,
    /// Set an environment variable (`K=V`, or `K` to take it from here); repeatable.
    #[arg(short, long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory in the container (default: the image's WorkingDir, else /).
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// `user[:group]`, names or numbers (default: the image's User, else root).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Bind-mount a host path: `HOST:CONTAINER[:ro]`; repeatable.
    #[arg(short, long = "volume", value_name = "HOST:CTR[:ro]")]
    pub volumes: Vec<String>,
    /// Override the image's entrypoint (`""` clears it).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// OCI runtime binary (default: the first of runc, crun in PATH).
    #[arg(long)]
    pub runtime: Option<String>,
    /// Network, published ports, seccomp, capabilities (boxed: they would make every command
    /// as large as `run`).
    #[command(flatten)]
    pub isolation: Box<IsolationArgs>,
    /// The image: `name[:tag]`, ID or ID prefix.
    pub image: String,
    /// The command and its arguments (default: the image's Cmd).
    pub command: Vec<String>,
}

/// `run`'s isolation flags.
#[derive(Debug, clap::Args)]
pub struct IsolationArgs {
    /// Network: `private` (own namespace, outbound access through slirp4netns; alias `bridge`),
    /// `host` (the host's interfaces and loopback services), `none` (loopback only).
    #[arg(long, alias = "net", value_name = "MODE", default_value = "private")]
    pub network: String,
    /// Publish a container port on the host: `[IP:]HOSTPORT:CTRPORT[/tcp|udp]` (ranges
    /// `A-B:C-D`); repeatable. Needs `--network private`.
    #[arg(short, long = "publish", value_name = "[IP:]HOST:CTR")]
    pub publish: Vec<String>,
    /// `seccomp=unconfined`, `seccomp=FILE` (Docker's or the OCI format), or
    /// `no-new-privileges`; repeatable.
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Add a capability (`NET_RAW`, `CAP_SYS_ADMIN`, `ALL`); repeatable.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (`ALL` drops every one; `--cap-add` then adds back); repeatable.
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
}

/// Start a stopped container again with the command it was created with.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Attach: run in the foreground and return the command's exit code (the only mode).
    #[arg(short, long)]
    pub attach: bool,
    /// Keep standard input open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Container name or ID.
    pub container: String,
}

/// List containers (`-a`: all; strata lists all, running or not).
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Show all containers (the default; accepted for Docker compatibility).
    #[arg(short, long)]
    pub all: bool,
    /// Only IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

/// What the image's config and the flags make of a run.
struct Defaults {
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    user: Option<String>,
}

fn image_defaults(cfg: &ImageConfig, a: &Args) -> Result<Defaults> {
    let rc = cfg.config.clone().unwrap_or_default();
    let entrypoint: Vec<String> = match &a.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => rc.entrypoint.clone().unwrap_or_default(),
    };
    // Docker: a given entrypoint drops the image's Cmd; given args replace it.
    let cmd: Vec<String> = if !a.command.is_empty() {
        a.command.clone()
    } else if a.entrypoint.is_some() {
        Vec::new()
    } else {
        rc.cmd.clone().unwrap_or_default()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() {
        bail!(
            "no command given and the image has neither Entrypoint nor Cmd: give one after the image name"
        );
    }
    let mut env = rc.env.clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_owned());
    }
    for e in &a.env {
        let kv = if e.contains('=') {
            e.clone()
        } else {
            match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            }
        };
        let key = kv.split('=').next().unwrap_or_default().to_owned();
        env.retain(|x| x.split('=').next() != Some(key.as_str()));
        env.push(kv);
    }
    if a.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".to_owned());
    }
    let cwd = a
        .workdir
        .clone()
        .or(rc.working_dir.clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    let user = a.user.clone().or(rc.user.clone()).filter(|u| !u.is_empty());
    Ok(Defaults {
        args,
        env,
        cwd,
        user,
    })
}

/// Runs `run`.
///
/// # Errors
/// Unknown image, no runtime, mount failures.
pub fn run(g: &Globals, a: Args) -> Result<ExitCode> {
    if let Some(code) = enter_userns_if_rootless(&g.root)? {
        return Ok(code);
    }
    let store = g.store()?;
    let img = store.resolve_image(&a.image)?;
    let cfg = ImageConfig::parse(&img.config)?;
    let Defaults {
        args,
        env,
        cwd,
        user,
    } = image_defaults(&cfg, &a)?;
    let binds = a
        .volumes
        .iter()
        .map(|v| Bind::parse(v))
        .collect::<Result<Vec<_>>>()?;
    let i = &a.isolation;
    let isolation = Isolation::from_flags(
        &i.network,
        &i.publish,
        &i.security_opt,
        &i.cap_add,
        &i.cap_drop,
    )?;
    // Fail before creating anything when no runtime is there.
    find_runtime(a.runtime.as_deref())?;
    let c = store.create_container(a.name.as_deref(), &img.id)?;
    let settings = RunSettings {
        args,
        env,
        cwd,
        user,
        tty: a.tty,
        interactive: a.interactive,
        binds,
        hostname: c.short_id().to_owned(),
        runtime: a.runtime.clone(),
        last_exit: None,
        isolation,
    };
    store.set_container_config(&c, &serde_json::to_vec(&settings)?)?;
    let code = start_container(g, &store, &c, settings);
    if a.rm {
        store
            .remove_container(&c)
            .with_context(|| format!("removing container {}", c.name))?;
    }
    code
}

/// Mounts the container, runs its command through the runtime, unmounts.
fn start_container(
    g: &Globals,
    store: &Store,
    c: &ContainerRecord,
    s: RunSettings,
) -> Result<ExitCode> {
    let code = run_in_container(g, store, c, s)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
}

/// Mounts the container, runs `s` in it through the runtime and waits, unmounts; returns the
/// exit code (128 + signal for a killed process, 127 for a command the image lacks). The
/// settings, with the exit code, are stored with the container. Used by `run`, `start` and
/// the RUN steps of `build`.
///
/// # Errors
/// The container is mounted or running, no runtime, mount or runtime failures.
pub(crate) fn run_in_container(
    g: &Globals,
    store: &Store,
    c: &ContainerRecord,
    mut s: RunSettings,
) -> Result<i32> {
    crate::commands::container::reap_dead(&g.root, store, c)?;
    if RunState::list(&g.root)
        .iter()
        .any(|r| r.container.as_deref() == Some(&c.id))
    {
        bail!(
            "container {} is mounted or running; stop or unmount it first",
            c.name
        );
    }
    let runtime = find_runtime(s.runtime.as_deref())?;
    let img = store.resolve_image(&c.image.to_string())?;
    let _lease = crate::union::lease_image(store, &img)?;
    let lowers = with_init_layer(image_lowers(store, &img)?)?;
    let rootfs = c.dir.join(ROOTFS_DIR);
    let bundle = c.dir.join(BUNDLE_DIR);
    std::fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    // Private: its config.json holds the container's environment.
    layerstore::privacy::create_private_dir_all(&bundle)
        .with_context(|| format!("creating {}", bundle.display()))?;
    let in_userns = std::env::var_os(IN_USERNS_ENV).is_some();
    let mut options = cli_mount_options("strata");
    // Processes of other users in the container must reach the files too.
    options.allow_other = true;
    options.passthrough = options.passthrough && !in_userns;
    options.writeback_cache = !options.passthrough;
    let session = unionfs::spawn(
        UnionConfig {
            lowers,
            upper: Some(UpperDirs {
                upper: c.upper(),
                work: c.work(),
            }),
            options,
        },
        &rootfs,
    )
    .with_context(|| format!("mounting the rootfs of container {}", c.name))?;
    let state = RunState::new(&g.root, &rootfs, img.id.to_string(), Some(c.id.clone()));
    state.write_now()?;
    store.set_container_owner(c)?;
    let result = (|| -> Result<std::process::ExitStatus> {
        let ids = resolve_user(&rootfs, s.user.as_deref())?;
        if find_executable(&rootfs, &s.args[0], &s.env).is_none() {
            return Err(CommandNotFound(s.args[0].clone()).into());
        }
        let state_dir = g.root.join(layerstore::RUN_DIR).join("runtime");
        let launch = Launch {
            runtime: &runtime,
            state_dir: &state_dir,
            bundle: &bundle,
            id: &c.id[..32],
            rootfs: &rootfs,
            rootless: in_userns,
            verbose: g.verbose,
        };
        run_container(&launch, &s, ids)
    })();
    state.remove_now();
    if let Err(e) = session.unmount() {
        eprintln!("warning: unmounting {}: {e}", rootfs.display());
    }
    store.clear_container_owner(c);
    let status = match result {
        Err(e) if e.downcast_ref::<CommandNotFound>().is_some() => {
            // Docker's answer for a command the image does not have: exit code 127.
            eprintln!("error: {e}");
            s.last_exit = Some(127);
            store.set_container_config(c, &serde_json::to_vec(&s)?)?;
            return Ok(127);
        }
        r => r?,
    };
    let code = exit_number(status);
    s.last_exit = Some(code);
    store.set_container_config(c, &serde_json::to_vec(&s)?)?;
    Ok(code)
}

/// The container's command is not in its filesystem.
#[derive(Debug, thiserror::Error)]
#[error("{0:?}: executable file not found in the container's $PATH")]
struct CommandNotFound(String);

/// Resolves `path` inside `root` as the kernel would after a chroot: symlinks (absolute ones
/// relative to `root`) are followed, at most 40 of them. `None` when it does not exist.
fn resolve_in_root(root: &std::path::Path, path: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    parts.reverse();
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    while let Some(c) = parts.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let next = cur.join(&c);
        let host = root.join(next.strip_prefix("/").ok()?);
        let md = std::fs::symlink_metadata(&host).ok()?;
        if md.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return None;
            }
            let target = std::fs::read_link(&host).ok()?;
            let t = target.to_string_lossy().into_owned();
            if t.starts_with('/') {
                cur = PathBuf::from("/");
            }
            for comp in t.split('/').filter(|c| !c.is_empty()).rev() {
                parts.push(comp.to_owned());
            }
        } else {
            cur = next;
        }
    }
    Some(root.join(cur.strip_prefix("/").ok()?))
}

/// Finds the command as `execvp` in the container would: a path with `/` as is, else each
/// directory of the container's PATH.
fn find_executable(root: &std::path::Path, cmd: &str, env: &[String]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &PathBuf| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if cmd.contains('/') {
        return resolve_in_root(root, cmd).filter(is_exec);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(&DEFAULT_PATH["PATH=".len()..]);
    path.split(':')
        .filter(|d| !d.is_empty())
        .filter_map(|d| resolve_in_root(root, &format!("{d}/{cmd}")))
        .find(is_exec)
}

/// Runs `start`.
///
/// # Errors
/// Unknown container, one never run.
pub fn run_start(g: &Globals, a: StartArgs) -> Result<ExitCode> {
    if let Some(code) = enter_userns_if_rootless(&g.root)? {
        return Ok(code);
    }
    let store = g.store()?;
    let c = store.resolve_container(&a.container)?;
    let Some(bytes) = store.container_config(&c)? else {
        bail!(
            "container {} was created without a command ('strata container create'); use 'strata run'",
            c.name
        );
    };
    let mut s: RunSettings =
        serde_json::from_slice(&bytes).context("the container's run settings")?;
    // As docker's: standard input is attached when this start asks for it (`-i`).
    s.interactive = a.interactive;
    start_container(g, &store, &c, s)
}

#[derive(serde::Serialize)]
struct PsJson {
    id: String,
    name: String,
    image: String,
    command: String,
    created: String,
    status: String,
}

/// Runs `ps`.
///
/// # Errors
/// Store errors.
pub fn run_ps(g: &Globals, a: PsArgs) -> Result<ExitCode> {
    let store = g.store()?;
    let live = RunState::list(&g.root);
    let mut out = Vec::new();
    for c in store.containers()? {
        let _ = crate::commands::container::reap_dead(&g.root, &store, &c);
        let s: Option<RunSettings> = store
            .container_config(&c)?
            .and_then(|b| serde_json::from_slice(&b).ok());
        let image = store
            .resolve_image(&c.image.to_string())
            .ok()
            .and_then(|i| i.tags.first().map(|t| t.familiar()))
            .unwrap_or_else(|| c.image.short());
        let status = if live.iter().any(|r| r.container.as_deref() == Some(&c.id))
            || crate::commands::container::is_live(&g.root, &store, &c)
        {
            "Up".to_owned()
        } else {
            match s.as_ref().and_then(|s| s.last_exit) {
                Some(code) => format!("Exited ({code})"),
                None => "Created".to_owned(),
            }
        };
        out.push(PsJson {
            id: c.id.clone(),
            name: c.name.clone(),
            image,
            command: s.map(|s| s.args.join(" ")).unwrap_or_default(),
            created: c.created.clone(),
            status,
        });
    }
    if g.json() {
        return crate::output::print_json(&out).map(|()| ExitCode::SUCCESS);
    }
    if a.quiet || g.quiet {
        for p in &out {
            println!("{}", &p.id[..12]);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = out
        .iter()
        .map(|p| {
            vec![
                p.id[..12].to_owned(),
                p.image.clone(),
                format!("\"{}\"", crate::output::ellipsis(&p.command, 20)),
                crate::output::time_ago(Some(&p.created)),
                p.status.clone(),
                p.name.clone(),
            ]
        })
        .collect();
    crate::output::print_table(
        &[
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "NAMES",
        ],
        &rows,
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Where a container's rootfs is mounted while it runs.
pub fn rootfs_dir(c: &ContainerRecord) -> PathBuf {
    c.dir.join(ROOTFS_DIR)
}
