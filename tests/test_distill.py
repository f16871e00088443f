"""Progressive distillation (distill.py): one round halves the steps and keeps the teacher's output."""

import numpy as np
import pytest
import torch
from helpers import make_npz, run_ul

from unified_latents.diffusion import alpha_sigma
from unified_latents.diffusion.samplers import ddim_step
from unified_latents.distill import DistillRequest, distill, student_target
from unified_latents.errors import ConfigError
from unified_latents.objectives.registry import load_model
from unified_latents.training.checkpoint import load_artifact


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distill")
    data = make_npz(tmp / "d.npz", n=64)
    fast = [
        "--preset",
        "tiny",
        "--no-progress",
        "--set",
        "train.total_samples=256",
        "--set",
        "train.image_every=0",
        "--set",
        "train.ckpt_every=0",
    ]
    assert run_ul("train", *fast, "--data", str(data), "--outdir", str(tmp / "s1")).returncode == 0
    r = run_ul(
        "train",
        "--stage",
        "base",
        *fast,
        "--data",
        str(data),
        "--artifact",
        str(tmp / "s1" / "artifact.safetensors"),
        "--outdir",
        str(tmp / "b"),
    )
    assert r.returncode == 0, r.stderr
    return tmp, data


def _mse(a, b):
    return float(((a - b) ** 2).mean())


def _distilled(tmp, run, out, req, steps_field):
    """Distil `run`'s artifact into `out`: (teacher, student), the student's config checked."""
    art = tmp / run / "artifact.safetensors"
    distill(art, tmp / out, req, progress=False)
    student, cfg = load_model(tmp / out)
    assert (cfg.sample.sampler, getattr(cfg.sample, steps_field)) == ("ddim", req.steps)
    return load_model(art)[0], student


def test_one_round_of_decoder_distillation_halves_the_steps_and_follows_the_teacher(trained):
    """The student's 2 DDIM steps land much closer to the teacher's 4 than the teacher's own 2 do."""
    tmp, data = trained
    art = tmp / "s1" / "artifact.safetensors"
    s = distill(art, tmp / "dec2.safetensors", DistillRequest("decoder", 2, 2048, 32, 1e-3), progress=False)
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
    teacher, student = _distilled(
        trained[0], "b", "base2.safetensors", DistillRequest("base", 2, 2048, 32, 1e-3), "base_steps"
    )
    seeds, labels = list(range(32)), torch.arange(32) % 10
    with torch.no_grad():
        t4, t2 = (teacher.sample_latents(seeds, labels, k, "ddim") for k in (4, 2))
        s2 = student.sample_latents(seeds, labels, 2, "ddim")
    assert _mse(s2, t4) < 0.5 * _mse(t2, t4)


def test_the_students_target_takes_it_where_two_teacher_steps_go():
    g = torch.Generator().manual_seed(0)
    z_t, z_s = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    lam_t, lam_s = (
        torch.tensor([-8.0, -2.0, 0.0, 3.0, 9.0])[:, None],
        torch.tensor([-5.0, 1.0, 2.5, 6.0, 14.0])[:, None],
    )
    x = student_target(z_t, z_s, lam_t, lam_s)
    torch.testing.assert_close(ddim_step(z_t, x, lam_t, lam_s, None), z_s, rtol=1e-5, atol=1e-5)
    a, s = alpha_sigma(lam_t)
    z_clean = torch.randn(5, 3, generator=g)  # a teacher that predicts the data exactly: the data is the target
    z_t = a * z_clean + s * torch.randn(5, 3, generator=g)
    torch.testing.assert_close(
        student_target(z_t, ddim_step(z_t, z_clean, lam_t, lam_s, None), lam_t, lam_s), z_clean, rtol=1e-4, atol=1e-4
    )


def test_a_decoder_inside_a_base_artifact_is_distilled_and_sampled_with(trained):
    """The README's use: the base artifact's decoder; `ul sample` then decodes with it in DDIM at N steps."""
    teacher, student = _distilled(
        trained[0], "b", "bdec2.safetensors", DistillRequest("decoder", 2, 256, 32, 1e-3), "decoder_steps"
    )
    assert (student.stage1.cfg.sample.sampler, student.stage1.cfg.sample.decoder_steps) == ("ddim", 2)
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, dict(teacher.named_parameters())[n])}
    assert changed and all(n.startswith("stage1.decoder.") for n in changed)
    assert not any(p.requires_grad for p in student.stage1.parameters())


def test_steps_must_be_the_teachers_halved(trained):
    tmp, _ = trained
    s1 = tmp / "s1" / "artifact.safetensors"
    with pytest.raises(ConfigError, match="halved one or more times .e.g. 2 or 1."):
        distill(s1, tmp / "x.safetensors", DistillRequest("decoder", 3), progress=False)
    with pytest.raises(ConfigError, match="base"):
        distill(s1, tmp / "x.safetensors", DistillRequest("base", 2), progress=False)
    assert not (tmp / "x.safetensors").exists()


def test_what_cannot_be_distilled_is_one_clear_error(trained, tmp_path):
    tmp, data = trained
    fast = [
        "--preset",
        "tiny",
        "--no-progress",
        "--set",
        "train.total_samples=8",
        "--set",
        "train.image_every=0",
        "--data",
        str(data),
    ]
    assert run_ul("train", "--stage", "pixel", *fast, "--outdir", str(tmp_path / "px")).returncode == 0
    with pytest.raises(ConfigError, match="pixel-diffusion model has no decoder"):
        distill(tmp_path / "px" / "artifact.safetensors", tmp_path / "x.safetensors", DistillRequest("decoder", 2))
    assert (
        run_ul("train", *fast, "--set", "diffusion.decoder_kind=mse", "--outdir", str(tmp_path / "mse")).returncode == 0
    )
    with pytest.raises(ConfigError, match="regression"):
        distill(tmp_path / "mse" / "artifact.safetensors", tmp_path / "x.safetensors", DistillRequest("decoder", 2))
    r = run_ul(
        "distill",
        "--artifact",
        str(tmp / "s1" / "artifact.safetensors"),
        "--part",
        "decoder",
        "--steps",
        "3",
        "--out",
        str(tmp_path / "y.safetensors"),
    )
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
