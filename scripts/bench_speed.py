#!/usr/bin/env python
"""Speed benchmark: how fast is segtool's default model against the models users would pick
instead?

One run, one machine, the same input (a CamVid-sized 360x480 RGB image, batch 1, threads =
cores): median ms per image for PyTorch eager and ONNX Runtime (fp32, and int8 for
segtool), random weights for the peers; `segtool --help` and a one-image predict as fresh
processes; then folder prediction over CamVid val with masks and overlays written, in
process (the predict pipeline with its model loaded) and as a whole `segtool predict`
process (interpreter start included, peak RSS), each as images/s and as a share of the
backend's model-only throughput (for ONNX Runtime the better of one stream with a thread
per core and one single-thread stream per core).

    python scripts/bench_speed.py --data ../shared/datasets/camvid

Needs segtool installed with the train extra (pip install -e ".[train]"; ".[bench]" adds
segmentation_models_pytorch's peers).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

import segtool
from segtool.inference.onnx_model import OnnxSegmenter, session_options
from segtool.models.checkpoint import BUILTIN, load_model, resolve_checkpoint

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
        torch.onnx.export(
            model.eval(), (torch.randn(1, 3, H, W),), str(path), input_names=["image"], opset_version=17, dynamo=False
        )
    return path


def peers(k: int) -> dict[str, torch.nn.Module]:
    import torchvision.models.segmentation as tvs

    out = {
        "torchvision LR-ASPP MobileNetV3-L": Out(
            tvs.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=k)
        ),
        "torchvision DeepLabV3 MobileNetV3-L": Out(
            tvs.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=k, aux_loss=False)
        ),
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
    proc = subprocess.Popen(
        [sys.executable, "-m", "segtool", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
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
    ap.add_argument(
        "--checkpoint",
        default=None,
        help="segtool model: a .pt file or a built-in name such as camvid-large [default: the default built-in one]",
    )
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_speed_"))
    x = np.random.default_rng(0).standard_normal((1, 3, H, W)).astype(np.float32)
    x32 = np.random.default_rng(0).standard_normal((1, 3, 384, W)).astype(np.float32)
    checkpoint = resolve_checkpoint(args.checkpoint)
    ours = "segtool (default model)" if checkpoint == BUILTIN else f"segtool ({args.checkpoint})"
    cfg, model = load_model(checkpoint)
    k = cfg.data.num_classes
    val = str(Path(args.data) / "val.txt") if args.data else None
    train = str(Path(args.data) / "train.txt") if args.data else None

    rows: list[tuple[str, str, float]] = []
    rows.append((ours, "PyTorch", median_ms(torch_runner(model), x, args.runs)))
    fp32 = tmp / "segtool.onnx"
    segtool.export(checkpoint, fp32, data=val)
    rows.append((ours, "ORT fp32", median_ms(ort_runner(fp32), x, args.runs)))
    int8 = tmp / "segtool.int8.onnx"
    try:
        report = segtool.export(checkpoint, int8, int8=True, calibration=train, data=val)
        rows.append((ours, "ORT int8", median_ms(ort_runner(int8), x, args.runs)))
        q = report.int8
        print(f"int8: val mIoU {100 * q.miou_int8:.2f} vs fp32 {100 * q.miou_fp32:.2f}")
    except Exception as e:  # report it in the table instead of losing the whole run
        print(f"int8 export failed: {e}")
    for name, peer in peers(k).items():
        inp = x32 if "smp" in name else x
        rows.append((name, "PyTorch", median_ms(torch_runner(peer), inp, args.runs)))
        try:
            rows.append(
                (name, "ORT fp32", median_ms(ort_runner(to_onnx(peer, tmp / f"{len(rows)}.onnx")), inp, args.runs))
            )
        except Exception as e:
            print(f"{name}: ONNX export failed ({type(e).__name__})")

    fastest_peer = {
        b: min(ms for n, bb, ms in rows if bb == b and not n.startswith("segtool")) for b in ("PyTorch", "ORT fp32")
    }
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
        print(f"\nfolder prediction, {n} CamVid val images of 360x480, masks and overlays written")
        ort_fp32 = next(m for nm, b, m in rows if nm.startswith("segtool") and b == "ORT fp32")
        onnx_streams = OnnxSegmenter(fp32, threads=1)
        parallel = streams_img_s(onnx_streams.logits, x, threads, 2 * args.runs)
        model_only = {"ONNX Runtime fp32": max(1000 / ort_fp32, parallel), "PyTorch": 1000 / rows[0][2]}
        print(
            f"model only, ONNX Runtime: {1000 / ort_fp32:.1f} img/s as 1 stream x {threads} threads, "
            f"{parallel:.1f} img/s as {threads} streams x 1 thread"
        )
        for label, model_file in (("ONNX Runtime fp32", fp32), ("PyTorch", checkpoint)):
            loaded = segtool.load(model_file)  # the CLI's default backend, batch sizes and streams
            streams = loaded.predictor.streams  # opens the model, outside the timing
            t = time.perf_counter()
            done = loaded.predict_files([folder], tmp / f"pipe_{streams}")
            ips = len(done.written) / (time.perf_counter() - t)
            best = model_only[label]
            print(
                f"{label}, in process (predict_files, {streams} stream(s)): {ips:.1f} img/s = "
                f"{100 * ips / best:.0f}% of model-only {best:.1f} img/s"
            )
        for label, model_file in (("ONNX Runtime fp32", fp32), ("PyTorch", checkpoint)):
            wall, rss = cli(
                "predict", folder, "--model", str(model_file), "--out", str(tmp / label.replace(" ", "_")), "-q"
            )
            ips = n / wall
            print(
                f"{label}, whole `segtool predict` process (start-up included): {ips:.1f} img/s = "
                f"{100 * ips / model_only[label]:.0f}% of model-only, peak RSS {rss:.0f} MB"
            )


def streams_img_s(run, x, streams: int, runs: int) -> float:
    """Images/s of `streams` threads each running `run` on batch-1 inputs at once."""
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(lambda _: run(x), range(3 * streams)))  # warm-up, every thread
    t = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(lambda _: run(x), range(runs * streams)))
    return runs * streams / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
