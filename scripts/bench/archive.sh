#!/usr/bin/env bash
# Archive benchmark (issue 5, "Performance"): `strata save` and `strata load` next to `skopeo copy`
# between a docker-archive and an OCI layout of the same image, in one run; prints a Markdown table.
#
#   scripts/bench/archive.sh [TAR]
#   scripts/bench/archive.sh --image ARCHIVE
#
#   TAR        the rootfs tar imported as the image (default: the Debian bookworm minbase rootfs from
#              scripts/fixtures/debian-rootfs.sh, /var/cache/strata-ci/debian-bookworm-minbase.tar)
#   ARCHIVE    instead, an image archive (`strata save` output, e.g. the 3-layer ~1.3 GiB union
#              benchmark image: `strata --root /var/tmp/unionbench/strata-store save -o
#              /var/tmp/ub-image.tar unionbench:layers`), loaded as the image with all its layers
#   STRATA     strata binary (default: target/release/strata, else target/debug/strata with a warning:
#              debug sha2/tar code measures the wrong thing; `cargo build --release -p strata`)
#   BENCH_DIR  where the work dir is made (default /var/tmp); removed at exit
#   RUNS       timed runs per case (default 3; the table shows the median)
#
# Cases (the input is in the page cache for all; each run starts from a fresh destination; the
# cases alternate within each run, so strata and skopeo share the noisy moments):
#   strata save             store → docker-archive tarball (uncompressed, streamed from the store)
#   strata load (new)       docker-archive → a fresh store
#   strata load (again)     the same archive into the store that has it (dedup): growth of objects/
#   skopeo → oci            skopeo copy docker-archive:… oci:DIR:t (skopeo's default: gzip layers)
#   skopeo → oci (plain)    the same with --dest-decompress (no compression, closest to strata's work)
#   skopeo → docker-archive skopeo copy oci:DIR:t docker-archive:… (the reverse)
# No timing is asserted; the script exits 1 when a command fails or the saved archive does not
# round-trip (save → load → save must be byte-identical).
set -euo pipefail

source "$(dirname "$0")/image-args.sh"

WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/strata-archive-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

now() { date +%s.%N; }
# median of the arguments
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

S="$STRATA --root $WORK/store -q"
if [[ -n $IMAGE ]]; then
    $S load -i "$IMAGE" >/dev/null
    read -r REF LAYERS < <($S images --format json | python3 -c 'import json,sys; i=json.load(sys.stdin)[0]; print(i["repo_tags"][0], i["layers"])')
    $S tag "$REF" bench:1
else
    $S import "$TAR" bench:1 >/dev/null
    LAYERS=1
fi
$S save -o "$WORK/warm.tar" bench:1   # warm the page cache of the objects
cat "$TAR" >/dev/null
BYTES=$(stat -c %s "$WORK/warm.tar")
MIB=$(echo "$BYTES / 1048576" | bc -l)

# One timed command (after an untimed setup); prints seconds.
time_one() {
    local t0 t1
    eval "$1"
    t0=$(now)
    eval "$2" >/dev/null
    t1=$(now)
    echo "$t1 - $t0" | bc -l
}
# The cases alternate within each run (strata, then skopeo, then the next run), so a noisy
# moment of the shared machine hits both tools instead of one case.
$S save -o "$WORK/s.tar" bench:1
declare -a T_SAVE T_LOAD T_RELOAD T_SK_OCI T_SK_PLAIN T_SK_DA PAIR_LOAD PAIR_SAVE
growth=
for run in $(seq "$RUNS"); do
    T_SAVE+=("$(time_one "rm -f $WORK/s.tar" "$S save -o $WORK/s.tar bench:1")")
    # Each run writes into new directories and nothing is deleted until the end: ext4 without
    # a journal (this machine) skips inodes freed in the last seconds when it allocates, so a
    # store created right after removing the previous one (thousands of files) pays for the
    # removal; skopeo writes one file per layer and would not.
    L=$WORK/l$run
    T_LOAD+=("$(time_one "sync" "$STRATA --root $L -q load -i $WORK/s.tar")")
    # Second load into a store that has the image: object bytes written.
    obj_before=$(du -sb "$L/objects" | cut -f1)
    T_RELOAD+=("$(time_one ":" "$STRATA --root $L -q load -i $WORK/s.tar")")
    obj_after=$(du -sb "$L/objects" | cut -f1)
    growth=$(echo "100 * ($obj_after - $obj_before) / $obj_before" | bc -l)
    if [[ $run == 1 ]]; then # round trip
        $STRATA --root "$L" -q save -o "$WORK/s2.tar" bench:1
        cmp -s "$WORK/s.tar" "$WORK/s2.tar" || { echo "error: save → load → save is not byte-identical" >&2; exit 1; }
        rm -f "$WORK/s2.tar"
    fi
    T_SK_OCI+=("$(time_one "sync" "skopeo copy -q docker-archive:$WORK/s.tar oci:$WORK/oci$run:t")")
    rm -rf "$WORK/oci$run"
    T_SK_PLAIN+=("$(time_one "sync" \
        "skopeo copy -q --dest-decompress docker-archive:$WORK/s.tar oci:$WORK/ocip$run:t")")
    T_SK_DA+=("$(time_one "rm -f $WORK/back.tar" \
        "skopeo copy -q oci:$WORK/ocip$run:t docker-archive:$WORK/back.tar:bench:1")")
    rm -rf "$WORK/ocip$run"
    rm -f "$WORK/back.tar"
    PAIR_LOAD+=("$(echo "${T_SK_PLAIN[-1]} / ${T_LOAD[-1]}" | bc -l)")
    PAIR_SAVE+=("$(echo "${T_SK_DA[-1]} / ${T_SAVE[-1]}" | bc -l)")
done
t_save=$(median "${T_SAVE[@]}"); t_load=$(median "${T_LOAD[@]}"); t_reload=$(median "${T_RELOAD[@]}")
t_sk_oci=$(median "${T_SK_OCI[@]}"); t_sk_oci_plain=$(median "${T_SK_PLAIN[@]}"); t_sk_da=$(median "${T_SK_DA[@]}")

row() { # name seconds
    printf '| %s | %.2f | %.0f |\n' "$1" "$2" "$(echo "$MIB / $2" | bc -l)"
}
echo
echo "Image: $(basename "$TAR"), $LAYERS layer(s); archive $(printf '%.0f' "$MIB") MiB; median of $RUNS runs"
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), work dir on $(df -T "$WORK" | awk 'NR==2 {print $2}')"
echo
echo "| case | seconds | MiB/s |"
echo "|---|---:|---:|"
row "strata save (store → docker-archive)" "$t_save"
row "strata load (docker-archive → new store)" "$t_load"
row "strata load again (image already stored)" "$t_reload"
row "skopeo copy docker-archive → oci (gzip)" "$t_sk_oci"
row "skopeo copy docker-archive → oci (--dest-decompress)" "$t_sk_oci_plain"
row "skopeo copy oci → docker-archive" "$t_sk_da"
echo
printf 'Ratios of the medians: skopeo oci→docker-archive / strata save = %.1f×; skopeo→oci(plain) / strata load = %.1f×\n' \
    "$(echo "$t_sk_da / $t_save" | bc -l)" "$(echo "$t_sk_oci_plain / $t_load" | bc -l)"
printf 'Per-run ratios (same run): save %s; load %s\n' \
    "$(printf '%.1f× ' "${PAIR_SAVE[@]}")" "$(printf '%.1f× ' "${PAIR_LOAD[@]}")"
printf 'Objects written by the second load: %.3f%% of the store'"'"'s object bytes\n' "$growth"
