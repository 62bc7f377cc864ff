"""What every service process does once before it serves (svc_common.cli)."""

from __future__ import annotations

import gc

from svc_common.cli import GC_THRESHOLDS, collect_less


def test_start_up_is_frozen_out_of_collections_which_come_less_often() -> None:
    before = gc.get_threshold()
    made_at_start_up = {"settings": [1, 2]}
    try:
        collect_less()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
        # Frozen: in none of the generations a collection looks at.
        assert all(made_at_start_up is not tracked for generation in range(3) for tracked in gc.get_objects(generation))
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
