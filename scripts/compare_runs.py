"""Compare two run folders written by `ul pipeline` (or `ul train`): is the behaviour the same?

    python scripts/compare_runs.py RUN_A RUN_B

For every artifact (`*/artifact.safetensors` and `artifact.safetensors`) present in both, it
reports whether the files are byte-equal (a file in one run only is a difference), whether the
tensor bytes and the tensor index are equal, and which metadata differ (configs compared field
by field, so a new config field with its default shows up by name). Then whether each
`eval.json` is byte-equal, with the differing values if not. Exit status 0 when every tensor
and every eval.json is equal, 1 otherwise.
Used to show that a refactor changes no result: run the old and the new commit with the same
command and the same output path (the path is recorded in the run), then compare.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unified_latents.config import flatten  # noqa: E402


def _split(path: Path) -> tuple[dict, dict, bytes, bytes]:
    """(tensor index, metadata, tensor bytes, whole file) of a safetensors file."""
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    return header, header.pop("__metadata__", {}), blob[8 + n :], blob


def _diff(a: dict, b: dict) -> dict:
    fa, fb = flatten(a), flatten(b)
    absent = "<absent>"
    return {
        k: (fa.get(k, absent), fb.get(k, absent))
        for k in sorted(set(fa) | set(fb))
        if fa.get(k, absent) != fb.get(k, absent)
    }


def _json_or_text(v: str | None):
    try:
        return json.loads(v) if v is not None else {}
    except json.JSONDecodeError:
        return v


def compare_artifacts(a: Path, b: Path) -> tuple[bool, list[str]]:
    """(tensors equal, report lines)."""
    ia, ma, da, fa = _split(a)
    ib, mb, db, fb = _split(b)
    same = da == db and ia == ib
    lines = [
        f"file bytes equal: {fa == fb}; tensor bytes equal: {da == db} ({len(da):,} bytes); "
        f"tensor index equal: {ia == ib}"
    ]
    for k in sorted(set(ma) | set(mb)):
        va, vb = _json_or_text(ma.get(k)), _json_or_text(mb.get(k))
        if va == vb:
            continue
        detail = _diff(va, vb) if isinstance(va, dict) and isinstance(vb, dict) else (va, vb)
        lines.append(f"metadata {k!r} differs: {detail}")
    return same, lines


def _both(a: Path, b: Path, name: str, lines: list[str]) -> tuple[list[Path], bool]:
    """Relative paths of `name` files in both runs; those in one run only are reported as a difference."""
    in_a, in_b = {p.relative_to(a) for p in a.rglob(name)}, {p.relative_to(b) for p in b.rglob(name)}
    for rel in sorted(in_a ^ in_b):
        lines.append(f"{rel}: only in {a if rel in in_a else b}")
    return sorted(in_a & in_b), in_a == in_b


def compare_runs(a: Path, b: Path) -> tuple[bool, list[str]]:
    lines: list[str] = []
    arts, ok = _both(a, b, "artifact.safetensors", lines)
    evals, same_evals = _both(a, b, "eval.json", lines)
    ok &= same_evals
    for rel in arts:
        same, sub = compare_artifacts(a / rel, b / rel)
        ok &= same
        lines += [f"{rel}:"] + [f"  {s}" for s in sub]
    for rel in evals:
        ea, eb = (a / rel).read_bytes(), (b / rel).read_bytes()
        ok &= ea == eb
        lines.append(f"{rel}: byte-equal: {ea == eb}")
        if ea != eb:
            lines.append(f"  differs: {_diff(json.loads(ea), json.loads(eb))}")
    if not arts and not evals:
        lines.append("nothing to compare: no artifact.safetensors or eval.json in both folders")
        ok = False
    return ok, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    args = ap.parse_args()
    ok, lines = compare_runs(args.run_a, args.run_b)
    print("\n".join(lines))
    print("same tensors and evaluations" if ok else "DIFFERENT")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
