"""The training loop: exact resume, DDP equivalence, the non-finite guard, atomic files."""

import json
import math
import sys

import pytest
import torch
from helpers import assert_tree_equal, load_script, load_state, make_npz, run_ul

from unified_latents.config import apply_overrides
from unified_latents.data import load_images
from unified_latents.errors import ConfigError, TrainingError
from unified_latents.objectives import UnifiedLatents
from unified_latents.presets import get_preset
from unified_latents.training import lr_at, train

ARGS = [
    "--preset",
    "tiny",
    "--no-progress",
    "--set",
    "train.total_samples=64",
    "--set",
    "train.ckpt_every=32",
    "--set",
    "train.image_every=0",
]


def test_resume_is_bitwise_equal_to_a_straight_run(tmp_path):
    data = make_npz(tmp_path / "d.npz")
    a, b = tmp_path / "a", tmp_path / "b"
    r = run_ul("train", *ARGS, "--data", str(data), "--outdir", str(a))
    assert r.returncode == 0, r.stderr
    r = run_ul("train", *ARGS, "--data", str(data), "--outdir", str(b), "--until", "32")
    assert r.returncode == 0 and "paused: 32 samples" in r.stdout, r.stderr
    assert not (b / "state-000000000064").exists()
    r = run_ul("train", *ARGS, "--data", str(data), "--outdir", str(b))  # the same command resumes
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    sa, sb = load_state(a / "state-000000000064"), load_state(b / "state-000000000064")
    for key in ("model", "ema", "optim", "samples"):
        assert_tree_equal(sa[key], sb[key], where=key)
    # the stats log holds each step once
    steps = [json.loads(ln)["step"] for ln in (b / "stats.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))


def assert_same_optimisation(one, two):
    # Same examples, same noise, same global-batch mean: per-step loss and (reduced, pre-clip)
    # gradient norm agree to float rounding; a wrong slice or scale would differ by percents.
    def rec(d):
        return [json.loads(ln) for ln in (d / "stats.jsonl").read_text().splitlines()]

    for r1, r2 in zip(rec(one), rec(two), strict=True):
        assert math.isclose(r1["loss"], r2["loss"], rel_tol=1e-5), (r1, r2)
        assert math.isclose(r1["grad_norm"], r2["grad_norm"], rel_tol=1e-5), (r1, r2)
    # Adam turns rounding-level gradient differences of near-zero gradients into up to ~lr
    # steps, so parameters agree to a fraction of the learning rate, not bitwise.
    s1, s2 = load_state(one / "state-000000000032"), load_state(two / "state-000000000032")
    assert_tree_equal(s1["model"], s2["model"], exact=False, rtol=0, atol=2e-3, where="model")


def test_ddp_two_processes_match_one(tmp_path):
    data = make_npz(tmp_path / "d.npz")
    one, two = tmp_path / "one", tmp_path / "two"
    common = [*ARGS, "--data", str(data), "--set", "train.total_samples=32", "--set", "train.log_every=1"]
    r = run_ul("train", *common, "--outdir", str(one))
    assert r.returncode == 0, r.stderr
    r = run_ul("train", *common, "--outdir", str(two), nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_optimisation(one, two)


def test_gradient_accumulation_matches_whole_batch(tmp_path):
    data = make_npz(tmp_path / "d.npz")
    a, b = tmp_path / "a", tmp_path / "b"
    common = [*ARGS, "--data", str(data), "--set", "train.total_samples=32", "--set", "train.log_every=1"]
    assert run_ul("train", *common, "--outdir", str(a)).returncode == 0
    assert run_ul("train", *common, "--outdir", str(b), "--set", "train.micro_batch=2").returncode == 0
    assert_same_optimisation(a, b)


class _NaNAfter(UnifiedLatents):
    """Returns a non-finite loss on the steps listed in `bad` (counted per forward)."""

    bad: set = set()

    def forward(self, x, labels, noise):
        out = super().forward(x, labels, noise)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls in self.bad:
            out.total = out.total * float("nan")
        return out


def _tiny(tmp_path, **over):
    cfg = apply_overrides(
        get_preset("tiny"),
        [f"data.source={make_npz(tmp_path / 'd.npz')}", "train.image_every=0", *[f"{k}={v}" for k, v in over.items()]],
    )
    return cfg, load_images(cfg.data)


def test_non_finite_step_is_skipped_and_counted(tmp_path):
    cfg, data = _tiny(tmp_path)

    class M(_NaNAfter):
        bad = {2}

    res = train(cfg, tmp_path / "run", lambda: M(cfg), data, progress=False)
    st = load_state(tmp_path / "run" / "state-000000000064")
    assert st["bad_steps"] == 1 and res.samples == 64
    assert all(torch.isfinite(v).all() for v in st["model"].values())


def test_repeated_non_finite_steps_stop_and_keep_last_checkpoint(tmp_path):
    cfg, data = _tiny(tmp_path, **{"train.max_bad_steps": 3})
    out = tmp_path / "run"

    class M(_NaNAfter):
        bad = set(range(5, 100))  # steps 1-4 fine (checkpoint at 32 samples), then always NaN

    with pytest.raises(TrainingError, match="non-finite"):
        train(cfg, out, lambda: M(cfg), data, progress=False)
    st = load_state(out / "state-000000000032")
    assert st["samples"] == 32 and all(torch.isfinite(v).all() for v in st["model"].values())
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))


def test_lr_schedule_counts_samples(tiny_cfg):
    t = tiny_cfg.train
    assert lr_at(tiny_cfg, 0) < t.lr
    assert math.isclose(lr_at(tiny_cfg, t.warmup_samples), t.lr)
    assert math.isclose(lr_at(tiny_cfg, t.total_samples), t.lr * t.lr_final_frac)


def test_train_range_checks_a_config_built_in_python(tmp_path):
    cfg, data = _tiny(tmp_path)
    cfg.train.lr_decay = "linear"  # set on the object, never through a loader or --set
    with pytest.raises(ConfigError, match="train.lr_decay"):
        train(cfg, tmp_path / "run", lambda: UnifiedLatents(cfg), data, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from unified_latents.training import atomic_write

    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def boom(tmp):
        open(tmp, "wb").write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, boom)
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_artifact_bytes_depend_only_on_content(tmp_path):
    # safetensors writes metadata in hash-map order (random per map); sorted, equal weights and
    # config give equal files, and the weights and metadata read back unchanged.
    from unified_latents.training.checkpoint import load_artifact, save_artifact

    tensors = {"net.b": torch.randn(3, 4), "net.a": torch.arange(5), "ema": torch.randn(2, dtype=torch.float64)}
    extra = {f"key{i}": {"value": i} for i in range(6)}
    for name in ("one", "two"):
        save_artifact(tmp_path / f"{name}.safetensors", tensors, {"b": 1, "a": [2.5]}, "model", extra)
    blob = (tmp_path / "one.safetensors").read_bytes()
    assert blob == (tmp_path / "two.safetensors").read_bytes()
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    back, cfg, meta = load_artifact(tmp_path / "one.safetensors")
    assert cfg == {"b": 1, "a": [2.5]} and json.loads(meta["key3"]) == {"value": 3} and meta["kind"] == "model"
    for k, v in tensors.items():
        assert torch.equal(back[k], v)


def test_torn_stats_line_is_skipped_with_a_warning(tmp_path, capsys):
    # a kill or a full disk can cut the last line of stats.jsonl short; resume and the report go on
    from unified_latents.eval.report import read_stats
    from unified_latents.training.loop import _truncate_stats

    path = tmp_path / "stats.jsonl"
    path.write_text('{"samples": 64, "loss": 1.5}\n{"samples": 128, "loss": 1.25}\n{"samples": 192, "lo')
    assert read_stats(path) == [{"samples": 64, "loss": 1.5}, {"samples": 128, "loss": 1.25}]
    assert "skipped 1 unreadable line" in capsys.readouterr().err
    _truncate_stats(path, 100)  # resuming from the checkpoint at 64 samples
    assert read_stats(path) == [{"samples": 64, "loss": 1.5}]
    path.write_text('{"samples": 64, "loss": 1.5}\n{"samp')  # killed before the first checkpoint
    _truncate_stats(path, 0)  # a fresh start: nothing kept, so the next line is not glued to a torn one
    assert path.read_text() == ""


def test_compare_runs_names_config_changes_and_catches_weight_changes(tmp_path):
    from unified_latents.training.checkpoint import save_artifact

    cmp = load_script("scripts/compare_runs.py")
    w = {"net.w": torch.randn(4, 3)}
    for name, cfg, tensors in (
        ("a", {"train": {"lr": 1.0}}, w),
        ("b", {"train": {"lr": 1.0, "new": 0}}, w),
        ("c", {"train": {"lr": 1.0}}, {"net.w": w["net.w"] + 1e-6}),
    ):
        save_artifact(tmp_path / name / "latents" / "artifact.safetensors", tensors, cfg, "model")
        (tmp_path / name / "eval.json").write_text('{"gfid": 1.5}')
    ok, lines = cmp.compare_runs(tmp_path / "a", tmp_path / "b")
    assert ok and any("'train.new': ('<absent>', 0)" in ln for ln in lines)  # a new field, named; same weights
    ok, lines = cmp.compare_runs(tmp_path / "a", tmp_path / "c")
    assert not ok and any("tensor bytes equal: False" in ln for ln in lines)
    (tmp_path / "b" / "eval.json").write_text('{"gfid": 1.6}')
    assert not cmp.compare_runs(tmp_path / "a", tmp_path / "b")[0]
    (tmp_path / "b" / "eval.json").unlink()  # a run that stopped early is not "the same"
    ok, lines = cmp.compare_runs(tmp_path / "a", tmp_path / "b")
    assert not ok and any(ln.startswith("eval.json: only in") for ln in lines)


def test_tensorboard_log_holds_what_stats_jsonl_holds_and_the_previews(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    r = run_ul(
        "train",
        *ARGS,
        "--data",
        str(data),
        "--set",
        "train.total_samples=32",
        "--set",
        "train.log_every=1",
        "--set",
        "train.log=tensorboard",
        "--set",
        "train.image_every=16",
        "--outdir",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    stats = [json.loads(ln) for ln in (out / "stats.jsonl").read_text().splitlines()]
    for key in ("loss", "prior_nats", "decoder_nats", "bits_per_image", "loss_factor", "lr", "grad_norm"):
        events = acc.Scalars(f"train/{key}")
        assert [e.step for e in events] == [s["samples"] for s in stats], key
        assert [e.value for e in events] == pytest.approx([s[key] for s in stats], rel=1e-6), key
    assert len(acc.Scalars("train/examples_per_sec")) == len(stats)
    assert [e.step for e in acc.Images("preview/reconstructions")] == [16, 32]
    r = run_ul("train", *ARGS, "--data", str(data), "--set", "train.log=tensorbored", "--outdir", str(tmp_path / "x"))
    assert r.returncode == 2 and "train.log" in r.stderr and not (tmp_path / "x").exists(), r.stderr


def test_wandb_log_sends_scalars_throughput_and_previews(tmp_path, monkeypatch):
    # wandb is not installed here: a stand-in module records what the logger sends
    import types

    from unified_latents.training.loggers import make_log

    sent = []

    class Run:
        def define_metric(self, name, step_metric=None):
            sent.append(("metric", name, step_metric))

        def log(self, data):
            sent.append(data)

        def finish(self):
            sent.append("finished")

    fake = types.SimpleNamespace(
        init=lambda **kw: sent.append(("init", kw["resume"], kw["id"])) or Run(), Image=lambda a: ("image", a.shape)
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log = make_log("wandb", tmp_path, 100, {"train": {}}, main=True)
    log.scalars({"samples": 164, "step": 3, "loss": 2.5, "lr": 1e-3, "sec": 2.0})
    log.images("reconstructions", torch.zeros(2, 1, 4, 4), 164)
    log.close()
    assert sent[0][:2] == ("init", "allow") and sent[2] == ("metric", "*", "samples")  # x axis: samples seen
    assert sent[3] == {"loss": 2.5, "lr": 1e-3, "sec": 2.0, "examples_per_sec": 32.0, "samples": 164}
    assert sent[4] == {"preview/reconstructions": ("image", (8, 4, 3)), "samples": 164} and sent[5] == "finished"
    assert isinstance(make_log("wandb", tmp_path, 0, {}, main=False), type(make_log("", tmp_path, 0, {}, True)))


def test_report_gives_bits_per_padded_input_pixel_and_per_original_pixel():
    # fmnist pads 28x28 to 32x32: the training log's bits/pixel count the 1,024 padded pixels,
    # the report also divides by the 784 original ones (clips: per original pixel per frame)
    from unified_latents.data import IMAGE, VIDEO
    from unified_latents.eval.report import metric_rows

    ev = {
        "gfid": 30.0,
        "gfid_samples": 10,
        "reference_images": 10,
        "reference": "fmnist:test",
        "kid": 0.01,
        "kid_std": 0.001,
        "rfid": 40.0,
        "rfid_samples": 10,
        "psnr": 23.0,
        "ssim": 0.8,
        "prior_bits_per_image": 196.0,
        "prior_bpp": 196.0 / 1024,
        "base_bits_per_image": 98.0,
        "base_bpp": 98.0 / 1024,
    }
    rows = dict(metric_rows(ev, IMAGE, 28))
    prior = rows["latent bitrate, stage-1 prior (unconditional)"]
    assert prior.startswith("196.0 bits/")
    assert f"{196 / 1024:.4f}" in prior and f"{196 / 784:.4f} per original 28x28 pixel" in prior
    base = rows[next(k for k in rows if k.startswith("latent bitrate, base model"))]
    assert f"{98 / 784:.4f} per original 28x28 pixel" in base
    clip = dict(metric_rows({**ev, "video": True, "frames": 16}, VIDEO, 64))
    assert (
        f"{196 / (64 * 64 * 16):.4f} per original 64x64 pixel" in clip["latent bitrate, stage-1 prior (unconditional)"]
    )
