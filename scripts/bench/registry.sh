#!/usr/bin/env bash
# Registry benchmark (issue 7, "Performance"): `strata push` / `strata pull` of the Debian image to and
# from Debian's docker-registry on 127.0.0.1, next to `skopeo copy` of the same image, in one run;
# prints a Markdown table.
#
#   scripts/bench/registry.sh [TAR]
#   scripts/bench/registry.sh --image ARCHIVE
#
#   TAR        rootfs tar imported as the image (default /var/cache/strata-ci/debian-bookworm-minbase.tar)
#   ARCHIVE    instead, an image archive (`strata save` output, e.g. the 3-layer ~1.3 GiB union
#              benchmark image, see scripts/bench/archive.sh), loaded with all its layers
#   STRATA     strata binary (default target/release/strata; build it with
#              `cargo build --release -p strata`; a debug build measures the wrong thing)
#   BENCH_DIR  where the work dir is made (default /var/tmp); removed at exit
#   RUNS       timed runs per case (default 3; the table shows the median)
#
# Each run uses fresh registries (one per tool, so neither finds the other's blobs) and fresh stores:
#   strata push            store → registry: compress (parallel deterministic gzip), upload, manifest
#   strata push (again)    the same push once more: HEAD finds every blob ("Layer already exists")
#   skopeo push            skopeo copy docker-archive:(strata save of the image) → docker:// (pgzip)
#   strata pull            registry → a fresh store (verify, decompress, file-level dedup, index)
#   skopeo pull → dir      skopeo copy docker:// → dir: (download and verify only: less work than strata)
#   skopeo pull → dir (decompressed)  the same with --dest-decompress (writes the plain layer tar)
# No timing is asserted; the script exits 1 when a command fails or a pulled image ID differs.
set -euo pipefail

source "$(dirname "$0")/image-args.sh"
REGISTRY=${REGISTRY:-/usr/bin/docker-registry}
[[ -x $REGISTRY ]] || { echo "error: $REGISTRY missing (apt-get install docker-registry)" >&2; exit 1; }

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/strata-registry-bench.XXXXXX")
PIDS=()
cleanup() {
    # start_registry runs in a command substitution (a subshell): its PIDs come from files.
    for f in "$WORK"/*/registry.pid; do
        [[ -f $f ]] && PIDS+=("$(cat "$f")")
    done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_registry NAME → prints host:port; the registry runs until exit.
start_registry() {
    local dir=$WORK/$1 port
    port=$(free_port)
    mkdir -p "$dir"
    cat >"$dir/config.yml" <<CFG
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$port
CFG
    "$REGISTRY" serve "$dir/config.yml" >"$dir/log" 2>&1 &
    echo $! >"$dir/registry.pid"
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "127.0.0.1:$port"
}

S() { "$STRATA" -q "$@" >/dev/null; }

SRC=$WORK/src
if [[ -n $IMAGE ]]; then
    S --root "$SRC" load -i "$IMAGE"
    read -r REF LAYERS < <("$STRATA" --root "$SRC" images --format json | python3 -c 'import json,sys; i=json.load(sys.stdin)[0]; print(i["repo_tags"][0], i["layers"])')
    S --root "$SRC" tag "$REF" bench/debian:latest
else
    S --root "$SRC" import "$TAR" bench/debian:latest
    LAYERS=1
fi
"$STRATA" --root "$SRC" save -o "$WORK/image.tar" bench/debian:latest
IMAGE_ID=$("$STRATA" --root "$SRC" --format json inspect bench/debian:latest | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print(d.get("id") or d.get("Id"))')
TAR_MB=$(du -m "$TAR" | cut -f1)

declare -a T_PUSH T_PUSH2 T_SKPUSH T_PULL T_SKPULL T_SKPULLD
for run in $(seq "$RUNS"); do
    REG_A=$(start_registry "reg-a-$run")
    REG_B=$(start_registry "reg-b-$run")
    # strata push: a fresh store copy each run so no blob digest is recorded yet (cold compress).
    cp -a "$SRC" "$WORK/push-store$run"
    S --root "$WORK/push-store$run" tag bench/debian:latest "$REG_A/bench/debian:1"
    sync
    t0=$(now); S --root "$WORK/push-store$run" push "$REG_A/bench/debian:1"; t1=$(now)
    T_PUSH+=("$(echo "$t1 - $t0" | bc)")
    t0=$(now); S --root "$WORK/push-store$run" push "$REG_A/bench/debian:1"; t1=$(now)
    T_PUSH2+=("$(echo "$t1 - $t0" | bc)")
    t0=$(now)
    skopeo copy -q --dest-tls-verify=false "docker-archive:$WORK/image.tar" "docker://$REG_B/bench/debian:1" >/dev/null
    t1=$(now)
    T_SKPUSH+=("$(echo "$t1 - $t0" | bc)")
    # New directories per run, removed only at exit: ext4 without a journal (this machine)
    # skips inodes freed in the last seconds, so a store made right after removing another
    # pays for the removal (skopeo writes one file per layer and would not).
    rm -rf "$WORK/skopeo-dir"
    sync
    t0=$(now); S --root "$WORK/pull-store$run" pull "$REG_A/bench/debian:1"; t1=$(now)
    T_PULL+=("$(echo "$t1 - $t0" | bc)")
    got=$("$STRATA" --root "$WORK/pull-store$run" --format json inspect "$REG_A/bench/debian:1" | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d[0] if isinstance(d,list) else d; print(d.get("id") or d.get("Id"))')
    [[ $got == "$IMAGE_ID" ]] || { echo "error: pulled image ID $got != $IMAGE_ID" >&2; exit 1; }
    t0=$(now)
    skopeo copy -q --src-tls-verify=false "docker://$REG_A/bench/debian:1" "dir:$WORK/skopeo-dir" >/dev/null
    t1=$(now)
    T_SKPULL+=("$(echo "$t1 - $t0" | bc)")
    rm -rf "$WORK/skopeo-dir"
    t0=$(now)
    skopeo copy -q --src-tls-verify=false --dest-decompress "docker://$REG_A/bench/debian:1" "dir:$WORK/skopeo-dir" >/dev/null
    t1=$(now)
    T_SKPULLD+=("$(echo "$t1 - $t0" | bc)")
    rm -rf "$WORK/skopeo-dir"
done

BLOB_MB=$(du -m "$WORK/reg-a-1/data" | tail -1 | cut -f1)
p=$(median "${T_PUSH[@]}"); p2=$(median "${T_PUSH2[@]}"); sp=$(median "${T_SKPUSH[@]}")
l=$(median "${T_PULL[@]}"); sl=$(median "${T_SKPULL[@]}"); sld=$(median "${T_SKPULLD[@]}")
ratio() { echo "scale=2; $2 / $1" | bc; }
echo
echo "Image: $TAR ($TAR_MB MiB uncompressed, $LAYERS layer(s); ~$BLOB_MB MiB in the registry). $RUNS runs, median; $(nproc) cores."
echo
echo "| case | strata (s) | skopeo (s) | skopeo / strata |"
echo "|---|---:|---:|---:|"
echo "| push (cold: compress + upload) | $p | $sp | $(ratio "$p" "$sp")× |"
echo "| push again (all blobs exist) | $p2 | — | — |"
echo "| pull (strata: into the store; skopeo: to dir:) | $l | $sl | $(ratio "$l" "$sl")× |"
echo "| pull (skopeo: to dir:, --dest-decompress) | $l | $sld | $(ratio "$l" "$sld")× |"
