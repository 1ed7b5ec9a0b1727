"""Self-describing checkpoints: plain dicts of tensors and primitives, loaded weights-only.

A checkpoint carries the resolved config (which rebuilds the model, its classes and
colours), the segtool version and, for `last.pt`, everything needed to resume.
"""

from __future__ import annotations

import io
import pickle
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import torch

from segtool import __version__
from segtool.builtin import ASSETS, NAMES
from segtool.config import Config, config_from_dict
from segtool.errors import CheckpointError, ConfigError
from segtool.fsutil import atomic_write_bytes
from segtool.models import Segmenter, build_model

# The road-scene models shipped inside the package (segtool.builtin). `camvid`, the fast
# one, is used when no checkpoint is named; the others are picked by name wherever a
# checkpoint path goes.
BUILTIN = ASSETS / "camvid.pt"
BUILTINS = {alias: ASSETS / f"{name}.pt" for alias, name in NAMES.items()}

FORMAT = "segtool-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(
    path: Path, cfg: Config, model: torch.nn.Module, keep_previous: Path | None = None, **extra: Any
) -> None:
    state = model.state_dict()
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to save {path}: weights {bad[0]} hold NaN/inf; the previous file is kept")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "segtool_version": __version__,
        "config": cfg.to_dict(),
        "model": {k: v.detach().cpu() for k, v in state.items()},
        **extra,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue(), keep_previous=keep_previous)


# The calibration share and offsets (segtool.training.calibrate), under the names
# checkpoints have stored them by since calibration began.
CALIBRATION_KEYS = ("decision_share", "decision_bias")
# What predicting needs from a checkpoint (the weights, their config and calibration, and
# what they scored), without the optimizer and training state of last.pt.
INFERENCE_KEYS = (
    "format",
    "format_version",
    "segtool_version",
    "config",
    "model",
    "epoch",
    "metrics",
    *CALIBRATION_KEYS,
)


