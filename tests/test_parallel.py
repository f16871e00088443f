"""Scale-out pieces of training: per-row noise, the EMA of trainable parameters only, the layout
(activation checkpointing, frozen networks outside the optimizer) and FSDP2 on 2 processes."""

import json
import math
import shutil
import subprocess
from itertools import pairwise

import pytest
import torch
from helpers import assert_tree_equal, load_state, make_npz, run_ul, ul_command, ul_env

from unified_latents.config import apply_overrides
from unified_latents.objectives import BaseModel, UnifiedLatents
from unified_latents.objectives.noise import BatchNoise, step_key
from unified_latents.presets import get_preset
from unified_latents.training.ema import EMA
from unified_latents.training.parallel import prepare

# --------------------------------------------------------------------------- per-row noise


def _draw(rng: BatchNoise) -> dict:
    return {
        "t": rng.stratified(True),
        "iid": rng.stratified(False),
        "eps": rng.normal((3, 4)),
        "u": rng.uniform(),
        "k": rng.randint(7),
    }


@pytest.mark.parametrize("splits", [[0, 32, 64], [0, 16, 32, 48, 64], [0, 1, 63, 64]])
def test_rows_drawn_by_any_split_of_processes_equal_one_draw(splits):
    key = step_key(3, 11)
    whole = _draw(BatchNoise(key, 64))
    parts = [_draw(BatchNoise(key, 64, lo, hi)) for lo, hi in pairwise(splits)]
    for k, v in whole.items():
        assert torch.equal(torch.cat([p[k] for p in parts]), v), k


def test_stratified_t_puts_one_draw_in_each_stratum_of_the_global_batch():
    n = 48
    t = torch.cat([BatchNoise(step_key(0, 5), n, lo, lo + 12).stratified(True) for lo in range(0, n, 12)])
    assert sorted((t * n).floor().long().tolist()) == list(range(n))
    assert not torch.equal(t, BatchNoise(step_key(0, 6), n).stratified(True))  # a new offset each step


def test_row_noise_has_the_statistics_of_a_global_draw():
    # Per-row generators must still give iid N(0, 1) and U[0, 1): moments, no correlation
    # between neighbouring rows or between successive draws of one row, and fresh numbers each step.
    rng = BatchNoise(step_key(1, 2), 2048)
    a, b, u = rng.normal((64,)), rng.normal((64,)), rng.uniform((8,))
    n = a.numel()
    assert abs(a.mean()) < 5 / math.sqrt(n) and abs(a.std() - 1) < 5 / math.sqrt(2 * n)
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.numel())
    for x, y in ((a[:-1], a[1:]), (a, b)):
        corr = torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1]
        assert abs(corr) < 5 / math.sqrt(x.numel())
    assert not torch.equal(a[:4], BatchNoise(step_key(1, 3), 2048, 0, 4).normal((64,)))


def test_training_losses_match_a_global_draw_in_distribution():
    # The stage-1 loss under the per-row scheme against the old single-generator draw of the
    # whole batch: the same mean over many batches, within the sampling error.
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    model = UnifiedLatents(cfg).eval()
    x = torch.rand(32, *model.x_shape) * 2 - 1
    new, old = [], []
    with torch.no_grad():
        for s in range(24):
            new.append(model(x, None, model.draw_noise(BatchNoise(step_key(0, s), 32))).total)
            g = torch.Generator().manual_seed(s)
            noise = {
                "t_z": torch.rand(32, generator=g),
                "t_x": torch.rand(32, generator=g),
                **{
                    k: torch.randn(32, *sh, generator=g)
                    for k, sh in (("eps_z0", model.z_shape), ("eps_z", model.z_shape), ("eps_x", model.x_shape))
                },
            }
            old.append(model(x, None, noise).total)
    new, old = torch.cat(new), torch.cat(old)
    se = math.sqrt(new.var() / new.numel() + old.var() / old.numel())
    assert abs(new.mean() - old.mean()) < 4 * se, (new.mean(), old.mean(), se)


# --------------------------------------------------------------------------- EMA and layout


def _base_model():
    torch.manual_seed(0)
    return BaseModel(get_preset("tiny", "base"), UnifiedLatents(get_preset("tiny")))


