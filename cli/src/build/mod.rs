//! `strata build`: Dockerfile parsing, stages, the step runner and the cache.
//!
//! # How a build runs
//!
//! 1. [`dockerfile::parse`] turns the file into stages of owned instructions (errors name the
//!    file, line and column).
//! 2. The planner picks the target stage (`--target`, else the last) and the stages it needs
//!    (`FROM stage`, `COPY --from=stage`); other stages are skipped.
//! 3. Each needed stage starts from its base (an image in the store, an earlier stage, or
//!    `scratch`) and runs its steps in order; a base without PATH gets the default one, as
//!    BuildKit does. The state between steps is the exact config bytes of the image so far plus
//!    the ARG values in scope.
//! 4. A step's cache key is sha256 over the parent config's digest, the instruction after
//!    ARG/ENV expansion, the ARG values in scope and, for COPY/ADD, one line per copied item
//!    (path, kind, mode, owner, content sha256: never an mtime). A hit continues from the
//!    cached config (table `build_cache`), so a fully cached build yields the same ImageID; a
//!    miss runs the step and every later step misses too (their parent config changed).
//! 5. RUN: the current config becomes a (temporary) image, a container of it runs the command
//!    through runc exactly as `strata run` does, its upper is committed as one layer with
//!    `layerstore::commit` and the container is removed. COPY/ADD need no container: the layer
//!    tar is written straight from the sources ([`copy`]). Metadata instructions only edit the
//!    config. Every step adds a history entry in BuildKit's style (`RUN /bin/sh -c … #
//!    buildkit`, `COPY a b # buildkit`, metadata verbatim, comment `buildkit.dockerfile.v0`).
//!    Following BuildKit, a RUN or WORKDIR that changes no file makes no layer: its history
//!    entry has `empty_layer: true`.
//! 6. The target stage's final config is added as an image and tagged.

pub mod context;
pub mod copy;
pub mod dockerfile;
pub mod expand;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use layerstore::commit::{CommitEntry, CommitKind};
use layerstore::image::now_rfc3339;
use layerstore::{Digest, History, ImageConfig, Store};

use crate::Globals;
use crate::runtime::{DEFAULT_PATH, RunSettings};
use context::Context;
use dockerfile::{CmdForm, Dockerfile, Inst, Kind, Stage};
use expand::{Vars, expand, key_values, word};
use view::ImageView;

/// `comment` of every history entry a build writes (BuildKit's).
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
/// Suffix BuildKit puts on `created_by` of steps that make layers.
const BUILDKIT_SUFFIX: &str = " # buildkit";
/// The shell of shell-form RUN/CMD/ENTRYPOINT when no SHELL is set.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// Versions the cache key format: bump to invalidate every stored key.
const CACHE_KEY_VERSION: &[u8] = b"strata-build-cache-v1\n";
/// Files the runtime creates in the rootfs as mount points (bind mounts of the host's); an
/// empty one that the image did not have is not a change of the RUN command.
const RUNTIME_MOUNT_FILES: &[&str] = &["etc/resolv.conf", "etc/hosts"];
/// Stage name that means "no base image".
const SCRATCH: &str = "scratch";

/// What `strata build` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Dockerfile.
    pub dockerfile: PathBuf,
    /// The context directory.
    pub context: PathBuf,
    /// `--target`.
    pub target: Option<String>,
    /// `--build-arg K=V`.
    pub build_args: BTreeMap<String, String>,
    /// `--no-cache`.
    pub no_cache: bool,
}

/// What a build made.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The image.
    pub id: Digest,
    /// Steps run (FROM lines included).
    pub steps: usize,
    /// Steps answered by the cache.
    pub cached: usize,
}

/// The state of a stage between steps.
#[derive(Debug)]
struct StageState {
    /// The config so far, parsed.
    cfg: ImageConfig,
    /// Its exact bytes (the cache chains on their digest).
    bytes: Vec<u8>,
    /// The store image the stage started from.
    base_id: Option<Digest>,
    /// ARG values in scope.
    args: Vars,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
}

