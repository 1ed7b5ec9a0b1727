"""Nothing silently wrong, round three: configs whose classes cannot be told apart, YAML
nested or numbered past what Python parses, --set errors that name the override, damaged
baselines and baselines with classes they cannot compare, Markdown table cells, --report
folders that cannot be written, splits with no readable pair, and exported models whose
metadata is damaged. Each is one line naming what to fix, exit 2, never a traceback."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import gate_report as _report
from conftest import run, tiny_yaml, write_config
from segtool.config import load_config
from segtool.errors import CheckpointError, ConfigError, SegtoolError
from segtool.reporting import gates as g


def one_line_error(result, needle: str) -> str:
    """The CLI said one `error:` line holding `needle`, exit 2, and no traceback."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output[-2000:]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


# --------------------------------------------------------------------------- 1. classes


def _classes(edit):
    def change(cfg):
        edit(cfg["data"])

    return change


@pytest.mark.parametrize(
    "edit, needle",
    [
        (
            lambda d: d["classes"][2].update(color=[255, 0, 0]),
            "data.classes[1] (disc) and data.classes[2] (box) share the colour [255, 0, 0]; "
            "give each class its own colour",
        ),
        (
            lambda d: d.update(ignore_colors=[[9, 9, 9], [0, 255, 0]]),
            "data.ignore_colors[1] [0, 255, 0] is the colour of data.classes[2] (box), "
            "whose pixels would all be ignored; "
            "remove it from ignore_colors or give the class another colour",
        ),
        (
            lambda d: d["classes"][3].update(name="disc"),
            "data.classes[1] and data.classes[3] are both named 'disc'; give each class its own name",
        ),
        (
            lambda d: [c.update(value=v) for c, v in zip(d["classes"], (0, 7, 7, 9))],
            "two classes share a stored value: 7 (data.classes[1] disc and data.classes[2] box); "
            "give each class its own value",
        ),
    ],
    ids=["colour", "ignore-colour", "name", "value"],
)
def test_classes_that_cannot_be_told_apart_are_refused_at_load(tmp_path, tiny_data, edit, needle):
    config = write_config(tmp_path / "clash.yaml", tiny_yaml(tiny_data, _classes(edit)))
    with pytest.raises(ConfigError, match="clash.yaml") as e:
        load_config(config)
    assert needle in str(e.value) and "\n" not in str(e.value)
    # rgb masks are where a shared colour loses a class outright: refused there too, by the CLI.
    one_line_error(run("check-data", config, "--set", "data.mask_format=rgb"), needle)


def test_every_shipped_config_keeps_its_classes_apart():
    for path in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"):
        data = load_config(path).data
        assert len({c.name for c in data.classes}) == len({tuple(c.color) for c in data.classes}) == data.num_classes


# --------------------------------------------------------------------------- 2. nesting, long numbers


