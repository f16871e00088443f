"""The device-dependent choices (unified_latents/accel.py), each forced on the CPU so that the paths a
GPU takes are tested here: channels-last (2-D and 3-D), bf16 autocast in training and inference,
the fused optimizer that skips non-finite steps on the device, device-side generation noise,
Inception in exact fp32, FSDP's mixed precision, compile with activation checkpointing, host
reads per training step, and the device index of a process."""

import json
import traceback

import pytest
import torch
from helpers import assert_tree_equal, load_state, make_npz
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from unified_latents import accel, dist
from unified_latents.config import apply_overrides
from unified_latents.errors import ConfigError, UserError
from unified_latents.objectives import UnifiedLatents
from unified_latents.objectives.base import seeded_noise
from unified_latents.objectives.noise import BatchNoise, CounterNoise
from unified_latents.presets import IMAGENET512_NARROW, get_preset
from unified_latents.training.ema import EMA
from unified_latents.training.parallel import prepare

pytestmark = pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true:UserWarning")

CUDA_CHOICES = [
    "accel.amp=on",
    "accel.channels_last=on",
    "accel.fused_adam=on",
    "accel.pin_memory=on",
    "accel.tf32=on",
    "accel.noise=device",
]


@pytest.fixture(autouse=True)
def _restore_backends():
    """apply_backends switches process-wide flags: put them back for the other tests."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved[1:]


# --------------------------------------------------------------------------- resolution


def test_auto_picks_by_device_and_every_choice_can_be_forced():
    cfg = get_preset("tiny")
    cpu, gpu = accel.resolve(cfg, "cpu"), accel.resolve(cfg, torch.device("cuda", 1))
    names = ("amp", "channels_last", "tf32", "fused_adam", "pin_memory", "cudnn_benchmark", "device_noise")
    assert not any(getattr(cpu, n) for n in names) and all(getattr(gpu, n) for n in names)
    forced = accel.resolve(apply_overrides(cfg, CUDA_CHOICES + ["accel.cudnn_benchmark=true"]), "cpu")
    assert all(getattr(forced, n) for n in names)  # YAML's true is read as on
    off = apply_overrides(cfg, ["accel.amp=off", "accel.channels_last=false", "accel.noise=host"])
    assert not accel.resolve(off, "cuda").amp and not accel.resolve(off, "cuda").channels_last
    assert not accel.resolve(off, "cuda").device_noise
    assert not accel.resolve(apply_overrides(cfg, ["train.amp=false"]), "cuda").amp  # the older switch still works
    assert cpu.workers == 0 and 0 <= gpu.workers <= 4  # data.workers=-1: loader processes only beside a GPU
    assert accel.resolve(apply_overrides(cfg, ["data.workers=2"]), "cpu").workers == 2
    with pytest.raises(ConfigError, match="data.workers"):
        apply_overrides(cfg, ["data.workers=-2"])
    with pytest.raises(ConfigError, match="accel.amp"):
        apply_overrides(cfg, ["accel.amp=bf16"])
    with pytest.raises(ConfigError, match="accel.noise"):
        apply_overrides(cfg, ["accel.noise=gpu"])


# --------------------------------------------------------------------------- channels-last


def test_a_video_model_goes_through_prepare_channels_last():
    """Conv3d weights: Module.to(memory_format=channels_last) raises on them; they go channels_last_3d."""
    cfg = apply_overrides(get_preset("tiny-video"), ["accel.channels_last=on"])
    model = UnifiedLatents(cfg)
    ema = EMA(model, 0.99)
    layout = prepare(cfg, model, ema, torch.device("cpu"))
    five = [p for p in model.parameters() if p.dim() == 5]
    assert five and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in five)
    assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in ema.model.parameters() if p.dim() == 5)
    x = torch.rand(2, *model.x_shape) * 2 - 1
    layout.forward(x, None, model.draw_noise(BatchNoise(0, 2))).total.sum().backward()
    assert all(p.grad is not None for p in five)


def _stage1(tmp_path, *over):
    data = make_npz(tmp_path / "d.npz")
    return apply_overrides(
        get_preset("tiny"),
        [f"data.source={data}", f"data.eval_source={data}", "train.image_every=0", "train.ckpt_every=32", *over],
    )


def test_cuda_choices_forced_on_cpu_train_checkpoint_resume_exactly_sample_and_evaluate(tmp_path):
    """Stage 1 -> base -> sample -> eval with channels-last, bf16 autocast, the fused optimizer and
    device noise forced: every checkpoint is written (the channels-last weights and fused moments
    once crashed the first one), and a resumed run ends bitwise where a straight one does."""
    from unified_latents.eval.evaluate import EvalRequest, evaluate_artifact
    from unified_latents.generate import SampleRequest, write_samples
    from unified_latents.stages import base_config, train_stage

    cpu = torch.device("cpu")
    cfg = _stage1(tmp_path, *CUDA_CHOICES)
    a1 = train_stage(cfg, tmp_path / "s1", cpu, progress=False).artifact
    train_stage(cfg, tmp_path / "s1-resumed", cpu, progress=False, until=32)
    assert train_stage(cfg, tmp_path / "s1-resumed", cpu, progress=False).samples == 64
    a, b = (
        load_state(tmp_path / "s1" / "state-000000000064"),
        load_state(tmp_path / "s1-resumed" / "state-000000000064"),
    )
    for key in ("model", "ema", "optim"):
        assert_tree_equal(a[key], b[key], where=key)
    assert_tree_equal(load_file(a1), load_file(tmp_path / "s1-resumed" / "artifact.safetensors"))
    c2 = apply_overrides(base_config(get_preset("tiny", "base"), a1), [*CUDA_CHOICES, "train.image_every=0"])
    a2 = train_stage(c2, tmp_path / "s2", cpu, progress=False).artifact
    write_samples(a2, [0, 1, 2], tmp_path / "samples", SampleRequest(), cpu, progress=False)
    write_samples(a2, [2], tmp_path / "one", SampleRequest(), cpu, progress=False)
    assert (tmp_path / "samples" / "000002.png").read_bytes() == (tmp_path / "one" / "000002.png").read_bytes()
    from test_stage2 import _stand_in_inception

    inc = str(_stand_in_inception(tmp_path / "inc.pt"))
    ev = evaluate_artifact(
        a2,
        EvalRequest(samples=8, recon=4, ref_count=8, device=cpu, progress=False, inception=inc, trust_torchscript=True),
    )
    assert ev["gfid"] > 0 and ev["psnr"] > 0


def test_a_failed_state_write_says_free_space_only_when_space_ran_out(tmp_path, monkeypatch):
    import errno

    from unified_latents.errors import TrainingError
    from unified_latents.training import run as run_mod
    from unified_latents.training import train

    cfg = _stage1(tmp_path)
    data = __import__("unified_latents.data", fromlist=["load_images"]).load_images(cfg.data)
    from torch.distributed.checkpoint.api import CheckpointException

    not_contiguous = CheckpointException("save", {0: (ValueError("Tensor 'x' is not contiguous"), None)})
    for err, says in (
        (not_contiguous, "report it as a bug"),
        (OSError(errno.ENOSPC, "No space left on device"), "free space"),
    ):

        def failing(*a, err=err, **k):
            raise err

        monkeypatch.setattr(run_mod, "save_state", failing)
        with pytest.raises(TrainingError) as e:
            train(cfg, tmp_path / f"out-{says[:4]}", lambda: UnifiedLatents(cfg), data, progress=False, until=32)
        assert says in str(e.value) and ("free space" in str(e.value)) == (says == "free space")


# --------------------------------------------------------------------------- bf16 autocast in inference


def test_inference_runs_under_autocast_where_training_did(tmp_path):
    """Encoding, decoding, the bitrate and generation wrap their network calls in bf16 autocast
    when accel.amp is on (on CUDA by default), and in nothing when it is off."""
    from unified_latents.objectives import BaseModel

    seen = []

    def spy(module, args):
        seen.append((type(module).__name__, torch.is_autocast_enabled("cpu")))

    for amp in ("on", "off"):
        cfg = apply_overrides(get_preset("tiny"), [f"accel.amp={amp}", "sample.decoder_steps=2", "sample.base_steps=2"])
        s1 = UnifiedLatents(cfg).eval()
        base = BaseModel(apply_overrides(get_preset("tiny", "base"), [f"accel.amp={amp}"]), s1).eval()
        for net in (s1.encoder, s1.prior, s1.decoder, base.net):
            net.register_forward_pre_hook(spy)
        x = torch.rand(2, *s1.x_shape) * 2 - 1
        seen.clear()
        with torch.no_grad():
            s1.encode(x)
            s1.bits(x, [0, 1], n_t=1)
            s1.reconstruct(x, [0, 1], steps=1)
            base.generate([0, 1], steps=1, decoder_steps=1)
            base.image_bits(x, None, [0, 1], n_t=1)
        assert {name for name, _ in seen} == {"ResNetEncoder", "UNet"} | {type(base.net).__name__}
        assert all(on == (amp == "on") for _, on in seen), seen


# --------------------------------------------------------------------------- generation noise on the device


def test_device_noise_is_per_seed_gaussian_and_independent_of_the_batch():
    from scipy import stats

    a = CounterNoise([11, 5, 7])
    first, second = a.normal((4, 8)), a.normal((4, 8))
    b = CounterNoise([7])
    assert torch.equal(b.normal((4, 8))[0], first[2]) and torch.equal(b.normal((4, 8))[0], second[2])
    assert not torch.equal(first, second) and not torch.equal(first[0], first[1])
    z = CounterNoise(list(range(8))).normal((5000,))
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3
    assert abs(float(torch.corrcoef(z[:2])[0, 1])) < 0.05  # neighbouring seeds are uncorrelated
    u = CounterNoise([3]).uniform((20000,))
    assert 0 < float(u.min()) and float(u.max()) < 1 and stats.kstest(u.flatten().numpy(), "uniform").pvalue > 1e-3
    assert isinstance(seeded_noise([1], "cpu", on_device=True), CounterNoise)


def test_generation_with_device_noise_depends_only_on_each_seed():
    from unified_latents.objectives import BaseModel

    cfg = apply_overrides(get_preset("tiny"), ["accel.noise=device"])
    torch.manual_seed(0)
    base = BaseModel(apply_overrides(get_preset("tiny", "base"), ["accel.noise=device"]), UnifiedLatents(cfg)).eval()
    both = base.generate([4, 9], steps=2, decoder_steps=2)
    alone = base.generate([9], steps=2, decoder_steps=2)
    torch.testing.assert_close(both[1:], alone, rtol=0, atol=1e-5)
    host = BaseModel(get_preset("tiny", "base"), base.stage1).eval()
    host.load_state_dict(base.state_dict())
    host.stage1.cfg = get_preset("tiny")
    assert not torch.allclose(host.generate([9], steps=2, decoder_steps=2), alone)  # another stream: other numbers


# --------------------------------------------------------------------------- Inception in exact fp32


def test_inception_features_run_without_tf32_or_autocast_and_are_cached_by_precision(tmp_path, monkeypatch):
    from unified_latents.eval import fid

    seen = []

    def stand(x):  # records the precision in force where the Inception network runs
        seen.append(
            (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32, torch.is_autocast_enabled("cpu"))
        )
        return x.mean((2, 3))

    net = fid.InceptionFeatures.__new__(fid.InceptionFeatures)  # the file is not needed to test the wrapper
    net.net, net.fast, net.device, net.resize = stand, None, torch.device("cpu"), "tf1"
    accel.apply_backends(accel.resolve(apply_overrides(get_preset("tiny"), ["accel.tf32=on"]), "cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8))
    assert seen == [("highest", False, False)]
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32  # restored afterwards
    assert net.precision.startswith("cpu") and "fp32" in net.precision
    net.device = torch.device("cuda")
    assert net.precision.startswith("cuda")


# --------------------------------------------------------------------------- FSDP2 mixed precision


def test_fsdp_bf16_parameters_leave_the_log_snr_in_fp32(tmp_path):
    """MixedPrecisionPolicy(param_dtype=bf16) casts forward inputs by default: lam 7.30, 7.31 and
    7.32 would all reach NoiseEmbedding as 7.3125."""
    import torch.distributed as tdist

    from unified_latents.config import NetConfig
    from unified_latents.nn.networks import ViT
    from unified_latents.training.parallel import _fully_shard

    store = tdist.FileStore(str(tmp_path / "store"), 1)
    tdist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        net = ViT(NetConfig(arch="vit", transformer_blocks=1, width=32, heads=2, patch=1, emb_dim=16), 2, 4, 4)
        seen = {}
        net.emb.register_forward_pre_hook(lambda m, a: seen.update(dtype=a[0].dtype, lam=a[0].tolist()))
        _fully_shard([net], torch.device("cpu"), mixed=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(torch.randn(3, 4, 8, 8), torch.tensor([7.30, 7.31, 7.32])).float().sum().backward()
    finally:
        tdist.destroy_process_group()
    assert seen["dtype"] == torch.float32 and len(set(seen["lam"])) == 3


# --------------------------------------------------------------------------- compile


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile with Dynamo's eager backend: the frames are traced (what is tested), not codegen'd."""
    import torch._dynamo

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="eager"))
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)  # a hit raises, not runs eagerly
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def _compiled_step(cfg):
    torch.manual_seed(0)
    model = UnifiedLatents(cfg)
    layout = prepare(cfg, model, EMA(model, 0.99), torch.device("cpu"))
    x = torch.rand(1, *model.x_shape) * 2 - 1
    loss = layout.forward(x, torch.zeros(1, dtype=torch.long), model.draw_noise(BatchNoise(0, 1)))
    loss.total.sum().backward()
    return model, loss.total


