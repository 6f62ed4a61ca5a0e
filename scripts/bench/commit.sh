#!/usr/bin/env bash
# Commit benchmark (issue 4, "Performance"): `strata commit` of a container that changed N MiB over
# the Debian image, next to the floor (`tar -c | sha256sum` of the changed files) and to the cost of
# the whole image (`strata import` of its tar): commit must grow with the change, not the image.
#
#   scripts/bench/commit.sh [TAR]
#
#   TAR        the rootfs tar imported as the image (default: the Debian bookworm minbase rootfs from
#              scripts/fixtures/debian-rootfs.sh, /var/cache/strata-ci/debian-bookworm-minbase.tar)
#   STRATA     strata binary (default: target/release/strata, else target/debug/strata with a warning)
#   SIZES      changed MiB per case (default "0 16 64 256"); each case writes SIZE files of 1 MiB
#              (random bytes, so nothing dedups) into a fresh container through its union mount
#   BENCH_DIR  where the work dir is made (default /var/tmp); removed at exit
#
# Per case: `strata diff` (must list the files), `strata commit` (first commit: every object is
# new), `strata commit` again (same layer: objects dedup), and the floor, `tar -C upper -cf - . |
# sha256sum`, which reads and hashes the same bytes once and writes nothing. Prints a Markdown table.
# No timing is asserted; exits 1 when a command fails or a re-commit gives another DiffID.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TAR=${1:-/var/cache/strata-ci/debian-bookworm-minbase.tar}
SIZES=${SIZES:-0 16 64 256}
STRATA=${STRATA:-$ROOT/target/release/strata}
if [[ ! -x $STRATA ]]; then
    STRATA=$ROOT/target/debug/strata
    echo "warning: no release build; using $STRATA (run 'cargo build --release -p strata')" >&2
fi
[[ -f $TAR ]] || { echo "error: $TAR missing; build it with scripts/fixtures/debian-rootfs.sh" >&2; exit 1; }
command -v fusermount3 >/dev/null || { echo "error: fusermount3 missing (apt-get install fuse3)" >&2; exit 1; }

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/strata-commit-bench.XXXXXX")
cleanup() {
    if mountpoint -q "$WORK/mnt" 2>/dev/null; then fusermount3 -u "$WORK/mnt" || fusermount3 -u -z "$WORK/mnt"; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
S="$STRATA --root $WORK/store -q"

t0=$(now)
$S import "$TAR" base:1 >/dev/null
t_import=$(secs "$t0" "$(now)")
IMG_MIB=$(echo "$(stat -c %s "$TAR") / 1048576" | bc -l)
ENTRIES=$(tar -tf "$TAR" | wc -l)

printf '| changed MiB | files | diff s | commit s | commit again s | floor s (tar -c \\| sha256sum) | commit / floor | layer MiB |\n'
printf '|---:|---:|---:|---:|---:|---:|---:|---:|\n'
mkdir -p "$WORK/mnt"
for size in $SIZES; do
    name=c$size
    $S container create --name "$name" base:1 >/dev/null
    $S container mount "$name" "$WORK/mnt"
    mkdir -p "$WORK/mnt/bench"
    for i in $(seq 1 "$size"); do
        head -c 1048576 /dev/urandom >"$WORK/mnt/bench/f$i"
    done
    echo "$size" >"$WORK/mnt/etc/bench-marker"   # a change even for size 0
    $S umount "$WORK/mnt"
    upper=""
    for u in "$WORK"/store/containers/*/upper; do
        if [[ -e $u/etc/bench-marker && $(cat "$u/etc/bench-marker") == "$size" ]]; then upper=$u; fi
    done
    [[ -n $upper ]] || { echo "error: the upper dir of $name is not found" >&2; exit 1; }
    sync
    t0=$(now); lines=$($S diff "$name" | wc -l); t_diff=$(secs "$t0" "$(now)")
    [[ $lines -ge $((size + 2)) ]] || { echo "error: diff of $name lists $lines lines" >&2; exit 1; }
    t0=$(now); id1=$($STRATA --root "$WORK/store" --format json commit "$name"); t_commit=$(secs "$t0" "$(now)")
    t0=$(now); id2=$($STRATA --root "$WORK/store" --format json commit "$name"); t_again=$(secs "$t0" "$(now)")
    d1=$(echo "$id1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["diff_id"])')
    d2=$(echo "$id2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["diff_id"])')
    [[ $d1 == "$d2" ]] || { echo "error: re-commit of $name gave $d2, first $d1" >&2; exit 1; }
    layer=$(echo "$id1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"] / 1048576)')
    t0=$(now); tar -C "$upper" -cf - . | sha256sum >/dev/null; t_floor=$(secs "$t0" "$(now)")
    printf '| %s | %s | %.3f | %.3f | %.3f | %.3f | %.2f | %.1f |\n' "$size" "$size" "$t_diff" \
        "$t_commit" "$t_again" "$t_floor" "$(echo "$t_commit / $t_floor" | bc -l)" "$layer"
done
printf '\nImage: %s (%.1f MiB, %s entries); strata import of the whole image: %.3f s.\n' \
    "$(basename "$TAR")" "$IMG_MIB" "$ENTRIES" "$t_import"
