"""Between the HTTP requests and the model: a bounded queue, and one worker per predictor
stream that takes what is queued (up to a batch) whenever its stream is free.

A request is admitted (`reserve`) before its body is read, so a full queue answers 503 at
once instead of reading uploads it cannot serve, and memory is bounded by the queue size
times the body cap whatever the load. Under light load a request runs alone and at once;
under heavy load batches fill from the queue without any waiting timer. The work itself
(decoding, the model, encoding) runs in a thread per stream: ONNX Runtime, OpenCV and
zlib release the GIL, so the event loop keeps answering /health and accepting uploads.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Busy(Exception):
    """The queue is full (or the server is stopping): answer 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Counts:
    """What /health reports: requests waiting and running now, and since start-up."""

    queued: int = 0  # admitted, not yet taken by a stream (reading its body, or in the queue)
    running: int = 0  # in a batch on a stream
    answered: int = 0  # batches' items that came back (an image or an error)
    rejected: int = 0  # 503: the queue was full
    abandoned: int = 0  # the client left while queued: dropped before the model ran


class Batcher(Generic[T, R]):
    """`process(items) -> one result or exception per item`, run on `streams` threads, on
    at most `batch_size` items at a time, for at most `queue` admitted requests waiting."""

    def __init__(
        self,
        process: Callable[[Sequence[T]], Sequence[R | Exception]],
        *,
        streams: int,
        batch_size: int,
        queue: int,
    ):
        self.process = process
        self.streams, self.batch_size, self.queue = streams, batch_size, queue
        self.counts = Counts()
        self._item_seconds = 0.05  # running estimate of one item's time, for Retry-After
        self._pending: asyncio.Queue[tuple[T, asyncio.Future]] | None = None
        self._workers: list[asyncio.Task] = []
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = False

    async def start(self) -> None:
        self._pending = asyncio.Queue()
        self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="segtool-serve")
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.streams)]

    def retry_after(self) -> int:
        """Seconds until the queue has room again, estimated from recent items' times."""
        waiting = self.counts.queued + self.counts.running
        return max(1, math.ceil(waiting * self._item_seconds / self.streams))

    def reserve(self) -> None:
        """Admit one request, or raise Busy when `queue` requests are already waiting."""
        if self._stopping:
            raise Busy("the server is stopping; retry on another instance or after it restarts", 5)
        if self.counts.queued >= self.queue:
            self.counts.rejected += 1
            raise Busy(
                f"the server is busy: {self.counts.queued} requests are queued (the limit is {self.queue}); "
                "retry after the time Retry-After says",
                self.retry_after(),
            )
        self.counts.queued += 1

    def release(self) -> None:
        """Give back an admission whose request ended before `submit` (a bad upload, a
        client that left while sending it)."""
        self.counts.queued -= 1

    def submit(self, item: T) -> asyncio.Future:
        """Queue an admitted request's item; the future gets its result (or exception).
        Cancel the future to drop the item if no stream has taken it yet."""
        assert self._pending is not None, "Batcher.start() first"
        future = asyncio.get_running_loop().create_future()
        self._pending.put_nowait((item, future))
        return future

    async def _work(self) -> None:
        assert self._pending is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._pending.get()]
            while len(batch) < self.batch_size and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            self.counts.queued -= len(batch)
            live = [(item, future) for item, future in batch if not future.cancelled()]
            self.counts.abandoned += len(batch) - len(live)
            if not live:
                continue
            self.counts.running += len(live)
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._pool, self.process, [item for item, _ in live])
            except Exception as e:  # a bug in process, not an item's error: every item gets it
                results = [e] * len(live)
            finally:
                self.counts.running -= len(live)
            per_item = (time.perf_counter() - started) / len(live)
            self._item_seconds = 0.8 * self._item_seconds + 0.2 * per_item
            self.counts.answered += len(live)
            for (_, future), result in zip(live, results):
                if future.cancelled():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def stop(self) -> None:
        """Refuse new requests, finish every queued and running one, then stop the streams.
        uvicorn calls this (through the app's lifespan) after the connections in flight
        have had their answers, so normally nothing is left to wait for."""
        self._stopping = True
        while self.counts.queued or self.counts.running:
            await asyncio.sleep(0.01)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
