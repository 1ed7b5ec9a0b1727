"""The layout's promises, checked: the torch-free packages load no torch, and imports flow
one way (cli -> serve -> api -> {training, inference, reporting} -> {data, models} -> config -> errors)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "segtool"
# What the light install (no torch) runs: every module here must import without torch.
TORCH_FREE = [
    "segtool",
    "segtool.api",
    "segtool.cli",
    "segtool.config",
    "segtool.builtin",
    "segtool.metrics",
    "segtool.fsutil",
    "segtool.data.io",
    "segtool.data.pairs",
    "segtool.data.doctor",
    "segtool.data.survey",
    "segtool.data.synthetic",
    "segtool.data.ignore_check",
    "segtool.data.annotations",
    "segtool.data.annotation_survey",
    "segtool.data.convert",
    # every inference module but the PyTorch backend, which backends imports only for .pt
    *sorted(
        f"segtool.inference.{p.stem}"
        for p in (PKG / "inference").glob("*.py")
        if p.stem not in ("__init__", "torch_backend")
    ),
    "segtool.reporting.report",
    "segtool.reporting.gates",
    "segtool.reporting.html",
    "segtool.reporting.evaluate",
    # the server (with the serve extra installed): the ONNX Runtime path without torch
    "segtool.serve",
    "segtool.serve.batcher",
    "segtool.serve.app",
    "segtool.serve.runner",
]


def test_the_torch_free_modules_load_no_torch():
    code = (
        "import importlib, sys\n"
        f"for m in {TORCH_FREE!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'albumentations', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    """The segtool modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segtool"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("segtool")}
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


# part -> parts it must never import (the arrows point the other way)
NEVER = {
    "inference": {"training", "reporting", "cli", "api"},
    "reporting": {"training", "cli", "api"},
    "training": {"cli", "api"},
    "serve": {"training", "reporting", "cli"},
    "models": {"data", "training", "inference", "reporting", "cli", "api"},
    "data": {"training", "reporting", "cli", "api"},
    "config": {"data", "models", "training", "inference", "reporting", "cli", "api"},
    "errors": {"data", "models", "training", "inference", "reporting", "cli", "api", "config"},
}


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_flow_one_way(path):
    here = ".".join(path.relative_to(PKG.parent).with_suffix("").parts)
    rules = NEVER.get(_part(here), set())
    wrong = sorted(m for m in _imports(path) if _part(m) in rules and not (_part(m) == "api" and here == "segtool"))
    assert not wrong, f"{here} imports {wrong}"
