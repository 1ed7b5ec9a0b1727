"""The `segtool` command: thin Typer commands that parse, call one API function, and
print a summary. User errors become one line and an exit code here, and only here.

Engine modules (and so torch) are imported inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

import typer

from segtool import __version__
from segtool.errors import ConfigError, Interrupted, SegtoolError
from segtool.fsutil import printable

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=(
        "Semantic segmentation from a folder of images and masks: train, evaluate, predict.\n\n"
        "Exit codes, for every command: 0 success; 1 a gate failed (evaluate's --min-miou, "
        "--baseline, ...; check-data's findings); 2 a usage, config or input error (missing or "
        "unreadable file, bad option); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM)."
    ),
    epilog=(
        "Quick start:\n\n"
        "  segtool train configs/quickstart.yaml\n\n"
        "  segtool evaluate runs/quickstart/best.pt --json report.json --min-miou 0.5\n\n"
        "  segtool predict street.png photos/ --checkpoint runs/quickstart/best.pt --out preds/"
    ),
)

_state = {"debug": False}


def _rank() -> int:
    """The rank torchrun gave this process (0 when not under torchrun); only rank 0 prints."""
    return int(os.environ.get("RANK", "0"))


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so `with` blocks unwind (thread pools end,
    temporary files are removed) before the process exits 143, as a shell reports it."""


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001
    raise _Terminated()


@contextmanager
def _errors() -> Iterator[None]:
    """SegtoolError -> `error: ...` on stderr and its exit code; no traceback unless --debug.
    Exit codes, one rule for every command: 0 success, 1 a gate failed, 2 a usage, config
    or input error, 130 interrupted (SIGINT), 143 terminated (SIGTERM)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)  # train installs its own, which saves first
    try:
        yield
    except SegtoolError as e:
        if _state["debug"]:
            raise
        rank = _rank()
        if rank == 0:
            typer.echo(f"error: {printable(e.one_line())}", err=True)
        elif not isinstance(e, Interrupted):  # under torchrun rank 0 already said where the run stopped
            typer.echo(f"error: rank {rank}: {printable(e.one_line())}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except _Terminated:
        typer.echo("terminated", err=True)
        raise typer.Exit(143) from None


def without_nproc(argv: list[str]) -> list[str]:
    """The command line as given, less its `--nproc N` (or `--nproc=N`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _launch(nproc: int) -> None:
    """`--nproc N`: this same command line under torchrun, N processes on this machine.
    The line is relaunched as the user typed it, so every option reaches the ranks."""
    if "WORLD_SIZE" in os.environ:
        raise SegtoolError("--nproc under torchrun: drop --nproc, torchrun already started the processes")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "segtool"]
    cmd += without_nproc(sys.argv[1:])
    typer.echo("running: torchrun " + " ".join(cmd[3:]), err=True)
    raise typer.Exit(subprocess.call(cmd))


