//! Layers: ingest of a layer tar into file objects plus index rows, byte-exact export, and the
//! entry list the union filesystem mounts.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};

use rusqlite::{OptionalExtension, params};

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::objects::{IN_MEMORY_LIMIT, LargeObject, Staging};
use crate::store::Store;
use crate::tarfmt::{EntryKind, Next, TarEntry, TarReader, split_parent};

/// gzip's magic bytes (RFC 1952).
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
/// zstd frame magic (RFC 8878), little-endian 0xFD2FB528.
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// xz magic.
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
/// bzip2 magic.
const BZIP2_MAGIC: &[u8] = b"BZh";
/// Read buffer for compressed input.
const INPUT_BUF: usize = 256 << 10;

/// The compression of a layer stream, sniffed from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Summary of an ingested layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerInfo {
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar.
    pub tar_size: u64,
    /// Number of entries.
    pub entries: u64,
    /// True when the store already had this layer (nothing was added).
    pub existed: bool,
    /// Compression the input was in.
    #[serde(skip)]
    pub compression: Compression,
}

/// One entry of a stored layer, as the union filesystem needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Normalised path (`""` is the root); for whiteouts the hidden path.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: i64,
    /// Sub-second part.
    pub mtime_nsec: u32,
    /// Content bytes.
    pub size: u64,
    /// Symlink or hard-link target.
    pub link: Option<String>,
    /// Device numbers.
    pub dev_major: u32,
    /// Device numbers.
    pub dev_minor: u32,
    /// The content object (regular files with content).
    pub object: Option<Digest>,
    /// Extended attributes.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Extended attributes of an entry (name, value).
type Xattrs = Vec<(String, Vec<u8>)>;

/// One entry of a stored layer borrowed from the index row being read, as
/// [`Store::for_each_layer_entry`] hands it over; [`LayerEntryRef::to_owned`] makes a
/// [`LayerEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerEntryRef<'a> {
    /// Normalised path (`""` is the root); for whiteouts the hidden path.
    pub path: &'a str,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time.
    pub mtime: i64,
    /// Sub-second part.
    pub mtime_nsec: u32,
    /// Content bytes.
    pub size: u64,
    /// Symlink or hard-link target.
    pub link: Option<&'a str>,
    /// Device numbers.
    pub dev_major: u32,
    /// Device numbers.
    pub dev_minor: u32,
    /// The content object (regular files with content).
    pub object: Option<Digest>,
    /// Extended attributes.
    pub xattrs: &'a [(String, Vec<u8>)],
}

impl LayerEntryRef<'_> {
    /// The owned entry.
    pub fn to_owned(&self) -> LayerEntry {
        LayerEntry {
            path: self.path.to_owned(),
            kind: self.kind,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
            size: self.size,
            link: self.link.map(str::to_owned),
            dev_major: self.dev_major,
            dev_minor: self.dev_minor,
            object: self.object,
            xattrs: self.xattrs.to_vec(),
        }
    }
}

/// Wraps `input` in the decoder its first bytes call for.
///
/// # Errors
/// xz and bzip2 (not layer media types), read errors.
pub fn decompress<'a>(input: impl Read + 'a) -> Result<(Box<dyn Read + 'a>, Compression)> {
    let mut br = BufReader::with_capacity(INPUT_BUF, input);
    let head = br.fill_buf().map_err(|e| Error::Read {
        what: "input".into(),
        source: e,
    })?;
    if head.starts_with(GZIP_MAGIC) {
        // MultiGzDecoder: pigz and some registries write several gzip members.
        return Ok((
            Box::new(flate2::bufread::MultiGzDecoder::new(br)),
            Compression::Gzip,
        ));
    }
    if head.starts_with(ZSTD_MAGIC) {
        let d = zstd::stream::read::Decoder::with_buffer(br).map_err(|e| Error::Read {
            what: "zstd stream".into(),
            source: e,
        })?;
        return Ok((Box::new(d), Compression::Zstd));
    }
    if head.starts_with(XZ_MAGIC) || head.starts_with(BZIP2_MAGIC) {
        return Err(Error::bad_tar(
            0,
            None,
            "the input is xz or bzip2 compressed; OCI layers are plain, gzip or zstd: \
             decompress it first (xz -d / bunzip2)",
        ));
    }
    Ok((Box::new(br), Compression::None))
}

