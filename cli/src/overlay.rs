//! `strata-overlayfs` (also `strata overlay-mount`): fuse-overlayfs's command line over the
//! strata union, so containers/storage (podman, buildah) can use strata as its `mount_program`.
//!
//! The contract (`../shared/docs/peers-unionfs.md`, section d): `PROG [-f] [-d] -o OPTS MNT`
//! (the last positional argument is the mountpoint; `mount.fuse3` puts a source first), options
//! `lowerdir=L1:L2` (top first, `\:` escapes a colon), `upperdir=`, `workdir=`, and many more
//! that must be accepted (unknown ones are warned about, never fatal); quoted values may hold
//! commas (`context="a:b,c"`). The process exits 0 only once the mount is live, then serves in
//! the background until `fusermount3 -u`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use unionfs::idmap::parse_ranges;
use unionfs::{DirTree, IdMap, LowerTree, UnionConfig, UpperDirs};

/// The drop-in's mount type in `/proc/mounts` is `fuse.` and this.
pub const DROPIN_SUBTYPE: &str = "strata-overlayfs";

/// Options a drop-in must accept (fuse-overlayfs 1.x and 2.0); those strata acts on are parsed
/// below, the rest are accepted silently.
const ACCEPTED: &[&str] = &[
    "lowerdir",
    "upperdir",
    "workdir",
    "uidmapping",
    "gidmapping",
    "squash_to_root",
    "squash_to_uid",
    "squash_to_gid",
    "xattr_permissions",
    "context",
    "volatile",
    "fsync",
    "noacl",
    "static_nlink",
    "timeout",
    "threaded",
    "writeback",
    "fast_ino",
    "noxattrs",
    "plugins",
    "xino",
    "ino32_t",
    "redirect_dir",
    "allow_other",
    "allow_root",
    "default_permissions",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "kernel_cache",
    "max_write",
    "ro",
    "rw",
    "debug",
    "splice_read",
    "splice_write",
    "splice_move",
    "metacopy",
    "index",
    "userxattr",
];

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// `-V`/`--version`.
    Version,
    /// `-h`/`--help`.
    Help,
    /// Mount.
    Mount(OverlayOptions),
}

/// What a mount asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayOptions {
    /// Lower directories, top first.
    pub lowerdirs: Vec<PathBuf>,
    /// Upper directory.
    pub upperdir: Option<PathBuf>,
    /// Work directory.
    pub workdir: Option<PathBuf>,
    /// Mountpoint.
    pub mountpoint: PathBuf,
    /// `-f`: stay in the foreground.
    pub foreground: bool,
    /// `-d` / `debug`.
    pub debug: bool,
    /// `volatile` or `fsync=0`: `fsync` returns at once.
    pub no_fsync: bool,
    /// `ro`.
    pub read_only: bool,
    /// `allow_other` (also the default as root, as fuse-overlayfs does).
    pub allow_other: bool,
    /// `redirect_dir=off`.
    pub redirect_dir_off: bool,
    /// `metacopy=off`.
    pub metacopy_off: bool,
    /// `uidmapping=`/`gidmapping=`/`squash_*`: ids shown inside the mount vs ids on disk.
    pub id_map: IdMap,
    /// Warnings for the user (unknown options, accepted-but-ignored ones).
    pub warnings: Vec<String>,
}

/// The value of `squash_to_uid=`/`squash_to_gid=`.
fn parse_id(key: &str, v: &str) -> Result<u32> {
    v.trim()
        .parse()
        .with_context(|| format!("{key}={v}: not an id (a number 0..4294967295)"))
}

/// Splits `-o` text at commas outside double quotes; quotes are removed, `\,` keeps a comma.
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' => {
                if let Some(n) = chars.next() {
                    // Keep the escape for `\:` (lowerdir splits on it later), drop it otherwise.
                    if n == ':' {
                        cur.push('\\');
                    }
                    cur.push(n);
                }
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|o| !o.is_empty()).collect()
}

/// Splits a `lowerdir=` value at `:` except where escaped as `\:`.
pub fn split_lowerdir(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|d| !d.is_empty()).collect()
}

