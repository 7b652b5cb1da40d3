"""The workers' collector pace: start-up frozen, young collections every YOUNG_EVERY."""

from __future__ import annotations

import gc

from pipeline import gc_tuning


def test_a_worker_freezes_its_start_up_and_collects_less_often() -> None:
    before = gc.get_threshold()
    try:
        gc_tuning.pace_for_worker()
        assert gc.get_threshold() == (gc_tuning.YOUNG_EVERY, *gc_tuning.OLDER_EVERY)
        assert gc.get_threshold()[0] > before[0]
        assert gc.get_freeze_count() > 0
        assert gc.isenabled()  # cycles are still found, only later
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
