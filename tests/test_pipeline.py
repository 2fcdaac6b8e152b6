"""The tensor stream's plumbing: the heap it leaves out of garbage collection, and gives back."""

from __future__ import annotations

import gc

from tvreg._util.pipeline import frozen_heap


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_heap_before_a_stream_is_skipped_by_the_collector_and_handed_back_after():
    gc.collect()
    before = _Cycle()
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() > 0
        assert gc.is_tracked(before) and not any(before is o for o in gc.get_objects())  # not walked
        made = _Cycle()
        assert any(made is o for o in gc.get_objects())  # objects of the stream are collected as usual
        del made
        assert gc.collect() >= 1
    assert gc.get_freeze_count() == 0
    assert any(before is o for o in gc.get_objects())


def test_a_process_that_froze_its_own_heap_is_left_as_it_is():
    """The count itself may drop while the block runs (a frozen object freed by another
    thread's last reference), so the check is that an object frozen before is frozen still."""
    before = _Cycle()
    gc.freeze()
    try:
        with frozen_heap():
            pass
        assert gc.get_freeze_count() > 0
        assert gc.is_tracked(before) and not any(before is o for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(before is o for o in gc.get_objects())


def test_a_command_process_leaves_its_heap_out_of_the_collections_at_exit():
    import subprocess
    import sys

    probe = (
        "import atexit, gc, sys\n"
        # registered first, so it runs after tvreg's own exit handler
        "atexit.register(lambda: print(gc.isenabled(), gc.get_freeze_count() > 10_000))\n"
        "import tvreg.cli\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]


def test_a_process_with_triton_loaded_is_collected_at_exit_so_nanobind_reports_no_leaks():
    import subprocess
    import sys

    import pytest

    pytest.importorskip("triton")
    probe = "import tvreg.cli, triton, triton.language\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "leaked" not in done.stderr
