"""The ASGI app of `segtool serve`, built from a loaded model (segtool.load).

    POST /predict   an image (raw body, or a multipart file) -> the class mask as PNG;
                    ?overlay=1 the overlay (JPEG), ?confidence=1 the confidence map (PNG),
                    ?format=json the shares, size and the asked images in base64
    GET  /model     classes, colours, how images are read, backend, serving settings
    GET  /health    {"status": "ok", ...counts} for probes
    GET  /          the page (page.html) to try the model in a browser

Errors are JSON `{"error": "<one line>"}`: 400 a malformed request, 413 a body over the cap
or an image over the pixel limit, 415 a body that is not an image segtool reads, 503 (with
Retry-After) a full queue. The bytes of every image are those `segtool predict` writes
for the same input and model, less the record of the input file (a PNG text chunk, a
JPEG comment) that an upload has no path for.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sys
import time
import traceback
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePath

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from segtool.api import Model, Prediction
from segtool.data.io import IMAGE_EXTS, decode_image, max_pixels
from segtool.errors import DataError, ImageTooLarge, SegtoolError
from segtool.fsutil import printable
from segtool.inference.outputs import colour_lut, confidence_png, mask_png, overlay_jpeg, png_bytes
from segtool.serve.batcher import Batcher, Busy

UPLOAD_NAME = "upload"  # how errors name a raw body (a multipart file goes by its file name)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    """How the server takes requests: body cap, queue, batches (streams: the predictor's)."""

    max_body_bytes: int = 20 * 1024 * 1024
    queue: int = 32
    batch_size: int | None = None  # None: the predictor's own (1 per stream for ONNX Runtime)


@dataclass(frozen=True)
class Ask:
    """What one request asks for."""

    json: bool = False
    overlay: bool = False
    confidence: bool = False
    legend: bool = True


@dataclass(frozen=True)
class Job:
    body: bytes
    name: str  # for error messages: the upload's file name, or UPLOAD_NAME
    ask: Ask


class HTTPError(Exception):
    """A request answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": printable(message)}, status_code=status, headers=headers)


def parse_ask(query) -> Ask:
    """?format=image|json, ?overlay, ?confidence, ?legend (1/0, true/false); anything else
    is a 400 naming what exists, so a typo is not silently the default."""
    known = ("format", "overlay", "confidence", "legend")
    for key in query.keys():
        if key not in known:
            raise HTTPError(400, f"unknown query parameter {key!r}; /predict takes {', '.join(known)}")

    def flag(key: str, default: bool) -> bool:
        value = query.get(key)
        if value is None:
            return default
        if value.lower() in _TRUE or value == "":
            return True
        if value.lower() in _FALSE:
            return False
        raise HTTPError(400, f"{key}={value}: use {key}=1 or {key}=0")

    fmt = query.get("format", "image").lower()
    if fmt not in ("image", "json"):
        raise HTTPError(400, f"format={fmt}: use format=image (the default) or format=json")
    ask = Ask(fmt == "json", flag("overlay", False), flag("confidence", False), flag("legend", True))
    if not ask.json and ask.overlay and ask.confidence:
        raise HTTPError(400, "overlay=1 and confidence=1 are two images: ask for one, or for both with format=json")
    return ask


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `cap` bytes (a declared
    Content-Length over the cap is refused before reading anything)."""
    too_big = HTTPError(
        413,
        f"the request body is larger than the limit of {cap / 2**20:g} MB; "
        "send a smaller image, or start the server with a larger --max-body-mb",
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def image_of(request: Request, body: bytes) -> tuple[bytes, str]:
    """The image's bytes and its name for messages: the one file of a multipart form, or
    the raw body."""
    # Any other Content-Type is taken as the image itself, known by its bytes (curl
    # --data-binary says application/x-www-form-urlencoded unless told otherwise).
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):

        async def once() -> AsyncIterator[bytes]:
            yield body

        try:
            form = await MultiPartParser(Headers(raw=[(b"content-type", ctype.encode("latin-1"))]), once()).parse()
        except MultiPartException as e:
            raise HTTPError(400, f"the multipart form cannot be read ({e.message})") from None
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        try:
            if len(files) != 1:
                raise HTTPError(
                    400,
                    f"the form holds {len(files)} files; send one image per request as a file field "
                    "(curl -F image=@street.jpg)",
                )
            data = await files[0].read()
            name = PurePath(files[0].filename or UPLOAD_NAME).name[-100:] or UPLOAD_NAME
        finally:
            await form.close()
        body = data
    else:
        name = UPLOAD_NAME
    if not body:
        raise HTTPError(
            400, "the request holds no image; send the image as the body or as a multipart file (-F image=@x.jpg)"
        )
    return body, name


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Answerer:
    """Decodes, predicts and encodes a batch of jobs in a worker thread, with the
    functions `segtool predict` uses; one result (or SegtoolError) per job."""

    def __init__(self, model: Model):
        self.model = model
        self.predictor = model.predictor
        self.classes = model.classes
        self.lut = colour_lut(np.asarray(self.predictor.colours, dtype=np.uint8))

    def __call__(self, jobs: Sequence[Job]) -> list[Response | dict | Exception]:
        out: list[Response | dict | Exception | None] = [None] * len(jobs)
        good: list[tuple[int, np.ndarray]] = []
        for i, job in enumerate(jobs):
            try:
                good.append((i, decode_image(np.frombuffer(job.body, np.uint8), job.name, on_disk=False)))
            except SegtoolError as e:
                out[i] = e
        if good:
            confidence = any(jobs[i].ask.confidence for i, _ in good)
            maps = self.predictor.predict_maps([img for _, img in good], confidence)
            for (i, image), m in zip(good, maps):
                try:
                    out[i] = self.encode(jobs[i].ask, Prediction(m.classes, m.confidence, image, self.classes))
                except SegtoolError as e:
                    out[i] = e
        return out  # type: ignore[return-value]

    def encode(self, ask: Ask, p: Prediction) -> Response | dict:
        """The image asked for as a response, or the JSON answer's fields as a dict."""
        names = list(self.predictor.names) if ask.legend else None
        if not ask.json:
            if ask.overlay:
                return Response(overlay_jpeg(p.image, p.mask, self.lut, names), media_type="image/jpeg")
            if ask.confidence:
                return Response(png_bytes(confidence_png(p.confidence)), media_type="image/png")
            return Response(mask_png(p.mask, self.lut), media_type="image/png")
        body = {
            "width": int(p.mask.shape[1]),
            "height": int(p.mask.shape[0]),
            "shares": p.shares(),
            "mask": b64(mask_png(p.mask, self.lut)),
        }
        if ask.overlay:
            body["overlay"] = b64(overlay_jpeg(p.image, p.mask, self.lut, names))
        if ask.confidence:
            body["confidence"] = b64(png_bytes(confidence_png(p.confidence)))
        return body


async def _until_disconnect(request: Request) -> None:
    """Returns when the client goes away (uvicorn answers `receive` with http.disconnect
    once the body is read and the connection closes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def status_of(e: Exception) -> int:
    if isinstance(e, ImageTooLarge):
        return 413
    if isinstance(e, DataError):
        return 415  # not an image segtool reads (empty, truncated, another format, float out of range)
    if isinstance(e, SegtoolError):
        return 400
    return 500


def model_info(model: Model, settings: Settings, batch_size: int) -> dict:
    p = model.predictor
    spec = p.spec
    return {
        "model": p.model,
        "backend": p.backend,
        "device": p.device,
        "classes": [{"id": i, "name": c.name, "color": list(c.color)} for i, c in enumerate(model.classes)],
        "input": {
            "formats": sorted(e.lstrip(".") for e in IMAGE_EXTS),
            "max_body_bytes": settings.max_body_bytes,
            "max_pixels": max_pixels(),
            "color": "8-bit RGB; grey, alpha, 16-bit and float [0, 1] images are converted; EXIF orientation applied",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "resize_to": list(spec.eval_size) if spec.eval_size else None,
            "tile_above_pixels": None if spec.eval_size else spec.tiling.above,
            "tile_size": list(spec.tiling.size),
            "tile_overlap": spec.tiling.overlap,
            "output": "masks, overlays and confidence maps at the image's own size",
        },
        "serving": {"streams": p.streams, "batch_size": batch_size, "queue": settings.queue},
    }


def build_app(model: Model, settings: Settings = Settings()) -> Starlette:
    """The app serving `model` (opened now: a bad model fails before the server listens)."""
    predictor = model.predictor
    batch_size = settings.batch_size or predictor.batch_size
    batcher: Batcher[Job, Response | dict] = Batcher(
        Answerer(model), streams=predictor.streams, batch_size=batch_size, queue=settings.queue
    )
    info = json.dumps(model_info(model, settings, batch_size)).encode()
    page = resources.files("segtool.serve").joinpath("page.html").read_bytes()

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            ask = parse_ask(request.query_params)
            batcher.reserve()
        except HTTPError as e:
            return error(e.status, str(e), e.headers)
        except Busy as e:
            return error(503, str(e), {"Retry-After": str(e.retry_after)})
        submitted = False
        try:
            body, name = await image_of(request, await read_body(request, settings.max_body_bytes))
            future = batcher.submit(Job(body, name, ask))
            submitted = True
            del body
            gone = asyncio.ensure_future(_until_disconnect(request))
            try:
                await asyncio.wait({future, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not future.done():  # the client left (or the drain timed out): drop the job if still queued
                    future.cancel()
            if future.cancelled():
                return Response(status_code=499)  # nobody reads it (nginx's "client closed request")
            answer = future.result()
        except HTTPError as e:
            return error(e.status, str(e), e.headers)
        except ClientDisconnect:
            return Response(status_code=499)
        except SegtoolError as e:
            return error(status_of(e), e.one_line())
        except Exception as e:  # a bug: one line to the client, the traceback to the server's log
            traceback.print_exc(file=sys.stderr)
            return error(500, f"internal error: {type(e).__name__}: {e}")
        finally:
            if not submitted:
                batcher.release()
        ms = 1000 * (time.perf_counter() - started)
        if isinstance(answer, dict):  # format=json: the time taken in the body too
            answer = JSONResponse({**answer, "time_ms": round(ms, 1)})
        answer.headers["Server-Timing"] = f"total;dur={ms:.1f}"
        return answer

    async def model_route(request: Request) -> Response:
        return Response(info, media_type="application/json")

    async def health(request: Request) -> Response:
        c = batcher.counts
        return JSONResponse(
            {
                "status": "ok",
                "queued": c.queued,
                "running": c.running,
                "answered": c.answered,
                "rejected": c.rejected,
                "abandoned": c.abandoned,
            }
        )

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", exc.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/predict", predict, methods=["POST"]),
            Route("/model", model_route, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    return app
