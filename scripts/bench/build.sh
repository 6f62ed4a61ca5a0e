#!/usr/bin/env bash
# Build benchmark (issue 6, "Performance"): the seed's Python-app Dockerfile (tests/e2e/build_cli.rs,
# PYTHON_APP: the Debian image, python3's .debs COPYed in and installed with dpkg, main.py) built by
# `strata build` and by `buildah bud` (vfs storage, --isolation chroot, its own --root/--runroot), in the
# same run: a cold build (empty build cache, the base image already in the store) and a fully cached
# rebuild. Prints a Markdown table. Targets: cached rebuild < 1 s and >= 5x faster than buildah's; cold
# build no slower than buildah's.
#
#   scripts/bench/build.sh
#
#   STRATA     strata binary (default: target/release/strata, else target/debug/strata with a warning)
#   COLD       cold builds per tool (default 2; each in a fresh store holding only the base image)
#   CACHED     cached rebuilds per tool (default 5)
#   BENCH_DIR  where the work dir is made (default /var/tmp); removed at exit
#
# Fixtures: /var/cache/strata-ci/debian-bookworm-minbase.tar (scripts/fixtures/debian-rootfs.sh) and
# /var/cache/strata-ci/debs-python (scripts/fixtures/build-debs.sh python). buildah gets the base image
# from a `strata save` docker-archive (`buildah pull docker-archive:…`). buildah runs with --layers, the
# mode that has a build cache (Docker's behaviour); a cold build without --layers, which commits only the
# final image, is shown too. Root only (buildah's chroot isolation and strata's RUN as root).
# Reported: the median of the runs (min and max beside it). Exits 1 when a build fails, when strata's
# rebuild is not fully cached or gives another image ID, or when the built image does not run main.py.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${STRATA_CI_CACHE:-/var/cache/strata-ci}
TAR=$CACHE/debian-bookworm-minbase.tar
DEBS=$CACHE/debs-python
COLD=${COLD:-2}
CACHED=${CACHED:-5}
STRATA=${STRATA:-$ROOT/target/release/strata}
if [[ ! -x $STRATA ]]; then
    STRATA=$ROOT/target/debug/strata
    echo "warning: no release build; using $STRATA (run 'cargo build --release -p strata')" >&2
