"""The remote side for people: the rows of `difysync datasets` and `difysync ls`, and
their tables. Read-only: nothing here writes to Dify or to the state DB."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .config import FolderSettings, Settings
from .models import RemoteDocument


def dataset_rows(datasets: Iterable[Mapping[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """One row per dataset the key sees, with the configured folder that syncs into it."""
    by_id = {f.dataset_id: f.key for f in settings.folders if f.dataset_id}
    by_name = {f.dataset_name: f.key for f in settings.folders if f.dataset_name}
    return [{"name": d.get("name"), "id": d.get("id"), "documents": d.get("document_count"),
             "indexing_technique": d.get("indexing_technique"),
             "folder": by_id.get(str(d.get("id"))) or by_name.get(str(d.get("name")))} for d in datasets]


def document_rows(docs: Sequence[RemoteDocument], paths: Mapping[str, str]) -> list[dict[str, Any]]:
    """One row per document, newest first as Dify lists them: its local path (difysync's
    own tag, else the state DB's row for it), status and owner."""
    rows = []
    for d in docs:
        path = (d.tags.path if d.tags is not None else None) or paths.get(d.id)
        rows.append({"name": d.name, "id": d.id, "path": path, "status": d.display_status or d.indexing_status,
                     "owner": d.owner})
    return rows


def print_datasets(rows: Sequence[Mapping[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="datasets")
    for col in ("name", "id", "documents", "indexing", "folder"):
        table.add_column(col, overflow="fold", justify="right" if col == "documents" else "left")
    for r in rows:
        table.add_row(str(r["name"]), str(r["id"]), str(r["documents"] if r["documents"] is not None else "-"),
                      str(r["indexing_technique"] or "-"), str(r["folder"] or "-"))
    Console().print(table)


def print_documents(folder: FolderSettings, dataset_id: str, rows: Sequence[Mapping[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{folder.dataset_name or dataset_id}: {len(rows)} documents",
                  caption=f"folder {folder.key}", caption_justify="left")
    for col in ("document", "local path", "status", "owner"):
        table.add_column(col, overflow="fold")
    for r in rows:
        status = r["status"] or "-"
        table.add_row(str(r["name"]), str(r["path"] or "-"),
                      status if status == "available" else f"[yellow]{status}[/yellow]", str(r["owner"] or "-"))
    Console().print(table)
