#!/usr/bin/env bash
# The one command that runs every test, on a fresh Debian 12 machine as on a developer's (README; .ci/run
# calls exactly this). As root it first installs what the tests need:
#   - Debian packages (fuse3 for fusermount3, debootstrap, umoci, skopeo, attr, ...), apt-get update only
#     when something is missing;
#   - rustfmt and clippy, if rustup lacks them;
#   - /dev/fuse mode 0666 and `user_allow_other` in /etc/fuse.conf, as Debian has them with udev;
#   - the unprivileged user strata-test, for the rootless_* tests;
#   - the cached Debian rootfs tar in /var/cache/strata-ci (scripts/fixtures/debian-rootfs.sh).
# Then, with STRATA_REQUIRE_FUSE=1 (a FUSE test that cannot mount fails instead of skipping):
#   1. scripts/check.sh                      fmt, clippy, crate boundaries, rustdoc
#   2. cargo nextest run --profile ci        all tests, as the caller (root in CI)
#   3. cargo test --doc                      doc tests (nextest does not run them)
#   3b. scripts/posix.sh --corners           POSIX corners through the three CLI mount forms (root)
#   4. tests named rootless_* again, as strata-test through fusermount3, from a nextest archive of the
#      binaries step 2 built (that user cannot read root's cargo or, wherever the clone is, maybe the tree)
# scripts/sweep-mounts.sh runs after each suite and on exit, however the script ends. Every step runs even
# if an earlier one failed; the exit status is non-zero if any failed. The last line sums the test counts.
#
# Environment for the tests: STRATA_REQUIRE_FUSE=1, STRATA_CI_CACHE (the fixture cache dir) and
# STRATA_DEBIAN_TAR (the bookworm minbase rootfs tar). STRATA_TEST_RUNNER=cargo forces plain `cargo test`
# where cargo-nextest would be used (it is the fallback when cargo-nextest is not installed).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
readonly ROOT
readonly TEST_USER=strata-test
readonly TEST_USER_HOME=/var/lib/strata-test
readonly CI_CACHE=/var/cache/strata-ci
# What the tests and fixtures need from Debian; only the missing ones are installed (dpkg status check).
readonly APT_PACKAGES=(
    fuse3       # fusermount3: rootless mounts and the unmount in test guards and sweep-mounts.sh
    debootstrap # the real-rootfs fixture
    umoci       # OCI layouts: reference unpacker for import/export tests and the store benchmark
    skopeo      # copies between OCI layouts and docker archives in registry/format tests
    attr        # getfattr/setfattr: xattr checks from shell and in fixtures
    xz-utils    # xz-compressed tars from debootstrap and fixtures
    zstd        # zstd layers in fixtures
    pkg-config  # build scripts of -sys crates probe with it
    gcc         # zstd-sys and libsqlite3-sys (bundled) compile C
    libc6-dev   # headers and crt files for the same
    sudo        # tests may drop to another user with sudo -u
    util-linux  # runuser, flock, umount, unshare, script (essential; named for minimal images)
    runc        # the OCI runtime strata run uses
    uidmap      # newuidmap/newgidmap for user namespaces with subordinate ids
    busybox-static # a static shell and tools: the runnable test image of the run tests
    fio         # union benchmark workloads (scripts/bench/union.sh)
    docker-registry # the real registry the push/pull tests run on loopback
    apache2-utils   # htpasswd -B: bcrypt users for the registry with auth
    openssl     # a CA and a certificate for the TLS registry test
    curl        # registry benchmark
    bc          # registry benchmark arithmetic
    buildah     # a real client of strata-overlayfs (containers/storage mount_program)
    fuse-overlayfs # the peer: the same buildah steps with it, and the union benchmark
    slirp4netns # the private network of `strata run` (outbound, DNS, -p), root and rootless
)
readonly FUSE_CONF=/etc/fuse.conf

export STRATA_REQUIRE_FUSE=1
# Tests that need runc, busybox-static, skopeo or umoci fail instead of skipping.
export STRATA_REQUIRE_TOOLS=1
# Registry tests fail instead of skipping when docker-registry is missing.
export STRATA_REQUIRE_REGISTRY=1
export STRATA_CI_CACHE=$CI_CACHE

