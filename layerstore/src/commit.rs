//! Commit: a container's changes become one reproducible layer tar, ingested like any other layer.
//!
//! The input is plain data ([`CommitEntry`]: a path, a kind, attributes and where the content
//! is), so this crate knows nothing of the union filesystem's upper format; the CLI converts
//! `unionfs::changes` into it. [`write_layer_tar`] turns the list into a tar and
//! [`Store::commit_layer`] streams that tar into [`Store::ingest_layer`] from a second thread,
//! so no tar is ever written to disk and the cost is one read of each changed file.
//!
//! # The tar, byte for byte
//!
//! The same list always gives the same bytes (so committing an unchanged container twice gives
//! the same DiffID):
//!
//! - Order: entries sorted bytewise by their path, which puts every directory before its
//!   children. A whiteout sorts at the path it deletes (`a/b` for `a/.wh.b`), which is how
//!   Docker writes them (`ExportChanges` sorts its changes by path); an opaque directory's
//!   `.wh..wh..opq` comes right after the directory's own header.
//! - Hard links: files sharing a [`CommitEntry::link_group`] are written once, at the first
//!   path in that order; the others are hard-link entries (typeflag `1`) pointing at it.
//! - Headers: ustar with `ustar\0` + `00` magic; a PAX extended header (`x`) only when a value
//!   does not fit (names or link targets over 100 bytes or not ASCII, ids ≥ 8^7, sizes ≥ 8 GiB,
//!   times outside the octal field) or there are xattrs (`SCHILY.xattr.NAME`, sorted by name).
//!   mtime in whole seconds, no atime/ctime, empty uname/gname, numeric uid/gid, directories
//!   named with a trailing `/` (as Docker writes them).
//! - Whiteouts: an empty regular file `.wh.NAME`, mode 0600 (Docker's), the entry's uid, gid
//!   and mtime. Opaque markers: an empty regular file `.wh..wh..opq` with the directory's mode,
//!   owner and mtime.
//! - The tar ends with two zero blocks; no padding to a record size.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::layer::LayerInfo;
use crate::store::Store;
use crate::tarfmt::{BLOCK, OPAQUE_MARKER, WHITEOUT_PREFIX, split_parent};

/// Largest value of a 7-digit octal header field (mode, uid, gid, devmajor/minor) plus one.
const OCTAL7_LIMIT: u64 = 1 << 21;
/// Largest value of an 11-digit octal header field (size, mtime) plus one: 8 GiB, year 2242.
const OCTAL11_LIMIT: u64 = 1 << 33;
/// Bytes of the name and linkname fields of a ustar header.
const NAME_FIELD: usize = 100;
/// Mode of a whiteout file (what Docker's overlay whiteout converter writes).
const WHITEOUT_MODE: u32 = 0o600;
/// Size of the chunks the tar producer hands to the ingesting thread.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between producer and ingest (bounds memory to a few MiB).
const CHUNKS_IN_FLIGHT: usize = 4;

/// Where a file's content comes from when the tar is written.
pub enum Content {
    /// No content (size 0).
    Empty,
    /// A file on disk (an upper file), opened when its entry is written.
    Path(PathBuf),
    /// Opened when its entry is written (lower content: a store object, a lower tree's reader).
    Open(Box<dyn FnOnce() -> io::Result<Box<dyn Read + Send>> + Send>),
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Content::Empty => f.write_str("Empty"),
            Content::Path(p) => f.debug_tuple("Path").field(p).finish(),
            Content::Open(_) => f.write_str("Open(..)"),
        }
    }
}

/// What a committed entry is.
#[derive(Debug)]
pub enum CommitKind {
    /// A regular file of `size` bytes.
    File {
        /// Bytes of content; the content must have exactly this many.
        size: u64,
        /// Where they are.
        content: Content,
    },
    /// A directory; `opaque` hides every lower entry below it (`.wh..wh..opq`).
    Dir {
        /// Write an opaque marker after the directory.
        opaque: bool,
    },
    /// A symbolic link.
    Symlink {
        /// The target, verbatim.
        target: String,
    },
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A FIFO.
    Fifo,
    /// A deletion of `path` from the layers below (written as `.wh.NAME`).
    Whiteout,
}

