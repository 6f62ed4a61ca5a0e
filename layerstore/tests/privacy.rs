//! The store is private to its owner (modes of the root, the index and its WAL, objects) and a
//! store left open to others is made private at open; a damaged object is replaced by
//! ingesting the same content again.

// Test code: a panic that shows the value is the failure report.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use layerstore::{Digest, Store};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-test-")
        .tempdir()
        .unwrap()
}

/// A one-file layer tar (plus a 9 MiB file: more than the in-memory limit, so the streamed
/// path is covered too).
fn layer(small: &[u8], big: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [("etc/secret", small), ("big.bin", big)] {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o640);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn big_content() -> Vec<u8> {
    (0..9u32 << 20).map(|i| (i % 251) as u8).collect()
}

/// SQLite makes the WAL and shared-memory files with the index's mode: while a store is open
/// they exist, and are 0600 like `store.db`.
#[test]
fn index_wal_and_shm_are_private_while_open() {
    let dir = tempdir();
    let root = dir.path().join("store");
    let s = Store::open(&root).unwrap();
    s.ingest_layer(&layer(b"x", b"y")[..], None).unwrap();
    assert_eq!(mode(&root), 0o700);
    for f in ["store.db", "store.db-wal", "store.db-shm", "lock"] {
        assert_eq!(mode(&root.join(f)), 0o600, "{f}");
    }
    assert_eq!(mode(&s.objects().path(&Digest::of(b"x"))), 0o400);
    assert_eq!(s.notice(), None, "a new store needs no notice");
}

/// A store whose root and index let others in gets a notice saying what was changed, once.
#[test]
fn an_open_store_is_tightened_with_one_notice() {
    let dir = tempdir();
    let root = dir.path().join("store");
    {
        let s = Store::open(&root).unwrap();
        s.ingest_layer(&layer(b"x", b"y")[..], None).unwrap();
    }
    let obj = root
        .join("objects/sha256")
        .join(&Digest::of(b"x").hex()[..2]);
    set_mode(&root, 0o755);
    set_mode(&root.join("store.db"), 0o644);
    set_mode(&obj, 0o755);
    let s = Store::open(&root).unwrap();
    let n = s.notice().expect("a notice");
    assert!(n.contains("made it private") && n.contains("0755"), "{n}");
    assert_eq!(
        (mode(&root), mode(&root.join("store.db")), mode(&obj)),
        (0o700, 0o600, 0o700)
    );
    drop(s);
    assert_eq!(Store::open(&root).unwrap().notice(), None);
    // A mount's read-only open does the same.
    set_mode(&root, 0o711);
    let s = Store::open_reader(&root).unwrap();
    assert!(s.notice().unwrap().contains("0711"));
    assert_eq!(mode(&root), 0o700);
}

/// Damage an object in place (same size: only its bytes are wrong), or cut it short.
fn damage(p: &Path, truncate: bool) {
    set_mode(p, 0o600);
    let mut data = std::fs::read(p).unwrap();
    if truncate {
        data.truncate(data.len() / 2);
    } else {
        data[0] ^= 0xff;
    }
    std::fs::write(p, data).unwrap();
    set_mode(p, 0o400);
}

/// An object that fails verification is replaced when the same content is ingested again,
/// whether the damage changed its size or only its bytes, small or streamed; a missing one is
/// restored too (the layer is stored already, so only its objects are written).
#[test]
fn reingesting_repairs_damaged_and_missing_objects() {
    let dir = tempdir();
    let s = Store::open(&dir.path().join("store")).unwrap();
    let big = big_content();
    let tar = layer(b"small secret", &big);
    let diff_id = s.ingest_layer(&tar[..], None).unwrap().diff_id;
    let small = s.objects().path(&Digest::of(b"small secret"));
    let large = s.objects().path(&Digest::of(&big));
    for (truncate, missing) in [(false, false), (true, false), (false, true)] {
        if missing {
            std::fs::remove_file(&small).unwrap();
            std::fs::remove_file(&large).unwrap();
        } else {
            damage(&small, truncate);
            damage(&large, truncate);
        }
        assert!(!s.fsck(1).unwrap().ok(), "the damage is seen");
        let info = s.ingest_layer(&tar[..], None).unwrap();
        assert!(info.existed);
        assert_eq!(info.diff_id, diff_id);
        let rep = s.fsck(1).unwrap();
        assert!(
            rep.ok(),
            "truncate={truncate} missing={missing}: {:?}",
            rep.errors
        );
        assert_eq!(std::fs::read(&small).unwrap(), b"small secret");
        assert_eq!(mode(&small), 0o400);
        assert_eq!(mode(&large), 0o400);
    }
    let mut out = Vec::new();
    s.export_layer(&diff_id, &mut out).unwrap();
    assert!(out == tar, "the layer regenerates byte for byte");
}
