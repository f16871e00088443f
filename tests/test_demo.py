"""`ul demo` in a real browser: Debian's Chromium driven by Playwright (nothing downloaded)."""

import shutil
import socket

import numpy as np
import pytest
from helpers import make_npz, run_ul
from PIL import Image

FAST = ["--preset", "tiny", "--no-progress", "--set", "train.total_samples=16"]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium installed: `scripts/setup.sh test` installs Debian's chromium")
    return path


def test_demo_generates_and_reconstructs_in_a_real_browser(tmp_path):
    pytest.importorskip("gradio")
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = chromium_path()
    data, held = make_npz(tmp_path / "d.npz", n=40), make_npz(tmp_path / "h.npz", n=12, seed=1)
    assert (
        run_ul(
            "train", *FAST, "--data", str(data), "--eval-data", str(held), "--outdir", str(tmp_path / "s1")
        ).returncode
        == 0
    )
    r = run_ul(
        "train",
        "--stage",
        "base",
        *FAST,
        "--artifact",
        str(tmp_path / "s1" / "artifact.safetensors"),
        "--set",
        "sample.base_steps=4",
        "--set",
        "sample.decoder_steps=4",
        "--outdir",
        str(tmp_path / "b"),
    )
    assert r.returncode == 0, r.stderr
    from unified_latents.demo import serve

    port = _free_port()
    demo = serve(str(tmp_path / "b" / "artifact.safetensors"), port, "cpu", block=False)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
            page.get_by_role("button", name="Generate").click()
            page.get_by_text("image(s), seeds 0-7").wait_for(timeout=120_000)  # the line saying how long it took
            shown = page.locator("img[src*='file']")
            shown.first.wait_for(timeout=60_000)
            assert shown.count() >= 1
            page.screenshot(path=str(tmp_path / "demo.png"))
            # the second tab: upload a held-out image, get its reconstruction, bits and PSNR
            Image.fromarray(np.load(held)["images"][0]).save(tmp_path / "upload.png")
            page.get_by_role("tab", name="Reconstruct").click()
            page.locator("input[type=file]").set_input_files(str(tmp_path / "upload.png"))
            page.get_by_role("button", name="Reconstruct", exact=True).click()
            page.get_by_text("bits; PSNR").wait_for(timeout=120_000)
            assert " dB" in page.get_by_text("bits; PSNR").inner_text()
            browser.close()
    finally:
        demo.close()
    assert (tmp_path / "demo.png").stat().st_size > 1000
