//! Compressed layer blobs (gzip, zstd) for push and pull: made deterministically, recorded in
//! `layer_blobs`, kept or regenerated.
//!
//! # What is kept
//!
//! * **Blobs made here** (push of a local layer) are *not* kept. They are a pure function of
//!   the layer tar (which the store regenerates byte for byte) and of the codec settings
//!   pinned below, so only their digest, size, codec and level are recorded (`stored = 0`).
//!   A later push HEADs that digest and skips the upload when the registry has it; when it
//!   does not, the blob is regenerated into a temp file and must hash to the recorded digest.
//!   This avoids keeping every layer twice on disk (containerd's compressed + unpacked copies).
//! * **Pulled blobs** were made by someone else's compressor and cannot be regenerated, so the
//!   original bytes are kept under `<root>/blobs/sha256/<hex>` (`stored = 1`) together with
//!   the repository they came from: a re-push of a pulled image sends the same bytes (same
//!   digests, same manifest layers), or mounts them from their source repository.
//!
//! Blob files are written crash-safely: to `tmp/`, fsync, rename to the final name, fsync
//! the directory, and only then is the row committed. A blob file without a row (a crash in
//! between, or a layer removed by gc) is garbage that `gc` removes.
//!
//! # Deterministic compression
//!
//! gzip is made like `pigz`: the tar is cut into [`GZIP_BLOCK`]-byte blocks, each block is
//! deflated on its own (flate2's zlib-rs backend, level [`GZIP_LEVEL`], no preset dictionary)
//! and ended with a sync flush, so blocks concatenate into one valid deflate stream, closed
//! by an empty final block; the CRC-32 is combined from the blocks' CRCs. Blocks are
//! compressed in parallel, and the bytes depend only on the input, the block size and the
//! level — never on the thread count. The result is one ordinary gzip member any gunzip reads.
//! zstd uses level [`ZSTD_LEVEL`] with [`ZSTD_WORKERS`] workers (any count ≥ 1 gives the same
//! bytes; 0 would not, facebook/zstd#2327).
//!
//! # Manifests
//!
//! [`image_manifest`] writes the OCI (or Docker v2) manifest of an image compactly with a fixed
//! field order (the same shape `save` writes); [`parse_manifest`] reads manifests and
//! indexes/manifest lists of any of the four media types leniently.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::archive::media;
use crate::digest::{Digest, Hasher};
use crate::digest::{HashWrite, ProgressWrite};
use crate::error::{Error, IoContext, Result};
use crate::layer::LayerInfo;
use crate::objects::TMP_DIR;
use crate::store::Store;

/// Directory of kept (pulled) compressed blobs under the store root.
pub const BLOBS_DIR: &str = "blobs/sha256";
/// gzip level of blobs made here. 1: with zlib-rs it deflates several times faster than
/// level 6 for ~7 % more bytes on a Debian rootfs (99 vs 93 MB), which makes push (compress +
/// upload) about twice as fast; registries and clients read any level.
pub const GZIP_LEVEL: u32 = 1;
/// Input bytes per independently deflated gzip block. Part of the output format: changing it
/// changes every digest. 1 MiB costs < 0.1 % in ratio against one stream and gives enough
/// blocks to keep every core busy.
pub const GZIP_BLOCK: usize = 1 << 20;
/// zstd level of blobs made here (the zstd CLI's default).
pub const ZSTD_LEVEL: i32 = 3;
/// zstd worker threads; never 0 (see the module docs).
pub const ZSTD_WORKERS: u32 = 2;
/// The end of a deflate stream after sync-flushed blocks: an empty final block with fixed
/// Huffman codes (what zlib emits for `Z_FINISH` on no input).
const DEFLATE_FINAL_BLOCK: [u8; 2] = [0x03, 0x00];
/// gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS "unknown" (255), so the
/// bytes do not depend on the machine or the time.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
/// Copy buffer.
const COPY_BUF: usize = 1 << 20;
/// Decompressed buffers in flight between the decoder thread and the ingest of a pull.
const PIPE_DEPTH: usize = 8;

