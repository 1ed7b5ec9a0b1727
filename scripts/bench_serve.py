"""Does `segtool serve` hold under load? Requests/s, latency percentiles, errors and the
server's memory for N concurrent clients on loopback, against one request at a time and
against `segtool predict` on a folder of the same images.

    python scripts/bench_serve.py --images ../shared/datasets/camvid/val --clients 16 --requests 2000

Every row does the same work: a class mask (palette PNG) per image, the default answer of
POST /predict, and `segtool predict --no-overlay` for the folder. The folder holds
--requests links to the images, cycled in the order the requests send them, so the folder
row predicts as many images as the clients ask for (its time includes start-up, as a
user's run would). Memory is the server process's RSS, sampled every 50 ms, at the start,
middle and end of the concurrent run (flat: no growth with the number of requests), and
its peak (VmHWM). CPU ms/img is the CPU time (all threads, user + system) per image: the
server's during the run, the folder process's whole (start-up included); on a machine
shared with other jobs it says what the rates cannot. Targets: no errors at 16 clients,
flat memory, and at least 80% of the folder's images/s. Needs segtool installed with the
serve extra (pip install -e ".[serve]").
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from segtool.inference.outputs import collect_inputs


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """A process's resident memory (VmRSS) or its peak (VmHWM), in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Server:
    def __init__(self, model: str, queue: int):
        cmd = [sys.executable, "-m", "segtool", "serve", model, "--port", "0", "--queue", str(queue)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("serving "):
            raise SystemExit(f"segtool serve did not start: {line!r}")
        self.line = line.strip()
        parts = urlsplit(line.split()[1].rstrip(":"))
        self.host, self.port = parts.hostname, parts.port

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def client(server: Server, bodies: list[bytes], take, results: list) -> None:
    """One client on one keep-alive connection: sends the bodies `take()` hands it."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    while (i := take()) is not None:
        started = time.perf_counter()
        try:
            conn.request("POST", "/predict", body=bodies[i % len(bodies)])
            r = conn.getresponse()
            r.read()
            ok = r.status == 200
        except OSError:
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        results.append((time.perf_counter() - started, ok))
    conn.close()


def load_run(server: Server, bodies: list[bytes], clients: int, requests: int) -> dict:
    """`requests` requests from `clients` threads; the server's RSS sampled meanwhile."""
    lock, counter, results, samples = threading.Lock(), [0], [], []

    def take():
        with lock:
            if counter[0] >= requests:
                return None
            counter[0] += 1
            return counter[0] - 1

    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append((len(results), rss_mb(server.proc.pid)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    cpu = cpu_seconds(server.proc.pid)
    threads = [threading.Thread(target=client, args=(server, bodies, take, results)) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(server.proc.pid) - cpu
    done.set()
    sampler.join()
    samples.append((len(results), rss_mb(server.proc.pid)))

    def rss_at(fraction: float) -> float:
        return min(samples, key=lambda s: abs(s[0] - fraction * requests))[1]

    ms = np.array([t for t, _ in results]) * 1000
    return {
        "rate": len(results) / seconds,
        "p50": np.percentile(ms, 50),
        "p95": np.percentile(ms, 95),
        "p99": np.percentile(ms, 99),
        "errors": sum(not ok for _, ok in results),
        "cpu_ms": 1000 * cpu / len(results),
        "rss": (rss_at(0.05), rss_at(0.5), rss_at(1.0)),
    }


def folder_predict(model: str, files: list[Path], requests: int) -> tuple[float, float, float]:
    """(images/s, CPU ms per image, peak RSS MB) of `segtool predict --no-overlay` on a folder holding
    `requests` links to the files, cycled as the requests send them."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(requests):
            src = files[i % len(files)].resolve()
            (folder / f"{i:06d}{src.suffix}").symlink_to(src)
        cmd = [sys.executable, "-m", "segtool", "predict", str(folder), "--model", model]
        cmd += ["--out", str(Path(tmp) / "out"), "--no-overlay", "-q"]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (ru_maxrss, KB on Linux)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"segtool predict exited {proc.returncode}")
    return requests / seconds, 1000 * (usage.ru_utime + usage.ru_stime) / requests, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default="docs/examples", help="a folder, image file or glob pattern")
    ap.add_argument("--model", default="camvid", help="as segtool serve takes it (default: camvid)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--sequential", type=int, default=200, help="requests of the one-at-a-time loop")
    ap.add_argument("--queue", type=int, default=32, help="segtool serve --queue")
    args = ap.parse_args()

    files, missing = collect_inputs([args.images])
    if missing or not files:
        raise SystemExit(f"--images {args.images}: {missing[0][1] if missing else 'no images'}")
    bodies = [f.read_bytes() for f in files]
    print(
        f"{len(files)} images from {args.images} ({sum(map(len, bodies)) / len(bodies) / 1024:.0f} KB each on "
        f"average), model {args.model}, {os.cpu_count()} CPU cores; every row: one mask PNG per image"
    )

    # The folder runs before and after the server's, so a change in the machine's load
    # during the benchmark shows as two different folder rows rather than a skewed ratio.
    before = folder_predict(args.model, files, args.requests)
    server = Server(args.model, args.queue)
    print(server.line)
    try:
        load_run(server, bodies, 2, 20)  # warm-up: ONNX Runtime's first runs, the allocator's pools
        one = load_run(server, bodies, 1, args.sequential)
        one["peak"] = rss_mb(server.proc.pid, "VmHWM")
        many = load_run(server, bodies, args.clients, args.requests)
        many["peak"] = peak = rss_mb(server.proc.pid, "VmHWM")  # the most the server ever held
    finally:
        server.stop()
    after = folder_predict(args.model, files, args.requests)
    folder_rate = (before[0] + after[0]) / 2
    folder_cpu = (before[1] + after[1]) / 2

    print(
        f"{'':44} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'CPU ms/img':>10} "
        f"{'peak RSS MB':>11}"
    )
    for when, (rate, cpu, rss) in (("before", before), ("after", after)):
        print(f"{f'predict on a folder of {args.requests}, {when}':44} {rate:7.1f} {'':30} {cpu:10.1f} {rss:11.0f}")
    rows = (
        (f"serve, 1 client ({args.sequential} requests)", one),
        (f"serve, {args.clients} clients ({args.requests} requests)", many),
    )
    for name, r in rows:
        print(
            f"{name:44} {r['rate']:7.1f} {r['p50']:7.1f} {r['p95']:7.1f} {r['p99']:7.1f} {r['errors']:6d} "
            f"{r['cpu_ms']:10.1f} {r['peak']:11.0f}"
        )
    start, middle, end = many["rss"]
    print(
        f"server RSS over the {args.clients}-client run: {start:.0f} MB at 5% of the requests, {middle:.0f} MB "
        f"at 50%, {end:.0f} MB at the end; peak {peak:.0f} MB"
    )
    print(
        f"{args.clients} clients: {100 * many['rate'] / folder_rate:.0f}% of folder predict's images/s "
        f"(the mean of its two runs), {100 * folder_cpu / many['cpu_ms']:.0f}% of its CPU efficiency "
        f"(its CPU time per image over the server's), {many['rate'] / one['rate']:.2f}x one at a time, "
        f"{many['errors']} errors"
    )


if __name__ == "__main__":
    main()
