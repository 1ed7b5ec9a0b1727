#!/usr/bin/env bash
# Everything a lent GPU call of scripts/maintainers/gpu_camvid.sh needs that a fresh checkout
# lacks, made here, before the device starts (its time is short): the JPEG copy of CamVid in
# .gpu/camvid (pack_camvid.py, quality 90, about 29 MiB) and, in .whl/, segtool's own wheel
# (built from this checkout as it is now: the scripts import the installed package, so
# rerun this after changing segtool/) and the wheels of the packages segtool needs that the
# device's image lacks (albumentations and its needs, and pydantic), for the device's
# Python 3.12 on x86_64. Both folders are ignored by git and travel with `carry`. Prints the
# device command at the end. Run from anywhere; paths are relative to the repository root.
#
#   bash scripts/maintainers/gpu_prepare.sh [CAMVID_FOLDER]     # default ../shared/datasets/camvid
set -euo pipefail
DATA=${1:-../shared/datasets/camvid}
cd "$(dirname "$0")/../.."  # the repository root: this file is scripts/maintainers/gpu_prepare.sh
PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}  # pack_camvid.py needs OpenCV
[ -f "$DATA/train.txt" ] || { echo "gpu_prepare: no train.txt in $DATA; pass the CamVid folder" >&2; exit 2; }
[ -f .gpu/camvid/train.txt ] || "$PY" scripts/maintainers/pack_camvid.py --data "$DATA" --out .gpu/camvid --quality 90
# The versions installed here (the ones the tests ran with), each with --no-deps, so every
# need is named.
names=(albumentations albucore pydantic pydantic_core annotated-types typing-inspection typing_extensions simsimd
       stringzilla typer)
mapfile -t wheels < <("$PY" -c 'import importlib.metadata as m, sys; [print(f"{n}=={m.version(n)}") for n in sys.argv[1:]]' \
    "${names[@]}" 2>/dev/null)
[ ${#wheels[@]} -eq ${#names[@]} ] || { echo "gpu_prepare: $PY lacks segtool's packages; install it first (README)" >&2; exit 2; }
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64; do platforms+=(--platform "$p"); done
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl "${wheels[@]}"
# segtool itself, from a clean copy of the package (an in-tree build/ could carry modules
# that have since moved); pure Python, so one wheel fits the device. The copy leaves out
# segtool/assets (the built-in models, 13 MB): the job does not use them, and carry holds
# 64 MiB in all.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -r pyproject.toml README.md segtool "$src"/
rm -rf "$src/segtool/assets"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
rm -f .whl/segtool-*.whl
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl "$src"
du -sh .gpu/camvid .whl
cat <<'MSG'
Ready. On the lent GPU (device tool `run`, carry [".gpu", ".whl"], timeout_s 595):
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1; SKIP_BENCH=1 DEADLINE=525 PYTHONUNBUFFERED=1 bash scripts/maintainers/gpu_camvid.sh .gpu/camvid $OUT 8m
then copy each returned <split>/<variant>/last_weights.pt into scripts/maintainers/gpu_resume/ and commit it.
MSG
