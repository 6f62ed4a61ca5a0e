//! The only `unsafe` code of the crate: signal masks and thread signals, which neither std nor
//! rustix's safe API covers. Everything else goes through std or rustix.
// Workspace lints deny unsafe_code; this module is the documented exception (STYLE.md §11).
#![allow(unsafe_code)]

use std::io;

/// Signals that end a foreground mount.
const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
/// Signal the session watcher sends to the waiting thread when the mount went away.
pub(crate) const SESSION_ENDED_SIGNAL: i32 = libc::SIGUSR1;

/// A signal set plus the mask it replaced in the calling thread.
pub(crate) struct BlockedSignals {
    set: libc::sigset_t,
    old: libc::sigset_t,
}

impl std::fmt::Debug for BlockedSignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockedSignals")
    }
}

/// Blocks the stop signals and [`SESSION_ENDED_SIGNAL`] in the calling thread (threads spawned
/// afterwards inherit the mask), so they can be taken with [`BlockedSignals::wait`].
pub(crate) fn block_stop_signals() -> io::Result<BlockedSignals> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above, `old` is only written by pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for s in STOP_SIGNALS.iter().chain([SESSION_ENDED_SIGNAL].iter()) {
        // SAFETY: `set` was initialised by sigemptyset; `s` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, *s) };
    }
    // SAFETY: both pointers are to valid sigset_t values owned by this frame.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(BlockedSignals { set, old })
}

impl BlockedSignals {
    /// Waits for one of the blocked signals and returns it.
    pub(crate) fn wait(&self) -> io::Result<i32> {
        let mut sig: libc::c_int = 0;
        // SAFETY: `self.set` is an initialised sigset_t; `sig` is a valid out pointer.
        let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(sig)
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        // SAFETY: `self.old` is the mask pthread_sigmask returned in block_stop_signals.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

/// A handle to the calling thread for [`ThreadHandle::signal`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ThreadHandle(libc::pthread_t);

/// The calling thread.
pub(crate) fn current_thread() -> ThreadHandle {
    // SAFETY: pthread_self has no preconditions.
    ThreadHandle(unsafe { libc::pthread_self() })
}

impl ThreadHandle {
    /// Sends `sig` to this thread. The caller keeps the thread alive (it is waiting in
    /// [`BlockedSignals::wait`] until the signal arrives).
    pub(crate) fn signal(self, sig: i32) {
        // SAFETY: the thread id came from pthread_self of a thread that outlives this call (the
        // foreground mount joins the sender before returning).
        unsafe { libc::pthread_kill(self.0, sig) };
    }
}

/// `sync_file_range(2)` over `offset..offset + len` of `f`: starts writeback of the range and,
/// with `wait`, first waits for writeback already under way there and then for its own. Not
/// a durability guarantee (no metadata, no disk cache flush): the caller still fsyncs; this only
/// moves the writing earlier, so the final fsync has little left to do.
pub(crate) fn sync_file_range(
    f: &impl std::os::fd::AsFd,
    offset: u64,
    len: u64,
    wait: bool,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: the descriptor is borrowed for the duration of the call; the other arguments are
    // plain integers.
    let rc = unsafe { libc::sync_file_range(f.as_fd().as_raw_fd(), off, n, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