/// The reading end of the decoder thread's pipe: buffers of `COPY_BUF` bytes, the first `n`
/// of them filled; each goes back through `free` once read, so the decoder allocates none
/// per read (a fresh zeroed megabyte per read cost more than the inflate).
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<(Vec<u8>, usize)>>,
    free: std::sync::mpsc::Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    end: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.end {
            match self.rx.recv() {
                Ok(Ok((v, n))) => {
                    let old = std::mem::replace(&mut self.cur, v);
                    if !old.is_empty() {
                        let _ = self.free.send(old); // the decoder may have finished: fine
                    }
                    self.pos = 0;
                    self.end = n;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the decoder finished
            }
        }
        let n = buf.len().min(self.end - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A compression this store can make deterministically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobCodec {
    /// gzip (`tar+gzip`), the default: every registry and client reads it.
    Gzip,
    /// zstd (`tar+zstd`): OCI manifests only.
    Zstd,
}

impl BlobCodec {
    /// Name as stored in `layer_blobs.codec`.
    pub fn name(self) -> &'static str {
        match self {
            BlobCodec::Gzip => "gzip",
            BlobCodec::Zstd => "zstd",
        }
    }

    /// The pinned level.
    pub fn level(self) -> i64 {
        match self {
            BlobCodec::Gzip => i64::from(GZIP_LEVEL),
            BlobCodec::Zstd => i64::from(ZSTD_LEVEL),
        }
    }

    /// OCI layer media type.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            BlobCodec::Gzip => media::OCI_LAYER_GZIP,
            BlobCodec::Zstd => media::OCI_LAYER_ZSTD,
        }
    }

    /// Parses `gzip` / `zstd`.
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(s: &str) -> Result<BlobCodec> {
        match s {
            "gzip" => Ok(BlobCodec::Gzip),
            "zstd" => Ok(BlobCodec::Zstd),
            _ => Err(Error::Conflict(format!(
                "unknown compression {s:?}: use gzip or zstd"
            ))),
        }
    }
}

/// Docker v2 schema 2 layer media type (gzip; the only one that format defines).
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker's uncompressed layer (containerd).
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker's zstd layer (containerd).
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The compression a layer media type announces: `Some("gzip"|"zstd"|"none")`, `None` for a
/// type that is not a layer we can store (foreign/nondistributable, artifacts).
pub fn layer_compression(media_type: &str) -> Option<&'static str> {
    match media_type {
        media::OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Some("gzip"),
        media::OCI_LAYER_ZSTD | DOCKER_LAYER_ZSTD => Some("zstd"),
        media::OCI_LAYER | DOCKER_LAYER => Some("none"),
        _ => None,
    }
}

/// A compressed form of a layer, as `layer_blobs` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerBlob {
    /// sha256 of the compressed bytes.
    pub digest: Digest,
    /// The layer.
    pub diff_id: Digest,
    /// Media type it was pushed or pulled with.
    pub media_type: String,
    /// Bytes.
    pub size: u64,
    /// `gzip`, `zstd` or `none`.
    pub codec: String,
    /// The pinned level when made here; `None` when pulled.
    pub level: Option<i64>,
    /// `registry/repository` it came from or was last pushed to.
    pub source: Option<String>,
    /// True when the bytes are kept under `blobs/`.
    pub stored: bool,
}

impl LayerBlob {
    /// True when this store can regenerate the bytes (made here with the pinned settings).
    pub fn regenerable(&self) -> bool {
        match BlobCodec::parse(&self.codec) {
            Ok(c) => self.level == Some(c.level()),
            Err(_) => false,
        }
    }
}

/// A compressed blob in an unlinked temp file, rewound, ready to upload.
#[derive(Debug)]
pub struct SpooledBlob {
    /// The bytes.
    pub file: File,
    /// Their sha256.
    pub digest: Digest,
    /// Their count.
    pub size: u64,
}

/// What a pulled blob must be.
#[derive(Debug, Clone)]
pub struct ExpectedBlob {
    /// Announced digest (the manifest's descriptor).
    pub digest: Digest,
    /// Announced size.
    pub size: u64,
    /// Announced media type.
    pub media_type: String,
}

/// One compressed gzip block: its deflate bytes and the CRC of its input.
type GzBlock = (Vec<u8>, flate2::Crc);

fn deflate_block(input: &[u8], level: u32) -> io::Result<GzBlock> {
    let mut c = flate2::Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(input.len() + input.len() / 8 + 1024);
    let mut consumed = 0usize;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity() / 2 + 4096);
        }
        let before = c.total_in();
        c.compress_vec(&input[consumed..], &mut out, flate2::FlushCompress::Sync)
            .map_err(io::Error::other)?;
        consumed += (c.total_in() - before) as usize;
        // Done when all input is in and the flush left spare room (so it completed).
        if consumed == input.len() && out.capacity() - out.len() >= 1024 {
            break;
        }
    }
    let mut crc = flate2::Crc::new();
    crc.update(input);
    Ok((out, crc))
}

