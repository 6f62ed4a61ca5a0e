//! The seccomp filter of a container: Docker's default profile, or a profile file, turned into
//! the OCI runtime spec's `linux.seccomp` for the container's capabilities, architecture and
//! kernel.
//!
//! The default has Docker's semantics (moby's `profiles/seccomp/default.json`, ported here as
//! tables): everything not listed fails with `EPERM`; among what is denied are `keyctl`,
//! `add_key`, `request_key`, `userfaultfd`, `kexec_*`, `open_by_handle_at` (without
//! `CAP_DAC_READ_SEARCH`), `mount`, `unshare`, `setns` and namespace flags of `clone` (without
//! `CAP_SYS_ADMIN`; `clone3` answers `ENOSYS` so libc falls back to `clone`), `ptrace` on
//! kernels before 4.8, and sockets of the `AF_VSOCK` family. Syscalls gated on a capability
//! are allowed only when the container's bounding set has it, so `--cap-add SYS_ADMIN` opens
//! `mount` as it does with Docker.
//!
//! A profile file (`--security-opt seccomp=FILE`) may be in Docker's format (`archMap`,
//! `includes`/`excludes` per rule) or the OCI one (`architectures`); both go through the same
//! evaluation.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

/// `EPERM`, what a syscall outside the default profile returns.
const EPERM: u32 = 1;
/// `ENOSYS`, what `clone3` returns without `CAP_SYS_ADMIN` (libc then uses `clone`).
const ENOSYS: u32 = 38;
/// `AF_VSOCK`: sockets of this family are denied.
const AF_VSOCK: u64 = 40;
/// The namespace flags of `clone` (`CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS |
/// CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET`): without `CAP_SYS_ADMIN` a
/// `clone` must have none of them.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// The `personality` values programs ask for (`PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `PER_LINUX32 | UNAME26`, and the query `0xffffffff`).
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// Syscalls every container may make.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_time64",
    "futex_waitv",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls allowed only when the bounding set holds a capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Syscalls allowed only on some architectures (Go's names for them, as Docker's profile).
const BY_ARCH: &[(&[&str], &[&str])] = &[
    (&["ppc64le"], &["sync_file_range2", "swapcontext"]),
    (
        &["arm", "arm64"],
        &[
            "arm_fadvise64_64",
            "arm_sync_file_range",
            "sync_file_range2",
            "breakpoint",
            "cacheflush",
            "set_tls",
        ],
    ),
    (&["amd64", "x32"], &["arch_prctl"]),
    (&["amd64", "x32", "x86"], &["modify_ldt"]),
    (
        &["s390", "s390x"],
        &[
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ],
    ),
    (&["riscv64"], &["riscv_flush_icache"]),
];

/// Which seccomp filter a container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seccomp {
    /// Docker's default profile.
    #[default]
    Default,
    /// No filter (`--security-opt seccomp=unconfined`).
    Unconfined,
    /// A profile read from a file when the container was created (its JSON text), so later
    /// starts do not depend on the file.
    Custom(String),
}

impl Seccomp {
    /// Parses the value of `--security-opt seccomp=VALUE`: `unconfined`, `default` (accepted
    /// for clarity), or a profile file, which is read and checked now.
    ///
    /// # Errors
    /// An unreadable file, or one that is not a seccomp profile.
    pub fn parse(value: &str) -> Result<Seccomp> {
        match value {
            "unconfined" => Ok(Seccomp::Unconfined),
            "default" | "builtin" => Ok(Seccomp::Default),
            path => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--security-opt seccomp={path}: reading the file"))?;
                Profile::from_json(&text)
                    .with_context(|| format!("--security-opt seccomp={path}"))?;
                Ok(Seccomp::Custom(text))
            }
        }
    }

    /// The spec's `linux.seccomp` for a container with bounding set `caps` on this machine
    /// (`None`: unconfined).
    ///
    /// # Errors
    /// A stored profile that no longer parses.
    pub fn to_spec(&self, caps: &[String]) -> Result<Option<Value>> {
        let profile = match self {
            Seccomp::Unconfined => return Ok(None),
            Seccomp::Default => Profile::docker_default(),
            Seccomp::Custom(text) => Profile::from_json(text)?,
        };
        Ok(Some(profile.to_oci(caps, &Host::this_machine())))
    }
}

