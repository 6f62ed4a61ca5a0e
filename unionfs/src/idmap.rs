//! In-filesystem uid/gid shifting, as fuse-overlayfs's `uidmapping=`, `gidmapping=`,
//! `squash_to_root`, `squash_to_uid=` and `squash_to_gid=`.
//!
//! A mapping is a list of `container:host:length` triples (containers/storage passes the
//! container's id map this way). Ids on disk (the lowers and the upper) are the image's
//! *container* ids; the mount shows *host* ids, so that a process in the container's user
//! namespace (container 0 = host `host`) sees the image's owners. Attributes going out to the
//! kernel are mapped container → host (an id outside every range shows as the overflow id,
//! 65534); ids coming in (the caller of a create, a chown) are host ids, mapped back before
//! they are written (outside every range: the overflow id). The `squash_*` options replace
//! the ids shown, whatever is on disk, and do not change what is written. The arithmetic is
//! fuse-overlayfs's `find_mapping` (its `host` is our `container`, its `to` our `host`), and
//! like it a later triple wins where ranges overlap.

use std::fmt;

/// One contiguous range: container ids `container..container+len` (on disk) are host ids
/// `host..host+len` (shown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id on disk (the image's id).
    pub container: u32,
    /// First id shown in the mount.
    pub host: u32,
    /// Number of ids.
    pub len: u32,
}

/// A parse error of a mapping text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapError(String);

impl fmt::Display for IdMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdMapError {}

/// Parses `C:H:L[:C:H:L…]` (fuse-overlayfs's `uidmapping=` value). Empty fields are skipped,
/// as fuse-overlayfs's `strtok` does: containers/storage sends `:0:100000:65536`.
///
/// # Errors
/// Not a multiple of three numbers, a number that does not parse, a zero length, a range that
/// runs past `u32::MAX`.
pub fn parse_ranges(s: &str) -> Result<Vec<IdRange>, IdMapError> {
    let parts: Vec<&str> = s.split(':').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || !parts.len().is_multiple_of(3) {
        return Err(IdMapError(format!(
            "{s:?}: expected container:host:length triples joined by ':' (e.g. 0:1000:1:1:100000:65536)"
        )));
    }
    let num = |p: &str| {
        p.trim()
            .parse::<u32>()
            .map_err(|_| IdMapError(format!("{s:?}: {p:?} is not an id (0..4294967295)")))
    };
    let mut out = Vec::with_capacity(parts.len() / 3);
    for t in parts.chunks(3) {
        let r = IdRange {
            container: num(t[0])?,
            host: num(t[1])?,
            len: num(t[2])?,
        };
        if r.len == 0 {
            return Err(IdMapError(format!("{s:?}: a range of length 0")));
        }
        if r.container.checked_add(r.len - 1).is_none() || r.host.checked_add(r.len - 1).is_none() {
            return Err(IdMapError(format!("{s:?}: a range runs past 4294967295")));
        }
        out.push(r);
    }
    Ok(out)
}

/// The overflow id shown for a host id outside every range (the kernel's, normally 65534).
fn overflow_id(file: &str) -> u32 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(65534)
}

/// uid and gid shifting of one mount. The default maps nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMap {
    /// `uidmapping=`; empty: uids are not mapped.
    pub uids: Vec<IdRange>,
    /// `gidmapping=`; empty: gids are not mapped.
    pub gids: Vec<IdRange>,
    /// `squash_to_uid=` (or 0 by `squash_to_root`): every file shows this owner.
    pub squash_uid: Option<u32>,
    /// `squash_to_gid=` (or 0 by `squash_to_root`): every file shows this group.
    pub squash_gid: Option<u32>,
    /// Shown for a host uid outside every range.
    pub overflow_uid: u32,
    /// Shown for a host gid outside every range.
    pub overflow_gid: u32,
}

impl Default for IdMap {
    fn default() -> Self {
        IdMap {
            uids: Vec::new(),
            gids: Vec::new(),
            squash_uid: None,
            squash_gid: None,
            overflow_uid: overflow_id("/proc/sys/fs/overflowuid"),
            overflow_gid: overflow_id("/proc/sys/fs/overflowgid"),
        }
    }
}

fn to_container(ranges: &[IdRange], id: u32, overflow: u32) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    ranges
        .iter()
        .rev()
        .find(|r| id >= r.host && id - r.host < r.len)
        .map_or(overflow, |r| r.container + (id - r.host))
}

fn to_host(ranges: &[IdRange], id: u32, overflow: u32) -> u32 {
    if ranges.is_empty() {
        return id;
    }
    ranges
        .iter()
        .rev()
        .find(|r| id >= r.container && id - r.container < r.len)
        .map_or(overflow, |r| r.host + (id - r.container))
}

