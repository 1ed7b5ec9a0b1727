"""`segtool serve`: a model behind HTTP, with a page to try it.

    batcher.py  requests -> a bounded queue -> batches on the predictor's streams (503 when full)
    app.py      the ASGI app (Starlette): /predict, /model, /health and the page
    runner.py   uvicorn on a bound socket: the start-up line, a drain on SIGTERM or Ctrl-C
    page.html   the page, inline CSS and JS, no build step and nothing fetched from elsewhere

Every answer is made by the functions `segtool predict` writes its files with
(segtool.inference.outputs), from images read by segtool.data.io's reader: the same bytes
and the same one-line errors. The serve extra (`pip install 'segtool[serve]'`) brings
Starlette, uvicorn and python-multipart; importing this package imports none of them.
"""

from __future__ import annotations

import importlib.util

from segtool.errors import MissingExtra

# import name -> the distribution the serve extra installs
SERVE_DEPS = {"starlette": "starlette", "uvicorn": "uvicorn", "python_multipart": "python-multipart"}


def require_serve() -> None:
    """Raise MissingExtra, in one line naming the extra, unless Starlette, uvicorn and
    python-multipart are installed. Checked without importing them."""
    missing = [dist for name, dist in SERVE_DEPS.items() if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtra(
            f"segtool serve needs the serve extra ({', '.join(missing)} not installed): pip install 'segtool[serve]'"
        )