class Device(str, Enum):
    """Where the model runs: chosen on the machine that runs the command, never read from
    the checkpoint."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DEVICE_HELP = "Run the model on auto (a CUDA GPU when there is one), cpu or cuda; never taken from the checkpoint."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"segtool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


@app.command(
    epilog="Example:\n\n  segtool train configs/quickstart.yaml --set train.epochs=3 model.head=unet",
)
def train(
    config: Path = typer.Argument(..., help="YAML config (see configs/default.yaml for every key)."),
    overrides: list[str] | None = typer.Argument(
        None, help="More key=value overrides, like --set.", show_default=False
    ),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a config key: --set train.epochs=3."),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default: <train.out_dir>/<name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    nproc: int = typer.Option(
        1,
        "--nproc",
        min=1,
        help="Train with N processes on this machine (runs torchrun; train.batch_size is per process).",
    ),
) -> None:
    """Train a model; writes config.yaml, metrics.csv, last.pt and best.pt into the run folder."""
    with _errors():
        if nproc > 1:
            _launch(nproc)
        import segtool

        run = segtool.train(config, [*(set_ or []), *(overrides or [])], out=out, resume=resume, progress=not quiet)
        if _rank() == 0:
            typer.echo(
                f"trained {_count(run.epochs, 'epoch')} in {run.seconds:.1f}s; "
                f"best val mIoU {100 * run.best_miou:.1f} -> {run.best}"
            )


@app.command(
    help=(
        "Per-class IoU, mIoU, pixel and mean class accuracy and Dice over a whole split, with CI gates.\n\n"
        "Exit codes: 0 every gate passed; 1 a gate failed; 2 usage, config or input error, or some pairs could not "
        "be read (the rest were evaluated and gated)."
    ),
    epilog=(
        "Examples:\n\n  segtool evaluate runs/quickstart/best.pt --json report.json --min-miou 0.5\n\n"
        "  segtool evaluate runs/camvid/best.pt --data ../shared/datasets/camvid/val.txt --report report/\n\n"
        "  segtool evaluate model.onnx --data val.txt --baseline ci/baseline.json --max-drop 0.005 --junit junit.xml"
    ),
)
def evaluate(
    checkpoint: Path | None = typer.Argument(
        None,
        help="A .pt checkpoint written by segtool train, a .onnx model written by segtool export (scored without "
        "torch), or a built-in model's name: camvid (the default) or camvid-large (slower, more accurate).",
        show_default=False,
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Split to evaluate: a list file or a folder with images/ and masks/ "
        "(default: the checkpoint's val split).",
    ),
    json_out: Path | None = typer.Option(
        None, "--json", help="Write every metric to this JSON file (the report a later --baseline reads)."
    ),
    min_miou: float | None = typer.Option(
        None, "--min-miou", min=0.0, max=1.0, help="Gate: mIoU (a fraction, 0..1) at least this."
    ),
    min_class_iou: list[str] | None = typer.Option(
        None,
        "--min-class-iou",
        help="Gate: CLASS=IOU, that class's IoU at least IOU (repeatable), e.g. Pedestrian=0.30.",
    ),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="Gate: no worse than this earlier --json report (same classes, same data)."
    ),
    max_drop: float = typer.Option(
        0.0, "--max-drop", min=0.0, max=1.0, help="With --baseline: the mIoU may fall by at most this (a fraction)."
    ),
    max_class_drop: float | None = typer.Option(
        None,
        "--max-class-drop",
        min=0.0,
        max=1.0,
        help="With --baseline: each class's IoU may fall by at most this (default: per-class changes are not gated).",
        show_default=False,
    ),
    markdown_out: Path | None = typer.Option(
        None,
        "--markdown",
        help="Write a Markdown summary (metrics, per-class deltas, gates); "
        "also appended to $GITHUB_STEP_SUMMARY when set.",
    ),
    junit_out: Path | None = typer.Option(None, "--junit", help="Write JUnit XML, one test case per gate."),
    report_dir: Path | None = typer.Option(
        None,
        "--report",
        help="Write a self-contained HTML page into this folder: metrics, confusion matrix, "
        "and the worst images as image | truth | prediction | errors.",
    ),
    report_images: int = typer.Option(
        8, "--report-images", min=1, help="How many of the worst images the --report page shows."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Evaluate with N processes on this machine (runs torchrun)."),
    tta: bool = typer.Option(
        False,
        "--tta",
        help="Test-time augmentation: average 6 views (scales 0.75, 1, 1.25, each mirrored); about 6x the time.",
    ),
    device: Device = typer.Option(Device.auto, "--device", help=DEVICE_HELP),
    tile: bool | None = typer.Option(
        None,
        "--tile/--no-tile",
        help="Evaluate every image by overlapping windows, or none (default: those above data.tile_above pixels).",
        show_default=False,
    ),
) -> None:
    with _errors():
        if nproc > 1:
            _launch(nproc)
        from segtool.fsutil import atomic_write_text
        from segtool.metrics import format_table
        from segtool.reporting import gates as g

        if baseline is None and (max_drop or max_class_drop is not None):
            raise ConfigError("--max-drop and --max-class-drop compare against --baseline REPORT.json; add it")
        if report_dir:  # a folder the page cannot go into fails now, not after the whole split is scored
            from segtool.reporting.html import check_report_dir

            check_report_dir(report_dir)
        import segtool

        model = segtool.load(checkpoint, device=device.value, tta=tta, tile=tile)
        result = model.report(data, progress=not quiet)
        report = result.to_dict()
        floors = g.parse_floors(min_class_iou or [], [c["class"] for c in report["per_class"]])
        base = g.load_baseline(baseline, report) if baseline else None
        gates = g.check_gates(
            report, min_miou=min_miou, floors=floors, baseline=base, max_drop=max_drop, max_class_drop=max_class_drop
        )
        code = g.exit_code(report, gates)
        if _rank() != 0:  # under torchrun every rank holds the same report; rank 0 tells it
            raise typer.Exit(code)
        typer.echo(f"{result.images} images from {result.data}" + (", test-time augmented (6 views)" if tta else ""))
        typer.echo(format_table(result.metrics))
        if json_out:
            atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")
            typer.echo(f"wrote {json_out}")
        for path in (
            g.write_summary(markdown_out, g.markdown(report, gates, base))
            if markdown_out or os.environ.get("GITHUB_STEP_SUMMARY")
            else []
        ):
            typer.echo(f"wrote {path}")
        if junit_out:
            atomic_write_text(junit_out, g.junit(report, gates))
            typer.echo(f"wrote {junit_out}")
        if report_dir:
            from segtool.reporting.html import report_for_model

            page = report_for_model(
                Path(report["model"]),
                report,
                result.per_image,
                report_dir,
                worst=report_images,
                device=device.value,
                tile=tile,
            )
            typer.echo(f"wrote {page}")
        for f in result.failed:
            typer.echo(f"skipped {f['image']}: {f['error']}" if f["image"] else f"skipped: {f['error']}", err=True)
        if result.failed:
            typer.echo(
                f"{len(result.failed)} pair(s) could not be read and were left out of the metrics (exit 2)", err=True
            )
        for gate in gates:
            typer.echo(f"{gate.verdict}: {gate.detail}", err=not gate.passed)
        raise typer.Exit(code)


@app.command(
    help=(
        "Write <stem>_mask.png (palette class indices) and <stem>_overlay.jpg per image, at its own size; "
        "<stem>_overlay.mp4 per video.\n\n"
        "Says on one line (unless -q) which model, backend and device it used."
    ),
    epilog=(
        "Example:\n\n"
        '  segtool predict street.png photos/ "more/*.jpg" --checkpoint runs/quickstart/best.pt --out preds/'
    ),
)
def predict(
    inputs: list[str] = typer.Argument(
        ..., help="Image files, folders and glob patterns, and video files (.mp4, .avi, .mov, .mkv, .webm)."
    ),
    checkpoint: Path | None = typer.Option(
        None,
        "--checkpoint",
        "-c",
        "--model",
        "-m",
        help="A .pt checkpoint from segtool train or a .onnx model from segtool export (default: the built-in "
        "CamVid road-scene model; camvid-large names the slower, more accurate built-in one; see segtool info).",
        show_default=False,
    ),
    backend: str = typer.Option(
        "auto", "--backend", help="auto (by the file: .onnx -> onnxruntime, else torch), torch or onnx."
    ),
    out: Path = typer.Option(Path("preds"), "--out", help="Output folder."),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Images per forward pass (default: 4 for PyTorch; 1 per stream for ONNX Runtime, "
        "which runs one stream per core).",
        show_default=False,
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images whose outputs already exist."),
    overlay: bool = typer.Option(
        True, "--overlay/--no-overlay", help="Also write <stem>_overlay.jpg, the image with its classes blended in."
    ),
    legend: bool = typer.Option(
        True, "--legend/--no-legend", help="Draw the colour and name of each class present onto the overlay."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no model line."),
    tta: bool = typer.Option(
        False,
        "--tta",
        help="Test-time augmentation (PyTorch checkpoints): average 6 views (scales 0.75, 1, 1.25, each mirrored); "
        "about 6x the time.",
    ),
    device: Device = typer.Option(Device.auto, "--device", help=DEVICE_HELP + " ONNX models run on the CPU."),
    video_masks: bool = typer.Option(
        False, "--video-masks", help="For videos, also write <stem>_masks/NNNNNN.png, one palette mask per frame."
    ),
    tile: bool | None = typer.Option(
        None,
        "--tile/--no-tile",
        help="Predict every image by overlapping windows, or none (default: those above the model's "
        "data.tile_above pixels, 4 megapixels unless set).",
        show_default=False,
    ),
    confidence: bool = typer.Option(
        False,
        "--confidence",
        help="Also write <stem>_confidence.png: each pixel's top-class probability as 8 bits (255 = certain).",
    ),
) -> None:
    with _errors():
        import segtool
        from segtool.inference.outputs import output_names
        from segtool.inference.video import is_video, predict_video

        if backend not in ("auto", "torch", "onnx"):
            raise ConfigError(f"--backend {backend}: use auto, torch or onnx")
        model = segtool.load(
            checkpoint, backend=backend, device=device.value, tta=tta, tile=tile, batch_size=batch_size
        )
        predictor = model.predictor  # opened once, for videos and images alike
        if not quiet:
            typer.echo(predictor.describe())
        videos = [Path(i) for i in inputs if is_video(Path(i)) and Path(i).is_file()]
        for video, name in zip(videos, output_names(videos)):  # two drive.mp4 from two folders keep apart
            done = predict_video(
                video,
                out,
                predictor,
                name=name,
                masks=video_masks,
                legend=legend,
                overwrite=overwrite,
                progress=not quiet,
            )
            of = f" of {done.total}" if done.total else ""
            if done.interrupted:
                typer.echo(
                    f"interrupted: wrote {printable(done.path)} with the first {done.frames}{of} frames "
                    "(a playable video)",
                    err=True,
                )
                raise typer.Exit(130)
            typer.echo(f"wrote {printable(done.path)} ({done.frames}{of} frames)")
        images = [i for i in inputs if Path(i) not in videos]
        if not images:
            return
        result = model.predict_files(
            images, out, overwrite=overwrite, progress=not quiet, overlays=overlay, legend=legend, confidence=confidence
        )
        for name, why in result.failed:
            typer.echo(f"skipped {name}: {why}", err=True)
        s = "s" if len(result.written) != 1 else ""
        kinds = [f"mask{s}"] + [f"{x}{s}" for x, on in (("overlay", overlay), ("confidence map", confidence)) if on]
        typer.echo(
            f"wrote {len(result.written)} {', '.join(kinds[:-1]) + ' and ' if len(kinds) > 1 else ''}{kinds[-1]} "
            f"to {printable(out)}"
            + (f", {len(result.skipped)} already there (--overwrite redoes them)" if result.skipped else "")
            + (f", {len(result.failed)} failed" if result.failed else "")
        )
        if result.failed:  # an input that could not be read is an input error
            raise typer.Exit(2)


@app.command(
    help=(
        "Export for deployment; the file carries classes, colours and normalisation, "
        "and is kept only if it matches PyTorch."
    ),
    epilog=(
        "Examples:\n\n  segtool export runs/camvid/best.pt --format onnx --out camvid.onnx\n\n"
        "  segtool export runs/camvid/best.pt --int8 --calibration-data data/train.txt --out camvid.int8.onnx"
    ),
)
def export(
    checkpoint: Path | None = typer.Argument(
        None,
        help="A .pt checkpoint, or a built-in model's name: camvid (the default) or camvid-large.",
        show_default=False,
    ),
    fmt: str = typer.Option("onnx", "--format", help="onnx or torchscript."),
    out: Path = typer.Option(..., "--out", help="File to write (.onnx or .pt)."),
    int8: bool = typer.Option(
        False, "--int8", help="Quantize to int8 (ONNX Runtime static QDQ), calibrated on real images."
    ),
    calibration: str | None = typer.Option(
        None, "--calibration-data", help="Split whose images calibrate int8 (default: the checkpoint's train split)."
    ),
    data: str | None = typer.Option(
        None, "--data", help="Split for the parity and int8 mIoU checks (default: the checkpoint's val split)."
    ),
    device: Device = typer.Option(
        Device.auto,
        "--device",
        help="Run the PyTorch reference of the parity check on auto, cpu or cuda; "
        "the file itself is traced on the CPU and runs anywhere.",
    ),
) -> None:
    with _errors():
        import segtool

        report = segtool.export(
            checkpoint, out, int8=int8, calibration=calibration, data=data, format=fmt, device=device.value
        )
        p, q = report.parity, report.int8
        typer.echo(
            f"parity on {p.images} images: max |logit diff| {p.max_abs_diff:.2e}, "
            f"argmax agreement {100 * p.agreement:.3f}%"
        )
        if q:
            typer.echo(
                f"int8 ({q.calibration_images} calibration images): "
                f"mIoU {100 * q.miou_int8:.2f} vs fp32 {100 * q.miou_fp32:.2f}"
            )
        typer.echo(f"wrote {out} ({report.size_mb:.1f} MB)")


@app.command(
    help=(
        "Serve a model over HTTP: POST an image to /predict for its mask (PNG), overlay or confidence map, "
        "the same bytes as segtool predict; GET / is a page to try it. Needs the serve extra.\n\n"
        "Runs until SIGTERM or Ctrl-C, then answers the requests in flight and exits 0."
    ),
    epilog=(
        "Examples:\n\n  segtool serve camvid --port 8000\n\n"
        "  curl --data-binary @street.jpg http://127.0.0.1:8000/predict -o street_mask.png"
    ),
)
def serve(
    model: str | None = typer.Argument(
        None,
        help="A built-in model's name (camvid, the default, or camvid-large), a .pt checkpoint or a .onnx file.",
        show_default=False,
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    backend: str = typer.Option(
        "auto", "--backend", help="auto (by the file: .onnx and built-in -> onnxruntime, else torch), torch or onnx."
    ),
    device: Device = typer.Option(Device.auto, "--device", help=DEVICE_HELP + " ONNX models run on the CPU."),
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Most queued images per forward pass (default: 1 per stream for ONNX Runtime, 4 for PyTorch).",
        show_default=False,
    ),
    queue: int = typer.Option(
        32, "--queue", min=1, help="Most requests waiting for the model; more are answered 503 with Retry-After."
    ),
    max_body_mb: float = typer.Option(
        20.0, "--max-body-mb", min=0.001, help="Largest request body in MB; larger ones are answered 413."
    ),
) -> None:
    with _errors():
        import segtool
        from segtool.data.io import max_pixels
        from segtool.serve import require_serve

        require_serve()
        from segtool.serve.app import Settings
        from segtool.serve.runner import serve as run_server

        if backend not in ("auto", "torch", "onnx"):
            raise ConfigError(f"--backend {backend}: use auto, torch or onnx")
        max_pixels()  # a bad SEGTOOL_MAX_PIXELS fails now, not in every request
        loaded = segtool.load(model, backend=backend, device=device.value, batch_size=batch_size)
        predictor = loaded.predictor
        settings = Settings(max_body_bytes=int(max_body_mb * 2**20), queue=queue, batch_size=batch_size)

        def started(url: str) -> None:
            typer.echo(f"serving {url}: {predictor.describe()} (Ctrl-C or SIGTERM stops it)")

        answered, stopped_by = run_server(loaded, host, port, settings, started)
        by = f" on {stopped_by.name}" if stopped_by else ""
        typer.echo(f"stopped{by} after answering {_count(answered, 'request')}", err=True)


@app.command(epilog="Examples:\n\n  segtool info\n\n  segtool info runs/quickstart/best.pt")
def info(
    checkpoint: Path | None = typer.Argument(
        None,
        help="A .pt checkpoint, or a built-in model's name: camvid (the default) or camvid-large.",
        show_default=False,
    ),
) -> None:
    """What a checkpoint holds: model, classes and colours, training recipe, val metrics."""
    with _errors():
        if checkpoint is not None and checkpoint.suffix.lower() == ".onnx":
            _info_onnx(checkpoint)
            return
        from segtool.builtin import builtin_name, builtin_onnx
        from segtool.errors import MissingExtra, require_train

        if builtin_name(checkpoint) is not None:
            try:
                require_train("")
            except MissingExtra:  # the built-in model's ONNX file says what a light install can show
                _info_onnx(builtin_onnx(checkpoint))
                return
        elif not checkpoint.exists():
            raise SegtoolError(
                f"checkpoint {checkpoint} not found; "
                "pass the path of a .pt file written by segtool train, or a .onnx file"
            )
        else:
            require_train(f"reading the PyTorch checkpoint {checkpoint}")
        from segtool.models.checkpoint import (
            CALIBRATION_KEYS,
            checkpoint_config,
            load_checkpoint,
            resolve_checkpoint,
        )

        path = resolve_checkpoint(checkpoint)
        ckpt = load_checkpoint(path)
        cfg = checkpoint_config(ckpt, path)
        m, t = cfg.model, cfg.train
        typer.echo(f"{path} (segtool {ckpt.get('segtool_version')}, run '{cfg.name}')")
        typer.echo(
            f"model: MobileNetV2 x{m.width_mult} encoder, output stride {m.output_stride}, "
            f"{m.head} head ({m.head_channels} ch)"
        )
        typer.echo("classes: " + ", ".join(f"{i} {c.name} {tuple(c.color)}" for i, c in enumerate(cfg.data.classes)))
        typer.echo(f"ignore index {cfg.data.ignore_index}; eval size {cfg.data.eval_size or 'native'}")
        typer.echo(
            f"recipe: {t.optimizer} lr {t.lr}, {t.scheduler} schedule, batch {t.batch_size}, "
            + ", ".join(next(iter(a)) for a in cfg.augment.train)
        )
        if t.init_from:
            typer.echo(f"started from: {t.init_from}")
        if t.distill:
            typer.echo(
                f"distilled from: {t.distill.teacher} (weight {t.distill.weight}, temperature {t.distill.temperature})"
            )
        if CALIBRATION_KEYS[0] in ckpt:
            typer.echo(f"calibration: {100 * ckpt[CALIBRATION_KEYS[0]]:.0f}% (chosen on val; train.loss.calibrate)")
        for key in ("description", "data_terms"):
            if ckpt.get(key):
                typer.echo(f"{key.replace('_', ' ')}: {ckpt[key]}")
        metrics = ckpt.get("metrics")
        if metrics:
            from segtool.metrics import format_table

            typer.echo(f"val metrics (epoch {ckpt.get('epoch')}):")
            typer.echo(format_table(metrics))


def _info_onnx(path: Path) -> None:
    """What an exported model's metadata says (torch-free, like predict --model)."""
    from segtool.inference.onnx_model import OnnxSegmenter

    meta = OnnxSegmenter(path, threads=1).meta
    m = meta.get("model", {})
    typer.echo(f"{path} (ONNX, {meta.get('precision')}, exported by segtool {meta.get('segtool_version')})")
    typer.echo(
        f"model: MobileNetV2 x{m.get('width_mult')} encoder, output stride {m.get('output_stride')}, "
        f"{m.get('head')} head"
    )
    typer.echo("classes: " + ", ".join(f"{i} {c['name']} {tuple(c['color'])}" for i, c in enumerate(meta["classes"])))
    typer.echo(f"ignore index {meta.get('ignore_index')}; eval size {meta.get('eval_size') or 'native'}")
    if meta.get("val_metrics"):
        v = meta["val_metrics"]
        typer.echo(
            f"val metrics of the checkpoint it came from: mIoU {100 * (v.get('miou') or 0):.1f}, "
            f"pixel acc {100 * (v.get('pixel_accuracy') or 0):.1f}"
        )


