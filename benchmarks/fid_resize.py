"""How much the resize to Inception's 299x299 moves FID features: TensorFlow 1's bilinear (the
reference FID's, this project's default) against PyTorch's half-pixel bilinear (earlier versions').

    python benchmarks/fid_resize.py [--count 500]

Prints the mean and median relative change of each image's pool3 features, and the FID between
the two feature sets of the same images (what the resize alone adds to a comparison)."""

import argparse

import numpy as np

from unified_latents.config import DataConfig
from unified_latents.data import load_images
from unified_latents.eval.fid import InceptionFeatures, fid_from_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=500, help="Fashion-MNIST test images (default 500)")
    args = ap.parse_args()
    x = load_images(DataConfig(pad=0, resolution=28), "fmnist", "test").images[: args.count]  # the original 28x28
    tf1 = InceptionFeatures(None, "cpu", resize="tf1")(x, batch=100)
    torch_ = InceptionFeatures(None, "cpu", resize="torch")(x, batch=100)
    rel = np.linalg.norm(tf1 - torch_, axis=1) / np.linalg.norm(torch_, axis=1)
    print("| images | relative feature change, mean / median | FID between the two resizes |")
    print("|---|---|---|")
    print(
        f"| {args.count} Fashion-MNIST test | {rel.mean():.3f} / {np.median(rel):.3f} | "
        f"{fid_from_features(tf1, torch_):.2f} |"
    )


if __name__ == "__main__":
    main()