def test_compile_with_activation_checkpointing_compiles_the_blocks(eager_compile):
    cfg = apply_overrides(get_preset("tiny"), ["train.compile=true", "train.activation_checkpointing=true"])
    _compiled_step(cfg)
    assert eager_compile["frames"]["ok"] >= 2  # ResBlock and TransformerBlock frames, not zero


def test_imagenet512_shaped_blocks_stay_under_the_recompile_limit(eager_compile):
    """Every block of the imagenet512 stage-1 networks (narrowed, at 64 px: the same blocks and
    shape changes) compiles: one specialisation per block shape, none left to run eagerly."""
    cfg = apply_overrides(get_preset("imagenet512"), [*IMAGENET512_NARROW, "train.compile=true"])
    _compiled_step(cfg)  # FailOnRecompileLimitHit if a block had to fall back to eager
    assert eager_compile["frames"]["ok"] > 8


# --------------------------------------------------------------------------- host reads per training step


PACKAGE_DIRS = ("training", "objectives", "nn", "diffusion")


def _package_site() -> str | None:
    """file:line of the innermost package frame when it is in the loop, objectives, networks or
    diffusion maths; None for reads made by the data pipeline (host data) or inside torch.optim
    (a non-fused AdamW's step counters live on the host, on a GPU too)."""
    for f in reversed(traceback.extract_stack()[:-2]):
        if "torch/optim/" in f.filename:
            return None
        if "unified_latents/" in f.filename:
            if any(f"unified_latents/{d}/" in f.filename for d in PACKAGE_DIRS):
                return f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
            return None
    return None