@app.command(
    epilog="Example:\n\n  segtool init data/roads --out configs/roads.yaml\n\n  segtool train configs/roads.yaml",
)
def init(
    data: Path = typer.Argument(
        ...,
        help="The dataset folder: images/ + masks/, or train/ and val/ (each with images/ and masks/), "
        "or train.txt / val.txt list files.",
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        help="Config file to write (default: <folder name>.yaml in the current folder).",
        show_default=False,
    ),
    name: str | None = typer.Option(None, "--name", help="Run name (default: the folder's name).", show_default=False),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Look at a dataset and write a config that reads it: splits, mask kind, classes with their values or colours."""
    with _errors():
        from segtool.config import load_config
        from segtool.data.survey import config_text, survey
        from segtool.fsutil import atomic_write_text

        found = survey(data)
        run_name = name or found.root.name
        target = out or Path(f"{run_name}.yaml")
        if target.exists() and not force:
            raise SegtoolError(f"{target} exists; pass --force to replace it or choose another --out")
        atomic_write_text(target, config_text(found, run_name))
        cfg = load_config(target)  # what train will read: a survey that writes a bad config is a bug, said here
        for note in found.notes:
            typer.echo(note)
        typer.echo(found.val_note)
        shares = ", ".join(f"{c['name']} {100 * c['share']:.1f}%" for c in found.classes[:12])
        typer.echo(f"{cfg.data.num_classes} classes ({cfg.data.mask_format} masks): {shares}")
        typer.echo(f"wrote {target}; rename the classes, then: segtool train {target}")


@app.command(
    epilog="Example:\n\n  segtool convert data/instances.json --out data/masks-export",
)
def convert(
    data: Path = typer.Argument(
        ...,
        help="A COCO instances .json, a folder of LabelMe .json files, a CVAT for images 1.1 .xml, or their folder.",
    ),
    out: Path = typer.Option(..., "--out", help="Folder to write: images/, masks/, list files and labels.txt."),
) -> None:
    """Write annotations (COCO, LabelMe, CVAT) as index-mask PNGs, in the classes `segtool init` writes."""
    with _errors():
        from segtool.data.convert import convert_annotations

        done = convert_annotations(data, out)
        typer.echo(f"{len(done.classes)} classes: " + ", ".join(f"{i} {n}" for i, n in enumerate(done.classes[:12])))
        lists = ", ".join([*done.lists, "labels.txt"])
        typer.echo(f"wrote {done.images} images and masks to {printable(done.out)} ({lists})")


@app.command(
    "check-data",
    help=(
        "Scan every image/mask pair: sizes, modes, unreadable or unpaired files, label values, class pixels, "
        "duplicates. Exit 1 on problems."
    ),
    epilog=(
        "Examples:\n\n  segtool check-data configs/camvid.yaml\n\n"
        "  segtool check-data ../shared/datasets/camvid/val.txt --json val-report.json"
    ),
)
def check_data(
    target: str = typer.Argument(
        ...,
        help="A YAML config (checks its train and val splits) or one split: "
        "a list file or a folder with images/ and masks/.",
    ),
    overrides: list[str] | None = typer.Argument(None, help="key=value config overrides.", show_default=False),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a config key."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the full report to this JSON file."),
) -> None:
    with _errors():
        from segtool.config import load_config, parse_split
        from segtool.data.doctor import check_split, cross_split_duplicates, format_report
        from segtool.data.pairs import config_split
        from segtool.fsutil import atomic_write_text

        if target.endswith((".yaml", ".yml")):
            cfg = load_config(target, [*(set_ or []), *(overrides or [])])
            splits = [
                (n, config_split(cfg.data, n)) for n in ("train", "val") if getattr(cfg.data, n) or cfg.data.synthetic
            ]
            if not splits:  # nothing checked must not read as "no problems found"
                raise ConfigError(
                    f"{target}: data.train and data.val are not set, so there is nothing to check; "
                    "give a list file or an images/masks folder for each (segtool init writes them)"
                )
        else:
            cfg = load_config(None, [*(set_ or []), *(overrides or [])])
            split = parse_split(target)
            if split.annotations is not None and not cfg.data.classes:  # drawn in the classes init writes
                from segtool.data.annotation_survey import init_data

                cfg = cfg.model_copy(update={"data": init_data(split, cfg.data)})
            splits = [(target, split)]
        reports = [check_split(name, split, cfg.data) for name, split in splits]
        cross_split_duplicates(reports)
        _check_crop(cfg, reports)
        typer.echo(format_report(reports))
        if json_out:
            atomic_write_text(json_out, json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
            typer.echo(f"wrote {json_out}")
        if any(r.problems for r in reports):
            raise typer.Exit(1)


def _check_crop(cfg, reports) -> None:
    """check-data reports a training crop larger than the images, as train refuses it;
    the check needs albumentations (the train extra), so a light install skips it."""
    import importlib.util

    train_report = next((r for r in reports if r.name == "train"), None)
    if (
        train_report is None
        or not isinstance(cfg.augment.train, list)
        or importlib.util.find_spec("albumentations") is None
    ):
        return
    from segtool.data.transforms import crop_problem

    problem = crop_problem(cfg, [tuple(int(v) for v in s.split("x")) for s in train_report.sizes])
    if problem:
        train_report.problems.append(problem)


def main() -> None:
    app(prog_name="segtool")


if __name__ == "__main__":
    sys.exit(main())