impl IdMap {
    /// Maps nothing: ids pass through both ways.
    pub fn is_identity(&self) -> bool {
        self.uids.is_empty()
            && self.gids.is_empty()
            && self.squash_uid.is_none()
            && self.squash_gid.is_none()
    }

    /// The owner shown for a file whose owner on disk is `uid`.
    pub fn shown_uid(&self, uid: u32) -> u32 {
        self.squash_uid
            .unwrap_or_else(|| to_host(&self.uids, uid, self.overflow_uid))
    }

    /// The group shown for a file whose group on disk is `gid`.
    pub fn shown_gid(&self, gid: u32) -> u32 {
        self.squash_gid
            .unwrap_or_else(|| to_host(&self.gids, gid, self.overflow_gid))
    }

    /// The owner written to disk for the id `uid` seen through the mount.
    pub fn disk_uid(&self, uid: u32) -> u32 {
        to_container(&self.uids, uid, self.overflow_uid)
    }

    /// The group written to disk for the id `gid` seen through the mount.
    pub fn disk_gid(&self, gid: u32) -> u32 {
        to_container(&self.gids, gid, self.overflow_gid)
    }

    /// Ids are squashed: like fuse-overlayfs, a chown that fails on disk is then not an error
    /// (the ids shown do not change anyway).
    pub fn squashed(&self) -> bool {
        self.squash_uid.is_some() || self.squash_gid.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(u: &str, g: &str) -> IdMap {
        IdMap {
            uids: parse_ranges(u).unwrap(),
            gids: parse_ranges(g).unwrap(),
            overflow_uid: 65534,
            overflow_gid: 65534,
            ..IdMap::default()
        }
    }

    #[test]
    fn parses_podman_style_triples() {
        assert_eq!(
            parse_ranges("0:1000:1:1:100000:65536").unwrap(),
            vec![
                IdRange {
                    container: 0,
                    host: 1000,
                    len: 1
                },
                IdRange {
                    container: 1,
                    host: 100000,
                    len: 65536
                }
            ]
        );
    }

    #[test]
    fn skips_empty_fields_as_containers_storage_sends_them() {
        assert_eq!(
            parse_ranges(":0:100000:65536").unwrap(),
            parse_ranges("0:100000:65536").unwrap()
        );
    }

    #[test]
    fn rejects_bad_texts() {
        for bad in [
            "",
            ":",
            "0:1000",
            "0:1000:1:1",
            "a:1:1",
            "0:-1:1",
            "0:1:0",
            "4294967295:0:2",
            "0:4294967295:2",
        ] {
            let e = parse_ranges(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
        assert!(parse_ranges("4294967295:0:1").is_ok());
    }

    #[test]
    fn maps_both_ways_and_overflows_outside() {
        // Container 0 is host 1000, container 1.. are host 100000..
        let m = map("0:1000:1:1:100000:65536", "0:1000:1");
        assert_eq!(m.shown_uid(0), 1000);
        assert_eq!(m.shown_uid(1), 100000);
        assert_eq!(m.shown_uid(65536), 100000 + 65535);
        assert_eq!(m.shown_uid(65537), 65534, "outside every range");
        assert_eq!(m.disk_uid(1000), 0);
        assert_eq!(m.disk_uid(100032), 33);
        assert_eq!(m.disk_uid(0), 65534, "host root is outside the ranges");
        assert_eq!(m.shown_gid(0), 1000);
        assert_eq!(m.shown_gid(5), 65534);
        assert_eq!(m.disk_gid(1000), 0);
        for id in [0, 1, 500, 65536] {
            assert_eq!(m.disk_uid(m.shown_uid(id)), id);
        }
        // Overlapping ranges: the later triple wins, as in fuse-overlayfs.
        let o = map("0:1000:10:0:2000:10", "0:0:1");
        assert_eq!((o.shown_uid(3), o.disk_uid(1003)), (2003, 3));
    }

    #[test]
    fn squash_changes_what_is_shown_only() {
        let m = IdMap {
            squash_uid: Some(0),
            squash_gid: Some(7),
            ..map("0:1000:10", "0:1000:10")
        };
        assert_eq!(m.shown_uid(3), 0);
        assert_eq!(m.shown_uid(5000), 0);
        assert_eq!(m.shown_gid(3), 7);
        assert_eq!(m.disk_uid(1003), 3);
        assert!(!m.is_identity() && m.squashed());
        assert!(IdMap::default().is_identity());
        let id = IdMap::default();
        assert_eq!((id.shown_uid(42), id.disk_gid(42)), (42, 42));
    }
}
