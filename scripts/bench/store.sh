#!/usr/bin/env bash
# Store benchmark (issue: foundation, "Performance"): how fast `strata import` ingests a real rootfs tar,
# next to the plain ways of unpacking the same tar, plus dedup on a second import and layer export speed.
#
#   scripts/bench/store.sh [--no-strata] [TAR]
#
#   TAR           the layer tar (default: the Debian bookworm minbase rootfs from
#                 scripts/fixtures/debian-rootfs.sh, ~200 MiB, ~6.7k entries; building it needs root)
#   --no-strata   time the baselines only (while strata cannot import yet)
#   STRATA        strata binary (default: target/release/strata; build it with
#                 `cargo build --release -p strata`: debug sha2 and tar code would measure the wrong thing)
#   BENCH_DIR     where the work dir is made: put it on the filesystem to measure (default /var/tmp); the
#                 work dir is removed at exit
#   RUNS          timed runs per case (default 3; the table shows the median)
#   BENCH_TIMER   hyperfine (default when installed) or time (bash's `time`)
#
# Cases, each timed RUNS times after one untimed warm-up (so the input tar is in the page cache for all):
#   (a) tar -xf TAR into a fresh dir; and tar -xf followed by sync, since strata's import is durable (fsync)
#       and tar's is not;
#   (b) umoci unpack --rootless of the same layer in an OCI layout (umoci raw add-layer stores it gzipped,
#       and unpack also writes an mtree manifest: that is umoci's real cost of unpacking this layer);
#   (c) strata import TAR bench:1 into a fresh store;
#   (d) a second import of the same tar as bench:2 into that store: growth of objects/ in % (dedup; target
#       < 1%);
#   (e) strata layer export of bench:1's layer: time, and its sha256 must equal the input tar's.
# Prints a Markdown table (median seconds, MiB/s of tar input, ratio to tar -xf) and the machine it ran on.
# Exits 1 if the exported layer differs from the input or a command fails. No timing is asserted.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
readonly ROOT
readonly RUNS=${RUNS:-3}
# The import target of issue 2: import wall time at most this many times that of tar -xf.
readonly IMPORT_TARGET_RATIO=1.25
# Dedup target of issue 2: a second import of the same rootfs adds less than this % to objects/.
readonly DEDUP_TARGET_PCT=1

STRATA=${STRATA:-$ROOT/target/release/strata}
WITH_STRATA=1
TAR=""
WORK=""
ROWS=() # "name<US>seconds<US>note" in table order
# Field separator of ROWS: not a tab, which `read` would treat as whitespace and merge around an empty field.
readonly US=$'\x1f'
TAR_XF_SECS=""
STATUS=0

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; }

parse_args() {
    while (($#)); do
        case $1 in
            --no-strata) WITH_STRATA=0 ;;
            -h | --help)
                usage
                exit 0
                ;;
            -*) die "unknown option $1 (see --help)" ;;
            *) TAR=$1 ;;
        esac
        shift
    done
    if [[ -z $TAR ]]; then
        TAR=$("$ROOT/scripts/fixtures/debian-rootfs.sh")
    fi
    [[ -f $TAR ]] || die "no such tar: $TAR"
    TAR=$(realpath "$TAR")
    if ((WITH_STRATA)) && [[ ! -x $STRATA ]]; then
        die "no strata binary at $STRATA: cargo build --release -p strata, set STRATA=..., or pass --no-strata"
    fi
}

# --- timing ---------------------------------------------------------------------------------------------

# median SECONDS... : the middle value (the mean of the two middle ones for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { m = int((NR + 1) / 2); print (NR % 2) ? v[m] : (v[m] + v[m + 1]) / 2 }'
}

use_hyperfine() { [[ ${BENCH_TIMER:-hyperfine} == hyperfine ]] && command -v hyperfine >/dev/null; }

