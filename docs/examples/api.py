"""segtool's Python API in a dozen lines: the built-in road-scene model on a photo.

    python docs/examples/api.py [OUT_FOLDER]

Runs on the light install (`pip install segtool`: ONNX Runtime, no torch). CI runs it.
"""

import sys
from pathlib import Path

import segtool

here = Path(__file__).resolve().parent
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("preds")

model = segtool.load("camvid")  # a built-in name, a .pt checkpoint or an .onnx file
print(model.describe())

result = model.predict(here / "u_street.jpg")  # a path, a PIL image or an HxWx3 uint8 array
print(f"mask {result.mask.shape}, mean confidence {result.confidence.mean():.2f}")
for name, share in sorted(result.shares().items(), key=lambda kv: -kv[1])[:4]:
    print(f"{name:10s} {100 * share:5.1f}%")
print("wrote", ", ".join(str(p) for p in result.save(out)))

# Many images stream: one batch at a time, in input order.
for pred in model.predict(sorted(here.glob("u_street*.jpg"))):
    shares = pred.shares()
    print(pred.source.name, "mostly", max(shares, key=shares.get))
