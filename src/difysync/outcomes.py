"""How each planned action ended: the record the executor makes, the reports count and
``--json`` prints. A result is an enum, never a string to compare."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from .models import SkipCode
from .plan import Action

if TYPE_CHECKING:  # pragma: no cover
    from .errors import DifySyncError


class Result(str, Enum):
    """How one action ended."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    WAITING = "waiting"
    GONE = "gone"  # the file vanished before it could be sent
    DEFERRED = "deferred"  # metadata not written this time; a later pass tries again (not a failure)
    STOPPED = "stopped"  # not attempted: the pass was stopped (Ctrl-C, the service stopping)
    BACK = "back"  # a delete not sent: the file is there again (the next pass decides)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Outcome:
    action: Action
    result: Result
    message: str = ""
    document_id: str | None = None
    repeat: bool = False  # the same skip as last pass: not news, logged at debug level
    code: SkipCode | None = None  # why, for a skip decided while sending

    def as_dict(self) -> dict[str, Any]:
        code = self.code or self.action.code
        return {"action": str(self.action.kind), "path": self.action.rel_path,
                "old_path": self.action.old_rel_path, "document_id": self.document_id or
                self.action.document_id, "result": self.result.value, "message": self.message
                or self.action.reason, "reason_code": code.value if code else None}

class Stopped(Exception):
    """Raised by apply.apply_actions after a fatal error, once in-flight work has settled,
    with the outcomes so far."""

    def __init__(self, error: DifySyncError, outcomes: list[Outcome]) -> None:
        super().__init__(str(error))
        self.error = error
        self.outcomes = outcomes


__all__ = ["Outcome", "Result", "Stopped"]
