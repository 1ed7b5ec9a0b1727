"""Typed, validated configuration: the only module that reads or writes YAML.

A config is validated once, at the edge (`load_config`), into frozen pydantic models; the
rest of segtool only ever sees those objects. Defaults live here, in the models; `configs/default.yaml`
documents every key and a test keeps the two equal.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from segtool.errors import ConfigError

_LIST_SUFFIXES = {".txt", ".lst", ".list", ".csv"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassSpec(_Strict):
    name: str
    color: tuple[int, int, int] = Field(description="RGB display colour; also the colour of RGB masks")
    # The value index masks store for this class, when it is not the class's position:
    # 0 and 255 in binary masks, or 0, 128 and 255. Give every class one, or none.
    value: int | None = Field(None, ge=0, le=65535)
    # Annotation files (COCO, LabelMe, CVAT): the labels drawn as this class besides its own
    # name, to rename (`sources: [pedestrian]`) or merge (`sources: [car, truck]`) them.
    sources: tuple[str, ...] = ()

    @field_validator("color")
    @classmethod
    def _rgb(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(0 <= c <= 255 for c in v):
            raise ValueError("each colour component must be in 0..255")
        return v


class SplitSpec(_Strict):
    """Where one split lives: a list file of `image mask` lines, an images + masks folder
    pair, or the union of several such splits.

    The short form is a string: a path with a list-file suffix (.txt) is a list file, any
    other path is a folder holding `images/` and `masks/`. A YAML list of splits is their
    union (`[train.txt, val.txt]`). `include` / `exclude` keep or drop pairs whose image
    file name matches one of their glob patterns (`0001TP_*`): a held-out sequence or
    patient is one line of config, not a second copy of the list.
    """

    list: Path | None = None
    images: Path | None = None
    masks: Path | None = None
    # An annotation tool's export instead of masks: a COCO instances .json, a folder of LabelMe
    # .json files, or a CVAT for images 1.1 .xml (segtool.data.annotations draws the masks).
    annotations: Path | None = None
    annotation_format: Literal["coco", "labelme", "cvat"] | None = None  # None: told apart by the content
    parts: tuple[SplitSpec, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    # The DataConfig whose classes an annotation split is drawn with (pairs.bind_labels).
    _data: Any = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, v: Any) -> Any:
        if isinstance(v, (str, Path)):
            p = Path(v)
            if p.suffix.lower() in _LIST_SUFFIXES:
                return {"list": p}
            if p.suffix.lower() in (".json", ".xml"):
                return {"annotations": p}
            return {"images": p / "images", "masks": p / "masks"}
        if isinstance(v, (list, tuple)):
            return {"parts": v}
        return v

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _patterns(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_layout(self) -> SplitSpec:
        if self.parts:
            if self.list or self.images or self.masks or self.annotations:
                raise ValueError("a split is a list of splits or one list file / folder pair, not both")
            return self
        if self.annotations is not None:
            if self.list or self.masks:
                raise ValueError("give 'annotations' (with 'images', optional) or 'list' / 'masks', not both")
            return self
        if self.list is not None and (self.images or self.masks):
            raise ValueError("give either 'list' or 'images' + 'masks', not both")
        if self.list is None and not (self.images and self.masks):
            raise ValueError("give 'list' (a file of 'image mask' lines) or both 'images' and 'masks' folders")
        return self

    def resolved(self, base: Path) -> SplitSpec:
        fix = lambda p: None if p is None else (p if p.is_absolute() else base / p)  # noqa: E731
        return self.model_copy(
            update={
                "list": fix(self.list),
                "images": fix(self.images),
                "masks": fix(self.masks),
                "annotations": fix(self.annotations),
                "parts": tuple(part.resolved(base) for part in self.parts),
            }
        )

    def keeps(self, image: Path) -> bool:
        """Whether this split's include/exclude patterns keep a pair with this image."""
        name = image.name
        if self.include and not any(fnmatch.fnmatch(name, pat) for pat in self.include):
            return False
        return not any(fnmatch.fnmatch(name, pat) for pat in self.exclude)

    def describe(self) -> str:
        if self.parts:
            where = " + ".join(part.describe() for part in self.parts)
        else:
            where = str(self.list) if self.list else f"{self.images} + {self.masks}"
            if self.annotations:
                where = f"{self.annotations}" + (f" + {self.images}" if self.images else "")
        filters = []
        if self.include:
            filters.append("only " + " ".join(self.include))
        if self.exclude:
            filters.append("without " + " ".join(self.exclude))
        return where + (f" ({', '.join(filters)})" if filters else "")


