"""Post-hoc EMA (training/posthoc_ema.py): any EMA length rebuilt from the snapshots of two."""

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import make_npz
from safetensors.torch import load_file
from test_bad_inputs import _cli

from unified_latents.errors import UserError
from unified_latents.training.posthoc_ema import (
    PowerEMA,
    apply_ema_length,
    gamma_of,
    reconstruct,
    sigma_rel,
    write_snapshot,
)


def test_sigma_rel_and_gamma_are_inverse_and_match_the_published_exponents():
    assert gamma_of(0.05) == pytest.approx(16.97, abs=0.01) and gamma_of(0.10) == pytest.approx(6.94, abs=0.01)
    for s in (0.01, 0.075, 0.2):
        assert sigma_rel(gamma_of(s)) == pytest.approx(s, rel=1e-9)
    with pytest.raises(UserError, match="EMA length"):
        gamma_of(0.3)


def test_a_power_ema_weighs_step_tau_as_the_closed_form_says():
    """beta_t = (1 - 1/t)^(gamma + 1) gives step tau (1-based) the weight
    (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1): ~tau^gamma, summing to 1."""
    net = torch.nn.Linear(1, 1, bias=False)
    ema = PowerEMA(net, 0.1)
    thetas = torch.randn(300, dtype=torch.float64)
    for step, th in enumerate(thetas):
        with torch.no_grad():
            net.weight.fill_(float(th))
        ema.update(net, step)
    g, t = ema.gamma, len(thetas)
    tau = torch.arange(1, t + 1, dtype=torch.float64)
    w = (tau ** (g + 1) - (tau - 1) ** (g + 1)) / t ** (g + 1)
    assert float(w.sum()) == pytest.approx(1.0)
    assert float(ema.model.weight) == pytest.approx(float((w * thetas).sum()), abs=1e-5)


def test_a_rebuilt_ema_matches_one_tracked_directly(tmp_path):
    """Noisy drifting weights over 2,000 steps; power EMAs of sigma_rel 0.05 and 0.10 snapshotted
    every 100 steps. The rebuilt 0.075 EMA equals a directly tracked 0.075 EMA to 0.1% of how far
    the tracked profiles differ; at a tracked length it is that profile's last snapshot."""
    torch.manual_seed(0)
    net = torch.nn.Linear(64, 1, bias=False)
    tracked = [PowerEMA(net, s) for s in (0.05, 0.10)]
    direct = PowerEMA(net, 0.075)
    w = torch.zeros(64)
    for step in range(2000):
        w += 0.05 * torch.randn(64) + 0.01
        with torch.no_grad():
            net.weight.copy_(w[None] + 0.5 * torch.randn(1, 64))
        for e in (*tracked, direct):
            e.update(net, step)
        if (step + 1) % 100 == 0:
            for e in tracked:
                write_snapshot(tmp_path, e, e.model.state_dict(), step + 1, 8 * (step + 1))
    assert len(list(tmp_path.glob("sigma-*.safetensors"))) == 40
    rebuilt, info = reconstruct(tmp_path, 0.075)
    want = direct.model.weight.detach().double()
    spread = float((tracked[0].model.weight.double() - tracked[1].model.weight.double()).norm())
    assert float((rebuilt["weight"] - want).norm()) < 1e-3 * spread
    assert info["snapshots"] == 40 and info["step"] == 2000 and info["profile_error"] < 0.01
    at_tracked, _ = reconstruct(tmp_path, 0.10)
    torch.testing.assert_close(at_tracked["weight"].float(), tracked[1].model.weight.detach(), rtol=0, atol=1e-4)


def _train(tmp, outdir, total, *extra):
    data = make_npz(tmp / "d.npz", n=40)
    return _cli_run(
        "train",
        "--preset",
        "tiny",
        "--no-progress",
        "--data",
        data,
        "--outdir",
        outdir,
        "--set",
        f"train.total_samples={total}",
        "--set",
        "train.posthoc_ema=[0.05,0.1]",
        "--set",
        "train.posthoc_every=8",
        "--set",
        "train.ckpt_every=16",
        *extra,
    )


_cli_run = None


@pytest.fixture(autouse=True)
def _bind_cli(capsys):
    global _cli_run
    _cli_run = lambda *a: _cli(capsys, *a)  # noqa: E731
    yield
    _cli_run = None


