"""A test sandbox: a folder tree, a config file pointing at an emulator, and the real CLI
invoked in-process (click's runner) or as a subprocess. Scenario tests read as "write
these files, reconcile, expect these documents"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from difysync.cli import main
from difysync.emulator import EmulatorServer


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.stdout)


class FakeClock:
    """A clock for code that takes one (the watcher's tracker, the service's worker):
    time moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sandbox:
    def __init__(self, tmp_path: Path, emu: EmulatorServer, *, dataset_name: str = "Docs",
                 extra_dify: str = "", extra_folder: str = "", by_name: bool = False,
                 owner: str = "test-host") -> None:
        self.tmp = tmp_path
        self.emu = emu
        self.root = tmp_path / "docs"
        self.root.mkdir(exist_ok=True)
        if by_name:
            self.dataset_id = ""
            dataset_line = f'dataset_name = "{dataset_name}"'
        else:
            self.dataset_id = emu.store.create_dataset(dataset_name, "high_quality")
            dataset_line = f'dataset_id = "{self.dataset_id}"'
        self.config = tmp_path / "sync.toml"
        self.owner = owner
        self.config.write_text(
            'state_db = "state.db"\n'
            f'owner = "{owner}"\n'
            "[dify]\n"
            f'base_url = "{emu.base_url}"\n'
            "timeout_seconds = 5\n"
            "backoff_base_seconds = 0.01\n"
            "backoff_max_seconds = 0.1\n"
            f"{extra_dify}\n"
            "[[folders]]\n"
            'path = "docs"\n'
            f"{dataset_line}\n"
            f"{extra_folder}\n", encoding="utf-8")
        self.env = {"DIFYSYNC_API_KEY": emu.api_key}

    # --- the tree ---------------------------------------------------------------------

    def write(self, rel: str, content: str | bytes = "hello") -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
        return path

    def remove(self, rel: str) -> None:
        path = self.root / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()

    def move(self, src: str, dst: str) -> None:
        target = self.root / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        (self.root / src).rename(target)

    # --- running ----------------------------------------------------------------------

    def cli(self, *args: str, env: dict[str, str] | None = None) -> Result:
        runner = CliRunner()
        result = runner.invoke(main, list(args), env={**self.env, **(env or {})}, catch_exceptions=False)
        return Result(result.exit_code, result.stdout, result.stderr)

    def reconcile(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return self.cli("reconcile", "-c", str(self.config), "--json", *args, env=env)

    def subprocess(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
        full_env = {**os.environ, **self.env, **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "difysync", *args], capture_output=True, text=True,
                              env=full_env, timeout=timeout, cwd=self.tmp)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    # --- the remote side --------------------------------------------------------------

    def preload(self, files: dict[str, str | bytes], owner: str | None = None) -> None:
        """Write these files and put their documents straight into the emulator, tagged as
        difysync (of ``owner``, default this box's) would have tagged them: the synced
        state of a big tree without uploading it. A following pass adopts them."""
        import hashlib

        from difysync import tags
        from difysync.naming import document_name

        store, ds = self.emu.store, self.dataset
        fields = {name: (store.metadata_field(ds, name) or store.create_metadata(ds, kind, name))
                  for name, kind in tags.FIELDS}
        ids = {name: f["id"] if isinstance(f, dict) else f.id for name, f in fields.items()}
        operations = []
        for rel, content in files.items():
            path = self.write(rel, content)
            data = path.read_bytes()
            doc, _ = store.add_document(ds, document_name(rel), data, match_by_name=False)
            values = tags.expected(rel, hashlib.sha256(data).hexdigest(), owner or self.owner, path.stat().st_mtime_ns)
            op = tags.operation(doc.id, values, ids)
            operations.append((doc.id, [(m["id"], m["name"], m["value"]) for m in op["metadata_list"]], True))
        store.update_documents_metadata(ds, operations)

    @property
    def dataset(self) -> str:
        if self.dataset_id:
            return self.dataset_id
        found = [d for d in self.emu.store.list_datasets(1, 100, None)["data"]]
        return found[0]["id"]

    def docs(self) -> dict[str, Any]:
        """name -> emulator document record."""
        out: dict[str, Any] = {}
        for doc in self.emu.store.documents(self.dataset):
            assert doc.name not in out, f"duplicate document name {doc.name!r}"
            out[doc.name] = doc
        return out

    def contents(self) -> dict[str, bytes]:
        return {name: doc.content for name, doc in self.docs().items()}

    def mutations(self) -> int:
        """Every request that changes something, difysync's metadata writes included."""
        return len(self.emu.mutating_requests())

    def uploads(self) -> int:
        """Mutating requests on documents themselves (creates, updates, deletes), not their metadata."""
        return sum(1 for r in self.emu.mutating_requests() if "/metadata" not in r.path)


_MODULES_OF_A_PASS = """
import json, sys
from difysync.cli import main
try:
    main(["reconcile", "-c", sys.argv[1], "--json"])
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def modules_of_a_pass(box: "Sandbox") -> tuple[int, list[str], str]:
    """(exit code, every module loaded, stdout) of a `reconcile --json` in a fresh interpreter."""
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _MODULES_OF_A_PASS, str(box.config)], capture_output=True,
                          text=True, env={**os.environ, **box.env}, cwd=box.tmp, timeout=60, check=False)
    seen = json.loads(proc.stderr.strip().splitlines()[-1])
    return seen["code"], seen["modules"], proc.stdout
