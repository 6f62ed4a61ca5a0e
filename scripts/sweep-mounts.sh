#!/usr/bin/env bash
# Unmount what killed tests left behind. A panicking test unmounts through its guard's Drop, but a test that
# nextest kills on timeout (or a SIGKILLed `strata mount`) does not, and its mount would make every later
# `rm -rf` of the temp dir fail with EBUSY/ENOTCONN. scripts/test.sh runs this after every suite and on exit.
#
# It touches only mounts whose mountpoint contains "strata-test-" (the prefix every test's temp dir has,
# STYLE.md section 6):
#   - FUSE mounts (fuse, fuse.* -- strata's are fuse.strata and fuse.strata-overlayfs, fuse-overlayfs's
#     fuse.fuse-overlayfs --, fuseblk): `fusermount3 -u`, then `fusermount3 -u -z`, then, as root,
#     `umount -l`; the first that works wins.
#   - kernel overlay mounts (the differential tests' oracle): `umount -l`, as root.
# Exit status: 0 when no such mount remains, 1 otherwise. Each unmount is reported on stderr.
set -euo pipefail

readonly MARKER=strata-test-
# An unmount of a wedged FUSE server must not hang the whole CI run.
readonly UMOUNT_TIMEOUT=10s

log() { printf 'sweep-mounts: %s\n' "$*" >&2; }

# /proc/self/mounts escapes space, tab, newline and backslash in paths as three octal digits (\040 ...);
# printf %b wants \0NNN, else "\0403" (a space, then "3") would read as one four-digit escape.
unescape() { printf '%b' "${1//\\/\\0}"; }

# "fstype<TAB>mountpoint" of every mount under a strata-test- dir, deepest first, so that nested mounts go
# before the mounts that contain them.
list_mounts() {
    local _src mnt fstype _rest
    while read -r _src mnt fstype _rest; do
        mnt=$(unescape "$mnt")
        [[ $mnt == *"$MARKER"* ]] || continue
        case $fstype in
            fuse | fuse.* | fuseblk | overlay) printf '%s\t%s\n' "$fstype" "$mnt" ;;
        esac
    done </proc/self/mounts | sort -t $'\t' -k2,2 -r
}

try() { timeout "$UMOUNT_TIMEOUT" "$@" 2>/dev/null; }

unmount_fuse() {
    local mnt=$1
    if command -v fusermount3 >/dev/null; then
        try fusermount3 -u "$mnt" && return 0
        # Busy (a leaked process has its cwd or an open file there): detach now, free when unused.
        try fusermount3 -u -z "$mnt" && return 0
    fi
    ((EUID == 0)) && try umount -l "$mnt"
}

unmount_overlay() {
    ((EUID == 0)) && try umount -l "$1"
}

main() {
    local fstype mnt left=0
    while IFS=$'\t' read -r fstype mnt; do
        if [[ $fstype == overlay ]]; then
            unmount_overlay "$mnt" || true
        else
            unmount_fuse "$mnt" || true
        fi
        # Judge by the mount table, not by exit codes: a lazy unmount succeeds yet may report nothing.
        if list_mounts | cut -f2 | grep -qxF -- "$mnt"; then
            log "could not unmount $mnt ($fstype)"
            left=1
        else
            log "unmounted leftover $mnt ($fstype)"
        fi
    done < <(list_mounts)
    return "$left"
}

main "$@"