/// A `Write` that gzips in parallel blocks (see the module docs) into `out`.
struct ParallelGz<'a> {
    out: &'a mut dyn Write,
    buf: Vec<u8>,
    next_in: u64,
    next_out: u64,
    jobs: Option<crossbeam_channel::Sender<(u64, Vec<u8>)>>,
    results: crossbeam_channel::Receiver<(u64, io::Result<GzBlock>)>,
    pending: BTreeMap<u64, GzBlock>,
    crc: flate2::Crc,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl<'a> ParallelGz<'a> {
    fn new(out: &'a mut dyn Write, threads: usize) -> io::Result<ParallelGz<'a>> {
        out.write_all(&GZIP_HEADER)?;
        let threads = threads.max(1);
        let (jtx, jrx) = crossbeam_channel::bounded::<(u64, Vec<u8>)>(threads * 2);
        let (rtx, rrx) = crossbeam_channel::unbounded();
        let workers = (0..threads)
            .map(|_| {
                let jrx = jrx.clone();
                let rtx = rtx.clone();
                std::thread::spawn(move || {
                    for (seq, block) in jrx {
                        if rtx.send((seq, deflate_block(&block, GZIP_LEVEL))).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        Ok(ParallelGz {
            out,
            buf: Vec::with_capacity(GZIP_BLOCK),
            next_in: 0,
            next_out: 0,
            jobs: Some(jtx),
            results: rrx,
            pending: BTreeMap::new(),
            crc: flate2::Crc::new(),
            workers,
        })
    }

    fn emit_ready(&mut self) -> io::Result<()> {
        while let Some((data, crc)) = self.pending.remove(&self.next_out) {
            self.out.write_all(&data)?;
            self.crc.combine(&crc);
            self.next_out += 1;
        }
        Ok(())
    }

    fn collect(&mut self, block: bool) -> io::Result<()> {
        loop {
            let r = if block && self.next_out < self.next_in && self.pending.is_empty() {
                self.results.recv().map_err(io::Error::other)
            } else {
                match self.results.try_recv() {
                    Ok(r) => Ok(r),
                    Err(_) => break,
                }
            };
            let (seq, res) = r?;
            self.pending.insert(seq, res?);
            self.emit_ready()?;
        }
        self.emit_ready()
    }

    fn send_block(&mut self) -> io::Result<()> {
        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(GZIP_BLOCK));
        let seq = self.next_in;
        self.next_in += 1;
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))?
            .send((seq, block))
            .map_err(io::Error::other)?;
        self.collect(false)
    }

    fn finish(mut self) -> io::Result<()> {
        if !self.buf.is_empty() || self.next_in == 0 {
            self.send_block()?;
        }
        self.jobs = None;
        while self.next_out < self.next_in {
            let (seq, res) = self.results.recv().map_err(io::Error::other)?;
            self.pending.insert(seq, res?);
            self.emit_ready()?;
        }
        self.out.write_all(&DEFLATE_FINAL_BLOCK)?;
        self.out.write_all(&self.crc.sum().to_le_bytes())?;
        self.out.write_all(&self.crc.amount().to_le_bytes())?;
        self.out.flush()
    }
}

impl Write for ParallelGz<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(GZIP_BLOCK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == GZIP_BLOCK {
            self.send_block()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ParallelGz<'_> {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join(); // workers end when the job channel closes
        }
    }
}

/// Threads for gzip blocks: the machine's cores (the output does not depend on it).
fn gzip_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(16)
}

fn tmp_name(root: &std::path::Path, what: &str) -> PathBuf {
    root.join(TMP_DIR).join(format!(
        "{what}-{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Bytes per chunk the tee hands to its thread.
const TEE_CHUNK: usize = 256 << 10;
/// Chunks queued for the tee thread.
const TEE_DEPTH: usize = 8;

/// What the tee thread hands back at the end: the digest of the blob, the copy (when kept)
/// and the first error writing it.
type TeeEnd = (Digest, Option<(File, PathBuf)>, io::Result<()>);

/// A reader that counts what passes and hands it, in chunks, to a thread that hashes it and
/// keeps a copy in a file (so neither costs the decoder's thread); it fails at the end of the
/// stream when the bytes are not what was announced, so a bad blob never commits.
struct VerifyingTee<'s, R> {
    inner: R,
    cur: std::sync::Arc<Vec<u8>>,
    pos: usize,
    count: u64,
    expected: ExpectedBlob,
    tx: Option<crossbeam_channel::Sender<std::sync::Arc<Vec<u8>>>>,
    free: crossbeam_channel::Receiver<std::sync::Arc<Vec<u8>>>,
    thread: Option<std::thread::ScopedJoinHandle<'s, TeeEnd>>,
    /// The copy, once the thread has finished.
    copy: Option<(File, PathBuf)>,
}

impl<'s, R: Read> VerifyingTee<'s, R> {
    fn start<'e>(
        scope: &'s std::thread::Scope<'s, 'e>,
        inner: R,
        expected: ExpectedBlob,
        copy: Option<(File, PathBuf)>,
    ) -> VerifyingTee<'s, R> {
        let (tx, rx) = crossbeam_channel::bounded::<std::sync::Arc<Vec<u8>>>(TEE_DEPTH);
        let (back, free) = crossbeam_channel::unbounded();
        let thread = scope.spawn(move || {
            let mut h = Hasher::new();
            let mut copy = copy;
            let mut res = Ok(());
            for chunk in rx {
                h.update(&chunk);
                if res.is_ok()
                    && let Some((f, p)) = &mut copy
                    && let Err(e) = f.write_all(&chunk)
                {
                    res = Err(io::Error::new(
                        e.kind(),
                        format!("write {}: {e}", p.display()),
                    ));
                }
                let _ = back.send(chunk); // the reader may be gone (an error): fine
            }
            (h.finish(), copy, res)
        });
        VerifyingTee {
            inner,
            cur: std::sync::Arc::new(Vec::new()),
            pos: 0,
            count: 0,
            expected,
            tx: Some(tx),
            free,
            thread: Some(thread),
            copy: None,
        }
    }

    /// Stops the thread (if the stream did not reach its end) and returns the copy.
    fn into_copy(mut self) -> Option<(File, PathBuf)> {
        self.tx = None;
        if let Some(t) = self.thread.take()
            && let Ok((_, copy, _)) = t.join()
        {
            self.copy = copy;
        }
        self.copy.take()
    }

    /// The end of the stream: waits for the thread, then checks size and digest.
    fn finish(&mut self) -> io::Result<()> {
        self.tx = None;
        let Some(t) = self.thread.take() else {
            return Ok(()); // checked already
        };
        let (got, copy, res) = t
            .join()
            .map_err(|_| io::Error::other("internal: the blob hashing thread panicked"))?;
        self.copy = copy;
        res?;
        if self.count != self.expected.size || got != self.expected.digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {} is not what the registry announced: expected {} bytes, got {} \
                     bytes with digest {got}",
                    self.expected.digest, self.expected.size, self.count
                ),
            ));
        }
        Ok(())
    }

    /// Reads the next chunk and queues it; false at the end (after the checks passed).
    fn refill(&mut self) -> io::Result<bool> {
        if self.thread.is_none() {
            return Ok(false);
        }
        // Drop our reference first so a chunk coming back is ours alone.
        self.cur = std::sync::Arc::new(Vec::new());
        self.pos = 0;
        let mut buf = crate::digest::recycled_buffer(&self.free, TEE_CHUNK);
        let mut n = 0;
        while n < TEE_CHUNK {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            self.finish()?;
            return Ok(false);
        }
        self.count += n as u64;
        if self.count > self.expected.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "blob {} is larger than the {} bytes announced",
                    self.expected.digest, self.expected.size
                ),
            ));
        }
        let chunk = crate::digest::send_chunk(self.tx.as_ref(), buf, n, "blob hashing thread")?;
        self.cur = chunk;
        Ok(true)
    }
}

