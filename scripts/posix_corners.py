#!/usr/bin/env python3
"""Corner cases of POSIX behaviour that pjdfstest does not reach, for scripts/posix.sh --corners.

    posix_corners.py lower DIR   make the lower-layer fixtures of the cases in DIR (a plain directory)
    posix_corners.py run DIR new|lower
                                 run the cases in DIR (a directory of a mount) and print one line per case:
                                 NAME<TAB>PASS|FAIL<TAB>detail; exit 1 if any failed. `new` runs them on
                                 entries it creates in DIR, `lower` on the fixtures `lower` made in DIR
                                 (seen through a union mount whose lower layer holds them).

Cases:
  pathmax.*   32 nested directories of 127-byte names, built with mkdir+chdir, so the path of the deepest
              one relative to DIR is 4095 bytes (PATH_MAX - 1); then, from there, create, open, mkdir,
              mkfifo, symlink, link, rename, chmod, chown, truncate, unlink, rmdir. The lower variant walks
              the same depth that a lower layer already has and changes lower entries there: chmod
              (metadata-only copy-up), write (data copy-up), rename of a file and of a dir (in place; a
              move to the parent dir may answer EXDEV, as overlayfs does), unlink and rmdir (whiteouts).
  longname.*  rename of a file and of a directory to names of 252..255 bytes (NAME_MAX = 255), and back.
  unlinked.*  open a file, unlink it, then fstat (st_nlink must be 0), fchmod, fchown, futimens on the
              descriptor, and the name must stay gone; fstat of an open directory after rmdir. The lower
              variants open a lower file read-write (copied up at open) and read-only (not copied up).
The expected results are those of a local filesystem (ext4, tmpfs): every case passes there.
"""

import errno
import os
import stat
import sys

DEPTH = 32
LEVEL_LEN = 127  # 32 * 127 + 31 slashes = 4095 bytes
LONG_LENS = (252, 253, 254, 255)
OWNER = (1, 1)  # daemon:daemon on Debian; any id other than root's works (the runner is root)


def level_name(i):
    return ("L%02d_" % i).ljust(LEVEL_LEN, "p")


def long_name(prefix, n):
    return (prefix + "_%d_" % n).ljust(n, "n")


def err(e):
    return errno.errorcode.get(e.errno, str(e.errno)) + " " + e.strerror if e.errno else str(e)


class Report:
    def __init__(self):
        self.failed = 0

    def case(self, name, ok, detail=""):
        if not ok:
            self.failed += 1
        print("%s\t%s\t%s" % (name, "PASS" if ok else "FAIL", detail), flush=True)

    def run(self, name, fn):
        """Run fn(); PASS when it returns None or True, FAIL on False, an OSError or a string (the reason);
        (True, note) passes with a note."""
        try:
            r = fn()
        except OSError as e:
            self.case(name, False, err(e))
            return False
        except Exception as e:  # noqa: BLE001 - report anything, never stop the other cases
            self.case(name, False, "%s: %s" % (type(e).__name__, e))
            return False
        if r is None or r is True:
            self.case(name, True)
            return True
        if isinstance(r, tuple):
            self.case(name, r[0], r[1])
            return r[0]
        self.case(name, False, r if isinstance(r, str) else "wrong result")
        return False


# --- lower fixtures ----------------------------------------------------------------------------------


def make_lower(d):
    """corner files in a plain directory that becomes (part of) a lower layer."""
    os.makedirs(d, exist_ok=True)
    start = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(d)
        os.mkdir("deep")
        os.chdir("deep")
        for i in range(DEPTH):
            os.mkdir(level_name(i))
            os.chdir(level_name(i))
        for name in ("f", "g", "h"):
            with open(name, "w") as f:
                f.write("lower data\n")
        for name in ("sub", "subm", "subr"):
            os.mkdir(name)
        with open(os.path.join("subm", "child"), "w") as f:
            f.write("child\n")
        os.fchdir(start)
        os.chdir(d)
        for n in LONG_LENS:
            with open("lf%d" % n, "w") as f:
                f.write("lower file %d\n" % n)
            os.mkdir("ld%d" % n)
            with open(os.path.join("ld%d" % n, "child"), "w") as f:
                f.write("child\n")
            with open(long_name("W", n), "w") as f:
                f.write("lower file to remove\n")
            os.mkdir(long_name("V", n))
        for name in ("ofile", "ofile_ro"):
            with open(name, "w") as f:
                f.write("lower open file\n")
        os.mkdir("odir")
    finally:
        os.fchdir(start)
        os.close(start)


