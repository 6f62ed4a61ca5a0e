#!/usr/bin/env bash
# The main job on an embedded default: build strata, create a store in a temp dir, import a small
# rootfs this script makes (or Debian bookworm via debootstrap with --debian), and show what the store
# knows: images, history, inspect, df, a byte-identical layer export, fsck — and, with the union mount,
# a read-only mount of the image, and (with runc) a container: run, diff, commit, history.
#
#   scripts/demo.sh            a tiny rootfs built from this machine's /bin/sh and a few tools
#   scripts/demo.sh --debian   Debian bookworm minbase (debootstrap; needs root and the Debian mirror)
#   KEEP=1 scripts/demo.sh     keep the store afterwards (its path is printed)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
readonly ROOT
DEBIAN=0
[[ ${1:-} == --debian ]] && DEBIAN=1

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() {
    step "$*"
    "$@"
}

# A tiny runnable rootfs: a shell and a few tools with the shared libraries they load.
make_small_rootfs() {
    local dir=$1 tool lib
    mkdir -p "$dir"/{bin,etc,tmp,root}
    for tool in sh ls cat echo uname; do
        local path
        path=$(command -v "$tool" || true)
        [[ -n $path && -f $path ]] || continue
        cp -L "$path" "$dir/bin/$tool"
        # Copy the libraries at their absolute paths, as the dynamic loader looks for them.
        for lib in $(ldd "$path" 2>/dev/null | grep -o '/[^ ]*' || true); do
            mkdir -p "$dir/$(dirname "$lib")"
            cp -L "$lib" "$dir/$lib"
        done
    done
    printf 'PRETTY_NAME="strata demo rootfs"\nID=strata-demo\n' >"$dir/etc/os-release"
    echo "hello from an image made by scripts/demo.sh" >"$dir/etc/motd"
    chmod 1777 "$dir/tmp"
}

main() {
    step "cargo build --release -p strata"
    (cd "$ROOT" && cargo build --release -p strata --locked -q)
    local strata=$ROOT/target/release/strata
    WORK=$(mktemp -d /tmp/strata-demo-XXXXXX)
    trap '[[ ${KEEP:-0} == 1 ]] && echo "store kept in $WORK/store" || rm -rf "$WORK"' EXIT
    export STRATA_ROOT=$WORK/store
    local tar=$WORK/rootfs.tar name=demo:latest
    if ((DEBIAN)); then
        tar=$("$ROOT/scripts/fixtures/debian-rootfs.sh")
        name=debian:bookworm
    else
        make_small_rootfs "$WORK/rootfs"
        tar --numeric-owner --sort=name -C "$WORK/rootfs" -cf "$tar" .
    fi
    echo "store: $STRATA_ROOT"
    run "$strata" import -c 'CMD ["/bin/sh"]' -c 'ENV GREETING=hello' "$tar" "$name"
    run "$strata" images
    run "$strata" history "$name"
    step "$strata inspect $name  (config excerpt)"
    "$strata" inspect "$name" | sed -n '1,12p'
    run "$strata" tag "$name" localhost:5000/demo/copy:v1
    run "$strata" images
    run "$strata" df
    local diff_id
    diff_id=$("$strata" --format json inspect "$name" | python3 -c 'import json,sys; print(json.load(sys.stdin)["rootfs"]["diff_ids"][0])')
    run "$strata" layer export "$diff_id" -o "$WORK/exported.tar"
    step "sha256sum rootfs.tar exported.tar  (the layer comes back byte for byte)"
    sha256sum "$tar" "$WORK/exported.tar" | sed "s|$WORK/||"
    run "$strata" fsck
    if "$strata" mount --help >/dev/null 2>&1; then
        mkdir -p "$WORK/mnt"
        run "$strata" mount "$name" "$WORK/mnt"
        run ls "$WORK/mnt" "$WORK/mnt/etc"
        run cat "$WORK/mnt/etc/os-release"
        run "$strata" umount "$WORK/mnt"
    fi
    # A container, its changes, a commit (needs an OCI runtime: apt-get install runc).
    if command -v runc >/dev/null || [[ -x /usr/sbin/runc ]]; then
        run "$strata" run --name demo-ctr "$name" sh -c 'echo changed > /etc/motd; echo hi > /root/new'
        run "$strata" diff demo-ctr
        run "$strata" commit -m "demo change" demo-ctr demo:v2
        run "$strata" history demo:v2
        run "$strata" run --rm demo:v2 cat /etc/motd
    fi
}

main "$@"