impl<R: Read> Read for VerifyingTee<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.cur.len() && !self.refill()? {
            return Ok(0);
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Store {
    /// Path of a kept blob (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root().join(BLOBS_DIR).join(d.hex())
    }

    /// Whether the layer is in the store. Under an active lease ([`Store::lease`]) a stored
    /// layer is held too, in the same transaction: a writer that skips a layer it finds here
    /// can rely on it staying until its image references it.
    ///
    /// # Errors
    /// Index errors.
    pub fn has_layer(&self, diff_id: &Digest) -> Result<bool> {
        self.hold_layers(std::slice::from_ref(diff_id))
    }

    /// The compressed forms recorded for a layer: kept ones first, then regenerable ones.
    ///
    /// # Errors
    /// Index errors.
    pub fn layer_blobs(&self, diff_id: &Digest) -> Result<Vec<LayerBlob>> {
        type Row = (
            Vec<u8>,
            String,
            i64,
            String,
            Option<i64>,
            Option<String>,
            i64,
        );
        let rows: Vec<Row> = self.with_conn(|c| {
            let mut st = c.prepare(
                "SELECT digest, media_type, size, codec, level, source, stored FROM layer_blobs \
                 WHERE diff_id = ?1 ORDER BY stored DESC, digest",
            )?;
            let rows = st.query_map([diff_id.bytes()], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(d, media_type, size, codec, level, source, stored)| {
                Ok(LayerBlob {
                    digest: Digest::from_bytes(&d)?,
                    diff_id: *diff_id,
                    media_type,
                    size: size as u64,
                    codec,
                    level,
                    source,
                    stored: stored != 0,
                })
            })
            .collect()
    }

    /// Records (or updates) a compressed form of a stored layer. An existing row keeps its
    /// `stored` flag when the new one has none; `source` is replaced when given.
    ///
    /// # Errors
    /// The layer is not in the store, index errors.
    pub fn record_layer_blob(&self, b: &LayerBlob) -> Result<()> {
        self.with_tx(|tx| {
            tx.execute(
                "INSERT INTO layer_blobs (digest, diff_id, media_type, size, codec, level, source, stored) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT(digest) DO UPDATE SET \
                   source = COALESCE(excluded.source, layer_blobs.source), \
                   stored = MAX(layer_blobs.stored, excluded.stored)",
                params![
                    b.digest.bytes(),
                    b.diff_id.bytes(),
                    b.media_type,
                    b.size as i64,
                    b.codec,
                    b.level,
                    b.source,
                    i64::from(b.stored)
                ],
            )
        })?;
        Ok(())
    }

    /// Compresses a layer deterministically into `out`; returns the blob's digest and size.
    /// `progress` gets the uncompressed bytes as they pass.
    ///
    /// # Errors
    /// Unknown layer, a damaged store, write errors.
    pub fn compress_layer(
        &self,
        diff_id: &Digest,
        codec: BlobCodec,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(Digest, u64)> {
        let mut hw = HashWrite {
            inner: out,
            hasher: Hasher::new(),
            count: 0,
        };
        let werr = |e: io::Error| Error::io("compress layer", diff_id.to_string(), e);
        match codec {
            BlobCodec::Gzip => {
                let mut gz = ParallelGz::new(&mut hw, gzip_threads()).map_err(werr)?;
                let mut pw = ProgressWrite {
                    inner: &mut gz,
                    progress,
                };
                self.export_layer(diff_id, &mut pw)?;
                gz.finish().map_err(werr)?;
            }
            BlobCodec::Zstd => {
                let mut enc =
                    zstd::stream::write::Encoder::new(&mut hw, ZSTD_LEVEL).map_err(werr)?;
                enc.multithread(ZSTD_WORKERS).map_err(werr)?;
                enc.include_checksum(false).map_err(werr)?;
                let mut pw = ProgressWrite {
                    inner: &mut enc,
                    progress,
                };
                self.export_layer(diff_id, &mut pw)?;
                enc.finish().map_err(werr)?;
            }
        }
        hw.flush().map_err(werr)?;
        let count = hw.count;
        Ok((hw.hasher.finish(), count))
    }

    /// Compresses a layer into an unlinked temp file under `tmp/` and records the result
    /// (`stored = 0`: it can be made again). The file is rewound.
    ///
    /// # Errors
    /// As [`Store::compress_layer`], I/O on `tmp/`.
    pub fn spool_layer(
        &self,
        diff_id: &Digest,
        codec: BlobCodec,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SpooledBlob> {
        let tmp = self.root().join(TMP_DIR);
        let mut file = tempfile::tempfile_in(&tmp).ctx("create temp file in", &tmp)?;
        let (digest, size) = {
            let mut bw = io::BufWriter::with_capacity(COPY_BUF, &mut file);
            let r = self.compress_layer(diff_id, codec, &mut bw, progress)?;
            bw.flush().ctx("write temp file in", &tmp)?;
            r
        };
        file.rewind().ctx("rewind temp file in", &tmp)?;
        self.record_layer_blob(&LayerBlob {
            digest,
            diff_id: *diff_id,
            media_type: codec.oci_media_type().to_owned(),
            size,
            codec: codec.name().to_owned(),
            level: Some(codec.level()),
            source: None,
            stored: false,
        })?;
        Ok(SpooledBlob { file, digest, size })
    }

    /// Opens a kept blob, `None` when its bytes are not kept.
    ///
    /// # Errors
    /// I/O other than "not found".
    pub fn open_stored_blob(&self, d: &Digest) -> Result<Option<File>> {
        let p = self.blob_path(d);
        match File::open(&p) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("open", p, e)),
        }
    }

    /// Ingests a pulled layer blob from `input` in one pass: the bytes are hashed and counted
    /// (a blob that is not `expected` fails before the layer commits, so nothing of it is
    /// stored), decompressed into the store (DiffID checked against `diff_id`), and with
    /// `keep` also written to `blobs/` so a re-push sends the same bytes. Records the blob
    /// with its `source` (`registry/repository`).
    ///
    /// # Errors
    /// Digest, size or DiffID mismatch, a bad tar, I/O.
    pub fn pull_layer(
        &self,
        input: impl Read + Send,
        expected: &ExpectedBlob,
        diff_id: &Digest,
        source: &str,
        keep: bool,
    ) -> Result<LayerInfo> {
        let codec = layer_compression(&expected.media_type).ok_or_else(|| {
            Error::Conflict(format!(
                "layer {} has media type {:?}, which is not a layer strata can store",
                expected.digest, expected.media_type
            ))
        })?;
        // From the blob's temp file in `tmp/` to its row: `gc` would take the file for garbage.
        let _lock = self.lock_shared()?;
        let copy = if keep {
            let p = tmp_name(self.root(), "blob");
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(crate::privacy::FILE_MODE)
                .open(&p)
                .ctx("create", &p)?;
            Some((f, p))
        } else {
            None
        };
        // Decompression runs in its own thread, ingest (hashing, objects) in this one, and the
        // blob's hash and copy in the tee's. The decoder reads the blob to its end, where the
        // tee checks digest and size, before it signals the end of the tar: a bad blob fails
        // the ingest before anything commits.
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(PIPE_DEPTH);
        let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let (result, copy) = std::thread::scope(|s| {
            let mut tee = VerifyingTee::start(s, input, expected.clone(), copy);
            let decoder = s.spawn(move || {
                let run = |tee: &mut VerifyingTee<'_, _>| -> io::Result<()> {
                    let (mut dec, _) = crate::layer::decompress(&mut *tee)
                        .map_err(|e| io::Error::other(e.chain_text()))?;
                    let mut eof = false;
                    while !eof {
                        let mut buf = free_rx.try_recv().unwrap_or_else(|_| vec![0u8; COPY_BUF]);
                        // Fill most of it: the decoder returns short reads, and each buffer
                        // costs a hand-off to the ingesting thread.
                        let mut n = 0;
                        while n < COPY_BUF / 2 {
                            match dec.read(&mut buf[n..]) {
                                Ok(0) => {
                                    eof = true;
                                    break;
                                }
                                Ok(k) => n += k,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(e) => return Err(e),
                            }
                        }
                        if n > 0 && tx.send(Ok((buf, n))).is_err() {
                            return Ok(()); // ingest stopped; its error is reported
                        }
                    }
                    drop(dec);
                    // The decoder normally reads to the end; make sure the check at EOF ran.
                    io::copy(tee, &mut io::sink())?;
                    Ok(())
                };
                if let Err(e) = run(&mut tee) {
                    let _ = tx.send(Err(e));
                }
                tee.into_copy()
            });
            let result = self.ingest_layer(
                ChannelReader {
                    rx,
                    free: free_tx,
                    cur: Vec::new(),
                    pos: 0,
                    end: 0,
                },
                Some(diff_id),
            );
            match decoder.join() {
                Ok(copy) => (result, copy),
                Err(_) => (
                    Err(Error::Conflict(format!(
                        "internal: the decoder of blob {} panicked",
                        expected.digest
                    ))),
                    None,
                ),
            }
        });
        let info = match result {
            Ok(i) => i,
            Err(e) => {
                if let Some((_, p)) = copy {
                    let _ = fs::remove_file(p); // the blob was refused: its copy is garbage
                }
                return Err(e);
            }
        };
        let mut stored = false;
        if let Some((f, p)) = copy {
            f.sync_all().ctx("fsync", &p)?;
            drop(f);
            let dir = self.root().join(BLOBS_DIR);
            fs::create_dir_all(&dir).ctx("create dir", &dir)?;
            let dst = self.blob_path(&expected.digest);
            fs::rename(&p, &dst).ctx("rename", &p)?;
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .ctx("fsync", &dir)?;
            stored = true;
        }
        self.record_layer_blob(&LayerBlob {
            digest: expected.digest,
            diff_id: info.diff_id,
            media_type: expected.media_type.clone(),
            size: expected.size,
            codec: codec.to_owned(),
            level: None,
            source: Some(source.to_owned()),
            stored,
        })?;
        Ok(info)
    }

    /// Removes kept blob files that no `layer_blobs` row with `stored = 1` names (their layer
    /// was removed, or a crash came between the file and its row). Returns (files, bytes);
    /// with `dry_run` only counts. Call with the exclusive lock held (gc).
    #[allow(dead_code)] // called by gc (maint.rs), which the store's owner wires up
    pub(crate) fn gc_blobs(&self, dry_run: bool) -> Result<(u64, u64)> {
        let dir = self.root().join(BLOBS_DIR);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(Error::io("read dir", dir, e)),
        };
        let (mut n, mut bytes) = (0u64, 0u64);
        for e in rd {
            let e = e.ctx("read dir", &dir)?;
            let p = e.path();
            let keep = match e
                .file_name()
                .to_str()
                .and_then(|s| Digest::parse_lenient(s).ok())
            {
                Some(d) => self
                    .with_conn(|c| {
                        c.query_row(
                            "SELECT 1 FROM layer_blobs WHERE digest = ?1 AND stored = 1",
                            [d.bytes()],
                            |_| Ok(()),
                        )
                        .optional()
                    })?
                    .is_some(),
                None => false,
            };
            if keep {
                continue;
            }
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            if !dry_run {
                fs::remove_file(&p).ctx("remove", &p)?;
                self.with_tx(|tx| {
                    tx.execute(
                        "UPDATE layer_blobs SET stored = 0 WHERE digest = ?1",
                        [Digest::parse_lenient(&e.file_name().to_string_lossy())
                            .map(|d| d.bytes().to_vec())
                            .unwrap_or_default()],
                    )
                })?;
            }
            n += 1;
            bytes += len;
        }
        Ok((n, bytes))
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests

/// A descriptor (image-spec `descriptor.md`), fields in the order `save` writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    #[serde(default)]
    pub media_type: String,
    /// Digest, as a string: foreign algorithms are only an error when the blob is needed.
    pub digest: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: i64,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform (index entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescPlatform>,
}

/// `platform` of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescPlatform {
    /// GOARCH.
    #[serde(default)]
    pub architecture: String,
    /// GOOS.
    #[serde(default)]
    pub os: String,
    /// Variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexDoc {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SniffDoc {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// The manifest flavour to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// `application/vnd.oci.image.manifest.v1+json` (default).
    Oci,
    /// `application/vnd.docker.distribution.manifest.v2+json` (gzip layers only).
    Docker,
}

impl ManifestFormat {
    /// The manifest media type (also the Content-Type of the PUT).
    pub fn media_type(self) -> &'static str {
        match self {
            ManifestFormat::Oci => media::OCI_MANIFEST,
            ManifestFormat::Docker => media::DOCKER_MANIFEST,
        }
    }
}

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum ParsedManifest {
    /// An image manifest: config and layers (base first).
    Image {
        /// The config descriptor.
        config: Descriptor,
        /// Layer descriptors.
        layers: Vec<Descriptor>,
    },
    /// An OCI index or Docker manifest list.
    Index(Vec<Descriptor>),
}

