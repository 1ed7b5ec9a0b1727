"""`segtool serve` as users run it: a real process on a loopback port, called over HTTP.

One server (the built-in model, a 1 MB body cap, a 1-megapixel pixel cap) answers most
tests; a second with a queue of one is kept busy by slow requests (an 1800x1800 image
takes about half a second) to see 503s and dropped requests; SIGTERM gets a server of its
own. The page is driven by a real headless Chromium (the system's, as .ci/run installs
it), and its screenshot is kept in $SEGTOOL_ARTIFACTS (default tests/artifacts/).
"""

import base64
import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
from PIL import Image

import segtool
from conftest import run
from segtool.inference.outputs import JPEG_SOURCE

ROOT = Path(__file__).resolve().parents[1]
STREET = ROOT / "docs" / "examples" / "u_street.jpg"


# --- helpers ----------------------------------------------------------------------------


class Server:
    """`python -m segtool serve ... --port 0`, its URL read from the start-up line."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None):
        self.log = tmp / "serve.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "segtool", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=self.log.open("w"),
            text=True,
            env={**os.environ, **(env or {})},
        )
        killer = threading.Timer(120, self.proc.kill)  # a server that never starts fails the test, not CI
        killer.start()
        self.started = self.proc.stdout.readline()
        killer.cancel()
        assert self.started.startswith("serving http://"), self.started + self.log.read_text()[-3000:]
        self.url = self.started.split()[1].rstrip(":")
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname, parts.port
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.get("/health")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()[-3000:]
            time.sleep(0.05)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            chunked = (headers or {}).get("Transfer-Encoding") == "chunked"
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, body: bytes, query: str = "", headers: dict | None = None):
        return self.request("POST", "/predict" + query, body, headers)

    def health(self) -> dict:
        return json.loads(self.get("/health")[2])

    def wait_for(self, test, what: str, seconds: float = 30) -> dict:
        deadline = time.monotonic() + seconds
        while not test(h := self.health()):
            assert time.monotonic() < deadline, f"waited {seconds}s for {what}; /health says {h}"
            time.sleep(0.01)
        return h

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc.stdout.close()
        return code, self.log.read_text()


def multipart(data: bytes, filename: str = "street.jpg", field: str = "image") -> tuple[bytes, dict]:
    boundary = "segtool-test-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def without_png_text(data: bytes) -> bytes:
    """A PNG less its text chunks (where `segtool predict` records the input file)."""
    out, at = [data[:8]], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        end = at + 12 + length
        if data[at + 4 : at + 8] not in (b"tEXt", b"iTXt", b"zTXt"):
            out.append(data[at:end])
        at = end
    return b"".join(out)


def without_jpeg_source(data: bytes) -> bytes:
    """A JPEG less the comment segment in which `segtool predict` records the input file."""
    at = data.index(JPEG_SOURCE) - 4
    assert data[at : at + 2] == b"\xff\xfe"
    (length,) = struct.unpack(">H", data[at + 2 : at + 4])
    return data[:at] + data[at + 2 + length :]


def gradient_png(size: int) -> bytes:
    """A smooth size x size PNG: small to send, slow to predict when large."""
    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1).astype(np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


# --- the shared server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("serve"), "camvid", "--max-body-mb", "1", env={"SEGTOOL_MAX_PIXELS": "1e6"})
    yield s
    code, log = s.stop()
    assert code == 0, log[-3000:]


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """What `segtool predict --confidence` writes for the street photo."""
    out = tmp_path_factory.mktemp("predicted")
    result = run("predict", STREET, "--confidence", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    return {kind: (out / f"u_street_{kind}").read_bytes() for kind in ("mask.png", "overlay.jpg", "confidence.png")}


def test_the_start_up_line_names_the_url_model_and_backend(server):
    assert server.started.startswith(f"serving {server.url}: model camvid (built-in), backend onnxruntime")


def test_mask_overlay_and_confidence_are_the_bytes_predict_writes(server, predicted):
    street = STREET.read_bytes()
    status, headers, mask = server.post(street, headers={"Content-Type": "image/jpeg"})
    assert status == 200 and headers["content-type"] == "image/png"
    assert mask == without_png_text(predicted["mask.png"])
    assert "total;dur=" in headers["server-timing"]
    status, headers, overlay = server.post(street, "?overlay=1")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert overlay == without_jpeg_source(predicted["overlay.jpg"])
    status, _, conf = server.post(street, "?confidence=1")
    assert status == 200 and conf == without_png_text(predicted["confidence.png"])
    body, form = multipart(street)
    assert server.post(body, headers=form)[2] == mask  # a multipart upload: the same answer
    status, _, bare = server.post(street, "?overlay=1&legend=0")
    assert status == 200 and bare != overlay  # --no-legend's overlay


def test_json_has_the_shares_the_size_and_the_images_in_base64(server, predicted):
    status, headers, raw = server.post(STREET.read_bytes(), "?format=json&overlay=1&confidence=1")
    assert status == 200 and headers["content-type"] == "application/json"
    answer = json.loads(raw)
    assert (answer["width"], answer["height"]) == (480, 360)
    api = segtool.load("camvid").predict(STREET)
    assert answer["shares"] == pytest.approx(api.shares(), abs=1e-12)
    assert list(answer["shares"]) == [c.name for c in api.classes]
    assert base64.b64decode(answer["mask"]) == without_png_text(predicted["mask.png"])
    assert base64.b64decode(answer["overlay"]) == without_jpeg_source(predicted["overlay.jpg"])
    assert base64.b64decode(answer["confidence"]) == without_png_text(predicted["confidence.png"])
    assert answer["time_ms"] > 0
    plain = json.loads(server.post(STREET.read_bytes(), "?format=json")[2])
    assert "overlay" not in plain and "confidence" not in plain and plain["mask"] == answer["mask"]


def test_model_and_health(server):
    status, _, raw = server.get("/model")
    info = json.loads(raw)
    assert status == 200 and info["backend"] == "onnxruntime" and info["model"] == "camvid (built-in)"
    classes = segtool.load("camvid").classes
    assert [(c["name"], tuple(c["color"])) for c in info["classes"]] == [(c.name, c.color) for c in classes]
    assert info["input"]["max_body_bytes"] == 2**20 and info["input"]["max_pixels"] == 1_000_000
    assert info["serving"] == {"streams": os.cpu_count(), "batch_size": 1, "queue": 32}
    health = server.health()
    assert health["status"] == "ok" and health["queued"] == 0


def test_a_body_over_the_cap_is_413_before_it_is_read(server):
    big = b"\0" * (2**20 + 1)
    status, _, raw = server.post(big)
    assert status == 413 and "larger than the limit of 1 MB" in json.loads(raw)["error"]
    # without a Content-Length (chunked), refused as the bytes pass the cap
    status, _, raw = server.post(iter([big[: 2**19], big[2**19 :]]), headers={"Transfer-Encoding": "chunked"})
    assert status == 413 and "--max-body-mb" in json.loads(raw)["error"]


def test_an_image_over_the_pixel_cap_is_413_in_predicts_words(server):
    status, _, raw = server.post(gradient_png(1001))
    error = json.loads(raw)["error"]
    assert status == 413
    assert error.startswith("image upload declares 1001x1001 = 1.0 megapixels, above the limit of 1.0")
    body, form = multipart(gradient_png(1001), filename="../../big.png")
    assert json.loads(server.post(body, headers=form)[2])["error"].startswith("image big.png declares 1001x1001")


@pytest.mark.parametrize(
    "body, query, status, message",
    [
        (b"GIF89a not really", "", 415, "image upload cannot be decoded (empty, truncated or not an image)"),
        (b"hello", "", 415, "image upload cannot be decoded (empty, truncated or not an image)"),
        (STREET.read_bytes()[:2000], "", 415, "image upload cannot be decoded"),
        (b"", "", 400, "the request holds no image"),
        (STREET.read_bytes(), "?fromat=json", 400, "unknown query parameter 'fromat'"),
        (STREET.read_bytes(), "?format=xml", 400, "format=xml: use format=image"),
        (STREET.read_bytes(), "?overlay=maybe", 400, "overlay=maybe: use overlay=1 or overlay=0"),
        (STREET.read_bytes(), "?overlay=1&confidence=1", 400, "are two images"),
    ],
)
def test_requests_that_are_not_images_get_the_one_line_reason(server, body, query, status, message):
    got, headers, raw = server.post(body, query)
    assert got == status and headers["content-type"] == "application/json"
    error = json.loads(raw)["error"]
    assert message in error and "\n" not in error


def test_forms_without_one_file_and_unknown_routes_are_json_errors(server):
    body, form = multipart(b"x", field="note")
    body = body.replace(b'; filename="street.jpg"', b"")  # a text field, no file
    status, _, raw = server.post(body, headers=form)
    assert status == 400 and "the form holds 0 files" in json.loads(raw)["error"]
    status, _, raw = server.get("/nope")
    assert status == 404 and json.loads(raw) == {"error": "GET /nope: Not Found"}
    status, _, raw = server.get("/predict")
    assert status == 405 and "Method Not Allowed" in json.loads(raw)["error"]


def test_concurrent_requests_all_get_their_own_answer(server, predicted):
    images = {n: gradient_png(n) for n in (64, 100, 150)} | {0: STREET.read_bytes()}
    expected = {n: server.post(img)[2] for n, img in images.items()}
    answers: list = []

    def client(k: int) -> None:
        for i in range(6):
            n = list(images)[(k + i) % len(images)]
            status, _, body = server.post(images[n])
            answers.append((n, status, body))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 48
    assert all(status == 200 and body == expected[n] for n, status, body in answers)


# --- a busy server: 503s and clients that leave -----------------------------------------


@pytest.fixture(scope="module")
def busy(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("busy"), "camvid", "--queue", "1")
    yield s
    s.stop()


SLOW = gradient_png(1800)  # about half a second of the model on one core


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    return t, out


def occupy(busy: Server, queued: int) -> list:
    """Slow requests on every stream, and `queued` more waiting in the queue."""
    streams, jobs = os.cpu_count(), []
    for k in range(1, streams + queued + 1):
        # one at a time: a request counts as queued from its arrival, while its body is read
        jobs.append(in_thread(busy.post, SLOW))
        busy.wait_for(
            lambda h, k=k: (h["running"], h["queued"]) == (min(k, streams), max(0, k - streams)),
            f"slow request {k} to reach the model or the queue",
        )
    return jobs


def test_a_full_queue_answers_503_with_retry_after(busy):
    jobs = occupy(busy, queued=1)
    status, headers, raw = busy.post(STREET.read_bytes())
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert "the server is busy: 1 requests are queued (the limit is 1)" in json.loads(raw)["error"]
    for t, out in jobs:
        t.join()
        assert out[0][0] == 200
    assert busy.post(STREET.read_bytes())[0] == 200  # room again
    assert busy.health()["rejected"] >= 1


def test_a_client_that_leaves_costs_nothing(busy):
    before = busy.health()
    jobs = occupy(busy, queued=0)
    # a request that waits in the queue, and whose client leaves before a stream is free
    sock = socket.create_connection((busy.host, busy.port))
    sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(SLOW)}\r\n\r\n".encode() + SLOW)
    busy.wait_for(lambda h: h["queued"] == 1, "the request to queue")
    sock.close()
    # and one that leaves halfway through its upload
    half = socket.create_connection((busy.host, busy.port))
    half.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(SLOW)}\r\n\r\n".encode() + SLOW[:1000])
    half.close()
    for t, out in jobs:
        t.join()
        assert out[0][0] == 200
    after = busy.wait_for(lambda h: h["queued"] == 0 and h["running"] == 0, "the server to be idle")
    assert after["abandoned"] == before["abandoned"] + 1
    assert after["answered"] == before["answered"] + len(jobs)  # the model never ran for the one that left
    assert busy.post(STREET.read_bytes())[0] == 200


# --- SIGTERM ----------------------------------------------------------------------------


def test_sigterm_answers_the_requests_in_flight_then_exits_0(tmp_path):
    s = Server(tmp_path, "camvid")
    expected = segtool.load("camvid").predict(
        cv2.cvtColor(cv2.imdecode(np.frombuffer(SLOW, np.uint8), 1), cv2.COLOR_BGR2RGB)
    )
    t, out = in_thread(s.post, SLOW)
    s.wait_for(lambda h: h["running"] == 1, "the request to reach the model")
    s.proc.send_signal(signal.SIGTERM)
    t.join()
    status, _, body = out[0]
    assert status == 200
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), expected.mask)  # the palette's indices
    code, log = s.stop()
    assert code == 0 and "stopped on SIGTERM after answering 1 request" in log, log
    with pytest.raises(OSError):
        s.get("/health")


def test_a_port_in_use_and_a_missing_extra_are_one_line_errors(monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    result = run("serve", "camvid", "--port", port)
    assert result.exit_code == 2
    assert f"error: cannot listen on 127.0.0.1:{port} (Address already in use); stop what holds the port" in (
        result.output
    )
    taken.close()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    result = run("serve", "camvid")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: segtool serve needs the serve extra (uvicorn not installed): pip install 'segtool[serve]'"
    )


# --- the page, in a real browser --------------------------------------------------------


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def test_the_page_shows_the_overlay_and_the_legend(server):
    binary = chromium()
    if binary is None:
        pytest.skip("no Chromium on PATH (.ci/run installs Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    artifacts = Path(os.environ.get("SEGTOOL_ARTIFACTS", ROOT / "tests" / "artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    names = [c.name for c in segtool.load("camvid").classes]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            outside = []  # every request must go to this server: no CDN, no external asset
            page.on(
                "request",
                lambda r: outside.append(r.url) if not r.url.startswith((server.url, "blob:", "data:")) else None,
            )
            page.goto(server.url + "/")
            page.set_input_files("input[type=file]", str(STREET))
            page.wait_for_function("document.getElementById('overlay').naturalWidth > 0", timeout=30_000)
            assert page.eval_on_selector("#overlay", "img => img.naturalWidth") == 480
            legend = page.inner_text("#legend")
            assert all(name in legend for name in names), legend
            assert "%" in legend and "ms" in page.inner_text("#time")
            page.screenshot(path=str(artifacts / "serve_page.png"), full_page=True)
            assert not outside, outside
        finally:
            browser.close()
    assert (artifacts / "serve_page.png").stat().st_size > 10_000


def test_the_listening_socket_is_tcp_so_answers_are_not_held_back():
    # asyncio sets TCP_NODELAY only on sockets whose proto says TCP; with proto 0, every
    # answer on a kept-alive connection waited 40 ms for the client's delayed ACK.
    from segtool.serve.runner import listen

    sock = listen("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()
