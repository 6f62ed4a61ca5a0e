//! A read-only view of an image's merged filesystem without mounting anything: the store's
//! layers as `IndexTree`s under an in-process [`UnionFs`] with no upper. COPY/ADD use it to
//! resolve `--chown` names (the image's /etc/passwd and /etc/group), to see which destination
//! directories exist, and to read `COPY --from` sources.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail};
use layerstore::{Digest, ImageRecord, Store};
use unionfs::{Attr, EntryKind, FsOptions, Ino, ROOT_INO, UnionFs};

/// Symlinks followed while resolving one path, as the kernel allows.
const MAX_SYMLINKS: usize = 40;

/// One node found in a view.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its inode in the view.
    pub ino: Ino,
    /// Its attributes.
    pub attr: Attr,
}

impl Node {
    /// Modification time in whole seconds.
    pub fn mtime(&self) -> i64 {
        self.attr
            .mtime
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
    }
}

/// The merged, read-only filesystem of an image (`None` inside for an image without layers).
#[derive(Debug, Clone)]
pub struct ImageView {
    fs: Option<Arc<UnionFs>>,
}

impl ImageView {
    /// Opens the view of the image whose config is `config` (its layers must be stored).
    ///
    /// # Errors
    /// A config that does not parse, a layer missing from the store.
    pub fn open(store: &Store, config: &[u8]) -> Result<ImageView> {
        let rec = ImageRecord {
            id: Digest::of(config),
            config: config.to_vec(),
            parent: None,
            created: None,
            added: String::new(),
            tags: Vec::new(),
        };
        let lowers = crate::union::image_lowers(store, &rec)?;
        if lowers.is_empty() {
            return Ok(ImageView { fs: None });
        }
        let fs = UnionFs::new(lowers, None, FsOptions::default())
            .context("opening a read-only view of the image's layers")?;
        Ok(ImageView {
            fs: Some(Arc::new(fs)),
        })
    }