/// Writes the manifest of an image: `config` is the image's exact config bytes; `layers`
/// (base first) give digest, size and codec (`gzip`/`zstd`/`none`) of each blob.
///
/// # Errors
/// A zstd or plain layer in a Docker manifest (that format only has gzip).
pub fn image_manifest(
    format: ManifestFormat,
    config: &[u8],
    layers: &[(Digest, u64, String)],
) -> Result<Vec<u8>> {
    let mut descs = Vec::with_capacity(layers.len());
    for (d, size, codec) in layers {
        let mt = match (format, codec.as_str()) {
            (ManifestFormat::Oci, "gzip") => media::OCI_LAYER_GZIP,
            (ManifestFormat::Oci, "zstd") => media::OCI_LAYER_ZSTD,
            (ManifestFormat::Oci, _) => media::OCI_LAYER,
            (ManifestFormat::Docker, "gzip") => DOCKER_LAYER_GZIP,
            (ManifestFormat::Docker, other) => {
                return Err(Error::Conflict(format!(
                    "layer {d} is {other}; Docker v2 manifests only carry gzip layers: push \
                     with --compression gzip or an OCI manifest"
                )));
            }
        };
        descs.push(Descriptor {
            media_type: mt.to_owned(),
            digest: d.to_string(),
            size: *size as i64,
            annotations: None,
            platform: None,
        });
    }
    let doc = ManifestDoc {
        schema_version: 2,
        media_type: Some(format.media_type().to_owned()),
        config: Descriptor {
            media_type: match format {
                ManifestFormat::Oci => media::OCI_CONFIG,
                ManifestFormat::Docker => DOCKER_CONFIG,
            }
            .to_owned(),
            digest: Digest::of(config).to_string(),
            size: config.len() as i64,
            annotations: None,
            platform: None,
        },
        layers: Some(descs),
    };
    serde_json::to_vec(&doc).map_err(|e| Error::Conflict(format!("internal: manifest: {e}")))
}