class _ScalarReads(TorchDispatchMode):
    """Ops that bring a tensor's value to the host (each waits for the device on a GPU), also
    when C++ converts a 0-d tensor to a Python number (no Python method is called then)."""

    READS = ("_local_scalar_dense", "is_nonzero", "equal", "nonzero")

    def __init__(self, calls):
        super().__init__()
        self.calls = calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        site = _package_site() if func.overloadpacket.__name__ in self.READS else None
        if site:
            self.calls.append((func.overloadpacket.__name__, site))
        return func(*args, **(kwargs or {}))


def _count_host_reads(monkeypatch):
    """Host reads of tensor values made from the package's training code: Python's conversions
    (float(), bool(), .tolist(), ...) and the aten ops behind C++'s own (see _ScalarReads)."""
    calls = []

    def wrap(name):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, **k):
            site = _package_site()
            if site:
                calls.append((name, site))
            return real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    for name in ("item", "tolist", "__float__", "__bool__", "__int__", "numpy"):
        wrap(name)
    return calls


@pytest.mark.parametrize("fused", ["on", "off"])
def test_training_steps_read_nothing_on_the_host_between_logged_steps(tmp_path, monkeypatch, fused):
    from unified_latents.data import load_images
    from unified_latents.training import train

    cfg = _stage1(
        tmp_path,
        f"accel.fused_adam={fused}",
        "train.log_every=100",
        "train.ckpt_every=0",
        "diffusion.target_bits=60",
        "diffusion.controller_hold_samples=0",
    )
    data = load_images(cfg.data)
    train(cfg, tmp_path / "warm", lambda: UnifiedLatents(cfg), data, progress=False, until=16)
    calls = _count_host_reads(monkeypatch)
    from unified_latents.training import loop

    real_step, per_step = loop._step, []

    def step(run, batches):
        before = len(calls)
        with _ScalarReads(calls):
            out = real_step(run, batches)
        per_step.append(calls[before:])
        return out

    monkeypatch.setattr(loop, "_step", step)
    res = train(cfg, tmp_path / "run", lambda: UnifiedLatents(cfg), data, progress=False)
    assert res.samples == 64 and len(per_step) == 8
    want = 0 if fused == "on" else 1  # the fused kernel skips a bad step itself; otherwise one read decides
    assert all(len(c) == want for c in per_step), per_step
    stats = [json.loads(ln) for ln in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["samples"] == 64 and stats[-1]["loss_factor"] != 1.5  # the controller ran on the device


def test_a_non_finite_step_is_skipped_on_the_device_and_counted(tmp_path, monkeypatch):
    """With the fused optimizer the skip happens on the device: weights, moments, EMA and the
    controller stay where they were, and the step is counted when the results are next read."""
    from unified_latents.data import load_images
    from unified_latents.training import train

    cfg = _stage1(
        tmp_path,
        "accel.fused_adam=on",
        "train.log_every=1",
        "diffusion.target_bits=60",
        "diffusion.controller_hold_samples=0",
    )
    data = load_images(cfg.data)
    train(cfg, tmp_path / "a", lambda: UnifiedLatents(cfg), data, progress=False, until=32)
    before = load_state(tmp_path / "a" / "state-000000000032")
    real = UnifiedLatents.forward

    def poisoned(self, x, labels, noise):
        out = real(self, x, labels, noise)
        out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(UnifiedLatents, "forward", poisoned)
    cfg2 = apply_overrides(cfg, ["train.ckpt_every=8"])
    train(cfg2, tmp_path / "a", lambda: UnifiedLatents(cfg2), data, progress=False, until=40)
    after = load_state(tmp_path / "a" / "state-000000000040")
    assert_tree_equal(before["model"], after["model"], where="model")
    # the EMA's weights; its copies of the controller's buffers lag the model's by one step
    weights = [k for k in after["ema"] if k not in ("controlled_bits", "log_loss_factor")]
    assert_tree_equal({k: before["ema"][k] for k in weights}, {k: after["ema"][k] for k in weights}, where="ema")
    moments = {k: v for k, v in after["optim"].items() if not k.endswith("step")}
    assert_tree_equal({k: before["optim"][k] for k in moments}, moments, where="optim")
    assert after["bad_steps"] == 1


# --------------------------------------------------------------------------- the device of a process


def test_each_process_binds_its_gpu_and_nccl_to_it(monkeypatch):
    joined, bound = {}, []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: bound.append(d))
    monkeypatch.setattr(dist.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist.dist, "init_process_group", lambda backend, **kw: joined.update(backend=backend, **kw))
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # srun: one visible GPU per task
    assert dist.init("auto") == torch.device("cuda", 0) and joined["device_id"] == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)  # torchrun: every GPU of the node visible
    assert dist.init("cuda") == torch.device("cuda", 3) and joined["backend"] == "nccl"
    assert bound == [torch.device("cuda", 0), torch.device("cuda", 3)]
    with pytest.raises(UserError, match="under torchrun each process takes its own"):
        dist.init("cuda:5")  # one named GPU for 4 processes
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert dist.init("cuda:5") == torch.device("cuda", 5)
    with pytest.raises(UserError, match="cuda:9"):
        dist.init("cuda:9")
    with pytest.raises(UserError, match="cuda:N"):
        dist.init("gpu")


def test_the_api_model_follows_its_networks_to_another_device(tmp_path):
    from unified_latents.api import UnifiedLatentsModel

    ul = UnifiedLatentsModel(UnifiedLatents(get_preset("tiny")), get_preset("tiny"))
    assert ul.device == torch.device("cpu")
    ul.model.to("meta")  # what a diffusers pipeline's .to("cuda") does to the modules it holds
    assert ul.device == torch.device("meta")
