#!/usr/bin/env python
"""Copy CamVid into a folder small enough to travel to a lent GPU machine (64 MiB in all).

The PNG frames (about 130 MB) are re-encoded as JPEG, quality 95 with full-resolution
colour (4:4:4); masks are copied unchanged; train.txt and val.txt are rewritten for the
new names. The shipped default model scores 66.4 on val from such a copy against 66.7 from
the PNGs, so numbers from the copy compare with each other, not exactly with PNG runs.

    python scripts/maintainers/pack_camvid.py --data ../shared/datasets/camvid --out .gpu/camvid
    # then, on the device: python scripts/maintainers/sweep_recipe.py --data .gpu/camvid ...  (carry .gpu)

A maintainers' helper for the lent-GPU runs (scripts/maintainers/README.md); gpu_prepare.sh
runs it with --quality 90.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="CamVid folder (train.txt, val.txt and their images)")
    ap.add_argument("--out", required=True, help="folder for the copy")
    ap.add_argument("--quality", type=int, default=95)
    args = ap.parse_args()
    src, out = Path(args.data), Path(args.out)
    params = [
        cv2.IMWRITE_JPEG_QUALITY,
        args.quality,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    ]
    for listing in ("train.txt", "val.txt"):
        lines = []
        for line in (src / listing).read_text().split("\n"):
            if not line.strip():
                continue
            image, mask = line.split()
            jpg = str(Path(image).with_suffix(".jpg"))
            (out / jpg).parent.mkdir(parents=True, exist_ok=True)
            (out / mask).parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(out / jpg), cv2.imread(str(src / image)), params):
                raise SystemExit(f"could not write {out / jpg}")
            shutil.copyfile(src / mask, out / mask)
            lines.append(f"{jpg} {mask}")
        (out / listing).write_text("\n".join(lines) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