/// One entry of a commit: a path in the layer plus what to write there.
#[derive(Debug)]
pub struct CommitEntry {
    /// Normalised relative path (`usr/bin/x`; never empty, no `.`/`..`, no trailing `/`).
    pub path: String,
    /// What it is.
    pub kind: CommitKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time in seconds (sub-seconds are dropped, as Docker does).
    pub mtime: i64,
    /// Extended attributes to record (the caller decides which; Docker keeps only
    /// `security.capability`).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Regular files with the same group are hard links of one file.
    pub link_group: Option<u64>,
}

/// What is written for one entry, after sorting and hard-link assignment.
enum Plan {
    Entry(CommitEntry),
    HardLink { entry: CommitEntry, target: String },
}

/// Sorts the entries into tar order and checks them: no empty or non-normalised paths, no
/// duplicates, hard-link groups of regular files only.
fn plan(mut entries: Vec<CommitEntry>) -> Result<Vec<Plan>> {
    entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    for w in entries.windows(2) {
        if w[0].path == w[1].path {
            return Err(Error::Conflict(format!(
                "commit: the change list has {:?} twice; this is a bug in the caller",
                w[0].path
            )));
        }
    }
    let mut first_of_group: HashMap<u64, String> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let p = &e.path;
        if p.is_empty()
            || p.starts_with('/')
            || p.ends_with('/')
            || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::Conflict(format!(
                "commit: {p:?} is not a normalised relative path; this is a bug in the caller"
            )));
        }
        let (_, base) = split_parent(p);
        if base.starts_with(WHITEOUT_PREFIX) {
            return Err(Error::Conflict(format!(
                "commit: {p:?} uses the reserved whiteout prefix {WHITEOUT_PREFIX:?}; such a \
                 name cannot be stored in a layer"
            )));
        }
        match (e.link_group, &e.kind) {
            (Some(g), CommitKind::File { .. }) => match first_of_group.get(&g) {
                Some(t) => {
                    let target = t.clone();
                    out.push(Plan::HardLink { entry: e, target });
                }
                None => {
                    first_of_group.insert(g, e.path.clone());
                    out.push(Plan::Entry(e));
                }
            },
            _ => out.push(Plan::Entry(e)),
        }
    }
    Ok(out)
}

/// Writes the layer tar for `entries` (in any order) to `out`; returns the bytes written.
///
/// # Errors
/// An invalid list (duplicate or non-normalised paths), content that cannot be opened or whose
/// length differs from the size given, a value no tar header can hold, write errors.
pub fn write_layer_tar(entries: Vec<CommitEntry>, out: &mut dyn Write) -> Result<u64> {
    let mut w = CountingWriter { inner: out, n: 0 };
    for p in plan(entries)? {
        match p {
            Plan::Entry(e) => write_entry(&mut w, e)?,
            Plan::HardLink { entry, target } => {
                let h = Header {
                    name: entry.path.clone(),
                    typeflag: b'1',
                    link: target,
                    ..Header::of(&entry)
                };
                h.write(&mut w)?;
            }
        }
    }
    w.write_all(&[0u8; 2 * BLOCK]).map_err(werr)?;
    w.flush().map_err(werr)?;
    Ok(w.n)
}

fn werr(e: io::Error) -> Error {
    Error::io("write", "commit layer stream", e)
}

fn write_entry(w: &mut CountingWriter<'_>, e: CommitEntry) -> Result<()> {
    let base = Header::of(&e);
    match e.kind {
        CommitKind::File { size, content } => {
            Header {
                typeflag: b'0',
                size,
                ..base
            }
            .write(w)?;
            copy_content(w, &e.path, size, content)?;
        }
        CommitKind::Dir { opaque } => {
            Header {
                name: format!("{}/", e.path),
                typeflag: b'5',
                ..base.clone()
            }
            .write(w)?;
            if opaque {
                Header {
                    name: format!("{}/{OPAQUE_MARKER}", e.path),
                    typeflag: b'0',
                    xattrs: BTreeMap::new(),
                    ..base
                }
                .write(w)?;
            }
        }
        CommitKind::Symlink { target } => Header {
            typeflag: b'2',
            link: target,
            ..base
        }
        .write(w)?,
        CommitKind::CharDev { major, minor } => Header {
            typeflag: b'3',
            dev: Some((major, minor)),
            ..base
        }
        .write(w)?,
        CommitKind::BlockDev { major, minor } => Header {
            typeflag: b'4',
            dev: Some((major, minor)),
            ..base
        }
        .write(w)?,
        CommitKind::Fifo => Header {
            typeflag: b'6',
            ..base
        }
        .write(w)?,
        CommitKind::Whiteout => {
            let (parent, name) = split_parent(&e.path);
            let wh = format!("{WHITEOUT_PREFIX}{name}");
            Header {
                name: if parent.is_empty() {
                    wh
                } else {
                    format!("{parent}/{wh}")
                },
                typeflag: b'0',
                mode: WHITEOUT_MODE,
                xattrs: BTreeMap::new(),
                ..base
            }
            .write(w)?;
        }
    }
    Ok(())
}

