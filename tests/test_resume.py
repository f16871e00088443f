"""Training state on disk: artifact before state, fallback past a damaged state, stale temporaries,
wall-clock checkpoints, one final write, and states of the earlier format."""

import json
import shutil

import pytest
import torch
from helpers import assert_tree_equal, load_state, make_npz, run_ul
from safetensors.torch import load_file

from unified_latents.config import apply_overrides
from unified_latents.data import load_images
from unified_latents.errors import ResumeError
from unified_latents.objectives import UnifiedLatents
from unified_latents.presets import get_preset
from unified_latents.training import run as run_mod
from unified_latents.training import train
from unified_latents.training.run import setup


def _cfg(tmp_path, **over):
    over = {"train.image_every": 0, "train.ckpt_every": 32, "train.total_samples": 64, **over}
    cfg = apply_overrides(
        get_preset("tiny"), [f"data.source={make_npz(tmp_path / 'd.npz')}", *[f"{k}={v}" for k, v in over.items()]]
    )
    return cfg, load_images(cfg.data)


def _train(cfg, data, out, **kw):
    return train(cfg, out, lambda: UnifiedLatents(cfg), data, progress=False, **kw)


def test_kill_between_artifact_and_state_never_leaves_a_stale_artifact(tmp_path, monkeypatch, capsys):
    cfg, data = _cfg(tmp_path)
    _train(cfg, data, tmp_path / "straight")
    real = run_mod.save_state

    def killed_at_the_end(outdir, samples, *a, **k):
        if samples == 64:
            raise KeyboardInterrupt  # the process dies after the artifact, before the state
        return real(outdir, samples, *a, **k)

    monkeypatch.setattr(run_mod, "save_state", killed_at_the_end)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, data, tmp_path / "killed")
    monkeypatch.setattr(run_mod, "save_state", real)
    capsys.readouterr()
    res = _train(cfg, data, tmp_path / "killed")  # resumes from 32 and trains to 64 again
    assert res.samples == 64 and "at 32 samples" in capsys.readouterr().out
    assert (tmp_path / "killed" / "state-000000000064" / "state.json").exists()
    a, b = load_file(tmp_path / "straight" / "artifact.safetensors"), load_file(res.artifact)
    assert_tree_equal(a, b)
    # A finished state beside an older artifact (e.g. an earlier version's write order, killed
    # between its state and its artifact): the rerun writes the artifact again, trains nothing.
    _train(cfg, data, tmp_path / "half", until=32)
    shutil.copy(tmp_path / "half" / "artifact.safetensors", res.artifact)
    res = _train(cfg, data, tmp_path / "killed")
    assert_tree_equal(a, load_file(res.artifact))