/// Parses an image manifest or an index / manifest list. `content_type` (the registry's
/// `Content-Type`) decides when the document has no `mediaType`.
///
/// # Errors
/// Not JSON, schema 1 manifests, documents that are neither.
pub fn parse_manifest(bytes: &[u8], content_type: Option<&str>) -> Result<ParsedManifest> {
    let bad = |reason: String| Error::BadConfig {
        context: Some("manifest".into()),
        reason,
    };
    let sniff: SniffDoc =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON manifest: {e}")))?;
    if sniff.schema_version == Some(1) {
        return Err(bad(
            "Docker schema 1 manifests are not supported (deprecated since 2017); push the image \
             again with a current client"
                .into(),
        ));
    }
    let mt = sniff
        .media_type
        .as_deref()
        .or(content_type)
        .unwrap_or_default();
    let is_index = mt == media::OCI_INDEX
        || mt == media::DOCKER_LIST
        || (sniff.manifests.is_some() && sniff.config.is_none());
    if is_index {
        let ix: IndexDoc =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid index: {e}")))?;
        return Ok(ParsedManifest::Index(ix.manifests.unwrap_or_default()));
    }
    if sniff.config.is_none() {
        return Err(bad(format!(
            "neither an image manifest nor an index (media type {mt:?})"
        )));
    }
    let m: ManifestDoc =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid manifest: {e}")))?;
    Ok(ParsedManifest::Image {
        config: m.config,
        layers: m.layers.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn pgzip(data: &[u8], threads: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut gz = ParallelGz::new(&mut out, threads).unwrap();
        for c in data.chunks(100_003) {
            gz.write_all(c).unwrap();
        }
        gz.finish().unwrap();
        out
    }

    #[test]
    fn parallel_gzip_round_trips_and_ignores_thread_count() {
        let mut data = Vec::new();
        for i in 0..(3 * GZIP_BLOCK + 12345) {
            data.push(((i * 7) % 251) as u8 ^ ((i >> 13) as u8));
        }
        let a = pgzip(&data, 1);
        let b = pgzip(&data, 4);
        assert_eq!(a, b);
        assert_eq!(gunzip(&a), data);
        assert_eq!(gunzip(&pgzip(b"", 2)), b"");
        assert_eq!(gunzip(&pgzip(&data[..GZIP_BLOCK], 2)), &data[..GZIP_BLOCK]);
    }

    #[test]
    fn manifest_round_trip() {
        let cfg =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let d = Digest::of(b"x");
        let m = image_manifest(ManifestFormat::Oci, cfg, &[(d, 1, "gzip".into())]).unwrap();
        match parse_manifest(&m, None).unwrap() {
            ParsedManifest::Image { config, layers } => {
                assert_eq!(config.digest, Digest::of(cfg).to_string());
                assert_eq!(layers[0].media_type, media::OCI_LAYER_GZIP);
            }
            ParsedManifest::Index(_) => panic!("index"),
        }
        assert!(image_manifest(ManifestFormat::Docker, cfg, &[(d, 1, "zstd".into())]).is_err());
        let ix = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"x","digest":"sha256:00","size":1,"platform":{"architecture":"arm64","os":"linux"}}]}"#;
        assert!(
            matches!(parse_manifest(ix, None).unwrap(), ParsedManifest::Index(v) if v.len() == 1)
        );
    }
}