# measure PREPARE CMD: median wall seconds of CMD over RUNS runs after one warm-up, each run preceded by
# PREPARE and a sync (untimed), so that no run pays for the writeback of the one before. Both are bash
# snippets. hyperfine when installed (it corrects for shell spawn time),
# else bash's `time`.
measure() {
    local prepare="$1 && sync" cmd=$2
    if use_hyperfine; then
        local json=$WORK/hyperfine.json
        hyperfine --shell=bash --style=none --warmup 1 --runs "$RUNS" --prepare "$prepare" \
            --export-json "$json" "$cmd" >&2
        python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["results"][0]["median"])' "$json"
        return
    fi
    local i secs times=() TIMEFORMAT=%R
    for ((i = 0; i <= RUNS; i++)); do
        bash -c "$prepare"
        # `time` reports on the shell's stderr; the command's own output goes to /dev/null.
        secs=$({ time bash -c "$cmd" >/dev/null 2>&1; } 2>&1) || die "failed: $cmd"
        ((i == 0)) || times+=("$secs") # run 0 is the warm-up
    done
    median "${times[@]}"
}

# add_row NAME SECONDS [NOTE]
add_row() { ROWS+=("$1$US$2$US${3:-}"); }

# time_row NAME PREPARE CMD NOTE: measure CMD and add its row. (The assignment lets a failed measurement
# stop the script; inside another command's arguments its exit status would be lost.)
time_row() {
    local secs
    secs=$(measure "$2" "$3")
    add_row "$1" "$secs" "$4"
}

# Quote one word for the bash snippets given to measure.
q() { printf '%q' "$1"; }

# --- cases ----------------------------------------------------------------------------------------------

bench_tar() {
    local dir=$WORK/tar-x
    log "(a) tar -xf"
    TAR_XF_SECS=$(measure "rm -rf $(q "$dir") && mkdir $(q "$dir")" "tar -xf $(q "$TAR") -C $(q "$dir")")
    add_row "tar -xf" "$TAR_XF_SECS" "not durable: data may still be in the page cache"
    time_row "tar -xf && sync" "rm -rf $(q "$dir") && mkdir $(q "$dir") && sync" \
        "tar -xf $(q "$TAR") -C $(q "$dir") && sync" "durable; comparable to an import that fsyncs"
    # Baseline for export: writing the same tar back out from a tree.
    time_row "tar -cf (from the extracted tree)" "rm -f $(q "$WORK/tar-c.tar")" \
        "tar --numeric-owner --xattrs --sort=name -C $(q "$dir") -cf $(q "$WORK/tar-c.tar") ." \
        "baseline for layer export"
    rm -rf "$dir" "$WORK/tar-c.tar"
}

bench_umoci() {
    if ! command -v umoci >/dev/null; then
        add_row "umoci unpack --rootless" "" "skipped: umoci not installed (apt-get install umoci)"
        return
    fi
    local layout=$WORK/oci bundle=$WORK/bundle
    log "(b) umoci: building the OCI layout"
    umoci init --layout "$layout"
    umoci new --image "$layout:t"
    umoci raw add-layer --image "$layout:t" "$TAR"
    log "(b) umoci unpack"
    time_row "umoci unpack --rootless" "rm -rf $(q "$bundle")" \
        "umoci unpack --rootless --image $(q "$layout:t") $(q "$bundle")" \
        "gzip layer as umoci stores it; includes its mtree manifest"
    rm -rf "$layout" "$bundle"
}

objects_bytes() { du -sb "$1/objects" | cut -f1; }

