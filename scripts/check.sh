#!/usr/bin/env bash
# Static checks, the same locally and in CI (STYLE.md section 11): formatting, clippy with warnings denied,
# the crate boundaries of STYLE.md section 2, and rustdoc with warnings denied.
# Every check runs even when an earlier one fails, so one run shows everything to fix; the exit status is
# non-zero if any failed.
set -euo pipefail

cd "$(dirname "$0")/.."

FAILED=()

log() { printf 'check: %s\n' "$*" >&2; }

# Run one named check in a subshell with errexit on (a function called from `if` would run with errexit
# silently off), record its failure and go on.
run_check() {
    local name=$1 rc
    shift
    log "== $name"
    set +e
    (
        set -e
        "$@"
    )
    rc=$?
    set -e
    if ((rc != 0)); then
        log "FAILED: $name (exit $rc)"
        FAILED+=("$name")
    fi
}

# `package` must not depend, through normal (non-dev, non-build) edges, on the crate `forbidden`.
# --prefix none and the {p} format print one "name vX.Y.Z ..." per line, so a whole-word match on the
# first field cannot be fooled by a crate whose name merely contains the forbidden one.
assert_no_dep() {
    local package=$1 forbidden=$2 tree
    tree=$(cargo tree --locked -p "$package" -e normal --prefix none --format '{p}')
    if awk -v bad="$forbidden" '$1 == bad { found = 1 } END { exit !found }' <<<"$tree"; then
        log "$package depends on $forbidden; see STYLE.md section 2. Path to it:"
        cargo tree --locked -p "$package" -e normal -i "$forbidden" >&2 || true
        return 1
    fi
}

boundaries() {
    # The store must not mount (so it can be used and tested without FUSE) ...
    assert_no_dep layerstore fuser
    # ... and the filesystem must not query the index (the FUSE hot path never touches SQLite).
    assert_no_dep unionfs rusqlite
}

docs() {
    RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --locked
}

main() {
    run_check fmt cargo fmt --all --check
    run_check clippy cargo clippy --workspace --all-targets --locked -- -D warnings
    run_check boundaries boundaries
    run_check doc docs
    if ((${#FAILED[@]})); then
        log "failed checks: ${FAILED[*]}"
        return 1
    fi
    log "all checks passed"
}

main "$@"
