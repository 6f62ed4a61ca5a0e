//! A deterministic tar writer: ustar headers built field by field, PAX records only when a
//! name, link target or xattr needs them, content pushed by the caller (so a layer can be
//! streamed from the store straight into the archive without a `Read` adapter).

use std::io::{self, Read, Write};

use crate::tarfmt::BLOCK;

/// Prefix of the names of PAX extended headers (as GNU tar and Go write them).
const PAX_NAME_PREFIX: &str = "PaxHeaders.0/";
/// Longest name a ustar `name` field holds without the prefix field.
const USTAR_NAME_LEN: usize = 100;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarKind {
    /// Regular file.
    File,
    /// Directory (its name gets a trailing `/`).
    Dir,
    /// Symbolic link.
    Symlink,
    /// Hard link to an earlier entry of the archive.
    HardLink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// FIFO.
    Fifo,
}

/// The header of one entry.
#[derive(Debug, Clone)]
pub struct TarEntrySpec {
    /// Path inside the archive, relative, without a leading `/` or `./`.
    pub path: String,
    /// What it is.
    pub kind: TarKind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time in seconds (negative values are written as 0).
    pub mtime: i64,
    /// Content bytes (regular files only).
    pub size: u64,
    /// Symlink or hard-link target.
    pub link: Option<String>,
    /// Device numbers.
    pub dev: (u32, u32),
    /// Extended attributes, written as PAX `SCHILY.xattr.<name>` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl TarEntrySpec {
    /// A regular file owned by root, mode 0644.
    pub fn file(path: &str, size: u64, mtime: i64) -> TarEntrySpec {
        TarEntrySpec {
            path: path.to_owned(),
            kind: TarKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime,
            size,
            link: None,
            dev: (0, 0),
            xattrs: Vec::new(),
        }
    }

    /// A directory owned by root, mode 0755.
    pub fn dir(path: &str, mtime: i64) -> TarEntrySpec {
        TarEntrySpec {
            kind: TarKind::Dir,
            mode: 0o755,
            ..TarEntrySpec::file(path, 0, mtime)
        }
    }
}

/// Writes a tar stream to `W`; [`TarWriter::finish`] writes the end-of-archive blocks.
#[derive(Debug)]
pub struct TarWriter<W: Write> {
    out: W,
    written: u64,
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "<len> <key>=<value>\n" where len counts the whole record including its own digits.
    let base = key.len() + value.len() + 3;
    let mut len = base + base.to_string().len();
    if len.to_string().len() > base.to_string().len() {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<W: Write> TarWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> TarWriter<W> {
        TarWriter { out, written: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The output.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let n = ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize;
        self.put(&[0u8; BLOCK][..n])
    }

    /// Writes the header block(s) of an entry. The caller then writes exactly `spec.size`
    /// content bytes (through [`TarWriter::content`]) and calls [`TarWriter::end_entry`].
    ///
    /// # Errors
    /// Write errors; invalid header values.
    pub fn header(&mut self, spec: &TarEntrySpec) -> io::Result<()> {
        let mut name = spec.path.trim_start_matches('/').to_owned();
        if spec.kind == TarKind::Dir && !name.ends_with('/') {
            name.push('/');
        }
        let mtime = u64::try_from(spec.mtime).unwrap_or(0);
        let mut h = tar::Header::new_ustar();
        let mut pax: Vec<u8> = Vec::new();
        if h.set_path(&name).is_err() {
            pax.extend(pax_record("path", name.as_bytes()));
            h.as_old_mut().name = [0; USTAR_NAME_LEN];
            let t = truncated(&name, USTAR_NAME_LEN);
            h.as_old_mut().name[..t.len()].copy_from_slice(t.as_bytes());
        }
        if let Some(link) = &spec.link
            && h.set_link_name(link).is_err()
        {
            pax.extend(pax_record("linkpath", link.as_bytes()));
            let t = truncated(link, USTAR_NAME_LEN);
            h.as_old_mut().linkname = [0; USTAR_NAME_LEN];
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        for (k, v) in &spec.xattrs {
            pax.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        h.set_entry_type(match spec.kind {
            TarKind::File => tar::EntryType::Regular,
            TarKind::Dir => tar::EntryType::Directory,
            TarKind::Symlink => tar::EntryType::Symlink,
            TarKind::HardLink => tar::EntryType::Link,
            TarKind::CharDev => tar::EntryType::Char,
            TarKind::BlockDev => tar::EntryType::Block,
            TarKind::Fifo => tar::EntryType::Fifo,
        });
        h.set_mode(spec.mode & 0o7777);
        h.set_uid(spec.uid);
        h.set_gid(spec.gid);
        h.set_mtime(mtime);
        h.set_size(if spec.kind == TarKind::File {
            spec.size
        } else {
            0
        });
        if matches!(spec.kind, TarKind::CharDev | TarKind::BlockDev) {
            h.set_device_major(spec.dev.0)?;
            h.set_device_minor(spec.dev.1)?;
        }
        h.set_cksum();
        if !pax.is_empty() {
            let mut ph = tar::Header::new_ustar();
            let base = name.trim_end_matches('/').rsplit('/').next().unwrap_or("");
            let pname = format!("{PAX_NAME_PREFIX}{}", truncated(base, 80));
            ph.set_path(&pname)?;
            ph.set_entry_type(tar::EntryType::XHeader);
            ph.set_mode(0o644);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(mtime);
            ph.set_size(pax.len() as u64);
            ph.set_cksum();
            self.put(ph.as_bytes())?;
            self.put(&pax)?;
            self.pad(pax.len() as u64)?;
        }
        self.put(h.as_bytes())
    }

    /// Writes content bytes of the current entry.
    ///
    /// # Errors
    /// Write errors.
    pub fn content(&mut self, b: &[u8]) -> io::Result<()> {
        self.put(b)
    }

    /// Pads the content of an entry of `size` bytes to the block boundary.
    ///
    /// # Errors
    /// Write errors.
    pub fn end_entry(&mut self, size: u64) -> io::Result<()> {
        self.pad(size)
    }

    /// Header, content from `data` (exactly `spec.size` bytes), padding.
    ///
    /// # Errors
    /// Write errors; `data` shorter or longer than `spec.size`.
    pub fn append(&mut self, spec: &TarEntrySpec, data: &mut dyn Read) -> io::Result<()> {
        self.header(spec)?;
        let n = io::copy(&mut data.take(spec.size), &mut CountingWrite { w: self })?;
        if n != spec.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: expected {} content bytes, got {n} (the file changed while it was \
                     being archived?)",
                    spec.path, spec.size
                ),
            ));
        }
        self.end_entry(spec.size)
    }

