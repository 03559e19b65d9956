#!/usr/bin/env bash
# ARM64 check under emulation (`make arm-check`; docs/deploy-arm.md): installs the edge runtime into an arm64
# Debian run by qemu-user, runs its tests there, runs the three tasks with the default FP32 and INT8 models on a
# small video on both sides and compares the outputs with the x86 ones. Exit status: 0 when the tests pass and
# every comparison holds, 1 otherwise.
#
# Needs root (debootstrap, chroot) and network for the first run (Debian mirror, PyPI); later runs reuse the
# root filesystem and the wheels under $ARM_ROOT. About 5 minutes to bootstrap, then several minutes per run:
# emulated code runs 10-50x slower, so the times it prints are not speeds. Not part of `make test`.
#
# Settings (environment):
#   ARM_ROOT   cache folder: rootfs/, wheels/, dist/, out/CPU/ (default /var/tmp/edgeae-arm64)
#   QEMU_CPU   CPU model qemu emulates                        (default cortex-a76, a Raspberry Pi 5; cortex-a72: Pi 4)
#   PYTHON     the x86 interpreter with edgeae installed      (default .venv/bin/python)
#   ARM_MODELS folder of model bundles to check              (default models/, the default bundles)
#   ARM_TESTS  0 skips the test subset                        (default 1)
#   ARM_PRECISIONS, ARM_BUNDLES  passed to arm_reference.py   (default fp32,int8 / every bundle under models/)
#   ARM_DECODED_TOL grey levels decoded frames may differ by  (default 1; 0 demands bit-identical decoding,
#              which FP32 decoders do not give across architectures: see docs/deploy-arm.md)
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
ARM_ROOT=${ARM_ROOT:-/var/tmp/edgeae-arm64}
ROOTFS=$ARM_ROOT/rootfs
WHEELS=$ARM_ROOT/wheels
DIST=$ARM_ROOT/dist
QEMU_CPU=${QEMU_CPU:-cortex-a76}
OUT=$ARM_ROOT/out/$QEMU_CPU
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
ARM_MODELS=${ARM_MODELS:-$REPO/models}
ARM_TESTS=${ARM_TESTS:-1}
ARM_PRECISIONS=${ARM_PRECISIONS:-fp32,int8}
ARM_BUNDLES=${ARM_BUNDLES:-}
ARM_DECODED_TOL=${ARM_DECODED_TOL:-1}
SUITE=bookworm  # Debian 12: Python 3.11, the version the aarch64 wheels below are fetched for
PYVER=3.11
GUEST=/opt/edgeae  # inside the rootfs: venv/, wheels/, dist/, src/, out/