def test_yaml_nested_thousands_deep_is_a_config_error(tmp_path):
    deep = write_config(tmp_path / "deep.yaml", "name: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError, match=r"deep.yaml: lists or mappings nested more than 64 levels deep"):
        load_config(deep)
    plain = write_config(tmp_path / "plain.yaml", "name: x\n")
    line = one_line_error(
        run("check-data", plain, "--set", "name=" + "[" * 20000 + "]" * 20000), "nested more than 64 levels"
    )
    assert line.startswith("error: --set name=[[[[") and len(line) < 300  # the override named, shortened
    # A few hundred levels parse, but would overflow the stack when the run writes its config.yaml.
    with pytest.raises(ConfigError, match=r"--set augment.train=.*nested more than 64 levels"):
        load_config(None, ["augment.train=[{HorizontalFlip: {p: " + "[" * 400 + "]" * 400 + "}}]"])


def test_a_number_of_5000_digits_is_a_config_error(tmp_path):
    big = write_config(tmp_path / "big.yaml", "name: x\ntrain:\n  seed: " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"big.yaml:3: a number more than 4300 digits long; no setting takes one"):
        load_config(big)
    plain = write_config(tmp_path / "plain.yaml", "name: x\n")
    line = one_line_error(
        run("check-data", plain, "--set", "train.seed=" + "9" * 5000), "a number more than 4300 digits"
    )
    assert line.startswith("error: --set train.seed=9999") and len(line) < 300


# --------------------------------------------------------------------------- 3. --set errors name the override


def test_a_bad_override_is_named_not_the_config_file(tmp_path, tiny_data):
    config = write_config(tmp_path / "tiny.yaml", tiny_yaml(tiny_data))
    result = run("train", config, "--out", tmp_path / "r", "-q", "--set", "train.epochs=abc")
    line = one_line_error(result, "--set train.epochs=abc: bad value for 'train.epochs' (got 'abc')")
    assert "tiny.yaml" not in line
    with pytest.raises(ConfigError, match=r"^--set train.epoch=3: unknown key 'train.epoch'; did you mean 'epochs'\?"):
        load_config(config, ["train.epoch=3"])
    # A check over a whole section, failed by a file and an override together, names both.
    with pytest.raises(
        ConfigError, match=r"^\S*tiny.yaml with --set data.ignore_index=1: .*ignore_index 1 is a real class"
    ):
        load_config(config, ["data.ignore_index=1"])
    # The file's own mistakes are still the file's.
    bad = write_config(tmp_path / "bad.yaml", tiny_yaml(tiny_data, lambda c: c["train"].update(epochs="many")))
    with pytest.raises(ConfigError, match=r"bad.yaml: bad value for 'train.epochs'"):
        load_config(bad, ["model.head=unet"])


# --------------------------------------------------------------------------- 4. baselines


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda b: b.update(miou="high"), "key 'miou' is \"high\", not a fraction 0..1"),
        (lambda b: b.update(miou=None), "key 'miou' is null"),
        (lambda b: b.update(miou=7), "key 'miou' is 7, not a fraction 0..1"),
        (lambda b: b.update(per_class="x"), "key 'per_class' is \"x\", not a list of {class, iou} objects"),
        (lambda b: b["per_class"].__setitem__(1, 3), "key 'per_class[1]' is 3, not a {class, iou} object"),
        (lambda b: b["per_class"][0].pop("class"), "key 'per_class[0].class' is null, not a class name"),
        (
            lambda b: b["per_class"][1].update(iou="0.4"),
            "key 'per_class[1].iou' is \"0.4\", not a fraction 0..1 or null",
        ),
    ],
    ids=["miou-text", "miou-null", "miou-7", "per-class-text", "entry-number", "entry-no-class", "iou-text"],
)
def test_a_hand_edited_baseline_is_one_line_naming_file_and_key(tmp_path, edit, needle):
    now = _report({"road": 0.9, "person": 0.4})
    base = _report({"road": 0.9, "person": 0.4})
    edit(base)
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base))
    with pytest.raises(ConfigError) as e:
        g.load_baseline(path, now)
    assert str(e.value).startswith(f"--baseline {path}: ") and needle in str(e.value)
    assert "regenerate it with segtool evaluate --json" in str(e.value)


def test_a_baseline_nested_too_deeply_is_not_a_traceback(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ConfigError, match="is not a JSON report"):
        g.load_baseline(path, _report({"road": 0.9}))


def test_classes_without_a_baseline_iou_are_said_not_compared():
    base = _report({"road": 0.9, "person": None, "bike": None, "car": 0.5})
    now = {**_report({"road": 0.9, "person": None, "bike": 0.1, "car": 0.5}), "miou": base["miou"]}
    gates = g.check_gates(now, baseline=base, max_class_drop=0.01)
    skipped = [x for x in gates if x.skipped]
    assert len(skipped) == 1 and skipped[0].verdict == "SKIP" and skipped[0].passed
    assert (
        skipped[0].detail
        == "person, bike (now 0.1000): no IoU in the baseline (no pixels there, none predicted), so not compared"
    )
    assert [x.name for x in gates if not x.skipped] == [
        "mIoU vs baseline",
        "road IoU vs baseline",
        "car IoU vs baseline",
    ]
    assert g.exit_code(now, gates) == g.EXIT_OK  # not a failure: see check_gates
    suite = ET.fromstring(g.junit(now, gates).split("?>", 1)[1])
    assert suite.get("skipped") == "1" and suite.get("failures") == "0"
    assert [c.get("name") for c in suite if c.find("skipped") is not None] == ["classes without a baseline IoU"]
    assert "| classes without a baseline IoU | not compared | person, bike (now 0.1000)" in g.markdown(now, gates, base)
    # Without --max-class-drop no class is gated, so there is nothing to say.
    assert not any(x.skipped for x in g.check_gates(now, baseline=base))


