//! Micro benchmark without FUSE: build an `IndexTree` of ~30k entries (the size of a Debian base
//! image) and walk it through `UnionFs` (lookup + getattr + readdir), as `find`/`ls -lR` would.
//! A plain timing loop (criterion is not vendored yet); run with `cargo bench -p unionfs`.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Instant;

use unionfs::{
    FsOptions, IndexEntry, IndexKind, IndexMeta, IndexTree, Ino, LowerTree, ROOT_INO, UnionFs,
};

fn entries(n_dirs: usize, files_per_dir: usize) -> Vec<IndexEntry> {
    let mut v = Vec::new();
    let meta = |path: String, kind| IndexEntry {
        path,
        kind,
        meta: IndexMeta {
            mode: 0o644,
            ..IndexMeta::default()
        },
    };
    for d in 0..n_dirs {
        v.push(meta(format!("usr/share/d{d:04}"), IndexKind::Dir));
        for f in 0..files_per_dir {
            v.push(meta(
                format!("usr/share/d{d:04}/file-{f:03}.txt"),
                IndexKind::File {
                    size: 0,
                    content: None,
                },
            ));
        }
    }
    v
}

fn walk(fs: &UnionFs, dir: Ino, count: &mut usize) {
    let fh = fs.opendir(dir).expect("opendir");
    let items = fs.readdir(fh, 2).expect("readdir");
    fs.release(fh);
    for it in items {
        let e = fs.lookup(dir, &it.name).expect("lookup");
        *count += 1;
        if e.attr.kind == unionfs::EntryKind::Dir {
            walk(fs, e.attr.ino, count);
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    let dirs = std::env::var("WALK_DIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rss0 = rss_kib();
    let e = entries(dirs, 30);
    let n = e.len();
    let t = Instant::now();
    let tree = IndexTree::from_entries(e).expect("build");
    let build = t.elapsed();
    let rss_tree = rss_kib();
    let lowers: Vec<Arc<dyn LowerTree>> = vec![Arc::new(tree)];
    let fs = UnionFs::new(lowers, None, FsOptions::default()).expect("union");
    for round in ["cold", "warm"] {
        let t = Instant::now();
        let mut count = 0;
        walk(&fs, ROOT_INO, &mut count);
        println!("walk ({round}): {count} entries in {:?}", t.elapsed());
    }
    println!("IndexTree::from_entries: {n} entries in {build:?}");
    println!(
        "RSS: {rss0} KiB at start, {rss_tree} KiB with the tree, {} KiB after the walks",
        rss_kib()
    );
    let t = Instant::now();
    for _ in 0..100_000 {
        let _ = fs.lookup(ROOT_INO, OsStr::new("usr"));
    }
    println!("lookup: {:?} per call", t.elapsed() / 100_000);
}