/// Streams exactly `size` bytes of `content`, then the padding to the next block.
fn copy_content(w: &mut CountingWriter<'_>, path: &str, size: u64, content: Content) -> Result<()> {
    let changed = |got: u64| {
        Error::Conflict(format!(
            "{path:?} changed while it was committed (expected {size} bytes, got {got}{}); \
             stop writing to the container and commit again",
            if got > size { " or more" } else { "" }
        ))
    };
    let mut reader: Box<dyn Read + Send> = match content {
        Content::Empty => Box::new(io::empty()),
        Content::Path(p) => Box::new(std::fs::File::open(&p).map_err(|e| Error::io("open", p, e))?),
        Content::Open(open) => open().map_err(|e| Error::Read {
            what: format!("content of {path:?}"),
            source: e,
        })?,
    };
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(size).unwrap_or(CHUNK)).max(1)];
    let mut done: u64 = 0;
    while done < size {
        let want = buf
            .len()
            .min(usize::try_from(size - done).unwrap_or(usize::MAX));
        let n = match reader.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Read {
                    what: format!("content of {path:?}"),
                    source: e,
                });
            }
        };
        if n == 0 {
            return Err(changed(done));
        }
        w.write_all(&buf[..n]).map_err(werr)?;
        done += n as u64;
    }
    let mut probe = [0u8; 1];
    if matches!(reader.read(&mut probe), Ok(n) if n > 0) {
        return Err(changed(size + 1));
    }
    let pad = (BLOCK - (size % BLOCK as u64) as usize) % BLOCK;
    w.write_all(&[0u8; BLOCK][..pad]).map_err(werr)?;
    Ok(())
}

struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One tar header as we write it.
#[derive(Clone)]
struct Header {
    name: String,
    typeflag: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    link: String,
    dev: Option<(u32, u32)>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

impl Header {
    fn of(e: &CommitEntry) -> Header {
        Header {
            name: e.path.clone(),
            typeflag: b'0',
            mode: e.mode & 0o7777,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            size: 0,
            link: String::new(),
            dev: None,
            xattrs: e.xattrs.iter().cloned().collect(),
        }
    }

    /// Writes the PAX header (when needed) and the ustar header block.
    fn write(&self, w: &mut dyn Write) -> Result<()> {
        let mut pax: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let fits = |s: &str| s.len() <= NAME_FIELD && s.is_ascii();
        if !fits(&self.name) {
            pax.insert("path".into(), self.name.as_bytes().to_vec());
        }
        if !fits(&self.link) {
            pax.insert("linkpath".into(), self.link.as_bytes().to_vec());
        }
        if u64::from(self.uid) >= OCTAL7_LIMIT {
            pax.insert("uid".into(), self.uid.to_string().into_bytes());
        }
        if u64::from(self.gid) >= OCTAL7_LIMIT {
            pax.insert("gid".into(), self.gid.to_string().into_bytes());
        }
        if self.size >= OCTAL11_LIMIT {
            pax.insert("size".into(), self.size.to_string().into_bytes());
        }
        let mtime_fits = u64::try_from(self.mtime).is_ok_and(|t| t < OCTAL11_LIMIT);
        if !mtime_fits {
            pax.insert("mtime".into(), self.mtime.to_string().into_bytes());
        }
        for (k, v) in &self.xattrs {
            pax.insert(format!("SCHILY.xattr.{k}"), v.clone());
        }
        if !pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &pax {
                body.extend_from_slice(&pax_record(k, v));
            }
            let (parent, base) = split_parent(self.name.trim_end_matches('/'));
            let pax_name = if parent.is_empty() {
                format!("PaxHeaders.0/{base}")
            } else {
                format!("{parent}/PaxHeaders.0/{base}")
            };
            let block = ustar_block(&UstarFields {
                name: &pax_name,
                typeflag: b'x',
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: body.len() as u64,
                link: "",
                dev: None,
            })?;
            w.write_all(&block).map_err(werr)?;
            w.write_all(&body).map_err(werr)?;
            let pad = (BLOCK - body.len() % BLOCK) % BLOCK;
            w.write_all(&[0u8; BLOCK][..pad]).map_err(werr)?;
        }
        let block = ustar_block(&UstarFields {
            name: &self.name,
            typeflag: self.typeflag,
            mode: self.mode,
            uid: if u64::from(self.uid) < OCTAL7_LIMIT {
                self.uid
            } else {
                0
            },
            gid: if u64::from(self.gid) < OCTAL7_LIMIT {
                self.gid
            } else {
                0
            },
            mtime: if mtime_fits {
                u64::try_from(self.mtime).unwrap_or(0)
            } else {
                0
            },
            size: if self.size < OCTAL11_LIMIT {
                self.size
            } else {
                0
            },
            link: &self.link,
            dev: self.dev,
        })?;
        w.write_all(&block).map_err(werr)
    }
}