def inference_part(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The part of a loaded checkpoint that evaluate, predict, export and train.init_from read."""
    return {k: ckpt[k] for k in INFERENCE_KEYS if k in ckpt}


def resolve_checkpoint(path: Path | str | None) -> Path:
    """`path`; a built-in model's name (see BUILTINS) unless a file of that name exists;
    the default built-in model when none is given."""
    if path is not None:
        name = str(path)
        return BUILTINS[name] if name in BUILTINS and not Path(path).exists() else Path(path)
    if BUILTIN.is_file():
        return BUILTIN
    raise CheckpointError(
        "no checkpoint given and this install has no built-in model; pass a .pt file from segtool train"
    )


def is_builtin(path: Path) -> bool:
    return Path(path) in BUILTINS.values()


def _refuse_exports(path: Path) -> None:
    """An exported model where a checkpoint is expected is named as what it is."""
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{path} is an ONNX model (from segtool export), not a checkpoint; "
            f"segtool predict --model {path} runs it and segtool info {path} describes it"
        )
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith(("constants.pkl", "/code/__torch__.py")) or "/code/" in n for n in z.namelist()):
                raise CheckpointError(
                    f"{path} is a TorchScript export, not a segtool checkpoint; "
                    "use the .pt file that segtool train wrote"
                )


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint without ever running code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass the path of a .pt file written by segtool train")
    _refuse_exports(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = textwrap.shorten(str(e).splitlines()[0], 120, placeholder="...")
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds pickled objects that are not plain tensors or values "
            f"({reason}); only load checkpoints written by segtool"
        ) from None
    except Exception as e:  # torn zip, wrong file type, ...
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a checkpoint ({type(e).__name__}); use another file"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a segtool checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {ckpt.get('format_version')} (segtool "
            f"{ckpt.get('segtool_version')}); this segtool {__version__} reads version {FORMAT_VERSION}"
        )
    _refuse_nonfinite(ckpt, path)
    return ckpt


def _refuse_nonfinite(ckpt: dict[str, Any], path: Path) -> None:
    """NaN or inf weights make every prediction the same (all class 0) with no error at
    all: such a file is refused by name wherever it is loaded (predict, evaluate, export,
    info, init_from, resume: a resumed run then falls back to last.prev.pt). segtool never
    saves one (save_checkpoint); a file written or edited elsewhere can hold one."""
    for part in ("model", "trained_model"):  # the weights used, and those a resume trains on
        weights = ckpt.get(part)
        if not isinstance(weights, dict):
            continue  # a checkpoint without weights is named as such by checkpoint_config
        for name, value in weights.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
                raise CheckpointError(
                    f"checkpoint {path} holds NaN/inf weights (first: {name}); "
                    "it would predict the same class everywhere: "
                    "use another checkpoint of the run (best.pt, last.prev.pt) or train again"
                )


def checkpoint_config(ckpt: dict[str, Any], path: Path) -> Config:
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(
            f"checkpoint {path} has no {'config' if not isinstance(ckpt.get('config'), dict) else 'model weights'}: "
            "it cannot rebuild its model; use a checkpoint written by segtool train"
        )
    try:
        return config_from_dict(ckpt["config"], source=f"config in {path}")
    except ConfigError as e:
        raise CheckpointError(f"{e}; the checkpoint was written by segtool {ckpt.get('segtool_version')}") from None


def model_from_checkpoint(ckpt: dict[str, Any], cfg: Config, path: Path) -> Segmenter:
    model = build_model(cfg.model, cfg.data.num_classes, pretrained=False)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)[:160]
        raise CheckpointError(
            f"checkpoint {path} weights do not fit the model its config describes ({first})"
        ) from None
    offsets = ckpt.get(CALIBRATION_KEYS[1])
    if offsets is not None:  # train.loss.calibrate's offsets: part of what the model decides
        if len(offsets) != cfg.data.num_classes:
            raise CheckpointError(
                f"checkpoint {path} has {len(offsets)} calibration offsets for {cfg.data.num_classes} classes; "
                "it is damaged: use another checkpoint of the run"
            )
        model.calibration_offsets = torch.tensor(offsets, dtype=torch.float32)
    return model


def load_model(path: Path) -> tuple[Config, Segmenter]:
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, path)
    return cfg, model_from_checkpoint(ckpt, cfg, path)


def init_head(spec: str) -> str:
    """The decoder head of the checkpoint `train.init_from` names: what `model.head: auto`
    becomes when a run starts from one, so its weights fit."""
    path = resolve_checkpoint(spec)
    try:
        return checkpoint_config(load_checkpoint(path), path).model.head
    except CheckpointError as e:
        raise CheckpointError(f"train.init_from: {e}") from None


def init_from_checkpoint(model: Segmenter, num_classes: int, spec: str) -> str:
    """Start `model` from a checkpoint's weights (`train.init_from`: a path or a built-in
    model's name), to fine-tune it. With another class count the per-class output layers
    stay random; any other weight that does not fit is an error. Returns a one-line account."""
    path = resolve_checkpoint(spec)
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"train.init_from: {e}") from None
    src_classes = checkpoint_config(ckpt, path).data.num_classes
    own = model.state_dict()
    fits = {k: v for k, v in ckpt["model"].items() if k in own and own[k].shape == v.shape}
    left = [k for k in own if k not in fits]
    per_class = [k for k in left if k in ckpt["model"] and ckpt["model"][k].shape[:1] == (src_classes,)]
    misfit = [k for k in left if k not in per_class]
    if misfit:
        raise CheckpointError(
            f"train.init_from {path}: {len(misfit)} weights do not fit this model (e.g. {misfit[0]}); "
            "set model.head and model.width_mult to the checkpoint's (segtool info shows them)"
        )
    model.load_state_dict({**own, **fits})
    note = f"weights from {path}"
    if per_class:
        note += f"; its {src_classes}-class output layers do not fit {num_classes} classes and start random"
    return note


def teacher_model(spec: str, cfg: Config) -> Segmenter:
    """The frozen model that `train.distill.teacher` names (a path or a built-in model's
    name), checked to predict the same classes from images normalised the same way."""
    path = resolve_checkpoint(spec)
    try:
        tcfg, teacher = load_model(path)
    except CheckpointError as e:
        raise CheckpointError(f"train.distill.teacher: {e}") from None
    theirs, ours = [c.name for c in tcfg.data.classes], [c.name for c in cfg.data.classes]
    if theirs != ours:
        raise ConfigError(
            f"train.distill.teacher {path} predicts {len(theirs)} classes ({', '.join(theirs[:4])}...) "
            f"and data.classes lists {len(ours)} ({', '.join(ours[:4])}...); "
            "distil from a model trained on the same classes, in the same order"
        )
    if (tcfg.data.mean, tcfg.data.std) != (cfg.data.mean, cfg.data.std):
        raise ConfigError(
            f"train.distill.teacher {path} normalises images with mean {list(tcfg.data.mean)}, "
            f"std {list(tcfg.data.std)}; "
            "set data.mean and data.std to those values"
        )
    teacher.calibration_offsets = None  # soft targets come from the teacher's own probabilities
    return teacher.eval().requires_grad_(False)


def load_latest(paths: list[Path]) -> tuple[Path, dict[str, Any]]:
    """The first of `paths` that loads; a damaged one is reported by name and the next tried."""
    problems = []
    for path in paths:
        if not path.exists():
            continue
        try:
            return path, load_checkpoint(path)
        except CheckpointError as e:
            problems.append(str(e))
            print(f"warning: {e}; trying an older checkpoint")
    if problems:
        raise CheckpointError(f"no usable checkpoint: {'; '.join(problems)}")
    raise CheckpointError(f"{paths[0]} not found")
