"""`segtool serve` as a process: uvicorn on a socket bound here, one start-up line, and a
drain on SIGTERM or Ctrl-C.

The socket is bound before uvicorn starts so that a port in use is a one-line error
(exit 2) rather than uvicorn's log and exit 1, and so that `--port 0` can say which port
the system chose. On SIGTERM or SIGINT uvicorn stops accepting connections, lets every
request in flight get its answer (up to DRAIN_SECONDS), then the app's lifespan stops
the batcher once its queue is empty; `run` then returns and the command exits 0: stopping
is how a server ends, not a failure.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable

import uvicorn

from segtool.api import Model
from segtool.errors import SegtoolError
from segtool.serve.app import Settings, build_app

DRAIN_SECONDS = 30  # then the requests still running are cancelled (Kubernetes' default grace period)


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port (port 0: one the system picks)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        # proto IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
        # sockets that say they are TCP, and with it on, every answer on a kept-alive
        # connection waited 40 ms for the client's delayed ACK.
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        why = e.strerror or str(e)
        raise SegtoolError(
            f"cannot listen on {host}:{port} ({why}); stop what holds the port or choose another --port"
        ) from None
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, calling `on_start` once it listens."""

    def __init__(self, config: uvicorn.Config, on_start: Callable[[], None]):
        super().__init__(config)
        self.on_start = on_start

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self.on_start()


def serve(
    model: Model, host: str, port: int, settings: Settings, on_start: Callable[[str], None]
) -> tuple[int, signal.Signals | None]:
    """Serve `model` until SIGTERM or SIGINT, then drain. `on_start(url)` is called once the
    server listens. Returns the number of requests answered and the signal that stopped it."""
    app = build_app(model, settings)
    sock = listen(host, port)
    url = url_of(sock)
    config = uvicorn.Config(
        app,
        log_level="warning",  # uvicorn's start-up and shutdown chatter; errors still show
        access_log=False,
        timeout_graceful_shutdown=DRAIN_SECONDS,
        lifespan="on",
    )
    server = _Server(config, lambda: on_start(url))
    # uvicorn replaces the SIGTERM/SIGINT handlers while it serves and raises the signal
    # again once it has shut down, for the handler it found. Handlers that only note the
    # signal make that second delivery a no-op: the drain already happened.
    caught: list[int] = []
    before = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        sock.close()
    return app.state.batcher.counts.answered, (signal.Signals(caught[0]) if caught else None)
