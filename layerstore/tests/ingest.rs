//! Ingest and export of layer tars: round trips of every entry type, compression, dedup, and
//! every kind of bad input (each leaves the store fsck-clean).

// Test code: a panic that shows the value is the failure report.
#![allow(clippy::unwrap_used)]

use std::io::Write;

use layerstore::{Digest, EntryKind, Error, Store};

/// A store in a fresh temp dir.
fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::Builder::new()
        .prefix("strata-test-")
        .tempdir()
        .unwrap();
    let s = Store::open(dir.path()).unwrap();
    (dir, s)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(100);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// A tar with every entry type a layer can hold, built by the `tar` crate (an independent
/// writer), including PAX xattrs and GNU long names.
fn every_kind_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "./", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "etc/", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, 6);
    b.append_data(&mut h, "etc/hello", &b"hello\n"[..]).unwrap();
    b.append_pax_extensions([
        (
            "SCHILY.xattr.security.capability",
            &b"\x01\x00\x00\x02\x00\x20\x00\x00"[..],
        ),
        ("SCHILY.xattr.user.note", &b"v"[..]),
    ])
    .unwrap();
    let mut h = header(tar::EntryType::Regular, 0o4755, 3);
    b.append_data(&mut h, "etc/setuid", &b"abc"[..]).unwrap();
    let mut h = header(tar::EntryType::Link, 0o644, 0);
    b.append_link(&mut h, "etc/hello-link", "etc/hello")
        .unwrap();
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "etc/abs-symlink", "/etc/hello")
        .unwrap();
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, "etc/rel-symlink", "../etc/hello")
        .unwrap();
    let mut h = header(tar::EntryType::Char, 0o666, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev-null", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Block, 0o660, 0);
    h.set_device_major(7).unwrap();
    h.set_device_minor(0).unwrap();
    b.append_data(&mut h, "loop0", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Fifo, 0o600, 0);
    b.append_data(&mut h, "fifo", &[][..]).unwrap();
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
    let mut h = header(tar::EntryType::Regular, 0o600, 4);
    b.append_data(&mut h, &long, &b"long"[..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    b.append_data(&mut h, "etc/.wh.removed", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    b.append_data(&mut h, "var/.wh..wh..opq", &[][..]).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, 0);
    b.append_data(&mut h, "empty", &[][..]).unwrap();
    let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut h = header(tar::EntryType::Regular, 0o644, big.len() as u64);
    b.append_data(&mut h, "big.bin", &big[..]).unwrap();
    b.into_inner().unwrap()
}

fn export(s: &Store, d: &Digest) -> Vec<u8> {
    let mut out = Vec::new();
    s.export_layer(d, &mut out).unwrap();
    out
}

fn assert_clean(s: &Store) {
    let rep = s.fsck(2).unwrap();
    assert!(rep.ok(), "fsck errors: {:?}", rep.errors);
    let tmp = s.root().join("tmp");
    assert_eq!(
        std::fs::read_dir(tmp).unwrap().count(),
        0,
        "temp files left behind"
    );
}

#[test]
fn every_entry_type_round_trips_byte_for_byte() {
    let (_d, s) = store();
    let tar = every_kind_tar();
    let info = s.ingest_layer(&tar[..], None).unwrap();
    assert_eq!(info.diff_id, Digest::of(&tar));
    assert_eq!(info.tar_size, tar.len() as u64);
    assert!(!info.existed);
    assert_eq!(export(&s, &info.diff_id), tar);

    let entries = s.layer_entries(&info.diff_id).unwrap();
    let find = |p: &str, k: EntryKind| {
        entries
            .iter()
            .find(|e| e.path == p && e.kind == k)
            .unwrap_or_else(|| panic!("{p} {k:?}"))
    };
    assert_eq!(find("", EntryKind::Dir).mode, 0o755);
    let hello = find("etc/hello", EntryKind::File);
    assert_eq!(
        (hello.size, hello.uid, hello.gid, hello.mtime),
        (6, 1000, 100, 1_700_000_000)
    );
    assert_eq!(hello.object, Some(Digest::of(b"hello\n")));
    assert_eq!(find("etc/setuid", EntryKind::File).mode, 0o4755);
    assert_eq!(
        find("etc/hello-link", EntryKind::HardLink).link.as_deref(),
        Some("etc/hello")
    );
    assert_eq!(
        find("etc/abs-symlink", EntryKind::Symlink).link.as_deref(),
        Some("/etc/hello")
    );
    let null = find("dev-null", EntryKind::CharDev);
    assert_eq!((null.dev_major, null.dev_minor), (1, 3));
    assert_eq!(find("loop0", EntryKind::BlockDev).dev_major, 7);
    find("fifo", EntryKind::Fifo);
    let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
    assert_eq!(find(&long, EntryKind::File).size, 4);
    find("etc/removed", EntryKind::Whiteout);
    find("var", EntryKind::Opaque);
    assert_eq!(find("empty", EntryKind::File).object, None);
    let setuid = find("etc/setuid", EntryKind::File);
    assert!(
        setuid
            .xattrs
            .iter()
            .any(|(n, v)| n == "user.note" && v == b"v")
    );
    assert!(
        setuid
            .xattrs
            .iter()
            .any(|(n, _)| n == "security.capability")
    );
    assert_clean(&s);
}

#[test]
fn compressed_inputs_have_the_plain_tar_diff_id() {
    let (_d, s) = store();
    let tar = every_kind_tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let a = s.ingest_layer(&gz[..], None).unwrap();
    assert_eq!(a.diff_id, Digest::of(&tar));
    assert_eq!(a.compression, layerstore::Compression::Gzip);
    let b = s.ingest_layer(&zst[..], None).unwrap();
    assert_eq!(b.compression, layerstore::Compression::Zstd);
    assert!(b.existed, "same layer twice is stored once");
    assert_eq!(export(&s, &a.diff_id), tar);
    assert_clean(&s);
}

#[test]
fn identical_files_in_other_layers_are_stored_once() {
    let (_d, s) = store();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let make = |mtime: u64, name: &str| {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 0o644, payload.len() as u64);
        h.set_mtime(mtime);
        b.append_data(&mut h, name, &payload[..]).unwrap();
        b.into_inner().unwrap()
    };
    let (t1, t2) = (make(1, "a/file"), make(2, "b/other-name"));
    let l1 = s.ingest_layer(&t1[..], None).unwrap();
    let before = s.df().unwrap();
    let l2 = s.ingest_layer(&t2[..], None).unwrap();
    assert_ne!(l1.diff_id, l2.diff_id);
    let after = s.df().unwrap();
    assert_eq!(before.object_bytes, after.object_bytes);
    assert_eq!(after.objects, 1);
    assert_eq!(export(&s, &l2.diff_id), t2);
}

#[test]
fn wrong_expected_diff_id_is_refused_and_nothing_stays() {
    let (_d, s) = store();
    let tar = every_kind_tar();
    let wrong = Digest::of(b"not it");
    let err = s.ingest_layer(&tar[..], Some(&wrong)).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&wrong.to_string()));
    assert_eq!(s.df().unwrap().objects, 0);
    assert!(s.objects().list_count() == 0);
    assert_clean(&s);
}

