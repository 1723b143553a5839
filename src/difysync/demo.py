"""`difysync demo`: the product end to end with no Dify account. Starts the bundled
emulator on a free loopback port, mirrors the bundled sample folder into it, prints the
status table. Everything lives in a temporary folder that is removed afterwards."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import click

DEMO_KEY = "demo-key"


def run_demo() -> int:
    try:
        from .emulator import EmulatorServer
    except ImportError:
        click.echo("difysync: the demo needs the emulator extra: pip install 'difysync[emulator]'", err=True)
        return 1
    from .config import load_settings
    from .dify import DifyClient
    from .reconcile import Env, reconcile
    from .remote import IndexingPoller, wait_for_indexing
    from .report import print_status
    from .state import StateStore
    from .statusview import dataset_names

    sample = Path(__file__).with_name("sample")
    with tempfile.TemporaryDirectory(prefix="difysync-demo-") as tmp, \
            EmulatorServer(api_key=DEMO_KEY, indexing_delay=0.5) as emu:
        docs = Path(tmp) / "docs"
        shutil.copytree(sample, docs)
        config = Path(tmp) / "sync.toml"
        config.write_text(
            f'state_db = "state.db"\n[dify]\nbase_url = "{emu.base_url}"\n'
            f'[[folders]]\npath = "docs"\ndataset_name = "Demo docs"\n', encoding="utf-8")
        click.echo(f"emulator: {emu.base_url}   sample folder: {docs}")
        click.echo(f"config:\n{config.read_text(encoding='utf-8')}")
        settings = load_settings(config)
        with DifyClient(settings.dify.base_url, DEMO_KEY) as client, StateStore(settings.state_db) as store:
            env = Env(settings, client, store, who="difysync demo")
            report = reconcile(env)
            wait_for_indexing(IndexingPoller(client), store, report.touched_documents(), timeout=30,
                              pauses=lambda: 0.3, sleep=time.sleep, clock=time.monotonic)
            counts = report.counts
            click.echo("first pass: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
            again = reconcile(env)
            click.echo("second pass (nothing changed): "
                       + ", ".join(f"{v} {k}" for k, v in again.counts.items() if v)
                       + f"; {again.hashed} files hashed")
            summaries = store.summaries()
            print_status(summaries, store.problems(),
                         names=dataset_names(settings, summaries, store.dataset_names()))
            click.echo(f"documents in the emulator's dataset: "
                       f"{', '.join(sorted(d.name for d in client.list_documents(report.folders[0].dataset_id or '')))}")
        os.environ.pop("DIFYSYNC_API_KEY", None)
    return 0 if report.ok else 1
