"""`ul export`: an artifact as a Hugging Face-style folder, and the Hub round trip.

The folder holds one sub-folder per component (`encoder`, `prior`, `decoder`, and `base` for a
stage-2 or pixel model), each with `model.safetensors` and a `config.json` describing that
network; `config.json` (the run's resolved config), `unified_latents.json` (format, components,
the artifact's metadata), `extras.safetensors` (the scalars outside any network: the loss factor,
the latent scale) and a model card `README.md`. Every command and `unified_latents.load` take the
folder wherever they take an artifact; `load("user/name")` downloads one from the Hub.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .artifacts import EXPORT_FORMAT, EXPORT_INDEX, REPO_ID, component_prefixes, load_artifact
from .artifacts import fetch as fetch  # re-exported: the Python API imports it from here
from .data.modality import modality_of
from .errors import UserError
from .eval.report import metric_rows, table
from .files import temp_folder, write_safetensors
from .runlock import holding
from .saved_config import from_saved


@holding("to", "ul export", beside=True)
def export(artifact: Path, to: Path, eval_json: Path | None = None) -> Path:
    """Write `artifact` as a folder at `to` (built beside it and renamed into place: never half written)."""
    tensors, config, meta = load_artifact(artifact)
    stage1 = json.loads(meta["stage1_config"]) if "stage1_config" in meta else config
    to = Path(to)
    if to.exists() and not (to / EXPORT_INDEX).exists():
        raise UserError(f"--to {to} exists and is not an earlier export; choose a new folder")
    with temp_folder(to.with_name(to.name + ".tmp")) as tmp:  # removed again if writing fails
        comps, used = {}, set()
        for name, prefix in component_prefixes(config["stage"]).items():
            part = {k[len(prefix) :]: v.contiguous() for k, v in tensors.items() if k.startswith(prefix)}
            if not part:
                continue
            (tmp / name).mkdir()
            write_safetensors(tmp / name / "model.safetensors", part)
            net = config["model"]["base"] if name == "base" else stage1["model"][name]
            (tmp / name / "config.json").write_text(
                json.dumps(
                    {
                        "component": name,
                        "network": net,
                        "latent_channels": stage1["model"]["latent_channels"],
                        "data": {k: stage1["data"][k] for k in ("resolution", "channels", "pad", "frames")},
                    },
                    indent=2,
                )
            )
            comps[name] = prefix
            used |= {prefix + k for k in part}
        extras = {k: v.contiguous() for k, v in tensors.items() if k not in used}
        if extras:
            write_safetensors(tmp / "extras.safetensors", extras)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        index = {
            "format": EXPORT_FORMAT,
            "components": comps,
            "metadata": {k: v for k, v in meta.items() if k not in ("format", "config")},
        }
        (tmp / EXPORT_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
        record = _eval_record(artifact, config, eval_json)
        (tmp / "README.md").write_text(model_card(config, stage1, meta, record, to.name))
        shutil.rmtree(to, ignore_errors=True)
        tmp.rename(to)
    return to


def _eval_record(artifact: Path, config: dict, eval_json: Path | None) -> dict | None:
    """The evaluation to show in the card: the one given (it must be readable), else, for a base
    or pixel artifact, an eval.json of this version beside it or in the run folder above it
    (where `ul pipeline` writes it). A stage-1 artifact gets none found for it: a run's eval.json
    measures its base model."""
    if eval_json is not None:
        try:
            return json.loads(Path(eval_json).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(
                f"--eval {eval_json} cannot be read ({e}); give an eval.json written by `ul eval`"
            ) from None
    if config["stage"] == "latents":
        return None
    for p in (Path(artifact).parent / "eval.json", Path(artifact).parent.parent / "eval.json"):
        try:
            ev = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if ev.get("stage") == config["stage"] and "fid_resize" in ev:  # this version's evaluation of such a model
            return ev
    return None


def model_card(config: dict, stage1: dict, meta: dict, ev: dict | None, name: str) -> str:
    """The folder's README.md: what the model is, its metrics, how it was trained and how to use it."""
    cfg1 = from_saved(stage1)
    d, m = cfg1.data, modality_of(cfg1.data)
    side = d.resolution - 2 * d.pad
    what = {
        "latents": "a stage-1 autoencoder (encoder, diffusion prior, diffusion decoder)",
        "base": "a stage-2 base model with its frozen stage-1 autoencoder: it generates on its own",
        "pixel": "the pixel-diffusion baseline",
    }[config["stage"]]
    lines = [
        "---",
        "library_name: unified-latents",
        "tags: [diffusion, latent-diffusion, unified-latents]",
        "---",
        "",
        f"# {name}",
        "",
        f"A Unified Latents model: {what}. Trained on {d.source} ({side}x{side}, {d.channels} "
        f"channel(s){m.frames_note(d)}), {json.loads(meta.get('samples', '0')):,} "
        "samples seen.",
        "",
    ]
    lines += _card_metrics(ev, meta, cfg1)
    lines += [
        "## Training",
        "",
        "The resolved configuration is `config.json` (every field `ul train --set` takes); "
        "retrain with `ul train --stage latents` and then `ul train --stage base` using those fields.",
        "",
        "## Use",
        "",
        "```python",
        "import unified_latents",
        "",
        f'ul = unified_latents.load("{name}")  # this folder, or its Hub name',
    ]
    lines += ["images = ul.sample(range(8))"] if config["stage"] != "latents" else ["recs = ul.reconstruct(images)"]
    lines += [
        "```",
        "",
        f"or `ul sample --artifact {name} --seeds 0-63 --outdir out`."
        if config["stage"] != "latents"
        else f"or `ul reconstruct --artifact {name}`.",
        "",
    ]
    return "\n".join(lines)


def _card_metrics(ev: dict | None, meta: dict, cfg1) -> list[str]:
    """The card's metrics table (from an eval.json), else the stage-1 prior's last training bitrate."""
    d, m = cfg1.data, modality_of(cfg1.data)
    try:
        rows = metric_rows(ev, m, d.resolution - 2 * d.pad) if ev is not None else None
    except KeyError as e:  # an evaluation record of another version
        raise UserError(
            f"the evaluation record lacks {e}; give an eval.json written by this version's `ul eval`"
        ) from None
    if rows:
        return ["## Metrics", "", table(rows), ""]
    bits = json.loads(meta.get("metrics", "{}")).get("bits_per_image")  # stage 1's last training record
    if bits is None:
        return []
    pixels = d.resolution**2 * max(1, d.frames)
    return [
        "## Latent bitrate",
        "",
        f"{bits:.1f} bits per {m.per} under the stage-1 prior at the end of "
        f"training ({bits / pixels:.4f} bits per input pixel{m.per_frame_words}).",
        "",
    ]


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the Hub as `repo_id` (created if missing); returns its URL."""
    if not REPO_ID.fullmatch(repo_id):
        raise UserError(f"--push {repo_id!r} is not a Hub repo id; write it as user/name")
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise UserError("uploading needs huggingface_hub: pip install huggingface_hub") from None
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="unified-latents export")
    except Exception as e:  # noqa: BLE001 (network, authentication, permissions: one message)
        raise UserError(
            f"cannot upload {folder} to {repo_id} ({str(e).splitlines()[0][:160]}); the folder is kept: "
            "check `huggingface-cli login` and retry"
        ) from None
    return f"https://huggingface.co/{repo_id}"
