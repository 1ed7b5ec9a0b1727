"""The `segtool` command: thin Typer commands that parse, call one engine function, and
print a summary. User errors become one line and an exit code here, and only here.

Engine modules (and so torch) are imported inside the commands, so `--help` is instant.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from segtool import __version__
from segtool.errors import SegtoolError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Semantic segmentation from a folder of images and masks: train, evaluate, predict.",
    epilog=(
        "Quick start:\n\n"
        "  segtool train configs/quickstart.yaml\n\n"
        "  segtool evaluate runs/quickstart/best.pt --json report.json --min-miou 0.5\n\n"
        "  segtool predict street.png photos/ --checkpoint runs/quickstart/best.pt --out preds/"
    ),
)

_state = {"debug": False}


@contextmanager
def _errors() -> Iterator[None]:
    """SegtoolError -> `error: ...` on stderr and its exit code; no traceback unless --debug."""
    try:
        yield
    except SegtoolError as e:
        if _state["debug"]:
            raise
        typer.echo(f"error: {e.one_line()}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


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
    overrides: Optional[List[str]] = typer.Argument(None, help="More key=value overrides, like --set.", show_default=False),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config key: --set train.epochs=3."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder [default: <train.out_dir>/<name>]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last.pt."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train a model; writes config.yaml, metrics.csv, last.pt and best.pt into the run folder."""
    with _errors():
        from segtool.config import load_config
        from segtool.engine.train import train as run_train

        cfg = load_config(config, [*(set_ or []), *(overrides or [])])
        out_dir = out or cfg.train.out_dir / cfg.name
        result = run_train(cfg, out_dir, resume=resume, progress=not quiet)
        typer.echo(
            f"trained {result.epochs} epochs in {result.seconds:.1f}s; best val mIoU {100 * result.best_miou:.1f} "
            f"-> {out_dir / 'best.pt'}"
        )


@app.command(
    epilog=(
        "Examples:\n\n  segtool evaluate runs/quickstart/best.pt --json report.json --min-miou 0.5\n\n"
        "  segtool evaluate runs/camvid/best.pt --data ../shared/datasets/camvid/val.txt"
    ),
)
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A .pt checkpoint written by segtool train."),
    data: Optional[str] = typer.Option(None, "--data", help="Split to evaluate: a list file or a folder with images/ and masks/ [default: the checkpoint's val split]."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write every metric to this JSON file."),
    min_miou: Optional[float] = typer.Option(None, "--min-miou", min=0.0, max=1.0, help="Exit 1 when mIoU (a fraction, 0..1) is below this."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Per-class IoU, mIoU, pixel and mean class accuracy and Dice over a whole split."""
    with _errors():
        from segtool.config import parse_split
        from segtool.engine.evaluate import evaluate_checkpoint
        from segtool.fsutil import atomic_write_text
        from segtool.metrics import format_table

        split = parse_split(data) if data else None
        report = evaluate_checkpoint(checkpoint, split, progress=not quiet)
        typer.echo(f"{report['images']} images from {report['data']}")
        typer.echo(format_table(report))
        if json_out:
            atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")
            typer.echo(f"wrote {json_out}")
        for f in report["failed"]:
            typer.echo(f"skipped {f['image']}: {f['error']}", err=True)
        code = 0
        if report["failed"]:
            typer.echo(f"{len(report['failed'])} pair(s) could not be read and were left out of the metrics", err=True)
            code = 1
        if min_miou is not None:
            miou = report["miou"] or 0.0
            if miou < min_miou:
                typer.echo(f"FAIL: mIoU {miou:.4f} is below --min-miou {min_miou}", err=True)
                code = 1
            else:
                typer.echo(f"PASS: mIoU {miou:.4f} >= --min-miou {min_miou}")
        raise typer.Exit(code)


@app.command(
    epilog='Example:\n\n  segtool predict street.png photos/ "more/*.jpg" --checkpoint runs/quickstart/best.pt --out preds/',
)
def predict(
    inputs: List[str] = typer.Argument(..., help="Image files, folders and glob patterns."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="A .pt checkpoint written by segtool train."),
    out: Path = typer.Option(Path("preds"), "--out", help="Output folder."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Images per forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo images whose outputs already exist."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write <stem>_mask.png (palette class indices) and <stem>_overlay.png per image, at its own size."""
    with _errors():
        from segtool.engine.predict import predict as run_predict

        if checkpoint is None:
            raise SegtoolError("no --checkpoint given; pass one written by segtool train, e.g. --checkpoint runs/quickstart/best.pt")
        result = run_predict(checkpoint, inputs, out, batch_size=batch_size, overwrite=overwrite, progress=not quiet)
        for name, why in result.failed:
            typer.echo(f"skipped {name}: {why}", err=True)
        typer.echo(
            f"wrote {len(result.written)} masks and overlays to {out}"
            + (f", {len(result.skipped)} already there (--overwrite redoes them)" if result.skipped else "")
            + (f", {len(result.failed)} failed" if result.failed else "")
        )
        if result.failed:
            raise typer.Exit(1)


@app.command(
    "check-data",
    epilog=(
        "Examples:\n\n  segtool check-data configs/camvid.yaml\n\n"
        "  segtool check-data ../shared/datasets/camvid/val.txt --json val-report.json"
    ),
)
def check_data(
    target: str = typer.Argument(..., help="A YAML config (checks its train and val splits) or one split: a list file or a folder with images/ and masks/."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value config overrides.", show_default=False),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config key."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report to this JSON file."),
) -> None:
    """Scan every image/mask pair: sizes, modes, unreadable or unpaired files, label values, class pixels, duplicates. Exit 1 on problems."""
    with _errors():
        from segtool.config import load_config, parse_split
        from segtool.data.datasets import config_split
        from segtool.data.doctor import check_split, cross_split_duplicates, format_report
        from segtool.fsutil import atomic_write_text

        if target.endswith((".yaml", ".yml")):
            cfg = load_config(target, [*(set_ or []), *(overrides or [])])
            splits = [(n, config_split(cfg.data, n)) for n in ("train", "val") if getattr(cfg.data, n) or cfg.data.synthetic]
        else:
            cfg = load_config(None, [*(set_ or []), *(overrides or [])])
            splits = [(target, parse_split(target))]
        reports = [check_split(name, split, cfg.data) for name, split in splits]
        cross_split_duplicates(reports)
        typer.echo(format_report(reports))
        if json_out:
            atomic_write_text(json_out, json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
            typer.echo(f"wrote {json_out}")
        if any(r.problems for r in reports):
            raise typer.Exit(1)


def main() -> None:
    app(prog_name="segtool")


if __name__ == "__main__":
    sys.exit(main())