impl StageState {
    /// ARGs overlaid by the config's ENV: what `$VAR` means in this step.
    fn vars(&self) -> Vars {
        let mut v = self.args.clone();
        for e in self
            .cfg
            .config
            .as_ref()
            .and_then(|c| c.env.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some((k, val)) = e.split_once('=') {
                v.insert(k.to_owned(), val.to_owned());
            }
        }
        v
    }

    fn workdir(&self) -> String {
        self.cfg
            .config
            .as_ref()
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".to_owned())
    }

    fn shell(&self) -> Vec<String> {
        self.cfg
            .config
            .as_ref()
            .and_then(|c| c.shell.clone())
            .unwrap_or_else(|| DEFAULT_SHELL.iter().map(|s| (*s).to_owned()).collect())
    }

    fn set_bytes(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.cfg = ImageConfig::parse(&bytes).context("a cached build config")?;
        self.bytes = bytes;
        Ok(())
    }
}

/// Everything the steps share.
struct Run<'a> {
    g: &'a Globals,
    store: &'a Store,
    opts: &'a Options,
    ctx: Context,
    /// Final configs of the stages built so far, by index.
    done: BTreeMap<usize, Vec<u8>>,
    df: &'a Dockerfile,
    /// Global ARG values (after `--build-arg`).
    global: Vars,
    step: usize,
    total: usize,
    cached: usize,
    tmp: tempfile::TempDir,
}

/// Finds a stage by `AS` name or index.
fn stage_index(df: &Dockerfile, name: &str) -> Option<usize> {
    let lower = name.to_ascii_lowercase();
    df.stages
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
        .map(|s| s.index)
        .or_else(|| name.parse::<usize>().ok().filter(|i| *i < df.stages.len()))
}

fn flag<'a>(flags: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    flags
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

/// The global ARGs with `--build-arg` overrides.
fn global_vars(df: &Dockerfile, build_args: &BTreeMap<String, String>) -> Result<Vars> {
    let mut v = Vars::new();
    for a in &df.global_args {
        let Kind::Arg(raw) = &a.kind else {
            bail!("line {}: only ARG may come before the first FROM", a.line);
        };
        for (k, d) in key_values(raw, &v, "ARG")? {
            let val = build_args.get(&k).cloned().or(d).unwrap_or_default();
            v.insert(k, val);
        }
    }
    Ok(v)
}

/// The stages the target needs, in build order.
fn needed_stages(df: &Dockerfile, target: usize, global: &Vars) -> Result<Vec<usize>> {
    let mut need = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if !need.insert(i) {
            continue;
        }
        let s = &df.stages[i];
        let mut deps = Vec::new();
        if let Kind::From { image } = &s.from.kind {
            deps.push(word(image, global)?);
        }
        for st in &s.steps {
            if let Kind::Copy { flags, .. } = &st.kind
                && let Some(f) = flag(flags, "from")
            {
                deps.push(word(f, global)?);
            }
        }
        for d in deps {
            if let Some(j) = stage_index(df, &d)
                && j < i
            {
                todo.push(j);
            }
        }
    }
    Ok(need.into_iter().collect())
}

/// Runs a build.
///
/// # Errors
/// A parse error, an unknown base image or stage, a failing step (the message names the step,
/// its line and the exit code; nothing is tagged and no container is left).
pub fn build(g: &Globals, store: &Store, opts: &Options) -> Result<Outcome> {
    let text = std::fs::read_to_string(&opts.dockerfile).with_context(|| {
        format!(
            "reading {}; give the Dockerfile with -f",
            opts.dockerfile.display()
        )
    })?;
    let df = dockerfile::parse(&text, &opts.dockerfile)?;
    let global = global_vars(&df, &opts.build_args)?;
    let target = match &opts.target {
        Some(t) => stage_index(&df, t).with_context(|| {
            format!(
                "--target {t}: no stage of that name in {}",
                opts.dockerfile.display()
            )
        })?,
        None => df.stages.len() - 1,
    };
    let order = needed_stages(&df, target, &global)?;
    let total = order.iter().map(|i| df.stages[*i].steps.len() + 1).sum();
    let ctx = Context::open(&opts.context)?;
    let tmp = tempfile::Builder::new()
        .prefix("strata-build-")
        .tempdir()
        .context("creating a scratch directory for the build")?;
    let mut run = Run {
        g,
        store,
        opts,
        ctx,
        done: BTreeMap::new(),
        df: &df,
        global,
        step: 0,
        total,
        cached: 0,
        tmp,
    };
    let mut last = None;
    for i in order {
        let st = run.stage(&df.stages[i])?;
        run.done.insert(i, st.bytes.clone());
        last = Some(st);
    }
    let st = last.context("no stage to build")?;
    let id = store
        .add_image(&st.bytes, st.base_id.as_ref())
        .context("recording the built image")?;
    Ok(Outcome {
        id,
        steps: run.step,
        cached: run.cached,
    })
}

