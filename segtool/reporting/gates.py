"""CI gates over an evaluation report, and the reports CI systems show.

A gate is one check with the numbers on both sides: an mIoU floor, a per-class IoU floor,
or "no worse than the baseline report" overall and per class. Every gate is checked and
reported, not only the first that fails. Torch-free: the reports are plain dicts.

Exit codes of `segtool evaluate` (documented in the README):
  0  every gate passed (or none was asked for)
  1  a gate failed
  2  usage, config or input error (a bad option, a baseline of other classes or other data,
     a damaged baseline, no pair of the split readable), or some image/mask pairs could not
     be read (the rest were evaluated, reported and gated)
"""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtool.errors import EXIT_GATE_FAILED, EXIT_OK, EXIT_USAGE, ConfigError, SegtoolError

REPORT_VERSION = 1


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    actual: float | None
    limit: float
    detail: str  # the comparison, numbers on both sides
    skipped: bool = False  # asked for but not checked (the detail says why); never fails the run

    @property
    def verdict(self) -> str:
        """PASS, FAIL or SKIP: how the terminal, Markdown and JUnit reports mark it."""
        return "SKIP" if self.skipped else "PASS" if self.passed else "FAIL"


def parse_floors(items: list[str], classes: list[str]) -> dict[str, float]:
    """`--min-class-iou Pedestrian=0.30` items -> {class: floor}; names must be classes."""
    floors = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        try:
            floor = float(value)
        except ValueError:
            floor = -1.0
        if not sep or not 0 <= floor <= 1:
            raise ConfigError(f"--min-class-iou {item}: give CLASS=IOU with IOU a fraction 0..1, e.g. Pedestrian=0.30")
        if name not in classes:
            raise ConfigError(f"--min-class-iou {item}: no class '{name}'; the classes are {', '.join(classes)}")
        floors[name] = floor
    return floors


