#!/usr/bin/env bash
# Union benchmark (issue: the union mount, "Performance"): strata side by side with kernel overlayfs
# and fuse-overlayfs (Debian's C 1.10 and, when built, the Rust 2.0 from the crates registry) over the
# same layered Debian image, in one run; prints medians and ratios (scripts/bench/unionbench.sh does
# the work; this script wires the targets in).
#
#   scripts/bench/union.sh [-n REPS] [-w W1,W3,...]      as root
#
# Targets:
#   native, overlay                  the merged tree on disk; kernel overlayfs
#   fuse-overlayfs                   Debian's fuse-overlayfs (C)
#   custom:fuse-overlayfs-rs         fuse-overlayfs 2.0 (Rust), `cargo install fuse-overlayfs`, cached
#                                    under /var/cache/strata-ci (skipped when not built)
#   custom:strata-dir                strata-overlayfs -o lowerdir=… (the fuse-overlayfs drop-in; the same
#                                    engine as `strata mount --lower`: plain layer directories)
#   custom:strata-store              strata mount of the same layers imported into a strata store
#                                    (entries from the index, contents from the store's objects)
#   custom:strata-dir-before         with STRATA_BEFORE=DIR (a directory holding another build's
#                                    strata-overlayfs, e.g. of the last commit): before/after in one run
# Environment: STRATA (binary, default target/release/strata), UB_ROOT (default /var/tmp/unionbench).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
readonly ROOT
readonly UB=$ROOT/scripts/bench/unionbench.sh
export UB_ROOT=${UB_ROOT:-/var/tmp/unionbench}
STRATA=${STRATA:-$ROOT/target/release/strata}
readonly FOR_RS=/var/cache/strata-ci/fuse-overlayfs-rs/bin/fuse-overlayfs
readonly STORE=$UB_ROOT/strata-store

log() { printf 'union.sh: %s\n' "$*" >&2; }

[[ $EUID == 0 ]] || { log "run as root (it mounts kernel overlayfs and drops caches)"; exit 1; }
command -v fio >/dev/null || apt-get install -y --no-install-recommends fio fuse-overlayfs >/dev/null
[[ -x $STRATA ]] || (cd "$ROOT" && cargo build --release -p strata --locked)

"$UB" prepare

targets=(native overlay fuse-overlayfs custom:strata-dir)
# strata-dir runs the fuse-overlayfs drop-in (strata-overlayfs, the same engine as
# `strata mount --lower`), so the figures also answer the drop-in's benchmark.
export MOUNT_CMD_strata_dir="${STRATA}-overlayfs -f -o lowerdir={LOWER},upperdir={UPPER},workdir={WORK} {MNT}"
export UMOUNT_CMD_strata_dir="fusermount3 -u {MNT}"

# The same layers as a strata image (once): overlay dirs -> docker-archive -> strata load.
if ! "$STRATA" --root "$STORE" inspect unionbench:layers >/dev/null 2>&1; then
    log "importing the benchmark layers into $STORE"
    archive=$UB_ROOT/layers.docker.tar
    python3 "$ROOT/scripts/bench/layers-to-archive.py" "$archive" unionbench:layers \
        "$UB_ROOT/layers/1-base" "$UB_ROOT/layers/2-pkgs" "$UB_ROOT/layers/3-synth"
    "$STRATA" --root "$STORE" load -i "$archive" || log "strata load failed: strata-store target skipped"
    rm -f "$archive"
fi
if "$STRATA" --root "$STORE" inspect unionbench:layers >/dev/null 2>&1; then
    targets+=(custom:strata-store)
    export MOUNT_CMD_strata_store="$STRATA --root $STORE mount unionbench:layers --upper {UPPER} --work {WORK} {MNT} --foreground"
    export UMOUNT_CMD_strata_store="fusermount3 -u {MNT}"
    # strata-store reads the store's objects, not the layer dirs: warm those (all of them, for
    # the data workloads) where the bench warms the layer files, so it starts as the others.
    export WARM_CMD_strata_store='if [ "$1" = data ]; then find '"$STORE"'/objects -type f -print0 | xargs -0r cat; fi >/dev/null 2>&1; cat '"$STORE"'/store.db >/dev/null 2>&1; true'
fi
if [[ -n ${STRATA_BEFORE:-} ]]; then
    [[ -x $STRATA_BEFORE/strata-overlayfs ]] || { log "no strata-overlayfs in STRATA_BEFORE=$STRATA_BEFORE"; exit 1; }
    targets+=(custom:strata-dir-before)
    export MOUNT_CMD_strata_dir_before="$STRATA_BEFORE/strata-overlayfs -f -o lowerdir={LOWER},upperdir={UPPER},workdir={WORK} {MNT}"
    export UMOUNT_CMD_strata_dir_before="fusermount3 -u {MNT}"
fi
if [[ -x $FOR_RS ]]; then
    targets+=(custom:fuse-overlayfs-rs)
    export MOUNT_CMD_fuse_overlayfs_rs="$FOR_RS -f -o lowerdir={LOWER},upperdir={UPPER},workdir={WORK} {MNT}"
else
    log "fuse-overlayfs 2.0 not built (cargo install --locked fuse-overlayfs --root ${FOR_RS%/bin/*}): skipped"
fi

"$UB" run "$@" "${targets[@]}"