/// Bytes per chunk handed to the hashing thread.
const HASH_CHUNK: usize = 256 << 10;
/// Chunks queued for the hashing thread before the reader waits for it.
const HASH_DEPTH: usize = 8;

/// A reader that hands every chunk it reads to a hashing thread (one SHA-256 pass over the
/// whole stream, the DiffID, then runs on the second core instead of the ingesting thread).
/// Chunks go back to the reader once hashed, so nothing is allocated per chunk.
struct OffloadHashReader<R> {
    inner: R,
    cur: std::sync::Arc<Vec<u8>>,
    pos: usize,
    count: u64,
    /// A read error met after some bytes of a chunk: returned after those bytes.
    pending_err: Option<std::io::Error>,
    eof: bool,
    tx: Option<crossbeam_channel::Sender<std::sync::Arc<Vec<u8>>>>,
    free: crossbeam_channel::Receiver<std::sync::Arc<Vec<u8>>>,
}

impl<R: Read> OffloadHashReader<R> {
    /// Starts the hashing thread in `scope`; its handle yields the digest once the reader is
    /// dropped or [`OffloadHashReader::finish`]ed.
    fn start<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        inner: R,
    ) -> (
        OffloadHashReader<R>,
        std::thread::ScopedJoinHandle<'scope, Digest>,
    ) {
        let (tx, rx) = crossbeam_channel::bounded::<std::sync::Arc<Vec<u8>>>(HASH_DEPTH);
        let (back, free) = crossbeam_channel::unbounded();
        let handle = scope.spawn(move || {
            let mut h = Hasher::new();
            for chunk in rx {
                h.update(&chunk);
                let _ = back.send(chunk); // the reader may be gone (an error): fine
            }
            h.finish()
        });
        let r = OffloadHashReader {
            inner,
            cur: std::sync::Arc::new(Vec::new()),
            pos: 0,
            count: 0,
            pending_err: None,
            eof: false,
            tx: Some(tx),
            free,
        };
        (r, handle)
    }

    /// Reads the next chunk and queues it for hashing; false at the end of the stream.
    fn refill(&mut self) -> std::io::Result<bool> {
        if let Some(e) = self.pending_err.take() {
            return Err(e);
        }
        if self.eof {
            return Ok(false);
        }
        // Drop our reference first so a chunk coming back is ours alone.
        self.cur = std::sync::Arc::new(Vec::new());
        self.pos = 0;
        let mut buf = crate::digest::recycled_buffer(&self.free, HASH_CHUNK);
        let mut n = 0;
        // Fill most of the chunk (decoders return short reads) so the hand-off is amortised.
        while n < HASH_CHUNK / 2 {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if n == 0 => return Err(e),
                Err(e) => {
                    self.pending_err = Some(e);
                    break;
                }
            }
        }
        if n == 0 {
            return Ok(false);
        }
        self.count += n as u64;
        let chunk = crate::digest::send_chunk(self.tx.as_ref(), buf, n, "layer hashing thread")?;
        self.cur = chunk;
        Ok(true)
    }

    /// Ends the stream: the hashing thread finishes once this returns. Returns the bytes read.
    fn finish(mut self) -> u64 {
        self.tx = None;
        self.count
    }
}

