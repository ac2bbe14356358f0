#!/usr/bin/env bash
# The wheels the GPU image lacks -> .whl/ (git-ignored), for its CPython 3.12 on manylinux x86_64.
#
#   bash benchmarks/gpu_wheels.sh          # from anywhere; needs the registry (PyPI) and a Python 3.12 here
#
# What goes in is the `need` lines of benchmarks/gpu_image.txt (the one list of the image's software):
# deepspeed, which the registry has only as an sdist, is built here as py3-none-any (DS_BUILD_OPS=0:
# nothing compiled, its ops JIT-build on first use, and ZeRO-3 with a torch optimizer uses none); every
# other one is fetched as a wheel for cp312 / manylinux x86_64 (`pip download --only-binary=:all:`).
# Then benchmarks/gpu_image.py check-wheels refuses (one line each, exit 1) a wheel that is neither
# py3-none-any nor cp312 manylinux x86_64, a package the image already has, two versions of one package,
# a `need` line without its wheel, and a requirement of any carried wheel that neither the image nor
# .whl/ satisfies. .whl/ is replaced only when every check passes.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${WHL_DIR:-$REPO/.whl}
IMG="python3 $REPO/benchmarks/gpu_image.py"
PYV=$($IMG python)
PY=$($IMG find-python) || { echo "gpu_wheels: deepspeed's wheel is built with the image's Python $PYV" >&2; exit 1; }
echo "gpu_wheels: building with $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])')) for CPython $PYV"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# 1. from source: pure Python, built by the image's Python in an isolated build environment
for spec in $($IMG need --sdist); do
  name=${spec%%==*}
  echo "gpu_wheels: building $spec from its sdist"
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-binary "$name" -w "$TMP" "$spec" \
    || { echo "gpu_wheels: building $spec failed" >&2; exit 1; }
done

# 2. wheels for cp312 / manylinux x86_64 (pip matches each manylinux_2_N exactly: list them all up to the image's glibc)
GLIBC_MINOR=$(sed -n 's/^glibc[[:space:]]\+2\.\([0-9]\+\).*/\1/p' "$REPO/benchmarks/gpu_image.txt")
PLATFORMS=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for ((n = 5; n <= GLIBC_MINOR; n++)); do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
CP=cp${PYV/./}
mapfile -t BINARY < <($IMG need --binary)
echo "gpu_wheels: fetching ${#BINARY[@]} wheels for $CP: ${BINARY[*]}"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --abi "$CP" --abi abi3 --abi none "${PLATFORMS[@]}" -d "$TMP" "${BINARY[@]}" \
  || { echo "gpu_wheels: pip download failed (above: which package has no $CP / py3-none-any wheel)" >&2; exit 1; }

# 3. every wheel fits the image, nothing the image has, every requirement met; then replace .whl/
echo "gpu_wheels: checking against benchmarks/gpu_image.txt"
$IMG check-wheels "$TMP"
rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
echo "gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
