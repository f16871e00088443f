"""The documentation: the MkDocs site builds with --strict, the README stays short and shows the
main job's results first, and every command line of README.md and docs/*.md that invokes the
`ul` command line parses with its real argument parser (nothing is run)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

# Code blocks in these languages hold no shell commands (a Python line may well start with `ul `).
NOT_SHELL = {"python", "py", "pycon", "json", "yaml", "yml", "toml"}

# Command lines deliberately not parsed: the exact line (continued lines joined, as code_lines
# gives it) -> why. Keep it short; everything else must parse.
SKIP: dict[str, str] = {}

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SHELL_VAR = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
ANGLE_PLACEHOLDER = re.compile(r"<[^<>\s]+>")
OPTIONAL_FLAG = re.compile(r"(?<!\S)\[(-[^\[\]]*)\](?!\S)")  # `[--port 7860]`, not `x=[0.05,0.1]`


def doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def code_lines(path: Path):
    """(line number, logical line) of every line in a shell-like fenced code block of `path`;
    backslash-continued lines are joined, the number is the first line's."""
    fence = None
    lang = ""
    pending: tuple[int, str] | None = None
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence, lang = m.group(1), m.group(2).lower()
            continue
        if m and m.group(1).startswith(fence[0]) and len(m.group(1)) >= len(fence) and not m.group(2):
            if pending:
                yield pending
            fence, pending = None, None
            continue
        if lang in NOT_SHELL:
            continue
        text = line.rstrip()
        start, joined = pending if pending else (no, "")
        if text.endswith("\\"):
            pending = (start, joined + text[:-1].strip() + " ")
            continue
        pending = None
        yield start, joined + text.strip()


def cli_args(line: str) -> list[str] | None:
    """The arguments after the program name if `line` invokes the `ul` command line (`ul ...`,
    `python -m unified_latents ...`, `torchrun ... -m unified_latents ...`), else None.
    Placeholders are made parseable: `$VAR` and `<name>` become words, the optional-argument
    notation `[--flag value]` is unbracketed (dropped when it elides with `...`), a bare `...`
    (more arguments, as above) is dropped, and a trailing `# comment` is removed."""
    text = line.strip()
    if text.startswith("$ "):
        text = text[2:].lstrip()
    text = SHELL_VAR.sub("VAR", text)
    text = ANGLE_PLACEHOLDER.sub("PLACEHOLDER", text)
    text = OPTIONAL_FLAG.sub(lambda m: "" if "..." in m.group(1) else m.group(1), text)
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return None
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] == "ul":
        args = tokens[1:]
    elif Path(tokens[0]).name in ("python", "python3", "torchrun"):
        hits = [i for i in range(len(tokens) - 1) if tokens[i] == "-m" and tokens[i + 1] == "unified_latents"]
        if not hits:
            return None
        args = tokens[hits[0] + 2 :]
    else:
        return None
    return [a for a in args if a != "..."]


def check_command(args: list[str]) -> str | None:
    """None if `args` parse with the real `ul` parser (and name a known preset and known config
    keys with valid values); else the error. Nothing is run: only `build_parser().parse_args`
    and the config's own override check are called."""
    from unified_latents.cli.main import build_parser

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            ns = build_parser().parse_args(args)
    except SystemExit as e:
        if e.code == 0:  # --help
            return None
        lines = err.getvalue().strip().splitlines()
        return f"argparse exit {e.code}: {lines[-1] if lines else ''}"
    preset = getattr(ns, "preset", None)
    if preset is None:
        return None
    from unified_latents.presets import PRESETS

    if preset not in PRESETS:
        return f"unknown preset {preset!r}"
    overrides = getattr(ns, "overrides", None)
    if not overrides:
        return None
    from unified_latents.config import apply_overrides
    from unified_latents.objectives.registry import preset_config

    stage = getattr(ns, "stage", None) or "latents"
    try:
        apply_overrides(preset_config(preset, stage), list(overrides))
    except Exception as e:  # ConfigError / UserError / ValueError: the message is what matters
        return f"--set rejected: {e}"
    return None


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, f"mkdocs build --strict failed (pip install mkdocs-material):\n{r.stdout}\n{r.stderr}"
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= len(list(DOCS.glob("*.md")))
    external = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//", re.I)
    for page in pages:
        hit = external.search(page.read_text(encoding="utf-8"))
        assert hit is None, f"{page.relative_to(site)} loads something from another host: {hit.group(0)}"


def test_readme_is_short_and_shows_results_first():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    head = lines[:60]
    assert any("![" in line for line in head), "no image in the README's first 60 lines"
    assert any(re.match(r"^\|.*\|\s*$", line) for line in head) and any(
        re.match(r"^\|\s*:?-{3,}", line) for line in head
    ), "no Markdown table in the README's first 60 lines"
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    for target in targets:
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        assert (ROOT / target.split("#")[0]).exists(), f"README.md links to {target}, which does not exist"
    linked = {t.split("#")[0] for t in targets}
    pages = sorted(DOCS.glob("*.md"))
    assert pages, "docs/ has no pages"
    missing = [p.name for p in pages if f"docs/{p.name}" not in linked]
    assert not missing, f"README.md does not link these docs pages: {missing}"


def test_every_ul_command_line_in_the_docs_parses():
    pytest.importorskip("torch")
    # The checker is not vacuous: wrong lines are found and rejected.
    assert cli_args("ul train --no-such-flag") == ["train", "--no-such-flag"]
    assert check_command(cli_args("ul train --no-such-flag")) is not None
    assert check_command(cli_args("ul no-such-command --outdir x")) is not None
    assert check_command(cli_args("ul train --preset no-such-preset --outdir x")) is not None
    assert check_command(cli_args("ul train --outdir x --set train.no_such_key=1")) is not None
    assert (
        check_command(cli_args("python -m unified_latents sample --seeds 0-3 --outdir x")) is not None
    )  # no --artifact
    assert (
        check_command(cli_args("torchrun --nproc_per_node=2 -m unified_latents train --preset fmnist --outdir x"))
        is None
    )
    assert cli_args("ul demo --artifact a.safetensors [--port 7860]   # note") == [
        "demo",
        "--artifact",
        "a.safetensors",
        "--port",
        "7860",
    ]
    assert cli_args("ul train --outdir x [--set ...]") == ["train", "--outdir", "x"]

    checked, failures, skipped = 0, [], []
    for path in doc_files():
        for no, line in code_lines(path):
            args = cli_args(line)
            if args is None:
                continue
            where = f"{path.relative_to(ROOT)}:{no}"
            if line.strip() in SKIP:
                skipped.append(where)
                continue
            error = check_command(args)
            checked += 1
            if error:
                failures.append(f"{where}: {line.strip()}\n    -> {error}")
    assert not failures, "command lines in the docs that `ul` rejects:\n" + "\n".join(failures)
    assert checked >= 20, f"only {checked} command lines were checked; is the extraction broken?"
