"""What a one-shot pass pays before it decides anything: the modules it imports.

A quiet pass over a big tree is a walk and a few requests, so start-up is a large share
of it (issue 13). A plain `reconcile` imports only what it uses: not the emulator, not the
service's metrics, status page or web server, not the other commands' modules."""

from __future__ import annotations


from tests.sandbox import Sandbox, modules_of_a_pass

NOT_FOR_A_PASS = ("difysync.emulator", "starlette", "uvicorn", "prometheus_client", "difysync.metrics",
                  "difysync.web", "difysync.daemon", "difysync.watch", "watchdog", "difysync.statusview",
                  "difysync.compare", "difysync.listing", "difysync.configdoc", "difysync.demo", "apscheduler",
                  # nobody watches a pass whose output is a pipe: no progress display, and httpx's
                  # own command-line client (which would load both) is never imported
                  "difysync.progress", "rich", "pygments",
                  # the service's allocator setting
                  "difysync.allocator")

def test_a_plain_reconcile_imports_nothing_it_does_not_use(tmp_path, emulator):
    box = Sandbox(tmp_path, emulator)
    box.write("a.md", "a")
    code, modules, _out = modules_of_a_pass(box)
    assert code == 0
    loaded = {m for m in modules if any(m == n or m.startswith(n + ".") for n in NOT_FOR_A_PASS)}
    assert loaded == set()


def test_a_reconcile_begins_its_walk_before_it_loads_httpx_the_planner_and_the_state_db(tmp_path, emulator):
    """The walk's helpers are forked as soon as the settings are known, so they walk while
    the one-shot loads what its pass needs (cli.walks_ahead): walkshare comes first."""
    import os
    import subprocess
    import sys

    box = Sandbox(tmp_path, emulator)
    box.write("a.md", "a")
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "difysync", "reconcile", "-c", str(box.config),
                           "--json"], capture_output=True, text=True, env={**os.environ, **box.env}, cwd=box.tmp,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    order = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    for later in ("httpx", "difysync.plan", "difysync.state", "difysync.reconcile"):
        assert order.index("difysync.walkshare") < order.index(later), later
