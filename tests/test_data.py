"""Data loading: sources, conversions, padding, deterministic order."""

import numpy as np
import pytest
import torch
from conftest import has_fmnist
from PIL import Image

from unified_latents.config import DataConfig
from unified_latents.data import DataOrder, crop_pad, load_images, to_float, to_uint8


def test_uint8_float_round_trip():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(to_float(x)), x)
    assert to_float(x).min() == -1 and to_float(x).max() == 1


def test_folder_any_mode_resized_and_cropped(tmp_path):
    Image.fromarray(np.zeros((30, 60, 3), np.uint8)).save(tmp_path / "a.png")  # RGB, wide
    Image.fromarray(np.full((50, 40), 200, np.uint8)).save(tmp_path / "b.jpg")  # gray, tall
    Image.fromarray(np.full((8, 8, 4), 255, np.uint8), "RGBA").save(tmp_path / "c.png")
    for ch in (1, 3):
        d = load_images(DataConfig(source=str(tmp_path), resolution=16, channels=ch, pad=0))
        assert d.images.shape == (3, ch, 16, 16) and d.images.dtype == torch.uint8
        assert d.labels is None


def test_folder_labels_from_subfolders(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / cls / "x.png")
    d = load_images(DataConfig(source=str(tmp_path), resolution=8, channels=1, pad=0))
    assert d.labels.tolist() == [0, 1]


def test_npz_nhwc_and_padding(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (5, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=arr, labels=np.arange(5))
    d = load_images(DataConfig(source=str(tmp_path / "a.npz"), resolution=16, channels=3, pad=2))
    assert d.images.shape == (5, 3, 16, 16)
    assert torch.equal(crop_pad(d.images, 2), torch.from_numpy(arr).permute(0, 3, 1, 2))
    assert d.images[:, :, :2].sum() == 0 and d.labels.tolist() == list(range(5))


@pytest.mark.skipif(not has_fmnist(), reason="needs the dataset-fashion-mnist Debian package")
def test_fmnist_padded_to_32():
    d = load_images(DataConfig())
    assert d.images.shape == (60000, 1, 32, 32) and d.labels.max() == 9
    t = load_images(DataConfig(), "fmnist", "test")
    assert t.images.shape == (10000, 1, 32, 32)
    assert crop_pad(t.images, 2).shape[-1] == 28


def test_data_order_depends_only_on_seed_and_position():
    o = DataOrder(10, seed=3)
    a = o.indices(0, 25)
    b = torch.cat([DataOrder(10, 3).indices(0, 7), DataOrder(10, 3).indices(7, 18)])
    assert torch.equal(a, b)
    assert sorted(a[:10].tolist()) == list(range(10)) and sorted(a[10:20].tolist()) == list(range(10))
    assert not torch.equal(a[:10], a[10:20])  # reshuffled each epoch
