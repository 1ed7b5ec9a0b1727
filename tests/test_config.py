from pathlib import Path

import pytest
from pydantic import ValidationError

from segtool.config import Config, SplitSpec, load_config, parse_split
from segtool.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_documents_exactly_the_code_defaults():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    ours = cfg.to_dict()
    defaults = Config().to_dict()
    ours["data"]["root"] = defaults["data"]["root"] = None
    assert ours == defaults


def test_default_yaml_has_a_comment_on_every_key():
    for n, line in enumerate((ROOT / "configs" / "default.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if ":" in stripped and not stripped.startswith(("#", "-")) and not stripped.endswith(":"):
            assert "#" in line, f"default.yaml line {n} has no comment: {line}"


def test_recipe_configs_load():
    for path in (ROOT / "configs").glob("*.yaml"):
        load_config(path)


def test_unknown_key_suggests_the_right_one(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'; did you mean 'epochs'\?") as e:
        load_config(p)
    assert e.value.exit_code == 2


def test_unknown_top_level_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("modle: {}\n")
    with pytest.raises(ConfigError, match="did you mean 'model'"):
        load_config(p)


def test_wrong_type_names_the_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"bad value for 'train.epochs' \(got 'many'\)"):
        load_config(p)


def test_out_of_range_value_names_the_key():
    with pytest.raises(ConfigError, match="model.width_mult"):
        load_config(None, ["model.width_mult=3"])


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 3\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: YAML syntax error"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_parse_yaml_values_and_nest(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {epochs: 5}\n")
    cfg = load_config(
        p, ["train.epochs=3", "model.head=unet", "data.eval_size=[64, 96]", "train.loss.dice_weight=0.25"]
    )
    assert cfg.train.epochs == 3 and cfg.model.head == "unet"
    assert cfg.data.eval_size == (64, 96) and cfg.train.loss.dice_weight == 0.25


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.yaml"
    p.write_text("data:\n  train: ../d/train.txt\n  val: ../d/val\n")
    cfg = load_config(p)
    assert cfg.data.train.list == tmp_path / "sub" / ".." / "d" / "train.txt"
    assert cfg.data.val.images == tmp_path / "sub" / ".." / "d" / "val" / "images"


def test_split_forms():
    assert parse_split("x/val.txt").list.name == "val.txt"
    s = SplitSpec.model_validate({"images": "a", "masks": "b"})
    assert s.images == Path("a") and s.list is None
    with pytest.raises(ConfigError, match="images"):
        load_config(None, ["data.train={images: a}"])


def test_ignore_index_may_not_be_a_class():
    with pytest.raises(ConfigError, match="ignore_index"):
        load_config(
            None, ["data.classes=[{name: a, color: [0,0,0]}, {name: b, color: [1,1,1]}]", "data.ignore_index=1"]
        )


def test_synthetic_fills_in_its_classes():
    cfg = load_config(None, ["data.synthetic={}"])
    assert [c.name for c in cfg.data.classes] == ["background", "disc", "box", "triangle"]


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.epochs = 3
