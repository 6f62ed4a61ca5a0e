# Sourced by archive.sh and registry.sh: their common arguments and checks.
#   [TAR] | --image ARCHIVE   sets TAR (and IMAGE for --image); RUNS, STRATA (release build
#   preferred, debug with a warning); fails unless TAR exists and skopeo is installed.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMAGE=
if [[ ${1:-} == --image ]]; then
    IMAGE=${2:?--image needs an image archive}
    TAR=$IMAGE
else
    TAR=${1:-/var/cache/strata-ci/debian-bookworm-minbase.tar}
fi
RUNS=${RUNS:-3}
STRATA=${STRATA:-$ROOT/target/release/strata}
if [[ ! -x $STRATA ]]; then
    STRATA=$ROOT/target/debug/strata
    echo "warning: no release build; using $STRATA (run 'cargo build --release -p strata')" >&2
fi
[[ -f $TAR ]] || { echo "error: $TAR missing; build it with scripts/fixtures/debian-rootfs.sh" >&2; exit 1; }
command -v skopeo >/dev/null || { echo "error: skopeo is not installed (apt-get install skopeo)" >&2; exit 1; }
