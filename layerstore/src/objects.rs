//! Content-addressed file objects: `objects/sha256/<2 hex>/<64 hex>`, read-only (mode 0400:
//! the owner's alone), never changed except to replace a damaged one with its right bytes.
//!
//! Writing goes through [`Staging`]: contents are written into `tmp/` while being hashed, then
//! [`Staging::publish`] makes them durable (`syncfs`) *before* renaming them to their final
//! names, and syncs again so the renames are durable before the caller commits the index rows
//! that refer to them. So an object file that exists under its final name always holds the
//! bytes its name says, even after a crash; the worst a crash leaves is unreferenced objects
//! (removed by `gc`) or files in `tmp/` (removed at the next exclusive open).
//! One `syncfs` per batch instead of one `fsync` per file keeps an import of thousands of small
//! files fast.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::{Digest, Hasher};
use crate::error::{Error, IoContext, Result};
use crate::privacy::{FILE_MODE, OBJECT_MODE, create_private_dir_all};

/// Directory of objects under the store root (the algorithm is part of the path, like OCI blobs).
pub const OBJECTS_DIR: &str = "objects/sha256";
/// Staging directory under the store root; anything here at exclusive open is crash garbage.
pub const TMP_DIR: &str = "tmp";
/// Contents up to this size are hashed in memory first, so a duplicate is never written.
pub(crate) const IN_MEMORY_LIMIT: u64 = 8 << 20;
/// Copy buffer for larger contents.
const COPY_BUF: usize = 1 << 20;

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The object directory of a store.
#[derive(Debug, Clone)]
pub struct Objects {
    dir: PathBuf,
    tmp: PathBuf,
}

impl Objects {
    pub(crate) fn new(root: &Path) -> Objects {
        Objects {
            dir: root.join(OBJECTS_DIR),
            tmp: root.join(TMP_DIR),
        }
    }

    /// Path of the object named `d` (whether or not it exists).
    pub fn path(&self, d: &Digest) -> PathBuf {
        // One allocation: a mount computes this for every file of an image.
        let mut hex = [0u8; 64];
        hex::encode_to_slice(d.bytes(), &mut hex).expect("32 bytes are 64 hex digits");
        let h = std::str::from_utf8(&hex).expect("hex digits are ASCII");
        let mut p = PathBuf::with_capacity(self.dir.as_os_str().len() + 2 + h.len() + 2);
        p.push(&self.dir);
        p.push(&h[..2]);
        p.push(h);
        p
    }

    /// Whether the object file exists.
    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).exists()
    }

    /// Opens an object for reading.
    ///
    /// # Errors
    /// The object is missing (the message says to run `strata fsck`).
    pub fn open(&self, d: &Digest) -> Result<File> {
        let p = self.path(d);
        File::open(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound {
                    kind: "object",
                    name: d.to_string(),
                    hint: format!(
                        " ({} is missing); the store is damaged: run 'strata fsck'",
                        p.display()
                    ),
                }
            } else {
                Error::io("open", p, e)
            }
        })
    }

    /// The directory objects live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every object file on disk (for gc and fsck).
    pub(crate) fn list(&self) -> Result<Vec<(Digest, PathBuf)>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("read dir", &self.dir, e)),
        };
        for sub in rd {
            let sub = sub.ctx("read dir", &self.dir)?;
            let sp = sub.path();
            if !sp.is_dir() {
                continue;
            }
            for f in fs::read_dir(&sp).ctx("read dir", &sp)? {
                let f = f.ctx("read dir", &sp)?;
                let name = f.file_name();
                if let Some(d) = name.to_str().and_then(|n| Digest::parse_lenient(n).ok()) {
                    out.push((d, f.path()));
                }
            }
        }
        Ok(out)
    }

    /// Number of object files on disk (0 when the directory cannot be read).
    pub fn list_count(&self) -> usize {
        self.list().map(|l| l.len()).unwrap_or(0)
    }

    /// Starts a batch of new objects.
    pub(crate) fn staging(&self) -> Result<Staging<'_>> {
        create_private_dir_all(&self.tmp)?;
        Ok(Staging {
            objects: self,
            pending: Vec::new(),
            pending_set: std::collections::HashSet::new(),
        })
    }

    /// Rehashes one object; `Ok(false)` when the content does not match its name.
    pub(crate) fn verify(&self, d: &Digest) -> Result<bool> {
        let mut f = self.open(d)?;
        let mut h = Hasher::new();
        let mut buf = vec![0u8; COPY_BUF];
        loop {
            let n = f.read(&mut buf).ctx("read", self.path(d))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finish() == *d)
    }
}

/// A batch of objects written to `tmp/` and not yet published.
#[derive(Debug)]
pub(crate) struct Staging<'a> {
    objects: &'a Objects,
    pending: Vec<(PathBuf, Digest)>,
    /// The digests in `pending` (a layer of 20k files must not scan a list per file).
    pending_set: std::collections::HashSet<Digest>,
}