/// Makes sure history has one entry per layer before a build appends to it.
fn align_history(cfg: &mut ImageConfig) {
    if cfg.history.is_empty() && !cfg.rootfs.diff_ids.is_empty() {
        cfg.history = cfg
            .rootfs
            .diff_ids
            .iter()
            .map(|_| History {
                created: cfg.created.clone(),
                ..Default::default()
            })
            .collect();
    }
}

/// The config's environment sets PATH.
fn env_has_path(cfg: &ImageConfig) -> bool {
    cfg.config
        .as_ref()
        .and_then(|c| c.env.as_ref())
        .is_some_and(|env| env.iter().any(|e| e.starts_with("PATH=")))
}

/// The shell-or-exec argv of a command.
fn argv(form: &CmdForm, shell: &[String]) -> Vec<String> {
    match form {
        CmdForm::Exec(v) => v.clone(),
        CmdForm::Shell(s) => shell.iter().cloned().chain([s.clone()]).collect(),
    }
}

/// Go-style durations (`30s`, `1m30s`, `500ms`) in nanoseconds.
fn duration_ns(s: &str) -> Result<i64> {
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .with_context(|| format!("duration {s:?} lacks a unit (s, m, h, ms)"))?;
        let num: f64 = rest[..n]
            .parse()
            .with_context(|| format!("bad duration {s:?}"))?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            other => bail!("duration {s:?}: unknown unit {other:?}"),
        };
        total += num * mult;
        rest = &rest[u..];
    }
    Ok(total as i64)
}

