"""benchmarks/gpu_check.py, the one-command GPU check, runs every section on the CPU (--dry: tiny
sizes, the CUDA choices forced on) without an error, and what its sections measure holds there."""

import json
import subprocess
import sys

from helpers import ROOT, ul_env

SECTIONS = [
    "env",
    "video_prepare",
    "pipeline",
    "fsdp_lam",
    "noise",
    "generation",
    "memory",
    "inception",
    "compile",
    "train_mfu",
]


def test_the_dry_run_passes_every_section(tmp_path):
    env = ul_env(UL_CACHE=str(tmp_path / "cache"))
    env.pop("OUT", None)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry", "--out", str(tmp_path / "out")]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = {rec["check"]: rec for rec in map(json.loads, r.stdout.splitlines())}  # stdout: JSON lines only
    assert list(recs) == [*SECTIONS, "done"]
    assert (tmp_path / "out" / "gpu_check.jsonl").read_text().splitlines() == r.stdout.splitlines()
    done = recs.pop("done")
    failed = {
        name: rec.get("error", rec.get("skipped")) for name, rec in recs.items() if "error" in rec or "skipped" in rec
    }
    assert not failed and done["errors"] == 0 and not done["skipped"], failed

    lam = recs["fsdp_lam"]  # FSDP's bf16 parameters leave the log-SNR in fp32: 7.30, 7.31, 7.32 stay apart
    assert lam["lam_dtype"] == "torch.float32" and lam["distinct_lam"] == 3 and lam["param_dtype"] == "torch.bfloat16"
    for ac in ("without_ac", "with_ac"):  # every block compiles, under activation checkpointing too
        c = recs["compile"][ac]
        assert c["frames_ok"] > 0 and not c["recompile_limit_hit"], c
    run = recs["pipeline"]
    assert run["resume"]["resumed"] and run["resume"]["samples"] == run["resume"]["of"], run["resume"]
    assert run["resume"]["artifact_max_abs_diff"] == 0.0  # a stopped and resumed run ends where a straight one does
    assert run["sample_pngs"] == 3 and run["eval"]["gfid"] > 0 and run["api"]["bits_positive"]
    assert recs["noise"]["device_noise_row_equal"]  # a seed's device noise does not depend on its batch
    assert recs["video_prepare"]["weights_channels_last_3d"] and recs["video_prepare"]["all_grads"]
    assert recs["env"]["accel"]["channels_last"] and recs["env"]["accel"]["device_noise"]  # forced on the CPU
    mfu = recs["train_mfu"]
    assert mfu["stage1_ac"]["samples_per_s"] > 0 and mfu["base"]["mfu_pct"] > 0