FAILED=()
WORK_DIR="" # logs and the rootless user's copy; removed on exit

log() { printf '\ntest.sh: %s\n' "$*" >&2; }

is_root() { ((EUID == 0)); }

use_nextest() { [[ ${STRATA_TEST_RUNNER:-nextest} != cargo ]] && cargo nextest --version >/dev/null 2>&1; }

# --- setup (root only) ----------------------------------------------------------------------------------

install_packages() {
    local pkg missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) == installed ]] || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Wait for another apt (an engineer's, unattended-upgrades) instead of failing on its lock.
    local apt=(apt-get -q -o DPkg::Lock::Timeout=600)
    "${apt[@]}" update
    "${apt[@]}" install -y --no-install-recommends "${missing[@]}"
}

install_rust_components() {
    command -v rustup >/dev/null || return 0 # a distro cargo ships its own rustfmt/clippy packages
    local installed
    installed=$(rustup component list --installed)
    if ! grep -q '^rustfmt' <<<"$installed" || ! grep -q '^clippy' <<<"$installed"; then
        rustup component add rustfmt clippy
    fi
}

setup_fuse() {
    if [[ ! -e /dev/fuse ]]; then
        modprobe fuse 2>/dev/null || true
        [[ -e /dev/fuse ]] || mknod -m 0666 /dev/fuse c 10 229 || log "warning: no /dev/fuse; FUSE tests will fail"
    fi
    # Without udev the node is 0600 and only root can mount; Debian's udev rule makes it 0666.
    [[ -e /dev/fuse ]] && chmod 0666 /dev/fuse
    # udev's mode: rootless slirp4netns (the containers' private network) opens it.
    if [[ ! -e /dev/net/tun ]]; then
        mkdir -p /dev/net && mknod -m 0666 /dev/net/tun c 10 200 || log "warning: no /dev/net/tun"
    fi
    [[ -e /dev/net/tun ]] && chmod 0666 /dev/net/tun
    # Lets an unprivileged mount use allow_other (fusermount3 reads this file).
    if ! grep -qx 'user_allow_other' "$FUSE_CONF" 2>/dev/null; then
        echo user_allow_other >>"$FUSE_CONF"
    fi
}

# Subordinate ids of the test user, so rootless `strata run` maps a whole id range (newuidmap), as
# a desktop user created by adduser has. A range no other user of this machine is likely to use.
readonly TEST_SUBIDS=300000-365535

give_subordinate_ids() {
    grep -q "^$TEST_USER:" /etc/subuid 2>/dev/null || usermod --add-subuids "$TEST_SUBIDS" "$TEST_USER"
    grep -q "^$TEST_USER:" /etc/subgid 2>/dev/null || usermod --add-subgids "$TEST_SUBIDS" "$TEST_USER"
}

create_test_user() {
    if id -u "$TEST_USER" >/dev/null 2>&1; then
        give_subordinate_ids
        return 0
    fi
    log "creating user $TEST_USER"
    useradd --system --user-group --create-home --home-dir "$TEST_USER_HOME" \
        --shell /usr/sbin/nologin "$TEST_USER"
    give_subordinate_ids
}

build_fixtures() {
    mkdir -p "$CI_CACHE"
    # The rootless tests read the fixtures too.
    chmod 0755 "$CI_CACHE"
    STRATA_DEBIAN_TAR=$("$ROOT/scripts/fixtures/debian-rootfs.sh")
    export STRATA_DEBIAN_TAR
    # .deb files that container tests install with dpkg (no network inside the container).
    "$ROOT/scripts/fixtures/debs.sh" >/dev/null
    # python3 and its dependencies as .debs for the seed's Python-app build test.
    "$ROOT/scripts/fixtures/build-debs.sh" python >/dev/null
    # gcc and libc6-dev (their closure over minbase) for the seed's multi-stage C build test.
    "$ROOT/scripts/fixtures/build-debs.sh" gcc >/dev/null
}

setup_system() {
    if ! is_root; then
        log "not root: skipping package installs, FUSE setup, the test user and the rootless re-run"
        if [[ -f $CI_CACHE/debian-bookworm-minbase.tar ]]; then
            export STRATA_DEBIAN_TAR=$CI_CACHE/debian-bookworm-minbase.tar
        fi
        return 0
    fi
    install_packages
    install_rust_components
    setup_fuse
    create_test_user
    build_fixtures
}

