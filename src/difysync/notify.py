"""systemd's notify protocol (sd_notify) in a few lines: READY, STATUS, WATCHDOG, RELOADING
and STOPPING datagrams to $NOTIFY_SOCKET. Without that variable every call is a no-op,
so the daemon never needs to know whether systemd runs it."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self.address = address or None
        self._watchdog_usec = _int(environ.get("WATCHDOG_USEC"))
        watchdog_pid = _int(environ.get("WATCHDOG_PID"))
        if watchdog_pid is not None and watchdog_pid != os.getpid():
            self._watchdog_usec = None
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of what systemd allows), or None."""
        if not self.enabled or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 1_000_000 / 2

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.sendto("\n".join(lines).encode("utf-8"), self.address)
            return True
        except OSError as exc:  # systemd gone or socket not writable: never fatal
            log.debug("sd_notify failed: %s", exc)
            return False

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *( [f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None