impl Staging<'_> {
    fn tmp_file(&self) -> Result<(File, PathBuf)> {
        let name = format!(
            "obj-{}-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        let p = self.objects.tmp.join(name);
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&p)
            .ctx("create", &p)?;
        Ok((f, p))
    }

    /// Adds one content held in memory and returns its digest. Content already in the store
    /// (or in this batch) is not written again.
    pub(crate) fn add_bytes(&mut self, data: &[u8]) -> Result<Digest> {
        let d = Digest::of(data);
        if !self.known(&d, data.len() as u64, Some(data))? {
            let (mut f, p) = self.tmp_file()?;
            if let Err(e) = f.write_all(data) {
                drop(f);
                let _ = fs::remove_file(&p); // garbage: the write failed
                return Err(Error::io("write", p, e));
            }
            self.stage(f, p, d)?;
        }
        Ok(d)
    }

    /// Starts a content too large to hold in memory: it is written to `tmp/` as it comes and
    /// hashed on the way; [`Staging::finish_large`] names it.
    pub(crate) fn begin_large(&self) -> Result<LargeObject> {
        let (f, p) = self.tmp_file()?;
        Ok(LargeObject {
            file: Some(f),
            path: p,
            hasher: Hasher::new(),
            size: 0,
        })
    }

    /// Ends a large content; returns its digest (the temp file is dropped when the content
    /// was already stored).
    pub(crate) fn finish_large(&mut self, mut o: LargeObject) -> Result<Digest> {
        let d = std::mem::take(&mut o.hasher).finish();
        let Some(f) = o.file.take() else {
            return Err(Error::Conflict(
                "internal: large object finished twice".into(),
            ));
        };
        let p = std::mem::take(&mut o.path);
        if self.known(&d, o.size, None)? {
            drop(f);
            fs::remove_file(&p).ctx("remove", &p)?;
        } else {
            self.stage(f, p, d)?;
        }
        Ok(d)
    }

    /// Whether `d` is stored already (or staged in this batch) with the right bytes. An object
    /// file whose size or bytes are wrong counts as absent, so the content is staged again
    /// and [`Staging::publish`] replaces the damaged file: re-ingesting repairs. `data` is the
    /// content when it is in memory (compared byte for byte), else the file is rehashed; so a
    /// duplicate costs a read of the stored copy, still less than writing and syncing it.
    fn known(&self, d: &Digest, size: u64, data: Option<&[u8]>) -> Result<bool> {
        if self.pending_set.contains(d) {
            return Ok(true);
        }
        let p = self.objects.path(d);
        let m = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("stat", p, e)),
        };
        if !m.is_file() || m.len() != size {
            return Ok(false);
        }
        match data {
            Some(data) => Ok(same_bytes(&p, data).unwrap_or(false)),
            None => Ok(self.objects.verify(d).unwrap_or(false)),
        }
    }

    fn stage(&mut self, f: File, p: PathBuf, d: Digest) -> Result<()> {
        f.set_permissions(fs::Permissions::from_mode(OBJECT_MODE))
            .ctx("chmod", &p)?;
        self.pending.push((p, d));
        self.pending_set.insert(d);
        Ok(())
    }

    /// Makes every staged object durable under its final name. Call before committing rows
    /// that refer to them.
    pub(crate) fn publish(mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        sync_fs(&self.objects.tmp)?;
        // 256 fan-out directories at most: make each once, not once per object.
        let mut made = std::collections::HashSet::new();
        for (tmp, d) in &self.pending {
            let dst = self.objects.path(d);
            if let Some(parent) = dst.parent()
                && !made.contains(parent)
            {
                create_private_dir_all(parent)?;
                made.insert(parent.to_path_buf());
            }
            fs::rename(tmp, &dst).ctx("rename", tmp)?;
        }
        self.pending.clear();
        self.pending_set.clear();
        sync_fs(&self.objects.dir)?;
        Ok(())
    }
}

/// A large object being written into `tmp/`; removed when dropped unfinished.
#[derive(Debug)]
pub(crate) struct LargeObject {
    file: Option<File>,
    path: PathBuf,
    hasher: Hasher,
    /// Bytes written so far.
    size: u64,
}

impl LargeObject {
    /// Appends content bytes.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<()> {
        self.hasher.update(data);
        self.size += data.len() as u64;
        match &mut self.file {
            Some(f) => f.write_all(data).ctx("write", &self.path),
            None => Err(Error::Conflict("internal: write after finish".into())),
        }
    }
}

impl Drop for LargeObject {
    fn drop(&mut self) {
        if let Some(f) = self.file.take() {
            drop(f);
            let _ = fs::remove_file(&self.path); // unfinished (an error): garbage
        }
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        // Not published (an error or a panic): the temp files are garbage.
        for (p, _) in self.pending.drain(..) {
            let _ = fs::remove_file(p);
        }
    }
}

/// Whether the file at `p` holds exactly `data` (its size is known to match).
fn same_bytes(p: &Path, data: &[u8]) -> std::io::Result<bool> {
    let mut f = File::open(p)?;
    let mut buf = vec![0u8; data.len().min(COPY_BUF)];
    let mut at = 0;
    while at < data.len() {
        // Never more than what is left to compare.
        let want = (data.len() - at).min(buf.len());
        let n = f.read(&mut buf[..want])?;
        if n == 0 || buf[..n] != data[at..at + n] {
            return Ok(false);
        }
        at += n;
    }
    // Nothing more: a file that grew meanwhile is not this content.
    let mut one = [0u8; 1];
    Ok(f.read(&mut one)? == 0)
}

/// Flushes the whole filesystem holding `path` (one `syncfs` for a batch of files).
pub(crate) fn sync_fs(path: &Path) -> Result<()> {
    let f = File::open(path).ctx("open", path)?;
    rustix::fs::syncfs(&f).map_err(|e| Error::io("syncfs", path, e.into()))
}
