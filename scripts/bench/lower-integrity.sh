#!/usr/bin/env bash
# Does a write through the union ever reach a lower layer? One case that tells FUSE unions apart:
# a lower file is open for reading while another open appends to it. The append must land in a
# copy in the upper dir; the lower file must stay as it was, and the reader should see the new
# data (kernel overlayfs does, since 4.19).
#
#   scripts/bench/lower-integrity.sh        as root (mounts overlayfs; FUSE passthrough needs root)
#
# Runs kernel overlayfs, Debian's fuse-overlayfs, fuse-overlayfs 2.0 when built (see union.sh) and
# strata-overlayfs over a scratch lower dir, and prints one line each. Exit status 1 when strata
# changed its lower.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
readonly ROOT
STRATA_OVERLAYFS=${STRATA_OVERLAYFS:-$ROOT/target/release/strata-overlayfs}
readonly FOR_RS=/var/cache/strata-ci/fuse-overlayfs-rs/bin/fuse-overlayfs

[[ $EUID == 0 ]] || { echo "lower-integrity.sh: run as root" >&2; exit 1; }
[[ -x $STRATA_OVERLAYFS ]] || (cd "$ROOT" && cargo build --release -p strata --locked)

scratch=$(mktemp -d /var/tmp/lower-integrity.XXXXXX)
trap 'mountpoint -q "$scratch/mnt" && { fusermount3 -u "$scratch/mnt" 2>/dev/null || umount -l "$scratch/mnt"; }; rm -rf "$scratch"' EXIT

# name, then the command (the mount is live when it returns)
run_case() {
    local name=$1; shift
    rm -rf "${scratch:?}"/{lower,upper,work}
    mkdir -p "$scratch"/{lower,upper,work,mnt}
    printf 'original\n' >"$scratch/lower/f"
    local o="lowerdir=$scratch/lower,upperdir=$scratch/upper,workdir=$scratch/work"
    if ! "$@" "$o" "$scratch/mnt"; then
        printf '%-24s could not mount\n' "$name"; return 0
    fi
    for _ in $(seq 50); do mountpoint -q "$scratch/mnt" && break; sleep 0.1; done
    local seen
    seen=$(python3 - "$scratch/mnt/f" <<'EOF'
import os, sys
p = sys.argv[1]
r = os.open(p, os.O_RDONLY)
os.read(r, 4)
try:
    w = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(w, b"appended\n")
    os.close(w)
    opened = "ok"
except OSError as e:
    opened = "failed (%s)" % e.strerror
os.lseek(r, 0, 0)
sees = os.read(r, 1 << 16).endswith(b"appended\n")
print("write open %s; reader sees the append: %s" % (opened, "yes" if sees else "no"))
EOF
    )
    fusermount3 -u "$scratch/mnt" 2>/dev/null || umount "$scratch/mnt"
    local lower=unchanged
    [[ $(cat "$scratch/lower/f") == original ]] || lower="CHANGED: $(tr '\n' '|' <"$scratch/lower/f")"
    printf '%-24s %s; lower file %s\n' "$name" "$seen" "$lower"
    [[ $name != strata-overlayfs || $lower == unchanged ]] || status=1
}

status=0
run_case "kernel overlayfs" mount -t overlay overlay -o
command -v fuse-overlayfs >/dev/null && run_case "fuse-overlayfs $(fuse-overlayfs --version 2>&1 | awk '/^fuse-overlayfs/ {print $NF; exit}')" fuse-overlayfs -o
# 2.0 stays in the foreground: start it in the background and let run_case wait for the mount
for_bg() { "$FOR_RS" -o "$1" "$2" & }
[[ -x $FOR_RS ]] && run_case "fuse-overlayfs 2.0 (Rust)" for_bg
run_case strata-overlayfs "$STRATA_OVERLAYFS" -o
exit $status
