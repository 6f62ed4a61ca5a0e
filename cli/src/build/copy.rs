//! COPY and ADD without a container: the sources (context files, another stage's or image's
//! files, a local archive's members, a downloaded URL) become the store's plain commit entries
//! directly, and `Store::commit_layer` writes the reproducible layer tar from them.
//!
//! Docker's rules kept here:
//! - a directory source copies its *contents*; a file source goes to `DEST/NAME` when `DEST`
//!   ends with `/` or is a directory in the image, else to `DEST` itself;
//! - several sources (or a wildcard) need a directory destination ending with `/`;
//! - owner 0:0 unless `--chown=USER[:GROUP]` (names resolved in the image's /etc/passwd and
//!   /etc/group); permission bits kept unless `--chmod=OCTAL`; mtimes kept;
//! - missing parent directories are created (0755, owner as `--chown`);
//! - ADD unpacks local tar archives (plain, gzip, zstd, xz, bzip2) into `DEST`, and downloads
//!   http(s) URLs without unpacking them (mode 0600, as Docker);
//! - sources outside the context (`../x`) are refused, `.dockerignore`d files do not exist.
//!
//! Each item also yields one line of the step's cache key: destination, kind, mode, owner and
//! content sha256, so a content change (never an mtime alone) invalidates the step.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use layerstore::Digest;
use layerstore::commit::{CommitEntry, CommitKind, Content};
use unionfs::{EntryKind, Ino};

use super::context::{Context, CtxEntry, CtxKind, clean, escapes, has_wildcard, source_matcher};
use super::view::{ImageView, resolve_chown};

/// Mode of a file fetched from a URL (Docker's).
const URL_FILE_MODE: u32 = 0o600;
/// Mode of directories COPY creates.
const NEW_DIR_MODE: u32 = 0o755;
/// Offset and value of the ustar magic in a tar header.
const USTAR_MAGIC_AT: usize = 257;
/// The magic bytes there (both `ustar\0` and GNU `ustar ` start with these).
const USTAR_MAGIC: &[u8] = b"ustar";
/// Compressed-stream magics ADD recognises.
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
/// bzip2.
const BZIP2_MAGIC: &[u8] = b"BZh";

/// Where an item's bytes are.
#[derive(Debug, Clone)]
enum Src {
    /// A host file (context, unpacked archive member, download).
    Host(PathBuf),
    /// A file of an image view (`--from`).
    View(ImageView, Ino),
}

impl Src {
    fn open(&self) -> Result<Box<dyn Read + Send>> {
        match self {
            Src::Host(p) => Ok(Box::new(
                std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
            )),
            Src::View(v, ino) => v.reader(*ino),
        }
    }
}

/// What an item is.
#[derive(Debug, Clone)]
enum ItemKind {
    Dir,
    File { size: u64, src: Src },
    Symlink(String),
}

/// One path the layer will hold.
#[derive(Debug, Clone)]
struct Item {
    kind: ItemKind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// A COPY/ADD, after ARG/ENV expansion.
#[derive(Debug)]
pub struct CopySpec<'a> {
    /// ADD rather than COPY.
    pub add: bool,
    /// Sources as written (expanded).
    pub srcs: &'a [String],
    /// Destination (expanded; relative to `workdir` unless absolute).
    pub dest: &'a str,
    /// The stage's working directory.
    pub workdir: &'a str,
    /// `--chown` value.
    pub chown: Option<&'a str>,
    /// `--chmod` value.
    pub chmod: Option<&'a str>,
}

/// Where sources come from: the context, or another stage's/image's files.
#[derive(Debug)]
pub enum SourceFs<'a> {
    /// The build context.
    Context(&'a Context),
    /// `--from=…`.
    Image(&'a ImageView),
}

/// The entries of the layer and the lines of the cache key.
#[derive(Debug)]
pub struct CopyPlan {
    /// Commit entries for `Store::commit_layer`.
    pub entries: Vec<CommitEntry>,
    /// One line per item, sorted: `path kind mode uid:gid sha256|target`.
    pub key_lines: Vec<String>,
}

/// One matched source before placement.
enum Matched {
    Ctx(String, CtxEntry),
    View(String, super::view::Node),
    Url(String),
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn parse_chmod(s: &str) -> Result<u32> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .with_context(|| format!("--chmod={s}: expected an octal mode such as 755"))
}

fn sniff(p: &Path) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut head = vec![0u8; 512];
    let mut n = 0;
    while n < head.len() {
        let k = f
            .read(&mut head[n..])
            .with_context(|| format!("reading {}", p.display()))?;
        if k == 0 {
            break;
        }
        n += k;
    }
    head.truncate(n);
    Ok(head)
}

