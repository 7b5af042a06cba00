#!/usr/bin/env bash
# What a user gets from the package index, checked before it gets there (`make dist-check`):
# build the sdist and the wheel (the wheel from the sdist), `twine check` them, check that
# LICENSE/README/CHANGELOG are in them, install the wheel in a fresh venv outside the source
# tree without extras and run the core smoke test, then add the [data] extra and run its test.
#
#   scripts/dist_check.sh DEV_PYTHON [BASE_PYTHON]
#
# DEV_PYTHON has build and twine (the test extra); BASE_PYTHON makes the fresh venv.
# torch comes through constraints.txt (the CPU build pinned for CI), never resolved freely.
set -euo pipefail
dev=${1:?usage: scripts/dist_check.sh DEV_PYTHON [BASE_PYTHON]}
base=${2:-python3.11}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/normkit-dist.XXXXXX")
trap 'rm -rf "$work"' EXIT

if ! "$dev" -m build --outdir "$work/dist" "$root" >"$work/build.log" 2>&1; then
    cat "$work/build.log"
    exit 1
fi
"$dev" -m twine check --strict "$work"/dist/*
"$dev" - "$work/dist" <<'PY'
import sys, tarfile, zipfile
from pathlib import Path

dist = Path(sys.argv[1])
(wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
names = zipfile.ZipFile(wheel).namelist()
missing = [f for f in ("licenses/LICENSE", "normkit/py.typed", "normkit/__main__.py")
           if not any(n.endswith(f) for n in names)]
top = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
missing += [f"{sdist.name}: {f}" for f in ("LICENSE", "README.md", "CHANGELOG.md") if f not in top]
if missing:
    sys.exit(f"missing from the distributions: {missing}")
print(f"{wheel.name}: {len(names)} files; {sdist.name}: LICENSE, README.md, CHANGELOG.md")
PY

wheel=$(ls "$work"/dist/*.whl)
"$base" -m venv "$work/venv"
"$work/venv/bin/pip" install -q -c "$root/constraints.txt" "$wheel"
cp "$root/scripts/smoke_installed.py" "$work/"
cd "$work"
venv/bin/python smoke_installed.py core
venv/bin/pip install -q -c "$root/constraints.txt" "$wheel[data]"
venv/bin/python smoke_installed.py data