fi
die() { echo "error: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "run as root (buildah --isolation chroot, RUN steps as root)"
[[ -f $TAR ]] || die "$TAR missing; build it with scripts/fixtures/debian-rootfs.sh"
compgen -G "$DEBS/*.deb" >/dev/null || die "$DEBS missing; run scripts/fixtures/build-debs.sh python"
command -v buildah >/dev/null || die "buildah missing (apt-get install buildah)"

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/strata-build-bench.XXXXXX")
cleanup() {
    for b in "$WORK"/bh*; do
        [[ -d $b ]] && buildah --root "$b/root" --runroot "$b/runroot" --storage-driver vfs rm --all >/dev/null 2>&1
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
# median, min, max of the numbers on stdin
stats() { sort -g | awk '{a[NR]=$1} END {m = NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2; printf "%.3f %.3f %.3f\n", m, a[1], a[NR]}'; }

# The context: the Dockerfile exactly as the e2e test has it.
CTX=$WORK/ctx
mkdir -p "$CTX/debs"
cp "$DEBS"/*.deb "$CTX/debs/"
awk '/^const PYTHON_APP: &str = r#"/{f=1; sub(/^const PYTHON_APP: &str = r#"/, ""); print; next}
     f && /^"#;/{exit} f' "$ROOT/tests/e2e/build_cli.rs" >"$CTX/Dockerfile"
grep -q '^FROM debian:bookworm' "$CTX/Dockerfile" || die "PYTHON_APP not found in tests/e2e/build_cli.rs"
printf "import sys\nprint('hello from main.py, python', sys.version_info.major)\n" >"$CTX/main.py"

# The base image once, as a docker-archive for buildah.
$STRATA --root "$WORK/seed" -q import "$TAR" debian:bookworm >/dev/null
$STRATA --root "$WORK/seed" -q save -o "$WORK/debian.tar" debian:bookworm

S() { $STRATA --root "$WORK/store$1" -q "${@:2}"; }
B() { local d=$WORK/bh$1; buildah --root "$d/root" --runroot "$d/runroot" --storage-driver vfs "${@:2}"; }
BUD=(bud --isolation chroot --pull-never)

s_cold=() b_cold=() b_cold_nolayers=() s_cached=() b_cached=()
for i in $(seq 1 "$COLD"); do
    S "$i" import "$TAR" debian:bookworm >/dev/null
    sync
    t0=$(now); id=$(S "$i" build -t python-app "$CTX" 2>"$WORK/s-cold.log") ||
        { cat "$WORK/s-cold.log" >&2; die "strata build failed"; }
    s_cold+=("$(secs "$t0" "$(now)")")
    ((i == 1)) && id1=$id
    [[ $(S "$i" run --rm python-app) == "hello from main.py, python 3" ]] || die "strata's image does not run main.py"

    B "$i" pull -q "docker-archive:$WORK/debian.tar" >/dev/null
    sync
    t0=$(now); B "$i" "${BUD[@]}" --layers -t python-app "$CTX" >"$WORK/b-cold.log" 2>&1 ||
        { cat "$WORK/b-cold.log" >&2; die "buildah bud failed"; }
    b_cold+=("$(secs "$t0" "$(now)")")

    B "n$i" pull -q "docker-archive:$WORK/debian.tar" >/dev/null
    sync
    t0=$(now); B "n$i" "${BUD[@]}" -t python-app "$CTX" >"$WORK/b-cold-n.log" 2>&1 ||
        { cat "$WORK/b-cold-n.log" >&2; die "buildah bud (no --layers) failed"; }
    b_cold_nolayers+=("$(secs "$t0" "$(now)")")
    B "n$i" rm --all >/dev/null 2>&1 || true
    rm -rf "$WORK/bhn$i"
done

for _ in $(seq 1 "$CACHED"); do
    t0=$(now); id2=$(S 1 build -t python-app "$CTX" 2>"$WORK/s-cached.log")
    s_cached+=("$(secs "$t0" "$(now)")")
    [[ $id2 == "$id1" ]] || die "the cached rebuild gave $id2, the cold build $id1"
    # Every step but FROM answered by the cache.
    [[ $(grep -c '^--> CACHED' "$WORK/s-cached.log") == $(($(grep -c '^STEP ' "$WORK/s-cached.log") - 1)) ]] ||
        die "strata's rebuild was not fully cached: $(cat "$WORK/s-cached.log")"

    t0=$(now); B 1 "${BUD[@]}" --layers -t python-app "$CTX" >"$WORK/b-cached.log" 2>&1 ||
        { cat "$WORK/b-cached.log" >&2; die "buildah bud (cached) failed"; }
    b_cached+=("$(secs "$t0" "$(now)")")
done
b_hits=$(grep -c 'Using cache' "$WORK/b-cached.log" || true)

read -r sc sc_min sc_max < <(printf '%s\n' "${s_cold[@]}" | stats)
read -r bc bc_min bc_max < <(printf '%s\n' "${b_cold[@]}" | stats)
read -r bn bn_min bn_max < <(printf '%s\n' "${b_cold_nolayers[@]}" | stats)
read -r sr sr_min sr_max < <(printf '%s\n' "${s_cached[@]}" | stats)
read -r br br_min br_max < <(printf '%s\n' "${b_cached[@]}" | stats)

printf '| build of the Python app | strata s (min–max) | buildah bud --layers s (min–max) | buildah / strata |\n'
printf '|---|---:|---:|---:|\n'
printf '| cold (%s runs) | %.2f (%.2f–%.2f) | %.2f (%.2f–%.2f) | %.2f× |\n' "$COLD" "$sc" "$sc_min" "$sc_max" \
    "$bc" "$bc_min" "$bc_max" "$(echo "$bc / $sc" | bc -l)"
printf '| fully cached rebuild (%s runs) | %.3f (%.3f–%.3f) | %.2f (%.2f–%.2f) | %.1f× |\n' "$CACHED" "$sr" \
    "$sr_min" "$sr_max" "$br" "$br_min" "$br_max" "$(echo "$br / $sr" | bc -l)"
printf '\nbuildah bud without --layers (commits only the final image, has no cache), cold: %.2f s (%.2f–%.2f).\n' \
    "$bn" "$bn_min" "$bn_max"
printf 'buildah cache hits in its last rebuild: %s lines "Using cache". strata: %s, buildah %s, %s cores, %s.\n' \
    "$b_hits" "$($STRATA --version 2>/dev/null || echo strata)" "$(buildah --version | awk '{print $3}')" \
    "$(nproc)" "$(uname -r)"
# Targets
ok() { if (($(echo "$1" | bc -l))); then echo met; else echo "NOT met"; fi; }
printf 'Targets: cached rebuild < 1 s: %s; >= 5x faster than buildah'"'"'s: %s; cold no slower than buildah'"'"'s (--layers): %s.\n' \
    "$(ok "$sr < 1")" "$(ok "$br >= 5 * $sr")" "$(ok "$sc <= $bc")"