# --- steps ----------------------------------------------------------------------------------------------

# Run one named step in a subshell with errexit on (a function called from `if` would run with errexit
# silently off), its output shown and kept in $WORK_DIR/NAME.log for the counts; record a failure, go on.
run_step() {
    local name=$1 rc
    shift
    log "== $name"
    set +e
    (
        set -e
        "$@"
    ) 2>&1 | tee "$WORK_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    if ((rc != 0)); then
        log "FAILED: $name (exit $rc)"
        FAILED+=("$name")
    fi
    # A test killed on timeout leaves its mount behind; do not let it leak into the next suite.
    "$ROOT/scripts/sweep-mounts.sh" || true
}

step_check() { "$ROOT/scripts/check.sh"; }

step_tests() {
    if use_nextest; then
        cargo nextest run --workspace --locked --profile ci --no-tests=fail
    else
        log "cargo-nextest not found: falling back to cargo test"
        cargo test --workspace --locked
    fi
}

step_doctests() { cargo test --doc --workspace --locked; }

# POSIX corner cases (paths beyond PATH_MAX, 255-byte names, fds of unlinked files) through the three
# CLI mount forms, with the debug binaries the tests built (scripts/posix.sh --corners; root: it mounts).
step_posix_corners() {
    cargo build --locked -p strata --bins
    POSIX_CHECK=1 STRATA_BIN_DIR="$ROOT/target/debug" "$ROOT/scripts/posix.sh" --corners \
        --forms strata-overlayfs,strata-mount,strata-container
}

# A copy of the workspace the test user can read: tests find their data through CARGO_MANIFEST_DIR, which
# nextest remaps to this copy. target/ and .git/ are left out: the binaries come from the archive.
copy_sources_for_user() {
    local dest=$1
    mkdir -p "$dest"
    tar -C "$ROOT" --exclude=./target --exclude=./.git -cf - . | tar -C "$dest" -xf -
}

# Run a command as the test user with a minimal, explicit environment: no root HOME, CARGO_HOME or
# RUSTUP_HOME leaks in, and nothing in the run needs cargo or rustc.
as_test_user() {
    local path=$WORK_DIR/user/bin:/usr/local/bin:/usr/bin:/bin
    runuser -u "$TEST_USER" -- env -i \
        PATH="$path" HOME="$TEST_USER_HOME" USER="$TEST_USER" LANG=C.UTF-8 TMPDIR=/tmp \
        CI="${CI:-}" RUST_BACKTRACE=1 STRATA_REQUIRE_FUSE=1 STRATA_REQUIRE_TOOLS=1 STRATA_REQUIRE_REGISTRY=1 STRATA_CI_CACHE="$CI_CACHE" \
        STRATA_DEBIAN_TAR="${STRATA_DEBIAN_TAR:-}" "$@"
}

# The rootless tier, the nextest way: root archives the test binaries it built (no rebuild), the user
# extracts and runs them against a copy of the sources. Test names are module paths (`tests::rootless_x`),
# so the filter anchors at the start or after `::`.
rootless_nextest() {
    local udir=$WORK_DIR/user nextest
    cargo nextest archive --workspace --locked --archive-file "$udir/tests.tar.zst"
    nextest=$(command -v cargo-nextest)
    # cargo-nextest may live under root's ~/.cargo, which the user cannot reach.
    cp "$nextest" "$udir/bin/cargo-nextest"
    mkdir -p "$udir/extracted" # nextest wants it to exist
    chown -R "$TEST_USER:" "$udir"
    (cd "$udir" && as_test_user cargo-nextest nextest run --profile ci \
        --archive-file "$udir/tests.tar.zst" --workspace-remap "$udir/src" --extract-to "$udir/extracted" \
        --no-tests=warn -E 'test(/(^|::)rootless_/)')
}