bench_strata() {
    local store=$WORK/store out=$WORK/export.tar before after diff_id want got
    log "(c) strata import"
    time_row "strata import" "rm -rf $(q "$store")" \
        "$(q "$STRATA") -q --root $(q "$store") import $(q "$TAR") bench:1" "fresh store"

    log "(d) strata import of the same tar again"
    before=$(objects_bytes "$store")
    local TIMEFORMAT=%R secs
    secs=$({ time "$STRATA" -q --root "$store" import "$TAR" bench:2 >/dev/null 2>&1; } 2>&1) ||
        die "second import failed: $STRATA --root $store import $TAR bench:2"
    after=$(objects_bytes "$store")
    local growth
    growth=$(awk -v b="$before" -v a="$after" 'BEGIN { printf "%.3f", b ? (a - b) * 100 / b : 0 }')
    add_row "strata import, same tar again (1 run)" "$secs" \
        "objects/ grew ${growth}% (${before} → ${after} B; target < ${DEDUP_TARGET_PCT}%)"

    log "(e) strata layer export"
    diff_id=$("$STRATA" --root "$store" --format json inspect bench:1 |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["rootfs"]["diff_ids"][0])')
    time_row "strata layer export" "rm -f $(q "$out")" \
        "$(q "$STRATA") -q --root $(q "$store") layer export $(q "$diff_id") -o $(q "$out")" "$diff_id"
    want=$(sha256sum "$TAR" | cut -d' ' -f1)
    got=$(sha256sum "$out" | cut -d' ' -f1)
    if [[ $want == "$got" ]]; then
        log "(e) export is byte-identical to the input (sha256:$want)"
    else
        log "(e) MISMATCH: exported layer sha256:$got, input tar sha256:$want"
        STATUS=1
    fi
    rm -rf "$store" "$out"
}

# --- report ---------------------------------------------------------------------------------------------

print_machine() {
    local cpu fs
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    fs=$(df -T "$WORK" | awk 'NR == 2 { print $2 " (" $1 ")" }')
    printf 'Machine: %s, %s cores, %s GiB RAM, kernel %s; work dir on %s.\n' "$cpu" "$(nproc)" \
        "$(awk '/^MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)" "$fs"
    printf 'Input: %s, %s MiB, %s entries, sha256:%s. Median of %s runs after 1 warm-up (%s).\n\n' \
        "$TAR" "$(awk -v b="$(stat -c %s "$TAR")" 'BEGIN { printf "%.1f", b / 1048576 }')" \
        "$(tar -tf "$TAR" | wc -l)" "$(sha256sum "$TAR" | cut -d' ' -f1)" "$RUNS" \
        "$(use_hyperfine && echo hyperfine || echo 'bash time')"
}

print_table() {
    local mib name secs note rate ratio
    mib=$(awk -v b="$(stat -c %s "$TAR")" 'BEGIN { print b / 1048576 }')
    printf '| case | median s | MiB/s of tar | × tar -xf | note |\n'
    printf '|---|---:|---:|---:|---|\n'
    for row in "${ROWS[@]}"; do
        IFS=$US read -r name secs note <<<"$row"
        if [[ -z $secs ]]; then
            printf '| %s | – | – | – | %s |\n' "$name" "$note"
            continue
        fi
        rate=$(awk -v m="$mib" -v s="$secs" 'BEGIN { printf "%.0f", (s > 0 ? m / s : 0) }')
        ratio=$(awk -v s="$secs" -v t="$TAR_XF_SECS" 'BEGIN { printf "%.2f", (t > 0 ? s / t : 0) }')
        printf '| %s | %.3f | %s | %s | %s |\n' "$name" "$secs" "$rate" "$ratio" "$note"
    done
    printf '\nTargets: strata import ≤ %s× tar -xf; second import adds < %s%% to objects/; export byte-identical.\n' \
        "$IMPORT_TARGET_RATIO" "$DEDUP_TARGET_PCT"
}

cleanup() { [[ -n $WORK ]] && rm -rf "$WORK"; }

main() {
    parse_args "$@"
    WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/strata-bench.XXXXXX")
    trap cleanup EXIT
    bench_tar
    bench_umoci
    if ((WITH_STRATA)); then
        bench_strata
    else
        add_row "strata import" "" "not run (--no-strata)"
    fi
    print_machine
    print_table
    return "$STATUS"
}

main "$@"