impl Run<'_> {
    fn print_step(&mut self, inst: &Inst) {
        self.step += 1;
        eprintln!("STEP {}/{}: {}", self.step, self.total, inst.text);
    }

    fn stage(&mut self, s: &Stage) -> Result<StageState> {
        self.print_step(&s.from);
        let Kind::From { image } = &s.from.kind else {
            bail!("line {}: a stage must start with FROM", s.from.line);
        };
        let image = word(image, &self.global)?;
        let (bytes, base_id) = if image.eq_ignore_ascii_case(SCRATCH) {
            (ImageConfig::new_for_host(Vec::new()).to_bytes(), None)
        } else if let Some(j) = stage_index(self.df, &image).filter(|j| *j < s.index) {
            let b = self
                .done
                .get(&j)
                .cloned()
                .with_context(|| format!("stage {image} was not built"))?;
            (b, None)
        } else {
            let rec = self.store.resolve_image(&image).with_context(|| {
                format!(
                    "{}:{}: FROM {image}: the image is not in the store; pull or import it \
                     first (strata pull {image})",
                    self.opts.dockerfile.display(),
                    s.from.line
                )
            })?;
            // The build's lease holds its layers: an `rmi` meanwhile cannot take them away.
            self.store.hold_image(&rec.id)?;
            (rec.config.clone(), Some(rec.id))
        };
        let mut cfg = ImageConfig::parse(&bytes)
            .with_context(|| format!("the config of the base image {image}"))?;
        eprintln!("--> {}", Digest::of(&bytes).short());
        // As BuildKit ("make sure that PATH is always set") and buildah: a stage whose base has
        // no PATH (scratch, an imported rootfs) gets the default one in its config.
        let bytes = if env_has_path(&cfg) {
            bytes
        } else {
            cfg.run_config_mut()
                .env
                .get_or_insert_with(Vec::new)
                .push(DEFAULT_PATH.to_owned());
            cfg.to_bytes()
        };
        let mut st = StageState {
            cfg,
            bytes,
            base_id,
            args: Vars::new(),
            cmd_set: false,
        };
        for inst in &s.steps {
            self.print_step(inst);
            self.step_of(&mut st, inst).with_context(|| {
                format!(
                    "step {}/{} ({}:{}) {}",
                    self.step,
                    self.total,
                    self.opts.dockerfile.display(),
                    inst.line,
                    inst.text
                )
            })?;
        }
        Ok(st)
    }

    /// The cache key of a step.
    fn key(&self, st: &StageState, text: &str, extra: &[String]) -> Digest {
        let mut h = layerstore::digest::Hasher::new();
        h.update(CACHE_KEY_VERSION);
        h.update(Digest::of(&st.bytes).to_string().as_bytes());
        h.update(b"\n");
        h.update(text.as_bytes());
        h.update(b"\n");
        for (k, v) in &st.args {
            h.update(format!("ARG {k}={v}\n").as_bytes());
        }
        for l in extra {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        h.finish()
    }

    /// Looks the key up (unless `--no-cache`); on a hit, moves the stage on.
    fn try_cache(&mut self, st: &mut StageState, key: &Digest) -> Result<bool> {
        if self.opts.no_cache {
            return Ok(false);
        }
        let Some(hit) = self.store.build_cache_lookup(key)? else {
            return Ok(false);
        };
        st.set_bytes(hit.config)?;
        self.cached += 1;
        eprintln!("--> CACHED {}", Digest::of(&st.bytes).short());
        Ok(true)
    }

    /// Records the step's result: history, `created`, new bytes, cache row.
    fn finish(
        &mut self,
        st: &mut StageState,
        key: &Digest,
        created_by: String,
        layer: Option<Digest>,
    ) -> Result<()> {
        let now = now_rfc3339();
        align_history(&mut st.cfg);
        if let Some(d) = &layer {
            st.cfg.rootfs.diff_ids.push(*d);
        }
        st.cfg.history.push(History {
            created: Some(now.clone()),
            author: None,
            created_by: Some(created_by),
            comment: Some(HISTORY_COMMENT.to_owned()),
            empty_layer: layer.is_none(),
        });
        st.cfg.created = Some(now);
        st.bytes = st.cfg.to_bytes();
        self.store
            .build_cache_insert(key, &st.bytes, layer.as_ref())
            .context("recording the step in the build cache")?;
        match layer {
            Some(d) => eprintln!(
                "--> {} (layer {})",
                Digest::of(&st.bytes).short(),
                d.short()
            ),
            None => eprintln!("--> {}", Digest::of(&st.bytes).short()),
        }
        Ok(())
    }

    fn step_of(&mut self, st: &mut StageState, inst: &Inst) -> Result<()> {
        let vars = st.vars();
        let kw = inst.keyword();
        // The instruction's arguments as written, after the keyword.
        let rest = inst
            .text
            .split_once(char::is_whitespace)
            .map(|(_, r)| r.trim().to_owned())
            .unwrap_or_default();
        match &inst.kind {
            Kind::Run(form) => {
                let args = argv(form, &st.shell());
                let created_by = format!("RUN {}{BUILDKIT_SUFFIX}", args.join(" "));
                let key = self.key(st, &created_by, &[]);
                if self.try_cache(st, &key)? {
                    return Ok(());
                }
                let layer = self.run_command(st, args)?;
                self.finish(st, &key, created_by, layer)
            }
            Kind::Copy {
                add,
                flags,
                srcs,
                dest,
            } => {
                for (n, _) in flags {
                    if !matches!(n.as_str(), "from" | "chown" | "chmod") {
                        bail!("{kw} --{n} is not supported (only --from, --chown, --chmod)");
                    }
                }
                let srcs: Vec<String> =
                    srcs.iter().map(|s| word(s, &vars)).collect::<Result<_>>()?;
                let dest = word(dest, &vars)?;
                let from = flag(flags, "from").map(|f| word(f, &vars)).transpose()?;
                let chown = flag(flags, "chown").map(|f| word(f, &vars)).transpose()?;
                let chmod = flag(flags, "chmod").map(|f| word(f, &vars)).transpose()?;
                let target = ImageView::open(self.store, &st.bytes)?;
                let from_view = match &from {
                    None => None,
                    Some(f) => Some(self.source_view(f)?),
                };
                let source = match &from_view {
                    Some(v) => copy::SourceFs::Image(v),
                    None => copy::SourceFs::Context(&self.ctx),
                };
                let workdir = st.workdir();
                let spec = copy::CopySpec {
                    add: *add,
                    srcs: &srcs,
                    dest: &dest,
                    workdir: &workdir,
                    chown: chown.as_deref(),
                    chmod: chmod.as_deref(),
                };
                let plan = copy::plan(&spec, &source, &target, self.tmp.path())?;
                let created_by = format!("{kw} {}{BUILDKIT_SUFFIX}", expand(&rest, &vars)?);
                let key = self.key(st, &created_by, &plan.key_lines);
                if self.try_cache(st, &key)? {
                    return Ok(());
                }
                let info = self
                    .store
                    .commit_layer(plan.entries)
                    .context("writing the layer")?;
                self.finish(st, &key, created_by, Some(info.diff_id))
            }
            Kind::Workdir(raw) => {
                let w = word(raw, &vars)?;
                let abs = if w.starts_with('/') {
                    w
                } else {
                    format!("{}/{w}", st.workdir())
                };
                let abs = format!("/{}", context::clean(&abs));
                let created_by = format!("WORKDIR {abs}");
                let key = self.key(st, &created_by, &[]);
                if self.try_cache(st, &key)? {
                    return Ok(());
                }
                st.cfg.run_config_mut().working_dir = Some(abs.clone());
                let view = ImageView::open(self.store, &st.bytes)?;
                let layer = if view.lookup(&abs, true).is_some() {
                    None
                } else {
                    Some(self.make_dirs(&view, &abs)?)
                };
                self.finish(st, &key, created_by, layer)
            }
            Kind::Arg(raw) => {
                let mut shown = Vec::new();
                for (k, d) in key_values(raw, &vars, "ARG")? {
                    let val = self
                        .opts
                        .build_args
                        .get(&k)
                        .cloned()
                        .or(d)
                        .or_else(|| self.global.get(&k).cloned());
                    shown.push(match &val {
                        Some(v) => format!("{k}={v}"),
                        None => k.clone(),
                    });
                    st.args.insert(k, val.unwrap_or_default());
                }
                let created_by = format!("ARG {}", shown.join(" "));
                let key = self.key(st, &created_by, &[]);
                if self.try_cache(st, &key)? {
                    return Ok(());
                }
                self.finish(st, &key, created_by, None)
            }
            _ => {
                let created_by = match &inst.kind {
                    Kind::Cmd(_)
                    | Kind::Entrypoint(_)
                    | Kind::Shell(_)
                    | Kind::Healthcheck { .. } => inst.text.clone(),
                    _ => format!("{kw} {}", expand(&rest, &vars)?),
                };
                let key = self.key(st, &created_by, &[]);
                if self.try_cache(st, &key)? {
                    return Ok(());
                }
                self.apply_meta(st, inst, &vars)?;
                self.finish(st, &key, created_by, None)
            }
        }
    }

    /// The view of `--from=NAME`: an earlier stage, else an image in the store.
    fn source_view(&self, name: &str) -> Result<ImageView> {
        if let Some(j) = stage_index(self.df, name) {
            let bytes = self.done.get(&j).with_context(|| {
                format!("--from={name}: that stage is not built before this one; stages can only copy from earlier stages")
            })?;
            return ImageView::open(self.store, bytes);
        }
        let rec = self.store.resolve_image(name).with_context(|| {
            format!("--from={name}: no stage of that name, and no such image in the store")
        })?;
        self.store.hold_image(&rec.id)?;
        ImageView::open(self.store, &rec.config)
    }

    /// A layer holding `abs` and its missing parents (0755, root).
    fn make_dirs(&self, view: &ImageView, abs: &str) -> Result<Digest> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        let rel = context::clean(abs);
        let mut entries = Vec::new();
        let mut cur = String::new();
        for c in rel.split('/') {
            cur = if cur.is_empty() {
                c.to_owned()
            } else {
                format!("{cur}/{c}")
            };
            let (mode, uid, gid, mtime) = match view.lookup(&cur, false) {
                Some(n) => (n.attr.perm, n.attr.uid, n.attr.gid, n.mtime()),
                None => (0o755, 0, 0, now),
            };
            entries.push(CommitEntry {
                path: cur.clone(),
                kind: CommitKind::Dir { opaque: false },
                mode,
                uid,
                gid,
                mtime,
                xattrs: Vec::new(),
                link_group: None,
            });
        }
        Ok(self.store.commit_layer(entries)?.diff_id)
    }

    /// Applies a metadata instruction to the config.
    fn apply_meta(&self, st: &mut StageState, inst: &Inst, vars: &Vars) -> Result<()> {
        let shell = st.shell();
        let cmd_set = st.cmd_set;
        let rc = st.cfg.run_config_mut();
        match &inst.kind {
            Kind::Env(raw) => {
                let env = rc.env.get_or_insert_with(Vec::new);
                for (k, v) in key_values(raw, vars, "ENV")? {
                    let prefix = format!("{k}=");
                    env.retain(|e| !e.starts_with(&prefix) && e != &k);
                    env.push(format!("{k}={}", v.unwrap_or_default()));
                }
            }
            Kind::Label(raw) => {
                let labels = rc.labels.get_or_insert_with(Default::default);
                for (k, v) in key_values(raw, vars, "LABEL")? {
                    labels.insert(k, v.unwrap_or_default());
                }
            }
            Kind::Expose(ports) => {
                let list: Vec<String> =
                    ports.iter().map(|p| word(p, vars)).collect::<Result<_>>()?;
                crate::change::apply(rc, &format!("EXPOSE {}", list.join(" ")))?;
            }
            Kind::Volume(list) => {
                let vols = rc.volumes.get_or_insert_with(Default::default);
                for v in list {
                    vols.insert(word(v, vars)?, Default::default());
                }
            }
            Kind::User(u) => rc.user = Some(word(u, vars)?),
            Kind::Stopsignal(s) => rc.stop_signal = Some(word(s, vars)?),
            Kind::Shell(v) => rc.shell = Some(v.clone()),
            Kind::Cmd(form) => {
                rc.cmd = Some(argv(form, &shell));
                st.cmd_set = true;
            }
            Kind::Entrypoint(form) => {
                rc.entrypoint = Some(argv(form, &shell));
                // Docker: a new ENTRYPOINT drops a CMD inherited from the base image.
                if !cmd_set {
                    rc.cmd = None;
                }
            }
            Kind::Onbuild(t) => rc.on_build.get_or_insert_with(Vec::new).push(t.clone()),
            Kind::Healthcheck { flags, cmd } => {
                let test = match cmd {
                    None => vec!["NONE".to_owned()],
                    Some(CmdForm::Exec(v)) => std::iter::once("CMD".to_owned())
                        .chain(v.iter().cloned())
                        .collect(),
                    Some(CmdForm::Shell(s)) => vec!["CMD-SHELL".to_owned(), s.clone()],
                };
                let mut hc = serde_json::Map::new();
                hc.insert("Test".into(), serde_json::json!(test));
                for (name, value) in flags {
                    let value = value.as_deref().unwrap_or_default();
                    let (field, v) = match name.as_str() {
                        "interval" => ("Interval", serde_json::json!(duration_ns(value)?)),
                        "timeout" => ("Timeout", serde_json::json!(duration_ns(value)?)),
                        "start-period" => ("StartPeriod", serde_json::json!(duration_ns(value)?)),
                        "start-interval" => {
                            ("StartInterval", serde_json::json!(duration_ns(value)?))
                        }
                        "retries" => (
                            "Retries",
                            serde_json::json!(value.parse::<u64>().with_context(|| format!(
                                "HEALTHCHECK --retries={value}: expected a number"
                            ))?),
                        ),
                        other => bail!("HEALTHCHECK --{other} is not a known option"),
                    };
                    hc.insert(field.into(), v);
                }
                rc.healthcheck = Some(serde_json::Value::Object(hc));
            }
            Kind::Maintainer(m) => st.cfg.author = Some(m.clone()),
            other => bail!("{other:?} is not a metadata instruction; this is a bug"),
        }
        Ok(())
    }

    /// Runs a RUN command in a container of the current config; returns its layer, `None`
    /// when the command changed no file.
    fn run_command(&mut self, st: &StageState, args: Vec<String>) -> Result<Option<Digest>> {
        let store = self.store;
        let id = Digest::of(&st.bytes);
        let existed = store.resolve_image(&id.to_string()).is_ok();
        store
            .add_image(&st.bytes, None)
            .context("recording the intermediate image of the RUN step")?;
        let rec = store.resolve_image(&id.to_string())?;
        let rc = st.cfg.config.clone().unwrap_or_default();
        let mut env = rc.env.clone().unwrap_or_default();
        for (k, v) in &st.args {
            if !env.iter().any(|e| e.split('=').next() == Some(k.as_str())) {
                env.push(format!("{k}={v}"));
            }
        }
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH.to_owned());
        }
        let c = store.create_container(None, &id)?;
        let settings = RunSettings {
            args,
            env,
            cwd: st.workdir(),
            user: rc.user.clone().filter(|u| !u.is_empty()),
            tty: false,
            interactive: false,
            binds: Vec::new(),
            hostname: c.short_id().to_owned(),
            runtime: None,
            last_exit: None,
            isolation: Default::default(),
        };
        let result = (|| -> Result<Option<Digest>> {
            let code = crate::commands::run::run_in_container(self.g, store, &c, settings)?;
            if code != 0 {
                bail!("the command exited with code {code}; the build stops here");
            }
            let entries =
                crate::commands::commit::container_entries(store, &c, &rec, self.g.verbose)?;
            let view = ImageView::open(store, &st.bytes)?;
            let entries = drop_runtime_artifacts(entries, &view);
            if entries.is_empty() {
                return Ok(None);
            }
            Ok(Some(
                store
                    .commit_layer(entries)
                    .context("writing the layer")?
                    .diff_id,
            ))
        })();
        if let Err(e) = store.remove_container(&c) {
            eprintln!("warning: removing the build container {}: {e}", c.name);
        }
        if !existed && let Err(e) = store.remove_image(&id.to_string(), false) {
            eprintln!(
                "warning: removing the intermediate image {}: {e}",
                id.short()
            );
        }
        result
    }
}

