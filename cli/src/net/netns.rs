//! A new network namespace, held by an open descriptor rather than by a process or a bind
//! mount: nothing to clean up after a crash, the kernel frees it with its last user.

use std::fs::File;
use std::os::fd::OwnedFd;

use anyhow::{Context, Result};
use nix::sched::CloneFlags;

/// Creates a network namespace (loopback only, down) and returns a descriptor of it.
///
/// A short-lived thread unshares its own network namespace (a thread may: the flag needs no
/// single-threaded process) and opens it; the rest of strata stays in the host's.
///
/// # Errors
/// No permission (not root, not in a user namespace of one's own), thread failures.
pub(super) fn create() -> Result<OwnedFd> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("strata-netns".into())
            .spawn_scoped(s, || -> Result<OwnedFd> {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                    .context("creating a network namespace (unshare)")?;
                let f = File::open("/proc/thread-self/ns/net")
                    .context("opening the new network namespace")?;
                Ok(f.into())
            })
            .context("starting the network namespace thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("the network namespace thread panicked"))?
    })
}
