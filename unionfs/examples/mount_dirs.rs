//! Mounts plain directories in the foreground, for manual tests and benchmarks:
//! `mount_dirs LOWER[:LOWER...] MOUNTPOINT [UPPER WORK] [--passthrough] [--writeback] [--ttl0]`.
//! Unmount with `fusermount3 -u MOUNTPOINT` or SIGTERM. `STRATA_THREADS=n` sets the workers.

use std::path::PathBuf;
use std::sync::Arc;

use unionfs::{DirTree, LowerTree, MountOptions, UnionConfig, UpperDirs};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags: Vec<&String> = args.iter().filter(|a| a.starts_with("--")).collect();
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    if pos.len() != 2 && pos.len() != 4 {
        eprintln!(
            "usage: mount_dirs LOWER[:LOWER...] MOUNTPOINT [UPPER WORK] [--passthrough] [--ttl0]"
        );
        std::process::exit(2);
    }
    let mut lowers: Vec<Arc<dyn LowerTree>> = Vec::new();
    for l in pos[0].split(':') {
        lowers.push(Arc::new(DirTree::open(l)?));
    }
    let upper = (pos.len() == 4).then(|| UpperDirs {
        upper: PathBuf::from(pos[2]),
        work: PathBuf::from(pos[3]),
    });
    let mut options = if flags.iter().any(|f| *f == "--ttl0") {
        MountOptions::uncached()
    } else {
        MountOptions::default()
    };
    options.passthrough = flags.iter().any(|f| *f == "--passthrough");
    options.writeback_cache = flags.iter().any(|f| *f == "--writeback");
    if let Ok(n) = std::env::var("STRATA_THREADS") {
        options.n_threads = n.parse()?;
    }
    unionfs::mount(
        UnionConfig {
            lowers,
            upper,
            options,
        },
        &PathBuf::from(pos[1]),
        || {
            eprintln!("mounted");
        },
    )?;
    Ok(())
}
