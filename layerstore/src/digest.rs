//! `sha256:<hex>` digests and the identifiers built from them (DiffID, ChainID, ImageID).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Length of a raw SHA-256 digest in bytes.
pub const SHA256_LEN: usize = 32;
/// The only algorithm the store names content by (OCI: implementations MUST support it).
pub const SHA256_PREFIX: &str = "sha256:";

/// A SHA-256 content digest; prints and parses as `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; SHA256_LEN]);

impl Digest {
    /// Hashes `data` in one go.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// The raw 32 bytes.
    pub fn bytes(&self) -> &[u8; SHA256_LEN] {
        &self.0
    }

    /// From raw bytes (as stored in the index).
    pub fn from_bytes(b: &[u8]) -> Result<Digest> {
        let arr: [u8; SHA256_LEN] = b.try_into().map_err(|_| Error::BadDigest {
            input: hex::encode(b),
            reason: "not 32 bytes",
        })?;
        Ok(Digest(arr))
    }

    /// The 64 hex characters, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex characters, as `docker images` shows IDs.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }

    /// Parses bare hex (64 chars) or `sha256:<hex>`.
    pub fn parse_lenient(s: &str) -> Result<Digest> {
        let hex_part = s.strip_prefix(SHA256_PREFIX).unwrap_or(s);
        Self::parse_hex(s, hex_part)
    }

    fn parse_hex(input: &str, h: &str) -> Result<Digest> {
        if h.len() != 2 * SHA256_LEN {
            return Err(Error::BadDigest {
                input: input.to_owned(),
                reason: "a sha256 digest has exactly 64 hex characters",
            });
        }
        if !h
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return Err(Error::BadDigest {
                input: input.to_owned(),
                reason: "a sha256 digest is lowercase hex [0-9a-f]",
            });
        }
        let mut out = [0u8; SHA256_LEN];
        hex::decode_to_slice(h, &mut out).map_err(|_| Error::BadDigest {
            input: input.to_owned(),
            reason: "not hex",
        })?;
        Ok(Digest(out))
    }
}

impl FromStr for Digest {
    type Err = Error;
    /// Strict: requires the `sha256:` prefix.
    fn from_str(s: &str) -> Result<Digest> {
        let Some(h) = s.strip_prefix(SHA256_PREFIX) else {
            return Err(Error::BadDigest {
                input: s.to_owned(),
                reason: "expected 'sha256:' followed by 64 hex characters",
            });
        };
        Self::parse_hex(s, h)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHA256_PREFIX}{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Hasher {
        Hasher(Sha256::new())
    }
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

/// A buffer of `size` bytes for a reader that hands chunks to a hashing thread: one the thread
/// gave back (and no one else holds any more) when there is one, else a new one.
pub(crate) fn recycled_buffer(
    free: &crossbeam_channel::Receiver<std::sync::Arc<Vec<u8>>>,
    size: usize,
) -> Vec<u8> {
    let mut buf = loop {
        match free.try_recv() {
            Ok(a) => {
                if let Ok(v) = std::sync::Arc::try_unwrap(a) {
                    break v;
                }
            }
            Err(_) => break vec![0u8; size],
        }
    };
    buf.resize(size, 0);
    buf
}

/// Hands the first `n` bytes of `buf` to a hashing thread as one shared chunk and returns it
/// (the reader keeps serving reads from it).
///
/// # Errors
/// The thread is gone (`what` names it in the message).
pub(crate) fn send_chunk(
    tx: Option<&crossbeam_channel::Sender<std::sync::Arc<Vec<u8>>>>,
    mut buf: Vec<u8>,
    n: usize,
    what: &str,
) -> std::io::Result<std::sync::Arc<Vec<u8>>> {
    buf.truncate(n);
    let chunk = std::sync::Arc::new(buf);
    if tx.is_some_and(|tx| tx.send(chunk.clone()).is_ok()) {
        Ok(chunk)
    } else {
        Err(std::io::Error::other(format!(
            "internal: the {what} stopped"
        )))
    }
}

/// Writes through to `inner`, hashing and counting what was written.
pub(crate) struct HashWrite<W> {
    pub(crate) inner: W,
    pub(crate) hasher: Hasher,
    pub(crate) count: u64,
}

impl<W: std::io::Write> std::io::Write for HashWrite<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reports every chunk written to a progress callback.
pub(crate) struct ProgressWrite<'a, W> {
    pub(crate) inner: W,
    pub(crate) progress: &'a mut dyn FnMut(u64),
}

impl<W: std::io::Write> std::io::Write for ProgressWrite<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The ChainID of a stack of layers given their DiffIDs, base first
/// (`ChainID(L0) = DiffID(L0)`, `ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))`).
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => *d,
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parse_display_round_trip() {
        let d = Digest::of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert_eq!(Digest::parse_lenient(&d.hex()).unwrap(), d);
    }

    #[test]
    fn digest_rejects_bad_input() {
        for bad in [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:abc",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn chain_id_matches_spec_example() {
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        let ids = chain_ids(&[a, b]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::of(format!("{a} {b}").as_bytes()));
    }
}