def test_damaged_newest_state_falls_back_to_the_previous_one(tmp_path, capsys):
    cfg, data = _cfg(tmp_path, **{"train.keep": 3})
    _train(cfg, data, tmp_path / "straight")
    out = tmp_path / "run"
    _train(cfg, data, out, until=64)
    shard = next((out / "state-000000000064").glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated by a crash or a full disk
    aside, size = out / "damaged-state-000000000064" / shard.name, shard.stat().st_size
    capsys.readouterr()
    res = _train(cfg, data, out)
    msg = capsys.readouterr().out
    assert "warning" in msg and "state-000000000064" in msg and "resuming" in msg and "at 32 samples" in msg
    assert aside.stat().st_size == size  # the damaged state is kept, set aside, not tried again
    a, b = load_state(tmp_path / "straight" / "state-000000000064"), load_state(out / "state-000000000064")
    for key in ("model", "ema", "optim"):
        assert_tree_equal(a[key], b[key], where=key)
    assert res.samples == 64


def test_no_readable_state_is_one_clear_error(tmp_path):
    cfg, data = _cfg(tmp_path, **{"train.total_samples": 32})
    out = tmp_path / "run"
    _train(cfg, data, out)
    for f in (out / "state-000000000032").glob("*.safetensors"):
        f.write_bytes(b"garbage")
    with pytest.raises(ResumeError, match="No readable training state"):
        _train(cfg, data, out)


def test_stale_temporaries_of_a_killed_write_are_removed_at_start(tmp_path, capsys):
    cfg, data = _cfg(tmp_path, **{"train.total_samples": 32})
    out = tmp_path / "run"
    _train(cfg, data, out)
    (out / ".state-000000000064.tmp").mkdir()
    (out / ".state-000000000064.tmp" / "shard-00001.safetensors").write_bytes(b"partial")
    (out / ".artifact.safetensors.abc.tmp").write_bytes(b"partial")
    _train(cfg, data, out)
    assert not list(out.glob(".*.tmp")) and "interrupted checkpoint write" in capsys.readouterr().out


def test_every_state_is_written_once_and_wall_clock_checkpoints(tmp_path, monkeypatch):
    cfg, data = _cfg(tmp_path)
    written = []
    real = run_mod.save_state
    monkeypatch.setattr(run_mod, "save_state", lambda o, s, *a, **k: written.append(s) or real(o, s, *a, **k))
    _train(cfg, data, tmp_path / "a")  # the last step crosses ckpt_every: the final state is that one
    assert written == [32, 64]
    written.clear()
    timed, _ = _cfg(tmp_path, **{"train.ckpt_every": 0, "train.ckpt_minutes": 1e-9, "train.keep": 100})
    _train(timed, data, tmp_path / "b")
    assert written == list(range(8, 65, 8))  # every step is past the (tiny) interval
    assert json.loads((tmp_path / "b" / "state-000000000064" / "state.json").read_text())["samples"] == 64


def test_a_state_of_the_earlier_format_is_resumed(tmp_path):
    cfg, data = _cfg(tmp_path)
    _train(cfg, data, tmp_path / "straight")
    out = tmp_path / "old"
    _train(cfg, data, out, until=32)
    torch.manual_seed(0)
    run = setup(cfg, out, lambda: UnifiedLatents(cfg), data, torch.device("cpu"), "ul-latents", 8, 8)
    legacy = {
        "model": run.model.state_dict(),
        "ema": run.ema.model.state_dict(),
        "optimizer": run.opt.state_dict(),
        "samples": 32,
        "bad_steps": 0,
        "metrics": json.dumps(run.metrics),
    }
    torch.save(legacy, out / "training-state-000000000032.pt")
    for p in out.glob("state-*"):
        shutil.rmtree(p)
    _train(cfg, data, out)
    a, b = load_state(tmp_path / "straight" / "state-000000000064"), load_state(out / "state-000000000064")
    for key in ("model", "ema", "optim"):
        assert_tree_equal(a[key], b[key], where=key)


def test_earlier_optimizer_state_of_a_base_model_keeps_only_trainable_entries():
    # Earlier versions built AdamW over every parameter of a base model, frozen stage 1 included.
    from unified_latents.objectives import BaseModel
    from unified_latents.training.run import legacy_optimizer_state

    torch.manual_seed(0)
    model = BaseModel(get_preset("tiny", "base"), UnifiedLatents(get_preset("tiny")))
    old = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.net.parameters():
        p.grad = torch.randn_like(p)
    old.step()
    new = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    new.load_state_dict(legacy_optimizer_state(old.state_dict(), model))
    for p in model.net.parameters():
        assert torch.equal(new.state[p]["exp_avg"], old.state[p]["exp_avg"])


def test_resume_refuses_other_data_and_a_retrained_stage1(tmp_path):
    # the same path, other contents: a run never silently continues on other data
    data = make_npz(tmp_path / "d.npz", n=40)
    fast = ["--preset", "tiny", "--no-progress", "--set", "train.total_samples=32", "--set", "train.ckpt_every=16"]
    s1 = ["train", *fast, "--data", str(data), "--outdir", str(tmp_path / "s1")]
    assert run_ul(*s1, "--until", "16").returncode == 0
    moved = tmp_path / "moved.npz"
    data.rename(moved)
    r = run_ul("train", *fast, "--data", str(moved), "--outdir", str(tmp_path / "s1"), "--until", "16")
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr  # the same contents at another path: fine
    make_npz(data, n=40, seed=3)
    r = run_ul(*s1)
    assert r.returncode == 2 and "not the data this run has trained on" in r.stderr and "Traceback" not in r.stderr, (
        r.stderr
    )
    # stage 2 resumed after stage 1 was retrained at the same path
    moved.rename(data)
    assert run_ul(*s1).returncode == 0
    art = str(tmp_path / "s1" / "artifact.safetensors")
    base = ["train", "--stage", "base", *fast, "--artifact", art, "--outdir", str(tmp_path / "b")]
    assert run_ul(*base, "--until", "16").returncode == 0
    assert run_ul(*s1[:-2], "--set", "train.total_samples=48", "--outdir", str(tmp_path / "s1")).returncode == 0
    r = run_ul(*base)
    assert r.returncode == 2 and "not the one this stage-2 run started from" in r.stderr, r.stderr


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_says_so(tmp_path, monkeypatch):
    import errno

    from unified_latents.errors import TrainingError

    cfg, data = _cfg(tmp_path)
    real = run_mod.save_state

    def full_at_64(outdir, samples, *a, **k):
        if samples == 64:  # the disk fills up part-way through the state's first shard
            part = outdir / ".state-000000000064.tmp"
            part.mkdir()
            (part / "shard-00001-model-00001-of-00001.safetensors").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(outdir, samples, *a, **k)

    monkeypatch.setattr(run_mod, "save_state", full_at_64)
    with pytest.raises(
        TrainingError,
        match=r"at 64 samples .*No space left on device.*previous training state "
        r"\(32 samples\) is kept.*rerun the same command",
    ):
        _train(cfg, data, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").glob("state-*")) == ["state-000000000032"]
    assert not list((tmp_path / "run").glob(".*tmp")), "the unfinished state is removed with its room"
    monkeypatch.setattr(run_mod, "save_state", real)
    assert _train(cfg, data, tmp_path / "run").samples == 64  # space freed: the rerun resumes and finishes


def test_a_state_written_before_the_controllers_buffer_was_added_resumes(tmp_path, monkeypatch, capsys):
    """States of earlier versions lack `controlled_bits` (in the model and its EMA): such a state
    resumes, the buffer at its initial value (the target), and trains on as a straight run does."""
    cfg, data = _cfg(tmp_path, **{"diffusion.target_bits": 50.0})
    straight = _train(cfg, data, tmp_path / "straight")
    new_init = UnifiedLatents.__init__

    def earlier_init(self, c):
        new_init(self, c)
        del self._buffers["controlled_bits"]

    monkeypatch.setattr(UnifiedLatents, "__init__", earlier_init)
    monkeypatch.setattr(UnifiedLatents, "after_step", lambda self, m, ok=None: {"loss_factor": self.loss_factor})
    _train(cfg, data, tmp_path / "old", until=32)
    monkeypatch.undo()
    assert not any("controlled_bits" in k for k in load_state(tmp_path / "old" / "state-000000000032")["model"])
    capsys.readouterr()
    res = _train(cfg, data, tmp_path / "old")
    assert res.samples == 64 and "resuming" in capsys.readouterr().out
    assert float(load_file(res.artifact)["controlled_bits"]) > 0 and straight.samples == 64


def test_a_run_whose_prior_network_gets_no_gradient_resumes_exactly(tmp_path):
    # A Gaussian (KL) prior leaves the prior network unused: its parameters never get optimizer
    # state, and the resumed optimizer must not expect any (it used to refuse the state).
    cfg, data = _cfg(tmp_path, **{"diffusion.prior_kind": "gaussian"})
    straight = _train(cfg, data, tmp_path / "straight")
    _train(cfg, data, tmp_path / "resumed", until=32)
    resumed = _train(cfg, data, tmp_path / "resumed")
    assert resumed.samples == 64
    assert_tree_equal(load_file(straight.artifact), load_file(resumed.artifact))
    optim = load_state(tmp_path / "resumed" / "state-000000000064")["optim"]
    assert not any(k.startswith("prior.") for k in optim) and any(k.startswith("decoder.") for k in optim)
