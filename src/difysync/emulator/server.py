"""Run the emulator for real: uvicorn on loopback in a background thread for tests, or in
the foreground for the `difysync emulator` command.

Tests need many short-lived servers on ephemeral ports that start and stop fast and can
run side by side; the CLI needs one long-lived, restartable one.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import socket
import sys
import threading
import time
from typing import Any, Iterable

import uvicorn

from .app import DEFAULT_EXTENSIONS, EmulatorApp, Options, RequestLog, RequestRecord
from .faults import Faults
from .store import Store


class ListenError(Exception):
    """The emulator cannot listen where it was asked to. ``busy``: another process holds
    the port (worth retrying later, or use another port); otherwise the address itself is
    wrong (an unknown host, a port below 1024 without the right)."""

    def __init__(self, message: str, *, busy: bool) -> None:
        super().__init__(message)
        self.busy = busy


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: any free port), bound before anything is
    served or printed, so a taken port is known at once and the banner can tell the port
    really used."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host!r}: {exc.strerror}", busy=False) from None
    try:
        listener = socket.create_server(address, family=family)  # SO_REUSEADDR: TIME_WAIT is no obstacle
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(f"port {port} on {host} is already in use", busy=True) from None
        raise ListenError(f"cannot listen on {host} port {port}: {exc.strerror or exc}",
                          busy=False) from None
    # Answers go out at once: without TCP_NODELAY (which accepted sockets inherit), Nagle's
    # algorithm held each answer's last segment for the client's delayed ACK: 43 ms per
    # request against 1.1 ms with it (a GET over loopback, measured), which halved the
    # import benchmark's throughput.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


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
    ``state_path`` keeps the state in a file (read now, written ``save_delay`` seconds after
    a change and at ``stop()``); ``log_requests`` logs one line per request (logger
    ``difysync.emulator.requests``). ``start()`` raises ListenError when the port is taken.
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
                 save_delay: float = 1.0,
                 log_requests: bool = False,
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
                           segment_api=segment_api, indexing_delay_per_segment=indexing_delay_per_segment,
                           save_delay=save_delay)
        self.faults = faults if faults is not None else Faults()
        self._log = RequestLog()
        self.app: EmulatorApp = EmulatorApp(self.store, self.faults, self.options, self._log,
                                            log_requests=log_requests)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle
    def _config(self, port: int) -> uvicorn.Config:
        return uvicorn.Config(self.app, host=self.host, port=port, log_level="warning",
                              access_log=False, log_config=None, lifespan="off",
                              timeout_graceful_shutdown=1)

    def start(self, timeout: float = 10.0) -> "EmulatorServer":
        """Serve in a daemon thread; returns once the socket accepts connections (raises
        ListenError at once when it cannot listen)."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        listener = bind_listener(self.host, self.port)
        self.port = listener.getsockname()[1]
        server = _QuickServer(self._config(self.port))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]},
                                  name="dify-emulator", daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                listener.close()
                raise RuntimeError("the emulator did not start")
            time.sleep(0.005)
        return self

    @property
    def serving(self) -> bool:
        """Whether the server thread is still up (False once it died or was stopped)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop serving (requests in progress are abandoned), join the thread, and write
        the state file if there is one (OSError if that fails)."""
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
            server.force_exit = True
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None
        self.store.save()

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


def serve(host: str = "127.0.0.1", port: int = 5001, api_key: str = "test-key", *,
          key_note: str = "API key as given", **options: Any) -> int:
    """Run an emulator in the foreground until SIGINT/SIGTERM; returns the exit code.

    ``key_note`` is what the banner says of the key (a key the operator chose is not
    printed); ``options`` are EmulatorServer's keyword options (legacy, indexing_delay,
    state_path, log_requests, ...)."""
    from .foreground import run

    return run(lambda: EmulatorServer(api_key, host=host, port=port, **options), key_note)


_DEFAULT_KEY = "test-key"  # a test value, printed in the banner; a chosen key is not


def main(argv: list[str] | None = None) -> None:
    """``python -m difysync.emulator``."""
    from .foreground import EXIT_CODES_HELP

    parser = argparse.ArgumentParser(prog="python -m difysync.emulator",
                                     description="Run a Dify Knowledge API emulator.",
                                     epilog=EXIT_CODES_HELP)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001,
                        help="0: any free port (the banner tells which)")
    parser.add_argument("--api-key", default=os.environ.get("DIFYSYNC_EMULATOR_API_KEY", _DEFAULT_KEY),
                        help=f"the key it accepts (default $DIFYSYNC_EMULATOR_API_KEY, else {_DEFAULT_KEY})")
    parser.add_argument("--legacy", action="store_true",
                        help="behave like an old (0.x) Dify: underscore paths only, duplicates, "
                             "no status filter, update batches unknown to indexing-status")
    parser.add_argument("--indexing-delay", type=float, default=0.0,
                        help="seconds a document takes from upload to completed")
    parser.add_argument("--state-file", "--state-path", dest="state_file", default=None,
                        help="JSON file to keep the state in across restarts (read at start, "
                             "written within a second of each change and at SIGINT/SIGTERM)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log one line per request on stderr")
    args = parser.parse_args(argv)
    from ..logs import setup_logging

    setup_logging("debug" if args.verbose else "info")
    note = f"API key {_DEFAULT_KEY}" if args.api_key == _DEFAULT_KEY else "API key as given"
    sys.exit(serve(host=args.host, port=args.port, api_key=args.api_key, key_note=note,
                   legacy=args.legacy, indexing_delay=args.indexing_delay,
                   state_path=args.state_file, log_requests=args.verbose))


__all__ = ["EmulatorServer", "ListenError", "bind_listener", "main", "serve"]