/// What a rule's `includes` or `excludes` test.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Filter {
    /// Capabilities (all of them, for `includes`; any of them, for `excludes`).
    caps: Vec<String>,
    /// Architectures, Go's names (`amd64`, `arm64`, …).
    arches: Vec<String>,
    /// A kernel version, `MAJOR.MINOR`.
    min_kernel: Option<String>,
}

/// One rule: `names` get `action` when its conditions hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    /// Docker's older spelling of a rule with one syscall.
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    /// The OCI `args` objects (`index`, `value`, `valueTwo`, `op`), passed through.
    #[serde(default)]
    args: Option<Vec<Value>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

/// Docker's `archMap` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: String,
    #[serde(default)]
    sub_architectures: Option<Vec<String>>,
}

/// A seccomp profile, Docker's format or the OCI one.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    arch_map: Option<Vec<ArchMap>>,
    #[serde(default)]
    flags: Option<Vec<String>>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

/// What the rules are evaluated against.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Host {
    /// Go's name of the architecture (`amd64`).
    go_arch: &'static str,
    /// libseccomp's name of it (`SCMP_ARCH_X86_64`).
    scmp_arch: &'static str,
    /// The kernel's version, `(major, minor)`.
    kernel: (u32, u32),
}

impl Host {
    fn this_machine() -> Host {
        let (go_arch, scmp_arch) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
            "x86" => ("386", "SCMP_ARCH_X86"),
            "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
            "arm" => ("arm", "SCMP_ARCH_ARM"),
            "powerpc64" => ("ppc64le", "SCMP_ARCH_PPC64LE"),
            "s390x" => ("s390x", "SCMP_ARCH_S390X"),
            "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
            "mips64" => ("mips64", "SCMP_ARCH_MIPS64"),
            other => (other, ""),
        };
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Host {
            go_arch,
            scmp_arch,
            kernel: parse_kernel(&release).unwrap_or((0, 0)),
        }
    }
}