def test_damaged_and_partial_baselines_end_to_end(trained, tmp_path):
    _, out = trained
    good = tmp_path / "base.json"
    assert run("evaluate", out / "best.pt", "--json", good, "-q").exit_code == 0
    report = json.loads(good.read_text())
    for name, edit, needle in (
        ("miou.json", lambda b: b.update(miou="high"), "key 'miou' is \"high\""),
        ("pc.json", lambda b: b.update(per_class="x"), "key 'per_class' is \"x\""),
    ):
        bad = json.loads(json.dumps(report))
        edit(bad)
        (tmp_path / name).write_text(json.dumps(bad))
        one_line_error(
            run("evaluate", out / "best.pt", "-q", "--baseline", tmp_path / name),
            f"--baseline {tmp_path / name}: {needle}",
        )
    partial = json.loads(json.dumps(report))
    partial["per_class"][3]["iou"] = None
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    result = run("evaluate", out / "best.pt", "-q", "--baseline", tmp_path / "partial.json", "--max-class-drop", 0.5)
    assert result.exit_code == 0, result.output
    assert (
        "SKIP: triangle" in result.output
        and "no IoU in the baseline" in result.output
        and "not compared" in result.output
    )


# --------------------------------------------------------------------------- 5. Markdown


def test_markdown_cells_escape_pipes_and_newlines():
    now = _report({"road|lane": 0.9, "person\nwalking": 0.4})
    gates = g.check_gates(now, floors={"road|lane": 0.95})
    md = g.markdown(now, gates, None)
    assert "| road\\|lane | 90.0 | 100 |" in md and "| person walking | 40.0 | 100 |" in md
    assert "| road\\|lane IoU floor | **FAIL** | road\\|lane IoU 0.9000 vs floor 0.9500 |" in md
    for row in (line for line in md.splitlines() if line.startswith("| ")):  # every row keeps its three columns
        assert row.replace("\\|", "").count("|") == 4, row


# --------------------------------------------------------------------------- 6. --report folders


def test_a_report_folder_that_cannot_be_made_fails_before_scoring(trained, tmp_path):
    _, out = trained
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for target, needle in (
        (afile, f"--report {afile}: {afile} is a file, not a folder; choose another folder for the report"),
        (afile / "sub", f"--report {afile / 'sub'}: {afile} is a file, not a folder"),
    ):
        result = run("evaluate", out / "best.pt", "-q", "--report", target, "--json", tmp_path / "r.json")
        one_line_error(result, needle)  # before scoring: no table, no report written
        assert not (tmp_path / "r.json").exists()
    assert afile.read_text() == "keep me"
    (tmp_path / "rep" / "index.html").mkdir(parents=True)
    one_line_error(run("evaluate", out / "best.pt", "-q", "--report", tmp_path / "rep"), "index.html is a folder")


def test_the_report_after_scoring_is_a_one_line_error_too(trained, tmp_path):
    """The folder checked before scoring may be gone or taken by a file by the time the page
    is written: that path says so in one line, writes nothing, and is exit 2 in the CLI."""
    from segtool.reporting.html import report_for_model

    _, out = trained
    assert run("evaluate", out / "best.pt", "-q", "--json", tmp_path / "r.json").exit_code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    afile = tmp_path / "taken"
    afile.write_text("keep me")
    with pytest.raises(SegtoolError, match=r"--report .*taken: .*taken is a file, not a folder"):
        report_for_model(out / "best.pt", report, [], afile, device="cpu")
    assert afile.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "taken"]


def test_a_read_only_report_folder_fails_before_scoring(trained, tmp_path, monkeypatch):
    import os

    from segtool.reporting import html as visual_report

    _, out = trained
    locked = tmp_path / "locked"
    locked.mkdir()
    # What access(2) answers for a read-only folder or file system (root would not get it from chmod).
    real = os.access
    monkeypatch.setattr(visual_report.os, "access", lambda path, mode: Path(path) != locked and real(path, mode))
    result = run("evaluate", out / "best.pt", "-q", "--report", locked / "rep", "--json", tmp_path / "r.json")
    one_line_error(
        result, f"--report {locked / 'rep'}: {locked} cannot be written (no permission, or a read-only file system)"
    )
    assert not (tmp_path / "r.json").exists() and list(locked.iterdir()) == []