/// Parses fuse-overlayfs's argv (without the program name).
///
/// # Errors
/// No mountpoint, no lowerdir, `redirect_dir` other than `off`, an `-o` without a value.
pub fn parse_args(args: &[OsString]) -> Result<Invocation> {
    let mut opts = OverlayOptions {
        allow_other: crate::is_root(),
        ..Default::default()
    };
    let mut positional: Vec<PathBuf> = Vec::new();
    let mut raw_opts: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        match s.as_ref() {
            "-V" | "--version" => return Ok(Invocation::Version),
            "-h" | "--help" => return Ok(Invocation::Help),
            "-f" | "--foreground" => opts.foreground = true,
            "-d" | "--debug" => {
                opts.debug = true;
                opts.foreground = true;
            }
            "-o" => {
                let v = it
                    .next()
                    .context("-o needs a value: -o lowerdir=…,upperdir=…")?;
                raw_opts.extend(split_options(&v.to_string_lossy()));
            }
            o if o.starts_with("-o") && o.len() > 2 => raw_opts.extend(split_options(&o[2..])),
            o if o.starts_with('-') && o.len() > 1 => {
                opts.warnings.push(format!("unknown argument ignored: {o}"));
            }
            _ => positional.push(PathBuf::from(a)),
        }
    }
    for o in raw_opts {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (o.clone(), None),
        };
        match (k.as_str(), v) {
            ("lowerdir", Some(v)) => {
                opts.lowerdirs = split_lowerdir(&v).into_iter().map(PathBuf::from).collect();
            }
            ("upperdir", Some(v)) => opts.upperdir = Some(PathBuf::from(v)),
            ("workdir", Some(v)) => opts.workdir = Some(PathBuf::from(v)),
            ("volatile", _) => opts.no_fsync = true,
            ("fsync", Some(v)) => opts.no_fsync = v == "0",
            ("ro", _) => opts.read_only = true,
            ("rw", _) => opts.read_only = false,
            ("allow_other" | "allow_root", _) => opts.allow_other = true,
            ("debug", _) => opts.debug = true,
            ("redirect_dir", Some(v)) if v == "off" => opts.redirect_dir_off = true,
            ("metacopy", Some(v)) if v == "off" => opts.metacopy_off = true,
            ("metacopy", Some(v)) if v == "on" => opts.metacopy_off = false,
            ("metacopy", v) => bail!(
                "metacopy={}: use metacopy=on or metacopy=off",
                v.unwrap_or_default()
            ),
            ("redirect_dir", v) => bail!(
                "redirect_dir={}: only redirect_dir=off is supported (as fuse-overlayfs)",
                v.unwrap_or_default()
            ),
            ("uidmapping", Some(v)) => {
                opts.id_map.uids = parse_ranges(&v).context("uidmapping=")?;
            }
            ("gidmapping", Some(v)) => {
                opts.id_map.gids = parse_ranges(&v).context("gidmapping=")?;
            }
            ("squash_to_root", _) => {
                opts.id_map.squash_uid.get_or_insert(0);
                opts.id_map.squash_gid.get_or_insert(0);
            }
            ("squash_to_uid", Some(v)) => opts.id_map.squash_uid = Some(parse_id(&k, &v)?),
            ("squash_to_gid", Some(v)) => opts.id_map.squash_gid = Some(parse_id(&k, &v)?),
            (k, _) if ACCEPTED.contains(&k) => {}
            (k, _) => opts.warnings.push(format!("unknown argument ignored: {k}")),
        }
    }
    opts.mountpoint = positional
        .pop()
        .context("no mountpoint given: PROG -o lowerdir=…,upperdir=…,workdir=… MOUNTPOINT")?;
    if opts.lowerdirs.is_empty() {
        bail!("no lowerdir= given: -o lowerdir=L1:L2[,upperdir=U,workdir=W]");
    }
    if opts.upperdir.is_some() != opts.workdir.is_some() {
        bail!("upperdir= and workdir= go together");
    }
    Ok(Invocation::Mount(opts))
}

