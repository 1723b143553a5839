"""Crash consistency: difysync is SIGKILLed again and again mid-import while the tree
changes; after one clean run the dataset must mirror the tree exactly (no duplicate, no
missing or stale document, right content, empty journal, clean status).

Small and seeded for CI; `python bench/chaos.py` is the full run (1,000 files, 20 kills).
Set DIFYSYNC_CHAOS_SEED to replay a seed printed by a failure.
"""

from __future__ import annotations

import os

import pytest

from .chaos_harness import ChaosConfig, run_chaos

SEED = int(os.environ.get("DIFYSYNC_CHAOS_SEED", "20240611"))


def _check(result) -> None:
    print(result.report())
    assert result.kills + result.early_exits > 0
    assert not result.divergences, f"seed {result.seed} (DIFYSYNC_CHAOS_SEED={result.seed}):\n{result.report()}"


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_reconcile_killed_mid_import_converges_without_duplicates(tmp_path, legacy):
    cfg = ChaosConfig(files=150, kills=6, variant="reconcile", seed=SEED, indexing_delay=0.3,
                      legacy=legacy, edit_pct=6, rename_pct=3, delete_pct=2, add_pct=2,
                      kill_after=(0.05, 1.2))
    _check(run_chaos(cfg, tmp_path))


def test_daemon_killed_mid_import_converges_without_duplicates(tmp_path):
    cfg = ChaosConfig(files=100, kills=4, variant="run", seed=SEED, indexing_delay=0.3,
                      edit_pct=6, rename_pct=3, delete_pct=2, add_pct=2,
                      kill_after=(0.05, 1.0), mutate_after=(0.3, 1.0), quiesce_timeout=30)
    _check(run_chaos(cfg, tmp_path))
