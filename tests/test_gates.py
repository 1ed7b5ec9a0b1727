"""CI gates: floors, a baseline overall and per class, every failure listed with both
numbers, Markdown and JUnit reports, and exit codes that tell the outcomes apart."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import gate_report as _report
from conftest import run
from segtool.errors import ConfigError
from segtool.reporting import gates as g


def test_every_failed_gate_is_listed_with_both_numbers():
    base = _report({"road": 0.90, "person": 0.40, "bike": 0.30})
    now = _report({"road": 1.0, "person": 0.28, "bike": 0.33})
    gates = g.check_gates(now, min_miou=0.5, floors={"person": 0.30}, baseline=base, max_drop=0.0, max_class_drop=0.05)
    failed = [x for x in gates if not x.passed]
    assert [x.name for x in failed] == ["person IoU floor", "person IoU vs baseline"]
    assert "person IoU 0.2800 vs floor 0.3000" in failed[0].detail
    assert "0.2800 vs baseline 0.4000 (-0.1200; at most -0.0500 allowed)" in failed[1].detail
    assert g.exit_code(now, gates) == g.EXIT_GATE_FAILED
    # A gain on road hides the drop on person in the mean: the overall gate alone passes.
    assert next(x for x in gates if x.name == "mIoU vs baseline").passed


def test_unreadable_data_is_an_input_error_and_a_pass_is_0():
    ok = _report({"road": 0.9})
    assert g.exit_code(ok, g.check_gates(ok, min_miou=0.5)) == g.EXIT_OK
    broken = _report({"road": 0.9}, failed=[{"image": "a.png", "error": "truncated"}])
    assert g.exit_code(broken, g.check_gates(broken, min_miou=0.95)) == g.EXIT_USAGE


def test_a_baseline_of_other_classes_or_other_data_is_refused(tmp_path):
    now = _report({"road": 0.9, "person": 0.4})
    for other, message in (
        (_report({"road": 0.9, "cyclist": 0.4}), "scores other classes"),
        (_report({"road": 0.9, "person": 0.4}, data_id="d2"), "measured on other data"),
        ({"miou": 0.5}, "not a segtool evaluation report of version 1"),
    ):
        (tmp_path / "b.json").write_text(json.dumps(other))
        with pytest.raises(ConfigError, match=message):
            g.load_baseline(tmp_path / "b.json", now)
    with pytest.raises(ConfigError, match="not found"):
        g.load_baseline(tmp_path / "none.json", now)


def test_class_floors_name_real_classes():
    assert g.parse_floors(["Pedestrian=0.30", "Bicyclist=0.25"], ["Pedestrian", "Bicyclist"]) == {
        "Pedestrian": 0.3,
        "Bicyclist": 0.25,
    }
    with pytest.raises(ConfigError, match="no class 'Pedestrain'; the classes are Pedestrian"):
        g.parse_floors(["Pedestrain=0.3"], ["Pedestrian"])
    with pytest.raises(ConfigError, match="give CLASS=IOU"):
        g.parse_floors(["Pedestrian"], ["Pedestrian"])


def test_junit_has_a_case_per_gate_and_markdown_a_delta_per_class():
    base = _report({"road": 0.90, "person": 0.40})
    now = _report({"road": 0.92, "person": 0.30})
    gates = g.check_gates(now, baseline=base, max_drop=0.05, max_class_drop=0.05)  # mIoU -0.04: within
    suite = ET.fromstring(g.junit(now, gates).split("?>", 1)[1])
    assert int(suite.get("tests")) == len(gates) + 1 and int(suite.get("failures")) == 1
    assert [c.get("name") for c in suite if c.find("failure") is not None] == ["person IoU vs baseline"]
    md = g.markdown(now, gates, base)
    assert "### segtool evaluate: FAIL" in md and "| person | 30.0 | 40.0 | -10.0 | 100 |" in md
    assert "| person IoU vs baseline | **FAIL** |" in md


def test_evaluate_gates_end_to_end(trained, tiny_data, tmp_path, monkeypatch):
    _, out = trained
    base = tmp_path / "base.json"
    assert run("evaluate", out / "best.pt", "--json", base, "-q").exit_code == 0
    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = run(
        "evaluate",
        out / "best.pt",
        "-q",
        "--baseline",
        base,
        "--max-class-drop",
        0.0,
        "--min-class-iou",
        "disc=1.0",
        "--markdown",
        tmp_path / "s.md",
        "--junit",
        tmp_path / "j.xml",
    )
    assert result.exit_code == 1, result.output
    assert "FAIL: disc IoU" in result.output and "PASS: mIoU" in result.output  # every gate, passed or not
    assert summary.read_text() == (tmp_path / "s.md").read_text()
    assert ET.parse(tmp_path / "j.xml").getroot().get("failures") == "1"
    assert run("evaluate", out / "best.pt", "-q", "--max-drop", 0.01).exit_code == 2  # a drop needs a baseline
    other = run("evaluate", out / "best.pt", "--data", tiny_data / "train", "-q", "--baseline", base)
    assert other.exit_code == 2 and "measured on other data" in other.output


def test_the_html_report_shows_the_worst_images_and_opens_from_disk(trained, tmp_path):
    import re
    import shutil
    import subprocess

    _, out = trained
    result = run("evaluate", out / "best.pt", "-q", "--report", tmp_path / "rep", "--report-images", 3)
    assert result.exit_code == 0, result.output
    page = (tmp_path / "rep" / "index.html").read_text()
    assert list((tmp_path / "rep").iterdir()) == [tmp_path / "rep" / "index.html"]  # self-contained: one file
    assert len(re.findall(r"src='data:image/jpeg;base64,", page)) == 3 * 4  # image, truth, prediction, errors
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert "<table class='cm'>" in page and "triangle" in page
    scores = [float(m) for m in re.findall(r"\.png: mIoU ([0-9.]+)</h3>", page)]
    assert len(scores) == 3 and scores == sorted(scores)  # the worst first
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no headless browser on this machine to render the page")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            (tmp_path / "rep" / "index.html").as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape[:2] == (1600, 1200) and pixels.std() > 10  # rendered, not a blank page