impl<R: Read> Read for OffloadHashReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.cur.len() && !self.refill()? {
            return Ok(0);
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// SQLite page cache for the index transaction of an ingest, in KiB.
const INDEX_CACHE_KIB: i64 = 64 << 10;
/// Contents queued for the object writer before the parser waits for it.
const JOB_DEPTH: usize = 8;
/// Piece of a large content handed to the object writer.
const PART: usize = 1 << 20;

/// Work for the object writer thread of an ingest.
enum Job {
    /// The whole content of entry `seq` (at most [`IN_MEMORY_LIMIT`] bytes): the first `n`
    /// bytes of the buffer (buffers are reused, so they keep their initialised length).
    Small(usize, Vec<u8>, usize),
    /// A large content of entry `seq` starts; [`Job::Part`]s follow, then [`Job::End`].
    Begin(usize),
    /// The next bytes of the large content (the first `n` of the buffer).
    Part(Vec<u8>, usize),
    /// The large content is complete.
    End,
}

/// The object writer: hashes each content and writes the new ones into `staging`; returns it
/// with the digest of each entry that has content. Buffers go back through `back`.
fn store_objects(
    mut staging: Staging<'_>,
    jobs: crossbeam_channel::Receiver<Job>,
    back: crossbeam_channel::Sender<Vec<u8>>,
) -> Result<(Staging<'_>, Vec<(usize, Digest)>)> {
    let mut out = Vec::new();
    let mut large: Option<(usize, LargeObject)> = None;
    for job in jobs {
        match job {
            Job::Small(seq, data, n) => {
                out.push((seq, staging.add_bytes(&data[..n])?));
                let _ = back.send(data);
            }
            Job::Begin(seq) => large = Some((seq, staging.begin_large()?)),
            Job::Part(data, n) => {
                if let Some((_, o)) = &mut large {
                    o.write(&data[..n])?;
                }
                let _ = back.send(data);
            }
            Job::End => {
                if let Some((seq, o)) = large.take() {
                    out.push((seq, staging.finish_large(o)?));
                }
            }
        }
    }
    Ok((staging, out))
}

/// Reads exactly `buf.len()` content bytes of the current entry.
fn read_full<R: Read>(tar: &mut TarReader<R>, buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = tar.read_content(&mut buf[done..])?;
        if n == 0 {
            return Err(Error::Conflict(
                "internal: content shorter than its size".into(),
            ));
        }
        done += n;
    }
    Ok(())
}

/// A parsed entry plus where its content went.
struct Row {
    entry: TarEntry,
    object: Option<Digest>,
    pad: Option<Vec<u8>>,
}

/// Checks one entry against the ones before it in the same layer.
#[derive(Default)]
struct LayerValidator {
    seen: HashMap<String, EntryKind>,
    whiteouts: HashSet<String>,
    opaque: HashSet<String>,
}

