#!/usr/bin/env bash
# Builds the sdist and the wheel, installs the wheel (not the source tree) into a fresh virtual
# environment and runs it from outside the repository: `ul --help`, `ul info`, a tiny stage-1
# run. The environment sees the system's site-packages (PyTorch and the other requirements that
# scripts/setup.sh installed), so nothing large is downloaded; the wheel's declared requirements
# are then checked against what is installed. Needs: pip install build (the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building the sdist and the wheel ..."
"$PY" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
ls "$work/dist"
# --without-pip: no ensurepip needed (Debian's python3 lacks it without python3-venv); the outer pip
# installs the wheel into that environment (pip --python)
"$PY" -m venv --without-pip --system-site-packages "$work/venv"
"$PY" -m pip --python "$work/venv/bin/python" install -q --no-deps --root-user-action=ignore "$work"/dist/*.whl
cd "$work"
"$work/venv/bin/python" - <<'PY'
import importlib.metadata as md, pathlib, sys
from packaging.requirements import Requirement
import unified_latents
where = pathlib.Path(unified_latents.__file__).resolve()
assert str(where).startswith(sys.prefix), f"imported from {where}, not from the wheel installed in {sys.prefix}"
missing = []
for text in md.requires("unified-latents") or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an optional extra's requirement
    try:
        have = md.version(req.name)
    except md.PackageNotFoundError:
        missing.append(f"{req} (not installed)")
        continue
    if not req.specifier.contains(have, prereleases=True):
        missing.append(f"{req} (have {have})")
assert not missing, f"requirements of the wheel not met: {missing}"
print(f"unified_latents {unified_latents.__version__} from {where.parent}; its requirements are met")
PY
"$work/venv/bin/ul" --help >/dev/null
"$work/venv/bin/ul" info --preset imagenet512 >/dev/null
"$work/venv/bin/ul" train --preset tiny --outdir "$work/run" --no-progress --set train.total_samples=16 \
    --set train.image_every=0 >/dev/null
test -f "$work/run/artifact.safetensors"
echo "the wheel installs and runs outside the source tree: ul --help, ul info, a tiny stage-1 run"
