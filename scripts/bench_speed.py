#!/usr/bin/env python
"""Speed benchmark: segtool's default model against the models users would pick instead.

One run, one machine, the same input (a CamVid-sized 360x480 RGB image, batch 1, threads =
cores): median ms per image for PyTorch eager and ONNX Runtime (fp32, and int8 for
segtool), random weights for the peers; then end-to-end `segtool predict` over a folder
(images/s including reading and writing, peak RSS), `segtool --help` and a one-image
predict, each as a fresh process.

    python scripts/bench_speed.py --data ../shared/datasets/camvid
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segtool.config import parse_split  # noqa: E402
from segtool.engine.checkpoint import BUILTIN, load_model  # noqa: E402
from segtool.engine.export import export_model  # noqa: E402
from segtool.engine.onnx_model import session_options  # noqa: E402

H, W = 360, 480


def median_ms(fn, x, runs: int) -> float:
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def torch_runner(model):
    model.eval()

    def run(x):
        with torch.inference_mode():
            out = model(torch.from_numpy(x))
            return out["out"] if isinstance(out, dict) else out

    return run


def ort_runner(path: Path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})


class Out(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)["out"]


def to_onnx(model, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, H, W),), str(path), input_names=["image"], opset_version=17, dynamo=False)
    return path


def peers(k: int) -> dict[str, torch.nn.Module]:
    import torchvision.models.segmentation as tvs

    out = {
        "torchvision LR-ASPP MobileNetV3-L": Out(tvs.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=k)),
        "torchvision DeepLabV3 MobileNetV3-L": Out(tvs.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=k, aux_loss=False)),
    }
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        print("segmentation_models_pytorch not installed: skipping its models (pip install -e '.[bench]')")
        return out
    # 360x480 is not a multiple of 32, which smp's decoders require: they run on 384x480.
    out["smp Unet mobilenet_v2 (384x480)"] = smp.Unet("mobilenet_v2", encoder_weights=None, classes=k)
    out["smp DeepLabV3Plus mobilenet_v2 (384x480)"] = smp.DeepLabV3Plus("mobilenet_v2", encoder_weights=None, classes=k)
    return out


def _hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cli(*args: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `segtool ...` process.

    The peak is the child's own VmHWM, polled while it runs: getrusage's ru_maxrss would
    include this (torch-sized) parent's memory, which a forked child inherits."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "segtool", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _hwm_mb(proc.pid) or 0.0)
        time.sleep(0.01)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"segtool {' '.join(args)} failed: {proc.stderr.read().strip()[-400:]}")
    return wall, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="CamVid folder: val images for end-to-end predict and int8 calibration")
    ap.add_argument("--checkpoint", type=Path, default=BUILTIN, help="segtool model [default: the built-in one]")
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_speed_"))
    x = np.random.default_rng(0).standard_normal((1, 3, H, W)).astype(np.float32)
    x32 = np.random.default_rng(0).standard_normal((1, 3, 384, W)).astype(np.float32)
    cfg, model = load_model(args.checkpoint)
    k = cfg.data.num_classes
    val = parse_split(str(Path(args.data) / "val.txt")) if args.data else None
    train = parse_split(str(Path(args.data) / "train.txt")) if args.data else None

    rows: list[tuple[str, str, float]] = []
    rows.append(("segtool (default model)", "PyTorch", median_ms(torch_runner(model), x, args.runs)))
    fp32 = tmp / "segtool.onnx"
    export_model(args.checkpoint, fp32, data=val)
    rows.append(("segtool (default model)", "ORT fp32", median_ms(ort_runner(fp32), x, args.runs)))
    int8 = tmp / "segtool.int8.onnx"
    try:
        report = export_model(args.checkpoint, int8, int8=True, calibration=train, data=val)
        rows.append(("segtool (default model)", "ORT int8", median_ms(ort_runner(int8), x, args.runs)))
        q = report["int8"]
        print(f"int8: val mIoU {100 * q['miou_int8']:.2f} vs fp32 {100 * q['miou_fp32']:.2f}")
    except Exception as e:  # report it in the table instead of losing the whole run
        print(f"int8 export failed: {e}")
    for name, peer in peers(k).items():
        inp = x32 if "smp" in name else x
        rows.append((name, "PyTorch", median_ms(torch_runner(peer), inp, args.runs)))
        try:
            rows.append((name, "ORT fp32", median_ms(ort_runner(to_onnx(peer, tmp / f"{len(rows)}.onnx")), inp, args.runs)))
        except Exception as e:
            print(f"{name}: ONNX export failed ({type(e).__name__})")

    fastest_peer = {b: min(ms for n, bb, ms in rows if bb == b and not n.startswith("segtool")) for b in ("PyTorch", "ORT fp32")}
    fastest_ort = fastest_peer["ORT fp32"]
    print(f"\n360x480 RGB, batch 1, {threads} threads, median of {args.runs} runs")
    print(f"{'model':44s} {'backend':9s} {'ms/img':>8s} {'vs fastest peer':>16s} {'vs fastest peer ORT':>20s}")
    for name, backend, ms in rows:
        same = fastest_peer.get(backend, fastest_ort)
        print(f"{name:44s} {backend:9s} {ms:8.1f} {ms / same:15.2f}x {ms / fastest_ort:19.2f}x")

    print("\nprocesses (fresh, cold start)")
    wall, _ = cli("--help")
    print(f"segtool --help: {wall:.2f} s")
    if args.data:
        one = next(iter(sorted((Path(args.data) / "val").glob("*.png"))))
        wall, rss = cli("predict", str(one), "--model", str(fp32), "--out", str(tmp / "one"), "-q")
        print(f"segtool predict one image (ONNX Runtime): {wall:.2f} s, peak RSS {rss:.0f} MB")
        folder = str(Path(args.data) / "val")
        n = len(list(Path(folder).glob("*.png")))
        for label, model_file, ms in (
            ("ONNX Runtime fp32", fp32, next(m for nm, b, m in rows if nm.startswith("segtool") and b == "ORT fp32")),
            ("PyTorch", args.checkpoint, rows[0][2]),
        ):
            wall, rss = cli("predict", folder, "--model", str(model_file), "--out", str(tmp / label.replace(" ", "_")), "-q")
            ips = n / wall
            print(f"segtool predict {n} images, {label}: {ips:.1f} img/s end to end "
                  f"({100 * ips / (1000 / ms):.0f}% of model-only {1000 / ms:.1f} img/s), peak RSS {rss:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    main()