impl LayerValidator {
    fn check(&mut self, e: &TarEntry, offset: u64) -> Result<()> {
        let bad = |reason: String| Error::bad_tar(offset, Some(&e.path), reason);
        // No entry may be reached through a non-directory of the same layer (a symlink
        // followed by a file through it is the classic traversal).
        let mut p = e.path.as_str();
        if matches!(e.kind, EntryKind::Opaque)
            && let Some(k) = self.seen.get(p)
            && *k != EntryKind::Dir
        {
            return Err(bad(format!("opaque marker inside a {}", k.name())));
        }
        loop {
            let (parent, _) = split_parent(p);
            if p.is_empty() {
                break;
            }
            if let Some(k) = self.seen.get(parent)
                && *k != EntryKind::Dir
            {
                return Err(bad(format!(
                    "the path goes through {parent:?}, which is a {} in this layer, not a \
                     directory (refusing path traversal)",
                    k.name()
                )));
            }
            p = parent;
        }
        match e.kind {
            EntryKind::Whiteout => {
                if !self.whiteouts.insert(e.path.clone()) {
                    return Err(bad("duplicate whiteout".into()));
                }
            }
            EntryKind::Opaque => {
                if !self.opaque.insert(e.path.clone()) {
                    return Err(bad("duplicate opaque marker".into()));
                }
            }
            kind => {
                if e.path.is_empty() && kind != EntryKind::Dir {
                    return Err(bad("the root of a layer must be a directory".into()));
                }
                if kind == EntryKind::HardLink {
                    let target = e.link.as_deref().unwrap_or_default();
                    match self.seen.get(target) {
                        Some(EntryKind::File) => {}
                        Some(k) => {
                            return Err(bad(format!(
                                "hard link to {target:?}, which is a {}, not a regular file",
                                k.name()
                            )));
                        }
                        None => {
                            return Err(bad(format!(
                                "hard link to {target:?}, which is not an earlier file of this \
                                 layer (links to outside the layer are refused)"
                            )));
                        }
                    }
                }
                let stored = if kind == EntryKind::HardLink {
                    EntryKind::File
                } else {
                    kind
                };
                if self.seen.insert(e.path.clone(), stored).is_some() {
                    return Err(bad(
                        "duplicate path: it appears twice in the layer (OCI layers must not \
                         contain duplicates); rebuild the tar"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// Ingests a layer tar (plain, gzip or zstd): every file's content becomes an object, the
    /// headers go to the index. Nothing is visible until the final transaction commits.
    /// With `expected`, the layer is refused unless its DiffID matches.
    ///
    /// # Errors
    /// Malformed or unsafe tar (see [`Error::BadTar`]), digest mismatch, I/O.
    pub fn ingest_layer(&self, input: impl Read, expected: Option<&Digest>) -> Result<LayerInfo> {
        let _lock = self.lock_shared()?;
        let (decoded, compression) = decompress(input)?;
        std::thread::scope(|s| {
            let (hashing, hasher) = OffloadHashReader::start(s, decoded);
            self.ingest_tar(hashing, hasher, expected, compression)
        })
    }

    /// The body of [`Store::ingest_layer`]: parse, store objects, commit rows. `hasher` yields
    /// the digest of everything `hashing` read once it is finished.
    fn ingest_tar<R: Read>(
        &self,
        hashing: OffloadHashReader<R>,
        hasher: std::thread::ScopedJoinHandle<'_, Digest>,
        expected: Option<&Digest>,
        compression: Compression,
    ) -> Result<LayerInfo> {
        let mut tar = TarReader::new(hashing);
        let staging = self.objects().staging()?;
        let mut rows: Vec<Row> = Vec::new();
        let mut validator = LayerValidator::default();
        // Contents go to a worker thread that hashes them and writes the new ones to `tmp/`,
        // while this thread parses on (and a third hashes the whole stream).
        let (tx, rx) = crossbeam_channel::bounded::<Job>(JOB_DEPTH);
        let (back, free) = crossbeam_channel::unbounded::<Vec<u8>>();
        let (parsed, stored) = std::thread::scope(|s| {
            let worker = s.spawn(move || store_objects(staging, rx, back));
            let parsed = (|| -> Result<Vec<u8>> {
                let send = |job: Job| {
                    tx.send(job)
                        .map_err(|_| Error::Conflict("internal: the object writer stopped".into()))
                };
                // A reused buffer of at least `n` bytes (zeroed only where it grows).
                let buf = |n: usize| -> Vec<u8> {
                    let mut v = free.try_recv().unwrap_or_default();
                    if v.len() < n {
                        v.resize(n, 0);
                    }
                    v
                };
                loop {
                    let at = tar.offset();
                    match tar.next_entry()? {
                        Next::End(trailer) => return Ok(trailer),
                        Next::Entry(entry) => {
                            validator.check(&entry, at)?;
                            let seq = rows.len();
                            if entry.size > 0 && entry.size <= IN_MEMORY_LIMIT {
                                let n = entry.size as usize;
                                let mut data = buf(n);
                                read_full(&mut tar, &mut data[..n])?;
                                send(Job::Small(seq, data, n))?;
                            } else if entry.size > 0 {
                                send(Job::Begin(seq))?;
                                let mut left = entry.size;
                                while left > 0 {
                                    let n = PART.min(left as usize);
                                    let mut part = buf(n);
                                    read_full(&mut tar, &mut part[..n])?;
                                    left -= n as u64;
                                    send(Job::Part(part, n))?;
                                }
                                send(Job::End)?;
                            }
                            let pad = tar.finish_content()?;
                            rows.push(Row {
                                entry: *entry,
                                object: None,
                                pad,
                            });
                        }
                    }
                }
            })();
            drop(tx);
            let stored = worker.join().unwrap_or_else(|_| {
                Err(Error::Conflict(
                    "internal: the object writer thread panicked".into(),
                ))
            });
            (parsed, stored)
        });
        // The worker's own error explains a stop better than the closed channel does.
        let (trailer, (staging, objects)) = match (parsed, stored) {
            (_, Err(e)) | (Err(e), Ok(_)) => return Err(e),
            (Ok(t), Ok(st)) => (t, st),
        };
        for (seq, d) in objects {
            if let Some(r) = rows.get_mut(seq) {
                r.object = Some(d);
            }
        }
        let tar_size = tar.into_inner().finish();
        let diff_id = hasher
            .join()
            .map_err(|_| Error::Conflict("internal: the layer hashing thread panicked".into()))?;
        if let Some(exp) = expected
            && *exp != diff_id
        {
            return Err(Error::DigestMismatch {
                what: "layer (diff_id)".into(),
                expected: exp.to_string(),
                actual: diff_id.to_string(),
            });
        }
        let entries = rows.len() as u64;
        let info = |existed| LayerInfo {
            diff_id,
            tar_size,
            entries,
            existed,
            compression,
        };
        // Published even when the layer is stored already: then what was staged is an object
        // missing or damaged on disk, so ingesting the same layer again repairs it.
        staging.publish()?;
        // A stored layer is held by the active lease (if any) in the transaction that finds it.
        if self.hold_layers(&[diff_id])? {
            return Ok(info(true));
        }
        // SQLite's default page cache (2 MiB) is far smaller than the index pages a big layer
        // touches (random object digests): it spilled pages to the WAL mid-transaction, over
        // and over (seconds for a 20k-file layer). The cache grows only as pages are used.
        self.with_conn(|c| c.pragma_update(None, "cache_size", -INDEX_CACHE_KIB))?;
        let lease = self.active_lease_id();
        let existed = self.with_tx(|tx| {
            let hold = |tx: &rusqlite::Transaction<'_>| match lease {
                Some(l) => crate::lease::hold_in_tx(tx, l, crate::lease::KIND_LAYER, &diff_id),
                None => Ok(true),
            };
            if tx
                .query_row("SELECT id FROM layers WHERE diff_id = ?1", [diff_id.bytes()], |r| {
                    r.get::<_, i64>(0)
                })
                .optional()?
                .is_some()
            {
                return hold(tx); // another process committed it meanwhile
            }
            tx.execute(
                "INSERT INTO layers (diff_id, tar_size, entries, trailer, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![diff_id.bytes(), tar_size as i64, entries as i64, trailer, crate::image::now_rfc3339()],
            )?;
            let layer = tx.last_insert_rowid();
            let mut obj = tx.prepare_cached("INSERT OR IGNORE INTO objects (digest, size) VALUES (?1, ?2)")?;
            let mut ent = tx.prepare_cached(
                "INSERT INTO layer_entries (layer, seq, path, kind, mode, uid, gid, mtime, \
                 mtime_nsec, size, link, dev_major, dev_minor, object, header, pad) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?;
            let mut xat = tx.prepare_cached(
                "INSERT OR REPLACE INTO entry_xattrs (layer, seq, name, value) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (seq, row) in rows.iter().enumerate() {
                let e = &row.entry;
                if let Some(o) = &row.object {
                    obj.execute(params![o.bytes(), e.size as i64])?;
                }
                ent.execute(params![
                    layer,
                    seq as i64,
                    e.path,
                    e.kind.code(),
                    e.mode,
                    e.uid,
                    e.gid,
                    e.mtime,
                    e.mtime_nsec,
                    e.size as i64,
                    e.link,
                    e.dev_major,
                    e.dev_minor,
                    row.object.as_ref().map(|o| o.bytes().to_vec()),
                    e.header,
                    row.pad,
                ])?;
                for (name, value) in &e.xattrs {
                    xat.execute(params![layer, seq as i64, name, value])?;
                }
            }
            hold(tx)?;
            Ok(false)
        })?;
        Ok(info(existed))
    }

    /// The index row id of a layer, if stored.
    pub(crate) fn layer_id(&self, diff_id: &Digest) -> Result<Option<i64>> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT id FROM layers WHERE diff_id = ?1",
                [diff_id.bytes()],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn require_layer(&self, diff_id: &Digest) -> Result<(i64, u64, Vec<u8>)> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT id, tar_size, trailer FROM layers WHERE diff_id = ?1",
                [diff_id.bytes()],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?)),
            )
            .optional()
        })?
        .ok_or_else(|| Error::NotFound {
            kind: "layer",
            name: diff_id.to_string(),
            hint: "; 'strata inspect IMAGE' lists an image's layers (rootfs.diff_ids)".into(),
        })
    }