fn is_tar_header(head: &[u8]) -> bool {
    head.len() >= USTAR_MAGIC_AT + USTAR_MAGIC.len()
        && &head[USTAR_MAGIC_AT..USTAR_MAGIC_AT + USTAR_MAGIC.len()] == USTAR_MAGIC
}

/// Opens a local file as a (decompressed) tar stream when it is an archive ADD unpacks.
fn open_archive(p: &Path) -> Result<Option<Box<dyn Read>>> {
    let head = sniff(p)?;
    let tool = if head.starts_with(XZ_MAGIC) {
        Some("xz")
    } else if head.starts_with(BZIP2_MAGIC) {
        Some("bzip2")
    } else {
        None
    };
    let mut stream: Box<dyn Read> = match tool {
        Some(t) => {
            let out = std::process::Command::new(t)
                .arg("-dc")
                .arg(p)
                .stderr(std::process::Stdio::null())
                .output()
                .with_context(|| {
                    format!("running {t} -dc to unpack {} (install {t})", p.display())
                })?;
            if !out.status.success() {
                return Ok(None);
            }
            Box::new(std::io::Cursor::new(out.stdout))
        }
        None => {
            let f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
            match layerstore::layer::decompress(f) {
                Ok((r, _)) => r,
                Err(_) => return Ok(None),
            }
        }
    };
    let mut first = vec![0u8; 512];
    if stream.read_exact(&mut first).is_err() || !is_tar_header(&first) {
        return Ok(None);
    }
    Ok(Some(Box::new(std::io::Cursor::new(first).chain(stream))))
}

/// Unpacks a tar stream's members under `dest` into items (contents to files in `tmp`).
fn unpack(
    tar: Box<dyn Read>,
    dest: &str,
    tmp: &Path,
    owner: Option<(u32, u32)>,
    items: &mut BTreeMap<String, Item>,
) -> Result<()> {
    let mut a = tar::Archive::new(tar);
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (i, e) in a.entries().context("reading the archive")?.enumerate() {
        let mut e = e.context("reading the archive")?;
        let raw = e.path().context("an archive member's name")?;
        let raw = raw.to_string_lossy().into_owned();
        if escapes(&raw) {
            bail!("the archive member {raw:?} points outside its destination");
        }
        let rel = clean(&raw);
        if rel.is_empty()
            || rel
                .rsplit('/')
                .next()
                .is_some_and(|b| b.starts_with(".wh."))
        {
            continue;
        }
        let path = join(dest, &rel);
        let h = e.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = owner.unwrap_or((
            u32::try_from(h.uid().unwrap_or(0)).unwrap_or(0),
            u32::try_from(h.gid().unwrap_or(0)).unwrap_or(0),
        ));
        let mtime = i64::try_from(h.mtime().unwrap_or(0)).unwrap_or(0);
        let kind = match h.entry_type() {
            tar::EntryType::Directory => ItemKind::Dir,
            tar::EntryType::Symlink => ItemKind::Symlink(
                e.link_name()
                    .ok()
                    .flatten()
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            tar::EntryType::Link => {
                let target = e
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|l| clean(&l.to_string_lossy()))
                    .unwrap_or_default();
                let Some(f) = files.get(&target) else {
                    bail!("archive member {raw:?} links to {target:?}, which is not before it");
                };
                let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                ItemKind::File {
                    size,
                    src: Src::Host(f.clone()),
                }
            }
            t if t.is_file() => {
                let f = tmp.join(format!("add-{i}"));
                let mut out = std::fs::File::create(&f)
                    .with_context(|| format!("creating {}", f.display()))?;
                let size = std::io::copy(&mut e, &mut out)
                    .with_context(|| format!("unpacking {raw:?}"))?;
                files.insert(rel.clone(), f.clone());
                ItemKind::File {
                    size,
                    src: Src::Host(f),
                }
            }
            // Devices and fifos are skipped: an unprivileged build could not create them.
            _ => continue,
        };
        items.insert(
            path,
            Item {
                kind,
                mode,
                uid,
                gid,
                mtime,
            },
        );
    }
    Ok(())
}