/// `MAJOR.MINOR` of a kernel release string (`6.18.44-foo`).
fn parse_kernel(s: &str) -> Option<(u32, u32)> {
    let mut it = s.trim().split(['.', '-']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The sub-architectures Docker's default profile adds for a native one.
fn sub_arches(scmp_arch: &str) -> &'static [&'static str] {
    match scmp_arch {
        "SCMP_ARCH_X86_64" => &["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "SCMP_ARCH_AARCH64" => &["SCMP_ARCH_ARM"],
        "SCMP_ARCH_MIPS64" => &["SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32"],
        "SCMP_ARCH_S390X" => &["SCMP_ARCH_S390"],
        _ => &[],
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

impl Rule {
    fn allow(names: &[&str]) -> Rule {
        Rule {
            names: strings(names),
            name: None,
            action: "SCMP_ACT_ALLOW".into(),
            errno_ret: None,
            args: None,
            includes: Filter::default(),
            excludes: Filter::default(),
        }
    }

    fn with_arg(mut self, index: u32, value: u64, op: &str) -> Rule {
        self.args = Some(vec![
            json!({"index": index, "value": value, "valueTwo": 0, "op": op}),
        ]);
        self
    }

    /// Whether the rule applies to a container with bounding set `caps` on `host`, as Docker
    /// decides it: every excluded condition must fail, every included one hold.
    fn applies(&self, caps: &[String], host: &Host) -> bool {
        let has = |c: &String| caps.iter().any(|x| x == c);
        let kernel_at_least = |v: &str| parse_kernel(v).is_some_and(|k| host.kernel >= k);
        let ex = &self.excludes;
        if ex.arches.iter().any(|a| a == host.go_arch)
            || ex.caps.iter().any(has)
            || ex.min_kernel.as_deref().is_some_and(kernel_at_least)
        {
            return false;
        }
        let inc = &self.includes;
        (inc.arches.is_empty() || inc.arches.iter().any(|a| a == host.go_arch))
            && inc.caps.iter().all(has)
            && inc.min_kernel.as_deref().is_none_or(kernel_at_least)
    }
}

impl Profile {
    /// Docker's default profile.
    fn docker_default() -> Profile {
        let mut rules = vec![Rule::allow(ALLOWED)];
        let mut ptrace = Rule::allow(&["process_vm_readv", "process_vm_writev", "ptrace"]);
        ptrace.includes.min_kernel = Some("4.8".into());
        rules.push(ptrace);
        rules.push(Rule::allow(&["socket"]).with_arg(0, AF_VSOCK, "SCMP_CMP_NE"));
        for p in PERSONALITIES {
            rules.push(Rule::allow(&["personality"]).with_arg(0, *p, "SCMP_CMP_EQ"));
        }
        for (arches, names) in BY_ARCH {
            let mut r = Rule::allow(names);
            r.includes.arches = strings(arches);
            rules.push(r);
        }
        for (cap, names) in BY_CAPABILITY {
            let mut r = Rule::allow(names);
            r.includes.caps = vec![(*cap).to_owned()];
            rules.push(r);
        }
        // Without CAP_SYS_ADMIN, clone without namespace flags (s390 swaps the first two
        // arguments of clone).
        let mut clone =
            Rule::allow(&["clone"]).with_arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ");
        clone.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
        clone.excludes.arches = strings(&["s390", "s390x"]);
        rules.push(clone);
        let mut clone_s390 =
            Rule::allow(&["clone"]).with_arg(1, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ");
        clone_s390.includes.arches = strings(&["s390", "s390x"]);
        clone_s390.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
        rules.push(clone_s390);
        // clone3 passes its flags in memory, which a filter cannot read: ENOSYS makes libc
        // fall back to clone, which the rule above checks.
        let mut clone3 = Rule::allow(&["clone3"]);
        clone3.action = "SCMP_ACT_ERRNO".into();
        clone3.errno_ret = Some(ENOSYS);
        clone3.excludes.caps = vec!["CAP_SYS_ADMIN".into()];
        rules.push(clone3);
        Profile {
            default_action: "SCMP_ACT_ERRNO".into(),
            default_errno_ret: Some(EPERM),
            architectures: None,
            arch_map: None,
            flags: None,
            syscalls: rules,
        }
    }

    /// Parses a profile file.
    ///
    /// # Errors
    /// Not JSON of that shape.
    fn from_json(text: &str) -> Result<Profile> {
        let p: Profile = serde_json::from_str(text).context("not a seccomp profile")?;
        if p.default_action.is_empty() {
            bail!("the seccomp profile has no defaultAction");
        }
        Ok(p)
    }

    /// The OCI `linux.seccomp` object.
    fn to_oci(&self, caps: &[String], host: &Host) -> Value {
        let architectures: Vec<String> = match (&self.architectures, &self.arch_map) {
            (Some(a), _) => a.clone(),
            (None, Some(map)) => map
                .iter()
                .find(|m| m.architecture == host.scmp_arch)
                .map(|m| {
                    std::iter::once(m.architecture.clone())
                        .chain(m.sub_architectures.clone().unwrap_or_default())
                        .collect()
                })
                .unwrap_or_default(),
            (None, None) if !host.scmp_arch.is_empty() => std::iter::once(host.scmp_arch)
                .chain(sub_arches(host.scmp_arch).iter().copied())
                .map(str::to_owned)
                .collect(),
            (None, None) => Vec::new(),
        };
        let syscalls: Vec<Value> = self
            .syscalls
            .iter()
            .filter(|r| r.applies(caps, host))
            .filter_map(|r| {
                let names: Vec<&String> = r.names.iter().chain(r.name.as_ref()).collect();
                if names.is_empty() {
                    return None;
                }
                let mut o = json!({"names": names, "action": r.action});
                if let Some(e) = r.errno_ret {
                    o["errnoRet"] = json!(e);
                }
                if let Some(a) = r.args.as_ref().filter(|a| !a.is_empty()) {
                    o["args"] = json!(a);
                }
                Some(o)
            })
            .collect();
        let mut out = json!({
            "defaultAction": self.default_action,
            "architectures": architectures,
            "syscalls": syscalls,
        });
        if let Some(e) = self.default_errno_ret {
            out["defaultErrnoRet"] = json!(e);
        }
        if let Some(f) = self.flags.as_ref().filter(|f| !f.is_empty()) {
            out["flags"] = json!(f);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64(kernel: (u32, u32)) -> Host {
        Host {
            go_arch: "amd64",
            scmp_arch: "SCMP_ARCH_X86_64",
            kernel,
        }
    }

    /// Every syscall name the spec allows, with the action of the rule that names it.
    fn allowed(spec: &Value) -> Vec<(String, String)> {
        spec["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                let action = r["action"].as_str().unwrap().to_owned();
                r["names"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |n| (n.as_str().unwrap().to_owned(), action.clone()))
            })
            .collect()
    }

    fn caps(v: &[&str]) -> Vec<String> {
        strings(v)
    }

    #[test]
    fn the_default_denies_keys_mounts_and_namespaces() {
        let spec = Profile::docker_default().to_oci(&caps(&["CAP_CHOWN"]), &amd64((6, 1)));
        assert_eq!(spec["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(spec["defaultErrnoRet"], 1);
        assert_eq!(
            spec["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        let names = allowed(&spec);
        let has = |n: &str| names.iter().any(|(x, a)| x == n && a == "SCMP_ACT_ALLOW");
        for denied in [
            "keyctl",
            "add_key",
            "request_key",
            "mount",
            "umount2",
            "unshare",
            "setns",
            "kexec_load",
            "open_by_handle_at",
            "init_module",
            "userfaultfd",
            "reboot",
        ] {
            assert!(!has(denied), "{denied} must be denied");
        }
        for ok in ["read", "execve", "ptrace", "arch_prctl", "socket", "clone"] {
            assert!(has(ok), "{ok} must be allowed");
        }
        assert!(!has("s390_runtime_instr") && !has("set_tls"));
        // clone only without namespace flags; clone3 answers ENOSYS.
        let clone = spec["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["names"] == json!(["clone"]))
            .unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], CLONE_NAMESPACE_FLAGS);
        assert!(
            names
                .iter()
                .any(|(n, a)| n == "clone3" && a == "SCMP_ACT_ERRNO")
        );
    }

    #[test]
    fn capabilities_open_their_syscalls() {
        let spec = Profile::docker_default()
            .to_oci(&caps(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]), &amd64((6, 1)));
        let names = allowed(&spec);
        let has = |n: &str| names.iter().any(|(x, a)| x == n && a == "SCMP_ACT_ALLOW");
        assert!(has("mount") && has("unshare") && has("kcmp") && has("clone3"));
        // The restricted clone rule is left out: clone is allowed whole.
        assert!(
            !spec["syscalls"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["names"] == json!(["clone"]) && r.get("args").is_some())
        );
    }

    #[test]
    fn ptrace_needs_kernel_4_8() {
        let old = Profile::docker_default().to_oci(&[], &amd64((4, 4)));
        assert!(!allowed(&old).iter().any(|(n, _)| n == "ptrace"));
        let new = Profile::docker_default().to_oci(&[], &amd64((4, 8)));
        assert!(allowed(&new).iter().any(|(n, _)| n == "ptrace"));
    }

    #[test]
    fn a_docker_format_file_is_evaluated_the_same_way() {
        let text = r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
            "syscalls": [
                {"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_SYS_ADMIN"]}}
            ]
        }"#;
        let p = Profile::from_json(text).unwrap();
        let spec = p.to_oci(&[], &amd64((6, 1)));
        assert_eq!(
            spec["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])
        );
        assert_eq!(spec["syscalls"][0]["errnoRet"], 13);
        assert_eq!(spec["syscalls"][1]["names"], json!(["mkdir"]));
        assert!(spec.get("defaultErrnoRet").is_none());
        let with_admin = p.to_oci(&caps(&["CAP_SYS_ADMIN"]), &amd64((6, 1)));
        assert_eq!(with_admin["syscalls"].as_array().unwrap().len(), 1);
        assert!(Profile::from_json("{\"syscalls\": []}").is_err());
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_kernel("6.18.44-fc-v1272\n"), Some((6, 18)));
        assert_eq!(parse_kernel("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel("x"), None);
    }
}