    /// Resolves a layer given as a full digest, bare hex, or a unique hex prefix.
    ///
    /// # Errors
    /// Unknown or ambiguous.
    pub fn resolve_layer(&self, s: &str) -> Result<Digest> {
        if let Ok(d) = Digest::parse_lenient(s) {
            return Ok(d);
        }
        let prefix = s
            .strip_prefix(crate::digest::SHA256_PREFIX)
            .unwrap_or(s)
            .to_ascii_lowercase();
        let all: Vec<Vec<u8>> = self.with_conn(|c| {
            let mut st = c.prepare("SELECT diff_id FROM layers")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })?;
        let matches: Vec<Digest> = all
            .iter()
            .filter_map(|b| Digest::from_bytes(b).ok())
            .filter(|d| !prefix.is_empty() && d.hex().starts_with(&prefix))
            .collect();
        match matches.len() {
            1 => Ok(matches[0]),
            0 => Err(Error::NotFound {
                kind: "layer",
                name: s.to_owned(),
                hint: "; 'strata inspect IMAGE' lists an image's layers (rootfs.diff_ids)".into(),
            }),
            n => Err(Error::Ambiguous {
                kind: "layer",
                prefix: s.to_owned(),
                count: n,
            }),
        }
    }

    /// Writes the layer's tar, byte for byte as it was ingested, and checks its DiffID.
    /// Returns the number of bytes written.
    ///
    /// # Errors
    /// Unknown layer, missing objects, a regenerated stream that does not match the DiffID
    /// (a damaged store), write errors.
    pub fn export_layer(&self, diff_id: &Digest, out: &mut dyn Write) -> Result<u64> {
        let (layer, tar_size, trailer) = self.require_layer(diff_id)?;
        type Seg = (Vec<u8>, u64, Option<Vec<u8>>, Option<Vec<u8>>);
        let segs: Vec<Seg> = self.with_conn(|c| {
            let mut st = c.prepare(
                "SELECT header, size, object, pad FROM layer_entries WHERE layer = ?1 ORDER BY seq",
            )?;
            let rows = st.query_map([layer], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?, r.get(3)?))
            })?;
            rows.collect()
        })?;
        let mut w = crate::digest::HashWrite {
            inner: out,
            hasher: Hasher::new(),
            count: 0,
        };
        let werr = |e| Error::io("write", "layer output", e);
        let zeros = [0u8; crate::tarfmt::BLOCK];
        for (header, size, object, pad) in segs {
            w.write_all(&header).map_err(werr)?;
            if size > 0 {
                let d = Digest::from_bytes(object.as_deref().unwrap_or_default())?;
                let f = self.objects().open(&d)?;
                let copied = std::io::copy(&mut f.take(size), &mut w).map_err(werr)?;
                if copied != size {
                    return Err(Error::Conflict(format!(
                        "object {d} holds {copied} bytes, the layer needs {size}; the store is \
                         damaged: run 'strata fsck'"
                    )));
                }
                match pad {
                    Some(p) => w.write_all(&p).map_err(werr)?,
                    None => {
                        let n = ((crate::tarfmt::BLOCK as u64 - size % crate::tarfmt::BLOCK as u64)
                            % crate::tarfmt::BLOCK as u64) as usize;
                        w.write_all(&zeros[..n]).map_err(werr)?;
                    }
                }
            }
        }
        w.write_all(&trailer).map_err(werr)?;
        w.flush().map_err(werr)?;
        let got = w.hasher.finish();
        if got != *diff_id || w.count != tar_size {
            return Err(Error::DigestMismatch {
                what: "regenerated layer tar (the store is damaged: run 'strata fsck')".into(),
                expected: diff_id.to_string(),
                actual: got.to_string(),
            });
        }
        Ok(w.count)
    }

    /// Hashes the regenerated tar of a layer without writing it anywhere.
    pub(crate) fn verify_layer(&self, diff_id: &Digest) -> Result<()> {
        self.export_layer(diff_id, &mut std::io::sink()).map(|_| ())
    }

    /// The entries of a stored layer in tar order, for mounting.
    ///
    /// # Errors
    /// Unknown layer, a damaged index.
    pub fn layer_entries(&self, diff_id: &Digest) -> Result<Vec<LayerEntry>> {
        let mut out = Vec::new();
        self.for_each_layer_entry(diff_id, |e| {
            out.push(e.to_owned());
            Ok::<(), Error>(())
        })?;
        Ok(out)
    }

    /// Number of entries of a stored layer.
    ///
    /// # Errors
    /// Unknown layer.
    pub fn layer_entry_count(&self, diff_id: &Digest) -> Result<u64> {
        self.with_conn(|c| {
            c.query_row(
                "SELECT entries FROM layers WHERE diff_id = ?1",
                [diff_id.bytes()],
                |r| r.get::<_, i64>(0),
            )
            .optional()
        })?
        .map(|n| n as u64)
        .ok_or_else(|| Error::NotFound {
            kind: "layer",
            name: diff_id.to_string(),
            hint: "; 'strata inspect IMAGE' lists an image's layers (rootfs.diff_ids)".into(),
        })
    }

    /// Calls `f` with every entry of a stored layer in tar order, borrowed from the index row
    /// being read: nothing is allocated per entry (the fast path of a mount). `f` returning an
    /// error stops the walk and is returned.
    ///
    /// # Errors
    /// Unknown layer, a damaged index, or `f`'s error.
    pub fn for_each_layer_entry<E: From<Error>>(
        &self,
        diff_id: &Digest,
        mut f: impl FnMut(&LayerEntryRef<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let (layer, _, _) = self.require_layer(diff_id)?;
        let mut failed: Option<E> = None;
        self.with_conn(|c| {
            // Entries with extended attributes are rare: read them all first, in seq order,
            // and merge them in while walking the entries (also in seq order).
            let mut xs: Vec<(i64, Xattrs)> = Vec::new();
            let mut st = c.prepare_cached(
                "SELECT seq, name, value FROM entry_xattrs WHERE layer = ?1 ORDER BY seq, name",
            )?;
            let mut rows = st.query([layer])?;
            while let Some(r) = rows.next()? {
                let seq: i64 = r.get(0)?;
                let x = (r.get(1)?, r.get(2)?);
                match xs.last_mut() {
                    Some((s, v)) if *s == seq => v.push(x),
                    _ => xs.push((seq, vec![x])),
                }
            }
            let mut xs = xs.into_iter().peekable();
            let mut st = c.prepare_cached(
                "SELECT seq, path, kind, mode, uid, gid, mtime, mtime_nsec, size, link, \
                 dev_major, dev_minor, object FROM layer_entries WHERE layer = ?1 ORDER BY seq",
            )?;
            let mut rows = st.query([layer])?;
            let mut cur_x: Xattrs = Vec::new();
            while let Some(r) = rows.next()? {
                let seq: i64 = r.get(0)?;
                cur_x.clear();
                while let Some((s, _)) = xs.peek() {
                    if *s > seq {
                        break;
                    }
                    let (s, v) = xs.next().unwrap_or_default();
                    if s == seq {
                        cur_x = v;
                    }
                }
                let kind: u8 = r.get(2)?;
                let e = LayerEntryRef {
                    path: r.get_ref(1)?.as_str()?,
                    kind: EntryKind::from_code(kind).ok_or_else(|| {
                        rusqlite::Error::IntegralValueOutOfRange(2, i64::from(kind))
                    })?,
                    mode: r.get(3)?,
                    uid: r.get(4)?,
                    gid: r.get(5)?,
                    mtime: r.get(6)?,
                    mtime_nsec: r.get(7)?,
                    size: r.get::<_, i64>(8)? as u64,
                    link: r.get_ref(9)?.as_str_or_null()?,
                    dev_major: r.get(10)?,
                    dev_minor: r.get(11)?,
                    object: r
                        .get_ref(12)?
                        .as_blob_or_null()?
                        .and_then(|b| Digest::from_bytes(b).ok()),
                    xattrs: &cur_x,
                };
                if let Err(err) = f(&e) {
                    failed = Some(err);
                    break;
                }
            }
            Ok(())
        })?;
        failed.map_or(Ok(()), Err)
    }
}