def test_ema_shares_frozen_stage1_and_averages_only_trainable_parameters():
    model = _base_model()
    ema = EMA(model, decay=0.9)
    for p, q in zip(model.stage1.parameters(), ema.model.stage1.parameters(), strict=True):
        assert p is q  # shared, not copied
    for p, q in zip(model.net.parameters(), ema.model.net.parameters(), strict=True):
        assert p is not q and torch.equal(p, q)
    before = {n: p.clone() for n, p in ema.model.net.named_parameters()}
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(1.0)
    ema.update(model, step=1000)  # decay 0.9: e <- e + 0.1 (p - e)
    for n, p in ema.model.net.named_parameters():
        torch.testing.assert_close(p, before[n] + 0.1)


def test_optimizer_holds_only_trainable_parameters():
    model = _base_model()
    layout = prepare(get_preset("tiny", "base"), model, EMA(model, 0.99), torch.device("cpu"))
    held = {id(p) for g in layout.opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.net.parameters()}


def _laid_out_loss(override: str):
    """The stage-1 loss of a fixed tiny model and batch after `prepare` with one train.* override."""
    cfg = get_preset("tiny")
    torch.manual_seed(0)
    model = UnifiedLatents(cfg)
    prepare(apply_overrides(cfg, [override]), model, EMA(model, 0.99), torch.device("cpu"))
    x = torch.rand(4, *model.x_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return model, model(x, None, model.draw_noise(BatchNoise(7, 4))).total


def test_activation_checkpointing_gives_the_same_gradients():
    grads = []
    for ac in ("false", "true"):
        model, loss = _laid_out_loss(f"train.activation_checkpointing={ac}")
        loss.sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert_tree_equal(grads[0], grads[1], exact=False, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_blocks_give_the_same_loss():
    eager, compiled = (_laid_out_loss(f"train.compile={c}")[1] for c in ("false", "true"))
    torch.testing.assert_close(eager, compiled, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- FSDP2 on 2 processes (gloo)

ARGS = [
    "--preset",
    "tiny",
    "--no-progress",
    "--set",
    "train.ckpt_every=32",
    "--set",
    "train.image_every=0",
    "--set",
    "train.log_every=1",
]


def _torchrun(*args):
    r = run_ul("train", *args, nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _stats(d):
    return [json.loads(ln) for ln in (d / "stats.jsonl").read_text().splitlines()]


@pytest.mark.slow  # over 15 s on 2 cores: opt in with -m slow
def test_fsdp_two_processes_match_ddp_and_one_process_and_resume_bitwise(tmp_path):
    data = make_npz(tmp_path / "d.npz")
    common = [*ARGS, "--data", str(data), "--set", "train.total_samples=64"]
    fsdp = [*common, "--set", "train.shard=fsdp"]
    one, ddp, fs, fs_micro, fs_resumed = (tmp_path / n for n in ("one", "ddp", "fsdp", "fsdp-micro", "fsdp-resumed"))
    assert run_ul("train", *common, "--outdir", str(one)).returncode == 0
    _torchrun(*common, "--outdir", str(ddp))
    _torchrun(*fsdp, "--outdir", str(fs))
    _torchrun(*fsdp, "--set", "train.micro_batch=2", "--outdir", str(fs_micro))  # accumulation without sync
    for other in (one, ddp, fs_micro):
        for r1, r2 in zip(_stats(fs), _stats(other), strict=True):
            assert math.isclose(r1["loss"], r2["loss"], rel_tol=1e-5), (r1, r2)
            assert math.isclose(r1["grad_norm"], r2["grad_norm"], rel_tol=1e-4), (r1, r2)
        s1, s2 = load_state(fs / "state-000000000064"), load_state(other / "state-000000000064")
        assert_tree_equal(s1["model"], s2["model"], exact=False, rtol=0, atol=2e-3, where="model")
    _torchrun(*fsdp, "--outdir", str(fs_resumed), "--until", "32")
    resharded = tmp_path / "fsdp-then-one-process"
    shutil.copytree(fs_resumed, resharded)
    r = _torchrun(*fsdp, "--outdir", str(fs_resumed))
    assert "resuming" in r.stdout
    a, b = load_state(fs / "state-000000000064"), load_state(fs_resumed / "state-000000000064")
    for key in ("model", "ema", "optim", "samples"):
        assert_tree_equal(a[key], b[key], where=key)
    # The 2-process sharded state resumed by one process (DCP reshards it): the same optimisation.
    r = run_ul("train", *fsdp, "--outdir", str(resharded))
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    c = load_state(resharded / "state-000000000064")
    assert_tree_equal(a["model"], c["model"], exact=False, rtol=0, atol=2e-3, where="model")


@pytest.mark.slow  # over 15 s on 2 cores: opt in with -m slow
def test_fsdp_with_bf16_parameters_trains_as_ddp_under_autocast(tmp_path):
    """accel.amp forced on the CPU: FSDP2 with bf16 parameters (fp32 reduction, the log-SNR kept
    fp32) and DDP under bf16 autocast log the same losses within bf16's rounding."""
    data = make_npz(tmp_path / "d.npz")
    common = [*ARGS, "--data", str(data), "--set", "train.total_samples=32", "--set", "accel.amp=on"]
    _torchrun(*common, "--outdir", str(tmp_path / "ddp"))
    _torchrun(*common, "--set", "train.shard=fsdp", "--outdir", str(tmp_path / "fsdp"))
    rows = list(zip(_stats(tmp_path / "ddp"), _stats(tmp_path / "fsdp"), strict=True))
    assert len(rows) == 4
    for r1, r2 in rows:
        assert math.isclose(r1["loss"], r2["loss"], rel_tol=3e-2), (r1, r2)


# --------------------------------------------------------------------------- memory estimate (ul info)


def test_memory_estimate_counts_state_exactly_and_activations_per_example():
    from unified_latents.eval.memory import training_memory

    cfg = get_preset("tiny")

    def meta():
        with torch.device("meta"):
            return UnifiedLatents(cfg)

    x_shape = meta().x_shape
    one = training_memory(meta, x_shape, apply_overrides(cfg, ["train.micro_batch=4"]), gpus=4)
    two = training_memory(meta, x_shape, apply_overrides(cfg, ["train.micro_batch=8"]), gpus=4)
    n = sum(p.numel() for p in UnifiedLatents(cfg).parameters())
    assert one["trainable_params"] == n and one["frozen_params"] == 0
    state = one["ddp_gib"] - one["activations_gib"]
    assert math.isclose(state * 2**30, 20 * n)  # weights, gradients, 2 Adam moments, EMA: 4 B each
    assert math.isclose(two["activations_gib"], 2 * one["activations_gib"], rel_tol=1e-9)  # per example
    assert one["activations_ckpt_gib"] < 0.7 * one["activations_gib"]
    assert one["fsdp_gib"] < one["ddp_gib"]


def test_ul_info_prints_memory_per_gpu_for_ddp_and_fsdp():
    r = run_ul("info", "--preset", "imagenet512")
    assert r.returncode == 0, r.stderr
    assert "8 GPUs, micro-batch 32" in r.stdout and "DDP" in r.stdout and "FSDP" in r.stdout
    r = run_ul("info", "--preset", "imagenet512", "--gpus", "16", "--json")
    mem = json.loads(r.stdout)["memory"]
    assert mem["gpus"] == 16 and mem["micro_batch"] == 16 and mem["fsdp_gib"] < mem["ddp_gib"]


@pytest.mark.slow  # over 15 s on 2 cores: opt in with -m slow
def test_sigterm_to_torchrun_checkpoints_every_rank_and_the_rerun_resumes(tmp_path):
    # Preemption: the scheduler sends SIGTERM to torchrun, which forwards it to the workers; they
    # agree to stop at the next step, write the state (each its shards) and exit.
    import signal
    import time

    data, out = make_npz(tmp_path / "d.npz"), tmp_path / "run"
    args = [
        *ARGS,
        "--data",
        str(data),
        "--set",
        "train.total_samples=800000",
        "--set",
        "train.ckpt_every=0",
        "--set",
        "train.shard=fsdp",
        "--outdir",
        str(out),
    ]
    cmd = ul_command(["train", *args], nproc=2)
    proc = subprocess.Popen(cmd, env=ul_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not ((out / "stats.jsonl").exists() and _stats(out)):
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert "interrupted at" in stdout, stdout[-2000:]
    (state,) = sorted(out.glob("state-*"))
    samples = json.loads((state / "state.json").read_text())["samples"]
    assert samples >= 8 and samples == int(state.name[-12:])
    r = _torchrun(*args[:-2], "--outdir", str(out), "--until", str(samples + 8))
    assert f"resuming {out} at {samples:,} samples" in r.stdout
