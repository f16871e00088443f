"""The RGB photo benchmark: random square crops of colour photographs that ship in package
registries, with whole photos held out for the test split.

Sources (nothing downloaded at run time; `bash scripts/setup.sh photos` installs them):
scikit-image's bundled `skimage/data` images and scikit-learn's two sample images (the wheels
are installed without dependencies: only their files are read, neither is imported), and the
sample pictures of Debian's `opencv-doc` package, and the photographs among the wallpapers of
Debian's `plasma-workspace-wallpapers`, `lxqt-themes` and `mate-backgrounds` (its nature folder;
the packages are downloaded and unpacked into a cache folder, not installed). Only colour
photographs are listed: no charts, logos, grayscale or synthetic pictures. Of the wallpapers,
the illustrations, 3-D renders, gradients and logo screens are left out, and so are two nearly
grayscale photographs (plasma's ColdRipple and Grey) and one picture that may be a render
(plasma's Volna); of the 32 photographs kept, every fourth of each package in name order is held
out for the test split. A stereo pair or two views of one scene
count as one photo for the split, so test crops never share a scene with training crops.

Each crop is a square of random side (log-uniform between the output size and half the
photo's short side) at a random position, randomly mirrored, resized with a Lanczos filter
to `resolution`. Crops are a pure function of (split, index, resolution): the benchmark is
the same on every machine that has the photos.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError

PHOTOS = "photos"  # the data.source name
TRAIN_CROPS, TEST_CROPS = 20_000, 2_000

# (where, file names): "skimage", "sklearn" are package data folders, "opencv" Debian's folder.
# Photos in one tuple show one scene (stereo pairs, two exposures): they share a split.
TRAIN_PHOTOS: list[tuple[str, tuple[str, ...]]] = [
    ("skimage", ("astronaut.png",)),
    ("skimage", ("coffee.png",)),
    ("skimage", ("ihc.png",)),
    ("skimage", ("motorcycle_left.png", "motorcycle_right.png")),
    ("skimage", ("rocket.jpg",)),
    ("skimage", ("retina.jpg",)),
    ("sklearn", ("china.jpg",)),
    ("opencv", ("HappyFish.jpg",)),
    ("opencv", ("aero1.jpg", "aero3.jpg")),
    ("opencv", ("aloeL.jpg", "aloeR.jpg")),
    ("opencv", ("apple.jpg",)),
    ("opencv", ("baboon.jpg",)),
    ("opencv", ("building.jpg",)),
    ("opencv", ("butterfly.jpg",)),
    ("opencv", ("ela_original.jpg", "ela_modified.jpg")),
    ("opencv", ("graf1.png", "graf3.png")),
    ("opencv", ("left.jpg", "right.jpg")),
    ("opencv", ("leuvenA.jpg", "leuvenB.jpg")),
    ("opencv", ("licenseplate_motion.jpg",)),
    ("opencv", ("messi5.jpg",)),
    ("opencv", ("orange.jpg",)),
    ("opencv", ("pca_test1.jpg",)),
    ("opencv", ("rubberwhale1.png", "rubberwhale2.png")),
    ("opencv", ("starry_night.jpg",)),
    ("opencv", ("stuff.jpg",)),
    *(("plasma", (f"{n}/contents/images/2560x1600.jpg",)) for n in ("BytheWater", "ColorfulCups", "DarkestHour")),
    *(("plasma", (f"{n}/contents/images/2560x1600.jpg",)) for n in ("FallenLeaf", "Kite", "OneStandsOut")),
    ("plasma", ("summer_1am/contents/images/2560x1600.jpg",)),
    *(("lxqt", (n,)) for n in ("Butterfly-Kenneth-Wimer.jpg", "Valendas.png", "after-the-rain.jpg", "beam.png")),
    *(("lxqt", (n,)) for n in ("butterfly.png", "cloud.png", "flowers.png", "fog.jpg", "this-is-not-windows.jpg")),
    *(("mate", (n,)) for n in ("Aqua.jpg", "Blinds.jpg", "Dune.jpg", "Garden.jpg", "GreenMeadow.jpg", "LadyBird.jpg")),
    *(("mate", (n,)) for n in ("Storm.jpg", "TwoWings.jpg", "Wood.jpg")),
]
TEST_PHOTOS: list[tuple[str, tuple[str, ...]]] = [
    ("skimage", ("chelsea.png",)),
    ("sklearn", ("flower.jpg",)),
    ("opencv", ("fruits.jpg",)),
    ("opencv", ("home.jpg",)),
    ("opencv", ("smarties.png",)),
    ("opencv", ("squirrel_cls.jpg",)),
    ("opencv", ("board.jpg",)),
    *(("plasma", (f"{n}/contents/images/2560x1600.jpg",)) for n in ("EveningGlow", "Path")),
    *(("lxqt", (n,)) for n in ("appleflower.png", "drop.png")),
    *(("mate", (n,)) for n in ("FreshFlower.jpg", "RainDrops.jpg", "YellowFlower.jpg")),
]
# Where each wallpaper package keeps them (under / when installed, under the cache when unpacked).
WALLPAPERS = {
    "plasma": "usr/share/wallpapers",
    "lxqt": "usr/share/lxqt/wallpapers",
    "mate": "usr/share/backgrounds/mate/nature",
}
OPENCV_DIR = "/usr/share/doc/opencv-doc/examples/data"
INSTALL_HINT = (
    "install them with `bash scripts/setup.sh photos` (pip: scikit-image and scikit-learn with "
    "--no-deps; Debian: opencv-doc, and plasma-workspace-wallpapers, lxqt-themes and mate-backgrounds "
    "unpacked into UL_PHOTOS_CACHE, by default ~/.cache/unified_latents/photos), or set UL_PHOTOS_DIR "
    "to a folder holding the files"
)


def _cache() -> Path:
    return Path(os.environ.get("UL_PHOTOS_CACHE", "~/.cache/unified_latents/photos")).expanduser()


def _package_dir(module: str, sub: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / sub


def _roots() -> dict[str, list[Path]]:
    """Folders searched per source; UL_PHOTOS_DIR (one folder, every file) comes first."""
    extra = [Path(p) for p in os.environ.get("UL_PHOTOS_DIR", "").split(os.pathsep) if p]
    found = {
        "skimage": _package_dir("skimage", "data"),
        "sklearn": _package_dir("sklearn", "datasets/images"),
        "opencv": Path(OPENCV_DIR),
    }
    roots = {k: extra + ([v] if v is not None else []) for k, v in found.items()}
    for k, sub in WALLPAPERS.items():
        roots[k] = [*extra, _cache() / sub, Path("/") / sub]
    return roots


def photo_files(split: str) -> list[list[Path]]:
    """The photo files of a split, grouped by scene; a clear error names every missing file."""
    roots = _roots()
    groups, missing = [], []
    for where, names in {"train": TRAIN_PHOTOS, "test": TEST_PHOTOS}[split]:
        group = []
        for name in names:
            hit = next((r / name for r in roots[where] if (r / name).is_file()), None)
            if hit is None:
                missing.append(f"{where}:{name}")
            else:
                group.append(hit)
        groups.append(group)
    if missing:
        raise DataError(
            f"the RGB photo benchmark is missing {len(missing)} photos ({', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}); {INSTALL_HINT}"
        )
    return groups


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def photo_crops(split: str, resolution: int, count: int | None = None, seed: int = 0) -> torch.Tensor:
    """uint8 [count, 3, resolution, resolution] crops of the split's photos (see module doc).

    Every scene gets the same share of crops; inside a scene the views alternate."""
    count = count if count is not None else (TRAIN_CROPS if split == "train" else TEST_CROPS)
    groups = [[_read_rgb(p) for p in g] for g in photo_files(split)]
    rng = np.random.default_rng([seed, {"train": 1, "test": 2}[split], resolution])
    out = np.empty((count, resolution, resolution, 3), dtype=np.uint8)
    for i in range(count):
        group = groups[i % len(groups)]
        im = group[(i // len(groups)) % len(group)]
        w, h = im.size
        lo, hi = math.log(resolution), math.log(max(resolution, min(w, h) // 2))
        side = int(round(math.exp(rng.uniform(lo, hi))))
        left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        crop = im.resize((resolution, resolution), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side))
        arr = np.asarray(crop, dtype=np.uint8)
        out[i] = arr[:, ::-1] if rng.random() < 0.5 else arr
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