/// Removes what the runtime, not the command, left in the upper: empty mount-point files the
/// image lacked, then directories that are unchanged and hold no other change.
fn drop_runtime_artifacts(entries: Vec<CommitEntry>, view: &ImageView) -> Vec<CommitEntry> {
    let mut kept: Vec<CommitEntry> = entries
        .into_iter()
        .filter(|e| {
            !(RUNTIME_MOUNT_FILES.contains(&e.path.as_str())
                && matches!(e.kind, CommitKind::File { size: 0, .. })
                && view.lookup(&e.path, false).is_none())
        })
        .collect();
    loop {
        let paths: Vec<String> = kept.iter().map(|e| e.path.clone()).collect();
        let before = kept.len();
        kept.retain(|e| {
            if !matches!(e.kind, CommitKind::Dir { opaque: false }) {
                return true;
            }
            let prefix = format!("{}/", e.path);
            if paths.iter().any(|p| p.starts_with(&prefix)) {
                return true;
            }
            // The parent of a mount-point file got a new mtime from the runtime alone.
            let runtime_parent = RUNTIME_MOUNT_FILES.iter().any(|f| f.starts_with(&prefix));
            match view.lookup(&e.path, false) {
                Some(n) => {
                    n.attr.perm != e.mode
                        || n.attr.uid != e.uid
                        || n.attr.gid != e.gid
                        || (n.mtime() != e.mtime && !runtime_parent)
                }
                None => true,
            }
        });
        if kept.len() == before {
            return kept;
        }
    }
}

/// Parses `--build-arg K=V` (or `K`, taking V from the environment).
///
/// # Errors
/// An empty name.
pub fn parse_build_args(list: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in list {
        let (k, v) = match a.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => match std::env::var(a) {
                Ok(v) => (a.clone(), v),
                Err(_) => continue,
            },
        };
        if k.is_empty() {
            bail!("--build-arg {a:?}: expected NAME=VALUE");
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// The Dockerfile path: `-f` as given, else `CONTEXT/Dockerfile`.
pub fn dockerfile_path(file: Option<&Path>, context: &Path) -> PathBuf {
    file.map_or_else(|| context.join("Dockerfile"), Path::to_path_buf)
}
