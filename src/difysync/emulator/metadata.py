"""The request bodies of Dify 1.14.1's metadata routes, validated as Dify does it.

Dify reads them with pydantic models (MetadataArgs, MetadataUpdatePayload,
MetadataOperationData in ``api/services/entities/knowledge_entities``) and answers a
ValidationError as ``400 invalid_param`` with ``str(error)`` as the message, so the
emulator uses models of the same names and shapes to give the same answers, word for word
(the pydantic docs link is pinned to the release Dify 1.14.1 ships, 2.12).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ValidationError, create_model

from .store import ApiError

DIFY_PYDANTIC = "2.12"
_DOCS_LINK = re.compile(r"https://errors\.pydantic\.dev/[0-9.]+/")


class MetadataArgs(BaseModel):
    type: Literal["string", "number", "time"]
    name: str


class MetadataUpdatePayload(BaseModel):
    name: str


class MetadataDetail(BaseModel):
    id: str
    name: str
    value: str | int | float | None = None


class DocumentMetadataOperation(BaseModel):
    document_id: str
    metadata_list: list[MetadataDetail]
    partial_update: bool = False  # per operation, since Dify 1.11


class _OperationBefore111(BaseModel):
    """An operation as servers before 1.11 read it: no partial_update (ignored if sent)."""

    document_id: str
    metadata_list: list[MetadataDetail]


class MetadataOperationData(BaseModel):
    operation_data: list[DocumentMetadataOperation]


# the same top-level name as Dify's, as validation errors show it
_OperationDataBefore111 = create_model(
    "MetadataOperationData", operation_data=(list[_OperationBefore111], ...))


def validate(model: type[BaseModel], payload: Any) -> Any:
    """``model.model_validate(payload or {})`` with Dify's answer to a ValidationError."""
    try:
        return model.model_validate(payload or {})
    except ValidationError as exc:
        message = _DOCS_LINK.sub(f"https://errors.pydantic.dev/{DIFY_PYDANTIC}/", str(exc))
        raise ApiError(400, "invalid_param", message) from None


def operations(payload: Any, *, partial_update: bool) -> list[tuple[str, list[tuple[str, str, Any]], bool]]:
    """The documents/metadata body as (document id, [(field id, name, value)], partial)
    tuples. ``partial_update=False`` reads it as a server before 1.11: the flag is not
    part of the model, so it is neither validated nor honoured (every write replaces)."""
    if partial_update:
        data = validate(MetadataOperationData, payload)
        return [(op.document_id, [(m.id, m.name, m.value) for m in op.metadata_list],
                 op.partial_update) for op in data.operation_data]
    old = validate(_OperationDataBefore111, payload)
    return [(op.document_id, [(m.id, m.name, m.value) for m in op.metadata_list], False)
            for op in old.operation_data]


__all__ = ["DIFY_PYDANTIC", "DocumentMetadataOperation", "MetadataArgs", "MetadataDetail",
           "MetadataOperationData", "MetadataUpdatePayload", "operations", "validate"]
