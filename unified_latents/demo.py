"""`ul demo`: a browser page for one artifact (Gradio; `pip install 'unified-latents[demo]'`).

Tab "Generate" (base artifacts): class, seed, count, guidance, base and decoder steps and sampler
in; the images (video: MP4s) and the time they took out. Tab "Reconstruct" (image models): an
uploaded image in; its reconstruction, its latent bits and the PSNR out.
"""

from __future__ import annotations

import os
import time

import torch

from .api import UnifiedLatentsModel, load
from .data.transforms import crop_pad, pil_chw
from .errors import UserError
from .eval.metrics import psnr

SAMPLERS = ["ancestral", "ddim", "dpm++2m"]


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine
    try:
        import gradio as gr
    except ImportError:
        raise UserError("`ul demo` needs Gradio: pip install 'unified-latents[demo]' (or pip install gradio)") from None
    return gr


def generate(
    ul: UnifiedLatentsModel,
    label: str,
    seed: int,
    count: int,
    guidance: float,
    base_steps: int,
    decoder_steps: int,
    sampler: str,
):
    """(images, or MP4 paths for video; a line saying how long it took)."""
    t0 = time.time()
    seeds = list(range(int(seed or 0), int(seed or 0) + int(count)))
    classes = None if label in ("", "seed % classes") else ("none" if label == "unconditional" else [int(label)])
    out = ul.sample(
        seeds,
        classes=classes,
        guidance=float(guidance),
        steps=int(base_steps),
        decoder_steps=int(decoder_steps),
        sampler=sampler,
    )
    took = f"{len(seeds)} {ul.stage1.modality.per}(s), seeds {seeds[0]}-{seeds[-1]}, in {time.time() - t0:.1f} s"
    return ul.stage1.modality.demo_outputs(seeds, out), took


def reconstruct(ul: UnifiedLatentsModel, image, steps: int):
    """(the reconstruction, a line with its latent bits and PSNR) of one uploaded image."""
    if image is None:
        raise UserError("upload an image first")
    x = ul._pixels([image])
    rec = ul.reconstruct([image], steps=int(steps))[0]
    bits = float(ul.bits([image])[0])
    orig = crop_pad(x, ul.data.pad)
    p = float(psnr(orig, torch.from_numpy(pil_chw(rec))[None]).mean())
    return rec.resize((rec.width * 4, rec.height * 4)), f"latent: {bits:.1f} bits; PSNR {p:.2f} dB"


def build(ul: UnifiedLatentsModel):
    gr = _gradio()

    def as_message(fn):
        """A callback whose UserError (a bad input) appears on the page as one message."""

        def call(*args):
            try:
                return fn(*args)
            except UserError as e:
                raise gr.Error(str(e)) from None

        return call

    sc, video = ul.cfg.sample, ul.stage1.modality.video
    with gr.Blocks(title="Unified Latents") as demo:
        gr.Markdown(
            f"# Unified Latents\n{ul.cfg.stage} model of {ul.data.source} "
            f"({ul.data.resolution}x{ul.data.resolution}, {ul.data.channels} channel(s))"
        )
        if hasattr(ul.model, "sample_latents"):
            with gr.Tab("Generate"):
                k = ul.model.num_classes
                label = gr.Dropdown(
                    ["seed % classes", "unconditional", *map(str, range(k))] if k else ["unconditional"],
                    value="seed % classes" if k else "unconditional",
                    label="class",
                )
                with gr.Row():
                    seed = gr.Number(0, label="first seed", precision=0)
                    count = gr.Slider(1, 16, value=8, step=1, label="count")
                    guidance = gr.Slider(0, 5, value=sc.guidance, step=0.25, label="guidance")
                with gr.Row():
                    base_steps = gr.Slider(2, 256, value=sc.base_steps, step=1, label="base steps")
                    decoder_steps = gr.Slider(2, 128, value=sc.decoder_steps, step=1, label="decoder steps")
                    sampler = gr.Dropdown(SAMPLERS, value=sc.sampler, label="sampler")
                button = gr.Button("Generate", variant="primary")
                # the component that shows what Modality.demo_outputs returns: MP4 paths, or images
                shown = gr.Files(label="clips (MP4)") if video else gr.Gallery(label="samples", columns=8)
                took = gr.Markdown()
                button.click(
                    as_message(lambda *a: generate(ul, *a)),
                    [label, seed, count, guidance, base_steps, decoder_steps, sampler],
                    [shown, took],
                )
        if not video:  # clips are reconstructed with `ul reconstruct`
            with gr.Tab("Reconstruct"):
                upload = gr.Image(type="pil", label="image")
                steps = gr.Slider(2, 128, value=sc.decoder_steps, step=1, label="decoder steps")
                go = gr.Button("Reconstruct")
                rec, scores = gr.Image(label="reconstruction"), gr.Markdown()
                go.click(as_message(lambda im, s: reconstruct(ul, im, s)), [upload, steps], [rec, scores])
    return demo


def serve(artifact: str, port: int = 7860, device: str = "auto", block: bool = True):
    """Start the page on 127.0.0.1:`port`; with block=False, return the running app (tests)."""
    demo = build(load(artifact, device))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=not block, quiet=True, show_error=True)
    return demo