# --- cases --------------------------------------------------------------------------------------------


def pathmax_new(r, top):
    """Build the 4095-byte deep tree level by level in the mount, then operate at its bottom."""
    os.chdir(top)
    os.mkdir("pm")
    os.chdir("pm")
    rel = 0
    for i in range(DEPTH):
        name = level_name(i)
        try:
            os.mkdir(name)
            os.chdir(name)
        except OSError as e:
            r.case("pathmax.new.build", False, "level %d (path %d bytes): %s" % (i + 1, rel + len(name) + (1 if i else 0), err(e)))
            return
        rel += len(name) + (1 if i else 0)
    r.case("pathmax.new.build", True, "%d levels, %d bytes" % (DEPTH, rel))

    def create():
        fd = os.open("f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"hello\n")
        finally:
            os.close(fd)

    def open_read():
        fd = os.open("f", os.O_RDONLY)
        try:
            data = os.read(fd, 100)
        finally:
            os.close(fd)
        return data == b"hello\n" or "read %r" % data

    def getcwd():
        # The kernel builds the path; a FUSE fs is not involved, but a broken dentry chain shows here.
        os.getcwd()

    def chmod():
        os.chmod("g", 0o600)
        m = stat.S_IMODE(os.stat("g").st_mode)
        return m == 0o600 or "mode %o" % m

    def chown():
        os.chown("g", *OWNER)
        st = os.stat("g")
        return (st.st_uid, st.st_gid) == OWNER or "owner %d:%d" % (st.st_uid, st.st_gid)

    def truncate():
        os.truncate("g", 2)
        n = os.stat("g").st_size
        return n == 2 or "size %d" % n

    def stat_link():
        n = os.stat("g").st_nlink
        return n == 2 or "st_nlink %d" % n

    r.run("pathmax.new.create", create)
    r.run("pathmax.new.open", open_read)
    r.run("pathmax.new.getcwd", getcwd)
    r.run("pathmax.new.mkdir", lambda: os.mkdir("d"))
    r.run("pathmax.new.mkfifo", lambda: os.mkfifo("p"))
    r.run("pathmax.new.symlink", lambda: os.symlink("f", "s"))
    r.run("pathmax.new.readlink", lambda: os.readlink("s") == "f" or "wrong target")
    r.run("pathmax.new.link", lambda: os.link("f", "l"))
    r.run("pathmax.new.rename", lambda: os.rename("f", "g"))
    r.run("pathmax.new.rename-dir", lambda: os.rename("d", "d2"))
    r.run("pathmax.new.nlink", stat_link)
    r.run("pathmax.new.chmod", chmod)
    r.run("pathmax.new.chown", chown)
    r.run("pathmax.new.truncate", truncate)
    r.run("pathmax.new.unlink", lambda: (os.unlink("l"), os.unlink("g"), os.unlink("s"), os.unlink("p")) and None)
    r.run("pathmax.new.rmdir", lambda: os.rmdir("d2"))
    r.run("pathmax.new.listing-empty", lambda: os.listdir(".") == [] or "left: %s" % os.listdir("."))


def pathmax_lower(r, top):
    """Walk down the deep tree a lower layer has (4095 bytes below corner/deep) and change things there."""
    os.chdir(top)
    os.chdir("deep")
    rel = 0
    for i in range(DEPTH):
        name = level_name(i)
        try:
            os.chdir(name)
        except OSError as e:
            r.case("pathmax.lower.walk", False, "level %d: %s" % (i + 1, err(e)))
            return
        rel += len(name) + (1 if i else 0)
    r.case("pathmax.lower.walk", True, "%d bytes" % rel)

    def read(name="f"):
        with open(name, "rb") as f:
            data = f.read()
        return data == b"lower data\n" or "read %r" % data

    def chmod():  # metadata-only copy-up of the file and its 33 parents
        os.chmod("f", 0o640)
        m = stat.S_IMODE(os.stat("f").st_mode)
        return m == 0o640 or "mode %o" % m

    def write():  # data copy-up
        with open("f", "a") as f:
            f.write("more\n")
        with open("f", "rb") as f:
            data = f.read()
        return data == b"lower data\nmore\n" or "read %r" % data

    def rename_file():  # a lower file: copy-up (or a metadata-only one) under the new name, whiteout
        os.rename("g", "g2")
        if os.path.lexists("g"):
            return "old name still there"
        return read("g2")

    def create():
        with open("new", "w") as f:
            f.write("x")
        os.rename("new", "new2")

    def rename_dir():  # same parent, new name: overlayfs stores a relative redirect (the new name)
        os.rename("sub", "sub2")
        if os.path.lexists("sub"):
            return "old name still there"

    def move_dir():  # into the parent: the redirect is the whole lower path; EXDEV lets mv copy instead
        try:
            os.rename("subm", os.path.join("..", "subm_moved"))
        except OSError as e:
            if e.errno == errno.EXDEV:
                return (True, "EXDEV")
            raise
        if os.listdir(os.path.join("..", "subm_moved")) != ["child"]:
            return "moved dir lists %s" % os.listdir(os.path.join("..", "subm_moved"))
        os.unlink(os.path.join("..", "subm_moved", "child"))
        os.rmdir(os.path.join("..", "subm_moved"))

    def cleanup():
        for name in ("f", "g", "g2", "h", "new2"):
            if os.path.lexists(name):
                os.unlink(name)
        for name in ("sub", "sub2", "subr"):
            if os.path.lexists(name):
                os.rmdir(name)
        if os.path.lexists("subm"):
            os.unlink(os.path.join("subm", "child"))
            os.rmdir("subm")
        left = os.listdir(".")
        return left == [] or "left: %s" % left

    r.run("pathmax.lower.read", read)
    r.run("pathmax.lower.chmod", chmod)
    r.run("pathmax.lower.write", write)
    r.run("pathmax.lower.rename-file", rename_file)
    r.run("pathmax.lower.unlink", lambda: os.unlink("h"))
    r.run("pathmax.lower.create-rename", create)
    r.run("pathmax.lower.rename-dir", rename_dir)
    r.run("pathmax.lower.move-dir-up", move_dir)
    r.run("pathmax.lower.rmdir", lambda: os.rmdir("subr"))
    r.run("pathmax.lower.remove-all", cleanup)


def longname_new(r, top):
    os.chdir(top)
    os.mkdir("ln")
    os.chdir("ln")
    for n in LONG_LENS:
        def rename_file(n=n):
            with open("f%d" % n, "w") as f:
                f.write("x")
            name = long_name("f", n)
            os.rename("f%d" % n, name)
            if not os.path.isfile(name):
                return "not there after rename"
            os.rename(name, "f%d" % n)
            os.unlink("f%d" % n)

        def rename_dir(n=n):
            os.mkdir("d%d" % n)
            name = long_name("d", n)
            os.rename("d%d" % n, name)
            if not os.path.isdir(name):
                return "not there after rename"
            os.rename(name, "d%d" % n)
            os.rmdir("d%d" % n)

        def create_unlink(n=n):
            name = long_name("c", n)
            with open(name, "w") as f:
                f.write("x")
            os.unlink(name)

        r.run("longname.new.rename-file.%d" % n, rename_file)
        r.run("longname.new.rename-dir.%d" % n, rename_dir)
        r.run("longname.new.create-unlink.%d" % n, create_unlink)


def longname_lower(r, top):
    os.chdir(top)
    for n in LONG_LENS:
        def rename_file(n=n):
            name = long_name("F", n)
            os.rename("lf%d" % n, name)
            with open(name) as f:
                data = f.read()
            if data != "lower file %d\n" % n:
                return "read %r" % data
            if os.path.lexists("lf%d" % n):
                return "old name still there"
            os.unlink(name)  # a lower file's data under a long name: the unlink needs no whiteout here

        def rename_dir(n=n):
            name = long_name("D", n)
            os.rename("ld%d" % n, name)
            if os.listdir(name) != ["child"]:
                return "listing %s" % os.listdir(name)
            os.rename(name, "ld%d" % n)
            if os.listdir("ld%d" % n) != ["child"]:
                return "listing after renaming back %s" % os.listdir("ld%d" % n)

        def unlink(n=n):  # a whiteout of a long name
            os.unlink(long_name("W", n))
            return not os.path.lexists(long_name("W", n)) or "still there"

        def rmdir(n=n):
            os.rmdir(long_name("V", n))
            return not os.path.lexists(long_name("V", n)) or "still there"

        r.run("longname.lower.rename-file.%d" % n, rename_file)
        r.run("longname.lower.rename-dir.%d" % n, rename_dir)
        r.run("longname.lower.unlink.%d" % n, unlink)
        r.run("longname.lower.rmdir.%d" % n, rmdir)


def unlinked(r, top, kind):
    """kind: new (made here), lower (a lower file opened read-write), lower-ro (opened read-only)."""
    os.chdir(top)
    lower = kind != "new"
    name = "ofile_ro" if kind == "lower-ro" else "ofile"
    if not lower:
        os.mkdir("un")
        os.chdir("un")
        with open("ofile", "w") as f:
            f.write("upper open file\n")
        os.mkdir("odir")
    fd = os.open(name, os.O_RDONLY if kind == "lower-ro" else os.O_RDWR)
    try:
        r.run("unlinked.%s.unlink" % kind, lambda: os.unlink(name))

        def nlink():
            n = os.fstat(fd).st_nlink
            return n == 0 or "st_nlink %d" % n

        def fchmod():
            os.fchmod(fd, 0o600)
            m = stat.S_IMODE(os.fstat(fd).st_mode)
            return m == 0o600 or "mode %o" % m

        def fchown():
            os.fchown(fd, *OWNER)
            st = os.fstat(fd)
            return (st.st_uid, st.st_gid) == OWNER or "owner %d:%d" % (st.st_uid, st.st_gid)

        def futimens():
            os.utime(fd, ns=(1_000_000_000_123, 2_000_000_000_456))
            st = os.fstat(fd)
            got = (st.st_atime_ns, st.st_mtime_ns)
            return got == (1_000_000_000_123, 2_000_000_000_456) or "times %s" % (got,)

        def read_write():
            if kind == "lower-ro":
                data = os.pread(fd, 100, 0)
                return data == b"lower open file\n" or "read %r" % data
            os.pwrite(fd, b"X", 0)
            data = os.pread(fd, 100, 0)
            return data[:1] == b"X" or "read %r" % data

        def gone():
            return not os.path.lexists(name) or "the unlinked name is back"

        r.run("unlinked.%s.fstat-nlink0" % kind, nlink)
        r.run("unlinked.%s.fchmod" % kind, fchmod)
        r.run("unlinked.%s.fchown" % kind, fchown)
        r.run("unlinked.%s.futimens" % kind, futimens)
        r.run("unlinked.%s.%s" % (kind, "read" if kind == "lower-ro" else "read-write"), read_write)
        r.run("unlinked.%s.name-stays-gone" % kind, gone)
    finally:
        os.close(fd)
    r.run("unlinked.%s.name-gone-after-close" % kind, lambda: not os.path.lexists(name) or "the name is back")
    if kind == "lower-ro":
        return

    dfd = os.open("odir", os.O_RDONLY | os.O_DIRECTORY)
    try:
        r.run("unlinked.%s.rmdir-open-dir" % kind, lambda: os.rmdir("odir"))

        def dstat():
            st = os.fstat(dfd)
            return stat.S_ISDIR(st.st_mode) or "mode %o" % st.st_mode

        r.run("unlinked.%s.fstat-removed-dir" % kind, dstat)
        r.run("unlinked.%s.fchmod-removed-dir" % kind, lambda: os.fchmod(dfd, 0o700))
    finally:
        os.close(dfd)


def unlinked_new(r, top):
    unlinked(r, top, "new")


def unlinked_lower(r, top):
    unlinked(r, top, "lower")


def unlinked_lower_ro(r, top):
    unlinked(r, top, "lower-ro")


def run(top, which):
    top = os.path.abspath(top)
    r = Report()
    if which == "new":
        steps = [pathmax_new, longname_new, unlinked_new]
    else:
        steps = [pathmax_lower, longname_lower, unlinked_lower, unlinked_lower_ro]
    for step in steps:
        try:
            step(r, top)
        except OSError as e:  # a fixture step failed: the cases after it in this step did not run
            r.case("setup.%s" % step.__name__, False, err(e))
        finally:
            os.chdir("/")
    return 1 if r.failed else 0


def main():
    args = sys.argv[1:]
    if args[:1] == ["lower"] and len(args) == 2:
        make_lower(args[1])
        return 0
    if args[:1] == ["run"] and len(args) == 3 and args[2] in ("new", "lower"):
        return run(args[1], args[2])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main())