struct UstarFields<'a> {
    name: &'a str,
    typeflag: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    size: u64,
    link: &'a str,
    dev: Option<(u32, u32)>,
}

/// `"%d %s=%s\n"` where the length counts the whole record, its own digits included.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // space, '=', newline
    let mut len = rest + 1;
    while len.to_string().len() + rest > len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn octal(field: &mut [u8], v: u64, what: &str, name: &str) -> Result<()> {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return Err(Error::Conflict(format!(
            "{name:?}: {what} {v} does not fit a tar header; it cannot be committed"
        )));
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

/// Copies a name into a fixed field: ASCII names that fit go in verbatim; others get a
/// truncated ASCII stand-in (the PAX record carries the real one).
fn name_field(field: &mut [u8], s: &str) {
    let b: Vec<u8> = s
        .bytes()
        .map(|c| if c.is_ascii() { c } else { b'_' })
        .take(field.len())
        .collect();
    field[..b.len()].copy_from_slice(&b);
}

fn ustar_block(f: &UstarFields<'_>) -> Result<[u8; BLOCK]> {
    let mut b = [0u8; BLOCK];
    name_field(&mut b[0..100], f.name);
    octal(&mut b[100..108], u64::from(f.mode), "mode", f.name)?;
    octal(&mut b[108..116], u64::from(f.uid), "uid", f.name)?;
    octal(&mut b[116..124], u64::from(f.gid), "gid", f.name)?;
    octal(&mut b[124..136], f.size, "size", f.name)?;
    octal(&mut b[136..148], f.mtime, "mtime", f.name)?;
    b[156] = f.typeflag;
    name_field(&mut b[157..257], f.link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    if let Some((major, minor)) = f.dev {
        octal(&mut b[329..337], u64::from(major), "device major", f.name)?;
        octal(&mut b[337..345], u64::from(minor), "device minor", f.name)?;
    }
    // Checksum: the sum of all bytes with the checksum field read as spaces.
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
    Ok(b)
}

/// Hands the tar from the producing thread to the ingesting one in chunks.
struct ChunkWriter {
    tx: crossbeam_channel::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.flush()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.send(full).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the layer ingest stopped reading",
            )
        })
    }
}