/// A raw ustar header block with a correct checksum, for inputs the `tar` crate refuses to write.
fn raw_header(name: &str, typeflag: u8, size: u64, link: &str) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len()].copy_from_slice(name.as_bytes());
    b[100..107].copy_from_slice(b"0000644");
    b[108..115].copy_from_slice(b"0000000");
    b[116..123].copy_from_slice(b"0000000");
    b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    b[136..147].copy_from_slice(b"00000000000");
    b[156] = typeflag;
    b[157..157 + link.len()].copy_from_slice(link.as_bytes());
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
    b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    b
}

fn raw_tar(entries: &[(&str, u8, &[u8], &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, t, data, link) in entries {
        out.extend_from_slice(&raw_header(name, *t, data.len() as u64, link));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn expect_bad(s: &Store, input: &[u8], needle: &str) {
    expect_bad_layers(s, input, needle, 0);
}

fn expect_bad_layers(s: &Store, input: &[u8], needle: &str, layers: u64) {
    let err = s.ingest_layer(input, None).expect_err(needle);
    let msg = err.to_string();
    assert!(
        msg.contains(needle),
        "error {msg:?} should contain {needle:?}"
    );
    assert_eq!(s.df().unwrap().layers, layers);
    assert_clean(s);
}

#[test]
fn raw_tar_helper_is_a_valid_tar() {
    let (_d, s) = store();
    let t = raw_tar(&[("a", b'0', b"x", ""), ("b", b'1', b"", "a")]);
    let info = s.ingest_layer(&t[..], None).unwrap();
    assert_eq!(export(&s, &info.diff_id), t);
}

#[test]
fn path_traversal_is_refused() {
    let (_d, s) = store();
    expect_bad(&s, &raw_tar(&[("../x", b'0', b"x", "")]), "escape the root");
    expect_bad(
        &s,
        &raw_tar(&[("a/../../x", b'0', b"x", "")]),
        "escape the root",
    );
    expect_bad(
        &s,
        &raw_tar(&[("/etc/passwd", b'0', b"x", "")]),
        "absolute path",
    );
    // A symlink followed by a file written through it.
    expect_bad(
        &s,
        &raw_tar(&[("link", b'2', b"", "/etc"), ("link/passwd", b'0', b"x", "")]),
        "goes through \"link\"",
    );
    // Hard links to outside the layer.
    expect_bad(
        &s,
        &raw_tar(&[("h", b'1', b"", "../../etc/shadow")]),
        "escape the root",
    );
    expect_bad(
        &s,
        &raw_tar(&[("h", b'1', b"", "/etc/shadow")]),
        "absolute path",
    );
    expect_bad(
        &s,
        &raw_tar(&[("h", b'1', b"", "etc/shadow")]),
        "not an earlier file",
    );
}

#[test]
fn duplicates_and_bad_whiteouts_are_refused() {
    let (_d, s) = store();
    expect_bad(
        &s,
        &raw_tar(&[("a", b'0', b"x", ""), ("./a", b'0', b"y", "")]),
        "duplicate path",
    );
    expect_bad(
        &s,
        &raw_tar(&[("d/.wh.", b'0', b"", "")]),
        "not a valid whiteout",
    );
    expect_bad(
        &s,
        &raw_tar(&[(".wh..", b'0', b"", "")]),
        "not a valid whiteout",
    );
    expect_bad(
        &s,
        &raw_tar(&[("d/.wh..wh.plnk", b'0', b"", "")]),
        "AUFS metadata",
    );
}

#[test]
fn truncated_and_corrupt_tars_are_refused() {
    let (_d, s) = store();
    let tar = every_kind_tar();
    // Cut inside a header, inside content and inside padding.
    for cut in [100, 700, 3000, tar.len() - 2 * 1024 * 1024] {
        expect_bad(&s, &tar[..cut], "truncated");
    }
    let mut corrupt = tar.clone();
    corrupt[10] ^= 0xff;
    expect_bad(&s, &corrupt, "checksum mismatch");
    expect_bad(
        &s,
        b"this is not a tar archive at all, just some text that is long enough",
        "truncated",
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let mut gz = gz.finish().unwrap();
    let mid = gz.len() / 2;
    gz[mid] ^= 0x55;
    gz[mid + 1] ^= 0x55;
    let err = s.ingest_layer(&gz[..], None).unwrap_err();
    assert!(!err.to_string().is_empty());
    assert_clean(&s);
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let err = s.ingest_layer(&zst[..zst.len() / 2], None).unwrap_err();
    assert!(
        err.to_string().contains("zstd")
            || err.to_string().contains("truncated")
            || err.to_string().contains("reading"),
        "{err}"
    );
    assert_clean(&s);
}

#[test]
fn tars_without_end_blocks_or_final_padding_are_accepted() {
    // umoci leaves its layers like that (Go's tar writer without Close); Go's reader accepts
    // them, and the bytes come back exactly.
    let (_d, s) = store();
    let tar = raw_tar(&[("a", b'0', b"x", ""), ("b", b'0', b"yz", "")]);
    let no_end = &tar[..tar.len() - 1024];
    let no_pad = &no_end[..no_end.len() - 510];
    for input in [no_end, no_pad] {
        let info = s.ingest_layer(input, None).unwrap();
        assert_eq!(export(&s, &info.diff_id), input);
        assert_eq!(s.layer_entries(&info.diff_id).unwrap().len(), 2);
    }
    // Cut inside the padding (some of it there) is still truncation.
    expect_bad_layers(&s, &no_end[..no_end.len() - 300], "truncated", 2);
    assert_clean(&s);
}

#[test]
fn concurrent_ingests_of_the_same_store() {
    let dir = tempfile::Builder::new()
        .prefix("strata-test-")
        .tempdir()
        .unwrap();
    let tar = every_kind_tar();
    let results: Vec<_> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                sc.spawn(|| {
                    let s = Store::open(dir.path()).unwrap();
                    s.ingest_layer(&tar[..], None).unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results.iter().filter(|r| !r.existed).count(),
        1,
        "{results:?}"
    );
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(export(&s, &results[0].diff_id), tar);
    assert_clean(&s);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Node {
        File(Vec<u8>, u32),
        Dir(u32),
        Symlink(String),
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z0-9_.-]{1,12}".prop_filter("not . or .. or a whiteout", |s| {
            s != "." && s != ".." && !s.starts_with(".wh.")
        })
    }

    fn node() -> impl Strategy<Value = Node> {
        prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 0..3000),
                0o000u32..0o7777
            )
                .prop_map(|(d, m)| Node::File(d, m)),
            (0o000u32..0o7777).prop_map(Node::Dir),
            "[ -~]{1,80}".prop_map(Node::Symlink),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// tar → store → tar is the identity, whatever the tree.
        #[test]
        fn tar_store_tar_is_identity(
            entries in proptest::collection::btree_map(
                proptest::collection::vec(name(), 1..4).prop_map(|v| v.join("/")),
                node(),
                1..40,
            ),
            gnu in any::<bool>(),
        ) {
            let mut b = tar::Builder::new(Vec::new());
            let mut dirs = std::collections::BTreeSet::new();
            let mut used = std::collections::BTreeSet::new();
            for (path, node) in &entries {
                // Parents first, as directories; skip paths that collide with a non-dir.
                let parts: Vec<&str> = path.split('/').collect();
                let mut ok = true;
                for i in 1..parts.len() {
                    let p = parts[..i].join("/");
                    if used.contains(&p) && !dirs.contains(&p) { ok = false; break; }
                    if dirs.insert(p.clone()) {
                        used.insert(p.clone());
                        let mut h = if gnu { tar::Header::new_gnu() } else { tar::Header::new_ustar() };
                        h.set_entry_type(tar::EntryType::Directory);
                        h.set_mode(0o755);
                        h.set_size(0);
                        b.append_data(&mut h, format!("{p}/"), &[][..]).unwrap();
                    }
                }
                if !ok || used.contains(path) { continue; }
                used.insert(path.clone());
                let mut h = if gnu { tar::Header::new_gnu() } else { tar::Header::new_ustar() };
                match node {
                    Node::File(data, mode) => {
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_mode(*mode);
                        h.set_size(data.len() as u64);
                        b.append_data(&mut h, path, &data[..]).unwrap();
                    }
                    Node::Dir(mode) => {
                        dirs.insert(path.clone());
                        h.set_entry_type(tar::EntryType::Directory);
                        h.set_mode(*mode);
                        h.set_size(0);
                        b.append_data(&mut h, path, &[][..]).unwrap();
                    }
                    Node::Symlink(t) => {
                        h.set_entry_type(tar::EntryType::Symlink);
                        h.set_size(0);
                        b.append_link(&mut h, path, t).unwrap();
                    }
                }
            }
            let tar = b.into_inner().unwrap();
            let (_d, s) = store();
            let info = s.ingest_layer(&tar[..], None).unwrap();
            prop_assert_eq!(info.diff_id, Digest::of(&tar));
            prop_assert_eq!(export(&s, &info.diff_id), tar);
        }
    }
}
