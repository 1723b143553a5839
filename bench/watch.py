"""Benchmark 6 (stub): watch latency, once the daemon (`difysync run`) exists."""

from __future__ import annotations

import sys

from common import Context, Row, run_proc


def run(ctx: Context) -> list[Row]:
    proc = run_proc([sys.executable, "-m", "difysync", "run", "--help"])
    if proc.rc != 0:
        return [Row(name="watch latency", figure=None, unit="", goal="n/a (daemon not built yet)",
                    notes=["`difysync run --help` exited %d" % proc.rc])]
    return [Row(name="watch latency", figure=None, unit="",
                goal="n/a (daemon exists; benchmark not written yet)")]