/// Joins a relative directory and a relative name (`""` is the root).
fn join(dir: &str, name: &str) -> String {
    match (dir.is_empty(), name.is_empty()) {
        (true, _) => name.to_owned(),
        (_, true) => dir.to_owned(),
        _ => format!("{dir}/{name}"),
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Downloads `url` into `tmp`; returns the file.
fn download(url: &str, tmp: &Path, n: usize) -> Result<PathBuf> {
    let resp = ureq::get(url)
        .call()
        .with_context(|| format!("ADD {url}: fetching it failed; check the URL and the network"))?;
    let f = tmp.join(format!("url-{n}"));
    let mut out = std::fs::File::create(&f).with_context(|| format!("creating {}", f.display()))?;
    let mut body = resp.into_body().into_reader();
    std::io::copy(&mut body, &mut out).with_context(|| format!("ADD {url}: reading the body"))?;
    out.flush().ok();
    Ok(f)
}

fn sha256_of(src: &Src) -> Result<Digest> {
    let mut r = src.open()?;
    let mut h = layerstore::digest::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf).context("reading a COPY source")?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// Plans a COPY/ADD: matches the sources, places them, and turns them into layer entries.
///
/// `target` is the view of the image being built (destinations, `--chown` names); `tmp` a
/// scratch directory for archive members and downloads, alive until the layer is written.
///
/// # Errors
/// A source outside the context, one that matches nothing, several sources to a
/// non-directory destination, unknown `--chown` names, a bad `--chmod`, an unreachable URL.
pub fn plan(
    spec: &CopySpec<'_>,
    from: &SourceFs<'_>,
    target: &ImageView,
    tmp: &Path,
) -> Result<CopyPlan> {
    let what = if spec.add { "ADD" } else { "COPY" };
    let owner = spec.chown.map(|c| resolve_chown(target, c)).transpose()?;
    let (uid, gid) = owner.unwrap_or((0, 0));
    let chmod = spec.chmod.map(parse_chmod).transpose()?;
    let abs_dest = if spec.dest.starts_with('/') {
        spec.dest.to_owned()
    } else {
        format!("{}/{}", spec.workdir.trim_end_matches('/'), spec.dest)
    };
    let dest_is_dir = abs_dest.ends_with('/')
        || abs_dest.ends_with("/.")
        || spec.dest == "."
        || target
            .lookup(&abs_dest, true)
            .is_some_and(|n| n.attr.kind == EntryKind::Dir);
    let dest = clean(&abs_dest);

    // Match every source.
    let mut matched: Vec<Matched> = Vec::new();
    let mut wildcard = false;
    for s in spec.srcs {
        if spec.add && (s.starts_with("http://") || s.starts_with("https://")) {
            matched.push(Matched::Url(s.clone()));
            continue;
        }
        let before = matched.len();
        match from {
            SourceFs::Context(ctx) => {
                if escapes(s.trim_start_matches('/')) {
                    bail!(
                        "{what} {s}: the source is outside the build context; sources are \
                         paths inside the context directory {}",
                        ctx.root.display()
                    );
                }
                let p = clean(s);
                if has_wildcard(&p) {
                    wildcard = true;
                    let m = source_matcher(&p)?;
                    for (rel, e) in &ctx.entries {
                        if m.is_match(rel) {
                            matched.push(Matched::Ctx(rel.clone(), e.clone()));
                        }
                    }
                } else if p.is_empty() {
                    matched.push(Matched::Ctx(String::new(), ctx.root_entry()?));
                } else if let Some(e) = ctx.entries.get(&p) {
                    matched.push(Matched::Ctx(p, e.clone()));
                }
            }
            SourceFs::Image(view) => {
                let p = clean(s);
                if has_wildcard(basename(&p)) {
                    wildcard = true;
                    let (dir, pat) = p.rsplit_once('/').unwrap_or(("", p.as_str()));
                    let m = source_matcher(pat)?;
                    if let Some(d) = view.lookup(dir, true) {
                        for (name, n) in view.list(d.ino)? {
                            if m.is_match(&name) {
                                matched.push(Matched::View(join(dir, &name), n));
                            }
                        }
                    }
                } else if let Some(n) = view.lookup(&p, true) {
                    matched.push(Matched::View(p, n));
                }
            }
        }
        if matched.len() == before {
            let hint = match from {
                SourceFs::Context(_) => "in the build context (or it is excluded by .dockerignore)",
                SourceFs::Image(_) => "in the --from stage or image",
            };
            bail!("{what} {s}: no such file or directory {hint}");
        }
    }
    if (matched.len() > 1 || wildcard) && !dest_is_dir {
        bail!(
            "{what} with more than one source file: the destination {} must be a directory and \
             end with a /",
            spec.dest
        );
    }

    // Place them.
    let mut items: BTreeMap<String, Item> = BTreeMap::new();
    let file_dest = |name: &str| {
        if dest_is_dir {
            join(&dest, name)
        } else {
            dest.clone()
        }
    };
    for (n, m) in matched.into_iter().enumerate() {
        match m {
            Matched::Url(url) => {
                let f = download(&url, tmp, n)?;
                let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
                let name = url
                    .split(['?', '#'])
                    .next()
                    .map(basename)
                    .filter(|b| !b.is_empty())
                    .unwrap_or("index.html");
                items.insert(
                    file_dest(name),
                    Item {
                        kind: ItemKind::File {
                            size,
                            src: Src::Host(f),
                        },
                        mode: chmod.unwrap_or(URL_FILE_MODE),
                        uid,
                        gid,
                        mtime: 0,
                    },
                );
            }
            Matched::Ctx(rel, e) => match &e.kind {
                CtxKind::Dir => {
                    if let SourceFs::Context(ctx) = from {
                        let prefix = if rel.is_empty() {
                            String::new()
                        } else {
                            format!("{rel}/")
                        };
                        for (r, c) in ctx.entries.range(prefix.clone()..) {
                            let Some(sub) = r.strip_prefix(&prefix) else {
                                break;
                            };
                            if sub.is_empty() {
                                continue;
                            }
                            items.insert(join(&dest, sub), ctx_item(c, uid, gid, chmod));
                        }
                        items
                            .entry(dest.clone())
                            .or_insert_with(|| ctx_item(&e, uid, gid, chmod));
                    }
                }
                CtxKind::File if spec.add => match open_archive(&e.host)? {
                    Some(tar) => unpack(tar, &dest, tmp, owner, &mut items)?,
                    None => {
                        items.insert(file_dest(basename(&rel)), ctx_item(&e, uid, gid, chmod));
                    }
                },
                _ => {
                    let name = if rel.is_empty() { "" } else { basename(&rel) };
                    items.insert(file_dest(name), ctx_item(&e, uid, gid, chmod));
                }
            },
            Matched::View(path, node) => {
                if node.attr.kind == EntryKind::Dir {
                    let SourceFs::Image(view) = from else {
                        continue;
                    };
                    let mut stack = vec![(node.ino, String::new())];
                    while let Some((ino, sub)) = stack.pop() {
                        for (name, child) in view.list(ino)? {
                            let rel = join(&sub, &name);
                            if child.attr.kind == EntryKind::Dir {
                                stack.push((child.ino, rel.clone()));
                            }
                            if let Some(it) = view_item(view, &child, uid, gid, chmod)? {
                                items.insert(join(&dest, &rel), it);
                            }
                        }
                    }
                    if let Some(it) = view_item(view, &node, uid, gid, chmod)? {
                        items.entry(dest.clone()).or_insert(it);
                    }
                } else if let SourceFs::Image(view) = from
                    && let Some(it) = view_item(view, &node, uid, gid, chmod)?
                {
                    items.insert(file_dest(basename(&path)), it);
                }
            }
        }
    }
    items.remove("");

    // Parent directories: the image's own (same attributes) or new ones.
    let now = now_secs();
    let mut parents: BTreeMap<String, Item> = BTreeMap::new();
    for p in items.keys() {
        let mut cur = p.as_str();
        while let Some((parent, _)) = cur.rsplit_once('/') {
            cur = parent;
            if items.contains_key(parent) || parents.contains_key(parent) {
                continue;
            }
            let it = match target.lookup(parent, false) {
                Some(n) if n.attr.kind == EntryKind::Dir => Item {
                    kind: ItemKind::Dir,
                    mode: n.attr.perm,
                    uid: n.attr.uid,
                    gid: n.attr.gid,
                    mtime: n.mtime(),
                },
                // A symlink or file in the way: leave the image's entry alone.
                Some(_) => continue,
                None => Item {
                    kind: ItemKind::Dir,
                    mode: NEW_DIR_MODE,
                    uid,
                    gid,
                    mtime: now,
                },
            };
            parents.insert(parent.to_owned(), it);
        }
    }
    // The destination directory, when COPY creates it, gets 0755 like other new parents.
    if let Some(d) = items.get_mut(&dest)
        && matches!(d.kind, ItemKind::Dir)
        && let Some(n) = target.lookup(&dest, false)
        && n.attr.kind == EntryKind::Dir
    {
        // Existing destination directories keep their attributes (Docker copies contents).
        d.mode = n.attr.perm;
        d.uid = n.attr.uid;
        d.gid = n.attr.gid;
        d.mtime = n.mtime();
    }

    let mut key_lines = Vec::new();
    let mut entries = Vec::new();
    for (path, it) in items.into_iter().chain(parents) {
        let (kind, line) = match it.kind {
            ItemKind::Dir => (CommitKind::Dir { opaque: false }, "dir".to_owned()),
            ItemKind::Symlink(t) => (
                CommitKind::Symlink { target: t.clone() },
                format!("symlink {t}"),
            ),
            ItemKind::File { size, src } => {
                let d = sha256_of(&src)?;
                let content = match src {
                    Src::Host(p) => Content::Path(p),
                    Src::View(v, ino) => Content::Open(Box::new(move || {
                        v.reader(ino)
                            .map_err(|e| std::io::Error::other(format!("{e:#}")))
                    })),
                };
                (CommitKind::File { size, content }, format!("file {d}"))
            }
        };
        key_lines.push(format!("{path} {line} {:o} {}:{}", it.mode, it.uid, it.gid));
        entries.push(CommitEntry {
            path,
            kind,
            mode: it.mode,
            uid: it.uid,
            gid: it.gid,
            mtime: it.mtime,
            xattrs: Vec::new(),
            link_group: None,
        });
    }
    key_lines.sort();
    Ok(CopyPlan { entries, key_lines })
}

fn ctx_item(e: &CtxEntry, uid: u32, gid: u32, chmod: Option<u32>) -> Item {
    let kind = match &e.kind {
        CtxKind::Dir => ItemKind::Dir,
        CtxKind::File => ItemKind::File {
            size: e.size,
            src: Src::Host(e.host.clone()),
        },
        CtxKind::Symlink(t) => ItemKind::Symlink(t.clone()),
    };
    let mode = match (&e.kind, chmod) {
        (CtxKind::Symlink(_), _) => 0o777,
        (_, Some(m)) => m,
        (_, None) => e.mode,
    };
    Item {
        kind,
        mode,
        uid,
        gid,
        mtime: e.mtime,
    }
}

fn view_item(
    view: &ImageView,
    n: &super::view::Node,
    uid: u32,
    gid: u32,
    chmod: Option<u32>,
) -> Result<Option<Item>> {
    let kind = match n.attr.kind {
        EntryKind::Dir => ItemKind::Dir,
        EntryKind::File => ItemKind::File {
            size: n.attr.size,
            src: Src::View(view.clone(), n.ino),
        },
        EntryKind::Symlink => ItemKind::Symlink(view.readlink(n.ino)?),
        _ => return Ok(None),
    };
    let mode = match (&kind, chmod) {
        (ItemKind::Symlink(_), _) => 0o777,
        (_, Some(m)) => m,
        (_, None) => n.attr.perm,
    };
    Ok(Some(Item {
        kind,
        mode,
        uid,
        gid,
        mtime: n.mtime(),
    }))
}