log() { printf '\n== %s\n' "$*"; }
die() { printf 'arm_check: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap and chroot); run as root or with sudo"
[ -x "$PYTHON" ] || die "$PYTHON not found: run 'make' first, or set PYTHON to an interpreter with edgeae installed"
ls "$ARM_MODELS"/*/manifest.json >/dev/null 2>&1 \
    || die "no model bundle under $ARM_MODELS (export the defaults: make models)"

# --- 1. emulator and bootstrapper ------------------------------------------------------------------------------
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing qemu-user-static, binfmt-support, debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support debootstrap >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || die "qemu-aarch64 is not registered with binfmt_misc (update-binfmts --enable qemu-aarch64)"

# --- 2. arm64 Debian (once) ------------------------------------------------------------------------------------
mkdir -p "$ARM_ROOT"
if [ ! -e "$ROOTFS/.edgeae-rootfs" ]; then
    log "bootstrapping arm64 Debian $SUITE into $ROOTFS (about 5 minutes)"
    # The mirror this machine's apt uses (a local or snapshot mirror may be the only one reachable).
    MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    MIRROR=${DEBIAN_MIRROR:-${MIRROR:-http://deb.debian.org/debian}}
    rm -rf "$ROOTFS.partial"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$ROOTFS.partial" "$MIRROR" >"$ARM_ROOT/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $ARM_ROOT/debootstrap.log"
    rm -rf "$ROOTFS"
    mv "$ROOTFS.partial" "$ROOTFS"
    touch "$ROOTFS/.edgeae-rootfs"
fi

# One intra-op thread: onnxruntime's default pool crashes under qemu-user (shared/tools/arm64-emulation.md).
# taskset -c 0 also makes os.cpu_count() inside report 1 (no /proc, /sys in the rootfs), so code that sizes its
# own thread pool from the core count (edge_runtime.session.default_threads) asks for one thread too.
# onnxruntime's cpuinfo cannot read /sys there and says so on every start ("Error in cpuinfo: ..."); it then
# takes the CPU features from getauxval(AT_HWCAP), which qemu fills from QEMU_CPU (cortex-a76: dot product and
# FP16 on, as on a Pi 5), so the kernels chosen are those of the emulated CPU, not of this host.
guest() {
    env QEMU_CPU="$QEMU_CPU" taskset -c 0 chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin \
        HOME=/root LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE=1 "$@"
}

# --- 3. aarch64 wheels, downloaded here (pip inside the emulated system cannot verify this network's TLS) ------
# The same versions as the x86 side, so the comparison is about the architecture, not about library versions.
pins=$("$PYTHON" - <<'EOF'
import importlib.metadata as md
names = ["numpy", "onnxruntime", "opencv-python-headless", "click", "onnx", "pytest", "hypothesis"]
print(" ".join(f"{n}=={md.version(n)}" for n in names))
EOF
)
if [ "$(cat "$WHEELS/.pins" 2>/dev/null)" != "$pins" ]; then
    log "downloading aarch64 wheels: $pins"
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    # shellcheck disable=SC2086  # $pins is a list of requirements
    "$PYTHON" -m pip download --quiet --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_26_aarch64 \
        --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 --platform linux_aarch64 \
        -d "$WHEELS" $pins
    echo "$pins" >"$WHEELS/.pins"
fi

# --- 4. the project as a wheel (built from a copy: nothing is written into the working tree) -------------------
log "building the edgeae wheel"
rm -rf "$DIST" && mkdir -p "$DIST/src"
cp -a pyproject.toml README.md LICENSE edge_runtime training export benchmarks "$DIST/src/"
find "$DIST/src" -name __pycache__ -prune -exec rm -rf {} +
"$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DIST" "$DIST/src" >/dev/null
rm -rf "$DIST/src"

# --- 5. copy into the rootfs and install offline ----------------------------------------------------------------
log "installing into the arm64 venv ($GUEST/venv)"
G=$ROOTFS$GUEST
rm -rf "$G/wheels" "$G/dist" "$G/src" "$G/out"
mkdir -p "$G/src/tests" "$G/src/models" "$G/out"
cp -a "$WHEELS" "$G/wheels"
cp -a "$DIST" "$G/dist"
cp -a pyproject.toml edge_runtime benchmarks "$G/src/"
mkdir -p "$G/src/tests/edge_runtime"
for bundle in "$ARM_MODELS"/*/manifest.json; do cp -a "$(dirname "$bundle")" "$G/src/models/"; done
find "$G/src" -name __pycache__ -prune -exec rm -rf {} +
# Tests that import torch, onnxscript or the training/export side at module import cannot run on the edge;
# onnx is installed (its aarch64 wheel exists), so the fixtures that build tiny models work.
tests=$("$PYTHON" - <<'EOF'
import ast, pathlib
blocked = {"torch", "onnxscript", "training", "export", "benchmarks", "safetensors"}
keep = []
for path in sorted(pathlib.Path("tests/edge_runtime").glob("test_*.py")):
    tops = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            tops |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            tops.add(node.module.split(".")[0])
    if not tops & blocked:
        keep.append(str(path))
print(" ".join(keep))
EOF
)
cp -a tests/edge_runtime/conftest.py "$G/src/tests/edge_runtime/"
for t in $tests; do cp -a "$t" "$G/src/tests/edge_runtime/"; done
# Emulated code is slow: no hypothesis deadlines (a profile loaded before the tests are collected).
cat >"$G/src/arm_hypothesis_profile.py" <<'EOF'
from hypothesis import HealthCheck, settings

settings.register_profile("qemu", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("qemu")
EOF
if [ ! -x "$ROOTFS$GUEST/venv/bin/python" ]; then
    guest python3 -m venv "$GUEST/venv"
fi
# shellcheck disable=SC2086
guest "$GUEST/venv/bin/pip" install --quiet --disable-pip-version-check --no-index \
    --find-links "$GUEST/wheels" --find-links "$GUEST/dist" edgeae $pins
guest "$GUEST/venv/bin/pip" install --quiet --disable-pip-version-check --no-index --no-deps --force-reinstall \
    --find-links "$GUEST/dist" edgeae
guest "$GUEST/venv/bin/python" -c 'import platform, onnxruntime, cv2, numpy
print("arm64 side:", platform.machine(), "python", platform.python_version(), "onnxruntime", onnxruntime.__version__,
      "opencv", cv2.__version__, "numpy", numpy.__version__)'
guest "$GUEST/venv/bin/edgeae" --help >/dev/null && echo "edgeae --help runs on arm64"

# --- 6. the test video and the x86 reference ---------------------------------------------------------------------
# Run from the copy in the rootfs: both sides use the same snapshot of the code and the models, even while the
# working tree changes.
rm -rf "$OUT" && mkdir -p "$OUT"
log "x86 reference"
(cd "$G/src" && "$PYTHON" -m benchmarks.arm_reference video input.mkv)
cp "$G/src/input.mkv" "$OUT/input.mkv"
(cd "$G/src" && "$PYTHON" -m benchmarks.arm_reference run --video input.mkv --models models --out "$OUT/x86" \
    --precisions "$ARM_PRECISIONS" --bundles "$ARM_BUNDLES") || echo "x86 reference reported errors (see above)"
find "$G/src" -name __pycache__ -prune -exec rm -rf {} +
cp -a "$OUT/x86" "$G/out/x86"

status=0
# --- 7. the runtime's tests on arm64 -----------------------------------------------------------------------------
if [ "$ARM_TESTS" != 0 ]; then
    log "runtime tests on arm64 (QEMU_CPU=$QEMU_CPU): $(echo "$tests" | wc -w) files"
    set +e
    # Wall-clock bounds mean nothing at emulated speed; those tests are deselected, not weakened.
    deselect="--deselect tests/edge_runtime/test_entropy.py::test_frame_speed_is_vectorised"
    guest /bin/sh -c "cd $GUEST/src && exec $GUEST/venv/bin/python -m pytest -q -p no:cacheprovider \
        -p arm_hypothesis_profile -m 'not gpu' -rfEs $deselect --junitxml=$GUEST/out/tests.xml $tests" \
        2>&1 | tee "$OUT/tests.txt"
    rc=${PIPESTATUS[0]}
    set -e
    cp "$G/out/tests.xml" "$OUT/" 2>/dev/null || true
    [ "$rc" = 0 ] || { echo "arm64 tests failed (pytest exit $rc)"; status=1; }
fi

# --- 8. the three tasks on arm64, then the comparison ------------------------------------------------------------
log "tasks on arm64 (QEMU_CPU=$QEMU_CPU; emulated, so no timings are kept)"
guest /bin/sh -c "cd $GUEST/src && exec $GUEST/venv/bin/python -m benchmarks.arm_reference run \
    --video input.mkv --models models --out $GUEST/out/arm64 --cross $GUEST/out/x86 \
    --precisions '$ARM_PRECISIONS' --bundles '$ARM_BUNDLES'" || echo "arm64 run reported errors (see above)"
rm -rf "$OUT/arm64" && cp -a "$G/out/arm64" "$OUT/arm64"

log "comparison x86 vs arm64"
set +e
"$PYTHON" -m benchmarks.arm_compare "$OUT/x86" "$OUT/arm64" --decoded-tol "$ARM_DECODED_TOL" \
    --json "$OUT/compare.json" | tee "$OUT/compare.txt"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" = 0 ] || status=1
echo
echo "outputs in $OUT (tests.txt, compare.txt, x86/, arm64/)"
[ "$status" = 0 ] && echo "arm-check: OK" || echo "arm-check: FAILED"
exit "$status"