    /// Looks `path` (absolute or relative to /) up. Symlinks in the directories on the way are
    /// followed inside the image; the last component's with `follow_last`.
    pub fn lookup(&self, path: &str, follow_last: bool) -> Option<Node> {
        let fs = self.fs.as_ref()?;
        let mut parts: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_owned)
            .collect();
        parts.reverse();
        // The chain of directories from the root, for `..`.
        let mut chain: Vec<Ino> = vec![ROOT_INO];
        let mut links = 0;
        let mut node = Node {
            ino: ROOT_INO,
            attr: fs.getattr(ROOT_INO, None).ok()?,
        };
        while let Some(c) = parts.pop() {
            if c == ".." {
                if chain.len() > 1 {
                    chain.pop();
                }
                let ino = *chain.last()?;
                node = Node {
                    ino,
                    attr: fs.getattr(ino, None).ok()?,
                };
                continue;
            }
            let parent = *chain.last()?;
            let e = fs.lookup(parent, OsStr::new(&c)).ok()?;
            let is_last = parts.is_empty();
            if e.attr.kind == EntryKind::Symlink && (!is_last || follow_last) {
                links += 1;
                if links > MAX_SYMLINKS {
                    return None;
                }
                let target = fs.readlink(e.attr.ino).ok()?;
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    chain.truncate(1);
                }
                for comp in t.split('/').filter(|c| !c.is_empty()).rev() {
                    parts.push(comp.to_owned());
                }
                node = Node {
                    ino: *chain.last()?,
                    attr: fs.getattr(*chain.last()?, None).ok()?,
                };
                continue;
            }
            node = Node {
                ino: e.attr.ino,
                attr: e.attr.clone(),
            };
            if e.attr.kind == EntryKind::Dir {
                chain.push(e.attr.ino);
            } else if !is_last {
                return None;
            }
        }
        Some(node)
    }

    /// Reads a whole regular file, `None` when it is missing.
    pub fn read_file(&self, path: &str) -> Option<Vec<u8>> {
        let n = self.lookup(path, true)?;
        let mut out = Vec::new();
        self.reader(n.ino).ok()?.read_to_end(&mut out).ok()?;
        Some(out)
    }

    /// The target of a symlink.
    ///
    /// # Errors
    /// Not a symlink, I/O.
    pub fn readlink(&self, ino: Ino) -> Result<String> {
        let fs = self.fs.as_ref().context("an empty image has no symlinks")?;
        let t = fs.readlink(ino).context("reading a symlink of the image")?;
        Ok(t.to_string_lossy().into_owned())
    }

    /// The names in a directory with their nodes, sorted by name.
    ///
    /// # Errors
    /// Not a directory, I/O.
    pub fn list(&self, dir: Ino) -> Result<Vec<(String, Node)>> {
        let Some(fs) = self.fs.as_ref() else {
            return Ok(Vec::new());
        };
        let fh = fs
            .opendir(dir)
            .context("listing a directory of the image")?;
        let items = fs.readdir(fh, 0);
        fs.release(fh);
        let mut out = Vec::new();
        for item in items.context("listing a directory of the image")? {
            if item.name == "." || item.name == ".." {
                continue;
            }
            let e = fs
                .lookup(dir, &item.name)
                .context("looking up a directory entry of the image")?;
            out.push((
                item.name.to_string_lossy().into_owned(),
                Node {
                    ino: e.attr.ino,
                    attr: e.attr,
                },
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// A reader of a regular file's content (owning what it needs: usable from the thread that
    /// writes a layer tar).
    ///
    /// # Errors
    /// An empty image, a node that cannot be opened.
    pub fn reader(&self, ino: Ino) -> Result<Box<dyn Read + Send>> {
        let Some(fs) = self.fs.clone() else {
            bail!("an empty image has no files");
        };
        let fh = fs
            .open(ino, libc::O_RDONLY)
            .context("opening a file of the image")?;
        Ok(Box::new(ViewReader { fs, fh, pos: 0 }))
    }
}

/// Reads one open file of a view.
struct ViewReader {
    fs: Arc<UnionFs>,
    fh: unionfs::Fh,
    pos: u64,
}

/// Bytes asked for per read of a view file.
const READ_CHUNK: u32 = 1 << 20;

impl Read for ViewReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = u32::try_from(buf.len())
            .unwrap_or(READ_CHUNK)
            .min(READ_CHUNK);
        let data = self
            .fs
            .read(self.fh, self.pos, want)
            .map_err(|e| io::Error::other(e.to_string()))?;
        buf[..data.len()].copy_from_slice(&data);
        self.pos += data.len() as u64;
        Ok(data.len())
    }
}

impl Drop for ViewReader {
    fn drop(&mut self) {
        self.fs.release(self.fh);
    }
}

/// Resolves `--chown=USER[:GROUP]` (names or numbers) against the image's /etc/passwd and
/// /etc/group, as Docker does: a numeric user without a group gets the same number as gid, a
/// named user its primary group.
///
/// # Errors
/// A name the image does not define.
pub fn resolve_chown(view: &ImageView, spec: &str) -> Result<(u32, u32)> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let text = |p: &str| {
        view.read_file(p)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let find = |text: &str, name: &str| -> Option<Vec<String>> {
        text.lines()
            .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
            .find(|f| f.first().map(String::as_str) == Some(name))
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, n),
        Err(_) => {
            let f = find(&text("/etc/passwd"), u).with_context(|| {
                format!("--chown={spec}: user {u:?} is not in the image's /etc/passwd; use a number or add the user first (RUN adduser …)")
            })?;
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u32>().ok());
            (
                num(2).context("a bad /etc/passwd line")?,
                num(3).context("a bad /etc/passwd line")?,
            )
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => find(&text("/etc/group"), g)
                .and_then(|f| f.get(2).and_then(|v| v.parse().ok()))
                .with_context(|| {
                    format!("--chown={spec}: group {g:?} is not in the image's /etc/group")
                })?,
        },
    };
    Ok((uid, gid))
}
