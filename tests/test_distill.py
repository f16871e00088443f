"""Progressive distillation (distill.py): one round halves the steps and keeps the teacher's output."""

import numpy as np
import pytest
import torch

from helpers import make_npz, run_ul
from unified_latents.distill import distill
from unified_latents.errors import ConfigError
from unified_latents.objectives.registry import load_model
from unified_latents.training.checkpoint import load_artifact


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    data = make_npz(tmp / "d.npz", n=64)
    fast = ["--preset", "tiny", "--no-progress", "--set", "train.total_samples=256", "--set", "train.image_every=0",
            "--set", "train.ckpt_every=0"]
    assert run_ul("train", *fast, "--data", str(data), "--outdir", str(tmp / "s1")).returncode == 0
    r = run_ul("train", "--stage", "base", *fast, "--data", str(data), "--artifact", str(tmp / "s1" / "artifact.safetensors"),
               "--outdir", str(tmp / "b"))
    assert r.returncode == 0, r.stderr
    return tmp, data


def _mse(a, b):
    return float(((a - b) ** 2).mean())


def test_one_round_of_decoder_distillation_halves_the_steps_and_follows_the_teacher(trained):
    """The student's 2 DDIM steps land much closer to the teacher's 4 than the teacher's own 2 do."""
    tmp, data = trained
    art = tmp / "s1" / "artifact.safetensors"
    s = distill(art, "decoder", 2, tmp / "dec2.safetensors", samples_per_round=2048, batch=32, lr=1e-3, progress=False)
    assert [(r["teacher_steps"], r["student_steps"]) for r in s["rounds"]] == [(4, 2)]
    teacher, _ = load_model(art)
    student, cfg = load_model(tmp / "dec2.safetensors")
    assert (cfg.sample.sampler, cfg.sample.decoder_steps) == ("ddim", 2)
    assert load_artifact(tmp / "dec2.safetensors")[2]["kind"] == load_artifact(art)[2]["kind"]
    for name, p in student.named_parameters():  # only the decoder was trained
        if not name.startswith("decoder."):
            assert torch.equal(p, dict(teacher.named_parameters())[name]), name
    x = torch.from_numpy(np.load(data)["images"][:16]).float()[:, None] / 127.5 - 1
    seeds = list(range(16))
    with torch.no_grad():
        t4, t2 = (teacher.reconstruct(x, seeds, k, "ddim") for k in (4, 2))
        s2 = student.reconstruct(x, seeds, 2, "ddim")
    assert _mse(s2, t4) < 0.5 * _mse(t2, t4)


def test_one_round_of_base_distillation_follows_the_teacher(trained):
    tmp, _ = trained
    art = tmp / "b" / "artifact.safetensors"
    distill(art, "base", 2, tmp / "base2.safetensors", samples_per_round=2048, batch=32, lr=1e-3, progress=False)
    teacher, _ = load_model(art)
    student, cfg = load_model(tmp / "base2.safetensors")
    assert (cfg.sample.sampler, cfg.sample.base_steps) == ("ddim", 2)
    seeds, labels = list(range(32)), torch.arange(32) % 10
    with torch.no_grad():
        t4, t2 = (teacher.sample_latents(seeds, labels, k, "ddim") for k in (4, 2))
        s2 = student.sample_latents(seeds, labels, 2, "ddim")
    assert _mse(s2, t4) < 0.5 * _mse(t2, t4)


def test_steps_must_be_the_teachers_halved(trained):
    tmp, _ = trained
    with pytest.raises(ConfigError, match="halved"):
        distill(tmp / "s1" / "artifact.safetensors", "decoder", 3, tmp / "x.safetensors", progress=False)
    with pytest.raises(ConfigError, match="base"):
        distill(tmp / "s1" / "artifact.safetensors", "base", 2, tmp / "x.safetensors", progress=False)
