"""How big is each install profile, and what does a cold `segtool predict image.png` cost?

    python scripts/bench_install.py [--image docs/examples/u_street.jpg] [--runs 5] [--train]

Builds the light profile (`pip install .`: ONNX Runtime, no torch) into a new virtual
environment that holds nothing else (not even pip), measures it on disk, and times whole
`segtool predict IMAGE` processes with the default built-in model: wall time and peak RSS
of the process (its own rusage). The
same command on PyTorch (`--backend torch`, from the environment running this script,
which needs the train extra) is timed on the same image in the same run, so the ratios
hold whatever the machine. `--train` also builds the train profile (`pip install
".[train]"`) and measures it; with PyPI's default torch on x86_64 Linux that is the CUDA
build, several GB, which is why the README shows how to take PyTorch's CPU wheels.

Targets (issue 32): light profile under 400 MB; cold predict under 1.0 s and 200 MB. Run it
from a checkout (it installs that checkout); the PyTorch row needs the train extra here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def du_mb(path: Path) -> float:
    total = 0
    for folder, _, names in os.walk(path):
        for n in names:
            p = Path(folder) / n
            if not p.is_symlink():
                total += p.stat().st_size
    return total / 1e6


def make_venv(where: Path, spec: str) -> Path:
    """A venv holding `spec` and what it needs, and nothing else: it is made without pip
    (and setuptools), and this Python's pip installs into it, so its size is the install's."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    pip = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(where / "bin" / "python"),
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    subprocess.run([*pip, spec], check=True, cwd=ROOT, stderr=subprocess.DEVNULL)
    return where


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one whole process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-500:]}")
    return wall, usage.ru_maxrss / 1024  # kB on Linux


def cold_predict(segtool: list[str], image: Path, out: Path, runs: int, *extra: str) -> tuple[float, float]:
    """Median wall time and peak RSS over `runs` fresh processes (after one that warms the
    file cache and writes the .pyc files, which a user's second run also finds)."""
    cmd = [*segtool, "predict", str(image), "--out", str(out), "--overwrite", "-q", *extra]
    timed(cmd)
    samples = [timed(cmd) for _ in range(runs)]
    return statistics.median(s[0] for s in samples), max(s[1] for s in samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, default=ROOT / "docs" / "examples" / "u_street.jpg")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--train", action="store_true", help="also build and measure the train profile (slow, several GB)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="segtool-bench-install-") as tmp:
        tmp = Path(tmp)
        light = make_venv(tmp / "light", ".")
        site = next((light / "lib").glob("python*/site-packages"))
        has_torch = (site / "torch").exists()
        wall, rss = cold_predict([str(light / "bin" / "segtool")], args.image, tmp / "p1", args.runs)
        rows.append(("light (pip install segtool), ONNX Runtime", du_mb(light), wall, rss))
        print(
            f"light profile: {du_mb(light):.0f} MB venv ({du_mb(site):.0f} MB site-packages), "
            f"torch installed: {has_torch}"
        )
        if args.train:
            train = make_venv(tmp / "train", ".[train]")
            rows.append(("train (pip install 'segtool[train]'), venv only", du_mb(train), float("nan"), float("nan")))
        try:
            import torch  # noqa: F401

            here = [sys.executable, "-m", "segtool"]
            wall_t, rss_t = cold_predict(here, args.image, tmp / "p2", args.runs, "--backend", "torch")
            rows.append(("this environment, --backend torch", float("nan"), wall_t, rss_t))
        except ImportError:
            print("(no torch in this environment: the PyTorch row is left out)")
    print(
        f"\ncold `segtool predict {args.image.name}` with the default built-in model, {os.cpu_count()} cores, "
        f"median of {args.runs} processes (peak RSS: the largest)"
    )
    print(f"{'profile / path':50s} {'on disk MB':>10s} {'wall s':>8s} {'peak RSS MB':>12s}")
    for name, size, wall, rss in rows:
        print(f"{name:50s} {size:10.0f} {wall:8.2f} {rss:12.0f}")
    if len(rows) > 1 and rows[-1][2] == rows[-1][2]:
        print(
            f"\nlight vs torch path: {rows[-1][2] / rows[0][2]:.1f}x faster to start and predict, "
            f"{rows[-1][3] / rows[0][3]:.1f}x less memory"
        )
    light_row = rows[0]
    ok = light_row[1] < 400 and light_row[2] < 1.0 and light_row[3] < 200
    print(f"targets (light < 400 MB, cold predict < 1.0 s and < 200 MB): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