/// The `--version` text (podman shows it as is in `podman info`).
pub fn version_text() -> String {
    format!(
        "strata-overlayfs: version {v}\nfuse-overlayfs: version 1.10 (compatible command line)\nFUSE library version fuser 0.18\nusing FUSE kernel interface version 7.31\n",
        v = env!("CARGO_PKG_VERSION")
    )
}

const HELP: &str =
    "usage: strata-overlayfs [-f] [-d] -o lowerdir=L1:L2[,upperdir=U,workdir=W][,…] MOUNTPOINT
A drop-in for fuse-overlayfs (containers/storage's mount_program) built on strata's union.
  -f   stay in the foreground     -d   debug (implies -f)     -V   version";

/// Runs the drop-in with `args` (without the program name).
///
/// # Errors
/// Bad arguments, unusable directories, a failed mount.
pub fn run(args: &[OsString]) -> Result<ExitCode> {
    let o = match parse_args(args)? {
        Invocation::Version => {
            print!("{}", version_text());
            return Ok(ExitCode::SUCCESS);
        }
        Invocation::Help => {
            println!("{HELP}");
            return Ok(ExitCode::SUCCESS);
        }
        Invocation::Mount(o) => o,
    };
    for w in &o.warnings {
        eprintln!("{w}");
    }
    let mut dirs: Vec<&std::path::Path> = o.lowerdirs.iter().map(PathBuf::as_path).collect();
    dirs.extend(o.upperdir.as_deref());
    dirs.extend(o.workdir.as_deref());
    let mnt = crate::union::check_mountpoint(&o.mountpoint, &dirs)?;
    if !o.foreground {
        // The temp dir itself (sticky, world-writable): a fixed subdir made by one user would
        // lock the others out.
        crate::union::spawn_background(&std::env::temp_dir())?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut lowers: Vec<Arc<dyn LowerTree>> = Vec::new();
    for d in &o.lowerdirs {
        lowers.push(Arc::new(
            DirTree::open(d).with_context(|| format!("lowerdir {}", d.display()))?,
        ));
    }
    let upper = match (&o.upperdir, &o.workdir, o.read_only) {
        (Some(u), Some(w), false) => Some(UpperDirs {
            upper: u.clone(),
            work: w.clone(),
        }),
        _ => None,
    };
    // Source `fuse-overlayfs` as fuse-overlayfs shows it, type `fuse.strata-overlayfs` so the
    // drop-in's mounts can be told apart from fuse-overlayfs's (`fuse.fuse-overlayfs`).
    // containers/storage checks neither: it finds its mounts by statfs's FUSE magic and the
    // mountpoint, and unmounts with `fusermount3 -u`.
    let mut options = crate::union::cli_mount_options("fuse-overlayfs");
    options.subtype = Some(DROPIN_SUBTYPE.into());
    options.allow_other = o.allow_other;
    // fuse-overlayfs's durability: copy-ups are not fsynced (kernel overlayfs and `strata
    // container mount` do fsync them), and `fsync=0`/`volatile` makes `fsync` a no-op.
    options.fsync_copy_up = false;
    options.ignore_fsync = o.no_fsync;
    options.redirect_dir = !o.redirect_dir_off;
    options.metacopy = !o.metacopy_off;
    options.id_map = o.id_map;
    crate::union::serve_foreground(
        UnionConfig {
            lowers,
            upper,
            options,
        },
        &mnt,
        None,
    )?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[&str]) -> Result<Invocation> {
        parse_args(&s.iter().map(OsString::from).collect::<Vec<_>>())
    }

    fn mount(s: &[&str]) -> OverlayOptions {
        match parse(s).unwrap() {
            Invocation::Mount(o) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn containers_storage_command_line() {
        let o = mount(&[
            "-o",
            "lowerdir=/s/l/A:/s/l/B,upperdir=/s/x/diff,workdir=/s/x/work,volatile,context=\"system_u:object_r:container_file_t:s0:c1,c2\",uidmapping=0:1000:1:1:100000:65536,gidmapping=0:1000:1,xattr_permissions=2",
            "/s/x/merged",
        ]);
        assert_eq!(
            o.lowerdirs,
            [PathBuf::from("/s/l/A"), PathBuf::from("/s/l/B")]
        );
        assert_eq!(
            o.upperdir.as_deref(),
            Some(std::path::Path::new("/s/x/diff"))
        );
        assert_eq!(
            o.workdir.as_deref(),
            Some(std::path::Path::new("/s/x/work"))
        );
        assert_eq!(o.mountpoint, PathBuf::from("/s/x/merged"));
        assert!(o.no_fsync);
        assert_eq!(o.id_map.uids.len(), 2);
        assert_eq!(
            (o.id_map.shown_uid(0), o.id_map.shown_uid(1)),
            (1000, 100000)
        );
        assert_eq!(o.id_map.disk_gid(1000), 0);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
    }

    #[test]
    fn escaped_colons_quotes_and_flags() {
        let o = mount(&[
            "-f",
            "-o",
            r"lowerdir=/a\:b:/c,fsync=0",
            "-o",
            "ro",
            "src",
            "/mnt",
        ]);
        assert_eq!(o.lowerdirs, [PathBuf::from("/a:b"), PathBuf::from("/c")]);
        assert!(o.foreground && o.no_fsync && o.read_only);
        assert_eq!(
            o.mountpoint,
            PathBuf::from("/mnt"),
            "the last positional is the mountpoint"
        );
        let o = mount(&["-olowerdir=/l", "-d", "/m"]);
        assert!(o.debug && o.foreground);
        assert_eq!(split_options(r#"a="x,y",b\,c,d"#), ["a=x,y", "b,c", "d"]);
    }

    #[test]
    fn every_documented_option_is_accepted_and_unknown_ones_warned() {
        let all = "lowerdir=/l,noacl,static_nlink,timeout=1,threaded=1,writeback=1,fast_ino=1,\
                   noxattrs=1,plugins=x,xino=auto,ino32_t,redirect_dir=off,allow_other,allow_root,\
                   default_permissions,suid,nosuid,dev,nodev,exec,noexec,atime,noatime,diratime,\
                   nodiratime,splice_read,kernel_cache,max_write=4096,rw,debug,squash_to_root,\
                   squash_to_uid=1000,squash_to_gid=1000";
        let o = mount(&["-o", all, "/m"]);
        assert!(o.redirect_dir_off);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        // squash_to_uid/gid win over squash_to_root, in either order (fuse-overlayfs).
        assert_eq!(
            (o.id_map.squash_uid, o.id_map.squash_gid),
            (Some(1000), Some(1000))
        );
        let o = mount(&["-o", "lowerdir=/l,squash_to_root", "/m"]);
        assert_eq!((o.id_map.shown_uid(1234), o.id_map.shown_gid(5)), (0, 0));
        let o = mount(&["-o", "lowerdir=/l,lazytime,frobnicate=1", "--weird", "/m"]);
        assert_eq!(o.warnings.len(), 3, "{:?}", o.warnings);
        assert!(o.warnings[0].starts_with("unknown argument ignored"));
    }

    #[test]
    fn bad_command_lines() {
        assert!(parse(&["-o", "lowerdir=/l"]).is_err(), "no mountpoint");
        assert!(
            parse(&["-o", "upperdir=/u,workdir=/w", "/m"]).is_err(),
            "no lowerdir"
        );
        assert!(
            parse(&["-o", "lowerdir=/l,upperdir=/u", "/m"]).is_err(),
            "upper without work"
        );
        assert!(parse(&["-o", "lowerdir=/l,redirect_dir=on", "/m"]).is_err());
        for bad in [
            "uidmapping=0:1000",
            "gidmapping=0:x:1",
            "uidmapping=0:1000:0",
            "squash_to_uid=-1",
        ] {
            let e = parse(&["-o", &format!("lowerdir=/l,{bad}"), "/m"]).unwrap_err();
            let chain = format!("{e:#}");
            assert!(chain.contains(bad.split('=').next().unwrap()), "{chain}");
        }
        assert!(parse(&["-o"]).is_err());
        assert_eq!(parse(&["-V"]).unwrap(), Invocation::Version);
        assert!(version_text().contains("fuse-overlayfs: version"));
    }
}