def test_training_snapshots_resume_exactly_and_reconstruct_uses_them(tmp_path):
    r = _train(tmp_path, tmp_path / "straight", 32)
    assert r.returncode == 0, r.stderr
    snaps = sorted(p.name for p in (tmp_path / "straight" / "posthoc-ema").iterdir())
    assert snaps == [f"sigma-{s}-{n:012d}.safetensors" for s in ("0.0500", "0.1000") for n in (8, 16, 24, 32)]
    # stopped at 16 samples and resumed to 32: the same snapshots, bit for bit
    assert _train(tmp_path, tmp_path / "resumed", 16).returncode == 0
    r = _train(tmp_path, tmp_path / "resumed", 32)
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    for name in snaps:
        a, b = (load_file(tmp_path / run / "posthoc-ema" / name) for run in ("straight", "resumed"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # the tracked lengths can not change on resume (the state holds their averages)
    r = _train(tmp_path, tmp_path / "resumed", 40, "--set", "train.posthoc_ema=[0.05]")
    assert r.returncode == 2 and "train.posthoc_ema" in r.stderr
    # `ul reconstruct --ema-length`: at a tracked length, the networks are that EMA's last snapshot
    art = tmp_path / "straight" / "artifact.safetensors"
    r = _cli_run(
        "reconstruct",
        "--artifact",
        art,
        "--data",
        tmp_path / "d.npz",
        "--count",
        "4",
        "--json",
        "--ema-length",
        "0.1",
        "--out",
        tmp_path / "rec.png",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["posthoc_ema"]["sigma_rel"] == 0.1
    from unified_latents.objectives.registry import load_model

    model, _ = load_model(art)
    apply_ema_length(model, art, 0.1)
    last = load_file(tmp_path / "straight" / "posthoc-ema" / "sigma-0.1000-000000000032.safetensors")
    params = dict(model.named_parameters())
    assert all(torch.allclose(params[k], v, atol=1e-5) for k, v in last.items())
    # an artifact whose networks are not the run's averages is refused: a distilled one, an earlier one
    from safetensors.torch import save_file

    save_file(
        load_file(art), tmp_path / "straight" / "distilled.safetensors", metadata={"distilled": "{}", "samples": "32"}
    )
    with pytest.raises(UserError, match="distilled"):
        apply_ema_length(model, tmp_path / "straight" / "distilled.safetensors", 0.1)
    save_file(load_file(art), tmp_path / "straight" / "at24.safetensors", metadata={"samples": "20"})
    with pytest.raises(UserError, match="no post-hoc EMA snapshot at 20 samples"):
        apply_ema_length(model, tmp_path / "straight" / "at24.safetensors", 0.1)
    # a run without snapshots: one error saying how to get them
    r = _train(tmp_path, tmp_path / "plain", 16, "--set", "train.posthoc_ema=[]")
    assert r.returncode == 0, r.stderr
    r = _cli_run(
        "reconstruct",
        "--artifact",
        tmp_path / "plain" / "artifact.safetensors",
        "--data",
        tmp_path / "d.npz",
        "--count",
        "4",
        "--ema-length",
        "0.1",
        "--out",
        tmp_path / "rec2.png",
    )
    assert r.returncode == 2 and "no post-hoc EMA snapshots" in r.stderr and "train.posthoc_ema" in r.stderr


def test_eval_evaluates_the_rebuilt_base_model_and_records_it(tmp_path, monkeypatch):
    """`ul eval --ema-length`: the base model handed to the evaluation carries the rebuilt EMA,
    and eval.json says which (the evaluation itself is tested in test_stage2)."""
    import unified_latents.eval.evaluate as ev

    s1 = tmp_path / "s1"
    assert _train(tmp_path, s1, 16, "--set", "train.posthoc_ema=[]").returncode == 0
    data = tmp_path / "d.npz"
    r = _cli_run(
        "train",
        "--stage",
        "base",
        "--preset",
        "tiny",
        "--no-progress",
        "--artifact",
        s1 / "artifact.safetensors",
        "--data",
        data,
        "--outdir",
        tmp_path / "b",
        "--set",
        "train.total_samples=24",
        "--set",
        "train.posthoc_ema=[0.05,0.1]",
        "--set",
        "train.posthoc_every=8",
    )
    assert r.returncode == 0, r.stderr
    seen = {}

    class _Result:
        def to_dict(self):
            return {"posthoc_ema": seen["posthoc"]}

    def fake_evaluate(model, request, posthoc=None):
        seen["net"], seen["posthoc"] = {k: v.clone() for k, v in model.net.state_dict().items()}, posthoc
        return _Result()

    monkeypatch.setattr(ev, "evaluate", fake_evaluate)
    art = tmp_path / "b" / "artifact.safetensors"
    out = ev.evaluate_artifact(art, ev.EvalRequest(ema_length=0.05))
    last = load_file(tmp_path / "b" / "posthoc-ema" / "sigma-0.0500-000000000024.safetensors")
    assert out["posthoc_ema"]["sigma_rel"] == 0.05 and out["posthoc_ema"]["snapshots"] == 6
    assert last and all(torch.allclose(seen["net"][k.removeprefix("net.")], v, atol=1e-5) for k, v in last.items())
    assert not math.isnan(out["posthoc_ema"]["profile_error"])
    assert Path(art).exists()
