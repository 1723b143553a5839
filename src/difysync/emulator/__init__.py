"""A stateful, fault-injecting emulator of Dify's Knowledge (dataset) API.

Every test of difysync talks to it over real HTTP on loopback, so the client is checked
against the wire contract (including Dify's quirks and failures) without a Dify install.
"""

from __future__ import annotations

from .app import DEFAULT_EXTENSIONS, EmulatorApp, Options, RequestRecord, create_app
from .faults import FaultRule, Faults
from .server import EmulatorServer, ListenError, serve
from .statefile import StateFileError
from .store import ApiError, DocRecord, Store

__all__ = ["ApiError", "DEFAULT_EXTENSIONS", "DocRecord", "EmulatorApp", "EmulatorServer",
           "FaultRule", "Faults", "ListenError", "Options", "RequestRecord", "StateFileError",
           "Store", "create_app", "serve"]
