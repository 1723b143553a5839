"""Run the emulator for real: uvicorn on loopback in a background thread for tests, or in
the foreground for the `difysync emulator` command.

Tests need many short-lived servers on ephemeral ports that start and stop fast and can
run side by side; the CLI needs one long-lived, restartable one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
from typing import Any, Iterable

import uvicorn

from .app import DEFAULT_EXTENSIONS, EmulatorApp, Options, RequestLog, RequestRecord
from .faults import Faults
from .store import Store


class _QuickServer(uvicorn.Server):
    """uvicorn, minus the graceful parts a test server does not need: notices a stop
    request within 10 ms and aborts open connections instead of waiting for them."""

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            await asyncio.sleep(0.01)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        for server in getattr(self, "servers", []):
            server.close()
        for connection in list(getattr(self.server_state, "connections", ())):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await asyncio.sleep(0)


class EmulatorServer:
    """A stateful Dify Knowledge API emulator served over HTTP.

    Use as a context manager (``with EmulatorServer() as emu:``) or call ``start()`` /
    ``stop()``. ``base_url`` ends in ``/v1``; ``store`` and ``faults`` can be changed from
    the test thread while requests are served. ``partial_update=False`` makes the
    metadata write ignore ``partial_update`` (every write replaces), as servers before 1.11;
    ``segment_api=False`` makes it a server without the segment routes, and
    ``indexing_delay_per_segment`` makes indexing take longer the more segments a document has.
    """

    def __init__(self, api_key: str = "test-key", *, legacy: bool = False,
                 indexing_delay: float = 0.0, max_file_size_mb: float = 15,
                 allowed_extensions: Iterable[str] | None = None,
                 bare_400_on_create: bool = False,
                 refuse_delete_while_indexing: bool | None = None,
                 status_filter: bool | None = None,
                 partial_update: bool = True,
                 segment_api: bool = True,
                 indexing_delay_per_segment: float = 0.0,
                 state_path: str | os.PathLike[str] | None = None,
                 faults: Faults | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        if refuse_delete_while_indexing is None:
            refuse_delete_while_indexing = legacy
        self.options = Options(
            api_key=api_key, legacy=legacy, max_file_size_mb=max_file_size_mb,
            allowed_extensions=tuple(e.lower().lstrip(".") for e in allowed_extensions)
            if allowed_extensions is not None else DEFAULT_EXTENSIONS,
            bare_400_on_create=bare_400_on_create,
            refuse_delete_while_indexing=refuse_delete_while_indexing, status_filter=status_filter,
            partial_update=partial_update)
        self.api_key = api_key
        self.host = host
        self.port = port
        self.store = Store(legacy=legacy, indexing_delay=indexing_delay, state_path=state_path,
                           segment_api=segment_api, indexing_delay_per_segment=indexing_delay_per_segment)
        self.faults = faults if faults is not None else Faults()
        self._log = RequestLog()
        self.app: EmulatorApp = EmulatorApp(self.store, self.faults, self.options, self._log)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    def _config(self, port: int) -> uvicorn.Config:
        return uvicorn.Config(self.app, host=self.host, port=port, log_level="warning",
                              access_log=False, log_config=None, lifespan="off",
                              timeout_graceful_shutdown=1)

    def start(self, timeout: float = 10.0) -> "EmulatorServer":
        """Serve in a daemon thread; returns once the socket accepts connections."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        server = _QuickServer(self._config(self.port))
        thread = threading.Thread(target=server.run, name="dify-emulator", daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the emulator did not start")
            time.sleep(0.005)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Stop serving (requests in progress are abandoned) and join the thread."""
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
            server.force_exit = True
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (Ctrl-C / SIGTERM)."""
        server = uvicorn.Server(self._config(self.port))
        self._server = server
        server.run()

    def __enter__(self) -> "EmulatorServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """The server root (admin routes live under ``/_admin``)."""
        return f"http://{self.host}:{self.port}"

    # -------------------------------------------------------------- request log
    @property
    def requests(self) -> list[RequestRecord]:
        """The /v1 requests seen so far (a snapshot; admin calls are not recorded)."""
        return self._log.snapshot()

    def count(self, method: str | None = None, path_contains: str | None = None,
              mutating: bool | None = None) -> int:
        return len(self._select(method, path_contains, mutating))

    def mutating_requests(self) -> list[RequestRecord]:
        return self._select(None, None, True)

    def reset_requests(self) -> None:
        self._log.clear()

    def _select(self, method: str | None, path_contains: str | None,
                mutating: bool | None) -> list[RequestRecord]:
        return [r for r in self._log.snapshot()
                if (method is None or r.method == method.upper())
                and (path_contains is None or path_contains in r.path)
                and (mutating is None or r.mutating == mutating)]


def serve(host: str = "127.0.0.1", port: int = 5001, api_key: str = "test-key",
          **options: Any) -> None:
    """Run an emulator in the foreground until interrupted (for `difysync emulator`).

    ``options`` are EmulatorServer's keyword options (legacy, indexing_delay,
    state_path, faults, ...).
    """
    EmulatorServer(api_key, host=host, port=port, **options).serve_forever()


def main(argv: list[str] | None = None) -> None:
    """``python -m difysync.emulator``."""
    parser = argparse.ArgumentParser(prog="python -m difysync.emulator",
                                     description="Run a Dify Knowledge API emulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--legacy", action="store_true",
                        help="behave like an old (0.x) Dify: underscore paths only, duplicates, "
                             "no status filter, update batches unknown to indexing-status")
    parser.add_argument("--indexing-delay", type=float, default=0.0,
                        help="seconds a document takes from upload to completed")
    parser.add_argument("--state-path", default=None,
                        help="JSON file to keep the state in across restarts")
    args = parser.parse_args(argv)
    print(f"Dify emulator on http://{args.host}:{args.port}/v1 (API key {args.api_key!r})",
          flush=True)
    serve(host=args.host, port=args.port, api_key=args.api_key, legacy=args.legacy,
          indexing_delay=args.indexing_delay, state_path=args.state_path)


__all__ = ["EmulatorServer", "main", "serve"]