    /// Header plus in-memory content.
    ///
    /// # Errors
    /// Write errors.
    pub fn append_bytes(&mut self, spec: &TarEntrySpec, data: &[u8]) -> io::Result<()> {
        let mut s = spec.clone();
        s.size = data.len() as u64;
        self.header(&s)?;
        self.put(data)?;
        self.end_entry(s.size)
    }

    /// Writes the two zero blocks that end an archive and flushes.
    ///
    /// # Errors
    /// Write errors.
    pub fn finish(mut self) -> io::Result<W> {
        self.put(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Writes through a [`TarWriter`], counting.
struct CountingWrite<'a, W: Write> {
    w: &'a mut TarWriter<W>,
}

impl<W: Write> Write for CountingWrite<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.put(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.out.flush()
    }
}

/// A writer adapter that lets the store push a layer's bytes into the current entry.
pub(crate) struct EntryWrite<'a, W: Write> {
    pub(crate) w: &'a mut TarWriter<W>,
}

impl<W: Write> Write for EntryWrite<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.put(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("path", b"abc");
        assert_eq!(r, b"12 path=abc\n");
        let long = "x".repeat(95);
        let r = pax_record("path", long.as_bytes());
        let len: usize = std::str::from_utf8(&r)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, r.len());
    }

    #[test]
    fn long_names_and_xattrs_round_trip_through_tar_crate() {
        let mut w = TarWriter::new(Vec::new());
        let long = format!("{}/file", "d".repeat(300));
        let mut spec = TarEntrySpec::file(&long, 3, 1);
        spec.xattrs = vec![("user.k".into(), b"v".to_vec())];
        w.append(&spec, &mut &b"abc"[..]).unwrap();
        let mut l = TarEntrySpec::file("link", 0, 1);
        l.kind = TarKind::Symlink;
        l.link = Some("t".repeat(150));
        w.append(&l, &mut &b""[..]).unwrap();
        let out = w.finish().unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let mut it = a.entries().unwrap();
        let mut e = it.next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str().unwrap(), long);
        let x: Vec<_> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| x.unwrap().key().unwrap().to_owned())
            .collect();
        assert!(x.contains(&"SCHILY.xattr.user.k".to_owned()));
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        assert_eq!(s, "abc");
        let e = it.next().unwrap().unwrap();
        assert_eq!(
            e.link_name().unwrap().unwrap().to_str().unwrap(),
            "t".repeat(150)
        );
    }
}