class SyntheticSpec(_Strict):
    """The built-in dataset: coloured shapes on textured backgrounds, generated on first use."""

    num_train: int = Field(96, ge=1)
    num_val: int = Field(24, ge=1)
    height: int = Field(96, ge=32)
    width: int = Field(128, ge=32)
    seed: int = 0


# The built-in dataset's classes; `data.classes` defaults to these when `data.synthetic` is set.
SYNTHETIC_CLASSES = (
    ("background", (40, 40, 40)),
    ("disc", (220, 60, 60)),
    ("box", (60, 180, 75)),
    ("triangle", (60, 110, 230)),
)


class DataConfig(_Strict):
    root: Path | None = None
    train: SplitSpec | None = None
    val: SplitSpec | None = None
    synthetic: SyntheticSpec | None = None
    classes: list[ClassSpec] = Field(default_factory=list)
    ignore_index: int = Field(255, ge=0, le=255)
    mask_format: Literal["index", "rgb"] = "index"
    # Stored mask values (index masks) or colours (rgb masks) that mark unlabelled pixels,
    # beside ignore_index: they count in neither loss nor metrics.
    ignore_values: list[int] = Field(default_factory=list)
    ignore_colors: list[tuple[int, int, int]] = Field(default_factory=list)
    reduce_zero_label: bool = False
    # Annotation splits (COCO, LabelMe, CVAT): labels drawn as ignore_index (LabelMe's
    # __ignore__ always is), what pixels no shape covers are (the first class, or ignored),
    # and the stroke of LabelMe lines and CVAT polylines.
    ignore_labels: list[str] = Field(default_factory=list)
    unlabelled: Literal["background", "ignore"] = "background"
    line_width: int = Field(10, ge=1)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    eval_size: tuple[int, int] | None = None
    # Images of more than tile_above pixels (null: never, 0: always) are predicted and
    # evaluated by overlapping windows of tile_size, so memory stays bounded.
    tile_size: tuple[int, int] = (512, 512)
    tile_overlap: int = Field(64, ge=0)
    tile_above: int | None = Field(4_000_000, ge=0)
    cache: bool | Literal["auto"] = "auto"

    @field_validator("eval_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError("eval_size is [height, width] in pixels, both >= 1 (or null for each image's own size)")
        return v

    @model_validator(mode="after")
    def _tiles_fit(self) -> DataConfig:
        if min(self.tile_size) < 32:
            raise ValueError("tile_size is [height, width] in pixels, both >= 32")
        if self.tile_overlap >= min(self.tile_size):
            raise ValueError(f"tile_overlap {self.tile_overlap} must be smaller than the tile ({list(self.tile_size)})")
        return self

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("std values must be > 0")
        return v

    @model_validator(mode="before")
    @classmethod
    def _synthetic_classes(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("synthetic") is not None and not v.get("classes"):
            v = {**v, "classes": [{"name": n, "color": c} for n, c in SYNTHETIC_CLASSES]}
        return v

    @model_validator(mode="after")
    def _classes_fit(self) -> DataConfig:
        if len(self.classes) > 255:
            raise ValueError("at most 255 classes are supported (masks are 8-bit)")
        values = [c.value for c in self.classes if c.value is not None]
        if values and len(values) != len(self.classes):
            raise ValueError("give every class its stored `value`, or none (then a class's value is its position)")
        if len(set(values)) != len(values):
            shared = sorted(v for v in values if values.count(v) > 1)[0]
            a, b = [f"data.classes[{i}] {c.name}" for i, c in enumerate(self.classes) if c.value == shared][:2]
            raise ValueError(f"two classes share a stored value: {shared} ({a} and {b}); give each class its own value")
        clash = set(values) & set(self.ignore_values)
        if clash:
            raise ValueError(f"value {min(clash)} is both a class's value and in ignore_values; keep it in one")
        if values and self.reduce_zero_label:
            raise ValueError(
                "reduce_zero_label shifts stored values; with classes' `value`s give the stored values instead"
            )
        if self.classes and self.ignore_index < len(self.classes) and not self.reduce_zero_label:
            raise ValueError(
                f"ignore_index {self.ignore_index} is a real class ({self.classes[self.ignore_index].name}); "
                f"use a value >= {len(self.classes)}, e.g. 255"
            )
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def has_values(self) -> bool:
        """Whether index masks store the classes' own `value`s rather than their positions."""
        return bool(self.classes) and self.classes[0].value is not None


class ModelConfig(_Strict):
    head: Literal["auto", "lraspp", "deeplabv3plus", "unet"] = "auto"
    width_mult: float = Field(0.5, ge=0.35, le=1.4)
    output_stride: Literal[8, 16, 32] = 16
    pretrained: str | None = None
    head_channels: int = Field(128, ge=8)


class LossConfig(_Strict):
    class_weights: list[float] | Literal["auto"] | None = "auto"
    # A soft Dice term (over the batch's labelled pixels, averaged over classes) added to the
    # cross-entropy, as nnU-Net trains by default: on four real datasets it helped or was level
    # (docs/benchmarks.md, the "What does each default buy" table). The CamVid configs keep the recipe's 0.
    dice_weight: float = Field(0.5, ge=0.0)
    # Online hard example mining: average the cross-entropy over the pixels whose predicted
    # probability of their true class is at most `ohem_thresh`, but over at least the
    # `ohem_min_kept` share of the labelled pixels of the batch (the hardest ones).
    ohem_thresh: float | None = Field(None, gt=0.0, lt=1.0)
    ohem_min_kept: float = Field(0.2, gt=0.0, le=1.0)
    # Class weights pull decisions toward rare classes; at each validation, choose how much of
    # that pull the saved model's decisions give back (see segtool.training.calibrate).
    calibrate: bool = True


class DistillConfig(_Strict):
    # Knowledge distillation: the model also learns the per-pixel class probabilities of a
    # larger trained model (a segtool checkpoint or a built-in model's name) on the same crops.
    teacher: str
    weight: float = Field(0.5, gt=0.0, le=1.0)  # loss = (1 - weight) * labels + weight * teacher
    temperature: float = Field(1.0, gt=0.0)


class TrainConfig(_Strict):
    epochs: Annotated[int, Field(ge=1, strict=True)] | Literal["auto"] = "auto"
    batch_size: int = Field(8, ge=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)
    poly_power: float = Field(0.9, gt=0)
    loss: LossConfig = Field(default_factory=LossConfig)
    val_every: Annotated[int, Field(ge=1, strict=True)] | Literal["auto"] = "auto"
    workers: Annotated[int, Field(ge=0, strict=True)] | Literal["auto"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    channels_last: bool = True
    seed: int = 0
    out_dir: Path = Path("runs")
    checkpoint_every: int | str = "10m"
    skip_nonfinite: bool = False
    time_limit: str | None = None
    sync_bn: bool = False
    ema: float | None = Field(None, gt=0, lt=1)
    plots: bool = True
    tensorboard: bool = False
    init_from: str | None = None  # a segtool checkpoint (or a built-in model's name) whose weights start the run
    distill: DistillConfig | None = None

    @field_validator("checkpoint_every")
    @classmethod
    def _interval(cls, v: int | str) -> int | str:
        if isinstance(v, int):
            if v < 1:
                raise ValueError("a step interval must be >= 1")
            return v
        return _duration_text(v, "a number of steps (500) or ")

    @field_validator("time_limit")
    @classmethod
    def _limit(cls, v: str | None) -> str | None:
        return None if v is None else _duration_text(v)

    def checkpoint_interval(self) -> tuple[int | None, float | None]:
        """(steps, seconds) between mid-epoch checkpoints; one of them is None."""
        if isinstance(self.checkpoint_every, int):
            return self.checkpoint_every, None
        return None, seconds(self.checkpoint_every)

    def time_limit_s(self) -> float | None:
        return None if self.time_limit is None else seconds(self.time_limit)


def _duration_text(v: str, alternative: str = "") -> str:
    v = str(v).strip()
    if not re.fullmatch(r"\d+(\.\d+)?[smh]", v):
        raise ValueError(f"use {alternative}a time with s, m or h (30s, 10m, 1h)")
    return v


def seconds(duration: str) -> float:
    """'90s', '30m', '1.5h' -> seconds."""
    return float(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


class AugmentConfig(_Strict):
    """Train-time albumentations pipeline: a list of `{TransformName: {param: value}}`, or
    "auto": random scale, pad + random crop, flip and colour jitter, with a crop fitted to
    the data's image sizes when a run starts (segtool.training.auto).

    Normalisation and tensor conversion are appended by segtool; masks are always
    transformed with the image (nearest neighbour) and padded with the ignore index.
    """

    train: list[dict[str, dict[str, Any]]] | Literal["auto"] = "auto"

    @field_validator("train", mode="before")
    @classmethod
    def _one_key_each(cls, v: Any) -> Any:
        if isinstance(v, list):
            out = []
            for i, item in enumerate(v):
                if isinstance(item, str):
                    item = {item: {}}
                if not isinstance(item, dict) or len(item) != 1:
                    raise ValueError(f"item {i} must be one 'TransformName: {{params}}' mapping")
                ((name, params),) = item.items()
                out.append({name: params or {}})
            return out
        return v


class Config(_Strict):
    name: str = "run"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: what checkpoints and run folders store."""
        return self.model_dump(mode="json")


# ------------------------------------------------------------------- resolved config
# What a run trains with once segtool.training.auto has decided every "auto" from the data
# and the machine: the same fields with "auto" taken out of their types, so no code after
# resolution needs to ask whether a value is still to be decided.


class ResolvedData(DataConfig):
    cache: bool


class ResolvedModel(ModelConfig):
    head: Literal["lraspp", "deeplabv3plus", "unet"]


class ResolvedLoss(LossConfig):
    class_weights: list[float] | None


class ResolvedTrain(TrainConfig):
    epochs: Annotated[int, Field(ge=1, strict=True)]
    val_every: Annotated[int, Field(ge=1, strict=True)]
    workers: Annotated[int, Field(ge=0, strict=True)]
    device: Literal["cpu", "cuda"]
    loss: ResolvedLoss


class ResolvedAugment(AugmentConfig):
    train: list[dict[str, dict[str, Any]]]


class ResolvedConfig(Config):
    data: ResolvedData
    model: ResolvedModel
    train: ResolvedTrain
    augment: ResolvedAugment


def resolved(cfg: Config) -> ResolvedConfig:
    """`cfg` as a ResolvedConfig; a ValueError names any field still "auto"."""
    return ResolvedConfig.model_validate(cfg.model_dump())


# --------------------------------------------------------------------------- loading


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(f"key '{key}' appears twice, on lines {first} and {second}")
        self.key, self.first, self.second = key, first, second


class StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, but a key given twice in one mapping is an error: YAML would keep
    the second silently (a second `train:` block replacing the first)."""


def _strict_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key != "<<" and key in seen:
            raise _DuplicateKey(key, seen[key], line)
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


# A config is a few levels deep (augment.train[0].Transform.param is five). YAML nested
# thousands of levels deep overflows Python's stack while it is parsed, and a few hundred
# levels parse but overflow it later, when a run writes its config.yaml: refused at load.
MAX_DEPTH = 64


def _depth(value: Any) -> int:
    """How deeply lists and mappings nest in `value` (a scalar is 0); iterative, so any
    depth is measured without touching the stack limit."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        node, level = todo.pop()
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, (list, tuple)):
            children = list(node)
        else:
            continue
        deepest = max(deepest, level)
        todo += [(child, level + 1) for child in children]
    return deepest


def _too_deep(where: str) -> ConfigError:
    return ConfigError(
        f"{where}: lists or mappings nested more than {MAX_DEPTH} levels deep; "
        "a config is a few levels deep, fix the nesting"
    )


def _unreadable_value(where: str, e: ValueError, text: str, file: bool = True) -> ConfigError:
    """A scalar YAML parses but Python refuses: a number of more digits than Python converts
    (sys.get_int_max_str_digits, 4300), or a date like 2024-13-01. In a file, the number's
    line is named."""
    if "integer string conversion" in str(e):
        # UP031: with the regex's own braces, %d reads better than an f-string's {{...}}
        long = re.search(r"\d[\d_]{%d,}" % sys.get_int_max_str_digits(), text) if file else None  # noqa: UP031
        line = f":{text.count(chr(10), 0, long.start()) + 1}" if long else ""
        return ConfigError(
            f"{where}{line}: a number more than {sys.get_int_max_str_digits()} digits long; "
            "no setting takes one, fix the value"
        )
    return ConfigError(f"{where}: a value YAML cannot read ({e}); fix it, or quote it if it is text")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass the path to a YAML file, e.g. configs/quickstart.yaml")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} cannot be read ({e})") from None
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: {e}; keep one of them") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}: YAML syntax error: {problem}; fix the file and retry") from None
    except RecursionError:
        raise _too_deep(str(path)) from None
    except ValueError as e:
        raise _unreadable_value(str(path), e, text) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (name, data, model, train, augment)")
    if _depth(data) > MAX_DEPTH:
        raise _too_deep(str(path))
    return data


def _shown(item: str, limit: int = 80) -> str:
    """An override as an error message names it: whole, unless it is too long for one line."""
    item = " ".join(item.split())
    return item if len(item) <= limit else item[: limit - 3] + "..."


def _apply_override(tree: dict[str, Any], item: str) -> tuple[str, ...]:
    """Set one `key=value` override in `tree`; returns the key's path, so that a value the
    validation refuses is blamed on the override that gave it, not on the config file."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    where = f"--set {_shown(item)}"
    if not sep or not key:
        raise ConfigError(f"override '{item}' must look like key=value, e.g. train.epochs=3")
    try:
        value = yaml.load(raw, Loader=StrictLoader) if raw.strip() else None
    except _DuplicateKey as e:
        raise ConfigError(f"override '{item}': {str(e).split(', on lines')[0]}; keep one of them") from None
    except yaml.YAMLError:
        value = raw
    except RecursionError:
        raise _too_deep(where) from None
    except ValueError as e:
        raise _unreadable_value(where, e, raw, file=False) from None
    parts = key.split(".")
    if len(parts) + _depth(value) > MAX_DEPTH:
        raise _too_deep(where)
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value
    return tuple(parts)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Names of the fields of the sub-model found by walking `loc` from `model`."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            break
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        nxt = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if nxt is None:
            return []
        current = nxt
    return list(current.model_fields)


_UNION_TAG = re.compile(r"^(function-|constrained-|literal\[|int$|float$|str$|bool$|list\[|tuple\[|dict\[)")


def _field_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The key path of an error, without the tags pydantic adds for validators and for each
    member of a union (`epochs.constrained-int`, `epochs.literal['auto']`)."""
    return tuple(p for p in loc if not (isinstance(p, str) and _UNION_TAG.match(p)))


def _format_error(err: ValidationError, source: str | Callable[[tuple[Any, ...]], str]) -> str:
    """One line for the first error; `source` names where the value came from, or is a
    function of the key path that does (a file, or the --set override that gave the key)."""
    errors = err.errors()
    first = errors[0]
    loc = _field_loc(first["loc"])
    # A value that fits no member of a union ("int or auto") fails once per member: say all at once.
    same = [e for e in errors if _field_loc(e["loc"]) == loc]
    if len(same) > 1:
        first = {**first, "msg": "; or ".join(e["msg"] for e in same)}
        errors = [e for e in errors if _field_loc(e["loc"]) != loc] + [first]
    key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    source = source(loc) if callable(source) else source
    if first["type"] == "extra_forbidden":
        known = _fields_at(Config, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else f"known keys here: {', '.join(known)}"
        msg = f"{source}: unknown key '{key}'; {fix}"
    else:
        got = first.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {_shown(repr(got))})"
        msg = f"{source}: bad value for '{key}'{shown}: {first['msg']}"
    more = len(errors) - 1
    return msg + (f" [+{more} more]" if more else "")


def config_from_dict(data: dict[str, Any], source: str | Callable[[tuple[Any, ...]], str] = "config") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(e, source)) from None
    except RecursionError:  # nesting built in Python, not read from YAML: no line to name
        raise ConfigError(
            f"{source if isinstance(source, str) else 'config'}: nested too deeply to validate; fix the nesting"
        ) from None


def _blamer(path: Path | None, overrides: list[tuple[tuple[str, ...], str]]) -> Callable[[tuple[Any, ...]], str]:
    """Who gave the value at a key path: the last override that set that key or a section
    above it; the file with the overrides below it, when a whole section is refused; else
    the file."""

    def blame(loc: tuple[Any, ...]) -> str:
        loc = tuple(loc)
        direct = [item for parts, item in overrides if loc[: len(parts)] == parts]
        if direct:
            return f"--set {_shown(direct[-1])}"
        below = [f"--set {_shown(item)}" for parts, item in overrides if parts[: len(loc)] == loc]
        if below:
            return f"{path} with {', '.join(below)}" if path else ", ".join(below)
        return str(path) if path else "--set"

    return blame


def _class_clash(data: DataConfig) -> tuple[tuple[Any, ...], str] | None:
    """(key path, problem) for classes that cannot be told apart: two with one name (reports,
    gates and --min-class-iou find classes by name), two with one colour (an rgb mask's
    pixels of that colour all go to the second; overlays and palette masks show both the
    same), or an ignore colour that is a class's colour (its pixels would all be ignored).
    Checked when a config is loaded, not in DataConfig, so that models trained before the
    check still open."""
    first_name: dict[str, int] = {}
    first_colour: dict[tuple[int, int, int], int] = {}
    for j, c in enumerate(data.classes):
        i = first_name.setdefault(c.name, j)
        if i != j:
            return ("data", "classes", j), (
                f"data.classes[{i}] and data.classes[{j}] are both named '{c.name}'; give each class its own name"
            )
        i = first_colour.setdefault(tuple(c.color), j)
        if i != j:
            return ("data", "classes", j), (
                f"data.classes[{i}] ({data.classes[i].name}) and data.classes[{j}] ({c.name}) share the colour "
                f"{list(c.color)}; give each class its own colour (masks and overlays tell classes apart by colour)"
            )
    for k, colour in enumerate(data.ignore_colors):
        i = first_colour.get(tuple(colour))
        if i is not None:
            return ("data", "ignore_colors", k), (
                f"data.ignore_colors[{k}] {list(colour)} is the colour of data.classes[{i}] ({data.classes[i].name}), "
                "whose pixels would all be ignored; remove it from ignore_colors or give the class another colour"
            )
    return None


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read YAML (if given), apply `key=value` overrides, validate, and make data paths absolute.

    Relative data paths resolve against the config file's folder (the working directory
    when there is no file), so a config works from wherever it is run. An error names the
    file, or the override that gave the value refused.
    """
    path = Path(path) if path is not None else None
    tree = _read_yaml(path) if path else {}
    applied = [(_apply_override(tree, item), item) for item in overrides]
    blame = _blamer(path, applied)
    cfg = config_from_dict(tree, source=blame)
    clash = _class_clash(cfg.data)
    if clash is not None:
        loc, problem = clash
        raise ConfigError(f"{blame(loc)}: {problem}")
    base = path.resolve().parent if path else Path.cwd()
    return resolve_paths(cfg, base)


def resolve_paths(cfg: Config, base: Path) -> Config:
    d = cfg.data
    root = d.root if d.root is not None else base
    root = root if root.is_absolute() else (base / root)
    data = d.model_copy(
        update={
            "root": root,
            "train": d.train.resolved(root) if d.train else None,
            "val": d.val.resolved(root) if d.val else None,
        }
    )
    return cfg.model_copy(update={"data": data})


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def parse_split(text: str) -> SplitSpec:
    """A split given on the command line (`--data`): a list file or an images/masks folder."""
    path = Path(text).resolve()
    try:
        if path.is_dir() and not (path / "images").is_dir() and any(path.glob("*.json")):
            return SplitSpec(annotations=path)  # a folder of LabelMe files
        return SplitSpec.model_validate(str(path))
    except ValidationError as e:
        raise ConfigError(f"--data {text}: {e.errors()[0]['msg']}") from None