# The same without nextest: ask cargo for the test and bin executables, copy them for the user, run each
# test binary with the libtest filter `rootless_` from its package dir, as cargo would.
rootless_cargo() {
    local udir=$WORK_DIR/user kind exe dir name
    local -a envs=() tests=()
    while IFS=$'\t' read -r kind exe dir name; do
        cp "$exe" "$udir/bin/"
        exe=$udir/bin/$(basename "$exe")
        if [[ $kind == bin ]]; then
            envs+=("CARGO_BIN_EXE_$name=$exe")
        else
            tests+=("$exe"$'\t'"$udir/src/${dir#"$ROOT"/}")
        fi
    done < <(cargo test --workspace --locked --no-run --message-format=json | python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if m["profile"]["test"]:
        kind = "test"
    elif "bin" in m["target"]["kind"]:
        kind = "bin"
    else:
        continue
    print(kind, m["executable"], os.path.dirname(m["manifest_path"]), m["target"]["name"], sep="\t")
')
    chown -R "$TEST_USER:" "$udir"
    local entry rc=0
    for entry in "${tests[@]}"; do
        exe=${entry%%$'\t'*} dir=${entry#*$'\t'}
        (cd "$dir" && as_test_user "${envs[@]}" CARGO_MANIFEST_DIR="$dir" "$exe" rootless_) || rc=1
    done
    return "$rc"
}

step_rootless() {
    local udir=$WORK_DIR/user
    mkdir -p "$udir/bin"
    copy_sources_for_user "$udir/src"
    if use_nextest; then
        rootless_nextest
    else
        rootless_cargo
    fi
}

# --- counts ---------------------------------------------------------------------------------------------

# "P F S" (passed, failed, skipped) of one step's log. A nextest log is read from its "Summary ... N tests
# run: N passed, N failed, N skipped" line only: the output of a failed test, which nextest repeats, holds
# libtest's own "test result:" line. Other logs (doc tests, the cargo fallback) sum libtest's
# "test result: ok. N passed; N failed; N ignored" lines. Timed-out tests count as failed.
count_log() {
    local log=$1 pattern
    if grep -q ' Summary \[.*tests\? run:' "$log"; then
        pattern=' Summary \['
    else
        pattern='^test result: '
    fi
    sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -e "$pattern" | awk '
        {
            n = split($0, w, /[ ,;.]+/)
            for (i = 2; i <= n; i++) {
                if (w[i] == "passed") p += w[i - 1]
                else if (w[i] == "failed") f += w[i - 1]
                else if (w[i] == "skipped" || w[i] == "ignored") s += w[i - 1]
                else if (w[i] == "timed" && w[i + 1] == "out") f += w[i - 1]
            }
        }
        END { print p + 0, f + 0, s + 0 }'
}

# The last line of the run: what ran in all steps together, in the plain "N passed, N failed" form.
print_totals() {
    local log p f s passed=0 failed=0 skipped=0
    for log in "$WORK_DIR"/*.log; do
        [[ -f $log ]] || continue
        read -r p f s < <(count_log "$log")
        ((passed += p, failed += f, skipped += s)) || true
    done
    printf 'total: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
}

# --- main -----------------------------------------------------------------------------------------------

on_exit() {
    local rc=$?
    "$ROOT/scripts/sweep-mounts.sh" || true
    [[ -n $WORK_DIR ]] && rm -rf --one-file-system "$WORK_DIR"
    exit "$rc"
}

main() {
    cd "$ROOT"
    trap on_exit EXIT
    # Die by exit, not by the signal, so the EXIT trap still sweeps mounts on Ctrl-C or a CI timeout.
    trap 'exit 130' INT
    trap 'exit 143' TERM
    WORK_DIR=$(mktemp -d /var/tmp/strata-test-sh.XXXXXX)
    # The test user must traverse into its copy under here.
    chmod 0755 "$WORK_DIR"

    setup_system

    run_step check step_check
    run_step tests step_tests
    run_step doctests step_doctests
    if is_root; then
        run_step posix-corners step_posix_corners
        run_step rootless step_rootless
    fi

    local rc=0
    if ((${#FAILED[@]})); then
        log "failed steps: ${FAILED[*]}"
        rc=1
    else
        log "all steps passed"
    fi
    log "test counts of all steps (the rootless re-run included):"
    print_totals
    return "$rc"
}

main "$@"