struct ChunkReader {
    rx: crossbeam_channel::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                Err(_) => return Ok(0), // producer done (or failed: its error is reported)
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Store {
    /// Writes the layer tar of `entries` and ingests it, streaming: one thread produces the
    /// tar while this one hashes and stores it, so no tar touches the disk and each changed
    /// file is read once. Reproducible: equal lists give equal DiffIDs.
    ///
    /// # Errors
    /// See [`write_layer_tar`] and [`Store::ingest_layer`].
    pub fn commit_layer(&self, entries: Vec<CommitEntry>) -> Result<LayerInfo> {
        let (tx, rx) = crossbeam_channel::bounded(CHUNKS_IN_FLIGHT);
        std::thread::scope(|s| {
            let producer = s.spawn(move || {
                let mut w = ChunkWriter {
                    tx,
                    buf: Vec::with_capacity(CHUNK),
                };
                write_layer_tar(entries, &mut w)
            });
            let ingested = self.ingest_layer(
                ChunkReader {
                    rx,
                    cur: Vec::new(),
                    pos: 0,
                },
                None,
            );
            let produced = producer.join().unwrap_or_else(|_| {
                Err(Error::Conflict(
                    "the commit tar producer panicked; this is a bug".into(),
                ))
            });
            match (produced, ingested) {
                // The producer's error explains a truncated stream better than ingest can.
                (Err(e), _) => Err(e),
                (Ok(_), r) => r,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tarfmt::{EntryKind, Next, TarReader};

    fn entry(path: &str, kind: CommitKind) -> CommitEntry {
        CommitEntry {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            xattrs: Vec::new(),
            link_group: None,
        }
    }

    fn file(path: &str, data: &[u8]) -> CommitEntry {
        let d = data.to_vec();
        entry(
            path,
            CommitKind::File {
                size: d.len() as u64,
                content: Content::Open(Box::new(move || Ok(Box::new(io::Cursor::new(d))))),
            },
        )
    }

    fn sample() -> Vec<CommitEntry> {
        let mut v = vec![
            file("b/z", b"zz"),
            entry("b", CommitKind::Dir { opaque: true }),
            entry("a.x", CommitKind::Whiteout),
            file("a/f", b"hello"),
            entry("a", CommitKind::Dir { opaque: false }),
            entry("a/gone", CommitKind::Whiteout),
            entry("a/l", CommitKind::Symlink { target: "f".into() }),
            entry("a/p", CommitKind::Fifo),
            entry("a/null", CommitKind::CharDev { major: 1, minor: 3 }),
        ];
        let mut h1 = file("c/h1", b"linked");
        h1.link_group = Some(7);
        let mut h0 = file("c/h0", b"linked");
        h0.link_group = Some(7);
        h0.xattrs = vec![("security.capability".into(), vec![1, 0, 0, 2])];
        v.push(h1);
        v.push(h0);
        v.push(entry("c", CommitKind::Dir { opaque: false }));
        let long = format!("c/{}", "n".repeat(150));
        v.push(file(&long, b"long"));
        v
    }

    /// (path, kind, link, xattrs) of each entry.
    type Parsed = (String, EntryKind, Option<String>, Vec<(String, Vec<u8>)>);

    fn parse(tar: &[u8]) -> Vec<Parsed> {
        let mut r = TarReader::new(tar);
        let mut out = Vec::new();
        loop {
            match r.next_entry().unwrap() {
                Next::End(t) => {
                    assert_eq!(t, vec![0u8; 1024]);
                    break;
                }
                Next::Entry(e) => {
                    let mut buf = vec![0u8; e.size as usize];
                    let mut done = 0;
                    while done < buf.len() {
                        done += r.read_content(&mut buf[done..]).unwrap();
                    }
                    r.finish_content().unwrap();
                    out.push((e.path, e.kind, e.link, e.xattrs));
                }
            }
        }
        out
    }

    #[test]
    fn commit_tar_is_sorted_with_docker_whiteout_placement() {
        let mut tar = Vec::new();
        write_layer_tar(sample(), &mut tar).unwrap();
        let got: Vec<(String, EntryKind)> =
            parse(&tar).into_iter().map(|(p, k, _, _)| (p, k)).collect();
        let long = format!("c/{}", "n".repeat(150));
        let want = vec![
            ("a".to_owned(), EntryKind::Dir),
            ("a/f".into(), EntryKind::File),
            ("a/gone".into(), EntryKind::Whiteout),
            ("a/l".into(), EntryKind::Symlink),
            ("a/null".into(), EntryKind::CharDev),
            ("a/p".into(), EntryKind::Fifo),
            ("a.x".into(), EntryKind::Whiteout),
            ("b".into(), EntryKind::Dir),
            ("b".into(), EntryKind::Opaque),
            ("b/z".into(), EntryKind::File),
            ("c".into(), EntryKind::Dir),
            ("c/h0".into(), EntryKind::File),
            ("c/h1".into(), EntryKind::HardLink),
            (long, EntryKind::File),
        ];
        let mut want_sorted = want.clone();
        want_sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        assert_eq!(got, want_sorted);
        assert_eq!(got[0].0, "a");
        assert_eq!(got[1].0, "a.x", "a.x sorts before a's children ('.' < '/')");
    }

    #[test]
    fn commit_tar_records_links_whiteouts_and_xattrs() {
        let mut tar = Vec::new();
        write_layer_tar(sample(), &mut tar).unwrap();
        let all = parse(&tar);
        let h1 = all.iter().find(|e| e.0 == "c/h1").unwrap();
        assert_eq!(
            h1.2.as_deref(),
            Some("c/h0"),
            "link to the first path in order"
        );
        let h0 = all.iter().find(|e| e.0 == "c/h0").unwrap();
        assert_eq!(h0.3, vec![("security.capability".into(), vec![1, 0, 0, 2])]);
        // Raw spellings: `.wh.` names, the opaque marker after its dir, dirs with a slash.
        let names = raw_names(&tar);
        let b = names.iter().position(|n| n == "b/").unwrap();
        assert_eq!(names[b + 1], "b/.wh..wh..opq");
        assert!(names.contains(&"a/.wh.gone".to_owned()), "{names:?}");
        assert!(names.contains(&".wh.a.x".to_owned()), "{names:?}");
    }

    /// Names as stored in the ustar name field (short names only).
    fn raw_names(tar: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let mut off = 0;
        while off + BLOCK <= tar.len() {
            let h = &tar[off..off + BLOCK];
            if h.iter().all(|&b| b == 0) {
                break;
            }
            let name = String::from_utf8_lossy(&h[..100])
                .trim_end_matches('\0')
                .to_owned();
            let size = u64::from_str_radix(
                String::from_utf8_lossy(&h[124..135]).trim_end_matches('\0'),
                8,
            )
            .unwrap();
            if h[156] != b'x' {
                out.push(name);
            }
            let data = if matches!(h[156], b'0' | b'x') {
                size.div_ceil(BLOCK as u64) as usize * BLOCK
            } else {
                0
            };
            off += BLOCK + data;
        }
        out
    }

    #[test]
    fn commit_tar_is_reproducible_and_readable_by_gnu_tar_conventions() {
        let mut a = Vec::new();
        write_layer_tar(sample(), &mut a).unwrap();
        let mut rev = sample();
        rev.reverse();
        let mut b = Vec::new();
        write_layer_tar(rev, &mut b).unwrap();
        assert_eq!(a, b, "input order does not matter");
        assert_eq!(a.len() % BLOCK, 0);
        // GNU tar, an independent reader, accepts it (skipped where tar is missing).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.tar");
        std::fs::write(&p, &a).unwrap();
        if let Ok(o) = std::process::Command::new("tar")
            .arg("--numeric-owner")
            .arg("-tvf")
            .arg(&p)
            .output()
        {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            assert!(text.contains("c/h1 link to c/h0"), "{text}");
            assert!(text.contains(&"n".repeat(150)), "{text}");
            assert!(text.contains("a/l -> f"), "{text}");
        }
    }

    #[test]
    fn commit_tar_refuses_bad_lists_and_changed_files() {
        let mut out = Vec::new();
        let dup = vec![file("a", b"1"), file("a", b"2")];
        assert!(write_layer_tar(dup, &mut out).is_err());
        let bad = vec![file("a/../b", b"1")];
        assert!(write_layer_tar(bad, &mut out).is_err());
        let reserved = vec![file(".wh.x", b"")];
        assert!(write_layer_tar(reserved, &mut out).is_err());
        let short = vec![entry(
            "s",
            CommitKind::File {
                size: 10,
                content: Content::Open(Box::new(|| Ok(Box::new(io::Cursor::new(vec![1u8; 3]))))),
            },
        )];
        let e = write_layer_tar(short, &mut out).unwrap_err().to_string();
        assert!(e.contains("changed while it was committed"), "{e}");
    }

    #[test]
    fn commit_layer_ingests_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.commit_layer(sample()).unwrap();
        assert!(!a.existed);
        assert_eq!(a.entries, 14);
        let b = store.commit_layer(sample()).unwrap();
        assert_eq!(a.diff_id, b.diff_id);
        assert!(b.existed);
        let mut tar = Vec::new();
        write_layer_tar(sample(), &mut tar).unwrap();
        assert_eq!(crate::Digest::of(&tar), a.diff_id);
        assert_eq!(a.tar_size, tar.len() as u64);
        // A producer failure is reported as such, not as a truncated tar.
        let bad = vec![entry(
            "s",
            CommitKind::File {
                size: 10,
                content: Content::Path(dir.path().join("missing")),
            },
        )];
        let e = store.commit_layer(bad).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