def test_a_page_that_cannot_be_written_leaves_no_folder_behind(trained, tmp_path, monkeypatch):
    import errno

    from segtool.reporting import html as visual_report

    _, out = trained
    assert run("evaluate", out / "best.pt", "-q", "--json", tmp_path / "r.json").exit_code == 0
    report = json.loads((tmp_path / "r.json").read_text())

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(visual_report.Path, "mkdir", full)  # the check passed; the disk filled up since
    with pytest.raises(SegtoolError, match=r"--report .*rep: the folder cannot be made \(No space left on device\)"):
        visual_report.report_for_model(out / "best.pt", report, [], tmp_path / "new" / "rep", device="cpu")
    monkeypatch.undo()
    monkeypatch.setattr(
        visual_report, "atomic_write_text", lambda *a: (_ for _ in ()).throw(SegtoolError("cannot write index.html"))
    )
    with pytest.raises(SegtoolError, match="cannot write index.html"):
        visual_report.report_for_model(out / "best.pt", report, [], tmp_path / "new" / "rep", device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # the folders it made are gone again


# --------------------------------------------------------------------------- 7. no readable pair


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    _, out = trained
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    result = run("export", out / "best.pt", "--out", path)
    assert result.exit_code == 0, result.output
    return path


def test_a_split_with_no_readable_pair_is_an_input_error(trained, exported, tmp_path):
    _, out = trained
    split = tmp_path / "broken"
    for sub in ("images", "masks"):
        (split / sub).mkdir(parents=True)
        for i in range(2):
            (split / sub / f"x{i}.png").write_bytes(b"not a png")
    for model in (out / "best.pt", exported):  # PyTorch and ONNX Runtime alike
        result = run("evaluate", model, "--data", split, "-q", "--min-miou", 0.5, "--json", tmp_path / "r.json")
        line = one_line_error(result, f"no pair of {split / 'images'} + {split / 'masks'} could be read: 2 unreadable")
        assert "cannot be decoded" in line and "IoU" not in result.output  # no table of dashes, no gate verdict
        assert not (tmp_path / "r.json").exists()  # and no report to become a baseline of nothing


# --------------------------------------------------------------------------- 8. damaged ONNX metadata


def _with_meta(src: Path, dst: Path, edit) -> Path:
    import onnx

    from segtool.inference.onnx_model import META_KEY

    proto = onnx.load(str(src))
    entry = next(e for e in proto.metadata_props if e.key == META_KEY)
    meta = json.loads(entry.value)
    new = edit(meta)
    entry.value = new if isinstance(new, str) else json.dumps(meta)
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda m: "{not json", "it is not JSON (Expecting property name enclosed in double quotes)"),
        (
            lambda m: m["tiling"].update(tile_size=[0, 0]),
            "'tiling': tile_size is [height, width] in pixels, both >= 32",
        ),
        (
            lambda m: m["tiling"].update(tile_size=[-64, 128]),
            "'tiling': tile_size is [height, width] in pixels, both >= 32",
        ),
        (
            lambda m: m["tiling"].update(tile_overlap=512),
            "'tiling': tile_overlap 512 must be smaller than the tile ([512, 512])",
        ),
        (lambda m: m.update(num_classes=5), "'num_classes' is 5 but 'classes' lists 4"),
        (lambda m: m.update(std=[0, 1, 1]), "'std': std values must be > 0"),
    ],
    ids=["not-json", "tile-0", "tile-negative", "overlap", "num-classes", "std"],
)
def test_damaged_onnx_metadata_is_refused_when_the_file_is_opened(exported, tmp_path, tiny_data, edit, needle):
    from segtool.inference.onnx_model import OnnxSegmenter

    bad = _with_meta(exported, tmp_path / "bad.onnx", edit)
    with pytest.raises(CheckpointError) as e:
        OnnxSegmenter(bad, threads=1)
    assert str(e.value) == f"{bad}: its segtool metadata is damaged: {needle}; export it again with segtool export"
    one_line_error(run("evaluate", bad, "--data", tiny_data / "val", "-q", "--tile"), "its segtool metadata is damaged")
    one_line_error(
        run("predict", tiny_data / "val" / "images", "--model", bad, "--out", tmp_path / "p", "-q", "--tile"),
        "its segtool metadata is damaged",
    )


def test_intact_onnx_files_still_open(exported):
    from segtool.builtin import builtin_onnx
    from segtool.inference.onnx_model import OnnxSegmenter

    assert OnnxSegmenter(exported, threads=1).names == ["background", "disc", "box", "triangle"]
    assert len(OnnxSegmenter(builtin_onnx("camvid"), threads=1).names) == 11