def _fraction(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1


def _damage(base: dict[str, Any]) -> str | None:
    """What is wrong with the keys the gates read from a baseline (a hand-edited or
    truncated report), as "key 'K' is V, not ...", or None."""

    def shown(v: Any) -> str:
        text = json.dumps(v) if isinstance(v, (str, int, float, list, dict)) or v is None else repr(v)
        return text if len(text) <= 40 else text[:37] + "..."

    miou = base.get("miou")
    if miou is None:  # a report that measured nothing: "no worse than nothing" would always pass
        return "key 'miou' is null (that evaluation measured no IoU), not a fraction 0..1"
    if not _fraction(miou):
        return f"key 'miou' is {shown(miou)}, not a fraction 0..1"
    per_class = base.get("per_class")
    if not isinstance(per_class, list):
        return f"key 'per_class' is {shown(per_class)}, not a list of {{class, iou}} objects"
    for i, c in enumerate(per_class):
        if not isinstance(c, dict):
            return f"key 'per_class[{i}]' is {shown(c)}, not a {{class, iou}} object"
        if not isinstance(c.get("class"), str):
            return f"key 'per_class[{i}].class' is {shown(c.get('class'))}, not a class name"
        if c.get("iou") is not None and not _fraction(c.get("iou")):
            return f"key 'per_class[{i}].iou' is {shown(c.get('iou'))}, not a fraction 0..1 or null"
    return None


def load_baseline(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """A baseline report, refused unless it scored the same classes on the same data, and
    unless every key the gates read has the type and range an evaluation writes."""
    try:
        base = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--baseline {path} not found; write one with segtool evaluate ... --json {path}") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--baseline {path} is not a JSON report ({e})") from None
    except RecursionError:
        raise ConfigError(
            f"--baseline {path} is not a JSON report (nested too deeply); regenerate it with segtool evaluate --json"
        ) from None
    if not isinstance(base, dict) or base.get("report_version") != REPORT_VERSION:
        raise ConfigError(
            f"--baseline {path} is not a segtool evaluation report of version {REPORT_VERSION} "
            f"(found {base.get('report_version') if isinstance(base, dict) else 'no version'}); "
            "regenerate it with segtool evaluate --json"
        )
    damage = _damage(base)
    if damage:
        raise ConfigError(f"--baseline {path}: {damage}; regenerate it with segtool evaluate --json {path}")
    ours, theirs = [c["class"] for c in report["per_class"]], [c["class"] for c in base["per_class"]]
    if ours != theirs:
        raise ConfigError(
            f"--baseline {path} scores other classes ({', '.join(theirs[:4])}...) "
            f"than this model ({', '.join(ours[:4])}...)"
        )
    if base.get("data_id") != report["data_id"]:
        raise ConfigError(
            f"--baseline {path} was measured on other data ({base.get('images')} images, id {base.get('data_id')}) "
            f"than this run ({report['images']} images, id {report['data_id']}); compare reports of the same split"
        )
    return base


def check_gates(
    report: dict[str, Any],
    *,
    min_miou: float | None = None,
    floors: dict[str, float] | None = None,
    baseline: dict[str, Any] | None = None,
    max_drop: float = 0.0,
    max_class_drop: float | None = None,
) -> list[Gate]:
    """Every gate asked for, each with its verdict and numbers."""
    gates = []
    miou = report["miou"] or 0.0
    if min_miou is not None:
        gates.append(Gate("mIoU floor", miou >= min_miou, miou, min_miou, f"mIoU {miou:.4f} vs floor {min_miou:.4f}"))
    per_class = {c["class"]: c["iou"] for c in report["per_class"]}
    for name, floor in (floors or {}).items():
        iou = per_class.get(name)
        ok = iou is not None and iou >= floor
        shown = "absent (no pixels, none predicted)" if iou is None else f"{iou:.4f}"
        gates.append(Gate(f"{name} IoU floor", ok, iou, floor, f"{name} IoU {shown} vs floor {floor:.4f}"))
    if baseline is not None:
        old = baseline["miou"] or 0.0
        gates.append(
            Gate(
                "mIoU vs baseline",
                miou >= old - max_drop,
                miou,
                old - max_drop,
                f"mIoU {miou:.4f} vs baseline {old:.4f} ({miou - old:+.4f}; at most -{max_drop:.4f} allowed)",
            )
        )
        if max_class_drop is not None:
            # A class with no baseline IoU had no pixels in the baseline's data and none
            # predicted: there is nothing to be no worse than. On the same data (load_baseline
            # checks) it still has no true pixels, so it can only gain false positives, which
            # the other classes' IoUs and the mIoU gate already count. Failing would keep a
            # split that lacks a class red forever; passing in silence would hide that the
            # class is not gated. So it is one SKIP line naming the classes.
            absent = [c for c in baseline["per_class"] if c.get("iou") is None]
            if absent:
                names = ", ".join(
                    c["class"] + ("" if per_class.get(c["class"]) is None else f" (now {per_class[c['class']]:.4f})")
                    for c in absent
                )
                gates.append(
                    Gate(
                        "classes without a baseline IoU",
                        True,
                        None,
                        max_class_drop,
                        f"{names}: no IoU in the baseline (no pixels there, none predicted), so not compared",
                        skipped=True,
                    )
                )
            for c in baseline["per_class"]:
                was, now = c.get("iou"), per_class.get(c["class"])
                if was is None:
                    continue
                ok = now is not None and now >= was - max_class_drop
                delta = f"{now - was:+.4f}" if now is not None else "absent now"
                gates.append(
                    Gate(
                        f"{c['class']} IoU vs baseline",
                        ok,
                        now,
                        was - max_class_drop,
                        f"{c['class']} IoU {now if now is None else f'{now:.4f}'} vs baseline {was:.4f} ({delta}; "
                        f"at most -{max_class_drop:.4f} allowed)",
                    )
                )
    return gates


def _md(text: Any) -> str:
    """`text` safe inside a Markdown table cell or on one Markdown line: a `|` in a class
    name would split its cell, a newline end its row, `<` start HTML."""
    text = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
    return " ".join(text.splitlines())


def markdown(report: dict[str, Any], gates: list[Gate], baseline: dict[str, Any] | None) -> str:
    """The job summary: metrics, the per-class table with deltas, the gates."""
    line = lambda v: " ".join(str(v).splitlines())  # noqa: E731  (paths inside `code`, where escapes show as typed)
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    old = {c["class"]: c["iou"] for c in baseline["per_class"]} if baseline else {}
    verdict = "PASS" if all(g.passed for g in gates) else "FAIL"  # a SKIP gate has passed
    lines = [
        f"### segtool evaluate: {verdict if gates else 'no gates'}",
        "",
        f"Model `{line(report.get('model'))}` (sha256 `{str(report.get('model_sha256'))[:12]}`), "
        f"{report['images']} images from `{line(report['data'])}`"
        + (f", {len(report['failed'])} unreadable" if report["failed"] else ""),
        "",
        f"mIoU **{pct(report['miou'])}**"
        + (f" (baseline {pct(baseline['miou'])})" if baseline else "")
        + f", pixel accuracy {pct(report['pixel_accuracy'])}, mean accuracy {pct(report['mean_accuracy'])}",
        "",
        "| class | IoU | " + ("baseline | delta | " if baseline else "") + "pixels |",
        "|---|---:|" + ("---:|---:|" if baseline else "") + "---:|",
    ]
    for c in report["per_class"]:
        row = f"| {_md(c['class'])} | {pct(c['iou'])} | "
        if baseline:
            was = old.get(c["class"])
            delta = f"{100 * (c['iou'] - was):+.1f}" if c["iou"] is not None and was is not None else "-"
            row += f"{pct(was)} | {delta} | "
        lines.append(row + f"{c['pixels']} |")
    if gates:
        lines += ["", "| gate | result | detail |", "|---|---|---|"]
        mark = {"PASS": "pass", "FAIL": "**FAIL**", "SKIP": "not compared"}
        lines += [f"| {_md(g.name)} | {mark[g.verdict]} | {_md(g.detail)} |" for g in gates]
    return "\n".join(lines) + "\n"


def junit(report: dict[str, Any], gates: list[Gate]) -> str:
    """JUnit XML with one test case per gate (and one for unreadable data, if any)."""
    failures = sum(not g.passed for g in gates) + bool(report["failed"])
    skipped = sum(g.skipped for g in gates)
    suite = ET.Element(
        "testsuite", name="segtool evaluate", tests=str(len(gates) + 1), failures=str(failures), skipped=str(skipped)
    )
    for g in gates:
        case = ET.SubElement(suite, "testcase", classname="segtool.gates", name=g.name)
        if g.skipped:
            ET.SubElement(case, "skipped", message=g.detail).text = g.detail
        elif not g.passed:
            ET.SubElement(case, "failure", message=g.detail).text = g.detail
    case = ET.SubElement(suite, "testcase", classname="segtool.data", name="every pair readable")
    if report["failed"]:
        text = "\n".join(f"{f['image']}: {f['error']}" for f in report["failed"])
        ET.SubElement(case, "failure", message=f"{len(report['failed'])} pair(s) could not be read").text = text
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="unicode", xml_declaration=True) + "\n"


def exit_code(report: dict[str, Any], gates: list[Gate]) -> int:
    """2 when any pair could not be read (an input error; the gates still ran on the
    rest), else 1 when a gate failed, else 0."""
    if report["failed"]:
        return EXIT_USAGE
    return EXIT_GATE_FAILED if any(not g.passed for g in gates) else EXIT_OK


def write_summary(path: Path | None, text: str) -> list[Path]:
    """The Markdown to `path`, and appended to $GITHUB_STEP_SUMMARY when set; returns where."""
    from segtool.fsutil import atomic_write_text

    written = []
    if path is not None:
        atomic_write_text(path, text)
        written.append(Path(path))
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if step:
        try:
            with open(step, "a", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise SegtoolError(f"cannot append to $GITHUB_STEP_SUMMARY {step} ({e.strerror})") from None
        written.append(Path(step))
    return written
