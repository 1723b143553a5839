"""The emulator as a program (`difysync emulator`, `python -m difysync.emulator`): load
the state file, bind the port, print the banner, serve until SIGINT/SIGTERM, save, exit.

Every failure an operator can cause is one line on stderr and an exit code from
EXIT_CODES_HELP, never a traceback; the banner appears only once the socket is bound.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .statefile import StateFileError

if TYPE_CHECKING:
    from .server import EmulatorServer

EX_OK, EX_FAILED, EX_TEMPFAIL, EX_CONFIG = 0, 1, 75, 78
EXIT_CODES_HELP = ("Exit codes: 0 stopped by SIGINT/SIGTERM (state saved), 1 the state could "
                   "not be saved, 75 the port is taken (EX_TEMPFAIL: free it, or pick another "
                   "port; --port 0 takes any free one), 78 an unusable --state-file or address "
                   "(EX_CONFIG).")
_PROG = "difysync emulator"


def say(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr, flush=True)


def run(make_server: Callable[[], EmulatorServer], key_note: str) -> int:
    """Build the server (reading its state file), serve it until a stop signal, and
    return the exit code. ``key_note`` tells in the banner which key to use, without
    printing a key that was chosen by the operator."""
    from .server import ListenError

    logging.getLogger("asyncio").setLevel(logging.WARNING)  # its "Using selector" line is noise at -v
    try:
        emu = make_server()
    except StateFileError as exc:
        say(str(exc))
        return EX_CONFIG
    try:
        emu.start()
    except ListenError as exc:
        if exc.busy:
            say(f"{exc}: stop what holds it, or choose another with --port (--port 0: any free port)")
            return EX_TEMPFAIL
        say(f"{exc}: check --host and --port")
        return EX_CONFIG
    state = emu.store.state_path
    kept = f"state in {state}, saved within a second of each change" if state else "state in memory only"
    print(f"Dify emulator listening on {emu.base_url} ({key_note}; {kept})", file=sys.stderr, flush=True)
    died = _serve_until_signal(emu)
    return _stop(emu, died)


def _serve_until_signal(emu: EmulatorServer) -> bool:
    """Wait for SIGINT or SIGTERM on the main thread (uvicorn runs in its own, so its
    signal handling stays out of the way). True when the server died on its own."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            if not emu.serving:
                return True
        return False
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(emu: EmulatorServer, died: bool) -> int:
    """Stop serving and write the state; a save that fails is one line and exit 1."""
    ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        emu.stop()
    except OSError as exc:
        say(f"could not save the state to {emu.store.state_path}: {exc.strerror or exc}")
        return EX_FAILED
    finally:
        for sig, handler in ignored.items():
            signal.signal(sig, handler)
    if died:
        say("the server stopped on its own (see the lines above)")
        return EX_FAILED
    state = emu.store.state_path
    print("Dify emulator stopped" + (f"; state saved to {state}" if state else ""), file=sys.stderr, flush=True)
    return EX_OK


__all__ = ["EXIT_CODES_HELP", "run"]
